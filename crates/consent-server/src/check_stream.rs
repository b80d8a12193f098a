//! `ConsentService.CheckStream`: batches of checks over one bidirectional stream, for
//! pipelines. Each request is answered by exactly one response, in order, echoing its
//! `correlation_id`; a request that fails alone gets its error in its response and the
//! stream goes on.
//!
//! Back-pressure: the pump reserves a place for the answer *before* it reads the next
//! request, in a channel of [`ANSWERS_BUFFERED`] places. A caller that stops reading stops
//! the pump, which stops reading requests, and HTTP/2 flow control then stops the caller's
//! writer. A stream so holds at most [`ANSWERS_BUFFERED`] answers (one being computed),
//! the one tonic is sending, and one decoded request; each message is within
//! `limits.max_message_bytes`, and a request's count of checks is bounded before it is
//! decoded ([`crate::request_bounds`]).

use consent_core::validate::Violations;
use consent_proto::v1 as pb;
use futures::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic_types::StatusExt;

use crate::context::Principal;
use crate::error::status;
use crate::service::Api;

/// Answers queued (or being computed) per stream before the pump stops reading requests.
pub const ANSWERS_BUFFERED: usize = 2;

/// Streams one replica serves at once; more are RESOURCE_EXHAUSTED.
pub const MAX_CHECK_STREAMS: usize = 64;

/// Starts answering `inbound` for `who`; the stream holds `place` until it ends.
pub fn start<S>(
    api: Api,
    who: Principal,
    inbound: S,
    place: OwnedSemaphorePermit,
) -> ReceiverStream<Result<pb::CheckStreamResponse, Status>>
where
    S: Stream<Item = Result<pb::CheckStreamRequest, Status>> + Send + Unpin + 'static,
{
    let (answers, receiver) = mpsc::channel(ANSWERS_BUFFERED);
    tokio::spawn(async move {
        let _place = place;
        pump(inbound, &answers, |request| answer(&api, &who, request)).await;
    });
    ReceiverStream::new(receiver)
}

/// Reads requests one by one, each only once its answer has a place, until the caller
/// ends its side, stops listening, or the transport fails (that error ends the stream).
async fn pump<S, Req, Resp, F, Fut>(
    mut inbound: S,
    answers: &mpsc::Sender<Result<Resp, Status>>,
    mut answer: F,
) where
    S: Stream<Item = Result<Req, Status>> + Unpin,
    F: FnMut(Req) -> Fut,
    Fut: std::future::Future<Output = Resp>,
{
    loop {
        let Ok(place) = answers.reserve().await else {
            return;
        };
        let next = tokio::select! {
            biased;
            () = answers.closed() => return,
            next = inbound.next() => next,
        };
        match next {
            None => return,
            Some(Err(e)) => {
                place.send(Err(e));
                return;
            }
            Some(Ok(request)) => place.send(Ok(answer(request).await)),
        }
    }
}

/// The response to one request: its results, or its error.
async fn answer(api: &Api, who: &Principal, r: pb::CheckStreamRequest) -> pb::CheckStreamResponse {
    let mut v = Violations::new();
    v.optional_id("correlation_id", &r.correlation_id);
    let (correlation_id, outcome) = match v.finish() {
        // A correlation id that breaks the rules is not echoed (it could be anything).
        Err(e) => (String::new(), Err(status(e))),
        Ok(()) => (
            r.correlation_id,
            api.answer_checks(who, &r.checks, r.consistency.as_ref())
                .await,
        ),
    };
    match outcome {
        Ok(batch) => pb::CheckStreamResponse {
            correlation_id,
            results: batch.results,
            revision: batch.revision,
            error: None,
        },
        Err(e) => pb::CheckStreamResponse {
            correlation_id,
            results: Vec::new(),
            revision: 0,
            error: Some(error_out(&e)),
        },
    }
}

/// A status as a stream error, with its field violations.
fn error_out(e: &Status) -> pb::CheckStreamError {
    pb::CheckStreamError {
        code: e.code() as i32,
        message: e.message().to_owned(),
        field_violations: e
            .get_details_bad_request()
            .map(|bad| {
                bad.field_violations
                    .into_iter()
                    .map(|f| pb::FieldViolation {
                        field: f.field,
                        description: f.description,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An endless caller: every request it is asked for is counted.
    fn endless(pulled: Arc<AtomicUsize>) -> impl Stream<Item = Result<usize, Status>> + Unpin {
        Box::pin(futures::stream::unfold(0usize, move |n| {
            let pulled = Arc::clone(&pulled);
            async move {
                pulled.fetch_add(1, Ordering::SeqCst);
                Some((Ok(n), n + 1))
            }
        }))
    }

    /// Lets every other task run until none can go on (bounded: the pump blocks or ends).
    async fn settle() {
        for _ in 0..1000 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_caller_that_stops_reading_stops_the_pump() {
        let pulled = Arc::new(AtomicUsize::new(0));
        let (answers, mut receiver) = mpsc::channel(ANSWERS_BUFFERED);
        let inbound = endless(Arc::clone(&pulled));
        let task = tokio::spawn(async move {
            pump(inbound, &answers, |n: usize| async move { n * 10 }).await;
        });
        settle().await;
        // Nobody reads: the pump read only as many requests as it had places for answers.
        assert_eq!(pulled.load(Ordering::SeqCst), ANSWERS_BUFFERED);
        // Reading answers, in order, lets it read on, one request per answer taken.
        for expected in 0..5 {
            match receiver.recv().await {
                Some(Ok(answer)) => assert_eq!(answer, expected * 10),
                other => panic!("answer {expected}: {other:?}"),
            }
            settle().await;
            assert_eq!(
                pulled.load(Ordering::SeqCst),
                ANSWERS_BUFFERED + expected + 1
            );
        }
        // A caller that goes away ends the pump.
        drop(receiver);
        settle().await;
        assert!(task.is_finished());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_end_of_the_requests_or_a_transport_error_ends_the_answers() {
        let (answers, mut receiver) = mpsc::channel(ANSWERS_BUFFERED);
        let inbound = futures::stream::iter(vec![
            Ok(1usize),
            Err(Status::cancelled("the caller went away")),
            Ok(2),
        ]);
        pump(inbound, &answers, |n: usize| async move { n }).await;
        drop(answers);
        assert!(matches!(receiver.recv().await, Some(Ok(1))));
        assert!(
            matches!(receiver.recv().await, Some(Err(e)) if e.code() == tonic::Code::Cancelled)
        );
        assert!(receiver.recv().await.is_none(), "nothing after the error");
    }

    #[test]
    fn an_error_keeps_its_code_and_field_violations() {
        let e = status(consent_core::ConsentError::invalid(
            "checks[3].subject_id",
            "must not be empty",
        ));
        let out = error_out(&e);
        assert_eq!(out.code, tonic::Code::InvalidArgument as i32);
        assert_eq!(
            out.field_violations,
            [pb::FieldViolation {
                field: "checks[3].subject_id".into(),
                description: "must not be empty".into(),
            }]
        );
    }
}
