//! Logs, traces and the metrics pipeline.
//!
//! Logs go through `tracing` to stderr: JSON lines in production, human-readable in a
//! terminal, filtered by `log.level`. Every RPC runs in an `rpc` span (see
//! [`crate::observe`]) whose fields, the caller's `trace_id` among them, appear on each log
//! line written inside it.
//!
//! Traces and metrics are exported over OTLP/gRPC only when the standard OpenTelemetry
//! variables ask for it ([`OtlpSettings::from_env`]); nothing leaves the process otherwise.
//! Spans reach the exporter through their own filter, so `log.level = warn` quiets the logs
//! without emptying the traces. Metrics are always readable on `/metrics`
//! ([`MetricsPipeline`]).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::Serialize;
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::{LogConfig, LogFormat};
use crate::metrics::Metrics;

/// The service name reported when `OTEL_SERVICE_NAME` does not give one.
pub const DEFAULT_SERVICE_NAME: &str = "consentd";

/// What the `OTEL_*` environment asks to export (read once at start, checked: a value this
/// build cannot honour stops the start instead of being ignored).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OtlpSettings {
    /// Spans go to the OTLP endpoint.
    pub traces: bool,
    /// Metrics go to the OTLP endpoint (besides `/metrics`).
    pub metrics: bool,
    /// The endpoint named, credentials hidden (for the start-up log).
    pub endpoint: Option<String>,
    /// `OTEL_SERVICE_NAME`, or `consentd`.
    pub service_name: String,
    /// Which requests' spans are exported (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
    pub sampler: SamplerSettings,
}

/// Which requests' spans are exported, decided per request before its span is made
/// ([`SamplerSettings::sample`]): a span that will not be exported is never handed to the
/// OpenTelemetry layer, which is most of what tracing costs a cached Check
/// (`docs/performance.md`). The SDK then keeps every span it is given.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SamplerSettings {
    /// Follow the caller's decision when its `traceparent` carries one.
    pub parent_based: bool,
    /// The share of the other requests whose spans are exported (0 to 1).
    pub root_ratio: f64,
}

impl Default for SamplerSettings {
    /// The OpenTelemetry default, `parentbased_always_on`.
    fn default() -> Self {
        SamplerSettings {
            parent_based: true,
            root_ratio: 1.0,
        }
    }
}

impl SamplerSettings {
    /// Nothing exported (no exporter): callers' traces still get a logged span.
    pub fn none() -> SamplerSettings {
        SamplerSettings {
            parent_based: false,
            root_ratio: 0.0,
        }
    }

    /// The settings `OTEL_TRACES_SAMPLER` (already checked against [`SAMPLERS`]) and its
    /// ratio name.
    fn named(sampler: &str, ratio: f64) -> SamplerSettings {
        let parent_based = sampler.starts_with("parentbased_");
        let root_ratio = match sampler.trim_start_matches("parentbased_") {
            "always_off" => 0.0,
            "traceidratio" => ratio,
            _ => 1.0,
        };
        SamplerSettings {
            parent_based,
            root_ratio,
        }
    }

    /// Whether the span of a request whose caller sent `caller` (invalid when it sent none)
    /// is exported.
    pub fn sample(&self, caller: &opentelemetry::trace::SpanContext) -> bool {
        if self.parent_based && caller.is_valid() {
            return caller.is_sampled();
        }
        if self.root_ratio >= 1.0 {
            return true;
        }
        if self.root_ratio <= 0.0 {
            return false;
        }
        draw() < self.root_ratio
    }
}

/// A uniform draw in [0, 1) from a per-thread SplitMix64 (seeded from the OS once per
/// thread; sampling needs no cryptographic quality, only no syscall per request).
fn draw() -> f64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            let _ = getrandom::fill(&mut seed);
            u64::from_le_bytes(seed) | 1
        });
    }
    STATE.with(|state| {
        let mut z = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // The top 53 bits, as a fraction.
        (z >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// Checks the form of the `OTEL_*` values the SDK would otherwise ignore or replace by a
/// default without a word: durations and sizes, headers, compression, endpoints.
fn check_formats(get: &impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    if let Some(v) = get("OTEL_SDK_DISABLED")
        && !v.eq_ignore_ascii_case("true")
        && !v.eq_ignore_ascii_case("false")
    {
        anyhow::bail!("OTEL_SDK_DISABLED = {v:?}: set true or false");
    }
    for name in [
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
        "OTEL_METRIC_EXPORT_INTERVAL",
        "OTEL_METRIC_EXPORT_TIMEOUT",
        "OTEL_BSP_SCHEDULE_DELAY",
        "OTEL_BSP_EXPORT_TIMEOUT",
        "OTEL_BSP_MAX_QUEUE_SIZE",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    ] {
        if let Some(v) = get(name)
            && !v.parse::<u64>().is_ok_and(|n| n > 0)
        {
            anyhow::bail!(
                "{name} = {v:?}: set a whole number above 0 (milliseconds, or spans for the sizes)"
            );
        }
    }
    for name in [
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
    ] {
        if let Some(v) = get(name)
            && v != "none"
        {
            anyhow::bail!("{name} = {v:?}: consentd sends OTLP uncompressed; set none or unset it");
        }
    }
    for name in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    ] {
        // The values are often credentials: the message names the variable only. A header
        // the exporter cannot send would be left out of every export without a word.
        if let Some(v) = get(name)
            && !v.split(',').all(|pair| {
                pair.split_once('=').is_some_and(|(key, value)| {
                    http::HeaderName::from_bytes(key.trim().as_bytes()).is_ok()
                        && http::HeaderValue::from_str(value.trim()).is_ok()
                })
            })
        {
            anyhow::bail!(
                "{name} is not a list of key=value pairs separated by commas, with header names and values HTTP allows"
            );
        }
    }
    for name in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ] {
        if let Some(v) = get(name) {
            let uri = v.parse::<http::Uri>().ok();
            let scheme = uri.as_ref().and_then(|u| u.scheme_str().map(str::to_owned));
            // A port that does not fit 16 bits parses, and every export would then fail.
            let has_host = uri.as_ref().is_some_and(|u| {
                u.host().is_some()
                    && u.authority()
                        .is_none_or(|a| match a.as_str().rsplit_once(':') {
                            Some((_, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
                                port.parse::<u16>().is_ok()
                            }
                            _ => true,
                        })
            });
            match scheme.as_deref() {
                Some("http") if has_host => {}
                Some("https") => anyhow::bail!(
                    "{name}: consentd exports OTLP over plaintext gRPC only; use an http:// endpoint (a collector beside it: a sidecar or node agent)"
                ),
                _ => anyhow::bail!(
                    "{name} = {:?} is not an http:// URL with a host, e.g. http://otel-collector:4317",
                    consent_core::redact::redact_url(&v)
                ),
            }
        }
    }
    Ok(())
}

/// Samplers the SDK understands in `OTEL_TRACES_SAMPLER`.
const SAMPLERS: &[&str] = &[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

/// Variables of the OTLP specification this build does not read: set, they would be
/// silently ignored, so they are refused.
const UNSUPPORTED: &[&str] = &[
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
    "OTEL_LOGS_EXPORTER",
];

impl OtlpSettings {
    /// Reads the process environment.
    pub fn from_env() -> anyhow::Result<OtlpSettings> {
        let get = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        // An endpoint may carry credentials: no text this process prints shows them.
        for name in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        ] {
            if let Some(url) = get(name) {
                consent_core::redact::register_secrets_of(&url);
            }
        }
        OtlpSettings::from_lookup(get)
    }

    /// Reads the variables through `get` (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<OtlpSettings> {
        let service_name = get("OTEL_SERVICE_NAME").unwrap_or_else(|| DEFAULT_SERVICE_NAME.into());
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(OtlpSettings {
                service_name,
                ..OtlpSettings::default()
            });
        }
        for name in UNSUPPORTED {
            if get(name).is_some() {
                anyhow::bail!(
                    "{name} is set, but consentd does not read it: unset it (OTLP goes over plaintext gRPC to a collector, and logs are not exported)"
                );
            }
        }
        for name in [
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        ] {
            if let Some(protocol) = get(name)
                && protocol != "grpc"
            {
                anyhow::bail!(
                    "{name} = {protocol:?}: consentd exports OTLP over gRPC only; set it to grpc or unset it"
                );
            }
        }
        let exporter_on = |name: &str| -> anyhow::Result<bool> {
            match get(name).as_deref() {
                None | Some("otlp") => Ok(true),
                Some("none") => Ok(false),
                Some(other) => anyhow::bail!(
                    "{name} = {other:?}: consentd exports over OTLP only; set it to otlp or none"
                ),
            }
        };
        check_formats(&get)?;
        let traces_wanted = exporter_on("OTEL_TRACES_EXPORTER")?;
        let metrics_wanted = exporter_on("OTEL_METRICS_EXPORTER")?;
        let mut sampling = SamplerSettings::default();
        if let Some(sampler) = get("OTEL_TRACES_SAMPLER") {
            if !SAMPLERS.contains(&sampler.as_str()) {
                anyhow::bail!(
                    "OTEL_TRACES_SAMPLER = {sampler:?} is not one of {}",
                    SAMPLERS.join(", ")
                );
            }
            let ratio = get("OTEL_TRACES_SAMPLER_ARG").and_then(|a| a.parse::<f64>().ok());
            if sampler.ends_with("traceidratio") && !ratio.is_some_and(|r| (0.0..=1.0).contains(&r))
            {
                anyhow::bail!(
                    "OTEL_TRACES_SAMPLER = {sampler} needs OTEL_TRACES_SAMPLER_ARG, a ratio from 0 to 1"
                );
            }
            sampling = SamplerSettings::named(&sampler, ratio.unwrap_or(1.0));
        }
        let shared = get("OTEL_EXPORTER_OTLP_ENDPOINT");
        let traces_endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or(shared.clone());
        let metrics_endpoint = get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").or(shared.clone());
        if traces_endpoint.is_none() && metrics_endpoint.is_none() {
            for name in [
                "OTEL_EXPORTER_OTLP_HEADERS",
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
                "OTEL_EXPORTER_OTLP_INSECURE",
            ] {
                if get(name).is_some() {
                    anyhow::bail!(
                        "{name} is set but no OTLP endpoint is: set OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://otel-collector:4317) or unset {name}"
                    );
                }
            }
        }
        let endpoint = traces_endpoint
            .as_deref()
            .or(metrics_endpoint.as_deref())
            .map(consent_core::redact::redact_url);
        Ok(OtlpSettings {
            traces: traces_wanted && traces_endpoint.is_some(),
            metrics: metrics_wanted && metrics_endpoint.is_some(),
            endpoint,
            service_name,
            sampler: sampling,
        })
    }

    fn resource(&self) -> Resource {
        Resource::builder()
            .with_service_name(self.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build()
    }
}

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes the spans not yet sent.
#[derive(Debug)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    /// What the environment asked for.
    pub otlp: OtlpSettings,
}

impl Telemetry {
    /// Sends the spans still queued (called once the server has stopped).
    pub async fn shutdown(self) {
        if let Some(tracer) = self.tracer {
            // The SDK's shutdown blocks until its export thread is done.
            flush_within("spans", move || tracer.shutdown()).await;
        }
    }
}

/// The longest a stopping process waits for each last export (metrics, then spans): a
/// collector that does not answer must not hold the exit (the SDK would wait its export
/// timeout, 10 s by default).
const FLUSH_LIMIT: Duration = Duration::from_secs(1);

/// Runs an SDK shutdown (blocking) for at most [`FLUSH_LIMIT`].
async fn flush_within(
    what: &str,
    shutdown: impl FnOnce() -> opentelemetry_sdk::error::OTelSdkResult + Send + 'static,
) {
    match tokio::time::timeout(FLUSH_LIMIT, tokio::task::spawn_blocking(shutdown)).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "could not send the last {what}"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the {what} exporter failed"),
        Err(_) => tracing::warn!(
            limit_secs = FLUSH_LIMIT.as_secs(),
            "the last {what} were not sent in time (is the OTLP collector answering?); exiting without them"
        ),
    }
}

/// Installs the global subscriber (logs on stderr; stdout is for command output) and, when
/// `OTEL_*` asks for traces, the span exporter. Must run inside the Tokio runtime (the OTLP
/// client lives on it).
pub fn init(config: &LogConfig, otlp: OtlpSettings) -> anyhow::Result<Telemetry> {
    read_w3c_trace_context();
    let tracer = tracer_provider(&otlp, None)?;
    subscriber(config, tracer.as_ref(), std::io::stderr)?
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))?;
    Ok(Telemetry { tracer, otlp })
}

/// Incoming `traceparent` headers are read with the W3C propagator ([`crate::observe`]),
/// whether or not spans are exported: the caller's trace id is logged either way.
pub fn read_w3c_trace_context() {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
}

/// The span pipeline `otlp` asks for (batched OTLP/gRPC export), or `None`. `endpoint`
/// replaces the one of the environment (the benchmark's in-process receiver). The SDK keeps
/// every span it is given: requests are sampled before their span is made
/// ([`SamplerSettings::sample`]), and other spans reach it only inside a sampled request.
pub fn tracer_provider(
    otlp: &OtlpSettings,
    endpoint: Option<&str>,
) -> anyhow::Result<Option<SdkTracerProvider>> {
    if !otlp.traces && endpoint.is_none() {
        return Ok(None);
    }
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(endpoint) = endpoint {
        use opentelemetry_otlp::WithExportConfig as _;
        exporter = exporter.with_endpoint(endpoint);
    }
    let exporter = exporter
        .build()
        .map_err(|e| anyhow::anyhow!("cannot set up the OTLP span exporter: {e}"))?;
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
            .with_resource(otlp.resource())
            .build(),
    ))
}

/// The subscriber of `consentd`: log lines to `writer` filtered by `log.level` (JSON or
/// human-readable), and spans to `tracer` (when given) through their own `info` filter.
pub fn subscriber<W>(
    config: &LogConfig,
    tracer: Option<&SdkTracerProvider>,
    writer: W,
) -> anyhow::Result<impl tracing::Subscriber + Send + Sync + 'static>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(&config.level)
        .map_err(|e| anyhow::anyhow!("log.level `{}` is not a valid filter: {e}", config.level))?;
    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    // The most verbose level a layer takes: the subscriber-wide filter below passes no more,
    // so callsites no layer wants (h2's many `trace` ones) stay off for good.
    let wanted = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);
    let wanted = if tracer.is_some() {
        wanted.max(LevelFilter::INFO)
    } else {
        wanted
    };
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(writer)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_filter(filter)
            .boxed()
    };
    // A Vec, not an Option: a `None` layer made every span enabled (tracing-subscriber
    // 0.3.23 lets an absent layer take what the filtered ones refuse), so without an
    // exporter each quiet request got a span in the log layer (test below).
    let mut layers = vec![logs];
    if let Some(provider) = tracer {
        let spans = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("consentd"))
            // Per span, these would read the clock at each poll (busy/idle times) and attach
            // an OpenTelemetry context at each poll: measurable on a sub-millisecond Check,
            // and nothing here reads them (parents come from the tracing span tree).
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_location(false)
            .with_threads(false)
            .with_filter(LevelFilter::INFO.and(exported()))
            .boxed();
        layers.push(spans);
    }
    // The quiet target is refused by a filter of the whole subscriber, not by the layers'
    // own filters: with them alone, a span whose callsite asks at each call (another
    // dispatcher exists, as in the benchmark) was still made (test below).
    Ok(tracing_subscriber::registry()
        .with(never(&[QUIET_RPC_TARGET]).with_default(wanted))
        .with(layers))
}

/// The target of the span of a request whose span is exported ([`crate::observe`]); log
/// lines written inside it carry it (the method and the trace id).
pub const RPC_TARGET: &str = "consent_server::rpc";
/// The target of the span of a request not exported whose caller sent a trace: only the log
/// layer sees it, so log lines carry the caller's trace id.
pub const LOGGED_RPC_TARGET: &str = "consent_server::rpc::logged";
/// The target of the span of any other request: no layer takes it, so it costs nothing (a
/// span made only to be formatted for log lines that are almost never written was most of
/// what telemetry cost a cached Check). Log lines inside such a request carry their own
/// fields only.
pub const QUIET_RPC_TARGET: &str = "consent_server::rpc::quiet";

/// Targets a layer never takes (decided once per callsite, not per span).
fn never(targets: &[&str]) -> tracing_subscriber::filter::Targets {
    targets.iter().fold(
        tracing_subscriber::filter::Targets::new().with_default(LevelFilter::TRACE),
        |filter, target| filter.with_target(*target, LevelFilter::OFF),
    )
}

/// What reaches the OpenTelemetry layer: sampled request spans, and spans and events inside
/// one (the store's, Redis's). Nothing inside an unsampled request, nothing outside any
/// request (the sweeper's store calls): those would become traces of their own.
fn exported<S>() -> impl tracing_subscriber::layer::Filter<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    never(&[LOGGED_RPC_TARGET, QUIET_RPC_TARGET]).and(
        tracing_subscriber::filter::dynamic_filter_fn(|meta, cx| {
            // The context seen by a layer's filter holds only the spans that filter enabled.
            meta.target() == RPC_TARGET || cx.lookup_current().is_some()
        }),
    )
}

/// The metric instruments, the registry `/metrics` renders, and the OTLP push when asked.
pub struct MetricsPipeline {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
    /// The instruments.
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for MetricsPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsPipeline").finish_non_exhaustive()
    }
}

impl MetricsPipeline {
    /// A pipeline read by `/metrics` and, when `otlp.metrics`, pushed over OTLP (every
    /// `OTEL_METRIC_EXPORT_INTERVAL` ms, 60 s by default).
    pub fn start(otlp: &OtlpSettings, max_tenant_labels: usize) -> anyhow::Result<MetricsPipeline> {
        let registry = prometheus::Registry::new();
        let prometheus = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()
            .map_err(|e| anyhow::anyhow!("cannot set up the Prometheus exporter: {e}"))?;
        let mut builder = SdkMeterProvider::builder()
            .with_reader(prometheus)
            .with_resource(otlp.resource());
        if otlp.metrics {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .build()
                .map_err(|e| anyhow::anyhow!("cannot set up the OTLP metric exporter: {e}"))?;
            builder = builder.with_periodic_exporter(exporter);
        }
        let provider = builder.build();
        let metrics = Metrics::new(&provider, max_tenant_labels);
        Ok(MetricsPipeline {
            provider,
            registry,
            metrics,
        })
    }

    /// Every series, in the Prometheus text exposition format.
    pub fn render(&self) -> anyhow::Result<String> {
        use prometheus::Encoder as _;
        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut text)
            .map_err(|e| anyhow::anyhow!("cannot encode the metrics: {e}"))?;
        String::from_utf8(text).map_err(|e| anyhow::anyhow!("metrics are not UTF-8: {e}"))
    }

    /// Pushes the last OTLP export (when configured).
    pub async fn shutdown(self) {
        let provider = self.provider;
        flush_within("metrics", move || provider.shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(vars: &[(&str, &str)]) -> anyhow::Result<OtlpSettings> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        OtlpSettings::from_lookup(|k| map.get(k).cloned())
    }

    fn refusal(vars: &[(&str, &str)]) -> String {
        read(vars).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn nothing_is_exported_unless_an_endpoint_is_named() -> anyhow::Result<()> {
        let none = read(&[("OTEL_SERVICE_NAME", "consent-eu")])?;
        assert!(!none.traces && !none.metrics);
        assert_eq!(none.service_name, "consent-eu");
        let both = read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")])?;
        assert!(both.traces && both.metrics);
        assert_eq!(both.service_name, DEFAULT_SERVICE_NAME);
        let traces = read(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ])?;
        assert!(traces.traces && !traces.metrics);
        let off = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_SDK_DISABLED", "true"),
        ])?;
        assert!(!off.traces && !off.metrics);
        Ok(())
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        for (vars, named) in [
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                vec![("OTEL_TRACES_EXPORTER", "zipkin")],
                "OTEL_TRACES_EXPORTER",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_HEADERS", "api-key=x")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                vec![("OTEL_TRACES_SAMPLER", "traceidratio")],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (
                vec![("OTEL_TRACES_SAMPLER", "sometimes")],
                "OTEL_TRACES_SAMPLER",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_CERTIFICATE", "/ca.pem")],
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317")],
                "plaintext",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "garbage")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_TIMEOUT", "abc")],
                "OTEL_EXPORTER_OTLP_TIMEOUT",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli")],
                "OTEL_EXPORTER_OTLP_COMPRESSION",
            ),
            (
                vec![("OTEL_METRIC_EXPORT_INTERVAL", "0")],
                "OTEL_METRIC_EXPORT_INTERVAL",
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                    ("OTEL_EXPORTER_OTLP_HEADERS", "api-key"),
                ],
                "key=value",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "a=b")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (vec![("OTEL_SDK_DISABLED", "maybe")], "OTEL_SDK_DISABLED"),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:99999")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                    ("OTEL_EXPORTER_OTLP_HEADERS", "api key=x"),
                ],
                "header names",
            ),
        ] {
            let message = refusal(&vars);
            assert!(message.contains(named), "{vars:?}: {message}");
        }
    }

    #[test]
    fn requests_are_sampled_as_the_sampler_says() -> anyhow::Result<()> {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        let caller = |sampled: bool| {
            SpanContext::new(
                TraceId::from(7u128),
                SpanId::from(9u64),
                if sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
                true,
                TraceState::default(),
            )
        };
        let none = SpanContext::empty_context();
        let default = read(&[])?.sampler;
        assert!(default.sample(&none) && default.sample(&caller(true)));
        assert!(!default.sample(&caller(false)), "the caller said no");
        let ratio = read(&[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ])?
        .sampler;
        assert!(ratio.sample(&caller(true)));
        let kept = (0..4000).filter(|_| ratio.sample(&none)).count();
        assert!((700..1300).contains(&kept), "{kept} of 4000 at 0.25");
        let off = read(&[("OTEL_TRACES_SAMPLER", "always_off")])?.sampler;
        assert!(!off.sample(&caller(true)) && !off.sample(&none));
        let on = read(&[("OTEL_TRACES_SAMPLER", "always_on")])?.sampler;
        assert!(on.sample(&caller(false)), "not parent-based");
        Ok(())
    }

    #[test]
    fn the_logged_endpoint_hides_credentials() -> anyhow::Result<()> {
        let shown = read(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://user:otel-secret@collector:4317",
        )])?;
        let endpoint = shown.endpoint.unwrap_or_default();
        assert!(
            !endpoint.contains("otel-secret") && endpoint.contains("collector:4317"),
            "{endpoint}"
        );
        Ok(())
    }
}

#[cfg(test)]
mod span_tests {
    use super::*;

    /// Whether a span of each rpc target is made under `subscriber` (the thread's default).
    /// A second dispatcher interested in `info` exists, so `tracing` asks the thread's
    /// dispatcher at each span instead of deciding once per callsite: the decision then does
    /// not depend on which dispatchers other tests of this binary made.
    fn made(tracer: Option<&SdkTracerProvider>) -> anyhow::Result<[bool; 3]> {
        let log = LogConfig {
            level: "info".into(),
            format: LogFormat::Json,
        };
        let dispatch = tracing::Dispatch::new(subscriber(&log, tracer, std::io::sink)?);
        let _another = tracing::Dispatch::new(tracing_subscriber::layer::SubscriberExt::with(
            tracing_subscriber::registry(),
            LevelFilter::INFO,
        ));
        tracing::callsite::rebuild_interest_cache();
        Ok(tracing::dispatcher::with_default(&dispatch, || {
            [
                !tracing::info_span!(target: RPC_TARGET, "rpc").is_disabled(),
                !tracing::info_span!(target: LOGGED_RPC_TARGET, "rpc").is_disabled(),
                !tracing::info_span!(target: QUIET_RPC_TARGET, "rpc").is_disabled(),
            ]
        }))
    }

    #[test]
    fn a_quiet_request_makes_no_span_with_or_without_an_exporter() -> anyhow::Result<()> {
        let tracer = SdkTracerProvider::builder().build();
        assert_eq!(made(Some(&tracer))?, [true, true, false]);
        assert_eq!(made(None)?, [true, true, false]);
        Ok(())
    }
}
