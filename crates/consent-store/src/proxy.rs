//! [`store_proxy!`](crate::store_proxy): implements the three store traits for a type that
//! wraps another [`Store`](crate::Store), sending every call through one method of its own,
//! `around`, which may count, guard or time the call. Layers written with it
//! ([`crate::counting::CountingStore`], [`crate::breaker::BreakerStore`]) state only what
//! they add.
//!
//! The wrapping type provides
//! `fn inner(&self) -> &dyn Store` and
//! `async fn around<T: Send>(&self, method: &'static str, call: impl Future<Output = Result<T>> + Send) -> Result<T>`.

/// Implements `CatalogStore`, `LedgerStore`, `AccessStore`, `RetentionStore` and
/// `IdentityStore` for `$proxy`
/// by calling `self.around(method_name, self.inner().method(...))`. `subscribe` passes
/// straight through.
#[macro_export]
macro_rules! store_proxy {
    ($proxy:ty) => {
        $crate::retention_store_proxy!($proxy);
        $crate::identity_store_proxy!($proxy);

        #[async_trait::async_trait]
        impl $crate::CatalogStore for $proxy {
            async fn catalog(
                &self,
                tenant: &str,
                consistency: $crate::Consistency,
            ) -> consent_core::Result<std::sync::Arc<consent_core::Catalog>> {
                self.around("catalog", self.inner().catalog(tenant, consistency))
                    .await
            }
            async fn upsert_purpose(
                &self,
                tenant: &str,
                purpose: &consent_core::Purpose,
            ) -> consent_core::Result<()> {
                self.around(
                    "upsert_purpose",
                    self.inner().upsert_purpose(tenant, purpose),
                )
                .await
            }
            async fn upsert_vendor(
                &self,
                tenant: &str,
                vendor: &consent_core::Vendor,
            ) -> consent_core::Result<()> {
                self.around("upsert_vendor", self.inner().upsert_vendor(tenant, vendor))
                    .await
            }
            async fn publish_policy_version(
                &self,
                tenant: &str,
                policy: &consent_core::PolicyVersion,
            ) -> consent_core::Result<consent_core::PolicyVersion> {
                self.around(
                    "publish_policy_version",
                    self.inner().publish_policy_version(tenant, policy),
                )
                .await
            }
        }

        #[async_trait::async_trait]
        impl $crate::LedgerStore for $proxy {
            async fn append(
                &self,
                tenant: &str,
                events: &[consent_core::NewEvent],
                idempotency: Option<&consent_core::commands::Idempotency>,
                fence: $crate::CacheFence,
            ) -> consent_core::Result<$crate::AppendOutcome> {
                self.around(
                    "append",
                    self.inner().append(tenant, events, idempotency, fence),
                )
                .await
            }
            async fn append_by_identity(
                &self,
                tenant: &str,
                events: &[consent_core::NewEvent],
                idempotency: Option<&consent_core::commands::Idempotency>,
                fence: $crate::CacheFence,
                alias: &consent_core::identity::AliasKey,
            ) -> consent_core::Result<$crate::AppendOutcome> {
                self.around(
                    "append",
                    self.inner()
                        .append_by_identity(tenant, events, idempotency, fence, alias),
                )
                .await
            }
            async fn append_flags(
                &self,
                tenant: &str,
                subject_id: &str,
                records: Vec<consent_core::NewRecord>,
                fence: $crate::CacheFence,
            ) -> consent_core::Result<$crate::FlagsOutcome> {
                self.around(
                    "append_flags",
                    self.inner()
                        .append_flags(tenant, subject_id, records, fence),
                )
                .await
            }
            async fn append_flags_by_identity(
                &self,
                tenant: &str,
                subject_id: &str,
                records: Vec<consent_core::NewRecord>,
                fence: $crate::CacheFence,
                alias: &consent_core::identity::AliasKey,
            ) -> consent_core::Result<$crate::FlagsOutcome> {
                self.around(
                    "append_flags",
                    self.inner()
                        .append_flags_by_identity(tenant, subject_id, records, fence, alias),
                )
                .await
            }
            async fn erase_subject(
                &self,
                tenant: &str,
                subject_id: &str,
                record: consent_core::NewRecord,
                fence: $crate::CacheFence,
            ) -> consent_core::Result<$crate::ErasureOutcome> {
                self.around(
                    "erase_subject",
                    self.inner()
                        .erase_subject(tenant, subject_id, record, fence),
                )
                .await
            }
            async fn erase_subject_by_identity(
                &self,
                tenant: &str,
                subject_id: &str,
                record: consent_core::NewRecord,
                fence: $crate::CacheFence,
                alias: &consent_core::identity::AliasKey,
            ) -> consent_core::Result<$crate::ErasureOutcome> {
                self.around(
                    "erase_subject",
                    self.inner()
                        .erase_subject_by_identity(tenant, subject_id, record, fence, alias),
                )
                .await
            }
            async fn chain_key(
                &self,
                tenant: &str,
            ) -> consent_core::Result<consent_core::chain::ChainKey> {
                self.around("chain_key", self.inner().chain_key(tenant))
                    .await
            }
            async fn cache_namespace(&self) -> consent_core::Result<String> {
                self.around("cache_namespace", self.inner().cache_namespace())
                    .await
            }
            async fn cache_fences(
                &self,
                after: i64,
            ) -> consent_core::Result<Vec<$crate::FenceRecord>> {
                self.around("cache_fences", self.inner().cache_fences(after))
                    .await
            }
            async fn subject_state(
                &self,
                tenant: &str,
                subject_id: &str,
                as_of: Option<consent_core::Timestamp>,
                consistency: $crate::Consistency,
            ) -> consent_core::Result<std::sync::Arc<consent_core::SubjectState>> {
                self.around(
                    "subject_state",
                    self.inner()
                        .subject_state(tenant, subject_id, as_of, consistency),
                )
                .await
            }
            async fn subject_states(
                &self,
                tenant: &str,
                subjects: &[String],
                consistency: $crate::Consistency,
            ) -> consent_core::Result<Vec<std::sync::Arc<consent_core::SubjectState>>> {
                self.around(
                    "subject_states",
                    self.inner().subject_states(tenant, subjects, consistency),
                )
                .await
            }
            async fn subject_history(
                &self,
                tenant: &str,
                subject_id: &str,
            ) -> consent_core::Result<consent_core::SubjectState> {
                self.around(
                    "subject_history",
                    self.inner().subject_history(tenant, subject_id),
                )
                .await
            }
            async fn list_events(
                &self,
                tenant: &str,
                query: &$crate::EventQuery,
            ) -> consent_core::Result<Vec<$crate::StoredEvent>> {
                self.around("list_events", self.inner().list_events(tenant, query))
                    .await
            }
            async fn list_records(
                &self,
                tenant: &str,
                query: &$crate::EventQuery,
            ) -> consent_core::Result<Vec<$crate::StoredRecord>> {
                self.around("list_records", self.inner().list_records(tenant, query))
                    .await
            }
            async fn head(&self, tenant: &str) -> consent_core::Result<$crate::LedgerHead> {
                self.around("head", self.inner().head(tenant)).await
            }
            fn subscribe(&self) -> tokio::sync::broadcast::Receiver<$crate::Commit> {
                self.inner().subscribe()
            }
        }

        #[async_trait::async_trait]
        impl $crate::AccessStore for $proxy {
            async fn create_tenant(
                &self,
                tenant: &consent_core::access::Tenant,
            ) -> consent_core::Result<()> {
                self.around("create_tenant", self.inner().create_tenant(tenant))
                    .await
            }
            async fn get_tenant(
                &self,
                tenant_id: &str,
            ) -> consent_core::Result<Option<consent_core::access::Tenant>> {
                self.around("get_tenant", self.inner().get_tenant(tenant_id))
                    .await
            }
            async fn list_tenants(
                &self,
            ) -> consent_core::Result<Vec<consent_core::access::Tenant>> {
                self.around("list_tenants", self.inner().list_tenants())
                    .await
            }
            async fn create_api_key(
                &self,
                key: &consent_core::access::ApiKey,
            ) -> consent_core::Result<()> {
                self.around("create_api_key", self.inner().create_api_key(key))
                    .await
            }
            async fn find_api_key(
                &self,
                key_id: &str,
            ) -> consent_core::Result<Option<consent_core::access::ApiKey>> {
                self.around("find_api_key", self.inner().find_api_key(key_id))
                    .await
            }
            async fn list_api_keys(
                &self,
                tenant_id: &str,
            ) -> consent_core::Result<Vec<consent_core::access::ApiKey>> {
                self.around("list_api_keys", self.inner().list_api_keys(tenant_id))
                    .await
            }
            async fn revoke_api_key(
                &self,
                tenant_id: &str,
                key_id: &str,
                at: consent_core::Timestamp,
            ) -> consent_core::Result<consent_core::access::ApiKey> {
                self.around(
                    "revoke_api_key",
                    self.inner().revoke_api_key(tenant_id, key_id, at),
                )
                .await
            }
        }
    };
}

/// Implements `RetentionStore` for `$proxy` as [`store_proxy!`](crate::store_proxy) does; on
/// its own for layers that only pass retention calls through (the cache: retention data is
/// never cached).
#[macro_export]
macro_rules! retention_store_proxy {
    ($proxy:ty) => {
        #[async_trait::async_trait]
        impl $crate::RetentionStore for $proxy {
            async fn apply_retention_defaults(
                &self,
                tenant: &str,
                defaults: &[consent_core::retention::RetentionDefault],
            ) -> consent_core::Result<()> {
                self.around(
                    "apply_retention_defaults",
                    self.inner().apply_retention_defaults(tenant, defaults),
                )
                .await
            }
            async fn set_retention_rule(
                &self,
                tenant: &str,
                rule: &consent_core::retention::RetentionRule,
            ) -> consent_core::Result<()> {
                self.around(
                    "set_retention_rule",
                    self.inner().set_retention_rule(tenant, rule),
                )
                .await
            }
            async fn retention_rules(
                &self,
                tenant: &str,
            ) -> consent_core::Result<$crate::RetentionRules> {
                self.around("retention_rules", self.inner().retention_rules(tenant))
                    .await
            }
            async fn register_item(
                &self,
                tenant: &str,
                item: &consent_core::retention::DataItem,
                now: consent_core::Timestamp,
            ) -> consent_core::Result<$crate::Registered> {
                self.around(
                    "register_item",
                    self.inner().register_item(tenant, item, now),
                )
                .await
            }
            async fn subject_items(
                &self,
                tenant: &str,
                subject_id: &str,
                after_item_id: &str,
                limit: usize,
            ) -> consent_core::Result<Vec<$crate::StoredItem>> {
                self.around(
                    "subject_items",
                    self.inner()
                        .subject_items(tenant, subject_id, after_item_id, limit),
                )
                .await
            }
            async fn data_item(
                &self,
                tenant: &str,
                item_id: &str,
            ) -> consent_core::Result<Option<$crate::StoredItem>> {
                self.around("data_item", self.inner().data_item(tenant, item_id))
                    .await
            }
            async fn update_anchor(
                &self,
                tenant: &str,
                item_id: &str,
                anchor_at: consent_core::Timestamp,
            ) -> consent_core::Result<$crate::StoredItem> {
                self.around(
                    "update_anchor",
                    self.inner().update_anchor(tenant, item_id, anchor_at),
                )
                .await
            }
            async fn place_legal_hold(
                &self,
                tenant: &str,
                hold: &$crate::StoredHold,
            ) -> consent_core::Result<()> {
                self.around(
                    "place_legal_hold",
                    self.inner().place_legal_hold(tenant, hold),
                )
                .await
            }
            async fn release_legal_hold(
                &self,
                tenant: &str,
                hold_id: &str,
                at: consent_core::Timestamp,
            ) -> consent_core::Result<$crate::StoredHold> {
                self.around(
                    "release_legal_hold",
                    self.inner().release_legal_hold(tenant, hold_id, at),
                )
                .await
            }
            async fn legal_holds(
                &self,
                tenant: &str,
                scope: Option<&consent_core::retention::HoldScope>,
                now: consent_core::Timestamp,
                after_hold_id: &str,
                limit: usize,
            ) -> consent_core::Result<Vec<$crate::StoredHold>> {
                self.around(
                    "legal_holds",
                    self.inner()
                        .legal_holds(tenant, scope, now, after_hold_id, limit),
                )
                .await
            }
            async fn holds_covering(
                &self,
                tenant: &str,
                item: &consent_core::retention::DataItem,
            ) -> consent_core::Result<Vec<$crate::StoredHold>> {
                self.around("holds_covering", self.inner().holds_covering(tenant, item))
                    .await
            }
            async fn due_items(
                &self,
                tenant: &str,
                query: &$crate::DueQuery,
            ) -> consent_core::Result<Vec<$crate::StoredItem>> {
                self.around("due_items", self.inner().due_items(tenant, query))
                    .await
            }
            async fn attest_deletion(
                &self,
                tenant: &str,
                item_id: &str,
                deleted_at: consent_core::Timestamp,
                record: consent_core::NewRecord,
            ) -> consent_core::Result<$crate::Attested> {
                self.around(
                    "attest_deletion",
                    self.inner()
                        .attest_deletion(tenant, item_id, deleted_at, record),
                )
                .await
            }
            async fn claim_sweep(
                &self,
                slot: i64,
                now: consent_core::Timestamp,
            ) -> consent_core::Result<bool> {
                self.around("claim_sweep", self.inner().claim_sweep(slot, now))
                    .await
            }
            async fn ledger_tenants(&self) -> consent_core::Result<Vec<String>> {
                self.around("ledger_tenants", self.inner().ledger_tenants())
                    .await
            }
            async fn sweep_mark(&self, tenant: &str) -> consent_core::Result<$crate::SweepMark> {
                self.around("sweep_mark", self.inner().sweep_mark(tenant))
                    .await
            }
            async fn expired_grants(
                &self,
                tenant: &str,
                after: &$crate::SweepMark,
                until: consent_core::Timestamp,
                limit: usize,
            ) -> consent_core::Result<Vec<$crate::ExpiredGrant>> {
                self.around(
                    "expired_grants",
                    self.inner().expired_grants(tenant, after, until, limit),
                )
                .await
            }
            async fn record_sweep(
                &self,
                tenant: &str,
                records: Vec<consent_core::NewRecord>,
                mark: &$crate::SweepMark,
            ) -> consent_core::Result<Vec<consent_core::LedgerRecord>> {
                self.around(
                    "record_sweep",
                    self.inner().record_sweep(tenant, records, mark),
                )
                .await
            }
            async fn mark_newly_due(
                &self,
                tenant: &str,
                now: consent_core::Timestamp,
            ) -> consent_core::Result<i64> {
                self.around("mark_newly_due", self.inner().mark_newly_due(tenant, now))
                    .await
            }
            async fn retention_counts(
                &self,
                tenant: &str,
                now: consent_core::Timestamp,
                overdue_by: consent_core::Timestamp,
            ) -> consent_core::Result<$crate::RetentionCounts> {
                self.around(
                    "retention_counts",
                    self.inner().retention_counts(tenant, now, overdue_by),
                )
                .await
            }
        }
    };
}

/// Implements `IdentityStore` for `$proxy` as [`store_proxy!`](crate::store_proxy) does; on
/// its own for layers that implement the other traits themselves.
#[macro_export]
macro_rules! identity_store_proxy {
    ($proxy:ty) => {
        #[async_trait::async_trait]
        impl $crate::IdentityStore for $proxy {
            async fn ensure_subject_key(
                &self,
                tenant: &str,
            ) -> consent_core::Result<consent_core::chain::ChainKey> {
                self.around(
                    "ensure_subject_key",
                    self.inner().ensure_subject_key(tenant),
                )
                .await
            }
            async fn link_identity(
                &self,
                tenant: &str,
                subject_id: &str,
                link: &$crate::NewLink,
                record: consent_core::NewRecord,
                fence: $crate::CacheFence,
            ) -> consent_core::Result<$crate::LinkOutcome> {
                self.around(
                    "link_identity",
                    self.inner()
                        .link_identity(tenant, subject_id, link, record, fence),
                )
                .await
            }
            async fn unlink_identity(
                &self,
                tenant: &str,
                subject_id: &str,
                alias: &consent_core::identity::AliasKey,
                record: consent_core::NewRecord,
                fence: $crate::CacheFence,
            ) -> consent_core::Result<$crate::LinkOutcome> {
                self.around(
                    "unlink_identity",
                    self.inner()
                        .unlink_identity(tenant, subject_id, alias, record, fence),
                )
                .await
            }
            async fn resolve_identity_at(
                &self,
                tenant: &str,
                alias: &consent_core::identity::AliasKey,
            ) -> consent_core::Result<$crate::Resolution> {
                self.around(
                    "resolve_identity",
                    self.inner().resolve_identity_at(tenant, alias),
                )
                .await
            }
            async fn list_identities(
                &self,
                tenant: &str,
                subject_id: &str,
            ) -> consent_core::Result<Vec<$crate::StoredIdentity>> {
                self.around(
                    "list_identities",
                    self.inner().list_identities(tenant, subject_id),
                )
                .await
            }
            async fn merge_subjects(
                &self,
                tenant: &str,
                merge: &$crate::Merge,
                fence: $crate::CacheFence,
            ) -> consent_core::Result<$crate::MergeOutcome> {
                self.around(
                    "merge_subjects",
                    self.inner().merge_subjects(tenant, merge, fence),
                )
                .await
            }
            async fn merged_into(
                &self,
                tenant: &str,
                root: &str,
            ) -> consent_core::Result<Vec<String>> {
                self.around("merged_into", self.inner().merged_into(tenant, root))
                    .await
            }
            async fn merge_root(
                &self,
                tenant: &str,
                subject_id: &str,
            ) -> consent_core::Result<Option<String>> {
                self.around("merge_root", self.inner().merge_root(tenant, subject_id))
                    .await
            }
        }
    };
}
