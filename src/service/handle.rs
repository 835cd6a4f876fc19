//! The app's future with three defaults around it, in one struct: panic in a handler -> 500
//! (the panic is caught while polling, so the connection and the worker live on; needs
//! `panic = "unwind"`, see `Cargo.toml`), the request timeout (`--request-timeout`: a response
//! not started in time becomes a 503, or in a route's own time: `baton::RequestTimeout`), and
//! the request span the app's events carry. One struct rather than three nested wrappers:
//! each layer would move the whole request into the next (measured with callgrind: a copy of
//! several hundred bytes per layer and request), and the timer is only created for a handler
//! that did not answer on its first poll.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::Response;

use crate::AppFuture;
use crate::request_timeout::RouteTimeout;

/// How the app's future ended.
pub(crate) enum Outcome {
    Done(Response<Body>),
    /// The panic's message.
    Panicked(String),
    TimedOut,
}

pin_project_lite::pin_project! {
    pub(crate) struct Handle {
        #[pin]
        fut: AppFuture,
        catch_panic: bool,
        // Entered around every poll; `None` when disabled (the usual case).
        span: Option<tracing::Span>,
        // On the request's clock ([`super::Shared::elapsed`]).
        deadline: Option<Duration>,
        // Created the first time the app's future is pending (most answer at once).
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
        // Where a route's `baton::RequestTimeout` sets its own (`None`: no route can).
        route: Option<RouteTimeout>,
    }
}

impl Handle {
    // Inlined: see `AppService::call`.
    #[inline(always)]
    pub(crate) fn new(
        fut: AppFuture,
        catch_panic: bool,
        span: tracing::Span,
        deadline: Option<Duration>,
        route: Option<RouteTimeout>,
    ) -> Handle {
        let span = (!span.is_disabled()).then_some(span);
        Handle { fut, catch_panic, span, deadline, sleep: None, route }
    }

    /// Polls the app's future; `shared` turns the deadline into an `Instant` the first time
    /// the future is pending; `start`: the request's start, on the same clock.
    pub(crate) fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        shared: &super::Shared,
        start: Duration,
    ) -> Poll<Outcome> {
        let this = self.project();
        let _entered = this.span.as_ref().map(tracing::Span::enter);
        let fut = this.fut;
        let polled = if *this.catch_panic {
            match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
                Ok(p) => p,
                Err(payload) => return Poll::Ready(Outcome::Panicked(message(&*payload))),
            }
        } else {
            fut.poll(cx)
        };
        if let Poll::Ready(Ok(resp)) = polled {
            return Poll::Ready(Outcome::Done(resp));
        }
        // A route's own timeout, set while routing (in this poll or an earlier one).
        if let Some(after) = this.route.as_ref().and_then(RouteTimeout::take) {
            *this.deadline = after.map(|d| start.saturating_add(d));
            *this.sleep = None;
        }
        if let Some(at) = *this.deadline {
            let sleep =
                this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(shared.instant_at(at).into())));
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Outcome::TimedOut);
            }
        }
        Poll::Pending
    }
}

/// A panic payload as text.
fn message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}
