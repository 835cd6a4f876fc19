//! Logging: every line is formatted in memory and written to fd 2 with one `write`, so lines
//! from the master and the workers (which share the log file, opened `O_APPEND`) never
//! interleave within a line. Reopening (USR1) re-points fds 1 and 2 at a fresh file.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::sys;

/// Opens (creating, mode 0640) a log file for appending.
pub(crate) fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().append(true).create(true).mode(0o640).custom_flags(libc::O_CLOEXEC).open(path)
}

/// Opens `path` afresh and points stdout and stderr at it (what USR1 does after logrotate).
pub(crate) fn reopen(path: &Path) -> io::Result<()> {
    let f = open(path)?;
    sys::redirect_stdout_stderr(&f)
}

/// Installs the process-wide subscriber: `RUST_LOG` filters (default `info`).
pub(crate) fn init(role: &'static str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .event_format(LineFormat { role, pid: std::process::id() })
        .try_init();
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
pub(crate) fn rfc3339(out: &mut String, t: SystemTime) {
    let (y, m, d, s, ms) = split(t);
    let _ = write!(out, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z", s / 3600, s / 60 % 60, s % 60);
}

/// `25/Nov/2026:09:40:00 +0000` (the common/combined log format's time).
pub(crate) fn clf_time(out: &mut String, t: SystemTime) {
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

/// The access log's writer: request threads append whole lines to a shared buffer; one thread
/// writes them to fd 2 every 100 ms, or once 32 KiB are waiting (a syscall per batch instead of
/// one per request, and no wake-up per line). Each `write` carries whole lines: to a regular
/// file (opened `O_APPEND`, where a write is atomic) in one piece; to a pipe in pieces of at
/// most `PIPE_BUF` bytes cut after a newline. So lines never interleave with other processes'
/// lines. fd 2 is what USR1 re-points, so buffered lines follow a reopen; `flush_access_log`
/// runs before a worker exits. Lines still buffered when a process is killed outright (at most
/// 100 ms worth) are lost.
mod access {
    use std::io::Write as _;
    use std::sync::{Condvar, Mutex, OnceLock};

    pub(super) const PIPE_BUF: usize = 4096;
    const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
    const FLUSH_AT: usize = 32 * 1024;

    pub(super) struct Sink {
        buf: Mutex<Vec<u8>>,
        ready: Condvar,
        /// No writer thread could be started: `push` writes at once.
        direct: std::sync::atomic::AtomicBool,
    }

    pub(super) fn sink() -> &'static Sink {
        static SINK: OnceLock<&'static Sink> = OnceLock::new();
        SINK.get_or_init(|| {
            let sink: &'static Sink = Box::leak(Box::new(Sink {
                buf: Mutex::new(Vec::with_capacity(64 * 1024)),
                ready: Condvar::new(),
                direct: false.into(),
            }));
            let spawned = std::thread::Builder::new().name("baton-access-log".into()).spawn(move || sink.run());
            if spawned.is_err() {
                sink.direct.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            sink
        })
    }

    impl Sink {
        pub(super) fn push(&self, line: &[u8]) {
            if self.direct.load(std::sync::atomic::Ordering::Relaxed) {
                return write_lines(line);
            }
            let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
            let before = buf.len();
            buf.extend_from_slice(line);
            let crossed = before < FLUSH_AT && buf.len() >= FLUSH_AT;
            drop(buf);
            if crossed {
                self.ready.notify_one();
            }
        }

        fn run(&self) {
            let mut out = Vec::with_capacity(64 * 1024);
            loop {
                {
                    let buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
                    let (mut buf, _) = self.ready.wait_timeout(buf, FLUSH_EVERY).unwrap_or_else(|e| e.into_inner());
                    std::mem::swap(&mut *buf, &mut out);
                }
                write_lines(&out);
                out.clear();
            }
        }

        pub(super) fn flush(&self) {
            let taken = std::mem::take(&mut *self.buf.lock().unwrap_or_else(|e| e.into_inner()));
            write_lines(&taken);
        }
    }

    /// Writes `data` (whole lines): at once to a regular file, else in chunks of at most
    /// PIPE_BUF bytes cut after a newline.
    fn write_lines(data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut err = std::io::stderr().lock();
        let regular = nix::sys::stat::fstat(2).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
        if regular {
            let _ = err.write_all(data);
            return;
        }
        let mut rest = data;
        while !rest.is_empty() {
            let cut = chunk_len(rest);
            let _ = err.write_all(&rest[..cut]);
            rest = &rest[cut..];
        }
    }

    /// The longest prefix of whole lines within PIPE_BUF bytes (a longer single line whole).
    fn chunk_len(data: &[u8]) -> usize {
        if data.len() <= PIPE_BUF {
            return data.len();
        }
        match data[..PIPE_BUF].iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None => data.iter().position(|&b| b == b'\n').map_or(data.len(), |i| i + 1),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::{PIPE_BUF, chunk_len};

        #[test]
        fn chunks_end_at_line_boundaries() {
            let line = [b'x'; 99].iter().copied().chain([b'\n']).collect::<Vec<u8>>();
            let data: Vec<u8> = line.iter().copied().cycle().take(line.len() * 200).collect();
            let mut rest = &data[..];
            while !rest.is_empty() {
                let cut = chunk_len(rest);
                assert!(cut <= PIPE_BUF && rest[cut - 1] == b'\n', "cut {cut}");
                rest = &rest[cut..];
            }
            let long: Vec<u8> = [b'y'; 5000].iter().copied().chain([b'\n', b'z', b'\n']).collect();
            assert_eq!(chunk_len(&long), 5001);
        }
    }
}

/// Queues one access log line (ending in a newline) for the writer thread.
pub(crate) fn access_line(line: &[u8]) {
    access::sink().push(line);
}

/// Writes out every queued access log line (before a worker exits).
pub(crate) fn flush_access_log() {
    access::sink().flush();
}
