//! Helpers for tests that run the real `consentd` binary.

#![allow(dead_code)] // each test file uses a different subset

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The binary under test.
pub const CONSENTD: &str = env!("CARGO_BIN_EXE_consentd");
/// The seed catalogue.
pub const CATALOG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/catalog/callnex.toml"
);
/// A safety net against a hung child, never an assertion on speed.
const STARTUP_LIMIT: Duration = Duration::from_secs(120);

/// Panics with context.
pub fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    panic!("{what}: {e}")
}

/// What a finished `consentd` command printed.
#[derive(Debug)]
pub struct Output {
    /// Exit code.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

fn command(store_url: &str, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(CONSENTD);
    cmd.args(["--store-url", store_url])
        .env("CONSENT__LOG__LEVEL", "warn")
        .env_remove("CONSENT__SERVER__LISTEN")
        .env_remove("CONSENT__AUTH__MODE")
        // Tests run side by side: each server's probe and metrics listener on a free port.
        .env("CONSENT__HTTP__LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied())
        .kill_on_drop(true);
    cmd
}

/// Runs `consentd ARGS` against `store_url` to completion.
pub async fn run_cli(store_url: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    let out = command(store_url, env)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| fail("run consentd", e));
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Starts `consentd serve` on a free loopback port; returns the child and its address,
/// read from its "listening on" line (no sleeping).
pub async fn start(store_url: &str, env: &[(&str, &str)]) -> (Child, String) {
    let running = start_with(store_url, env, &[], Stdio::inherit()).await;
    (running.child, running.addr)
}

/// A `consentd serve` started by [`start_with`].
#[derive(Debug)]
pub struct Running {
    /// The process.
    pub child: Child,
    /// The gRPC address.
    pub addr: String,
    /// The probe and metrics address (`http.listen`).
    pub http_addr: String,
}

/// Starts `consentd FLAGS serve` with `env`, its log going to `stderr`; both addresses are
/// read from its stdout (no sleeping).
pub async fn start_with(
    store_url: &str,
    env: &[(&str, &str)],
    flags: &[&str],
    stderr: Stdio,
) -> Running {
    let mut child = command(store_url, env)
        .args(flags)
        .args(["--listen", "127.0.0.1:0", "serve"])
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| fail("spawn consentd", e));
    let stdout = child
        .stdout
        .take()
        .unwrap_or_else(|| fail("stdout", "not piped"));
    let mut lines = BufReader::new(stdout).lines();
    let (addr, http_addr) = tokio::time::timeout(STARTUP_LIMIT, async {
        let mut http_addr = String::new();
        while let Some(line) = lines
            .next_line()
            .await
            .unwrap_or_else(|e| fail("read stdout", e))
        {
            if let Some(addr) = line.strip_prefix("consentd http listening on ") {
                http_addr = addr.to_owned();
            }
            if let Some(addr) = line.strip_prefix("consentd listening on ") {
                return (addr.to_owned(), http_addr);
            }
        }
        fail("consentd", "exited before listening")
    })
    .await
    .unwrap_or_else(|e| fail("consentd did not start", e));
    Running {
        child,
        addr,
        http_addr,
    }
}

/// `GET path` on `addr` over HTTP/1.1: the status code and the body.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| fail("connect to the HTTP listener", e));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| fail("send the HTTP request", e));
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .unwrap_or_else(|e| fail("read the HTTP answer", e));
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| fail("HTTP status line", head));
    (status, body.to_owned())
}

/// Sends SIGTERM and waits for the exit.
pub async fn terminate(mut child: Child) -> ExitStatus {
    let pid = child
        .id()
        .unwrap_or_else(|| fail("pid", "child already exited"));
    let term = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap_or_else(|e| fail("kill -TERM", e));
    assert!(term.success());
    child.wait().await.unwrap_or_else(|e| fail("wait", e))
}
