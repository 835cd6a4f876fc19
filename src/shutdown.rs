//! The drain signal as handlers see it.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

/// What a worker's drain looks like to its handlers.
#[derive(Debug, Clone)]
struct Signal {
    rx: watch::Receiver<bool>,
    alive: mpsc::WeakSender<()>,
    /// `--drain-spread`.
    spread: Duration,
    /// Set when the turns are now: a reload waits for this generation's draining slot.
    hurry: watch::Receiver<bool>,
}

static SIGNAL: OnceLock<Signal> = OnceLock::new();
static HURRY: OnceLock<watch::Sender<bool>> = OnceLock::new();
/// When the drain started, and why (set just before the drain signal fires).
static DRAIN: OnceLock<(Instant, DrainReason)> = OnceLock::new();

pub(crate) fn install(rx: watch::Receiver<bool>, alive: mpsc::WeakSender<()>, spread: Duration) {
    let (tx, hurry) = watch::channel(false);
    if HURRY.set(tx).is_ok() {
        let _ = SIGNAL.set(Signal { rx, alive, spread, hurry });
    }
}

/// Every turn is now (the master wants this generation's draining slot for a reload).
pub(crate) fn hurry() {
    if let Some(tx) = HURRY.get() {
        let _ = tx.send(true);
    }
}

/// Records why the drain starts; call right before it does.
pub(crate) fn begin(reason: DrainReason) {
    let _ = DRAIN.set((Instant::now(), reason));
}

/// Why a worker drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DrainReason {
    /// A newer generation serves (a reload or a deploy): clients should reconnect at once.
    /// WebSockets through `baton::ws` are closed with 1012 (service restart).
    Reload,
    /// The server is stopping. WebSockets through `baton::ws` are closed with 1001 (going
    /// away).
    Shutdown,
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
/// `baton::ws` and [`crate::sse`] do this for WebSockets and event streams, each connection at
/// its own moment ([`Shutdown::wait_turn`]).
#[derive(Debug, Clone)]
pub struct Shutdown {
    inner: Option<Signal>,
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
        self.inner.as_ref().is_some_and(|s| *s.rx.borrow())
    }

    /// Why this worker drains; `None` while it does not.
    pub fn reason(&self) -> Option<DrainReason> {
        if self.is_draining() { DRAIN.get().map(|(_, r)| *r) } else { None }
    }

    /// Resolves once the drain starts.
    pub async fn wait(&self) {
        match &self.inner {
            Some(s) => {
                let mut rx = s.rx.clone();
                if rx.wait_for(|d| *d).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }

    /// Resolves at a random moment within `--drain-spread` after the drain starts, drawn anew
    /// for each call: when a long-lived connection should close, so that thousands of clients
    /// do not all reconnect to the new generation in the same millisecond.
    ///
    /// Earlier when a reload waits for this generation to finish draining (`--max-draining`).
    pub async fn wait_turn(&self) {
        self.wait().await;
        let Some(s) = &self.inner else { return };
        let start = DRAIN.get().map_or_else(Instant::now, |(t, _)| *t);
        let mut hurry = s.hurry.clone();
        tokio::select! {
            _ = tokio::time::sleep_until((start + random_below(s.spread)).into()) => {}
            Ok(_) = hurry.wait_for(|h| *h) => {}
        }
    }

    /// A guard that keeps the worker from exiting early while it lives: without one, a
    /// draining worker exits as soon as no request is in flight and no connection is open
    /// (upgraded ones such as WebSockets included). The drain timeout still applies.
    pub fn hold(&self) -> Option<ShutdownGuard> {
        let s = self.inner.as_ref()?;
        s.alive.upgrade().map(|a| ShutdownGuard { _alive: a })
    }
}

/// Uniform in `[0, max)`, from the standard library's randomly keyed hasher.
fn random_below(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    Duration::from_nanos(h.finish() % nanos)
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Shutdown {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(_: &mut http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Shutdown::current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_spread_over_the_whole_window() {
        let max = Duration::from_secs(2);
        let draws: Vec<Duration> = (0..2000).map(|_| random_below(max)).collect();
        assert!(draws.iter().all(|d| *d < max));
        // Each tenth of the window gets some of 2000 uniform draws (expected 200 each).
        for tenth in 0..10 {
            let lo = max * tenth / 10;
            let hi = max * (tenth + 1) / 10;
            let n = draws.iter().filter(|d| **d >= lo && **d < hi).count();
            assert!(n > 100, "{n} draws in [{lo:?}, {hi:?})");
        }
        assert_eq!(random_below(Duration::ZERO), Duration::ZERO);
    }
}
