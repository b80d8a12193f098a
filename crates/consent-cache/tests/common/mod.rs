//! Helpers shared by the cache's test files.
#![allow(dead_code)] // each test file uses a different subset

use std::sync::Arc;
use std::time::Duration;

use consent_core::commands::new_event_id;
use consent_core::{Channel, Decision, Evidence, NewEvent, Timestamp};
use consent_store::{CacheFence, Store};
use consent_store_sql::{SqlOptions, SqlStore};

/// Entry lifetime used by the tests (long: nothing here relies on expiry).
pub const TTL: Duration = Duration::from_secs(300);

/// The cache namespace [`ledger`] gives its ledgers, which the tests pass to their Redis
/// caches (each test uses tenants of its own, so they may share it).
pub const NAMESPACE: &str = "consent-cache-tests";

/// A fresh SQLite ledger in the cache namespace [`NAMESPACE`], with its directory as the
/// guard.
pub async fn ledger() -> (Arc<dyn Store>, tempfile::TempDir) {
    let (store, dir) = sql_ledger().await;
    store
        .execute_raw(&format!(
            "UPDATE ledger_identity SET cache_namespace = '{NAMESPACE}' WHERE id = 1"
        ))
        .await
        .unwrap_or_else(|e| panic!("namespace: {e}"));
    (Arc::new(store), dir)
}

/// A fresh SQLite ledger as its concrete type, in a namespace of its own, with its
/// directory as the guard.
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

/// Records one voice choice of `subject` for `call_recording` through `store`; returns its
/// revision.
pub async fn write(store: &dyn Store, tenant: &str, subject: &str, decision: Decision) -> i64 {
    let event = NewEvent {
        id: new_event_id(),
        subject_id: subject.into(),
        purpose_id: "call_recording".into(),
        vendor_id: String::new(),
        decision,
        policy_version_id: "v1".into(),
        channel: Channel::Voice,
        collected_at: Timestamp::now(),
        expires_at: None,
        evidence: Evidence::default(),
        actor_key_id: String::new(),
    };
    store
        .append(tenant, &[event], None, CacheFence::None)
        .await
        .unwrap_or_else(|e| panic!("append: {e}"))
        .revision
}
