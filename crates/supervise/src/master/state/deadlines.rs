//! What happens when time passes (timeouts, probation, watchdog, restarts) and on shutdown.

use std::time::Instant;

use super::{Action, Cause, FAST_GRACE, Gen, GenState, KILL_GRACE, Phase, Reply, Sig, State, Stopping, Waiters};

impl State {
    pub(super) fn on_deadlines(&mut self, now: Instant, out: &mut Vec<Action>) {
        let ready_timeout = self.limits.ready_timeout;
        let watchdog = self.limits.watchdog;
        for g in &mut self.gens {
            // First: the end of a probation that came before the watchdog's time counts.
            if let GenState::Probation { until } = g.state {
                if until <= now && g.killed_for.is_none() {
                    tracing::info!("worker generation {} (pid {}) passed its probation", g.generation, g.pid);
                    g.state = GenState::Active;
                    self.good = Some(g.binary);
                    let msg = format!("generation {} (pid {}) serving, probation passed", g.generation, g.pid);
                    for w in std::mem::take(&mut g.waiters.probation) {
                        out.push(Action::Reply { waiter: w, reply: Reply::Ok(msg.clone()) });
                    }
                }
            }
            let silent = now.saturating_duration_since(g.heartbeat);
            match g.state {
                GenState::Starting { deadline } if deadline <= now && g.killed_for.is_none() => {
                    g.killed_for = Some(format!("not ready within {ready_timeout:?}"));
                    tracing::error!(
                        "worker generation {} (pid {}) not ready within {ready_timeout:?}: killing it",
                        g.generation,
                        g.pid
                    );
                    out.push(Action::Signal { pid: g.pid, sig: Sig::Kill });
                }
                GenState::Probation { .. } | GenState::Active
                    if g.killed_for.is_none() && watchdog.is_some_and(|w| silent >= w) =>
                {
                    // Wedged (a blocked runtime, an endless loop, SIGSTOP): it holds the
                    // listener but accepts nothing. Its exit is handled like a crash.
                    let accepting = if g.accepting { "" } else { ", not accepting" };
                    g.killed_for = Some(format!("no heartbeat for {:.1}s (watchdog)", silent.as_secs_f64()));
                    tracing::error!(
                        "worker generation {} (pid {}) sent no heartbeat for {silent:?}{accepting}: killing it",
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
        if let (Some(at), Some(every)) = (self.sd_watchdog_at, self.limits.systemd_watchdog) {
            if at <= now && !self.stopping() {
                // Only while a serving worker is healthy: systemd then restarts the whole unit
                // if both the master and every replacement are stuck.
                let healthy = self.gens.iter().any(|g| g.state.serving() && g.killed_for.is_none());
                if healthy {
                    out.push(Action::Systemd("WATCHDOG=1".into()));
                }
                self.sd_watchdog_at = Some(now + every / 2);
            }
        }
        match &mut self.phase {
            Phase::Serving { restart_at } if restart_at.is_some_and(|t| t <= now) => {
                *restart_at = None;
                if !self.gens.iter().any(|g| matches!(g.state, GenState::Starting { .. }) || g.state.serving()) {
                    self.spawn(out, Cause::Restart, Waiters::default());
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

    pub(super) fn stop(&mut self, now: Instant, out: &mut Vec<Action>, how: Stopping) {
        let (already, start_failure) = match &mut self.phase {
            Phase::Exited | Phase::Stopping { how: Stopping::Fast, .. } => return,
            Phase::Stopping { how: Stopping::Graceful, force_at, start_failure } => {
                if how == Stopping::Graceful {
                    tracing::info!("second shutdown request: stopping now");
                }
                (Some(*force_at), start_failure.take())
            }
            Phase::Starting | Phase::Serving { .. } => {
                self.flush_ack(now, out);
                tracing::info!("{} shutdown", if how == Stopping::Graceful { "graceful" } else { "fast" });
                out.push(Action::Systemd("STOPPING=1".into()));
                // Close our copy of the listeners first: otherwise clients told to reconnect
                // land in an accept queue nobody serves and are reset when it finally closes.
                out.push(Action::CloseListeners);
                let waiting = self.queued.take().into_iter().flat_map(Waiters::all);
                let on_probation = self.gens.iter_mut().flat_map(|g| std::mem::take(&mut g.waiters.probation));
                for w in waiting.chain(on_probation).collect::<Vec<_>>() {
                    out.push(Action::Reply { waiter: w, reply: Reply::Err("shutting down".into()) });
                }
                (None, None)
            }
        };
        // A second request of either kind means now.
        let how = if already.is_some() { Stopping::Fast } else { how };
        // A generation draining after a reload is already doing what a graceful stop asks:
        // TERM would tell it "now" and cut the requests it is finishing.
        let told = |g: &&Gen| how == Stopping::Fast || !matches!(g.state, GenState::Draining { .. });
        out.extend(self.gens.iter().filter(told).map(|g| Action::Signal { pid: g.pid, sig: how.signal() }));
        let grace = if how == Stopping::Fast { FAST_GRACE } else { self.limits.stop_grace() };
        // Hurrying never postpones the SIGKILL a stop's answer promised.
        let force_at = already.map_or(now + grace, |at| at.min(now + grace));
        self.phase = Phase::Stopping { how, force_at, start_failure };
    }
}
