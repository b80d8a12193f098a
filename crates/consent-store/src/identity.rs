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

/// An identity's link as read, with the tenant revision read in the same statement: a
/// shared cache versions its copy by it, as it versions subject states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// The link, if the identity is linked.
    pub link: Option<StoredIdentity>,
    /// The tenant's revision when it was read.
    pub revision: Revision,
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

/// How the identity that asks for a merge stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MergeVia {
    /// Linked to the subject merged away (`merge=true`): it moves with that subject's other
    /// identities. If it is no longer linked there when the transaction runs,
    /// `FailedPrecondition` (it changed meanwhile).
    Linked(AliasKey),
    /// Not linked to any subject (`carry_choices=true`: its own, implicit subject is merged
    /// away): it is linked to the subject merged into. If it got linked meanwhile,
    /// `FailedPrecondition`.
    NewLink(NewLink),
}

/// A merge of `from` into `into`: one person found under two subject ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merge {
    /// The subject that stays and answers for both.
    pub into: String,
    /// The subject merged away: closed from the merge on.
    pub from: String,
    /// The identity whose link asked for it.
    pub via: MergeVia,
    /// The records to append: `SubjectsMerged` about `into` and about `from`, and for
    /// [`MergeVia::NewLink`] an `IdentityLinked` about `into`.
    pub records: Vec<NewRecord>,
}

/// What a merge did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeOutcome {
    /// The records appended, in ledger order; empty when `from` was already merged into
    /// `into` (a retry: nothing written).
    pub records: Vec<LedgerRecord>,
    /// The identities now linked to `into` that were linked to `from`.
    pub identities_moved: i64,
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

    /// The link of `alias`, if it is linked, and the tenant revision it was read at (one
    /// statement).
    async fn resolve_identity_at(&self, tenant: &str, alias: &AliasKey) -> Result<Resolution>;

    /// The link of `alias`, if it is linked.
    async fn resolve_identity(
        &self,
        tenant: &str,
        alias: &AliasKey,
    ) -> Result<Option<StoredIdentity>> {
        Ok(self.resolve_identity_at(tenant, alias).await?.link)
    }

    /// The identities linked to `subject_id`, in the order they were linked.
    async fn list_identities(&self, tenant: &str, subject_id: &str) -> Result<Vec<StoredIdentity>>;

    /// Merges `merge.from` into `merge.into` in one transaction after the tenant's head,
    /// fencing as [`crate::LedgerStore::append`] does:
    /// - `into`'s projection takes each of `from`'s choices that supersedes its own
    ///   (`StateEntry::supersedes`: the later collected; at the same time, the refusal), so
    ///   no withdrawal or denial of either side is lost; `into`'s flags absorb `from`'s
    ///   ([`consent_core::SubjectFlags::absorb`]);
    /// - `from`'s identities move to `into`, and subjects merged into `from` earlier now
    ///   count as merged into `into`;
    /// - `from` is closed: its flags name `into` (`merged_into`), and every later write
    ///   naming it is refused (`FailedPrecondition` naming `into`);
    /// - the records are appended.
    ///
    /// `from` already merged into `into`: writes nothing. Either subject erased or closed,
    /// the two the same, the identity not standing as `via` says, or `into` left with more
    /// than [`MAX_IDENTITIES_PER_SUBJECT`] identities: `FailedPrecondition`.
    async fn merge_subjects(
        &self,
        tenant: &str,
        merge: &Merge,
        fence: CacheFence,
    ) -> Result<MergeOutcome>;

    /// The subjects merged (directly or through others) into `root`, a subject not merged
    /// itself, ordered by id: the group `root` answers for.
    async fn merged_into(&self, tenant: &str, root: &str) -> Result<Vec<String>>;

    /// The subject that answers for `subject_id` if a merge closed it: the root of its
    /// group (read from the store, not a cache: a long chain of merges is one read).
    async fn merge_root(&self, tenant: &str, subject_id: &str) -> Result<Option<String>>;
}
