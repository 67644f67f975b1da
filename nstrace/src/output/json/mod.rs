//! JSON Lines: one object per record; the schema is documented in the README
//! and defined once, for writing and reading, in [`wire`].

mod fast;
mod wire;

use std::io::{self, Write};

pub use wire::{Line, Wire};

use super::Sink;
use crate::model::{Loss, Record, Start, Stop};

pub struct JsonSink<W: Write> {
    out: W,
    /// Record lines not yet handed to `out`.
    lines: Vec<u8>,
}

/// Bytes of record lines handed to `out` at once.
const CHUNK: usize = 32 * 1024;

impl<W: Write> JsonSink<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            lines: Vec::with_capacity(CHUNK + 4096),
        }
    }

    fn pass_on(&mut self) -> io::Result<()> {
        let r = self.out.write_all(&self.lines);
        self.lines.clear();
        r
    }

    fn line(&mut self, w: &Wire) -> io::Result<()> {
        // After the records before it.
        self.pass_on()?;
        serde_json::to_writer(&mut self.out, w)?;
        self.out.write_all(b"\n")
    }
}

/// As `BufWriter`, whatever ends the sink without a flush still writes
/// what it holds.
impl<W: Write> Drop for JsonSink<W> {
    fn drop(&mut self) {
        let _ = self.pass_on();
    }
}

/// Reads one JSON line as nstrace wrote it; `Err` says what is wrong.
/// Never panics, whatever `text` is: fields of the wrong type or out of
/// range read as absent.
pub fn parse_line(text: &str) -> Result<Line, String> {
    // serde reads a struct from an array too (fields by position); a line
    // nstrace writes is always an object.
    if !text.trim_start().starts_with('{') {
        return Err("not a JSON object".into());
    }
    serde_json::from_str::<Wire>(text)
        .map_err(|e| format!("not a line nstrace writes: {e}"))?
        .line()
}

impl<W: Write> Sink for JsonSink<W> {
    fn record(&mut self, r: &Record) -> io::Result<()> {
        // Lines gather here and go on in chunks: one copy per chunk instead
        // of a small one per line (musl's memcpy makes those dear).
        fast::record(&mut self.lines, r);
        self.lines.push(b'\n');
        if self.lines.len() >= CHUNK {
            self.pass_on()?;
        }
        Ok(())
    }

    fn lost(&mut self, l: &Loss) -> io::Result<()> {
        self.line(&Wire::lost(l))
    }

    fn start(&mut self, st: &Start) -> io::Result<()> {
        self.line(&Wire::start(st))
    }

    fn stop(&mut self, st: &Stop) -> io::Result<()> {
        self.line(&Wire::stop(st))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.pass_on()?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::{Value, json};

    use crate::model::{Actor, Birth, Container, EndCause, EndMethod, EventType, NsKind, Syscall};

    fn to_json(r: &Record) -> Value {
        serde_json::to_value(Wire::record(r)).expect("records serialize")
    }

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
            end: Some(EndCause::PinReleased),
            end_by: Some(EndMethod::NsfsHandle),
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
        match parse_line(&serde_json::to_string(&Wire::start(&st)).unwrap()).unwrap() {
            Line::Start(back) => assert_eq!(back, st),
            other => panic!("{other:?}"),
        }
        let sp = Stop {
            time_ns: 9_000_000_000,
            records: 3,
            kernel_events: 4,
            lost: 1,
        };
        match parse_line(&serde_json::to_string(&Wire::stop(&sp)).unwrap()).unwrap() {
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
        let v = serde_json::to_value(Wire::lost(&l)).unwrap();
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
            end: Some(EndCause::LastMemberLeft),
            init_pid: Some(99),
            born: Some(Birth {
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
        drop(sink);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let v: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["errno"], "EPERM");
        assert_eq!(v["event"], "error");
        assert!(v["ns_inode"].is_null());
        assert!(v.get("prev_inode").is_none());
    }

    /// A trace the previous writer (hand-written, before [`Wire`]) saved:
    /// a real run on the 6.18 host (unshare, nsenter, ip netns, an
    /// unprivileged unshare refused) plus container, join, fentry-destroy
    /// and loss lines it wrote in a test.
    const SAVED: &str = include_str!("testdata/trace-2026-12.jsonl");

    #[test]
    fn traces_saved_before_the_wire_type_read_and_rewrite_byte_for_byte() {
        let mut seen = std::collections::BTreeMap::<&str, usize>::new();
        for (n, text) in SAVED.lines().enumerate() {
            let line = parse_line(text).unwrap_or_else(|e| panic!("line {}: {e}", n + 1));
            let mut out = Vec::new();
            let mut sink = JsonSink::new(&mut out);
            let kind = match &line {
                Line::Start(st) => {
                    sink.start(st).unwrap();
                    "start"
                }
                Line::Record(r) => {
                    sink.record(r).unwrap();
                    r.event.name()
                }
                Line::Stop(st) => {
                    sink.stop(st).unwrap();
                    "stop"
                }
                Line::Lost(n) => {
                    // A loss reads back as its count only.
                    assert_eq!(*n, 12);
                    *seen.entry("lost").or_default() += 1;
                    continue;
                }
            };
            *seen.entry(kind).or_default() += 1;
            drop(sink);
            assert_eq!(
                String::from_utf8(out).unwrap().trim_end(),
                text,
                "line {}",
                n + 1
            );
        }
        for kind in [
            "start", "create", "join", "pinned", "destroy", "error", "lost", "stop",
        ] {
            assert!(
                seen.contains_key(kind),
                "no {kind} line in the fixture: {seen:?}"
            );
        }
    }

    #[test]
    fn only_objects_are_lines() {
        assert!(parse_line(r#"["2024-02-29T12:34:56Z", "create"]"#).is_err());
        assert!(parse_line(r#""create""#).is_err());
        assert!(parse_line("").is_err());
        let twice = r#"{"event":"stop","event":"start","time":"2024-02-29T12:34:56Z"}"#;
        assert!(parse_line(twice).is_err());
    }

    #[test]
    fn fields_of_the_wrong_type_read_as_absent() {
        let text = r#"{"time":"2024-02-29T12:34:56Z","event":"join","ns_type":7,
            "ns_inode":-1,"ns_id":"x","pid":4294967296,"comm":{"a":[1,2]},"fd":1.5,
            "container":"web","ns_created":[1],"pinned_by":["a",3,null,"b"],
            "raw_flags":"0xZZ","flags":"anything"}"#
            .replace('\n', "");
        let Line::Record(r) = parse_line(&text).unwrap() else {
            panic!("not a record")
        };
        assert_eq!((r.kind, r.inode, r.ns_id, r.fd), (None, None, None, None));
        assert_eq!((r.actor, r.container, r.born), (None, None, None));
        assert_eq!(r.pinned_by, ["a", "b"]);
        assert_eq!(r.flags, 0);
    }

    mod round_trip {
        use proptest::prelude::*;

        use super::*;
        use crate::enrich::container::RUNTIMES;

        fn container() -> impl Strategy<Value = Container> {
            (
                ".{0,70}",
                prop::sample::select(&RUNTIMES[..]),
                prop::option::of(".{0,20}"),
                prop::option::of(".{0,20}"),
                prop::option::of(".{0,20}"),
            )
                .prop_map(|(id, runtime, name, pod, namespace)| Container {
                    id,
                    runtime,
                    name,
                    pod,
                    namespace,
                })
        }

        fn time() -> impl Strategy<Value = i128> {
            (0..=i64::MAX).prop_map(i128::from)
        }

        fn actor() -> impl Strategy<Value = Actor> {
            (any::<[u32; 6]>(), "\\PC{0,16}|.{0,16}", any::<bool>()).prop_map(
                |([pid, tid, ppid, vpid, uid, euid], comm, admin)| Actor {
                    pid,
                    tid,
                    ppid,
                    comm,
                    vpid,
                    uid,
                    euid,
                    admin,
                    ..Actor::default()
                },
            )
        }

        fn birth() -> impl Strategy<Value = Birth> {
            (
                time(),
                any::<u32>(),
                ".{0,16}",
                prop::sample::select(&Syscall::ALL[..]),
            )
                .prop_map(|(time_ns, pid, comm, syscall)| Birth {
                    time_ns,
                    pid,
                    comm,
                    syscall,
                })
        }

        prop_compose! {
            fn record()(
                (time_ns, event, kind, inode, ns_id, prev_inode, syscall, flags) in (
                    time(),
                    prop::sample::select(&EventType::ALL[..]),
                    prop::option::of(prop::sample::select(&NsKind::ALL[..])),
                    any::<Option<u32>>(),
                    any::<Option<u64>>(),
                    any::<Option<u32>>(),
                    prop::option::of(prop::sample::select(&Syscall::ALL[..])),
                    any::<u64>(),
                ),
                (actor, child_pid, fd, flags_unread, claimed_flags, errno, owner_inode, parent_inode) in (
                    prop::option::of(actor()),
                    any::<Option<u32>>(),
                    any::<Option<i32>>(),
                    any::<bool>(),
                    any::<Option<u64>>(),
                    any::<Option<i32>>(),
                    any::<Option<u32>>(),
                    any::<Option<u32>>(),
                ),
                (born, end, end_by, init_pid, pinned_by, container, ns_container, age_ns) in (
                    prop::option::of(birth()),
                    prop::option::of(prop::sample::select(&EndCause::ALL[..])),
                    prop::option::of(prop::sample::select(&EndMethod::ALL[..])),
                    any::<Option<u32>>(),
                    prop::collection::vec(".{0,30}", 0..4),
                    prop::option::of(container()),
                    prop::option::of(container()),
                    prop::option::of(any::<i64>().prop_map(i128::from)),
                ),
            ) -> Record {
                let mut r = Record {
                    time_ns, event, kind, inode, ns_id, prev_inode, syscall, flags, actor,
                    child_pid, fd, flags_unread, claimed_flags, errno, owner_inode,
                    parent_inode, born, end, end_by, init_pid, pinned_by, container,
                    ns_container, age_ns, followed: false,
                };
                // What the schema carries only for some events (README):
                // privilege for user-namespace creates, the verdict for
                // destroys, the holders for pinned records.
                if !(event == EventType::Create && kind == Some(NsKind::User)) {
                    if let Some(a) = &mut r.actor {
                        a.admin = true;
                    }
                }
                if event != EventType::Destroy {
                    (r.end, r.end_by, r.init_pid) = (None, None, None);
                }
                if !matches!(event, EventType::Pinned | EventType::Leak) {
                    r.pinned_by.clear();
                }
                if event != EventType::Leak {
                    r.age_ns = None;
                }
                r
            }
        }

        proptest! {
            #[test]
            fn the_hand_writer_writes_what_serde_does(
                r in record(),
                end in prop::option::of(prop::sample::select(&EndCause::ALL[..])),
                init_pid in any::<Option<u32>>(),
                pinned_by in prop::collection::vec(".{0,30}", 0..3),
                age_ns in prop::option::of(any::<i64>().prop_map(i128::from)),
                admin in any::<bool>(),
                euid in any::<u32>(),
            ) {
                // Beside the schema's own records, fields that only some
                // events carry, on any event: both must leave them out alike.
                let mut odd = r.clone();
                (odd.end, odd.init_pid, odd.pinned_by, odd.age_ns) = (end, init_pid, pinned_by, age_ns);
                if let Some(a) = &mut odd.actor {
                    (a.admin, a.euid) = (admin, euid);
                }
                for r in [r, odd] {
                    let mut hand = Vec::new();
                    fast::record(&mut hand, &r);
                    let serde = serde_json::to_vec(&Wire::record(&r)).unwrap();
                    prop_assert_eq!(String::from_utf8_lossy(&hand), String::from_utf8_lossy(&serde));
                }
            }

            #[test]
            fn records_read_back_as_written(r in record()) {
                let text = serde_json::to_string(&Wire::record(&r)).unwrap();
                match parse_line(&text) {
                    Ok(Line::Record(back)) => prop_assert_eq!(*back, r),
                    other => prop_assert!(false, "{text} read as {other:?}"),
                }
            }

            #[test]
            fn start_lines_read_back_as_written(
                time_ns in time(),
                kernel in ".{0,30}",
                ends in ".{0,12}",
                ends_by_kind in prop::collection::vec(
                    (prop::sample::select(&NsKind::ALL[..]), prop::sample::select(&EndMethod::ALL[..])),
                    0..8,
                ),
                alive in prop::collection::vec(
                    (prop::sample::select(&NsKind::ALL[..]), any::<u32>(), any::<Option<u64>>()),
                    0..20,
                ),
            ) {
                // One method per kind, as nstrace writes it (a JSON object
                // has each key once).
                let mut ends_by_kind = ends_by_kind;
                ends_by_kind.sort_by_key(|(k, _)| *k);
                ends_by_kind.dedup_by_key(|(k, _)| *k);
                let st = Start { time_ns, kernel, ends, ends_by_kind, alive };
                let text = serde_json::to_string(&Wire::start(&st)).unwrap();
                match parse_line(&text) {
                    Ok(Line::Start(back)) => prop_assert_eq!(back, st),
                    other => prop_assert!(false, "{text} read as {other:?}"),
                }
            }
        }
    }
}
