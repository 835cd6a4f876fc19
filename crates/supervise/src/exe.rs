//! What the master re-executes, and as whom its workers run.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::unistd::{Gid, Uid};

use crate::error::{Error, ErrorKind, Result};

/// Resolves `--user`/`--group` to ids; an unknown name is a clear error.
pub(crate) fn lookup_user(user: &str, group: Option<&str>) -> Result<(Uid, Gid)> {
    let u = nix::unistd::User::from_name(user)
        .map_err(|e| Error::io(ErrorKind::Usage, format!("cannot look up user {user:?}"), e.into()))?
        .ok_or_else(|| Error::usage(format!("unknown user {user:?}")))?;
    let gid = match group {
        None => u.gid,
        Some(g) => {
            nix::unistd::Group::from_name(g)
                .map_err(|e| Error::io(ErrorKind::Usage, format!("cannot look up group {g:?}"), e.into()))?
                .ok_or_else(|| Error::usage(format!("unknown group {g:?}")))?
                .gid
        }
    };
    Ok((u.uid, gid))
}

/// What identifies the binary on disk: a reload requested while a worker is starting is folded
/// into that start unless the file changed since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct BinaryId {
    dev: u64,
    ino: u64,
    pub(crate) size: u64,
    pub(crate) mtime_ns: i64,
}

#[cfg(test)]
impl BinaryId {
    /// A binary identity for tests: build `n`.
    pub(crate) fn fake(n: u64) -> BinaryId {
        BinaryId { dev: 1, ino: n, size: 0, mtime_ns: 0 }
    }
}

pub(crate) fn binary_id(path: &std::path::Path) -> std::io::Result<BinaryId> {
    Ok(BinaryId::of(&std::fs::metadata(path)?))
}

impl BinaryId {
    fn of(m: &std::fs::Metadata) -> BinaryId {
        BinaryId { dev: m.dev(), ino: m.ino(), size: m.size(), mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec() }
    }

    /// As one word, for the master that takes over ([`BinaryId::decode`]).
    pub(crate) fn encode(&self) -> String {
        format!("{}:{}:{}:{}", self.dev, self.ino, self.size, self.mtime_ns)
    }

    pub(crate) fn decode(s: &str) -> Option<BinaryId> {
        let mut it = s.split(':');
        let id = BinaryId {
            dev: it.next()?.parse().ok()?,
            ino: it.next()?.parse().ok()?,
            size: it.next()?.parse().ok()?,
            mtime_ns: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(id)
    }

    /// For `status`: size and modification time.
    pub(crate) fn describe(&self) -> String {
        let mut t = String::new();
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(self.mtime_ns.max(0) as u64);
        crate::log::rfc3339(&mut t, at);
        format!("{} bytes, modified {t}", self.size)
    }
}

/// Opens the binary at `path` for a generation to run: the master keeps the fd, so the file
/// on disk may be replaced or deleted while the generation (or a restart of it) needs it.
pub(crate) fn pin(path: &std::path::Path) -> std::io::Result<(BinaryId, std::os::fd::OwnedFd)> {
    let f = std::fs::File::open(path)?;
    Ok((BinaryId::of(&f.metadata()?), f.into()))
}

/// The path to re-execute: resolved once at start, the way the shell found the command, so
/// that a deploy that switches a symlink (or renames a new file into place) is followed:
/// `argv[0]` made absolute when it has a slash, else the first match on `PATH`; either only if
/// it is the running file. Otherwise `/proc/self/exe`'s target (which names the deleted old
/// file after a deploy: reloads would then keep the old code, so this is the last resort).
pub(crate) fn resolve_exe() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| Error::io(ErrorKind::Io, "cannot find the running executable", e))?;
    let arg0 = std::env::args_os().next().map(PathBuf::from);
    let candidate = arg0.and_then(|a| {
        if a.as_os_str().as_bytes().contains(&b'/') {
            std::path::absolute(&a).ok()
        } else {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path)
                .map(|d| d.join(&a))
                .find(|p| is_executable(p))
                .and_then(|p| std::path::absolute(p).ok())
        }
    });
    if let Some(c) = candidate {
        if let (Ok(m1), Ok(m2)) = (std::fs::metadata(&c), std::fs::metadata(&exe)) {
            if m1.dev() == m2.dev() && m1.ino() == m2.ino() {
                return Ok(c);
            }
        }
    }
    Ok(exe)
}

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
