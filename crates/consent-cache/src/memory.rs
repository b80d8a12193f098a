//! In-process cache (moka): fast and bounded, coherent only with writes made through this
//! process. Use it when one replica owns the store (the SQLite default); with several
//! replicas use Redis, which every replica's writes reach before they are acknowledged.
//!
//! Catalogues are kept at most [`CATALOG_TTL`], so a catalogue changed behind the server's
//! back (`consentd catalog apply` on the store of a running single replica) is seen within
//! that time; changes through the API are seen at once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use consent_core::{Catalog, Result, Revision, SubjectState};
use moka::ops::compute::Op;
use moka::sync::Cache;

use crate::{CacheBackend, StateLookup, Versioned};

/// Longest time an in-process catalogue copy is used without re-reading it.
pub const CATALOG_TTL: Duration = Duration::from_secs(5);

/// The in-process backend.
#[derive(Clone, Debug)]
pub struct MemoryCache {
    states: Cache<(String, String), Arc<Versioned<Arc<SubjectState>>>>,
    catalogs: Cache<String, Arc<Versioned<Arc<Catalog>>>>,
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
        let entry = Versioned {
            version: state.revision,
            value: Some(Arc::new(state.clone())),
        };
        put_if(
            &self.states,
            (tenant.to_owned(), subject.to_owned()),
            entry,
            Put::Fill,
        );
        Ok(())
    }

    async fn begin_write(&self, tenant: &str, subject: &str) -> Result<()> {
        let key = (tenant.to_owned(), subject.to_owned());
        put_if(&self.states, key, Versioned::pending(), Put::Pending);
        Ok(())
    }

    async fn invalidate_state(
        &self,
        tenant: &str,
        subject: &str,
        revision: Revision,
    ) -> Result<()> {
        let tomb = Versioned {
            version: revision,
            value: None,
        };
        put_if(
            &self.states,
            (tenant.to_owned(), subject.to_owned()),
            tomb,
            Put::Tombstone,
        );
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
