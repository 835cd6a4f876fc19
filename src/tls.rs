//! TLS on TCP listeners (`--tls-cert`, `--tls-key`): rustls with the `ring` provider, ALPN `h2`
//! and `http/1.1`. Each worker reads the files when it starts (before it drops privileges, so
//! the key may stay readable by root only): a reload picks up a renewed certificate, and a
//! broken one fails the new worker, which rolls the reload back while the old one keeps serving.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, ErrorKind, Result};

/// Reads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1)
/// and builds the server configuration. Every failure names the file and what is wrong with it.
pub(crate) fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let read = |p: &Path, what: &str| {
        std::fs::read(p).map_err(|e| Error::io(ErrorKind::Tls, format!("cannot read TLS {what} {}", p.display()), e))
    };
    let bad = |p: &Path, what: String| Error::new(ErrorKind::Tls, format!("{}: {what}", p.display()));
    let cert_pem = read(cert, "certificate")?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<Vec<_>, pem::Error>>()
        .map_err(|e| bad(cert, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(cert, "no certificate (expected a PEM \"BEGIN CERTIFICATE\" block)".into()));
    }
    let key_pem = read(key, "key")?;
    let key_der = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(k) => k,
        Err(pem::Error::NoItemsFound) => {
            return Err(bad(key, "no private key (expected a PEM \"BEGIN PRIVATE KEY\" block)".into()));
        }
        Err(e) => return Err(bad(key, format!("invalid PEM: {e}"))),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorKind::Tls, format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            Error::new(ErrorKind::Tls, format!("TLS certificate {} with key {}: {e}", cert.display(), key.display()))
        })?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
