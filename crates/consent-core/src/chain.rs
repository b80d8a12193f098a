//! The per-tenant hash chain that makes the ledger tamper-evident.
//!
//! `hash = sha256(prev_hash || canonical(event))`. The canonical form holds digests of the
//! personal data (the subject id and the evidence), never the data itself, so erasure can
//! delete the data and the chain still verifies.
//!
//! Two versions of the canonical forms exist. Version 1 (`consent-event/v1`,
//! `ledger-record/v1`) commits to `SHA-256(subject id)`: anyone holding the rows can confirm a
//! guessed id, so an erasure on a v1 entry leaves a linkable digest. Version 2 (`/v2` tags)
//! commits to `HMAC-SHA256(tenant subject key, subject id)` (and keys the evidence and
//! detail digests the same way); the key is the tenant's
//! ([`ChainKey`]), and a tenant's entries are v2 from [`ChainKey::keyed_from`] on (new ledgers
//! from their first entry, ledgers older than the key from their first write after it).
//! Erasure rewrites an entry's subject to [`ERASED_PREFIX`] + the hex digest its form
//! committed to, which the verifier then takes as is.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::model::{ConsentEvent, Evidence, LedgerRecord, NewEvent, NewRecord, Revision};
use crate::time::Timestamp;

/// The `prev_hash` of a tenant's first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// Version tags of the canonical forms; a new form gets a new tag.
const CANONICAL_TAG: &[u8] = b"consent-event/v1";
const CANONICAL_TAG_KEYED: &[u8] = b"consent-event/v2";
/// Version tags of a ledger record's canonical form.
const RECORD_TAG: &[u8] = b"ledger-record/v1";
const RECORD_TAG_KEYED: &[u8] = b"ledger-record/v2";

/// What an erased subject id starts with: `erased:` and 64 lowercase hex digits (the digest
/// the chain committed to). Callers' subject ids may not start with it.
pub const ERASED_PREFIX: &str = "erased:";

/// The digest in an erased subject id, if `subject_id` is one.
pub fn erased_digest(subject_id: &str) -> Option<[u8; 32]> {
    let hex_digits = subject_id.strip_prefix(ERASED_PREFIX)?;
    let mut digest = [0u8; 32];
    (hex_digits.len() == 64
        && hex_digits
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    .then(|| hex::decode_to_slice(hex_digits, &mut digest).ok())
    .flatten()
    .map(|()| digest)
}

/// A tenant's subject key and the revision its chain is keyed from (see the module doc).
/// Its `Debug` form does not show the key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ChainKey {
    /// The key, `None` for a ledger that has none yet (every entry is then v1).
    pub subject_key: Option<[u8; 32]>,
    /// The first revision whose canonical form is v2.
    pub keyed_from: Revision,
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainKey")
            .field("subject_key", &self.subject_key.map(|_| "[redacted]"))
            .field("keyed_from", &self.keyed_from)
            .finish()
    }
}

impl ChainKey {
    /// The key of a ledger without one: every entry v1.
    pub const NONE: ChainKey = ChainKey {
        subject_key: None,
        keyed_from: Revision::MAX,
    };

    /// `HMAC-SHA256(key, subject_id)`, if there is a key.
    pub fn keyed_digest(&self, subject_id: &str) -> Option<[u8; 32]> {
        self.hmac(subject_id.as_bytes())
    }

    fn hmac(&self, bytes: &[u8]) -> Option<[u8; 32]> {
        let key = self.subject_key?;
        // HMAC takes keys of any length; 32 bytes cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).ok()?;
        mac.update(bytes);
        Some(mac.finalize().into_bytes().into())
    }

    /// The digest of an entry's payload (canonical evidence or detail, which start with a
    /// length prefix and so never equal a subject id, which has no control characters):
    /// keyed on v2 entries, SHA-256 on v1 ones.
    fn payload_digest(&self, revision: Revision, canonical: &[u8]) -> [u8; 32] {
        match self.hmac(canonical).filter(|_| self.is_keyed(revision)) {
            Some(digest) => digest,
            None => Sha256::digest(canonical).into(),
        }
    }

    /// Whether the entry at `revision` has the keyed (v2) canonical form.
    pub fn is_keyed(&self, revision: Revision) -> bool {
        self.subject_key.is_some() && revision >= self.keyed_from
    }

    /// The subject digest the entry at `revision` commits to: taken from an erased id as
    /// is, else keyed (v2) or plain SHA-256 (v1).
    pub fn subject_digest(&self, revision: Revision, subject_id: &str) -> [u8; 32] {
        if let Some(digest) = erased_digest(subject_id) {
            return digest;
        }
        match self
            .keyed_digest(subject_id)
            .filter(|_| self.is_keyed(revision))
        {
            Some(digest) => digest,
            None => Sha256::digest(subject_id.as_bytes()).into(),
        }
    }

    /// The id an erasure writes in place of `subject_id` on the entry at `revision`.
    pub fn erased_entry_id(&self, revision: Revision, subject_id: &str) -> String {
        format!(
            "{ERASED_PREFIX}{}",
            hex::encode(self.subject_digest(revision, subject_id))
        )
    }

    /// The id under which an erased subject's marker is kept and its projections are
    /// rewritten (the keyed digest); `None` without a key.
    pub fn erased_subject_id(&self, subject_id: &str) -> Option<String> {
        self.keyed_digest(subject_id)
            .map(|d| format!("{ERASED_PREFIX}{}", hex::encode(d)))
    }
}

/// Appends length-prefixed fields so no two different events share an encoding.
#[derive(Default)]
struct Canonical(Vec<u8>);

impl Canonical {
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        // Lengths are bounded by validation far below u32::MAX; saturate rather than wrap.
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }
    fn int(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn opt_time(&mut self, t: Option<Timestamp>) -> &mut Self {
        match t {
            Some(t) => {
                self.0.push(1);
                self.int(t.as_micros())
            }
            None => {
                self.0.push(0);
                self
            }
        }
    }
}

/// The digest of the evidence in a canonical form (attributes sorted by key): SHA-256 on v1
/// entries, HMAC-SHA256 under the tenant's key on v2 ones (evidence with little variety,
/// such as an IP address alone, could otherwise be found again from its digest once erased).
pub fn evidence_digest(key: &ChainKey, revision: Revision, evidence: &Evidence) -> [u8; 32] {
    key.payload_digest(revision, &evidence_canonical(evidence))
}

fn evidence_canonical(evidence: &Evidence) -> Vec<u8> {
    let mut c = Canonical::default();
    c.str("evidence/v1")
        .str(&evidence.call_id)
        .str(&evidence.recording_id)
        .str(&evidence.transcript_sha256)
        .str(&evidence.notice_text_sha256)
        .str(&evidence.ip_address)
        .str(&evidence.user_agent)
        .int(i64::try_from(evidence.attributes.len()).unwrap_or(i64::MAX));
    for (k, v) in &evidence.attributes {
        c.str(k).str(v);
    }
    c.0
}

/// The fields of an event that the chain covers.
#[derive(Debug)]
pub struct ChainFields<'a> {
    /// Tenant of the ledger.
    pub tenant_id: &'a str,
    /// The tenant's chain key (which form, and the subject digest).
    pub key: &'a ChainKey,
    /// The event as decided by the caller.
    pub event: &'a NewEvent,
    /// Revision assigned by the store.
    pub revision: Revision,
    /// Storage time.
    pub recorded_at: Timestamp,
    /// Digest of the evidence.
    pub evidence_sha256: &'a [u8; 32],
}

/// The canonical byte form of an event (personal data only as digests).
pub fn canonical(fields: &ChainFields<'_>) -> Vec<u8> {
    let e = fields.event;
    let subject_digest = fields.key.subject_digest(fields.revision, &e.subject_id);
    let tag = if fields.key.is_keyed(fields.revision) {
        CANONICAL_TAG_KEYED
    } else {
        CANONICAL_TAG
    };
    let mut c = Canonical::default();
    c.bytes(tag)
        .str(fields.tenant_id)
        .int(fields.revision)
        .str(&e.id)
        .bytes(&subject_digest)
        .str(&e.purpose_id)
        .str(&e.vendor_id)
        .str(e.decision.as_str())
        .str(&e.policy_version_id)
        .str(e.channel.as_str())
        .int(e.collected_at.as_micros())
        .int(fields.recorded_at.as_micros())
        .opt_time(e.expires_at)
        .bytes(fields.evidence_sha256)
        .str(&e.actor_key_id);
    c.0
}

/// `sha256(prev_hash || canonical)`.
pub fn link(prev_hash: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev_hash);
    h.update(canonical);
    h.finalize().into()
}

/// The digest of a record's detail in a canonical form (sorted by name), keyed on v2
/// entries like [`evidence_digest`].
pub fn detail_digest(
    key: &ChainKey,
    revision: Revision,
    detail: &std::collections::BTreeMap<String, String>,
) -> [u8; 32] {
    let mut c = Canonical::default();
    c.str("detail/v1")
        .int(i64::try_from(detail.len()).unwrap_or(i64::MAX));
    for (k, v) in detail {
        c.str(k).str(v);
    }
    key.payload_digest(revision, &c.0)
}

/// The canonical byte form of a ledger record (the subject and the detail only as digests).
pub fn canonical_record(
    tenant_id: &str,
    key: &ChainKey,
    record: &NewRecord,
    revision: Revision,
    recorded_at: Timestamp,
    detail_sha256: &[u8; 32],
) -> Vec<u8> {
    let subject_digest = key.subject_digest(revision, &record.subject_id);
    let tag = if key.is_keyed(revision) {
        RECORD_TAG_KEYED
    } else {
        RECORD_TAG
    };
    let mut c = Canonical::default();
    c.bytes(tag)
        .str(tenant_id)
        .int(revision)
        .str(&record.id)
        .str(record.kind.as_str())
        .bytes(&subject_digest)
        .str(&record.purpose_id)
        .int(record.at.as_micros())
        .int(recorded_at.as_micros())
        .bytes(detail_sha256)
        .str(&record.actor_key_id);
    c.0
}

/// Builds the stored form of `record`, linked after `prev_hash`.
pub fn seal_record(
    tenant_id: &str,
    key: &ChainKey,
    record: NewRecord,
    revision: Revision,
    recorded_at: Timestamp,
    prev_hash: [u8; 32],
) -> LedgerRecord {
    let detail_sha256 = detail_digest(key, revision, &record.detail);
    let bytes = canonical_record(
        tenant_id,
        key,
        &record,
        revision,
        recorded_at,
        &detail_sha256,
    );
    let hash = link(&prev_hash, &bytes);
    LedgerRecord {
        record,
        recorded_at,
        revision,
        detail_sha256,
        prev_hash,
        hash,
    }
}

/// One entry of a tenant's chain: a consent event or a ledger record.
#[derive(Clone, Copy, Debug)]
pub enum ChainEntry<'a> {
    /// A consent event, and whether its evidence was erased.
    Event(&'a ConsentEvent, bool),
    /// A ledger record, and whether its detail was erased.
    Record(&'a LedgerRecord, bool),
}

impl ChainEntry<'_> {
    /// The entry's revision.
    pub fn revision(&self) -> Revision {
        match self {
            ChainEntry::Event(e, _) => e.revision,
            ChainEntry::Record(r, _) => r.revision,
        }
    }
}

/// Builds the stored form of `event`, linked after `prev_hash`.
pub fn seal(
    tenant_id: &str,
    key: &ChainKey,
    event: NewEvent,
    revision: Revision,
    recorded_at: Timestamp,
    prev_hash: [u8; 32],
) -> ConsentEvent {
    // A choice never takes effect before it is recorded (commands::effective_collected_at
    // applies the same rule at planning; this holds it even if the clock stepped back since).
    let mut event = event;
    event.collected_at = event.collected_at.min(recorded_at);
    let evidence_sha256 = evidence_digest(key, revision, &event.evidence);
    let bytes = canonical(&ChainFields {
        tenant_id,
        key,
        event: &event,
        revision,
        recorded_at,
        evidence_sha256: &evidence_sha256,
    });
    let hash = link(&prev_hash, &bytes);
    ConsentEvent {
        event,
        recorded_at,
        revision,
        evidence_sha256,
        prev_hash,
        hash,
    }
}

/// What a verification found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Whether every check passed.
    pub ok: bool,
    /// Events checked.
    pub events_checked: i64,
    /// First event that failed, if any.
    pub first_bad_event_id: Option<String>,
    /// What failed.
    pub detail: Option<String>,
}

/// Checks events one by one, in revision order, without holding them all in memory.
#[derive(Debug)]
pub struct ChainVerifier {
    tenant_id: String,
    key: ChainKey,
    expected_prev: [u8; 32],
    last_revision: Revision,
    checked: i64,
    failure: Option<(String, String)>,
}

impl ChainVerifier {
    /// A verifier for the chain of `tenant_id` keyed by `key`, starting at genesis.
    pub fn new(tenant_id: &str, key: ChainKey) -> ChainVerifier {
        ChainVerifier {
            tenant_id: tenant_id.to_owned(),
            key,
            expected_prev: GENESIS,
            last_revision: 0,
            checked: 0,
            failure: None,
        }
    }

    /// Whether a failure has been found (later events are then not checked).
    pub fn failed(&self) -> bool {
        self.failure.is_some()
    }

    /// Checks the next event. `evidence_erased` skips the evidence digest check for an
    /// event whose evidence was lawfully deleted.
    pub fn push(&mut self, event: &ConsentEvent, evidence_erased: bool) {
        self.push_entry(ChainEntry::Event(event, evidence_erased));
    }

    /// Checks the next entry of the chain, event or record.
    pub fn push_entry(&mut self, entry: ChainEntry<'_>) {
        if self.failed() {
            return;
        }
        self.checked += 1;
        let (id, revision, prev_hash, hash) = match entry {
            ChainEntry::Event(e, _) => (&e.event.id, e.revision, e.prev_hash, e.hash),
            ChainEntry::Record(r, _) => (&r.record.id, r.revision, r.prev_hash, r.hash),
        };
        let fail = |why: String| Some((id.clone(), why));
        self.failure = if revision != self.last_revision + 1 {
            fail(format!(
                "revision {revision} follows {}: the chain has a gap or a duplicate",
                self.last_revision
            ))
        } else if prev_hash != self.expected_prev {
            fail(format!(
                "prev_hash at revision {revision} does not match the previous entry's hash"
            ))
        } else {
            let content = match entry {
                ChainEntry::Event(e, erased) => {
                    if !erased
                        && evidence_digest(&self.key, revision, &e.event.evidence)
                            != e.evidence_sha256
                    {
                        Err("evidence")
                    } else {
                        Ok(canonical(&ChainFields {
                            tenant_id: &self.tenant_id,
                            key: &self.key,
                            event: &e.event,
                            revision,
                            recorded_at: e.recorded_at,
                            evidence_sha256: &e.evidence_sha256,
                        }))
                    }
                }
                ChainEntry::Record(r, erased) => {
                    if !erased
                        && detail_digest(&self.key, revision, &r.record.detail) != r.detail_sha256
                    {
                        Err("detail")
                    } else {
                        Ok(canonical_record(
                            &self.tenant_id,
                            &self.key,
                            &r.record,
                            revision,
                            r.recorded_at,
                            &r.detail_sha256,
                        ))
                    }
                }
            };
            match content {
                Err(what) => fail(format!(
                    "{what} at revision {revision} does not match its digest"
                )),
                Ok(bytes) if link(&prev_hash, &bytes) == hash => None,
                Ok(_) => fail(format!(
                    "hash at revision {revision} does not match the entry's content"
                )),
            }
        };
        self.expected_prev = hash;
        self.last_revision = revision;
    }

    /// The report, checking that the chain ends at the ledger's recorded head.
    pub fn finish(self, head_revision: Revision, head_hash: &[u8; 32]) -> VerifyReport {
        let failure = self.failure.or_else(|| {
            (self.last_revision != head_revision || &self.expected_prev != head_hash).then(|| {
                (
                    String::new(),
                    format!(
                        "chain ends at revision {} but the ledger head is revision {}",
                        self.last_revision, head_revision
                    ),
                )
            })
        });
        VerifyReport {
            ok: failure.is_none(),
            events_checked: self.checked,
            first_bad_event_id: failure
                .as_ref()
                .map(|(id, _)| id.clone())
                .filter(|id| !id.is_empty()),
            detail: failure.map(|(_, why)| why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Channel, Decision};
    use proptest::prelude::*;

    /// Keyed from revision 3: entries 1 and 2 are v1, the rest v2.
    const KEY: ChainKey = ChainKey {
        subject_key: Some([7; 32]),
        keyed_from: 3,
    };

    fn new_event(i: usize, subject: &str) -> NewEvent {
        NewEvent {
            id: format!("evt-{i}"),
            subject_id: subject.into(),
            purpose_id: "analytics".into(),
            vendor_id: String::new(),
            decision: Decision::Granted,
            policy_version_id: "v1".into(),
            channel: Channel::Web,
            collected_at: Timestamp(1_000 + i64::try_from(i).unwrap_or(0)),
            expires_at: None,
            evidence: Evidence {
                ip_address: format!("10.0.0.{i}"),
                ..Evidence::default()
            },
            actor_key_id: String::new(),
        }
    }

    fn chain(n: usize) -> Vec<ConsentEvent> {
        let mut prev = GENESIS;
        (0..n)
            .map(|i| {
                let e = seal(
                    "t1",
                    &KEY,
                    new_event(i, "alice"),
                    i64::try_from(i).unwrap_or(0) + 1,
                    Timestamp(5_000),
                    prev,
                );
                prev = e.hash;
                e
            })
            .collect()
    }

    fn verify(events: &[ConsentEvent], erased: &[usize]) -> VerifyReport {
        let mut v = ChainVerifier::new("t1", KEY);
        for (i, e) in events.iter().enumerate() {
            v.push(e, erased.contains(&i));
        }
        let (rev, head) = events.last().map_or((0, GENESIS), |e| (e.revision, e.hash));
        v.finish(rev, &head)
    }

    #[test]
    fn empty_chain_verifies() {
        assert!(verify(&[], &[]).ok);
    }

    #[test]
    fn erasing_evidence_keeps_the_chain_valid() {
        let mut events = chain(3);
        events[1].event.evidence = Evidence::default();
        assert!(verify(&events, &[1]).ok);
        let report = verify(&events, &[]);
        assert_eq!(report.first_bad_event_id.as_deref(), Some("evt-1"));
    }

    fn attestation(i: usize) -> NewRecord {
        NewRecord {
            id: format!("rec-{i}"),
            kind: crate::model::RecordKind::DeletionAttested,
            subject_id: "alice".into(),
            purpose_id: String::new(),
            at: Timestamp(2_000),
            detail: [("item_id".to_owned(), format!("item-{i}"))].into(),
            actor_key_id: "key-1".into(),
        }
    }

    #[test]
    fn records_and_events_share_one_chain() {
        let first = chain(1);
        let record = seal_record(
            "t1",
            &KEY,
            attestation(2),
            2,
            Timestamp(5_000),
            first[0].hash,
        );
        let last = seal(
            "t1",
            &KEY,
            new_event(3, "bob"),
            3,
            Timestamp(6_000),
            record.hash,
        );
        let run = |record: &LedgerRecord, erased: bool| {
            let mut v = ChainVerifier::new("t1", KEY);
            v.push(&first[0], false);
            v.push_entry(ChainEntry::Record(record, erased));
            v.push(&last, false);
            v.finish(3, &last.hash)
        };
        assert!(run(&record, false).ok);
        // Erasing the detail keeps the chain; changing it does not.
        let mut erased = record.clone();
        erased.record.detail.clear();
        assert!(run(&erased, true).ok);
        let report = run(&erased, false);
        assert_eq!(report.first_bad_event_id.as_deref(), Some("rec-2"));
        let mut moved = record.clone();
        moved.record.at = Timestamp(2_001);
        assert!(!run(&moved, false).ok);
        // Leaving the record out is a gap.
        let mut v = ChainVerifier::new("t1", KEY);
        v.push(&first[0], false);
        v.push(&last, false);
        assert!(!v.finish(3, &last.hash).ok);
    }

    #[test]
    fn head_mismatch_is_reported() {
        let events = chain(2);
        let mut v = ChainVerifier::new("t1", KEY);
        for e in &events {
            v.push(e, false);
        }
        let report = v.finish(3, &events[1].hash);
        assert!(!report.ok);
        assert!(
            report
                .detail
                .unwrap_or_default()
                .contains("ledger head is revision 3")
        );
    }

    #[test]
    fn subject_is_in_the_hash_only_as_a_digest() {
        let e = new_event(0, "alice@example.com");
        let bytes = canonical(&ChainFields {
            tenant_id: "t1",
            key: &KEY,
            event: &e,
            revision: 1,
            recorded_at: Timestamp(1),
            evidence_sha256: &evidence_digest(&KEY, 1, &e.evidence),
        });
        assert!(!bytes.windows(5).any(|w| w == b"alice"));
    }

    /// Erasure as the stores do it: each entry's subject becomes the digest its form used.
    fn erase(events: &mut [ConsentEvent], subject: &str) {
        for e in events.iter_mut().filter(|e| e.event.subject_id == subject) {
            e.event.subject_id = KEY.erased_entry_id(e.revision, subject);
            e.event.evidence = Evidence::default();
        }
    }

    #[test]
    fn erasing_the_subject_keeps_v1_and_v2_entries_valid() {
        let mut events = chain(5);
        erase(&mut events, "alice");
        let erased: Vec<usize> = (0..5).collect();
        assert!(verify(&events, &erased).ok);
        // v1 entries kept the plain digest, v2 ones the keyed digest: a guess of the id
        // confirms only the v1 ones.
        let plain = format!("{ERASED_PREFIX}{}", hex::encode(Sha256::digest(b"alice")));
        assert_eq!(events[1].event.subject_id, plain);
        assert_ne!(events[2].event.subject_id, plain);
        assert_eq!(
            Some(events[2].event.subject_id.clone()),
            KEY.erased_subject_id("alice")
        );
        // An erased id that is not the committed digest fails at that entry.
        let mut wrong = events.clone();
        wrong[3].event.subject_id = KEY.erased_entry_id(4, "bob");
        assert_eq!(
            verify(&wrong, &erased).first_bad_event_id.as_deref(),
            Some("evt-3")
        );
    }

    #[test]
    fn the_key_decides_the_form_and_is_never_printed() {
        let events = chain(4);
        // Verifying with another key, or none, fails at the first keyed entry.
        let other = ChainKey {
            subject_key: Some([8; 32]),
            ..KEY
        };
        for key in [other, ChainKey::NONE] {
            let mut v = ChainVerifier::new("t1", key);
            for e in &events {
                v.push(e, false);
            }
            let report = v.finish(4, &events[3].hash);
            assert_eq!(report.first_bad_event_id.as_deref(), Some("evt-2"));
        }
        // Payload digests are keyed on v2 entries too: an erased IP address cannot be found
        // again by trying addresses against the digest.
        let evidence = Evidence {
            ip_address: "10.1.2.3".into(),
            ..Evidence::default()
        };
        assert_ne!(
            evidence_digest(&KEY, 3, &evidence),
            evidence_digest(&ChainKey::NONE, 3, &evidence)
        );
        assert_eq!(
            evidence_digest(&KEY, 2, &evidence),
            evidence_digest(&ChainKey::NONE, 2, &evidence)
        );
        let detail = [("reason".to_owned(), "x".to_owned())].into();
        assert_ne!(
            detail_digest(&KEY, 3, &detail),
            detail_digest(&ChainKey::NONE, 3, &detail)
        );
        assert!(!format!("{KEY:?}").contains("7, 7"));
        assert!(format!("{KEY:?}").contains("redacted"));
    }

    #[test]
    fn only_well_formed_erased_ids_carry_a_digest() {
        let id = KEY.erased_entry_id(9, "alice");
        assert!(erased_digest(&id).is_some());
        assert!(erased_digest(&id.to_uppercase()).is_none());
        assert!(erased_digest(&id[..id.len() - 1]).is_none());
        assert!(erased_digest("erased:").is_none());
        assert!(erased_digest("alice").is_none());
    }

    proptest! {
        #[test]
        fn any_tampering_is_caught_at_the_tampered_event(n in 1usize..12, pick in 0usize..12, what in 0u8..6) {
            let mut events = chain(n);
            let i = pick % n;
            let e = &mut events[i];
            match what {
                0 => e.event.decision = Decision::Withdrawn,
                1 => e.event.purpose_id.push('x'),
                2 => e.event.collected_at = Timestamp(e.event.collected_at.as_micros() + 1),
                3 => e.event.subject_id.push('x'),
                4 => e.event.evidence.user_agent.push('x'),
                _ => e.hash[0] ^= 1,
            }
            let report = verify(&events, &[]);
            prop_assert!(!report.ok);
            // Whatever was changed, the first failure is the tampered event itself.
            prop_assert_eq!(report.first_bad_event_id, Some(format!("evt-{i}")));
        }

        #[test]
        fn removing_or_reordering_events_is_caught(n in 2usize..12, pick in 0usize..12) {
            let mut events = chain(n);
            let i = pick % (n - 1);
            events.swap(i, i + 1);
            prop_assert!(!verify(&events, &[]).ok);
            let mut shorter = chain(n);
            shorter.remove(i);
            prop_assert!(!verify(&shorter, &[]).ok);
        }
    }
}
