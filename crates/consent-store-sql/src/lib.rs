//! The consent ledger on SQL: SQLite (embedded, the default: one file, WAL, `synchronous=FULL`)
//! and PostgreSQL, chosen by the URL scheme (`sqlite://...` or `postgres://...`).
//!
//! Both dialects share one implementation through sqlx's `Any` driver: the SQL here is the
//! common subset (`$n` parameters, `ON CONFLICT`, `RETURNING`, row-value comparisons), and
//! every column is TEXT, BIGINT or bytes. Migrations are per dialect in
//! `migrations/{sqlite,postgres}` and embedded with `sqlx::migrate!`.
//!
//! Writes serialise per tenant on the tenant row (`UPDATE tenants ... RETURNING` takes the
//! row lock in PostgreSQL and the write lock in SQLite), so revisions are gap-free and the
//! hash chain is linear without a global lock.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use consent_core::chain::{GENESIS, seal};
use consent_core::commands::Idempotency;
use consent_core::redact::{query_of, redact_url, register_secrets_of};
use consent_core::{
    Catalog, ConsentError, ConsentEvent, Evidence, NewEvent, PolicyVersion, Purpose, Result,
    Revision, SUBJECT_WIDE, StateEntry, SubjectState, Timestamp, Vendor,
};
use consent_store::{
    AppendOutcome, CacheFence, CatalogStore, Commit, Consistency, EventQuery, FenceRecord,
    LedgerHead, LedgerStore, StoredEvent,
};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor, Row, Transaction};

mod access;
mod commits;
mod errors;
use commits::{COMMIT_CHANNEL, CommitFeed, commit_payload};
pub mod testing;
use errors::{corrupt, db};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

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
    /// Pool size.
    pub max_connections: u32,
    /// How long to wait for a pooled connection before answering `Unavailable`.
    pub acquire_timeout: Duration,
}

impl Default for SqlOptions {
    fn default() -> Self {
        SqlOptions {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// A ledger on SQLite or PostgreSQL.
#[derive(Clone, Debug)]
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
    commits: CommitFeed,
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
fn prepare_sqlite_url(url: &str) -> Result<String> {
    let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let file = path.split('?').next().unwrap_or_default();
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

/// Per-connection SQLite settings: WAL for concurrent readers, FULL sync so an acknowledged
/// write survives a crash, a busy timeout so writers queue instead of failing.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
     PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;";

impl SqlStore {
    /// Connects to the database a URL names. Does not migrate: call [`SqlStore::migrate`].
    pub async fn connect(url: &str, options: &SqlOptions) -> Result<SqlStore> {
        sqlx::any::install_default_drivers();
        register_secrets_of(url);
        let backend = Backend::from_url(url)?;
        let url = match backend {
            Backend::Sqlite => prepare_sqlite_url(url)?,
            Backend::Postgres => {
                check_postgres_url(url)?;
                url.to_owned()
            }
        };
        let mut pool = AnyPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout);
        if backend == Backend::Sqlite {
            pool = pool.after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute(SQLITE_PRAGMAS).await?;
                    Ok(())
                })
            });
        }
        let pool = pool.connect(&url).await.map_err(|e| {
            ConsentError::Unavailable(format!("cannot connect to {}: {e}", redact_url(&url)))
        })?;
        let commits = match backend {
            Backend::Postgres => CommitFeed::postgres(&url).await?,
            Backend::Sqlite => CommitFeed::local(),
        };
        Ok(SqlStore {
            pool,
            backend,
            commits,
        })
    }

    /// Applies the embedded migrations of this backend (idempotent; safe on every start).
    pub async fn migrate(&self) -> Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&self.pool)
            .await
            .map_err(|e| ConsentError::Unavailable(format!("migration failed: {e}")))
    }

    /// The dialect.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        self.commits.close();
        self.pool.close().await;
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| ConsentError::Internal(format!("cannot encode: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| corrupt(what, e))
}

fn hash32(bytes: Vec<u8>, what: &str) -> Result<[u8; 32]> {
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| corrupt(what, format!("{} bytes instead of 32", bytes.len())))
}

fn parse<T: FromStr>(text: &str, what: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e| corrupt(what, e))
}

#[async_trait]
impl CatalogStore for SqlStore {
    async fn catalog(&self, tenant: &str, _consistency: Consistency) -> Result<Arc<Catalog>> {
        // The version is read first, so the documents are at least that new.
        let version = sqlx::query("SELECT catalog_version FROM tenants WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .map(|row| row.try_get::<i64, _>(0))
            .transpose()
            .map_err(db)?
            .unwrap_or(0);
        let mut catalog = Catalog {
            version,
            ..Catalog::default()
        };
        for body in self
            .documents("SELECT body FROM purposes WHERE tenant_id = $1", tenant)
            .await?
        {
            let p: Purpose = from_json(&body, "purpose")?;
            catalog.purposes.insert(p.id.clone(), p);
        }
        for body in self
            .documents("SELECT body FROM vendors WHERE tenant_id = $1", tenant)
            .await?
        {
            let v: Vendor = from_json(&body, "vendor")?;
            catalog.vendors.insert(v.id.clone(), v);
        }
        let sql = "SELECT body FROM policy_versions WHERE tenant_id = $1 ORDER BY published_at, policy_version_id";
        for body in self.documents(sql, tenant).await? {
            catalog
                .policy_versions
                .push(from_json(&body, "policy version")?);
        }
        Ok(Arc::new(catalog))
    }

    async fn upsert_purpose(&self, tenant: &str, purpose: &Purpose) -> Result<()> {
        let sql = "INSERT INTO purposes (tenant_id, purpose_id, body, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id, purpose_id) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at";
        self.write_document(sql, tenant, &purpose.id, &to_json(purpose)?)
            .await
    }

    async fn upsert_vendor(&self, tenant: &str, vendor: &Vendor) -> Result<()> {
        let sql = "INSERT INTO vendors (tenant_id, vendor_id, body, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id, vendor_id) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at";
        self.write_document(sql, tenant, &vendor.id, &to_json(vendor)?)
            .await
    }

    async fn publish_policy_version(
        &self,
        tenant: &str,
        policy: &PolicyVersion,
    ) -> Result<PolicyVersion> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let inserted = sqlx::query(
            "INSERT INTO policy_versions (tenant_id, policy_version_id, published_at, body) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id, policy_version_id) DO NOTHING",
        )
        .bind(tenant)
        .bind(&policy.id)
        .bind(policy.published_at.as_micros())
        .bind(to_json(policy)?)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if inserted == 1 {
            bump_catalog_version(&mut tx, tenant).await?;
            tx.commit().await.map_err(db)?;
            return Ok(policy.clone());
        }
        let row = sqlx::query(
            "SELECT body FROM policy_versions WHERE tenant_id = $1 AND policy_version_id = $2",
        )
        .bind(tenant)
        .bind(&policy.id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        tx.rollback().await.map_err(db)?;
        let stored: PolicyVersion =
            from_json(&row.try_get::<String, _>(0).map_err(db)?, "policy version")?;
        if stored == *policy {
            Ok(stored)
        } else {
            Err(ConsentError::AlreadyExists(format!(
                "policy version `{}` is already published with different content; publish a new id",
                policy.id
            )))
        }
    }
}

/// Bumps the tenant's catalogue version inside a catalogue write (creating the tenant row),
/// and fences cached catalogues older than the new version.
async fn bump_catalog_version(tx: &mut Transaction<'_, Any>, tenant: &str) -> Result<()> {
    let version: i64 = sqlx::query(
        "INSERT INTO tenants (tenant_id, revision, head_hash, created_at, catalog_version) VALUES ($1, 0, $2, $3, 1) \
         ON CONFLICT (tenant_id) DO UPDATE SET catalog_version = tenants.catalog_version + 1 \
         RETURNING catalog_version",
    )
    .bind(tenant)
    .bind(GENESIS.to_vec())
    .bind(Timestamp::now().as_micros())
    .fetch_one(&mut **tx)
    .await
    .map_err(db)?
    .try_get(0)
    .map_err(db)?;
    raise_fence(tx, tenant, 0, version).await
}

/// Raises the tenant's cache fence (never lowers it). Call last in a transaction, after the
/// tenant row is locked: the clock row it takes is held to commit, so fence sequence numbers
/// follow commit order (and tenant row, then clock row, is the only lock order).
async fn raise_fence(
    tx: &mut Transaction<'_, Any>,
    tenant: &str,
    revision: Revision,
    catalog_version: i64,
) -> Result<()> {
    let seq: i64 =
        sqlx::query("UPDATE cache_fence_clock SET seq = seq + 1 WHERE id = 1 RETURNING seq")
            .fetch_one(&mut **tx)
            .await
            .map_err(db)?
            .try_get(0)
            .map_err(db)?;
    sqlx::query(
        "INSERT INTO cache_fences (tenant_id, revision, catalog_version, seq) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (tenant_id) DO UPDATE SET \
         revision = CASE WHEN excluded.revision > cache_fences.revision THEN excluded.revision ELSE cache_fences.revision END, \
         catalog_version = CASE WHEN excluded.catalog_version > cache_fences.catalog_version \
           THEN excluded.catalog_version ELSE cache_fences.catalog_version END, \
         seq = excluded.seq",
    )
    .bind(tenant)
    .bind(revision)
    .bind(catalog_version)
    .bind(seq)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

impl SqlStore {
    /// The `body` column of every row `sql` selects for `tenant`.
    async fn documents(&self, sql: &str, tenant: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(sql)
            .bind(tenant)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|row| row.try_get::<String, _>(0).map_err(db))
            .collect()
    }

    /// Upserts one catalogue document and bumps the catalogue version, atomically.
    async fn write_document(&self, sql: &str, tenant: &str, id: &str, body: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        // Version first: it serialises catalogue writers of the tenant on its row.
        bump_catalog_version(&mut tx, tenant).await?;
        sqlx::query(sql)
            .bind(tenant)
            .bind(id)
            .bind(body)
            .bind(Timestamp::now().as_micros())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }
}

const EVENT_COLUMNS: &str = "revision, event_id, subject_id, purpose_id, vendor_id, decision, policy_version_id, \
     channel, collected_at, recorded_at, expires_at, evidence, evidence_sha256, actor_key_id, prev_hash, hash";

fn event_from_row(row: &AnyRow) -> Result<StoredEvent> {
    let text = |i: usize| row.try_get::<String, _>(i).map_err(db);
    let int = |i: usize| row.try_get::<i64, _>(i).map_err(db);
    let bytes = |i: usize| row.try_get::<Vec<u8>, _>(i).map_err(db);
    let evidence_json: Option<String> = row.try_get(11).map_err(db)?;
    let evidence_erased = evidence_json.is_none();
    let evidence: Evidence = match evidence_json {
        Some(json) => from_json(&json, "evidence")?,
        None => Evidence::default(),
    };
    let event = NewEvent {
        id: text(1)?,
        subject_id: text(2)?,
        purpose_id: text(3)?,
        vendor_id: text(4)?,
        decision: parse(&text(5)?, "decision")?,
        policy_version_id: text(6)?,
        channel: parse(&text(7)?, "channel")?,
        collected_at: Timestamp(int(8)?),
        expires_at: row
            .try_get::<Option<i64>, _>(10)
            .map_err(db)?
            .map(Timestamp),
        evidence,
        actor_key_id: text(13)?,
    };
    Ok(StoredEvent {
        event: ConsentEvent {
            event,
            recorded_at: Timestamp(int(9)?),
            revision: int(0)?,
            evidence_sha256: hash32(bytes(12)?, "evidence_sha256")?,
            prev_hash: hash32(bytes(14)?, "prev_hash")?,
            hash: hash32(bytes(15)?, "hash")?,
        },
        evidence_erased,
    })
}

fn state_from_row(row: &AnyRow) -> Result<StateEntry> {
    let text = |i: usize| row.try_get::<String, _>(i).map_err(db);
    Ok(StateEntry {
        purpose_id: text(0)?,
        vendor_id: text(1)?,
        decision: parse(&text(2)?, "decision")?,
        event_id: text(3)?,
        policy_version_id: text(4)?,
        collected_at: Timestamp(row.try_get(5).map_err(db)?),
        revision: row.try_get(6).map_err(db)?,
    })
}

const STATE_COLUMNS: &str =
    "purpose_id, vendor_id, decision, event_id, policy_version_id, collected_at, revision";

/// Reads the events of a revision range inside a transaction (idempotent replays).
async fn events_in_range(
    tx: &mut Transaction<'_, Any>,
    tenant: &str,
    first: Revision,
    last: Revision,
) -> Result<Vec<ConsentEvent>> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM consent_events WHERE tenant_id = $1 AND revision >= $2 AND revision <= $3 \
         ORDER BY revision"
    );
    let rows = sqlx::query(&sql)
        .bind(tenant)
        .bind(first)
        .bind(last)
        .fetch_all(&mut **tx)
        .await
        .map_err(db)?;
    rows.iter()
        .map(|r| event_from_row(r).map(|e| e.event))
        .collect()
}

impl SqlStore {
    /// Takes the tenant's write lock (creating the tenant on its first write) and returns its head.
    async fn lock_tenant(
        tx: &mut Transaction<'_, Any>,
        tenant: &str,
        now: Timestamp,
    ) -> Result<LedgerHead> {
        sqlx::query(
            "INSERT INTO tenants (tenant_id, revision, head_hash, created_at) VALUES ($1, 0, $2, $3) \
             ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(tenant)
        .bind(GENESIS.to_vec())
        .bind(now.as_micros())
        .execute(&mut **tx)
        .await
        .map_err(db)?;
        let row = sqlx::query("UPDATE tenants SET revision = revision WHERE tenant_id = $1 RETURNING revision, head_hash")
            .bind(tenant)
            .fetch_one(&mut **tx)
            .await
            .map_err(db)?;
        Ok(LedgerHead {
            revision: row.try_get(0).map_err(db)?,
            hash: hash32(row.try_get(1).map_err(db)?, "head_hash")?,
        })
    }

    async fn insert_event(
        tx: &mut Transaction<'_, Any>,
        tenant: &str,
        e: &ConsentEvent,
    ) -> Result<()> {
        let n = &e.event;
        let sql = format!(
            "INSERT INTO consent_events (tenant_id, {EVENT_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
        );
        sqlx::query(&sql)
            .bind(tenant)
            .bind(e.revision)
            .bind(&n.id)
            .bind(&n.subject_id)
            .bind(&n.purpose_id)
            .bind(&n.vendor_id)
            .bind(n.decision.as_str())
            .bind(&n.policy_version_id)
            .bind(n.channel.as_str())
            .bind(n.collected_at.as_micros())
            .bind(e.recorded_at.as_micros())
            .bind(n.expires_at.map(Timestamp::as_micros))
            .bind(to_json(&n.evidence)?)
            .bind(e.evidence_sha256.to_vec())
            .bind(&n.actor_key_id)
            .bind(e.prev_hash.to_vec())
            .bind(e.hash.to_vec())
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        // Move the projection only if this choice supersedes the stored one: later collected,
        // or at the same time more restrictive, or as restrictive and later written
        // (`StateEntry::supersedes`).
        sqlx::query(
            "INSERT INTO consent_state (tenant_id, subject_id, purpose_id, vendor_id, decision, event_id, \
             policy_version_id, collected_at, revision) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (tenant_id, subject_id, purpose_id, vendor_id) DO UPDATE SET \
             decision = excluded.decision, event_id = excluded.event_id, \
             policy_version_id = excluded.policy_version_id, collected_at = excluded.collected_at, \
             revision = excluded.revision \
             WHERE (excluded.collected_at, CASE WHEN excluded.decision = 'granted' THEN 0 ELSE 1 END, excluded.revision) \
               > (consent_state.collected_at, CASE WHEN consent_state.decision = 'granted' THEN 0 ELSE 1 END, consent_state.revision)",
        )
        .bind(tenant)
        .bind(&n.subject_id)
        .bind(&n.purpose_id)
        .bind(&n.vendor_id)
        .bind(n.decision.as_str())
        .bind(&n.id)
        .bind(&n.policy_version_id)
        .bind(n.collected_at.as_micros())
        .bind(e.revision)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Every event of the subject as a state entry, in revision order.
    async fn history_entries(&self, tenant: &str, subject: &str) -> Result<Vec<StateEntry>> {
        let sql = format!(
            "SELECT {STATE_COLUMNS} FROM consent_events WHERE tenant_id = $1 AND subject_id = $2 ORDER BY revision"
        );
        self.state_entries(&sql, tenant, subject).await
    }

    /// The subject's projection rows.
    async fn current_entries(&self, tenant: &str, subject: &str) -> Result<Vec<StateEntry>> {
        let sql = format!(
            "SELECT {STATE_COLUMNS} FROM consent_state WHERE tenant_id = $1 AND subject_id = $2"
        );
        self.state_entries(&sql, tenant, subject).await
    }

    /// The rows of `sql` (selecting `STATE_COLUMNS` by tenant and subject) as state entries.
    async fn state_entries(
        &self,
        sql: &str,
        tenant: &str,
        subject: &str,
    ) -> Result<Vec<StateEntry>> {
        let rows = sqlx::query(sql)
            .bind(tenant)
            .bind(subject)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(state_from_row).collect()
    }
}

#[async_trait]
impl LedgerStore for SqlStore {
    async fn append(
        &self,
        tenant: &str,
        events: &[NewEvent],
        idempotency: Option<&Idempotency>,
        fence: CacheFence,
    ) -> Result<AppendOutcome> {
        let now = Timestamp::now();
        let mut tx = self.pool.begin().await.map_err(db)?;
        let head = Self::lock_tenant(&mut tx, tenant, now).await?;

        if let Some(key) = idempotency {
            let row = sqlx::query(
                "SELECT fingerprint, first_revision, last_revision FROM idempotency_keys \
                 WHERE tenant_id = $1 AND idempotency_key = $2",
            )
            .bind(tenant)
            .bind(&key.key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
            if let Some(row) = row {
                let fingerprint = hash32(row.try_get(0).map_err(db)?, "fingerprint")?;
                if fingerprint != key.fingerprint {
                    return Err(ConsentError::AlreadyExists(format!(
                        "idempotency_key `{}` was already used with a different request",
                        key.key
                    )));
                }
                let (first, last): (i64, i64) =
                    (row.try_get(1).map_err(db)?, row.try_get(2).map_err(db)?);
                let events = events_in_range(&mut tx, tenant, first, last).await?;
                tx.rollback().await.map_err(db)?;
                return Ok(AppendOutcome {
                    events,
                    revision: last,
                    replayed: true,
                });
            }
        }

        let mut prev = head.hash;
        let mut revision = head.revision;
        let mut written = Vec::with_capacity(events.len());
        for new_event in events {
            revision += 1;
            let sealed = seal(tenant, new_event.clone(), revision, now, prev);
            Self::insert_event(&mut tx, tenant, &sealed).await?;
            prev = sealed.hash;
            written.push(sealed);
        }
        if revision != head.revision {
            sqlx::query("UPDATE tenants SET revision = $2, head_hash = $3 WHERE tenant_id = $1")
                .bind(tenant)
                .bind(revision)
                .bind(prev.to_vec())
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        if let Some(key) = idempotency {
            sqlx::query(
                "INSERT INTO idempotency_keys (tenant_id, idempotency_key, fingerprint, first_revision, \
                 last_revision, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(tenant)
            .bind(&key.key)
            .bind(key.fingerprint.to_vec())
            .bind(head.revision + 1)
            .bind(revision)
            .bind(now.as_micros())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        if fence == CacheFence::States {
            raise_fence(&mut tx, tenant, revision, 0).await?;
        }
        if self.backend == Backend::Postgres && revision != head.revision {
            // Delivered to every listener when (and only if) the transaction commits.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(COMMIT_CHANNEL)
                .bind(commit_payload(tenant, revision))
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        if revision != head.revision {
            self.commits.publish(Commit {
                tenant_id: tenant.to_owned(),
                revision,
            });
        }
        Ok(AppendOutcome {
            events: written,
            revision,
            replayed: false,
        })
    }

    async fn subject_state(
        &self,
        tenant: &str,
        subject_id: &str,
        as_of: Option<Timestamp>,
        _consistency: Consistency,
    ) -> Result<Arc<SubjectState>> {
        if let Some(at) = as_of {
            return Ok(Arc::new(
                self.subject_history(tenant, subject_id).await?.as_of(at),
            ));
        }
        // The revision is read before the data, so the data is at least that new.
        let revision = self.head(tenant).await?.revision;
        let entries = self.current_entries(tenant, subject_id).await?;
        Ok(Arc::new(SubjectState { entries, revision }))
    }

    async fn subject_history(&self, tenant: &str, subject_id: &str) -> Result<SubjectState> {
        // The revision is read before the data, so the data is at least that new.
        let revision = self.head(tenant).await?.revision;
        let entries = self.history_entries(tenant, subject_id).await?;
        Ok(SubjectState { entries, revision })
    }

    async fn list_events(&self, tenant: &str, query: &EventQuery) -> Result<Vec<StoredEvent>> {
        let columns = if query.without_evidence {
            // Erased stays NULL (so erasure is still told); present evidence reads as empty.
            let empty = to_json(&Evidence::default())?;
            EVENT_COLUMNS.replacen(
                " evidence,",
                &format!(" CASE WHEN evidence IS NULL THEN NULL ELSE '{empty}' END AS evidence,"),
                1,
            )
        } else {
            EVENT_COLUMNS.to_owned()
        };
        let mut sql =
            format!("SELECT {columns} FROM consent_events WHERE tenant_id = $1 AND revision > $2");
        let mut texts: Vec<&str> = Vec::new();
        let mut ints: Vec<i64> = Vec::new();
        let mut n = 2;
        // Parameters are numbered in the order they are bound: texts first, then integers.
        if let Some(subject) = &query.subject_id {
            n += 1;
            sql.push_str(&format!(" AND subject_id = ${n}"));
            texts.push(subject);
        }
        if let Some(purpose) = &query.purpose_id {
            // A subject-wide choice (withdraw-all) bears on every purpose.
            n += 1;
            sql.push_str(&format!(
                " AND (purpose_id = ${n} OR purpose_id = ${})",
                n + 1
            ));
            n += 1;
            texts.push(purpose);
            texts.push(SUBJECT_WIDE);
        }
        for (condition, value) in [
            (
                "collected_at >=",
                query.collected_from.map(Timestamp::as_micros),
            ),
            (
                "collected_at <",
                query.collected_to.map(Timestamp::as_micros),
            ),
            ("revision <=", query.until_revision),
        ] {
            if let Some(v) = value {
                n += 1;
                sql.push_str(&format!(" AND {condition} ${n}"));
                ints.push(v);
            }
        }
        n += 1;
        sql.push_str(&format!(" ORDER BY revision LIMIT ${n}"));
        let mut q = sqlx::query(&sql).bind(tenant).bind(query.after_revision);
        for t in texts {
            q = q.bind(t);
        }
        for i in ints {
            q = q.bind(i);
        }
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let rows = q.bind(limit).fetch_all(&self.pool).await.map_err(db)?;
        rows.iter().map(event_from_row).collect()
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Commit> {
        self.commits.subscribe()
    }

    async fn cache_fences(&self, after: i64) -> Result<Vec<FenceRecord>> {
        let rows = sqlx::query(
            "SELECT seq, tenant_id, revision, catalog_version FROM cache_fences WHERE seq > $1 ORDER BY seq",
        )
        .bind(after)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|row| {
                Ok(FenceRecord {
                    seq: row.try_get(0).map_err(db)?,
                    tenant_id: row.try_get(1).map_err(db)?,
                    revision: row.try_get(2).map_err(db)?,
                    catalog_version: row.try_get(3).map_err(db)?,
                })
            })
            .collect()
    }

    async fn head(&self, tenant: &str) -> Result<LedgerHead> {
        let row = sqlx::query("SELECT revision, head_hash FROM tenants WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        match row {
            None => Ok(LedgerHead::default()),
            Some(row) => Ok(LedgerHead {
                revision: row.try_get(0).map_err(db)?,
                hash: hash32(row.try_get(1).map_err(db)?, "head_hash")?,
            }),
        }
    }
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
