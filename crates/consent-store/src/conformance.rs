//! The conformance suite every [`Store`] backend runs, so SQLite, PostgreSQL and cached
//! stacks are proven to behave the same.
//!
//! A backend's test file invokes [`store_conformance_suite!`](crate::store_conformance_suite)
//! with an async factory returning a [`TestStore`]. Each case uses its own random tenant, so
//! cases can share one database and run in parallel.

use std::any::Any;
use std::sync::Arc;

use consent_core::access::{KEY_RANDOM_BYTES, Scope, issue_key, new_tenant};
use consent_core::chain::GENESIS;
use consent_core::commands::{Idempotency, new_event_id};
use consent_core::{
    Channel, ConsentError, Cookie, Decision, Evidence, LegalBasis, NewEvent, PolicyVersion,
    Purpose, PurposeCategory, SUBJECT_WIDE, SubjectState, Timestamp, Vendor,
};

use crate::{
    AppendOutcome, CacheFence, Consistency, EventQuery, FenceRecord, Store, verify_ledger,
};

pub use crate::conformance_identity::*;
pub use crate::conformance_merge::*;
pub use crate::conformance_retention::*;
pub use crate::conformance_snapshot::*;

/// The value of a test environment variable naming a service (a database, a Redis), or
/// `None` after printing a notice that the tests needing it are skipped. Under `CI=true` a
/// missing value panics: CI must run every test.
pub fn service_from_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but {var} is not set: the tests that need it must run in CI"
            );
            eprintln!("notice: skipping tests that need {var}; set it to run them");
            None
        }
    }
}

/// A store under test and whatever must live as long as it (a temp dir, a server).
pub struct TestStore {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Dropped after the case.
    pub guard: Box<dyn Any + Send>,
}

impl std::fmt::Debug for TestStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestStore")
    }
}

/// Generates one `#[tokio::test]` per conformance case, each calling `$factory().await`.
#[macro_export]
macro_rules! store_conformance_suite {
    ($factory:expr) => {
        $crate::store_conformance_suite!(@cases $factory;
            catalog_round_trip,
            policy_versions_are_immutable,
            append_links_the_chain_and_bumps_the_revision,
            projection_keeps_the_latest_collected_choice,
            as_of_state_reads_the_past,
            history_holds_every_choice,
            batch_state_reads_match_single_reads,
            a_tie_of_collection_times_goes_to_the_refusal,
            idempotent_replay_returns_the_original_write,
            a_subject_wide_withdrawal_is_projected_and_listed,
            list_events_filters_and_pages,
            tenants_are_isolated,
            concurrent_appends_keep_the_chain_whole,
            concurrent_keyed_writes_each_get_their_own_answer,
            a_write_the_database_refuses_fails_alone,
            tenants_are_created_once,
            api_keys_belong_to_their_tenant,
            commits_wake_subscribers,
            catalog_version_grows_with_each_write,
            fences_are_recorded_in_commit_order,
            a_write_told_in_another_namespace_is_fenced,
            retention_rules_resolve_by_campaign_within_the_bounds,
            data_items_register_once_and_need_a_rule,
            due_items_page_in_order_and_skip_held_items,
            an_attestation_is_a_ledger_record_and_final,
            retention_is_tenant_scoped,
            flags_are_projected_with_the_state,
            erasure_keeps_the_chain_and_refuses_the_subject,
            a_snapshot_scan_reads_every_subject_at_one_revision,
            a_subject_erased_during_a_scan_is_left_out,
            an_identity_links_to_one_subject_with_a_ledger_record,
            a_tenant_gets_its_identity_key_before_any_write,
            unlinking_frees_an_identity,
            identities_are_tenant_scoped,
            erasure_drops_the_subjects_identities,
            a_subject_holds_a_bounded_number_of_identities,
            a_write_by_identity_lands_where_the_identity_stands_at_commit,
            a_merge_keeps_every_withdrawal,
            a_merged_subject_is_closed,
            carrying_choices_merges_the_implicit_subject,
            a_snapshot_answers_for_a_merged_group,
        );
    };
    (@cases $factory:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(test_store) = $factory().await else { return };
                $crate::conformance::$case(&test_store.store).await;
            }
        )+
    };
}

pub(crate) fn tenant() -> String {
    format!("t-{}", uuid::Uuid::now_v7())
}

pub(crate) const DAY: i64 = 86_400 * Timestamp::MICROS_PER_SECOND;

pub(crate) fn day(n: i64) -> Timestamp {
    Timestamp(n * DAY)
}

fn purpose(id: &str, vendors: &[&str]) -> Purpose {
    Purpose {
        id: id.into(),
        name: format!("Purpose {id}"),
        description: "what it does".into(),
        category: PurposeCategory::Analytics,
        legal_basis: LegalBasis::Consent,
        vendor_ids: vendors.iter().map(|v| (*v).to_string()).collect(),
        validity_secs: Some(180 * 86_400),
    }
}

fn policy(id: &str, published: Timestamp) -> PolicyVersion {
    PolicyVersion {
        id: id.into(),
        published_at: published,
        purpose_ids: vec!["analytics".into(), "call_recording".into()],
        vendor_ids: vec!["ga4".into()],
        material: false,
        changed_purpose_ids: vec![],
        text_sha256: String::new(),
    }
}

pub(crate) fn event(
    subject: &str,
    purpose: &str,
    vendor: &str,
    decision: Decision,
    at: Timestamp,
) -> NewEvent {
    NewEvent {
        id: new_event_id(),
        subject_id: subject.into(),
        purpose_id: purpose.into(),
        vendor_id: vendor.into(),
        decision,
        policy_version_id: "v1".into(),
        channel: Channel::Voice,
        collected_at: at,
        expires_at: None,
        evidence: Evidence {
            call_id: "call-1".into(),
            ip_address: "192.0.2.1".into(),
            attributes: [("banner".to_string(), "v3".to_string())].into(),
            ..Evidence::default()
        },
        actor_key_id: "key-1".into(),
    }
}

pub(crate) async fn append(store: &Arc<dyn Store>, tenant: &str, events: Vec<NewEvent>) -> i64 {
    match store.append(tenant, &events, None, CacheFence::None).await {
        Ok(outcome) => outcome.revision,
        Err(e) => panic!("append failed: {e}"),
    }
}

pub(crate) fn ok<T>(r: consent_core::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("store call failed: {e}"))
}

/// Purposes, vendors and policy versions are stored, replaced and listed per tenant.
pub async fn catalog_round_trip(store: &Arc<dyn Store>) {
    let t = tenant();
    assert_eq!(
        *ok(store.catalog(&t, Consistency::default()).await),
        consent_core::Catalog::default()
    );
    let vendor = Vendor {
        id: "ga4".into(),
        name: "Google Analytics 4".into(),
        cookies: vec![Cookie {
            name: "_ga".into(),
            domain: ".example.com".into(),
            duration_secs: Some(34_190_208),
            purpose_id: "analytics".into(),
        }],
    };
    ok(store.upsert_vendor(&t, &vendor).await);
    ok(store
        .upsert_purpose(&t, &purpose("analytics", &["ga4"]))
        .await);
    let mut changed = purpose("analytics", &[]);
    changed.name = "Renamed".into();
    ok(store.upsert_purpose(&t, &changed).await);
    ok(store
        .upsert_purpose(&t, &purpose("call_recording", &[]))
        .await);
    ok(store
        .publish_policy_version(&t, &policy("v2", day(20)))
        .await);
    ok(store
        .publish_policy_version(&t, &policy("v1", day(10)))
        .await);

    let catalog = ok(store.catalog(&t, Consistency::default()).await);
    assert_eq!(catalog.vendors.get("ga4"), Some(&vendor));
    assert_eq!(catalog.purposes.get("analytics"), Some(&changed));
    assert_eq!(catalog.purposes.len(), 2);
    let ids: Vec<_> = catalog
        .policy_versions
        .iter()
        .map(|p| p.id.as_str())
        .collect();
    assert_eq!(ids, ["v1", "v2"], "policy versions are listed oldest first");
}

/// Republishing identical content is a no-op; different content is `AlreadyExists`.
pub async fn policy_versions_are_immutable(store: &Arc<dyn Store>) {
    let t = tenant();
    let v1 = policy("v1", day(1));
    assert_eq!(ok(store.publish_policy_version(&t, &v1).await), v1);
    assert_eq!(ok(store.publish_policy_version(&t, &v1).await), v1);
    let mut other = v1.clone();
    other.material = true;
    other.changed_purpose_ids = vec!["analytics".into()];
    match store.publish_policy_version(&t, &other).await {
        Err(ConsentError::AlreadyExists(msg)) => assert!(msg.contains("v1"), "{msg}"),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(
        ok(store.catalog(&t, Consistency::default()).await).policy_versions,
        vec![v1]
    );
}

/// Revisions count up from 1 per tenant and each event links to the previous hash.
pub async fn append_links_the_chain_and_bumps_the_revision(store: &Arc<dyn Store>) {
    let t = tenant();
    assert_eq!(ok(store.head(&t).await).revision, 0);
    let first = ok(store
        .append(
            &t,
            &[
                event("alice", "analytics", "", Decision::Granted, day(1)),
                event("alice", "call_recording", "", Decision::Denied, day(1)),
            ],
            None,
            CacheFence::None,
        )
        .await);
    assert_eq!(first.revision, 2);
    assert!(!first.replayed);
    assert_eq!(first.events[0].revision, 1);
    assert_eq!(first.events[0].prev_hash, GENESIS);
    assert_eq!(first.events[1].prev_hash, first.events[0].hash);
    let second = append(
        store,
        &t,
        vec![event("bob", "analytics", "", Decision::Granted, day(2))],
    )
    .await;
    assert_eq!(second, 3);

    let head = ok(store.head(&t).await);
    assert_eq!(head.revision, 3);
    let all = ok(store
        .list_events(
            &t,
            &EventQuery {
                limit: 10,
                ..EventQuery::default()
            },
        )
        .await);
    assert_eq!(all.len(), 3);
    assert_eq!(all[2].event.hash, head.hash);
    assert_eq!(
        all[0].event, first.events[0],
        "events read back exactly as written"
    );
    let (report, _) = ok(verify_ledger(store.as_ref(), &t).await);
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked, 3);
}

/// Alice grants on day 1 and withdraws on day 5; then an import of a grant she gave on day 3
/// arrives. Returns the import's revision.
async fn grant_withdraw_then_late_import(store: &Arc<dyn Store>, t: &str) -> i64 {
    let history = [
        (Decision::Granted, 1),
        (Decision::Withdrawn, 5),
        (Decision::Granted, 3),
    ];
    let mut revision = 0;
    for (decision, d) in history {
        revision = append(
            store,
            t,
            vec![event("alice", "analytics", "", decision, day(d))],
        )
        .await;
    }
    revision
}

/// The projection holds the latest choice by collection time; an older import does not win.
pub async fn projection_keeps_the_latest_collected_choice(store: &Arc<dyn Store>) {
    let t = tenant();
    let rev = grant_withdraw_then_late_import(store, &t).await;
    append(
        store,
        &t,
        vec![event("alice", "analytics", "ga4", Decision::Denied, day(4))],
    )
    .await;

    let state = ok(store
        .subject_state(&t, "alice", None, Consistency::default())
        .await);
    assert_eq!(state.revision, rev + 1);
    let mut entries = state.entries.clone();
    entries.sort_by(|a, b| a.vendor_id.cmp(&b.vendor_id));
    assert_eq!(entries.len(), 2);
    assert_eq!(
        (entries[0].vendor_id.as_str(), entries[0].decision),
        ("", Decision::Withdrawn)
    );
    assert_eq!(entries[0].collected_at, day(5));
    assert_eq!(
        (entries[1].vendor_id.as_str(), entries[1].decision),
        ("ga4", Decision::Denied)
    );
    assert!(
        ok(store
            .subject_state(&t, "nobody", None, Consistency::default())
            .await)
        .entries
        .is_empty()
    );
}

/// `as_of` gives the latest choice collected at or before that time.
pub async fn as_of_state_reads_the_past(store: &Arc<dyn Store>) {
    let t = tenant();
    grant_withdraw_then_late_import(store, &t).await;
    let decision_at =
        |state: Arc<consent_core::SubjectState>| state.entries.first().map(|e| e.decision);
    let at = |d: i64| store.subject_state(&t, "alice", Some(day(d)), Consistency::default());
    assert_eq!(decision_at(ok(at(0).await)), None);
    assert_eq!(decision_at(ok(at(2).await)), Some(Decision::Granted));
    assert_eq!(decision_at(ok(at(4).await)), Some(Decision::Granted));
    assert_eq!(decision_at(ok(at(5).await)), Some(Decision::Withdrawn));
    assert_eq!(ok(at(4).await).entries.len(), 1);
}

/// The same key with the same fingerprint replays; with another fingerprint it conflicts.
pub async fn idempotent_replay_returns_the_original_write(store: &Arc<dyn Store>) {
    let t = tenant();
    let key = Idempotency {
        key: "req-1".into(),
        fingerprint: [7; 32],
    };
    let plan = [event("alice", "analytics", "", Decision::Granted, day(1))];
    let first = ok(store.append(&t, &plan, Some(&key), CacheFence::None).await);
    append(
        store,
        &t,
        vec![event("bob", "analytics", "", Decision::Granted, day(1))],
    )
    .await;
    // A retry carries freshly generated event ids; the original ones come back.
    let retry_plan = [event("alice", "analytics", "", Decision::Granted, day(1))];
    let replay = ok(store
        .append(&t, &retry_plan, Some(&key), CacheFence::None)
        .await);
    assert!(replay.replayed);
    assert_eq!(replay.events, first.events);
    assert_eq!(replay.revision, first.revision);
    assert_eq!(
        ok(store.head(&t).await).revision,
        2,
        "a replay writes nothing"
    );

    let different = Idempotency {
        key: "req-1".into(),
        fingerprint: [8; 32],
    };
    match store
        .append(&t, &plan, Some(&different), CacheFence::None)
        .await
    {
        Err(ConsentError::AlreadyExists(msg)) => assert!(msg.contains("req-1"), "{msg}"),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    // Keys are per tenant.
    let other_tenant = ok(store
        .append(&tenant(), &plan, Some(&different), CacheFence::None)
        .await);
    assert!(!other_tenant.replayed);
}

/// Reading many subjects' states at once gives each subject what reading it alone gives, in
/// the order asked, unknown and repeated subjects included.
pub async fn batch_state_reads_match_single_reads(store: &Arc<dyn Store>) {
    let t = tenant();
    append(
        store,
        &t,
        vec![
            event("alice", "analytics", "", Decision::Granted, day(1)),
            event("alice", "marketing", "", Decision::Denied, day(2)),
            event("bob", "analytics", "", Decision::Withdrawn, day(3)),
        ],
    )
    .await;
    let asked: Vec<String> = ["bob", "nobody", "alice", "bob"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let head = ok(store.head(&t).await).revision;
    let together = ok(store
        .subject_states(&t, &asked, Consistency::MinimizeLatency)
        .await);
    assert_eq!(together.len(), asked.len());
    for (subject, state) in asked.iter().zip(&together) {
        let alone = ok(store
            .subject_state(&t, subject, None, Consistency::Full)
            .await);
        let sorted = |s: &SubjectState| {
            let mut entries = s.entries.clone();
            entries
                .sort_by(|a, b| (&a.purpose_id, &a.vendor_id).cmp(&(&b.purpose_id, &b.vendor_id)));
            entries
        };
        assert_eq!(sorted(state), sorted(&alone), "{subject}");
        assert_eq!(state.revision, head, "{subject}");
    }
    assert!(together[1].entries.is_empty());
    assert!(
        ok(store
            .subject_states(&t, &[], Consistency::MinimizeLatency)
            .await)
        .is_empty()
    );
    // Cached backends: a second read (now from the cache) agrees too.
    let again = ok(store
        .subject_states(&t, &asked, Consistency::MinimizeLatency)
        .await);
    assert_eq!(again.len(), asked.len());
    for (first, second) in together.iter().zip(&again) {
        assert_eq!(first.entries.len(), second.entries.len());
    }
    // A later withdrawal is seen by the next batch read, cached entries or not.
    let withdrawn = append(
        store,
        &t,
        vec![event("alice", "analytics", "", Decision::Withdrawn, day(4))],
    )
    .await;
    let after = ok(store
        .subject_states(&t, &asked, Consistency::MinimizeLatency)
        .await);
    let alice = &after[2];
    assert!(alice.revision >= withdrawn);
    assert!(
        alice
            .entries
            .iter()
            .any(|e| e.purpose_id == "analytics" && e.decision == Decision::Withdrawn),
        "{alice:?}"
    );
}

/// The history holds one entry per event of the subject, in revision order, read at a
/// revision at least as new; the state as of any time follows from it.
pub async fn history_holds_every_choice(store: &Arc<dyn Store>) {
    let t = tenant();
    let revision = append(
        store,
        &t,
        vec![
            event("alice", "analytics", "", Decision::Granted, day(1)),
            event("bob", "analytics", "", Decision::Granted, day(1)),
            event("alice", "analytics", "", Decision::Withdrawn, day(3)),
            event("alice", "analytics", "", Decision::Granted, day(2)),
        ],
    )
    .await;
    let history = ok(store.subject_history(&t, "alice").await);
    assert!(history.revision >= revision);
    let seen: Vec<_> = history
        .entries
        .iter()
        .map(|e| (e.revision, e.decision))
        .collect();
    assert_eq!(
        seen,
        [
            (1, Decision::Granted),
            (3, Decision::Withdrawn),
            (4, Decision::Granted)
        ]
    );
    let on_day = |d: i64| history.as_of(day(d)).entries.first().map(|e| e.decision);
    assert_eq!(on_day(0), None);
    assert_eq!(on_day(2), Some(Decision::Granted));
    assert_eq!(
        on_day(3),
        Some(Decision::Withdrawn),
        "the late import of day 2 does not win"
    );
    assert!(
        ok(store.subject_history(&t, "nobody").await)
            .entries
            .is_empty()
    );
}

/// Choices collected at the same microsecond: the projection keeps the withdrawal, whichever
/// was written last; between two grants, the later written.
pub async fn a_tie_of_collection_times_goes_to_the_refusal(store: &Arc<dyn Store>) {
    let t = tenant();
    append(
        store,
        &t,
        vec![
            event("alice", "analytics", "", Decision::Withdrawn, day(2)),
            event("alice", "analytics", "", Decision::Granted, day(2)),
            event("bob", "analytics", "", Decision::Granted, day(2)),
            event("bob", "analytics", "", Decision::Granted, day(2)),
        ],
    )
    .await;
    let alice = ok(store
        .subject_state(&t, "alice", None, Consistency::default())
        .await);
    assert_eq!(
        alice.entries.iter().map(|e| e.decision).collect::<Vec<_>>(),
        [Decision::Withdrawn]
    );
    let bob = ok(store
        .subject_state(&t, "bob", None, Consistency::default())
        .await);
    assert_eq!(
        bob.entries.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [4]
    );
    let as_of = ok(store
        .subject_state(&t, "alice", Some(day(2)), Consistency::default())
        .await);
    assert_eq!(as_of.entries[0].decision, Decision::Withdrawn);
}

/// A withdraw-all is one subject-wide WITHDRAWN event (purpose and vendor empty): it has its
/// own projection row, an older choice imported after it does not replace that row, and a
/// purpose filter on the history still shows it (it bears on every purpose).
pub async fn a_subject_wide_withdrawal_is_projected_and_listed(store: &Arc<dyn Store>) {
    let t = tenant();
    append(
        store,
        &t,
        vec![
            event("alice", "analytics", "ga4", Decision::Granted, day(1)),
            event("alice", SUBJECT_WIDE, "", Decision::Withdrawn, day(3)),
            event("alice", "analytics", "", Decision::Granted, day(2)),
            event("bob", "analytics", "", Decision::Granted, day(2)),
        ],
    )
    .await;
    append(
        store,
        &t,
        vec![event(
            "alice",
            SUBJECT_WIDE,
            "",
            Decision::Withdrawn,
            day(2),
        )],
    )
    .await;
    let alice = ok(store
        .subject_state(&t, "alice", None, Consistency::default())
        .await);
    let wide: Vec<_> = alice
        .entries
        .iter()
        .filter(|e| e.purpose_id == SUBJECT_WIDE)
        .map(|e| (e.collected_at, e.revision))
        .collect();
    assert_eq!(
        wide,
        [(day(3), 2)],
        "the later withdraw-all stays projected"
    );
    let past = ok(store
        .subject_state(&t, "alice", Some(day(2)), Consistency::default())
        .await);
    assert!(
        past.entries
            .iter()
            .any(|e| e.purpose_id == SUBJECT_WIDE && e.revision == 5),
        "as of day 2, the withdraw-all collected that day: {past:?}"
    );
    let analytics = ok(store
        .list_events(
            &t,
            &EventQuery {
                subject_id: Some("alice".into()),
                purpose_ids: vec!["analytics".into()],
                limit: 100,
                ..EventQuery::default()
            },
        )
        .await);
    let revisions: Vec<_> = analytics.iter().map(|e| e.event.revision).collect();
    assert_eq!(revisions, [1, 2, 3, 5]);
    let bob = ok(store
        .subject_state(&t, "bob", None, Consistency::default())
        .await);
    assert_eq!(bob.entries.len(), 1, "other subjects untouched");
    assert!(ok(verify_ledger(store.as_ref(), &t).await).0.ok);
}

/// Filters by subject, purpose and time, and pages by revision.
pub async fn list_events_filters_and_pages(store: &Arc<dyn Store>) {
    let t = tenant();
    for d in 1..=5 {
        append(
            store,
            &t,
            vec![
                event("alice", "analytics", "", Decision::Granted, day(d)),
                event("bob", "call_recording", "", Decision::Denied, day(d)),
            ],
        )
        .await;
    }
    let query = |q: EventQuery| {
        let store = Arc::clone(store);
        let t = t.clone();
        async move { store.list_events(&t, &q).await }
    };
    let alice = ok(query(EventQuery {
        subject_id: Some("alice".into()),
        limit: 100,
        ..EventQuery::default()
    })
    .await);
    assert_eq!(alice.len(), 5);
    assert!(alice.iter().all(|e| e.event.event.subject_id == "alice"));
    let recording = ok(query(EventQuery {
        purpose_ids: vec!["call_recording".into()],
        collected_from: Some(day(2)),
        collected_to: Some(day(4)),
        limit: 100,
        ..EventQuery::default()
    })
    .await);
    let days: Vec<_> = recording
        .iter()
        .map(|e| e.event.event.collected_at)
        .collect();
    assert_eq!(days, [day(2), day(3)]);
    let page1 = ok(query(EventQuery {
        limit: 4,
        ..EventQuery::default()
    })
    .await);
    let page2 = ok(query(EventQuery {
        limit: 4,
        after_revision: page1[3].event.revision,
        ..EventQuery::default()
    })
    .await);
    let revisions: Vec<_> = page1
        .iter()
        .chain(&page2)
        .map(|e| e.event.revision)
        .collect();
    assert_eq!(revisions, [1, 2, 3, 4, 5, 6, 7, 8]);
    let until = ok(query(EventQuery {
        until_revision: Some(3),
        limit: 100,
        ..EventQuery::default()
    })
    .await);
    assert_eq!(until.len(), 3);
}

/// One tenant's writes are invisible to, and independent of, another's.
pub async fn tenants_are_isolated(store: &Arc<dyn Store>) {
    let (a, b) = (tenant(), tenant());
    ok(store.upsert_purpose(&a, &purpose("analytics", &[])).await);
    ok(store
        .publish_policy_version(&a, &policy("v1", day(1)))
        .await);
    append(
        store,
        &a,
        vec![event("alice", "analytics", "", Decision::Granted, day(1))],
    )
    .await;

    assert!(
        ok(store.catalog(&b, Consistency::default()).await)
            .purposes
            .is_empty()
    );
    assert!(
        ok(store.catalog(&b, Consistency::default()).await)
            .policy_versions
            .is_empty()
    );
    assert!(
        ok(store
            .subject_state(&b, "alice", None, Consistency::default())
            .await)
        .entries
        .is_empty()
    );
    assert!(
        ok(store
            .subject_state(&b, "alice", Some(day(9)), Consistency::default())
            .await)
        .entries
        .is_empty()
    );
    assert!(
        ok(store
            .list_events(
                &b,
                &EventQuery {
                    limit: 10,
                    ..EventQuery::default()
                }
            )
            .await)
        .is_empty()
    );
    assert_eq!(ok(store.head(&b).await).revision, 0);
    // B's chain starts at genesis, independent of A's.
    let b_rev = append(
        store,
        &b,
        vec![event("alice", "analytics", "", Decision::Denied, day(2))],
    )
    .await;
    assert_eq!(b_rev, 1);
    let a_state = ok(store
        .subject_state(&a, "alice", None, Consistency::default())
        .await);
    assert_eq!(a_state.entries[0].decision, Decision::Granted);
    assert!(ok(verify_ledger(store.as_ref(), &a).await).0.ok);
    assert!(ok(verify_ledger(store.as_ref(), &b).await).0.ok);
}

/// Concurrent writers get distinct, gap-free revisions and one unbroken chain.
pub async fn concurrent_appends_keep_the_chain_whole(store: &Arc<dyn Store>) {
    let t = tenant();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = Arc::clone(store);
            let t = t.clone();
            tokio::spawn(async move {
                let mut revisions = Vec::new();
                for i in 0..5 {
                    let subject = format!("s{w}-{i}");
                    let e = event(&subject, "analytics", "", Decision::Granted, day(1));
                    match store.append(&t, &[e], None, CacheFence::None).await {
                        Ok(o) => revisions.push(o.revision),
                        Err(e) => panic!("append failed: {e}"),
                    }
                }
                revisions
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in writers {
        match w.await {
            Ok(revs) => all.extend(revs),
            Err(e) => panic!("writer panicked: {e}"),
        }
    }
    all.sort_unstable();
    assert_eq!(all, (1..=40).collect::<Vec<i64>>());
    let (report, head) = ok(verify_ledger(store.as_ref(), &t).await);
    assert!(report.ok, "{report:?}");
    assert_eq!(head.revision, 40);
}

/// Runs `appends` concurrently (stores may commit them together) and returns each outcome
/// in the order given.
async fn append_concurrently(
    store: &Arc<dyn Store>,
    tenant: &str,
    appends: Vec<(Vec<NewEvent>, Option<Idempotency>)>,
) -> Vec<consent_core::Result<AppendOutcome>> {
    let tasks: Vec<_> = appends
        .into_iter()
        .map(|(events, key)| {
            let (store, tenant) = (Arc::clone(store), tenant.to_owned());
            tokio::spawn(async move {
                store
                    .append(&tenant, &events, key.as_ref(), CacheFence::None)
                    .await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        match task.await {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => panic!("append task panicked: {e}"),
        }
    }
    outcomes
}

/// Concurrent writes to one tenant, however a store groups them, each get their own answer:
/// distinct keys are written once each, retries of one key replay the one write, a key
/// reused with other content is refused for that write only.
pub async fn concurrent_keyed_writes_each_get_their_own_answer(store: &Arc<dyn Store>) {
    let t = tenant();
    let key = |name: &str, fingerprint: u8| {
        Some(Idempotency {
            key: name.into(),
            fingerprint: [fingerprint; 32],
        })
    };
    let grant = |subject: &str| vec![event(subject, "analytics", "", Decision::Granted, day(1))];
    let mut appends = Vec::new();
    for i in 0..10 {
        appends.push((grant(&format!("keyed-{i}")), key(&format!("k{i}"), 1)));
    }
    for _ in 0..10 {
        appends.push((grant("retried"), key("retry", 2)));
    }
    for i in 0..5 {
        appends.push((grant(&format!("clash-{i}")), key("clash", 10 + i)));
    }
    for i in 0..5 {
        appends.push((grant(&format!("plain-{i}")), None));
    }
    let outcomes = append_concurrently(store, &t, appends).await;

    let (keyed, rest) = outcomes.split_at(10);
    let (retried, rest) = rest.split_at(10);
    let (clashing, plain) = rest.split_at(5);
    for outcome in keyed.iter().chain(plain) {
        assert!(outcome.as_ref().is_ok_and(|o| !o.replayed), "{outcome:?}");
    }
    let retried: Vec<AppendOutcome> = retried.iter().map(|o| ok(o.clone())).collect();
    assert_eq!(retried.iter().filter(|o| !o.replayed).count(), 1);
    assert!(
        retried
            .iter()
            .all(|o| o.events == retried[0].events && o.revision == retried[0].revision)
    );
    assert_eq!(clashing.iter().filter(|o| o.is_ok()).count(), 1);
    for refused in clashing.iter().filter_map(|o| o.as_ref().err()) {
        assert!(
            matches!(refused, ConsentError::AlreadyExists(m) if m.contains("clash")),
            "{refused}"
        );
    }
    let (report, head) = ok(verify_ledger(store.as_ref(), &t).await);
    assert!(report.ok, "{report:?}");
    assert_eq!(
        head.revision,
        10 + 1 + 1 + 5,
        "every write but the replays and refusals"
    );
}

/// A write the database refuses (here: an event id already used in the tenant) fails on its
/// own; the writes committed with or around it succeed and the chain stays whole.
pub async fn a_write_the_database_refuses_fails_alone(store: &Arc<dyn Store>) {
    let t = tenant();
    let grant = |subject: &str| event(subject, "analytics", "", Decision::Granted, day(1));
    let original = grant("original");
    let mut duplicate = grant("duplicate");
    duplicate.id = original.id.clone();
    // Side by side behind others, so a store that groups writes likely commits them together.
    let mut appends: Vec<(Vec<NewEvent>, Option<Idempotency>)> = (0..24)
        .map(|i| (vec![grant(&format!("s{i}"))], None))
        .collect();
    appends.insert(12, (vec![original], None));
    appends.insert(13, (vec![duplicate], None));
    let outcomes = append_concurrently(store, &t, appends).await;
    let failed: Vec<usize> = (0..outcomes.len())
        .filter(|&i| outcomes.get(i).is_some_and(|o| o.is_err()))
        .collect();
    assert!(
        failed == vec![12] || failed == vec![13],
        "exactly one of the two writes sharing an event id fails: {outcomes:?}"
    );
    let (report, head) = ok(verify_ledger(store.as_ref(), &t).await);
    assert!(report.ok, "{report:?}");
    assert_eq!(head.revision, 25);
}

/// A tenant id is taken once; tenants are listed and found by id.
pub async fn tenants_are_created_once(store: &Arc<dyn Store>) {
    let id = tenant();
    let t = ok(new_tenant(&id, "Acme Voice", Timestamp(1)));
    assert_eq!(ok(store.get_tenant(&id).await), None);
    ok(store.create_tenant(&t).await);
    match store.create_tenant(&t).await {
        Err(ConsentError::AlreadyExists(msg)) => assert!(msg.contains(&id), "{msg}"),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(ok(store.get_tenant(&id).await), Some(t.clone()));
    assert!(ok(store.list_tenants().await).contains(&t));
}

/// Keys are found by id for authentication, listed and revoked only within their tenant.
pub async fn api_keys_belong_to_their_tenant(store: &Arc<dyn Store>) {
    let (a, b) = (tenant(), tenant());
    ok(store
        .create_tenant(&ok(new_tenant(&a, "", Timestamp(1))))
        .await);
    ok(store
        .create_tenant(&ok(new_tenant(&b, "", Timestamp(1))))
        .await);
    let random = |seed: u8| {
        let mut bytes = [seed; KEY_RANDOM_BYTES];
        // The key id is the first 8 bytes: take them from the random half of a UUIDv7.
        bytes[..8].copy_from_slice(&uuid::Uuid::now_v7().as_bytes()[8..]);
        bytes
    };
    let (key_a, _) = ok(issue_key(
        &a,
        "dialer",
        vec![Scope::ConsentRead, Scope::ConsentWrite],
        Timestamp(5),
        Some(60),
        &random(1),
    ));
    let (key_b, _) = ok(issue_key(
        &b,
        "pipeline",
        vec![Scope::ConsentRead],
        Timestamp(6),
        None,
        &random(2),
    ));
    ok(store.create_api_key(&key_a).await);
    ok(store.create_api_key(&key_b).await);
    let (orphan, _) = ok(issue_key(
        &tenant(),
        "x",
        vec![Scope::Admin],
        Timestamp(7),
        None,
        &random(3),
    ));
    assert!(matches!(
        store.create_api_key(&orphan).await,
        Err(ConsentError::NotFound { .. })
    ));

    assert_eq!(
        ok(store.find_api_key(&key_a.key_id).await),
        Some(key_a.clone())
    );
    assert_eq!(ok(store.find_api_key("0000000000000000").await), None);
    assert_eq!(ok(store.list_api_keys(&a).await), vec![key_a.clone()]);
    assert_eq!(ok(store.list_api_keys(&b).await), vec![key_b.clone()]);

    // Tenant B cannot revoke tenant A's key.
    assert!(matches!(
        store.revoke_api_key(&b, &key_a.key_id, Timestamp(10)).await,
        Err(ConsentError::NotFound { .. })
    ));
    assert_eq!(
        ok(store.find_api_key(&key_a.key_id).await).and_then(|k| k.revoked_at),
        None
    );
    let revoked = ok(store.revoke_api_key(&a, &key_a.key_id, Timestamp(10)).await);
    assert_eq!(revoked.revoked_at, Some(Timestamp(10)));
    let again = ok(store.revoke_api_key(&a, &key_a.key_id, Timestamp(20)).await);
    assert_eq!(
        again.revoked_at,
        Some(Timestamp(10)),
        "the first revocation time stands"
    );
}

/// A subscriber hears of every commit made after it subscribed, with its revision.
pub async fn commits_wake_subscribers(store: &Arc<dyn Store>) {
    let t = tenant();
    let mut commits = store.subscribe();
    let revision = append(
        store,
        &t,
        vec![event("alice", "analytics", "", Decision::Granted, day(1))],
    )
    .await;
    // Other cases share the store: skip their commits (bounded: a safety net, not a wait).
    let heard = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match commits.recv().await {
                Ok(c) if c.tenant_id == t => return Some(c.revision),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .await;
    assert_eq!(heard.ok().flatten(), Some(revision));
}

/// Every catalogue write raises the tenant's catalogue version; a no-op republish does not.
pub async fn catalog_version_grows_with_each_write(store: &Arc<dyn Store>) {
    let t = tenant();
    let version = |store: Arc<dyn Store>, t: String| async move {
        ok(store.catalog(&t, Consistency::default()).await).version
    };
    assert_eq!(version(store.clone(), t.clone()).await, 0);
    ok(store.upsert_purpose(&t, &purpose("analytics", &[])).await);
    let v1 = version(store.clone(), t.clone()).await;
    ok(store
        .upsert_purpose(&t, &purpose("call_recording", &[]))
        .await);
    let v2 = version(store.clone(), t.clone()).await;
    ok(store
        .publish_policy_version(&t, &policy("v1", day(1)))
        .await);
    let v3 = version(store.clone(), t.clone()).await;
    ok(store
        .publish_policy_version(&t, &policy("v1", day(1)))
        .await);
    let v4 = version(store.clone(), t.clone()).await;
    assert!(0 < v1 && v1 < v2 && v2 < v3, "{v1} {v2} {v3}");
    assert_eq!(v3, v4, "republishing the same version changes nothing");
    // Catalogue writes do not move the ledger.
    assert_eq!(ok(store.head(&t).await).revision, 0);
}

/// A write that asks for a cache fence records one at its revision, in the same transaction;
/// every catalogue write fences the catalogue at its new version; fences only grow, and
/// `cache_fences(after)` returns the changes after a sequence number, in commit order.
pub async fn fences_are_recorded_in_commit_order(store: &Arc<dyn Store>) {
    let t = tenant();
    let fence_of = |fences: &[FenceRecord], t: &str| {
        fences
            .iter()
            .rfind(|f| f.tenant_id == t)
            .map(|f| (f.revision, f.catalog_version))
    };
    let start = ok(store.cache_fences(0).await).last().map_or(0, |f| f.seq);
    append(
        store,
        &t,
        vec![event("alice", "analytics", "", Decision::Granted, day(1))],
    )
    .await;
    assert_eq!(
        fence_of(&ok(store.cache_fences(start).await), &t),
        None,
        "no fence unless asked"
    );
    let fenced = ok(store
        .append(
            &t,
            &[event("alice", "analytics", "", Decision::Withdrawn, day(2))],
            None,
            CacheFence::States,
        )
        .await);
    let after_write = ok(store.cache_fences(start).await);
    assert_eq!(fence_of(&after_write, &t), Some((fenced.revision, 0)));
    let seq = after_write.last().map_or(0, |f| f.seq);
    assert!(seq > start);

    ok(store.upsert_purpose(&t, &purpose("analytics", &[])).await);
    let version = ok(store.catalog(&t, Consistency::Full).await).version;
    let after_catalog = ok(store.cache_fences(seq).await);
    assert_eq!(
        fence_of(&after_catalog, &t),
        Some((fenced.revision, version)),
        "the catalogue fence keeps the state fence"
    );
    assert!(after_catalog.iter().all(|f| f.seq > seq));
    // A later fenced write moves the fence forward; still one row per tenant.
    let again = ok(store
        .append(
            &t,
            &[event("bob", "analytics", "", Decision::Granted, day(1))],
            None,
            CacheFence::States,
        )
        .await);
    let all: Vec<_> = ok(store.cache_fences(0).await)
        .into_iter()
        .filter(|f| f.tenant_id == t)
        .collect();
    assert_eq!(all.len(), 1, "one row per tenant: {all:?}");
    assert_eq!(
        (all[0].revision, all[0].catalog_version),
        (again.revision, version)
    );
}

/// A write whose cache was told in the ledger's namespace needs no fence; one told in
/// another namespace (the ledger's was rotated while its writer ran) is fenced at its
/// revision in its own transaction.
pub async fn a_write_told_in_another_namespace_is_fenced(store: &Arc<dyn Store>) {
    let t = tenant();
    let namespace = ok(store.cache_namespace().await);
    let fences_of = async |t: &str| {
        ok(store.cache_fences(0).await)
            .into_iter()
            .filter(|f| f.tenant_id == t)
            .map(|f| f.revision)
            .max()
    };
    let told = |namespace: &str| CacheFence::Told {
        namespace: crate::NamespaceTag::of(namespace),
    };
    let event = || vec![event("alice", "analytics", "", Decision::Granted, day(1))];
    ok(store.append(&t, &event(), None, told(&namespace)).await);
    assert_eq!(fences_of(&t).await, None, "told in the ledger's namespace");
    let elsewhere = ok(store.append(&t, &event(), None, told("rotated-away")).await);
    assert_eq!(fences_of(&t).await, Some(elsewhere.revision));

    // Flag writes follow the same rule, as does a write that could not tell the cache.
    let u = tenant();
    let flag = |kind: consent_core::RecordKind| {
        vec![consent_core::NewRecord {
            id: new_event_id(),
            kind,
            subject_id: "alice".into(),
            purpose_id: String::new(),
            at: day(2),
            detail: Default::default(),
            actor_key_id: String::new(),
        }]
    };
    ok(store
        .append_flags(
            &u,
            "alice",
            flag(consent_core::RecordKind::GpcSet),
            told(&namespace),
        )
        .await);
    assert_eq!(
        fences_of(&u).await,
        None,
        "flags told in the ledger's namespace"
    );
    let moved = ok(store
        .append_flags(
            &u,
            "alice",
            flag(consent_core::RecordKind::GpcCleared),
            told("rotated-away"),
        )
        .await);
    assert_eq!(fences_of(&u).await, Some(moved.revision));
    let untold = ok(store
        .append_flags(
            &u,
            "alice",
            flag(consent_core::RecordKind::GpcSet),
            CacheFence::States,
        )
        .await);
    assert_eq!(fences_of(&u).await, Some(untold.revision));
}
