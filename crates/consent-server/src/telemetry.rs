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

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::Serialize;
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OtlpSettings {
    /// Spans go to the OTLP endpoint.
    pub traces: bool,
    /// Metrics go to the OTLP endpoint (besides `/metrics`).
    pub metrics: bool,
    /// The endpoint named, credentials hidden (for the start-up log).
    pub endpoint: Option<String>,
    /// `OTEL_SERVICE_NAME`, or `consentd`.
    pub service_name: String,
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
                    "{name} is set, but consentd does not read it: unset it (OTLP goes over plaintext gRPC or server-verified TLS, and logs are not exported)"
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
        let traces_wanted = exporter_on("OTEL_TRACES_EXPORTER")?;
        let metrics_wanted = exporter_on("OTEL_METRICS_EXPORTER")?;
        if let Some(sampler) = get("OTEL_TRACES_SAMPLER") {
            if !SAMPLERS.contains(&sampler.as_str()) {
                anyhow::bail!(
                    "OTEL_TRACES_SAMPLER = {sampler:?} is not one of {}",
                    SAMPLERS.join(", ")
                );
            }
            if sampler.ends_with("traceidratio") {
                let ratio = get("OTEL_TRACES_SAMPLER_ARG").and_then(|a| a.parse::<f64>().ok());
                if !ratio.is_some_and(|r| (0.0..=1.0).contains(&r)) {
                    anyhow::bail!(
                        "OTEL_TRACES_SAMPLER = {sampler} needs OTEL_TRACES_SAMPLER_ARG, a ratio from 0 to 1"
                    );
                }
            }
        }
        let shared = get("OTEL_EXPORTER_OTLP_ENDPOINT");
        let traces_endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or(shared.clone());
        let metrics_endpoint = get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").or(shared.clone());
        if traces_endpoint.is_none() && metrics_endpoint.is_none() {
            for name in ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_INSECURE"] {
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
            let flushed = tokio::task::spawn_blocking(move || tracer.shutdown()).await;
            if let Ok(Err(e)) = flushed {
                tracing::warn!(error = %e, "could not send the last spans");
            }
        }
    }
}

/// Installs the global subscriber (logs on stderr; stdout is for command output) and, when
/// `OTEL_*` asks for traces, the span exporter. Must run inside the Tokio runtime (the OTLP
/// client lives on it).
pub fn init(config: &LogConfig, otlp: OtlpSettings) -> anyhow::Result<Telemetry> {
    // Incoming `traceparent` headers are read with the W3C propagator whether or not spans
    // are exported: the caller's trace id is logged either way.
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let tracer = tracer_provider(&otlp, None, None)?;
    subscriber(config, tracer.as_ref(), std::io::stderr)?
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))?;
    Ok(Telemetry { tracer, otlp })
}

/// The span pipeline `otlp` asks for (batched OTLP/gRPC export), or `None`. `endpoint`
/// replaces the one of the environment and `sampler` the one `OTEL_TRACES_SAMPLER` names
/// (the benchmark's in-process receiver and fixed sampler).
pub fn tracer_provider(
    otlp: &OtlpSettings,
    endpoint: Option<&str>,
    sampler: Option<opentelemetry_sdk::trace::Sampler>,
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
    let mut provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(otlp.resource());
    if let Some(sampler) = sampler {
        provider = provider.with_sampler(sampler);
    }
    Ok(Some(provider.build()))
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
    let spans = tracer.map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("consentd"))
            // Per span, these would read the clock at each poll (busy/idle times) and attach
            // an OpenTelemetry context at each poll: measurable on a sub-millisecond Check,
            // and nothing here reads them (parents come from the tracing span tree).
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_location(false)
            .with_threads(false)
            .with_filter(LevelFilter::INFO)
    });
    Ok(tracing_subscriber::registry().with(logs).with(spans))
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
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "could not send the last metrics");
        }
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
        ] {
            let message = refusal(&vars);
            assert!(message.contains(named), "{vars:?}: {message}");
        }
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
