//! The outermost layer in front of every service: one `rpc` span per request, named and
//! attributed after the OpenTelemetry RPC conventions (`rpc.system`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code`), continuing the caller's W3C trace when the request
//! carries a `traceparent`; and `rpc.server.duration` recorded when the answer ends (for a
//! stream, when its last message and status are written, or when the caller goes away).
//!
//! Inner layers and handlers run inside the span and fill in what only they know: the
//! tenant (the auth gate), the number of subjects of a batch, cache hits and misses. Store
//! and Redis calls open child spans of their own (`store`, `redis`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use opentelemetry::trace::TraceContextExt as _;
use tonic::Status;
use tonic::body::Body;
use tracing::Instrument as _;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::metrics::{Metrics, Route};
use crate::telemetry::{LOGGED_RPC_TARGET, QUIET_RPC_TARGET, RPC_TARGET, SamplerSettings};

/// Puts [`Observed`] in front of a service.
#[derive(Clone, Debug)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
    sampler: SamplerSettings,
}

impl ObserveLayer {
    /// Records into `metrics`; exports the spans of the requests `sampler` picks.
    pub fn new(metrics: Arc<Metrics>, sampler: SamplerSettings) -> ObserveLayer {
        ObserveLayer { metrics, sampler }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observed<S>;
    fn layer(&self, inner: S) -> Observed<S> {
        Observed {
            inner,
            metrics: Arc::clone(&self.metrics),
            sampler: self.sampler,
        }
    }
}

/// A service whose requests are traced and measured.
#[derive(Clone, Debug)]
pub struct Observed<S> {
    inner: S,
    metrics: Arc<Metrics>,
    sampler: SamplerSettings,
}

/// Reads W3C trace context from request headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    /// A header sent twice is ignored (W3C trace context: two `traceparent`s are no trace).
    fn get(&self, key: &str) -> Option<&str> {
        let mut values = self.0.get_all(key).iter();
        let first = values.next()?;
        if values.next().is_some() {
            return None;
        }
        first.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The span of one request, its parent taken from the request's `traceparent`.
///
/// Only what log lines need is a `tracing` field (the span name and the trace id): the log
/// layer formats fields eagerly, on creation and again on every record (re-reading its
/// JSON), which costs a measurable share of a cached Check. The OpenTelemetry attributes go
/// to the span directly ([`OpenTelemetrySpanExt::set_attribute`], a no-op when nothing is
/// exported), the tenant among them.
fn rpc_span(route: &Route, headers: &http::HeaderMap, sampler: &SamplerSettings) -> tracing::Span {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    let caller = parent.span().span_context().clone();
    // Three callsites, one per audience (see the targets in `telemetry`): exported (and
    // logged), logged only (the caller's trace id, not exported), or taken by no layer.
    macro_rules! rpc {
        ($target:expr) => {
            tracing::info_span!(
                target: $target,
                "rpc",
                otel.name = route.name,
                otel.kind = "server",
                trace_id = Empty,
            )
        };
    }
    let span = if sampler.sample(&caller) {
        rpc!(RPC_TARGET)
    } else if caller.is_valid() {
        rpc!(LOGGED_RPC_TARGET)
    } else {
        rpc!(QUIET_RPC_TARGET)
    };
    if span.is_disabled() {
        return span;
    }
    span.set_attribute("rpc.system", "grpc");
    span.set_attribute("rpc.service", route.service);
    span.set_attribute("rpc.method", route.method);
    // Without an exporter there is no OpenTelemetry layer and this does nothing; the
    // caller's trace id is still logged below.
    let _ = span.set_parent(parent);
    // The caller's trace, or this span's own when it is exported: an id no exported span
    // carries would correlate nothing.
    let trace_id = if caller.is_valid() {
        Some(caller.trace_id())
    } else {
        let own = span.context().span().span_context().clone();
        own.is_sampled().then(|| own.trace_id())
    };
    if let Some(trace_id) = trace_id {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    span
}

/// Sets an OpenTelemetry attribute on the request's span (the current one): what handlers
/// and layers below know, such as the number of subjects of a batch.
pub fn note(key: &'static str, value: i64) {
    tracing::Span::current().set_attribute(key, value);
}

impl<S> tower::Service<http::Request<Body>> for Observed<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let started = Instant::now();
        let route = Route::of(request.uri().path());
        let span = rpc_span(&route, request.headers(), &self.sampler);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = Arc::clone(&self.metrics);
        Box::pin(async move {
            let mut finish = Finish {
                metrics,
                route,
                started,
                span: span.clone(),
                code: None,
                ended: false,
            };
            let response = inner.call(request).instrument(span).await?;
            // A trailers-only answer (most errors) has its status in the headers.
            finish.code = grpc_status(response.headers());
            let (parts, body) = response.into_parts();
            Ok(http::Response::from_parts(
                parts,
                Body::new(ObservedBody {
                    inner: body,
                    finish,
                }),
            ))
        })
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Records the request when its answer is over (dropped: the caller went away).
struct Finish {
    metrics: Arc<Metrics>,
    route: Route,
    started: Instant,
    span: tracing::Span,
    code: Option<i32>,
    ended: bool,
}

/// Codes that count as the server's failure on a server span (the RPC conventions).
fn server_error(code: i32) -> bool {
    use tonic::Code;
    matches!(
        Code::from_i32(code),
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

impl Drop for Finish {
    fn drop(&mut self) {
        // No status: the body ended without one (UNKNOWN, as a client reads it), or the
        // caller went away before the end (CANCELLED).
        let code = self.code.unwrap_or(if self.ended {
            tonic::Code::Unknown as i32
        } else {
            tonic::Code::Cancelled as i32
        });
        self.metrics
            .rpc_finished(&self.route, code, self.started.elapsed());
        self.span
            .set_attribute("rpc.grpc.status_code", i64::from(code));
        if server_error(code) {
            self.span.set_status(opentelemetry::trace::Status::error(
                tonic::Code::from_i32(code).description(),
            ));
        }
    }
}

/// The answer's body, watched for its trailers and its end.
struct ObservedBody {
    inner: Body,
    finish: Finish,
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    self.finish.code = Some(code);
                }
            }
            Poll::Ready(None) => self.finish.ended = true,
            Poll::Ready(Some(Err(status))) => {
                self.finish.code = Some(status.code() as i32);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::propagation::Extractor as _;

    #[test]
    fn a_header_sent_twice_is_ignored() -> Result<(), http::header::InvalidHeaderValue> {
        let mut headers = http::HeaderMap::new();
        headers.append("traceparent", "00-a-b-01".parse()?);
        assert_eq!(
            HeaderExtractor(&headers).get("traceparent"),
            Some("00-a-b-01")
        );
        headers.append("traceparent", "00-c-d-01".parse()?);
        assert_eq!(HeaderExtractor(&headers).get("traceparent"), None);
        Ok(())
    }

    #[test]
    fn server_faults_mark_the_span_failed_and_caller_faults_do_not() {
        assert!(server_error(tonic::Code::Unavailable as i32));
        assert!(server_error(tonic::Code::Internal as i32));
        assert!(!server_error(tonic::Code::InvalidArgument as i32));
        assert!(!server_error(tonic::Code::PermissionDenied as i32));
        assert!(!server_error(tonic::Code::Ok as i32));
    }
}
