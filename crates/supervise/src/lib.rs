//! baton's supervisor core: the master process, the daemon step, the pid file, the
//! listeners, readiness, the control socket and the OS boundary. It depends on no async
//! runtime and no HTTP crate, and can supervise any program that speaks the
//! [`handoff`] contract (systemd's `LISTEN_FDS` + `READY=1`, plus two small extensions).
//!
//! The `baton` crate builds the HTTP framework on it: its `run`/`start` call
//! [`master::run`], its workers read [`handoff::WorkerEnv`] through [`worker::Handoff`], and
//! its `stop`/`reload`/`status`/`reopen-logs` call [`control::client::run`].
//! `docs/architecture.md` shows how the pieces fit.

/// `println!` that never panics: a command whose stdout is closed or full still exits with its
/// real outcome (`println!` would panic, exit 101).
#[macro_export]
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `eprintln!` that never panics (see [`outln!`]).
#[macro_export]
macro_rules! errln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

pub mod control;
mod daemon;
mod error;
mod exe;
pub mod handoff;
mod json;
pub mod listen;
pub mod log;
pub mod master;
pub mod metrics;
mod notify;
mod pidfile;
mod sys;
pub mod worker;

pub use error::{Error, ErrorKind, Result, describe_io};
pub use master::MasterConfig;
pub use notify::Notifier;
