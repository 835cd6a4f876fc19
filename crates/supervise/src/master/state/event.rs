//! What the state machine consumes and produces.

use nix::unistd::Pid;

use super::WaiterId;
use crate::control::protocol::Reply;
use crate::exe::BinaryId;

/// A signal the master sends to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sig {
    /// Shut down (after the worker's shutdown delay).
    Term,
    /// Stop now.
    Quit,
    /// Reopen the log file.
    Usr1,
    /// Replaced by a newer generation: drain now.
    Usr2,
    Kill,
}

/// How the master shuts down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stopping {
    Graceful,
    Fast,
}

impl Stopping {
    /// What workers are sent: TERM drains, QUIT stops at once.
    pub(super) fn signal(self) -> Sig {
        match self {
            Stopping::Graceful => Sig::Term,
            Stopping::Fast => Sig::Quit,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// The master is set up: start the first worker.
    Start,
    /// TERM or INT (graceful), QUIT (fast), or `stop` (graceful, answered "stopping").
    Shutdown { how: Stopping, waiter: Option<WaiterId> },
    /// USR2, HUP or `reload`; `on_disk` identifies the binary on disk now (`None`: unreadable).
    Reload { waiter: Option<WaiterId>, on_disk: Option<BinaryId> },
    /// USR1 or `reopen-logs`.
    ReopenLogs { waiter: Option<WaiterId> },
    /// `status`.
    Status { waiter: WaiterId },
    /// A datagram on the notify socket, stamped by the kernel with its sender's pid.
    Notify { pid: Pid, msg: String },
    /// A child was reaped; `how` describes its wait status.
    Exited { pid: Pid, how: String },
    /// The outcome of [`Action::Spawn`], fed back at once by whoever carried it out.
    Spawned { generation: u64, result: Result<(Pid, BinaryId), String> },
    /// Time passed (deadlines are acted on with every event).
    Tick,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Fork and exec a worker of this generation; answer with [`Event::Spawned`].
    Spawn {
        generation: u64,
    },
    Signal {
        pid: Pid,
        sig: Sig,
    },
    Reply {
        waiter: WaiterId,
        reply: Reply,
    },
    /// Answer `status` from [`State::view`].
    ReplyStatus {
        waiter: WaiterId,
    },
    /// Reopen the master's own log file.
    ReopenLog,
    /// A message for systemd's notify socket, if there is one.
    Systemd(String),
    /// `RELOADING=1` for systemd, with the `MONOTONIC_USEC` it requires.
    SystemdReloading,
    /// Close the master's copy of the listening sockets (first thing on shutdown).
    CloseListeners,
    /// Tell `start`'s launcher that the server serves.
    DaemonReady,
    /// Clean up and exit with `code`; `start_failure` is what `start` prints.
    Exit {
        code: u8,
        start_failure: Option<String>,
    },
}
