//! Fail fast while the store is down: a circuit breaker in front of a [`Store`].
//!
//! After `trip_after` calls in a row answered `Unavailable`, the breaker opens: for
//! `open_for`, every call is answered `Unavailable` at once, without waiting for a pool
//! connection that cannot come (the store stays untouched, so it is not hammered while it
//! recovers). Then one call goes through as a probe (the others still fail fast): if it
//! succeeds the breaker closes, if the store is still unavailable it opens again. A probe
//! that never finishes (its caller went away) is replaced after `open_for`.
//!
//! Only `Unavailable` counts: a refusal (`InvalidArgument`, `NotFound`...) or an internal
//! error shows the store answered.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use consent_core::{ConsentError, Result};

use crate::Store;

/// When the breaker opens and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive `Unavailable` answers that open it.
    pub trip_after: u32,
    /// How long it stays open before a probe.
    pub open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            trip_after: 5,
            open_for: Duration::from_secs(1),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Calls go through; this many `Unavailable` answers in a row so far.
    Closed { failures: u32 },
    /// Calls fail fast until then.
    Open { until: Instant },
    /// One call is probing since then; the others fail fast.
    Probing { since: Instant },
}

/// The breaker's state machine (no store: [`BreakerStore`] drives it).
#[derive(Debug)]
struct Breaker {
    settings: BreakerSettings,
    phase: Mutex<Phase>,
}

/// A [`Store`] that fails fast while the store inside is down.
pub struct BreakerStore {
    inner: Arc<dyn Store>,
    breaker: Breaker,
}

impl std::fmt::Debug for BreakerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerStore")
            .field("breaker", &self.breaker)
            .finish()
    }
}

/// Whether a call may go through, and whether it is the probe.
enum Admission {
    Through,
    Probe,
    Refused(Duration),
}

impl Breaker {
    fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            settings,
            phase: Mutex::new(Phase::Closed { failures: 0 }),
        }
    }

    fn admit(&self, now: Instant) -> Admission {
        let Ok(mut phase) = self.phase.lock() else {
            return Admission::Through;
        };
        match *phase {
            Phase::Closed { .. } => Admission::Through,
            Phase::Open { until } if now < until => Admission::Refused(until - now),
            Phase::Probing { since } if now < since + self.settings.open_for => {
                Admission::Refused(since + self.settings.open_for - now)
            }
            Phase::Open { .. } | Phase::Probing { .. } => {
                *phase = Phase::Probing { since: now };
                Admission::Probe
            }
        }
    }

    fn observe(&self, probe: bool, unavailable: bool, now: Instant) {
        let Ok(mut phase) = self.phase.lock() else {
            return;
        };
        *phase = match (*phase, unavailable) {
            (_, false) => {
                if probe {
                    tracing::info!("store reachable again; the breaker is closed");
                }
                Phase::Closed { failures: 0 }
            }
            (Phase::Closed { failures }, true) if failures + 1 < self.settings.trip_after => {
                Phase::Closed {
                    failures: failures + 1,
                }
            }
            (Phase::Closed { .. }, true) => {
                tracing::warn!(
                    open_ms = self.settings.open_for.as_millis() as u64,
                    "store unavailable on {} calls in a row; failing fast and probing it",
                    self.settings.trip_after
                );
                Phase::Open {
                    until: now + self.settings.open_for,
                }
            }
            // Another call's late result while open or probing: only the probe decides.
            (current, true) if !probe => current,
            (_, true) => Phase::Open {
                until: now + self.settings.open_for,
            },
        };
    }
}

impl BreakerStore {
    /// `inner` behind a breaker.
    pub fn new(inner: Arc<dyn Store>, settings: BreakerSettings) -> BreakerStore {
        BreakerStore {
            inner,
            breaker: Breaker::new(settings),
        }
    }

    /// Whether the breaker is refusing calls (or probing) now.
    pub fn is_open(&self) -> bool {
        self.breaker
            .phase
            .lock()
            .is_ok_and(|p| !matches!(*p, Phase::Closed { .. }))
    }

    fn inner(&self) -> &dyn Store {
        self.inner.as_ref()
    }

    async fn around<T: Send>(
        &self,
        _method: &'static str,
        call: impl Future<Output = Result<T>> + Send,
    ) -> Result<T> {
        let probe = match self.breaker.admit(Instant::now()) {
            Admission::Through => false,
            Admission::Probe => true,
            Admission::Refused(wait) => {
                return Err(ConsentError::Unavailable(format!(
                    "the store is down; failing fast, next probe in {} ms",
                    wait.as_millis()
                )));
            }
        };
        let result = call.await;
        let unavailable = matches!(result, Err(ConsentError::Unavailable(_)));
        self.breaker.observe(probe, unavailable, Instant::now());
        result
    }
}

crate::store_proxy!(BreakerStore);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_probes_once_and_closes_on_success() {
        let breaker = Breaker::new(BreakerSettings {
            trip_after: 3,
            open_for: Duration::from_secs(1),
        });
        let t0 = Instant::now();
        for _ in 0..2 {
            breaker.observe(false, true, t0);
        }
        assert!(matches!(breaker.admit(t0), Admission::Through));
        breaker.observe(false, false, t0);
        for _ in 0..3 {
            breaker.observe(false, true, t0);
        }
        assert!(matches!(breaker.admit(t0), Admission::Refused(_)), "open");
        let later = t0 + Duration::from_secs(1);
        assert!(matches!(breaker.admit(later), Admission::Probe));
        assert!(
            matches!(breaker.admit(later), Admission::Refused(_)),
            "one probe"
        );
        breaker.observe(true, true, later);
        assert!(
            matches!(breaker.admit(later), Admission::Refused(_)),
            "reopened"
        );
        let after = later + Duration::from_secs(1);
        assert!(matches!(breaker.admit(after), Admission::Probe));
        breaker.observe(true, false, after);
        assert!(matches!(breaker.admit(after), Admission::Through), "closed");
        // A probe that never reports is replaced after `open_for`.
        for _ in 0..3 {
            breaker.observe(false, true, after);
        }
        let probe_at = after + Duration::from_secs(1);
        assert!(matches!(breaker.admit(probe_at), Admission::Probe));
        assert!(matches!(
            breaker.admit(probe_at + Duration::from_secs(1)),
            Admission::Probe
        ));
    }
}
