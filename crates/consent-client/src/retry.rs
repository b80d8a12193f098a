//! Retries with jittered exponential backoff, on `UNAVAILABLE` and calls cut off in flight
//! (`CANCELLED`) only.

use std::time::Duration;

use crate::Error;

/// How a call is retried when the service is unavailable.
///
/// Only [`Error::Unavailable`] (a server restarting, a store fault, a connection refused)
/// and [`Error::Cancelled`] (the connection went away with the call in flight: a server
/// restarting under it) are retried ([`Error::is_transient`]); reads always, writes only when a retry cannot apply them twice: RecordConsent
/// and WithdrawConsent carry an idempotency key (the client makes one per logical write
/// unless the caller gave one), the other writes are idempotent by nature (upserts, "already
/// erased"...), and the few that are not (creating an API key, setting a legal hold) are
/// never retried. Delays grow from `initial_backoff` by `multiplier` up to `max_backoff`,
/// each drawn at random between half and all of it (so many clients do not retry in step),
/// or the server's `RetryInfo` delay when it gives one.
///
/// ```
/// use std::time::Duration;
/// use consent_client::RetryPolicy;
///
/// let patient = RetryPolicy {
///     max_attempts: 8,
///     max_backoff: Duration::from_secs(5),
///     ..RetryPolicy::default()
/// };
/// assert!(patient.max_attempts > RetryPolicy::default().max_attempts);
/// assert_eq!(RetryPolicy::none().max_attempts, 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1: no retry).
    pub max_attempts: u32,
    /// The first delay.
    pub initial_backoff: Duration,
    /// The longest delay.
    pub max_backoff: Duration,
    /// How much each delay grows.
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    /// 4 attempts, 50 ms doubling up to 2 s (about 0.35 s of waiting in all at most).
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// No retry: every error is returned at once.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The delay before attempt `attempt + 1` (`attempt` counts from 1), given the error
    /// that ended `attempt`: the server's delay if it asked for one, else the backoff with
    /// jitter.
    pub fn delay(&self, attempt: u32, error: &Error) -> Duration {
        if let Some(asked) = error.retry_after() {
            return asked;
        }
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let full = self
            .initial_backoff
            .mul_f64(self.multiplier.max(1.0).powi(exponent))
            .min(self.max_backoff);
        // Between half and all of it.
        full.mul_f64(0.5 + 0.5 * unit_random())
    }

    /// One step of a resuming stream after `error`: counts the failure in `failures` and,
    /// when `resumable` and attempts remain, waits the delay and returns `Ok`; otherwise
    /// gives the error back (the stream then ends with it).
    pub(crate) async fn after_failure(
        &self,
        failures: &mut u32,
        error: Error,
        resumable: bool,
    ) -> Result<(), Error> {
        *failures += 1;
        if !resumable || *failures >= self.max_attempts {
            return Err(error);
        }
        tokio::time::sleep(self.delay(*failures, &error)).await;
        Ok(())
    }

    /// Runs `call` until it succeeds, fails with an error that is not transient, or the
    /// attempts run out (when `retry` is false, once).
    pub(crate) async fn run<T, F, Fut>(&self, retry: bool, mut call: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let attempts = if retry { self.max_attempts.max(1) } else { 1 };
        let mut attempt = 1;
        loop {
            match call().await {
                Err(e) if e.is_transient() && attempt < attempts => {
                    tokio::time::sleep(self.delay(attempt, &e)).await;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }
}

/// A number in [0, 1) from the operating system's randomness (0.5 if it has none: the
/// jitter only spreads retries, nothing depends on it).
fn unit_random() -> f64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        // 53 random bits, the precision of an f64.
        Ok(()) => (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down() -> Error {
        Error::Unavailable {
            message: "down".into(),
            retry_after: None,
        }
    }

    #[test]
    fn delays_grow_within_their_jitter_and_stop_at_the_ceiling() {
        let p = RetryPolicy::default();
        for _ in 0..100 {
            let first = p.delay(1, &down());
            assert!(first >= Duration::from_millis(25) && first <= Duration::from_millis(50));
            let third = p.delay(3, &down());
            assert!(third >= Duration::from_millis(100) && third <= Duration::from_millis(200));
            assert!(p.delay(30, &down()) <= p.max_backoff);
        }
        let asked = Error::ResourceExhausted {
            message: "slow down".into(),
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(p.delay(1, &asked), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn only_transient_errors_are_retried_and_only_when_allowed() {
        let p = RetryPolicy::default();
        let mut calls = 0;
        let out: Result<(), Error> = p
            .run(true, || {
                calls += 1;
                async { Err(down()) }
            })
            .await;
        assert!(out.is_err());
        assert_eq!(calls, 4);
        let mut calls = 0;
        let _ = p
            .run(false, || {
                calls += 1;
                async { Err::<(), _>(down()) }
            })
            .await;
        assert_eq!(
            calls, 1,
            "a write that could be applied twice is not retried"
        );
        let mut calls = 0;
        let _ = p
            .run(true, || {
                calls += 1;
                async {
                    Err::<(), _>(Error::InvalidArgument {
                        message: "bad".into(),
                        violations: vec![],
                    })
                }
            })
            .await;
        assert_eq!(calls, 1);
        let mut calls = 0;
        let ok = p
            .run(true, || {
                calls += 1;
                let n = calls;
                async move { if n < 3 { Err(down()) } else { Ok(n) } }
            })
            .await;
        assert_eq!(ok.ok(), Some(3));
        // A call cut off in flight (the server restarting under it) is sent again; seen
        // failing under load in `calls_across_a_server_restart_succeed_and_apply_once`.
        let mut calls = 0;
        let ok = p
            .run(true, || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 2 {
                        Err(Error::Cancelled {
                            message: "operation was canceled".into(),
                        })
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
        assert_eq!(ok.ok(), Some(2));
    }
}
