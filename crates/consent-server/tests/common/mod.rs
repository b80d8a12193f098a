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
    cmd.args(["--store-url", store_url, "--log-level", "warn"])
        .env_remove("CONSENT__SERVER__LISTEN")
        .env_remove("CONSENT__AUTH__MODE")
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
    let mut child = command(store_url, env)
        .args(["--listen", "127.0.0.1:0", "serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
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
