//! One generation of workers: a process and what the master knows of it.

use std::time::Instant;

use nix::unistd::Pid;

use super::WaiterId;
use crate::exe::BinaryId;

/// Where one generation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GenState {
    Starting { deadline: Instant },
    Active,
    Draining { kill_at: Instant },
}

impl GenState {
    pub(crate) fn word(self) -> &'static str {
        match self {
            GenState::Starting { .. } => "starting",
            GenState::Active => "serving",
            GenState::Draining { .. } => "draining",
        }
    }
}

/// One worker process and what the master knows of it.
#[derive(Debug, Clone)]
pub(crate) struct Gen {
    pub(crate) pid: Pid,
    pub(crate) generation: u64,
    pub(crate) state: GenState,
    pub(crate) binary: BinaryId,
    pub(super) started: Instant,
    pub(super) ready_at: Option<Instant>,
    /// The last `STATUS=` it sent: its last words if it dies.
    pub(super) status: Option<String>,
    /// Why the master killed it, if it did.
    pub(super) killed_for: Option<String>,
    /// Control clients waiting for this generation's outcome.
    pub(super) waiters: Vec<WaiterId>,
    /// Still accepting connections (until it reports `STATUS=draining` or exits).
    pub(crate) accepting: bool,
}

/// A reload whose new generation is ready, answered once every replaced worker has stopped
/// accepting: after `reload` returns, no new connection reaches the old code.
#[derive(Debug, Clone)]
pub(super) struct PendingAck {
    pub(super) old: Vec<Pid>,
    pub(super) waiters: Vec<WaiterId>,
    pub(super) reply: String,
    pub(super) systemd: String,
    pub(super) deadline: Instant,
}

/// The outcome of the last reload, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LastReload {
    pub(crate) at: Instant,
    pub(crate) result: Result<u64, String>,
}
