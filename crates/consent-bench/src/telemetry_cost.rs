//! What production telemetry costs the cached Check: two servers on the same ledger, each on
//! its own runtime (two worker threads) so that only one of them is observed, measured in
//! alternating rounds. The observed one runs what `consentd serve` runs with an OTLP
//! endpoint: the `rpc` span and its children through the JSON log layer (at `info`, writing
//! to a sink) and the OpenTelemetry layer (batched OTLP/gRPC export to a receiver in this
//! process) with the Helm chart's sampler (the callers' sampled traces, and [`SAMPLED`] of
//! the rest), and the metrics instruments.
//!
//! The same comparison also runs between two `consentd` processes ([`spawn_consentd`]: this
//! binary re-run with [`AS_CONSENTD`]), each with its one global subscriber as in production,
//! one of them exporting.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use consent_server::config::{AuthMode, CacheMode, Config, LogConfig, LogFormat};
use consent_server::metrics::Metrics;
use consent_server::server::ServerSettings;
use consent_server::telemetry::{MetricsPipeline, OtlpSettings, SamplerSettings};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_sdk::trace::SdkTracerProvider;

/// The share of root spans exported, as the Helm chart's `otel.samplerArg` sets it (the
/// default of `--observed-sampling`).
pub const SAMPLED: f64 = 0.05;

thread_local! {
    /// The observed runtime's threads use its subscriber (the plain one's have none).
    static SUBSCRIBER: RefCell<Option<tracing::dispatcher::DefaultGuard>> = const { RefCell::new(None) };
}

/// A `consentd` on a runtime of its own, until dropped.
pub struct Isolated {
    /// Its gRPC address.
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Isolated {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What the observed server runs (`--observed-with`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// Logs, metrics and spans, as `consentd` runs with an OTLP endpoint (the figure).
    All,
    /// As `all`, but the batch exporter drops the spans instead of sending them: what making
    /// the sampled spans costs, without encoding and sending them.
    Dropped,
    /// Logs and metrics, as `consentd` runs without an OTLP endpoint.
    NoExport,
    /// The metrics instruments only.
    Metrics,
    /// Nothing: two identical servers (the method's noise).
    Nothing,
}

/// The telemetry of the observed server, and what it exported.
pub struct Telemetry {
    dispatch: Option<tracing::Dispatch>,
    sampler: SamplerSettings,
    _asks_every_time: tracing::Dispatch,
    metrics: Arc<Metrics>,
    tracer: Option<SdkTracerProvider>,
    _pipeline: Option<MetricsPipeline>,
    spans: Arc<AtomicU64>,
    receiver: tokio::task::JoinHandle<()>,
}

impl Telemetry {
    /// Flushes the queued spans; returns how many the receiver got in all.
    pub async fn finish(self) -> u64 {
        if let Some(tracer) = self.tracer {
            let _ = tokio::task::spawn_blocking(move || tracer.shutdown()).await;
        }
        self.receiver.abort();
        self.spans.load(Ordering::Relaxed)
    }
}

/// A span exporter that drops what it is given (the `dropped` variant).
#[derive(Debug, Default)]
struct Dropping;

impl opentelemetry_sdk::trace::SpanExporter for Dropping {
    fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        drop(batch);
        std::future::ready(Ok(()))
    }
}

/// Counts the spans it is sent.
#[derive(Clone, Default)]
struct Receiver(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP trace receiver on this runtime: its endpoint, the count of spans it got, its task.
pub async fn receiver() -> anyhow::Result<(String, Arc<AtomicU64>, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let receiver = Receiver::default();
    let spans = Arc::clone(&receiver.0);
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    Ok((endpoint, spans, task))
}

/// Production telemetry exporting to a receiver on this runtime, or the part of it that
/// `variant` names.
pub async fn production(variant: Variant, sampled: f64) -> anyhow::Result<Telemetry> {
    let (endpoint, spans, receiver) = receiver().await?;
    consent_server::telemetry::read_w3c_trace_context();
    // The chart's sampler: callers' sampled traces whole, `sampled` of the rest.
    let otlp = OtlpSettings {
        sampler: SamplerSettings {
            parent_based: true,
            root_ratio: sampled,
        },
        ..OtlpSettings::default()
    };
    let tracer = match variant {
        Variant::All => Some(
            consent_server::telemetry::tracer_provider(&otlp, Some(&endpoint))?
                .ok_or_else(|| anyhow::anyhow!("no tracer for an explicit endpoint"))?,
        ),
        Variant::Dropped => Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(Dropping)
                .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
                .build(),
        ),
        Variant::NoExport | Variant::Metrics | Variant::Nothing => None,
    };
    let log = LogConfig {
        level: "info".into(),
        format: LogFormat::Json,
    };
    let dispatch = match variant {
        Variant::All | Variant::Dropped | Variant::NoExport => Some(tracing::Dispatch::new(
            consent_server::telemetry::subscriber(&log, tracer.as_ref(), std::io::sink)?,
        )),
        Variant::Metrics | Variant::Nothing => None,
    };
    let pipeline = match variant {
        Variant::Nothing => None,
        _ => Some(MetricsPipeline::start(&otlp, 100)?),
    };
    // `tracing` caches, per callsite, one interest for all dispatchers; consentd's
    // per-layer filters can leave it at "never" when their dispatcher is only a thread's
    // default (here) rather than the global one (in consentd). A second dispatcher
    // interested in `info` and above, and current nowhere, turns that into "sometimes" for
    // those callsites: each of their spans asks its thread's dispatcher (the observed
    // threads enable it, the plain ones do not), while `debug` and `trace` callsites (h2's
    // many) stay "never", as under consentd's global subscriber.
    let asks_every_time = tracing::Dispatch::new(tracing_subscriber::layer::SubscriberExt::with(
        tracing_subscriber::registry(),
        tracing_subscriber::filter::LevelFilter::INFO,
    ));
    Ok(Telemetry {
        // As consentd: without an exporter, only callers' traces make a span.
        sampler: if tracer.is_some() {
            otlp.sampler
        } else {
            SamplerSettings::none()
        },
        _asks_every_time: asks_every_time,
        dispatch,
        metrics: pipeline
            .as_ref()
            .map_or_else(Metrics::disabled, |p| Arc::clone(&p.metrics)),
        tracer,
        _pipeline: pipeline,
        spans,
        receiver,
    })
}

/// Starts a server on `store_url` (in-process cache) on a runtime of its own, observed with
/// `telemetry` when given.
pub async fn start(store_url: &str, telemetry: Option<&Telemetry>) -> anyhow::Result<Isolated> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    if let Some(dispatch) = telemetry.and_then(|t| t.dispatch.clone()) {
        builder
            .on_thread_start(move || {
                let guard = tracing::dispatcher::set_default(&dispatch);
                SUBSCRIBER.with(|s| *s.borrow_mut() = Some(guard));
            })
            .on_thread_stop(|| SUBSCRIBER.with(|s| *s.borrow_mut() = None));
    }
    let runtime = builder.build()?;
    let mut config = Config::default();
    config.store.url = store_url.to_owned();
    config.cache.mode = CacheMode::Memory;
    config.check()?;
    let metrics = telemetry.map_or_else(Metrics::disabled, |t| Arc::clone(&t.metrics));
    let sampler = telemetry.map_or_else(SamplerSettings::default, |t| t.sampler);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound, addr) = tokio::sync::oneshot::channel();
    runtime.spawn(async move {
        let started = async {
            let stack =
                consent_server::stack::open_observed(&config, false, Arc::clone(&metrics)).await?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            anyhow::Ok((stack, listener))
        }
        .await;
        let (stack, listener) = match started {
            Ok(started) => started,
            Err(e) => {
                let _ = bound.send(Err(e));
                return;
            }
        };
        let _ = bound.send(listener.local_addr().map_err(anyhow::Error::from));
        let settings = ServerSettings {
            metrics,
            sampler,
            ..ServerSettings::with_auth(AuthMode::None)
        };
        let _ = consent_server::server::serve(settings, stack.store, listener, async move {
            let _ = stopped.await;
        })
        .await;
    });
    let addr = addr
        .await
        .map_err(|_| anyhow::anyhow!("the isolated server stopped before binding"))??;
    Ok(Isolated {
        addr,
        stop: Some(stop),
        runtime: Some(runtime),
    })
}

/// The argument that makes this binary run `consentd` instead of the bench (the processes
/// of [`spawn_consentd`]).
pub const AS_CONSENTD: &str = "as-consentd";

/// Runs `consentd` with the rest of the command line, as its own `main` does (the bench
/// binary in a child process: one global subscriber, as in production).
pub async fn run_as_consentd(args: Vec<String>) -> anyhow::Result<std::process::ExitCode> {
    let cli = <consent_server::cli::Cli as clap::Parser>::try_parse_from(
        std::iter::once("consentd".to_owned()).chain(args),
    )?;
    consent_server::cli::run(cli).await
}

/// A `consentd` process serving `store_url` (in-process cache, JSON logs at `info` to
/// nowhere, metrics), exporting spans to `otlp` with `sampled` of root spans when given.
/// Killed when dropped.
pub async fn spawn_consentd(
    store_url: &str,
    workdir: &std::path::Path,
    otlp: Option<(&str, f64)>,
) -> anyhow::Result<(tokio::process::Child, std::net::SocketAddr)> {
    use tokio::io::AsyncBufReadExt as _;
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    // The bench's own OTEL_* and CONSENT__* variables must not reach it; removed before the
    // settings below are set (a removal after them would drop them too).
    for (name, _) in std::env::vars() {
        if name.starts_with("OTEL_") || name.starts_with("CONSENT__") {
            command.env_remove(name);
        }
    }
    command
        .args([
            AS_CONSENTD,
            "--listen",
            "127.0.0.1:0",
            "--store-url",
            store_url,
        ])
        .arg("serve")
        // No consentd.toml: the settings are these.
        .current_dir(workdir)
        .env_remove("CONSENT_CONFIG")
        .env("CONSENT__CACHE__MODE", "memory")
        .env("CONSENT__HTTP__LISTEN", "127.0.0.1:0")
        .env("CONSENT__LOG__LEVEL", "info")
        .env("CONSENT__LOG__FORMAT", "json")
        .env("CONSENT__STORE__AUTO_MIGRATE", "false")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some((endpoint, sampled)) = otlp {
        command
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_METRICS_EXPORTER", "none")
            .env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
            .env("OTEL_TRACES_SAMPLER_ARG", sampled.to_string());
    }
    let mut child = command.spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout of the consentd process"))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(addr) = line.strip_prefix("consentd listening on ") {
            let addr = addr.trim().parse()?;
            // Nothing more is read: later lines (none expected) must not block the child.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok((child, addr));
        }
    }
    anyhow::bail!("the consentd process exited before listening")
}

/// Stops a [`spawn_consentd`] process as an orchestrator would (SIGTERM), so it flushes its
/// spans; killed if it has not exited within 10 s.
pub async fn stop_consentd(mut child: tokio::process::Child) -> anyhow::Result<()> {
    if let Some(pid) = child.id() {
        tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
    }
    match tokio::time::timeout(std::time::Duration::from_secs(10), child.wait()).await {
        Ok(exit) => {
            exit?;
        }
        Err(_) => child.kill().await?,
    }
    Ok(())
}
