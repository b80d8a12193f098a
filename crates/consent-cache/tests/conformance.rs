//! The store conformance suite on the cached stack (in-process always; Redis when
//! `CONSENT_TEST_REDIS_URL` is set), plus the cache's own coherence and failure cases.

use std::sync::Arc;
use std::time::Duration;

use consent_cache::{CacheBackend, CachedStore, MemoryCache, RedisCache};
use consent_store::Store;
use consent_store::conformance::TestStore;
use consent_store_sql::{SqlOptions, SqlStore};

const TTL: Duration = Duration::from_secs(300);

/// A fresh SQLite ledger (with its directory as the guard).
async fn ledger() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let url = format!("sqlite://{}/ledger.db", dir.path().display());
    let store = SqlStore::connect(&url, &SqlOptions::default())
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    store
        .migrate()
        .await
        .unwrap_or_else(|e| panic!("migrate: {e}"));
    (Arc::new(store), dir)
}

/// The Redis URL for tests, or `None` after a notice; under `CI=true` its absence fails.
fn redis_url() -> Option<String> {
    match std::env::var("CONSENT_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but CONSENT_TEST_REDIS_URL is not set: the Redis cache tests must run in CI"
            );
            eprintln!("notice: skipping Redis cache tests; set CONSENT_TEST_REDIS_URL to run them");
            None
        }
    }
}

mod memory {
    use super::*;

    async fn cached() -> Option<TestStore> {
        let (inner, dir) = ledger().await;
        let cache: Arc<dyn CacheBackend> = Arc::new(MemoryCache::new(10_000, TTL));
        Some(TestStore {
            store: Arc::new(CachedStore::new(inner, cache)),
            guard: Box::new(dir),
        })
    }

    consent_store::store_conformance_suite!(cached);
}

mod redis {
    use super::*;

    async fn cached() -> Option<TestStore> {
        let url = redis_url()?;
        let (inner, dir) = ledger().await;
        let cache: Arc<dyn CacheBackend> = Arc::new(
            RedisCache::standalone(&url, TTL)
                .await
                .unwrap_or_else(|e| panic!("redis: {e}")),
        );
        Some(TestStore {
            store: Arc::new(CachedStore::new(inner, cache)),
            guard: Box::new(dir),
        })
    }

    consent_store::store_conformance_suite!(cached);
}

mod redis_cluster {
    use super::*;

    /// The cluster's nodes, comma-separated, from `CONSENT_TEST_REDIS_CLUSTER_NODES`.
    fn nodes() -> Option<Vec<String>> {
        match std::env::var("CONSENT_TEST_REDIS_CLUSTER_NODES") {
            Ok(list) if !list.is_empty() => Some(list.split(',').map(str::to_owned).collect()),
            _ => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI=true but CONSENT_TEST_REDIS_CLUSTER_NODES is not set: the cluster suite must run in CI"
                );
                eprintln!(
                    "notice: skipping Redis Cluster tests; set CONSENT_TEST_REDIS_CLUSTER_NODES to run them"
                );
                None
            }
        }
    }

    async fn cached() -> Option<TestStore> {
        let nodes = nodes()?;
        let (inner, dir) = ledger().await;
        let cache: Arc<dyn CacheBackend> = Arc::new(
            RedisCache::cluster(&nodes, TTL)
                .await
                .unwrap_or_else(|e| panic!("redis cluster: {e}")),
        );
        Some(TestStore {
            store: Arc::new(CachedStore::new(inner, cache)),
            guard: Box::new(dir),
        })
    }

    consent_store::store_conformance_suite!(cached);
}
