//! The drain signal as handlers see it.

use std::sync::OnceLock;

use tokio::sync::{mpsc, watch};

static SIGNAL: OnceLock<(watch::Receiver<bool>, mpsc::WeakSender<()>)> = OnceLock::new();

pub(crate) fn install(rx: watch::Receiver<bool>, alive: mpsc::WeakSender<()>) {
    let _ = SIGNAL.set((rx, alive));
}

/// Tells long-lived handlers (WebSocket, server-sent events, long polls) that this worker is
/// draining, so they can finish cleanly before the drain timeout cuts them.
///
/// Get one anywhere with [`Shutdown::current`], or as an axum extractor:
/// ```no_run
/// async fn events(shutdown: baton::Shutdown) -> &'static str {
///     let _hold = shutdown.hold(); // keep the worker alive while we finish
///     shutdown.wait().await;
///     "bye"
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Shutdown {
    inner: Option<(watch::Receiver<bool>, mpsc::WeakSender<()>)>,
}

/// Keeps a draining worker from exiting until dropped (or until the drain timeout).
#[derive(Debug)]
pub struct ShutdownGuard {
    _alive: mpsc::Sender<()>,
}

impl Shutdown {
    /// The signal of this worker. Outside a baton worker it never fires.
    pub fn current() -> Shutdown {
        Shutdown { inner: SIGNAL.get().cloned() }
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        self.inner.as_ref().is_some_and(|(rx, _)| *rx.borrow())
    }

    /// Resolves once the drain starts.
    pub async fn wait(&self) {
        match &self.inner {
            Some((rx, _)) => {
                let mut rx = rx.clone();
                if rx.wait_for(|d| *d).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }

    /// A guard that keeps the worker from exiting early while it lives: without one, a
    /// draining worker exits as soon as no HTTP request is in flight (upgraded connections
    /// such as WebSockets are not requests). The drain timeout still applies.
    pub fn hold(&self) -> Option<ShutdownGuard> {
        let (_, weak) = self.inner.as_ref()?;
        weak.upgrade().map(|s| ShutdownGuard { _alive: s })
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Shutdown {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(_: &mut http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Shutdown::current())
    }
}
