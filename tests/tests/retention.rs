//! RetentionService end to end on every backend: rules within the operator's bounds, items
//! and their status as a hand-moved clock passes their `delete_after`, holds, due lists,
//! attestations in the ledger (ListEvents, Watch, VerifyLedger), and bad input named by field.

use std::sync::Arc;
use std::time::Duration;

use consent_client::{ConsentClient, pb};
use consent_core::{Clock, ManualClock, Timestamp};
use consent_e2e::{TestServer, apply_seed_retention, backends_with, rejected_fields};
use consent_server::config::AuthMode;
use consent_server::convert::timestamp;
use consent_server::server::ServerSettings;
use tonic::Code;

const DAY: i64 = 86_400;

fn settings(clock: &Arc<ManualClock>) -> ServerSettings {
    ServerSettings {
        clock: Arc::clone(clock) as Arc<dyn Clock>,
        ..ServerSettings::with_auth(AuthMode::None)
    }
}

fn days(n: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: n * DAY,
        nanos: 0,
    }
}

fn ok<T>(r: Result<tonic::Response<T>, tonic::Status>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:?}")).into_inner()
}

fn campaign_rule(campaign: &str, period_days: i64) -> pb::SetRetentionRuleRequest {
    pb::SetRetentionRuleRequest {
        data_category: "call_recording".into(),
        campaign_id: campaign.into(),
        period: Some(days(period_days)),
        anchor: pb::RetentionAnchor::Created.into(),
        action: pb::RetentionAction::Delete.into(),
        legal_basis: "customer setting: spring campaign".into(),
    }
}

async fn due_ids(client: &ConsentClient) -> Vec<String> {
    ok(
        client
            .retention()
            .list_due_items(pb::ListDueItemsRequest::default())
            .await,
        "list due items",
    )
    .items
    .into_iter()
    .map(|i| i.item_id)
    .collect()
}

async fn get_item(client: &ConsentClient, item_id: &str) -> pb::DataItem {
    ok(
        client
            .retention()
            .get_data_item(pb::GetDataItemRequest {
                item_id: item_id.into(),
            })
            .await,
        "get data item",
    )
    .item
    .unwrap_or_default()
}

fn status_of(item: &pb::DataItem) -> pb::DataItemStatus {
    pb::DataItemStatus::try_from(item.status).unwrap_or(pb::DataItemStatus::Unspecified)
}

/// An operator registers an item, sees its delete_after, places a hold, lists due items and
/// attests a deletion; the attestation is in the ledger and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_become_due_with_time_and_attestations_enter_the_ledger() {
    let t0 = Timestamp::now();
    let clock = Arc::new(ManualClock::new(t0));
    for server in backends_with(settings(&clock)).await {
        clock.set(t0);
        let b = server.backend;
        apply_seed_retention(&server, "default").await;
        let mut retention = server.client.retention();

        let rules = ok(
            retention
                .list_retention_rules(pb::ListRetentionRulesRequest {})
                .await,
            b,
        );
        let bound = |category: &str| {
            rules
                .defaults
                .iter()
                .find(|d| d.rule.as_ref().is_some_and(|r| r.data_category == category))
                .map(|d| d.bound)
        };
        assert_eq!(rules.defaults.len(), 8, "{b}");
        assert_eq!(bound("billing"), Some(pb::RetentionBound::Minimum.into()));
        assert_eq!(
            bound("call_recording"),
            Some(pb::RetentionBound::Maximum.into())
        );

        // A campaign may shorten recordings to 30 days, never lengthen them past 90.
        ok(
            retention
                .set_retention_rule(campaign_rule("spring", 30))
                .await,
            b,
        );
        let refused = retention
            .set_retention_rule(campaign_rule("spring", 120))
            .await
            .err()
            .unwrap_or_else(|| panic!("a longer period than the legal maximum"));
        assert_eq!(refused.code(), Code::FailedPrecondition, "{b}: {refused:?}");
        assert!(
            refused.message().contains("at most 90 days"),
            "{b}: {}",
            refused.message()
        );

        let registered = ok(
            retention
                .register_data_item(pb::RegisterDataItemRequest {
                    item_id: "rec-1".into(),
                    subject_id: "+32470123456".into(),
                    data_category: "call_recording".into(),
                    campaign_id: "spring".into(),
                    created_at: Some(timestamp(t0)),
                    anchor_at: None,
                })
                .await,
            b,
        );
        let item = registered.item.unwrap_or_default();
        assert_eq!(status_of(&item), pb::DataItemStatus::Keep, "{b}");
        let due_at = Timestamp(t0.as_micros() + 30 * DAY * Timestamp::MICROS_PER_SECOND);
        assert_eq!(item.delete_after, Some(timestamp(due_at)), "{b}");
        assert_eq!(item.action, i32::from(pb::RetentionAction::Delete), "{b}");

        assert!(due_ids(&server.client).await.is_empty(), "{b}");

        // Thirty days on, the item is due whether or not any job ran.
        clock.advance_secs(30 * DAY);
        assert_eq!(
            status_of(&get_item(&server.client, "rec-1").await),
            pb::DataItemStatus::Due,
            "{b}"
        );
        assert_eq!(due_ids(&server.client).await, ["rec-1"], "{b}");

        // A hold keeps it and says why; released, it is due again.
        let hold = ok(
            retention
                .set_legal_hold(pb::SetLegalHoldRequest {
                    scope: Some(pb::set_legal_hold_request::Scope::ItemId("rec-1".into())),
                    reason: "court order 2026/17".into(),
                    until: None,
                })
                .await,
            b,
        )
        .hold
        .unwrap_or_default();
        let held = get_item(&server.client, "rec-1").await;
        assert_eq!(status_of(&held), pb::DataItemStatus::Hold, "{b}");
        assert!(
            held.reason.contains("court order 2026/17"),
            "{b}: {}",
            held.reason
        );
        assert!(due_ids(&server.client).await.is_empty(), "{b}");
        let listed = ok(
            retention
                .list_legal_holds(pb::ListLegalHoldsRequest::default())
                .await,
            b,
        );
        assert_eq!(listed.holds.len(), 1, "{b}");
        ok(
            retention
                .release_legal_hold(pb::ReleaseLegalHoldRequest {
                    hold_id: hold.hold_id.clone(),
                })
                .await,
            b,
        );
        assert_eq!(due_ids(&server.client).await, ["rec-1"], "{b}");

        // The recorder attests the deletion: a ledger record, the item DELETED for good.
        let deleted_at = timestamp(clock.now());
        let attested = ok(
            retention
                .attest_deletion(pb::AttestDeletionRequest {
                    item_id: "rec-1".into(),
                    method: "object store delete + key destroyed".into(),
                    deleted_at: Some(deleted_at),
                })
                .await,
            b,
        );
        assert!(!attested.replayed, "{b}");
        let record = attested.record.clone().unwrap_or_default();
        assert_eq!(
            record.kind,
            i32::from(pb::LedgerRecordKind::DeletionAttested),
            "{b}"
        );
        assert_eq!(
            record
                .detail
                .get("status_at_attestation")
                .map(String::as_str),
            Some("due")
        );
        assert_eq!(
            status_of(&attested.item.clone().unwrap_or_default()),
            pb::DataItemStatus::Deleted,
            "{b}"
        );
        let again = ok(
            retention
                .attest_deletion(pb::AttestDeletionRequest {
                    item_id: "rec-1".into(),
                    method: "retry".into(),
                    deleted_at: Some(deleted_at),
                })
                .await,
            b,
        );
        assert!(again.replayed, "{b}");
        assert_eq!(again.revision, attested.revision, "{b}");
        assert!(due_ids(&server.client).await.is_empty(), "{b}");

        // The record is in the ledger: ListEvents, Watch, and a chain that verifies.
        let listed = ok(
            server
                .client
                .consent()
                .list_events(pb::ListEventsRequest::default())
                .await,
            b,
        );
        assert_eq!(listed.records, std::slice::from_ref(&record), "{b}");
        let mut watch = ok(
            server
                .client
                .consent()
                .watch(pb::WatchRequest::default())
                .await,
            b,
        );
        let first = tokio::time::timeout(Duration::from_secs(60), watch.message())
            .await
            .unwrap_or_else(|_| panic!("{b}: no Watch message within the safety net"))
            .unwrap_or_else(|e| panic!("{b}: {e:?}"))
            .unwrap_or_default();
        assert_eq!(first.records.len(), 1, "{b}: {first:?}");
        assert_eq!(first.records[0].hash, record.hash, "{b}");
        assert!(
            first.records[0].detail.is_empty(),
            "Watch leaves the detail out"
        );
        let verified = ok(
            server
                .client
                .admin()
                .verify_ledger(pb::VerifyLedgerRequest {})
                .await,
            b,
        );
        assert!(verified.ok, "{b}: {verified:?}");
        server.stop().await;
    }
}

/// Every retention RPC names the fields it refuses; unknown items and categories get their
/// own codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_rpcs_name_their_bad_fields() {
    let clock = Arc::new(ManualClock::new(Timestamp::now()));
    let server = TestServer::sqlite_with(settings(&clock)).await;
    apply_seed_retention(&server, "default").await;
    let mut retention = server.client.retention();
    let far_future = timestamp(Timestamp(
        clock.now().as_micros() + DAY * Timestamp::MICROS_PER_SECOND,
    ));

    let fields = rejected_fields(
        retention
            .set_retention_rule(pb::SetRetentionRuleRequest::default())
            .await,
    );
    for field in ["period", "anchor", "action", "data_category", "legal_basis"] {
        assert!(fields.contains(&field.to_owned()), "{field} in {fields:?}");
    }
    let mut fraction = campaign_rule("", 1);
    fraction.period = Some(prost_types::Duration {
        seconds: 10,
        nanos: 500_000_000,
    });
    assert_eq!(
        rejected_fields(retention.set_retention_rule(fraction).await),
        ["period"]
    );
    let mut negative = campaign_rule("", 1);
    negative.period = Some(prost_types::Duration {
        seconds: -5,
        nanos: 0,
    });
    assert_eq!(
        rejected_fields(retention.set_retention_rule(negative).await),
        ["period"]
    );

    let fields = rejected_fields(
        retention
            .register_data_item(pb::RegisterDataItemRequest {
                item_id: String::new(),
                subject_id: "a\u{200b}b".into(),
                data_category: "x".repeat(300),
                campaign_id: String::new(),
                created_at: Some(far_future),
                anchor_at: None,
            })
            .await,
    );
    for field in ["item_id", "subject_id", "data_category", "created_at"] {
        assert!(fields.contains(&field.to_owned()), "{field} in {fields:?}");
    }
    let missing = rejected_fields(
        retention
            .register_data_item(pb::RegisterDataItemRequest {
                item_id: "i".into(),
                subject_id: "s".into(),
                data_category: "call_recording".into(),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(missing, ["created_at"]);
    let no_rule = retention
        .register_data_item(pb::RegisterDataItemRequest {
            item_id: "i".into(),
            subject_id: "s".into(),
            data_category: "holiday_photos".into(),
            created_at: Some(timestamp(clock.now())),
            ..Default::default()
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("no rule covers the category"));
    assert_eq!(no_rule.code(), Code::FailedPrecondition);
    assert!(
        no_rule.message().contains("holiday_photos"),
        "{}",
        no_rule.message()
    );

    assert_eq!(
        rejected_fields(
            retention
                .get_data_item(pb::GetDataItemRequest::default())
                .await
        ),
        ["item_id"]
    );
    let unknown = retention
        .get_data_item(pb::GetDataItemRequest {
            item_id: "nope".into(),
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("unknown item"));
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(
        rejected_fields(
            retention
                .update_anchor(pb::UpdateAnchorRequest::default())
                .await
        ),
        ["item_id", "anchor_at"]
    );
    // Times before the item existed are refused, naming the field.
    let ticket_created = timestamp(clock.now());
    retention
        .register_data_item(pb::RegisterDataItemRequest {
            item_id: "ticket-9".into(),
            subject_id: "s".into(),
            data_category: "support_ticket".into(),
            created_at: Some(ticket_created),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("register: {e}"));
    let year_one = prost_types::Timestamp {
        seconds: Timestamp::MIN_SECONDS,
        nanos: 0,
    };
    assert_eq!(
        rejected_fields(
            retention
                .update_anchor(pb::UpdateAnchorRequest {
                    item_id: "ticket-9".into(),
                    anchor_at: Some(year_one),
                })
                .await
        ),
        ["anchor_at"]
    );
    assert_eq!(
        rejected_fields(
            retention
                .attest_deletion(pb::AttestDeletionRequest {
                    item_id: "ticket-9".into(),
                    method: "rm".into(),
                    deleted_at: Some(year_one),
                })
                .await
        ),
        ["deleted_at"]
    );
    assert_eq!(
        rejected_fields(
            retention
                .set_legal_hold(pb::SetLegalHoldRequest::default())
                .await
        ),
        ["scope", "reason"]
    );
    let past = timestamp(Timestamp(clock.now().as_micros() - 1));
    assert_eq!(
        rejected_fields(
            retention
                .set_legal_hold(pb::SetLegalHoldRequest {
                    scope: Some(pb::set_legal_hold_request::Scope::SubjectId("s".into())),
                    reason: "order".into(),
                    until: Some(past),
                })
                .await
        ),
        ["until"]
    );
    assert_eq!(
        rejected_fields(
            retention
                .release_legal_hold(pb::ReleaseLegalHoldRequest::default())
                .await
        ),
        ["hold_id"]
    );
    assert_eq!(
        rejected_fields(
            retention
                .list_due_items(pb::ListDueItemsRequest {
                    page_size: -1,
                    page_token: "garbage".into(),
                    ..Default::default()
                })
                .await
        ),
        ["page_size", "page_token"]
    );
    assert_eq!(
        rejected_fields(
            retention
                .attest_deletion(pb::AttestDeletionRequest {
                    item_id: String::new(),
                    method: " ".into(),
                    deleted_at: Some(far_future),
                })
                .await
        ),
        ["item_id", "method", "deleted_at"]
    );
    server.stop().await;
}
