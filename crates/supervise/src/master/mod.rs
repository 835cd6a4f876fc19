//! The master: one thread, no async runtime, no user code. It owns the listening sockets, the
//! pid file, the log file, the control socket and the notify socket; it starts workers by
//! re-executing its own binary, reloads, rolls back and supervises them.
//!
//! This file sets the master up (everything that can fail for a reason the operator must see
//! happens here: still attached to the terminal, or once detached, told to the waiting
//! `start`); `state.rs` decides, `run.rs` acts, `upgrade/` executes a new binary of the
//! master in its place.

mod run;
pub(crate) mod state;
pub(crate) mod upgrade;

#[cfg(test)]
mod model;

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid};

use crate::control::server::ControlServer;
use crate::error::{Error, ErrorKind, Result};
use crate::exe::{lookup_user, resolve_exe};
use crate::listen::{self, ListenSpecs};
use crate::notify::{Notifier, NotifyServer};
use crate::pidfile::PidFile;
use crate::{daemon, handoff, log, sys};

/// How to run the master (`run` and `start`).
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// The app's name: `start` defaults to `<name>.pid` and `<name>.log`.
    pub name: String,
    /// Daemonize (`start`) or stay in the foreground (`run`).
    pub daemon: bool,
    /// Where to listen.
    pub listen: ListenSpecs,
    /// The pid file, locked while the master lives. Default: none for `run`, `<name>.pid` for
    /// `start`.
    pub pid: Option<PathBuf>,
    /// The log file of the master and its workers. Default: stderr for `run`, `<name>.log` for
    /// `start`.
    pub log: Option<PathBuf>,
    /// The user workers run as; the master chowns the log file to it.
    pub user: Option<String>,
    /// The group workers run as. Default is the user's primary group.
    pub group: Option<String>,
    /// How long a new worker may take to report ready.
    pub ready_timeout: Duration,
    /// How long a worker may drain before it is killed (plus a grace of 5 s).
    pub drain_timeout: Duration,
    /// How long a worker told to stop (TERM; not a reload's USR2) serves on before its drain:
    /// a graceful stop waits this much longer before SIGKILL.
    pub shutdown_delay: Duration,
    /// How long a worker may still take after its drain (the app's shutdown hook): the master
    /// waits this much longer before SIGKILL.
    pub after_drain: Duration,
    /// At most this many generations draining at once; further reloads wait for a slot.
    pub max_draining: u32,
    /// How long a reload's new binary is on probation: if it crashes (or fails the watchdog)
    /// within this time after it became active, the last good binary is started again. Zero
    /// turns probation off.
    pub probation: Duration,
    /// A serving worker that sends no `WATCHDOG=1` for this long is killed and replaced.
    /// `None` turns the watchdog off.
    pub watchdog: Option<Duration>,
    /// Extra variables for every worker (e.g. paths the app made absolute before the daemon
    /// changed to `/`). They replace the master's own variables of the same name.
    pub worker_env: Vec<(OsString, OsString)>,
}

/// Runs the master (`run` or `start`) until it stops; returns the process's exit code.
pub fn run(mut cfg: MasterConfig) -> Result<ExitCode> {
    // This process is a master image that a previous one executed in its place (or checks
    // that it could be): it takes over what that one held.
    if let Some(text) = std::env::var_os(upgrade::STATE_VAR) {
        return upgrade::resume(&cfg, text);
    }
    let abs = |p: &PathBuf, what: &str| {
        std::path::absolute(p).map_err(|e| Error::io(ErrorKind::Usage, format!("{what} {}", p.display()), e))
    };
    // First, before this process opens anything: an fd number LISTEN_FDS names must be one
    // it inherited.
    let inherited = listen::take_inherited()?;
    let inherited_fds =
        sys::cloexec_inherited().map_err(|e| Error::io(ErrorKind::Io, "cannot mark inherited fds close-on-exec", e))?;
    if cfg.daemon {
        cfg.pid.get_or_insert_with(|| PathBuf::from(format!("{}.pid", cfg.name)));
        cfg.log.get_or_insert_with(|| PathBuf::from(format!("{}.log", cfg.name)));
    }
    let pid_path = cfg.pid.as_ref().map(|p| abs(p, "pid file")).transpose()?;
    let log_path = cfg.log.as_ref().map(|p| abs(p, "log file")).transpose()?;
    // Resolved here, as the pid and log paths are, before the daemon step changes to `/`: the
    // notify socket (and, on the portable backend, the metrics file) goes there, and a
    // relative `TMPDIR` is passed to the workers made absolute (the socket's name must be).
    // An empty one means `/tmp`, as for mktemp.
    let tmp = std::env::temp_dir();
    let tmp = if tmp.is_relative() {
        let resolved =
            if tmp.as_os_str().is_empty() { PathBuf::from("/tmp") } else { abs(&tmp, "temporary directory (TMPDIR)")? };
        if !cfg.worker_env.iter().any(|(k, _)| k == "TMPDIR") {
            cfg.worker_env.push(("TMPDIR".into(), resolved.clone().into()));
        }
        resolved
    } else {
        tmp
    };
    let log_owner = cfg.user.as_deref().map(|u| lookup_user(u, cfg.group.as_deref())).transpose()?;
    // Switching users (and setting their groups) takes root: said here, not found out as a
    // chown of the log that is "not permitted", or by a worker that cannot switch. Not even
    // with CAP_SETUID and CAP_SETGID: a worker that keeps them could regain root, and refuses
    // to serve (`sys::drop_privileges`).
    if let (Some(user), false) = (&cfg.user, nix::unistd::geteuid().is_root()) {
        return Err(Error::usage(format!(
            "--user {user} needs the master to run as root (it runs as uid {}): leave --user out to run the workers as this user",
            nix::unistd::geteuid()
        )));
    }
    let exe = resolve_exe()?;
    let systemd = Notifier::from_env().map_err(|e| Error::io(ErrorKind::Io, handoff::NOTIFY_SOCKET, e))?;
    let mut pidfile = pid_path.as_deref().map(PidFile::lock).transpose()?;
    // Bound before the log is opened: an address in use (the most common failure of a start)
    // is told on the terminal and leaves no empty log file behind.
    // Until the master runs, a failed start removes the socket files it made.
    let listeners = listen::Binding::new(listen::resolve(&cfg.listen, inherited)?);
    if let Some((uid, gid)) = log_owner {
        listen::give_sockets(listeners.iter().filter_map(|b| b.unix_path.as_deref()), uid, gid)?;
    }
    let log_file = match &log_path {
        Some(p) => Some(open_log(p, log_owner)?),
        None => None,
    };
    let control = match &pidfile {
        Some(p) => Some(ControlServer::bind(&crate::pidfile::control_path(p.path()))?),
        None => None,
    };
    let mut daemon_status = if cfg.daemon { Some(daemon::daemonize(&inherited_fds)?) } else { None };
    // Detached, the error `main` prints goes to the log file (if it can): `start` is told too
    // ([`tell_start_failed`]), so that it says why, not only that the daemon exited.
    let mut tell_start = |e: Error| {
        if let Some(s) = daemon_status.take() {
            daemon::hold_for_failure(s);
        }
        e
    };
    if let Some(f) = &log_file {
        sys::redirect_stdout_stderr(f)
            .map_err(|e| Error::io(ErrorKind::Io, "cannot redirect output to the log file", e))
            .map_err(&mut tell_start)?;
    }
    drop(log_file);
    log::init("master");
    // Single-threaded: every line of the master is inside it.
    let _process = log::process_span("master").entered();
    if let Some(c) = &control {
        c.listen().map_err(&mut tell_start)?;
    }
    if let Some(p) = pidfile.as_mut() {
        p.write_pid()
            .map_err(|e| Error::io(ErrorKind::Io, format!("cannot write pid file {}", p.path().display()), e))
            .map_err(&mut tell_start)?;
    }

    let (signals, orig_mask) = sys::Signals::new(&HANDLED)
        .map_err(|e| Error::io(ErrorKind::Io, "cannot set up signal handling", e))
        .map_err(&mut tell_start)?;
    let notify = NotifyServer::bind(&tmp, log_owner)
        .map_err(|e| {
            Error::io(ErrorKind::Io, format!("cannot create the notify socket under {} (TMPDIR)", tmp.display()), e)
        })
        .map_err(&mut tell_start)?;

    let metrics = match crate::metrics::Region::create(&tmp) {
        Ok((fd, r)) => {
            use std::sync::atomic::Ordering::Relaxed;
            let since = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            r.master.start_time.store(since.as_secs(), Relaxed);
            r.master.master_pid.store(u64::from(std::process::id()), Relaxed);
            Some((fd, r))
        }
        Err(e) => {
            tracing::warn!("no shared metrics (counters start over with each worker): {e}");
            None
        }
    };
    let limits = limits(&cfg);
    let mut m = run::Runner::new(
        run::Io {
            exe,
            argv: std::env::args_os().collect(),
            worker_env: cfg.worker_env,
            listeners: listeners.keep(),
            log_path,
            log_owner,
            orig_mask,
            signals,
            notify,
            control,
            systemd,
            daemon_status,
            pidfile,
            metrics,
            tmp,
        },
        cfg.watchdog,
    );
    Ok(ExitCode::from(m.run(state::State::new(limits), true)))
}

/// The settings the state machine's decisions depend on (systemd's watchdog taken out of the
/// environment).
fn limits(cfg: &MasterConfig) -> state::Limits {
    state::Limits {
        ready_timeout: cfg.ready_timeout,
        drain_timeout: cfg.drain_timeout,
        shutdown_delay: cfg.shutdown_delay,
        after_drain: cfg.after_drain,
        max_draining: cfg.max_draining as usize,
        probation: cfg.probation,
        watchdog: cfg.watchdog,
        systemd_watchdog: systemd_watchdog(),
    }
}

/// The signals the master handles (through `signalfd`, or the portable backend's self-pipe).
const HANDLED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGCHLD,
];

/// After [`run`] failed with `why` (printed, into the log when there is one): tells the
/// `start` that waits on this daemon, if it failed once detached. Until then `start` waits,
/// so that when it returns, the error is in the log and the pid file and control socket are
/// gone. Without this call, `start` says only that the daemon exited during start-up.
pub fn tell_start_failed(why: &str) {
    daemon::tell_failed_late(why);
}

/// systemd's watchdog for this process (`WATCHDOG_USEC`, for `WATCHDOG_PID` if set), taken out
/// of the environment so workers do not see it.
fn systemd_watchdog() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok()?;
    let pid = std::env::var("WATCHDOG_PID").ok();
    sys::remove_env(&["WATCHDOG_USEC", "WATCHDOG_PID"]);
    if pid.is_some_and(|p| p.parse() != Ok(std::process::id())) {
        return None;
    }
    usec.parse().ok().filter(|u| *u > 0).map(Duration::from_micros)
}

/// Opens the log file for appending and gives it to the workers' user, who reopen it
/// themselves on USR1.
pub(crate) fn open_log(path: &Path, owner: Option<(Uid, Gid)>) -> Result<File> {
    let f =
        log::open(path).map_err(|e| Error::io(ErrorKind::Io, format!("cannot open log file {}", path.display()), e))?;
    if let Some((uid, gid)) = owner {
        nix::unistd::fchown(f.as_raw_fd(), Some(uid), Some(gid))
            .map_err(|e| Error::io(ErrorKind::Io, format!("cannot chown log file {}", path.display()), e.into()))?;
    }
    Ok(f)
}
