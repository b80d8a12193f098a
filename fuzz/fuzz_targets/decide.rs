//! The decision engine on arbitrary purposes, choices, policy histories and subject flags
//! (restriction, objections, GPC): never a panic, never "allowed" without a reason that
//! allows, and never allowed where a flag in force forbids it.

#![no_main]

use arbitrary::Arbitrary;
use consent_core::{
    Catalog, Decision, LegalBasis, PolicyVersion, Purpose, PurposeCategory, Reason, StateEntry,
    SubjectFlags, SubjectState, Timestamp, decide,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Choice {
    vendor: u8,
    decision: u8,
    collected_at: i64,
    policy: u8,
}

#[derive(Arbitrary, Debug)]
struct Policy {
    published_at: i64,
    material: bool,
    changes_purpose: bool,
    lists_vendor: u8,
}

#[derive(Arbitrary, Debug)]
struct Input {
    category: u8,
    basis: u8,
    validity_secs: Option<i64>,
    vendor: u8,
    at: i64,
    choices: Vec<Choice>,
    policies: Vec<Policy>,
    restricted_since: Option<i64>,
    /// (objects to this purpose rather than to all, since)
    objection: Option<(bool, i64)>,
    gpc_since: Option<i64>,
    erased_since: Option<i64>,
}

const VENDORS: [&str; 3] = ["", "ga4", "hubspot"];

fn pick<T: Copy>(all: &[T], n: u8) -> T {
    all[usize::from(n) % all.len()]
}

fuzz_target!(|input: Input| {
    let purpose = Purpose {
        id: "analytics".into(),
        name: String::new(),
        description: String::new(),
        category: pick(PurposeCategory::ALL, input.category),
        legal_basis: pick(LegalBasis::ALL, input.basis),
        vendor_ids: vec!["ga4".into()],
        validity_secs: input.validity_secs,
    };
    let catalog = Catalog {
        policy_versions: input
            .policies
            .iter()
            .enumerate()
            .map(|(i, p)| PolicyVersion {
                id: format!("v{i}"),
                published_at: Timestamp(p.published_at),
                purpose_ids: vec!["analytics".into()],
                vendor_ids: vec![pick(&VENDORS, p.lists_vendor).to_owned()],
                material: p.material,
                changed_purpose_ids: if p.changes_purpose {
                    vec!["analytics".into()]
                } else {
                    vec![]
                },
                text_sha256: String::new(),
            })
            .collect(),
        ..Catalog::default()
    };
    let state = SubjectState {
        entries: input
            .choices
            .iter()
            .enumerate()
            .map(|(i, c)| StateEntry {
                purpose_id: "analytics".into(),
                vendor_id: pick(&VENDORS, c.vendor).to_owned(),
                decision: pick(Decision::ALL, c.decision),
                event_id: format!("e{i}"),
                policy_version_id: format!("v{}", c.policy),
                collected_at: Timestamp(c.collected_at),
                revision: i64::try_from(i).unwrap_or(i64::MAX),
            })
            .collect(),
        revision: 0,
        flags: SubjectFlags {
            restricted_since: input.restricted_since.map(Timestamp),
            objections: input
                .objection
                .map(|(specific, since)| {
                    let purpose = if specific { "analytics" } else { "" };
                    (purpose.to_owned(), Timestamp(since))
                })
                .into_iter()
                .collect(),
            gpc_since: input.gpc_since.map(Timestamp),
            erased_since: input.erased_since.map(Timestamp),
            // Merges do not move a decision: a merged state is read like any other.
            ..SubjectFlags::default()
        },
    };
    let verdict = decide(
        &purpose,
        pick(&VENDORS, input.vendor),
        &state,
        &catalog,
        Timestamp(input.at),
    );
    assert_eq!(verdict.allowed, verdict.reason.allows());
    let at = Timestamp(input.at);
    let flags = &state.flags;
    if flags.erased_since.is_some() {
        // Erasure comes first and denies everything.
        assert_eq!(verdict.reason, Reason::SubjectErased);
        return;
    }
    if flags.restricted_at(at) && purpose.category != PurposeCategory::StrictlyNecessary {
        assert_eq!(verdict.reason, Reason::ProcessingRestricted);
    }
    if purpose.objection_applies() && flags.objected_at(&purpose.id, at) {
        assert!(!verdict.allowed);
    }
    if purpose.category == PurposeCategory::Marketing && flags.gpc_at(at) {
        assert!(!verdict.allowed);
    }
    if verdict.allowed
        && purpose.legal_basis == LegalBasis::Consent
        && purpose.category != PurposeCategory::StrictlyNecessary
    {
        assert_eq!(verdict.reason, Reason::Granted);
        let proof = state
            .entries
            .iter()
            .find(|e| Some(&e.event_id) == verdict.event_id.as_ref());
        assert!(proof.is_some_and(
            |e| e.decision == Decision::Granted && e.collected_at <= Timestamp(input.at)
        ));
    }
});
