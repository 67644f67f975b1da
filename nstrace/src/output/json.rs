//! JSON Lines: one object per record; the schema is documented in the README.

use std::io::{self, Write};

use serde::{Serialize, Serializer, ser::SerializeMap};
use serde_json::{Map, Value, json};

use super::Sink;
use crate::{
    model::Container,
    model::{
        Actor, Birth, EndCause, EndMethod, EventType, Loss, NsKind, Record, Start, Stop, Syscall,
        flag_names,
    },
    sys::time::{parse_rfc3339, rfc3339},
    util::errno,
};

pub struct JsonSink<W: Write> {
    out: W,
}

impl<W: Write> JsonSink<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }
}

#[derive(Serialize)]
struct ContainerJson<'a> {
    id: &'a str,
    runtime: &'a str,
    name: &'a Option<String>,
    /// Kubernetes pod and namespace, only for CRI containers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: &'a Option<String>,
}

fn container(c: Option<&Container>) -> Option<ContainerJson<'_>> {
    c.map(|c| ContainerJson {
        id: &c.id,
        runtime: c.runtime,
        name: &c.name,
        pod: &c.pod,
        namespace: &c.namespace,
    })
}

#[derive(Serialize)]
struct BirthJson<'a> {
    time: crate::sys::time::Stamp,
    pid: u32,
    comm: &'a str,
    syscall: &'static str,
}

/// A record as its JSON object, written field by field straight to the
/// output: no intermediate `Value` tree (allocating one per record was a
/// third of nstrace's CPU under namespace churn).
struct RecordJson<'a>(&'a Record);

impl Serialize for RecordJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let a = r.actor.as_ref();
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("time", &rfc3339(r.time_ns))?;
        m.serialize_entry("event", r.event.name())?;
        m.serialize_entry("ns_type", &r.kind.map(|k| k.name()))?;
        m.serialize_entry("ns_inode", &r.inode)?;
        m.serialize_entry("ns_id", &r.ns_id)?;
        if let Some(p) = r.prev_inode {
            m.serialize_entry("prev_inode", &p)?;
        }
        m.serialize_entry("syscall", &r.syscall.map(|s| s.name()))?;
        m.serialize_entry("flags", &flag_names(r.flags))?;
        m.serialize_entry("raw_flags", &format_args!("{:#x}", r.flags))?;
        m.serialize_entry("pid", &a.map(|a| a.pid))?;
        m.serialize_entry("tid", &a.map(|a| a.tid))?;
        m.serialize_entry("ppid", &a.map(|a| a.ppid))?;
        m.serialize_entry("comm", &a.map(|a| a.comm.as_str()))?;
        m.serialize_entry("vpid", &a.map(|a| a.vpid))?;
        m.serialize_entry("uid", &a.map(|a| a.uid))?;
        if let Some(a) = a.filter(|a| a.euid != a.uid) {
            m.serialize_entry("euid", &a.euid)?;
        }
        // Who may create a user namespace is the first question about one:
        // without CAP_SYS_ADMIN where it was made, it was made unprivileged.
        if let (EventType::Create, Some(NsKind::User), Some(a)) = (r.event, r.kind, a) {
            m.serialize_entry("unprivileged", &!a.admin)?;
        }
        m.serialize_entry("container", &container(r.container.as_ref()))?;
        if let Some(v) = r.child_pid {
            m.serialize_entry("child_pid", &v)?;
        }
        // `flags` are the kernel's; what the caller's memory said is detail.
        if r.flags_unread {
            m.serialize_entry("flags_read", &false)?;
        }
        if let Some(f) = r.claimed_flags {
            m.serialize_entry("claimed_flags", &format_args!("{f:#x}"))?;
        }
        if let Some(v) = r.fd {
            m.serialize_entry("fd", &v)?;
        }
        if let Some(e) = r.errno {
            m.serialize_entry("errno", &errno::name(e))?;
            m.serialize_entry("errno_num", &e)?;
        }
        if let Some(v) = r.owner_inode {
            m.serialize_entry("owner_user_ns", &v)?;
        }
        if let Some(v) = r.parent_inode {
            m.serialize_entry("parent_pid_ns", &v)?;
        }
        if let Some(b) = &r.born {
            m.serialize_entry(
                "ns_created",
                &BirthJson {
                    time: rfc3339(b.time_ns),
                    pid: b.pid,
                    comm: &b.comm,
                    syscall: b.syscall.name(),
                },
            )?;
        }
        if r.ns_container.is_some() {
            m.serialize_entry("ns_container", &container(r.ns_container.as_ref()))?;
        }
        if r.event == EventType::Destroy {
            if let Some(e) = r.end {
                m.serialize_entry("end", e.name())?;
            }
            if let Some(b) = r.end_by {
                m.serialize_entry("end_by", b.name())?;
            }
            let lifetime = r.born.as_ref().map(|b| (r.time_ns - b.time_ns) as i64);
            m.serialize_entry("lifetime_ns", &lifetime)?;
            if let Some(v) = r.init_pid {
                m.serialize_entry("init_pid", &v)?;
            }
        }
        if r.event == EventType::Pinned {
            m.serialize_entry("pinned_by", &r.pinned_by)?;
        }
        m.end()
    }
}

/// The JSON object for a loss notice: `"event": "lost"`, counts since the
/// previous notice.
pub fn loss_to_json(l: &Loss) -> Value {
    let pairs = |p: &[(&str, u64)]| -> Map<String, Value> {
        p.iter()
            .map(|(k, n)| ((*k).to_string(), json!(n)))
            .collect()
    };
    let by_kind = pairs(&l.by_kind);
    json!({
        "time": rfc3339(l.time_ns),
        "event": "lost",
        "kernel_events": l.events,
        "kernel_events_total": l.events_total,
        "by_kind": by_kind,
        "syscalls_missed": l.syscalls_missed,
        "namespaces_unwatched": l.unwatched,
        "namespaces_forgotten": l.forgotten,
        "exits_untracked": l.untracked,
        "processes_unfollowed": l.unfollowed,
        "probe_runs_skipped": l.skipped,
        "probe_runs_skipped_by": pairs(&l.skipped_by),
    })
}

/// The `start` line: `{"event": "start", "time", "kernel", "ends",
/// "ends_by_kind": {"net": "fentry", ...}, "alive": [...]}`.
pub fn start_to_json(st: &Start) -> Value {
    let alive: Vec<Value> = st
        .alive
        .iter()
        .map(|(k, i, id)| json!({"ns_type": k.name(), "ns_inode": i, "ns_id": id}))
        .collect();
    json!({
        "time": rfc3339(st.time_ns),
        "event": "start",
        "kernel": st.kernel,
        "ends": st.ends,
        "ends_by_kind": st
            .ends_by_kind
            .iter()
            .map(|(k, m)| (k.name().to_string(), Value::from(m.name())))
            .collect::<serde_json::Map<_, _>>(),
        "alive": alive,
    })
}

/// The `stop` line: `{"event": "stop", "time", "records", "kernel_events", "lost"}`.
pub fn stop_to_json(st: &Stop) -> Value {
    json!({
        "time": rfc3339(st.time_ns),
        "event": "stop",
        "records": st.records,
        "kernel_events": st.kernel_events,
        "lost": st.lost,
    })
}

/// One line of a saved trace, read back (`nstrace report`).
#[derive(Debug)]
pub enum Line {
    Start(Start),
    Record(Box<Record>),
    /// A loss notice: kernel events dropped since the previous one.
    Lost(u64),
    Stop(Stop),
}

/// A time read from a trace, if it is one nstrace could have written:
/// 1970 to 2262 (Unix nanoseconds that fit an `i64`). Every difference of
/// two then fits an `i64` too, so lifetimes and ages computed from a
/// foreign trace cannot overflow or wrap.
fn trace_time(s: &str) -> Option<i128> {
    parse_rfc3339(s).filter(|t| (0..=i128::from(i64::MAX)).contains(t))
}

/// Reads one JSON line as nstrace wrote it; `Err` says what is wrong.
/// Never panics, whatever `text` is: fields of the wrong type or out of
/// range read as absent.
pub fn parse_line(text: &str) -> Result<Line, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let time = |v: &Value| {
        v["time"]
            .as_str()
            .and_then(trace_time)
            .ok_or("no valid \"time\" (RFC 3339, UTC, 1970 to 2262)")
    };
    let u64_of = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    let event = v["event"].as_str().ok_or("no \"event\"")?;
    Ok(match event {
        "start" => Line::Start(Start {
            time_ns: time(&v)?,
            kernel: v["kernel"].as_str().unwrap_or_default().to_string(),
            ends: v["ends"].as_str().unwrap_or_default().to_string(),
            ends_by_kind: v["ends_by_kind"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, m)| {
                    Some((NsKind::from_name(k)?, EndMethod::from_name(m.as_str()?)?))
                })
                .collect(),
            alive: v["alive"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| {
                    Some((
                        NsKind::from_name(n["ns_type"].as_str()?)?,
                        u32::try_from(n["ns_inode"].as_u64()?).ok()?,
                        n["ns_id"].as_u64(),
                    ))
                })
                .collect(),
        }),
        "stop" => Line::Stop(Stop {
            time_ns: time(&v)?,
            records: u64_of(&v, "records"),
            kernel_events: u64_of(&v, "kernel_events"),
            lost: u64_of(&v, "lost"),
        }),
        "lost" => Line::Lost(u64_of(&v, "kernel_events")),
        name => {
            let event =
                EventType::from_name(name).ok_or_else(|| format!("unknown event {name:?}"))?;
            Line::Record(Box::new(record_from_json(&v, event, time(&v)?)))
        }
    })
}

fn record_from_json(v: &Value, event: EventType, time_ns: i128) -> Record {
    let u32_of = |v: &Value, k: &str| v[k].as_u64().and_then(|n| u32::try_from(n).ok());
    let str_of = |v: &Value, k: &str| v[k].as_str().map(str::to_string);
    let actor = u32_of(v, "pid").map(|pid| {
        let uid = u32_of(v, "uid").unwrap_or(0);
        Actor {
            pid,
            tid: u32_of(v, "tid").unwrap_or(pid),
            ppid: u32_of(v, "ppid").unwrap_or(0),
            comm: str_of(v, "comm").unwrap_or_default(),
            vpid: u32_of(v, "vpid").unwrap_or(0),
            uid,
            euid: u32_of(v, "euid").unwrap_or(uid),
            admin: !v["unprivileged"].as_bool().unwrap_or(false),
            ..Actor::default()
        }
    });
    let container = |c: &Value| {
        Some(Container {
            id: c["id"].as_str()?.to_string(),
            runtime: crate::enrich::container::runtime_name(c["runtime"].as_str().unwrap_or("")),
            name: str_of(c, "name"),
            pod: str_of(c, "pod"),
            namespace: str_of(c, "namespace"),
        })
    };
    let born = &v["ns_created"];
    Record {
        time_ns,
        event,
        kind: v["ns_type"].as_str().and_then(NsKind::from_name),
        inode: u32_of(v, "ns_inode"),
        ns_id: v["ns_id"].as_u64(),
        prev_inode: u32_of(v, "prev_inode"),
        syscall: v["syscall"].as_str().and_then(Syscall::from_name),
        flags: v["raw_flags"]
            .as_str()
            .and_then(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok())
            .unwrap_or(0),
        actor,
        child_pid: u32_of(v, "child_pid"),
        flags_unread: v["flags_read"] == false,
        claimed_flags: v["claimed_flags"]
            .as_str()
            .and_then(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok()),
        fd: v["fd"].as_i64().and_then(|n| i32::try_from(n).ok()),
        errno: v["errno_num"].as_i64().and_then(|n| i32::try_from(n).ok()),
        owner_inode: u32_of(v, "owner_user_ns"),
        parent_inode: u32_of(v, "parent_pid_ns"),
        born: (|| {
            Some(Birth {
                time_ns: trace_time(born["time"].as_str()?)?,
                pid: u32_of(born, "pid")?,
                comm: str_of(born, "comm")?,
                syscall: Syscall::from_name(born["syscall"].as_str()?)?,
            })
        })(),
        end: v["end"].as_str().and_then(EndCause::from_name),
        end_by: v["end_by"].as_str().and_then(EndMethod::from_name),
        init_pid: u32_of(v, "init_pid"),
        pinned_by: v["pinned_by"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str().map(str::to_string))
            .collect(),
        container: container(&v["container"]),
        ns_container: container(&v["ns_container"]),
        followed: false,
    }
}

impl<W: Write> Sink for JsonSink<W> {
    fn record(&mut self, r: &Record) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, &RecordJson(r))?;
        self.out.write_all(b"\n")
    }

    fn lost(&mut self, l: &Loss) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, &loss_to_json(l))?;
        self.out.write_all(b"\n")
    }

    fn start(&mut self, st: &Start) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, &start_to_json(st))?;
        self.out.write_all(b"\n")
    }

    fn stop(&mut self, st: &Stop) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, &stop_to_json(st))?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_json(r: &Record) -> Value {
        serde_json::to_value(RecordJson(r)).expect("records serialize")
    }
    use crate::model::{Actor, EventType, NsKind, Syscall};

    fn record() -> Record {
        Record {
            time_ns: 1_709_210_096_000_000_007,
            event: EventType::Create,
            kind: Some(NsKind::Net),
            inode: Some(4026532310),
            ns_id: None,
            prev_inode: Some(4026531840),
            syscall: Some(Syscall::Unshare),
            flags: NsKind::Net.flag() | NsKind::Uts.flag(),
            actor: Some(Actor {
                pid: 10,
                tid: 11,
                ppid: 1,
                comm: "unshare".into(),
                vpid: 0,
                cgroup: 0,
                ..Actor::default()
            }),
            ..Record::default()
        }
    }

    #[test]
    fn records_read_back_as_written() {
        let mut r = record();
        r.container = Some(Container {
            id: "abc".into(),
            runtime: "docker",
            name: Some("web".into()),
            pod: None,
            namespace: None,
        });
        r.owner_inode = Some(4026531837);
        // JSON says `unprivileged` only of user-namespace creates; read
        // back, any other actor counts as privileged.
        if let Some(a) = &mut r.actor {
            a.admin = true;
        }
        let back = match parse_line(&to_json(&r).to_string()).unwrap() {
            Line::Record(b) => *b,
            other => panic!("{other:?}"),
        };
        assert_eq!(back, r);
        let d = Record {
            time_ns: 3_000,
            event: EventType::Destroy,
            kind: Some(NsKind::Pid),
            inode: Some(7),
            end: Some(crate::model::EndCause::PinReleased),
            end_by: Some(crate::model::EndMethod::NsfsHandle),
            born: Some(Birth {
                time_ns: 1_000,
                pid: 5,
                comm: "unshare".into(),
                syscall: Syscall::Unshare,
            }),
            ..Record::default()
        };
        match parse_line(&to_json(&d).to_string()).unwrap() {
            Line::Record(b) => assert_eq!(*b, d),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn start_and_stop_read_back() {
        let st = Start {
            time_ns: 5_000_000_001,
            kernel: "6.18.0".into(),
            ends: "fentry".into(),
            ends_by_kind: vec![(NsKind::Net, EndMethod::Fentry)],
            alive: vec![
                (NsKind::Net, 4026531840, Some(1)),
                (NsKind::Uts, 4026531838, None),
            ],
        };
        match parse_line(&start_to_json(&st).to_string()).unwrap() {
            Line::Start(back) => assert_eq!(back, st),
            other => panic!("{other:?}"),
        }
        let sp = Stop {
            time_ns: 9_000_000_000,
            records: 3,
            kernel_events: 4,
            lost: 1,
        };
        match parse_line(&stop_to_json(&sp).to_string()).unwrap() {
            Line::Stop(back) => assert_eq!(back, sp),
            other => panic!("{other:?}"),
        }
        assert!(parse_line("{").is_err());
        assert!(parse_line(r#"{"event":"born","time":"2024-02-29T12:34:56Z"}"#).is_err());
    }

    #[test]
    fn loss_notice_counts_by_kind() {
        let l = Loss {
            time_ns: 1_709_210_096_000_000_007,
            events: 12,
            events_total: 30,
            by_kind: vec![("unshare_setns", 10), ("exit", 2)],
            syscalls_missed: 1,
            unwatched: 0,
            skipped: 0,
            skipped_by: vec![],
            ..Loss::default()
        };
        let v = loss_to_json(&l);
        assert_eq!(v["event"], "lost");
        assert_eq!(v["kernel_events"], 12);
        assert_eq!(v["kernel_events_total"], 30);
        assert_eq!(v["by_kind"]["unshare_setns"], 10);
        assert_eq!(v["by_kind"]["exit"], 2);
        assert_eq!(v["syscalls_missed"], 1);
        assert_eq!(v["time"], "2024-02-29T12:34:56.000000007Z");
    }

    #[test]
    fn create_record_has_the_documented_fields() {
        let v = to_json(&record());
        assert_eq!(v["time"], "2024-02-29T12:34:56.000000007Z");
        assert_eq!(v["event"], "create");
        assert_eq!(v["ns_type"], "net");
        assert_eq!(v["ns_inode"], 4026532310u64);
        assert!(v["ns_id"].is_null());
        assert_eq!(v["prev_inode"], 4026531840u64);
        assert_eq!(v["syscall"], "unshare");
        assert_eq!(v["flags"], json!(["CLONE_NEWUTS", "CLONE_NEWNET"]));
        assert_eq!(v["pid"], 10);
        assert_eq!(v["tid"], 11);
        assert_eq!(v["ppid"], 1);
        assert_eq!(v["comm"], "unshare");
        assert!(v.get("errno").is_none());
    }

    #[test]
    fn destroy_record_has_lifetime_cause_and_null_syscall() {
        let r = Record {
            time_ns: 3_000,
            event: EventType::Destroy,
            kind: Some(NsKind::Pid),
            inode: Some(7),
            end: Some(crate::model::EndCause::LastMemberLeft),
            init_pid: Some(99),
            born: Some(crate::model::Birth {
                time_ns: 1_000,
                pid: 5,
                comm: "unshare".into(),
                syscall: Syscall::Unshare,
            }),
            ..Record::default()
        };
        let v = to_json(&r);
        assert_eq!(v["event"], "destroy");
        assert!(v["syscall"].is_null());
        assert!(v["pid"].is_null());
        assert_eq!(v["lifetime_ns"], 2_000);
        assert_eq!(v["end"], "last-member-left");
        assert_eq!(v["init_pid"], 99);
        assert_eq!(v["ns_created"]["comm"], "unshare");
        assert_eq!(v["flags"], json!([]));
    }

    #[test]
    fn error_record_names_the_errno_and_lines_are_json() {
        let mut r = record();
        r.event = EventType::Error;
        r.errno = Some(1);
        r.inode = None;
        r.prev_inode = None;
        let mut out = Vec::new();
        let mut sink = JsonSink::new(&mut out);
        sink.record(&r).unwrap();
        sink.record(&r).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let v: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["errno"], "EPERM");
        assert_eq!(v["event"], "error");
        assert!(v["ns_inode"].is_null());
        assert!(v.get("prev_inode").is_none());
    }
}
