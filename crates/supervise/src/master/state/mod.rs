//! The master's decisions, without I/O (as `quinn-proto` keeps a connection free of sockets):
//! [`State::on`] takes an [`Event`] and the current time and returns the [`Action`]s to carry
//! out. `run.rs` turns fds into events and actions into syscalls; the model test
//! (`model.rs`) drives this module with random event sequences and checks its invariants.
//!
//! Lifecycle ([`Phase`]): `Starting` (no generation has served yet: a failure ends the master)
//! → `Serving` → `Stopping` (workers told; exits once none is left) → `Exited`.
//! Each generation ([`GenState`]): `Starting` (spawned, waiting for `READY=1` until the ready
//! timeout) → `Probation` (a reload's new binary serves; a crash before the end brings back
//! the last good binary) → `Active` (the one serving) → `Draining` (replaced or stopping;
//! killed at its deadline). Every generation runs a pinned binary: only a reload reads the
//! disk; crash restarts run the last good one. A serving worker silent for the watchdog time
//! is killed and replaced like a crash. A reload requested while one starts is folded into it
//! (same binary on disk) or queued; so is one that finds `--max-draining` generations still
//! draining, which then tells the oldest to hurry (close its long-lived connections now; its
//! requests in flight still finish, and its drain deadline still holds). A serving worker that
//! stops accepting on its own (a signal sent to it rather than to the master) is moved to
//! `Draining` and replaced at once from its own binary; with nothing serving, a reload does
//! not wait for a draining slot.

use std::time::{Duration, Instant};

use nix::unistd::Pid;

mod event;
mod generation;

pub(crate) use event::{Action, Cause, Event, Sig, Stopping, Waiting};
pub(crate) use generation::{Gen, GenState, LastReload};
use generation::{PendingAck, Waiters};

use crate::control::protocol::{self, Reply};
use crate::exe::BinaryId;

/// A draining worker still alive this long after its drain timeout is killed.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(5);
/// After a fast shutdown request, workers get this long before SIGKILL.
pub(crate) const FAST_GRACE: Duration = Duration::from_secs(2);
/// A worker that served this long counts as a successful start: it resets the crash backoff
/// (shorter would let a worker that crashes right after its readiness restart without delay).
pub(crate) const STABLE_AFTER: Duration = Duration::from_secs(1);
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a reload's answer waits for the old workers to confirm they stopped accepting.
pub(crate) const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// A control client waiting for an answer; the run loop maps it to its socket.
pub(crate) type WaiterId = u64;

/// The settings the decisions depend on.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) ready_timeout: Duration,
    pub(crate) drain_timeout: Duration,
    /// How long a worker told to stop (TERM) keeps serving before its drain begins.
    pub(crate) shutdown_delay: Duration,
    /// How long a worker may still take after its drain: the app's shutdown hook (zero
    /// without one).
    pub(crate) after_drain: Duration,
    pub(crate) max_draining: usize,
    /// How long a reload's new binary is on probation (zero: none).
    pub(crate) probation: Duration,
    /// A serving worker silent this long is replaced (`None`: no watchdog).
    pub(crate) watchdog: Option<Duration>,
    /// systemd's `WATCHDOG_USEC` for the master, if set: `WATCHDOG=1` every half of it.
    pub(crate) systemd_watchdog: Option<Duration>,
}

impl Limits {
    /// From the moment a worker starts its drain (replaced, or stopped on its own) to its
    /// SIGKILL: the drain, then its shutdown hook, then [`KILL_GRACE`].
    pub(crate) fn drain_grace(&self) -> Duration {
        self.drain_timeout + self.after_drain + KILL_GRACE
    }

    /// From a graceful stop's TERM to the SIGKILL: the worker first serves on for the
    /// shutdown delay, then drains.
    pub(crate) fn stop_grace(&self) -> Duration {
        self.shutdown_delay + self.drain_grace()
    }
}

/// The master's lifecycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Phase {
    /// No generation has been ready yet: a failed start ends the master.
    Starting,
    /// A generation has served; a crash with nothing else serving restarts at `restart_at`.
    Serving { restart_at: Option<Instant> },
    /// Workers were told to stop; SIGKILL at `force_at`; exit once none is left.
    Stopping { how: Stopping, force_at: Instant, start_failure: Option<String> },
    /// [`Action::Exit`] was emitted: nothing more happens.
    Exited,
}

/// The master's whole state.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) limits: Limits,
    pub(crate) phase: Phase,
    pub(crate) gens: Vec<Gen>,
    /// The last generation number handed out.
    pub(crate) generation: u64,
    /// The generation being spawned (between [`Action::Spawn`] and [`Event::Spawned`]).
    spawning: Option<(u64, Cause, Waiters)>,
    /// A reload that waits for the start under way or for a draining slot, with its waiters.
    pub(crate) queued: Option<Waiters>,
    /// The last binary that served through its probation (or became active without one):
    /// what crash restarts and rollbacks run.
    pub(crate) good: Option<BinaryId>,
    pub(crate) crash_streak: u32,
    ack: Option<PendingAck>,
    pub(crate) last_reload: Option<LastReload>,
    /// When to tell systemd `WATCHDOG=1` next.
    sd_watchdog_at: Option<Instant>,
    /// When the reload under way (or queued) was first asked for.
    reload_requested: Option<Instant>,
    /// What the metrics count (copied to the shared region by the run loop).
    pub(crate) stats: Stats,
}

/// The master's counters, monotonic.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stats {
    /// Reloads whose new generation served (later rollbacks included).
    pub(crate) reloads_ok: u64,
    /// Reloads whose new generation failed before it served.
    pub(crate) reloads_failed: u64,
    /// Reloads rolled back after the switch (a crash in probation).
    pub(crate) reloads_rolled_back: u64,
    pub(crate) worker_starts: u64,
    /// Serving workers that died unexpectedly (the watchdog's kills included).
    pub(crate) worker_crashes: u64,
    /// Reload durations not yet taken by the run loop: from the request to the replaced
    /// generation no longer accepting.
    pub(crate) reload_durations: Vec<Duration>,
}

impl State {
    pub(crate) fn new(limits: Limits) -> State {
        State {
            limits,
            phase: Phase::Starting,
            gens: Vec::new(),
            generation: 0,
            spawning: None,
            queued: None,
            good: None,
            crash_streak: 0,
            ack: None,
            last_reload: None,
            sd_watchdog_at: None,
            reload_requested: None,
            stats: Stats::default(),
        }
    }

    /// Handles one event at time `now`.
    pub(crate) fn on(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if self.phase == Phase::Exited {
            return out;
        }
        match event {
            Event::Start => {
                self.sd_watchdog_at = self.limits.systemd_watchdog.map(|d| now + d / 2);
                self.spawn(&mut out, Cause::Start, Waiters::default());
            }
            Event::Shutdown { how, waiter } => {
                // `stop` asks for a graceful stop and waits for it: one already under way is
                // joined, not hurried into cutting the requests it lets finish (a second TERM
                // or INT, or QUIT, is what means "now").
                let join = waiter.is_some()
                    && how == Stopping::Graceful
                    && matches!(self.phase, Phase::Stopping { .. } | Phase::Exited);
                if join {
                    tracing::info!("stop requested: already stopping");
                } else {
                    self.stop(now, &mut out, how);
                }
                if let Some(w) = waiter {
                    // When the last worker is killed at the latest: `stop` waits that long.
                    let within = match self.phase {
                        Phase::Stopping { force_at, .. } => force_at.saturating_duration_since(now),
                        _ => Duration::ZERO,
                    };
                    let text = protocol::stopping(join, within);
                    out.push(Action::Reply { waiter: w, reply: Reply::Ok(text) });
                }
            }
            Event::Reload { waiter, on_disk } => self.reload(now, &mut out, waiter, on_disk),
            Event::ReopenLogs { waiter } => {
                // The master first: it creates the new file and gives it to the workers' user,
                // who may not be allowed to create files in the log's directory.
                out.push(Action::ReopenLog { waiter });
                for g in &mut self.gens {
                    if matches!(g.state, GenState::Starting { .. }) {
                        // USR1 kills a process that has not installed its handlers yet (a
                        // wrapper script, or a worker still starting up): told once ready.
                        g.reopen_when_ready = true;
                    } else {
                        out.push(Action::Signal { pid: g.pid, sig: Sig::Usr1 });
                    }
                }
            }
            Event::Status { waiter } => out.push(Action::ReplyStatus { waiter }),
            Event::Notify { pid, msg } => self.on_notify(now, &mut out, pid, &msg),
            Event::Exited { pid, how } => self.on_exit(now, &mut out, pid, &how),
            Event::Spawned { generation, result } => self.on_spawned(now, &mut out, generation, result),
            Event::Tick => {}
            Event::Resumed { slept } => self.resumed(now, slept),
        }
        self.on_deadlines(now, &mut out);
        self.check_ack(now, &mut out);
        if let Phase::Stopping { start_failure, .. } = &self.phase {
            if self.gens.is_empty() && self.spawning.is_none() {
                let start_failure = start_failure.clone();
                out.push(Action::Exit { code: if start_failure.is_some() { 1 } else { 0 }, start_failure });
                self.phase = Phase::Exited;
            }
        }
        out
    }

    /// See [`Event::Resumed`]. The systemd watchdog's time is not moved: it is told at once.
    fn resumed(&mut self, now: Instant, slept: std::time::Duration) {
        tracing::warn!(
            "the master did not run for up to {:.1}s (stopped with its workers?): deadlines move on by that much, \
             heartbeats are awaited afresh",
            slept.as_secs_f64()
        );
        for g in &mut self.gens {
            g.heartbeat = now;
            match &mut g.state {
                GenState::Starting { deadline } => *deadline += slept,
                GenState::Probation { until } => *until += slept,
                GenState::Draining { kill_at } => *kill_at += slept,
                GenState::Active => {}
            }
        }
        match &mut self.phase {
            Phase::Serving { restart_at: Some(at) } => *at += slept,
            Phase::Stopping { force_at, .. } => *force_at += slept,
            _ => {}
        }
        if let Some(ack) = &mut self.ack {
            ack.deadline += slept;
        }
    }

    /// The earliest time at which something is due (a [`Event::Tick`] then acts on it).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let gens = self.gens.iter().filter(|g| g.killed_for.is_none()).filter_map(|g| match g.state {
            GenState::Starting { deadline } => Some(deadline),
            GenState::Probation { until } => Some(self.watchdog_due(g).map_or(until, |w| w.min(until))),
            GenState::Active => self.watchdog_due(g),
            GenState::Draining { .. } => None,
        });
        // A killed draining worker keeps a deadline: it is killed again if it lingers.
        let draining = self.gens.iter().filter_map(|g| match g.state {
            GenState::Draining { kill_at } => Some(kill_at),
            _ => None,
        });
        let phase = match &self.phase {
            Phase::Serving { restart_at } => *restart_at,
            Phase::Stopping { force_at, .. } => Some(*force_at),
            _ => None,
        };
        let sd = self.sd_watchdog_at.filter(|_| !self.stopping());
        gens.chain(draining).chain(phase).chain(sd).chain(self.ack.as_ref().map(|a| a.deadline)).min()
    }

    fn watchdog_due(&self, g: &Gen) -> Option<Instant> {
        self.limits.watchdog.map(|w| g.heartbeat + w)
    }

    /// The generation serving now, if any.
    pub(crate) fn active(&self) -> Option<&Gen> {
        self.gens.iter().rev().find(|g| g.state.serving())
    }

    /// Whether the run loop must keep `binary` pinned (a generation runs it, or it is the one
    /// crash restarts and rollbacks run).
    pub(crate) fn needs_binary(&self, binary: &BinaryId) -> bool {
        self.good.as_ref() == Some(binary) || self.gens.iter().any(|g| g.binary == *binary)
    }

    /// When the next crash restart is due, if one is.
    pub(crate) fn restart_at(&self) -> Option<Instant> {
        match self.phase {
            Phase::Serving { restart_at } => restart_at,
            _ => None,
        }
    }

    fn stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping { .. } | Phase::Exited)
    }

    /// `g`'s state in one word, for `status`: a serving generation told to stop by a shutdown
    /// is stopping while it still accepts (its `--shutdown-delay`), then draining, though no
    /// newer generation replaced it.
    pub(crate) fn gen_word(&self, g: &Gen) -> &'static str {
        match () {
            _ if !self.stopping() || !g.state.serving() => g.state.word(),
            _ if g.accepting => "stopping",
            _ => "draining",
        }
    }

    /// How long `g`, told to stop gracefully, still serves before its drain begins (what is
    /// left of its `--shutdown-delay`), if it does.
    pub(crate) fn delay_left(&self, g: &Gen, now: Instant) -> Option<Duration> {
        match self.phase {
            Phase::Stopping { how: Stopping::Graceful, force_at, .. }
                if g.state.serving() && g.accepting && !self.limits.shutdown_delay.is_zero() =>
            {
                let drain_from = force_at.checked_sub(self.limits.drain_grace())?;
                Some(drain_from.saturating_duration_since(now)).filter(|d| !d.is_zero())
            }
            _ => None,
        }
    }

    fn draining_count(&self) -> usize {
        self.gens.iter().filter(|g| matches!(g.state, GenState::Draining { .. })).count()
    }

    /// A reload waits for a draining slot: `--max-draining` generations drain while one
    /// serves (with nothing serving, the new one replaces none, and new connections wait until
    /// it serves).
    fn waits_for_slot(&self) -> bool {
        self.draining_count() >= self.limits.max_draining && self.active().is_some()
    }

    pub(crate) fn starting(&self) -> bool {
        self.spawning.is_some() || self.gens.iter().any(|g| matches!(g.state, GenState::Starting { .. }))
    }

    /// Starts the next generation: a reload or the first start from the disk, a restart or a
    /// rollback from the last good binary.
    fn spawn(&mut self, out: &mut Vec<Action>, cause: Cause, waiters: Waiters) {
        let binary = match cause {
            Cause::Start | Cause::Reload => None,
            Cause::Restart | Cause::Replace | Cause::Revert => self.good,
        };
        self.spawn_binary(out, cause, waiters, binary);
    }

    /// Starts the next generation from `binary` (pinned), or from the disk (`None`).
    fn spawn_binary(&mut self, out: &mut Vec<Action>, cause: Cause, waiters: Waiters, binary: Option<BinaryId>) {
        if let Phase::Serving { restart_at } = &mut self.phase {
            *restart_at = None;
        }
        self.generation += 1;
        self.spawning = Some((self.generation, cause, waiters));
        out.push(Action::Spawn { generation: self.generation, binary });
    }

    fn on_spawned(
        &mut self,
        now: Instant,
        out: &mut Vec<Action>,
        generation: u64,
        result: Result<(Pid, BinaryId), String>,
    ) {
        let (cause, waiters) = match self.spawning.take() {
            Some((g, cause, w)) if g == generation => (cause, w),
            other => {
                tracing::error!("spawn result for generation {generation} that was not being spawned");
                self.spawning = other;
                return;
            }
        };
        let requested = if cause == Cause::Reload { self.reload_requested.take() } else { None };
        match result {
            Ok((pid, binary)) => {
                tracing::info!("starting worker generation {generation} (pid {pid}){}", cause.note());
                self.stats.worker_starts += 1;
                self.gens.push(Gen {
                    requested: requested.unwrap_or(now),
                    pid,
                    generation,
                    state: GenState::Starting { deadline: now + self.limits.ready_timeout },
                    binary,
                    cause,
                    started: now,
                    ready_at: None,
                    heartbeat: now,
                    status: None,
                    killed_for: None,
                    info: None,
                    waiters,
                    accepting: true,
                    draining_since: None,
                    hurried: false,
                    hook_since: None,
                    conns: None,
                    reopen_when_ready: false,
                });
                if let Phase::Stopping { how, .. } = self.phase {
                    out.push(Action::Signal { pid, sig: how.signal() });
                }
            }
            Err(why) => {
                tracing::error!("cannot start worker generation {generation}: {why}");
                self.on_failed_start(now, out, generation, cause, waiters, why);
            }
        }
    }

    fn reload(&mut self, now: Instant, out: &mut Vec<Action>, waiter: Option<Waiting>, on_disk: Option<BinaryId>) {
        if self.stopping() {
            // Told in the log too: a USR2 or HUP has no one to answer.
            tracing::info!("reload requested while shutting down: ignored");
            if let Some(w) = waiter {
                out.push(Action::Reply { waiter: w.id, reply: Reply::Err("shutting down".into()) });
            }
            return;
        }
        if let Some(s) = self.gens.iter_mut().find(|g| matches!(g.state, GenState::Starting { .. })) {
            if on_disk == Some(s.binary) && s.cause == Cause::Reload {
                // Same binary as the reload under way: that start answers this request too.
                tracing::info!("reload requested while generation {} starts: folded into it", s.generation);
                s.waiters.add(waiter);
                return;
            }
            tracing::info!("reload requested while generation {} starts: queued", s.generation);
            self.queued.get_or_insert_with(Waiters::default).add(waiter);
            self.reload_requested.get_or_insert(now);
            return;
        }
        self.reload_requested.get_or_insert(now);
        if self.waits_for_slot() {
            let draining = self.draining_count();
            let what = if draining == 1 { "generation" } else { "generations" };
            tracing::warn!("reload deferred: {draining} {what} still draining (--max-draining)");
            self.queued.get_or_insert_with(Waiters::default).add(waiter);
            self.hurry_oldest(out);
            return;
        }
        tracing::info!("reload: starting generation {}", self.generation + 1);
        out.push(Action::SystemdReloading);
        let mut waiters = Waiters::default();
        waiters.add(waiter);
        self.spawn(out, Cause::Reload, waiters);
    }

    /// Starts a queued reload once nothing blocks it.
    fn maybe_queued(&mut self, out: &mut Vec<Action>) {
        if self.queued.is_none() || self.stopping() || self.starting() {
            return;
        }
        if self.waits_for_slot() {
            self.hurry_oldest(out);
            return;
        }
        let waiters = self.queued.take().unwrap_or_default();
        tracing::info!("queued reload: starting generation {}", self.generation + 1);
        out.push(Action::SystemdReloading);
        self.spawn(out, Cause::Reload, waiters);
    }

    fn on_notify(&mut self, now: Instant, out: &mut Vec<Action>, pid: Pid, msg: &str) {
        let stopping = self.stopping();
        let Some(g) = self.gens.iter_mut().find(|g| g.pid == pid) else {
            tracing::warn!("ignoring notify message from pid {pid}, not a worker: {msg:?}");
            return;
        };
        let m = crate::handoff::Message::parse(msg);
        if m.watchdog {
            g.heartbeat = now;
        }
        // Draining while it serves: not on the master's word (that moved it to `Draining`
        // first), so on a signal sent to the worker itself.
        let stopped_itself = m.draining && g.state.serving();
        if m.draining {
            g.accepting = false;
            if stopping {
                // Told by the stop: `status` shows how long it has drained, and what is open.
                g.draining_since.get_or_insert(now);
            }
        }
        if m.hook {
            g.hook_since.get_or_insert(now);
        }
        if m.status.is_some() {
            g.status = m.status;
        }
        if m.conns.is_some() {
            g.conns = m.conns;
        }
        if m.info.is_some() {
            g.info = m.info;
        }
        if m.ready && matches!(g.state, GenState::Starting { .. }) {
            self.on_ready(now, out, pid);
        }
        if stopped_itself && !self.stopping() {
            self.on_stopped_itself(now, out, pid);
        }
    }

    /// A serving worker closed its listeners without being replaced (`kill -USR2` or `kill`
    /// aimed at a worker's pid rather than the master's): nobody accepts until a replacement
    /// serves, so one starts now, not once the worker has finished draining (which may take
    /// the whole drain timeout, with new connections waiting in the kernel's queue). The
    /// replacement runs the same binary (a signal says nothing against it), on probation again
    /// if it was, and answers the clients waiting for the one it replaces.
    fn on_stopped_itself(&mut self, now: Instant, out: &mut Vec<Action>, pid: Pid) {
        let kill_at = now + self.limits.drain_grace();
        let Some(g) = self.gens.iter_mut().find(|g| g.pid == pid) else { return };
        g.state = GenState::Draining { kill_at };
        g.draining_since = Some(now);
        let (generation, binary) = (g.generation, g.binary);
        let mut waiters = std::mem::take(&mut g.waiters);
        if let Some(a) = self.ack.take_if(|a| a.pid == pid) {
            waiters.ready.extend(a.waiters);
        }
        let why = format!(
            "worker generation {generation} (pid {pid}) stopped accepting connections on its own (a signal \
             sent to the worker rather than to the master?)"
        );
        // At most one generation serves, and that was this one: only a start can take over.
        if self.starting() {
            tracing::warn!("{why}: draining it; the generation starting takes over");
            for w in waiters.all() {
                out.push(Action::Reply { waiter: w, reply: Reply::Err(why.clone()) });
            }
        } else {
            tracing::warn!("{why}: draining it; starting a replacement now");
            out.push(Action::Systemd(format!("STATUS={why}")));
            self.spawn_binary(out, Cause::Replace, waiters, Some(binary));
        }
    }

    fn on_ready(&mut self, now: Instant, out: &mut Vec<Action>, pid: Pid) {
        let drain_deadline = now + self.limits.drain_grace();
        let Some(idx) = self.gens.iter().position(|g| g.pid == pid) else { return };
        if std::mem::take(&mut self.gens[idx].reopen_when_ready) {
            // The logs were reopened while it started: it still writes to the old file.
            out.push(Action::Signal { pid, sig: Sig::Usr1 });
        }
        if let Phase::Stopping { how, .. } = self.phase {
            // Started just before the shutdown: it was told to stop; make sure it heard.
            out.push(Action::Signal { pid, sig: how.signal() });
            let grace = if how == Stopping::Fast { FAST_GRACE } else { self.limits.stop_grace() };
            let g = &mut self.gens[idx];
            g.state = GenState::Draining { kill_at: now + grace };
            g.draining_since = Some(now);
            for w in std::mem::take(&mut g.waiters).all() {
                out.push(Action::Reply { waiter: w, reply: Reply::Err("shutting down".into()) });
            }
            return;
        }
        let probation = self.limits.probation;
        let good = self.good;
        let g = &mut self.gens[idx];
        // A new binary's replacement (its worker stopped on its own) serves its probation anew.
        let on_probation = matches!(g.cause, Cause::Reload | Cause::Replace)
            && good.is_some_and(|b| b != g.binary)
            && !probation.is_zero();
        g.state = if on_probation { GenState::Probation { until: now + probation } } else { GenState::Active };
        g.ready_at = Some(now);
        g.heartbeat = now;
        // Its readiness message's own STATUS= is no last word.
        g.status = None;
        let (generation, took) = (g.generation, now - g.started);
        let mut waiters = std::mem::take(&mut g.waiters.ready);
        if on_probation {
            tracing::info!(
                "worker generation {generation} (pid {pid}) ready in {took:?}, on probation for {probation:?}"
            );
        } else {
            tracing::info!("worker generation {generation} (pid {pid}) ready in {took:?}");
            self.good = Some(g.binary);
            waiters.append(&mut g.waiters.probation);
        }
        let binary = self.gens[idx].binary;
        let info = self.gens[idx].info.as_deref().map(|i| format!(" ({i})")).unwrap_or_default();
        let mut same_as = None;
        let mut old_pids = Vec::new();
        for old in self.gens.iter_mut().filter(|g| g.pid != pid && g.state.serving()) {
            if old.binary == binary {
                same_as = Some(old.generation);
            }
            tracing::info!("draining generation {} (pid {})", old.generation, old.pid);
            // USR2: replaced, drain now (TERM would mean shutdown, with --shutdown-delay).
            out.push(Action::Signal { pid: old.pid, sig: Sig::Usr2 });
            old.state = GenState::Draining { kill_at: drain_deadline };
            old.draining_since = Some(now);
            old_pids.push(old.pid);
            let replaced =
                format!("generation {} replaced by generation {generation} before its probation ended", old.generation);
            for w in std::mem::take(&mut old.waiters.probation) {
                out.push(Action::Reply { waiter: w, reply: Reply::Ok(replaced.clone()) });
            }
        }
        let reload = matches!(self.phase, Phase::Serving { .. }) && self.gens[idx].cause == Cause::Reload;
        if reload {
            self.last_reload = Some(LastReload { at: now, result: Ok(generation) });
            self.stats.reloads_ok += 1;
        }
        if let Some(prev) = self.ack.take() {
            // A newer generation became ready before the previous reload was answered: those
            // clients learn the outcome that holds now, this one.
            waiters.extend(prev.waiters);
        }
        self.ack = Some(PendingAck {
            pid,
            generation,
            old: old_pids,
            waiters,
            reply: match same_as {
                // Told, not hidden: a deploy that did not land (`cp` onto a busy file, a
                // symlink switched elsewhere) looks exactly like this.
                Some(old) => {
                    format!("generation {generation} (pid {pid}) serving{info}; the same binary as generation {old}")
                }
                None => format!("generation {generation} (pid {pid}) serving{info}"),
            },
            systemd: format!("READY=1\nSTATUS=generation {generation} serving (worker pid {pid})"),
            deadline: now + ACK_TIMEOUT,
            requested: reload.then_some(self.gens[idx].requested),
        });
        self.check_ack(now, out);
        if self.phase == Phase::Starting {
            self.phase = Phase::Serving { restart_at: None };
            out.push(Action::DaemonReady);
        }
        self.maybe_queued(out);
    }

    /// A reload waits for a draining slot: the oldest draining generation is told to hurry
    /// (USR2 again): it closes its long-lived connections now (WebSockets get their close frame,
    /// event streams end) rather than over the drain spread. Its requests in flight still
    /// finish, and it is killed at its deadline as before: the wait is bounded either way.
    fn hurry_oldest(&mut self, out: &mut Vec<Action>) {
        let oldest =
            self.gens.iter_mut().filter(|g| matches!(g.state, GenState::Draining { .. })).min_by_key(|g| g.generation);
        if let Some(g) = oldest.filter(|g| !g.hurried) {
            let open =
                g.conns.map(|n| format!(" ({n} connection{} open)", if n == 1 { "" } else { "s" })).unwrap_or_default();
            tracing::info!("generation {} (pid {}) holds a draining slot{open}: told to hurry", g.generation, g.pid);
            g.hurried = true;
            out.push(Action::Signal { pid: g.pid, sig: Sig::Usr2 });
        }
    }

    /// Answers the pending reload once the replaced workers stopped accepting (or exited, or
    /// did not say so in time).
    fn check_ack(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(a) = &self.ack else { return };
        let done = a.old.iter().all(|p| self.gens.iter().find(|g| g.pid == *p).is_none_or(|g| !g.accepting));
        if done || now >= a.deadline {
            self.flush_ack(now, out);
        }
    }

    fn flush_ack(&mut self, now: Instant, out: &mut Vec<Action>) {
        if let Some(a) = self.ack.take() {
            if let Some(t) = a.requested {
                self.stats.reload_durations.push(now.saturating_duration_since(t));
            }
            tracing::info!("{}", a.reply);
            out.extend(a.waiters.into_iter().map(|w| Action::Reply { waiter: w, reply: Reply::Ok(a.reply.clone()) }));
            out.push(Action::Systemd(a.systemd));
        }
    }
}

mod deadlines;
mod failures;
mod freeze;

pub(crate) use freeze::KEYS;
