//! Identity resolutions (alias key -> link) cached in this process, for a cache of this
//! process alone (`MemoryCache`: one replica owning its store). A shared cache keeps them
//! with the versioned entries of subject states instead (`crate::ResolutionCache`).
//!
//! Coherence by generation, per tenant: a link, unlink or erasure bumps the tenant's
//! generation before it writes and again after it commits; an entry answers only while its
//! generation is the tenant's current one; a fill carries the generation read before its
//! ledger read and is dropped if the generation moved meanwhile. So a resolution read
//! before a link commits can never answer after it: either its fill is refused, or the
//! post-commit bump leaves it behind. Links are rare beside checks; a write drops every
//! cached resolution of its tenant.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use consent_core::identity::AliasKey;
use consent_store::Resolution;

/// The cached resolutions of this process.
pub(crate) struct Resolutions {
    entries: moka::sync::Cache<(String, AliasKey), (u64, Resolution)>,
    generations: RwLock<HashMap<String, Arc<AtomicU64>>>,
}

impl Resolutions {
    /// Room for `capacity` resolutions.
    pub(crate) fn new(capacity: u64) -> Resolutions {
        Resolutions {
            entries: moka::sync::Cache::new(capacity),
            generations: RwLock::new(HashMap::new()),
        }
    }

    fn counter(&self, tenant: &str) -> Arc<AtomicU64> {
        if let Ok(map) = self.generations.read()
            && let Some(counter) = map.get(tenant)
        {
            return Arc::clone(counter);
        }
        match self.generations.write() {
            Ok(mut map) => Arc::clone(map.entry(tenant.to_owned()).or_default()),
            // A poisoned map: a counter of its own, which no entry matches for long (the
            // next lookup makes another): the cache misses, it never answers wrong.
            Err(_) => Arc::new(AtomicU64::new(u64::MAX)),
        }
    }

    /// The tenant's generation now (read before a ledger read that will fill).
    pub(crate) fn generation(&self, tenant: &str) -> u64 {
        self.counter(tenant).load(Ordering::SeqCst)
    }

    /// Leaves every cached resolution of `tenant` behind (before and after a link write).
    pub(crate) fn bump(&self, tenant: &str) {
        self.counter(tenant).fetch_add(1, Ordering::SeqCst);
    }

    /// The cached resolution of `alias`, if it is of the tenant's current generation (a
    /// resolution without a link is a cached "not linked").
    pub(crate) fn get(&self, tenant: &str, alias: &AliasKey) -> Option<Resolution> {
        let now = self.generation(tenant);
        self.entries
            .get(&(tenant.to_owned(), *alias))
            .filter(|(generation, _)| *generation == now)
            .map(|(_, link)| link)
    }

    /// Caches what a ledger read that started at `generation` found, unless a link write
    /// moved the generation since.
    pub(crate) fn fill(
        &self,
        tenant: &str,
        alias: &AliasKey,
        generation: u64,
        resolution: Resolution,
    ) {
        if self.generation(tenant) == generation {
            self.entries
                .insert((tenant.to_owned(), *alias), (generation, resolution));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unlinked() -> Resolution {
        Resolution {
            link: None,
            revision: 3,
        }
    }

    fn link() -> Resolution {
        Resolution {
            link: Some(linked()),
            revision: 4,
        }
    }

    fn linked() -> consent_store::StoredIdentity {
        consent_store::StoredIdentity {
            link: consent_store::NewLink {
                alias: AliasKey([1; 32]),
                kind: consent_core::IdentityType::Cookie,
                value: Some("c".into()),
            },
            subject_id: "acct".into(),
            revision: 1,
            linked_at: consent_core::Timestamp(0),
        }
    }

    #[test]
    fn a_fill_read_before_a_write_never_answers_after_it() {
        let cache = Resolutions::new(100);
        let alias = AliasKey([1; 32]);
        // A read starts, a link write begins and commits, then the read's fill arrives.
        let started = cache.generation("t");
        cache.bump("t");
        cache.bump("t");
        cache.fill("t", &alias, started, unlinked());
        assert_eq!(cache.get("t", &alias), None, "a stale fill was kept");
        // A read between the write's two bumps fills, then the commit's bump buries it.
        cache.bump("t");
        let during = cache.generation("t");
        cache.fill("t", &alias, during, unlinked());
        assert_eq!(cache.get("t", &alias), Some(unlinked()));
        cache.bump("t");
        assert_eq!(cache.get("t", &alias), None, "an entry outlived the commit");
        // A read after the write is cached and answers; another tenant is untouched.
        let after = cache.generation("t");
        cache.fill("t", &alias, after, link());
        assert_eq!(cache.get("t", &alias), Some(link()));
        cache.bump("other");
        assert_eq!(cache.get("t", &alias), Some(link()));
    }
}
