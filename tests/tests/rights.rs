//! SubjectRightsService end to end on every backend: restriction, objection and GPC change
//! Check answers in the design's order, each change is a ledger record, a request that
//! changes nothing writes nothing, and bad input names its field.

use consent_client::pb::{Channel, Decision, Reason};
use consent_client::{ConsentClient, pb};
use consent_e2e::RawChecks;
use consent_e2e::{apply_seed_catalog, backends, record, rejected_fields};
use tonic::Code;

const SUBJECT: &str = "+32470000042";

async fn reason(client: &ConsentClient, purpose: &str) -> (bool, Reason) {
    let answer = client
        .check_raw(SUBJECT, purpose)
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
                    identity: None,
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
                    identity: None,
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
                    identity: None,
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
                    identity: None,
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
                identity: None,
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
        // Strictly necessary on legitimate interest: the refusal says which part rules it out.
        let necessary = rights
            .object(pb::ObjectRequest {
                subject_id: SUBJECT.into(),
                identity: None,
                purpose_ids: vec!["security".into()],
                reason: String::new(),
            })
            .await
            .err()
            .unwrap_or_else(|| panic!("{b}: an objection to a strictly necessary purpose"));
        assert_eq!(necessary.code(), Code::FailedPrecondition, "{b}");
        assert!(
            necessary.message().contains("not strictly necessary"),
            "{}",
            necessary.message()
        );
        let unknown = rights
            .object(pb::ObjectRequest {
                subject_id: SUBJECT.into(),
                identity: None,
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
                    identity: None,
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
                    identity: None,
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
                    identity: None,
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
                        identity: None,
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

/// Erasure end to end on every backend: Checks answer SUBJECT_ERASED (strictly necessary
/// purposes too), the state shows when, writes for the id are refused, items become due
/// unless kept by law (which they say), another tenant's same id is untouched, the ledger
/// verifies, a repeat changes nothing, and bad input names its field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_subject_is_denied_everywhere_and_the_ledger_verifies() {
    let settings =
        consent_server::server::ServerSettings::with_auth(consent_server::config::AuthMode::ApiKey);
    for server in consent_e2e::backends_with(settings).await {
        let b = server.backend;
        let client = server
            .client_for("acme", consent_core::access::Scope::ALL)
            .await;
        let other = server
            .client_for("globex", consent_core::access::Scope::ALL)
            .await;
        for c in [&client, &other] {
            apply_seed_catalog(c).await;
            ok(
                c.consent()
                    .record_consent(record(
                        SUBJECT,
                        &[("call_recording", Decision::Granted)],
                        Channel::Voice,
                    ))
                    .await,
                b,
            );
        }
        consent_e2e::apply_seed_retention(&server, "acme").await;
        for (item, category) in [("rec-1", "call_recording"), ("bill-1", "billing")] {
            ok(
                client
                    .retention()
                    .register_data_item(pb::RegisterDataItemRequest {
                        item_id: item.into(),
                        subject_id: SUBJECT.into(),
                        data_category: category.into(),
                        campaign_id: String::new(),
                        created_at: Some(consent_e2e::days_ago(1)),
                        anchor_at: None,
                    })
                    .await,
                b,
            );
        }

        // Bad input names its field; the reserved prefix is refused everywhere.
        let mut rights = client.rights();
        let bad = rights
            .erase_subject(pb::EraseSubjectRequest::default())
            .await;
        assert_eq!(rejected_fields(bad), ["subject_id", "reason"], "{b}");
        let blank = rights
            .erase_subject(pb::EraseSubjectRequest {
                subject_id: SUBJECT.into(),
                reason: "\u{200b}\u{feff} ".into(),
                ..Default::default()
            })
            .await;
        assert_eq!(rejected_fields(blank), ["reason"], "{b}");
        let bad = client
            .consent()
            .record_consent(record(
                "erased:0000",
                &[("analytics", Decision::Granted)],
                Channel::Web,
            ))
            .await;
        assert_eq!(rejected_fields(bad), ["subject_id"], "{b}");

        let erased = ok(
            rights
                .erase_subject(pb::EraseSubjectRequest {
                    subject_id: SUBJECT.into(),
                    reason: "Art. 17 request #4711".into(),
                    ..Default::default()
                })
                .await,
            b,
        );
        assert!(!erased.already_erased, "{b}");
        assert_eq!((erased.items_due, erased.items_kept_by_law), (1, 1), "{b}");
        for purpose in [
            "call_recording",
            "service_delivery",
            "marketing_communications",
        ] {
            assert_eq!(
                reason(&client, purpose).await,
                (false, Reason::SubjectErased),
                "{b}: {purpose}"
            );
        }
        // The other tenant's person with the same id is another person.
        let answer = other
            .check_raw(SUBJECT, "call_recording")
            .await
            .unwrap_or_else(|e| panic!("{b}: {e}"));
        assert_eq!((answer.allowed, answer.reason()), (true, Reason::Granted));
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
                .is_some_and(|f| f.erased_since.is_some()),
            "{b}: {state:?}"
        );

        // Items: the recording is due at once, the bill is kept by law and says so.
        let item = |id: &str| {
            let mut retention = client.retention();
            let id = id.to_owned();
            async move {
                ok(
                    retention
                        .get_data_item(pb::GetDataItemRequest { item_id: id })
                        .await,
                    "get item",
                )
                .item
                .unwrap_or_default()
            }
        };
        let rec = item("rec-1").await;
        assert_eq!(rec.status(), pb::DataItemStatus::Due, "{b}: {rec:?}");
        assert!(rec.reason.contains("erased"), "{b}: {rec:?}");
        let bill = item("bill-1").await;
        assert_eq!(bill.status(), pb::DataItemStatus::Keep, "{b}: {bill:?}");
        assert!(bill.reason.contains("legal obligation"), "{b}: {bill:?}");

        // Every write for the id is refused, for what it is.
        let refused = client
            .consent()
            .record_consent(record(
                SUBJECT,
                &[("analytics", Decision::Granted)],
                Channel::Web,
            ))
            .await
            .err()
            .unwrap_or_else(|| panic!("{b}: a consent for an erased subject was recorded"));
        assert_eq!(refused.code(), Code::FailedPrecondition, "{b}: {refused:?}");
        assert!(refused.message().contains("erased"), "{b}: {refused:?}");
        let refused = rights
            .set_gpc(pb::SetGpcRequest {
                subject_id: SUBJECT.into(),
                identity: None,
                enabled: true,
                reason: String::new(),
            })
            .await
            .err()
            .unwrap_or_else(|| panic!("{b}: a flag for an erased subject was recorded"));
        assert_eq!(refused.code(), Code::FailedPrecondition, "{b}: {refused:?}");

        // A repeat changes nothing; the ledger verifies.
        let again = ok(
            rights
                .erase_subject(pb::EraseSubjectRequest {
                    subject_id: SUBJECT.into(),
                    reason: "duplicate request".into(),
                    ..Default::default()
                })
                .await,
            b,
        );
        assert!(again.already_erased, "{b}");
        assert_eq!(
            (&again.erased_id, again.revision),
            (&erased.erased_id, erased.revision),
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
        server.stop().await;
    }
}
