//! [`ConsentClient`], its builder, and one typed method per unary RPC.

use std::time::Duration;

use consent_proto::v1 as pb;
use consent_proto::v1::admin_service_client::AdminServiceClient;
use consent_proto::v1::catalog_service_client::CatalogServiceClient;
use consent_proto::v1::consent_service_client::ConsentServiceClient;
use consent_proto::v1::identity_service_client::IdentityServiceClient;
use consent_proto::v1::retention_service_client::RetentionServiceClient;
use consent_proto::v1::subject_rights_service_client::SubjectRightsServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::{Error, RetryPolicy};

/// Adds `authorization: Bearer <key>` to every call when a key is set.
#[derive(Clone, Default)]
pub struct BearerAuth {
    header: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: say whether there is one, never what it is.
        f.debug_struct("BearerAuth")
            .field("key", &self.header.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Interceptor for BearerAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// The transport every generated client of this SDK runs on: the channel plus auth.
pub type Transport = InterceptedService<Channel, BearerAuth>;

/// TLS settings for [`ClientBuilder::tls`]: the CA that signed the server's certificate,
/// optionally the name to check it against and a client identity (mutual TLS).
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    ca_pem: Option<Vec<u8>>,
    domain: Option<String>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    /// TLS trusting the CA in `ca_pem` (PEM).
    pub fn with_ca(ca_pem: impl Into<Vec<u8>>) -> ClientTls {
        ClientTls {
            ca_pem: Some(ca_pem.into()),
            ..ClientTls::default()
        }
    }

    /// The name the server's certificate must carry (default: the URL's host).
    pub fn domain(mut self, domain: impl Into<String>) -> ClientTls {
        self.domain = Some(domain.into());
        self
    }

    /// A client certificate and its key (PEM), for servers that ask for one.
    pub fn identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> ClientTls {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    fn config(&self) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &self.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some(domain) = &self.domain {
            tls = tls.domain_name(domain.clone());
        }
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        tls
    }
}

/// Builds a [`ConsentClient`]: `ConsentClient::builder(url).api_key(..).tls(..).timeout(..)
/// .connect()`.
///
/// ```no_run
/// use std::time::Duration;
/// use consent_client::{ClientTls, ConsentClient, RetryPolicy};
///
/// # async fn example() -> Result<(), consent_client::Error> {
/// let client = ConsentClient::builder("https://consentd.internal:50051")
///     .api_key(std::env::var("CONSENT_API_KEY").unwrap_or_default())
///     .tls(ClientTls::with_ca(std::fs::read("ca.pem").unwrap_or_default()))
///     .timeout(Duration::from_millis(200))
///     .retry(RetryPolicy { max_attempts: 6, ..RetryPolicy::default() })
///     .connect()
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ClientBuilder {
    endpoint: String,
    api_key: Option<String>,
    tls: Option<ClientTls>,
    timeout: Option<Duration>,
    connect_timeout: Duration,
    retry: RetryPolicy,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("endpoint", &self.endpoint)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

impl ClientBuilder {
    /// Sends `key` (`ck_...`) as `authorization: Bearer <key>` on every call.
    pub fn api_key(mut self, key: impl Into<String>) -> ClientBuilder {
        self.api_key = Some(key.into());
        self
    }

    /// Connects over TLS (the URL should be `https://...`).
    pub fn tls(mut self, tls: ClientTls) -> ClientBuilder {
        self.tls = Some(tls);
        self
    }

    /// The deadline of every call (default: none; streams are not bounded by it). A call
    /// past it fails with [`Error::DeadlineExceeded`]; the server is told too.
    pub fn timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.timeout = Some(timeout);
        self
    }

    /// How long connecting may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.connect_timeout = timeout;
        self
    }

    /// How calls are retried when the service is unavailable (default
    /// [`RetryPolicy::default`]).
    pub fn retry(mut self, retry: RetryPolicy) -> ClientBuilder {
        self.retry = retry;
        self
    }

    fn endpoint(&self) -> Result<Endpoint, Error> {
        let mut endpoint = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| Error::Config(format!("invalid endpoint `{}`: {e}", self.endpoint)))?
            .connect_timeout(self.connect_timeout)
            // Small messages should leave at once (no Nagle delay on multi-segment writes).
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.config())
                .map_err(|e| Error::Config(format!("TLS settings: {e}")))?;
        }
        Ok(endpoint)
    }

    fn client(self, channel: Channel) -> Result<ConsentClient, Error> {
        let client = ConsentClient {
            channel,
            auth: BearerAuth::default(),
            retry: self.retry,
            timeout: self.timeout,
        };
        match &self.api_key {
            Some(key) => client.with_api_key(key),
            None => Ok(client),
        }
    }

    /// Connects now: an unreachable server is [`Error::Unavailable`].
    pub async fn connect(self) -> Result<ConsentClient, Error> {
        let channel = self
            .endpoint()?
            .connect()
            .await
            .map_err(|e| Error::Unavailable {
                message: format!("cannot connect to {}: {e}", self.endpoint),
                retry_after: None,
            })?;
        self.client(channel)
    }

    /// A client that connects on its first call (and reconnects after a failure): for
    /// services that start before `consentd` is up.
    pub fn connect_lazy(self) -> Result<ConsentClient, Error> {
        let channel = self.endpoint()?.connect_lazy();
        self.client(channel)
    }
}

/// A connection to `consentd`: one HTTP/2 channel (cheap to clone, safe to share across
/// tasks), typed methods for every RPC (deadline, retries and [`Error`]s included), and the
/// generated clients for anything else.
#[derive(Clone, Debug)]
pub struct ConsentClient {
    channel: Channel,
    auth: BearerAuth,
    retry: RetryPolicy,
    timeout: Option<Duration>,
}

impl ConsentClient {
    /// A builder for a client of `endpoint`, e.g. `http://127.0.0.1:50051`.
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            endpoint: endpoint.into(),
            api_key: None,
            tls: None,
            timeout: None,
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
        }
    }

    /// Connects to `endpoint` with the default settings (no key, no TLS, no deadline,
    /// [`RetryPolicy::default`]).
    pub async fn connect(endpoint: impl Into<String>) -> Result<ConsentClient, Error> {
        ConsentClient::builder(endpoint).connect().await
    }

    /// Wraps an existing channel (custom transport or load balancing), with the default
    /// settings.
    pub fn from_channel(channel: Channel) -> ConsentClient {
        ConsentClient {
            channel,
            auth: BearerAuth::default(),
            retry: RetryPolicy::default(),
            timeout: None,
        }
    }

    /// The same connection, sending `key` (`ck_...`) as `authorization: Bearer <key>`.
    pub fn with_api_key(&self, key: &str) -> Result<ConsentClient, Error> {
        let header = MetadataValue::try_from(format!("Bearer {key}")).map_err(|_| {
            Error::Config("the API key is not a valid header value (printable ASCII)".into())
        })?;
        Ok(ConsentClient {
            auth: BearerAuth {
                header: Some(header),
            },
            ..self.clone()
        })
    }

    /// The same connection with another retry policy.
    pub fn with_retry(&self, retry: RetryPolicy) -> ConsentClient {
        ConsentClient {
            retry,
            ..self.clone()
        }
    }

    /// The same connection with another per-call deadline (`None`: none), e.g. a tighter
    /// one for a hot path: `client.with_timeout(Some(Duration::from_millis(20))).check(..)`.
    pub fn with_timeout(&self, timeout: Option<Duration>) -> ConsentClient {
        ConsentClient {
            timeout,
            ..self.clone()
        }
    }

    /// The retry policy of this client.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// The generated `consent.v1.ConsentService` client (raw statuses, no retries).
    pub fn consent(&self) -> ConsentServiceClient<Transport> {
        ConsentServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// The generated `consent.v1.CatalogService` client.
    pub fn catalog(&self) -> CatalogServiceClient<Transport> {
        CatalogServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// The generated `consent.v1.RetentionService` client.
    pub fn retention(&self) -> RetentionServiceClient<Transport> {
        RetentionServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// The generated `consent.v1.SubjectRightsService` client.
    pub fn rights(&self) -> SubjectRightsServiceClient<Transport> {
        SubjectRightsServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// The generated `consent.v1.IdentityService` client: link a person's cookies, devices,
    /// phone numbers and accounts to one subject; every consent RPC then takes an
    /// `identity` in place of a `subject_id`.
    pub fn identities(&self) -> IdentityServiceClient<Transport> {
        IdentityServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// The generated `consent.v1.AdminService` client.
    pub fn admin(&self) -> AdminServiceClient<Transport> {
        AdminServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// A request with this client's deadline.
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(timeout) = self.timeout {
            request.set_timeout(timeout);
        }
        request
    }

    /// Whether `purpose_id` may be processed for `subject` (a subject id, or an identity of
    /// the person: [`crate::identity`]) now: `Ok(true)` only when the service says so. An
    /// error is never an allow.
    ///
    /// ```no_run
    /// # async fn example(client: consent_client::ConsentClient) -> Result<(), consent_client::Error> {
    /// use consent_client::identity;
    ///
    /// if client.allowed("+32470000001", "call_recording").await? {
    ///     // record the call
    /// }
    /// // A dialer asks by the number it is about to call, linked to the person's account.
    /// if client.allowed(identity::phone("+32 470 12 34 56"), "call_recording").await? {
    ///     // record the call
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn allowed(
        &self,
        subject: impl Into<crate::Subject>,
        purpose_id: &str,
    ) -> Result<bool, Error> {
        Ok(self
            .check(crate::Check::new(subject, purpose_id))
            .await?
            .allowed)
    }

    /// As [`ConsentClient::check`] of `subject` and `purpose_id`, answered from data at
    /// least as new as `revision` (one a write returned): read-your-writes on any replica.
    pub async fn check_at_least(
        &self,
        subject: impl Into<crate::Subject>,
        purpose_id: &str,
        revision: i64,
    ) -> Result<pb::CheckResponse, Error> {
        self.check(crate::Check::new(subject, purpose_id).at_least_revision(revision))
            .await
    }
}

/// Fills an empty idempotency key with a fresh one (UUIDv7), so every attempt of one
/// logical write carries the same key and the service applies it once.
fn ensure_key(key: &mut String) {
    if key.is_empty() {
        *key = format!("sdk-{}", uuid::Uuid::now_v7());
    }
}

/// One typed method per unary RPC. The retry class says when a call may be retried on
/// `UNAVAILABLE`: `read` always; `idempotent` (writes a repeat cannot apply twice: upserts,
/// replays, "already erased") always; `keyed` after giving the request an idempotency key;
/// `once` never (each call makes something new).
macro_rules! unary_rpcs {
    ($(
        $(#[$doc:meta])*
        $name:ident: $service:ident.$method:ident($req:ident) -> $resp:ident, $class:ident;
    )*) => {
        impl ConsentClient {
            $(
                $(#[$doc])*
                pub async fn $name(&self, request: impl Into<pb::$req>) -> Result<pb::$resp, Error> {
                    #[allow(unused_mut)]
                    let mut request: pb::$req = request.into();
                    let retry = unary_rpcs!(@prepare $class, request);
                    self.retry
                        .run(retry, || {
                            let mut raw = self.$service();
                            let request = self.request(request.clone());
                            async move {
                                raw.$method(request)
                                    .await
                                    .map(tonic::Response::into_inner)
                                    .map_err(Error::from)
                            }
                        })
                        .await
                }
            )*
        }
    };
    (@prepare read, $request:ident) => { true };
    (@prepare idempotent, $request:ident) => { true };
    (@prepare once, $request:ident) => { false };
    (@prepare keyed, $request:ident) => {{
        ensure_key(&mut $request.idempotency_key);
        true
    }};
}

unary_rpcs! {
    /// Records 1..256 purpose decisions of one subject as one atomic group of events
    /// (build it with [`crate::Record`]). Retried safely: the client gives the request an
    /// idempotency key when it has none.
    record_consent: consent.record_consent(RecordConsentRequest) -> RecordConsentResponse, keyed;
    /// Withdraws consent for some purposes or, with none named, everything (build it with
    /// [`crate::Withdraw`]). Retried safely, as [`ConsentClient::record_consent`].
    withdraw_consent: consent.withdraw_consent(WithdrawConsentRequest) -> WithdrawConsentResponse, keyed;
    /// Decides one check (build it with [`crate::Check`]).
    check: consent.check(CheckRequest) -> CheckResponse, read;
    /// Up to 10,000 checks in one call; results in request order.
    check_batch: consent.check_batch(CheckBatchRequest) -> CheckBatchResponse, read;
    /// The decision for every catalogued purpose of one subject.
    get_subject_state: consent.get_subject_state(GetSubjectStateRequest) -> GetSubjectStateResponse, read;
    /// One page of the proof history.
    list_events: consent.list_events(ListEventsRequest) -> ListEventsResponse, read;
    /// Creates or replaces a purpose.
    upsert_purpose: catalog.upsert_purpose(UpsertPurposeRequest) -> UpsertPurposeResponse, idempotent;
    /// One purpose.
    get_purpose: catalog.get_purpose(GetPurposeRequest) -> GetPurposeResponse, read;
    /// Every purpose of the tenant.
    list_purposes: catalog.list_purposes(ListPurposesRequest) -> ListPurposesResponse, read;
    /// Creates or replaces a vendor.
    upsert_vendor: catalog.upsert_vendor(UpsertVendorRequest) -> UpsertVendorResponse, idempotent;
    /// Every vendor of the tenant.
    list_vendors: catalog.list_vendors(ListVendorsRequest) -> ListVendorsResponse, read;
    /// Publishes a policy version (the same content again returns the stored one).
    publish_policy_version: catalog.publish_policy_version(PublishPolicyVersionRequest) -> PublishPolicyVersionResponse, idempotent;
    /// One policy version.
    get_policy_version: catalog.get_policy_version(GetPolicyVersionRequest) -> GetPolicyVersionResponse, read;
    /// Every policy version.
    list_policy_versions: catalog.list_policy_versions(ListPolicyVersionsRequest) -> ListPolicyVersionsResponse, read;
    /// Sets the retention rule of a data category (and campaign).
    set_retention_rule: retention.set_retention_rule(SetRetentionRuleRequest) -> SetRetentionRuleResponse, idempotent;
    /// The retention rules.
    list_retention_rules: retention.list_retention_rules(ListRetentionRulesRequest) -> ListRetentionRulesResponse, read;
    /// Registers a data item (the same facts again return it).
    register_data_item: retention.register_data_item(RegisterDataItemRequest) -> RegisterDataItemResponse, idempotent;
    /// One data item and its retention status.
    get_data_item: retention.get_data_item(GetDataItemRequest) -> GetDataItemResponse, read;
    /// Sets when an item's anchor event happened.
    update_anchor: retention.update_anchor(UpdateAnchorRequest) -> UpdateAnchorResponse, idempotent;
    /// Places a legal hold. Not retried: each call places another hold.
    set_legal_hold: retention.set_legal_hold(SetLegalHoldRequest) -> SetLegalHoldResponse, once;
    /// Releases a legal hold (a second release keeps the first time).
    release_legal_hold: retention.release_legal_hold(ReleaseLegalHoldRequest) -> ReleaseLegalHoldResponse, idempotent;
    /// The legal holds.
    list_legal_holds: retention.list_legal_holds(ListLegalHoldsRequest) -> ListLegalHoldsResponse, read;
    /// Items due for deletion.
    list_due_items: retention.list_due_items(ListDueItemsRequest) -> ListDueItemsResponse, read;
    /// Attests that an item was deleted (attesting again returns the first attestation).
    attest_deletion: retention.attest_deletion(AttestDeletionRequest) -> AttestDeletionResponse, idempotent;
    /// Restricts processing of a subject (GDPR Art. 18).
    restrict_processing: rights.restrict_processing(RestrictProcessingRequest) -> RestrictProcessingResponse, idempotent;
    /// Lifts a restriction.
    lift_restriction: rights.lift_restriction(LiftRestrictionRequest) -> LiftRestrictionResponse, idempotent;
    /// Records an objection (GDPR Art. 21).
    object: rights.object(ObjectRequest) -> ObjectResponse, idempotent;
    /// Withdraws objections.
    withdraw_objection: rights.withdraw_objection(WithdrawObjectionRequest) -> WithdrawObjectionResponse, idempotent;
    /// Sets or clears the Global Privacy Control signal.
    set_gpc: rights.set_gpc(SetGpcRequest) -> SetGpcResponse, idempotent;
    /// Erases a subject (GDPR Art. 17; a repeat answers `already_erased`).
    erase_subject: rights.erase_subject(EraseSubjectRequest) -> EraseSubjectResponse, idempotent;
    /// Links an identity (a cookie, a phone number...: [`crate::identity`]) to a subject; a
    /// retry answers `already_linked`, so it is retried.
    link_identity: identities.link_identity(LinkIdentityRequest) -> LinkIdentityResponse, idempotent;
    /// Unlinks an identity from a subject. Not retried: a repeat of an unlink that was
    /// applied answers NOT_FOUND.
    unlink_identity: identities.unlink_identity(UnlinkIdentityRequest) -> UnlinkIdentityResponse, once;
    /// The subject an identity stands for.
    resolve_identity: identities.resolve_identity(ResolveIdentityRequest) -> ResolveIdentityResponse, read;
    /// The identities linked to a subject.
    list_identities: identities.list_identities(ListIdentitiesRequest) -> ListIdentitiesResponse, read;
    /// Recomputes the tenant's hash chain.
    verify_ledger: admin.verify_ledger(VerifyLedgerRequest) -> VerifyLedgerResponse, read;
    /// Creates an API key (its secret is in the answer, once). Not retried: each call makes
    /// another key.
    create_api_key: admin.create_api_key(CreateApiKeyRequest) -> CreateApiKeyResponse, once;
    /// The tenant's API keys (without secrets).
    list_api_keys: admin.list_api_keys(ListApiKeysRequest) -> ListApiKeysResponse, read;
    /// Revokes an API key.
    revoke_api_key: admin.revoke_api_key(RevokeApiKeyRequest) -> RevokeApiKeyResponse, idempotent;
}
