//! WebSockets that close cleanly when the worker drains: axum's [`WebSocketUpgrade`] and
//! [`WebSocket`] with one difference. When a reload or a stop drains this worker, each socket,
//! at its own random moment within `--drain-spread`, sends the client a close frame (1012
//! "service restart" on a reload, 1001 "going away" on a stop), waits a little for the
//! client's answering close frame, and then ends: [`WebSocket::recv`] returns `None`, so the
//! handler's receive loop ends and its clean-up runs. Nothing else changes: a handler written
//! like axum's example needs only the import changed.
//!
//! ```no_run
//! use axum::response::Response;
//! use baton::ws::{WebSocket, WebSocketUpgrade};
//!
//! async fn handler(ws: WebSocketUpgrade) -> Response {
//!     ws.on_upgrade(handle_socket)
//! }
//!
//! async fn handle_socket(mut socket: WebSocket) {
//!     while let Some(Ok(msg)) = socket.recv().await {
//!         if socket.send(msg).await.is_err() {
//!             break;
//!         }
//!     }
//!     // Runs on every close: the client's, or baton's when the worker drains.
//! }
//! ```
//!
//! While a WebSocket is open its worker keeps draining (up to `--drain-timeout`), whether it
//! came through this module or straight from axum; only this module closes it before then.
//! WebSockets are served over HTTP/1.1 (not over HTTP/2's extended CONNECT).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::extract::ws::{self, CloseFrame, Message, close_code};
use axum::response::Response;
use futures_core::Stream;
use futures_sink::Sink;
use http::request::Parts;

use crate::{DrainReason, Shutdown};

/// How long a socket that sent its close frame waits for the client's before it ends anyway.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// axum's [`ws::WebSocketUpgrade`], whose socket closes cleanly when the worker drains.
#[derive(Debug)]
pub struct WebSocketUpgrade(ws::WebSocketUpgrade);

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = ws::rejection::WebSocketUpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        ws::WebSocketUpgrade::from_request_parts(parts, state).await.map(WebSocketUpgrade)
    }
}

impl WebSocketUpgrade {
    /// Answers the upgrade and runs `callback` with the socket, as axum's `on_upgrade`.
    #[must_use = "to set up the WebSocket connection, this response must be returned"]
    pub fn on_upgrade<C, Fut>(self, callback: C) -> Response
    where
        C: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.0.on_upgrade(move |socket| callback(WebSocket::new(socket, Shutdown::current())))
    }

    /// Configures axum's upgrade (protocols, message and frame sizes, buffers):
    /// `ws.map(|u| u.protocols(["chat"]))`.
    pub fn map(self, f: impl FnOnce(ws::WebSocketUpgrade) -> ws::WebSocketUpgrade) -> Self {
        WebSocketUpgrade(f(self.0))
    }

    /// axum's upgrade, for what [`WebSocketUpgrade::map`] cannot do (its socket then does not
    /// close on its own when the worker drains).
    pub fn into_inner(self) -> ws::WebSocketUpgrade {
        self.0
    }
}

/// axum's [`ws::WebSocket`] (a [`Stream`] of messages and a [`Sink`] for them, with `recv` and
/// `send`), closed cleanly by baton when the worker drains.
pub struct WebSocket {
    inner: ws::WebSocket,
    turn: Pin<Box<dyn Future<Output = Option<DrainReason>> + Send>>,
    state: Closing,
}

/// Where a socket is in baton's close.
enum Closing {
    /// Open; closes at its turn in the drain.
    No,
    /// Its turn came: this close frame is to be sent.
    Send(CloseFrame),
    /// The close frame is queued: flush it.
    Flush,
    /// Sent: waiting for the client's close frame until the deadline.
    Wait(Pin<Box<tokio::time::Sleep>>),
    /// Over: the stream has ended.
    Done,
}

impl std::fmt::Debug for WebSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl WebSocket {
    fn new(inner: ws::WebSocket, shutdown: Shutdown) -> WebSocket {
        let turn = Box::pin(async move {
            shutdown.wait_turn().await;
            shutdown.reason()
        });
        WebSocket { inner, turn, state: Closing::No }
    }

    /// Receives the next message; `None` once the socket closed (by the client, or by baton
    /// when the worker drains).
    pub async fn recv(&mut self) -> Option<Result<Message, axum::Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// Sends a message. Fails once the socket is closing.
    pub async fn send(&mut self, msg: Message) -> Result<(), axum::Error> {
        self.inner.send(msg).await
    }

    /// The subprotocol chosen, if any.
    pub fn protocol(&self) -> Option<&http::HeaderValue> {
        self.inner.protocol()
    }

    /// axum's socket: it no longer closes on its own when the worker drains.
    pub fn into_inner(self) -> ws::WebSocket {
        self.inner
    }

    /// Drives baton's close; `Ready(None)` when the stream is over.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, axum::Error>>> {
        loop {
            match &mut self.state {
                Closing::No => {
                    let reason = ready!(self.turn.as_mut().poll(cx));
                    let (code, why) = match reason {
                        Some(DrainReason::Shutdown) => (close_code::AWAY, "server shutting down"),
                        _ => (close_code::RESTART, "server restarting: reconnect"),
                    };
                    self.state = Closing::Send(CloseFrame { code, reason: why.into() });
                }
                Closing::Send(_) => {
                    if let Err(e) = ready!(Pin::new(&mut self.inner).poll_ready(cx)) {
                        self.state = Closing::Done;
                        return Poll::Ready(Some(Err(e)));
                    }
                    let Closing::Send(frame) = std::mem::replace(&mut self.state, Closing::Flush) else {
                        unreachable!()
                    };
                    if let Err(e) = Pin::new(&mut self.inner).start_send(Message::Close(Some(frame))) {
                        self.state = Closing::Done;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Closing::Flush => {
                    let flushed = ready!(Pin::new(&mut self.inner).poll_flush(cx));
                    self.state = Closing::Wait(Box::pin(tokio::time::sleep(CLOSE_WAIT)));
                    if let Err(e) = flushed {
                        self.state = Closing::Done;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Closing::Wait(deadline) => {
                    ready!(deadline.as_mut().poll(cx));
                    self.state = Closing::Done;
                }
                Closing::Done => return Poll::Ready(None),
            }
        }
    }
}

impl Stream for WebSocket {
    type Item = Result<Message, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Closing::Done = this.state {
            return Poll::Ready(None);
        }
        // The client's messages first (its close frame among them), then baton's close.
        if let Poll::Ready(item) = Pin::new(&mut this.inner).poll_next(cx) {
            if item.is_none() {
                this.state = Closing::Done;
            }
            return Poll::Ready(item);
        }
        this.poll_close(cx)
    }
}

impl Sink<Message> for WebSocket {
    type Error = axum::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        Pin::new(&mut self.inner).start_send(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}
