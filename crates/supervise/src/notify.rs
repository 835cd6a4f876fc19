//! systemd's readiness protocol (`NOTIFY_SOCKET`, `READY=1`), both ends: workers (and the master,
//! toward systemd) send; the master receives on its own socket and checks each sender's pid.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends notifications to the socket named by `NOTIFY_SOCKET` (a path, or `@name` for the
/// abstract namespace).
#[derive(Debug)]
pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// Takes `NOTIFY_SOCKET` from the environment (and removes it: it is for this process
    /// only). Must run before threads exist. `None` when it is unset.
    pub fn from_env() -> io::Result<Option<Notifier>> {
        let Some(name) = std::env::var_os(crate::handoff::NOTIFY_SOCKET) else {
            return Ok(None);
        };
        crate::sys::remove_env(&[crate::handoff::NOTIFY_SOCKET]);
        let name = name.to_str().ok_or_else(|| io::Error::other("NOTIFY_SOCKET is not UTF-8"))?;
        Self::connect(name).map(Some)
    }

    fn connect(name: &str) -> io::Result<Notifier> {
        let addr = match name.strip_prefix('@') {
            Some(abs) => crate::sys::abstract_addr(abs)?,
            None if name.starts_with('/') => SocketAddr::from_pathname(name)?,
            None => {
                return Err(io::Error::other(format!("unsupported NOTIFY_SOCKET {name:?}")));
            }
        };
        let sock = UnixDatagram::unbound()?;
        Ok(Notifier { sock, addr })
    }

    /// Sends one message, e.g. `"READY=1"` or `"STATUS=serving"`.
    pub fn send(&self, msg: &str) -> io::Result<()> {
        self.sock.send_to_addr(crate::sys::notify_stamp(msg).as_bytes(), &self.addr).map(drop)
    }
}

/// The master's notify socket: a datagram socket in a private directory (mode 0700, created
/// fresh, owned by the workers' user), so that only the master and its workers can reach it.
/// On Linux the kernel stamps every message with the sender's pid (`SO_PASSCRED`); elsewhere
/// the sender names itself (`BATON_PID=`, added by [`Notifier::send`]).
#[derive(Debug)]
pub(crate) struct NotifyServer {
    sock: UnixDatagram,
    name: String,
    dir: std::path::PathBuf,
}

impl NotifyServer {
    /// Creates the directory under the temporary directory (`TMPDIR`, else `/tmp`) and binds
    /// the socket in it; `owner` (the workers' `--user`) gets both.
    pub(crate) fn bind(owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>) -> io::Result<NotifyServer> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        let mut tries = 0;
        let dir = loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let dir = base.join(format!("baton-{}-{nanos:08x}", std::process::id()));
            // mkdir fails on anything already there: nothing planted in advance is used.
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 10 => tries += 1,
                Err(e) => return Err(e),
            }
        };
        let path = dir.join("notify.sock");
        let bound = (|| {
            crate::listen::unix_path_fits(&path)?;
            let sock = UnixDatagram::bind(&path)?;
            sock.set_nonblocking(true)?;
            crate::sys::notify_setup(&sock)?;
            if let Some((uid, gid)) = owner {
                // The socket first, while the directory is still root's alone.
                nix::unistd::chown(&path, Some(uid), Some(gid))?;
                nix::unistd::chown(&dir, Some(uid), Some(gid))?;
            }
            Ok::<_, io::Error>(sock)
        })();
        match bound {
            Ok(sock) => Ok(NotifyServer { sock, name: path.display().to_string(), dir }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// Removes the socket and its directory (on exit).
    pub(crate) fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// The value for a worker's `NOTIFY_SOCKET`.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The next pending message with its sender's pid; `None` when none is pending.
    pub(crate) fn recv(&self) -> io::Result<Option<(i32, String)>> {
        crate::sys::notify_recv(&self.sock)
    }

    pub(crate) fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.sock.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_sender_pid() {
        let server = NotifyServer::bind(None).unwrap();
        let client = Notifier::connect(server.name()).unwrap();
        client.send("READY=1").unwrap();
        let (pid, msg) = server.recv().unwrap().unwrap();
        assert_eq!(pid as u32, std::process::id());
        assert_eq!(msg, "READY=1");
        assert!(server.recv().unwrap().is_none());
        assert!(server.name().starts_with('/'));
        let dir = std::path::Path::new(server.name()).parent().unwrap().to_owned();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        server.remove();
        assert!(!dir.exists());
    }
}
