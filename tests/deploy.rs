//! Deploys that cannot take the service down: every generation runs a pinned binary, crash
//! restarts run the last good one, a new binary that crashes during its probation is rolled
//! back, the ready probe gates the switch, the watchdog replaces a wedged worker.

mod support;

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::{
    Hello, TempDir, alive, children, fd_count, get, hello_bin, hello_next_bin, install, install_script, load, load_cfg,
    rt, signal, wait_until,
};

const OLD: &str = env!("CARGO_PKG_VERSION");

fn next_version() -> String {
    format!("{OLD}+hello_next")
}

fn version(h: &Hello) -> String {
    get(h.addr(), "/version").expect("GET /version").body
}

/// A binary that serves as `hello_next` with `extra` flags when it serves (`run`, `start`),
/// and is `hello_next` for every other command.
fn install_next_with(app: &std::path::Path, extra: &str) {
    let next = hello_next_bin();
    let next = next.display();
    install_script(
        app,
        &format!("case \"$1\" in run|start) exec {next} \"$@\" {extra};; *) exec {next} \"$@\";; esac"),
    );
}

#[test]
fn crash_after_a_rolled_back_deploy_restarts_the_last_good_binary_not_the_broken_file() {
    let bin = TempDir::new("pinned");
    let app = bin.join("app");
    install(&hello_bin(), &app);
    let h = Hello::start(&app, &["--delay", "0", "-p", "x.pid"]);
    install_script(&app, "exit 1");
    let (code, out) = h.ctl(&["reload"]);
    assert_eq!(code, 1, "{out}");
    let old = h.worker_pid();
    signal(old, Signal::SIGKILL);
    h.wait_replaced(old);
    assert_eq!(version(&h), OLD, "the crash restart runs the last good binary");
    assert!(std::fs::read_to_string(&app).unwrap().contains("exit 1"), "the broken file is still on disk");
    assert!(h.log_text().contains("a crash restart from the last good binary"), "{}", h.log_tail(20));
    let (code, out) = h.ctl(&["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(crash restart; binary ") && out.contains(", last good"), "{out}");
}

#[test]
fn deleted_binary_a_crash_restart_runs_the_pinned_file() {
    let bin = TempDir::new("deleted");
    let app = bin.join("app");
    install(&hello_bin(), &app);
    let h = Hello::start(&app, &["--delay", "0"]);
    std::fs::remove_file(&app).unwrap();
    let old = h.worker_pid();
    signal(old, Signal::SIGKILL);
    h.wait_replaced(old);
    assert_eq!(version(&h), OLD);
    assert!(h.log_text().contains("a crash restart from the last good binary"), "{}", h.log_tail(20));
}

#[test]
fn new_binary_crashing_during_probation_is_rolled_back() {
    let bin = TempDir::new("probation");
    let app = bin.join("app");
    install(&hello_bin(), &app);
    let h = Hello::start(&app, &["--delay", "0", "-p", "x.pid", "--probation", "3s"]);
    install_next_with(&app, "--crash-after 1s");
    let (code, out) = h.ctl(&["reload", "--wait-probation"]);
    assert_eq!(code, 1, "reload --wait-probation must fail: {out}");
    assert!(out.contains("rolled back after 1.") && out.contains("exited with status 3"), "{out}");
    let back = h.worker_pid();
    assert_eq!(version(&h), OLD, "the last good binary serves again");
    let (code, out) = h.ctl(&["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("last reload:") && out.contains("failed: rolled back after"), "{out}");
    assert!(out.contains(&format!("worker: pid {back} generation 3 serving (rollback;")), "{out}");
    // The master runs only binaries that served: not one rolled back.
    assert!(!h.log_text().contains("master upgrad"), "{}", h.log_tail(20));
    // A binary that survives its probation stays, and `--wait-probation` says so.
    install(&hello_next_bin(), &app);
    let (code, out) = h.ctl(&["reload", "--wait-probation"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("probation passed"), "{out}");
    assert_eq!(version(&h), next_version());
}

#[test]
fn without_probation_a_crashing_binary_is_reported_as_a_crash_loop() {
    let bin = TempDir::new("crashloop");
    let app = bin.join("app");
    install(&hello_bin(), &app);
    let h = Hello::start(&app, &["--delay", "0", "-p", "x.pid", "--probation", "0"]);
    install_next_with(&app, "--crash-after 300ms");
    let (code, out) = h.ctl(&["reload"]);
    assert_eq!(code, 0, "without probation the reload succeeds: {out}");
    // The new binary is the last good one now: its crash restarts run it, and crash again.
    wait_until(Duration::from_secs(30), "five failures in a row", || h.log_text().contains("crash loop: 5 failures"));
    assert!(h.log_text().contains("a crash restart from the last good binary"), "{}", h.log_tail(20));
    let mut last = (0, String::new());
    wait_until(Duration::from_secs(30), "status to report the crash loop", || {
        last = h.ctl(&["status"]);
        last.1.contains("state: crash-looping")
    });
    assert_eq!(last.0, 4, "status exits 4 while no worker serves: {}", last.1);
    assert!(last.1.contains("failures in a row; next start in"), "{}", last.1);
}

#[test]
fn failing_ready_probe_rolls_back_and_the_old_worker_never_stops_serving() {
    let bin = TempDir::new("probe");
    let app = bin.join("app");
    install(&hello_bin(), &app);
    let h = Hello::start(&app, &["--delay", "0", "-p", "x.pid", "--ready-probe", "/probe"]);
    let good = h.worker_pid();
    let ctl = Arc::new(load::Control::default());
    let rt = rt();
    let run = rt.spawn(load::run(load_cfg(&h, load::Mode::KeepAlive, 8), ctl.clone()));
    install_next_with(&app, "--probe-status 500");
    let (code, out) = h.ctl(&["reload"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ready probe GET /probe answered 500 Internal Server Error: probe says 500"), "{out}");
    assert_eq!(h.worker_pid(), good);
    assert_eq!(children(h.pid), vec![good], "the failed worker is gone");
    // The same probe passing lets the reload through.
    install(&hello_next_bin(), &app);
    let (code, out) = h.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}");
    ctl.stop.store(true, Ordering::SeqCst);
    let s = rt.block_on(run).unwrap();
    assert_eq!(s.failed, 0, "{:?}", s.failures);
    assert!(s.ok > 0);
    assert_eq!(version(&h), next_version());
}

/// Regression: `reload` without `--timeout` gave up after 90 s (exit 1, "no outcome within
/// 90s") while a new binary took longer to start than that, within its `--ready-timeout`. It
/// now waits for as long as the master answers `status`, and exits 0 once the new worker
/// serves: here after its 93 s start-up.
#[test]
fn a_reload_without_a_timeout_waits_for_a_start_its_ready_timeout_allows() {
    let bin = TempDir::new("slow-reload");
    let app = bin.join("app");
    install(&hello_bin(), &app);
    let h = Hello::start(&app, &["--delay", "0", "-p", "x.pid", "--ready-timeout", "150s"]);
    let old = h.worker_pid();
    install_script(&app, &format!("HELLO_SLOW_START=93s exec {} \"$@\"", hello_bin().display()));
    let (code, out) = h.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("generation 2") && out.contains(" serving"), "{out}");
    assert_ne!(h.worker_pid(), old);
    assert!(h.log_text().contains("starting slowly: 93s"), "{}", h.log_tail(20));
}

#[test]
fn failing_ready_check_in_code_fails_the_start_with_its_reason() {
    let d = support::Daemon::new("ready-check");
    let out = d.start_with(&["--delay", "0"], &[("HELLO_NOT_READY", "cache cold")]);
    assert_eq!(out.status.code(), Some(1), "{}", support::text(&out));
    assert!(support::text(&out).contains("ready check failed: not ready: cache cold"), "{}", support::text(&out));
    assert!(!d.dir.join("x.pid").exists(), "nothing is left running");
}

#[test]
fn stopped_worker_is_replaced_by_the_watchdog_and_queued_requests_are_served() {
    let h = Hello::start(&hello_bin(), &["--delay", "0", "--watchdog", "1s"]);
    let stopped = h.worker_pid();
    support::stop_process(stopped);
    // Sent while the only worker is stopped: they wait in the kernel's accept queue.
    let addr = h.addr();
    let reqs: Vec<_> = (0..8).map(|_| std::thread::spawn(move || get(addr, "/pid"))).collect();
    for r in reqs {
        let r = r.join().unwrap().expect("request served, not refused");
        assert_eq!(r.status, 200);
        assert_ne!(r.body, stopped.to_string());
    }
    wait_until(Duration::from_secs(10), "the stopped worker to be gone", || !alive(stopped));
    assert!(h.log_text().contains("sent no heartbeat for"), "{}", h.log_tail(20));
    // Its end, said once: why it was killed, then how.
    wait_until(Duration::from_secs(10), "the kill to be logged", || {
        h.log_text().contains("died unexpectedly: no heartbeat")
    });
    assert!(h.log_text().contains(" (watchdog), killed by SIGKILL"), "{}", h.log_tail(20));
}

/// Regression: after the master and its worker were stopped together (Ctrl-Z or SIGSTOP to
/// their process group, `docker pause`) for longer than `--watchdog`, the master, resuming
/// before its worker, killed it at once for sending no heartbeat, and cut its requests.
#[test]
fn a_worker_paused_with_its_master_is_not_killed_by_the_watchdog() {
    // A watchdog of 2 s: the worker, resumed once the master logged its pause, has that long
    // to send a heartbeat (with 1 s, a loaded CI machine once took longer, and the worker was
    // killed as the test's own fault).
    let h = Hello::start_traced(&hello_bin(), &["--delay", "3s", "--watchdog", "2s"]);
    let worker = h.worker_pid();
    let addr = h.addr();
    let slow = std::thread::spawn(move || get(addr, "/"));
    support::wait_request_started(&h.log, "/");
    support::stop_process(worker);
    support::stop_process(h.pid);
    // The pause itself, two and a half watchdog periods long (what is tested, not a wait for
    // an event): the master's clock then reads at least 3 s past its next deadline, well past
    // the 1 s by which it tells a pause.
    std::thread::sleep(Duration::from_secs(5));
    // The master resumes first and runs before its worker does: the worst order.
    signal(h.pid, Signal::SIGCONT);
    wait_until(Duration::from_secs(10), "the master to act on its pause", || {
        let log = h.log_text();
        log.contains("the master did not run for up to") || log.contains("sent no heartbeat")
    });
    // (Gone, if it was killed: the request below says so.)
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker), Signal::SIGCONT);
    let r = slow.join().unwrap().expect("the request in flight across the pause is answered");
    assert_eq!((r.status, r.body.as_str()), (200, "hello world!"));
    assert_eq!(h.worker_pid(), worker, "the same worker serves");
    let log = h.log_text();
    assert!(!log.contains("sent no heartbeat"), "{log}");
}

#[test]
fn master_fd_count_is_flat_across_deploys_and_crash_restarts() {
    let bin = TempDir::new("fds");
    let app = bin.join("app");
    install(&hello_bin(), &app);
    let h = Hello::start(&app, &["--delay", "0", "--probation", "0"]);
    // A first deploy, which the master upgrades itself to: an upgrade closes what the master
    // inherited from its launcher (the test process) and did not hand over.
    install(&hello_next_bin(), &app);
    h.reload_and_wait();
    h.wait_one_worker();
    wait_until(Duration::from_secs(20), "the master to upgrade itself", || running_file(h.pid) == file_id(&app));
    let after_one = fd_count(h.pid);
    // Two files deployed in turn (renamed into place as a deploy does): each is pinned while a
    // generation runs it, then closed.
    let (a, b) = (bin.join("a"), bin.join("b"));
    install(&hello_bin(), &a);
    install(&hello_next_bin(), &b);
    for i in 0..50 {
        let staged = bin.join("staged");
        std::fs::hard_link(if i % 2 == 0 { &b } else { &a }, &staged).unwrap();
        std::fs::rename(&staged, &app).unwrap();
        h.reload_and_wait();
    }
    h.wait_one_worker();
    // Each deploy the master was at rest for (not all: a reload may come while it checks the
    // last one) it upgraded itself to; the last one in any case.
    wait_until(Duration::from_secs(20), "the master to upgrade itself", || running_file(h.pid) == file_id(&app));
    assert!(h.log_text().matches("master upgraded in place").count() >= 2, "{}", h.log_tail(20));
    assert_eq!(fd_count(h.pid), after_one, "after 50 deploys");
    for _ in 0..20 {
        let old = h.worker_pid();
        signal(old, Signal::SIGKILL);
        h.wait_replaced(old);
        // A worker that served 1 s resets the crash backoff (the hold-off against flapping),
        // so each restart is quick; nothing signals that moment.
        std::thread::sleep(Duration::from_millis(1100));
    }
    h.wait_one_worker();
    assert_eq!(fd_count(h.pid), after_one, "after 20 crash restarts");
}

/// logrotate during a deploy: the new worker, still in a wrapper script that has no USR1
/// handler (USR1 kills it), is told to reopen only once it is ready; the draining worker
/// reopens too, and logs its last request to the newest file.
#[test]
fn log_reopen_during_a_deploy_reaches_every_generation_and_kills_none() {
    let bin = TempDir::new("reopen-deploy");
    let app = bin.join("app");
    install(&hello_bin(), &app);
    let args = ["-p", "x.pid", "-l", "x.log", "--debug-routes", "--body-timeout", "0"];
    let mut h = Hello::spawn_with_env(&app, &args, &[("RUST_LOG", support::TRACE_REQUESTS)]);
    h.log = h.dir.join("x.log");
    h.wait_ready();
    let old = h.worker_pid();
    // A request whose body never ends until the test sends the rest: the old generation keeps
    // it in flight, and drains, until then.
    let mut upload = start_upload(&h, old);

    // The new binary sleeps in a shell before it execs: a USR1 then would kill it.
    let started = bin.join("started");
    let next = hello_next_bin();
    install_script(
        &app,
        &format!(
            "case \"$1\" in run|start) touch {}; sleep 2; exec {} \"$@\";; *) exec {} \"$@\";; esac",
            started.display(),
            next.display(),
            next.display()
        ),
    );
    signal(h.pid, Signal::SIGUSR2);
    wait_until(Duration::from_secs(20), "the new worker to start", || started.exists());
    std::fs::rename(h.dir.join("x.log"), h.dir.join("x.log.1")).unwrap();
    let (code, out) = h.ctl(&["reopen-logs"]);
    assert_eq!(code, 0, "{out}");
    let new = h.wait_replaced(old);
    // The master says "serving" once the old generation stopped accepting: before it, the old
    // one may still take a connection (it did once, in CI: /version answered the old version).
    wait_until(Duration::from_secs(20), "the new worker to reopen and serve alone", || {
        let log = h.log_text();
        log.contains(&format!("worker[{new}] reopened log file")) && log.contains(&format!("(pid {new}) serving"))
    });
    assert_eq!(version(&h), next_version(), "the deploy went through");

    // Rotated again while the old generation drains: it reopens as well.
    assert!(alive(old));
    std::fs::rename(h.dir.join("x.log"), h.dir.join("x.log.2")).unwrap();
    let (code, out) = h.ctl(&["reopen-logs"]);
    assert_eq!(code, 0, "{out}");
    wait_until(Duration::from_secs(20), "both workers to reopen", || {
        let log = h.log_text();
        log.contains(&format!("worker[{old}] reopened log file"))
            && log.contains(&format!("worker[{new}] reopened log file"))
    });
    let r = finish_upload(&mut upload);
    assert_eq!((r.status, r.body.as_str()), (200, "4"));
    wait_until(Duration::from_secs(20), "the old worker to exit", || !alive(old));
    let rotated = std::fs::read_to_string(h.dir.join("x.log.1")).unwrap()
        + &std::fs::read_to_string(h.dir.join("x.log.2")).unwrap();
    assert!(h.log_text().contains("\"POST /echo HTTP/1.1\" 200"), "{}", h.log_text());
    assert!(!rotated.contains("\"POST /echo HTTP/1.1\""), "the upload logged to a rotated file:\n{rotated}");
    let all = rotated + &h.log_text();
    assert!(!all.contains("killed by SIGUSR1"), "a worker died of USR1:\n{all}");
}

/// Starts `POST /echo` of 4 bytes on `h` (with `--debug-routes`, `--body-timeout 0` and
/// request tracing), sends 2, and waits until worker `worker` has begun it: it stays in flight
/// until [`finish_upload`].
fn start_upload(h: &Hello, worker: i32) -> std::net::TcpStream {
    let mut upload = std::net::TcpStream::connect(h.addr()).unwrap();
    upload.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 4\r\n\r\nab").unwrap();
    wait_until(Duration::from_secs(20), "the upload's request to start", || {
        h.log_text()
            .lines()
            .any(|l| l.contains(&format!("worker[{worker}]")) && l.ends_with("request started: POST /echo"))
    });
    upload
}

/// Sends the rest of [`start_upload`]'s body; its response.
fn finish_upload(upload: &mut std::net::TcpStream) -> support::Resp {
    upload.write_all(b"cd").unwrap();
    let mut answer = Vec::new();
    upload.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    std::io::Read::read_to_end(upload, &mut answer).unwrap();
    support::parse(&answer).unwrap()
}

/// The device and inode of the file process `pid` runs (`/proc/PID/exe`).
fn running_file(pid: i32) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(format!("/proc/{pid}/exe")).unwrap();
    (m.dev(), m.ino())
}

fn file_id(path: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.dev(), m.ino())
}

/// Once a new binary has served through its probation, the master executes it in its own
/// place: the same pid and children, the new file running it, the old generation's request in
/// flight and the load (HTTP/1.1 keep-alive, fresh connections, HTTP/2) served throughout;
/// twice in a row, then it stops as any master does.
#[test]
fn the_master_upgrades_itself_in_place_once_a_new_binary_served() {
    let bin = TempDir::new("upgrade");
    let app = bin.join("app");
    install(&hello_bin(), &app);
    let args = ["-p", "x.pid", "--delay", "0", "--probation", "1s", "--debug-routes", "--body-timeout", "0"];
    let mut h = Hello::start_traced(&app, &args);
    let master = h.pid;
    assert_eq!(running_file(master), file_id(&app));
    let old = h.worker_pid();
    // A request whose body ends only when the test sends the rest: the first generation
    // drains it across both upgrades of the master.
    let mut upload = start_upload(&h, old);
    let ctl = Arc::new(load::Control::default());
    let rt = rt();
    let runs: Vec<_> = [(load::Mode::KeepAlive, 8), (load::Mode::Fresh, 2), (load::Mode::H2, 2)]
        .into_iter()
        .map(|(mode, n)| rt.spawn(load::run(load_cfg(&h, mode, n), ctl.clone())))
        .collect();

    install(&hello_next_bin(), &app);
    let (code, out) = h.ctl(&["reload", "--wait-probation"]);
    assert_eq!(code, 0, "{out}");
    wait_until(Duration::from_secs(20), "the master to upgrade itself", || {
        h.log_text().contains("master upgraded in place")
    });
    assert_eq!(running_file(master), file_id(&app), "the master runs the new file");
    assert_eq!(std::fs::read_to_string(h.dir.join("x.pid")).unwrap().trim(), master.to_string());
    assert_eq!(version(&h), next_version());
    let (code, out) = h.ctl(&["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("master: upgraded itself in place once, runs the binary of "), "{out}");
    assert!(out.contains(&format!("worker: pid {old} generation 1 draining")), "it still knows the old one: {out}");
    // It still holds the pid file's lock: a second instance is refused.
    let mut second = std::process::Command::new(hello_bin())
        .args(["run", "--listen", "127.0.0.1:0", "-p", "x.pid"])
        .current_dir(h.dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while second.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            second.kill().unwrap();
            panic!("a second instance started beside the upgraded master");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains(&format!("is held by running pid {master}")), "{err}");

    // Back to the first build: the master follows again.
    install(&hello_bin(), &app);
    let (code, out) = h.ctl(&["reload", "--wait-probation"]);
    assert_eq!(code, 0, "{out}");
    wait_until(Duration::from_secs(20), "the master to upgrade itself again", || {
        h.log_text().matches("master upgraded in place").count() == 2
    });
    assert_eq!(running_file(master), file_id(&app));
    let (_, json) = h.ctl(&["status", "--json"]);
    assert!(json.contains("\"master_upgrades\":2"), "{json}");

    let r = finish_upload(&mut upload);
    assert_eq!((r.status, r.body.as_str()), (200, "4"), "the request in flight across both upgrades");
    ctl.stop.store(true, Ordering::SeqCst);
    for (run, name) in runs.into_iter().zip(["keep-alive", "fresh", "h2"]) {
        let s = rt.block_on(run).unwrap();
        assert_eq!(s.failed, 0, "{name}: failed requests: {:?}", s.failures);
        assert!(s.ok > 0, "{name}: no requests served");
    }
    h.wait_one_worker();
    assert_eq!(children(master), vec![h.worker_pid()]);
    assert!(!h.log_text().contains("ERROR"), "{}", h.log_tail(30));
    let (code, out) = h.ctl(&["stop"]);
    assert_eq!(code, 0, "{out}");
    assert!(h.wait_exit(Duration::from_secs(20)).success());
    assert!(!h.dir.join("x.pid").exists() && !h.dir.join("x.pid.ctl").exists());
}

/// A new binary whose check says it cannot take over the master's state serves as a worker;
/// the master stays as it is, says why once, and does not try that binary again.
#[test]
fn a_binary_that_cannot_take_over_leaves_the_master_as_it_is() {
    let bin = TempDir::new("no-upgrade");
    let app = bin.join("app");
    install(&hello_bin(), &app);
    let h = Hello::start(&app, &["-p", "x.pid", "--delay", "0", "--probation", "0"]);
    let before = running_file(h.pid);
    let next = hello_next_bin();
    install_script(
        &app,
        &format!(
            "if [ -n \"$BATON_MASTER_CHECK\" ]; then echo 'check: not this one' >&2; exit 3; fi; exec {} \"$@\"",
            next.display()
        ),
    );
    let (code, out) = h.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}");
    wait_until(Duration::from_secs(20), "the master to give up its upgrade", || {
        h.log_text().contains("master not upgraded: it cannot take over this master's state")
    });
    assert!(h.log_text().contains("check: not this one"), "the check's reason is in the log");
    assert_eq!(running_file(h.pid), before);
    assert_eq!(version(&h), next_version(), "the worker serves the new binary");
    // The same binary again: not checked again (a status round-trip lets the master finish
    // the round of the reload's answer).
    h.reload_and_wait();
    let (_, status) = h.ctl(&["status"]);
    assert!(!status.contains("master: upgraded"), "{status}");
    assert_eq!(h.log_text().matches("check: not this one").count(), 1, "{}", h.log_tail(20));
}
