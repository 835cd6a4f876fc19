//! The app's own counters, served with baton's metrics on `--metrics-listen` and kept, as
//! baton's own are, across reloads and crashes.
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
//! ```
//!
//! A counter lives in the master's shared memory, as the request counters do: every worker
//! adds to the same count, whichever generation it belongs to, so a reload or a crash restart
//! never sets it back (a counter of a process's own would fall to 0 at each deploy, and during
//! a reload two generations would answer scrapes with different values). A series is found by
//! its name and labels: a new generation goes on counting where the old one was. Counting is
//! one relaxed atomic add in a row of this thread's own.
//!
//! A counter made outside a worker (an app's tests calling its router, or code that runs before
//! [`crate::App::serve`]) counts in this process's memory only. The region holds
//! [`APP_SERIES`](baton_supervise::metrics::APP_SERIES) series; one more counts in this
//! process only, and a warning says so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use baton_supervise::metrics::{APP_TEXT, Region};

/// Where the app's counters are: the worker's region once it serves (see [`serve_from`]).
static REGION: OnceLock<&'static Region> = OnceLock::new();

/// The worker, before the app's factory runs: its counters go to `region` (the master's
/// shared one under a master). Counters made earlier stay in this process's memory.
pub(crate) fn serve_from(region: &'static Region) {
    if REGION.set(region).is_err() && !std::ptr::eq(*REGION.get().expect("set"), region) {
        tracing::warn!(
            "baton::Counter made before the worker started: the app's counters count in this process only (not kept across reloads)"
        );
    }
}

/// The region the app's counters count in (and the exposition reads).
pub(crate) fn region() -> &'static Region {
    REGION.get_or_init(Region::private)
}

/// A counter of the app's own: a Prometheus counter (one series: a name and its labels),
/// served on `--metrics-listen` with baton's metrics and kept across reloads and crashes.
/// See [the module](crate::counter). Cheap to clone.
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
        let series = series(name, help, labels).unwrap_or_else(|e| panic!("baton::Counter {name:?}: {e}"));
        let region = region();
        let cell = match region.app_series(&series, help) {
            Some(i) => Cell::Shared(region, i),
            None => {
                tracing::warn!(
                    "baton::Counter {series}: all {} series are taken; it counts in this process only (not served, not kept across reloads)",
                    baton_supervise::metrics::APP_SERIES
                );
                Cell::Local(Arc::default())
            }
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

/// The series' name as the text format writes it (`name{label="value"}`), or why not.
fn series(name: &str, help: &str, labels: &[(&str, &str)]) -> Result<String, String> {
    let word = |s: &str, colon: bool| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    };
    if !word(name, true) {
        return Err("not a metric name (letters, digits, `_` and `:`, not starting with a digit)".into());
    }
    if !name.ends_with("_total") {
        return Err("a counter's name ends in `_total`".into());
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

/// The app's counters in the text format: one family per name (`# HELP`, `# TYPE`), its
/// series in the order they were first counted.
pub(crate) fn render(o: &mut String, region: &Region) {
    use std::fmt::Write as _;
    let counters = region.app_counters();
    let base = |series: &str| series.split('{').next().unwrap_or(series).to_owned();
    let mut families: Vec<String> = Vec::new();
    for (s, _, _) in &counters {
        let b = base(s);
        if !families.contains(&b) {
            families.push(b);
        }
    }
    for family in families {
        let members: Vec<&(String, String, u64)> = counters.iter().filter(|(s, _, _)| base(s) == family).collect();
        if let Some((_, help, _)) = members.iter().find(|(_, h, _)| !h.is_empty()) {
            let _ = writeln!(o, "# HELP {family} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        }
        let _ = writeln!(o, "# TYPE {family} counter");
        for (s, _, v) in members {
            let _ = writeln!(o, "{s} {v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_their_errors() {
        assert_eq!(series("shop_orders_total", "", &[]).unwrap(), "shop_orders_total");
        assert_eq!(
            series("a:b_total", "", &[("outcome", "de\"cl\\ined\n"), ("kind", "card")]).unwrap(),
            r#"a:b_total{outcome="de\"cl\\ined\n",kind="card"}"#
        );
        let err = |name: &str, labels: &[(&str, &str)]| series(name, "", labels).unwrap_err();
        assert!(err("2xx_total", &[]).contains("not starting with a digit"));
        assert!(err("orders-total", &[]).contains("not a metric name"));
        assert!(err("", &[]).contains("not a metric name"));
        assert!(err("orders", &[]).contains("ends in `_total`"));
        assert!(err("baton_requests_total", &[]).contains("baton's own"));
        assert!(err("x_total", &[("a:b", "v")]).contains("\"a:b\" is not a label name"));
        assert!(err("x_total", &[("__name__", "v")]).contains("is not a label name"));
        assert!(err("x_total", &[("k", "1"), ("k", "2")]).contains("given twice"));
        assert!(err(&format!("{}_total", "x".repeat(APP_TEXT)), &[]).contains("longer than 128 bytes"));
        assert!(series("x_total", &"h".repeat(129), &[]).unwrap_err().contains("help is longer"));
        let long = "v".repeat(APP_TEXT);
        let e = std::panic::catch_unwind(|| Counter::with_labels("x_total", "", &[("k", &long)])).unwrap_err();
        assert!(e.downcast_ref::<String>().unwrap().starts_with("baton::Counter \"x_total\": the series"));
    }

    #[test]
    fn counters_count_and_render_by_family() {
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
    }
}
