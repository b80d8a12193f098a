//! Durability: `consentd` killed with SIGKILL while writers are busy loses no acknowledged
//! event, and the hash chain still verifies after a restart. Runs the real binary on
//! SQLite, and on a scratch PostgreSQL database when `CONSENT_TEST_DATABASE_URL` is set.
//! Also covers the CLI (`catalog apply`, `verify`) and a clean exit 0 on SIGTERM.

mod common;

use std::collections::HashSet;

use common::{CATALOG, CONSENTD, fail, run_cli, start, terminate};

use consent_client::{ConsentClient, pb};
use consent_store_sql::testing::{
    create_scratch_database, drop_scratch_database, postgres_test_url,
};
use tokio::process::Command;
use tokio::sync::mpsc;

/// Writers stop after this many writes each if the kill has not stopped them first.
const WRITES_PER_WRITER: usize = 400;
const WRITERS: usize = 4;
/// The kill comes once this many writes were acknowledged.
const ACKS_BEFORE_KILL: usize = 120;

async fn writer(client: ConsentClient, w: usize, acks: mpsc::UnboundedSender<(String, i64)>) {
    for i in 0..WRITES_PER_WRITER {
        let request = pb::RecordConsentRequest {
            subject_id: format!("subject-{w}-{i}"),
            decisions: vec![pb::PurposeDecision {
                purpose_id: "call_recording".into(),
                vendor_id: String::new(),
                decision: pb::Decision::Granted.into(),
            }],
            channel: pb::Channel::Voice.into(),
            idempotency_key: format!("w{w}-{i}"),
            ..Default::default()
        };
        match client.consent().record_consent(request).await {
            Ok(response) => {
                let response = response.into_inner();
                for event in response.events {
                    if acks.send((event.id, response.revision)).is_err() {
                        return;
                    }
                }
            }
            // The server is gone: what was acknowledged is what counts.
            Err(_) => return,
        }
    }
}

async fn all_event_ids(client: &ConsentClient) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut token = String::new();
    // Bounded: at most WRITERS * WRITES_PER_WRITER events exist.
    for _ in 0..=(WRITERS * WRITES_PER_WRITER / 1000 + 1) {
        let page = client
            .consent()
            .list_events(pb::ListEventsRequest {
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| fail("list events", e))
            .into_inner();
        ids.extend(page.events.into_iter().map(|e| e.id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    ids
}

async fn kill_during_writes_loses_nothing_acknowledged(store_url: &str) {
    let out = run_cli(store_url, &[], &["catalog", "apply", CATALOG]).await;
    assert_eq!(out.code, Some(0), "catalog apply: {out:?}");
    assert!(
        out.stdout.contains("applied 8 vendors, 11 purposes"),
        "{out:?}"
    );

    let (mut child, addr) = start(store_url, &[]).await;
    let client = ConsentClient::connect(format!("http://{addr}"))
        .await
        .unwrap_or_else(|e| fail("connect", e));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(client.clone(), w, tx.clone())))
        .collect();
    drop(tx);

    let mut acknowledged = Vec::new();
    while let Some(ack) = rx.recv().await {
        acknowledged.push(ack);
        if acknowledged.len() == ACKS_BEFORE_KILL {
            child
                .start_kill()
                .unwrap_or_else(|e| fail("SIGKILL consentd", e));
        }
    }
    for w in writers {
        w.await.unwrap_or_else(|e| fail("writer", e));
    }
    let status = child.wait().await.unwrap_or_else(|e| fail("wait", e));
    assert!(
        !status.success(),
        "consentd was killed, not stopped: {status}"
    );
    assert!(acknowledged.len() >= ACKS_BEFORE_KILL);

    // Restart on the same store: every acknowledged event is there and the chain verifies.
    let (child, addr) = start(store_url, &[]).await;
    let client = ConsentClient::connect(format!("http://{addr}"))
        .await
        .unwrap_or_else(|e| fail("reconnect", e));
    let stored = all_event_ids(&client).await;
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|(id, _)| !stored.contains(id))
        .collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    let verify = client
        .admin()
        .verify_ledger(pb::VerifyLedgerRequest {})
        .await
        .unwrap_or_else(|e| fail("verify", e))
        .into_inner();
    assert!(verify.ok, "{verify:?}");
    assert_eq!(
        usize::try_from(verify.events_checked).unwrap_or_default(),
        stored.len()
    );
    let highest_ack = acknowledged
        .iter()
        .map(|(_, r)| *r)
        .max()
        .unwrap_or_default();
    assert!(verify.revision >= highest_ack);

    // SIGTERM drains and exits 0.
    let status = terminate(child).await;
    assert!(status.success(), "SIGTERM must exit 0, got {status}");

    let out = run_cli(store_url, &[], &["verify"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("tenant default: ok"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_kill_9_during_writes() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail("tempdir", e));
    let url = format!("sqlite://{}/consent.db", dir.path().display());
    kill_during_writes_loses_nothing_acknowledged(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_kill_9_during_writes() {
    let Some(admin) = postgres_test_url() else {
        return;
    };
    let (url, name) = create_scratch_database(&admin)
        .await
        .unwrap_or_else(|e| fail("scratch database", e));
    kill_during_writes_loses_nothing_acknowledged(&url).await;
    drop_scratch_database(&admin, &name)
        .await
        .unwrap_or_else(|e| fail("drop scratch database", e));
}

/// Without authentication, a non-loopback bind refuses to start and says why.
#[tokio::test]
async fn public_bind_without_auth_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail("tempdir", e));
    let url = format!("sqlite://{}/consent.db", dir.path().display());
    let out = Command::new(CONSENTD)
        .args(["--store-url", &url, "--listen", "0.0.0.0:0", "serve"])
        .output()
        .await
        .unwrap_or_else(|e| fail("run consentd", e));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("auth.mode = none"), "{stderr}");
    assert!(
        !dir.path().join("consent.db").exists(),
        "nothing is opened before the refusal"
    );
}
