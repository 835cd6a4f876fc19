//! The request timeout (`--request-timeout`): a response that has not started after it is
//! replaced by a 503.

use std::future::Future;
use std::time::Duration;

/// `fut`'s output, or `None` once `limit` passed first. No timer when `limit` is `None`.
pub(crate) async fn within<F: Future>(limit: Option<Duration>, fut: F) -> Option<F::Output> {
    match limit {
        Some(t) => tokio::time::timeout(t, fut).await.ok(),
        None => Some(fut.await),
    }
}
