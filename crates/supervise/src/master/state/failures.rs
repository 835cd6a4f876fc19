//! What happens when a worker exits: a failed start (rolled back), a crash (restarted from the
//! last good binary with backoff), a new binary failing its probation (rolled back at once), a
//! drained worker (a queued reload may go on).

use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::{
    Action, BACKOFF_MAX, BACKOFF_MIN, Cause, GenState, LastReload, Phase, Reply, STABLE_AFTER, State, Stopping, Waiters,
};

impl State {
    /// A start (first, reload, restart or rollback) failed: generation `generation` will not
    /// serve.
    pub(super) fn on_failed_start(
        &mut self,
        now: Instant,
        out: &mut Vec<Action>,
        generation: u64,
        cause: Cause,
        waiters: Waiters,
        why: String,
    ) {
        for w in waiters.all() {
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
        if cause == Cause::Reload {
            self.stats.reloads_failed += 1;
            self.last_reload = Some(LastReload { at: now, result: Err(why.clone()) });
        }
        match self.active() {
            Some(a) if cause == Cause::Reload => {
                tracing::error!(
                    "reload to generation {generation} rolled back: generation {} keeps serving",
                    a.generation
                );
                let msg = format!("READY=1\nSTATUS=reload failed, generation {} keeps serving: {why}", a.generation);
                out.push(Action::Systemd(msg));
                self.maybe_queued(out);
            }
            Some(_) => self.maybe_queued(out),
            // An operator's reload is waiting: it reads the disk (a fix, perhaps) and goes first.
            None if self.queued.is_some() => self.maybe_queued(out),
            None => self.schedule_restart(now),
        }
    }

    pub(super) fn schedule_restart(&mut self, now: Instant) {
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

    pub(super) fn on_exit(&mut self, now: Instant, out: &mut Vec<Action>, pid: Pid, how: &str) {
        let Some(idx) = self.gens.iter().position(|g| g.pid == pid) else {
            // Not ours (an orphan adopted while we run as PID 1): reaped, nothing to do.
            return;
        };
        let g = self.gens.remove(idx);
        let last_words = g.status.as_deref().map(|s| format!(" (last status: {s})")).unwrap_or_default();
        let how = match &g.killed_for {
            Some(k) => format!("{k}, {how}"),
            None => how.to_owned(),
        };
        if let Some(a) = self.ack.take_if(|a| a.pid == pid) {
            // Ready, then dead before the old workers confirmed: the answer is what is true
            // now, not what was true at its readiness.
            let why = format!("generation {} (pid {pid}) {how} right after it became ready{last_words}", a.generation);
            out.extend(a.waiters.into_iter().map(|w| Action::Reply { waiter: w, reply: Reply::Err(why.clone()) }));
            out.push(Action::Systemd(format!("READY=1\nSTATUS={why}")));
        }
        match g.state {
            GenState::Starting { .. } => {
                let why = match &g.killed_for {
                    Some(_) => how,
                    None if self.stopping() => {
                        format!("{how} before it was ready, while the master shuts down{last_words}")
                    }
                    // Without a status, its own error went only to its stderr: the log (a
                    // worker under `--user` that cannot reach the notify socket, say).
                    None if last_words.is_empty() => {
                        format!("{how} before it was ready (it sent no status: see the log)")
                    }
                    None => format!("{how} before it was ready{last_words}"),
                };
                // Stopping, the master told it to stop itself: no error of the worker's.
                if self.stopping() {
                    tracing::info!("worker generation {} (pid {pid}) {why}", g.generation);
                } else {
                    tracing::error!("worker generation {} (pid {pid}) {why}", g.generation);
                }
                self.on_failed_start(now, out, g.generation, g.cause, g.waiters, why);
            }
            _ if self.stopping() => tracing::info!("worker generation {} (pid {pid}) {how}", g.generation),
            GenState::Probation { .. } => {
                self.stats.worker_crashes += 1;
                self.stats.reloads_rolled_back += 1;
                let after = g.ready_at.map_or(Duration::ZERO, |r| now.saturating_duration_since(r));
                let why = format!(
                    "rolled back after {:.1}s: generation {} {how}{last_words}",
                    after.as_secs_f64(),
                    g.generation
                );
                tracing::error!("{why}; back to the last good binary");
                for w in g.waiters.all() {
                    out.push(Action::Reply { waiter: w, reply: Reply::Err(why.clone()) });
                }
                self.last_reload = Some(LastReload { at: now, result: Err(why.clone()) });
                out.push(Action::Systemd(format!("STATUS={why}")));
                if !self.gens.iter().any(|o| matches!(o.state, GenState::Starting { .. }) || o.state.serving()) {
                    self.spawn(out, Cause::Revert, Waiters::default());
                }
            }
            GenState::Active => {
                self.stats.worker_crashes += 1;
                tracing::error!("worker generation {} (pid {pid}) died unexpectedly: {how}{last_words}", g.generation);
                if g.ready_at.is_some_and(|r| now.saturating_duration_since(r) >= STABLE_AFTER) {
                    self.crash_streak = 0;
                }
                if !self.gens.iter().any(|o| matches!(o.state, GenState::Starting { .. }) || o.state.serving()) {
                    self.schedule_restart(now);
                }
            }
            GenState::Draining { .. } => {
                tracing::info!("worker generation {} (pid {pid}) finished draining: {how}", g.generation);
                self.maybe_queued(out);
            }
        }
    }
}
