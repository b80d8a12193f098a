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
//!   pending marker stays until it expires (readers miss: slower, not stale);
//! - a shared cache can lose what it was told, or never hear it: if the pending marker
//!   cannot be written, the write records a *fence* in the ledger in its own transaction,
//!   and every replica stops trusting older cached entries of the tenant within
//!   [`FENCE_POLL`] (never more than [`FENCE_LEASE`]: see [`fence`]); Redis entries carry
//!   the run id of the server that stored them, so a restart (from a snapshot or not) or a
//!   failover makes every older entry a miss;
//! - shared-cache keys carry the ledger's cache namespace, and each write tells the store
//!   the namespace it told ([`CacheFence::Told`]): a write told in a namespace the ledger no
//!   longer has (rotated after a restore) is fenced in its own transaction;
//! - concurrent misses behind the same tombstone share one ledger read (`single_flight`);
//! - identity resolutions (alias -> subject) follow the same rules in a shared cache
//!   ([`ResolutionCache`]: versioned by the tenant revision read with the link, pending
//!   before a link, unlink, merge or erasure moves them, tombstoned after, behind the same
//!   fences); a cache of this process alone keeps them by generation (`resolutions`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use consent_core::access::{ApiKey, Tenant};
use consent_core::commands::Idempotency;
use consent_core::identity::AliasKey;
use consent_core::{
    Catalog, NewEvent, NewRecord, PolicyVersion, Purpose, Result, Revision, SubjectState,
    Timestamp, Vendor,
};
use consent_store::{
    AccessStore, AppendOutcome, CacheFence, CatalogStore, Commit, Consistency, ErasureOutcome,
    EventQuery, FenceRecord, FlagsOutcome, LedgerHead, LedgerStore, NamespaceTag, Resolution,
    Store, StoredEvent, StoredRecord,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// Cache lookups a batch read keeps in flight (a remote cache answers each in a round trip).
const BATCH_LOOKUPS: usize = 16;

pub mod fence;
mod memory;
mod redis_cache;
mod resolutions;
mod single_flight;
pub mod testing;

pub use fence::{FENCE_LEASE, FENCE_POLL, Fences};
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

/// What a cache holds for a subject.
#[derive(Clone, Debug)]
pub enum StateLookup {
    /// A projection, read at `state.revision`.
    Hit(Arc<SubjectState>),
    /// A tombstone: the entry went stale with the write at this revision, which committed
    /// before the tombstone was stored.
    Tombstone(Revision),
    /// Nothing usable: absent, a write in flight, or undecodable.
    Miss,
}

impl StateLookup {
    /// The projection, if this is a hit.
    pub fn hit(self) -> Option<Arc<SubjectState>> {
        match self {
            StateLookup::Hit(state) => Some(state),
            StateLookup::Tombstone(_) | StateLookup::Miss => None,
        }
    }
}

/// Where cached entries live. Implementations must apply [`Versioned::accepts_fill`] and
/// [`Versioned::accepts_tombstone`] atomically per key.
#[async_trait]
pub trait CacheBackend: Send + Sync {
    /// The subject's cached entry: a projection, a tombstone (with the revision of the write
    /// it marks), or nothing usable (absent, a pending write, undecodable).
    async fn get_state(&self, tenant: &str, subject: &str) -> Result<StateLookup>;
    /// Caches a projection read at `state.revision` unless the entry is newer.
    async fn fill_state(&self, tenant: &str, subject: &str, state: &SubjectState) -> Result<()>;
    /// Marks a write to the subject as in flight (before it commits): no fill is accepted
    /// until the write's tombstone replaces the marker, or the marker expires.
    async fn begin_write(&self, tenant: &str, subject: &str) -> Result<()>;
    /// Marks the subject's entry stale as of the write at `revision`.
    async fn invalidate_state(&self, tenant: &str, subject: &str, revision: Revision)
    -> Result<()>;
    /// The tenant's cached catalogue; `None` on a miss.
    async fn get_catalog(&self, tenant: &str) -> Result<Option<Arc<Catalog>>>;
    /// Caches a catalogue unless the entry holds a newer version.
    async fn fill_catalog(&self, tenant: &str, catalog: &Catalog) -> Result<()>;
    /// What the backend is, for logs (no credentials).
    fn describe(&self) -> String;
    /// Whether other replicas read this cache too (then writes it could not be told of are
    /// fenced in the ledger, and reads honour the fences).
    fn is_shared(&self) -> bool;
    /// The ledger cache namespace the keys are in (a shared cache); `None` for a cache of
    /// this process alone.
    fn namespace(&self) -> Option<&str> {
        None
    }
    /// Where a shared cache keeps identity resolutions; `None` for a cache of this process
    /// alone, whose [`CachedStore`] keeps them itself.
    fn shared_resolutions(&self) -> Option<&dyn ResolutionCache> {
        None
    }
}

/// Identity resolutions in a shared cache, one entry per alias, under the rules of subject
/// states ([`Versioned`]): a resolution read at a tenant revision never replaces a newer one;
/// a write that moves the alias marks it pending before its commit and tombstones it at its
/// revision after. Implementations apply the rules atomically per key.
#[async_trait]
pub trait ResolutionCache: Send + Sync {
    /// The alias's cached resolution; `None` when absent, pending, tombstoned or undecodable.
    async fn get_resolution(&self, tenant: &str, alias: &AliasKey) -> Result<Option<Resolution>>;
    /// Caches a resolution read at `resolution.revision` unless the entry is newer.
    async fn fill_resolution(
        &self,
        tenant: &str,
        alias: &AliasKey,
        resolution: &Resolution,
    ) -> Result<()>;
    /// Marks a write that moves the alias as in flight (before it commits).
    async fn begin_link_write(&self, tenant: &str, alias: &AliasKey) -> Result<()>;
    /// Marks the alias's entry stale as of the write at `revision`.
    async fn invalidate_resolution(
        &self,
        tenant: &str,
        alias: &AliasKey,
        revision: Revision,
    ) -> Result<()>;
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

/// Notes a read's cache hits and misses on the request's span as OpenTelemetry attributes
/// (`consent.cache.hits`, `consent.cache.misses`; nothing when spans are not exported).
fn note_on_span(hits: usize, misses: usize) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let span = tracing::Span::current();
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    span.set_attribute("consent.cache.hits", count(hits));
    span.set_attribute("consent.cache.misses", count(misses));
}

/// After a cache fault, reads skip the cache this long (they go to the ledger), so an
/// outage costs one timeout per window instead of one per read. Invalidations after writes
/// are always attempted.
pub const SKIP_AFTER_FAULT: Duration = Duration::from_secs(1);

/// A ledger read that took longer than this is not put in the cache (it is answered all the
/// same): the in-process cache's write guards last longer ([`memory::GUARD_WINDOW`]), so a
/// fill always meets the guard of any write that committed after its read began.
pub const MAX_FILL_READ_AGE: Duration = Duration::from_secs(5);

/// The most a write waits for the cache, before its commit (pending markers) and after it
/// (tombstones) each: past it the cache counts as unreachable and the write is fenced
/// instead, so a slow or dead cache adds at most this much to a write, twice.
pub const WRITE_CACHE_BUDGET: Duration = Duration::from_millis(100);

/// A cache call on the write path, within [`WRITE_CACHE_BUDGET`].
async fn within_budget(call: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::time::timeout(WRITE_CACHE_BUDGET, call)
        .await
        .unwrap_or_else(|_| {
            Err(consent_core::ConsentError::Unavailable(format!(
                "no answer within {} ms",
                WRITE_CACHE_BUDGET.as_millis()
            )))
        })
}

/// A [`Store`] that answers reads from a [`CacheBackend`] and keeps it coherent with writes.
pub struct CachedStore {
    inner: Arc<dyn Store>,
    cache: Arc<dyn CacheBackend>,
    stats: Arc<CacheStats>,
    /// Reads skip the cache until this instant (after a fault).
    skip_until: Mutex<Option<Instant>>,
    /// How long reads skip the cache after a fault.
    fault_skip: Duration,
    /// The ledger's cache fences, for a shared cache.
    fences: Option<Arc<Fences>>,
    /// The task polling them (aborted on drop).
    fence_poller: Option<tokio::task::AbortHandle>,
    /// Ledger reads in flight that concurrent misses may share.
    loads: single_flight::Loads,
    /// The tag of the shared cache's namespace, sent with each write it was told of.
    told_in: Option<NamespaceTag>,
    /// Identity resolutions, for a cache of this process alone (see `resolutions`).
    resolutions: Option<resolutions::Resolutions>,
}

impl Drop for CachedStore {
    fn drop(&mut self) {
        if let Some(poller) = &self.fence_poller {
            poller.abort();
        }
    }
}

impl std::fmt::Debug for CachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CachedStore({})", self.cache.describe())
    }
}

impl CachedStore {
    /// `inner` behind `cache`. A shared cache gets fences, polled every [`FENCE_POLL`] by a
    /// task on the current Tokio runtime (without one, a read polls when the lease ran out).
    pub fn new(inner: Arc<dyn Store>, cache: Arc<dyn CacheBackend>) -> CachedStore {
        let fences = cache.is_shared().then(|| {
            Arc::new(Fences::new(
                FENCE_LEASE,
                cache.namespace().map(str::to_owned),
            ))
        });
        let fence_poller = fences
            .as_ref()
            .and_then(|f| fence::spawn_poller(Arc::clone(f), Arc::clone(&inner), FENCE_POLL));
        let told_in = cache.namespace().map(NamespaceTag::of);
        let resolutions =
            (!cache.is_shared()).then(|| resolutions::Resolutions::new(RESOLUTIONS_CACHED));
        CachedStore {
            inner,
            cache,
            stats: Arc::new(CacheStats::default()),
            skip_until: Mutex::new(None),
            fault_skip: SKIP_AFTER_FAULT,
            fences,
            fence_poller,
            loads: single_flight::Loads::default(),
            told_in,
            resolutions,
        }
    }

    /// Reads the ledger's cache fences now (the poller does it every [`FENCE_POLL`]); for
    /// tests and tools that must not wait for the next poll.
    pub async fn sync_fences(&self) -> Result<()> {
        match &self.fences {
            Some(fences) => fences.sync(self.inner.as_ref()).await,
            None => Ok(()),
        }
    }

    /// Whether the cache may be used for reads now: no recent fault, and (shared cache)
    /// the fences are known within their lease, polling them now if the lease ran out.
    async fn usable(&self) -> bool {
        if self.skipping() || self.namespace_changed() {
            return false;
        }
        let Some(fences) = &self.fences else {
            return true;
        };
        if fences.fresh() {
            return true;
        }
        match fences.sync_if_stale(self.inner.as_ref()).await {
            Ok(()) => true,
            Err(e) => {
                CacheStats::count(&self.stats.fallbacks);
                tracing::debug!(error = %e, "cache fences unknown; reading the ledger");
                false
            }
        }
    }

    /// Whether a cached state of `tenant` read at `revision` is behind no fence.
    /// Whether the ledger's cache namespace was rotated while this replica ran.
    fn namespace_changed(&self) -> bool {
        self.fences.as_ref().is_some_and(|f| f.namespace_changed())
    }

    /// Whether a state (cached, or read by another reader) may answer a read of
    /// `consistency`: not older than the tenant's fence, nor than the revision asked for.
    fn fresh_enough(&self, tenant: &str, state: &SubjectState, consistency: Consistency) -> bool {
        self.admits_state(tenant, state.revision)
            && match consistency {
                Consistency::AtLeast(min) => state.revision >= min,
                Consistency::MinimizeLatency | Consistency::Full => true,
            }
    }

    fn admits_state(&self, tenant: &str, revision: Revision) -> bool {
        self.fences
            .as_ref()
            .is_none_or(|f| f.admits_state(tenant, revision))
    }

    /// Changes how long reads skip the cache after a fault (default [`SKIP_AFTER_FAULT`]).
    pub fn with_fault_skip(mut self, fault_skip: Duration) -> CachedStore {
        self.fault_skip = fault_skip;
        self
    }

    /// Whether the cache is in its skip window after a fault.
    fn in_skip_window(&self) -> bool {
        self.skip_until
            .lock()
            .map(|until| until.is_some_and(|t| Instant::now() < t))
            .unwrap_or(false)
    }

    /// Whether reads should skip the cache now (a recent fault); counts the skip as a fallback.
    fn skipping(&self) -> bool {
        let skip = self.in_skip_window();
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

    /// Marks the subjects' entries as written-to before the commit. `false` when the
    /// cache could not be told (or is in its skip window after a fault, where trying would
    /// only add a timeout to the write): the write must then be fenced.
    async fn begin_write(&self, tenant: &str, subjects: &[&str], aliases: &[AliasKey]) -> bool {
        if self.in_skip_window() {
            return false;
        }
        let cache = &self.cache;
        let marked = within_budget(async {
            for subject in subjects {
                cache.begin_write(tenant, subject).await?;
            }
            if let Some(resolutions) = cache.shared_resolutions() {
                for alias in aliases {
                    resolutions.begin_link_write(tenant, alias).await?;
                }
            }
            Ok(())
        })
        .await;
        match marked {
            Ok(()) => true,
            Err(e) => {
                self.fallback("mark write in flight", &e);
                false
            }
        }
    }

    /// Replaces the pending markers by tombstones at the write's revision. If that fails, a
    /// marker still refuses fills until it expires, unless the cache lost it (a restart makes
    /// every older Redis entry a miss anyway); to leave nothing to chance the tenant is then
    /// fenced at its current head, in a transaction of its own.
    async fn tombstone(
        &self,
        tenant: &str,
        subjects: &[&str],
        aliases: &[AliasKey],
        revision: Revision,
    ) {
        let cache = &self.cache;
        let buried = within_budget(async {
            for subject in subjects {
                cache.invalidate_state(tenant, subject, revision).await?;
            }
            if let Some(resolutions) = cache.shared_resolutions() {
                for alias in aliases {
                    resolutions
                        .invalidate_resolution(tenant, alias, revision)
                        .await?;
                }
            }
            Ok(())
        })
        .await;
        if let Err(e) = buried {
            self.fallback("invalidate after write", &e);
            if let Err(e) = self.fence(tenant).await {
                tracing::error!(error = %e, tenant, revision, "write committed but neither its tombstone nor a cache fence could be written; its pending marker guards the cache until it expires");
            }
        }
    }

    /// Fences the tenant's cached states at the ledger's current head.
    async fn fence(&self, tenant: &str) -> Result<()> {
        if self.fences.is_none() {
            return Ok(());
        }
        let outcome = self
            .inner
            .append(tenant, &[], None, CacheFence::States)
            .await?;
        if let Some(fences) = &self.fences {
            fences.raise_states(tenant, outcome.revision);
        }
        Ok(())
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
    async fn catalog(&self, tenant: &str, consistency: Consistency) -> Result<Arc<Catalog>> {
        if consistency == Consistency::Full || !self.usable().await {
            return self.inner.catalog(tenant, Consistency::Full).await;
        }
        match self.cache.get_catalog(tenant).await {
            Ok(Some(catalog))
                if self
                    .fences
                    .as_ref()
                    .is_none_or(|f| f.admits_catalog(tenant, catalog.version)) =>
            {
                CacheStats::count(&self.stats.hits);
                return Ok(catalog);
            }
            Ok(_) => CacheStats::count(&self.stats.misses),
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
        events: &[NewEvent],
        idempotency: Option<&Idempotency>,
        fence: CacheFence,
    ) -> Result<AppendOutcome> {
        self.append_events(tenant, events, idempotency, fence, None)
            .await
    }

    async fn append_by_identity(
        &self,
        tenant: &str,
        events: &[NewEvent],
        idempotency: Option<&Idempotency>,
        fence: CacheFence,
        alias: &AliasKey,
    ) -> Result<AppendOutcome> {
        self.append_events(tenant, events, idempotency, fence, Some(alias))
            .await
    }

    async fn append_flags(
        &self,
        tenant: &str,
        subject_id: &str,
        records: Vec<NewRecord>,
        fence: CacheFence,
    ) -> Result<FlagsOutcome> {
        self.flags_write(tenant, subject_id, records, fence, None)
            .await
    }

    async fn append_flags_by_identity(
        &self,
        tenant: &str,
        subject_id: &str,
        records: Vec<NewRecord>,
        fence: CacheFence,
        alias: &AliasKey,
    ) -> Result<FlagsOutcome> {
        self.flags_write(tenant, subject_id, records, fence, Some(alias))
            .await
    }

    async fn erase_subject(
        &self,
        tenant: &str,
        subject_id: &str,
        record: NewRecord,
        fence: CacheFence,
    ) -> Result<ErasureOutcome> {
        self.erasure(tenant, subject_id, record, fence, None).await
    }

    async fn erase_subject_by_identity(
        &self,
        tenant: &str,
        subject_id: &str,
        record: NewRecord,
        fence: CacheFence,
        alias: &AliasKey,
    ) -> Result<ErasureOutcome> {
        self.erasure(tenant, subject_id, record, fence, Some(alias))
            .await
    }

    async fn chain_key(&self, tenant: &str) -> Result<consent_core::chain::ChainKey> {
        self.inner.chain_key(tenant).await
    }

    async fn subject_state(
        &self,
        tenant: &str,
        subject_id: &str,
        as_of: Option<Timestamp>,
        consistency: Consistency,
    ) -> Result<Arc<SubjectState>> {
        // Past states are not cached, and Full bypasses the cache.
        if as_of.is_some() || consistency == Consistency::Full {
            return self
                .inner
                .subject_state(tenant, subject_id, as_of, consistency)
                .await;
        }
        if !self.usable().await {
            return self
                .inner
                .subject_state(tenant, subject_id, None, Consistency::Full)
                .await;
        }
        let mut tombstone = None;
        match self.cache.get_state(tenant, subject_id).await {
            Ok(StateLookup::Hit(state)) if self.fresh_enough(tenant, &state, consistency) => {
                CacheStats::count(&self.stats.hits);
                note_on_span(1, 0);
                return Ok(state);
            }
            Ok(StateLookup::Tombstone(revision)) => {
                CacheStats::count(&self.stats.misses);
                note_on_span(0, 1);
                tombstone = Some(revision);
            }
            Ok(StateLookup::Hit(_) | StateLookup::Miss) => {
                CacheStats::count(&self.stats.misses);
                note_on_span(0, 1);
            }
            Err(e) => {
                self.fallback("get state", &e);
                return self
                    .inner
                    .subject_state(tenant, subject_id, None, Consistency::Full)
                    .await;
            }
        }
        // Behind the same tombstone, concurrent misses share one read (see single_flight).
        let read_started = Instant::now();
        let (state, joined) = match tombstone {
            Some(revision) => {
                self.loads
                    .read(&self.inner, tenant, subject_id, revision)
                    .await
            }
            None => (
                self.inner
                    .subject_state(tenant, subject_id, None, Consistency::Full)
                    .await,
                false,
            ),
        };
        let state = state?;
        if joined {
            if self.fresh_enough(tenant, &state, consistency) {
                return Ok(state);
            }
            return self
                .inner
                .subject_state(tenant, subject_id, None, Consistency::Full)
                .await;
        }
        if read_started.elapsed() < MAX_FILL_READ_AGE
            && let Err(e) = self.cache.fill_state(tenant, subject_id, &state).await
        {
            self.fallback("fill state", &e);
        }
        Ok(state)
    }

    async fn subject_states(
        &self,
        tenant: &str,
        subjects: &[String],
        consistency: Consistency,
    ) -> Result<Vec<Arc<SubjectState>>> {
        // A single Check: the single read, without the batch's bookkeeping.
        if let [subject] = subjects {
            return Ok(vec![
                self.subject_state(tenant, subject, None, consistency)
                    .await?,
            ]);
        }
        if consistency == Consistency::Full || !self.usable().await {
            return self
                .inner
                .subject_states(tenant, subjects, Consistency::Full)
                .await;
        }
        // Look every subject up (a few at a time, for a remote cache), then read the misses
        // from the ledger in one call and fill them in.
        let lookups: Vec<_> = subjects
            .iter()
            .map(|subject| self.cache.get_state(tenant, subject))
            .collect();
        let looked_up: Vec<Result<StateLookup>> = futures::stream::iter(lookups)
            .buffered(BATCH_LOOKUPS)
            .collect()
            .await;
        let mut states: Vec<Option<Arc<SubjectState>>> = Vec::with_capacity(subjects.len());
        let mut missing = Vec::new();
        for (i, found) in looked_up.into_iter().enumerate() {
            match found {
                Ok(StateLookup::Hit(state)) if self.fresh_enough(tenant, &state, consistency) => {
                    CacheStats::count(&self.stats.hits);
                    states.push(Some(state));
                }
                Ok(_) => {
                    CacheStats::count(&self.stats.misses);
                    missing.push(i);
                    states.push(None);
                }
                Err(e) => {
                    self.fallback("get state", &e);
                    return self
                        .inner
                        .subject_states(tenant, subjects, Consistency::Full)
                        .await;
                }
            }
        }
        note_on_span(subjects.len() - missing.len(), missing.len());
        if !missing.is_empty() {
            let names: Vec<String> = missing
                .iter()
                .filter_map(|&i| subjects.get(i).cloned())
                .collect();
            let read_started = Instant::now();
            let read = self
                .inner
                .subject_states(tenant, &names, Consistency::Full)
                .await?;
            let fill = read_started.elapsed() < MAX_FILL_READ_AGE;
            for ((&i, name), state) in missing.iter().zip(&names).zip(read) {
                if fill && let Err(e) = self.cache.fill_state(tenant, name, &state).await {
                    self.fallback("fill state", &e);
                }
                if let Some(slot) = states.get_mut(i) {
                    *slot = Some(state);
                }
            }
        }
        states
            .into_iter()
            .map(|s| {
                s.ok_or_else(|| {
                    consent_core::ConsentError::Internal("a subject state went missing".into())
                })
            })
            .collect()
    }

    async fn subject_history(&self, tenant: &str, subject_id: &str) -> Result<SubjectState> {
        self.inner.subject_history(tenant, subject_id).await
    }

    async fn list_events(&self, tenant: &str, query: &EventQuery) -> Result<Vec<StoredEvent>> {
        self.inner.list_events(tenant, query).await
    }

    async fn list_records(&self, tenant: &str, query: &EventQuery) -> Result<Vec<StoredRecord>> {
        self.inner.list_records(tenant, query).await
    }

    async fn head(&self, tenant: &str) -> Result<LedgerHead> {
        self.inner.head(tenant).await
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Commit> {
        self.inner.subscribe()
    }

    async fn cache_fences(&self, after: i64) -> Result<Vec<FenceRecord>> {
        self.inner.cache_fences(after).await
    }

    async fn cache_namespace(&self) -> Result<String> {
        self.inner.cache_namespace().await
    }
}

impl CachedStore {
    /// A consent write (named by `alias` when given: [`LedgerStore::append_by_identity`]),
    /// with the written subjects' entries marked before it and tombstoned after.
    async fn append_events(
        &self,
        tenant: &str,
        events: &[NewEvent],
        idempotency: Option<&Idempotency>,
        fence: CacheFence,
        alias: Option<&AliasKey>,
    ) -> Result<AppendOutcome> {
        let mut subjects: Vec<&str> = events.iter().map(|e| e.subject_id.as_str()).collect();
        subjects.sort_unstable();
        subjects.dedup();
        let fence = self.before_write(tenant, &subjects, &[], fence).await;
        let outcome = match alias {
            Some(alias) => {
                self.inner
                    .append_by_identity(tenant, events, idempotency, fence, alias)
                    .await
            }
            None => self.inner.append(tenant, events, idempotency, fence).await,
        }?;
        self.after_write(tenant, &subjects, &[], fence, outcome.revision)
            .await;
        Ok(outcome)
    }

    /// A write of a subject's flags (named by `alias` when given), with the coherence of a
    /// consent write: flags are part of the subject's cached state.
    async fn flags_write(
        &self,
        tenant: &str,
        subject_id: &str,
        records: Vec<NewRecord>,
        fence: CacheFence,
        alias: Option<&AliasKey>,
    ) -> Result<FlagsOutcome> {
        let subjects = [subject_id];
        let fence = self.before_write(tenant, &subjects, &[], fence).await;
        let outcome = match alias {
            Some(alias) => {
                self.inner
                    .append_flags_by_identity(tenant, subject_id, records, fence, alias)
                    .await
            }
            None => {
                self.inner
                    .append_flags(tenant, subject_id, records, fence)
                    .await
            }
        }?;
        self.after_write(tenant, &subjects, &[], fence, outcome.revision)
            .await;
        Ok(outcome)
    }

    /// An erasure (named by `alias` when by identity). The erased marker is part of the
    /// subject's cached state: a consent write's coherence. The erasure drops the subject's
    /// identity links too, so their resolutions move. (A link made between this list and the
    /// erasure is marked by its own write; a copy of it read before the erasure resolves to
    /// the erased subject, which allows nothing, until the identity's next write.)
    async fn erasure(
        &self,
        tenant: &str,
        subject_id: &str,
        record: NewRecord,
        fence: CacheFence,
        alias: Option<&AliasKey>,
    ) -> Result<ErasureOutcome> {
        let subjects = [subject_id];
        let aliases = self.linked_aliases(tenant, subject_id).await?;
        let fence = self.before_write(tenant, &subjects, &aliases, fence).await;
        let erase = async {
            match alias {
                Some(alias) => {
                    self.inner
                        .erase_subject_by_identity(tenant, subject_id, record, fence, alias)
                        .await
                }
                None => {
                    self.inner
                        .erase_subject(tenant, subject_id, record, fence)
                        .await
                }
            }
        };
        let erased = self.around_link_write(tenant, erase).await?;
        self.after_write(tenant, &subjects, &aliases, fence, erased.revision)
            .await;
        Ok(erased)
    }

    /// Before a write's commit: marks the subjects' entries as written-to, so that if the
    /// post-commit tombstone cannot be written the entries cost misses, not stale answers.
    /// Returns the fence the write must carry: if the cache cannot be told, the write fences
    /// the tenant in its own transaction.
    async fn before_write(
        &self,
        tenant: &str,
        subjects: &[&str],
        aliases: &[AliasKey],
        fence: CacheFence,
    ) -> CacheFence {
        // A replica whose namespace was rotated away cannot tell the others' caches.
        let told = !self.namespace_changed() && self.begin_write(tenant, subjects, aliases).await;
        match (told, fence, self.told_in) {
            (false, _, _) => CacheFence::States,
            // The store checks, in the write's transaction, that the ledger's namespace is
            // still the one told; if it was rotated meanwhile it fences the write.
            (true, CacheFence::None, Some(namespace)) => CacheFence::Told { namespace },
            (true, fence, _) => fence,
        }
    }

    /// After the commit: the fence raised in the store is applied here at once; otherwise
    /// the subjects' entries (and the aliases' resolutions) become tombstones at the write's
    /// revision.
    async fn after_write(
        &self,
        tenant: &str,
        subjects: &[&str],
        aliases: &[AliasKey],
        fence: CacheFence,
        revision: consent_core::Revision,
    ) {
        match (&self.fences, fence) {
            (Some(fences), CacheFence::States) => fences.raise_states(tenant, revision),
            _ => self.tombstone(tenant, subjects, aliases, revision).await,
        }
    }
}

// Retention data is never cached: every call goes to the ledger. An attestation moves the
// revision but no subject's consent state, so cached states stay right.
consent_store::retention_store_proxy!(CachedStore);

/// How many identity resolutions a cache of this process keeps.
const RESOLUTIONS_CACHED: u64 = 100_000;

impl CachedStore {
    /// Runs a write that changes identity links with the tenant's cached resolutions of this
    /// process left behind before it and again after it (see `resolutions`); a shared
    /// cache's are marked by [`CachedStore::before_write`] and [`CachedStore::after_write`].
    async fn around_link_write<T>(
        &self,
        tenant: &str,
        write: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        if let Some(resolutions) = &self.resolutions {
            resolutions.bump(tenant);
        }
        let written = write.await;
        if let Some(resolutions) = &self.resolutions {
            resolutions.bump(tenant);
        }
        written
    }

    /// A link or unlink of `alias`, with the caches told before and after it.
    async fn alias_write<F, Fut>(
        &self,
        tenant: &str,
        alias: AliasKey,
        fence: CacheFence,
        write: F,
    ) -> Result<consent_store::LinkOutcome>
    where
        F: FnOnce(CacheFence) -> Fut,
        Fut: std::future::Future<Output = Result<consent_store::LinkOutcome>>,
    {
        let aliases = [alias];
        let fence = self.before_write(tenant, &[], &aliases, fence).await;
        let written = self.around_link_write(tenant, write(fence)).await?;
        self.after_write(tenant, &[], &aliases, fence, written.revision)
            .await;
        Ok(written)
    }

    /// The aliases linked to `subject_id`, for a write that moves them all (merge, erasure);
    /// none without a shared cache of resolutions.
    async fn linked_aliases(&self, tenant: &str, subject_id: &str) -> Result<Vec<AliasKey>> {
        if self.cache.shared_resolutions().is_none() {
            return Ok(Vec::new());
        }
        Ok(self
            .inner
            .list_identities(tenant, subject_id)
            .await?
            .into_iter()
            .map(|identity| identity.link.alias)
            .collect())
    }

    /// A resolution from the shared cache when it holds a usable one, else from the ledger
    /// (then cached).
    async fn resolve_shared(
        &self,
        shared: &dyn ResolutionCache,
        tenant: &str,
        alias: &AliasKey,
    ) -> Result<Resolution> {
        if !self.usable().await {
            return self.inner.resolve_identity_at(tenant, alias).await;
        }
        match shared.get_resolution(tenant, alias).await {
            // Behind a fence like a state: a resolution older than it is not trusted.
            Ok(Some(resolution)) if self.admits_state(tenant, resolution.revision) => {
                CacheStats::count(&self.stats.hits);
                return Ok(resolution);
            }
            Ok(_) => CacheStats::count(&self.stats.misses),
            Err(e) => {
                self.fallback("get resolution", &e);
                return self.inner.resolve_identity_at(tenant, alias).await;
            }
        }
        let read_started = Instant::now();
        let resolution = self.inner.resolve_identity_at(tenant, alias).await?;
        if read_started.elapsed() < MAX_FILL_READ_AGE
            && let Err(e) = shared.fill_resolution(tenant, alias, &resolution).await
        {
            self.fallback("fill resolution", &e);
        }
        Ok(resolution)
    }
}

#[async_trait]
impl consent_store::IdentityStore for CachedStore {
    async fn ensure_subject_key(&self, tenant: &str) -> Result<consent_core::chain::ChainKey> {
        self.inner.ensure_subject_key(tenant).await
    }

    async fn link_identity(
        &self,
        tenant: &str,
        subject_id: &str,
        link: &consent_store::NewLink,
        record: NewRecord,
        fence: CacheFence,
    ) -> Result<consent_store::LinkOutcome> {
        self.alias_write(tenant, link.alias, fence, |fence| {
            self.inner
                .link_identity(tenant, subject_id, link, record, fence)
        })
        .await
    }

    async fn unlink_identity(
        &self,
        tenant: &str,
        subject_id: &str,
        alias: &AliasKey,
        record: NewRecord,
        fence: CacheFence,
    ) -> Result<consent_store::LinkOutcome> {
        self.alias_write(tenant, *alias, fence, |fence| {
            self.inner
                .unlink_identity(tenant, subject_id, alias, record, fence)
        })
        .await
    }

    async fn resolve_identity_at(&self, tenant: &str, alias: &AliasKey) -> Result<Resolution> {
        if let Some(shared) = self.cache.shared_resolutions() {
            return self.resolve_shared(shared, tenant, alias).await;
        }
        let Some(resolutions) = &self.resolutions else {
            return self.inner.resolve_identity_at(tenant, alias).await;
        };
        if let Some(resolution) = resolutions.get(tenant, alias) {
            CacheStats::count(&self.stats.hits);
            return Ok(resolution);
        }
        CacheStats::count(&self.stats.misses);
        let generation = resolutions.generation(tenant);
        let resolution = self.inner.resolve_identity_at(tenant, alias).await?;
        resolutions.fill(tenant, alias, generation, resolution.clone());
        Ok(resolution)
    }

    async fn list_identities(
        &self,
        tenant: &str,
        subject_id: &str,
    ) -> Result<Vec<consent_store::StoredIdentity>> {
        self.inner.list_identities(tenant, subject_id).await
    }

    async fn merge_subjects(
        &self,
        tenant: &str,
        merge: &consent_store::Merge,
        fence: CacheFence,
    ) -> Result<consent_store::MergeOutcome> {
        // Both subjects' states change (the one merged into takes choices and flags, the
        // other is closed): a consent write's coherence for both. Subjects merged earlier
        // into `from` keep their states (closed, naming `from`, which now names `into`).
        // Identities move: `from`'s and the one asking are marked before; after the commit
        // every identity of `into` is tombstoned, which covers one linked to `from` between
        // the list and the merge.
        let subjects = [merge.into.as_str(), merge.from.as_str()];
        let mut aliases = self.linked_aliases(tenant, &merge.from).await?;
        aliases.push(match &merge.via {
            consent_store::MergeVia::Linked(alias) => *alias,
            consent_store::MergeVia::NewLink(link) => link.alias,
        });
        let fence = self.before_write(tenant, &subjects, &aliases, fence).await;
        let merged = self
            .around_link_write(tenant, self.inner.merge_subjects(tenant, merge, fence))
            .await?;
        match self.linked_aliases(tenant, &merge.into).await {
            Ok(moved) => aliases.extend(moved),
            Err(e) => {
                // An identity linked to `from` meanwhile may be cached as it was: fence.
                self.fallback("list the identities a merge moved", &e);
                if let Err(e) = self.fence(tenant).await {
                    tracing::error!(error = %e, tenant, "merge committed but the identities it moved could not be listed nor the cache fenced; a resolution cached before it may name the merged-away subject, whose reads answer for the group");
                }
            }
        }
        self.after_write(tenant, &subjects, &aliases, fence, merged.revision)
            .await;
        Ok(merged)
    }

    async fn merged_into(&self, tenant: &str, root: &str) -> Result<Vec<String>> {
        self.inner.merged_into(tenant, root).await
    }

    async fn merge_root(&self, tenant: &str, subject_id: &str) -> Result<Option<String>> {
        self.inner.merge_root(tenant, subject_id).await
    }
}

impl CachedStore {
    fn inner(&self) -> &dyn Store {
        &*self.inner
    }

    async fn around<T: Send>(
        &self,
        _method: &'static str,
        call: impl std::future::Future<Output = Result<T>> + Send,
    ) -> Result<T> {
        call.await
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
