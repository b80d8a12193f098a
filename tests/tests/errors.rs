//! Bad input gets the right code and names the field; a store fault is UNAVAILABLE, never
//! "allowed".

use consent_client::pb;
use consent_client::pb::{Channel, Decision};
use consent_e2e::RawChecks;
use consent_e2e::{TestServer, apply_seed_catalog, bad_fields, record, rejected_fields};
use tonic::Code;

fn check(subject: &str, purpose: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        subject_id: subject.into(),
        purpose_id: purpose.into(),
        ..Default::default()
    }
}

fn future(secs: u64) -> prost_types::Timestamp {
    consent_client::timestamp(std::time::SystemTime::now() + std::time::Duration::from_secs(secs))
}

async fn expect_check(server: &TestServer, req: pb::CheckRequest, code: Code, field: Option<&str>) {
    let status = match server.client.check_request_raw(req.clone()).await {
        Ok(answer) => panic!("{req:?} was answered {answer:?}, expected {code:?}"),
        Err(s) => s,
    };
    assert_eq!(status.code(), code, "{req:?}: {status:?}");
    if let Some(field) = field {
        assert_eq!(bad_fields(&status), [field], "{status:?}");
        assert!(
            status.message().contains(field),
            "the message names the field: {}",
            status.message()
        );
    }
}

async fn expect_record(
    server: &TestServer,
    req: pb::RecordConsentRequest,
    code: Code,
    fields: &[&str],
) {
    let status = match server.client.consent().record_consent(req.clone()).await {
        Ok(answer) => panic!("{req:?} was answered {answer:?}, expected {code:?}"),
        Err(s) => s,
    };
    assert_eq!(status.code(), code, "{req:?}: {status:?}");
    assert_eq!(bad_fields(&status), fields, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_codes_that_name_the_field() {
    let server = TestServer::sqlite().await;
    apply_seed_catalog(&server.client).await;
    let long = "x".repeat(257);

    expect_check(
        &server,
        check("", "analytics"),
        Code::InvalidArgument,
        Some("subject_id"),
    )
    .await;
    expect_check(
        &server,
        check(&long, "analytics"),
        Code::InvalidArgument,
        Some("subject_id"),
    )
    .await;
    expect_check(
        &server,
        check("s", ""),
        Code::InvalidArgument,
        Some("purpose_id"),
    )
    .await;
    expect_check(&server, check("s", "no_such_purpose"), Code::NotFound, None).await;
    let mut unknown_vendor = check("s", "analytics");
    unknown_vendor.vendor_id = "no_such_vendor".into();
    expect_check(&server, unknown_vendor, Code::NotFound, None).await;
    let mut bad_time = check("s", "analytics");
    bad_time.at = Some(prost_types::Timestamp {
        seconds: 0,
        nanos: -1,
    });
    expect_check(&server, bad_time, Code::InvalidArgument, Some("at")).await;
    let mut negative_revision = check("s", "analytics");
    negative_revision.consistency = Some(pb::Consistency {
        requirement: Some(pb::consistency::Requirement::AtLeastRevision(-1)),
    });
    expect_check(
        &server,
        negative_revision,
        Code::InvalidArgument,
        Some("consistency.at_least_revision"),
    )
    .await;

    let good = record("s", &[("analytics", Decision::Granted)], Channel::Web);
    let mut unspecified_decision = good.clone();
    unspecified_decision.decisions[0].decision = 0;
    expect_record(
        &server,
        unspecified_decision,
        Code::InvalidArgument,
        &["decisions[0].decision"],
    )
    .await;
    let mut unknown_enum = good.clone();
    unknown_enum.channel = 42;
    expect_record(&server, unknown_enum, Code::InvalidArgument, &["channel"]).await;
    let mut too_late = good.clone();
    too_late.collected_at = Some(future(600));
    expect_record(&server, too_late, Code::InvalidArgument, &["collected_at"]).await;
    let mut skew_ok = good.clone();
    skew_ok.collected_at = Some(future(60));
    assert!(
        server
            .client
            .consent()
            .record_consent(skew_ok)
            .await
            .is_ok(),
        "small clock skew is accepted"
    );
    let mut no_decisions = good.clone();
    no_decisions.decisions.clear();
    expect_record(&server, no_decisions, Code::InvalidArgument, &["decisions"]).await;
    let mut long_key = good.clone();
    long_key.idempotency_key = long.clone();
    expect_record(
        &server,
        long_key,
        Code::InvalidArgument,
        &["idempotency_key"],
    )
    .await;
    let mut bad_digest = good.clone();
    bad_digest.evidence = Some(pb::Evidence {
        transcript_sha256: "not-hex".into(),
        ..Default::default()
    });
    expect_record(
        &server,
        bad_digest,
        Code::InvalidArgument,
        &["evidence.transcript_sha256"],
    )
    .await;
    let mut several = good.clone();
    several.subject_id.clear();
    several.channel = 0;
    expect_record(
        &server,
        several,
        Code::InvalidArgument,
        &["subject_id", "channel"],
    )
    .await;
    let mut unknown_purpose = good.clone();
    unknown_purpose.decisions[0].purpose_id = "no_such_purpose".into();
    expect_record(&server, unknown_purpose, Code::NotFound, &[]).await;
    let mut unknown_policy = good.clone();
    unknown_policy.policy_version_id = "1999-01".into();
    expect_record(&server, unknown_policy, Code::NotFound, &[]).await;
    let mut foreign_vendor = good.clone();
    foreign_vendor.decisions[0].vendor_id = "stripe".into();
    expect_record(
        &server,
        foreign_vendor,
        Code::InvalidArgument,
        &["decisions[0].vendor_id"],
    )
    .await;

    let too_many = pb::CheckBatchRequest {
        checks: vec![check("s", "analytics"); 10_001],
        consistency: None,
    };
    let status = server.client.consent().check_batch(too_many).await.err();
    assert_eq!(
        status.as_ref().map(tonic::Status::code),
        Some(Code::InvalidArgument)
    );
    assert_eq!(
        status.map(|s| bad_fields(&s)),
        Some(vec!["checks".to_string()])
    );
    let mut in_batch = vec![check("s", "analytics"); 3];
    in_batch[2].subject_id.clear();
    let status = rejected_fields(
        server
            .client
            .consent()
            .check_batch(pb::CheckBatchRequest {
                checks: in_batch,
                consistency: None,
            })
            .await,
    );
    assert_eq!(status, ["checks[2].subject_id"]);

    let page = rejected_fields(
        server
            .client
            .consent()
            .list_events(pb::ListEventsRequest {
                page_token: "garbage".into(),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(page, ["page_token"]);

    let missing = rejected_fields(
        server
            .client
            .catalog()
            .upsert_purpose(pb::UpsertPurposeRequest { purpose: None })
            .await,
    );
    assert_eq!(missing, ["purpose"]);
    let unspecified_category = rejected_fields(
        server
            .client
            .catalog()
            .upsert_purpose(pb::UpsertPurposeRequest {
                purpose: Some(pb::Purpose {
                    id: "p".into(),
                    legal_basis: pb::LegalBasis::Consent.into(),
                    ..Default::default()
                }),
            })
            .await,
    );
    assert_eq!(unspecified_category, ["purpose.category"]);
    let republish = server
        .client
        .catalog()
        .publish_policy_version(pb::PublishPolicyVersionRequest {
            policy_version: Some(pb::PolicyVersion {
                id: "2025-05".into(),
                purpose_ids: vec!["analytics".into()],
                ..Default::default()
            }),
        })
        .await
        .err();
    assert_eq!(republish.map(|s| s.code()), Some(Code::AlreadyExists));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_needs_a_published_policy() {
    let server = TestServer::sqlite().await;
    let status = server
        .client
        .consent()
        .record_consent(record(
            "s",
            &[("analytics", Decision::Granted)],
            Channel::Web,
        ))
        .await
        .err();
    assert_eq!(
        status.as_ref().map(tonic::Status::code),
        Some(Code::FailedPrecondition),
        "{status:?}"
    );
    assert!(status.is_some_and(|s| s.message().contains("no policy version is published")));
    apply_seed_catalog(&server.client).await;
    let mut before_policy = record("s", &[("analytics", Decision::Granted)], Channel::Import);
    before_policy.collected_at = Some(prost_types::Timestamp {
        seconds: 1_600_000_000,
        nanos: 0,
    });
    let status = server
        .client
        .consent()
        .record_consent(before_policy)
        .await
        .err();
    assert_eq!(status.map(|s| s.code()), Some(Code::FailedPrecondition));
    server.stop().await;
}

/// With the store gone, writes and every read the (coherent, in-process) cache cannot
/// answer get UNAVAILABLE, never a verdict; what the cache holds is still the truth, since
/// no write can happen without the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_down_is_unavailable_never_allowed() {
    let server = TestServer::sqlite().await;
    apply_seed_catalog(&server.client).await;
    let granted = server
        .client
        .consent()
        .record_consent(record(
            "s",
            &[("analytics", Decision::Granted)],
            Channel::Web,
        ))
        .await;
    assert!(granted.is_ok());
    assert!(
        server
            .client
            .check_raw("s", "analytics")
            .await
            .is_ok_and(|c| c.allowed)
    );

    server.store.close().await;
    let uncached = server
        .client
        .check_raw("never-seen", "analytics")
        .await
        .err();
    assert_eq!(
        uncached.as_ref().map(tonic::Status::code),
        Some(Code::Unavailable),
        "{uncached:?}"
    );
    let cached = server.client.check_raw("s", "analytics").await;
    assert!(cached.is_ok_and(|c| c.allowed && c.reason() == pb::Reason::Granted));
    let write = server
        .client
        .consent()
        .record_consent(record(
            "s",
            &[("analytics", Decision::Withdrawn)],
            Channel::Web,
        ))
        .await
        .err();
    assert_eq!(write.map(|s| s.code()), Some(Code::Unavailable));
    let batch = server
        .client
        .consent()
        .check_batch(pb::CheckBatchRequest {
            checks: vec![check("s", "analytics"), check("never-seen", "analytics")],
            consistency: None,
        })
        .await
        .err();
    assert_eq!(
        batch.map(|s| s.code()),
        Some(Code::Unavailable),
        "one unanswerable check fails the batch"
    );
    let mut full = check("s", "analytics");
    full.consistency = Some(pb::Consistency {
        requirement: Some(pb::consistency::Requirement::FullyConsistent(true)),
    });
    let full = server.client.check_request_raw(full).await.err();
    assert_eq!(
        full.map(|s| s.code()),
        Some(Code::Unavailable),
        "fully_consistent reads the store"
    );
    server.stop().await;
}

/// The size of the metadata a status travels in (headers or trailers).
fn metadata_bytes(status: &tonic::Status) -> usize {
    let mut headers = http::HeaderMap::new();
    if status.add_header(&mut headers).is_err() {
        return usize::MAX;
    }
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum::<usize>()
        + status.metadata().as_ref().len()
}

/// 60 bad checks, or a 4 MB evidence key, still give an error under 8 KiB of metadata (the
/// default limit of gRPC C-core clients): violations capped and clipped, none lost silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_fit_a_clients_metadata_limit() {
    let server = TestServer::sqlite().await;
    apply_seed_catalog(&server.client).await;
    let batch = pb::CheckBatchRequest {
        checks: (0..60).map(|_| check("", "")).collect(),
        consistency: None,
    };
    let status = server
        .client
        .consent()
        .check_batch(batch)
        .await
        .err()
        .unwrap_or_else(|| panic!("accepted"));
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields = bad_fields(&status);
    assert_eq!(fields.len(), 11, "{fields:?}");
    assert_eq!(fields[0], "checks[0].subject_id");
    assert_eq!(fields[10], "(more)");
    assert!(
        metadata_bytes(&status) < 8 * 1024,
        "{}",
        metadata_bytes(&status)
    );

    let mut req = record("s", &[("analytics", Decision::Granted)], Channel::Web);
    req.evidence = Some(pb::Evidence {
        attributes: [("k".repeat(4 << 20), "v".into())].into(),
        ..Default::default()
    });
    let status = server
        .client
        .consent()
        .record_consent(req)
        .await
        .err()
        .unwrap_or_else(|| panic!("accepted"));
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        metadata_bytes(&status) < 8 * 1024,
        "{}",
        metadata_bytes(&status)
    );
    assert!(bad_fields(&status).iter().all(|f| f.len() <= 128));
    server.stop().await;
}

/// Input an outside probe used: a NUL byte in a key name (PostgreSQL answered UNAVAILABLE with
/// database text), times outside the protobuf range, a 1000-year key lifetime, ids with
/// zero-width, bidi or byte-order-mark characters. Each is INVALID_ARGUMENT naming the field,
/// on every backend, before anything reaches the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_times_and_ids_are_refused_naming_the_field() {
    for server in consent_e2e::backends().await {
        apply_seed_catalog(&server.client).await;
        // The tenant of `auth.mode = none` callers, so a valid key can be created.
        server
            .create_key("default", &[consent_core::access::Scope::ConsentRead], None)
            .await;
        let mut admin = server.client.admin();
        let key = |name: &str, expires_in: Option<i64>| pb::CreateApiKeyRequest {
            name: name.into(),
            scopes: vec!["consent:read".into()],
            expires_in: expires_in.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
            ..Default::default()
        };
        let nul = admin.create_api_key(key("ops\0key", None)).await;
        assert_eq!(rejected_fields(nul), ["name"], "[{}]", server.backend);
        let escape = admin.create_api_key(key("\u{1b}[2Jops", None)).await;
        assert_eq!(rejected_fields(escape), ["name"]);
        let millennium = admin
            .create_api_key(key("ops", Some(1000 * 31_557_600)))
            .await;
        assert_eq!(rejected_fields(millennium), ["expires_in"]);
        let multiline = admin
            .create_api_key(key("ops\tteam\nA", Some(86_400)))
            .await;
        assert!(
            multiline.is_ok(),
            "tab and newline are fine in free text: {multiline:?}"
        );

        for seconds in [-62_135_596_801_i64, 253_402_300_800] {
            let mut req = record("s", &[("analytics", Decision::Granted)], Channel::Web);
            req.collected_at = Some(prost_types::Timestamp { seconds, nanos: 0 });
            expect_record(&server, req, Code::InvalidArgument, &["collected_at"]).await;
            let at = pb::CheckRequest {
                at: Some(prost_types::Timestamp { seconds, nanos: 0 }),
                ..check("s", "analytics")
            };
            expect_check(&server, at, Code::InvalidArgument, Some("at")).await;
        }

        for id in [
            "alice\u{200B}",
            "\u{202E}ecila",
            "\u{FEFF}alice",
            "al\u{AD}ice",
        ] {
            expect_check(
                &server,
                check(id, "analytics"),
                Code::InvalidArgument,
                Some("subject_id"),
            )
            .await;
        }
        server.stop().await;
    }
}

/// PostgreSQL unreachable (the path to it cut, as a partition would): every request answers
/// UNAVAILABLE, never an answer; after a few, the breaker answers at once ("failing fast")
/// instead of each request waiting for a pool connection; once the path is back, a probe
/// finds the database and requests are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_fails_fast_then_recovers() {
    use consent_cache::testing::Relay;
    use consent_server::config::AuthMode;
    use consent_server::server::ServerSettings;
    use std::time::Duration;

    let Some(admin) = consent_store_sql::testing::postgres_test_url() else {
        return;
    };
    let pg_port: u16 = admin
        .split_once('@')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|host_port| host_port.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or(5432);
    let relay = Relay::to(pg_port)
        .await
        .unwrap_or_else(|e| panic!("relay: {e}"));
    let server = TestServer::postgres_through(
        &admin,
        relay.port,
        ServerSettings::with_auth(AuthMode::None),
    )
    .await;
    apply_seed_catalog(&server.client).await;
    let fresh = || pb::CheckRequest {
        consistency: Some(pb::Consistency {
            requirement: Some(pb::consistency::Requirement::FullyConsistent(true)),
        }),
        ..check("s", "analytics")
    };
    assert!(server.client.check_request_raw(fresh()).await.is_ok());

    relay.cut();
    let mut messages = Vec::new();
    for _ in 0..10 {
        match server.client.check_request_raw(fresh()).await {
            Ok(answer) => panic!("answered with the database unreachable: {answer:?}"),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                messages.push(status.message().to_owned());
            }
        }
    }
    assert!(
        messages.iter().any(|m| m.contains("failing fast")),
        "the breaker opened: {messages:?}"
    );

    let _back = Relay::on(relay.port, pg_port)
        .await
        .unwrap_or_else(|e| panic!("relay back: {e}"));
    // The breaker probes after its open window (1 s); bounded retries.
    let mut served = false;
    for _ in 0..100 {
        if server.client.check_request_raw(fresh()).await.is_ok() {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "served again once the database is reachable");
    server.stop().await;
}
