//! `bench -- syscalls`: the system calls and context switches each server makes per request,
//! counted by `perf stat` (Debian package `linux-perf`, as root or with
//! `kernel.perf_event_paranoid` low enough for tracepoints) on the kernel's syscall
//! tracepoints. The counters are attached to the server's processes (baton's master and
//! worker, and the threads they start) for exactly the load client's run; the counts are
//! divided by the requests the client completed. Servers uncapped, on CPU 0; the client on
//! CPU 1.
//!
//! This is where kernel time per request comes from, and the two servers' kernel time is
//! most of a keep-alive request's cost: the table shows whether baton asks the kernel for
//! anything `axum::serve` does not.

use std::process::Command;

use crate::serve::{Load, h2load_available, run_under};
use crate::{Server, get_pid, median};

/// The counted events: every syscall (`raw_syscalls:sys_enter`), the ones an HTTP server
/// makes, and context switches.
const EVENTS: &[&str] = &[
    "raw_syscalls:sys_enter",
    "syscalls:sys_enter_accept4",
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_read",
    "syscalls:sys_enter_writev",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_epoll_ctl",
    "syscalls:sys_enter_futex",
    "syscalls:sys_enter_shutdown",
    "syscalls:sys_enter_close",
    "context-switches",
];

/// Whether `perf stat` can count the syscall tracepoints here.
pub(crate) fn perf_available() -> bool {
    Command::new("perf")
        .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "--", "true"])
        .output()
        .is_ok_and(|o| o.status.success() && parse(&String::from_utf8_lossy(&o.stderr))[0].is_some())
}

/// The counts `perf stat -x,` printed, in [`EVENTS`]' order (`None`: not counted).
fn parse(stderr: &str) -> Vec<Option<f64>> {
    EVENTS
        .iter()
        .map(|event| {
            stderr.lines().find_map(|l| {
                let mut f = l.split(',');
                let count = f.next()?;
                (f.nth(1)? == *event).then(|| count.parse().ok()).flatten()
            })
        })
        .collect()
}

/// One server under one load: per request, each event's count.
fn measure(role: &str, extra: &[&str], load: Load, secs: u64) -> Option<Vec<f64>> {
    let server = Server::start(role, extra);
    // Warm-up: connections made, buffers grown, the log writer started.
    run_under(&server, 1, load, &[]);
    let mut pids = vec![server.pid()];
    // baton's worker (for plain axum, the same pid again).
    pids.extend(get_pid(server.addr).filter(|p| !pids.contains(p)));
    let pids: Vec<String> = pids.iter().map(i32::to_string).collect();
    let mut wrap: Vec<String> = ["perf", "stat", "-x,", "-p", &pids.join(",")].map(str::to_owned).into();
    for e in EVENTS {
        wrap.extend(["-e".to_owned(), (*e).to_owned()]);
    }
    wrap.push("--".to_owned());
    let (r, stderr) = run_under(&server, secs, load, &wrap);
    if r.requests < 1.0 || r.errors > 0 {
        println!("  {role} {extra:?}: {} requests, {} errors: not counted", r.requests, r.errors);
        return None;
    }
    let counts = parse(&stderr);
    if counts.iter().any(Option::is_none) {
        println!("  perf stat did not count every event: {}", stderr.trim());
        return None;
    }
    Some(counts.into_iter().map(|c| c.unwrap_or(f64::NAN) / r.requests).collect())
}

/// `rounds` alternating rounds of `secs` per load, plain axum, baton's defaults (the access
/// log to a file) and axum with its accept loop spawned; the median per request of each event
/// (rows none of them made left out).
pub(crate) fn table(rounds: usize, secs: u64) {
    if !perf_available() {
        println!("syscalls: perf cannot count syscall tracepoints here (Debian package linux-perf, as root)");
        return;
    }
    let mut loads = vec![
        ("keep-alive (wrk -t1 -c64)", Load::Wrk { close: false, https: false }),
        ("Connection: close (wrk -t1 -c64)", Load::Wrk { close: true, https: false }),
    ];
    if h2load_available() {
        loads.push(("h2c (h2load -c16 -m10)", Load::H2c));
    } else {
        println!("h2load not found (Debian package nghttp2-client): no HTTP/2 columns");
    }
    println!(
        "syscalls: per request, by perf stat on the servers' processes during the load ({rounds} alternating \
         rounds of {secs} s, medians; uncapped)"
    );
    // The third: `axum::serve` with its accept loop on a runtime worker, as baton's is (see
    // the `axum-spawned` role), which tells the accept loop's placement from the rest.
    let servers: [(&str, &str, &[&str]); 3] = [
        ("plain axum", "axum", &[]),
        ("baton, defaults", "baton", &["-l", "access.log"]),
        ("axum, spawned", "axum-spawned", &[]),
    ];
    for (name, load) in loads {
        let mut per: [Vec<Vec<f64>>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..rounds {
            for (i, (_, role, extra)) in servers.iter().enumerate() {
                per[i].extend(measure(role, extra, load, secs));
            }
        }
        if per.iter().any(Vec::is_empty) {
            println!("  {name}: no complete round");
            continue;
        }
        println!("  {name:<34} {:>12} {:>16} {:>14}", servers[0].0, servers[1].0, servers[2].0);
        for (k, event) in EVENTS.iter().enumerate() {
            let m: Vec<f64> = (0..3).map(|i| median(per[i].iter().map(|row| row[k]).collect())).collect();
            if m.iter().all(|v| *v < 0.0005) {
                continue; // none under this load
            }
            let label = match *event {
                "raw_syscalls:sys_enter" => "every syscall",
                "context-switches" => "context switches",
                e => e.trim_start_matches("syscalls:sys_enter_"),
            };
            println!("    {label:<32} {:>12.3} {:>16.3} {:>14.3}", m[0], m[1], m[2]);
        }
    }
}
