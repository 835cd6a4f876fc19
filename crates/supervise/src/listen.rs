//! Listening addresses (`--listen [NAME=]ADDR`), binding them, and adopting sockets passed with
//! systemd's `LISTEN_FDS` protocol.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::str::FromStr;

use socket2::{Domain, Socket, Type};

use crate::error::{Error, ErrorKind, Result};
use crate::handoff::{self, ListenVars};
use crate::sys;

/// The name a listener gets when `--listen` names none.
pub const DEFAULT_NAME: &str = "http";

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// TCP on an IPv4 or IPv6 address. `[::]` is IPv6 only (`IPV6_V6ONLY`), as in nginx, so
    /// `0.0.0.0:P` and `[::]:P` can both be given.
    Tcp(SocketAddr),
    /// A unix stream socket at this path. A stale socket file (nobody accepts on it) is
    /// replaced; any other existing file is an error. The socket file gets mode 0660, and with
    /// `--user` belongs to the workers' user and group ([`give_sockets`]).
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => a.fmt(f),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// One `--listen` value: an optional name (for `LISTEN_FDNAMES`) and an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    /// The name passed in `LISTEN_FDNAMES`; default `http`.
    pub name: String,
    /// The address.
    pub addr: ListenAddr,
}

impl FromStr for ListenSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, addr) = match s.split_once('=') {
            Some((n, a)) => {
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                    return Err(format!("invalid listener name {n:?} in {s:?}: use letters, digits, - _ ."));
                }
                if n.starts_with("baton-") {
                    return Err(format!("invalid listener name {n:?} in {s:?}: names starting baton- are baton's"));
                }
                (n.to_owned(), a)
            }
            None => (DEFAULT_NAME.to_owned(), s),
        };
        let addr = if let Some(path) = addr.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("invalid address {s:?}: unix: needs a path"));
            }
            let path = std::path::absolute(path).map_err(|e| format!("invalid address {s:?}: {e}"))?;
            ListenAddr::Unix(path)
        } else if let Some(port) = addr.strip_prefix(':').filter(|p| !p.contains(':')) {
            let port = parse_port(port).map_err(|why| format!("invalid address {s:?}: {why}"))?;
            ListenAddr::Tcp(SocketAddr::from(([0, 0, 0, 0], port)))
        } else {
            ListenAddr::Tcp(addr.parse().map_err(|_| format!("invalid address {s:?}: {}", why_not_tcp(addr)))?)
        };
        Ok(ListenSpec { name, addr })
    }
}

fn parse_port(port: &str) -> Result<u16, String> {
    port.parse().map_err(|_| {
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            format!("port {port} is out of range (0-65535)")
        } else {
            format!("bad port {port:?}")
        }
    })
}

/// Why `addr` is not an `IP:PORT`, as precisely as can be told.
fn why_not_tcp(addr: &str) -> String {
    const EXPECTED: &str = "expected IP:PORT, [IPv6]:PORT, :PORT or unix:/path";
    let Some((host, port)) = addr.rsplit_once(':') else {
        return if !addr.is_empty() && addr.bytes().all(|b| b.is_ascii_digit()) {
            format!("no host (for every address, write :{addr})")
        } else {
            format!("no port ({EXPECTED})")
        };
    };
    if let Err(why) = parse_port(port) {
        return why;
    }
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        return format!("an IPv6 address is written in brackets: [{host}]:{port}");
    }
    let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    if bracketed.is_none() && host.parse::<std::net::Ipv4Addr>().is_err() {
        return format!(
            "{host:?} is not an IP address; host names are not resolved (127.0.0.1:{port} or [::1]:{port} for \
             this machine only, :{port} for every IPv4 address)"
        );
    }
    EXPECTED.to_owned()
}

impl fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.addr)
    }
}

/// A bound, listening socket with its name. Owned by the master for its whole life.
#[derive(Debug)]
pub struct Bound {
    /// Its name (`LISTEN_FDNAMES`).
    pub name: String,
    /// The socket.
    pub fd: OwnedFd,
    /// The unix socket file this process created and removes on exit.
    pub unix_path: Option<PathBuf>,
}

impl Bound {
    /// What the socket is bound to, for logs and `status`.
    pub fn describe(&self) -> String {
        let sock = socket2::SockRef::from(&self.fd);
        match sock.local_addr() {
            Ok(a) => match a.as_socket() {
                Some(sa) => format!("{}={}", self.name, sa),
                None => match a.as_pathname() {
                    Some(p) => format!("{}=unix:{}", self.name, p.display()),
                    None => format!("{}=unix", self.name),
                },
            },
            Err(_) => format!("{}=?", self.name),
        }
    }

    /// Each listener's label in the metrics and `status --json`: its name, or `name=address`
    /// for a name several listeners share (as two `--listen` without a name do, or the sockets
    /// of one systemd socket unit), so that no two listeners are counted as one.
    pub fn labels(listeners: &[Bound]) -> Vec<String> {
        listeners
            .iter()
            .map(
                |b| {
                    if listeners.iter().filter(|o| o.name == b.name).count() > 1 {
                        b.describe()
                    } else {
                        b.name.clone()
                    }
                },
            )
            .collect()
    }

    /// Removes a unix socket file this process created.
    pub fn remove_socket_file(&mut self) {
        if let Some(p) = self.unix_path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

const BACKLOG: i32 = 1024;

/// The sockets of a start that may still fail: dropped before [`Binding::keep`], they are
/// closed and the unix socket files among them removed, so that a start refused after its
/// sockets were bound (a log file it cannot open, a pid file it cannot write) leaves no file
/// behind.
#[derive(Debug)]
pub struct Binding(Vec<Bound>);

impl Binding {
    /// Guards `bound`.
    pub fn new(bound: Vec<Bound>) -> Binding {
        Binding(bound)
    }

    /// The start went through: the sockets, to be removed by whoever owns them now.
    pub fn keep(mut self) -> Vec<Bound> {
        std::mem::take(&mut self.0)
    }
}

impl std::ops::Deref for Binding {
    type Target = [Bound];

    fn deref(&self) -> &[Bound] {
        &self.0
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        for b in &mut self.0 {
            b.remove_socket_file();
        }
    }
}

/// Gives unix socket files this process bound (see [`Bound::unix_path`]) to the workers' user
/// and group (`--user`, `--group`), as the log file is: left root's (mode 0660), only root
/// could connect to them, not a proxy in the workers' group. Each file is changed through its
/// directory's descriptor, without following a link, and only in a directory where no one but
/// root or this user can have replaced it meanwhile with a link to another file, which the
/// change would give away: one that no one else can write, or a sticky one (`/tmp`) of theirs,
/// where no one else can remove or rename a file of theirs. Elsewhere it is an error.
pub fn give_sockets<'a>(
    paths: impl IntoIterator<Item = &'a std::path::Path>,
    uid: nix::unistd::Uid,
    gid: nix::unistd::Gid,
) -> Result<()> {
    for path in paths {
        give_socket(path, uid, gid).map_err(|e| {
            Error::io(
                ErrorKind::Listen,
                format!("cannot give unix socket {} to the workers' user (uid {uid}, gid {gid})", path.display()),
                e,
            )
        })?;
    }
    Ok(())
}

fn give_socket(path: &std::path::Path, uid: nix::unistd::Uid, gid: nix::unistd::Gid) -> io::Result<()> {
    use nix::fcntl::AtFlags;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let (dir, name) = sys::open_parent(path).ok_or_else(|| io::Error::other("no file name"))??;
    let meta = dir.metadata()?;
    // A sticky one will do: there no one else can remove or rename the socket root made.
    if !sys::trusted_dir(meta.uid(), meta.mode(), nix::unistd::geteuid().as_raw(), true) {
        return Err(io::Error::other(format!(
            "its directory can be written by others (owned by uid {}, mode {:o}), who could swap the socket for a link to any file before the change: bind it in a directory only root can write, or in a sticky one such as /tmp",
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    let st = nix::sys::stat::fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::other("it is no longer a socket"));
    }
    nix::unistd::fchownat(Some(dir.as_raw_fd()), name, Some(uid), Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW)?;
    Ok(())
}

/// Binds every spec; nothing is left bound if one fails.
fn bind_all(specs: &[ListenSpec]) -> Result<Vec<Bound>> {
    let mut out: Vec<Bound> = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let bound = match conflict(spec, &specs[..i]) {
            Some(why) => Err(Error::new(ErrorKind::Listen, format!("cannot bind {}: {why}", spec.addr))),
            None => bind(spec),
        };
        match bound {
            Ok(b) => out.push(b),
            Err(e) => {
                for mut b in out {
                    b.remove_socket_file();
                }
                return Err(e);
            }
        }
    }
    Ok(out)
}

/// Why `spec` cannot be bound beside `earlier` (the same address, or a TCP address a wildcard
/// of the same family and port covers), naming the options: the kernel would only say
/// "address already in use", as if another program held it.
fn conflict(spec: &ListenSpec, earlier: &[ListenSpec]) -> Option<String> {
    let flag = |s: &ListenSpec| if s.name == METRICS_LISTENER { "--metrics-listen" } else { "--listen" };
    earlier.iter().find_map(|e| {
        let covered = match (&spec.addr, &e.addr) {
            (ListenAddr::Unix(a), ListenAddr::Unix(b)) => a == b,
            (ListenAddr::Tcp(a), ListenAddr::Tcp(b)) => {
                a.port() != 0
                    && a.port() == b.port()
                    && a.is_ipv4() == b.is_ipv4()
                    && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
            }
            _ => false,
        };
        covered.then(|| {
            let (this, that) = (flag(spec), flag(e));
            if spec.addr == e.addr && this == that {
                format!("given twice ({this})")
            } else if spec.addr == e.addr {
                format!("{this} and {that} name the same address")
            } else {
                format!("{this} overlaps {that} {}, which takes every address of its port", e.addr)
            }
        })
    })
}

fn bind(spec: &ListenSpec) -> Result<Bound> {
    let fail = |e: io::Error| Error::io(ErrorKind::Listen, format!("cannot bind {}", spec.addr), e);
    match &spec.addr {
        ListenAddr::Tcp(addr) => {
            let sock = Socket::new(Domain::for_address(*addr), Type::STREAM, None).map_err(fail)?;
            sock.set_reuse_address(true).map_err(fail)?;
            if addr.is_ipv6() {
                sock.set_only_v6(true).map_err(fail)?;
            }
            sock.bind(&(*addr).into()).map_err(fail)?;
            sock.listen(BACKLOG).map_err(fail)?;
            sock.set_nonblocking(true).map_err(fail)?;
            Ok(Bound { name: spec.name.clone(), fd: sock.into(), unix_path: None })
        }
        ListenAddr::Unix(path) => {
            unix_path_fits(path).map_err(fail)?;
            remove_stale_socket(path).map_err(fail)?;
            let sock = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(fail)?;
            let sa = socket2::SockAddr::unix(path).map_err(fail)?;
            // Mode 0660 through the umask at bind: a chmod of the path afterwards would follow
            // a symlink swapped in meanwhile.
            let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o117));
            let bound = sock.bind(&sa);
            nix::sys::stat::umask(old);
            bound.map_err(fail)?;
            let created = path.clone();
            let undo = |e| {
                let _ = std::fs::remove_file(&created);
                fail(e)
            };
            sock.listen(BACKLOG).map_err(undo)?;
            sock.set_nonblocking(true).map_err(undo)?;
            Ok(Bound { name: spec.name.clone(), fd: sock.into(), unix_path: Some(path.clone()) })
        }
    }
}

/// The longest path a unix socket can be bound or reached at: the kernel's `sun_path`, less
/// its terminating NUL.
pub(crate) const UNIX_PATH_MAX: usize = if cfg!(target_os = "linux") { 107 } else { 103 };

/// `Ok` if `path` fits a unix socket's address, else an error that says by how much it does
/// not (the standard library's says "path must be shorter than SUN_LEN").
pub(crate) fn unix_path_fits(path: &std::path::Path) -> io::Result<()> {
    let len = path.as_os_str().len();
    if len > UNIX_PATH_MAX {
        let why = format!("the path is {len} bytes, longer than the {UNIX_PATH_MAX} a unix socket's path may have");
        return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
    }
    Ok(())
}

/// A socket file left by a dead server is removed; a live one (connect succeeds) is
/// "address in use"; a file that is not a socket is never touched.
fn remove_stale_socket(path: &std::path::Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if !m.file_type().is_socket() => Err(io::Error::from_raw_os_error(libc::EEXIST)),
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Err(io::Error::from_raw_os_error(libc::EADDRINUSE)),
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => std::fs::remove_file(path),
            Err(e) => Err(e),
        },
    }
}

/// The sockets to serve: without inherited sockets, `specs` bound here. With inherited ones
/// (socket activation), each `--listen` spec takes the inherited socket of its name (systemd's
/// `FileDescriptorName=`) or is bound here if none has it; inherited sockets no spec named are
/// served too; with no `--listen` at all, the inherited sockets alone.
pub fn resolve(specs: &ListenSpecs, inherited: Option<Vec<Bound>>) -> Result<Vec<Bound>> {
    let Some(mut pool) = inherited else {
        return bind_all(&specs.effective());
    };
    let wanted: Vec<&ListenSpec> = specs.given.iter().chain(&specs.extra).collect();
    if wanted.is_empty() {
        return Ok(pool);
    }
    let mut out = Vec::with_capacity(wanted.len() + pool.len());
    for spec in wanted {
        match pool.iter().position(|b| b.name == spec.name) {
            Some(i) => out.push(pool.remove(i)),
            None => match bind(spec) {
                Ok(b) => out.push(b),
                Err(e) => {
                    for mut b in out {
                        b.remove_socket_file();
                    }
                    return Err(e);
                }
            },
        }
    }
    out.extend(pool);
    Ok(out)
}

/// The `--listen` values as given, and the app's default used when none is.
#[derive(Debug, Clone, Default)]
pub struct ListenSpecs {
    /// `--listen` values.
    pub given: Vec<ListenSpec>,
    /// The app's default.
    pub default: Vec<ListenSpec>,
    /// Bound in any case, after the others (baton's own: `--metrics-listen`).
    pub extra: Vec<ListenSpec>,
}

/// The name of the `--metrics-listen` listener; names starting `baton-` are baton's.
pub const METRICS_LISTENER: &str = "baton-metrics";

impl ListenSpecs {
    /// What to bind: the given values, or the default when none was given, then the extras.
    pub fn effective(&self) -> Vec<ListenSpec> {
        let mut v = if self.given.is_empty() { self.default.clone() } else { self.given.clone() };
        v.extend(self.extra.iter().cloned());
        v
    }
}

/// Sockets passed with `LISTEN_FDS`/`LISTEN_FDNAMES`/`LISTEN_PID`, if they are for this
/// process. Removes the variables from the environment (must run before threads exist), and
/// must run before this process opens any file: each fd is checked to be a listening socket.
pub fn take_inherited() -> Result<Option<Vec<Bound>>> {
    let vars = ListenVars::from_vars(|k| std::env::var_os(k), Some(std::process::id()));
    sys::remove_env(&[handoff::LISTEN_FDS, handoff::LISTEN_PID, handoff::LISTEN_FDNAMES]);
    let Some(vars) = vars? else { return Ok(None) };
    let mut out = Vec::with_capacity(vars.names.len());
    for (i, name) in vars.names.into_iter().enumerate() {
        let raw = handoff::LISTEN_FDS_START + i as i32;
        let adopt = || -> io::Result<OwnedFd> {
            let fd = sys::adopt_listener(raw)?;
            let sock = socket2::SockRef::from(&fd);
            sock.set_nonblocking(true)?;
            sock.set_cloexec(true)?;
            Ok(fd)
        };
        let fd = adopt().map_err(|e| Error::io(ErrorKind::Listen, format!("inherited fd {raw} ({name})"), e))?;
        out.push(Bound { name, fd, unix_path: None });
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_trusted_with_a_socket_file_or_a_log_link() {
        // Root's or this user's (1000), which no one else can write, or sticky.
        let theirs = [(0, 0o755), (0, 0o700), (1000, 0o755)];
        let sticky = [(0, 0o1777), (1000, 0o1770)];
        for (owner, mode) in theirs.into_iter().chain(sticky) {
            assert!(sys::trusted_dir(owner, mode, 1000, true), "uid {owner} mode {mode:o}");
        }
        // A sticky directory will not do for a log's symbolic link: others plant their own.
        for (owner, mode) in sticky {
            assert!(!sys::trusted_dir(owner, mode, 1000, false), "uid {owner} mode {mode:o}");
        }
        // Another user's directory (even sticky: its owner removes any file in it), or one
        // its group or anyone can write.
        for (owner, mode) in [(1001, 0o755), (1001, 0o1777), (0, 0o775), (0, 0o757), (1000, 0o777)] {
            assert!(!sys::trusted_dir(owner, mode, 1000, true), "uid {owner} mode {mode:o}");
        }
    }

    #[test]
    fn addresses_that_cannot_be_bound_together_are_named() {
        let spec = |s: &str| s.parse::<ListenSpec>().unwrap();
        let metrics = |s: &str| ListenSpec { name: METRICS_LISTENER.to_owned(), ..spec(s) };
        let why = |a: ListenSpec, earlier: &[ListenSpec]| conflict(&a, earlier);
        assert_eq!(why(spec("127.0.0.1:80"), &[spec("127.0.0.1:80")]).unwrap(), "given twice (--listen)");
        assert_eq!(why(spec("unix:/x.sock"), &[spec("unix:/x.sock")]).unwrap(), "given twice (--listen)");
        assert_eq!(
            why(metrics("127.0.0.1:80"), &[spec("127.0.0.1:80")]).unwrap(),
            "--metrics-listen and --listen name the same address"
        );
        assert_eq!(
            why(spec("127.0.0.1:80"), &[spec(":80")]).unwrap(),
            "--listen overlaps --listen 0.0.0.0:80, which takes every address of its port"
        );
        assert!(why(spec(":80"), &[spec("127.0.0.1:80")]).is_some());
        assert!(why(spec("[::1]:80"), &[spec("[::]:80")]).is_some());
        // Fine together: IPv4 and IPv6 (`[::]` is IPv6 only), other ports, other addresses,
        // any port the kernel picks.
        for (a, b) in [("[::]:80", "0.0.0.0:80"), ("127.0.0.1:80", "127.0.0.1:81"), ("127.0.0.1:80", "127.0.0.2:80")] {
            assert_eq!(why(spec(a), &[spec(b)]), None, "{a} {b}");
        }
        assert_eq!(why(spec("127.0.0.1:0"), &[spec("127.0.0.1:0")]), None);
        assert_eq!(why(spec("unix:/a.sock"), &[spec("unix:/b.sock")]), None);
    }

    #[test]
    fn parses_addresses() {
        let s: ListenSpec = "127.0.0.1:80".parse().unwrap();
        assert_eq!(s.name, "http");
        assert_eq!(s.addr, ListenAddr::Tcp("127.0.0.1:80".parse().unwrap()));
        let s: ListenSpec = "admin=[::1]:9000".parse().unwrap();
        assert_eq!(s.name, "admin");
        assert_eq!(s.addr, ListenAddr::Tcp("[::1]:9000".parse().unwrap()));
        let s: ListenSpec = ":1234".parse().unwrap();
        assert_eq!(s.addr, ListenAddr::Tcp("0.0.0.0:1234".parse().unwrap()));
        let s: ListenSpec = "unix:/tmp/x.sock".parse().unwrap();
        assert_eq!(s.addr, ListenAddr::Unix("/tmp/x.sock".into()));
        for bad in ["localhost", "1.2.3.4", "1.2.3.4:99999", "unix:", "=1.2.3.4:1", "a:b=1.2.3.4:1"] {
            let e = bad.parse::<ListenSpec>().unwrap_err();
            assert!(e.contains(bad.split('=').next_back().unwrap()) || e.contains(bad), "{e}");
        }
        // Each mistake named as precisely as it can be.
        for (bad, why) in [
            (
                "localhost:8080",
                "\"localhost\" is not an IP address; host names are not resolved (127.0.0.1:8080 or [::1]:8080",
            ),
            ("8080", "no host (for every address, write :8080)"),
            ("127.0.0.1:99999", "port 99999 is out of range (0-65535)"),
            (":70000", "port 70000 is out of range (0-65535)"),
            (":http", "bad port \"http\""),
            ("127.0.0.1:", "bad port \"\""),
            ("::1:8080", "an IPv6 address is written in brackets: [::1]:8080"),
            ("[::1%x]:80", "expected IP:PORT"),
            ("1.2.3.4", "no port (expected IP:PORT"),
            ("1.2.3:80", "\"1.2.3\" is not an IP address"),
        ] {
            let e = bad.parse::<ListenSpec>().unwrap_err();
            assert!(e.starts_with(&format!("invalid address {bad:?}: {why}")), "{bad}: {e}");
        }
    }

    #[test]
    fn listeners_sharing_a_name_are_labelled_with_their_addresses() {
        let bound = |name: &str| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            (Bound { name: name.into(), fd: l.into(), unix_path: None }, addr)
        };
        let (a, a_addr) = bound("http");
        let (b, _) = bound("admin");
        let (c, c_addr) = bound("http");
        assert_eq!(Bound::labels(&[a, b, c]), [format!("http={a_addr}"), "admin".into(), format!("http={c_addr}")]);
        let (a, _) = bound("http");
        assert_eq!(Bound::labels(&[a]), ["http"], "a name of its own is the label");
    }
}
