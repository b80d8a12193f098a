//! Helpers shared by the cache's test files.

use std::sync::Arc;
use std::time::Duration;

use consent_store::Store;
use consent_store_sql::{SqlOptions, SqlStore};

/// Entry lifetime used by the tests (long: nothing here relies on expiry).
pub const TTL: Duration = Duration::from_secs(300);

/// A fresh SQLite ledger, with its directory as the guard.
pub async fn ledger() -> (Arc<dyn Store>, tempfile::TempDir) {
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
