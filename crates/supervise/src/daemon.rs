//! The daemon step of `start`: fork, setsid, fork again, `chdir /`, umask 027, stdin from
//! /dev/null. The launching process waits on a status pipe and exits 0 once the first worker
//! is ready, or 1 with the reason.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;

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

/// Detaches. Returns only in the daemon; the launching process exits with the outcome.
/// Must run before any thread exists (checked).
pub(crate) fn daemonize() -> Result<StatusPipe> {
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
    std::env::set_current_dir("/").map_err(|e| fail("chdir /", e))?;
    umask(Mode::from_bits_truncate(0o027));
    sys::stdin_from_devnull().map_err(|e| fail("stdin", e))?;
    Ok(StatusPipe { file: File::from(w) })
}

/// The launching process: reaps the first child, waits for the daemon's word.
fn launcher(mut pipe: File, child: libc::pid_t) -> i32 {
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None);
    let mut s = String::new();
    let _ = pipe.read_to_string(&mut s);
    let line = s.lines().next().unwrap_or("");
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
