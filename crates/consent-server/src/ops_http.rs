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

/// Renders running at once: a scrape costs about a millisecond of CPU, so a flood of them
/// must wait its turn instead of starving the gRPC port.
static RENDERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
/// How long a scrape waits for a render slot before 503.
const RENDER_WAIT: Duration = Duration::from_secs(2);

async fn metrics(State(probes): State<Arc<Probes>>) -> Response {
    let Ok(Ok(_turn)) = tokio::time::timeout(RENDER_WAIT, RENDERS.acquire()).await else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many /metrics requests at once; retry\n",
        )
            .into_response();
    };
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

/// Most connections open at once on the HTTP listener; past it new ones are closed at once.
/// Probes and scrapes take milliseconds: a few dozen cover every kubelet and scraper, and the
/// cap keeps slow clients from taking the file descriptors the gRPC port needs.
pub const MAX_CONNECTIONS: usize = 64;
/// Most connections one client address may hold: a client that takes its share cannot take
/// the kubelet's (liveness and readiness probes come from the node's address).
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 8;

/// Connections held per client address.
#[derive(Debug, Default)]
struct PeerSlots {
    held: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One connection of an address; given back when dropped.
struct PeerSlot {
    peers: Arc<PeerSlots>,
    ip: std::net::IpAddr,
}

impl PeerSlots {
    fn take(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<PeerSlot> {
        let mut held = self.held.lock().ok()?;
        let count = held.entry(ip).or_insert(0);
        if *count >= MAX_CONNECTIONS_PER_ADDRESS {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            peers: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        if let Ok(mut held) = self.peers.held.lock()
            && let Some(count) = held.get_mut(&self.ip)
        {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

/// A client has this long to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest life of a connection (keep-alive included).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Once told to stop, open connections get this long to finish their answer.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// Largest buffered request head (hyper's minimum is 8 KiB).
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// Serves the routes on `listener` until `shutdown` resolves, then closes every connection
/// within [`STOP_GRACE`]: a client that never finishes its request must not hold the
/// process. HTTP/1.1 only (kubelets and scrapers speak it), bounded by [`MAX_CONNECTIONS`]
/// ([`MAX_CONNECTIONS_PER_ADDRESS`] per client address),
/// [`HEADER_READ_TIMEOUT`], [`MAX_REQUEST_HEAD`] and [`CONNECTION_LIFETIME`].
pub async fn serve(
    listener: TcpListener,
    probes: Arc<Probes>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let router = router(probes);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let peers = Arc::new(PeerSlots::default());
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        while connections.try_join_next().is_some() {}
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors, most likely: back off instead of spinning.
                tracing::warn!(error = %e, "the HTTP listener cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let peer = tcp.peer_addr().map(|a| a.ip()).ok();
        let Some(peer_slot) = peer.and_then(|ip| peers.take(ip)) else {
            continue; // this address holds its share already: dropped, so closed
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            continue; // over the cap: dropped, so closed
        };
        // Answers span several segments: without NODELAY each would wait for an ACK.
        let _ = tcp.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        connections.spawn(async move {
            let _slots = (slot, peer_slot);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD)
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
        });
    }
    let finished = tokio::time::timeout(STOP_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        connections.abort_all();
    }
    Ok(())
}
