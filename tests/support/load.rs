//! A load client that never retries: every request sent on a connection must get its full,
//! correct answer, or it counts as failed. HTTP/1.1 keep-alive (back-to-back requests, like
//! `wrk`), a fresh connection per request, or HTTP/2 (h2c prior knowledge).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    KeepAlive,
    Fresh,
    H2,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub conns: usize,
    pub mode: Mode,
    pub path: &'static str,
    pub expect_body: &'static str,
    /// Upper bounds: the load stops at whichever comes first (or when told to).
    pub max_requests_per_conn: u64,
    pub max_time: Duration,
    /// A pause of up to this long (varying) before each request on odd-numbered connections,
    /// like a browser or proxy reusing an idle keep-alive connection. Zero: back-to-back.
    pub think: Duration,
}

impl Config {
    /// `GET /` expecting hello's answer, at most 60 s, back-to-back requests.
    pub fn hello(addr: SocketAddr, mode: Mode, conns: usize) -> Config {
        Config {
            addr,
            conns,
            mode,
            path: "/",
            expect_body: "hello world!",
            max_requests_per_conn: u64::MAX,
            max_time: Duration::from_secs(60),
            think: Duration::ZERO,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub ok: u64,
    pub failed: u64,
    /// Connections refused after the test said the server is stopping (expected then).
    pub refused_when_stopping: u64,
    /// Responses that carried `Connection: close`.
    pub closes: u64,
    /// Connections the server closed with no request in flight (nothing lost).
    pub idle_closed: u64,
    /// Requests the client library refused to send because the server had already announced
    /// a graceful HTTP/2 GOAWAY (NO_ERROR): per RFC 9113 6.8 such streams were not processed;
    /// the next request goes on a new connection. Never sent, so not lost.
    pub unsent_goaway: u64,
    /// Requests hyper returned unwritten because the connection closed while they were queued.
    pub unsent: u64,
    pub failures: Vec<String>,
    pub latencies: Vec<Duration>,
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.refused_when_stopping += o.refused_when_stopping;
        self.closes += o.closes;
        self.idle_closed += o.idle_closed;
        self.unsent_goaway += o.unsent_goaway;
        self.unsent += o.unsent;
        self.failures.extend(o.failures.into_iter().take(10usize.saturating_sub(self.failures.len())));
        self.latencies.extend(o.latencies);
    }

    fn fail(&mut self, what: String) {
        self.failed += 1;
        if self.failures.len() < 10 {
            self.failures.push(what);
        }
    }

    /// The latency at quantile `q` (0..=1).
    pub fn quantile(&self, q: f64) -> Duration {
        let mut v = self.latencies.clone();
        v.sort();
        if v.is_empty() {
            return Duration::ZERO;
        }
        v[((v.len() - 1) as f64 * q).round() as usize]
    }
}

/// Flags the test flips: `stop` ends the load; `stopping` says the server is shutting down,
/// so refused connections are expected from then on.
#[derive(Debug, Default)]
pub struct Control {
    pub stop: AtomicBool,
    pub stopping: AtomicBool,
    /// While set, connections send no new request (see [`Control::busy`]).
    pub pause: AtomicBool,
    /// Requests sent and not yet answered (or failed).
    pub busy: std::sync::atomic::AtomicUsize,
}

pub async fn run(cfg: Config, ctl: Arc<Control>) -> Stats {
    let tasks: Vec<_> = (0..cfg.conns)
        .map(|i| {
            let (mut cfg, ctl) = (cfg.clone(), ctl.clone());
            if i % 2 == 0 {
                cfg.think = Duration::ZERO;
            }
            tokio::spawn(async move { conn_loop(cfg, ctl, i as u64).await })
        })
        .collect();
    let mut total = Stats::default();
    for t in tasks {
        total.merge(t.await.unwrap());
    }
    total
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

async fn conn_loop(cfg: Config, ctl: Arc<Control>, seed: u64) -> Stats {
    let mut st = Stats::default();
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let start = Instant::now();
    let mut sent = 0;
    let mut sender: Option<Sender> = None;
    while !ctl.stop.load(Ordering::Relaxed) && sent < cfg.max_requests_per_conn && start.elapsed() < cfg.max_time {
        if sender.is_none() {
            let stopping = ctl.stopping.load(Ordering::SeqCst);
            let stream = match TcpStream::connect(cfg.addr).await {
                Ok(s) => s,
                Err(e) if stopping => {
                    let _ = e;
                    st.refused_when_stopping += 1;
                    return st;
                }
                Err(e) => {
                    st.fail(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let io = TokioIo::new(stream);
            sender = match cfg.mode {
                Mode::KeepAlive | Mode::Fresh => match hyper::client::conn::http1::handshake(io).await {
                    Ok((s, conn)) => {
                        tokio::spawn(conn);
                        Some(Sender::H1(s))
                    }
                    Err(e) => {
                        st.fail(format!("h1 handshake: {e}"));
                        continue;
                    }
                },
                Mode::H2 => match hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await {
                    Ok((s, conn)) => {
                        tokio::spawn(conn);
                        Some(Sender::H2(s))
                    }
                    Err(e) => {
                        st.fail(format!("h2 handshake: {e}"));
                        continue;
                    }
                },
            };
        }
        if !cfg.think.is_zero() {
            // xorshift: a varying pause, so idle windows fall at every phase of the drain.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            tokio::time::sleep(cfg.think.mul_f64((rng % 1000) as f64 / 1000.0)).await;
        }
        // Wait until the connection can take a request; if the server closed it meanwhile,
        // no request was sent: reconnect.
        let ready = match sender.as_mut().unwrap() {
            Sender::H1(s) => s.ready().await.is_ok(),
            Sender::H2(s) => s.ready().await.is_ok(),
        };
        if !ready {
            st.idle_closed += 1;
            sender = None;
            continue;
        }
        if ctl.pause.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        ctl.busy.fetch_add(1, Ordering::SeqCst);
        let _busy = Busy(&ctl.busy);
        let mut req = Request::get(cfg.path).header("host", "t");
        if cfg.mode == Mode::Fresh {
            req = req.header("connection", "close");
        }
        let req = req.body(Empty::<Bytes>::new()).unwrap();
        let t0 = Instant::now();
        sent += 1;
        let resp = match sender.as_mut().unwrap() {
            Sender::H1(s) => s.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(req).await,
        };
        let resp = match resp {
            Ok(r) => r,
            // hyper hands the request back only when it never wrote it: the connection
            // closed while it was queued. Nothing was lost.
            Err(e) if e.message().is_some() => {
                st.unsent += 1;
                sender = None;
                continue;
            }
            Err(e) if graceful_goaway(e.error()) => {
                st.unsent_goaway += 1;
                sender = None;
                continue;
            }
            Err(e) => {
                st.fail(format!("request: {:?}", e.error()));
                sender = None;
                continue;
            }
        };
        let status = resp.status();
        let close = resp.headers().get("connection").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        match resp.into_body().collect().await.map(|b| b.to_bytes()) {
            Ok(b) if status == 200 && b == cfg.expect_body.as_bytes() => {
                st.ok += 1;
                st.latencies.push(t0.elapsed());
            }
            Ok(b) => st.fail(format!("status {status}, body {b:?}")),
            Err(e) => st.fail(format!("body: {e}")),
        }
        if close {
            st.closes += 1;
        }
        if close || cfg.mode == Mode::Fresh {
            sender = None;
        }
    }
    st
}

/// A stream refused because the server sent GOAWAY with NO_ERROR (a graceful shutdown).
fn graceful_goaway(e: &hyper::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .is_some_and(|h| h.is_go_away() && h.is_remote() && h.reason() == Some(h2::Reason::NO_ERROR))
}

/// Counts one request in [`Control::busy`] until dropped.
struct Busy<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
