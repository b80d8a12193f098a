//! Storage interfaces of the consent ledger.
//!
//! Two small traits, [`CatalogStore`] and [`LedgerStore`], and their union [`Store`]. Every
//! method takes the tenant first: no method can reach across tenants. Backends
//! (`consent-store-sql` for SQLite and PostgreSQL; the cache layer later) implement them and
//! prove they behave the same by running the shared [`conformance`] suite through
//! [`store_conformance_suite!`].
//!
//! The ledger is append-only: `append` links events into the tenant's hash chain and moves
//! the per-subject projection in one transaction; nothing updates or deletes an event.

use std::sync::Arc;

use async_trait::async_trait;
use consent_core::access::{ApiKey, Tenant};
use consent_core::chain::{ChainEntry, ChainKey, ChainVerifier, GENESIS, VerifyReport};
use consent_core::commands::Idempotency;
use consent_core::{
    Catalog, ConsentEvent, LedgerRecord, NewEvent, NewRecord, PolicyVersion, Purpose, Result,
    Revision, SubjectFlags, SubjectState, Timestamp, Vendor,
};

pub mod breaker;
pub mod conformance;
mod conformance_identity;
mod conformance_merge;
mod conformance_retention;
mod conformance_snapshot;
pub mod counting;
pub mod identity;
mod proxy;
pub mod retention;
pub mod snapshot;

pub use identity::{
    IdentityStore, LinkOutcome, MAX_IDENTITIES_PER_SUBJECT, Merge, MergeOutcome, MergeVia, NewLink,
    Resolution, StoredIdentity,
};
pub use retention::{
    Attested, DueQuery, ExpiredGrant, Registered, RetentionCounts, RetentionRules, RetentionStore,
    StoredHold, StoredItem, SweepMark,
};

/// How fresh a read must be. The ledger itself is always current and ignores it; a cache
/// in front of it (`consent-cache`) honours it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Any cached answer will do (a cache is kept coherent with writes).
    #[default]
    MinimizeLatency,
    /// Data at least as new as this revision (one a write returned): read your writes.
    AtLeast(Revision),
    /// Bypass every cache.
    Full,
}

/// Purposes, vendors and policy versions of a tenant.
#[async_trait]
pub trait CatalogStore: Send + Sync {
    /// The whole catalogue of `tenant` (empty when nothing was stored), with its version;
    /// shared, so a cache can hand out the same copy to every reader without cloning it.
    async fn catalog(&self, tenant: &str, consistency: Consistency) -> Result<Arc<Catalog>>;

    /// Creates or replaces a purpose.
    async fn upsert_purpose(&self, tenant: &str, purpose: &Purpose) -> Result<()>;

    /// Creates or replaces a vendor.
    async fn upsert_vendor(&self, tenant: &str, vendor: &Vendor) -> Result<()>;

    /// Publishes a policy version. Versions are immutable: publishing an existing id with
    /// the same content returns the stored version; with other content, `AlreadyExists`.
    async fn publish_policy_version(
        &self,
        tenant: &str,
        policy: &PolicyVersion,
    ) -> Result<PolicyVersion>;
}

/// What an append wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The events written, or on a replay the ones written the first time.
    pub events: Vec<ConsentEvent>,
    /// The tenant revision after the write (on a replay: after the original write).
    pub revision: Revision,
    /// Whether this was an idempotent replay of an earlier write.
    pub replayed: bool,
}

/// What a write of a subject's flags did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlagsOutcome {
    /// The records written (none when nothing changed).
    pub records: Vec<LedgerRecord>,
    /// The subject's flags after the write.
    pub flags: SubjectFlags,
    /// The tenant revision after the write.
    pub revision: Revision,
}

/// What an erasure did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErasureOutcome {
    /// The SUBJECT_ERASED record, or on a repeated erasure the first one's.
    pub record: LedgerRecord,
    /// Whether the subject had already been erased (nothing was written).
    pub already_erased: bool,
    /// Entries (consent events and ledger records) whose subject id was replaced.
    pub entries_erased: i64,
    /// The subject's data items that became due at the erasure.
    pub items_due: i64,
    /// The subject's data items kept because their category is kept under a legal
    /// obligation (its default is a minimum).
    pub items_kept: i64,
    /// The tenant revision after the erasure.
    pub revision: Revision,
}

/// The head of a tenant's chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedgerHead {
    /// The latest revision (0 before the first event).
    pub revision: Revision,
    /// The latest event's hash ([`GENESIS`] before the first event).
    pub hash: [u8; 32],
    /// How many subjects the tenant erased: an erasure renames entries below the head, so a
    /// reader that pages through the ledger while writes go on (a snapshot) checks it did
    /// not change under it.
    pub erasures: i64,
}

impl Default for LedgerHead {
    fn default() -> Self {
        LedgerHead {
            revision: 0,
            hash: GENESIS,
            erasures: 0,
        }
    }
}

/// A filter over a tenant's events, in revision order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only this subject.
    pub subject_id: Option<String>,
    /// Only these purposes (empty: every purpose). Subject-wide events (withdraw-all) and
    /// records without a purpose bear on every purpose, so a purpose filter keeps them.
    pub purpose_ids: Vec<String>,
    /// Only events collected at or after this time.
    pub collected_from: Option<Timestamp>,
    /// Only events collected before this time.
    pub collected_to: Option<Timestamp>,
    /// Only events after this revision (the paging cursor).
    pub after_revision: Revision,
    /// Only events at or before this revision.
    pub until_revision: Option<Revision>,
    /// At most this many events.
    pub limit: usize,
    /// Read in subject order instead of revision order: entries sorted by (subject id,
    /// revision), starting after this cursor, leaving out erased subject ids (`erased:...`).
    /// Subject ids compare byte for byte (UTF-8). For scans over every subject (snapshots)
    /// that page by subject; `after_revision` still applies.
    pub by_subject: Option<SubjectCursor>,
    /// Leave the evidence out (each event then has the default, empty evidence; whether it
    /// was erased is still told): for readers that only need the choices, such as the
    /// change feed, so a page's size does not depend on what the evidence holds.
    pub without_evidence: bool,
}

/// A position in a scan of the ledger in subject order: after this subject's entries up to
/// `revision` (`SubjectCursor::default()` is before every subject).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct SubjectCursor {
    /// The subject id.
    pub subject_id: String,
    /// The revision within the subject's entries.
    pub revision: Revision,
}

/// An event as read back, with whether its evidence was erased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// The event.
    pub event: ConsentEvent,
    /// Whether the evidence was erased (its digest stays in the chain).
    pub evidence_erased: bool,
}

/// A ledger record as read back, with whether its detail was erased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    /// The record.
    pub record: LedgerRecord,
    /// Whether the detail was erased (its digest stays in the chain).
    pub detail_erased: bool,
}

/// One entry of a tenant's ledger, in revision order: a consent event or a ledger record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerEntry {
    /// A consent choice.
    Event(Box<StoredEvent>),
    /// Another recorded fact (a deletion attestation...).
    Record(Box<StoredRecord>),
}

impl LedgerEntry {
    /// The entry's revision.
    pub fn revision(&self) -> Revision {
        match self {
            LedgerEntry::Event(e) => e.event.revision,
            LedgerEntry::Record(r) => r.record.revision,
        }
    }

    /// The entry as the chain verifier reads it.
    pub fn chain_entry(&self) -> ChainEntry<'_> {
        match self {
            LedgerEntry::Event(e) => ChainEntry::Event(&e.event, e.evidence_erased),
            LedgerEntry::Record(r) => ChainEntry::Record(&r.record, r.detail_erased),
        }
    }
}

/// Whether a write must also fence the tenant's cached states.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheFence {
    /// Nothing to fence: the shared cache was told of the write (or there is none).
    #[default]
    None,
    /// The shared cache could not be told of this write: record, in the same transaction,
    /// a fence at the write's revision, so that every replica stops trusting the tenant's
    /// cached states read before it (see [`FenceRecord`]).
    States,
    /// The shared cache was told, in the cache namespace `namespace`: if the ledger's
    /// namespace is another (rotated while the writer ran), the other replicas' caches were
    /// not told, so the store fences the write as for [`CacheFence::States`]. The ledger's
    /// namespace is read in the write's transaction, under a lock the rotation waits for.
    Told {
        /// The writer's cache namespace.
        namespace: NamespaceTag,
    },
}

/// A cache namespace as a fixed-size tag (its SHA-256, cut to 16 bytes), so a
/// [`CacheFence`] stays `Copy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NamespaceTag([u8; 16]);

impl NamespaceTag {
    /// The tag of `namespace`.
    pub fn of(namespace: &str) -> NamespaceTag {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(namespace.as_bytes());
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&digest[..16]);
        NamespaceTag(tag)
    }
}

/// The fence of one tenant: cached copies older than it must not be used. States are
/// fenced when a write could not reach the shared cache; catalogues by every catalogue
/// write. Fences only grow. Every store numbers fence changes with a sequence that follows
/// commit order, so a replica that polls [`LedgerStore::cache_fences`] after the last
/// sequence it saw misses none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FenceRecord {
    /// Position in the store's fence sequence.
    pub seq: i64,
    /// The tenant.
    pub tenant_id: String,
    /// A cached subject state read at a revision below this one is stale.
    pub revision: Revision,
    /// A cached catalogue with a version below this one is stale.
    pub catalog_version: i64,
}

/// The append-only consent ledger of each tenant and its projection.
#[async_trait]
pub trait LedgerStore: Send + Sync {
    /// Appends the events as one transaction: assigns revisions, links the hash chain,
    /// moves the projection, bumps the tenant revision, records the idempotency key and,
    /// when asked, the cache fence. A replay with the same key and fingerprint returns the
    /// original outcome and writes nothing (it changes no state, so it needs no fence); the
    /// same key with another fingerprint is `AlreadyExists`.
    async fn append(
        &self,
        tenant: &str,
        events: &[NewEvent],
        idempotency: Option<&Idempotency>,
        fence: CacheFence,
    ) -> Result<AppendOutcome>;

    /// Appends as [`LedgerStore::append`] does the events of a write that named its person by
    /// the identity `alias` (all of one subject), if that identity still stands for their
    /// subject in the write's transaction: linked to it, or, for the identity's implicit
    /// subject, linked to none. Otherwise (a link, unlink or merge committed since the
    /// identity was resolved, or the subject was closed by a merge) `Aborted`: resolve it
    /// again and retry. A replay of the same idempotency key is answered first.
    async fn append_by_identity(
        &self,
        tenant: &str,
        events: &[NewEvent],
        idempotency: Option<&Idempotency>,
        fence: CacheFence,
        alias: &consent_core::identity::AliasKey,
    ) -> Result<AppendOutcome>;

    /// Appends ledger records that change `subject_id`'s flags (restriction, objections,
    /// GPC: kinds for which `SubjectFlags::concerns` holds) and moves the subject's flags, in
    /// one transaction after the tenant's head, fencing as [`LedgerStore::append`] does.
    /// Records that would change nothing (a restriction already in place) are left out.
    async fn append_flags(
        &self,
        tenant: &str,
        subject_id: &str,
        records: Vec<NewRecord>,
        fence: CacheFence,
    ) -> Result<FlagsOutcome>;

    /// Appends as [`LedgerStore::append_flags`] does the flag records of a request that
    /// named its person by the identity `alias`, if that identity still stands for
    /// `subject_id` in the write's transaction (as [`LedgerStore::append_by_identity`]
    /// checks); otherwise `Aborted`.
    async fn append_flags_by_identity(
        &self,
        tenant: &str,
        subject_id: &str,
        records: Vec<NewRecord>,
        fence: CacheFence,
        alias: &consent_core::identity::AliasKey,
    ) -> Result<FlagsOutcome>;

    /// Erases `subject_id` (Art. 17) in one transaction after the tenant's head: appends
    /// `record` (kind `SubjectErased`; the store writes the subject's erased id in place of
    /// its subject), replaces the subject id on every entry of the chain by the digest the
    /// entry committed to and deletes their evidence and details, drops the subject's
    /// projections and flags, keeps an erased marker under its keyed digest (reads then
    /// give flags with `erased_since`), moves the subject's data items to the erased id and
    /// makes them due unless their category is kept by law, and refuses every later write
    /// for the subject with `FailedPrecondition`. Fences as [`LedgerStore::append`] does. A
    /// second erasure writes nothing and returns the first one's record.
    async fn erase_subject(
        &self,
        tenant: &str,
        subject_id: &str,
        record: NewRecord,
        fence: CacheFence,
    ) -> Result<ErasureOutcome>;

    /// Erases as [`LedgerStore::erase_subject`] does a subject a request named by the
    /// identity `alias`, if that identity still stands for `subject_id` in the erasure's
    /// transaction (as [`LedgerStore::append_by_identity`] checks); otherwise `Aborted`.
    async fn erase_subject_by_identity(
        &self,
        tenant: &str,
        subject_id: &str,
        record: NewRecord,
        fence: CacheFence,
        alias: &consent_core::identity::AliasKey,
    ) -> Result<ErasureOutcome>;

    /// The tenant's chain key ([`ChainKey::NONE`] before its first ledger write), for
    /// verification. Never leaves the service.
    async fn chain_key(&self, tenant: &str) -> Result<ChainKey>;

    /// Fences changed after sequence `after` (0: all), in sequence order.
    async fn cache_fences(&self, after: i64) -> Result<Vec<FenceRecord>>;

    /// The ledger's cache namespace: a random id a shared cache puts in every key, replaced
    /// by `consentd cache rotate-namespace` (after a restore or a copy of the database).
    /// `FailedPrecondition` on a database the migrations have not reached.
    async fn cache_namespace(&self) -> Result<String>;

    /// The subject's choices: the current projection when `as_of` is `None`, otherwise the
    /// latest choice per (purpose, vendor) collected at or before `as_of`. The returned
    /// revision is never newer than the data (it is read first).
    async fn subject_state(
        &self,
        tenant: &str,
        subject_id: &str,
        as_of: Option<Timestamp>,
        consistency: Consistency,
    ) -> Result<Arc<SubjectState>>;

    /// The current state of each of `subjects` (as [`LedgerStore::subject_state`] without
    /// `as_of`), in the order given, in as few round trips as the backend allows: a batch of
    /// checks over many subjects costs one query, not one per subject. Each state carries the
    /// revision it was read at.
    async fn subject_states(
        &self,
        tenant: &str,
        subjects: &[String],
        consistency: Consistency,
    ) -> Result<Vec<Arc<SubjectState>>>;

    /// Every choice the subject made, one entry per event in revision order, with the
    /// revision it was read at (read first). `decide` answers for any time from it (it takes
    /// the latest choice collected by then), so a batch reads a subject's history once
    /// however many as-of times it asks about.
    async fn subject_history(&self, tenant: &str, subject_id: &str) -> Result<SubjectState>;

    /// Events matching `query`, in revision order.
    async fn list_events(&self, tenant: &str, query: &EventQuery) -> Result<Vec<StoredEvent>>;

    /// Ledger records matching `query`, in revision order: the subject and revision filters
    /// as for events; the purpose filter keeps records of that purpose and records that name
    /// none (they bear on every purpose); the time filters apply to the record's `at`;
    /// `without_evidence` leaves the detail out.
    async fn list_records(&self, tenant: &str, query: &EventQuery) -> Result<Vec<StoredRecord>>;

    /// The tenant's chain head.
    async fn head(&self, tenant: &str) -> Result<LedgerHead>;

    /// Wake-ups for committed writes, from this process and (where the backend can tell)
    /// from other processes sharing the store. A wake-up is a hint to read the ledger, never
    /// the data itself: receivers that lag or miss one must re-read by revision.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Commit>;
}

/// A committed write: the tenant and the revision it reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// The tenant written to.
    pub tenant_id: String,
    /// Its revision after the write.
    pub revision: Revision,
}

/// Tenants and API keys.
#[async_trait]
pub trait AccessStore: Send + Sync {
    /// Creates a tenant; `AlreadyExists` if the id is taken.
    async fn create_tenant(&self, tenant: &Tenant) -> Result<()>;

    /// A tenant by id.
    async fn get_tenant(&self, tenant_id: &str) -> Result<Option<Tenant>>;

    /// Every tenant, ordered by id.
    async fn list_tenants(&self) -> Result<Vec<Tenant>>;

    /// Stores a new key; `NotFound` if its tenant does not exist.
    async fn create_api_key(&self, key: &ApiKey) -> Result<()>;

    /// A key by its id, whatever its tenant: for authentication only, which learns the
    /// tenant from the key.
    async fn find_api_key(&self, key_id: &str) -> Result<Option<ApiKey>>;

    /// The keys of one tenant, ordered by creation.
    async fn list_api_keys(&self, tenant_id: &str) -> Result<Vec<ApiKey>>;

    /// Revokes a key of `tenant_id` at `at` (a second revocation keeps the first time);
    /// `NotFound` if the tenant has no such key.
    async fn revoke_api_key(&self, tenant_id: &str, key_id: &str, at: Timestamp) -> Result<ApiKey>;
}

/// A full store: catalogue, ledger, tenants and keys, retention, identities.
pub trait Store: CatalogStore + LedgerStore + AccessStore + RetentionStore + IdentityStore {}

impl<T: CatalogStore + LedgerStore + AccessStore + RetentionStore + IdentityStore> Store for T {}

/// Events and records matching `query`, merged in revision order, at most `query.limit`
/// entries: what `ListEvents`, `Watch` and verification read. Both kinds are read with the
/// same limit and the merge stops where either read may have been cut short, so no entry is
/// skipped between pages.
pub async fn list_entries(
    store: &(impl LedgerStore + ?Sized),
    tenant: &str,
    query: &EventQuery,
) -> Result<Vec<LedgerEntry>> {
    let (events, records) = tokio::try_join!(
        store.list_events(tenant, query),
        store.list_records(tenant, query)
    )?;
    let full = |len: usize| len >= query.limit;
    // Entries beyond the last revision of a full read might hide unread ones of that kind.
    let bound = [
        full(events.len()).then(|| events.last().map(|e| e.event.revision)),
        full(records.len()).then(|| records.last().map(|r| r.record.revision)),
    ]
    .into_iter()
    .flatten()
    .flatten()
    .min();
    let mut merged: Vec<LedgerEntry> = events
        .into_iter()
        .map(|e| LedgerEntry::Event(Box::new(e)))
        .chain(
            records
                .into_iter()
                .map(|r| LedgerEntry::Record(Box::new(r))),
        )
        .filter(|e| bound.is_none_or(|b| e.revision() <= b))
        .collect();
    merged.sort_by_key(LedgerEntry::revision);
    merged.truncate(query.limit);
    Ok(merged)
}

/// How many events [`verify_ledger`] reads per page.
const VERIFY_PAGE: usize = 1000;

/// Recomputes a tenant's hash chain from the store, page by page, up to the head read first.
pub async fn verify_ledger(
    store: &(impl LedgerStore + ?Sized),
    tenant: &str,
) -> Result<(VerifyReport, LedgerHead)> {
    let head = store.head(tenant).await?;
    // Read after the head: a key set since applies only to revisions after it.
    let key = store.chain_key(tenant).await?;
    let mut verifier = ChainVerifier::new(tenant, key);
    let mut after = 0;
    while after < head.revision && !verifier.failed() {
        let page = list_entries(
            store,
            tenant,
            &EventQuery {
                after_revision: after,
                until_revision: Some(head.revision),
                limit: VERIFY_PAGE,
                ..EventQuery::default()
            },
        )
        .await?;
        let Some(last) = page.last() else { break };
        after = last.revision();
        for e in &page {
            verifier.push_entry(e.chain_entry());
        }
    }
    Ok((verifier.finish(head.revision, &head.hash), head))
}
