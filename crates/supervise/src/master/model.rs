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

use super::state::{Action, Event, GenState, Limits, Phase, Sig, State, Stopping, WaiterId};
use crate::exe::BinaryId;

/// What can happen to the master, as the model generates it.
#[derive(Debug, Clone)]
enum Op {
    Term,
    Quit,
    /// USR2/HUP (`None`) or `reload` (`Some`).
    Reload(bool),
    Stop,
    ReopenLogs(bool),
    Status,
    /// The n-th live worker (modulo their count) reports `READY=1`.
    Ready(usize),
    /// ... reports `STATUS=draining`.
    StoppedAccepting(usize),
    /// ... sends its last words.
    Says(usize),
    /// ... exits (crash, clean exit, killed: all look the same to the master but the words).
    Exits(usize),
    /// A datagram from a process that is not a worker.
    Stranger,
    /// Time passes.
    Advance(u64),
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
        60 => any::<bool>().prop_map(Op::Reload),
        1 => Just(Op::Stop),
        10 => any::<bool>().prop_map(Op::ReopenLogs),
        10 => Just(Op::Status),
        80 => any::<usize>().prop_map(Op::Ready),
        40 => any::<usize>().prop_map(Op::StoppedAccepting),
        10 => any::<usize>().prop_map(Op::Says),
        50 => any::<usize>().prop_map(Op::Exits),
        10 => Just(Op::Stranger),
        // Mostly short steps, sometimes past every deadline (ready 60 s, drain 30 s + 5 s).
        60 => prop_oneof![4 => 0..2_000u64, 1 => 0..120_000u64].prop_map(Op::Advance),
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
    next_waiter: WaiterId,
    open_waiters: BTreeSet<WaiterId>,
    /// The build on disk at the last reload requested while not stopping, and whether a start
    /// failed since.
    wanted: Option<(Option<u64>, bool)>,
    shutdown_requested: bool,
    exited: Option<u8>,
    steps: u64,
}

impl Model {
    fn new() -> Model {
        let limits =
            Limits { ready_timeout: Duration::from_secs(60), drain_timeout: Duration::from_secs(30), max_draining: 2 };
        let mut m = Model {
            state: State::new(limits),
            now: Instant::now(),
            disk: Some(1),
            builds: 1,
            next_pid: 100,
            live: BTreeMap::new(),
            doomed: BTreeSet::new(),
            fail_next_spawn: false,
            next_waiter: 0,
            open_waiters: BTreeSet::new(),
            wanted: None,
            shutdown_requested: false,
            exited: None,
            steps: 0,
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
                Event::Reload { waiter: control.then(|| self.waiter()), on_disk }
            }
            Op::ReopenLogs(control) => Event::ReopenLogs { waiter: control.then(|| self.waiter()) },
            Op::Status => Event::Status { waiter: self.waiter() },
            Op::Ready(n) => match self.nth_live(n) {
                Some(pid) => Event::Notify { pid, msg: "READY=1\nSTATUS=generation ? serving".into() },
                None => Event::Tick,
            },
            Op::StoppedAccepting(n) => match self.nth_live(n) {
                Some(pid) => Event::Notify { pid, msg: "STATUS=draining".into() },
                None => Event::Tick,
            },
            Op::Says(n) => match self.nth_live(n) {
                Some(pid) => Event::Notify { pid, msg: "STATUS=cannot open database".into() },
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
        self.feed(event)
    }

    fn exit(&mut self, pid: Pid) -> Result<(), TestCaseError> {
        self.live.remove(&pid);
        self.doomed.remove(&pid);
        let was_starting = self.state.gens.iter().any(|g| g.pid == pid && matches!(g.state, GenState::Starting { .. }));
        if was_starting {
            if let Some((_, failed)) = &mut self.wanted {
                *failed = true;
            }
        }
        self.feed(Event::Exited { pid, how: "exited with status 1".into() })
    }

    /// One event in, its actions carried out (spawn outcomes fed straight back), invariants
    /// checked.
    fn feed(&mut self, event: Event) -> Result<(), TestCaseError> {
        let mut queue: std::collections::VecDeque<Action> = self.state.on(self.now, event).into();
        self.steps += 1;
        while let Some(action) = queue.pop_front() {
            prop_assert!(self.exited.is_none(), "action after exit: {action:?}");
            match action {
                Action::Spawn { generation } => {
                    prop_assert!(!self.stopping(), "spawn while stopping");
                    let result = match (self.disk, std::mem::take(&mut self.fail_next_spawn)) {
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
                    if matches!(sig, Sig::Kill | Sig::Term | Sig::Quit) {
                        self.doomed.insert(pid);
                    }
                }
                Action::Reply { waiter, .. } | Action::ReplyStatus { waiter } => {
                    prop_assert!(self.open_waiters.remove(&waiter), "waiter {waiter} answered twice or unknown");
                }
                Action::Exit { code, start_failure } => {
                    prop_assert!(self.shutdown_requested || start_failure.is_some(), "exit without a reason");
                    prop_assert_eq!(code, u8::from(start_failure.is_some()));
                    prop_assert!(self.live.is_empty(), "exit with workers alive: {:?}", self.live);
                    self.exited = Some(code);
                }
                Action::ReopenLog
                | Action::Systemd(_)
                | Action::SystemdReloading
                | Action::CloseListeners
                | Action::DaemonReady => {}
            }
        }
        self.check()
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let s = &self.state;
        let count = |f: fn(&GenState) -> bool| s.gens.iter().filter(|g| f(&g.state)).count();
        prop_assert!(count(|g| matches!(g, GenState::Starting { .. })) <= 1, "two starting: {:?}", s.gens);
        prop_assert!(count(|g| *g == GenState::Active) <= 1, "two active: {:?}", s.gens);
        if !self.stopping() {
            let draining = count(|g| matches!(g, GenState::Draining { .. }));
            prop_assert!(draining <= s.limits.max_draining, "{draining} draining: {:?}", s.gens);
        }
        let tracked: BTreeSet<Pid> = s.gens.iter().map(|g| g.pid).collect();
        let live: BTreeSet<Pid> = self.live.keys().copied().collect();
        prop_assert_eq!(tracked, live, "the master lost track of a child");
        if let Some(d) = s.next_deadline() {
            // A deadline in the past would spin the poll loop: every one must be acted on.
            prop_assert!(d > self.now, "deadline {:?} not acted on", self.now - d);
        }
        Ok(())
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
                None if self.state.queued.is_some() || self.state.next_deadline().is_some() => {
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
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let sequences = (proptest::bool::weighted(0.9), proptest::collection::vec(op(), 1..300));
    let result = runner.run(&sequences, |(first_ready, ops)| {
        let mut m = Model::new();
        let r = m.run(first_ready, ops);
        SEQUENCES.fetch_add(1, Ordering::Relaxed);
        STEPS.fetch_add(m.steps, Ordering::Relaxed);
        r
    });
    println!(
        "model: {} sequences, {} events checked (shrinking included)",
        SEQUENCES.load(Ordering::Relaxed),
        STEPS.load(Ordering::Relaxed)
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The sequences the bugs of the past came from, spelled out.
#[test]
fn model_known_scenarios() {
    use Op::*;
    let scenarios: Vec<(&str, Vec<Op>)> = vec![
        ("first worker fails: start fails, exit 1", vec![Exits(0)]),
        ("TERM while the first worker starts", vec![Term, Ready(0)]),
        ("reload storm while one starts", vec![Ready(0), Deploy, Reload(true), Reload(true), Deploy, Reload(false)]),
        ("crash of the only worker restarts it", vec![Ready(0), Exits(0), Advance(200)]),
        ("ready after the ready timeout", vec![Ready(0), Reload(true), Advance(61_000), Ready(1)]),
        (
            "reload waits for a draining slot",
            vec![Ready(0), Reload(true), Ready(1), Reload(true), Ready(2), Reload(true)],
        ),
        ("stop with a reload queued", vec![Ready(0), Reload(true), Deploy, Reload(true), Stop]),
        // Was a bug: the reload's client was never answered (found by the model).
        ("reload folded into the first start, then TERM, then ready", vec![Reload(true), Term, Ready(0)]),
        ("fork fails on reload", vec![Ready(0), FailNextSpawn, Reload(true)]),
        ("binary deleted, then reload", vec![Ready(0), RemoveBinary, Reload(true), Deploy, Reload(true)]),
    ];
    for (name, ops) in scenarios {
        let mut m = Model::new();
        if let Err(e) = m.run(false, ops) {
            panic!("{name}: {e}");
        }
        if name.starts_with("first worker fails") {
            assert_eq!(m.exited, Some(1), "{name}");
        } else {
            assert_eq!(m.exited, Some(0), "{name}");
        }
    }
}
