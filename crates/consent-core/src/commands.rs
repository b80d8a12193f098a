//! Write commands: their validation, their idempotency fingerprint, and how they become events.

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashSet;

use crate::error::{ConsentError, Result};
use crate::model::{Catalog, Channel, Decision, Evidence, NewEvent, SUBJECT_WIDE};
use crate::time::Timestamp;
use crate::validate::{MAX_DECISIONS, MAX_WITHDRAW_PURPOSES, Violations};

const DECISIONS: &str = "DECISION_GRANTED, DECISION_DENIED, DECISION_WITHDRAWN";
const CHANNELS: &str =
    "CHANNEL_WEB, CHANNEL_MOBILE, CHANNEL_VOICE, CHANNEL_API, CHANNEL_IMPORT, CHANNEL_ADMIN";

/// A fresh event id: a UUIDv7, so ids sort by creation time.
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// One purpose decision of a [`RecordConsent`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DecisionInput {
    /// Purpose decided on.
    pub purpose_id: String,
    /// Vendor, or empty for the whole purpose.
    pub vendor_id: String,
    /// The choice; `None` when unspecified or unknown on the wire.
    pub decision: Option<Decision>,
}

/// Record 1..N decisions of one subject, atomically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecordConsent {
    /// The person.
    pub subject_id: String,
    /// The decisions.
    pub decisions: Vec<DecisionInput>,
    /// Policy version seen; empty means the latest published.
    pub policy_version_id: String,
    /// Channel; `None` when unspecified or unknown on the wire.
    pub channel: Option<Channel>,
    /// When the person chose; `None` means now.
    pub collected_at: Option<Timestamp>,
    /// Proof.
    pub evidence: Evidence,
    /// Idempotency key, or empty.
    pub idempotency_key: String,
    /// How the request named the person when not by subject id (an identity, as its keyed
    /// alias), or empty: fingerprinted in place of the subject it stood for, so a retry
    /// after the identity was linked or merged elsewhere is still the same request.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub named_by: String,
}

/// Withdraw some purposes, or every granted choice when `purpose_ids` is empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WithdrawConsent {
    /// The person.
    pub subject_id: String,
    /// Purposes to withdraw; empty means every currently granted choice.
    pub purpose_ids: Vec<String>,
    /// Channel; `None` when unspecified or unknown on the wire.
    pub channel: Option<Channel>,
    /// When the person withdrew; `None` means now.
    pub collected_at: Option<Timestamp>,
    /// Proof.
    pub evidence: Evidence,
    /// Idempotency key, or empty.
    pub idempotency_key: String,
    /// How the request named the person when not by subject id (an identity, as its keyed
    /// alias), or empty: fingerprinted in place of the subject it stood for, so a retry
    /// after the identity was linked or merged elsewhere is still the same request.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub named_by: String,
}

/// An idempotency key with the fingerprint of the request it was first used with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idempotency {
    /// The caller's key.
    pub key: String,
    /// SHA-256 of the request as sent (before defaults were filled in).
    pub fingerprint: [u8; 32],
}

/// When a choice takes effect: when the person made it, but never later than `now`, the
/// time it is recorded. A `collected_at` slightly in the future is accepted (clock skew, see
/// [`crate::validate::MAX_FUTURE_SKEW_SECS`]) but stored as `now`, so a choice can never
/// outrank one recorded after it (a grant stamped two minutes ahead would otherwise beat a
/// withdrawal made a minute later, once the clock passed the grant's time).
pub fn effective_collected_at(requested: Option<Timestamp>, now: Timestamp) -> Timestamp {
    requested.map_or(now, |at| at.min(now))
}

/// The channel of a validated command.
fn channel_of(channel: Option<Channel>) -> Result<Channel> {
    channel.ok_or_else(|| ConsentError::invalid("channel", format!("must be one of {CHANNELS}")))
}

fn fingerprint<T: Serialize>(op: &str, value: &T) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(op.as_bytes());
    h.update([0]);
    // Serialising plain structs and BTreeMaps to JSON cannot fail and is deterministic.
    h.update(serde_json::to_vec(value).unwrap_or_default());
    h.finalize().into()
}

fn idempotency(key: &str, fingerprint: [u8; 32]) -> Option<Idempotency> {
    (!key.is_empty()).then(|| Idempotency {
        key: key.to_owned(),
        fingerprint,
    })
}

impl RecordConsent {
    /// Checks every field; `now` bounds `collected_at`.
    pub fn validate(&self, now: Timestamp) -> Result<()> {
        let mut v = Violations::new();
        v.subject_id("subject_id", &self.subject_id);
        if self.decisions.is_empty() {
            v.add("decisions", "must hold at least one decision");
        } else if self.decisions.len() > MAX_DECISIONS {
            v.add(
                "decisions",
                format!(
                    "must hold at most {MAX_DECISIONS} decisions, got {}",
                    self.decisions.len()
                ),
            );
        }
        let mut seen = HashSet::new();
        for (i, d) in self.decisions.iter().enumerate().take(MAX_DECISIONS) {
            v.id(&format!("decisions[{i}].purpose_id"), &d.purpose_id);
            v.optional_id(&format!("decisions[{i}].vendor_id"), &d.vendor_id);
            v.required(&format!("decisions[{i}].decision"), d.decision, DECISIONS);
            if !seen.insert((&d.purpose_id, &d.vendor_id)) {
                v.add(
                    format!("decisions[{i}]"),
                    format!(
                        "repeats purpose `{}` vendor `{}`; one decision per pair",
                        d.purpose_id, d.vendor_id
                    ),
                );
            }
        }
        v.optional_id("policy_version_id", &self.policy_version_id);
        v.required("channel", self.channel, CHANNELS);
        v.not_future("collected_at", self.collected_at, now);
        v.evidence("evidence", &self.evidence);
        v.optional_id("idempotency_key", &self.idempotency_key);
        v.finish()
    }

    /// The idempotency key with this request's fingerprint, if a key was given.
    pub fn idempotency(&self) -> Option<Idempotency> {
        let named = (!self.named_by.is_empty()).then(|| RecordConsent {
            subject_id: String::new(),
            ..self.clone()
        });
        idempotency(
            &self.idempotency_key,
            fingerprint("record", named.as_ref().unwrap_or(self)),
        )
    }

    /// The events to append, checked against the catalogue. Call after [`Self::validate`].
    pub fn plan(
        &self,
        catalog: &Catalog,
        now: Timestamp,
        actor_key_id: &str,
    ) -> Result<Vec<NewEvent>> {
        let collected_at = effective_collected_at(self.collected_at, now);
        let channel = channel_of(self.channel)?;
        let policy = if self.policy_version_id.is_empty() {
            catalog.latest_policy_version(collected_at).ok_or_else(|| {
                ConsentError::FailedPrecondition(
                    "no policy version is published at collected_at; publish one before recording consent".into(),
                )
            })?
        } else {
            let p = catalog.require_policy_version(&self.policy_version_id)?;
            if p.published_at > collected_at {
                return Err(ConsentError::invalid(
                    "policy_version_id",
                    format!("policy version `{}` was published after collected_at", p.id),
                ));
            }
            p
        };
        let mut events = Vec::with_capacity(self.decisions.len());
        for (i, d) in self.decisions.iter().enumerate() {
            let purpose = catalog.require_purpose(&d.purpose_id)?;
            if !d.vendor_id.is_empty() {
                catalog.require_vendor(&d.vendor_id)?;
                if !purpose.vendor_ids.contains(&d.vendor_id) {
                    return Err(ConsentError::invalid(
                        format!("decisions[{i}].vendor_id"),
                        format!(
                            "vendor `{}` is not a vendor of purpose `{}`",
                            d.vendor_id, purpose.id
                        ),
                    ));
                }
            }
            if !policy.purpose_ids.contains(&purpose.id) {
                return Err(ConsentError::invalid(
                    format!("decisions[{i}].purpose_id"),
                    format!(
                        "purpose `{}` is not listed in policy version `{}`",
                        purpose.id, policy.id
                    ),
                ));
            }
            let decision = d.decision.ok_or_else(|| {
                ConsentError::invalid(
                    format!("decisions[{i}].decision"),
                    format!("must be one of {DECISIONS}"),
                )
            })?;
            events.push(NewEvent {
                id: new_event_id(),
                subject_id: self.subject_id.clone(),
                purpose_id: purpose.id.clone(),
                vendor_id: d.vendor_id.clone(),
                decision,
                policy_version_id: policy.id.clone(),
                channel,
                collected_at,
                expires_at: (decision == Decision::Granted)
                    .then(|| purpose.expiry_of(collected_at))
                    .flatten(),
                evidence: self.evidence.clone(),
                actor_key_id: actor_key_id.to_owned(),
            });
        }
        Ok(events)
    }
}

impl WithdrawConsent {
    /// Checks every field; `now` bounds `collected_at`.
    pub fn validate(&self, now: Timestamp) -> Result<()> {
        let mut v = Violations::new();
        v.subject_id("subject_id", &self.subject_id);
        if self.purpose_ids.len() > MAX_WITHDRAW_PURPOSES {
            v.add(
                "purpose_ids",
                format!(
                    "must hold at most {MAX_WITHDRAW_PURPOSES} purposes, got {}",
                    self.purpose_ids.len()
                ),
            );
        } else {
            v.id_list("purpose_ids", &self.purpose_ids);
        }
        v.required("channel", self.channel, CHANNELS);
        v.not_future("collected_at", self.collected_at, now);
        v.evidence("evidence", &self.evidence);
        v.optional_id("idempotency_key", &self.idempotency_key);
        v.finish()
    }

    /// The idempotency key with this request's fingerprint, if a key was given.
    pub fn idempotency(&self) -> Option<Idempotency> {
        let named = (!self.named_by.is_empty()).then(|| WithdrawConsent {
            subject_id: String::new(),
            ..self.clone()
        });
        idempotency(
            &self.idempotency_key,
            fingerprint("withdraw", named.as_ref().unwrap_or(self)),
        )
    }

    /// The events to append, checked against the catalogue. Call after [`Self::validate`].
    ///
    /// With purposes: one WITHDRAWN event per purpose. Without: one *subject-wide* WITHDRAWN
    /// event (purpose and vendor empty, [`SUBJECT_WIDE`]) that `decide` applies to every
    /// purpose and vendor, including purposes catalogued later, so no choice collected
    /// before it (an import arriving afterwards, say) can allow again. It is written even
    /// when nothing was granted: the withdrawal is a fact of its own.
    pub fn plan(
        &self,
        catalog: &Catalog,
        now: Timestamp,
        actor_key_id: &str,
    ) -> Result<Vec<NewEvent>> {
        let collected_at = effective_collected_at(self.collected_at, now);
        let channel = channel_of(self.channel)?;
        let policy_version_id = catalog
            .latest_policy_version(collected_at)
            .map(|p| p.id.clone())
            .unwrap_or_default();
        let withdrawal = |purpose_id: &str| NewEvent {
            id: new_event_id(),
            subject_id: self.subject_id.clone(),
            purpose_id: purpose_id.to_owned(),
            vendor_id: String::new(),
            decision: Decision::Withdrawn,
            policy_version_id: policy_version_id.clone(),
            channel,
            collected_at,
            expires_at: None,
            evidence: self.evidence.clone(),
            actor_key_id: actor_key_id.to_owned(),
        };
        if self.purpose_ids.is_empty() {
            return Ok(vec![withdrawal(SUBJECT_WIDE)]);
        }
        self.purpose_ids
            .iter()
            .map(|id| catalog.require_purpose(id).map(|p| withdrawal(&p.id)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LegalBasis, PolicyVersion, Purpose, PurposeCategory, Vendor};

    fn catalog() -> Catalog {
        let mut c = Catalog::default();
        c.purposes.insert(
            "call_recording".into(),
            Purpose {
                id: "call_recording".into(),
                name: "Call recording".into(),
                description: String::new(),
                category: PurposeCategory::Functional,
                legal_basis: LegalBasis::Consent,
                vendor_ids: vec!["twilio".into()],
                validity_secs: Some(100),
            },
        );
        c.vendors.insert(
            "twilio".into(),
            Vendor {
                id: "twilio".into(),
                name: "Twilio".into(),
                cookies: vec![],
            },
        );
        c.vendors.insert(
            "stripe".into(),
            Vendor {
                id: "stripe".into(),
                name: "Stripe".into(),
                cookies: vec![],
            },
        );
        c.policy_versions.push(PolicyVersion {
            id: "v1".into(),
            published_at: Timestamp(0),
            purpose_ids: vec!["call_recording".into()],
            vendor_ids: vec!["twilio".into()],
            material: false,
            changed_purpose_ids: vec![],
            text_sha256: String::new(),
        });
        c
    }

    fn record(decisions: Vec<(&str, &str, Option<Decision>)>) -> RecordConsent {
        RecordConsent {
            subject_id: "s1".into(),
            decisions: decisions
                .into_iter()
                .map(|(p, v, d)| DecisionInput {
                    purpose_id: p.into(),
                    vendor_id: v.into(),
                    decision: d,
                })
                .collect(),
            policy_version_id: String::new(),
            channel: Some(Channel::Voice),
            collected_at: None,
            evidence: Evidence::default(),
            idempotency_key: String::new(),
            named_by: String::new(),
        }
    }

    fn field_of(err: ConsentError) -> Vec<String> {
        match err {
            ConsentError::InvalidArgument(v) => v.into_iter().map(|f| f.field).collect(),
            other => vec![format!("not invalid: {other}")],
        }
    }

    #[test]
    fn plans_events_with_latest_policy_and_expiry() {
        let cmd = record(vec![("call_recording", "", Some(Decision::Granted))]);
        cmd.validate(Timestamp(1_000))
            .unwrap_or_else(|e| panic!("{e}"));
        let events = cmd
            .plan(&catalog(), Timestamp(1_000), "key1")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].policy_version_id, "v1");
        assert_eq!(events[0].expires_at, Some(Timestamp(1_000 + 100_000_000)));
        assert_eq!(events[0].actor_key_id, "key1");
        assert_eq!(events[0].id.len(), 36);
    }

    #[test]
    fn rejects_unspecified_and_duplicate_decisions() {
        let cmd = record(vec![
            ("call_recording", "", None),
            ("call_recording", "", Some(Decision::Denied)),
        ]);
        let fields = field_of(
            cmd.validate(Timestamp(0))
                .err()
                .unwrap_or(ConsentError::Internal("ok".into())),
        );
        assert_eq!(fields, ["decisions[0].decision", "decisions[1]"]);
    }

    #[test]
    fn catalogue_references_are_checked() {
        let unknown = record(vec![("nope", "", Some(Decision::Granted))]);
        assert_eq!(
            unknown.plan(&catalog(), Timestamp(1), ""),
            Err(ConsentError::not_found("purpose", "nope"))
        );
        let wrong_vendor = record(vec![("call_recording", "stripe", Some(Decision::Granted))]);
        assert_eq!(
            field_of(
                wrong_vendor
                    .plan(&catalog(), Timestamp(1), "")
                    .err()
                    .unwrap_or(ConsentError::Internal("ok".into()))
            ),
            ["decisions[0].vendor_id"]
        );
        let mut future_policy = record(vec![("call_recording", "", Some(Decision::Granted))]);
        future_policy.policy_version_id = "v1".into();
        future_policy.collected_at = Some(Timestamp(-5));
        assert!(future_policy.plan(&catalog(), Timestamp(1), "").is_err());
    }

    #[test]
    fn fingerprint_ignores_nothing_the_caller_sent() {
        let a = record(vec![("call_recording", "", Some(Decision::Granted))]);
        let mut b = a.clone();
        b.evidence.call_id = "c1".into();
        let mut a_key = a.clone();
        a_key.idempotency_key = "k".into();
        let mut b_key = b.clone();
        b_key.idempotency_key = "k".into();
        let fa = a_key.idempotency().map(|i| i.fingerprint);
        assert!(fa.is_some());
        assert_eq!(fa, a_key.clone().idempotency().map(|i| i.fingerprint));
        assert_ne!(fa, b_key.idempotency().map(|i| i.fingerprint));
        assert_eq!(a.idempotency(), None);
    }

    #[test]
    fn a_request_by_identity_is_fingerprinted_by_the_identity_not_its_subject() {
        let mut a = record(vec![("call_recording", "", Some(Decision::Granted))]);
        a.idempotency_key = "k".into();
        a.named_by = "identity:ab".into();
        let mut moved = a.clone();
        moved.subject_id = "s2".into();
        assert_eq!(a.idempotency(), moved.idempotency());
        let mut other = a.clone();
        other.named_by = "identity:cd".into();
        assert_ne!(a.idempotency(), other.idempotency());
        let mut by_id = a.clone();
        by_id.named_by.clear();
        assert_ne!(a.idempotency(), by_id.idempotency());
    }

    #[test]
    fn future_collection_times_take_effect_when_recorded() {
        let now = Timestamp(1_000_000);
        let mut cmd = record(vec![("call_recording", "", Some(Decision::Granted))]);
        cmd.collected_at = Some(Timestamp(now.0 + 120_000_000));
        assert_eq!(cmd.validate(now), Ok(()), "within the skew allowance");
        let events = cmd
            .plan(&catalog(), now, "")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(events[0].collected_at, now);
        assert_eq!(events[0].expires_at, Some(Timestamp(now.0 + 100_000_000)));
        cmd.collected_at = Some(Timestamp(5));
        let past = cmd
            .plan(&catalog(), now, "")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(past[0].collected_at, Timestamp(5), "past times are kept");
    }

    #[test]
    fn withdraw_all_is_one_subject_wide_event() {
        let cmd = WithdrawConsent {
            subject_id: "s1".into(),
            purpose_ids: vec![],
            channel: Some(Channel::Web),
            collected_at: Some(Timestamp(10)),
            evidence: Evidence::default(),
            idempotency_key: String::new(),
            named_by: String::new(),
        };
        let events = cmd
            .plan(&catalog(), Timestamp(20), "k")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(events.len(), 1);
        assert_eq!(
            (
                events[0].purpose_id.as_str(),
                events[0].vendor_id.as_str(),
                events[0].decision
            ),
            (SUBJECT_WIDE, "", Decision::Withdrawn)
        );
        let some = WithdrawConsent {
            purpose_ids: vec!["call_recording".into()],
            ..cmd
        };
        let events = some
            .plan(&catalog(), Timestamp(20), "k")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(events[0].purpose_id, "call_recording");
    }
}
