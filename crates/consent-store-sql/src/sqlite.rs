//! The ledger on SQLite with sqlx's native driver: one file, WAL, `synchronous=FULL`.
//!
//! SQLite has one writer at a time, so the store has two pools: a write pool of **one**
//! connection, which every write (group commits, catalogue, keys) goes through in turn
//! instead of many connections queueing on the file lock through `busy_timeout`, and a
//! read-only pool for everything else (WAL readers never wait for the writer).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use consent_core::access::{ApiKey, Tenant, scopes_from_text, scopes_to_text};
use consent_core::chain::{ChainKey, GENESIS};
use consent_core::{
    Catalog, ConsentError, ConsentEvent, Evidence, NewEvent, NewRecord, PolicyVersion, Purpose,
    Result, Revision, StateEntry, SubjectState, Timestamp, Vendor,
};
use consent_store::{
    AccessStore, AppendOutcome, CacheFence, CatalogStore, Commit, Consistency, ErasureOutcome,
    EventQuery, FenceRecord, FlagsOutcome, LedgerHead, LedgerStore, StoredEvent, StoredRecord,
};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};

use crate::commits::CommitFeed;
use crate::errors::{CACHE_NAMESPACE, cache_namespace_of, db};
use crate::group::{
    BatchBackend, BatchTx, BatchWrite, GroupCommit, KeyRecord, NewKey, PendingWrite, StateRow,
};
use crate::rows::{
    CATALOG_POLICY, CATALOG_PURPOSE, CATALOG_VENDOR, CATALOG_VERSION, LockedHead,
    catalog_from_rows, from_json, hash32, parse, to_json,
};

/// Rows per multi-row INSERT (17 parameters each, well under SQLite's 32,766).
const ROWS_PER_INSERT: usize = 500;

/// The ledger on SQLite.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    pub(crate) commits: CommitFeed,
    group: GroupCommit,
    pub(crate) keys: crate::rows::SubjectKeys,
}

/// The write side the group commit drives.
struct SqliteWriter {
    writer: SqlitePool,
    commits: CommitFeed,
    idempotency_ttl: Duration,
}

impl SqliteStore {
    /// A store writing through `writer` (one connection) and reading through `reader`.
    pub(crate) fn new(
        writer: SqlitePool,
        reader: SqlitePool,
        idempotency_ttl: Duration,
    ) -> SqliteStore {
        let commits = CommitFeed::local();
        let group = GroupCommit::new(Arc::new(SqliteWriter {
            writer: writer.clone(),
            commits: commits.clone(),
            idempotency_ttl,
        }));
        SqliteStore {
            writer,
            reader,
            commits,
            group,
            keys: crate::rows::SubjectKeys::default(),
        }
    }

    pub(crate) fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    pub(crate) fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    pub(crate) async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    /// Deletes idempotency records created before `before`, in chunks; returns how many.
    pub(crate) async fn purge_idempotency_keys(&self, before: Timestamp) -> Result<u64> {
        let mut purged = 0;
        loop {
            let n = sqlx::query(
                "DELETE FROM idempotency_keys WHERE (tenant_id, idempotency_key) IN \
                 (SELECT tenant_id, idempotency_key FROM idempotency_keys WHERE created_at < $1 LIMIT $2)",
            )
            .bind(before.as_micros())
            .bind(crate::PURGE_CHUNK)
            .execute(&self.writer)
            .await
            .map_err(db)?
            .rows_affected();
            purged += n;
            if n < crate::PURGE_CHUNK.unsigned_abs() {
                return Ok(purged);
            }
        }
    }
}

pub(crate) const EVENT_COLUMNS: &str = "revision, event_id, subject_id, purpose_id, vendor_id, decision, \
     policy_version_id, channel, collected_at, recorded_at, expires_at, evidence, \
     evidence_sha256, actor_key_id, prev_hash, hash";

/// The same columns with the evidence left out: erased stays NULL, present reads as an empty
/// string (decoded as the default, empty evidence).
pub(crate) const EVENT_COLUMNS_WITHOUT_EVIDENCE: &str = "revision, event_id, subject_id, purpose_id, \
     vendor_id, decision, policy_version_id, channel, collected_at, recorded_at, expires_at, \
     CASE WHEN evidence IS NULL THEN NULL ELSE '' END, evidence_sha256, actor_key_id, \
     prev_hash, hash";

pub(crate) fn event_from_row(row: &SqliteRow) -> Result<StoredEvent> {
    let text = |i: usize| row.try_get::<String, _>(i).map_err(db);
    let int = |i: usize| row.try_get::<i64, _>(i).map_err(db);
    let digest = |i: usize, what: &str| hash32(&row.try_get::<Vec<u8>, _>(i).map_err(db)?, what);
    let evidence_json: Option<String> = row.try_get(11).map_err(db)?;
    let evidence_erased = evidence_json.is_none();
    let evidence: Evidence = match evidence_json {
        Some(json) if !json.is_empty() => from_json(&json, "evidence")?,
        _ => Evidence::default(),
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
            evidence_sha256: digest(12, "evidence_sha256")?,
            prev_hash: digest(14, "prev_hash")?,
            hash: digest(15, "hash")?,
        },
        evidence_erased,
    })
}

/// Columns 1..=7 of a state read (column 0 is the revision read with it); `None` for the
/// padding row of a subject without entries.
fn state_from_row(row: &SqliteRow) -> Result<Option<StateEntry>> {
    let Some(purpose_id) = row.try_get::<Option<String>, _>(1).map_err(db)? else {
        return Ok(None);
    };
    let text = |i: usize| row.try_get::<String, _>(i).map_err(db);
    Ok(Some(StateEntry {
        purpose_id,
        vendor_id: text(2)?,
        decision: parse(&text(3)?, "decision")?,
        event_id: text(4)?,
        policy_version_id: text(5)?,
        collected_at: Timestamp(row.try_get(6).map_err(db)?),
        revision: row.try_get(7).map_err(db)?,
    }))
}

/// Reads a subject's rows from `table` with the tenant revision, in one statement (one
/// read transaction: the revision and the rows agree).
async fn subject_rows(
    pool: &SqlitePool,
    table: &str,
    order: &str,
    tenant: &str,
    subject: &str,
    erased_id: Option<&str>,
) -> Result<SubjectState> {
    // An erased subject's marker (under its erased id) comes before any flags.
    let sql = format!(
        "SELECT h.revision, s.purpose_id, s.vendor_id, s.decision, s.event_id, s.policy_version_id, \
         s.collected_at, s.revision, h.flags \
         FROM (SELECT COALESCE((SELECT revision FROM tenants WHERE tenant_id = $1), 0) AS revision, \
               COALESCE((SELECT body FROM subject_flags WHERE tenant_id = $1 AND subject_id = $3), \
                        (SELECT body FROM subject_flags WHERE tenant_id = $1 AND subject_id = $2)) AS flags) h \
         LEFT JOIN {table} s ON s.tenant_id = $1 AND s.subject_id = $2 {order}"
    );
    let rows = sqlx::query(&sql)
        .bind(tenant)
        .bind(subject)
        .bind(erased_id)
        .fetch_all(pool)
        .await
        .map_err(db)?;
    let mut state = SubjectState::default();
    for row in &rows {
        state.revision = row.try_get(0).map_err(db)?;
        state.entries.extend(state_from_row(row)?);
        if let Some(flags) = row.try_get::<Option<String>, _>(8).map_err(db)? {
            state.flags = from_json(&flags, "subject_flags.body")?;
        }
    }
    Ok(state)
}

/// The current states of `subjects` with the tenant revision, one statement per 500 subjects.
async fn states_of(
    pool: &SqlitePool,
    tenant: &str,
    subjects: &[String],
) -> Result<(Vec<Arc<SubjectState>>, i64)> {
    let mut states = Vec::with_capacity(subjects.len());
    let mut erasures = 0;
    for chunk in subjects.chunks(ROWS_PER_INSERT) {
        let mut sql: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT h.revision, s.purpose_id, s.vendor_id, s.decision, s.event_id, s.policy_version_id, \
             s.collected_at, s.revision, s.subject_id, NULL AS flags, h.erasures \
             FROM (SELECT COALESCE(t.revision, 0) AS revision, COALESCE(t.erasures, 0) AS erasures \
             FROM (SELECT 1) AS one LEFT JOIN tenants t ON t.tenant_id = ",
        );
        sql.push_bind(tenant)
            .push(") h LEFT JOIN consent_state s ON s.tenant_id = ")
            .push_bind(tenant)
            .push(" AND s.subject_id IN (");
        let mut list = sql.separated(", ");
        for subject in chunk {
            list.push_bind(subject.as_str());
        }
        sql.push(") UNION ALL SELECT COALESCE((SELECT revision FROM tenants WHERE tenant_id = ")
            .push_bind(tenant)
            .push(
                "), 0), NULL, NULL, NULL, NULL, NULL, NULL, NULL, f.subject_id, f.body, \
                   COALESCE((SELECT erasures FROM tenants WHERE tenant_id = f.tenant_id), 0) \
                   FROM subject_flags f WHERE f.tenant_id = ",
            )
            .push_bind(tenant)
            .push(" AND f.subject_id IN (");
        let mut list = sql.separated(", ");
        for subject in chunk {
            list.push_bind(subject.as_str());
        }
        sql.push(")");
        let rows = sql.build().fetch_all(pool).await.map_err(db)?;
        let (chunk_states, chunk_erasures) =
            crate::rows::states_in_order(chunk, &rows, state_from_row)?;
        states.extend(chunk_states);
        erasures = erasures.max(chunk_erasures);
    }
    Ok((states, erasures))
}

#[async_trait]
impl CatalogStore for SqliteStore {
    async fn catalog(&self, tenant: &str, _consistency: Consistency) -> Result<Arc<Catalog>> {
        // One statement: the version and the documents come from one read transaction.
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT $2, CAST(catalog_version AS TEXT) FROM tenants WHERE tenant_id = $1 \
             UNION ALL SELECT $3, body FROM purposes WHERE tenant_id = $1 \
             UNION ALL SELECT $4, body FROM vendors WHERE tenant_id = $1 \
             UNION ALL SELECT $5, body FROM policy_versions WHERE tenant_id = $1",
        )
        .bind(tenant)
        .bind(CATALOG_VERSION)
        .bind(CATALOG_PURPOSE)
        .bind(CATALOG_VENDOR)
        .bind(CATALOG_POLICY)
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        Ok(Arc::new(catalog_from_rows(rows)?))
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
        let mut tx = self.writer.begin().await.map_err(db)?;
        let inserted = sqlx::query(
            "INSERT INTO policy_versions (tenant_id, policy_version_id, published_at, body) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, policy_version_id) DO NOTHING",
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
        let body: String = sqlx::query_scalar(
            "SELECT body FROM policy_versions WHERE tenant_id = $1 AND policy_version_id = $2",
        )
        .bind(tenant)
        .bind(&policy.id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        tx.rollback().await.map_err(db)?;
        crate::same_policy_or_conflict(from_json(&body, "policy version")?, policy)
    }
}

impl SqliteStore {
    /// Upserts one catalogue document and bumps the catalogue version, atomically.
    async fn write_document(&self, sql: &str, tenant: &str, id: &str, body: &str) -> Result<()> {
        let mut tx = self.writer.begin().await.map_err(db)?;
        bump_catalog_version(&mut tx, tenant).await?;
        sqlx::query(sql)
            .bind(tenant)
            .bind(id)
            .bind(body)
            .bind(Timestamp::now().as_micros())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }
}

/// Bumps the tenant's catalogue version inside a catalogue write (creating the tenant row),
/// and fences cached catalogues older than the new version.
async fn bump_catalog_version(tx: &mut Transaction<'static, Sqlite>, tenant: &str) -> Result<()> {
    let version: i64 = sqlx::query_scalar(
        "INSERT INTO tenants (tenant_id, revision, head_hash, created_at, catalog_version) \
         VALUES ($1, 0, $2, $3, 1) \
         ON CONFLICT (tenant_id) DO UPDATE SET catalog_version = tenants.catalog_version + 1 \
         RETURNING catalog_version",
    )
    .bind(tenant)
    .bind(GENESIS.as_slice())
    .bind(Timestamp::now().as_micros())
    .fetch_one(&mut **tx)
    .await
    .map_err(db)?;
    raise_fence(tx, tenant, 0, version).await
}

/// Raises the tenant's cache fence (never lowers it), numbered by the clock row (one writer:
/// sequence order is commit order).
pub(crate) async fn raise_fence(
    tx: &mut Transaction<'static, Sqlite>,
    tenant: &str,
    revision: Revision,
    catalog_version: i64,
) -> Result<()> {
    let seq: i64 =
        sqlx::query_scalar("UPDATE cache_fence_clock SET seq = seq + 1 WHERE id = 1 RETURNING seq")
            .fetch_one(&mut **tx)
            .await
            .map_err(db)?;
    sqlx::query(
        "INSERT INTO cache_fences (tenant_id, revision, catalog_version, seq) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (tenant_id) DO UPDATE SET \
         revision = MAX(excluded.revision, cache_fences.revision), \
         catalog_version = MAX(excluded.catalog_version, cache_fences.catalog_version), \
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

#[async_trait]
impl BatchBackend for SqliteWriter {
    async fn begin(&self) -> Result<Box<dyn BatchTx>> {
        Ok(Box::new(SqliteTx(self.writer.begin().await.map_err(db)?)))
    }

    fn idempotency_ttl(&self) -> Duration {
        self.idempotency_ttl
    }

    fn committed(&self, commit: Commit) {
        self.commits.publish(commit);
    }
}

struct SqliteTx(Transaction<'static, Sqlite>);

impl SqliteTx {
    /// The rows `select` (`SELECT ... FROM table`) finds of the tenant's `subjects`, a
    /// bounded `IN` list at a time.
    async fn rows_of_subjects(
        &mut self,
        select: &str,
        tenant: &str,
        subjects: &[String],
    ) -> Result<Vec<SqliteRow>> {
        let mut rows = Vec::new();
        for chunk in subjects.chunks(ROWS_PER_INSERT) {
            let mut sql: QueryBuilder<Sqlite> = QueryBuilder::new(select);
            sql.push(" WHERE tenant_id = ")
                .push_bind(tenant)
                .push(" AND subject_id IN (");
            let mut list = sql.separated(", ");
            for id in chunk {
                list.push_bind(id.as_str());
            }
            sql.push(")");
            rows.extend(sql.build().fetch_all(&mut *self.0).await.map_err(db)?);
        }
        Ok(rows)
    }
}

#[async_trait]
impl BatchTx for SqliteTx {
    async fn lock_head(&mut self, tenant: &str, now: Timestamp) -> Result<LockedHead> {
        // A write statement first, so the transaction holds the write lock from here on.
        let row = sqlx::query(crate::rows::LOCK_HEAD)
            .bind(tenant)
            .bind(GENESIS.as_slice())
            .bind(now.as_micros())
            .bind(crate::rows::new_subject_key()?.as_slice())
            .fetch_one(&mut *self.0)
            .await
            .map_err(db)?;
        crate::rows::locked_head(&row)
    }

    async fn erased_among(
        &mut self,
        tenant: &str,
        erased_ids: &[String],
    ) -> Result<HashSet<String>> {
        let rows = self
            .rows_of_subjects("SELECT subject_id FROM subject_flags", tenant, erased_ids)
            .await?;
        rows.iter().map(|row| row.try_get(0).map_err(db)).collect()
    }

    async fn merged_among(
        &mut self,
        tenant: &str,
        subjects: &[String],
    ) -> Result<HashMap<String, String>> {
        let rows = self
            .rows_of_subjects(
                "SELECT subject_id, merged_into FROM merged_subjects",
                tenant,
                subjects,
            )
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0).map_err(db)?, row.try_get(1).map_err(db)?)))
            .collect()
    }

    async fn links_among(
        &mut self,
        tenant: &str,
        aliases: &[consent_core::identity::AliasKey],
    ) -> Result<HashMap<consent_core::identity::AliasKey, String>> {
        let mut found = HashMap::new();
        for chunk in aliases.chunks(ROWS_PER_INSERT) {
            let mut sql: QueryBuilder<Sqlite> = QueryBuilder::new(
                "SELECT alias_key, subject_id FROM subject_identities WHERE tenant_id = ",
            );
            sql.push_bind(tenant).push(" AND alias_key IN (");
            let mut list = sql.separated(", ");
            for alias in chunk {
                list.push_bind(alias.0.to_vec());
            }
            sql.push(")");
            for row in sql.build().fetch_all(&mut *self.0).await.map_err(db)? {
                let alias: Vec<u8> = row.try_get(0).map_err(db)?;
                found.insert(
                    consent_core::identity::AliasKey(hash32(
                        &alias,
                        "subject_identities.alias_key",
                    )?),
                    row.try_get(1).map_err(db)?,
                );
            }
        }
        Ok(found)
    }

    async fn find_keys(
        &mut self,
        tenant: &str,
        keys: &[&str],
        live_after: Timestamp,
    ) -> Result<HashMap<String, KeyRecord>> {
        let mut found = HashMap::new();
        for chunk in keys.chunks(ROWS_PER_INSERT) {
            let mut sql: QueryBuilder<Sqlite> = QueryBuilder::new(
                "SELECT idempotency_key, fingerprint, first_revision, last_revision \
                 FROM idempotency_keys WHERE tenant_id = ",
            );
            sql.push_bind(tenant)
                .push(" AND created_at > ")
                .push_bind(live_after.as_micros())
                .push(" AND idempotency_key IN (");
            let mut list = sql.separated(", ");
            for key in chunk {
                list.push_bind(*key);
            }
            sql.push(")");
            let rows = sql.build().fetch_all(&mut *self.0).await.map_err(db)?;
            for row in &rows {
                found.insert(
                    row.try_get(0).map_err(db)?,
                    KeyRecord {
                        fingerprint: hash32(
                            &row.try_get::<Vec<u8>, _>(1).map_err(db)?,
                            "fingerprint",
                        )?,
                        first_revision: row.try_get(2).map_err(db)?,
                        last_revision: row.try_get(3).map_err(db)?,
                    },
                );
            }
        }
        Ok(found)
    }

    async fn events_in_range(
        &mut self,
        tenant: &str,
        first: Revision,
        last: Revision,
    ) -> Result<Vec<ConsentEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM consent_events \
             WHERE tenant_id = $1 AND revision BETWEEN $2 AND $3 ORDER BY revision"
        );
        let rows = sqlx::query(&sql)
            .bind(tenant)
            .bind(first)
            .bind(last)
            .fetch_all(&mut *self.0)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| event_from_row(r).map(|e| e.event))
            .collect()
    }

    async fn write(&mut self, tenant: &str, batch: &BatchWrite<'_>) -> Result<()> {
        // Statements cost no round trip on SQLite: one per table.
        self.insert_events(tenant, batch.events).await?;
        self.upsert_states(tenant, batch.states).await?;
        self.set_head(tenant, batch.head).await?;
        self.insert_keys(tenant, batch.keys, batch.now).await
    }

    async fn cache_namespace(&mut self) -> Result<String> {
        // The transaction holds SQLite's write lock since `lock_head`: a rotation (a write,
        // from this process or another) waits for it to commit.
        cache_namespace_of(
            sqlx::query_scalar(CACHE_NAMESPACE)
                .fetch_optional(&mut *self.0)
                .await,
        )
    }

    async fn raise_fence(
        &mut self,
        tenant: &str,
        revision: Revision,
        catalog_version: i64,
    ) -> Result<()> {
        raise_fence(&mut self.0, tenant, revision, catalog_version).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.0.commit().await.map_err(db)
    }
}

impl SqliteTx {
    async fn insert_events(&mut self, tenant: &str, events: &[ConsentEvent]) -> Result<()> {
        for chunk in events.chunks(ROWS_PER_INSERT) {
            let evidence = chunk
                .iter()
                .map(|e| to_json(&e.event.evidence))
                .collect::<Result<Vec<_>>>()?;
            let mut sql: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO consent_events (tenant_id, revision, event_id, subject_id, purpose_id, \
                 vendor_id, decision, policy_version_id, channel, collected_at, recorded_at, \
                 expires_at, evidence, evidence_sha256, actor_key_id, prev_hash, hash) ",
            );
            sql.push_values(chunk.iter().zip(evidence), |mut row, (e, evidence)| {
                let n = &e.event;
                row.push_bind(tenant)
                    .push_bind(e.revision)
                    .push_bind(n.id.as_str())
                    .push_bind(n.subject_id.as_str())
                    .push_bind(n.purpose_id.as_str())
                    .push_bind(n.vendor_id.as_str())
                    .push_bind(n.decision.as_str())
                    .push_bind(n.policy_version_id.as_str())
                    .push_bind(n.channel.as_str())
                    .push_bind(n.collected_at.as_micros())
                    .push_bind(e.recorded_at.as_micros())
                    .push_bind(n.expires_at.map(Timestamp::as_micros))
                    .push_bind(evidence)
                    .push_bind(e.evidence_sha256.as_slice())
                    .push_bind(n.actor_key_id.as_str())
                    .push_bind(e.prev_hash.as_slice())
                    .push_bind(e.hash.as_slice());
            });
            sql.build().execute(&mut *self.0).await.map_err(db)?;
        }
        Ok(())
    }

    async fn upsert_states(&mut self, tenant: &str, rows: &[StateRow]) -> Result<()> {
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            let mut sql: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO consent_state (tenant_id, subject_id, purpose_id, vendor_id, decision, \
                 event_id, policy_version_id, collected_at, revision) ",
            );
            sql.push_values(chunk, |mut row, r| {
                let e = &r.entry;
                row.push_bind(tenant)
                    .push_bind(r.subject_id.as_str())
                    .push_bind(e.purpose_id.as_str())
                    .push_bind(e.vendor_id.as_str())
                    .push_bind(e.decision.as_str())
                    .push_bind(e.event_id.as_str())
                    .push_bind(e.policy_version_id.as_str())
                    .push_bind(e.collected_at.as_micros())
                    .push_bind(e.revision);
            });
            // Move a row only if the new choice supersedes the stored one
            // (`StateEntry::supersedes`).
            sql.push(
                " ON CONFLICT (tenant_id, subject_id, purpose_id, vendor_id) DO UPDATE SET \
                 decision = excluded.decision, event_id = excluded.event_id, \
                 policy_version_id = excluded.policy_version_id, collected_at = excluded.collected_at, \
                 revision = excluded.revision \
                 WHERE (excluded.collected_at, CASE WHEN excluded.decision = 'granted' THEN 0 ELSE 1 END, excluded.revision) \
                   > (consent_state.collected_at, CASE WHEN consent_state.decision = 'granted' THEN 0 ELSE 1 END, consent_state.revision)",
            );
            sql.build().execute(&mut *self.0).await.map_err(db)?;
        }
        Ok(())
    }

    async fn set_head(&mut self, tenant: &str, head: LedgerHead) -> Result<()> {
        sqlx::query("UPDATE tenants SET revision = $2, head_hash = $3 WHERE tenant_id = $1")
            .bind(tenant)
            .bind(head.revision)
            .bind(head.hash.as_slice())
            .execute(&mut *self.0)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn insert_keys(&mut self, tenant: &str, keys: &[NewKey], now: Timestamp) -> Result<()> {
        for chunk in keys.chunks(ROWS_PER_INSERT) {
            let mut sql: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO idempotency_keys (tenant_id, idempotency_key, fingerprint, \
                 first_revision, last_revision, created_at) ",
            );
            sql.push_values(chunk, |mut row, k| {
                row.push_bind(tenant)
                    .push_bind(k.key.as_str())
                    .push_bind(k.record.fingerprint.as_slice())
                    .push_bind(k.record.first_revision)
                    .push_bind(k.record.last_revision)
                    .push_bind(now.as_micros());
            });
            // A conflict is an expired record of the same key (live ones replayed).
            sql.push(
                " ON CONFLICT (tenant_id, idempotency_key) DO UPDATE SET \
                 fingerprint = excluded.fingerprint, first_revision = excluded.first_revision, \
                 last_revision = excluded.last_revision, created_at = excluded.created_at",
            );
            sql.build().execute(&mut *self.0).await.map_err(db)?;
        }
        Ok(())
    }
}

impl SqliteStore {
    /// An erasure (named by `named_by` when by identity), then a checkpoint: the WAL still
    /// holds the pages as they were before the erasure; this copies the new ones into the
    /// file and empties the WAL. Best effort (a reader on an older snapshot keeps the WAL
    /// until it is done; later checkpoints finish the work).
    async fn erase_and_checkpoint(
        &self,
        tenant: &str,
        subject_id: &str,
        record: NewRecord,
        fence: CacheFence,
        named_by: Option<&consent_core::identity::AliasKey>,
    ) -> Result<ErasureOutcome> {
        let outcome = self
            .subject_erase(tenant, subject_id, record, fence, named_by)
            .await?;
        if !outcome.already_erased
            && let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.writer)
                .await
        {
            tracing::warn!(error = %e, "checkpoint after an erasure failed");
        }
        Ok(outcome)
    }
}

#[async_trait]
impl LedgerStore for SqliteStore {
    async fn append(
        &self,
        tenant: &str,
        events: &[NewEvent],
        idempotency: Option<&consent_core::commands::Idempotency>,
        fence: CacheFence,
    ) -> Result<AppendOutcome> {
        self.group
            .append(tenant, PendingWrite::of(events, idempotency, fence, None))
            .await
    }

    async fn append_by_identity(
        &self,
        tenant: &str,
        events: &[NewEvent],
        idempotency: Option<&consent_core::commands::Idempotency>,
        fence: CacheFence,
        alias: &consent_core::identity::AliasKey,
    ) -> Result<AppendOutcome> {
        let write = PendingWrite::of(events, idempotency, fence, Some(*alias));
        self.group.append(tenant, write).await
    }

    async fn cache_fences(&self, after: i64) -> Result<Vec<FenceRecord>> {
        let rows: Vec<(i64, String, i64, i64)> = sqlx::query_as(
            "SELECT seq, tenant_id, revision, catalog_version FROM cache_fences WHERE seq > $1 ORDER BY seq",
        )
        .bind(after)
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|(seq, tenant_id, revision, catalog_version)| FenceRecord {
                seq,
                tenant_id,
                revision,
                catalog_version,
            })
            .collect())
    }

    async fn cache_namespace(&self) -> Result<String> {
        cache_namespace_of(
            sqlx::query_scalar(CACHE_NAMESPACE)
                .fetch_optional(&self.reader)
                .await,
        )
    }

    async fn subject_state(
        &self,
        tenant: &str,
        subject_id: &str,
        as_of: Option<Timestamp>,
        _consistency: Consistency,
    ) -> Result<Arc<SubjectState>> {
        Ok(Arc::new(match as_of {
            Some(at) => self.subject_history(tenant, subject_id).await?.as_of(at),
            None => {
                let erased_id = self.key_of(tenant).await?.erased_subject_id(subject_id);
                subject_rows(
                    &self.reader,
                    "consent_state",
                    "",
                    tenant,
                    subject_id,
                    erased_id.as_deref(),
                )
                .await?
            }
        }))
    }

    async fn subject_states(
        &self,
        tenant: &str,
        subjects: &[String],
        _consistency: Consistency,
    ) -> Result<Vec<Arc<SubjectState>>> {
        let (mut states, erasures) = states_of(&self.reader, tenant, subjects).await?;
        // Only a tenant that erased someone needs to look for erased markers.
        if erasures > 0 {
            let erased_ids = crate::rows::erased_ids(&self.key_of(tenant).await?, subjects);
            let (markers, _) = states_of(&self.reader, tenant, &erased_ids).await?;
            crate::rows::apply_markers(&mut states, &markers);
        }
        Ok(states)
    }

    async fn subject_history(&self, tenant: &str, subject_id: &str) -> Result<SubjectState> {
        let erased_id = self.key_of(tenant).await?.erased_subject_id(subject_id);
        subject_rows(
            &self.reader,
            "consent_events",
            "ORDER BY s.revision",
            tenant,
            subject_id,
            erased_id.as_deref(),
        )
        .await
    }

    async fn list_events(&self, tenant: &str, query: &EventQuery) -> Result<Vec<StoredEvent>> {
        self.events(tenant, query).await
    }

    async fn append_flags(
        &self,
        tenant: &str,
        subject_id: &str,
        records: Vec<NewRecord>,
        fence: CacheFence,
    ) -> Result<FlagsOutcome> {
        self.flags_append(tenant, subject_id, records, fence, None)
            .await
    }

    async fn append_flags_by_identity(
        &self,
        tenant: &str,
        subject_id: &str,
        records: Vec<NewRecord>,
        fence: CacheFence,
        alias: &consent_core::identity::AliasKey,
    ) -> Result<FlagsOutcome> {
        self.flags_append(tenant, subject_id, records, fence, Some(alias))
            .await
    }

    async fn list_records(&self, tenant: &str, query: &EventQuery) -> Result<Vec<StoredRecord>> {
        self.records(tenant, query).await
    }

    async fn erase_subject(
        &self,
        tenant: &str,
        subject_id: &str,
        record: NewRecord,
        fence: CacheFence,
    ) -> Result<ErasureOutcome> {
        self.erase_and_checkpoint(tenant, subject_id, record, fence, None)
            .await
    }

    async fn erase_subject_by_identity(
        &self,
        tenant: &str,
        subject_id: &str,
        record: NewRecord,
        fence: CacheFence,
        alias: &consent_core::identity::AliasKey,
    ) -> Result<ErasureOutcome> {
        self.erase_and_checkpoint(tenant, subject_id, record, fence, Some(alias))
            .await
    }

    async fn chain_key(&self, tenant: &str) -> Result<ChainKey> {
        self.key_of(tenant).await
    }

    async fn head(&self, tenant: &str) -> Result<LedgerHead> {
        let row: Option<(i64, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT revision, head_hash, erasures FROM tenants WHERE tenant_id = $1",
        )
        .bind(tenant)
        .fetch_optional(&self.reader)
        .await
        .map_err(db)?;
        match row {
            None => Ok(LedgerHead::default()),
            Some((revision, hash, erasures)) => Ok(LedgerHead {
                revision,
                hash: hash32(&hash, "head_hash")?,
                erasures,
            }),
        }
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Commit> {
        self.commits.subscribe()
    }
}

const KEY_COLUMNS: &str =
    "key_id, tenant_id, name, scopes, secret_sha256, created_at, expires_at, revoked_at";

fn key_from_row(row: &SqliteRow) -> Result<ApiKey> {
    let time = |i: usize| -> Result<Option<Timestamp>> {
        Ok(row.try_get::<Option<i64>, _>(i).map_err(db)?.map(Timestamp))
    };
    Ok(ApiKey {
        key_id: row.try_get(0).map_err(db)?,
        tenant_id: row.try_get(1).map_err(db)?,
        name: row.try_get(2).map_err(db)?,
        scopes: scopes_from_text(&row.try_get::<String, _>(3).map_err(db)?)?,
        secret_sha256: hash32(&row.try_get::<Vec<u8>, _>(4).map_err(db)?, "secret_sha256")?,
        created_at: Timestamp(row.try_get(5).map_err(db)?),
        expires_at: time(6)?,
        revoked_at: time(7)?,
    })
}

#[async_trait]
impl AccessStore for SqliteStore {
    async fn create_tenant(&self, tenant: &Tenant) -> Result<()> {
        let inserted = sqlx::query(
            "INSERT INTO tenant_accounts (tenant_id, name, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(&tenant.tenant_id)
        .bind(&tenant.name)
        .bind(tenant.created_at.as_micros())
        .execute(&self.writer)
        .await
        .map_err(db)?
        .rows_affected();
        crate::created_once(inserted, &tenant.tenant_id)
    }

    async fn get_tenant(&self, tenant_id: &str) -> Result<Option<Tenant>> {
        let row: Option<(String, String, i64)> = sqlx::query_as(
            "SELECT tenant_id, name, created_at FROM tenant_accounts WHERE tenant_id = $1",
        )
        .bind(tenant_id)
        .fetch_optional(&self.reader)
        .await
        .map_err(db)?;
        Ok(row.map(|(tenant_id, name, created_at)| Tenant {
            tenant_id,
            name,
            created_at: Timestamp(created_at),
        }))
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT tenant_id, name, created_at FROM tenant_accounts ORDER BY tenant_id",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|(tenant_id, name, created_at)| Tenant {
                tenant_id,
                name,
                created_at: Timestamp(created_at),
            })
            .collect())
    }

    async fn create_api_key(&self, key: &ApiKey) -> Result<()> {
        // The foreign key refuses a key of an unknown tenant; say so first, clearly.
        if self.get_tenant(&key.tenant_id).await?.is_none() {
            return Err(ConsentError::not_found("tenant", key.tenant_id.clone()));
        }
        sqlx::query(&format!(
            "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&key.key_id)
        .bind(&key.tenant_id)
        .bind(&key.name)
        .bind(scopes_to_text(&key.scopes))
        .bind(key.secret_sha256.as_slice())
        .bind(key.created_at.as_micros())
        .bind(key.expires_at.map(Timestamp::as_micros))
        .bind(key.revoked_at.map(Timestamp::as_micros))
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn find_api_key(&self, key_id: &str) -> Result<Option<ApiKey>> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = $1"
        ))
        .bind(key_id)
        .fetch_optional(&self.reader)
        .await
        .map_err(db)?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn list_api_keys(&self, tenant_id: &str) -> Result<Vec<ApiKey>> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, key_id"
        ))
        .bind(tenant_id)
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        rows.iter().map(key_from_row).collect()
    }

    async fn revoke_api_key(&self, tenant_id: &str, key_id: &str, at: Timestamp) -> Result<ApiKey> {
        // A second revocation keeps the first time.
        let row = sqlx::query(&format!(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $3) \
             WHERE tenant_id = $1 AND key_id = $2 RETURNING {KEY_COLUMNS}"
        ))
        .bind(tenant_id)
        .bind(key_id)
        .bind(at.as_micros())
        .fetch_optional(&self.writer)
        .await
        .map_err(db)?;
        match row {
            Some(row) => key_from_row(&row),
            None => Err(ConsentError::not_found("api key", key_id)),
        }
    }
}
