//! API keys, scopes and tenants, end to end with `auth.mode = api_key`, on every backend.

use std::time::Duration;

use consent_client::pb::{Channel, Decision, Reason};
use consent_client::{ConsentClient, pb};
use consent_core::Timestamp;
use consent_core::access::{KEY_RANDOM_BYTES, Scope, issue_key};
use consent_e2e::RawChecks;
use consent_e2e::{
    TestServer, apply_seed_catalog, apply_seed_retention, backends_with, days_ago, record,
};
use consent_server::auth::METHOD_SCOPES;
use consent_server::config::AuthMode;
use consent_server::server::ServerSettings;
use consent_store::AccessStore;
use tonic::Code;

fn api_key_settings(key_cache_ttl: Duration) -> ServerSettings {
    ServerSettings {
        key_cache_ttl,
        ..ServerSettings::with_auth(AuthMode::ApiKey)
    }
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

fn check(subject: &str, purpose: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        subject_id: subject.into(),
        purpose_id: purpose.into(),
        ..Default::default()
    }
}

async fn check_code(client: &ConsentClient) -> Code {
    match client.check_raw("s", "analytics").await {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_authenticate_and_their_lifecycle_is_enforced() {
    for server in backends_with(api_key_settings(Duration::from_secs(60))).await {
        let admin = server.client_for("acme", Scope::ALL).await;
        apply_seed_catalog(&admin).await;
        assert_eq!(check_code(&admin).await, Code::Ok, "[{}]", server.backend);

        // No key, a malformed key, an unknown key: UNAUTHENTICATED.
        assert_eq!(check_code(&server.client).await, Code::Unauthenticated);
        let malformed = server
            .client
            .with_api_key("not-a-key")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(check_code(&malformed).await, Code::Unauthenticated);
        let unknown = format!("ck_{}_{}", "ab".repeat(8), "cd".repeat(32));
        let unknown = server
            .client
            .with_api_key(&unknown)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(check_code(&unknown).await, Code::Unauthenticated);
        // Right id, wrong secret.
        let token = server.create_key("acme", &[Scope::ConsentRead], None).await;
        let forged = format!("{}{}", &token[..token.len() - 64], "0".repeat(64));
        let forged = server
            .client
            .with_api_key(&forged)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(check_code(&forged).await, Code::Unauthenticated);
        // Health needs no key.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
            .unwrap_or_else(|e| panic!("{e}"))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        assert_eq!(
            code(
                health
                    .check(tonic_health::pb::HealthCheckRequest::default())
                    .await
            ),
            Code::Ok
        );

        // An expired key: issued two hours ago for one hour.
        let mut random = [0u8; KEY_RANDOM_BYTES];
        getrandom::fill(&mut random).unwrap_or_else(|e| panic!("{e}"));
        let two_hours_ago = Timestamp(Timestamp::now().as_micros() - 7_200_000_000);
        let (expired, token) = issue_key(
            "acme",
            "old",
            vec![Scope::ConsentRead],
            two_hours_ago,
            Some(3600),
            &random,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        server
            .store
            .create_api_key(&expired)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let expired_client = server
            .client
            .with_api_key(&token)
            .unwrap_or_else(|e| panic!("{e}"));
        let status = expired_client.check_raw("s", "analytics").await.err();
        assert_eq!(
            status.as_ref().map(tonic::Status::code),
            Some(Code::Unauthenticated)
        );
        assert!(status.is_some_and(|s| s.message().contains("expired")));

        // Revoked through the API: refused at once on this replica, though it was cached.
        let reader_token = server.create_key("acme", &[Scope::ConsentRead], None).await;
        let reader = server
            .client
            .with_api_key(&reader_token)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(check_code(&reader).await, Code::Ok);
        let reader_id = reader_token[3..19].to_owned();
        let revoked = admin
            .admin()
            .revoke_api_key(pb::RevokeApiKeyRequest {
                key_id: reader_id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_inner();
        assert!(revoked.api_key.is_some_and(|k| k.revoked_at.is_some()));
        let status = reader.check_raw("s", "analytics").await.err();
        assert_eq!(
            status.as_ref().map(tonic::Status::code),
            Some(Code::Unauthenticated)
        );
        assert!(status.is_some_and(|s| s.message().contains("revoked")));

        // Keys created through the API work; the secret is never listed.
        let created = admin
            .admin()
            .create_api_key(pb::CreateApiKeyRequest {
                name: "pipeline".into(),
                scopes: vec!["consent:read".into()],
                expires_in: Some(prost_types::Duration {
                    seconds: 86_400,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_inner();
        let pipeline = server
            .client
            .with_api_key(&created.key)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(check_code(&pipeline).await, Code::Ok);
        let listed = admin
            .admin()
            .list_api_keys(pb::ListApiKeysRequest {})
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_inner();
        assert!(
            listed
                .api_keys
                .iter()
                .any(|k| k.name == "pipeline" && k.expires_at.is_some())
        );
        let secret = &created.key[20..];
        assert!(
            !format!("{listed:?}").contains(secret),
            "listing never shows a secret"
        );
        let bad_scope = admin
            .admin()
            .create_api_key(pb::CreateApiKeyRequest {
                scopes: vec!["everything".into()],
                ..Default::default()
            })
            .await
            .err();
        assert_eq!(bad_scope.map(|s| s.code()), Some(Code::InvalidArgument));
        server.stop().await;
    }
}

/// With a zero cache TTL, a key revoked elsewhere (here: in the store directly, as another
/// replica or the CLI would) stops working on the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_elsewhere_is_bounded_by_the_cache_ttl() {
    let server = TestServer::sqlite_with(api_key_settings(Duration::ZERO)).await;
    let admin = server.client_for("acme", Scope::ALL).await;
    apply_seed_catalog(&admin).await;
    let token = server.create_key("acme", &[Scope::ConsentRead], None).await;
    let reader = server
        .client
        .with_api_key(&token)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(check_code(&reader).await, Code::Ok);
    server
        .store
        .revoke_api_key("acme", &token[3..19], Timestamp::now())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(check_code(&reader).await, Code::Unauthenticated);
    server.stop().await;
}

/// Tenant B's key neither sees nor changes tenant A's purposes, subjects, events or keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_cannot_read_or_change_another() {
    for server in backends_with(api_key_settings(Duration::from_secs(60))).await {
        let a = server.client_for("tenant-a", Scope::ALL).await;
        let b = server.client_for("tenant-b", Scope::ALL).await;
        apply_seed_catalog(&a).await;
        let written = a
            .consent()
            .record_consent(record(
                "+3247000",
                &[("call_recording", Decision::Granted)],
                Channel::Voice,
            ))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_inner();
        let a_key_id = written.events[0].actor_key_id.clone();
        assert_eq!(
            a_key_id.len(),
            16,
            "the event records the key that wrote it"
        );

        // B sees nothing of A.
        let purpose = b
            .catalog()
            .get_purpose(pb::GetPurposeRequest {
                id: "call_recording".into(),
            })
            .await;
        assert_eq!(code(purpose), Code::NotFound);
        let purposes = b.catalog().list_purposes(pb::ListPurposesRequest {}).await;
        assert!(purposes.is_ok_and(|r| r.into_inner().purposes.is_empty()));
        assert_eq!(
            b.check_raw("+3247000", "call_recording")
                .await
                .err()
                .map(|s| s.code()),
            Some(Code::NotFound)
        );
        let events = b
            .consent()
            .list_events(pb::ListEventsRequest::default())
            .await;
        assert!(events.is_ok_and(|r| r.into_inner().events.is_empty()));
        let state = b
            .consent()
            .get_subject_state(pb::GetSubjectStateRequest {
                subject_id: "+3247000".into(),
                ..Default::default()
            })
            .await;
        assert!(state.is_ok_and(|r| r.into_inner().purposes.is_empty()));
        let verify = b.admin().verify_ledger(pb::VerifyLedgerRequest {}).await;
        assert!(verify.is_ok_and(|r| r.into_inner().events_checked == 0));
        let keys = b.admin().list_api_keys(pb::ListApiKeysRequest {}).await;
        assert!(keys.is_ok_and(|r| {
            r.into_inner()
                .api_keys
                .iter()
                .all(|k| k.tenant_id == "tenant-b")
        }));

        // B cannot change A: its writes land in its own ledger or fail.
        let b_write = b
            .consent()
            .record_consent(record(
                "+3247000",
                &[("call_recording", Decision::Denied)],
                Channel::Web,
            ))
            .await;
        assert_eq!(
            code(b_write),
            Code::FailedPrecondition,
            "B has no catalogue of its own yet"
        );
        apply_seed_catalog(&b).await;
        b.consent()
            .record_consent(record(
                "+3247000",
                &[("call_recording", Decision::Denied)],
                Channel::Web,
            ))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            b.check_raw("+3247000", "call_recording")
                .await
                .map(|c| c.reason())
                .ok(),
            Some(Reason::Denied)
        );
        let a_answer = a.check_raw("+3247000", "call_recording").await;
        assert_eq!(
            a_answer.map(|c| c.reason()).ok(),
            Some(Reason::Granted),
            "A's consent is untouched"
        );
        let revoke = b
            .admin()
            .revoke_api_key(pb::RevokeApiKeyRequest {
                key_id: a_key_id.clone(),
            })
            .await;
        assert_eq!(code(revoke), Code::NotFound);
        assert_eq!(check_code(&a).await, Code::Ok, "A's key still works");
        let foreign = b
            .admin()
            .create_api_key(pb::CreateApiKeyRequest {
                tenant_id: "tenant-a".into(),
                scopes: vec!["admin".into()],
                ..Default::default()
            })
            .await;
        assert_eq!(code(foreign), Code::PermissionDenied);
        let a_events = a
            .consent()
            .list_events(pb::ListEventsRequest::default())
            .await;
        assert!(a_events.is_ok_and(|r| r.into_inner().events.len() == 1));

        // Retention: B neither sees nor touches A's items and holds.
        apply_seed_retention(&server, "tenant-a").await;
        let registered = a
            .retention()
            .register_data_item(pb::RegisterDataItemRequest {
                item_id: "rec-a".into(),
                subject_id: "+3247000".into(),
                data_category: "call_recording".into(),
                created_at: Some(days_ago(1)),
                ..Default::default()
            })
            .await;
        assert_eq!(code(registered), Code::Ok);
        let hold = a
            .retention()
            .set_legal_hold(pb::SetLegalHoldRequest {
                scope: Some(pb::set_legal_hold_request::Scope::ItemId("rec-a".into())),
                reason: "litigation".into(),
                until: None,
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_inner()
            .hold
            .unwrap_or_default();
        let b_get = b
            .retention()
            .get_data_item(pb::GetDataItemRequest {
                item_id: "rec-a".into(),
            })
            .await;
        assert_eq!(code(b_get), Code::NotFound);
        let b_attest = b
            .retention()
            .attest_deletion(pb::AttestDeletionRequest {
                item_id: "rec-a".into(),
                method: "rm".into(),
                deleted_at: Some(days_ago(0)),
            })
            .await;
        assert_eq!(code(b_attest), Code::NotFound);
        let b_release = b
            .retention()
            .release_legal_hold(pb::ReleaseLegalHoldRequest {
                hold_id: hold.hold_id.clone(),
            })
            .await;
        assert_eq!(code(b_release), Code::NotFound);
        let b_holds = b
            .retention()
            .list_legal_holds(pb::ListLegalHoldsRequest::default())
            .await;
        assert!(b_holds.is_ok_and(|r| r.into_inner().holds.is_empty()));
        let a_holds = a
            .retention()
            .list_legal_holds(pb::ListLegalHoldsRequest::default())
            .await;
        assert!(a_holds.is_ok_and(|r| r.into_inner().holds.len() == 1));
        server.stop().await;
    }
}

/// Calls `method` with a minimal request and returns the status code.
async fn call(client: &ConsentClient, method: &str) -> Code {
    let (mut consent, mut catalog, mut admin) =
        (client.consent(), client.catalog(), client.admin());
    let mut retention = client.retention();
    let mut rights = client.rights();
    let mut identities = client.identities();
    let subject = || "subject".to_string();
    let cookie = || {
        Some(pb::Identity {
            r#type: pb::IdentityType::Cookie.into(),
            value: "ck-1".into(),
        })
    };
    match method.rsplit('/').next().unwrap_or_default() {
        "RecordConsent" => code(
            consent
                .record_consent(record(
                    "s",
                    &[("analytics", Decision::Granted)],
                    Channel::Web,
                ))
                .await,
        ),
        "WithdrawConsent" => code(
            consent
                .withdraw_consent(pb::WithdrawConsentRequest {
                    subject_id: subject(),
                    channel: Channel::Web.into(),
                    ..Default::default()
                })
                .await,
        ),
        "Check" => code(consent.check(check("s", "analytics")).await),
        "CheckBatch" => code(
            consent
                .check_batch(pb::CheckBatchRequest {
                    checks: vec![check("s", "analytics")],
                    consistency: None,
                })
                .await,
        ),
        "GetSubjectState" => code(
            consent
                .get_subject_state(pb::GetSubjectStateRequest {
                    subject_id: subject(),
                    ..Default::default()
                })
                .await,
        ),
        "ListEvents" => code(consent.list_events(pb::ListEventsRequest::default()).await),
        "CheckStream" => code(
            consent
                .check_stream(futures::stream::iter(vec![
                    pb::CheckStreamRequest::default(),
                ]))
                .await,
        ),
        "Watch" => code(consent.watch(pb::WatchRequest::default()).await),
        "ExportSnapshot" => code(
            consent
                .export_snapshot(pb::ExportSnapshotRequest::default())
                .await,
        ),
        "UpsertPurpose" => code(
            catalog
                .upsert_purpose(pb::UpsertPurposeRequest { purpose: None })
                .await,
        ),
        "GetPurpose" => code(
            catalog
                .get_purpose(pb::GetPurposeRequest {
                    id: "analytics".into(),
                })
                .await,
        ),
        "ListPurposes" => code(catalog.list_purposes(pb::ListPurposesRequest {}).await),
        "UpsertVendor" => code(
            catalog
                .upsert_vendor(pb::UpsertVendorRequest { vendor: None })
                .await,
        ),
        "ListVendors" => code(catalog.list_vendors(pb::ListVendorsRequest {}).await),
        "PublishPolicyVersion" => code(
            catalog
                .publish_policy_version(pb::PublishPolicyVersionRequest {
                    policy_version: None,
                })
                .await,
        ),
        "GetPolicyVersion" => code(
            catalog
                .get_policy_version(pb::GetPolicyVersionRequest {
                    id: "2025-05".into(),
                })
                .await,
        ),
        "ListPolicyVersions" => code(
            catalog
                .list_policy_versions(pb::ListPolicyVersionsRequest {})
                .await,
        ),
        "SetRetentionRule" => code(
            retention
                .set_retention_rule(pb::SetRetentionRuleRequest::default())
                .await,
        ),
        "ListRetentionRules" => code(
            retention
                .list_retention_rules(pb::ListRetentionRulesRequest {})
                .await,
        ),
        "RegisterDataItem" => code(
            retention
                .register_data_item(pb::RegisterDataItemRequest::default())
                .await,
        ),
        "GetDataItem" => code(
            retention
                .get_data_item(pb::GetDataItemRequest {
                    item_id: "nope".into(),
                })
                .await,
        ),
        "UpdateAnchor" => code(
            retention
                .update_anchor(pb::UpdateAnchorRequest::default())
                .await,
        ),
        "SetLegalHold" => code(
            retention
                .set_legal_hold(pb::SetLegalHoldRequest::default())
                .await,
        ),
        "ReleaseLegalHold" => code(
            retention
                .release_legal_hold(pb::ReleaseLegalHoldRequest::default())
                .await,
        ),
        "ListLegalHolds" => code(
            retention
                .list_legal_holds(pb::ListLegalHoldsRequest::default())
                .await,
        ),
        "ListDueItems" => code(
            retention
                .list_due_items(pb::ListDueItemsRequest::default())
                .await,
        ),
        "AttestDeletion" => code(
            retention
                .attest_deletion(pb::AttestDeletionRequest::default())
                .await,
        ),
        "RestrictProcessing" => code(
            rights
                .restrict_processing(pb::RestrictProcessingRequest::default())
                .await,
        ),
        "LiftRestriction" => code(
            rights
                .lift_restriction(pb::LiftRestrictionRequest::default())
                .await,
        ),
        "Object" => code(rights.object(pb::ObjectRequest::default()).await),
        "WithdrawObjection" => code(
            rights
                .withdraw_objection(pb::WithdrawObjectionRequest::default())
                .await,
        ),
        "ExportSubject" => code(
            rights
                .export_subject(pb::ExportSubjectRequest {
                    subject_id: "s".into(),
                    ..Default::default()
                })
                .await,
        ),
        "SetGpc" => code(rights.set_gpc(pb::SetGpcRequest::default()).await),
        "EraseSubject" => code(
            rights
                .erase_subject(pb::EraseSubjectRequest::default())
                .await,
        ),
        "LinkIdentity" => code(
            identities
                .link_identity(pb::LinkIdentityRequest {
                    subject_id: subject(),
                    identity: cookie(),
                    ..Default::default()
                })
                .await,
        ),
        "UnlinkIdentity" => code(
            identities
                .unlink_identity(pb::UnlinkIdentityRequest {
                    subject_id: subject(),
                    identity: cookie(),
                    evidence: None,
                })
                .await,
        ),
        "ResolveIdentity" => code(
            identities
                .resolve_identity(pb::ResolveIdentityRequest { identity: cookie() })
                .await,
        ),
        "ListIdentities" => code(
            identities
                .list_identities(pb::ListIdentitiesRequest {
                    subject_id: subject(),
                })
                .await,
        ),
        "VerifyLedger" => code(admin.verify_ledger(pb::VerifyLedgerRequest {}).await),
        "CreateApiKey" => code(
            admin
                .create_api_key(pb::CreateApiKeyRequest::default())
                .await,
        ),
        "ListApiKeys" => code(admin.list_api_keys(pb::ListApiKeysRequest {}).await),
        "RevokeApiKey" => code(
            admin
                .revoke_api_key(pb::RevokeApiKeyRequest {
                    key_id: String::new(),
                })
                .await,
        ),
        other => panic!("add a call for {other} to this table (and a scope to METHOD_SCOPES)"),
    }
}

/// Every RPC with a key of every single scope: PERMISSION_DENIED unless the key holds the
/// scope the method requires. The table comes from the server, so a new RPC is covered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_requires_its_scope() {
    let server = TestServer::sqlite_with(api_key_settings(Duration::from_secs(60))).await;
    let admin = server.client_for("acme", Scope::ALL).await;
    apply_seed_catalog(&admin).await;
    let mut clients = Vec::new();
    for scope in Scope::ALL {
        clients.push((*scope, server.client_for("acme", &[*scope]).await));
    }
    for (method, required) in METHOD_SCOPES {
        for (scope, client) in &clients {
            let got = call(client, method).await;
            if scope == required {
                assert!(
                    !matches!(got, Code::PermissionDenied | Code::Unauthenticated),
                    "{method} with {scope}: {got:?}"
                );
            } else {
                assert_eq!(got, Code::PermissionDenied, "{method} with only {scope}");
            }
        }
    }
    server.stop().await;
}

/// Guessing keys gets nowhere fast: after `limits.auth_failures_per_minute` failed
/// authentications from one address, requests from it that need a key lookup are
/// RESOURCE_EXHAUSTED with a retry delay; a key verified lately keeps working from memory
/// (clients behind one NAT or ingress share an address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_rate_limited_per_address() {
    let mut settings = api_key_settings(Duration::from_secs(60));
    settings.limits.auth_failures_per_minute = 3;
    let server = TestServer::sqlite_with(settings).await;
    let valid = server.client_for("acme", &[Scope::ConsentRead]).await;
    assert_eq!(
        check_code(&valid).await,
        Code::NotFound,
        "a valid key works"
    );
    let not_yet_used = server.client_for("acme", &[Scope::ConsentRead]).await;
    let mut answers = Vec::new();
    // Bounded: the limit is 3 a minute. Each guess is a new id (one lookup each).
    for i in 0..6 {
        let guess = server
            .client
            .with_api_key(&format!("ck_{i:016x}_{}", "0".repeat(64)))
            .unwrap_or_else(|e| panic!("{e}"));
        answers.push(check_code(&guess).await);
    }
    assert_eq!(&answers[..3], [Code::Unauthenticated; 3], "{answers:?}");
    assert_eq!(
        answers.last(),
        Some(&Code::ResourceExhausted),
        "{answers:?}"
    );
    assert_eq!(
        check_code(&valid).await,
        Code::NotFound,
        "a key verified lately still works from the same address"
    );
    let refused = not_yet_used.check_raw("s", "analytics").await.err();
    assert_eq!(
        refused.as_ref().map(tonic::Status::code),
        Some(Code::ResourceExhausted),
        "a key that needs a lookup waits"
    );
    let retry = refused.and_then(|s| {
        use tonic_types::StatusExt;
        s.get_details_retry_info().and_then(|r| r.retry_delay)
    });
    assert!(retry.is_some_and(|d| d > Duration::ZERO), "{retry:?}");
    server.stop().await;
}
