//! Out of file descriptors: `accept` fails with EMFILE while clients keep connecting. The
//! accept loop backs off instead of spinning on the error (it spun at about 90% of a core),
//! and serves again once descriptors are free. The real binary runs with a small
//! descriptor limit (`ulimit -n`); its CPU time over a two-second hold shows the spin or its
//! absence (a resource measurement, not a timing claim on the service).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{CONSENTD, fail, terminate};
use consent_client::ConsentClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// User plus system CPU time of a process so far, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_backs_off_and_recovers() {
    if !std::path::Path::new("/proc/self/stat").exists() {
        eprintln!("notice: skipping, no /proc on this system");
        return;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail("tempdir", e));
    let url = format!("sqlite://{}/consent.db", dir.path().display());
    let script = format!(
        "ulimit -n 64 && exec {CONSENTD} --store-url '{url}' --log-level warn --listen 127.0.0.1:0 serve"
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .env_remove("CONSENT__SERVER__LISTEN")
        .env_remove("CONSENT__AUTH__MODE")
        // Any free port: 9090 (the default) may be taken by another consentd on the machine.
        .env("CONSENT__HTTP__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| fail("spawn", e));
    let pid = child.id().unwrap_or_else(|| fail("pid", "none"));
    let stdout = child
        .stdout
        .take()
        .unwrap_or_else(|| fail("stdout", "none"));
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = line.strip_prefix("consentd listening on ") {
                return addr.to_owned();
            }
        }
        fail("consentd", "exited before listening")
    })
    .await
    .unwrap_or_else(|e| fail("start", e));
    let stderr = child
        .stderr
        .take()
        .unwrap_or_else(|| fail("stderr", "none"));
    let logs = tokio::spawn(async move {
        let mut text = String::new();
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });

    // More connections than the process has descriptors: accept starts failing.
    let mut held = Vec::new();
    for _ in 0..100 {
        if let Ok(socket) = tokio::net::TcpStream::connect(&addr).await {
            held.push(socket);
        }
    }
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_ticks(pid).saturating_sub(before);
    assert!(
        spent < 50,
        "the accept loop spent {spent} ticks of CPU in 2 s while out of descriptors"
    );
    drop(held);

    // Descriptors free again: a new client is served (bounded retries while it recovers).
    let mut served = false;
    for _ in 0..60 {
        if let Ok(client) = ConsentClient::connect(format!("http://{addr}")).await
            && client
                .check(consent_client::Check::new("s", "analytics"))
                .await
                .err()
                .is_some_and(|s| s.code() == tonic::Code::NotFound)
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(served, "served again once descriptors are free");
    assert_eq!(terminate(child).await.code(), Some(0));
    let logs = logs.await.unwrap_or_default();
    assert!(
        logs.contains("accept failed; backing off"),
        "the failure was logged once per episode:\n{logs}"
    );
}
