//! The control commands' end: `stop`, `reload`, `status`, `reopen-logs` against the instance
//! a pid file names, over its control socket, or with plain signals when there is none.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::protocol::{self, Command, Reply};
use crate::error::{Error, ErrorKind, Result};
use crate::pidfile::{self, Probe};

/// After `--timeout` passed with no outcome, how long the master gets to answer `status`, which
/// tells a master that goes on (a slow reload) from one that does not answer at all.
const STILL_ANSWERS_WITHIN: Duration = Duration::from_secs(1);

/// How long a command waits for its outcome when no `--timeout` is given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);

/// Without `--timeout`, `stop` waits for the master's own deadline (when it kills what is left
/// of its workers) and this much more, for the workers to die and the master to exit.
const EXIT_MARGIN: Duration = Duration::from_secs(10);

/// Runs `cmd` against the instance whose pid file is `pid` (default `<name>.pid`), waiting up
/// to `timeout` ([`DEFAULT_TIMEOUT`] if `None`; a `stop` then waits for the master's own
/// deadline if that is later, and a reload on while the master answers `status`) for the
/// outcome, and prints it. Exit codes: 0 success; 1 failure; `status` (LSB): 0 serving, 1 dead
/// with pid file, 3 not running, 4 the master runs but no worker serves (starting,
/// crash-looping, stopping), or it took the request and gave no answer within `timeout`. A
/// master that does not answer is never signalled instead: it holds the request, and carries
/// it out once it runs again.
pub fn run(name: &str, cmd: Command, pid: Option<PathBuf>, timeout: Option<Duration>) -> Result<ExitCode> {
    let chosen = timeout.is_some();
    let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT);
    // How the command's time limit is named in its messages.
    let limit = format!("{timeout:?} ({})", if chosen { "--timeout" } else { "--timeout's default" });
    let pid_path = pid.unwrap_or_else(|| PathBuf::from(format!("{name}.pid")));
    let pid_path = std::path::absolute(&pid_path).map_err(|e| Error::io(ErrorKind::Usage, "pid file", e))?;
    let shown = pid_path.display();
    let ctl = pidfile::control_path(&pid_path);
    let probe = match pidfile::probe(&pid_path)? {
        // Removed while its master runs (by hand, by a temporary-file cleaner): the master
        // still serves its control socket, and the command goes there. "Not running" would
        // be a lie, and `stop` would report success while it serves on.
        Probe::Missing => match served_by(&ctl, timeout) {
            Some(pid) => {
                crate::errln!(
                    "{name}: pid file {shown} is missing; its control socket {} is served by pid {pid}",
                    ctl.display()
                );
                Probe::Running(pid)
            }
            // Nothing answers, or (another user's socket) this user cannot ask.
            None => match UnixStream::connect(&ctl) {
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    let why = format!("no pid file {shown}, but {}", not_open(&ctl));
                    return unknown(name, cmd, None, Unknown::NoPermission, &why);
                }
                _ => Probe::Missing,
            },
        },
        p => p,
    };
    let pid = match probe {
        Probe::Running(pid) => pid,
        Probe::Missing => {
            return match cmd {
                Command::Status => {
                    crate::outln!("not running (no pid file {shown})");
                    Ok(ExitCode::from(3))
                }
                Command::StatusJson => {
                    crate::outln!(
                        "{{\"state\":\"not running\",\"pid_file\":{}}}",
                        crate::json::string(&shown.to_string())
                    );
                    Ok(ExitCode::from(3))
                }
                Command::Stop => {
                    crate::outln!("not running (no pid file {shown})");
                    Ok(ExitCode::SUCCESS)
                }
                _ => Err(Error::new(ErrorKind::NotRunning, format!("not running (no pid file {shown})"))),
            };
        }
        Probe::Stale(pid) => {
            let what = match pid {
                Some(pid) => format!("not running (stale pid file {shown}, pid {pid})"),
                None => format!("not running (stale pid file {shown}, which holds no pid)"),
            };
            return match cmd {
                Command::Status => {
                    crate::outln!("dead: {what}");
                    Ok(ExitCode::from(1))
                }
                Command::StatusJson => {
                    crate::outln!("{{\"state\":\"dead\",\"reason\":{}}}", crate::json::string(&what));
                    Ok(ExitCode::from(1))
                }
                Command::Stop => {
                    crate::outln!("{what}");
                    Ok(ExitCode::SUCCESS)
                }
                _ => Err(Error::new(ErrorKind::NotRunning, what)),
            };
        }
    };
    let deadline = Instant::now() + timeout;
    // Taken before asking, so that "gone" means this very process exited.
    let exited = Exited::watch(pid);
    // Ctrl-C (or TERM, or a closed terminal) while a stop or a reload is under way does not
    // undo it: the master carries it out. Rather than die silently, the command says so.
    if matches!(cmd, Command::Stop | Command::Reload | Command::ReloadWaitProbation) {
        let _ = crate::sys::interrupt_on(&[Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP]);
    }
    // Without `--timeout`, a reload is waited for as long as the master answers `status`: its
    // own deadlines (`--ready-timeout`, a draining slot's drain) bound the outcome, and a
    // reload that a long `--ready-timeout` or drain makes slow is no failure.
    let patient = !chosen && matches!(cmd, Command::Reload | Command::ReloadWaitProbation);
    let reply = match ask_patiently(&ctl, cmd, timeout, Some(pid), patient) {
        Ok(r) => r,
        Err(Unanswered::Interrupted(sig)) => return Ok(interrupted(cmd, pid, sig)),
        // The master took the request and did not answer: busy or hung (stopped, say). A
        // signal now would repeat a request it may still carry out, and "serving" would be
        // a guess: say so instead.
        Err(Unanswered::Taken(e)) => {
            // A reload (a slow start, a long `--ready-timeout`) or a stop may outlast
            // `--timeout` while the master is well: if it still answers `status`, say that
            // it goes on, not that it may hang. (A patient wait ended because it did not.)
            let timed_out = e.kind() == io::ErrorKind::TimedOut;
            if timed_out && !patient && !matches!(cmd, Command::Status | Command::StatusJson) {
                if let Ok(Reply::Ok(t)) = ask(&ctl, Command::Status, STILL_ANSWERS_WITHIN, Some(pid)) {
                    // The newest worker ("pid 12 generation 2 starting"), which a reload is about.
                    let newest = t.lines().filter_map(|l| l.strip_prefix("worker: ")).next_back();
                    let newest = newest.map_or("none".into(), |w| w.split(" (").next().unwrap_or(w).to_owned());
                    let word = typed(cmd);
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "{word}: no outcome within {limit}; pid {pid} answers and goes on with \
                             it (newest worker: {newest}): `status` tells how it went"
                        ),
                    ));
                }
            }
            let why = if timed_out && patient {
                format!(
                    "pid {pid} took the request, then answered neither it nor `status` within {timeout:?}: busy or hung?"
                )
            } else {
                format!("pid {pid} took the request but gave no answer within {timeout:?} ({e}): busy or hung?")
            };
            return unknown(name, cmd, Some(pid), Unknown::NotAnswering, &why);
        }
        // The master runs (it holds the pid file's lock) but its control socket (mode 0600)
        // is another user's: neither it nor a signal is this user's to send. Not "dead".
        Err(Unanswered::Unreachable(e)) if e.kind() == io::ErrorKind::PermissionDenied => {
            let why = format!("pid {pid} holds {shown}, but {}", not_open(&ctl));
            return unknown(name, cmd, Some(pid), Unknown::NoPermission, &why);
        }
        Err(Unanswered::Unreachable(e)) => {
            // No control socket (or not this master's): plain signals still work, but only
            // to a process proven to be the master of this pid file.
            match pidfile::held_by(&pid_path, pid) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(Error::new(
                        ErrorKind::NotRunning,
                        format!(
                            "pid {pid} in {shown} does not hold the pid file: not this app's master, not signalled"
                        ),
                    ));
                }
                Err(e) => {
                    return Err(Error::io(
                        ErrorKind::Io,
                        format!("cannot check that pid {pid} is this app's master"),
                        e,
                    ));
                }
            }
            crate::errln!("{name}: control socket unavailable ({e}); using signals");
            return signal_fallback(cmd, pid, exited, deadline, &limit);
        }
    };
    match reply {
        Reply::Err(t) => Err(Error::new(
            if matches!(cmd, Command::Reload | Command::ReloadWaitProbation) {
                ErrorKind::Worker
            } else {
                ErrorKind::Io
            },
            format!("{} failed: {t}", typed(cmd)),
        )),
        Reply::Ok(t) => {
            if cmd == Command::Stop {
                // A long `--shutdown-delay` or `--drain-timeout` makes a stop that goes well
                // outlast the default: it is waited for, as the master said how long it takes.
                let (deadline, within) = match protocol::stopping_within(&t) {
                    Some(bound) if !chosen && Instant::now() + bound + EXIT_MARGIN > deadline => (
                        Instant::now() + bound + EXIT_MARGIN,
                        format!(
                            "{:?} (the master's deadline for its workers, and {EXIT_MARGIN:?})",
                            bound + EXIT_MARGIN
                        ),
                    ),
                    _ => (deadline, limit),
                };
                if let Waited::Interrupted(sig) = exited.wait(deadline, &within)? {
                    return Ok(interrupted(cmd, pid, sig));
                }
                crate::outln!("stopped (pid {pid})");
            } else {
                crate::outln!("{t}");
            }
            let serving = match cmd {
                Command::Status => t.lines().any(|l| l == "state: serving"),
                Command::StatusJson => t.contains("\"state\":\"serving\""),
                _ => true,
            };
            if !serving {
                // LSB's "unknown": the master runs, but no worker serves.
                return Ok(ExitCode::from(4));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The process serving the control socket `ctl` (a master whose pid file is missing): its
/// pid by `SO_PEERCRED`, or (without it) by its own `status`. `None` when nothing serves it.
pub(crate) fn served_by(ctl: &Path, timeout: Duration) -> Option<i32> {
    served_by_peer(UnixStream::connect(ctl).ok()?, ctl, timeout)
}

/// [`served_by`], given a connection `s` to `ctl` already made.
pub(crate) fn served_by_peer(s: UnixStream, ctl: &Path, timeout: Duration) -> Option<i32> {
    if let Some(pid) = crate::sys::peer_pid(&s).ok()? {
        return Some(pid);
    }
    drop(s);
    match ask(ctl, Command::Status, timeout, None).ok()? {
        Reply::Ok(t) => t.lines().find_map(|l| l.strip_prefix("pid: ")?.parse().ok()),
        Reply::Err(_) => None,
    }
}

/// Why whether the master serves cannot be told.
#[derive(Debug, Clone, Copy)]
enum Unknown {
    /// It took the request and gave no answer within `--timeout` (stopped, hung).
    NotAnswering,
    /// Its control socket is another user's.
    NoPermission,
}

/// Says that whether the master serves cannot be told (`how`, `why`): `status` as LSB's
/// "unknown" (exit 4), every other command as a failure (exit 1).
fn unknown(name: &str, cmd: Command, pid: Option<i32>, how: Unknown, why: &str) -> Result<ExitCode> {
    let (state, json_state, kind) = match how {
        Unknown::NotAnswering => ("not answering", "not answering", ErrorKind::Timeout),
        Unknown::NoPermission => ("unknown (no permission)", "unknown", ErrorKind::Io),
    };
    match cmd {
        Command::Status => {
            if let Some(pid) = pid {
                crate::outln!("pid: {pid}");
            }
            crate::outln!("state: {state}");
            crate::errln!("{name}: {why}");
            Ok(ExitCode::from(4))
        }
        Command::StatusJson => {
            let pid = pid.map(|p| format!("\"pid\":{p},")).unwrap_or_default();
            crate::outln!("{{{pid}\"state\":\"{json_state}\",\"reason\":{}}}", crate::json::string(why));
            Ok(ExitCode::from(4))
        }
        _ => Err(Error::new(kind, format!("{}: {why}", typed(cmd)))),
    }
}

/// "its control socket `ctl` is not open to this user (it is root's): run this as root".
fn not_open(ctl: &Path) -> String {
    let owner = owner_of(ctl);
    format!("its control socket {} is not open to this user (it is {owner}'s): run this as {owner}", ctl.display())
}

/// The user owning `path`, by name if it has one (`root`, `uid 1000` otherwise).
fn owner_of(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => match nix::unistd::User::from_uid(m.uid().into()) {
            Ok(Some(u)) => u.name,
            _ => format!("uid {}", m.uid()),
        },
        Err(_) => "another user".to_owned(),
    }
}

/// `cmd` as the operator typed it, for messages (`reload --wait-probation` is a `reload`).
fn typed(cmd: Command) -> &'static str {
    if cmd == Command::ReloadWaitProbation { "reload" } else { cmd.word() }
}

/// Says that `cmd`, sent to `pid`, goes on without this command, which `sig` interrupted
/// while it waited; the exit code is the shell's for a signal, 128 + its number.
fn interrupted(cmd: Command, pid: i32, sig: Signal) -> ExitCode {
    let what = match cmd {
        Command::Stop => format!("pid {pid} goes on stopping, its drain not hurried; `status` tells when it is gone"),
        _ => format!("pid {pid} goes on with it; `status` tells how it went"),
    };
    let word = typed(cmd);
    crate::errln!("{word} interrupted by {}: {what}", sig.as_str());
    ExitCode::from(128 + sig as u8)
}

/// Why [`ask`] has no answer.
#[derive(Debug)]
enum Unanswered {
    /// The request did not reach the master: no socket, nothing listening, another owner.
    Unreachable(io::Error),
    /// The request went out, and no answer came back (in time, or at all).
    Taken(io::Error),
    /// This command was interrupted by the signal while it waited (see
    /// [`crate::sys::interrupt_on`]): the master still carries the request out.
    Interrupted(Signal),
}

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unanswered::Unreachable(e) | Unanswered::Taken(e) => e.fmt(f),
            Unanswered::Interrupted(sig) => write!(f, "interrupted by {}", sig.as_str()),
        }
    }
}

/// Asks the master over its control socket; the socket's owner must be `pid` (the pid file's
/// master) when given, or the answer is not trusted.
fn ask(path: &Path, cmd: Command, timeout: Duration, pid: Option<i32>) -> std::result::Result<Reply, Unanswered> {
    ask_patiently(path, cmd, timeout, pid, false)
}

/// [`ask`]; `patient`: each time `timeout` passes with no answer, the wait goes on for as long
/// again if the master still answers `status`.
fn ask_patiently(
    path: &Path,
    cmd: Command,
    timeout: Duration,
    pid: Option<i32>,
    patient: bool,
) -> std::result::Result<Reply, Unanswered> {
    let mut s = UnixStream::connect(path).map_err(Unanswered::Unreachable)?;
    // Linux only (SO_PEERCRED); elsewhere the socket's directory permissions decide who serves it.
    if let (Some(peer), Some(pid)) = (crate::sys::peer_pid(&s).map_err(Unanswered::Unreachable)?, pid) {
        if peer != pid {
            return Err(Unanswered::Unreachable(io::Error::other(format!(
                "{} is served by pid {peer}, not the pid file's {pid}",
                path.display()
            ))));
        }
    }
    // Read a slice at a time, so that an interruption is seen (see `sys::interrupt_on`).
    let slice = timeout.clamp(Duration::from_millis(1), crate::sys::INTERRUPT_CHECK_EVERY);
    s.set_read_timeout(Some(slice)).map_err(Unanswered::Unreachable)?;
    s.write_all(cmd.request().as_bytes()).map_err(Unanswered::Unreachable)?;
    let mut deadline = Instant::now() + timeout;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(sig) = crate::sys::interrupted() {
            return Err(Unanswered::Interrupted(sig));
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                if Instant::now() >= deadline {
                    if patient && matches!(ask(path, Command::Status, STILL_ANSWERS_WITHIN, pid), Ok(Reply::Ok(_))) {
                        deadline = Instant::now() + timeout;
                        continue;
                    }
                    return Err(Unanswered::Taken(io::Error::new(io::ErrorKind::TimedOut, "timed out")));
                }
            }
            Err(e) => return Err(Unanswered::Taken(e)),
        }
    }
    if answer.is_empty() {
        return Err(Unanswered::Taken(io::Error::other("connection closed without an answer")));
    }
    let answer = String::from_utf8(answer)
        .map_err(|_| Unanswered::Taken(io::Error::new(io::ErrorKind::InvalidData, "an answer that is not UTF-8")))?;
    // The first line (with its newline) and the rest, as the protocol has them.
    let split = answer.find('\n').map_or(answer.len(), |i| i + 1);
    let (first, rest) = answer.split_at(split);
    Reply::decode(first, rest.to_owned()).map_err(Unanswered::Taken)
}

fn signal_fallback(cmd: Command, pid: i32, exited: Exited, deadline: Instant, within: &str) -> Result<ExitCode> {
    let send = |sig| {
        kill(Pid::from_raw(pid), sig)
            .map_err(|e| Error::io(ErrorKind::Io, format!("cannot signal pid {pid}"), e.into()))
    };
    match cmd {
        Command::Stop => {
            send(Signal::SIGTERM)?;
            if let Waited::Interrupted(sig) = exited.wait(deadline, within)? {
                return Ok(interrupted(cmd, pid, sig));
            }
            crate::outln!("stopped (pid {pid})");
        }
        Command::Reload | Command::ReloadWaitProbation => {
            send(Signal::SIGUSR2)?;
            crate::outln!("sent USR2 to pid {pid} (outcome unknown without the control socket: see the log)");
        }
        Command::ReopenLogs => {
            send(Signal::SIGUSR1)?;
            crate::outln!("sent USR1 to pid {pid}");
        }
        Command::Status => crate::outln!("pid: {pid}"),
        Command::StatusJson => crate::outln!("{{\"pid\":{pid}}}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// How [`Exited::wait`] ended.
enum Waited {
    Gone,
    /// This command was interrupted: the master goes on.
    Interrupted(Signal),
}

/// Waits for the master to exit: `stop` returns only once the process is gone (its pid file
/// disappears a moment earlier, while it still finishes its log).
struct Exited {
    pid: i32,
    /// `None` on kernels without `pidfd_open` (before 5.3): then `/proc` is polled.
    pidfd: Option<std::os::fd::OwnedFd>,
}

impl Exited {
    fn watch(pid: i32) -> Exited {
        Exited { pid, pidfd: crate::sys::pidfd_open(pid).ok() }
    }

    /// Until `deadline`, which `within` says how it was set ("90s (--timeout)").
    fn wait(&self, deadline: Instant, within: &str) -> Result<Waited> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        loop {
            if let Some(sig) = crate::sys::interrupted() {
                return Ok(Waited::Interrupted(sig));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let gone = match &self.pidfd {
                Some(fd) => {
                    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                    let slice = left.min(crate::sys::INTERRUPT_CHECK_EVERY).as_millis() as i32;
                    let ms = PollTimeout::try_from(slice).unwrap_or(PollTimeout::MAX);
                    matches!(poll(&mut fds, ms), Ok(n) if n > 0)
                }
                None => {
                    std::thread::sleep(left.min(Duration::from_millis(20)));
                    !process_alive(self.pid)
                }
            };
            if gone {
                return Ok(Waited::Gone);
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "stop: pid {} has not exited within {within}: it goes on stopping, its \
                         drain not hurried; `status` tells when it is gone",
                        self.pid
                    ),
                ));
            }
        }
    }
}

/// Whether `pid` exists and is not a zombie (a daemon's zombie waits for PID 1 to reap it).
/// Without `/proc` (macOS, the BSDs) a zombie counts as alive until it is reaped.
fn process_alive(pid: i32) -> bool {
    if std::path::Path::new("/proc/self/stat").exists() {
        return match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(s) => s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
            Err(_) => false,
        };
    }
    kill(Pid::from_raw(pid), None).is_ok()
}
