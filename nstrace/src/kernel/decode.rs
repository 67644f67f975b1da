//! Raw ring-buffer events to [`Record`]s.

use nstrace_common::{CLONE_NEW_MASK, Event, EventKind, NsSet, Syscall as RawSyscall};

use crate::{
    model::{Actor, EventType, NsKind, Record, Syscall},
    sys::time::Clock,
};

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer is not one whole [`Event`].
    Size(usize),
    UnknownKind(u32),
    UnknownSyscall(u32),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Size(n) => write!(
                f,
                "event of {n} bytes, expected {}",
                std::mem::size_of::<Event>()
            ),
            DecodeError::UnknownKind(k) => write!(f, "unknown event kind {k}"),
            DecodeError::UnknownSyscall(s) => write!(f, "unknown syscall {s}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A namespace named by an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NsRef {
    pub kind: NsKind,
    pub inode: u32,
    pub ns_id: Option<u64>,
}

/// What one raw event means.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// Timeline records (none for process events, or a call that changed nothing visible).
    pub records: Vec<Record>,
    /// Watched namespaces whose last member task left with this event.
    pub emptied: Vec<NsRef>,
    /// The task this event is about, with its current comm.
    pub actor: Option<Actor>,
    /// The task exited.
    pub exited: bool,
    /// It exited as the init of this PID namespace.
    pub reaper_of: Option<u32>,
    /// That init's pidfs inode (6.9+): what a pidfd of it, kept after it
    /// exited, shows.
    pub init_pid_ino: Option<u64>,
    /// Kernel monotonic time, converted.
    pub time_ns: i128,
    /// The actor descends from a followed process.
    pub followed: bool,
    /// fentry mode: the kernel freed this namespace.
    pub freed: Option<NsRef>,
}

/// Reads one event out of ring-buffer bytes, wherever they are aligned.
pub fn parse(bytes: &[u8]) -> Result<Event, DecodeError> {
    if bytes.len() != std::mem::size_of::<Event>() {
        return Err(DecodeError::Size(bytes.len()));
    }
    // SAFETY: the length matches and every bit pattern is a valid `Event`
    // (plain integers and byte arrays).
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

pub fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn syscall(raw: u32) -> Result<Option<Syscall>, DecodeError> {
    Ok(
        match RawSyscall::from_u32(raw).ok_or(DecodeError::UnknownSyscall(raw))? {
            RawSyscall::None => None,
            RawSyscall::Clone => Some(Syscall::Clone),
            RawSyscall::Clone3 => Some(Syscall::Clone3),
            RawSyscall::Unshare => Some(Syscall::Unshare),
            RawSyscall::Setns => Some(Syscall::Setns),
        },
    )
}

fn nonzero<T: Default + PartialEq>(v: T) -> Option<T> {
    (v != T::default()).then_some(v)
}

/// Turns one raw event into what it means.
pub fn decode(e: &Event, clock: Clock) -> Result<Decoded, DecodeError> {
    let kind = EventKind::from_u32(e.kind).ok_or(DecodeError::UnknownKind(e.kind))?;
    let syscall = syscall(e.syscall)?;
    let actor = Actor {
        pid: e.pid,
        tid: e.tid,
        ppid: e.ppid,
        comm: comm(&e.comm),
        vpid: e.vpid,
        cgroup: e.cgroup,
        mnt_ns: e.before.inum[NsKind::Mnt.index()],
        uid: e.uid,
        euid: e.euid,
        admin: e.admin != 0,
        elders: e.elders,
    };
    let time_ns = clock.to_unix_ns(e.ts_ns);
    let emptied = NsKind::in_flags(u64::from(e.emptied))
        .filter(|k| e.before.inum[k.index()] != 0)
        .map(|k| NsRef {
            kind: k,
            inode: e.before.inum[k.index()],
            ns_id: nonzero(e.before.id[k.index()]),
        })
        .collect();
    let mut out = Decoded {
        emptied,
        actor: Some(actor.clone()),
        time_ns,
        followed: e.followed != 0,
        ..Decoded::default()
    };
    let call = match (kind, syscall) {
        (EventKind::Exec, _) => return Ok(out),
        (EventKind::Freed, _) => {
            out.freed = NsKind::in_flags(e.flags).next().map(|k| NsRef {
                kind: k,
                inode: e.before.inum[k.index()],
                ns_id: nonzero(e.before.id[k.index()]),
            });
            return Ok(out);
        }
        (EventKind::Exit, _) => {
            out.exited = true;
            out.reaper_of = (e.reaper != 0)
                .then_some(e.before.inum[NsKind::Pid.index()])
                .filter(|&i| i != 0);
            out.init_pid_ino = out.reaper_of.and(nonzero(e.init_pid_ino));
            return Ok(out);
        }
        (_, Some(call)) => call,
        (_, None) => return Err(DecodeError::UnknownSyscall(e.syscall)),
    };
    let base = Record {
        time_ns,
        syscall: Some(call),
        flags: e.flags,
        actor: Some(actor),
        fd: (call == Syscall::Setns).then_some(e.fd),
        followed: e.followed != 0,
        ..Record::default()
    };
    let with_owner = |r: Record| {
        let k = r.kind.expect("per-kind record");
        Record {
            owner_inode: nonzero(e.owners[k.index()]),
            parent_inode: (k == NsKind::Pid).then(|| nonzero(e.pid_parent)).flatten(),
            ..r
        }
    };
    out.records = match kind {
        EventKind::Error => vec![Record {
            event: EventType::Error,
            kind: NsKind::in_flags(e.flags).next(),
            errno: Some(-e.ret as i32),
            ..base
        }],
        EventKind::Clone => per_kind(&base, EventType::Create, &e.before, &e.after, |k| {
            e.flags & k.flag() != 0
        })
        .map(|r| Record {
            child_pid: Some(e.ret as u32),
            flags_unread: e.flags_unread != 0,
            claimed_flags: (e.flags_unread == 0 && (e.user_flags ^ e.flags) & CLONE_NEW_MASK != 0)
                .then_some(e.user_flags),
            ..with_owner(r)
        })
        .collect(),
        EventKind::Switch if call == Syscall::Unshare => {
            per_kind(&base, EventType::Create, &e.before, &e.after, |k| {
                e.flags & k.flag() != 0 || e.before.inum[k.index()] != e.after.inum[k.index()]
            })
            .map(with_owner)
            .collect()
        }
        EventKind::Switch => {
            let changed: Vec<Record> = per_kind(&base, EventType::Join, &e.before, &e.after, |k| {
                e.before.inum[k.index()] != e.after.inum[k.index()]
                    || e.before.id[k.index()] != e.after.id[k.index()]
            })
            .collect();
            if changed.is_empty() {
                // Joined namespaces the caller was already in: say so for the
                // kinds it named rather than print nothing.
                per_kind(&base, EventType::Join, &e.before, &e.after, |k| {
                    e.flags & k.flag() != 0
                })
                .collect()
            } else {
                changed
            }
        }
        EventKind::Exec | EventKind::Exit | EventKind::Freed => unreachable!("returned above"),
    };
    Ok(out)
}

fn per_kind<'a>(
    base: &'a Record,
    event: EventType,
    before: &'a NsSet,
    after: &'a NsSet,
    wanted: impl Fn(NsKind) -> bool + 'a,
) -> impl Iterator<Item = Record> + 'a {
    NsKind::ALL
        .into_iter()
        .filter(move |&k| wanted(k))
        .map(move |k| Record {
            event,
            kind: Some(k),
            inode: nonzero(after.inum[k.index()]),
            ns_id: nonzero(after.id[k.index()]),
            prev_inode: nonzero(before.inum[k.index()]),
            ..base.clone()
        })
}

#[cfg(test)]
mod tests {
    use nstrace_common::{KIND_FLAGS, kind};

    use super::*;

    const NEWUTS: u64 = KIND_FLAGS[kind::UTS];
    const NEWNET: u64 = KIND_FLAGS[kind::NET];

    fn set(base: u32) -> NsSet {
        let mut s = NsSet::default();
        for k in 0..8 {
            s.inum[k] = base + k as u32;
            s.id[k] = 1000 + base as u64 + k as u64;
        }
        s
    }

    fn event(kind: EventKind, syscall: RawSyscall, flags: u64, ret: i64) -> Event {
        let mut comm = [0u8; 16];
        comm[..7].copy_from_slice(b"unshare");
        Event {
            ts_ns: 5,
            flags,
            ret,
            kind: kind as u32,
            syscall: syscall as u32,
            pid: 10,
            tid: 11,
            ppid: 1,
            fd: -1,
            comm,
            before: set(100),
            after: set(100),
            emptied: 0,
            reaper: 0,
            init_pid_ino: 0,
            owners: [0; 8],
            pid_parent: 0,
            vpid: 11,
            followed: 0,
            uid: 0,
            cgroup: 0,
            euid: 0,
            admin: 1,
            elders: [0; 2],
            user_flags: 0,
            flags_unread: 0,
            _pad: 0,
        }
    }

    fn records(e: &Event) -> Vec<Record> {
        decode(e, Clock::with_offset(1_000)).unwrap().records
    }

    #[test]
    fn parse_round_trips_and_rejects_wrong_sizes() {
        let e = event(EventKind::Switch, RawSyscall::Unshare, NEWUTS, 0);
        // SAFETY: Event is plain data.
        let bytes = unsafe {
            std::slice::from_raw_parts((&e as *const Event).cast::<u8>(), size_of::<Event>())
        };
        let mut unaligned = vec![0u8];
        unaligned.extend_from_slice(bytes);
        let back = parse(&unaligned[1..]).unwrap();
        assert_eq!(back.flags, NEWUTS);
        assert_eq!(back.before, e.before);
        assert_eq!(
            parse(&bytes[1..]).unwrap_err(),
            DecodeError::Size(size_of::<Event>() - 1)
        );
    }

    #[test]
    fn unshare_gives_one_create_per_new_kind_with_previous_inode() {
        let mut e = event(EventKind::Switch, RawSyscall::Unshare, NEWUTS | NEWNET, 0);
        e.after.inum[kind::UTS] = 7001;
        e.after.inum[kind::NET] = 7004;
        let r = records(&e);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].kind, Some(NsKind::Uts));
        assert_eq!(r[0].inode, Some(7001));
        assert_eq!(r[0].prev_inode, Some(101));
        assert_eq!(r[0].event, EventType::Create);
        assert_eq!(r[0].time_ns, 1_005);
        assert_eq!(r[0].actor.as_ref().unwrap().comm, "unshare");
        assert_eq!(r[1].kind, Some(NsKind::Net));
        assert_eq!(r[1].inode, Some(7004));
    }

    #[test]
    fn setns_reports_only_kinds_that_changed() {
        let mut e = event(EventKind::Switch, RawSyscall::Setns, 0, 0);
        e.fd = 3;
        e.after.inum[kind::NET] = 9004;
        e.after.id[kind::NET] = 77;
        let r = records(&e);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].event, EventType::Join);
        assert_eq!(r[0].kind, Some(NsKind::Net));
        assert_eq!(r[0].ns_id, Some(77));
        assert_eq!(r[0].fd, Some(3));
    }

    #[test]
    fn setns_into_own_namespace_still_reports_the_named_kind() {
        let e = event(EventKind::Switch, RawSyscall::Setns, NEWNET, 0);
        let r = records(&e);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].inode, r[0].prev_inode);
    }

    #[test]
    fn clone_reports_the_child_and_its_namespaces() {
        let mut e = event(EventKind::Clone, RawSyscall::Clone3, NEWUTS, 4242);
        e.after.inum[kind::UTS] = 5555;
        let r = records(&e);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].syscall, Some(Syscall::Clone3));
        assert_eq!(r[0].child_pid, Some(4242));
        assert_eq!(r[0].inode, Some(5555));
        assert_eq!(r[0].fd, None);
    }

    #[test]
    fn failure_is_one_error_record_with_errno() {
        let e = event(EventKind::Error, RawSyscall::Unshare, NEWUTS | NEWNET, -1);
        let r = records(&e);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].event, EventType::Error);
        assert_eq!(r[0].errno, Some(1));
        assert_eq!(r[0].kind, Some(NsKind::Uts));
    }

    #[test]
    fn exit_reports_emptied_namespaces_and_reaper() {
        let mut e = event(EventKind::Exit, RawSyscall::None, 0, 0);
        e.emptied = (NEWNET | KIND_FLAGS[kind::PID]) as u32;
        e.reaper = 1;
        let d = decode(&e, Clock::with_offset(0)).unwrap();
        assert!(d.exited);
        assert!(d.records.is_empty());
        assert_eq!(d.reaper_of, Some(103));
        assert_eq!(d.init_pid_ino, None, "no pidfs inode read");
        let kinds: Vec<_> = d.emptied.iter().map(|n| (n.kind, n.inode)).collect();
        assert_eq!(kinds, vec![(NsKind::Pid, 103), (NsKind::Net, 104)]);
        assert_eq!(d.emptied[0].ns_id, Some(1103));

        // With pidfs, the init's inode comes along; only for an init.
        e.init_pid_ino = 77;
        assert_eq!(
            decode(&e, Clock::with_offset(0)).unwrap().init_pid_ino,
            Some(77)
        );
        e.reaper = 0;
        assert_eq!(
            decode(&e, Clock::with_offset(0)).unwrap().init_pid_ino,
            None
        );
    }

    #[test]
    fn freed_names_the_namespace() {
        let mut e = event(EventKind::Freed, RawSyscall::None, NEWNET, 0);
        e.before.inum = [0; 8];
        e.before.inum[kind::NET] = 4026532300;
        let d = decode(&e, Clock::with_offset(0)).unwrap();
        assert!(d.records.is_empty());
        assert_eq!(
            d.freed,
            Some(NsRef {
                kind: NsKind::Net,
                inode: 4026532300,
                ns_id: Some(1104)
            })
        );
    }

    #[test]
    fn creates_carry_owner_and_pid_parent() {
        let mut e = event(
            EventKind::Switch,
            RawSyscall::Unshare,
            KIND_FLAGS[kind::PID],
            0,
        );
        e.after.inum[kind::PID] = 9003;
        e.owners[kind::PID] = 4026531837;
        e.pid_parent = 4026531836;
        let r = records(&e);
        assert_eq!(r[0].owner_inode, Some(4026531837));
        assert_eq!(r[0].parent_inode, Some(4026531836));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut e = event(EventKind::Switch, RawSyscall::Unshare, NEWUTS, 0);
        e.kind = 99;
        assert_eq!(
            decode(&e, Clock::with_offset(0)).unwrap_err(),
            DecodeError::UnknownKind(99)
        );
        e.kind = EventKind::Switch as u32;
        e.syscall = 42;
        assert_eq!(
            decode(&e, Clock::with_offset(0)).unwrap_err(),
            DecodeError::UnknownSyscall(42)
        );
    }

    /// Ring-buffer bytes of any content: parse and decode return errors,
    /// never panic, and what decodes prints in both formats.
    mod fuzz {
        use proptest::prelude::*;

        use super::*;
        use crate::output;

        fn print_all(records: &[Record]) {
            for json in [false, true] {
                let mut out = Vec::new();
                {
                    let mut sink = output::sink(json, false, &mut out);
                    for r in records {
                        sink.record(r).unwrap();
                    }
                    sink.flush().unwrap();
                }
                let text = String::from_utf8(out).unwrap();
                if json {
                    for line in text.lines() {
                        serde_json::from_str::<serde_json::Value>(line).unwrap();
                    }
                }
            }
        }

        proptest! {
            #[test]
            fn any_length_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2 * size_of::<Event>())) {
                if let Ok(e) = parse(&bytes) {
                    if let Ok(d) = decode(&e, Clock::with_offset(0)) {
                        print_all(&d.records);
                    }
                }
            }

            #[test]
            fn whole_events_with_known_kinds(
                mut bytes in proptest::collection::vec(any::<u8>(), size_of::<Event>()),
                kind in 0u32..8,
                syscall in 0u32..6,
                offset in any::<i64>(),
            ) {
                // Mostly valid kind and syscall, so decoding goes deep.
                let (k, c) = (std::mem::offset_of!(Event, kind), std::mem::offset_of!(Event, syscall));
                bytes[k..k + 4].copy_from_slice(&kind.to_ne_bytes());
                bytes[c..c + 4].copy_from_slice(&syscall.to_ne_bytes());
                let e = parse(&bytes).unwrap();
                if let Ok(d) = decode(&e, Clock::with_offset(i128::from(offset))) {
                    print_all(&d.records);
                }
            }
        }
    }
}
