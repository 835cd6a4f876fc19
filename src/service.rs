//! The production defaults, as one service in front of the app (one allocation per request
//! beyond what `axum::serve` does): request id, body limit (413), panic -> 500, request
//! timeout (503), health route, `Connection: close` while draining, and the access log.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, REFERER, USER_AGENT};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tower::ServiceExt as _;

use crate::{AccessLog, AppService};

/// The request id header, taken from the request when it carries a sane one.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Settings of the HTTP layer (from the command line and the [`App`](crate::App) builder).
#[derive(Debug, Clone)]
pub(crate) struct HttpConfig {
    pub(crate) access_log: AccessLog,
    pub(crate) request_id: bool,
    pub(crate) catch_panic: bool,
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) header_timeout: Duration,
    pub(crate) max_header_bytes: usize,
    pub(crate) max_body_bytes: u64,
    pub(crate) health_path: Option<String>,
    pub(crate) drain_timeout: Duration,
    pub(crate) shutdown_delay: Duration,
    pub(crate) idle_grace: Duration,
    pub(crate) tcp_nodelay: bool,
    /// TLS for TCP listeners (loaded by the worker).
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
}

/// State shared by every connection of a worker.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) cfg: HttpConfig,
    /// Responses carry `Connection: close` (HTTP/1) once set.
    pub(crate) draining: AtomicBool,
    /// The health route answers 503 once set.
    pub(crate) unhealthy: AtomicBool,
    epoch: Instant,
}

impl Shared {
    pub(crate) fn new(cfg: HttpConfig) -> Self {
        Shared { cfg, draining: AtomicBool::new(false), unhealthy: AtomicBool::new(false), epoch: Instant::now() }
    }

    /// Milliseconds since this worker started serving: the clock of idle and drain times.
    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// One connection's state: what the drain needs to know (protocol, requests in flight, idle
/// since when) and the peer for the access log.
#[derive(Debug)]
pub(crate) struct ConnState {
    pub(crate) peer: Option<SocketAddr>,
    h2: AtomicBool,
    in_flight: AtomicU32,
    last_active_ms: AtomicU64,
}

impl ConnState {
    pub(crate) fn new(peer: Option<SocketAddr>, shared: &Shared) -> Self {
        ConnState {
            peer,
            h2: AtomicBool::new(false),
            in_flight: AtomicU32::new(0),
            last_active_ms: AtomicU64::new(shared.now_ms()),
        }
    }

    pub(crate) fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    /// How long the connection has had no request in flight, counting from `since` at the
    /// earliest (the start of the drain).
    pub(crate) fn idle_since(&self, shared: &Shared, since_ms: u64) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let last = self.last_active_ms.load(Ordering::Acquire).max(since_ms);
        Duration::from_millis(shared.now_ms().saturating_sub(last))
    }
}

/// Counts a request as in flight until dropped (with the response body).
struct InFlight {
    conn: Arc<ConnState>,
    shared: Arc<Shared>,
}

impl InFlight {
    fn new(conn: &Arc<ConnState>, shared: &Arc<Shared>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight { conn: conn.clone(), shared: shared.clone() }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn.last_active_ms.store(self.shared.now_ms(), Ordering::Release);
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The hyper service of one connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnService {
    pub(crate) app: AppService,
    pub(crate) shared: Arc<Shared>,
    pub(crate) conn: Arc<ConnState>,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<TrackedBody>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn call(&self, mut req: Request<Incoming>) -> BoxFuture {
        let start = Instant::now();
        let shared = self.shared.clone();
        let cfg = &shared.cfg;
        let version = req.version();
        if version == Version::HTTP_2 {
            self.conn.h2.store(true, Ordering::Relaxed);
        }
        let guard = InFlight::new(&self.conn, &shared);
        let rid = cfg.request_id.then(|| request_id(&mut req));
        let record = (cfg.access_log != AccessLog::Off).then(|| {
            Box::new(Record {
                format: cfg.access_log,
                peer: self.conn.peer,
                method: req.method().clone(),
                uri: req.uri().clone(),
                version,
                user_agent: req.headers().get(USER_AGENT).cloned(),
                referer: req.headers().get(REFERER).cloned(),
                rid: rid.clone(),
                start,
                status: StatusCode::OK,
                bytes: 0,
            })
        });
        let early = if cfg.health_path.as_deref() == Some(req.uri().path()) {
            Some(if shared.unhealthy.load(Ordering::Relaxed) {
                plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            } else {
                plain(StatusCode::OK, "ok\n")
            })
        } else if content_length(&req).is_some_and(|n| n > cfg.max_body_bytes) {
            Some(plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"))
        } else {
            None
        };
        let app = self.app.clone();
        Box::pin(async move {
            let cfg = &shared.cfg;
            let mut resp = match early {
                Some(r) => r,
                None => {
                    let limit = usize::try_from(cfg.max_body_bytes).unwrap_or(usize::MAX);
                    let req = req.map(|b| Body::new(http_body_util::Limited::new(b, limit)));
                    let method = req.method().clone();
                    let path = req.uri().path().to_owned();
                    // Off by default (`RUST_LOG=baton=debug` turns it on): tells when a handler
                    // has begun, which the access log (written at the end) cannot.
                    tracing::debug!("request started: {method} {path}");
                    let fut = CatchPanic { inner: Box::pin(app.oneshot(req)), enabled: cfg.catch_panic };
                    let outcome = match cfg.request_timeout {
                        Some(t) => tokio::time::timeout(t, fut).await.ok(),
                        None => Some(fut.await),
                    };
                    match outcome {
                        Some(Ok(Ok(r))) => r,
                        Some(Ok(Err(never))) => match never {},
                        Some(Err(panic)) => {
                            tracing::error!("handler panicked on {method} {path}: {panic}");
                            plain(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n")
                        }
                        None => {
                            tracing::warn!("request timeout on {method} {path}");
                            plain(StatusCode::SERVICE_UNAVAILABLE, "request timeout\n")
                        }
                    }
                }
            };
            let headers = resp.headers_mut();
            if let Some(rid) = rid {
                headers.insert(X_REQUEST_ID.clone(), rid);
            }
            // Checked when the response goes out, not when the request came in: a request that
            // began before the drain still tells its client to reconnect elsewhere.
            if version <= Version::HTTP_11 && shared.draining.load(Ordering::Relaxed) {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            let mut record = record;
            if let Some(r) = record.as_mut() {
                r.status = resp.status();
            }
            Ok(resp.map(|body| TrackedBody { body, record, _guard: guard }))
        })
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers().get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Keeps a well-formed incoming id (visible ASCII, at most 128 bytes); otherwise makes one
/// from a per-process prefix and a counter. The id is set on the request for the app.
fn request_id<B>(req: &mut Request<B>) -> HeaderValue {
    if let Some(v) = req.headers().get(&X_REQUEST_ID) {
        if !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(|b| b.is_ascii_graphic()) {
            return v.clone();
        }
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let prefix = *PREFIX.get_or_init(|| {
        let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        (t.subsec_nanos() ^ std::process::id().rotate_left(16)) | 1
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let v = HeaderValue::try_from(format!("{prefix:08x}-{n:x}")).expect("hex is a valid header value");
    req.headers_mut().insert(X_REQUEST_ID.clone(), v.clone());
    v
}

/// Catches a panic while polling the handler's future.
struct CatchPanic<F> {
    inner: Pin<Box<F>>,
    enabled: bool,
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if !self.enabled {
            return self.inner.as_mut().poll(cx).map(Ok);
        }
        let inner = &mut self.inner;
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(p) => p.map(Ok),
            Err(payload) => Poll::Ready(Err(payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned()))),
        }
    }
}

/// The response body: counts bytes for the access log, which is written when the body is
/// done (or dropped), and keeps the request counted as in flight until then.
pub(crate) struct TrackedBody {
    body: Body,
    record: Option<Box<Record>>,
    _guard: InFlight,
}

impl std::fmt::Debug for TrackedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackedBody").finish_non_exhaustive()
    }
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(r)) = (&polled, this.record.as_mut()) {
            if let Some(data) = frame.data_ref() {
                r.bytes += data.len() as u64;
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

impl Drop for TrackedBody {
    fn drop(&mut self) {
        if let Some(r) = self.record.take() {
            r.write();
        }
    }
}

/// One access log entry.
struct Record {
    format: AccessLog,
    peer: Option<SocketAddr>,
    method: Method,
    uri: Uri,
    version: Version,
    user_agent: Option<HeaderValue>,
    referer: Option<HeaderValue>,
    rid: Option<HeaderValue>,
    start: Instant,
    status: StatusCode,
    bytes: u64,
}

thread_local! {
    static LINE: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(256));
}

impl Record {
    fn write(&self) {
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            match self.format {
                AccessLog::Combined => self.combined(&mut line),
                AccessLog::Json => self.json(&mut line),
                AccessLog::Off => return,
            }
            crate::log::access_line(line.as_bytes());
        });
    }

    fn combined(&self, out: &mut String) {
        use std::fmt::Write as _;
        match self.peer {
            Some(p) => {
                let _ = write!(out, "{}", p.ip());
            }
            None => out.push_str("unix"),
        }
        out.push_str(" - - [");
        crate::log::clf_time(out, SystemTime::now());
        let _ = write!(out, "] \"{} ", self.method);
        escape_into(out, self.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes(), b'"', false);
        let _ = write!(out, " {:?}\" {} {} \"", self.version, self.status.as_u16(), self.bytes);
        escape_into(out, self.referer.as_ref().map_or(b"-", |v| v.as_bytes()), b'"', false);
        out.push_str("\" \"");
        escape_into(out, self.user_agent.as_ref().map_or(b"-", |v| v.as_bytes()), b'"', false);
        let _ = write!(out, "\" {:.6} ", self.start.elapsed().as_secs_f64());
        escape_into(out, self.rid.as_ref().map_or(b"-", |v| v.as_bytes()), b' ', false);
        out.push('\n');
    }

    fn json(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str("{\"time\":\"");
        crate::log::rfc3339(out, SystemTime::now());
        out.push_str("\",\"remote\":\"");
        match self.peer {
            Some(p) => {
                let _ = write!(out, "{}", p.ip());
            }
            None => out.push_str("unix"),
        }
        let _ = write!(out, "\",\"method\":\"{}\",\"uri\":\"", self.method);
        escape_into(out, self.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes(), b'"', true);
        let _ = write!(
            out,
            "\",\"version\":\"{:?}\",\"status\":{},\"bytes\":{},\"duration_ms\":{:.3}",
            self.version,
            self.status.as_u16(),
            self.bytes,
            self.start.elapsed().as_secs_f64() * 1000.0
        );
        for (key, v) in [("request_id", &self.rid), ("user_agent", &self.user_agent), ("referer", &self.referer)] {
            if let Some(v) = v {
                let _ = write!(out, ",\"{key}\":\"");
                escape_into(out, v.as_bytes(), b'"', true);
                out.push('"');
            }
        }
        out.push_str("}\n");
    }
}

/// Writes bytes so that a log line stays one line and one field: `\` and `quote` are escaped,
/// control and non-ASCII bytes become `\xHH` (`\u00HH` in JSON).
fn escape_into(out: &mut String, bytes: &[u8], quote: u8, json: bool) {
    use std::fmt::Write as _;
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            _ if b == quote => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ if json => {
                let _ = write!(out, "\\u{b:04x}");
            }
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_log_fields() {
        let mut s = String::new();
        escape_into(&mut s, b"a\"b\\c\nd\xff", b'"', true);
        assert_eq!(s, "a\\\"b\\\\c\\u000ad\\u00ff");
        s.clear();
        escape_into(&mut s, b"x y", b' ', false);
        assert_eq!(s, "x\\ y");
    }

    #[test]
    fn request_ids() {
        let mut req = Request::new(());
        let a = request_id(&mut req);
        assert_eq!(req.headers()[&X_REQUEST_ID], a);
        let mut req2 = Request::new(());
        assert_ne!(request_id(&mut req2), a);
        let mut given = Request::builder().header("x-request-id", "abc-123").body(()).unwrap();
        assert_eq!(request_id(&mut given), "abc-123");
        let mut bad = Request::builder().header("x-request-id", "has space").body(()).unwrap();
        assert_ne!(request_id(&mut bad), "has space");
    }
}
