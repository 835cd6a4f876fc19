//! Benchmarks that print figures (timing never decides a test): run with
//! `cargo run --release --example bench` (or `-- serve` / `-- reload` for one part).
//!
//! - serve: the hello router (`--delay 0`) through baton (master + worker, the real binary
//!   path) and through plain `axum::serve`, the same keep-alive load on both, alternating
//!   rounds; requests/s, p50/p99 and the ratio. Beside them, `axum::serve` with the same
//!   features from tower-http (`serve_axum_equivalent`).
//! - instructions (`bench/instructions.rs`): user-space instructions per request, by callgrind.
//! - syscalls (`bench/syscalls.rs`): system calls and context switches per request, by `perf
//!   stat`.
//! - reload: the same load quiet, then with a reload every 0.5 s (requests, failures,
//!   throughput, p50/p99/max side by side); reload latency (signal until the new worker
//!   answers); master RSS and worker RSS under load; recovery times: a worker crash until the
//!   replacement serves, and a new binary failing its probation until the old one serves.
//!
//! All traffic goes to 127.0.0.1; every load phase is bounded in time.

#[allow(unreachable_pub, dead_code)] // reused: only `main` and `app` are called here
mod hello;
#[allow(unreachable_pub, dead_code)] // the tests' load client, reused
#[path = "../tests/support/load.rs"]
mod load;

#[path = "bench/instructions.rs"]
mod instructions;
#[path = "bench/serve.rs"]
mod serve;
#[path = "bench/syscalls.rs"]
mod syscalls;

use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const CONNS: usize = 64;

fn main() -> ExitCode {
    match std::env::var("BENCH_ROLE").as_deref() {
        Ok("baton") => return hello::main(),
        Ok("baton-ablation") => return serve_ablation(),
        Ok("axum") => return serve_axum(false),
        Ok("axum-connect-info") => return serve_axum(true),
        Ok("axum-spawned") => return serve_axum_spawned(),
        Ok("axum-equivalent") => return serve_axum_equivalent(false),
        Ok("axum-equivalent-log") => return serve_axum_equivalent(true),
        Ok("axum-spin") => return serve_axum_spin(),
        #[cfg(all(target_os = "linux", feature = "tls"))]
        Ok("axum-tls") => return serve::serve_axum_tls(),
        _ => {}
    }
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    // Client and server on different cores (when there are two and taskset exists): otherwise
    // they steal from each other and throughput swings by a third between identical runs.
    let pinned = pin_client();
    println!(
        "{}",
        if pinned { "load client on CPU 1, servers on CPU 0" } else { "not pinned (needs 2 CPUs and taskset)" }
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    serve::capping(matches!(what.as_str(), "compare" | "serve" | "metrics" | "all"));
    if what == "compare" {
        // Plain axum against baton with the given flags: `wrk` when present (servers under the
        // CPU cap, as in `serve`), else the built-in client; 4 interleaved rounds of 6 s.
        let extra: Vec<String> = std::env::args().skip(2).collect();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        if serve::wrk_available() {
            serve::compare(&extra, 4, 6);
        } else {
            println!("wrk not found (Debian package wrk): the built-in client, which may be slower than the server");
            let (mut a, mut b, mut ca, mut cb) = (0.0, 0.0, 0.0, 0.0);
            for _ in 0..4 {
                let s = Server::start("axum", &[]);
                drive(&rt, &s, 1);
                let r = drive(&rt, &s, 6);
                line("plain axum::serve", &r);
                a += r.rps();
                ca += r.cpu_us;
                drop(s);
                let s = Server::start("baton", &extra);
                drive(&rt, &s, 1);
                let r = drive(&rt, &s, 6);
                line(&format!("baton {}", extra.join(" ")), &r);
                b += r.rps();
                cb += r.cpu_us;
            }
            println!(" throughput ratio {:.3}, server CPU per request ratio {:.3}", b / a, cb / ca);
        }
        serve::release_cpu_cap();
        return ExitCode::SUCCESS;
    }
    if what == "all" || what == "serve" {
        if serve::wrk_available() {
            let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
            serve::table(env("BENCH_ROUNDS", 12).max(1) as usize, env("BENCH_SECS", 2).max(1));
            serve::breakdown(5);
        } else {
            println!("wrk not found (Debian package wrk): the built-in client, which may be slower than the server");
            serve_bench(&rt);
        }
    }
    if what == "instructions" && serve::wrk_available() && instructions::valgrind_available() {
        instructions::table(5, 3);
        instructions::breakdown(5);
    }
    if what == "syscalls" && serve::wrk_available() {
        syscalls::table(2, 5);
    }
    if what == "metrics" && serve::wrk_available() {
        serve::metrics_cost(6, 5);
    }
    serve::capping(false);
    if what == "all" || what == "latency" {
        serve::latency(3, 10);
    }
    if what == "all" || what == "reload" {
        reload_bench(&rt);
    }
    if what == "all" || what == "reload" || what == "recovery" {
        recovery_bench();
    }
    serve::release_cpu_cap();
    ExitCode::SUCCESS
}

/// baton with the switches the App builder owns taken from the environment (for the
/// breakdown): request id, panic catching and metrics off unless `BENCH_REQUEST_ID`,
/// `BENCH_CATCH_PANIC`, `BENCH_METRICS`.
fn serve_ablation() -> ExitCode {
    let on = |k: &str| std::env::var_os(k).is_some();
    baton::App::new()
        .request_id(on("BENCH_REQUEST_ID"))
        .catch_panic(on("BENCH_CATCH_PANIC"))
        .metrics(on("BENCH_METRICS"))
        .serve(|_: baton::NoArgs| async { hello::app(Duration::ZERO, false) })
}

/// Plain axum with `axum::serve` spawned as a task (its accept loop on a runtime worker, as
/// baton's is) instead of run by `block_on` on the main thread (`#[tokio::main]`'s way).
fn serve_axum_spawned() -> ExitCode {
    let addr: SocketAddr = std::env::var("BENCH_ADDR").unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(addr).await.unwrap();
        let app = hello::app(Duration::ZERO, false);
        tokio::spawn(async move { axum::serve(l, app).await }).await.unwrap().unwrap();
    });
    ExitCode::SUCCESS
}

/// Plain axum, the baseline: the same router, `axum::serve`, a multi-threaded runtime;
/// `connect_info`: with `ConnectInfo<SocketAddr>` on every request, as baton gives.
fn serve_axum(connect_info: bool) -> ExitCode {
    let addr: SocketAddr = std::env::var("BENCH_ADDR").unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(addr).await.unwrap();
        let app = hello::app(Duration::ZERO, false);
        if connect_info {
            axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
        } else {
            axum::serve(l, app).await.unwrap();
        }
    });
    ExitCode::SUCCESS
}

/// `axum::serve` with what baton's defaults give, built from the usual parts as an app without
/// baton would have them: `ConnectInfo<SocketAddr>`, graceful shutdown (its per-connection
/// tracking; on a signal that never comes, as the bench stops servers with TERM), and
/// tower-http's request id (made from a counter, as baton's, rather than a UUID, and
/// propagated to the response), panic -> 500, request timeout (503 after 60 s) and body limit
/// (2 MiB), as one tower stack around the router. `log`: also a log line per request, through
/// tower-http's `TraceLayer` (its span and its response event at INFO) and tracing-subscriber's
/// `fmt` into `access.log`, one `write` per line. The comparison for a goal stated against
/// `axum::serve` with the same features.
fn serve_axum_equivalent(log: bool) -> ExitCode {
    use std::sync::atomic::AtomicU64;
    use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
    use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};

    #[derive(Clone)]
    struct Counter;
    impl MakeRequestId for Counter {
        fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
            static N: AtomicU64 = AtomicU64::new(0);
            Some(RequestId::new(http::HeaderValue::from(N.fetch_add(1, Ordering::Relaxed))))
        }
    }
    let addr: SocketAddr = std::env::var("BENCH_ADDR").unwrap().parse().unwrap();
    if log {
        let file = std::fs::OpenOptions::new().create(true).append(true).open("access.log").unwrap();
        tracing_subscriber::fmt()
            .with_writer(Arc::new(file))
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .init();
    }
    // Around the whole router as one stack, so nothing is boxed per layer (each
    // `Router::layer` call boxes its stack again, and clones the box per request).
    async fn serve<S, B>(addr: SocketAddr, app: S)
    where
        S: tower::Service<axum::extract::Request, Response = http::Response<B>, Error = std::convert::Infallible>,
        S: Clone + Send + Sync + 'static,
        S::Future: Send,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let app =
            tower::ServiceBuilder::new().map_response(|r: http::Response<B>| r.map(axum::body::Body::new)).service(app);
        let app = axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<SocketAddr>(app);
        let l = tokio::net::TcpListener::bind(addr).await.unwrap();
        axum::serve(l, app).with_graceful_shutdown(std::future::pending()).await.unwrap();
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let stack = tower::ServiceBuilder::new().layer(SetRequestIdLayer::x_request_id(Counter));
    let inner = tower::ServiceBuilder::new()
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(tower_http::limit::RequestBodyLimitLayer::new(2 << 20))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            http::StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(60),
        ));
    let router = hello::app(Duration::ZERO, false);
    if log {
        // Between the id's making and its propagation: the span sees it.
        let trace = TraceLayer::new_for_http()
            .make_span_with(DefaultMakeSpan::new().level(tracing::Level::INFO))
            .on_response(DefaultOnResponse::new().level(tracing::Level::INFO));
        rt.block_on(serve(addr, stack.layer(trace).layer(inner).service(router)));
    } else {
        rt.block_on(serve(addr, stack.layer(inner).service(router)));
    }
    ExitCode::SUCCESS
}

/// Plain axum with `BENCH_SPIN_NS` of busy user-space work added to every request (a
/// `map_request` layer): how much kernel time a slower server pays per request. The control
/// row of `serve`'s keep-alive table; by hand, `BENCH_ROLE=axum-spin BENCH_SPIN_NS=600
/// BENCH_ADDR=127.0.0.1:PORT` (under `perf record`, say; see `docs/benchmarks.md`).
fn serve_axum_spin() -> ExitCode {
    let addr: SocketAddr = std::env::var("BENCH_ADDR").unwrap().parse().unwrap();
    let ns: u64 = std::env::var("BENCH_SPIN_NS").unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(addr).await.unwrap();
        let app = hello::app(Duration::ZERO, false).layer(axum::middleware::map_request(
            move |r: axum::extract::Request| async move {
                let t = Instant::now();
                while t.elapsed().as_nanos() < u128::from(ns) {
                    std::hint::spin_loop();
                }
                r
            },
        ));
        axum::serve(l, app).await.unwrap();
    });
    ExitCode::SUCCESS
}

/// `GET path` on a new connection: the whole response, head and body (timeouts bound a
/// server that accepts and never answers).
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    Some(buf)
}

/// Whether a server on `addr` answers `GET /` with a 200.
fn answers(addr: SocketAddr) -> bool {
    http_get(addr, "/").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
}

static PINNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Pins this process (and the runtime threads it starts later) to CPU 1, with `taskset` (which
/// the servers are started under too).
fn pin_client() -> bool {
    let ok = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
        && Command::new("taskset").arg("--version").output().is_ok_and(|o| o.status.success())
        && Command::new("taskset")
            .args(["-p", "-c", "1", &std::process::id().to_string()])
            .output()
            .is_ok_and(|o| o.status.success());
    PINNED.store(ok, Ordering::Relaxed);
    ok
}

struct Server {
    child: Child,
    addr: SocketAddr,
    _dir: std::path::PathBuf,
    /// Its own CPU accounting group (see `serve::acct_group`).
    acct: Option<std::path::PathBuf>,
}

impl Server {
    fn start(role: &str, extra: &[&str]) -> Server {
        Server::start_from(&std::env::current_exe().unwrap(), role, extra, &[])
    }

    fn start_with_env(role: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_from(&std::env::current_exe().unwrap(), role, extra, env)
    }

    /// Runs `exe` (this program, or a copy the bench deploys over) in `role`.
    fn start_from(exe: &std::path::Path, role: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let dir = std::env::temp_dir().join(format!("baton-bench-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        // Joins the capped group and its own accounting group before it becomes the server
        // (`exec` keeps the pid). The cap must hold (the server does not start otherwise); the
        // accounting group is checked below and done without if the server is not in it.
        let acct = serve::acct_group(&format!("s-{}-{port}", std::process::id()));
        let cap = serve::cpu_cap();
        if cap.is_some() || acct.is_some() {
            let script = "if [ -n \"$BENCH_CAP\" ]; then echo $$ > \"$BENCH_CAP\" || exit 1; fi; \
                          if [ -n \"$BENCH_ACCT\" ]; then echo $$ 2>/dev/null > \"$BENCH_ACCT\"; fi; \
                          unset BENCH_CAP BENCH_ACCT; exec \"$@\"";
            argv.extend(["sh".into(), "-c".into(), script.into(), "sh".into()]);
        }
        // Stopped (TERM) when the bench dies, however it dies (killed, or a closed pipe): a
        // server left behind would hold its port and memory. Every server is started by the
        // main thread, whose exit is the process's.
        static SETPRIV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *SETPRIV.get_or_init(|| {
            Command::new("setpriv").args(["--pdeathsig", "TERM", "true"]).output().is_ok_and(|o| o.status.success())
        }) {
            argv.extend(["setpriv".into(), "--pdeathsig".into(), "TERM".into()]);
        }
        if PINNED.load(Ordering::Relaxed) {
            argv.extend(["taskset".into(), "-c".into(), "0".into()]);
        }
        argv.push(exe.into());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd.env("BENCH_ROLE", role).env("BENCH_ADDR", addr.to_string()).current_dir(&dir).envs(env.iter().copied());
        if let Some(procs) = cap {
            cmd.env("BENCH_CAP", procs);
        }
        if let Some(g) = &acct {
            cmd.env("BENCH_ACCT", g.join("cgroup.procs"));
        }
        match role {
            "baton" => {
                cmd.args(["run", "--listen", &addr.to_string(), "--delay", "0"]).args(extra);
            }
            "baton-ablation" => {
                cmd.args(["run", "--listen", &addr.to_string()]).args(extra);
            }
            _ => {}
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(dir.join("stderr.log")).unwrap());
        let child = cmd.spawn().unwrap();
        // Until it answers a request, not merely accepts a connection: baton's master listens
        // before its worker serves, and requests sent in between wait for the worker's start
        // (1.6-1.8 ms here, enough to be the maximum latency). Over TLS, until it accepts a
        // connection.
        let tls = role == "axum-tls" || extra.contains(&"--tls-cert");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(if tls { std::net::TcpStream::connect(addr).is_ok() } else { answers(addr) }) {
            assert!(Instant::now() < deadline, "{role} did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Counted by its group only if it did join it (else from `/proc`).
        let pid = child.id().to_string();
        let acct = acct.filter(|g| {
            std::fs::read_to_string(g.join("cgroup.procs")).is_ok_and(|procs| procs.lines().any(|p| p == pid))
        });
        Server { child, addr, _dir: dir, acct }
    }

    /// CPU time (user + system) of the server, every process and thread it had, in seconds:
    /// its accounting group's when it has one, else from `/proc` (live processes only).
    fn cpu_secs(&self) -> f64 {
        self.cpu().total()
    }

    /// [`Server::cpu_secs`], in user space and in the kernel.
    fn cpu(&self) -> Cpu {
        self.acct.as_deref().and_then(serve::acct_cpu).unwrap_or_else(|| proc_cpu(self.pid()))
    }

    /// sh and taskset exec the server in place, so this is the server's (or master's) pid.
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
        if let Some(g) = &self.acct {
            serve::remove_acct_group(g);
        }
    }
}

fn cfg(addr: SocketAddr, secs: u64) -> load::Config {
    load::Config { max_time: Duration::from_secs(secs), ..load::Config::hello(addr, load::Mode::KeepAlive, CONNS) }
}

struct Run {
    stats: load::Stats,
    secs: f64,
    /// Server CPU time (user + system, all its processes) per request, in microseconds.
    cpu_us: f64,
}

/// CPU time, in seconds.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    /// In user space.
    user: f64,
    /// In the kernel (system calls, and the interrupts and soft interrupts that ran in the
    /// process's time: on loopback, the receiving side of the packets it sends).
    sys: f64,
}

impl Cpu {
    fn total(self) -> f64 {
        self.user + self.sys
    }
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu { user: self.user - o.user, sys: self.sys - o.sys }
    }
}

/// CPU time of `pid` and its children (100 Hz ticks).
fn proc_cpu(pid: i32) -> Cpu {
    let ticks = |p: i32| -> (u64, u64) {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|s| {
                let f: Vec<u64> = s.rsplit_once(')')?.1.split_whitespace().filter_map(|x| x.parse().ok()).collect();
                // After the state field: ppid(0) ... utime is field 14 overall, index 10 here.
                Some((*f.get(10)?, *f.get(11)?))
            })
            .unwrap_or((0, 0))
    };
    let (mut user, mut sys) = ticks(pid);
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let ppid = std::fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse::<i32>().ok());
        if ppid == Some(pid) {
            let (u, s) = ticks(p);
            user += u;
            sys += s;
        }
    }
    Cpu { user: user as f64 / 100.0, sys: sys as f64 / 100.0 }
}

impl Run {
    fn rps(&self) -> f64 {
        self.stats.ok as f64 / self.secs
    }
}

fn drive(rt: &tokio::runtime::Runtime, server: &Server, secs: u64) -> Run {
    let t0 = Instant::now();
    let c0 = server.cpu_secs();
    let stats = rt.block_on(load::run(cfg(server.addr, secs), Arc::default()));
    let cpu = server.cpu_secs() - c0;
    let cpu_us = cpu * 1e6 / stats.ok.max(1) as f64;
    Run { stats, secs: t0.elapsed().as_secs_f64(), cpu_us }
}

fn us(d: Duration) -> String {
    format!("{:.0}us", d.as_secs_f64() * 1e6)
}

fn line(name: &str, r: &Run) {
    println!(
        "  {name:<28} {:>9.0} req/s  server CPU {:>7}/req  p50 {:>7}  p99 {:>7}  max {:>8}  requests {:>8}  failed {}",
        r.rps(),
        // Not measurable across a reload storm: the workers come and go.
        if r.cpu_us.is_finite() { format!("{:.1}us", r.cpu_us) } else { "n/a".to_owned() },
        us(r.stats.quantile(0.5)),
        us(r.stats.quantile(0.99)),
        us(r.stats.quantile(1.0)),
        r.stats.ok,
        r.stats.failed
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn serve_bench(rt: &tokio::runtime::Runtime) {
    const ROUNDS: usize = 5;
    println!(
        "serve: hello router, --delay 0, {CONNS} keep-alive connections, 5 s per run, {ROUNDS} alternating rounds"
    );
    println!(" (compare within a round; the medians are the figures. Server CPU per request is the framework's cost;");
    println!("  throughput is often bound by the load client and varies by up to a third between identical rounds)");
    let names = ["plain axum::serve", "baton (access log off)", "baton (default, access log)"];
    let mut rps: [Vec<f64>; 3] = Default::default();
    let mut cpu: [Vec<f64>; 3] = Default::default();
    for round in 1..=ROUNDS {
        println!(" round {round}");
        for (i, name) in names.iter().enumerate() {
            let server = match i {
                0 => Server::start("axum", &[]),
                1 => Server::start("baton", &["--access-log", "off"]),
                _ => Server::start("baton", &["-l", "access.log"]),
            };
            drive(rt, &server, 1); // warm-up
            let r = drive(rt, &server, 5);
            line(name, &r);
            rps[i].push(r.rps());
            cpu[i].push(r.cpu_us);
        }
    }
    for i in 1..3 {
        let tput: Vec<f64> = (0..ROUNDS).map(|r| rps[i][r] / rps[0][r]).collect();
        let cost: Vec<f64> = (0..ROUNDS).map(|r| cpu[i][r] / cpu[0][r]).collect();
        println!(
            " {}: median throughput ratio vs plain axum {:.3} (rounds {:?}); median server CPU/request ratio {:.3}",
            names[i],
            median(tput.clone()),
            tput.iter().map(|x| (x * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
            median(cost)
        );
    }
}

/// `(RSS, private, PSS)` in KiB. RSS counts the clean pages of the binary and libc that the
/// process has mapped, which it shares with its workers and the page cache; private memory
/// (anonymous and dirty pages) is what the process alone costs, and PSS splits the shared
/// pages among their users.
fn mem_kib(pid: i32) -> (u64, u64, u64) {
    let field = |file: &str, name: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with(name)).map(str::to_owned))
            .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            .unwrap_or(0)
    };
    let private = field("smaps_rollup", "Private_Clean:") + field("smaps_rollup", "Private_Dirty:");
    (field("status", "VmRSS:"), private, field("smaps_rollup", "Pss:"))
}

fn get_pid(addr: SocketAddr) -> Option<i32> {
    http_get(addr, "/pid")?.split("\r\n\r\n").nth(1)?.trim().parse().ok()
}

fn reload_bench(rt: &tokio::runtime::Runtime) {
    let server = Server::start("baton", &["--access-log", "off"]);
    let master = server.pid();
    println!("reload: {CONNS} keep-alive connections, 15 s quiet, then 15 s with a reload every 0.5 s");
    drive(rt, &server, 2);
    let quiet = drive(rt, &server, 15);
    line("quiet", &quiet);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopper = stop.clone();
    let reloader = std::thread::spawn(move || {
        let mut n = 0;
        while !stopper.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(500));
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(master), nix::sys::signal::Signal::SIGUSR2);
            n += 1;
        }
        n
    });
    let t0 = Instant::now();
    let storm_stats = rt.block_on(load::run(cfg(server.addr, 15), Arc::default()));
    let storm = Run { stats: storm_stats, secs: t0.elapsed().as_secs_f64(), cpu_us: f64::NAN };
    stop.store(true, Ordering::Relaxed);
    let reloads = reloader.join().unwrap();
    line(&format!("storm ({reloads} reloads)"), &storm);
    println!(
        "  failed during storm: {} (requests never sent by the client library: {})",
        storm.stats.failed,
        storm.stats.unsent + storm.stats.unsent_goaway
    );
    println!(
        "  p99 storm/quiet: {:.2}   throughput storm/quiet: {:.3}",
        storm.stats.quantile(0.99).as_secs_f64() / quiet.stats.quantile(0.99).as_secs_f64(),
        storm.rps() / quiet.rps()
    );
    // Worker RSS under load, master RSS.
    let worker = get_pid(server.addr).unwrap_or(0);
    let ctl = Arc::new(load::Control::default());
    let bg = rt.spawn(load::run(cfg(server.addr, 5), ctl.clone()));
    std::thread::sleep(Duration::from_secs(2));
    let (m, w) = (mem_kib(master), mem_kib(worker));
    ctl.stop.store(true, Ordering::SeqCst);
    let _ = rt.block_on(bg);
    println!(
        "  memory (KiB): master RSS {} (private {}, PSS {}); worker under load RSS {} (private {}, PSS {})",
        m.0, m.1, m.2, w.0, w.1, w.2
    );
    // Reload latency: signal -> the new worker answers (idle server, 20 samples).
    std::thread::sleep(Duration::from_millis(500));
    let mut lat = Vec::new();
    for _ in 0..20 {
        let before = get_pid(server.addr).unwrap();
        let t = Instant::now();
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(master), nix::sys::signal::Signal::SIGUSR2);
        loop {
            if let Some(p) = get_pid(server.addr) {
                if p != before && p != master {
                    break;
                }
            }
            assert!(t.elapsed() < Duration::from_secs(10), "reload did not happen");
        }
        lat.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    lat.sort();
    println!(
        "  reload latency (USR2 until the new worker answers): median {:.1} ms, min {:.1} ms, max {:.1} ms",
        lat[lat.len() / 2].as_secs_f64() * 1e3,
        lat[0].as_secs_f64() * 1e3,
        lat[lat.len() - 1].as_secs_f64() * 1e3
    );
}

/// Medians over 10 trials each: a SIGKILLed worker until its replacement answers; a new
/// binary that crashes during its probation until the last good one answers again.
fn recovery_bench() {
    let dir = std::env::temp_dir().join(format!("baton-bench-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let app = dir.join("app");
    std::fs::copy(std::env::current_exe().unwrap(), &app).unwrap();
    let server = Server::start_from(&app, "baton", &["--access-log", "off", "--probation", "5s"], &[]);
    let wait_other = |not: &[i32]| {
        let t = Instant::now();
        loop {
            if let Some(p) = get_pid(server.addr) {
                if !not.contains(&p) {
                    return p;
                }
            }
            assert!(t.elapsed() < Duration::from_secs(30), "no replacement");
        }
    };
    let gone = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()) == Some("Z"))
    };
    let mut crash = Vec::new();
    for _ in 0..10 {
        let old = get_pid(server.addr).unwrap();
        let t = Instant::now();
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), nix::sys::signal::Signal::SIGKILL);
        wait_other(&[old]);
        crash.push(t.elapsed().as_secs_f64() * 1e3);
        // Past the crash backoff's hold-off (1 s), so every trial starts from the same delay.
        std::thread::sleep(Duration::from_millis(1100));
    }
    let crashing = dir.join("crashing");
    let exe = std::env::current_exe().unwrap();
    std::fs::write(
        &crashing,
        format!(
            "#!/bin/sh\ncase \"$1\" in run) exec {} \"$@\" --crash-after 300ms;; *) exec {} \"$@\";; esac\n",
            exe.display(),
            exe.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&crashing, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut revert = Vec::new();
    for _ in 0..10 {
        let old = get_pid(server.addr).unwrap();
        let staged = dir.join("staged");
        std::fs::copy(&crashing, &staged).unwrap();
        std::fs::rename(&staged, &app).unwrap();
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(server.pid()), nix::sys::signal::Signal::SIGUSR2);
        let bad = wait_other(&[old]);
        while !gone(bad) {
            std::thread::sleep(Duration::from_micros(200));
        }
        let t = Instant::now();
        wait_other(&[old, bad]);
        revert.push(t.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(300));
    }
    println!(
        "  recovery (median of 10): worker SIGKILL until the replacement answers {:.1} ms; \
         a new binary crashing in probation until the last good one answers {:.1} ms",
        median(crash),
        median(revert)
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
