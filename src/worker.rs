//! The worker: the process that runs the user's app. Started by the master (sockets passed as
//! fds 3.. with `LISTEN_FDS`, readiness sent to the master's `NOTIFY_SOCKET`), or alone with
//! `--no-master` (binds itself, or adopts systemd's sockets).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use baton_supervise::handoff::Message;
use baton_supervise::listen::{self, Bound, ListenSpecs};
use baton_supervise::worker::{self as supervised, Handoff};
use baton_supervise::{Error, ErrorKind, Notifier, Result};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::app::Factory;
use crate::cli::ServeOpts;
use crate::serve::{Listener, Server};
use crate::service::{HttpConfig, Shared};

/// How this worker was started.
#[derive(Debug)]
pub(crate) enum Role {
    /// By a master, which handed over the listeners.
    UnderMaster(Handoff),
    /// `--no-master`: one process does everything, listening where told (or on the sockets
    /// systemd passed, taken before anything else was opened).
    Single(ListenSpecs, Option<Vec<Bound>>),
}

/// The app's own code around the serving: a readiness check and a shutdown hook.
pub(crate) struct Hooks {
    pub(crate) ready_check: Option<crate::ready::Hook>,
    pub(crate) on_shutdown: Option<crate::ready::Hook>,
    /// The app's version, for `status` and `reload`.
    pub(crate) version: Option<String>,
}

/// What decides when this worker is ready, and keeps telling the master it is alive.
pub(crate) struct Readiness {
    pub(crate) check: Option<crate::ready::Hook>,
    pub(crate) probe: Option<String>,
    pub(crate) watchdog: Option<Duration>,
    /// What this worker runs, sent with its readiness.
    pub(crate) info: Option<String>,
}

/// How the serving loop ended.
enum Stop {
    Graceful,
    /// A newer generation serves (USR2 from the master): drain at once, no shutdown delay.
    Replaced,
    Fast,
}

pub(crate) fn main<A>(
    role: Role,
    opts: ServeOpts,
    http: HttpConfig,
    args: A,
    factory: Factory<A>,
    hooks: Hooks,
) -> Result<ExitCode> {
    let notifier = supervised::notifier()?.map(Arc::new);
    if let Some(n) = notifier.clone() {
        // A panic in the app's start-up (or anywhere) reaches `start`/`reload` as the worker's
        // last words, not only as "exited with status 101".
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = n.send(&Message::status(&format!("panicked: {info}")));
            default(info);
        }));
    }
    let result = serve(role, opts, http, args, factory, hooks, notifier.clone());
    if let Some(n) = &notifier {
        // Lines this worker could not write (a full disk) and has not said so yet: its master
        // says so for it, in its own note, once it can write again.
        let lost = baton_supervise::log::take_unreported();
        if lost > 0 && n.send(&Message::log_lost(lost)).is_err() {
            baton_supervise::log::count_lost(lost);
        }
    }
    if let (Err(e), Some(n)) = (&result, &notifier) {
        // The master (or systemd) shows this with the exit status: `start` and `reload` then
        // print the reason itself, not just "exited with status 1".
        let _ = n.send(&Message::status(&format!("{e:#}")));
    }
    result
}

fn serve<A>(
    role: Role,
    opts: ServeOpts,
    #[allow(unused_mut)] // set only with the `tls` feature
    mut http: HttpConfig,
    args: A,
    factory: Factory<A>,
    hooks: Hooks,
    notifier: Option<Arc<Notifier>>,
) -> Result<ExitCode> {
    let under_master = matches!(role, Role::UnderMaster(_));
    let watchdog = match &role {
        Role::UnderMaster(h) => h.watchdog,
        Role::Single(..) => None,
    };
    let mut metrics_note = None;
    let mut socket_files = SocketFiles(Vec::new());
    let (listeners, log_path, generation, master, shared_metrics) = match role {
        Role::UnderMaster(h) => {
            let shared = match h.metrics {
                Some(Ok(m)) => Some(m),
                Some(Err(e)) => {
                    metrics_note = Some(e);
                    None
                }
                None => None,
            };
            (h.listeners, h.log, h.generation, Some(h.master), shared)
        }
        Role::Single(specs, inherited) => {
            let log_path = match &opts.log {
                Some(p) => {
                    let p = std::path::absolute(p)
                        .map_err(|e| Error::io(ErrorKind::Io, format!("log file {}", p.display()), e))?;
                    baton_supervise::log::reopen(&p)
                        .map_err(|e| Error::io(ErrorKind::Io, format!("cannot open log file {}", p.display()), e))?;
                    Some(p)
                }
                None => None,
            };
            let mut bound = listen::resolve(&specs, inherited)?;
            // Removed when this process ends, whatever ends it.
            socket_files.0 = bound.iter_mut().filter_map(|b| b.unix_path.take()).collect();
            if let Some(user) = &opts.user {
                supervised::give_sockets(socket_files.0.iter().map(|p| p.as_path()), user, opts.group.as_deref())?;
            }
            (bound, log_path, 1, None, None)
        }
    };
    baton_supervise::log::init("worker");
    if let Some(e) = metrics_note {
        tracing::warn!("counting in this worker's own memory: {e}");
    }
    let metrics = crate::metrics::Metrics::new(shared_metrics);
    let (region, slot) = metrics.place();
    crate::app_metrics::serve_from(region, slot);
    // Before the privilege drop: the key is often readable by root only.
    #[cfg(feature = "tls")]
    let tls_cert = match opts.tls_paths(under_master) {
        Some((cert, key)) => {
            let loaded = crate::tls::load(&cert, &key)?;
            http.tls = Some(loaded.config);
            if let Some(w) = loaded.validity.and_then(|v| v.warning(&cert, crate::tls::now())) {
                tracing::warn!("{w}");
            }
            loaded.validity.map(|v| (cert, v))
        }
        None => None,
    };
    if let Some(user) = &opts.user {
        supervised::drop_privileges(user, opts.group.as_deref())?;
        // The master's socket, reached as this user: failing, this worker could never say it
        // is ready, and the master would wait out its ready timeout to learn nothing.
        if let Some(n) = notifier.as_deref().filter(|_| under_master) {
            n.check_reachable().map_err(|e| {
                let at = n.path().map_or_else(|| "?".into(), |p| p.display().to_string());
                Error::io(
                    ErrorKind::Io,
                    format!("user {user} cannot reach the master's notify socket {at}: every directory above it (TMPDIR) must let it in"),
                    e,
                )
            })?;
        }
    }
    if let Some(master) = master {
        // After the privilege drop: changing credentials clears the parent-death signal.
        supervised::die_with_master(master)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io(ErrorKind::Io, "cannot start the tokio runtime", e))?;
    // Read before the factory runs (which may parse it); a failure fails this start.
    let config = opts.config_path(under_master).map(crate::load_config).transpose()?;
    let info = {
        let mut parts = Vec::new();
        if let Some(v) = &hooks.version {
            parts.push(format!("version {v}"));
        }
        if let Some(c) = config {
            parts.push(format!("config {} ({} bytes)", c.path.display(), c.text.len()));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    };
    let readiness = Readiness { check: hooks.ready_check, probe: opts.ready_probe.clone(), watchdog, info };
    let on_shutdown = hooks.on_shutdown;
    let version = hooks.version.clone().unwrap_or_else(|| "unknown".to_owned());
    let run = Run {
        listeners,
        http,
        args,
        factory,
        notifier,
        log_path,
        generation,
        under_master,
        readiness,
        on_shutdown,
        metrics,
        version,
        #[cfg(feature = "tls")]
        tls_cert,
    };
    let result =
        rt.block_on(tracing::Instrument::instrument(run.serve(), baton_supervise::log::process_span("worker")));
    // Connections cut at the deadline are dropped with the runtime (their requests not logged
    // as their clients' doing). The wait is for those drops, not for the connections: a
    // response cut mid-body writes its log line as it is dropped, on a runtime thread, and the
    // line must be queued before the flush below (with `shutdown_background`, which returns at
    // once, 40 cut downloads lost all 40 lines in 2 of 4 runs). Bounded: blocking tasks the
    // app left running are waited for no longer than this, well within the master's grace.
    crate::service::cutting_in_flight();
    rt.shutdown_timeout(RUNTIME_EXIT_WAIT);
    crate::access_log::flush();
    result
}

/// The unix socket files a process without a master bound: removed when it ends, as the
/// master removes its own.
struct SocketFiles(Vec<std::path::PathBuf>);

impl Drop for SocketFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            match std::fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => tracing::warn!(
                    "cannot remove socket file {} (the next start replaces it): {}",
                    p.display(),
                    baton_supervise::describe_io(&e)
                ),
                _ => {}
            }
        }
    }
}

/// How long a worker's exit waits for its runtime's threads (the end of [`serve`]); the master
/// kills a worker told to stop now after 2 s.
const RUNTIME_EXIT_WAIT: Duration = Duration::from_millis(500);

/// Everything the serving part of a worker needs.
struct Run<A> {
    listeners: Vec<Bound>,
    http: HttpConfig,
    args: A,
    factory: Factory<A>,
    notifier: Option<Arc<Notifier>>,
    log_path: Option<std::path::PathBuf>,
    generation: u64,
    under_master: bool,
    readiness: Readiness,
    on_shutdown: Option<crate::ready::Hook>,
    metrics: crate::metrics::Metrics,
    version: String,
    /// The TLS certificate's path and validity, when it could be read.
    #[cfg(feature = "tls")]
    tls_cert: Option<(std::path::PathBuf, crate::tls::Validity)>,
}

impl<A> Run<A> {
    async fn serve(self) -> Result<ExitCode> {
        let Run {
            listeners,
            http,
            args,
            factory,
            notifier,
            log_path,
            generation,
            under_master,
            readiness,
            on_shutdown,
            metrics,
            version,
            #[cfg(feature = "tls")]
            tls_cert,
        } = self;
        let notify = |msg: &str| {
            if let Some(n) = &notifier {
                if let Err(e) = n.send(msg) {
                    tracing::warn!("cannot notify {msg:?}: {e}");
                }
            }
        };
        let sig = |k: SignalKind| signal(k).map_err(|e| Error::io(ErrorKind::Io, "cannot install signal handlers", e));
        let mut sigs = Signals {
            term: sig(SignalKind::terminate())?,
            int: sig(SignalKind::interrupt())?,
            alone: !under_master,
            quit: sig(SignalKind::quit())?,
            usr1: sig(SignalKind::user_defined1())?,
            log: log_path,
            notifier: notifier.clone(),
        };
        let (mut usr2, mut hup) = (sig(SignalKind::user_defined2())?, sig(SignalKind::hangup())?);

        let names: Vec<String> = listeners.iter().map(|b| b.describe()).collect();
        let metrics_at = listeners.iter().position(|b| b.name == listen::METRICS_LISTENER);
        let exposition = Arc::new(crate::metrics::Exposition {
            metrics,
            listeners: Bound::labels(&listeners),
            // Copies for the accept queues' lengths (dropped when the drain starts).
            sockets: std::sync::Mutex::new(listeners.iter().map(|b| b.fd.try_clone().ok()).collect()),
            version,
            binary: std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_default(),
            #[cfg(feature = "tls")]
            tls_not_after: tls_cert.as_ref().map(|(_, v)| v.not_after),
            #[cfg(not(feature = "tls"))]
            tls_not_after: None,
        });
        let app = match sigs.unless_stopped(factory(args)).await {
            Err(sig) => return Ok(start_abandoned(sig)),
            Ok(Ok(app)) => app,
            Ok(Err(e)) => {
                tracing::error!("app failed to start: {e}");
                notify(&Message::status(&format!("app failed to start: {e}")));
                return Ok(ExitCode::from(1));
            }
        };
        let listeners = listeners
            .into_iter()
            .map(Listener::from_bound)
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| Error::io(ErrorKind::Listen, "cannot register listener", e))?;
        // The certificate's expiry, in the serving line and in what `status` and `reload`
        // show of this generation (a renewal's reload shows the new date).
        #[cfg(feature = "tls")]
        let tls_valid = tls_cert.as_ref().map(|(_, v)| {
            let verb = if v.not_after < crate::tls::now() { "expired at" } else { "valid until" };
            format!("certificate {verb} {}", crate::tls::date(v.not_after))
        });
        #[cfg(feature = "tls")]
        let (tls_note, info) = match &tls_valid {
            _ if http.tls.is_none() || !listeners.iter().any(|l| matches!(l, Listener::Tcp(_))) => {
                (String::new(), readiness.info.clone())
            }
            Some(valid) => {
                let info = match &readiness.info {
                    Some(i) => format!("{i}; TLS {valid}"),
                    None => format!("TLS {valid}"),
                };
                (format!(" (TLS on TCP listeners, {valid})"), Some(info))
            }
            None => (" (TLS on TCP listeners)".to_owned(), readiness.info.clone()),
        };
        #[cfg(not(feature = "tls"))]
        let (tls_note, info) = ("", readiness.info.clone());
        let shared = Arc::new(Shared::new(http, metrics));
        // Before accepting anything: a worker that fails here has taken no connection.
        let gate = crate::ready::gate(readiness.check.as_ref(), readiness.probe.as_deref(), &app, &shared);
        match sigs.unless_stopped(gate).await {
            Err(sig) => return Ok(start_abandoned(sig)),
            Ok(Err(e)) => {
                tracing::error!("{e}");
                notify(&Message::status(&e));
                return Ok(ExitCode::from(1));
            }
            Ok(Ok(())) => {}
        }
        if let (Some(every), Some(n)) = (readiness.watchdog, notifier.clone()) {
            // From inside the runtime: a runtime too busy or blocked to run this is what the
            // master's watchdog is for.
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every / 3);
                loop {
                    tick.tick().await;
                    let conns = shared.open_conns.load(std::sync::atomic::Ordering::Relaxed);
                    let _ = n.send(&format!("{}\n{}", Message::HEARTBEAT, Message::conns(conns)));
                }
            });
        }
        #[cfg(feature = "tls")]
        if let Some((cert, v)) = tls_cert {
            // A worker can serve for months: the warning is repeated daily once it is due.
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(86_400)).await;
                    if let Some(w) = v.warning(&cert, crate::tls::now()) {
                        tracing::warn!("{w}");
                    }
                }
            });
        }
        let metrics_app = metrics_at.map(|i| (i as u16, crate::metrics::service(exposition.clone())));
        let mut server = Server::start(listeners, app, metrics_app, shared.clone());
        let (rx, weak) = server.drain_signal();
        crate::shutdown::install(rx, weak, shared.cfg.drain_spread);
        tracing::info!("generation {generation} serving on {}{tls_note}", names.join(", "));
        notify(&Message::ready(generation, info.as_deref()));

        let stop = loop {
            tokio::select! {
                _ = sigs.term.recv() => break Stop::Graceful,
                _ = sigs.int.recv(), if sigs.alone => break Stop::Graceful,
                _ = sigs.quit.recv() => break Stop::Fast,
                _ = sigs.usr1.recv() => sigs.reopen(),
                _ = usr2.recv() => {
                    if under_master {
                        break Stop::Replaced;
                    }
                    reload_unsupported(false);
                }
                _ = hup.recv() => reload_unsupported(under_master),
            }
        };
        if let Stop::Fast = stop {
            tracing::info!("fast shutdown");
            return Ok(ExitCode::SUCCESS);
        }
        notify("STOPPING=1");
        shared.unhealthy.store(true, std::sync::atomic::Ordering::SeqCst);
        let delay = if matches!(stop, Stop::Replaced) { Duration::ZERO } else { shared.cfg.shutdown_delay };
        if !delay.is_zero() {
            tracing::info!("shutting down: health route reports 503, serving {delay:?} more");
            if let Err(sig) = sigs.unless_hurried(tokio::time::sleep(delay)).await {
                return Ok(now(sig));
            }
        }
        server.stop_accepting().await;
        exposition.forget_listeners();
        metrics.draining();
        crate::shutdown::begin(match stop {
            Stop::Replaced => crate::DrainReason::Reload,
            _ => crate::DrainReason::Shutdown,
        });
        server.start_drain();
        // Tells the master this process takes no new connection and tells its clients to go
        // elsewhere: a reload is complete.
        notify(&Message::draining());
        let timeout = shared.cfg.drain_timeout;
        tracing::info!("draining (at most {timeout:?})");
        let started = std::time::Instant::now();
        if let Some(n) = notifier.clone() {
            // `status` shows what keeps this generation draining.
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut last = None;
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tick.tick().await;
                    let conns = shared.open_conns.load(std::sync::atomic::Ordering::Relaxed);
                    if last != Some(conns) {
                        let _ = n.send(&Message::conns(conns));
                        last = Some(conns);
                    }
                }
            });
        }
        let drained = server.drained();
        tokio::pin!(drained);
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut drained => {
                    tracing::info!("drained in {:?}", started.elapsed());
                    break;
                }
                _ = &mut deadline => {
                    tracing::warn!("drain timeout {timeout:?} reached: cutting remaining connections");
                    break;
                }
                // From the master: a reload waits for this generation's draining slot.
                _ = usr2.recv() => {
                    let open = shared.open_conns.load(std::sync::atomic::Ordering::Relaxed);
                    tracing::info!("a reload waits for this generation: closing long-lived connections now ({open} open)");
                    crate::shutdown::hurry();
                }
                _ = sigs.term.recv(), if sigs.alone => return Ok(now("TERM")),
                _ = sigs.int.recv(), if sigs.alone => return Ok(now("INT")),
                _ = sigs.quit.recv() => return Ok(now("QUIT")),
                // A long drain (WebSockets, slow requests) follows log rotation too.
                _ = sigs.usr1.recv() => sigs.reopen(),
            }
        }
        if let Some(hook) = on_shutdown {
            // `status` shows it: the drain is over, and what the worker still does is the app's.
            notify(&Message::hook());
            // A second shutdown request ("stop now") does not wait for the hook either.
            match sigs.unless_hurried(tokio::time::timeout(timeout, hook())).await {
                Ok(Ok(Ok(()))) => tracing::info!("shutdown hook done"),
                Ok(Ok(Err(e))) => tracing::error!("shutdown hook failed: {e}"),
                Ok(Err(_)) => tracing::warn!("shutdown hook still running after {timeout:?}: abandoned"),
                Err(sig) => tracing::warn!("{sig} while the shutdown hook runs: hook abandoned, exiting now"),
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The signals every phase of a worker's life answers: TERM and INT (INT only without a
/// master) stop it, and once it stops, QUIT (and without a master, TERM and INT again) ends
/// it now; USR1 reopens the log file (`log`).
struct Signals {
    term: Signal,
    /// Handled always (its default would end the process), acted on only when `alone`.
    int: Signal,
    /// No master (`--no-master`): this process takes its signals from the operator alone.
    ///
    /// Under a master, the master stops a worker with TERM and hurries it with QUIT (at its
    /// own second stop request), and the same signal often reaches the worker directly too:
    /// a terminal's Ctrl-C sends INT to the whole process group; `killall`, `pkill`,
    /// systemd's default `KillMode=control-group` and supervisord's `stopasgroup` send TERM
    /// to every process. Were the worker to act on those as well, one of the two would be
    /// its second stop request, "exit now", and cut the requests in flight that a graceful
    /// stop lets finish. So under a master a worker ignores INT (as Puma's cluster workers
    /// do), and once stopping, TERM too.
    alone: bool,
    quit: Signal,
    usr1: Signal,
    log: Option<std::path::PathBuf>,
    /// The master's notify socket: told when the log was reopened (`reopen-logs` waits for it).
    notifier: Option<Arc<Notifier>>,
}

impl Signals {
    /// Runs `work` to its end, reopening the log on USR1 meanwhile, unless a shutdown signal
    /// comes first, which is returned. So a stop does not wait for a slow start (a database
    /// that does not answer; under a master it would end in SIGKILL halfway through).
    async fn unless_stopped<T>(&mut self, work: impl Future<Output = T>) -> std::result::Result<T, &'static str> {
        self.until(work, true).await
    }

    /// [`Signals::unless_stopped`] for work done once stopping (the shutdown delay, the app's
    /// shutdown hook): only a request to hurry ends it (see [`Signals::alone`]), so that a
    /// stop in a hurry waits for neither.
    async fn unless_hurried<T>(&mut self, work: impl Future<Output = T>) -> std::result::Result<T, &'static str> {
        self.until(work, self.alone).await
    }

    /// Runs `work` unless QUIT, TERM (if `term`) or INT (if `term`, and without a master)
    /// comes first.
    async fn until<T>(&mut self, work: impl Future<Output = T>, term: bool) -> std::result::Result<T, &'static str> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return Ok(done),
                _ = self.term.recv(), if term => return Err("TERM"),
                _ = self.int.recv(), if term && self.alone => return Err("INT"),
                _ = self.quit.recv() => return Err("QUIT"),
                _ = self.usr1.recv() => self.reopen(),
            }
        }
    }

    fn reopen(&self) {
        let failed = reopen(self.log.as_deref());
        if let Some(n) = &self.notifier {
            let msg = Message::reopened(failed.as_deref());
            if let Err(e) = n.send(&msg) {
                tracing::warn!("cannot notify {msg:?}: {e}");
            }
        }
    }
}

fn start_abandoned(sig: &str) -> ExitCode {
    tracing::warn!("{sig} while the app was starting: start abandoned, exiting");
    ExitCode::SUCCESS
}

fn now(sig: &str) -> ExitCode {
    tracing::warn!("{sig} while draining: exiting now");
    ExitCode::SUCCESS
}

/// Reopens the log file, if there is one; why not, if it could not.
fn reopen(path: Option<&std::path::Path>) -> Option<String> {
    let p = path?;
    // Lines logged before the rotation belong in the old file.
    crate::access_log::flush();
    match baton_supervise::log::reopen(p) {
        Ok(()) => {
            tracing::info!("reopened log file {}", p.display());
            None
        }
        Err(e) => {
            let why = format!(
                "cannot reopen log file {}: {}; still logging to the old file",
                p.display(),
                baton_supervise::describe_io(&e)
            );
            tracing::error!("{why}");
            Some(why)
        }
    }
}

fn reload_unsupported(under_master: bool) {
    if !under_master {
        tracing::warn!("reload ignored: --no-master runs without a master, which does reloads");
    }
}
