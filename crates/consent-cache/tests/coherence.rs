//! The cache's promises: coherent across replicas sharing Redis, no stale fill outliving a
//! write, `AtLeast` and `Full` never answered from old entries, and a Redis outage costing
//! latency only: every read stays correct, a counter records the fallbacks, and the cache
//! refills when Redis returns.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::{NAMESPACE, TTL, ledger, sql_ledger, write};
use consent_cache::testing::{Relay, redis_test_url};
use consent_cache::{CacheBackend, CachedStore, MemoryCache, RedisCache, StateLookup};
use consent_core::Decision;
use consent_store::{
    CacheFence, CatalogStore, Consistency, IdentityStore as _, LedgerStore, Store,
};
use consent_store_sql::SqlStore;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The in-process backend, and Redis when a test Redis is configured.
async fn backends() -> Vec<Arc<dyn CacheBackend>> {
    let mut backends: Vec<Arc<dyn CacheBackend>> = vec![Arc::new(MemoryCache::new(1000, TTL))];
    if let Some(url) = redis_test_url() {
        let redis = RedisCache::standalone(&url, NAMESPACE, TTL)
            .await
            .unwrap_or_else(|e| panic!("redis: {e}"));
        backends.push(Arc::new(redis));
    }
    backends
}

/// A safety net on waits for this test's own redis-server; never a timing claim.
const SAFETY: Duration = Duration::from_secs(30);

async fn decision(
    store: &dyn Store,
    tenant: &str,
    subject: &str,
    consistency: Consistency,
) -> Option<Decision> {
    store
        .subject_state(tenant, subject, None, consistency)
        .await
        .unwrap_or_else(|e| panic!("read: {e}"))
        .entries
        .first()
        .map(|e| e.decision)
}

fn tenant() -> String {
    format!("t-{}", uuid::Uuid::now_v7())
}

/// Replicas A and B (two cached stacks) over one fresh ledger and the Redis at `url`: the
/// ledger's directory, A, B.
async fn replica_pair(url: &str) -> (tempfile::TempDir, CachedStore, CachedStore) {
    let (ledger, dir) = ledger().await;
    let replica = |ledger: Arc<dyn Store>| async move {
        let cache: Arc<dyn CacheBackend> = Arc::new(
            RedisCache::standalone(url, NAMESPACE, TTL)
                .await
                .unwrap_or_else(|e| panic!("redis: {e}")),
        );
        CachedStore::new(ledger, cache)
    };
    (dir, replica(ledger.clone()).await, replica(ledger).await)
}

/// Two replicas (two cached stacks) over one ledger and one Redis: a withdrawal made
/// through A is what B answers next, with no wait, although B had the grant cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_replica_is_seen_by_the_other_at_once() {
    let Some(url) = redis_test_url() else { return };
    let (_dir, a, b) = replica_pair(&url).await;
    let t = tenant();
    write(&a, &t, "caller", Decision::Granted).await;
    assert_eq!(
        decision(&b, &t, "caller", Consistency::MinimizeLatency).await,
        Some(Decision::Granted)
    );
    assert_eq!(
        decision(&b, &t, "caller", Consistency::MinimizeLatency).await,
        Some(Decision::Granted)
    );
    let (hits_before, _, _) = b.stats().snapshot();
    assert!(hits_before >= 1, "B answers from the cache");
    write(&a, &t, "caller", Decision::Withdrawn).await;
    assert_eq!(
        decision(&b, &t, "caller", Consistency::MinimizeLatency).await,
        Some(Decision::Withdrawn)
    );
}

/// A fill read before a write (an older revision) is refused once the write tombstoned the
/// entry, on both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_read_before_a_write_cannot_outlive_it() {
    let backends = backends().await;
    for cache in backends {
        let (ledger, _dir) = ledger().await;
        let store = CachedStore::new(ledger.clone(), cache.clone());
        let t = tenant();
        write(&store, &t, "caller", Decision::Granted).await;
        // A slow reader takes its snapshot now...
        let old = ledger
            .subject_state(&t, "caller", None, Consistency::Full)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // ...a withdrawal commits and tombstones the entry...
        write(&store, &t, "caller", Decision::Withdrawn).await;
        // ...and the slow reader's fill arrives late.
        cache
            .fill_state(&t, "caller", &old)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            cache
                .get_state(&t, "caller")
                .await
                .ok()
                .and_then(StateLookup::hit),
            None,
            "{}",
            cache.describe()
        );
        assert_eq!(
            decision(&store, &t, "caller", Consistency::MinimizeLatency).await,
            Some(Decision::Withdrawn)
        );
    }
}

/// `AtLeast(r)` reads the ledger when the entry is older than `r`; `Full` always does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistency_tokens_are_honoured() {
    let (ledger, _dir) = ledger().await;
    let cache: Arc<dyn CacheBackend> = Arc::new(MemoryCache::new(1000, TTL));
    let store = CachedStore::new(ledger.clone(), cache.clone());
    let t = tenant();
    let r1 = write(&store, &t, "caller", Decision::Granted).await;
    decision(&store, &t, "caller", Consistency::MinimizeLatency).await;
    // A write that bypasses this cache (another replica with an in-process cache would).
    let r2 = write(ledger.as_ref(), &t, "caller", Decision::Withdrawn).await;
    assert!(r2 > r1);
    assert_eq!(
        decision(&store, &t, "caller", Consistency::MinimizeLatency).await,
        Some(Decision::Granted),
        "the in-process entry is older; minimize_latency may use it"
    );
    assert_eq!(
        decision(&store, &t, "caller", Consistency::AtLeast(r2)).await,
        Some(Decision::Withdrawn)
    );
    assert_eq!(
        decision(&store, &t, "caller", Consistency::Full).await,
        Some(Decision::Withdrawn)
    );
    let state = store
        .subject_state(&t, "caller", None, Consistency::AtLeast(r2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(state.revision >= r2);
}

/// A Redis server of this test's own, on a free loopback port.
struct OwnRedis {
    child: Child,
    port: u16,
}

impl OwnRedis {
    /// Without persistence.
    async fn start(port: Option<u16>) -> OwnRedis {
        OwnRedis::start_in(port, None).await
    }

    /// With its snapshot file (`dump.rdb`) in `dir` when given: loaded at start, written by
    /// `SAVE` and `SHUTDOWN SAVE` (no automatic snapshots).
    async fn start_in(port: Option<u16>, dir: Option<&std::path::Path>) -> OwnRedis {
        let port = match port {
            Some(p) => p,
            None => {
                let probe =
                    std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
                probe.local_addr().unwrap_or_else(|e| panic!("{e}")).port()
            }
        };
        let mut command = Command::new("redis-server");
        command.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        if let Some(dir) = dir {
            command.arg("--dir").arg(dir);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server: {e}"));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("stdout"));
        let mut lines = BufReader::new(stdout).lines();
        tokio::time::timeout(SAFETY, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Ready to accept connections") {
                    return;
                }
            }
            panic!("redis-server exited before it was ready");
        })
        .await
        .unwrap_or_else(|_| panic!("redis-server did not become ready"));
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        OwnRedis { child, port }
    }

    /// Runs a command with redis-cli against this server.
    async fn cli(&self, args: &[&str]) {
        let status = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .status()
            .await
            .unwrap_or_else(|e| panic!("redis-cli: {e}"));
        assert!(status.success(), "redis-cli {args:?}");
    }

    /// `SHUTDOWN SAVE`: the server writes its snapshot and exits.
    async fn shutdown_save(mut self) -> u16 {
        // redis-cli reports the dropped connection of a SHUTDOWN; the exit is what counts.
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "SHUTDOWN", "SAVE"])
            .status()
            .await;
        let exited = tokio::time::timeout(SAFETY, self.child.wait()).await;
        assert!(exited.is_ok_and(|s| s.is_ok()), "redis-server did not exit");
        self.port
    }

    async fn kill(mut self) -> u16 {
        self.child
            .kill()
            .await
            .unwrap_or_else(|e| panic!("kill redis: {e}"));
        self.port
    }
}

/// A Redis of the test's own, a fresh ledger (with its directory) and a cache on that Redis.
async fn own_redis_stack() -> (
    OwnRedis,
    Arc<dyn Store>,
    tempfile::TempDir,
    Arc<dyn CacheBackend>,
) {
    let redis = OwnRedis::start(None).await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let (ledger, dir) = ledger().await;
    let cache = RedisCache::standalone(&url, NAMESPACE, TTL)
        .await
        .unwrap_or_else(|e| panic!("redis: {e}"));
    (redis, ledger, dir, Arc::new(cache))
}

/// Redis killed mid-run: reads stay correct from the ledger and are counted as fallbacks;
/// writes still succeed; never an answer from nowhere. Redis back: the cache refills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_costs_latency_not_correctness() {
    if redis_test_url().is_none() {
        return;
    }
    let (redis, ledger, _dir, cache) = own_redis_stack().await;
    // No skip window, so the test sees recovery on the next reads rather than after a delay.
    let store = CachedStore::new(ledger, cache).with_fault_skip(Duration::ZERO);
    let t = tenant();
    write(&store, &t, "caller", Decision::Granted).await;
    assert_eq!(
        decision(&store, &t, "caller", Consistency::MinimizeLatency).await,
        Some(Decision::Granted)
    );

    // Flushed: every entry gone at once; the next reads miss, refill, and stay correct.
    let flushed = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "FLUSHALL"])
        .status()
        .await
        .unwrap_or_else(|e| panic!("redis-cli: {e}"));
    assert!(flushed.success());
    assert_eq!(
        decision(&store, &t, "caller", Consistency::MinimizeLatency).await,
        Some(Decision::Granted)
    );
    assert_eq!(
        decision(&store, &t, "caller", Consistency::MinimizeLatency).await,
        Some(Decision::Granted)
    );
    assert!(store.stats().snapshot().0 >= 1, "refilled after the flush");

    let port = redis.kill().await;
    write(&store, &t, "caller", Decision::Withdrawn).await;
    for _ in 0..3 {
        assert_eq!(
            decision(&store, &t, "caller", Consistency::MinimizeLatency).await,
            Some(Decision::Withdrawn)
        );
    }
    let (_, _, fallbacks) = store.stats().snapshot();
    assert!(fallbacks >= 3, "fallbacks are counted: {fallbacks}");

    let _redis = OwnRedis::start(Some(port)).await;
    let hits_before_restart = store.stats().snapshot().0;
    // The connection is re-established on use; a bounded number of reads, no sleeping.
    let mut refilled = false;
    for _ in 0..20 {
        assert_eq!(
            decision(&store, &t, "caller", Consistency::MinimizeLatency).await,
            Some(Decision::Withdrawn)
        );
        // The restarted Redis is empty: one read refills it, the next one hits.
        let (hits, _, _) = store.stats().snapshot();
        if hits > hits_before_restart {
            refilled = true;
            break;
        }
    }
    assert!(
        refilled,
        "the cache answers again after Redis returns: {:?}",
        store.stats().snapshot()
    );
}

/// After a fault, reads skip the cache for the skip window: one timeout per window, not per read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_fault_reads_skip_the_cache_for_a_while() {
    if redis_test_url().is_none() {
        return;
    }
    let (redis, ledger, _dir, cache) = own_redis_stack().await;
    let store = CachedStore::new(ledger, cache).with_fault_skip(Duration::from_secs(3600));
    let t = tenant();
    write(&store, &t, "caller", Decision::Granted).await;
    redis.kill().await;
    for _ in 0..5 {
        assert_eq!(
            decision(&store, &t, "caller", Consistency::MinimizeLatency).await,
            Some(Decision::Granted)
        );
    }
    let (hits, misses, fallbacks) = store.stats().snapshot();
    assert_eq!((hits, misses), (0, 0), "no read reached the cache");
    assert!(fallbacks >= 5);
}

/// The real backend, except that post-commit tombstones are lost (as when the cache stops
/// answering between the commit and the acknowledgement).
struct LosesTombstones(Arc<dyn CacheBackend>);

#[async_trait::async_trait]
impl CacheBackend for LosesTombstones {
    async fn get_state(&self, t: &str, s: &str) -> consent_core::Result<StateLookup> {
        self.0.get_state(t, s).await
    }
    async fn fill_state(
        &self,
        t: &str,
        s: &str,
        state: &consent_core::SubjectState,
    ) -> consent_core::Result<()> {
        self.0.fill_state(t, s, state).await
    }
    async fn begin_write(&self, t: &str, s: &str) -> consent_core::Result<()> {
        self.0.begin_write(t, s).await
    }
    async fn invalidate_state(&self, _: &str, _: &str, _: i64) -> consent_core::Result<()> {
        Err(consent_core::ConsentError::Unavailable(
            "tombstone lost".into(),
        ))
    }
    async fn get_catalog(
        &self,
        t: &str,
    ) -> consent_core::Result<Option<Arc<consent_core::Catalog>>> {
        self.0.get_catalog(t).await
    }
    async fn fill_catalog(&self, t: &str, c: &consent_core::Catalog) -> consent_core::Result<()> {
        self.0.fill_catalog(t, c).await
    }
    fn describe(&self) -> String {
        format!("{} losing tombstones", self.0.describe())
    }
    fn is_shared(&self) -> bool {
        self.0.is_shared()
    }
    fn namespace(&self) -> Option<&str> {
        self.0.namespace()
    }
}

/// A write whose tombstone is lost leaves its pending marker: other readers miss and read
/// the ledger (slower), they never answer the old state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_tombstone_costs_misses_not_stale_answers() {
    let backends = backends().await;
    for shared in backends {
        let (ledger, _dir) = ledger().await;
        let writer = CachedStore::new(ledger.clone(), Arc::new(LosesTombstones(shared.clone())));
        let reader = CachedStore::new(ledger.clone(), shared.clone());
        let t = tenant();
        write(&reader, &t, "caller", Decision::Granted).await;
        assert_eq!(
            decision(&reader, &t, "caller", Consistency::MinimizeLatency).await,
            Some(Decision::Granted)
        );
        write(&writer, &t, "caller", Decision::Withdrawn).await;
        for _ in 0..3 {
            assert_eq!(
                decision(&reader, &t, "caller", Consistency::MinimizeLatency).await,
                Some(Decision::Withdrawn),
                "{}",
                shared.describe()
            );
        }
        assert_eq!(
            shared
                .get_state(&t, "caller")
                .await
                .ok()
                .and_then(StateLookup::hit),
            None,
            "fills stay refused"
        );
    }
}

/// A Redis of the test's own that keeps its snapshot in a directory of its own (returned
/// first, to outlive restarts), and its URL.
async fn persistent_redis() -> (tempfile::TempDir, OwnRedis, String) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let redis = OwnRedis::start_in(None, Some(dir.path())).await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    (dir, redis, url)
}

/// A Redis whose snapshot holds a granted entry comes back after a withdrawal (the withdrawal
/// was acknowledged and its tombstone delivered, but the server was then killed and restarted
/// from the older snapshot): the restored entry belongs to another server run, so it reads as
/// a miss and the ledger answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restored_from_an_older_snapshot_cannot_bring_back_a_grant() {
    if redis_test_url().is_none() {
        return;
    }
    let (dir, redis, url) = persistent_redis().await;
    let (ledger, _ledger_dir) = ledger().await;
    let cache: Arc<dyn CacheBackend> = Arc::new(
        RedisCache::standalone(&url, NAMESPACE, TTL)
            .await
            .unwrap_or_else(|e| panic!("redis: {e}")),
    );
    let store = CachedStore::new(ledger, Arc::clone(&cache)).with_fault_skip(Duration::ZERO);
    let t = tenant();
    write(&store, &t, "caller", Decision::Granted).await;
    assert_eq!(
        decision(&store, &t, "caller", Consistency::MinimizeLatency).await,
        Some(Decision::Granted)
    );
    redis.cli(&["SAVE"]).await;
    write(&store, &t, "caller", Decision::Withdrawn).await;
    let port = redis.kill().await;
    let _restored = OwnRedis::start_in(Some(port), Some(dir.path())).await;
    for _ in 0..3 {
        assert_eq!(
            decision(&store, &t, "caller", Consistency::MinimizeLatency).await,
            Some(Decision::Withdrawn),
            "the snapshot's grant must not come back"
        );
    }
}

/// The outside probe's sequence: grant, a check fills Redis, Redis is shut down saving its
/// snapshot, a withdrawal is acknowledged while it is down, Redis restarts from the snapshot.
/// Another replica, which saw no fault, must not answer the snapshot's grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_made_while_redis_was_down_survives_its_restart_from_a_snapshot() {
    if redis_test_url().is_none() {
        return;
    }
    let (dir, redis, url) = persistent_redis().await;
    let (ledger, _ledger_dir) = ledger().await;
    let replica = |ledger: Arc<dyn Store>| {
        let url = url.clone();
        async move {
            let cache: Arc<dyn CacheBackend> = Arc::new(
                RedisCache::standalone(&url, NAMESPACE, TTL)
                    .await
                    .unwrap_or_else(|e| panic!("redis: {e}")),
            );
            CachedStore::new(ledger, cache).with_fault_skip(Duration::ZERO)
        }
    };
    let (writer, reader) = (replica(ledger.clone()).await, replica(ledger).await);
    let t = tenant();
    write(&writer, &t, "caller", Decision::Granted).await;
    assert_eq!(
        decision(&reader, &t, "caller", Consistency::MinimizeLatency).await,
        Some(Decision::Granted)
    );
    let port = redis.shutdown_save().await;
    write(&writer, &t, "caller", Decision::Withdrawn).await;
    let _restored = OwnRedis::start_in(Some(port), Some(dir.path())).await;
    for _ in 0..3 {
        assert_eq!(
            decision(&reader, &t, "caller", Consistency::MinimizeLatency).await,
            Some(Decision::Withdrawn)
        );
    }
}

/// Replicas A and B over one ledger and this test's own Redis, A through a relay the test
/// can cut: the Redis, the relay, the ledger and its directory, A, B.
async fn cut_off_pair() -> (
    OwnRedis,
    Relay,
    Arc<dyn Store>,
    tempfile::TempDir,
    CachedStore,
    CachedStore,
) {
    let redis = OwnRedis::start(None).await;
    let relay = Relay::to(redis.port)
        .await
        .unwrap_or_else(|e| panic!("relay: {e}"));
    let (ledger, dir) = ledger().await;
    let connect = |port: u16| async move {
        let cache: Arc<dyn CacheBackend> = Arc::new(
            RedisCache::standalone(&format!("redis://127.0.0.1:{port}"), NAMESPACE, TTL)
                .await
                .unwrap_or_else(|e| panic!("redis: {e}")),
        );
        cache
    };
    let a = CachedStore::new(ledger.clone(), connect(relay.port).await);
    let b = CachedStore::new(ledger.clone(), connect(redis.port).await);
    (redis, relay, ledger, dir, a, b)
}

/// Replica A is cut off from Redis while replica B still reads it. A's withdrawal cannot
/// reach Redis, so it fences the tenant in the ledger in the same transaction; B stops
/// trusting its older entries as soon as it has read the fences (it polls them every
/// `FENCE_POLL`; the test polls explicitly instead of waiting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_redis_fences_its_writes_for_the_others() {
    if redis_test_url().is_none() {
        return;
    }
    let (_redis, relay, ledger, _dir, a, b) = cut_off_pair().await;
    let t = tenant();
    write(&a, &t, "caller", Decision::Granted).await;
    for _ in 0..2 {
        assert_eq!(
            decision(&b, &t, "caller", Consistency::MinimizeLatency).await,
            Some(Decision::Granted)
        );
    }
    assert!(b.stats().snapshot().0 >= 1, "B answers from Redis");

    relay.cut();
    let withdrawn = write(&a, &t, "caller", Decision::Withdrawn).await;
    assert_eq!(
        decision(&a, &t, "caller", Consistency::MinimizeLatency).await,
        Some(Decision::Withdrawn),
        "A itself never answers the old state"
    );
    let fences = ledger
        .cache_fences(0)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        fences
            .iter()
            .any(|f| f.tenant_id == t && f.revision == withdrawn),
        "the write fenced its tenant: {fences:?}"
    );
    b.sync_fences().await.unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..3 {
        assert_eq!(
            decision(&b, &t, "caller", Consistency::MinimizeLatency).await,
            Some(Decision::Withdrawn),
            "B must not answer the grant Redis still holds"
        );
    }
    // B refilled Redis at the new revision, so it is used again.
    let (hits, _, _) = b.stats().snapshot();
    decision(&b, &t, "caller", Consistency::MinimizeLatency).await;
    assert!(b.stats().snapshot().0 > hits, "the cache serves again");
}

/// `ledger` behind the Redis at `url`, in the cache namespace the ledger holds.
async fn behind_redis(url: &str, ledger: &SqlStore) -> CachedStore {
    let namespace = ledger
        .cache_namespace()
        .await
        .unwrap_or_else(|e| panic!("namespace: {e}"));
    let cache: Arc<dyn CacheBackend> = Arc::new(
        RedisCache::standalone(url, &namespace, TTL)
            .await
            .unwrap_or_else(|e| panic!("redis: {e}")),
    );
    CachedStore::new(Arc::new(ledger.clone()), cache)
}

/// Two ledgers on one Redis (two deployments, staging beside production) never read each
/// other's entries: the same tenant and subject, granted in one and withdrawn in the other,
/// answer each their own. A ledger restored from a backup keeps the namespace it had, so it
/// would read entries cached before the restore, until its namespace is rotated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledgers_sharing_a_redis_read_only_their_own_entries() {
    let Some(url) = redis_test_url() else { return };
    let (a, _a_dir) = sql_ledger().await;
    let (b, _b_dir) = sql_ledger().await;
    let t = tenant();
    let first = behind_redis(&url, &a).await;
    let second = behind_redis(&url, &b).await;
    write(&first, &t, "alice", Decision::Granted).await;
    write(&second, &t, "alice", Decision::Withdrawn).await;
    let read = async |store: &CachedStore| {
        decision(store, &t, "alice", Consistency::MinimizeLatency).await
    };
    // The first ledger's grant is now cached; the second ledger's withdrawal stands.
    assert_eq!(read(&first).await, Some(Decision::Granted));
    assert_eq!(read(&first).await, Some(Decision::Granted));
    assert_eq!(read(&second).await, Some(Decision::Withdrawn));

    // The second ledger as a restore of the first (the same namespace) reads the first's
    // cached grant: the hazard the rotation removes.
    let namespace = a
        .cache_namespace()
        .await
        .unwrap_or_else(|e| panic!("namespace: {e}"));
    b.execute_raw(&format!(
        "UPDATE ledger_identity SET cache_namespace = '{namespace}' WHERE id = 1"
    ))
    .await
    .unwrap_or_else(|e| panic!("update: {e}"));
    let restored = behind_redis(&url, &b).await;
    assert_eq!(read(&restored).await, Some(Decision::Granted));
    let rotated = b
        .rotate_cache_namespace()
        .await
        .unwrap_or_else(|e| panic!("rotate: {e}"));
    assert_ne!(rotated, namespace);
    let restarted = behind_redis(&url, &b).await;
    assert_eq!(read(&restarted).await, Some(Decision::Withdrawn));
}

fn purpose(id: &str, name: &str) -> consent_core::Purpose {
    consent_core::Purpose {
        id: id.into(),
        name: name.into(),
        description: String::new(),
        category: consent_core::PurposeCategory::Analytics,
        legal_basis: consent_core::LegalBasis::Consent,
        vendor_ids: vec![],
        validity_secs: None,
    }
}

/// A replica keeps the catalogue it decoded and reuses it while Redis holds that version;
/// a catalogue write on another replica is what it reads next, with no wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalogue_change_on_one_replica_is_read_by_the_other_at_once() {
    let Some(url) = redis_test_url() else { return };
    let (ledger, _dir) = sql_ledger().await;
    let a = behind_redis(&url, &ledger).await;
    let b = behind_redis(&url, &ledger).await;
    let t = tenant();
    let read = async |store: &CachedStore| {
        store
            .catalog(&t, Consistency::MinimizeLatency)
            .await
            .unwrap_or_else(|e| panic!("catalogue: {e}"))
    };
    a.upsert_purpose(&t, &purpose("analytics", "Analytics"))
        .await
        .unwrap_or_else(|e| panic!("upsert: {e}"));
    let first = read(&b).await;
    assert_eq!(first.purposes["analytics"].name, "Analytics");
    // Read again: the same version, served from the copy b holds.
    let again = read(&b).await;
    assert_eq!(again.version, first.version);
    assert!(Arc::ptr_eq(&first, &again), "the held copy is reused");
    a.upsert_purpose(&t, &purpose("analytics", "Audience analytics"))
        .await
        .unwrap_or_else(|e| panic!("upsert: {e}"));
    let changed = read(&b).await;
    assert!(changed.version > first.version);
    assert_eq!(changed.purposes["analytics"].name, "Audience analytics");
}

/// A namespace rotated while a replica runs (against the documented procedure): its writes
/// are fenced by the store (which compares namespaces in the write's transaction), before
/// and after its next fence poll notices, so a replica started on the new namespace still
/// sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_namespace_was_rotated_fences_its_writes() {
    let Some(url) = redis_test_url() else { return };
    let (ledger, _dir) = sql_ledger().await;
    let old = behind_redis(&url, &ledger).await;
    let t = tenant();
    write(&old, &t, "alice", Decision::Granted).await;
    ledger
        .rotate_cache_namespace()
        .await
        .unwrap_or_else(|e| panic!("rotate: {e}"));
    let new = behind_redis(&url, &ledger).await;
    let read = async |store: &CachedStore| {
        decision(store, &t, "alice", Consistency::MinimizeLatency).await
    };
    // The new replica caches the grant in the new namespace.
    assert_eq!(read(&new).await, Some(Decision::Granted));
    assert_eq!(read(&new).await, Some(Decision::Granted));
    // The old replica writes before its poll has seen the rotation: the write's own
    // transaction finds the namespace changed and fences it.
    write(&old, &t, "alice", Decision::Withdrawn).await;
    new.sync_fences()
        .await
        .unwrap_or_else(|e| panic!("sync: {e}"));
    assert_eq!(read(&new).await, Some(Decision::Withdrawn));
    // Its next poll sees the rotation; from then on it reads the ledger and fences writes.
    assert!(
        old.sync_fences().await.is_err(),
        "the poll reports the change"
    );
    assert_eq!(read(&old).await, Some(Decision::Withdrawn));
    write(&old, &t, "alice", Decision::Granted).await;
    new.sync_fences()
        .await
        .unwrap_or_else(|e| panic!("sync: {e}"));
    assert_eq!(read(&new).await, Some(Decision::Granted));
}

/// A Redis that may evict keys is refused when the cache connects (an evicted tombstone
/// would let a fill read before a write land after it: a stale answer); one whose policy
/// turns evicting later refuses the write markers, so writes fence in the ledger instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_may_evict_is_refused() {
    if redis_test_url().is_none() {
        return;
    }
    let redis = OwnRedis::start(None).await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    redis.cli(&["CONFIG", "SET", "maxmemory", "100mb"]).await;
    redis
        .cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"])
        .await;
    match RedisCache::standalone(&url, NAMESPACE, TTL).await {
        Err(e) => assert!(e.to_string().contains("noeviction"), "{e}"),
        Ok(_) => panic!("a Redis that evicts keys was accepted"),
    }
    redis
        .cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .await;
    let cache = RedisCache::standalone(&url, NAMESPACE, TTL)
        .await
        .unwrap_or_else(|e| panic!("a noeviction Redis is fine: {e}"));
    let (ledger, _dir) = ledger().await;
    let store = CachedStore::new(Arc::clone(&ledger), Arc::new(cache));
    let t = tenant();
    write(&store, &t, "caller", Decision::Granted).await;
    let fenced_before = ledger
        .cache_fences(0)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .any(|f| f.tenant_id == t);
    assert!(
        !fenced_before,
        "a write told to a sound Redis needs no fence"
    );

    // Turned evicting while running: the next write cannot trust its markers and fences.
    redis
        .cli(&["CONFIG", "SET", "maxmemory-policy", "volatile-lru"])
        .await;
    write(&store, &t, "caller", Decision::Withdrawn).await;
    let fence = ledger
        .cache_fences(0)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .find(|f| f.tenant_id == t);
    assert!(
        fence.is_some_and(|f| f.revision >= 2),
        "the write fenced the tenant's cached states"
    );
    assert_eq!(
        decision(&store, &t, "caller", Consistency::MinimizeLatency).await,
        Some(Decision::Withdrawn)
    );
}

/// The link of cookie `value` under the tenant's identity key.
async fn cookie_link(store: &dyn Store, tenant: &str, value: &str) -> consent_store::NewLink {
    use consent_core::identity::{Identity, IdentityKey};
    let chain = store
        .ensure_subject_key(tenant)
        .await
        .unwrap_or_else(|e| panic!("subject key: {e}"));
    let Some(key) = IdentityKey::of(&chain) else {
        panic!("tenant {tenant} has no subject key");
    };
    let identity = Identity::parse(consent_core::IdentityType::Cookie, value)
        .unwrap_or_else(|e| panic!("{value}: {e}"));
    consent_store::NewLink {
        alias: key.alias_key(&identity),
        kind: consent_core::IdentityType::Cookie,
        value: identity.stored_value().map(str::to_owned),
    }
}

fn ledger_record(
    kind: consent_core::RecordKind,
    subject: &str,
    detail: &[(&str, &str)],
) -> consent_core::NewRecord {
    consent_core::NewRecord {
        id: consent_core::commands::new_event_id(),
        kind,
        subject_id: subject.into(),
        purpose_id: String::new(),
        at: consent_core::Timestamp::now(),
        detail: detail
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        actor_key_id: String::new(),
    }
}

/// The subject `alias` resolves to through `store`.
async fn resolved(
    store: &CachedStore,
    tenant: &str,
    alias: &consent_core::identity::AliasKey,
) -> Option<String> {
    store
        .resolve_identity(tenant, alias)
        .await
        .unwrap_or_else(|e| panic!("resolve: {e}"))
        .map(|identity| identity.subject_id)
}

/// Resolutions are shared through Redis: B answers a second resolution from the cache, and
/// a link, an unlink, a merge and an erasure made through A are what B resolves next, though
/// B had the old resolution cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_writes_on_one_replica_move_the_others_resolutions_at_once() {
    use consent_core::RecordKind;
    use consent_store::{Merge, MergeVia};
    let Some(url) = redis_test_url() else { return };
    let (_dir, a, b) = replica_pair(&url).await;
    let t = tenant();
    write(&a, &t, "acct", Decision::Granted).await;
    write(&a, &t, "anon", Decision::Denied).await;
    let cookie = cookie_link(&a, &t, "ck-1").await;
    let linked = |subject: &str| ledger_record(RecordKind::IdentityLinked, subject, &[]);
    // Resolves `cookie` through B twice (the second from Redis) and expects `subject`.
    let expect = |subject: Option<&'static str>, what: &'static str| {
        let (b, t, alias) = (&b, &t, cookie.alias);
        async move {
            assert_eq!(resolved(b, t, &alias).await.as_deref(), subject, "{what}");
            let hits = b.stats().snapshot().0;
            assert_eq!(
                resolved(b, t, &alias).await.as_deref(),
                subject,
                "{what}, again"
            );
            assert!(
                b.stats().snapshot().0 > hits,
                "{what}: B answers from Redis"
            );
        }
    };
    expect(None, "before any link").await;

    a.link_identity(&t, "anon", &cookie, linked("anon"), CacheFence::None)
        .await
        .unwrap_or_else(|e| panic!("link: {e}"));
    expect(Some("anon"), "after the link").await;

    a.unlink_identity(
        &t,
        "anon",
        &cookie.alias,
        ledger_record(RecordKind::IdentityUnlinked, "anon", &[]),
        CacheFence::None,
    )
    .await
    .unwrap_or_else(|e| panic!("unlink: {e}"));
    expect(None, "after the unlink").await;

    a.link_identity(&t, "anon", &cookie, linked("anon"), CacheFence::None)
        .await
        .unwrap_or_else(|e| panic!("link again: {e}"));
    expect(Some("anon"), "after the second link").await;
    let sides = ["acct", "anon"].map(|subject| {
        ledger_record(
            RecordKind::SubjectsMerged,
            subject,
            &[("merged_into", "acct"), ("merged_from", "anon")],
        )
    });
    a.merge_subjects(
        &t,
        &Merge {
            into: "acct".into(),
            from: "anon".into(),
            via: MergeVia::Linked(cookie.alias),
            records: sides.to_vec(),
        },
        CacheFence::None,
    )
    .await
    .unwrap_or_else(|e| panic!("merge: {e}"));
    expect(Some("acct"), "after the merge").await;

    a.erase_subject(
        &t,
        "acct",
        ledger_record(RecordKind::SubjectErased, "acct", &[]),
        CacheFence::None,
    )
    .await
    .unwrap_or_else(|e| panic!("erase: {e}"));
    expect(None, "after the erasure").await;
}

/// The versioned rules hold for resolutions in Redis: a resolution read before a link
/// write (pending, then tombstoned at its revision) is never stored after it, and an older
/// read never replaces a newer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolution_read_before_a_link_cannot_outlive_it() {
    use consent_cache::ResolutionCache as _;
    use consent_store::Resolution;
    let Some(url) = redis_test_url() else { return };
    let cache = RedisCache::standalone(&url, NAMESPACE, TTL)
        .await
        .unwrap_or_else(|e| panic!("redis: {e}"));
    let t = tenant();
    let alias = consent_core::identity::AliasKey([3; 32]);
    let unlinked = |revision| Resolution {
        link: None,
        revision,
    };
    let linked = Resolution {
        link: Some(consent_store::StoredIdentity {
            link: consent_store::NewLink {
                alias,
                kind: consent_core::IdentityType::Device,
                value: Some("dev-1".into()),
            },
            subject_id: "acct".into(),
            revision: 7,
            linked_at: consent_core::Timestamp(1),
        }),
        revision: 7,
    };
    let get = || async {
        cache
            .get_resolution(&t, &alias)
            .await
            .unwrap_or_else(|e| panic!("get: {e}"))
    };
    let fill = |resolution: Resolution| {
        let (cache, t) = (&cache, &t);
        async move {
            cache
                .fill_resolution(t, &alias, &resolution)
                .await
                .unwrap_or_else(|e| panic!("fill: {e}"));
        }
    };
    fill(unlinked(5)).await;
    assert_eq!(get().await, Some(unlinked(5)));
    cache
        .begin_link_write(&t, &alias)
        .await
        .unwrap_or_else(|e| panic!("pending: {e}"));
    assert_eq!(get().await, None, "a write in flight hides the entry");
    fill(unlinked(6)).await;
    assert_eq!(
        get().await,
        None,
        "no fill lands while the write is in flight"
    );
    cache
        .invalidate_resolution(&t, &alias, 7)
        .await
        .unwrap_or_else(|e| panic!("tombstone: {e}"));
    fill(unlinked(6)).await;
    assert_eq!(get().await, None, "a read before the write is refused");
    fill(linked.clone()).await;
    assert_eq!(get().await, Some(linked.clone()));
    fill(unlinked(6)).await;
    assert_eq!(
        get().await,
        Some(linked),
        "an older read never replaces a newer one"
    );
}

/// A link made by a replica cut off from Redis fences its tenant: the other replica stops
/// trusting the resolution it cached before, and resolves the link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_made_without_redis_fences_the_others_cached_resolutions() {
    if redis_test_url().is_none() {
        return;
    }
    let (_redis, relay, _ledger, _dir, a, b) = cut_off_pair().await;
    let t = tenant();
    write(&a, &t, "acct", Decision::Granted).await;
    let cookie = cookie_link(&a, &t, "ck-2").await;
    for _ in 0..2 {
        assert_eq!(resolved(&b, &t, &cookie.alias).await, None);
    }
    relay.cut();
    a.link_identity(
        &t,
        "acct",
        &cookie,
        ledger_record(consent_core::RecordKind::IdentityLinked, "acct", &[]),
        CacheFence::None,
    )
    .await
    .unwrap_or_else(|e| panic!("link: {e}"));
    b.sync_fences().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        resolved(&b, &t, &cookie.alias).await.as_deref(),
        Some("acct"),
        "B must not answer the resolution Redis still holds"
    );
}
