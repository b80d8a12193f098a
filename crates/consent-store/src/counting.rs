//! Test support: a [`Store`] in front of another that counts the calls it passes on, so a
//! test can prove how often a layer above reads the store (a batch reading each history
//! once, an authenticator caching unknown keys).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use consent_core::access::{ApiKey, Tenant};
use consent_core::commands::Idempotency;
use consent_core::{
    Catalog, NewEvent, PolicyVersion, Purpose, Result, SubjectState, Timestamp, Vendor,
};

use crate::{
    AccessStore, AppendOutcome, CacheFence, CatalogStore, Commit, Consistency, EventQuery,
    FenceRecord, LedgerHead, LedgerStore, Store, StoredEvent,
};

/// Counts calls by method name, then passes them to the store inside.
pub struct CountingStore {
    inner: Arc<dyn Store>,
    calls: Mutex<HashMap<&'static str, usize>>,
}

impl std::fmt::Debug for CountingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountingStore")
            .field("calls", &self.calls)
            .finish()
    }
}

impl CountingStore {
    /// Counts the calls to `inner`.
    pub fn new(inner: Arc<dyn Store>) -> CountingStore {
        CountingStore {
            inner,
            calls: Mutex::new(HashMap::new()),
        }
    }

    /// How many times `method` was called so far.
    pub fn calls(&self, method: &str) -> usize {
        self.calls
            .lock()
            .map(|c| c.get(method).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    fn count(&self, method: &'static str) -> &dyn Store {
        if let Ok(mut calls) = self.calls.lock() {
            *calls.entry(method).or_insert(0) += 1;
        }
        self.inner.as_ref()
    }
}

#[async_trait]
impl CatalogStore for CountingStore {
    async fn catalog(&self, tenant: &str, consistency: Consistency) -> Result<Catalog> {
        self.count("catalog").catalog(tenant, consistency).await
    }
    async fn upsert_purpose(&self, tenant: &str, purpose: &Purpose) -> Result<()> {
        self.count("upsert_purpose")
            .upsert_purpose(tenant, purpose)
            .await
    }
    async fn upsert_vendor(&self, tenant: &str, vendor: &Vendor) -> Result<()> {
        self.count("upsert_vendor")
            .upsert_vendor(tenant, vendor)
            .await
    }
    async fn publish_policy_version(
        &self,
        tenant: &str,
        policy: &PolicyVersion,
    ) -> Result<PolicyVersion> {
        self.count("publish_policy_version")
            .publish_policy_version(tenant, policy)
            .await
    }
}

#[async_trait]
impl LedgerStore for CountingStore {
    async fn append(
        &self,
        tenant: &str,
        events: &[NewEvent],
        idempotency: Option<&Idempotency>,
        fence: CacheFence,
    ) -> Result<AppendOutcome> {
        self.count("append")
            .append(tenant, events, idempotency, fence)
            .await
    }
    async fn cache_fences(&self, after: i64) -> Result<Vec<FenceRecord>> {
        self.count("cache_fences").cache_fences(after).await
    }
    async fn subject_state(
        &self,
        tenant: &str,
        subject_id: &str,
        as_of: Option<Timestamp>,
        consistency: Consistency,
    ) -> Result<SubjectState> {
        self.count("subject_state")
            .subject_state(tenant, subject_id, as_of, consistency)
            .await
    }
    async fn subject_history(&self, tenant: &str, subject_id: &str) -> Result<SubjectState> {
        self.count("subject_history")
            .subject_history(tenant, subject_id)
            .await
    }
    async fn list_events(&self, tenant: &str, query: &EventQuery) -> Result<Vec<StoredEvent>> {
        self.count("list_events").list_events(tenant, query).await
    }
    async fn head(&self, tenant: &str) -> Result<LedgerHead> {
        self.count("head").head(tenant).await
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Commit> {
        self.count("subscribe").subscribe()
    }
}

#[async_trait]
impl AccessStore for CountingStore {
    async fn create_tenant(&self, tenant: &Tenant) -> Result<()> {
        self.count("create_tenant").create_tenant(tenant).await
    }
    async fn get_tenant(&self, tenant_id: &str) -> Result<Option<Tenant>> {
        self.count("get_tenant").get_tenant(tenant_id).await
    }
    async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        self.count("list_tenants").list_tenants().await
    }
    async fn create_api_key(&self, key: &ApiKey) -> Result<()> {
        self.count("create_api_key").create_api_key(key).await
    }
    async fn find_api_key(&self, key_id: &str) -> Result<Option<ApiKey>> {
        self.count("find_api_key").find_api_key(key_id).await
    }
    async fn list_api_keys(&self, tenant_id: &str) -> Result<Vec<ApiKey>> {
        self.count("list_api_keys").list_api_keys(tenant_id).await
    }
    async fn revoke_api_key(&self, tenant_id: &str, key_id: &str, at: Timestamp) -> Result<ApiKey> {
        self.count("revoke_api_key")
            .revoke_api_key(tenant_id, key_id, at)
            .await
    }
}
