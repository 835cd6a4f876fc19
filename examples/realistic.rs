//! A realistic app on baton: shared state, its own flags and environment configuration, a
//! JSON API, static files next to the binary's launch directory, routes with a body limit or
//! a request timeout of their own, a route left out of the access log, the client's address
//! behind a trusted proxy, metrics kept across reloads (`baton::Counter`, `baton::Gauge`,
//! `baton::Histogram`), its own `tracing` events, `ConnectInfo`, and a shutdown hook.
//!
//! ```text
//! cargo run --example realistic -- start -l app.log -p app.pid --greeting hi
//! curl 127.0.0.1:8080/ ; curl 127.0.0.1:8080/api/hits ; curl 127.0.0.1:8080/whoami
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};

#[derive(clap::Args, Debug)]
struct Args {
    /// What `GET /` says.
    #[arg(long, default_value = "hello")]
    greeting: String,
    /// Panic in the start-up (to see a panic reach `start` and `reload`).
    #[arg(long, hide = true)]
    panic_at_start: bool,
    /// Fail the start-up with a chain of causes.
    #[arg(long, hide = true)]
    fail_with_chain: bool,
}

struct AppState {
    /// Greetings answered, by every generation since the master started (served on
    /// `--metrics-listen` as `realistic_greetings_total`).
    hits: baton::Counter,
    greeting: String,
    /// From `--config` (or `REALISTIC_MOTD`, frozen at `start` like all of the environment).
    motd: String,
}

fn main() -> ExitCode {
    if std::env::var_os("REALISTIC_THREAD_BEFORE_SERVE").is_some() {
        // What a telemetry exporter or a non-blocking log writer does before `serve()`.
        std::thread::spawn(|| {
            loop {
                std::thread::park();
            }
        });
    }
    if std::env::var_os("REALISTIC_OWN_SUBSCRIBER").is_some() {
        // The app's own subscriber (JSON, OpenTelemetry...): installed before `serve()`, it
        // stays in charge, in the master and in every worker.
        tracing_subscriber::fmt().with_ansi(false).with_writer(std::io::stderr).with_target(false).init();
    }
    baton::App::new()
        .name("realistic")
        .version(env!("CARGO_PKG_VERSION"))
        .about("A realistic app on baton")
        .default_listen("127.0.0.1:8080")
        // The app's own production defaults; the command line overrides each.
        .health_path("/healthz")
        // The load balancer probes every second: its checks stay out of the access log.
        .health_log(false)
        .drain_timeout(Duration::from_secs(7))
        // Deployed behind a proxy on this host (TCP or a unix socket): the access log names
        // the client it forwards for.
        .trusted_proxies("127.0.0.1, unix")
        // An app's own subcommand: `realistic migrate --to 3`, no server involved.
        .command(
            clap::Command::new("migrate").about("Migrate the database schema").arg(
                clap::arg!(--to <VERSION> "The schema version to migrate to").value_parser(clap::value_parser!(u32)),
            ),
            |m| {
                let to = m.get_one::<u32>("to").copied().unwrap_or(0);
                println!("migrated to schema version {to}");
                ExitCode::SUCCESS
            },
        )
        .on_shutdown(|| async {
            // Flush, close pools... here: leave a mark the tests can see.
            let mark = baton::launch_dir().join("shutdown.done");
            std::fs::write(&mark, "drained\n").map_err(|e| format!("{}: {e}", mark.display()))
        })
        .try_serve(|args: Args| async move {
            if args.panic_at_start {
                panic!("the database URL is missing");
            }
            if args.fail_with_chain {
                return Err(anyhow::anyhow!("connection refused").context("cannot connect to the database"));
            }
            // `--config FILE`: `motd = ...` lines; each new worker reads it, so `reload` applies a
            // change, and a broken file fails the reload with the reason below.
            let mut motd = std::env::var("REALISTIC_MOTD").unwrap_or_default();
            if let Some(c) = baton::config() {
                for (n, line) in c.text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    match line.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                        Some(("motd", v)) => motd = v.to_owned(),
                        _ => anyhow::bail!("{} line {}: expected `motd = TEXT`", c.path.display(), n + 1),
                    }
                }
            }
            let span = tracing::info_span!("startup", greeting = %args.greeting);
            span.in_scope(|| tracing::info!("realistic app starting"));
            let greetings = baton::Counter::new("realistic_greetings_total", "Greetings answered (GET /).");
            let state = Arc::new(AppState { hits: greetings, greeting: args.greeting, motd });
            let statics = tower_http::services::ServeDir::new(baton::launch_dir().join("static"));
            Ok(Router::new()
                .route("/", get(greet))
                .route("/api/hits", get(hits))
                .route("/whoami", get(whoami))
                .route("/api/client", get(client))
                .route("/conn", get(conn))
                // Uploads up to 16 MiB here; every other route keeps `--max-body-bytes`.
                .route("/upload", post(upload).layer(baton::BodyLimit::max(16 << 20)))
                .route("/api/note", post(note))
                // A load balancer's ping every second: counted, not logged.
                .route("/ping", get(|| async { "pong" }).layer(baton::NoAccessLog))
                // A report may take minutes; a lookup that has not answered in half a second
                // is given up (its callers retry elsewhere); the rest: `--request-timeout`.
                .route("/api/report/{ms}", get(slow).layer(baton::RequestTimeout::new(Duration::from_secs(600))))
                .route("/api/lookup/{ms}", get(slow).layer(baton::RequestTimeout::new(Duration::from_millis(500))))
                .nest_service("/static", statics)
                .with_state(state))
        })
}

async fn greet(State(s): State<Arc<AppState>>) -> String {
    s.hits.inc();
    tracing::info!(n = s.hits.get(), "greeted");
    format!("{} {}\n", s.greeting, s.motd).trim_end().to_owned()
}

async fn hits(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    let body = format!("{{\"hits\":{}}}", s.hits.get());
    ([(axum::http::header::CONTENT_TYPE, "application/json")], body)
}

/// An upload (kept in memory here; a real app would stream it to storage).
async fn upload(body: axum::body::Bytes) -> String {
    format!("received {} bytes\n", body.len())
}

/// Work that takes `ms` milliseconds.
async fn slow(axum::extract::Path(ms): axum::extract::Path<u64>) -> String {
    // In progress, every generation's: this worker's own count, summed by the exposition.
    static WORKING: LazyLock<baton::Gauge> =
        LazyLock::new(|| baton::Gauge::new("realistic_slow_requests", "Slow requests in progress."));
    struct Working;
    impl Drop for Working {
        // Also when the request is cut (its timeout, its client gone).
        fn drop(&mut self) {
            WORKING.dec();
        }
    }
    // How long they took, every generation's.
    static TOOK: LazyLock<baton::Histogram> = LazyLock::new(|| {
        baton::Histogram::new("realistic_slow_request_seconds", "Slow requests' time.", baton::Histogram::SECONDS)
    });
    WORKING.inc();
    let _working = Working;
    let start = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(ms)).await;
    TOOK.observe_duration(start.elapsed());
    format!("done in {ms} ms\n")
}

/// A short note, under the server's own body limit.
async fn note(text: String) -> String {
    static EMPTY: LazyLock<baton::Counter> =
        LazyLock::new(|| baton::Counter::with_labels("realistic_notes_total", "Notes taken.", &[("kind", "empty")]));
    static TEXT: LazyLock<baton::Counter> =
        LazyLock::new(|| baton::Counter::with_labels("realistic_notes_total", "Notes taken.", &[("kind", "text")]));
    if text.is_empty() {
        EMPTY.inc()
    } else {
        TEXT.inc()
    }
    tracing::info!(len = text.len(), "note taken");
    format!("noted {} bytes\n", text.len())
}

/// The client as the access log names it: behind the trusted proxy, the one it forwards for.
async fn client(ip: Option<baton::ClientIp>) -> String {
    ip.map_or("unknown".to_owned(), |baton::ClientIp(ip)| ip.to_string())
}

async fn whoami(ConnectInfo(peer): ConnectInfo<SocketAddr>) -> String {
    peer.to_string()
}

/// Where the request came in, TCP or unix.
async fn conn(axum::Extension(c): axum::Extension<baton::Connection>) -> String {
    let local = match &c.local {
        baton::LocalAddr::Tcp(a) => a.to_string(),
        baton::LocalAddr::Unix(p) => format!("unix:{}", p.as_deref().map_or("?".into(), |p| p.display().to_string())),
    };
    format!("peer={} local={local}", c.peer.map_or("none".into(), |p| p.to_string()))
}
