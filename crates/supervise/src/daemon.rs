//! The daemon step of `start`: fork, setsid, fork again, `chdir /`, umask 027, stdin and the
//! fds inherited from the launcher pointed at /dev/null. The launching process waits on a
//! status pipe and exits 0 once the first worker is ready, or 1 with the reason. Interrupted
//! (Ctrl-C, TERM, a closed terminal), it says that the daemon goes on starting without it, and
//! which, before it exits (128 + the signal): the daemon is in its own session, so the
//! terminal's signals do not reach it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use nix::sys::stat::{Mode, umask};

use crate::error::{Error, ErrorKind, Result};
use crate::sys;

/// The daemon's end of the status pipe.
#[derive(Debug)]
pub(crate) struct StatusPipe {
    file: File,
}

impl StatusPipe {
    /// Tells the launcher the server serves.
    pub(crate) fn ready(mut self) {
        let _ = writeln!(self.file, "ok {}", std::process::id());
    }

    /// Tells the launcher why it does not.
    pub(crate) fn failed(mut self, why: &str) {
        let _ = writeln!(self.file, "error {}", why.replace('\n', " "));
    }
}

/// The status pipe of a daemon that failed once detached, held until its error is printed
/// (into the log) and what it had made is gone: `start` returns when it is told, and then
/// nothing of the daemon's may be left to happen.
static FAILED_LATE: std::sync::Mutex<Option<StatusPipe>> = std::sync::Mutex::new(None);

/// Holds `pipe` for [`tell_failed_late`].
pub(crate) fn hold_for_failure(pipe: StatusPipe) {
    *FAILED_LATE.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(pipe);
}

/// Tells a `start` that waits on a daemon that failed once detached (see [`hold_for_failure`])
/// why; nothing otherwise.
pub(crate) fn tell_failed_late(why: &str) {
    if let Some(pipe) = FAILED_LATE.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
        pipe.failed(why);
    }
}

/// Detaches. Returns only in the daemon; the launching process exits with the outcome.
/// Must run before any thread exists (checked). `inherited`: the descriptors the process got
/// from its launcher, which the daemon lets go of (pointed at /dev/null), as it does of the
/// launcher's stdin.
pub(crate) fn daemonize(inherited: &[std::os::fd::RawFd]) -> Result<StatusPipe> {
    let fail = |what: &str, e: std::io::Error| Error::io(ErrorKind::Io, format!("cannot daemonize: {what}"), e);
    let (r, w): (OwnedFd, OwnedFd) = sys::pipe_cloexec().map_err(|e| fail("pipe", e))?;
    match sys::fork_single_threaded().map_err(|e| fail("fork", e))? {
        Some(child) => {
            drop(w);
            let code = launcher(File::from(r), child);
            std::process::exit(code);
        }
        None => drop(r),
    }
    nix::unistd::setsid().map_err(|e| fail("setsid", e.into()))?;
    // The second fork: the daemon is not a session leader, so it can never acquire a
    // controlling terminal.
    if sys::fork_single_threaded().map_err(|e| fail("fork", e))?.is_some() {
        sys::exit_now(0);
    }
    let mut w = File::from(w);
    // Which process the launcher waits for, should it be interrupted.
    let _ = writeln!(w, "pid {}", std::process::id());
    std::env::set_current_dir("/").map_err(|e| fail("chdir /", e))?;
    umask(Mode::from_bits_truncate(0o027));
    sys::stdin_from_devnull().map_err(|e| fail("stdin", e))?;
    sys::devnull_over(inherited).map_err(|e| fail("let go of inherited fds", e))?;
    Ok(StatusPipe { file: w })
}

/// The launching process: reaps the first child, waits for the daemon's word.
fn launcher(mut pipe: File, child: libc::pid_t) -> i32 {
    use nix::sys::signal::Signal;
    // Failed, the signals keep their default action: the launcher dies of them, as before.
    let _ = sys::interrupt_on(&[Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP]);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None);
    let mut s = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        if let Some(sig) = sys::interrupted() {
            let text = String::from_utf8_lossy(&s);
            let which = text.lines().find_map(|l| l.strip_prefix("pid ")).map(|p| format!(" (pid {p})"));
            crate::errln!(
                "start interrupted by {}: the server{} goes on starting without this command; `status` tells whether it serves, `stop` stops it",
                sig.as_str(),
                which.unwrap_or_default()
            );
            return 128 + sig as i32;
        }
        // Waits for the pipe a slice at a time (see `interrupt_on`).
        let mut fds = [nix::poll::PollFd::new(pipe.as_fd(), nix::poll::PollFlags::POLLIN)];
        let slice = nix::poll::PollTimeout::try_from(sys::INTERRUPT_CHECK_EVERY).unwrap_or(nix::poll::PollTimeout::MAX);
        match nix::poll::poll(&mut fds, slice) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(_) => break,
        }
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => s.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let s = String::from_utf8_lossy(&s);
    let line = s.lines().find(|l| !l.starts_with("pid ")).unwrap_or("");
    if let Some(pid) = line.strip_prefix("ok ") {
        crate::outln!("started (pid {pid})");
        0
    } else if let Some(why) = line.strip_prefix("error ") {
        crate::errln!("start failed: {why}");
        1
    } else {
        crate::errln!("start failed: the daemon exited during start-up (see the log file)");
        1
    }
}
