//! The change feed: replay from a revision, then live; resume without gaps or repeats;
//! filters; a write on one replica reaches a watcher on another.

use std::time::Duration;

use consent_client::pb::{Channel, Decision};
use consent_client::{ConsentClient, pb};
use consent_e2e::{TestServer, apply_seed_catalog, backends, record};
use tonic::Streaming;

/// A safety net so a broken feed fails the test instead of hanging it; never a timing claim.
const SAFETY: Duration = Duration::from_secs(30);

async fn watch(client: &ConsentClient, request: pb::WatchRequest) -> Streaming<pb::WatchResponse> {
    client
        .consent()
        .watch(request)
        .await
        .unwrap_or_else(|e| panic!("watch: {e}"))
        .into_inner()
}

/// Reads messages until `count` events arrived; returns their revisions and the last cursor.
async fn take_events(
    stream: &mut Streaming<pb::WatchResponse>,
    count: usize,
) -> (Vec<pb::ConsentEvent>, i64) {
    let mut events = Vec::new();
    let mut cursor = 0;
    tokio::time::timeout(SAFETY, async {
        while events.len() < count {
            match stream.message().await {
                Ok(Some(message)) => {
                    cursor = message.revision;
                    events.extend(message.events);
                }
                Ok(None) => panic!("the stream ended after {} events", events.len()),
                Err(status) => panic!("the stream failed: {status:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {count} events arrived", events.len()));
    (events, cursor)
}

async fn write(client: &ConsentClient, subject: &str, purpose: &str, decision: Decision) -> i64 {
    client
        .consent()
        .record_consent(record(subject, &[(purpose, decision)], Channel::Web))
        .await
        .unwrap_or_else(|e| panic!("record: {e}"))
        .into_inner()
        .revision
}

fn revisions(events: &[pb::ConsentEvent]) -> Vec<i64> {
    events.iter().map(|e| e.revision).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_the_ledger_then_streams_new_events() {
    for server in backends().await {
        apply_seed_catalog(&server.client).await;
        for i in 0..3 {
            write(
                &server.client,
                &format!("s{i}"),
                "analytics",
                Decision::Granted,
            )
            .await;
        }
        let mut stream = watch(&server.client, pb::WatchRequest::default()).await;
        let (past, cursor) = take_events(&mut stream, 3).await;
        assert_eq!(revisions(&past), [1, 2, 3], "[{}]", server.backend);
        assert_eq!(cursor, 3);
        let written = write(&server.client, "s9", "call_recording", Decision::Denied).await;
        let (live, cursor) = take_events(&mut stream, 1).await;
        assert_eq!(revisions(&live), [written]);
        assert_eq!(
            (live[0].subject_id.as_str(), live[0].decision()),
            ("s9", Decision::Denied)
        );
        assert_eq!(cursor, written);
        drop(stream);
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_from_the_last_revision_misses_nothing_and_repeats_nothing() {
    for server in backends().await {
        apply_seed_catalog(&server.client).await;
        for i in 0..5 {
            write(
                &server.client,
                &format!("s{i}"),
                "analytics",
                Decision::Granted,
            )
            .await;
        }
        let mut first = watch(&server.client, pb::WatchRequest::default()).await;
        let (seen, cursor) = take_events(&mut first, 5).await;
        drop(first);
        for i in 5..8 {
            write(
                &server.client,
                &format!("s{i}"),
                "analytics",
                Decision::Granted,
            )
            .await;
        }
        let mut resumed = watch(
            &server.client,
            pb::WatchRequest {
                from_revision: cursor,
                ..Default::default()
            },
        )
        .await;
        let (rest, _) = take_events(&mut resumed, 3).await;
        let all: Vec<i64> = revisions(&seen)
            .into_iter()
            .chain(revisions(&rest))
            .collect();
        assert_eq!(all, (1..=8).collect::<Vec<_>>(), "[{}]", server.backend);
        drop(resumed);
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_by_subject_and_purpose() {
    let server = TestServer::sqlite().await;
    apply_seed_catalog(&server.client).await;
    write(&server.client, "alice", "analytics", Decision::Granted).await;
    write(&server.client, "bob", "analytics", Decision::Granted).await;
    write(&server.client, "alice", "call_recording", Decision::Granted).await;
    write(&server.client, "alice", "analytics", Decision::Withdrawn).await;
    let mut alice_analytics = watch(
        &server.client,
        pb::WatchRequest {
            subject_id: "alice".into(),
            purpose_ids: vec!["analytics".into()],
            ..Default::default()
        },
    )
    .await;
    let (events, cursor) = take_events(&mut alice_analytics, 2).await;
    assert_eq!(revisions(&events), [1, 4]);
    assert_eq!(cursor, 4);
    let bad = server
        .client
        .consent()
        .watch(pb::WatchRequest {
            from_revision: -1,
            ..Default::default()
        })
        .await
        .err();
    assert_eq!(bad.map(|s| s.code()), Some(tonic::Code::InvalidArgument));
    drop(alice_analytics);
    server.stop().await;
}

/// Two replicas share one PostgreSQL: a watcher on B sees a write made through A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_replica_reaches_a_watcher_on_another() {
    let Some(url) = consent_store_sql::testing::postgres_test_url() else {
        return;
    };
    let a = TestServer::postgres_with(
        &url,
        consent_server::server::ServerSettings::with_auth(consent_server::config::AuthMode::None),
    )
    .await;
    let b = a.replica().await;
    apply_seed_catalog(&a.client).await;
    let mut stream = watch(&b.client, pb::WatchRequest::default()).await;
    let written = write(&a.client, "caller", "call_recording", Decision::Granted).await;
    let (events, _) = take_events(&mut stream, 1).await;
    assert_eq!(revisions(&events), [written]);
    drop(stream);
    b.stop().await;
    a.stop().await;
}

/// Shutting down ends open Watch streams (clients resume elsewhere) instead of waiting on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams() {
    let server = TestServer::sqlite().await;
    apply_seed_catalog(&server.client).await;
    write(&server.client, "s", "analytics", Decision::Granted).await;
    let mut stream = watch(&server.client, pb::WatchRequest::default()).await;
    take_events(&mut stream, 1).await;
    tokio::time::timeout(SAFETY, server.stop())
        .await
        .unwrap_or_else(|_| panic!("shutdown waited on an open Watch stream"));
    let end = tokio::time::timeout(SAFETY, stream.message()).await;
    assert!(
        matches!(end, Ok(Ok(None)) | Ok(Err(_))),
        "the stream ended: {end:?}"
    );
}

/// A feed is authorised when it opens and again at each batch: once its key is revoked
/// (here on the same replica, where revocation is immediate) the next batch ends the
/// stream with UNAUTHENTICATED instead of the tenant's changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_ends_its_feed() {
    let acme = consent_e2e::RevocableReader::start().await;
    let mut feed = watch(&acme.reader, pb::WatchRequest::default()).await;
    write(&acme.admin, "alice", "analytics", Decision::Granted).await;
    take_events(&mut feed, 1).await;
    acme.revoke().await;
    write(&acme.admin, "bob", "analytics", Decision::Granted).await;
    let ended = tokio::time::timeout(SAFETY, async {
        loop {
            match feed.message().await {
                Ok(Some(message)) => assert!(
                    message.events.iter().all(|e| e.subject_id != "bob"),
                    "a change after the revocation was delivered"
                ),
                other => return other,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the feed went on past the safety net"));
    assert!(
        matches!(&ended, Err(e) if e.code() == tonic::Code::Unauthenticated),
        "{ended:?}"
    );
    acme.server.stop().await;
}
