//! systemd's readiness protocol (`NOTIFY_SOCKET`, `READY=1`), both ends: workers (and the master,
//! toward systemd) send; the master receives on its own socket and checks each sender's pid.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};

/// Sends notifications to the socket named by `NOTIFY_SOCKET` (a path, or `@name` for the
/// abstract namespace).
#[derive(Debug)]
pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
    /// As `NOTIFY_SOCKET` named it.
    name: String,
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
        Ok(Notifier { sock, addr, name: name.to_owned() })
    }

    /// The socket's name, as `NOTIFY_SOCKET` gave it.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether this process can reach the socket: a datagram socket is connected to it and
    /// dropped, nothing is sent. A worker checks once it runs as its own user (`--user`): a
    /// `TMPDIR` that user cannot enter would make every message fail, its readiness included,
    /// and the master would wait out its ready timeout for nothing.
    pub fn check_reachable(&self) -> io::Result<()> {
        UnixDatagram::unbound()?.connect_addr(&self.addr)
    }

    /// The socket's path (`None` for the abstract namespace).
    pub fn path(&self) -> Option<&Path> {
        self.addr.as_pathname()
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
    dir: PathBuf,
}

/// How the name of a master's notify directory begins: `baton-PID-NANOS`, NANOS being 8
/// hex digits.
const DIR_PREFIX: &str = "baton-";
/// The socket's name in it.
const SOCK_NAME: &str = "notify.sock";

/// Removes the notify directories under `base` whose master is gone without removing its own
/// (killed with SIGKILL, or by the OOM killer): each is named as [`NotifyServer::bind`] names
/// them, owned by a uid `ours` accepts, and holds only a socket that nothing is bound to any
/// more (connecting to it is refused). That, not the pid in the name, tells a dead master
/// from a live one, which may be in another pid namespace sharing the directory. Anything
/// else is left as it is; so is a directory that gains other files meanwhile (only the socket
/// is unlinked, then the directory removed if empty). Returns the directories removed.
fn sweep(base: &Path, ours: impl Fn(u32) -> bool) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(base) else { return Vec::new() };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else { continue };
        let Some((pid, nanos)) = rest.split_once('-') else { continue };
        let digits = |s: &str, radix: u32| !s.is_empty() && s.chars().all(|c| c.is_digit(radix));
        if !digits(pid, 10) || nanos.len() != 8 || !digits(nanos, 16) {
            continue;
        }
        let dir = entry.path();
        // Not followed: a link planted under this name is not a directory here.
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() && ours(m.uid()) => {}
            _ => continue,
        }
        let sock = dir.join(SOCK_NAME);
        match std::fs::symlink_metadata(&sock) {
            Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {}
            _ => continue,
        }
        let refused = match UnixDatagram::unbound().and_then(|s| s.connect(&sock)) {
            Ok(()) => false,
            Err(e) => e.kind() == io::ErrorKind::ConnectionRefused,
        };
        if refused && std::fs::remove_file(&sock).is_ok() && std::fs::remove_dir(&dir).is_ok() {
            removed.push(dir);
        }
    }
    removed
}

impl NotifyServer {
    /// Creates the directory under `base` (the temporary directory: `TMPDIR`, else `/tmp`,
    /// absolute) and binds the socket in it; `owner` (the workers' `--user`) gets both.
    /// Directories that masters killed before their exit left there are removed first (see
    /// [`sweep`]).
    pub(crate) fn bind(base: &Path, owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>) -> io::Result<NotifyServer> {
        use std::os::unix::fs::DirBuilderExt;
        let uids = [Some(nix::unistd::geteuid()), owner.map(|(uid, _)| uid)];
        let swept = sweep(base, |uid| uids.contains(&Some(nix::unistd::Uid::from_raw(uid))));
        if !swept.is_empty() {
            let names: Vec<_> = swept.iter().map(|d| d.display().to_string()).collect();
            tracing::info!("removed the notify directories of masters that were killed: {}", names.join(", "));
        }
        let mut tries = 0;
        let dir = loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let dir = base.join(format!("{DIR_PREFIX}{}-{nanos:08x}", std::process::id()));
            // mkdir fails on anything already there: nothing planted in advance is used.
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 10 => tries += 1,
                Err(e) => return Err(e),
            }
        };
        let path = dir.join(SOCK_NAME);
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

    /// The socket a previous image of this master bound (see `master/upgrade`).
    pub(crate) fn adopt(fd: std::os::fd::OwnedFd, name: String, dir: PathBuf) -> NotifyServer {
        NotifyServer { sock: UnixDatagram::from(fd), name, dir }
    }

    /// The directory the socket is in.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
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
        let server = NotifyServer::bind(&std::env::temp_dir(), None).unwrap();
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

    /// A private base directory for one test, removed at its end.
    struct Base(PathBuf);

    impl Base {
        fn new(tag: &str) -> Base {
            let p = std::env::temp_dir().join(format!("baton-notify-test-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir(&p).unwrap();
            Base(p)
        }
    }

    impl Drop for Base {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir_of(server: &NotifyServer) -> PathBuf {
        Path::new(server.name()).parent().unwrap().to_owned()
    }

    #[test]
    fn a_killed_masters_directory_is_removed_by_the_next_and_a_live_ones_is_not() {
        let base = Base::new("sweep");
        // Dropped without `remove`: its socket closed, its directory left, as by a SIGKILL.
        let dead = NotifyServer::bind(&base.0, None).unwrap();
        let dead_dir = dir_of(&dead);
        drop(dead);
        assert!(dead_dir.join(SOCK_NAME).exists());
        let live = NotifyServer::bind(&base.0, None).unwrap();
        assert!(!dead_dir.exists(), "the dead master's directory is left");
        let next = NotifyServer::bind(&base.0, None).unwrap();
        // Still reachable: the sweep left the live one's directory and socket alone.
        Notifier::connect(live.name()).unwrap().send("READY=1").unwrap();
        assert_eq!(live.recv().unwrap().unwrap().1, "READY=1");
        assert_ne!(dir_of(&next), dir_of(&live));
        next.remove();
        live.remove();
    }

    #[test]
    fn the_sweep_leaves_what_it_did_not_make_or_does_not_own() {
        let base = Base::new("leave");
        let make_dead = |name: &str| {
            let s = NotifyServer::bind(&base.0, None).unwrap();
            let dir = base.0.join(name);
            std::fs::rename(dir_of(&s), &dir).unwrap();
            drop(s);
            dir
        };
        // Names not of the form `baton-PID-NANOS`, each holding a dead socket.
        let odd: Vec<PathBuf> = ["baton-12-1234567", "baton-x-12345678", "baton-12-1234567g", "other-12-12345678"]
            .iter()
            .map(|n| make_dead(n))
            .collect();
        // The right name, but holding something besides the socket.
        let crowded = make_dead("baton-12-12345678");
        std::fs::write(crowded.join("keep"), "x").unwrap();
        // The right name, but a plain file where the socket would be.
        let plain = base.0.join("baton-13-12345678");
        std::fs::create_dir(&plain).unwrap();
        std::fs::write(plain.join(SOCK_NAME), "x").unwrap();
        // A dead one of another owner (as `ours` says).
        let foreign = make_dead("baton-14-12345678");
        assert_eq!(sweep(&base.0, |_| false), Vec::<PathBuf>::new());
        assert!(foreign.join(SOCK_NAME).exists());
        assert_eq!(sweep(&base.0, |_| true), vec![foreign.clone()]);
        assert!(!foreign.exists());
        for d in odd.iter().chain([&plain]) {
            assert!(d.join(SOCK_NAME).exists(), "{} was touched", d.display());
        }
        // Its dead socket may go, not the directory nor what else it holds.
        assert!(crowded.join("keep").exists());
    }
}
