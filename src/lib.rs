//! baton turns an HTTP app into a production daemon with one call: pid file, log file,
//! zero-downtime reload, graceful shutdown, crash supervision, with axum's `Router` (or any
//! `tower::Service`) as the app.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//!
//! fn main() -> std::process::ExitCode {
//!     baton::App::new().default_listen("0.0.0.0:1234").serve(|_: baton::NoArgs| async {
//!         Router::new().route("/", get(|| async { "hello world!" }))
//!     })
//! }
//! ```
//!
//! `app run` serves in the foreground, `app start` daemonizes (see `app --help`). A small
//! **master** process (no async runtime, no user code; the `baton-supervise` crate) owns the
//! listening sockets and re-executes the binary as a **worker**, handing the sockets over with
//! systemd's `LISTEN_FDS` protocol; the worker reports `READY=1` on the master's
//! `NOTIFY_SOCKET`. Your factory runs only in workers.
//!
//! | signal to the master | effect |
//! |---|---|
//! | TERM, INT | graceful shutdown: stop accepting, finish in-flight requests (up to `--drain-timeout`), exit 0; a second one: now |
//! | QUIT | fast shutdown |
//! | USR2, HUP | reload: start a worker from the binary on disk; once ready the old one drains; if it fails, it is killed and the old one keeps serving |
//! | USR1 | reopen the log file |
//!
//! In the app, beside axum's own extractors and layers:
//! - [`BodyLimit`] and [`RequestTimeout`]: a route's own body limit and request timeout,
//!   higher or lower than `--max-body-bytes` and `--request-timeout`;
//! - [`NoAccessLog`]: routes (or responses) left out of the access log;
//! - [`ClientIp`]: the client's address, behind a trusted proxy (`--trusted-proxy`) too;
//! - [`Counter`], [`Gauge`], [`Histogram`]: the app's own metrics, served with baton's and
//!   kept across reloads;
//! - [`Shutdown`]: when the worker drains, and holding it until a handler is done;
//! - [`sse`] and `ws`: event streams and WebSockets that close cleanly on a reload;
//! - [`config`], [`launch_dir`]: the `--config` file, the directory the app was started in.
//!
//! Cargo features, both on by default: `tls`: `--tls-cert`/`--tls-key` with rustls and
//! `ring`; `ws`: `baton::ws`, WebSockets that close cleanly when a worker drains.
//!
#![doc = include_str!("../docs/draining.md")]

mod access_log;
mod app;
pub mod app_metrics;
pub mod body_limit;
mod cli;
mod client_ip;
#[doc(hidden)]
pub mod metrics;
pub mod no_access_log;
mod ready;
pub mod request_timeout;
mod serve;
mod service;
mod shutdown;
pub mod sse;
#[cfg(feature = "tls")]
mod tls;
mod worker;
#[cfg(feature = "ws")]
pub mod ws;

use std::convert::Infallible;

use axum::body::Body;
use http::{Request, Response};
use tower::util::BoxCloneSyncService;

pub use app::{App, IntoApp, NoArgs, serve};
pub use app_metrics::{Counter, Gauge, Histogram};
pub use body_limit::BodyLimit;
pub use cli::{parse_bytes, parse_duration};
pub use client_ip::ClientIp;
pub use no_access_log::NoAccessLog;
pub use request_timeout::RequestTimeout;
pub use shutdown::{DrainReason, Shutdown, ShutdownGuard};

/// The directory the app was started from (`run` or `start`), whatever the process's current
/// directory is now: a daemon (and its workers) runs in `/`, so a relative path the app uses
/// (`ServeDir::new("static")`) must be made absolute against this. Paths given to baton's own
/// options are made absolute the same way.
///
/// ```no_run
/// let statics = baton::launch_dir().join("static");
/// ```
pub fn launch_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        std::env::var_os(ENV_LAUNCH_DIR)
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| std::path::PathBuf::from("/"))
    })
}

/// The configuration file (`--config FILE`) as this worker read it at its start, if one was
/// given. Each new worker reads it afresh, so `reload` applies a change: parse it in the
/// factory and return an error from [`App::try_serve`]'s factory if it is wrong, and the
/// reload is rolled back with that error. The environment, by contrast, is the master's as it
/// was at `start`.
#[derive(Debug)]
pub struct Config {
    /// The file's absolute path.
    pub path: std::path::PathBuf,
    /// Its contents.
    pub text: String,
}

static CONFIG: std::sync::OnceLock<Config> = std::sync::OnceLock::new();

/// The configuration file this worker read (see [`Config`]); `None` without `--config`.
pub fn config() -> Option<&'static Config> {
    CONFIG.get()
}

/// Reads the configuration file once, at the worker's start.
pub(crate) fn load_config(path: std::path::PathBuf) -> baton_supervise::Result<&'static Config> {
    let text = std::fs::read_to_string(&path).map_err(|e| {
        baton_supervise::Error::io(
            baton_supervise::ErrorKind::Config,
            format!("cannot read config file {}", path.display()),
            e,
        )
    })?;
    Ok(CONFIG.get_or_init(|| Config { path, text }))
}

/// Where the master passes [`launch_dir`] to its workers.
pub(crate) const ENV_LAUNCH_DIR: &str = "BATON_LAUNCH_DIR";

/// Where a request came in: on every request as an axum extension
/// (`Extension(conn): Extension<baton::Connection>`), TCP and unix alike. On TCP listeners
/// `ConnectInfo<SocketAddr>` is there too, as with `axum::serve`.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The client's address (TCP); `None` on a unix socket.
    pub peer: Option<std::net::SocketAddr>,
    /// The listener's own address.
    pub local: LocalAddr,
}

/// A listener's address (see [`Connection`]).
#[derive(Debug, Clone)]
pub enum LocalAddr {
    /// A TCP listener.
    Tcp(std::net::SocketAddr),
    /// A unix socket listener, at this path (`None` if unnamed).
    Unix(Option<std::sync::Arc<std::path::Path>>),
}

/// The app as baton runs it: a cloneable service from requests to responses. An axum
/// `Router` (the common case) is called directly: cloning it per request is a reference count,
/// where a boxed service costs an allocation and a virtual call.
#[derive(Clone)]
pub(crate) enum AppService {
    Router(axum::Router),
    Boxed(BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>),
}

impl std::fmt::Debug for AppService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AppService::Router(_) => "AppService::Router",
            AppService::Boxed(_) => "AppService::Boxed",
        })
    }
}

impl AppService {
    /// Serves `router`, its handlers turned into routes once, here, as `axum::serve` does
    /// (otherwise every request would box and convert its handler anew: measured with
    /// callgrind, about 400 instructions and an allocation per request).
    pub(crate) fn router(router: axum::Router) -> AppService {
        AppService::Router(router.with_state(()))
    }

    /// Answers one request. A `Router` (always ready) routes it at once, which runs no app
    /// code: handlers, layers, fallbacks and nested services are called when the returned
    /// future is first polled, inside the panic catching. Routing here rather than in a
    /// `Oneshot` spares moving the request in and out of the `Oneshot`.
    // Inlined into the caller, which then builds the future in place: called, it is built,
    // returned and copied (hundreds of bytes; with `Handle::new`, 140 instructions per
    // request, callgrind).
    #[inline(always)]
    pub(crate) fn call(&self, req: Request<Body>) -> AppFuture {
        use tower::ServiceExt as _;
        match self {
            AppService::Router(r) => AppFuture::Router { fut: tower::Service::call(&mut r.clone(), req) },
            AppService::Boxed(s) => AppFuture::Boxed { fut: s.clone().oneshot(req) },
        }
    }
}

pin_project_lite::pin_project! {
    /// [`AppService::call`]'s future.
    #[project = AppFutureProj]
    pub(crate) enum AppFuture {
        Router { #[pin] fut: axum::routing::future::RouteFuture<Infallible> },
        Boxed { #[pin] fut: tower::util::Oneshot<BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>, Request<Body>> },
    }
}

impl std::future::Future for AppFuture {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        match self.project() {
            AppFutureProj::Router { fut } => fut.poll(cx),
            AppFutureProj::Boxed { fut } => fut.poll(cx),
        }
    }
}
