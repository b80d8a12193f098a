//! Storage of subject identities: which typed alias is linked to which subject (see
//! [`consent_core::identity`] for how an identity becomes its alias key).

use async_trait::async_trait;
use consent_core::chain::ChainKey;
use consent_core::identity::AliasKey;
use consent_core::{IdentityType, LedgerRecord, NewRecord, Result, Revision, Timestamp};

use crate::CacheFence;

/// The most identities one subject may have linked: `ListIdentities` answers them all in one
/// message, which stays far below the message limit (a link is at most about 400 bytes).
pub const MAX_IDENTITIES_PER_SUBJECT: i64 = 1_000;

/// An identity to link: its alias key, type, and value when the type is kept in clear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewLink {
    /// The keyed hash it is found by.
    pub alias: AliasKey,
    /// Its type.
    pub kind: IdentityType,
    /// The normalised value for the opaque types; `None` for phone numbers and emails.
    pub value: Option<String>,
}

/// A linked identity as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredIdentity {
    /// What was linked.
    pub link: NewLink,
    /// The subject it is linked to.
    pub subject_id: String,
    /// The revision of the ledger record that linked it.
    pub revision: Revision,
    /// When the ledger linked it.
    pub linked_at: Timestamp,
}

/// What a link or unlink did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkOutcome {
    /// The ledger record written; `None` when the identity was already linked to the subject
    /// (a retry: nothing written).
    pub record: Option<LedgerRecord>,
    /// The link as it now stands (as it stood, for an unlink).
    pub identity: StoredIdentity,
    /// The tenant revision after the write (the head, when nothing was written).
    pub revision: Revision,
}

/// The links of identities to subjects, written with their ledger records.
#[async_trait]
pub trait IdentityStore: Send + Sync {
    /// The tenant's chain key, giving the tenant its subject key first when it has none yet
    /// (it never wrote): identities are hashed with a key derived from it
    /// ([`consent_core::identity::IdentityKey::of`]) before any write, a `Check` by phone
    /// number included. Writes nothing to the ledger; the key never changes once given.
    async fn ensure_subject_key(&self, tenant: &str) -> Result<ChainKey>;

    /// Links `link` to `subject_id` and appends `record` (kind `IdentityLinked`, about
    /// `subject_id`) in one transaction after the tenant's head, fencing as
    /// [`crate::LedgerStore::append`] does. Already linked to `subject_id`: writes nothing.
    /// Linked to another subject: `FailedPrecondition` naming it. The subject erased, or
    /// already holding [`MAX_IDENTITIES_PER_SUBJECT`] identities: `FailedPrecondition`.
    async fn link_identity(
        &self,
        tenant: &str,
        subject_id: &str,
        link: &NewLink,
        record: NewRecord,
        fence: CacheFence,
    ) -> Result<LinkOutcome>;

    /// Unlinks the identity `alias` from `subject_id` and appends `record` (kind
    /// `IdentityUnlinked`) in one transaction, fencing likewise. `NotFound` when it is not
    /// linked to `subject_id`.
    async fn unlink_identity(
        &self,
        tenant: &str,
        subject_id: &str,
        alias: &AliasKey,
        record: NewRecord,
        fence: CacheFence,
    ) -> Result<LinkOutcome>;

    /// The link of `alias`, if it is linked.
    async fn resolve_identity(
        &self,
        tenant: &str,
        alias: &AliasKey,
    ) -> Result<Option<StoredIdentity>>;

    /// The identities linked to `subject_id`, in the order they were linked.
    async fn list_identities(&self, tenant: &str, subject_id: &str) -> Result<Vec<StoredIdentity>>;
}
