//! The whole master ↔ worker contract on one page: what the master puts in a worker's
//! environment and file table, what the worker sends back, and which signals mean what.
//! Any program that honours it can be a worker (see `docs/handoff.md`).
//!
//! | direction | what | meaning |
//! |---|---|---|
//! | master → worker | fds 3, 4, … | the listening sockets, non-blocking, in `--listen` order |
//! | master → worker | `LISTEN_FDS=n` `LISTEN_FDNAMES=a:b` `LISTEN_PID=<worker pid>` | systemd's socket-passing protocol |
//! | master → worker | `NOTIFY_SOCKET=@name` | where to send readiness (systemd's protocol, the master's own socket) |
//! | master → worker | `BATON_WORKER=<master pid>:<generation>` | "you are a worker": die with this parent; which generation |
//! | master → worker | `BATON_LOG=/abs/path` | the log file to reopen on USR1 (stdout and stderr already point at it) |
//! | master → worker | `BATON_WATCHDOG_USEC=n` | send `WATCHDOG=1` more often than this once ready, or be replaced |
//! | master → worker | the app's own variables | [`crate::MasterConfig::worker_env`] |
//! | worker → master | `READY=1` | serving: the master switches generations |
//! | worker → master | `STATUS=<text>` | the worker's last words, shown if it dies before it is ready |
//! | worker → master | `STATUS=draining` | listeners closed and the drain started: a reload that replaced it is complete |
//! | worker → master | `BATON_REOPENED=ok` or `=<why not>` | it reopened its log on USR1 (or could not): `reopen-logs` answers once every worker it told did |
//! | worker → master | `WATCHDOG=1` | heartbeat from inside the serving runtime |
//! | worker → master | `BATON_INFO=<text>` | with `READY=1`: what it runs (version, configuration), for `status` and `reload` |
//! | master → worker | TERM / USR2 / QUIT / USR1 | shut down (after `--shutdown-delay`) / replaced, drain now / stop now / reopen the log |

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// systemd passes sockets from fd 3 on.
pub const LISTEN_FDS_START: RawFd = 3;
/// Number of sockets passed.
pub const LISTEN_FDS: &str = "LISTEN_FDS";
/// Colon-separated names of the sockets passed.
pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// The pid the sockets are meant for (the master writes the worker's own pid after fork).
pub const LISTEN_PID: &str = "LISTEN_PID";
/// Where readiness messages go.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// `<master pid>:<generation>`: set only for workers of a baton master.
pub const BATON_WORKER: &str = "BATON_WORKER";
/// The absolute log file path, for workers to reopen on USR1.
pub const BATON_LOG: &str = "BATON_LOG";
/// How often the master expects `WATCHDOG=1`, in microseconds (unset: no watchdog). Send it
/// at a third of this from inside the code path that serves (baton's workers: a runtime task).
pub const BATON_WATCHDOG_USEC: &str = "BATON_WATCHDOG_USEC";
/// The `STATUS=` a worker sends once its listeners are closed: the master then knows a
/// replaced generation takes no new connection (baton's own word; systemd just shows it).
pub const STATUS_DRAINING: &str = "draining";
/// The `STATUS=` a worker sends once its drain is over and the app's shutdown hook runs.
pub const STATUS_HOOK: &str = "running its shutdown hook";

/// Variables of the contract: the master never passes its own copies on to a worker.
pub const CONTRACT_VARS: [&str; 8] = [
    LISTEN_FDS,
    LISTEN_FDNAMES,
    LISTEN_PID,
    NOTIFY_SOCKET,
    BATON_WORKER,
    BATON_LOG,
    BATON_WATCHDOG_USEC,
    crate::metrics::BATON_METRICS,
];

/// What the master tells one worker through its environment (besides `LISTEN_PID`, which only
/// the forked child can know).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerEnv {
    /// The master's pid: the worker exits when its parent is no longer this process.
    pub master: i32,
    /// The generation number, counted from 1 by the master.
    pub generation: u64,
    /// One name per listening socket, in fd order.
    pub listen_names: Vec<String>,
    /// The master's notify socket (`@abstract` or a path).
    pub notify_socket: String,
    /// The log file, if the master writes to one.
    pub log: Option<PathBuf>,
    /// The watchdog time: the worker must send `WATCHDOG=1` more often than this.
    pub watchdog: Option<Duration>,
}

impl WorkerEnv {
    /// The variables to set (`LISTEN_PID` is added after fork).
    pub fn to_vars(&self) -> Vec<(OsString, OsString)> {
        let mut v: Vec<(OsString, OsString)> = vec![
            (LISTEN_FDS.into(), self.listen_names.len().to_string().into()),
            (LISTEN_FDNAMES.into(), self.listen_names.join(":").into()),
            (NOTIFY_SOCKET.into(), self.notify_socket.clone().into()),
            (BATON_WORKER.into(), format!("{}:{}", self.master, self.generation).into()),
        ];
        if let Some(p) = &self.log {
            v.push((BATON_LOG.into(), p.clone().into()));
        }
        if let Some(w) = self.watchdog {
            v.push((BATON_WATCHDOG_USEC.into(), w.as_micros().to_string().into()));
        }
        v
    }

    /// Reads the worker's side from `get` (the environment, or a map in tests). `None` when
    /// `BATON_WORKER` is unset: this process was not started by a baton master.
    pub fn from_vars(get: impl Fn(&str) -> Option<OsString>) -> Result<Option<WorkerEnv>> {
        let Some(v) = get(BATON_WORKER) else { return Ok(None) };
        let parsed =
            v.to_str().and_then(|s| s.split_once(':')).and_then(|(m, g)| Some((m.parse().ok()?, g.parse().ok()?)));
        let (master, generation) =
            parsed.ok_or_else(|| Error::usage(format!("invalid {BATON_WORKER} {v:?}: expected <pid>:<generation>")))?;
        let listen = ListenVars::from_vars(&get, None)?
            .ok_or_else(|| Error::new(ErrorKind::Listen, format!("started as a worker without {LISTEN_FDS}")))?;
        let notify_socket = get(NOTIFY_SOCKET)
            .and_then(|s| s.into_string().ok())
            .ok_or_else(|| Error::usage(format!("started as a worker without a UTF-8 {NOTIFY_SOCKET}")))?;
        let log = get(BATON_LOG).map(PathBuf::from);
        let watchdog = match get(BATON_WATCHDOG_USEC) {
            None => None,
            Some(v) => {
                Some(v.to_str().and_then(|s| s.parse().ok()).map(Duration::from_micros).ok_or_else(|| {
                    Error::usage(format!("invalid {BATON_WATCHDOG_USEC} {v:?}: expected microseconds"))
                })?)
            }
        };
        Ok(Some(WorkerEnv { master, generation, listen_names: listen.names, notify_socket, log, watchdog }))
    }
}

/// systemd's socket-passing variables as a receiving process reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenVars {
    /// The names, one per fd from [`LISTEN_FDS_START`] on (`unknown` where none was given, as
    /// in systemd).
    pub names: Vec<String>,
}

impl ListenVars {
    /// Most sockets accepted in `LISTEN_FDS`.
    pub const MAX: usize = 4096;

    /// `None` when `LISTEN_FDS` is unset, or when `LISTEN_PID` is missing or names another
    /// process (the variables were meant for a parent; systemd's own library ignores them too).
    /// `me` is this process's pid, or `None` to skip the pid check (tests).
    pub fn from_vars(get: impl Fn(&str) -> Option<OsString>, me: Option<u32>) -> Result<Option<ListenVars>> {
        let Some(fds) = get(LISTEN_FDS) else { return Ok(None) };
        let fds = fds.to_string_lossy().into_owned();
        match get(LISTEN_PID).map(|p| p.to_string_lossy().parse::<u32>()) {
            None => return Ok(None),
            Some(Ok(p)) if me.is_none_or(|me| me == p) => {}
            Some(Ok(_)) => return Ok(None),
            Some(Err(_)) => {
                return Err(Error::new(
                    ErrorKind::Listen,
                    format!("{LISTEN_FDS} is set but {LISTEN_PID} is not a pid"),
                ));
            }
        }
        let n: usize = fds
            .parse()
            .ok()
            .filter(|n| (1..=Self::MAX).contains(n))
            .ok_or_else(|| Error::new(ErrorKind::Listen, format!("invalid {LISTEN_FDS} {fds:?}")))?;
        let given = get(LISTEN_FDNAMES).map(|s| s.to_string_lossy().into_owned());
        let mut names: Vec<String> = given.map(|s| s.split(':').map(str::to_owned).collect()).unwrap_or_default();
        names.resize(n, "unknown".to_owned());
        Ok(Some(ListenVars { names }))
    }
}

/// What one notify datagram says, for the master. Unknown assignments are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// `READY=1`.
    pub ready: bool,
    /// `STATUS=draining`.
    pub draining: bool,
    /// `STATUS=running its shutdown hook`.
    pub hook: bool,
    /// `WATCHDOG=1`: the worker's runtime is alive.
    pub watchdog: bool,
    /// `BATON_INFO=`: what the worker runs (its version, its configuration's source), shown by
    /// `status` and `reload`.
    pub info: Option<String>,
    /// Any other `STATUS=` text.
    pub status: Option<String>,
    /// `BATON_CONNS=`: the worker's open connections (upgraded ones included).
    pub conns: Option<u64>,
}

impl Message {
    /// Parses newline-separated `KEY=value` assignments.
    pub fn parse(msg: &str) -> Message {
        let status = field(msg, "STATUS");
        Message {
            ready: field(msg, "READY") == Some("1"),
            draining: status == Some(STATUS_DRAINING),
            hook: status == Some(STATUS_HOOK),
            watchdog: field(msg, "WATCHDOG") == Some("1"),
            info: field(msg, "BATON_INFO").map(str::to_owned),
            status: status.filter(|s| ![STATUS_DRAINING, STATUS_HOOK].contains(s)).map(str::to_owned),
            conns: field(msg, "BATON_CONNS").and_then(|n| n.parse().ok()),
        }
    }

    /// What a worker sends once it serves; `info` says what it runs (one line).
    pub fn ready(generation: u64, info: Option<&str>) -> String {
        match info {
            Some(i) => format!("READY=1\nSTATUS=generation {generation} serving\nBATON_INFO={}", i.replace('\n', " ")),
            None => format!("READY=1\nSTATUS=generation {generation} serving"),
        }
    }

    /// What a worker sends once its listeners are closed.
    pub fn draining() -> String {
        format!("STATUS={STATUS_DRAINING}")
    }

    /// What a worker sends as the app's shutdown hook begins (after its drain).
    pub fn hook() -> String {
        format!("STATUS={STATUS_HOOK}")
    }

    /// The heartbeat a worker sends from inside its runtime.
    pub const HEARTBEAT: &'static str = "WATCHDOG=1";

    /// How many connections the worker has open (sent with heartbeats and while draining).
    pub fn conns(n: u64) -> String {
        format!("BATON_CONNS={n}")
    }

    /// What a worker sends once it reopened its log on USR1: `ok`, or why it could not (one
    /// line). The master answers `reopen-logs` once every worker it told has.
    pub fn reopened(error: Option<&str>) -> String {
        format!("{REOPENED}={}", error.map_or_else(|| "ok".to_owned(), |e| e.replace('\n', " ")))
    }

    /// What a worker sends as it exits owing a note of `lines` log lines it could not write
    /// (the log's disk was full): the master counts them in its own note.
    pub fn log_lost(lines: u64) -> String {
        format!("{LOG_LOST}={lines}")
    }

    /// A worker's last words (one line: newlines would start new assignments).
    pub fn status(text: &str) -> String {
        format!("STATUS={}", text.replace('\n', " "))
    }
}

/// The notify key of [`Message::reopened`].
pub const REOPENED: &str = "BATON_REOPENED";

/// The notify key of [`Message::log_lost`].
pub const LOG_LOST: &str = "BATON_LOG_LOST";

/// Finds `KEY=value` in a notify message (newline-separated assignments).
pub fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// Whether a variable is the master's to set for its workers, so its own copy is not passed on.
pub(crate) fn is_contract_var(key: &std::ffi::OsStr) -> bool {
    CONTRACT_VARS.iter().any(|v| key.as_bytes() == v.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: Vec<(OsString, OsString)>) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<OsString, OsString> = vars.into_iter().collect();
        move |k| map.get(std::ffi::OsStr::new(k)).cloned()
    }

    #[test]
    fn handoff_round_trip_master_writes_worker_reads() {
        let cases = [(None, None), (Some(PathBuf::from("/var/log/app.log")), Some(Duration::from_millis(2500)))];
        for (log, watchdog) in cases {
            let sent = WorkerEnv {
                master: 4242,
                generation: 7,
                listen_names: vec!["http".into(), "admin".into()],
                notify_socket: "@baton-notify-4242-1".into(),
                log,
                watchdog,
            };
            let mut vars = sent.to_vars();
            assert!(vars.iter().all(|(k, _)| is_contract_var(k)), "{vars:?}");
            // What the forked child adds.
            vars.push((LISTEN_PID.into(), "4300".into()));
            let got = WorkerEnv::from_vars(lookup(vars.clone())).unwrap().unwrap();
            assert_eq!(got, sent);
            let listen = ListenVars::from_vars(lookup(vars), Some(4300)).unwrap().unwrap();
            assert_eq!(listen.names, ["http", "admin"]);
        }
    }

    #[test]
    fn handoff_round_trip_notify_messages() {
        let m = Message::parse(&Message::ready(3, None));
        assert!(m.ready && !m.draining && m.info.is_none());
        assert_eq!(m.status.as_deref(), Some("generation 3 serving"));
        let m = Message::parse(&Message::ready(3, Some("version 1.2\nconfig /x")));
        assert_eq!(m.info.as_deref(), Some("version 1.2 config /x"));
        let m = Message::parse(&Message::draining());
        assert!(m.draining && !m.ready && m.status.is_none());
        let m = Message::parse(&Message::hook());
        assert!(m.hook && !m.draining && m.status.is_none(), "{m:?}");
        assert!(Message::parse(Message::HEARTBEAT).watchdog);
        let m = Message::parse(&Message::status("bad\nthing"));
        assert_eq!(m.status.as_deref(), Some("bad thing"));
        assert_eq!(Message::parse("READY=0\nMAINPID=4"), Message::default());
        let m = Message::parse(&format!("{}\n{}", Message::HEARTBEAT, Message::conns(12)));
        assert!(m.watchdog && m.conns == Some(12), "{m:?}");
        assert_eq!(Message::parse("BATON_CONNS=many").conns, None);
    }

    #[test]
    fn handoff_listen_vars_follow_systemd() {
        let vars = |v: &[(&str, &str)]| lookup(v.iter().map(|(k, v)| (k.into(), v.into())).collect());
        // Not for us, or not meant for anyone in particular: ignored, as sd_listen_fds does.
        assert_eq!(ListenVars::from_vars(vars(&[("LISTEN_FDS", "1"), ("LISTEN_PID", "9")]), Some(8)).unwrap(), None);
        assert_eq!(ListenVars::from_vars(vars(&[("LISTEN_FDS", "1")]), Some(8)).unwrap(), None);
        assert_eq!(ListenVars::from_vars(vars(&[]), Some(8)).unwrap(), None);
        let named =
            ListenVars::from_vars(vars(&[("LISTEN_FDS", "2"), ("LISTEN_PID", "8"), ("LISTEN_FDNAMES", "a")]), Some(8));
        assert_eq!(named.unwrap().unwrap().names, ["a", "unknown"]);
        for bad in ["0", "x", "4097"] {
            let e = ListenVars::from_vars(vars(&[("LISTEN_FDS", bad), ("LISTEN_PID", "8")]), Some(8)).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
        assert!(ListenVars::from_vars(vars(&[("LISTEN_FDS", "1"), ("LISTEN_PID", "me")]), Some(8)).is_err());
        let e = WorkerEnv::from_vars(vars(&[("BATON_WORKER", "x")])).unwrap_err();
        assert!(e.to_string().contains("BATON_WORKER"), "{e}");
    }
}
