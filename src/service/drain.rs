//! What the drain needs to know of each connection (protocol, requests in flight, idle since
//! when), and the `Connection: close` every HTTP/1 response carries once the drain started.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use http::header::CONNECTION;
use http::{HeaderMap, HeaderValue, Version};

use super::Shared;

/// One connection's state.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// The worker's state (reached through the connection's: one reference count per
    /// connection rather than per request).
    pub(crate) shared: Arc<Shared>,
    /// The peer's address as the access log writes it (formatted once per connection).
    pub(crate) remote: crate::access_log::Remote,
    /// The peer (TCP), for `ConnectInfo<SocketAddr>` on each request.
    pub(crate) peer: Option<SocketAddr>,
    /// Given to the app with each request.
    pub(crate) info: crate::Connection,
    /// Index of the listener it came in on.
    pub(crate) listener: u16,
    pub(crate) tls: bool,
    /// On the metrics listener: not counted, not logged.
    pub(crate) internal: bool,
    /// Counted in the metrics (not internal, and counting is on).
    pub(crate) counted: bool,
    h2: AtomicBool,
    /// HTTP/2: a response has carried the request id as an indexed header, which puts the
    /// name `x-request-id` in the connection's HPACK table (see [`ConnState::request_id_indexed`]).
    rid_indexed: AtomicBool,
    upgraded: AtomicBool,
    in_flight: AtomicU32,
    last_active_ms: AtomicU64,
    /// HTTP/1: when the request head now arriving began, on the [`Shared::now_ms`] clock plus
    /// one (0: none is arriving; [`HEAD_BEGUN`]: one began in the poll of the connection now
    /// running). The connection's opening counts as a head's start: a client that connects and
    /// sends nothing is cut at the header timeout too.
    head_since: AtomicU64,
    /// The header timeout applies: not after the HTTP/2 preface.
    heads_timed: AtomicBool,
    /// Since when the connection's writes wait for the client to read, on the
    /// [`Shared::now_ms`] clock plus one (0: they do not).
    write_blocked_since: AtomicU64,
    /// HTTP/2: response bodies waiting for the client's flow-control window (see
    /// `TrackedBody`), and since when none of them moved (as `write_blocked_since`).
    h2_waiting: AtomicU32,
    h2_stalled_since: AtomicU64,
}

/// `head_since` for a head that began during the connection's current poll, its time not read
/// yet: a head that arrives whole is parsed and answered in that same poll, and so costs no
/// clock read; [`ConnState::time_head`] reads it for one still arriving after the poll.
const HEAD_BEGUN: u64 = u64::MAX;

impl ConnState {
    pub(crate) fn new(peer: Option<SocketAddr>, via: crate::serve::Via, internal: bool, shared: &Arc<Shared>) -> Self {
        let now = shared.now_ms();
        ConnState {
            shared: shared.clone(),
            remote: crate::access_log::Remote::new(peer.map(|p| p.ip())),
            peer,
            info: crate::Connection { peer, local: via.local },
            listener: via.listener,
            tls: via.tls,
            internal,
            counted: !internal && shared.cfg.metrics,
            h2: AtomicBool::new(false),
            rid_indexed: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            in_flight: AtomicU32::new(0),
            last_active_ms: AtomicU64::new(now),
            head_since: AtomicU64::new(now + 1),
            heads_timed: AtomicBool::new(true),
            write_blocked_since: AtomicU64::new(0),
            h2_waiting: AtomicU32::new(0),
            h2_stalled_since: AtomicU64::new(0),
        }
    }

    /// The connection read `data`; `first`: the first bytes it ever read. Bytes that arrive
    /// while no request is in flight begin a request head.
    pub(crate) fn read(&self, data: &[u8], first: bool) {
        if first {
            const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
            let n = data.len().min(PREFACE.len());
            if data[..n] == PREFACE[..n] {
                // HTTP/2 (or a client that stopped after "PRI"): hyper's own limits and the
                // idle timeout apply, as to any HTTP/2 connection.
                self.heads_timed.store(false, Ordering::Relaxed);
                self.head_since.store(0, Ordering::Relaxed);
            }
            return;
        }
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == 0
            && self.heads_timed.load(Ordering::Relaxed)
        {
            self.head_since.store(HEAD_BEGUN, Ordering::Relaxed);
        }
    }

    /// The connection was polled: a request head that began during the poll and is still
    /// arriving gets its start time now (a poll later than its first bytes: microseconds).
    pub(crate) fn time_head(&self) {
        if self.head_since.load(Ordering::Relaxed) == HEAD_BEGUN {
            self.head_since.store(self.shared.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// A request head arrived whole.
    pub(crate) fn head_done(&self) {
        if self.head_since.load(Ordering::Relaxed) != 0 {
            self.head_since.store(0, Ordering::Relaxed);
        }
    }

    /// When the request head now arriving began, if one is and the header timeout applies
    /// (`now` for one whose time was not read yet).
    pub(crate) fn head_since(&self, now: u64) -> Option<u64> {
        if !self.heads_timed.load(Ordering::Relaxed) {
            return None;
        }
        match self.head_since.load(Ordering::Relaxed) {
            HEAD_BEGUN => Some(now),
            since => since.checked_sub(1),
        }
    }

    /// A write to the connection returned (`pending`: the client's window or the socket's
    /// buffer is full). A write that completes costs a load; only a blocked one reads the
    /// clock, once until a write completes again.
    #[inline]
    pub(crate) fn wrote(&self, pending: bool) {
        if pending {
            if self.write_blocked_since.load(Ordering::Relaxed) == 0 {
                self.write_blocked_since.store(self.shared.now_ms() + 1, Ordering::Relaxed);
            }
        } else if self.write_blocked_since.load(Ordering::Relaxed) != 0 {
            self.write_blocked_since.store(0, Ordering::Relaxed);
        }
    }

    /// Since when the connection's writes have been waiting for the client, if they are.
    pub(crate) fn write_blocked_since(&self) -> Option<u64> {
        self.write_blocked_since.load(Ordering::Relaxed).checked_sub(1)
    }

    /// The connection is the app's (a WebSocket), after a 101.
    pub(crate) fn is_upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Relaxed)
    }

    /// HTTP/2: a response body handed over a frame before its end and waits to be polled again.
    pub(crate) fn h2_stream_waits(&self) {
        if self.h2_waiting.fetch_add(1, Ordering::Relaxed) == 0 {
            self.h2_stalled_since.store(self.shared.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// HTTP/2: a waiting response body was polled again (`progress`: the client's window let
    /// it), or dropped.
    pub(crate) fn h2_stream_moved(&self, progress: bool) {
        if self.h2_waiting.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.h2_stalled_since.store(0, Ordering::Relaxed);
        } else if progress {
            self.h2_stalled_since.store(self.shared.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// Since when the connection has been waiting for its client to read, if it is: its
    /// writes blocked (a full socket buffer), or, on HTTP/2, response bodies waiting for the
    /// client's flow-control window with none of them moving (as nginx's `send_timeout`, per
    /// connection: a stream that moves shows the client reads).
    pub(crate) fn send_stalled_since(&self, now: u64) -> Option<u64> {
        let blocked = self.write_blocked_since();
        let stalled = if self.h2_waiting.load(Ordering::Relaxed) > 0 {
            // Unset by a stream that left as another arrived (threads racing): from now.
            match self.h2_stalled_since.load(Ordering::Relaxed) {
                0 => {
                    self.h2_stalled_since.store(now + 1, Ordering::Relaxed);
                    Some(now)
                }
                since => Some(since - 1),
            }
        } else {
            None
        };
        match (blocked, stalled) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    /// Whether this response's request id is to be HPACK-indexed: only the connection's first.
    /// A value new on every response would otherwise be added to the connection's header
    /// table, evicting what repeats; sent "never indexed" it is encoded whole each time, name
    /// and value. With the name in the table once, the later ones send only their value,
    /// still never indexed (h2's encoder refers to a name already in the table). As in
    /// [`ConnState::saw`]: a load on every response, a swap only while it is still unset.
    pub(crate) fn request_id_indexed(&self) -> bool {
        !self.rid_indexed.load(Ordering::Relaxed) && !self.rid_indexed.swap(true, Ordering::Relaxed)
    }

    pub(crate) fn saw(&self, version: Version) {
        let first_h2 =
            version == Version::HTTP_2 && !self.h2.load(Ordering::Relaxed) && !self.h2.swap(true, Ordering::Relaxed);
        if first_h2 && self.counted {
            self.shared.metrics.conn_became(false);
        }
    }

    /// Its response was 101: the connection is the app's now (a WebSocket).
    pub(crate) fn upgraded(&self) {
        if !self.upgraded.swap(true, Ordering::Relaxed) && self.counted && !self.is_h2() {
            self.shared.metrics.conn_became(true);
        }
    }

    /// For the metrics: 0 HTTP/1, 1 HTTP/2, 2 upgraded.
    pub(crate) fn kind(&self) -> u8 {
        if self.upgraded.load(Ordering::Relaxed) && !self.is_h2() { 2 } else { u8::from(self.is_h2()) }
    }

    /// How long the connection has had no request in flight, counting from `since` at the
    /// earliest (the start of the drain).
    pub(crate) fn idle_since(&self, since_ms: u64) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let last = self.last_active_ms.load(Ordering::Acquire).max(since_ms);
        Duration::from_millis(self.shared.now_ms().saturating_sub(last))
    }
}

/// Counts a request as in flight until dropped (with the response body).
#[derive(Debug)]
pub(crate) struct InFlight {
    conn: Arc<ConnState>,
    /// When it ended, if the owner read the clock already (one clock read per request), on
    /// the [`Shared::elapsed`] clock.
    pub(crate) ended: Option<Duration>,
    /// When it began (on that clock), and its response's status (for the metrics).
    pub(crate) start: Duration,
    pub(crate) status: u16,
}

impl InFlight {
    pub(crate) fn new(conn: &Arc<ConnState>, start: Duration) -> Self {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        if conn.counted {
            conn.shared.metrics.in_flight(true);
        }
        InFlight { conn: conn.clone(), ended: None, start, status: 0 }
    }
}

impl InFlight {
    /// The request's response was 101 (see [`ConnState::upgraded`]).
    pub(crate) fn conn_upgraded(&self) {
        self.conn.upgraded();
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.conn.shared
    }

    pub(crate) fn conn(&self) -> &ConnState {
        &self.conn
    }

    /// The connection's peer, as the access log writes it.
    pub(crate) fn remote(&self) -> &crate::access_log::Remote {
        &self.conn.remote
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let shared = &self.conn.shared;
        let ms = match self.ended {
            Some(t) => t.as_millis() as u64,
            None => shared.now_ms(),
        };
        self.conn.last_active_ms.store(ms, Ordering::Release);
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.conn.counted {
            shared.metrics.in_flight(false);
            if let Some(end) = self.ended {
                let took = end.saturating_sub(self.start);
                shared.metrics.request_done(usize::from(self.conn.listener), self.status, took);
            }
        }
    }
}

/// Checked when the response goes out, not when the request came in: a request that began
/// before the drain still tells its client to reconnect elsewhere. Not on a 101: its
/// `Connection: upgrade` is the handshake (a WebSocket accepted while draining is closed at
/// its turn in the drain, with a close frame that tells its client to reconnect).
pub(crate) fn mark_closing(headers: &mut HeaderMap, status: http::StatusCode, version: Version, shared: &Shared) {
    if version <= Version::HTTP_11
        && shared.draining.load(Ordering::Relaxed)
        && status != http::StatusCode::SWITCHING_PROTOCOLS
    {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
}
