//! Long-lived connections across reloads and stops, through the real `hello` binary: its `/ws`
//! echo (`baton::ws`) with real WebSocket clients (tokio-tungstenite, and Python's `websockets`
//! in an ignored test), its `/ticks` event stream (`baton::sse`), real signals, 127.0.0.1 only.
#![cfg(feature = "ws")]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::Signal;
use support::{Hello, hello_bin, rt, signal, wait_until};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// What one client saw over its whole life.
#[derive(Debug, Default)]
struct ClientLog {
    /// The worker pid of each connection, in order.
    pids: Vec<i32>,
    /// The close code of each connection's server close frame, in order.
    closes: Vec<u16>,
    /// When each close frame arrived.
    closed_at: Vec<Instant>,
    /// What went wrong (a reset, a missing close frame, a wrong echo, a failed connect).
    errors: Vec<String>,
}

/// Shared counters of the clients of one test.
#[derive(Default)]
struct Clients {
    /// Clients with a connection open and checked (pid and echo answered).
    connected: AtomicUsize,
    /// Connections checked so far, over every client's life.
    connections: AtomicUsize,
    /// Set when the clients should stop reconnecting after their next close.
    last_round: AtomicBool,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends `text` and returns the text answered.
async fn ask(ws: &mut Ws, text: &str) -> Result<String, String> {
    ws.send(Message::text(text)).await.map_err(|e| format!("send: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => Ok(t.to_string()),
        other => Err(format!("answer to {text:?}: {other:?}")),
    }
}

/// One client: connects, checks the echo and which worker answers, waits for the server's
/// close frame, and reconnects, until a close during the last round (or a 1001: the server
/// is going away).
async fn client(addr: SocketAddr, n: usize, shared: Arc<Clients>) -> ClientLog {
    let mut log = ClientLog::default();
    let url = format!("ws://{addr}/ws");
    for round in 0.. {
        let mut ws = match tokio_tungstenite::connect_async(&url).await {
            Ok((ws, _)) => ws,
            Err(e) => {
                log.errors.push(format!("connect #{round}: {e}"));
                return log;
            }
        };
        let pid = match ask(&mut ws, "pid").await.and_then(|p| p.parse::<i32>().map_err(|e| e.to_string())) {
            Ok(p) => p,
            Err(e) => {
                log.errors.push(e);
                return log;
            }
        };
        let hello = format!("client {n} round {round}");
        match ask(&mut ws, &hello).await {
            Ok(echo) if echo == hello => {}
            Ok(echo) => log.errors.push(format!("echo {echo:?} for {hello:?}")),
            Err(e) => log.errors.push(e),
        }
        log.pids.push(pid);
        shared.connected.fetch_add(1, Ordering::SeqCst);
        shared.connections.fetch_add(1, Ordering::SeqCst);
        // The server's close frame, then the end of the stream (the library answers the close).
        let first = tokio::time::timeout(Duration::from_secs(60), ws.next()).await;
        shared.connected.fetch_sub(1, Ordering::SeqCst);
        let code = match first {
            Ok(Some(Ok(Message::Close(Some(frame))))) => u16::from(frame.code),
            other => {
                log.errors.push(format!("connection {round} to pid {pid}: expected a close frame, got {other:?}"));
                return log;
            }
        };
        log.closes.push(code);
        log.closed_at.push(Instant::now());
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(None) => {}
            other => log.errors.push(format!("after the close frame: {other:?}")),
        }
        if code == u16::from(CloseCode::Away) || shared.last_round.load(Ordering::SeqCst) {
            return log;
        }
    }
    log
}

/// Starts `clients` clients and waits until every one is connected.
fn connect_all(
    rt: &tokio::runtime::Runtime,
    h: &Hello,
    clients: usize,
) -> (Arc<Clients>, Vec<tokio::task::JoinHandle<ClientLog>>) {
    let shared = Arc::new(Clients::default());
    let tasks = (0..clients).map(|n| rt.spawn(client(h.addr(), n, shared.clone()))).collect();
    wait_until(Duration::from_secs(60), "every client connected", || {
        shared.connected.load(Ordering::SeqCst) == clients
    });
    (shared, tasks)
}

fn collect(rt: &tokio::runtime::Runtime, tasks: Vec<tokio::task::JoinHandle<ClientLog>>) -> Vec<ClientLog> {
    rt.block_on(async {
        let mut logs = Vec::new();
        for t in tasks {
            logs.push(tokio::time::timeout(Duration::from_secs(120), t).await.expect("client hung").unwrap());
        }
        logs
    })
}

fn cleanups(h: &Hello) -> usize {
    h.log_text().matches("websocket clean-up").count()
}

#[test]
fn websockets_across_reloads_get_a_close_frame_and_reconnect_to_the_new_generation() {
    const CLIENTS: usize = 200;
    const RELOADS: usize = 10;
    let mut h = Hello::start(&hello_bin(), &["--delay", "0", "--debug-routes", "--drain-spread", "300ms"]);
    let rt = rt();
    let (shared, tasks) = connect_all(&rt, &h, CLIENTS);
    let mut workers = vec![h.worker_pid()];
    for reload in 1..=RELOADS {
        let newest = h.reload_and_wait();
        workers.push(newest);
        // Every client back, on the newest generation (each reconnects once per reload: its
        // connection count, not whether it counts as connected, which lags its old
        // connection's close), and the old one gone. Not a hard wait: a client that failed is
        // reported with its own story below.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline
            && !(shared.connections.load(Ordering::SeqCst) == CLIENTS * (reload + 1)
                && support::children(h.pid) == vec![newest])
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Then a stop: the last close frame is a 1001.
    shared.last_round.store(true, Ordering::SeqCst);
    signal(h.pid, Signal::SIGTERM);
    let logs = collect(&rt, tasks);
    assert!(h.wait_exit(Duration::from_secs(30)).success(), "master exit status; log:\n{}", h.log_tail(30));

    let mut connections = 0;
    for (n, log) in logs.iter().enumerate() {
        assert!(log.errors.is_empty(), "client {n}: {:?}\n{}", log.errors, h.log_tail(40));
        connections += log.pids.len();
        let (last, reloads) = log.closes.split_last().expect("at least one close");
        assert_eq!(*last, 1001, "client {n}: a stop says going away: {:?}", log.closes);
        assert_eq!(reloads, [1012; RELOADS], "client {n}: each reload says service restart");
        // One connection to each generation in turn: each reconnect reached the new one.
        assert_eq!(log.pids, workers, "client {n}");
    }
    assert_eq!(cleanups(&h), connections, "the handler's clean-up ran once per connection");
    assert_eq!(connections, CLIENTS * (RELOADS + 1));
}

/// A WebSocket handshake that a draining worker answers keeps its `Connection: upgrade`: the
/// socket opens, and is closed with 1012 at its turn in the drain, so that its client
/// reconnects to the new generation. Here the handshake goes over a keep-alive connection
/// opened before the reload, which the old worker still serves. (The drain's
/// `Connection: close` on HTTP/1 responses once replaced it, and the handshake failed.)
#[test]
fn a_websocket_handshake_answered_while_draining_opens_then_gets_1012() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Hello::start(&hello_bin(), &["--delay", "0", "--debug-routes", "--drain-spread", "200ms"]);
    let rt = rt();
    let old = h.worker_pid();
    let mut tcp = rt.block_on(async {
        let mut tcp = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
        tcp.write_all(b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        // The whole response (a pid: a few bytes of body, its length declared), nothing more.
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let pid = loop {
            let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk)).await.unwrap().unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
            let Ok(r) = support::parse(&buf) else { continue };
            let len: usize = r.header("content-length").unwrap().parse().unwrap();
            if r.body.len() == len {
                break r.body.parse::<i32>().unwrap();
            }
        };
        assert_eq!(pid, old);
        tcp
    });
    let new = h.reload_and_wait();
    rt.block_on(async {
        let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{}/ws", h.addr()), &mut tcp)
            .await
            .expect("the handshake on the draining worker's connection");
        assert_eq!(resp.status(), 101);
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => assert_eq!(frame.code, CloseCode::Restart),
            other => panic!("expected a 1012 close frame, got {other:?}"),
        }
        let (mut again, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", h.addr())).await.unwrap();
        assert_eq!(ask(&mut again, "pid").await.unwrap(), new.to_string(), "the reconnect reaches the new worker");
    });
}

#[test]
fn drain_spread_spreads_the_closes_over_the_window() {
    const CLIENTS: usize = 200;
    let h = Hello::start(&hello_bin(), &["--delay", "0", "--debug-routes", "--drain-spread", "2s"]);
    let rt = rt();
    let (shared, tasks) = connect_all(&rt, &h, CLIENTS);
    shared.last_round.store(true, Ordering::SeqCst);
    let reloaded = Instant::now();
    h.reload_and_wait();
    let logs = collect(&rt, tasks);
    let times: Vec<Instant> = logs.iter().map(|l| l.closed_at[0]).collect();
    for (n, log) in logs.iter().enumerate() {
        assert!(log.errors.is_empty(), "client {n}: {:?}", log.errors);
        assert_eq!(log.closes, [1012], "client {n}");
    }
    let (first, last) = (times.iter().min().unwrap(), times.iter().max().unwrap());
    let spread = *last - *first;
    assert!(spread >= Duration::from_millis(1500), "closes spread over {spread:?} only");
    // And within the window (plus the time the reload itself took).
    let window = *last - reloaded;
    assert!(window < Duration::from_secs(5), "last close {window:?} after the reload");
}

#[test]
fn stop_closes_every_websocket_with_going_away_and_exits_0() {
    const CLIENTS: usize = 50;
    let mut h =
        Hello::start(&hello_bin(), &["--delay", "0", "--debug-routes", "--drain-spread", "200ms", "-p", "x.pid"]);
    let rt = rt();
    let (_shared, tasks) = connect_all(&rt, &h, CLIENTS);
    let (code, out) = h.ctl(&["stop"]);
    assert_eq!(code, 0, "{out}");
    let logs = collect(&rt, tasks);
    for (n, log) in logs.iter().enumerate() {
        assert!(log.errors.is_empty(), "client {n}: {:?}", log.errors);
        assert_eq!(log.closes, [1001], "client {n}");
    }
    assert!(h.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(cleanups(&h), CLIENTS);
    assert!(h.log_text().contains("drained in"), "drained, not cut:\n{}", h.log_tail(20));
}

/// Reads an event stream until the response ends; returns the raw bytes.
fn read_stream_until_end(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("the stream ended cleanly, not with a reset");
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn event_streams_end_cleanly_across_a_reload() {
    let h = Hello::start(&hello_bin(), &["--delay", "0", "--debug-routes", "--drain-spread", "500ms"]);
    let mut streams: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(h.addr()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(b"GET /ticks HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            s
        })
        .collect();
    // Each stream is under way: its first event arrived.
    for s in &mut streams {
        let mut head = [0u8; 512];
        let n = s.read(&mut head).unwrap();
        let text = String::from_utf8_lossy(&head[..n]).into_owned();
        assert!(text.starts_with("HTTP/1.1 200") && text.contains("text/event-stream"), "{text}");
    }
    h.reload_and_wait();
    for s in &mut streams {
        let text = read_stream_until_end(s);
        assert!(text.ends_with("0\r\n\r\n"), "the chunked body ended properly: {text:?}");
        // Only whole events: every chunk's data ends with the blank line of an event.
        assert!(!text.contains("tick") || text.trim_end_matches("0\r\n\r\n").ends_with("\n\n\r\n"), "{text:?}");
    }
    // The client reconnects, as EventSource does, and reaches the new generation.
    let again = support::get(h.addr(), "/pid").unwrap();
    assert_eq!(again.status, 200);
}

#[test]
fn reload_storm_with_held_websockets_never_exceeds_max_draining() {
    // Every generation holds WebSockets whose clients never read: each closes only at its
    // turn in a long spread (or when hurried), then after 2 s without the client's answer.
    let h = Hello::start(
        &hello_bin(),
        &["--delay", "0", "--debug-routes", "--drain-spread", "20s", "--max-draining", "2", "-p", "x.pid"],
    );
    let rt = rt();
    let url = format!("ws://{}/ws", h.addr());
    let mut held = Vec::new();
    let mut hold = |n: usize| {
        for _ in 0..n {
            let ws = rt.block_on(async {
                let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
                assert!(ask(&mut ws, "pid").await.is_ok());
                ws
            });
            held.push(ws);
        }
    };
    hold(3);
    let (mut newest, mut most_draining, mut listed) = (h.worker_pid(), 0, false);
    for round in 0..6 {
        // Past the second round, the reload waits for a slot and hurries the oldest generation.
        newest = h.reload_and_wait();
        hold(3);
        let (code, status) = h.ctl(&["status"]);
        assert_eq!(code, 0, "{status}");
        let draining = status.lines().filter(|l| l.contains(" draining for ")).count();
        assert!(draining <= 2, "round {round}: {draining} draining:\n{status}");
        assert!(status.contains(&format!("pid {newest} generation {} serving", round + 2)), "{status}");
        most_draining = most_draining.max(draining);
        listed |= status.contains("connections open");
    }
    assert_eq!(h.worker_pid(), newest, "the newest code serves");
    assert_eq!(most_draining, 2, "the storm filled the draining slots");
    assert!(listed, "status lists the draining generations' connections");
    let log = h.log_text();
    assert!(log.contains("reload deferred: 2 generations still draining"), "{}", h.log_tail(30));
    assert!(log.contains("told to hurry"), "{}", h.log_tail(30));
    assert!(log.contains("closing long-lived connections now"), "{}", h.log_tail(30));
}

#[test]
#[ignore = "needs python3-websockets (Debian package python3-websockets)"]
fn a_python_websockets_client_sees_1012_and_reconnects() {
    let h = Hello::start(&hello_bin(), &["--delay", "0", "--debug-routes", "--drain-spread", "200ms"]);
    let script = r#"
import asyncio, sys, websockets
async def main(url):
    async with websockets.connect(url) as ws:
        await ws.send("pid"); first = await ws.recv()
        print("connected", first, flush=True)
        try:
            await ws.recv()
            print("no close", flush=True)
        except websockets.ConnectionClosed as e:
            print("closed", e.rcvd.code, flush=True)
    async with websockets.connect(url) as ws:
        await ws.send("pid"); second = await ws.recv()
        await ws.send("hi"); echo = await ws.recv()
        print("reconnected", second, echo, flush=True)
asyncio.run(main(sys.argv[1]))
"#;
    let mut py = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script, &format!("ws://{}/ws", h.addr())])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = py.stdout.take().unwrap();
    let mut first = [0u8; 64];
    let n = out.read(&mut first).unwrap();
    let first = String::from_utf8_lossy(&first[..n]).into_owned();
    assert!(first.starts_with("connected"), "{first}");
    let new = h.reload_and_wait();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(py.wait().unwrap().success(), "{first}{rest}");
    assert!(rest.contains("closed 1012"), "{first}{rest}");
    assert!(rest.contains(&format!("reconnected {new} hi")), "{first}{rest}");
}

/// A WebSocket client that stops reading: the server's `send` fails once its write waited for
/// `--send-timeout` (the connection is the app's after the upgrade, and no longer watched by
/// the server's connection loop), so the handler ends and runs its clean-up instead of hanging
/// until the next drain.
#[test]
fn a_websocket_send_to_a_client_that_stopped_reading_fails_at_the_send_timeout() {
    let h = Hello::start_traced(&hello_bin(), &["--delay", "0", "--debug-routes", "--send-timeout", "1s"]);
    let rt = rt();
    const MESSAGES: usize = 256;
    let (ws, _) = rt.block_on(tokio_tungstenite::connect_async(format!("ws://{}/ws", h.addr()))).unwrap();
    let (mut tx, rx) = ws.split();
    // Sends far more than the socket buffers hold and reads no echo; its own sends block once
    // the server, stuck on an echo, stops reading.
    let sender = rt.spawn(async move {
        let _rx = rx;
        for _ in 0..MESSAGES {
            if tx.send(Message::binary(vec![7u8; 256 << 10])).await.is_err() {
                break;
            }
        }
    });
    wait_until(Duration::from_secs(30), "the handler's clean-up", || cleanups(&h) == 1);
    let log = h.log_text();
    assert!(log.contains("the client read nothing for 1s: send failed"), "{}", h.log_tail(20));
    let echoed: usize = log
        .split("websocket clean-up: echoed ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the clean-up line");
    assert!(echoed < MESSAGES, "echoed {echoed} of {MESSAGES}");
    sender.abort();
}
