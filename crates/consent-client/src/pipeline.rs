//! Pipeline helpers on the streaming RPCs: [`ConsentClient::filter_allowed`] (CheckStream),
//! [`ConsentClient::snapshot`] (ExportSnapshot) and [`ConsentClient::watch`] (Watch), each
//! resuming by itself after the service was unavailable.

use std::collections::VecDeque;
use std::pin::Pin;

use consent_proto::v1 as pb;
use consent_proto::v1::export_snapshot_response::Part;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{ConsentClient, Error, FieldViolation};

/// A stream of results that can be moved between tasks.
pub type ResultStream<T> = Pin<Box<dyn Stream<Item = Result<T, Error>> + Send + 'static>>;

/// How [`ConsentClient::filter_allowed`] batches its checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterOptions {
    /// The vendor that would receive the data (empty: none).
    pub vendor_id: String,
    /// Subjects per CheckStream request (1..=10,000; default 1,000).
    pub batch: usize,
    /// Requests awaiting their answer at once (default 4): with `batch`, what the filter
    /// holds of the input.
    pub in_flight: usize,
}

impl Default for FilterOptions {
    fn default() -> FilterOptions {
        FilterOptions {
            vendor_id: String::new(),
            batch: 1000,
            in_flight: 4,
        }
    }
}

/// A snapshot being read: its header (the revision to `Watch` from, the purposes in the
/// order of each subject's decisions, the decision of subjects it does not list), then
/// its subjects as a stream.
pub struct Snapshot {
    /// The first message of the snapshot.
    pub header: pb::SnapshotHeader,
    /// Every listed subject, in byte order of ids, each once, even across resumptions.
    pub subjects: ResultStream<pb::SubjectDecisions>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// The error a CheckStream request was answered with.
fn stream_error(e: pb::CheckStreamError) -> Error {
    let violations: Vec<FieldViolation> = e
        .field_violations
        .into_iter()
        .map(|v| FieldViolation {
            field: v.field,
            description: v.description,
        })
        .collect();
    match Error::from(tonic::Status::new(tonic::Code::from(e.code), e.message)) {
        Error::InvalidArgument { message, .. } => Error::InvalidArgument {
            message,
            violations,
        },
        other => other,
    }
}

impl ConsentClient {
    /// The subjects of `subject_ids` for which `purpose_id` may be processed now, in input
    /// order, through one CheckStream (batches of [`FilterOptions::batch`], a few in flight):
    /// memory stays bounded whatever the input's length, and a consumer that stops reading
    /// stops the input being read. An id is yielded only when the service allowed it; on an
    /// error the stream yields it and ends (ids after it are not judged: never read a short
    /// output as "the rest were denied" without the error). When the service becomes
    /// unavailable the stream is reopened and the unanswered batches sent again.
    ///
    /// ```no_run
    /// use futures::StreamExt;
    ///
    /// # async fn example(client: consent_client::ConsentClient) -> Result<(), consent_client::Error> {
    /// let ids = futures::stream::iter(["+32470000001", "+32470000002"].map(String::from));
    /// let mut allowed = client.filter_allowed(ids, "analytics");
    /// while let Some(id) = allowed.next().await {
    ///     println!("{}", id?);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn filter_allowed<S>(
        &self,
        subject_ids: S,
        purpose_id: impl Into<String>,
    ) -> ResultStream<String>
    where
        S: Stream<Item = String> + Send + 'static,
    {
        self.filter_allowed_with(subject_ids, purpose_id, FilterOptions::default())
    }

    /// [`ConsentClient::filter_allowed`] with other [`FilterOptions`].
    pub fn filter_allowed_with<S>(
        &self,
        subject_ids: S,
        purpose_id: impl Into<String>,
        options: FilterOptions,
    ) -> ResultStream<String>
    where
        S: Stream<Item = String> + Send + 'static,
    {
        let batch = options.batch.clamp(1, 10_000);
        let (out, receiver) = mpsc::channel(batch);
        let filter = Filter {
            client: self.clone(),
            purpose_id: purpose_id.into(),
            vendor_id: options.vendor_id,
            in_flight: options.in_flight.max(1),
            out,
        };
        let input = Box::pin(subject_ids.ready_chunks(batch));
        tokio::spawn(async move {
            if let Err(e) = filter.run(input).await {
                let _ = filter.out.send(Err(e)).await;
            }
        });
        Box::pin(ReceiverStream::new(receiver))
    }

    /// Opens a snapshot of every subject's decisions at one revision
    /// (`ExportSnapshot`): returns its header, then its subjects as a stream. If the
    /// service becomes unavailable mid-way the snapshot goes on from the last subject
    /// received, at the same revision, by itself. Follow it with
    /// [`ConsentClient::watch`] from `header.revision`: no change is missed or repeated.
    ///
    /// ```no_run
    /// use futures::StreamExt;
    /// use consent_client::pb;
    ///
    /// # async fn example(client: consent_client::ConsentClient) -> Result<(), consent_client::Error> {
    /// let mut snapshot = client
    ///     .snapshot(pb::ExportSnapshotRequest {
    ///         purpose_ids: vec!["analytics".into()],
    ///         ..Default::default()
    ///     })
    ///     .await?;
    /// let revision = snapshot.header.revision;
    /// while let Some(subject) = snapshot.subjects.next().await {
    ///     let subject = subject?;
    ///     let analytics_allowed = subject.decisions[0].allowed;
    ///     # let _ = analytics_allowed;
    /// }
    /// let changes = client.watch(pb::WatchRequest { from_revision: revision, ..Default::default() });
    /// # let _ = changes;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn snapshot(
        &self,
        request: impl Into<pb::ExportSnapshotRequest>,
    ) -> Result<Snapshot, Error> {
        let mut request: pb::ExportSnapshotRequest = request.into();
        let (header, stream) = self
            .retry_policy()
            .run(true, || open_snapshot(self.clone(), request.clone()))
            .await?;
        request.at_revision = header.revision;
        let state = SnapshotState {
            client: self.clone(),
            request,
            stream: Some(stream),
            buffered: VecDeque::new(),
            failures: 0,
            done: false,
        };
        let subjects = futures::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        });
        Ok(Snapshot {
            header,
            subjects: Box::pin(subjects),
        })
    }

    /// Everything held about a subject (GDPR Art. 15, `ExportSubject`), document by
    /// document. Not resumed: an interrupted export is asked for again.
    pub fn export_subject(
        &self,
        request: impl Into<pb::ExportSubjectRequest>,
    ) -> ResultStream<pb::ExportSubjectResponse> {
        let client = self.clone();
        // No deadline: a stream is as long as the subject's history.
        let request = tonic::Request::new(request.into());
        let opened = async move {
            match client.rights().export_subject(request).await {
                Ok(stream) => stream.into_inner().map(|m| m.map_err(Error::from)).boxed(),
                Err(status) => futures::stream::once(async { Err(Error::from(status)) }).boxed(),
            }
        };
        Box::pin(futures::stream::once(opened).flatten())
    }

    /// The change feed (`Watch`) from `request.from_revision`, resumed by itself from the
    /// last revision received whenever the stream ends or the service is unavailable (after
    /// [`crate::RetryPolicy::max_attempts`] failed reopenings in a row, the error is
    /// yielded and the stream ends). Every message is yielded, heartbeats included (no
    /// events, a newer `revision`).
    pub fn watch(&self, request: impl Into<pb::WatchRequest>) -> ResultStream<pb::WatchResponse> {
        let state = WatchState {
            client: self.clone(),
            request: request.into(),
            stream: None,
            failures: 0,
            done: false,
        };
        Box::pin(futures::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        }))
    }
}

/// A filter's driver, on its own task.
struct Filter {
    client: ConsentClient,
    purpose_id: String,
    vendor_id: String,
    in_flight: usize,
    out: mpsc::Sender<Result<String, Error>>,
}

impl Filter {
    fn request(&self, correlation: u64, ids: &[String]) -> pb::CheckStreamRequest {
        pb::CheckStreamRequest {
            correlation_id: correlation.to_string(),
            checks: ids
                .iter()
                .map(|id| pb::CheckRequest {
                    subject_id: id.clone(),
                    purpose_id: self.purpose_id.clone(),
                    vendor_id: self.vendor_id.clone(),
                    ..Default::default()
                })
                .collect(),
            consistency: None,
        }
    }

    /// Runs until the input is judged (`Ok`), the consumer went away (`Ok`), or an error
    /// that retrying cannot mend.
    async fn run<S>(&self, mut input: Pin<Box<S>>) -> Result<(), Error>
    where
        S: Stream<Item = Vec<String>> + Send + ?Sized,
    {
        let policy = self.client.retry_policy();
        // Requests sent and not yet answered, in order: resent on a new stream.
        let mut pending: VecDeque<(u64, Vec<String>)> = VecDeque::new();
        let mut next_id: u64 = 0;
        let mut input_done = false;
        let mut failures = 0;
        loop {
            let (requests, request_stream) = mpsc::channel(self.in_flight);
            for (id, ids) in &pending {
                let _ = requests.send(self.request(*id, ids)).await;
            }
            let opened = self
                .client
                .consent()
                .check_stream(ReceiverStream::new(request_stream))
                .await;
            let mut answers = match opened {
                Ok(answers) => answers.into_inner(),
                Err(status) => {
                    let e = Error::from(status);
                    let resumable = e.is_unavailable();
                    policy.after_failure(&mut failures, e, resumable).await?;
                    continue;
                }
            };
            let mut requests = Some(requests);
            let failure: Error = loop {
                if input_done && pending.is_empty() {
                    return Ok(());
                }
                // The request side ends once everything was sent, so the server ends too.
                if input_done {
                    requests = None;
                }
                tokio::select! {
                    chunk = input.next(), if !input_done && pending.len() < self.in_flight => {
                        match chunk {
                            None => input_done = true,
                            Some(ids) => {
                                next_id += 1;
                                if let Some(r) = &requests {
                                    let _ = r.send(self.request(next_id, &ids)).await;
                                }
                                pending.push_back((next_id, ids));
                            }
                        }
                    }
                    answer = answers.message() => match answer {
                        Ok(Some(answer)) => {
                            let Some((id, ids)) = pending.pop_front() else {
                                return Err(Error::Protocol("an answer to no request".into()));
                            };
                            if answer.correlation_id != id.to_string() {
                                return Err(Error::Protocol(format!(
                                    "answer `{}` came for request {id}", answer.correlation_id
                                )));
                            }
                            if let Some(e) = answer.error {
                                let e = stream_error(e);
                                // Resent on a new stream with the others, in order.
                                pending.push_front((id, ids));
                                break e;
                            }
                            if answer.results.len() != ids.len() {
                                return Err(Error::Protocol(format!(
                                    "{} results for {} checks", answer.results.len(), ids.len()
                                )));
                            }
                            failures = 0;
                            for (subject, result) in ids.into_iter().zip(answer.results) {
                                if result.allowed && self.out.send(Ok(subject)).await.is_err() {
                                    // The consumer went away.
                                    return Ok(());
                                }
                            }
                        }
                        Ok(None) => break Error::Unavailable {
                            message: "the check stream ended before every request was answered".into(),
                            retry_after: None,
                        },
                        Err(status) => break Error::from(status),
                    },
                }
            };
            let resumable = failure.is_unavailable();
            policy
                .after_failure(&mut failures, failure, resumable)
                .await?;
        }
    }
}

/// Opens a snapshot stream and reads its header.
async fn open_snapshot(
    client: ConsentClient,
    request: pb::ExportSnapshotRequest,
) -> Result<
    (
        pb::SnapshotHeader,
        tonic::Streaming<pb::ExportSnapshotResponse>,
    ),
    Error,
> {
    let mut stream = client
        .consent()
        .export_snapshot(request)
        .await
        .map_err(Error::from)?
        .into_inner();
    match stream.message().await.map_err(Error::from)? {
        Some(pb::ExportSnapshotResponse {
            part: Some(Part::Header(header)),
        }) => Ok((header, stream)),
        Some(_) => Err(Error::Protocol(
            "a snapshot began without its header".into(),
        )),
        None => Err(Error::Unavailable {
            message: "the snapshot ended before its header".into(),
            retry_after: None,
        }),
    }
}

/// Where a snapshot's reading is.
struct SnapshotState {
    client: ConsentClient,
    /// At the header's revision; `after_subject_id` moves with each subject yielded.
    request: pb::ExportSnapshotRequest,
    stream: Option<tonic::Streaming<pb::ExportSnapshotResponse>>,
    buffered: VecDeque<pb::SubjectDecisions>,
    failures: u32,
    done: bool,
}

impl SnapshotState {
    async fn next(&mut self) -> Option<Result<pb::SubjectDecisions, Error>> {
        loop {
            if let Some(subject) = self.buffered.pop_front() {
                self.request
                    .after_subject_id
                    .clone_from(&subject.subject_id);
                return Some(Ok(subject));
            }
            if self.done {
                return None;
            }
            let failure = match self.stream.as_mut() {
                None => match open_snapshot(self.client.clone(), self.request.clone()).await {
                    Ok((header, stream)) if header.revision == self.request.at_revision => {
                        self.stream = Some(stream);
                        continue;
                    }
                    Ok((header, _)) => {
                        self.done = true;
                        return Some(Err(Error::Protocol(format!(
                            "the resumed snapshot is at revision {}, not {}",
                            header.revision, self.request.at_revision
                        ))));
                    }
                    Err(e) => e,
                },
                Some(stream) => match stream.message().await {
                    Ok(Some(pb::ExportSnapshotResponse {
                        part: Some(Part::Chunk(chunk)),
                    })) => {
                        self.failures = 0;
                        self.buffered.extend(chunk.subjects);
                        continue;
                    }
                    Ok(Some(pb::ExportSnapshotResponse {
                        part: Some(Part::End(_)),
                    })) => {
                        self.done = true;
                        continue;
                    }
                    Ok(Some(_)) => {
                        self.done = true;
                        return Some(Err(Error::Protocol(
                            "a snapshot message that is neither a chunk nor its end".into(),
                        )));
                    }
                    // Ended without its end: cut short.
                    Ok(None) => Error::Unavailable {
                        message: "the snapshot stream ended before its end".into(),
                        retry_after: None,
                    },
                    Err(status) => Error::from(status),
                },
            };
            self.stream = None;
            let resumable = failure.is_unavailable();
            let policy = self.client.retry_policy();
            if let Err(e) = policy
                .after_failure(&mut self.failures, failure, resumable)
                .await
            {
                self.done = true;
                return Some(Err(e));
            }
        }
    }
}

/// Where a watch's reading is.
struct WatchState {
    client: ConsentClient,
    /// `from_revision` moves with each message yielded.
    request: pb::WatchRequest,
    stream: Option<tonic::Streaming<pb::WatchResponse>>,
    failures: u32,
    done: bool,
}

impl WatchState {
    async fn next(&mut self) -> Option<Result<pb::WatchResponse, Error>> {
        loop {
            if self.done {
                return None;
            }
            let failure = match self.stream.as_mut() {
                None => match self.client.consent().watch(self.request.clone()).await {
                    Ok(stream) => {
                        self.stream = Some(stream.into_inner());
                        continue;
                    }
                    Err(status) => Error::from(status),
                },
                Some(stream) => match stream.message().await {
                    Ok(Some(message)) => {
                        self.failures = 0;
                        self.request.from_revision =
                            self.request.from_revision.max(message.revision);
                        return Some(Ok(message));
                    }
                    Ok(None) => Error::Unavailable {
                        message: "the watch stream ended".into(),
                        retry_after: None,
                    },
                    Err(status) => Error::from(status),
                },
            };
            self.stream = None;
            let resumable =
                failure.is_unavailable() || matches!(failure, Error::DeadlineExceeded { .. });
            let policy = self.client.retry_policy();
            if let Err(e) = policy
                .after_failure(&mut self.failures, failure, resumable)
                .await
            {
                self.done = true;
                return Some(Err(e));
            }
        }
    }
}
