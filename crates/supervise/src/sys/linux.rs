//! The Linux backend: signalfd, pidfd, memfd, execveat, the parent-death signal,
//! kernel-stamped notify credentials, `SO_PEERCRED`, `TCP_INFO`, abstract sockets.

use std::borrow::Cow;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};

use libc::c_char;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{self, ControlMessageOwned, MsgFlags, UnixCredentials, sockopt};

/// Which backend this build uses (shown in the master's first log line).
pub(crate) const NAME: &str = "linux";

extern "C" fn noop_handler(_: libc::c_int) {}

/// Installs a handler that does nothing for each signal. The master reads its signals from a
/// signalfd with them blocked; a real handler still matters when it runs as PID 1 of a pid
/// namespace (a container), where the kernel drops signals whose disposition is the default.
/// Handlers are reset to the default at exec, so workers do not inherit them.
fn install_noop_handlers(signals: &[nix::sys::signal::Signal]) -> io::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};
    let action = SigAction::new(SigHandler::Handler(noop_handler), SaFlags::SA_RESTART, SigSet::empty());
    for &sig in signals {
        // SAFETY: the handler does nothing, which is async-signal-safe; no other handler is
        // being replaced that the process relies on (the master runs no user code).
        unsafe { sigaction(sig, &action) }.map_err(io::Error::from)?;
    }
    Ok(())
}

/// Sets the supplementary groups of user `name` (plus `gid`).
pub(super) fn init_groups(name: &std::ffi::CStr, gid: nix::unistd::Gid) -> io::Result<()> {
    Ok(nix::unistd::initgroups(name, gid)?)
}

/// A descriptor that becomes readable when process `pid` has exited (Linux 5.3+ `pidfd_open`).
/// Unlike polling `kill(pid, 0)` it cannot be fooled by a zombie or by a reused pid.
pub(crate) fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1; no memory is
    // passed to the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created this descriptor for us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Asks the kernel to send `sig` to this process when its parent dies, then checks the parent
/// is still `expected` (it may have died before the call: then exit at once).
pub(crate) fn die_with_parent(sig: libc::c_int, expected: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a process attribute.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if nix::unistd::getppid().as_raw() != expected {
        return Err(io::Error::other("the master is gone"));
    }
    Ok(())
}

/// In a forked child: `sig` when the parent dies (async-signal-safe: one syscall).
///
/// # Safety
/// Only between fork and exec, as the rest of the child's code.
pub(super) unsafe fn child_parent_death(sig: libc::c_int) {
    // SAFETY: prctl is a plain syscall setting a process attribute.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) };
}

/// In a forked child: executes the open file `exe` (returns only on failure, errno set).
///
/// # Safety
/// `argv` and `envp` are NUL-terminated arrays of C strings prepared before the fork.
pub(super) unsafe fn child_exec(
    exe: RawFd,
    _path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) {
    // SAFETY: execveat is a plain syscall on memory the caller prepared.
    unsafe { libc::syscall(libc::SYS_execveat, exe, c"".as_ptr(), argv, envp, libc::AT_EMPTY_PATH) };
}

/// An anonymous shared memory file, close-on-exec (no directory needed: `_tmp` is the portable
/// backend's).
pub(super) fn shared_file(_tmp: &std::path::Path) -> io::Result<OwnedFd> {
    Ok(nix::sys::memfd::memfd_create(c"baton-metrics", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)?)
}

/// A pipe whose both ends are close-on-exec from the start.
pub(crate) fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// A TCP listening socket's accept queue: (connections waiting, limit), from `TCP_INFO`.
pub(crate) fn listen_queue(fd: BorrowedFd<'_>) -> Option<(u32, u32)> {
    // SAFETY: tcp_info is plain integers: all-zero is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which we own, and updates len.
    let rc = unsafe {
        libc::getsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &mut len)
    };
    // On a listening socket (state 10, TCP_LISTEN) unacked is the accept queue and sacked its limit.
    (rc == 0 && info.tcpi_state == 10).then_some((info.tcpi_unacked, info.tcpi_sacked))
}

/// The master's signals, read from a signalfd with them blocked.
#[derive(Debug)]
pub(crate) struct Signals(SignalFd);

impl Signals {
    /// Starts receiving `handled`; returns the signal mask to restore in children.
    pub(crate) fn new(handled: &[Signal]) -> io::Result<(Signals, SigSet)> {
        let mut set = SigSet::empty();
        for s in handled {
            set.add(*s);
        }
        // A real (no-op) handler still matters as PID 1 of a pid namespace, where the kernel
        // drops signals whose disposition is the default.
        install_noop_handlers(handled)?;
        let orig = SigSet::thread_get_mask()?;
        set.thread_block()?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok((Signals(fd), orig))
    }

    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// The next pending signal, if any.
    pub(crate) fn read(&mut self) -> io::Result<Option<i32>> {
        Ok(self.0.read_signal()?.map(|i| i.ssi_signo as i32))
    }
}

/// Lets the kernel stamp every datagram with its sender's credentials.
pub(crate) fn notify_setup(sock: &UnixDatagram) -> io::Result<()> {
    Ok(socket::setsockopt(sock, sockopt::PassCred, &true)?)
}

/// What a worker sends, as is: the kernel says who sent it.
pub(crate) fn notify_stamp(msg: &str) -> Cow<'_, str> {
    Cow::Borrowed(msg)
}

/// The next pending datagram with its sender's pid (from the kernel); `None` when none.
pub(crate) fn notify_recv(sock: &UnixDatagram) -> io::Result<Option<(i32, String)>> {
    let mut buf = [0u8; 4096];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!(UnixCredentials);
    let msg = match socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    ) {
        Ok(m) => m,
        Err(nix::errno::Errno::EAGAIN) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut pid = 0;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmCredentials(cred) = c {
            pid = cred.pid();
        }
    }
    let len = msg.bytes;
    Ok(Some((pid, String::from_utf8_lossy(&buf[..len]).into_owned())))
}

/// systemd's abstract socket names (`@name`).
pub(crate) fn abstract_addr(name: &str) -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(name.as_bytes())
}

/// The pid of the process at the other end of a connected unix socket (`SO_PEERCRED`).
pub(crate) fn peer_pid(s: &UnixStream) -> io::Result<Option<i32>> {
    Ok(Some(socket::getsockopt(s, sockopt::PeerCredentials)?.pid()))
}
