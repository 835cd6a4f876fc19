//! Shared helpers for the integration tests: run the real `hello` binary, send real signals,
//! make real HTTP requests on 127.0.0.1. Every process a test starts is killed by pid when its
//! guard drops, even when the test fails.
#![allow(dead_code, unreachable_pub)] // test helpers: each test binary uses a different subset

pub mod load;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The directory holding the example binaries cargo built for this test run.
pub fn examples_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("examples")
}

pub fn hello_bin() -> PathBuf {
    examples_dir().join("hello")
}

pub fn hello_next_bin() -> PathBuf {
    examples_dir().join("hello_next")
}

/// Runs hello with `args`, which it must refuse: a server that starts instead is stopped
/// (still our unreaped child, so its pid is its own) and the test fails.
pub fn refused(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(hello_bin()).args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let exited = wait_for(Duration::from_secs(10), || child.try_wait().unwrap().is_some());
    if !exited {
        kill_tree(child.id() as i32);
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(exited, "{args:?} started a server: {err}");
    (out.status.code().unwrap_or(-1), err)
}

/// A runtime for the load client.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// The load of the reload tests: bounded to 2 minutes, clients pausing 3 ms between requests.
pub fn load_cfg(h: &Hello, mode: load::Mode, conns: usize) -> load::Config {
    load::Config {
        max_time: Duration::from_secs(120),
        think: Duration::from_millis(3),
        ..load::Config::hello(h.addr(), mode, conns)
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; the kernel does not hand it out again
/// at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
    assert!(wait_for(timeout, cond), "timed out after {timeout:?} waiting for {what}");
}

/// Polls `cond` every 10 ms until it holds (true) or `timeout` passes (false).
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// A temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("baton-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Points `cmd`'s `TMPDIR` at `dir` (a test's own directory) unless the test set one: the
/// master's notify directory goes there, and is removed with it after a SIGKILL (by
/// [`kill_tree`]) that left it.
pub fn private_tmp(cmd: &mut Command, dir: &Path) {
    if !cmd.get_envs().any(|(k, _)| k == "TMPDIR") {
        cmd.env("TMPDIR", dir);
    }
}

/// The value of `key` in the environment process `pid` started with (`/proc/PID/environ`).
pub fn env_of(pid: i32, key: &str) -> Option<Vec<u8>> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let prefix = format!("{key}=");
    environ.split(|b| *b == 0).find_map(|v| v.strip_prefix(prefix.as_bytes())).map(<[u8]>::to_vec)
}

/// The `NOTIFY_SOCKET` a worker was given: the master's notify socket.
pub fn notify_socket_of(worker: i32) -> PathBuf {
    let v = env_of(worker, "NOTIFY_SOCKET").expect("the worker's NOTIFY_SOCKET");
    PathBuf::from(String::from_utf8_lossy(&v).into_owned())
}

/// User `nobody`, for the tests that run as root (CI does) and switch to it.
pub fn nobody() -> nix::unistd::User {
    assert!(nix::unistd::Uid::effective().is_root(), "run as root");
    nix::unistd::User::from_name("nobody").unwrap().expect("user nobody")
}

/// The state letter of `pid` in `/proc/PID/stat` (`R`, `S`, `T` stopped, `Z` zombie...).
pub fn process_state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
}

/// SIGKILL to a master a test started and to its live children (its workers).
pub fn kill_tree(pid: i32) {
    let kids = children(pid);
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    for k in kids {
        let _ = kill(Pid::from_raw(k), Signal::SIGKILL);
    }
}

/// Sends SIGSTOP to `pid` and waits until the kernel shows it stopped.
pub fn stop_process(pid: i32) {
    signal(pid, Signal::SIGSTOP);
    wait_until(Duration::from_secs(5), "the process to stop", || process_state(pid) == Some('T'));
}

/// Whether `pid` is a live process (a zombie counts as gone: PID 1 here reaps slowly).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// Live children of `pid` (from /proc).
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 1 && f[0] != "Z" && f[1] == pid.to_string() {
            out.push(p);
        }
    }
    out
}

/// Number of open fds of `pid`.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

pub fn signal(pid: i32, sig: Signal) {
    kill(Pid::from_raw(pid), sig).unwrap();
}

/// A `hello` process started by a test, with its stderr in `log`. Dropping it kills it and
/// every child it has (by pid).
pub struct Hello {
    pub child: Option<Child>,
    pub pid: i32,
    pub port: u16,
    pub log: PathBuf,
    pub dir: TempDir,
    extra_pids: Vec<i32>,
    /// Every worker pid `/pid` has answered so far.
    seen: std::cell::RefCell<Vec<i32>>,
}

impl Hello {
    /// Starts `bin run --listen 127.0.0.1:<free port> <args>` and waits until `/pid` answers.
    pub fn start(bin: &Path, args: &[&str]) -> Hello {
        let h = Hello::spawn(bin, args);
        h.wait_ready();
        h
    }

    /// Starts without waiting.
    pub fn spawn(bin: &Path, args: &[&str]) -> Hello {
        let (cmd, port) = Hello::command(bin, args);
        Hello::launch(cmd, port)
    }

    /// Like [`Hello::spawn`], with `env` added to the environment.
    pub fn spawn_with_env(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Hello {
        let (mut cmd, port) = Hello::command(bin, args);
        cmd.envs(env.iter().copied());
        Hello::launch(cmd, port)
    }

    /// Like [`Hello::start`], with workers logging "request started: METHOD PATH" (see
    /// [`wait_request_started`]).
    pub fn start_traced(bin: &Path, args: &[&str]) -> Hello {
        let h = Hello::spawn_with_env(bin, args, &[("RUST_LOG", TRACE_REQUESTS)]);
        h.wait_ready();
        h
    }

    /// The command that serves `args` on a free port of 127.0.0.1, and the port (for
    /// [`Hello::launch`]).
    pub fn command(bin: &Path, args: &[&str]) -> (Command, u16) {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut all = vec!["run", "--listen", &listen];
        all.extend_from_slice(args);
        let mut cmd = Command::new(bin);
        cmd.args(&all);
        (cmd, port)
    }

    /// Runs `cmd` (which must serve on 127.0.0.1:`port`) in a fresh directory, stdio to files.
    pub fn launch(mut cmd: Command, port: u16) -> Hello {
        let dir = TempDir::new("hello");
        let log = dir.join("stderr.log");
        cmd.current_dir(dir.path()).stdin(Stdio::null());
        private_tmp(&mut cmd, dir.path());
        // ETXTBSY: another test thread may have forked while holding a write fd of a freshly
        // written binary; that copy lives until its exec. Retry briefly.
        let mut tries = 0;
        let child = loop {
            cmd.stdout(std::fs::File::create(dir.join("stdout.log")).unwrap());
            cmd.stderr(std::fs::File::create(&log).unwrap());
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => break r.unwrap(),
            }
        };
        let pid = child.id() as i32;
        Hello { child: Some(child), pid, port, log, dir, extra_pids: Vec::new(), seen: Default::default() }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Waits until a worker answers `/pid` and, under a master, until the master has taken
    /// its `READY=1` (the worker answers a moment earlier; a USR2 sent in between is folded
    /// into the starting generation and starts no new one).
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = get(self.addr(), "/pid") {
                let pid: i32 = r.body.parse().unwrap_or(0);
                if r.status == 200 && (pid == self.pid || self.master_says_serving(pid)) {
                    return;
                }
            }
            assert!(alive(self.pid), "hello exited; log:\n{}", self.log_text());
            assert!(Instant::now() < deadline, "hello not ready; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the master has logged worker `pid` as the generation that serves.
    fn master_says_serving(&self, pid: i32) -> bool {
        // The master's "generation N (pid P) serving[ (version ...)]" line.
        self.log_text().contains(&format!("(pid {pid}) serving"))
    }

    /// The last `n` lines of the log that are not access log lines.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().filter(|l| !l.contains("\" 200 ")).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The pid of the worker serving now.
    pub fn worker_pid(&self) -> i32 {
        let p = get(self.addr(), "/pid").expect("GET /pid").body.parse().unwrap();
        self.seen.borrow_mut().push(p);
        p
    }

    /// Sends USR2 and waits until a worker never seen before answers `/pid` (a draining
    /// worker may still answer a connection that was queued when it stopped accepting).
    pub fn reload_and_wait(&self) -> i32 {
        self.worker_pid();
        signal(self.pid, Signal::SIGUSR2);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = get(self.addr(), "/pid").ok().and_then(|r| r.body.parse().ok()).unwrap_or(0);
            // A new worker answers a little before the master has taken its READY=1, and the
            // old one until it has closed its listeners; the reload is over when the master
            // says so (a USR2 before that is folded into it).
            if now != 0 && !self.seen.borrow().contains(&now) && self.master_says_serving(now) {
                self.seen.borrow_mut().push(now);
                return now;
            }
            assert!(Instant::now() < deadline, "no new worker after USR2; log:\n{}", self.log_tail(40));
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit (up to `timeout`) and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("not our child");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "hello did not exit within {timeout:?}; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs `hello <args> -p x.pid` in the server's directory; returns (exit code,
    /// stdout+stderr).
    pub fn ctl(&self, args: &[&str]) -> (i32, String) {
        ctl_in(self.dir.path(), args)
    }

    /// Waits until a worker other than `old` answers `/pid`, and returns its pid.
    pub fn wait_replaced(&self, old: i32) -> i32 {
        let mut new = 0;
        wait_until(Duration::from_secs(30), "a replacement worker", || {
            new = get(self.addr(), "/pid").ok().and_then(|r| r.body.parse().ok()).unwrap_or(old);
            new != old
        });
        new
    }

    /// Waits until the master has exactly one worker.
    pub fn wait_one_worker(&self) {
        wait_until(Duration::from_secs(30), "exactly one worker", || children(self.pid).len() == 1);
    }

    /// Remembers a pid to kill on drop (a worker that may outlive a killed master).
    pub fn track(&mut self, pid: i32) {
        self.extra_pids.push(pid);
    }
}

impl Drop for Hello {
    fn drop(&mut self) {
        kill_tree(self.pid);
        for &p in &self.extra_pids {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

/// `RUST_LOG` under which workers log each request as it begins.
pub const TRACE_REQUESTS: &str = "info,baton=debug";

/// Waits until the log at `log` says a handler began `GET <path>` (needs [`TRACE_REQUESTS`]):
/// the synchronisation point for "the slow request is in flight".
pub fn wait_request_started(log: &Path, path: &str) {
    let line = format!("request started: GET {path}");
    wait_until(Duration::from_secs(20), &line, || {
        std::fs::read_to_string(log).unwrap_or_default().lines().any(|l| l.ends_with(&line))
    });
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection (`Connection: close`), read to the end.
pub fn request(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(raw)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    parse(&buf)
}

pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Resp> {
    request(addr, format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
}

/// `reqs` sent all at once, each on its own stream of one HTTP/2 (cleartext) connection; the
/// answers in the order of `reqs`. A request's URI is its path (the authority is `addr`).
pub fn h2(addr: SocketAddr, reqs: Vec<http::Request<String>>) -> Vec<Resp> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
        let (send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(conn);
        let answers: Vec<_> = reqs
            .into_iter()
            .map(|req| {
                let mut send = send.clone();
                let (mut parts, body) = req.into_parts();
                parts.uri = format!("http://{addr}{}", parts.uri).parse().unwrap();
                let req = http::Request::from_parts(parts, http_body_util::Full::new(bytes::Bytes::from(body)));
                tokio::spawn(async move {
                    let resp =
                        tokio::time::timeout(Duration::from_secs(30), send.send_request(req)).await.unwrap().unwrap();
                    let status = resp.status().as_u16();
                    let headers = resp
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                        .collect();
                    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
                    Resp { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
                })
            })
            .collect();
        let mut out = Vec::new();
        for a in answers {
            out.push(a.await.unwrap());
        }
        out
    })
}

pub fn parse(buf: &[u8]) -> std::io::Result<Resp> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) =
        text.split_once("\r\n\r\n").ok_or_else(|| std::io::Error::other(format!("incomplete response: {text:?}")))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head:?}")))?;
    let headers =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))).collect();
    Ok(Resp { status, headers, body: body.to_owned() })
}

/// Puts `src`'s content at `dst` the way a deploy does: a new file next to it, renamed over it.
/// The copy is written by a `cp` process, so this (multi-threaded) test process never holds a
/// write fd on a file that will be executed (which a concurrent fork could inherit: ETXTBSY).
pub fn install(src: &Path, dst: &Path) {
    let tmp = dst.with_extension("new");
    let st = Command::new("cp").arg(src).arg(&tmp).status().unwrap();
    assert!(st.success(), "cp failed");
    std::fs::rename(&tmp, dst).unwrap();
}

/// Installs a `#!/bin/sh` script with `body` at `dst` (see [`install`]).
pub fn install_script(dst: &Path, body: &str) {
    install_file(dst, format!("#!/bin/sh\n{body}\n").as_bytes(), 0o755);
}

/// Installs a file with `contents` and permission bits `mode` at `dst` (see [`install`]: the
/// file written here is only the source of the copy).
pub fn install_file(dst: &Path, contents: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let staging = dst.with_extension("src");
    std::fs::write(&staging, contents).unwrap();
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode)).unwrap();
    install(&staging, dst);
}

/// Runs `hello <args> -p x.pid` in `dir` (from another thread than the server's owner, say);
/// returns (exit code, stdout+stderr).
pub fn ctl_in(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(hello_bin()).args(args).args(["-p", "x.pid"]).current_dir(dir).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// A daemon started by a test: killed (master and workers, by pid) on drop.
pub struct Daemon {
    pub dir: TempDir,
    pub port: u16,
}

impl Daemon {
    pub fn new(tag: &str) -> Daemon {
        Daemon { dir: TempDir::new(tag), port: free_port() }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Runs `hello <args>` in the test directory.
    pub fn hello(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(hello_bin());
        cmd.args(args).current_dir(self.dir.path());
        private_tmp(&mut cmd, self.dir.path());
        cmd
    }

    /// Runs `hello <args>` in the test directory as `user`, from a copy there (`user` may not
    /// be let into the build directory).
    pub fn hello_as(&self, user: &nix::unistd::User, args: &[&str]) -> Output {
        use std::os::unix::process::CommandExt;
        let copy = self.dir.join("hello-copy");
        if !copy.exists() {
            std::fs::copy(hello_bin(), &copy).unwrap();
        }
        let mut cmd = Command::new(&copy);
        cmd.args(args).current_dir(self.dir.path());
        private_tmp(&mut cmd, self.dir.path());
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw()).output().unwrap()
    }

    /// `hello start -l x.log -p x.pid --listen <port> <extra>`, with `env` added.
    fn start_command(&self, extra: &[&str], env: &[(&str, &str)]) -> Command {
        let listen = format!("127.0.0.1:{}", self.port);
        let mut args = vec!["start", "-l", "x.log", "-p", "x.pid", "--listen", &listen];
        args.extend_from_slice(extra);
        let mut cmd = self.command(&args);
        cmd.envs(env.iter().copied());
        cmd
    }

    /// [`Daemon::start_command`], run to its end.
    pub fn start_with(&self, extra: &[&str], env: &[(&str, &str)]) -> Output {
        self.start_command(extra, env).output().unwrap()
    }

    pub fn start(&self, extra: &[&str]) -> Output {
        self.start_with(extra, &[])
    }

    /// [`Daemon::start_command`], running: its stdout and stderr piped.
    pub fn spawn_start(&self, extra: &[&str], env: &[(&str, &str)]) -> Child {
        Self::spawn_piped(self.start_command(extra, env))
    }

    /// `hello <args>` in the test directory, running: its stdout and stderr piped.
    pub fn spawn(&self, args: &[&str]) -> Child {
        Self::spawn_piped(self.command(args))
    }

    fn spawn_piped(mut cmd: Command) -> Child {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    }

    /// Sends `sig` to `child` (a command of this test's) and waits up to 10 s for it to
    /// exit: its exit code (`None`: killed by a signal) and its stderr.
    pub fn interrupt(child: &mut Child, sig: nix::sys::signal::Signal) -> (Option<i32>, String) {
        signal(child.id() as i32, sig);
        let mut status = None;
        wait_until(Duration::from_secs(10), "the command to exit", || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        (status.unwrap().code(), err)
    }

    pub fn pid(&self) -> i32 {
        std::fs::read_to_string(self.dir.join("x.pid")).unwrap().trim().parse().unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("x.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(s) = std::fs::read_to_string(self.dir.join("x.pid")) {
            if let Ok(pid) = s.trim().parse::<i32>() {
                kill_tree(pid);
            }
        }
    }
}

/// A command's stdout and stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Checks a Prometheus text exposition with `promtool check metrics`: it must pass with no
/// remark (lint included).
pub fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool: {said}\n{text}");
    assert!(said.trim().is_empty(), "promtool has remarks (lint): {said}\n{text}");
}
