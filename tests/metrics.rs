//! Metrics that survive reloads, through the real `hello` binary: `--metrics-listen` scraped
//! over real connections on 127.0.0.1 while workers are reloaded and killed, `status --json`,
//! and `promtool check metrics` (Debian package `prometheus`) in an ignored test.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use std::io::{Read, Write};

use support::{Hello, free_port, get, hello_bin, load, request, rt, signal, wait_until};

/// Starts hello with `--metrics-listen` on a free port; returns it and the metrics address.
fn start(extra: &[&str]) -> (Hello, SocketAddr) {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listen = metrics.to_string();
    let mut args = vec!["--delay", "0", "-p", "x.pid", "--metrics-listen", &listen];
    args.extend_from_slice(extra);
    (Hello::start(&hello_bin(), &args), metrics)
}

fn scrape(addr: SocketAddr) -> Result<String, String> {
    match get(addr, "/metrics") {
        Ok(r) if r.status == 200 => Ok(r.body),
        Ok(r) => Err(format!("status {}: {}", r.status, r.body)),
        Err(e) => Err(e.to_string()),
    }
}

/// Every sample of the text format: `name{labels}` to value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {l:?}"));
            (k.to_owned(), v.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")))
        })
        .collect()
}

/// The samples that may only grow: counters and histograms.
fn monotonic(name: &str) -> bool {
    let base = name.split('{').next().unwrap();
    base.ends_with("_total") || base.ends_with("_bucket") || base.ends_with("_sum") || base.ends_with("_count")
}

fn http_requests(s: &BTreeMap<String, f64>) -> f64 {
    s.iter().filter(|(k, _)| k.starts_with("baton_requests_total{listener=\"http\"")).map(|(_, v)| v).sum()
}

/// The serving worker's pid, from `status --json`.
fn serving_pid(h: &Hello) -> Option<i64> {
    let (code, out) = h.ctl(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    if code != 0 {
        return None;
    }
    v["workers"].as_array()?.iter().find(|w| w["state"] == "serving")?["pid"].as_i64()
}

#[test]
fn counters_survive_reloads_and_crashes_and_match_the_client_exactly() {
    let (h, maddr) = start(&[]);
    // Start-up made requests of its own (`/pid` until it answered).
    let before = http_requests(&samples(&scrape(maddr).unwrap()));
    let rt = rt();
    let ctl = Arc::new(load::Control::default());
    let run = rt.spawn(load::run(
        load::Config { max_time: Duration::from_secs(120), ..load::Config::hello(h.addr(), load::Mode::KeepAlive, 8) },
        ctl.clone(),
    ));
    // A scraper every 100 ms, checking each scrape against the one before. Paused around
    // each SIGKILL as the load is: a scrape the killed worker had accepted dies with it.
    let done = Arc::new(AtomicBool::new(false));
    let (pause, scraping) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let scraper = {
        let (done, pause, scraping) = (done.clone(), pause.clone(), scraping.clone());
        std::thread::spawn(move || {
            let (mut scrapes, mut last, mut problems) = (0, BTreeMap::new(), Vec::new());
            while !done.load(Ordering::SeqCst) {
                // Busy first, then the pause checked: the killer sets the pause, then waits
                // until not busy, so one of the two sees the other (both SeqCst).
                scraping.store(true, Ordering::SeqCst);
                if pause.load(Ordering::SeqCst) {
                    scraping.store(false, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                let scraped = scrape(maddr);
                scraping.store(false, Ordering::SeqCst);
                match scraped {
                    Ok(text) => {
                        let now = samples(&text);
                        for (k, v) in now.iter().filter(|(k, _)| monotonic(k)) {
                            if let Some(before) = last.get(k) {
                                if v < before {
                                    problems.push(format!("{k} went from {before} to {v}"));
                                }
                            }
                        }
                        last = now;
                        scrapes += 1;
                    }
                    Err(e) => problems.push(format!("scrape failed: {e}")),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (scrapes, problems)
        })
    };
    for round in 0..20 {
        let (code, out) = h.ctl(&["reload"]);
        assert_eq!(code, 0, "reload {round}: {out}");
        if round == 5 || round == 12 {
            // Killed while no request is in flight, so that "completed" has one meaning for
            // both sides: no response is half-sent when the worker dies.
            ctl.pause.store(true, Ordering::SeqCst);
            pause.store(true, Ordering::SeqCst);
            wait_until(Duration::from_secs(10), "the load to pause", || ctl.busy.load(Ordering::SeqCst) == 0);
            wait_until(Duration::from_secs(10), "the scraper to pause", || !scraping.load(Ordering::SeqCst));
            let victim = serving_pid(&h).expect("a serving worker");
            signal(victim as i32, Signal::SIGKILL);
            wait_until(Duration::from_secs(10), "a replacement", || serving_pid(&h).is_some_and(|p| p != victim));
            ctl.pause.store(false, Ordering::SeqCst);
            pause.store(false, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ctl.stop.store(true, Ordering::SeqCst);
    let stats = rt.block_on(run).unwrap();
    done.store(true, Ordering::SeqCst);
    let (scrapes, problems) = scraper.join().unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert!(scrapes >= 10, "{scrapes} scrapes");
    assert_eq!(stats.failed, 0, "{:?}", stats.failures);
    // The last responses' counts are written once their bodies are done: wait for them.
    let mut last = BTreeMap::new();
    wait_until(Duration::from_secs(5), "requests_total to reach the client's count", || {
        last = samples(&scrape(maddr).unwrap());
        http_requests(&last) >= before + stats.ok as f64
    });
    let counted = http_requests(&last) - before;
    assert_eq!(counted, stats.ok as f64, "requests_total against the client's completed requests");
    assert_eq!(last["baton_reloads_total{result=\"ok\"}"], 20.0);
    assert_eq!(last["baton_worker_crashes_total"], 2.0);
    // 1 + 20 reloads + 2 crash restarts.
    assert_eq!(last["baton_worker_starts_total"], 23.0);
    assert_eq!(last["baton_reload_duration_seconds_count"], 20.0);
    assert_eq!(last["baton_request_duration_seconds_count"], before + stats.ok as f64);
}

/// Requests that hyper answers itself, without calling baton's service (a head it cannot
/// parse: 400; a head too large: 431; a URI too long: 414), are in the access log, in both
/// formats, and in the metrics' counts and durations, as every other answered request is.
#[test]
fn requests_hyper_rejects_are_logged_and_counted() {
    let too_many_headers = format!("GET / HTTP/1.1\r\nHost: t\r\n{}\r\n", "X-A: b\r\n".repeat(200));
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(70_000));
    // (request, its status, hyper's reason as JSON's `error` gives it)
    let cases: [(&[u8], u16, &str); 6] = [
        (b"G@T / HTTP/1.1\r\nHost: t\r\n\r\n", 400, "invalid HTTP method parsed"),
        (b"GET / HTTP/1.1\r\nHost: t\r\nBad Header: y\r\n\r\n", 400, "invalid HTTP header parsed"),
        (b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n", 400, "invalid content-length parsed"),
        (b"GET / HTTP/7.1\r\nHost: t\r\n\r\n", 400, "invalid HTTP version parsed"),
        (too_many_headers.as_bytes(), 431, "message head is too large"),
        (long_uri.as_bytes(), 414, "URI too long"),
    ];
    for format in ["combined", "json"] {
        // A head may be 100,000 bytes: the 70,000-byte URI is hyper's "URI too long", not
        // a head too large.
        let (h, maddr) = start(&["--access-log", format, "--max-header-bytes", "100000"]);
        let before = samples(&scrape(maddr).unwrap());
        let count = |s: &BTreeMap<String, f64>, class: &str| {
            s[&format!("baton_requests_total{{listener=\"http\",code=\"{class}\"}}")]
        };
        for (raw, status, _) in cases {
            let r = request(h.addr(), raw).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&raw[..30])));
            assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&raw[..30]));
        }
        // A good request, then a bad one on the same connection: both answered and logged.
        let mut s = std::net::TcpStream::connect(h.addr()).unwrap();
        s.write_all(b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\nG@T / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut both = String::new();
        s.read_to_string(&mut both).unwrap();
        let statuses: Vec<&str> = both.match_indices("HTTP/1.1 ").map(|(i, _)| &both[i + 9..i + 12]).collect();
        assert_eq!(statuses, ["200", "400"], "{both}");
        // The cases' and the pipelined one's.
        let bad = cases.len() + 1;
        let rejected: Vec<String> = {
            let mut lines = Vec::new();
            wait_until(Duration::from_secs(5), "the access log's lines", || {
                let text = h.log_text();
                lines = text
                    .lines()
                    .filter(|l| l.contains("\"-\" 4") || l.contains("\"error\":"))
                    .map(str::to_owned)
                    .collect();
                lines.len() >= bad
            });
            lines
        };
        assert_eq!(rejected.len(), bad, "{rejected:#?}");
        // Each line's status and reason (JSON; the combined format has no reason), in any
        // order: the runtime's threads hand their lines to the writer each in its own batches.
        let mut logged: Vec<(u16, Option<String>)> = rejected
            .iter()
            .map(|line| {
                if format == "combined" {
                    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
                    assert!(line.ends_with(" -"), "{line}");
                    let (_, rest) = line.split_once("] \"-\" ").unwrap_or_else(|| panic!("{line}"));
                    let (status, rest) = rest.split_once(' ').unwrap();
                    assert!(rest.starts_with("0 \"-\" \"-\" "), "{line}");
                    (status.parse().unwrap(), None)
                } else {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                    assert_eq!((v["bytes"].as_u64(), v["remote"].as_str()), (Some(0), Some("127.0.0.1")), "{line}");
                    assert!(v.get("method").is_none() && v.get("uri").is_none(), "{line}");
                    (v["status"].as_u64().unwrap() as u16, Some(v["error"].as_str().unwrap().to_owned()))
                }
            })
            .collect();
        let mut expected: Vec<(u16, Option<String>)> = cases
            .iter()
            .map(|c| (c.1, c.2))
            .chain([(400, "invalid HTTP method parsed")])
            .map(|(status, reason)| (status, (format == "json").then(|| reason.to_owned())))
            .collect();
        logged.sort();
        expected.sort();
        assert_eq!(logged, expected, "{rejected:#?}");
        // Counted: every 4xx above and the one 200; each in the duration histogram too.
        let mut after = BTreeMap::new();
        wait_until(Duration::from_secs(5), "the 200's count", || {
            after = samples(&scrape(maddr).unwrap());
            count(&after, "2xx") > count(&before, "2xx")
        });
        assert_eq!(count(&after, "4xx") - count(&before, "4xx"), bad as f64);
        assert_eq!(count(&after, "2xx") - count(&before, "2xx"), 1.0);
        let observed = |s: &BTreeMap<String, f64>| s["baton_request_duration_seconds_count"];
        assert_eq!(observed(&after) - observed(&before), (bad + 1) as f64);
    }
}

/// A request whose client goes away before its answer (closes its HTTP/1.1 connection, or
/// cancels its HTTP/2 stream) is logged and counted with status 499, as nginx logs it, not
/// lost: a handler too slow for its clients shows in the log and the metrics.
#[test]
fn requests_whose_clients_leave_before_the_answer_are_logged_and_counted_as_499() {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listen = metrics.to_string();
    // `/` answers after 30 s: both clients leave long before.
    let h = Hello::start_traced(&hello_bin(), &["--delay", "30", "--metrics-listen", &listen]);
    let before = samples(&scrape(metrics).unwrap());
    let started = |n: usize| {
        wait_until(Duration::from_secs(20), &format!("{n} handlers of / begun"), || {
            h.log_text().lines().filter(|l| l.ends_with("request started: GET /")).count() >= n
        })
    };
    // HTTP/1.1: the connection closed while the handler runs.
    let mut s = std::net::TcpStream::connect(h.addr()).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nUser-Agent: leaver-1\r\n\r\n").unwrap();
    started(1);
    drop(s);
    let mut lines = Vec::new();
    let mut wait_lines = |n: usize| {
        wait_until(Duration::from_secs(10), &format!("{n} lines of 499"), || {
            lines = h.log_text().lines().filter(|l| l.contains("\" 499 ")).map(str::to_owned).collect();
            lines.len() >= n
        })
    };
    wait_lines(1);
    // HTTP/2: the stream cancelled (the client's response future dropped: hyper's client
    // resets the stream), the connection left open until its line is there.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        let conn = tokio::spawn(conn);
        let req = http::Request::get(format!("http://{}/", h.addr()))
            .header("user-agent", "leaver-2")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let pending = tokio::spawn(send.send_request(req));
        tokio::task::block_in_place(|| started(2));
        pending.abort();
        let _ = pending.await;
        tokio::task::block_in_place(|| wait_lines(2));
        assert!(!conn.is_finished(), "the HTTP/2 connection ended: not a stream reset alone");
        conn.abort();
    });
    lines.sort_by_key(|l| l.contains("HTTP/2.0"));
    assert!(lines[0].contains("] \"GET / HTTP/1.1\" 499 0 \"-\" \"leaver-1\" "), "{lines:#?}");
    assert!(lines[1].contains("] \"GET / HTTP/2.0\" 499 0 \"-\" \"leaver-2\" "), "{lines:#?}");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let after = samples(&scrape(metrics).unwrap());
    let delta = |k: &str| after[k] - before[k];
    assert_eq!(delta("baton_requests_total{listener=\"http\",code=\"4xx\"}"), 2.0);
    assert_eq!(delta("baton_request_duration_seconds_count"), 2.0);
    assert_eq!(after["baton_requests_in_flight"], 0.0);
}

#[test]
fn status_json_parses_and_agrees_with_the_metrics() {
    let (h, maddr) = start(&[]);
    // Start-up made requests of its own (`/pid` until it answered).
    let before = http_requests(&samples(&scrape(maddr).unwrap())) as u64;
    for _ in 0..7 {
        assert_eq!(get(h.addr(), "/").unwrap().status, 200);
    }
    assert_eq!(get(h.addr(), "/missing").unwrap().status, 404);
    let (code, out) = h.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = h.ctl(&["status", "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let m = samples(&scrape(maddr).unwrap());
    assert_eq!(v["state"], "serving");
    assert_eq!(v["pid"].as_i64(), Some(i64::from(h.pid)));
    assert_eq!(v["generation"].as_f64(), Some(m["baton_generation"]));
    assert_eq!(v["generation"], 2);
    assert_eq!(v["requests"]["total"].as_f64(), Some(http_requests(&m)));
    assert_eq!(v["requests"]["by_class"]["2xx"], before + 7, "{out}");
    assert_eq!(v["requests"]["by_class"]["4xx"], 1, "{out}");
    assert_eq!(v["requests"]["by_listener"]["http"], before + 8, "{out}");
    assert!(v["requests"]["by_listener"].get("baton-metrics").is_none(), "{out}");
    assert_eq!(v["reloads"]["ok"].as_f64(), Some(m["baton_reloads_total{result=\"ok\"}"]));
    assert_eq!(v["worker_starts"].as_f64(), Some(m["baton_worker_starts_total"]));
    assert_eq!(v["worker_crashes"].as_f64(), Some(m["baton_worker_crashes_total"]));
    assert_eq!(v["last_reload"]["ok"], true);
    let workers = v["workers"].as_array().unwrap();
    assert!(workers.iter().any(|w| w["state"] == "serving" && w["generation"] == 2), "{out}");
    // The text form says the same in words.
    let (_, text) = h.ctl(&["status"]);
    let words = format!("requests: {} since start (0 5xx); reloads: 1 ok, 0 failed, 0 rolled back", before + 8);
    assert!(text.contains(&words), "{text}");
    // Not running: still one JSON object, with LSB's code.
    let (code, out) = h.ctl(&["stop"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = h.ctl(&["status", "--json"]);
    assert_eq!(code, 3, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["state"], "not running");
}

#[test]
fn listeners_sharing_a_name_are_counted_apart() {
    // Two `--listen` without a name are both `http` (as the sockets of one systemd socket
    // unit share theirs): each is labelled with its address, in the metrics and in `status`.
    let second = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (second_arg, admin_arg) = (second.to_string(), format!("admin={admin}"));
    let (h, maddr) = start(&["--listen", &second_arg, "--listen", &admin_arg]);
    let (first_label, second_label) = (format!("http={}", h.addr()), format!("http={second}"));
    let key = |l: &str, c: &str| format!("baton_requests_total{{listener=\"{l}\",code=\"{c}\"}}");
    // Start-up made requests of its own, on the first listener.
    let before = samples(&scrape(maddr).unwrap());
    for _ in 0..3 {
        assert_eq!(get(second, "/").unwrap().status, 200);
    }
    assert_eq!(get(admin, "/missing").unwrap().status, 404);
    let text = scrape(maddr).unwrap();
    // No series twice: Prometheus rejects a scrape that repeats one.
    let series: Vec<&str> =
        text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| Some(l.rsplit_once(' ')?.0)).collect();
    let distinct: std::collections::BTreeSet<&str> = series.iter().copied().collect();
    assert_eq!(series.len(), distinct.len(), "{text}");
    let m = samples(&text);
    assert_eq!(m.get(&key(&second_label, "2xx")), Some(&3.0), "{text}");
    assert_eq!(m.get(&key("admin", "4xx")), Some(&1.0), "{text}");
    assert_eq!(m.get(&key(&first_label, "2xx")), before.get(&key(&first_label, "2xx")), "{text}");
    assert!(text.contains(&format!("baton_listen_backlog{{listener=\"{second_label}\"}} ")), "{text}");
    let (code, out) = h.ctl(&["status", "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let by = v["requests"]["by_listener"].as_object().unwrap_or_else(|| panic!("{out}"));
    assert_eq!(by.len(), 3, "one key per listener: {out}");
    assert_eq!(by[&second_label], 3, "{out}");
    assert_eq!(by["admin"], 1, "{out}");
    assert_eq!(by[&first_label].as_f64(), Some(before.get(&key(&first_label, "2xx")).copied().unwrap_or(0.0)), "{out}");
}

#[test]
fn metrics_listen_is_checked_and_only_serves_metrics() {
    let (h, maddr) = start(&[]);
    assert_eq!(get(maddr, "/").unwrap().status, 404);
    assert_eq!(get(h.addr(), "/metrics").unwrap().status, 404, "the app's listener does not serve them");
    let text = scrape(maddr).unwrap();
    assert!(text.contains("baton_build_info{version=\"0.1.0\""), "{text}");
    assert!(text.contains("baton_listen_backlog{listener=\"http\"} "), "{text}");
    assert!(text.contains("baton_resident_memory_bytes{role=\"master\"} "), "{text}");
    // Scrapes are neither counted nor logged as the app's requests.
    let before = samples(&text);
    let after = samples(&scrape(maddr).unwrap());
    assert_eq!(http_requests(&after), http_requests(&before), "{text}");
    assert!(!h.log_text().contains("GET /metrics"), "{}", h.log_tail(10));
    let out =
        std::process::Command::new(hello_bin()).args(["run", "--metrics-listen", "x=127.0.0.1:1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("takes no name"));
    let out =
        std::process::Command::new(hello_bin()).args(["run", "--listen", "baton-x=127.0.0.1:1"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("names starting baton- are baton's"));
}

#[test]
#[ignore = "needs promtool (Debian package prometheus)"]
fn exposition_passes_promtool() {
    let (h, maddr) = start(&[]);
    for _ in 0..3 {
        get(h.addr(), "/").unwrap();
    }
    h.ctl(&["reload"]);
    support::promtool_check(&scrape(maddr).unwrap());
}

/// `--health-log off` leaves the health route's answers out of the access log, and they are
/// still counted; by default they are logged.
#[test]
fn health_answers_left_out_of_the_access_log_are_still_counted() {
    for (extra, logged) in [(&["--health-log", "off"][..], 0), (&[][..], 3)] {
        let args = [&["--health-path", "/healthz"][..], extra].concat();
        let (mut h, metrics) = start(&args);
        let counted = || scrape(metrics).map(|t| http_requests(&samples(&t))).unwrap_or(-1.0);
        // Whatever the start's own readiness checks sent, counted first.
        let mut before = -1.0;
        wait_until(Duration::from_secs(10), "a steady count", || {
            let now = counted();
            std::mem::replace(&mut before, now) == now && now >= 0.0
        });
        for _ in 0..3 {
            assert_eq!(get(h.addr(), "/healthz").unwrap().body, "ok\n");
        }
        assert_eq!(get(h.addr(), "/after-the-probes").unwrap().status, 404);
        wait_until(Duration::from_secs(10), "4 more requests counted", || counted() == before + 4.0);
        signal(h.pid, Signal::SIGTERM);
        assert!(h.wait_exit(Duration::from_secs(30)).success());
        let log = h.log_text();
        assert!(log.contains("\"GET /after-the-probes HTTP/1.1\" 404 "), "{log}");
        assert_eq!(log.matches("\"GET /healthz HTTP/1.1\" 200 ").count(), logged, "{extra:?}: {log}");
    }
}
