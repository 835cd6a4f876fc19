//! The master's end of the control socket (`x.pid` -> `x.pid.ctl`, mode 0600).

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::protocol::{Command, Reply};
use crate::error::{Error, ErrorKind, Result};

/// A client waiting for the answer to its request.
#[derive(Debug)]
pub(crate) struct Waiter {
    stream: UnixStream,
}

impl Waiter {
    pub(crate) fn reply(mut self, r: &Reply) {
        // The client may be gone (timed out): nothing to do about it.
        let _ = self.stream.set_nonblocking(false);
        let _ = self.stream.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = self.stream.write_all(r.encode().as_bytes());
    }
}

#[derive(Debug)]
struct Pending {
    stream: UnixStream,
    buf: Vec<u8>,
    since: Instant,
}

/// The listening control socket and the clients whose request line is not complete yet.
#[derive(Debug)]
pub(crate) struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file's device and inode: removed at the end only if still this one.
    file: (u64, u64),
    pending: Vec<Pending>,
}

impl ControlServer {
    /// Binds the socket (mode 0600: owner only, set through the umask at bind, so no path is
    /// ever chmod-ed). A stale socket file (nothing accepts on it) is replaced. A live one is
    /// refused: the pid file lock proved no other master holds *this* pid file, but a master
    /// whose pid file was removed while it runs still serves the socket, and replacing it
    /// would leave that master beyond every control command. It listens only from
    /// [`ControlServer::listen`] on, called by the master itself: a client checks the
    /// socket's owner pid (`SO_PEERCRED`, taken at `listen`) against the pid file.
    pub(crate) fn bind(path: &Path) -> Result<ControlServer> {
        let fail = |e| Error::io(ErrorKind::Io, format!("cannot create control socket {}", path.display()), e);
        if let Err(e) = crate::listen::unix_path_fits(path) {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "cannot create control socket {} (the pid file's path + .ctl): {e}: give -p a shorter path",
                    path.display()
                ),
            ));
        }
        match UnixStream::connect(path) {
            Ok(live) => {
                let by = super::client::served_by_peer(live, path, Duration::from_secs(5))
                    .map_or_else(|| "a running process".to_owned(), |pid| format!("running pid {pid}"));
                return Err(Error::new(
                    ErrorKind::AlreadyRunning,
                    format!(
                        "control socket {} is served by {by}, a master whose pid file was removed: stop it first",
                        path.display()
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // A socket file nothing listens on (or a file of another kind): replaced.
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(fail(e)),
            },
            Err(e) => return Err(fail(e)),
        }
        let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).map_err(fail)?;
        let addr = socket2::SockAddr::unix(path).map_err(fail)?;
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = sock.bind(&addr);
        nix::sys::stat::umask(old);
        bound.map_err(fail)?;
        sock.set_nonblocking(true).map_err(fail)?;
        let file = std::fs::symlink_metadata(path).map_err(fail)?;
        Ok(ControlServer {
            listener: UnixListener::from(std::os::fd::OwnedFd::from(sock)),
            path: path.to_owned(),
            file: crate::pidfile::file_id(&file),
            pending: Vec::new(),
        })
    }

    /// The server a previous image of this master made (see `master/upgrade`): its listening
    /// socket `fd`, the socket file at `path` and that file's identity.
    pub(crate) fn adopt(fd: std::os::fd::OwnedFd, path: PathBuf, file: (u64, u64)) -> ControlServer {
        ControlServer { listener: UnixListener::from(fd), path, file, pending: Vec::new() }
    }

    /// What a master that takes over needs to [`ControlServer::adopt`] it.
    pub(crate) fn handover(&self) -> (BorrowedFd<'_>, &Path, (u64, u64)) {
        (self.listener.as_fd(), &self.path, self.file)
    }

    /// Whether a client's request is still being read (it would be lost by an upgrade).
    pub(crate) fn reading(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Starts listening (in the master process, after the daemon step).
    pub(crate) fn listen(&self) -> Result<()> {
        socket2::SockRef::from(&self.listener).listen(16).map_err(|e| {
            Error::io(ErrorKind::Io, format!("cannot listen on control socket {}", self.path.display()), e)
        })
    }

    pub(crate) fn poll_fds(&self) -> Vec<BorrowedFd<'_>> {
        std::iter::once(self.listener.as_fd()).chain(self.pending.iter().map(|p| p.stream.as_fd())).collect()
    }

    /// Accepts new clients and returns the complete requests.
    pub(crate) fn poll_requests(&mut self) -> Vec<(Command, Waiter)> {
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
                match Command::parse(&line) {
                    Some(c) => out.push((c, w)),
                    None => w.reply(&Reply::Err(format!("unknown command {line:?}"))),
                }
            } else if !closed && p.since.elapsed() < Duration::from_secs(5) {
                keep.push(p);
            }
        }
        self.pending = keep;
        out
    }

    /// Removes the socket file, unless another took its place (an operator's, or another
    /// instance's after this one's was removed), as dropping it does.
    pub(crate) fn remove(self) {
        drop(self);
    }
}

/// The socket file goes with the server (unless another was put in its place), also when the
/// master fails after creating it, before it serves.
impl Drop for ControlServer {
    fn drop(&mut self) {
        crate::pidfile::remove_if_still(&self.path, self.file);
    }
}
