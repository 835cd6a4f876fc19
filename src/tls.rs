//! TLS on TCP listeners (`--tls-cert`, `--tls-key`): rustls with the `ring` provider, ALPN `h2`
//! and `http/1.1`. Each worker reads the files when it starts (before it drops privileges, so
//! the key may stay readable by root only): a reload picks up a renewed certificate, and a
//! broken one fails the new worker, which rolls the reload back while the old one keeps serving.
//! Also the handshake of each connection, and the certificate's validity: a certificate that
//! has expired, is not yet valid or expires within [`WARN_WITHIN`] is warned of when a worker
//! loads it and once a day after, and its expiry is a metric.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use baton_supervise::{Error, ErrorKind, Result};

/// What a worker serves TLS with.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub(crate) config: Arc<ServerConfig>,
    /// The leaf certificate's validity, when it could be read (rustls checks the certificate
    /// against its key, not its dates: an expired one is served, and clients refuse it).
    pub(crate) validity: Option<Validity>,
}

/// Reads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1)
/// and builds the server configuration. Every failure names the file and what is wrong with it.
pub(crate) fn load(cert: &Path, key: &Path) -> Result<Loaded> {
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
    let validity = self::validity(&certs[0]);
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
    Ok(Loaded { config: Arc::new(cfg), validity })
}

/// How long before its expiry a certificate is warned of.
pub(crate) const WARN_WITHIN: i64 = 14 * 86_400;

/// A certificate's validity period, in seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Validity {
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
}

impl Validity {
    /// The warning due at `now` (seconds since the epoch) for the certificate in `path`, if any.
    pub(crate) fn warning(&self, path: &Path, now: i64) -> Option<String> {
        let path = path.display();
        if now > self.not_after {
            Some(format!(
                "TLS certificate {path} expired at {}, {} ago: clients refuse it; renew it and reload",
                date(self.not_after),
                span(now - self.not_after)
            ))
        } else if now < self.not_before {
            Some(format!(
                "TLS certificate {path} is not valid until {}, in {}: clients refuse it until then (is the clock right?)",
                date(self.not_before),
                span(self.not_before - now)
            ))
        } else if self.not_after - now <= WARN_WITHIN {
            Some(format!(
                "TLS certificate {path} expires at {}, in {}: renew it and reload",
                date(self.not_after),
                span(self.not_after - now)
            ))
        } else {
            None
        }
    }
}

/// Seconds since the epoch now.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// `2026-12-05T19:22:14Z`
pub(crate) fn date(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0).unsigned_abs());
    let mut s = String::new();
    baton_supervise::log::rfc3339(&mut s, t);
    s.replace(".000Z", "Z")
}

/// `3 days`, `20 hours`, `5 minutes`: a span as a person would say it, rounded down.
fn span(secs: i64) -> String {
    let (n, unit) = match secs {
        s if s >= 2 * 86_400 => (s / 86_400, "days"),
        s if s >= 2 * 3_600 => (s / 3_600, "hours"),
        s if s >= 120 => (s / 60, "minutes"),
        s => (s, "seconds"),
    };
    if n == 1 { format!("1 {}", unit.trim_end_matches('s')) } else { format!("{n} {unit}") }
}

/// The validity of an X.509 certificate in DER: `Certificate ::= SEQUENCE { tbsCertificate
/// SEQUENCE { [0] version OPTIONAL, serialNumber INTEGER, signature SEQUENCE, issuer SEQUENCE,
/// validity SEQUENCE { notBefore Time, notAfter Time }, .. }, .. }` (RFC 5280, 4.1). `None` for
/// anything else: it only feeds a warning and a metric (rustls has taken the certificate).
pub(crate) fn validity(der: &[u8]) -> Option<Validity> {
    let (0x30, cert, _) = tlv(der)? else { return None };
    let (0x30, mut tbs, _) = tlv(cert)? else { return None };
    if let (0xa0, _, rest) = tlv(tbs)? {
        tbs = rest;
    }
    for want in [0x02, 0x30, 0x30] {
        let (tag, _, rest) = tlv(tbs)?;
        if tag != want {
            return None;
        }
        tbs = rest;
    }
    let (0x30, period, _) = tlv(tbs)? else { return None };
    let (tag, not_before, rest) = tlv(period)?;
    let not_before = time(tag, not_before)?;
    let (tag, not_after, _) = tlv(rest)?;
    Some(Validity { not_before, not_after: time(tag, not_after)? })
}

/// One DER element: its tag, its contents and what follows it.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, b) = b.split_first()?;
    let (len, b) = if first < 0x80 {
        (usize::from(first), b)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        (b[..n].iter().fold(0usize, |len, &x| len << 8 | usize::from(x)), &b[n..])
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// A DER `UTCTime` (`YYMMDDHHMMSSZ`, 1950-2049) or `GeneralizedTime` (`YYYYMMDDHHMMSSZ`) in
/// seconds since the epoch.
fn time(tag: u8, v: &[u8]) -> Option<i64> {
    let number = |s: &[u8]| s.iter().try_fold(0i64, |n, &c| c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0')));
    let (year, rest) = match (tag, v.len()) {
        (0x17, 13) => {
            let yy = number(&v[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &v[2..])
        }
        (0x18, 15) => (number(&v[..4])?, &v[4..]),
        _ => return None,
    };
    if rest[10] != b'Z' {
        return None;
    }
    let two = |i: usize| number(&rest[i..i + 2]);
    let (month, day, hour, minute, second) = (two(0)?, two(2)?, two(4)?, two(6)?, two(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
                    &crate::access_log::Remote::new(peer.map(|p| p.ip())),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls").join(pem);
        CertificateDer::from_pem_file(path).unwrap().to_vec()
    }

    #[test]
    fn validity_is_read_from_utc_and_generalized_times() {
        // `openssl x509 -dates`: Nov 25 11:53:33 2026 GMT to Nov  1 11:53:33 2126 GMT
        // (GeneralizedTime after 2049), and Dec  5 21:08:06 2026 to Dec  4 21:08:06 2026.
        let one = validity(&der("one.pem")).unwrap();
        assert_eq!(
            (date(one.not_before), date(one.not_after)),
            ("2026-11-25T11:53:33Z".into(), "2126-11-01T11:53:33Z".into())
        );
        let expired = validity(&der("expired.pem")).unwrap();
        assert_eq!(date(expired.not_after), "2026-12-04T21:08:06Z");
        assert_eq!(expired.not_before - expired.not_after, 86_400);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(time(0x17, b"500101000000Z"), Some(-631_152_000), "UTCTime 50 is 1950");
        assert_eq!(time(0x17, b"491231235959Z"), Some(2_524_607_999), "UTCTime 49 is 2049");
        for bad in [
            &b"500101000000+"[..],
            b"501301000000Z",
            b"500100000000Z",
            b"500101240000Z",
            b"5001010000Z",
            b"50010100000aZ",
        ] {
            assert_eq!(time(0x17, bad), None, "{}", String::from_utf8_lossy(bad));
        }
        // Cut anywhere or not a certificate: None, never a panic.
        let cert = der("one.pem");
        for n in 0..cert.len() {
            let _ = validity(&cert[..n]);
        }
        assert_eq!(validity(b"\x30\x84\xff\xff\xff\xff"), None);
        assert_eq!(validity(&[]), None);
    }

    #[test]
    fn warnings_for_expired_early_and_soon_to_expire_certificates() {
        let v = Validity { not_before: 1_000_000, not_after: 1_000_000 + 90 * 86_400 };
        let p = Path::new("/etc/app/cert.pem");
        let at = |now: i64| v.warning(p, now);
        assert_eq!(at(v.not_before), None);
        assert_eq!(at(v.not_after - WARN_WITHIN - 1), None);
        assert_eq!(
            at(v.not_after - WARN_WITHIN).unwrap(),
            "TLS certificate /etc/app/cert.pem expires at 1970-04-12T13:46:40Z, in 14 days: renew it and reload"
        );
        assert!(at(v.not_after - 3 * 3_600 - 5).unwrap().ends_with("in 3 hours: renew it and reload"));
        assert!(at(v.not_after).unwrap().ends_with("in 0 seconds: renew it and reload"));
        assert_eq!(
            at(v.not_after + 86_400).unwrap(),
            "TLS certificate /etc/app/cert.pem expired at 1970-04-12T13:46:40Z, 24 hours ago: clients refuse it; renew it and reload"
        );
        assert!(
            at(v.not_before - 61).unwrap().starts_with(
                "TLS certificate /etc/app/cert.pem is not valid until 1970-01-12T13:46:40Z, in 61 seconds:"
            )
        );
        assert_eq!(span(2 * 86_400 - 1), "47 hours");
        assert_eq!(span(120), "2 minutes");
        assert_eq!((span(2 * 86_400), span(60)), ("2 days".into(), "60 seconds".into()));
    }
}
