//! The tower plumbing of the layers in front of every service: a [`GateLayer`] holds a
//! [`Gate`], which sees each request before the service and either passes it on (possibly
//! changed) or answers it with a status. Answers from the service pass through
//! [`crate::transport_status::correct`]. The gates: authentication (`auth::AuthGate`) and
//! request bounds (`request_bounds::RequestBounds`).

use std::future::Future;
use std::sync::Arc;
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

/// A tower layer putting `G` in front of a service.
#[derive(Debug)]
pub struct GateLayer<G> {
    gate: Arc<G>,
}

impl<G> Clone for GateLayer<G> {
    fn clone(&self) -> Self {
        GateLayer {
            gate: Arc::clone(&self.gate),
        }
    }
}

impl<G: Gate> GateLayer<G> {
    /// A layer with `gate`.
    pub fn new(gate: G) -> GateLayer<G> {
        GateLayer {
            gate: Arc::new(gate),
        }
    }
}

impl<S, G> tower::Layer<S> for GateLayer<G> {
    type Service = Gated<S, G>;
    fn layer(&self, inner: S) -> Gated<S, G> {
        Gated {
            inner,
            gate: Arc::clone(&self.gate),
        }
    }
}

/// A service behind a [`Gate`].
#[derive(Debug)]
pub struct Gated<S, G> {
    inner: S,
    gate: Arc<G>,
}

impl<S: Clone, G> Clone for Gated<S, G> {
    fn clone(&self) -> Self {
        Gated {
            inner: self.inner.clone(),
            gate: Arc::clone(&self.gate),
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
        Box::pin(async move {
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
