//! The request-concurrency limit (`MAX_CONCURRENT_REQUESTS`): beyond it a request is answered
//! 503 at once rather than queued, so what clients can make the gateway hold is bounded.
//!
//! It wraps the whole router once instead of being a router layer: axum clones a route's
//! layered service for every request, and tower's `load_shed` + concurrency limit as a layer
//! cost about 1 µs (4 %) of the gateway's CPU per GET (BENCHMARKS.md, round 2 session 4). A request
//! holds its permit until its response head is ready; a change feed's body streams on
//! without one (`MAX_CHANGE_FEEDS` bounds those).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::Semaphore;
use tower::Service;

use crate::metrics::Metrics;
use crate::ApiError;

/// The gateway's HTTP service: the router behind the concurrency limit.
#[derive(Clone)]
pub struct App {
    router: Router,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl App {
    /// `router`, serving at most `max_concurrent` requests at once; those shed are counted in
    /// `metrics`.
    pub(crate) fn new(router: Router, max_concurrent: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            router,
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            metrics,
        }
    }
}

impl<B> Service<axum::http::Request<B>> for App
where
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.metrics.shed();
            return futures::future::ready(Ok(ApiError::Overloaded.into_response())).boxed();
        };
        let served = self.router.call(request.map(axum::body::Body::new));
        served
            .map(move |response| {
                drop(permit);
                response
            })
            .boxed()
    }
}
