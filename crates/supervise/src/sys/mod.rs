//! The OS boundary: fork/exec, fd plumbing, environment mutation, signals, shared memory. The
//! only module allowed `unsafe` and the only one with `cfg` for the target; every block says
//! why it holds. Between `fork()` and `execve()` in [`WorkerExec::spawn`]
//! the child only makes async-signal-safe calls on memory prepared before the fork: no
//! allocation, no locks.
#![allow(unsafe_code)] // the OS boundary: see the module docs

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use libc::c_char;

use crate::handoff::LISTEN_FDS_START;

// The two backends: what only Linux has (signalfd, pidfd, memfd, execveat, the parent-death
// signal, kernel-stamped credentials, TCP_INFO), and portable POSIX for macOS and the BSDs
// (self-pipe signals, fexecve, a parent watcher, self-declared notify senders). The portable
// one builds on Linux too with the `portable` feature, so its code is tested here.
#[cfg(all(target_os = "linux", not(feature = "portable")))]
#[path = "linux.rs"]
mod backend;
#[cfg(any(not(target_os = "linux"), feature = "portable"))]
#[path = "portable.rs"]
mod backend;

pub(crate) use backend::{
    NAME as BACKEND, Signals, abstract_addr, die_with_parent, listen_queue, notify_recv, notify_setup, notify_stamp,
    peer_pid, pidfd_open, pipe_cloexec,
};

/// Most listeners one worker can be handed (the child keeps them in a stack array).
pub(crate) const MAX_LISTENERS: usize = 64;

/// Whether this process has exactly one thread (counts `/proc/self/task`). Where there is no
/// such directory (macOS, the BSDs) it cannot be checked and is assumed: baton itself starts
/// no thread before it forks; an app that does is warned about on Linux.
pub(crate) fn is_single_threaded() -> bool {
    match std::fs::read_dir("/proc/self/task") {
        Ok(d) => d.count() == 1,
        Err(_) => !cfg!(target_os = "linux"),
    }
}

/// Removes environment variables (they were meant for this process only), when that is sound:
/// with other threads running (the app started some before `serve()`), they are left in place;
/// the pid checks of the protocols (`LISTEN_PID`) keep children from taking them.
pub(crate) fn remove_env(keys: &[&str]) {
    if !is_single_threaded() {
        return;
    }
    for k in keys {
        // SAFETY: no other thread exists (checked above), so nothing reads the environment
        // concurrently.
        unsafe { std::env::remove_var(k) };
    }
}

/// Takes ownership of an inherited descriptor number once it is proven to be a listening
/// socket. A number that is closed, or open but something else (a file of this process), is
/// refused without being touched: taking it would close it twice.
pub(crate) fn adopt_listener(raw: RawFd) -> io::Result<OwnedFd> {
    if inherited_type(raw, "socket")? != libc::S_IFSOCK {
        return Err(io::Error::other("not a socket"));
    }
    // SAFETY: the fd is open (fstat succeeded) for the call's duration; the borrow does not
    // outlive it and closes nothing.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    if !is_listener(borrowed)? {
        return Err(io::Error::other("not a listening socket"));
    }
    // SAFETY: a listening socket passed to this process by its parent (LISTEN_FDS protocol),
    // adopted before this process opens anything of its own; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Takes ownership of an inherited descriptor number once it is proven to be a regular file
/// (the metrics region), and marks it close-on-exec.
pub(crate) fn adopt_file(raw: RawFd) -> io::Result<OwnedFd> {
    if inherited_type(raw, "file")? != libc::S_IFREG {
        return Err(io::Error::other(format!("inherited fd {raw} is not the metrics region")));
    }
    // SAFETY: the master placed this file at `raw` for this process (after the listeners,
    // which were adopted first); nothing else in this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    Ok(fd)
}

/// Takes ownership of a descriptor number the master that executed this one handed over (its
/// state names it), once it is proven to be of the type `kind` (`libc::S_IFSOCK`,
/// `libc::S_IFREG`), and marks it close-on-exec again.
pub(crate) fn adopt_handed_over(raw: RawFd, kind: libc::mode_t) -> io::Result<OwnedFd> {
    if inherited_type(raw, "descriptor")? != kind {
        return Err(io::Error::other(format!("fd {raw} is not of the kind handed over")));
    }
    // SAFETY: the previous master image placed this descriptor here for this process, and its
    // state names each number once; nothing else in this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_cloexec(fd.as_raw_fd(), true)?;
    Ok(fd)
}

/// Sets or clears the close-on-exec flag of `fd`, a descriptor this process owns.
pub(crate) fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let flags = if on { FdFlag::FD_CLOEXEC } else { FdFlag::empty() };
    fcntl(fd, FcntlArg::F_SETFD(flags))?;
    Ok(())
}

/// Replaces this process's image with the open file `exe` (`path` names it, for systems that
/// execute paths only), keeping its pid, its children and its descriptors without
/// close-on-exec. Returns only on failure. A script's interpreter opens the script by its fd
/// number: on `ENOENT` the fd is kept open across the exec and the exec tried again.
pub(crate) fn exec_in_place(
    exe: BorrowedFd<'_>,
    path: &std::path::Path,
    argv: &[&OsStr],
    env: &[(Vec<u8>, Vec<u8>)],
) -> io::Error {
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| io::Error::other("NUL byte in argument or environment"));
    let prepared = (|| {
        let argv: Vec<CString> = argv.iter().map(|a| cstr(a.as_bytes())).collect::<io::Result<_>>()?;
        let env: Vec<CString> =
            env.iter().map(|(k, v)| cstr(&[k.as_slice(), b"=", v.as_slice()].concat())).collect::<io::Result<_>>()?;
        Ok::<_, io::Error>((argv, env, cstr(path.as_os_str().as_bytes())?))
    })();
    let (argv, env, path) = match prepared {
        Ok(p) => p,
        Err(e) => return e,
    };
    let argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
    let env_ptrs: Vec<*const c_char> = env.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
    // SAFETY: the arrays are NUL-terminated arrays of C strings that live until the call
    // returns (it returns only on failure).
    unsafe { backend::child_exec(exe.as_raw_fd(), path.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr()) };
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOENT) {
        return err;
    }
    if let Err(e) = set_cloexec(exe.as_raw_fd(), false) {
        return e;
    }
    // SAFETY: as above.
    unsafe { backend::child_exec(exe.as_raw_fd(), path.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr()) };
    let err = io::Error::last_os_error();
    let _ = set_cloexec(exe.as_raw_fd(), true);
    err
}

/// The directory holding `path` (`.` for a bare name), opened, and `path`'s name in it, to
/// work through the directory's fd; `None` for a path that names no file (`/`, `..`).
pub(crate) fn open_parent(path: &std::path::Path) -> Option<io::Result<(File, &OsStr)>> {
    let (dir, name) = (path.parent()?, path.file_name()?);
    let dir = if dir.as_os_str().is_empty() { std::path::Path::new(".") } else { dir };
    Some(File::open(dir).map(|d| (d, name)))
}

/// Whether, in a directory owned by `owner` with `mode`, no one but root or `euid` can have put
/// a file (a symbolic link, a hard link) or replaced one: the directory is owned by either and
/// writable by neither its group nor others (as OpenSSH's `StrictModes` judges). With
/// `sticky_will_do`, a sticky one of theirs (`/tmp`) will do too, for a file root made: there
/// others can add files of their own, but not remove or rename one of root's.
pub(crate) fn trusted_dir(owner: u32, mode: u32, euid: u32, sticky_will_do: bool) -> bool {
    (owner == 0 || owner == euid) && (mode & 0o022 == 0 || (sticky_will_do && mode & 0o1000 != 0))
}

/// Opens (creating, mode `mode`) `name` in the directory `dir` for appending, close-on-exec,
/// following a symbolic link there: the directory is the one `dir` holds, whatever its path
/// names by now (the log's symlink check).
pub(crate) fn open_append_in(dir: &File, name: &OsStr, mode: u32) -> io::Result<File> {
    use nix::fcntl::OFlag;
    let flags = OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::O_CLOEXEC;
    let mode = nix::sys::stat::Mode::from_bits_truncate(mode as libc::mode_t);
    let fd = nix::fcntl::openat(Some(dir.as_raw_fd()), name, flags, mode)?;
    // SAFETY: `openat` just returned this new descriptor; nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// The file type (`S_IFMT` bits) of inherited descriptor number `raw`, without taking it:
/// stdio is refused (`what` names what was expected), and a closed number is an error.
fn inherited_type(raw: RawFd, what: &str) -> io::Result<libc::mode_t> {
    if raw < 3 {
        return Err(io::Error::other(format!("not an inherited {what} (stdio)")));
    }
    // SAFETY: fstat writes into a zeroed stat we own; it only queries the descriptor table.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(raw, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_mode & libc::S_IFMT)
}

/// Whether a socket listens (`SO_ACCEPTCONN`, POSIX).
fn is_listener(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`, which we own.
    let rc = unsafe {
        libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ACCEPTCONN, (&raw mut v).cast(), &mut len)
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(v != 0) }
}

/// Marks every descriptor from 3 on close-on-exec: whatever this process inherited (a
/// launcher's open file, a shell's `9>>secret`) must not reach workers, which may run as
/// another user. Descriptors this process opens itself are close-on-exec already (Rust's
/// standard library opens every one so). Returns those that were not: the ones it inherited
/// across its `exec`.
pub(crate) fn cloexec_inherited() -> io::Result<Vec<RawFd>> {
    // `/proc/self/fd` (Linux) or `/dev/fd` (macOS, FreeBSD with fdescfs) lists the open fds;
    // without either, every number up to 1024 is tried.
    let listed = std::fs::read_dir("/proc/self/fd").or_else(|_| std::fs::read_dir("/dev/fd"));
    let fds: Vec<RawFd> = match listed {
        Ok(d) => d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).filter(|fd| *fd >= 3).collect(),
        Err(_) => (3..1024).collect(),
    };
    let mut inherited = Vec::new();
    for fd in fds {
        use nix::fcntl::{FcntlArg, FdFlag, fcntl};
        // EBADF: the directory's own fd, closed by now.
        match fcntl(fd, FcntlArg::F_GETFD) {
            Ok(flags) if FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EBADF) => continue,
            Err(e) => return Err(e.into()),
        }
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        inherited.push(fd);
    }
    Ok(inherited)
}

/// Points each of `fds` at /dev/null (close-on-exec): a daemon lets go of what its launcher
/// passed it (a pipe its caller reads to the end, `app start 3>&1 | cat`, would never end),
/// while any code still holding one of the numbers writes into /dev/null, not into whatever
/// a closed number would be reused for.
pub(crate) fn devnull_over(fds: &[RawFd]) -> io::Result<()> {
    if fds.is_empty() {
        return Ok(());
    }
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
    for &fd in fds {
        // SAFETY: dup2 atomically replaces `fd`, an inherited descriptor that nothing in this
        // process owns (baton's own are close-on-exec and never in the list), with a copy of
        // one we own.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
            return Err(io::Error::last_os_error());
        }
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    }
    Ok(())
}

/// Points fds 1 and 2 at `file` (a log file opened with O_APPEND): every writer follows at once.
pub(crate) fn redirect_stdout_stderr(file: &File) -> io::Result<()> {
    for target in [1, 2] {
        // SAFETY: dup2 atomically replaces fd 1/2 with a copy of an fd we own; fds 1 and 2
        // are owned by the process's standard streams, which keep working on the new file.
        if unsafe { libc::dup2(file.as_raw_fd(), target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Points fd 0 at /dev/null.
pub(crate) fn stdin_from_devnull() -> io::Result<()> {
    let null = File::open("/dev/null")?;
    // SAFETY: as in redirect_stdout_stderr, for fd 0.
    if unsafe { libc::dup2(null.as_raw_fd(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fork()` for the daemon step. Refuses when more than one thread exists, which makes the
/// child a full copy of a single-threaded process: it may allocate and lock as usual.
pub(crate) fn fork_single_threaded() -> io::Result<Option<libc::pid_t>> {
    if !is_single_threaded() {
        return Err(io::Error::other(
            "threads were started before App::serve (a forked copy could inherit a held lock): start them in \
             the app's factory, or use `run` under a supervisor",
        ));
    }
    // SAFETY: the process is single-threaded (checked above), so no lock can be held by a
    // thread that does not exist in the child.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(pid)),
    }
}

/// The last of [`interrupt_on`]'s signals received (0: none).
static INTERRUPTED: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn note_interrupt(sig: libc::c_int) {
    INTERRUPTED.store(sig, std::sync::atomic::Ordering::Relaxed);
}

/// From now on each of `signals` is noted, not fatal, and interrupts a blocking call (no
/// `SA_RESTART`: a `read` returns `Interrupted`); [`interrupted`] tells which came. For a
/// command that must say something before it goes (`start`'s launcher, `stop` and `reload`
/// on Ctrl-C). A signal that lands just before a blocking call does not interrupt it: such a
/// command blocks at most [`INTERRUPT_CHECK_EVERY`] at a time, then checks.
pub(crate) fn interrupt_on(signals: &[nix::sys::signal::Signal]) -> io::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};
    let action = SigAction::new(SigHandler::Handler(note_interrupt), SaFlags::empty(), SigSet::empty());
    for &sig in signals {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe; the
        // commands it is installed in (see above) handle no signals otherwise.
        unsafe { sigaction(sig, &action) }.map_err(io::Error::from)?;
    }
    Ok(())
}

/// How long a command that [`interrupt_on`] made interruptible blocks at most at a time.
pub(crate) const INTERRUPT_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// The signal [`interrupt_on`] noted, if one came.
pub(crate) fn interrupted() -> Option<nix::sys::signal::Signal> {
    match INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
        0 => None,
        n => nix::sys::signal::Signal::try_from(n).ok(),
    }
}

/// Exits at once without running destructors or atexit handlers (a forked child must not
/// flush buffers it shares with its parent).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// Everything a worker's fork + exec needs, built before the fork so that the child allocates
/// nothing. `LISTEN_PID` holds room for the digits of the child's pid, written after the fork.
#[derive(Debug)]
pub(crate) struct WorkerExec {
    /// The pinned binary: executed from this fd (Linux `execveat(fd, "", AT_EMPTY_PATH)`,
    /// `fexecve` elsewhere), so the file on disk may be replaced or deleted meanwhile.
    exe: RawFd,
    /// Its path, for systems that can only execute a path (macOS).
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    env: Vec<Vec<u8>>,
    env_ptrs: Vec<*const c_char>,
    pid_digits: *mut u8,
    fds: [RawFd; MAX_LISTENERS],
    nfds: usize,
    mask: libc::sigset_t,
    parent: libc::pid_t,
}

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";

/// Signals whose disposition a worker starts with at the default (SIGPIPE included: Rust sets
/// it to ignored, and ignored dispositions survive exec).
const RESET_SIGNALS: [libc::c_int; 8] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGCHLD,
    libc::SIGPIPE,
];
const PID_ROOM: usize = 20;

impl WorkerExec {
    /// Prepares an exec of the open file `exe` with `argv` and `env` (without `LISTEN_PID`,
    /// which is added), handing `fds` as 3, 4, ... and restoring the signal mask `mask` in the
    /// child. `exe` must stay open until [`WorkerExec::spawn`] returned.
    pub(crate) fn new(
        exe: BorrowedFd<'_>,
        path: &std::path::Path,
        argv: &[&OsStr],
        env: &[(Vec<u8>, Vec<u8>)],
        fds: &[RawFd],
        mask: &nix::sys::signal::SigSet,
    ) -> io::Result<Self> {
        if fds.len() > MAX_LISTENERS {
            return Err(io::Error::other(format!("at most {MAX_LISTENERS} listeners")));
        }
        let cstr = |b: &[u8]| CString::new(b).map_err(|_| io::Error::other("NUL byte in argument or environment"));
        let argv: Vec<CString> = argv.iter().map(|a| cstr(a.as_bytes())).collect::<io::Result<_>>()?;
        let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_bufs: Vec<Vec<u8>> = Vec::with_capacity(env.len() + 1);
        for (k, v) in env {
            let mut b = Vec::with_capacity(k.len() + v.len() + 2);
            b.extend_from_slice(k);
            b.push(b'=');
            b.extend_from_slice(v);
            if b.contains(&0) {
                return Err(io::Error::other("NUL byte in environment"));
            }
            b.push(0);
            env_bufs.push(b);
        }
        let mut pid_buf = Vec::with_capacity(LISTEN_PID_PREFIX.len() + PID_ROOM + 1);
        pid_buf.extend_from_slice(LISTEN_PID_PREFIX);
        pid_buf.resize(LISTEN_PID_PREFIX.len() + PID_ROOM + 1, 0);
        env_bufs.push(pid_buf);
        let mut env_ptrs: Vec<*const c_char> = env_bufs.iter().map(|b| b.as_ptr().cast()).collect();
        env_ptrs.push(std::ptr::null());
        let last = env_bufs.len() - 1;
        // The Vec's heap buffer never moves or reallocates after this point (never pushed to).
        let pid_digits = env_bufs[last][LISTEN_PID_PREFIX.len()..].as_mut_ptr();
        let mut fd_arr = [-1; MAX_LISTENERS];
        fd_arr[..fds.len()].copy_from_slice(fds);
        Ok(WorkerExec {
            exe: exe.as_raw_fd(),
            path: cstr(path.as_os_str().as_bytes())?,
            _argv: argv,
            argv_ptrs,
            env: env_bufs,
            env_ptrs,
            pid_digits,
            fds: fd_arr,
            nfds: fds.len(),
            mask: *mask.as_ref(),
            parent: nix::unistd::getpid().as_raw(),
        })
    }

    /// Forks and execs the worker; returns its pid. The caller must have no other threads
    /// (the master has none) and should have signals blocked, so that a signal meant for the
    /// worker cannot be handled by a copy of the master's handlers.
    ///
    /// Returns only once the child has executed the binary or failed to: a child that could
    /// not (not an executable for this machine, no permission, a listener fd that could not be
    /// placed) reports why through a close-on-exec pipe, as `std::process::Command` does, is
    /// reaped here, and the error says why. The wait is for the `exec` call alone, not for
    /// anything the new program does.
    pub(crate) fn spawn(&mut self) -> Result<libc::pid_t, SpawnError> {
        debug_assert!(!self.env.is_empty());
        let (report_r, report_w) = pipe_cloexec()?;
        // The master's signals stay blocked across the fork (they are already with signalfd):
        // a signal sent to the new pid before it reset its handlers must not run a copy of the
        // master's handler (the portable backend's would write into the master's self-pipe).
        let mut block = nix::sys::signal::SigSet::empty();
        for sig in RESET_SIGNALS {
            if let Ok(s) = nix::sys::signal::Signal::try_from(sig) {
                block.add(s);
            }
        }
        let before = block.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)?;
        // SAFETY: the master is single-threaded; the child runs only `child_after_fork`, which
        // makes async-signal-safe calls on memory prepared before the fork.
        let forked = match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            // SAFETY: we are the freshly forked child.
            0 => unsafe { self.child_after_fork(report_w.as_raw_fd()) },
            pid => Ok(pid),
        };
        before.thread_set_mask()?;
        let pid = forked?;
        drop(report_w);
        // End of file: the child's copy closed at its exec. A report: the child failed and
        // exited 127. (Should the pipe fail to read, the child counts as started: the master
        // tracks it and reaps it like any worker, rather than lose it.)
        let mut report = [0u8; 8];
        let mut got = 0;
        let mut file = File::from(report_r);
        while got < report.len() {
            match io::Read::read(&mut file, &mut report[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if got == 0 {
            return Ok(pid);
        }
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        let [s0, s1, s2, s3, e0, e1, e2, e3] = report;
        let err = io::Error::from_raw_os_error(i32::from_ne_bytes([e0, e1, e2, e3]));
        Err(match u32::from_ne_bytes([s0, s1, s2, s3]) {
            STAGE_LISTENERS => SpawnError::Listeners(err),
            _ => SpawnError::Exec(err),
        })
    }

    /// Runs in the child between fork and exec: async-signal-safe calls only, no allocation.
    /// A failure is reported on `report` (see [`WorkerExec::spawn`]).
    unsafe fn child_after_fork(&self, report: RawFd) -> ! {
        // SAFETY (whole function): every call is async-signal-safe per signal-safety(7) (or a
        // plain syscall: prctl, execveat; reading errno), and reads only memory prepared
        // before the fork. The pid
        // digits are written into a buffer this (copy-on-write) child owns.
        unsafe {
            // Default dispositions first, then the mask: a signal sent to this pid before exec
            // (the master stopping right after a reload) must act on the child, not vanish in
            // a copy of the master's handlers.
            for sig in RESET_SIGNALS {
                libc::signal(sig, libc::SIG_DFL);
            }
            libc::sigprocmask(libc::SIG_SETMASK, &self.mask, std::ptr::null_mut());
            // A worker drains and exits when the master dies, however it died.
            backend::child_parent_death(libc::SIGTERM);
            if libc::getppid() != self.parent {
                libc::_exit(1);
            }
            let n = self.nfds;
            // The report pipe's end first goes above the range the listeners are placed in
            // (a dup2 there would close it); it stays close-on-exec.
            let moved_report = libc::fcntl(report, libc::F_DUPFD_CLOEXEC, LISTEN_FDS_START + n as RawFd);
            let report = if moved_report < 0 { report } else { moved_report };
            let mut moved = [-1 as RawFd; MAX_LISTENERS];
            // First move every listener above the target range, then place them at 3.. so no
            // dup2 overwrites a listener that is still to be moved. dup2 clears CLOEXEC on the
            // target; the moved copies keep it and vanish at exec.
            for (slot, &fd) in moved.iter_mut().zip(&self.fds).take(n) {
                *slot = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, LISTEN_FDS_START + n as RawFd);
                if *slot < 0 {
                    fail(report, STAGE_LISTENERS, b"baton worker: cannot move listener fd\n");
                }
            }
            for (i, &fd) in moved.iter().enumerate().take(n) {
                if libc::dup2(fd, LISTEN_FDS_START + i as RawFd) < 0 {
                    fail(report, STAGE_LISTENERS, b"baton worker: cannot place listener fd\n");
                }
            }
            let mut pid = libc::getpid() as u64;
            let mut digits = [0u8; PID_ROOM];
            let mut len = 0;
            loop {
                digits[PID_ROOM - 1 - len] = b'0' + (pid % 10) as u8;
                len += 1;
                pid /= 10;
                if pid == 0 {
                    break;
                }
            }
            std::ptr::copy_nonoverlapping(digits.as_ptr().add(PID_ROOM - len), self.pid_digits, len);
            *self.pid_digits.add(len) = 0;
            let exec = || {
                let (argv, envp) = (self.argv_ptrs.as_ptr(), self.env_ptrs.as_ptr());
                backend::child_exec(self.exe, self.path.as_ptr(), argv, envp)
            };
            exec();
            if nix::errno::Errno::last_raw() == libc::ENOENT {
                // A script: its interpreter opens it as /dev/fd/N, which a close-on-exec fd
                // would not survive. Keep it open across exec (it stays open in the worker).
                libc::fcntl(self.exe, libc::F_SETFD, 0);
                exec();
            }
            fail(report, STAGE_EXEC, b"baton worker: cannot execute the binary\n");
        }
    }
}

/// Why a worker could not be started.
#[derive(Debug)]
pub(crate) enum SpawnError {
    /// Before the child existed (the pipe, the signal mask, `fork` itself).
    Fork(io::Error),
    /// The child could not place the listening sockets at their fds.
    Listeners(io::Error),
    /// The child could not execute the binary (`ENOEXEC`: not an executable for this machine;
    /// `EACCES`: no execute permission; ...).
    Exec(io::Error),
}

impl From<io::Error> for SpawnError {
    fn from(e: io::Error) -> Self {
        SpawnError::Fork(e)
    }
}

impl From<nix::errno::Errno> for SpawnError {
    fn from(e: nix::errno::Errno) -> Self {
        SpawnError::Fork(e.into())
    }
}

/// What a forked child reports on failure: the stage (listener fds, exec) and errno.
const STAGE_LISTENERS: u32 = 1;
const STAGE_EXEC: u32 = 2;

/// Reports a failure in a forked child on `report` (the stage and errno, for the master) and
/// on standard error (for the log), and exits 127, like a shell's "command not found".
unsafe fn fail(report: RawFd, stage: u32, msg: &[u8]) -> ! {
    // SAFETY: reading errno, write and _exit are async-signal-safe; the buffers are on this
    // stack.
    unsafe {
        let errno = nix::errno::Errno::last_raw();
        let s = stage.to_ne_bytes();
        let e = errno.to_ne_bytes();
        let out = [s[0], s[1], s[2], s[3], e[0], e[1], e[2], e[3]];
        // One write of 8 bytes to a pipe is atomic (under PIPE_BUF).
        libc::write(report, out.as_ptr().cast(), out.len());
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// Switches this process to `uid`/`gid` with the supplementary groups of `user`, then checks
/// that root cannot be regained. Must run before threads exist (setuid is per-thread in the
/// kernel; glibc broadcasts, but we do not rely on it).
pub(crate) fn drop_privileges(user: &str, uid: nix::unistd::Uid, gid: nix::unistd::Gid) -> io::Result<()> {
    if !is_single_threaded() {
        return Err(io::Error::other(
            "threads were started before App::serve: start them in the app's factory instead",
        ));
    }
    let name = CString::new(user).map_err(|_| io::Error::other("NUL in user name"))?;
    backend::init_groups(&name, gid)?;
    nix::unistd::setgid(gid)?;
    nix::unistd::setuid(uid)?;
    if !uid.is_root() && nix::unistd::setuid(nix::unistd::Uid::from_raw(0)).is_ok() {
        return Err(io::Error::other("could regain root after setuid"));
    }
    Ok(())
}

/// A zeroed [`Region`](crate::metrics::Region) in this process's memory, never freed.
pub(crate) fn private_region() -> &'static crate::metrics::Region {
    let layout = std::alloc::Layout::new::<crate::metrics::Region>();
    // SAFETY: the layout is the region's (non-zero size); the region is made of atomics only,
    // for which all-zero bytes are a valid value; the allocation is leaked, so 'static holds.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout);
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        &*p.cast::<crate::metrics::Region>()
    }
}

/// A new shared memory file (close-on-exec; a `memfd` on Linux) the size of a
/// [`Region`](crate::metrics::Region), mapped shared; `tmp` is where the portable backend
/// creates its file.
pub(crate) fn shared_region(tmp: &std::path::Path) -> io::Result<(OwnedFd, &'static crate::metrics::Region)> {
    let len = size_of::<crate::metrics::Region>();
    let fd = backend::shared_file(tmp)?;
    nix::unistd::ftruncate(&fd, len as libc::off_t)?;
    let r = map_region(fd.as_fd())?;
    Ok((fd, r))
}

/// Maps the [`Region`](crate::metrics::Region) in `fd` shared, for the rest of the process.
pub(crate) fn map_region(fd: BorrowedFd<'_>) -> io::Result<&'static crate::metrics::Region> {
    let len = size_of::<crate::metrics::Region>();
    let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || (st.st_size as u64) < len as u64 {
        return Err(io::Error::other("not a metrics region (wrong file type or size)"));
    }
    // SAFETY: a fresh mapping (no address hint) of `len` bytes of a file at least that long;
    // nothing else refers to that address range.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.as_raw_fd(), 0)
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the mapping is page-aligned (more than the region's alignment), `len` bytes long
    // and never unmapped ('static). The region is made of atomics only: any bytes are a valid
    // value, and other processes writing the same memory concurrently is what atomics allow.
    Ok(unsafe { &*p.cast::<crate::metrics::Region>() })
}

/// The system's page size.
pub(crate) fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().map_or(4096, |n| n as u64)
}
