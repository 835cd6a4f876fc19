//! The pid file: created 0644, locked with `flock` by the master for its whole life, holding
//! the master's pid and a newline, removed on clean exit. A file whose lock nobody holds is
//! stale and taken over.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, ErrorKind, Result};

/// A locked pid file.
#[derive(Debug)]
pub(crate) struct PidFile {
    path: PathBuf,
    file: Flock<File>,
}

impl PidFile {
    /// Opens and locks `path` (absolute). Fails with [`ErrorKind::AlreadyRunning`] naming the
    /// holder's pid when a live process holds the lock.
    pub(crate) fn lock(path: &Path) -> Result<PidFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            // Never through a symlink: in a directory others can write, one planted there
            // would make root overwrite its target.
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => Error::new(
                    ErrorKind::Io,
                    format!("cannot open pid file {}: is a symbolic link (refused)", path.display()),
                ),
                _ => Error::io(ErrorKind::Io, format!("cannot open pid file {}", path.display()), e),
            })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(file) => Ok(PidFile { path: path.to_owned(), file }),
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut s = String::new();
                let _ = file.read_to_string(&mut s);
                // Between its lock and its write, an instance leaves the file empty, or with
                // the pid of one that died without removing it: named only if it holds it.
                let holder = s.trim().parse::<i32>().ok().filter(|&p| match held_by(path, p) {
                    Ok(holds) => holds,
                    Err(e) => e.kind() != io::ErrorKind::NotFound,
                });
                let what = match holder {
                    Some(pid) => format!("running pid {pid}"),
                    None => "another instance, still starting (it has not written its pid yet)".to_owned(),
                };
                Err(Error::new(ErrorKind::AlreadyRunning, format!("pid file {} is held by {what}", path.display())))
            }
            Err((_, e)) => Err(Error::io(ErrorKind::Io, format!("cannot lock pid file {}", path.display()), e.into())),
        }
    }

    /// The pid file a previous image of this master locked (see `master/upgrade`): the lock
    /// belongs to the open file, which the exec kept, so taking it again succeeds at once.
    pub(crate) fn adopt(fd: std::os::fd::OwnedFd, path: PathBuf) -> io::Result<PidFile> {
        match Flock::lock(File::from(fd), FlockArg::LockExclusiveNonblock) {
            Ok(file) => Ok(PidFile { path, file }),
            Err((_, e)) => Err(e.into()),
        }
    }

    pub(crate) fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.file.as_fd()
    }

    /// Writes this process's pid (call after the last fork).
    pub(crate) fn write_pid(&mut self) -> io::Result<()> {
        let f: &mut File = &mut self.file;
        f.set_len(0)?;
        f.rewind()?;
        f.write_all(format!("{}\n", std::process::id()).as_bytes())?;
        f.sync_data()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file (still holding the lock, so no second instance sees a half state).
    pub(crate) fn remove(self) {
        drop(self);
    }
}

/// A pid file whose holder goes away (clean exit, or a start that failed after locking) is
/// removed while still locked, if the path still names the file this process locked: one
/// removed by hand while the master ran, and made again by another instance, is that one's.
/// Forked copies never run this: the launcher, the daemon's first child and workers leave
/// with `exit`/`_exit`/`exec`.
impl Drop for PidFile {
    fn drop(&mut self) {
        if let Ok(locked) = self.file.metadata() {
            remove_if_still(&self.path, file_id(&locked));
        }
    }
}

/// A file's identity (device, inode): whether a path still names the file a process made.
pub(crate) fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

/// Removes `path` if it still names the file `id`, not one put in its place since (by an
/// operator, or by another instance after this one's was removed).
pub(crate) fn remove_if_still(path: &Path, id: (u64, u64)) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| file_id(&m) == id) {
        let _ = std::fs::remove_file(path);
    }
}

/// What a pid file says about an instance, for the control commands.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    /// No pid file.
    Missing,
    /// The file exists but nobody holds its lock: the process is dead.
    Stale(Option<i32>),
    /// A live process holds the lock.
    Running(i32),
}

pub(crate) fn probe(path: &Path) -> Result<Probe> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Probe::Missing),
        Err(e) => {
            return Err(Error::io(ErrorKind::Io, format!("cannot read pid file {}", path.display()), e));
        }
    };
    let mut s = String::new();
    // A directory opens but does not read: that is no pid file, stale or not.
    (&file)
        .read_to_string(&mut s)
        .map_err(|e| Error::io(ErrorKind::Io, format!("cannot read pid file {}", path.display()), e))?;
    let pid = s.trim().parse::<i32>().ok();
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_unlocked_on_drop) => Ok(Probe::Stale(pid)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => match pid {
            Some(p) => Ok(Probe::Running(p)),
            // Locked but not yet written: the master is between lock and write.
            None => Err(Error::new(
                ErrorKind::NotRunning,
                format!("pid file {} is locked but empty (starting?)", path.display()),
            )),
        },
        Err((_, e)) => Err(Error::io(ErrorKind::Io, format!("cannot lock pid file {}", path.display()), e.into())),
    }
}

/// The control socket that lives next to a pid file: `x.pid` -> `x.pid.ctl`. Appended, not
/// replacing the extension: `x.pid` and `x.lock` must not share one socket.
pub(crate) fn control_path(pid: &Path) -> PathBuf {
    let mut p = pid.as_os_str().to_owned();
    p.push(".ctl");
    PathBuf::from(p)
}

/// Whether process `pid` has the file at `path` open: the master holds its pid file open (and
/// locked) for its whole life, a process whose pid was merely written into the file does not.
pub(crate) fn held_by(path: &Path, pid: i32) -> std::io::Result<bool> {
    let target = file_id(&std::fs::metadata(path)?);
    if !Path::new("/proc/self/fd").exists() {
        // No `/proc` (macOS, the BSDs): the file is locked and names `pid`.
        return Ok(matches!(probe(path), Ok(Probe::Running(p)) if p == pid));
    }
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(m) = std::fs::metadata(entry?.path()) else { continue };
        if file_id(&m) == target {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Was a bug: two `start`s at once, and the second said "held by running pid " (nothing:
    /// the first had locked the file, not yet written its pid).
    #[test]
    fn a_pid_file_locked_but_not_yet_written_names_no_pid() {
        let dir = std::env::temp_dir().join(format!("baton-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.pid");
        let _ = std::fs::remove_file(&path);
        let mut first = PidFile::lock(&path).unwrap();
        let starting = "is held by another instance, still starting (it has not written its pid yet)";
        // Empty, as a new file is until the holder writes it.
        let e = PidFile::lock(&path).unwrap_err().to_string();
        assert!(e.ends_with(starting), "{e}");
        // A pid left by an instance that died without removing the file (no process has it).
        std::fs::write(&path, format!("{}\n", i32::MAX)).unwrap();
        let e = PidFile::lock(&path).unwrap_err().to_string();
        assert!(e.ends_with(starting), "{e}");
        // Once written, the holder is named.
        first.write_pid().unwrap();
        let e = PidFile::lock(&path).unwrap_err().to_string();
        assert!(e.ends_with(&format!("is held by running pid {}", std::process::id())), "{e}");
        drop(first);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
