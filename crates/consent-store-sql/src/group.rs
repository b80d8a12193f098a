//! Per-tenant group commit.
//!
//! Concurrent appends to one tenant queue up; one task per busy tenant takes everything
//! queued (up to [`MAX_BATCH_EVENTS`]) and writes it in one transaction: one lock of the
//! tenant row, multi-row inserts, one head update, one commit and so one fsync. Each write
//! still gets its own revisions, hash-chain links and idempotency record, and its answer only
//! after the commit. While a batch commits, the next one gathers, so a lone write waits for
//! nothing and a busy tenant's batches grow with its load.
//!
//! Failures stay with the writes that caused them: an idempotency conflict fails only its
//! write (it is planned out of the batch); a batch the database refuses for another reason
//! than unavailability is retried one write per transaction, so a bad write cannot fail its
//! neighbours; an unavailable database fails the batch, whose callers retry.
//!
//! The algorithm is here once ([`write_batch`]); each backend supplies its statements through
//! [`BatchTx`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use consent_core::chain::seal;
use consent_core::commands::Idempotency;
use consent_core::identity::{AliasKey, implicit_subject_id};
use consent_core::{ConsentError, ConsentEvent, NewEvent, Result, Revision, StateEntry, Timestamp};
use consent_store::{AppendOutcome, CacheFence, Commit, LedgerHead, NamespaceTag};

use crate::rows::LockedHead;
use tokio::sync::oneshot;

/// Most events one group commit writes; a write larger than this still goes alone.
pub(crate) const MAX_BATCH_EVENTS: usize = 2000;

/// One append waiting for its group commit.
#[derive(Debug)]
pub(crate) struct PendingWrite {
    pub(crate) events: Vec<NewEvent>,
    pub(crate) idempotency: Option<Idempotency>,
    pub(crate) fence: CacheFence,
    /// The identity the write named its person by (`LedgerStore::append_by_identity`):
    /// checked in the transaction to still stand for the events' subject.
    pub(crate) named_by: Option<AliasKey>,
}

impl PendingWrite {
    /// A write of `events`, named by `named_by` when it is by identity.
    pub(crate) fn of(
        events: &[NewEvent],
        idempotency: Option<&Idempotency>,
        fence: CacheFence,
        named_by: Option<AliasKey>,
    ) -> PendingWrite {
        PendingWrite {
            events: events.to_vec(),
            idempotency: idempotency.cloned(),
            fence,
            named_by,
        }
    }
}

/// A stored idempotency record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeyRecord {
    pub(crate) fingerprint: [u8; 32],
    pub(crate) first_revision: Revision,
    pub(crate) last_revision: Revision,
}

/// An idempotency record to store.
#[derive(Clone, Debug)]
pub(crate) struct NewKey {
    pub(crate) key: String,
    pub(crate) record: KeyRecord,
}

/// A projection row a batch moves: the subject and the entry that supersedes the others.
#[derive(Clone, Debug)]
pub(crate) struct StateRow {
    pub(crate) subject_id: String,
    pub(crate) entry: StateEntry,
}

/// What one batch writes after its plan.
#[derive(Debug)]
pub(crate) struct BatchWrite<'a> {
    pub(crate) events: &'a [ConsentEvent],
    pub(crate) states: &'a [StateRow],
    pub(crate) head: LedgerHead,
    pub(crate) keys: &'a [NewKey],
    pub(crate) now: Timestamp,
}

/// The statements of one write transaction, as each backend speaks them.
#[async_trait]
pub(crate) trait BatchTx: Send {
    /// Locks the tenant row (creating it on the tenant's first write), in one statement, and
    /// returns the head with the tenant's key ([`crate::rows::LOCK_HEAD`]).
    async fn lock_head(&mut self, tenant: &str, now: Timestamp) -> Result<LockedHead>;
    /// Which of `erased_ids` (erased ids of subjects) have an erased marker.
    async fn erased_among(
        &mut self,
        tenant: &str,
        erased_ids: &[String],
    ) -> Result<HashSet<String>>;
    /// Which of `subjects` are closed by a merge, with the subject each was merged into.
    async fn merged_among(
        &mut self,
        tenant: &str,
        subjects: &[String],
    ) -> Result<HashMap<String, String>>;
    /// The subjects the identities `aliases` are linked to (an alias not linked is absent).
    async fn links_among(
        &mut self,
        tenant: &str,
        aliases: &[AliasKey],
    ) -> Result<HashMap<AliasKey, String>>;
    /// The idempotency records among `keys` created after `live_after` (older ones expired).
    async fn find_keys(
        &mut self,
        tenant: &str,
        keys: &[&str],
        live_after: Timestamp,
    ) -> Result<HashMap<String, KeyRecord>>;
    /// Events `first..=last`, as written (replays).
    async fn events_in_range(
        &mut self,
        tenant: &str,
        first: Revision,
        last: Revision,
    ) -> Result<Vec<ConsentEvent>>;
    /// Writes what a batch produced: the events (multi-row), the projection rows (each
    /// replacing the stored one only if it supersedes it; at most one per subject, purpose
    /// and vendor), the new head, and the idempotency records (replacing expired ones with
    /// the same key).
    async fn write(&mut self, tenant: &str, batch: &BatchWrite<'_>) -> Result<()>;
    /// The ledger's cache namespace, read under a lock a rotation waits for (so a write
    /// that saw the old namespace commits before the new one is in place).
    async fn cache_namespace(&mut self) -> Result<String>;
    /// Raises the tenant's cache fence (call last: it takes the fence clock row).
    async fn raise_fence(
        &mut self,
        tenant: &str,
        revision: Revision,
        catalog_version: i64,
    ) -> Result<()>;
    /// Commits.
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// What a backend gives the group commit.
#[async_trait]
pub(crate) trait BatchBackend: Send + Sync + 'static {
    /// Opens a write transaction.
    async fn begin(&self) -> Result<Box<dyn BatchTx>>;
    /// How long an idempotency key replays.
    fn idempotency_ttl(&self) -> Duration;
    /// Announces a commit (after it happened).
    fn committed(&self, commit: Commit);
}

/// What the plan decided for one write.
enum Planned {
    Failed(ConsentError),
    Replay {
        first: Revision,
        last: Revision,
    },
    Written {
        from: usize,
        to: usize,
        revision: Revision,
    },
}

/// Writes `writes` as one transaction; on a refusal that is not unavailability, each alone.
pub(crate) async fn write_batch(
    backend: &dyn BatchBackend,
    tenant: &str,
    writes: &[PendingWrite],
) -> Vec<Result<AppendOutcome>> {
    match write_in_one_transaction(backend, tenant, writes).await {
        Ok(outcomes) => outcomes,
        Err(e) if writes.len() == 1 || matches!(e, ConsentError::Unavailable(_)) => {
            writes.iter().map(|_| Err(e.clone())).collect()
        }
        Err(e) => {
            tracing::warn!(tenant, writes = writes.len(), error = %e, "group commit refused; writing its writes one by one");
            let mut outcomes = Vec::with_capacity(writes.len());
            for write in writes {
                let alone = write_in_one_transaction(backend, tenant, std::slice::from_ref(write))
                    .await
                    .and_then(|mut o| {
                        o.pop().unwrap_or_else(|| {
                            Err(ConsentError::Internal("a write had no outcome".into()))
                        })
                    });
                outcomes.push(alone);
            }
            outcomes
        }
    }
}

async fn write_in_one_transaction(
    backend: &dyn BatchBackend,
    tenant: &str,
    writes: &[PendingWrite],
) -> Result<Vec<Result<AppendOutcome>>> {
    let now = Timestamp::now();
    let mut tx = backend.begin().await?;
    let locked = tx.lock_head(tenant, now).await?;
    let head = locked.head;
    let erased = erased_subjects(tx.as_mut(), tenant, &locked, writes).await?;
    let closed = closed_subjects(tx.as_mut(), tenant, &locked, writes).await?;
    let links = identity_links(tx.as_mut(), tenant, writes).await?;
    let keys: Vec<&str> = writes
        .iter()
        .filter_map(|w| w.idempotency.as_ref().map(|k| k.key.as_str()))
        .collect();
    let live_after = now.saturating_add(-duration_micros(backend.idempotency_ttl()));
    let mut known = if keys.is_empty() {
        HashMap::new()
    } else {
        tx.find_keys(tenant, &keys, live_after).await?
    };

    let mut plans = Vec::with_capacity(writes.len());
    let mut sealed: Vec<ConsentEvent> = Vec::new();
    let mut new_keys = Vec::new();
    let mut fence = false;
    let (mut revision, mut prev) = (head.revision, head.hash);
    for write in writes {
        // Before any replay: a replay of a write made before the erasure would show which
        // erased id the subject's rows now carry.
        if let Some(subject) = write.events.iter().find(|e| erased.contains(&e.subject_id)) {
            plans.push(Planned::Failed(ConsentError::FailedPrecondition(format!(
                "subject_id `{}` was erased (GDPR Art. 17): the ledger keeps nothing about it and refuses new writes for it",
                subject.subject_id
            ))));
            continue;
        }
        if let Some(key) = &write.idempotency
            && let Some(record) = known.get(&key.key)
        {
            plans.push(if record.fingerprint == key.fingerprint {
                Planned::Replay {
                    first: record.first_revision,
                    last: record.last_revision,
                }
            } else {
                Planned::Failed(ConsentError::AlreadyExists(format!(
                    "idempotency_key `{}` was already used with a different request",
                    key.key
                )))
            });
            continue;
        }
        // A write by identity whose identity moved since it was resolved (a link, unlink
        // or merge committed meanwhile) would land on a subject the identity no longer
        // stands for: the caller's withdrawal lost, or a grant on an account it left. It
        // is aborted, to be resolved again.
        if let Some(alias) = &write.named_by {
            let stands_for = links
                .get(alias)
                .cloned()
                .unwrap_or_else(|| implicit_subject_id(alias));
            if write
                .events
                .iter()
                .any(|e| e.subject_id != stands_for || closed.contains_key(&e.subject_id))
            {
                plans.push(Planned::Failed(crate::errors::identity_moved()));
                continue;
            }
        }
        // After the replays: a write acknowledged before the merge was carried into the
        // subject merged into, and its retry gets its answer; a new one is refused.
        if let Some((subject, into)) = write
            .events
            .iter()
            .find_map(|e| closed.get_key_value(&e.subject_id))
        {
            plans.push(Planned::Failed(crate::errors::merged_error(subject, into)));
            continue;
        }
        let from = sealed.len();
        let first_revision = revision + 1;
        for event in &write.events {
            revision += 1;
            let event = seal(tenant, &locked.key, event.clone(), revision, now, prev);
            prev = event.hash;
            sealed.push(event);
        }
        if let Some(key) = &write.idempotency {
            let record = KeyRecord {
                fingerprint: key.fingerprint,
                first_revision,
                last_revision: revision,
            };
            known.insert(key.key.clone(), record);
            new_keys.push(NewKey {
                key: key.key.clone(),
                record,
            });
        }
        fence |= write.fence == CacheFence::States;
        plans.push(Planned::Written {
            from,
            to: sealed.len(),
            revision,
        });
    }

    if !sealed.is_empty() || !new_keys.is_empty() {
        let states = projection_rows(&sealed);
        let batch = BatchWrite {
            events: &sealed,
            states: &states,
            head: LedgerHead {
                revision,
                hash: prev,
                erasures: head.erasures,
            },
            keys: &new_keys,
            now,
        };
        tx.write(tenant, &batch).await?;
    }
    // Writers that told their cache in a namespace the ledger no longer has (rotated while
    // they ran) told nobody who reads it now: fence the batch.
    let told: Vec<NamespaceTag> = writes
        .iter()
        .filter_map(|w| match w.fence {
            CacheFence::Told { namespace } => Some(namespace),
            CacheFence::None | CacheFence::States => None,
        })
        .collect();
    if !fence && !sealed.is_empty() && !told.is_empty() {
        let current = NamespaceTag::of(&tx.cache_namespace().await?);
        fence = told.iter().any(|namespace| *namespace != current);
    }
    if fence {
        tx.raise_fence(tenant, revision, 0).await?;
    }
    // Replays read inside the transaction, so a key written earlier in this batch replays too.
    let mut outcomes = Vec::with_capacity(plans.len());
    for plan in plans {
        outcomes.push(match plan {
            Planned::Failed(e) => Err(e),
            Planned::Replay { first, last } => Ok(AppendOutcome {
                events: tx.events_in_range(tenant, first, last).await?,
                revision: last,
                replayed: true,
            }),
            Planned::Written { from, to, revision } => Ok(AppendOutcome {
                events: sealed.get(from..to).map(<[_]>::to_vec).unwrap_or_default(),
                revision,
                replayed: false,
            }),
        });
    }
    tx.commit().await?;
    if revision != head.revision {
        backend.committed(Commit {
            tenant_id: tenant.to_owned(),
            revision,
        });
    }
    Ok(outcomes)
}

/// The subjects of `writes` that were erased (none looked up while the tenant erased none).
async fn erased_subjects(
    tx: &mut dyn BatchTx,
    tenant: &str,
    locked: &LockedHead,
    writes: &[PendingWrite],
) -> Result<HashSet<String>> {
    if locked.head.erasures == 0 {
        return Ok(HashSet::new());
    }
    let mut by_erased_id: HashMap<String, &str> = HashMap::new();
    for event in writes.iter().flat_map(|w| &w.events) {
        if let Some(id) = locked.erased_lookup(&event.subject_id) {
            by_erased_id.insert(id, &event.subject_id);
        }
    }
    let ids: Vec<String> = by_erased_id.keys().cloned().collect();
    let found = tx.erased_among(tenant, &ids).await?;
    Ok(found
        .iter()
        .filter_map(|id| by_erased_id.get(id).map(|s| (*s).to_owned()))
        .collect())
}

/// The subjects of `writes` closed by a merge, with the subject each was merged into (none
/// looked up while the tenant merged none).
async fn closed_subjects(
    tx: &mut dyn BatchTx,
    tenant: &str,
    locked: &LockedHead,
    writes: &[PendingWrite],
) -> Result<HashMap<String, String>> {
    if locked.merges == 0 {
        return Ok(HashMap::new());
    }
    let mut subjects: Vec<String> = writes
        .iter()
        .flat_map(|w| &w.events)
        .map(|e| e.subject_id.clone())
        .collect();
    subjects.sort_unstable();
    subjects.dedup();
    tx.merged_among(tenant, &subjects).await
}

/// Where the identities that `writes` were named by stand now (none looked up when no
/// write was by identity).
async fn identity_links(
    tx: &mut dyn BatchTx,
    tenant: &str,
    writes: &[PendingWrite],
) -> Result<HashMap<AliasKey, String>> {
    let mut aliases: Vec<AliasKey> = writes.iter().filter_map(|w| w.named_by).collect();
    if aliases.is_empty() {
        return Ok(HashMap::new());
    }
    aliases.sort_unstable();
    aliases.dedup();
    tx.links_among(tenant, &aliases).await
}

fn duration_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// One projection row per (subject, purpose, vendor): the entry that supersedes the others
/// written in the batch (the store compares it with the stored row by the same rule).
pub(crate) fn projection_rows(events: &[ConsentEvent]) -> Vec<StateRow> {
    let mut rows: HashMap<(&str, &str, &str), StateRow> = HashMap::new();
    for event in events {
        let n = &event.event;
        let entry = StateEntry::from_event(event);
        rows.entry((&n.subject_id, &n.purpose_id, &n.vendor_id))
            .and_modify(|row| {
                if entry.supersedes(&row.entry) {
                    row.entry = entry.clone();
                }
            })
            .or_insert_with(|| StateRow {
                subject_id: n.subject_id.clone(),
                entry: entry.clone(),
            });
    }
    let mut rows: Vec<StateRow> = rows.into_values().collect();
    // A stable order, so concurrent transactions touching the same rows lock them alike.
    rows.sort_by(|a, b| {
        (&a.subject_id, &a.entry.purpose_id, &a.entry.vendor_id).cmp(&(
            &b.subject_id,
            &b.entry.purpose_id,
            &b.entry.vendor_id,
        ))
    });
    rows
}

struct Waiting {
    write: PendingWrite,
    reply: oneshot::Sender<Result<AppendOutcome>>,
}

type Queues = Arc<Mutex<HashMap<String, Vec<Waiting>>>>;

/// The per-tenant queues. A tenant has a queue exactly while a task drains it.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    backend: Arc<dyn BatchBackend>,
    queues: Queues,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

impl GroupCommit {
    pub(crate) fn new(backend: Arc<dyn BatchBackend>) -> GroupCommit {
        GroupCommit {
            backend,
            queues: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Queues a write and waits for the commit of the batch that carries it.
    pub(crate) async fn append(&self, tenant: &str, write: PendingWrite) -> Result<AppendOutcome> {
        let (reply, answer) = oneshot::channel();
        let start_drain = {
            let mut queues = self.queues.lock().map_err(|_| poisoned())?;
            match queues.get_mut(tenant) {
                Some(queue) => {
                    queue.push(Waiting { write, reply });
                    false
                }
                None => {
                    queues.insert(tenant.to_owned(), vec![Waiting { write, reply }]);
                    true
                }
            }
        };
        if start_drain {
            // A task, not this caller: a caller that gives up must not abandon the others'
            // writes in the middle of their transaction.
            tokio::spawn(drain(
                self.backend.clone(),
                self.queues.clone(),
                tenant.to_owned(),
            ));
        }
        answer.await.map_err(|_| {
            ConsentError::Unavailable("the write was abandoned before it committed; retry".into())
        })?
    }
}

fn poisoned() -> ConsentError {
    ConsentError::Internal("the write queue is unusable after a panic".into())
}

/// Removes the tenant's queue if the drain task unwinds, so later writes start a new one
/// (their waiting predecessors see their reply dropped: `Unavailable`).
struct DrainGuard {
    queues: Queues,
    tenant: String,
}

impl Drop for DrainGuard {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(mut queues) = self.queues.lock()
        {
            queues.remove(&self.tenant);
        }
    }
}

async fn drain(backend: Arc<dyn BatchBackend>, queues: Queues, tenant: String) {
    let _guard = DrainGuard {
        queues: queues.clone(),
        tenant: tenant.clone(),
    };
    loop {
        let batch = {
            let Ok(mut all) = queues.lock() else { return };
            let Some(queue) = all.get_mut(&tenant) else {
                return;
            };
            if queue.is_empty() {
                all.remove(&tenant);
                return;
            }
            take_batch(queue)
        };
        let (writes, replies): (Vec<PendingWrite>, Vec<_>) =
            batch.into_iter().map(|w| (w.write, w.reply)).unzip();
        let outcomes = write_batch(backend.as_ref(), &tenant, &writes).await;
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // A caller that stopped waiting still had its write committed (or not).
            let _ = reply.send(outcome);
        }
    }
}

/// The oldest writes of the queue, up to [`MAX_BATCH_EVENTS`] events (at least one write).
fn take_batch(queue: &mut Vec<Waiting>) -> Vec<Waiting> {
    let mut events = 0;
    let mut count = 0;
    for waiting in queue.iter() {
        events += waiting.write.events.len();
        if count > 0 && events > MAX_BATCH_EVENTS {
            break;
        }
        count += 1;
    }
    queue.drain(..count).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use consent_core::{Channel, Decision, Evidence};

    fn event(subject: &str, purpose: &str, decision: Decision, at: i64) -> ConsentEvent {
        seal(
            "t",
            &consent_core::chain::ChainKey::NONE,
            NewEvent {
                id: consent_core::commands::new_event_id(),
                subject_id: subject.into(),
                purpose_id: purpose.into(),
                vendor_id: String::new(),
                decision,
                policy_version_id: "v1".into(),
                channel: Channel::Api,
                collected_at: Timestamp(at),
                expires_at: None,
                evidence: Evidence::default(),
                actor_key_id: "k".into(),
            },
            1,
            Timestamp(at),
            consent_core::chain::GENESIS,
        )
    }

    #[test]
    fn a_batch_projects_one_row_per_choice_the_superseding_one() {
        let mut late_grant = event("alice", "analytics", Decision::Granted, 20);
        late_grant.revision = 1;
        let mut early_withdrawal = event("alice", "analytics", Decision::Withdrawn, 10);
        early_withdrawal.revision = 2;
        let mut tie_denial = event("bob", "analytics", Decision::Denied, 5);
        tie_denial.revision = 3;
        let mut tie_grant = event("bob", "analytics", Decision::Granted, 5);
        tie_grant.revision = 4;
        let rows = projection_rows(&[late_grant, early_withdrawal, tie_denial, tie_grant]);
        let decisions: Vec<(&str, Decision)> = rows
            .iter()
            .map(|r| (r.subject_id.as_str(), r.entry.decision))
            .collect();
        assert_eq!(
            decisions,
            vec![("alice", Decision::Granted), ("bob", Decision::Denied)]
        );
    }

    fn waiting(events: usize) -> Waiting {
        let e = event("s", "p", Decision::Granted, 1).event;
        Waiting {
            write: PendingWrite {
                events: vec![e; events],
                idempotency: None,
                fence: CacheFence::None,
                named_by: None,
            },
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn batches_stop_at_the_event_limit_but_take_at_least_one_write() {
        let mut queue = vec![waiting(MAX_BATCH_EVENTS + 5), waiting(1)];
        assert_eq!(take_batch(&mut queue).len(), 1);
        assert_eq!(queue.len(), 1);
        let mut queue: Vec<Waiting> = (0..3).map(|_| waiting(MAX_BATCH_EVENTS / 2)).collect();
        assert_eq!(take_batch(&mut queue).len(), 2);
        assert_eq!(take_batch(&mut queue).len(), 1);
        assert!(queue.is_empty());
    }
}
