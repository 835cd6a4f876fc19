//! TLS through the real binary (`--tls-cert`, `--tls-key`): HTTP/1.1 and HTTP/2 chosen by ALPN,
//! a reload that picks up a renewed certificate, a broken certificate rolled back, and clients
//! that do not speak TLS. The certificates are test-only fixtures (`tests/fixtures/tls/gen.sh`).
#![cfg(all(feature = "tls", target_os = "linux"))]

mod support;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use support::{Daemon, text, wait_until};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls").join(name)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A client that trusts only the fixtures' CA and offers `alpn`.
fn client(alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(fixture("ca.pem")).unwrap()).unwrap();
    connector(roots, alpn)
}

fn connector(roots: rustls::RootCertStore, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// What one TLS request saw.
#[derive(Debug)]
struct Fetched {
    /// The server's leaf certificate (DER).
    leaf: Vec<u8>,
    alpn: Option<Vec<u8>>,
    status: u16,
    version: String,
    body: String,
}

/// `GET path` over TLS, verifying the server as `localhost`; HTTP/2 if `alpn` is `h2`.
async fn fetch(addr: SocketAddr, alpn: &[u8], path: &str) -> anyhow::Result<Fetched> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = client(alpn).connect(ServerName::try_from("localhost")?, tcp).await?;
    let (_, conn) = tls.get_ref();
    let leaf = conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    if alpn.as_deref() == Some(b"h2") {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
        let conn = tokio::spawn(conn);
        let req = hyper::Request::get(format!("https://localhost{path}")).body(Empty::<Bytes>::new())?;
        let resp = send.send_request(req).await?;
        let (status, version) = (resp.status().as_u16(), format!("{:?}", resp.version()));
        let body = String::from_utf8(resp.into_body().collect().await?.to_bytes().to_vec())?;
        // Close the connection as a browser would when done: a connection left open and never
        // polled again would not answer the server's GOAWAY ping and hold a drain until its
        // deadline.
        drop(send);
        conn.await??;
        return Ok(Fetched { leaf, alpn, status, version, body });
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await?;
    let r = support::parse(&buf)?;
    let version = String::from_utf8_lossy(&buf).split_whitespace().next().unwrap_or_default().to_owned();
    Ok(Fetched { leaf, alpn, status: r.status, version, body: r.body })
}

/// One request on an open HTTP/1.1 connection; returns the head (lowercased) and the body
/// (by `content-length`).
async fn exchange<S>(s: &mut S, path: &str) -> anyhow::Result<(String, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no content-length: {head}"))?;
    while buf.len() < end + len {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed in the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((head, String::from_utf8_lossy(&buf[end..end + len]).into_owned()))
}

fn der(pem_file: &str) -> Vec<u8> {
    CertificateDer::from_pem_file(fixture(pem_file)).unwrap().to_vec()
}

/// Puts fixture `name` (`one`, `two` or `expired`) at `cert.pem`/`key.pem` in `dir`, as a renewal does.
fn install_cert(dir: &Path, name: &str) {
    for (from, to) in [(format!("{name}.pem"), "cert.pem"), (format!("{name}.key"), "key.pem")] {
        std::fs::copy(fixture(&from), dir.join("new")).unwrap();
        std::fs::rename(dir.join("new"), dir.join(to)).unwrap();
    }
}

#[test]
fn tls_serves_h1_and_h2_by_alpn_and_reload_renews_the_certificate() {
    let d = Daemon::new("tls");
    install_cert(d.dir.path(), "one");
    // Relative paths: the daemon runs in `/`, so the master must have made them absolute.
    let out = d.start(&["--delay", "0", "--tls-cert", "cert.pem", "--tls-key", "key.pem"]);
    assert!(out.status.success(), "{}", text(&out));
    let rt = rt();
    let master = d.pid();

    let h1 = rt.block_on(fetch(d.addr(), b"http/1.1", "/")).unwrap();
    assert_eq!((h1.status, h1.body.as_str()), (200, "hello world!"));
    assert_eq!((h1.alpn.as_deref(), h1.version.as_str()), (Some(&b"http/1.1"[..]), "HTTP/1.1"));
    assert_eq!(h1.leaf, der("one.pem"));
    let h2 = rt.block_on(fetch(d.addr(), b"h2", "/pid")).unwrap();
    assert_eq!((h2.alpn.as_deref(), h2.version.as_str(), h2.status), (Some(&b"h2"[..]), "HTTP/2.0", 200));
    let first: i32 = h2.body.parse().unwrap();
    assert_ne!(first, master, "served by a worker");
    let serving = "(TLS on TCP listeners, certificate valid until 2126-11-01T11:53:33Z)";
    assert!(d.log().contains("serving on http=127.0.0.1") && d.log().contains(serving), "{}", d.log());
    assert!(!d.log().contains("WARN"), "a certificate valid for 100 years is not warned of: {}", d.log());

    // A keep-alive TLS connection open across the reload: its next request is still answered
    // by the old worker, with `Connection: close`, as on plain TCP.
    let mut kept = rt
        .block_on(async {
            let tcp = tokio::net::TcpStream::connect(d.addr()).await?;
            let mut tls = client(b"http/1.1").connect(ServerName::try_from("localhost")?, tcp).await?;
            let (head, body) = exchange(&mut tls, "/pid").await?;
            anyhow::ensure!(head.starts_with("http/1.1 200") && !head.contains("connection: close"), "{head}");
            anyhow::ensure!(body == first.to_string(), "{body}");
            Ok(tls)
        })
        .unwrap();

    // Renewal: new files, then a reload; the new worker presents the new certificate.
    install_cert(d.dir.path(), "two");
    let out = d.hello(&["reload", "-p", "x.pid"]);
    assert!(out.status.success(), "{}", text(&out));
    let (head, body) = rt.block_on(exchange(&mut kept, "/pid")).unwrap();
    assert!(head.starts_with("http/1.1 200") && head.contains("connection: close"), "{head}");
    assert_eq!(body, first.to_string(), "the old worker answers its own connection");
    let after = rt.block_on(fetch(d.addr(), b"http/1.1", "/pid")).unwrap();
    assert_eq!(after.leaf, der("two.pem"));
    assert_ne!(after.body, first.to_string());

    // A broken renewal is rolled back with the reason; the old worker keeps serving.
    std::fs::write(d.dir.join("cert.pem"), "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
        .unwrap();
    let out = d.hello(&["reload", "-p", "x.pid"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("cert.pem: invalid PEM"), "reason missing: {}", text(&out));
    let still = rt.block_on(fetch(d.addr(), b"h2", "/pid")).unwrap();
    assert_eq!((still.body, still.leaf), (after.body, der("two.pem")));
    assert!(d.hello(&["stop", "-p", "x.pid"]).status.success());
}

#[test]
fn an_expired_certificate_is_served_with_a_warning_in_the_log() {
    let d = Daemon::new("tls-expired");
    install_cert(d.dir.path(), "expired");
    let out = d.start(&["--delay", "0", "--tls-cert", "cert.pem", "--tls-key", "key.pem"]);
    assert!(out.status.success(), "refused rather than served: {}", text(&out));
    let cert = d.dir.join("cert.pem");
    let warning = format!(
        "WARN  worker[{}] TLS certificate {} expired at 2026-12-04T21:08:06Z, ",
        // The worker's pid, from the serving line.
        d.log().split("worker[").nth(1).and_then(|r| r.split(']').next()).unwrap_or("?"),
        cert.display()
    );
    let log = d.log();
    assert!(log.contains(&warning) && log.contains(" ago: clients refuse it; renew it and reload\n"), "{log}");
    assert!(log.contains("(TLS on TCP listeners, certificate expired at 2026-12-04T21:08:06Z)"), "{log}");
    // Served: a client is shown the certificate, and refuses it for its dates.
    let err = rt()
        .block_on(async {
            let tcp = tokio::net::TcpStream::connect(d.addr()).await?;
            connector(rustls::RootCertStore::empty(), b"http/1.1")
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
        })
        .unwrap_err();
    assert!(err.to_string().contains("invalid peer certificate: Expired"), "{err}");
    // `status` shows the generation's certificate.
    let out = d.hello(&["status", "-p", "x.pid"]);
    assert!(text(&out).contains("; TLS certificate expired at 2026-12-04T21:08:06Z)\n"), "{}", text(&out));
    // A reload warns again, from the new worker.
    let out = d.hello(&["reload", "-p", "x.pid"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(d.log().matches(" expired at 2026-12-04T21:08:06Z, ").count(), 2, "{}", d.log());
    // Renewed: the reload and `status` name the new certificate's expiry.
    install_cert(d.dir.path(), "one");
    let out = d.hello(&["reload", "-p", "x.pid"]);
    assert!(text(&out).contains("; TLS certificate valid until 2126-11-01T11:53:33Z)"), "{}", text(&out));
    let status = text(&d.hello(&["status", "-p", "x.pid"]));
    let serving: Vec<&str> = status.lines().filter(|l| l.contains(" serving (")).collect();
    assert_eq!(serving.len(), 1, "{status}");
    assert!(serving[0].ends_with("; TLS certificate valid until 2126-11-01T11:53:33Z)"), "{status}");
    assert!(d.hello(&["stop", "-p", "x.pid"]).status.success());
}

#[test]
fn tls_port_survives_clients_that_do_not_speak_tls() {
    let d = Daemon::new("tls-bad-clients");
    install_cert(d.dir.path(), "one");
    let out = d.start(&["--delay", "0", "--tls-cert", "cert.pem", "--tls-key", "key.pem", "--header-timeout", "1s"]);
    assert!(out.status.success(), "{}", text(&out));
    let rt = rt();
    // Plain HTTP on the TLS port: a readable 400 (as nginx does), never the app's answer.
    let r = support::get(d.addr(), "/").unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("use https://"), "{r:?}");
    // ... and in the access log, as any answered request: no request line, the body's bytes.
    let body = r.body.len();
    wait_until(Duration::from_secs(5), "the 400's access log line", || {
        d.log()
            .lines()
            .any(|l| l.starts_with("127.0.0.1 - - [") && l.contains(&format!("] \"-\" 400 {body} \"-\" \"-\" ")))
    });
    // A client that connects and never starts the handshake is cut at the header timeout
    // (1 s here; the 20 s read timeout only bounds the test).
    let mut silent = TcpStream::connect(d.addr()).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let n = silent.read(&mut [0u8; 16]);
    assert!(matches!(n, Ok(0)) || n.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset), "{n:?}");
    // A client that does not trust the certificate fails its handshake; the server lives on.
    let untrusting = connector(rustls::RootCertStore::empty(), b"http/1.1");
    let err = rt
        .block_on(async {
            let tcp = tokio::net::TcpStream::connect(d.addr()).await?;
            untrusting.connect(ServerName::try_from("localhost").unwrap(), tcp).await
        })
        .unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    let ok = rt.block_on(fetch(d.addr(), b"http/1.1", "/")).unwrap();
    assert_eq!((ok.status, ok.body.as_str()), (200, "hello world!"));
    assert!(d.hello(&["stop", "-p", "x.pid"]).status.success());
}

#[test]
fn bad_tls_files_fail_the_start_with_the_reason() {
    let d = Daemon::new("tls-bad-files");
    install_cert(d.dir.path(), "one");
    std::fs::write(d.dir.join("empty.pem"), "").unwrap();
    let other_key = fixture("two.key").to_string_lossy().into_owned();
    // The chain in the wrong order (its CA first): rustls checks the key against the first.
    let mut reversed = std::fs::read(fixture("ca.pem")).unwrap();
    reversed.extend(std::fs::read(d.dir.join("cert.pem")).unwrap());
    std::fs::write(d.dir.join("reversed.pem"), reversed).unwrap();
    let not_its_key = "the key is not the certificate's (the first certificate in the file must be the server's own";
    let (encrypted, legacy) = (fixture("one-encrypted.key"), fixture("one-legacy-encrypted.key"));
    let (encrypted, legacy) = (encrypted.to_string_lossy(), legacy.to_string_lossy());
    let cannot_ask = "an encrypted private key, and a daemon has no one to ask its passphrase: decrypt it";
    let cases: [(&[&str], &str); 8] = [
        (&["--tls-cert", "cert.pem"], "--tls-key"),
        (&["--tls-cert", "missing.pem", "--tls-key", "key.pem"], "cannot read TLS certificate"),
        (&["--tls-cert", "empty.pem", "--tls-key", "key.pem"], "empty.pem: no certificate"),
        (&["--tls-cert", "cert.pem", "--tls-key", "cert.pem"], "cert.pem: no private key"),
        (&["--tls-cert", "cert.pem", "--tls-key", &other_key], not_its_key),
        (&["--tls-cert", "reversed.pem", "--tls-key", "key.pem"], not_its_key),
        // It said "no private key", and for the older form "invalid PEM: base64 decode error".
        (&["--tls-cert", "cert.pem", "--tls-key", &encrypted], cannot_ask),
        (&["--tls-cert", "cert.pem", "--tls-key", &legacy], cannot_ask),
    ];
    for (args, reason) in cases {
        let out = d.start(args);
        assert!(!out.status.success(), "{args:?} started: {}", text(&out));
        assert!(text(&out).contains(reason), "{args:?}: reason {reason:?} missing: {}", text(&out));
        assert!(!d.dir.join("x.pid").exists(), "{args:?}: pid file left behind");
    }
    wait_until(Duration::from_secs(10), "the port to be free", || TcpStream::connect(d.addr()).is_err());
    // No TCP listener for TLS to serve on: refused (it served plain on the unix socket).
    let sock = d.dir.join("u.sock");
    let (cert, key) = (d.dir.join("cert.pem"), d.dir.join("key.pem"));
    let (code, err) = support::refused(&[
        "run",
        "--listen",
        &format!("unix:{}", sock.display()),
        "--tls-cert",
        &cert.to_string_lossy(),
        "--tls-key",
        &key.to_string_lossy(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("every listener is a unix socket, which stays plain"), "{err}");
    assert!(!sock.exists(), "socket file left behind");
}

#[test]
#[ignore = "needs root (CI runs as root)"]
fn a_key_readable_by_root_only_serves_with_workers_as_nobody() {
    use std::os::unix::fs::PermissionsExt;
    let nobody = support::nobody();
    let d = Daemon::new("tls-user");
    install_cert(d.dir.path(), "one");
    std::fs::set_permissions(d.dir.join("key.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = d.start(&["--delay", "0", "--user", "nobody", "--tls-cert", "cert.pem", "--tls-key", "key.pem"]);
    assert!(out.status.success(), "{}", text(&out));
    let rt = rt();
    let r = rt.block_on(fetch(d.addr(), b"http/1.1", "/pid")).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", r.body)).unwrap();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().next().unwrap();
    assert_eq!(uid, nobody.uid.to_string(), "the worker runs as nobody");
    // Each new worker reads the key before it drops privileges: reloads keep working.
    let out = d.hello(&["reload", "-p", "x.pid"]);
    assert!(out.status.success(), "{}", text(&out));
    let after = rt.block_on(fetch(d.addr(), b"h2", "/pid")).unwrap();
    assert_ne!(after.body, r.body);
    assert!(d.hello(&["stop", "-p", "x.pid"]).status.success());
}
