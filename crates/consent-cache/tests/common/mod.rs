//! Helpers shared by the cache's test files.

use std::sync::Arc;
use std::time::Duration;

use consent_store::Store;
use consent_store_sql::{SqlOptions, SqlStore};

/// Entry lifetime used by the tests (long: nothing here relies on expiry).
pub const TTL: Duration = Duration::from_secs(300);

/// The cache namespace of the tests that share one Redis among their ledgers (each test
/// uses tenants of its own; production reads the namespace from the ledger).
pub const NAMESPACE: &str = "consent-cache-tests";

/// A fresh SQLite ledger, with its directory as the guard.
pub async fn ledger() -> (Arc<dyn Store>, tempfile::TempDir) {
    let (store, dir) = sql_ledger().await;
    (Arc::new(store), dir)
}

/// A fresh SQLite ledger as its concrete type, with its directory as the guard.
#[allow(dead_code)] // not every test file needs the concrete type
pub async fn sql_ledger() -> (SqlStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let url = format!("sqlite://{}/ledger.db", dir.path().display());
    let store = SqlStore::connect(&url, &SqlOptions::default())
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    store
        .migrate()
        .await
        .unwrap_or_else(|e| panic!("migrate: {e}"));
    (store, dir)
}
