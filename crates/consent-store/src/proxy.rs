//! [`store_proxy!`](crate::store_proxy): implements the three store traits for a type that
//! wraps another [`Store`](crate::Store), sending every call through one method of its own,
//! `around`, which may count, guard or time the call. Layers written with it
//! ([`crate::counting::CountingStore`], [`crate::breaker::BreakerStore`]) state only what
//! they add.
//!
//! The wrapping type provides
//! `fn inner(&self) -> &dyn Store` and
//! `async fn around<T: Send>(&self, method: &'static str, call: impl Future<Output = Result<T>> + Send) -> Result<T>`.

/// Implements `CatalogStore`, `LedgerStore` and `AccessStore` for `$proxy` by calling
/// `self.around(method_name, self.inner().method(...))`. `subscribe` passes straight through.
#[macro_export]
macro_rules! store_proxy {
    ($proxy:ty) => {
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
