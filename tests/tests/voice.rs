//! A voice call's consent end to end, on every backend: the consent is recorded with the
//! call's evidence; the recording and the transcript are registered under a campaign that
//! keeps them 30 days; a hand-moved clock passes 30 days (no sleeping); the sweeper runs; the
//! items are due; the recorder attests their deletion; the subject's export tells the whole
//! story (ISO/IEC TS 27560 consent record, items, attestations); the chain verifies.

use std::sync::Arc;
use std::time::Duration;

use consent_client::pb::{Channel, Decision};
use consent_client::{ConsentClient, pb};
use consent_core::{Clock, ManualClock, Timestamp};
use consent_e2e::RawChecks;
use consent_e2e::{TestServer, apply_seed_catalog, apply_seed_retention, record};
use consent_server::config::AuthMode;
use consent_server::convert::timestamp;
use consent_server::server::ServerSettings;
use consent_store_sql::testing::postgres_test_url;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

const CALLER: &str = "+32470123456";
const DAY: i64 = 86_400;
const TRANSCRIPT_SHA256: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn ok<T>(r: Result<tonic::Response<T>, tonic::Status>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:?}")).into_inner()
}

async fn register(client: &ConsentClient, item_id: &str, category: &str, created: Timestamp) {
    ok(
        client
            .retention()
            .register_data_item(pb::RegisterDataItemRequest {
                item_id: item_id.into(),
                subject_id: CALLER.into(),
                data_category: category.into(),
                campaign_id: "spring-calls".into(),
                created_at: Some(timestamp(created)),
                anchor_at: None,
            })
            .await,
        item_id,
    );
}

async fn export(client: &ConsentClient) -> Vec<(String, Value)> {
    let mut stream = ok(
        client
            .rights()
            .export_subject(pb::ExportSubjectRequest {
                subject_id: CALLER.into(),
                ..Default::default()
            })
            .await,
        "export",
    );
    let mut documents = Vec::new();
    // Bounded: a voice subject has a handful of documents; the safety net is not a timing.
    for _ in 0..1000 {
        let next = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .unwrap_or_else(|_| panic!("no export document within the safety net"))
            .unwrap_or_else(|e| panic!("export: {e:?}"));
        let Some(document) = next else { break };
        let json: Value = serde_json::from_str(&document.json)
            .unwrap_or_else(|e| panic!("document is not JSON: {e}"));
        documents.push((document.document_type, json));
    }
    documents
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_call_from_consent_to_attested_deletion() {
    let mut backends = vec!["sqlite"];
    if postgres_test_url().is_some() {
        backends.push("postgres");
    }
    for backend in backends {
        let clock = Arc::new(ManualClock::new(Timestamp::now()));
        let (requests, requests_rx) = watch::channel(0u64);
        let (reports_tx, mut reports) = mpsc::unbounded_channel();
        let settings = ServerSettings {
            clock: Arc::clone(&clock) as Arc<dyn Clock>,
            sweep_interval_secs: 3600,
            sweep_requests: Some(requests_rx),
            sweep_reports: Some(reports_tx),
            ..ServerSettings::with_auth(AuthMode::None)
        };
        let server = match postgres_test_url().filter(|_| backend == "postgres") {
            Some(url) => TestServer::postgres_with(&url, settings).await,
            None => TestServer::sqlite_with(settings).await,
        };
        let b = server.backend;
        let client = &server.client;
        apply_seed_catalog(client).await;
        apply_seed_retention(&server, "default").await;

        // The call: the caller agrees to recording and transcription.
        let mut consent = record(
            CALLER,
            &[
                ("call_recording", Decision::Granted),
                ("ai_transcription", Decision::Granted),
            ],
            Channel::Voice,
        );
        consent.evidence = Some(pb::Evidence {
            call_id: "call-42".into(),
            recording_id: "rec-42".into(),
            transcript_sha256: TRANSCRIPT_SHA256.into(),
            ..Default::default()
        });
        ok(client.consent().record_consent(consent).await, b);

        // The campaign keeps recordings and transcripts 30 days.
        for category in ["call_recording", "ai_transcript"] {
            ok(
                client
                    .retention()
                    .set_retention_rule(pb::SetRetentionRuleRequest {
                        data_category: category.into(),
                        campaign_id: "spring-calls".into(),
                        period: Some(prost_types::Duration {
                            seconds: 30 * DAY,
                            nanos: 0,
                        }),
                        anchor: pb::RetentionAnchor::Created.into(),
                        action: pb::RetentionAction::Delete.into(),
                        legal_basis: "customer's campaign setting: 30 days".into(),
                    })
                    .await,
                b,
            );
        }
        let created = clock.now();
        register(client, "rec-42", "call_recording", created).await;
        register(client, "transcript-42", "ai_transcript", created).await;

        // Thirty days on, the sweeper runs: both items became due.
        clock.advance_secs(30 * DAY);
        requests.send_modify(|n| *n += 1);
        let report = tokio::time::timeout(Duration::from_secs(60), reports.recv())
            .await
            .unwrap_or_else(|_| panic!("{b}: no sweep within the safety net"))
            .unwrap_or_else(|| panic!("{b}: report channel closed"))
            .unwrap_or_else(|e| panic!("{b}: sweep failed: {e}"));
        assert!(report.acted, "{b}: {report:?}");
        let due: Vec<String> = ok(
            client
                .retention()
                .list_due_items(pb::ListDueItemsRequest::default())
                .await,
            b,
        )
        .items
        .into_iter()
        .map(|i| i.item_id)
        .collect();
        assert_eq!(due, ["rec-42", "transcript-42"], "{b}");

        // The recorder deletes them and attests it.
        for item in ["rec-42", "transcript-42"] {
            ok(
                client
                    .retention()
                    .attest_deletion(pb::AttestDeletionRequest {
                        item_id: item.into(),
                        method: "object store delete + key destroyed".into(),
                        deleted_at: Some(timestamp(clock.now())),
                    })
                    .await,
                b,
            );
        }

        // The export tells the whole story.
        let documents = export(client).await;
        let types: Vec<&str> = documents.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(types.first(), Some(&"subject"), "{b}: {types:?}");
        assert_eq!(types.last(), Some(&"end"), "{b}: {types:?}");
        let of = |kind: &str| -> Vec<&Value> {
            documents
                .iter()
                .filter(|(t, _)| t == kind)
                .map(|(_, j)| j)
                .collect()
        };
        let consents = of("consent_record");
        assert_eq!(consents.len(), 2, "{b}");
        let recording = consents
            .iter()
            .find(|c| c["purposes"][0]["purpose_id"] == "call_recording")
            .unwrap_or_else(|| panic!("{b}: no call_recording consent record"));
        // The ISO/IEC TS 27560 core fields.
        assert_eq!(recording["pii_principal_id"], CALLER);
        assert_eq!(recording["controller"]["tenant_id"], "default");
        assert_eq!(recording["notice"]["policy_version_id"], "2025-05");
        assert_eq!(recording["purposes"][0]["legal_basis"], "consent");
        assert_eq!(recording["collection"]["method"], "voice");
        assert_eq!(recording["collection"]["evidence"]["call_id"], "call-42");
        assert_eq!(
            recording["collection"]["evidence"]["transcript_sha256"],
            TRANSCRIPT_SHA256
        );
        assert_eq!(recording["event"]["type"], "granted");
        assert_eq!(recording["state"], "active");
        assert!(recording["validity"]["expires_at"].is_string(), "{b}");
        assert!(recording["retention"]["period_secs"].is_number(), "{b}");
        assert!(recording["withdrawal"]["method"].is_string(), "{b}");
        assert!(recording["proof"]["hash"].is_string(), "{b}");
        let items = of("data_item");
        assert_eq!(items.len(), 2, "{b}");
        assert!(
            items.iter().all(|i| i["status"] == "deleted"),
            "{b}: {items:?}"
        );
        let attestations = of("ledger_record")
            .into_iter()
            .filter(|r| r["kind"] == "deletion_attested")
            .count();
        assert_eq!(attestations, 2, "{b}");
        let end = documents.last().map(|(_, j)| j.clone()).unwrap_or_default();
        assert_eq!(end["consent_records"], 2, "{b}");
        assert_eq!(end["data_items"], 2, "{b}");

        let verified = ok(
            client
                .admin()
                .verify_ledger(pb::VerifyLedgerRequest {})
                .await,
            b,
        );
        assert!(verified.ok, "{b}: {verified:?}");

        // The caller asks to be erased: the story is gone, the proof stays verifiable.
        let erased = ok(
            client
                .rights()
                .erase_subject(pb::EraseSubjectRequest {
                    subject_id: CALLER.into(),
                    reason: "Art. 17 request by phone, ticket 7731".into(),
                    ..Default::default()
                })
                .await,
            b,
        );
        assert!(erased.erased_id.starts_with("erased:"), "{b}: {erased:?}");
        assert!(erased.entries_erased >= 3, "{b}: {erased:?}");
        // Both items were already deleted: none became due.
        assert_eq!((erased.items_due, erased.items_kept_by_law), (0, 0), "{b}");
        let answer = client
            .check_raw(CALLER, "call_recording")
            .await
            .unwrap_or_else(|e| panic!("{b}: check: {e}"));
        assert_eq!(
            (answer.allowed, answer.reason()),
            (false, pb::Reason::SubjectErased),
            "{b}"
        );
        let verified = ok(
            client
                .admin()
                .verify_ledger(pb::VerifyLedgerRequest {})
                .await,
            b,
        );
        assert!(verified.ok, "{b}: {verified:?}");
        let after = export(client).await;
        assert!(
            after
                .iter()
                .all(|(t, _)| t != "consent_record" && t != "data_item"),
            "{b}: {after:?}"
        );
        let subject = &after[0].1;
        assert!(
            subject["flags"]["erased_since"].is_string(),
            "{b}: {subject}"
        );
        let events = ok(
            client
                .consent()
                .list_events(pb::ListEventsRequest {
                    page_size: 100,
                    ..Default::default()
                })
                .await,
            b,
        );
        let text = format!("{events:?}");
        assert!(!text.contains(CALLER), "{b}: the clear id is still listed");
        assert!(
            !text.contains("call-42"),
            "{b}: the evidence is still listed"
        );
        server.stop().await;
    }
}

/// An export tells a withdraw-all for what it did: the grants it overtook are superseded,
/// naming it; and no more than `MAX_CONCURRENT_EXPORTS` exports run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_show_a_withdraw_all_and_are_bounded() {
    let server = TestServer::sqlite().await;
    let client = &server.client;
    apply_seed_catalog(client).await;
    ok(
        client
            .consent()
            .record_consent(record(
                CALLER,
                &[
                    ("analytics", Decision::Granted),
                    ("marketing_communications", Decision::Granted),
                ],
                Channel::Web,
            ))
            .await,
        "grant",
    );
    let withdrawal = ok(
        client
            .consent()
            .withdraw_consent(pb::WithdrawConsentRequest {
                subject_id: CALLER.into(),
                channel: Channel::Web.into(),
                ..Default::default()
            })
            .await,
        "withdraw all",
    );
    let withdraw_all_id = withdrawal.events[0].id.clone();
    let documents = export(client).await;
    let records: Vec<&Value> = documents
        .iter()
        .filter(|(t, _)| t == "consent_record")
        .map(|(_, j)| j)
        .collect();
    assert_eq!(records.len(), 3);
    for grant in records.iter().filter(|r| r["event"]["type"] == "granted") {
        assert_eq!(grant["state"], "superseded", "{grant}");
        assert_eq!(
            grant["withdrawal"]["withdrawn_by_event"],
            withdraw_all_id.as_str()
        );
    }
    let all = records
        .iter()
        .find(|r| r["record_id"] == withdraw_all_id.as_str())
        .unwrap_or_else(|| panic!("the withdraw-all is exported"));
    assert_eq!(all["purposes"][0]["purpose_id"], "");
    assert!(all["purposes"][0]["scope"].is_string(), "{all}");
    assert_eq!(all["state"], "withdrawn");

    // Enough documents that an unread export holds its place: more than the export's buffer
    // and the HTTP/2 windows and send buffers together (40 events of 128 KB of evidence).
    let evidence = pb::Evidence {
        attributes: (0..32)
            .map(|i| (format!("note-{i}"), "x".repeat(4000)))
            .collect(),
        ..Default::default()
    };
    for i in 0..40 {
        let mut grant = record(
            CALLER,
            &[(
                if i % 2 == 0 {
                    "analytics"
                } else {
                    "functional"
                },
                Decision::Granted,
            )],
            Channel::Web,
        );
        grant.evidence = Some(evidence.clone());
        ok(client.consent().record_consent(grant).await, "grant");
    }
    // Each export on its own connection: unread streams fill their connection's window.
    let connect = || async {
        ConsentClient::connect(format!("http://{}", server.addr))
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"))
    };
    let mut held = Vec::new();
    for _ in 0..consent_server::export::MAX_CONCURRENT_EXPORTS {
        let mut stream = ok(
            connect()
                .await
                .rights()
                .export_subject(pb::ExportSubjectRequest {
                    subject_id: CALLER.into(),
                    ..Default::default()
                })
                .await,
            "export",
        );
        // The first document proves the export runs (and holds its place).
        let first = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .unwrap_or_else(|_| panic!("no export document within the safety net"));
        assert!(matches!(first, Ok(Some(_))), "{first:?}");
        held.push(stream);
    }
    let refused = connect()
        .await
        .rights()
        .export_subject(pb::ExportSubjectRequest {
            subject_id: CALLER.into(),
            ..Default::default()
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("one export too many was accepted"));
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    drop(held);
    server.stop().await;
}
