//! Request limits answer with the right code and say which limit: message size, metadata
//! size, per-key rate (with a retry delay); and limits are consistent: the answer to any
//! accepted request fits in a message, a read whose answer could not fit is refused naming
//! the limit, and pages and feeds are cut by size so they are always deliverable.

use std::time::Duration;

use consent_client::pb;
use consent_core::access::Scope;
use consent_e2e::RawChecks;
use consent_e2e::{TestServer, apply_seed_catalog, backends_with, bad_fields, record};
use consent_server::config::{AuthMode, LimitsConfig, MIN_MESSAGE_BYTES};
use consent_server::server::ServerSettings;
use tonic::Code;
use tonic_types::StatusExt;

fn check(subject: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        subject_id: subject.into(),
        purpose_id: "analytics".into(),
        ..Default::default()
    }
}

fn settings(limits: LimitsConfig) -> ServerSettings {
    ServerSettings {
        limits,
        key_cache_ttl: Duration::from_secs(60),
        ..ServerSettings::with_auth(AuthMode::ApiKey)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_and_metadata_are_resource_exhausted() {
    let server = TestServer::sqlite_with(settings(LimitsConfig {
        max_message_bytes: MIN_MESSAGE_BYTES,
        max_metadata_bytes: 2048,
        ..LimitsConfig::default()
    }))
    .await;
    let client = server.client_for("acme", Scope::ALL).await;
    apply_seed_catalog(&client).await;

    let small = pb::CheckBatchRequest {
        checks: (0..100).map(|i| check(&format!("subject-{i}"))).collect(),
        consistency: None,
    };
    assert!(client.consent().check_batch(small).await.is_ok());
    let large = pb::CheckBatchRequest {
        checks: (0..5000).map(|i| check(&format!("{i:0>256}"))).collect(),
        consistency: None,
    };
    let status = client.consent().check_batch(large).await.err();
    assert_eq!(
        status.as_ref().map(tonic::Status::code),
        Some(Code::ResourceExhausted),
        "{status:?}"
    );

    let mut request = tonic::Request::new(check("s"));
    let filler = "x".repeat(4096);
    request
        .metadata_mut()
        .insert("x-filler", filler.parse().unwrap_or_else(|e| panic!("{e}")));
    let status = client.consent().check(request).await.err();
    assert_eq!(
        status.as_ref().map(tonic::Status::code),
        Some(Code::ResourceExhausted),
        "{status:?}"
    );
    assert!(status.is_some_and(|s| s.message().contains("limits.max_metadata_bytes")));
    assert!(
        client.check_raw("s", "analytics").await.is_ok(),
        "the server serves on afterwards"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_has_its_own_request_rate() {
    let server = TestServer::sqlite_with(settings(LimitsConfig {
        per_key_requests_per_minute: 1,
        per_key_burst: 3,
        ..LimitsConfig::default()
    }))
    .await;
    // No catalogue: every call that gets through answers NOT_FOUND.
    let busy = server.client_for("acme", &[Scope::ConsentRead]).await;
    for _ in 0..3 {
        assert_eq!(
            busy.check_raw("s", "analytics")
                .await
                .err()
                .map(|s| s.code()),
            Some(Code::NotFound)
        );
    }
    let status = busy.check_raw("s", "analytics").await.err();
    assert_eq!(
        status.as_ref().map(tonic::Status::code),
        Some(Code::ResourceExhausted),
        "{status:?}"
    );
    let retry = status
        .and_then(|s| s.get_details_retry_info())
        .and_then(|r| r.retry_delay);
    assert!(
        retry.is_some_and(|d| d > Duration::ZERO),
        "a retry delay is given: {retry:?}"
    );
    let other = server.client_for("acme", &[Scope::ConsentRead]).await;
    assert_eq!(
        other
            .check_raw("s", "analytics")
            .await
            .err()
            .map(|s| s.code()),
        Some(Code::NotFound),
        "another key of the same tenant is not limited by the first"
    );

    // A stream is one call when it opens, and each of its requests counts like a call: a
    // fresh key (burst 3) opens one and sends 3 requests; the third is over the rate and
    // answered RESOURCE_EXHAUSTED, and the stream goes on.
    let streamer = server.client_for("acme", &[Scope::ConsentRead]).await;
    let requests: Vec<pb::CheckStreamRequest> = (0..3)
        .map(|i| pb::CheckStreamRequest {
            correlation_id: format!("r{i}"),
            checks: vec![pb::CheckRequest {
                subject_id: "s".into(),
                purpose_id: "analytics".into(),
                ..Default::default()
            }],
            consistency: None,
        })
        .collect();
    let mut answers = streamer
        .consent()
        .check_stream(futures::stream::iter(requests))
        .await
        .unwrap_or_else(|e| panic!("open: {e:?}"))
        .into_inner();
    let mut codes = Vec::new();
    while let Some(answer) = answers
        .message()
        .await
        .unwrap_or_else(|e| panic!("the stream failed: {e:?}"))
    {
        codes.push(answer.error.map_or(0, |e| e.code));
    }
    assert_eq!(
        codes,
        [
            Code::NotFound as i32,
            Code::NotFound as i32,
            Code::ResourceExhausted as i32
        ]
    );
    server.stop().await;
}

/// Every evidence field at its limit (about 140 KB).
fn largest_evidence() -> pb::Evidence {
    pb::Evidence {
        call_id: "c".repeat(256),
        recording_id: "r".repeat(256),
        transcript_sha256: "a".repeat(64),
        notice_text_sha256: "b".repeat(64),
        ip_address: "i".repeat(256),
        user_agent: "u".repeat(4096),
        attributes: (0..32)
            .map(|i| (format!("{i:0>256}"), "v".repeat(4096)))
            .collect(),
    }
}

fn limited(max_message_bytes: usize) -> ServerSettings {
    ServerSettings {
        limits: LimitsConfig {
            max_message_bytes,
            ..LimitsConfig::default()
        },
        ..ServerSettings::with_auth(AuthMode::None)
    }
}

/// A RecordConsent within the input limits (11 decisions with maximal evidence, ~150 KB)
/// commits and gets its answer, also on an idempotent retry: the events come back without
/// the evidence the caller sent (its digest is there). With the smallest message limit,
/// 1 MiB, the old answer (each event repeating the evidence) was 1.5 MB: OUT_OF_RANGE after
/// the commit, forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_write_always_gets_its_answer() {
    for server in backends_with(limited(MIN_MESSAGE_BYTES)).await {
        apply_seed_catalog(&server.client).await;
        let purposes: Vec<String> = consent_e2e::seed_catalog()
            .purposes
            .iter()
            .map(|p| p.id.clone())
            .collect();
        let decisions: Vec<(&str, pb::Decision)> = purposes
            .iter()
            .map(|p| (p.as_str(), pb::Decision::Granted))
            .collect();
        let mut request = record("heavy-proof", &decisions, pb::Channel::Web);
        request.evidence = Some(largest_evidence());
        request.idempotency_key = "heavy-1".into();
        for attempt in ["first", "retry"] {
            let answer = server
                .client
                .consent()
                .record_consent(request.clone())
                .await
                .unwrap_or_else(|e| panic!("[{}] {attempt}: {e:?}", server.backend))
                .into_inner();
            assert_eq!(answer.events.len(), purposes.len());
            assert!(answer.events.iter().all(|e| e.evidence.is_none()
                && e.evidence_sha256.len() == 64
                && e.evidence_sha256 == answer.events[0].evidence_sha256));
        }
        server.stop().await;
    }
}

/// After writes with maximal evidence, ListEvents with the default page size and Watch from
/// revision 0 deliver everything (pages and feed messages are cut by size); before, both
/// answered OUT_OF_RANGE on every attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_and_the_feed_stay_deliverable_whatever_the_evidence() {
    const WRITES: usize = 12;
    for server in backends_with(limited(MIN_MESSAGE_BYTES)).await {
        apply_seed_catalog(&server.client).await;
        let mut head = 0;
        for i in 0..WRITES {
            let mut request = record(
                &format!("subject-{i}"),
                &[("analytics", pb::Decision::Granted)],
                pb::Channel::Web,
            );
            request.evidence = Some(largest_evidence());
            head = server
                .client
                .consent()
                .record_consent(request)
                .await
                .unwrap_or_else(|e| panic!("[{}] record: {e:?}", server.backend))
                .into_inner()
                .revision;
        }
        let mut listed = Vec::new();
        let mut token = String::new();
        for _ in 0..=WRITES {
            let page = server
                .client
                .consent()
                .list_events(pb::ListEventsRequest {
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("[{}] list: {e:?}", server.backend))
                .into_inner();
            assert!(!page.events.is_empty());
            assert!(
                page.events.iter().all(|e| e
                    .evidence
                    .as_ref()
                    .is_some_and(|ev| ev.attributes.len() == 32)),
                "ListEvents carries the evidence"
            );
            listed.extend(page.events.iter().map(|e| e.revision));
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(
            listed,
            (1..=head).collect::<Vec<_>>(),
            "[{}]",
            server.backend
        );

        let mut feed = server
            .client
            .consent()
            .watch(pb::WatchRequest {
                from_revision: 0,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("[{}] watch: {e:?}", server.backend))
            .into_inner();
        let mut watched = Vec::new();
        // Bounded: one message per event at most, until the head is reached.
        for _ in 0..=WRITES {
            let message = feed
                .message()
                .await
                .unwrap_or_else(|e| panic!("[{}] feed: {e:?}", server.backend))
                .unwrap_or_else(|| panic!("the feed ended"));
            watched.extend(message.events.iter().map(|e| e.revision));
            if message.revision >= head {
                break;
            }
        }
        assert_eq!(watched, (1..=head).collect::<Vec<_>>());
        server.stop().await;
    }
}

/// A CheckBatch whose answer cannot fit the message limit is refused with INVALID_ARGUMENT
/// naming `checks` and the limit (before: OUT_OF_RANGE after all the work); a smaller batch
/// of the same checks is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_answer_cannot_fit_is_refused_naming_the_limit() {
    let server = TestServer::sqlite_with(limited(MIN_MESSAGE_BYTES)).await;
    let long = |c: char| c.to_string().repeat(256);
    let (purpose, vendor, policy, subject) = (long('p'), long('v'), long('2'), long('s'));
    let mut catalog = server.client.catalog();
    catalog
        .upsert_vendor(pb::UpsertVendorRequest {
            vendor: Some(pb::Vendor {
                id: vendor.clone(),
                name: "v".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    catalog
        .upsert_purpose(pb::UpsertPurposeRequest {
            purpose: Some(pb::Purpose {
                id: purpose.clone(),
                name: "p".into(),
                category: pb::PurposeCategory::Analytics.into(),
                legal_basis: pb::LegalBasis::Consent.into(),
                vendor_ids: vec![vendor.clone()],
                ..Default::default()
            }),
        })
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    catalog
        .publish_policy_version(pb::PublishPolicyVersionRequest {
            policy_version: Some(pb::PolicyVersion {
                id: policy,
                published_at: Some(consent_e2e::days_ago(1)),
                purpose_ids: vec![purpose.clone()],
                vendor_ids: vec![vendor.clone()],
                ..Default::default()
            }),
        })
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    server
        .client
        .consent()
        .record_consent(record(
            &subject,
            &[(&purpose, pb::Decision::Granted)],
            pb::Channel::Web,
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let batch = |n: usize| pb::CheckBatchRequest {
        checks: (0..n)
            .map(|_| pb::CheckRequest {
                subject_id: subject.clone(),
                purpose_id: purpose.clone(),
                vendor_id: vendor.clone(),
                ..Default::default()
            })
            .collect(),
        consistency: None,
    };
    let refused = server.client.consent().check_batch(batch(1200)).await.err();
    assert_eq!(
        refused.as_ref().map(tonic::Status::code),
        Some(Code::InvalidArgument),
        "{refused:?}"
    );
    let refused = refused.unwrap_or_else(|| panic!("refused"));
    assert_eq!(bad_fields(&refused), ["checks"]);
    assert!(
        refused.message().contains("limits.max_message_bytes")
            || format!("{:?}", refused.get_details_bad_request())
                .contains("limits.max_message_bytes")
    );
    let answered = server
        .client
        .consent()
        .check_batch(batch(500))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    assert!(answered.results.iter().all(|r| r.allowed));
    server.stop().await;
}

/// Metadata far over `limits.max_metadata_bytes` (100 KiB) still gets a gRPC answer,
/// RESOURCE_EXHAUSTED naming the limit, not HTTP 431 (which clients read as UNKNOWN).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_metadata_is_resource_exhausted_not_an_http_error() {
    let server = TestServer::sqlite().await;
    let mut request = tonic::Request::new(check("s"));
    for i in 0..25 {
        let filler = "x".repeat(4096);
        request.metadata_mut().insert(
            tonic::metadata::MetadataKey::from_bytes(format!("x-filler-{i}").as_bytes())
                .unwrap_or_else(|e| panic!("{e}")),
            filler.parse().unwrap_or_else(|e| panic!("{e}")),
        );
    }
    let status = server.client.consent().check(request).await.err();
    assert_eq!(
        status.as_ref().map(tonic::Status::code),
        Some(Code::ResourceExhausted),
        "{status:?}"
    );
    assert!(status.is_some_and(|s| s.message().contains("limits.max_metadata_bytes")));
    server.stop().await;
}

/// `limits.max_watches_per_tenant`: past it a new Watch is RESOURCE_EXHAUSTED naming the
/// limit; when a stream is closed its slot is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_are_capped_per_tenant() {
    let server = TestServer::sqlite_with(ServerSettings {
        limits: LimitsConfig {
            max_watches: 10,
            max_watches_per_tenant: 2,
            ..LimitsConfig::default()
        },
        ..ServerSettings::with_auth(AuthMode::None)
    })
    .await;
    let watch = || {
        let mut consent = server.client.consent();
        async move { consent.watch(pb::WatchRequest::default()).await }
    };
    let first = watch().await.unwrap_or_else(|e| panic!("{e:?}"));
    let _second = watch().await.unwrap_or_else(|e| panic!("{e:?}"));
    let third = watch().await.err();
    assert_eq!(
        third.as_ref().map(tonic::Status::code),
        Some(Code::ResourceExhausted),
        "{third:?}"
    );
    assert!(third.is_some_and(|s| s.message().contains("limits.max_watches_per_tenant")));
    drop(first);
    // The server frees the slot once it sees the stream closed; bounded retries.
    let mut reopened = false;
    for _ in 0..500 {
        if watch().await.is_ok() {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(reopened, "a closed stream frees its slot");
    server.stop().await;
}

/// `limits.max_connections` and `limits.handshake_timeout_secs`: with two connections
/// allowed and the test client holding one, a silent socket takes the other, so a new
/// client gets no answer; the handshake deadline closes the silent socket and the new
/// client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_holds_a_slot_only_until_its_handshake_deadline() {
    use tokio::io::AsyncReadExt;
    let server = TestServer::sqlite_with(ServerSettings {
        limits: LimitsConfig {
            max_connections: 2,
            handshake_timeout_secs: 5,
            ..LimitsConfig::default()
        },
        ..ServerSettings::with_auth(AuthMode::None)
    })
    .await;
    let addr = server.addr;
    let served = || async move {
        let client = consent_client::ConsentClient::connect(format!("http://{addr}")).await?;
        let code = client
            .check_raw("s", "analytics")
            .await
            .err()
            .map(|s| s.code());
        Ok::<_, consent_client::Error>(code)
    };
    assert_eq!(
        served().await.ok().flatten(),
        Some(Code::NotFound),
        "a second connection is served (and closed again)"
    );
    let mut silent = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let blocked = tokio::time::timeout(Duration::from_millis(300), served()).await;
    assert!(
        blocked.is_err(),
        "with both slots taken no third client is answered: {blocked:?}"
    );
    // The server sends its HTTP/2 settings, then closes the silent socket at its deadline
    // (the safety net is far longer).
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(60), silent.read_to_end(&mut sink)).await;
    assert!(
        closed.is_ok(),
        "the silent connection is closed: {closed:?}"
    );
    assert_eq!(
        served().await.ok().flatten(),
        Some(Code::NotFound),
        "served once the slot is free"
    );
    server.stop().await;
}
