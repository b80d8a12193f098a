//! `consentd tenants` and `consentd keys` bootstrap a deployment with `auth.mode = api_key`
//! (set through the environment), and the printed key works over gRPC until revoked.

mod common;

use common::{CATALOG, fail, run_cli, start, terminate};
use consent_client::{ConsentClient, pb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_a_tenant_and_key_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail("tempdir", e));
    let url = format!("sqlite://{}/consent.db", dir.path().display());

    let created = run_cli(
        &url,
        &[],
        &["tenants", "create", "acme", "--display-name", "Acme Voice"],
    )
    .await;
    assert_eq!(created.code, Some(0), "{created:?}");
    let again = run_cli(&url, &[], &["tenants", "create", "acme"]).await;
    assert_eq!(again.code, Some(1));
    assert!(
        again.stderr.contains("tenant `acme` already exists"),
        "{again:?}"
    );
    let listed = run_cli(&url, &[], &["tenants", "list"]).await;
    assert!(listed.stdout.contains("acme\tAcme Voice"), "{listed:?}");

    let no_tenant = run_cli(
        &url,
        &[],
        &["keys", "create", "--tenant", "nope", "--scopes", "admin"],
    )
    .await;
    assert_eq!(no_tenant.code, Some(1));
    assert!(
        no_tenant.stderr.contains("tenant `nope` not found"),
        "{no_tenant:?}"
    );
    let bad_scope = run_cli(
        &url,
        &[],
        &[
            "keys",
            "create",
            "--tenant",
            "acme",
            "--scopes",
            "consent:read,all",
        ],
    )
    .await;
    assert_eq!(bad_scope.code, Some(1));
    assert!(
        bad_scope.stderr.contains("unknown scope `all`"),
        "{bad_scope:?}"
    );

    let key = run_cli(
        &url,
        &[],
        &[
            "keys",
            "create",
            "--tenant",
            "acme",
            "--scopes",
            "consent:read,catalog:write,admin",
            "--name",
            "ops",
            "--expires-in",
            "90d",
        ],
    )
    .await;
    assert_eq!(key.code, Some(0), "{key:?}");
    let token = key.stdout.trim().to_owned();
    assert!(
        token.starts_with("ck_") && token.len() == 3 + 16 + 1 + 64,
        "{token}"
    );
    assert!(key.stderr.contains("shown once"), "{key:?}");
    let key_id = token[3..19].to_owned();
    let listed = run_cli(&url, &[], &["keys", "list", "--tenant", "acme"]).await;
    assert!(
        listed.stdout.contains(&key_id) && listed.stdout.contains("expires"),
        "{listed:?}"
    );
    assert!(
        !listed.stdout.contains(&token[20..]),
        "the secret is never listed"
    );
    let applied = run_cli(
        &url,
        &[],
        &["catalog", "apply", CATALOG, "--tenant", "acme"],
    )
    .await;
    assert_eq!(applied.code, Some(0), "{applied:?}");

    let env = [
        ("CONSENT__AUTH__MODE", "api_key"),
        ("CONSENT__AUTH__KEY_CACHE_TTL_SECS", "0"),
    ];
    let (child, addr) = start(&url, &env).await;
    let anonymous = ConsentClient::connect(format!("http://{addr}"))
        .await
        .unwrap_or_else(|e| fail("connect", e));
    let status = anonymous
        .check(consent_client::Check::new("s", "analytics"))
        .await
        .err();
    assert_eq!(status.map(|s| s.code()), Some(tonic::Code::Unauthenticated));
    let ops = anonymous
        .with_api_key(&token)
        .unwrap_or_else(|e| fail("key", e));
    let answer = ops
        .check(consent_client::Check::new("s", "analytics"))
        .await
        .unwrap_or_else(|e| fail("check", e));
    assert_eq!(
        answer.reason(),
        pb::Reason::NoDecision,
        "the catalogue was applied to tenant acme"
    );
    let keys = ops
        .admin()
        .list_api_keys(pb::ListApiKeysRequest {})
        .await
        .unwrap_or_else(|e| fail("list keys", e))
        .into_inner();
    assert_eq!(keys.api_keys.len(), 1);
    assert_eq!(
        keys.api_keys[0].scopes,
        ["consent:read", "catalog:write", "admin"]
    );

    let revoked = run_cli(&url, &[], &["keys", "revoke", &key_id]).await;
    assert_eq!(revoked.code, Some(0), "{revoked:?}");
    let status = ops
        .check(consent_client::Check::new("s", "analytics"))
        .await
        .err();
    assert_eq!(
        status.map(|s| s.code()),
        Some(tonic::Code::Unauthenticated),
        "revoked from the CLI"
    );

    let stopped = terminate(child).await;
    assert!(stopped.success(), "{stopped}");
}
