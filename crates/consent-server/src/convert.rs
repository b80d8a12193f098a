//! Conversions between the wire types (`consent_proto::v1`) and the domain (`consent_core`).
//!
//! Wire-to-domain conversions never fail on their own: an unknown or unspecified enum
//! becomes `None` and a malformed time is recorded in a [`Violations`] collector, so the
//! caller gets every bad field in one `INVALID_ARGUMENT`.

use consent_core::commands::{DecisionInput, RecordConsent, WithdrawConsent};
use consent_core::identity::{Identity, SubjectRef};
use consent_core::retention::{RetentionAction, RetentionAnchor};
use consent_core::validate::{MAX_DURATION_SECS, Violations};
use consent_core::{
    Channel, ConsentEvent, Cookie, Decision, Evidence, IdentityType, LegalBasis, PolicyVersion,
    Purpose, PurposeCategory, Reason, RecordKind, SubjectFlags, Timestamp, Vendor, Verdict,
};
use consent_proto::v1 as pb;

/// Domain time to wire time.
pub fn timestamp(t: Timestamp) -> prost_types::Timestamp {
    let (seconds, nanos) = t.to_parts();
    prost_types::Timestamp { seconds, nanos }
}

/// Wire time to domain time; an out-of-range value is a violation of `field`.
pub fn time_in(
    v: &mut Violations,
    field: &str,
    t: Option<&prost_types::Timestamp>,
) -> Option<Timestamp> {
    let t = t?;
    let converted = Timestamp::from_parts(t.seconds, t.nanos);
    if converted.is_none() {
        v.add(field, format!("must be within {}", Timestamp::RANGE));
    }
    converted
}

/// Wire duration to whole seconds; not positive, malformed or longer than
/// [`MAX_DURATION_SECS`] is a violation of `field`.
pub fn duration_in(
    v: &mut Violations,
    field: &str,
    d: Option<&prost_types::Duration>,
) -> Option<i64> {
    let d = d?;
    if d.seconds < 0 || !(0..1_000_000_000).contains(&d.nanos) || (d.seconds == 0 && d.nanos == 0) {
        v.add(field, "must be a positive duration (nanos 0..1e9)");
        return None;
    }
    // Sub-second precision has no meaning for consent validity, cookie or key lifetimes.
    let secs = d.seconds.max(1);
    v.duration(field, Some(secs));
    (secs <= MAX_DURATION_SECS).then_some(secs)
}

/// Whole seconds to a wire duration.
pub fn duration(secs: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: secs,
        nanos: 0,
    }
}

macro_rules! enum_map {
    ($domain:ident, $wire:ident, $in:ident, $out:ident { $($d:ident <=> $w:ident),+ $(,)? }) => {
        /// Wire enum (as sent, an `i32`) to the domain; `None` for unspecified or unknown values.
        pub fn $in(value: i32) -> Option<$domain> {
            match pb::$wire::try_from(value) {
                $(Ok(pb::$wire::$w) => Some($domain::$d),)+
                _ => None,
            }
        }

        /// Domain enum to the wire.
        pub fn $out(value: $domain) -> pb::$wire {
            match value {
                $($domain::$d => pb::$wire::$w,)+
            }
        }
    };
}

enum_map!(IdentityType, IdentityType, identity_type_in, identity_type_out {
    Account <=> Account, Cookie <=> Cookie, Device <=> Device, Phone <=> Phone, Email <=> Email,
    External <=> External,
});
enum_map!(Decision, Decision, decision_in, decision_out {
    Granted <=> Granted, Denied <=> Denied, Withdrawn <=> Withdrawn,
});
enum_map!(Channel, Channel, channel_in, channel_out {
    Web <=> Web, Mobile <=> Mobile, Voice <=> Voice, Api <=> Api, Import <=> Import, Admin <=> Admin,
});
enum_map!(PurposeCategory, PurposeCategory, category_in, category_out {
    StrictlyNecessary <=> StrictlyNecessary, Functional <=> Functional, Analytics <=> Analytics,
    Preference <=> Preference, Marketing <=> Marketing,
});
enum_map!(LegalBasis, LegalBasis, basis_in, basis_out {
    Consent <=> Consent, Contract <=> Contract, LegalObligation <=> LegalObligation,
    LegitimateInterest <=> LegitimateInterest, VitalInterest <=> VitalInterest, PublicTask <=> PublicTask,
});
enum_map!(RetentionAnchor, RetentionAnchor, anchor_in, anchor_out {
    Created <=> Created, AccountClosed <=> AccountClosed, TicketClosed <=> TicketClosed,
    Custom <=> Custom,
});
enum_map!(RetentionAction, RetentionAction, action_in, action_out {
    Delete <=> Delete, Anonymise <=> Anonymise,
});
enum_map!(Reason, Reason, reason_in, reason_out {
    Granted <=> Granted, NoDecision <=> NoDecision, Denied <=> Denied, Withdrawn <=> Withdrawn,
    Expired <=> Expired, ReconsentRequired <=> ReconsentRequired, VendorNotCovered <=> VendorNotCovered,
    StrictlyNecessary <=> StrictlyNecessary, Contract <=> Contract, LegalObligation <=> LegalObligation,
    LegitimateInterest <=> LegitimateInterest, VitalInterest <=> VitalInterest, PublicTask <=> PublicTask,
    ProcessingRestricted <=> ProcessingRestricted, Objected <=> Objected, GpcOptOut <=> GpcOptOut,
    SubjectErased <=> SubjectErased,
});
enum_map!(RecordKind, LedgerRecordKind, record_kind_in, record_kind_out {
    DeletionAttested <=> DeletionAttested, ConsentExpired <=> ConsentExpired,
    RetentionSweep <=> RetentionSweep, ProcessingRestricted <=> ProcessingRestricted,
    RestrictionLifted <=> RestrictionLifted, Objected <=> Objected,
    ObjectionWithdrawn <=> ObjectionWithdrawn, GpcSet <=> GpcSet, GpcCleared <=> GpcCleared,
    SubjectErased <=> SubjectErased, IdentityLinked <=> IdentityLinked,
    IdentityUnlinked <=> IdentityUnlinked,
    SubjectsMerged <=> SubjectsMerged,
});

/// A subject's flags to the wire.
pub fn flags_out(f: &SubjectFlags) -> pb::SubjectFlags {
    pb::SubjectFlags {
        restricted_since: f.restricted_since.map(timestamp),
        objections: f
            .objections
            .iter()
            .map(|(purpose_id, since)| pb::Objection {
                purpose_id: purpose_id.clone(),
                since: Some(timestamp(*since)),
            })
            .collect(),
        gpc_since: f.gpc_since.map(timestamp),
        erased_since: f.erased_since.map(timestamp),
        merged_into: f.merged_into.clone().unwrap_or_default(),
    }
}

/// Evidence from the wire (attributes sorted by key).
pub fn evidence_in(e: Option<pb::Evidence>) -> Evidence {
    let e = e.unwrap_or_default();
    Evidence {
        call_id: e.call_id,
        recording_id: e.recording_id,
        transcript_sha256: e.transcript_sha256,
        notice_text_sha256: e.notice_text_sha256,
        ip_address: e.ip_address,
        user_agent: e.user_agent,
        attributes: e.attributes.into_iter().collect(),
    }
}

/// Evidence to the wire.
pub fn evidence_out(e: &Evidence) -> pb::Evidence {
    pb::Evidence {
        call_id: e.call_id.clone(),
        recording_id: e.recording_id.clone(),
        transcript_sha256: e.transcript_sha256.clone(),
        notice_text_sha256: e.notice_text_sha256.clone(),
        ip_address: e.ip_address.clone(),
        user_agent: e.user_agent.clone(),
        attributes: e
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// A stored event to the wire.
/// An event with its evidence (ListEvents).
pub fn event_out(e: &ConsentEvent) -> pb::ConsentEvent {
    pb::ConsentEvent {
        evidence: Some(evidence_out(&e.event.evidence)),
        ..event_digest_out(e)
    }
}

/// An event with only the digest of its evidence (write responses, Watch): the size of
/// these answers depends on the events' ids, never on the evidence they carry.
pub fn event_digest_out(e: &ConsentEvent) -> pb::ConsentEvent {
    let n = &e.event;
    pb::ConsentEvent {
        id: n.id.clone(),
        subject_id: n.subject_id.clone(),
        purpose_id: n.purpose_id.clone(),
        vendor_id: n.vendor_id.clone(),
        decision: decision_out(n.decision).into(),
        policy_version_id: n.policy_version_id.clone(),
        channel: channel_out(n.channel).into(),
        collected_at: Some(timestamp(n.collected_at)),
        recorded_at: Some(timestamp(e.recorded_at)),
        expires_at: n.expires_at.map(timestamp),
        evidence: None,
        revision: e.revision,
        prev_hash: hex::encode(e.prev_hash),
        hash: hex::encode(e.hash),
        actor_key_id: n.actor_key_id.clone(),
        evidence_sha256: hex::encode(e.evidence_sha256),
    }
}

/// A record request to its command; wire-level violations go to `v`.
pub fn record_in(v: &mut Violations, r: pb::RecordConsentRequest) -> RecordConsent {
    RecordConsent {
        collected_at: time_in(v, "collected_at", r.collected_at.as_ref()),
        subject_id: r.subject_id,
        decisions: r
            .decisions
            .into_iter()
            .map(|d| DecisionInput {
                purpose_id: d.purpose_id,
                vendor_id: d.vendor_id,
                decision: decision_in(d.decision),
            })
            .collect(),
        policy_version_id: r.policy_version_id,
        channel: channel_in(r.channel),
        evidence: evidence_in(r.evidence),
        idempotency_key: r.idempotency_key,
        named_by: String::new(),
    }
}

/// A withdraw request to its command; wire-level violations go to `v`.
pub fn withdraw_in(v: &mut Violations, r: pb::WithdrawConsentRequest) -> WithdrawConsent {
    WithdrawConsent {
        collected_at: time_in(v, "collected_at", r.collected_at.as_ref()),
        subject_id: r.subject_id,
        purpose_ids: r.purpose_ids,
        channel: channel_in(r.channel),
        evidence: evidence_in(r.evidence),
        idempotency_key: r.idempotency_key,
        named_by: String::new(),
    }
}

const CATEGORIES: &str = "PURPOSE_CATEGORY_STRICTLY_NECESSARY, PURPOSE_CATEGORY_FUNCTIONAL, \
     PURPOSE_CATEGORY_ANALYTICS, PURPOSE_CATEGORY_PREFERENCE, PURPOSE_CATEGORY_MARKETING";
const BASES: &str = "LEGAL_BASIS_CONSENT, LEGAL_BASIS_CONTRACT, LEGAL_BASIS_LEGAL_OBLIGATION, \
     LEGAL_BASIS_LEGITIMATE_INTEREST, LEGAL_BASIS_VITAL_INTEREST, LEGAL_BASIS_PUBLIC_TASK";

/// A wire purpose to the domain, validated; `None` when invalid (violations in `v`).
pub fn purpose_in(v: &mut Violations, field: &str, p: pb::Purpose) -> Option<Purpose> {
    let category = category_in(p.category);
    let legal_basis = basis_in(p.legal_basis);
    v.required(&format!("{field}.category"), category, CATEGORIES);
    v.required(&format!("{field}.legal_basis"), legal_basis, BASES);
    let validity_secs = duration_in(v, &format!("{field}.validity"), p.validity.as_ref());
    let purpose = Purpose {
        id: p.id,
        name: p.name,
        description: p.description,
        category: category?,
        legal_basis: legal_basis?,
        vendor_ids: p.vendor_ids,
        validity_secs,
    };
    v.purpose(field, &purpose);
    Some(purpose)
}

/// A domain purpose to the wire.
pub fn purpose_out(p: &Purpose) -> pb::Purpose {
    pb::Purpose {
        id: p.id.clone(),
        name: p.name.clone(),
        description: p.description.clone(),
        category: category_out(p.category).into(),
        legal_basis: basis_out(p.legal_basis).into(),
        vendor_ids: p.vendor_ids.clone(),
        validity: p.validity_secs.map(duration),
    }
}

/// A wire vendor to the domain, validated (violations in `v`).
pub fn vendor_in(v: &mut Violations, field: &str, vendor: pb::Vendor) -> Vendor {
    let cookies = vendor
        .cookies
        .into_iter()
        .enumerate()
        .map(|(i, c)| Cookie {
            duration_secs: duration_in(
                v,
                &format!("{field}.cookies[{i}].duration"),
                c.duration.as_ref(),
            ),
            name: c.name,
            domain: c.domain,
            purpose_id: c.purpose_id,
        })
        .collect();
    let vendor = Vendor {
        id: vendor.id,
        name: vendor.name,
        cookies,
    };
    v.vendor(field, &vendor);
    vendor
}

/// A domain vendor to the wire.
pub fn vendor_out(v: &Vendor) -> pb::Vendor {
    pb::Vendor {
        id: v.id.clone(),
        name: v.name.clone(),
        cookies: v
            .cookies
            .iter()
            .map(|c| pb::Cookie {
                name: c.name.clone(),
                domain: c.domain.clone(),
                duration: c.duration_secs.map(duration),
                purpose_id: c.purpose_id.clone(),
            })
            .collect(),
    }
}

/// A wire policy version to the domain, validated; `published_at` defaults to `now`.
pub fn policy_in(
    v: &mut Violations,
    field: &str,
    p: pb::PolicyVersion,
    now: Timestamp,
) -> PolicyVersion {
    let published_at = time_in(v, &format!("{field}.published_at"), p.published_at.as_ref());
    v.not_future(&format!("{field}.published_at"), published_at, now);
    let policy = PolicyVersion {
        id: p.id,
        published_at: published_at.unwrap_or(now),
        purpose_ids: p.purpose_ids,
        vendor_ids: p.vendor_ids,
        material: p.material,
        changed_purpose_ids: p.changed_purpose_ids,
        text_sha256: p.text_sha256,
    };
    v.policy_version(field, &policy);
    policy
}

/// A domain policy version to the wire.
pub fn policy_out(p: &PolicyVersion) -> pb::PolicyVersion {
    pb::PolicyVersion {
        id: p.id.clone(),
        published_at: Some(timestamp(p.published_at)),
        purpose_ids: p.purpose_ids.clone(),
        vendor_ids: p.vendor_ids.clone(),
        material: p.material,
        changed_purpose_ids: p.changed_purpose_ids.clone(),
        text_sha256: p.text_sha256.clone(),
    }
}

/// A verdict to a check response.
pub fn verdict_out(
    verdict: Verdict,
    subject_id: &str,
    purpose_id: &str,
    vendor_id: &str,
    revision: i64,
) -> pb::CheckResponse {
    pb::CheckResponse {
        allowed: verdict.allowed,
        reason: reason_out(verdict.reason).into(),
        legal_basis: basis_out(verdict.legal_basis).into(),
        event_id: verdict.event_id.unwrap_or_default(),
        policy_version_id: verdict.policy_version_id.unwrap_or_default(),
        expires_at: verdict.expires_at.map(timestamp),
        needs_reconsent: verdict.needs_reconsent,
        revision,
        purpose_id: purpose_id.to_owned(),
        vendor_id: vendor_id.to_owned(),
        subject_id: subject_id.to_owned(),
    }
}

/// A stored API key to the wire (never its secret or hash).
pub fn api_key_out(k: &consent_core::access::ApiKey) -> pb::ApiKey {
    pb::ApiKey {
        key_id: k.key_id.clone(),
        tenant_id: k.tenant_id.clone(),
        name: k.name.clone(),
        scopes: k.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
        created_at: Some(timestamp(k.created_at)),
        expires_at: k.expires_at.map(timestamp),
        revoked_at: k.revoked_at.map(timestamp),
    }
}

const IDENTITY_TYPES: &str = "IDENTITY_TYPE_ACCOUNT, IDENTITY_TYPE_COOKIE, IDENTITY_TYPE_DEVICE, \
     IDENTITY_TYPE_PHONE, IDENTITY_TYPE_EMAIL, IDENTITY_TYPE_EXTERNAL";

/// A wire identity, normalised; `None` when invalid (violations in `v` under `field`).
pub fn identity_in(v: &mut Violations, field: &str, identity: &pb::Identity) -> Option<Identity> {
    let Some(kind) = identity_type_in(identity.r#type) else {
        v.add(
            format!("{field}.type"),
            format!("must be one of {IDENTITY_TYPES}"),
        );
        return None;
    };
    match Identity::parse(kind, &identity.value) {
        Ok(identity) => Some(identity),
        Err(rule) => {
            v.add(format!("{field}.value"), rule);
            None
        }
    }
}

/// The person a write names (RecordConsent, WithdrawConsent): its `identity`, or its
/// `subject_id` as sent, which the command validates with the request's other fields (so
/// one answer names every bad field).
pub fn command_subject_in(
    v: &mut Violations,
    subject_id: &str,
    identity: Option<&pb::Identity>,
) -> Option<SubjectRef> {
    match identity {
        None => {
            v.not_implicit("subject_id", subject_id);
            Some(SubjectRef::Id(subject_id.to_owned()))
        }
        Some(_) if !subject_id.is_empty() => {
            v.add(
                "identity",
                "must not be set with subject_id: set one of them",
            );
            None
        }
        Some(identity) => identity_in(v, "identity", identity).map(SubjectRef::Identity),
    }
}

/// How a request names the person, checked (see [`subject_named_in`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Named {
    /// By its `subject_id`, which is valid.
    ById,
    /// By an identity, normalised.
    ByIdentity(Identity),
    /// Neither, both, or the one set is invalid (violations recorded).
    Invalid,
}

/// The person a request names: exactly one of `{prefix}subject_id` and `{prefix}identity`
/// (violations in `v` when neither or both are set, or the one set is invalid). Copies
/// nothing for a request by subject id, the usual case of a large batch.
pub fn subject_named_in(
    v: &mut Violations,
    prefix: &str,
    subject_id: &str,
    identity: Option<&pb::Identity>,
) -> Named {
    match (subject_id.is_empty(), identity) {
        (true, None) => {
            v.add(
                format!("{prefix}subject_id"),
                format!("must not be empty: set {prefix}subject_id or {prefix}identity"),
            );
            Named::Invalid
        }
        (false, Some(_)) => {
            v.add(
                format!("{prefix}identity"),
                format!("must not be set with {prefix}subject_id: set one of them"),
            );
            Named::Invalid
        }
        (false, None) => {
            let before = v.len();
            v.subject_id(&format!("{prefix}subject_id"), subject_id);
            if v.len() == before {
                Named::ById
            } else {
                Named::Invalid
            }
        }
        (true, Some(identity)) => match identity_in(v, &format!("{prefix}identity"), identity) {
            Some(identity) => Named::ByIdentity(identity),
            None => Named::Invalid,
        },
    }
}

/// As [`subject_named_in`], as a reference to resolve (`None` when invalid).
pub fn subject_ref_in(
    v: &mut Violations,
    prefix: &str,
    subject_id: &str,
    identity: Option<&pb::Identity>,
) -> Option<SubjectRef> {
    match subject_named_in(v, prefix, subject_id, identity) {
        Named::ById => Some(SubjectRef::Id(subject_id.to_owned())),
        Named::ByIdentity(identity) => Some(SubjectRef::Identity(identity)),
        Named::Invalid => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_domain_enum_round_trips_and_unspecified_is_none() {
        for d in Decision::ALL {
            assert_eq!(decision_in(decision_out(*d).into()), Some(*d));
        }
        for c in Channel::ALL {
            assert_eq!(channel_in(channel_out(*c).into()), Some(*c));
        }
        for c in PurposeCategory::ALL {
            assert_eq!(category_in(category_out(*c).into()), Some(*c));
        }
        for b in LegalBasis::ALL {
            assert_eq!(basis_in(basis_out(*b).into()), Some(*b));
        }
        for r in Reason::ALL {
            assert_eq!(reason_in(reason_out(*r).into()), Some(*r));
        }
        assert_eq!(decision_in(0), None);
        assert_eq!(channel_in(99), None);
        assert_eq!(basis_in(-1), None);
    }

    #[test]
    fn bad_times_and_durations_are_violations() {
        let mut v = Violations::new();
        let bad = prost_types::Timestamp {
            seconds: 1,
            nanos: -5,
        };
        assert_eq!(time_in(&mut v, "at", Some(&bad)), None);
        let negative = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(duration_in(&mut v, "validity", Some(&negative)), None);
        match v.finish() {
            Err(consent_core::ConsentError::InvalidArgument(list)) => {
                let fields: Vec<_> = list.iter().map(|f| f.field.as_str()).collect();
                assert_eq!(fields, ["at", "validity"]);
            }
            other => panic!("expected violations, got {other:?}"),
        }
    }
}
