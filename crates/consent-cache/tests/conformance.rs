//! The store conformance suite on the cached stack (in-process always; Redis when
//! `CONSENT_TEST_REDIS_URL` is set), plus the cache's own coherence and failure cases.

mod common;

use std::sync::Arc;

use common::{NAMESPACE, TTL, ledger};
use consent_cache::testing::{redis_cluster_test_nodes, redis_test_url};
use consent_cache::{CacheBackend, CachedStore, MemoryCache, RedisCache};
use consent_store::conformance::TestStore;

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
        let url = redis_test_url()?;
        let (inner, dir) = ledger().await;
        let cache: Arc<dyn CacheBackend> = Arc::new(
            RedisCache::standalone(&url, NAMESPACE, TTL)
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

    async fn cached() -> Option<TestStore> {
        let nodes = redis_cluster_test_nodes()?;
        let (inner, dir) = ledger().await;
        let cache: Arc<dyn CacheBackend> = Arc::new(
            RedisCache::cluster(&nodes, NAMESPACE, TTL)
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
