//! Routes left out of the access log: health checks, probes, a load balancer's pings.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//!
//! # fn app() -> Router {
//! Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .route("/ping", get(|| async { "pong" }).layer(baton::NoAccessLog))
//! # }
//! ```
//!
//! A response that carries [`NoAccessLog`] among its extensions is not written to the access
//! log; it is still counted in the metrics. The layer marks every response of the routes it
//! wraps; a handler can mark one response itself by returning it as a part:
//! `(baton::NoAccessLog, "pong")`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};

/// A layer that leaves its routes' responses out of the access log, and the mark it puts on
/// them (see [the module](self)).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoAccessLog;

impl<S> tower::Layer<S> for NoAccessLog {
    type Service = NoAccessLogService<S>;

    fn layer(&self, inner: S) -> NoAccessLogService<S> {
        NoAccessLogService { inner }
    }
}

impl axum::response::IntoResponseParts for NoAccessLog {
    type Error = std::convert::Infallible;

    fn into_response_parts(
        self,
        mut res: axum::response::ResponseParts,
    ) -> Result<axum::response::ResponseParts, Self::Error> {
        res.extensions_mut().insert(NoAccessLog);
        Ok(res)
    }
}

/// The service [`NoAccessLog`] wraps a route in.
#[derive(Clone, Debug)]
pub struct NoAccessLogService<S> {
    inner: S,
}

impl<S, ReqB, ResB> tower::Service<Request<ReqB>> for NoAccessLogService<S>
where
    S: tower::Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = Marked<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Marked<S::Future> {
        Marked { fut: self.inner.call(req) }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`NoAccessLogService`]: its response, marked.
    #[derive(Debug)]
    pub struct Marked<F> {
        #[pin]
        fut: F,
    }
}

impl<F, B, E> Future for Marked<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().fut.poll(cx).map_ok(|mut resp| {
            resp.extensions_mut().insert(NoAccessLog);
            resp
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    #[tokio::test]
    async fn the_layer_and_the_part_mark_responses() {
        let app = axum::Router::new()
            .route("/quiet", get(|| async { "q" }).layer(NoAccessLog))
            .route("/one", get(|| async { (NoAccessLog, "one") }))
            .route("/loud", get(|| async { "l" }));
        for (path, marked) in [("/quiet", true), ("/one", true), ("/loud", false)] {
            let resp = app.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
            assert_eq!(resp.extensions().get::<NoAccessLog>().is_some(), marked, "{path}");
        }
    }
}
