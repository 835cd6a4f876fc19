//! The gate before a new worker reports ready: the app's own readiness check
//! ([`App::ready_check`](crate::App::ready_check)) and the ready probe (`--ready-probe PATH`),
//! a real request through the whole service stack, in-process (over the network it would
//! reach the old worker, which shares the listener).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, header::HOST};
use http_body_util::BodyExt as _;
use hyper::service::Service as _;

use crate::AppService;
use crate::service::{ConnService, ConnState, Shared};

/// An async hook of the app's (its readiness check, its shutdown hook).
pub(crate) type Hook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// How much of a failed probe's body the error shows.
const EXCERPT: usize = 200;

/// Runs the check, then the probe; the error says what failed, for `start` and `reload`.
pub(crate) async fn gate(
    check: Option<&Hook>,
    probe: Option<&str>,
    app: &AppService,
    shared: &Arc<Shared>,
) -> Result<(), String> {
    if let Some(check) = check {
        check().await.map_err(|e| format!("ready check failed: {e}"))?;
    }
    let Some(path) = probe else { return Ok(()) };
    let svc = ConnService {
        app: app.clone(),
        // Internal: the probe is neither counted in the metrics nor logged.
        conn: Arc::new(ConnState::new(
            None,
            crate::serve::Via { local: crate::LocalAddr::Unix(None), listener: 0, tls: false },
            true,
            shared,
        )),
    };
    let req = Request::get(path)
        .header(HOST, "localhost")
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| format!("ready probe {path:?}: {e}"))?;
    let resp = match svc.call(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = resp.status();
    if status.is_success() {
        tracing::info!("ready probe GET {path}: {status}");
        return Ok(());
    }
    let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024).collect().await;
    let excerpt = match body {
        Ok(b) => {
            let b = b.to_bytes();
            let text = String::from_utf8_lossy(&b[..b.len().min(EXCERPT)]).replace(['\n', '\r'], " ");
            if b.len() > EXCERPT { format!("{}...", text.trim_end()) } else { text.trim_end().to_owned() }
        }
        Err(e) => format!("(body unreadable: {e})"),
    };
    Err(format!("ready probe GET {path} answered {status}: {excerpt}"))
}
