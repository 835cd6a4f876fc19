//! The access log's writer: request threads append whole lines to a shared buffer; one thread
//! writes them to fd 2 every 100 ms, or once 1 MiB is waiting: a syscall per batch instead of
//! one per request, and few wake-ups (at 32 KiB, a busy worker woke the writer over a thousand
//! times a second, a context switch each: perf, about 50 ns per request). Each `write` carries
//! whole lines: to a regular file (opened `O_APPEND`, where a write is atomic) in one piece; to
//! a pipe in pieces of at most `PIPE_BUF` bytes cut after a newline. So lines never interleave
//! with other processes' lines. fd 2 is what USR1 re-points, so buffered lines follow a
//! reopen; [`flush`] runs before a worker exits (and before a reopen), and waits for a batch
//! the writer thread is writing, so that none is cut off by the exit or lands after the
//! flushed lines. Lines still buffered when a process is killed outright (at most 100 ms
//! worth) are lost. So are lines that find [`MAX_QUEUED`] bytes already waiting (a log that
//! stalls, a pipe nobody reads): they are counted, and the log says how many once it takes
//! lines again, rather than the worker's memory growing without bound.

use std::sync::{Condvar, Mutex, OnceLock};

const PIPE_BUF: usize = 4096;
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
const FLUSH_AT: usize = 1024 * 1024;
/// At most this much waits for the writer (about 200,000 lines, a second or two of a busy
/// worker's): past it, lines are dropped and counted.
const MAX_QUEUED: usize = 32 * 1024 * 1024;

struct Sink {
    buf: Mutex<Vec<u8>>,
    ready: Condvar,
    /// Held while a batch is taken from `buf` and written (locked before `buf`): the lines
    /// reach fd 2 in the order they were queued.
    writing: Mutex<()>,
    /// No writer thread could be started: `push` writes at once.
    direct: std::sync::atomic::AtomicBool,
    /// [`write_lines`] (another function in tests).
    write: fn(&[u8]),
    /// [`MAX_QUEUED`] (less in tests).
    max_queued: usize,
    /// [`baton_supervise::log::count_lost`] (another function in tests).
    lost: fn(u64),
}

impl Sink {
    fn new(write: fn(&[u8]), max_queued: usize, lost: fn(u64)) -> Sink {
        Sink {
            buf: Mutex::new(Vec::with_capacity(64 * 1024)),
            ready: Condvar::new(),
            writing: Mutex::new(()),
            direct: false.into(),
            write,
            max_queued,
            lost,
        }
    }
}

fn sink() -> &'static Sink {
    static SINK: OnceLock<&'static Sink> = OnceLock::new();
    SINK.get_or_init(|| {
        let sink: &'static Sink =
            Box::leak(Box::new(Sink::new(write_lines, MAX_QUEUED, baton_supervise::log::count_lost)));
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
            return (self.write)(line);
        }
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let before = buf.len();
        if before + line.len() > self.max_queued {
            drop(buf);
            return (self.lost)(1);
        }
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
                // Filled past the mark while the last batch was written: its wake-up is gone.
                if buf.len() < FLUSH_AT {
                    drop(self.ready.wait_timeout(buf, FLUSH_EVERY).unwrap_or_else(|e| e.into_inner()));
                }
            }
            let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut *self.buf.lock().unwrap_or_else(|e| e.into_inner()), &mut out);
            if !out.is_empty() {
                (self.write)(&out);
            }
            out.clear();
            // Grown by a stall: not kept once the log takes lines again (both buffers pass here).
            if out.capacity() > 2 * FLUSH_AT {
                out = Vec::with_capacity(64 * 1024);
            }
        }
    }

    /// Writes out what is queued, after the batch the writer thread may be writing.
    fn flush(&self) {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let taken = std::mem::take(&mut *self.buf.lock().unwrap_or_else(|e| e.into_inner()));
        if !taken.is_empty() {
            (self.write)(&taken);
        }
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
    use std::sync::{Mutex, mpsc};
    use std::time::Duration;

    use super::{PIPE_BUF, Sink, chunk_len};

    static WRITTEN: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    static ENTERED: Mutex<Option<mpsc::Sender<()>>> = Mutex::new(None);
    static RELEASE: Mutex<Option<mpsc::Receiver<()>>> = Mutex::new(None);

    /// Records each write; the batch `first` waits for the test's release (a slow write).
    fn recording_write(data: &[u8]) {
        if data == b"first\n" {
            ENTERED.lock().unwrap().as_ref().unwrap().send(()).unwrap();
            RELEASE.lock().unwrap().as_ref().unwrap().recv().unwrap();
        }
        WRITTEN.lock().unwrap().push(data.to_vec());
    }

    #[test]
    fn flush_waits_for_the_batch_being_written_and_keeps_the_order() {
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        *ENTERED.lock().unwrap() = Some(entered_tx);
        *RELEASE.lock().unwrap() = Some(release_rx);
        let sink: &'static Sink = Box::leak(Box::new(Sink::new(recording_write, super::MAX_QUEUED, |_| {})));
        std::thread::spawn(move || sink.run());
        sink.push(b"first\n");
        entered.recv_timeout(Duration::from_secs(10)).expect("the writer thread takes the first batch");
        sink.push(b"second\n");
        let (done_tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            sink.flush();
            done_tx.send(()).unwrap();
        });
        // Before the fix, `flush` wrote `second` at once: a worker exiting right after it cut
        // off the batch the writer thread was writing, or a reopen put it in the new file.
        assert!(
            done.recv_timeout(Duration::from_millis(500)).is_err(),
            "flush returned while the writer thread was still writing the batch before"
        );
        release.send(()).unwrap();
        done.recv_timeout(Duration::from_secs(10)).expect("flush returns once the batch is written");
        assert_eq!(*WRITTEN.lock().unwrap(), [b"first\n".to_vec(), b"second\n".to_vec()]);
    }

    static LOST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    #[test]
    fn lines_past_the_queue_limit_are_counted_lost_not_queued() {
        // No writer thread: a log that does not take lines.
        let sink = Sink::new(
            |_| unreachable!("nothing is written"),
            30,
            |n| {
                LOST.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            },
        );
        for _ in 0..5 {
            sink.push(b"0123456789\n");
        }
        assert_eq!(sink.buf.lock().unwrap().len(), 22, "two lines of 11 bytes fit in 30");
        assert_eq!(LOST.load(std::sync::atomic::Ordering::Relaxed), 3);
    }

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
