//! `--metrics ADDR`: a Prometheus endpoint over the same records the other
//! formats print, for watching a fleet.
//!
//! Labels are bounded: namespace kind (8), event, container runtime (a
//! handful, `none` for the host). Never a per-namespace or per-container
//! label. The session feeds every record here, whatever the filters (a
//! node's metrics describe the node), and refreshes the gauges on its tick.
//!
//! Label values are escaped as the text format wants (`\\`, `\"`, `\n`:
//! prometheus-client writes them as given) and cut to [`MAX_LABEL`] bytes;
//! the runtime label takes only the names nstrace gives (else `other`), so
//! no process can add series by naming itself.
//!
//! The HTTP side is a few lines over tokio's listener rather than an HTTP
//! crate: it answers one GET per connection, and what an exposed endpoint
//! needs is around the parsing, not in it, and written here either way: at
//! most [`MAX_CONNECTIONS`] at once (more are closed at once) and
//! [`ACCEPT_RATE`] taken a second (more wait in the kernel's queue), the request
//! head read within [`HEAD_DEADLINE`] and [`MAX_HEAD`] bytes, the reply
//! written within [`WRITE_DEADLINE`], and accept errors (descriptors run
//! out) waited out rather than retried in a loop. It runs on the session's
//! single thread, so each of these is what keeps a client from slowing the
//! draining of the ring: a connection costs a wakeup per segment received,
//! never a wait.

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Result;
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use crate::{
    model::NsKey,
    model::{EventType, Loss, NsKind, Record},
    state::registry::{self, State},
    util::error::hinted,
};

/// Connections served at once; more are closed as soon as accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its whole request head.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// Bytes of request head read at most (then `431`).
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to take the reply.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// How long a connection is kept after its reply, for the client to close
/// first.
pub const LINGER: Duration = Duration::from_secs(1);
/// Wait after an accept error that is not about one connection (EMFILE,
/// ENFILE, ENOBUFS, ENOMEM): retrying at once would spin.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Connections taken from the listen queue per second at most (a burst of
/// as many): a scraper needs a few a minute; a local flood of full requests
/// (some 12,000 a second) took 60% of the thread without it, 2-3% with it.
pub const ACCEPT_RATE: u32 = 100;
/// Connections the kernel keeps waiting for an accept.
pub const LISTEN_QUEUE: u32 = 128;
/// Longest label value, in bytes (cut on a character boundary).
pub const MAX_LABEL: usize = 128;

/// A label value as the text format wants it: `\\`, `\"` and newlines
/// escaped, at most [`MAX_LABEL`] bytes of the value kept.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct LabelValue(pub &'static str);

impl EncodeLabelValue for LabelValue {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(&escape_label(self.0))
    }
}

/// `s` cut to [`MAX_LABEL`] bytes on a character boundary, with `\`, `"`
/// and `\n` escaped (the Prometheus text format's label value rules).
pub fn escape_label(s: &str) -> String {
    let mut end = s.len().min(MAX_LABEL);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + 2);
    for c in s[..end].chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: LabelValue,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    kind: LabelValue,
    /// The runtime of the acting process's container; `none` on the host.
    runtime: LabelValue,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LostLabel {
    what: LabelValue,
}

/// The runtime label of a record's container: one of the names nstrace
/// gives ([`crate::enrich::container::RUNTIMES`]), `none` on the host, `other`
/// for anything else, so the label sets stay 8 kinds times 7 runtimes
/// whatever a process or a trace calls itself.
fn runtime_label(c: Option<&crate::model::Container>) -> &'static str {
    match c {
        None => "none",
        Some(c) => crate::enrich::container::RUNTIMES
            .into_iter()
            .find(|r| *r == c.runtime)
            .unwrap_or("other"),
    }
}

/// Every series, shared between the session (writes) and the endpoint
/// (reads): all atomics, so no lock is held while tracing.
struct Series {
    registry: Registry,
    alive: Family<KindLabel, Gauge>,
    created: Family<EventLabels, Counter>,
    joined: Family<EventLabels, Counter>,
    destroyed: Family<EventLabels, Counter>,
    failed: Family<EventLabels, Counter>,
    pinned: Family<KindLabel, Gauge>,
    leaked: Family<KindLabel, Gauge>,
    oldest_pinned: Family<KindLabel, Gauge<f64, AtomicU64>>,
    lost: Family<LostLabel, Counter>,
    /// A counter (`_total`), as CPU time only grows: `rate()` works on it.
    cpu: Counter<f64, AtomicU64>,
    ring_size: Gauge,
    ring_peak: Gauge,
    /// Connections closed unserved: over [`MAX_CONNECTIONS`], too slow, too big.
    refused: Family<RefusedLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabel {
    why: LabelValue,
}

pub struct Metrics {
    series: Arc<Series>,
    /// Memberless, pinned namespaces and since when (event-scale ns).
    pinned_since: HashMap<NsKey, i128>,
}

impl Metrics {
    /// Binds `addr` now (so a taken port is an error before tracing starts)
    /// and serves `/metrics` from a task on the current runtime.
    pub async fn serve(addr: SocketAddr, ring_bytes: u32) -> Result<Metrics> {
        let listener = listen(addr).map_err(|e| {
            hinted(
                format!("cannot listen on {addr} for --metrics: {e}"),
                "choose a free address, e.g. --metrics 127.0.0.1:9464",
            )
        })?;
        let series = Arc::new(Series::new());
        series.ring_size.set(i64::from(ring_bytes));
        tokio::spawn(accept_loop(listener, series.clone()));
        Ok(Metrics {
            series,
            pinned_since: HashMap::new(),
        })
    }

    /// Counts a record (before any filter).
    fn count(&mut self, r: &Record) {
        let Some(kind) = r.kind else { return };
        // An end's runtime: its last member's, else (the member already
        // gone unattributed, or a pin's end) the namespace's own.
        let container = match r.event {
            EventType::Destroy => r.container.as_ref().or(r.ns_container.as_ref()),
            _ => r.container.as_ref(),
        };
        let labels = EventLabels {
            kind: LabelValue(kind.name()),
            runtime: LabelValue(runtime_label(container)),
        };
        let s = &self.series;
        match r.event {
            EventType::Create => {
                s.created.get_or_create(&labels).inc();
            }
            EventType::Join => {
                s.joined.get_or_create(&labels).inc();
            }
            EventType::Destroy => {
                s.destroyed.get_or_create(&labels).inc();
            }
            EventType::Error => {
                s.failed.get_or_create(&labels).inc();
            }
            EventType::Pinned | EventType::Leak => {}
        }
        if let Some(inode) = r.inode {
            let key = (kind, inode);
            match r.event {
                EventType::Pinned | EventType::Leak => {
                    self.pinned_since.entry(key).or_insert(r.time_ns);
                }
                EventType::Join | EventType::Destroy | EventType::Create => {
                    self.pinned_since.remove(&key);
                }
                EventType::Error => {}
            }
        }
    }

    fn count_lost(&self, l: &Loss) {
        let s = &self.series;
        let add = |what, n: u64| {
            if n > 0 {
                s.lost
                    .get_or_create(&LostLabel {
                        what: LabelValue(what),
                    })
                    .inc_by(n);
            }
        };
        add("kernel_events", l.events);
        add("syscalls", l.syscalls_missed);
        add("unwatched_namespaces", l.unwatched);
        add("forgotten_namespaces", l.forgotten);
        add("untracked_exits", l.untracked);
        add("unfollowed_processes", l.unfollowed);
        add("probe_runs_skipped", l.skipped);
    }
}

/// Counting never fails: the server's errors are its own.
impl super::Sink for Metrics {
    fn record(&mut self, r: &Record) -> std::io::Result<()> {
        self.count(r);
        Ok(())
    }

    fn lost(&mut self, l: &Loss) -> std::io::Result<()> {
        self.count_lost(l);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Metrics {
    /// The gauges, from the registry as it is `now` (event-scale ns).
    pub fn refresh(&mut self, reg: &registry::Registry, now: i128) {
        let s = &self.series;
        let mut alive: HashMap<NsKind, i64> = NsKind::ALL.into_iter().map(|k| (k, 0)).collect();
        let mut pinned = alive.clone();
        let mut leaked = alive.clone();
        for e in reg.alive() {
            *alive.entry(e.kind).or_default() += 1;
            if e.leaked.is_some() {
                *leaked.entry(e.kind).or_default() += 1;
            }
            if matches!(e.state, State::Pinned(_)) {
                *pinned.entry(e.kind).or_default() += 1;
                // Pinned at start (no record): aged from when nstrace first saw it.
                self.pinned_since.entry(e.key()).or_insert(now);
            }
        }
        self.pinned_since.retain(|k, _| {
            reg.get(*k)
                .is_some_and(|e| matches!(e.state, State::Pinned(_)))
        });
        let mut oldest: HashMap<NsKind, i128> = HashMap::new();
        for (&(kind, _), &since) in &self.pinned_since {
            let o = oldest.entry(kind).or_insert(since);
            *o = (*o).min(since);
        }
        for kind in NsKind::ALL {
            let label = KindLabel {
                kind: LabelValue(kind.name()),
            };
            s.alive.get_or_create(&label).set(alive[&kind]);
            s.pinned.get_or_create(&label).set(pinned[&kind]);
            s.leaked.get_or_create(&label).set(leaked[&kind]);
            let age = oldest
                .get(&kind)
                .map_or(0.0, |&t| (now - t).max(0) as f64 / 1e9);
            s.oldest_pinned.get_or_create(&label).set(age);
        }
        let grown = own_cpu_seconds() - s.cpu.get();
        if grown > 0.0 {
            s.cpu.inc_by(grown);
        }
    }

    /// Bytes found waiting in the ring at one drain: its peak is how close
    /// the ring came to full (and to losing records).
    pub fn ring_backlog(&self, bytes: u64) {
        let peak = &self.series.ring_peak;
        if bytes as i64 > peak.get() {
            peak.set(bytes as i64);
        }
    }
}

impl Series {
    fn new() -> Self {
        let mut s = Series {
            registry: Registry::with_prefix("nstrace"),
            alive: Family::default(),
            created: Family::default(),
            joined: Family::default(),
            destroyed: Family::default(),
            failed: Family::default(),
            pinned: Family::default(),
            leaked: Family::default(),
            oldest_pinned: Family::default(),
            lost: Family::default(),
            cpu: Counter::default(),
            ring_size: Gauge::default(),
            ring_peak: Gauge::default(),
            refused: Family::default(),
        };
        s.registry.register(
            "namespaces_alive",
            "Namespaces alive now, by kind (those seen at start and since)",
            s.alive.clone(),
        );
        s.registry.register(
            "namespaces_created",
            "Namespaces created, by kind and container runtime of the creator",
            s.created.clone(),
        );
        s.registry.register(
            "namespaces_joined",
            "Namespaces joined with setns, by kind and runtime of the joiner",
            s.joined.clone(),
        );
        s.registry.register(
            "namespaces_destroyed",
            "Namespaces gone, by kind and runtime of their last member",
            s.destroyed.clone(),
        );
        s.registry.register(
            "namespace_syscalls_failed",
            "Namespace syscalls the kernel refused, by (first) kind and runtime",
            s.failed.clone(),
        );
        s.registry.register(
            "namespaces_pinned",
            "Namespaces with no member task, held by a mount, an fd or a child namespace",
            s.pinned.clone(),
        );
        s.registry.register(
            "namespaces_leaked",
            "Suspect leaks: namespaces still held after the container or pod they belonged to went (told by a leak record, --leak-after)",
            s.leaked.clone(),
        );
        s.registry.register(
            "oldest_pinned_namespace_age_seconds",
            "Age of the oldest pinned namespace of each kind, since it was pinned (or since nstrace started); 0 if none (a growing value is the CNI netns-leak signal)",
            s.oldest_pinned.clone(),
        );
        s.registry.register(
            "lost",
            "What nstrace could not record: kernel events (ring full), syscalls, unwatched namespaces, probe runs the kernel skipped",
            s.lost.clone(),
        );
        s.registry.register(
            "cpu_seconds",
            "CPU time nstrace's own process used (user + system)",
            s.cpu.clone(),
        );
        s.registry.register(
            "ring_buffer_size_bytes",
            "Size of the kernel ring buffer (--buffer-size)",
            s.ring_size.clone(),
        );
        s.registry.register(
            "ring_buffer_peak_backlog_bytes",
            "Most bytes waiting in the ring at one drain since start",
            s.ring_peak.clone(),
        );
        s.registry.register(
            "metrics_connections_refused",
            "Connections to this endpoint closed unserved: over the limit of 64 at once (busy), request head not in within 5 s (slow) or over 8 KiB (big); accept_failed: accepts that failed for want of descriptors or memory (each followed by a 100 ms pause)",
            s.refused.clone(),
        );
        s
    }

    fn refuse(&self, why: &'static str) {
        self.refused
            .get_or_create(&RefusedLabel {
                why: LabelValue(why),
            })
            .inc();
    }

    fn text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

fn own_cpu_seconds() -> f64 {
    use nix::sys::{resource, time::TimeValLike as _};
    let Ok(u) = resource::getrusage(resource::UsageWho::RUSAGE_SELF) else {
        return 0.0;
    };
    (u.user_time().num_microseconds() + u.system_time().num_microseconds()) as f64 / 1e6
}

/// A listener with a short queue: what waits there past [`ACCEPT_RATE`]
/// is served within about a second, and the kernel drops the rest.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_QUEUE)
}

/// Accepts connections for ever, serving at most [`MAX_CONNECTIONS`] at once.
async fn accept_loop(listener: TcpListener, series: Arc<Series>) {
    let busy = Arc::new(AtomicUsize::new(0));
    let rate = f64::from(ACCEPT_RATE);
    let (mut tokens, mut last) = (rate, tokio::time::Instant::now());
    loop {
        // At most ACCEPT_RATE accepts a second, served or refused alike:
        // past it, connections wait in the kernel's queue (and past that
        // the kernel drops them), costing this thread nothing.
        let now = tokio::time::Instant::now();
        tokens = (tokens + (now - last).as_secs_f64() * rate).min(rate);
        last = now;
        if tokens < 1.0 {
            tokio::time::sleep(Duration::from_secs_f64((1.0 - tokens) / rate)).await;
            continue;
        }
        let conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                // About one connection (gone before it was taken, or
                // refused by a filter): it left the queue, take the next.
                let one = matches!(
                    e.raw_os_error(),
                    Some(libc::ECONNABORTED | libc::EPERM | libc::EPROTO | libc::EINTR)
                );
                if !one {
                    // Out of descriptors or memory: what frees them is time.
                    series.refuse("accept_failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                continue;
            }
        };
        tokens -= 1.0;
        if busy.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            series.refuse("busy");
            drop(conn);
            continue;
        }
        busy.fetch_add(1, Ordering::Relaxed);
        let (busy, series) = (busy.clone(), series.clone());
        tokio::spawn(async move {
            let _ = answer(conn, &series).await;
            busy.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Where a request head ends: the blank line after the headers.
fn head_end(head: &[u8], from: usize) -> bool {
    head[from.saturating_sub(3)..]
        .windows(4)
        .any(|w| w == b"\r\n\r\n")
}

async fn answer(mut conn: tokio::net::TcpStream, series: &Series) -> std::io::Result<()> {
    let mut head = vec![0u8; MAX_HEAD];
    let mut len = 0;
    let read = async {
        while len < MAX_HEAD {
            let n = conn.read(&mut head[len..]).await?;
            if n == 0 {
                break;
            }
            len += n;
            if head_end(&head[..len], len - n) {
                return Ok(true);
            }
        }
        // Closed early (answer what came: a bare `GET /metrics`), or too big.
        std::io::Result::Ok(len < MAX_HEAD)
    };
    let (status, kind, body) = match tokio::time::timeout(HEAD_DEADLINE, read).await {
        Err(_) => {
            series.refuse("slow");
            return Ok(());
        }
        Ok(Err(e)) => return Err(e),
        Ok(Ok(false)) => {
            series.refuse("big");
            (
                "431 Request Header Fields Too Large",
                "text/plain; charset=utf-8",
                "request head over 8 KiB\n".to_string(),
            )
        }
        Ok(Ok(true)) => respond(&head[..len], series),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        conn.write_all(reply.as_bytes()).await?;
        conn.shutdown().await
    };
    // A client that does not read is left behind, not waited for.
    tokio::time::timeout(WRITE_DEADLINE, write)
        .await
        .unwrap_or(Ok(()))?;
    // What the client sent past the head is read (a little, briefly)
    // before closing: a close with unread data resets the connection, and
    // the reset can destroy the reply before the client reads it.
    let drain = async {
        let mut left = 64 * 1024;
        while left > 0 {
            match conn.read(&mut head).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left -= n.min(left),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
    Ok(())
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn respond(head: &[u8], series: &Series) -> (&'static str, &'static str, String) {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => ("200 OK", OPENMETRICS, series.text()),
        ("GET", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "nstrace: metrics at /metrics\n".into(),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Container;

    #[test]
    fn label_values_are_escaped_and_bounded() {
        assert_eq!(escape_label("docker"), "docker");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let long = "\u{e9}".repeat(100);
        let cut = escape_label(&long);
        assert_eq!(cut.len(), MAX_LABEL);
        assert!(cut.chars().all(|c| c == '\u{e9}'));
        let long = format!("a{}", "\u{e9}".repeat(100));
        assert_eq!(escape_label(&long).len(), MAX_LABEL - 1);
    }

    #[test]
    fn a_hostile_label_value_stays_inside_its_quotes() {
        let hostile: &'static str =
            Box::leak(format!("x\"}} 1\nnstrace_fake 9\n\\{}", "y".repeat(500)).into_boxed_str());
        let mut reg = Registry::default();
        let fam: Family<LostLabel, Counter> = Family::default();
        reg.register("t", "t", fam.clone());
        fam.get_or_create(&LostLabel {
            what: LabelValue(hostile),
        })
        .inc();
        let mut page = String::new();
        encode(&mut page, &reg).unwrap();
        let series: Vec<&str> = page.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(series.len(), 1, "{page}");
        assert!(!page.contains("\nnstrace_fake"), "{page}");
        let line = series[0];
        assert!(
            line.starts_with("t_total{what=\"x\\\"} 1\\nnstrace_fake 9\\n\\\\y"),
            "{line}"
        );
        assert!(line.ends_with("\"} 1"), "{line}");
        assert!(line.len() < MAX_LABEL * 2, "{line}");
    }

    #[test]
    fn runtime_labels_are_a_fixed_set() {
        assert_eq!(runtime_label(None), "none");
        let mut c = Container {
            id: "a".into(),
            runtime: "docker",
            name: Some("x\"\n".repeat(100)),
            pod: None,
            namespace: None,
        };
        assert_eq!(runtime_label(Some(&c)), "docker");
        c.runtime = "evil\"runtime";
        assert_eq!(runtime_label(Some(&c)), "other");
    }

    #[test]
    fn a_head_end_split_across_reads_is_found() {
        let head = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        for split in 1..head.len() {
            assert!(head_end(head, split), "{split}");
        }
        assert!(!head_end(b"GET / HTTP/1.1\r\n", 3));
        assert!(!head_end(b"", 0));
    }
}
