//! The retention sweeper end to end: two replicas on one ledger, runs asked for by the test
//! (no waiting for an interval), time moved by hand. Exactly one replica acts per run; it
//! writes an expiry record for a grant whose validity ended and a summary of the tenant's
//! items; a second run in the same slot does nothing; the chain verifies.

use std::sync::Arc;
use std::time::Duration;

use consent_client::pb;
use consent_client::pb::{Channel, Decision};
use consent_core::{Clock, ManualClock, Timestamp};
use consent_e2e::{TestServer, apply_seed_catalog, apply_seed_retention, record};
use consent_server::config::AuthMode;
use consent_server::convert::timestamp;
use consent_server::server::ServerSettings;
use consent_server::sweeper::SweepReport;
use consent_store_sql::testing::postgres_test_url;
use tokio::sync::{mpsc, watch};

const DAY: i64 = 86_400;
const INTERVAL: i64 = 3600;

/// Asks every replica for a run and collects their `replicas` reports.
async fn run_everywhere(
    requests: &watch::Sender<u64>,
    reports: &mut mpsc::UnboundedReceiver<consent_core::Result<SweepReport>>,
    replicas: usize,
) -> Vec<SweepReport> {
    requests.send_modify(|n| *n += 1);
    let mut got = Vec::new();
    for _ in 0..replicas {
        let report = tokio::time::timeout(Duration::from_secs(60), reports.recv())
            .await
            .unwrap_or_else(|_| panic!("no sweep report within the safety net"))
            .unwrap_or_else(|| panic!("the report channel closed"))
            .unwrap_or_else(|e| panic!("sweep failed: {e}"));
        got.push(report);
    }
    got
}

fn acted(reports: &[SweepReport]) -> Vec<&SweepReport> {
    reports.iter().filter(|r| r.acted).collect()
}

fn kind(r: &pb::LedgerRecord) -> pb::LedgerRecordKind {
    pb::LedgerRecordKind::try_from(r.kind).unwrap_or(pb::LedgerRecordKind::Unspecified)
}

/// Settings whose sweeper runs when asked (and reports to the returned channel), by `clock`.
fn sweeping(
    clock: &Arc<ManualClock>,
) -> (
    ServerSettings,
    watch::Sender<u64>,
    mpsc::UnboundedReceiver<consent_core::Result<SweepReport>>,
) {
    let (requests, requests_rx) = watch::channel(0u64);
    let (reports_tx, reports) = mpsc::unbounded_channel();
    let settings = ServerSettings {
        clock: Arc::clone(clock) as Arc<dyn Clock>,
        sweep_interval_secs: INTERVAL.unsigned_abs(),
        sweep_requests: Some(requests_rx),
        sweep_reports: Some(reports_tx),
        ..ServerSettings::with_auth(AuthMode::None)
    };
    (settings, requests, reports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_sweeper_per_run() {
    let mut backends = vec!["sqlite"];
    if postgres_test_url().is_some() {
        backends.push("postgres");
    }
    for backend in backends {
        // Each backend's pair of replicas has its own channels: runs and reports of one
        // ledger only.
        let clock = Arc::new(ManualClock::new(Timestamp::now()));
        let (settings, requests, mut reports) = sweeping(&clock);
        let server = match postgres_test_url().filter(|_| backend == "postgres") {
            Some(url) => TestServer::postgres_with(&url, settings).await,
            None => TestServer::sqlite_with(settings).await,
        };
        let b = server.backend;
        let replica = server.replica().await;
        apply_seed_catalog(&server.client).await;
        apply_seed_retention(&server, "default").await;
        // A grant valid 6 months (the purpose's validity) and a recording kept 90 days.
        server
            .client
            .consent()
            .record_consent(record(
                "+32470000001",
                &[("call_recording", Decision::Granted)],
                Channel::Voice,
            ))
            .await
            .unwrap_or_else(|e| panic!("{b}: {e}"));
        server
            .client
            .retention()
            .register_data_item(pb::RegisterDataItemRequest {
                item_id: "rec-1".into(),
                subject_id: "+32470000001".into(),
                data_category: "call_recording".into(),
                created_at: Some(timestamp(clock.now())),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{b}: {e}"));

        // Another caller granted, then withdrew everything: nothing of theirs can expire.
        server
            .client
            .consent()
            .record_consent(record(
                "+32470000002",
                &[("call_recording", Decision::Granted)],
                Channel::Voice,
            ))
            .await
            .unwrap_or_else(|e| panic!("{b}: {e}"));
        server
            .client
            .consent()
            .withdraw_consent(pb::WithdrawConsentRequest {
                subject_id: "+32470000002".into(),
                channel: Channel::Web.into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{b}: {e}"));

        // 200 days on: the grant lapsed, the recording is due. One replica acts.
        clock.advance_secs(200 * DAY);
        let first = run_everywhere(&requests, &mut reports, 2).await;
        let winners = acted(&first);
        assert_eq!(winners.len(), 1, "{b}: exactly one replica acts: {first:?}");
        let tenant = &winners[0].tenants;
        assert_eq!(tenant.len(), 1, "{b}: {tenant:?}");
        assert_eq!(tenant[0].consents_expired, 1, "{b}");
        assert!(tenant[0].summary_revision.is_some(), "{b}");

        let listed = server
            .client
            .consent()
            .list_events(pb::ListEventsRequest::default())
            .await
            .unwrap_or_else(|e| panic!("{b}: {e}"))
            .into_inner();
        let kinds: Vec<_> = listed.records.iter().map(kind).collect();
        assert_eq!(
            kinds,
            [
                pb::LedgerRecordKind::ConsentExpired,
                pb::LedgerRecordKind::RetentionSweep
            ],
            "{b}"
        );
        let expiry = &listed.records[0];
        assert_eq!(expiry.subject_id, "+32470000001");
        assert_eq!(expiry.purpose_id, "call_recording");
        assert_eq!(
            expiry.detail.get("event_id"),
            Some(&listed.events[0].id),
            "{b}: the expiry names the grant"
        );
        assert!(
            listed
                .records
                .iter()
                .all(|r| r.subject_id != "+32470000002"),
            "{b}: a grant overtaken by a withdraw-all does not expire"
        );
        let summary = &listed.records[1].detail;
        assert_eq!(
            summary.get("items_became_due").map(String::as_str),
            Some("1"),
            "{b}"
        );
        assert_eq!(
            summary.get("items_due").map(String::as_str),
            Some("1"),
            "{b}"
        );
        assert_eq!(
            summary.get("consents_expired").map(String::as_str),
            Some("1"),
            "{b}"
        );

        // The same slot again: nobody acts.
        let again = run_everywhere(&requests, &mut reports, 2).await;
        assert!(acted(&again).is_empty(), "{b}: {again:?}");

        // An item registered already past its period became due since the last run too.
        server
            .client
            .retention()
            .register_data_item(pb::RegisterDataItemRequest {
                item_id: "rec-old".into(),
                subject_id: "+32470000001".into(),
                data_category: "call_recording".into(),
                created_at: Some(timestamp(Timestamp(
                    clock.now().as_micros() - 100 * DAY * Timestamp::MICROS_PER_SECOND,
                ))),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{b}: {e}"));

        // The next slot: one replica acts; the expiry is not announced twice.
        clock.advance_secs(INTERVAL);
        let next = run_everywhere(&requests, &mut reports, 2).await;
        let winners = acted(&next);
        assert_eq!(winners.len(), 1, "{b}: {next:?}");
        assert_eq!(winners[0].tenants.len(), 1, "{b}: {next:?}");
        assert_eq!(winners[0].tenants[0].consents_expired, 0, "{b}");
        let records = server
            .client
            .consent()
            .list_events(pb::ListEventsRequest::default())
            .await
            .unwrap_or_else(|e| panic!("{b}: {e}"))
            .into_inner()
            .records;
        assert_eq!(records.len(), 3, "{b}: {records:?}");
        let latest = &records[2].detail;
        assert_eq!(
            latest.get("items_became_due").map(String::as_str),
            Some("1"),
            "{b}: rec-old, counted once; rec-1 was reported by the first run"
        );
        assert_eq!(
            latest.get("items_due").map(String::as_str),
            Some("2"),
            "{b}"
        );

        let verified = server
            .client
            .admin()
            .verify_ledger(pb::VerifyLedgerRequest {})
            .await
            .unwrap_or_else(|e| panic!("{b}: {e}"))
            .into_inner();
        assert!(verified.ok, "{b}: {verified:?}");
        replica.stop().await;
        server.stop().await;
    }
}
