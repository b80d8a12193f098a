//! `ConsentService.ExportSnapshot`: every subject's decisions for some purposes at one
//! ledger revision, streamed in chunks for pipelines.
//!
//! A task per stream scans the ledger ([`consent_store::snapshot::SnapshotScan`]: keyset
//! pages in subject order, no transaction held) and decides each subject with the catalogue
//! read when the stream opened, at the time it opened. What a stream may hold is bounded:
//! one page of at most [`PAGE`] entries of each kind (events and records, read without
//! evidence or detail), the chunk being built (at most [`CHUNK_SUBJECTS`] subjects and
//! within `limits.max_message_bytes`) and [`BUFFER`] chunks queued; the scan waits for the
//! reader, so a slow reader slows the scan instead of filling memory. Ledger reads share the
//! feeds' limit (`watch::READ_CONCURRENCY` at a time per replica) so snapshots never take the
//! connection pool from `Check`.
//!
//! A stream that cannot go on (its key revoked, no reader for [`STALL_LIMIT`], shutdown, a
//! store fault) ends with an error status after the chunks already queued, never with a
//! plain end: only a stream whose last message is `end` is complete.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use consent_core::{Catalog, Purpose, Revision, SubjectState, Timestamp, decide};
use consent_proto::v1 as pb;
use consent_proto::v1::export_snapshot_response::Part;
use consent_store::Store;
use consent_store::snapshot::{SnapshotScan, SubjectSnapshot};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::SendTimeoutError;
use tonic::Status;

use crate::check_stream::{Place, Places};
use crate::context::Principal;
use crate::convert;
use crate::error::status;
use crate::service::Api;

/// Ledger entries (of each kind) read per store call.
pub const PAGE: usize = 1000;

/// Most subjects in one chunk.
pub const CHUNK_SUBJECTS: usize = 1000;

/// Most decisions (subjects x purposes) in one chunk: with many purposes a chunk holds
/// fewer subjects, so what a stream builds and queues stays small (about 1.5 MB encoded).
pub const CHUNK_DECISIONS: usize = 20_000;

/// Most bytes of subjects in one message: within the 4 MiB a gRPC client receives by
/// default (grpcurl, grpcio), whatever `limits.max_message_bytes` allows.
pub const CHUNK_BYTES: usize = 3 * 1024 * 1024;

/// Chunks queued for a slow reader before the scan waits for it.
pub const BUFFER: usize = 2;

/// A stream whose reader takes nothing for this long ends (DEADLINE_EXCEEDED).
pub const STALL_LIMIT: Duration = Duration::from_secs(60);

/// Snapshots one replica serves at once.
pub const MAX_SNAPSHOTS: usize = 16;

/// Snapshots one tenant may hold on one replica.
pub const MAX_SNAPSHOTS_PER_TENANT: usize = 4;

/// The places of ExportSnapshot on a replica.
pub fn places() -> Places {
    Places::new(
        MAX_SNAPSHOTS,
        MAX_SNAPSHOTS_PER_TENANT,
        "ExportSnapshot streams",
        "wait for one to end",
    )
}

/// A validated snapshot request.
#[derive(Clone, Debug)]
pub struct SnapshotPlan {
    /// The purposes to decide, in answer order (every catalogued one when none was named).
    pub purposes: Vec<Purpose>,
    /// The vendor asked about (empty: none).
    pub vendor_id: String,
    /// The revision asked for (`None`: the head).
    pub at_revision: Option<Revision>,
    /// Start after this subject (empty: at the first).
    pub after_subject_id: String,
    /// The catalogue the decisions are made with.
    pub catalog: Arc<Catalog>,
}

/// How a snapshot stream runs: sizes and limits, smaller in tests.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// See [`PAGE`].
    pub page: usize,
    /// See [`CHUNK_SUBJECTS`].
    pub chunk_subjects: usize,
    /// Most bytes of subjects in one message.
    pub chunk_bytes: usize,
    /// See [`STALL_LIMIT`].
    pub stall: Duration,
}

/// Opens the scan (so a revision past the head is refused before the stream starts) and
/// starts streaming it for `who`; the stream holds `place` until it ends.
pub async fn start(
    api: Api,
    who: Principal,
    plan: SnapshotPlan,
    place: Place,
    shape: Shape,
) -> Result<impl Stream<Item = Result<pb::ExportSnapshotResponse, Status>> + Send + 'static, Status>
{
    let evaluated_at = Timestamp::now();
    let store: Arc<dyn Store> = Arc::clone(api.ledger().store());
    let scan = SnapshotScan::start(
        store,
        &who.tenant_id,
        plan.at_revision,
        evaluated_at,
        plan.purposes.iter().map(|p| p.id.clone()).collect(),
        shape.page,
        &plan.after_subject_id,
    )
    .await
    .map_err(status)?;
    let (sender, receiver) = mpsc::channel(BUFFER);
    // Where the task leaves the status the stream ends with, read after the last chunk.
    let ending: Arc<Mutex<Option<Status>>> = Arc::default();
    let task_ending = Arc::clone(&ending);
    let recheck = Recheck {
        store: Arc::clone(api.ledger().store()),
        tenant: who.tenant_id.clone(),
        erasures: scan.erasures(),
        dropped: 0,
    };
    tokio::spawn(async move {
        let _place = place;
        let outcome = run(&api, &who, &plan, scan, evaluated_at, shape, &sender).await;
        if let Err(e) = outcome {
            *task_ending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
        }
    });
    let last = futures::stream::once(async move {
        ending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    })
    .filter_map(|e| async move { e.map(Err) });
    // Chunks wait in the queue for the reader: an erasure committed meanwhile is checked
    // for again as each leaves it, so only what the transport already holds can predate it.
    let queued = futures::stream::unfold(Some((receiver, recheck)), |state| async move {
        let (mut receiver, mut recheck) = state?;
        loop {
            let message = receiver.recv().await?;
            match recheck.release(message).await {
                Ok(Some(message)) => return Some((Ok(message), Some((receiver, recheck)))),
                Ok(None) => {}
                // The queue is dropped: the task sees the stream closed and stops.
                Err(e) => return Some((Err(e), None)),
            }
        }
    });
    Ok(queued.chain(last))
}

/// What a message leaving the queue is checked against.
struct Recheck {
    store: Arc<dyn Store>,
    tenant: String,
    /// The tenant's erasure count when the scan began.
    erasures: i64,
    /// Subjects left out here, taken off the end's count.
    dropped: i64,
}

impl Recheck {
    /// The message as it may leave: a chunk without the subjects erased since the scan
    /// began (`None` if that leaves none), the end with the count of what was sent.
    async fn release(
        &mut self,
        message: pb::ExportSnapshotResponse,
    ) -> Result<Option<pb::ExportSnapshotResponse>, Status> {
        let part = match message.part {
            Some(Part::Chunk(mut chunk)) => {
                let head = self.store.head(&self.tenant).await.map_err(status)?;
                if head.erasures != self.erasures {
                    let ids: Vec<String> = chunk
                        .subjects
                        .iter()
                        .map(|s| s.subject_id.clone())
                        .collect();
                    let erased = consent_store::snapshot::erased_among(
                        self.store.as_ref(),
                        &self.tenant,
                        &ids,
                    )
                    .await
                    .map_err(status)?;
                    let before = chunk.subjects.len();
                    let mut flags = erased.into_iter();
                    chunk.subjects.retain(|_| !flags.next().unwrap_or(false));
                    self.dropped += i64::try_from(before - chunk.subjects.len()).unwrap_or(0);
                }
                if chunk.subjects.is_empty() {
                    return Ok(None);
                }
                Part::Chunk(chunk)
            }
            Some(Part::End(end)) => Part::End(pb::SnapshotEnd {
                subjects: end.subjects - self.dropped,
            }),
            Some(other) => other,
            None => return Ok(None),
        };
        Ok(Some(pb::ExportSnapshotResponse { part: Some(part) }))
    }
}

/// Streams the header, the chunks and the end; `Err` is the status the stream ends with.
async fn run(
    api: &Api,
    who: &Principal,
    plan: &SnapshotPlan,
    mut scan: SnapshotScan<dyn Store>,
    evaluated_at: Timestamp,
    shape: Shape,
    sender: &mpsc::Sender<pb::ExportSnapshotResponse>,
) -> Result<(), Status> {
    let revision = scan.revision();
    let mut shutdown = api.shutdown_signal();
    let mut last_subject = plan.after_subject_id.clone();
    let absent = SubjectState {
        revision,
        ..SubjectState::default()
    };
    let header = pb::SnapshotHeader {
        revision,
        evaluated_at: Some(convert::timestamp(evaluated_at)),
        purpose_ids: plan.purposes.iter().map(|p| p.id.clone()).collect(),
        vendor_id: plan.vendor_id.clone(),
        absent: decisions(plan, &absent, evaluated_at),
    };
    send(sender, &mut shutdown, Part::Header(header), shape.stall)
        .await
        .map_err(|e| resumable(&e, revision, &last_subject))?;
    let mut listed: i64 = 0;
    // Fewer subjects per chunk when each has many decisions.
    let chunk_subjects = shape
        .chunk_subjects
        .min(CHUNK_DECISIONS / plan.purposes.len().max(1))
        .max(1);
    loop {
        if *shutdown.borrow_and_update() {
            return Err(resumable(
                &Status::unavailable("the server is shutting down"),
                revision,
                &last_subject,
            ));
        }
        // The key was checked when the stream opened; a snapshot outlives that check.
        api.caller_still_valid(who).await?;
        let chunk = {
            let _read = api.feed_reads().acquire().await.map_err(|_| {
                resumable(
                    &Status::unavailable("the server is shutting down"),
                    revision,
                    &last_subject,
                )
            })?;
            scan.next_chunk(chunk_subjects).await
        };
        let subjects = match chunk {
            Ok(Some(subjects)) => subjects,
            Ok(None) => break,
            Err(e) => {
                let e = status(e);
                let failed = format!("reading the ledger failed ({})", e.message());
                return Err(resumable(
                    &Status::new(e.code(), failed),
                    revision,
                    &last_subject,
                ));
            }
        };
        for message in messages(plan, subjects, evaluated_at, shape.chunk_bytes) {
            let (count, last) = (
                message.subjects.len(),
                message.subjects.last().map(|s| s.subject_id.clone()),
            );
            send(sender, &mut shutdown, Part::Chunk(message), shape.stall)
                .await
                .map_err(|e| resumable(&e, revision, &last_subject))?;
            listed += i64::try_from(count).unwrap_or(i64::MAX);
            if let Some(last) = last {
                last_subject = last;
            }
        }
    }
    send(
        sender,
        &mut shutdown,
        Part::End(pb::SnapshotEnd { subjects: listed }),
        shape.stall,
    )
    .await
    .map_err(|e| resumable(&e, revision, &last_subject))
}

/// `e` with where to resume the snapshot: at `revision`, after `last_subject` (the last
/// subject the reader received).
fn resumable(e: &Status, revision: Revision, last_subject: &str) -> Status {
    Status::new(
        e.code(),
        format!(
            "{}: resume with at_revision {revision} and after_subject_id `{last_subject}` (the last subject received)",
            e.message()
        ),
    )
}

/// Sends one message, waiting at most `stall` for the reader to take one, and not past
/// the server's shutdown.
async fn send(
    sender: &mpsc::Sender<pb::ExportSnapshotResponse>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    part: Part,
    stall: Duration,
) -> Result<(), Status> {
    let message = pb::ExportSnapshotResponse { part: Some(part) };
    let sent = tokio::select! {
        sent = sender.send_timeout(message, stall) => sent,
        _ = shutdown.wait_for(|stopping| *stopping) => {
            return Err(Status::unavailable("the server is shutting down"));
        }
    };
    match sent {
        Ok(()) => Ok(()),
        // The caller went away: nobody reads the status.
        Err(SendTimeoutError::Closed(_)) => Err(Status::cancelled("the caller went away")),
        Err(SendTimeoutError::Timeout(_)) => {
            tracing::warn!(
                stall_secs = stall.as_secs(),
                "ExportSnapshot reader took nothing; ending its stream"
            );
            Err(Status::deadline_exceeded(format!(
                "nothing was read for {} s: the snapshot ended to free its place",
                stall.as_secs()
            )))
        }
    }
}

/// One decision per purpose of the plan, in its order.
fn decisions(plan: &SnapshotPlan, state: &SubjectState, at: Timestamp) -> Vec<pb::CheckResponse> {
    plan.purposes
        .iter()
        .map(|p| {
            convert::verdict_out(
                decide(p, &plan.vendor_id, state, &plan.catalog, at),
                "",
                "",
                "",
                state.revision,
            )
        })
        .collect()
}

/// The chunk messages of some subjects: each at most `max_bytes` of subjects (a subject
/// alone always fits: ids are at most 256 bytes and decisions a few dozen).
fn messages(
    plan: &SnapshotPlan,
    subjects: Vec<SubjectSnapshot>,
    at: Timestamp,
    max_bytes: usize,
) -> Vec<pb::SnapshotChunk> {
    let mut out = Vec::new();
    let mut current = pb::SnapshotChunk::default();
    let mut bytes = 0;
    for s in subjects {
        let entry = pb::SubjectDecisions {
            decisions: decisions(plan, &s.state, at),
            subject_id: s.subject_id,
        };
        let size = crate::service::entry_bytes(&entry);
        if !current.subjects.is_empty() && bytes + size > max_bytes {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.subjects.push(entry);
    }
    if !current.subjects.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use consent_core::{LegalBasis, PurposeCategory};
    use prost::Message;

    fn purpose(id: &str) -> Purpose {
        Purpose {
            id: id.into(),
            name: id.into(),
            description: String::new(),
            category: PurposeCategory::Analytics,
            legal_basis: LegalBasis::Consent,
            vendor_ids: vec![],
            validity_secs: None,
        }
    }

    #[test]
    fn chunks_are_cut_by_size_and_keep_every_subject_in_order() {
        let purposes: Vec<Purpose> = (0..50).map(|i| purpose(&format!("p{i:02}"))).collect();
        let plan = SnapshotPlan {
            purposes,
            vendor_id: String::new(),
            at_revision: None,
            after_subject_id: String::new(),
            catalog: Arc::new(Catalog::default()),
        };
        let subjects: Vec<SubjectSnapshot> = (0..300)
            .map(|i| SubjectSnapshot {
                subject_id: format!("{i:03}{}", "x".repeat(200)),
                state: SubjectState {
                    revision: 7,
                    ..SubjectState::default()
                },
            })
            .collect();
        let max = 20_000;
        let out = messages(&plan, subjects.clone(), Timestamp(0), max);
        assert!(out.len() > 1, "300 subjects of ~0.5 KB do not fit in 20 KB");
        for chunk in &out {
            // The subjects field of the chunk: its entries, each within the budget.
            assert!(chunk.encoded_len() <= max, "{} bytes", chunk.encoded_len());
            assert!(chunk.subjects.iter().all(|s| s.decisions.len() == 50));
        }
        let ids: Vec<&str> = out
            .iter()
            .flat_map(|c| c.subjects.iter().map(|s| s.subject_id.as_str()))
            .collect();
        let want: Vec<&str> = subjects.iter().map(|s| s.subject_id.as_str()).collect();
        assert_eq!(ids, want);
        // A budget smaller than one subject still sends each, alone.
        let tiny = messages(&plan, subjects[..3].to_vec(), Timestamp(0), 10);
        assert_eq!(tiny.len(), 3);
    }
}
