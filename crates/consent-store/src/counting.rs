//! Test support: a [`Store`] in front of another that counts the calls it passes on, so a
//! test can prove how often a layer above reads the store (a batch reading each history
//! once, an authenticator caching unknown keys, a breaker shielding a store that is down).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use consent_core::Result;

use crate::Store;

/// Counts calls by method name, then passes them to the store inside.
pub struct CountingStore {
    inner: Arc<dyn Store>,
    calls: Mutex<HashMap<&'static str, usize>>,
}

impl std::fmt::Debug for CountingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountingStore")
            .field("calls", &self.calls)
            .finish()
    }
}

impl CountingStore {
    /// Counts the calls to `inner`.
    pub fn new(inner: Arc<dyn Store>) -> CountingStore {
        CountingStore {
            inner,
            calls: Mutex::new(HashMap::new()),
        }
    }

    /// How many times `method` was called so far.
    pub fn calls(&self, method: &str) -> usize {
        self.calls
            .lock()
            .map(|c| c.get(method).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    fn inner(&self) -> &dyn Store {
        self.inner.as_ref()
    }

    async fn around<T: Send>(
        &self,
        method: &'static str,
        call: impl Future<Output = Result<T>> + Send,
    ) -> Result<T> {
        if let Ok(mut calls) = self.calls.lock() {
            *calls.entry(method).or_insert(0) += 1;
        }
        call.await
    }
}

crate::store_proxy!(CountingStore);
