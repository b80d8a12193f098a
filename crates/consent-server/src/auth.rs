//! Authentication and authorisation, once per request, before any handler runs.
//!
//! [`AuthLayer`] wraps every gRPC service. It finds the scope the called method requires in
//! [`METHOD_SCOPES`] (a method missing from that table is refused: fail closed), checks the
//! `authorization: Bearer ck_...` key, and puts a [`Principal`] (tenant and key id) in the
//! request extensions, where handlers take the tenant from. Health and reflection are public.
//!
//! Keys are cached in memory for `auth.key_cache_ttl_secs` so authentication costs no store
//! round trip per RPC. A revocation takes effect at once on the replica that performed it
//! and within that TTL on the others.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use consent_core::Timestamp;
use consent_core::access::{ApiKey, KeyRejection, Scope, parse_key};
use consent_store::AccessStore;
use tonic::Status;
use tonic::body::Body;

use crate::config::AuthMode;
use crate::context::{DEFAULT_TENANT, Principal};
use crate::error::status;

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
    (
        "/consent.v1.ConsentService/GetSubjectState",
        Scope::ConsentRead,
    ),
    ("/consent.v1.ConsentService/ListEvents", Scope::ConsentRead),
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

/// Most keys kept in the cache; past it the cache is emptied (keys are re-read on demand).
const MAX_CACHED_KEYS: usize = 100_000;

/// Decides who a request comes from and whether it may call what it calls.
pub struct Authenticator {
    mode: AuthMode,
    store: Arc<dyn AccessStore>,
    ttl: Duration,
    cache: RwLock<HashMap<String, (ApiKey, Instant)>>,
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
    /// An authenticator in `mode`, reading keys from `store`, caching them for `ttl`.
    pub fn new(mode: AuthMode, store: Arc<dyn AccessStore>, ttl: Duration) -> Authenticator {
        Authenticator {
            mode,
            store,
            ttl,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Drops a cached key (after a revocation on this replica).
    pub fn forget(&self, key_id: &str) {
        if let Ok(mut cache) = self.cache.write() {
            cache.remove(key_id);
        }
    }

    async fn key(&self, key_id: &str) -> Result<Option<ApiKey>, Status> {
        if let Ok(cache) = self.cache.read()
            && let Some((key, fetched)) = cache.get(key_id)
            && fetched.elapsed() < self.ttl
        {
            return Ok(Some(key.clone()));
        }
        let key = self.store.find_api_key(key_id).await.map_err(status)?;
        if let (Some(key), Ok(mut cache)) = (&key, self.cache.write()) {
            if cache.len() >= MAX_CACHED_KEYS {
                cache.clear();
            }
            cache.insert(key_id.to_owned(), (key.clone(), Instant::now()));
        }
        Ok(key)
    }

    /// The caller of a request to `path`, or the status refusing it. `None` for public
    /// methods, which carry no principal.
    pub async fn authorize(
        &self,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Result<Option<Principal>, Status> {
        if PUBLIC_SERVICES.iter().any(|p| path.starts_with(p)) {
            return Ok(None);
        }
        if self.mode == AuthMode::None {
            return Ok(Some(Principal {
                tenant_id: DEFAULT_TENANT.to_owned(),
                key_id: String::new(),
            }));
        }
        let header = headers
            .get(http::header::AUTHORIZATION)
            .ok_or_else(|| unauthenticated("no API key"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| unauthenticated("the authorization header is not `Bearer <key>`"))?;
        let (key_id, secret) = parse_key(token.trim()).map_err(unauthenticated)?;
        let key = self
            .key(key_id)
            .await?
            .ok_or_else(|| unauthenticated(KeyRejection::Invalid))?;
        key.verify(secret, Timestamp::now())
            .map_err(unauthenticated)?;
        let Some(scope) = required_scope(path) else {
            return Err(Status::permission_denied(format!("no scope grants {path}")));
        };
        if !key.allows(scope) {
            return Err(status_for_scope(&key, scope));
        }
        Ok(Some(Principal {
            tenant_id: key.tenant_id,
            key_id: key.key_id,
        }))
    }
}

fn status_for_scope(key: &ApiKey, scope: Scope) -> Status {
    Status::permission_denied(format!(
        "API key `{}` lacks the `{scope}` scope this method requires",
        key.key_id
    ))
}

/// Tower layer that runs [`Authenticator::authorize`] before the wrapped service.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer over `auth`.
    pub fn new(auth: Arc<Authenticator>) -> AuthLayer {
        AuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: Arc::clone(&self.auth),
        }
    }
}

/// The service [`AuthLayer`] produces.
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S> tower::Service<http::Request<Body>> for AuthService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The clone is not ready; keep the ready one for this call (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = Arc::clone(&self.auth);
        Box::pin(async move {
            match auth
                .authorize(request.uri().path(), request.headers())
                .await
            {
                Ok(principal) => {
                    if let Some(principal) = principal {
                        request.extensions_mut().insert(principal);
                    }
                    inner.call(request).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

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
