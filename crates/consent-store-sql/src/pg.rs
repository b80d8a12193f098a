//! The ledger on PostgreSQL with sqlx's native driver: `timestamptz`, `uuid`, `jsonb`,
//! arrays. Writes go through the per-tenant group commit ([`crate::group`]): a batch takes
//! the tenant row lock in one statement, inserts its events, projection rows and idempotency
//! records with one `UNNEST` statement each, and commits once. Commit wake-ups are sent
//! after the commit, coalesced, by [`crate::commits`]: never `NOTIFY` inside a write.

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
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Postgres, Row, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::commits::CommitFeed;
use crate::errors::{CACHE_NAMESPACE, cache_namespace_of, db};
use crate::group::{
    BatchBackend, BatchTx, BatchWrite, GroupCommit, KeyRecord, PendingWrite, StateRow,
};
use crate::rows::{
    CATALOG_POLICY, CATALOG_PURPOSE, CATALOG_VENDOR, CATALOG_VERSION, LockedHead,
    catalog_from_rows, event_uuid, from_json, from_pg_time, hash32, parse, pg_time, to_json,
};

/// The ledger on PostgreSQL.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    pub(crate) commits: CommitFeed,
    group: GroupCommit,
    pub(crate) keys: crate::rows::SubjectKeys,
}

/// The write side the group commit drives.
struct PgWriter {
    pool: PgPool,
    commits: CommitFeed,
    idempotency_ttl: Duration,
}

impl PgStore {
    /// A store on `pool`, announcing commits on `commits`.
    pub(crate) fn new(pool: PgPool, commits: CommitFeed, idempotency_ttl: Duration) -> PgStore {
        let writer = PgWriter {
            pool: pool.clone(),
            commits: commits.clone(),
            idempotency_ttl,
        };
        PgStore {
            pool,
            commits,
            group: GroupCommit::new(Arc::new(writer)),
            keys: crate::rows::SubjectKeys::default(),
        }
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Deletes idempotency records created before `before`, in chunks; returns how many.
    pub(crate) async fn purge_idempotency_keys(&self, before: Timestamp) -> Result<u64> {
        let mut purged = 0;
        loop {
            let n = sqlx::query(
                "DELETE FROM idempotency_keys WHERE (tenant_id, idempotency_key) IN \
                 (SELECT tenant_id, idempotency_key FROM idempotency_keys WHERE created_at < $1 LIMIT $2)",
            )
            .bind(pg_time(before)?)
            .bind(crate::PURGE_CHUNK)
            .execute(&self.pool)
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
     policy_version_id, channel, collected_at, recorded_at, expires_at, evidence::text, \
     evidence_sha256, actor_key_id, prev_hash, hash";

/// The same columns with the evidence left out: erased stays NULL, present reads as an empty
/// string (decoded as the default, empty evidence).
pub(crate) const EVENT_COLUMNS_WITHOUT_EVIDENCE: &str = "revision, event_id, subject_id, purpose_id, \
     vendor_id, decision, policy_version_id, channel, collected_at, recorded_at, expires_at, \
     CASE WHEN evidence IS NULL THEN NULL ELSE '' END, evidence_sha256, actor_key_id, \
     prev_hash, hash";

pub(crate) fn event_from_row(row: &PgRow) -> Result<StoredEvent> {
    let text = |i: usize| row.try_get::<String, _>(i).map_err(db);
    let time = |i: usize| from_pg_time(row.try_get::<OffsetDateTime, _>(i).map_err(db)?);
    let digest = |i: usize, what: &str| hash32(&row.try_get::<Vec<u8>, _>(i).map_err(db)?, what);
    let evidence_json: Option<String> = row.try_get(11).map_err(db)?;
    let evidence_erased = evidence_json.is_none();
    let evidence: Evidence = match evidence_json {
        Some(json) if !json.is_empty() => from_json(&json, "evidence")?,
        _ => Evidence::default(),
    };
    let expires_at: Option<OffsetDateTime> = row.try_get(10).map_err(db)?;
    let event = NewEvent {
        id: row.try_get::<Uuid, _>(1).map_err(db)?.to_string(),
        subject_id: text(2)?,
        purpose_id: text(3)?,
        vendor_id: text(4)?,
        decision: parse(&text(5)?, "decision")?,
        policy_version_id: text(6)?,
        channel: parse(&text(7)?, "channel")?,
        collected_at: time(8)?,
        expires_at: expires_at.map(from_pg_time).transpose()?,
        evidence,
        actor_key_id: text(13)?,
    };
    Ok(StoredEvent {
        event: ConsentEvent {
            event,
            recorded_at: time(9)?,
            revision: row.try_get(0).map_err(db)?,
            evidence_sha256: digest(12, "evidence_sha256")?,
            prev_hash: digest(14, "prev_hash")?,
            hash: digest(15, "hash")?,
        },
        evidence_erased,
    })
}

/// Columns 1..=7 of a state read (column 0 is the revision read with it); `None` for the
/// padding row of a subject without entries.
fn state_from_row(row: &PgRow) -> Result<Option<StateEntry>> {
    let Some(purpose_id) = row.try_get::<Option<String>, _>(1).map_err(db)? else {
        return Ok(None);
    };
    let text = |i: usize| row.try_get::<String, _>(i).map_err(db);
    Ok(Some(StateEntry {
        purpose_id,
        vendor_id: text(2)?,
        decision: parse(&text(3)?, "decision")?,
        event_id: row.try_get::<Uuid, _>(4).map_err(db)?.to_string(),
        policy_version_id: text(5)?,
        collected_at: from_pg_time(row.try_get(6).map_err(db)?)?,
        revision: row.try_get(7).map_err(db)?,
    }))
}

/// Reads a subject's rows from `table` with the tenant revision, in one statement (one
/// snapshot: the revision and the rows agree).
async fn subject_rows(
    pool: &PgPool,
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

/// The current states of `subjects` with the tenant revision, in one statement (`= ANY`).
async fn states_of(
    pool: &PgPool,
    tenant: &str,
    subjects: &[String],
) -> Result<(Vec<Arc<SubjectState>>, i64)> {
    let rows = sqlx::query(
        "SELECT h.revision, s.purpose_id, s.vendor_id, s.decision, s.event_id, s.policy_version_id, \
         s.collected_at, s.revision, s.subject_id, NULL AS flags, h.erasures \
         FROM (SELECT COALESCE(t.revision, 0) AS revision, COALESCE(t.erasures, 0) AS erasures \
               FROM (SELECT 1) AS one LEFT JOIN tenants t ON t.tenant_id = $1) h \
         LEFT JOIN consent_state s ON s.tenant_id = $1 AND s.subject_id = ANY($2) \
         UNION ALL SELECT COALESCE((SELECT revision FROM tenants WHERE tenant_id = $1), 0), \
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, f.subject_id, f.body, \
         COALESCE((SELECT erasures FROM tenants WHERE tenant_id = $1), 0) \
         FROM subject_flags f WHERE f.tenant_id = $1 AND f.subject_id = ANY($2)",
    )
    .bind(tenant)
    .bind(subjects)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    crate::rows::states_in_order(subjects, &rows, state_from_row)
}

#[async_trait]
impl CatalogStore for PgStore {
    async fn catalog(&self, tenant: &str, _consistency: Consistency) -> Result<Arc<Catalog>> {
        // One statement: the version and the documents come from one snapshot.
        let rows = sqlx::query(
            "SELECT $2::text, catalog_version::text FROM tenants WHERE tenant_id = $1 \
             UNION ALL SELECT $3::text, body::text FROM purposes WHERE tenant_id = $1 \
             UNION ALL SELECT $4::text, body::text FROM vendors WHERE tenant_id = $1 \
             UNION ALL SELECT $5::text, body::text FROM policy_versions WHERE tenant_id = $1",
        )
        .bind(tenant)
        .bind(CATALOG_VERSION)
        .bind(CATALOG_PURPOSE)
        .bind(CATALOG_VENDOR)
        .bind(CATALOG_POLICY)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let rows = rows
            .iter()
            .map(|r| Ok((r.try_get(0).map_err(db)?, r.try_get(1).map_err(db)?)))
            .collect::<Result<Vec<(String, String)>>>()?;
        Ok(Arc::new(catalog_from_rows(rows)?))
    }

    async fn upsert_purpose(&self, tenant: &str, purpose: &Purpose) -> Result<()> {
        let sql = "INSERT INTO purposes (tenant_id, purpose_id, body, updated_at) VALUES ($1, $2, $3::jsonb, $4) \
             ON CONFLICT (tenant_id, purpose_id) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at";
        self.write_document(sql, tenant, &purpose.id, &to_json(purpose)?)
            .await
    }

    async fn upsert_vendor(&self, tenant: &str, vendor: &Vendor) -> Result<()> {
        let sql = "INSERT INTO vendors (tenant_id, vendor_id, body, updated_at) VALUES ($1, $2, $3::jsonb, $4) \
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
            "INSERT INTO policy_versions (tenant_id, policy_version_id, published_at, body) \
             VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (tenant_id, policy_version_id) DO NOTHING",
        )
        .bind(tenant)
        .bind(&policy.id)
        .bind(pg_time(policy.published_at)?)
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
            "SELECT body::text FROM policy_versions WHERE tenant_id = $1 AND policy_version_id = $2",
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

impl PgStore {
    /// Upserts one catalogue document and bumps the catalogue version, atomically.
    async fn write_document(&self, sql: &str, tenant: &str, id: &str, body: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        // Version first: it serialises catalogue writers of the tenant on its row.
        bump_catalog_version(&mut tx, tenant).await?;
        sqlx::query(sql)
            .bind(tenant)
            .bind(id)
            .bind(body)
            .bind(pg_time(Timestamp::now())?)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }
}

/// Bumps the tenant's catalogue version inside a catalogue write (creating the tenant row),
/// and fences cached catalogues older than the new version.
async fn bump_catalog_version(tx: &mut Transaction<'static, Postgres>, tenant: &str) -> Result<()> {
    let version: i64 = sqlx::query_scalar(
        "INSERT INTO tenants (tenant_id, revision, head_hash, created_at, catalog_version) \
         VALUES ($1, 0, $2, $3, 1) \
         ON CONFLICT (tenant_id) DO UPDATE SET catalog_version = tenants.catalog_version + 1 \
         RETURNING catalog_version",
    )
    .bind(tenant)
    .bind(GENESIS.as_slice())
    .bind(pg_time(Timestamp::now())?)
    .fetch_one(&mut **tx)
    .await
    .map_err(db)?;
    raise_fence(tx, tenant, 0, version).await
}

/// Raises the tenant's cache fence (never lowers it). Call last in a transaction, after the
/// tenant row is locked: the clock row it takes is held to commit, so fence sequence numbers
/// follow commit order (and tenant row, then clock row, is the only lock order).
pub(crate) async fn raise_fence(
    tx: &mut Transaction<'static, Postgres>,
    tenant: &str,
    revision: Revision,
    catalog_version: i64,
) -> Result<()> {
    sqlx::query(
        "WITH clock AS (UPDATE cache_fence_clock SET seq = seq + 1 WHERE id = 1 RETURNING seq) \
         INSERT INTO cache_fences (tenant_id, revision, catalog_version, seq) \
         SELECT $1, $2, $3, seq FROM clock \
         ON CONFLICT (tenant_id) DO UPDATE SET \
         revision = GREATEST(excluded.revision, cache_fences.revision), \
         catalog_version = GREATEST(excluded.catalog_version, cache_fences.catalog_version), \
         seq = excluded.seq",
    )
    .bind(tenant)
    .bind(revision)
    .bind(catalog_version)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

#[async_trait]
impl BatchBackend for PgWriter {
    async fn begin(&self) -> Result<Box<dyn BatchTx>> {
        Ok(Box::new(PgTx(self.pool.begin().await.map_err(db)?)))
    }

    fn idempotency_ttl(&self) -> Duration {
        self.idempotency_ttl
    }

    fn committed(&self, commit: Commit) {
        self.commits.publish(commit);
    }
}

struct PgTx(Transaction<'static, Postgres>);

#[async_trait]
impl BatchTx for PgTx {
    async fn lock_head(&mut self, tenant: &str, now: Timestamp) -> Result<LockedHead> {
        // `DO UPDATE` locks the row whether it was just inserted or already there.
        let row = sqlx::query(crate::rows::LOCK_HEAD)
            .bind(tenant)
            .bind(GENESIS.as_slice())
            .bind(pg_time(now)?)
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
        let rows = sqlx::query(
            "SELECT subject_id FROM subject_flags WHERE tenant_id = $1 AND subject_id = ANY($2)",
        )
        .bind(tenant)
        .bind(erased_ids)
        .fetch_all(&mut *self.0)
        .await
        .map_err(db)?;
        rows.iter().map(|row| row.try_get(0).map_err(db)).collect()
    }

    async fn merged_among(
        &mut self,
        tenant: &str,
        subjects: &[String],
    ) -> Result<HashMap<String, String>> {
        let rows = sqlx::query(
            "SELECT subject_id, merged_into FROM merged_subjects \
             WHERE tenant_id = $1 AND subject_id = ANY($2)",
        )
        .bind(tenant)
        .bind(subjects)
        .fetch_all(&mut *self.0)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|row| Ok((row.try_get(0).map_err(db)?, row.try_get(1).map_err(db)?)))
            .collect()
    }

    async fn links_among(
        &mut self,
        tenant: &str,
        aliases: &[consent_core::identity::AliasKey],
    ) -> Result<HashMap<consent_core::identity::AliasKey, String>> {
        let keys: Vec<Vec<u8>> = aliases.iter().map(|a| a.0.to_vec()).collect();
        let rows = sqlx::query(
            "SELECT alias_key, subject_id FROM subject_identities \
             WHERE tenant_id = $1 AND alias_key = ANY($2)",
        )
        .bind(tenant)
        .bind(keys)
        .fetch_all(&mut *self.0)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|row| {
                let alias: Vec<u8> = row.try_get(0).map_err(db)?;
                Ok((
                    consent_core::identity::AliasKey(hash32(
                        &alias,
                        "subject_identities.alias_key",
                    )?),
                    row.try_get(1).map_err(db)?,
                ))
            })
            .collect()
    }

    async fn find_keys(
        &mut self,
        tenant: &str,
        keys: &[&str],
        live_after: Timestamp,
    ) -> Result<HashMap<String, KeyRecord>> {
        let rows = sqlx::query(
            "SELECT idempotency_key, fingerprint, first_revision, last_revision FROM idempotency_keys \
             WHERE tenant_id = $1 AND idempotency_key = ANY($2) AND created_at > $3",
        )
        .bind(tenant)
        .bind(keys)
        .bind(pg_time(live_after)?)
        .fetch_all(&mut *self.0)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get(0).map_err(db)?,
                    KeyRecord {
                        fingerprint: hash32(
                            &row.try_get::<Vec<u8>, _>(1).map_err(db)?,
                            "fingerprint",
                        )?,
                        first_revision: row.try_get(2).map_err(db)?,
                        last_revision: row.try_get(3).map_err(db)?,
                    },
                ))
            })
            .collect()
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
        let mut e = EventColumns::default();
        for event in batch.events {
            e.push(event)?;
        }
        let mut st = StateColumns::default();
        for row in batch.states {
            st.push(row)?;
        }
        let keys = batch.keys;
        // One statement, so a batch costs one round trip after its lock however many tables
        // it writes. A projection row moves only if the new choice supersedes the stored one
        // (later collected; at the same time more restrictive; then later written:
        // `StateEntry::supersedes`). An idempotency conflict is an expired record of the same
        // key (live ones were found and replayed): it is replaced.
        sqlx::query(
            "WITH events AS (\
               INSERT INTO consent_events (tenant_id, revision, event_id, subject_id, purpose_id, \
               vendor_id, decision, policy_version_id, channel, collected_at, recorded_at, \
               expires_at, evidence, evidence_sha256, actor_key_id, prev_hash, hash) \
               SELECT $1, r, id, s, p, v, d, pv, c, ca, ra, ea, ev::jsonb, es, ak, ph, h FROM UNNEST(\
               $2::bigint[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], \
               $8::text[], $9::text[], $10::timestamptz[], $11::timestamptz[], \
               $12::timestamptz[], $13::text[], $14::bytea[], $15::text[], $16::bytea[], \
               $17::bytea[]) AS t(r, id, s, p, v, d, pv, c, ca, ra, ea, ev, es, ak, ph, h)), \
             states AS (\
               INSERT INTO consent_state (tenant_id, subject_id, purpose_id, vendor_id, decision, \
               event_id, policy_version_id, collected_at, revision) \
               SELECT $1, s, p, v, d, e, pv, ca, r FROM UNNEST($18::text[], $19::text[], \
               $20::text[], $21::text[], $22::uuid[], $23::text[], $24::timestamptz[], \
               $25::bigint[]) AS t(s, p, v, d, e, pv, ca, r) \
               ON CONFLICT (tenant_id, subject_id, purpose_id, vendor_id) DO UPDATE SET \
               decision = excluded.decision, event_id = excluded.event_id, \
               policy_version_id = excluded.policy_version_id, \
               collected_at = excluded.collected_at, revision = excluded.revision \
               WHERE (excluded.collected_at, \
                      CASE WHEN excluded.decision = 'granted' THEN 0 ELSE 1 END, excluded.revision) \
                   > (consent_state.collected_at, \
                      CASE WHEN consent_state.decision = 'granted' THEN 0 ELSE 1 END, \
                      consent_state.revision)), \
             keys AS (\
               INSERT INTO idempotency_keys (tenant_id, idempotency_key, fingerprint, \
               first_revision, last_revision, created_at) \
               SELECT $1, k, f, a, b, $30 FROM UNNEST($26::text[], $27::bytea[], $28::bigint[], \
               $29::bigint[]) AS t(k, f, a, b) \
               ON CONFLICT (tenant_id, idempotency_key) DO UPDATE SET \
               fingerprint = excluded.fingerprint, first_revision = excluded.first_revision, \
               last_revision = excluded.last_revision, created_at = excluded.created_at) \
             UPDATE tenants SET revision = $31, head_hash = $32 WHERE tenant_id = $1",
        )
        .bind(tenant)
        .bind(e.revision)
        .bind(e.id)
        .bind(e.subject)
        .bind(e.purpose)
        .bind(e.vendor)
        .bind(e.decision)
        .bind(e.policy)
        .bind(e.channel)
        .bind(e.collected_at)
        .bind(e.recorded_at)
        .bind(e.expires_at)
        .bind(e.evidence)
        .bind(e.evidence_sha256)
        .bind(e.actor)
        .bind(e.prev_hash)
        .bind(e.hash)
        .bind(st.subject)
        .bind(st.purpose)
        .bind(st.vendor)
        .bind(st.decision)
        .bind(st.event)
        .bind(st.policy)
        .bind(st.collected_at)
        .bind(st.revision)
        .bind(keys.iter().map(|k| k.key.as_str()).collect::<Vec<_>>())
        .bind(
            keys.iter()
                .map(|k| k.record.fingerprint.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(keys.iter().map(|k| k.record.first_revision).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.record.last_revision).collect::<Vec<_>>())
        .bind(pg_time(batch.now)?)
        .bind(batch.head.revision)
        .bind(batch.head.hash.as_slice())
        .execute(&mut *self.0)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn cache_namespace(&mut self) -> Result<String> {
        // FOR SHARE: a rotation's UPDATE waits for this transaction to commit.
        cache_namespace_of(
            sqlx::query_scalar(&format!("{CACHE_NAMESPACE} FOR SHARE"))
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

/// Projection rows as one array per column, for `UNNEST`.
#[derive(Default)]
struct StateColumns<'a> {
    subject: Vec<&'a str>,
    purpose: Vec<&'a str>,
    vendor: Vec<&'a str>,
    decision: Vec<&'static str>,
    event: Vec<Uuid>,
    policy: Vec<&'a str>,
    collected_at: Vec<OffsetDateTime>,
    revision: Vec<i64>,
}

impl<'a> StateColumns<'a> {
    fn push(&mut self, row: &'a StateRow) -> Result<()> {
        let e = &row.entry;
        self.subject.push(&row.subject_id);
        self.purpose.push(&e.purpose_id);
        self.vendor.push(&e.vendor_id);
        self.decision.push(e.decision.as_str());
        self.event.push(event_uuid(&e.event_id)?);
        self.policy.push(&e.policy_version_id);
        self.collected_at.push(pg_time(e.collected_at)?);
        self.revision.push(e.revision);
        Ok(())
    }
}

/// Events as one array per column, for `UNNEST`.
#[derive(Default)]
struct EventColumns<'a> {
    revision: Vec<i64>,
    id: Vec<Uuid>,
    subject: Vec<&'a str>,
    purpose: Vec<&'a str>,
    vendor: Vec<&'a str>,
    decision: Vec<&'static str>,
    policy: Vec<&'a str>,
    channel: Vec<&'static str>,
    collected_at: Vec<OffsetDateTime>,
    recorded_at: Vec<OffsetDateTime>,
    expires_at: Vec<Option<OffsetDateTime>>,
    evidence: Vec<String>,
    evidence_sha256: Vec<&'a [u8]>,
    actor: Vec<&'a str>,
    prev_hash: Vec<&'a [u8]>,
    hash: Vec<&'a [u8]>,
}

impl<'a> EventColumns<'a> {
    fn push(&mut self, e: &'a ConsentEvent) -> Result<()> {
        let n = &e.event;
        self.revision.push(e.revision);
        self.id.push(event_uuid(&n.id)?);
        self.subject.push(&n.subject_id);
        self.purpose.push(&n.purpose_id);
        self.vendor.push(&n.vendor_id);
        self.decision.push(n.decision.as_str());
        self.policy.push(&n.policy_version_id);
        self.channel.push(n.channel.as_str());
        self.collected_at.push(pg_time(n.collected_at)?);
        self.recorded_at.push(pg_time(e.recorded_at)?);
        self.expires_at.push(n.expires_at.map(pg_time).transpose()?);
        self.evidence.push(to_json(&n.evidence)?);
        self.evidence_sha256.push(&e.evidence_sha256);
        self.actor.push(&n.actor_key_id);
        self.prev_hash.push(&e.prev_hash);
        self.hash.push(&e.hash);
        Ok(())
    }
}

/// A write for the group commit, its event ids checked (the column is a UUID).
fn checked_write(
    events: &[NewEvent],
    idempotency: Option<&consent_core::commands::Idempotency>,
    fence: CacheFence,
    named_by: Option<consent_core::identity::AliasKey>,
) -> Result<PendingWrite> {
    for event in events {
        event_uuid(&event.id)?;
    }
    Ok(PendingWrite::of(events, idempotency, fence, named_by))
}

#[async_trait]
impl LedgerStore for PgStore {
    async fn append(
        &self,
        tenant: &str,
        events: &[NewEvent],
        idempotency: Option<&consent_core::commands::Idempotency>,
        fence: CacheFence,
    ) -> Result<AppendOutcome> {
        let write = checked_write(events, idempotency, fence, None)?;
        self.group.append(tenant, write).await
    }

    async fn append_by_identity(
        &self,
        tenant: &str,
        events: &[NewEvent],
        idempotency: Option<&consent_core::commands::Idempotency>,
        fence: CacheFence,
        alias: &consent_core::identity::AliasKey,
    ) -> Result<AppendOutcome> {
        let write = checked_write(events, idempotency, fence, Some(*alias))?;
        self.group.append(tenant, write).await
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

    async fn cache_namespace(&self) -> Result<String> {
        cache_namespace_of(
            sqlx::query_scalar(CACHE_NAMESPACE)
                .fetch_optional(&self.pool)
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
                    &self.pool,
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
        let (mut states, erasures) = states_of(&self.pool, tenant, subjects).await?;
        // Only a tenant that erased someone needs to look for erased markers.
        if erasures > 0 {
            let erased_ids = crate::rows::erased_ids(&self.key_of(tenant).await?, subjects);
            let (markers, _) = states_of(&self.pool, tenant, &erased_ids).await?;
            crate::rows::apply_markers(&mut states, &markers);
        }
        Ok(states)
    }

    async fn subject_history(&self, tenant: &str, subject_id: &str) -> Result<SubjectState> {
        let erased_id = self.key_of(tenant).await?.erased_subject_id(subject_id);
        subject_rows(
            &self.pool,
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
        self.subject_erase(tenant, subject_id, record, fence, None)
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
        self.subject_erase(tenant, subject_id, record, fence, Some(alias))
            .await
    }

    async fn chain_key(&self, tenant: &str) -> Result<ChainKey> {
        self.key_of(tenant).await
    }

    async fn head(&self, tenant: &str) -> Result<LedgerHead> {
        let row =
            sqlx::query("SELECT revision, head_hash, erasures FROM tenants WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        match row {
            None => Ok(LedgerHead::default()),
            Some(row) => Ok(LedgerHead {
                revision: row.try_get(0).map_err(db)?,
                hash: hash32(&row.try_get::<Vec<u8>, _>(1).map_err(db)?, "head_hash")?,
                erasures: row.try_get(2).map_err(db)?,
            }),
        }
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Commit> {
        self.commits.subscribe()
    }
}

const KEY_COLUMNS: &str =
    "key_id, tenant_id, name, scopes, secret_sha256, created_at, expires_at, revoked_at";

fn key_from_row(row: &PgRow) -> Result<ApiKey> {
    let time = |i: usize| -> Result<Option<Timestamp>> {
        row.try_get::<Option<OffsetDateTime>, _>(i)
            .map_err(db)?
            .map(from_pg_time)
            .transpose()
    };
    Ok(ApiKey {
        key_id: row.try_get(0).map_err(db)?,
        tenant_id: row.try_get(1).map_err(db)?,
        name: row.try_get(2).map_err(db)?,
        scopes: scopes_from_text(&row.try_get::<String, _>(3).map_err(db)?)?,
        secret_sha256: hash32(&row.try_get::<Vec<u8>, _>(4).map_err(db)?, "secret_sha256")?,
        created_at: from_pg_time(row.try_get(5).map_err(db)?)?,
        expires_at: time(6)?,
        revoked_at: time(7)?,
    })
}

fn tenant_from_row(row: &PgRow) -> Result<Tenant> {
    Ok(Tenant {
        tenant_id: row.try_get(0).map_err(db)?,
        name: row.try_get(1).map_err(db)?,
        created_at: from_pg_time(row.try_get(2).map_err(db)?)?,
    })
}

#[async_trait]
impl AccessStore for PgStore {
    async fn create_tenant(&self, tenant: &Tenant) -> Result<()> {
        let inserted = sqlx::query(
            "INSERT INTO tenant_accounts (tenant_id, name, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(&tenant.tenant_id)
        .bind(&tenant.name)
        .bind(pg_time(tenant.created_at)?)
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected();
        crate::created_once(inserted, &tenant.tenant_id)
    }

    async fn get_tenant(&self, tenant_id: &str) -> Result<Option<Tenant>> {
        let row = sqlx::query(
            "SELECT tenant_id, name, created_at FROM tenant_accounts WHERE tenant_id = $1",
        )
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(tenant_from_row).transpose()
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        let rows = sqlx::query(
            "SELECT tenant_id, name, created_at FROM tenant_accounts ORDER BY tenant_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(tenant_from_row).collect()
    }

    async fn create_api_key(&self, key: &ApiKey) -> Result<()> {
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
        .bind(pg_time(key.created_at)?)
        .bind(key.expires_at.map(pg_time).transpose()?)
        .bind(key.revoked_at.map(pg_time).transpose()?)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn find_api_key(&self, key_id: &str) -> Result<Option<ApiKey>> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = $1"
        ))
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn list_api_keys(&self, tenant_id: &str) -> Result<Vec<ApiKey>> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, key_id"
        ))
        .bind(tenant_id)
        .fetch_all(&self.pool)
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
        .bind(pg_time(at)?)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        match row {
            Some(row) => key_from_row(&row),
            None => Err(ConsentError::not_found("api key", key_id)),
        }
    }
}
