//! JSON Lines: one object per record; the schema is documented in the README.

use std::io::{self, Write};

use serde::{Serialize, Serializer, ser::SerializeMap};
use serde_json::{Map, Value, json};

use super::Sink;
use crate::{
    container::Container,
    errno,
    record::{EventType, Loss, NsKind, Record, flag_names},
    time::rfc3339,
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
    time: crate::time::Stamp,
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
    let by_kind: Map<String, Value> = l
        .by_kind
        .iter()
        .map(|(k, n)| ((*k).to_string(), json!(n)))
        .collect();
    json!({
        "time": rfc3339(l.time_ns),
        "event": "lost",
        "kernel_events": l.events,
        "kernel_events_total": l.events_total,
        "by_kind": by_kind,
        "syscalls_missed": l.syscalls_missed,
        "namespaces_unwatched": l.unwatched,
        "probe_runs_skipped": l.skipped,
    })
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
    use crate::record::{Actor, EventType, NsKind, Syscall};

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
    fn loss_notice_counts_by_kind() {
        let l = Loss {
            time_ns: 1_709_210_096_000_000_007,
            events: 12,
            events_total: 30,
            by_kind: vec![("unshare_setns", 10), ("exit", 2)],
            syscalls_missed: 1,
            unwatched: 0,
            skipped: 0,
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
            end: Some(crate::record::EndCause::LastMemberLeft),
            init_pid: Some(99),
            born: Some(crate::record::Birth {
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
