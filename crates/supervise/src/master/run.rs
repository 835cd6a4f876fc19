//! The master's poll loop: turns readable fds (signalfd, notify socket, control socket) and
//! reaped children into [`Event`]s for the state machine, and carries out the [`Action`]s it
//! returns as syscalls. No decisions are made here.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Gid, Pid, Uid};

use super::state::{Action, Event, GenState, Phase, Sig, State, Stopping, WaiterId, Waiting};
use crate::control::protocol::{Command, Reply};
use crate::control::server::{ControlServer, Waiter};
use crate::daemon::StatusPipe;
use crate::exe::{BinaryId, binary_id, pin};
use crate::handoff::{self, WorkerEnv};
use crate::listen::Bound;
use crate::metrics::{self, Region};
use crate::notify::{Notifier, NotifyServer};
use crate::pidfile::PidFile;
use crate::sys::{self, SpawnError, WorkerExec};

/// Everything the master holds open.
#[derive(Debug)]
pub(super) struct Io {
    pub(super) exe: PathBuf,
    pub(super) argv: Vec<OsString>,
    pub(super) worker_env: Vec<(OsString, OsString)>,
    pub(super) listeners: Vec<Bound>,
    pub(super) log_path: Option<PathBuf>,
    pub(super) log_owner: Option<(Uid, Gid)>,
    pub(super) orig_mask: SigSet,
    pub(super) signals: sys::Signals,
    pub(super) notify: NotifyServer,
    pub(super) control: Option<ControlServer>,
    pub(super) systemd: Option<Notifier>,
    pub(super) daemon_status: Option<StatusPipe>,
    pub(super) pidfile: Option<PidFile>,
    /// The counters every worker adds to (`None`: shared memory unavailable).
    pub(super) metrics: Option<(std::os::fd::OwnedFd, &'static Region)>,
    /// The temporary directory (absolute): the notify socket's, the metrics file's.
    pub(super) tmp: PathBuf,
}

/// The loop's own bookkeeping around the state machine.
#[derive(Debug)]
pub(super) struct Runner {
    pub(super) io: Io,
    /// The environment every worker starts from: the master's own, without the contract's
    /// variables and without those `worker_env` replaces.
    pub(super) base_env: Vec<(Vec<u8>, Vec<u8>)>,
    pub(super) waiters: HashMap<WaiterId, Waiter>,
    next_waiter: WaiterId,
    /// An open fd of every binary a generation runs or may run again (see [`State::needs_binary`]).
    pub(super) pins: HashMap<BinaryId, std::os::fd::OwnedFd>,
    watchdog: Option<Duration>,
    pub(super) started: Instant,
    strangers: Strangers,
    /// Set by [`Action::Exit`]: the exit code and what `start` prints.
    exit: Option<(u8, Option<String>)>,
    /// Control clients that asked for `status --json`.
    pub(super) json_waiters: std::collections::HashSet<WaiterId>,
    /// `reopen-logs` requests waiting for the workers told to reopen.
    pub(super) reopens: Vec<PendingReopen>,
    /// When the master last read the clock, and by when at the latest it was to read it
    /// again (the end of its wait, or at once while it runs): see [`Event::Resumed`].
    clock: Clock,
    /// The binary this master runs (`None`: unknown), and how often it upgraded itself.
    pub(super) master_binary: Option<BinaryId>,
    pub(super) upgrades: u64,
    /// A binary the master does not upgrade itself to (its check failed), and the one whose
    /// upgrade waits for the master to be at rest (said once in the debug log).
    pub(super) upgrade_refused: Option<BinaryId>,
    pub(super) upgrade_waits: Option<BinaryId>,
}

/// The master's own sense of time passing, to notice when it was not running.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// The last reading.
    last: Instant,
    /// The latest time of the next reading, `None` while it waits with no deadline.
    due: Option<Instant>,
}

impl Clock {
    /// Read at `now`, by a master that runs (it reads it again at once).
    fn running(now: Instant) -> Clock {
        Clock { last: now, due: Some(now) }
    }

    /// Reads the clock at `now`: how long the master may have been stopped, if it reads it
    /// more than [`OVERSLEPT`] past the time it was due to (at most since its last reading).
    fn read(&mut self, now: Instant) -> Option<Duration> {
        let paused = self.due.filter(|due| now.saturating_duration_since(*due) > OVERSLEPT);
        let slept = paused.map(|_| now.saturating_duration_since(self.last));
        *self = Clock::running(now);
        slept
    }
}

/// A `reopen-logs` request: answered once each worker told to reopen its log has said it did
/// (or exited), or after [`REOPEN_WAIT`]. Until then a worker may still write to the old file.
#[derive(Debug)]
pub(super) struct PendingReopen {
    waiter: WaiterId,
    /// The master's own reopen.
    master: std::result::Result<String, String>,
    /// Workers told (USR1) that have not answered.
    pids: Vec<Pid>,
    /// How many workers were told.
    told: usize,
    /// Why workers could not reopen (or did not say).
    errors: Vec<String>,
    deadline: Instant,
    /// Still taking the pids of the USR1s sent for it (the dispatch of its request).
    collecting: bool,
}

/// How long `reopen-logs` waits for the workers to say they reopened.
const REOPEN_WAIT: Duration = Duration::from_secs(5);

impl Runner {
    pub(super) fn new(io: Io, watchdog: Option<Duration>) -> Runner {
        let base_env = std::env::vars_os()
            .filter(|(k, _)| !handoff::is_contract_var(k) && !io.worker_env.iter().any(|(w, _)| w == k))
            .chain(io.worker_env.iter().cloned())
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        Runner {
            io,
            base_env,
            waiters: HashMap::new(),
            next_waiter: 0,
            pins: HashMap::new(),
            watchdog,
            started: Instant::now(),
            strangers: Strangers::default(),
            json_waiters: Default::default(),
            exit: None,
            reopens: Vec::new(),
            clock: Clock::running(Instant::now()),
            master_binary: None,
            upgrades: 0,
            upgrade_refused: None,
            upgrade_waits: None,
        }
    }

    /// Runs until the state machine says exit; returns the exit code. A fresh master starts
    /// its first worker; one that took over from a previous image of itself (`state` read
    /// back) goes on.
    pub(super) fn run(&mut self, mut state: State, fresh: bool) -> u8 {
        if fresh {
            let names: Vec<String> = self.io.listeners.iter().map(Bound::describe).collect();
            tracing::info!(
                "master started (binary {}, {} OS backend), listening on {}",
                self.io.exe.display(),
                sys::BACKEND,
                names.join(", ")
            );
            self.master_binary = binary_id(&self.io.exe).ok();
        }
        self.clock = Clock::running(Instant::now());
        if fresh {
            self.dispatch(&mut state, Event::Start);
        }
        while self.exit.is_none() {
            let reopen_deadline = self.reopens.iter().map(|r| r.deadline).min();
            self.wait(state.next_deadline().into_iter().chain(reopen_deadline).min());
            for event in self.collect_events(&state) {
                self.dispatch(&mut state, event);
            }
            self.dispatch(&mut state, Event::Tick);
            self.answer_reopens();
            if self.exit.is_none() {
                self.maybe_upgrade(&state);
            }
        }
        self.finish()
    }

    /// Waits until an fd is readable or `deadline` passes (or 60 s at most).
    fn wait(&mut self, deadline: Option<Instant>) {
        let now = Instant::now();
        let timeout = deadline.map(|d| d.saturating_duration_since(now));
        self.clock.due = timeout.map(|t| now + t.min(MAX_WAIT));
        let ms = timeout.map_or(PollTimeout::NONE, |t| {
            PollTimeout::try_from(t.min(MAX_WAIT).as_millis() as i32 + 1).unwrap_or(PollTimeout::MAX)
        });
        let control_fds = self.io.control.as_ref().map(|c| c.poll_fds()).unwrap_or_default();
        let mut fds = vec![
            PollFd::new(self.io.signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.io.notify.as_fd(), PollFlags::POLLIN),
        ];
        fds.extend(control_fds.iter().map(|fd| PollFd::new(*fd, PollFlags::POLLIN)));
        match poll(&mut fds, ms) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::error!("poll failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Everything that happened since the last call, in the order signals, notify messages,
    /// control requests, reaped children. Children are reaped before the notify socket is
    /// read: a worker's last datagram (its last words, the log lines it could not write) is
    /// queued before it exits, so it is read in the same round as its exit, and handled while
    /// the worker is still known.
    fn collect_events(&mut self, state: &State) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            match self.io.signals.read() {
                Ok(Some(signo)) => events.extend(self.signal_event(signo)),
                Ok(None) => break,
                Err(e) => {
                    tracing::error!("reading signals failed: {e}");
                    break;
                }
            }
        }
        let mut exited = Vec::new();
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => break,
                Ok(status) => {
                    if let Some(pid) = status.pid() {
                        if let Some((_, r)) = &self.io.metrics {
                            r.free_slot(pid.as_raw() as u32);
                        }
                        exited.push((pid, describe_status(status)));
                    }
                }
                Err(e) => {
                    tracing::error!("waitpid: {e}");
                    break;
                }
            }
        }
        loop {
            match self.io.notify.recv() {
                Ok(Some((pid, msg))) if state.gens.iter().any(|g| g.pid.as_raw() == pid) => {
                    if let Some(how) = handoff::field(&msg, handoff::REOPENED) {
                        self.reopened(Pid::from_raw(pid), Some(how));
                    }
                    if let Some(n) = handoff::field(&msg, handoff::LOG_LOST).and_then(|n| n.parse::<u64>().ok()) {
                        // Counted first: the note (before the line below, or before a later
                        // one if this cannot be written either) includes them.
                        crate::log::count_lost(n);
                        tracing::warn!("worker pid {pid} exited without writing {n} of its log lines (counted above)");
                    }
                    events.push(Event::Notify { pid: Pid::from_raw(pid), msg })
                }
                Ok(Some((pid, _))) => self.strangers.count(pid),
                Ok(None) => break,
                Err(e) => {
                    tracing::error!("notify socket: {e}");
                    break;
                }
            }
        }
        let requests = self.io.control.as_mut().map(ControlServer::poll_requests).unwrap_or_default();
        for (cmd, waiter) in requests {
            let id = self.next_waiter;
            self.next_waiter += 1;
            self.waiters.insert(id, waiter);
            let w = Some(id);
            let on_disk = || binary_id(&self.io.exe).ok();
            events.push(match cmd {
                Command::Reload => Event::Reload { waiter: Some(Waiting { id, probation: false }), on_disk: on_disk() },
                Command::ReloadWaitProbation => {
                    Event::Reload { waiter: Some(Waiting { id, probation: true }), on_disk: on_disk() }
                }
                Command::Stop => Event::Shutdown { how: Stopping::Graceful, waiter: w },
                Command::ReopenLogs => Event::ReopenLogs { waiter: w },
                Command::Status => Event::Status { waiter: id },
                Command::StatusJson => {
                    self.json_waiters.insert(id);
                    Event::Status { waiter: id }
                }
            });
        }
        for (pid, how) in exited {
            // A worker gone writes to no file.
            self.reopened(pid, None);
            events.push(Event::Exited { pid, how });
        }
        events
    }

    fn signal_event(&self, signo: i32) -> Option<Event> {
        match Signal::try_from(signo).ok()? {
            Signal::SIGTERM | Signal::SIGINT => Some(Event::Shutdown { how: Stopping::Graceful, waiter: None }),
            Signal::SIGQUIT => Some(Event::Shutdown { how: Stopping::Fast, waiter: None }),
            Signal::SIGHUP | Signal::SIGUSR2 => {
                Some(Event::Reload { waiter: None, on_disk: binary_id(&self.io.exe).ok() })
            }
            Signal::SIGUSR1 => Some(Event::ReopenLogs { waiter: None }),
            // SIGCHLD: the reaping that follows every wake-up handles it.
            _ => None,
        }
    }

    /// Feeds one event to the state machine and carries out what it decides (a spawn's
    /// outcome goes straight back in).
    fn dispatch(&mut self, state: &mut State, event: Event) {
        let now = Instant::now();
        // Stopped (with its workers, most likely) since it last looked: before anything the
        // pause made due is acted on, time it did not see is given back.
        if let Some(slept) = self.clock.read(now) {
            self.dispatch_one(state, now, Event::Resumed { slept });
        }
        self.dispatch_one(state, now, event);
    }

    fn dispatch_one(&mut self, state: &mut State, now: Instant, event: Event) {
        let mut queue: VecDeque<Action> = state.on(now, event).into();
        while let Some(action) = queue.pop_front() {
            if let Some(feedback) = self.execute(state, action) {
                queue.extend(state.on(now, feedback));
            }
        }
        // Binaries no generation runs and no restart would run are closed: fd counts stay flat.
        self.pins.retain(|id, _| state.needs_binary(id));
        self.sync_metrics(state);
    }

    /// Copies the state machine's counters to the shared region.
    fn sync_metrics(&self, state: &mut State) {
        use std::sync::atomic::Ordering::Relaxed;
        let durations = std::mem::take(&mut state.stats.reload_durations);
        let Some((_, r)) = &self.io.metrics else { return };
        let (m, st) = (&r.master, &state.stats);
        m.generation.store(state.active().map_or(0, |g| g.generation), Relaxed);
        m.reloads_ok.store(st.reloads_ok, Relaxed);
        m.reloads_failed.store(st.reloads_failed, Relaxed);
        m.reloads_rolled_back.store(st.reloads_rolled_back, Relaxed);
        m.worker_starts.store(st.worker_starts, Relaxed);
        m.worker_crashes.store(st.worker_crashes, Relaxed);
        for d in durations {
            let i = metrics::bucket(&metrics::RELOAD_BUCKETS, d.as_secs_f64());
            m.reload_duration.observe(i, d.as_nanos() as u64);
        }
    }

    fn execute(&mut self, state: &State, action: Action) -> Option<Event> {
        match action {
            Action::Spawn { generation, binary } => return Some(self.spawn(generation, binary)),
            Action::Signal { pid, sig } => {
                let sig = match sig {
                    Sig::Term => Signal::SIGTERM,
                    Sig::Quit => Signal::SIGQUIT,
                    Sig::Usr1 => Signal::SIGUSR1,
                    Sig::Usr2 => Signal::SIGUSR2,
                    Sig::Kill => Signal::SIGKILL,
                };
                let _ = kill(pid, sig);
                if sig == Signal::SIGUSR1 {
                    if let Some(r) = self.reopens.last_mut().filter(|r| r.collecting) {
                        r.pids.push(pid);
                        r.told += 1;
                    }
                }
            }
            Action::Reply { waiter, reply } => self.reply(waiter, &reply),
            Action::ReplyStatus { waiter } => {
                let text =
                    if self.json_waiters.remove(&waiter) { self.status_json(state) } else { self.status_text(state) };
                self.reply(waiter, &Reply::Ok(text));
            }
            Action::ReopenLog { waiter } => self.reopen_log(waiter),
            Action::Systemd(msg) => self.systemd_send(&msg),
            Action::SystemdReloading => {
                if self.io.systemd.is_some() {
                    // systemd needs `MONOTONIC_USEC` with `RELOADING=1`, or it waits forever.
                    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
                        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
                        .unwrap_or(0);
                    self.systemd_send(&format!("RELOADING=1\nMONOTONIC_USEC={ts}"));
                }
            }
            Action::CloseListeners => {
                for mut l in self.io.listeners.drain(..) {
                    l.remove_socket_file();
                }
            }
            Action::DaemonReady => {
                if let Some(s) = self.io.daemon_status.take() {
                    s.ready();
                }
            }
            Action::Exit { code, start_failure } => self.exit = Some((code, start_failure)),
        }
        None
    }

    fn reply(&mut self, waiter: WaiterId, reply: &Reply) {
        match self.waiters.remove(&waiter) {
            Some(w) => w.reply(reply),
            None => tracing::error!("no control client {waiter} to answer"),
        }
    }

    /// Forks and execs generation `generation` from the pinned `binary`, or from the file on
    /// disk (pinning it first).
    fn spawn(&mut self, generation: u64, binary: Option<BinaryId>) -> Event {
        let binary = match binary {
            Some(b) => b,
            None => match pin(&self.io.exe) {
                Ok((b, fd)) => {
                    self.pins.entry(b).or_insert(fd);
                    b
                }
                Err(e) => {
                    let why = format!("cannot execute {}: {}", self.io.exe.display(), crate::describe_io(&e));
                    return Event::Spawned { generation, result: Err(why) };
                }
            },
        };
        let Some(exe) = self.pins.get(&binary) else {
            return Event::Spawned { generation, result: Err("the pinned binary is gone".into()) };
        };
        let io = &self.io;
        let contract = WorkerEnv {
            master: std::process::id() as i32,
            generation,
            listen_names: io.listeners.iter().map(|l| l.name.clone()).collect(),
            notify_socket: io.notify.name().to_owned(),
            log: io.log_path.clone(),
            watchdog: self.watchdog,
        };
        let mut env = self.base_env.clone();
        env.extend(contract.to_vars().into_iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())));
        let mut fds: Vec<i32> = io.listeners.iter().map(|l| l.fd.as_raw_fd()).collect();
        // The metrics region goes right after the listeners (LISTEN_FDS does not count it).
        let slot = io.metrics.as_ref().map(|(fd, r)| {
            let at = handoff::LISTEN_FDS_START + fds.len() as i32;
            fds.push(fd.as_raw_fd());
            let slot = r.vacant_slot();
            let value = format!("{at}:{}", slot.map_or("-".to_owned(), |s| s.to_string()));
            env.push((metrics::BATON_METRICS.as_bytes().to_vec(), value.into_bytes()));
            slot
        });
        let argv: Vec<&std::ffi::OsStr> = io.argv.iter().map(|a| a.as_os_str()).collect();
        let spawned = WorkerExec::new(exe.as_fd(), &io.exe, &argv, &env, &fds, &io.orig_mask)
            .map_err(SpawnError::Fork)
            .and_then(|mut e| e.spawn());
        let result = match spawned {
            Ok(pid) => {
                if let (Some((_, r)), Some(Some(slot))) = (&io.metrics, slot) {
                    r.claim_slot(slot, pid as u32, generation);
                }
                Ok((Pid::from_raw(pid), binary))
            }
            Err(SpawnError::Exec(e)) => {
                // The file is open (pinned): what is missing is what it names to run it.
                let missing = if e.raw_os_error() == Some(libc::ENOENT) {
                    " (its interpreter is missing: the program on its #! line, or its ELF loader)"
                } else {
                    ""
                };
                Err(format!("cannot execute {}: {}{missing}", io.exe.display(), crate::describe_io(&e)))
            }
            Err(SpawnError::Listeners(e)) => {
                Err(format!("cannot hand the listening sockets to the worker: {}", crate::describe_io(&e)))
            }
            Err(SpawnError::Fork(e)) => Err(format!("fork/exec failed: {}", crate::describe_io(&e))),
        };
        Event::Spawned { generation, result }
    }

    fn status_text(&self, state: &State) -> String {
        use std::fmt::Write as _;
        let now = Instant::now();
        let mut s = String::new();
        let _ = writeln!(s, "pid: {}", std::process::id());
        let up = self.started.elapsed();
        let mut since = String::new();
        crate::log::rfc3339(&mut since, SystemTime::now() - up);
        let _ = writeln!(s, "uptime: {} (since {since})", days_to_seconds(up.as_secs()));
        let what = match (phase_word(state), state.restart_at()) {
            (w @ "crash-looping", Some(at)) => format!(
                "{w} ({} failures in a row; next start in {:.1}s)",
                state.crash_streak,
                at.saturating_duration_since(now).as_secs_f64()
            ),
            (w, _) => w.to_owned(),
        };
        let _ = writeln!(s, "state: {what}");
        let _ = writeln!(s, "generation: {}", state.active().map_or(0, |g| g.generation));
        let _ = writeln!(s, "binary: {}", self.io.exe.display());
        if let (n @ 1.., Some(b)) = (self.upgrades, self.master_binary) {
            let times = if n == 1 { "once" } else { "times" };
            let n = if n == 1 { String::new() } else { format!("{n} ") };
            let _ = writeln!(s, "master: upgraded itself in place {n}{times}, runs the binary of {}", b.describe());
        }
        for g in &state.gens {
            let mut word = state.gen_word(g).to_owned();
            if let GenState::Probation { until } = g.state {
                let _ = write!(word, " (ends in {:.1}s)", until.saturating_duration_since(now).as_secs_f64());
            }
            if let Some(left) = state.delay_left(g, now) {
                let _ = write!(word, ", serving {:.1}s more (--shutdown-delay), then draining", left.as_secs_f64());
            }
            if let Some(since) = g.draining_since {
                let _ = write!(word, " for {:.1}s", now.saturating_duration_since(since).as_secs_f64());
                if g.hurried {
                    word.push_str(", hurried (a reload waits for its slot)");
                }
                // Reported every 250 ms while draining: what keeps it alive.
                if let Some(n) = g.conns {
                    let _ = write!(word, ", {n} connection{} open", if n == 1 { "" } else { "s" });
                }
                if let Some(t) = g.hook_since {
                    let _ = write!(
                        word,
                        ", shutdown hook running for {:.1}s",
                        now.saturating_duration_since(t).as_secs_f64()
                    );
                }
            }
            let good = if state.good == Some(g.binary) { ", last good" } else { "" };
            let info = g.info.as_deref().map(|i| format!("; {i}")).unwrap_or_default();
            let _ = writeln!(
                s,
                "worker: pid {} generation {} {word} ({}{}; binary {}{good}{info})",
                g.pid,
                g.generation,
                g.cause.word(),
                if g.accepting { "" } else { ", not accepting" },
                g.binary.describe(),
            );
        }
        for l in &self.io.listeners {
            let _ = writeln!(s, "listener: {}", l.describe());
        }
        if let Some((_, r)) = &self.io.metrics {
            let c = Counts::of(r);
            let _ = writeln!(
                s,
                "requests: {} since start ({} 5xx); reloads: {} ok, {} failed, {} rolled back; worker crashes: {}",
                c.requests, c.by_class[4], c.reloads[0], c.reloads[1], c.reloads[2], c.crashes
            );
        }
        match &state.last_reload {
            None => s.push_str("last reload: none\n"),
            Some(r) => {
                let mut at = String::new();
                crate::log::rfc3339(&mut at, SystemTime::now() - r.at.elapsed());
                let _ = match &r.result {
                    Ok(g) => writeln!(s, "last reload: {at} ok (generation {g})"),
                    Err(e) => writeln!(s, "last reload: {at} failed: {e}"),
                };
            }
        }
        s
    }

    /// `status --json`: the facts of [`Runner::status_text`] and the counters, one object.
    fn status_json(&self, state: &State) -> String {
        use crate::json::{Object, array};
        let now = Instant::now();
        let what = phase_word(state);
        let rfc3339 = |t: SystemTime| {
            let mut at = String::new();
            crate::log::rfc3339(&mut at, t);
            at
        };
        let workers = state.gens.iter().map(|g| {
            let mtime = std::time::UNIX_EPOCH + Duration::from_nanos(g.binary.mtime_ns.max(0) as u64);
            let mut o = Object::default()
                .num("pid", g.pid)
                .num("generation", g.generation)
                .str("state", state.gen_word(g))
                .str("cause", g.cause.word())
                .bool("accepting", g.accepting)
                .num("binary_size", g.binary.size)
                .str("binary_mtime", &rfc3339(mtime))
                .bool("last_good", state.good == Some(g.binary))
                .opt_str("info", g.info.as_deref());
            o = match g.draining_since {
                Some(t) => o.num("draining_seconds", format!("{:.3}", now.saturating_duration_since(t).as_secs_f64())),
                None => o.raw("draining_seconds", "null"),
            };
            o = match (g.draining_since, g.conns) {
                (Some(_), Some(n)) => o.num("connections", n),
                _ => o.raw("connections", "null"),
            };
            o = match g.hook_since {
                Some(t) => o.num("hook_seconds", format!("{:.3}", now.saturating_duration_since(t).as_secs_f64())),
                None => o.raw("hook_seconds", "null"),
            };
            o.bool("hurried", g.hurried).end()
        });
        let listeners = self.io.listeners.iter().map(|l| crate::json::string(&l.describe()));
        let last_reload = match &state.last_reload {
            None => "null".to_owned(),
            Some(r) => {
                let o = Object::default().str("at", &rfc3339(SystemTime::now() - r.at.elapsed()));
                match &r.result {
                    Ok(g) => o.bool("ok", true).num("generation", g).end(),
                    Err(e) => o.bool("ok", false).str("error", e).end(),
                }
            }
        };
        let mut o = Object::default()
            .num("pid", std::process::id())
            .num("uptime_seconds", self.started.elapsed().as_secs())
            .str("state", what)
            .num("generation", state.active().map_or(0, |g| g.generation))
            .str("binary", &self.io.exe.display().to_string())
            .num("master_upgrades", self.upgrades)
            .raw("workers", &array(workers))
            .raw("listeners", &array(listeners))
            .raw("last_reload", &last_reload);
        if let Some((_, r)) = &self.io.metrics {
            let c = Counts::of(r);
            let classes = Object::default()
                .num("1xx", c.by_class[0])
                .num("2xx", c.by_class[1])
                .num("3xx", c.by_class[2])
                .num("4xx", c.by_class[3])
                .num("5xx", c.by_class[4])
                .end();
            let labels = crate::listen::Bound::labels(&self.io.listeners);
            let app_listeners = labels.iter().enumerate().filter(|(_, l)| *l != crate::listen::METRICS_LISTENER);
            let by_listener =
                app_listeners.fold(Object::default(), |o, (i, l)| o.num(l, c.by_listener.get(i).copied().unwrap_or(0)));
            let requests = Object::default()
                .num("total", c.requests)
                .raw("by_class", &classes)
                .raw("by_listener", &by_listener.end());
            let reloads = Object::default()
                .num("ok", c.reloads[0])
                .num("failed", c.reloads[1])
                .num("rolled_back", c.reloads[2])
                .end();
            // The app's own (`baton::Counter`, `Gauge`, `Histogram`), by series.
            let app = r.app_metrics().into_iter().fold(Object::default(), |o, (series, _, v)| match v {
                crate::metrics::AppValue::Counter(n) => o.num(&series, n),
                crate::metrics::AppValue::Gauge(n) => o.num(&series, n),
                crate::metrics::AppValue::Histogram { buckets, sum } => {
                    let count = buckets.iter().fold(0u64, |a, (_, n)| a.wrapping_add(*n));
                    let sum = if sum.is_finite() { sum.to_string() } else { "null".to_owned() };
                    o.raw(&series, &Object::default().num("count", count).raw("sum", &sum).end())
                }
            });
            o = o
                .raw("requests", &requests.end())
                .raw("reloads", &reloads)
                .num("worker_starts", c.starts)
                .num("worker_crashes", c.crashes)
                .raw("app_metrics", &app.end());
        }
        o.end()
    }

    /// Reopens the master's log file; on failure logs to the old one, which stays in use.
    fn reopen_log(&mut self, waiter: Option<WaiterId>) {
        let result = match &self.io.log_path {
            None => Ok("no log file to reopen: logging to stderr".to_owned()),
            Some(p) => super::open_log(p, self.io.log_owner)
                .and_then(|f| {
                    sys::redirect_stdout_stderr(&f)
                        .map_err(|e| crate::Error::io(crate::ErrorKind::Io, "cannot redirect output", e))
                })
                .map(|()| format!("reopened log file {}", p.display()))
                .map_err(|e| format!("{e:#}; still logging to the old file")),
        };
        match &result {
            Ok(m) => tracing::info!("{m}"),
            Err(e) => tracing::error!("{e}"),
        }
        if let Some(waiter) = waiter {
            // Answered once the workers told next (the same dispatch) have reopened.
            self.reopens.push(PendingReopen {
                waiter,
                master: result,
                pids: Vec::new(),
                told: 0,
                errors: Vec::new(),
                deadline: Instant::now() + REOPEN_WAIT,
                collecting: true,
            });
        }
    }

    /// Worker `pid` reopened its log (`Some("ok")`), could not (`Some(why)`), or exited (`None`).
    fn reopened(&mut self, pid: Pid, how: Option<&str>) {
        for r in &mut self.reopens {
            if let Some(i) = r.pids.iter().position(|p| *p == pid) {
                r.pids.swap_remove(i);
                if let Some(why) = how.filter(|h| *h != "ok") {
                    r.errors.push(format!("worker pid {pid}: {why}"));
                }
            }
        }
    }

    /// Answers each `reopen-logs` whose workers all answered, or whose wait is over.
    fn answer_reopens(&mut self) {
        let now = Instant::now();
        for r in &mut self.reopens {
            r.collecting = false;
        }
        let (done, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.reopens).into_iter().partition(|r| r.pids.is_empty() || now >= r.deadline);
        self.reopens = waiting;
        for mut r in done {
            for pid in &r.pids {
                r.errors.push(format!("worker pid {pid} did not say it reopened within {REOPEN_WAIT:?}"));
            }
            let reply = match (r.master, r.errors.is_empty()) {
                (Err(e), _) => Reply::Err(e),
                (Ok(m), true) => {
                    let what = if r.told == 1 { "worker" } else { "workers" };
                    Reply::Ok(format!("{m} (the master and {} {what})", r.told))
                }
                (Ok(m), false) => Reply::Err(format!("{m} in the master, but {}", r.errors.join("; "))),
            };
            self.reply(r.waiter, &reply);
        }
    }

    fn systemd_send(&self, msg: &str) {
        if let Some(n) = &self.io.systemd {
            if let Err(e) = n.send(msg) {
                tracing::warn!("cannot notify systemd: {e}");
            }
        }
    }

    fn finish(&mut self) -> u8 {
        let (code, start_failure) = self.exit.take().unwrap_or((0, None));
        for mut l in self.io.listeners.drain(..) {
            l.remove_socket_file();
        }
        if let Some(c) = self.io.control.take() {
            c.remove();
        }
        self.io.notify.remove();
        // Control clients that asked in the very last moment.
        for (_, w) in self.waiters.drain() {
            w.reply(&Reply::Err("shutting down".into()));
        }
        tracing::info!("master exiting with status {code}");
        if let Some(p) = self.io.pidfile.take() {
            p.remove();
        }
        // Last: `start` returns when it reads this, and then nothing of ours may be left.
        if let Some(s) = self.io.daemon_status.take() {
            s.failed(start_failure.as_deref().unwrap_or("the master stopped before a worker was ready"));
        }
        code
    }
}

/// Notify messages from processes that are not workers (only the workers' user can reach the
/// socket, but it may run other processes): dropped, and counted in one line at most every 10 s.
#[derive(Debug, Default)]
struct Strangers {
    dropped: u64,
    said_at: Option<Instant>,
}

impl Strangers {
    fn count(&mut self, pid: i32) {
        self.dropped += 1;
        if self.said_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            tracing::warn!(
                "dropped {} notify messages from processes that are not workers (last from pid {pid})",
                self.dropped
            );
            self.dropped = 0;
            self.said_at = Some(Instant::now());
        }
    }
}

pub(super) fn describe_status(s: WaitStatus) -> String {
    match s {
        WaitStatus::Exited(_, 0) => "exited with status 0".to_owned(),
        WaitStatus::Exited(_, 127) => "exited with status 127 (could not execute the binary)".to_owned(),
        WaitStatus::Exited(_, c) => format!("exited with status {c}"),
        WaitStatus::Signaled(_, sig, core) => format!("killed by {sig}{}", if core { " (core dumped)" } else { "" }),
        other => format!("{other:?}"),
    }
}

/// The master's state in one word, for `status` and `status --json`.
fn phase_word(state: &State) -> &'static str {
    match (&state.phase, state.restart_at()) {
        (Phase::Stopping { .. } | Phase::Exited, _) => "stopping",
        _ if state.active().is_some() => "serving",
        (_, Some(_)) => "crash-looping",
        _ => "starting",
    }
}

/// The counters `status` shows, read from the shared region.
struct Counts {
    requests: u64,
    by_class: [u64; metrics::CLASSES],
    by_listener: Vec<u64>,
    /// ok, failed, rolled back.
    reloads: [u64; 3],
    starts: u64,
    crashes: u64,
}

impl Counts {
    fn of(r: &Region) -> Counts {
        use std::sync::atomic::Ordering::Relaxed;
        let req = r.requests();
        let mut by_class = [0; metrics::CLASSES];
        for row in &req {
            for (c, v) in row.iter().enumerate() {
                by_class[c] += v;
            }
        }
        let m = &r.master;
        Counts {
            requests: by_class.iter().sum(),
            by_class,
            by_listener: req.iter().map(|row| row.iter().sum()).collect(),
            reloads: [m.reloads_ok.load(Relaxed), m.reloads_failed.load(Relaxed), m.reloads_rolled_back.load(Relaxed)],
            starts: m.worker_starts.load(Relaxed),
            crashes: m.worker_crashes.load(Relaxed),
        }
    }
}

/// How late the master may read the clock, past the time it was due to, and still be taken
/// to have run meanwhile (a busy machine); later, it was stopped ([`Event::Resumed`]).
const OVERSLEPT: Duration = Duration::from_secs(1);

/// `secs` for a reader: `45s`, `3m 7s`, `2h 0m 5s`, `12d 4h 0m 0s`.
fn days_to_seconds(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m {s}s"),
    }
}

/// The longest the master waits without reading the clock.
const MAX_WAIT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_reads_in_days_hours_minutes_and_seconds() {
        let cases =
            [(0, "0s"), (59, "59s"), (60, "1m 0s"), (187, "3m 7s"), (7205, "2h 0m 5s"), (12 * 86_400, "12d 0h 0m 0s")];
        for (secs, text) in cases {
            assert_eq!(days_to_seconds(secs), text);
        }
        assert_eq!(days_to_seconds(86_400 + 3600 + 61), "1d 1h 1m 1s");
    }

    #[test]
    fn a_clock_read_long_after_it_was_due_is_a_pause() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut c = Clock { last: t0, due: Some(t0 + s(5)) };
        // At its deadline, or early (an fd was readable): no pause.
        assert_eq!(c.read(t0 + s(2)), None);
        // Running, it reads the clock again at once; late by up to `OVERSLEPT`: a busy machine.
        assert_eq!(c.read(t0 + s(2) + OVERSLEPT), None);
        // Later: stopped, for at most the time since its last reading.
        assert_eq!(c.read(t0 + s(9)), Some(s(9) - s(2) - OVERSLEPT));
        // A wait with no deadline is never late.
        let mut c = Clock { last: t0, due: None };
        assert_eq!(c.read(t0 + s(100)), None);
        // Past a deadline by more: the whole time since the last reading.
        let mut c = Clock { last: t0, due: Some(t0 + s(5)) };
        assert_eq!(c.read(t0 + s(18)), Some(s(18)));
    }
}
