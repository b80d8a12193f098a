//! Retention on SQL (`consent_store::RetentionStore`) and the ledger records of both
//! backends. The statements are the same on SQLite and PostgreSQL but for how times are
//! bound (INTEGER microseconds or `timestamptz`) and how a period is added to a time, so the
//! implementation is written once, as a macro expanded for each backend with those two
//! differences.
//!
//! Retention writes of a tenant serialise on a lock of their own (PostgreSQL: a transaction
//! advisory lock per tenant; SQLite has one writer), so a rule change and an item
//! registration cannot race past each other's `delete_after`. An attestation also locks the
//! ledger head like an append (the group commit), as its record takes the next revision.

use consent_core::retention::HoldScope;

/// The stored name of a hold's scope and its id.
pub(crate) fn hold_scope_parts(scope: &HoldScope) -> (&'static str, &str) {
    match scope {
        HoldScope::Subject(id) => ("subject", id),
        HoldScope::Item(id) => ("item", id),
        HoldScope::Campaign(id) => ("campaign", id),
    }
}

/// A hold's scope from its stored parts.
pub(crate) fn hold_scope(kind: &str, id: String) -> consent_core::Result<HoldScope> {
    match kind {
        "subject" => Ok(HoldScope::Subject(id)),
        "item" => Ok(HoldScope::Item(id)),
        "campaign" => Ok(HoldScope::Campaign(id)),
        other => Err(crate::errors::corrupt(
            "legal_holds.scope",
            format!("unknown scope `{other}`"),
        )),
    }
}

/// The message of a registration for a category no rule covers.
pub(crate) fn no_rule(category: &str) -> consent_core::ConsentError {
    consent_core::ConsentError::FailedPrecondition(format!(
        "no retention rule covers data category `{category}`: the operator adds [retention.{category}] to the catalogue file (consentd catalog apply), or the tenant sets one with SetRetentionRule"
    ))
}

/// An SQL condition: a hold in force at the time bound as `now` (e.g. `$3`) covers data
/// item `i`.
pub(crate) fn held(now: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM legal_holds h WHERE h.tenant_id = i.tenant_id \
         AND h.released_at IS NULL AND (h.until IS NULL OR h.until > {now}) \
         AND ((h.scope = 'subject' AND h.scope_id = i.subject_id) \
           OR (h.scope = 'item' AND h.scope_id = i.item_id) \
           OR (h.scope = 'campaign' AND h.scope_id = i.campaign_id AND i.campaign_id <> '')))"
    )
}

pub(crate) const ITEM_COLUMNS: &str = "item_id, subject_id, data_category, campaign_id, created_at, anchor_at, \
     delete_after, deleted_at, attestation_revision, registered_at, erased_at";
pub(crate) const HOLD_COLUMNS: &str =
    "hold_id, scope, scope_id, reason, until, created_at, released_at, actor_key_id";
pub(crate) const RECORD_COLUMNS: &str = "revision, record_id, kind, subject_id, purpose_id, at, recorded_at, detail, \
     detail_sha256, actor_key_id, prev_hash, hash";

/// Implements `RetentionStore` for `$store` and gives it `records(...)` for `list_records`.
/// `$db`: the sqlx database; `writer`/`reader`: the store's pool accessors; `time`: how a
/// time is bound; `to_db`/`from_db`: conversions; `period`: SQL that turns a bound period in
/// microseconds (`{}`) into something addable to a time; `lock`: the statement that takes
/// the tenant's retention lock (`$1` is the tenant), if the backend needs one; the
/// `event_*` items: the backend's event columns (with and without evidence) and row reader.
macro_rules! sql_retention_store {
    (
        $store:ty, $db:ty,
        writer = $writer:ident, reader = $reader:ident,
        time = $time:ty, to_db = $to_db:path, from_db = $from_db:path,
        period = $period:literal, lock = $lock:expr,
        namespace = $namespace:expr, raise_fence = $raise_fence:path,
        event_columns = $event_columns:path, event_columns_lean = $event_columns_lean:path,
        event_from_row = $event_from_row:path $(,)?
    ) => {
        use async_trait::async_trait;
        use consent_core::chain::{ChainKey, GENESIS, seal_record};
        use consent_core::retention::{
            DataItem, HoldScope, LegalHold, RetentionDefault, RetentionRule, delete_after,
        };
        use consent_core::{
            ConsentError, LedgerRecord, NewRecord, RecordKind, Result, SubjectFlags, Timestamp,
        };
        use consent_store::{CacheFence, ErasureOutcome, FlagsOutcome, NamespaceTag};
        use $crate::rows::LockedHead;
        use consent_store::{
            Attested, Commit, DueQuery, EventQuery, ExpiredGrant, Registered, RetentionCounts,
            RetentionRules, RetentionStore, StoredHold, StoredItem, StoredRecord, SweepMark,
        };
        use sqlx::{Row, Transaction};

        use $crate::errors::db;
        use $crate::retention::{
            HOLD_COLUMNS, ITEM_COLUMNS, held, RECORD_COLUMNS, hold_scope, hold_scope_parts,
            no_rule,
        };
        use $crate::rows::{from_json, hash32, parse, to_json};

        type Tx = Transaction<'static, $db>;
        type Conn = <$db as sqlx::Database>::Connection;

        fn time(t: Timestamp) -> Result<$time> {
            $to_db(t)
        }

        fn opt_time(t: Option<Timestamp>) -> Result<Option<$time>> {
            t.map(time).transpose()
        }

        fn read_time(row: &<$db as sqlx::Database>::Row, i: usize) -> Result<Timestamp> {
            $from_db(row.try_get::<$time, _>(i).map_err(db)?)
        }

        fn read_opt_time(
            row: &<$db as sqlx::Database>::Row,
            i: usize,
        ) -> Result<Option<Timestamp>> {
            row.try_get::<Option<$time>, _>(i)
                .map_err(db)?
                .map($from_db)
                .transpose()
        }

        fn item_from_row(row: &<$db as sqlx::Database>::Row) -> Result<StoredItem> {
            Ok(StoredItem {
                item: DataItem {
                    item_id: row.try_get(0).map_err(db)?,
                    subject_id: row.try_get(1).map_err(db)?,
                    data_category: row.try_get(2).map_err(db)?,
                    campaign_id: row.try_get(3).map_err(db)?,
                    created_at: read_time(row, 4)?,
                    anchor_at: read_opt_time(row, 5)?,
                    deleted_at: read_opt_time(row, 7)?,
                },
                delete_after: read_opt_time(row, 6)?,
                attestation_revision: row.try_get(8).map_err(db)?,
                registered_at: read_time(row, 9)?,
                erased_at: read_opt_time(row, 10)?,
            })
        }

        fn hold_from_row(row: &<$db as sqlx::Database>::Row) -> Result<StoredHold> {
            Ok(StoredHold {
                hold_id: row.try_get(0).map_err(db)?,
                hold: LegalHold {
                    scope: hold_scope(
                        &row.try_get::<String, _>(1).map_err(db)?,
                        row.try_get(2).map_err(db)?,
                    )?,
                    reason: row.try_get(3).map_err(db)?,
                    until: read_opt_time(row, 4)?,
                },
                created_at: read_time(row, 5)?,
                released_at: read_opt_time(row, 6)?,
                actor_key_id: row.try_get(7).map_err(db)?,
            })
        }

        fn record_from_row(row: &<$db as sqlx::Database>::Row) -> Result<StoredRecord> {
            let detail: Option<String> = row.try_get(7).map_err(db)?;
            Ok(StoredRecord {
                detail_erased: detail.is_none(),
                record: LedgerRecord {
                    revision: row.try_get(0).map_err(db)?,
                    record: NewRecord {
                        id: row.try_get(1).map_err(db)?,
                        kind: parse(
                            &row.try_get::<String, _>(2).map_err(db)?,
                            "ledger_records.kind",
                        )?,
                        subject_id: row.try_get(3).map_err(db)?,
                        purpose_id: row.try_get(4).map_err(db)?,
                        at: read_time(row, 5)?,
                        detail: match detail.as_deref() {
                            Some(text) if !text.is_empty() => {
                                from_json(text, "ledger_records.detail")?
                            }
                            _ => Default::default(),
                        },
                        actor_key_id: row.try_get(9).map_err(db)?,
                    },
                    recorded_at: read_time(row, 6)?,
                    detail_sha256: hash32(
                        &row.try_get::<Vec<u8>, _>(8).map_err(db)?,
                        "ledger_records.detail_sha256",
                    )?,
                    prev_hash: hash32(
                        &row.try_get::<Vec<u8>, _>(10).map_err(db)?,
                        "ledger_records.prev_hash",
                    )?,
                    hash: hash32(
                        &row.try_get::<Vec<u8>, _>(11).map_err(db)?,
                        "ledger_records.hash",
                    )?,
                },
            })
        }

        async fn lock_retention(tx: &mut Tx, tenant: &str) -> Result<()> {
            let lock: Option<&str> = $lock;
            if let Some(sql) = lock {
                sqlx::query(sql)
                    .bind(tenant)
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?;
            }
            Ok(())
        }

        /// The JSON bodies `sql` selects for `tenant` (`$1`), decoded.
        async fn bodies<T: serde::de::DeserializeOwned>(
            conn: &mut Conn,
            sql: &str,
            tenant: &str,
            what: &str,
        ) -> Result<Vec<T>> {
            sqlx::query(sql)
                .bind(tenant)
                .fetch_all(&mut *conn)
                .await
                .map_err(db)?
                .iter()
                .map(|r| from_json::<T>(&r.try_get::<String, _>(0).map_err(db)?, what))
                .collect()
        }

        async fn load_rules(conn: &mut Conn, tenant: &str) -> Result<RetentionRules> {
            Ok(RetentionRules {
                defaults: bodies(
                    conn,
                    "SELECT body FROM retention_defaults WHERE tenant_id = $1 ORDER BY data_category",
                    tenant,
                    "retention_defaults.body",
                )
                .await?,
                rules: bodies(
                    conn,
                    "SELECT body FROM retention_rules WHERE tenant_id = $1 \
                     ORDER BY data_category, campaign_id",
                    tenant,
                    "retention_rules.body",
                )
                .await?,
            })
        }

        /// Which items a rule change moves.
        enum Governed<'a> {
            /// A campaign rule: the campaign's items.
            Campaign(&'a str),
            /// A tenant rule: items of campaigns without a rule of their own.
            Tenant,
            /// A default: items no tenant or campaign rule covers.
            Default,
        }

        /// Moves `delete_after` of the (not deleted) items of `rule`'s category it governs.
        async fn recompute(
            tx: &mut Tx,
            tenant: &str,
            rule: &RetentionRule,
            governed: Governed<'_>,
        ) -> Result<()> {
            let scope = match governed {
                Governed::Campaign(_) => "AND campaign_id = $5",
                Governed::Tenant => {
                    "AND campaign_id NOT IN (SELECT r.campaign_id FROM retention_rules r \
                     WHERE r.tenant_id = $1 AND r.data_category = $2 AND r.campaign_id <> '')"
                }
                Governed::Default => {
                    "AND NOT EXISTS (SELECT 1 FROM retention_rules r WHERE r.tenant_id = $1 \
                     AND r.data_category = $2 \
                     AND (r.campaign_id = '' OR r.campaign_id = data_items.campaign_id))"
                }
            };
            let period = format!($period, "$4");
            let sql = format!(
                "UPDATE data_items SET delete_after = CASE WHEN $3 = 'created' \
                 THEN created_at + {period} ELSE anchor_at + {period} END \
                 WHERE tenant_id = $1 AND data_category = $2 AND deleted_at IS NULL {scope}"
            );
            let micros = rule
                .period_secs
                .saturating_mul(Timestamp::MICROS_PER_SECOND);
            let mut query = sqlx::query(&sql)
                .bind(tenant)
                .bind(rule.data_category.as_str())
                .bind(rule.anchor.as_str())
                .bind(micros);
            if let Governed::Campaign(campaign) = governed {
                query = query.bind(campaign);
            }
            query.execute(&mut **tx).await.map_err(db)?;
            let rules = load_rules(&mut **tx, tenant).await?;
            erasures_bring_forward(tx, tenant, &rules, &rule.data_category).await
        }

        async fn item_in(tx: &mut Tx, tenant: &str, item_id: &str) -> Result<Option<StoredItem>> {
            let sql =
                format!("SELECT {ITEM_COLUMNS} FROM data_items WHERE tenant_id = $1 AND item_id = $2");
            sqlx::query(&sql)
                .bind(tenant)
                .bind(item_id)
                .fetch_optional(&mut **tx)
                .await
                .map_err(db)?
                .as_ref()
                .map(item_from_row)
                .transpose()
        }

        /// Locks the tenant's head row (creating it on the tenant's first write), as the group
        /// commit does, and returns it with the tenant's key.
        async fn lock_head(tx: &mut Tx, tenant: &str, now: Timestamp) -> Result<LockedHead> {
            let head = sqlx::query(crate::rows::LOCK_HEAD)
                .bind(tenant)
                .bind(GENESIS.as_slice())
                .bind(time(now)?)
                .bind(crate::rows::new_subject_key()?.as_slice())
                .fetch_one(&mut **tx)
                .await
                .map_err(db)?;
            crate::rows::locked_head(&head)
        }

        /// Whether the subject whose erased id is `erased_id` was erased (its marker is there).
        async fn has_marker(tx: &mut Tx, tenant: &str, erased_id: &str) -> Result<bool> {
            let found: Option<i64> = sqlx::query_scalar(
                "SELECT revision FROM subject_flags WHERE tenant_id = $1 AND subject_id = $2",
            )
            .bind(tenant)
            .bind(erased_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db)?;
            Ok(found.is_some())
        }

        /// Whether `subject_id` was erased, under the head `locked` (no lookup while the
        /// tenant erased none).
        async fn erased_under(
            tx: &mut Tx,
            tenant: &str,
            locked: &LockedHead,
            subject_id: &str,
        ) -> Result<bool> {
            match locked.erased_lookup(subject_id) {
                Some(id) => has_marker(tx, tenant, &id).await,
                None => Ok(false),
            }
        }

        fn erased_error(subject_id: &str) -> ConsentError {
            ConsentError::FailedPrecondition(format!(
                "subject_id `{subject_id}` was erased (GDPR Art. 17): the ledger keeps nothing about it and refuses new writes for it"
            ))
        }

        /// Stores a subject's flags as of `revision`.
        async fn write_flags(
            tx: &mut Tx,
            tenant: &str,
            subject_id: &str,
            flags: &SubjectFlags,
            revision: i64,
        ) -> Result<()> {
            sqlx::query(
                "INSERT INTO subject_flags (tenant_id, subject_id, body, revision) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, subject_id) \
                 DO UPDATE SET body = excluded.body, revision = excluded.revision",
            )
            .bind(tenant)
            .bind(subject_id)
            .bind(to_json(flags)?)
            .bind(revision)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
            Ok(())
        }

        /// A subject's flags as stored in `tx` (none stored: no flag set).
        async fn flags_in(tx: &mut Tx, tenant: &str, subject_id: &str) -> Result<SubjectFlags> {
            let stored: Option<String> = sqlx::query_scalar(
                "SELECT body FROM subject_flags WHERE tenant_id = $1 AND subject_id = $2",
            )
            .bind(tenant)
            .bind(subject_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db)?;
            match stored {
                Some(body) => from_json(&body, "subject_flags.body"),
                None => Ok(SubjectFlags::default()),
            }
        }

        /// The root of the group a merge closed a subject into: `$1` tenant, `$2` subject.
        const MERGE_ROOT: &str =
            "SELECT merged_into FROM merged_subjects WHERE tenant_id = $1 AND subject_id = $2";

        /// The subject `subject_id` was merged into, if a merge closed it (looked up only
        /// when the tenant merged any).
        /// For a write named by the identity `named_by`: `Aborted` unless the identity still
        /// stands for `subject_id` under the locked head (linked to it, or to none for its
        /// implicit subject, which no merge closed): a link, unlink or merge since it was
        /// resolved makes the caller resolve it again.
        async fn refuse_moved(
            tx: &mut Tx,
            tenant: &str,
            locked: &LockedHead,
            named_by: Option<&consent_core::identity::AliasKey>,
            subject_id: &str,
        ) -> Result<()> {
            let Some(alias) = named_by else {
                return Ok(());
            };
            let linked: Option<String> = sqlx::query_scalar(
                "SELECT subject_id FROM subject_identities \
                 WHERE tenant_id = $1 AND alias_key = $2",
            )
            .bind(tenant)
            .bind(alias.0.as_slice())
            .fetch_optional(&mut **tx)
            .await
            .map_err(db)?;
            let stands_for =
                linked.unwrap_or_else(|| consent_core::identity::implicit_subject_id(alias));
            if stands_for != subject_id || closed_into(tx, tenant, locked, subject_id).await?.is_some()
            {
                return Err(crate::errors::identity_moved());
            }
            Ok(())
        }

        async fn closed_into(
            tx: &mut Tx,
            tenant: &str,
            locked: &LockedHead,
            subject_id: &str,
        ) -> Result<Option<String>> {
            if locked.merges == 0 {
                return Ok(None);
            }
            sqlx::query_scalar(MERGE_ROOT)
            .bind(tenant)
            .bind(subject_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db)
        }

        /// `FailedPrecondition` if `subject_id` was erased or closed by a merge: a write
        /// naming it is refused (call under the head lock).
        async fn refuse_gone(
            tx: &mut Tx,
            tenant: &str,
            locked: &LockedHead,
            subject_id: &str,
        ) -> Result<()> {
            if erased_under(tx, tenant, locked, subject_id).await? {
                return Err(erased_error(subject_id));
            }
            if let Some(into) = closed_into(tx, tenant, locked, subject_id).await? {
                return Err(crate::errors::merged_error(subject_id, &into));
            }
            Ok(())
        }

        /// `FailedPrecondition` if `subject_id` was erased, for writes that hold the tenant's
        /// retention lock (which an erasure takes too) but not its head.
        async fn refuse_erased(tx: &mut Tx, tenant: &str, subject_id: &str) -> Result<()> {
            let row = sqlx::query(
                "SELECT subject_key, keyed_from, erasures FROM tenants WHERE tenant_id = $1",
            )
            .bind(tenant)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db)?;
            let Some(row) = row else { return Ok(()) };
            let erasures: i64 = row.try_get(2).map_err(db)?;
            let key = crate::rows::chain_key_from(&row, 0)?;
            match key.erased_subject_id(subject_id).filter(|_| erasures > 0) {
                Some(id) if has_marker(tx, tenant, &id).await? => Err(erased_error(subject_id)),
                _ => Ok(()),
            }
        }

        /// Appends records after the tenant's head (locked: they take the next revisions) and
        /// moves the head, in `tx`. Records of subjects erased meanwhile are left out (a
        /// sweep that read a grant before its subject's erasure).
        async fn append_in(
            tx: &mut Tx,
            tenant: &str,
            records: Vec<NewRecord>,
            now: Timestamp,
        ) -> Result<Vec<LedgerRecord>> {
            if records.is_empty() {
                return Ok(Vec::new());
            }
            let locked = lock_head(tx, tenant, now).await?;
            let mut kept = Vec::with_capacity(records.len());
            for record in records {
                if !erased_under(tx, tenant, &locked, &record.subject_id).await? {
                    kept.push(record);
                }
            }
            append_after(tx, tenant, &locked, kept, now).await
        }

        /// Appends records after the head locked in `tx` and moves the head.
        async fn append_after(
            tx: &mut Tx,
            tenant: &str,
            locked: &LockedHead,
            records: Vec<NewRecord>,
            now: Timestamp,
        ) -> Result<Vec<LedgerRecord>> {
            if records.is_empty() {
                return Ok(Vec::new());
            }
            let mut revision = locked.head.revision;
            let mut prev = locked.head.hash;
            let sql = format!(
                "INSERT INTO ledger_records (tenant_id, {RECORD_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
            );
            let mut sealed_all = Vec::with_capacity(records.len());
            for record in records {
                revision += 1;
                let sealed = seal_record(tenant, &locked.key, record, revision, now, prev);
                prev = sealed.hash;
                let r = &sealed.record;
                sqlx::query(&sql)
                    .bind(tenant)
                    .bind(sealed.revision)
                    .bind(r.id.as_str())
                    .bind(r.kind.as_str())
                    .bind(r.subject_id.as_str())
                    .bind(r.purpose_id.as_str())
                    .bind(time(r.at)?)
                    .bind(time(sealed.recorded_at)?)
                    .bind(to_json(&r.detail)?)
                    .bind(sealed.detail_sha256.as_slice())
                    .bind(r.actor_key_id.as_str())
                    .bind(sealed.prev_hash.as_slice())
                    .bind(sealed.hash.as_slice())
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?;
                sealed_all.push(sealed);
            }
            sqlx::query("UPDATE tenants SET revision = $2, head_hash = $3 WHERE tenant_id = $1")
                .bind(tenant)
                .bind(revision)
                .bind(prev.as_slice())
                .execute(&mut **tx)
                .await
                .map_err(db)?;
            Ok(sealed_all)
        }

        /// Brings `delete_after` of erased subjects' items of `category` forward to their
        /// erasure, unless the category is kept by law (its default is a minimum). Runs after
        /// every change of `delete_after`, so a rule change never undoes an erasure.
        async fn erasures_bring_forward(
            tx: &mut Tx,
            tenant: &str,
            rules: &RetentionRules,
            category: &str,
        ) -> Result<()> {
            if kept_by_law(rules, category) {
                return Ok(());
            }
            sqlx::query(
                "UPDATE data_items SET delete_after = erased_at \
                 WHERE tenant_id = $1 AND data_category = $2 AND erased_at IS NOT NULL \
                 AND deleted_at IS NULL AND (delete_after IS NULL OR delete_after > erased_at)",
            )
            .bind(tenant)
            .bind(category)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
            Ok(())
        }

        /// Raises the tenant's cache fence if `fence` asks for it (or the namespace the writer
        /// told is no longer the ledger's), then commits.
        async fn fence_and_commit(
            mut tx: Tx,
            tenant: &str,
            revision: i64,
            fence: CacheFence,
        ) -> Result<()> {
            let must_fence = match fence {
                CacheFence::None => false,
                CacheFence::States => true,
                CacheFence::Told { namespace } => {
                    let current: Option<String> = sqlx::query_scalar($namespace)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db)?;
                    current.is_none_or(|c| NamespaceTag::of(&c) != namespace)
                }
            };
            if must_fence {
                $raise_fence(&mut tx, tenant, revision, 0).await?;
            }
            tx.commit().await.map_err(db)
        }

        fn kept_by_law(rules: &RetentionRules, category: &str) -> bool {
            rules
                .default_for(category)
                .is_some_and(|d| d.bound == consent_core::retention::RetentionBound::Minimum)
        }

        fn not_found(item_id: &str) -> ConsentError {
            ConsentError::not_found("data item", item_id)
        }

        /// The `WHERE` conditions after `tenant_id = `, the order and the limit of a ledger
        /// read by `query` (events and records alike; `time_column` is the one the time
        /// filters apply to).
        fn push_filters(
            sql: &mut sqlx::QueryBuilder<'_, $db>,
            tenant: &str,
            query: &EventQuery,
            time_column: &str,
        ) -> Result<()> {
            sql.push_bind(tenant.to_owned())
                .push(" AND revision > ")
                .push_bind(query.after_revision);
            if let Some(subject) = &query.subject_id {
                sql.push(" AND subject_id = ").push_bind(subject.clone());
            }
            if !query.purpose_ids.is_empty() {
                // A subject-wide event or a record without a purpose bears on every purpose.
                sql.push(" AND purpose_id IN ('', ");
                let mut ids = sql.separated(", ");
                for purpose in &query.purpose_ids {
                    ids.push_bind(purpose.clone());
                }
                sql.push(")");
            }
            if let Some(from) = query.collected_from {
                sql.push(format!(" AND {time_column} >= "))
                    .push_bind(time(from)?);
            }
            if let Some(to) = query.collected_to {
                sql.push(format!(" AND {time_column} < "))
                    .push_bind(time(to)?);
            }
            if let Some(until) = query.until_revision {
                sql.push(" AND revision <= ").push_bind(until);
            }
            match &query.by_subject {
                None => {
                    sql.push(" ORDER BY revision");
                }
                Some(after) => {
                    // Row values follow the (tenant_id, subject_id, revision) index; subject
                    // ids compare byte for byte (BINARY in SQLite, COLLATE "C" in
                    // PostgreSQL, migration 0009), as Rust compares them.
                    sql.push(" AND substr(subject_id, 1, 7) <> 'erased:'")
                        .push(" AND (subject_id, revision) > (")
                        .push_bind(after.subject_id.clone())
                        .push(", ")
                        .push_bind(after.revision)
                        .push(") ORDER BY subject_id, revision");
                }
            }
            sql.push(" LIMIT ")
                .push_bind(i64::try_from(query.limit).unwrap_or(i64::MAX));
            Ok(())
        }

        impl $store {
            /// Events matching `query` (see `LedgerStore::list_events`).
            pub(crate) async fn events(
                &self,
                tenant: &str,
                query: &EventQuery,
            ) -> Result<Vec<consent_store::StoredEvent>> {
                let columns = if query.without_evidence {
                    $event_columns_lean
                } else {
                    $event_columns
                };
                let mut sql: sqlx::QueryBuilder<$db> = sqlx::QueryBuilder::new(format!(
                    "SELECT {columns} FROM consent_events WHERE tenant_id = "
                ));
                push_filters(&mut sql, tenant, query, "collected_at")?;
                let rows = sql
                    .build()
                    .fetch_all(self.$reader())
                    .await
                    .map_err(db)?;
                rows.iter().map($event_from_row).collect()
            }

            /// Ledger records matching `query` (see `LedgerStore::list_records`).
            pub(crate) async fn records(
                &self,
                tenant: &str,
                query: &EventQuery,
            ) -> Result<Vec<StoredRecord>> {
                let columns = if query.without_evidence {
                    RECORD_COLUMNS.replace("detail,", "'' AS detail,")
                } else {
                    RECORD_COLUMNS.to_owned()
                };
                let mut sql: sqlx::QueryBuilder<$db> = sqlx::QueryBuilder::new(format!(
                    "SELECT {columns} FROM ledger_records WHERE tenant_id = "
                ));
                push_filters(&mut sql, tenant, query, "at")?;
                let rows = sql
                    .build()
                    .fetch_all(self.$reader())
                    .await
                    .map_err(db)?;
                rows.iter()
                    .map(|row| {
                        let mut record = record_from_row(row)?;
                        if query.without_evidence {
                            // Left out, not erased: say what the ledger holds.
                            record.detail_erased = false;
                        }
                        Ok(record)
                    })
                    .collect()
            }

            /// See `LedgerStore::append_flags`.
            pub(crate) async fn flags_append(
                &self,
                tenant: &str,
                subject_id: &str,
                records: Vec<NewRecord>,
                fence: CacheFence,
                named_by: Option<&consent_core::identity::AliasKey>,
            ) -> Result<FlagsOutcome> {
                if let Some(r) = records.iter().find(|r| {
                    !SubjectFlags::concerns(r.kind) || r.subject_id != subject_id
                }) {
                    return Err(ConsentError::Internal(format!(
                        "a {} record of subject `{}` is not a flag change of `{subject_id}`",
                        r.kind, r.subject_id
                    )));
                }
                let now = Timestamp::now();
                let mut tx = self.$writer().begin().await.map_err(db)?;
                // The head first (as every ledger write of the tenant): flag writes of one
                // subject serialise on it, so each reads the flags the previous one left.
                let locked = lock_head(&mut tx, tenant, now).await?;
                let head = locked.head.revision;
                refuse_moved(&mut tx, tenant, &locked, named_by, subject_id).await?;
                refuse_gone(&mut tx, tenant, &locked, subject_id).await?;
                let mut flags = flags_in(&mut tx, tenant, subject_id).await?;
                let effective: Vec<NewRecord> = records
                    .into_iter()
                    .filter(|r| {
                        let before = flags.clone();
                        flags.apply(r);
                        flags != before
                    })
                    .collect();
                if effective.is_empty() {
                    tx.rollback().await.map_err(db)?;
                    return Ok(FlagsOutcome {
                        records: Vec::new(),
                        flags,
                        revision: head,
                    });
                }
                let sealed = append_after(&mut tx, tenant, &locked, effective, now).await?;
                let revision = sealed.last().map_or(head, |r| r.revision);
                write_flags(&mut tx, tenant, subject_id, &flags, revision).await?;
                fence_and_commit(tx, tenant, revision, fence).await?;
                self.commits.publish(Commit {
                    tenant_id: tenant.to_owned(),
                    revision,
                });
                Ok(FlagsOutcome {
                    records: sealed,
                    flags,
                    revision,
                })
            }

            /// See `LedgerStore::chain_key`; remembered once the tenant has a key.
            pub(crate) async fn key_of(&self, tenant: &str) -> Result<ChainKey> {
                if let Some(key) = self.keys.get(tenant) {
                    return Ok(key);
                }
                let row = sqlx::query(crate::rows::CHAIN_KEY)
                    .bind(tenant)
                    .fetch_optional(self.$reader())
                    .await
                    .map_err(db)?;
                let key = match row {
                    Some(row) => crate::rows::chain_key_from(&row, 0)?,
                    None => ChainKey::NONE,
                };
                Ok(self.keys.remember(tenant, key))
            }

            /// See `LedgerStore::erase_subject`.
            pub(crate) async fn subject_erase(
                &self,
                tenant: &str,
                subject_id: &str,
                record: NewRecord,
                fence: CacheFence,
                named_by: Option<&consent_core::identity::AliasKey>,
            ) -> Result<ErasureOutcome> {
                if record.kind != RecordKind::SubjectErased {
                    return Err(ConsentError::Internal(format!(
                        "an erasure records subject_erased, not {}",
                        record.kind
                    )));
                }
                let now = Timestamp::now();
                // The retention lock (items and holds move), then the head, as attestations do.
                let mut tx = self.begin_retention(tenant).await?;
                let locked = lock_head(&mut tx, tenant, now).await?;
                refuse_moved(&mut tx, tenant, &locked, named_by, subject_id).await?;
                // A subject merged into another goes with its group, after the subject that
                // answers for it (`Ledger::erase`): erased alone, the group would keep its
                // choices on events that no longer name it.
                if let Some(root) = closed_into(&mut tx, tenant, &locked, subject_id).await?
                    && !erased_under(&mut tx, tenant, &locked, &root).await?
                {
                    return Err(ConsentError::FailedPrecondition(format!(
                        "subject_id `{subject_id}` was merged into `{root}`: erase `{root}`, which erases every subject merged into it"
                    )));
                }
                let key = locked.key;
                let erased_id = key.erased_subject_id(subject_id).ok_or_else(|| {
                    ConsentError::Internal("no subject key after the head lock".into())
                })?;
                let sql = format!(
                    "SELECT {RECORD_COLUMNS} FROM ledger_records WHERE tenant_id = $1 \
                     AND subject_id = $2 AND kind = $3 ORDER BY revision LIMIT 1"
                );
                let first = sqlx::query(&sql)
                    .bind(tenant)
                    .bind(erased_id.as_str())
                    .bind(RecordKind::SubjectErased.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db)?;
                if let Some(row) = first {
                    tx.rollback().await.map_err(db)?;
                    return Ok(ErasureOutcome {
                        record: record_from_row(&row)?.record,
                        already_erased: true,
                        entries_erased: 0,
                        items_due: 0,
                        items_kept: 0,
                        revision: locked.head.revision,
                    });
                }

                // Idempotency records of the subject's writes go: their fingerprints digest the
                // request, clear id and evidence included, and a replay would link the clear
                // id to its erased rows.
                sqlx::query(
                    "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND EXISTS \
                     (SELECT 1 FROM consent_events e WHERE e.tenant_id = $1 AND e.subject_id = $2 \
                      AND e.revision BETWEEN idempotency_keys.first_revision \
                      AND idempotency_keys.last_revision)",
                )
                .bind(tenant)
                .bind(subject_id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                // Each entry gets the digest its canonical form committed to: plain before the
                // key (v1), keyed from it on (v2). Payloads go with the clear id.
                let plain_id = key.erased_entry_id(0, subject_id);
                let mut entries_erased: u64 = 0;
                for (table, payload) in [("consent_events", "evidence"), ("ledger_records", "detail")] {
                    for (id, keyed) in [(plain_id.as_str(), false), (erased_id.as_str(), true)] {
                        let sql = format!(
                            "UPDATE {table} SET subject_id = $3, {payload} = NULL \
                             WHERE tenant_id = $1 AND subject_id = $2 AND (revision >= $4) = $5"
                        );
                        entries_erased += sqlx::query(&sql)
                            .bind(tenant)
                            .bind(subject_id)
                            .bind(id)
                            .bind(key.keyed_from)
                            .bind(keyed)
                            .execute(&mut *tx)
                            .await
                            .map_err(db)?
                            .rows_affected();
                    }
                }
                // A merged-away subject's closure goes with it; the rows of subjects merged
                // into this one stay until they are erased in turn (the ledger erases a
                // group's members after its root: `Ledger::erase`).
                for table in [
                    "consent_state",
                    "subject_flags",
                    "subject_identities",
                    "merged_subjects",
                ] {
                    sqlx::query(&format!(
                        "DELETE FROM {table} WHERE tenant_id = $1 AND subject_id = $2"
                    ))
                    .bind(tenant)
                    .bind(subject_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                }
                sqlx::query(
                    "UPDATE legal_holds SET scope_id = $3 \
                     WHERE tenant_id = $1 AND scope = 'subject' AND scope_id = $2",
                )
                .bind(tenant)
                .bind(subject_id)
                .bind(erased_id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db)?;

                // Items: counted by category (kept by law or not) before they move.
                let counts = sqlx::query(
                    "SELECT data_category, COUNT(*) FROM data_items \
                     WHERE tenant_id = $1 AND subject_id = $2 AND deleted_at IS NULL \
                     GROUP BY data_category",
                )
                .bind(tenant)
                .bind(subject_id)
                .fetch_all(&mut *tx)
                .await
                .map_err(db)?;
                let rules = load_rules(&mut *tx, tenant).await?;
                let (mut items_due, mut items_kept) = (0i64, 0i64);
                let mut categories = Vec::with_capacity(counts.len());
                for row in &counts {
                    let category: String = row.try_get(0).map_err(db)?;
                    let n: i64 = row.try_get(1).map_err(db)?;
                    if kept_by_law(&rules, &category) {
                        items_kept += n;
                    } else {
                        items_due += n;
                    }
                    categories.push(category);
                }
                sqlx::query(
                    "UPDATE data_items SET subject_id = $3, erased_at = $4 \
                     WHERE tenant_id = $1 AND subject_id = $2",
                )
                .bind(tenant)
                .bind(subject_id)
                .bind(erased_id.as_str())
                .bind(time(now)?)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                for category in &categories {
                    erasures_bring_forward(&mut tx, tenant, &rules, category).await?;
                }

                let mut record = record;
                record.subject_id = erased_id.clone();
                record.at = now;
                let entries_erased = i64::try_from(entries_erased).unwrap_or(i64::MAX);
                record.detail.extend([
                    ("entries_erased".to_owned(), entries_erased.to_string()),
                    ("items_due".to_owned(), items_due.to_string()),
                    ("items_kept_by_law".to_owned(), items_kept.to_string()),
                ]);
                let sealed = append_after(&mut tx, tenant, &locked, vec![record], now)
                    .await?
                    .pop()
                    .ok_or_else(|| ConsentError::Internal("the erasure was not sealed".into()))?;
                let revision = sealed.revision;
                let marker = SubjectFlags {
                    erased_since: Some(now),
                    ..SubjectFlags::default()
                };
                sqlx::query(
                    "INSERT INTO subject_flags (tenant_id, subject_id, body, revision) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(tenant)
                .bind(erased_id.as_str())
                .bind(to_json(&marker)?)
                .bind(revision)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                sqlx::query("UPDATE tenants SET erasures = erasures + 1 WHERE tenant_id = $1")
                    .bind(tenant)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                fence_and_commit(tx, tenant, revision, fence).await?;
                self.commits.publish(Commit {
                    tenant_id: tenant.to_owned(),
                    revision,
                });
                Ok(ErasureOutcome {
                    record: sealed,
                    already_erased: false,
                    entries_erased,
                    items_due,
                    items_kept,
                    revision,
                })
            }

            async fn begin_retention(&self, tenant: &str) -> Result<Tx> {
                let mut tx = self.$writer().begin().await.map_err(db)?;
                lock_retention(&mut tx, tenant).await?;
                Ok(tx)
            }
        }

        #[async_trait]
        impl RetentionStore for $store {
            async fn apply_retention_defaults(
                &self,
                tenant: &str,
                defaults: &[RetentionDefault],
            ) -> Result<()> {
                let now = Timestamp::now();
                let mut tx = self.begin_retention(tenant).await?;
                let current = load_rules(&mut tx, tenant).await?;
                for default in defaults {
                    for rule in current
                        .rules
                        .iter()
                        .filter(|r| r.data_category == default.rule.data_category)
                    {
                        if let Err(e) = default.admits(rule) {
                            let whose = if rule.campaign_id.is_empty() {
                                "the tenant's rule".to_owned()
                            } else {
                                format!("the rule of campaign `{}`", rule.campaign_id)
                            };
                            return Err(ConsentError::FailedPrecondition(format!(
                                "the new default for {} would break {whose} (change or remove that rule first): {}",
                                default.rule.data_category,
                                match e {
                                    ConsentError::FailedPrecondition(why) => why,
                                    other => other.to_string(),
                                }
                            )));
                        }
                    }
                }
                for default in defaults {
                    sqlx::query(
                        "INSERT INTO retention_defaults (tenant_id, data_category, body, updated_at) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, data_category) \
                         DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
                    )
                    .bind(tenant)
                    .bind(default.rule.data_category.as_str())
                    .bind(to_json(default)?)
                    .bind(time(now)?)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                    recompute(&mut tx, tenant, &default.rule, Governed::Default).await?;
                }
                tx.commit().await.map_err(db)
            }

            async fn set_retention_rule(&self, tenant: &str, rule: &RetentionRule) -> Result<()> {
                let now = Timestamp::now();
                let mut tx = self.begin_retention(tenant).await?;
                let current = load_rules(&mut tx, tenant).await?;
                if let Some(default) = current.default_for(&rule.data_category) {
                    default.admits(rule)?;
                }
                sqlx::query(
                    "INSERT INTO retention_rules (tenant_id, data_category, campaign_id, body, updated_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, data_category, campaign_id) \
                     DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
                )
                .bind(tenant)
                .bind(rule.data_category.as_str())
                .bind(rule.campaign_id.as_str())
                .bind(to_json(rule)?)
                .bind(time(now)?)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                let governed = if rule.campaign_id.is_empty() {
                    Governed::Tenant
                } else {
                    Governed::Campaign(&rule.campaign_id)
                };
                recompute(&mut tx, tenant, rule, governed).await?;
                tx.commit().await.map_err(db)
            }

            async fn retention_rules(&self, tenant: &str) -> Result<RetentionRules> {
                let mut conn = self.$reader().acquire().await.map_err(db)?;
                load_rules(&mut conn, tenant).await
            }

            async fn register_item(
                &self,
                tenant: &str,
                item: &DataItem,
                now: Timestamp,
            ) -> Result<Registered> {
                let mut tx = self.begin_retention(tenant).await?;
                refuse_erased(&mut tx, tenant, &item.subject_id).await?;
                if let Some(stored) = item_in(&mut tx, tenant, &item.item_id).await? {
                    // A retry that omits the anchor (not known when first sent) matches an item
                    // whose anchor was set since.
                    let same = DataItem {
                        deleted_at: None,
                        anchor_at: item.anchor_at.or(stored.item.anchor_at),
                        ..item.clone()
                    } == DataItem {
                        deleted_at: None,
                        ..stored.item.clone()
                    };
                    return if same {
                        Ok(Registered {
                            item: stored,
                            replayed: true,
                        })
                    } else {
                        Err(ConsentError::AlreadyExists(format!(
                            "data item `{}` is already registered with other facts (subject, category, campaign, created_at or anchor_at)",
                            item.item_id
                        )))
                    };
                }
                let rules = load_rules(&mut tx, tenant).await?;
                let rule = rules
                    .rule_for(&item.data_category, &item.campaign_id)
                    .ok_or_else(|| no_rule(&item.data_category))?;
                let due = delete_after(item, rule);
                let sql = format!(
                    "INSERT INTO data_items (tenant_id, {ITEM_COLUMNS}) \
                     VALUES ($9, $1, $2, $3, $4, $5, $6, $7, NULL, NULL, $8, NULL)"
                );
                sqlx::query(&sql)
                    .bind(item.item_id.as_str())
                    .bind(item.subject_id.as_str())
                    .bind(item.data_category.as_str())
                    .bind(item.campaign_id.as_str())
                    .bind(time(item.created_at)?)
                    .bind(opt_time(item.anchor_at)?)
                    .bind(opt_time(due)?)
                    .bind(time(now)?)
                    .bind(tenant)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                tx.commit().await.map_err(db)?;
                Ok(Registered {
                    item: StoredItem {
                        item: DataItem {
                            deleted_at: None,
                            ..item.clone()
                        },
                        delete_after: due,
                        attestation_revision: None,
                        registered_at: now,
                        erased_at: None,
                    },
                    replayed: false,
                })
            }

            async fn subject_items(
                &self,
                tenant: &str,
                subject_id: &str,
                after_item_id: &str,
                limit: usize,
            ) -> Result<Vec<StoredItem>> {
                let sql = format!(
                    "SELECT {ITEM_COLUMNS} FROM data_items WHERE tenant_id = $1 AND subject_id = $2 \
                     AND item_id > $3 ORDER BY item_id LIMIT $4"
                );
                sqlx::query(&sql)
                    .bind(tenant)
                    .bind(subject_id)
                    .bind(after_item_id)
                    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                    .fetch_all(self.$reader())
                    .await
                    .map_err(db)?
                    .iter()
                    .map(item_from_row)
                    .collect()
            }

            async fn data_item(&self, tenant: &str, item_id: &str) -> Result<Option<StoredItem>> {
                let sql = format!(
                    "SELECT {ITEM_COLUMNS} FROM data_items WHERE tenant_id = $1 AND item_id = $2"
                );
                sqlx::query(&sql)
                    .bind(tenant)
                    .bind(item_id)
                    .fetch_optional(self.$reader())
                    .await
                    .map_err(db)?
                    .as_ref()
                    .map(item_from_row)
                    .transpose()
            }

            async fn update_anchor(
                &self,
                tenant: &str,
                item_id: &str,
                anchor_at: Timestamp,
            ) -> Result<StoredItem> {
                let mut tx = self.begin_retention(tenant).await?;
                let mut stored = item_in(&mut tx, tenant, item_id)
                    .await?
                    .ok_or_else(|| not_found(item_id))?;
                if let Some(deleted) = stored.item.deleted_at {
                    return Err(ConsentError::FailedPrecondition(format!(
                        "data item `{item_id}` was deleted (attested at {deleted}): its anchor no longer matters"
                    )));
                }
                stored.item.anchor_at = Some(anchor_at);
                let rules = load_rules(&mut tx, tenant).await?;
                stored.delete_after = rules
                    .rule_for(&stored.item.data_category, &stored.item.campaign_id)
                    .and_then(|rule| delete_after(&stored.item, rule));
                sqlx::query(
                    "UPDATE data_items SET anchor_at = $3, delete_after = $4 \
                     WHERE tenant_id = $1 AND item_id = $2",
                )
                .bind(tenant)
                .bind(item_id)
                .bind(time(anchor_at)?)
                .bind(opt_time(stored.delete_after)?)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                if stored.erased_at.is_some() {
                    erasures_bring_forward(&mut tx, tenant, &rules, &stored.item.data_category)
                        .await?;
                    stored = item_in(&mut tx, tenant, item_id)
                        .await?
                        .ok_or_else(|| not_found(item_id))?;
                }
                tx.commit().await.map_err(db)?;
                Ok(stored)
            }

            async fn place_legal_hold(&self, tenant: &str, hold: &StoredHold) -> Result<()> {
                let (scope, scope_id) = hold_scope_parts(&hold.hold.scope);
                // A hold on an erased subject would hold nothing (its items moved to its
                // erased id): refused, as every write for an erased subject.
                let mut tx = self.begin_retention(tenant).await?;
                if let HoldScope::Subject(subject_id) = &hold.hold.scope {
                    refuse_erased(&mut tx, tenant, subject_id).await?;
                }
                let sql = format!(
                    "INSERT INTO legal_holds (tenant_id, {HOLD_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                );
                sqlx::query(&sql)
                    .bind(tenant)
                    .bind(hold.hold_id.as_str())
                    .bind(scope)
                    .bind(scope_id)
                    .bind(hold.hold.reason.as_str())
                    .bind(opt_time(hold.hold.until)?)
                    .bind(time(hold.created_at)?)
                    .bind(opt_time(hold.released_at)?)
                    .bind(hold.actor_key_id.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                tx.commit().await.map_err(db)
            }

            async fn release_legal_hold(
                &self,
                tenant: &str,
                hold_id: &str,
                at: Timestamp,
            ) -> Result<StoredHold> {
                let sql = format!(
                    "UPDATE legal_holds SET released_at = COALESCE(released_at, $3) \
                     WHERE tenant_id = $1 AND hold_id = $2 RETURNING {HOLD_COLUMNS}"
                );
                sqlx::query(&sql)
                    .bind(tenant)
                    .bind(hold_id)
                    .bind(time(at)?)
                    .fetch_optional(self.$writer())
                    .await
                    .map_err(db)?
                    .as_ref()
                    .map(hold_from_row)
                    .transpose()?
                    .ok_or_else(|| ConsentError::not_found("legal hold", hold_id))
            }

            async fn legal_holds(
                &self,
                tenant: &str,
                scope: Option<&HoldScope>,
                now: Timestamp,
                after_hold_id: &str,
                limit: usize,
            ) -> Result<Vec<StoredHold>> {
                let (kind, id) = scope.map(hold_scope_parts).unzip();
                let sql = format!(
                    "SELECT {HOLD_COLUMNS} FROM legal_holds WHERE tenant_id = $1 \
                     AND released_at IS NULL AND (until IS NULL OR until > $4) \
                     AND (CAST($2 AS TEXT) IS NULL OR (scope = $2 AND scope_id = $3)) \
                     AND hold_id > $5 ORDER BY hold_id LIMIT $6"
                );
                sqlx::query(&sql)
                    .bind(tenant)
                    .bind(kind)
                    .bind(id)
                    .bind(time(now)?)
                    .bind(after_hold_id)
                    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                    .fetch_all(self.$reader())
                    .await
                    .map_err(db)?
                    .iter()
                    .map(hold_from_row)
                    .collect()
            }

            async fn holds_covering(
                &self,
                tenant: &str,
                item: &DataItem,
            ) -> Result<Vec<StoredHold>> {
                let sql = format!(
                    "SELECT {HOLD_COLUMNS} FROM legal_holds WHERE tenant_id = $1 \
                     AND released_at IS NULL \
                     AND ((scope = 'subject' AND scope_id = $2) OR (scope = 'item' AND scope_id = $3) \
                          OR (scope = 'campaign' AND scope_id = $4 AND scope_id <> '')) \
                     ORDER BY created_at, hold_id"
                );
                sqlx::query(&sql)
                    .bind(tenant)
                    .bind(item.subject_id.as_str())
                    .bind(item.item_id.as_str())
                    .bind(item.campaign_id.as_str())
                    .fetch_all(self.$reader())
                    .await
                    .map_err(db)?
                    .iter()
                    .map(hold_from_row)
                    .collect()
            }

            async fn due_items(&self, tenant: &str, query: &DueQuery) -> Result<Vec<StoredItem>> {
                let columns = ITEM_COLUMNS
                    .split(", ")
                    .map(|c| format!("i.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let (after_time, after_id) = query.after.clone().unzip();
                let sql = format!(
                    "SELECT {columns} FROM data_items i WHERE i.tenant_id = $1 \
                     AND i.deleted_at IS NULL AND i.delete_after <= $2 \
                     AND (CAST($4 AS TEXT) IS NULL OR i.data_category = $4) \
                     AND (CAST($5 AS TEXT) IS NULL OR i.campaign_id = $5) \
                     AND (CAST($7 AS TEXT) IS NULL OR i.delete_after > $6 \
                          OR (i.delete_after = $6 AND i.item_id > $7)) \
                     AND NOT {} \
                     ORDER BY i.delete_after, i.item_id LIMIT $8",
                    held("$3")
                );
                sqlx::query(&sql)
                    .bind(tenant)
                    .bind(time(query.due_by)?)
                    .bind(time(query.now)?)
                    .bind(query.data_category.as_deref())
                    .bind(query.campaign_id.as_deref())
                    .bind(opt_time(after_time)?)
                    .bind(after_id)
                    .bind(i64::try_from(query.limit).unwrap_or(i64::MAX))
                    .fetch_all(self.$reader())
                    .await
                    .map_err(db)?
                    .iter()
                    .map(item_from_row)
                    .collect()
            }

            async fn attest_deletion(
                &self,
                tenant: &str,
                item_id: &str,
                deleted_at: Timestamp,
                record: NewRecord,
            ) -> Result<Attested> {
                let mut tx = self.begin_retention(tenant).await?;
                let mut stored = item_in(&mut tx, tenant, item_id)
                    .await?
                    .ok_or_else(|| not_found(item_id))?;
                if let Some(revision) = stored.attestation_revision {
                    let sql = format!(
                        "SELECT {RECORD_COLUMNS} FROM ledger_records \
                         WHERE tenant_id = $1 AND revision = $2"
                    );
                    let row = sqlx::query(&sql)
                        .bind(tenant)
                        .bind(revision)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db)?;
                    return Ok(Attested {
                        item: stored,
                        record: record_from_row(&row)?.record,
                        replayed: true,
                    });
                }
                let now = Timestamp::now();
                let sealed = append_in(&mut tx, tenant, vec![record], now)
                    .await?
                    .pop()
                    .ok_or_else(|| ConsentError::Internal("the attestation was not sealed".into()))?;
                sqlx::query(
                    "UPDATE data_items SET deleted_at = $3, attestation_revision = $4 \
                     WHERE tenant_id = $1 AND item_id = $2",
                )
                .bind(tenant)
                .bind(item_id)
                .bind(time(deleted_at)?)
                .bind(sealed.revision)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                tx.commit().await.map_err(db)?;
                self.commits.publish(Commit {
                    tenant_id: tenant.to_owned(),
                    revision: sealed.revision,
                });
                stored.item.deleted_at = Some(deleted_at);
                stored.attestation_revision = Some(sealed.revision);
                Ok(Attested {
                    item: stored,
                    record: sealed,
                    replayed: false,
                })
            }

            async fn claim_sweep(&self, slot: i64, now: Timestamp) -> Result<bool> {
                let claimed = sqlx::query(
                    "UPDATE sweep_clock SET slot = $1, claimed_at = $2 WHERE id = 1 AND slot < $1",
                )
                .bind(slot)
                .bind(time(now)?)
                .execute(self.$writer())
                .await
                .map_err(db)?;
                Ok(claimed.rows_affected() == 1)
            }

            async fn ledger_tenants(&self) -> Result<Vec<String>> {
                sqlx::query_scalar("SELECT tenant_id FROM tenants ORDER BY tenant_id")
                    .fetch_all(self.$reader())
                    .await
                    .map_err(db)
            }

            async fn sweep_mark(&self, tenant: &str) -> Result<SweepMark> {
                let row = sqlx::query(
                    "SELECT expired_until, expired_revision, swept_at FROM retention_sweeps \
                     WHERE tenant_id = $1",
                )
                .bind(tenant)
                .fetch_optional(self.$reader())
                .await
                .map_err(db)?;
                match row {
                    None => Ok(SweepMark::start()),
                    Some(row) => Ok(SweepMark {
                        expired_until: read_time(&row, 0)?,
                        expired_revision: row.try_get(1).map_err(db)?,
                        swept_at: Some(read_time(&row, 2)?),
                    }),
                }
            }

            async fn expired_grants(
                &self,
                tenant: &str,
                after: &SweepMark,
                until: Timestamp,
                limit: usize,
            ) -> Result<Vec<ExpiredGrant>> {
                // Only grants still projected (the current choice) and not overtaken by a
                // withdraw-all (collected at or after them: a tie goes to the withdrawal, as
                // in decide): a withdrawn or replaced grant has nothing left to expire.
                let rows = sqlx::query(
                    "SELECT e.subject_id, e.purpose_id, e.vendor_id, CAST(e.event_id AS TEXT), \
                     e.expires_at, e.revision FROM consent_events e \
                     JOIN consent_state s ON s.tenant_id = e.tenant_id AND s.subject_id = e.subject_id \
                      AND s.purpose_id = e.purpose_id AND s.vendor_id = e.vendor_id \
                      AND s.event_id = e.event_id \
                     WHERE e.tenant_id = $1 AND e.decision = 'granted' \
                     AND e.expires_at IS NOT NULL AND e.expires_at <= $2 \
                     AND NOT EXISTS (SELECT 1 FROM consent_state w WHERE w.tenant_id = e.tenant_id \
                      AND w.subject_id = e.subject_id AND w.purpose_id = '' \
                      AND w.collected_at >= s.collected_at) \
                     AND (e.expires_at > $3 OR (e.expires_at = $3 AND e.revision > $4)) \
                     ORDER BY e.expires_at, e.revision LIMIT $5",
                )
                .bind(tenant)
                .bind(time(until)?)
                .bind(time(after.expired_until)?)
                .bind(after.expired_revision)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(self.$reader())
                .await
                .map_err(db)?;
                rows.iter()
                    .map(|row| {
                        Ok(ExpiredGrant {
                            subject_id: row.try_get(0).map_err(db)?,
                            purpose_id: row.try_get(1).map_err(db)?,
                            vendor_id: row.try_get(2).map_err(db)?,
                            event_id: row.try_get(3).map_err(db)?,
                            expires_at: read_time(row, 4)?,
                            revision: row.try_get(5).map_err(db)?,
                        })
                    })
                    .collect()
            }

            async fn record_sweep(
                &self,
                tenant: &str,
                records: Vec<NewRecord>,
                mark: &SweepMark,
            ) -> Result<Vec<LedgerRecord>> {
                let now = Timestamp::now();
                let mut tx = self.$writer().begin().await.map_err(db)?;
                let sealed = append_in(&mut tx, tenant, records, now).await?;
                sqlx::query(
                    "INSERT INTO retention_sweeps (tenant_id, expired_until, expired_revision, swept_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id) DO UPDATE SET \
                     expired_until = excluded.expired_until, \
                     expired_revision = excluded.expired_revision, swept_at = excluded.swept_at",
                )
                .bind(tenant)
                .bind(time(mark.expired_until)?)
                .bind(mark.expired_revision)
                .bind(time(mark.swept_at.unwrap_or(now))?)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                tx.commit().await.map_err(db)?;
                if let Some(last) = sealed.last() {
                    self.commits.publish(Commit {
                        tenant_id: tenant.to_owned(),
                        revision: last.revision,
                    });
                }
                Ok(sealed)
            }

            async fn mark_newly_due(&self, tenant: &str, now: Timestamp) -> Result<i64> {
                let sql = format!(
                    "UPDATE data_items SET due_reported_at = $2 WHERE tenant_id = $1 \
                     AND deleted_at IS NULL AND due_reported_at IS NULL AND delete_after <= $2 \
                     AND item_id IN (SELECT i.item_id FROM data_items i WHERE i.tenant_id = $1 \
                       AND i.deleted_at IS NULL AND i.due_reported_at IS NULL \
                       AND i.delete_after <= $2 AND NOT {})",
                    held("$2")
                );
                let marked = sqlx::query(&sql)
                    .bind(tenant)
                    .bind(time(now)?)
                    .execute(self.$writer())
                    .await
                    .map_err(db)?;
                Ok(i64::try_from(marked.rows_affected()).unwrap_or(i64::MAX))
            }

            async fn retention_counts(
                &self,
                tenant: &str,
                now: Timestamp,
                overdue_by: Timestamp,
            ) -> Result<RetentionCounts> {
                let held = held("$2");
                let sql = format!(
                    "SELECT COUNT(*), \
                     COALESCE(SUM(CASE WHEN i.delete_after <= $2 AND NOT {held} THEN 1 ELSE 0 END), 0), \
                     COALESCE(SUM(CASE WHEN i.delete_after <= $3 AND NOT {held} THEN 1 ELSE 0 END), 0) \
                     FROM data_items i WHERE i.tenant_id = $1 AND i.deleted_at IS NULL"
                );
                let row = sqlx::query(&sql)
                    .bind(tenant)
                    .bind(time(now)?)
                    .bind(time(overdue_by)?)
                    .fetch_one(self.$reader())
                    .await
                    .map_err(db)?;
                Ok(RetentionCounts {
                    items: row.try_get(0).map_err(db)?,
                    became_due: 0,
                    due: row.try_get(1).map_err(db)?,
                    overdue: row.try_get(2).map_err(db)?,
                })
            }
        }
    };
}

/// SQLite: times are INTEGER microseconds; one writer connection serialises writes.
mod on_sqlite {
    fn to_micros(t: consent_core::Timestamp) -> consent_core::Result<i64> {
        Ok(t.as_micros())
    }

    fn from_micros(v: i64) -> consent_core::Result<consent_core::Timestamp> {
        Ok(consent_core::Timestamp(v))
    }

    sql_retention_store!(
        crate::SqliteStore,
        sqlx::Sqlite,
        writer = writer,
        reader = reader,
        time = i64,
        to_db = to_micros,
        from_db = from_micros,
        period = "{}",
        lock = None,
        namespace = crate::errors::CACHE_NAMESPACE,
        raise_fence = crate::sqlite::raise_fence,
        event_columns = crate::sqlite::EVENT_COLUMNS,
        event_columns_lean = crate::sqlite::EVENT_COLUMNS_WITHOUT_EVIDENCE,
        event_from_row = crate::sqlite::event_from_row,
    );

    sql_identity_store!(
        crate::SqliteStore,
        sqlx::Sqlite,
        writer = writer,
        reader = reader,
        from_db = from_micros,
    );
}

/// PostgreSQL: `timestamptz`; retention writes of a tenant take a transaction advisory lock.
mod on_postgres {
    sql_retention_store!(
        crate::PgStore,
        sqlx::Postgres,
        writer = pool,
        reader = pool,
        time = time::OffsetDateTime,
        to_db = crate::rows::pg_time,
        from_db = crate::rows::from_pg_time,
        period = "({} * interval '1 microsecond')",
        lock =
            Some("SELECT pg_advisory_xact_lock(hashtextextended('consent-retention/' || $1, 0))"),
        // FOR SHARE: a namespace rotation waits for this write to commit (as in the group
        // commit).
        namespace = "SELECT cache_namespace FROM ledger_identity WHERE id = 1 FOR SHARE",
        raise_fence = crate::pg::raise_fence,
        event_columns = crate::pg::EVENT_COLUMNS,
        event_columns_lean = crate::pg::EVENT_COLUMNS_WITHOUT_EVIDENCE,
        event_from_row = crate::pg::event_from_row,
    );

    sql_identity_store!(
        crate::PgStore,
        sqlx::Postgres,
        writer = pool,
        reader = pool,
        from_db = crate::rows::from_pg_time,
    );
}
