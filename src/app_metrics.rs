//! The app's own counters and gauges, served with baton's metrics on `--metrics-listen` and
//! kept, as baton's own are, across reloads and crashes.
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
//! A counter or gauge made outside a worker (an app's tests calling its router, or code that
//! runs before [`crate::App::serve`]) counts in this process's memory only. The region holds
//! [`APP_SERIES`] (256) series, counters and gauges together;
//! one more counts in this process only, and a warning says so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use baton_supervise::metrics::{APP_SERIES, APP_TEXT, AppValue, Region};

/// Where the app's series are: the worker's region and its slot there (for gauges) once it
/// serves (see [`serve_from`]).
static REGION: OnceLock<(&'static Region, Option<usize>)> = OnceLock::new();

/// The worker, before the app's factory runs: its series go to `region` (the master's shared
/// one under a master), its gauges to slot `slot`. Those made earlier stay in this process.
pub(crate) fn serve_from(region: &'static Region, slot: Option<usize>) {
    if REGION.set((region, slot)).is_err() && !std::ptr::eq(REGION.get().expect("set").0, region) {
        tracing::warn!(
            "baton::Counter or Gauge made before the worker started: the app's metrics count in this process only (not kept across reloads)"
        );
    }
}

/// The region the app's series count in (and the exposition reads), and this process's slot.
fn place() -> (&'static Region, Option<usize>) {
    *REGION.get_or_init(|| {
        let r = Region::private();
        let slot = r.vacant_slot();
        if let Some(i) = slot {
            r.claim_slot(i, std::process::id(), 1);
        }
        (r, slot)
    })
}

/// The region the app's series count in (and the exposition reads).
pub(crate) fn region() -> &'static Region {
    place().0
}

/// The region's series `series`, or `None` (logged) when all are taken.
fn register(kind: &str, series: &str, help: &str) -> Option<(&'static Region, usize)> {
    let region = region();
    let i = region.app_series(series, help);
    if i.is_none() {
        tracing::warn!(
            "baton::{kind} {series}: all {APP_SERIES} series are taken; it counts in this process only (not served, not kept across reloads)"
        );
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
        let series = series(name, help, labels, true).unwrap_or_else(|e| panic!("baton::Counter {name:?}: {e}"));
        let cell = match register("Counter", &series, help) {
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
        let series = series(name, help, labels, false).unwrap_or_else(|e| panic!("baton::Gauge {name:?}: {e}"));
        let cell = match (register("Gauge", &series, help), place().1) {
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

/// The series' name as the text format writes it (`name{label="value"}`), or why not;
/// `counter`: a counter's (its name ends in `_total`), else a gauge's (it does not).
fn series(name: &str, help: &str, labels: &[(&str, &str)], counter: bool) -> Result<String, String> {
    let word = |s: &str, colon: bool| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    };
    if !word(name, true) {
        return Err("not a metric name (letters, digits, `_` and `:`, not starting with a digit)".into());
    }
    if counter && !name.ends_with("_total") {
        return Err("a counter's name ends in `_total`".into());
    }
    if !counter && name.ends_with("_total") {
        return Err("a gauge's name does not end in `_total` (a counter's does)".into());
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

/// The app's counters and gauges in the text format: one family per name (`# HELP`,
/// `# TYPE`), its series in the order they were first registered.
pub(crate) fn render(o: &mut String, region: &Region) {
    use std::fmt::Write as _;
    let counters = region.app_metrics();
    let base = |series: &str| series.split('{').next().unwrap_or(series).to_owned();
    let mut families: Vec<String> = Vec::new();
    for (s, _, _) in &counters {
        let b = base(s);
        if !families.contains(&b) {
            families.push(b);
        }
    }
    for family in families {
        let members: Vec<&(String, String, AppValue)> = counters.iter().filter(|(s, _, _)| base(s) == family).collect();
        if let Some((_, help, _)) = members.iter().find(|(_, h, _)| !h.is_empty()) {
            let _ = writeln!(o, "# HELP {family} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        }
        let kind = if family.ends_with("_total") { "counter" } else { "gauge" };
        let _ = writeln!(o, "# TYPE {family} {kind}");
        for (s, _, v) in members {
            let _ = match v {
                AppValue::Counter(n) => writeln!(o, "{s} {n}"),
                AppValue::Gauge(n) => writeln!(o, "{s} {n}"),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_their_errors() {
        assert_eq!(series("shop_orders_total", "", &[], true).unwrap(), "shop_orders_total");
        assert_eq!(
            series("a:b_total", "", &[("outcome", "de\"cl\\ined\n"), ("kind", "card")], true).unwrap(),
            r#"a:b_total{outcome="de\"cl\\ined\n",kind="card"}"#
        );
        let err = |name: &str, labels: &[(&str, &str)]| series(name, "", labels, true).unwrap_err();
        assert!(err("2xx_total", &[]).contains("not starting with a digit"));
        assert!(err("orders-total", &[]).contains("not a metric name"));
        assert!(err("", &[]).contains("not a metric name"));
        assert!(err("orders", &[]).contains("ends in `_total`"));
        assert!(err("baton_requests_total", &[]).contains("baton's own"));
        assert!(err("x_total", &[("a:b", "v")]).contains("\"a:b\" is not a label name"));
        assert!(err("x_total", &[("__name__", "v")]).contains("is not a label name"));
        assert!(err("x_total", &[("k", "1"), ("k", "2")]).contains("given twice"));
        assert!(err(&format!("{}_total", "x".repeat(APP_TEXT)), &[]).contains("longer than 128 bytes"));
        assert!(series("x_total", &"h".repeat(129), &[], true).unwrap_err().contains("help is longer"));
        assert_eq!(series("queue_depth", "", &[("q", "mail")], false).unwrap(), "queue_depth{q=\"mail\"}");
        assert!(series("queue_total", "", &[], false).unwrap_err().contains("a gauge's name does not end in `_total`"));
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
        let want = "# HELP test_orders_total Orders\\nplaced.\n# TYPE test_orders_total counter\ntest_orders_total 6\n\
                    # HELP test_payments_total Payments.\n# TYPE test_payments_total counter\n\
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
    }
}
