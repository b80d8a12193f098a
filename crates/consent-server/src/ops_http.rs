//! The plain-HTTP listener for operators and Kubernetes (`http.listen`, default
//! `127.0.0.1:9090`), separate from the gRPC port and without authentication; it serves no
//! consent data:
//!
//! - `GET /healthz`: 200 while the process runs (liveness);
//! - `GET /readyz`: 200 when this replica should get traffic: the store answers and its
//!   schema has every migration of this build, and shutdown has not begun; 503 otherwise.
//!   A JSON body says what was checked. Redis, when configured, is reported but never makes
//!   the replica unready: the service answers correctly without it (reads go to the ledger);
//! - `GET /metrics`: every series in the Prometheus text format (see [`crate::metrics`]).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use consent_cache::RedisCache;
use consent_store_sql::SqlStore;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::telemetry::MetricsPipeline;

/// Whether shutdown has begun (then `/readyz` answers 503 while calls still drain).
#[derive(Debug, Default)]
pub struct Readiness {
    draining: AtomicBool,
}

impl Readiness {
    /// Shutdown has begun: report not ready from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// What the probes look at.
pub struct Probes {
    /// Set when shutdown begins.
    pub readiness: Arc<Readiness>,
    /// The ledger (pinged, and its migrations compared with this build's).
    pub ledger: SqlStore,
    /// The shared cache, when configured (reported, never required).
    pub redis: Option<Arc<RedisCache>>,
    /// What `/metrics` renders.
    pub metrics: Arc<MetricsPipeline>,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}

/// The longest a probe waits for the store or Redis: a hung dependency must turn into an
/// answer before the prober's own timeout.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The body of `/readyz`.
#[derive(Debug, Serialize)]
pub struct ReadinessReport {
    /// Whether this replica should get traffic.
    pub ready: bool,
    /// Shutdown has begun.
    pub draining: bool,
    /// `ok`, or why the store did not answer.
    pub store: String,
    /// `ok`, or how many migrations are pending.
    pub migrations: String,
    /// `ok`, `not configured`, or why Redis did not answer (informational).
    pub cache: String,
}

async fn within<T>(
    what: &str,
    check: impl Future<Output = consent_core::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(value)) => Ok(value),
        // Error texts can quote a URL; the redaction registry hides its secrets.
        Ok(Err(e)) => Err(consent_core::redact::redact(&e.to_string())),
        Err(_) => Err(format!(
            "{what} did not answer within {} s",
            CHECK_TIMEOUT.as_secs()
        )),
    }
}

impl Probes {
    /// Checks the store, its migrations and Redis now.
    pub async fn report(&self) -> ReadinessReport {
        let draining = self.readiness.is_draining();
        let store = within("the store", self.ledger.ping()).await;
        let migrations = match &store {
            Ok(()) => match within("the store", self.ledger.migration_state()).await {
                Ok(state) if state.pending == 0 => Ok(()),
                Ok(state) => Err(format!(
                    "{} migrations of this build are not applied; run `consentd migrate`",
                    state.pending
                )),
                Err(e) => Err(e),
            },
            Err(_) => Err("not checked: the store did not answer".to_owned()),
        };
        let cache = match &self.redis {
            None => "not configured".to_owned(),
            Some(redis) => match within("Redis", redis.ping()).await {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("unavailable (reads go to the ledger): {e}"),
            },
        };
        let text = |r: &Result<(), String>| match r {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.clone(),
        };
        ReadinessReport {
            ready: !draining && store.is_ok() && migrations.is_ok(),
            draining,
            store: text(&store),
            migrations: text(&migrations),
            cache,
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(probes): State<Arc<Probes>>) -> Response {
    let report = probes.report().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::to_string(&report).unwrap_or_else(|_| "{}".to_owned());
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn metrics(State(probes): State<Arc<Probes>>) -> Response {
    match probes.metrics.render() {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// The routes.
pub fn router(probes: Arc<Probes>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(probes)
}

/// Serves the routes on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    probes: Arc<Probes>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use axum::serve::ListenerExt as _;
    // Metrics answers span several segments: without NODELAY each would wait for an ACK.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(probes))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| anyhow::anyhow!("the HTTP listener failed: {e}"))
}
