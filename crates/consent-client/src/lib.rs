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
//! let client = ConsentClient::connect("http://127.0.0.1:50051").await?;
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
    /// The server could not be reached.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// Where.
        endpoint: String,
        /// Why.
        source: tonic::transport::Error,
    },
}

/// A connection to `consentd` with typed access to every service.
#[derive(Clone, Debug)]
pub struct ConsentClient {
    channel: Channel,
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
        Ok(ConsentClient { channel })
    }

    /// Wraps an existing channel (custom TLS, timeouts or load balancing).
    pub fn from_channel(channel: Channel) -> ConsentClient {
        ConsentClient { channel }
    }

    /// `consent.v1.ConsentService`: record, withdraw, check, history.
    pub fn consent(&self) -> ConsentServiceClient<Channel> {
        ConsentServiceClient::new(self.channel.clone())
    }

    /// `consent.v1.CatalogService`: purposes, vendors, policy versions.
    pub fn catalog(&self) -> CatalogServiceClient<Channel> {
        CatalogServiceClient::new(self.channel.clone())
    }

    /// `consent.v1.AdminService`: ledger verification.
    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
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
