//! Rust SDK for `consentd`, the consent ledger.
//!
//! A product service guards a code path in five lines:
//!
//! ```no_run
//! # async fn record_the_call() {}
//! # async fn example() -> Result<(), consent_client::Error> {
//! use consent_client::ConsentClient;
//!
//! let consent = ConsentClient::builder("http://127.0.0.1:50051").api_key("ck_...").connect().await?;
//! if consent.allowed("+32470000001", "call_recording").await? {
//!     record_the_call().await;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! [`ConsentClient`] holds one HTTP/2 channel (cheap to clone, safe to share across tasks).
//! It has one typed method per RPC ([`ConsentClient::record_consent`],
//! [`ConsentClient::check`], [`ConsentClient::erase_subject`]...), each taking a builder
//! ([`Record`], [`Withdraw`], [`Check`]) or the wire request, with the client's deadline,
//! retries on `UNAVAILABLE` ([`RetryPolicy`]: writes only when a retry cannot apply them
//! twice; RecordConsent and WithdrawConsent get an idempotency key per logical write unless
//! the caller gives one) and typed [`Error`]s decoded from the rich status details.
//! Wherever a request names a person, a [`Subject`] goes: a subject id, or an identity of
//! the person ([`identity`]: a cookie, a phone number, an account) linked to it with
//! [`ConsentClient::link_identity`].
//! Pipelines use [`ConsentClient::filter_allowed`], [`ConsentClient::snapshot`] and
//! [`ConsentClient::watch`], which resume by themselves. With the `local-cache` feature,
//! `ConsentClient::local_cache` gives a client whose checks are answered in-process from
//! a cache kept current by `Watch`, within a documented staleness bound. The generated
//! clients stay
//! available ([`ConsentClient::consent`]...) for anything else; the wire types are [`pb`].
//!
//! ```no_run
//! use consent_client::{ConsentClient, Record, pb};
//!
//! # async fn example(client: ConsentClient) -> Result<(), consent_client::Error> {
//! // A person agrees, during a call, to be recorded.
//! let written = client
//!     .record_consent(
//!         Record::new("+32470000001")
//!             .grant("call_recording")
//!             .channel(pb::Channel::Voice)
//!             .evidence(pb::Evidence { call_id: "call-42".into(), ..Default::default() }),
//!     )
//!     .await?;
//! // Before recording the next call: may we? Read at least our own write, on any replica.
//! let answer = client.check_at_least("+32470000001", "call_recording", written.revision).await?;
//! assert!(answer.allowed);
//! # Ok(())
//! # }
//! ```

mod client;
mod error;
pub mod identity;
#[cfg(feature = "local-cache")]
mod local_cache;
mod pipeline;
mod requests;
mod retry;

pub use client::{BearerAuth, ClientBuilder, ClientTls, ConsentClient, Transport};
pub use error::{Error, FieldViolation};
#[cfg(feature = "local-cache")]
pub use local_cache::{LocalCache, LocalCacheOptions};
pub use pipeline::{FilterOptions, ResultStream, Snapshot};
pub use requests::{Check, Record, Subject, Withdraw};
pub use retry::RetryPolicy;

/// The `consent.v1` wire types and generated clients.
pub use consent_proto::v1 as pb;

/// Converts a system time to a wire timestamp (for `collected_at`, `at`, `published_at`).
///
/// ```
/// let t = consent_client::timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_millis(1500));
/// assert_eq!((t.seconds, t.nanos), (1, 500_000_000));
/// ```
pub fn timestamp(time: std::time::SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}
