//! Conformance cases for [`crate::IdentityStore`]: links, unlinks, resolution, tenant scope
//! and erasure (part of [`crate::conformance`]).

use std::sync::Arc;

use consent_core::commands::new_event_id;
use consent_core::identity::{AliasKey, Identity, IdentityKey};
use consent_core::{ConsentError, Decision, IdentityType, NewRecord, RecordKind};

use crate::conformance::{append, day, event, ok, tenant};
use crate::{CacheFence, EventQuery, NewLink, Store, verify_ledger};

/// The link of `value` (of type `kind`) under the tenant's own identity key (which exists
/// once the tenant has written to its ledger).
pub(crate) async fn link_of(
    store: &Arc<dyn Store>,
    t: &str,
    kind: IdentityType,
    value: &str,
) -> NewLink {
    let key = ok(store.chain_key(t).await);
    let Some(key) = IdentityKey::of(&key) else {
        panic!("tenant {t} has no subject key after a write");
    };
    let identity = Identity::parse(kind, value).unwrap_or_else(|e| panic!("{value}: {e}"));
    NewLink {
        alias: key.alias_key(&identity),
        kind,
        value: identity.stored_value().map(str::to_owned),
    }
}

pub(crate) fn identity_record(kind: RecordKind, subject: &str, link: &NewLink) -> NewRecord {
    let mut detail = std::collections::BTreeMap::from([
        ("identity_type".to_owned(), link.kind.as_str().to_owned()),
        ("alias_sha256".to_owned(), link.alias.to_hex()),
    ]);
    if let Some(value) = &link.value {
        detail.insert("value".to_owned(), value.clone());
    }
    NewRecord {
        id: new_event_id(),
        kind,
        subject_id: subject.into(),
        purpose_id: String::new(),
        at: day(2),
        detail,
        actor_key_id: "key-1".into(),
    }
}

pub(crate) async fn link(
    store: &Arc<dyn Store>,
    t: &str,
    subject: &str,
    link: &NewLink,
) -> consent_core::Result<crate::LinkOutcome> {
    store
        .link_identity(
            t,
            subject,
            link,
            identity_record(RecordKind::IdentityLinked, subject, link),
            CacheFence::None,
        )
        .await
}

pub(crate) async fn unlink(
    store: &Arc<dyn Store>,
    t: &str,
    subject: &str,
    link: &NewLink,
) -> consent_core::Result<crate::LinkOutcome> {
    store
        .unlink_identity(
            t,
            subject,
            &link.alias,
            identity_record(RecordKind::IdentityUnlinked, subject, link),
            CacheFence::None,
        )
        .await
}

/// A fresh tenant whose ledger holds one grant of `acct-1` (so it has its subject key).
pub(crate) async fn tenant_that_wrote(store: &Arc<dyn Store>) -> String {
    let t = tenant();
    append(
        store,
        &t,
        vec![event("acct-1", "analytics", "", Decision::Granted, day(1))],
    )
    .await;
    t
}

/// Panics unless the tenant's chain verifies; returns its head revision.
pub(crate) async fn assert_verifies(store: &Arc<dyn Store>, t: &str) -> consent_core::Revision {
    let (report, head) = ok(verify_ledger(store.as_ref(), t).await);
    assert!(report.ok, "{report:?}");
    head.revision
}

/// The kinds of the tenant's ledger records, in revision order.
pub(crate) async fn record_kinds(store: &Arc<dyn Store>, t: &str) -> Vec<RecordKind> {
    records_of(store, t)
        .await
        .iter()
        .map(|r| r.record.record.kind)
        .collect()
}

pub(crate) async fn records_of(store: &Arc<dyn Store>, t: &str) -> Vec<crate::StoredRecord> {
    let query = EventQuery {
        limit: 1000,
        ..EventQuery::default()
    };
    ok(store.list_records(t, &query).await)
}

/// A link is a ledger record in the tenant's chain; a retry writes nothing; an identity
/// linked to one subject cannot be linked to another; a phone number is stored only as its
/// keyed hash.
pub async fn an_identity_links_to_one_subject_with_a_ledger_record(store: &Arc<dyn Store>) {
    let t = tenant_that_wrote(store).await;
    let phone = link_of(store, &t, IdentityType::Phone, "+32 470 12 34 56").await;
    assert_eq!(phone.value, None);
    let cookie = link_of(store, &t, IdentityType::Cookie, "ck-9").await;
    // Read (and cache, on cached stacks) "not linked" first: the link must replace it.
    assert_eq!(ok(store.resolve_identity(&t, &phone.alias).await), None);

    let first = ok(link(store, &t, "acct-1", &phone).await);
    let Some(record) = &first.record else {
        panic!("the first link wrote no record");
    };
    assert_eq!(record.record.kind, RecordKind::IdentityLinked);
    assert_eq!(record.revision, first.revision);
    assert_eq!(first.identity.subject_id, "acct-1");
    assert_eq!(first.identity.revision, first.revision);
    let second = ok(link(store, &t, "acct-1", &cookie).await);
    assert_eq!(second.revision, first.revision + 1);

    // A retry: nothing written, the same link.
    let retry = ok(link(store, &t, "acct-1", &phone).await);
    assert_eq!(retry.record, None);
    assert_eq!(retry.revision, second.revision);
    assert_eq!(retry.identity, first.identity);

    // Another subject may not take it.
    match link(store, &t, "acct-2", &phone).await {
        Err(ConsentError::FailedPrecondition(msg)) => {
            assert!(msg.contains("acct-1"), "{msg}");
            assert!(!msg.contains("470"), "the message shows the number: {msg}");
        }
        other => panic!("expected FailedPrecondition, got {other:?}"),
    }

    let resolved = ok(store.resolve_identity(&t, &phone.alias).await);
    assert_eq!(resolved.as_ref(), Some(&first.identity));
    // Read with the tenant's revision (a cache versions its copy by it), linked or not.
    let at = ok(store.resolve_identity_at(&t, &phone.alias).await);
    assert_eq!(
        (at.link.as_ref(), at.revision),
        (Some(&first.identity), second.revision)
    );
    let unlinked = ok(store.resolve_identity_at(&t, &AliasKey([0; 32])).await);
    assert_eq!((unlinked.link, unlinked.revision), (None, second.revision));
    let listed = ok(store.list_identities(&t, "acct-1").await);
    assert_eq!(
        listed,
        vec![first.identity.clone(), second.identity.clone()]
    );
    assert_eq!(listed[1].link.value.as_deref(), Some("ck-9"));
    assert!(ok(store.list_identities(&t, "acct-2").await).is_empty());
    assert_eq!(
        ok(store.resolve_identity(&t, &AliasKey([0; 32])).await),
        None
    );

    assert_eq!(
        record_kinds(store, &t).await,
        [RecordKind::IdentityLinked, RecordKind::IdentityLinked]
    );
    assert_eq!(assert_verifies(store, &t).await, second.revision);
}

/// A tenant that never wrote gets its subject key from `ensure_subject_key`, without a
/// ledger entry; the key stays the same afterwards and is the one its first write uses.
pub async fn a_tenant_gets_its_identity_key_before_any_write(store: &Arc<dyn Store>) {
    let t = tenant();
    let first = ok(store.ensure_subject_key(&t).await);
    assert!(first.subject_key.is_some());
    assert_eq!(ok(store.ensure_subject_key(&t).await), first);
    assert_eq!(ok(store.head(&t).await).revision, 0);
    append(
        store,
        &t,
        vec![event("acct-1", "analytics", "", Decision::Granted, day(1))],
    )
    .await;
    assert_eq!(ok(store.chain_key(&t).await), first);
    assert_eq!(ok(store.ensure_subject_key(&t).await), first);
    assert_verifies(store, &t).await;
}

/// An unlink is a record too, frees the identity for another subject, and is `NotFound`
/// for an identity not linked to the subject named.
pub async fn unlinking_frees_an_identity(store: &Arc<dyn Store>) {
    let t = tenant_that_wrote(store).await;
    let email = link_of(store, &t, IdentityType::Email, "Someone@Example.com").await;
    ok(link(store, &t, "acct-1", &email).await);
    // Read (and cache) the link first: the unlink must replace it.
    assert!(ok(store.resolve_identity(&t, &email.alias).await).is_some());
    match unlink(store, &t, "acct-2", &email).await {
        Err(ConsentError::NotFound { id, .. }) => assert_eq!(id, "acct-2"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    let unlinked = ok(unlink(store, &t, "acct-1", &email).await);
    assert!(unlinked.record.is_some());
    assert_eq!(unlinked.identity.subject_id, "acct-1");
    assert_eq!(ok(store.resolve_identity(&t, &email.alias).await), None);
    assert!(ok(store.list_identities(&t, "acct-1").await).is_empty());
    assert!(matches!(
        unlink(store, &t, "acct-1", &email).await,
        Err(ConsentError::NotFound { .. })
    ));
    let relinked = ok(link(store, &t, "acct-2", &email).await);
    assert_eq!(relinked.identity.subject_id, "acct-2");
    assert_eq!(
        record_kinds(store, &t).await,
        [
            RecordKind::IdentityLinked,
            RecordKind::IdentityUnlinked,
            RecordKind::IdentityLinked
        ]
    );
    assert_verifies(store, &t).await;
}

/// One tenant's links are invisible to another, even for the same alias key.
pub async fn identities_are_tenant_scoped(store: &Arc<dyn Store>) {
    let (a, b) = (
        tenant_that_wrote(store).await,
        tenant_that_wrote(store).await,
    );
    let cookie = link_of(store, &a, IdentityType::Cookie, "ck-1").await;
    ok(link(store, &a, "acct-1", &cookie).await);
    assert_eq!(ok(store.resolve_identity(&b, &cookie.alias).await), None);
    assert!(ok(store.list_identities(&b, "acct-1").await).is_empty());
    assert!(matches!(
        unlink(store, &b, "acct-1", &cookie).await,
        Err(ConsentError::NotFound { .. })
    ));
    // The same key in the other tenant links to its own subject.
    ok(link(store, &b, "acct-9", &cookie).await);
    let in_a = ok(store.resolve_identity(&a, &cookie.alias).await);
    assert_eq!(in_a.map(|i| i.subject_id).as_deref(), Some("acct-1"));
}

/// Erasing a subject drops its links (the identities resolve to nothing), keeps the chain
/// whole, and refuses new links for it.
pub async fn erasure_drops_the_subjects_identities(store: &Arc<dyn Store>) {
    let t = tenant_that_wrote(store).await;
    let phone = link_of(store, &t, IdentityType::Phone, "+32 470 12 34 56").await;
    let device = link_of(store, &t, IdentityType::Device, "dev-1").await;
    ok(link(store, &t, "acct-1", &phone).await);
    ok(link(store, &t, "acct-1", &device).await);
    assert!(ok(store.resolve_identity(&t, &phone.alias).await).is_some());
    let erasure = NewRecord {
        id: new_event_id(),
        kind: RecordKind::SubjectErased,
        subject_id: String::new(),
        purpose_id: String::new(),
        at: day(3),
        detail: [("reason".to_owned(), "request".to_owned())].into(),
        actor_key_id: "key-1".into(),
    };
    ok(store
        .erase_subject(&t, "acct-1", erasure, CacheFence::None)
        .await);
    assert_eq!(ok(store.resolve_identity(&t, &phone.alias).await), None);
    assert_eq!(ok(store.resolve_identity(&t, &device.alias).await), None);
    assert!(ok(store.list_identities(&t, "acct-1").await).is_empty());
    // The link records lost their subject and detail like every entry of the subject.
    for record in records_of(store, &t).await {
        assert_ne!(record.record.record.subject_id, "acct-1");
        assert!(
            !record.record.record.detail.values().any(|v| v == "dev-1"),
            "{record:?}"
        );
    }
    assert!(matches!(
        link(store, &t, "acct-1", &device).await,
        Err(ConsentError::FailedPrecondition(_))
    ));
    assert_verifies(store, &t).await;
}

/// A subject holds at most `MAX_IDENTITIES_PER_SUBJECT` identities: one more is refused,
/// and after an unlink there is room again.
pub async fn a_subject_holds_a_bounded_number_of_identities(store: &Arc<dyn Store>) {
    let t = tenant_that_wrote(store).await;
    let max = usize::try_from(crate::MAX_IDENTITIES_PER_SUBJECT).unwrap_or(usize::MAX);
    let mut links = Vec::with_capacity(max + 1);
    for i in 0..=max {
        links.push(link_of(store, &t, IdentityType::Device, &format!("dev-{i}")).await);
    }
    for one in &links[..max] {
        ok(link(store, &t, "acct-1", one).await);
    }
    match link(store, &t, "acct-1", &links[max]).await {
        Err(ConsentError::FailedPrecondition(msg)) => assert!(msg.contains("acct-1"), "{msg}"),
        other => panic!("expected FailedPrecondition, got {other:?}"),
    }
    assert_eq!(ok(store.list_identities(&t, "acct-1").await).len(), max);
    ok(unlink(store, &t, "acct-1", &links[0]).await);
    ok(link(store, &t, "acct-1", &links[max]).await);
}

/// A write by identity commits only where its identity stands in the write's transaction:
/// its implicit subject while it is not linked, the subject it is linked to after. A write
/// resolved before a link or unlink (so naming the subject the identity no longer stands
/// for) is `Aborted` and writes nothing; a write by id is not checked.
pub async fn a_write_by_identity_lands_where_the_identity_stands_at_commit(store: &Arc<dyn Store>) {
    let t = tenant_that_wrote(store).await;
    let cookie = link_of(store, &t, IdentityType::Cookie, "ck-race").await;
    let implicit = consent_core::identity::implicit_subject_id(&cookie.alias);
    let by_cookie = |subject: &str, decision: Decision| {
        let events = vec![event(subject, "analytics", "", decision, day(3))];
        let (store, t, alias) = (Arc::clone(store), t.clone(), cookie.alias);
        async move {
            store
                .append_by_identity(&t, &events, None, CacheFence::None, &alias)
                .await
        }
    };
    let aborted = |r: consent_core::Result<crate::AppendOutcome>, what: &str| match r {
        Err(ConsentError::Aborted(_)) => {}
        other => panic!("{what}: expected Aborted, got {other:?}"),
    };

    // Not linked: its own subject, and nothing else.
    let head = ok(store.head(&t).await).revision;
    ok(by_cookie(&implicit, Decision::Granted).await);
    aborted(
        by_cookie("acct-1", Decision::Granted).await,
        "unlinked, to an account",
    );
    assert_eq!(
        ok(store.head(&t).await).revision,
        head + 1,
        "the aborted write wrote nothing"
    );

    // Linked meanwhile: a withdrawal resolved before the link is aborted, not lost on the
    // implicit subject; resolved again, it lands on the account.
    ok(link(store, &t, "acct-1", &cookie).await);
    aborted(
        by_cookie(&implicit, Decision::Withdrawn).await,
        "resolved before the link",
    );
    ok(by_cookie("acct-1", Decision::Withdrawn).await);
    // Rights by identity likewise: a restriction resolved before the link is aborted.
    let restrict = |subject: &str| {
        let record = NewRecord {
            id: new_event_id(),
            kind: RecordKind::ProcessingRestricted,
            subject_id: subject.into(),
            purpose_id: String::new(),
            at: day(3),
            detail: Default::default(),
            actor_key_id: String::new(),
        };
        let (store, t, subject, alias) = (
            Arc::clone(store),
            t.clone(),
            subject.to_owned(),
            cookie.alias,
        );
        async move {
            store
                .append_flags_by_identity(&t, &subject, vec![record], CacheFence::None, &alias)
                .await
        }
    };
    match restrict(&implicit).await {
        Err(ConsentError::Aborted(_)) => {}
        other => panic!("a restriction resolved before the link: expected Aborted, got {other:?}"),
    }
    assert!(
        ok(restrict("acct-1").await)
            .flags
            .restricted_since
            .is_some()
    );

    // Unlinked meanwhile: a grant resolved before the unlink never reaches the account.
    ok(unlink(store, &t, "acct-1", &cookie).await);
    aborted(
        by_cookie("acct-1", Decision::Granted).await,
        "resolved before the unlink",
    );
    ok(by_cookie(&implicit, Decision::Granted).await);
    let account = ok(store
        .subject_state(&t, "acct-1", None, crate::Consistency::Full)
        .await);
    assert_eq!(
        account
            .entries
            .iter()
            .map(|e| e.decision)
            .collect::<Vec<_>>(),
        [Decision::Withdrawn],
        "the account holds the withdrawal made while linked, and no later grant"
    );

    // An erasure by the cookie resolved before the unlink names the account: aborted, the
    // account kept; named by the cookie now, its own subject is erased.
    let erasure = |subject: &str| NewRecord {
        id: new_event_id(),
        kind: RecordKind::SubjectErased,
        subject_id: subject.into(),
        purpose_id: String::new(),
        at: day(4),
        detail: Default::default(),
        actor_key_id: String::new(),
    };
    match store
        .erase_subject_by_identity(
            &t,
            "acct-1",
            erasure("acct-1"),
            CacheFence::None,
            &cookie.alias,
        )
        .await
    {
        Err(ConsentError::Aborted(_)) => {}
        other => panic!("an erasure resolved before the unlink: expected Aborted, got {other:?}"),
    }
    assert!(
        !ok(store
            .subject_state(&t, "acct-1", None, crate::Consistency::Full)
            .await)
        .entries
        .is_empty()
    );
    let erased = ok(store
        .erase_subject_by_identity(
            &t,
            &implicit,
            erasure(&implicit),
            CacheFence::None,
            &cookie.alias,
        )
        .await);
    assert!(!erased.already_erased);
}
