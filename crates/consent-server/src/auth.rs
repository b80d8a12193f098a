//! Authentication and authorisation, once per request, before any handler runs.
//!
//! [`AuthGate`] stands in front of every gRPC service (in a [`crate::gate::GateLayer`]). It
//! finds the scope the called method requires in [`METHOD_SCOPES`] (a method missing from
//! that table is refused: fail closed), checks the `authorization: Bearer ck_...` key, and
//! puts a [`Principal`] (tenant and key id) in the request extensions, where handlers take
//! the tenant from. Health and reflection are public.
//!
//! Keys are cached in memory for `auth.key_cache_ttl_secs` so authentication costs no store
//! round trip per RPC. A revocation takes effect at once on the replica that performed it
//! and within that TTL on the others.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use consent_core::Timestamp;
use consent_core::access::{ApiKey, KeyRejection, Scope, parse_key};
use consent_store::AccessStore;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tonic::Status;
use tonic::body::Body;
use tonic_types::{ErrorDetails, StatusExt};

use crate::config::{AuthMode, LimitsConfig};
use crate::context::{DEFAULT_TENANT, Principal};
use crate::error::status;
use crate::metrics::{AuthFailure, Metrics};

/// The scope each RPC requires. Every method of every `consent.v1` service must be here; a
/// unit test compares this table with the compiled API.
pub const METHOD_SCOPES: &[(&str, Scope)] = &[
    (
        "/consent.v1.ConsentService/RecordConsent",
        Scope::ConsentWrite,
    ),
    (
        "/consent.v1.ConsentService/WithdrawConsent",
        Scope::ConsentWrite,
    ),
    ("/consent.v1.ConsentService/Check", Scope::ConsentRead),
    ("/consent.v1.ConsentService/CheckBatch", Scope::ConsentRead),
    ("/consent.v1.ConsentService/CheckStream", Scope::ConsentRead),
    (
        "/consent.v1.ConsentService/GetSubjectState",
        Scope::ConsentRead,
    ),
    ("/consent.v1.ConsentService/ListEvents", Scope::ConsentRead),
    ("/consent.v1.ConsentService/Watch", Scope::ConsentRead),
    (
        "/consent.v1.ConsentService/ExportSnapshot",
        Scope::ConsentRead,
    ),
    (
        "/consent.v1.CatalogService/UpsertPurpose",
        Scope::CatalogWrite,
    ),
    ("/consent.v1.CatalogService/GetPurpose", Scope::ConsentRead),
    (
        "/consent.v1.CatalogService/ListPurposes",
        Scope::ConsentRead,
    ),
    (
        "/consent.v1.CatalogService/UpsertVendor",
        Scope::CatalogWrite,
    ),
    ("/consent.v1.CatalogService/ListVendors", Scope::ConsentRead),
    (
        "/consent.v1.CatalogService/PublishPolicyVersion",
        Scope::CatalogWrite,
    ),
    (
        "/consent.v1.CatalogService/GetPolicyVersion",
        Scope::ConsentRead,
    ),
    (
        "/consent.v1.CatalogService/ListPolicyVersions",
        Scope::ConsentRead,
    ),
    (
        "/consent.v1.RetentionService/SetRetentionRule",
        Scope::RetentionWrite,
    ),
    (
        "/consent.v1.RetentionService/ListRetentionRules",
        Scope::RetentionRead,
    ),
    (
        "/consent.v1.RetentionService/RegisterDataItem",
        Scope::RetentionWrite,
    ),
    (
        "/consent.v1.RetentionService/GetDataItem",
        Scope::RetentionRead,
    ),
    (
        "/consent.v1.RetentionService/UpdateAnchor",
        Scope::RetentionWrite,
    ),
    (
        "/consent.v1.RetentionService/SetLegalHold",
        Scope::RetentionWrite,
    ),
    (
        "/consent.v1.RetentionService/ReleaseLegalHold",
        Scope::RetentionWrite,
    ),
    (
        "/consent.v1.RetentionService/ListLegalHolds",
        Scope::RetentionRead,
    ),
    (
        "/consent.v1.RetentionService/ListDueItems",
        Scope::RetentionRead,
    ),
    (
        "/consent.v1.RetentionService/AttestDeletion",
        Scope::RetentionWrite,
    ),
    (
        "/consent.v1.SubjectRightsService/RestrictProcessing",
        Scope::RightsWrite,
    ),
    (
        "/consent.v1.SubjectRightsService/LiftRestriction",
        Scope::RightsWrite,
    ),
    (
        "/consent.v1.SubjectRightsService/Object",
        Scope::RightsWrite,
    ),
    (
        "/consent.v1.SubjectRightsService/WithdrawObjection",
        Scope::RightsWrite,
    ),
    (
        "/consent.v1.SubjectRightsService/SetGpc",
        Scope::RightsWrite,
    ),
    (
        "/consent.v1.SubjectRightsService/ExportSubject",
        Scope::RightsRead,
    ),
    (
        "/consent.v1.SubjectRightsService/EraseSubject",
        Scope::RightsWrite,
    ),
    (
        "/consent.v1.IdentityService/LinkIdentity",
        Scope::IdentityWrite,
    ),
    (
        "/consent.v1.IdentityService/UnlinkIdentity",
        Scope::IdentityWrite,
    ),
    (
        "/consent.v1.IdentityService/ResolveIdentity",
        Scope::IdentityRead,
    ),
    (
        "/consent.v1.IdentityService/ListIdentities",
        Scope::IdentityRead,
    ),
    ("/consent.v1.AdminService/VerifyLedger", Scope::Admin),
    ("/consent.v1.AdminService/CreateApiKey", Scope::Admin),
    ("/consent.v1.AdminService/ListApiKeys", Scope::Admin),
    ("/consent.v1.AdminService/RevokeApiKey", Scope::Admin),
];

/// Services anyone may call: probes and schema discovery.
const PUBLIC_SERVICES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// The scope `path` requires, if it is a known method.
pub fn required_scope(path: &str) -> Option<Scope> {
    METHOD_SCOPES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, s)| *s)
}

/// `RESOURCE_EXHAUSTED` saying `why`, with the wait in the message and as a
/// `google.rpc.RetryInfo` a client can honour.
fn retry_later(why: &str, wait: Duration) -> Status {
    Status::with_error_details(
        tonic::Code::ResourceExhausted,
        format!("{why}; retry in {} ms", wait.as_millis()),
        ErrorDetails::with_retry_info(Some(wait)),
    )
}

/// Most keys kept in the cache; past it the cache is emptied (keys are re-read on demand).
const MAX_CACHED_KEYS: usize = 100_000;
/// Most unknown key ids remembered; past it that list is emptied.
const MAX_UNKNOWN_KEYS: usize = 10_000;
/// Most client addresses tracked for failed authentications.
const MAX_TRACKED_PEERS: usize = 100_000;

/// Store lookups of key ids this replica has not seen lately, from all addresses together
/// (`limits.key_lookups_per_second`): an attacker rotating addresses cannot make the store
/// answer more than that, while keys already verified keep working from memory.
pub struct KeyLookupLimit {
    limiter: governor::DefaultDirectRateLimiter,
    clock: DefaultClock,
}

impl std::fmt::Debug for KeyLookupLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyLookupLimit")
    }
}

impl KeyLookupLimit {
    /// The limit the configuration asks for, or `None` when it is off.
    pub fn from_limits(limits: &LimitsConfig) -> Option<KeyLookupLimit> {
        let per_second = NonZeroU32::new(limits.key_lookups_per_second)?;
        Some(KeyLookupLimit {
            limiter: RateLimiter::direct(Quota::per_second(per_second)),
            clock: DefaultClock::default(),
        })
    }

    fn check(&self) -> Result<(), Status> {
        self.limiter.check().map_err(|not_until| {
            retry_later(
                "too many API keys to look up at once",
                not_until.wait_time_from(self.clock.now()),
            )
        })
    }
}

/// Failed authentications per client address (`limits.auth_failures_per_minute`): past
/// the rate, the address is refused for the wait the rate implies, before any key lookup,
/// so guessing keys costs the store nothing and gets nowhere fast.
pub struct FailedAuthLimit {
    limiter: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
    clock: DefaultClock,
    blocked: RwLock<HashMap<std::net::IpAddr, Instant>>,
}

impl std::fmt::Debug for FailedAuthLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FailedAuthLimit")
    }
}

impl FailedAuthLimit {
    /// The limit the configuration asks for, or `None` when it is off.
    pub fn from_limits(limits: &LimitsConfig) -> Option<FailedAuthLimit> {
        let per_minute = NonZeroU32::new(limits.auth_failures_per_minute)?;
        Some(FailedAuthLimit {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            clock: DefaultClock::default(),
            blocked: RwLock::new(HashMap::new()),
        })
    }

    /// `RESOURCE_EXHAUSTED` with a retry delay while `peer` is refused.
    fn check(&self, peer: std::net::IpAddr) -> Result<(), Status> {
        let until = self.blocked.read().ok().and_then(|b| b.get(&peer).copied());
        match until {
            Some(until) if until > Instant::now() => Err(retry_later(
                "too many failed authentications from this address",
                until - Instant::now(),
            )),
            _ => Ok(()),
        }
    }

    /// Counts a failed authentication of `peer`; past the rate, refuses it for a while.
    fn failed(&self, peer: std::net::IpAddr) {
        if let Err(not_until) = self.limiter.check_key(&peer) {
            let wait = not_until.wait_time_from(self.clock.now());
            if let Ok(mut blocked) = self.blocked.write() {
                if blocked.len() >= MAX_TRACKED_PEERS {
                    blocked.retain(|_, until| *until > Instant::now());
                }
                blocked.insert(peer, Instant::now() + wait);
            }
        }
    }
}

/// A per-key request rate (`limits.per_key_requests_per_minute`), enforced after
/// authentication so a key's tenant cannot starve others.
pub struct KeyRateLimit {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl std::fmt::Debug for KeyRateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyRateLimit")
    }
}

impl KeyRateLimit {
    /// The limit the configuration asks for, or `None` when it is off.
    pub fn from_limits(limits: &LimitsConfig) -> Option<KeyRateLimit> {
        let per_minute = NonZeroU32::new(limits.per_key_requests_per_minute)?;
        let burst = NonZeroU32::new(limits.per_key_burst).unwrap_or(per_minute);
        Some(KeyRateLimit {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
            clock: DefaultClock::default(),
        })
    }

    /// `RESOURCE_EXHAUSTED` with a retry delay when `key_id` is over its rate.
    fn check(&self, key_id: &str) -> Result<(), Status> {
        match self.limiter.check_key(&key_id.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => Err(retry_later(
                &format!("API key `{key_id}` is over its request rate"),
                not_until.wait_time_from(self.clock.now()),
            )),
        }
    }
}

/// Decides who a request comes from and whether it may call what it calls.
pub struct Authenticator {
    mode: AuthMode,
    store: Arc<dyn AccessStore>,
    ttl: Duration,
    cache: RwLock<HashMap<String, (ApiKey, Instant)>>,
    /// Key ids the store did not know, and when it said so (kept as long as known keys).
    unknown: RwLock<HashMap<String, Instant>>,
    rate: Option<KeyRateLimit>,
    failures: Option<FailedAuthLimit>,
    lookups: Option<KeyLookupLimit>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("ttl", &self.ttl)
            .finish()
    }
}

fn unauthenticated(why: impl std::fmt::Display) -> Status {
    Status::unauthenticated(format!(
        "{why}; send `authorization: Bearer ck_<key id>_<secret>`"
    ))
}

impl Authenticator {
    /// An authenticator in `mode`, reading keys from `store` and caching them (and the ids
    /// it does not know) for `ttl`, with the limits of `limits`: each key's request rate,
    /// each address's failed authentications, the replica's key lookups.
    pub fn new(
        mode: AuthMode,
        store: Arc<dyn AccessStore>,
        ttl: Duration,
        limits: &LimitsConfig,
    ) -> Authenticator {
        Authenticator {
            mode,
            store,
            ttl,
            cache: RwLock::new(HashMap::new()),
            unknown: RwLock::new(HashMap::new()),
            rate: KeyRateLimit::from_limits(limits),
            failures: FailedAuthLimit::from_limits(limits),
            lookups: KeyLookupLimit::from_limits(limits),
            metrics: Metrics::disabled(),
        }
    }

    /// Counts refusals in `metrics` (`consent.auth.failures`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Authenticator {
        self.metrics = metrics;
        self
    }

    /// Counts a refusal for `cause` and hands its status back.
    fn refuse(&self, cause: AuthFailure, status: Status) -> Status {
        self.metrics.auth_failure(cause);
        status
    }

    /// Drops a cached key (after a revocation on this replica).
    pub fn forget(&self, key_id: &str) {
        if let Ok(mut cache) = self.cache.write() {
            cache.remove(key_id);
        }
    }

    /// The key `key_id` names: from the cache (known keys and unknown ids), or from the
    /// store unless `lookup_refused` says why this request may not cost a lookup now.
    async fn key(
        &self,
        key_id: &str,
        lookup_refused: impl FnOnce() -> Result<(), Status>,
    ) -> Result<Option<ApiKey>, Status> {
        if let Ok(cache) = self.cache.read()
            && let Some((key, fetched)) = cache.get(key_id)
            && fetched.elapsed() < self.ttl
        {
            return Ok(Some(key.clone()));
        }
        if let Ok(unknown) = self.unknown.read()
            && unknown
                .get(key_id)
                .is_some_and(|asked| asked.elapsed() < self.ttl)
        {
            return Ok(None);
        }
        lookup_refused()?;
        let key = self.store.find_api_key(key_id).await.map_err(status)?;
        match &key {
            Some(key) => {
                if let Ok(mut cache) = self.cache.write() {
                    if cache.len() >= MAX_CACHED_KEYS {
                        cache.clear();
                    }
                    cache.insert(key_id.to_owned(), (key.clone(), Instant::now()));
                }
            }
            None => {
                if let Ok(mut unknown) = self.unknown.write() {
                    if unknown.len() >= MAX_UNKNOWN_KEYS {
                        unknown.clear();
                    }
                    unknown.insert(key_id.to_owned(), Instant::now());
                }
            }
        }
        Ok(key)
    }

    /// `RESOURCE_EXHAUSTED` (with a retry delay) when `who`'s key is over its request rate:
    /// for each request of a stream, which was counted once when it opened.
    pub fn rate_check(&self, who: &Principal) -> Result<(), Status> {
        match (&self.rate, self.mode) {
            (Some(rate), AuthMode::ApiKey) => rate.check(&who.key_id),
            _ => Ok(()),
        }
    }

    /// Whether `who`'s key still holds `scope` and is neither revoked nor expired, for a
    /// stream authorised when it opened and asked again at each message: a revocation on
    /// this replica is seen at once, one elsewhere within the key cache's TTL (as for new
    /// calls).
    pub async fn still_valid(&self, who: &Principal, scope: Scope) -> Result<(), Status> {
        if self.mode == AuthMode::None {
            return Ok(());
        }
        let key = self
            .key(&who.key_id, || Ok(()))
            .await?
            .ok_or_else(|| unauthenticated(KeyRejection::Invalid))?;
        key.usable_at(Timestamp::now()).map_err(unauthenticated)?;
        if !key.allows(scope) {
            return Err(status_for_scope(&key, scope));
        }
        Ok(())
    }

    /// The caller of a request to `path` from `peer`, or the status refusing it. `None`
    /// for public methods, which carry no principal.
    pub async fn authorize(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Option<Principal>, Status> {
        if PUBLIC_SERVICES.iter().any(|p| path.starts_with(p)) {
            return Ok(None);
        }
        if self.mode == AuthMode::None {
            return Ok(Some(Principal {
                tenant_id: DEFAULT_TENANT.to_owned(),
                key_id: String::new(),
                scopes: Scope::ALL.to_vec(),
            }));
        }
        let failures = self.failures.as_ref().zip(peer);
        // A key this replica verified recently is checked in memory, whatever the address
        // did (clients behind one NAT or ingress share it); only a store lookup is refused
        // to an address over its failure rate, or past the replica's lookup rate.
        let lookup_refused = || {
            if let Some((failures, peer)) = failures {
                failures.check(peer)?;
            }
            if let Some(lookups) = &self.lookups {
                lookups.check()?;
            }
            Ok(())
        };
        let key = self.authenticate(headers, lookup_refused).await;
        if let (Err(refused), Some((failures, peer))) = (&key, failures)
            && refused.code() == tonic::Code::Unauthenticated
        {
            failures.failed(peer);
        }
        let key = key?;
        // Every method served has a scope (a test holds the table to the services), so a
        // path without one is not served: UNIMPLEMENTED, as the router would say, and not a
        // refusal of the caller.
        let Some(scope) = required_scope(path) else {
            return Err(Status::unimplemented(format!(
                "{} is not a method of this server",
                path.escape_debug()
            )));
        };
        if !key.allows(scope) {
            return Err(self.refuse(AuthFailure::MissingScope, status_for_scope(&key, scope)));
        }
        if let Some(rate) = &self.rate {
            rate.check(&key.key_id)
                .map_err(|s| self.refuse(AuthFailure::KeyRateLimited, s))?;
        }
        Ok(Some(Principal {
            tenant_id: key.tenant_id,
            key_id: key.key_id,
            scopes: key.scopes,
        }))
    }

    /// The valid key the request presents.
    async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        lookup_refused: impl FnOnce() -> Result<(), Status>,
    ) -> Result<ApiKey, Status> {
        let rejected = |rejection: KeyRejection| {
            let cause = match rejection {
                KeyRejection::Malformed => AuthFailure::MalformedKey,
                KeyRejection::Invalid => AuthFailure::InvalidKey,
                KeyRejection::Revoked => AuthFailure::RevokedKey,
                KeyRejection::Expired => AuthFailure::ExpiredKey,
            };
            self.refuse(cause, unauthenticated(rejection))
        };
        let header = headers
            .get(http::header::AUTHORIZATION)
            .ok_or_else(|| self.refuse(AuthFailure::MissingKey, unauthenticated("no API key")))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| {
                self.refuse(
                    AuthFailure::MalformedKey,
                    unauthenticated("the authorization header is not `Bearer <key>`"),
                )
            })?;
        let (key_id, secret) = parse_key(token.trim()).map_err(rejected)?;
        let key = self
            .key(key_id, || {
                lookup_refused().map_err(|s| self.refuse(AuthFailure::LookupLimited, s))
            })
            .await?
            .ok_or_else(|| rejected(KeyRejection::Invalid))?;
        key.verify(secret, Timestamp::now()).map_err(rejected)?;
        Ok(key)
    }
}

fn status_for_scope(key: &ApiKey, scope: Scope) -> Status {
    Status::permission_denied(format!(
        "API key `{}` lacks the `{scope}` scope this method requires",
        key.key_id
    ))
}

/// The client's IP address, as tonic recorded it for the connection (plain or TLS).
fn peer_address(extensions: &http::Extensions) -> Option<std::net::IpAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|tls| tls.get_ref().remote_addr())
        })
        .map(|addr| addr.ip())
}

/// Refuses requests whose metadata (all headers, names and values) exceeds `max_bytes`,
/// with `RESOURCE_EXHAUSTED` naming the limit. (HTTP/2 itself stops far larger header
/// lists before they are read; see `server::serve`.)
fn check_metadata(headers: &http::HeaderMap, max_bytes: usize) -> Result<(), Status> {
    let total: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if total > max_bytes {
        return Err(Status::resource_exhausted(format!(
            "request metadata is {total} bytes; limits.max_metadata_bytes is {max_bytes}"
        )));
    }
    Ok(())
}

/// The gate in front of every service: checks the metadata size, runs
/// [`Authenticator::authorize`], and puts the [`Principal`] in the request extensions.
#[derive(Debug)]
pub struct AuthGate {
    auth: Arc<Authenticator>,
    max_metadata_bytes: usize,
}

impl AuthGate {
    /// A gate over `auth`, refusing metadata over `max_metadata_bytes`.
    pub fn new(auth: Arc<Authenticator>, max_metadata_bytes: usize) -> AuthGate {
        AuthGate {
            auth,
            max_metadata_bytes,
        }
    }
}

impl crate::gate::Gate for AuthGate {
    async fn admit(&self, mut request: http::Request<Body>) -> Result<http::Request<Body>, Status> {
        check_metadata(request.headers(), self.max_metadata_bytes)
            .map_err(|s| self.auth.refuse(AuthFailure::MetadataTooLarge, s))?;
        let peer = peer_address(request.extensions());
        let principal = self
            .auth
            .authorize(request.uri().path(), request.headers(), peer)
            .await?;
        if let Some(principal) = principal {
            // The request's `rpc` span (see `observe`) carries the tenant from here on.
            {
                use tracing_opentelemetry::OpenTelemetrySpanExt as _;
                tracing::Span::current().set_attribute("tenant", principal.tenant_id.clone());
            }
            request.extensions_mut().insert(principal);
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consent_store::counting::CountingStore;
    use prost::Message;

    /// A migrated SQLite ledger in `dir`.
    async fn ledger(dir: &tempfile::TempDir) -> consent_store_sql::SqlStore {
        let url = format!("sqlite://{}/keys.db", dir.path().display());
        let sql = consent_store_sql::SqlStore::connect(&url, &Default::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        sql.migrate().await.unwrap_or_else(|e| panic!("{e}"));
        sql
    }

    /// Request headers presenting `token`.
    fn bearer(token: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}")
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        );
        headers
    }

    /// A path no service serves is UNIMPLEMENTED for a valid key (not a refusal of the
    /// caller, and not counted as one).
    #[tokio::test]
    async fn a_method_not_served_is_unimplemented() {
        use consent_core::access::new_tenant;
        use consent_store::AccessStore as _;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let sql = ledger(&dir).await;
        let tenant = new_tenant("acme", "", Timestamp::now()).unwrap_or_else(|e| panic!("{e}"));
        sql.create_tenant(&tenant)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (key, token) = crate::ledger::new_api_key("acme", "ops", vec![Scope::Admin], None)
            .unwrap_or_else(|e| panic!("{e}"));
        sql.create_api_key(&key)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let auth = Authenticator::new(
            AuthMode::ApiKey,
            Arc::new(sql),
            Duration::from_secs(60),
            &LimitsConfig::default(),
        );
        let answer = auth
            .authorize("/consent.v1.ConsentService/Nope", &bearer(&token), None)
            .await;
        assert_eq!(
            answer.err().map(|s| s.code()),
            Some(tonic::Code::Unimplemented)
        );
    }

    /// Unknown key ids are remembered like known keys: guessing costs the store one query
    /// per id and TTL, not one per request.
    #[tokio::test]
    async fn unknown_keys_are_looked_up_once_per_ttl() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Arc::new(CountingStore::new(Arc::new(ledger(&dir).await)));
        let auth = Authenticator::new(
            AuthMode::ApiKey,
            store.clone(),
            Duration::from_secs(60),
            &LimitsConfig::default(),
        );
        let headers = bearer(&format!("ck_{}_{}", "ab".repeat(8), "0".repeat(64)));
        for _ in 0..5 {
            let refused = auth
                .authorize("/consent.v1.ConsentService/Check", &headers, None)
                .await;
            assert_eq!(
                refused.err().map(|s| s.code()),
                Some(tonic::Code::Unauthenticated)
            );
        }
        assert_eq!(store.calls("find_api_key"), 1);

        // Distinct unknown ids from anywhere: past the replica's lookup rate, refused
        // without a lookup.
        let limited = Authenticator::new(
            AuthMode::ApiKey,
            store.clone(),
            Duration::from_secs(60),
            &LimitsConfig {
                key_lookups_per_second: 2,
                ..LimitsConfig::default()
            },
        );
        let mut codes = Vec::new();
        for i in 0..5 {
            let headers = bearer(&format!("ck_{i:016x}_{}", "0".repeat(64)));
            let answer = limited
                .authorize("/consent.v1.ConsentService/Check", &headers, None)
                .await;
            codes.push(answer.err().map(|s| s.code()));
        }
        assert_eq!(
            &codes[..2],
            [Some(tonic::Code::Unauthenticated); 2],
            "{codes:?}"
        );
        assert_eq!(codes[4], Some(tonic::Code::ResourceExhausted), "{codes:?}");
        assert_eq!(store.calls("find_api_key"), 1 + 2);
    }

    /// Every method of the compiled `consent.v1` API has a scope, and the table names no
    /// method that does not exist. A new RPC without a scope fails here.
    #[test]
    fn every_rpc_has_exactly_one_scope() {
        let fds = prost_types::FileDescriptorSet::decode(consent_proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_else(|e| panic!("descriptor: {e}"));
        let mut methods = Vec::new();
        for file in fds.file.iter().filter(|f| f.package() == "consent.v1") {
            for service in &file.service {
                for method in &service.method {
                    methods.push(format!("/consent.v1.{}/{}", service.name(), method.name()));
                }
            }
        }
        methods.sort();
        let mut table: Vec<String> = METHOD_SCOPES.iter().map(|(p, _)| (*p).to_owned()).collect();
        table.sort();
        assert_eq!(methods, table);
    }
}
