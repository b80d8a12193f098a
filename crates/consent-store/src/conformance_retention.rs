//! Conformance cases for [`crate::RetentionStore`]: rules and bounds, data items, legal
//! holds, due items and deletion attestations (part of [`crate::conformance`]).

use std::sync::Arc;

use consent_core::commands::new_event_id;
use consent_core::retention::{
    DataItem, HoldScope, LegalHold, RetentionAction, RetentionAnchor, RetentionBound,
    RetentionDefault, RetentionRule,
};
use consent_core::{ConsentError, Decision, NewRecord, RecordKind, Timestamp};

use crate::conformance::{append, day, event, ok, tenant};
use crate::{DueQuery, EventQuery, LedgerEntry, Store, StoredHold, list_entries, verify_ledger};

const DAY_SECS: i64 = 86_400;

fn rule(category: &str, campaign: &str, days: i64, anchor: RetentionAnchor) -> RetentionRule {
    RetentionRule {
        data_category: category.into(),
        campaign_id: campaign.into(),
        period_secs: days * DAY_SECS,
        anchor,
        action: RetentionAction::Delete,
        legal_basis: "privacy policy section 5".into(),
    }
}

fn defaults() -> Vec<RetentionDefault> {
    vec![
        RetentionDefault {
            rule: rule("call_recording", "", 90, RetentionAnchor::Created),
            bound: RetentionBound::Maximum,
        },
        RetentionDefault {
            rule: rule("billing", "", 7 * 365, RetentionAnchor::Created),
            bound: RetentionBound::Minimum,
        },
        RetentionDefault {
            rule: rule("support_ticket", "", 730, RetentionAnchor::TicketClosed),
            bound: RetentionBound::None,
        },
    ]
}

fn item(id: &str, subject: &str, category: &str, campaign: &str, created: i64) -> DataItem {
    DataItem {
        item_id: id.into(),
        subject_id: subject.into(),
        data_category: category.into(),
        campaign_id: campaign.into(),
        created_at: day(created),
        anchor_at: None,
        deleted_at: None,
    }
}

fn hold(scope: HoldScope, until: Option<Timestamp>) -> StoredHold {
    StoredHold {
        hold_id: new_event_id(),
        hold: LegalHold {
            scope,
            reason: "court order 2026/17".into(),
            until,
        },
        created_at: day(1),
        released_at: None,
        actor_key_id: "key-1".into(),
    }
}

fn attestation(subject: &str, item_id: &str) -> NewRecord {
    NewRecord {
        id: new_event_id(),
        kind: RecordKind::DeletionAttested,
        subject_id: subject.into(),
        purpose_id: String::new(),
        at: day(100),
        detail: [
            ("item_id".to_owned(), item_id.to_owned()),
            ("method".to_owned(), "crypto-shred".to_owned()),
        ]
        .into(),
        actor_key_id: "key-1".into(),
    }
}

fn due(store_now: i64) -> DueQuery {
    DueQuery {
        data_category: None,
        campaign_id: None,
        due_by: day(store_now),
        now: day(store_now),
        after: None,
        limit: 100,
    }
}

async fn register(store: &Arc<dyn Store>, t: &str, item: &DataItem) -> Option<Timestamp> {
    ok(store.register_item(t, item, day(0)).await)
        .item
        .delete_after
}

fn is_failed_precondition<T: std::fmt::Debug>(r: consent_core::Result<T>, mentions: &str) {
    match r {
        Err(ConsentError::FailedPrecondition(m)) => {
            assert!(m.contains(mentions), "`{m}` should mention `{mentions}`")
        }
        other => panic!("expected FailedPrecondition mentioning {mentions}, got {other:?}"),
    }
}

/// Campaign rules beat tenant rules beat defaults; changing a rule moves the `delete_after`
/// of the items it governs; a rule outside a default's bound is refused naming the bound.
pub async fn retention_rules_resolve_by_campaign_within_the_bounds(store: &Arc<dyn Store>) {
    let t = tenant();
    ok(store.apply_retention_defaults(&t, &defaults()).await);
    let spring = item("rec-spring", "alice", "call_recording", "spring", 0);
    let plain = item("rec-plain", "alice", "call_recording", "", 0);
    assert_eq!(register(store, &t, &spring).await, Some(day(90)));
    assert_eq!(register(store, &t, &plain).await, Some(day(90)));

    ok(store
        .set_retention_rule(
            &t,
            &rule("call_recording", "", 60, RetentionAnchor::Created),
        )
        .await);
    ok(store
        .set_retention_rule(
            &t,
            &rule("call_recording", "spring", 30, RetentionAnchor::Created),
        )
        .await);
    let after = |id: &'static str| {
        let store = Arc::clone(store);
        let t = t.clone();
        async move { ok(store.data_item(&t, id).await).and_then(|i| i.delete_after) }
    };
    assert_eq!(after("rec-spring").await, Some(day(30)));
    assert_eq!(after("rec-plain").await, Some(day(60)));
    // Replacing the campaign rule moves only the campaign's items.
    ok(store
        .set_retention_rule(
            &t,
            &rule("call_recording", "spring", 20, RetentionAnchor::Created),
        )
        .await);
    assert_eq!(after("rec-spring").await, Some(day(20)));
    assert_eq!(after("rec-plain").await, Some(day(60)));

    let rules = ok(store.retention_rules(&t).await);
    assert_eq!(rules.defaults.len(), 3);
    let listed: Vec<(&str, &str, i64)> = rules
        .rules
        .iter()
        .map(|r| {
            (
                r.data_category.as_str(),
                r.campaign_id.as_str(),
                r.period_secs,
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("call_recording", "", 60 * DAY_SECS),
            ("call_recording", "spring", 20 * DAY_SECS)
        ]
    );

    // Bounds: recordings at most 90 days, billing at least 7 years, anchors fixed.
    is_failed_precondition(
        store
            .set_retention_rule(
                &t,
                &rule("call_recording", "x", 91, RetentionAnchor::Created),
            )
            .await,
        "at most 90 days",
    );
    is_failed_precondition(
        store
            .set_retention_rule(&t, &rule("billing", "", 365, RetentionAnchor::Created))
            .await,
        "at least",
    );
    is_failed_precondition(
        store
            .set_retention_rule(
                &t,
                &rule("call_recording", "", 10, RetentionAnchor::AccountClosed),
            )
            .await,
        "anchor created",
    );
    // A default without a bound admits anything.
    ok(store
        .set_retention_rule(
            &t,
            &rule("support_ticket", "", 4000, RetentionAnchor::Created),
        )
        .await);
    // A new default whose bound an existing rule breaks is refused, and nothing changes.
    let mut tighter = defaults();
    tighter[0].rule.period_secs = 45 * DAY_SECS;
    is_failed_precondition(
        store.apply_retention_defaults(&t, &tighter).await,
        "call_recording",
    );
    let unchanged = ok(store.retention_rules(&t).await);
    assert_eq!(unchanged.defaults, rules.defaults);
    // A default for a category without tenant rules moves its items.
    let mut shorter = defaults();
    shorter[2].rule.period_secs = 100 * DAY_SECS;
    shorter[2].rule.anchor = RetentionAnchor::TicketClosed;
    let ticket = item("ticket-1", "bob", "support_ticket", "", 0);
    ok(store.register_item(&t, &ticket, day(0)).await);
    ok(store.apply_retention_defaults(&t, &shorter).await);
    // The tenant rule (4000 days after creation) still governs tickets.
    assert_eq!(after("ticket-1").await, Some(day(4000)));
}

/// An item needs a rule for its category; registering again with the same facts is a
/// replay, with other facts `AlreadyExists`; anchors move `delete_after`.
pub async fn data_items_register_once_and_need_a_rule(store: &Arc<dyn Store>) {
    let t = tenant();
    let orphan = item("x-1", "alice", "usage_log", "", 0);
    is_failed_precondition(store.register_item(&t, &orphan, day(0)).await, "usage_log");
    ok(store.apply_retention_defaults(&t, &defaults()).await);
    let rec = item("rec-1", "alice", "call_recording", "", 3);
    let first = ok(store.register_item(&t, &rec, day(3)).await);
    assert!(!first.replayed);
    assert_eq!(first.item.delete_after, Some(day(93)));
    assert_eq!(first.item.registered_at, day(3));
    let again = ok(store.register_item(&t, &rec, day(4)).await);
    assert!(again.replayed);
    assert_eq!(again.item, first.item);
    let mut other = rec.clone();
    other.subject_id = "bob".into();
    assert!(matches!(
        store.register_item(&t, &other, day(4)).await,
        Err(ConsentError::AlreadyExists(_))
    ));
    assert_eq!(ok(store.data_item(&t, "rec-1").await), Some(first.item));
    assert_eq!(ok(store.data_item(&t, "nope").await), None);

    // A ticket waits for its closure.
    let ticket = item("ticket-1", "alice", "support_ticket", "", 0);
    assert_eq!(register(store, &t, &ticket).await, None);
    let closed = ok(store.update_anchor(&t, "ticket-1", day(10)).await);
    assert_eq!(closed.item.anchor_at, Some(day(10)));
    assert_eq!(closed.delete_after, Some(day(740)));
    // A retry of the registration, sent without the anchor it did not know, still replays.
    let retried = ok(store.register_item(&t, &ticket, day(11)).await);
    assert!(retried.replayed);
    assert_eq!(retried.item.delete_after, Some(day(740)));
    let mut other_anchor = ticket.clone();
    other_anchor.anchor_at = Some(day(12));
    assert!(matches!(
        store.register_item(&t, &other_anchor, day(12)).await,
        Err(ConsentError::AlreadyExists(_))
    ));
    assert!(matches!(
        store.update_anchor(&t, "nope", day(10)).await,
        Err(ConsentError::NotFound { .. })
    ));
}

/// Due items come in `delete_after` order, page by cursor, filter by category and campaign,
/// and leave out items a hold in force covers (by subject, item or campaign).
pub async fn due_items_page_in_order_and_skip_held_items(store: &Arc<dyn Store>) {
    let t = tenant();
    ok(store.apply_retention_defaults(&t, &defaults()).await);
    ok(store
        .set_retention_rule(
            &t,
            &rule("call_recording", "spring", 30, RetentionAnchor::Created),
        )
        .await);
    // Due at days 30, 31, 90, 91, 92 (the last three without campaign).
    for (id, subject, campaign, created) in [
        ("a", "alice", "spring", 0),
        ("b", "bob", "spring", 1),
        ("c", "alice", "", 0),
        ("d", "carol", "", 1),
        ("e", "dave", "", 2),
    ] {
        register(
            store,
            &t,
            &item(id, subject, "call_recording", campaign, created),
        )
        .await;
    }
    register(store, &t, &item("bill", "alice", "billing", "", 0)).await;
    let ids = |items: Vec<crate::StoredItem>| {
        items
            .into_iter()
            .map(|i| i.item.item_id)
            .collect::<Vec<_>>()
    };
    assert!(ok(store.due_items(&t, &due(29)).await).is_empty());
    assert_eq!(
        ids(ok(store.due_items(&t, &due(91)).await)),
        ["a", "b", "c", "d"]
    );
    // Paging: two at a time, by (delete_after, item_id).
    let mut query = due(200);
    query.limit = 2;
    let mut pages = Vec::new();
    loop {
        let page = ok(store.due_items(&t, &query).await);
        let Some(last) = page.last() else { break };
        query.after = Some((
            last.delete_after.unwrap_or(Timestamp(0)),
            last.item.item_id.clone(),
        ));
        pages.push(ids(page));
    }
    assert_eq!(pages, [vec!["a", "b"], vec!["c", "d"], vec!["e"]]);
    let mut spring = due(200);
    spring.campaign_id = Some("spring".into());
    assert_eq!(ids(ok(store.due_items(&t, &spring).await)), ["a", "b"]);
    let mut billing = due(200);
    billing.data_category = Some("billing".into());
    assert!(ok(store.due_items(&t, &billing).await).is_empty());
    // Overdue only: due by an earlier time.
    let mut overdue = due(200);
    overdue.due_by = day(30);
    assert_eq!(ids(ok(store.due_items(&t, &overdue).await)), ["a"]);

    // Holds on a subject, an item and a campaign; one that ended; one released.
    let on_alice = hold(HoldScope::Subject("alice".into()), None);
    let on_d = hold(HoldScope::Item("d".into()), Some(day(150)));
    let on_spring = hold(HoldScope::Campaign("spring".into()), None);
    for h in [&on_alice, &on_d, &on_spring] {
        ok(store.place_legal_hold(&t, h).await);
    }
    assert_eq!(ids(ok(store.due_items(&t, &due(100)).await)), ["e"]);
    assert_eq!(ids(ok(store.due_items(&t, &due(150)).await)), ["d", "e"]);
    let covering = ok(store
        .holds_covering(&t, &item("b", "bob", "call_recording", "spring", 1))
        .await);
    assert_eq!(covering.len(), 1);
    assert_eq!(covering[0].hold_id, on_spring.hold_id);
    assert_eq!(
        ok(store.legal_holds(&t, None, day(100), "", 100).await).len(),
        3
    );
    assert_eq!(
        ok(store
            .legal_holds(
                &t,
                Some(&HoldScope::Subject("alice".into())),
                day(100),
                "",
                100
            )
            .await)
        .len(),
        1
    );
    // Paged by id; a hold whose end passed is not in force.
    let first = ok(store.legal_holds(&t, None, day(100), "", 2).await);
    let rest = ok(store
        .legal_holds(&t, None, day(100), &first[1].hold_id, 2)
        .await);
    let paged: Vec<&str> = first
        .iter()
        .chain(&rest)
        .map(|h| h.hold_id.as_str())
        .collect();
    let mut all = vec![
        on_alice.hold_id.as_str(),
        on_d.hold_id.as_str(),
        on_spring.hold_id.as_str(),
    ];
    all.sort_unstable();
    assert_eq!(paged, all);
    assert_eq!(
        ok(store.legal_holds(&t, None, day(150), "", 100).await).len(),
        2
    );
    let released = ok(store
        .release_legal_hold(&t, &on_spring.hold_id, day(120))
        .await);
    assert_eq!(released.released_at, Some(day(120)));
    // A second release keeps the first time.
    let again = ok(store
        .release_legal_hold(&t, &on_spring.hold_id, day(130))
        .await);
    assert_eq!(again.released_at, Some(day(120)));
    assert_eq!(ids(ok(store.due_items(&t, &due(100)).await)), ["b", "e"]);
    assert_eq!(
        ok(store.legal_holds(&t, None, day(100), "", 100).await).len(),
        2
    );
    assert!(matches!(
        store.release_legal_hold(&t, "nope", day(1)).await,
        Err(ConsentError::NotFound { .. })
    ));
}

/// An attestation is a ledger record in the chain, the item is deleted for good, a second
/// attestation replays the first, and the chain of events and records verifies.
pub async fn an_attestation_is_a_ledger_record_and_final(store: &Arc<dyn Store>) {
    let t = tenant();
    ok(store.apply_retention_defaults(&t, &defaults()).await);
    append(
        store,
        &t,
        vec![event(
            "alice",
            "call_recording",
            "",
            Decision::Granted,
            day(1),
        )],
    )
    .await;
    register(store, &t, &item("rec-1", "alice", "call_recording", "", 0)).await;
    let attested = ok(store
        .attest_deletion(&t, "rec-1", day(95), attestation("alice", "rec-1"))
        .await);
    assert!(!attested.replayed);
    assert_eq!(attested.record.revision, 2);
    assert_eq!(attested.item.item.deleted_at, Some(day(95)));
    assert_eq!(attested.item.attestation_revision, Some(2));
    assert_eq!(ok(store.head(&t).await).revision, 2);
    assert_eq!(ok(store.head(&t).await).hash, attested.record.hash);

    // A later event links after the record.
    let rev = append(
        store,
        &t,
        vec![event(
            "alice",
            "call_recording",
            "",
            Decision::Withdrawn,
            day(96),
        )],
    )
    .await;
    assert_eq!(rev, 3);
    let again = ok(store
        .attest_deletion(&t, "rec-1", day(97), attestation("alice", "rec-1"))
        .await);
    assert!(again.replayed);
    assert_eq!(again.record, attested.record);
    assert_eq!(again.item.item.deleted_at, Some(day(95)));
    assert!(ok(store.due_items(&t, &due(400)).await).is_empty());
    assert!(matches!(
        store
            .attest_deletion(&t, "nope", day(95), attestation("alice", "nope"))
            .await,
        Err(ConsentError::NotFound { .. })
    ));

    let all = EventQuery {
        limit: 10,
        ..EventQuery::default()
    };
    let records = ok(store.list_records(&t, &all).await);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].record, attested.record);
    assert!(!records[0].detail_erased);
    let bare = ok(store
        .list_records(
            &t,
            &EventQuery {
                without_evidence: true,
                ..all.clone()
            },
        )
        .await);
    assert!(bare[0].record.record.detail.is_empty());
    // Filters: by subject, by purpose (a record naming none matches every purpose), by time.
    let by = |q: EventQuery| {
        let store = Arc::clone(store);
        let t = t.clone();
        async move { ok(store.list_records(&t, &q).await).len() }
    };
    assert_eq!(
        by(EventQuery {
            subject_id: Some("bob".into()),
            ..all.clone()
        })
        .await,
        0
    );
    assert_eq!(
        by(EventQuery {
            purpose_ids: vec!["analytics".into()],
            ..all.clone()
        })
        .await,
        1
    );
    assert_eq!(
        by(EventQuery {
            collected_from: Some(day(101)),
            ..all.clone()
        })
        .await,
        0
    );
    assert_eq!(
        by(EventQuery {
            after_revision: 2,
            ..all.clone()
        })
        .await,
        0
    );

    let entries = ok(list_entries(store.as_ref(), &t, &all).await);
    let kinds: Vec<(i64, bool)> = entries
        .iter()
        .map(|e| (e.revision(), matches!(e, LedgerEntry::Record(_))))
        .collect();
    assert_eq!(kinds, [(1, false), (2, true), (3, false)]);
    // Pages of one entry still see every entry once.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = ok(list_entries(
            store.as_ref(),
            &t,
            &EventQuery {
                after_revision: after,
                limit: 1,
                ..EventQuery::default()
            },
        )
        .await);
        let Some(last) = page.last() else { break };
        after = last.revision();
        seen.extend(page.iter().map(LedgerEntry::revision));
    }
    assert_eq!(seen, [1, 2, 3]);
    let (report, head) = ok(verify_ledger(store.as_ref(), &t).await);
    assert!(report.ok, "{report:?}");
    assert_eq!((report.events_checked, head.revision), (3, 3));
}

/// One tenant's rules, items and holds are invisible to another and out of its reach.
pub async fn retention_is_tenant_scoped(store: &Arc<dyn Store>) {
    let (a, b) = (tenant(), tenant());
    ok(store.apply_retention_defaults(&a, &defaults()).await);
    register(store, &a, &item("rec-1", "alice", "call_recording", "", 0)).await;
    let h = hold(HoldScope::Subject("alice".into()), None);
    ok(store.place_legal_hold(&a, &h).await);

    assert_eq!(
        ok(store.retention_rules(&b).await),
        crate::RetentionRules::default()
    );
    assert_eq!(ok(store.data_item(&b, "rec-1").await), None);
    assert!(ok(store.due_items(&b, &due(400)).await).is_empty());
    assert!(ok(store.legal_holds(&b, None, day(2), "", 100).await).is_empty());
    assert!(matches!(
        store.release_legal_hold(&b, &h.hold_id, day(2)).await,
        Err(ConsentError::NotFound { .. })
    ));
    assert!(matches!(
        store.update_anchor(&b, "rec-1", day(2)).await,
        Err(ConsentError::NotFound { .. })
    ));
    assert!(matches!(
        store
            .attest_deletion(&b, "rec-1", day(95), attestation("alice", "rec-1"))
            .await,
        Err(ConsentError::NotFound { .. })
    ));
    // B may register its own item with the same id.
    ok(store.apply_retention_defaults(&b, &defaults()).await);
    register(store, &b, &item("rec-1", "zoe", "call_recording", "", 5)).await;
    assert_eq!(
        ok(store.data_item(&a, "rec-1").await).map(|i| i.item.subject_id),
        Some("alice".into())
    );
    assert!(ok(store.legal_holds(&a, None, day(2), "", 100).await).len() == 1);
}

pub(crate) fn flag(kind: RecordKind, subject: &str, purpose: &str, at: i64) -> NewRecord {
    NewRecord {
        id: new_event_id(),
        kind,
        subject_id: subject.into(),
        purpose_id: purpose.into(),
        at: day(at),
        detail: [("reason".to_owned(), "email of the person".to_owned())].into(),
        actor_key_id: "key-1".into(),
    }
}

/// Flag records move the subject's flags in the same transaction; single and batch state
/// reads carry them (cached stacks included); a record that changes nothing is not written.
pub async fn flags_are_projected_with_the_state(store: &Arc<dyn Store>) {
    let t = tenant();
    append(
        store,
        &t,
        vec![event("alice", "analytics", "", Decision::Granted, day(1))],
    )
    .await;
    // Read (and cache) the state before the flags change.
    let before = ok(store
        .subject_state(&t, "alice", None, crate::Consistency::default())
        .await);
    assert!(before.flags.is_empty());

    let outcome = ok(store
        .append_flags(
            &t,
            "alice",
            vec![
                flag(RecordKind::ProcessingRestricted, "alice", "", 2),
                flag(RecordKind::Objected, "alice", "marketing_calls", 2),
            ],
            crate::CacheFence::None,
        )
        .await);
    assert_eq!(outcome.records.len(), 2);
    assert_eq!(outcome.revision, 3);
    assert_eq!(outcome.flags.restricted_since, Some(day(2)));
    let state = ok(store
        .subject_state(&t, "alice", None, crate::Consistency::default())
        .await);
    assert_eq!(
        state.flags, outcome.flags,
        "the write is seen by the next read"
    );
    assert_eq!(state.revision, 3);
    assert_eq!(state.entries.len(), 1);
    // A subject with flags and no choices, and one with neither, in one batch read.
    ok(store
        .append_flags(
            &t,
            "bob",
            vec![flag(RecordKind::GpcSet, "bob", "", 3)],
            crate::CacheFence::None,
        )
        .await);
    let batch = ok(store
        .subject_states(
            &t,
            &["alice".into(), "bob".into(), "carol".into()],
            crate::Consistency::default(),
        )
        .await);
    assert_eq!(batch[0].flags, outcome.flags);
    assert_eq!(batch[1].flags.gpc_since, Some(day(3)));
    assert!(batch[1].entries.is_empty());
    assert!(batch[2].flags.is_empty());
    // As-of reads carry the flags too (decide applies them by their times).
    let past = ok(store
        .subject_state(&t, "alice", Some(day(1)), crate::Consistency::default())
        .await);
    assert_eq!(past.flags, outcome.flags);

    // Restricting again changes nothing: nothing is written.
    let again = ok(store
        .append_flags(
            &t,
            "alice",
            vec![flag(RecordKind::ProcessingRestricted, "alice", "", 5)],
            crate::CacheFence::None,
        )
        .await);
    assert!(again.records.is_empty());
    assert_eq!(
        again.flags.restricted_since,
        Some(day(2)),
        "the first time stays"
    );
    assert_eq!(ok(store.head(&t).await).revision, 4);
    let lifted = ok(store
        .append_flags(
            &t,
            "alice",
            vec![
                flag(RecordKind::RestrictionLifted, "alice", "", 6),
                flag(
                    RecordKind::ObjectionWithdrawn,
                    "alice",
                    "marketing_calls",
                    6,
                ),
            ],
            crate::CacheFence::None,
        )
        .await);
    assert!(lifted.flags.is_empty());
    let state = ok(store
        .subject_state(&t, "alice", None, crate::Consistency::default())
        .await);
    assert!(state.flags.is_empty(), "{:?}", state.flags);

    let records = ok(store
        .list_records(
            &t,
            &EventQuery {
                subject_id: Some("alice".into()),
                limit: 10,
                ..EventQuery::default()
            },
        )
        .await);
    let kinds: Vec<RecordKind> = records.iter().map(|r| r.record.record.kind).collect();
    assert_eq!(
        kinds,
        [
            RecordKind::ProcessingRestricted,
            RecordKind::Objected,
            RecordKind::RestrictionLifted,
            RecordKind::ObjectionWithdrawn
        ]
    );
    let (report, _) = ok(verify_ledger(store.as_ref(), &t).await);
    assert!(report.ok, "{report:?}");
    // Another tenant sees none of it.
    let other = ok(store
        .subject_state(&tenant(), "bob", None, crate::Consistency::default())
        .await);
    assert!(other.flags.is_empty());
}

pub(crate) fn erasure(reason: &str) -> NewRecord {
    NewRecord {
        id: new_event_id(),
        kind: RecordKind::SubjectErased,
        subject_id: String::new(),
        purpose_id: String::new(),
        at: day(1),
        detail: [("reason".to_owned(), reason.to_owned())].into(),
        actor_key_id: "key-1".into(),
    }
}

/// Erasure (Art. 17): the subject's id and payloads leave every row, the chain still
/// verifies, reads answer with the erased marker, items become due unless kept by law,
/// every later write for the subject is refused, and a second erasure changes nothing.
pub async fn erasure_keeps_the_chain_and_refuses_the_subject(store: &Arc<dyn Store>) {
    let t = tenant();
    ok(store.apply_retention_defaults(&t, &defaults()).await);
    let keyed = consent_core::commands::Idempotency {
        key: "req-alice".into(),
        fingerprint: [9; 32],
    };
    let alice_grant = [event("alice", "analytics", "", Decision::Granted, day(1))];
    ok(store
        .append(&t, &alice_grant, Some(&keyed), crate::CacheFence::None)
        .await);
    append(
        store,
        &t,
        vec![event("bob", "analytics", "", Decision::Granted, day(1))],
    )
    .await;
    ok(store
        .append_flags(
            &t,
            "alice",
            vec![flag(RecordKind::GpcSet, "alice", "", 2)],
            crate::CacheFence::None,
        )
        .await);
    // Items created far ahead, so their own periods end long after the erasure.
    register(
        store,
        &t,
        &item("rec-a", "alice", "call_recording", "", 30_000),
    )
    .await;
    register(store, &t, &item("bill-a", "alice", "billing", "", 30_000)).await;
    register(
        store,
        &t,
        &item("rec-b", "bob", "call_recording", "", 30_000),
    )
    .await;
    ok(store
        .place_legal_hold(&t, &hold(HoldScope::Subject("alice".into()), None))
        .await);
    // Read (and cache) the state before the erasure.
    let before = ok(store
        .subject_state(&t, "alice", None, crate::Consistency::default())
        .await);
    assert_eq!(before.entries.len(), 1);

    let erased = ok(store
        .erase_subject(&t, "alice", erasure("request #1"), crate::CacheFence::None)
        .await);
    assert!(!erased.already_erased);
    assert_eq!(erased.entries_erased, 2, "the grant and the GPC record");
    assert_eq!((erased.items_due, erased.items_kept), (1, 1));
    let erased_id = erased.record.record.subject_id.clone();
    assert!(
        consent_core::chain::erased_digest(&erased_id).is_some(),
        "{erased_id}"
    );
    assert_eq!(erased.record.record.kind, RecordKind::SubjectErased);
    assert_eq!(
        erased
            .record
            .record
            .detail
            .get("reason")
            .map(String::as_str),
        Some("request #1")
    );
    assert_eq!(erased.revision, 4);

    let (report, _) = ok(verify_ledger(store.as_ref(), &t).await);
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked, 4);

    // No row holds the clear id or the payloads.
    let all = EventQuery {
        limit: 100,
        ..EventQuery::default()
    };
    for entry in ok(list_entries(store.as_ref(), &t, &all).await) {
        match entry {
            LedgerEntry::Event(e) if e.event.event.subject_id != "bob" => {
                assert_eq!(e.event.event.subject_id, erased_id);
                assert!(e.evidence_erased);
            }
            LedgerEntry::Event(_) => {}
            LedgerEntry::Record(r) => {
                assert_eq!(r.record.record.subject_id, erased_id);
                assert!(
                    r.detail_erased || r.record.record.kind == RecordKind::SubjectErased,
                    "{r:?}"
                );
            }
        }
    }
    let by_subject = EventQuery {
        subject_id: Some("alice".into()),
        ..all.clone()
    };
    assert!(ok(list_entries(store.as_ref(), &t, &by_subject).await).is_empty());

    // Reads: single, batch and as-of answer with the marker only.
    let state = ok(store
        .subject_state(&t, "alice", None, crate::Consistency::default())
        .await);
    assert!(state.entries.is_empty());
    assert!(state.flags.erased_since.is_some());
    assert_eq!(state.flags.gpc_since, None);
    let batch = ok(store
        .subject_states(
            &t,
            &["bob".into(), "alice".into()],
            crate::Consistency::default(),
        )
        .await);
    assert_eq!(batch[0].entries.len(), 1);
    assert!(batch[0].flags.is_empty());
    assert_eq!(batch[1].flags, state.flags);
    assert!(batch[1].entries.is_empty());
    let past = ok(store
        .subject_state(&t, "alice", Some(day(1)), crate::Consistency::default())
        .await);
    assert!(past.entries.is_empty() && past.flags.erased_since.is_some());

    // Items moved to the erased id; the call recording is due at the erasure, the bill
    // stays (kept by law), and the subject hold moved with them.
    let rec = ok(store.data_item(&t, "rec-a").await).unwrap_or_else(|| panic!("rec-a is gone"));
    assert_eq!(rec.item.subject_id, erased_id);
    assert!(rec.erased_at.is_some());
    assert_eq!(rec.delete_after, rec.erased_at);
    let bill = ok(store.data_item(&t, "bill-a").await).unwrap_or_else(|| panic!("bill-a is gone"));
    assert!(bill.delete_after > bill.erased_at);
    assert_eq!(ok(store.holds_covering(&t, &rec.item).await).len(), 1);
    let bob = ok(store.data_item(&t, "rec-b").await).unwrap_or_else(|| panic!("rec-b is gone"));
    assert_eq!(bob.erased_at, None);

    // Every write for the subject is refused, a retry of a write made before the erasure
    // too (its replay would show the erased rows under the clear id); others go on.
    is_failed_precondition(
        store
            .append(&t, &alice_grant, Some(&keyed), crate::CacheFence::None)
            .await,
        "erased",
    );
    // Every write for the subject is refused; others go on.
    is_failed_precondition(
        store
            .append(
                &t,
                &[event("alice", "analytics", "", Decision::Granted, day(5))],
                None,
                crate::CacheFence::None,
            )
            .await,
        "erased",
    );
    is_failed_precondition(
        store
            .append_flags(
                &t,
                "alice",
                vec![flag(RecordKind::ProcessingRestricted, "alice", "", 5)],
                crate::CacheFence::None,
            )
            .await,
        "erased",
    );
    is_failed_precondition(
        store
            .register_item(
                &t,
                &item("rec-a2", "alice", "call_recording", "", 5),
                day(5),
            )
            .await,
        "erased",
    );
    is_failed_precondition(
        store
            .place_legal_hold(&t, &hold(HoldScope::Subject("alice".into()), None))
            .await,
        "erased",
    );
    append(
        store,
        &t,
        vec![event("bob", "analytics", "", Decision::Withdrawn, day(6))],
    )
    .await;

    // A second erasure writes nothing and answers with the first.
    let again = ok(store
        .erase_subject(&t, "alice", erasure("request #2"), crate::CacheFence::None)
        .await);
    assert!(again.already_erased);
    assert_eq!(again.record, erased.record);
    let (report, head) = ok(verify_ledger(store.as_ref(), &t).await);
    assert!(report.ok, "{report:?}");
    assert_eq!(head.revision, 5);
}
