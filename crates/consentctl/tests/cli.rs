//! `consentctl` against a real `consentd` (loopback, fresh SQLite): a day of operator work
//! with `--output json`, compared with `tests/golden/session.json` after the values that
//! differ run to run (ids, hashes, times, keys) are replaced by placeholders; exit codes
//! as documented; settings that cannot work refused before anything is sent.
//!
//! `UPDATE_GOLDEN=1 cargo test -p consentctl` rewrites the golden file (review the diff).

use std::process::Command;

use consent_core::access::Scope;
use consent_e2e::TestServer;
use consent_server::config::AuthMode;
use consent_server::server::ServerSettings;
use serde_json::{Value, json};

/// Runs consentctl with `args` against `url`; returns (exit code, stdout lines as JSON).
fn consentctl(url: &str, args: &[&str]) -> (i32, Vec<Value>, String) {
    consentctl_as(url, None, args)
}

/// As [`consentctl`], with `CONSENT_API_KEY` set to `key`.
fn consentctl_as(url: &str, key: Option<&str>, args: &[&str]) -> (i32, Vec<Value>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_consentctl"));
    match key {
        Some(key) => command.env("CONSENT_API_KEY", key),
        None => command.env_remove("CONSENT_API_KEY"),
    };
    let out = command
        .env("CONSENT_URL", url)
        .args(["--output", "json"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run consentctl: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines = stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{args:?}: `{l}` is not JSON: {e}"))
        })
        .collect();
    (
        out.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Replaces what differs from run to run by a placeholder naming its kind.
fn normalize(value: Value) -> Value {
    match value {
        Value::String(s) => Value::String(placeholder(&s).unwrap_or(s)),
        Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, normalize(v))).collect())
        }
        other => other,
    }
}

fn placeholder(s: &str) -> Option<String> {
    let hex = |t: &str, n: usize| t.len() == n && t.bytes().all(|b| b.is_ascii_hexdigit());
    let uuid = |t: &str| {
        t.len() == 36 && t.split('-').map(str::len).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
    };
    if uuid(s) {
        return Some("<uuid>".into());
    }
    if hex(s, 64) {
        return Some("<sha256>".into());
    }
    for prefix in ["erased:", "alias:"] {
        if let Some(rest) = s.strip_prefix(prefix)
            && hex(rest, 64)
        {
            return Some(format!("{prefix}<sha256>"));
        }
    }
    if s.starts_with("ck_") {
        return Some("<api key>".into());
    }
    if hex(s, 16) {
        return Some("<key id>".into());
    }
    // RFC 3339 times: 2026-12-03T21:36:23.556703Z
    if s.len() >= 20
        && s.as_bytes().get(4) == Some(&b'-')
        && s.as_bytes().get(10) == Some(&b'T')
        && s.ends_with('Z')
    {
        return Some("<time>".into());
    }
    // JSON documents inside strings (ExportSubject): normalized inside.
    if s.starts_with('{')
        && let Ok(inner) = serde_json::from_str::<Value>(s)
    {
        return Some(normalize(inner).to_string());
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_session_matches_the_golden_output() {
    let server = TestServer::sqlite_with(ServerSettings::with_auth(AuthMode::ApiKey)).await;
    let operator = server.create_key("acme", Scope::ALL, None).await;
    let url = format!("http://{}", server.addr);
    let catalog = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/catalog/callnex.toml"
    );
    let caller = "+32470000001";
    let steps: Vec<Vec<&str>> = vec![
        vec!["catalog", "apply", catalog],
        vec!["purposes", "list"],
        vec![
            "consent",
            "record",
            caller,
            "--grant",
            "call_recording",
            "--deny",
            "marketing_communications",
            "--channel",
            "voice",
            "--call-id",
            "call-42",
            "--idempotency-key",
            "call-42",
        ],
        vec!["consent", "check", caller, "call_recording"],
        vec!["consent", "check", caller, "marketing_communications"],
        vec!["consent", "withdraw", caller, "--purpose", "call_recording"],
        vec!["consent", "history", caller],
        vec!["subject", "state", caller],
        vec![
            "snapshot",
            "--purpose",
            "call_recording",
            "--purpose",
            "analytics",
        ],
        vec!["watch", "--from", "0", "--until-revision", "3"],
        vec!["verify"],
        vec![
            "keys",
            "create",
            "--name",
            "ops",
            "--scopes",
            "consent:read,admin",
        ],
        vec!["keys", "list"],
        vec!["identity", "link", "acct-7781", "cookie:c-5f2a9c"],
        vec![
            "identity",
            "link",
            "acct-7781",
            "phone:+32 470 12 34 56",
            "--call-id",
            "call-43",
        ],
        vec!["identity", "link", "acct-7781", "phone:0032470123456"],
        vec!["identity", "resolve", "phone:+32470123456"],
        vec!["identity", "list", "acct-7781"],
        vec!["identity", "link", "acct-other", "cookie:c-5f2a9c"],
        vec!["identity", "link", "acct-7781", "phone:0470 12 34 56"],
        vec!["identity", "link", "acct-7781", "fax:123"],
        vec!["identity", "unlink", "acct-7781", "cookie:c-5f2a9c"],
        vec!["identity", "link", "anon-77", "cookie:c-anon-77"],
        vec![
            "identity",
            "link",
            "acct-7781",
            "cookie:c-anon-77",
            "--merge",
        ],
        vec![
            "identity",
            "link",
            "acct-7781",
            "cookie:c-new",
            "--carry-choices",
        ],
        vec!["subject", "export", caller],
        vec!["subject", "erase", caller, "--reason", "request 1"],
        vec!["consent", "check", "", "analytics"],
        vec!["consent", "check", caller, "no_such_purpose"],
        vec!["items", "due"],
        vec!["items", "attest", "no-such-item"],
    ];
    // Without a key, the service refuses (exit 3) and says why.
    let (code, _, stderr) = consentctl(&url, &["verify"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("unauthenticated"), "{stderr}");
    let mut session = Vec::new();
    for args in &steps {
        let (code, lines, stderr) = consentctl_as(&url, Some(&operator), args);
        let shown: Vec<&str> = args
            .iter()
            .map(|a| {
                if *a == catalog {
                    "examples/catalog/callnex.toml"
                } else {
                    a
                }
            })
            .collect();
        session.push(json!({
            "args": shown,
            "exit": code,
            "stdout": normalize(Value::Array(lines)),
            "stderr": stderr.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>(),
        }));
    }
    let got = serde_json::to_string_pretty(&Value::Array(session))
        .unwrap_or_else(|e| panic!("print: {e}"));
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/session.json");
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::write(path, format!("{got}\n")).unwrap_or_else(|e| panic!("write {path}: {e}"));
    }
    let want = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    assert_eq!(
        got.trim_end(),
        want.trim_end(),
        "consentctl's output changed: see {path}"
    );
    server.stop().await;
}

#[test]
fn settings_that_cannot_work_are_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate").unwrap_or_else(|e| panic!("write: {e}"));
    let ca = ca.to_string_lossy().into_owned();
    for (url, extra, says) in [
        ("https://127.0.0.1:1", vec![], "needs --tls-ca"),
        (
            "http://127.0.0.1:1",
            vec!["--tls-ca", ca.as_str()],
            "need an https:// URL",
        ),
        ("127.0.0.1:1", vec![], "must start with http"),
    ] {
        let mut args = extra.clone();
        args.push("verify");
        let (code, _, stderr) = consentctl(url, &args);
        assert_eq!(code, 2, "{url} {extra:?}: {stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
}

#[test]
fn an_unreachable_service_exits_4() {
    // Port 1 on loopback: nothing listens (connection refused), retried, then given up.
    let (code, _, stderr) = consentctl("http://127.0.0.1:1", &["--timeout-secs", "5", "verify"]);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("unavailable"), "{stderr}");
}
