//! Durability: `consentd` killed with SIGKILL while writers are busy loses no acknowledged
//! event, and the hash chain still verifies after a restart. Runs the real binary on
//! SQLite, and on a scratch PostgreSQL database when `CONSENT_TEST_DATABASE_URL` is set.
//! Also covers the CLI (`catalog apply`, `verify`) and a clean exit 0 on SIGTERM.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use consent_client::{ConsentClient, pb};
use consent_store_sql::testing::{
    create_scratch_database, drop_scratch_database, postgres_test_url,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const CONSENTD: &str = env!("CARGO_BIN_EXE_consentd");
const CATALOG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/catalog/callnex.toml"
);
/// Writers stop after this many writes each if the kill has not stopped them first.
const WRITES_PER_WRITER: usize = 400;
const WRITERS: usize = 4;
/// The kill comes once this many writes were acknowledged.
const ACKS_BEFORE_KILL: usize = 120;
/// A safety net against a hung child, never an assertion on speed.
const STARTUP_LIMIT: Duration = Duration::from_secs(120);

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    panic!("{what}: {e}")
}

/// Runs `consentd ARGS` to completion and returns its exit code and stdout.
async fn run_cli(store_url: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(CONSENTD)
        .args(["--store-url", store_url, "--log-level", "warn"])
        .args(args)
        .env_remove("CONSENT__SERVER__LISTEN")
        .output()
        .await
        .unwrap_or_else(|e| fail("run consentd", e));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Starts `consentd serve` on a free loopback port; returns the child and its address
/// (read from its "listening on" line, so no sleeping).
async fn start(store_url: &str) -> (Child, String) {
    let mut child = Command::new(CONSENTD)
        .args([
            "--store-url",
            store_url,
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "warn",
            "serve",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| fail("spawn consentd", e));
    let stdout = child
        .stdout
        .take()
        .unwrap_or_else(|| fail("stdout", "not piped"));
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(STARTUP_LIMIT, async {
        while let Some(line) = lines
            .next_line()
            .await
            .unwrap_or_else(|e| fail("read stdout", e))
        {
            if let Some(addr) = line.strip_prefix("consentd listening on ") {
                return addr.to_owned();
            }
        }
        fail("consentd", "exited before listening")
    })
    .await
    .unwrap_or_else(|e| fail("consentd did not start", e));
    (child, addr)
}

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
    let (code, out) = run_cli(store_url, &["catalog", "apply", CATALOG]).await;
    assert_eq!(code, Some(0), "catalog apply: {out}");
    assert!(out.contains("applied 8 vendors, 11 purposes"), "{out}");

    let (mut child, addr) = start(store_url).await;
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
    let (mut child, addr) = start(store_url).await;
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
    let pid = child
        .id()
        .unwrap_or_else(|| fail("pid", "child already exited"));
    let term = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap_or_else(|e| fail("kill -TERM", e));
    assert!(term.success());
    let status = child.wait().await.unwrap_or_else(|e| fail("wait", e));
    assert!(status.success(), "SIGTERM must exit 0, got {status}");

    let (code, out) = run_cli(store_url, &["verify"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("tenant default: ok"), "{out}");
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
