//! The consent ledger on SQL: SQLite (embedded, the default: one file, WAL,
//! `synchronous=FULL`) and PostgreSQL, chosen by the URL scheme (`sqlite://...` or
//! `postgres://...`), each on sqlx's native driver ([`PgStore`] with `timestamptz`, `uuid`,
//! `jsonb` and arrays; [`SqliteStore`] with one writer connection). Migrations are per
//! dialect in `migrations/{sqlite,postgres}`, embedded with `sqlx::migrate!`.
//!
//! Appends go through a per-tenant group commit ([`group`]): concurrent writes of a tenant
//! share one transaction and one fsync, each with its own revisions and acknowledgement.
//! A tenant's writes serialise on its row (locked once per batch), so revisions are gap-free
//! and the hash chain is linear without a global lock.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use consent_core::redact::{query_of, redact_url, register_secrets_of};
use consent_core::{ConsentError, PolicyVersion, Result, Timestamp};
use consent_store::Store;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::watch;

mod commits;
mod errors;
mod group;
#[macro_use]
mod identity;
mod pg;
mod retention;
mod rows;
mod sqlite;
pub mod testing;

use commits::CommitFeed;
use errors::db;
pub use pg::PgStore;
pub use sqlite::SqliteStore;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

/// Idempotency records deleted per statement by the purge.
const PURGE_CHUNK: i64 = 10_000;

/// How often expired idempotency records are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// How long SQLite waits for a lock held by another process (the CLI) before `Unavailable`.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Which SQL dialect a store speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

impl Backend {
    /// The backend a URL selects, or `InvalidArgument` naming `store.url`.
    pub fn from_url(url: &str) -> Result<Backend> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(ConsentError::invalid(
                "store.url",
                format!(
                    "`{}` must start with sqlite:// or postgres://",
                    redact_url(url)
                ),
            ))
        }
    }
}

/// Connection settings beyond the URL.
#[derive(Clone, Debug)]
pub struct SqlOptions {
    /// Pool size (PostgreSQL), or read pool size (SQLite, which writes through one connection).
    pub max_connections: u32,
    /// How long to wait for a pooled connection before answering `Unavailable`.
    pub acquire_timeout: Duration,
    /// How long an idempotency key replays its write; older records are purged.
    pub idempotency_ttl: Duration,
}

/// The default lifetime of an idempotency key: 7 days.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for SqlOptions {
    fn default() -> Self {
        SqlOptions {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            idempotency_ttl: DEFAULT_IDEMPOTENCY_TTL,
        }
    }
}

/// The schema of a database compared with this build's migrations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigrationState {
    /// Migrations of this build not applied yet (`consentd migrate` applies them).
    pub pending: usize,
    /// Migrations applied that this build does not know (a newer build migrated: normal
    /// while an upgrade rolls out, since migrations only add).
    pub newer: usize,
}

/// The store of either backend.
#[derive(Clone, Debug)]
enum Engine {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

/// A ledger on SQLite or PostgreSQL, chosen by URL; every store trait goes to the backend.
#[derive(Clone)]
pub struct SqlStore {
    engine: Engine,
    store: Arc<dyn Store>,
    options: SqlOptions,
    commits: Option<CommitFeed>,
    maintenance: watch::Sender<bool>,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &self.backend())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The query parameters sqlx's PostgreSQL driver understands. Others it ignores with a
/// warning that quotes the value (a password, for `sslpassword`), so they are refused here,
/// naming only the parameter: no setting is silently ignored, no secret is logged.
const POSTGRES_URL_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// Refuses a PostgreSQL URL with a query parameter the driver would ignore.
fn check_postgres_url(url: &str) -> Result<()> {
    let Some(query) = query_of(url) else {
        return Ok(());
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let name = pair.split_once('=').map_or(pair, |(name, _)| name);
        let known = POSTGRES_URL_PARAMETERS.contains(&name)
            || (name.starts_with("options[") && name.ends_with(']'));
        if !known {
            // The name is not repeated: with an unescaped `&` in a password, what follows
            // it reads as a parameter name.
            return Err(ConsentError::invalid(
                "store.url",
                format!(
                    "has a query parameter the PostgreSQL driver does not support (it would ignore it); supported: {}, options[NAME]; percent-encode `&`, `#` and `?` inside values",
                    POSTGRES_URL_PARAMETERS.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// SQLite URL with `mode=rwc` (create the file) unless a mode was given, and the file's
/// directory created.
/// The file a `sqlite:` store URL names (`None` for another scheme).
pub fn sqlite_file(url: &str) -> Option<&str> {
    let path = url.strip_prefix("sqlite:")?.trim_start_matches("//");
    path.split('?').next()
}

fn prepare_sqlite_url(url: &str) -> Result<String> {
    let file = sqlite_file(url).unwrap_or_default();
    if file.is_empty() || file == ":memory:" {
        return Err(ConsentError::invalid(
            "store.url",
            "SQLite needs a file path (sqlite://./data/consent.db); an in-memory database would lose acknowledged writes",
        ));
    }
    if let Some(dir) = std::path::Path::new(file)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|e| {
            ConsentError::Unavailable(format!("cannot create directory {}: {e}", dir.display()))
        })?;
    }
    Ok(if url.contains("mode=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    })
}

impl SqlStore {
    /// Connects to the database a URL names. Does not migrate: call [`SqlStore::migrate`].
    pub async fn connect(url: &str, options: &SqlOptions) -> Result<SqlStore> {
        register_secrets_of(url);
        if options.idempotency_ttl.is_zero() {
            return Err(ConsentError::invalid(
                "store.idempotency_ttl_secs",
                "must be at least 1 second",
            ));
        }
        let unreachable = |url: &str, e: sqlx::Error| {
            ConsentError::Unavailable(format!(
                "cannot connect to {}: {}",
                redact_url(url),
                errors::db(e)
            ))
        };
        let (engine, commits) = match Backend::from_url(url)? {
            Backend::Postgres => {
                check_postgres_url(url)?;
                let pool = PgPoolOptions::new()
                    .max_connections(options.max_connections)
                    .acquire_timeout(options.acquire_timeout)
                    .connect(url)
                    .await
                    .map_err(|e| unreachable(url, e))?;
                let commits = CommitFeed::postgres(url, pool.clone()).await?;
                let store = PgStore::new(pool, commits.clone(), options.idempotency_ttl);
                (Engine::Postgres(store), Some(commits))
            }
            Backend::Sqlite => {
                let url = prepare_sqlite_url(url)?;
                let connect = SqliteConnectOptions::from_str(&url)
                    .map_err(|e| ConsentError::invalid("store.url", redact_url(&e.to_string())))?
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT)
                    .foreign_keys(true)
                    // Deleted and overwritten content is zeroed in the pages a write touches
                    // anyway (no extra I/O): an erased subject id does not linger in live
                    // pages (docs/retention.md, "Erasure").
                    .pragma("secure_delete", "fast");
                // The writer first: it creates the file and switches it to WAL.
                let writer = SqlitePoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(options.acquire_timeout)
                    .connect_with(connect.clone())
                    .await
                    .map_err(|e| unreachable(&url, e))?;
                let reader = SqlitePoolOptions::new()
                    .max_connections(options.max_connections)
                    .acquire_timeout(options.acquire_timeout)
                    .connect_with(connect.read_only(true))
                    .await
                    .map_err(|e| unreachable(&url, e))?;
                let store = SqliteStore::new(writer, reader, options.idempotency_ttl);
                (Engine::Sqlite(store), None)
            }
        };
        let store: Arc<dyn Store> = match &engine {
            Engine::Postgres(s) => Arc::new(s.clone()),
            Engine::Sqlite(s) => Arc::new(s.clone()),
        };
        let sql = SqlStore {
            engine,
            store,
            options: options.clone(),
            commits,
            maintenance: watch::channel(false).0,
        };
        tokio::spawn(purge_expired_keys(sql.clone(), sql.maintenance.subscribe()));
        Ok(sql)
    }

    /// Applies the embedded migrations of this backend (idempotent; safe on every start).
    pub async fn migrate(&self) -> Result<()> {
        let applied = match &self.engine {
            Engine::Postgres(s) => POSTGRES_MIGRATIONS.run(s.pool()).await,
            Engine::Sqlite(s) => SQLITE_MIGRATIONS.run(s.writer()).await,
        };
        applied.map_err(|e| ConsentError::Unavailable(format!("migration failed: {e}")))
    }

    /// The dialect.
    pub fn backend(&self) -> Backend {
        match self.engine {
            Engine::Postgres(_) => Backend::Postgres,
            Engine::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Closes the pools, waiting for connections to be returned, and stops background work.
    pub async fn close(&self) {
        let _ = self.maintenance.send(true);
        if let Some(commits) = &self.commits {
            commits.close();
        }
        match &self.engine {
            Engine::Postgres(s) => s.pool().close().await,
            Engine::Sqlite(s) => s.close().await,
        }
    }

    /// How far the database's schema is from this build's migrations (for readiness).
    pub async fn migration_state(&self) -> Result<MigrationState> {
        const APPLIED: &str = "SELECT version FROM _sqlx_migrations WHERE success";
        let (migrator, applied) = match &self.engine {
            Engine::Postgres(s) => (
                &POSTGRES_MIGRATIONS,
                sqlx::query_scalar::<_, i64>(APPLIED)
                    .fetch_all(s.pool())
                    .await,
            ),
            Engine::Sqlite(s) => (
                &SQLITE_MIGRATIONS,
                sqlx::query_scalar::<_, i64>(APPLIED)
                    .fetch_all(s.reader())
                    .await,
            ),
        };
        // No bookkeeping table yet: nothing applied (the database itself answered `ping`).
        let applied = match applied {
            Ok(applied) => applied,
            Err(sqlx::Error::Database(_)) => Vec::new(),
            Err(e) => return Err(db(e)),
        };
        let known: Vec<i64> = migrator.iter().map(|m| m.version).collect();
        Ok(MigrationState {
            pending: known.iter().filter(|v| !applied.contains(v)).count(),
            newer: applied.iter().filter(|v| !known.contains(v)).count(),
        })
    }

    /// Connections of each pool: `(pool name, in use, idle)`. PostgreSQL has one pool;
    /// SQLite a writer (one connection) and a read-only pool.
    pub fn pool_usage(&self) -> Vec<(&'static str, u32, u32)> {
        let usage = |name, size: u32, idle: usize| {
            let idle = u32::try_from(idle).unwrap_or(u32::MAX).min(size);
            (name, size - idle, idle)
        };
        match &self.engine {
            Engine::Postgres(s) => vec![usage("primary", s.pool().size(), s.pool().num_idle())],
            Engine::Sqlite(s) => vec![
                usage("writer", s.writer().size(), s.writer().num_idle()),
                usage("reader", s.reader().size(), s.reader().num_idle()),
            ],
        }
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> Result<()> {
        let answered = match &self.engine {
            Engine::Postgres(s) => sqlx::query("SELECT 1").execute(s.pool()).await.map(drop),
            Engine::Sqlite(s) => sqlx::query("SELECT 1").execute(s.reader()).await.map(drop),
        };
        answered.map_err(db)
    }

    /// Deletes the idempotency records older than the configured lifetime (done every 10
    /// minutes in the background); returns how many.
    pub async fn purge_expired_idempotency_keys(&self) -> Result<u64> {
        let lifetime = i64::try_from(self.options.idempotency_ttl.as_micros()).unwrap_or(i64::MAX);
        let before = Timestamp::now().saturating_add(-lifetime);
        match &self.engine {
            Engine::Postgres(s) => s.purge_idempotency_keys(before).await,
            Engine::Sqlite(s) => s.purge_idempotency_keys(before).await,
        }
    }

    /// Gives the ledger a new cache namespace and returns it. Run after restoring the
    /// database from a backup, before the replicas start: entries cached before the restore
    /// describe writes the restored ledger does not hold, at revisions it will reuse.
    pub async fn rotate_cache_namespace(&self) -> Result<String> {
        const WRITE: &str = "UPDATE ledger_identity SET cache_namespace = $1 WHERE id = 1";
        let namespace = uuid::Uuid::now_v7().simple().to_string();
        let updated = match &self.engine {
            Engine::Postgres(s) => sqlx::query(WRITE)
                .bind(&namespace)
                .execute(s.pool())
                .await
                .map(|r| r.rows_affected()),
            Engine::Sqlite(s) => sqlx::query(WRITE)
                .bind(&namespace)
                .execute(s.writer())
                .await
                .map(|r| r.rows_affected()),
        };
        match updated.map_err(db)? {
            1 => Ok(namespace),
            _ => Err(ConsentError::Internal(
                "ledger_identity has no row: the migrations did not complete".into(),
            )),
        }
    }

    /// Runs one SQL statement outside the store's API, for tests that play a careless
    /// operator (the append-only guard) and for maintenance scripts.
    pub async fn execute_raw(&self, sql: &str) -> Result<u64> {
        let done = match &self.engine {
            Engine::Postgres(s) => sqlx::query(sql)
                .execute(s.pool())
                .await
                .map(|r| r.rows_affected()),
            Engine::Sqlite(s) => sqlx::query(sql)
                .execute(s.writer())
                .await
                .map(|r| r.rows_affected()),
        };
        done.map_err(db)
    }

    fn inner(&self) -> &dyn Store {
        self.store.as_ref()
    }

    async fn around<T: Send>(
        &self,
        _method: &'static str,
        call: impl std::future::Future<Output = Result<T>> + Send,
    ) -> Result<T> {
        call.await
    }
}

consent_store::store_proxy!(SqlStore);

/// Purges expired idempotency records every [`PURGE_INTERVAL`] until the store closes.
async fn purge_expired_keys(store: SqlStore, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            () = tokio::time::sleep(PURGE_INTERVAL) => {}
        }
        match store.purge_expired_idempotency_keys().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "expired idempotency keys purged"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot purge expired idempotency keys; will retry")
            }
        }
    }
}

/// The answer to publishing a policy version id that exists: the stored one if the content is
/// the same, `AlreadyExists` otherwise.
fn same_policy_or_conflict(stored: PolicyVersion, asked: &PolicyVersion) -> Result<PolicyVersion> {
    if stored == *asked {
        Ok(stored)
    } else {
        Err(ConsentError::AlreadyExists(format!(
            "policy version `{}` is already published with different content; publish a new id",
            asked.id
        )))
    }
}

/// `AlreadyExists` unless one row was inserted.
fn created_once(inserted: u64, tenant_id: &str) -> Result<()> {
    if inserted == 0 {
        return Err(ConsentError::AlreadyExists(format!(
            "tenant `{tenant_id}` already exists"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_follows_the_scheme() {
        assert_eq!(
            Backend::from_url("sqlite://./x.db").ok(),
            Some(Backend::Sqlite)
        );
        assert_eq!(
            Backend::from_url("postgres://u@h/db").ok(),
            Some(Backend::Postgres)
        );
        assert_eq!(
            Backend::from_url("postgresql://u@h/db").ok(),
            Some(Backend::Postgres)
        );
        assert!(
            Backend::from_url("mysql://u:secret@h/db")
                .is_err_and(|e| !e.to_string().contains("secret"))
        );
    }

    #[test]
    fn postgres_urls_with_parameters_the_driver_ignores_are_refused() {
        assert!(check_postgres_url("postgres://u:pw@h/db?sslmode=require&password=x").is_ok());
        assert!(check_postgres_url("postgres://h/db?options[search_path]=x").is_ok());
        assert!(
            check_postgres_url("postgres://u:pa?ss@h/db").is_ok(),
            "a ? in the password is not a query"
        );
        let refused = check_postgres_url("postgres://h/db?sslmode=require&sslpassword=key-secret");
        assert!(
            refused.as_ref().is_err_and(|e| {
                let text = e.to_string();
                text.contains("does not support") && !text.contains("key-secret")
            }),
            "{refused:?}"
        );
        assert!(check_postgres_url("postgres://h/db?connect_timeout=5").is_err());
    }

    #[test]
    fn sqlite_urls_create_the_file_unless_told_otherwise() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("consent-url-{}", uuid::Uuid::now_v7()));
        let url = format!("sqlite://{}/sub/ledger.db", dir.display());
        assert!(prepare_sqlite_url(&url)?.ends_with("ledger.db?mode=rwc"));
        assert!(dir.join("sub").is_dir());
        assert!(prepare_sqlite_url(&format!("{url}?mode=ro"))?.ends_with("?mode=ro"));
        assert!(prepare_sqlite_url("sqlite::memory:").is_err());
        std::fs::remove_dir_all(dir).ok();
        Ok(())
    }
}
