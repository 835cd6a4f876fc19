//! The worker: the process that runs the user's app. Started by the master (sockets passed as
//! fds 3.. with `LISTEN_FDS`, readiness sent to the master's `NOTIFY_SOCKET`), or alone with
//! `--no-master` (binds itself, or adopts systemd's sockets).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use crate::cli::ServeOpts;
use crate::error::{Error, ErrorKind, Result};
use crate::notify::Notifier;
use crate::serve::{Listener, Server};
use crate::service::{HttpConfig, Shared};
use crate::{Factory, listen, log, sys};

/// Environment variables the master sets for its workers.
pub(crate) const ENV_WORKER: &str = "BATON_WORKER";
pub(crate) const ENV_LOG: &str = "BATON_LOG";
/// `--tls-cert` and `--tls-key` made absolute by the master (a daemon's workers run in `/`).
pub(crate) const ENV_TLS_CERT: &str = "BATON_TLS_CERT";
pub(crate) const ENV_TLS_KEY: &str = "BATON_TLS_KEY";

/// How this worker was started.
#[derive(Debug)]
pub(crate) enum WorkerRole {
    /// By a master: `BATON_WORKER=<master pid>:<generation>`.
    UnderMaster { master: i32, generation: u64, log: Option<PathBuf>, tls: Option<(PathBuf, PathBuf)> },
    /// `--no-master`: one process does everything.
    Single,
}

impl WorkerRole {
    pub(crate) fn from_env() -> Result<Option<WorkerRole>> {
        let Some(v) = std::env::var_os(ENV_WORKER) else {
            return Ok(None);
        };
        let log = std::env::var_os(ENV_LOG).map(Into::into);
        let tls = std::env::var_os(ENV_TLS_CERT).map(PathBuf::from).zip(std::env::var_os(ENV_TLS_KEY).map(Into::into));
        sys::remove_env(&[ENV_WORKER, ENV_LOG, ENV_TLS_CERT, ENV_TLS_KEY]);
        let parsed =
            v.to_str().and_then(|s| s.split_once(':')).and_then(|(m, g)| Some((m.parse().ok()?, g.parse().ok()?)));
        let (master, generation) =
            parsed.ok_or_else(|| Error::usage(format!("invalid {ENV_WORKER} {v:?}: expected <pid>:<generation>")))?;
        Ok(Some(WorkerRole::UnderMaster { master, generation, log, tls }))
    }
}

/// How the serving loop ended.
enum Stop {
    Graceful,
    /// A newer generation serves (USR2 from the master): drain at once, no shutdown delay.
    Replaced,
    Fast,
}

pub(crate) fn main<A>(
    role: WorkerRole,
    opts: ServeOpts,
    http: HttpConfig,
    args: A,
    factory: Factory<A>,
) -> Result<ExitCode> {
    let notifier = Notifier::from_env().map_err(|e| Error::io(ErrorKind::Io, "NOTIFY_SOCKET", e))?;
    let result = serve(role, opts, http, args, factory, notifier.as_ref());
    if let (Err(e), Some(n)) = (&result, &notifier) {
        // The master (or systemd) shows this with the exit status: `start` and `reload` then
        // print the reason itself, not just "exited with status 1".
        let _ = n.send(&format!("STATUS={}", e.to_string().replace('\n', " ")));
    }
    result
}

fn serve<A>(
    role: WorkerRole,
    opts: ServeOpts,
    mut http: HttpConfig,
    args: A,
    factory: Factory<A>,
    notifier: Option<&Notifier>,
) -> Result<ExitCode> {
    let under_master = matches!(role, WorkerRole::UnderMaster { .. });
    let log_path = match &role {
        WorkerRole::UnderMaster { log, .. } => log.clone(),
        WorkerRole::Single => match &opts.log {
            Some(p) => {
                let p = std::path::absolute(p)
                    .map_err(|e| Error::io(ErrorKind::Io, format!("log file {}", p.display()), e))?;
                log::reopen(&p)
                    .map_err(|e| Error::io(ErrorKind::Io, format!("cannot open log file {}", p.display()), e))?;
                Some(p)
            }
            None => None,
        },
    };
    log::init("worker");
    let listeners = match listen::take_inherited()? {
        Some(l) if under_master => l,
        None if under_master => {
            return Err(Error::new(ErrorKind::Listen, "started as a worker without LISTEN_FDS"));
        }
        inherited => listen::resolve(&opts.listen, inherited)?,
    };
    // Before the privilege drop: the key is often readable by root only.
    let tls = match &role {
        WorkerRole::UnderMaster { tls, .. } => tls.clone(),
        WorkerRole::Single => opts.tls_cert.clone().zip(opts.tls_key.clone()),
    };
    http.tls = tls.map(|(cert, key)| crate::tls::load(&cert, &key)).transpose()?;
    if let Some(user) = &opts.user {
        let (uid, gid) = crate::master::lookup_user(user, opts.group.as_deref())?;
        sys::drop_privileges(user, uid, gid)
            .map_err(|e| Error::io(ErrorKind::Io, format!("cannot switch to user {user}"), e))?;
    }
    if let WorkerRole::UnderMaster { master, .. } = role {
        // After the privilege drop: changing credentials clears the parent-death signal.
        sys::die_with_parent(libc::SIGTERM, master)
            .map_err(|e| Error::io(ErrorKind::Worker, format!("master {master}"), e))?;
    }
    let generation = match role {
        WorkerRole::UnderMaster { generation, .. } => generation,
        WorkerRole::Single => 1,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io(ErrorKind::Io, "cannot start the tokio runtime", e))?;
    let result = rt.block_on(run(listeners, http, args, factory, notifier, log_path, generation, under_master));
    // Connections cut at the deadline are dropped with the runtime; do not wait for them.
    rt.shutdown_background();
    log::flush_access_log();
    result
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename these
async fn run<A>(
    listeners: Vec<listen::Bound>,
    http: HttpConfig,
    args: A,
    factory: Factory<A>,
    notifier: Option<&Notifier>,
    log_path: Option<std::path::PathBuf>,
    generation: u64,
    under_master: bool,
) -> Result<ExitCode> {
    let notify = |msg: &str| {
        if let Some(n) = notifier {
            if let Err(e) = n.send(msg) {
                tracing::warn!("cannot notify {msg:?}: {e}");
            }
        }
    };
    let sig = |k: SignalKind| signal(k).map_err(|e| Error::io(ErrorKind::Io, "cannot install signal handlers", e));
    let (mut term, mut int, mut quit) =
        (sig(SignalKind::terminate())?, sig(SignalKind::interrupt())?, sig(SignalKind::quit())?);
    let (mut usr1, mut usr2, mut hup) =
        (sig(SignalKind::user_defined1())?, sig(SignalKind::user_defined2())?, sig(SignalKind::hangup())?);

    let names: Vec<String> = listeners.iter().map(|b| b.describe()).collect();
    let app = match factory(args).await {
        Ok(app) => app.0,
        Err(e) => {
            tracing::error!("app failed to start: {e}");
            notify(&format!("STATUS=app failed to start: {e}"));
            return Ok(ExitCode::from(1));
        }
    };
    let listeners = listeners
        .into_iter()
        .map(Listener::from_bound)
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| Error::io(ErrorKind::Listen, "cannot register listener", e))?;
    let tls_note = if http.tls.is_some() { " (TLS on TCP listeners)" } else { "" };
    let shared = Arc::new(Shared::new(http));
    let mut server = Server::start(listeners, app, shared.clone());
    let (rx, weak) = server.drain_signal();
    crate::shutdown::install(rx, weak);
    tracing::info!("generation {generation} serving on {}{tls_note}", names.join(", "));
    notify(&format!("READY=1\nSTATUS=generation {generation} serving"));

    let stop = loop {
        tokio::select! {
            _ = term.recv() => break Stop::Graceful,
            _ = int.recv() => break Stop::Graceful,
            _ = quit.recv() => break Stop::Fast,
            _ = usr1.recv() => reopen(log_path.as_deref()),
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
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = term.recv() => return Ok(now("TERM")),
            _ = int.recv() => return Ok(now("INT")),
            _ = quit.recv() => return Ok(now("QUIT")),
        }
    }
    server.stop_accepting().await;
    // Tells the master this process takes no new connection: a reload is complete.
    notify(&format!("STATUS={}", crate::notify::STATUS_DRAINING));
    let timeout = shared.cfg.drain_timeout;
    tracing::info!("draining (at most {timeout:?})");
    let started = std::time::Instant::now();
    tokio::select! {
        _ = server.drain() => tracing::info!("drained in {:?}", started.elapsed()),
        _ = tokio::time::sleep(timeout) => tracing::warn!("drain timeout {timeout:?} reached: cutting remaining connections"),
        _ = term.recv() => return Ok(now("TERM")),
        _ = int.recv() => return Ok(now("INT")),
        _ = quit.recv() => return Ok(now("QUIT")),
    }
    Ok(ExitCode::SUCCESS)
}

fn now(sig: &str) -> ExitCode {
    tracing::warn!("{sig} while draining: exiting now");
    ExitCode::SUCCESS
}

fn reopen(path: Option<&std::path::Path>) {
    if let Some(p) = path {
        // Lines logged before the rotation belong in the old file.
        log::flush_access_log();
        match log::reopen(p) {
            Ok(()) => tracing::info!("reopened log file {}", p.display()),
            Err(e) => tracing::error!("cannot reopen log file {}: {e}", p.display()),
        }
    }
}

fn reload_unsupported(under_master: bool) {
    if !under_master {
        tracing::warn!("reload ignored: --no-master runs without a master, which does reloads");
    }
}
