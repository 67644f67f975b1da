//! Namespace lifetimes as lanes, for the pictures (`output::perfetto`,
//! `output::html`): one lane per namespace seen in a trace, from its birth
//! (or the trace's start, for one alive before it) through its members and
//! its pinned phase to its end (or the trace's stop), grouped by container,
//! with its joins, and the processes that created namespaces or failed to.
//!
//! Built from records as they come (live `--perfetto`) or as a saved trace
//! is read back (`nstrace report`); both then draw from the same lanes.

use std::collections::{BTreeMap, HashMap};

use crate::{
    model::Container,
    model::{Birth, EndCause, EndMethod, EventType, NsKind, Record, Start, Stop, flag_names},
    util::errno,
};

/// The group of namespaces that belong to no container.
pub const HOST: &str = "host";

#[derive(Clone, Debug, Default)]
pub struct Timeline {
    pub start_ns: Option<i128>,
    pub stop_ns: Option<i128>,
    pub kernel: String,
    pub lanes: Vec<Lane>,
    /// Processes that created namespaces or had a namespace call fail, by pid.
    pub processes: BTreeMap<u32, Process>,
    /// Last record's time: the end when there is no stop line.
    last_ns: i128,
    /// (kind, inode) -> the lane of the namespace alive under that inode
    /// (inodes are reused once a namespace is gone).
    open: HashMap<(NsKind, u32), usize>,
    /// Namespaces alive at the start, by (kind, inode): their id, for the
    /// lanes made when a record first touches them.
    before: HashMap<(NsKind, u32), Option<u64>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lane {
    pub kind: NsKind,
    pub inode: u32,
    pub ns_id: Option<u64>,
    /// Container label (see [`group_label`]) or [`HOST`].
    pub group: String,
    /// None: alive before the trace began.
    pub born: Option<Birth>,
    /// Birth, or the trace's start.
    pub begin_ns: i128,
    /// Its phases in order, the first from `begin_ns`: with members, or
    /// pinned (no member left, something holds it; a join ends that).
    pub phases: Vec<Phase>,
    pub end: Option<End>,
    pub joins: Vec<Mark>,
    /// The namespace's creation as a mark on its creator's thread, for the
    /// flow from one to the other: index into that process's `marks`.
    pub created_by: Option<(u32, usize)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Phase {
    pub from_ns: i128,
    /// What holds it, when pinned; None while it has members.
    pub pinned_by: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct End {
    pub time_ns: i128,
    pub cause: EndCause,
    pub by: Option<EndMethod>,
}

/// Something a process did at a moment: a join, a create, a failed call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    pub time_ns: i128,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// What happened, short: `setns net`, `unshare CLONE_NEWNET|CLONE_NEWUTS`,
    /// `setns failed: EPERM`.
    pub what: String,
    pub failed: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Process {
    pub comm: String,
    pub group: String,
    /// tid -> thread name.
    pub threads: BTreeMap<u32, String>,
    pub marks: Vec<Mark>,
}

impl Lane {
    /// The lane's end: its namespace's end, else the trace's.
    pub fn end_ns(&self, trace_end: i128) -> i128 {
        self.end
            .as_ref()
            .map_or(trace_end, |e| e.time_ns)
            .max(self.begin_ns)
    }

    /// Enters the phase `pinned_by` says (None: members) at `at`, unless
    /// already in it (a pinned one then takes the newer holders).
    fn phase(&mut self, at: i128, pinned_by: Option<Vec<String>>) {
        let last = self.phases.last_mut().expect("a lane has a phase");
        match (&last.pinned_by, pinned_by) {
            (None, None) => {}
            (Some(_), Some(by)) => last.pinned_by = Some(by),
            (_, pinned_by) => {
                let from_ns = at.max(last.from_ns);
                self.phases.push(Phase { from_ns, pinned_by });
            }
        }
    }

    /// When it was last pinned, and by what, if it was.
    pub fn pinned(&self) -> Option<&Phase> {
        self.phases.iter().rev().find(|p| p.pinned_by.is_some())
    }

    /// `net:[4026532281]`, as /proc/PID/ns shows it.
    pub fn title(&self) -> String {
        format!("{}:[{}]", self.kind.name(), self.inode)
    }
}

/// How a container is named in the pictures: `pod/namespace container` for
/// Kubernetes, else `name (runtime id)`.
pub fn group_label(c: &Container) -> String {
    match (&c.pod, &c.namespace) {
        (Some(pod), Some(ns)) => format!(
            "{ns}/{pod} {} ({} {})",
            c.name.as_deref().unwrap_or(""),
            c.runtime,
            c.short_id()
        ),
        _ => match &c.name {
            Some(name) => format!("{name} ({} {})", c.runtime, c.short_id()),
            None => format!("{} {}", c.runtime, c.short_id()),
        },
    }
}

/// What the pictures draw: the lanes of the records given, start to stop.
impl super::Sink for Timeline {
    fn record(&mut self, r: &Record) -> std::io::Result<()> {
        Timeline::record(self, r);
        Ok(())
    }

    /// A gap shows as lanes without an end; nothing else to draw.
    fn lost(&mut self, _: &crate::model::Loss) -> std::io::Result<()> {
        Ok(())
    }

    fn start(&mut self, st: &Start) -> std::io::Result<()> {
        Timeline::start(self, st);
        Ok(())
    }

    fn stop(&mut self, st: &Stop) -> std::io::Result<()> {
        Timeline::stop(self, st);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Timeline {
    pub fn start(&mut self, st: &Start) {
        self.start_ns = Some(st.time_ns);
        self.kernel = st.kernel.clone();
        self.before = st.alive.iter().map(|&(k, i, id)| ((k, i), id)).collect();
    }

    pub fn stop(&mut self, st: &Stop) {
        self.stop_ns = Some(st.time_ns);
    }

    /// Where the picture begins: the start line, else the first lane or mark.
    pub fn begin_ns(&self) -> i128 {
        self.start_ns.unwrap_or_else(|| {
            let lanes = self.lanes.iter().map(|l| l.begin_ns);
            let marks = self
                .processes
                .values()
                .flat_map(|p| p.marks.iter().map(|m| m.time_ns));
            lanes.chain(marks).min().unwrap_or(0)
        })
    }

    /// Where it ends: the stop line, else the last record.
    pub fn end_ns(&self) -> i128 {
        self.stop_ns.unwrap_or(self.last_ns).max(self.last_ns)
    }

    pub fn record(&mut self, r: &Record) {
        self.last_ns = self.last_ns.max(r.time_ns);
        let key = r.kind.zip(r.inode);
        match (r.event, key) {
            (EventType::Create, Some(key)) => {
                // A create of an inode still open means its end was missed
                // (a lost record): close the old lane where the new one starts.
                if let Some(old) = self.open.remove(&key) {
                    self.lanes[old].end.get_or_insert(End {
                        time_ns: r.time_ns,
                        cause: EndCause::InodeReused,
                        by: None,
                    });
                }
                let mark = self.mark(r, creation(r));
                let lane = Lane {
                    kind: key.0,
                    inode: key.1,
                    ns_id: r.ns_id,
                    group: group_of(r),
                    born: r.actor.as_ref().map(|a| Birth {
                        time_ns: r.time_ns,
                        pid: a.pid,
                        comm: a.comm.clone(),
                        syscall: r.syscall.unwrap_or(crate::model::Syscall::Unshare),
                    }),
                    begin_ns: r.time_ns,
                    phases: vec![Phase {
                        from_ns: r.time_ns,
                        pinned_by: None,
                    }],
                    end: None,
                    joins: Vec::new(),
                    created_by: mark,
                };
                self.open.insert(key, self.lanes.len());
                self.lanes.push(lane);
            }
            (EventType::Join, Some(key)) => {
                let i = self.lane(key, r);
                self.lanes[i].phase(r.time_ns, None);
                if let Some(a) = &r.actor {
                    self.lanes[i].joins.push(Mark {
                        time_ns: r.time_ns,
                        pid: a.pid,
                        tid: a.tid,
                        comm: a.comm.clone(),
                        what: format!(
                            "{} {}",
                            r.syscall.map_or("join", |s| s.name()),
                            key.0.name()
                        ),
                        failed: false,
                    });
                }
            }
            // A leak is drawn as the pinned phase it is (its own mark is
            // for the pictures' rework, issue 24).
            (EventType::Pinned | EventType::Leak, Some(key)) => {
                let i = self.lane(key, r);
                self.lanes[i].phase(r.time_ns, Some(r.pinned_by.clone()));
            }
            (EventType::Destroy, Some(key)) => {
                let i = self.lane(key, r);
                self.lanes[i].end = Some(End {
                    time_ns: r.time_ns,
                    cause: r.end.unwrap_or(EndCause::LastMemberLeft),
                    by: r.end_by,
                });
                self.open.remove(&key);
            }
            (EventType::Error, _) => {
                let what = format!(
                    "{} failed: {}",
                    r.syscall.map_or("call", |s| s.name()),
                    r.errno.map_or("?".to_string(), errno::name)
                );
                let what = match flags_text(r) {
                    Some(f) => format!("{what} ({f})"),
                    None => what,
                };
                self.mark(r, (what, true));
            }
            _ => {}
        }
    }

    /// The open lane of `key`; one made from the trace's start (or this
    /// record's birth field) when the namespace was born before the trace.
    fn lane(&mut self, key: (NsKind, u32), r: &Record) -> usize {
        if let Some(&i) = self.open.get(&key) {
            if let Some(c) = &r.ns_container {
                // The runtime that made it is known only now (the create
                // came from a helper the attribution did not see through).
                if self.lanes[i].group == HOST {
                    self.lanes[i].group = group_label(c);
                }
            }
            return i;
        }
        let begin = r
            .born
            .as_ref()
            .map(|b| b.time_ns)
            .or(self.start_ns)
            .unwrap_or(r.time_ns);
        let ns_id = self.before.get(&key).copied().flatten().or(r.ns_id);
        self.lanes.push(Lane {
            kind: key.0,
            inode: key.1,
            ns_id,
            group: r
                .ns_container
                .as_ref()
                .map_or(HOST.to_string(), group_label),
            born: r.born.clone(),
            begin_ns: begin,
            phases: vec![Phase {
                from_ns: begin,
                pinned_by: None,
            }],
            end: None,
            joins: Vec::new(),
            created_by: None,
        });
        self.open.insert(key, self.lanes.len() - 1);
        self.lanes.len() - 1
    }

    /// Adds a mark on the actor's thread; returns (pid, index) to it.
    fn mark(&mut self, r: &Record, (what, failed): (String, bool)) -> Option<(u32, usize)> {
        let a = r.actor.as_ref()?;
        let p = self.processes.entry(a.pid).or_default();
        if p.comm.is_empty() {
            p.comm = a.comm.clone();
            p.group = r.container.as_ref().map_or(HOST.to_string(), group_label);
        }
        p.threads.entry(a.tid).or_insert_with(|| a.comm.clone());
        if let Some(last) = p.marks.last() {
            if (last.time_ns, last.tid, &last.what) == (r.time_ns, a.tid, &what) {
                return Some((a.pid, p.marks.len() - 1));
            }
        }
        p.marks.push(Mark {
            time_ns: r.time_ns,
            pid: a.pid,
            tid: a.tid,
            comm: a.comm.clone(),
            what,
            failed,
        });
        Some((a.pid, p.marks.len() - 1))
    }

    /// Lane indices in the order the pictures draw them: host first, then
    /// groups by name; within a group by kind, then by birth.
    pub fn ordered(&self) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.lanes.len()).collect();
        v.sort_by_key(|&i| {
            let l = &self.lanes[i];
            (l.group != HOST, &l.group, l.kind, l.begin_ns, l.inode)
        });
        v
    }
}

fn group_of(r: &Record) -> String {
    r.ns_container
        .as_ref()
        .or(r.container.as_ref())
        .map_or(HOST.to_string(), group_label)
}

fn flags_text(r: &Record) -> Option<String> {
    match r.syscall? {
        crate::model::Syscall::Setns => r.kind.map(|k| k.name().to_string()),
        _ => {
            let names = flag_names(r.flags);
            (!names.is_empty()).then(|| names.join("|"))
        }
    }
}

/// The mark a create leaves on its creator: `unshare CLONE_NEWNET|...`
/// (one mark per call: a call creating three namespaces is one moment).
fn creation(r: &Record) -> (String, bool) {
    let call = r.syscall.map_or("create", |s| s.name());
    match flags_text(r) {
        Some(f) => (format!("{call} {f}"), false),
        None => (call.to_string(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Actor, Syscall};

    fn actor(pid: u32, comm: &str) -> Option<Actor> {
        Some(Actor {
            pid,
            tid: pid,
            comm: comm.into(),
            ..Actor::default()
        })
    }

    #[test]
    fn a_life_from_create_through_pinned_to_destroy() {
        let mut t = Timeline::default();
        t.start(&Start {
            time_ns: 100,
            kernel: "6.18".into(),
            ends: "fentry".into(),
            ends_by_kind: vec![(NsKind::Net, EndMethod::Fentry)],
            alive: vec![(NsKind::Net, 1, Some(9))],
        });
        t.record(&Record {
            time_ns: 200,
            event: EventType::Create,
            kind: Some(NsKind::Net),
            inode: Some(7),
            syscall: Some(Syscall::Unshare),
            flags: NsKind::Net.flag(),
            actor: actor(42, "ip"),
            ..Record::default()
        });
        t.record(&Record {
            time_ns: 300,
            event: EventType::Join,
            kind: Some(NsKind::Net),
            inode: Some(7),
            syscall: Some(Syscall::Setns),
            actor: actor(43, "ip"),
            ..Record::default()
        });
        t.record(&Record {
            time_ns: 400,
            event: EventType::Pinned,
            kind: Some(NsKind::Net),
            inode: Some(7),
            pinned_by: vec!["bind mount /run/netns/x".into()],
            ..Record::default()
        });
        t.record(&Record {
            time_ns: 500,
            event: EventType::Destroy,
            kind: Some(NsKind::Net),
            inode: Some(7),
            end: Some(EndCause::PinReleased),
            ..Record::default()
        });
        // A join of a namespace alive before the trace: its lane starts at the start.
        t.record(&Record {
            time_ns: 600,
            event: EventType::Join,
            kind: Some(NsKind::Net),
            inode: Some(1),
            syscall: Some(Syscall::Setns),
            actor: actor(44, "nsenter"),
            ..Record::default()
        });
        t.stop(&Stop {
            time_ns: 700,
            ..Stop::default()
        });
        assert_eq!(t.lanes.len(), 2);
        let l = &t.lanes[0];
        assert_eq!((l.begin_ns, l.end_ns(t.end_ns())), (200, 500));
        let phases: Vec<(i128, bool)> = l
            .phases
            .iter()
            .map(|p| (p.from_ns, p.pinned_by.is_some()))
            .collect();
        assert_eq!(phases, [(200, false), (400, true)]);
        assert_eq!(l.joins.len(), 1);
        assert_eq!(l.created_by, Some((42, 0)));
        assert_eq!(t.processes[&42].marks[0].what, "unshare CLONE_NEWNET");
        let before = &t.lanes[1];
        assert_eq!((before.begin_ns, before.end_ns(t.end_ns())), (100, 700));
        assert_eq!(before.ns_id, Some(9));
        assert!(before.born.is_none());
    }

    #[test]
    fn a_reused_inode_is_a_new_lane() {
        let mut t = Timeline::default();
        for time_ns in [10, 20] {
            t.record(&Record {
                time_ns,
                event: EventType::Create,
                kind: Some(NsKind::Uts),
                inode: Some(5),
                syscall: Some(Syscall::Clone),
                actor: actor(1, "x"),
                ..Record::default()
            });
        }
        assert_eq!(t.lanes.len(), 2);
        assert_eq!(
            t.lanes[0].end.as_ref().unwrap().cause,
            EndCause::InodeReused
        );
        assert!(t.lanes[1].end.is_none());
    }

    #[test]
    fn failures_are_marks_on_their_process() {
        let mut t = Timeline::default();
        t.record(&Record {
            time_ns: 10,
            event: EventType::Error,
            kind: Some(NsKind::Net),
            syscall: Some(Syscall::Setns),
            errno: Some(libc::EPERM),
            actor: actor(3, "nsenter"),
            ..Record::default()
        });
        assert!(t.lanes.is_empty());
        let m = &t.processes[&3].marks[0];
        assert_eq!(m.what, "setns failed: EPERM (net)");
        assert!(m.failed);
    }
}
