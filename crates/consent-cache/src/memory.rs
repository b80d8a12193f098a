//! In-process cache (moka): fast and bounded, coherent only with writes made through this
//! process. Use it when one replica owns the store (the SQLite default); with several
//! replicas use Redis, which every replica's writes reach before they are acknowledged.
//!
//! Catalogues are kept at most [`CATALOG_TTL`], so a catalogue changed behind the server's
//! back (`consentd catalog apply` on the store of a running single replica) is seen within
//! that time; changes through the API are seen at once.
//!
//! The cache evicts (it is bounded), and an evicted tombstone or pending marker would let a
//! fill read before a write land after it: an outside test got stale GRANTED answers that way
//! with a small `cache.max_entries`. So every write also leaves a *guard* outside the
//! evicting cache, for [`GUARD_WINDOW`]: a fill older than the subject's last write is
//! refused by the guard whatever the cache kept. Fills of reads that took longer than
//! `crate::MAX_FILL_READ_AGE` (less than the window) are not attempted, so no fill can
//! outlive the guard it must meet.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use consent_core::{Catalog, Result, Revision, SubjectState};
use moka::ops::compute::Op;
use moka::sync::Cache;

use crate::{CacheBackend, StateLookup, Versioned};

/// Longest time an in-process catalogue copy is used without re-reading it.
pub const CATALOG_TTL: Duration = Duration::from_secs(5);

/// How long a write's guard refuses older fills of its subject.
pub const GUARD_WINDOW: Duration = Duration::from_secs(10);

type Key = (String, String);

/// The last write per subject within [`GUARD_WINDOW`], in a map nothing evicts early.
#[derive(Debug, Default)]
struct Guards {
    /// Subject -> (the write's revision, or `PENDING` while in flight; when it was set).
    by_key: HashMap<Key, (i64, Instant)>,
    /// Keys in the order their guards were set, for expiry.
    order: VecDeque<(Instant, Key)>,
}

impl Guards {
    fn set(&mut self, key: Key, version: i64, now: Instant) {
        let keep = self
            .by_key
            .get(&key)
            .is_some_and(|(current, _)| *current != crate::PENDING && *current > version);
        if !keep {
            self.by_key.insert(key.clone(), (version, now));
            self.order.push_back((now, key));
        }
        while let Some((set_at, _)) = self.order.front() {
            if now.duration_since(*set_at) <= GUARD_WINDOW {
                break;
            }
            if let Some((set_at, key)) = self.order.pop_front()
                && self.by_key.get(&key).is_some_and(|(_, at)| *at == set_at)
            {
                self.by_key.remove(&key);
            }
        }
    }

    /// Whether a fill read at `version` comes after the subject's last write.
    fn admits(&self, key: &Key, version: i64) -> bool {
        self.by_key
            .get(key)
            .is_none_or(|(guard, _)| *guard != crate::PENDING && *guard <= version)
    }
}

/// The in-process backend.
#[derive(Clone, Debug)]
pub struct MemoryCache {
    states: Cache<Key, Arc<Versioned<Arc<SubjectState>>>>,
    catalogs: Cache<String, Arc<Versioned<Arc<Catalog>>>>,
    guards: Arc<Mutex<Guards>>,
}

impl MemoryCache {
    fn guards(&self) -> std::sync::MutexGuard<'_, Guards> {
        // A panic elsewhere while holding the lock leaves the map usable.
        self.guards.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MemoryCache {
    /// At most `max_entries` subject states, each kept at most `ttl`.
    pub fn new(max_entries: u64, ttl: Duration) -> MemoryCache {
        MemoryCache {
            states: Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(ttl)
                .build(),
            catalogs: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(ttl.min(CATALOG_TTL))
                .build(),
            guards: Arc::default(),
        }
    }
}

/// How a put relates to the current entry.
#[derive(Clone, Copy)]
enum Put {
    Fill,
    Tombstone,
    Pending,
}

/// Stores `new` under `key` if the current entry accepts it, atomically for that key.
fn put_if<K, T>(cache: &Cache<K, Arc<Versioned<T>>>, key: K, new: Versioned<T>, put: Put)
where
    K: std::hash::Hash + Eq + Send + Sync + Clone + 'static,
    T: Send + Sync + 'static,
{
    let _ = cache.entry(key).and_compute_with(|current| {
        let accepted = current.is_none_or(|entry| {
            let entry = entry.value();
            match put {
                Put::Fill => entry.accepts_fill(new.version),
                Put::Tombstone => entry.accepts_tombstone(new.version),
                Put::Pending => true,
            }
        });
        if accepted {
            Op::Put(Arc::new(new))
        } else {
            Op::Nop
        }
    });
}

#[async_trait]
impl CacheBackend for MemoryCache {
    async fn get_state(&self, tenant: &str, subject: &str) -> Result<StateLookup> {
        let key = (tenant.to_owned(), subject.to_owned());
        Ok(match self.states.get(&key) {
            Some(entry) => match &entry.value {
                Some(state) => StateLookup::Hit(Arc::clone(state)),
                None if entry.is_pending() => StateLookup::Miss,
                None => StateLookup::Tombstone(entry.version),
            },
            None => StateLookup::Miss,
        })
    }

    async fn fill_state(&self, tenant: &str, subject: &str, state: &SubjectState) -> Result<()> {
        let key = (tenant.to_owned(), subject.to_owned());
        // Checked and stored under the guards' lock, so a write's guard set meanwhile is
        // either seen here or followed by its tombstone.
        let guards = self.guards();
        if !guards.admits(&key, state.revision) {
            return Ok(());
        }
        let entry = Versioned {
            version: state.revision,
            value: Some(Arc::new(state.clone())),
        };
        put_if(&self.states, key, entry, Put::Fill);
        drop(guards);
        Ok(())
    }

    async fn begin_write(&self, tenant: &str, subject: &str) -> Result<()> {
        let key = (tenant.to_owned(), subject.to_owned());
        self.guards()
            .set(key.clone(), crate::PENDING, Instant::now());
        put_if(&self.states, key, Versioned::pending(), Put::Pending);
        Ok(())
    }

    async fn invalidate_state(
        &self,
        tenant: &str,
        subject: &str,
        revision: Revision,
    ) -> Result<()> {
        let key = (tenant.to_owned(), subject.to_owned());
        let mut guards = self.guards();
        guards.set(key.clone(), revision, Instant::now());
        let tomb = Versioned {
            version: revision,
            value: None,
        };
        put_if(&self.states, key, tomb, Put::Tombstone);
        drop(guards);
        Ok(())
    }

    async fn get_catalog(&self, tenant: &str) -> Result<Option<Arc<Catalog>>> {
        Ok(self
            .catalogs
            .get(tenant)
            .and_then(|entry| entry.value.clone()))
    }

    async fn fill_catalog(&self, tenant: &str, catalog: &Catalog) -> Result<()> {
        let entry = Versioned {
            version: catalog.version,
            value: Some(Arc::new(catalog.clone())),
        };
        put_if(&self.catalogs, tenant.to_owned(), entry, Put::Fill);
        Ok(())
    }

    fn describe(&self) -> String {
        "in-process".to_owned()
    }

    fn is_shared(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(revision: i64) -> SubjectState {
        SubjectState {
            revision,
            ..SubjectState::default()
        }
    }

    async fn cached_revision(cache: &MemoryCache) -> Option<i64> {
        match cache.get_state("t", "alice").await {
            Ok(StateLookup::Hit(s)) => Some(s.revision),
            _ => None,
        }
    }

    /// The cache evicts; the guard does not: a fill read before a write and arriving after
    /// the write's tombstone was evicted is refused (a stale entry would answer GRANTED).
    #[tokio::test]
    async fn a_stale_fill_is_refused_after_its_tombstone_was_evicted() -> Result<()> {
        let cache = MemoryCache::new(1000, Duration::from_secs(300));
        cache.fill_state("t", "alice", &state(3)).await?;
        cache.begin_write("t", "alice").await?;
        // While the write is in flight, no fill lands, evicted marker or not.
        cache
            .states
            .invalidate(&("t".to_owned(), "alice".to_owned()));
        cache.fill_state("t", "alice", &state(3)).await?;
        assert_eq!(cached_revision(&cache).await, None);
        cache.invalidate_state("t", "alice", 5).await?;
        cache
            .states
            .invalidate(&("t".to_owned(), "alice".to_owned()));
        // The read began before the write (revision 3): refused.
        cache.fill_state("t", "alice", &state(3)).await?;
        assert_eq!(cached_revision(&cache).await, None);
        // A read after it is cached.
        cache.fill_state("t", "alice", &state(5)).await?;
        assert_eq!(cached_revision(&cache).await, Some(5));
        // Another subject is not held back by alice's write.
        cache.fill_state("t", "bob", &state(1)).await?;
        assert!(matches!(
            cache.get_state("t", "bob").await?,
            StateLookup::Hit(_)
        ));
        Ok(())
    }
}
