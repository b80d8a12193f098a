//! `CachedStore`: a cache in front of the ledger that is itself a [`Store`], so callers do
//! not know whether it is there (SpiceDB's proxy datastore). It caches each subject's
//! projection with the revision it was read at (including "no decision": an empty state)
//! and each tenant's catalogue with its version, so the decision engine runs on cached data.
//!
//! Backends: [`MemoryCache`] (in-process, for one replica owning its store) and
//! [`RedisCache`] (standalone or cluster, shared by replicas).
//!
//! Coherence, without time-based invalidation:
//! - entries are versioned (ledger revision for states, catalogue version for catalogues)
//!   and a fill never replaces a newer entry;
//! - before a write commits, the written subjects' entries become *pending* markers that
//!   refuse every fill; after it commits, and before it is acknowledged, they become
//!   tombstones at the write's revision; a fill read before the commit carries an older
//!   revision and is refused, so no replica can re-cache the old state;
//! - a catalogue write is followed by a fill of the fresh catalogue (a newer version);
//! - `AtLeast(r)` never answers from an entry older than `r`; `Full` bypasses the cache;
//! - a cache fault never fails a read and never answers: the read goes to the ledger and a
//!   counter records the fallback. If the post-commit tombstone cannot be written, the
//!   pending marker stays until it expires (readers miss: slower, not stale); only if the
//!   cache refused both marker and tombstone (down for the whole write) can an entry stay
//!   stale, at most the entry TTL (`cache.ttl_secs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use consent_core::access::{ApiKey, Tenant};
use consent_core::commands::{Idempotency, WritePlan};
use consent_core::{
    Catalog, PolicyVersion, Purpose, Result, Revision, SubjectState, Timestamp, Vendor,
};
use consent_store::{
    AccessStore, AppendOutcome, CatalogStore, Commit, Consistency, EventQuery, LedgerHead,
    LedgerStore, Store, StoredEvent,
};
use serde::{Deserialize, Serialize};

mod memory;
mod redis_cache;
pub mod testing;

pub use memory::MemoryCache;
pub use redis_cache::RedisCache;

/// A cached value with its version, or a tombstone (no value) that refuses older fills.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned<T> {
    /// Ledger revision (states) or catalogue version (catalogues).
    pub version: i64,
    /// The value; `None` for a tombstone.
    pub value: Option<T>,
}

/// The version of a *pending* marker: a write to the subject is in flight. It refuses every
/// fill, and the write's tombstone replaces it.
pub const PENDING: i64 = i64::MAX;

impl<T> Versioned<T> {
    /// The marker set before a write commits.
    pub fn pending() -> Versioned<T> {
        Versioned {
            version: PENDING,
            value: None,
        }
    }

    /// Whether this is a pending marker.
    pub fn is_pending(&self) -> bool {
        self.value.is_none() && self.version == PENDING
    }

    /// Whether a fill read at `version` may replace this entry: a live entry only by a newer
    /// read, a tombstone by a read at or after the write it marks, a pending marker never.
    pub fn accepts_fill(&self, version: i64) -> bool {
        match self.value {
            Some(_) => version > self.version,
            None => version >= self.version && !self.is_pending(),
        }
    }

    /// Whether a write at `version` must turn this entry into a tombstone: if the entry was
    /// read before that write, or marks a write in flight.
    pub fn accepts_tombstone(&self, version: i64) -> bool {
        version > self.version || self.is_pending()
    }
}

/// Where cached entries live. Implementations must apply [`Versioned::accepts_fill`] and
/// [`Versioned::accepts_tombstone`] atomically per key.
#[async_trait]
pub trait CacheBackend: Send + Sync {
    /// The subject's cached projection; `None` on a miss or a tombstone.
    async fn get_state(&self, tenant: &str, subject: &str) -> Result<Option<SubjectState>>;
    /// Caches a projection read at `state.revision` unless the entry is newer.
    async fn fill_state(&self, tenant: &str, subject: &str, state: &SubjectState) -> Result<()>;
    /// Marks a write to the subject as in flight (before it commits): no fill is accepted
    /// until the write's tombstone replaces the marker, or the marker expires.
    async fn begin_write(&self, tenant: &str, subject: &str) -> Result<()>;
    /// Marks the subject's entry stale as of the write at `revision`.
    async fn invalidate_state(&self, tenant: &str, subject: &str, revision: Revision)
    -> Result<()>;
    /// The tenant's cached catalogue; `None` on a miss.
    async fn get_catalog(&self, tenant: &str) -> Result<Option<Catalog>>;
    /// Caches a catalogue unless the entry holds a newer version.
    async fn fill_catalog(&self, tenant: &str, catalog: &Catalog) -> Result<()>;
    /// What the backend is, for logs.
    fn describe(&self) -> String;
}

/// Counters of cache outcomes (exported as metrics by the server).
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Reads answered from the cache.
    pub hits: AtomicU64,
    /// Reads that went to the ledger because the cache had nothing usable.
    pub misses: AtomicU64,
    /// Cache operations that failed; the read went to the ledger instead.
    pub fallbacks: AtomicU64,
}

impl CacheStats {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `(hits, misses, fallbacks)` so far.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
            self.fallbacks.load(Ordering::Relaxed),
        )
    }
}

/// After a cache fault, reads skip the cache this long (they go to the ledger), so an
/// outage costs one timeout per window instead of one per read. Invalidations after writes
/// are always attempted.
pub const SKIP_AFTER_FAULT: Duration = Duration::from_secs(1);

/// Attempts at the post-commit tombstone before giving up on it.
const TOMBSTONE_ATTEMPTS: u32 = 3;

/// A [`Store`] that answers reads from a [`CacheBackend`] and keeps it coherent with writes.
pub struct CachedStore {
    inner: Arc<dyn Store>,
    cache: Arc<dyn CacheBackend>,
    stats: Arc<CacheStats>,
    /// Reads skip the cache until this instant (after a fault).
    skip_until: Mutex<Option<Instant>>,
    /// How long reads skip the cache after a fault.
    fault_skip: Duration,
}

impl std::fmt::Debug for CachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CachedStore({})", self.cache.describe())
    }
}

impl CachedStore {
    /// `inner` behind `cache`.
    pub fn new(inner: Arc<dyn Store>, cache: Arc<dyn CacheBackend>) -> CachedStore {
        CachedStore {
            inner,
            cache,
            stats: Arc::new(CacheStats::default()),
            skip_until: Mutex::new(None),
            fault_skip: SKIP_AFTER_FAULT,
        }
    }

    /// Changes how long reads skip the cache after a fault (default [`SKIP_AFTER_FAULT`]).
    pub fn with_fault_skip(mut self, fault_skip: Duration) -> CachedStore {
        self.fault_skip = fault_skip;
        self
    }

    /// Whether reads should skip the cache now (a recent fault); counts the skip as a fallback.
    fn skipping(&self) -> bool {
        let skip = self
            .skip_until
            .lock()
            .map(|until| until.is_some_and(|t| Instant::now() < t))
            .unwrap_or(false);
        if skip {
            CacheStats::count(&self.stats.fallbacks);
        }
        skip
    }

    /// The outcome counters.
    pub fn stats(&self) -> Arc<CacheStats> {
        Arc::clone(&self.stats)
    }

    fn fallback(&self, operation: &str, error: &consent_core::ConsentError) {
        CacheStats::count(&self.stats.fallbacks);
        if let Ok(mut until) = self.skip_until.lock() {
            *until = Some(Instant::now() + self.fault_skip);
        }
        tracing::warn!(operation, %error, cache = %self.cache.describe(), "cache unavailable; using the ledger");
    }

    /// Writes the post-commit tombstone, retrying a failed attempt a few times: until it is
    /// written, the pending marker (or, if that failed too, the entry TTL) bounds staleness.
    async fn tombstone(&self, tenant: &str, subject: &str, revision: Revision) {
        for attempt in 1..=TOMBSTONE_ATTEMPTS {
            match self.cache.invalidate_state(tenant, subject, revision).await {
                Ok(()) => return,
                Err(e) if attempt == TOMBSTONE_ATTEMPTS => {
                    self.fallback("invalidate after write", &e)
                }
                Err(_) => {}
            }
        }
    }

    /// Refreshes the cached catalogue after a catalogue write.
    async fn refresh_catalog(&self, tenant: &str) {
        match self.inner.catalog(tenant, Consistency::Full).await {
            Ok(fresh) => {
                if let Err(e) = self.cache.fill_catalog(tenant, &fresh).await {
                    self.fallback("fill catalogue after write", &e);
                }
            }
            // The write itself succeeded; the next reader refills.
            Err(e) => self.fallback("read catalogue after write", &e),
        }
    }
}

#[async_trait]
impl CatalogStore for CachedStore {
    async fn catalog(&self, tenant: &str, consistency: Consistency) -> Result<Catalog> {
        if consistency == Consistency::Full || self.skipping() {
            return self.inner.catalog(tenant, Consistency::Full).await;
        }
        match self.cache.get_catalog(tenant).await {
            Ok(Some(catalog)) => {
                CacheStats::count(&self.stats.hits);
                return Ok(catalog);
            }
            Ok(None) => CacheStats::count(&self.stats.misses),
            Err(e) => {
                self.fallback("get catalogue", &e);
                return self.inner.catalog(tenant, Consistency::Full).await;
            }
        }
        let catalog = self.inner.catalog(tenant, Consistency::Full).await?;
        if let Err(e) = self.cache.fill_catalog(tenant, &catalog).await {
            self.fallback("fill catalogue", &e);
        }
        Ok(catalog)
    }

    async fn upsert_purpose(&self, tenant: &str, purpose: &Purpose) -> Result<()> {
        self.inner.upsert_purpose(tenant, purpose).await?;
        self.refresh_catalog(tenant).await;
        Ok(())
    }

    async fn upsert_vendor(&self, tenant: &str, vendor: &Vendor) -> Result<()> {
        self.inner.upsert_vendor(tenant, vendor).await?;
        self.refresh_catalog(tenant).await;
        Ok(())
    }

    async fn publish_policy_version(
        &self,
        tenant: &str,
        policy: &PolicyVersion,
    ) -> Result<PolicyVersion> {
        let stored = self.inner.publish_policy_version(tenant, policy).await?;
        self.refresh_catalog(tenant).await;
        Ok(stored)
    }
}

#[async_trait]
impl LedgerStore for CachedStore {
    async fn append(
        &self,
        tenant: &str,
        plan: &WritePlan,
        idempotency: Option<&Idempotency>,
    ) -> Result<AppendOutcome> {
        // Before the commit: mark the subjects' entries as written-to, so that if the
        // post-commit tombstone cannot be written the entries cost misses, not stale answers.
        let mut subjects: Vec<&str> = match plan {
            WritePlan::Events(events) => events.iter().map(|e| e.subject_id.as_str()).collect(),
            WritePlan::WithdrawAllGranted(template) => vec![template.subject_id.as_str()],
        };
        subjects.sort_unstable();
        subjects.dedup();
        for subject in &subjects {
            if let Err(e) = self.cache.begin_write(tenant, subject).await {
                self.fallback("mark write in flight", &e);
            }
        }
        let outcome = self.inner.append(tenant, plan, idempotency).await?;
        for subject in &subjects {
            self.tombstone(tenant, subject, outcome.revision).await;
        }
        Ok(outcome)
    }

    async fn subject_state(
        &self,
        tenant: &str,
        subject_id: &str,
        as_of: Option<Timestamp>,
        consistency: Consistency,
    ) -> Result<SubjectState> {
        // Past states are not cached, and Full bypasses the cache.
        if as_of.is_some() || consistency == Consistency::Full {
            return self
                .inner
                .subject_state(tenant, subject_id, as_of, consistency)
                .await;
        }
        if self.skipping() {
            return self
                .inner
                .subject_state(tenant, subject_id, None, Consistency::Full)
                .await;
        }
        match self.cache.get_state(tenant, subject_id).await {
            Ok(Some(state)) => {
                let fresh_enough = match consistency {
                    Consistency::AtLeast(min) => state.revision >= min,
                    Consistency::MinimizeLatency | Consistency::Full => true,
                };
                if fresh_enough {
                    CacheStats::count(&self.stats.hits);
                    return Ok(state);
                }
                CacheStats::count(&self.stats.misses);
            }
            Ok(None) => CacheStats::count(&self.stats.misses),
            Err(e) => {
                self.fallback("get state", &e);
                return self
                    .inner
                    .subject_state(tenant, subject_id, None, Consistency::Full)
                    .await;
            }
        }
        let state = self
            .inner
            .subject_state(tenant, subject_id, None, Consistency::Full)
            .await?;
        if let Err(e) = self.cache.fill_state(tenant, subject_id, &state).await {
            self.fallback("fill state", &e);
        }
        Ok(state)
    }

    async fn list_events(&self, tenant: &str, query: &EventQuery) -> Result<Vec<StoredEvent>> {
        self.inner.list_events(tenant, query).await
    }

    async fn head(&self, tenant: &str) -> Result<LedgerHead> {
        self.inner.head(tenant).await
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Commit> {
        self.inner.subscribe()
    }
}

#[async_trait]
impl AccessStore for CachedStore {
    async fn create_tenant(&self, tenant: &Tenant) -> Result<()> {
        self.inner.create_tenant(tenant).await
    }

    async fn get_tenant(&self, tenant_id: &str) -> Result<Option<Tenant>> {
        self.inner.get_tenant(tenant_id).await
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        self.inner.list_tenants().await
    }

    async fn create_api_key(&self, key: &ApiKey) -> Result<()> {
        self.inner.create_api_key(key).await
    }

    async fn find_api_key(&self, key_id: &str) -> Result<Option<ApiKey>> {
        self.inner.find_api_key(key_id).await
    }

    async fn list_api_keys(&self, tenant_id: &str) -> Result<Vec<ApiKey>> {
        self.inner.list_api_keys(tenant_id).await
    }

    async fn revoke_api_key(&self, tenant_id: &str, key_id: &str, at: Timestamp) -> Result<ApiKey> {
        self.inner.revoke_api_key(tenant_id, key_id, at).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_never_replace_newer_entries_and_tombstones_refuse_older_reads() {
        let live = Versioned {
            version: 5,
            value: Some(()),
        };
        assert!(!live.accepts_fill(5) && !live.accepts_fill(4) && live.accepts_fill(6));
        let tomb: Versioned<()> = Versioned {
            version: 5,
            value: None,
        };
        assert!(tomb.accepts_fill(5) && tomb.accepts_fill(6) && !tomb.accepts_fill(4));
        assert!(live.accepts_tombstone(6) && !live.accepts_tombstone(5));
        assert!(tomb.accepts_tombstone(6) && !tomb.accepts_tombstone(5));
        let pending: Versioned<()> = Versioned::pending();
        assert!(!pending.accepts_fill(i64::MAX - 1) && !pending.accepts_fill(0));
        assert!(
            pending.accepts_tombstone(1),
            "the write's tombstone replaces its marker"
        );
    }
}
