//! TLS on TCP listeners (`--tls-cert`, `--tls-key`): rustls with the `ring` provider, ALPN `h2`
//! and `http/1.1`. Each worker reads the files when it starts (before it drops privileges, so
//! the key may stay readable by root only): a reload picks up a renewed certificate, and a
//! broken one fails the new worker, which rolls the reload back while the old one keeps serving.
//! Also the handshake of each connection.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use baton_supervise::{Error, ErrorKind, Result};

/// Reads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1)
/// and builds the server configuration. Every failure names the file and what is wrong with it.
pub(crate) fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let read = |p: &Path, what: &str| {
        std::fs::read(p).map_err(|e| Error::io(ErrorKind::Config, format!("cannot read TLS {what} {}", p.display()), e))
    };
    let bad = |p: &Path, what: String| Error::new(ErrorKind::Config, format!("{}: {what}", p.display()));
    let cert_pem = read(cert, "certificate")?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<Vec<_>, pem::Error>>()
        .map_err(|e| bad(cert, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(cert, "no certificate (expected a PEM \"BEGIN CERTIFICATE\" block)".into()));
    }
    let key_pem = read(key, "key")?;
    // PKCS#8's `ENCRYPTED PRIVATE KEY`, or OpenSSL's older `Proc-Type: 4,ENCRYPTED` header
    // (which read as "invalid PEM: base64 decode error").
    let contains = |needle: &[u8]| key_pem.windows(needle.len()).any(|w| w == needle);
    if contains(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") || contains(b"Proc-Type: 4,ENCRYPTED") {
        return Err(bad(
            key,
            "an encrypted private key, and a daemon has no one to ask its passphrase: decrypt it \
             (`openssl pkey -in KEY -out PLAIN`) and keep it readable by root only (workers read it \
             before they drop privileges)"
                .into(),
        ));
    }
    let key_der = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(k) => k,
        Err(pem::Error::NoItemsFound) => {
            return Err(bad(
                key,
                "no private key (expected a PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \
                 \"BEGIN EC PRIVATE KEY\" block)"
                    .into(),
            ));
        }
        Err(e) => return Err(bad(key, format!("invalid PEM: {e}"))),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorKind::Config, format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            let why = match e {
                // rustls says "keys may not be consistent: KeyMismatch".
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                    "the key is not the certificate's (the first certificate in the file must be the \
                     server's own, its chain after it)"
                        .to_owned()
                }
                e => e.to_string(),
            };
            Error::new(
                ErrorKind::Config,
                format!("TLS certificate {} with key {}: {why}", cert.display(), key.display()),
            )
        })?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves one TCP connection over TLS: the handshake (bounded by the header-read timeout: a
/// client that connects and says nothing is cut either way), then HTTP as usual.
pub(crate) async fn serve(
    acceptor: tokio_rustls::TlsAcceptor,
    mut tcp: tokio::net::TcpStream,
    peer: Option<std::net::SocketAddr>,
    mut via: crate::serve::Via,
    ctx: Arc<crate::serve::Ctx>,
    alive: tokio::sync::mpsc::Sender<()>,
) {
    let limit = Some(ctx.shared.cfg.header_timeout).filter(|d| !d.is_zero()).unwrap_or(std::time::Duration::MAX);
    let who = peer.map_or_else(|| "?".to_owned(), |p| p.to_string());
    let shared = &ctx.shared;
    let start = shared.elapsed();
    let handshake = async {
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await? == 1 && first[0].is_ascii_uppercase() {
            // An HTTP method where a TLS record (0x16) belongs: say so, as nginx does,
            // instead of a handshake failure the user cannot read. Logged and counted as
            // any answered request.
            const WHY: &str = "a plain HTTP request on the TLS port";
            answer_plain_http(&mut tcp, |bytes| {
                let end = shared.elapsed();
                let answer = crate::service::Rejected {
                    status: http::StatusCode::BAD_REQUEST,
                    reason: WHY,
                    bytes,
                    took: end.saturating_sub(start),
                    end,
                };
                answer.record(
                    shared,
                    &crate::access_log::Remote::new(peer),
                    via.listener,
                    ctx.metrics_on(via.listener).is_some(),
                );
            })
            .await;
            return Err(std::io::Error::other(format!("{WHY} (answered 400)")));
        }
        acceptor.accept(tcp).await
    };
    match tokio::time::timeout(limit, handshake).await {
        Ok(Ok(tls)) => {
            via.tls = true;
            crate::serve::serve_conn(tls, peer, via, ctx, alive).await
        }
        // Scanners and plain-HTTP clients: not worth more than a debug line each.
        Ok(Err(e)) => tracing::debug!("TLS handshake with {who} failed: {e}"),
        Err(_) => tracing::debug!("TLS handshake with {who} timed out after {limit:?}"),
    }
}

/// Answers a plain HTTP request on a TLS port with 400 (`answered` with the body's bytes
/// sent, once written), then closes gently: the request is read and discarded (up to 64 KiB)
/// so that closing does not reset the connection before the client has read the answer.
async fn answer_plain_http(tcp: &mut tokio::net::TcpStream, answered: impl FnOnce(u64)) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY: &str = "This port speaks TLS: use https://\n";
    let resp = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let sent = tcp.write_all(resp.as_bytes()).await.is_ok();
    answered(if sent { BODY.len() as u64 } else { 0 });
    if !sent || tcp.shutdown().await.is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    while left > 0 {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}
