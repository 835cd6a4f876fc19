//! The access log's writer: request threads append whole lines to a shared buffer; one thread
//! writes them to fd 2 every 100 ms, or once 1 MiB is waiting: a syscall per batch instead of
//! one per request, and few wake-ups (at 32 KiB, a busy worker woke the writer over a thousand
//! times a second, a context switch each: perf, about 50 ns per request). Each `write` carries
//! whole lines: to a regular file (opened `O_APPEND`, where a write is atomic) in one piece; to
//! a pipe in pieces of at most `PIPE_BUF` bytes cut after a newline. So lines never interleave
//! with other processes' lines. fd 2 is what USR1 re-points, so buffered lines follow a
//! reopen; [`flush`] runs before a worker exits. Lines still buffered when a process is killed
//! outright (at most 100 ms worth) are lost.

use std::sync::{Condvar, Mutex, OnceLock};

const PIPE_BUF: usize = 4096;
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
const FLUSH_AT: usize = 1024 * 1024;

struct Sink {
    buf: Mutex<Vec<u8>>,
    ready: Condvar,
    /// No writer thread could be started: `push` writes at once.
    direct: std::sync::atomic::AtomicBool,
}

fn sink() -> &'static Sink {
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
    fn push(&self, line: &[u8]) {
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
                let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
                // Filled past the mark while the last batch was written: its wake-up is gone.
                if buf.len() < FLUSH_AT {
                    buf = self.ready.wait_timeout(buf, FLUSH_EVERY).unwrap_or_else(|e| e.into_inner()).0;
                }
                std::mem::swap(&mut *buf, &mut out);
            }
            write_lines(&out);
            out.clear();
        }
    }

    fn flush(&self) {
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
    // A failed write (a full disk) loses the lines and says so later; it never panics.
    let write = baton_supervise::log::write_or_count;
    let regular = nix::sys::stat::fstat(2).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
    if regular {
        return write(data);
    }
    let mut rest = data;
    while !rest.is_empty() {
        let cut = chunk_len(rest);
        write(&rest[..cut]);
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

/// Queues one access log line (ending in a newline) for the writer thread.
pub(crate) fn push_line(line: &[u8]) {
    sink().push(line);
}

/// Writes out every queued access log line (before a worker exits).
pub(crate) fn flush() {
    sink().flush();
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
