//! `ConsentService.CheckStream` end to end on every backend: answers in request order with
//! their correlation ids, equal to CheckBatch's; a request that fails alone says why and the
//! stream goes on; a message with too many checks ends the stream naming the field.

use consent_client::pb::{self, Channel, Decision};
use consent_e2e::{TestServer, apply_seed_catalog, backends, record};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn check(subject: &str, purpose: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        subject_id: subject.into(),
        purpose_id: purpose.into(),
        ..Default::default()
    }
}

fn request(id: &str, checks: Vec<pb::CheckRequest>) -> pb::CheckStreamRequest {
    pb::CheckStreamRequest {
        correlation_id: id.into(),
        checks,
        consistency: None,
    }
}

/// Sends `requests` on one stream (then ends it) and reads every answer until the end.
async fn stream(
    server: &TestServer,
    requests: Vec<pb::CheckStreamRequest>,
) -> (Vec<pb::CheckStreamResponse>, Option<tonic::Status>) {
    let (sender, receiver) = mpsc::channel(requests.len().max(1));
    for r in requests {
        sender
            .send(r)
            .await
            .unwrap_or_else(|e| panic!("queue a request: {e}"));
    }
    drop(sender);
    let mut answers = server
        .client
        .consent()
        .check_stream(ReceiverStream::new(receiver))
        .await
        .unwrap_or_else(|e| panic!("open the stream: {e:?}"))
        .into_inner();
    let mut got = Vec::new();
    loop {
        match answers.message().await {
            Ok(Some(answer)) => got.push(answer),
            Ok(None) => return (got, None),
            Err(e) => return (got, Some(e)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_come_in_order_with_their_correlation_ids() {
    for server in backends().await {
        let b = server.backend;
        let client = &server.client;
        apply_seed_catalog(client).await;
        let subjects: Vec<String> = (0..40).map(|i| format!("+3247000{i:04}")).collect();
        for (i, s) in subjects.iter().enumerate() {
            let decision = if i % 3 == 0 {
                Decision::Denied
            } else {
                Decision::Granted
            };
            client
                .consent()
                .record_consent(record(s, &[("call_recording", decision)], Channel::Voice))
                .await
                .unwrap_or_else(|e| panic!("{b}: record: {e}"));
        }
        let all: Vec<pb::CheckRequest> = subjects
            .iter()
            .flat_map(|s| [check(s, "call_recording"), check(s, "analytics")])
            .collect();
        let batch = client
            .consent()
            .check_batch(pb::CheckBatchRequest {
                checks: all.clone(),
                consistency: None,
            })
            .await
            .unwrap_or_else(|e| panic!("{b}: batch: {e}"))
            .into_inner();

        let (answers, error) = stream(
            &server,
            vec![
                request("first", all[..30].to_vec()),
                request(
                    "bad",
                    vec![check("", "analytics"), check("erased:00", "analytics")],
                ),
                request(
                    "unknown",
                    vec![
                        check("+32470000001", "analytics"),
                        check("+32470000001", "no_such_purpose"),
                    ],
                ),
                request("empty", Vec::new()),
                request("second", all[30..].to_vec()),
            ],
        )
        .await;
        assert!(error.is_none(), "{b}: {error:?}");
        let ids: Vec<&str> = answers.iter().map(|a| a.correlation_id.as_str()).collect();
        assert_eq!(ids, ["first", "bad", "unknown", "empty", "second"], "{b}");

        // The good requests answer what CheckBatch answers, together and in order.
        let streamed: Vec<(bool, i32)> = answers[0]
            .results
            .iter()
            .chain(&answers[4].results)
            .map(|r| (r.allowed, r.reason))
            .collect();
        let batched: Vec<(bool, i32)> = batch
            .results
            .iter()
            .map(|r| (r.allowed, r.reason))
            .collect();
        assert_eq!(streamed, batched, "{b}");
        assert!(
            answers[0].error.is_none() && answers[4].error.is_none(),
            "{b}"
        );
        assert!(streamed.iter().any(|(allowed, _)| *allowed), "{b}: a mix");
        assert!(streamed.iter().any(|(allowed, _)| !*allowed), "{b}: a mix");

        // The others say why, each alone.
        let bad = answers[1].error.clone().unwrap_or_default();
        assert_eq!(bad.code, Code::InvalidArgument as i32, "{b}: {bad:?}");
        let fields: Vec<&str> = bad
            .field_violations
            .iter()
            .map(|f| f.field.as_str())
            .collect();
        assert_eq!(
            fields,
            ["checks[0].subject_id", "checks[1].subject_id"],
            "{b}"
        );
        assert!(answers[1].results.is_empty(), "{b}");
        let unknown = answers[2].error.clone().unwrap_or_default();
        assert_eq!(unknown.code, Code::NotFound as i32, "{b}: {unknown:?}");
        assert_eq!(
            unknown.message, "checks[1].purpose_id: purpose `no_such_purpose` not found",
            "{b}: the check is named"
        );
        let empty = answers[3].error.clone().unwrap_or_default();
        assert_eq!(empty.code, Code::InvalidArgument as i32, "{b}: {empty:?}");
        assert_eq!(empty.field_violations[0].field, "checks", "{b}");
        server.stop().await;
    }
}

/// A message with more checks than a batch may hold is refused before it is decoded: the
/// answers before it arrive, then the stream ends with the field named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_checks_in_one_message_end_the_stream() {
    let server = TestServer::sqlite().await;
    apply_seed_catalog(&server.client).await;
    let too_many = vec![check("s", "analytics"); consent_core::validate::MAX_BATCH_CHECKS + 1];
    let (answers, error) = stream(
        &server,
        vec![
            request("ok", vec![check("s", "analytics")]),
            request("too many", too_many),
            request("never read", vec![check("s", "analytics")]),
        ],
    )
    .await;
    let ids: Vec<&str> = answers.iter().map(|a| a.correlation_id.as_str()).collect();
    assert_eq!(ids, ["ok"]);
    let error = error.unwrap_or_else(|| panic!("the stream went on"));
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("checks"), "{error:?}");
    server.stop().await;
}

/// A tenant holds at most `MAX_CHECK_STREAMS_PER_TENANT` streams on a replica; one more
/// is refused with RESOURCE_EXHAUSTED, and a place is free again once a stream has ended.
/// (The replica-wide cap and its accounting are unit-tested in `check_stream.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_cap_are_refused_until_one_ends() {
    let server = TestServer::sqlite().await;
    apply_seed_catalog(&server.client).await;
    let open = || async {
        let (sender, receiver) = mpsc::channel::<pb::CheckStreamRequest>(1);
        let answers = server
            .client
            .consent()
            .check_stream(ReceiverStream::new(receiver))
            .await;
        (sender, answers)
    };
    let mut held = Vec::new();
    for i in 0..consent_server::check_stream::MAX_CHECK_STREAMS_PER_TENANT {
        let (sender, answers) = open().await;
        let answers = answers.unwrap_or_else(|e| panic!("stream {i}: {e:?}"));
        held.push((sender, answers.into_inner()));
    }
    let (_sender, refused) = open().await;
    let refused = refused
        .err()
        .unwrap_or_else(|| panic!("one stream too many was served"));
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("tenant"), "{refused:?}");

    // End one stream and read it to its end: its place is free by then.
    let Some((sender, mut answers)) = held.pop() else {
        panic!("no stream held")
    };
    drop(sender);
    assert!(matches!(answers.message().await, Ok(None)));
    let (sender, answers) = open().await;
    let mut answers = answers
        .unwrap_or_else(|e| panic!("a freed place: {e:?}"))
        .into_inner();
    sender
        .send(request("after", vec![check("s", "analytics")]))
        .await
        .unwrap_or_else(|e| panic!("send: {e}"));
    let answer = answers.message().await;
    assert!(
        matches!(&answer, Ok(Some(a)) if a.correlation_id == "after"),
        "{answer:?}"
    );
    drop(held);
    server.stop().await;
}

/// A stream is authorised when it opens and again at each request: once its key is revoked
/// (here on the same replica, where revocation is immediate) the next request ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_ends_its_open_stream() {
    let acme = consent_e2e::RevocableReader::start().await;
    let (sender, receiver) = mpsc::channel(1);
    let mut answers = acme
        .reader
        .consent()
        .check_stream(ReceiverStream::new(receiver))
        .await
        .unwrap_or_else(|e| panic!("open: {e:?}"))
        .into_inner();
    sender
        .send(request("before", vec![check("s", "analytics")]))
        .await
        .unwrap_or_else(|e| panic!("send: {e}"));
    let first = answers.message().await;
    assert!(
        matches!(&first, Ok(Some(a)) if a.correlation_id == "before" && a.error.is_none()),
        "{first:?}"
    );
    acme.revoke().await;
    sender
        .send(request("after", vec![check("s", "analytics")]))
        .await
        .unwrap_or_else(|e| panic!("send: {e}"));
    let ended = answers.message().await;
    assert!(
        matches!(&ended, Err(e) if e.code() == Code::Unauthenticated && e.message().contains("revoked")),
        "{ended:?}"
    );
    acme.server.stop().await;
}
