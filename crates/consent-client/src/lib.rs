//! Rust SDK for `consentd`, the consent ledger.
//!
//! [`ConsentClient`] holds one HTTP/2 channel (cheap to clone, safe to share across tasks)
//! and hands out the generated clients of the three services, plus shortcuts for the calls
//! product services make most. The wire types are re-exported as [`pb`].
//!
//! ```no_run
//! use consent_client::{ConsentClient, pb};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let client = ConsentClient::connect("http://127.0.0.1:50051")
//!     .await?
//!     .with_api_key("ck_0123456789abcdef_0123456789abcdef0123456789abcdef0123456789abcdef")?;
//!
//! // A person agrees, during a call, to be recorded.
//! let written = client
//!     .consent()
//!     .record_consent(pb::RecordConsentRequest {
//!         subject_id: "+32470000001".into(),
//!         decisions: vec![pb::PurposeDecision {
//!             purpose_id: "call_recording".into(),
//!             decision: pb::Decision::Granted.into(),
//!             ..Default::default()
//!         }],
//!         channel: pb::Channel::Voice.into(),
//!         evidence: Some(pb::Evidence { call_id: "call-42".into(), ..Default::default() }),
//!         idempotency_key: "call-42-recording".into(),
//!         ..Default::default()
//!     })
//!     .await?
//!     .into_inner();
//!
//! // Before recording the next call: may we? Read at least our own write.
//! let answer = client.check_at_least("+32470000001", "call_recording", written.revision).await?;
//! assert!(answer.allowed);
//! # Ok(())
//! # }
//! ```

use consent_proto::v1::admin_service_client::AdminServiceClient;
use consent_proto::v1::catalog_service_client::CatalogServiceClient;
use consent_proto::v1::consent_service_client::ConsentServiceClient;
use consent_proto::v1::retention_service_client::RetentionServiceClient;
use consent_proto::v1::subject_rights_service_client::SubjectRightsServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// The `consent.v1` wire types and generated clients.
pub use consent_proto::v1 as pb;

/// Why a client could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is not a valid URI (e.g. missing `http://`).
    #[error("invalid endpoint `{endpoint}`: {source}")]
    InvalidEndpoint {
        /// What was given.
        endpoint: String,
        /// Why it is invalid.
        source: tonic::transport::Error,
    },
    /// The API key cannot be sent as a header (it must be printable ASCII).
    #[error("the API key is not a valid header value")]
    InvalidApiKey,
    /// The server could not be reached.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// Where.
        endpoint: String,
        /// Why.
        source: tonic::transport::Error,
    },
}

/// Adds `authorization: Bearer <key>` to every call when a key is set.
#[derive(Clone, Debug, Default)]
pub struct BearerAuth {
    header: Option<MetadataValue<Ascii>>,
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

/// A connection to `consentd` with typed access to every service.
#[derive(Clone, Debug)]
pub struct ConsentClient {
    channel: Channel,
    auth: BearerAuth,
}

impl ConsentClient {
    /// Connects to `endpoint`, e.g. `http://127.0.0.1:50051`.
    pub async fn connect(endpoint: impl Into<String>) -> Result<ConsentClient, ClientError> {
        let endpoint = endpoint.into();
        let channel = Endpoint::from_shared(endpoint.clone())
            .map_err(|source| ClientError::InvalidEndpoint {
                endpoint: endpoint.clone(),
                source,
            })?
            .connect()
            .await
            .map_err(|source| ClientError::Connect { endpoint, source })?;
        Ok(ConsentClient::from_channel(channel))
    }

    /// Wraps an existing channel (custom TLS, timeouts or load balancing).
    pub fn from_channel(channel: Channel) -> ConsentClient {
        ConsentClient {
            channel,
            auth: BearerAuth::default(),
        }
    }

    /// The same connection, sending `key` (`ck_...`) as `authorization: Bearer <key>`.
    pub fn with_api_key(&self, key: &str) -> Result<ConsentClient, ClientError> {
        let header = MetadataValue::try_from(format!("Bearer {key}"))
            .map_err(|_| ClientError::InvalidApiKey)?;
        Ok(ConsentClient {
            channel: self.channel.clone(),
            auth: BearerAuth {
                header: Some(header),
            },
        })
    }

    /// `consent.v1.ConsentService`: record, withdraw, check, history.
    pub fn consent(&self) -> ConsentServiceClient<Transport> {
        ConsentServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `consent.v1.CatalogService`: purposes, vendors, policy versions.
    pub fn catalog(&self) -> CatalogServiceClient<Transport> {
        CatalogServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `consent.v1.RetentionService`: retention rules, data items, legal holds, due items,
    /// deletion attestations.
    pub fn retention(&self) -> RetentionServiceClient<Transport> {
        RetentionServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `consent.v1.SubjectRightsService`: restriction, objection, GPC.
    pub fn rights(&self) -> SubjectRightsServiceClient<Transport> {
        SubjectRightsServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `consent.v1.AdminService`: ledger verification, API keys.
    pub fn admin(&self) -> AdminServiceClient<Transport> {
        AdminServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// May `purpose_id` be processed for `subject_id` now?
    pub async fn check(
        &self,
        subject_id: &str,
        purpose_id: &str,
    ) -> Result<pb::CheckResponse, tonic::Status> {
        self.check_request(pb::CheckRequest {
            subject_id: subject_id.to_owned(),
            purpose_id: purpose_id.to_owned(),
            ..Default::default()
        })
        .await
    }

    /// As [`ConsentClient::check`], answered from data at least as new as `revision` (the
    /// revision a write returned): read-your-writes on any replica.
    pub async fn check_at_least(
        &self,
        subject_id: &str,
        purpose_id: &str,
        revision: i64,
    ) -> Result<pb::CheckResponse, tonic::Status> {
        self.check_request(pb::CheckRequest {
            subject_id: subject_id.to_owned(),
            purpose_id: purpose_id.to_owned(),
            consistency: Some(pb::Consistency {
                requirement: Some(pb::consistency::Requirement::AtLeastRevision(revision)),
            }),
            ..Default::default()
        })
        .await
    }

    /// Any check, as built by the caller (vendor, as-of time, consistency).
    pub async fn check_request(
        &self,
        request: pb::CheckRequest,
    ) -> Result<pb::CheckResponse, tonic::Status> {
        Ok(self.consent().check(request).await?.into_inner())
    }
}

/// Converts a system time to a wire timestamp (for `collected_at`, `at`, `published_at`).
///
/// ```
/// let t = consent_client::timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_millis(1500));
/// assert_eq!((t.seconds, t.nanos), (1, 500_000_000));
/// ```
pub fn timestamp(time: std::time::SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}
