//! `consentd cache rotate-namespace` changes an existing ledger's cache namespace and
//! refuses a path where there is no ledger (after a restore, a mistyped path must not look
//! like success).

mod common;

use common::{fail, run_cli};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_namespace_changes_an_existing_ledger_only() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail("tempdir", e));
    let missing = dir.path().join("typo").join("consent.db");
    let missing_url = format!("sqlite://{}", missing.display());
    let refused = run_cli(&missing_url, &[], &["cache", "rotate-namespace"]).await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(refused.stderr.contains("no SQLite ledger"), "{refused:?}");
    assert!(!missing.exists(), "no database was created");
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap_or_else(|e| fail("empty file", e));
    let on_empty = run_cli(
        &format!("sqlite://{}", empty.display()),
        &[],
        &["cache", "rotate-namespace"],
    )
    .await;
    assert_eq!(on_empty.code, Some(1), "{on_empty:?}");
    assert_eq!(
        std::fs::metadata(&empty).map(|m| m.len()).ok(),
        Some(0),
        "an empty file is left as it was"
    );

    let url = format!("sqlite://{}/consent.db", dir.path().display());
    let migrated = run_cli(&url, &[], &["migrate"]).await;
    assert_eq!(migrated.code, Some(0), "{migrated:?}");
    let first = run_cli(&url, &[], &["cache", "rotate-namespace"]).await;
    assert_eq!(first.code, Some(0), "{first:?}");
    let second = run_cli(&url, &[], &["cache", "rotate-namespace"]).await;
    assert_eq!(second.code, Some(0), "{second:?}");
    // Each run names the namespace it replaced: the second starts from the first's result.
    let new_of = |out: &str| {
        out.split(" to ")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .map(str::to_owned)
    };
    let first_new = new_of(&first.stdout).unwrap_or_else(|| fail("parse", &first.stdout));
    assert!(
        second.stdout.contains(&format!("from {first_new} to ")),
        "{first:?} {second:?}"
    );
}
