//! The master's decisions, without I/O (as `quinn-proto` keeps a connection free of sockets):
//! [`State::on`] takes an [`Event`] and the current time and returns the [`Action`]s to carry
//! out. `run.rs` turns fds into events and actions into syscalls; the model test
//! (`model.rs`) drives this module with random event sequences and checks its invariants.
//!
//! Lifecycle ([`Phase`]): `Starting` (no generation has served yet: a failure ends the master)
//! → `Serving` → `Stopping` (workers told; exits once none is left) → `Exited`.
//! Each generation ([`GenState`]): `Starting` (spawned, waiting for `READY=1` until the ready
//! timeout) → `Active` (the one serving) → `Draining` (replaced or stopping; killed at its
//! deadline). A reload requested while one starts is folded into it (same binary on disk) or
//! queued; so is one that finds `--max-draining` generations still draining.

use std::time::{Duration, Instant};

use nix::unistd::Pid;

mod event;
mod generation;

pub(crate) use event::{Action, Event, Sig, Stopping};
use generation::PendingAck;
pub(crate) use generation::{Gen, GenState, LastReload};

use crate::control::protocol::Reply;
use crate::exe::BinaryId;

/// A draining worker still alive this long after its drain timeout is killed.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(5);
/// After a fast shutdown request, workers get this long before SIGKILL.
pub(crate) const FAST_GRACE: Duration = Duration::from_secs(2);
/// A worker that served this long resets the crash backoff.
pub(crate) const STABLE_AFTER: Duration = Duration::from_secs(30);
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
    pub(crate) max_draining: usize,
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
    /// Waiters of the generation being spawned (between [`Action::Spawn`] and [`Event::Spawned`]).
    spawning: Option<(u64, Vec<WaiterId>)>,
    /// A reload that waits for the start under way or for a draining slot, with its waiters.
    pub(crate) queued: Option<Vec<WaiterId>>,
    crash_streak: u32,
    ack: Option<PendingAck>,
    pub(crate) last_reload: Option<LastReload>,
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
            crash_streak: 0,
            ack: None,
            last_reload: None,
        }
    }

    /// Handles one event at time `now`.
    pub(crate) fn on(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if self.phase == Phase::Exited {
            return out;
        }
        match event {
            Event::Start => self.spawn(&mut out, Vec::new()),
            Event::Shutdown { how, waiter } => {
                if let Some(w) = waiter {
                    out.push(Action::Reply { waiter: w, reply: Reply::Ok("stopping".into()) });
                }
                self.stop(now, &mut out, how);
            }
            Event::Reload { waiter, on_disk } => self.reload(&mut out, waiter, on_disk),
            Event::ReopenLogs { waiter } => {
                out.push(Action::ReopenLog);
                out.extend(self.gens.iter().map(|g| Action::Signal { pid: g.pid, sig: Sig::Usr1 }));
                if let Some(w) = waiter {
                    out.push(Action::Reply { waiter: w, reply: Reply::Ok("reopened".into()) });
                }
            }
            Event::Status { waiter } => out.push(Action::ReplyStatus { waiter }),
            Event::Notify { pid, msg } => self.on_notify(now, &mut out, pid, &msg),
            Event::Exited { pid, how } => self.on_exit(now, &mut out, pid, &how),
            Event::Spawned { generation, result } => self.on_spawned(now, &mut out, generation, result),
            Event::Tick => {}
        }
        self.on_deadlines(now, &mut out);
        self.check_ack(now, &mut out);
        if let Phase::Stopping { start_failure, .. } = &self.phase {
            if self.gens.is_empty() && self.spawning.is_none() {
                let start_failure = start_failure.clone();
                tracing::debug!("no worker left");
                out.push(Action::Exit { code: if start_failure.is_some() { 1 } else { 0 }, start_failure });
                self.phase = Phase::Exited;
            }
        }
        out
    }

    /// The earliest time at which something is due (a [`Event::Tick`] then acts on it).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let gens = self.gens.iter().filter_map(|g| match g.state {
            // Once killed, its exit (not a time) is what happens next.
            GenState::Starting { deadline } if g.killed_for.is_none() => Some(deadline),
            GenState::Draining { kill_at } => Some(kill_at),
            _ => None,
        });
        let phase = match &self.phase {
            Phase::Serving { restart_at } => *restart_at,
            Phase::Stopping { force_at, .. } => Some(*force_at),
            _ => None,
        };
        gens.chain(phase).chain(self.ack.as_ref().map(|a| a.deadline)).min()
    }

    /// The generation serving now, if any.
    pub(crate) fn active(&self) -> Option<&Gen> {
        self.gens.iter().rev().find(|g| g.state == GenState::Active)
    }

    fn stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping { .. } | Phase::Exited)
    }

    fn draining_count(&self) -> usize {
        self.gens.iter().filter(|g| matches!(g.state, GenState::Draining { .. })).count()
    }

    fn starting(&self) -> bool {
        self.spawning.is_some() || self.gens.iter().any(|g| matches!(g.state, GenState::Starting { .. }))
    }

    /// Starts the next generation; `waiters` learn its outcome.
    fn spawn(&mut self, out: &mut Vec<Action>, waiters: Vec<WaiterId>) {
        if let Phase::Serving { restart_at } = &mut self.phase {
            *restart_at = None;
        }
        self.generation += 1;
        self.spawning = Some((self.generation, waiters));
        out.push(Action::Spawn { generation: self.generation });
    }

    fn on_spawned(
        &mut self,
        now: Instant,
        out: &mut Vec<Action>,
        generation: u64,
        result: Result<(Pid, BinaryId), String>,
    ) {
        let waiters = match self.spawning.take() {
            Some((g, w)) if g == generation => w,
            other => {
                tracing::error!("spawn result for generation {generation} that was not being spawned");
                self.spawning = other;
                return;
            }
        };
        match result {
            Ok((pid, binary)) => {
                tracing::info!("starting worker generation {generation} (pid {pid})");
                self.gens.push(Gen {
                    pid,
                    generation,
                    state: GenState::Starting { deadline: now + self.limits.ready_timeout },
                    binary,
                    started: now,
                    ready_at: None,
                    status: None,
                    killed_for: None,
                    waiters,
                    accepting: true,
                });
                if let Phase::Stopping { how, .. } = self.phase {
                    out.push(Action::Signal { pid, sig: how.signal() });
                }
            }
            Err(why) => {
                tracing::error!("cannot start worker generation {generation}: {why}");
                self.on_failed_start(now, out, generation, waiters, why);
            }
        }
    }

    fn reload(&mut self, out: &mut Vec<Action>, waiter: Option<WaiterId>, on_disk: Option<BinaryId>) {
        if self.stopping() {
            if let Some(w) = waiter {
                out.push(Action::Reply { waiter: w, reply: Reply::Err("shutting down".into()) });
            }
            return;
        }
        if let Some(s) = self.gens.iter_mut().find(|g| matches!(g.state, GenState::Starting { .. })) {
            if on_disk == Some(s.binary) {
                // Same binary as the start under way: that start answers this request too.
                tracing::info!("reload requested while generation {} starts: folded into it", s.generation);
                s.waiters.extend(waiter);
                return;
            }
            tracing::info!("reload requested while generation {} starts, binary changed: queued", s.generation);
            self.queued.get_or_insert_with(Vec::new).extend(waiter);
            return;
        }
        let draining = self.draining_count();
        if draining >= self.limits.max_draining {
            tracing::warn!("reload deferred: {draining} generations still draining (--max-draining)");
            self.queued.get_or_insert_with(Vec::new).extend(waiter);
            return;
        }
        tracing::info!("reload: starting generation {}", self.generation + 1);
        out.push(Action::SystemdReloading);
        self.spawn(out, waiter.into_iter().collect());
    }

    /// Starts a queued reload once nothing blocks it.
    fn maybe_queued(&mut self, out: &mut Vec<Action>) {
        if self.queued.is_none() || self.stopping() || self.starting() {
            return;
        }
        if self.draining_count() >= self.limits.max_draining {
            return;
        }
        let waiters = self.queued.take().unwrap_or_default();
        tracing::info!("queued reload: starting generation {}", self.generation + 1);
        out.push(Action::SystemdReloading);
        self.spawn(out, waiters);
    }

    fn on_notify(&mut self, now: Instant, out: &mut Vec<Action>, pid: Pid, msg: &str) {
        let Some(g) = self.gens.iter_mut().find(|g| g.pid == pid) else {
            tracing::warn!("ignoring notify message from pid {pid}, not a worker: {msg:?}");
            return;
        };
        let m = crate::handoff::Message::parse(msg);
        if m.draining {
            g.accepting = false;
        }
        if m.status.is_some() {
            g.status = m.status;
        }
        if m.ready && matches!(g.state, GenState::Starting { .. }) {
            self.on_ready(now, out, pid);
        }
    }

    fn on_ready(&mut self, now: Instant, out: &mut Vec<Action>, pid: Pid) {
        let drain_deadline = now + self.limits.drain_timeout + KILL_GRACE;
        let Some(idx) = self.gens.iter().position(|g| g.pid == pid) else { return };
        if let Phase::Stopping { how, .. } = self.phase {
            // Started just before the shutdown: it was told to stop; make sure it heard.
            out.push(Action::Signal { pid, sig: how.signal() });
            let g = &mut self.gens[idx];
            g.state = GenState::Draining { kill_at: drain_deadline };
            for w in std::mem::take(&mut g.waiters) {
                out.push(Action::Reply { waiter: w, reply: Reply::Err("shutting down".into()) });
            }
            return;
        }
        let (generation, took, waiters) = {
            let g = &mut self.gens[idx];
            g.state = GenState::Active;
            g.ready_at = Some(now);
            (g.generation, now - g.started, std::mem::take(&mut g.waiters))
        };
        tracing::info!("worker generation {generation} (pid {pid}) ready in {took:?}");
        let mut old_pids = Vec::new();
        for old in self.gens.iter_mut().filter(|g| g.pid != pid && g.state == GenState::Active) {
            tracing::info!("draining generation {} (pid {})", old.generation, old.pid);
            // USR2: replaced, drain now (TERM would mean shutdown, with --shutdown-delay).
            out.push(Action::Signal { pid: old.pid, sig: Sig::Usr2 });
            old.state = GenState::Draining { kill_at: drain_deadline };
            old_pids.push(old.pid);
        }
        if matches!(self.phase, Phase::Serving { .. }) {
            self.last_reload = Some(LastReload { at: now, result: Ok(generation) });
        }
        self.flush_ack(out);
        self.ack = Some(PendingAck {
            old: old_pids,
            waiters,
            reply: format!("generation {generation} (pid {pid}) serving"),
            systemd: format!("READY=1\nSTATUS=generation {generation} serving (worker pid {pid})"),
            deadline: now + ACK_TIMEOUT,
        });
        self.check_ack(now, out);
        if self.phase == Phase::Starting {
            self.phase = Phase::Serving { restart_at: None };
            out.push(Action::DaemonReady);
        }
        self.maybe_queued(out);
    }

    /// A start (first, reload or restart) failed: generation `generation` will not serve.
    fn on_failed_start(
        &mut self,
        now: Instant,
        out: &mut Vec<Action>,
        generation: u64,
        waiters: Vec<WaiterId>,
        why: String,
    ) {
        for w in waiters {
            out.push(Action::Reply { waiter: w, reply: Reply::Err(format!("generation {generation} failed: {why}")) });
        }
        if self.stopping() {
            return;
        }
        if self.phase == Phase::Starting {
            // Nothing ever served: the start itself failed.
            tracing::error!("start failed: {why}");
            self.stop(now, out, Stopping::Fast);
            if let Phase::Stopping { start_failure, .. } = &mut self.phase {
                // Told to the launcher on exit, once the pid file and the sockets are gone.
                *start_failure = Some(why);
            }
            return;
        }
        self.last_reload = Some(LastReload { at: now, result: Err(why.clone()) });
        if let Some(a) = self.active() {
            tracing::error!("reload to generation {generation} rolled back: generation {} keeps serving", a.generation);
            let msg = format!("READY=1\nSTATUS=reload failed, generation {} keeps serving: {why}", a.generation);
            out.push(Action::Systemd(msg));
            self.maybe_queued(out);
        } else {
            self.schedule_restart(now);
        }
    }

    /// Answers the pending reload once the replaced workers stopped accepting (or exited, or
    /// did not say so in time).
    fn check_ack(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(a) = &self.ack else { return };
        let done = a.old.iter().all(|p| self.gens.iter().find(|g| g.pid == *p).is_none_or(|g| !g.accepting));
        if done || now >= a.deadline {
            self.flush_ack(out);
        }
    }

    fn flush_ack(&mut self, out: &mut Vec<Action>) {
        if let Some(a) = self.ack.take() {
            tracing::info!("{}", a.reply);
            out.extend(a.waiters.into_iter().map(|w| Action::Reply { waiter: w, reply: Reply::Ok(a.reply.clone()) }));
            out.push(Action::Systemd(a.systemd));
        }
    }

    fn schedule_restart(&mut self, now: Instant) {
        let Phase::Serving { restart_at: restart_at @ None } = &mut self.phase else { return };
        let delay = BACKOFF_MIN.saturating_mul(1u32 << self.crash_streak.min(16)).min(BACKOFF_MAX);
        self.crash_streak += 1;
        if self.crash_streak >= 5 {
            tracing::error!("crash loop: {} failures in a row; next start in {delay:?}", self.crash_streak);
        } else {
            tracing::warn!("restarting worker in {delay:?}");
        }
        *restart_at = Some(now + delay);
    }

    fn on_exit(&mut self, now: Instant, out: &mut Vec<Action>, pid: Pid, how: &str) {
        let Some(idx) = self.gens.iter().position(|g| g.pid == pid) else {
            // Not ours (an orphan adopted while we run as PID 1): reaped, nothing to do.
            return;
        };
        let g = self.gens.remove(idx);
        let last_words = g.status.as_deref().map(|s| format!(" (last status: {s})")).unwrap_or_default();
        match g.state {
            GenState::Starting { .. } => {
                let why = match &g.killed_for {
                    Some(k) => format!("{k}, {how}"),
                    None => format!("{how} before it was ready{last_words}"),
                };
                tracing::error!("worker generation {} (pid {pid}) {why}", g.generation);
                self.on_failed_start(now, out, g.generation, g.waiters, why);
            }
            GenState::Active if self.stopping() => {
                tracing::info!("worker generation {} (pid {pid}) {how}", g.generation);
            }
            GenState::Active => {
                tracing::error!("worker generation {} (pid {pid}) died unexpectedly: {how}{last_words}", g.generation);
                if g.ready_at.is_some_and(|r| now.saturating_duration_since(r) >= STABLE_AFTER) {
                    self.crash_streak = 0;
                }
                let covered = self.gens.iter().any(|o| matches!(o.state, GenState::Active | GenState::Starting { .. }));
                if !covered {
                    self.schedule_restart(now);
                }
            }
            GenState::Draining { .. } => {
                tracing::info!("worker generation {} (pid {pid}) finished draining: {how}", g.generation);
                self.maybe_queued(out);
            }
        }
    }

    fn on_deadlines(&mut self, now: Instant, out: &mut Vec<Action>) {
        let ready_timeout = self.limits.ready_timeout;
        for g in &mut self.gens {
            match g.state {
                GenState::Starting { deadline } if deadline <= now && g.killed_for.is_none() => {
                    g.killed_for = Some(format!("not ready within {ready_timeout:?}: killed"));
                    tracing::error!(
                        "worker generation {} (pid {}) not ready within {ready_timeout:?}: killing it",
                        g.generation,
                        g.pid
                    );
                    out.push(Action::Signal { pid: g.pid, sig: Sig::Kill });
                }
                GenState::Draining { kill_at } if kill_at <= now => {
                    tracing::warn!(
                        "worker generation {} (pid {}) still draining past its deadline: killing it",
                        g.generation,
                        g.pid
                    );
                    out.push(Action::Signal { pid: g.pid, sig: Sig::Kill });
                    g.state = GenState::Draining { kill_at: now + KILL_GRACE };
                }
                _ => {}
            }
        }
        match &mut self.phase {
            Phase::Serving { restart_at } if restart_at.is_some_and(|t| t <= now) => {
                *restart_at = None;
                if !self.gens.iter().any(|g| matches!(g.state, GenState::Active | GenState::Starting { .. })) {
                    self.spawn(out, Vec::new());
                }
            }
            Phase::Stopping { force_at, .. } if *force_at <= now => {
                *force_at = now + KILL_GRACE;
                for g in &self.gens {
                    tracing::warn!("worker generation {} (pid {}) did not exit: killing it", g.generation, g.pid);
                    out.push(Action::Signal { pid: g.pid, sig: Sig::Kill });
                }
            }
            _ => {}
        }
    }

    fn stop(&mut self, now: Instant, out: &mut Vec<Action>, how: Stopping) {
        let (already, start_failure) = match &mut self.phase {
            Phase::Exited | Phase::Stopping { how: Stopping::Fast, .. } => return,
            Phase::Stopping { how: Stopping::Graceful, start_failure, .. } => {
                if how == Stopping::Graceful {
                    tracing::info!("second shutdown request: stopping now");
                }
                (true, start_failure.take())
            }
            Phase::Starting | Phase::Serving { .. } => {
                self.flush_ack(out);
                tracing::info!("{} shutdown", if how == Stopping::Graceful { "graceful" } else { "fast" });
                out.push(Action::Systemd("STOPPING=1".into()));
                // Close our copy of the listeners first: otherwise clients told to reconnect
                // land in an accept queue nobody serves and are reset when it finally closes.
                out.push(Action::CloseListeners);
                for w in self.queued.take().unwrap_or_default() {
                    out.push(Action::Reply { waiter: w, reply: Reply::Err("shutting down".into()) });
                }
                (false, None)
            }
        };
        // A second request of either kind means now.
        let how = if already { Stopping::Fast } else { how };
        out.extend(self.gens.iter().map(|g| Action::Signal { pid: g.pid, sig: how.signal() }));
        let grace = if how == Stopping::Fast { FAST_GRACE } else { self.limits.drain_timeout + KILL_GRACE };
        self.phase = Phase::Stopping { how, force_at: now + grace, start_failure };
    }
}
