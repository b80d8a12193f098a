//! Assembles the gRPC server: the consent services, `grpc.health.v1.Health`, server
//! reflection (v1 and v1alpha, so every grpcurl works), the auth interceptor and per-RPC
//! tracing spans; serves it on a listener until a shutdown signal, draining in-flight RPCs.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use consent_core::{Clock, SystemClock};
use consent_proto::v1::admin_service_server::AdminServiceServer;
use consent_proto::v1::catalog_service_server::CatalogServiceServer;
use consent_proto::v1::consent_service_server::ConsentServiceServer;
use consent_proto::v1::identity_service_server::IdentityServiceServer;
use consent_proto::v1::retention_service_server::RetentionServiceServer;
use consent_proto::v1::subject_rights_service_server::SubjectRightsServiceServer;
use consent_store::Store;
use std::path::Path;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::auth::{AuthGate, Authenticator};
use crate::config::{AuthMode, Config, LimitsConfig};
use crate::gate::{GateLayer, InFlight};
use crate::ledger::Ledger;
use crate::listener::ConnectionLimits;
use crate::metrics::Metrics;
use crate::observe::ObserveLayer;
use crate::ops_http::Readiness;
use crate::request_bounds::RequestBounds;
use crate::retention::Retention;
use crate::service::Api;
use crate::sweeper::{SweepReport, Sweeper};
use crate::watch::FeedControl;

/// Reflection over every file a client may need: the API, the error details, health.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(consent_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(consent_proto::ERROR_DETAILS_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// What the server needs beyond the store: how callers authenticate, and TLS.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// `none` (single `default` tenant) or `api_key`.
    pub auth_mode: AuthMode,
    /// How long a cached API key is trusted.
    pub key_cache_ttl: Duration,
    /// TLS (and client verification) when set; plaintext otherwise.
    pub tls: Option<ServerTlsConfig>,
    /// Request limits.
    pub limits: LimitsConfig,
    /// `retention.overdue_grace_secs`.
    pub overdue_grace_secs: i64,
    /// Where "now" comes from for retention (the system clock; tests move a manual one).
    pub clock: Arc<dyn Clock>,
    /// `retention.sweep_interval_secs` (0: no sweeper).
    pub sweep_interval_secs: u64,
    /// A change asks the sweeper for a run now (tests, instead of waiting an interval).
    pub sweep_requests: Option<tokio::sync::watch::Receiver<u64>>,
    /// Where each sweeper run reports what it did (tests).
    pub sweep_reports:
        Option<tokio::sync::mpsc::UnboundedSender<consent_core::Result<SweepReport>>>,
    /// Where RPCs, decisions and refusals are counted (`Metrics::disabled()` records
    /// nothing).
    pub metrics: Arc<Metrics>,
    /// Told when shutdown begins, before anything stops (`/readyz` reads it).
    pub readiness: Arc<Readiness>,
    /// `server.drain_delay_secs`: between the shutdown signal (readiness false) and the
    /// drain.
    pub drain_delay: Duration,
    /// Which requests' spans are exported (`OTEL_TRACES_SAMPLER`).
    pub sampler: crate::telemetry::SamplerSettings,
}

fn read_pem(setting: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read {setting} {}: {e}", path.display()))
}

impl ServerSettings {
    /// The settings a configuration asks for, reading the TLS files it names.
    pub fn from_config(config: &Config) -> anyhow::Result<ServerSettings> {
        let tls = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => {
                let identity =
                    Identity::from_pem(read_pem("tls.cert", cert)?, read_pem("tls.key", key)?);
                let mut tls = ServerTlsConfig::new().identity(identity);
                if let Some(ca) = &config.tls.client_ca {
                    tls = tls.client_ca_root(Certificate::from_pem(read_pem("tls.client_ca", ca)?));
                }
                Some(tls)
            }
            _ => None,
        };
        Ok(ServerSettings {
            auth_mode: config.auth.mode,
            key_cache_ttl: Duration::from_secs(config.auth.key_cache_ttl_secs),
            tls,
            limits: config.limits.clone(),
            overdue_grace_secs: i64::try_from(config.retention.overdue_grace_secs)
                .unwrap_or(i64::MAX),
            clock: Arc::new(SystemClock),
            sweep_interval_secs: config.retention.sweep_interval_secs,
            sweep_requests: None,
            sweep_reports: None,
            metrics: Metrics::disabled(),
            readiness: Arc::default(),
            drain_delay: Duration::from_secs(config.server.drain_delay_secs),
            sampler: crate::telemetry::SamplerSettings::default(),
        })
    }

    /// Plaintext settings with the given auth mode, the default key cache TTL and overdue
    /// grace, the system clock, and no sweeper (a background writer would make the ledgers
    /// of tests and benchmarks depend on the hour; they turn it on explicitly).
    pub fn with_auth(auth_mode: AuthMode) -> ServerSettings {
        let defaults = Config::default();
        ServerSettings {
            auth_mode,
            key_cache_ttl: Duration::from_secs(defaults.auth.key_cache_ttl_secs),
            overdue_grace_secs: i64::try_from(defaults.retention.overdue_grace_secs)
                .unwrap_or(i64::MAX),
            clock: Arc::new(SystemClock),
            sweep_interval_secs: 0,
            sweep_requests: None,
            sweep_reports: None,
            tls: None,
            limits: LimitsConfig::default(),
            metrics: Metrics::disabled(),
            readiness: Arc::default(),
            drain_delay: Duration::ZERO,
            sampler: crate::telemetry::SamplerSettings::default(),
        }
    }
}

/// The HTTP/2 header list size past which streams are refused before any handler: far above
/// `limits.max_metadata_bytes`, so oversized metadata gets its gRPC answer, yet bounded
/// (each stream's headers are held in memory while they arrive).
pub fn header_list_ceiling(max_metadata_bytes: u32) -> u32 {
    max_metadata_bytes.saturating_mul(4).max(256 * 1024)
}

/// Serves the API on `listener` until `shutdown` resolves, then lets in-flight RPCs finish.
pub async fn serve(
    settings: ServerSettings,
    store: Arc<dyn Store>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let access: Arc<dyn consent_store::AccessStore> = store.clone();
    let metrics = Arc::clone(&settings.metrics);
    let auth = Arc::new(
        Authenticator::new(
            settings.auth_mode,
            access,
            settings.key_cache_ttl,
            &settings.limits,
        )
        .with_metrics(Arc::clone(&metrics)),
    );
    let limits = settings.limits.clone();
    let max_message = limits.max_message_bytes;
    let (stopping, shutdown_signal) = tokio::sync::watch::channel(false);
    let feeds = FeedControl::new(
        Duration::from_secs(limits.watch_stall_secs),
        shutdown_signal,
        limits.max_watches,
        limits.max_watches_per_tenant,
    );
    let open_feeds = Arc::clone(&feeds.open);
    metrics.observe_gauge(
        "consent.watch.subscribers",
        "Watch streams open on this replica",
        "{stream}",
        move || {
            vec![(
                i64::try_from(open_feeds.total()).unwrap_or(i64::MAX),
                Vec::new(),
            )]
        },
    );
    let mut stopped = stopping.subscribe();
    let sweeper_stop = stopping.subscribe();
    let (health, health_service) = tonic_health::server::health_reporter();
    let health_on_stop = health.clone();
    let readiness = Arc::clone(&settings.readiness);
    let drain_delay = settings.drain_delay;
    let shutdown = async move {
        shutdown.await;
        // Readiness goes first: load balancers stop sending new calls here while the
        // calls already sent are still answered.
        readiness.start_draining();
        set_health(&health_on_stop, false).await;
        if !drain_delay.is_zero() {
            tracing::info!(
                drain_delay_secs = drain_delay.as_secs(),
                "not ready; serving on until the drain delay ends"
            );
            tokio::time::sleep(drain_delay).await;
        }
        // Watch streams end first, or they would hold the graceful shutdown open.
        let _ = stopping.send(true);
    };
    let in_flight = Arc::new(InFlight::default());
    let retention = Retention::new(
        Arc::clone(&store),
        Arc::clone(&settings.clock),
        settings.overdue_grace_secs,
    );
    let sweeper = (settings.sweep_interval_secs > 0).then(|| {
        Sweeper::new(
            Arc::clone(&store),
            Arc::clone(&settings.clock),
            i64::try_from(settings.sweep_interval_secs).unwrap_or(i64::MAX),
            settings.overdue_grace_secs,
        )
        .observed(Arc::clone(&metrics))
        .spawn(
            settings.sweep_requests.clone(),
            settings.sweep_reports.clone(),
            sweeper_stop,
        )
    });
    let api = Api::new(
        Ledger::new(store),
        retention,
        Arc::clone(&auth),
        feeds,
        max_message,
        Arc::clone(&metrics),
    );
    set_health(&health, true).await;

    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let mut builder = Server::builder();
    if let Some(tls) = settings.tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| anyhow::anyhow!("invalid TLS configuration: {e}"))?;
    }
    let serving = builder
        .timeout(Duration::from_secs(limits.request_timeout_secs))
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(Duration::from_secs(limits.keepalive_interval_secs)))
        .http2_keepalive_timeout(Some(Duration::from_secs(limits.keepalive_timeout_secs)))
        // HTTP/2 refuses absurd header lists outright (HTTP 431, which clients read as
        // UNKNOWN); up to that ceiling the auth layer answers RESOURCE_EXHAUSTED naming
        // limits.max_metadata_bytes.
        .http2_max_header_list_size(header_list_ceiling(limits.max_metadata_bytes))
        // Outermost, so refusals by the gates below are traced and measured too.
        .layer(ObserveLayer::new(Arc::clone(&metrics), settings.sampler))
        .layer(
            GateLayer::new(AuthGate::new(auth, limits.max_metadata_bytes as usize))
                .counting(Arc::clone(&in_flight)),
        )
        // After authentication: only authorised bodies are read ahead of the decoder.
        .layer(GateLayer::new(RequestBounds::new(max_message)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            ConsentServiceServer::new(api.clone())
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            CatalogServiceServer::new(api.clone())
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            SubjectRightsServiceServer::new(api.clone())
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            RetentionServiceServer::new(api.clone())
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            IdentityServiceServer::new(api.clone())
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            AdminServiceServer::new(api)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .serve_with_incoming_shutdown(
            crate::listener::incoming(
                listener,
                ConnectionLimits {
                    max_connections: limits.max_connections,
                    handshake_timeout: Duration::from_secs(limits.handshake_timeout_secs),
                },
            ),
            shutdown,
        );
    tokio::pin!(serving);
    // The sweeper stops with the server, whichever way serving ends.
    let _sweeper = sweeper.map(AbortOnDrop);
    tokio::select! {
        served = &mut serving => served?,
        () = async {
            let _ = stopped.wait_for(|stopping| *stopping).await;
            // Every unary RPC answered: what remains are streams, which were told to end.
            // A reader that stalled cannot take their last message, and would hold the
            // drain open for the whole grace period; give them a moment, then close.
            in_flight.idle().await;
            tokio::time::sleep(STREAM_FLUSH).await;
        } => {
            tracing::info!("in-flight RPCs answered; remaining streams closed");
        }
    }
    Ok(())
}

/// Sets every service's `grpc.health.v1` status, and the server's as a whole (`""`).
async fn set_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    for service in [
        "",
        <ConsentServiceServer<Api> as tonic::server::NamedService>::NAME,
        <CatalogServiceServer<Api> as tonic::server::NamedService>::NAME,
        <AdminServiceServer<Api> as tonic::server::NamedService>::NAME,
        <RetentionServiceServer<Api> as tonic::server::NamedService>::NAME,
        <SubjectRightsServiceServer<Api> as tonic::server::NamedService>::NAME,
        <IdentityServiceServer<Api> as tonic::server::NamedService>::NAME,
    ] {
        health.set_service_status(service, status).await;
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long streams get to send their last messages once every unary RPC is answered.
const STREAM_FLUSH: Duration = Duration::from_secs(1);
