//! Server-sent event streams that end cleanly when the worker drains: axum's
//! [`Sse`](axum::response::Sse) over a stream that ends, after the event it is sending, at its
//! own random moment within `--drain-spread`. The client sees the response end (a complete
//! chunked body, not a reset) and reconnects as `EventSource` does, to the new generation on a
//! reload.
//!
//! ```no_run
//! use std::convert::Infallible;
//! use axum::response::sse::{Event, KeepAlive};
//! use axum::response::IntoResponse;
//! use baton::sse::Sse;
//!
//! async fn handler() -> impl IntoResponse {
//!     let ticks = futures_util::stream::repeat_with(|| Ok::<_, Infallible>(Event::default().data("tick")));
//!     Sse::new(ticks).keep_alive(KeepAlive::default())
//! }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;

use crate::Shutdown;

/// Makes axum's [`Sse`](axum::response::Sse) responses whose stream ends when the worker drains:
/// `baton::sse::Sse::new(stream)` where axum's example says `Sse::new(stream)`.
#[derive(Debug)]
pub enum Sse {}

impl Sse {
    /// axum's `Sse::new` over `stream`, ended at its turn in the drain.
    #[allow(clippy::new_ret_no_self)]
    pub fn new<S, E>(stream: S) -> axum::response::Sse<UntilDrain<S>>
    where
        S: Stream<Item = Result<axum::response::sse::Event, E>> + Send + 'static,
        E: Into<axum::BoxError>,
    {
        axum::response::Sse::new(UntilDrain::new(stream))
    }
}

pin_project_lite::pin_project! {
    /// A stream that ends at its turn in the drain ([`Shutdown::wait_turn`]), between two items.
    pub struct UntilDrain<S> {
        #[pin]
        stream: S,
        turn: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    }
}

impl<S> std::fmt::Debug for UntilDrain<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UntilDrain").field("ended", &self.turn.is_none()).finish_non_exhaustive()
    }
}

impl<S> UntilDrain<S> {
    /// Wraps `stream`.
    pub fn new(stream: S) -> Self {
        let shutdown = Shutdown::current();
        UntilDrain { stream, turn: Some(Box::pin(async move { shutdown.wait_turn().await })) }
    }
}

impl<S: Stream> Stream for UntilDrain<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.project();
        let Some(turn) = this.turn.as_mut() else { return Poll::Ready(None) };
        // An item already made goes out first: the stream ends between events.
        if let Poll::Ready(item) = this.stream.poll_next(cx) {
            if item.is_none() {
                *this.turn = None;
            }
            return Poll::Ready(item);
        }
        if turn.as_mut().poll(cx).is_ready() {
            *this.turn = None;
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}
