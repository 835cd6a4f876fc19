//! The health route (`--health-path`): 200 while serving, 503 once the worker is shutting
//! down, so load balancers stop sending before the drain.

use std::sync::atomic::Ordering;

use axum::body::Body;
use http::{Request, Response, StatusCode};

use super::Shared;

/// The answer when `req` is for the health route.
pub(crate) fn answer<B>(req: &Request<B>, shared: &Shared) -> Option<Response<Body>> {
    if shared.cfg.health_path.as_deref() != Some(req.uri().path()) {
        return None;
    }
    let mut resp = if shared.unhealthy.load(Ordering::Relaxed) {
        super::plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        super::plain(StatusCode::OK, "ok\n")
    };
    if !shared.cfg.health_log {
        resp.extensions_mut().insert(crate::NoAccessLog);
    }
    Some(resp)
}
