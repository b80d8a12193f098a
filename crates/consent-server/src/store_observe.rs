//! A [`Store`] in front of the ledger that puts each call in a `store` span (a child of the
//! request's `rpc` span: `db.system.name`, `db.operation.name` = the store method) and
//! records its duration in `db.client.operation.duration`, with `error.type` when the store
//! failed (an answer such as "not found" is not a failure).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use consent_core::{ConsentError, Result};
use consent_store::Store;
use consent_store_sql::Backend;
use tracing::Instrument as _;

use crate::metrics::Metrics;

/// Traces and times every call to the store inside.
pub struct ObservedStore {
    inner: Arc<dyn Store>,
    system: &'static str,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for ObservedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservedStore")
            .field("system", &self.system)
            .finish_non_exhaustive()
    }
}

impl ObservedStore {
    /// Observes `inner`, a ledger on `backend`.
    pub fn new(inner: Arc<dyn Store>, backend: Backend, metrics: Arc<Metrics>) -> ObservedStore {
        ObservedStore {
            inner,
            // The names of the database semantic conventions.
            system: match backend {
                Backend::Postgres => "postgresql",
                Backend::Sqlite => "sqlite",
            },
            metrics,
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
        let span = tracing::info_span!(
            "store",
            otel.name = method,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            db.system.name = self.system,
            db.operation.name = method,
        );
        let started = Instant::now();
        let result = call.instrument(span.clone()).await;
        let failure = match &result {
            Err(ConsentError::Unavailable(_)) => Some("unavailable"),
            Err(ConsentError::Internal(_)) => Some("internal"),
            _ => None,
        };
        if failure.is_some() {
            span.record("otel.status_code", "ERROR");
        }
        self.metrics
            .store_operation(self.system, method, started.elapsed(), failure);
        result
    }
}

consent_store::store_proxy!(ObservedStore);
