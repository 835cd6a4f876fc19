//! Counters that outlive workers: one shared memory region (a `memfd`), created by the master
//! and mapped by every worker, so every generation adds to the same counters and neither a
//! reload nor a crash resets them (Envoy's hot-restart stats, without a second process).
//!
//! Layout ([`Region`]), all atomics, zero-initialised:
//! - **shards** of monotonic request counters (by listener and status class) and the request
//!   duration histogram. Each worker thread adds to its own shard (no cache line shared
//!   between threads of one process); readers sum the shards.
//! - **worker slots**: gauges of one worker (requests in flight, open connections). The
//!   master hands each worker a slot and clears it when the worker is reaped, so a worker
//!   killed mid-request leaves no gauge behind.
//! - **master**: what only the master knows (generation, reloads, starts, crashes).
//! - **the app's own counters, gauges and histograms** ([`AppSeries`]): each series is
//!   registered once by name, by whichever worker first uses it, and found again by name by
//!   every later one. A counter's value (and a histogram's buckets and sum) is sharded per
//!   worker thread like the request counters; a gauge's is one per worker slot, summed over
//!   the live workers like baton's own gauges.
//!
//! The region is handed over like a listener: an fd placed right after the listeners, named
//! by `BATON_METRICS` (`<fd>:<slot>`). A worker whose build has another layout (a deploy of
//! a newer baton) does not map it: it counts in a private region and says so.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys;

/// Status classes counted: 1xx to 5xx.
pub const CLASSES: usize = 5;
/// Listeners with their own request counters; further ones count with the last.
pub const LISTENERS: usize = 16;
/// Counter shards (worker threads beyond this share).
pub const SHARDS: usize = 16;
/// Workers with gauges at once (beyond this a worker has none).
pub const SLOTS: usize = 32;
/// Upper bounds of the request duration histogram, in seconds (`+Inf` follows).
pub const REQUEST_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];
/// Upper bounds of the reload duration histogram, in seconds (`+Inf` follows).
pub const RELOAD_BUCKETS: [f64; 8] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The entries for the app's own series the region holds (a counter or a gauge takes one, a
/// histogram one per bucket and two more).
pub const APP_SERIES: usize = 256;
/// The longest series name (`name{labels}`) and help text of an app's series, in bytes.
pub const APP_TEXT: usize = 128;

const MAGIC: u64 = u64::from_be_bytes(*b"batonmx2");

/// A histogram: cumulative counts are computed by the reader.
#[repr(C)]
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    pub buckets: [AtomicU64; N],
    /// Sum of the observations, in nanoseconds.
    pub sum_ns: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    /// Adds one observation that falls in bucket `i`.
    #[inline]
    pub fn observe(&self, i: usize, ns: u64) {
        self.buckets[i.min(N - 1)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

/// The bucket of `secs` among `bounds` (`bounds.len()` for `+Inf`).
#[inline]
pub fn bucket(bounds: &[f64], secs: f64) -> usize {
    bounds.iter().position(|b| secs <= *b).unwrap_or(bounds.len())
}

/// One shard of the monotonic request counters.
#[repr(C)]
#[derive(Debug)]
pub struct Shard {
    /// Requests answered, by listener and status class.
    pub requests: [[AtomicU64; CLASSES]; LISTENERS],
    /// How long requests took, from the request head to the end of the response body.
    pub duration: Histogram<13>,
}

/// Open connections of one worker, by kind.
#[repr(C)]
#[derive(Debug)]
pub struct Conns {
    /// HTTP/1 connections (not upgraded).
    pub h1: AtomicU64,
    /// HTTP/2 connections.
    pub h2: AtomicU64,
    /// Upgraded connections (WebSocket).
    pub upgraded: AtomicU64,
    /// Of all of them, those over TLS.
    pub tls: AtomicU64,
}

/// The gauges of one worker.
#[repr(C)]
#[derive(Debug)]
pub struct Slot {
    /// The worker's pid; 0 while the slot is free.
    pub pid: AtomicU64,
    /// The worker's generation.
    pub generation: AtomicU64,
    /// 1 once the worker drains.
    pub draining: AtomicU64,
    /// Requests in flight.
    pub in_flight: AtomicU64,
    /// Open connections.
    pub conns: Conns,
}

/// What only the master knows.
#[repr(C)]
#[derive(Debug)]
pub struct MasterStats {
    /// The master's start, in seconds since the Unix epoch.
    pub start_time: AtomicU64,
    /// The master's pid.
    pub master_pid: AtomicU64,
    /// The generation serving now.
    pub generation: AtomicU64,
    /// Reloads whose new generation serves.
    pub reloads_ok: AtomicU64,
    /// Reloads whose new generation failed before it served (the old one kept serving).
    pub reloads_failed: AtomicU64,
    /// Reloads whose new generation failed its probation (the last good binary came back).
    pub reloads_rolled_back: AtomicU64,
    /// From the reload request to the old generation no longer accepting.
    pub reload_duration: Histogram<9>,
    /// Workers started (any cause).
    pub worker_starts: AtomicU64,
    /// Serving workers that died unexpectedly (or were killed by the watchdog).
    pub worker_crashes: AtomicU64,
}

/// A text of at most [`APP_TEXT`] bytes, in words that can be written by one process and read
/// by others (no unsafe shared bytes): published by the [`AppSeries`] state that follows it.
#[repr(C)]
#[derive(Debug)]
struct Text {
    len: AtomicU64,
    words: [AtomicU64; APP_TEXT / 8],
}

impl Text {
    fn write(&self, s: &[u8]) {
        debug_assert!(s.len() <= APP_TEXT);
        for (w, chunk) in self.words.iter().zip(s.chunks(8)) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            w.store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
        self.len.store(s.len() as u64, Ordering::Relaxed);
    }

    fn read(&self) -> Vec<u8> {
        let len = (self.len.load(Ordering::Relaxed) as usize).min(APP_TEXT);
        let mut out: Vec<u8> = self.words.iter().flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes()).collect();
        out.truncate(len);
        out
    }
}

/// [`AppSeries::state`]: free.
const FREE: u64 = 0;
/// [`AppSeries::state`]: claimed, its name being written.
const WRITING: u64 = 1;
/// [`AppSeries::state`]: registered; its name and help are final.
const READY: u64 = 2;
/// [`AppSeries::state`]: a histogram replaced by one of other buckets: not shown, not reused.
const RETIRED: u64 = 3;

/// What an app's series is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Kind {
    /// A counter: its value sharded per thread.
    Counter = 1,
    /// A gauge: its value one per worker slot.
    Gauge = 2,
    /// A histogram's head: its buckets, then its sum, follow as [`Kind::Part`]s.
    Histogram = 3,
    /// A histogram's bucket (named by its upper bound: `0.25`, `+Inf`) or its sum (`sum`).
    Part = 4,
}

/// One entry of the app's own series: a counter's or a gauge's series, or a histogram's head
/// or one of its parts. Its name (`name{labels}`, as the text format writes it; a part's: its
/// bound) and help are published by its state. A counter's and a histogram part's values are
/// in [`Region::app_values`], summed over the shards (a histogram's sum as `f64` bits); a
/// gauge's in [`Region::app_gauges`], summed over the live worker slots.
#[repr(C)]
#[derive(Debug)]
pub struct AppSeries {
    state: AtomicU64,
    kind: AtomicU64,
    /// A histogram head's parts: its buckets (`+Inf` included) and its sum.
    parts: AtomicU64,
    name: Text,
    help: Text,
}

impl AppSeries {
    fn ready(&self, kind: Kind) -> bool {
        self.state.load(Ordering::Acquire) == READY && self.kind.load(Ordering::Relaxed) == kind as u64
    }
}

/// The whole shared region.
#[repr(C)]
#[derive(Debug)]
pub struct Region {
    magic: AtomicU64,
    size: AtomicU64,
    /// The master's counters.
    pub master: MasterStats,
    /// One per live worker.
    pub slots: [Slot; SLOTS],
    /// The request counters, one shard per worker thread.
    pub shards: [Shard; SHARDS],
    /// The app's own series, registered by name.
    pub app: [AppSeries; APP_SERIES],
    /// The counters' values, one row per worker thread (a thread adds to its row only: no
    /// cache line shared between threads that count at once).
    pub app_values: [[AtomicU64; APP_SERIES]; SHARDS],
    /// The gauges' values (two's complement), one row per worker slot, cleared when the slot
    /// is given to a new worker.
    pub app_gauges: [[AtomicU64; APP_SERIES]; SLOTS],
}

/// The value of an app's series, summed.
#[derive(Debug, Clone, PartialEq)]
pub enum AppValue {
    /// A counter's, over the shards.
    Counter(u64),
    /// A gauge's, over the live workers.
    Gauge(i64),
    /// A histogram's.
    Histogram {
        /// Each bucket's upper bound (`+Inf` last) with its count (not cumulative).
        buckets: Vec<(String, u64)>,
        /// The sum of the observations.
        sum: f64,
    },
}

/// An app's series name registered under another kind: that kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindConflict(pub Kind);

/// The fd and slot of a worker's region (`BATON_METRICS=<fd>:<slot>`).
pub const BATON_METRICS: &str = "BATON_METRICS";

impl Region {
    /// A region in this process's memory only (no master, or a master with another layout).
    pub fn private() -> &'static Region {
        let r = sys::private_region();
        r.stamp();
        r
    }

    /// The master's: a shared memory region to hand to workers (a `memfd` on Linux; elsewhere
    /// a file created in `tmp`, the temporary directory, and unlinked at once).
    pub fn create(tmp: &std::path::Path) -> std::io::Result<(OwnedFd, &'static Region)> {
        let (fd, r) = sys::shared_region(tmp)?;
        r.stamp();
        Ok((fd, r))
    }

    /// A worker's: maps the master's region from `fd` (closed afterwards: the mapping stays).
    /// Fails if the region is not one of this layout.
    pub fn map(fd: OwnedFd) -> std::io::Result<&'static Region> {
        Region::attach(fd.as_fd())
    }

    /// Maps the region `fd` holds, which stays open (the master that took over from a
    /// previous image of itself keeps it for its workers). Fails if it is not of this layout.
    pub fn attach(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<&'static Region> {
        let r = sys::map_region(fd)?;
        if r.magic.load(Ordering::Acquire) != MAGIC || r.size.load(Ordering::Acquire) != size_of::<Region>() as u64 {
            return Err(std::io::Error::other("the master's metrics have another layout (a different baton version)"));
        }
        Ok(r)
    }

    fn stamp(&self) {
        self.size.store(size_of::<Region>() as u64, Ordering::Release);
        self.magic.store(MAGIC, Ordering::Release);
    }

    /// Requests answered so far, by listener and class, summed over the shards.
    pub fn requests(&self) -> [[u64; CLASSES]; LISTENERS] {
        let mut out = [[0; CLASSES]; LISTENERS];
        for s in &self.shards {
            for (l, row) in s.requests.iter().enumerate() {
                for (c, v) in row.iter().enumerate() {
                    out[l][c] += v.load(Ordering::Relaxed);
                }
            }
        }
        out
    }

    /// The request duration histogram summed over the shards: (per-bucket counts, sum in ns).
    pub fn request_durations(&self) -> ([u64; 13], u64) {
        let mut b = [0; 13];
        let mut sum = 0;
        for s in &self.shards {
            for (i, v) in s.duration.buckets.iter().enumerate() {
                b[i] += v.load(Ordering::Relaxed);
            }
            sum += s.duration.sum_ns.load(Ordering::Relaxed);
        }
        (b, sum)
    }

    /// A free worker slot (the master, before a spawn).
    pub fn vacant_slot(&self) -> Option<usize> {
        self.slots.iter().position(|s| s.pid.load(Ordering::Acquire) == 0)
    }

    /// Gives slot `i` to worker `pid` (the master, after the spawn).
    pub fn claim_slot(&self, i: usize, pid: u32, generation: u64) {
        let s = &self.slots[i];
        for g in [&s.draining, &s.in_flight, &s.conns.h1, &s.conns.h2, &s.conns.upgraded, &s.conns.tls] {
            g.store(0, Ordering::Relaxed);
        }
        for g in &self.app_gauges[i] {
            g.store(0, Ordering::Relaxed);
        }
        s.generation.store(generation, Ordering::Relaxed);
        s.pid.store(u64::from(pid), Ordering::Release);
    }

    /// Frees the slot of a reaped worker (the master).
    pub fn free_slot(&self, pid: u32) {
        for s in self.slots.iter().filter(|s| s.pid.load(Ordering::Acquire) == u64::from(pid)) {
            s.pid.store(0, Ordering::Release);
        }
    }

    /// The worker slots in use.
    pub fn live_slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().filter(|s| s.pid.load(Ordering::Acquire) != 0)
    }

    /// The index of the app's counter or gauge series `name` (`name{labels}`, at most
    /// [`APP_TEXT`] bytes, as is `help`): the one registered under that name by any process
    /// since the master started, else a free one registered now. `Ok(None)` when all
    /// [`APP_SERIES`] are taken; an error when the name is another kind's. Two processes
    /// registering one name at the same moment may each take one: the readers sum series of
    /// the same name ([`Region::app_metrics`]).
    pub fn app_series(&self, name: &str, help: &str, kind: Kind) -> Result<Option<usize>, KindConflict> {
        assert!(name.len() <= APP_TEXT && help.len() <= APP_TEXT, "an app series' name or help is too long");
        assert!(matches!(kind, Kind::Counter | Kind::Gauge), "a histogram is registered by app_histogram");
        if let Some(i) = self.find(name, kind)? {
            return Ok(Some(i));
        }
        let Some(i) = self.claim(1) else { return Ok(None) };
        self.publish(i, name, help, kind, 0);
        Ok(Some(i))
    }

    /// The head index of the app's histogram series `name` with buckets `bounds` (their upper
    /// bounds as the text format writes them, `+Inf` not included): the one registered by any
    /// process with the same bounds, else a new one. A histogram registered with other bounds
    /// is retired (no longer shown: its counts start over with the new bounds). Its parts
    /// follow the head: bucket `b` at `head + 1 + b` (`+Inf` at `head + 1 + bounds.len()`), the
    /// sum (`f64` bits, added by [`Region::app_add_f64`]) after them. `Ok(None)` when there is
    /// no room for them.
    pub fn app_histogram(&self, name: &str, help: &str, bounds: &[&str]) -> Result<Option<usize>, KindConflict> {
        assert!(name.len() <= APP_TEXT && help.len() <= APP_TEXT, "an app series' name or help is too long");
        let mut parts: Vec<&str> = bounds.to_vec();
        parts.extend(["+Inf", "sum"]);
        if let Some(head) = self.find(name, Kind::Histogram)? {
            let same = self.app[head].parts.load(Ordering::Relaxed) as usize == parts.len()
                && parts.iter().enumerate().all(|(j, p)| self.app[head + 1 + j].name.read() == p.as_bytes());
            if same {
                return Ok(Some(head));
            }
            // Others may have retired it, or found it, meanwhile: they go on counting into it
            // unseen, or retire the new one in turn (bounds that differ again).
            let _ = self.app[head].state.compare_exchange(READY, RETIRED, Ordering::AcqRel, Ordering::Relaxed);
        }
        let Some(head) = self.claim(1 + parts.len()) else { return Ok(None) };
        for (j, p) in parts.iter().enumerate() {
            self.publish(head + 1 + j, p, "", Kind::Part, 0);
        }
        self.publish(head, name, help, Kind::Histogram, parts.len() as u64);
        Ok(Some(head))
    }

    /// The ready series `name` of `kind`, or an error if it is another kind's.
    fn find(&self, name: &str, kind: Kind) -> Result<Option<usize>, KindConflict> {
        for (i, s) in self.app.iter().enumerate() {
            if s.state.load(Ordering::Acquire) != READY || s.name.read() != name.as_bytes() {
                continue;
            }
            match s.kind.load(Ordering::Relaxed) {
                k if k == kind as u64 => return Ok(Some(i)),
                k if k == Kind::Part as u64 => {}
                k if k == Kind::Counter as u64 => return Err(KindConflict(Kind::Counter)),
                k if k == Kind::Gauge as u64 => return Err(KindConflict(Kind::Gauge)),
                _ => return Err(KindConflict(Kind::Histogram)),
            }
        }
        Ok(None)
    }

    /// Claims `n` free entries in a row: the first's index.
    fn claim(&self, n: usize) -> Option<usize> {
        let take =
            |s: &AppSeries| s.state.compare_exchange(FREE, WRITING, Ordering::Acquire, Ordering::Relaxed).is_ok();
        'start: for start in 0..=APP_SERIES.checked_sub(n)? {
            for j in 0..n {
                if !take(&self.app[start + j]) {
                    // Given back: none of them was published.
                    for s in &self.app[start..start + j] {
                        s.state.store(FREE, Ordering::Release);
                    }
                    continue 'start;
                }
            }
            return Some(start);
        }
        None
    }

    fn publish(&self, i: usize, name: &str, help: &str, kind: Kind, parts: u64) {
        let s = &self.app[i];
        s.name.write(name.as_bytes());
        s.help.write(help.as_bytes());
        s.kind.store(kind as u64, Ordering::Relaxed);
        s.parts.store(parts, Ordering::Relaxed);
        s.state.store(READY, Ordering::Release);
    }

    /// Adds `n` to series `i` (from [`Region::app_series`]) in shard `shard`.
    #[inline]
    pub fn app_add(&self, shard: usize, i: usize, n: u64) {
        self.app_values[shard % SHARDS][i].fetch_add(n, Ordering::Relaxed);
    }

    /// Adds `x` to the `f64` of series `i` (a histogram's sum) in shard `shard`.
    #[inline]
    pub fn app_add_f64(&self, shard: usize, i: usize, x: f64) {
        let v = &self.app_values[shard % SHARDS][i];
        let _ = v.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some((f64::from_bits(b) + x).to_bits()));
    }

    /// Counter series `i`'s value, summed over the shards.
    pub fn app_value(&self, i: usize) -> u64 {
        self.app_values.iter().map(|row| row[i].load(Ordering::Relaxed)).fold(0, u64::wrapping_add)
    }

    /// Gauge series `i` of the worker in slot `slot`.
    #[inline]
    pub fn app_gauge(&self, slot: usize, i: usize) -> &AtomicU64 {
        &self.app_gauges[slot][i]
    }

    /// Gauge series `i`'s value, summed over the live workers.
    pub fn app_gauge_sum(&self, i: usize) -> i64 {
        let live = self.slots.iter().zip(&self.app_gauges).filter(|(s, _)| s.pid.load(Ordering::Acquire) != 0);
        live.map(|(_, row)| row[i].load(Ordering::Relaxed) as i64).fold(0, i64::wrapping_add)
    }

    /// The histogram whose head is `head`: its buckets and sum.
    fn app_histogram_value(&self, head: usize) -> AppValue {
        let parts = (self.app[head].parts.load(Ordering::Relaxed) as usize).min(APP_SERIES - 1 - head);
        let mut buckets = Vec::with_capacity(parts);
        let mut sum = 0.0;
        for j in head + 1..=head + parts {
            let name = String::from_utf8_lossy(&self.app[j].name.read()).into_owned();
            if name == "sum" {
                sum = self.app_values.iter().map(|row| f64::from_bits(row[j].load(Ordering::Relaxed))).sum();
            } else {
                buckets.push((name, self.app_value(j)));
            }
        }
        AppValue::Histogram { buckets, sum }
    }

    /// Every registered series of the app's counters, gauges and histograms, in the order
    /// they were registered, as (name, help, value); counters or gauges registered twice
    /// under one name are one, their values summed.
    pub fn app_metrics(&self) -> Vec<(String, String, AppValue)> {
        let mut out: Vec<(String, String, AppValue)> = Vec::new();
        for (i, s) in self.app.iter().enumerate() {
            let value = if s.ready(Kind::Counter) {
                AppValue::Counter(self.app_value(i))
            } else if s.ready(Kind::Gauge) {
                AppValue::Gauge(self.app_gauge_sum(i))
            } else if s.ready(Kind::Histogram) {
                self.app_histogram_value(i)
            } else {
                continue;
            };
            let name = String::from_utf8_lossy(&s.name.read()).into_owned();
            match out.iter_mut().find(|(n, _, _)| *n == name) {
                Some((_, _, seen)) => match (seen, value) {
                    (AppValue::Counter(a), AppValue::Counter(b)) => *a = a.wrapping_add(b),
                    (AppValue::Gauge(a), AppValue::Gauge(b)) => *a = a.wrapping_add(b),
                    // Registered twice at once with the same bounds (with others, two processes
                    // of different versions at the same moment: the first is shown).
                    (AppValue::Histogram { buckets: a, sum: sa }, AppValue::Histogram { buckets: b, sum: sb })
                        if a.iter().map(|(le, _)| le).eq(b.iter().map(|(le, _)| le)) =>
                    {
                        a.iter_mut().zip(b).for_each(|((_, n), (_, m))| *n = n.wrapping_add(m));
                        *sa += sb;
                    }
                    _ => {}
                },
                None => out.push((name, String::from_utf8_lossy(&s.help.read()).into_owned(), value)),
            }
        }
        out
    }
}

/// Resident memory of process `pid` in bytes (Linux `/proc/<pid>/statm`); `None` elsewhere or
/// when it is gone.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * sys::page_size())
}

/// Connections waiting in a listening socket's accept queue, and the queue's limit (Linux
/// `TCP_INFO`); `None` for other sockets.
pub fn listen_backlog(fd: std::os::fd::BorrowedFd<'_>) -> Option<(u32, u32)> {
    sys::listen_queue(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_region_is_shared_through_its_fd() {
        let (fd, master) = Region::create(&std::env::temp_dir()).unwrap();
        let dup = fd.try_clone().unwrap();
        let worker = Region::map(dup).unwrap();
        assert!(!std::ptr::eq(master, worker), "two mappings");
        worker.shards[3].requests[1][1].fetch_add(5, Ordering::Relaxed);
        worker.shards[0].requests[1][1].fetch_add(2, Ordering::Relaxed);
        assert_eq!(master.requests()[1][1], 7);
        let slot = master.vacant_slot().unwrap();
        master.claim_slot(slot, 4242, 3);
        assert_eq!(master.vacant_slot(), Some(slot + 1));
        assert_eq!(worker.slots[slot].generation.load(Ordering::Relaxed), 3);
        master.free_slot(4242);
        assert_eq!(worker.live_slots().count(), 0);
        // Something that is not a region of this layout is refused.
        let (other, r) = Region::create(&std::env::temp_dir()).unwrap();
        r.magic.store(0, Ordering::Relaxed);
        assert!(Region::map(other).is_err());
        assert_eq!(bucket(&REQUEST_BUCKETS, 0.0001), 0);
        assert_eq!(bucket(&REQUEST_BUCKETS, 0.001), 1);
        assert_eq!(bucket(&REQUEST_BUCKETS, 99.0), REQUEST_BUCKETS.len());
    }

    #[test]
    fn app_series_are_registered_once_by_name_across_processes() {
        let (fd, master) = Region::create(&std::env::temp_dir()).unwrap();
        // Two workers' mappings of the one region.
        let one = Region::map(fd.try_clone().unwrap()).unwrap();
        let two = Region::map(fd).unwrap();
        let long = "x".repeat(APP_TEXT - 6) + "_total";
        let a = one.app_series("orders_total", "Orders placed.", Kind::Counter).unwrap().unwrap();
        let b = one.app_series(&long, "", Kind::Counter).unwrap().unwrap();
        one.app_add(0, a, 2);
        one.app_add(SHARDS + 3, b, 1);
        // Found again by name in another mapping (a later worker), not registered twice.
        assert_eq!(two.app_series("orders_total", "another help, ignored", Kind::Counter), Ok(Some(a)));
        two.app_add(5, a, 3);
        assert_eq!(master.app_value(a), 5);
        assert_eq!(
            master.app_metrics(),
            [
                ("orders_total".into(), "Orders placed.".into(), AppValue::Counter(5)),
                (long.clone(), String::new(), AppValue::Counter(1))
            ]
        );
        // Another kind under a taken name: refused, saying whose it is.
        assert_eq!(two.app_series("orders_total", "", Kind::Gauge), Err(KindConflict(Kind::Counter)));
        // Registered twice (two workers at the same moment): one series, the values summed.
        master.claim(1).unwrap();
        master.publish(2, "orders_total", "", Kind::Counter, 0);
        master.app_add(1, 2, 10);
        assert_eq!(master.app_metrics()[0], ("orders_total".into(), "Orders placed.".into(), AppValue::Counter(15)));
        // A series claimed but never finished (its worker killed while writing) is not shown.
        assert_eq!(master.claim(1), Some(3));
        assert_eq!(master.app_metrics().len(), 2);
        // A gauge: each worker's own value, summed over the live workers; a reaped worker's
        // is gone, and a new worker in its slot starts at 0.
        let q = one.app_series("queue_depth{queue=\"mail\"}", "Jobs waiting.", Kind::Gauge).unwrap().unwrap();
        master.claim_slot(0, 101, 1);
        master.claim_slot(1, 102, 2);
        one.app_gauge(0, q).store(7, Ordering::Relaxed);
        two.app_gauge(1, q).fetch_add(-3i64 as u64, Ordering::Relaxed);
        assert_eq!(master.app_gauge_sum(q), 4);
        master.free_slot(101);
        assert_eq!(master.app_metrics()[2].2, AppValue::Gauge(-3));
        master.claim_slot(0, 103, 3);
        assert_eq!(one.app_gauge(0, q).load(Ordering::Relaxed), 0);
        // A histogram: its head, then a part per bucket and its sum, found again with the same
        // bounds; with other bounds the old one is retired and a new one starts.
        let h = one.app_histogram("lat_seconds", "Latency.", &["0.1", "1"]).unwrap().unwrap();
        assert_eq!(h, 5);
        one.app_add(0, h + 1, 2);
        two.app_add(1, h + 3, 1);
        one.app_add_f64(0, h + 4, 0.05);
        one.app_add_f64(3, h + 4, 2.5);
        assert_eq!(two.app_histogram("lat_seconds", "", &["0.1", "1"]), Ok(Some(h)));
        let hist = |buckets: &[(&str, u64)], sum: f64| AppValue::Histogram {
            buckets: buckets.iter().map(|(b, n)| (b.to_string(), *n)).collect(),
            sum,
        };
        assert_eq!(
            master.app_metrics()[3],
            ("lat_seconds".into(), "Latency.".into(), hist(&[("0.1", 2), ("1", 0), ("+Inf", 1)], 2.55))
        );
        let h2 = two.app_histogram("lat_seconds", "", &["0.5"]).unwrap().unwrap();
        assert_eq!(h2, h + 5, "past the old one's head and its 4 parts");
        assert_eq!(
            master.app_metrics()[3],
            ("lat_seconds".into(), String::new(), hist(&[("0.5", 0), ("+Inf", 0)], 0.0))
        );
        assert_eq!(master.app_metrics().len(), 4, "the retired one is not shown");
        // Registered twice at once with the same bounds: one histogram, the counts summed.
        let d = master.claim(4).unwrap();
        for (j, p) in ["0.5", "+Inf", "sum"].iter().enumerate() {
            master.publish(d + 1 + j, p, "", Kind::Part, 0);
        }
        master.publish(d, "lat_seconds", "", Kind::Histogram, 3);
        master.app_add(0, h2 + 1, 1);
        master.app_add(2, d + 1, 2);
        master.app_add(2, d + 2, 1);
        master.app_add_f64(0, d + 3, 1.5);
        assert_eq!(master.app_metrics()[3].2, hist(&[("0.5", 3), ("+Inf", 1)], 1.5));
        // Part names are not series names: a gauge called `sum` is its own.
        assert!(one.app_series("sum", "", Kind::Gauge).unwrap().is_some());
        assert_eq!(one.app_series("lat_seconds", "", Kind::Counter), Err(KindConflict(Kind::Histogram)));
        // Full: none; a histogram needs its parts in a row.
        let used = master.app.iter().filter(|s| s.state.load(Ordering::Relaxed) != FREE).count();
        for i in 0..APP_SERIES - used - 2 {
            assert!(one.app_series(&format!("c{i}_total"), "", Kind::Counter).unwrap().is_some());
        }
        assert_eq!(two.app_histogram("big", "", &["1"]), Ok(None), "2 entries left, 4 needed");
        assert_eq!(master.app.iter().filter(|s| s.state.load(Ordering::Relaxed) == FREE).count(), 2, "given back");
        assert!(two.app_series("one_more_total", "", Kind::Counter).unwrap().is_some());
        assert!(two.app_series("last_total", "", Kind::Counter).unwrap().is_some());
        assert_eq!(two.app_series("none_left_total", "", Kind::Counter), Ok(None));
        assert_eq!(two.app_series("orders_total", "", Kind::Counter), Ok(Some(a)), "a registered one is still found");
    }
}
