//! The tower plumbing of the layers in front of every service: a [`GateLayer`] holds a
//! [`Gate`], which sees each request before the service and either passes it on (possibly
//! changed) or answers it with a status. Answers from the service pass through
//! [`crate::transport_status::correct`]. The gates: authentication (`auth::AuthGate`) and
//! request bounds (`request_bounds::RequestBounds`). A layer can also count the requests
//! waiting for their answer ([`InFlight`]), which shutdown uses.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tonic::Status;
use tonic::body::Body;

/// Decides about a request before the service sees it.
pub trait Gate: Send + Sync + 'static {
    /// The request to pass on, or the status to answer instead.
    fn admit(
        &self,
        request: http::Request<Body>,
    ) -> impl Future<Output = Result<http::Request<Body>, Status>> + Send;
}

/// Requests whose answer is not ready yet: unary RPCs until they are answered, streaming
/// RPCs only until their stream starts. Shutdown waits for it to reach zero, then ends the
/// streams that remain instead of waiting for stalled readers.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl InFlight {
    /// Resolves when no request is waiting for its answer.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(Arc::clone(self))
    }
}

/// One request in flight; counted out when dropped.
struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A tower layer putting `G` in front of a service.
#[derive(Debug)]
pub struct GateLayer<G> {
    gate: Arc<G>,
    in_flight: Option<Arc<InFlight>>,
}

impl<G> Clone for GateLayer<G> {
    fn clone(&self) -> Self {
        GateLayer {
            gate: Arc::clone(&self.gate),
            in_flight: self.in_flight.clone(),
        }
    }
}

impl<G: Gate> GateLayer<G> {
    /// A layer with `gate`.
    pub fn new(gate: G) -> GateLayer<G> {
        GateLayer {
            gate: Arc::new(gate),
            in_flight: None,
        }
    }

    /// Counts the requests passing this layer in `in_flight` until they are answered.
    pub fn counting(mut self, in_flight: Arc<InFlight>) -> GateLayer<G> {
        self.in_flight = Some(in_flight);
        self
    }
}

impl<S, G> tower::Layer<S> for GateLayer<G> {
    type Service = Gated<S, G>;
    fn layer(&self, inner: S) -> Gated<S, G> {
        Gated {
            inner,
            gate: Arc::clone(&self.gate),
            in_flight: self.in_flight.clone(),
        }
    }
}

/// A service behind a [`Gate`].
#[derive(Debug)]
pub struct Gated<S, G> {
    inner: S,
    gate: Arc<G>,
    in_flight: Option<Arc<InFlight>>,
}

impl<S: Clone, G> Clone for Gated<S, G> {
    fn clone(&self) -> Self {
        Gated {
            inner: self.inner.clone(),
            gate: Arc::clone(&self.gate),
            in_flight: self.in_flight.clone(),
        }
    }
}

impl<S, G> tower::Service<http::Request<Body>> for Gated<S, G>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    G: Gate,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone is not ready; keep the ready one for this call (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gate = Arc::clone(&self.gate);
        let counted = self.in_flight.as_ref().map(InFlight::enter);
        Box::pin(async move {
            let _counted = counted;
            match gate.admit(request).await {
                Ok(request) => inner
                    .call(request)
                    .await
                    .map(crate::transport_status::correct),
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}
