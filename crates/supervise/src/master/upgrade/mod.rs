//! The master upgrades itself (HAProxy's and einhorn's master re-exec, without a second
//! process): once a new binary has served (through its probation, if there is one) and the
//! master is at rest ([`State::busy`]), the master runs that binary once in a check mode (it
//! must read the state this master writes), then `execve`s it in place. Its pid, its children
//! and every fd it holds survive the exec (the listening sockets, the pid file and its lock,
//! the control and notify sockets, the metrics region, the pinned binaries); what it knows
//! passes as text in the environment ([`codec`]). Signals stay blocked across the exec, so
//! one sent meanwhile waits for the new image; so do children's exits, notify messages and
//! control clients, queued by the kernel.
//!
//! The master only ever runs a binary that served as a worker: a deploy that fails or is
//! rolled back leaves it as it is. A check that fails leaves it on its own binary, said in
//! the log; so does a master that never comes to rest, until it does. Linux only: the
//! portable backend's signal handlers do not survive an exec.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Gid, Pid, Uid};

use super::MasterConfig;
use super::run::{Io, Runner};
use super::state::{self, State};
use crate::control::server::ControlServer;
use crate::error::{Error, ErrorKind, Result};
use crate::exe::BinaryId;
use crate::listen::Bound;
use crate::metrics::Region;
use crate::notify::{Notifier, NotifyServer};
use crate::pidfile::PidFile;
use crate::sys::{self, WorkerExec};

pub(crate) mod codec;
use codec::Writer;

/// The state, for the master image that takes over.
pub(crate) const STATE_VAR: &str = "BATON_MASTER_STATE";
/// Set (with [`STATE_VAR`]) for the check: read the state, say whether it can be taken over.
pub(crate) const CHECK_VAR: &str = "BATON_MASTER_CHECK";
/// The first record: a version that writes another format is not taken over from.
const FORMAT: &str = "baton-master-state-1";
/// How long the check may take (it runs the app's `main` up to baton's).
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// The check's exit status when it cannot read the state.
const CHECK_FAILED: u8 = 3;

impl Runner {
    /// At the end of each round of the loop: the master executes the last good binary in
    /// its place if that is not the one it runs, once it is at rest and the binary passed
    /// its check.
    pub(super) fn maybe_upgrade(&mut self, state: &State) {
        let Some(good) = state.good else { return };
        if Some(good) == self.master_binary || self.upgrade_refused == Some(good) {
            return;
        }
        if sys::BACKEND != "linux" {
            tracing::info!(
                "the master does not upgrade itself on the {} OS backend: it runs its own binary until restarted",
                sys::BACKEND
            );
            self.upgrade_refused = Some(good);
            return;
        }
        if let Some(why) = state.busy().or_else(|| self.busy()) {
            // Usually for a moment (the reload's answer): not worth a line of the log.
            if self.upgrade_waits != Some(good) {
                tracing::debug!("the master upgrades itself to the new binary once at rest ({why})");
                self.upgrade_waits = Some(good);
            }
            return;
        }
        let why = self.upgrade(state, good);
        tracing::error!("master not upgraded: {why}; it goes on with its own binary (the workers run the new one)");
        self.upgrade_refused = Some(good);
    }

    /// Why the run loop cannot hand over now (`None`: it can).
    fn busy(&self) -> Option<&'static str> {
        if !self.waiters.is_empty() || !self.json_waiters.is_empty() {
            return Some("a control client waits");
        }
        if !self.reopens.is_empty() {
            return Some("a log reopen waits for the workers");
        }
        if self.io.control.as_ref().is_some_and(ControlServer::reading) {
            return Some("a control request is being read");
        }
        if self.io.daemon_status.is_some() {
            return Some("start waits for it");
        }
        None
    }

    /// Checks the binary `good`, then executes it in place: returns only why it could not.
    fn upgrade(&mut self, state: &State, good: BinaryId) -> String {
        let Some(exe) = self.pins.get(&good) else { return "its binary is not pinned".into() };
        let (text, fds) = match self.freeze(state, good) {
            Ok(f) => f,
            Err(e) => return format!("cannot write its state: {e}"),
        };
        if let Err(e) = self.check(exe.as_fd(), &text) {
            return e;
        }
        let mut env: Vec<(Vec<u8>, Vec<u8>)> = std::env::vars_os()
            .filter(|(k, _)| k != STATE_VAR && k != CHECK_VAR)
            .map(|(k, v)| (k.into_vec(), v.into_vec()))
            .collect();
        // What this master took out of its environment for itself alone.
        if let Some(n) = &self.io.systemd {
            env.push((crate::handoff::NOTIFY_SOCKET.into(), n.name().into()));
        }
        if let Some(w) = state.limits.systemd_watchdog {
            env.push((b"WATCHDOG_USEC".to_vec(), w.as_micros().to_string().into_bytes()));
            env.push((b"WATCHDOG_PID".to_vec(), std::process::id().to_string().into_bytes()));
        }
        env.push((STATE_VAR.into(), text.into_bytes()));
        let mut opened = Vec::new();
        for fd in &fds {
            if let Err(e) = sys::set_cloexec(*fd, false) {
                for fd in opened {
                    let _ = sys::set_cloexec(fd, true);
                }
                return format!("cannot keep fd {fd} open across the exec: {e}");
            }
            opened.push(*fd);
        }
        tracing::info!(
            "master upgrading itself in place to the binary generation {} runs ({}), pid {} stays",
            state.active().map_or(0, |g| g.generation),
            good.describe(),
            std::process::id()
        );
        let argv: Vec<&std::ffi::OsStr> = self.io.argv.iter().map(|a| a.as_os_str()).collect();
        let err = sys::exec_in_place(exe.as_fd(), &self.io.exe, &argv, &env);
        for fd in opened {
            let _ = sys::set_cloexec(fd, true);
        }
        format!("cannot execute {}: {}", self.io.exe.display(), crate::describe_io(&err))
    }

    /// Runs the binary `exe` in its check mode with the state `text`: `Ok` once it exited 0.
    fn check(&self, exe: BorrowedFd<'_>, text: &str) -> std::result::Result<(), String> {
        let mut env = self.base_env.clone();
        env.push((STATE_VAR.into(), text.as_bytes().to_vec()));
        env.push((CHECK_VAR.into(), b"1".to_vec()));
        let argv: Vec<&std::ffi::OsStr> = self.io.argv.iter().map(|a| a.as_os_str()).collect();
        let spawned = WorkerExec::new(exe, &self.io.exe, &argv, &env, &[], &self.io.orig_mask)
            .map_err(sys::SpawnError::Fork)
            .and_then(|mut e| e.spawn());
        let pid = match spawned {
            Ok(pid) => Pid::from_raw(pid),
            Err(e) => return Err(format!("cannot run its check: {e:?}")),
        };
        let deadline = Instant::now() + CHECK_TIMEOUT;
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(WaitStatus::StillAlive) => {
                    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                    let _ = waitpid(pid, None);
                    return Err(format!("its check (pid {pid}) did not end within {CHECK_TIMEOUT:?}"));
                }
                Ok(WaitStatus::Exited(_, 0)) => return Ok(()),
                Ok(WaitStatus::Exited(_, c)) if c == i32::from(CHECK_FAILED) => {
                    return Err("it cannot take over this master's state (its check said why, above)".into());
                }
                Ok(other) => return Err(format!("its check (pid {pid}) {}", super::run::describe_status(other))),
                Err(e) => return Err(format!("waiting for its check (pid {pid}): {e}")),
            }
        }
    }

    /// What the master image that takes over needs, as text, and the fds it names.
    fn freeze(&self, state: &State, good: BinaryId) -> std::result::Result<(String, Vec<RawFd>), String> {
        let text = |b: &[u8], what: &str| {
            std::str::from_utf8(b).map(str::to_owned).map_err(|_| format!("{what} is not UTF-8"))
        };
        let path = |p: &Path, what: &str| text(p.as_os_str().as_bytes(), what);
        let io = &self.io;
        let mut w = Writer::new(Instant::now());
        let mut fds = Vec::new();
        w.line(FORMAT).n(monotonic_ns());
        w.line("exe").s(&path(&io.exe, "the binary's path")?);
        w.line("argv");
        for a in &io.argv {
            w.s(&text(a.as_bytes(), "an argument")?);
        }
        for (k, v) in &self.base_env {
            w.line("env").s(&text(k, "a variable's name")?).s(&text(v, "a variable of the workers' environment")?);
        }
        w.line("master").t(self.started).n(self.upgrades + 1).bin(good);
        w.line("mask");
        for s in Signal::iterator().filter(|s| io.orig_mask.contains(*s)) {
            w.n(s as i32);
        }
        let log = io.log_path.as_deref().map(|p| path(p, "the log's path")).transpose()?;
        w.line("paths").opt_s(log.as_deref()).s(&path(&io.tmp, "the temporary directory")?);
        // As numbers: the user's name is not looked up again (it may be gone from the system
        // meanwhile; its processes, the log file and the sockets still belong to its uid).
        let (uid, gid) = io.log_owner.map(|(u, g)| (u.as_raw(), g.as_raw())).unzip();
        w.line("owner").opt_n(uid).opt_n(gid);
        for l in &io.listeners {
            let unix = l.unix_path.as_deref().map(|p| path(p, "a socket's path")).transpose()?;
            w.line("listener").n(l.fd.as_raw_fd()).s(&l.name).opt_s(unix.as_deref());
            fds.push(l.fd.as_raw_fd());
        }
        w.line("notify").n(io.notify.as_fd().as_raw_fd()).s(io.notify.name()).s(&path(io.notify.dir(), "a path")?);
        fds.push(io.notify.as_fd().as_raw_fd());
        if let Some(c) = &io.control {
            let (fd, p, (dev, ino)) = c.handover();
            w.line("control").n(fd.as_raw_fd()).s(&path(p, "the control socket's path")?).n(dev).n(ino);
            fds.push(fd.as_raw_fd());
        }
        if let Some(p) = &io.pidfile {
            w.line("pidfile").n(p.as_fd().as_raw_fd()).s(&path(p.path(), "the pid file's path")?);
            fds.push(p.as_fd().as_raw_fd());
        }
        if let Some((fd, _)) = &io.metrics {
            w.line("metrics").n(fd.as_raw_fd());
            fds.push(fd.as_raw_fd());
        }
        for (id, fd) in &self.pins {
            w.line("pin").bin(*id).n(fd.as_raw_fd());
            fds.push(fd.as_raw_fd());
        }
        state.freeze(&mut w);
        Ok((w.finish(), fds))
    }
}

/// The monotonic clock (`Instant`'s on Linux), in nanoseconds: it runs on across `execve`.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map_or(0, |t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}

/// The state read back, fds still as numbers.
struct Thawed {
    exe: PathBuf,
    argv: Vec<OsString>,
    base_env: Vec<(Vec<u8>, Vec<u8>)>,
    started: Instant,
    upgrades: u64,
    binary: BinaryId,
    mask: SigSet,
    log: Option<PathBuf>,
    tmp: PathBuf,
    owner: Option<(Uid, Gid)>,
    listeners: Vec<(RawFd, String, Option<PathBuf>)>,
    notify: (RawFd, String, PathBuf),
    control: Option<(RawFd, PathBuf, (u64, u64))>,
    pidfile: Option<(RawFd, PathBuf)>,
    metrics: Option<RawFd>,
    pins: Vec<(BinaryId, RawFd)>,
    state: State,
}

impl Thawed {
    fn read(text: &str, limits: state::Limits) -> std::result::Result<Thawed, String> {
        let mut records = codec::records(text, Instant::now())?.into_iter();
        // Times are written relative to the moment of writing: read relative to it too, not
        // to now, the exec and the start of this image later.
        let gap = match records.next() {
            Some(mut r) if r.key == FORMAT => {
                let written: u64 = r.n()?;
                r.end()?;
                Duration::from_nanos(monotonic_ns().saturating_sub(written))
            }
            Some(r) => {
                return Err(format!("the state is in another format ({:?}, this version reads {FORMAT})", r.key));
            }
            None => return Err("the state is empty".into()),
        };
        let (mut exe, mut argv, mut master, mut mask, mut paths, mut notify) = (None, None, None, None, None, None);
        let (mut base_env, mut listeners, mut pins, mut state_records) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut control, mut pidfile, mut metrics, mut owner) = (None, None, None, None);
        for mut r in records {
            r.written_before(gap);
            if state::KEYS.contains(&r.key.as_str()) {
                state_records.push(r);
                continue;
            }
            match r.key.as_str() {
                "exe" => exe = Some(PathBuf::from(r.s()?)),
                "argv" => {
                    let mut v = Vec::new();
                    while let Ok(a) = r.s() {
                        v.push(OsString::from(a));
                    }
                    argv = Some(v);
                    continue;
                }
                "env" => base_env.push((r.s()?.into_bytes(), r.s()?.into_bytes())),
                "master" => master = Some((r.t()?, r.n()?, r.bin()?)),
                "mask" => {
                    let mut set = SigSet::empty();
                    while let Ok(n) = r.n::<i32>() {
                        set.add(Signal::try_from(n).map_err(|_| format!("no signal {n}"))?);
                    }
                    mask = Some(set);
                    continue;
                }
                "paths" => paths = Some((r.opt_s()?.map(PathBuf::from), PathBuf::from(r.s()?))),
                "owner" => {
                    owner = match (r.opt_n()?, r.opt_n()?) {
                        (Some(u), Some(g)) => Some((Uid::from_raw(u), Gid::from_raw(g))),
                        (None, None) => None,
                        _ => return Err("an owner with a uid or a gid alone".into()),
                    }
                }
                "listener" => listeners.push((r.n()?, r.s()?, r.opt_s()?.map(PathBuf::from))),
                "notify" => notify = Some((r.n()?, r.s()?, PathBuf::from(r.s()?))),
                "control" => control = Some((r.n()?, PathBuf::from(r.s()?), (r.n()?, r.n()?))),
                "pidfile" => pidfile = Some((r.n()?, PathBuf::from(r.s()?))),
                "metrics" => metrics = Some(r.n()?),
                "pin" => pins.push((r.bin()?, r.n()?)),
                other => return Err(format!("unknown record {other:?}")),
            }
            r.end()?;
        }
        let missing = |what: &str| format!("no {what} record");
        let (started, upgrades, binary) = master.ok_or_else(|| missing("master"))?;
        let (log, tmp) = paths.ok_or_else(|| missing("paths"))?;
        Ok(Thawed {
            exe: exe.ok_or_else(|| missing("exe"))?,
            argv: argv.filter(|a| !a.is_empty()).ok_or_else(|| missing("argv"))?,
            base_env,
            started,
            upgrades,
            binary,
            mask: mask.ok_or_else(|| missing("mask"))?,
            log,
            tmp,
            owner,
            listeners,
            notify: notify.ok_or_else(|| missing("notify"))?,
            control,
            pidfile,
            metrics,
            pins,
            state: State::thaw(limits, state_records)?,
        })
    }
}

/// The master image a previous one executed in its place (see the module's comment): takes
/// over and runs. With [`CHECK_VAR`] set, only reads the state and exits: 0 if it can take
/// it over, [`CHECK_FAILED`] (saying why) if not.
pub(super) fn resume(cfg: &MasterConfig, text: OsString) -> Result<ExitCode> {
    let checking = std::env::var_os(CHECK_VAR).is_some();
    let limits = super::limits(cfg);
    let thawed =
        text.into_string().map_err(|_| "the state is not UTF-8".to_owned()).and_then(|t| Thawed::read(&t, limits));
    if checking {
        return Ok(match thawed {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                crate::errln!("baton: this binary cannot take over the running master: {e}");
                ExitCode::from(CHECK_FAILED)
            }
        });
    }
    sys::remove_env(&[STATE_VAR]);
    // Whatever the previous image kept open and the state does not name is closed at the next exec.
    let _ = sys::cloexec_inherited();
    crate::log::init("master");
    let _process = crate::log::process_span("master").entered();
    let t = thawed.map_err(|e| Error::new(ErrorKind::Io, format!("cannot take over from the previous master: {e}")))?;
    let fail = |what: String| move |e: std::io::Error| Error::io(ErrorKind::Io, format!("cannot take over {what}"), e);
    let adopt = |raw: RawFd, kind: libc::mode_t, what: &str| {
        sys::adopt_handed_over(raw, kind).map_err(fail(format!("the {what} (fd {raw})")))
    };
    let mut listeners = Vec::new();
    for (raw, name, unix_path) in t.listeners {
        listeners.push(Bound { fd: adopt(raw, libc::S_IFSOCK, "listening socket")?, name, unix_path });
    }
    let (raw, name, dir) = t.notify;
    let notify = NotifyServer::adopt(adopt(raw, libc::S_IFSOCK, "notify socket")?, name, dir);
    let control = match t.control {
        Some((raw, path, file)) => {
            Some(ControlServer::adopt(adopt(raw, libc::S_IFSOCK, "control socket")?, path, file))
        }
        None => None,
    };
    let pidfile = match t.pidfile {
        Some((raw, path)) => {
            let fd = adopt(raw, libc::S_IFREG, "pid file")?;
            Some(PidFile::adopt(fd, path.clone()).map_err(fail(format!("the lock of pid file {}", path.display())))?)
        }
        None => None,
    };
    let metrics = match t.metrics.map(|raw| adopt(raw, libc::S_IFREG, "metrics region")).transpose()? {
        Some(fd) => match Region::attach(fd.as_fd()) {
            Ok(r) => Some((fd, r)),
            Err(e) => {
                // Workers still count into the old one; the new ones, and the master's
                // status, into a new one.
                tracing::warn!("the metrics start over: {e}");
                Region::create(&t.tmp).ok()
            }
        },
        None => None,
    };
    let mut pins = HashMap::new();
    for (id, raw) in t.pins {
        pins.insert(id, adopt(raw, libc::S_IFREG, "pinned binary")?);
    }
    let (signals, _) =
        sys::Signals::new(&super::HANDLED).map_err(|e| Error::io(ErrorKind::Io, "cannot set up signal handling", e))?;
    let systemd = Notifier::from_env().map_err(|e| Error::io(ErrorKind::Io, crate::handoff::NOTIFY_SOCKET, e))?;
    let mut m = Runner::new(
        Io {
            exe: t.exe,
            argv: t.argv,
            worker_env: Vec::new(),
            listeners,
            log_path: t.log,
            log_owner: t.owner,
            orig_mask: t.mask,
            signals,
            notify,
            control,
            systemd,
            daemon_status: None,
            pidfile,
            metrics,
            tmp: t.tmp,
        },
        cfg.watchdog,
    );
    m.base_env = t.base_env;
    m.pins = pins;
    m.started = t.started;
    m.upgrades = t.upgrades;
    m.master_binary = Some(t.binary);
    let st = &t.state;
    let draining = st.gens.iter().filter(|g| !g.state.serving()).count();
    tracing::info!(
        "master upgraded in place (pid {}, binary {}, upgrade {} since it started): generation {} serving, {draining} draining",
        std::process::id(),
        t.binary.describe(),
        t.upgrades,
        st.active().map_or(0, |g| g.generation)
    );
    Ok(ExitCode::from(m.run(t.state, false)))
}
