//! The per-tenant hash chain that makes the ledger tamper-evident.
//!
//! `hash = sha256(prev_hash || canonical(event))`. The canonical form holds digests of the
//! personal data (the subject id and the evidence), never the data itself, so erasure can
//! delete the data and the chain still verifies.

use sha2::{Digest, Sha256};

use crate::model::{ConsentEvent, Evidence, NewEvent, Revision};
use crate::time::Timestamp;

/// The `prev_hash` of a tenant's first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// Version tag of the canonical form; a new form gets a new tag.
const CANONICAL_TAG: &[u8] = b"consent-event/v1";

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
        if self.failed() {
            return;
        }
        self.checked += 1;
        let fail = |why: String| Some((event.event.id.clone(), why));
        self.failure = if event.revision != self.last_revision + 1 {
            fail(format!(
                "revision {} follows {}: the chain has a gap or a duplicate",
                event.revision, self.last_revision
            ))
        } else if event.prev_hash != self.expected_prev {
            fail(format!(
                "prev_hash at revision {} does not match the previous event's hash",
                event.revision
            ))
        } else if !evidence_erased
            && evidence_digest(&event.event.evidence) != event.evidence_sha256
        {
            fail(format!(
                "evidence at revision {} does not match its digest",
                event.revision
            ))
        } else {
            let bytes = canonical(&ChainFields {
                tenant_id: &self.tenant_id,
                event: &event.event,
                revision: event.revision,
                recorded_at: event.recorded_at,
                evidence_sha256: &event.evidence_sha256,
            });
            if link(&event.prev_hash, &bytes) == event.hash {
                None
            } else {
                fail(format!(
                    "hash at revision {} does not match the event's content",
                    event.revision
                ))
            }
        };
        self.expected_prev = event.hash;
        self.last_revision = event.revision;
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
