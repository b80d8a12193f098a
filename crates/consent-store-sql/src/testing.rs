//! Test support shared by the conformance suite, the end-to-end tests and the crash test:
//! where the PostgreSQL under test is, and scratch databases on it.

use sqlx::{Connection, Executor, PgConnection};

/// Environment variable naming the PostgreSQL that tests may use.
pub const DATABASE_URL_VAR: &str = "CONSENT_TEST_DATABASE_URL";

/// The PostgreSQL URL for tests, or `None` after printing a notice. Under `CI=true` a
/// missing URL panics: CI must run the PostgreSQL tests.
pub fn postgres_test_url() -> Option<String> {
    consent_store::conformance::service_from_env(DATABASE_URL_VAR)
}

/// Creates an empty database beside the one `admin_url` names and returns its URL and name.
pub async fn create_scratch_database(admin_url: &str) -> Result<(String, String), sqlx::Error> {
    create_scratch_database_with(admin_url, "").await
}

/// As [`create_scratch_database`], with `options` after `CREATE DATABASE name` (a template,
/// a locale...).
pub async fn create_scratch_database_with(
    admin_url: &str,
    options: &str,
) -> Result<(String, String), sqlx::Error> {
    let name = format!("consent_test_{}", uuid::Uuid::now_v7().simple());
    let mut conn = PgConnection::connect(admin_url).await?;
    conn.execute(format!("CREATE DATABASE {name} {options}").as_str())
        .await?;
    conn.close().await?;
    let base = admin_url.split('?').next().unwrap_or(admin_url);
    let prefix = base.rsplit_once('/').map_or(base, |(p, _)| p);
    Ok((format!("{prefix}/{name}"), name))
}

/// Drops a scratch database made by [`create_scratch_database`], closing its sessions.
pub async fn drop_scratch_database(admin_url: &str, name: &str) -> Result<(), sqlx::Error> {
    let mut conn = PgConnection::connect(admin_url).await?;
    conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await?;
    conn.close().await
}
