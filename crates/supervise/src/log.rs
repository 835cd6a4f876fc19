//! Logging: every line is formatted in memory and written to fd 2 with one `write`, so lines
//! from the master and the workers (which share the log file, opened `O_APPEND`) never
//! interleave within a line. Reopening (USR1) re-points fds 1 and 2 at a fresh file, so every
//! writer follows at once.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::sys;

/// Opens (creating, mode 0640) a log file for appending. A symlink at `path` is followed only
/// in a directory that no one but root or this user can write (as OpenSSH's `StrictModes`
/// judges): the master opens the log as root, and whoever else can write the log's directory
/// could otherwise point it at any file. So `-l /dev/stdout`, or a log linked to it as in
/// nginx's container images, works, and a link planted in `/tmp` or an app's own directory is
/// refused.
///
/// A regular file with another name besides `path` (a hard link) is refused too: whoever can
/// write the log's directory could otherwise link any file there (where the kernel lets them:
/// `fs.protected_hardlinks=0`), and root would append to it and give it to the workers' user.
pub fn open(path: &Path) -> io::Result<File> {
    let f = open_maybe_linked(path)?;
    let opened = f.metadata()?;
    if opened.is_file() {
        // One `stat` of the name: `path` is the only name of the file opened. (Checking the
        // opened file's link count alone would miss a link removed right after the open.)
        let named = std::fs::metadata(path)?;
        if (named.dev(), named.ino()) != (opened.dev(), opened.ino()) {
            return Err(io::Error::other("was replaced while it was opened (refused)"));
        }
        if named.nlink() > 1 {
            return Err(io::Error::other(format!(
                "has {} names (hard links): refused, as it could be any file linked there",
                named.nlink()
            )));
        }
    }
    Ok(f)
}

fn open_maybe_linked(path: &Path) -> io::Result<File> {
    let nofollow = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path);
    match nofollow {
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {}
        opened => return opened,
    }
    let Some(parent) = sys::open_parent(path) else {
        return Err(io::Error::other("is a symbolic link (refused)"));
    };
    let (dir, name) = parent?;
    let meta = dir.metadata()?;
    // Not a sticky one: there others can plant links of their own.
    if !sys::trusted_dir(meta.uid(), meta.mode(), nix::unistd::geteuid().as_raw(), false) {
        return Err(io::Error::other(format!(
            "is a symbolic link in a directory that others can write (refused: owned by uid {}, mode {:o})",
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    // The directory checked is the one opened in, even if its path is swapped meanwhile.
    sys::open_append_in(&dir, name, 0o640)
}

/// Opens `path` afresh and points stdout and stderr at it (what USR1 does after logrotate).
pub fn reopen(path: &Path) -> io::Result<()> {
    let f = open(path)?;
    sys::redirect_stdout_stderr(&f)
}

/// Installs the process-wide subscriber: `RUST_LOG` filters (default `info`); each line names
/// `role` and the pid. Does nothing when a subscriber is already installed. A directive of
/// `RUST_LOG` that does not parse is left out, and said so in the log.
pub fn init(role: &'static str) {
    let (directives, ignored) = filter_directives(std::env::var("RUST_LOG").ok().as_deref());
    let filter = EnvFilter::new(directives);
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Stderr)
        // Never colour a log file, even when another crate enables tracing-subscriber's `ansi`.
        .with_ansi(false)
        // tracing-subscriber would report a failed write with `eprintln!`, which panics when
        // stderr fails too (a full disk): [`Stderr`] counts what is lost instead.
        .log_internal_errors(false)
        .event_format(LineFormat { role, pid: std::process::id() })
        .try_init()
        .is_ok();
    if installed {
        for (directive, why) in ignored {
            tracing::warn!("RUST_LOG: ignoring {directive:?}: {why}");
        }
    }
}

/// The directives of a `RUST_LOG` value (`None`: unset) that parse, joined, and those that do
/// not, each with why. Unset, blank, or with no directive that parses, it is `info`: an empty
/// `RUST_LOG=` (as a unit file's `Environment=RUST_LOG=` or a container's empty variable
/// gives) would otherwise log errors alone, and a typo would take every line but those away
/// without a word (tracing-subscriber's lossy parser says it with `eprintln!`, which panics
/// when stderr fails, and outside the log's format).
fn filter_directives(var: Option<&str>) -> (String, Vec<(String, String)>) {
    let mut good = Vec::new();
    let mut ignored = Vec::new();
    // Split as tracing-subscriber splits it.
    for d in var.unwrap_or_default().split(',').map(str::trim).filter(|d| !d.is_empty()) {
        match d.parse::<tracing_subscriber::filter::Directive>() {
            Ok(_) => good.push(d),
            Err(e) => ignored.push((d.to_owned(), e.to_string())),
        }
    }
    let directives = if good.is_empty() { "info".to_owned() } else { good.join(",") };
    (directives, ignored)
}

/// The name of [`process_span`].
const PROCESS_SPAN: &str = "baton";

/// A span naming the process (`baton{role=master pid=123}`): entered for the whole life of
/// the master and around a worker's serving, so that baton's lines say which process wrote
/// them even when the app installed its own subscriber (baton's own format prints the same
/// as its prefix and skips the span).
pub fn process_span(role: &'static str) -> tracing::Span {
    tracing::info_span!(PROCESS_SPAN, role, pid = std::process::id())
}

/// What the log lost since the last line that could be written.
static LOST: Losses = Losses { lines: AtomicU64::new(0), cut: AtomicBool::new(false) };

/// Log lines that could not be written, and whether a failed write cut one short: written in
/// part (a disk that filled up during the write), its rest lost.
struct Losses {
    lines: AtomicU64,
    cut: AtomicBool,
}

/// fd 2 as the log's writer: a daemon must survive its log (a full disk, `-l /dev/full`, a
/// closed pipe). A failed write never panics and never retries: the line is counted, and the
/// next line that can be written is preceded by one saying how many were lost and why. (A
/// write that would block, to a fd 2 that someone made non-blocking, waits, as it would on a
/// blocking one.)
#[derive(Debug)]
pub struct Stderr;

impl io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        write_or_count(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes whole lines to fd 2 in one `write`; on failure counts them as lost (see [`Stderr`]).
pub fn write_or_count(buf: &[u8]) {
    LOST.write(&mut WaitWritable(io::stderr().lock()), buf, now_rfc3339);
}

/// A writer that waits for room where a write to a full pipe, socket or terminal opened
/// non-blocking fails (`EAGAIN`), as a write to one opened blocking does. fd 2 is shared with
/// whoever started the process: a parent that made its end of a pipe or its terminal
/// non-blocking (Node.js does, for one) makes it so for baton too, and a log that lags behind
/// for a moment is not a log that fails.
struct WaitWritable<W>(W);

impl<W: io::Write + std::os::fd::AsFd> io::Write for WaitWritable<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        loop {
            match self.0.write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLOUT)];
                    match poll(&mut fds, PollTimeout::NONE) {
                        // Writable, or an error the next write reports (a reader gone: EPIPE).
                        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                r => return r,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Counts `lines` dropped before they reached a write (a buffer of lines waiting for a log that
/// does not keep up was full): reported as [`write_or_count`]'s failures are.
pub fn count_lost(lines: u64) {
    LOST.lines.fetch_add(lines, Ordering::Relaxed);
}

/// Takes the count of lost lines no note has reported yet: for a process about to exit, which
/// hands it to one that goes on ([`count_lost`]).
pub fn take_unreported() -> u64 {
    LOST.lines.swap(0, Ordering::Relaxed)
}

impl Losses {
    /// Writes `buf` (whole lines) to `w`, after a note of what was lost if anything was. A
    /// line a failed write cut short is ended first, so that no line runs into the next.
    fn write(&self, w: &mut impl io::Write, buf: &[u8], now: impl Fn() -> String) {
        let lost = self.lines.load(Ordering::Relaxed);
        if lost > 0 {
            let end_cut = if self.cut.load(Ordering::Relaxed) { "\n" } else { "" };
            let note = format!(
                "{end_cut}{} WARN  log: {lost} log lines lost: the log could not be written, or not as fast as they came\n",
                now()
            );
            if let Err(done) = write_whole(w, note.as_bytes()) {
                self.failed(note.as_bytes(), done, false);
                self.failed(buf, 0, true);
                return;
            }
            self.lines.fetch_sub(lost, Ordering::Relaxed);
            self.cut.store(false, Ordering::Relaxed);
        }
        if let Err(done) = write_whole(w, buf) {
            self.failed(buf, done, true);
        }
    }

    /// Writing `buf` failed after `done` bytes: a line may be cut short, and (`count`) the
    /// lines not written whole are lost.
    fn failed(&self, buf: &[u8], done: usize, count: bool) {
        if done > 0 {
            self.cut.store(buf[done - 1] != b'\n', Ordering::Relaxed);
        }
        if count {
            let rest = buf[done..].iter().filter(|b| **b == b'\n').count().max(1);
            self.lines.fetch_add(rest as u64, Ordering::Relaxed);
        }
    }
}

/// Writes all of `buf`, or says how many bytes were written before an error.
fn write_whole(w: &mut impl io::Write, buf: &[u8]) -> std::result::Result<(), usize> {
    let mut done = 0;
    while done < buf.len() {
        match w.write(&buf[done..]) {
            Ok(0) => return Err(done),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(done),
        }
    }
    Ok(())
}

fn now_rfc3339() -> String {
    let mut ts = String::with_capacity(24);
    rfc3339(&mut ts, SystemTime::now());
    ts
}

struct LineFormat {
    role: &'static str,
    pid: u32,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let mut ts = String::with_capacity(24);
        rfc3339(&mut ts, SystemTime::now());
        write!(w, "{ts} {:<5} {}[{}] ", event.metadata().level(), self.role, self.pid)?;
        // The spans the event is in, with their fields (`request{method=GET uri=/}: ...`).
        if let Some(scope) = ctx.event_scope() {
            // The process span (see [`process_span`]) is what the prefix already says.
            for span in scope.from_root().filter(|s| s.name() != PROCESS_SPAN) {
                write!(w, "{}", span.name())?;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<tracing_subscriber::fmt::FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(w, "{{{fields}}}")?;
                    }
                }
                w.write_str(": ")?;
            }
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn split(t: SystemTime) -> (i64, u32, u32, u64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil((secs / 86_400) as i64);
    (y, m, day, secs % 86_400, d.subsec_millis())
}

/// `2026-11-25T09:40:00.123Z`
pub fn rfc3339(out: &mut String, t: SystemTime) {
    let (y, m, d, s, ms) = split(t);
    let _ = write!(out, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z", s / 3600, s / 60 % 60, s % 60);
}

/// `25/Nov/2026:09:40:00 +0000` (the common/combined log format's time).
pub fn clf_time(out: &mut String, t: SystemTime) {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (y, m, d, s, _) = split(t);
    let _ =
        write!(out, "{d:02}/{}/{y:04}:{:02}:{:02}:{:02} +0000", MONTHS[m as usize - 1], s / 3600, s / 60 % 60, s % 60);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_log_file_with_another_name_is_refused_and_left_as_it_was() {
        let dir = std::env::temp_dir().join(format!("baton-log-links-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let precious = dir.join("precious");
        std::fs::write(&precious, "keep me\n").unwrap();
        let log = dir.join("x.log");
        std::fs::hard_link(&precious, &log).unwrap();
        let e = open(&log).unwrap_err();
        assert!(e.to_string().contains("has 2 names (hard links): refused"), "{e}");
        assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me\n");
        // Once it is the file's only name, it is opened as any log.
        std::fs::remove_file(&precious).unwrap();
        open(&log).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rust_log_keeps_what_parses_and_names_what_does_not() {
        let info = |var| filter_directives(var).0;
        // Unset, empty (`Environment=RUST_LOG=`) or blank: the default, not errors alone.
        for var in [None, Some(""), Some(" , ")] {
            assert_eq!(info(var), "info", "{var:?}");
        }
        assert_eq!(filter_directives(Some("warn,hyper=debug")), ("warn,hyper=debug".to_owned(), vec![]));
        // A typo costs that directive alone, and is named with why.
        let (kept, ignored) = filter_directives(Some("debug, baton=bogus,hyper=trace"));
        assert_eq!(kept, "debug,hyper=trace");
        assert_eq!(ignored.len(), 1, "{ignored:?}");
        assert_eq!(ignored[0].0, "baton=bogus");
        assert!(ignored[0].1.contains("expected one of"), "{ignored:?}");
        // Nothing usable left: the default.
        let (kept, ignored) = filter_directives(Some("[{"));
        assert_eq!((kept.as_str(), ignored.len()), ("info", 1));
        // Whatever is kept builds a filter.
        assert!(EnvFilter::builder().parse(filter_directives(Some("x=bogus,baton=debug")).0).is_ok());
    }

    /// A disk with `room` bytes left: a write past it is cut short, then fails (ENOSPC).
    struct Disk {
        data: Vec<u8>,
        room: usize,
    }

    impl io::Write for Disk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let n = buf.len().min(self.room);
            self.data.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A file that tells `full` at its first write that would block.
    struct Telling {
        file: File,
        full: Option<std::sync::mpsc::Sender<()>>,
    }

    impl io::Write for Telling {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let r = self.file.write(buf);
            if r.as_ref().is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock) {
                self.full.take().map(|full| full.send(()));
            }
            r
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl std::os::fd::AsFd for Telling {
        fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
            self.file.as_fd()
        }
    }

    /// Regression: a non-blocking fd 2 (a parent's pipe or terminal) lost every line written
    /// while its reader lagged behind (`EAGAIN`), though the reader then read all it was given.
    #[test]
    fn a_non_blocking_log_that_is_full_is_waited_for_not_lost() {
        use std::io::Read as _;
        use std::os::fd::AsRawFd as _;
        let (r, w) = nix::unistd::pipe().unwrap();
        let flags = nix::fcntl::fcntl(w.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
        let nonblocking = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(w.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nonblocking)).unwrap();
        let (full, is_full) = std::sync::mpsc::channel();
        // The reader starts once a write found the pipe full, and reads to the end.
        let reader = std::thread::spawn(move || {
            is_full.recv().unwrap();
            let mut got = Vec::new();
            File::from(r).read_to_end(&mut got).unwrap();
            got
        });
        let lines: Vec<u8> =
            (0..10_000).flat_map(|i| format!("line {i:06} of a log that lags\n").into_bytes()).collect();
        assert!(lines.len() > 4 * 65536, "more than a pipe holds");
        let losses = Losses { lines: AtomicU64::new(0), cut: AtomicBool::new(false) };
        let mut out = WaitWritable(Telling { file: File::from(w), full: Some(full) });
        losses.write(&mut out, &lines, || "T".to_owned());
        assert!(out.0.full.is_none(), "the pipe was never full");
        drop(out);
        assert_eq!(losses.lines.load(Ordering::Relaxed), 0, "lines counted as lost");
        assert!(reader.join().unwrap() == lines, "the reader got other bytes than the lines");
    }

    #[test]
    fn a_line_cut_short_by_a_full_disk_is_ended_and_the_loss_told() {
        let losses = Losses { lines: AtomicU64::new(0), cut: AtomicBool::new(false) };
        let now = || "T".to_owned();
        // Room for the first line and part of the second.
        let mut disk = Disk { data: Vec::new(), room: 15 };
        losses.write(&mut disk, b"line one\nline two\nline 3\n", now);
        assert_eq!(disk.data, b"line one\nline t");
        assert_eq!(losses.lines.load(Ordering::Relaxed), 2, "line two (cut short) and line 3");
        // Full: nothing more is written, and the loss is counted.
        losses.write(&mut disk, b"line four\n", now);
        assert_eq!(disk.data, b"line one\nline t");
        assert_eq!(losses.lines.load(Ordering::Relaxed), 3);
        // Room again: the cut line is ended, then the note, then the line.
        disk.room = 1000;
        losses.write(&mut disk, b"line five\n", now);
        let text = String::from_utf8(disk.data.clone()).unwrap();
        assert_eq!(
            text,
            "line one\nline t\nT WARN  log: 3 log lines lost: the log could not be written, or not as fast as they came\nline five\n"
        );
        assert_eq!(losses.lines.load(Ordering::Relaxed), 0);
        // A disk full from the start of a write cuts nothing: no extra line end.
        let mut disk = Disk { data: Vec::new(), room: 0 };
        losses.write(&mut disk, b"a\n", now);
        disk.room = 1000;
        losses.write(&mut disk, b"b\n", now);
        assert_eq!(
            disk.data,
            b"T WARN  log: 1 log lines lost: the log could not be written, or not as fast as they came\nb\n"
        );
    }

    #[test]
    fn formats_times() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_599_600_123); // 2026-11-25T09:40:00.123Z
        let mut s = String::new();
        rfc3339(&mut s, t);
        assert_eq!(s, "2026-11-25T09:40:00.123Z");
        s.clear();
        clf_time(&mut s, t);
        assert_eq!(s, "25/Nov/2026:09:40:00 +0000");
        s.clear();
        rfc3339(&mut s, UNIX_EPOCH + Duration::from_secs(951_782_400)); // leap day 2000
        assert_eq!(s, "2000-02-29T00:00:00.000Z");
    }
}
