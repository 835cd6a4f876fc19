//! The production defaults in front of the app, composed in one place ([`begin`], which
//! `ConnService::call` runs at once for HTTP/1 and on the stream's first poll for HTTP/2),
//! one module each: request id, health route, body limit (413), `Connection: close` while
//! draining, and the access log; panic -> 500, the request timeout (503) and the request span
//! share one future around the app's (`handle.rs`). Per request, baton allocates the request's
//! extensions and, with the access log on, one box: the log's record, kept out of the
//! service's future because hyper moves that future several times (measured with callgrind:
//! boxing it saves more copying than the allocation costs). A request without a body gets an
//! empty one, which costs no allocation (hyper's would be boxed by axum).

mod drain;
mod handle;
mod headers;
mod health;
mod limits;
mod proxy;
mod request_id;

pub(crate) use proxy::{Proxy, Trusted};

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};

pub(crate) use drain::ConnState;
use drain::InFlight;

use crate::AppService;
use crate::access_log::{self, Record, Target};

/// Settings of the HTTP layer (from the command line and the [`App`](crate::App) builder).
#[derive(Debug, Clone)]
pub(crate) struct HttpConfig {
    pub(crate) access_log: access_log::Format,
    pub(crate) request_id: bool,
    pub(crate) catch_panic: bool,
    /// Count requests and connections for the metrics and `status`.
    pub(crate) metrics: bool,
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) body_timeout: Option<Duration>,
    /// A connection whose writes made no progress this long is closed.
    pub(crate) send_timeout: Option<Duration>,
    pub(crate) max_header_bytes: usize,
    pub(crate) max_headers: usize,
    pub(crate) max_body_bytes: u64,
    pub(crate) health_path: Option<String>,
    /// The health route's answers are written to the access log (`--health-log`).
    pub(crate) health_log: bool,
    pub(crate) drain_timeout: Duration,
    pub(crate) shutdown_delay: Duration,
    pub(crate) idle_grace: Duration,
    /// Long-lived connections (WebSocket, server-sent events) are told to close each at its
    /// own random moment within this long after the drain starts.
    pub(crate) drain_spread: Duration,
    pub(crate) tcp_nodelay: bool,
    /// `--trusted-proxy`.
    pub(crate) trusted: Trusted,
    /// TLS for TCP listeners (loaded by the worker).
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
}

/// State shared by every connection of a worker.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) cfg: HttpConfig,
    /// Responses carry `Connection: close` (HTTP/1) once set.
    pub(crate) draining: AtomicBool,
    /// Told once `draining` is set: every connection's task waits on it (a watch channel's
    /// receiver would take a lock on every wake-up of every connection).
    pub(crate) drain_notify: tokio::sync::Notify,
    /// The health route answers 503 once set.
    pub(crate) unhealthy: AtomicBool,
    /// Where requests and connections are counted.
    pub(crate) metrics: crate::metrics::Metrics,
    /// Connections open now, upgraded ones (WebSocket) included.
    pub(crate) open_conns: AtomicU64,
    /// When the worker started serving, on [`mono_ns`]'s clock and as an `Instant` (for
    /// timers), read together.
    epoch_ns: u64,
    epoch: Instant,
    /// The system clock's time (since the Unix epoch) at `epoch`, as of its last reading, in
    /// nanoseconds: the access log's timestamps come from the monotonic reading a request takes
    /// anyway, not from another clock read (nor a `SystemTime` subtraction, dozens of
    /// instructions). Read again once a second ([`Shared::wall_at`]), so that a step of the
    /// system clock (NTP setting a clock that was wrong at boot, a virtual machine resumed)
    /// reaches the log within a second.
    epoch_wall_ns: AtomicU64,
    /// The second of the [`Shared::elapsed`] clock at which `epoch_wall_ns` was last read.
    wall_read_s: AtomicU64,
}

impl Shared {
    pub(crate) fn new(cfg: HttpConfig, metrics: crate::metrics::Metrics) -> Self {
        let shared = Shared {
            cfg,
            metrics,
            draining: AtomicBool::new(false),
            drain_notify: tokio::sync::Notify::new(),
            unhealthy: AtomicBool::new(false),
            open_conns: AtomicU64::new(0),
            epoch_ns: mono_ns(),
            epoch: Instant::now(),
            epoch_wall_ns: AtomicU64::new(0),
            wall_read_s: AtomicU64::new(0),
        };
        shared.read_wall();
        shared
    }

    /// Milliseconds since this worker started serving: the clock of idle and drain times.
    pub(crate) fn now_ms(&self) -> u64 {
        self.elapsed().as_millis() as u64
    }

    /// The time since this worker started serving: a request's clock. Its start and end are
    /// read once each, and everything else (the duration, the idle clock in milliseconds, the
    /// log's wall-clock time, a deadline's `Instant`) is arithmetic on these.
    pub(crate) fn elapsed(&self) -> Duration {
        Duration::from_nanos(mono_ns().saturating_sub(self.epoch_ns))
    }

    /// `t` (on the [`Shared::elapsed`] clock) as an `Instant`, for a timer.
    pub(crate) fn instant_at(&self, t: Duration) -> Instant {
        self.epoch + t
    }

    /// `t` (on the [`Shared::elapsed`] clock) as wall-clock time, since the Unix epoch: as the
    /// system clock says it, read at most a second before `t` (the monotonic clock goes on at
    /// its pace when the system clock is set).
    #[inline]
    pub(crate) fn wall_at(&self, t: Duration) -> Duration {
        if t.as_secs() > self.wall_read_s.load(Ordering::Relaxed) {
            self.read_wall();
        }
        Duration::from_nanos(self.epoch_wall_ns.load(Ordering::Relaxed)) + t
    }

    /// Reads the system clock again (once a second, whichever thread is first). Threads that
    /// race here each store a reading as good as the other's.
    #[cold]
    #[inline(never)]
    fn read_wall(&self) {
        let now = self.elapsed();
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.epoch_wall_ns.store(wall.saturating_sub(now).as_nanos() as u64, Ordering::Relaxed);
        self.wall_read_s.store(now.as_secs(), Ordering::Relaxed);
    }

    /// The instant of a [`Shared::now_ms`] reading.
    pub(crate) fn at_ms(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }
}

/// The monotonic clock `Instant` reads, in nanoseconds: the time between two readings is a
/// subtraction, where that of two `Instant`s normalises seconds and nanoseconds (about 40
/// instructions, twice per request: callgrind).
fn mono_ns() -> u64 {
    // The clocks of std's `Instant` on these systems.
    #[cfg(target_vendor = "apple")]
    const CLOCK: nix::time::ClockId = nix::time::ClockId::from_raw(libc::CLOCK_UPTIME_RAW);
    #[cfg(not(target_vendor = "apple"))]
    const CLOCK: nix::time::ClockId = nix::time::ClockId::CLOCK_MONOTONIC;
    // It cannot fail for this clock (EINVAL is for an unknown one); 0 would read as the epoch.
    nix::time::clock_gettime(CLOCK).map_or(0, |t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}

/// The hyper service of one connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnService {
    pub(crate) app: AppService,
    pub(crate) conn: Arc<ConnState>,
}

/// Generic over the request body so that the ready probe can send a request through the
/// same stack without a connection.
impl<B> hyper::service::Service<Request<B>> for ConnService
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = CallFuture<B>;

    fn call(&self, req: Request<B>) -> CallFuture<B> {
        let start = self.conn.shared.elapsed();
        self.conn.saw(req.version());
        self.conn.head_done();
        // Counted in flight from here: a connection is not closed as idle while a request
        // it has read waits for its first poll.
        let guard = InFlight::new(&self.conn, start);
        // HTTP/2: hyper calls the service for each new stream of a read in a row, in the
        // connection's task, and each stream's task frees what the call allocated (the
        // extensions, the log's record, the router's path parameters). A burst of streams
        // overflows glibc's per-thread cache of freed chunks (7 of a size), and past it
        // allocating and freeing take the arena's lock. So the rest is done when the stream's
        // task first polls, as `axum::serve` does (its `Oneshot`).
        if req.version() == http::Version::HTTP_2 {
            return CallFuture::Later { call: Some((self.app.clone(), req, guard)) };
        }
        CallFuture::Now { fut: begin(&self.app, req, guard) }
    }
}

/// The request's work up to the app's future (`guard` counts it in flight since its start).
/// Not inlined: [`CallFuture`] calls it too, and one copy keeps the calls inside it inlined.
#[inline(never)]
fn begin<B>(app: &AppService, mut req: Request<B>, guard: InFlight) -> ConnFuture
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let conn = guard.conn();
    let shared = &*conn.shared;
    let start = guard.start;
    let cfg = &shared.cfg;
    let version = req.version();
    let logged = cfg.access_log != access_log::Format::Off && !conn.internal;
    // What the defaults need of the headers, in one pass, copied out (reference counts)
    // before the request changes.
    let seen = headers::Seen::of(req.headers());
    // With routes that set their own body limit, a declared length is refused here only
    // over the largest of them (the route's own is checked when its body is first read).
    let routes = crate::body_limit::routes_largest();
    let refuse_over = routes.map_or(cfg.max_body_bytes, |r| r.max(cfg.max_body_bytes));
    let early = limits::bad_host(version, seen.hosts).or_else(|| limits::refuse(seen.content_length, refuse_over));
    let incoming_rid = seen.request_id.cloned();
    let log_headers = logged.then(|| (seen.user_agent.cloned(), seen.referer.cloned()));
    let (rid, rid_made) = match cfg.request_id.then(|| request_id::ensure(&mut req, incoming_rid)) {
        Some((id, made)) => (Some(id), made),
        None => (None, false),
    };
    // Inserted per request: cloning a template made per connection saves about 80
    // instructions per request and costs several hundred per connection (callgrind).
    if let Some(peer) = conn.peer {
        // What `axum::serve(..).into_make_service_with_connect_info()` provides.
        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
    }
    req.extensions_mut().insert(conn.info.clone());
    // Behind a trusted proxy: the client it names, for the log and the app (`baton::ClientIp`).
    let forwarded = if cfg.trusted.is_empty() {
        None
    } else {
        let client =
            cfg.trusted.client(conn.peer.map(|p| p.ip()), req.headers().get_all(&proxy::X_FORWARDED_FOR).iter());
        if let Some(ip) = client {
            req.extensions_mut().insert(crate::ClientIp(ip));
        }
        client
    };
    let record = log_headers.map(|(ua, referer)| {
        let mut r = Record::new(cfg.access_log, &req, ua, referer, rid.clone(), rid_made, start);
        r.client = forwarded;
        Box::new(r)
    });
    let early = early.or_else(|| health::answer(&req, shared));
    // Each arm builds the whole future where it is returned: a stage built first and
    // then put in the future is copied once more (a memcpy of its 456 bytes, callgrind).
    match early {
        Some(r) => ConnFuture {
            stage: Stage::Early { resp: Some(r) },
            done: Unanswered { done: Some(Done { version, rid, record, guard }), polling: false },
        },
        None => {
            let mut req =
                limits::limit(req, cfg.max_body_bytes, routes.is_some(), cfg.body_timeout, || shared.instant_at(start));
            // Off by default (`RUST_LOG=baton=debug` turns it on): tells when a handler
            // has begun, which the access log (written at the end) cannot.
            tracing::debug!(
                "request started: {} {}",
                req.method(),
                Target::of(req.uri(), req.version()).without_query()
            );
            // The request line for the error lines, unless the log's record has it
            // (cheap clones: an enum, reference-counted bytes; held inline, as a box would
            // cost more than the copies of its 72 bytes: callgrind, 150 instructions when they were 64).
            let line = record.is_none().then(|| (req.method().clone(), Target::of(req.uri(), req.version())));
            // The app's own events carry the request id when this span is enabled
            // (`RUST_LOG=...,baton=debug`); disabled, it costs a level check.
            let span = match &rid {
                Some(id) => tracing::debug_span!("request", id = ?id),
                None => tracing::debug_span!("request"),
            };
            // On the request's clock: an `Instant` only once a timer is needed.
            let deadline = cfg.request_timeout.map(|t| start + t);
            // Some route may set its own timeout (`baton::RequestTimeout`): where it says so.
            let route = crate::request_timeout::in_use().then(|| {
                let t = crate::request_timeout::RouteTimeout::default();
                req.extensions_mut().insert(t.clone());
                t
            });
            let handle = handle::Handle::new(app.call(req), cfg.catch_panic, span, deadline, route);
            ConnFuture {
                stage: Stage::App { handle, line },
                done: Unanswered { done: Some(Done { version, rid, record, guard }), polling: false },
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// [`ConnService`]'s future: the request begun (HTTP/1), or to begin on the first poll
    /// (HTTP/2; see [`ConnService::call`]).
    #[project = CallProj]
    pub(crate) enum CallFuture<B> {
        Now { #[pin] fut: ConnFuture },
        Later { call: Option<(AppService, Request<B>, InFlight)> },
    }
}

impl<B> std::fmt::Debug for CallFuture<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallFuture").finish_non_exhaustive()
    }
}

impl<B> Future for CallFuture<B>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Output = Result<Response<TrackedBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let CallProj::Later { call } = self.as_mut().project() {
            let (app, req, guard) = call.take().expect("polled after completion");
            let fut = begin(&app, req, guard);
            self.set(CallFuture::Now { fut });
        }
        match self.project() {
            CallProj::Now { fut } => fut.poll(cx),
            CallProj::Later { .. } => unreachable!("begun above"),
        }
    }
}

pin_project_lite::pin_project! {
    /// The request's future once begun: a named type (a boxed `async` block would cost an
    /// allocation and a copy of the request more).
    pub(crate) struct ConnFuture {
        #[pin]
        stage: Stage,
        done: Unanswered,
    }
}

pin_project_lite::pin_project! {
    #[project = StageProj]
    enum Stage {
        /// Answered by baton itself (bad `Host`, health route, body too large).
        Early { resp: Option<Response<Body>> },
        /// The app's answer, with the request line for the error lines when no access log
        /// record holds it.
        App { #[pin] handle: handle::Handle, line: Option<(http::Method, Target)> },
    }
}

/// What the response needs once it exists.
struct Done {
    version: http::Version,
    rid: Option<HeaderValue>,
    record: Option<Box<Record>>,
    guard: InFlight,
}

/// What the response needs, until it exists. Dropped before (the request's future dropped
/// unanswered: hyper does so when the client closes its connection or resets its stream), the
/// request is logged and counted with status 499, as nginx does ("client closed request"):
/// a handler too slow for its clients shows. Not when the worker is cutting what is left at
/// its exit ([`cutting_in_flight`]), nor when the handler panicked with panic catching off
/// (tokio drops a task's future after a panic in its poll): those were the server's doing,
/// and its log says so.
struct Unanswered {
    done: Option<Done>,
    /// The app's future is being polled: still set at the drop, a panic unwound from it.
    polling: bool,
}

/// Set once the worker has stopped serving and drops what is still in flight.
static CUTTING: AtomicBool = AtomicBool::new(false);

/// From now on, requests dropped unanswered are the worker's doing, not their clients'.
pub(crate) fn cutting_in_flight() {
    CUTTING.store(true, Ordering::SeqCst);
}

/// The status logged and counted for a request whose client went away before its answer.
const CLIENT_CLOSED: u16 = 499;

impl Drop for Unanswered {
    #[inline]
    fn drop(&mut self) {
        // Answered (the response took it): nothing to do, and no call on the request path.
        if self.done.is_some() {
            self.abandoned();
        }
    }
}

impl Unanswered {
    #[cold]
    #[inline(never)]
    fn abandoned(&mut self) {
        let Some(Done { mut record, mut guard, .. }) = self.done.take() else { return };
        if self.polling || CUTTING.load(Ordering::SeqCst) {
            return;
        }
        if let Some(r) = record.as_mut() {
            r.status = StatusCode::from_u16(CLIENT_CLOSED).expect("a valid status");
        }
        guard.status = CLIENT_CLOSED;
        // Ended as a response of no bytes: its body's drop logs and counts it (one place
        // that writes the log line, so that it stays inlined there, on the request path).
        drop(TrackedBody { body: Body::empty(), record, guard, waiting: false });
    }
}

impl std::fmt::Debug for ConnFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnFuture").finish_non_exhaustive()
    }
}

impl Future for ConnFuture {
    type Output = Result<Response<TrackedBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = match this.stage.project() {
            StageProj::Early { resp } => resp.take().expect("polled after completion"),
            StageProj::App { handle, line } => {
                let done = this.done.done.as_ref().expect("polled after completion");
                this.done.polling = true;
                let outcome = handle.poll(cx, done.guard.shared(), done.guard.start);
                this.done.polling = false;
                let outcome = std::task::ready!(outcome);
                let request_line = || {
                    let record = this.done.done.as_ref().and_then(|d| d.record.as_ref());
                    let (method, target) = match (record, &*line) {
                        (Some(r), _) => (r.method(), r.target()),
                        (None, Some((method, target))) => (method, target),
                        (None, None) => return "?".to_owned(),
                    };
                    format!("{method} {}", target.without_query())
                };
                match outcome {
                    handle::Outcome::Done(r) => r,
                    handle::Outcome::Panicked(panic) => {
                        tracing::error!("handler panicked on {}: {panic}", request_line());
                        plain(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n")
                    }
                    handle::Outcome::TimedOut => {
                        tracing::warn!("request timeout on {}", request_line());
                        plain(StatusCode::SERVICE_UNAVAILABLE, "request timeout\n")
                    }
                }
            }
        };
        let Done { version, rid, mut record, mut guard } = this.done.done.take().expect("polled after completion");
        let status = resp.status();
        let headers = resp.headers_mut();
        if let Some(mut rid) = rid {
            // HTTP/2: "never indexed" but for the connection's first (measured with callgrind:
            // indexing every value costs 3,000 instructions per response in the encoder; the
            // name sent whole on every response, 250 and 7 bytes).
            rid.set_sensitive(version != http::Version::HTTP_2 || !guard.conn().request_id_indexed());
            headers.insert(request_id::X_REQUEST_ID.clone(), rid);
        }
        drain::mark_closing(headers, status, version, guard.shared());
        match record.as_mut() {
            // A route left out of the log (`baton::NoAccessLog`); still counted.
            Some(_) if resp.extensions().get::<crate::NoAccessLog>().is_some() => record = None,
            Some(r) => r.status = status,
            None => {}
        }
        guard.status = status.as_u16();
        if guard.status == 101 {
            guard.conn_upgraded();
        }
        Poll::Ready(Ok(resp.map(|body| TrackedBody { body, record, guard, waiting: false })))
    }
}

/// The connection ended with `err`. If it is a request head that hyper could not parse (or
/// one too large) and answered itself with a 4xx, without calling [`ConnService`], the
/// request is logged and counted as any other: otherwise neither the access log nor the
/// metrics would see it. Other errors (an I/O error, a client that went away) answer nothing.
pub(crate) fn rejected(conn: &ConnState, err: &(dyn std::error::Error + 'static)) {
    let Some(err) = err.downcast_ref::<hyper::Error>() else { return };
    // Most errors a connection ends with are not these (a client that went away): no text.
    if !err.is_parse() || err.is_parse_status() || err.is_parse_version_h2() {
        return;
    }
    let reason = err.to_string();
    let Some(status) = rejected_status(err.is_parse_too_large(), &reason) else { return };
    let shared = &*conn.shared;
    let end = shared.elapsed();
    // From when the head began to arrive (or, for a connection's first, when it opened):
    // the connection's clock has milliseconds.
    let now_ms = end.as_millis() as u64;
    let took = Duration::from_millis(now_ms - conn.head_since(now_ms).unwrap_or(now_ms).min(now_ms));
    tracing::debug!("{} answered to {:?}: {reason}", status.as_u16(), conn.peer);
    let answer = Rejected { status, reason: &reason, bytes: 0, took, end };
    answer.record(shared, &conn.remote, conn.listener, conn.internal);
}

/// A request answered without an HTTP request having been parsed: by hyper (a head it could
/// not parse), or by baton (plain HTTP on a TLS port). There is no request line to log.
pub(crate) struct Rejected<'a> {
    pub(crate) status: StatusCode,
    /// Why, for JSON's `error`.
    pub(crate) reason: &'a str,
    /// The response body's.
    pub(crate) bytes: u64,
    pub(crate) took: Duration,
    /// When it was answered, on the [`Shared::elapsed`] clock.
    pub(crate) end: Duration,
}

impl Rejected<'_> {
    /// Logs and counts it, as any answered request is, unless it came in on the metrics
    /// listener (`internal`).
    pub(crate) fn record(&self, shared: &Shared, remote: &access_log::Remote, listener: u16, internal: bool) {
        if internal {
            return;
        }
        if shared.cfg.metrics {
            shared.metrics.request_done(usize::from(listener), self.status.as_u16(), self.took);
        }
        if shared.cfg.access_log != access_log::Format::Off {
            access_log::write_rejected(shared.cfg.access_log, remote, self, shared.wall_at(self.end));
        }
    }
}

/// The status hyper's HTTP/1 server answers a parse error with (its `role::Server::on_error`),
/// if it answers one, from what the public API tells (`too_large`: a head too large or a URI
/// too long) and the error's text (which alone tells a URI too long, 414, from a head too
/// large, 431).
fn rejected_status(too_large: bool, text: &str) -> Option<StatusCode> {
    if too_large {
        return Some(if text == "URI too long" {
            StatusCode::URI_TOO_LONG
        } else {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        });
    }
    // `Parse::Internal` ("internal error inside Hyper…") is answered with nothing.
    (!text.starts_with("internal error")).then_some(StatusCode::BAD_REQUEST)
}

/// A short plain-text answer of baton's own.
fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// The response body: counts bytes for the access log, which is written when the body is
/// done (or dropped), and keeps the request counted as in flight until then.
pub(crate) struct TrackedBody {
    body: Body,
    /// The access log's record (boxed: see the module's doc).
    record: Option<Box<Record>>,
    guard: InFlight,
    /// HTTP/2: it handed hyper a frame before its end, and has not been polled since: hyper
    /// polls it again once the client's flow-control window has room (the send timeout).
    waiting: bool,
}

impl std::fmt::Debug for TrackedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackedBody").finish_non_exhaustive()
    }
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    #[inline]
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if this.waiting {
            this.moved();
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let (Some(data), Some(r)) = (frame.data_ref(), this.record.as_mut()) {
                r.bytes += data.len() as u64;
            }
            if this.guard.conn().is_h2() && !this.body.is_end_stream() {
                this.waits();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl TrackedBody {
    /// HTTP/2: handed a frame before its end (see `waiting`). Out of line, as `moved`: most
    /// responses are one frame, and `poll_frame` stays small enough to be inlined into hyper.
    #[cold]
    #[inline(never)]
    fn waits(&mut self) {
        self.waiting = true;
        self.guard.conn().h2_stream_waits();
    }

    #[cold]
    #[inline(never)]
    fn moved(&mut self) {
        self.waiting = false;
        self.guard.conn().h2_stream_moved(true);
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        if self.waiting {
            self.guard.conn().h2_stream_moved(false);
        }
        // The request's one clock read at its end: the access log's time and duration, the
        // metrics' duration, and the connection's idle clock.
        let end = self.guard.shared().elapsed();
        if let Some(r) = self.record.take() {
            r.write(self.guard.remote(), end, self.guard.shared().wall_at(end));
        }
        self.guard.ended = Some(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_clock_is_instants_clock() {
        // Read inside a pair of `Instant`s: on the same clock, its interval lies within theirs.
        let (i0, n0) = (Instant::now(), mono_ns());
        std::thread::sleep(Duration::from_millis(20));
        let (n1, i1) = (mono_ns(), Instant::now());
        let (raw, around) = (Duration::from_nanos(n1 - n0), i1 - i0);
        assert!(raw >= Duration::from_millis(20) && raw <= around, "{raw:?} within {around:?}");
    }
}
