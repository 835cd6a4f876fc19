//! `bench -- instructions`: the server's own instructions per request, counted by callgrind
//! (Debian package `valgrind`). Unlike CPU time, the count does not depend on what else the
//! machine does, so differences of a percent show. It counts user space only (the kernel's
//! TCP work is the same for both servers) and runs baton with `--no-master` (the master takes
//! no part in serving, and valgrind cannot follow its `execveat`). Each server is measured
//! twice, idle and under `wrk`; the difference over the requests served is the figure. Beside
//! it, the locked instructions (atomic read-modify-writes: reference counts, shared counters,
//! locks; callgrind's `--collect-bus`), which the count weighs as one each though each costs
//! the time of many (the table's heading says how many here).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::median;
use crate::serve::Load;

pub(crate) fn valgrind_available() -> bool {
    Command::new("valgrind").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// What one server run executed: instructions and locked instructions.
#[derive(Clone, Copy)]
struct Counts {
    instructions: f64,
    locked: f64,
}

/// What one server run executed, and the requests `wrk` completed against it.
fn run(role: &str, extra: &[&str], env: &[(&str, &str)], secs: u64, load: Load) -> (Counts, f64) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("baton-bench-cg-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("callgrind.out");
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg("--collect-bus=yes")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(std::env::current_exe().unwrap());
    match role {
        "baton" => {
            cmd.args(["run", "--no-master", "--listen", &addr, "--delay", "0"]).args(extra);
        }
        "baton-ablation" => {
            cmd.args(["run", "--no-master", "--listen", &addr]).args(extra);
        }
        _ => {}
    }
    cmd.env("BENCH_ROLE", role).env("BENCH_ADDR", &addr).envs(env.iter().copied()).current_dir(&dir);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(dir.join("stderr.log")).unwrap());
    let mut child = cmd.spawn().expect("valgrind");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "{role} did not start under valgrind");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut requests = 0.0;
    if secs > 0 {
        let text = match load {
            Load::Wrk { close, https } => {
                let mut w = Command::new("wrk");
                w.args(["-t1", "-c16", &format!("-d{secs}s")]);
                if close {
                    w.args(["-H", "Connection: close"]);
                }
                w.arg(format!("{}://{addr}/", if https { "https" } else { "http" }));
                String::from_utf8_lossy(&w.output().expect("wrk").stdout).into_owned()
            }
            Load::H2c => {
                let mut h = Command::new("h2load");
                h.args(["-t1", "-c16", "-m10", &format!("-D{secs}"), &format!("http://{addr}/")]);
                String::from_utf8_lossy(&h.output().expect("h2load").stdout).into_owned()
            }
        };
        requests = match load {
            // `requests: N total, N started, N done, N succeeded, ...`
            Load::H2c => text
                .lines()
                .find_map(|l| l.strip_prefix("requests:"))
                .and_then(|l| l.split(',').find_map(|p| p.trim().strip_suffix(" succeeded")))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0.0),
            Load::Wrk { .. } => text
                .lines()
                .find(|l| l.contains(" requests in "))
                .and_then(|l| l.split_whitespace().next()?.parse().ok())
                .unwrap_or(0.0),
        };
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    // `totals: <instructions> <locked>` (the events in `--collect-bus=yes` order).
    let totals: Vec<f64> = text
        .lines()
        .find_map(|l| l.strip_prefix("totals: ").or_else(|| l.strip_prefix("summary: ")))
        .map(|v| v.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    let at = |i: usize| totals.get(i).copied().unwrap_or(f64::NAN);
    let _ = std::fs::remove_dir_all(&dir);
    (Counts { instructions: at(0), locked: at(1) }, requests)
}

/// Instructions and locked instructions per request: (busy - idle) / requests, median of
/// `rounds` each.
fn per_request(role: &str, extra: &[&str], env: &[(&str, &str)], secs: u64, load: Load, rounds: usize) -> Counts {
    let idle = run(role, extra, env, 0, load).0;
    let runs: Vec<(Counts, f64)> = (0..rounds).map(|_| run(role, extra, env, secs, load)).collect();
    let per = |f: fn(&Counts) -> f64| median(runs.iter().map(|(busy, n)| (f(busy) - f(&idle)) / n.max(1.0)).collect());
    Counts { instructions: per(|c| c.instructions), locked: per(|c| c.locked) }
}

/// Nanoseconds per uncontended atomic add and per plain add, each in a loop on one thread.
fn locked_add_ns() -> (f64, f64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    const N: u32 = 50_000_000;
    let counter = AtomicU64::new(0);
    let t = Instant::now();
    for _ in 0..N {
        counter.fetch_add(1, Ordering::Relaxed);
        std::hint::black_box(&counter);
    }
    let locked = t.elapsed().as_nanos() as f64 / f64::from(N);
    let plain = std::cell::Cell::new(0u64);
    let t = Instant::now();
    for _ in 0..N {
        plain.set(plain.get() + 1);
        std::hint::black_box(&plain);
    }
    (locked, t.elapsed().as_nanos() as f64 / f64::from(N))
}

pub(crate) fn table(secs: u64, rounds: usize) {
    type Config = (&'static str, &'static str, Vec<&'static str>, &'static [(&'static str, &'static str)], Load);
    const ALL: &[(&str, &str)] = &[("BENCH_REQUEST_ID", "1"), ("BENCH_CATCH_PANIC", "1"), ("BENCH_METRICS", "1")];
    let http = Load::Wrk { close: false, https: false };
    let close = Load::Wrk { close: true, https: false };
    let mut configs: Vec<Config> = vec![
        ("plain axum::serve (keep-alive)", "axum", vec![], &[], http),
        ("axum::serve with ConnectInfo<SocketAddr>", "axum-connect-info", vec![], &[], http),
        ("baton, defaults, access log to a file", "baton", vec!["-l", "access.log"], &[], http),
        ("baton --access-log off", "baton", vec!["--access-log", "off"], &[], http),
        ("baton, every default off", "baton-ablation", crate::serve::EVERY_DEFAULT_OFF.to_vec(), &[], http),
        ("axum + tower-http equivalents, no log", "axum-equivalent", vec![], &[], http),
        ("axum + tower-http equivalents + TraceLayer log", "axum-equivalent-log", vec![], &[], http),
        ("plain axum::serve (Connection: close)", "axum", vec![], &[], close),
        ("baton, defaults (Connection: close)", "baton-ablation", vec!["-l", "access.log"], ALL, close),
        ("  axum::serve, accept loop spawned (close)", "axum-spawned", vec![], &[], close),
    ];
    if crate::serve::h2load_available() {
        configs.push(("plain axum::serve (h2c)", "axum", vec![], &[], Load::H2c));
        configs.push(("axum::serve with ConnectInfo<SocketAddr> (h2c)", "axum-connect-info", vec![], &[], Load::H2c));
        configs.push(("baton, defaults (h2c)", "baton", vec!["-l", "access.log"], &[], Load::H2c));
        configs.push((
            "axum + tower-http equivalents + TraceLayer log (h2c)",
            "axum-equivalent-log",
            vec![],
            &[],
            Load::H2c,
        ));
    }
    #[cfg(all(target_os = "linux", feature = "tls"))]
    {
        let https = Load::Wrk { close: false, https: true };
        let (cert, key) = crate::serve::tls_fixture();
        configs.push(("plain axum, tokio-rustls accept loop (TLS)", "axum-tls", vec![], &[], https));
        configs.push((
            "baton, defaults (TLS)",
            "baton",
            vec!["-l", "access.log", "--tls-cert", cert, "--tls-key", key],
            &[],
            https,
        ));
    }
    println!(
        "instructions (callgrind, user space; wrk -t1 -c16 or h2load -c16 -m10, {secs} s under valgrind, median of {rounds}):"
    );
    let (locked_ns, plain_ns) = locked_add_ns();
    println!(
        "  and locked instructions: an uncontended atomic add takes {locked_ns:.1} ns here, a plain add {plain_ns:.2} ns"
    );
    let mut base: Vec<(Load, Counts)> = Vec::new();
    for (name, role, extra, env, load) in configs {
        let n = per_request(role, &extra, env, secs, load, rounds);
        if role == "axum" || role == "axum-tls" {
            base.push((load, n));
        }
        let b = base.iter().find(|(l, _)| *l == load).map_or(f64::NAN, |(_, b)| b.instructions);
        println!(
            "  {name:<46} {:>9.0} instructions/request  ({:.3}x axum)  {:>6.1} locked",
            n.instructions,
            n.instructions / b,
            n.locked
        );
    }
}

/// Each default's cost alone, in instructions and locked instructions per request: every
/// default off, then one switched on at a time (one run each: the count varies by about a
/// percent between runs).
pub(crate) fn breakdown(secs: u64) {
    let cases = crate::serve::ablation_cases();
    let mut loads = vec![("HTTP/1.1 keep-alive", Load::Wrk { close: false, https: false })];
    if crate::serve::h2load_available() {
        loads.push(("h2c", Load::H2c));
    }
    for (proto, load) in loads {
        let axum = per_request("axum", &[], &[], secs, load, 1);
        println!(
            " breakdown, {proto} (per request, one run each; plain axum::serve {:.0} instructions, {:.1} locked):",
            axum.instructions, axum.locked
        );
        let mut off: Option<Counts> = None;
        for (name, args, env) in &cases {
            let n = per_request("baton-ablation", args, env, secs, load, 1);
            let o = *off.get_or_insert(n);
            println!(
                "  {name:<46} {:>9.0}  ({:+.0} vs every default off; {:.3}x axum)  {:>6.1} locked ({:+.1})",
                n.instructions,
                n.instructions - o.instructions,
                n.instructions / axum.instructions,
                n.locked,
                n.locked - o.locked
            );
        }
    }
}
