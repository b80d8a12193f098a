//! Request limits answer with the right code and say which limit: message size, metadata
//! size, per-key rate (with a retry delay).

use std::time::Duration;

use consent_client::pb;
use consent_core::access::Scope;
use consent_e2e::{TestServer, apply_seed_catalog};
use consent_server::config::{AuthMode, LimitsConfig};
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
        max_message_bytes: 64 * 1024,
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
        checks: (0..5000)
            .map(|i| check(&format!("subject-with-a-long-identifier-{i:08}")))
            .collect(),
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
        client.check("s", "analytics").await.is_ok(),
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
            busy.check("s", "analytics").await.err().map(|s| s.code()),
            Some(Code::NotFound)
        );
    }
    let status = busy.check("s", "analytics").await.err();
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
        other.check("s", "analytics").await.err().map(|s| s.code()),
        Some(Code::NotFound),
        "another key of the same tenant is not limited by the first"
    );
    server.stop().await;
}
