//! An in-process decision cache kept current by `Watch` (feature `local-cache`), for
//! services that call `Check` in a hot loop: a hit costs a hash lookup, no round trip.
//!
//! How it stays correct:
//! - A feed task watches the tenant's ledger from its head; every event or right
//!   (restriction, objection, GPC) of a subject drops that subject's cached answers, an
//!   erasure (whose record names only the erased id) drops them all.
//! - Only checks by `subject_id` are cached, and only answers for that subject: a check by
//!   identity, or one answered for the subject a merge closed this one into (whose changes
//!   the feed names by that other id), always goes to the service.
//! - An answer from the service is kept only if it was computed at a revision no older
//!   than what the feed has delivered (else a change the feed already passed on could be
//!   hidden under it).
//! - **Staleness bound**: the cache answers only while the feed is live, i.e. its last
//!   message (the server sends one at least every 10 s, a heartbeat if nothing changed)
//!   came less than [`LocalCacheOptions::max_staleness`] ago; otherwise every check goes
//!   to the service. So a cached answer reflects the ledger as of at most `max_staleness`
//!   ago. Entries also expire after `max_staleness` (catalogue changes such as a material
//!   policy version are not in the feed), and a grant past its `expires_at` is never
//!   served.
//! - `at_least_revision = r` is served from the cache only when the feed has delivered `r`
//!   (no change of the subject up to `r` then exists that the entry does not reflect);
//!   `fully_consistent` and as-of (`at`) checks always go to the service.
//! - Errors are never cached, and never an allow.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use consent_proto::v1 as pb;
use futures::StreamExt;
use pb::consistency::Requirement;

use crate::{Check, ConsentClient, Error};

/// Settings of a [`LocalCache`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalCacheOptions {
    /// The staleness bound: no answer older than this is served (default 30 s; it must
    /// exceed the server's 10 s heartbeat or the cache is mostly bypassed).
    pub max_staleness: Duration,
    /// Subjects kept at most (default 100,000); the least recently used go first.
    pub max_subjects: u64,
}

impl Default for LocalCacheOptions {
    fn default() -> LocalCacheOptions {
        LocalCacheOptions {
            max_staleness: Duration::from_secs(30),
            max_subjects: 100_000,
        }
    }
}

/// One subject's cached answers, by (purpose, vendor).
type Answers = Mutex<HashMap<(String, String), pb::CheckResponse>>;

/// What the feed task shares with the cache.
#[derive(Debug)]
struct Feed {
    /// The revision the feed delivered up to.
    revision: tokio::sync::watch::Sender<i64>,
    /// When the feed last heard from the server.
    heard_at: Mutex<Instant>,
    /// Held while the feed applies a message and while an answer is kept, so an answer
    /// is never kept after a change it predates was applied.
    gate: Mutex<()>,
}

/// A [`ConsentClient`] with an in-process decision cache kept current by `Watch` (see the
/// module docs for the guarantees). Cheap to clone; the feed stops when the last clone is
/// dropped.
///
/// ```no_run
/// use consent_client::{ConsentClient, LocalCacheOptions};
///
/// # async fn example() -> Result<(), consent_client::Error> {
/// let client = ConsentClient::builder("http://127.0.0.1:50051").connect().await?;
/// let cached = client.local_cache(LocalCacheOptions::default()).await?;
/// for _ in 0..1000 {
///     if cached.allowed("+32470000001", "analytics").await? {
///         // process
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct LocalCache {
    client: ConsentClient,
    answers: moka::sync::Cache<String, Arc<Answers>>,
    feed: Arc<Feed>,
    options: LocalCacheOptions,
    stats: Arc<Stats>,
    _task: Arc<AbortOnDrop>,
}

/// Cache hits and misses.
#[derive(Debug, Default)]
struct Stats {
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ConsentClient {
    /// This client with a local decision cache: reads the ledger's head, then starts the
    /// feed that keeps the cache current (on the current Tokio runtime).
    pub async fn local_cache(&self, options: LocalCacheOptions) -> Result<LocalCache, Error> {
        // The head: a state read of any subject carries the revision it was read at.
        let head = self
            .get_subject_state(pb::GetSubjectStateRequest {
                subject_id: "consent-sdk-local-cache-probe".into(),
                consistency: Some(pb::Consistency {
                    requirement: Some(Requirement::FullyConsistent(true)),
                }),
                ..Default::default()
            })
            .await?
            .revision;
        let answers = moka::sync::Cache::builder()
            .max_capacity(options.max_subjects)
            .time_to_live(options.max_staleness)
            .build();
        let (revision, _) = tokio::sync::watch::channel(head);
        let feed = Arc::new(Feed {
            revision,
            heard_at: Mutex::new(Instant::now()),
            gate: Mutex::new(()),
        });
        let task = tokio::spawn(follow(
            self.clone(),
            answers.clone(),
            Arc::clone(&feed),
            head,
        ));
        Ok(LocalCache {
            client: self.clone(),
            answers,
            feed,
            options,
            stats: Arc::default(),
            _task: Arc::new(AbortOnDrop(task.abort_handle())),
        })
    }
}

/// Follows the feed from `from`, dropping the answers each change makes stale, for as
/// long as the cache lives; reopens it (from the last revision) when it fails.
async fn follow(
    client: ConsentClient,
    answers: moka::sync::Cache<String, Arc<Answers>>,
    feed: Arc<Feed>,
    from: i64,
) {
    let mut from = from;
    loop {
        let mut messages = client.watch(pb::WatchRequest {
            from_revision: from,
            ..Default::default()
        });
        while let Some(Ok(message)) = messages.next().await {
            let _applying = feed
                .gate
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for event in &message.events {
                answers.invalidate(&event.subject_id);
            }
            for record in &message.records {
                if record.kind() == pb::LedgerRecordKind::SubjectErased {
                    // The record names the erased id only: drop everything.
                    answers.invalidate_all();
                } else if !record.subject_id.is_empty() {
                    answers.invalidate(&record.subject_id);
                }
            }
            from = from.max(message.revision);
            feed.revision.send_replace(from);
            if let Ok(mut heard) = feed.heard_at.lock() {
                *heard = Instant::now();
            }
        }
        // The feed gave up (after its own retries): the cache is bypassed once it is
        // `max_staleness` old; try again a little later.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl LocalCache {
    /// Whether the feed is live: heard from within the staleness bound.
    fn live(&self) -> bool {
        self.feed
            .heard_at
            .lock()
            .is_ok_and(|heard| heard.elapsed() < self.options.max_staleness)
    }

    /// The revision the feed has delivered up to.
    pub fn revision(&self) -> i64 {
        *self.feed.revision.borrow()
    }

    /// Waits until the feed has delivered `revision` (e.g. one a write returned), so later
    /// checks can be answered from the cache with `at_least_revision` up to it.
    pub async fn wait_for_revision(&self, revision: i64) {
        let mut seen = self.feed.revision.subscribe();
        let _ = seen.wait_for(|r| *r >= revision).await;
    }

    /// Checks answered from the cache, and from the service, so far.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (
            self.stats.hits.load(Ordering::Relaxed),
            self.stats.misses.load(Ordering::Relaxed),
        )
    }

    /// Whether `purpose_id` may be processed for `subject_id` now (see
    /// [`ConsentClient::allowed`]), from the cache when it may answer.
    pub async fn allowed(&self, subject_id: &str, purpose_id: &str) -> Result<bool, Error> {
        Ok(self
            .check(Check::new(subject_id, purpose_id))
            .await?
            .allowed)
    }

    /// A check, from the cache when it may answer (see the module docs), else from the
    /// service (and then kept).
    pub async fn check(
        &self,
        request: impl Into<pb::CheckRequest>,
    ) -> Result<pb::CheckResponse, Error> {
        let request: pb::CheckRequest = request.into();
        let wanted = match request
            .consistency
            .as_ref()
            .and_then(|c| c.requirement.as_ref())
        {
            None | Some(Requirement::MinimizeLatency(_) | Requirement::FullyConsistent(false)) => {
                Some(0)
            }
            Some(Requirement::AtLeastRevision(r)) => Some(*r),
            Some(Requirement::FullyConsistent(true)) => None,
        };
        // By subject id only: an identity's subject may change with any link (and the feed
        // names subjects, not identities).
        let cacheable = request.at.is_none() && request.identity.is_none() && wanted.is_some();
        let key = (request.purpose_id.clone(), request.vendor_id.clone());
        if let Some(wanted) = wanted.filter(|_| cacheable)
            && self.live()
            && self.revision() >= wanted
            && let Some(answer) = self.cached(&request.subject_id, &key)
        {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(answer);
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let subject = request.subject_id.clone();
        let answer = self.client.check(request).await?;
        // Kept only if no change the feed already applied is newer than the answer.
        if cacheable && self.live() {
            let _keeping = self
                .feed
                .gate
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Answered for another subject (the one a merge closed this one into): its changes
            // reach the feed under that subject's id, so the answer could not be dropped.
            if answer.revision >= self.revision() && answer.subject_id == subject {
                let answers = self.answers.get_with(subject, Arc::default);
                if let Ok(mut answers) = answers.lock() {
                    answers.insert(key, answer.clone());
                }
            }
        }
        Ok(answer)
    }

    /// A cached answer still true now (a grant past its expiry is not).
    fn cached(&self, subject_id: &str, key: &(String, String)) -> Option<pb::CheckResponse> {
        let answers = self.answers.get(subject_id)?;
        let answer = answers.lock().ok()?.get(key).cloned()?;
        let expired = answer.expires_at.is_some_and(|t| {
            SystemTime::try_from(t).is_ok_and(|expiry| expiry <= SystemTime::now())
        });
        (!expired).then_some(answer)
    }
}
