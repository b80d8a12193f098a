//! SIGTERM with a Watch reader that stopped reading: every unary RPC is answered, then the
//! remaining streams are closed and `consentd` exits 0 at once, instead of holding the drain
//! open for the whole grace period (here 600 s; the test's safety net is far shorter).

mod common;

use std::time::Duration;

use common::{CATALOG, fail, run_cli, start, terminate};
use consent_client::{ConsentClient, pb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watcher_does_not_hold_shutdown() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail("tempdir", e));
    let url = format!("sqlite://{}/consent.db", dir.path().display());
    let applied = run_cli(&url, &[], &["catalog", "apply", CATALOG]).await;
    assert_eq!(applied.code, Some(0), "{applied:?}");
    let (child, addr) = start(&url, &[("CONSENT__SERVER__SHUTDOWN_GRACE_SECS", "600")]).await;
    let client = ConsentClient::connect(format!("http://{addr}"))
        .await
        .unwrap_or_else(|e| fail("connect", e));
    // Enough history that the feed fills the reader's HTTP/2 window and the server's buffer.
    for batch in 0..20 {
        let decisions: Vec<pb::PurposeDecision> = ["analytics", "call_recording"]
            .into_iter()
            .map(|purpose| pb::PurposeDecision {
                purpose_id: purpose.into(),
                vendor_id: String::new(),
                decision: pb::Decision::Granted.into(),
            })
            .collect();
        for subject in 0..50 {
            client
                .consent()
                .record_consent(pb::RecordConsentRequest {
                    subject_id: format!("subject-{batch}-{subject}-{}", "x".repeat(200)),
                    decisions: decisions.clone(),
                    channel: pb::Channel::Web.into(),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| fail("record", e));
        }
    }
    // A reader that opens the feed from the start and never reads it, on a connection with
    // the smallest HTTP/2 windows, so the server soon has more to send than it may.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|e| fail("endpoint", e))
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap_or_else(|e| fail("connect", e));
    let stalled = pb::consent_service_client::ConsentServiceClient::new(channel)
        .watch(pb::WatchRequest::default())
        .await
        .unwrap_or_else(|e| fail("watch", e));
    let exited = tokio::time::timeout(Duration::from_secs(120), terminate(child)).await;
    let status = exited.unwrap_or_else(|_| fail("consentd", "still draining after 120 s"));
    assert_eq!(status.code(), Some(0));
    drop(stalled);
}
