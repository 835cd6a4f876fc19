//! The original Go demo server, in baton: `GET /` waits `--delay` (5 s by default, to show
//! that restarts cut nothing) and answers `hello world!`.
//!
//! ```text
//! cargo run --release --example hello                      # foreground on 0.0.0.0:1234
//! target/release/examples/hello start -l x.log -p x.pid    # daemon
//! kill -USR2 $(cat x.pid)                                  # zero-downtime reload
//! kill $(cat x.pid)                                        # graceful stop
//! ```

use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::{get, post};

#[derive(clap::Args, Debug)]
struct Args {
    /// How long `GET /` waits before answering.
    #[arg(long, default_value = "5s", value_parser = baton::parse_duration)]
    delay: Duration,
    /// Also serve `/panic` (a handler that panics), `POST /echo` (returns the body size),
    /// `/bytes/N` (N bytes), `/trailers` (a body, then trailers, as gRPC answers), `/events`
    /// (server-sent ticks until shutdown, then `bye`), `/ticks` (server-sent ticks through
    /// `baton::sse`) and `/ws` (a WebSocket echo through `baton::ws`), for trying the production
    /// defaults and long-lived connections across reloads.
    #[arg(long)]
    debug_routes: bool,
    /// Fail in the app's start-up (to try failed starts and rollbacks).
    #[arg(long, hide = true)]
    fail_start: bool,
    /// Exit with status 3 this long after start-up (to try probation and crash loops).
    #[arg(long, hide = true, value_parser = baton::parse_duration)]
    crash_after: Option<Duration>,
    /// The status `GET /probe` answers (to try `--ready-probe /probe`).
    #[arg(long, hide = true, default_value_t = 200)]
    probe_status: u16,
}

/// Serves the app (`pub` so that tests/support/hello_next.rs and the bench can reuse this file).
pub fn main() -> std::process::ExitCode {
    baton::App::new()
        .version(version())
        .about("The original Go demo server, in baton: GET / answers after --delay")
        .default_listen("0.0.0.0:1234")
        // HELLO_NO_CATCH_PANIC set: a handler's panic is not caught (to try that setting).
        .catch_panic(std::env::var_os("HELLO_NO_CATCH_PANIC").is_none())
        // An app's own readiness check; HELLO_NOT_READY lets the tests see one fail.
        .ready_check(|| async {
            match std::env::var("HELLO_NOT_READY") {
                Ok(why) => Err(format!("not ready: {why}")),
                Err(_) => Ok(()),
            }
        })
        // An app's own clean-up; HELLO_SHUTDOWN_HOOK=<duration> makes it take that long (to
        // try a second shutdown request while it runs).
        .on_shutdown(|| async {
            if let Ok(d) = std::env::var("HELLO_SHUTDOWN_HOOK") {
                let d = baton::parse_duration(&d).map_err(|e| format!("HELLO_SHUTDOWN_HOOK: {e}"))?;
                tracing::info!("shutdown hook: cleaning up for {d:?}");
                tokio::time::sleep(d).await;
            }
            Ok(())
        })
        .try_serve(|args: Args| async move {
            // HELLO_SLOW_START=<duration>: a start-up that takes that long (a database that
            // answers slowly), to try a stop during it.
            if let Ok(d) = std::env::var("HELLO_SLOW_START") {
                let d = baton::parse_duration(&d).map_err(|_| "HELLO_SLOW_START: not a duration")?;
                tracing::info!("starting slowly: {d:?}");
                tokio::time::sleep(d).await;
            }
            if args.fail_start {
                return Err("cannot start: --fail-start was given");
            }
            if let Some(after) = args.crash_after {
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    eprintln!("crashing as asked (--crash-after)");
                    std::process::exit(3);
                });
            }
            let status = axum::http::StatusCode::from_u16(args.probe_status).map_err(|_| "invalid --probe-status")?;
            let probe = move || async move { (status, format!("probe says {}\n", status.as_u16())) };
            Ok(app(args.delay, args.debug_routes).route("/probe", get(probe)))
        })
}

/// The hello router: `GET /` waits `delay`, then answers `hello world!`.
pub fn app(delay: Duration, debug_routes: bool) -> Router {
    let app = Router::new()
        .route(
            "/",
            get(move || async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                "hello world!"
            }),
        )
        .route("/pid", get(|| async { std::process::id().to_string() }))
        .route("/version", get(|| async { version() }));
    if !debug_routes {
        return app;
    }
    let app = app
        .route("/panic", get(|| async { panic_route() }))
        .route("/echo", post(|body: axum::body::Bytes| async move { body.len().to_string() }))
        .route("/bytes/{n}", get(bytes))
        .route("/trailers", get(trailers))
        .route("/events", get(events))
        .route("/ticks", get(ticks));
    #[cfg(feature = "ws")]
    let app = app.route("/ws", get(ws_handler));
    app
}

/// `n` bytes of `x`, streamed in frames of 64 KiB (as a file would be): a response larger than
/// the socket buffers. Built without `IntoResponse`, whose header insert would be compiled
/// differently for every handler (the benchmarks time `GET /`).
async fn bytes(axum::extract::Path(n): axum::extract::Path<u64>) -> axum::response::Response {
    axum::response::Response::new(axum::body::Body::new(Repeat { left: n }))
}

/// `data`, then the trailer `grpc-status: 0`, as a gRPC server ends a response.
async fn trailers() -> axum::body::Body {
    use http_body_util::BodyExt;
    let mut t = axum::http::HeaderMap::new();
    t.insert("grpc-status", axum::http::HeaderValue::from_static("0"));
    axum::body::Body::new(http_body_util::Full::new(bytes::Bytes::from("data")).with_trailers(async { Some(Ok(t)) }))
}

/// A body of `left` more bytes of `x`.
struct Repeat {
    left: u64,
}

impl http_body::Body for Repeat {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        static CHUNK: [u8; 64 << 10] = [b'x'; 64 << 10];
        let n = self.left.min(CHUNK.len() as u64) as usize;
        self.left -= n as u64;
        let frame = (n > 0).then(|| Ok(http_body::Frame::data(bytes::Bytes::from_static(&CHUNK[..n]))));
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

/// A WebSocket echo (the text `pid` is answered with the worker's pid), written as in axum's
/// documentation with one change: the types come from `baton::ws`, so a reload or stop closes
/// it cleanly (1012 or 1001) instead of cutting it.
#[cfg(feature = "ws")]
async fn ws_handler(ws: baton::ws::WebSocketUpgrade) -> axum::response::Response {
    ws.on_upgrade(handle_socket)
}

#[cfg(feature = "ws")]
async fn handle_socket(mut socket: baton::ws::WebSocket) {
    let mut echoed = 0u64;
    while let Some(msg) = socket.recv().await {
        let Ok(msg) = msg else { break };
        let msg = match msg {
            axum::extract::ws::Message::Close(_) => continue,
            // Which worker answers (to see a reconnect reach the new generation).
            axum::extract::ws::Message::Text(t) if t.as_str() == "pid" => std::process::id().to_string().into(),
            other => other,
        };
        if socket.send(msg).await.is_err() {
            break;
        }
        echoed += 1;
    }
    // The clean-up after the receive loop: runs for every socket, however it closed.
    tracing::info!("websocket clean-up: echoed {echoed} messages");
}

/// Server-sent ticks every 100 ms through `baton::sse`: the stream ends (after a whole event)
/// when the worker drains.
async fn ticks() -> impl IntoResponse {
    let ticks = futures_util::stream::unfold(0u32, |n| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((
            Ok::<_, std::convert::Infallible>(axum::response::sse::Event::default().data(format!("tick {n}"))),
            n + 1,
        ))
    });
    baton::sse::Sse::new(Box::pin(ticks))
}

/// Server-sent events: a tick every 100 ms until the worker drains, then `bye` and the end.
async fn events(shutdown: baton::Shutdown) -> axum::response::Response {
    let ticks = futures_util::stream::unfold((0u32, Some(shutdown)), |(n, shutdown)| async move {
        let shutdown = shutdown?;
        tokio::select! {
            _ = shutdown.wait() => Some((Ok::<_, std::convert::Infallible>("data: bye\n\n".to_owned()), (n, None))),
            _ = tokio::time::sleep(Duration::from_millis(100)) => Some((Ok(format!("data: tick {n}\n\n")), (n + 1, Some(shutdown)))),
        }
    });
    ([(axum::http::header::CONTENT_TYPE, "text/event-stream")], axum::body::Body::from_stream(ticks)).into_response()
}

fn panic_route() -> &'static str {
    panic!("the /panic route panics")
}

/// The package version plus a build label (`HELLO_BUILD` at compile time, or the name of a
/// differently named build of this file), so two builds can be told apart.
fn version() -> String {
    let label = option_env!("HELLO_BUILD").or(Some(env!("CARGO_CRATE_NAME")).filter(|n| *n != "hello"));
    match label {
        Some(l) => format!("{}+{l}", env!("CARGO_PKG_VERSION")),
        None => env!("CARGO_PKG_VERSION").to_owned(),
    }
}
