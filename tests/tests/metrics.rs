//! `--metrics` scraped by a real Prometheus server (Debian's package, set up
//! by `cargo xtask setup`), asked through its HTTP API with PromQL.

use std::{
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nstrace_tests::*;
use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const IP: &str = "/bin/ip";

struct Prometheus {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Prometheus {
    fn start(target_port: u16) -> Prometheus {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("nstrace-prom-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: nstrace\n    \
                 static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus");
        Prometheus { child, port, dir }
    }

    /// The value of an instant PromQL query with one result, if it has one.
    fn query(&self, promql: &str) -> Option<f64> {
        let q: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let body = http_get(self.port, &format!("/api/v1/query?query={q}"))?;
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `promql` answers `pred`; the last answer.
    fn wait(&self, promql: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.query(promql);
            if let Some(v) = v.filter(|v| pred(*v)) {
                return v;
            }
            assert!(Instant::now() < deadline, "{promql} answered {v:?}");
            thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn prometheus_scrapes_counts_of_a_scripted_workload_and_the_pinned_gauge() {
    if !privileged() {
        return;
    }
    if !std::path::Path::new(PROMETHEUS).exists() {
        eprintln!("skipping: no {PROMETHEUS}; `cargo xtask setup` installs it");
        return;
    }
    let port = free_port();
    let tracer = Tracer::start(&["--metrics", &format!("127.0.0.1:{port}")]);
    let page = http_get(port, "/metrics").expect("nstrace serves /metrics");
    assert!(
        page.contains("# TYPE nstrace_namespaces_alive gauge"),
        "{page}"
    );
    assert!(page.ends_with("# EOF\n"), "{page}");
    // Own CPU time only grows: a counter, so that rate() applies.
    assert!(
        page.contains("# TYPE nstrace_cpu_seconds counter"),
        "{page}"
    );
    let prom = Prometheus::start(port);
    prom.wait("up{job=\"nstrace\"}", |v| v == 1.0);

    // cgroup namespaces: none of the suite's background load makes them.
    let created =
        "sum(nstrace_namespaces_created_total{kind=\"cgroup\",runtime=\"none\"}) or vector(0)";
    let destroyed =
        "sum(nstrace_namespaces_destroyed_total{kind=\"cgroup\",runtime=\"none\"}) or vector(0)";
    let c0 = prom.wait(created, |_| true);
    let d0 = prom.wait(destroyed, |_| true);
    for _ in 0..7 {
        assert!(
            Command::new("unshare")
                .args(["-C", "true"])
                .status()
                .unwrap()
                .success()
        );
    }
    prom.wait(created, |v| v >= c0 + 7.0);
    prom.wait(destroyed, |v| v >= d0 + 7.0);
    // Exactly the workload's, once settled.
    thread::sleep(Duration::from_secs(2));
    assert_eq!(prom.wait(created, |_| true), c0 + 7.0);
    assert_eq!(prom.wait(destroyed, |_| true), d0 + 7.0);

    // A netns pinned by `ip netns add` shows in the pinned gauge, and ages.
    let pinned = "nstrace_namespaces_pinned{kind=\"net\"}";
    let p0 = prom.wait(pinned, |_| true);
    let name = format!("nstrace-metrics-{}", std::process::id());
    assert!(
        Command::new(IP)
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success()
    );
    let _ = Command::new(IP)
        .args(["netns", "exec", &name, "true"])
        .status();
    let cleanup = scopeguard(&name);
    prom.wait(pinned, |v| v == p0 + 1.0);
    prom.wait(
        "nstrace_oldest_pinned_namespace_age_seconds{kind=\"net\"}",
        |v| v > 0.0,
    );
    drop(cleanup);
    prom.wait(pinned, |v| v == p0);
    prom.wait("nstrace_cpu_seconds_total", |v| v > 0.0);
    let (status, stderr) = tracer.stop();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("metrics at http://127.0.0.1:"), "{stderr}");
}

/// Deletes the netns on every path.
fn scopeguard(name: &str) -> impl Drop + '_ {
    struct Del<'a>(&'a str);
    impl Drop for Del<'_> {
        fn drop(&mut self) {
            let _ = Command::new(IP).args(["netns", "delete", self.0]).status();
        }
    }
    Del(name)
}

#[test]
fn a_taken_metrics_port_is_an_error_with_a_hint() {
    if !privileged() {
        return;
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(nstrace_bin())
        .args(["--metrics", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen on") && err.contains("hint:"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
