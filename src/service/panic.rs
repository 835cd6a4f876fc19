//! Panic in a handler -> 500: the panic is caught while polling the handler's future, so the
//! connection and the worker live on. Needs `panic = "unwind"` (see `Cargo.toml`).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Catches a panic while polling the handler's future; the error is the panic message.
pub(crate) struct CatchPanic<F> {
    pub(crate) inner: Pin<Box<F>>,
    pub(crate) enabled: bool,
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if !self.enabled {
            return self.inner.as_mut().poll(cx).map(Ok);
        }
        let inner = &mut self.inner;
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(p) => p.map(Ok),
            Err(payload) => Poll::Ready(Err(payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned()))),
        }
    }
}
