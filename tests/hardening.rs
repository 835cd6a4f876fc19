//! Regressions of the hardening pass: a failing log, hostile or broken input from the
//! environment, the file system and local users, answers that must be true when given.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use support::{Daemon, Hello, alive, free_port, get, hello_bin, kill_tree, notify_socket_of, signal, text, wait_until};

#[test]
fn failing_log_writes_do_not_kill_the_master_dev_full() {
    let h = Hello::spawn(&hello_bin(), &["--delay", "0", "--debug-routes", "-l", "/dev/full"]);
    // No log to read the master's "serving" from: the first answer is the signal.
    wait_until(Duration::from_secs(30), "the first answer", || get(h.addr(), "/").is_ok());
    assert!(alive(h.pid));
    assert_eq!(get(h.addr(), "/").unwrap().body, "hello world!");
    assert_eq!(get(h.addr(), "/panic").unwrap().status, 500, "a handler panic still gets its 500");
    let old = h.worker_pid();
    signal(h.pid, Signal::SIGUSR2);
    wait_until(Duration::from_secs(30), "a reload while every log line fails", || {
        get(h.addr(), "/pid").is_ok_and(|r| r.body != old.to_string())
    });
    assert!(alive(h.pid), "the master survives its log");
}

/// Reads what is in the FIFO `f` into `text` until `done(text)`, or (`to_end`) until no
/// writer has it open, within 30 s. Without `to_end`, no writer yet is no data yet.
fn read_fifo_until(f: &mut std::fs::File, text: &mut String, what: &str, to_end: bool, done: impl Fn(&str) -> bool) {
    use std::io::Read;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 65536];
    while !done(text) {
        match f.read(&mut buf) {
            Ok(0) if to_end => break,
            Ok(0) => std::thread::sleep(Duration::from_millis(10)),
            Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("reading the FIFO: {e}"),
        }
        assert!(std::time::Instant::now() < deadline, "{what}; read so far:\n{text}");
    }
}

/// Lines a worker could not write (its log, a FIFO, had lost its reader) are still reported
/// once the worker has exited: it hands their count to the master, whose next line that can
/// be written is preceded by a note that includes them. (A generation replaced by a reload
/// took its count with it: 20 access log lines gone without a word.)
#[test]
fn log_lines_lost_by_a_worker_that_exits_are_reported_by_the_master() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = support::TempDir::new("lost-lines");
    let fifo = dir.join("log.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // A reader first: opening a FIFO to write waits for one.
    let open_reader = || std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
    let mut reader = open_reader();
    let h = Hello::spawn(&hello_bin(), &["--delay", "0", "-l", fifo.to_str().unwrap()]);
    let mut text = String::new();
    read_fifo_until(&mut reader, &mut text, "the master's serving line", false, |t| t.contains(") serving (version"));
    let old = h.worker_pid();
    // No reader: every write fails (EPIPE) and is counted.
    drop(reader);
    for _ in 0..20 {
        assert_eq!(get(h.addr(), "/").unwrap().status, 200);
    }
    signal(h.pid, Signal::SIGUSR2);
    h.wait_replaced(old);
    wait_until(Duration::from_secs(30), "the old worker reaped", || {
        !std::path::Path::new(&format!("/proc/{old}")).exists()
    });
    let mut reader = open_reader();
    signal(h.pid, Signal::SIGTERM);
    let mut text = String::new();
    read_fifo_until(&mut reader, &mut text, "the end of the log", true, |_| false);
    assert!(text.contains(&format!("master[{}] graceful shutdown", h.pid)), "{text}");
    // The note before the first line written once the reader is back (which line that is
    // depends on how soon the reader was back: the master's about the old worker's exit, or
    // its "graceful shutdown"). Summed, should a later line carry a note too.
    let notes: Vec<u64> =
        text.lines().filter_map(|l| l.split("WARN  log: ").nth(1)?.split(' ').next()?.parse().ok()).collect();
    // The old worker's 20 access log lines, at least (and the lines the master lost itself).
    assert!(notes.iter().sum::<u64>() >= 20, "{notes:?} lost lines reported:\n{text}");
}

#[test]
fn listen_fds_naming_fds_that_were_not_passed_is_a_clear_error() {
    let port = free_port();
    let dir = support::TempDir::new("listen-fds");
    // LISTEN_PID must be the process that reads it: set it in a shell that then execs hello.
    let script = format!(
        "export LISTEN_PID=$$ LISTEN_FDS=3; exec {} run --listen 127.0.0.1:{port} -p x.pid",
        hello_bin().display()
    );
    let out = Command::new("sh").arg("-c").arg(&script).current_dir(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("inherited fd 3 (unknown): bad file"), "{}", text(&out));
    assert!(!dir.join("x.pid").exists());
}

#[test]
fn listen_fds_without_listen_pid_is_ignored_as_systemd_does() {
    let port = free_port();
    let mut cmd = Command::new(hello_bin());
    cmd.args(["run", "--delay", "0", "--listen", &format!("127.0.0.1:{port}")]).env("LISTEN_FDS", "2");
    let h = Hello::launch(cmd, port);
    h.wait_ready();
    assert_eq!(get(h.addr(), "/").unwrap().body, "hello world!");
}

#[test]
fn reopen_logs_reports_a_failed_reopen_and_keeps_logging() {
    let d = Daemon::new("reopen-fail");
    let logdir = d.dir.join("logs");
    std::fs::create_dir(&logdir).unwrap();
    let log = logdir.join("x.log");
    let out = d.hello(&[
        "start",
        "-l",
        log.to_str().unwrap(),
        "-p",
        "x.pid",
        "--delay",
        "0",
        "--listen",
        &d.addr().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::rename(&logdir, d.dir.join("logs.old")).unwrap();
    let out = d.hello(&["reopen-logs", "-p", "x.pid"]);
    assert_eq!(out.status.code(), Some(1), "a failed reopen is a failure: {}", text(&out));
    assert!(
        text(&out).contains("cannot open log file") && text(&out).contains("still logging to the old file"),
        "{}",
        text(&out)
    );
    let old = std::fs::read_to_string(d.dir.join("logs.old/x.log")).unwrap();
    assert!(old.contains("still logging to the old file"), "the failure is in the old file");
    let out = d.hello(&["stop", "-p", "x.pid"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn reload_does_not_report_a_dead_generation_as_serving() {
    let h = Hello::start_traced(&hello_bin(), &["--delay", "0", "-p", "x.pid"]);
    let old = h.worker_pid();
    // The old worker cannot confirm it stopped accepting while it is stopped: the reload's
    // answer waits (up to 5 s) for it.
    support::stop_process(old);
    let dir = h.dir.path().to_owned();
    let reload = std::thread::spawn(move || {
        Command::new(hello_bin()).args(["reload", "-p", "x.pid"]).current_dir(dir).output().unwrap()
    });
    let mut new = 0;
    wait_until(Duration::from_secs(10), "generation 2 ready", || {
        let log = h.log_text();
        let line = log.lines().find(|l| l.contains("worker generation 2 (pid") && l.contains(") ready in"));
        new = line.and_then(|l| l.split("(pid ").nth(1)?.split(')').next()?.parse().ok()).unwrap_or(0);
        new != 0
    });
    signal(new, Signal::SIGKILL);
    let out = reload.join().unwrap();
    signal(old, Signal::SIGCONT);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("right after it became ready"), "{}", text(&out));
}

#[test]
fn crash_backoff_resets_once_a_replacement_has_served() {
    let h = Hello::start(&hello_bin(), &["--delay", "0"]);
    for _ in 0..3 {
        let old = h.worker_pid();
        signal(old, Signal::SIGKILL);
        h.wait_replaced(old);
        // Past the 1 s hold-off against flapping; nothing signals that moment.
        std::thread::sleep(Duration::from_millis(1100));
    }
    let log = h.log_text();
    assert_eq!(log.matches("restarting worker in 100ms").count(), 3, "{}", h.log_tail(20));
    assert!(!log.contains("restarting worker in 200ms"), "{}", h.log_tail(20));
}

#[test]
fn control_socket_is_unique_per_pid_file_x_pid_and_x_lock() {
    let a = Daemon::new("ctl-unique");
    let out = a.start(&["--delay", "0"]);
    assert!(out.status.success(), "{}", text(&out));
    let b_port = free_port();
    let out =
        a.hello(&["start", "-l", "y.log", "-p", "x.lock", "--delay", "0", "--listen", &format!("127.0.0.1:{b_port}")]);
    assert!(out.status.success(), "{}", text(&out));
    let b_pid: i32 = std::fs::read_to_string(a.dir.join("x.lock")).unwrap().trim().parse().unwrap();
    let a_pid = a.pid();
    let out = a.hello(&["stop", "-p", "x.pid"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!alive(a_pid), "stop -p x.pid stops its own master");
    assert!(alive(b_pid), "and not the other one");
    let out = a.hello(&["stop", "-p", "x.lock"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!alive(b_pid));
}

#[test]
fn stop_does_not_signal_a_process_that_does_not_hold_the_pid_file() {
    let dir = support::TempDir::new("stop-unrelated");
    let mut sleeper = Command::new("sleep").arg("300").spawn().unwrap();
    let pid_file = dir.join("x.pid");
    std::fs::write(&pid_file, format!("{}\n", sleeper.id())).unwrap();
    // Someone else (this test) holds the lock, as `flock x.pid sleep 30 &` would.
    let f = std::fs::File::open(&pid_file).unwrap();
    let _lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    let out = Command::new(hello_bin()).args(["stop", "-p", "x.pid"]).current_dir(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("does not hold the pid file"), "{}", text(&out));
    assert!(sleeper.try_wait().unwrap().is_none(), "the unrelated process was not signalled");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

#[test]
fn inherited_fds_do_not_leak_into_workers() {
    let port = free_port();
    let dir = support::TempDir::new("fd-leak");
    let secret = dir.join("secret");
    std::fs::write(&secret, "").unwrap();
    let script =
        format!("exec 9>>{}; exec {} run --delay 0 --listen 127.0.0.1:{port}", secret.display(), hello_bin().display());
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(&script);
    let h = Hello::launch(cmd, port);
    h.wait_ready();
    let links = |pid: i32| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .collect()
    };
    assert!(links(h.pid).contains(&secret), "the test itself is sound: the master inherited it");
    let worker = h.worker_pid();
    assert!(!links(worker).contains(&secret), "the worker must not get the launcher's fd: {:?}", links(worker));
}

#[test]
fn symlinks_planted_at_the_log_or_pid_path_are_refused_and_their_targets_untouched() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let d = Daemon::new("symlinks");
    // A directory that others can write (as `/tmp`): where a link can be planted.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let target = d.dir.join("precious");
    std::fs::write(&target, "keep me\n").unwrap();
    let planted = "is a symbolic link in a directory that others can write (refused: owned by uid ";
    for (what, args, refused) in [
        ("log", ["-l", "evil.log", "-p", "x.pid"], planted),
        // A pid file is never a link, wherever it is.
        ("pid", ["-l", "x.log", "-p", "evil.pid"], "is a symbolic link (refused)"),
    ] {
        let link = d.dir.join(&format!("evil.{what}"));
        symlink(&target, &link).unwrap();
        let listen = d.addr().to_string();
        let mut all = vec!["start", "--delay", "0", "--listen", &listen];
        all.extend(args);
        let out = d.hello(&all);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out));
        assert!(text(&out).contains(refused), "{what}: {}", text(&out));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n", "{what}: target untouched");
        std::fs::remove_file(&link).unwrap();
    }
    // A log swapped for a symlink before `reopen-logs` (after logrotate moved it).
    let out = d.start(&["--delay", "0"]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::rename(d.dir.join("x.log"), d.dir.join("x.log.1")).unwrap();
    symlink(&target, d.dir.join("x.log")).unwrap();
    let out = d.hello(&["reopen-logs", "-p", "x.pid"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(planted), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
    // A hard link instead (where the kernel lets others link a file: protected_hardlinks=0;
    // made here by root, the link's owner): root would append to the file and chown it.
    std::fs::remove_file(d.dir.join("x.log")).unwrap();
    std::fs::hard_link(&target, d.dir.join("x.log")).unwrap();
    let out = d.hello(&["reopen-logs", "-p", "x.pid"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let linked = "has 2 names (hard links): refused";
    assert!(text(&out).contains(linked), "{}", text(&out));
    let out = d.hello(&["stop", "-p", "x.pid"]);
    assert!(out.status.success(), "{}", text(&out));
    let listen = d.addr().to_string();
    let out = d.hello(&["start", "--delay", "0", "--listen", &listen, "-l", "x.log", "-p", "x.pid"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(linked), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n", "hard-linked target untouched");
    assert!(!d.dir.join("x.pid").exists(), "pid file left behind");
}

/// A log that is a symbolic link where only root (or the user running it) can have put it is
/// followed: `-l /dev/stdout`, or a log linked to it as nginx's container images do. (Every
/// link was refused: "is a symbolic link (refused)".)
#[test]
fn a_log_linked_by_its_owner_is_followed_even_to_stdout() {
    use std::io::BufRead;
    use std::os::unix::fs::{PermissionsExt, symlink};
    let d = Daemon::new("owned-link");
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // `/dev/stdout` itself, and a log linked to it.
    symlink("/dev/stdout", d.dir.join("access.log")).unwrap();
    for log in ["/dev/stdout".to_owned(), d.dir.join("access.log").to_string_lossy().into_owned()] {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut child = Command::new(hello_bin())
            .args(["run", "--no-master", "--delay", "0", "--listen", &listen, "-l", &log])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut seen = Vec::new();
        let mut wait_line = |what: &str, want: &dyn Fn(&str) -> bool| {
            while !seen.iter().any(|l: &String| want(l)) {
                match rx.recv_timeout(Duration::from_secs(10)) {
                    Ok(l) => seen.push(l),
                    Err(e) => {
                        kill_tree(pid);
                        let err = std::io::read_to_string(child.stderr.take().unwrap()).unwrap_or_default();
                        panic!("{log}: no {what} on stdout ({e}): {seen:?} {err}");
                    }
                }
            }
        };
        wait_line("serving line", &|l| l.contains(&format!("serving on http={listen}")));
        let rid = get(([127, 0, 0, 1], port).into(), "/pid").unwrap().header("x-request-id").unwrap().to_owned();
        wait_line("access log line", &|l| l.contains("\"GET /pid HTTP/1.1\" 200") && l.ends_with(&rid));
        signal(pid, Signal::SIGTERM);
        assert!(child.wait().unwrap().success(), "{log}");
    }
}

#[test]
fn notify_socket_is_private_and_a_flood_from_strangers_cannot_fill_the_log() {
    use std::os::unix::fs::PermissionsExt;
    let h = Hello::start(&hello_bin(), &["--delay", "0"]);
    let path = notify_socket_of(h.worker_pid());
    let dir = path.parent().unwrap();
    assert_eq!(std::fs::metadata(dir).unwrap().permissions().mode() & 0o777, 0o700, "a private directory");
    // This test may be root, who can reach it anyway: the flood is what is checked here.
    let before = h.log_text().len();
    let sock = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let junk = vec![b'x'; 4000];
    for _ in 0..20_000 {
        let _ = sock.send_to(&junk, &path);
    }
    assert_eq!(get(h.addr(), "/").unwrap().status, 200);
    let grown = h.log_text().len() - before;
    assert!(grown < 4096, "20,000 stranger datagrams added {grown} bytes to the log");
    assert!(h.log_text().contains("notify messages from processes that are not workers"), "{}", h.log_tail(5));
}

#[test]
fn a_killed_masters_notify_directory_is_removed_by_the_next_master() {
    let first = Hello::start(&hello_bin(), &["--delay", "0"]);
    let sock = notify_socket_of(first.worker_pid());
    let dir = sock.parent().unwrap().to_owned();
    assert!(dir.starts_with(first.dir.path()), "{} is under the test's TMPDIR", dir.display());
    kill_tree(first.pid);
    wait_until(Duration::from_secs(10), "the killed master and worker to be gone", || {
        !alive(first.pid) && get(first.addr(), "/pid").is_err()
    });
    assert!(sock.exists(), "a SIGKILL leaves the notify socket behind");
    let tmp = first.dir.path().to_str().unwrap();
    let second = Hello::spawn_with_env(&hello_bin(), &["--delay", "0"], &[("TMPDIR", tmp)]);
    second.wait_ready();
    assert!(!dir.exists(), "{} is left; log:\n{}", dir.display(), second.log_tail(10));
    assert!(second.log_text().contains(&format!("killed: {}", dir.display())), "{}", second.log_tail(10));
    let live = notify_socket_of(second.worker_pid());
    assert!(live.starts_with(first.dir.path()) && live.exists());
}

#[test]
fn symlink_switch_deploy_is_followed_when_started_through_path() {
    use std::os::unix::fs::symlink;
    let bin = support::TempDir::new("path-deploy");
    let link = bin.join("app");
    symlink(hello_bin(), &link).unwrap();
    let port = free_port();
    let mut cmd = Command::new("app");
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());
    cmd.env("PATH", path).args(["run", "--delay", "0", "-p", "x.pid", "--listen", &format!("127.0.0.1:{port}")]);
    let h = Hello::launch(cmd, port);
    h.wait_ready();
    assert!(h.log_text().contains(&format!("master started (binary {}, ", link.display())), "{}", h.log_tail(5));
    // Reloading the same binary says so.
    let (code, out) = h.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("the same binary as generation 1"), "{out}");
    // The deploy: switch the symlink, reload.
    let staged = bin.join("staged");
    symlink(support::hello_next_bin(), &staged).unwrap();
    std::fs::rename(&staged, &link).unwrap();
    let (code, out) = h.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("the same binary"), "{out}");
    assert_eq!(get(h.addr(), "/version").unwrap().body, format!("{}+hello_next", env!("CARGO_PKG_VERSION")));
}

/// Reads until the server closes the connection; the time it took.
fn time_to_close(s: &mut std::net::TcpStream, limit: Duration) -> Duration {
    use std::io::Read;
    let t = std::time::Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return t.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return t.elapsed(),
            Err(e) => panic!("not closed within {limit:?}: {e}"),
        }
    }
}

#[test]
fn silent_and_idle_connections_are_closed() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let h = Hello::start(&hello_bin(), &["--delay", "0", "--header-timeout", "1s", "--idle-timeout", "1s"]);
    // Never a byte: cut at the header timeout (the protocol detection used to wait forever).
    let mut silent: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(h.addr()).unwrap()).collect();
    for s in &mut silent {
        assert!(time_to_close(s, Duration::from_secs(5)) < Duration::from_secs(5));
    }
    // HTTP/1.1 keep-alive, idle after one request.
    let mut ka = TcpStream::connect(h.addr()).unwrap();
    ka.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut buf = [0u8; 1024];
    assert!(ka.read(&mut buf).unwrap() > 0);
    time_to_close(&mut ka, Duration::from_secs(5));
    // HTTP/2 with no stream ever, and it never answers the server's frames.
    let mut h2 = TcpStream::connect(h.addr()).unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").unwrap();
    time_to_close(&mut h2, Duration::from_secs(5));
    assert_eq!(get(h.addr(), "/").unwrap().status, 200, "still serving");
}

#[test]
fn the_header_timeout_bounds_request_heads_not_idle_keep_alive() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    // Regression: hyper's header timer also ran between requests, so an idle keep-alive
    // connection was closed at the header timeout (here 1 s) instead of the idle timeout.
    let h = Hello::start(&hello_bin(), &["--delay", "0", "--header-timeout", "1s", "--idle-timeout", "6s"]);
    let mut ka = TcpStream::connect(h.addr()).unwrap();
    ka.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    for round in 0..2 {
        ka.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let n = ka.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "round {round}");
        // Idle for twice the header timeout, well within the idle timeout.
        std::thread::sleep(Duration::from_secs(2));
    }
    // A head begun on that connection and left unfinished is cut at the header timeout, long
    // before the idle timeout.
    ka.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    let took = time_to_close(&mut ka, Duration::from_secs(10));
    assert!(took < Duration::from_secs(4), "a stalled head was cut after {took:?} (header timeout 1 s, idle 6 s)");
    assert_eq!(get(h.addr(), "/").unwrap().status, 200, "still serving");
}

#[test]
fn a_draining_worker_is_not_held_by_an_http2_client_that_ignores_goaway() {
    use std::io::Write;
    let mut h = Hello::start(&hello_bin(), &["--delay", "0", "--drain-timeout", "30s"]);
    let mut h2 = std::net::TcpStream::connect(h.addr()).unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").unwrap();
    let worker = h.worker_pid();
    std::thread::sleep(Duration::from_millis(100)); // let the server take the preface
    let t = std::time::Instant::now();
    signal(h.pid, Signal::SIGTERM);
    assert!(h.wait_exit(Duration::from_secs(20)).success());
    assert!(t.elapsed() < Duration::from_secs(10), "held for {:?} (drain timeout 30 s)", t.elapsed());
    assert!(!alive(worker));
}

#[test]
fn a_request_body_trickling_a_byte_at_a_time_is_cut() {
    use std::io::Write;
    let h = Hello::start(&hello_bin(), &["--delay", "0", "--debug-routes", "--body-timeout", "1s"]);
    let mut s = std::net::TcpStream::connect(h.addr()).unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n").unwrap();
    let mut w = s.try_clone().unwrap();
    // 100 bytes at one per 200 ms would take 20 s.
    let trickle = std::thread::spawn(move || {
        for _ in 0..100 {
            if w.write_all(b"x").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let took = time_to_close(&mut s, Duration::from_secs(10));
    assert!(took < Duration::from_secs(5), "the body was held for {took:?}");
    drop(s);
    let _ = trickle.join();
}

/// The body timeout's grace runs from each request's own start: a body that pauses within
/// it is read whole, also by a worker older than the grace.
#[test]
fn a_request_body_that_pauses_within_the_grace_is_read_whole() {
    use std::io::{Read, Write};
    let args = ["--delay", "1200ms", "--debug-routes", "--body-timeout", "1s"];
    let h = Hello::start(&hello_bin(), &args);
    // Answered after 1.2 s: the worker is older than the grace after it.
    assert_eq!(get(h.addr(), "/").unwrap().status, 200);
    let mut s = std::net::TcpStream::connect(h.addr()).unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 10\r\n\r\n12345").unwrap();
    // The rest after a pause, well within the grace.
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(b"67890").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("\r\n\r\n10"), "{answer}");
}

#[test]
fn host_header_and_header_count_edges() {
    let h = Hello::start(&hello_bin(), &["--delay", "0"]);
    let a = h.addr();
    let req = |raw: &str| support::request(a, raw.as_bytes()).unwrap().status;
    assert_eq!(req("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"), 400, "HTTP/1.1 without Host");
    assert_eq!(req("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"), 400, "two Host headers");
    assert_eq!(req("GET / HTTP/1.0\r\n\r\n"), 200, "HTTP/1.0 may omit Host");
    let many = |n: usize| {
        let mut r = String::from("GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
        for i in 0..n {
            r.push_str(&format!("x-h{i}: v\r\n"));
        }
        r + "\r\n"
    };
    assert_eq!(req(&many(90)), 200);
    assert_eq!(req(&many(120)), 431, "more than the documented --max-headers default of 100");
    drop(h);
    let h = Hello::start(&hello_bin(), &["--delay", "0", "--max-headers", "200"]);
    assert_eq!(support::request(h.addr(), many(120).as_bytes()).unwrap().status, 200, "settable");
}

#[test]
fn control_commands_with_stdout_on_a_full_disk_exit_with_their_real_code() {
    let dir = support::TempDir::new("stdout-full");
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = Command::new(hello_bin())
        .args(["status", "-p", "x.pid"])
        .current_dir(dir.path())
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "not running, not a panic: {}", text(&out));
}

/// Regression: with fd 2 a non-blocking pipe (a parent's: Node.js makes its pipes and terminal
/// so), every log line written while the reader lagged behind was lost and counted ("N log
/// lines lost"), though the reader then read all it was given.
#[test]
fn a_non_blocking_log_pipe_that_fills_loses_no_line() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let (r, w) = nix::unistd::pipe().unwrap();
    let flags = nix::fcntl::fcntl(w.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
    let nonblocking = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(w.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nonblocking)).unwrap();
    let dir = support::TempDir::new("nonblocking");
    let (mut cmd, port) = Hello::command(&hello_bin(), &["--delay", "0"]);
    cmd.current_dir(dir.path()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::from(w));
    support::private_tmp(&mut cmd, dir.path());
    let mut child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    drop(cmd);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(Duration::from_secs(30), "hello to serve", || get(addr, "/pid").is_ok());
    // Nothing reads the pipe yet: its 64 KiB hold about 600 access log lines.
    const N: usize = 3000;
    for i in 0..N {
        let r = get(addr, "/version").unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status, 200, "request {i}");
    }
    signal(pid, Signal::SIGTERM);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = tx.send(std::fs::File::from(r).read_to_end(&mut text).map(|_| text));
    });
    let text = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(read) => String::from_utf8_lossy(&read.unwrap()).into_owned(),
        Err(_) => {
            kill_tree(pid);
            panic!("the log pipe was still open 60 s after TERM");
        }
    };
    assert!(child.wait().unwrap().success(), "{text}");
    assert!(
        !text.contains("lines lost"),
        "{}",
        text.lines().filter(|l| !l.contains(" 200 ")).collect::<Vec<_>>().join("\n")
    );
    assert_eq!(text.lines().filter(|l| l.contains("\"GET /version HTTP/1.1\" 200 ")).count(), N);
}
