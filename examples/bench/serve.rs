//! `bench -- serve`: server-bound comparison with `wrk` (Debian package `wrk`): the server
//! on CPU 0, `wrk` (1 thread, 64 connections) on CPU 1, so throughput is bounded by the
//! server; the figure that counts is server CPU time per request (utime + stime of the whole
//! process tree, from `/proc`), as a ratio against plain `axum::serve` in the same round.
//! `wrk`'s own CPU use is printed to show it had headroom.

use std::process::Command;

use crate::{Server, cpu_secs, median};

/// One `wrk` run against one server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WrkRun {
    pub(crate) rps: f64,
    pub(crate) cpu_us: f64,
    pub(crate) p99_us: f64,
    /// `wrk`'s CPU time over the run's wall time: below 1.0 means it waited for the server.
    pub(crate) client_load: f64,
    pub(crate) errors: u64,
}

pub(crate) fn wrk_available() -> bool {
    Command::new("wrk").arg("--version").output().is_ok()
}

fn children_cpu() -> f64 {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(u.user_time()) + t(u.system_time())
}

/// Runs `wrk` for `secs` against `server` (`close`: a new connection per request).
pub(crate) fn wrk(server: &Server, secs: u64, close: bool) -> WrkRun {
    let url = format!("http://{}/", server.addr);
    let mut cmd = if crate::PINNED.load(std::sync::atomic::Ordering::Relaxed) {
        let mut c = Command::new("taskset");
        c.args(["-c", "1", "wrk"]);
        c
    } else {
        Command::new("wrk")
    };
    cmd.args(["-t1", "-c64", &format!("-d{secs}s"), "--latency"]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(&url);
    let (c0, k0, t0) = (cpu_secs(server.pid()), children_cpu(), std::time::Instant::now());
    let out = cmd.output().expect("run wrk");
    let (c1, k1, wall) = (cpu_secs(server.pid()), children_cpu(), t0.elapsed().as_secs_f64());
    let text = String::from_utf8_lossy(&out.stdout);
    let num = |prefix: &str| -> Option<f64> {
        text.lines().find_map(|l| l.trim().strip_prefix(prefix)).and_then(|r| r.split_whitespace().next()?.parse().ok())
    };
    let requests: f64 = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let p99 = text.lines().find_map(|l| l.trim().strip_prefix("99%")).map(|v| v.trim()).map(|v| {
        let (n, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
        let n: f64 = n.parse().unwrap_or(f64::NAN);
        n * match unit {
            "us" => 1.0,
            "ms" => 1e3,
            "s" => 1e6,
            _ => f64::NAN,
        }
    });
    let errors = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
        + text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Socket errors:"))
            .map(|v| v.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum())
            .unwrap_or(0);
    WrkRun {
        rps: num("Requests/sec:").unwrap_or(0.0),
        cpu_us: (c1 - c0) * 1e6 / requests.max(1.0),
        p99_us: p99.unwrap_or(f64::NAN),
        client_load: (k1 - k0) / wall,
        errors,
    }
}

fn print(name: &str, r: &WrkRun) {
    println!(
        "  {name:<46} {:>9.0} req/s  server CPU {:>6.2}us/req  p99 {:>8.0}us  wrk CPU {:>3.0}%  errors {}",
        r.rps,
        r.cpu_us,
        r.p99_us,
        r.client_load * 100.0,
        r.errors
    );
}

/// The main table: plain axum against baton's defaults and baton without the access log, for
/// keep-alive and a fresh connection per request; interleaved rounds, medians, ratios.
pub(crate) fn table(rounds: usize, secs: u64) {
    type Config = (&'static str, &'static str, &'static [&'static str], bool);
    let configs: [Config; 5] = [
        ("plain axum::serve (keep-alive)", "axum", &[], false),
        ("baton, defaults, access log to a file", "baton", &["-l", "access.log"], false),
        ("baton --access-log off", "baton", &["--access-log", "off"], false),
        ("plain axum::serve (Connection: close)", "axum", &[], true),
        ("baton, defaults (Connection: close)", "baton", &["-l", "access.log"], true),
    ];
    println!("serve (wrk -t1 -c64, {secs} s runs, {rounds} interleaved rounds; server CPU 0, wrk CPU 1):");
    let mut runs: Vec<Vec<WrkRun>> = vec![Vec::new(); configs.len()];
    for round in 1..=rounds {
        println!(" round {round}");
        for (i, (name, role, extra, close)) in configs.iter().enumerate() {
            let s = Server::start(role, extra);
            wrk(&s, 1, *close); // warm-up
            let r = wrk(&s, secs, *close);
            print(name, &r);
            runs[i].push(r);
        }
    }
    println!(" medians:");
    for (i, (name, ..)) in configs.iter().enumerate() {
        let base = if configs[i].3 { 3 } else { 0 };
        let med = |f: fn(&WrkRun) -> f64, k: usize| median(runs[k].iter().map(f).collect());
        let ratio: Vec<f64> = (0..rounds).map(|r| runs[i][r].cpu_us / runs[base][r].cpu_us).collect();
        println!(
            "  {name:<46} {:>9.0} req/s  CPU {:>6.2}us/req  p99 {:>7.0}us  CPU/req vs axum {:.3} (rounds {:?})",
            med(|r| r.rps, i),
            med(|r| r.cpu_us, i),
            med(|r| r.p99_us, i),
            median(ratio.clone()),
            ratio.iter().map(|x| (x * 1000.0).round() / 1000.0).collect::<Vec<_>>()
        );
    }
}

/// The cost of each default alone: everything off, then one switched on at a time (through
/// the `baton-ablation` role, which reads `BENCH_REQUEST_ID`/`BENCH_CATCH_PANIC`).
pub(crate) fn breakdown(secs: u64) {
    let off: &[&str] = &["--access-log", "off", "--request-timeout", "0", "--body-timeout", "0", "--idle-timeout", "0"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v: Vec<&'static str> = Vec::new();
        let mut i = 0;
        while i < off.len() {
            if !extra.contains(&off[i]) {
                v.extend_from_slice(&off[i..i + 2]);
            }
            i += 2;
        }
        v.extend_from_slice(extra);
        v
    };
    type Case = (&'static str, Vec<&'static str>, &'static [(&'static str, &'static str)]);
    let cases: [Case; 8] = [
        ("every default off", with(&[]), &[]),
        ("+ metrics counting", with(&[]), &[("BENCH_METRICS", "1")]),
        ("+ request id", with(&[]), &[("BENCH_REQUEST_ID", "1")]),
        ("+ catch panic", with(&[]), &[("BENCH_CATCH_PANIC", "1")]),
        ("+ request timeout 60s", with(&["--request-timeout", "60s"]), &[]),
        ("+ access log combined", with(&["--access-log", "combined", "-l", "access.log"]), &[]),
        ("+ access log json", with(&["--access-log", "json", "-l", "access.log"]), &[]),
        ("+ idle and body timeouts", with(&["--idle-timeout", "60s", "--body-timeout", "10s"]), &[]),
    ];
    // Every default on (combined log to a file), with and without the metrics' counting.
    const ALL: &[(&str, &str)] = &[("BENCH_REQUEST_ID", "1"), ("BENCH_CATCH_PANIC", "1")];
    const ALL_METRICS: &[(&str, &str)] =
        &[("BENCH_REQUEST_ID", "1"), ("BENCH_CATCH_PANIC", "1"), ("BENCH_METRICS", "1")];
    let cases: Vec<Case> = cases
        .into_iter()
        .chain([
            ("every default, metrics counting off", vec!["-l", "access.log"], ALL),
            ("every default, metrics counting on", vec!["-l", "access.log"], ALL_METRICS),
        ])
        .collect();
    println!(" breakdown: each default alone ({secs} s runs; ratios against plain axum::serve in the same pass)");
    let axum = {
        let s = Server::start("axum", &[]);
        wrk(&s, 1, false);
        wrk(&s, secs, false)
    };
    print("plain axum::serve", &axum);
    for (name, args, env) in cases {
        let s = Server::start_with_env("baton-ablation", &args, env);
        wrk(&s, 1, false);
        let r = wrk(&s, secs, false);
        print(&format!("{name} ({:.3}x)", r.cpu_us / axum.cpu_us), &r);
    }
}

/// `bench -- metrics`: every default on, metrics counting off and on, alternating rounds; the
/// median of the per-round ratios of server CPU per request.
pub(crate) fn metrics_cost(rounds: usize, secs: u64) {
    const OFF: &[(&str, &str)] = &[("BENCH_REQUEST_ID", "1"), ("BENCH_CATCH_PANIC", "1")];
    const ON: &[(&str, &str)] = &[("BENCH_REQUEST_ID", "1"), ("BENCH_CATCH_PANIC", "1"), ("BENCH_METRICS", "1")];
    println!(" metrics counting: every default on (combined log to a file), off then on, {rounds} rounds of {secs} s");
    let mut ratios = Vec::new();
    for _ in 0..rounds {
        let mut cpu = [0.0; 2];
        for (i, (name, env)) in [("metrics counting off", OFF), ("metrics counting on", ON)].into_iter().enumerate() {
            let s = Server::start_with_env("baton-ablation", &["-l", "access.log"], env);
            wrk(&s, 1, false);
            let r = wrk(&s, secs, false);
            print(name, &r);
            cpu[i] = r.cpu_us;
        }
        ratios.push(cpu[1] / cpu[0]);
    }
    let rounded: Vec<f64> = ratios.iter().map(|x| (x * 1000.0).round() / 1000.0).collect();
    println!("  CPU per request, on vs off: median {:.3} (rounds {rounded:?})", median(ratios));
    let n = 20_000_000;
    let ns: Vec<f64> = (0..5).map(|_| baton::metrics::time_counting(n).as_nanos() as f64 / f64::from(n)).collect();
    println!("  the counting alone, in a loop on one thread: {:.1} ns per request (median of 5 x {n})", median(ns));
}
