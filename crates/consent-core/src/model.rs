//! Domain types of the ledger: catalogue entries, events and the state projected from them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::error::ConsentError;
use crate::time::Timestamp;

/// The tenant every query is scoped by.
pub type TenantId = String;

/// A monotonic number per tenant ledger; every event gets the next one.
pub type Revision = i64;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The stable lower-case name used in storage, files and hashes.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownName { kind: stringify!($name), name: s.to_owned() }),
                }
            }
        }
    };
}

/// A stored name that is not a known value of an enum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{name}`")]
pub struct UnknownName {
    /// The enum.
    pub kind: &'static str,
    /// The name that did not match.
    pub name: String,
}

string_enum! {
    /// The cookie-banner category of a purpose.
    PurposeCategory {
        /// Needed for the service asked for; no consent needed.
        StrictlyNecessary => "strictly_necessary",
        /// Enhanced features.
        Functional => "functional",
        /// Measurement (also called performance).
        Analytics => "analytics",
        /// Remembered preferences.
        Preference => "preference",
        /// Advertising, targeting, marketing outreach.
        Marketing => "marketing",
    }
}

string_enum! {
    /// The GDPR Art. 6(1) basis of a purpose.
    LegalBasis {
        /// (a) consent.
        Consent => "consent",
        /// (b) contract.
        Contract => "contract",
        /// (c) legal obligation.
        LegalObligation => "legal_obligation",
        /// (f) legitimate interest.
        LegitimateInterest => "legitimate_interest",
        /// (d) vital interest.
        VitalInterest => "vital_interest",
        /// (e) public task.
        PublicTask => "public_task",
    }
}

string_enum! {
    /// A person's choice.
    Decision {
        /// Agreed.
        Granted => "granted",
        /// Refused.
        Denied => "denied",
        /// Took back an earlier agreement.
        Withdrawn => "withdrawn",
    }
}

string_enum! {
    /// Where the choice was made.
    Channel {
        /// Web banner or preference centre.
        Web => "web",
        /// Mobile app.
        Mobile => "mobile",
        /// Voice call.
        Voice => "voice",
        /// Another system via the API.
        Api => "api",
        /// Bulk import.
        Import => "import",
        /// Operator on the person's documented request.
        Admin => "admin",
    }
}

string_enum! {
    /// Why a check answered as it did.
    Reason {
        /// A valid consent covers it.
        Granted => "granted",
        /// Nothing recorded: default deny.
        NoDecision => "no_decision",
        /// Refused.
        Denied => "denied",
        /// Withdrawn.
        Withdrawn => "withdrawn",
        /// Older than the purpose's validity.
        Expired => "expired",
        /// A material policy change since the consent.
        ReconsentRequired => "reconsent_required",
        /// The vendor was not covered by the consent.
        VendorNotCovered => "vendor_not_covered",
        /// Strictly necessary: allowed without consent.
        StrictlyNecessary => "strictly_necessary",
        /// Allowed on a contract.
        Contract => "contract",
        /// Allowed on a legal obligation.
        LegalObligation => "legal_obligation",
        /// Allowed on a legitimate interest.
        LegitimateInterest => "legitimate_interest",
        /// Allowed on a vital interest.
        VitalInterest => "vital_interest",
        /// Allowed on a public task.
        PublicTask => "public_task",
        /// The person restricted processing (GDPR Art. 18): denied unless strictly necessary.
        ProcessingRestricted => "processing_restricted",
        /// The person objected (Art. 21) to a purpose on legitimate interest or public task,
        /// or to marketing.
        Objected => "objected",
        /// Global Privacy Control / "do not sell or share": marketing purposes denied.
        GpcOptOut => "gpc_opt_out",
        /// The subject was erased (Art. 17): every purpose denied, whatever the time asked.
        SubjectErased => "subject_erased",
    }
}

/// A purpose of processing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purpose {
    /// Stable id, e.g. `analytics`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// What the processing does.
    pub description: String,
    /// Banner category.
    pub category: PurposeCategory,
    /// Legal basis.
    pub legal_basis: LegalBasis,
    /// Vendors the purpose shares data with.
    pub vendor_ids: Vec<String>,
    /// Consent validity in seconds; `None` means no expiry.
    pub validity_secs: Option<i64>,
}

/// A cookie set by a vendor or by the tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cookie {
    /// Cookie name.
    pub name: String,
    /// Setting domain.
    pub domain: String,
    /// Lifetime in seconds; `None` for a session cookie.
    pub duration_secs: Option<i64>,
    /// The purpose it serves.
    pub purpose_id: String,
}

/// A third party receiving data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vendor {
    /// Stable id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Cookies it sets.
    pub cookies: Vec<Cookie>,
}

/// A published notice version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersion {
    /// Stable id.
    pub id: String,
    /// Publication time.
    pub published_at: Timestamp,
    /// Purposes listed.
    pub purpose_ids: Vec<String>,
    /// Vendors listed.
    pub vendor_ids: Vec<String>,
    /// Whether earlier consents for `changed_purpose_ids` need renewal.
    pub material: bool,
    /// Purposes the material change affects.
    pub changed_purpose_ids: Vec<String>,
    /// Hex SHA-256 of the notice text, or empty.
    pub text_sha256: String,
}

/// Proof of a choice; personal data, erasable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Call id (voice).
    pub call_id: String,
    /// Recording id (voice).
    pub recording_id: String,
    /// Hex SHA-256 of the transcript passage.
    pub transcript_sha256: String,
    /// Hex SHA-256 of the notice text shown.
    pub notice_text_sha256: String,
    /// IP address.
    pub ip_address: String,
    /// User agent.
    pub user_agent: String,
    /// Further proof, sorted by key so its digest is stable.
    pub attributes: BTreeMap<String, String>,
}

impl Evidence {
    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        *self == Evidence::default()
    }
}

/// The part of an event the caller decides; the store assigns the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// Event id (UUIDv7), assigned before the write so retries are traceable.
    pub id: String,
    /// Subject.
    pub subject_id: String,
    /// Purpose.
    pub purpose_id: String,
    /// Vendor, or empty for the whole purpose.
    pub vendor_id: String,
    /// The choice.
    pub decision: Decision,
    /// Policy version seen.
    pub policy_version_id: String,
    /// Channel.
    pub channel: Channel,
    /// When the person chose.
    pub collected_at: Timestamp,
    /// When the consent lapses, if it does.
    pub expires_at: Option<Timestamp>,
    /// Proof.
    pub evidence: Evidence,
    /// The API key that wrote it, if any.
    pub actor_key_id: String,
}

/// An event as stored: immutable, hash-linked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentEvent {
    /// What the caller decided.
    pub event: NewEvent,
    /// When the ledger stored it.
    pub recorded_at: Timestamp,
    /// Its revision in the tenant ledger.
    pub revision: Revision,
    /// SHA-256 of the evidence's canonical form (kept after erasure).
    pub evidence_sha256: [u8; 32],
    /// Hash of the previous event in the tenant chain.
    pub prev_hash: [u8; 32],
    /// Hash of this event.
    pub hash: [u8; 32],
}

/// The purpose id of a *subject-wide* choice: a withdraw-all, which covers every purpose and
/// vendor of the subject, including purposes catalogued after it.
pub const SUBJECT_WIDE: &str = "";

/// The latest choice for one (subject, purpose, vendor): one row of the projection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateEntry {
    /// Purpose, or [`SUBJECT_WIDE`] for a choice covering every purpose.
    pub purpose_id: String,
    /// Vendor, or empty for the whole purpose.
    pub vendor_id: String,
    /// The choice.
    pub decision: Decision,
    /// The event that made it.
    pub event_id: String,
    /// Policy version seen.
    pub policy_version_id: String,
    /// When the person chose.
    pub collected_at: Timestamp,
    /// The event's revision (breaks ties of `collected_at`).
    pub revision: Revision,
}

impl StateEntry {
    /// The projection of one event.
    pub fn from_event(event: &ConsentEvent) -> StateEntry {
        StateEntry {
            purpose_id: event.event.purpose_id.clone(),
            vendor_id: event.event.vendor_id.clone(),
            decision: event.event.decision,
            event_id: event.event.id.clone(),
            policy_version_id: event.event.policy_version_id.clone(),
            collected_at: event.event.collected_at,
            revision: event.revision,
        }
    }

    /// Order of precedence between two choices for the same key: the later `collected_at`
    /// wins; at the same time (times compare in microseconds, so choices a few nanoseconds
    /// apart tie) a refusal or withdrawal wins over a grant; between equal kinds, the later
    /// revision. An imported older grant never overrides a newer withdrawal, and a tie never
    /// turns into an allow.
    pub fn supersedes(&self, other: &StateEntry) -> bool {
        (self.collected_at, self.restrictiveness(), self.revision)
            > (other.collected_at, other.restrictiveness(), other.revision)
    }

    /// 0 for a grant, 1 for a refusal or withdrawal: what breaks a tie of collection times.
    /// The SQL projection applies the same rule (`consent-store-sql`, `insert_event`).
    pub fn restrictiveness(&self) -> u8 {
        u8::from(self.decision != Decision::Granted)
    }
}

/// The rights a subject exercised that override consent, each with the time it took effect
/// (a check as of an earlier time is not bound by it). Projected from ledger records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubjectFlags {
    /// Processing restricted (Art. 18) since.
    pub restricted_since: Option<Timestamp>,
    /// Objections (Art. 21): purpose id -> since; the empty purpose id objects to every
    /// purpose an objection applies to.
    pub objections: BTreeMap<String, Timestamp>,
    /// Global Privacy Control (do not sell or share) since.
    pub gpc_since: Option<Timestamp>,
    /// Erased (Art. 17) at; nothing else is kept about an erased subject.
    pub erased_since: Option<Timestamp>,
    /// The subject this one was merged into: it is closed (writes naming it are refused)
    /// and its reads answer for that subject, whose state holds this one's choices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<String>,
    /// Other subjects were merged into this one: its projection holds their choices, and
    /// its history is read with theirs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub absorbed: bool,
}

impl SubjectFlags {
    /// True when no flag is set.
    pub fn is_empty(&self) -> bool {
        *self == SubjectFlags::default()
    }

    /// Whether the record changes flags (and so the subject's state).
    pub fn concerns(kind: RecordKind) -> bool {
        matches!(
            kind,
            RecordKind::ProcessingRestricted
                | RecordKind::RestrictionLifted
                | RecordKind::Objected
                | RecordKind::ObjectionWithdrawn
                | RecordKind::GpcSet
                | RecordKind::GpcCleared
        )
    }

    /// The flags after `record` (a flag already set keeps its first time).
    pub fn apply(&mut self, record: &NewRecord) {
        match record.kind {
            RecordKind::ProcessingRestricted => {
                self.restricted_since.get_or_insert(record.at);
            }
            RecordKind::RestrictionLifted => self.restricted_since = None,
            RecordKind::Objected => {
                self.objections
                    .entry(record.purpose_id.clone())
                    .or_insert(record.at);
            }
            RecordKind::ObjectionWithdrawn => {
                self.objections.remove(&record.purpose_id);
            }
            RecordKind::GpcSet => {
                self.gpc_since.get_or_insert(record.at);
            }
            RecordKind::GpcCleared => self.gpc_since = None,
            RecordKind::SubjectErased => {
                *self = SubjectFlags {
                    erased_since: Some(record.at),
                    ..SubjectFlags::default()
                };
            }
            RecordKind::DeletionAttested
            | RecordKind::ConsentExpired
            | RecordKind::RetentionSweep
            | RecordKind::IdentityLinked
            | RecordKind::IdentityUnlinked => {}
            // The record on the merged-away side closes it; the one on the other side says
            // it absorbed a subject (whose flags the store absorbed with it: a fold of
            // records alone must add them, see `consent_store::snapshot`).
            RecordKind::SubjectsMerged => match record.merged() {
                Some((into, from)) if from == record.subject_id => {
                    self.merged_into = Some(into.to_owned());
                }
                Some(_) => self.absorbed = true,
                None => {}
            },
        }
    }

    /// The flags of the subject `other` is merged into: each right exercised on either side
    /// stands (a restriction, an objection or a GPC signal from the earlier of the two
    /// times), so a merge never lifts one. `merged_into` is left as it was; `absorbed` is
    /// set.
    pub fn absorb(&mut self, other: &SubjectFlags) {
        fn earliest(mine: &mut Option<Timestamp>, theirs: Option<Timestamp>) {
            *mine = match (*mine, theirs) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        earliest(&mut self.restricted_since, other.restricted_since);
        earliest(&mut self.gpc_since, other.gpc_since);
        for (purpose, since) in &other.objections {
            let mine = self.objections.entry(purpose.clone()).or_insert(*since);
            *mine = (*mine).min(*since);
        }
        self.absorbed = true;
    }

    /// Whether processing is restricted at `at`.
    pub fn restricted_at(&self, at: Timestamp) -> bool {
        self.restricted_since.is_some_and(|since| since <= at)
    }

    /// Whether the subject objected, by `at`, to `purpose_id` (or to every purpose).
    pub fn objected_at(&self, purpose_id: &str, at: Timestamp) -> bool {
        [purpose_id, ""]
            .iter()
            .any(|p| self.objections.get(*p).is_some_and(|since| *since <= at))
    }

    /// Whether a GPC signal was in force at `at`.
    pub fn gpc_at(&self, at: Timestamp) -> bool {
        self.gpc_since.is_some_and(|since| since <= at)
    }
}

/// All projection rows of one subject, with the revision they were read at.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectState {
    /// One entry per (purpose, vendor) with a recorded choice.
    pub entries: Vec<StateEntry>,
    /// The tenant revision the state reflects.
    pub revision: Revision,
    /// The rights exercised (restriction, objections, GPC).
    #[serde(default)]
    pub flags: SubjectFlags,
}

impl SubjectState {
    /// The purpose-level entry and the vendor-specific entry (if `vendor_id` is non-empty).
    pub fn entries_for<'a>(
        &'a self,
        purpose_id: &'a str,
        vendor_id: &'a str,
    ) -> impl Iterator<Item = &'a StateEntry> + 'a {
        self.entries.iter().filter(move |e| {
            e.purpose_id == purpose_id && (e.vendor_id.is_empty() || e.vendor_id == vendor_id)
        })
    }

    /// The subject-wide entries (withdraw-all).
    pub fn subject_wide(&self) -> impl Iterator<Item = &StateEntry> {
        self.entries.iter().filter(|e| e.purpose_id == SUBJECT_WIDE)
    }

    /// Whether any entry was collected after `at` (so the projection is not the state at `at`).
    pub fn has_entries_after(&self, at: Timestamp) -> bool {
        self.entries.iter().any(|e| e.collected_at > at)
    }

    /// The state as of `at` from a history (every choice, any order): per (purpose, vendor),
    /// the choice collected at or before `at` that supersedes the others.
    pub fn as_of(&self, at: Timestamp) -> SubjectState {
        let mut latest: BTreeMap<(&str, &str), &StateEntry> = BTreeMap::new();
        for e in self.entries.iter().filter(|e| e.collected_at <= at) {
            let key = (e.purpose_id.as_str(), e.vendor_id.as_str());
            if latest.get(&key).is_none_or(|best| e.supersedes(best)) {
                latest.insert(key, e);
            }
        }
        SubjectState {
            entries: latest.into_values().cloned().collect(),
            revision: self.revision,
            flags: self.flags.clone(),
        }
    }
}

/// The catalogue a decision needs: purposes and policy versions of one tenant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Purposes by id.
    pub purposes: BTreeMap<String, Purpose>,
    /// Vendors by id.
    pub vendors: BTreeMap<String, Vendor>,
    /// Policy versions, oldest first.
    pub policy_versions: Vec<PolicyVersion>,
    /// Grows with every catalogue write of the tenant (0: never written); caches compare it
    /// so an older copy never replaces a newer one.
    pub version: i64,
}

impl Catalog {
    /// A policy version by id.
    pub fn policy_version(&self, id: &str) -> Option<&PolicyVersion> {
        self.policy_versions.iter().find(|p| p.id == id)
    }

    /// A purpose by id, or `NOT_FOUND`.
    pub fn require_purpose(&self, id: &str) -> Result<&Purpose, ConsentError> {
        self.purposes
            .get(id)
            .ok_or_else(|| ConsentError::not_found("purpose", id))
    }

    /// A vendor by id, or `NOT_FOUND`.
    pub fn require_vendor(&self, id: &str) -> Result<&Vendor, ConsentError> {
        self.vendors
            .get(id)
            .ok_or_else(|| ConsentError::not_found("vendor", id))
    }

    /// A policy version by id, or `NOT_FOUND`.
    pub fn require_policy_version(&self, id: &str) -> Result<&PolicyVersion, ConsentError> {
        self.policy_version(id)
            .ok_or_else(|| ConsentError::not_found("policy version", id))
    }

    /// The most recently published version at or before `at`.
    pub fn latest_policy_version(&self, at: Timestamp) -> Option<&PolicyVersion> {
        self.policy_versions
            .iter()
            .filter(|p| p.published_at <= at)
            .max_by_key(|p| p.published_at)
    }
}

impl Purpose {
    /// Whether an objection (Art. 21) can bear on this purpose: processing on legitimate
    /// interest or public task (21(1)), and marketing whatever its basis (21(2)); never a
    /// strictly necessary purpose (a restriction does not reach it either).
    pub fn objection_applies(&self) -> bool {
        self.category != PurposeCategory::StrictlyNecessary
            && (matches!(
                self.legal_basis,
                LegalBasis::LegitimateInterest | LegalBasis::PublicTask
            ) || self.category == PurposeCategory::Marketing)
    }

    /// When a consent collected at `collected_at` lapses under this purpose's validity.
    pub fn expiry_of(&self, collected_at: Timestamp) -> Option<Timestamp> {
        self.validity_secs.map(|secs| {
            collected_at.saturating_add(secs.saturating_mul(Timestamp::MICROS_PER_SECOND))
        })
    }
}

string_enum! {
    /// The kind of id a product knows a person by (see [`crate::identity`]).
    IdentityType {
        /// The product's account id (a logged-in person).
        Account => "account",
        /// A browser cookie id (often anonymous).
        Cookie => "cookie",
        /// A device or app installation id.
        Device => "device",
        /// A phone number (stored only as a keyed hash, after E.164 normalisation).
        Phone => "phone",
        /// An email address (stored only as a keyed hash, after lower-casing).
        Email => "email",
        /// Another system's id for the person (a CRM, a payment provider).
        External => "external",
    }
}

string_enum! {
    /// What a ledger record (an entry of the chain that is not a consent choice) attests.
    RecordKind {
        /// A product service deleted or anonymised a registered data item.
        DeletionAttested => "deletion_attested",
        /// A grant's validity ended while it was the subject's current choice (the sweeper).
        ConsentExpired => "consent_expired",
        /// One retention sweep of a tenant: items that became due, due and overdue counts.
        RetentionSweep => "retention_sweep",
        /// The subject restricted processing (Art. 18).
        ProcessingRestricted => "processing_restricted",
        /// The subject's restriction was lifted.
        RestrictionLifted => "restriction_lifted",
        /// The subject objected (Art. 21) to a purpose (or, with no purpose, to every purpose
        /// an objection applies to).
        Objected => "objected",
        /// The subject withdrew an objection.
        ObjectionWithdrawn => "objection_withdrawn",
        /// The subject sent a Global Privacy Control signal (do not sell or share).
        GpcSet => "gpc_set",
        /// The subject's GPC signal was cleared.
        GpcCleared => "gpc_cleared",
        /// The subject was erased (Art. 17): its entries now carry a digest in place of its
        /// id, its evidence and details are deleted; the record's subject is that digest.
        SubjectErased => "subject_erased",
        /// An identity (a typed alias) was linked to the subject; the detail names its type,
        /// its keyed hash, and its value when the type is stored in clear.
        IdentityLinked => "identity_linked",
        /// An identity was unlinked from the subject (same detail).
        IdentityUnlinked => "identity_unlinked",
        /// Two subjects were merged (one person found under two ids): written on both sides
        /// in one transaction. The detail names the subject merged away (`merged_from`),
        /// the subject it was merged into (`merged_into`) and the identity whose link asked
        /// for it; the merged-away subject is closed from then on.
        SubjectsMerged => "subjects_merged",
    }
}

/// The part of a ledger record the caller decides; the store assigns the rest. Records share
/// the tenant's revisions and hash chain with consent events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRecord {
    /// Record id (UUIDv7).
    pub id: String,
    /// What it attests.
    pub kind: RecordKind,
    /// The subject it is about (empty for a record about the tenant as a whole).
    pub subject_id: String,
    /// The purpose it is about, or empty when it bears on every purpose or none.
    pub purpose_id: String,
    /// When the attested fact happened (e.g. when the item was deleted).
    pub at: Timestamp,
    /// The facts, by name (e.g. `item_id`, `method`); erasable like evidence: only their
    /// digest is in the chain.
    pub detail: BTreeMap<String, String>,
    /// The API key that wrote it, if any.
    pub actor_key_id: String,
}

impl NewRecord {
    /// For a `SubjectsMerged` record, the subject merged into and the subject merged away
    /// (its `merged_into` and `merged_from` details).
    pub fn merged(&self) -> Option<(&str, &str)> {
        if self.kind != RecordKind::SubjectsMerged {
            return None;
        }
        Some((
            self.detail.get("merged_into")?.as_str(),
            self.detail.get("merged_from")?.as_str(),
        ))
    }
}

/// A ledger record as stored: immutable, hash-linked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerRecord {
    /// What the caller decided.
    pub record: NewRecord,
    /// When the ledger stored it.
    pub recorded_at: Timestamp,
    /// Its revision in the tenant ledger.
    pub revision: Revision,
    /// SHA-256 of the detail's canonical form (kept after erasure).
    pub detail_sha256: [u8; 32],
    /// Hash of the previous entry in the tenant chain.
    pub prev_hash: [u8; 32],
    /// Hash of this record.
    pub hash: [u8; 32],
}
