//! Test support: where the Redis (and Redis Cluster) under test is.

use consent_store::conformance::service_from_env;

/// A standalone Redis for tests (`CONSENT_TEST_REDIS_URL`), or `None` after a notice;
/// required under `CI=true`.
pub fn redis_test_url() -> Option<String> {
    service_from_env("CONSENT_TEST_REDIS_URL")
}

/// The nodes of a Redis Cluster for tests (`CONSENT_TEST_REDIS_CLUSTER_NODES`,
/// comma-separated), or `None` after a notice; required under `CI=true`.
pub fn redis_cluster_test_nodes() -> Option<Vec<String>> {
    service_from_env("CONSENT_TEST_REDIS_CLUSTER_NODES").map(|list| {
        list.split(',')
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect()
    })
}
