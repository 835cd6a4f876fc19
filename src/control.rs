//! The control socket (`x.pid` -> `x.ctl`, mode 0600) and the commands that use it: `stop`,
//! `reload`, `status`, `reopen-logs`. One request line per connection; the master answers
//! `ok` or `error` on the first line, details after, once the outcome is known.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cli::ControlArgs;
use crate::error::{Error, ErrorKind, Result};
use crate::pidfile::{self, Probe};

/// A control command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Stop,
    Reload,
    Status,
    ReopenLogs,
}

impl Control {
    fn word(self) -> &'static str {
        match self {
            Control::Stop => "stop",
            Control::Reload => "reload",
            Control::Status => "status",
            Control::ReopenLogs => "reopen-logs",
        }
    }

    fn parse(s: &str) -> Option<Control> {
        [Control::Stop, Control::Reload, Control::Status, Control::ReopenLogs].into_iter().find(|c| c.word() == s)
    }
}

/// The master's answer.
#[derive(Debug)]
pub(crate) enum Reply {
    Ok(String),
    Err(String),
}

/// A client waiting for the answer to its request.
#[derive(Debug)]
pub(crate) struct Waiter {
    stream: UnixStream,
}

impl Waiter {
    pub(crate) fn reply(mut self, r: Reply) {
        let text = match r {
            Reply::Ok(t) => format!("ok\n{t}\n"),
            Reply::Err(t) => format!("error\n{t}\n"),
        };
        // The client may be gone (timed out): nothing to do about it.
        let _ = self.stream.set_nonblocking(false);
        let _ = self.stream.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = self.stream.write_all(text.as_bytes());
    }
}

struct Pending {
    stream: UnixStream,
    buf: Vec<u8>,
    since: Instant,
}

/// The master's end.
pub(crate) struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    pending: Vec<Pending>,
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer").field("path", &self.path).finish_non_exhaustive()
    }
}

impl ControlServer {
    /// Binds the socket (mode 0600: owner only). A stale socket file is replaced; the pid file
    /// lock already proved no other master runs.
    pub(crate) fn bind(path: &Path) -> Result<ControlServer> {
        let fail = |e| Error::io(ErrorKind::Io, format!("cannot create control socket {}", path.display()), e);
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(e)),
        }
        let listener = UnixListener::bind(path).map_err(fail)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
        listener.set_nonblocking(true).map_err(fail)?;
        Ok(ControlServer { listener, path: path.to_owned(), pending: Vec::new() })
    }

    pub(crate) fn poll_fds(&self) -> Vec<BorrowedFd<'_>> {
        std::iter::once(self.listener.as_fd()).chain(self.pending.iter().map(|p| p.stream.as_fd())).collect()
    }

    /// Accepts new clients and returns the complete requests.
    pub(crate) fn poll_requests(&mut self) -> Vec<(Control, Waiter)> {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_ok() {
                self.pending.push(Pending { stream, buf: Vec::new(), since: Instant::now() });
            }
        }
        let mut out = Vec::new();
        let mut keep = Vec::with_capacity(self.pending.len());
        for mut p in self.pending.drain(..) {
            let mut chunk = [0u8; 128];
            let closed = loop {
                match p.stream.read(&mut chunk) {
                    Ok(0) => break true,
                    Ok(n) => p.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                    Err(_) => break true,
                }
                if p.buf.len() > 256 {
                    break true;
                }
            };
            if let Some(end) = p.buf.iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&p.buf[..end]).trim().to_owned();
                let w = Waiter { stream: p.stream };
                match Control::parse(&line) {
                    Some(c) => out.push((c, w)),
                    None => w.reply(Reply::Err(format!("unknown command {line:?}"))),
                }
            } else if !closed && p.since.elapsed() < Duration::from_secs(5) {
                keep.push(p);
            }
        }
        self.pending = keep;
        out
    }

    pub(crate) fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Runs a control command against the instance whose pid file is `args.pid`
/// (default `<name>.pid`). Exit codes: 0 success; 1 failure; `status`: 0 running,
/// 1 dead with pid file, 3 not running.
pub(crate) fn control(name: &str, cmd: Control, args: ControlArgs) -> Result<ExitCode> {
    let pid_path = args.pid.clone().unwrap_or_else(|| PathBuf::from(format!("{name}.pid")));
    let pid_path = std::path::absolute(&pid_path).map_err(|e| Error::io(ErrorKind::Usage, "pid file", e))?;
    let shown = pid_path.display();
    let pid = match pidfile::probe(&pid_path)? {
        Probe::Running(pid) => pid,
        Probe::Missing => {
            return match cmd {
                Control::Status => {
                    println!("not running (no pid file {shown})");
                    Ok(ExitCode::from(3))
                }
                Control::Stop => {
                    println!("not running (no pid file {shown})");
                    Ok(ExitCode::SUCCESS)
                }
                _ => Err(Error::new(ErrorKind::NotRunning, format!("not running (no pid file {shown})"))),
            };
        }
        Probe::Stale(pid) => {
            let what =
                format!("not running (stale pid file {shown}, pid {})", pid.map_or("?".into(), |p| p.to_string()));
            return match cmd {
                Control::Status => {
                    println!("dead: {what}");
                    Ok(ExitCode::from(1))
                }
                Control::Stop => {
                    println!("{what}");
                    Ok(ExitCode::SUCCESS)
                }
                _ => Err(Error::new(ErrorKind::NotRunning, what)),
            };
        }
    };
    let deadline = Instant::now() + args.timeout;
    // Taken before asking, so that "gone" means this very process exited.
    let exited = Exited::watch(pid);
    let reply = match ask(&pidfile::control_path(&pid_path), cmd, args.timeout) {
        Ok(r) => r,
        Err(e) => {
            // No control socket (or it does not answer): plain signals still work.
            eprintln!("{name}: control socket unavailable ({e}); using signals");
            return signal_fallback(cmd, pid, exited, deadline);
        }
    };
    match reply {
        Reply::Err(t) => Err(Error::new(
            if cmd == Control::Reload { ErrorKind::Worker } else { ErrorKind::Io },
            format!("{} failed: {t}", cmd.word()),
        )),
        Reply::Ok(t) => {
            if cmd == Control::Stop {
                exited.wait(deadline)?;
                println!("stopped (pid {pid})");
            } else {
                println!("{}", t.trim_end());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn ask(path: &Path, cmd: Control, timeout: Duration) -> io::Result<Reply> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(format!("{}\n", cmd.word()).as_bytes())?;
    let mut r = BufReader::new(s);
    let mut first = String::new();
    r.read_line(&mut first)?;
    let mut rest = String::new();
    r.read_to_string(&mut rest)?;
    match first.trim() {
        "ok" => Ok(Reply::Ok(rest)),
        "error" => Ok(Reply::Err(rest.trim().to_owned())),
        "" => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no answer")),
        other => Err(io::Error::other(format!("unexpected answer {other:?}"))),
    }
}

fn signal_fallback(cmd: Control, pid: i32, exited: Exited, deadline: Instant) -> Result<ExitCode> {
    let send = |sig| {
        kill(Pid::from_raw(pid), sig)
            .map_err(|e| Error::io(ErrorKind::Io, format!("cannot signal pid {pid}"), e.into()))
    };
    match cmd {
        Control::Stop => {
            send(Signal::SIGTERM)?;
            exited.wait(deadline)?;
            println!("stopped (pid {pid})");
        }
        Control::Reload => {
            send(Signal::SIGUSR2)?;
            println!("sent USR2 to pid {pid} (outcome unknown without the control socket: see the log)");
        }
        Control::ReopenLogs => {
            send(Signal::SIGUSR1)?;
            println!("sent USR1 to pid {pid}");
        }
        Control::Status => println!("pid: {pid}"),
    }
    Ok(ExitCode::SUCCESS)
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

    fn wait(&self, deadline: Instant) -> Result<()> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let gone = match &self.pidfd {
                Some(fd) => {
                    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                    let ms = PollTimeout::try_from(left.as_millis().min(1000) as i32).unwrap_or(PollTimeout::MAX);
                    matches!(poll(&mut fds, ms), Ok(n) if n > 0)
                }
                None => {
                    std::thread::sleep(left.min(Duration::from_millis(20)));
                    !process_alive(self.pid)
                }
            };
            if gone {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("pid {} still running after the timeout", self.pid),
                ));
            }
        }
    }
}

/// Whether `pid` exists and is not a zombie (a daemon's zombie waits for PID 1 to reap it).
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}
