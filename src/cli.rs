//! The command line every baton app gets: `run`, `start`, `stop`, `reload`, `status`,
//! `reopen-logs`, and the serving options.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use baton_supervise::control::{self, protocol::Command as ControlCommand};
use baton_supervise::listen::{ListenSpec, ListenSpecs};
use baton_supervise::{Error, ErrorKind, MasterConfig, Result};
use clap::{Args, Parser, Subcommand};

use crate::access_log;

/// The parsed command line of an app with its own flags `A`.
#[derive(Debug, Parser)]
#[command(about = None, long_about = None)]
pub(crate) struct Cli<A: Args> {
    #[command(subcommand)]
    pub(crate) command: Command<A>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command<A: Args> {
    /// Serve in the foreground (terminal, systemd Type=notify, containers). The default.
    Run(ServeArgs<A>),
    /// Daemonize; returns once the server serves (exit 0) or with the reason (exit 1).
    Start(ServeArgs<A>),
    /// Graceful shutdown of a running daemon; waits until it exited.
    Stop(ControlArgs),
    /// Zero-downtime reload; exits 0 only once the new worker serves.
    Reload(ReloadArgs),
    /// Show pid, uptime, generation, workers, listeners, requests and reloads since start (LSB
    /// exit codes: 0 running, 1 dead with pid file, 3 not running, 4 no worker serves, or no
    /// answer within --timeout).
    Status(StatusArgs),
    /// Reopen the log file (after logrotate moved it).
    ReopenLogs(ControlArgs),
}

/// `run` and `start`: the app's own flags plus the serving options.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs<A: Args> {
    #[command(flatten)]
    pub(crate) app: A,
    #[command(flatten)]
    pub(crate) opts: ServeOpts,
}

/// The app's flags that clash with baton's (`-p` for a port would silently be the pid file):
/// a clear error at start-up in every build, instead of clap's debug-only assertion.
pub(crate) fn clashes<A: Args>() -> Vec<String> {
    let mine = ServeOpts::augment_args(clap::Command::new("baton"));
    let theirs = A::augment_args(clap::Command::new("app"));
    let mut out = Vec::new();
    for a in theirs.get_arguments() {
        for b in mine.get_arguments() {
            let long = a.get_long().is_some() && a.get_long() == b.get_long();
            let short = a.get_short().is_some() && a.get_short() == b.get_short();
            let id = a.get_id() == b.get_id();
            if long || short || id {
                out.push(format!("the app's flag {} clashes with baton's {}", describe(a), describe(b)));
            }
        }
    }
    out
}

fn describe(a: &clap::Arg) -> String {
    match (a.get_short(), a.get_long()) {
        (Some(s), Some(l)) => format!("-{s}/--{l}"),
        (None, Some(l)) => format!("--{l}"),
        (Some(s), None) => format!("-{s}"),
        (None, None) => a.get_id().to_string(),
    }
}

/// Options of `stop`, `reload`, `status` and `reopen-logs`.
#[derive(Debug, Args, Clone)]
pub(crate) struct ControlArgs {
    /// Pid file of the running instance. Default is `<app>.pid` in the current directory.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) pid: Option<PathBuf>,
    /// How long to wait for the outcome (above 0). Default: 90s; then `reload` waits on while the master
    /// answers `status` (its `--ready-timeout` ends a start), and `stop` until the master's
    /// own deadline if that is later (`--shutdown-delay` + `--drain-timeout`, twice the drain
    /// timeout with a shutdown hook, + 5s, then 10s for it to exit)
    #[arg(long, value_name = "DURATION", value_parser = parse_control_timeout)]
    pub(crate) timeout: Option<Duration>,
}

/// `status`'s options.
#[derive(Debug, Args, Clone)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub(crate) control: ControlArgs,
    /// One JSON object instead of text (fields: docs/metrics.md).
    #[arg(long)]
    pub(crate) json: bool,
}

/// `reload`'s options.
#[derive(Debug, Args, Clone)]
pub(crate) struct ReloadArgs {
    #[command(flatten)]
    pub(crate) control: ControlArgs,
    /// Wait until the new binary passed its probation (`--probation`): exit 1 if it was rolled
    /// back meanwhile, with the reason.
    #[arg(long)]
    pub(crate) wait_probation: bool,
}

/// Options shared by `run` and `start`, under their own heading in `--help` (the app's own
/// flags come first).
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Server options")]
pub(crate) struct ServeOpts {
    /// Address to serve on: `[NAME=]IP:PORT` or `[NAME=]unix:/path`; repeatable.
    /// Default: the app's (see `App::default_listen`).
    #[arg(long = "listen", value_name = "[NAME=]ADDR")]
    pub(crate) listen: Vec<ListenSpec>,
    /// Log file (master, workers, access log). `run` logs to stderr without it;
    /// `start` defaults to `<app>.log` in the current directory.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) log: Option<PathBuf>,
    /// Pid file, locked while the master lives. `start` defaults to `<app>.pid`.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) pid: Option<PathBuf>,
    /// Run workers as this user (the master keeps its privileges to bind and reload).
    #[arg(long, value_name = "USER")]
    pub(crate) user: Option<String>,
    /// Run workers with this group (needs `--user`). Default is the user's primary group.
    #[arg(long, value_name = "GROUP", requires = "user")]
    pub(crate) group: Option<String>,
    /// How long a shutdown or reload lets in-flight requests finish before cutting them
    /// (above 0).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_drain_timeout)]
    pub(crate) drain_timeout: Duration,
    /// How long a new worker may take to report ready before the reload is rolled back
    /// (above 0).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_ready_timeout)]
    pub(crate) ready_timeout: Duration,
    /// On TERM, first answer 503 on the health route and keep serving this long, then drain.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub(crate) shutdown_delay: Duration,
    /// Long-lived connections (WebSockets through `baton::ws`, event streams through
    /// `baton::sse`) are closed each at its own random moment within this long after the drain
    /// starts, so their clients do not all reconnect in the same millisecond. Default: a third
    /// of `--drain-timeout`; at most `--drain-timeout`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) drain_spread: Option<Duration>,
    /// At most this many old generations draining at once: a further reload waits for a slot,
    /// and the oldest is told to close its long-lived connections now (its requests finish).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_draining: u32,
    /// After a reload, the new binary is on probation this long: if it crashes (or fails the
    /// watchdog) meanwhile, the last good binary is started again. `0` turns it off.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub(crate) probation: Duration,
    /// A serving worker whose runtime sends no heartbeat for this long (a blocked runtime, an
    /// endless loop, SIGSTOP) is killed and replaced. `0` turns it off.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) watchdog: Duration,
    /// Before a new worker reports ready, it sends `GET PATH` through its own app (in-process,
    /// with every production default); any answer but 2xx fails the start (and rolls a reload
    /// back) with the status and the start of the body. Off by default.
    #[arg(long, value_name = "PATH")]
    pub(crate) ready_probe: Option<String>,
    /// A configuration file for the app (`baton::config()`), read by every new worker at its
    /// start: a reload applies a change, and a worker that cannot read it (or whose factory
    /// rejects it) fails, so the reload is rolled back with the reason. Off by default.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// One process, no master: no reload, graceful shutdown only. Refused with the master's
    /// own options (`-p`, `--ready-timeout`, `--max-draining`, `--probation`, `--watchdog`).
    // Refused rather than ignored: `-p` ignored left no pid file, so `status -p` and `stop -p`
    // answered "not running" while the process served.
    #[arg(long, conflicts_with_all = ["pid", "ready_timeout", "max_draining", "probation", "watchdog"])]
    pub(crate) no_master: bool,
    /// Access log format: `combined`, `json` or `off`.
    #[arg(long, value_name = "FORMAT", default_value = "combined")]
    pub(crate) access_log: access_log::Format,
    /// Cut a request whose response has not started after this long (503); `0` disables.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub(crate) request_timeout: Duration,
    /// Close an HTTP/1 connection whose request head has not arrived after this long; `0` disables.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) header_timeout: Duration,
    /// Close a connection (HTTP/1 keep-alive or HTTP/2) that had no request in flight this long;
    /// `0` disables.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub(crate) idle_timeout: Duration,
    /// Cut a request body that does not keep up 1 KiB/s on average once this long has passed
    /// since its request began (a body trickling a byte a second is cut, a slow upload is not);
    /// the app's extractor then fails. `0` disables.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) body_timeout: Duration,
    /// Close a connection whose client accepted no response bytes for this long (a client
    /// that stopped reading: slow read, as nginx's `send_timeout`; a WebSocket's `send` fails
    /// instead); `0` disables.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub(crate) send_timeout: Duration,
    /// Most header fields in an HTTP/1 request; more gets 431.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) max_headers: u32,
    /// Largest request head (request line + headers) in bytes (or with `KiB`, `MiB`); larger
    /// gets 431. Minimum 8KiB.
    #[arg(long, value_name = "BYTES", default_value_t = 32 * 1024, value_parser = parse_header_bytes)]
    pub(crate) max_header_bytes: u32,
    /// Largest request body in bytes (or with `KiB`, `MiB`, `GiB`: `10MiB`); larger gets 413.
    /// `off`: no limit (one in front, or the routes' own `baton::BodyLimit`, may still apply).
    #[arg(long, value_name = "BYTES", default_value_t = 2 * 1024 * 1024, value_parser = parse_body_bytes)]
    pub(crate) max_body_bytes: u64,
    /// Set TCP_NODELAY on accepted connections: lower latency for responses streamed in many
    /// small writes (server-sent events), some throughput for small responses. Off by default,
    /// as in `axum::serve`.
    #[arg(long)]
    pub(crate) tcp_nodelay: bool,
    /// Serve TLS on every TCP listener with this PEM certificate chain (leaf first); needs
    /// `--tls-key`. ALPN offers `h2` and `http/1.1`. Unix sockets stay plain. Read by each new
    /// worker, so a reload picks up a renewed certificate.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert` (PKCS#8, PKCS#1 or SEC1). Read before workers drop
    /// privileges, so it may be readable by root only.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Serve Prometheus metrics (`GET /metrics`, text format 0.0.4) on this address
    /// (`IP:PORT`, `:PORT` or `unix:/path`; e.g. `127.0.0.1:9100`). The counters live in the
    /// master and survive reloads and crashes. Off by default.
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_listen)]
    pub(crate) metrics_listen: Option<baton_supervise::listen::ListenSpec>,
    /// A load balancer or reverse proxy whose `X-Forwarded-For` names the client for the access
    /// log and the app (`baton::ClientIp`): an address (`10.0.0.7`), a network (`10.0.0.0/8`, `fd00::/8`) or `unix` (requests
    /// over unix sockets); repeatable, or separated by commas. From a trusted peer, the header
    /// is read from the right, past every trusted address, to the first that is not (as
    /// nginx's `real_ip_recursive`). Off by default: the header is anyone's to send.
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    pub(crate) trusted_proxy: Vec<crate::service::Proxy>,
    /// Health route answering 200, and 503 once shutting down (e.g. `/healthz`), ahead of the
    /// app's routes (an app route at that path is never reached). Off by default.
    #[arg(long, value_name = "PATH")]
    pub(crate) health_path: Option<String>,
    /// Whether the health route's answers are written to the access log: `off` leaves them out
    /// (a load balancer's probes every few seconds), still counted in the metrics.
    #[arg(long, value_name = "ON|OFF", default_value = "on")]
    pub(crate) health_log: OnOff,
}

/// A switch given as a value (`--health-log off`), so that an app's default can be turned
/// either way on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OnOff {
    On,
    Off,
}

impl ControlArgs {
    /// Runs `cmd` against the running instance and prints the outcome.
    pub(crate) fn run(self, name: &str, cmd: ControlCommand) -> Result<ExitCode> {
        control::client::run(name, cmd, self.pid, self.timeout)
    }
}

impl ServeOpts {
    /// `--drain-spread`, or its default: a third of the drain timeout.
    pub(crate) fn drain_spread(&self) -> Result<Duration> {
        match self.drain_spread {
            None => Ok(self.drain_timeout / 3),
            Some(d) if d > self.drain_timeout => Err(Error::usage(format!(
                "--drain-spread {d:?} is longer than --drain-timeout {:?}: connections would be cut before their turn",
                self.drain_timeout
            ))),
            Some(d) => Ok(d),
        }
    }

    /// What the master needs. TLS paths are made absolute here (the daemon changes to `/`) and
    /// reach each worker through its environment; the master itself never reads them.
    /// `shutdown_hook`: the app has one (`App::on_shutdown`), which a worker gives
    /// `--drain-timeout` after its drain, so the master waits that much longer before SIGKILL.
    pub(crate) fn master_config(
        &self,
        name: &str,
        daemon: bool,
        listen: ListenSpecs,
        shutdown_hook: bool,
    ) -> Result<MasterConfig> {
        // Where `start` was run: a daemon's workers run in `/` (see `baton::launch_dir`).
        let here = std::env::current_dir().map_err(|e| Error::io(ErrorKind::Io, "current directory", e))?;
        let mut worker_env = vec![(OsString::from(crate::ENV_LAUNCH_DIR), here.into_os_string())];
        for (var, path, what) in [
            (ENV_TLS_CERT, &self.tls_cert, "TLS certificate"),
            (ENV_TLS_KEY, &self.tls_key, "TLS key"),
            (ENV_CONFIG, &self.config, "config file"),
        ] {
            if let Some(p) = path {
                let abs = std::path::absolute(p)
                    .map_err(|e| Error::io(ErrorKind::Usage, format!("{what} {}", p.display()), e))?;
                worker_env.push((OsString::from(var), abs.into_os_string()));
            }
        }
        Ok(MasterConfig {
            name: name.to_owned(),
            daemon,
            listen,
            pid: self.pid.clone(),
            log: self.log.clone(),
            user: self.user.clone(),
            group: self.group.clone(),
            ready_timeout: self.ready_timeout,
            drain_timeout: self.drain_timeout,
            shutdown_delay: self.shutdown_delay,
            after_drain: if shutdown_hook { self.drain_timeout } else { Duration::ZERO },
            max_draining: self.max_draining,
            probation: self.probation,
            watchdog: Some(self.watchdog).filter(|w| !w.is_zero()),
            worker_env,
        })
    }

    /// `--config`: as the master passed it to this worker (absolute), or as given.
    pub(crate) fn config_path(&self, under_master: bool) -> Option<PathBuf> {
        worker_path(ENV_CONFIG, &self.config, under_master).and_then(|p| std::path::absolute(p).ok())
    }

    /// `--tls-cert` and `--tls-key`: as the master passed them to this worker (absolute), or as
    /// given (`--no-master`).
    #[cfg(feature = "tls")]
    pub(crate) fn tls_paths(&self, under_master: bool) -> Option<(PathBuf, PathBuf)> {
        worker_path(ENV_TLS_CERT, &self.tls_cert, under_master).zip(worker_path(
            ENV_TLS_KEY,
            &self.tls_key,
            under_master,
        ))
    }
}

/// A path option in a worker: under a master, the absolute path [`ServeOpts::master_config`]
/// passed in `var` (the daemon runs in `/`); alone, the value given.
fn worker_path(var: &str, given: &Option<PathBuf>, under_master: bool) -> Option<PathBuf> {
    if under_master { std::env::var_os(var).map(PathBuf::from) } else { given.clone() }
}

/// `--config` made absolute by `run`/`start`, for the workers.
const ENV_CONFIG: &str = "BATON_CONFIG";
/// `--tls-cert` and `--tls-key` made absolute by `run`/`start`, for the workers.
const ENV_TLS_CERT: &str = "BATON_TLS_CERT";
const ENV_TLS_KEY: &str = "BATON_TLS_KEY";

/// `--metrics-listen`: an address, as `--listen` takes it but without a name.
fn parse_metrics_listen(s: &str) -> std::result::Result<baton_supervise::listen::ListenSpec, String> {
    if s.contains('=') {
        return Err(format!("invalid address {s:?}: --metrics-listen takes no name"));
    }
    let mut spec: baton_supervise::listen::ListenSpec = s.parse()?;
    spec.name = baton_supervise::listen::METRICS_LISTENER.to_owned();
    Ok(spec)
}

/// Parses `500ms`, `30s`, `2m`, `1h` or a plain number of seconds (`0` included), with up to
/// nine decimals (`1.5s`, `0.25ms`), exactly: in decimal, not through a float. Terms add up,
/// as in Go's `time.ParseDuration`: `1h30m`, `1m30.5s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const NS: u128 = 1_000_000_000;
    let s = s.trim();
    if s.starts_with('-') {
        return Err(format!("invalid duration {s:?}: cannot be negative"));
    }
    let too_large = || format!("invalid duration {s:?}: too large (at most a year)");
    let number = |c: char| c.is_ascii_digit() || c == '.';
    let mut rest = s;
    let mut total: u128 = 0;
    loop {
        let (num, tail) = rest.split_at(rest.find(|c: char| !number(c)).unwrap_or(rest.len()));
        let (unit, next) = tail.split_at(tail.find(number).unwrap_or(tail.len()));
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if int.is_empty() && frac.is_empty() || frac.contains('.') {
            return Err(format!("invalid duration {s:?}: expected e.g. 500ms, 30s, 2m, 1h, 1h30m"));
        }
        let unit_ns: u128 = match unit {
            // A plain number is seconds, alone; each term of several names its unit.
            "" if num.len() == s.len() => NS,
            "s" => NS,
            "ms" => NS / 1000,
            "m" => 60 * NS,
            "h" => 3600 * NS,
            "" => return Err(format!("invalid duration {s:?}: {num:?} needs a unit (ms, s, m, h)")),
            _ => {
                return Err(format!("invalid duration {s:?}: unknown unit {unit:?} (ms, s, m, h)"));
            }
        };
        if frac.len() > 9 {
            return Err(format!("invalid duration {s:?}: at most 9 decimals"));
        }
        // Digits only (checked above): a parse fails only by overflowing.
        let int: u128 = if int.is_empty() { 0 } else { int.parse().map_err(|_| too_large())? };
        let frac: u128 = if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().map_err(|_| too_large())? };
        // The value times 10^9, in the unit; then in nanoseconds.
        let scaled = int.checked_mul(NS).and_then(|i| i.checked_add(frac)).ok_or_else(too_large)?;
        let ns = scaled.checked_mul(unit_ns).ok_or_else(too_large)? / NS;
        if ns == 0 && scaled > 0 {
            // Zero turns a timeout off: a small value must not.
            return Err(format!("invalid duration {s:?}: under a nanosecond"));
        }
        total = total.checked_add(ns).ok_or_else(too_large)?;
        if total > 365 * 86400 * NS {
            return Err(too_large());
        }
        if next.is_empty() {
            return Ok(Duration::from_nanos(total as u64));
        }
        rest = next;
    }
}

/// A duration as [`parse_duration`] reads it, in the largest unit that writes it exactly
/// (`7s`, not `7000ms`; `1500ms`; below a millisecond, `0.25ms`): for defaults shown in `--help`.
pub(crate) fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    for (unit, per) in [("h", 3_600_000_000_000u128), ("m", 60_000_000_000), ("s", 1_000_000_000), ("ms", 1_000_000)] {
        if ns % per == 0 {
            return format!("{}{unit}", ns / per);
        }
    }
    let frac = format!("{:06}", ns % 1_000_000);
    format!("{}.{}ms", ns / 1_000_000, frac.trim_end_matches('0'))
}

/// Parses a size: bytes (`65536`), or a whole number with `KiB`, `MiB` or `GiB` (or `K`, `M`,
/// `G`, as nginx writes them; all powers of 1024). `KB`, `MB` and `GB` are refused as
/// ambiguous. For an app's own flags too: `value_parser = baton::parse_bytes`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!("invalid size {s:?}: cannot be negative"));
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let expected = "expected bytes, or a whole number with KiB, MiB or GiB (e.g. 512KiB, 10MiB)";
    let value: u64 = num.parse().map_err(|_| format!("invalid size {s:?}: {expected}"))?;
    let shift = match unit.trim_start() {
        "" | "B" => 0,
        "K" | "k" | "KiB" => 10,
        "M" | "m" | "MiB" => 20,
        "G" | "g" | "GiB" => 30,
        "KB" | "kB" | "MB" | "GB" => {
            return Err(format!("invalid size {s:?}: {unit:?} is ambiguous (1000 or 1024?): write KiB, MiB or GiB"));
        }
        _ => return Err(format!("invalid size {s:?}: unknown unit {unit:?} ({expected})")),
    };
    value.checked_mul(1 << shift).ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// `--max-body-bytes`: a size, or `off` (no limit: `u64::MAX`, which no body reaches).
fn parse_body_bytes(s: &str) -> Result<u64, String> {
    match s.trim() {
        "off" => Ok(u64::MAX),
        // A word (`none`, `unlimited`): the one word taken is named; a number keeps its error.
        t if t.starts_with(|c: char| c.is_ascii_alphabetic()) => {
            Err(format!("invalid size {s:?}: expected bytes, a whole number with KiB, MiB or GiB (e.g. 10MiB), or off"))
        }
        _ => parse_bytes(s),
    }
}

/// `--drain-timeout`: unlike the request's timeouts, 0 cannot turn it off (it would cut every
/// request in flight at once).
fn parse_drain_timeout(s: &str) -> Result<Duration, String> {
    above_zero(s, "requests in flight need time to finish (QUIT cuts them at once)")
}

/// `--ready-timeout`: 0 cannot turn it off (it would kill every new worker at once).
fn parse_ready_timeout(s: &str) -> Result<Duration, String> {
    above_zero(s, "a new worker needs time to start")
}

/// A control command's `--timeout`: 0 would read as "no wait" to some and as "no limit" to
/// others (and `status` answered while `stop` gave up at once), so it is refused.
fn parse_control_timeout(s: &str) -> Result<Duration, String> {
    above_zero(s, "leave --timeout out for the default")
}

/// A duration that must not be 0, with `why` as the reason.
fn above_zero(s: &str, why: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("must be above 0: {why}")),
        d => Ok(d),
    }
}

/// `--max-header-bytes`: a size from 8 KiB (hyper's smallest read buffer) to 4 GiB - 1.
fn parse_header_bytes(s: &str) -> Result<u32, String> {
    let n = parse_bytes(s)?;
    if n < 8192 {
        return Err(format!("{s:?} is below the minimum, 8KiB (8192)"));
    }
    u32::try_from(n).map_err(|_| format!("invalid size {s:?}: at most 4GiB - 1"))
}

/// baton's subcommands: names an app's own subcommands may not take.
pub(crate) const SUBCOMMANDS: &[&str] = &["run", "start", "stop", "reload", "status", "reopen-logs", "help"];

/// Without a subcommand the app serves in the foreground: `hello --delay 0` is `hello run --delay 0`.
/// The app's own subcommands (`app`) are left alone too.
pub(crate) fn with_default_subcommand(mut argv: Vec<OsString>, app: &[&str]) -> Vec<OsString> {
    let first = argv.get(1).and_then(|a| a.to_str()).map(str::to_owned);
    let insert = match first.as_deref() {
        None => true,
        Some("-h" | "--help" | "-V" | "--version") => false,
        Some(a) => !SUBCOMMANDS.contains(&a) && !app.contains(&a),
    };
    if insert {
        argv.insert(1.min(argv.len()), "run".into());
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5x").unwrap_err().contains("5x"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").unwrap_err().contains("cannot be negative"));
        assert!(parse_duration("1e99h").is_err());
        // Exact, in decimal.
        assert_eq!(parse_duration("0.25ms"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("1.000000001s"), Ok(Duration::new(1, 1)));
        assert_eq!(parse_duration(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2.s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("365d").unwrap_err(), "invalid duration \"365d\": unknown unit \"d\" (ms, s, m, h)");
        for (bad, why) in [
            (".", "expected e.g. 500ms"),
            ("1.2.3s", "expected e.g. 500ms"),
            ("s", "expected e.g. 500ms"),
            ("1.0000000001s", "at most 9 decimals"),
            ("0.0000001ms", "under a nanosecond"),
            ("8761h", "too large"),
            ("99999999999999999999999999999999999999999s", "too large"),
            // Terms of several.
            ("1m30", "\"30\" needs a unit (ms, s, m, h)"),
            ("1h30x", "unknown unit \"x\""),
            ("8759h61m", "too large"),
            ("1h.", "expected e.g. 500ms"),
            ("1h-5m", "unknown unit \"h-\""),
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.starts_with(&format!("invalid duration {bad:?}: {why}")), "{bad}: {e}");
        }
        assert_eq!(parse_duration("8760h"), Ok(Duration::from_secs(365 * 86400)));
        // Terms add up, as Go writes durations.
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1m30.5s"), Ok(Duration::from_millis(90_500)));
        assert_eq!(parse_duration("2s500ms"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("8759h60m"), Ok(Duration::from_secs(365 * 86400)));
    }

    #[test]
    fn durations_are_written_as_they_are_read() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(7), "7s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_micros(250), "0.25ms"),
            (Duration::from_nanos(1), "0.000001ms"),
            (Duration::new(1, 1), "1000.000001ms"),
        ];
        for (d, text) in cases {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d), "{text}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("65536"), Ok(65536));
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_bytes("10M"), Ok(10 << 20));
        assert_eq!(parse_bytes("10 MiB"), Ok(10 << 20));
        assert!(parse_bytes("-1").unwrap_err().contains("cannot be negative"));
        assert_eq!(parse_body_bytes("off"), Ok(u64::MAX));
        assert_eq!(parse_body_bytes("2MiB"), Ok(2 << 20));
        assert!(parse_body_bytes("unlimited").unwrap_err().ends_with("(e.g. 10MiB), or off"));
        assert!(parse_bytes("off").is_err(), "an app's own sizes have no `off`");
        assert_eq!(parse_bytes("2g"), Ok(2 << 30));
        assert!(parse_bytes("10MB").unwrap_err().contains("ambiguous"), "{:?}", parse_bytes("10MB"));
        assert!(parse_bytes("1X").unwrap_err().contains("unknown unit \"X\""));
        for bad in ["", "MiB", "-1", "1.5MiB", "99999999999GiB"] {
            assert!(parse_bytes(bad).unwrap_err().contains("invalid size"), "{bad:?}");
        }
        assert_eq!(parse_header_bytes("32KiB"), Ok(32768));
        assert!(parse_header_bytes("4KiB").unwrap_err().contains("minimum"));
        assert!(parse_header_bytes("4GiB").unwrap_err().contains("at most"));
    }

    #[test]
    fn default_subcommand_is_run() {
        let v = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(with_default_subcommand(v(&["app"]), &[]), v(&["app", "run"]));
        assert_eq!(with_default_subcommand(v(&["app", "--delay", "0"]), &[]), v(&["app", "run", "--delay", "0"]));
        assert_eq!(with_default_subcommand(v(&["app", "stop"]), &[]), v(&["app", "stop"]));
        assert_eq!(with_default_subcommand(v(&["app", "--help"]), &[]), v(&["app", "--help"]));
        assert_eq!(with_default_subcommand(v(&["app", "migrate"]), &["migrate"]), v(&["app", "migrate"]));
    }
}
