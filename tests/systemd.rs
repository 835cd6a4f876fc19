//! systemd and containers: the sd_notify sequence as systemd sees it, socket activation with
//! the real `systemd-socket-activate`, `--shutdown-delay` with the health route and the
//! master's kill deadline, PID 1 in a pid namespace, and the shipped unit and logrotate files.
//! Linux only.
#![cfg(target_os = "linux")]

mod support;

use std::io::IoSliceMut;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg, setsockopt, sockopt};
use support::{Hello, TempDir, alive, children, free_port, get, hello_bin, load, signal, wait_until};

/// systemd's end of NOTIFY_SOCKET: a datagram socket that learns each sender's pid.
struct FakeSystemd {
    sock: UnixDatagram,
    path: PathBuf,
    _dir: TempDir,
}

impl FakeSystemd {
    fn new() -> FakeSystemd {
        let dir = TempDir::new("notify");
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        setsockopt(&sock, sockopt::PassCred, &true).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        FakeSystemd { sock, path, _dir: dir }
    }

    /// The next message and its sender's pid.
    fn recv(&self) -> (i32, String) {
        let mut buf = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!(UnixCredentials);
        let msg = recvmsg::<()>(self.sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())
            .expect("a notify message in time");
        let pid = msg
            .cmsgs()
            .unwrap()
            .find_map(|c| match c {
                ControlMessageOwned::ScmCredentials(c) => Some(c.pid()),
                _ => None,
            })
            .expect("credentials");
        let n = msg.bytes;
        (pid, String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

fn monotonic_usec() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000
}

#[test]
fn notify_sequence_as_systemd_sees_it() {
    let systemd = FakeSystemd::new();
    let bindir = TempDir::new("notify-bin");
    let app = bindir.join("app");
    support::install(&hello_bin(), &app);
    let port = free_port();
    let mut cmd = Command::new(&app);
    cmd.args(["run", "--delay", "0", "-p", "x.pid", "--listen", &format!("127.0.0.1:{port}")]);
    cmd.env("NOTIFY_SOCKET", &systemd.path);
    let mut h = Hello::launch(cmd, port);
    let master = h.pid;

    let (pid, msg) = systemd.recv();
    assert_eq!(pid, master, "only the master speaks to systemd");
    let w1 = h.worker_pid();
    assert_eq!(msg, format!("READY=1\nSTATUS=generation 1 serving (worker pid {w1})"));

    // A good reload.
    let t0 = monotonic_usec();
    signal(master, Signal::SIGUSR2);
    let (pid, msg) = systemd.recv();
    let t1 = monotonic_usec();
    assert_eq!(pid, master);
    let usec: u64 = msg.strip_prefix("RELOADING=1\nMONOTONIC_USEC=").expect(&msg).parse().unwrap();
    assert!((t0..=t1).contains(&usec), "MONOTONIC_USEC {usec} not within [{t0}, {t1}]");
    let (pid, msg) = systemd.recv();
    assert_eq!(pid, master);
    let w2 = h.worker_pid();
    assert_eq!(msg, format!("READY=1\nSTATUS=generation 2 serving (worker pid {w2})"));

    // A failed reload: systemd hears RELOADING, then READY again with why it failed.
    support::install_script(&app, "exit 1");
    signal(master, Signal::SIGHUP);
    let (pid, msg) = systemd.recv();
    assert_eq!(pid, master);
    assert!(msg.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{msg}");
    let (pid, msg) = systemd.recv();
    assert_eq!(pid, master);
    assert!(
        msg.starts_with("READY=1\nSTATUS=reload failed, generation 2 keeps serving: ")
            && msg.contains("exited with status 1"),
        "{msg}"
    );
    assert_eq!(h.worker_pid(), w2);

    signal(master, Signal::SIGTERM);
    let (pid, msg) = systemd.recv();
    assert_eq!((pid, msg.as_str()), (master, "STOPPING=1"));
    assert!(h.wait_exit(Duration::from_secs(30)).success());
    systemd.sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    assert!(systemd.sock.recv(&mut buf).is_err(), "nothing after STOPPING=1");
}

#[test]
fn systemd_watchdog_is_fed_by_the_master_while_a_worker_serves() {
    let systemd = FakeSystemd::new();
    let port = free_port();
    let mut cmd = Command::new(hello_bin());
    cmd.args(["run", "--delay", "0", "--watchdog", "1s", "--listen", &format!("127.0.0.1:{port}")]);
    cmd.env("NOTIFY_SOCKET", &systemd.path).env("WATCHDOG_USEC", "400000");
    let h = Hello::launch(cmd, port);
    let (_, msg) = systemd.recv();
    assert!(msg.starts_with("READY=1"), "{msg}");
    let worker = h.worker_pid();
    assert_eq!(support::env_of(worker, "WATCHDOG_USEC"), None, "systemd's watchdog is the master's alone");
    let start = std::time::Instant::now();
    for _ in 0..3 {
        let (pid, msg) = systemd.recv();
        assert_eq!((pid, msg.as_str()), (h.pid, "WATCHDOG=1"));
    }
    // Every half of WATCHDOG_USEC: three take about 0.6 s (bounds loose for a loaded machine).
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "{took:?}");
    // A wedged worker is replaced; the pings go on for the replacement.
    signal(worker, Signal::SIGSTOP);
    let mut seen_ready = false;
    while !seen_ready {
        let (_, msg) = systemd.recv();
        seen_ready = msg.starts_with("READY=1\nSTATUS=generation 2 serving");
    }
    let (pid, msg) = systemd.recv();
    assert_eq!((pid, msg.as_str()), (h.pid, "WATCHDOG=1"));
    wait_until(Duration::from_secs(5), "the stopped worker to be gone", || !alive(worker));
}

/// After the master upgraded itself to a deployed binary, it is still systemd's main process:
/// it feeds the watchdog, reports reloads and the stop; its workers see none of systemd's
/// variables, nor the state it took over.
#[test]
fn a_master_upgraded_in_place_keeps_talking_to_systemd() {
    use std::os::unix::fs::MetadataExt;
    let systemd = FakeSystemd::new();
    let bindir = TempDir::new("upgrade-bin");
    let app = bindir.join("app");
    support::install(&hello_bin(), &app);
    let port = free_port();
    let mut cmd = Command::new(&app);
    cmd.args(["run", "--delay", "0", "--probation", "0", "-p", "x.pid", "--listen", &format!("127.0.0.1:{port}")]);
    cmd.env("NOTIFY_SOCKET", &systemd.path).env("WATCHDOG_USEC", "400000");
    let mut h = Hello::launch(cmd, port);
    let master = h.pid;
    // The next message other than a watchdog ping, all from the master.
    let next = || loop {
        let (pid, msg) = systemd.recv();
        assert_eq!(pid, master, "{msg}");
        if msg != "WATCHDOG=1" {
            return msg;
        }
    };
    assert!(next().starts_with("READY=1\nSTATUS=generation 1 serving"));
    support::install(&support::hello_next_bin(), &app);
    signal(master, Signal::SIGUSR2);
    assert!(next().starts_with("RELOADING=1\nMONOTONIC_USEC="));
    assert!(next().starts_with("READY=1\nSTATUS=generation 2 serving"));
    let running = || std::fs::metadata(format!("/proc/{master}/exe")).unwrap().ino();
    let deployed = std::fs::metadata(&app).unwrap().ino();
    wait_until(Duration::from_secs(20), "the master to upgrade itself", || running() == deployed);
    for _ in 0..3 {
        let (pid, msg) = systemd.recv();
        assert_eq!((pid, msg.as_str()), (master, "WATCHDOG=1"), "the watchdog is still fed");
    }
    signal(master, Signal::SIGUSR2);
    assert!(next().starts_with("RELOADING=1\nMONOTONIC_USEC="));
    let ready = next();
    assert!(ready.starts_with("READY=1\nSTATUS=generation 3 serving"), "{ready}");
    let worker = h.worker_pid();
    assert!(ready.contains(&format!("(worker pid {worker})")), "{ready}");
    for var in ["WATCHDOG_USEC", "WATCHDOG_PID", "BATON_MASTER_STATE"] {
        assert_eq!(support::env_of(worker, var), None, "{var} reached the worker");
    }
    let notify = support::env_of(worker, "NOTIFY_SOCKET").unwrap();
    assert_ne!(notify, systemd.path.as_os_str().as_encoded_bytes(), "the worker talks to the master, not systemd");
    signal(master, Signal::SIGTERM);
    assert_eq!(next(), "STOPPING=1");
    assert!(h.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn shutdown_delay_reports_unhealthy_then_drains() {
    let args = ["--delay", "0", "--health-path", "/healthz", "--shutdown-delay", "3s", "-p", "x.pid"];
    let mut h = Hello::start(&hello_bin(), &args);
    let r = get(h.addr(), "/healthz").unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    signal(h.pid, Signal::SIGTERM);
    wait_until(Duration::from_secs(5), "the health route to report 503", || {
        get(h.addr(), "/healthz").is_ok_and(|r| r.status == 503)
    });
    // `status` tells the delay from the drain (it said "draining").
    let (code, status) = h.ctl(&["status"]);
    assert_eq!(code, 4, "{status}");
    assert!(status.contains("state: stopping"), "{status}");
    assert!(status.contains(" generation 1 stopping, serving "), "{status}");
    assert!(status.contains("s more (--shutdown-delay), then draining ("), "{status}");
    let (_, json) = h.ctl(&["status", "--json"]);
    assert!(json.contains("\"state\":\"stopping\",\"cause\":\"first start\",\"accepting\":true"), "{json}");
    // Still serving during the delay.
    let r = get(h.addr(), "/").unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "hello world!"));
    assert!(h.wait_exit(Duration::from_secs(30)).success());
    let log = h.log_text();
    let delay_at = log.find("health route reports 503").expect("delay logged");
    let drain_at = log.find("draining (at most").expect("drain logged");
    assert!(delay_at < drain_at, "the drain comes after the delay:\n{log}");
}

/// The master waits for a stopping worker's shutdown delay, drain and shutdown hook before
/// SIGKILL. Was a bug: it killed at `--drain-timeout` + 5 s from the stop, cutting a request
/// that the worker, its drain moved later by a longer `--shutdown-delay`, was still allowed to
/// finish.
#[test]
fn a_stop_waits_for_the_shutdown_delay_then_the_whole_drain_and_hook() {
    // TERM at 0: the worker serves until 8 s, then drains until 12 s at most; the request in
    // flight ends at about 10 s. The old deadline was 4 + 5 = 9 s.
    let args = ["--delay", "10s", "--shutdown-delay", "8s", "--drain-timeout", "4s"];
    let env = [("RUST_LOG", support::TRACE_REQUESTS), ("HELLO_SHUTDOWN_HOOK", "1s")];
    let mut h = Hello::spawn_with_env(&hello_bin(), &args, &env);
    h.wait_ready();
    let addr = h.addr();
    let slow = std::thread::spawn(move || get(addr, "/"));
    support::wait_request_started(&h.log, "/");
    signal(h.pid, Signal::SIGTERM);
    let r = slow.join().unwrap().unwrap_or_else(|e| panic!("the request in flight was cut: {e}\n{}", h.log_text()));
    assert_eq!((r.status, r.body.as_str()), (200, "hello world!"));
    assert!(h.wait_exit(Duration::from_secs(30)).success(), "{}", h.log_text());
    let log = h.log_text();
    assert!(log.contains("shutdown hook done"), "{log}");
    assert!(!log.contains("killing it") && !log.contains("SIGKILL"), "{log}");
}

fn socket_inode(pid: i32, fd: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap().display().to_string()
}

#[test]
#[ignore = "needs systemd-socket-activate (Debian package systemd)"]
fn socket_activation_keeps_the_socket_across_reloads() {
    let port = free_port();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(["-l", &format!("127.0.0.1:{port}"), "--fdname=web"]);
    cmd.arg(hello_bin()).args(["run", "--delay", "0", "-p", "x.pid"]);
    let h = Hello::launch(cmd, port);
    // systemd-socket-activate binds, then execs hello in place: the master holds fd 3 now.
    // Its first connection starts the program, like a .socket unit with Accept=no.
    h.wait_ready();
    let inode = socket_inode(h.pid, 3);
    assert!(inode.starts_with("socket:"), "{inode}");
    assert!(h.log_text().contains(&format!("listening on web=127.0.0.1:{port}")), "{}", h.log_text());
    let ctl = Arc::new(load::Control::default());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mk =
        |mode, conns| load::Config { think: Duration::from_millis(2), ..load::Config::hello(h.addr(), mode, conns) };
    let runs = [
        rt.spawn(load::run(mk(load::Mode::KeepAlive, 8), ctl.clone())),
        rt.spawn(load::run(mk(load::Mode::Fresh, 2), ctl.clone())),
    ];
    for _ in 0..10 {
        let w = h.reload_and_wait();
        assert_eq!(socket_inode(w, 3), inode, "the worker got the activated socket");
    }
    ctl.stop.store(true, Ordering::SeqCst);
    for r in runs {
        let s = rt.block_on(r).unwrap();
        assert_eq!(s.failed, 0, "{:?}", s.failures);
        assert!(s.ok > 0);
    }
    assert_eq!(socket_inode(h.pid, 3), inode, "the master still holds the same socket");
}

#[test]
#[ignore = "needs unshare (Debian package util-linux) and root"]
fn pid_1_in_a_pid_namespace_reaps_and_drains() {
    let port = free_port();
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--"]).arg(hello_bin());
    cmd.args(["run", "--delay", "0", "--listen", &format!("127.0.0.1:{port}")]);
    let mut h = Hello::launch(cmd, port);
    h.wait_ready();
    let master = *children(h.pid).first().expect("unshare's child: the master");
    h.track(master);
    assert!(h.log_text().contains("master[1] master started"), "{}", h.log_text());
    let old: Vec<i32> = children(master);
    signal(master, Signal::SIGUSR2);
    wait_until(Duration::from_secs(20), "the reload", || {
        let now = children(master);
        now.len() == 1 && !old.contains(&now[0])
    });
    // The old worker was reaped by PID 1: no zombie child is left.
    let zombies = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter(|s| {
                let f: Vec<&str> = s.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
                f.len() > 1 && f[0] == "Z" && f[1] == master.to_string()
            })
            .count()
    };
    wait_until(Duration::from_secs(5), "no zombie under PID 1", || zombies() == 0);
    signal(master, Signal::SIGTERM);
    let st = h.wait_exit(Duration::from_secs(30));
    assert!(st.success(), "unshare reports the master's exit: {st}");
    assert!(!alive(master));
}

fn contrib(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib").join(p)
}

#[test]
#[ignore = "needs systemd-analyze (Debian package systemd)"]
fn shipped_unit_files_verify() {
    let dir = TempDir::new("units");
    let hello = hello_bin();
    for unit in ["hello.service", "hello-activated.socket", "hello-activated.service"] {
        let text = std::fs::read_to_string(contrib(&format!("systemd/{unit}"))).unwrap();
        std::fs::write(dir.join(unit), text.replace("/usr/local/bin/hello", hello.to_str().unwrap())).unwrap();
    }
    let service = std::fs::read_to_string(dir.join("hello.service")).unwrap();
    assert!(service.contains("Type=notify\n") && service.contains(" reload -p "), "{service}");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(["hello.service", "hello-activated.socket", "hello-activated.service"].map(|u| dir.join(u)))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("hello"), "warnings about the units: {err}");
}

#[test]
#[ignore = "needs logrotate (Debian package logrotate)"]
fn shipped_logrotate_config_rotates_without_loss() {
    let dir = TempDir::new("logrotate");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (log, pid) = (dir.join("hello.log"), dir.join("hello.pid"));
    let run = |args: &[&str]| Command::new(hello_bin()).args(args).current_dir(dir.path()).output().unwrap();
    let out =
        run(&["start", "-l", log.to_str().unwrap(), "-p", pid.to_str().unwrap(), "--listen", &listen, "--delay", "0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let master: i32 = std::fs::read_to_string(&pid).unwrap().trim().parse().unwrap();
    let _guard = KillOnDrop(master);
    let addr = ([127, 0, 0, 1], port).into();
    for _ in 0..20 {
        assert_eq!(get(addr, "/").unwrap().status, 200);
    }
    let conf = std::fs::read_to_string(contrib("logrotate/hello"))
        .unwrap()
        .replace("/var/log/hello/hello.log", log.to_str().unwrap())
        .replace("/run/hello.pid", pid.to_str().unwrap())
        .replace("/usr/local/bin/hello", hello_bin().to_str().unwrap());
    std::fs::write(dir.join("conf"), conf).unwrap();
    let out =
        Command::new("logrotate").args(["-f", "-s"]).arg(dir.join("state")).arg(dir.join("conf")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for _ in 0..10 {
        assert_eq!(get(addr, "/").unwrap().status, 200);
    }
    let count = |p: &Path| std::fs::read_to_string(p).unwrap_or_default().matches("\"GET / HTTP/1.1\" 200").count();
    // delaycompress: the first rotation stays plain text.
    wait_until(Duration::from_secs(10), "new lines in the new file", || count(&log) == 10);
    assert_eq!(count(&dir.join("hello.log.1")), 20);
    assert!(run(&["stop", "-p", pid.to_str().unwrap()]).status.success());
}

struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let kids = children(self.0);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), Signal::SIGKILL);
        for k in kids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(k), Signal::SIGKILL);
        }
    }
}
