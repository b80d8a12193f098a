//! Conformance cases of snapshot scans ([`crate::snapshot`]): subject order, one revision,
//! pages cut inside a subject, filters, resumption and erasures during a scan.

use std::sync::Arc;

use consent_core::commands::new_event_id;
use consent_core::{
    ConsentError, Decision, NewRecord, RecordKind, SUBJECT_WIDE, StateEntry, SubjectFlags,
    Timestamp,
};

use crate::conformance::{append, day, event, ok, tenant};
use crate::snapshot::{SnapshotScan, SubjectSnapshot};
use crate::{CacheFence, Consistency, Store};

fn flag(subject: &str, kind: RecordKind, purpose: &str, at: Timestamp) -> NewRecord {
    NewRecord {
        id: new_event_id(),
        kind,
        subject_id: subject.into(),
        purpose_id: purpose.into(),
        at,
        detail: Default::default(),
        actor_key_id: "key-1".into(),
    }
}

fn erasure() -> NewRecord {
    NewRecord {
        detail: [("reason".to_owned(), "request".to_owned())].into(),
        ..flag("", RecordKind::SubjectErased, "", day(9))
    }
}

async fn set_flag(store: &Arc<dyn Store>, t: &str, subject: &str, kind: RecordKind, purpose: &str) {
    ok(store
        .append_flags(
            t,
            subject,
            vec![flag(subject, kind, purpose, day(4))],
            CacheFence::None,
        )
        .await);
}

/// Every subject of a scan, chunk by chunk.
pub(crate) async fn scan_all(
    store: &Arc<dyn Store>,
    t: &str,
    revision: Option<i64>,
    purposes: &[&str],
    page: usize,
    after: &str,
) -> Vec<SubjectSnapshot> {
    let mut scan = ok(SnapshotScan::start(
        Arc::clone(store),
        t,
        revision,
        day(10),
        purposes.iter().map(|p| (*p).to_owned()).collect(),
        page,
        after,
    )
    .await);
    let mut all = Vec::new();
    // Bounded: one chunk per subject at most, and the test writes a handful.
    for _ in 0..100 {
        match ok(scan.next_chunk(2).await) {
            Some(chunk) => all.extend(chunk),
            None => return all,
        }
    }
    panic!("the scan did not end");
}

fn ids(subjects: &[SubjectSnapshot]) -> Vec<&str> {
    subjects.iter().map(|s| s.subject_id.as_str()).collect()
}

/// The subject's choices as the ledger held them at `revision`: per (purpose, vendor), the
/// one that supersedes the others, from the subject's history.
async fn expected_entries(
    store: &Arc<dyn Store>,
    t: &str,
    subject: &str,
    revision: i64,
    purposes: &[&str],
) -> Vec<StateEntry> {
    let mut history = ok(store.subject_history(t, subject).await);
    history.entries.retain(|e| {
        e.revision <= revision
            && (purposes.is_empty()
                || e.purpose_id == SUBJECT_WIDE
                || purposes.contains(&e.purpose_id.as_str()))
    });
    history.as_of(day(10)).entries
}

/// A scan lists every subject with a choice or a right, in byte order of ids (not
/// dictionary order), once each, however pages cut through subjects; each with its choices
/// and flags as the ledger held them at the scan's revision, whatever was written after;
/// filtered by purpose (subject-wide withdrawals and rights without a purpose stay); from a
/// subject on when resumed; never an erased subject. A revision past the head is refused.
pub async fn a_snapshot_scan_reads_every_subject_at_one_revision(store: &Arc<dyn Store>) {
    let t = tenant();
    let g = Decision::Granted;
    append(
        store,
        &t,
        vec![
            event("a", "analytics", "", g, day(1)),
            event("a", "analytics", "", Decision::Withdrawn, day(2)),
        ],
    )
    .await;
    append(
        store,
        &t,
        vec![
            event("a-b", "analytics", "", g, day(1)),
            event("a-b", "call_recording", "ga4", g, day(1)),
            event("a-b", "call_recording", "", Decision::Denied, day(2)),
        ],
    )
    .await;
    // A late import of an older grant does not beat the newer refusal.
    append(
        store,
        &t,
        vec![event("ab", "analytics", "", Decision::Denied, day(3))],
    )
    .await;
    append(store, &t, vec![event("ab", "analytics", "", g, day(1))]).await;
    append(
        store,
        &t,
        vec![event("B", SUBJECT_WIDE, "", Decision::Withdrawn, day(2))],
    )
    .await;
    append(store, &t, vec![event("é", "call_recording", "", g, day(1))]).await;
    // Collected after the scan's `at`: not counted yet.
    append(store, &t, vec![event("é", "analytics", "", g, day(11))]).await;
    set_flag(store, &t, "flag-only", RecordKind::ProcessingRestricted, "").await;
    set_flag(store, &t, "obj", RecordKind::Objected, "analytics").await;
    append(store, &t, vec![event("gone", "analytics", "", g, day(1))]).await;
    ok(store
        .erase_subject(&t, "gone", erasure(), CacheFence::None)
        .await);
    let at = ok(store.head(&t).await).revision;

    // Written after the revision.
    append(store, &t, vec![event("a", "analytics", "", g, day(3))]).await;
    append(store, &t, vec![event("new", "analytics", "", g, day(3))]).await;
    set_flag(store, &t, "ab", RecordKind::ProcessingRestricted, "").await;

    let order = ["B", "a", "a-b", "ab", "flag-only", "obj", "é"];
    for page in [1, 2, 3, 1000] {
        let scanned = scan_all(store, &t, Some(at), &[], page, "").await;
        assert_eq!(ids(&scanned), order, "page of {page}");
        for s in &scanned {
            assert_eq!(s.state.revision, at);
            assert_eq!(
                s.state.entries,
                expected_entries(store, &t, &s.subject_id, at, &[]).await,
                "{} with pages of {page}",
                s.subject_id
            );
        }
        let flags = |id: &str| &scanned[order.iter().position(|o| *o == id).unwrap_or(0)];
        assert!(flags("flag-only").state.flags.restricted_since.is_some());
        assert!(
            flags("obj")
                .state
                .flags
                .objections
                .contains_key("analytics")
        );
        assert_eq!(
            flags("ab").state.flags,
            SubjectFlags::default(),
            "restricted after the revision"
        );
        assert!(
            flags("a").state.entries[0].decision == Decision::Withdrawn,
            "the grant after the revision is not in the scan"
        );
    }

    // At the head: the later writes are in, and each state decides as the current one.
    let now = scan_all(store, &t, None, &[], 2, "").await;
    assert_eq!(
        ids(&now),
        ["B", "a", "a-b", "ab", "flag-only", "new", "obj", "é"]
    );
    for s in &now {
        let current = ok(store
            .subject_state(&t, &s.subject_id, None, Consistency::Full)
            .await);
        let mut entries = current.as_of(day(10)).entries;
        entries.sort_by(|x, y| (&x.purpose_id, &x.vendor_id).cmp(&(&y.purpose_id, &y.vendor_id)));
        assert_eq!(s.state.entries, entries, "{}", s.subject_id);
        assert_eq!(s.state.flags, current.flags, "{}", s.subject_id);
    }

    // By purpose: a subject-wide withdrawal and a right without a purpose bear on it; an
    // objection to another purpose is left out.
    let recording = scan_all(store, &t, Some(at), &["call_recording"], 1, "").await;
    assert_eq!(ids(&recording), ["B", "a-b", "flag-only", "é"]);
    for s in &recording {
        assert_eq!(
            s.state.entries,
            expected_entries(store, &t, &s.subject_id, at, &["call_recording"]).await
        );
    }

    // Resumed after a subject.
    let rest = scan_all(store, &t, Some(at), &[], 2, "a-b").await;
    assert_eq!(ids(&rest), ["ab", "flag-only", "obj", "é"]);

    // Another tenant sees none of it.
    assert!(
        scan_all(store, &tenant(), None, &[], 2, "")
            .await
            .is_empty()
    );

    let head = ok(store.head(&t).await).revision;
    match SnapshotScan::start(
        Arc::clone(store),
        &t,
        Some(head + 1),
        day(10),
        vec![],
        10,
        "",
    )
    .await
    {
        Err(ConsentError::FailedPrecondition(m)) => assert!(m.contains("ahead"), "{m}"),
        other => panic!("expected FailedPrecondition, got {:?}", other.map(|_| ())),
    }
}

/// A subject erased while a scan reads it is left out, not given with part of its history:
/// here its withdrawal was renamed between two pages, and its grant alone would allow.
pub async fn a_subject_erased_during_a_scan_is_left_out(store: &Arc<dyn Store>) {
    let t = tenant();
    let g = Decision::Granted;
    append(store, &t, vec![event("k1", "analytics", "", g, day(1))]).await;
    append(store, &t, vec![event("k2", "analytics", "", g, day(1))]).await;
    append(
        store,
        &t,
        vec![event("k2", "analytics", "", Decision::Withdrawn, day(2))],
    )
    .await;
    append(store, &t, vec![event("k3", "analytics", "", g, day(1))]).await;
    // Pages of two events: k1's and k2's grant, then k2's withdrawal and k3's.
    let mut scan =
        ok(SnapshotScan::start(Arc::clone(store), &t, None, day(10), vec![], 2, "").await);
    let first = ok(scan.next_chunk(1).await).unwrap_or_default();
    assert_eq!(ids(&first), ["k1"]);
    ok(store
        .erase_subject(&t, "k2", erasure(), CacheFence::None)
        .await);
    let mut rest = Vec::new();
    for _ in 0..10 {
        match ok(scan.next_chunk(1).await) {
            Some(chunk) => rest.extend(chunk),
            None => break,
        }
    }
    assert_eq!(ids(&rest), ["k3"], "k2 was erased during the scan");
}
