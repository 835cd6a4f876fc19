//! A route's own request body limit, in place of `--max-body-bytes`: higher for an upload
//! route, lower for a login form.
//!
//! ```no_run
//! use axum::{Router, routing::post};
//! use baton::BodyLimit;
//!
//! # async fn upload(_: axum::body::Body) {}
//! # async fn login(_: String) {}
//! # fn app() -> Router {
//! Router::new()
//!     .route("/upload", post(upload).layer(BodyLimit::max(1 << 30))) // 1 GiB here
//!     .route("/login", post(login).layer(BodyLimit::max(4 << 10)))   // 4 KiB here
//! // every other route: --max-body-bytes (default 2 MiB)
//! # }
//! ```
//!
//! How it works: baton limits a request's body before routing, so a route cannot lift that
//! limit by wrapping the body again (axum's own `DefaultBodyLimit` only sets the cap of its
//! extractors, and so can only lower it). Once this process has made a `BodyLimit`, baton
//! gives each request with a body a limit that is read when the body is first read, and
//! the route's layer sets it. A declared `Content-Length` over the largest of all limits is
//! still refused before routing; one over the route's own limit is refused when the body is
//! first read, before any of it is (no `100 Continue`). Outside baton (an app's tests calling
//! the router directly), the layer can only lower the limit (axum's extractors' 2 MiB cap
//! is lifted either way).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use bytes::Bytes;
use http::Request;
use http_body::Frame;
use http_body_util::{Full, LengthLimitError, Limited};

/// Set once this process made a [`BodyLimit`]: from then on, each request with a body gets a
/// [`RouteLimit`].
static IN_USE: AtomicBool = AtomicBool::new(false);
/// The largest limit of any [`BodyLimit`] made in this process (`u64::MAX`: one has none).
static LARGEST: AtomicU64 = AtomicU64::new(0);

/// The largest limit a route may set, once some [`BodyLimit`] exists (`None` before).
pub(crate) fn routes_largest() -> Option<u64> {
    IN_USE.load(Ordering::Relaxed).then(|| LARGEST.load(Ordering::Relaxed))
}

/// A layer that sets the request body limit of the routes it wraps, in place of
/// `--max-body-bytes`, higher or lower (see [the module](self)). The innermost one applies, as
/// with axum's `DefaultBodyLimit`. A body over it fails to read: axum's extractors (`Bytes`,
/// `String`, `Json`, `Form`) answer 413, a handler reading the stream itself gets an error.
/// Make it when building the router (in the factory): a `BodyLimit` made later can only
/// lower the limit of requests that arrived before it existed.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit {
    max: u64,
}

impl BodyLimit {
    /// At most `bytes` of request body.
    pub fn max(bytes: u64) -> BodyLimit {
        IN_USE.store(true, Ordering::Relaxed);
        LARGEST.fetch_max(bytes, Ordering::Relaxed);
        BodyLimit { max: bytes }
    }

    /// No limit on the request body (a slow body is still cut by `--body-timeout`).
    pub fn disable() -> BodyLimit {
        BodyLimit::max(u64::MAX)
    }
}

impl<S> tower::Layer<S> for BodyLimit {
    type Service = BodyLimitService<S>;

    fn layer(&self, inner: S) -> BodyLimitService<S> {
        BodyLimitService { inner, max: self.max }
    }
}

/// The service [`BodyLimit`] wraps a route in.
#[derive(Clone, Debug)]
pub struct BodyLimitService<S> {
    inner: S,
    max: u64,
}

impl<S> tower::Service<Request<Body>> for BodyLimitService<S>
where
    S: tower::Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> S::Future {
        match req.extensions().get::<RouteLimit>() {
            Some(limit) => limit.0.store(self.max, Ordering::Relaxed),
            // Outside baton, or a request older than every `BodyLimit`: lowering is all
            // that wrapping the body can do.
            None if self.max != u64::MAX && !http_body::Body::is_end_stream(req.body()) => {
                let max = usize::try_from(self.max).unwrap_or(usize::MAX);
                req = req.map(|b| Body::new(Limited::new(b, max)));
            }
            None => {}
        }
        // This limit holds for axum's extractors too, in place of their own 2 MiB.
        DefaultBodyLimit::disable().apply(&mut req);
        self.inner.call(req)
    }
}

/// The limit of a request's body, until the body is first read: `--max-body-bytes`, or what
/// a route's [`BodyLimit`] set.
#[derive(Clone, Debug)]
pub(crate) struct RouteLimit(Arc<AtomicU64>);

impl RouteLimit {
    pub(crate) fn new(max: u64) -> RouteLimit {
        RouteLimit(Arc::new(AtomicU64::new(max)))
    }
}

pin_project_lite::pin_project! {
    /// A body limited to its [`RouteLimit`], read when the body is first polled.
    pub(crate) struct RouteLimited<B> {
        #[pin]
        inner: B,
        limit: RouteLimit,
        // How many more bytes may come (`None`: not read yet).
        left: Option<u64>,
    }
}

impl<B> RouteLimited<B> {
    pub(crate) fn new(inner: B, limit: RouteLimit) -> RouteLimited<B> {
        RouteLimited { inner, limit, left: None }
    }
}

impl<B> http_body::Body for RouteLimited<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let left = match *this.left {
            Some(left) => left,
            None => {
                let max = this.limit.0.load(Ordering::Relaxed);
                // A declared length over the limit: refused before any of the body is read
                // (HTTP/1.1 sends no `100 Continue` then).
                if this.inner.size_hint().lower() > max {
                    *this.left = Some(0);
                    return Poll::Ready(Some(Err(length_limit_error())));
                }
                max
            }
        };
        *this.left = Some(left);
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                match left.checked_sub(n) {
                    Some(rest) => {
                        *this.left = Some(rest);
                        Poll::Ready(Some(Ok(frame)))
                    }
                    None => Poll::Ready(Some(Err(length_limit_error()))),
                }
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The error axum's extractors answer with 413: http-body-util's `LengthLimitError`, which
/// has no public constructor, taken from a `Limited` that is over its limit at its first byte.
fn length_limit_error() -> axum::BoxError {
    let mut over = Limited::new(Full::new(Bytes::from_static(b"x")), 0);
    match http_body::Body::poll_frame(Pin::new(&mut over), &mut Context::from_waker(std::task::Waker::noop())) {
        Poll::Ready(Some(Err(e))) if e.is::<LengthLimitError>() => e,
        _ => unreachable!("a one-byte body over a limit of zero fails with LengthLimitError"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn post_req(body: Body) -> Request<Body> {
        Request::post("/").body(body).unwrap()
    }

    async fn status(app: axum::Router, req: Request<Body>) -> (u16, String) {
        let r = app.oneshot(req).await.unwrap();
        let status = r.status().as_u16();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn len_app(limit: BodyLimit) -> axum::Router {
        axum::Router::new().route("/", post(|b: Bytes| async move { b.len().to_string() }).layer(limit))
    }

    /// A body as baton hands it to the app when routes set limits: `global` until a route
    /// says otherwise.
    fn as_baton_gives(body: impl Into<Body>, global: u64) -> Request<Body> {
        let limit = RouteLimit::new(global);
        let mut req = post_req(Body::new(RouteLimited::new(body.into(), limit.clone())));
        req.extensions_mut().insert(limit);
        req
    }

    #[tokio::test]
    async fn a_route_raises_or_lowers_the_limit_baton_set() {
        let rt = |body: Vec<u8>| as_baton_gives(body, 10);
        // Raised past the global 10 bytes, and past axum's own 2 MiB.
        let big = vec![b'x'; 3 << 20];
        assert_eq!(status(len_app(BodyLimit::max(4 << 20)), rt(big.clone())).await, (200, (3 << 20).to_string()));
        assert_eq!(status(len_app(BodyLimit::disable()), rt(big)).await, (200, (3 << 20).to_string()));
        // Lowered below it; the limit itself passes.
        assert_eq!(status(len_app(BodyLimit::max(4)), rt(b"four".to_vec())).await, (200, "4".into()));
        assert_eq!(status(len_app(BodyLimit::max(4)), rt(b"fives".to_vec())).await.0, 413);
        // A route without a layer keeps the global limit.
        let plain = axum::Router::new().route("/", post(|b: Bytes| async move { b.len().to_string() }));
        assert_eq!(status(plain.clone(), rt(vec![b'x'; 10])).await.0, 200);
        assert_eq!(status(plain, rt(vec![b'x'; 11])).await.0, 413);
    }

    #[tokio::test]
    async fn outside_baton_a_route_can_only_lower_the_limit() {
        assert_eq!(status(len_app(BodyLimit::max(4)), post_req(Body::from("fives"))).await.0, 413);
        assert_eq!(status(len_app(BodyLimit::max(5)), post_req(Body::from("fives"))).await, (200, "5".into()));
        // axum's own 2 MiB cap is lifted.
        let big = Body::from(vec![b'x'; 3 << 20]);
        assert_eq!(status(len_app(BodyLimit::max(4 << 20)), post_req(big)).await, (200, (3 << 20).to_string()));
    }

    /// A streamed body (no length declared) is cut once it passes the limit; one that
    /// declares too much fails before any of it is read.
    #[tokio::test]
    async fn streamed_and_declared_bodies() {
        let chunks = || {
            let parts: Vec<Result<Bytes, std::io::Error>> = (0..4).map(|_| Ok(Bytes::from_static(b"abc"))).collect();
            Body::from_stream(futures_util::stream::iter(parts))
        };
        let mut body = RouteLimited::new(chunks(), RouteLimit::new(7));
        let mut got = 0;
        let err = loop {
            match body.frame().await {
                Some(Ok(f)) => got += f.into_data().unwrap().len(),
                Some(Err(e)) => break e,
                None => panic!("the body ended under its limit"),
            }
        };
        assert_eq!(got, 6, "two chunks of three pass a limit of 7, the third does not");
        assert!(err.is::<LengthLimitError>(), "{err}");
        let declared = Full::new(Bytes::from_static(b"12345678"));
        let mut body = RouteLimited::new(declared, RouteLimit::new(7));
        assert!(body.frame().await.unwrap().unwrap_err().is::<LengthLimitError>());
        let exact = Full::new(Bytes::from_static(b"1234567"));
        let data = RouteLimited::new(exact, RouteLimit::new(7)).collect().await.unwrap().to_bytes();
        assert_eq!(&data[..], b"1234567");
    }
}
