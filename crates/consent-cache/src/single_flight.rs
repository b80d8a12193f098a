//! Concurrent misses of one subject share one ledger read, when that cannot answer from
//! before a write the caller must see.
//!
//! A reader may join a read in flight only if both found the **same tombstone** (the
//! tombstone of the write at revision `v`). Why that is safe: a tombstone is stored after
//! its write committed, so the read in flight began after the write at `v`; and every later
//! write stores its pending marker before it commits and its own tombstone (at a higher
//! revision, which a lower one never replaces) before it is acknowledged. So a reader that
//! still finds the tombstone of `v` started before any later write was acknowledged, and the
//! read it joins is as fresh as one of its own. Readers that found nothing, or a pending
//! marker, never join: an absent entry or a marker says nothing about when a read began.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use consent_core::{Result, Revision, SubjectState};
use consent_store::{Consistency, Store};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

type Load = Shared<BoxFuture<'static, Result<Arc<SubjectState>>>>;

/// The ledger reads in flight, by (tenant, subject, tombstone revision).
#[derive(Default)]
pub(crate) struct Loads {
    in_flight: Mutex<HashMap<(String, String, Revision), Load>>,
}

impl std::fmt::Debug for Loads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.in_flight.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "Loads({n} in flight)")
    }
}

impl Loads {
    /// The subject's current state from `inner`, read by this call or by a read in flight
    /// that found the same tombstone. Returns the state and whether it was joined (then the
    /// reader that started it fills the cache).
    pub(crate) async fn read(
        &self,
        inner: &Arc<dyn Store>,
        tenant: &str,
        subject: &str,
        tombstone: Revision,
    ) -> (Result<Arc<SubjectState>>, bool) {
        let key = (tenant.to_owned(), subject.to_owned(), tombstone);
        let (load, joined) = {
            let Ok(mut in_flight) = self.in_flight.lock() else {
                return (
                    inner
                        .subject_state(tenant, subject, None, Consistency::Full)
                        .await,
                    false,
                );
            };
            match in_flight.get(&key) {
                Some(load) => (load.clone(), true),
                None => {
                    let (inner, t, s) = (Arc::clone(inner), tenant.to_owned(), subject.to_owned());
                    let load =
                        async move { inner.subject_state(&t, &s, None, Consistency::Full).await }
                            .boxed()
                            .shared();
                    in_flight.insert(key.clone(), load.clone());
                    (load, false)
                }
            }
        };
        let state = load.clone().await;
        if let Ok(mut in_flight) = self.in_flight.lock()
            && in_flight.get(&key).is_some_and(|l| l.ptr_eq(&load))
        {
            in_flight.remove(&key);
        }
        (state, joined)
    }
}
