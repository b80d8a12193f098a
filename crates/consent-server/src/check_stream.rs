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
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
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

/// Streams one tenant may hold on one replica, so one tenant cannot take every place.
pub const MAX_CHECK_STREAMS_PER_TENANT: usize = 32;

/// A stream whose caller sends no request for this long ends (DEADLINE_EXCEEDED): an idle
/// stream holds a place others may need.
pub const IDLE_LIMIT: Duration = Duration::from_secs(120);

/// A stream whose caller reads no answer for this long ends (DEADLINE_EXCEEDED): its
/// unread answers hold memory.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);

/// The places for streams of one kind on this replica: so many in all, so many per tenant
/// (for CheckStream [`MAX_CHECK_STREAMS`] and [`MAX_CHECK_STREAMS_PER_TENANT`]).
#[derive(Clone, Debug)]
pub struct Places {
    taken: Arc<Mutex<PlacesTaken>>,
    total: usize,
    per_tenant: usize,
    /// What the places are for, in refusals ("CheckStream streams").
    what: &'static str,
    /// What a tenant at its limit can do instead.
    advice: &'static str,
}

#[derive(Debug, Default)]
struct PlacesTaken {
    total: usize,
    by_tenant: HashMap<String, usize>,
}

/// A stream's place, given back when dropped.
#[derive(Debug)]
pub struct Place {
    places: Places,
    tenant: String,
}

impl Places {
    /// The places of CheckStream.
    pub fn check_streams() -> Places {
        Places::new(
            MAX_CHECK_STREAMS,
            MAX_CHECK_STREAMS_PER_TENANT,
            "CheckStream streams",
            "send more requests on the open ones",
        )
    }

    /// `total` places, at most `per_tenant` of them per tenant, for `what`.
    pub fn new(
        total: usize,
        per_tenant: usize,
        what: &'static str,
        advice: &'static str,
    ) -> Places {
        Places {
            taken: Arc::default(),
            total,
            per_tenant,
            what,
            advice,
        }
    }

    /// A place for a stream of `tenant`, or RESOURCE_EXHAUSTED saying which limit is full.
    pub fn take(&self, tenant: &str) -> Result<Place, Status> {
        let mut taken = self
            .taken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let of_tenant = taken.by_tenant.get(tenant).copied().unwrap_or(0);
        if taken.total >= self.total {
            return Err(Status::resource_exhausted(format!(
                "this replica already serves {} {}: retry later, or on another replica",
                self.total, self.what
            )));
        }
        if of_tenant >= self.per_tenant {
            return Err(Status::resource_exhausted(format!(
                "this tenant already holds {} {} on this replica: {}",
                self.per_tenant, self.what, self.advice
            )));
        }
        taken.total += 1;
        taken.by_tenant.insert(tenant.to_owned(), of_tenant + 1);
        Ok(Place {
            places: self.clone(),
            tenant: tenant.to_owned(),
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut taken = self
            .places
            .taken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        taken.total = taken.total.saturating_sub(1);
        if let Some(n) = taken.by_tenant.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                taken.by_tenant.remove(&self.tenant);
            }
        }
    }
}

/// Starts answering `inbound` for `who`; the stream holds `place` until it ends.
pub fn start<S>(
    api: Api,
    who: Principal,
    inbound: S,
    place: Place,
) -> ReceiverStream<Result<pb::CheckStreamResponse, Status>>
where
    S: Stream<Item = Result<pb::CheckStreamRequest, Status>> + Send + Unpin + 'static,
{
    let (answers, receiver) = mpsc::channel(ANSWERS_BUFFERED);
    let shutdown = api.shutdown_signal();
    tokio::spawn(async move {
        let _place = place;
        let answer = |request| async {
            // The key was checked when the stream opened; a stream outlives that check, so
            // every request asks again (revoked or expired keys end the stream).
            api.caller_still_valid(&who).await?;
            Ok(answer(&api, &who, request).await)
        };
        pump(inbound, &answers, shutdown, Limits::DEFAULT, answer).await;
    });
    ReceiverStream::new(receiver)
}

/// Reads requests one by one, each only once its answer has a place, until the caller
/// ends its side, stops listening, the transport fails or a request is refused (that error
/// ends the stream), or the server shuts down: then requests already read are answered
/// and the stream ends with UNAVAILABLE, telling the caller to send the rest again.
/// How long a stream may wait on its caller.
#[derive(Clone, Copy, Debug)]
struct Limits {
    idle: Duration,
    stall: Duration,
}

impl Limits {
    const DEFAULT: Limits = Limits {
        idle: IDLE_LIMIT,
        stall: STALL_LIMIT,
    };
}

async fn pump<S, Req, Resp, F, Fut>(
    mut inbound: S,
    answers: &mpsc::Sender<Result<Resp, Status>>,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
    mut answer: F,
) where
    S: Stream<Item = Result<Req, Status>> + Unpin,
    F: FnMut(Req) -> Fut,
    Fut: std::future::Future<Output = Result<Resp, Status>>,
{
    let mut answered: u64 = 0;
    loop {
        let place = match tokio::time::timeout(limits.stall, answers.reserve()).await {
            Ok(Ok(place)) => place,
            Ok(Err(_)) => return,
            Err(_) => {
                // No place for the error either: the caller reads nothing. Dropping the
                // sender ends the stream (tonic then closes it).
                tracing::warn!(
                    stall_secs = limits.stall.as_secs(),
                    "CheckStream caller read no answer; closing its stream"
                );
                return;
            }
        };
        let next = tokio::select! {
            biased;
            () = answers.closed() => return,
            _ = shutdown.wait_for(|stopping| *stopping) => {
                place.send(Err(Status::unavailable(format!(
                    "the server is shutting down: {answered} requests of this stream were answered; send the ones after them again (on another replica)"
                ))));
                return;
            }
            next = tokio::time::timeout(limits.idle, inbound.next()) => match next {
                Ok(next) => next,
                Err(_) => {
                    place.send(Err(Status::deadline_exceeded(format!(
                        "no request for {} s: the stream ended to free its place; open a new one when there is work",
                        limits.idle.as_secs()
                    ))));
                    return;
                }
            },
        };
        match next {
            None => return,
            Some(Err(e)) => {
                place.send(Err(crate::transport_status::correct_stream_error(e)));
                return;
            }
            Some(Ok(request)) => match answer(request).await {
                Ok(response) => {
                    place.send(Ok(response));
                    answered += 1;
                }
                Err(e) => {
                    place.send(Err(e));
                    return;
                }
            },
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
        // Each request counts against the key's request rate, as a CheckBatch would; over
        // it, this request is refused (with a retry delay) and the stream goes on.
        Ok(()) => match api.rate_check(who) {
            Err(e) => (r.correlation_id, Err(e)),
            Ok(()) => (
                r.correlation_id,
                api.answer_checks(who, &r.checks, r.consistency.as_ref())
                    .await,
            ),
        },
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

    type Answers = mpsc::Receiver<Result<usize, Status>>;

    /// A pump over `inbound` answering with `answer`, on its own task: the task, the
    /// caller's side of the answers, and the shutdown switch.
    fn spawn_pump<S>(
        inbound: S,
        limits: Limits,
        answer: fn(usize) -> Result<usize, Status>,
    ) -> (tokio::task::JoinHandle<()>, Answers, watch::Sender<bool>)
    where
        S: Stream<Item = Result<usize, Status>> + Unpin + Send + 'static,
    {
        let (answers, receiver) = mpsc::channel(ANSWERS_BUFFERED);
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(async move {
            pump(
                inbound,
                &answers,
                shutdown,
                limits,
                |n| async move { answer(n) },
            )
            .await;
        });
        (task, receiver, stop)
    }

    /// Every answer until the pump ends.
    async fn rest(receiver: &mut Answers) -> Vec<Result<usize, Status>> {
        let mut all = Vec::new();
        while let Some(answer) = receiver.recv().await {
            all.push(answer);
        }
        all
    }

    fn code(answer: Option<&Result<usize, Status>>) -> Option<tonic::Code> {
        answer.and_then(|a| a.as_ref().err()).map(Status::code)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_caller_that_stops_reading_stops_the_pump() {
        let pulled = Arc::new(AtomicUsize::new(0));
        let (task, mut receiver, _stop) = spawn_pump(
            endless(Arc::clone(&pulled)),
            Limits::DEFAULT,
            |n| Ok(n * 10),
        );
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
    async fn the_end_of_the_requests_or_an_error_ends_the_answers() {
        // A transport error ends the stream; nothing after it is read.
        let requests = vec![
            Ok(1usize),
            Err(Status::cancelled("the caller went away")),
            Ok(2),
        ];
        let (_task, mut receiver, _stop) =
            spawn_pump(futures::stream::iter(requests), Limits::DEFAULT, Ok);
        let all = rest(&mut receiver).await;
        assert_eq!(all.len(), 2);
        assert!(matches!(all[0], Ok(1)));
        assert_eq!(code(all.get(1)), Some(tonic::Code::Cancelled));

        // A request the caller may no longer make (its key was revoked) ends the stream.
        let requests = vec![Ok(1usize), Ok(2), Ok(3)];
        let (_task, mut receiver, _stop) =
            spawn_pump(futures::stream::iter(requests), Limits::DEFAULT, |n| {
                if n < 2 {
                    Ok(n)
                } else {
                    Err(Status::unauthenticated("the API key was revoked"))
                }
            });
        let all = rest(&mut receiver).await;
        assert_eq!(all.len(), 2);
        assert!(matches!(all[0], Ok(1)));
        assert_eq!(code(all.get(1)), Some(tonic::Code::Unauthenticated));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_shutdown_answers_what_was_read_then_ends_with_unavailable() {
        let pulled = Arc::new(AtomicUsize::new(0));
        let (task, mut receiver, stop) =
            spawn_pump(endless(Arc::clone(&pulled)), Limits::DEFAULT, Ok);
        settle().await;
        assert!(matches!(receiver.recv().await, Some(Ok(0))));
        assert!(matches!(receiver.recv().await, Some(Ok(1))));
        settle().await;
        let read = pulled.load(Ordering::SeqCst);
        let _ = stop.send(true);
        settle().await;
        // Every request read was answered; nothing more was read; the end says to resend.
        let all = rest(&mut receiver).await;
        assert_eq!(
            pulled.load(Ordering::SeqCst),
            read,
            "nothing read after the signal"
        );
        assert_eq!(all.len() - 1 + 2, read);
        let end = all.last();
        assert_eq!(code(end), Some(tonic::Code::Unavailable));
        assert!(
            end.and_then(|e| e.as_ref().err())
                .is_some_and(|e| e.message().contains("send the ones after them again"))
        );
        assert!(task.is_finished());
    }

    /// Idle callers and callers that read nothing lose their stream; the clock is tokio's,
    /// paused and moved by hand.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn idle_and_stalled_callers_lose_their_stream() {
        let limits = Limits {
            idle: Duration::from_secs(5),
            stall: Duration::from_secs(7),
        };
        // A caller that opened a stream and sends nothing.
        let silent = futures::stream::pending::<Result<usize, Status>>();
        let (task, mut receiver, _stop) = spawn_pump(silent, limits, Ok);
        tokio::time::advance(Duration::from_secs(6)).await;
        let all = rest(&mut receiver).await;
        assert_eq!(all.len(), 1);
        assert_eq!(code(all.first()), Some(tonic::Code::DeadlineExceeded));
        assert!(task.await.is_ok());

        // A caller that sends and never reads: the stream ends (the sender is dropped).
        let pulled = Arc::new(AtomicUsize::new(0));
        let (task, receiver, _stop) = spawn_pump(endless(Arc::clone(&pulled)), limits, Ok);
        settle().await;
        assert!(!task.is_finished());
        tokio::time::advance(Duration::from_secs(8)).await;
        settle().await;
        assert!(task.is_finished());
        assert_eq!(pulled.load(Ordering::SeqCst), ANSWERS_BUFFERED);
        drop(receiver);
    }

    #[test]
    fn places_are_limited_per_replica_and_per_tenant() {
        let places = Places::check_streams();
        let mut held: Vec<Place> = (0..MAX_CHECK_STREAMS_PER_TENANT)
            .map(|i| {
                places
                    .take("acme")
                    .unwrap_or_else(|e| panic!("place {i}: {e:?}"))
            })
            .collect();
        let refused = places.take("acme").err().map(|e| e.message().to_owned());
        assert!(refused.is_some_and(|m| m.contains("this tenant")));
        for i in MAX_CHECK_STREAMS_PER_TENANT..MAX_CHECK_STREAMS {
            held.push(
                places
                    .take(&format!("t{}", i % 3))
                    .unwrap_or_else(|e| panic!("place {i}: {e:?}")),
            );
        }
        let refused = places.take("globex").err().map(|e| e.message().to_owned());
        assert!(refused.is_some_and(|m| m.contains("this replica")));
        // A place given back is free again, for anyone.
        drop(held.pop());
        assert!(places.take("globex").is_ok());
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
