//! The store a configuration describes: the SQL ledger, behind the configured cache.

use std::sync::Arc;
use std::time::Duration;

use consent_cache::{CacheBackend, CacheStats, CachedStore, MemoryCache, RedisCache};
use consent_store::breaker::{BreakerSettings, BreakerStore};
use consent_store::{LedgerStore, Store};
use consent_store_sql::{SqlOptions, SqlStore};

use crate::config::{CacheMode, Config};
use crate::metrics::Metrics;
use crate::store_observe::ObservedStore;

/// The ledger and the store every caller uses (the ledger itself, or a cache in front).
pub struct StoreStack {
    /// The SQL ledger (migrations, verification, shutdown).
    pub ledger: SqlStore,
    /// What handlers and commands read and write through.
    pub store: Arc<dyn Store>,
    /// The cache's counters, when there is a cache.
    pub cache_stats: Option<Arc<CacheStats>>,
    /// The shared cache, when it is Redis (for readiness reports).
    pub redis: Option<Arc<RedisCache>>,
}

impl std::fmt::Debug for StoreStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreStack")
            .field("ledger", &self.ledger)
            .field("cached", &self.cache_stats.is_some())
            .finish()
    }
}

/// Connects the ledger (applying the migrations first when `migrate`) and the cache. A
/// shared cache needs the migrated ledger: its keys carry the ledger's cache namespace.
pub async fn open(config: &Config, migrate: bool) -> anyhow::Result<StoreStack> {
    open_observed(config, migrate, Metrics::disabled()).await
}

/// [`open`], with each ledger call traced (a `store` span) and timed into `metrics`.
pub async fn open_observed(
    config: &Config,
    migrate: bool,
    metrics: Arc<Metrics>,
) -> anyhow::Result<StoreStack> {
    let ledger = open_ledger(config, migrate).await?;
    let observed = ObservedStore::new(Arc::new(ledger.clone()), ledger.backend(), metrics);
    // While the database is down, requests fail fast instead of each waiting for a pool
    // connection that cannot come (and those refusals are not store operations).
    let guarded: Arc<dyn Store> = Arc::new(BreakerStore::new(
        Arc::new(observed),
        BreakerSettings::default(),
    ));
    let ttl = Duration::from_secs(config.cache.ttl_secs);
    let (cache, redis): (Option<Arc<dyn CacheBackend>>, _) = match config.cache_mode() {
        CacheMode::None | CacheMode::Auto => (None, None),
        CacheMode::Memory => (
            Some(Arc::new(MemoryCache::new(config.cache.max_entries, ttl))),
            None,
        ),
        CacheMode::Redis => {
            let redis = redis(config, &ledger, ttl).await?;
            (Some(redis.clone()), Some(redis))
        }
    };
    Ok(match cache {
        None => StoreStack {
            store: guarded,
            ledger,
            cache_stats: None,
            redis,
        },
        Some(cache) => {
            let cached = CachedStore::new(guarded, cache);
            StoreStack {
                cache_stats: Some(cached.stats()),
                store: Arc::new(cached),
                ledger,
                redis,
            }
        }
    })
}

/// Connects the SQL ledger alone (applying the migrations first when `migrate`).
pub async fn open_ledger(config: &Config, migrate: bool) -> anyhow::Result<SqlStore> {
    let options = SqlOptions {
        max_connections: config.store.max_connections,
        acquire_timeout: Duration::from_millis(config.store.acquire_timeout_ms),
        idempotency_ttl: Duration::from_secs(config.store.idempotency_ttl_secs),
    };
    let ledger = SqlStore::connect(&config.store.url, &options).await?;
    if migrate {
        ledger.migrate().await?;
    }
    Ok(ledger)
}

/// The Redis cache of `config`, its keys in the ledger's cache namespace.
async fn redis(
    config: &Config,
    ledger: &SqlStore,
    ttl: Duration,
) -> anyhow::Result<Arc<RedisCache>> {
    let namespace = ledger.cache_namespace().await?;
    tracing::info!(cache_namespace = %namespace, "shared cache keys are in this ledger's namespace");
    let nodes: Vec<String> = config
        .cache
        .redis_cluster_nodes
        .split(',')
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    Ok(if nodes.is_empty() {
        Arc::new(
            RedisCache::standalone(&config.cache.redis_url, &namespace, ttl)
                .await
                .map_err(|e| anyhow::anyhow!("cannot use the Redis of cache.redis_url: {e}"))?,
        )
    } else {
        Arc::new(
            RedisCache::cluster(&nodes, &namespace, ttl)
                .await
                .map_err(|e| {
                    anyhow::anyhow!("cannot use the Redis of cache.redis_cluster_nodes: {e}")
                })?,
        )
    })
}
