//! No credential reaches a log line or a terminal: the real `consentd`, configured with a
//! PostgreSQL password and a Redis password, is driven through cache faults (Redis killed)
//! and store faults (its database sessions terminated); then everything it printed is
//! searched for the secrets. Commands that fail to connect are checked the same way.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{CATALOG, CONSENTD, fail, run_cli, terminate};
use consent_client::{ConsentClient, pb};
use consent_store_sql::testing::{
    create_scratch_database, drop_scratch_database, postgres_test_url,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// With a space, which a strict URL parser stops at (the driver accepts it).
const PG_SECRET: &str = "pg-Secret 4c1e";
const REDIS_SECRET: &str = "redis-Secret-9f2b";
/// A safety net against a hung child, never an assertion on speed.
const SAFETY: Duration = Duration::from_secs(120);

fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| fail("bind", e));
    probe
        .local_addr()
        .unwrap_or_else(|e| fail("addr", e))
        .port()
}

/// A redis-server of the test's own that requires `REDIS_SECRET`.
async fn redis_with_password() -> (Child, u16) {
    let port = free_port();
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            REDIS_SECRET,
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| fail("redis-server", e));
    let stdout = child
        .stdout
        .take()
        .unwrap_or_else(|| fail("stdout", "none"));
    let mut lines = BufReader::new(stdout).lines();
    tokio::time::timeout(SAFETY, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("Ready to accept connections") {
                return;
            }
        }
        fail("redis-server", "exited before it was ready")
    })
    .await
    .unwrap_or_else(|e| fail("redis-server did not become ready", e));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, port)
}

/// `postgres://user@host/db` with `PG_SECRET` as the password (trust authentication
/// ignores it, so the store still connects) and as a `password` parameter.
fn with_password(url: &str) -> String {
    let with_user_password = url.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{PG_SECRET}@"),
        1,
    );
    assert_ne!(
        with_user_password, url,
        "the test URL names the postgres user: {url}"
    );
    format!("{with_user_password}?sslmode=prefer&password={PG_SECRET}")
}

/// `consentd serve` with everything it writes to stderr (its logs) collected.
async fn serve(env: &[(&str, &str)]) -> (Child, String, Arc<Mutex<String>>) {
    let mut child = Command::new(CONSENTD)
        .args(["--listen", "127.0.0.1:0", "--log-level", "debug", "serve"])
        .env_remove("CONSENT__SERVER__LISTEN")
        .env_remove("CONSENT__AUTH__MODE")
        // Any free port: 9090 (the default) may be taken by another consentd on the machine.
        .env("CONSENT__HTTP__LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| fail("spawn consentd", e));
    let logs = Arc::new(Mutex::new(String::new()));
    let mut stderr = child
        .stderr
        .take()
        .unwrap_or_else(|| fail("stderr", "none"));
    let sink = Arc::clone(&logs);
    tokio::spawn(async move {
        let mut buffer = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            if let Ok(mut logs) = sink.lock() {
                logs.push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        }
    });
    let stdout = child
        .stdout
        .take()
        .unwrap_or_else(|| fail("stdout", "none"));
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(SAFETY, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = line.strip_prefix("consentd listening on ") {
                return addr.to_owned();
            }
        }
        fail("consentd", "exited before listening")
    })
    .await
    .unwrap_or_else(|e| fail("consentd did not start", e));
    (child, addr, logs)
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [PG_SECRET, REDIS_SECRET] {
        assert!(!text.contains(secret), "{what} shows a secret:\n{text}");
    }
}

async fn record_and_check(client: &ConsentClient, subject: &str) -> Vec<tonic::Code> {
    let record = client
        .consent()
        .record_consent(pb::RecordConsentRequest {
            subject_id: subject.into(),
            decisions: vec![pb::PurposeDecision {
                purpose_id: "call_recording".into(),
                vendor_id: String::new(),
                decision: pb::Decision::Granted.into(),
            }],
            channel: pb::Channel::Voice.into(),
            ..Default::default()
        })
        .await;
    let check = client
        .check(consent_client::Check::new(subject, "call_recording"))
        .await
        .map(|_| ())
        .map_err(|e| e.code());
    vec![
        record
            .map(|_| ())
            .map_err(|e| e.code())
            .err()
            .unwrap_or(tonic::Code::Ok),
        check.err().unwrap_or(tonic::Code::Ok),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_terminal_output_never_show_credentials() {
    let Some(admin) = postgres_test_url() else {
        return;
    };
    let (url, name) = create_scratch_database(&admin)
        .await
        .unwrap_or_else(|e| fail("scratch database", e));
    let store_url = with_password(&url);
    let (mut redis, redis_port) = redis_with_password().await;
    let redis_url = format!("redis://:{REDIS_SECRET}@127.0.0.1:{redis_port}");
    let env = [
        ("CONSENT__STORE__URL", store_url.as_str()),
        ("CONSENT__CACHE__MODE", "redis"),
        ("CONSENT__CACHE__REDIS_URL", redis_url.as_str()),
    ];

    let applied = run_cli(&store_url, &env, &["catalog", "apply", CATALOG]).await;
    assert_eq!(applied.code, Some(0), "{applied:?}");
    assert_no_secret("catalog apply", &format!("{applied:?}"));
    let migrated = run_cli(&store_url, &env, &["migrate"]).await;
    assert_no_secret("migrate", &format!("{migrated:?}"));
    let rotated = run_cli(&store_url, &env, &["cache", "rotate-namespace"]).await;
    assert_eq!(rotated.code, Some(0), "{rotated:?}");
    assert!(rotated.stdout.contains("cache namespace"), "{rotated:?}");
    assert_no_secret("cache rotate-namespace", &format!("{rotated:?}"));

    let (server, addr, logs) = serve(&env).await;
    let client = ConsentClient::connect(format!("http://{addr}"))
        .await
        .unwrap_or_else(|e| fail("connect", e));
    assert_eq!(
        record_and_check(&client, "caller-1").await,
        [tonic::Code::Ok, tonic::Code::Ok]
    );

    // Cache faults: Redis gone; the service keeps answering from the ledger and logs why.
    redis.kill().await.unwrap_or_else(|e| fail("kill redis", e));
    for subject in ["caller-1", "caller-2"] {
        assert_eq!(
            record_and_check(&client, subject).await,
            [tonic::Code::Ok, tonic::Code::Ok]
        );
    }

    // Store faults: every session of its database terminated under it.
    let terminated = Command::new("psql")
        .arg(&admin)
        .arg("-c")
        .arg(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .stdout(Stdio::null())
        .status()
        .await
        .unwrap_or_else(|e| fail("psql", e));
    assert!(terminated.success(), "terminate the database's sessions");
    // Whatever each call answers (the pool reconnects), it is logged without secrets.
    for subject in ["caller-3", "caller-4", "caller-5"] {
        record_and_check(&client, subject).await;
    }
    assert_eq!(
        terminate(server).await.code(),
        Some(0),
        "consentd exits cleanly"
    );
    let logs = logs.lock().map(|l| l.clone()).unwrap_or_default();
    assert!(
        logs.contains("effective configuration") && logs.contains("***"),
        "the start logs its configuration, redacted:\n{logs}"
    );
    assert!(
        logs.contains("cache unavailable"),
        "the cache faults were logged:\n{logs}"
    );
    assert_no_secret("the server log", &logs);

    // Commands that cannot connect say where they tried, without the password.
    let unreachable_store = format!(
        "postgres://postgres:{PG_SECRET}@127.0.0.1:{}/nowhere",
        free_port()
    );
    let failed = run_cli(&unreachable_store, &[], &["migrate"]).await;
    assert_ne!(failed.code, Some(0));
    assert!(failed.stderr.contains("***"), "{failed:?}");
    assert_no_secret("a failed migrate", &format!("{failed:?}"));
    // Passwords a strict URL parser would cut short, and a URL missing its `//`.
    for url in [
        format!(
            "postgres://postgres:{PG_SECRET}#x@127.0.0.1:{}/nowhere",
            free_port()
        ),
        format!(
            "postgres://postgres:{PG_SECRET}?x@127.0.0.1:{}/nowhere",
            free_port()
        ),
        format!("postgres:{PG_SECRET}@127.0.0.1:{}/nowhere", free_port()),
    ] {
        let failed = run_cli(&url, &[], &["migrate"]).await;
        assert_ne!(failed.code, Some(0), "{failed:?}");
        assert_no_secret("a failed migrate", &format!("{failed:?}"));
    }
    // A parameter the driver would ignore (and log with its value) is refused, unnamed.
    let ignored = run_cli(&format!("{url}?sslpassword={PG_SECRET}"), &[], &["migrate"]).await;
    assert_ne!(ignored.code, Some(0));
    assert!(ignored.stderr.contains("does not support"), "{ignored:?}");
    assert_no_secret("a refused store URL", &format!("{ignored:?}"));
    let wrong_redis = format!("redis://:{REDIS_SECRET}@127.0.0.1:{}", free_port());
    let failed = run_cli(
        &store_url,
        &[
            ("CONSENT__CACHE__MODE", "redis"),
            ("CONSENT__CACHE__REDIS_URL", wrong_redis.as_str()),
        ],
        &["verify"],
    )
    .await;
    assert_ne!(failed.code, Some(0));
    assert_no_secret("a failed verify", &format!("{failed:?}"));

    drop_scratch_database(&admin, &name)
        .await
        .unwrap_or_else(|e| fail("drop scratch database", e));
}
