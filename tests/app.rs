//! A real app on baton (`examples/realistic.rs`): its start-up failures reach the operator,
//! threads before `serve()`, its own tracing in the log, relative paths under `start`,
//! `ConnectInfo`, its shutdown hook, error chains.

mod support;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use support::{TempDir, alive, free_port, get, install, install_script, request, text, wait_until};

fn realistic_bin() -> PathBuf {
    support::examples_dir().join("realistic")
}

/// `realistic` run in its own directory on its own port.
struct App {
    dir: TempDir,
    port: u16,
    bin: PathBuf,
}

impl App {
    fn new(tag: &str) -> App {
        let dir = TempDir::new(tag);
        let bin = dir.join("realistic");
        install(&realistic_bin(), &bin);
        App { dir, port: free_port(), bin }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args).current_dir(self.dir.path());
        c
    }

    fn start(&self, extra: &[&str]) -> Output {
        let listen = format!("127.0.0.1:{}", self.port);
        let mut args = vec!["start", "-l", "x.log", "-p", "x.pid", "--listen", &listen];
        args.extend_from_slice(extra);
        self.cmd(&args).output().unwrap()
    }

    /// Starts it with `--metrics-listen` on a free port, which it returns.
    fn start_with_metrics(&self) -> u16 {
        let metrics = free_port();
        let out = self.start(&["--metrics-listen", &format!("127.0.0.1:{metrics}")]);
        assert!(out.status.success(), "{}", text(&out));
        metrics
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(realistic_bin()).args(args).args(["-p", "x.pid"]).current_dir(self.dir.path()).output().unwrap()
    }

    fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("x.log")).unwrap_or_default()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Ok(p) = std::fs::read_to_string(self.dir.join("x.pid")) {
            if let Ok(pid) = p.trim().parse::<i32>() {
                for c in support::children(pid) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c), nix::sys::signal::Signal::SIGKILL);
                }
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

#[test]
fn a_panic_in_the_apps_start_up_reaches_start() {
    let app = App::new("app-panic");
    let out = app.start(&["--panic-at-start"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("the database URL is missing"), "{}", text(&out));
}

#[test]
fn a_start_up_error_keeps_its_cause_chain() {
    let app = App::new("app-chain");
    let out = app.start(&["--fail-with-chain"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("cannot connect to the database: connection refused"), "{}", text(&out));
}

#[test]
fn a_new_binary_that_rejects_the_command_line_says_why_in_reload() {
    let app = App::new("app-flag");
    let out = app.start(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let real = realistic_bin();
    let real = real.display();
    install_script(
        &app.bin,
        &format!("case \"$1\" in run|start) exec {real} \"$@\" --renamed-flag;; *) exec {real} \"$@\";; esac"),
    );
    let out = app.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("unexpected argument '--renamed-flag'"), "{}", text(&out));
}

#[test]
fn threads_started_before_serve_work_with_run_and_give_start_a_clear_error() {
    let app = App::new("app-threads");
    let out =
        app.cmd(&["start", "-l", "x.log", "-p", "x.pid"]).env("REALISTIC_THREAD_BEFORE_SERVE", "1").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("threads were started before App::serve"), "{}", text(&out));
    let listen = format!("127.0.0.1:{}", app.port);
    let mut cmd = app.cmd(&["run", "--listen", &listen]);
    cmd.env("REALISTIC_THREAD_BEFORE_SERVE", "1");
    let h = support::Hello::launch(cmd, app.port);
    wait_until(Duration::from_secs(30), "the app to serve", || get(app.addr(), "/").is_ok());
    assert_eq!(get(app.addr(), "/").unwrap().body, "hello");
    drop(h);
}

#[test]
fn the_apps_own_tracing_reaches_the_log_with_span_fields_and_no_colour() {
    let app = App::new("app-tracing");
    let out = app.start(&["--greeting", "hi"]);
    assert!(out.status.success(), "{}", text(&out));
    let log = app.log();
    assert!(log.contains("startup{greeting=hi}: realistic app starting"), "{log}");
    assert!(!log.contains('\x1b'), "escape codes in the log file: {log:?}");
}

#[test]
fn relative_paths_connect_info_state_and_the_shutdown_hook_under_start() {
    let app = App::new("app-paths");
    std::fs::create_dir(app.dir.join("static")).unwrap();
    std::fs::write(app.dir.join("static/hello.txt"), "static hello\n").unwrap();
    let out = app
        .cmd(&["start", "-l", "x.log", "-p", "x.pid", "--listen", &format!("127.0.0.1:{}", app.port)])
        .env("REALISTIC_MOTD", "(motd)")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let r = get(app.addr(), "/static/hello.txt").unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "static hello\n"), "ServeDir of a relative path under start");
    let who = get(app.addr(), "/whoami").unwrap();
    assert_eq!(who.status, 200, "ConnectInfo<SocketAddr> is there: {}", who.body);
    assert!(who.body.starts_with("127.0.0.1:"), "{}", who.body);
    assert_eq!(get(app.addr(), "/").unwrap().body, "hello (motd)");
    assert_eq!(get(app.addr(), "/api/hits").unwrap().body, "{\"hits\":1}");
    let pid: i32 = std::fs::read_to_string(app.dir.join("x.pid")).unwrap().trim().parse().unwrap();
    let out = app.ctl(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!alive(pid));
    assert_eq!(std::fs::read_to_string(app.dir.join("shutdown.done")).unwrap(), "drained\n", "the shutdown hook ran");
}

#[test]
fn an_app_flag_clashing_with_batons_is_a_clear_error_in_every_build() {
    let out = Command::new(support::examples_dir().join("clash")).args(["run", "-p", "8080"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("the app's flag -p/--port clashes with baton's -p/--pid"), "{}", text(&out));
}

#[test]
fn help_and_version_are_the_apps() {
    let out = Command::new(realistic_bin()).arg("--version").output().unwrap();
    assert_eq!(text(&out).trim(), format!("realistic {}", env!("CARGO_PKG_VERSION")));
    let out = Command::new(realistic_bin()).args(["run", "--help"]).output().unwrap();
    let help = text(&out);
    assert!(help.contains("Server options:"), "{help}");
    assert!(help.contains("Default: 127.0.0.1:8080"), "the app's default, not hello's: {help}");
    assert!(help.find("--greeting") < help.find("Server options:"), "the app's own flags first: {help}");
}

#[test]
fn the_app_sets_serving_defaults_and_the_command_line_overrides_them() {
    let out = Command::new(realistic_bin()).args(["run", "--help"]).output().unwrap();
    assert!(text(&out).contains("[default: 7s]"), "the app's --drain-timeout default: {}", text(&out));
    let app = App::new("app-defaults");
    let out = app.start(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(get(app.addr(), "/healthz").unwrap().body, "ok\n", "the app's --health-path default");
    let out = app.ctl(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    // Its `--health-log off` default: the probe was not logged (the log is complete once
    // `stop` returns).
    assert!(app.log().contains("worker[") && !app.log().contains("/healthz"), "{}", app.log());
    let out = app.start(&["--health-path", "/alive", "--health-log", "on"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(get(app.addr(), "/alive").unwrap().body, "ok\n", "the command line overrides it");
    assert_eq!(get(app.addr(), "/healthz").unwrap().status, 404);
    let out = app.ctl(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(app.log().contains("\"GET /alive HTTP/1.1\" 200 "), "{}", app.log());
}

#[test]
fn a_reload_rereads_the_config_file_and_a_broken_one_is_rolled_back() {
    let app = App::new("app-config");
    let conf = app.dir.join("app.conf");
    std::fs::write(&conf, "motd = one\n").unwrap();
    let out = app.start(&["--config", "app.conf"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(get(app.addr(), "/").unwrap().body, "hello one");
    std::fs::write(&conf, "motd = two\n").unwrap();
    let out = app.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("config {} (11 bytes)", conf.display())), "{}", text(&out));
    assert_eq!(get(app.addr(), "/").unwrap().body, "hello two", "reload applied the change");
    std::fs::write(&conf, "motd: three\n").unwrap();
    let out = app.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("app.conf line 1: expected `motd = TEXT`"), "{}", text(&out));
    assert_eq!(get(app.addr(), "/").unwrap().body, "hello two", "the old worker keeps serving");
    let out = app.ctl(&["status"]);
    assert!(
        text(&out).contains(&format!("version {}; config {}", env!("CARGO_PKG_VERSION"), conf.display())),
        "{}",
        text(&out)
    );
}

#[test]
fn the_app_adds_its_own_subcommand() {
    let out = Command::new(realistic_bin()).args(["migrate", "--to", "3"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).trim(), "migrated to schema version 3");
    let out = Command::new(realistic_bin()).arg("--help").output().unwrap();
    assert!(text(&out).contains("migrate") && text(&out).contains("Migrate the database schema"), "{}", text(&out));
}

#[test]
fn an_apps_own_subscriber_stays_in_charge_and_baton_says_which_process() {
    let app = App::new("app-subscriber");
    let listen = format!("127.0.0.1:{}", app.port);
    let out = app
        .cmd(&["start", "-l", "x.log", "-p", "x.pid", "--listen", &listen])
        .env("REALISTIC_OWN_SUBSCRIBER", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let log = app.log();
    let started = log.lines().find(|l| l.contains("master started")).unwrap_or_else(|| panic!("{log}"));
    assert!(!started.contains("master["), "the app's format, not baton's: {started}");
    assert!(started.contains("baton{role=\"master\" pid="), "{started}");
    let serving = log.lines().find(|l| l.contains("serving on")).unwrap_or_else(|| panic!("{log}"));
    assert!(serving.contains("baton{role=\"worker\" pid="), "{serving}");
}

#[test]
fn the_apps_events_in_a_handler_carry_the_request_id() {
    let app = App::new("app-rid");
    let listen = format!("127.0.0.1:{}", app.port);
    let out = app
        .cmd(&["start", "-l", "x.log", "-p", "x.pid", "--listen", &listen])
        .env("RUST_LOG", "info,baton=debug")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let r = support::request(
        app.addr(),
        b"GET / HTTP/1.1\r\nHost: t\r\nx-request-id: trace-me-42\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    wait_until(Duration::from_secs(10), "the app's line", || app.log().contains("greeted"));
    let line = app.log().lines().find(|l| l.contains("greeted")).unwrap().to_owned();
    assert!(line.contains("request{id=\"trace-me-42\"}: greeted n=1"), "{line}");
}

#[test]
fn where_a_request_came_in_on_tcp_and_unix_listeners() {
    use std::io::{Read, Write};
    let app = App::new("app-conn");
    let sock = app.dir.join("app.sock");
    let listen = format!("127.0.0.1:{}", app.port);
    let unix = format!("unix:{}", sock.display());
    let out =
        app.cmd(&["start", "-l", "x.log", "-p", "x.pid", "--listen", &listen, "--listen", &unix]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let tcp = get(app.addr(), "/conn").unwrap().body;
    assert!(tcp.starts_with("peer=127.0.0.1:") && tcp.ends_with(&format!(" local={listen}")), "{tcp}");
    // The same over HTTP/2, with `ConnectInfo` (the two extensions are inserted when the
    // stream's task begins the request, not in hyper's call as over HTTP/1.1).
    let on = |path: &str| http::Request::get(path).body(String::new()).unwrap();
    let h2 = support::h2(app.addr(), vec![on("/conn"), on("/whoami")]);
    let (conn, who) = (&h2[0].body, &h2[1].body);
    assert!(conn.starts_with("peer=127.0.0.1:") && conn.ends_with(&format!(" local={listen}")), "{conn}");
    assert!(conn.starts_with(&format!("peer={who} ")), "ConnectInfo and Connection agree: {conn}, {who}");
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.write_all(b"GET /conn HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let resp = support::parse(&buf).unwrap();
    assert_eq!(resp.body, format!("peer=none local={unix}"));
    // A unix socket has no client address, unless the proxy behind it (trusted by realistic)
    // names one.
    for (xff, client) in [("", "unknown"), ("X-Forwarded-For: 203.0.113.9\r\n", "203.0.113.9")] {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        write!(s, "GET /api/client HTTP/1.1\r\nHost: t\r\n{xff}Connection: close\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        assert_eq!(support::parse(&buf).unwrap().body, client);
    }
}

/// `baton::BodyLimit` on a route: `/upload` takes up to 16 MiB while `/api/note` keeps
/// `--max-body-bytes` (default 2 MiB), with a length and chunked. A length over a route's
/// limit is answered 413 without `100 Continue`, before the client sends the body.
#[test]
fn a_route_sets_its_own_body_limit() {
    let app = App::new("app-body-limit");
    let out = app.start(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let a = app.addr();
    let post = |path: &str, len: usize, chunked: bool| {
        let body = "x".repeat(len);
        let raw = if chunked {
            format!(
                "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{len:x}\r\n{body}\r\n0\r\n\r\n"
            )
        } else {
            format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}")
        };
        request(a, raw.as_bytes()).unwrap()
    };
    for chunked in [false, true] {
        let r = post("/upload", 5_000_000, chunked);
        assert_eq!((r.status, r.body.as_str()), (200, "received 5000000 bytes\n"), "chunked: {chunked}");
        let r = post("/upload", 16 << 20, chunked);
        assert_eq!(r.status, 200, "exactly 16 MiB, chunked: {chunked}");
        let r = post("/api/note", 2 << 20, chunked);
        assert_eq!((r.status, r.body.as_str()), (200, "noted 2097152 bytes\n"), "chunked: {chunked}");
    }
    // One byte over, streamed: cut as it passes the limit. The server answers and closes while
    // the client may still be writing (EPIPE): its answer is read all the same.
    let len = (2 << 20) + 1;
    let raw = format!(
        "POST /api/note HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{len:x}\r\n{}\r\n0\r\n\r\n",
        "x".repeat(len)
    );
    let mut s = std::net::TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(raw.as_bytes());
    let mut buf = Vec::new();
    let read = s.read_to_end(&mut buf);
    assert!(read.is_ok() || !buf.is_empty(), "{read:?}");
    assert_eq!(support::parse(&buf).unwrap().status, 413);
    // Declared over a limit, the body not sent: answered at once, with no `100 Continue`.
    for (path, len) in [("/api/note", 3_000_000), ("/upload", (16 << 20) + 1)] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(request(a, head.as_bytes()).unwrap().status, 413, "{path} {len}");
    }
    // Under `--max-body-bytes 1KiB`, the upload route keeps its own 16 MiB.
    drop(app);
    let app = App::new("app-body-limit-small");
    let out = app.start(&["--max-body-bytes", "1KiB"]);
    assert!(out.status.success(), "{}", text(&out));
    let a = app.addr();
    let body = "x".repeat(3_000_000);
    let r = request(
        a,
        format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 3000000\r\nConnection: close\r\n\r\n{body}")
            .as_bytes(),
    )
    .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "received 3000000 bytes\n"));
    let r =
        request(a, b"POST /api/note HTTP/1.1\r\nHost: t\r\nContent-Length: 1025\r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(r.status, 413);
}

/// `baton::RequestTimeout` on a route, under `--request-timeout 1s`: `/api/report` (600 s)
/// answers after 1.5 s, `/api/lookup` (500 ms) is cut at 503 after 0.8 s, with the usual
/// `request timeout` line, and answers when it is quick.
#[test]
fn a_route_sets_its_own_request_timeout() {
    let app = App::new("app-timeout");
    let out = app.start(&["--request-timeout", "1s"]);
    assert!(out.status.success(), "{}", text(&out));
    let r = get(app.addr(), "/api/report/1500").unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "done in 1500 ms\n"));
    let r = get(app.addr(), "/api/lookup/800").unwrap();
    assert_eq!((r.status, r.body.as_str()), (503, "request timeout\n"));
    assert!(app.log().contains("request timeout on GET /api/lookup/800"), "{}", app.log());
    let r = get(app.addr(), "/api/lookup/10").unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "done in 10 ms\n"));
}

/// `baton::NoAccessLog` on a route: `/ping` is answered and counted in the metrics, and left
/// out of the access log, which has the requests around it.
#[test]
fn a_route_left_out_of_the_access_log() {
    let app = App::new("app-quiet");
    let metrics = app.start_with_metrics();
    assert_eq!(get(app.addr(), "/api/hits").unwrap().status, 200);
    for _ in 0..3 {
        assert_eq!(get(app.addr(), "/ping").unwrap().body, "pong");
    }
    assert_eq!(get(app.addr(), "/whoami").unwrap().status, 200);
    // Counted as each response ends, which may be just after the client has it.
    let ok = || {
        let scrape = get(([127, 0, 0, 1], metrics).into(), "/metrics").unwrap().body;
        let line = scrape.lines().find(|l| l.starts_with("baton_requests_total{") && l.contains("code=\"2xx\""));
        line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse::<f64>().ok())
    };
    wait_until(Duration::from_secs(10), "the pings to be counted", || ok() == Some(5.0));
    // Stopped, so that every line is in the file.
    assert!(app.ctl(&["stop"]).status.success());
    let log = app.log();
    assert!(log.contains("\"GET /api/hits HTTP/1.1\" 200") && log.contains("\"GET /whoami HTTP/1.1\" 200"), "{log}");
    assert!(!log.contains("/ping"), "{log}");
}

/// `App::trusted_proxies` (realistic trusts `127.0.0.1, unix`): the access log and the app's
/// `baton::ClientIp` name the client in `X-Forwarded-For`; `--trusted-proxy` on the command
/// line replaces the app's list.
#[test]
fn the_apps_trusted_proxies_name_the_client_in_the_access_log() {
    for (extra, want) in [(&[][..], "198.51.100.7 - - ["), (&["--trusted-proxy", "10.0.0.0/8"][..], "127.0.0.1 - - [")]
    {
        let app = App::new("app-proxy");
        let out = app.start(extra);
        assert!(out.status.success(), "{}", text(&out));
        let head = "GET /api/hits HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 198.51.100.7\r\nConnection: close\r\n\r\n";
        assert_eq!(request(app.addr(), head.as_bytes()).unwrap().status, 200);
        // The app's `baton::ClientIp` is the same address.
        let head = head.replace("/api/hits", "/api/client");
        let ip = want.split(' ').next().unwrap();
        assert_eq!(request(app.addr(), head.as_bytes()).unwrap().body, ip, "{extra:?}");
        assert!(app.ctl(&["stop"]).status.success());
        let log = app.log();
        let line =
            log.lines().find(|l| l.contains("\"GET /api/hits HTTP/1.1\" 200")).unwrap_or_else(|| panic!("{log}"));
        assert!(line.starts_with(want), "{extra:?}: {line}");
    }
}

/// `baton::Counter`: the app's own counters are served on `--metrics-listen` with baton's and
/// go on counting across a reload and a crash restart (realistic's `realistic_greetings_total`
/// and `realistic_notes_total{kind}`); `/api/hits` reads the same count. `baton::Gauge`: summed
/// over the live workers, a draining one's included. `baton::Histogram`: one worker's
/// observations served by the next.
#[test]
fn the_apps_counters_are_kept_across_reloads_and_crashes() {
    let app = App::new("app-counters");
    let metrics = app.start_with_metrics();
    let a = app.addr();
    let note = |body: &str| {
        let raw = format!(
            "POST /api/note HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(request(a, raw.as_bytes()).unwrap().status, 200);
    };
    for _ in 0..2 {
        assert_eq!(get(a, "/").unwrap().status, 200);
    }
    note("hi");
    let out = app.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(get(a, "/").unwrap().status, 200);
    note("");
    // A crash: the master starts a worker again, which counts on.
    let master: i32 = std::fs::read_to_string(app.dir.join("x.pid")).unwrap().trim().parse().unwrap();
    wait_until(Duration::from_secs(40), "the replaced generation to exit", || support::children(master).len() == 1);
    let worker = support::children(master)[0];
    support::signal(worker, nix::sys::signal::Signal::SIGKILL);
    wait_until(Duration::from_secs(20), "a worker started again", || {
        support::children(master).iter().any(|p| *p != worker) && get(a, "/api/hits").is_ok_and(|r| r.status == 200)
    });
    assert_eq!(get(a, "/").unwrap().status, 200);
    assert_eq!(get(a, "/api/hits").unwrap().body, "{\"hits\":4}");
    let text = get(([127, 0, 0, 1], metrics).into(), "/metrics").unwrap().body;
    let value = |series: &str| text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')).map(str::to_owned);
    assert_eq!(value("realistic_greetings_total").as_deref(), Some("4"), "{text}");
    assert_eq!(value("realistic_notes_total{kind=\"text\"}").as_deref(), Some("1"), "{text}");
    assert_eq!(value("realistic_notes_total{kind=\"empty\"}").as_deref(), Some("1"), "{text}");
    assert!(
        text.contains(
            "# HELP realistic_greetings_total Greetings answered (GET /).\n# TYPE realistic_greetings_total counter\n"
        ),
        "{text}"
    );
    assert_eq!(text.matches("# TYPE realistic_notes_total counter\n").count(), 1, "one family: {text}");
    assert!(text.contains("baton_worker_crashes_total 1"), "{text}");
    // A gauge (`realistic_slow_requests`): a slow request in flight counts while its worker
    // drains after a reload, and not once it is done.
    let scrape = || get(([127, 0, 0, 1], metrics).into(), "/metrics").unwrap().body;
    let slow = |text: &str| text.lines().find_map(|l| l.strip_prefix("realistic_slow_requests ")).map(str::to_owned);
    let report = std::thread::spawn(move || get(a, "/api/report/2000"));
    wait_until(Duration::from_secs(10), "the slow request counted", || slow(&scrape()).as_deref() == Some("1"));
    let out = app.ctl(&["reload"]);
    assert!(out.status.success(), "{}", support::text(&out));
    let text = scrape();
    assert_eq!(slow(&text).as_deref(), Some("1"), "the draining worker's: {text}");
    assert!(text.contains("# TYPE realistic_slow_requests gauge\n"), "{text}");
    assert_eq!(report.join().unwrap().unwrap().status, 200);
    wait_until(Duration::from_secs(10), "the slow request done", || slow(&scrape()).as_deref() == Some("0"));
    // A histogram (`realistic_slow_request_seconds`): observed by the draining worker, served
    // by the new one.
    let text = scrape();
    assert!(text.contains("# TYPE realistic_slow_request_seconds histogram\n"), "{text}");
    for line in [
        "realistic_slow_request_seconds_bucket{le=\"1\"} 0",
        "realistic_slow_request_seconds_bucket{le=\"2.5\"} 1",
        "realistic_slow_request_seconds_bucket{le=\"+Inf\"} 1",
        "realistic_slow_request_seconds_count 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line}: {text}");
    }
    let sum = text.lines().find_map(|l| l.strip_prefix("realistic_slow_request_seconds_sum ")).unwrap();
    assert!((2.0..2.5).contains(&sum.parse::<f64>().unwrap()), "{text}");
    // The same in `status --json`, by series.
    let out = app.ctl(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let own = &json["app_metrics"];
    assert_eq!(own["realistic_greetings_total"], 4, "{json}");
    assert_eq!(own["realistic_notes_total{kind=\"empty\"}"], 1, "{json}");
    assert_eq!(own["realistic_slow_requests"], 0, "{json}");
    assert_eq!(own["realistic_slow_request_seconds"]["count"], 1, "{json}");
    assert!((2.0..2.5).contains(&own["realistic_slow_request_seconds"]["sum"].as_f64().unwrap()), "{json}");
}

/// The app's counters, gauges and histograms pass `promtool check metrics` with baton's,
/// labelled or not.
#[test]
#[ignore = "needs promtool (Debian package prometheus)"]
fn the_apps_counters_pass_promtool() {
    let app = App::new("app-promtool");
    let metrics = app.start_with_metrics();
    assert_eq!(get(app.addr(), "/").unwrap().status, 200);
    let raw = b"POST /api/note HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi";
    assert_eq!(request(app.addr(), raw).unwrap().status, 200);
    assert_eq!(get(app.addr(), "/api/report/1").unwrap().status, 200);
    let text = get(([127, 0, 0, 1], metrics).into(), "/metrics").unwrap().body;
    assert!(text.contains("realistic_notes_total{kind=\"text\"} 1"), "{text}");
    assert!(text.contains("realistic_slow_requests 0"), "{text}");
    assert!(text.contains("realistic_slow_request_seconds_count 1"), "{text}");
    support::promtool_check(&text);
}
