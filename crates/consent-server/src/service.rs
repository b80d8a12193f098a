//! The gRPC handlers: thin. Each converts the request (collecting every bad field), calls
//! [`Ledger`], and converts the result; errors become statuses in [`crate::error`].

use consent_core::access::{Scope, parse_scopes};
use consent_core::identity::SubjectRef;
use consent_core::validate::{MAX_BATCH_CHECKS, Violations};
use consent_core::{Catalog, ConsentError, Timestamp};
use consent_proto::v1 as pb;
use consent_proto::v1::admin_service_server::AdminService;
use consent_proto::v1::catalog_service_server::CatalogService;
use consent_proto::v1::consent_service_server::ConsentService;
use consent_store::{AppendOutcome, Consistency, EventQuery, LedgerEntry};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::Authenticator;
use crate::context::principal;
use crate::convert::{self, Named};
use crate::error::status;
use crate::ledger::{CheckQuery, Ledger};
use crate::retention::Retention;
use crate::retention_service::record_out;
use crate::watch::{self, FeedControl, WatchFilter};

/// Room kept in every answer for framing and the fields beside its repeated ones.
pub const RESPONSE_HEADROOM: usize = 16 * 1024;

/// Implements `consent.v1.ConsentService`, `CatalogService`, `AdminService` and (in
/// [`crate::retention_service`]) `RetentionService`.
#[derive(Clone, Debug)]
pub struct Api {
    ledger: Ledger,
    retention: Retention,
    auth: Arc<Authenticator>,
    feeds: FeedControl,
    /// `limits.max_message_bytes`: no answer may be larger.
    max_message_bytes: usize,
    /// Places for CheckStream streams on this replica.
    check_streams: crate::check_stream::Places,
    /// Places for ExportSnapshot streams on this replica.
    snapshots: crate::check_stream::Places,
    /// Decisions and ledger revisions are counted here.
    metrics: Arc<crate::metrics::Metrics>,
}

impl Api {
    /// Handlers over `ledger`; answers are kept within `max_message_bytes`.
    pub fn new(
        ledger: Ledger,
        retention: Retention,
        auth: Arc<Authenticator>,
        feeds: FeedControl,
        max_message_bytes: usize,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Api {
        Api {
            ledger,
            retention,
            auth,
            feeds,
            max_message_bytes,
            metrics,
            check_streams: crate::check_stream::Places::check_streams(),
            snapshots: crate::snapshot::places(),
        }
    }

    /// The consent layer.
    pub(crate) fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The retention layer.
    pub(crate) fn retention(&self) -> &Retention {
        &self.retention
    }

    /// Counts check answers by outcome and reason, and notes the batch size on the
    /// request's span.
    fn count_decisions(&self, checked: &[crate::ledger::Checked]) {
        crate::observe::note(
            "consent.subjects",
            i64::try_from(checked.len()).unwrap_or(i64::MAX),
        );
        self.metrics.decisions(checked.iter().map(|c| {
            (
                c.verdict.allowed,
                convert::reason_out(c.verdict.reason).as_str_name(),
            )
        }));
    }

    /// Notes a committed write's revision (the `consent.ledger.revision` gauge).
    pub(crate) fn committed(&self, who: &crate::context::Principal, revision: i64) {
        self.metrics.ledger_revision(&who.tenant_id, revision);
    }

    /// How many bytes of repeated entries one answer may carry.
    fn entry_budget(&self) -> usize {
        self.max_message_bytes.saturating_sub(RESPONSE_HEADROOM)
    }

    /// A read's answer, or `INVALID_ARGUMENT` naming the message limit when it would not fit
    /// (nothing was written, so the caller can ask for less).
    fn deliverable<T: prost::Message>(&self, answer: T, field: &str, advice: &str) -> RpcResult<T> {
        let size = answer.encoded_len();
        if size > self.max_message_bytes {
            return Err(status(ConsentError::invalid(
                field,
                format!(
                    "the answer would be {size} bytes, over limits.max_message_bytes ({}); {advice}",
                    self.max_message_bytes
                ),
            )));
        }
        Ok(Response::new(answer))
    }

    /// Whether a stream's caller may still call CheckStream (its key neither revoked nor
    /// expired, still holding `consent:read`).
    pub(crate) async fn caller_still_valid(
        &self,
        who: &crate::context::Principal,
    ) -> Result<(), Status> {
        self.caller_still_valid_for(who, Scope::ConsentRead).await
    }

    /// Whether the caller's key is within its request rate (for each request of a stream).
    pub(crate) fn rate_check(&self, who: &crate::context::Principal) -> Result<(), Status> {
        self.auth.rate_check(who)
    }

    /// Whether a stream's caller still holds `scope` with a key neither revoked nor expired.
    pub(crate) async fn caller_still_valid_for(
        &self,
        who: &crate::context::Principal,
        scope: Scope,
    ) -> Result<(), Status> {
        self.auth.still_valid(who, scope).await
    }

    /// The ledger reads feeds and snapshots share (a few at a time per replica).
    pub(crate) fn feed_reads(&self) -> &tokio::sync::Semaphore {
        &self.feeds.reads
    }

    /// The server's shutdown signal (true once shutting down), which streams end on.
    pub(crate) fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.feeds.shutdown.clone()
    }

    /// The answers to a batch of checks (CheckBatch, and each request of CheckStream).
    pub(crate) async fn answer_checks(
        &self,
        who: &crate::context::Principal,
        checks: &[pb::CheckRequest],
        consistency_field: Option<&pb::Consistency>,
    ) -> Result<pb::CheckBatchResponse, Status> {
        if checks.len() > MAX_BATCH_CHECKS {
            return Err(status(ConsentError::invalid(
                "checks",
                format!(
                    "must hold at most {MAX_BATCH_CHECKS} checks, got {}",
                    checks.len()
                ),
            )));
        }
        let mut v = Violations::new();
        if checks.is_empty() {
            v.add("checks", "must hold at least one check");
        }
        let (mut queries, named): (Vec<CheckQuery>, Vec<Named>) = checks
            .iter()
            .enumerate()
            .map(|(i, c)| check_query(&mut v, &format!("checks[{i}]."), c))
            .unzip();
        let consistency = consistency(&mut v, "consistency", consistency_field);
        finish(v)?;
        // Checks by subject id (the usual batch) skip resolution altogether.
        if named.iter().any(|n| matches!(n, Named::ByIdentity(_))) {
            let subjects = named
                .into_iter()
                .zip(&queries)
                .map(|(n, q)| match n {
                    Named::ByIdentity(identity) => Some(SubjectRef::Identity(identity)),
                    Named::ById => Some(SubjectRef::Id(q.subject_id.clone())),
                    Named::Invalid => None,
                })
                .map(validated_subject)
                .collect::<Result<Vec<_>, Status>>()?;
            let ids = self
                .ledger
                .subjects_of(who, subjects)
                .await
                .map_err(status)?;
            for (query, id) in queries.iter_mut().zip(ids) {
                query.subject_id = id;
            }
        }
        let checked = self
            .ledger
            .check_many(who, &queries, consistency)
            .await
            .map_err(|e| missing_in_batch(e, &queries))?;
        self.count_decisions(&checked);
        let revision = checked.iter().map(|c| c.revision).max().unwrap_or_default();
        let results = checked
            .into_iter()
            .zip(&queries)
            .map(|(c, q)| {
                convert::verdict_out(
                    c.verdict,
                    c.answered_by.as_deref().unwrap_or(&q.subject_id),
                    &q.purpose_id,
                    &q.vendor_id,
                    c.revision,
                )
            })
            .collect();
        self.deliverable(
            pb::CheckBatchResponse { results, revision },
            "checks",
            "send fewer checks per batch",
        )
        .map(Response::into_inner)
    }

    /// The catalogue of the caller's tenant.
    async fn catalog_for<T>(&self, request: &Request<T>) -> Result<Arc<Catalog>, Status> {
        let who = principal(request)?;
        self.ledger.catalog(&who).await.map_err(status)
    }
}

/// A required id field of a lookup request.
fn lookup_id(id: &str) -> Result<(), Status> {
    let mut v = Violations::new();
    v.id("id", id);
    finish(v)
}

type RpcResult<T> = Result<Response<T>, Status>;

/// Bytes an entry adds to a repeated message field: tag, length, body.
pub(crate) fn entry_bytes<M: prost::Message>(entry: &M) -> usize {
    let len = entry.encoded_len();
    1 + prost::length_delimiter_len(len) + len
}

/// An entry of a ledger answer as sent: a consent event or a ledger record.
#[derive(Clone, Debug)]
enum WireEntry {
    Event(Box<pb::ConsentEvent>),
    Record(Box<pb::LedgerRecord>),
}

impl WireEntry {
    /// With the evidence and detail (ListEvents) or without (Watch).
    fn of(entry: &LedgerEntry, full: bool) -> WireEntry {
        match entry {
            LedgerEntry::Event(e) if full => {
                WireEntry::Event(Box::new(convert::event_out(&e.event)))
            }
            LedgerEntry::Event(e) => {
                WireEntry::Event(Box::new(convert::event_digest_out(&e.event)))
            }
            LedgerEntry::Record(r) => WireEntry::Record(Box::new(record_out(&r.record, full))),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            WireEntry::Event(e) => entry_bytes(e.as_ref()),
            WireEntry::Record(r) => entry_bytes(r.as_ref()),
        }
    }

    fn revision(&self) -> i64 {
        match self {
            WireEntry::Event(e) => e.revision,
            WireEntry::Record(r) => r.revision,
        }
    }
}

/// A run of entries as the two lists of an answer, each in revision order.
fn split(run: Vec<WireEntry>) -> (Vec<pb::ConsentEvent>, Vec<pb::LedgerRecord>) {
    let mut events = Vec::new();
    let mut records = Vec::new();
    for entry in run {
        match entry {
            WireEntry::Event(e) => events.push(*e),
            WireEntry::Record(r) => records.push(*r),
        }
    }
    (events, records)
}

/// Splits `entries` into runs whose sizes total at most `budget` bytes each (a run holds
/// at least one entry, whatever its size: every single event fits a message by
/// construction of the limits, see `config::MIN_MESSAGE_BYTES`).
fn runs_within<T>(entries: Vec<T>, budget: usize, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut runs: Vec<Vec<T>> = Vec::new();
    let mut used = 0;
    for entry in entries {
        let bytes = size(&entry);
        match runs.last_mut() {
            Some(run) if used + bytes <= budget => run.push(entry),
            _ => {
                runs.push(vec![entry]);
                used = 0;
            }
        }
        used += bytes;
    }
    runs
}

fn finish(v: Violations) -> Result<(), Status> {
    v.finish().map_err(status)
}

/// The consistency a request asks for (none set: minimize latency).
fn consistency(v: &mut Violations, field: &str, c: Option<&pb::Consistency>) -> Consistency {
    use pb::consistency::Requirement;
    match c.and_then(|c| c.requirement.as_ref()) {
        Some(Requirement::AtLeastRevision(r)) if *r < 0 => {
            v.add(format!("{field}.at_least_revision"), "must not be negative");
            Consistency::Full
        }
        Some(Requirement::AtLeastRevision(r)) => Consistency::AtLeast(*r),
        Some(Requirement::FullyConsistent(true)) => Consistency::Full,
        Some(Requirement::FullyConsistent(false) | Requirement::MinimizeLatency(_)) | None => {
            Consistency::MinimizeLatency
        }
    }
}

/// A check's query and how it names the person (its `subject_id` is filled in once an
/// identity, if that is how it names the person, is resolved).
fn check_query(v: &mut Violations, prefix: &str, r: &pb::CheckRequest) -> (CheckQuery, Named) {
    let named = convert::subject_named_in(v, prefix, &r.subject_id, r.identity.as_ref());
    if r.at.is_some() && r.identity.is_some() {
        v.add(format!("{prefix}at"), AT_WITH_IDENTITY);
    }
    v.id(&format!("{prefix}purpose_id"), &r.purpose_id);
    v.optional_id(&format!("{prefix}vendor_id"), &r.vendor_id);
    let query = CheckQuery {
        subject_id: r.subject_id.clone(),
        purpose_id: r.purpose_id.clone(),
        vendor_id: r.vendor_id.clone(),
        at: convert::time_in(v, &format!("{prefix}at"), r.at.as_ref()),
    };
    (query, named)
}

/// Why an as-of read cannot name the person by an identity.
const AT_WITH_IDENTITY: &str = "cannot be combined with identity: the identity may have been linked to another subject since; resolve it (ResolveIdentity, or the identity_linked records of ListEvents) and ask by subject_id";

/// A subject reference that passed validation (`None` would be a bug: validation sets a
/// violation for every request without one).
pub(crate) fn validated_subject(subject: Option<SubjectRef>) -> Result<SubjectRef, Status> {
    subject.ok_or_else(|| {
        status(ConsentError::Internal(
            "a request without a subject passed validation".into(),
        ))
    })
}

impl Api {
    /// The subject a validated request names.
    pub(crate) async fn subject(
        &self,
        who: &crate::context::Principal,
        subject: Option<SubjectRef>,
    ) -> Result<String, Status> {
        self.ledger
            .subject_of(who, validated_subject(subject)?)
            .await
            .map_err(status)
    }
}

/// A write's events, without their evidence: the caller sent it, and its size must not
/// multiply by the number of decisions (70 decisions with maximal evidence would be 10 MB).
fn events_out(outcome: &AppendOutcome) -> Vec<pb::ConsentEvent> {
    outcome
        .events
        .iter()
        .map(convert::event_digest_out)
        .collect()
}

#[tonic::async_trait]
impl ConsentService for Api {
    async fn record_consent(
        &self,
        request: Request<pb::RecordConsentRequest>,
    ) -> RpcResult<pb::RecordConsentResponse> {
        let who = principal(&request)?;
        let mut v = Violations::new();
        let r = request.into_inner();
        let subject = convert::command_subject_in(&mut v, &r.subject_id, r.identity.as_ref());
        let command = convert::record_in(&mut v, r);
        finish(v)?;
        let outcome = self
            .ledger
            .write_consent(&who, &validated_subject(subject)?, command)
            .await
            .map_err(status)?;
        self.committed(&who, outcome.revision);
        Ok(Response::new(pb::RecordConsentResponse {
            events: events_out(&outcome),
            revision: outcome.revision,
        }))
    }

    async fn withdraw_consent(
        &self,
        request: Request<pb::WithdrawConsentRequest>,
    ) -> RpcResult<pb::WithdrawConsentResponse> {
        let who = principal(&request)?;
        let mut v = Violations::new();
        let r = request.into_inner();
        let subject = convert::command_subject_in(&mut v, &r.subject_id, r.identity.as_ref());
        let command = convert::withdraw_in(&mut v, r);
        finish(v)?;
        let outcome = self
            .ledger
            .write_consent(&who, &validated_subject(subject)?, command)
            .await
            .map_err(status)?;
        self.committed(&who, outcome.revision);
        Ok(Response::new(pb::WithdrawConsentResponse {
            events: events_out(&outcome),
            revision: outcome.revision,
        }))
    }

    async fn check(&self, request: Request<pb::CheckRequest>) -> RpcResult<pb::CheckResponse> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let (mut query, named) = check_query(&mut v, "", &r);
        let consistency = consistency(&mut v, "consistency", r.consistency.as_ref());
        finish(v)?;
        if let Named::ByIdentity(identity) = named {
            query.subject_id = self
                .subject(&who, Some(SubjectRef::Identity(identity)))
                .await?;
        }
        let mut checked = self
            .ledger
            .check_many(&who, std::slice::from_ref(&query), consistency)
            .await
            .map_err(status)?;
        self.count_decisions(&checked);
        let Some(c) = checked.pop() else {
            return Err(status(ConsentError::Internal(
                "a check produced no result".into(),
            )));
        };
        Ok(Response::new(convert::verdict_out(
            c.verdict,
            c.answered_by.as_deref().unwrap_or(&query.subject_id),
            &query.purpose_id,
            &query.vendor_id,
            c.revision,
        )))
    }

    async fn check_batch(
        &self,
        request: Request<pb::CheckBatchRequest>,
    ) -> RpcResult<pb::CheckBatchResponse> {
        let who = principal(&request)?;
        let r = request.into_inner();
        self.answer_checks(&who, &r.checks, r.consistency.as_ref())
            .await
            .map(Response::new)
    }

    type CheckStreamStream =
        Pin<Box<dyn Stream<Item = Result<pb::CheckStreamResponse, Status>> + Send + 'static>>;

    async fn check_stream(
        &self,
        request: Request<tonic::Streaming<pb::CheckStreamRequest>>,
    ) -> RpcResult<Self::CheckStreamStream> {
        let who = principal(&request)?;
        let place = self.check_streams.take(&who.tenant_id)?;
        let answers = crate::check_stream::start(self.clone(), who, request.into_inner(), place);
        Ok(Response::new(Box::pin(answers)))
    }

    type ExportSnapshotStream =
        Pin<Box<dyn Stream<Item = Result<pb::ExportSnapshotResponse, Status>> + Send + 'static>>;

    async fn export_snapshot(
        &self,
        request: Request<pb::ExportSnapshotRequest>,
    ) -> RpcResult<Self::ExportSnapshotStream> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        v.id_list("purpose_ids", &r.purpose_ids);
        v.optional_id("vendor_id", &r.vendor_id);
        if r.at_revision < 0 {
            v.add("at_revision", "must not be negative");
        }
        v.optional_subject_id("after_subject_id", &r.after_subject_id);
        finish(v)?;
        let catalog = self.ledger.catalog(&who).await.map_err(status)?;
        let purposes = if r.purpose_ids.is_empty() {
            catalog.purposes.values().cloned().collect()
        } else {
            r.purpose_ids
                .iter()
                .map(|id| catalog.require_purpose(id).cloned())
                .collect::<Result<Vec<_>, _>>()
                .map_err(status)?
        };
        if !r.vendor_id.is_empty() {
            catalog.require_vendor(&r.vendor_id).map_err(status)?;
        }
        let plan = crate::snapshot::SnapshotPlan {
            purposes,
            vendor_id: r.vendor_id,
            at_revision: Some(r.at_revision).filter(|r| *r > 0),
            after_subject_id: r.after_subject_id,
            catalog,
        };
        let place = self.snapshots.take(&who.tenant_id)?;
        let shape = crate::snapshot::Shape {
            page: crate::snapshot::PAGE,
            chunk_subjects: crate::snapshot::CHUNK_SUBJECTS,
            chunk_bytes: self.entry_budget().min(crate::snapshot::CHUNK_BYTES),
            stall: crate::snapshot::STALL_LIMIT,
        };
        let stream = crate::snapshot::start(self.clone(), who, plan, place, shape).await?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_subject_state(
        &self,
        request: Request<pb::GetSubjectStateRequest>,
    ) -> RpcResult<pb::GetSubjectStateResponse> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let subject = convert::subject_ref_in(&mut v, "", &r.subject_id, r.identity.as_ref());
        if r.at.is_some() && r.identity.is_some() {
            v.add("at", AT_WITH_IDENTITY);
        }
        let at = convert::time_in(&mut v, "at", r.at.as_ref());
        let consistency = consistency(&mut v, "consistency", r.consistency.as_ref());
        finish(v)?;
        let subject_id = self.subject(&who, subject).await?;
        let (decisions, revision, flags) = self
            .ledger
            .subject_decisions(&who, &subject_id, at, consistency)
            .await
            .map_err(status)?;
        // Answered for the subject a merge closed this one into: echoed, as Check does.
        let answering = flags.merged_into.as_deref().unwrap_or(&subject_id);
        let purposes = decisions
            .into_iter()
            .map(|(p, verdict)| convert::verdict_out(verdict, answering, &p.id, "", revision))
            .collect();
        self.deliverable(
            pb::GetSubjectStateResponse {
                purposes,
                revision,
                flags: Some(convert::flags_out(&flags)),
            },
            "subject_id",
            "the catalogue has too many purposes for one answer",
        )
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> RpcResult<pb::ListEventsResponse> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        // The subject filter is optional: by id, by identity, or none.
        let subject = if r.subject_id.is_empty() && r.identity.is_none() {
            None
        } else {
            convert::subject_ref_in(&mut v, "", &r.subject_id, r.identity.as_ref())
        };
        v.optional_id("purpose_id", &r.purpose_id);
        let from = convert::time_in(&mut v, "from", r.from.as_ref());
        let to = convert::time_in(&mut v, "to", r.to.as_ref());
        let page_size = v.page_size("page_size", r.page_size);
        let after_revision = if r.page_token.is_empty() {
            0
        } else {
            r.page_token
                .strip_prefix("r")
                .and_then(|n| n.parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .unwrap_or_else(|| {
                    v.add(
                        "page_token",
                        "is not a next_page_token of a previous ListEvents page",
                    );
                    0
                })
        };
        finish(v)?;
        let subject_id = match subject {
            Some(subject) => Some(self.subject(&who, Some(subject)).await?),
            None => None,
        };
        let query = EventQuery {
            subject_id,
            purpose_ids: Some(r.purpose_id)
                .filter(|s| !s.is_empty())
                .into_iter()
                .collect(),
            collected_from: from,
            collected_to: to,
            after_revision,
            until_revision: None,
            limit: page_size + 1,
            by_subject: None,
            without_evidence: false,
        };
        let stored = self.ledger.entries(&who, &query).await.map_err(status)?;
        let more = stored.len() > page_size;
        let entries: Vec<WireEntry> = stored
            .iter()
            .take(page_size)
            .map(|e| WireEntry::of(e, true))
            .collect();
        // A page is cut by size as well as count, so any page is deliverable whatever the
        // events' evidence holds; the rest follows with the next token.
        let listed = entries.len();
        let run = runs_within(entries, self.entry_budget(), WireEntry::bytes)
            .into_iter()
            .next()
            .unwrap_or_default();
        let next_page_token = if more || run.len() < listed {
            run.last()
                .map(|e| format!("r{}", e.revision()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let (events, records) = split(run);
        Ok(Response::new(pb::ListEventsResponse {
            events,
            next_page_token,
            records,
        }))
    }

    type WatchStream =
        Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send + 'static>>;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> RpcResult<Self::WatchStream> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        if r.from_revision < 0 {
            v.add("from_revision", "must not be negative");
        }
        v.optional_subject_id("subject_id", &r.subject_id);
        v.id_list("purpose_ids", &r.purpose_ids);
        finish(v)?;
        let filter = WatchFilter {
            subject_id: Some(r.subject_id).filter(|s| !s.is_empty()),
            purpose_ids: r.purpose_ids,
        };
        let batches = watch::start(
            Arc::clone(self.ledger.store()),
            who.tenant_id.clone(),
            r.from_revision,
            filter,
            self.feeds.clone(),
        )
        .map_err(status)?;
        let budget = self.entry_budget();
        // The key was checked when the stream opened; a feed outlives that check, so every
        // batch asks again: a revoked or expired key ends the stream (UNAUTHENTICATED).
        let api = self.clone();
        let batches = futures::StreamExt::then(ReceiverStream::new(batches), move |batch| {
            let api = api.clone();
            let who = who.clone();
            async move {
                match api.caller_still_valid_for(&who, Scope::ConsentRead).await {
                    Ok(()) => batch,
                    Err(refused) => Err(refused),
                }
            }
        });
        // Events go out without their evidence (ListEvents has it), in messages cut by size.
        let stream = futures::StreamExt::flat_map(batches, move |batch| {
            let messages: Vec<Result<pb::WatchResponse, Status>> = match batch {
                Err(e) => vec![Err(e)],
                Ok(b) if b.entries.is_empty() => vec![Ok(pb::WatchResponse {
                    events: Vec::new(),
                    revision: b.revision,
                    records: Vec::new(),
                })],
                Ok(b) => {
                    let entries = b.entries.iter().map(|e| WireEntry::of(e, false)).collect();
                    let runs = runs_within(entries, budget, WireEntry::bytes);
                    let last = runs.len().saturating_sub(1);
                    runs.into_iter()
                        .enumerate()
                        .map(|(i, run)| {
                            // Everything up to a run's last entry was delivered; the last
                            // run carries the batch's cursor.
                            let revision = if i == last {
                                b.revision
                            } else {
                                run.last().map_or(b.revision, WireEntry::revision)
                            };
                            let (events, records) = split(run);
                            Ok(pb::WatchResponse {
                                events,
                                revision,
                                records,
                            })
                        })
                        .collect()
                }
            };
            futures::stream::iter(messages)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

fn required<T>(field: &str, value: Option<T>) -> Result<T, Status> {
    value.ok_or_else(|| status(ConsentError::invalid(field, "is required")))
}

#[tonic::async_trait]
impl CatalogService for Api {
    async fn upsert_purpose(
        &self,
        request: Request<pb::UpsertPurposeRequest>,
    ) -> RpcResult<pb::UpsertPurposeResponse> {
        let who = principal(&request)?;
        let wire = required("purpose", request.into_inner().purpose)?;
        let mut v = Violations::new();
        let purpose = convert::purpose_in(&mut v, "purpose", wire);
        finish(v)?;
        let Some(purpose) = purpose else {
            return Err(status(ConsentError::invalid("purpose", "is invalid")));
        };
        self.ledger
            .upsert_purpose(&who, &purpose)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UpsertPurposeResponse {
            purpose: Some(convert::purpose_out(&purpose)),
        }))
    }

    async fn get_purpose(
        &self,
        request: Request<pb::GetPurposeRequest>,
    ) -> RpcResult<pb::GetPurposeResponse> {
        lookup_id(&request.get_ref().id)?;
        let catalog = self.catalog_for(&request).await?;
        let purpose = catalog
            .require_purpose(&request.get_ref().id)
            .map_err(status)?;
        Ok(Response::new(pb::GetPurposeResponse {
            purpose: Some(convert::purpose_out(purpose)),
        }))
    }

    async fn list_purposes(
        &self,
        request: Request<pb::ListPurposesRequest>,
    ) -> RpcResult<pb::ListPurposesResponse> {
        let catalog = self.catalog_for(&request).await?;
        Ok(Response::new(pb::ListPurposesResponse {
            purposes: catalog
                .purposes
                .values()
                .map(convert::purpose_out)
                .collect(),
        }))
    }

    async fn upsert_vendor(
        &self,
        request: Request<pb::UpsertVendorRequest>,
    ) -> RpcResult<pb::UpsertVendorResponse> {
        let who = principal(&request)?;
        let wire = required("vendor", request.into_inner().vendor)?;
        let mut v = Violations::new();
        let vendor = convert::vendor_in(&mut v, "vendor", wire);
        finish(v)?;
        self.ledger
            .upsert_vendor(&who, &vendor)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UpsertVendorResponse {
            vendor: Some(convert::vendor_out(&vendor)),
        }))
    }

    async fn list_vendors(
        &self,
        request: Request<pb::ListVendorsRequest>,
    ) -> RpcResult<pb::ListVendorsResponse> {
        let catalog = self.catalog_for(&request).await?;
        Ok(Response::new(pb::ListVendorsResponse {
            vendors: catalog.vendors.values().map(convert::vendor_out).collect(),
        }))
    }

    async fn publish_policy_version(
        &self,
        request: Request<pb::PublishPolicyVersionRequest>,
    ) -> RpcResult<pb::PublishPolicyVersionResponse> {
        let who = principal(&request)?;
        let wire = required("policy_version", request.into_inner().policy_version)?;
        let mut v = Violations::new();
        let policy = convert::policy_in(&mut v, "policy_version", wire, Timestamp::now());
        finish(v)?;
        let stored = self
            .ledger
            .publish_policy_version(&who, &policy)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::PublishPolicyVersionResponse {
            policy_version: Some(convert::policy_out(&stored)),
        }))
    }

    async fn get_policy_version(
        &self,
        request: Request<pb::GetPolicyVersionRequest>,
    ) -> RpcResult<pb::GetPolicyVersionResponse> {
        lookup_id(&request.get_ref().id)?;
        let catalog = self.catalog_for(&request).await?;
        let policy = catalog
            .require_policy_version(&request.get_ref().id)
            .map_err(status)?;
        Ok(Response::new(pb::GetPolicyVersionResponse {
            policy_version: Some(convert::policy_out(policy)),
        }))
    }

    async fn list_policy_versions(
        &self,
        request: Request<pb::ListPolicyVersionsRequest>,
    ) -> RpcResult<pb::ListPolicyVersionsResponse> {
        let catalog = self.catalog_for(&request).await?;
        Ok(Response::new(pb::ListPolicyVersionsResponse {
            policy_versions: catalog
                .policy_versions
                .iter()
                .map(convert::policy_out)
                .collect(),
        }))
    }
}

#[tonic::async_trait]
impl AdminService for Api {
    async fn verify_ledger(
        &self,
        request: Request<pb::VerifyLedgerRequest>,
    ) -> RpcResult<pb::VerifyLedgerResponse> {
        let who = principal(&request)?;
        let (report, head) = self.ledger.verify(&who).await.map_err(status)?;
        Ok(Response::new(pb::VerifyLedgerResponse {
            ok: report.ok,
            events_checked: report.events_checked,
            first_bad_event_id: report.first_bad_event_id.unwrap_or_default(),
            detail: report.detail.unwrap_or_default(),
            revision: head.revision,
        }))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> RpcResult<pb::CreateApiKeyResponse> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        v.optional_id("tenant_id", &r.tenant_id);
        let expires_in = convert::duration_in(&mut v, "expires_in", r.expires_in.as_ref());
        finish(v)?;
        let scopes = parse_scopes("scopes", &r.scopes).map_err(status)?;
        let (key, token) = self
            .ledger
            .create_api_key(&who, &r.tenant_id, &r.name, scopes, expires_in)
            .await
            .map_err(status)?;
        tracing::info!(tenant = %key.tenant_id, key_id = %key.key_id, by = %who.key_id, "API key created");
        Ok(Response::new(pb::CreateApiKeyResponse {
            key: token,
            api_key: Some(convert::api_key_out(&key)),
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> RpcResult<pb::ListApiKeysResponse> {
        let who = principal(&request)?;
        let keys = self.ledger.api_keys(&who).await.map_err(status)?;
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: keys.iter().map(convert::api_key_out).collect(),
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> RpcResult<pb::RevokeApiKeyResponse> {
        let who = principal(&request)?;
        let key_id = request.into_inner().key_id;
        let mut v = Violations::new();
        v.id("key_id", &key_id);
        finish(v)?;
        let key = self
            .ledger
            .revoke_api_key(&who, &key_id)
            .await
            .map_err(status)?;
        self.auth.forget(&key.key_id);
        tracing::info!(tenant = %key.tenant_id, key_id = %key.key_id, by = %who.key_id, "API key revoked");
        Ok(Response::new(pb::RevokeApiKeyResponse {
            api_key: Some(convert::api_key_out(&key)),
        }))
    }
}

/// The status of a batch's error; a purpose or vendor not found names the first check that
/// refers to it (`checks[3].purpose_id: purpose `x` not found`), as a bad field would.
fn missing_in_batch(e: ConsentError, queries: &[CheckQuery]) -> Status {
    let field = match &e {
        ConsentError::NotFound {
            kind: "purpose",
            id,
        } => queries
            .iter()
            .position(|q| &q.purpose_id == id)
            .map(|i| format!("checks[{i}].purpose_id")),
        ConsentError::NotFound { kind: "vendor", id } => queries
            .iter()
            .position(|q| &q.vendor_id == id)
            .map(|i| format!("checks[{i}].vendor_id")),
        _ => None,
    };
    let status = status(e);
    match field {
        Some(field) => Status::with_details(
            status.code(),
            format!("{field}: {}", status.message()),
            bytes::Bytes::copy_from_slice(status.details()),
        ),
        None => status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MIN_MESSAGE_BYTES;
    use consent_core::chain::seal;
    use consent_core::validate::{
        MAX_ATTRIBUTES, MAX_DECISIONS, MAX_ID_BYTES, MAX_TEXT_BYTES, MAX_WITHDRAW_PURPOSES,
    };
    use consent_core::{Channel, Decision, Evidence, NewEvent};
    use prost::Message;

    /// An event with every id and every evidence field at its limit.
    fn largest_event(revision: i64) -> consent_core::ConsentEvent {
        let id = |c: char| c.to_string().repeat(MAX_ID_BYTES);
        let evidence = Evidence {
            call_id: id('c'),
            recording_id: id('r'),
            transcript_sha256: "a".repeat(64),
            notice_text_sha256: "b".repeat(64),
            ip_address: id('i'),
            user_agent: "u".repeat(MAX_TEXT_BYTES),
            attributes: (0..MAX_ATTRIBUTES)
                .map(|i| (format!("{i:0>256}"), "v".repeat(MAX_TEXT_BYTES)))
                .collect(),
        };
        let event = NewEvent {
            id: uuid::Uuid::now_v7().to_string(),
            subject_id: id('s'),
            purpose_id: id('p'),
            vendor_id: id('v'),
            decision: Decision::Granted,
            policy_version_id: id('v'),
            channel: Channel::Import,
            collected_at: Timestamp(i64::MAX / 2),
            expires_at: Some(Timestamp(i64::MAX / 2)),
            evidence,
            actor_key_id: id('k'),
        };
        seal(
            &id('t'),
            &consent_core::chain::ChainKey::NONE,
            event,
            revision,
            Timestamp(i64::MAX / 2),
            [0xff; 32],
        )
    }

    #[test]
    fn the_largest_answers_the_input_limits_allow_fit_the_smallest_message_limit() {
        let events = (0..MAX_DECISIONS.max(MAX_WITHDRAW_PURPOSES))
            .map(|i| convert::event_digest_out(&largest_event(i64::MAX - 1_000 + i as i64)))
            .collect();
        let write = pb::RecordConsentResponse {
            events,
            revision: i64::MAX,
        };
        assert!(
            write.encoded_len() + RESPONSE_HEADROOM <= MIN_MESSAGE_BYTES,
            "largest write answer: {} bytes",
            write.encoded_len()
        );
        let one = pb::ListEventsResponse {
            events: vec![convert::event_out(&largest_event(i64::MAX))],
            next_page_token: format!("r{}", i64::MAX),
            records: Vec::new(),
        };
        assert!(
            one.encoded_len() + RESPONSE_HEADROOM <= MIN_MESSAGE_BYTES,
            "largest event with its evidence: {} bytes",
            one.encoded_len()
        );
    }

    #[test]
    fn runs_are_cut_by_size_and_hold_at_least_one_event() {
        let event = convert::event_out(&largest_event(1));
        let size = entry_bytes(&event);
        let runs = runs_within(vec![event.clone(); 5], 2 * size + 1, entry_bytes);
        assert_eq!(runs.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
        let tiny = runs_within(vec![event; 2], 1, entry_bytes);
        assert_eq!(
            tiny.iter().map(Vec::len).collect::<Vec<_>>(),
            [1, 1],
            "an event larger than the budget still goes, alone"
        );
        assert!(runs_within(Vec::<pb::ConsentEvent>::new(), 10, entry_bytes).is_empty());
    }
}
