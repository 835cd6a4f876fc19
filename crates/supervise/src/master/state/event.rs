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
    /// Replaced by a newer generation: drain now. Again while draining: hurry (close
    /// long-lived connections now, a reload waits for the slot).
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

/// A control client and what it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Waiting {
    pub(crate) id: WaiterId,
    /// Answer only once the new generation passed its probation (or was rolled back).
    pub(crate) probation: bool,
}

/// Why a generation was started: decides what its failure means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The first start: its failure ends the master.
    Start,
    /// A reload from the binary on disk: its failure is rolled back.
    Reload,
    /// A crash restart from the last good binary.
    Restart,
    /// The serving worker stopped accepting on its own (a signal sent to it, not to the
    /// master): its replacement, running the same binary.
    Replace,
    /// A new generation crashed during its probation: back to the last good binary.
    Revert,
}

impl Cause {
    /// For `status`.
    pub(crate) fn word(self) -> &'static str {
        match self {
            Cause::Start => "first start",
            Cause::Reload => "reload",
            Cause::Restart => "crash restart",
            Cause::Replace => "replacement",
            Cause::Revert => "rollback",
        }
    }

    /// How the log line of its start says why.
    pub(crate) fn note(self) -> &'static str {
        match self {
            Cause::Start | Cause::Reload => "",
            Cause::Restart => ", a crash restart from the last good binary",
            Cause::Replace => ", a replacement for a worker that stopped on its own",
            Cause::Revert => ", a rollback to the last good binary",
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// The master is set up: start the first worker.
    Start,
    /// TERM or INT (graceful; a second one: fast), QUIT (fast), or `stop` (graceful,
    /// answered "stopping"; during a stop it joins that stop and hurries nothing).
    Shutdown { how: Stopping, waiter: Option<WaiterId> },
    /// USR2, HUP or `reload` (`reload --wait-probation` waits for the end of the probation);
    /// `on_disk` identifies the binary on disk now (`None`: unreadable).
    Reload { waiter: Option<Waiting>, on_disk: Option<BinaryId> },
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
    /// The master did not run for a while, `slept` at most: it read its clock long after it
    /// was due to (the end of its wait, or at once while it runs), the whole service most
    /// likely stopped with it (SIGSTOP or Ctrl-Z to its process group, a frozen cgroup:
    /// `docker pause`) and resumed. Time it did not see
    /// passes for no deadline: each one moves on by `slept`, and each worker's heartbeat
    /// clock starts again, so that a worker paused with the master is not killed as hung.
    Resumed { slept: std::time::Duration },
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Fork and exec a worker of this generation from the pinned `binary`, or from the file on
    /// disk (pinning it) when `None`; answer with [`Event::Spawned`].
    Spawn {
        generation: u64,
        binary: Option<BinaryId>,
    },
    Signal {
        pid: Pid,
        sig: Sig,
    },
    Reply {
        waiter: WaiterId,
        reply: Reply,
    },
    /// Answer `status`: the I/O shell formats the state as it is when it runs the action.
    ReplyStatus {
        waiter: WaiterId,
    },
    /// Reopen the master's own log file, then answer `waiter` with the outcome (a failure keeps
    /// the old file and is an error).
    ReopenLog {
        waiter: Option<WaiterId>,
    },
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
