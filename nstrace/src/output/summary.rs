//! The closing summary: totals per kind, namespaces created while tracing that
//! are still alive (possible leaks), and the longest-lived.

use std::fmt::Write as _;

use crate::{
    model::{NsKind, Start, Stop},
    output::{text::human_duration, timeline::Timeline},
    state::registry::{Entry, Registry, State},
    util::escape::Escaped,
};

/// A trace summed up: what `nstrace report` reads back from a saved one.
pub struct Saved {
    pub start: Option<Start>,
    pub stop: Option<Stop>,
    pub registry: Registry,
    /// Namespace records read (lines other than start, stop and lost).
    pub records: u64,
    /// Kernel events the loss notices counted.
    pub lost: u64,
    /// The last record's time: the end, when there is no stop line.
    pub last_ns: i128,
    pub timeline: Timeline,
}

impl Saved {
    /// When the trace ended: its stop line, else its last record.
    pub fn end_ns(&self) -> i128 {
        self.stop.map_or(self.last_ns, |s| s.time_ns)
    }
}

fn creator(e: &Entry) -> String {
    e.born
        .as_ref()
        .map(|b| {
            format!(
                "by {} (pid {}, {})",
                Escaped(&b.comm),
                b.pid,
                b.syscall.name()
            )
        })
        .unwrap_or_default()
}

/// The summary's lines after the first (records/lost) line. Command names
/// and pin paths in it are escaped ([`crate::util::escape`]): it goes to a terminal.
pub fn render(reg: &Registry, now_ns: i128) -> String {
    let mut s = String::new();
    let totals = reg.totals();
    if totals.is_empty() {
        return s;
    }
    let _ = writeln!(
        s,
        "  {:<7} {:>8} {:>7} {:>10} {:>11}",
        "kind", "created", "joined", "destroyed", "alive now"
    );
    for kind in NsKind::ALL {
        let t = totals.get(&kind).copied().unwrap_or_default();
        let alive = reg.alive().filter(|e| e.kind == kind).count();
        let _ = writeln!(
            s,
            "  {:<7} {:>8} {:>7} {:>10} {:>11}",
            kind.name(),
            t.created,
            t.joined,
            t.destroyed,
            alive
        );
    }
    let leaks = reg.leaks();
    if !leaks.is_empty() {
        let _ = writeln!(
            s,
            "  created while tracing and still alive (possible leaks):"
        );
        for e in leaks {
            let age = e
                .born
                .as_ref()
                .map(|b| human_duration(now_ns - b.time_ns))
                .unwrap_or_default();
            let state = match &e.state {
                State::Pinned(by) => {
                    let by: Vec<_> = by.iter().map(|p| Escaped(p).to_string()).collect();
                    format!(", no member, held by {}", by.join(", "))
                }
                State::Alive => String::new(),
            };
            let state = match (&e.leaked, &e.container) {
                (Some(_), Some(c)) => format!(
                    "{state}; a suspect leak: its container {} is gone",
                    Escaped(c.name.as_deref().unwrap_or(c.short_id()))
                ),
                _ => state,
            };
            let _ = writeln!(
                s,
                "    {} {} {}, {age} old{state}",
                e.kind.name(),
                e.inode,
                creator(e)
            );
        }
    }
    if let Some(e) = reg.longest_ended() {
        let _ = writeln!(
            s,
            "  longest-lived of those that ended: {} {}, {} {}",
            e.kind.name(),
            e.inode,
            human_duration(e.lifetime_ns().unwrap_or(0)),
            creator(e)
        );
    }
    s
}

/// The closing line and summary of a saved trace, as the live run printed
/// them (`nstrace report`), with a note where the trace was cut short.
pub fn closing(saved: &Saved) -> String {
    let mut s = String::new();
    match saved.stop {
        Some(st) => {
            let _ = writeln!(
                s,
                "nstrace: {} records ({} kernel events), {} lost",
                st.records, st.kernel_events, st.lost
            );
        }
        None => {
            let _ = writeln!(
                s,
                "nstrace: {} records, {} lost (no stop line: the trace was cut short; summed up to its last record)",
                saved.records, saved.lost
            );
        }
    }
    if saved.start.is_none() {
        let _ = writeln!(
            s,
            "nstrace: no start line: namespaces alive before the trace are not counted"
        );
    }
    s.push_str(&render(&saved.registry, saved.end_ns()));
    s
}

/// A duration for JSON: exact within `i64`, else its nearer bound.
fn saturating_i64(ns: i128) -> i64 {
    ns.clamp(i64::MIN.into(), i64::MAX.into()) as i64
}

/// The summary as one JSON object (`nstrace report --json`).
pub fn to_json(saved: &Saved) -> serde_json::Value {
    use serde_json::json;
    let reg = &saved.registry;
    let end = saved.end_ns();
    let totals = reg.totals();
    let kinds: serde_json::Map<String, serde_json::Value> = NsKind::ALL
        .into_iter()
        .map(|kind| {
            let t = totals.get(&kind).copied().unwrap_or_default();
            let alive = reg.alive().filter(|e| e.kind == kind).count();
            (
                kind.name().to_string(),
                json!({"created": t.created, "joined": t.joined, "destroyed": t.destroyed, "alive": alive}),
            )
        })
        .collect();
    let entry = |e: &Entry| {
        json!({
            "ns_type": e.kind.name(),
            "ns_inode": e.inode,
            "ns_id": e.ns_id,
            "ns_created": e.born.as_ref().map(|b| json!({
                "time": crate::sys::time::rfc3339(b.time_ns),
                "pid": b.pid,
                "comm": b.comm,
                "syscall": b.syscall.name(),
            })),
            "pinned_by": match &e.state {
                State::Pinned(by) => json!(by),
                State::Alive => serde_json::Value::Null,
            },
            "lifetime_ns": e.lifetime_ns().map(saturating_i64),
            "age_ns": e.born.as_ref().filter(|_| e.ended_ns.is_none()).map(|b| saturating_i64(end - b.time_ns)),
            "suspect_leak": e.leaked.is_some(),
        })
    };
    json!({
        "start": saved.start.as_ref().map(|s| crate::sys::time::rfc3339(s.time_ns)),
        "stop": saved.stop.map(|s| crate::sys::time::rfc3339(s.time_ns)),
        "records": saved.stop.map_or(saved.records, |s| s.records),
        "lost": saved.stop.map_or(saved.lost, |s| s.lost),
        "kinds": kinds,
        "possible_leaks": reg.leaks().into_iter().map(entry).collect::<Vec<_>>(),
        "longest_ended": reg.longest_ended().map(entry),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Actor, EventType, Record, Syscall};

    #[test]
    fn names_leaks_and_the_longest_lived() {
        let mut reg = Registry::default();
        for (inode, t) in [(7, 1_000_000_000), (8, 2_000_000_000)] {
            let mut r = Record {
                time_ns: t,
                event: EventType::Create,
                kind: Some(NsKind::Net),
                inode: Some(inode),
                syscall: Some(Syscall::Unshare),
                actor: Some(Actor {
                    pid: 42,
                    tid: 42,
                    ppid: 1,
                    comm: "unshare".into(),
                    vpid: 0,
                    cgroup: 0,
                    ..Actor::default()
                }),
                ..Record::default()
            };
            reg.observe(&mut r);
        }
        reg.end((NsKind::Net, 7), 4_000_000_000);
        let s = render(&reg, 5_000_000_000);
        assert!(s.contains("net            2       0          1"), "{s}");
        assert!(
            s.contains("net 8 by unshare (pid 42, unshare), 3.000s old"),
            "{s}"
        );
        assert!(
            s.contains("longest-lived of those that ended: net 7, 3.000s"),
            "{s}"
        );
    }

    #[test]
    fn names_and_pin_paths_are_escaped() {
        let mut reg = Registry::default();
        let mut r = Record {
            time_ns: 1_000_000_000,
            event: EventType::Create,
            kind: Some(NsKind::Uts),
            inode: Some(9),
            syscall: Some(Syscall::Unshare),
            actor: Some(Actor {
                pid: 42,
                tid: 42,
                comm: "\x1b]0;t\x07".into(),
                ..Actor::default()
            }),
            ..Record::default()
        };
        reg.observe(&mut r);
        reg.pin((NsKind::Uts, 9), vec!["mount /tmp/\x1b[2J\u{202e}".into()]);
        let s = render(&reg, 5_000_000_000);
        assert!(
            s.contains(r"uts 9 by \e]0;t\x07 (pid 42, unshare), 4.000s old, no member, held by mount /tmp/\e[2J\u{202e}"),
            "{s}"
        );
        assert!(!s.contains('\x1b') && !s.contains('\x07') && !s.contains('\u{202e}'));
    }
}
