//! A route's own request timeout, in place of `--request-timeout`: longer for a slow report
//! or a long poll, shorter for a route that must answer fast, or none.
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use baton::RequestTimeout;
//!
//! # async fn report() {}
//! # async fn poll() {}
//! # fn app() -> Router {
//! Router::new()
//!     .route("/report", get(report).layer(RequestTimeout::new(Duration::from_secs(300))))
//!     .route("/poll", get(poll).layer(RequestTimeout::disable()))
//! // every other route: --request-timeout (default 60 s)
//! # }
//! ```
//!
//! baton times a request from its start, around the whole app, so a route's own timeout
//! layer (tower-http's `TimeoutLayer`) can only make it shorter. This layer sets baton's:
//! the route's response must start within its timeout, counted from the request's start, or
//! the client gets baton's 503 and the log its `request timeout` line, as with
//! `--request-timeout`. Outside baton's server (an app's tests calling the router directly)
//! it does nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;

/// Set once this process made a [`RequestTimeout`]: from then on, each request gets a
/// [`RouteTimeout`].
static IN_USE: AtomicBool = AtomicBool::new(false);

/// Some route may set its own timeout.
pub(crate) fn in_use() -> bool {
    IN_USE.load(Ordering::Relaxed)
}

/// A layer that sets the request timeout of the routes it wraps, in place of
/// `--request-timeout` (see [the module](self)). The innermost one applies. Make it when
/// building the router (in the factory): requests that arrived before any `RequestTimeout`
/// existed keep `--request-timeout`.
#[derive(Clone, Copy, Debug)]
pub struct RequestTimeout {
    /// `None`: no timeout.
    after: Option<Duration>,
}

impl RequestTimeout {
    /// The response must start within `after` of the request's start (zero: no timeout, as
    /// `--request-timeout 0`).
    pub fn new(after: Duration) -> RequestTimeout {
        IN_USE.store(true, Ordering::Relaxed);
        RequestTimeout { after: Some(after).filter(|d| !d.is_zero()) }
    }

    /// No request timeout on these routes (a long poll that answers when it has news).
    pub fn disable() -> RequestTimeout {
        IN_USE.store(true, Ordering::Relaxed);
        RequestTimeout { after: None }
    }
}

impl<S> tower::Layer<S> for RequestTimeout {
    type Service = RequestTimeoutService<S>;

    fn layer(&self, inner: S) -> RequestTimeoutService<S> {
        RequestTimeoutService { inner, after: self.after }
    }
}

/// The service [`RequestTimeout`] wraps a route in.
#[derive(Clone, Debug)]
pub struct RequestTimeoutService<S> {
    inner: S,
    after: Option<Duration>,
}

impl<S, B> tower::Service<Request<B>> for RequestTimeoutService<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> S::Future {
        if let Some(t) = req.extensions().get::<RouteTimeout>() {
            t.set(self.after);
        }
        self.inner.call(req)
    }
}

/// Where a route's [`RequestTimeout`] tells the request's future its timeout.
#[derive(Clone, Debug, Default)]
pub(crate) struct RouteTimeout(Arc<AtomicU64>);

/// Nothing set since the future last looked.
const UNSET: u64 = 0;
/// Set to no timeout.
const OFF: u64 = u64::MAX;

impl RouteTimeout {
    /// Stored as nanoseconds + 1 (`UNSET`, `OFF` apart).
    fn set(&self, after: Option<Duration>) {
        let v = after.map_or(OFF, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 2).min(u64::MAX - 2) + 1);
        self.0.store(v, Ordering::Relaxed);
    }

    /// What a route set since the last call: `Some(None)`: no timeout.
    pub(crate) fn take(&self) -> Option<Option<Duration>> {
        if self.0.load(Ordering::Relaxed) == UNSET {
            return None;
        }
        match self.0.swap(UNSET, Ordering::Relaxed) {
            UNSET => None,
            OFF => Some(None),
            n => Some(Some(Duration::from_nanos(n - 1))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_timeout_is_taken_once() {
        let t = RouteTimeout::default();
        assert_eq!(t.take(), None);
        t.set(Some(Duration::from_millis(1500)));
        assert_eq!(t.take(), Some(Some(Duration::from_millis(1500))));
        assert_eq!(t.take(), None, "taken");
        t.set(None);
        assert_eq!(t.take(), Some(None));
        t.set(Some(Duration::ZERO));
        assert_eq!(t.take(), Some(Some(Duration::ZERO)));
        t.set(Some(Duration::MAX));
        assert_eq!(t.take(), Some(Some(Duration::from_nanos(u64::MAX - 2))));
        assert_eq!(RequestTimeout::new(Duration::ZERO).after, None, "zero is no timeout, as on the command line");
    }
}
