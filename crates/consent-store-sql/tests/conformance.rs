//! The shared store conformance suite on SQLite (always) and PostgreSQL (when
//! `CONSENT_TEST_DATABASE_URL` is set; under `CI=true` its absence is a failure).

use std::sync::Arc;

use consent_store::conformance::TestStore;
use consent_store_sql::{SqlOptions, SqlStore};

async fn open(url: &str) -> SqlStore {
    let store = SqlStore::connect(url, &SqlOptions::default())
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    store
        .migrate()
        .await
        .unwrap_or_else(|e| panic!("migrate: {e}"));
    store
}

mod sqlite {
    use super::*;

    async fn sqlite() -> Option<TestStore> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let url = format!("sqlite://{}/ledger.db", dir.path().display());
        Some(TestStore {
            store: Arc::new(open(&url).await),
            guard: Box::new(dir),
        })
    }

    consent_store::store_conformance_suite!(sqlite);
}

mod postgres {
    use super::*;

    /// `None` (skip with a notice) when no PostgreSQL is configured, except under CI.
    /// Cases share the database; each uses its own tenant.
    pub(crate) async fn postgres() -> Option<TestStore> {
        let url = consent_store_sql::testing::postgres_test_url()?;
        Some(TestStore {
            store: Arc::new(open(&url).await),
            guard: Box::new(()),
        })
    }

    consent_store::store_conformance_suite!(postgres);
}
