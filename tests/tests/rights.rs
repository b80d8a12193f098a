//! SubjectRightsService end to end on every backend: restriction, objection and GPC change
//! Check answers in the design's order, each change is a ledger record, a request that
//! changes nothing writes nothing, and bad input names its field.

use consent_client::pb::{Channel, Decision, Reason};
use consent_client::{ConsentClient, pb};
use consent_e2e::{apply_seed_catalog, backends, record, rejected_fields};
use tonic::Code;

const SUBJECT: &str = "+32470000042";

async fn reason(client: &ConsentClient, purpose: &str) -> (bool, Reason) {
    let answer = client
        .check(SUBJECT, purpose)
        .await
        .unwrap_or_else(|e| panic!("check {purpose}: {e}"));
    (answer.allowed, answer.reason())
}

fn ok<T>(r: Result<tonic::Response<T>, tonic::Status>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:?}")).into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rights_override_consent_in_order_and_enter_the_ledger() {
    for server in backends().await {
        let b = server.backend;
        let client = &server.client;
        apply_seed_catalog(client).await;
        ok(
            client
                .consent()
                .record_consent(record(
                    SUBJECT,
                    &[
                        ("call_recording", Decision::Granted),
                        ("marketing_communications", Decision::Granted),
                    ],
                    Channel::Voice,
                ))
                .await,
            b,
        );
        assert_eq!(
            reason(client, "call_recording").await,
            (true, Reason::Granted)
        );
        let mut rights = client.rights();

        // Restriction: everything but strictly necessary purposes.
        let restricted = ok(
            rights
                .restrict_processing(pb::RestrictProcessingRequest {
                    subject_id: SUBJECT.into(),
                    reason: "letter of 2026-12-01 contesting accuracy".into(),
                })
                .await,
            b,
        )
        .change
        .unwrap_or_default();
        assert!(restricted.changed, "{b}");
        assert_eq!(restricted.records.len(), 1, "{b}");
        assert!(
            restricted
                .flags
                .as_ref()
                .is_some_and(|f| f.restricted_since.is_some()),
            "{b}"
        );
        assert_eq!(
            reason(client, "call_recording").await,
            (false, Reason::ProcessingRestricted),
            "{b}"
        );
        assert_eq!(
            reason(client, "service_delivery").await,
            (true, Reason::StrictlyNecessary),
            "{b}"
        );
        let again = ok(
            rights
                .restrict_processing(pb::RestrictProcessingRequest {
                    subject_id: SUBJECT.into(),
                    reason: String::new(),
                })
                .await,
            b,
        )
        .change
        .unwrap_or_default();
        assert!(!again.changed && again.records.is_empty(), "{b}: {again:?}");
        let state = ok(
            client
                .consent()
                .get_subject_state(pb::GetSubjectStateRequest {
                    subject_id: SUBJECT.into(),
                    ..Default::default()
                })
                .await,
            b,
        );
        assert!(
            state
                .flags
                .as_ref()
                .is_some_and(|f| f.restricted_since.is_some()),
            "{b}"
        );
        ok(
            rights
                .lift_restriction(pb::LiftRestrictionRequest {
                    subject_id: SUBJECT.into(),
                    reason: "accuracy verified".into(),
                })
                .await,
            b,
        );
        assert_eq!(
            reason(client, "call_recording").await,
            (true, Reason::Granted)
        );

        // Objection: marketing (whatever its basis); refused where it cannot apply.
        ok(
            rights
                .object(pb::ObjectRequest {
                    subject_id: SUBJECT.into(),
                    purpose_ids: vec!["marketing_communications".into()],
                    reason: "by phone".into(),
                })
                .await,
            b,
        );
        assert_eq!(
            reason(client, "marketing_communications").await,
            (false, Reason::Objected),
            "{b}"
        );
        assert_eq!(
            reason(client, "call_recording").await,
            (true, Reason::Granted)
        );
        let cannot = rights
            .object(pb::ObjectRequest {
                subject_id: SUBJECT.into(),
                purpose_ids: vec!["call_recording".into()],
                reason: String::new(),
            })
            .await
            .err()
            .unwrap_or_else(|| panic!("{b}: an objection to a consent purpose"));
        assert_eq!(cannot.code(), Code::FailedPrecondition, "{b}");
        assert!(
            cannot.message().contains("call_recording"),
            "{}",
            cannot.message()
        );
        let unknown = rights
            .object(pb::ObjectRequest {
                subject_id: SUBJECT.into(),
                purpose_ids: vec!["no_such_purpose".into()],
                reason: String::new(),
            })
            .await
            .err()
            .unwrap_or_else(|| panic!("{b}: an unknown purpose"));
        assert_eq!(unknown.code(), Code::NotFound, "{b}");
        ok(
            rights
                .withdraw_objection(pb::WithdrawObjectionRequest {
                    subject_id: SUBJECT.into(),
                    purpose_ids: vec!["marketing_communications".into()],
                    reason: String::new(),
                })
                .await,
            b,
        );
        assert_eq!(
            reason(client, "marketing_communications").await,
            (true, Reason::Granted)
        );

        // GPC: marketing only.
        ok(
            rights
                .set_gpc(pb::SetGpcRequest {
                    subject_id: SUBJECT.into(),
                    enabled: true,
                    reason: "Sec-GPC: 1".into(),
                })
                .await,
            b,
        );
        assert_eq!(
            reason(client, "marketing_communications").await,
            (false, Reason::GpcOptOut),
            "{b}"
        );
        assert_eq!(
            reason(client, "call_recording").await,
            (true, Reason::Granted)
        );
        ok(
            rights
                .set_gpc(pb::SetGpcRequest {
                    subject_id: SUBJECT.into(),
                    enabled: false,
                    reason: String::new(),
                })
                .await,
            b,
        );
        assert_eq!(
            reason(client, "marketing_communications").await,
            (true, Reason::Granted)
        );

        // Every change is in the ledger, in order, and the chain verifies.
        let listed = ok(
            client
                .consent()
                .list_events(pb::ListEventsRequest {
                    subject_id: SUBJECT.into(),
                    ..Default::default()
                })
                .await,
            b,
        );
        let kinds: Vec<pb::LedgerRecordKind> = listed
            .records
            .iter()
            .map(|r| {
                pb::LedgerRecordKind::try_from(r.kind).unwrap_or(pb::LedgerRecordKind::Unspecified)
            })
            .collect();
        assert_eq!(
            kinds,
            [
                pb::LedgerRecordKind::ProcessingRestricted,
                pb::LedgerRecordKind::RestrictionLifted,
                pb::LedgerRecordKind::Objected,
                pb::LedgerRecordKind::ObjectionWithdrawn,
                pb::LedgerRecordKind::GpcSet,
                pb::LedgerRecordKind::GpcCleared,
            ],
            "{b}"
        );
        assert_eq!(
            listed.records[0].detail.get("reason").map(String::as_str),
            Some("letter of 2026-12-01 contesting accuracy")
        );
        let verified = ok(
            client
                .admin()
                .verify_ledger(pb::VerifyLedgerRequest {})
                .await,
            b,
        );
        assert!(verified.ok, "{b}: {verified:?}");

        // Bad input names its field.
        assert_eq!(
            rejected_fields(
                rights
                    .restrict_processing(pb::RestrictProcessingRequest::default())
                    .await
            ),
            ["subject_id"]
        );
        assert_eq!(
            rejected_fields(
                rights
                    .object(pb::ObjectRequest {
                        subject_id: SUBJECT.into(),
                        purpose_ids: vec!["a".into(), "a".into()],
                        reason: "x\u{0}".into(),
                    })
                    .await
            ),
            ["purpose_ids[1]", "reason"]
        );
        server.stop().await;
    }
}
