//! `IdentityStore` on SQL: the `subject_identities` table, written with its ledger records.

/// Implements `IdentityStore` for `$store`. Expanded in the module of the backend's
/// `sql_retention_store!`, whose helpers it uses (`lock_head`, `append_after`,
/// `fence_and_commit`, `erased_under`, `erased_error`, `refuse_gone`, `closed_into`,
/// `flags_in`, `write_flags`, `MERGE_ROOT`, `time`). `from_db` turns a stored time back into
/// a `Timestamp`.
macro_rules! sql_identity_store {
    ($store:ty, $db:ty, writer = $writer:ident, reader = $reader:ident, from_db = $from_db:path $(,)?) => {
        const IDENTITY_COLUMNS: &str =
            "alias_key, identity_type, value, subject_id, revision, linked_at";
        /// The link of one alias key: `$1` tenant, `$2` alias key.
        fn identity_by_alias() -> String {
            format!(
                "SELECT {IDENTITY_COLUMNS} FROM subject_identities \
                 WHERE tenant_id = $1 AND alias_key = $2"
            )
        }

        /// The link of one alias key, if any, and the tenant's revision (last column) in one
        /// row: `$1` tenant, `$2` alias key.
        fn resolution_by_alias() -> String {
            let columns = IDENTITY_COLUMNS
                .split(", ")
                .map(|c| format!("i.{c}"))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "SELECT {columns}, h.revision \
                 FROM (SELECT COALESCE((SELECT revision FROM tenants WHERE tenant_id = $1), 0) AS revision) h \
                 LEFT JOIN subject_identities i ON i.tenant_id = $1 AND i.alias_key = $2"
            )
        }

        fn identity_from_row(
            row: &<$db as sqlx::Database>::Row,
        ) -> Result<consent_store::StoredIdentity> {
            let alias: Vec<u8> = row.try_get(0).map_err(db)?;
            let kind: String = row.try_get(1).map_err(db)?;
            Ok(consent_store::StoredIdentity {
                link: consent_store::NewLink {
                    alias: consent_core::identity::AliasKey(hash32(
                        &alias,
                        "subject_identities.alias_key",
                    )?),
                    kind: parse(&kind, "subject_identities.identity_type")?,
                    value: row.try_get(2).map_err(db)?,
                },
                subject_id: row.try_get(3).map_err(db)?,
                revision: row.try_get(4).map_err(db)?,
                linked_at: $from_db(row.try_get(5).map_err(db)?)?,
            })
        }

        /// The link of `alias` in `tx`, if any.
        async fn identity_in(
            tx: &mut Tx,
            tenant: &str,
            alias: &consent_core::identity::AliasKey,
        ) -> Result<Option<consent_store::StoredIdentity>> {
            let row = sqlx::query(&identity_by_alias())
            .bind(tenant)
            .bind(alias.0.as_slice())
            .fetch_optional(&mut **tx)
            .await
            .map_err(db)?;
            row.as_ref().map(identity_from_row).transpose()
        }

        /// Appends the one ledger record of a link or unlink after the locked head.
        async fn append_link_record(
            tx: &mut Tx,
            tenant: &str,
            locked: &LockedHead,
            record: NewRecord,
            now: Timestamp,
        ) -> Result<LedgerRecord> {
            append_after(tx, tenant, locked, vec![record], now)
                .await?
                .pop()
                .ok_or_else(|| ConsentError::Internal("the link record was not appended".into()))
        }

        /// Refuses a record that is not `kind` about `subject_id` (a caller's bug).
        fn identity_record_is(record: &NewRecord, kind: RecordKind, subject_id: &str) -> Result<()> {
            if record.kind != kind || record.subject_id != subject_id {
                return Err(ConsentError::Internal(format!(
                    "a {} record of subject `{}` is not an {kind} record of `{subject_id}`",
                    record.kind, record.subject_id
                )));
            }
            Ok(())
        }

        /// A merge's projection write: `$3` (into) takes each of `$2`'s (from) choices that
        /// supersedes its own, by the rule of every projection write
        /// (`StateEntry::supersedes`).
        const TAKE_CHOICES: &str = "INSERT INTO consent_state (tenant_id, subject_id, purpose_id, vendor_id, decision, \
                     event_id, policy_version_id, collected_at, revision) \
                     SELECT tenant_id, $3, purpose_id, vendor_id, decision, event_id, policy_version_id, \
                     collected_at, revision FROM consent_state WHERE tenant_id = $1 AND subject_id = $2 \
                     ON CONFLICT (tenant_id, subject_id, purpose_id, vendor_id) DO UPDATE SET \
                     decision = excluded.decision, event_id = excluded.event_id, \
                     policy_version_id = excluded.policy_version_id, collected_at = excluded.collected_at, \
                     revision = excluded.revision \
                     WHERE (excluded.collected_at, CASE WHEN excluded.decision = 'granted' THEN 0 ELSE 1 END, excluded.revision) \
                       > (consent_state.collected_at, CASE WHEN consent_state.decision = 'granted' THEN 0 ELSE 1 END, consent_state.revision)";

        /// Runs one of a merge's statements (`$1` the tenant, `$2` the subject merged away,
        /// `$3` the one merged into); returns the rows it changed.
        async fn move_rows(tx: &mut Tx, sql: &str, tenant: &str, from: &str, into: &str) -> Result<u64> {
            Ok(sqlx::query(sql)
                .bind(tenant)
                .bind(from)
                .bind(into)
                .execute(&mut **tx)
                .await
                .map_err(db)?
                .rows_affected())
        }

        /// How many identities are linked to `subject_id`.
        async fn links_of(tx: &mut Tx, tenant: &str, subject_id: &str) -> Result<i64> {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM subject_identities WHERE tenant_id = $1 AND subject_id = $2",
            )
            .bind(tenant)
            .bind(subject_id)
            .fetch_one(&mut **tx)
            .await
            .map_err(db)
        }

        /// Inserts the row of a new link written by the record `sealed`.
        async fn insert_link(
            tx: &mut Tx,
            tenant: &str,
            subject_id: &str,
            link: &consent_store::NewLink,
            sealed: &LedgerRecord,
        ) -> Result<consent_store::StoredIdentity> {
            sqlx::query(&format!(
                "INSERT INTO subject_identities (tenant_id, {IDENTITY_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)"
            ))
            .bind(tenant)
            .bind(link.alias.0.as_slice())
            .bind(link.kind.as_str())
            .bind(link.value.as_deref())
            .bind(subject_id)
            .bind(sealed.revision)
            .bind(time(sealed.recorded_at)?)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
            Ok(consent_store::StoredIdentity {
                link: link.clone(),
                subject_id: subject_id.to_owned(),
                revision: sealed.revision,
                linked_at: sealed.recorded_at,
            })
        }

        /// Refuses the records of a merge that are not what `merge` writes (a caller's bug).
        fn merge_records_are(merge: &consent_store::Merge) -> Result<()> {
            let new_link = matches!(merge.via, consent_store::MergeVia::NewLink(_));
            let expected = |r: &NewRecord| match r.kind {
                RecordKind::SubjectsMerged => r.subject_id == merge.into || r.subject_id == merge.from,
                RecordKind::IdentityLinked => new_link && r.subject_id == merge.into,
                _ => false,
            };
            match merge.records.iter().find(|r| !expected(r)) {
                Some(r) => Err(ConsentError::Internal(format!(
                    "a {} record of subject `{}` is not part of merging `{}` into `{}`",
                    r.kind, r.subject_id, merge.from, merge.into
                ))),
                None => Ok(()),
            }
        }

        impl $store {
            /// Commits a link or unlink written as `sealed` (fenced as asked) and wakes the
            /// change feed.
            async fn commit_link(
                &self,
                tx: Tx,
                tenant: &str,
                sealed: LedgerRecord,
                identity: consent_store::StoredIdentity,
                fence: CacheFence,
            ) -> Result<consent_store::LinkOutcome> {
                let revision = sealed.revision;
                fence_and_commit(tx, tenant, revision, fence).await?;
                self.commits.publish(Commit {
                    tenant_id: tenant.to_owned(),
                    revision,
                });
                Ok(consent_store::LinkOutcome {
                    record: Some(sealed),
                    identity,
                    revision,
                })
            }
        }

        #[async_trait]
        impl consent_store::IdentityStore for $store {
            async fn ensure_subject_key(&self, tenant: &str) -> Result<ChainKey> {
                let key = self.key_of(tenant).await?;
                if key.subject_key.is_some() {
                    return Ok(key);
                }
                // The head's upsert gives the tenant its key (as any first write does).
                let mut tx = self.$writer().begin().await.map_err(db)?;
                let locked = lock_head(&mut tx, tenant, Timestamp::now()).await?;
                tx.commit().await.map_err(db)?;
                Ok(locked.key)
            }

            async fn link_identity(
                &self,
                tenant: &str,
                subject_id: &str,
                link: &consent_store::NewLink,
                record: NewRecord,
                fence: CacheFence,
            ) -> Result<consent_store::LinkOutcome> {
                identity_record_is(&record, RecordKind::IdentityLinked, subject_id)?;
                let now = Timestamp::now();
                let mut tx = self.$writer().begin().await.map_err(db)?;
                // The head first, as every ledger write: links of one alias serialise on it.
                let locked = lock_head(&mut tx, tenant, now).await?;
                refuse_gone(&mut tx, tenant, &locked, subject_id).await?;
                if let Some(existing) = identity_in(&mut tx, tenant, &link.alias).await? {
                    tx.rollback().await.map_err(db)?;
                    if existing.subject_id == subject_id {
                        return Ok(consent_store::LinkOutcome {
                            record: None,
                            identity: existing,
                            revision: locked.head.revision,
                        });
                    }
                    return Err(ConsentError::FailedPrecondition(format!(
                        "the {} identity is already linked to subject `{}`: unlink it from that subject first (an identity stands for one subject), or link it with merge if both subjects are the same person",
                        existing.link.kind, existing.subject_id
                    )));
                }
                let linked = links_of(&mut tx, tenant, subject_id).await?;
                if linked >= consent_store::MAX_IDENTITIES_PER_SUBJECT {
                    tx.rollback().await.map_err(db)?;
                    return Err(ConsentError::FailedPrecondition(format!(
                        "subject `{subject_id}` has {linked} identities linked, the most one subject may have: unlink some first"
                    )));
                }
                let sealed = append_link_record(&mut tx, tenant, &locked, record, now).await?;
                let identity = insert_link(&mut tx, tenant, subject_id, link, &sealed).await?;
                self.commit_link(tx, tenant, sealed, identity, fence).await
            }

            async fn unlink_identity(
                &self,
                tenant: &str,
                subject_id: &str,
                alias: &consent_core::identity::AliasKey,
                record: NewRecord,
                fence: CacheFence,
            ) -> Result<consent_store::LinkOutcome> {
                identity_record_is(&record, RecordKind::IdentityUnlinked, subject_id)?;
                let now = Timestamp::now();
                let mut tx = self.$writer().begin().await.map_err(db)?;
                let locked = lock_head(&mut tx, tenant, now).await?;
                refuse_gone(&mut tx, tenant, &locked, subject_id).await?;
                // Its own choices went into the subject (carry_choices): unlinked, it would
                // stand for a closed subject whose choices the group keeps.
                let own = consent_core::identity::implicit_subject_id(alias);
                if let Some(root) = closed_into(&mut tx, tenant, &locked, &own).await? {
                    return Err(ConsentError::FailedPrecondition(format!(
                        "the identity's own choices were carried into subject `{root}` (carry_choices): it stays linked to that person; erase the subject to remove it"
                    )));
                }
                let existing = identity_in(&mut tx, tenant, alias)
                    .await?
                    .filter(|i| i.subject_id == subject_id);
                let Some(existing) = existing else {
                    tx.rollback().await.map_err(db)?;
                    return Err(ConsentError::not_found(
                        "identity linked to subject",
                        subject_id,
                    ));
                };
                let sealed = append_link_record(&mut tx, tenant, &locked, record, now).await?;
                sqlx::query("DELETE FROM subject_identities WHERE tenant_id = $1 AND alias_key = $2")
                    .bind(tenant)
                    .bind(alias.0.as_slice())
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                self.commit_link(tx, tenant, sealed, existing, fence).await
            }

            async fn resolve_identity_at(
                &self,
                tenant: &str,
                alias: &consent_core::identity::AliasKey,
            ) -> Result<consent_store::Resolution> {
                // One statement, so the link and the revision are of one snapshot.
                let row = sqlx::query(&resolution_by_alias())
                    .bind(tenant)
                    .bind(alias.0.as_slice())
                    .fetch_one(self.$reader())
                    .await
                    .map_err(db)?;
                let linked: Option<Vec<u8>> = row.try_get(0).map_err(db)?;
                Ok(consent_store::Resolution {
                    link: linked.map(|_| identity_from_row(&row)).transpose()?,
                    revision: row.try_get(6).map_err(db)?,
                })
            }

            async fn merge_subjects(
                &self,
                tenant: &str,
                merge: &consent_store::Merge,
                fence: CacheFence,
            ) -> Result<consent_store::MergeOutcome> {
                use consent_store::MergeVia;
                merge_records_are(merge)?;
                let (into, from) = (merge.into.as_str(), merge.from.as_str());
                if into == from {
                    return Err(ConsentError::FailedPrecondition(format!(
                        "subject `{into}` cannot be merged into itself"
                    )));
                }
                let now = Timestamp::now();
                let mut tx = self.$writer().begin().await.map_err(db)?;
                // The head first: merges and every write naming either subject serialise on
                // it, so no write to `from` can land after its state was read below.
                let locked = lock_head(&mut tx, tenant, now).await?;
                if let Some(root) = closed_into(&mut tx, tenant, &locked, from).await? {
                    tx.rollback().await.map_err(db)?;
                    if root == into {
                        return Ok(consent_store::MergeOutcome {
                            records: Vec::new(),
                            identities_moved: 0,
                            revision: locked.head.revision,
                        });
                    }
                    return Err(crate::errors::merged_error(from, &root));
                }
                // Not closed (looked up above); erased, refused.
                if erased_under(&mut tx, tenant, &locked, from).await? {
                    return Err(erased_error(from));
                }
                refuse_gone(&mut tx, tenant, &locked, into).await?;
                let standing = match &merge.via {
                    MergeVia::Linked(alias) | MergeVia::NewLink(consent_store::NewLink { alias, .. }) => {
                        identity_in(&mut tx, tenant, alias).await?
                    }
                };
                let (expected, new_link) = match &merge.via {
                    MergeVia::Linked(_) => (Some(from), None),
                    MergeVia::NewLink(link) => (None, Some(link)),
                };
                if standing.as_ref().map(|i| i.subject_id.as_str()) != expected {
                    tx.rollback().await.map_err(db)?;
                    return Err(ConsentError::FailedPrecondition(format!(
                        "the identity is {} now: it changed while the merge was asked; resolve it again and retry",
                        standing.map_or("not linked".to_owned(), |i| format!("linked to subject `{}`", i.subject_id))
                    )));
                }
                let links = links_of(&mut tx, tenant, into).await?
                    + links_of(&mut tx, tenant, from).await?
                    + i64::from(new_link.is_some());
                if links > consent_store::MAX_IDENTITIES_PER_SUBJECT {
                    tx.rollback().await.map_err(db)?;
                    return Err(ConsentError::FailedPrecondition(format!(
                        "subjects `{into}` and `{from}` would hold {links} identities together, more than one subject may have ({}): unlink some first",
                        consent_store::MAX_IDENTITIES_PER_SUBJECT
                    )));
                }
                let sealed = append_after(&mut tx, tenant, &locked, merge.records.clone(), now).await?;
                let revision = sealed.last().map_or(locked.head.revision, |r| r.revision);
                // `into` takes each of `from`'s choices that supersedes its own, by the rule of
                // every projection write (`StateEntry::supersedes`).
                move_rows(&mut tx, TAKE_CHOICES, tenant, from, into).await?;
                let mut into_flags = flags_in(&mut tx, tenant, into).await?;
                let mut from_flags = flags_in(&mut tx, tenant, from).await?;
                into_flags.absorb(&from_flags);
                from_flags.merged_into = Some(into.to_owned());
                write_flags(&mut tx, tenant, into, &into_flags, revision).await?;
                write_flags(&mut tx, tenant, from, &from_flags, revision).await?;
                // Subjects merged into `from` now count as merged into `into` (the group's
                // root), and `from` is closed.
                move_rows(
                    &mut tx,
                    "UPDATE merged_subjects SET merged_into = $3 WHERE tenant_id = $1 AND merged_into = $2",
                    tenant,
                    from,
                    into,
                )
                .await?;
                sqlx::query(
                    "INSERT INTO merged_subjects (tenant_id, subject_id, merged_into, revision) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(tenant)
                .bind(from)
                .bind(into)
                .bind(revision)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                let moved = move_rows(
                    &mut tx,
                    "UPDATE subject_identities SET subject_id = $3 WHERE tenant_id = $1 AND subject_id = $2",
                    tenant,
                    from,
                    into,
                )
                .await?;
                if let Some(link) = new_link {
                    let record = sealed
                        .iter()
                        .find(|r| r.record.kind == RecordKind::IdentityLinked)
                        .ok_or_else(|| ConsentError::Internal("a merge that links an identity needs its identity_linked record".into()))?;
                    insert_link(&mut tx, tenant, into, link, record).await?;
                }
                sqlx::query("UPDATE tenants SET merges = merges + 1 WHERE tenant_id = $1")
                    .bind(tenant)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                fence_and_commit(tx, tenant, revision, fence).await?;
                self.commits.publish(Commit {
                    tenant_id: tenant.to_owned(),
                    revision,
                });
                Ok(consent_store::MergeOutcome {
                    records: sealed,
                    identities_moved: i64::try_from(moved).unwrap_or(i64::MAX),
                    revision,
                })
            }

            async fn merged_into(&self, tenant: &str, root: &str) -> Result<Vec<String>> {
                sqlx::query_scalar(
                    "SELECT subject_id FROM merged_subjects WHERE tenant_id = $1 AND merged_into = $2 \
                     ORDER BY subject_id",
                )
                .bind(tenant)
                .bind(root)
                .fetch_all(self.$reader())
                .await
                .map_err(db)
            }

            async fn merge_root(&self, tenant: &str, subject_id: &str) -> Result<Option<String>> {
                sqlx::query_scalar(MERGE_ROOT)
                .bind(tenant)
                .bind(subject_id)
                .fetch_optional(self.$reader())
                .await
                .map_err(db)
            }

            async fn list_identities(
                &self,
                tenant: &str,
                subject_id: &str,
            ) -> Result<Vec<consent_store::StoredIdentity>> {
                let rows = sqlx::query(&format!(
                    "SELECT {IDENTITY_COLUMNS} FROM subject_identities \
                     WHERE tenant_id = $1 AND subject_id = $2 ORDER BY revision"
                ))
                .bind(tenant)
                .bind(subject_id)
                .fetch_all(self.$reader())
                .await
                .map_err(db)?;
                rows.iter().map(identity_from_row).collect()
            }
        }
    };
}
