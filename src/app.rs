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
        #[allow(private_interfaces)] // sealed: nobody outside can call or implement it
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
    #[allow(private_interfaces)]
    fn into_service(self) -> AppService {
        use tower::ServiceExt as _;
        let mut slot = Some(self);
        if let Some(router) = (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<axum::Router>>() {
            if let Some(r) = router.take() {
                return AppService::router(r);
            }
        }
        let s = slot.take().expect("taken only for a Router");
        AppService::Boxed(BoxCloneSyncService::new(s.map_response(|r: Response<B>| r.map(Body::new))))
    }
}

impl<S: private::Sealed> IntoApp for S {}

/// What runs an app's own subcommand.
type CommandFn = std::sync::Arc<dyn Fn(&clap::ArgMatches) -> ExitCode>;

/// Builder methods that set the app's default of a duration option.
macro_rules! duration_defaults {
    ($($(#[$doc:meta])* $name:ident => $arg:literal,)*) => {
        $(
            $(#[$doc])*
            /// The command line overrides it.
            pub fn $name(self, d: Duration) -> Self {
                self.option_default($arg, crate::cli::format_duration(d))
            }
        )*
    };
}

/// Builder methods that set the app's default of a numeric option.
macro_rules! number_defaults {
    ($($(#[$doc:meta])* $name:ident: $ty:ty => $arg:literal,)*) => {
        $(
            $(#[$doc])*
            /// The command line overrides it.
            pub fn $name(self, n: $ty) -> Self {
                self.option_default($arg, n.to_string())
            }
        )*
    };
}

/// For apps without flags of their own.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct NoArgs {}

/// The factory's future, type-erased.
pub(crate) type Factory<A> = Box<dyn FnOnce(A) -> Pin<Box<dyn Future<Output = Result<AppService, String>>>>>;

/// An app to run: name, defaults and production middleware switches. Start with
/// [`App::new`], finish with [`App::serve`].
///
/// Every serving option has a builder method that sets the app's default for it
/// ([`App::drain_timeout`], [`App::health_path`], ...); the command line always overrides it.
#[derive(Clone)]
pub struct App {
    name: Option<String>,
    default_listen: Vec<ListenSpec>,
    request_id: bool,
    catch_panic: bool,
    metrics: bool,
    idle_grace: Duration,
    ready_check: Option<crate::ready::Hook>,
    on_shutdown: Option<crate::ready::Hook>,
    version: Option<String>,
    about: Option<String>,
    /// Defaults of serving options set by the app (`--drain-timeout` ...), by clap argument id.
    option_defaults: Vec<(&'static str, String)>,
    /// Builder mistakes, reported when the app runs.
    errors: Vec<String>,
    /// The app's own subcommands and what runs them.
    commands: Vec<(clap::Command, CommandFn)>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("name", &self.name)
            .field("default_listen", &self.default_listen)
            .field("request_id", &self.request_id)
            .field("catch_panic", &self.catch_panic)
            .field("metrics", &self.metrics)
            .field("idle_grace", &self.idle_grace)
            .field("ready_check", &self.ready_check.is_some())
            .field("on_shutdown", &self.on_shutdown.is_some())
            .field("version", &self.version)
            .field("about", &self.about)
            .field("option_defaults", &self.option_defaults)
            .field("errors", &self.errors)
            .field("commands", &self.commands.iter().map(|(c, _)| c.get_name().to_owned()).collect::<Vec<_>>())
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
            metrics: true,
            idle_grace: Duration::from_secs(1),
            ready_check: None,
            on_shutdown: None,
            version: None,
            about: None,
            option_defaults: Vec::new(),
            errors: Vec::new(),
            commands: Vec::new(),
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

    /// Where to listen when no `--listen` is given: one address or several separated by commas
    /// (`"0.0.0.0:80, [::]:80"`), each as `--listen` takes it. Default is `0.0.0.0:8080`. A bad
    /// address is reported when the app runs (exit 2), like a bad command line.
    pub fn default_listen(mut self, addrs: &str) -> Self {
        let parsed: std::result::Result<Vec<ListenSpec>, String> =
            addrs.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::parse).collect();
        match parsed {
            Ok(v) if !v.is_empty() => self.default_listen = v,
            Ok(_) => self.errors.push(format!("default_listen({addrs:?}): no address")),
            Err(e) => self.errors.push(format!("default_listen: {e}")),
        }
        self
    }

    /// Sets the app's default of a serving option (what applies when the command line does not
    /// give it); the command line always overrides it.
    fn option_default(mut self, arg: &'static str, value: String) -> Self {
        self.option_defaults.retain(|(a, _)| *a != arg);
        self.option_defaults.push((arg, value));
        self
    }

    duration_defaults! {
        /// `--drain-timeout`: how long a shutdown or reload lets in-flight requests finish (above
        /// zero).
        drain_timeout => "drain_timeout",
        /// `--drain-spread`: long-lived connections close at random moments within this long.
        drain_spread => "drain_spread",
        /// `--ready-timeout`: how long a new worker may take to report ready (above zero).
        ready_timeout => "ready_timeout",
        /// `--shutdown-delay`: on TERM, answer 503 on the health route and serve this long first.
        shutdown_delay => "shutdown_delay",
        /// `--probation`: how long a reload's new binary is on probation.
        probation => "probation",
        /// `--watchdog`: a serving worker silent this long is replaced (zero: off).
        watchdog => "watchdog",
        /// `--request-timeout`: a response not started after this long becomes a 503 (zero: off).
        request_timeout => "request_timeout",
        /// `--header-timeout`: first byte and request head (zero: off).
        header_timeout => "header_timeout",
        /// `--idle-timeout`: an idle connection is closed after this long (zero: off).
        idle_timeout => "idle_timeout",
        /// `--body-timeout`: after this long a request body must keep up 1 KiB/s (zero: off).
        body_timeout => "body_timeout",
        /// `--send-timeout`: a client that accepts no response bytes this long is cut (zero: off).
        send_timeout => "send_timeout",
    }

    number_defaults! {
        /// `--max-draining`: generations draining at once.
        max_draining: u32 => "max_draining",
        /// `--max-header-bytes`: the largest request head.
        max_header_bytes: u32 => "max_header_bytes",
        /// `--max-headers`: the most header fields in an HTTP/1 request.
        max_headers: u32 => "max_headers",
        /// `--max-body-bytes`: the largest request body (`u64::MAX`: no limit).
        max_body_bytes: u64 => "max_body_bytes",
    }

    /// `--health-path`: the health route (200, 503 once shutting down). Default: none.
    pub fn health_path(self, path: &str) -> Self {
        self.option_default("health_path", path.to_owned())
    }

    /// `--health-log`: `false` leaves the health route's answers out of the access log.
    /// Default: `true`.
    pub fn health_log(self, on: bool) -> Self {
        self.option_default("health_log", if on { "on" } else { "off" }.to_owned())
    }

    /// `--ready-probe`: the request each new worker sends through its app before it is ready.
    pub fn ready_probe(self, path: &str) -> Self {
        self.option_default("ready_probe", path.to_owned())
    }

    /// `--trusted-proxy`: the load balancers or proxies whose `X-Forwarded-For` the access log
    /// and [`crate::ClientIp`] believe, separated by commas (`"10.0.0.0/8, unix"`). Default: none.
    pub fn trusted_proxies(self, list: &str) -> Self {
        self.option_default("trusted_proxy", list.to_owned())
    }

    /// `--access-log`: `combined`, `json` or `off`. Default: `combined`.
    pub fn access_log(self, format: &str) -> Self {
        self.option_default("access_log", format.to_owned())
    }

    /// `--tls-cert` and `--tls-key`: TLS on every TCP listener (relative paths are taken from
    /// the directory the app is started in). Default: none.
    pub fn tls(self, cert: &str, key: &str) -> Self {
        self.option_default("tls_cert", cert.to_owned()).option_default("tls_key", key.to_owned())
    }

    /// Whether to set an `x-request-id` on every request and response (keeping a sane one
    /// sent by the client). Default is on.
    pub fn request_id(mut self, on: bool) -> Self {
        self.request_id = on;
        self
    }

    /// Whether workers count requests and connections (for `--metrics-listen` and `status`).
    /// Default is on; off, the metrics show only the master's own counters.
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
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

    /// A subcommand of the app's own (`myapp migrate --to 3`): `run` gets its matches and
    /// returns the exit code; it runs in the calling process, with no server. Its name must
    /// not be one of baton's (`run`, `start`, `stop`, `reload`, `status`, `reopen-logs`): that
    /// is reported when the app runs (exit 2).
    pub fn command(mut self, cmd: clap::Command, run: impl Fn(&clap::ArgMatches) -> ExitCode + 'static) -> Self {
        if cli::SUBCOMMANDS.contains(&cmd.get_name()) {
            self.errors.push(format!("the app's subcommand {:?} is one of baton's", cmd.get_name()));
        } else {
            self.commands.push((cmd, std::sync::Arc::new(run)));
        }
        self
    }

    /// A clean end for the app: `hook` runs in each worker after its drain (or at its drain
    /// timeout) and before the runtime is dropped, so pools close and exporters flush. It gets
    /// `--drain-timeout` to finish; an error is logged. A second shutdown request (TERM, INT,
    /// or QUIT) abandons it: the worker exits at once. Default: none.
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
        let own: Vec<&str> = self.commands.iter().map(|(c, _)| c.get_name()).collect();
        let argv: Vec<OsString> = cli::with_default_subcommand(std::env::args_os().collect(), &own);
        if !self.errors.is_empty() {
            baton_supervise::errln!("{name}: {}", self.errors.join("; "));
            return ExitCode::from(2);
        }
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
            cmd = cmd.mut_subcommand(sub, |mut c| {
                c = c.mut_arg("listen", |a| a.help(help));
                for (arg, value) in &self.option_defaults {
                    c = c.mut_arg(*arg, |a| a.default_value(value.clone()));
                }
                c
            });
        }
        for (c, _) in &self.commands {
            cmd = cmd.subcommand(c.clone());
        }
        let matches = cmd.try_get_matches_from(&argv);
        if let Ok((sub, sub_matches)) = matches.as_ref().map(|m| m.subcommand().unwrap_or(("", m))) {
            if let Some((_, run)) = self.commands.iter().find(|(c, _)| c.get_name() == sub) {
                return run(sub_matches);
            }
        }
        let parsed = matches.and_then(|m| cli::Cli::<A>::from_arg_matches(&m));
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
            cli::Command::Status(s) => s.control.run(&name, if s.json { Command::StatusJson } else { Command::Status }),
            cli::Command::ReopenLogs(c) => c.run(&name, Command::ReopenLogs),
        };
        match result {
            Ok(code) => code,
            Err(e) => {
                baton_supervise::errln!("{name}: {e:#}");
                // A `start` whose daemon failed once detached returns now: the line is in the
                // log and the daemon's files are gone.
                baton_supervise::master::tell_start_failed(&format!("{e:#}"));
                ExitCode::from(e.exit_code())
            }
        }
    }

    fn hooks(&self) -> worker::Hooks {
        worker::Hooks {
            ready_check: self.ready_check.clone(),
            on_shutdown: self.on_shutdown.clone(),
            version: self.version.clone(),
        }
    }

    fn serve_command<A: clap::Args + 'static>(
        &self,
        name: &str,
        s: cli::ServeArgs<A>,
        daemon: bool,
        factory: Factory<A>,
    ) -> Result<ExitCode> {
        let opts = s.opts;
        let listen = ListenSpecs {
            given: opts.listen.clone(),
            default: self.default_listen.clone(),
            extra: opts.metrics_listen.iter().cloned().collect(),
        };
        for (flag, path) in [("--health-path", &opts.health_path), ("--ready-probe", &opts.ready_probe)] {
            if let Some(p) = path {
                if !p.starts_with('/') || p.parse::<http::Uri>().is_err() {
                    return Err(Error::usage(format!("invalid {flag} {p:?}: must be a path starting with /")));
                }
                // The health route is matched on the request's path alone: with a query, it
                // would never answer, and the app's 404 would look like a failing health check.
                if flag == "--health-path" && p.contains('?') {
                    return Err(Error::usage(format!(
                        "invalid {flag} {p:?}: a path without a query (the route matches the path alone)"
                    )));
                }
            }
        }
        // Given on the command line (an app's own default may say off for a path the command
        // line leaves out), `--health-log off` with no health route would do nothing.
        let health_log_from_app = self.option_defaults.iter().any(|(a, v)| *a == "health_log" && v == "off");
        if opts.health_log == cli::OnOff::Off && opts.health_path.is_none() && !health_log_from_app {
            return Err(Error::usage(
                "--health-log off: there is no health route to leave out of the access log (give --health-path too)",
            ));
        }
        #[cfg(not(feature = "tls"))]
        if opts.tls_cert.is_some() {
            return Err(Error::usage("--tls-cert: this build has no TLS support (cargo feature `tls`)"));
        }
        refuse_tls_without_tcp(opts.tls_cert.as_deref(), &self.option_defaults, &listen.effective())?;
        let http = service::HttpConfig {
            access_log: opts.access_log,
            request_id: self.request_id,
            catch_panic: self.catch_panic,
            metrics: self.metrics,
            request_timeout: Some(opts.request_timeout).filter(|d| !d.is_zero()),
            header_timeout: opts.header_timeout,
            idle_timeout: Some(opts.idle_timeout).filter(|d| !d.is_zero()),
            body_timeout: Some(opts.body_timeout).filter(|d| !d.is_zero()),
            send_timeout: Some(opts.send_timeout).filter(|d| !d.is_zero()),
            max_header_bytes: opts.max_header_bytes as usize,
            max_headers: opts.max_headers as usize,
            max_body_bytes: opts.max_body_bytes,
            health_path: opts.health_path.clone(),
            health_log: opts.health_log == crate::cli::OnOff::On,
            drain_timeout: opts.drain_timeout,
            shutdown_delay: opts.shutdown_delay,
            idle_grace: self.idle_grace,
            drain_spread: opts.drain_spread()?,
            tcp_nodelay: opts.tcp_nodelay,
            trusted: service::Trusted(opts.trusted_proxy.clone()),
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
        baton_supervise::master::run(opts.master_config(name, daemon, listen, self.on_shutdown.is_some())?)
    }
}

/// `--tls-cert` given (not set in code, [`App::tls`]) with no TCP listener would serve nothing
/// over TLS: unix sockets stay plain. TLS set in code with an operator's unix-only `--listen` is
/// served plain, as documented.
fn refuse_tls_without_tcp(
    cert: Option<&std::path::Path>,
    option_defaults: &[(&'static str, String)],
    listen: &[baton_supervise::listen::ListenSpec],
) -> Result<()> {
    let Some(cert) = cert else { return Ok(()) };
    let from_app = option_defaults.iter().any(|(arg, v)| *arg == "tls_cert" && cert == std::path::Path::new(v));
    if from_app || listen.iter().any(|l| matches!(l.addr, baton_supervise::listen::ListenAddr::Tcp(_))) {
        return Ok(());
    }
    Err(Error::usage("--tls-cert: every listener is a unix socket, which stays plain: TLS needs a TCP one"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_listen_takes_several_addresses_and_keeps_a_bad_one_as_an_error() {
        let app = App::new().default_listen("127.0.0.1:80, [::1]:80 ,unix:/run/x.sock");
        assert_eq!(app.default_listen.len(), 3);
        assert!(app.errors.is_empty());
        let app = App::new().default_listen("127.0.0.1:80, nowhere");
        assert_eq!(app.errors.len(), 1, "{:?}", app.errors);
        assert!(app.errors[0].contains("nowhere"), "{:?}", app.errors);
        assert_eq!(App::new().default_listen(" , ").errors.len(), 1);
    }

    #[test]
    fn tls_given_with_only_unix_listeners_is_refused_unless_set_in_code() {
        let spec = |s: &str| s.parse::<baton_supervise::listen::ListenSpec>().unwrap();
        let (unix, tcp) = (vec![spec("unix:/run/x.sock")], vec![spec("unix:/run/x.sock"), spec("127.0.0.1:1")]);
        let cert = Some(std::path::Path::new("c.pem"));
        let err = refuse_tls_without_tcp(cert, &[], &unix).unwrap_err();
        assert!(err.to_string().contains("every listener is a unix socket"), "{err}");
        assert!(refuse_tls_without_tcp(cert, &[], &tcp).is_ok());
        assert!(refuse_tls_without_tcp(None, &[], &unix).is_ok());
        // `App::tls("c.pem", ..)`: served plain on the unix socket, as documented.
        assert!(refuse_tls_without_tcp(cert, &[("tls_cert", "c.pem".to_owned())], &unix).is_ok());
        // A different file given on the command line is the operator's.
        let other = Some(std::path::Path::new("other.pem"));
        assert!(refuse_tls_without_tcp(other, &[("tls_cert", "c.pem".to_owned())], &unix).is_err());
    }

    #[test]
    fn option_defaults_replace_each_other() {
        let app = App::new().drain_timeout(Duration::from_secs(1)).drain_timeout(Duration::from_millis(1500));
        assert_eq!(app.option_defaults, vec![("drain_timeout", "1500ms".to_owned())]);
        // Regression: written as whole milliseconds, a default under one was `0ms`, which
        // turns a timeout off.
        let app = App::new().request_timeout(Duration::from_micros(250)).drain_timeout(Duration::from_secs(7));
        assert_eq!(
            app.option_defaults,
            vec![("request_timeout", "0.25ms".to_owned()), ("drain_timeout", "7s".to_owned())]
        );
    }
}
