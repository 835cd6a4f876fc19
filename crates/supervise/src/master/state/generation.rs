//! One generation of workers: a process and what the master knows of it.

use std::time::Instant;

use nix::unistd::Pid;

use super::{Cause, WaiterId, Waiting};
use crate::exe::BinaryId;

/// Where one generation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GenState {
    /// Spawned, waiting for `READY=1` until `deadline` (the ready timeout).
    Starting { deadline: Instant },
    /// Serving a new binary; a crash before `until` brings back the last good one.
    Probation { until: Instant },
    /// Serving.
    Active,
    /// Replaced or stopping; killed at `kill_at`.
    Draining { kill_at: Instant },
}

impl GenState {
    pub(crate) fn word(self) -> &'static str {
        match self {
            GenState::Starting { .. } => "starting",
            GenState::Probation { .. } => "probation",
            GenState::Active => "serving",
            GenState::Draining { .. } => "draining",
        }
    }

    /// Active or on probation: the generation new connections reach.
    pub(crate) fn serving(self) -> bool {
        matches!(self, GenState::Active | GenState::Probation { .. })
    }
}

/// One worker process and what the master knows of it.
#[derive(Debug, Clone)]
pub(crate) struct Gen {
    pub(crate) pid: Pid,
    pub(crate) generation: u64,
    pub(crate) state: GenState,
    /// The pinned file it runs.
    pub(crate) binary: BinaryId,
    pub(crate) cause: Cause,
    pub(super) started: Instant,
    /// When its reload was asked for (its start, for other causes).
    pub(super) requested: Instant,
    pub(crate) ready_at: Option<Instant>,
    /// The last `WATCHDOG=1` (or its readiness).
    pub(super) heartbeat: Instant,
    /// The last `STATUS=` it sent: its last words if it dies.
    pub(super) status: Option<String>,
    /// Why the master killed it, if it did.
    pub(crate) killed_for: Option<String>,
    /// What it said it runs (`BATON_INFO=`).
    pub(crate) info: Option<String>,
    /// Control clients waiting for this generation's outcome.
    pub(super) waiters: Waiters,
    /// Still accepting connections (until it reports `STATUS=draining` or exits).
    pub(crate) accepting: bool,
    /// When it was told to drain.
    pub(crate) draining_since: Option<Instant>,
    /// Told to hurry (close its long-lived connections now): a reload waits for its slot.
    pub(crate) hurried: bool,
    /// When it said its shutdown hook began (its drain over).
    pub(crate) hook_since: Option<Instant>,
    /// Its open connections, as it last reported them (`BATON_CONNS=`).
    pub(crate) conns: Option<u64>,
    /// The logs were reopened while it was starting: send it USR1 once it is ready.
    pub(super) reopen_when_ready: bool,
}

/// Control clients waiting for a generation: for its readiness, or for its probation too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Waiters {
    pub(crate) ready: Vec<WaiterId>,
    pub(crate) probation: Vec<WaiterId>,
}

impl Waiters {
    pub(super) fn add(&mut self, w: Option<Waiting>) {
        match w {
            Some(Waiting { id, probation: true }) => self.probation.push(id),
            Some(Waiting { id, probation: false }) => self.ready.push(id),
            None => {}
        }
    }

    pub(super) fn all(self) -> impl Iterator<Item = WaiterId> {
        self.ready.into_iter().chain(self.probation)
    }
}

/// A reload whose new generation is ready, answered once every replaced worker has stopped
/// accepting: after `reload` returns, no new connection reaches the old code.
#[derive(Debug, Clone)]
pub(super) struct PendingAck {
    /// The generation the answer is about: its death before the answer changes the answer.
    pub(super) pid: Pid,
    pub(super) generation: u64,
    pub(super) old: Vec<Pid>,
    pub(super) waiters: Vec<WaiterId>,
    pub(super) reply: String,
    pub(super) systemd: String,
    pub(super) deadline: Instant,
    /// When the reload was asked for (a reload's answer only): its duration is a metric.
    pub(super) requested: Option<Instant>,
}

/// The outcome of the last reload, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LastReload {
    pub(crate) at: Instant,
    pub(crate) result: Result<u64, String>,
}
