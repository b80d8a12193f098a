//! Every subject's state at one revision, subject by subject: what
//! `ConsentService.ExportSnapshot` streams.
//!
//! The ledger below a revision never changes (it is append-only; an erasure only renames a
//! subject's entries to its erased id, which the scan leaves out), so a scan reads it page by
//! page while writes go on and still sees exactly the ledger at that revision, with no
//! transaction held open. Two keyset scans in subject order (events, and the records that
//! move flags) are merged by subject id; each subject's choices are folded as they are read
//! into the latest one per (purpose, vendor), so a scan holds at most one page of each kind
//! and one subject's folded state, however many subjects and events the tenant has.
//!
//! A subject closed by a merge is left out; one that absorbed others is folded with their
//! entries (read by subject, up to the scan's revision), as the store's projection is.
//!
//! An erasure committed during a scan renames a subject's entries below the revision, so a
//! subject read across it may have lost part of its history. [`SnapshotScan::next_chunk`]
//! therefore reads the tenant's erasure count after each chunk: if it moved since the scan
//! began, the chunk's subjects erased meanwhile are left out (as those erased before it).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use consent_core::{
    ConsentError, Result, Revision, StateEntry, SubjectFlags, SubjectState, Timestamp,
};

use crate::{Consistency, EventQuery, LedgerStore, StoredEvent, StoredRecord, SubjectCursor};

/// One subject's state as of the scan's revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectSnapshot {
    /// The subject id (never an erased id).
    pub subject_id: String,
    /// Per (purpose, vendor), the choice collected at or before the scan's `at` that
    /// supersedes the others, up to the scan's revision, and the flags at that revision.
    /// `revision` is the scan's.
    pub state: SubjectState,
}

/// Subjects of one tenant in byte order of their ids, each with its state at a revision.
#[derive(Debug)]
pub struct SnapshotScan<S: ?Sized> {
    store: Arc<S>,
    tenant: String,
    revision: Revision,
    /// The tenant's erasure count when the scan began.
    erasures: i64,
    at: Timestamp,
    purpose_ids: Vec<String>,
    page: usize,
    events: Side<StoredEvent>,
    records: Side<StoredRecord>,
}

/// One of the two scans: the page in hand, where the next page starts, and whether the
/// store has no more.
#[derive(Debug)]
struct Side<T> {
    page: VecDeque<T>,
    cursor: SubjectCursor,
    exhausted: bool,
}

impl<T> Side<T> {
    fn new(after: SubjectCursor) -> Side<T> {
        Side {
            page: VecDeque::new(),
            cursor: after,
            exhausted: false,
        }
    }
}

/// What the scan needs of an entry: its subject and revision.
trait Positioned {
    fn subject_id(&self) -> &str;
    fn revision(&self) -> Revision;
}

impl Positioned for StoredEvent {
    fn subject_id(&self) -> &str {
        &self.event.event.subject_id
    }
    fn revision(&self) -> Revision {
        self.event.revision
    }
}

impl Positioned for StoredRecord {
    fn subject_id(&self) -> &str {
        &self.record.record.subject_id
    }
    fn revision(&self) -> Revision {
        self.record.revision
    }
}

impl<S: LedgerStore + ?Sized> SnapshotScan<S> {
    /// A scan of `tenant` at `revision` (every entry up to it, none after; `None`: the
    /// head), for choices about `purpose_ids` (empty: all; subject-wide choices always
    /// count), folded as of `at`, reading at most `page` entries of each kind per store
    /// call. It starts after subject `after_subject` (empty: at the first subject), so a
    /// scan cut off can go on. A revision past the head is `FailedPrecondition`.
    pub async fn start(
        store: Arc<S>,
        tenant: &str,
        revision: Option<Revision>,
        at: Timestamp,
        purpose_ids: Vec<String>,
        page: usize,
        after_subject: &str,
    ) -> Result<SnapshotScan<S>> {
        let head = store.head(tenant).await?;
        let revision = match revision {
            None => head.revision,
            Some(r) if r <= head.revision => r,
            Some(r) => {
                return Err(ConsentError::FailedPrecondition(format!(
                    "at_revision {r} is ahead of the ledger (revision {}); use a revision the ledger reached",
                    head.revision
                )));
            }
        };
        // After every entry of `after_subject`: revisions are positive and at most
        // `revision`, so (after_subject, revision) is past its last one.
        let start = || SubjectCursor {
            subject_id: after_subject.to_owned(),
            revision: if after_subject.is_empty() {
                0
            } else {
                revision
            },
        };
        Ok(SnapshotScan {
            store,
            tenant: tenant.to_owned(),
            revision,
            erasures: head.erasures,
            at,
            purpose_ids,
            page: page.max(1),
            events: Side::new(start()),
            records: Side::new(start()),
        })
    }

    /// The next subjects, at most `max`, without those erased while they were read (so
    /// possibly none); `None` when every subject was read.
    pub async fn next_chunk(&mut self, max: usize) -> Result<Option<Vec<SubjectSnapshot>>> {
        let mut chunk = Vec::new();
        while chunk.len() < max {
            match self.next_subject().await? {
                Some(subject) => chunk.push(subject),
                None => break,
            }
        }
        if chunk.is_empty() {
            return Ok(None);
        }
        // Read after the chunk: if no erasure committed before this read, none could
        // rename what the chunk read.
        if self.store.head(&self.tenant).await?.erasures == self.erasures {
            return Ok(Some(chunk));
        }
        let ids: Vec<String> = chunk.iter().map(|s| s.subject_id.clone()).collect();
        let erased = erased_among(self.store.as_ref(), &self.tenant, &ids).await?;
        Ok(Some(
            chunk
                .into_iter()
                .zip(erased)
                .filter(|(_, erased)| !erased)
                .map(|(subject, _)| subject)
                .collect(),
        ))
    }

    /// The tenant's erasure count when the scan began: a reader that holds subjects for a
    /// while (queued to be sent) compares it with the head's again before letting them go.
    pub fn erasures(&self) -> i64 {
        self.erasures
    }

    /// The revision the scan reads at.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The next subject, or `None` when every subject was read (see
    /// [`SnapshotScan::next_chunk`] for subjects erased during the scan).
    /// The next subject that answers for itself at the scan's revision. A subject closed by
    /// a merge is left out (the subject it was merged into answers for it: its id gets the
    /// snapshot's "absent" answer, never an allow); a subject that absorbed others gets
    /// their choices and flags too, as the store's projection holds them.
    async fn next_subject(&mut self) -> Result<Option<SubjectSnapshot>> {
        loop {
            let Some(mut subject) = self.next_in_order().await? else {
                return Ok(None);
            };
            if subject.state.flags.merged_into.is_some() {
                continue;
            }
            if subject.state.flags.absorbed {
                self.add_merged(&mut subject).await?;
            }
            return Ok(Some(subject));
        }
    }

    /// Folds into `root` the choices and flags of the subjects merged into it (directly or
    /// through others) up to the scan's revision, found by the `subjects_merged` records on
    /// each absorbing side.
    async fn add_merged(&self, root: &mut SubjectSnapshot) -> Result<()> {
        let mut latest: BTreeMap<(String, String), StateEntry> = root
            .state
            .entries
            .drain(..)
            .map(|e| ((e.purpose_id.clone(), e.vendor_id.clone()), e))
            .collect();
        let mut seen = HashSet::from([root.subject_id.clone()]);
        let mut pending = vec![root.subject_id.clone()];
        while let Some(subject) = pending.pop() {
            let (events, records) = self.entries_of(&subject).await?;
            let mut flags = SubjectFlags::default();
            for r in records {
                let record = &r.record.record;
                if let Some((into, from)) = record.merged()
                    && into == subject
                    && seen.insert(from.to_owned())
                {
                    pending.push(from.to_owned());
                }
                flags.apply(record);
            }
            if seen.len() > MAX_MERGED {
                return Err(ConsentError::Internal(format!(
                    "subject `{}` absorbed more than {MAX_MERGED} subjects",
                    root.subject_id
                )));
            }
            if subject == root.subject_id {
                continue; // its own entries and flags were read by the scan
            }
            root.state.flags.absorb(&flags);
            for e in events {
                fold(&mut latest, StateEntry::from_event(&e.event), self.at);
            }
        }
        root.state.entries = latest.into_values().collect();
        Ok(())
    }

    /// One subject's events and records up to the scan's revision, read page by page.
    async fn entries_of(&self, subject: &str) -> Result<(Vec<StoredEvent>, Vec<StoredRecord>)> {
        let first = EventQuery {
            subject_id: Some(subject.to_owned()),
            purpose_ids: self.purpose_ids.clone(),
            until_revision: Some(self.revision),
            limit: self.page,
            ..EventQuery::default()
        };
        macro_rules! every {
            ($list:ident, $without_evidence:expr) => {{
                let mut all = Vec::new();
                let mut query = EventQuery {
                    without_evidence: $without_evidence,
                    ..first.clone()
                };
                loop {
                    let page = self.store.$list(&self.tenant, &query).await?;
                    let done = page.len() < self.page;
                    if let Some(last) = page.last() {
                        query.after_revision = last.revision();
                    }
                    all.extend(page);
                    if done {
                        break all;
                    }
                }
            }};
        }
        // Records with their details: a `subjects_merged` record names the subjects in them.
        Ok((every!(list_events, true), every!(list_records, false)))
    }

    /// The next subject in id order, folded from the two scans.
    async fn next_in_order(&mut self) -> Result<Option<SubjectSnapshot>> {
        self.refill_events().await?;
        self.refill_records().await?;
        let next = match (self.events.page.front(), self.records.page.front()) {
            (None, None) => return Ok(None),
            (Some(e), None) => e.subject_id(),
            (None, Some(r)) => r.subject_id(),
            (Some(e), Some(r)) => e.subject_id().min(r.subject_id()),
        }
        .to_owned();
        let mut latest: BTreeMap<(String, String), StateEntry> = BTreeMap::new();
        loop {
            while let Some(e) = self
                .events
                .page
                .pop_front_if(|e| e.subject_id() == next.as_str())
            {
                fold(&mut latest, StateEntry::from_event(&e.event), self.at);
            }
            // The subject may go on in the next page.
            if !self.events.page.is_empty() || self.events.exhausted {
                break;
            }
            self.refill_events().await?;
        }
        let mut flags = SubjectFlags::default();
        loop {
            while let Some(r) = self
                .records
                .page
                .pop_front_if(|r| r.subject_id() == next.as_str())
            {
                flags.apply(&r.record.record);
            }
            if !self.records.page.is_empty() || self.records.exhausted {
                break;
            }
            self.refill_records().await?;
        }
        Ok(Some(SubjectSnapshot {
            subject_id: next,
            state: SubjectState {
                entries: latest.into_values().collect(),
                revision: self.revision,
                flags,
            },
        }))
    }

    /// The query of the page after `cursor`.
    fn query(&self, cursor: &SubjectCursor) -> EventQuery {
        EventQuery {
            purpose_ids: self.purpose_ids.clone(),
            until_revision: Some(self.revision),
            limit: self.page,
            by_subject: Some(cursor.clone()),
            without_evidence: true,
            ..EventQuery::default()
        }
    }

    async fn refill_events(&mut self) -> Result<()> {
        if self.events.page.is_empty() && !self.events.exhausted {
            let query = self.query(&self.events.cursor);
            let page = self.store.list_events(&self.tenant, &query).await?;
            take_page(&mut self.events, page, self.page);
        }
        Ok(())
    }

    async fn refill_records(&mut self) -> Result<()> {
        if self.records.page.is_empty() && !self.records.exhausted {
            // With their details: a `subjects_merged` record names the subjects in them.
            let query = EventQuery {
                without_evidence: false,
                ..self.query(&self.records.cursor)
            };
            let page = self.store.list_records(&self.tenant, &query).await?;
            take_page(&mut self.records, page, self.page);
        }
        Ok(())
    }
}

/// Most subjects one subject may have absorbed, for a snapshot to fold them.
const MAX_MERGED: usize = 10_000;

/// Keeps `entry` if it supersedes the choice kept for its (purpose, vendor); choices
/// collected after `at` do not count yet (as in `decide`).
fn fold(latest: &mut BTreeMap<(String, String), StateEntry>, entry: StateEntry, at: Timestamp) {
    if entry.collected_at > at {
        return;
    }
    let key = (entry.purpose_id.clone(), entry.vendor_id.clone());
    if latest.get(&key).is_none_or(|best| entry.supersedes(best)) {
        latest.insert(key, entry);
    }
}

/// Puts a page read in hand and moves the side's cursor past it; a short page was the last.
fn take_page<T: Positioned>(side: &mut Side<T>, page: Vec<T>, limit: usize) {
    side.exhausted = page.len() < limit;
    if let Some(last) = page.last() {
        side.cursor = SubjectCursor {
            subject_id: last.subject_id().to_owned(),
            revision: last.revision(),
        };
    }
    side.page = page.into();
}

/// Whether each of `subject_ids` is erased now (one batch read, bypassing caches).
pub async fn erased_among<S: LedgerStore + ?Sized>(
    store: &S,
    tenant: &str,
    subject_ids: &[String],
) -> Result<Vec<bool>> {
    Ok(store
        .subject_states(tenant, subject_ids, Consistency::Full)
        .await?
        .iter()
        .map(|state| state.flags.erased_since.is_some())
        .collect())
}
