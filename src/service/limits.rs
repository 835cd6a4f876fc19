//! Limits on the request: a declared `Content-Length` over the body limit is refused at once
//! (413), a body without one is cut once it passes the limit (the app's extractor answers
//! 413); a body that arrives too slowly is cut (`--body-timeout`); an HTTP/1.1 request
//! without exactly one `Host` is refused (400, RFC 9112 §3.2).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body::Frame;

use crate::body_limit::{RouteLimit, RouteLimited};

/// 413 when the request declares (`content_length`) a body larger than `max`.
pub(crate) fn refuse(content_length: Option<&HeaderValue>, max: u64) -> Option<Response<Body>> {
    let declared: Option<u64> = content_length?.to_str().ok()?.parse().ok();
    declared.filter(|n| *n > max).map(|_| super::plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"))
}

/// 400 for an HTTP/1.1 request without exactly one `Host` (HTTP/1.0 may omit it, never
/// repeat it; HTTP/2 has `:authority`); `n`: how many it has.
pub(crate) fn bad_host(version: Version, n: usize) -> Option<Response<Body>> {
    let bad = match version {
        Version::HTTP_11 => n != 1,
        Version::HTTP_10 | Version::HTTP_09 => n > 1,
        _ => false,
    };
    bad.then(|| super::plain(StatusCode::BAD_REQUEST, "a request needs exactly one Host header\n"))
}

/// The request with its body limited to `max` bytes and to a minimum pace after `slow` (an
/// ended body replaced by an empty one); `start`: when the request began; `routes`: some
/// route may set its own limit (see [`crate::body_limit`]).
pub(crate) fn limit<B>(
    mut req: Request<B>,
    max: u64,
    routes: bool,
    slow: Option<Duration>,
    start: impl FnOnce() -> Instant,
) -> Request<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    // No body (most requests): nothing to limit, and an empty body costs no allocation.
    if req.body().is_end_stream() {
        return req.map(|_| Body::empty());
    }
    // axum's extractors (`Bytes`, `String`, `Json`, `Form`) cap a body at their own 2 MiB
    // unless told otherwise: above that, `--max-body-bytes` would be silently lowered to it.
    // This body is limited here, so theirs is turned off (the app's own `DefaultBodyLimit`
    // on a route still applies: it is set after this). At or below 2 MiB theirs never bites
    // first, and the default path pays no extension.
    if max > AXUM_DEFAULT_BODY_LIMIT {
        axum::extract::DefaultBodyLimit::disable().apply(&mut req);
    }
    // Some route sets its own limit (`baton::BodyLimit`): the body's limit is read when it is
    // first read, after routing.
    if routes {
        let cell = RouteLimit::new(max);
        req.extensions_mut().insert(cell.clone());
        return req.map(|b| match slow {
            Some(grace) => {
                let paced = Paced { inner: Box::pin(b), start: start(), grace, bytes: 0, timer: None };
                Body::new(RouteLimited::new(paced, cell))
            }
            None => Body::new(RouteLimited::new(b, cell)),
        });
    }
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    req.map(|b| match slow {
        Some(grace) => {
            // Limited outermost: the app's extractor recognises its error (413).
            let paced = Paced { inner: Box::pin(b), start: start(), grace, bytes: 0, timer: None };
            Body::new(http_body_util::Limited::new(paced, max))
        }
        None => Body::new(http_body_util::Limited::new(b, max)),
    })
}

/// The body limit axum's extractors apply by default (`axum_core`'s `DEFAULT_LIMIT`).
const AXUM_DEFAULT_BODY_LIMIT: u64 = 2 * 1024 * 1024;

/// The pace a body must keep after its grace, on average since the request began.
const MIN_RATE: u64 = 1024;

/// A body that fails once it falls behind `MIN_RATE` bytes a second after `grace`: the timer
/// is set to the moment it would fall behind and moves on with every frame; it exists only
/// while the body waits for data.
struct Paced<B> {
    inner: Pin<Box<B>>,
    start: Instant,
    grace: Duration,
    bytes: u64,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> http_body::Body for Paced<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(other) => return Poll::Ready(other.map(|r| r.map_err(Into::into))),
            Poll::Pending => {}
        }
        let due = (this.start + this.grace + Duration::from_millis(this.bytes * 1000 / MIN_RATE)).into();
        let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if timer.deadline() != due {
            timer.as_mut().reset(due);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err("request body too slow (--body-timeout)".into()))),
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
