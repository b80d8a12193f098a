//! IdentityService end to end on every backend: a person known by a cookie, a phone number
//! and an account is one subject for every consent RPC; identities are normalised, never
//! stolen from another subject, scoped to their tenant, dropped by an erasure, and phone
//! numbers and emails never reach the database in clear.

use std::time::Duration;

use consent_client::pb::{Channel, Decision, IdentityType, Reason};
use consent_client::{ConsentClient, pb};
use consent_core::access::Scope;
use consent_e2e::{
    RawChecks, TestServer, apply_seed_catalog, backends, backends_with, rejected_fields,
};
use consent_server::config::AuthMode;
use consent_server::server::ServerSettings;
use tonic::Code;

const ACCOUNT: &str = "acct-7781";
const COOKIE: &str = "ck_5f2a9c";
/// The phone number as the dialer writes it, and the same number written otherwise.
const PHONE: &str = "+32 470 12 34 56";
const PHONE_OTHERWISE: &str = "0032470123456";
const EMAIL: &str = "Marie.Dubois@Example.be";

fn ok<T>(r: Result<tonic::Response<T>, tonic::Status>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:?}")).into_inner()
}

fn identity(kind: IdentityType, value: &str) -> Option<pb::Identity> {
    Some(pb::Identity {
        r#type: kind.into(),
        value: value.into(),
    })
}

async fn link(
    client: &ConsentClient,
    subject: &str,
    kind: IdentityType,
    value: &str,
) -> Result<pb::LinkIdentityResponse, tonic::Status> {
    link_merging(client, subject, kind, value, false, false).await
}

/// A link that may merge (`merge`) or carry an unlinked identity's choices (`carry`).
async fn link_merging(
    client: &ConsentClient,
    subject: &str,
    kind: IdentityType,
    value: &str,
    merge: bool,
    carry_choices: bool,
) -> Result<pb::LinkIdentityResponse, tonic::Status> {
    client
        .identities()
        .link_identity(pb::LinkIdentityRequest {
            subject_id: subject.into(),
            identity: identity(kind, value),
            evidence: Some(pb::Evidence {
                call_id: "call-20261204-0042".into(),
                ..Default::default()
            }),
            merge,
            carry_choices,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn unlink(
    client: &ConsentClient,
    subject: &str,
    kind: IdentityType,
    value: &str,
) -> Result<pb::UnlinkIdentityResponse, tonic::Status> {
    client
        .identities()
        .unlink_identity(pb::UnlinkIdentityRequest {
            subject_id: subject.into(),
            identity: identity(kind, value),
            evidence: None,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The identities linked to `subject`.
async fn listed(client: &ConsentClient, subject: &str, what: &str) -> Vec<pb::LinkedIdentity> {
    ok(
        client
            .identities()
            .list_identities(pb::ListIdentitiesRequest {
                subject_id: subject.into(),
            })
            .await,
        what,
    )
    .identities
}

/// The status code of a call (`Ok(())` when it succeeded).
fn code<T>(result: Result<T, tonic::Status>) -> Result<(), Code> {
    result.map(|_| ()).map_err(|s| s.code())
}

async fn linked(
    client: &ConsentClient,
    subject: &str,
    kind: IdentityType,
    value: &str,
    what: &str,
) -> pb::LinkIdentityResponse {
    link(client, subject, kind, value)
        .await
        .unwrap_or_else(|e| panic!("{what}: link {value}: {e:?}"))
}

async fn check_by(
    client: &ConsentClient,
    kind: IdentityType,
    value: &str,
    purpose: &str,
) -> pb::CheckResponse {
    client
        .check_request_raw(pb::CheckRequest {
            identity: identity(kind, value),
            purpose_id: purpose.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("check {purpose} by {value}: {e:?}"))
}

async fn record_by(
    client: &ConsentClient,
    kind: IdentityType,
    value: &str,
    purpose: &str,
    decision: Decision,
) -> pb::RecordConsentResponse {
    ok(
        client
            .consent()
            .record_consent(pb::RecordConsentRequest {
                identity: identity(kind, value),
                decisions: vec![pb::PurposeDecision {
                    purpose_id: purpose.into(),
                    vendor_id: String::new(),
                    decision: decision.into(),
                }],
                channel: Channel::Voice.into(),
                ..Default::default()
            })
            .await,
        "record by identity",
    )
}

async fn resolve(
    client: &ConsentClient,
    kind: IdentityType,
    value: &str,
) -> pb::ResolveIdentityResponse {
    ok(
        client
            .identities()
            .resolve_identity(pb::ResolveIdentityRequest {
                identity: identity(kind, value),
            })
            .await,
        "resolve",
    )
}

/// The scenario: an operator links a cookie id and a phone number to an account,
/// records a voice consent by phone number, and a Check by the cookie id sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_consent_by_phone_number_is_seen_through_the_cookie_and_the_account() {
    for server in backends().await {
        let b = server.backend;
        let client = &server.client;
        apply_seed_catalog(client).await;
        let cookie = linked(client, ACCOUNT, IdentityType::Cookie, COOKIE, b).await;
        assert!(!cookie.already_linked, "{b}");
        let phone = linked(client, ACCOUNT, IdentityType::Phone, PHONE, b).await;
        assert_eq!(phone.revision, cookie.revision + 1, "{b}");
        let linked = phone.identity.unwrap_or_default();
        assert_eq!(linked.subject_id, ACCOUNT, "{b}");
        assert_eq!(
            linked.value, "",
            "{b}: a phone number is kept only as its hash"
        );
        assert_eq!(linked.alias_sha256.len(), 64, "{b}");

        let recorded = record_by(
            client,
            IdentityType::Phone,
            PHONE,
            "call_recording",
            Decision::Granted,
        )
        .await;
        assert_eq!(recorded.events[0].subject_id, ACCOUNT, "{b}");

        let by_cookie = check_by(client, IdentityType::Cookie, COOKIE, "call_recording").await;
        assert!(by_cookie.allowed, "{b}: {by_cookie:?}");
        assert_eq!(by_cookie.subject_id, ACCOUNT, "{b}");
        let by_phone = check_by(
            client,
            IdentityType::Phone,
            PHONE_OTHERWISE,
            "call_recording",
        )
        .await;
        assert!(by_phone.allowed, "{b}: {by_phone:?}");
        // The SDK's way: an identity wherever a subject id goes.
        let by_sdk = client
            .allowed(consent_client::identity::cookie(COOKIE), "call_recording")
            .await
            .unwrap_or_else(|e| panic!("{b}: {e}"));
        assert!(by_sdk, "{b}");
        let resolved_by_sdk = client
            .resolve_identity(pb::ResolveIdentityRequest {
                identity: Some(consent_client::identity::phone(PHONE_OTHERWISE)),
            })
            .await
            .unwrap_or_else(|e| panic!("{b}: {e}"));
        assert_eq!(resolved_by_sdk.subject_id, ACCOUNT, "{b}");
        let by_account = client
            .check_raw(ACCOUNT, "call_recording")
            .await
            .unwrap_or_else(|e| panic!("{b}: {e:?}"));
        assert!(by_account.allowed, "{b}");

        // A batch mixing ids and identities, answered in order.
        let batch = ok(
            client
                .consent()
                .check_batch(pb::CheckBatchRequest {
                    checks: vec![
                        pb::CheckRequest {
                            identity: identity(IdentityType::Phone, PHONE),
                            purpose_id: "call_recording".into(),
                            ..Default::default()
                        },
                        pb::CheckRequest {
                            subject_id: "someone-else".into(),
                            purpose_id: "call_recording".into(),
                            ..Default::default()
                        },
                    ],
                    consistency: None,
                })
                .await,
            b,
        );
        let answers: Vec<(String, bool)> = batch
            .results
            .iter()
            .map(|r| (r.subject_id.clone(), r.allowed))
            .collect();
        assert_eq!(
            answers,
            [
                (ACCOUNT.to_owned(), true),
                ("someone-else".to_owned(), false)
            ],
            "{b}"
        );

        // A withdrawal by cookie withdraws for the person.
        ok(
            client
                .consent()
                .withdraw_consent(pb::WithdrawConsentRequest {
                    identity: identity(IdentityType::Cookie, COOKIE),
                    purpose_ids: vec!["call_recording".into()],
                    channel: Channel::Web.into(),
                    ..Default::default()
                })
                .await,
            b,
        );
        let after = check_by(client, IdentityType::Phone, PHONE, "call_recording").await;
        assert_eq!(
            (after.allowed, after.reason()),
            (false, Reason::Withdrawn),
            "{b}"
        );

        // The state and history read by identity are the account's.
        let state = ok(
            client
                .consent()
                .get_subject_state(pb::GetSubjectStateRequest {
                    identity: identity(IdentityType::Phone, PHONE),
                    ..Default::default()
                })
                .await,
            b,
        );
        assert!(
            state.purposes.iter().all(|p| p.subject_id == ACCOUNT),
            "{b}"
        );
        let history = ok(
            client
                .consent()
                .list_events(pb::ListEventsRequest {
                    identity: identity(IdentityType::Cookie, COOKIE),
                    ..Default::default()
                })
                .await,
            b,
        );
        let kinds: Vec<pb::LedgerRecordKind> = history.records.iter().map(|r| r.kind()).collect();
        assert_eq!(
            kinds,
            [
                pb::LedgerRecordKind::IdentityLinked,
                pb::LedgerRecordKind::IdentityLinked
            ],
            "{b}"
        );
        assert_eq!(history.events.len(), 2, "{b}: the grant and the withdrawal");

        let shown: Vec<(IdentityType, String)> = listed(client, ACCOUNT, b)
            .await
            .iter()
            .map(|i| (i.r#type(), i.value.clone()))
            .collect();
        assert_eq!(
            shown,
            [
                (IdentityType::Cookie, COOKIE.to_owned()),
                (IdentityType::Phone, String::new())
            ],
            "{b}"
        );
        let resolved = resolve(client, IdentityType::Phone, PHONE_OTHERWISE).await;
        assert!(resolved.linked, "{b}");
        assert_eq!(resolved.subject_id, ACCOUNT, "{b}");
        server.stop().await;
    }
}

/// Choices made by an identity not yet linked stay with its own subject; linking it to an
/// account later does not carry them over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn choices_made_before_a_link_stay_with_the_identitys_own_subject() {
    for server in backends().await {
        let b = server.backend;
        let client = &server.client;
        apply_seed_catalog(client).await;
        let before = resolve(client, IdentityType::Cookie, COOKIE).await;
        assert!(!before.linked, "{b}");
        assert!(
            before.subject_id.starts_with("alias:"),
            "{b}: {}",
            before.subject_id
        );
        assert_eq!(before.subject_id.len(), "alias:".len() + 64, "{b}");

        record_by(
            client,
            IdentityType::Cookie,
            COOKIE,
            "analytics",
            Decision::Granted,
        )
        .await;
        let anonymous = check_by(client, IdentityType::Cookie, COOKIE, "analytics").await;
        assert!(anonymous.allowed, "{b}");
        assert_eq!(anonymous.subject_id, before.subject_id, "{b}");

        linked(client, ACCOUNT, IdentityType::Cookie, COOKIE, b).await;
        let linked = check_by(client, IdentityType::Cookie, COOKIE, "analytics").await;
        assert_eq!(
            (linked.allowed, linked.reason(), linked.subject_id.as_str()),
            (false, Reason::NoDecision, ACCOUNT),
            "{b}: the anonymous grant may not cover the account"
        );
        let kept = client
            .check_raw(&before.subject_id, "analytics")
            .await
            .unwrap_or_else(|e| panic!("{b}: {e:?}"));
        assert!(kept.allowed, "{b}: the anonymous subject keeps its choice");
        server.stop().await;
    }
}

/// An identity linked to one subject is not taken by another; a retry changes nothing; an
/// unlink frees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_is_not_stolen_from_the_subject_it_is_linked_to() {
    for server in backends().await {
        let b = server.backend;
        let client = &server.client;
        let first = linked(client, ACCOUNT, IdentityType::Email, EMAIL, b).await;
        let retry = linked(
            client,
            ACCOUNT,
            IdentityType::Email,
            "marie.dubois@example.be",
            b,
        )
        .await;
        assert!(retry.already_linked, "{b}");
        assert_eq!(retry.revision, first.revision, "{b}");
        let stolen = link(client, "acct-other", IdentityType::Email, EMAIL).await;
        let Err(refused) = stolen else {
            panic!("{b}: another subject took the email");
        };
        assert_eq!(refused.code(), Code::FailedPrecondition, "{b}");
        assert!(
            refused.message().contains(ACCOUNT),
            "{b}: {}",
            refused.message()
        );
        assert!(
            !refused.message().contains("dubois"),
            "{b}: {}",
            refused.message()
        );

        let not_there = unlink(client, "acct-other", IdentityType::Email, EMAIL).await;
        assert_eq!(code(not_there), Err(Code::NotFound), "{b}");
        unlink(client, ACCOUNT, IdentityType::Email, EMAIL)
            .await
            .unwrap_or_else(|e| panic!("{b}: unlink: {e:?}"));
        let moved = linked(client, "acct-other", IdentityType::Email, EMAIL, b).await;
        assert_eq!(
            moved.identity.unwrap_or_default().subject_id,
            "acct-other",
            "{b}"
        );
        server.stop().await;
    }
}

/// Bad identities are refused naming the field and the rule, in every RPC that takes one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_identities_name_the_field_and_the_rule() {
    let server = TestServer::sqlite().await;
    let client = &server.client;
    apply_seed_catalog(client).await;
    let no_country = link(client, ACCOUNT, IdentityType::Phone, "0470 12 34 56").await;
    assert_eq!(
        rejected_fields(no_country.map(tonic::Response::new)),
        ["identity.value"]
    );
    let no_type = link(client, ACCOUNT, IdentityType::Unspecified, "x").await;
    assert_eq!(
        rejected_fields(no_type.map(tonic::Response::new)),
        ["identity.type"]
    );
    let both = client
        .check_request_raw(pb::CheckRequest {
            subject_id: ACCOUNT.into(),
            identity: identity(IdentityType::Cookie, COOKIE),
            purpose_id: "analytics".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        rejected_fields(both.map(tonic::Response::new)),
        ["identity"]
    );
    let neither = client
        .check_request_raw(pb::CheckRequest {
            purpose_id: "analytics".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        rejected_fields(neither.map(tonic::Response::new)),
        ["subject_id"]
    );
    let in_batch = client
        .consent()
        .check_batch(pb::CheckBatchRequest {
            checks: vec![
                pb::CheckRequest {
                    subject_id: ACCOUNT.into(),
                    purpose_id: "analytics".into(),
                    ..Default::default()
                },
                pb::CheckRequest {
                    identity: identity(IdentityType::Email, "not an email"),
                    purpose_id: "analytics".into(),
                    ..Default::default()
                },
            ],
            consistency: None,
        })
        .await;
    assert_eq!(rejected_fields(in_batch), ["checks[1].identity.value"]);
    let no_identity = client
        .identities()
        .resolve_identity(pb::ResolveIdentityRequest { identity: None })
        .await;
    assert_eq!(rejected_fields(no_identity), ["identity"]);
    // An implicit subject is named by its identity only: linking to it, or writing to it by
    // id, would put choices where the identity no longer leads once it is linked.
    let implicit = resolve(client, IdentityType::Phone, PHONE).await.subject_id;
    let to_implicit = link(client, &implicit, IdentityType::Cookie, COOKIE).await;
    assert_eq!(
        rejected_fields(to_implicit.map(tonic::Response::new)),
        ["subject_id"]
    );
    let write_to_implicit = client
        .consent()
        .withdraw_consent(pb::WithdrawConsentRequest {
            subject_id: implicit.clone(),
            channel: Channel::Web.into(),
            ..Default::default()
        })
        .await;
    assert_eq!(rejected_fields(write_to_implicit), ["subject_id"]);
    // ...but it can be read by that id.
    let read = client
        .check_raw(&implicit, "analytics")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(!read.allowed);
    // An as-of check by identity would use today's link for a past moment.
    let as_of = client
        .check_request_raw(pb::CheckRequest {
            identity: identity(IdentityType::Phone, PHONE),
            purpose_id: "analytics".into(),
            at: Some(consent_e2e::days_ago(1)),
            ..Default::default()
        })
        .await;
    assert_eq!(rejected_fields(as_of.map(tonic::Response::new)), ["at"]);
    server.stop().await;
}

/// One tenant's links are invisible to another's keys, and identity RPCs need their scopes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_belong_to_their_tenant_and_need_their_scopes() {
    let settings = ServerSettings {
        key_cache_ttl: Duration::from_secs(60),
        ..ServerSettings::with_auth(AuthMode::ApiKey)
    };
    for server in backends_with(settings).await {
        let b = server.backend;
        let a = server.client_for("tenant-a", Scope::ALL).await;
        let other = server.client_for("tenant-b", Scope::ALL).await;
        apply_seed_catalog(&a).await;
        apply_seed_catalog(&other).await;
        linked(&a, ACCOUNT, IdentityType::Phone, PHONE, b).await;
        record_by(
            &a,
            IdentityType::Phone,
            PHONE,
            "call_recording",
            Decision::Granted,
        )
        .await;

        let seen_by_b = resolve(&other, IdentityType::Phone, PHONE).await;
        assert!(!seen_by_b.linked, "{b}");
        assert_ne!(seen_by_b.subject_id, ACCOUNT, "{b}");
        let check_b = check_by(&other, IdentityType::Phone, PHONE, "call_recording").await;
        assert!(!check_b.allowed, "{b}: tenant B sees tenant A's grant");
        let unlink_b = unlink(&other, ACCOUNT, IdentityType::Phone, PHONE).await;
        assert_eq!(code(unlink_b), Err(Code::NotFound), "{b}");
        assert!(listed(&other, ACCOUNT, b).await.is_empty(), "{b}");
        assert!(
            check_by(&a, IdentityType::Phone, PHONE, "call_recording")
                .await
                .allowed,
            "{b}"
        );

        let reader = server
            .client_for("tenant-a", &[Scope::ConsentRead, Scope::IdentityRead])
            .await;
        let denied = link(&reader, ACCOUNT, IdentityType::Cookie, COOKIE).await;
        assert_eq!(code(denied), Err(Code::PermissionDenied), "{b}");
        assert!(
            resolve(&reader, IdentityType::Phone, PHONE).await.linked,
            "{b}"
        );
        // A merge moves choices: identity:write alone may link, not merge or carry choices.
        let linker = server
            .client_for("tenant-a", &[Scope::ConsentRead, Scope::IdentityWrite])
            .await;
        linked(&linker, "anon-s", IdentityType::Cookie, "ck-s", b).await;
        for (merge, carry, value) in [(true, false, "ck-s"), (false, true, "ck-t")] {
            let refused =
                link_merging(&linker, ACCOUNT, IdentityType::Cookie, value, merge, carry).await;
            match refused {
                Err(s) if s.code() == Code::PermissionDenied => {
                    assert!(
                        s.message().contains("consent:write"),
                        "{b}: {}",
                        s.message()
                    );
                }
                other => panic!("{b}: expected PERMISSION_DENIED, got {other:?}"),
            }
        }
        let merged = link_merging(&a, ACCOUNT, IdentityType::Cookie, "ck-s", true, false)
            .await
            .unwrap_or_else(|e| panic!("{b}: a key with both scopes merges: {e:?}"));
        assert_eq!(merged.merged_subject_id, "anon-s", "{b}");
        let checker = server.client_for("tenant-a", &[Scope::ConsentRead]).await;
        let no_read = checker
            .identities()
            .resolve_identity(pb::ResolveIdentityRequest {
                identity: identity(IdentityType::Phone, PHONE),
            })
            .await;
        assert_eq!(code(no_read), Err(Code::PermissionDenied), "{b}");
        server.stop().await;
    }
}

/// Erasing the subject drops its links: its identities then stand for subjects of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_drops_the_subjects_identities() {
    for server in backends().await {
        let b = server.backend;
        let client = &server.client;
        apply_seed_catalog(client).await;
        // Before their links, the number granted and a cookie denied, each on its own
        // (implicit) subject; a second cookie recorded nothing.
        record_by(
            client,
            IdentityType::Phone,
            PHONE,
            "call_recording",
            Decision::Granted,
        )
        .await;
        record_by(
            client,
            IdentityType::Cookie,
            COOKIE,
            "analytics",
            Decision::Denied,
        )
        .await;
        let quiet_cookie = resolve(client, IdentityType::Cookie, "ck-quiet")
            .await
            .subject_id;
        linked(client, ACCOUNT, IdentityType::Phone, PHONE, b).await;
        linked(client, ACCOUNT, IdentityType::Cookie, COOKIE, b).await;
        linked(client, ACCOUNT, IdentityType::Cookie, "ck-quiet", b).await;
        // The caller asks by phone to be erased: the account it is linked to is erased.
        let erased = ok(
            client
                .rights()
                .erase_subject(pb::EraseSubjectRequest {
                    identity: identity(IdentityType::Phone, PHONE_OTHERWISE),
                    reason: "request #77 by phone".into(),
                    ..Default::default()
                })
                .await,
            b,
        );
        assert!(erased.erased_id.starts_with("erased:"), "{b}");
        let account = client
            .check_raw(ACCOUNT, "call_recording")
            .await
            .unwrap_or_else(|e| panic!("{b}: {e:?}"));
        assert_eq!(account.reason(), Reason::SubjectErased, "{b}");
        let after = resolve(client, IdentityType::Phone, PHONE).await;
        assert!(!after.linked, "{b}");
        assert!(after.subject_id.starts_with("alias:"), "{b}");
        // What the identities recorded before their links went with the person: the
        // number's anonymous grant no longer answers (outside attack: it answered GRANTED).
        let by_phone = check_by(client, IdentityType::Phone, PHONE, "call_recording").await;
        assert_eq!(
            (by_phone.allowed, by_phone.reason()),
            (false, Reason::SubjectErased),
            "{b}"
        );
        let by_cookie = check_by(client, IdentityType::Cookie, COOKIE, "analytics").await;
        assert_eq!(by_cookie.reason(), Reason::SubjectErased, "{b}");
        // An identity whose own subject held nothing is left free to consent again.
        assert_eq!(
            reason_of(client, &quiet_cookie, "analytics").await.0,
            Reason::NoDecision,
            "{b}"
        );
        record_by(
            client,
            IdentityType::Cookie,
            "ck-quiet",
            "analytics",
            Decision::Granted,
        )
        .await;
        server.stop().await;
    }
}

/// Every text form the stored rows could hold the phone number or the email in.
fn clear_forms() -> Vec<&'static str> {
    vec![
        "32470123456",
        "470123456",
        "470 12 34 56",
        "marie.dubois@example.be",
        "Marie.Dubois@Example.be",
        "dubois",
    ]
}

/// The clear phone number and email appear nowhere in the database: not in the SQLite
/// files (database and write-ahead log), not in any PostgreSQL table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clear_phone_number_and_email_never_reach_the_database() {
    for server in backends().await {
        let b = server.backend;
        let client = &server.client;
        apply_seed_catalog(client).await;
        linked(client, ACCOUNT, IdentityType::Phone, PHONE, b).await;
        linked(client, ACCOUNT, IdentityType::Email, EMAIL, b).await;
        record_by(
            client,
            IdentityType::Phone,
            PHONE,
            "call_recording",
            Decision::Granted,
        )
        .await;
        record_by(
            client,
            IdentityType::Email,
            EMAIL,
            "analytics",
            Decision::Granted,
        )
        .await;
        // A phone number never linked: its choice goes to its own subject, by hash too.
        record_by(
            client,
            IdentityType::Phone,
            "+32 470 99 88 77",
            "call_recording",
            Decision::Denied,
        )
        .await;
        let url = server.store_url().to_owned();
        if b == "sqlite" {
            let path = url.trim_start_matches("sqlite://").to_owned();
            let mut bytes = Vec::new();
            for file in [path.clone(), format!("{path}-wal")] {
                if let Ok(mut content) = std::fs::read(&file) {
                    bytes.append(&mut content);
                }
            }
            assert!(!bytes.is_empty(), "{b}: nothing read from {path}");
            let text = String::from_utf8_lossy(&bytes);
            assert!(text.contains(ACCOUNT), "{b}: the grep sees nothing at all");
            for form in clear_forms().into_iter().chain(["470998877"]) {
                assert!(!text.contains(form), "{b}: `{form}` is in the SQLite files");
            }
        } else {
            let pool = sqlx::PgPool::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("connect {b}: {e}"));
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
            )
            .fetch_all(&pool)
            .await
            .unwrap_or_else(|e| panic!("list tables: {e}"));
            assert!(
                tables.iter().any(|t| t == "subject_identities"),
                "{tables:?}"
            );
            let mut seen_account = false;
            for table in &tables {
                let rows: Vec<String> =
                    sqlx::query_scalar(&format!("SELECT t::text FROM \"{table}\" t"))
                        .fetch_all(&pool)
                        .await
                        .unwrap_or_else(|e| panic!("read {table}: {e}"));
                for row in rows {
                    seen_account |= row.contains(ACCOUNT);
                    for form in clear_forms().into_iter().chain(["470998877"]) {
                        assert!(!row.contains(form), "`{form}` is in table {table}: {row}");
                    }
                }
            }
            assert!(seen_account, "the scan saw no row of the account");
            pool.close().await;
        }
        server.stop().await;
    }
}

/// The export of a subject lists its identities: types always, values only where the
/// ledger holds them (never a phone number or an email, which it holds only as hashes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_lists_the_identity_types_and_no_hashed_value() {
    let server = TestServer::sqlite().await;
    let client = &server.client;
    linked(client, ACCOUNT, IdentityType::Cookie, COOKIE, "cookie").await;
    linked(client, ACCOUNT, IdentityType::Phone, PHONE, "phone").await;
    let documents = exported(client, identity(IdentityType::Phone, PHONE_OTHERWISE)).await;
    for (_, json) in &documents {
        assert!(!json.to_string().contains("470123456"), "{json}");
    }
    let identities: Vec<(String, serde_json::Value, String)> = documents
        .iter()
        .filter(|(t, _)| t == "identity")
        .map(|(_, j)| {
            (
                j["type"].to_string(),
                j["value"].clone(),
                j["stored_as"].to_string(),
            )
        })
        .collect();
    assert_eq!(
        identities,
        [
            (
                "\"cookie\"".to_owned(),
                serde_json::json!(COOKIE),
                "\"value\"".to_owned()
            ),
            (
                "\"phone\"".to_owned(),
                serde_json::Value::Null,
                "\"keyed_hash\"".to_owned()
            ),
        ]
    );
    let end = documents
        .last()
        .filter(|(t, _)| t == "end")
        .unwrap_or_else(|| panic!("no end document: {documents:?}"));
    assert_eq!(end.1["identities"], 2);
    server.stop().await;
}

/// The documents of an export by `identity`, as (type, JSON).
async fn exported(
    client: &ConsentClient,
    identity: Option<pb::Identity>,
) -> Vec<(String, serde_json::Value)> {
    let mut stream = ok(
        client
            .rights()
            .export_subject(pb::ExportSubjectRequest {
                identity,
                ..Default::default()
            })
            .await,
        "export",
    );
    let mut documents = Vec::new();
    // Bounded: these subjects have a handful of documents.
    for _ in 0..100 {
        let next = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .unwrap_or_else(|_| panic!("no export document within the safety net"))
            .unwrap_or_else(|e| panic!("export: {e:?}"));
        let Some(document) = next else { break };
        let json = serde_json::from_str(&document.json)
            .unwrap_or_else(|e| panic!("not JSON: {e}: {}", document.json));
        documents.push((document.document_type, json));
    }
    documents
}

/// Erases the person `request` names, then panics unless every one of `subjects` answers
/// `subject_erased`.
async fn erase_and_expect(
    client: &ConsentClient,
    request: pb::EraseSubjectRequest,
    subjects: &[String],
    b: &str,
) {
    ok(client.rights().erase_subject(request).await, b);
    for subject in subjects {
        assert_eq!(
            reason_of(client, subject, "analytics").await.0,
            Reason::SubjectErased,
            "{b}: {subject}"
        );
    }
}

async fn record_id(client: &ConsentClient, subject: &str, purpose: &str, decision: Decision) {
    ok(
        client
            .consent()
            .record_consent(pb::RecordConsentRequest {
                subject_id: subject.into(),
                decisions: vec![pb::PurposeDecision {
                    purpose_id: purpose.into(),
                    vendor_id: String::new(),
                    decision: decision.into(),
                }],
                channel: Channel::Voice.into(),
                ..Default::default()
            })
            .await,
        "record by id",
    );
}

async fn reason_of(client: &ConsentClient, subject: &str, purpose: &str) -> (Reason, String) {
    let answer = client
        .check_raw(subject, purpose)
        .await
        .unwrap_or_else(|e| panic!("check {subject} {purpose}: {e:?}"));
    (answer.reason(), answer.subject_id)
}

/// The merge: an anonymous subject that withdrew is merged into an account that had
/// granted; the withdrawal stands whichever id asks, the later choice wins elsewhere, the
/// merge is a ledger record of both, the merged-away subject is closed, and erasing by any
/// identity erases both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_of_two_subjects_keeps_the_withdrawal() {
    const ANON: &str = "anon-5f2a9c";
    for server in backends().await {
        let b = server.backend;
        let client = &server.client;
        apply_seed_catalog(client).await;
        record_id(client, ACCOUNT, "call_recording", Decision::Granted).await;
        record_id(client, ACCOUNT, "analytics", Decision::Granted).await;
        linked(client, ANON, IdentityType::Cookie, COOKIE, b).await;
        record_by(
            client,
            IdentityType::Cookie,
            COOKIE,
            "ai_transcription",
            Decision::Granted,
        )
        .await;
        let keyed_withdrawal = pb::WithdrawConsentRequest {
            identity: identity(IdentityType::Cookie, COOKIE),
            purpose_ids: vec!["call_recording".into()],
            channel: Channel::Voice.into(),
            idempotency_key: "withdraw-by-cookie-1".into(),
            ..Default::default()
        };
        let withdrawn = ok(
            client
                .consent()
                .withdraw_consent(keyed_withdrawal.clone())
                .await,
            b,
        );
        record_id(client, ACCOUNT, "ai_transcription", Decision::Denied).await;
        // Read (and cache) both subjects' answers first.
        assert_eq!(
            reason_of(client, ACCOUNT, "call_recording").await.0,
            Reason::Granted,
            "{b}"
        );
        assert_eq!(
            reason_of(client, ANON, "call_recording").await.0,
            Reason::Withdrawn,
            "{b}"
        );

        // Without merge: refused, naming the subject the cookie stands for.
        let refused = link(client, ACCOUNT, IdentityType::Cookie, COOKIE).await;
        match refused {
            Err(s) if s.code() == Code::FailedPrecondition => {
                assert!(
                    s.message().contains(ANON) && s.message().contains("merge"),
                    "{b}: {}",
                    s.message()
                );
            }
            other => panic!("{b}: expected FAILED_PRECONDITION, got {other:?}"),
        }
        let merged = link_merging(client, ACCOUNT, IdentityType::Cookie, COOKIE, true, false)
            .await
            .unwrap_or_else(|e| panic!("{b}: merge: {e:?}"));
        assert_eq!(merged.merged_subject_id, ANON, "{b}");
        assert!(!merged.already_linked, "{b}");
        let retry = link_merging(client, ACCOUNT, IdentityType::Cookie, COOKIE, true, false)
            .await
            .unwrap_or_else(|e| panic!("{b}: retry: {e:?}"));
        assert!(
            retry.already_linked && retry.merged_subject_id.is_empty(),
            "{b}"
        );
        // The keyed withdrawal retried now that the cookie stands for the account: the
        // original answer, not a refusal.
        let replayed = ok(client.consent().withdraw_consent(keyed_withdrawal).await, b);
        assert_eq!(replayed.revision, withdrawn.revision, "{b}");
        assert_eq!(replayed.events[0].subject_id, ANON, "{b}");

        for asked in [ACCOUNT, ANON] {
            assert_eq!(
                reason_of(client, asked, "call_recording").await,
                (Reason::Withdrawn, ACCOUNT.to_owned()),
                "{b}: the withdrawal stands, asked by {asked}"
            );
            assert_eq!(
                reason_of(client, asked, "ai_transcription").await.0,
                Reason::Denied,
                "{b}"
            );
            assert_eq!(
                reason_of(client, asked, "analytics").await.0,
                Reason::Granted,
                "{b}"
            );
        }
        let by_cookie = check_by(client, IdentityType::Cookie, COOKIE, "call_recording").await;
        assert_eq!(
            (by_cookie.allowed, by_cookie.subject_id.as_str()),
            (false, ACCOUNT),
            "{b}"
        );
        let state = ok(
            client
                .consent()
                .get_subject_state(pb::GetSubjectStateRequest {
                    subject_id: ANON.into(),
                    ..Default::default()
                })
                .await,
            b,
        );
        assert_eq!(
            state.flags.map(|f| f.merged_into).as_deref(),
            Some(ACCOUNT),
            "{b}"
        );

        // The merge is in both subjects' histories.
        for subject in [ACCOUNT, ANON] {
            let events = ok(
                client
                    .consent()
                    .list_events(pb::ListEventsRequest {
                        subject_id: subject.into(),
                        page_size: 100,
                        ..Default::default()
                    })
                    .await,
                b,
            );
            let merges: Vec<_> = events
                .records
                .iter()
                .filter(|r| r.kind() == pb::LedgerRecordKind::SubjectsMerged)
                .collect();
            assert_eq!(merges.len(), 1, "{b}: {subject}");
            assert_eq!(
                merges[0].detail.get("merged_from").map(String::as_str),
                Some(ANON),
                "{b}"
            );
        }
        // The merged-away subject is closed.
        let closed = client
            .consent()
            .record_consent(pb::RecordConsentRequest {
                subject_id: ANON.into(),
                decisions: vec![pb::PurposeDecision {
                    purpose_id: "call_recording".into(),
                    vendor_id: String::new(),
                    decision: Decision::Granted.into(),
                }],
                channel: Channel::Voice.into(),
                ..Default::default()
            })
            .await;
        match closed {
            Err(s) if s.code() == Code::FailedPrecondition => {
                assert!(s.message().contains(ACCOUNT), "{b}: {}", s.message());
            }
            other => panic!("{b}: expected FAILED_PRECONDITION, got {other:?}"),
        }

        // An export by the cookie is the person's: both subjects' histories.
        let documents = exported(client, identity(IdentityType::Cookie, COOKIE)).await;
        let subject = &documents[0].1;
        assert_eq!(subject["subject_id"], ACCOUNT, "{b}");
        assert_eq!(subject["merged_subjects"], serde_json::json!([ANON]), "{b}");
        let mut owners: Vec<String> = documents
            .iter()
            .filter(|(t, _)| t == "consent_record")
            .filter_map(|(_, j)| j["pii_principal_id"].as_str().map(str::to_owned))
            .collect();
        owners.dedup();
        assert_eq!(owners, [ACCOUNT, ANON], "{b}");

        // Erasing by the cookie erases the person: both subjects.
        erase_and_expect(
            client,
            pb::EraseSubjectRequest {
                identity: identity(IdentityType::Cookie, COOKIE),
                reason: "request #78".into(),
                ..Default::default()
            },
            &[ACCOUNT.to_owned(), ANON.to_owned()],
            b,
        )
        .await;
        server.stop().await;
    }
}

/// Cookie to account: an anonymous cookie's choices go with it only when the link says
/// `carry_choices`; carried, the later choice wins and a refusal stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookies_choices_are_carried_to_the_account_only_when_asked() {
    for server in backends().await {
        let b = server.backend;
        let client = &server.client;
        apply_seed_catalog(client).await;
        for account in ["acct-a", "acct-b"] {
            record_id(
                client,
                account,
                "marketing_communications",
                Decision::Granted,
            )
            .await;
        }
        for cookie in ["ck-a", "ck-b"] {
            record_by(
                client,
                IdentityType::Cookie,
                cookie,
                "analytics",
                Decision::Granted,
            )
            .await;
            record_by(
                client,
                IdentityType::Cookie,
                cookie,
                "marketing_communications",
                Decision::Denied,
            )
            .await;
        }
        let implicit_b = resolve(client, IdentityType::Cookie, "ck-b")
            .await
            .subject_id;
        // A time after the cookies' choices and before any link.
        let before_links = ok(
            client
                .consent()
                .list_events(pb::ListEventsRequest {
                    subject_id: implicit_b.clone(),
                    page_size: 10,
                    ..Default::default()
                })
                .await,
            b,
        )
        .events
        .last()
        .and_then(|e| e.recorded_at);

        let plain = link_merging(client, "acct-a", IdentityType::Cookie, "ck-a", false, false)
            .await
            .unwrap_or_else(|e| panic!("{b}: {e:?}"));
        assert!(plain.merged_subject_id.is_empty(), "{b}");
        assert_eq!(
            reason_of(client, "acct-a", "analytics").await.0,
            Reason::NoDecision,
            "{b}"
        );
        assert_eq!(
            reason_of(client, "acct-a", "marketing_communications")
                .await
                .0,
            Reason::Granted,
            "{b}"
        );

        let carried = link_merging(client, "acct-b", IdentityType::Cookie, "ck-b", false, true)
            .await
            .unwrap_or_else(|e| panic!("{b}: {e:?}"));
        assert_eq!(carried.merged_subject_id, implicit_b, "{b}");
        assert_eq!(
            reason_of(client, "acct-b", "analytics").await.0,
            Reason::Granted,
            "{b}"
        );
        assert_eq!(
            reason_of(client, "acct-b", "marketing_communications")
                .await
                .0,
            Reason::Denied,
            "{b}: the cookie's later refusal stands"
        );
        assert_eq!(
            reason_of(client, &implicit_b, "analytics").await,
            (Reason::Granted, "acct-b".to_owned()),
            "{b}: the cookie's own subject answers for the account"
        );
        // As-of answers read the group as it stood then. Before the carry the account had no
        // analytics consent and had granted marketing (the cookie's refusal was another
        // subject's), and the cookie's subject answered for itself; from the carry on, the
        // cookie's grant counts for the account and its later refusal stands.
        let after_carry = Some(consent_e2e::days_ago(0));
        let cookie = implicit_b.as_str();
        let as_of = |subject: &str, purpose: &str, at| {
            let request = pb::CheckRequest {
                subject_id: subject.into(),
                purpose_id: purpose.into(),
                at,
                ..Default::default()
            };
            async move {
                let answer = client
                    .check_request_raw(request)
                    .await
                    .unwrap_or_else(|e| panic!("{b}: as-of check: {e:?}"));
                (answer.reason(), answer.subject_id)
            }
        };
        for (subject, purpose, at, reason, answered_by, when) in [
            (
                "acct-b",
                "analytics",
                before_links,
                Reason::NoDecision,
                "acct-b",
                "before",
            ),
            (
                "acct-b",
                "marketing_communications",
                before_links,
                Reason::Granted,
                "acct-b",
                "before",
            ),
            (
                cookie,
                "analytics",
                before_links,
                Reason::Granted,
                cookie,
                "before",
            ),
            (
                cookie,
                "marketing_communications",
                before_links,
                Reason::Denied,
                cookie,
                "before",
            ),
            (
                "acct-b",
                "analytics",
                after_carry,
                Reason::Granted,
                "acct-b",
                "after",
            ),
            (
                "acct-b",
                "marketing_communications",
                after_carry,
                Reason::Denied,
                "acct-b",
                "after",
            ),
            (
                cookie,
                "analytics",
                after_carry,
                Reason::Granted,
                "acct-b",
                "after",
            ),
        ] {
            assert_eq!(
                as_of(subject, purpose, at).await,
                (reason, answered_by.to_owned()),
                "{b}: {subject} {purpose} as of {when} the carry"
            );
        }
        server.stop().await;
    }
}

/// A merge on one replica is seen on another at once, though that one had both subjects'
/// answers in the shared Redis cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_on_one_replica_is_seen_on_another_at_once() {
    let (Some(db), Some(redis)) = (
        consent_store_sql::testing::postgres_test_url(),
        consent_cache::testing::redis_test_url(),
    ) else {
        return;
    };
    let cache = consent_server::config::CacheConfig {
        mode: consent_server::config::CacheMode::Redis,
        redis_url: redis,
        ..Default::default()
    };
    let a = TestServer::postgres_with_cache(&db, ServerSettings::with_auth(AuthMode::None), cache)
        .await;
    let replica = a.replica().await;
    apply_seed_catalog(&a.client).await;
    record_id(&a.client, ACCOUNT, "call_recording", Decision::Granted).await;
    record_id(&a.client, "anon-1", "call_recording", Decision::Denied).await;
    linked(&a.client, "anon-1", IdentityType::Cookie, COOKIE, "redis").await;
    for subject in [ACCOUNT, "anon-1"] {
        reason_of(&replica.client, subject, "call_recording").await;
    }
    link_merging(
        &a.client,
        ACCOUNT,
        IdentityType::Cookie,
        COOKIE,
        true,
        false,
    )
    .await
    .unwrap_or_else(|e| panic!("merge: {e:?}"));
    for subject in [ACCOUNT, "anon-1"] {
        assert_eq!(
            reason_of(&replica.client, subject, "call_recording").await,
            (Reason::Denied, ACCOUNT.to_owned()),
            "{subject} on the replica"
        );
    }
    let by_cookie = check_by(
        &replica.client,
        IdentityType::Cookie,
        COOKIE,
        "call_recording",
    )
    .await;
    assert_eq!(
        (by_cookie.allowed, by_cookie.subject_id.as_str()),
        (false, ACCOUNT)
    );
    replica.stop().await;
    a.stop().await;
}

/// A chain of merges longer than a read follows through states (each subject merged into
/// the next): the first id answers for the last, keeps its withdrawal, and erasing by it
/// erases the whole chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_chain_of_merges_answers_for_its_root() {
    const LINKS: usize = 14;
    for server in backends().await {
        let b = server.backend;
        let client = &server.client;
        apply_seed_catalog(client).await;
        record_id(client, "chain-0", "analytics", Decision::Denied).await;
        record_id(
            client,
            &format!("chain-{LINKS}"),
            "call_recording",
            Decision::Granted,
        )
        .await;
        for i in 0..LINKS {
            let id = format!("ext-{i}");
            linked(
                client,
                &format!("chain-{i}"),
                IdentityType::External,
                &id,
                b,
            )
            .await;
            link_merging(
                client,
                &format!("chain-{}", i + 1),
                IdentityType::External,
                &id,
                true,
                false,
            )
            .await
            .unwrap_or_else(|e| panic!("{b}: merge {i}: {e:?}"));
        }
        let root = format!("chain-{LINKS}");
        assert_eq!(
            reason_of(client, "chain-0", "analytics").await,
            (Reason::Denied, root.clone()),
            "{b}"
        );
        assert_eq!(
            reason_of(client, "chain-0", "call_recording").await.0,
            Reason::Granted,
            "{b}"
        );
        erase_and_expect(
            client,
            pb::EraseSubjectRequest {
                subject_id: "chain-0".into(),
                reason: "request #79".into(),
                ..Default::default()
            },
            &[0, LINKS / 2, LINKS].map(|i| format!("chain-{i}")),
            b,
        )
        .await;
        server.stop().await;
    }
}

/// An identity whose anonymous choices were carried into an account stays linked to it:
/// unlinking it is refused (its choices are the account's now), linking it again with
/// `carry_choices` changes nothing, and erasing by it erases the account with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_whose_choices_were_carried_stays_linked() {
    for server in backends().await {
        let b = server.backend;
        let client = &server.client;
        apply_seed_catalog(client).await;
        record_id(client, "acct-c", "call_recording", Decision::Granted).await;
        record_by(
            client,
            IdentityType::Cookie,
            "ck-c",
            "analytics",
            Decision::Granted,
        )
        .await;
        let own = resolve(client, IdentityType::Cookie, "ck-c")
            .await
            .subject_id;
        let carried = link_merging(client, "acct-c", IdentityType::Cookie, "ck-c", false, true)
            .await
            .unwrap_or_else(|e| panic!("{b}: {e:?}"));
        assert_eq!(carried.merged_subject_id, own, "{b}");

        match unlink(client, "acct-c", IdentityType::Cookie, "ck-c").await {
            Err(s) if s.code() == Code::FailedPrecondition => {
                assert!(
                    s.message().contains("carry_choices"),
                    "{b}: {}",
                    s.message()
                );
            }
            other => panic!("{b}: expected FAILED_PRECONDITION, got {other:?}"),
        }
        let by_cookie = check_by(client, IdentityType::Cookie, "ck-c", "call_recording").await;
        assert_eq!(
            (by_cookie.allowed, by_cookie.subject_id.as_str()),
            (true, "acct-c"),
            "{b}"
        );
        let again = link_merging(client, "acct-c", IdentityType::Cookie, "ck-c", false, true)
            .await
            .unwrap_or_else(|e| panic!("{b}: link again: {e:?}"));
        assert!(
            again.already_linked && again.merged_subject_id.is_empty(),
            "{b}"
        );
        erase_and_expect(
            client,
            pb::EraseSubjectRequest {
                identity: identity(IdentityType::Cookie, "ck-c"),
                reason: "request #80".into(),
                ..Default::default()
            },
            &["acct-c".to_owned(), own],
            b,
        )
        .await;
        server.stop().await;
    }
}

/// A caller exercises their rights by phone number: the restriction, objection and GPC
/// signal land on the subject the number stands for (its own, implicit one while unlinked,
/// carried to the account with its choices), and are seen by checks by the number; an
/// implicit subject's `alias:` id is refused by id, as for consent writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rights_are_exercised_by_identity() {
    for server in backends().await {
        let b = server.backend;
        let client = &server.client;
        apply_seed_catalog(client).await;
        let mut rights = client.rights();
        record_by(
            client,
            IdentityType::Phone,
            PHONE,
            "call_recording",
            Decision::Granted,
        )
        .await;
        let restricted = ok(
            rights
                .restrict_processing(pb::RestrictProcessingRequest {
                    identity: identity(IdentityType::Phone, PHONE_OTHERWISE),
                    reason: "caller asked on the line".into(),
                    ..Default::default()
                })
                .await,
            b,
        )
        .change
        .unwrap_or_default();
        assert!(restricted.changed, "{b}");
        let implicit = resolve(client, IdentityType::Phone, PHONE).await.subject_id;
        assert!(
            restricted.records.iter().all(|r| r.subject_id == implicit),
            "{b}: on the number's own subject: {restricted:?}"
        );
        let by_phone = check_by(client, IdentityType::Phone, PHONE, "call_recording").await;
        assert_eq!(
            (by_phone.allowed, by_phone.reason()),
            (false, Reason::ProcessingRestricted),
            "{b}"
        );

        // By the implicit id itself: refused, naming the field.
        let by_alias = rights
            .lift_restriction(pb::LiftRestrictionRequest {
                subject_id: implicit.clone(),
                reason: "by id".into(),
                ..Default::default()
            })
            .await;
        assert_eq!(rejected_fields(by_alias), ["subject_id"], "{b}");
        let both = rights
            .set_gpc(pb::SetGpcRequest {
                subject_id: ACCOUNT.into(),
                identity: identity(IdentityType::Phone, PHONE),
                enabled: true,
                reason: "both".into(),
            })
            .await;
        assert_eq!(rejected_fields(both), ["identity"], "{b}");

        // Carried to the account with the number's choices: the restriction comes along;
        // lifted by the number, it is lifted on the account.
        record_id(
            client,
            ACCOUNT,
            "marketing_communications",
            Decision::Granted,
        )
        .await;
        link_merging(client, ACCOUNT, IdentityType::Phone, PHONE, false, true)
            .await
            .unwrap_or_else(|e| panic!("{b}: carry: {e:?}"));
        assert_eq!(
            reason_of(client, ACCOUNT, "call_recording").await.0,
            Reason::ProcessingRestricted,
            "{b}"
        );
        ok(
            rights
                .lift_restriction(pb::LiftRestrictionRequest {
                    identity: identity(IdentityType::Phone, PHONE),
                    reason: "resolved".into(),
                    ..Default::default()
                })
                .await,
            b,
        );
        assert_eq!(
            reason_of(client, ACCOUNT, "call_recording").await.0,
            Reason::Granted,
            "{b}"
        );
        ok(
            rights
                .object(pb::ObjectRequest {
                    identity: identity(IdentityType::Phone, PHONE),
                    purpose_ids: vec!["marketing_communications".into()],
                    reason: "no more offers".into(),
                    ..Default::default()
                })
                .await,
            b,
        );
        let marketing = check_by(
            client,
            IdentityType::Phone,
            PHONE,
            "marketing_communications",
        )
        .await;
        assert_eq!(
            (marketing.reason(), marketing.subject_id.as_str()),
            (Reason::Objected, ACCOUNT),
            "{b}"
        );
        ok(
            rights
                .withdraw_objection(pb::WithdrawObjectionRequest {
                    identity: identity(IdentityType::Phone, PHONE),
                    purpose_ids: vec!["marketing_communications".into()],
                    reason: "changed their mind".into(),
                    ..Default::default()
                })
                .await,
            b,
        );
        ok(
            rights
                .set_gpc(pb::SetGpcRequest {
                    identity: identity(IdentityType::Phone, PHONE),
                    enabled: true,
                    reason: "Sec-GPC: 1".into(),
                    ..Default::default()
                })
                .await,
            b,
        );
        assert_eq!(
            reason_of(client, ACCOUNT, "marketing_communications")
                .await
                .0,
            Reason::GpcOptOut,
            "{b}"
        );
        server.stop().await;
    }
}
