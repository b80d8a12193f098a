//! Harness for the end-to-end tests in `tests/tests/`: a real `consentd` server (the same
//! `consent_server::server::serve` the binary runs) on a `127.0.0.1:0` listener, over a real
//! store, reached through `consent-client`.
//!
//! [`backends`] yields one server on a fresh SQLite file and, when
//! `CONSENT_TEST_DATABASE_URL` is set, one on a fresh PostgreSQL database, so every scenario
//! runs on both. Under `CI=true` a missing PostgreSQL URL fails the run.

use std::net::SocketAddr;
use std::sync::Arc;

use consent_client::{ConsentClient, pb};
use consent_core::access::{Scope, new_tenant};
use consent_core::catalog_file::{CatalogFile, parse_catalog_file};
use consent_server::config::{AuthMode, CacheConfig, Config};
use consent_server::convert;
use consent_server::ledger::new_api_key;
use consent_server::server::ServerSettings;
use consent_store::AccessStore;
use consent_store_sql::SqlStore;
use consent_store_sql::testing::{
    create_scratch_database, drop_scratch_database, postgres_test_url,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server and a client connected to it.
pub struct TestServer {
    /// Which backend (`sqlite` or `postgres`), for assertion messages.
    pub backend: &'static str,
    /// Where it listens.
    pub addr: SocketAddr,
    /// A connected client.
    pub client: ConsentClient,
    /// The ledger underneath (tests use it to bootstrap keys and to simulate faults).
    pub store: SqlStore,
    /// The cache's counters, when the server has a cache.
    pub cache_stats: Option<Arc<consent_cache::CacheStats>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
    scratch_database: Option<(String, String)>,
    url: String,
    settings: ServerSettings,
    cache: CacheConfig,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestServer({} at {})", self.backend, self.addr)
    }
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    panic!("test setup: {what}: {e}")
}

impl TestServer {
    /// A server without authentication on a fresh SQLite file.
    pub async fn sqlite() -> TestServer {
        Self::sqlite_with(ServerSettings::with_auth(AuthMode::None)).await
    }

    /// A server with `settings` and the default (in-process) cache on a fresh SQLite file.
    pub async fn sqlite_with(settings: ServerSettings) -> TestServer {
        let dir = tempfile::tempdir().unwrap_or_else(|e| fail("tempdir", e));
        let url = format!("sqlite://{}/consent.db", dir.path().display());
        Self::start("sqlite", &url, Some(dir), settings, CacheConfig::default()).await
    }

    /// A server with `settings` and the default cache on a scratch PostgreSQL database made
    /// from `admin_url` (dropped on stop).
    pub async fn postgres_with(admin_url: &str, settings: ServerSettings) -> TestServer {
        Self::postgres_with_cache(admin_url, settings, CacheConfig::default()).await
    }

    /// A server on a scratch PostgreSQL database reached through `127.0.0.1:port` (a
    /// [`consent_cache::testing::Relay`] to the real server, which a test can cut).
    pub async fn postgres_through(
        admin_url: &str,
        port: u16,
        settings: ServerSettings,
    ) -> TestServer {
        let (url, name) = create_scratch_database(admin_url)
            .await
            .unwrap_or_else(|e| fail("create scratch database", e));
        // postgres://user@host:port/db -> postgres://user@127.0.0.1:<port>/db
        let (scheme_user, rest) = url
            .split_once('@')
            .unwrap_or_else(|| fail("scratch url", "no @"));
        let path = rest.split_once('/').map_or("", |(_, p)| p);
        let relayed = format!("{scheme_user}@127.0.0.1:{port}/{path}");
        let mut server =
            Self::start("postgres", &relayed, None, settings, CacheConfig::default()).await;
        server.scratch_database = Some((admin_url.to_owned(), name));
        server
    }

    /// As [`TestServer::postgres_with`], with the given cache configuration.
    pub async fn postgres_with_cache(
        admin_url: &str,
        settings: ServerSettings,
        cache: CacheConfig,
    ) -> TestServer {
        let (url, name) = create_scratch_database(admin_url)
            .await
            .unwrap_or_else(|e| fail("create scratch database", e));
        let mut server = Self::start("postgres", &url, None, settings, cache).await;
        server.scratch_database = Some((admin_url.to_owned(), name));
        server
    }

    /// The store URL the server runs on (a SQLite file, or a scratch PostgreSQL database).
    pub fn store_url(&self) -> &str {
        &self.url
    }

    /// Creates `tenant` (if new) and a key for it with `scopes`, in the store directly, as
    /// `consentd keys create` does; returns a client that sends the key.
    pub async fn client_for(&self, tenant: &str, scopes: &[Scope]) -> ConsentClient {
        self.client
            .with_api_key(&self.create_key(tenant, scopes, None).await)
            .unwrap_or_else(|e| fail("api key", e))
    }

    /// Creates `tenant` (if new) and a key for it; returns the `ck_...` token.
    pub async fn create_key(
        &self,
        tenant: &str,
        scopes: &[Scope],
        expires_in_secs: Option<i64>,
    ) -> String {
        if self
            .store
            .get_tenant(tenant)
            .await
            .unwrap_or_else(|e| fail("get tenant", e))
            .is_none()
        {
            let t = new_tenant(tenant, "", consent_core::Timestamp::now())
                .unwrap_or_else(|e| fail("tenant", e));
            self.store
                .create_tenant(&t)
                .await
                .unwrap_or_else(|e| fail("create tenant", e));
        }
        let (key, token) = new_api_key(tenant, "test", scopes.to_vec(), expires_in_secs)
            .unwrap_or_else(|e| fail("issue key", e));
        self.store
            .create_api_key(&key)
            .await
            .unwrap_or_else(|e| fail("store key", e));
        token
    }

    async fn start(
        backend: &'static str,
        url: &str,
        dir: Option<tempfile::TempDir>,
        settings: ServerSettings,
        cache: CacheConfig,
    ) -> TestServer {
        // The production assembly: the configured ledger behind the configured cache.
        let mut config = Config::default();
        config.store.url = url.to_owned();
        config.cache = cache.clone();
        let stack = consent_server::stack::open(&config, true)
            .await
            .unwrap_or_else(|e| fail("open and migrate the store", e));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| fail("bind", e));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| fail("local_addr", e));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(consent_server::server::serve(
            settings.clone(),
            Arc::clone(&stack.store),
            listener,
            async move {
                let _ = rx.await;
            },
        ));
        // The listener is bound before serve starts, so connecting cannot race it.
        let client = ConsentClient::connect(format!("http://{addr}"))
            .await
            .unwrap_or_else(|e| fail("connect client", e));
        TestServer {
            backend,
            addr,
            client,
            store: stack.ledger,
            cache_stats: stack.cache_stats,
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
            scratch_database: None,
            url: url.to_owned(),
            settings,
            cache,
        }
    }

    /// A second server (a replica) on the same store, as another pod behind one Service.
    /// Stop it before the first.
    pub async fn replica(&self) -> TestServer {
        Self::start(
            self.backend,
            &self.url,
            None,
            self.settings.clone(),
            self.cache.clone(),
        )
        .await
    }

    /// Stops the server, waiting for in-flight RPCs.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => fail("server exited with an error", e),
                Err(e) => fail("server task panicked", e),
            }
        }
        self.store.close().await;
        if let Some((admin_url, name)) = self.scratch_database.take() {
            drop_scratch_database(&admin_url, &name)
                .await
                .unwrap_or_else(|e| fail("drop scratch database", e));
        }
    }
}

/// One server without authentication per available backend: SQLite always, PostgreSQL
/// when configured.
pub async fn backends() -> Vec<TestServer> {
    backends_with(ServerSettings::with_auth(AuthMode::None)).await
}

/// One server with `settings` per available backend.
pub async fn backends_with(settings: ServerSettings) -> Vec<TestServer> {
    let mut servers = vec![TestServer::sqlite_with(settings.clone()).await];
    if let Some(url) = postgres_test_url() {
        servers.push(TestServer::postgres_with(&url, settings).await);
    }
    servers
}

/// The seed catalogue, `examples/catalog/callnex.toml`.
pub fn seed_catalog() -> CatalogFile {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/catalog/callnex.toml"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| fail(path, e));
    parse_catalog_file(&text).unwrap_or_else(|e| fail("parse seed catalogue", e))
}

/// Applies the seed catalogue's retention defaults to `tenant` in the store, as
/// `consentd catalog apply` does (defaults are the operator's: no RPC sets them).
pub async fn apply_seed_retention(server: &TestServer, tenant: &str) {
    use consent_store::RetentionStore;
    server
        .store
        .apply_retention_defaults(tenant, &seed_catalog().retention)
        .await
        .unwrap_or_else(|e| fail("apply retention defaults", e));
}

/// Loads the seed catalogue through the CatalogService RPCs.
pub async fn apply_seed_catalog(client: &ConsentClient) {
    let file = seed_catalog();
    let mut catalog = client.catalog();
    for v in &file.vendors {
        catalog
            .upsert_vendor(pb::UpsertVendorRequest {
                vendor: Some(convert::vendor_out(v)),
            })
            .await
            .unwrap_or_else(|e| fail("upsert vendor", e));
    }
    for p in &file.purposes {
        catalog
            .upsert_purpose(pb::UpsertPurposeRequest {
                purpose: Some(convert::purpose_out(p)),
            })
            .await
            .unwrap_or_else(|e| fail("upsert purpose", e));
    }
    for p in &file.policy_versions {
        catalog
            .publish_policy_version(pb::PublishPolicyVersionRequest {
                policy_version: Some(convert::policy_out(p)),
            })
            .await
            .unwrap_or_else(|e| fail("publish policy version", e));
    }
}

/// A RecordConsent of one or more (purpose, decision) pairs on a channel.
pub fn record(
    subject: &str,
    decisions: &[(&str, pb::Decision)],
    channel: pb::Channel,
) -> pb::RecordConsentRequest {
    pb::RecordConsentRequest {
        subject_id: subject.into(),
        decisions: decisions
            .iter()
            .map(|(purpose, decision)| pb::PurposeDecision {
                purpose_id: (*purpose).into(),
                vendor_id: String::new(),
                decision: (*decision).into(),
            })
            .collect(),
        channel: channel.into(),
        ..Default::default()
    }
}

/// A time `days` before now, as a wire timestamp.
pub fn days_ago(days: u64) -> prost_types::Timestamp {
    consent_client::timestamp(
        std::time::SystemTime::now() - std::time::Duration::from_secs(days * 86_400),
    )
}

/// The fields named in a status's `google.rpc.BadRequest` detail.
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// The fields a rejected call named; panics if the call succeeded.
pub fn rejected_fields<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
) -> Vec<String> {
    match result {
        Ok(answer) => panic!("expected a rejection, got {answer:?}"),
        Err(status) => bad_fields(&status),
    }
}

/// A server in `api_key` mode with the seed catalogue, an all-scopes client of tenant
/// `acme`, and a `consent:read` client of the same tenant whose key the test can revoke.
#[derive(Debug)]
pub struct RevocableReader {
    /// The server.
    pub server: TestServer,
    /// A client of `acme` with every scope.
    pub admin: ConsentClient,
    /// A client of `acme` with `consent:read` only.
    pub reader: ConsentClient,
    key_id: String,
}

impl RevocableReader {
    /// Starts the server (SQLite) and makes both keys.
    pub async fn start() -> RevocableReader {
        let server = TestServer::sqlite_with(ServerSettings::with_auth(AuthMode::ApiKey)).await;
        let admin = server.client_for("acme", Scope::ALL).await;
        apply_seed_catalog(&admin).await;
        let token = server.create_key("acme", &[Scope::ConsentRead], None).await;
        let key_id = consent_core::access::parse_key(&token)
            .unwrap_or_else(|e| fail("token", e))
            .0
            .to_owned();
        let reader = server
            .client
            .with_api_key(&token)
            .unwrap_or_else(|e| fail("api key", e));
        RevocableReader {
            server,
            admin,
            reader,
            key_id,
        }
    }

    /// Revokes the reader's key through `AdminService.RevokeApiKey` (on this replica, so at
    /// once).
    pub async fn revoke(&self) {
        self.admin
            .admin()
            .revoke_api_key(pb::RevokeApiKeyRequest {
                key_id: self.key_id.clone(),
            })
            .await
            .unwrap_or_else(|e| fail("revoke", e));
    }
}

/// Grants `analytics` to each of `subjects` of `tenant`, in the ledger directly (fast: a
/// few thousand events per write), for tests that need many subjects.
pub async fn seed_grants(server: &TestServer, tenant: &str, subjects: &[String]) {
    use consent_store::{CacheFence, LedgerStore};
    for chunk in subjects.chunks(2000) {
        let events: Vec<consent_core::NewEvent> = chunk
            .iter()
            .map(|s| consent_core::NewEvent {
                id: consent_core::commands::new_event_id(),
                subject_id: s.clone(),
                purpose_id: "analytics".into(),
                vendor_id: String::new(),
                decision: consent_core::Decision::Granted,
                policy_version_id: "2025-05".into(),
                channel: consent_core::Channel::Web,
                collected_at: consent_core::Timestamp::now(),
                expires_at: None,
                evidence: consent_core::Evidence::default(),
                actor_key_id: "seed".into(),
            })
            .collect();
        server
            .store
            .append(tenant, &events, None, CacheFence::States)
            .await
            .unwrap_or_else(|e| fail("seed", e));
    }
}

/// Checks through the generated client, answering the raw status: for tests about what the
/// server answers (the SDK's typed methods retry and decode errors).
pub trait RawChecks {
    /// `Check` of `subject` and `purpose`, now.
    fn check_raw(
        &self,
        subject: &str,
        purpose: &str,
    ) -> impl std::future::Future<Output = Result<pb::CheckResponse, tonic::Status>> + Send;

    /// Any `Check`.
    fn check_request_raw(
        &self,
        request: pb::CheckRequest,
    ) -> impl std::future::Future<Output = Result<pb::CheckResponse, tonic::Status>> + Send;
}

impl RawChecks for ConsentClient {
    fn check_raw(
        &self,
        subject: &str,
        purpose: &str,
    ) -> impl std::future::Future<Output = Result<pb::CheckResponse, tonic::Status>> + Send {
        self.check_request_raw(pb::CheckRequest {
            subject_id: subject.to_owned(),
            purpose_id: purpose.to_owned(),
            ..Default::default()
        })
    }

    fn check_request_raw(
        &self,
        request: pb::CheckRequest,
    ) -> impl std::future::Future<Output = Result<pb::CheckResponse, tonic::Status>> + Send {
        let mut consent = self.consent();
        async move { Ok(consent.check(request).await?.into_inner()) }
    }
}
