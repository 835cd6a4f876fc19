//! Model test of the master's state machine: random event sequences (reload storms, crashes
//! in every phase, readiness after the timeout, shutdown during a start, control requests
//! racing signals, deploys, failing forks) against a simulated kernel, with the invariants
//! checked after every step. No processes: thousands of sequences run in about a second.
//! `PROPTEST_CASES=20000 cargo test -p baton-supervise model` runs more.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::state::{Action, Event, GenState, Limits, Phase, Sig, State, Stopping, WaiterId, Waiting};
use crate::control::protocol::Reply;
use crate::exe::BinaryId;

/// What can happen to the master, as the model generates it.
#[derive(Debug, Clone, Copy)]
enum Op {
    Term,
    Quit,
    /// USR2/HUP (`None`), `reload` (`Some(false)`) or `reload --wait-probation`.
    Reload(Option<bool>),
    Stop,
    ReopenLogs(bool),
    Status,
    /// The n-th live worker (modulo their count) reports `READY=1`.
    Ready(usize),
    /// ... reports `STATUS=draining`.
    StoppedAccepting(usize),
    /// ... sends its last words.
    Says(usize),
    /// ... sends its heartbeat.
    Heartbeat(usize),
    /// ... exits (crash, clean exit, killed: all look the same to the master but the words).
    Exits(usize),
    /// A datagram from a process that is not a worker.
    Stranger,
    /// Time passes.
    Advance(u64),
    /// The master and its workers were stopped together for this long (ms), then resumed.
    Pause(u64),
    /// A new binary lands on disk.
    Deploy,
    /// The binary on disk cannot be read (deleted) until the next deploy.
    RemoveBinary,
    /// The next fork/exec fails.
    FailNextSpawn,
}

fn op() -> impl Strategy<Value = Op> {
    // Shutdowns are rare so that sequences get long before one ends them.
    prop_oneof![
        1 => Just(Op::Term),
        1 => Just(Op::Quit),
        60 => any::<Option<bool>>().prop_map(Op::Reload),
        1 => Just(Op::Stop),
        10 => any::<bool>().prop_map(Op::ReopenLogs),
        10 => Just(Op::Status),
        80 => any::<usize>().prop_map(Op::Ready),
        40 => any::<usize>().prop_map(Op::StoppedAccepting),
        10 => any::<usize>().prop_map(Op::Says),
        60 => any::<usize>().prop_map(Op::Heartbeat),
        50 => any::<usize>().prop_map(Op::Exits),
        10 => Just(Op::Stranger),
        // Mostly short steps, sometimes past every deadline (probation 3 s, watchdog 10 s,
        // ready 60 s, drain 30 s + hook 30 s + 5 s, after a stop's delay of 20 s).
        60 => prop_oneof![4 => 0..2_000u64, 1 => 0..120_000u64].prop_map(Op::Advance),
        5 => (1_000..120_000u64).prop_map(Op::Pause),
        20 => Just(Op::Deploy),
        5 => Just(Op::RemoveBinary),
        10 => Just(Op::FailNextSpawn),
    ]
}

/// A simulated kernel plus the bookkeeping the invariants need.
struct Model {
    state: State,
    now: Instant,
    /// The build on disk; `None` while deleted.
    disk: Option<u64>,
    /// The newest build ever deployed.
    builds: u64,
    next_pid: i32,
    /// Children not yet reported as exited, with the build they run.
    live: BTreeMap<Pid, u64>,
    /// Children that were sent SIGKILL, TERM or QUIT (they exit when the model settles).
    doomed: BTreeSet<Pid>,
    fail_next_spawn: bool,
    /// Builds that served through their probation (or needed none): the only ones a restart
    /// or a rollback may run.
    proven: BTreeSet<u64>,
    /// Spawns that read the disk, and the requests that allow one (the first start, reloads).
    disk_spawns: u64,
    disk_requests: u64,
    next_waiter: WaiterId,
    open_waiters: BTreeSet<WaiterId>,
    /// The build on disk at the last reload requested while not stopping, and whether a start
    /// failed since.
    wanted: Option<(Option<u64>, bool)>,
    shutdown_requested: bool,
    exited: Option<u8>,
    /// The build serving once the operations settled, before the final TERM.
    settled_build: Option<u64>,
    steps: u64,
    /// Workers a log reopen has not reached yet (USR1 waits until a worker is ready).
    owe_usr1: BTreeSet<Pid>,
    /// Workers told to drain because a newer generation replaced them (USR2).
    replaced: BTreeSet<Pid>,
    /// Workers that stopped accepting while serving, on a signal sent to them rather than to
    /// the master: draining, but not in a slot the master's reloads handed out.
    stopped_itself: BTreeSet<Pid>,
    /// Serving workers told to stop gracefully (TERM), replaced (USR2) or stopped on their
    /// own, with the earliest time a SIGKILL may reach them: their shutdown delay (TERM
    /// only), drain and shutdown hook come first.
    told: BTreeMap<Pid, Instant>,
    /// QUIT signals sent to workers ("exit now").
    quits: u64,
    /// SIGKILLs sent.
    kills: u64,
    /// Workers sent a SIGKILL (a worker that does not die of it is sent another later).
    killed: BTreeSet<Pid>,
    /// The earliest deadline a `stop`'s answer gave its client for the last worker's SIGKILL
    /// (moved on by a pause of the master, as its own deadlines are): the client waits that
    /// long, then gives up.
    promised: Option<Instant>,
    /// The text of the last `ok` answer.
    last_ok: Option<String>,
    /// Times the state was handed over to a master that took over (at rest).
    handovers: u64,
    /// The last error a control client was answered.
    last_err: Option<String>,
}

impl Model {
    fn new(probation: bool) -> Model {
        let limits = Limits {
            ready_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            shutdown_delay: Duration::from_secs(20),
            after_drain: Duration::from_secs(30),
            max_draining: 2,
            probation: if probation { Duration::from_secs(3) } else { Duration::ZERO },
            watchdog: Some(Duration::from_secs(10)),
            systemd_watchdog: Some(Duration::from_secs(20)),
        };
        let mut m = Model {
            state: State::new(limits),
            now: Instant::now(),
            disk: Some(1),
            builds: 1,
            next_pid: 100,
            live: BTreeMap::new(),
            doomed: BTreeSet::new(),
            fail_next_spawn: false,
            proven: BTreeSet::new(),
            disk_spawns: 0,
            disk_requests: 1,
            next_waiter: 0,
            open_waiters: BTreeSet::new(),
            wanted: None,
            shutdown_requested: false,
            exited: None,
            settled_build: None,
            steps: 0,
            owe_usr1: BTreeSet::new(),
            replaced: BTreeSet::new(),
            stopped_itself: BTreeSet::new(),
            told: BTreeMap::new(),
            quits: 0,
            kills: 0,
            killed: BTreeSet::new(),
            promised: None,
            last_ok: None,
            last_err: None,
            handovers: 0,
        };
        m.feed(Event::Start).unwrap();
        m
    }

    fn waiter(&mut self) -> WaiterId {
        self.next_waiter += 1;
        self.open_waiters.insert(self.next_waiter);
        self.next_waiter
    }

    fn nth_live(&self, n: usize) -> Option<Pid> {
        if self.live.is_empty() { None } else { self.live.keys().nth(n % self.live.len()).copied() }
    }

    fn stopping(&self) -> bool {
        matches!(self.state.phase, Phase::Stopping { .. } | Phase::Exited)
    }

    /// `secs` seconds pass, a second at a time, with a heartbeat from each of the `pids`
    /// (indices into the live workers) every second.
    fn beating(&mut self, pids: &[usize], secs: u64) {
        for _ in 0..secs {
            for &n in pids {
                self.apply(Op::Heartbeat(n)).unwrap();
            }
            self.apply(Op::Advance(1_000)).unwrap();
        }
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        let on_disk = self.disk.map(BinaryId::fake);
        let event = match op {
            Op::Term => Event::Shutdown { how: Stopping::Graceful, waiter: None },
            Op::Quit => Event::Shutdown { how: Stopping::Fast, waiter: None },
            Op::Stop => Event::Shutdown { how: Stopping::Graceful, waiter: Some(self.waiter()) },
            Op::Reload(control) => {
                if !self.stopping() {
                    self.wanted = Some((self.disk, false));
                }
                self.disk_requests += 1;
                let waiter = control.map(|probation| Waiting { id: self.waiter(), probation });
                Event::Reload { waiter, on_disk }
            }
            Op::ReopenLogs(control) => Event::ReopenLogs { waiter: control.then(|| self.waiter()) },
            Op::Status => Event::Status { waiter: self.waiter() },
            Op::Ready(n) => match self.nth_live(n) {
                Some(pid) => Event::Notify { pid, msg: "READY=1\nSTATUS=generation ? serving".into() },
                None => Event::Tick,
            },
            // A worker says so only once it serves (after `READY=1`).
            Op::StoppedAccepting(n) => {
                let g = self.nth_live(n).and_then(|pid| self.state.gens.iter().find(|g| g.pid == pid));
                match g.filter(|g| g.ready_at.is_some()).map(|g| (g.pid, g.state.serving())) {
                    Some((pid, serving)) => {
                        if serving && !self.stopping() {
                            self.stopped_itself.insert(pid);
                            let l = &self.state.limits;
                            self.told.entry(pid).or_insert(self.now + l.drain_timeout + l.after_drain);
                        }
                        Event::Notify { pid, msg: "STATUS=draining".into() }
                    }
                    None => Event::Tick,
                }
            }
            Op::Says(n) => match self.nth_live(n) {
                Some(pid) => Event::Notify { pid, msg: "STATUS=cannot open database".into() },
                None => Event::Tick,
            },
            Op::Heartbeat(n) => match self.nth_live(n) {
                Some(pid) => Event::Notify { pid, msg: "WATCHDOG=1".into() },
                None => Event::Tick,
            },
            Op::Exits(n) => match self.nth_live(n) {
                Some(pid) => return self.exit(pid),
                None => Event::Tick,
            },
            Op::Stranger => Event::Notify { pid: Pid::from_raw(1), msg: "READY=1".into() },
            Op::Advance(ms) => {
                self.now += Duration::from_millis(ms);
                Event::Tick
            }
            Op::Pause(ms) => {
                self.now += Duration::from_millis(ms);
                if let Some(p) = &mut self.promised {
                    *p += Duration::from_millis(ms);
                }
                Event::Resumed { slept: Duration::from_millis(ms) }
            }
            Op::Deploy => {
                self.builds += 1;
                self.disk = Some(self.builds);
                Event::Tick
            }
            Op::RemoveBinary => {
                self.disk = None;
                Event::Tick
            }
            Op::FailNextSpawn => {
                self.fail_next_spawn = true;
                Event::Tick
            }
        };
        if matches!(event, Event::Shutdown { .. }) {
            self.shutdown_requested = true;
        }
        // `stop` during a stop joins it: a graceful one stays graceful, nothing is told to
        // exit now.
        let joining = matches!(op, Op::Stop) && self.stopping();
        let (phase, quits) = (self.state.phase.clone(), self.quits);
        let (kills, resumed) = (self.kills, matches!(event, Event::Resumed { .. }));
        self.feed(event)?;
        if resumed {
            // Nothing the pause made due is acted on: no worker is killed for it (silent, not
            // ready, past its drain).
            prop_assert_eq!(self.kills, kills, "a worker paused with the master was killed on resuming");
        }
        if joining {
            let hurried = match (&phase, &self.state.phase) {
                (Phase::Stopping { how: a, .. }, Phase::Stopping { how: b, .. }) => a != b,
                _ => false,
            };
            prop_assert!(!hurried && self.quits == quits, "stop hurried a stop under way: {phase:?}");
        }
        Ok(())
    }

    fn exit(&mut self, pid: Pid) -> Result<(), TestCaseError> {
        self.live.remove(&pid);
        self.told.remove(&pid);
        self.doomed.remove(&pid);
        // A start that failed, or a new binary that failed its probation: reported either way.
        let failed = self
            .state
            .gens
            .iter()
            .any(|g| g.pid == pid && matches!(g.state, GenState::Starting { .. } | GenState::Probation { .. }));
        if failed {
            if let Some((_, failed)) = &mut self.wanted {
                *failed = true;
            }
        }
        self.feed(Event::Exited { pid, how: "exited with status 1".into() })
    }

    /// One event in, its actions carried out (spawn outcomes fed straight back), invariants
    /// checked.
    fn feed(&mut self, event: Event) -> Result<(), TestCaseError> {
        let reopen = matches!(event, Event::ReopenLogs { .. });
        if reopen {
            self.owe_usr1.extend(self.state.gens.iter().map(|g| g.pid));
        }
        let mut queue: std::collections::VecDeque<Action> = self.state.on(self.now, event).into();
        if reopen {
            // Workers running as another user can only reopen a file the master created.
            let first_usr1 = queue.iter().position(|a| matches!(a, Action::Signal { sig: Sig::Usr1, .. }));
            let log = queue.iter().position(|a| matches!(a, Action::ReopenLog { .. }));
            prop_assert!(log.is_some(), "reopen-logs without reopening the master's log: {queue:?}");
            prop_assert!(
                first_usr1.is_none_or(|u| log < Some(u)),
                "workers signalled before the master reopened: {queue:?}"
            );
        }
        self.steps += 1;
        while let Some(action) = queue.pop_front() {
            prop_assert!(self.exited.is_none(), "action after exit: {action:?}");
            match action {
                Action::Spawn { generation, binary } => {
                    prop_assert!(!self.stopping(), "spawn while stopping");
                    let build = match binary {
                        // A restart or rollback: a crash loop never lands on a binary that was
                        // never good. A replacement for a worker that stopped on its own runs
                        // that worker's binary.
                        Some(b) => {
                            let replaced = self.stopped_itself.iter().filter_map(|p| self.live.get(p));
                            let allowed: BTreeSet<u64> = self.proven.iter().copied().chain(replaced.copied()).collect();
                            prop_assert!(allowed.iter().any(|p| BinaryId::fake(*p) == b), "unproven {b:?}");
                            allowed.iter().copied().find(|p| BinaryId::fake(*p) == b)
                        }
                        // Only the first start and reloads read the disk.
                        None => {
                            self.disk_spawns += 1;
                            prop_assert!(self.disk_spawns <= self.disk_requests, "a disk read nobody asked for");
                            self.disk
                        }
                    };
                    let result = match (build, std::mem::take(&mut self.fail_next_spawn)) {
                        (Some(build), false) => {
                            let pid = Pid::from_raw(self.next_pid);
                            self.next_pid += 1;
                            self.live.insert(pid, build);
                            Ok((pid, BinaryId::fake(build)))
                        }
                        _ => {
                            if let Some((_, failed)) = &mut self.wanted {
                                *failed = true;
                            }
                            Err("cannot execute".to_owned())
                        }
                    };
                    queue.extend(self.state.on(self.now, Event::Spawned { generation, result }));
                    self.steps += 1;
                }
                Action::Signal { pid, sig } => {
                    prop_assert!(self.live.contains_key(&pid), "{sig:?} to unknown pid {pid}");
                    if sig == Sig::Quit {
                        self.quits += 1;
                        self.told.remove(&pid);
                    }
                    let g = self.state.gens.iter().find(|g| g.pid == pid);
                    let served = g.is_some_and(|g| g.ready_at.is_some());
                    let graceful = matches!(self.state.phase, Phase::Stopping { how: Stopping::Graceful, .. });
                    let limits = &self.state.limits;
                    match sig {
                        // What the worker itself may take: no grace of the master's counts.
                        Sig::Term if served && graceful => {
                            let entitled = limits.shutdown_delay + limits.drain_timeout + limits.after_drain;
                            self.told.entry(pid).or_insert(self.now + entitled);
                        }
                        Sig::Usr2 if served => {
                            self.told.entry(pid).or_insert(self.now + limits.drain_timeout + limits.after_drain);
                        }
                        _ => {}
                    }
                    if sig == Sig::Kill {
                        self.kills += 1;
                        self.killed.insert(pid);
                        // Killed for silence (the watchdog) is no cut drain.
                        let silent = g.is_some_and(|g| g.killed_for.is_some());
                        if let Some(&earliest) = self.told.get(&pid).filter(|_| !silent) {
                            prop_assert!(
                                self.now >= earliest,
                                "SIGKILL {:?} before the end of pid {pid}'s delay, drain and hook",
                                earliest - self.now
                            );
                        }
                    }
                    if matches!(sig, Sig::Kill | Sig::Term | Sig::Quit) {
                        self.doomed.insert(pid);
                    }
                    if sig == Sig::Usr2 {
                        self.replaced.insert(pid);
                    }
                    // TERM means "now" to a worker already draining: it would cut the requests
                    // a graceful stop lets it finish.
                    prop_assert!(!(sig == Sig::Term && self.replaced.contains(&pid)), "TERM to draining worker {pid}");
                    if sig == Sig::Usr1 {
                        // USR1's default action kills a worker that has no handler yet.
                        let starting = self
                            .state
                            .gens
                            .iter()
                            .any(|g| g.pid == pid && matches!(g.state, GenState::Starting { .. }));
                        prop_assert!(!starting, "USR1 to starting worker {pid}");
                        self.owe_usr1.remove(&pid);
                    }
                }
                Action::Reply { waiter, reply } => {
                    prop_assert!(self.open_waiters.remove(&waiter), "waiter {waiter} answered twice or unknown");
                    if let Reply::Err(text) = &reply {
                        self.last_err = Some(text.clone());
                    }
                    if let Reply::Ok(text) = &reply {
                        if let Some(within) = crate::control::protocol::stopping_within(text) {
                            let at = self.now + within;
                            self.promised = Some(self.promised.map_or(at, |p| p.min(at)));
                        }
                        self.last_ok = Some(text.clone());
                        if let Some((p, _)) = text.split_once("(pid ").and_then(|(_, r)| r.split_once(") serving")) {
                            // "generation N (pid P) serving" is said only of a live serving worker.
                            let pid = Pid::from_raw(p.parse().unwrap_or(0));
                            let serving = self.state.gens.iter().any(|g| g.pid == pid && g.state.serving());
                            prop_assert!(serving, "said serving of a worker that is not: {text}");
                        }
                    }
                }
                Action::ReplyStatus { waiter } => {
                    prop_assert!(self.open_waiters.remove(&waiter), "waiter {waiter} answered twice or unknown");
                }
                Action::Exit { code, start_failure } => {
                    prop_assert!(self.shutdown_requested || start_failure.is_some(), "exit without a reason");
                    prop_assert_eq!(code, u8::from(start_failure.is_some()));
                    prop_assert!(self.live.is_empty(), "exit with workers alive: {:?}", self.live);
                    self.exited = Some(code);
                }
                Action::ReopenLog { waiter } => {
                    if let Some(w) = waiter {
                        prop_assert!(self.open_waiters.remove(&w), "waiter {w} answered twice or unknown");
                    }
                }
                Action::Systemd(_) | Action::SystemdReloading | Action::CloseListeners | Action::DaemonReady => {}
            }
        }
        self.check()
    }

    fn check(&mut self) -> Result<(), TestCaseError> {
        for g in self.state.gens.iter().filter(|g| g.state == GenState::Active) {
            self.proven.insert(self.live[&g.pid]);
        }
        let s = &self.state;
        let count = |f: fn(&GenState) -> bool| s.gens.iter().filter(|g| f(&g.state)).count();
        prop_assert!(count(|g| matches!(g, GenState::Starting { .. })) <= 1, "two starting: {:?}", s.gens);
        prop_assert!(count(|g| g.serving()) <= 1, "two serving: {:?}", s.gens);
        if !self.stopping() {
            let draining = count(|g| matches!(g, GenState::Draining { .. }));
            let in_slots = s
                .gens
                .iter()
                .filter(|g| matches!(g.state, GenState::Draining { .. }) && !self.stopped_itself.contains(&g.pid))
                .count();
            prop_assert!(in_slots <= s.limits.max_draining, "{in_slots} draining: {:?}", s.gens);
            // New connections wait in the kernel's queue only while a worker starts or a
            // restart is due: never because a worker stopped accepting on its own.
            if matches!(s.phase, Phase::Serving { .. }) && !s.gens.iter().any(|g| g.state.serving() && g.accepting) {
                prop_assert!(s.starting() || s.restart_at().is_some(), "nothing accepts or starts: {:?}", s.gens);
            }
            // A reload waits only for a start under way or for a draining slot, and then the
            // oldest draining generation was told to hurry.
            if s.queued.is_some() && !s.starting() {
                prop_assert!(draining >= s.limits.max_draining, "reload queued for nothing: {:?}", s.gens);
                let oldest =
                    s.gens.iter().filter(|g| matches!(g.state, GenState::Draining { .. })).min_by_key(|g| g.generation);
                prop_assert!(oldest.is_some_and(|g| g.hurried), "reload waits, oldest not hurried: {:?}", s.gens);
            }
        }
        // Every worker alive at a reopen is told, at once or as soon as it is ready.
        self.owe_usr1.retain(|p| s.gens.iter().any(|g| g.pid == *p));
        for g in s.gens.iter().filter(|g| self.owe_usr1.contains(&g.pid)) {
            prop_assert!(matches!(g.state, GenState::Starting { .. }), "log reopen never reached {}", g.pid);
        }
        // A `stop`'s client gives up at the deadline the answer gave: every worker is killed
        // by then (a worker killed but not dead is killed again later, past it).
        if let (Some(p), Phase::Stopping { force_at, .. }) = (self.promised, &s.phase) {
            if s.gens.iter().any(|g| !self.killed.contains(&g.pid)) {
                prop_assert!(*force_at <= p, "the SIGKILL comes {:?} after a stop's deadline", *force_at - p);
            }
        }
        if s.busy().is_none() {
            // At rest, the master may hand over to a new binary of itself: the state read back
            // writes the same text, has the same deadlines, and the sequence goes on with it,
            // every invariant holding as before.
            use super::upgrade::codec::{Writer, records};
            let write = |st: &State| {
                let mut w = Writer::new(self.now);
                st.freeze(&mut w);
                w.finish()
            };
            let text = write(s);
            let back = records(&text, self.now).and_then(|r| State::thaw(s.limits.clone(), r));
            let back = back.map_err(|e| TestCaseError::fail(format!("thaw: {e}\n{text}")))?;
            prop_assert_eq!(&write(&back), &text);
            prop_assert_eq!(back.next_deadline(), s.next_deadline());
            self.state = back;
            self.handovers += 1;
        }
        let s = &self.state;
        let tracked: BTreeSet<Pid> = s.gens.iter().map(|g| g.pid).collect();
        let live: BTreeSet<Pid> = self.live.keys().copied().collect();
        prop_assert_eq!(tracked, live, "the master lost track of a child");
        if let Some(d) = s.next_deadline() {
            // A deadline in the past would spin the poll loop: every one must be acted on.
            prop_assert!(d > self.now, "deadline {:?} not acted on", self.now - d);
        }
        Ok(())
    }

    /// Whether something is still to happen by itself (a queued reload, a restart, a
    /// probation, a drain, a shutdown).
    fn busy(&self) -> bool {
        let s = &self.state;
        s.queued.is_some()
            || s.restart_at().is_some()
            || self.stopping()
            || s.gens.iter().any(|g| g.state != GenState::Active)
    }

    /// Every worker behaves from now on: starting ones become ready, draining and doomed ones
    /// exit; time passes until nothing is pending.
    fn settle(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..200 {
            if self.exited.is_some() {
                return Ok(());
            }
            let next = self.state.gens.iter().find_map(|g| {
                if self.doomed.contains(&g.pid) || matches!(g.state, GenState::Draining { .. }) {
                    Some((g.pid, true))
                } else if matches!(g.state, GenState::Starting { .. }) {
                    Some((g.pid, false))
                } else {
                    None
                }
            });
            match next {
                Some((pid, true)) => self.exit(pid)?,
                Some((pid, false)) => self.feed(Event::Notify { pid, msg: "READY=1".into() })?,
                None if self.busy() => {
                    for pid in self.live.keys().copied().collect::<Vec<_>>() {
                        self.feed(Event::Notify { pid, msg: "WATCHDOG=1".into() })?;
                    }
                    self.now += Duration::from_secs(1);
                    self.feed(Event::Tick)?;
                }
                None => return Ok(()),
            }
        }
        Err(TestCaseError::fail(format!("did not settle: {:?} {:?}", self.state.phase, self.state.gens)))
    }

    /// Runs `ops`, then checks what must hold once things calm down and after a final TERM.
    fn run(&mut self, first_ready: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
        if first_ready {
            // Most sequences explore a master that served; the rest, a failing first start.
            self.apply(Op::Ready(0))?;
        }
        for op in ops {
            if self.exited.is_some() {
                break;
            }
            self.apply(op)?;
        }
        if self.disk.is_none() {
            // Settling needs a binary to start; the reload-not-lost check compares builds.
            self.builds += 1;
            self.disk = Some(self.builds);
        }
        self.settle()?;
        if self.exited.is_none() {
            if self.state.phase == Phase::Starting || self.stopping() {
                return Err(TestCaseError::fail(format!("settled in {:?}", self.state.phase)));
            }
            let active = self.state.active().map(|g| self.live[&g.pid]);
            prop_assert!(active.is_some(), "settled with nothing serving: {:?}", self.state.gens);
            self.settled_build = active;
            if let Some((wanted, failed)) = self.wanted {
                // A reload is never lost: what was on disk when it was last asked for (or
                // something newer) serves, unless a start failed since (and said so).
                prop_assert!(failed || active >= wanted, "reload lost: serving build {active:?}, asked for {wanted:?}");
            }
            self.feed(Event::Shutdown { how: Stopping::Graceful, waiter: None })?;
            self.shutdown_requested = true;
            self.settle()?;
        }
        prop_assert!(self.exited.is_some(), "TERM did not lead to exit: {:?} {:?}", self.state.phase, self.state.gens);
        prop_assert!(self.open_waiters.is_empty(), "waiters never answered: {:?}", self.open_waiters);
        Ok(())
    }
}

#[test]
fn model_master_state_machine_random_sequences() {
    static SEQUENCES: AtomicU64 = AtomicU64::new(0);
    static STEPS: AtomicU64 = AtomicU64::new(0);
    static HANDOVERS: AtomicU64 = AtomicU64::new(0);
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let sequences = (any::<bool>(), proptest::bool::weighted(0.9), proptest::collection::vec(op(), 1..300));
    let result = runner.run(&sequences, |(probation, first_ready, ops)| {
        let mut m = Model::new(probation);
        let r = m.run(first_ready, ops);
        SEQUENCES.fetch_add(1, Ordering::Relaxed);
        STEPS.fetch_add(m.steps, Ordering::Relaxed);
        HANDOVERS.fetch_add(m.handovers, Ordering::Relaxed);
        r
    });
    println!(
        "model: {} sequences, {} events checked, {} handovers to a new master (shrinking included)",
        SEQUENCES.load(Ordering::Relaxed),
        STEPS.load(Ordering::Relaxed),
        HANDOVERS.load(Ordering::Relaxed)
    );
    assert!(HANDOVERS.load(Ordering::Relaxed) > 0, "no sequence came to rest");
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The sequences the bugs of the past came from, and each new transition, spelled out with
/// the build that serves once things settle (`None`: the master exited).
#[test]
fn model_known_scenarios() {
    use Op::*;
    let ctl = Reload(Some(false));
    let wait = Reload(Some(true));
    let scenarios: Vec<(&str, Vec<Op>, Option<u64>)> = vec![
        ("first worker fails: start fails, exit 1", vec![Exits(0)], None),
        ("TERM while the first worker starts", vec![Term, Ready(0)], None),
        ("reload storm while one starts", vec![Ready(0), Deploy, ctl, ctl, Deploy, Reload(None)], Some(3)),
        ("crash of the only worker restarts it", vec![Ready(0), Exits(0), Advance(200)], Some(1)),
        ("ready after the ready timeout", vec![Ready(0), ctl, Advance(61_000), Ready(1)], Some(1)),
        ("reload waits for a draining slot", vec![Ready(0), ctl, Ready(1), ctl, Ready(2), ctl], Some(1)),
        // Was a bug (found by the model): the queued reload waited for the crash backoff.
        (
            "a reload queued behind a failing start runs before the crash backoff",
            vec![Ready(0), ctl, Deploy, ctl, Exits(0), Exits(0), Ready(0)],
            Some(2),
        ),
        ("stop with a reload queued", vec![Ready(0), ctl, Deploy, ctl, Stop], None),
        // Was a bug: a second `stop` (or `stop` after TERM) cut the requests in flight.
        ("stop after TERM joins the graceful stop", vec![Ready(0), Term, Stop, Stop], None),
        ("stop while draining after a reload", vec![Ready(0), ctl, Ready(1), Stop, Stop, Advance(1_000)], None),
        // Was a bug: the reload's client was never answered (found by the model).
        ("reload folded into the first start, then TERM, then ready", vec![ctl, Term, Ready(0)], None),
        ("fork fails on reload", vec![Ready(0), FailNextSpawn, ctl], Some(1)),
        // Was a bug: `reload` said "serving" of a worker that died right after READY=1.
        ("new worker dies after READY, before the old one confirmed", vec![Ready(0), ctl, Ready(1), Exits(1)], Some(1)),
        ("binary deleted, then reload", vec![Ready(0), RemoveBinary, ctl, Deploy, ctl], Some(2)),
        ("a crash restart runs the pinned binary, not the new one on disk", vec![Ready(0), Deploy, Exits(0)], Some(1)),
        (
            "a crash restart runs the pinned binary when the disk has none",
            vec![Ready(0), RemoveBinary, Exits(0)],
            Some(1),
        ),
        (
            "a new binary crashing in probation is rolled back",
            vec![Ready(0), Deploy, wait, Ready(1), Exits(1)],
            Some(1),
        ),
        (
            "a new binary that passed probation stays",
            vec![Ready(0), Deploy, wait, Ready(1), Advance(3_500), Exits(1)],
            Some(2),
        ),
        ("a silent worker is replaced from the last good binary", vec![Ready(0), Deploy, Advance(10_500)], Some(1)),
        (
            "a worker that stops accepting on its own is replaced at once, from its pinned binary",
            vec![Ready(0), Deploy, StoppedAccepting(0)],
            Some(1),
        ),
        (
            "a new binary that stops accepting on its own in probation is replaced, on probation again",
            vec![Ready(0), Deploy, wait, Ready(1), StoppedAccepting(1), Ready(2), Exits(2)],
            Some(1),
        ),
        (
            "... and the new binary stays once the replacement passes the probation",
            vec![Ready(0), Deploy, wait, Ready(1), StoppedAccepting(1), Ready(2), Advance(3_500), Exits(2)],
            Some(2),
        ),
        (
            "a restart due when a reload's binary passed probation, then watchdog",
            vec![Ready(0), Exits(0), Deploy, Reload(None), Ready(0), Advance(10_000)],
            Some(2),
        ),
    ];
    for (name, ops, build) in scenarios {
        let _ = &name;
        let mut m = Model::new(true);
        if let Err(e) = m.run(false, ops) {
            panic!("{name}: {e}\n{:?}", m.state);
        }
        assert_eq!(m.settled_build, build, "{name}");
        assert_eq!(m.exited, Some(u8::from(name.starts_with("first worker fails"))), "{name}");
    }
}

/// A replacement that served past the hold-off resets the crash backoff: a worker killed
/// again and again, each time after serving a while, is restarted after the shortest delay.
#[test]
fn model_crash_backoff_resets_after_a_stable_run() {
    use Op::*;
    let mut m = Model::new(true);
    m.apply(Ready(0)).unwrap();
    for round in 0..10 {
        m.apply(Exits(0)).unwrap();
        let due = m.state.restart_at().expect("a restart is scheduled");
        assert_eq!(due - m.now, Duration::from_millis(100), "round {round}: backoff grew");
        m.apply(Advance(100)).unwrap();
        m.apply(Ready(0)).unwrap();
        m.apply(Heartbeat(0)).unwrap();
        m.apply(Advance(1_000)).unwrap();
    }
    // Crashing right after readiness (flapping) keeps growing it.
    m.apply(Exits(0)).unwrap();
    let mut delay = 100;
    for expect in [200, 400, 800] {
        m.apply(Advance(delay)).unwrap();
        m.apply(Ready(0)).unwrap();
        m.apply(Exits(0)).unwrap();
        let due = m.state.restart_at().expect("a restart is scheduled");
        assert_eq!(due - m.now, Duration::from_millis(expect), "flapping");
        delay = expect;
    }
}

/// A worker told to stop gracefully serves on for `--shutdown-delay`, drains for
/// `--drain-timeout` and runs the app's shutdown hook (up to `--drain-timeout` again): the
/// master's SIGKILL waits for all of it, then its grace. A replaced worker has no delay.
/// Was a bug: the master killed at the drain timeout plus 5 s from the stop, in the middle of
/// a drain that a shutdown delay over 5 s had moved later, or of the shutdown hook.
#[test]
fn model_sigkill_waits_for_the_shutdown_delay_the_drain_and_the_hook() {
    use Op::*;
    // Model::new's limits: a delay of 20 s, a drain of 30 s and a hook of 30 s.
    let mut m = Model::new(false);
    m.apply(Ready(0)).unwrap();
    m.apply(Term).unwrap();
    m.beating(&[0], 84);
    assert_eq!(m.kills, 0, "a stopping worker was killed within its delay, drain, hook and grace");
    m.beating(&[0], 1);
    assert_eq!(m.kills, 1, "a stopping worker outlived its delay, drain, hook and grace");

    let mut m = Model::new(false);
    m.apply(Ready(0)).unwrap();
    m.apply(Reload(None)).unwrap();
    m.apply(Ready(1)).unwrap();
    m.beating(&[0, 1], 64);
    assert_eq!(m.kills, 0, "a replaced worker was killed within its drain, hook and grace");
    m.beating(&[0, 1], 1);
    assert_eq!(m.kills, 1, "a replaced worker outlived its drain, hook and grace");
}

/// `stop` is answered with the master's deadline for its workers (the client waits that
/// long): a stop's whole grace, what is left of it for a stop that joins, and the SIGKILL
/// comes then, not later.
#[test]
fn model_a_stops_answer_gives_the_masters_deadline() {
    use Op::*;
    // Model::new's limits: a delay of 20 s, a drain of 30 s, a hook of 30 s, and 5 s of grace.
    let mut m = Model::new(false);
    m.apply(Ready(0)).unwrap();
    m.apply(Stop).unwrap();
    assert_eq!(m.last_ok.as_deref(), Some("stopping: exits within 85000 ms"));
    m.beating(&[0], 10);
    m.apply(Stop).unwrap();
    assert_eq!(m.last_ok.as_deref(), Some("already stopping: exits within 75000 ms"));
    m.beating(&[0], 74);
    assert_eq!(m.kills, 0);
    m.apply(Advance(1_000)).unwrap();
    assert_eq!(m.kills, 1, "the worker is killed at the deadline the answers gave");
}

/// A reload whose worker exits before it is ready is answered with its last status, or, when
/// it sent none, with where its own error went.
#[test]
fn model_a_failed_start_is_answered_with_its_last_words_or_where_to_look() {
    use Op::*;
    let mut m = Model::new(false);
    m.apply(Ready(0)).unwrap();
    m.apply(Reload(Some(false))).unwrap();
    m.apply(Exits(1)).unwrap();
    let err = m.last_err.clone().expect("the reload is answered");
    assert!(err.ends_with("before it was ready (it sent no status: see the log)"), "{err}");
    m.apply(Reload(Some(false))).unwrap();
    m.apply(Says(1)).unwrap();
    m.apply(Exits(1)).unwrap();
    let err = m.last_err.clone().expect("the reload is answered");
    assert!(err.ends_with("before it was ready (last status: cannot open database)"), "{err}");
}

/// A second TERM hurries a graceful stop, but never past the deadline the first stop's answer
/// gave (the random sequences found a TERM 1 s before it postponing the SIGKILL by 1 s).
#[test]
fn model_a_hurried_stop_keeps_the_answers_deadline() {
    use Op::*;
    let mut m = Model::new(false);
    m.apply(Ready(0)).unwrap();
    m.apply(Stop).unwrap();
    assert_eq!(m.last_ok.as_deref(), Some("stopping: exits within 85000 ms"));
    m.beating(&[0], 84);
    m.apply(Term).unwrap();
    assert_eq!(m.kills, 0);
    m.apply(Heartbeat(0)).unwrap();
    m.apply(Advance(999)).unwrap();
    assert_eq!(m.kills, 0);
    m.apply(Advance(1)).unwrap();
    assert_eq!(m.kills, 1, "the worker is killed at the first answer's deadline, not 2 s after the TERM");
}
