//! Concurrent misses behind one tombstone share one ledger read; a reader that arrives after
//! a later write never shares a read begun before it. The ledger's first subject-state
//! read is held at a gate, so the interleavings are set by the test, not by timing.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{ledger, write};
use consent_cache::{CachedStore, MemoryCache};
use consent_core::{Decision, Result};
use consent_store::{Consistency, LedgerStore, Store};
use tokio::sync::{Notify, Semaphore};

/// A store whose first `subject_state` call, once armed, answers only when the test opens
/// the gate (the ledger read itself is done before it waits).
struct Gated {
    inner: Arc<dyn Store>,
    reads: AtomicUsize,
    armed: std::sync::atomic::AtomicBool,
    /// Told when the held read has its answer from the ledger.
    read_done: Notify,
    gate: Semaphore,
}

impl Gated {
    fn new(inner: Arc<dyn Store>) -> Gated {
        Gated {
            inner,
            reads: AtomicUsize::new(0),
            armed: std::sync::atomic::AtomicBool::new(false),
            read_done: Notify::new(),
            gate: Semaphore::new(0),
        }
    }

    fn inner(&self) -> &dyn Store {
        self.inner.as_ref()
    }

    async fn around<T: Send>(
        &self,
        method: &'static str,
        call: impl Future<Output = Result<T>> + Send,
    ) -> Result<T> {
        if method != "subject_state" {
            return call.await;
        }
        let nth = self.reads.fetch_add(1, Ordering::SeqCst);
        let answer = call.await;
        if nth == 0 && self.armed.load(Ordering::SeqCst) {
            self.read_done.notify_one();
            let _open = self.gate.acquire().await;
        }
        answer
    }

    fn arm(&self) {
        self.reads.store(0, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }
}

consent_store::store_proxy!(Gated);

async fn read(store: &CachedStore) -> Option<Decision> {
    store
        .subject_state("t", "alice", None, Consistency::MinimizeLatency)
        .await
        .unwrap_or_else(|e| panic!("read: {e}"))
        .entries
        .first()
        .map(|e| e.decision)
}

/// A ledger behind the gate and an in-process cache, where alice's grant left a tombstone;
/// the gate is armed for the next read.
async fn granted_then_armed() -> (Arc<Gated>, Arc<CachedStore>, tempfile::TempDir) {
    let (sql, dir) = ledger().await;
    let gated = Arc::new(Gated::new(sql));
    let cached = Arc::new(CachedStore::new(
        gated.clone(),
        Arc::new(MemoryCache::new(1000, common::TTL)),
    ));
    write(cached.as_ref(), "t", "alice", Decision::Granted).await;
    gated.arm();
    (gated, cached, dir)
}

/// Lets every other ready task run until it waits (the runtime has one thread, and a
/// reader reaches the read it joins without waiting on anything).
async fn let_others_run() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn misses_behind_one_tombstone_share_one_read() {
    let (gated, cached, _dir) = granted_then_armed().await;
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let cached = Arc::clone(&cached);
            tokio::spawn(async move { read(&cached).await })
        })
        .collect();
    gated.read_done.notified().await;
    let_others_run().await;
    assert_eq!(gated.reads.load(Ordering::SeqCst), 1, "one ledger read");
    gated.gate.add_permits(1);
    for reader in readers {
        let answer = reader.await.unwrap_or_else(|e| panic!("reader: {e}"));
        assert_eq!(answer, Some(Decision::Granted));
    }
    assert_eq!(
        gated.reads.load(Ordering::SeqCst),
        1,
        "still one ledger read"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_reader_after_a_later_write_never_shares_a_read_begun_before_it() {
    let (gated, cached, _dir) = granted_then_armed().await;
    // The first reader reads the grant and is held before it answers.
    let first = {
        let cached = Arc::clone(&cached);
        tokio::spawn(async move { read(&cached).await })
    };
    gated.read_done.notified().await;
    assert_eq!(gated.reads.load(Ordering::SeqCst), 1);
    // A withdrawal is acknowledged meanwhile; a reader after it must see it.
    write(cached.as_ref(), "t", "alice", Decision::Withdrawn).await;
    // A safety net, not a timing claim: a reader wrongly joining the held read would wait
    // for the gate forever.
    let after = tokio::time::timeout(std::time::Duration::from_secs(30), read(&cached))
        .await
        .unwrap_or_else(|_| panic!("the reader after the withdrawal joined the held read"));
    assert_eq!(after, Some(Decision::Withdrawn));
    assert_eq!(gated.reads.load(Ordering::SeqCst), 2, "its own read");
    gated.gate.add_permits(1);
    let held = first.await.unwrap_or_else(|e| panic!("reader: {e}"));
    assert_eq!(held, Some(Decision::Granted), "read before the withdrawal");
    // And the cache did not keep the older answer.
    assert_eq!(read(&cached).await, Some(Decision::Withdrawn));
}
