//! Serving: accept loops over the inherited listeners, one task per connection (HTTP/1.1 and
//! HTTP/2 on the same port), and the drain that loses no request.
//!
//! The drain, precisely: listeners are closed first (so reconnecting clients reach a process
//! that still accepts). Then every HTTP/1 response carries `Connection: close`; an HTTP/1
//! connection is closed only after such a response, when its client closes it, or once it has
//! had no request in flight for the idle grace (closing an idle keep-alive connection at once
//! races with a request the client is sending at that moment: that request would be reset).
//! HTTP/2 connections get GOAWAY and finish their streams. Whatever is left at the drain
//! timeout is cut.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};

use crate::AppService;
use crate::service::{ConnService, ConnState, Shared};
use baton_supervise::listen::Bound;

/// How often a draining HTTP/1 connection checks whether it has been idle for the grace.
const DRAIN_TICK: Duration = Duration::from_millis(50);

/// Which listener a connection came in on.
#[derive(Debug, Clone)]
pub(crate) struct Via {
    pub(crate) local: crate::LocalAddr,
    /// Its index among this worker's listeners.
    pub(crate) listener: u16,
    pub(crate) tls: bool,
}

/// A tokio listener of either kind.
pub(crate) enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    /// Converts a bound (non-blocking) socket; must run inside the runtime.
    pub(crate) fn from_bound(b: Bound) -> io::Result<Listener> {
        let sock = socket2::Socket::from(b.fd);
        // tokio's from_std requires O_NONBLOCK; it is already set (bind/adopt) and is never
        // cleared: the flag lives on the file description shared with the master.
        if sock.local_addr()?.domain() == socket2::Domain::UNIX {
            let l: std::os::unix::net::UnixListener = sock.into();
            Ok(Listener::Unix(tokio::net::UnixListener::from_std(l)?))
        } else {
            let l: std::net::TcpListener = sock.into();
            Ok(Listener::Tcp(tokio::net::TcpListener::from_std(l)?))
        }
    }
}

trait Acceptor: Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Io, Option<SocketAddr>)>>;
    /// The listener's own address, for the app.
    fn local(&self) -> crate::LocalAddr;
    /// The TCP stream, which `--tls-cert` applies to; unix sockets stay plain (`Err`).
    #[cfg(feature = "tls")]
    fn tcp(io: Self::Io) -> Result<tokio::net::TcpStream, Self::Io>;
    /// Per-connection socket options (TCP_NODELAY).
    fn prepare(_io: &Self::Io, _cfg: &crate::service::HttpConfig) {}
}

impl Acceptor for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    #[cfg(feature = "tls")]
    fn tcp(io: Self::Io) -> Result<tokio::net::TcpStream, Self::Io> {
        Ok(io)
    }
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Io, Option<SocketAddr>)>> {
        tokio::net::TcpListener::poll_accept(self, cx).map_ok(|(s, a)| (s, Some(a)))
    }
    fn local(&self) -> crate::LocalAddr {
        crate::LocalAddr::Tcp(self.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))))
    }
    fn prepare(io: &Self::Io, cfg: &crate::service::HttpConfig) {
        if cfg.tcp_nodelay {
            let _ = io.set_nodelay(true);
        }
    }
}

impl Acceptor for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    #[cfg(feature = "tls")]
    fn tcp(io: Self::Io) -> Result<tokio::net::TcpStream, Self::Io> {
        Err(io)
    }
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Io, Option<SocketAddr>)>> {
        tokio::net::UnixListener::poll_accept(self, cx).map_ok(|(s, _)| (s, None))
    }
    fn local(&self) -> crate::LocalAddr {
        let path = self.local_addr().ok().and_then(|a| a.as_pathname().map(std::sync::Arc::from));
        crate::LocalAddr::Unix(path)
    }
}

/// A running server: accept loops plus connection tasks.
pub(crate) struct Server {
    shared: Arc<Shared>,
    stop_accept: watch::Sender<bool>,
    drain: watch::Sender<bool>,
    accept_tasks: Vec<tokio::task::JoinHandle<()>>,
    alive_tx: Option<mpsc::Sender<()>>,
    alive_rx: mpsc::Receiver<()>,
}

/// What every connection of a server shares.
pub(crate) struct Ctx {
    builder: auto::Builder<Exec>,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: AppService,
    /// `--metrics-listen`: its index and what serves it.
    metrics: Option<(u16, AppService)>,
    pub(crate) shared: Arc<Shared>,
}

impl Ctx {
    /// What serves the metrics, if `listener` is the metrics listener (whose requests are
    /// neither logged nor counted).
    pub(crate) fn metrics_on(&self, listener: u16) -> Option<&AppService> {
        self.metrics.as_ref().filter(|(i, _)| *i == listener).map(|(_, m)| m)
    }
}

impl Server {
    /// Starts accepting on every listener. Must run inside the runtime.
    pub(crate) fn start(
        listeners: Vec<Listener>,
        app: AppService,
        metrics: Option<(u16, AppService)>,
        shared: Arc<Shared>,
    ) -> Server {
        let cfg = &shared.cfg;
        let mut builder = auto::Builder::new(Exec);
        builder
            .http1()
            .timer(TokioTimer::new())
            // The header timeout is baton's own (`serve_conn`): hyper's allocates and registers
            // a timer per request, and runs between requests too (closing idle keep-alive
            // connections at the header timeout instead of the idle timeout).
            .header_read_timeout(None)
            .max_buf_size(cfg.max_header_bytes)
            .max_headers(cfg.max_headers);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX));
        let (stop_accept, stop_rx) = watch::channel(false);
        let (drain, _) = watch::channel(false);
        let (alive_tx, alive_rx) = mpsc::channel(1);
        let ctx = Arc::new(Ctx {
            builder,
            #[cfg(feature = "tls")]
            tls: cfg.tls.clone().map(tokio_rustls::TlsAcceptor::from),
            app,
            metrics,
            shared: shared.clone(),
        });
        let accept_tasks = listeners
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let (ctx, stop, alive) = (ctx.clone(), stop_rx.clone(), alive_tx.clone());
                let i = i as u16;
                match l {
                    Listener::Tcp(l) => tokio::spawn(accept_loop(l, i, ctx, stop, alive)),
                    Listener::Unix(l) => tokio::spawn(accept_loop(l, i, ctx, stop, alive)),
                }
            })
            .collect();
        Server { shared, stop_accept, drain, accept_tasks, alive_tx: Some(alive_tx), alive_rx }
    }

    /// A handle for [`crate::Shutdown`]: notified when the drain starts.
    pub(crate) fn drain_signal(&self) -> (watch::Receiver<bool>, mpsc::WeakSender<()>) {
        let weak = self.alive_tx.as_ref().expect("not draining yet").downgrade();
        (self.drain.subscribe(), weak)
    }

    /// Closes every listener (waits until they are closed).
    pub(crate) async fn stop_accepting(&mut self) {
        let _ = self.stop_accept.send(true);
        for t in self.accept_tasks.drain(..) {
            let _ = t.await;
        }
    }

    /// Starts the drain: from now on every HTTP/1 response carries `Connection: close`,
    /// HTTP/2 connections get GOAWAY, long-lived handlers hear it. Listeners must be closed
    /// first. Done before the master hears `STATUS=draining`: once a reload has returned, a
    /// kept-alive client of the old worker is told to reconnect on its next response.
    pub(crate) fn start_drain(&mut self) {
        self.shared.draining.store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.drain_notify.notify_waiters();
        self.drain.send_replace(true);
        self.alive_tx = None;
    }

    /// Resolves when every connection is done (or never: race it against the deadline).
    /// Call [`Server::start_drain`] first.
    pub(crate) async fn drained(&mut self) {
        debug_assert!(self.alive_tx.is_none(), "drain not started");
        // `recv` yields `None` once every connection task (and every Shutdown::hold guard)
        // has dropped its sender.
        while self.alive_rx.recv().await.is_some() {}
    }
}

async fn accept_loop<L: Acceptor>(
    l: L,
    listener: u16,
    ctx: Arc<Ctx>,
    mut stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    let via = Via { local: l.local(), listener, tls: false };
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => None,
            r = poll_fn(|cx| l.poll_accept(cx)) => Some(r),
        };
        let Some(accepted) = accepted else {
            // Take what already waits in the kernel's queue: once the last copy of the socket
            // closes, those connections would be reset.
            while let Some(Ok((io, peer))) = poll_fn(|cx| {
                Poll::Ready(match l.poll_accept(cx) {
                    Poll::Ready(r) => Some(r),
                    Poll::Pending => None,
                })
            })
            .await
            {
                spawn_conn::<L>(io, peer, via.clone(), &ctx, &alive);
            }
            break;
        };
        match accepted {
            Ok((io, peer)) => {
                backoff = Duration::ZERO;
                spawn_conn::<L>(io, peer, via.clone(), &ctx, &alive);
            }
            // The peer gave up before we accepted: nothing to do.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ECONNABORTED | libc::ECONNRESET | libc::EPROTO | libc::EINTR)
                ) => {}
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM: back off (the connection stays queued in the
                // kernel) instead of spinning on an error that persists.
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                tracing::error!("accept failed: {}; retrying in {backoff:?}", baton_supervise::describe_io(&e));
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
    // Dropping `l` here closes this process's copy of the listening socket.
}

/// One task per connection; a TLS handshake first where it applies.
fn spawn_conn<L: Acceptor>(io: L::Io, peer: Option<SocketAddr>, via: Via, ctx: &Arc<Ctx>, alive: &mpsc::Sender<()>) {
    L::prepare(&io, &ctx.shared.cfg);
    let (ctx, alive) = (ctx.clone(), alive.clone());
    #[cfg(feature = "tls")]
    let io = match ctx.tls.clone() {
        Some(acceptor) => match L::tcp(io) {
            Ok(tcp) => {
                tokio::spawn(crate::tls::serve(acceptor, tcp, peer, via, ctx, alive));
                return;
            }
            Err(io) => io,
        },
        None => io,
    };
    tokio::spawn(serve_conn(io, peer, via, ctx, alive));
}

pub(crate) async fn serve_conn<I>(io: I, peer: Option<SocketAddr>, via: Via, ctx: Arc<Ctx>, alive: mpsc::Sender<()>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = &ctx.shared;
    let (app, internal) = match ctx.metrics_on(via.listener) {
        Some(metrics) => (metrics.clone(), true),
        None => (ctx.app.clone(), false),
    };
    let conn_state = Arc::new(ConnState::new(peer, via, internal, shared));
    let svc = ConnService { app, conn: conn_state.clone() };
    let io = Counted { io, open: Open::new(conn_state.clone(), alive), first: true, send_timer: None };
    let conn = ctx.builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    // Serving, until the connection ends, the drain starts, it stayed idle (no request in
    // flight) for the idle timeout (HTTP/1 keep-alive and HTTP/2 alike), an HTTP/1 request
    // head took longer than the header timeout (slowloris; also a connection that never
    // sends a byte), or nothing moved for the send timeout while it waited for the client (its
    // writes blocked, or, on HTTP/2, its streams waited for flow-control windows: a client that
    // stopped reading). One timer per connection, set to whichever comes first and checked when
    // it fires: nothing per request (a clock read only for a head still arriving after a poll,
    // a write that found the client's buffer full, or a body of several HTTP/2 frames).
    let cfg = &shared.cfg;
    let idle_timeout = cfg.idle_timeout;
    let header_ms = Some(cfg.header_timeout.as_millis() as u64).filter(|t| *t > 0);
    let send_ms = cfg.send_timeout.map(|t| t.as_millis() as u64);
    let drained = shared.drain_notify.notified();
    tokio::pin!(drained);
    let timer = tokio::time::sleep_until(far_future().into());
    tokio::pin!(timer);
    let draining = loop {
        let now = shared.now_ms();
        let mut next = u64::MAX;
        if let Some(t) = idle_timeout {
            let idle = conn_state.idle_since(0);
            if idle >= t {
                break false;
            }
            next = now + (t - idle).as_millis() as u64;
        }
        if let Some(t) = header_ms {
            if ran_out(conn_state.head_since(now), now, t, &mut next) {
                tracing::debug!("connection from {peer:?}: no whole request head within {t} ms: closed");
                return;
            }
        }
        if let Some(t) = send_ms {
            if ran_out(conn_state.send_stalled_since(now), now, t, &mut next) {
                tracing::debug!("connection from {peer:?}: the client read nothing for {t} ms: closed");
                return;
            }
        }
        let armed = next != u64::MAX;
        if armed {
            timer.as_mut().reset(shared.at_ms(next).into());
        }
        let polled = || conn_state.time_head();
        match watch_conn(conn.as_mut(), polled, shared, drained.as_mut(), armed.then_some(timer.as_mut())).await {
            Wake::Ended(Ok(())) => return,
            Wake::Ended(Err(e)) => return crate::service::rejected(&conn_state, &*e),
            Wake::Drain => break true,
            Wake::Timer => {}
        }
    };
    // Closing: HTTP/2 gets GOAWAY at once (streams in flight finish). An HTTP/1 connection
    // answers every request with `Connection: close` and is closed once idle for the grace
    // (closing an idle keep-alive connection at once races with a request the client is
    // sending that very moment). Either is dropped once idle for the grace after that: a
    // client that ignores GOAWAY and never answers its PING holds nothing.
    let since = if draining { shared.now_ms() } else { 0 };
    let grace = shared.cfg.idle_grace;
    let mut closing = conn_state.is_h2() || !draining;
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    crate::service::rejected(&conn_state, &*e);
                }
                return;
            }
            _ = tokio::time::sleep(DRAIN_TICK) => {
                if conn_state.idle_since(since) >= grace {
                    if closing {
                        return;
                    }
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// A timeout of `t` ms for a wait that began at `since` (`None`: none is under way; times in
/// [`Shared::now_ms`]): whether it ran out by `now`. If not, `next` is lowered to when it
/// would, or, with none under way, to a timeout from now (one may begin any moment: a request
/// head arriving, a write blocking).
fn ran_out(since: Option<u64>, now: u64, t: u64, next: &mut u64) -> bool {
    match since {
        Some(s) if now.saturating_sub(s) >= t => true,
        Some(s) => {
            *next = (*next).min(s + t);
            false
        }
        None => {
            *next = (*next).min(now + t);
            false
        }
    }
}

/// hyper's executor, which spawns each HTTP/2 stream's task: the stream's future (several
/// hundred bytes with baton's service future in it) is boxed first, so that the calls down to
/// the task's allocation move a pointer instead of copying it several times (callgrind, h2c:
/// 700 instructions of copying less, 230 more for the allocation, per request).
#[derive(Clone, Copy)]
struct Exec;

impl<F> hyper::rt::Executor<F> for Exec
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(Box::pin(fut));
    }
}

/// Why [`watch_conn`] returned.
enum Wake {
    /// The connection is done (hyper's error: [`crate::service::rejected`]).
    Ended(Result<(), Box<dyn std::error::Error + Send + Sync>>),
    /// The drain started.
    Drain,
    /// The connection's timer fired.
    Timer,
}

/// Drives the connection until it ends, the drain starts, or `timer` fires, calling `polled`
/// after each poll of it that did not end it. The drain signal and the timer are registered
/// once and afterwards only read (a flag, the timer's state) on each of the connection's many
/// wake-ups; they are polled again only when the task's waker changes.
async fn watch_conn<C: std::future::Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>>(
    mut conn: std::pin::Pin<&mut C>,
    polled: impl Fn(),
    shared: &Shared,
    mut drained: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    mut timer: Option<std::pin::Pin<&mut tokio::time::Sleep>>,
) -> Wake {
    let mut registered: Option<std::task::Waker> = None;
    poll_fn(|cx| {
        if let Poll::Ready(ended) = conn.as_mut().poll(cx) {
            return Poll::Ready(Wake::Ended(ended));
        }
        polled();
        if registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            if shared.draining.load(std::sync::atomic::Ordering::Acquire) {
                return Poll::Ready(Wake::Drain);
            }
            if timer.as_ref().is_some_and(|t| t.is_elapsed()) {
                return Poll::Ready(Wake::Timer);
            }
            return Poll::Pending;
        }
        // First poll, or polled from another task: (re-)register.
        if drained.as_mut().poll(cx).is_ready() || shared.draining.load(std::sync::atomic::Ordering::Acquire) {
            return Poll::Ready(Wake::Drain);
        }
        if let Some(t) = timer.as_mut() {
            if t.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Timer);
            }
        }
        registered = Some(cx.waker().clone());
        Poll::Pending
    })
    .await
}

/// A connection's socket, counted as open (and keeping a draining worker alive) for as long as
/// it lives: through hyper, and after an upgrade (WebSocket) in the app's hands until the app
/// drops it.
struct Counted<I> {
    io: I,
    open: Open,
    /// Nothing was read yet.
    first: bool,
    /// After an upgrade (a WebSocket), when [`serve_conn`]'s loop no longer watches the
    /// connection: the send timeout's own timer, made when a write first blocks.
    send_timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<I> Counted<I> {
    /// A write (or flush, or shutdown) returned `polled` (pending: it waits for the client).
    /// After an upgrade, one that has waited for the send timeout fails (`TimedOut`): the
    /// app's `send` returns an error rather than hanging on a client that stopped reading.
    #[inline]
    fn wrote<T>(&mut self, polled: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        self.open.conn.wrote(polled.is_pending());
        if polled.is_pending() && self.open.conn.is_upgraded() {
            if let Some(e) = self.upgraded_send_timed_out(cx) {
                return Poll::Ready(Err(e));
            }
        }
        polled
    }

    #[cold]
    #[inline(never)]
    fn upgraded_send_timed_out(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let conn = &self.open.conn;
        let t = conn.shared.cfg.send_timeout?;
        let since = conn.write_blocked_since()?;
        let deadline = tokio::time::Instant::from_std(conn.shared.at_ms(since) + t);
        let timer = self.send_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready().then(|| {
            tracing::debug!("upgraded connection from {:?}: the client read nothing for {t:?}: send failed", conn.peer);
            io::Error::new(io::ErrorKind::TimedOut, format!("the client read nothing for {t:?} (--send-timeout)"))
        })
    }
}

/// One open connection in [`Shared::open_conns`], the metrics and the drain's count.
struct Open {
    conn: Arc<ConnState>,
    _alive: mpsc::Sender<()>,
}

impl Open {
    fn new(conn: Arc<ConnState>, alive: mpsc::Sender<()>) -> Open {
        conn.shared.open_conns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if conn.counted {
            conn.shared.metrics.conn_opened(conn.tls);
        }
        Open { conn, _alive: alive }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let shared = &self.conn.shared;
        shared.open_conns.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if self.conn.counted {
            shared.metrics.conn_closed(self.conn.kind(), self.conn.tls);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    #[inline]
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            let this = &mut *self;
            this.open.conn.read(&buf.filled()[before..], this.first);
            this.first = false;
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    #[inline]
    fn poll_write(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(polled, cx)
    }

    #[inline]
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(polled, cx)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    #[inline]
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_flush(cx);
        self.wrote(polled, cx)
    }

    #[inline]
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_shutdown(cx);
        self.wrote(polled, cx)
    }
}

fn far_future() -> std::time::Instant {
    std::time::Instant::now() + Duration::from_secs(86400 * 365)
}
