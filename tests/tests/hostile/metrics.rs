//! `--metrics` under abuse: an unprivileged user floods the endpoint with
//! connections and byte-a-second clients while the tracer runs at 1024
//! descriptors, or at none to spare. Tracing must go on, on time; the
//! tracer's CPU must stay low; the endpoint must serve again afterwards.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::fs::PermissionsExt as _,
    process::Command,
    time::{Duration, Instant},
};

use nstrace_tests::*;

/// The attacker, run as nobody: `N` connections opened and kept (any the
/// server closes is dialled again, each second), and `SLOW` clients that
/// send a request a byte a second (dialled again when cut off).
const FLOOD: &str = r#"
import resource, socket, sys, time
port, n, slow = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + slow + 64), hard))

def dial():
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect(("127.0.0.1", port))
    except (BlockingIOError, OSError):
        pass
    return s

flood = [dial() for _ in range(n)]
slowpokes = [[dial(), 0] for _ in range(slow)]
print("flooding", flush=True)
req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
redialled = 0
while True:
    time.sleep(1)
    for i, s in enumerate(flood):
        try:
            gone = s.recv(1) == b""
        except BlockingIOError:
            gone = False
        except OSError:
            gone = True
        if gone:
            s.close()
            flood[i] = dial()
            redialled += 1
    for c in slowpokes:
        try:
            c[0].send(req[c[1] % len(req):][:1])
            c[1] += 1
        except OSError:
            c[0].close()
            c[:] = [dial(), 0]
    print("redialled", redialled, flush=True)
"#;

/// The other attacker: full requests as fast as `THREADS` threads can make
/// them, each read to its end.
const REQUESTS: &str = r#"
import socket, sys, threading
port, threads = int(sys.argv[1]), int(sys.argv[2])
def ask():
    while True:
        try:
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            while s.recv(65536):
                pass
            s.close()
        except OSError:
            pass
for _ in range(threads):
    threading.Thread(target=ask, daemon=True).start()
print("flooding", flush=True)
threading.Event().wait()
"#;

/// GET /metrics: the body, if served (200) within 5 s.
fn scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// Scrapes until one is served (a flood's clients are cut within 5 s).
fn scrape_soon(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(page) = scrape(port) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "no scrape served after the flood"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// User + system CPU seconds of `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The soft descriptor limit of `pid` (the hard one: 1024).
fn set_nofile(pid: u32, n: usize) {
    let st = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={n}:1024")])
        .status()
        .unwrap();
    assert!(st.success());
}

/// An attacker's script, where nobody can read it.
fn script(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("nstrace-{name}-{}.py", std::process::id()));
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p
}

/// Starts `text` with `args` as nobody; returns once it is flooding.
fn attack(name: &str, text: &str, args: &str) -> Group {
    let mut g = as_nobody(&format!(
        "exec /usr/bin/python3 {} {args}",
        script(name, text).display()
    ));
    assert_eq!(g.read_line().trim(), "flooding");
    g
}

/// Starts the flood as nobody; returns once every connection was dialled.
fn flood(port: u16, n: usize, slow: usize) -> Group {
    attack("flood", FLOOD, &format!("{port} {n} {slow}"))
}

/// A user namespace made as nobody, and how long from starting the
/// command that made it until its create record arrived.
fn create_seen_within(tracer: &Tracer) -> Duration {
    let made = Instant::now();
    let (status, out, err) = run_as_nobody("unshare -U readlink /proc/self/ns/user");
    assert!(status.success(), "{err}");
    let inode: u64 = out
        .trim()
        .trim_start_matches("user:[")
        .trim_end_matches(']')
        .parse()
        .unwrap_or_else(|_| panic!("{out}"));
    tracer.wait_for_within(Duration::from_secs(5), 1, |r| {
        is(r, "create", "user", inode)
    });
    made.elapsed()
}

/// While an attack runs: namespaces made once a second for `window`, each seen;
/// returns the slowest arrival and the tracer's CPU share over the window.
fn under_attack(tracer: &Tracer, window: Duration) -> (Duration, f64, usize) {
    let pid = tracer.pid();
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    let (mut slowest, mut most_fds) = (Duration::ZERO, 0);
    while t0.elapsed() < window {
        slowest = slowest.max(create_seen_within(tracer));
        most_fds = most_fds.max(open_fds(pid));
        std::thread::sleep(Duration::from_millis(500));
    }
    let share = (cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64();
    (slowest, share, most_fds)
}

#[test]
fn a_connection_flood_and_slowloris_cost_little_and_tracing_goes_on() {
    if !privileged() {
        return;
    }
    let port = free_port();
    let tracer = Tracer::start(&["--metrics", &format!("127.0.0.1:{port}")]);
    let pid = tracer.pid();
    set_nofile(pid, 1024);
    let base_fds = open_fds(pid);
    assert!(scrape(port).is_some());

    let attack = flood(port, 2000, 100);
    let (slowest, share, most_fds) = under_attack(&tracer, Duration::from_secs(12));
    eprintln!(
        "flood of 2000 + 100 slow: slowest create record {slowest:?}, tracer CPU {:.1}% of a core, \
         {base_fds} -> at most {most_fds} descriptors",
        share * 100.0
    );
    // The flood's clients never hold more than the connection limit.
    assert!(most_fds <= base_fds + 64 + 8, "{most_fds} descriptors");
    assert!(share < 0.20, "tracer CPU {:.1}% of a core", share * 100.0);
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");
    drop(attack);

    let page = scrape_soon(port);
    let refused = |why: &str| {
        page.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "nstrace_metrics_connections_refused_total{{why=\"{why}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(refused("busy") >= 100.0, "{page}");
    assert!(refused("slow") >= 1.0, "{page}");
    let (status, stderr) = tracer.stop();
    assert!(status.success(), "{stderr}");
}

#[test]
fn accept_errors_back_off_when_descriptors_run_out() {
    if !privileged() {
        return;
    }
    let port = free_port();
    let tracer = Tracer::start(&["--metrics", &format!("127.0.0.1:{port}")]);
    let pid = tracer.pid();
    set_nofile(pid, 1024);
    assert!(scrape(port).is_some());
    // A few descriptors to spare, fewer than the connection limit: accept
    // then fails with EMFILE while the flood's connections wait in the queue.
    let base = open_fds(pid);
    set_nofile(pid, base + 4);
    let attack = flood(port, 300, 0);
    let (slowest, share, most_fds) = under_attack(&tracer, Duration::from_secs(8));
    eprintln!(
        "flood at {} descriptors: slowest create record {slowest:?}, tracer CPU {:.1}% of a core, \
         at most {most_fds} descriptors",
        base + 4,
        share * 100.0
    );
    assert!(
        share < 0.20,
        "tracer CPU {:.1}% of a core (accept spinning?)",
        share * 100.0
    );
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");
    drop(attack);
    set_nofile(pid, 1024);
    let page = scrape_soon(port);
    // It was out of descriptors (and waited each time).
    assert!(
        page.contains("nstrace_metrics_connections_refused_total{why=\"accept_failed\"}"),
        "{page}"
    );
    let (status, stderr) = tracer.stop();
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_flood_of_full_requests_is_paced() {
    if !privileged() {
        return;
    }
    let port = free_port();
    let tracer = Tracer::start(&["--metrics", &format!("127.0.0.1:{port}")]);
    let g = attack("requests", REQUESTS, &format!("{port} 8"));
    let (slowest, share, _) = under_attack(&tracer, Duration::from_secs(8));
    eprintln!(
        "8 threads of full requests: slowest create record {slowest:?}, tracer CPU {:.1}% of a core",
        share * 100.0
    );
    assert!(share < 0.20, "tracer CPU {:.1}% of a core", share * 100.0);
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");
    drop(g);
    scrape_soon(port);
    let (status, stderr) = tracer.stop();
    assert!(status.success(), "{stderr}");
}

#[test]
fn an_oversized_or_endless_request_head_is_cut_off() {
    if !privileged() {
        return;
    }
    let port = free_port();
    let tracer = Tracer::start(&["--metrics", &format!("127.0.0.1:{port}")]);
    // As nobody: a head of 9000 bytes (over the 8 KiB read), then a head
    // that never ends.
    let (status, out, err) = run_as_nobody(&format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port}; \
         {{ printf 'GET /metrics HTTP/1.1\\r\\nX: '; head -c 9000 /dev/zero | tr '\\0' x; }} >&3; \
         head -c 200 <&3; echo; exec 3<&-; \
         exec 4<>/dev/tcp/127.0.0.1/{port}; t=$(date +%s%N); printf 'GET /metrics HTTP/1.1\\r\\n' >&4; \
         cat <&4 >/dev/null; echo cut after $(( ($(date +%s%N) - t) / 1000000 )) ms"
    ));
    assert!(status.success(), "{err}");
    let first = out.lines().next().unwrap_or_default();
    assert!(first.starts_with("HTTP/1.1 431"), "{out}");
    let cut: u64 = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("cut after ")?
                .strip_suffix(" ms")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        (4_500..8_000).contains(&cut),
        "slow head cut after {cut} ms"
    );
    assert!(scrape(port).is_some());
    let (status, stderr) = tracer.stop();
    assert!(status.success(), "{stderr}");
}
