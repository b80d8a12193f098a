//! The change feed behind `ConsentService.Watch`: a tenant's events in revision order from a
//! cursor, then live.
//!
//! The ledger is the source: each step reads the head, then the events after the cursor up
//! to it, so a resumed feed misses nothing and repeats nothing. Commit wake-ups (local, and
//! PostgreSQL `NOTIFY` from other replicas) end the wait early; a poll every
//! [`POLL_INTERVAL`] covers wake-ups lost while a listener reconnects.
//!
//! What watchers may hold is bounded:
//! - memory: events are read without their evidence (ListEvents has it), so a watcher holds
//!   one page in hand and [`BUFFER`] batches queued, each at most [`PAGE`] evidence-free
//!   events (ids of at most 256 bytes: about 0.7 MB in the worst case, typically tens of KB);
//! - the store: all feeds of a replica share [`READ_CONCURRENCY`] ledger reads at a time, and
//!   hold no connection while they wait, so watchers can never take the pool from `Check`;
//! - their number: `limits.max_watches` per replica and `limits.max_watches_per_tenant`;
//!   past them a new Watch is `RESOURCE_EXHAUSTED`.
//!
//! A consumer that accepts nothing for the stall limit has its stream closed; it resumes from
//! the last revision it received.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use consent_core::{ConsentError, Result, Revision, SUBJECT_WIDE};
use consent_store::{EventQuery, LedgerEntry, Store, list_entries};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tonic::Status;

/// Events read from the ledger per step.
pub const PAGE: usize = 500;
/// Batches queued for a slow consumer before the feed waits for it.
pub const BUFFER: usize = 2;
/// Ledger reads all the feeds of a replica make at once.
pub const READ_CONCURRENCY: usize = 4;
/// Longest wait without a wake-up before the ledger is read again.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// A message (a heartbeat if nothing else) is sent at least this often.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// Which events a watcher wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchFilter {
    /// Only this subject.
    pub subject_id: Option<String>,
    /// Only these purposes (empty: all).
    pub purpose_ids: Vec<String>,
}

impl WatchFilter {
    /// A subject-wide event (a withdraw-all) bears on every purpose, so every filter has it;
    /// so does a record without a purpose.
    fn matches(&self, entry: &LedgerEntry) -> bool {
        let purpose = match entry {
            LedgerEntry::Event(e) => &e.event.event.purpose_id,
            LedgerEntry::Record(r) => &r.record.record.purpose_id,
        };
        self.purpose_ids.is_empty() || purpose == SUBJECT_WIDE || self.purpose_ids.contains(purpose)
    }
}

/// One message of the feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchBatch {
    /// Matching events and records, in revision order (empty for a heartbeat).
    pub entries: Vec<LedgerEntry>,
    /// Everything matching up to here was delivered.
    pub revision: Revision,
}

/// How feeds run: their stall limit, the server's shutdown signal (on which every feed ends
/// its stream, so clients resume on another replica instead of holding shutdown up), the
/// ledger reads they share and the count of open feeds.
#[derive(Clone, Debug)]
pub struct FeedControl {
    /// See `limits.watch_stall_secs`.
    pub stall: Duration,
    /// Becomes `true` when the server shuts down.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Ledger reads in flight for all feeds.
    pub reads: Arc<Semaphore>,
    /// Open feeds, per tenant and in all.
    pub open: Arc<OpenFeeds>,
}

impl FeedControl {
    /// Control for a server with these limits.
    pub fn new(
        stall: Duration,
        shutdown: tokio::sync::watch::Receiver<bool>,
        max_watches: usize,
        max_watches_per_tenant: usize,
    ) -> FeedControl {
        FeedControl {
            stall,
            shutdown,
            reads: Arc::new(Semaphore::new(READ_CONCURRENCY)),
            open: Arc::new(OpenFeeds {
                max: max_watches,
                max_per_tenant: max_watches_per_tenant,
                by_tenant: Mutex::new(HashMap::new()),
            }),
        }
    }
}

/// The feeds open on this replica.
#[derive(Debug)]
pub struct OpenFeeds {
    max: usize,
    max_per_tenant: usize,
    by_tenant: Mutex<HashMap<String, usize>>,
}

/// A slot held by one open feed; freed when dropped.
#[derive(Debug)]
pub struct FeedSlot {
    open: Arc<OpenFeeds>,
    tenant: String,
}

impl Drop for FeedSlot {
    fn drop(&mut self) {
        if let Ok(mut by_tenant) = self.open.by_tenant.lock()
            && let Some(count) = by_tenant.get_mut(&self.tenant)
        {
            *count -= 1;
            if *count == 0 {
                by_tenant.remove(&self.tenant);
            }
        }
    }
}

impl OpenFeeds {
    /// Feeds open on this replica now (the `consent.watch.subscribers` gauge).
    pub fn total(&self) -> usize {
        self.by_tenant
            .lock()
            .map(|by_tenant| by_tenant.values().sum())
            .unwrap_or(0)
    }

    /// A slot for one more feed of `tenant`, or `ResourceExhausted` naming the limit.
    pub fn open(self: &Arc<Self>, tenant: &str) -> Result<FeedSlot> {
        let mut by_tenant = self
            .by_tenant
            .lock()
            .map_err(|_| ConsentError::Internal("the feed registry is poisoned".into()))?;
        let total: usize = by_tenant.values().sum();
        let mine = by_tenant.get(tenant).copied().unwrap_or(0);
        if total >= self.max {
            return Err(ConsentError::ResourceExhausted(format!(
                "{total} Watch streams are open on this replica, limits.max_watches is {}; retry later or on another replica",
                self.max
            )));
        }
        if mine >= self.max_per_tenant {
            return Err(ConsentError::ResourceExhausted(format!(
                "this tenant has {mine} Watch streams open on this replica, limits.max_watches_per_tenant is {}; close one (a stream can carry every purpose)",
                self.max_per_tenant
            )));
        }
        *by_tenant.entry(tenant.to_owned()).or_insert(0) += 1;
        Ok(FeedSlot {
            open: Arc::clone(self),
            tenant: tenant.to_owned(),
        })
    }
}

/// Starts a feed for `tenant` after revision `from`; the receiver yields its batches.
/// `ResourceExhausted` when the replica or the tenant has too many feeds open.
pub fn start(
    store: Arc<dyn Store>,
    tenant: String,
    from: Revision,
    filter: WatchFilter,
    control: FeedControl,
) -> Result<mpsc::Receiver<std::result::Result<WatchBatch, Status>>> {
    let slot = control.open.open(&tenant)?;
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        let _slot = slot;
        if let Err(e) = feed(store.as_ref(), &tenant, from, &filter, &tx, control).await {
            // Best effort: the consumer may be gone or stalled.
            let _ = tx.try_send(Err(crate::error::status(e)));
        }
    });
    Ok(rx)
}

/// Sends one batch; `false` when the consumer is gone or stalled past `stall`.
async fn deliver(
    tx: &mpsc::Sender<std::result::Result<WatchBatch, Status>>,
    batch: WatchBatch,
    stall: Duration,
) -> bool {
    match tokio::time::timeout(stall, tx.send(Ok(batch))).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::info!(
                stall_secs = stall.as_secs(),
                "watch consumer stalled; closing its stream"
            );
            false
        }
    }
}

async fn feed(
    store: &dyn Store,
    tenant: &str,
    from: Revision,
    filter: &WatchFilter,
    tx: &mpsc::Sender<std::result::Result<WatchBatch, Status>>,
    control: FeedControl,
) -> Result<()> {
    let FeedControl {
        stall,
        mut shutdown,
        reads,
        open: _,
    } = control;
    // Subscribe before the first read, so no commit falls between reading and waiting.
    let mut commits = store.subscribe();
    let mut cursor = from;
    let mut last_message = Instant::now();
    loop {
        let read = reads
            .acquire()
            .await
            .map_err(|_| ConsentError::Internal("the feed read limiter closed".into()))?;
        let head = store.head(tenant).await?.revision;
        let page = if head > cursor {
            list_entries(
                store,
                tenant,
                &EventQuery {
                    subject_id: filter.subject_id.clone(),
                    after_revision: cursor,
                    until_revision: Some(head),
                    limit: PAGE,
                    without_evidence: true,
                    ..EventQuery::default()
                },
            )
            .await?
        } else {
            Vec::new()
        };
        drop(read);
        if head > cursor {
            let full = page.len() == PAGE;
            // A short page means everything matching up to the head was read.
            cursor = match page.last() {
                Some(last) if full => last.revision(),
                _ => head,
            };
            let entries: Vec<LedgerEntry> =
                page.into_iter().filter(|e| filter.matches(e)).collect();
            if !entries.is_empty() {
                if !deliver(
                    tx,
                    WatchBatch {
                        entries,
                        revision: cursor,
                    },
                    stall,
                )
                .await
                {
                    return Ok(());
                }
                last_message = Instant::now();
            }
            if full {
                continue;
            }
        }
        if last_message.elapsed() >= HEARTBEAT {
            let heartbeat = WatchBatch {
                entries: Vec::new(),
                revision: cursor,
            };
            if !deliver(tx, heartbeat, stall).await {
                return Ok(());
            }
            last_message = Instant::now();
        }
        let poll = tokio::time::sleep(POLL_INTERVAL);
        tokio::pin!(poll);
        loop {
            tokio::select! {
                () = &mut poll => break,
                () = tx.closed() => return Ok(()),
                _ = shutdown.wait_for(|stopping| *stopping) => {
                    // Told, not just cut: the client resumes elsewhere without a gap. A
                    // reader too far behind to take this gets the connection's GOAWAY.
                    let _ = tx.try_send(Err(Status::unavailable(format!(
                        "consentd is shutting down; resume the Watch with from_revision {cursor} (or the last revision received), on another replica or after the restart"
                    ))));
                    return Ok(());
                }
                received = commits.recv() => match received {
                    Ok(commit) if commit.tenant_id == tenant && commit.revision > cursor => break,
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => {
                        return Err(ConsentError::Internal("the commit feed closed".into()));
                    }
                },
            }
        }
    }
}
