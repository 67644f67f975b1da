//! `nstrace report FILE`: a saved JSON trace summed up offline, as the live
//! run summed it up when it stopped.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Write as _},
    path::Path,
};

use anyhow::Result;

use crate::{
    output::summary,
    output::timeline::Timeline,
    output::{
        self, Pictures,
        json::{Line, parse_line},
    },
    state::registry::Registry,
    util::error::hinted,
    util::escape,
};

use crate::output::summary::Saved;

const HINT: &str = "give a file written by `nstrace --output FILE` or `nstrace --json > FILE`";

/// The longest line a trace may have. nstrace's own lines are well under a
/// kilobyte, but for the start line, which lists every namespace alive then
/// (about 55 bytes each: a host with ~19,000 of them). A line is never held
/// whole before it is known to fit: a trace of one 200 MB line, or
/// `/dev/zero`, costs this much at most, then is an error.
pub const MAX_LINE: usize = 1 << 20;

/// What went wrong reading one line.
#[derive(Debug)]
enum LineError {
    Io(io::Error),
    TooLong,
}

/// Reads the next line (without its `\n`) into `buf`, taking at most
/// `max` bytes of it; `Ok(false)` at the end of input.
fn next_line(r: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> Result<bool, LineError> {
    buf.clear();
    let mut any = false;
    loop {
        let avail = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LineError::Io(e)),
        };
        if avail.is_empty() {
            return Ok(any);
        }
        any = true;
        let (take, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (avail.len(), false),
        };
        if buf.len() + take > max {
            return Err(LineError::TooLong);
        }
        buf.extend_from_slice(&avail[..take]);
        r.consume(if done { take + 1 } else { take });
        if done {
            return Ok(true);
        }
    }
}

/// Reads a trace and replays it into a registry.
pub fn read(path: &Path) -> Result<Saved> {
    let file = File::open(path)
        .map_err(|e| hinted(format!("cannot read {}: {e}", escape::path(path)), HINT))?;
    read_from(BufReader::new(file), &escape::path(path))
}

/// Reads a trace from `input` (named `name` in errors). Whatever it holds,
/// this returns (an error naming the line at fault) without panicking, in
/// memory bounded by [`MAX_LINE`] plus what the records themselves hold.
pub fn read_from(mut input: impl BufRead, name: &str) -> Result<Saved> {
    let mut saved = Saved {
        start: None,
        stop: None,
        registry: Registry::default(),
        records: 0,
        lost: 0,
        last_ns: 0,
        timeline: Timeline::default(),
    };
    let mut buf = Vec::new();
    let mut n: u64 = 0;
    loop {
        n += 1;
        match next_line(&mut input, &mut buf, MAX_LINE) {
            Ok(true) => {}
            Ok(false) => break,
            Err(LineError::Io(e)) => {
                return Err(hinted(format!("reading {name}, line {n}: {e}"), HINT));
            }
            Err(LineError::TooLong) => {
                return Err(hinted(
                    format!(
                        "{name}, line {n}: longer than {} MiB; not a line nstrace writes",
                        MAX_LINE >> 20
                    ),
                    HINT,
                ));
            }
        }
        let line = std::str::from_utf8(&buf).map_err(|e| {
            hinted(
                format!(
                    "{name}, line {n}: not UTF-8 text (byte {} of the line)",
                    e.valid_up_to() + 1
                ),
                HINT,
            )
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed =
            parse_line(line).map_err(|why| hinted(format!("{name}, line {n}: {why}"), HINT))?;
        match parsed {
            Line::Start(st) => {
                saved.registry = Registry::from_start(&st.alive);
                saved.timeline.start(&st);
                saved.start = Some(st);
            }
            Line::Record(mut r) => {
                saved.records = saved.records.saturating_add(1);
                saved.last_ns = saved.last_ns.max(r.time_ns);
                saved.timeline.record(&r);
                saved.registry.replay(&mut r);
            }
            Line::Lost(n) => saved.lost = saved.lost.saturating_add(n),
            Line::Stop(st) => {
                saved.timeline.stop(&st);
                saved.stop = Some(st);
            }
        }
    }
    Ok(saved)
}

/// Prints the closing summary of the trace at `path` (`json`: as one
/// object), and draws the pictures asked for. A picture path that is the
/// trace itself (the same file under any name) is refused before anything
/// is written; pictures are put in place only once drawn whole.
pub fn run(path: &Path, json: bool, perfetto: Option<&Path>, html: Option<&Path>) -> Result<()> {
    let file = File::open(path)
        .map_err(|e| hinted(format!("cannot read {}: {e}", escape::path(path)), HINT))?;
    let meta = file
        .metadata()
        .map_err(|e| hinted(format!("cannot read {}: {e}", escape::path(path)), HINT))?;
    let outputs: Vec<(&str, &Path)> = [("--perfetto", perfetto), ("--html", html)]
        .into_iter()
        .filter_map(|(flag, p)| Some((flag, p?)))
        .collect();
    output::check_distinct(Some((path, &meta)), &outputs)?;
    let pictures = Pictures::create(perfetto, html)?;
    let saved = read_from(BufReader::new(file), &escape::path(path))?;
    if let Some(p) = pictures {
        p.write(&saved.timeline)?;
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &summary::to_json(&saved))?;
        writeln!(out)?;
        return Ok(());
    }
    write!(out, "{}", summary::closing(&saved))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Read};

    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    use super::*;
    use crate::{
        model::Container,
        model::{
            Actor, Birth, EndCause, EndMethod, EventType, Loss, NsKind, Record, Start, Stop,
            Syscall,
        },
        output::{Sink as _, html, json::JsonSink, perfetto},
    };

    /// Everything `report` does with a trace, into memory: read, the
    /// summary as text and as JSON, both pictures. Err: the trace was refused.
    fn whole_report(bytes: &[u8]) -> Result<()> {
        let saved = read_from(Cursor::new(bytes), "fuzz")?;
        let _ = summary::closing(&saved);
        serde_json::to_string_pretty(&summary::to_json(&saved))?;
        perfetto::write(&saved.timeline, Vec::new())?;
        html::write(&saved.timeline, Vec::new())?;
        Ok(())
    }

    /// Real lines, as the live session writes them: start, each kind of
    /// record, a loss notice, stop.
    fn real_lines() -> Vec<Value> {
        let t0 = 1_709_210_096_000_000_000i128;
        let actor = Some(Actor {
            pid: 42,
            tid: 43,
            ppid: 1,
            comm: "unshare".into(),
            uid: 1000,
            euid: 0,
            ..Actor::default()
        });
        let container = Some(Container {
            id: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
            runtime: "cri-containerd",
            name: Some("web".into()),
            pod: Some("web-0".into()),
            namespace: Some("default".into()),
        });
        let born = Some(Birth {
            time_ns: t0 + 1,
            pid: 42,
            comm: "unshare".into(),
            syscall: Syscall::Unshare,
        });
        let records = [
            Record {
                time_ns: t0 + 1,
                event: EventType::Create,
                kind: Some(NsKind::User),
                inode: Some(4026532310),
                ns_id: Some(7),
                prev_inode: Some(4026531837),
                syscall: Some(Syscall::Unshare),
                flags: NsKind::User.flag() | NsKind::Net.flag(),
                actor: actor.clone(),
                owner_inode: Some(4026531837),
                container: container.clone(),
                ..Record::default()
            },
            Record {
                time_ns: t0 + 2,
                event: EventType::Join,
                kind: Some(NsKind::User),
                inode: Some(4026532310),
                prev_inode: Some(4026531837),
                syscall: Some(Syscall::Setns),
                fd: Some(3),
                actor: actor.clone(),
                born: born.clone(),
                ns_container: container.clone(),
                ..Record::default()
            },
            Record {
                time_ns: t0 + 3,
                event: EventType::Pinned,
                kind: Some(NsKind::User),
                inode: Some(4026532310),
                born: born.clone(),
                pinned_by: vec!["mount /run/netns/x".into(), "fd 3 of pid 9".into()],
                ..Record::default()
            },
            Record {
                time_ns: t0 + 4,
                event: EventType::Destroy,
                kind: Some(NsKind::User),
                inode: Some(4026532310),
                born: born.clone(),
                end: Some(EndCause::PinReleased),
                end_by: Some(EndMethod::NsfsHandle),
                init_pid: Some(44),
                actor: actor.clone(),
                ..Record::default()
            },
            Record {
                time_ns: t0 + 5,
                event: EventType::Error,
                kind: Some(NsKind::Net),
                syscall: Some(Syscall::Clone3),
                flags: NsKind::Net.flag(),
                errno: Some(1),
                child_pid: Some(45),
                actor,
                container,
                ..Record::default()
            },
        ];
        let mut out = Vec::new();
        let mut sink = JsonSink::new(&mut out);
        sink.start(&Start {
            time_ns: t0,
            kernel: "6.18.0".into(),
            ends: "fentry".into(),
            ends_by_kind: vec![(NsKind::Net, EndMethod::Fentry)],
            alive: vec![
                (NsKind::Net, 4026531840, Some(1)),
                (NsKind::Uts, 4026531838, None),
            ],
        })
        .unwrap();
        for r in &records {
            sink.record(r).unwrap();
        }
        sink.lost(&Loss {
            time_ns: t0 + 6,
            events: 3,
            events_total: 3,
            by_kind: vec![("exit", 3)],
            syscalls_missed: 1,
            unwatched: 0,
            skipped: 0,
            skipped_by: vec![],
            forgotten: 0,
            untracked: 0,
            unfollowed: 0,
        })
        .unwrap();
        sink.stop(&Stop {
            time_ns: t0 + 7,
            records: 5,
            kernel_events: 9,
            lost: 3,
        })
        .unwrap();
        drop(sink);
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Field names a mutation picks from: the schema's, and a stranger.
    const KEYS: &[&str] = &[
        "time",
        "event",
        "ns_type",
        "ns_inode",
        "ns_id",
        "prev_inode",
        "syscall",
        "flags",
        "raw_flags",
        "pid",
        "tid",
        "ppid",
        "comm",
        "vpid",
        "uid",
        "euid",
        "unprivileged",
        "container",
        "ns_container",
        "child_pid",
        "fd",
        "errno",
        "errno_num",
        "owner_user_ns",
        "parent_pid_ns",
        "ns_created",
        "end",
        "end_by",
        "lifetime_ns",
        "init_pid",
        "pinned_by",
        "age_ns",
        "kernel",
        "ends",
        "ends_by_kind",
        "alive",
        "records",
        "kernel_events",
        "lost",
        "id",
        "runtime",
        "name",
        "pod",
        "namespace",
        "by_kind",
        "x\u{e9}",
    ];

    /// Keys inside nested objects (container, ns_created, alive entries).
    const NESTED_KEYS: &[&str] = &[
        "id",
        "runtime",
        "name",
        "pod",
        "namespace",
        "time",
        "pid",
        "comm",
        "syscall",
        "ns_type",
        "ns_inode",
        "ns_id",
    ];

    /// Numbers at the edges of every type the reader converts to.
    fn odd_number() -> impl Strategy<Value = Value> {
        prop_oneof![
            prop::sample::select(vec![
                json!(0),
                json!(-1),
                json!(u64::MAX),
                json!(i64::MIN),
                json!(i64::MAX),
                json!(u32::MAX),
                json!(u64::from(u32::MAX) + 1),
                json!(i32::MAX),
                json!(i64::from(i32::MIN) - 1),
                json!(1e308),
                json!(-0.0),
                json!(0.5),
                // Past u64: serde_json reads it as a float.
                serde_json::from_str("184467440737095516160000").unwrap(),
            ]),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
        ]
    }

    /// Strings: the schema's words, times at and past their range, and
    /// multibyte characters at every offset (a byte slice cut inside one
    /// panics).
    fn odd_string() -> impl Strategy<Value = Value> {
        prop_oneof![
            prop::sample::select(vec![
                "9999-12-31T23:59:59.999999999Z",
                "0000-01-01T00:00:00Z",
                "2262-04-11T23:47:16.854775807Z",
                "2262-04-11T23:47:16.854775808Z",
                "1969-12-31T23:59:59.999999999Z",
                "2024-02-29T12:34:56.\u{e9}Z",
                "2024-02-29T12:34:5\u{e9}Z",
                "2024-02-29T12:34:56.123456789123Z",
                "0x",
                "0xffffffffffffffffffff",
                "-0x1",
                "net",
                "user",
                "pid",
                "create",
                "join",
                "destroy",
                "pinned",
                "error",
                "lost",
                "start",
                "stop",
                "clone3",
                "setns",
                "unshare",
                "docker",
                "cri-containerd",
                "kernel-freed",
                "inode-reused",
                "nsfs-handle",
                "",
                "\u{1b}[2J</script><!--",
                "\u{2028}\u{0}\u{7f}\u{fffd}",
            ])
            .prop_map(Value::from),
            "[a-f0-9]{0,14}[\u{e9}\u{20ac}\u{1f600}]{1,3}[a-f0-9]{0,3}".prop_map(Value::from),
            ".{0,40}".prop_map(Value::from),
        ]
    }

    /// Values nstrace never writes, or writes only at their edges.
    fn odd_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            odd_number(),
            odd_string(),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((prop::sample::select(KEYS), inner), 0..4).prop_map(|kv| {
                    Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                }),
            ]
        })
    }

    /// One change to a line: a field (top level, or inside every nested
    /// object and array element) set to an odd value, or removed.
    #[derive(Debug, Clone)]
    struct Mutation {
        nested: bool,
        key: &'static str,
        value: Option<Value>,
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        let value = prop::option::weighted(
            0.8,
            prop_oneof![3 => odd_string(), 2 => odd_number(), 1 => odd_value()],
        );
        prop_oneof![
            (prop::sample::select(KEYS), value.clone()).prop_map(|(key, value)| Mutation {
                nested: false,
                key,
                value
            }),
            (prop::sample::select(NESTED_KEYS), value).prop_map(|(key, value)| Mutation {
                nested: true,
                key,
                value
            }),
        ]
    }

    fn set(obj: &mut Map<String, Value>, key: &str, value: &Option<Value>) {
        match value {
            Some(v) => {
                obj.insert(key.to_string(), v.clone());
            }
            None => {
                obj.remove(key);
            }
        }
    }

    fn mutate(line: &mut Value, m: &Mutation) {
        let Some(obj) = line.as_object_mut() else {
            return;
        };
        if !m.nested {
            set(obj, m.key, &m.value);
            return;
        }
        for v in obj.values_mut() {
            match v {
                Value::Object(o) => set(o, m.key, &m.value),
                Value::Array(a) => {
                    for e in a.iter_mut().filter_map(Value::as_object_mut) {
                        set(e, m.key, &m.value);
                    }
                }
                _ => {}
            }
        }
    }

    /// A trace: real lines picked (by index, any order, repeated), each
    /// mutated, with the odd raw line between them.
    fn mutated_trace() -> impl Strategy<Value = Vec<u8>> {
        let line = (
            any::<prop::sample::Index>(),
            prop::collection::vec(mutation(), 0..4),
            prop::option::weighted(0.1, prop::collection::vec(any::<u8>(), 0..64)),
        );
        prop::collection::vec(line, 1..12).prop_map(|lines| {
            let real = real_lines();
            let mut out = Vec::new();
            for (i, muts, raw) in lines {
                let mut v = real[i.index(real.len())].clone();
                for m in &muts {
                    mutate(&mut v, m);
                }
                out.extend_from_slice(v.to_string().as_bytes());
                out.push(b'\n');
                if let Some(raw) = raw {
                    out.extend_from_slice(&raw);
                    out.push(b'\n');
                }
            }
            out
        })
    }

    proptest! {
        // Bounded so the suite stays quick (under a second in release);
        // PROPTEST_CASES=100000 for a longer hunt.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(512),
            ..ProptestConfig::default()
        })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = whole_report(&bytes);
        }

        #[test]
        fn mutated_real_traces_never_panic(trace in mutated_trace()) {
            let _ = whole_report(&trace);
            // The lines read alone make a trace read whole, down to the
            // pictures (a bad line would stop the above before them).
            let good: Vec<&[u8]> = trace
                .split(|&b| b == b'\n')
                .filter(|l| std::str::from_utf8(l).is_ok_and(|l| !l.trim().is_empty() && parse_line(l).is_ok()))
                .collect();
            let good = good.join(&b'\n');
            whole_report(&good).unwrap();
        }

        #[test]
        fn mutated_traces_cut_anywhere_never_panic(trace in mutated_trace(), cut in any::<prop::sample::Index>()) {
            let at = cut.index(trace.len() + 1);
            let _ = whole_report(&trace[..at]);
        }
    }

    #[test]
    fn the_real_lines_read_back_whole() {
        let text: String = real_lines().iter().map(|v| format!("{v}\n")).collect();
        let saved = read_from(Cursor::new(text.as_bytes()), "t").unwrap();
        assert_eq!(saved.records, 5);
        assert_eq!(saved.lost, 3);
        assert_eq!(saved.timeline.lanes.len(), 1);
        whole_report(text.as_bytes()).unwrap();
    }

    /// Endless input with no newline, counting what is taken from it.
    struct Zeros(u64);

    impl Read for Zeros {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            buf.fill(0);
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
    }

    #[test]
    fn an_endless_line_is_an_error_naming_it_after_max_line_bytes() {
        let mut zeros = Zeros(0);
        let text = b"\n{\"event\":\"stop\",\"time\":\"2024-02-29T12:34:56Z\"}\n";
        let input = Cursor::new(&text[..]).chain(BufReader::new(&mut zeros));
        let err = read_from(BufReader::new(input), "zero").err().unwrap();
        let msg = err.to_string();
        assert!(msg.contains("zero, line 3: longer than 1 MiB"), "{msg}");
        assert!(crate::util::error::hint_of(&err).is_some());
        // Read up to the limit and a buffer past it, no more.
        assert!(zeros.0 <= (MAX_LINE + 2 * 8192) as u64, "{}", zeros.0);
    }

    #[test]
    fn a_line_at_the_limit_is_read_and_one_past_it_is_not() {
        let mut buf = Vec::new();
        let mut line = vec![b' '; MAX_LINE];
        line.push(b'\n');
        let mut r = BufReader::new(Cursor::new(line.clone()));
        assert!(next_line(&mut r, &mut buf, MAX_LINE).unwrap());
        assert_eq!(buf.len(), MAX_LINE);
        assert!(!next_line(&mut r, &mut buf, MAX_LINE).unwrap());
        line.insert(0, b' ');
        let mut r = BufReader::new(Cursor::new(line));
        assert!(matches!(
            next_line(&mut r, &mut buf, MAX_LINE),
            Err(LineError::TooLong)
        ));
        // A last line without its newline still counts.
        let mut r = BufReader::new(Cursor::new(b"a\nb".to_vec()));
        assert!(next_line(&mut r, &mut buf, 8).unwrap());
        assert!(next_line(&mut r, &mut buf, 8).unwrap());
        assert_eq!(buf, b"b");
        assert!(!next_line(&mut r, &mut buf, 8).unwrap());
    }

    #[test]
    fn invalid_utf8_is_an_error_naming_the_line() {
        let text = b"\n\n{\"event\":\"stop\",\"time\":\"2024-02-29T12:34:56Z\",\"x\":\"\xff\"}\n";
        let msg = read_from(Cursor::new(&text[..]), "t")
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("t, line 3: not UTF-8 text (byte 52"), "{msg}");
    }

    #[test]
    fn loss_counts_saturate_and_far_times_are_refused() {
        let lost = format!(
            "{{\"event\":\"lost\",\"time\":\"2024-02-29T12:34:56Z\",\"kernel_events\":{}}}\n",
            u64::MAX
        );
        let saved = read_from(Cursor::new(lost.repeat(3).into_bytes()), "t").unwrap();
        assert_eq!(saved.lost, u64::MAX);
        assert!(summary::closing(&saved).contains(&format!("{} lost", u64::MAX)));
        for time in ["9999-12-31T23:59:59Z", "1969-12-31T23:59:59Z"] {
            let line = format!("{{\"event\":\"stop\",\"time\":\"{time}\"}}\n");
            let msg = read_from(Cursor::new(line.into_bytes()), "t")
                .err()
                .unwrap()
                .to_string();
            assert!(msg.contains("line 1: no valid \"time\""), "{msg}");
        }
        // The farthest times apart a trace may hold: a lifetime of 292 years.
        let create = r#"{"event":"create","time":"1970-01-01T00:00:00Z","ns_type":"net","ns_inode":5,"syscall":"unshare","pid":1,"comm":"a"}"#;
        let destroy = r#"{"event":"destroy","time":"2262-04-11T23:47:16.854775807Z","ns_type":"net","ns_inode":5}"#;
        let text = format!("{create}\n{destroy}\n");
        let saved = read_from(Cursor::new(text.into_bytes()), "t").unwrap();
        let v = summary::to_json(&saved);
        assert_eq!(v["longest_ended"]["lifetime_ns"], i64::MAX, "{v}");
        whole_report(format!("{create}\n{destroy}\n").as_bytes()).unwrap();
    }
}
