//! The request body limit: a declared `Content-Length` over it is refused at once (413); a
//! body without one is cut once it passes the limit (the app's extractor answers 413).

use axum::body::Body;
use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{Request, Response, StatusCode};

/// 413 when the request declares a body larger than `max`.
pub(crate) fn refuse<B>(req: &Request<B>, max: u64) -> Option<Response<Body>> {
    let declared: Option<u64> = req.headers().get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok();
    declared.filter(|n| *n > max).map(|_| super::plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"))
}

/// The request with its body limited to `max` bytes.
pub(crate) fn limit<B>(req: Request<B>, max: u64) -> Request<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    req.map(|b| Body::new(http_body_util::Limited::new(b, max)))
}
