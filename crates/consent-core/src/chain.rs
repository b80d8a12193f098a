//! The per-tenant hash chain that makes the ledger tamper-evident.
//!
//! `hash = sha256(prev_hash || canonical(event))`. The canonical form holds digests of the
//! personal data (the subject id and the evidence), never the data itself, so erasure can
//! delete the data and the chain still verifies.

use sha2::{Digest, Sha256};

use crate::model::{ConsentEvent, Evidence, LedgerRecord, NewEvent, NewRecord, Revision};
use crate::time::Timestamp;

/// The `prev_hash` of a tenant's first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// Version tag of the canonical form; a new form gets a new tag.
const CANONICAL_TAG: &[u8] = b"consent-event/v1";
/// Version tag of a ledger record's canonical form.
const RECORD_TAG: &[u8] = b"ledger-record/v1";

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

/// SHA-256 of the evidence in a canonical form (attributes sorted by key).
pub fn evidence_digest(evidence: &Evidence) -> [u8; 32] {
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
    Sha256::digest(&c.0).into()
}

/// The fields of an event that the chain covers.
#[derive(Debug)]
pub struct ChainFields<'a> {
    /// Tenant of the ledger.
    pub tenant_id: &'a str,
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
    let subject_digest: [u8; 32] = Sha256::digest(e.subject_id.as_bytes()).into();
    let mut c = Canonical::default();
    c.bytes(CANONICAL_TAG)
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

/// SHA-256 of a record's detail in a canonical form (sorted by name).
pub fn detail_digest(detail: &std::collections::BTreeMap<String, String>) -> [u8; 32] {
    let mut c = Canonical::default();
    c.str("detail/v1")
        .int(i64::try_from(detail.len()).unwrap_or(i64::MAX));
    for (k, v) in detail {
        c.str(k).str(v);
    }
    Sha256::digest(&c.0).into()
}

/// The canonical byte form of a ledger record (the subject and the detail only as digests).
pub fn canonical_record(
    tenant_id: &str,
    record: &NewRecord,
    revision: Revision,
    recorded_at: Timestamp,
    detail_sha256: &[u8; 32],
) -> Vec<u8> {
    let subject_digest: [u8; 32] = Sha256::digest(record.subject_id.as_bytes()).into();
    let mut c = Canonical::default();
    c.bytes(RECORD_TAG)
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
    record: NewRecord,
    revision: Revision,
    recorded_at: Timestamp,
    prev_hash: [u8; 32],
) -> LedgerRecord {
    let detail_sha256 = detail_digest(&record.detail);
    let bytes = canonical_record(tenant_id, &record, revision, recorded_at, &detail_sha256);
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
    event: NewEvent,
    revision: Revision,
    recorded_at: Timestamp,
    prev_hash: [u8; 32],
) -> ConsentEvent {
    // A choice never takes effect before it is recorded (commands::effective_collected_at
    // applies the same rule at planning; this holds it even if the clock stepped back since).
    let mut event = event;
    event.collected_at = event.collected_at.min(recorded_at);
    let evidence_sha256 = evidence_digest(&event.evidence);
    let bytes = canonical(&ChainFields {
        tenant_id,
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
    expected_prev: [u8; 32],
    last_revision: Revision,
    checked: i64,
    failure: Option<(String, String)>,
}

impl ChainVerifier {
    /// A verifier for the chain of `tenant_id`, starting at genesis.
    pub fn new(tenant_id: &str) -> ChainVerifier {
        ChainVerifier {
            tenant_id: tenant_id.to_owned(),
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
                    if !erased && evidence_digest(&e.event.evidence) != e.evidence_sha256 {
                        Err("evidence")
                    } else {
                        Ok(canonical(&ChainFields {
                            tenant_id: &self.tenant_id,
                            event: &e.event,
                            revision,
                            recorded_at: e.recorded_at,
                            evidence_sha256: &e.evidence_sha256,
                        }))
                    }
                }
                ChainEntry::Record(r, erased) => {
                    if !erased && detail_digest(&r.record.detail) != r.detail_sha256 {
                        Err("detail")
                    } else {
                        Ok(canonical_record(
                            &self.tenant_id,
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
        let mut v = ChainVerifier::new("t1");
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
        let record = seal_record("t1", attestation(2), 2, Timestamp(5_000), first[0].hash);
        let last = seal("t1", new_event(3, "bob"), 3, Timestamp(6_000), record.hash);
        let run = |record: &LedgerRecord, erased: bool| {
            let mut v = ChainVerifier::new("t1");
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
        let mut v = ChainVerifier::new("t1");
        v.push(&first[0], false);
        v.push(&last, false);
        assert!(!v.finish(3, &last.hash).ok);
    }

    #[test]
    fn head_mismatch_is_reported() {
        let events = chain(2);
        let mut v = ChainVerifier::new("t1");
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
            event: &e,
            revision: 1,
            recorded_at: Timestamp(1),
            evidence_sha256: &evidence_digest(&e.evidence),
        });
        assert!(!bytes.windows(5).any(|w| w == b"alice"));
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
