//! Internal (public only for `bench -- metrics`). The worker's side of the metrics: counting into the master's shared region
//! (`baton_supervise::metrics`) on the request path, and the Prometheus text exposition
//! (format 0.0.4) served on `--metrics-listen`.

use std::cell::Cell;
use std::fmt::Write as _;
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use baton_supervise::metrics::{self as m, Region, Shard, Slot};

/// Where this worker counts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Metrics {
    region: &'static Region,
    slot: Option<&'static Slot>,
}

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

impl Metrics {
    /// In the master's region when there is one (`shared`), otherwise in a private one.
    pub(crate) fn new(shared: Option<baton_supervise::worker::SharedMetrics>) -> Metrics {
        match shared {
            Some(s) => Metrics { region: s.region, slot: s.slot.map(|i| &s.region.slots[i]) },
            None => {
                let region = Region::private();
                let slot = region.vacant_slot().map(|i| {
                    region.claim_slot(i, std::process::id(), 1);
                    &region.slots[i]
                });
                Metrics { region, slot }
            }
        }
    }

    /// This thread's shard.
    #[inline]
    fn shard(&self) -> &'static Shard {
        &self.region.shards[shard_index()]
    }

    /// The region counted in, and this worker's slot there.
    pub(crate) fn place(&self) -> (&'static Region, Option<usize>) {
        let slot = self.slot.and_then(|s| self.region.slots.iter().position(|o| std::ptr::eq(o, s)));
        (self.region, slot)
    }

    /// A request answered on listener `listener` with `status`, after `took`.
    #[inline]
    pub(crate) fn request_done(&self, listener: usize, status: u16, took: Duration) {
        let shard = self.shard();
        let class = (usize::from(status / 100)).clamp(1, m::CLASSES) - 1;
        shard.requests[listener.min(m::LISTENERS - 1)][class].fetch_add(1, Relaxed);
        let secs = took.as_secs_f64();
        shard.duration.observe(m::bucket(&m::REQUEST_BUCKETS, secs), took.as_nanos() as u64);
    }

    #[inline]
    pub(crate) fn in_flight(&self, up: bool) {
        if let Some(s) = self.slot {
            if up {
                s.in_flight.fetch_add(1, Relaxed);
            } else {
                s.in_flight.fetch_sub(1, Relaxed);
            }
        }
    }

    /// A connection opened (counted as HTTP/1 until it shows otherwise).
    pub(crate) fn conn_opened(&self, tls: bool) {
        if let Some(s) = self.slot {
            s.conns.h1.fetch_add(1, Relaxed);
            if tls {
                s.conns.tls.fetch_add(1, Relaxed);
            }
        }
    }

    /// An HTTP/1 connection turned out to be HTTP/2, or was upgraded.
    pub(crate) fn conn_became(&self, upgraded: bool) {
        if let Some(s) = self.slot {
            s.conns.h1.fetch_sub(1, Relaxed);
            if upgraded { &s.conns.upgraded } else { &s.conns.h2 }.fetch_add(1, Relaxed);
        }
    }

    /// A connection closed; `kind` 0 HTTP/1, 1 HTTP/2, 2 upgraded.
    pub(crate) fn conn_closed(&self, kind: u8, tls: bool) {
        if let Some(s) = self.slot {
            match kind {
                0 => &s.conns.h1,
                1 => &s.conns.h2,
                _ => &s.conns.upgraded,
            }
            .fetch_sub(1, Relaxed);
            if tls {
                s.conns.tls.fetch_sub(1, Relaxed);
            }
        }
    }

    /// This worker drains.
    pub(crate) fn draining(&self) {
        if let Some(s) = self.slot {
            s.draining.store(1, Relaxed);
        }
    }
}

/// This thread's shard of the region's counters (threads take one each in turn).
#[inline]
pub(crate) fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    SHARD.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Relaxed) % m::SHARDS;
            s.set(i);
        }
        i
    })
}

/// What the exposition needs besides the region.
#[derive(Debug)]
pub(crate) struct Exposition {
    pub(crate) metrics: Metrics,
    /// The names of the app's listeners, in order, and a copy of each listening socket for
    /// its accept queue (dropped when the drain starts: see [`Exposition::forget_listeners`]).
    pub(crate) listeners: Vec<String>,
    pub(crate) sockets: Mutex<Vec<Option<OwnedFd>>>,
    pub(crate) version: String,
    pub(crate) binary: String,
    /// When this generation's TLS certificate expires, in seconds since the Unix epoch.
    pub(crate) tls_not_after: Option<i64>,
}

impl Exposition {
    /// Drops the copies of the listening sockets: a draining worker must hold none, or the
    /// kernel would keep queueing connections on a socket nobody accepts from at shutdown.
    pub(crate) fn forget_listeners(&self) {
        if let Ok(mut s) = self.sockets.lock() {
            s.clear();
        }
    }

    /// The Prometheus text format (0.0.4).
    pub(crate) fn render(&self) -> String {
        let r = self.metrics.region;
        let mut o = String::with_capacity(4096);
        let head = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP baton_{name} {help}\n# TYPE baton_{name} {kind}");
        };
        head(&mut o, "requests_total", "counter", "HTTP requests answered, by listener and status class.");
        let req = r.requests();
        let app_listeners = self.listeners.iter().enumerate().take(m::LISTENERS);
        for (l, name) in app_listeners.filter(|(_, n)| *n != baton_supervise::listen::METRICS_LISTENER) {
            for (c, n) in req[l].iter().enumerate() {
                let _ = writeln!(o, "baton_requests_total{{listener=\"{}\",code=\"{}xx\"}} {n}", label(name), c + 1);
            }
        }
        let (buckets, sum_ns) = r.request_durations();
        head(&mut o, "request_duration_seconds", "histogram", "From the request head to the end of the response body.");
        histogram(&mut o, "request_duration_seconds", &m::REQUEST_BUCKETS, &buckets, sum_ns);
        let slots: Vec<&Slot> = r.live_slots().collect();
        let sum = |f: fn(&Slot) -> u64| slots.iter().map(|s| f(s)).sum::<u64>();
        head(&mut o, "requests_in_flight", "gauge", "Requests being answered now, every generation.");
        let _ = writeln!(o, "baton_requests_in_flight {}", sum(|s| s.in_flight.load(Relaxed)));
        head(&mut o, "open_connections", "gauge", "Open client connections, by protocol, every generation.");
        for (p, f) in [
            ("http1", (|s: &Slot| s.conns.h1.load(Relaxed)) as fn(&Slot) -> u64),
            ("http2", |s: &Slot| s.conns.h2.load(Relaxed)),
            ("upgraded", |s: &Slot| s.conns.upgraded.load(Relaxed)),
        ] {
            let _ = writeln!(o, "baton_open_connections{{protocol=\"{p}\"}} {}", sum(f));
        }
        head(&mut o, "open_tls_connections", "gauge", "Of the open connections, those over TLS.");
        let _ = writeln!(o, "baton_open_tls_connections {}", sum(|s| s.conns.tls.load(Relaxed)));
        let ms = &r.master;
        head(&mut o, "generation", "gauge", "The generation serving now.");
        let _ = writeln!(o, "baton_generation {}", ms.generation.load(Relaxed));
        head(
            &mut o,
            "reloads_total",
            "counter",
            "Reloads by outcome (rolled_back: failed in probation after the switch).",
        );
        for (res, v) in
            [("ok", &ms.reloads_ok), ("failed", &ms.reloads_failed), ("rolled_back", &ms.reloads_rolled_back)]
        {
            let _ = writeln!(o, "baton_reloads_total{{result=\"{res}\"}} {}", v.load(Relaxed));
        }
        head(
            &mut o,
            "reload_duration_seconds",
            "histogram",
            "From a reload request to the replaced generation no longer accepting.",
        );
        let rb: Vec<u64> = ms.reload_duration.buckets.iter().map(|b| b.load(Relaxed)).collect();
        histogram(&mut o, "reload_duration_seconds", &m::RELOAD_BUCKETS, &rb, ms.reload_duration.sum_ns.load(Relaxed));
        head(&mut o, "worker_starts_total", "counter", "Workers started, for any reason.");
        let _ = writeln!(o, "baton_worker_starts_total {}", ms.worker_starts.load(Relaxed));
        head(
            &mut o,
            "worker_crashes_total",
            "counter",
            "Serving workers that died unexpectedly or were killed by the watchdog.",
        );
        let _ = writeln!(o, "baton_worker_crashes_total {}", ms.worker_crashes.load(Relaxed));
        let draining: Vec<&&Slot> = slots.iter().filter(|s| s.draining.load(Relaxed) == 1).collect();
        head(&mut o, "draining_generations", "gauge", "Generations draining now.");
        let _ = writeln!(o, "baton_draining_generations {}", draining.len());
        head(&mut o, "draining_connections", "gauge", "Open connections of the draining generations.");
        let open = |s: &Slot| s.conns.h1.load(Relaxed) + s.conns.h2.load(Relaxed) + s.conns.upgraded.load(Relaxed);
        let _ = writeln!(o, "baton_draining_connections {}", draining.iter().map(|s| open(s)).sum::<u64>());
        if let Ok(sockets) = self.sockets.lock() {
            let queues: Vec<(&String, (u32, u32))> = self
                .listeners
                .iter()
                .zip(sockets.iter())
                .filter_map(|(n, fd)| Some((n, m::listen_backlog(std::os::fd::AsFd::as_fd(fd.as_ref()?))?)))
                .collect();
            if !queues.is_empty() {
                head(&mut o, "listen_backlog", "gauge", "Connections waiting in a TCP listener's accept queue.");
                for (n, (q, _)) in &queues {
                    let _ = writeln!(o, "baton_listen_backlog{{listener=\"{}\"}} {q}", label(n));
                }
                head(&mut o, "listen_backlog_limit", "gauge", "The accept queue's limit of a TCP listener.");
                for (n, (_, max)) in &queues {
                    let _ = writeln!(o, "baton_listen_backlog_limit{{listener=\"{}\"}} {max}", label(n));
                }
            }
        }
        let master = u32::try_from(ms.master_pid.load(Relaxed)).ok().filter(|p| *p != 0);
        let workers: u64 =
            slots.iter().filter_map(|s| m::resident_bytes(u32::try_from(s.pid.load(Relaxed)).ok()?)).sum();
        head(&mut o, "resident_memory_bytes", "gauge", "Resident memory by role (workers summed).");
        if let Some(b) = master.and_then(m::resident_bytes) {
            let _ = writeln!(o, "baton_resident_memory_bytes{{role=\"master\"}} {b}");
        }
        let _ = writeln!(o, "baton_resident_memory_bytes{{role=\"worker\"}} {workers}");
        head(&mut o, "build_info", "gauge", "The version and binary of the generation answering this scrape.");
        let _ = writeln!(
            o,
            "baton_build_info{{version=\"{}\",binary=\"{}\"}} 1",
            label(&self.version),
            label(&self.binary)
        );
        if let Some(t) = self.tls_not_after {
            head(
                &mut o,
                "tls_certificate_expiry_timestamp_seconds",
                "gauge",
                "When the TLS certificate of the generation answering this scrape expires, in seconds since the Unix epoch.",
            );
            let _ = writeln!(o, "baton_tls_certificate_expiry_timestamp_seconds {t}");
        }
        let start = ms.start_time.load(Relaxed);
        if start != 0 {
            head(&mut o, "start_time_seconds", "gauge", "When the master started, in seconds since the Unix epoch.");
            let _ = writeln!(o, "baton_start_time_seconds {start}");
        }
        crate::app_metrics::render(&mut o, crate::app_metrics::region());
        o
    }
}

/// What serves `--metrics-listen`: `GET /metrics` (any other path: 404).
pub(crate) fn service(exposition: std::sync::Arc<Exposition>) -> crate::AppService {
    use axum::routing::get;
    let router = axum::Router::new().route(
        "/metrics",
        get(move || {
            let e = exposition.clone();
            async move { ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], e.render()) }
        }),
    );
    crate::AppService::router(router)
}

/// A histogram's series from per-bucket counts (the last is `+Inf`).
fn histogram(o: &mut String, name: &str, bounds: &[f64], counts: &[u64], sum_ns: u64) {
    let mut total = 0;
    for (i, c) in counts.iter().enumerate() {
        total += c;
        match bounds.get(i) {
            Some(b) => {
                let _ = writeln!(o, "baton_{name}_bucket{{le=\"{b}\"}} {total}");
            }
            None => {
                let _ = writeln!(o, "baton_{name}_bucket{{le=\"+Inf\"}} {total}");
            }
        }
    }
    let _ = writeln!(o, "baton_{name}_sum {}", sum_ns as f64 / 1e9);
    let _ = writeln!(o, "baton_{name}_count {total}");
}

/// A label value escaped as the text format wants (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// For `bench -- metrics`: the time `n` requests' counting takes on this thread (the request
/// path's whole metrics work: in flight up and down, the counter, the histogram).
#[doc(hidden)]
pub fn time_counting(n: u32) -> Duration {
    let m = Metrics::new(None);
    let took = Duration::from_micros(250);
    let start = std::time::Instant::now();
    for i in 0..n {
        m.in_flight(true);
        m.request_done(std::hint::black_box(0), std::hint::black_box(200 + (i % 2) as u16), took);
        m.in_flight(false);
    }
    start.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_counts_and_formats() {
        let metrics = Metrics::new(None);
        metrics.request_done(0, 200, Duration::from_micros(300));
        metrics.request_done(0, 503, Duration::from_secs(20));
        metrics.request_done(1, 404, Duration::from_millis(3));
        let e = Exposition {
            metrics,
            listeners: vec!["http".into(), "admin".into()],
            sockets: Mutex::new(Vec::new()),
            version: "1.0 \"beta\"".into(),
            binary: "/bin/app".into(),
            tls_not_after: Some(4_318_312_413),
        };
        let text = e.render();
        assert!(text.contains("baton_requests_total{listener=\"http\",code=\"2xx\"} 1\n"), "{text}");
        assert!(text.contains("baton_requests_total{listener=\"http\",code=\"5xx\"} 1\n"), "{text}");
        assert!(text.contains("baton_requests_total{listener=\"admin\",code=\"4xx\"} 1\n"), "{text}");
        assert!(text.contains("baton_request_duration_seconds_bucket{le=\"0.0005\"} 1\n"), "{text}");
        assert!(text.contains("baton_request_duration_seconds_bucket{le=\"0.005\"} 2\n"), "{text}");
        assert!(text.contains("baton_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("baton_request_duration_seconds_count 3\n"), "{text}");
        assert!(text.contains("baton_build_info{version=\"1.0 \\\"beta\\\"\",binary=\"/bin/app\"} 1\n"), "{text}");
        assert!(text.contains("\nbaton_tls_certificate_expiry_timestamp_seconds 4318312413\n"), "{text}");
        // Every series has its HELP and TYPE.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let base = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
            assert!(text.contains(&format!("# TYPE {base} ")), "no TYPE for {name}");
        }
    }
}
