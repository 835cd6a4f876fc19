//! The portable POSIX backend (macOS, the BSDs; on Linux with the `portable` feature): signals
//! through a self-pipe, `fexecve` (macOS: the path), a thread that watches for the master's
//! death, an unlinked temporary file for the metrics, and notify senders that name themselves.

use std::borrow::Cow;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use libc::c_char;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// Which backend this build uses (shown in the master's first log line).
pub(crate) const NAME: &str = "portable";

/// How often a worker checks that its master still lives.
const PARENT_WATCH: Duration = Duration::from_millis(200);

/// Sets the supplementary groups of user `name` (plus `gid`).
pub(super) fn init_groups(name: &std::ffi::CStr, gid: nix::unistd::Gid) -> io::Result<()> {
    #[cfg(target_os = "macos")]
    {
        // SAFETY: `name` is a C string; initgroups reads the group database and sets this
        // process's groups (macOS takes the gid as an int).
        if unsafe { libc::initgroups(name.as_ptr(), gid.as_raw() as libc::c_int) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "macos"))]
    {
        Ok(nix::unistd::initgroups(name, gid)?)
    }
}

/// Not available: callers fall back to polling.
pub(crate) fn pidfd_open(_pid: libc::pid_t) -> io::Result<OwnedFd> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "pidfd_open is Linux-only"))
}

/// Sends `sig` to this process when its parent is no longer `expected` (it died: the worker
/// was reparented), checked by a thread every 200 ms; fails at once if it already is.
pub(crate) fn die_with_parent(sig: libc::c_int, expected: libc::pid_t) -> io::Result<()> {
    if nix::unistd::getppid().as_raw() != expected {
        return Err(io::Error::other("the master is gone"));
    }
    let sig = Signal::try_from(sig).map_err(io::Error::from)?;
    std::thread::Builder::new().name("baton-parent-watch".into()).spawn(move || {
        while nix::unistd::getppid().as_raw() == expected {
            std::thread::sleep(PARENT_WATCH);
        }
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), sig);
    })?;
    Ok(())
}

/// In a forked child: nothing to set up (the worker watches its parent itself).
///
/// # Safety
/// Only between fork and exec, as the rest of the child's code.
pub(super) unsafe fn child_parent_death(_sig: libc::c_int) {}

/// In a forked child: executes the open file `exe` (`fexecve`), or on macOS, which has none,
/// the file at `path` (returns only on failure, errno set).
///
/// # Safety
/// `path`, `argv` and `envp` are C strings and NUL-terminated arrays prepared before the fork.
pub(super) unsafe fn child_exec(
    exe: RawFd,
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) {
    #[cfg(target_os = "macos")]
    {
        let _ = exe;
        // SAFETY: execve is async-signal-safe; the arguments were prepared before the fork.
        unsafe { libc::execve(path, argv, envp) };
    }
    #[cfg(not(target_os = "macos"))]
    {
        let _ = path;
        // SAFETY: fexecve is execve on an fd; the arguments were prepared before the fork.
        unsafe { libc::fexecve(exe, argv, envp) };
    }
}

/// A shared file for the metrics: created exclusively (mode 0600) in `base` (the temporary
/// directory) and unlinked at once, so only the fds refer to it.
pub(super) fn shared_file(base: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    for attempt in 0..10u32 {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let path = base.join(format!("baton-metrics-{}-{nanos:08x}-{attempt}", std::process::id()));
        match std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path) {
            Ok(f) => {
                std::fs::remove_file(&path)?;
                return Ok(f.into());
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("cannot create the metrics file"))
}

/// A pipe whose ends are made close-on-exec right after creation (the master is
/// single-threaded when it does this: no fork can come in between).
pub(crate) fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe()?;
    for fd in [&r, &w] {
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    }
    Ok((r, w))
}

/// Not available here: the metrics leave the listen backlog out.
pub(crate) fn listen_queue(_fd: BorrowedFd<'_>) -> Option<(u32, u32)> {
    None
}

/// The self-pipe's write end, for the signal handler.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signo: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = signo as u8;
        // SAFETY: write is async-signal-safe; errno is saved and restored around it so the
        // interrupted code does not see it change.
        unsafe {
            let saved = nix::errno::Errno::last_raw();
            libc::write(fd, (&raw const byte).cast(), 1);
            nix::errno::Errno::set_raw(saved);
        }
    }
}

/// The master's signals: a handler writes each one's number into a non-blocking pipe that
/// the poll loop reads.
#[derive(Debug)]
pub(crate) struct Signals {
    read: OwnedFd,
    _write: OwnedFd,
}

impl Signals {
    /// Starts receiving `handled`; returns the signal mask to restore in children (unchanged:
    /// nothing is blocked).
    pub(crate) fn new(handled: &[Signal]) -> io::Result<(Signals, SigSet)> {
        let (read, write) = pipe_cloexec()?;
        for fd in [&read, &write] {
            let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
            let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
            nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        }
        SIGNAL_PIPE.store(write.as_raw_fd(), Ordering::Relaxed);
        let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
        for &sig in handled {
            // SAFETY: the handler only writes to a pipe (async-signal-safe) and restores errno;
            // the master runs no user code whose handlers this could replace.
            unsafe { sigaction(sig, &action) }.map_err(io::Error::from)?;
        }
        Ok((Signals { read, _write: write }, SigSet::thread_get_mask()?))
    }

    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// The next pending signal, if any.
    pub(crate) fn read(&mut self) -> io::Result<Option<i32>> {
        let mut b = [0u8; 1];
        match nix::unistd::read(self.read.as_raw_fd(), &mut b) {
            Ok(1) => Ok(Some(i32::from(b[0]))),
            Ok(_) | Err(nix::errno::Errno::EAGAIN) => Ok(None),
            Err(nix::errno::Errno::EINTR) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Nothing to set up: the kernel does not stamp datagrams with credentials here.
pub(crate) fn notify_setup(_sock: &UnixDatagram) -> io::Result<()> {
    Ok(())
}

/// The sender names itself (`BATON_PID=`): only processes that can reach the master's private
/// (0700) directory can send at all.
pub(crate) fn notify_stamp(msg: &str) -> Cow<'_, str> {
    Cow::Owned(format!("{msg}\nBATON_PID={}", std::process::id()))
}

/// The next pending datagram with the pid its sender named; `None` when none.
pub(crate) fn notify_recv(sock: &UnixDatagram) -> io::Result<Option<(i32, String)>> {
    let mut buf = [0u8; 4096];
    let n = match sock.recv(&mut buf) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
        Err(e) => return Err(e),
    };
    let text = String::from_utf8_lossy(&buf[..n]);
    let pid = crate::handoff::field(&text, "BATON_PID").and_then(|p| p.parse().ok()).unwrap_or(0);
    let body: Vec<&str> = text.lines().filter(|l| !l.starts_with("BATON_PID=")).collect();
    Ok(Some((pid, body.join("\n"))))
}

/// Abstract socket names are Linux-only.
pub(crate) fn abstract_addr(name: &str) -> io::Result<SocketAddr> {
    Err(io::Error::new(io::ErrorKind::Unsupported, format!("abstract socket @{name} is Linux-only")))
}

/// Unknown here: the control client cannot check who serves the socket (its directory's
/// permissions still decide who can).
pub(crate) fn peer_pid(_s: &UnixStream) -> io::Result<Option<i32>> {
    Ok(None)
}
