//! [`ClientIp`]: the client's address as far as baton knows it.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, OptionalFromRequestParts};
use http::StatusCode;
use http::request::Parts;

/// An extractor: the client's IP address, the same one the access log names: behind a
/// trusted proxy (`--trusted-proxy`), the one in `X-Forwarded-For`; otherwise the
/// connection's peer (`ConnectInfo`). A request over a unix socket has none unless a trusted
/// proxy named it (`--trusted-proxy unix`): `ClientIp` then fails with a 500, and
/// `Option<ClientIp>` is `None`.
///
/// ```no_run
/// async fn hello(baton::ClientIp(ip): baton::ClientIp) -> String {
///     format!("hello, {ip}")
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    fn of(parts: &Parts) -> Option<ClientIp> {
        let forwarded = parts.extensions.get::<ClientIp>().copied();
        forwarded.or_else(|| parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| ClientIp(c.0.ip())))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<ClientIp, Self::Rejection> {
        ClientIp::of(parts).ok_or((
            StatusCode::INTERNAL_SERVER_ERROR,
            "no client address: a unix socket's request, and no trusted proxy named its client\n",
        ))
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<ClientIp>, Infallible> {
        Ok(ClientIp::of(parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn forwarded_then_peer_then_none() {
        let parts = |exts: &dyn Fn(&mut http::Extensions)| {
            let mut p = http::Request::new(()).into_parts().0;
            exts(&mut p.extensions);
            p
        };
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let fwd = ClientIp("203.0.113.7".parse().unwrap());
        let mut both = parts(&|e| {
            e.insert(ConnectInfo(peer));
            e.insert(fwd);
        });
        assert_eq!(<ClientIp as FromRequestParts<()>>::from_request_parts(&mut both, &()).await, Ok(fwd));
        let mut tcp = parts(&|e| {
            e.insert(ConnectInfo(peer));
        });
        let got = <ClientIp as FromRequestParts<()>>::from_request_parts(&mut tcp, &()).await;
        assert_eq!(got, Ok(ClientIp(peer.ip())));
        let mut unix = parts(&|_| {});
        let got = <ClientIp as FromRequestParts<()>>::from_request_parts(&mut unix, &()).await;
        assert_eq!(got.unwrap_err().0, StatusCode::INTERNAL_SERVER_ERROR);
        let got = <ClientIp as OptionalFromRequestParts<()>>::from_request_parts(&mut unix, &()).await;
        assert_eq!(got, Ok(None));
    }
}
