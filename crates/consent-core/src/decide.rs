//! The decision: may this purpose (and vendor) be processed for this subject at this time?
//!
//! One pure function, [`decide`]. Precedence, first match wins:
//!
//! 0. The subject's rights, in force at `at` (`SubjectFlags`): `PROCESSING_RESTRICTED`
//!    (Art. 18) for every purpose but strictly necessary ones; `OBJECTED` (Art. 21) for a
//!    purpose objected to (or all) that an objection applies to (legitimate interest,
//!    public task, or marketing; see `Purpose::objection_applies`); `GPC_OPT_OUT` for
//!    marketing purposes.
//! 1. `STRICTLY_NECESSARY` category: allowed, no consent needed.
//! 2. A non-consent legal basis: allowed on that basis (`CONTRACT`, `LEGAL_OBLIGATION`, ...).
//! 3. Consent basis, using the latest choice (by `collected_at`; a tie goes to a refusal or
//!    withdrawal, then to the later revision: see `StateEntry::supersedes`) at or
//!    before `at` among the purpose-level choice and the choice specific to the vendor; if
//!    that is a grant and a withdraw-all (a subject-wide withdrawal) was collected after it,
//!    or there is no choice but a withdraw-all, the withdraw-all:
//!    `NO_DECISION` (nothing recorded: default deny), `DENIED`, `WITHDRAWN`, then for a grant
//!    `EXPIRED`, `RECONSENT_REQUIRED`, `VENDOR_NOT_COVERED`, and finally `GRANTED`.
//!
//! Only `GRANTED` and the non-consent reasons of steps 1-2 are ever allowed.

use crate::model::{
    Catalog, Decision, LegalBasis, Purpose, PurposeCategory, Reason, StateEntry, SubjectState,
};
use crate::time::Timestamp;

/// The answer to a check, and the proof behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the processing may go ahead.
    pub allowed: bool,
    /// Why.
    pub reason: Reason,
    /// The purpose's legal basis.
    pub legal_basis: LegalBasis,
    /// The event that proves the answer, if one does.
    pub event_id: Option<String>,
    /// The policy version of that event.
    pub policy_version_id: Option<String>,
    /// When the consent lapses, if it does.
    pub expires_at: Option<Timestamp>,
    /// Whether the person must be asked (again).
    pub needs_reconsent: bool,
}

impl Reason {
    /// Whether a verdict with this reason allows processing.
    pub fn allows(self) -> bool {
        matches!(
            self,
            Reason::Granted
                | Reason::StrictlyNecessary
                | Reason::Contract
                | Reason::LegalObligation
                | Reason::LegitimateInterest
                | Reason::VitalInterest
                | Reason::PublicTask
        )
    }
}

/// Decides one check. `state` holds the subject's choices: its projection, or its whole
/// history (any number of entries per purpose and vendor). Choices collected after `at` are
/// ignored, so one history answers for every `at`; a caller that passes the current
/// projection for a past `at` gets a deny-leaning answer, never a wrong allow. `vendor_id`
/// is empty for "any vendor".
pub fn decide(
    purpose: &Purpose,
    vendor_id: &str,
    state: &SubjectState,
    catalog: &Catalog,
    at: Timestamp,
) -> Verdict {
    let basis_only = |reason: Reason| Verdict {
        allowed: reason.allows(),
        reason,
        legal_basis: purpose.legal_basis,
        event_id: None,
        policy_version_id: None,
        expires_at: None,
        needs_reconsent: false,
    };
    let flags = &state.flags;
    // Nothing is kept to answer with, for any time: the erasure stands first.
    if flags.erased_since.is_some() {
        return basis_only(Reason::SubjectErased);
    }
    if flags.restricted_at(at) && purpose.category != PurposeCategory::StrictlyNecessary {
        return basis_only(Reason::ProcessingRestricted);
    }
    if purpose.objection_applies() && flags.objected_at(&purpose.id, at) {
        return basis_only(Reason::Objected);
    }
    if purpose.category == PurposeCategory::Marketing && flags.gpc_at(at) {
        return basis_only(Reason::GpcOptOut);
    }
    if purpose.category == PurposeCategory::StrictlyNecessary {
        return basis_only(Reason::StrictlyNecessary);
    }
    match purpose.legal_basis {
        LegalBasis::Consent => {}
        LegalBasis::Contract => return basis_only(Reason::Contract),
        LegalBasis::LegalObligation => return basis_only(Reason::LegalObligation),
        LegalBasis::LegitimateInterest => return basis_only(Reason::LegitimateInterest),
        LegalBasis::VitalInterest => return basis_only(Reason::VitalInterest),
        LegalBasis::PublicTask => return basis_only(Reason::PublicTask),
    }

    let Some(entry) = latest_applicable(state, &purpose.id, vendor_id, at) else {
        return Verdict {
            needs_reconsent: true,
            ..basis_only(Reason::NoDecision)
        };
    };
    // Only a grant lapses; a refusal or withdrawal stands until the person changes it.
    let expires_at = (entry.decision == Decision::Granted)
        .then(|| purpose.expiry_of(entry.collected_at))
        .flatten();
    let verdict = |reason: Reason, needs_reconsent: bool| Verdict {
        allowed: reason.allows(),
        reason,
        legal_basis: purpose.legal_basis,
        event_id: Some(entry.event_id.clone()),
        policy_version_id: Some(entry.policy_version_id.clone()),
        expires_at,
        needs_reconsent,
    };
    match entry.decision {
        Decision::Denied => return verdict(Reason::Denied, false),
        Decision::Withdrawn => return verdict(Reason::Withdrawn, false),
        Decision::Granted => {}
    }
    if expires_at.is_some_and(|expiry| expiry <= at) {
        return verdict(Reason::Expired, true);
    }
    if material_change_since(catalog, &purpose.id, &entry.policy_version_id, at) {
        return verdict(Reason::ReconsentRequired, true);
    }
    if !vendor_id.is_empty() && !vendor_covered(purpose, vendor_id, entry, catalog) {
        return verdict(Reason::VendorNotCovered, false);
    }
    verdict(Reason::Granted, false)
}

/// The choice that applies at `at`: the latest of the purpose-level and vendor-specific
/// choices collected by then, unless it is a grant that a later withdraw-all supersedes (a
/// refusal stays the refusal it was). With no such choice, the withdraw-all, if any.
fn latest_applicable<'a>(
    state: &'a SubjectState,
    purpose_id: &'a str,
    vendor_id: &'a str,
    at: Timestamp,
) -> Option<&'a StateEntry> {
    let specific = latest(state.entries_for(purpose_id, vendor_id), at);
    let withdraw_all = latest(state.subject_wide(), at);
    match (specific, withdraw_all) {
        (Some(s), Some(w)) if s.decision == Decision::Granted && w.supersedes(s) => Some(w),
        (Some(s), _) => Some(s),
        (None, w) => w,
    }
}

/// The latest of `entries` collected at or before `at`.
fn latest<'a>(
    entries: impl Iterator<Item = &'a StateEntry>,
    at: Timestamp,
) -> Option<&'a StateEntry> {
    entries
        .filter(|e| e.collected_at <= at)
        .fold(None, |best: Option<&StateEntry>, e| match best {
            Some(b) if !e.supersedes(b) => Some(b),
            _ => Some(e),
        })
}

/// Whether a material version published after the consented one (and by `at`) changed the purpose.
fn material_change_since(
    catalog: &Catalog,
    purpose_id: &str,
    consented_version: &str,
    at: Timestamp,
) -> bool {
    // A consent under a version the catalogue does not know cannot be shown to be current.
    let Some(consented) = catalog.policy_version(consented_version) else {
        return true;
    };
    catalog.policy_versions.iter().any(|p| {
        p.material
            && p.published_at > consented.published_at
            && p.published_at <= at
            && p.changed_purpose_ids.iter().any(|id| id == purpose_id)
    })
}

/// A vendor-specific grant covers its vendor; a purpose-level grant covers the purpose's
/// vendors that the consented policy version listed.
fn vendor_covered(
    purpose: &Purpose,
    vendor_id: &str,
    entry: &StateEntry,
    catalog: &Catalog,
) -> bool {
    if entry.vendor_id == vendor_id {
        return true;
    }
    purpose.vendor_ids.iter().any(|v| v == vendor_id)
        && catalog
            .policy_version(&entry.policy_version_id)
            .is_some_and(|p| p.vendor_ids.iter().any(|v| v == vendor_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PolicyVersion, SUBJECT_WIDE, SubjectFlags};
    use proptest::prelude::*;

    const DAY: i64 = 86_400 * Timestamp::MICROS_PER_SECOND;

    fn purpose(category: PurposeCategory, basis: LegalBasis) -> Purpose {
        Purpose {
            id: "analytics".into(),
            name: "Analytics".into(),
            description: String::new(),
            category,
            legal_basis: basis,
            vendor_ids: vec!["ga4".into(), "late_vendor".into()],
            validity_secs: Some(180 * 86_400),
        }
    }

    fn policy(id: &str, day: i64, material: bool, changed: &[&str]) -> PolicyVersion {
        PolicyVersion {
            id: id.into(),
            published_at: Timestamp(day * DAY),
            purpose_ids: vec!["analytics".into()],
            vendor_ids: vec!["ga4".into()],
            material,
            changed_purpose_ids: changed.iter().map(|s| (*s).to_string()).collect(),
            text_sha256: String::new(),
        }
    }

    fn catalog() -> Catalog {
        Catalog {
            policy_versions: vec![policy("v1", 0, false, &[])],
            ..Catalog::default()
        }
    }

    fn entry(vendor: &str, decision: Decision, day: i64, revision: i64) -> StateEntry {
        StateEntry {
            purpose_id: "analytics".into(),
            vendor_id: vendor.into(),
            decision,
            event_id: format!("e{revision}"),
            policy_version_id: "v1".into(),
            collected_at: Timestamp(day * DAY),
            revision,
        }
    }

    fn state(entries: Vec<StateEntry>) -> SubjectState {
        SubjectState {
            entries,
            revision: 10,
            flags: SubjectFlags::default(),
        }
    }

    fn consent_purpose() -> Purpose {
        purpose(PurposeCategory::Analytics, LegalBasis::Consent)
    }

    fn at_day(day: i64) -> Timestamp {
        Timestamp(day * DAY)
    }

    #[test]
    fn no_decision_is_default_deny_and_asks() {
        let v = decide(
            &consent_purpose(),
            "",
            &state(vec![]),
            &catalog(),
            at_day(1),
        );
        assert_eq!(
            (v.allowed, v.reason, v.needs_reconsent),
            (false, Reason::NoDecision, true)
        );
        assert_eq!(v.event_id, None);
    }

    #[test]
    fn grant_allows_with_proof_and_expiry() {
        let s = state(vec![entry("", Decision::Granted, 1, 1)]);
        let v = decide(&consent_purpose(), "", &s, &catalog(), at_day(2));
        assert_eq!((v.allowed, v.reason), (true, Reason::Granted));
        assert_eq!(v.event_id.as_deref(), Some("e1"));
        assert_eq!(v.policy_version_id.as_deref(), Some("v1"));
        assert_eq!(v.expires_at, Some(at_day(181)));
        assert!(!v.needs_reconsent);
    }

    #[test]
    fn denied_and_withdrawn_deny_without_asking() {
        for (decision, reason) in [
            (Decision::Denied, Reason::Denied),
            (Decision::Withdrawn, Reason::Withdrawn),
        ] {
            let s = state(vec![
                entry("", Decision::Granted, 1, 1),
                entry("", decision, 2, 2),
            ]);
            let v = decide(&consent_purpose(), "", &s, &catalog(), at_day(3));
            assert_eq!(
                (v.allowed, v.reason, v.needs_reconsent),
                (false, reason, false)
            );
            assert_eq!(v.event_id.as_deref(), Some("e2"));
        }
    }

    #[test]
    fn expiry_is_inclusive_of_the_deadline() {
        let s = state(vec![entry("", Decision::Granted, 0, 1)]);
        let before = decide(
            &consent_purpose(),
            "",
            &s,
            &catalog(),
            Timestamp(180 * DAY - 1),
        );
        assert_eq!(before.reason, Reason::Granted);
        let at = decide(&consent_purpose(), "", &s, &catalog(), at_day(180));
        assert_eq!(
            (at.allowed, at.reason, at.needs_reconsent),
            (false, Reason::Expired, true)
        );
    }

    #[test]
    fn material_change_requires_reconsent_only_for_changed_purposes() {
        let mut cat = catalog();
        cat.policy_versions
            .push(policy("v2", 5, true, &["analytics"]));
        let s = state(vec![entry("", Decision::Granted, 1, 1)]);
        let before = decide(&consent_purpose(), "", &s, &cat, at_day(4));
        assert_eq!(
            before.reason,
            Reason::Granted,
            "v2 not yet published at day 4"
        );
        let after = decide(&consent_purpose(), "", &s, &cat, at_day(6));
        assert_eq!(
            (after.allowed, after.reason, after.needs_reconsent),
            (false, Reason::ReconsentRequired, true)
        );

        let mut other = catalog();
        other
            .policy_versions
            .push(policy("v2", 5, true, &["marketing"]));
        assert_eq!(
            decide(&consent_purpose(), "", &s, &other, at_day(6)).reason,
            Reason::Granted
        );
        let mut minor = catalog();
        minor
            .policy_versions
            .push(policy("v2", 5, false, &["analytics"]));
        assert_eq!(
            decide(&consent_purpose(), "", &s, &minor, at_day(6)).reason,
            Reason::Granted
        );
    }

    #[test]
    fn consent_under_unknown_policy_version_is_not_trusted() {
        let mut e = entry("", Decision::Granted, 1, 1);
        e.policy_version_id = "ghost".into();
        let v = decide(
            &consent_purpose(),
            "",
            &state(vec![e]),
            &catalog(),
            at_day(2),
        );
        assert_eq!((v.allowed, v.reason), (false, Reason::ReconsentRequired));
    }

    #[test]
    fn vendor_coverage() {
        let s = state(vec![entry("", Decision::Granted, 1, 1)]);
        let p = consent_purpose();
        assert_eq!(
            decide(&p, "ga4", &s, &catalog(), at_day(2)).reason,
            Reason::Granted
        );
        // In the purpose now, but not in the policy version consented to.
        assert_eq!(
            decide(&p, "late_vendor", &s, &catalog(), at_day(2)).reason,
            Reason::VendorNotCovered
        );
        // Not a vendor of the purpose at all.
        assert_eq!(
            decide(&p, "stripe", &s, &catalog(), at_day(2)).reason,
            Reason::VendorNotCovered
        );
        // An explicit vendor grant covers it.
        let s2 = state(vec![
            entry("", Decision::Granted, 1, 1),
            entry("late_vendor", Decision::Granted, 1, 2),
        ]);
        assert_eq!(
            decide(&p, "late_vendor", &s2, &catalog(), at_day(2)).reason,
            Reason::Granted
        );
    }

    #[test]
    fn vendor_denial_overrides_older_purpose_grant_and_newer_grant_overrides_it() {
        let p = consent_purpose();
        let s = state(vec![
            entry("", Decision::Granted, 1, 1),
            entry("ga4", Decision::Denied, 2, 2),
        ]);
        assert_eq!(
            decide(&p, "ga4", &s, &catalog(), at_day(3)).reason,
            Reason::Denied
        );
        assert_eq!(
            decide(&p, "", &s, &catalog(), at_day(3)).reason,
            Reason::Granted
        );
        let s2 = state(vec![
            entry("", Decision::Granted, 3, 3),
            entry("ga4", Decision::Denied, 2, 2),
        ]);
        assert_eq!(
            decide(&p, "ga4", &s2, &catalog(), at_day(4)).reason,
            Reason::Granted
        );
    }

    #[test]
    fn older_import_never_overrides_newer_withdrawal() {
        // The import is recorded later (higher revision) but was collected earlier.
        let s = state(vec![
            entry("", Decision::Withdrawn, 5, 1),
            entry("", Decision::Granted, 3, 2),
        ]);
        assert_eq!(
            decide(&consent_purpose(), "", &s, &catalog(), at_day(6)).reason,
            Reason::Withdrawn
        );
    }

    #[test]
    fn same_collection_time_goes_to_the_later_revision() {
        let s = state(vec![
            entry("", Decision::Granted, 5, 1),
            entry("", Decision::Withdrawn, 5, 2),
        ]);
        assert_eq!(
            decide(&consent_purpose(), "", &s, &catalog(), at_day(6)).reason,
            Reason::Withdrawn
        );
    }

    #[test]
    fn as_of_ignores_later_choices() {
        let s = state(vec![
            entry("", Decision::Granted, 1, 1),
            entry("", Decision::Withdrawn, 5, 2),
        ]);
        assert_eq!(
            decide(&consent_purpose(), "", &s, &catalog(), at_day(3)).reason,
            Reason::Granted
        );
        assert_eq!(
            decide(&consent_purpose(), "", &s, &catalog(), Timestamp(DAY - 1)).reason,
            Reason::NoDecision
        );
    }

    fn withdraw_all(day: i64, revision: i64) -> StateEntry {
        StateEntry {
            purpose_id: SUBJECT_WIDE.into(),
            ..entry("", Decision::Withdrawn, day, revision)
        }
    }

    #[test]
    fn withdraw_all_covers_every_purpose_until_a_later_choice() {
        // Granted for the vendor on day 1, everything withdrawn on day 3, an import of a
        // purpose-level grant collected on day 2 recorded afterwards, a fresh grant on day 5.
        let s = state(vec![
            entry("ga4", Decision::Granted, 1, 1),
            withdraw_all(3, 2),
            entry("", Decision::Granted, 2, 3),
        ]);
        for vendor in ["", "ga4", "late_vendor"] {
            let v = decide(&consent_purpose(), vendor, &s, &catalog(), at_day(4));
            assert_eq!(
                (v.allowed, v.reason),
                (false, Reason::Withdrawn),
                "{vendor}"
            );
            assert_eq!(v.event_id.as_deref(), Some("e2"));
        }
        let mut new_purpose = consent_purpose();
        new_purpose.id = "catalogued_later".into();
        let v = decide(&new_purpose, "", &s, &catalog(), at_day(4));
        assert_eq!(v.reason, Reason::Withdrawn, "purposes added later too");
        assert_eq!(
            decide(&consent_purpose(), "", &s, &catalog(), at_day(2)).reason,
            Reason::Granted,
            "as of before the withdrawal"
        );
        // A tie of collection times (a grant imported later, stamped the same microsecond)
        // goes to the withdrawal, never to the grant.
        let tie = state(vec![withdraw_all(3, 1), entry("", Decision::Granted, 3, 2)]);
        assert_eq!(
            decide(&consent_purpose(), "", &tie, &catalog(), at_day(4)).reason,
            Reason::Withdrawn
        );
        let purpose_tie = state(vec![
            entry("", Decision::Withdrawn, 3, 1),
            entry("", Decision::Granted, 3, 2),
        ]);
        assert_eq!(
            decide(&consent_purpose(), "", &purpose_tie, &catalog(), at_day(4)).reason,
            Reason::Withdrawn
        );
        let refused = state(vec![entry("", Decision::Denied, 1, 1), withdraw_all(3, 2)]);
        assert_eq!(
            decide(&consent_purpose(), "", &refused, &catalog(), at_day(4)).reason,
            Reason::Denied,
            "a refusal stays a refusal"
        );
        let mut later = s.clone();
        later.entries.push(entry("", Decision::Granted, 5, 4));
        let v = decide(&consent_purpose(), "", &later, &catalog(), at_day(6));
        assert_eq!((v.allowed, v.reason), (true, Reason::Granted));
        assert_eq!(
            decide(&new_purpose, "", &later, &catalog(), at_day(6)).reason,
            Reason::Withdrawn
        );
    }

    #[test]
    fn non_consent_bases_allow_on_their_basis() {
        let cases = [
            (LegalBasis::Contract, Reason::Contract),
            (LegalBasis::LegalObligation, Reason::LegalObligation),
            (LegalBasis::LegitimateInterest, Reason::LegitimateInterest),
            (LegalBasis::VitalInterest, Reason::VitalInterest),
            (LegalBasis::PublicTask, Reason::PublicTask),
        ];
        let denied = state(vec![entry("", Decision::Denied, 1, 1)]);
        for (basis, reason) in cases {
            let v = decide(
                &purpose(PurposeCategory::Functional, basis),
                "",
                &denied,
                &catalog(),
                at_day(2),
            );
            assert_eq!((v.allowed, v.reason, v.legal_basis), (true, reason, basis));
        }
        let v = decide(
            &purpose(PurposeCategory::StrictlyNecessary, LegalBasis::Consent),
            "",
            &denied,
            &catalog(),
            at_day(2),
        );
        assert_eq!((v.allowed, v.reason), (true, Reason::StrictlyNecessary));
    }

    fn flags(
        restricted: Option<i64>,
        objections: &[(&str, i64)],
        gpc: Option<i64>,
    ) -> SubjectFlags {
        SubjectFlags {
            restricted_since: restricted.map(at_day),
            objections: objections
                .iter()
                .map(|(p, d)| ((*p).to_owned(), at_day(*d)))
                .collect(),
            gpc_since: gpc.map(at_day),
            ..SubjectFlags::default()
        }
    }

    #[test]
    fn rights_come_before_consent_in_the_order_of_the_design() {
        let granted = |purpose: &str| {
            let mut e = entry("", Decision::Granted, 1, 1);
            e.purpose_id = purpose.into();
            e
        };
        let marketing = Purpose {
            id: "marketing_calls".into(),
            ..purpose(PurposeCategory::Marketing, LegalBasis::Consent)
        };
        let li = Purpose {
            id: "fraud_scoring".into(),
            ..purpose(PurposeCategory::Analytics, LegalBasis::LegitimateInterest)
        };
        let necessary = Purpose {
            id: "session".into(),
            ..purpose(PurposeCategory::StrictlyNecessary, LegalBasis::Contract)
        };
        let mut s = state(vec![granted("analytics"), granted("marketing_calls")]);
        let reason = |p: &Purpose, s: &SubjectState, day: i64| {
            let v = decide(p, "", s, &catalog(), at_day(day));
            assert_eq!(v.allowed, v.reason.allows());
            v.reason
        };
        // Restriction: every purpose but strictly necessary ones, from its time on.
        s.flags = flags(Some(5), &[], None);
        assert_eq!(
            reason(&consent_purpose(), &s, 6),
            Reason::ProcessingRestricted
        );
        assert_eq!(reason(&li, &s, 6), Reason::ProcessingRestricted);
        assert_eq!(reason(&necessary, &s, 6), Reason::StrictlyNecessary);
        assert_eq!(
            reason(&consent_purpose(), &s, 4),
            Reason::Granted,
            "before it"
        );
        // Objection: legitimate interest and marketing purposes; not consent-based others.
        s.flags = flags(None, &[("", 5)], None);
        assert_eq!(reason(&li, &s, 6), Reason::Objected);
        assert_eq!(reason(&marketing, &s, 6), Reason::Objected);
        assert_eq!(reason(&consent_purpose(), &s, 6), Reason::Granted);
        assert_eq!(reason(&necessary, &s, 6), Reason::StrictlyNecessary);
        s.flags = flags(None, &[("marketing_calls", 5)], None);
        assert_eq!(reason(&marketing, &s, 6), Reason::Objected);
        assert_eq!(
            reason(&li, &s, 6),
            Reason::LegitimateInterest,
            "another purpose"
        );
        // GPC: marketing only.
        s.flags = flags(None, &[], Some(5));
        assert_eq!(reason(&marketing, &s, 6), Reason::GpcOptOut);
        assert_eq!(reason(&consent_purpose(), &s, 6), Reason::Granted);
        // All at once: the design's order (restricted, objected, GPC).
        s.flags = flags(Some(5), &[("", 5)], Some(5));
        assert_eq!(reason(&marketing, &s, 6), Reason::ProcessingRestricted);
        s.flags = flags(None, &[("", 5)], Some(5));
        assert_eq!(reason(&marketing, &s, 6), Reason::Objected);
    }

    fn arb_flags() -> impl Strategy<Value = SubjectFlags> {
        (
            prop::option::of(0i64..400),
            prop::collection::vec(
                (
                    prop::sample::select(vec!["", "analytics", "marketing_calls", "other"]),
                    0i64..400,
                ),
                0..4,
            ),
            prop::option::of(0i64..400),
            prop::option::weighted(0.2, 0i64..400),
        )
            .prop_map(|(restricted, objections, gpc, erased)| SubjectFlags {
                erased_since: erased.map(at_day),
                ..flags(restricted, &objections, gpc)
            })
    }

    fn arb_purpose() -> impl Strategy<Value = Purpose> {
        (
            prop::sample::select(PurposeCategory::ALL.to_vec()),
            prop::sample::select(LegalBasis::ALL.to_vec()),
            prop::sample::select(vec!["analytics", "marketing_calls", "other"]),
        )
            .prop_map(|(category, basis, id)| Purpose {
                id: id.into(),
                ..purpose(category, basis)
            })
    }

    fn arb_decision() -> impl Strategy<Value = Decision> {
        prop::sample::select(Decision::ALL.to_vec())
    }

    fn arb_entries() -> impl Strategy<Value = Vec<StateEntry>> {
        prop::collection::vec(
            (
                prop::sample::select(vec!["", "ga4", "late_vendor"]),
                arb_decision(),
                0i64..400,
                0i64..5,
            ),
            0..8,
        )
        .prop_map(|raw| {
            raw.into_iter()
                .enumerate()
                .map(|(i, (vendor, decision, day, tie))| {
                    let mut e = entry(vendor, decision, day, i64::try_from(i).unwrap_or(0) + 1);
                    // Force some equal collection times to exercise the revision tie-break.
                    if tie == 0 {
                        e.collected_at = at_day(7);
                    }
                    e
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn allowed_only_with_a_current_grant(entries in arb_entries(), at in 0i64..420, vendor in prop::sample::select(vec!["", "ga4", "late_vendor", "other"])) {
            let mut cat = catalog();
            cat.policy_versions.push(policy("v2", 200, true, &["analytics"]));
            let s = state(entries.clone());
            let v = decide(&consent_purpose(), vendor, &s, &cat, at_day(at));
            prop_assert_eq!(v.allowed, v.reason.allows());
            if v.allowed {
                prop_assert_eq!(v.reason, Reason::Granted);
                let proof = entries.iter().find(|e| Some(&e.event_id) == v.event_id.as_ref());
                prop_assert!(proof.is_some_and(|e| e.decision == Decision::Granted && e.collected_at <= at_day(at)));
                // No applicable choice is newer than the proof.
                let proof = proof.cloned();
                for e in entries.iter().filter(|e| e.collected_at <= at_day(at) && (e.vendor_id.is_empty() || e.vendor_id == vendor)) {
                    prop_assert!(!e.supersedes(proof.as_ref().unwrap_or(e)));
                }
            }
            if v.reason == Reason::NoDecision {
                prop_assert!(v.needs_reconsent && v.event_id.is_none());
            }
        }

        #[test]
        fn order_of_entries_does_not_matter(entries in arb_entries(), at in 0i64..420) {
            let mut reversed = entries.clone();
            reversed.reverse();
            let a = decide(&consent_purpose(), "ga4", &state(entries), &catalog(), at_day(at));
            let b = decide(&consent_purpose(), "ga4", &state(reversed), &catalog(), at_day(at));
            prop_assert_eq!(a, b);
        }

        #[test]
        fn later_choices_do_not_change_the_past(entries in arb_entries(), at in 0i64..400, late in arb_decision()) {
            let before = decide(&consent_purpose(), "", &state(entries.clone()), &catalog(), at_day(at));
            let mut more = entries;
            more.push(entry("", late, at + 1, 99));
            let after = decide(&consent_purpose(), "", &state(more), &catalog(), at_day(at));
            prop_assert_eq!(before, after);
        }

        #[test]
        fn nothing_collected_before_a_withdraw_all_allows(
            entries in arb_entries(),
            withdrawn_day in 1i64..400,
            revision in 0i64..20,
            days_after in 0i64..50,
            vendor in prop::sample::select(vec!["", "ga4", "late_vendor", "other"]),
            catalogued_later in any::<bool>(),
        ) {
            // Every choice (imports included, recorded in any order) collected at or before
            // the withdraw-all, for the purpose checked or one catalogued after it.
            let mut purpose = consent_purpose();
            if catalogued_later {
                purpose.id = "catalogued_later".into();
            }
            let mut all: Vec<StateEntry> = entries
                .into_iter()
                .map(|mut e| {
                    // At or before the withdraw-all: a tie never allows either.
                    e.collected_at = Timestamp(e.collected_at.0.rem_euclid(withdrawn_day * DAY + 1));
                    e.purpose_id = purpose.id.clone();
                    e
                })
                .collect();
            all.push(withdraw_all(withdrawn_day, revision));
            let v = decide(&purpose, vendor, &state(all), &catalog(), at_day(withdrawn_day + days_after));
            prop_assert!(!v.allowed, "{:?}", v);
            // The withdraw-all, or a refusal or withdrawal that was already the last word.
            prop_assert!(matches!(v.reason, Reason::Withdrawn | Reason::Denied), "{:?}", v);
        }

        /// A merge (the choices of both sides together, the flags absorbed) never allows what
        /// either side refused last, nor what a right exercised on either side forbids.
        #[test]
        fn a_merge_never_allows_what_either_side_refused_last(
            a in arb_entries(),
            b in arb_entries(),
            fa in arb_flags(),
            fb in arb_flags(),
            p in arb_purpose(),
            vendor in prop::sample::select(vec!["", "ga4", "late_vendor"]),
            at in 0i64..420,
        ) {
            // The other side's events: ids and revisions of their own, as in one ledger.
            let b: Vec<StateEntry> = b
                .into_iter()
                .map(|mut e| {
                    e.revision += 100;
                    e.event_id = format!("b{}", e.event_id);
                    e
                })
                .collect();
            let on = |entries: &[StateEntry], f: &SubjectFlags| {
                let mut s = state(entries.iter().map(|e| StateEntry { purpose_id: p.id.clone(), ..e.clone() }).collect());
                s.flags = f.clone();
                decide(&p, vendor, &s, &catalog(), at_day(at))
            };
            // Erased subjects are never merged (the store refuses).
            let (mut fa, mut fb) = (fa, fb);
            fa.erased_since = None;
            fb.erased_since = None;
            let mut flags = fa.clone();
            flags.absorb(&fb);
            let all: Vec<StateEntry> = a.iter().chain(&b).cloned().collect();
            let merged = on(&all, &flags);
            for (side, f) in [(&a, &fa), (&b, &fb)] {
                let own = on(side, f);
                let by_right = matches!(
                    own.reason,
                    Reason::ProcessingRestricted | Reason::Objected | Reason::GpcOptOut
                );
                if by_right {
                    prop_assert!(!merged.allowed, "{:?} on one side, {:?} merged", own, merged);
                }
                if merged.allowed && matches!(own.reason, Reason::Denied | Reason::Withdrawn) {
                    let refusal = side.iter().find(|e| Some(&e.event_id) == own.event_id.as_ref());
                    let grant = all.iter().find(|e| Some(&e.event_id) == merged.event_id.as_ref());
                    prop_assert!(
                        matches!((grant, refusal), (Some(g), Some(r)) if g.supersedes(r)),
                        "{:?} on one side, {:?} merged", own, merged
                    );
                }
            }
        }

        /// No combination of flags ever allows what a flag forbids, whatever the choices.
        #[test]
        fn no_flag_combination_allows_what_a_flag_forbids(
            entries in arb_entries(),
            f in arb_flags(),
            p in arb_purpose(),
            at in 0i64..420,
        ) {
            let entries = entries.into_iter().map(|mut e| { e.purpose_id = p.id.clone(); e }).collect();
            let s = SubjectState { flags: f.clone(), ..state(entries) };
            let v = decide(&p, "", &s, &catalog(), at_day(at));
            let now = at_day(at);
            let necessary = p.category == PurposeCategory::StrictlyNecessary;
            if f.erased_since.is_some() {
                // Erasure denies everything, even as of a time before it.
                prop_assert!(!v.allowed);
                prop_assert_eq!(v.reason, Reason::SubjectErased);
            } else if f.restricted_at(now) && !necessary {
                prop_assert!(!v.allowed);
                prop_assert_eq!(v.reason, Reason::ProcessingRestricted);
            } else if p.objection_applies() && f.objected_at(&p.id, now) {
                prop_assert!(!v.allowed);
                prop_assert_eq!(v.reason, Reason::Objected);
            } else if p.category == PurposeCategory::Marketing && f.gpc_at(now) {
                prop_assert!(!v.allowed);
                prop_assert_eq!(v.reason, Reason::GpcOptOut);
            } else {
                // No flag bears on it: the answer is the one without flags.
                let without = decide(&p, "", &SubjectState { flags: SubjectFlags::default(), ..s.clone() }, &catalog(), now);
                prop_assert_eq!(v, without);
            }
        }

        #[test]
        fn non_consent_purposes_ignore_choices(entries in arb_entries(), at in 0i64..400) {
            let p = purpose(PurposeCategory::Functional, LegalBasis::Contract);
            let v = decide(&p, "", &state(entries), &catalog(), at_day(at));
            prop_assert_eq!((v.allowed, v.reason), (true, Reason::Contract));
        }
    }
}
