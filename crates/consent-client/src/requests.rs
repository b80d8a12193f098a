//! Builders for the requests product services send most: [`Record`], [`Withdraw`] and
//! [`Check`]. Each converts into its wire request, so it can be passed to the typed methods
//! as is; any other request is its `pb` message (all fields have defaults).

use std::time::SystemTime;

use consent_proto::v1 as pb;

/// Who a request is about: a subject id, or one of the person's identities (a cookie, a
/// phone number, an account: see [`crate::identity`]), which the service resolves to the
/// subject it is linked to. A `&str` or `String` is a subject id.
///
/// ```
/// use consent_client::{Check, Subject, identity, pb};
///
/// let by_id: pb::CheckRequest = Check::new("acct-7781", "call_recording").into();
/// assert_eq!(by_id.subject_id, "acct-7781");
/// let by_phone: pb::CheckRequest = Check::new(identity::phone("+32 470 12 34 56"), "call_recording").into();
/// assert!(by_phone.subject_id.is_empty());
/// assert_eq!(by_phone.identity.map(|i| i.r#type()), Some(pb::IdentityType::Phone));
/// let _ = Subject::from("acct-7781");
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum Subject {
    /// A subject id.
    Id(String),
    /// An identity of the person.
    Identity(pb::Identity),
}

impl From<&str> for Subject {
    fn from(id: &str) -> Subject {
        Subject::Id(id.to_owned())
    }
}

impl From<&String> for Subject {
    fn from(id: &String) -> Subject {
        Subject::Id(id.clone())
    }
}

impl From<String> for Subject {
    fn from(id: String) -> Subject {
        Subject::Id(id)
    }
}

impl From<pb::Identity> for Subject {
    fn from(identity: pb::Identity) -> Subject {
        Subject::Identity(identity)
    }
}

impl Subject {
    /// Writes this subject into a request's `subject_id` and `identity` fields.
    fn write(self, subject_id: &mut String, identity: &mut Option<pb::Identity>) {
        match self {
            Subject::Id(id) => *subject_id = id,
            Subject::Identity(i) => *identity = Some(i),
        }
    }
}

/// A RecordConsent: one subject's decisions, where and when they were made, the proof.
///
/// ```
/// use consent_client::{Record, pb};
///
/// let request: pb::RecordConsentRequest = Record::new("+32470000001")
///     .grant("call_recording")
///     .deny("marketing_communications")
///     .channel(pb::Channel::Voice)
///     .evidence(pb::Evidence { call_id: "call-42".into(), ..Default::default() })
///     .idempotency_key("call-42-consent")
///     .into();
/// assert_eq!(request.decisions.len(), 2);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Record(pb::RecordConsentRequest);

impl Record {
    /// Decisions of `subject` (an id or an identity), on the API channel until
    /// [`Record::channel`] says else.
    pub fn new(subject: impl Into<Subject>) -> Record {
        let mut request = pb::RecordConsentRequest {
            channel: pb::Channel::Api.into(),
            ..Default::default()
        };
        subject
            .into()
            .write(&mut request.subject_id, &mut request.identity);
        Record(request)
    }

    /// Adds a decision about `purpose_id` (and, when not empty, one vendor of it).
    pub fn decision(
        mut self,
        purpose_id: impl Into<String>,
        vendor_id: impl Into<String>,
        decision: pb::Decision,
    ) -> Record {
        self.0.decisions.push(pb::PurposeDecision {
            purpose_id: purpose_id.into(),
            vendor_id: vendor_id.into(),
            decision: decision.into(),
        });
        self
    }

    /// The person agrees to `purpose_id`.
    pub fn grant(self, purpose_id: impl Into<String>) -> Record {
        self.decision(purpose_id, "", pb::Decision::Granted)
    }

    /// The person refuses `purpose_id`.
    pub fn deny(self, purpose_id: impl Into<String>) -> Record {
        self.decision(purpose_id, "", pb::Decision::Denied)
    }

    /// Where the choice was made.
    pub fn channel(mut self, channel: pb::Channel) -> Record {
        self.0.channel = channel.into();
        self
    }

    /// The policy version the person saw (default: the latest published).
    pub fn policy_version(mut self, id: impl Into<String>) -> Record {
        self.0.policy_version_id = id.into();
        self
    }

    /// When the person chose (default: now).
    pub fn collected_at(mut self, at: SystemTime) -> Record {
        self.0.collected_at = Some(crate::timestamp(at));
        self
    }

    /// The proof of the choice.
    pub fn evidence(mut self, evidence: pb::Evidence) -> Record {
        self.0.evidence = Some(evidence);
        self
    }

    /// The idempotency key (default: one the client makes, the same for every retry).
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Record {
        self.0.idempotency_key = key.into();
        self
    }
}

impl From<Record> for pb::RecordConsentRequest {
    fn from(r: Record) -> pb::RecordConsentRequest {
        r.0
    }
}

/// A WithdrawConsent: some purposes, or everything.
///
/// ```
/// use consent_client::{Withdraw, pb};
///
/// let some: pb::WithdrawConsentRequest = Withdraw::purposes("+32470000001", ["analytics"]).into();
/// assert_eq!(some.purpose_ids, ["analytics"]);
/// let all: pb::WithdrawConsentRequest = Withdraw::all("+32470000001").channel(pb::Channel::Voice).into();
/// assert!(all.purpose_ids.is_empty());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Withdraw(pb::WithdrawConsentRequest);

impl Withdraw {
    /// Withdraws every purpose and vendor of `subject_id`, including purposes catalogued
    /// later (one subject-wide event).
    pub fn all(subject: impl Into<Subject>) -> Withdraw {
        let mut request = pb::WithdrawConsentRequest {
            channel: pb::Channel::Api.into(),
            ..Default::default()
        };
        subject
            .into()
            .write(&mut request.subject_id, &mut request.identity);
        Withdraw(request)
    }

    /// Withdraws these purposes of `subject` (an id or an identity).
    pub fn purposes<I, S>(subject: impl Into<Subject>, purpose_ids: I) -> Withdraw
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut w = Withdraw::all(subject);
        w.0.purpose_ids = purpose_ids.into_iter().map(Into::into).collect();
        w
    }

    /// Where the withdrawal was made.
    pub fn channel(mut self, channel: pb::Channel) -> Withdraw {
        self.0.channel = channel.into();
        self
    }

    /// When the person withdrew (default: now).
    pub fn collected_at(mut self, at: SystemTime) -> Withdraw {
        self.0.collected_at = Some(crate::timestamp(at));
        self
    }

    /// The proof of the withdrawal.
    pub fn evidence(mut self, evidence: pb::Evidence) -> Withdraw {
        self.0.evidence = Some(evidence);
        self
    }

    /// The idempotency key (default: one the client makes, the same for every retry).
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Withdraw {
        self.0.idempotency_key = key.into();
        self
    }
}

impl From<Withdraw> for pb::WithdrawConsentRequest {
    fn from(w: Withdraw) -> pb::WithdrawConsentRequest {
        w.0
    }
}

/// A Check: may this purpose (and vendor) be processed for this subject?
///
/// ```
/// use consent_client::{Check, pb};
///
/// let request: pb::CheckRequest = Check::new("+32470000001", "analytics")
///     .vendor("ga4")
///     .at_least_revision(42)
///     .into();
/// assert_eq!(request.vendor_id, "ga4");
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Check(pb::CheckRequest);

impl Check {
    /// `purpose_id` for `subject` (an id or an identity), now, from the fastest source the
    /// service trusts.
    pub fn new(subject: impl Into<Subject>, purpose_id: impl Into<String>) -> Check {
        let mut request = pb::CheckRequest {
            purpose_id: purpose_id.into(),
            ..Default::default()
        };
        subject
            .into()
            .write(&mut request.subject_id, &mut request.identity);
        Check(request)
    }

    /// The vendor that would receive the data.
    pub fn vendor(mut self, vendor_id: impl Into<String>) -> Check {
        self.0.vendor_id = vendor_id.into();
        self
    }

    /// The answer that held at `at`.
    pub fn at(mut self, at: SystemTime) -> Check {
        self.0.at = Some(crate::timestamp(at));
        self
    }

    /// Answered from data at least as new as `revision` (one a write returned).
    pub fn at_least_revision(mut self, revision: i64) -> Check {
        self.0.consistency = Some(pb::Consistency {
            requirement: Some(pb::consistency::Requirement::AtLeastRevision(revision)),
        });
        self
    }

    /// Answered from the ledger itself, bypassing every cache.
    pub fn fully_consistent(mut self) -> Check {
        self.0.consistency = Some(pb::Consistency {
            requirement: Some(pb::consistency::Requirement::FullyConsistent(true)),
        });
        self
    }
}

impl From<Check> for pb::CheckRequest {
    fn from(c: Check) -> pb::CheckRequest {
        c.0
    }
}
