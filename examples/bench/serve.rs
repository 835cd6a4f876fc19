//! `bench -- serve`: server-bound comparison with `wrk` (Debian package `wrk`): the server
//! on CPU 0, `wrk` (1 thread, 64 connections) on CPU 1, so throughput is bounded by the
//! server; the figure that counts is server CPU time per request, as a ratio against plain
//! `axum::serve` in the same round. A server's CPU time is its own cgroup's (cgroup v1
//! `cpuacct.usage`, v2 `cpu.stat`: nanoseconds, every process and thread it had) where the
//! bench may make one (root), else utime + stime of its process tree from `/proc` (100 Hz
//! ticks). `wrk`'s own CPU use is printed to show it had headroom.
//!
//! Where the machine lets it (a writable cgroup `cpu` controller, as root), the servers run
//! under a CPU cap (`BENCH_CPU_CAP`, default 40% of a core; `off` to disable): then the server
//! is the bottleneck for certain, at every round, whatever the client's speed, and its CPU per
//! request is measured saturated (the same batching for both servers). Without the cap, a
//! client that runs close to its own limit makes the server's CPU per request swing with
//! how often it wakes up.
//!
//! HTTP/2 (h2c, prior knowledge) is driven by `h2load` (Debian package `nghttp2-client`),
//! TLS by `wrk` over `https`, against a plain tokio-rustls accept loop serving the same router
//! with hyper-util (what `axum-server` does) as the baseline.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::{Server, median};

static CAPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Servers started from now on run capped (the CPU-per-request benchmarks), or not (the
/// reload and recovery benchmarks, which time what a client sees).
pub(crate) fn capping(on: bool) {
    CAPPING.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The `cgroup.procs` file of the servers' capped group, made on first use; `None` when
/// servers run uncapped now.
pub(crate) fn cpu_cap() -> Option<&'static Path> {
    if !CAPPING.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    capped_group()
}

static CAP: OnceLock<Option<PathBuf>> = OnceLock::new();

/// The bench's group under cgroup v2: the cap's, and the parent of each server's accounting
/// group. In v2 a process is in one group only, so the accounting groups must lie inside the
/// capped one for the cap to hold.
const V2_GROUP: &str = "/sys/fs/cgroup/baton-bench";

fn capped_group() -> Option<&'static Path> {
    CAP.get_or_init(|| {
        let percent: u32 = match std::env::var("BENCH_CPU_CAP").as_deref() {
            Ok("off") => return None,
            Ok(p) => p.trim_end_matches('%').parse().ok().filter(|p| (5..=100).contains(p))?,
            Err(_) => 40,
        };
        let (period, quota) = (10_000, 100 * percent);
        // cgroup v1 (`cpu` controller), else v2 (`cpu.max`, where the root delegates `cpu`).
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let made = if v1.join("cpu.cfs_quota_us").exists() {
            let dir = v1.join("baton-bench");
            (std::fs::create_dir_all(&dir).is_ok()
                && std::fs::write(dir.join("cpu.cfs_period_us"), period.to_string()).is_ok()
                && std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string()).is_ok())
            .then_some(dir)
        } else {
            let dir = Path::new(V2_GROUP);
            (std::fs::create_dir_all(dir).is_ok()
                && std::fs::write(dir.join("cpu.max"), format!("{quota} {period}")).is_ok())
            .then(|| dir.to_path_buf())
        };
        match made {
            Some(dir) => {
                println!(
                    "servers capped at {percent}% of a CPU (cgroup {}; BENCH_CPU_CAP=off disables)",
                    dir.display()
                );
                Some(dir.join("cgroup.procs"))
            }
            None => {
                println!("no CPU cap (needs a writable cgroup cpu controller): the client may bound the server");
                None
            }
        }
    })
    .as_deref()
}

/// Removes the capped group (empty once the servers are gone).
pub(crate) fn release_cpu_cap() {
    capping(false);
    if let Some(procs) = CAP.get().and_then(Option::as_deref).and_then(Path::parent) {
        let _ = std::fs::remove_dir(procs);
    }
    if let Some((root, _)) = ACCT.get().and_then(Option::as_ref) {
        let _ = std::fs::remove_dir(root);
    }
}

/// Where each server's CPU time is counted to the nanosecond: a cgroup of its own (every
/// process and thread it ever had, exited ones included), in cgroup v1's `cpuacct` hierarchy
/// or under v2's `baton-bench`. `None` (not root, no such hierarchy): `/proc`'s 100 Hz ticks.
static ACCT: OnceLock<Option<(PathBuf, bool)>> = OnceLock::new();

fn acct_root() -> Option<&'static (PathBuf, bool)> {
    ACCT.get_or_init(|| {
        let v1 = Path::new("/sys/fs/cgroup/cpuacct");
        let (dir, v2) = if v1.join("cpuacct.usage").exists() {
            (v1.join("baton-bench"), false)
        } else if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            (PathBuf::from(V2_GROUP), true)
        } else {
            return None;
        };
        std::fs::create_dir_all(&dir).ok().map(|()| (dir, v2))
    })
    .as_ref()
}

/// A server's own accounting group (see [`ACCT`]), made if missing; `None` without one.
pub(crate) fn acct_group(name: &str) -> Option<PathBuf> {
    let (root, _) = acct_root()?;
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

/// The CPU time of everything that ran in `group`, in seconds. The split between user space
/// and the kernel is the kernel's own (sampled at its ticks), scaled to the exact total.
pub(crate) fn acct_cpu(group: &Path) -> Option<crate::Cpu> {
    let v2 = acct_root()?.1;
    let (total, user, sys) = if v2 {
        let stat = std::fs::read_to_string(group.join("cpu.stat")).ok()?;
        let field = |name: &str| -> Option<f64> {
            stat.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))?.trim().parse::<f64>().ok()
        };
        (field("usage_usec")? / 1e6, field("user_usec")?, field("system_usec")?)
    } else {
        let read = |file: &str| -> Option<f64> { std::fs::read_to_string(group.join(file)).ok()?.trim().parse().ok() };
        (read("cpuacct.usage")? / 1e9, read("cpuacct.usage_user")?, read("cpuacct.usage_sys")?)
    };
    let user_share = if user + sys > 0.0 { user / (user + sys) } else { 0.0 };
    Some(crate::Cpu { user: total * user_share, sys: total * (1.0 - user_share) })
}

/// Removes a server's group once its processes are gone (a worker may outlive its master's
/// exit by a moment).
pub(crate) fn remove_acct_group(group: &Path) {
    for _ in 0..100 {
        if std::fs::remove_dir(group).is_ok() || !group.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub(crate) fn h2load_available() -> bool {
    Command::new("h2load").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// How a run loads the server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Load {
    /// `wrk`, HTTP/1.1 keep-alive (or `Connection: close`), over TLS when `https`.
    Wrk { close: bool, https: bool },
    /// `h2load`: HTTP/2 without TLS (prior knowledge), 16 connections of 10 streams each.
    H2c,
}

/// One `wrk` run against one server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WrkRun {
    pub(crate) rps: f64,
    /// Requests completed (for `h2load`, succeeded).
    pub(crate) requests: f64,
    pub(crate) cpu_us: f64,
    /// The part of `cpu_us` spent in user space (the rest: in the kernel).
    pub(crate) user_us: f64,
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
    run(server, secs, Load::Wrk { close, https: false })
}

/// A load client's command, on CPU 1 when the bench pins (the servers run on CPU 0).
fn client(tool: &str) -> Command {
    if crate::PINNED.load(std::sync::atomic::Ordering::Relaxed) {
        let mut c = Command::new("taskset");
        c.args(["-c", "1", tool]);
        c
    } else {
        Command::new(tool)
    }
}

/// Loads `server` for `secs` as `load` says.
pub(crate) fn run(server: &Server, secs: u64, load: Load) -> WrkRun {
    run_under(server, secs, load, &[]).0
}

/// [`run`] with the load client started by `wrap` (a command line that runs the one after it,
/// such as `perf stat ... --`; none when empty); also what the client's wrapper wrote to
/// standard error.
pub(crate) fn run_under(server: &Server, secs: u64, load: Load, wrap: &[String]) -> (WrkRun, String) {
    let mut cmd = client(if load == Load::H2c { "h2load" } else { "wrk" });
    match load {
        Load::Wrk { close, https } => {
            cmd.args(["-t1", "-c64", &format!("-d{secs}s"), "--latency"]);
            if close {
                cmd.args(["-H", "Connection: close"]);
            }
            cmd.arg(format!("{}://{}/", if https { "https" } else { "http" }, server.addr));
        }
        Load::H2c => {
            cmd.args(["-t1", "-c16", "-m10", &format!("-D{secs}"), &format!("http://{}/", server.addr)]);
        }
    }
    if let Some((program, args)) = wrap.split_first() {
        let mut wrapped = Command::new(program);
        wrapped.args(args).arg(cmd.get_program()).args(cmd.get_args());
        cmd = wrapped;
    }
    let (c0, k0, t0) = (server.cpu(), children_cpu(), std::time::Instant::now());
    let out = cmd.output().expect("run the load client");
    let (c1, k1, wall) = (server.cpu(), children_cpu(), t0.elapsed().as_secs_f64());
    let cpu = c1 - c0;
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if load == Load::H2c {
        return (h2load_result(&text, cpu, (k1 - k0) / wall), stderr);
    }
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
    let run = WrkRun {
        rps: num("Requests/sec:").unwrap_or(0.0),
        requests,
        cpu_us: cpu.total() * 1e6 / requests.max(1.0),
        user_us: cpu.user * 1e6 / requests.max(1.0),
        p99_us: p99.unwrap_or(f64::NAN),
        client_load: (k1 - k0) / wall,
        errors,
    };
    (run, stderr)
}

/// `h2load`'s summary: `finished in 5.00s, 81234.00 req/s, ...`, `requests: N total, N
/// started, N done, N succeeded, N failed, ...`, and the request time line
/// `time for request:  min  max  mean  sd  +/- sd`.
fn h2load_result(text: &str, cpu: crate::Cpu, client_load: f64) -> WrkRun {
    let field = |line: &str, name: &str| -> Option<f64> {
        line.split(',')
            .find_map(|p| p.trim().strip_suffix(name))
            .and_then(|v| v.split_whitespace().last()?.parse().ok())
    };
    let requests = text.lines().find_map(|l| l.strip_prefix("requests:")).map(|l| l.to_owned()).unwrap_or_default();
    let succeeded = field(&requests, "succeeded").unwrap_or(0.0);
    let failed = field(&requests, "failed").unwrap_or(0.0) + field(&requests, "errored").unwrap_or(0.0);
    let rps = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(',').nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    WrkRun {
        rps,
        requests: succeeded,
        cpu_us: cpu.total() * 1e6 / succeeded.max(1.0),
        user_us: cpu.user * 1e6 / succeeded.max(1.0),
        p99_us: f64::NAN,
        client_load,
        errors: failed as u64,
    }
}

/// The certificate and key the TLS tests use (for `localhost`).
#[cfg(all(target_os = "linux", feature = "tls"))]
pub(crate) fn tls_fixture() -> (&'static str, &'static str) {
    (
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/one.pem"),
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/one.key"),
    )
}

/// Plain axum over TLS, the baseline for baton's TLS listener: a tokio-rustls accept loop
/// serving the same router with hyper-util's auto builder (HTTP/1.1 and HTTP/2 by ALPN), what
/// `axum-server` does, with the certificate the TLS tests use.
#[cfg(all(target_os = "linux", feature = "tls"))]
pub(crate) fn serve_axum_tls() -> std::process::ExitCode {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let addr: std::net::SocketAddr = std::env::var("BENCH_ADDR").unwrap().parse().unwrap();
    let (cert, key) = tls_fixture();
    let certs = CertificateDer::pem_file_iter(cert).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let mut cfg =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let app = crate::hello::app(std::time::Duration::ZERO, false);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(addr).await.unwrap();
        loop {
            let Ok((tcp, _)) = l.accept().await else { continue };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    })
}

fn print(name: &str, r: &WrkRun) {
    println!(
        "  {name:<46} {:>9.0} req/s  server CPU {:>6.2}us/req (user {:.2})  p99 {:>8.0}us  wrk CPU {:>3.0}%  errors {}",
        r.rps,
        r.cpu_us,
        r.user_us,
        r.p99_us,
        r.client_load * 100.0,
        r.errors
    );
}

/// The main table: plain axum against baton's defaults (and, for keep-alive, without the
/// access log), per load: HTTP/1.1 keep-alive, a new connection per request, h2c and TLS.
///
/// The servers of one load stay up while it is measured, and `rounds` short runs alternate
/// between them (in reverse order every other round), so each round's runs are seconds apart
/// and the machine's drift (neighbours, frequency) reaches both sides of a ratio alike; the
/// figure is the median of the per-round ratios, with their quartiles to show how well this
/// machine resolves it, and the same median for user-space and for kernel time alone.
///
/// `BENCH_LOADS` (a comma-separated subset of `keep-alive,close,h2c,tls`) picks the loads;
/// `BENCH_AGAINST` (the path of another build of this bench) adds, for each load, that build's
/// baton with the defaults, and the median of the per-round ratios of its CPU per request to
/// this build's: an A/B of a change.
pub(crate) fn table(rounds: usize, secs: u64) {
    type Config = (&'static str, &'static str, Vec<&'static str>, Load);
    let http = Load::Wrk { close: false, https: false };
    let close = Load::Wrk { close: true, https: false };
    let mut configs: Vec<Config> = vec![
        ("plain axum::serve (keep-alive)", "axum", vec![], http),
        ("baton, defaults, access log to a file", "baton", vec!["-l", "access.log"], http),
        ("baton --access-log off", "baton", vec!["--access-log", "off"], http),
        // The same features from the usual parts (`axum-equivalent` in `bench.rs`): what the
        // defaults would cost an app without baton.
        ("  axum + tower-http equivalents, no log", "axum-equivalent", vec![], http),
        ("  axum + tower-http equivalents + TraceLayer log", "axum-equivalent-log", vec![], http),
        // A control: plain axum made slower in user space alone (`axum-spin`: a busy loop per
        // request, about what baton's defaults add), to tell the kernel time that being
        // slower costs by itself from what a server asks of the kernel.
        (SPIN_ROW, "axum-spin", vec![], http),
        ("plain axum::serve (Connection: close)", "axum", vec![], close),
        ("baton, defaults (Connection: close)", "baton", vec!["-l", "access.log"], close),
        // `#[tokio::main]` runs the accept loop on the main thread, outside the runtime's
        // workers: each connection's task is handed across threads (a futex wake and a
        // context switch per connection, by `bench -- syscalls`). baton's accept loop is a
        // task on a worker, like this one's.
        ("  axum::serve, accept loop spawned (close)", "axum-spawned", vec![], close),
    ];
    if h2load_available() {
        configs.push(("plain axum::serve (h2c, h2load -c16 -m10)", "axum", vec![], Load::H2c));
        configs.push(("baton, defaults (h2c)", "baton", vec!["-l", "access.log"], Load::H2c));
        configs.push(("  axum + tower-http equivalents + TraceLayer log", "axum-equivalent-log", vec![], Load::H2c));
    } else {
        println!("h2load not found (Debian package nghttp2-client): no HTTP/2 rows");
    }
    #[cfg(all(target_os = "linux", feature = "tls"))]
    {
        let https = Load::Wrk { close: false, https: true };
        let (cert, key) = tls_fixture();
        configs.push(("plain axum, tokio-rustls accept loop (TLS)", "axum-tls", vec![], https));
        configs.push((
            "baton, defaults (TLS)",
            "baton",
            vec!["-l", "access.log", "--tls-cert", cert, "--tls-key", key],
            https,
        ));
    }
    const LOADS: [&str; 4] = ["keep-alive", "close", "h2c", "tls"];
    let picked: Option<Vec<String>> =
        std::env::var("BENCH_LOADS").ok().map(|p| p.split(',').map(|w| w.trim().to_owned()).collect());
    if let Some(picked) = &picked {
        let unknown: Vec<&String> = picked.iter().filter(|w| !LOADS.contains(&w.as_str())).collect();
        assert!(unknown.is_empty(), "BENCH_LOADS: unknown {unknown:?} (the loads are {LOADS:?})");
        configs.retain(|c| {
            let name = match c.3 {
                Load::Wrk { close: false, https: false } => "keep-alive",
                Load::Wrk { close: true, .. } => "close",
                Load::Wrk { https: true, .. } => "tls",
                Load::H2c => "h2c",
            };
            picked.iter().any(|w| w == name)
        });
    }
    // The other build's rows: the defaults row of each load again, marked by its role.
    let against = std::env::var_os("BENCH_AGAINST").map(PathBuf::from);
    if let Some(path) = &against {
        assert!(path.is_file(), "BENCH_AGAINST: no file {}", path.display());
        println!("BENCH_AGAINST: {} (its rows marked \"other build\")", path.display());
        let mut with = Vec::new();
        for c in configs.drain(..) {
            let defaults = c.0.starts_with("baton, defaults");
            let other = defaults.then(|| ("  the same, other build", "baton-against", c.2.clone(), c.3));
            with.push(c);
            with.extend(other);
        }
        configs = with;
    }
    let start = |role: &str, flags: &[&str]| match (role, &against) {
        ("baton-against", Some(path)) => Server::start_from(path, "baton", flags, &[]),
        ("axum-spin", _) => Server::start_with_env(role, flags, &[("BENCH_SPIN_NS", SPIN_NS)]),
        _ => Server::start(role, flags),
    };
    let verbose = std::env::var_os("BENCH_VERBOSE").is_some();
    println!(
        "serve: per load, its servers up together and {rounds} rounds of {secs} s runs alternating between them; \
         server CPU 0, load client CPU 1; CPU time {} (BENCH_VERBOSE=1 prints every run)",
        if acct_root().is_some() { "per server from its own cgroup (ns)" } else { "from /proc (100 Hz ticks)" }
    );
    let mut loads: Vec<Load> = Vec::new();
    for c in &configs {
        if !loads.contains(&c.3) {
            loads.push(c.3);
        }
    }
    for load in loads {
        let idx: Vec<usize> = (0..configs.len()).filter(|&i| configs[i].3 == load).collect();
        let servers: Vec<Server> = idx.iter().map(|&i| start(configs[i].1, &configs[i].2)).collect();
        for s in &servers {
            run(s, 1, load); // warm-up
        }
        let mut runs: Vec<Vec<WrkRun>> = vec![Vec::new(); idx.len()];
        for round in 0..rounds {
            let mut order: Vec<usize> = (0..idx.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for k in order {
                let r = run(&servers[k], secs, load);
                if verbose {
                    print(configs[idx[k]].0, &r);
                }
                runs[k].push(r);
            }
        }
        drop(servers);
        // The baseline: the load's plain axum row, the first.
        for (k, &i) in idx.iter().enumerate() {
            let med = |f: fn(&WrkRun) -> f64| median(runs[k].iter().map(f).collect());
            let client = runs[k].iter().map(|r| r.client_load).fold(0.0, f64::max) * 100.0;
            let errors: u64 = runs[k].iter().map(|r| r.errors).sum();
            // The other build's row against this build's (the row before it), else against axum.
            let base = if configs[i].1 == "baton-against" { k - 1 } else { 0 };
            let versus = if k == 0 {
                String::new()
            } else {
                let per_round = |f: fn(&WrkRun) -> f64| -> Vec<f64> {
                    (0..rounds).map(|r| f(&runs[k][r]) / f(&runs[base][r])).collect()
                };
                let mut ratio = per_round(|r| r.cpu_us);
                let listed: Vec<f64> = ratio.iter().map(|x| (x * 1000.0).round() / 1000.0).collect();
                ratio.sort_by(f64::total_cmp);
                let q = |p: f64| ratio[((ratio.len() - 1) as f64 * p).round() as usize];
                // Where the difference lies: the same ratio for user-space time and for
                // kernel time alone.
                format!(
                    " CPU/req vs {} {:.3} (quartiles {:.3}-{:.3}; user space {:.3}, kernel {:.3}; rounds {listed:?})",
                    if base == 0 { "axum" } else { "this build" },
                    median(ratio.clone()),
                    q(0.25),
                    q(0.75),
                    median(per_round(|r| r.user_us)),
                    median(per_round(|r| r.cpu_us - r.user_us)),
                )
            };
            println!(
                "  {:<46} {:>7.0} req/s  CPU {:>6.2}us/req (user {:.2})  p99 {:>6.0}us  client CPU <= {client:.0}%  errors {errors}{versus}",
                configs[i].0,
                med(|r| r.rps),
                med(|r| r.cpu_us),
                med(|r| r.user_us),
                med(|r| r.p99_us),
            );
        }
    }
}

/// The control row's busy work per request, in nanoseconds (about the user-space time
/// baton's defaults add on this machine): one literal for the role's setting and the row's
/// name, which says it.
macro_rules! spin_ns {
    () => {
        "700"
    };
}
const SPIN_NS: &str = spin_ns!();
const SPIN_ROW: &str = concat!("  control: plain axum + ", spin_ns!(), " ns busy loop");

/// One case of the breakdown: its name, baton's flags and the `baton-ablation` role's
/// environment.
pub(crate) type Case = (&'static str, Vec<&'static str>, &'static [(&'static str, &'static str)]);

/// The flags of "every default off" (for `serve` and `instructions`): each default a flag
/// switches, off; the `baton-ablation` role keeps the request id, panic catching and metrics
/// off unless told.
pub(crate) const EVERY_DEFAULT_OFF: [&str; 10] = [
    "--access-log",
    "off",
    "--request-timeout",
    "0",
    "--body-timeout",
    "0",
    "--idle-timeout",
    "0",
    "--send-timeout",
    "0",
];

/// The breakdown's cases (for `serve` and `instructions` alike): every default off, then one
/// switched on at a time (through the `baton-ablation` role, which reads `BENCH_REQUEST_ID`,
/// `BENCH_CATCH_PANIC` and `BENCH_METRICS`).
pub(crate) fn ablation_cases() -> Vec<Case> {
    let with = |on: &[&'static str]| -> Vec<&'static str> {
        let mut v: Vec<&'static str> =
            EVERY_DEFAULT_OFF.chunks(2).filter(|kv| !on.contains(&kv[0])).flatten().copied().collect();
        v.extend_from_slice(on);
        v
    };
    vec![
        ("every default off", with(&[]), &[]),
        ("+ metrics counting", with(&[]), &[("BENCH_METRICS", "1")]),
        ("+ request id", with(&[]), &[("BENCH_REQUEST_ID", "1")]),
        ("+ catch panic", with(&[]), &[("BENCH_CATCH_PANIC", "1")]),
        ("+ request timeout 60s", with(&["--request-timeout", "60s"]), &[]),
        ("+ access log combined", with(&["--access-log", "combined", "-l", "access.log"]), &[]),
        ("+ access log json", with(&["--access-log", "json", "-l", "access.log"]), &[]),
        (
            "+ idle, body and send timeouts",
            with(&["--idle-timeout", "60s", "--body-timeout", "10s", "--send-timeout", "60s"]),
            &[],
        ),
    ]
}

/// `wrk` against `server` for a second (warm-up), then for `secs` (the figure).
fn warm_wrk(server: &Server, secs: u64) -> WrkRun {
    wrk(server, 1, false);
    wrk(server, secs, false)
}

/// The cost of each default alone ([`ablation_cases`]), and every default on with and without
/// the metrics' counting.
pub(crate) fn breakdown(secs: u64) {
    // Every default on (combined log to a file), with and without the metrics' counting.
    const ALL: &[(&str, &str)] = &[("BENCH_REQUEST_ID", "1"), ("BENCH_CATCH_PANIC", "1")];
    const ALL_METRICS: &[(&str, &str)] =
        &[("BENCH_REQUEST_ID", "1"), ("BENCH_CATCH_PANIC", "1"), ("BENCH_METRICS", "1")];
    let cases: Vec<Case> = ablation_cases()
        .into_iter()
        .chain([
            ("every default, metrics counting off", vec!["-l", "access.log"], ALL),
            ("every default, metrics counting on", vec!["-l", "access.log"], ALL_METRICS),
        ])
        .collect();
    println!(
        " breakdown: each default alone ({secs} s runs; each against the mean of the plain axum::serve runs just \
         before and after it, so a drift of the machine's speed does not show as a cost)"
    );
    let axum = || warm_wrk(&Server::start("axum", &[]), secs);
    let mut before = axum();
    print("plain axum::serve", &before);
    for (name, args, env) in cases {
        let r = warm_wrk(&Server::start_with_env("baton-ablation", &args, env), secs);
        let after = axum();
        let base = (before.cpu_us + after.cpu_us) / 2.0;
        print(&format!("{name} ({:.3}x)", r.cpu_us / base), &r);
        before = after;
    }
}

/// `rounds` rounds of `wrk` for `secs` against the server `a` starts, then the one `b`
/// starts; each run printed under its name. The per-round ratios of server CPU per request,
/// b over a, their median printed after `what`.
fn paired(rounds: usize, secs: u64, what: &str, a: (&str, &dyn Fn() -> Server), b: (&str, &dyn Fn() -> Server)) {
    let mut ratios = Vec::new();
    for _ in 0..rounds {
        let ra = warm_wrk(&(a.1)(), secs);
        print(a.0, &ra);
        let rb = warm_wrk(&(b.1)(), secs);
        print(b.0, &rb);
        ratios.push(rb.cpu_us / ra.cpu_us);
    }
    let rounded: Vec<f64> = ratios.iter().map(|r| (r * 1000.0).round() / 1000.0).collect();
    println!("  {what}: median {:.3} (rounds {rounded:?})", median(ratios));
}

/// `bench -- compare FLAGS`: plain axum against baton with `flags`, `rounds` interleaved rounds
/// of `secs` with `wrk` (keep-alive); the median of the per-round ratios of server CPU per
/// request.
pub(crate) fn compare(flags: &[&str], rounds: usize, secs: u64) {
    let baton = format!("baton {}", flags.join(" "));
    println!(" compare: plain axum::serve vs {baton} ({rounds} rounds of {secs} s, wrk)");
    paired(
        rounds,
        secs,
        "server CPU per request, baton vs axum",
        ("plain axum::serve", &|| Server::start("axum", &[])),
        (&baton, &|| Server::start("baton", flags)),
    );
}

/// `bench -- metrics`: every default on, metrics counting off and on, alternating rounds; the
/// median of the per-round ratios of server CPU per request.
pub(crate) fn metrics_cost(rounds: usize, secs: u64) {
    const OFF: &[(&str, &str)] = &[("BENCH_REQUEST_ID", "1"), ("BENCH_CATCH_PANIC", "1")];
    const ON: &[(&str, &str)] = &[("BENCH_REQUEST_ID", "1"), ("BENCH_CATCH_PANIC", "1"), ("BENCH_METRICS", "1")];
    println!(" metrics counting: every default on (combined log to a file), off then on, {rounds} rounds of {secs} s");
    let start = |env: &'static [(&'static str, &'static str)]| {
        move || Server::start_with_env("baton-ablation", &["-l", "access.log"], env)
    };
    paired(
        rounds,
        secs,
        "CPU per request, on vs off",
        ("metrics counting off", &start(OFF)),
        ("metrics counting on", &start(ON)),
    );
    let n = 20_000_000;
    let ns: Vec<f64> = (0..5).map(|_| baton::metrics::time_counting(n).as_nanos() as f64 / f64::from(n)).collect();
    println!("  the counting alone, in a loop on one thread: {:.1} ns per request (median of 5 x {n})", median(ns));
    // The app's own metrics (`baton::Counter`, `Gauge`, `Histogram`), per call.
    let per_call = |f: &dyn Fn(u32)| {
        let ns: Vec<f64> = (0..5)
            .map(|_| {
                let start = std::time::Instant::now();
                f(n);
                start.elapsed().as_nanos() as f64 / f64::from(n)
            })
            .collect();
        median(ns)
    };
    let counter = baton::Counter::new("bench_calls_total", "");
    let gauge = baton::Gauge::new("bench_in_progress", "");
    let histogram = baton::Histogram::new("bench_call_seconds", "", baton::Histogram::SECONDS);
    let c = per_call(&|n| (0..n).for_each(|_| counter.inc()));
    let g = per_call(&|n| (0..n).for_each(|_| gauge.inc()));
    let h = per_call(&|n| (0..n).for_each(|i| histogram.observe(std::hint::black_box(f64::from(i % 1000) * 0.0001))));
    println!(
        "  the app's own, per call on one thread (median of 5 x {n}): Counter::inc {c:.1} ns, Gauge::inc {g:.1} ns, Histogram::observe {h:.1} ns"
    );
}

/// `bench -- latency`: request latency at a fixed rate well below saturation (`h2load --rps`:
/// 20 connections at 100 requests/s each, HTTP/1.1 keep-alive, then h2c with one stream per
/// connection), plain axum and baton's defaults alternating, uncapped; p50, p99, p99.9 and
/// the maximum from h2load's per-request log.
pub(crate) fn latency(rounds: usize, secs: u64) {
    if !h2load_available() {
        println!("latency: h2load not found (Debian package nghttp2-client)");
        return;
    }
    println!(
        " latency at a fixed rate below saturation (h2load, 2,000 requests/s, {secs} s, {rounds} interleaved rounds; \
         uncapped; per-request times from h2load's --log-file):"
    );
    let log = std::env::temp_dir().join(format!("baton-bench-latency-{}.log", std::process::id()));
    for (proto, args) in [("HTTP/1.1", &["--h1", "-c20", "--rps=100"][..]), ("h2c", &["-c20", "-m1", "--rps=100"][..])]
    {
        // Per server: each round's p50, p99, p99.9 and max, in microseconds.
        let mut all: [Vec<[u64; 4]>; 2] = [Vec::new(), Vec::new()];
        let servers = [("plain axum::serve", "axum", &[][..]), ("baton, defaults", "baton", &["-l", "access.log"][..])];
        for round in 1..=rounds {
            for (i, (name, role, extra)) in servers.iter().enumerate() {
                let server = Server::start(role, extra);
                // h2load appends to its log.
                let _ = std::fs::remove_file(&log);
                let mut cmd = client("h2load");
                cmd.args(["-t1"]).args(args).arg(format!("-D{secs}")).arg(format!("--log-file={}", log.display()));
                let out = cmd.arg(format!("http://{}/", server.addr)).output().expect("run h2load");
                let text = String::from_utf8_lossy(&out.stdout);
                let done = text.lines().find_map(|l| l.strip_prefix("requests:")).unwrap_or("").trim().to_owned();
                // Columns: start (µs since the epoch), status, µs until the response ended.
                let mut us: Vec<u64> = std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| {
                        let mut f = l.split('\t');
                        let status = f.nth(1)?;
                        (status == "200").then(|| f.next()?.trim().parse().ok()).flatten()
                    })
                    .collect();
                us.sort_unstable();
                let q = |p: f64| us.get(((us.len() as f64 * p) as usize).min(us.len().saturating_sub(1))).copied();
                let row = [q(0.5), q(0.99), q(0.999), us.last().copied()].map(|v| v.unwrap_or(0));
                println!(
                    "  {proto:<8} round {round} {name:<18} p50 {:>6}us p99 {:>6}us p99.9 {:>6}us max {:>6}us  ({} ok of {})",
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    us.len(),
                    done.split(',').next().unwrap_or("?").trim()
                );
                all[i].push(row);
            }
        }
        for (i, (name, ..)) in servers.iter().enumerate() {
            let m = |k: usize| median(all[i].iter().map(|r| r[k] as f64).collect());
            println!(
                "  {proto:<8} medians {name:<18} p50 {:>6.0}us p99 {:>6.0}us p99.9 {:>6.0}us max {:>6.0}us",
                m(0),
                m(1),
                m(2),
                m(3)
            );
        }
    }
    let _ = std::fs::remove_file(&log);
}
