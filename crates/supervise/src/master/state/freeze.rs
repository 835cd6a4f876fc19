//! The state a master hands to the binary it executes in its place (`master/upgrade.rs`): only
//! a master at rest does ([`State::busy`]), so what is handed over is the generations serving
//! and draining, the last good binary and the counters, never a start or a reload in progress.

use super::{Cause, Gen, GenState, LastReload, Limits, Phase, State, Waiters};
use crate::master::upgrade::codec::{Record, Writer};

/// The records [`State::freeze`] writes.
pub(crate) const KEYS: [&str; 4] = ["state", "stats", "last_reload", "gen"];

impl State {
    /// Why the master cannot hand its state over now (`None`: it can). It can at rest:
    /// serving, nothing starting, no reload queued or waiting for its answer, no generation
    /// on probation, no client waiting for a generation.
    pub(crate) fn busy(&self) -> Option<&'static str> {
        match self.phase {
            Phase::Serving { restart_at: None } => {}
            Phase::Serving { restart_at: Some(_) } => return Some("a crash restart is due"),
            Phase::Starting => return Some("the first worker is starting"),
            Phase::Stopping { .. } | Phase::Exited => return Some("shutting down"),
        }
        if self.starting() {
            return Some("a worker is starting");
        }
        if self.queued.is_some() || self.reload_requested.is_some() {
            return Some("a reload is queued");
        }
        if self.ack.is_some() {
            return Some("a reload waits for the old workers to stop accepting");
        }
        if self.gens.iter().any(|g| matches!(g.state, GenState::Probation { .. })) {
            return Some("a generation is on probation");
        }
        if self.gens.iter().any(|g| g.waiters != Waiters::default()) {
            return Some("a control client waits");
        }
        if self.active().is_none() {
            return Some("no worker serves");
        }
        None
    }

    /// Writes the state (at rest: see [`State::busy`]).
    pub(crate) fn freeze(&self, w: &mut Writer) {
        debug_assert_eq!(self.busy(), None);
        w.line("state").n(self.generation).opt_bin(self.good).n(self.crash_streak).opt_t(self.sd_watchdog_at);
        let s = &self.stats;
        w.line("stats").n(s.reloads_ok).n(s.reloads_failed).n(s.reloads_rolled_back).n(s.worker_starts);
        w.n(s.worker_crashes);
        if let Some(r) = &self.last_reload {
            w.line("last_reload").t(r.at);
            match &r.result {
                Ok(g) => w.s("ok").n(g),
                Err(e) => w.s("err").s(e),
            };
        }
        for g in &self.gens {
            w.line("gen").n(g.pid.as_raw()).n(g.generation);
            match g.state {
                GenState::Draining { kill_at } => w.s("draining").t(kill_at),
                // At rest, the others are serving.
                _ => w.s("active").opt_t(None),
            };
            w.bin(g.binary).s(cause_word(g.cause)).t(g.started).t(g.requested).opt_t(g.ready_at).t(g.heartbeat);
            w.opt_s(g.status.as_deref()).opt_s(g.killed_for.as_deref()).opt_s(g.info.as_deref());
            w.flag(g.accepting).opt_t(g.draining_since).flag(g.hurried).opt_t(g.hook_since).opt_n(g.conns);
        }
    }

    /// The state [`State::freeze`] wrote, read by the master that took over (`records` are
    /// those with a key of [`KEYS`]).
    pub(crate) fn thaw(limits: Limits, records: Vec<Record>) -> Result<State, String> {
        let mut st = State::new(limits);
        st.phase = Phase::Serving { restart_at: None };
        let mut seen = false;
        for mut r in records {
            match r.key.as_str() {
                "state" => {
                    seen = true;
                    st.generation = r.n()?;
                    st.good = r.opt_bin()?;
                    st.crash_streak = r.n()?;
                    st.sd_watchdog_at = r.opt_t()?;
                }
                "stats" => {
                    let s = &mut st.stats;
                    (s.reloads_ok, s.reloads_failed, s.reloads_rolled_back) = (r.n()?, r.n()?, r.n()?);
                    (s.worker_starts, s.worker_crashes) = (r.n()?, r.n()?);
                }
                "last_reload" => {
                    let at = r.t()?;
                    let result = match r.s()?.as_str() {
                        "ok" => Ok(r.n()?),
                        "err" => Err(r.s()?),
                        other => return Err(format!("last_reload: unknown outcome {other:?}")),
                    };
                    st.last_reload = Some(LastReload { at, result });
                }
                "gen" => st.gens.push(thaw_gen(&mut r)?),
                other => return Err(format!("unknown record {other:?}")),
            }
            r.end()?;
        }
        if !seen {
            return Err("no state record".into());
        }
        if st.active().is_none() {
            return Err("no serving generation".into());
        }
        if st.gens.iter().any(|g| g.generation > st.generation) {
            return Err("a generation past the last one handed out".into());
        }
        Ok(st)
    }
}

fn thaw_gen(r: &mut Record) -> Result<Gen, String> {
    let pid = nix::unistd::Pid::from_raw(r.n()?);
    let generation = r.n()?;
    let state = match (r.s()?.as_str(), r.opt_t()?) {
        ("active", None) => GenState::Active,
        ("draining", Some(kill_at)) => GenState::Draining { kill_at },
        (other, _) => return Err(format!("generation {generation}: unknown state {other:?}")),
    };
    let binary = r.bin()?;
    let cause = r.s()?;
    let cause = CAUSES.iter().find(|c| cause_word(**c) == cause).copied().ok_or(format!("unknown cause {cause:?}"))?;
    Ok(Gen {
        pid,
        generation,
        state,
        binary,
        cause,
        started: r.t()?,
        requested: r.t()?,
        ready_at: r.opt_t()?,
        heartbeat: r.t()?,
        status: r.opt_s()?,
        killed_for: r.opt_s()?,
        info: r.opt_s()?,
        waiters: Waiters::default(),
        accepting: r.flag()?,
        draining_since: r.opt_t()?,
        hurried: r.flag()?,
        hook_since: r.opt_t()?,
        conns: r.opt_n()?,
        reopen_when_ready: false,
    })
}

const CAUSES: [Cause; 5] = [Cause::Start, Cause::Reload, Cause::Restart, Cause::Replace, Cause::Revert];

fn cause_word(c: Cause) -> &'static str {
    match c {
        Cause::Start => "start",
        Cause::Reload => "reload",
        Cause::Restart => "restart",
        Cause::Replace => "replace",
        Cause::Revert => "revert",
    }
}
