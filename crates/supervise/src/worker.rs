//! The worker's side of the contract, for workers written in Rust: take what the master (or
//! systemd) handed over, drop privileges, and die with the master.

use std::path::PathBuf;

use crate::error::{Error, ErrorKind, Result};
use crate::handoff::WorkerEnv;
use crate::listen::Bound;
use crate::notify::Notifier;
use crate::{handoff, listen, sys};

/// What a worker of a baton master receives.
#[derive(Debug)]
pub struct Handoff {
    /// The master's pid: see [`die_with_master`].
    pub master: i32,
    /// This worker's generation.
    pub generation: u64,
    /// The log file to reopen on USR1.
    pub log: Option<PathBuf>,
    /// The listening sockets, in `--listen` order.
    pub listeners: Vec<Bound>,
    /// Send [`Message::HEARTBEAT`](crate::handoff::Message::HEARTBEAT) more often than this
    /// once ready (a third of it is a good period), or the master replaces this worker.
    pub watchdog: Option<std::time::Duration>,
    /// The master's metrics region and this worker's slot in it; `Err` says why it could not
    /// be used; `None` when the master passed none.
    pub metrics: Option<std::result::Result<SharedMetrics, String>>,
}

/// The metrics region a worker adds to (see [`crate::metrics`]).
#[derive(Debug, Clone, Copy)]
pub struct SharedMetrics {
    /// The region, shared with the master and every generation.
    pub region: &'static crate::metrics::Region,
    /// This worker's gauges, if the master had a slot free.
    pub slot: Option<usize>,
}

/// Maps the region named by `BATON_METRICS` (`<fd>:<slot>`).
fn take_metrics() -> Option<std::result::Result<SharedMetrics, String>> {
    let v = std::env::var(crate::metrics::BATON_METRICS).ok()?;
    sys::remove_env(&[crate::metrics::BATON_METRICS]);
    let parsed = v.split_once(':').and_then(|(fd, slot)| Some((fd.parse::<i32>().ok()?, slot.parse::<usize>().ok())));
    let Some((fd, slot)) = parsed else {
        return Some(Err(format!("invalid {}={v:?}", crate::metrics::BATON_METRICS)));
    };
    let mapped = sys::adopt_file(fd).and_then(crate::metrics::Region::map);
    Some(
        mapped
            .map(|region| SharedMetrics { region, slot: slot.filter(|s| *s < crate::metrics::SLOTS) })
            .map_err(|e| e.to_string()),
    )
}

impl Handoff {
    /// Takes the contract's variables out of the environment (they are for this process only)
    /// and adopts the listening sockets. `None` when this process was not started by a baton
    /// master. Must run before any thread exists.
    pub fn take() -> Result<Option<Handoff>> {
        let Some(env) = WorkerEnv::from_vars(|k| std::env::var_os(k))? else { return Ok(None) };
        sys::remove_env(&[handoff::BATON_WORKER, handoff::BATON_LOG, handoff::BATON_WATCHDOG_USEC]);
        let listeners = listen::take_inherited()?
            .ok_or_else(|| Error::new(ErrorKind::Listen, format!("{} names another process", handoff::LISTEN_PID)))?;
        let metrics = take_metrics();
        Ok(Some(Handoff {
            master: env.master,
            generation: env.generation,
            log: env.log,
            listeners,
            watchdog: env.watchdog,
            metrics,
        }))
    }
}

/// The notify socket of this process (`NOTIFY_SOCKET`, the master's or systemd's), taken out
/// of the environment. `None` when it is unset. Must run before any thread exists.
pub fn notifier() -> Result<Option<Notifier>> {
    Notifier::from_env().map_err(|e| Error::io(ErrorKind::Io, handoff::NOTIFY_SOCKET, e))
}

/// Switches to `user` (and `group`, default the user's primary group) with the user's
/// supplementary groups, and checks root cannot be regained. Must run before threads exist.
pub fn drop_privileges(user: &str, group: Option<&str>) -> Result<()> {
    let (uid, gid) = crate::exe::lookup_user(user, group)?;
    sys::drop_privileges(user, uid, gid)
        .map_err(|e| Error::io(ErrorKind::Io, format!("cannot switch to user {user}"), e))
}

/// Gives the unix socket files a process without a master bound to the user (and group) it is
/// about to switch to, as the master gives its own ([`crate::listen::give_sockets`]).
pub fn give_sockets<'a>(
    paths: impl IntoIterator<Item = &'a std::path::Path>,
    user: &str,
    group: Option<&str>,
) -> Result<()> {
    let (uid, gid) = crate::exe::lookup_user(user, group)?;
    crate::listen::give_sockets(paths, uid, gid)
}

/// Makes this process get SIGTERM when the master dies (and fails if it already has). Call it
/// after [`drop_privileges`]: changing credentials clears the parent-death signal.
pub fn die_with_master(master: i32) -> Result<()> {
    sys::die_with_parent(libc::SIGTERM, master).map_err(|e| Error::io(ErrorKind::Worker, format!("master {master}"), e))
}
