//! The master: one thread, no async runtime, no user code. It owns the listening sockets, the
//! pid file, the log file, the control socket and the notify socket; it starts workers by
//! re-executing its own binary, reloads, rolls back and supervises them.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Gid, Pid, Uid};

use crate::cli::ServeOpts;
use crate::control::{Control, ControlServer, Reply};
use crate::error::{Error, ErrorKind, Result};
use crate::exe::{BinaryId, binary_id, resolve_exe};
use crate::listen::Bound;
use crate::notify::{self, Notifier, NotifyServer};
use crate::pidfile::PidFile;
use crate::sys::WorkerExec;
use crate::{daemon, listen, log, sys, worker};

pub(crate) use crate::exe::lookup_user;

/// A draining worker still alive this long after its drain timeout is killed.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// After a fast shutdown request, workers get this long before SIGKILL.
const FAST_GRACE: Duration = Duration::from_secs(2);
/// A worker that served this long resets the crash backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a reload's answer waits for the old workers to confirm they stopped accepting.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting { deadline: Instant },
    Active,
    Draining { kill_at: Instant },
}

#[derive(Debug)]
struct Worker {
    pid: Pid,
    generation: u64,
    state: State,
    started: Instant,
    ready_at: Option<Instant>,
    binary: BinaryId,
    /// The last `STATUS=` it sent: its last words if it dies.
    status: Option<String>,
    /// Why the master killed it, if it did.
    killed_for: Option<String>,
    /// Control clients waiting for this generation's outcome.
    waiters: Vec<crate::control::Waiter>,
    /// Still accepting connections (until it reports `STATUS=draining` or exits).
    accepting: bool,
}

/// A reload whose new generation is ready, answered once every replaced worker has stopped
/// accepting: after `reload` returns, no new connection reaches the old code.
#[derive(Debug)]
struct PendingAck {
    old: Vec<Pid>,
    waiters: Vec<crate::control::Waiter>,
    reply: String,
    systemd: String,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopping {
    Graceful,
    Fast,
}

impl Stopping {
    /// What workers are sent: TERM drains, QUIT stops at once.
    fn signal(self) -> Signal {
        match self {
            Stopping::Graceful => Signal::SIGTERM,
            Stopping::Fast => Signal::SIGQUIT,
        }
    }
}

/// The outcome of the last reload, for `status`.
#[derive(Debug, Clone)]
struct LastReload {
    at: std::time::SystemTime,
    result: std::result::Result<u64, String>,
}

struct Master {
    exe: PathBuf,
    argv: Vec<OsString>,
    env: Vec<(Vec<u8>, Vec<u8>)>,
    listeners: Vec<Bound>,
    log_path: Option<PathBuf>,
    log_owner: Option<(Uid, Gid)>,
    opts: ServeOpts,
    orig_mask: SigSet,
    sigfd: SignalFd,
    notify: NotifyServer,
    control: Option<ControlServer>,
    systemd: Option<Notifier>,
    daemon_status: Option<daemon::StatusPipe>,
    pidfile: Option<PidFile>,
    workers: Vec<Worker>,
    generation: u64,
    ever_ready: bool,
    pending_reload: bool,
    pending_waiters: Vec<crate::control::Waiter>,
    restart_at: Option<Instant>,
    crash_streak: u32,
    stopping: Option<Stopping>,
    force_at: Option<Instant>,
    exit_code: u8,
    started: Instant,
    last_reload: Option<LastReload>,
    ack: Option<PendingAck>,
    /// Why the first start failed, for `start`'s launcher.
    start_failure: Option<String>,
}

/// Runs `run`/`start` as the master; returns the process's exit code.
pub(crate) fn main(name: &str, mut opts: ServeOpts, start: bool) -> Result<ExitCode> {
    // Everything that can fail for a reason the operator must see happens here, still
    // attached to the terminal: bad paths, users, ports, a running instance.
    let abs = |p: &PathBuf, what: &str| {
        std::path::absolute(p).map_err(|e| Error::io(ErrorKind::Usage, format!("{what} {}", p.display()), e))
    };
    if start {
        opts.pid.get_or_insert_with(|| PathBuf::from(format!("{name}.pid")));
        opts.log.get_or_insert_with(|| PathBuf::from(format!("{name}.log")));
    }
    let pid_path = opts.pid.as_ref().map(|p| abs(p, "pid file")).transpose()?;
    let log_path = opts.log.as_ref().map(|p| abs(p, "log file")).transpose()?;
    opts.tls_cert = opts.tls_cert.as_ref().map(|p| abs(p, "TLS certificate")).transpose()?;
    opts.tls_key = opts.tls_key.as_ref().map(|p| abs(p, "TLS key")).transpose()?;
    let log_owner = opts.user.as_deref().map(|u| lookup_user(u, opts.group.as_deref())).transpose()?;
    let exe = resolve_exe()?;
    let systemd = Notifier::from_env().map_err(|e| Error::io(ErrorKind::Io, "NOTIFY_SOCKET", e))?;
    let mut pidfile = pid_path.as_deref().map(PidFile::lock).transpose()?;
    let log_file = match &log_path {
        Some(p) => Some(open_log(p, log_owner)?),
        None => None,
    };
    let listeners = listen::resolve(&opts.listen, listen::take_inherited()?)?;
    let control = match &pidfile {
        Some(p) => Some(ControlServer::bind(&crate::pidfile::control_path(p.path()))?),
        None => None,
    };
    let daemon_status = if start { Some(daemon::daemonize()?) } else { None };
    if let Some(f) = &log_file {
        sys::redirect_stdout_stderr(f)
            .map_err(|e| Error::io(ErrorKind::Io, "cannot redirect output to the log file", e))?;
    }
    drop(log_file);
    log::init("master");
    if let Some(p) = pidfile.as_mut() {
        p.write_pid()
            .map_err(|e| Error::io(ErrorKind::Io, format!("cannot write pid file {}", p.path().display()), e))?;
    }

    let handled = [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGCHLD,
    ];
    let mut signals = SigSet::empty();
    for s in handled {
        signals.add(s);
    }
    sys::install_noop_handlers(&handled).map_err(|e| Error::io(ErrorKind::Io, "sigaction", e))?;
    let orig_mask = SigSet::thread_get_mask().map_err(|e| Error::io(ErrorKind::Io, "sigprocmask", e.into()))?;
    signals.thread_block().map_err(|e| Error::io(ErrorKind::Io, "sigprocmask", e.into()))?;
    let sigfd = SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| Error::io(ErrorKind::Io, "signalfd", e.into()))?;
    let notify = NotifyServer::bind().map_err(|e| Error::io(ErrorKind::Io, "cannot bind the notify socket", e))?;

    let skip = [
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
        worker::ENV_WORKER,
        worker::ENV_LOG,
        worker::ENV_TLS_CERT,
        worker::ENV_TLS_KEY,
    ];
    let env = std::env::vars_os()
        .filter(|(k, _)| !skip.iter().any(|s| k == s))
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    let mut m = Master {
        exe,
        argv: std::env::args_os().collect(),
        env,
        listeners,
        log_path,
        log_owner,
        opts,
        orig_mask,
        sigfd,
        notify,
        control,
        systemd,
        daemon_status,
        pidfile,
        workers: Vec::new(),
        generation: 0,
        ever_ready: false,
        pending_reload: false,
        pending_waiters: Vec::new(),
        restart_at: None,
        crash_streak: 0,
        stopping: None,
        force_at: None,
        exit_code: 0,
        started: Instant::now(),
        last_reload: None,
        ack: None,
        start_failure: None,
    };
    let names: Vec<String> = m.listeners.iter().map(Bound::describe).collect();
    tracing::info!("master started (binary {}), listening on {}", m.exe.display(), names.join(", "));
    m.spawn(Vec::new());
    m.run();
    m.finish();
    Ok(ExitCode::from(m.exit_code))
}

fn open_log(path: &std::path::Path, owner: Option<(Uid, Gid)>) -> Result<File> {
    let f =
        log::open(path).map_err(|e| Error::io(ErrorKind::Io, format!("cannot open log file {}", path.display()), e))?;
    if let Some((uid, gid)) = owner {
        // Workers running as `--user` reopen the file themselves on USR1.
        nix::unistd::fchown(f.as_raw_fd(), Some(uid), Some(gid))
            .map_err(|e| Error::io(ErrorKind::Io, format!("cannot chown log file {}", path.display()), e.into()))?;
    }
    Ok(f)
}

fn describe_status(s: WaitStatus) -> String {
    match s {
        WaitStatus::Exited(_, 0) => "exited with status 0".to_owned(),
        WaitStatus::Exited(_, 127) => "exited with status 127 (could not execute the binary)".to_owned(),
        WaitStatus::Exited(_, c) => format!("exited with status {c}"),
        WaitStatus::Signaled(_, sig, core) => format!("killed by {sig}{}", if core { " (core dumped)" } else { "" }),
        other => format!("{other:?}"),
    }
}

impl Master {
    fn run(&mut self) {
        loop {
            if self.stopping.is_some() && self.workers.is_empty() {
                return;
            }
            let timeout = self.next_deadline().map(|d| d.saturating_duration_since(Instant::now()));
            let ms = timeout.map_or(PollTimeout::NONE, |t| {
                PollTimeout::try_from(t.as_millis().min(60_000) as i32 + 1).unwrap_or(PollTimeout::MAX)
            });
            let control_fds: Vec<_> = self.control.as_ref().map(|c| c.poll_fds()).unwrap_or_default();
            let mut fds = vec![
                PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.notify.as_fd(), PollFlags::POLLIN),
            ];
            fds.extend(control_fds.iter().map(|fd| PollFd::new(*fd, PollFlags::POLLIN)));
            match poll(&mut fds, ms) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    tracing::error!("poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            drop(fds);
            drop(control_fds);
            self.handle_signals();
            self.handle_notify();
            self.handle_control();
            self.reap();
            self.handle_timers();
            self.check_ack();
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let workers = self.workers.iter().filter_map(|w| match w.state {
            State::Starting { deadline } => Some(deadline),
            State::Draining { kill_at } => Some(kill_at),
            State::Active => None,
        });
        workers.chain(self.restart_at).chain(self.force_at).chain(self.ack.as_ref().map(|a| a.deadline)).min()
    }

    fn handle_signals(&mut self) {
        loop {
            let info = match self.sigfd.read_signal() {
                Ok(Some(i)) => i,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!("reading signals failed: {e}");
                    return;
                }
            };
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGTERM | Signal::SIGINT) => self.stop(Stopping::Graceful),
                Ok(Signal::SIGQUIT) => self.stop(Stopping::Fast),
                Ok(Signal::SIGHUP | Signal::SIGUSR2) => self.reload(None),
                Ok(Signal::SIGUSR1) => self.reopen_logs(),
                _ => {} // SIGCHLD: reaped below
            }
        }
    }

    fn handle_notify(&mut self) {
        loop {
            let (pid, msg) = match self.notify.recv() {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!("notify socket: {e}");
                    return;
                }
            };
            let Some(w) = self.workers.iter_mut().find(|w| w.pid.as_raw() == pid) else {
                tracing::warn!("ignoring notify message from pid {pid}, not a worker: {msg:?}");
                continue;
            };
            if let Some(s) = notify::field(&msg, "STATUS") {
                if s == notify::STATUS_DRAINING {
                    w.accepting = false;
                } else {
                    w.status = Some(s.to_owned());
                }
            }
            if notify::field(&msg, "READY") == Some("1") && matches!(w.state, State::Starting { .. }) {
                let pid = w.pid;
                self.on_ready(pid);
            }
        }
    }

    fn handle_control(&mut self) {
        let Some(ctl) = self.control.as_mut() else {
            return;
        };
        for (req, waiter) in ctl.poll_requests() {
            match req {
                Control::Reload => self.reload(Some(waiter)),
                Control::Stop => {
                    waiter.reply(Reply::Ok("stopping".into()));
                    self.stop(Stopping::Graceful);
                }
                Control::ReopenLogs => {
                    self.reopen_logs();
                    waiter.reply(Reply::Ok("reopened".into()));
                }
                Control::Status => {
                    let s = self.status_text();
                    waiter.reply(Reply::Ok(s));
                }
            }
        }
    }

    fn status_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "pid: {}", std::process::id());
        let _ = writeln!(s, "uptime: {}s", self.started.elapsed().as_secs());
        let _ = writeln!(s, "generation: {}", self.active().map_or(0, |w| w.generation));
        for w in &self.workers {
            let state = match w.state {
                State::Starting { .. } => "starting",
                State::Active => "serving",
                State::Draining { .. } => "draining",
            };
            let _ = writeln!(s, "worker: pid {} generation {} {state}", w.pid, w.generation);
        }
        for l in &self.listeners {
            let _ = writeln!(s, "listener: {}", l.describe());
        }
        match &self.last_reload {
            None => s.push_str("last reload: none\n"),
            Some(r) => {
                let mut at = String::new();
                log::rfc3339(&mut at, r.at);
                let _ = match &r.result {
                    Ok(g) => writeln!(s, "last reload: {at} ok (generation {g})"),
                    Err(e) => writeln!(s, "last reload: {at} failed: {e}"),
                };
            }
        }
        s
    }

    fn active(&self) -> Option<&Worker> {
        self.workers.iter().rev().find(|w| w.state == State::Active)
    }

    fn starting(&mut self) -> Option<&mut Worker> {
        self.workers.iter_mut().find(|w| matches!(w.state, State::Starting { .. }))
    }

    fn draining_count(&self) -> usize {
        self.workers.iter().filter(|w| matches!(w.state, State::Draining { .. })).count()
    }

    /// Starts the next generation; `waiters` learn its outcome.
    fn spawn(&mut self, waiters: Vec<crate::control::Waiter>) {
        self.restart_at = None;
        self.generation += 1;
        let generation = self.generation;
        let fail = |m: &mut Master, waiters: Vec<crate::control::Waiter>, why: String| {
            tracing::error!("cannot start worker generation {generation}: {why}");
            m.on_failed_start(generation, waiters, why);
        };
        let binary = match binary_id(&self.exe) {
            Ok(b) => b,
            Err(e) => {
                return fail(self, waiters, format!("cannot execute {}: {e}", self.exe.display()));
            }
        };
        let mut env = self.env.clone();
        let names: Vec<&str> = self.listeners.iter().map(|l| l.name.as_str()).collect();
        env.push((b"LISTEN_FDS".to_vec(), self.listeners.len().to_string().into_bytes()));
        env.push((b"LISTEN_FDNAMES".to_vec(), names.join(":").into_bytes()));
        env.push((b"NOTIFY_SOCKET".to_vec(), self.notify.name().as_bytes().to_vec()));
        env.push((worker::ENV_WORKER.as_bytes().to_vec(), format!("{}:{generation}", std::process::id()).into_bytes()));
        if let Some(p) = &self.log_path {
            env.push((worker::ENV_LOG.as_bytes().to_vec(), p.as_os_str().as_bytes().to_vec()));
        }
        if let (Some(cert), Some(key)) = (&self.opts.tls_cert, &self.opts.tls_key) {
            env.push((worker::ENV_TLS_CERT.as_bytes().to_vec(), cert.as_os_str().as_bytes().to_vec()));
            env.push((worker::ENV_TLS_KEY.as_bytes().to_vec(), key.as_os_str().as_bytes().to_vec()));
        }
        let fds: Vec<i32> = self.listeners.iter().map(|l| l.fd.as_raw_fd()).collect();
        let argv: Vec<&std::ffi::OsStr> = self.argv.iter().map(|a| a.as_os_str()).collect();
        let spawned =
            WorkerExec::new(self.exe.as_os_str(), &argv, &env, &fds, &self.orig_mask).and_then(|mut e| e.spawn());
        match spawned {
            Ok(pid) => {
                let now = Instant::now();
                tracing::info!("starting worker generation {generation} (pid {pid})");
                self.workers.push(Worker {
                    pid: Pid::from_raw(pid),
                    generation,
                    state: State::Starting { deadline: now + self.opts.ready_timeout },
                    started: now,
                    ready_at: None,
                    binary,
                    status: None,
                    killed_for: None,
                    waiters,
                    accepting: true,
                });
            }
            Err(e) => fail(self, waiters, format!("fork/exec failed: {e}")),
        }
    }

    fn reload(&mut self, waiter: Option<crate::control::Waiter>) {
        if self.stopping.is_some() {
            if let Some(w) = waiter {
                w.reply(Reply::Err("shutting down".into()));
            }
            return;
        }
        let on_disk = binary_id(&self.exe).ok();
        if let Some(s) = self.starting() {
            if on_disk == Some(s.binary) {
                // Same binary as the start under way: that start answers this request too.
                tracing::info!("reload requested while generation {} starts: folded into it", s.generation);
                s.waiters.extend(waiter);
                return;
            }
            tracing::info!("reload requested while generation {} starts, binary changed: queued", s.generation);
            self.pending_reload = true;
            self.pending_waiters.extend(waiter);
            return;
        }
        let draining = self.draining_count();
        if draining >= self.opts.max_draining as usize {
            tracing::warn!("reload deferred: {draining} generations still draining (--max-draining)");
            self.pending_reload = true;
            self.pending_waiters.extend(waiter);
            return;
        }
        tracing::info!("reload: starting generation {}", self.generation + 1);
        self.systemd_reloading();
        self.spawn(waiter.into_iter().collect());
    }

    /// Starts a queued reload once nothing blocks it.
    fn maybe_pending(&mut self) {
        if !self.pending_reload || self.stopping.is_some() {
            return;
        }
        if self.workers.iter().any(|w| matches!(w.state, State::Starting { .. }))
            || self.draining_count() >= self.opts.max_draining as usize
        {
            return;
        }
        self.pending_reload = false;
        let waiters = std::mem::take(&mut self.pending_waiters);
        tracing::info!("queued reload: starting generation {}", self.generation + 1);
        self.systemd_reloading();
        self.spawn(waiters);
    }

    fn on_ready(&mut self, pid: Pid) {
        let now = Instant::now();
        let drain_deadline = now + self.opts.drain_timeout + KILL_GRACE;
        let Some(idx) = self.workers.iter().position(|w| w.pid == pid) else {
            return;
        };
        if let Some(how) = self.stopping {
            // Started just before the shutdown: it was told to stop; make sure it heard.
            let _ = kill(pid, how.signal());
            self.workers[idx].state = State::Draining { kill_at: drain_deadline };
            return;
        }
        let (generation, took, waiters) = {
            let w = &mut self.workers[idx];
            w.state = State::Active;
            w.ready_at = Some(now);
            (w.generation, now - w.started, std::mem::take(&mut w.waiters))
        };
        tracing::info!("worker generation {generation} (pid {pid}) ready in {took:?}");
        let mut old_pids = Vec::new();
        for old in self.workers.iter_mut().filter(|w| w.pid != pid && w.state == State::Active) {
            tracing::info!("draining generation {} (pid {})", old.generation, old.pid);
            // USR2: replaced, drain now (TERM would mean shutdown, with --shutdown-delay).
            let _ = kill(old.pid, Signal::SIGUSR2);
            old.state = State::Draining { kill_at: drain_deadline };
            old_pids.push(old.pid);
        }
        if self.ever_ready {
            self.last_reload = Some(LastReload { at: std::time::SystemTime::now(), result: Ok(generation) });
        }
        self.flush_ack();
        self.ack = Some(PendingAck {
            old: old_pids,
            waiters,
            reply: format!("generation {generation} (pid {pid}) serving"),
            systemd: format!("READY=1\nSTATUS=generation {generation} serving (worker pid {pid})"),
            deadline: now + ACK_TIMEOUT,
        });
        self.check_ack();
        if !self.ever_ready {
            self.ever_ready = true;
            if let Some(s) = self.daemon_status.take() {
                s.ready();
            }
        }
        self.maybe_pending();
    }

    /// A start (first, reload or restart) failed: generation `generation` will not serve.
    fn on_failed_start(&mut self, generation: u64, waiters: Vec<crate::control::Waiter>, why: String) {
        for w in waiters {
            w.reply(Reply::Err(format!("generation {generation} failed: {why}")));
        }
        if self.stopping.is_some() {
            return;
        }
        if !self.ever_ready {
            // Nothing ever served: the start itself failed.
            tracing::error!("start failed: {why}");
            // Told to the launcher in `finish`, once the pid file and the sockets are gone.
            self.start_failure = Some(why);
            self.exit_code = 1;
            self.stop(Stopping::Fast);
            return;
        }
        self.last_reload = Some(LastReload { at: std::time::SystemTime::now(), result: Err(why.clone()) });
        if let Some(a) = self.active() {
            tracing::error!("reload to generation {generation} rolled back: generation {} keeps serving", a.generation);
            let msg = format!("READY=1\nSTATUS=reload failed, generation {} keeps serving: {why}", a.generation);
            self.systemd_send(&msg);
            self.maybe_pending();
        } else {
            self.schedule_restart();
        }
    }

    /// Answers the pending reload once the replaced workers stopped accepting (or exited, or
    /// did not say so in time).
    fn check_ack(&mut self) {
        let Some(a) = &self.ack else { return };
        let done = a.old.iter().all(|p| self.workers.iter().find(|w| w.pid == *p).is_none_or(|w| !w.accepting));
        if done || Instant::now() >= a.deadline {
            self.flush_ack();
        }
    }

    fn flush_ack(&mut self) {
        if let Some(a) = self.ack.take() {
            tracing::info!("{}", a.reply);
            for w in a.waiters {
                w.reply(Reply::Ok(a.reply.clone()));
            }
            self.systemd_send(&a.systemd);
        }
    }

    fn schedule_restart(&mut self) {
        if self.stopping.is_some() || self.restart_at.is_some() {
            return;
        }
        let delay = BACKOFF_MIN.saturating_mul(1u32 << self.crash_streak.min(16)).min(BACKOFF_MAX);
        self.crash_streak += 1;
        if self.crash_streak >= 5 {
            tracing::error!("crash loop: {} failures in a row; next start in {delay:?}", self.crash_streak);
        } else {
            tracing::warn!("restarting worker in {delay:?}");
        }
        self.restart_at = Some(Instant::now() + delay);
    }

    fn reap(&mut self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("waitpid: {e}");
                    return;
                }
            };
            let Some(pid) = status.pid() else { continue };
            let Some(idx) = self.workers.iter().position(|w| w.pid == pid) else {
                // Not ours (an orphan adopted while we run as PID 1): reaped, nothing to do.
                continue;
            };
            let w = self.workers.remove(idx);
            let how = describe_status(status);
            let last_words = w.status.as_deref().map(|s| format!(" (last status: {s})")).unwrap_or_default();
            match w.state {
                State::Starting { .. } => {
                    let why = match &w.killed_for {
                        Some(k) => format!("{k}, {how}"),
                        None => format!("{how} before it was ready{last_words}"),
                    };
                    tracing::error!("worker generation {} (pid {pid}) {why}", w.generation);
                    self.on_failed_start(w.generation, w.waiters, why);
                }
                State::Active => {
                    if self.stopping.is_some() {
                        tracing::info!("worker generation {} (pid {pid}) {how}", w.generation);
                        continue;
                    }
                    tracing::error!(
                        "worker generation {} (pid {pid}) died unexpectedly: {how}{last_words}",
                        w.generation
                    );
                    if w.ready_at.is_some_and(|r| r.elapsed() >= STABLE_AFTER) {
                        self.crash_streak = 0;
                    }
                    let covered =
                        self.workers.iter().any(|o| matches!(o.state, State::Active | State::Starting { .. }));
                    if !covered {
                        self.schedule_restart();
                    }
                }
                State::Draining { .. } => {
                    tracing::info!("worker generation {} (pid {pid}) finished draining: {how}", w.generation);
                    self.maybe_pending();
                }
            }
        }
    }

    fn handle_timers(&mut self) {
        let now = Instant::now();
        let ready_timeout = self.opts.ready_timeout;
        for w in &mut self.workers {
            match w.state {
                State::Starting { deadline } if deadline <= now && w.killed_for.is_none() => {
                    w.killed_for = Some(format!("not ready within {ready_timeout:?}: killed"));
                    tracing::error!(
                        "worker generation {} (pid {}) not ready within {ready_timeout:?}: killing it",
                        w.generation,
                        w.pid
                    );
                    let _ = kill(w.pid, Signal::SIGKILL);
                }
                State::Draining { kill_at } if kill_at <= now => {
                    tracing::warn!(
                        "worker generation {} (pid {}) still draining past its deadline: killing it",
                        w.generation,
                        w.pid
                    );
                    let _ = kill(w.pid, Signal::SIGKILL);
                    w.state = State::Draining { kill_at: now + KILL_GRACE };
                }
                _ => {}
            }
        }
        if self.restart_at.is_some_and(|t| t <= now) {
            self.restart_at = None;
            if self.stopping.is_none()
                && !self.workers.iter().any(|w| matches!(w.state, State::Active | State::Starting { .. }))
            {
                self.spawn(Vec::new());
            }
        }
        if self.force_at.is_some_and(|t| t <= now) {
            self.force_at = Some(now + KILL_GRACE);
            for w in &self.workers {
                tracing::warn!("worker generation {} (pid {}) did not exit: killing it", w.generation, w.pid);
                let _ = kill(w.pid, Signal::SIGKILL);
            }
        }
    }

    fn stop(&mut self, how: Stopping) {
        match (self.stopping, how) {
            (None, _) => {
                self.flush_ack();
                tracing::info!("{} shutdown", if how == Stopping::Graceful { "graceful" } else { "fast" });
                self.systemd_send("STOPPING=1");
                // Close our copy of the listeners first: otherwise clients told to reconnect
                // land in an accept queue nobody serves and are reset when it finally closes.
                for mut l in self.listeners.drain(..) {
                    l.remove_socket_file();
                }
                for w in std::mem::take(&mut self.pending_waiters) {
                    w.reply(Reply::Err("shutting down".into()));
                }
                self.pending_reload = false;
                self.restart_at = None;
            }
            (Some(Stopping::Graceful), Stopping::Graceful) => {
                tracing::info!("second shutdown request: stopping now");
            }
            (Some(Stopping::Fast), _) => return,
            (Some(Stopping::Graceful), Stopping::Fast) => {}
        }
        // A second request of either kind means now.
        let now_how = if self.stopping.is_some() { Stopping::Fast } else { how };
        for w in &self.workers {
            let _ = kill(w.pid, now_how.signal());
        }
        self.stopping = Some(now_how);
        let grace = if now_how == Stopping::Fast { FAST_GRACE } else { self.opts.drain_timeout + KILL_GRACE };
        self.force_at = Some(Instant::now() + grace);
    }

    fn reopen_logs(&mut self) {
        if let Some(p) = self.log_path.clone() {
            match open_log(&p, self.log_owner).and_then(|f| {
                sys::redirect_stdout_stderr(&f).map_err(|e| Error::io(ErrorKind::Io, "cannot redirect output", e))
            }) {
                Ok(()) => tracing::info!("reopened log file {}", p.display()),
                Err(e) => tracing::error!("{e}"),
            }
        }
        for w in &self.workers {
            let _ = kill(w.pid, Signal::SIGUSR1);
        }
    }

    fn systemd_send(&self, msg: &str) {
        if let Some(n) = &self.systemd {
            if let Err(e) = n.send(msg) {
                tracing::warn!("cannot notify systemd: {e}");
            }
        }
    }

    /// systemd needs `MONOTONIC_USEC` with `RELOADING=1`, or it waits forever.
    fn systemd_reloading(&self) {
        if self.systemd.is_some() {
            let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
                .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
                .unwrap_or(0);
            self.systemd_send(&format!("RELOADING=1\nMONOTONIC_USEC={ts}"));
        }
    }

    fn finish(&mut self) {
        for mut l in self.listeners.drain(..) {
            l.remove_socket_file();
        }
        if let Some(c) = self.control.take() {
            c.remove();
        }
        tracing::info!("master exiting with status {}", self.exit_code);
        if let Some(p) = self.pidfile.take() {
            p.remove();
        }
        // Last: `start` returns when it reads this, and then nothing of ours may be left.
        if let Some(s) = self.daemon_status.take() {
            s.failed(self.start_failure.as_deref().unwrap_or("the master stopped before a worker was ready"));
        }
    }
}
