//! The app's own counters, gauges and histograms, served with baton's metrics on
//! `--metrics-listen` and kept, as baton's own are, across reloads and crashes.
//!
//! ```no_run
//! use std::sync::LazyLock;
//!
//! use baton::Counter;
//!
//! static ORDERS: LazyLock<Counter> = LazyLock::new(|| Counter::new("shop_orders_total", "Orders placed."));
//! static DECLINED: LazyLock<Counter> = LazyLock::new(|| {
//!     Counter::with_labels("shop_payments_total", "Payments by outcome.", &[("outcome", "declined")])
//! });
//!
//! async fn order() -> &'static str {
//!     ORDERS.inc();
//!     "ordered"
//! }
//!
//! // A gauge: each worker's own value; served summed over the live workers.
//! static QUEUED: LazyLock<baton::Gauge> = LazyLock::new(|| baton::Gauge::new("shop_mails_queued", "Mails waiting."));
//! # fn enqueue() { QUEUED.inc(); }
//! # fn sent() { QUEUED.dec(); }
//!
//! // A histogram: its buckets' upper bounds (here the usual ones for seconds).
//! static CHECKOUT: LazyLock<baton::Histogram> = LazyLock::new(|| {
//!     baton::Histogram::new("shop_checkout_seconds", "Checkout time.", baton::Histogram::SECONDS)
//! });
//! # fn checkout(took: std::time::Duration) { CHECKOUT.observe_duration(took); }
//! ```
//!
//! A counter lives in the master's shared memory, as the request counters do: every worker
//! adds to the same count, whichever generation it belongs to, so a reload or a crash restart
//! never sets it back (a counter of a process's own would fall to 0 at each deploy, and during
//! a reload two generations would answer scrapes with different values). A series is found by
//! its name and labels: a new generation goes on counting where the old one was. Counting is
//! one relaxed atomic add in a row of this thread's own.
//!
//! A [`Gauge`] is a worker's own value (what it holds: a queue, a pool's connections),
//! cleared when its worker exits: the exposition sums the live workers' values, so while a
//! generation drains its gauges still count, and a crashed worker's are gone. Fit for
//! quantities that add up across processes.
//!
//! A [`Histogram`] is kept as counters are (its buckets and its sum); a version that changes
//! its buckets starts it over.
//!
//! One made outside a worker (an app's tests calling its router, or code that runs before
//! [`crate::App::serve`]) counts in this process's memory only. The region holds [`APP_SERIES`]
//! (256) entries, a counter or a gauge taking one and a histogram its buckets and 3 more; past
//! them a counter or a gauge counts in this process only and a histogram counts nothing, and a
//! warning says so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use baton_supervise::metrics::{APP_SERIES, APP_TEXT, AppValue, Kind, KindConflict, Region};

/// Where the app's series are: the worker's region and its slot there (for gauges) once it
/// serves (see [`serve_from`]).
static REGION: OnceLock<(&'static Region, Option<usize>)> = OnceLock::new();

/// The worker, before the app's factory runs: its series go to `region` (the master's shared
/// one under a master), its gauges to slot `slot`. Those made earlier stay in this process.
pub(crate) fn serve_from(region: &'static Region, slot: Option<usize>) {
    if REGION.set((region, slot)).is_err() && !std::ptr::eq(REGION.get().expect("set").0, region) {
        tracing::warn!(
            "baton::Counter, Gauge or Histogram made before the worker started: the app's metrics count in this process only (not kept across reloads)"
        );
    }
}

/// The region the app's series count in (and the exposition reads), and this process's slot.
fn place() -> (&'static Region, Option<usize>) {
    // Outside a worker: a private region with a slot, as a worker without a master counts in.
    *REGION.get_or_init(|| crate::metrics::Metrics::new(None).place())
}

/// The region the app's series count in (and the exposition reads).
pub(crate) fn region() -> &'static Region {
    place().0
}

/// The region's series `series` of `kind` (for a histogram: its head, its parts named by
/// `bounds`), or `None` (logged) when there is no room.
///
/// # Panics
/// If the name is another kind's, registered since the master started.
fn register(kind: Kind, series: &str, help: &str, bounds: &[String]) -> Option<(&'static Region, usize)> {
    let region = region();
    let what = |k: Kind| match k {
        Kind::Counter => "Counter",
        Kind::Gauge => "Gauge",
        _ => "Histogram",
    };
    let i = match kind {
        Kind::Histogram => region.app_histogram(series, help, &bounds.iter().map(String::as_str).collect::<Vec<_>>()),
        _ => region.app_series(series, help, kind),
    };
    let i = i.unwrap_or_else(|KindConflict(other)| {
        panic!("baton::{} {series}: the name is a {} of this app's (since the master started)", what(kind), what(other))
    });
    if i.is_none() {
        let fate = match kind {
            Kind::Histogram => "its observations are not counted",
            _ => "it counts in this process only (not served, not kept across reloads)",
        };
        tracing::warn!("baton::{} {series}: the {APP_SERIES} entries are taken; {fate}", what(kind));
    }
    Some((region, i?))
}

/// A counter of the app's own: a Prometheus counter (one series: a name and its labels),
/// served on `--metrics-listen` with baton's metrics and kept across reloads and crashes.
/// See [the module](crate::app_metrics). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Counter {
    cell: Cell,
}

#[derive(Debug, Clone)]
enum Cell {
    /// A series of the region: its index.
    Shared(&'static Region, usize),
    /// The region's series are all taken: this process's only.
    Local(Arc<AtomicU64>),
}

impl Counter {
    /// A counter without labels: `name` ends in `_total` (`shop_orders_total`); `help` says
    /// what it counts (at most 128 bytes).
    ///
    /// # Panics
    /// If `name` is not a counter's name (letters, digits, `_` and `:`, not starting with a
    /// digit, ending in `_total`, not starting with `baton_`), or the series or the help is
    /// longer than 128 bytes: the message says which.
    pub fn new(name: &str, help: &str) -> Counter {
        Counter::with_labels(name, help, &[])
    }

    /// A counter's series with labels (`&[("outcome", "declined")]`), escaped as the text
    /// format wants. Each set of label values is a counter of its own; they share `name` and
    /// its help.
    ///
    /// # Panics
    /// As [`Counter::new`], and if a label's name is not one (letters, digits and `_`, not
    /// starting with a digit or `__`) or is given twice.
    pub fn with_labels(name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        let series =
            series(name, help, labels, Kind::Counter).unwrap_or_else(|e| panic!("baton::Counter {name:?}: {e}"));
        let cell = match register(Kind::Counter, &series, help, &[]) {
            Some((region, i)) => Cell::Shared(region, i),
            None => Cell::Local(Arc::default()),
        };
        Counter { cell }
    }

    /// Adds 1.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        match &self.cell {
            Cell::Shared(region, i) => region.app_add(crate::metrics::shard_index(), *i, n),
            Cell::Local(v) => {
                v.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// The count: every generation's, since the master started.
    pub fn get(&self) -> u64 {
        match &self.cell {
            Cell::Shared(region, i) => region.app_value(*i),
            Cell::Local(v) => v.load(Ordering::Relaxed),
        }
    }
}

/// A gauge of the app's own: a value each worker sets for itself (what it holds now), served
/// on `--metrics-listen` summed over the live workers, every generation's. See
/// [the module](crate::app_metrics). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gauge {
    cell: GaugeCell,
}

#[derive(Debug, Clone)]
enum GaugeCell {
    /// This worker's value of a series of the region.
    Shared(&'static AtomicU64),
    /// The region's series are all taken, or this worker has no slot (more than
    /// [`SLOTS`](baton_supervise::metrics::SLOTS) workers at once): this process's only.
    Local(Arc<AtomicU64>),
}

impl Gauge {
    /// A gauge without labels: `name` does not end in `_total` (a counter's); `help` says
    /// what it measures (at most 128 bytes).
    ///
    /// # Panics
    /// If `name` is not a gauge's name (letters, digits, `_` and `:`, not starting with a
    /// digit, not ending in `_total`, not starting with `baton_`), or the series or the help
    /// is longer than 128 bytes: the message says which.
    pub fn new(name: &str, help: &str) -> Gauge {
        Gauge::with_labels(name, help, &[])
    }

    /// A gauge's series with labels, as [`Counter::with_labels`].
    ///
    /// # Panics
    /// As [`Gauge::new`] and [`Counter::with_labels`].
    pub fn with_labels(name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        let series = series(name, help, labels, Kind::Gauge).unwrap_or_else(|e| panic!("baton::Gauge {name:?}: {e}"));
        let cell = match (register(Kind::Gauge, &series, help, &[]), place().1) {
            (Some((region, i)), Some(slot)) => GaugeCell::Shared(region.app_gauge(slot, i)),
            _ => GaugeCell::Local(Arc::default()),
        };
        Gauge { cell }
    }

    /// Sets this worker's value.
    pub fn set(&self, v: i64) {
        self.value().store(v as u64, Ordering::Relaxed);
    }

    /// Adds `d` (negative: subtracts) to this worker's value.
    #[inline]
    pub fn add(&self, d: i64) {
        self.value().fetch_add(d as u64, Ordering::Relaxed);
    }

    /// Adds 1.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts 1.
    #[inline]
    pub fn dec(&self) {
        self.add(-1);
    }

    /// This worker's value (the exposition's is the sum over the live workers).
    pub fn get(&self) -> i64 {
        self.value().load(Ordering::Relaxed) as i64
    }

    fn value(&self) -> &AtomicU64 {
        match &self.cell {
            GaugeCell::Shared(v) => v,
            GaugeCell::Local(v) => v,
        }
    }
}

/// A histogram of the app's own: observations counted in buckets, served on
/// `--metrics-listen` and kept across reloads and crashes, as [`Counter`]s are. See
/// [the module](crate::app_metrics). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Histogram {
    cell: Option<(&'static Region, usize, Arc<[f64]>)>,
}

impl Histogram {
    /// Buckets' upper bounds most latencies fit, in seconds (the Prometheus clients' own).
    pub const SECONDS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

    /// A histogram without labels: `bounds` are its buckets' upper bounds, increasing
    /// (`+Inf` is added; [`Histogram::SECONDS`] for latencies in seconds). A new version may
    /// change them: the histogram then starts over with the new buckets.
    ///
    /// # Panics
    /// If `name` is not a histogram's name (letters, digits, `_` and `:`, not starting with a
    /// digit, not ending in `_total`, `_bucket`, `_sum` or `_count`, not starting with
    /// `baton_`); if `bounds` are not 1 to 30 finite, increasing numbers; if the series or the
    /// help is longer than 128 bytes: the message says which.
    pub fn new(name: &str, help: &str, bounds: &[f64]) -> Histogram {
        Histogram::with_labels(name, help, &[], bounds)
    }

    /// A histogram's series with labels, as [`Counter::with_labels`] (`le` is taken).
    ///
    /// # Panics
    /// As [`Histogram::new`] and [`Counter::with_labels`].
    pub fn with_labels(name: &str, help: &str, labels: &[(&str, &str)], bounds: &[f64]) -> Histogram {
        let fail = |e: String| -> ! { panic!("baton::Histogram {name:?}: {e}") };
        let series = series(name, help, labels, Kind::Histogram).unwrap_or_else(|e| fail(e));
        if bounds.is_empty() || bounds.len() > 30 {
            fail(format!("{} bucket bounds: give 1 to 30", bounds.len()));
        }
        if !bounds.iter().all(|b| b.is_finite()) || !bounds.windows(2).all(|w| w[0] < w[1]) {
            fail(format!("the bucket bounds {bounds:?} are not finite and increasing"));
        }
        let texts: Vec<String> = bounds.iter().map(|b| b.to_string()).collect();
        let cell = register(Kind::Histogram, &series, help, &texts).map(|(r, head)| (r, head, bounds.into()));
        Histogram { cell }
    }

    /// Counts `v` (in the first bucket whose bound is at least `v`) and adds it to the sum.
    /// A NaN is not counted.
    #[inline]
    pub fn observe(&self, v: f64) {
        let Some((region, head, bounds)) = &self.cell else { return };
        if v.is_nan() {
            return;
        }
        let shard = crate::metrics::shard_index();
        let bucket = bounds.partition_point(|b| *b < v);
        region.app_add(shard, head + 1 + bucket, 1);
        region.app_add_f64(shard, head + 2 + bounds.len(), v);
    }

    /// Counts a duration, in seconds.
    #[inline]
    pub fn observe_duration(&self, d: std::time::Duration) {
        self.observe(d.as_secs_f64());
    }
}

/// The series' name as the text format writes it (`name{label="value"}`), or why not;
/// a counter's name ends in `_total`, a gauge's or a histogram's does not.
fn series(name: &str, help: &str, labels: &[(&str, &str)], kind: Kind) -> Result<String, String> {
    let word = |s: &str, colon: bool| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    };
    if !word(name, true) {
        return Err("not a metric name (letters, digits, `_` and `:`, not starting with a digit)".into());
    }
    match kind {
        Kind::Counter if !name.ends_with("_total") => return Err("a counter's name ends in `_total`".into()),
        Kind::Gauge if name.ends_with("_total") => {
            return Err("a gauge's name does not end in `_total` (a counter's does)".into());
        }
        Kind::Histogram => {
            if let Some(end) = ["_total", "_bucket", "_sum", "_count"].iter().find(|e| name.ends_with(*e)) {
                return Err(format!(
                    "a histogram's name does not end in `{end}` (its series add `_bucket`, `_sum` and `_count`)"
                ));
            }
            if labels.iter().any(|(k, _)| *k == "le") {
                return Err("the label `le` is the histogram's own (its buckets)".into());
            }
        }
        _ => {}
    }
    if name.starts_with("baton_") {
        return Err("names starting with `baton_` are baton's own".into());
    }
    let mut out = name.to_owned();
    for (i, (k, v)) in labels.iter().enumerate() {
        if !word(k, false) || k.starts_with("__") {
            return Err(format!(
                "{k:?} is not a label name (letters, digits and `_`, not starting with a digit or `__`)"
            ));
        }
        if labels[..i].iter().any(|(seen, _)| seen == k) {
            return Err(format!("the label {k:?} is given twice"));
        }
        out.push(if i == 0 { '{' } else { ',' });
        let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        out.push_str(&format!("{k}=\"{v}\""));
    }
    if !labels.is_empty() {
        out.push('}');
    }
    if out.len() > APP_TEXT {
        return Err(format!("the series {out:?} is longer than {APP_TEXT} bytes"));
    }
    if help.len() > APP_TEXT {
        return Err(format!("the help is longer than {APP_TEXT} bytes"));
    }
    Ok(out)
}

/// The app's counters, gauges and histograms in the text format: one family per name
/// (`# HELP`, `# TYPE`), its series in the order they were first registered.
pub(crate) fn render(o: &mut String, region: &Region) {
    use std::fmt::Write as _;
    let all = region.app_metrics();
    // `name{labels}`: the name, and the labels without their braces.
    let split = |series: &str| match series.split_once('{') {
        Some((name, labels)) => (name.to_owned(), labels.trim_end_matches('}').to_owned()),
        None => (series.to_owned(), String::new()),
    };
    let mut families: Vec<String> = Vec::new();
    for (s, _, _) in &all {
        let (name, _) = split(s);
        if !families.contains(&name) {
            families.push(name);
        }
    }
    for family in families {
        let members: Vec<&(String, String, AppValue)> = all.iter().filter(|(s, _, _)| split(s).0 == family).collect();
        if let Some((_, help, _)) = members.iter().find(|(_, h, _)| !h.is_empty()) {
            let _ = writeln!(o, "# HELP {family} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        }
        let kind = match members[0].2 {
            AppValue::Counter(_) => "counter",
            AppValue::Gauge(_) => "gauge",
            AppValue::Histogram { .. } => "histogram",
        };
        let _ = writeln!(o, "# TYPE {family} {kind}");
        for (s, _, v) in members {
            let _ = match v {
                AppValue::Counter(n) => writeln!(o, "{s} {n}"),
                AppValue::Gauge(n) => writeln!(o, "{s} {n}"),
                AppValue::Histogram { buckets, sum } => {
                    let (_, labels) = split(s);
                    let (with, bare) = if labels.is_empty() {
                        (String::new(), String::new())
                    } else {
                        (format!("{labels},"), format!("{{{labels}}}"))
                    };
                    let mut total = 0u64;
                    for (le, n) in buckets {
                        total = total.wrapping_add(*n);
                        let _ = writeln!(o, "{family}_bucket{{{with}le=\"{le}\"}} {total}");
                    }
                    let _ = writeln!(o, "{family}_sum{bare} {}", float(*sum));
                    writeln!(o, "{family}_count{bare} {total}")
                }
            };
        }
    }
}

/// A number as the text format writes it (`+Inf`, `-Inf`, `NaN`).
fn float(x: f64) -> String {
    match x {
        x if x.is_nan() => "NaN".into(),
        f64::INFINITY => "+Inf".into(),
        f64::NEG_INFINITY => "-Inf".into(),
        x => x.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn names_labels_and_their_errors() {
        assert_eq!(series("shop_orders_total", "", &[], Kind::Counter).unwrap(), "shop_orders_total");
        assert_eq!(
            series("a:b_total", "", &[("outcome", "de\"cl\\ined\n"), ("kind", "card")], Kind::Counter).unwrap(),
            r#"a:b_total{outcome="de\"cl\\ined\n",kind="card"}"#
        );
        let err = |name: &str, labels: &[(&str, &str)]| series(name, "", labels, Kind::Counter).unwrap_err();
        assert!(err("2xx_total", &[]).contains("not starting with a digit"));
        assert!(err("orders-total", &[]).contains("not a metric name"));
        assert!(err("", &[]).contains("not a metric name"));
        assert!(err("orders", &[]).contains("ends in `_total`"));
        assert!(err("baton_requests_total", &[]).contains("baton's own"));
        assert!(err("x_total", &[("a:b", "v")]).contains("\"a:b\" is not a label name"));
        assert!(err("x_total", &[("__name__", "v")]).contains("is not a label name"));
        assert!(err("x_total", &[("k", "1"), ("k", "2")]).contains("given twice"));
        assert!(err(&format!("{}_total", "x".repeat(APP_TEXT)), &[]).contains("longer than 128 bytes"));
        assert!(series("x_total", &"h".repeat(129), &[], Kind::Counter).unwrap_err().contains("help is longer"));
        assert_eq!(series("queue_depth", "", &[("q", "mail")], Kind::Gauge).unwrap(), "queue_depth{q=\"mail\"}");
        assert!(
            series("queue_total", "", &[], Kind::Gauge)
                .unwrap_err()
                .contains("a gauge's name does not end in `_total`")
        );
        let hist = |name: &str, labels: &[(&str, &str)]| series(name, "", labels, Kind::Histogram);
        assert!(hist("lat_count", &[]).unwrap_err().contains("does not end in `_count`"));
        assert!(hist("lat_total", &[]).unwrap_err().contains("does not end in `_total`"));
        assert!(hist("lat", &[("le", "1")]).unwrap_err().contains("`le` is the histogram's own"));
        let panics = |f: fn() -> Histogram| {
            let e = std::panic::catch_unwind(f).unwrap_err();
            e.downcast_ref::<String>().unwrap().clone()
        };
        assert!(panics(|| Histogram::new("h_a", "", &[])).ends_with("0 bucket bounds: give 1 to 30"));
        assert!(panics(|| Histogram::new("h_b", "", &[1.0, 0.5])).contains("are not finite and increasing"));
        assert!(panics(|| Histogram::new("h_c", "", &[1.0, f64::INFINITY])).contains("are not finite"));
        assert!(panics(|| Histogram::new("h_d", "", &[0.1; 31])).contains("31 bucket bounds"));
        // A name another kind has: refused, naming it.
        Gauge::new("test_taken", "");
        let e = panics(|| Histogram::new("test_taken", "", &[1.0]));
        assert_eq!(e, "baton::Histogram test_taken: the name is a Gauge of this app's (since the master started)");
        let e = std::panic::catch_unwind(|| Gauge::new("baton_queue", "")).unwrap_err();
        assert!(e.downcast_ref::<String>().unwrap().starts_with("baton::Gauge \"baton_queue\": names starting"));
        let long = "v".repeat(APP_TEXT);
        let e = std::panic::catch_unwind(|| Counter::with_labels("x_total", "", &[("k", &long)])).unwrap_err();
        assert!(e.downcast_ref::<String>().unwrap().starts_with("baton::Counter \"x_total\": the series"));
    }

    #[test]
    fn counters_and_gauges_count_and_render_by_family() {
        // Outside a worker: this process's region (the one the exposition reads).
        let orders = Counter::new("test_orders_total", "Orders\nplaced.");
        let declined = Counter::with_labels("test_payments_total", "Payments.", &[("outcome", "declined")]);
        let ok = Counter::with_labels("test_payments_total", "", &[("outcome", "ok")]);
        orders.inc();
        orders.add(4);
        std::thread::spawn({
            let orders = orders.clone();
            move || orders.inc()
        })
        .join()
        .unwrap();
        declined.inc();
        ok.add(7);
        // The same series again (a later generation's, or a second handle): one count.
        assert_eq!(Counter::new("test_orders_total", "").get(), 6);
        assert_eq!((orders.get(), declined.get(), ok.get()), (6, 1, 7));
        let mut text = String::new();
        render(&mut text, region());
        // (Other tests' series may come between families: each is checked whole on its own.)
        let want = "# HELP test_orders_total Orders\\nplaced.\n# TYPE test_orders_total counter\ntest_orders_total 6\n";
        assert!(text.contains(want), "{text}");
        let want = "# HELP test_payments_total Payments.\n# TYPE test_payments_total counter\n\
                    test_payments_total{outcome=\"declined\"} 1\ntest_payments_total{outcome=\"ok\"} 7\n";
        assert!(text.contains(want), "{text}");
        // A gauge: this process's value (it has a slot of its region), negative allowed.
        let queued = Gauge::with_labels("test_queued", "Jobs waiting.", &[("queue", "mail")]);
        queued.set(5);
        queued.dec();
        queued.add(-10);
        assert_eq!(queued.get(), -6);
        assert_eq!(Gauge::with_labels("test_queued", "", &[("queue", "mail")]).get(), -6, "the same series");
        let mut text = String::new();
        render(&mut text, region());
        let want = "# HELP test_queued Jobs waiting.\n# TYPE test_queued gauge\ntest_queued{queue=\"mail\"} -6\n";
        assert!(text.contains(want), "{text}");
        // Histograms: cumulative buckets, `+Inf`, sum and count, with labels or without.
        let lat = Histogram::with_labels("test_latency_seconds", "Latency.", &[("route", "/a")], &[0.1, 1.0]);
        lat.observe(0.0625);
        lat.observe_duration(Duration::from_millis(500));
        lat.observe(4.0);
        lat.observe(f64::NAN);
        Histogram::new("test_size_bytes", "", &[1024.0]).observe(10.0);
        let mut text = String::new();
        render(&mut text, region());
        let want = "# HELP test_latency_seconds Latency.\n# TYPE test_latency_seconds histogram\n\
                    test_latency_seconds_bucket{route=\"/a\",le=\"0.1\"} 1\n\
                    test_latency_seconds_bucket{route=\"/a\",le=\"1\"} 2\n\
                    test_latency_seconds_bucket{route=\"/a\",le=\"+Inf\"} 3\n\
                    test_latency_seconds_sum{route=\"/a\"} 4.5625\n\
                    test_latency_seconds_count{route=\"/a\"} 3\n";
        assert!(text.contains(want), "{text}");
        let want = "# TYPE test_size_bytes histogram\n\
                    test_size_bytes_bucket{le=\"1024\"} 1\ntest_size_bytes_bucket{le=\"+Inf\"} 1\n\
                    test_size_bytes_sum 10\ntest_size_bytes_count 1\n";
        assert!(text.contains(want), "{text}");
        // The same histogram again (a later generation's): counts on; other bounds: starts over.
        Histogram::with_labels("test_latency_seconds", "", &[("route", "/a")], &[0.1, 1.0]).observe(0.01);
        let mut text = String::new();
        render(&mut text, region());
        assert!(text.contains("test_latency_seconds_count{route=\"/a\"} 4\n"), "{text}");
        Histogram::with_labels("test_latency_seconds", "", &[("route", "/a")], &[0.5]).observe(0.01);
        let mut text = String::new();
        render(&mut text, region());
        assert!(text.contains("test_latency_seconds_bucket{route=\"/a\",le=\"0.5\"} 1\n"), "{text}");
        assert!(text.contains("test_latency_seconds_count{route=\"/a\"} 1\n"), "{text}");
        assert!(!text.contains("le=\"0.1\""), "the old buckets retired: {text}");
    }
}
