//! Panic in a handler -> 500: the panic is caught while polling the handler's future, so the
//! connection and the worker live on. Needs `panic = "unwind"` (see `Cargo.toml`).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

pin_project_lite::pin_project! {
    /// Catches a panic while polling the handler's future; the error is the panic message.
    /// The future is held inline (no allocation per request).
    pub(crate) struct CatchPanic<F> {
        #[pin]
        pub(crate) inner: F,
        pub(crate) enabled: bool,
    }
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if !*this.enabled {
            return this.inner.poll(cx).map(Ok);
        }
        let inner = this.inner;
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(p) => p.map(Ok),
            Err(payload) => Poll::Ready(Err(payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned()))),
        }
    }
}
