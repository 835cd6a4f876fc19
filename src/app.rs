//! The app builder: what the app decides (name, defaults, switches) and the one call that
//! parses the command line and becomes the master, a worker or a control client.

use std::convert::Infallible;
use std::ffi::OsString;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use axum::body::Body;
use baton_supervise::control::protocol::Command;
use baton_supervise::listen::{ListenSpec, ListenSpecs};
use baton_supervise::{Error, Result};
use bytes::Bytes;
use clap::{CommandFactory, FromArgMatches};
use http::{Request, Response};
use tower::util::BoxCloneSyncService;

use crate::{AppService, cli, service, worker};

/// Anything baton can serve: an axum [`Router`](axum::Router) or any `tower::Service` over
/// HTTP that is `Clone + Send + Sync` and never fails (errors are responses).
pub trait IntoApp: private::Sealed {}

mod private {
    /// Boxes the service (sealed: the blanket impl below is the only one).
    pub trait Sealed {
        fn into_service(self) -> crate::AppService;
    }
}

impl<S, B> private::Sealed for S
where
    S: tower::Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    fn into_service(self) -> AppService {
        use tower::ServiceExt as _;
        BoxCloneSyncService::new(self.map_response(|r: Response<B>| r.map(Body::new)))
    }
}

impl<S: private::Sealed> IntoApp for S {}

/// For apps without flags of their own.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct NoArgs {}

/// The factory's future, type-erased.
pub(crate) type Factory<A> = Box<dyn FnOnce(A) -> Pin<Box<dyn Future<Output = Result<AppService, String>>>>>;

/// An app to run: name, defaults and production middleware switches. Start with
/// [`App::new`], finish with [`App::serve`].
#[derive(Clone)]
pub struct App {
    name: Option<String>,
    default_listen: Vec<ListenSpec>,
    request_id: bool,
    catch_panic: bool,
    idle_grace: Duration,
    ready_check: Option<crate::ready::Check>,
    on_shutdown: Option<crate::ready::Check>,
    version: Option<String>,
    about: Option<String>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("name", &self.name)
            .field("default_listen", &self.default_listen)
            .field("request_id", &self.request_id)
            .field("catch_panic", &self.catch_panic)
            .field("idle_grace", &self.idle_grace)
            .field("ready_check", &self.ready_check.is_some())
            .field("on_shutdown", &self.on_shutdown.is_some())
            .field("version", &self.version)
            .field("about", &self.about)
            .finish()
    }
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    /// An app with the defaults: name from the executable, listening on `0.0.0.0:8080`,
    /// request ids and panic catching on.
    pub fn new() -> Self {
        App {
            name: None,
            default_listen: vec!["0.0.0.0:8080".parse().expect("valid default")],
            request_id: true,
            catch_panic: true,
            idle_grace: Duration::from_secs(1),
            ready_check: None,
            on_shutdown: None,
            version: None,
            about: None,
        }
    }

    /// The name used in `--help` and for the default pid and log files (`<name>.pid`,
    /// `<name>.log`). Default is the executable's file name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The app's version, for `--version` (usually `env!("CARGO_PKG_VERSION")`). Default:
    /// none, and no `--version` flag.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// One line saying what the app does, for `--help`. Default: none.
    pub fn about(mut self, about: impl Into<String>) -> Self {
        self.about = Some(about.into());
        self
    }

    /// Where to listen when no `--listen` is given. Default is `0.0.0.0:8080`.
    ///
    /// # Panics
    /// If `addr` is not a valid `--listen` value (a programming error).
    pub fn default_listen(mut self, addr: &str) -> Self {
        self.default_listen = vec![addr.parse().unwrap_or_else(|e| panic!("default_listen: {e}"))];
        self
    }

    /// Whether to set an `x-request-id` on every request and response (keeping a sane one
    /// sent by the client). Default is on.
    pub fn request_id(mut self, on: bool) -> Self {
        self.request_id = on;
        self
    }

    /// Whether a panic in a handler becomes a 500 response (the server lives on). Default is on.
    pub fn catch_panic(mut self, on: bool) -> Self {
        self.catch_panic = on;
        self
    }

    /// How long a draining HTTP/1 keep-alive connection may stay idle before it is closed.
    /// Default is 1 second. Closing at once would reset a request the client is sending that
    /// very moment; a client that sends within the grace gets its answer with
    /// `Connection: close`.
    pub fn drain_idle_grace(mut self, grace: Duration) -> Self {
        self.idle_grace = grace;
        self
    }

    /// A check each new worker runs after the factory and before it reports ready (and before
    /// it accepts a connection): an error fails the start, and a reload is rolled back with the
    /// error shown by `reload`. Runs in the worker's runtime. Default: none. `--ready-probe
    /// PATH` adds a request through the app.
    ///
    /// ```no_run
    /// # use std::sync::atomic::{AtomicBool, Ordering};
    /// static CACHE_WARM: AtomicBool = AtomicBool::new(false);
    /// baton::App::new().ready_check(|| async {
    ///     if CACHE_WARM.load(Ordering::Relaxed) { Ok(()) } else { Err("cache not warm".to_owned()) }
    /// });
    /// ```
    pub fn ready_check<F, Fut>(mut self, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), String>> + Send + 'static,
    {
        self.ready_check = Some(std::sync::Arc::new(move || Box::pin(check())));
        self
    }

    /// A clean end for the app: `hook` runs in each worker after its drain (or at its drain
    /// timeout) and before the runtime is dropped, so pools close and exporters flush. It gets
    /// `--drain-timeout` to finish; an error is logged. Default: none.
    pub fn on_shutdown<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), String>> + Send + 'static,
    {
        self.on_shutdown = Some(std::sync::Arc::new(move || Box::pin(hook())));
        self
    }

    /// Parses the command line and runs: serves (calling `factory` in the worker only),
    /// daemonizes or controls a running instance. Returns the process's exit code: 0 on
    /// success, 1 on failure, 2 on a bad command line.
    pub fn serve<A, F, Fut, T>(self, factory: F) -> ExitCode
    where
        A: clap::Args + FromArgMatches + 'static,
        F: FnOnce(A) -> Fut + 'static,
        Fut: Future<Output = T> + 'static,
        T: IntoApp,
    {
        self.run(Box::new(move |a| Box::pin(async move { Ok(private::Sealed::into_service(factory(a).await)) })))
    }

    /// Like [`App::serve`] for a factory that can fail (a database that does not answer): the
    /// worker exits with the error, and a start or reload reports it.
    pub fn try_serve<A, F, Fut, T, E>(self, factory: F) -> ExitCode
    where
        A: clap::Args + FromArgMatches + 'static,
        F: FnOnce(A) -> Fut + 'static,
        Fut: Future<Output = std::result::Result<T, E>> + 'static,
        T: IntoApp,
        E: std::fmt::Display,
    {
        self.run(Box::new(move |a| {
            // `{:#}`: the whole cause chain of an `anyhow::Error`, not only its outermost context.
            Box::pin(async move { factory(a).await.map(private::Sealed::into_service).map_err(|e| format!("{e:#}")) })
        }))
    }

    fn app_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            std::env::args_os()
                .next()
                .map(std::path::PathBuf::from)
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "app".to_owned())
        })
    }

    fn run<A: clap::Args + FromArgMatches + 'static>(self, factory: Factory<A>) -> ExitCode {
        let name = self.app_name();
        let argv: Vec<OsString> = cli::with_default_subcommand(std::env::args_os().collect());
        let clashes = cli::clashes::<A>();
        if !clashes.is_empty() {
            baton_supervise::errln!("{name}: {}; rename the app's flag", clashes.join("; "));
            return ExitCode::from(2);
        }
        let mut cmd = cli::Cli::<A>::command().name(name.clone()).bin_name(name.clone());
        cmd = match &self.version {
            Some(v) => cmd.version(v.clone()),
            None => cmd.disable_version_flag(true),
        };
        if let Some(a) = &self.about {
            cmd = cmd.about(a.clone());
        }
        let defaults: Vec<String> = self.default_listen.iter().map(|l| l.addr.to_string()).collect();
        let listen_help = format!(
            "Address to serve on: `[NAME=]IP:PORT`, `[NAME=]:PORT` or `[NAME=]unix:/path`; repeatable. Default: {}",
            defaults.join(", ")
        );
        for sub in ["run", "start"] {
            let help = listen_help.clone();
            cmd = cmd.mut_subcommand(sub, |c| c.mut_arg("listen", |a| a.help(help)));
        }
        let parsed = cmd.try_get_matches_from(&argv).and_then(|m| cli::Cli::<A>::from_arg_matches(&m));
        let cli = match parsed {
            Ok(c) => c,
            Err(e) => {
                let _ = e.print();
                if std::env::var_os(baton_supervise::handoff::BATON_WORKER).is_some() {
                    // A new binary that does not accept the running command line (a renamed
                    // flag): `reload` shows why it failed, not just "exited with status 2".
                    if let Ok(Some(n)) = baton_supervise::worker::notifier() {
                        let first = e.to_string().lines().next().unwrap_or_default().to_owned();
                        let _ = n.send(&baton_supervise::handoff::Message::status(&first));
                    }
                }
                return ExitCode::from(e.exit_code() as u8);
            }
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            baton_supervise::errln!(
                "{name}: App::serve runs its own tokio runtime (in the worker, after the fork): call it from a \
                 plain `fn main`, not inside #[tokio::main]"
            );
            return ExitCode::from(2);
        }
        let result = match cli.command {
            cli::Command::Run(s) => self.serve_command(&name, s, false, factory),
            cli::Command::Start(s) => self.serve_command(&name, s, true, factory),
            cli::Command::Stop(c) => c.run(&name, Command::Stop),
            cli::Command::Reload(r) if r.wait_probation => r.control.run(&name, Command::ReloadWaitProbation),
            cli::Command::Reload(r) => r.control.run(&name, Command::Reload),
            cli::Command::Status(c) => c.run(&name, Command::Status),
            cli::Command::ReopenLogs(c) => c.run(&name, Command::ReopenLogs),
        };
        match result {
            Ok(code) => code,
            Err(e) => {
                baton_supervise::errln!("{name}: {e:#}");
                ExitCode::from(e.exit_code())
            }
        }
    }

    fn hooks(&self) -> worker::Hooks {
        worker::Hooks { ready_check: self.ready_check.clone(), on_shutdown: self.on_shutdown.clone() }
    }

    fn serve_command<A: clap::Args + 'static>(
        &self,
        name: &str,
        s: cli::ServeArgs<A>,
        daemon: bool,
        factory: Factory<A>,
    ) -> Result<ExitCode> {
        let opts = s.opts;
        let listen = ListenSpecs { given: opts.listen.clone(), default: self.default_listen.clone() };
        for (flag, path) in [("--health-path", &opts.health_path), ("--ready-probe", &opts.ready_probe)] {
            if let Some(p) = path {
                if !p.starts_with('/') || p.parse::<http::Uri>().is_err() {
                    return Err(Error::usage(format!("invalid {flag} {p:?}: must be a path starting with /")));
                }
            }
        }
        #[cfg(not(feature = "tls"))]
        if opts.tls_cert.is_some() {
            return Err(Error::usage("--tls-cert: this build has no TLS support (cargo feature `tls`)"));
        }
        let http = service::HttpConfig {
            access_log: opts.access_log,
            request_id: self.request_id,
            catch_panic: self.catch_panic,
            request_timeout: Some(opts.request_timeout).filter(|d| !d.is_zero()),
            header_timeout: opts.header_timeout,
            idle_timeout: Some(opts.idle_timeout).filter(|d| !d.is_zero()),
            body_timeout: Some(opts.body_timeout).filter(|d| !d.is_zero()),
            max_header_bytes: opts.max_header_bytes as usize,
            max_headers: opts.max_headers as usize,
            max_body_bytes: opts.max_body_bytes,
            health_path: opts.health_path.clone(),
            drain_timeout: opts.drain_timeout,
            shutdown_delay: opts.shutdown_delay,
            idle_grace: self.idle_grace,
            tcp_nodelay: opts.tcp_nodelay,
            #[cfg(feature = "tls")]
            tls: None,
        };
        if let Some(handoff) = baton_supervise::worker::Handoff::take()? {
            return worker::main(worker::Role::UnderMaster(handoff), opts, http, s.app, factory, self.hooks());
        }
        if opts.no_master {
            if daemon {
                return Err(Error::usage("start needs the master: drop --no-master"));
            }
            let inherited = baton_supervise::listen::take_inherited()?;
            return worker::main(worker::Role::Single(listen, inherited), opts, http, s.app, factory, self.hooks());
        }
        baton_supervise::master::run(opts.master_config(name, daemon, listen)?)
    }
}

/// Runs an app with [`App::new`]'s defaults: see [`App::serve`].
pub fn serve<A, F, Fut, T>(factory: F) -> ExitCode
where
    A: clap::Args + FromArgMatches + 'static,
    F: FnOnce(A) -> Fut + 'static,
    Fut: Future<Output = T> + 'static,
    T: IntoApp,
{
    App::new().serve(factory)
}
