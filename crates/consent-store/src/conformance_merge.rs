//! Conformance cases for merges ([`crate::IdentityStore::merge_subjects`]): one person found
//! under two subject ids (part of [`crate::conformance`]).

use std::sync::Arc;

use consent_core::commands::{Idempotency, new_event_id};
use consent_core::{ConsentError, Decision, IdentityType, NewRecord, RecordKind, SubjectState};

use crate::conformance::{append, day, event, ok};
use crate::conformance_identity::{
    assert_verifies, identity_record, link, link_of, record_kinds, tenant_that_wrote, unlink,
};
use crate::conformance_retention::{erasure, flag};
use crate::{CacheFence, Consistency, Merge, MergeVia, NewLink, Store};

fn merged_record(subject: &str, into: &str, from: &str) -> NewRecord {
    NewRecord {
        id: new_event_id(),
        kind: RecordKind::SubjectsMerged,
        subject_id: subject.into(),
        purpose_id: String::new(),
        at: day(9),
        detail: [
            ("merged_into".to_owned(), into.to_owned()),
            ("merged_from".to_owned(), from.to_owned()),
        ]
        .into(),
        actor_key_id: "key-1".into(),
    }
}

/// The merge of `from` into `into` asked by `via`, with its records.
fn merge(into: &str, from: &str, via: MergeVia) -> Merge {
    let mut records = Vec::new();
    if let MergeVia::NewLink(link) = &via {
        records.push(identity_record(RecordKind::IdentityLinked, into, link));
    }
    records.push(merged_record(into, into, from));
    records.push(merged_record(from, into, from));
    Merge {
        into: into.into(),
        from: from.into(),
        via,
        records,
    }
}

async fn merge_via_link(
    store: &Arc<dyn Store>,
    t: &str,
    into: &str,
    from: &str,
    link: &NewLink,
) -> consent_core::Result<crate::MergeOutcome> {
    store
        .merge_subjects(
            t,
            &merge(into, from, MergeVia::Linked(link.alias)),
            CacheFence::None,
        )
        .await
}

async fn state(store: &Arc<dyn Store>, t: &str, subject: &str) -> Arc<SubjectState> {
    ok(store
        .subject_state(t, subject, None, Consistency::default())
        .await)
}

/// The decision `state` holds for a purpose (purpose-wide entry).
fn decision(state: &SubjectState, purpose: &str) -> Option<Decision> {
    state
        .entries_for(purpose, "")
        .find(|e| e.vendor_id.is_empty())
        .map(|e| e.decision)
}

async fn restrict_on_day_2(store: &Arc<dyn Store>, t: &str, subject: &str) {
    ok(store
        .append_flags(
            t,
            subject,
            vec![flag(RecordKind::ProcessingRestricted, subject, "", 2)],
            CacheFence::None,
        )
        .await);
}

fn refused_naming(result: consent_core::Result<impl std::fmt::Debug>, name: &str) {
    match result {
        Err(ConsentError::FailedPrecondition(msg)) => assert!(msg.contains(name), "{msg}"),
        other => panic!("expected FailedPrecondition naming {name}, got {other:?}"),
    }
}

/// A merge keeps, per purpose, the choice collected last, a tie going to the refusal: a
/// withdrawal or denial on either side stands unless the person chose again after it; the
/// rights exercised on either side stand; the identities move; both sides get a record.
pub async fn a_merge_keeps_every_withdrawal(store: &Arc<dyn Store>) {
    let t = tenant_that_wrote(store).await; // acct-1 granted analytics on day 1
    let g = Decision::Granted;
    let d = Decision::Denied;
    append(
        store,
        &t,
        vec![
            event("anon-1", "analytics", "", d, day(2)), // later refusal on the other side
            event("anon-1", "marketing", "", g, day(3)),
            event("acct-1", "marketing", "", d, day(4)), // later refusal on this side
            event("acct-1", "profiling", "", g, day(5)),
            event("anon-1", "profiling", "", d, day(5)), // a tie: the refusal
            event("acct-1", "research", "", d, day(1)),
            event("anon-1", "research", "", g, day(6)), // chosen again after the refusal
        ],
    )
    .await;
    restrict_on_day_2(store, &t, "anon-1").await;
    let cookie = link_of(store, &t, IdentityType::Cookie, "ck-1").await;
    let phone = link_of(store, &t, IdentityType::Phone, "+32 470 12 34 56").await;
    ok(link(store, &t, "anon-1", &cookie).await);
    ok(link(store, &t, "anon-1", &phone).await);
    // Read (and cache, on cached stacks) both states and a resolution first.
    assert_eq!(
        decision(&*state(store, &t, "acct-1").await, "analytics"),
        Some(g)
    );
    assert_eq!(
        decision(&*state(store, &t, "anon-1").await, "analytics"),
        Some(d)
    );
    assert_eq!(
        ok(store.resolve_identity(&t, &phone.alias).await).map(|i| i.subject_id),
        Some("anon-1".to_owned())
    );

    let merged = ok(merge_via_link(store, &t, "acct-1", "anon-1", &cookie).await);
    assert_eq!(merged.records.len(), 2);
    assert_eq!(merged.identities_moved, 2);
    assert_eq!(merged.revision, merged.records[1].revision);

    let into = state(store, &t, "acct-1").await;
    assert_eq!(decision(&into, "analytics"), Some(d), "{into:?}");
    assert_eq!(decision(&into, "marketing"), Some(d));
    assert_eq!(decision(&into, "profiling"), Some(d));
    assert_eq!(decision(&into, "research"), Some(g));
    assert_eq!(into.flags.restricted_since, Some(day(2)));
    assert_eq!(into.flags.merged_into, None);
    assert!(into.flags.absorbed);
    let from = state(store, &t, "anon-1").await;
    assert_eq!(from.flags.merged_into.as_deref(), Some("acct-1"));
    for alias in [&cookie.alias, &phone.alias] {
        assert_eq!(
            ok(store.resolve_identity(&t, alias).await).map(|i| i.subject_id),
            Some("acct-1".to_owned())
        );
    }
    assert_eq!(ok(store.list_identities(&t, "acct-1").await).len(), 2);
    assert!(ok(store.list_identities(&t, "anon-1").await).is_empty());
    assert_eq!(ok(store.merged_into(&t, "acct-1").await), ["anon-1"]);
    let kinds = record_kinds(store, &t).await;
    assert_eq!(
        kinds[kinds.len() - 2..],
        [RecordKind::SubjectsMerged, RecordKind::SubjectsMerged]
    );
    assert_eq!(assert_verifies(store, &t).await, merged.revision);

    // A later choice on the subject merged into moves its state as ever.
    append(
        store,
        &t,
        vec![event("acct-1", "analytics", "", g, day(10))],
    )
    .await;
    assert_eq!(
        decision(&*state(store, &t, "acct-1").await, "analytics"),
        Some(g)
    );
}

/// A merged-away subject is closed: writes naming it are refused naming the subject it was
/// merged into; a retry writes nothing; a merge of the root moves its group; an erasure of
/// a member drops its closure.
pub async fn a_merged_subject_is_closed(store: &Arc<dyn Store>) {
    let t = tenant_that_wrote(store).await;
    // A keyed write before the merge: its retry after the merge gets its answer.
    let keyed = Idempotency {
        key: "withdraw-anon-1".into(),
        fingerprint: [7; 32],
    };
    let denial = [event("anon-1", "analytics", "", Decision::Denied, day(2))];
    let first = ok(store
        .append(&t, &denial, Some(&keyed), CacheFence::None)
        .await);
    let cookie = link_of(store, &t, IdentityType::Cookie, "ck-1").await;
    let device = link_of(store, &t, IdentityType::Device, "dev-1").await;
    ok(link(store, &t, "anon-1", &cookie).await);
    ok(link(store, &t, "acct-1", &device).await);
    // Not linked to the subject said: refused, nothing written.
    refused_naming(
        merge_via_link(store, &t, "acct-2", "anon-1", &device).await,
        "acct-1",
    );
    refused_naming(
        merge_via_link(store, &t, "anon-1", "anon-1", &cookie).await,
        "itself",
    );
    let merged = ok(merge_via_link(store, &t, "acct-1", "anon-1", &cookie).await);
    let replay = ok(store
        .append(&t, &denial, Some(&keyed), CacheFence::None)
        .await);
    assert!(replay.replayed, "the retry is answered, not refused");
    assert_eq!(replay.revision, first.revision);

    let write = store
        .append(
            &t,
            &[event("anon-1", "marketing", "", Decision::Granted, day(11))],
            None,
            CacheFence::None,
        )
        .await;
    refused_naming(write, "acct-1");
    refused_naming(
        store
            .append_flags(
                &t,
                "anon-1",
                vec![flag(RecordKind::GpcSet, "anon-1", "", 11)],
                CacheFence::None,
            )
            .await,
        "acct-1",
    );
    let other = link_of(store, &t, IdentityType::Cookie, "ck-2").await;
    refused_naming(link(store, &t, "anon-1", &other).await, "acct-1");
    refused_naming(unlink(store, &t, "anon-1", &cookie).await, "acct-1");
    // A retry writes nothing.
    let retry = ok(merge_via_link(store, &t, "acct-1", "anon-1", &cookie).await);
    assert!(retry.records.is_empty());
    assert_eq!(retry.revision, merged.revision);
    // Into a closed subject: refused naming where it went.
    let third = link_of(store, &t, IdentityType::Cookie, "ck-3").await;
    ok(link(store, &t, "acct-3", &third).await);
    refused_naming(
        merge_via_link(store, &t, "anon-1", "acct-3", &third).await,
        "acct-1",
    );
    // Merged elsewhere: refused naming where it went.
    refused_naming(
        merge_via_link(store, &t, "acct-2", "anon-1", &cookie).await,
        "acct-1",
    );
    // The root merged in turn: its group follows it.
    ok(link(store, &t, "acct-2", &other).await);
    ok(merge_via_link(store, &t, "acct-2", "acct-1", &device).await);
    assert_eq!(
        ok(store.merged_into(&t, "acct-2").await),
        ["acct-1", "anon-1"]
    );
    assert!(ok(store.merged_into(&t, "acct-1").await).is_empty());
    assert_eq!(
        ok(store.merge_root(&t, "anon-1").await).as_deref(),
        Some("acct-2"),
        "the store names the group's root, however long the chain"
    );
    assert_eq!(ok(store.merge_root(&t, "acct-2").await), None);
    assert_eq!(
        decision(&*state(store, &t, "acct-2").await, "analytics"),
        Some(Decision::Denied)
    );
    refused_naming(
        store
            .append(
                &t,
                &[event("acct-1", "marketing", "", Decision::Granted, day(12))],
                None,
                CacheFence::None,
            )
            .await,
        "acct-2",
    );
    // A member is erased with its group, after the root: alone, refused naming the root.
    refused_naming(
        store
            .erase_subject(&t, "anon-1", erasure("request"), CacheFence::None)
            .await,
        "acct-2",
    );
    ok(store
        .erase_subject(&t, "acct-2", erasure("request"), CacheFence::None)
        .await);
    refused_naming(
        merge_via_link(store, &t, "acct-2", "acct-3", &third).await,
        "erased",
    );
    // The members' closures name the erased root until they go in turn.
    assert_eq!(
        ok(store.merged_into(&t, "acct-2").await),
        ["acct-1", "anon-1"]
    );
    ok(store
        .erase_subject(&t, "anon-1", erasure("request"), CacheFence::None)
        .await);
    assert_eq!(ok(store.merged_into(&t, "acct-2").await), ["acct-1"]);
    assert_verifies(store, &t).await;
}

/// Linking an identity that stands for its own, implicit subject with that subject's
/// choices carried over: one transaction links it and merges the implicit subject.
pub async fn carrying_choices_merges_the_implicit_subject(store: &Arc<dyn Store>) {
    let t = tenant_that_wrote(store).await; // acct-1 granted analytics on day 1
    let cookie = link_of(store, &t, IdentityType::Cookie, "ck-1").await;
    // Choices recorded by the cookie before it was linked live on its implicit subject.
    let implicit = consent_core::identity::implicit_subject_id(&cookie.alias);
    append(
        store,
        &t,
        vec![event(&implicit, "analytics", "", Decision::Denied, day(2))],
    )
    .await;
    let carry = merge("acct-1", &implicit, MergeVia::NewLink(cookie.clone()));
    let merged = ok(store.merge_subjects(&t, &carry, CacheFence::None).await);
    assert_eq!(merged.records.len(), 3);
    assert_eq!(merged.records[0].record.kind, RecordKind::IdentityLinked);
    let linked = ok(store.resolve_identity(&t, &cookie.alias).await);
    assert_eq!(
        linked.as_ref().map(|i| (i.subject_id.as_str(), i.revision)),
        Some(("acct-1", merged.records[0].revision))
    );
    assert_eq!(
        decision(&*state(store, &t, "acct-1").await, "analytics"),
        Some(Decision::Denied)
    );
    // Its own choices are the account's now: it stays linked.
    refused_naming(unlink(store, &t, "acct-1", &cookie).await, "carry_choices");
    // A retry writes nothing; the identity linked meanwhile to another subject: refused.
    let retry = ok(store.merge_subjects(&t, &carry, CacheFence::None).await);
    assert!(retry.records.is_empty());
    let device = link_of(store, &t, IdentityType::Device, "dev-1").await;
    ok(link(store, &t, "acct-2", &device).await);
    let late = merge("acct-1", "alias:other", MergeVia::NewLink(device));
    refused_naming(
        store.merge_subjects(&t, &late, CacheFence::None).await,
        "acct-2",
    );
    assert_verifies(store, &t).await;
}

/// A snapshot leaves closed subjects out and folds a group into the subject that answers
/// for it, through merges of merges, as the projection does; before the merges each
/// subject answers for itself.
pub async fn a_snapshot_answers_for_a_merged_group(store: &Arc<dyn Store>) {
    let t = tenant_that_wrote(store).await; // acct-1 granted analytics on day 1
    append(
        store,
        &t,
        vec![event("anon-1", "analytics", "", Decision::Denied, day(2))],
    )
    .await;
    restrict_on_day_2(store, &t, "anon-1").await;
    let cookie = link_of(store, &t, IdentityType::Cookie, "ck-1").await;
    let before = ok(link(store, &t, "anon-1", &cookie).await).revision;
    ok(merge_via_link(store, &t, "acct-1", "anon-1", &cookie).await);
    ok(merge_via_link(store, &t, "acct-2", "acct-1", &cookie).await);

    // Pages of one entry: the group's reads page too.
    let now = crate::conformance_snapshot::scan_all(store, &t, None, &[], 1, "").await;
    let ids: Vec<&str> = now.iter().map(|s| s.subject_id.as_str()).collect();
    assert_eq!(ids, ["acct-2"]);
    assert_eq!(decision(&now[0].state, "analytics"), Some(Decision::Denied));
    assert_eq!(now[0].state.flags.restricted_since, Some(day(2)));
    let projected = state(store, &t, "acct-2").await;
    assert_eq!(now[0].state.entries, projected.entries);

    let then = crate::conformance_snapshot::scan_all(store, &t, Some(before), &[], 1, "").await;
    let ids: Vec<&str> = then.iter().map(|s| s.subject_id.as_str()).collect();
    assert_eq!(ids, ["acct-1", "anon-1"]);
    assert_eq!(
        decision(&then[0].state, "analytics"),
        Some(Decision::Granted)
    );
}
