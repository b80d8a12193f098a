//! Cache fences: how a replica learns that cached entries of a tenant may be stale although
//! nobody could tell the shared cache.
//!
//! A write that cannot reach the shared cache (Redis down, or this replica cut off from it)
//! records a fence at its revision in the ledger, in the write's own transaction; every
//! catalogue write fences the catalogue at its new version. Each replica polls the fences
//! every [`FENCE_POLL`] and refuses cached states read before its tenant's fence (and
//! catalogues older than its catalogue fence). Its knowledge is a lease: when it could not
//! poll for [`FENCE_LEASE`], it stops using the cache until it can (reads go to the ledger,
//! and fail if the ledger is unreachable too). So an acknowledged write is hidden by a cache
//! on another replica for at most about `FENCE_POLL` plus one poll query, and never more
//! than `FENCE_LEASE`, whatever the cache did.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use consent_core::{ConsentError, Result, Revision};
use consent_store::LedgerStore;

/// How often a replica reads the fences changed since its last poll.
pub const FENCE_POLL: Duration = Duration::from_millis(200);

/// How long a replica trusts what it knows of the fences after its last successful poll
/// began. Past it, the cache is not used until a poll succeeds.
pub const FENCE_LEASE: Duration = Duration::from_secs(1);

/// The fences of one tenant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct TenantFence {
    revision: Revision,
    catalog_version: i64,
}

#[derive(Debug, Default)]
struct Known {
    tenants: HashMap<String, TenantFence>,
    /// The last fence sequence number read.
    seq: i64,
    /// When the last successful poll began (what it read is at least that recent).
    synced_at: Option<Instant>,
}

/// What this replica knows of the ledger's cache fences.
#[derive(Debug)]
pub struct Fences {
    known: RwLock<Known>,
    /// One poll at a time (the poller, or a read that found the lease expired).
    polling: tokio::sync::Mutex<()>,
    lease: Duration,
    /// The cache namespace this replica's keys are in; each poll checks the ledger still
    /// has it.
    namespace: Option<String>,
    /// Set for good once the ledger's namespace is another (rotated while this replica
    /// ran): its cache is then never read again, and its writes fence the others' caches.
    namespace_changed: std::sync::atomic::AtomicBool,
}

impl Fences {
    /// Nothing known yet: the cache is not used until the first poll succeeds. `namespace`
    /// is the cache namespace the replica's keys are in (checked at every poll).
    pub fn new(lease: Duration, namespace: Option<String>) -> Fences {
        Fences {
            known: RwLock::new(Known::default()),
            polling: tokio::sync::Mutex::new(()),
            lease,
            namespace,
            namespace_changed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether the ledger's cache namespace was rotated while this replica ran.
    pub fn namespace_changed(&self) -> bool {
        self.namespace_changed
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether the last successful poll began within the lease.
    pub fn fresh(&self) -> bool {
        self.fresh_at(Instant::now())
    }

    fn fresh_at(&self, now: Instant) -> bool {
        self.known.read().is_ok_and(|k| {
            k.synced_at
                .is_some_and(|t| now.saturating_duration_since(t) < self.lease)
        })
    }

    /// Whether a state of `tenant` read at `revision` may be used.
    pub fn admits_state(&self, tenant: &str, revision: Revision) -> bool {
        self.known
            .read()
            .is_ok_and(|k| k.tenants.get(tenant).is_none_or(|f| revision >= f.revision))
    }

    /// Whether a catalogue of `tenant` at `version` may be used.
    pub fn admits_catalog(&self, tenant: &str, version: i64) -> bool {
        self.known.read().is_ok_and(|k| {
            k.tenants
                .get(tenant)
                .is_none_or(|f| version >= f.catalog_version)
        })
    }

    /// Applies a fence this replica wrote itself, before its write is acknowledged.
    pub fn raise_states(&self, tenant: &str, revision: Revision) {
        if let Ok(mut k) = self.known.write() {
            let f = k.tenants.entry(tenant.to_owned()).or_default();
            f.revision = f.revision.max(revision);
        }
    }

    /// Reads the fences changed since the last poll. A failure leaves what is known, and
    /// the lease runs out.
    pub async fn sync(&self, store: &dyn LedgerStore) -> Result<()> {
        let _one_at_a_time = self.polling.lock().await;
        self.poll(store).await
    }

    /// Polls unless the lease is fresh (another caller may have polled while this one
    /// waited its turn).
    pub async fn sync_if_stale(&self, store: &dyn LedgerStore) -> Result<()> {
        let _one_at_a_time = self.polling.lock().await;
        if self.fresh() {
            return Ok(());
        }
        self.poll(store).await
    }

    async fn poll(&self, store: &dyn LedgerStore) -> Result<()> {
        let started = Instant::now();
        if let Some(namespace) = &self.namespace {
            let current = store.cache_namespace().await?;
            if current != *namespace {
                if !self
                    .namespace_changed
                    .swap(true, std::sync::atomic::Ordering::SeqCst)
                {
                    tracing::error!(
                        was = %namespace,
                        now = %current,
                        "the ledger's cache namespace was rotated while this server ran: it no longer reads the shared cache and fences every write; restart it to use the cache again"
                    );
                }
                return Err(ConsentError::Unavailable(
                    "the ledger's cache namespace changed; restart this server".into(),
                ));
            }
        }
        let after = self.known.read().map(|k| k.seq).unwrap_or(0);
        let changed = store.cache_fences(after).await?;
        if let Ok(mut k) = self.known.write() {
            for record in changed {
                let f = k.tenants.entry(record.tenant_id).or_default();
                f.revision = f.revision.max(record.revision);
                f.catalog_version = f.catalog_version.max(record.catalog_version);
                k.seq = k.seq.max(record.seq);
            }
            k.synced_at = Some(k.synced_at.map_or(started, |t| t.max(started)));
        }
        Ok(())
    }
}

/// Polls `fences` from `store` every `interval` until dropped (the task is aborted). Logs
/// when polling starts failing and when it recovers, not every failure.
pub(crate) fn spawn_poller(
    fences: Arc<Fences>,
    store: Arc<dyn consent_store::Store>,
    interval: Duration,
) -> Option<tokio::task::AbortHandle> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let task = runtime.spawn(async move {
        // The first poll one interval from now: a store opened before its migrations (the
        // commands migrate right after opening) is ready by then; until the first poll, a
        // read that needs the fences polls itself.
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            ticker.tick().await;
            match fences.sync(store.as_ref()).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("cache fences readable again; the shared cache is used");
                }
                Ok(()) => {}
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "cannot read cache fences; the shared cache is not used until they can be read");
                }
                Err(_) => {}
            }
        }
    });
    Some(task.abort_handle())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_runs_from_the_start_of_the_last_successful_poll() {
        let fences = Fences::new(Duration::from_secs(1), None);
        let t0 = Instant::now();
        assert!(!fences.fresh_at(t0), "nothing known before the first poll");
        if let Ok(mut k) = fences.known.write() {
            k.synced_at = Some(t0);
        }
        assert!(fences.fresh_at(t0 + Duration::from_millis(999)));
        assert!(!fences.fresh_at(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn fences_admit_only_what_is_at_least_as_new() {
        let fences = Fences::new(FENCE_LEASE, None);
        assert!(fences.admits_state("t", 0), "no fence, anything goes");
        fences.raise_states("t", 7);
        fences.raise_states("t", 5);
        assert!(!fences.admits_state("t", 6) && fences.admits_state("t", 7));
        assert!(fences.admits_state("other", 0), "fences are per tenant");
        assert!(fences.admits_catalog("t", 0));
    }
}
