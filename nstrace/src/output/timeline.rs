//! Namespace lifetimes as lanes and groups, for the pictures
//! (`output::perfetto`, `output::html`), in memory bounded whatever the
//! trace's length.
//!
//! Every namespace seen belongs to a [`Group`]: its container (or
//! [`HOST`]), its kind, and the command that created it. A group counts
//! what it made and keeps how many were alive over time as a [`Series`] of
//! at most [`POINTS`] points (exact peaks; coarser steps as the trace grows),
//! so a CI runner's 50,000 short-lived namespaces draw as one row per group.
//! The lanes behind a group are kept as detail: a namespace's lane from its
//! birth (or the trace's start, for one alive before it) through its
//! members and pinned phase to its end, with its joins. Lanes that matter
//! (alive, alive before the trace, long-lived, pinned, joined) are kept up
//! to [`KEPT`] closed ones; the others up to [`GROUP_WINDOW`] per group
//! and [`WINDOW`] in all, newest kept. What is dropped is counted, and the
//! pictures say so.
//!
//! Built from records as they come (live `--perfetto`, `--html`) or as a
//! saved trace is read back (`nstrace report`); both then draw from here.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::{
    model::Container,
    model::{Birth, EndCause, EndMethod, EventType, NsKind, Record, Start, Stop, flag_names},
    util::errno,
};

/// The group of namespaces that belong to no container.
pub const HOST: &str = "host";
/// The creator of a group's namespaces when they were alive before the trace.
pub const BEFORE: &str = "(alive before the trace)";
/// Where namespaces go once [`MAX_GROUPS`] groups exist (a process names
/// itself, so commands alone could make groups without end).
pub const OTHER: &str = "(more groups than drawn)";

/// Closed lanes that matter kept, newest first out of the way last.
pub const KEPT: usize = 10_000;
/// Closed ordinary lanes kept, in all.
pub const WINDOW: usize = 10_000;
/// Closed ordinary lanes kept per group.
pub const GROUP_WINDOW: usize = 1_000;
/// A group that made at most this many is drawn lane by lane.
pub const SMALL: u64 = 16;
/// A life at least this long matters.
pub const LONG_NS: i128 = 1_000_000_000;
pub const MAX_GROUPS: usize = 2_000;
/// Processes kept (the newest), with their marks.
pub const PROCESSES: usize = 2_000;
/// Joins kept per lane, marks per process, phases per lane.
pub const MARKS: usize = 256;
/// Points in a group's series.
pub const POINTS: usize = 512;

#[derive(Clone, Debug, Default)]
pub struct Timeline {
    pub start_ns: Option<i128>,
    pub stop_ns: Option<i128>,
    pub kernel: String,
    /// Kept lanes by id (ids in order made).
    pub lanes: HashMap<u64, Lane>,
    pub groups: Vec<Group>,
    /// Processes that created namespaces or had a namespace call fail, by pid.
    pub processes: BTreeMap<u32, Process>,
    /// Namespaces seen, kept or not.
    pub namespaces: u64,
    pub dropped: Dropped,
    next_lane: u64,
    /// Last record's time: the end when there is no stop line.
    last_ns: i128,
    /// (kind, inode) -> the lane of the namespace alive under that inode
    /// (inodes are reused once a namespace is gone).
    open: HashMap<(NsKind, u32), u64>,
    /// Namespaces alive at the start, by (kind, inode): their id, for the
    /// lanes made when a record first touches them.
    before: HashMap<(NsKind, u32), Option<u64>>,
    group_of: HashMap<(String, NsKind, String), usize>,
    /// Closed lanes in the order closed (ids; some may be gone already).
    ordinary: VecDeque<u64>,
    ordinary_kept: usize,
    kept: VecDeque<u64>,
    kept_count: usize,
    /// Pids in the order first seen.
    process_order: VecDeque<u32>,
}

/// What was seen but is not kept as detail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Lanes of short-lived namespaces (their groups' counts have them).
    pub lanes: u64,
    /// Lanes that mattered, beyond [`KEPT`].
    pub kept_lanes: u64,
    pub processes: u64,
    /// Joins, marks and phases beyond [`MARKS`] on one lane or process.
    pub marks: u64,
}

impl Dropped {
    pub fn any(&self) -> bool {
        *self != Dropped::default()
    }
}

/// The namespaces of one kind one command made in one container.
#[derive(Clone, Debug)]
pub struct Group {
    /// Container label (see [`group_label`]), [`HOST`] or [`OTHER`].
    pub container: String,
    pub kind: NsKind,
    /// The creating command, or [`BEFORE`] or [`OTHER`].
    pub comm: String,
    /// Namespaces in it, seen in the trace.
    pub count: u64,
    pub alive: u32,
    pub peak: u32,
    /// Alive over time (not for [`BEFORE`] groups, whose births are unknown).
    pub series: Series,
    /// Its lanes dropped from the detail.
    pub dropped: u64,
    ordinary: VecDeque<u64>,
    ordinary_kept: usize,
}

impl Group {
    /// Drawn as one row of counts (with its lanes as detail) rather than
    /// lane by lane.
    pub fn aggregated(&self) -> bool {
        // Namespaces alive before the trace all matter (and have no births
        // to count over time): they are always drawn one by one.
        self.comm != BEFORE && (self.count > SMALL || self.dropped > 0)
    }
}

/// How many of a group were alive over time: point `i` covers
/// `[origin + i*width, origin + (i+1)*width)`; it holds the most alive at
/// once in it (exact), how many were alive at its end, and how many were
/// created and ended in it. Widths double (neighbours merged) as the trace
/// outgrows [`POINTS`] points.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub origin: i128,
    pub width: i128,
    pub points: Vec<Point>,
    alive: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Point {
    pub peak: u32,
    pub last: u32,
    pub created: u32,
    pub ended: u32,
}

impl Series {
    fn new(origin: i128) -> Self {
        Series {
            origin,
            width: 1_000,
            points: Vec::new(),
            alive: 0,
        }
    }

    fn add(&mut self, t: i128, up: bool) {
        let t = t.max(self.origin);
        let mut i = (t - self.origin) / self.width;
        while i >= POINTS as i128 {
            self.halve();
            i = (t - self.origin) / self.width;
        }
        let i = i as usize;
        let before = self.alive;
        while self.points.len() <= i {
            self.points.push(Point {
                peak: before,
                last: before,
                ..Point::default()
            });
        }
        self.alive = if up {
            self.alive.saturating_add(1)
        } else {
            self.alive.saturating_sub(1)
        };
        let newest = i + 1 == self.points.len();
        let p = &mut self.points[i];
        p.peak = p.peak.max(self.alive);
        if up {
            p.created = p.created.saturating_add(1);
        } else {
            p.ended = p.ended.saturating_add(1);
        }
        // A record a little out of order lands in an earlier point: that
        // point's end is then not this count; the newest point's is.
        if newest {
            p.last = self.alive;
        }
    }

    fn halve(&mut self) {
        let merged = self
            .points
            .chunks(2)
            .map(|c| match c {
                [a, b] => Point {
                    peak: a.peak.max(b.peak),
                    last: b.last,
                    created: a.created.saturating_add(b.created),
                    ended: a.ended.saturating_add(b.ended),
                },
                [a] => *a,
                _ => unreachable!("chunks of two"),
            })
            .collect();
        self.points = merged;
        self.width *= 2;
    }

    /// The most alive at once.
    pub fn peak(&self) -> u32 {
        self.points.iter().map(|p| p.peak).max().unwrap_or(0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lane {
    pub kind: NsKind,
    pub inode: u32,
    pub ns_id: Option<u64>,
    /// Container label (see [`group_label`]) or [`HOST`].
    pub group: String,
    /// Index of its [`Group`].
    pub group_index: usize,
    /// None: alive before the trace began.
    pub born: Option<Birth>,
    /// Birth, or the trace's start.
    pub begin_ns: i128,
    /// Its phases in order, the first from `begin_ns`: with members, or
    /// pinned (no member left, something holds it; a join ends that).
    pub phases: Vec<Phase>,
    pub end: Option<End>,
    /// The first [`MARKS`] joins.
    pub joins: Vec<Mark>,
    /// All its joins, kept or not.
    pub join_count: u64,
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
    /// The first [`MARKS`] marks.
    pub marks: Vec<Mark>,
}

/// One group as drawn: its row (when aggregated) and its lanes.
pub struct Drawn<'a> {
    pub index: usize,
    pub group: &'a Group,
    /// Lanes drawn one by one: all kept ones of a small group, the ones
    /// that matter of an aggregated one; by birth.
    pub lanes: Vec<&'a Lane>,
    /// An aggregated group's other kept lanes, shown on demand.
    pub more: Vec<&'a Lane>,
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
    fn phase(&mut self, at: i128, pinned_by: Option<Vec<String>>, dropped: &mut Dropped) {
        let full = self.phases.len() >= MARKS;
        let last = self.phases.last_mut().expect("a lane has a phase");
        match (&last.pinned_by, pinned_by) {
            (None, None) => {}
            (Some(_), Some(by)) => last.pinned_by = Some(by),
            (_, pinned_by) if full => {
                // Past the cap the last phase stands for the rest.
                if pinned_by.is_some() {
                    last.pinned_by = pinned_by;
                }
                dropped.marks += 1;
            }
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

    /// Drawn on its own even in a crowd: alive, alive before the trace,
    /// long-lived, ever pinned or joined.
    pub fn matters(&self) -> bool {
        self.end.is_none()
            || self.born.is_none()
            || self.pinned().is_some()
            || self.join_count > 0
            || self
                .end
                .as_ref()
                .is_some_and(|e| e.time_ns - self.begin_ns >= LONG_NS)
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

    /// Where the picture begins: the start line, else the first lane, group
    /// or mark.
    pub fn begin_ns(&self) -> i128 {
        self.start_ns.unwrap_or_else(|| {
            let lanes = self.lanes.values().map(|l| l.begin_ns);
            let groups = self
                .groups
                .iter()
                .filter(|g| !g.series.points.is_empty())
                .map(|g| g.series.origin);
            let marks = self
                .processes
                .values()
                .flat_map(|p| p.marks.iter().map(|m| m.time_ns));
            lanes.chain(groups).chain(marks).min().unwrap_or(0)
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
                if let Some(&old) = self.open.get(&key) {
                    self.end(
                        old,
                        End {
                            time_ns: r.time_ns,
                            cause: EndCause::InodeReused,
                            by: None,
                        },
                    );
                }
                let mark = self.mark(r, creation(r));
                let container = group_of(r);
                let comm = r.actor.as_ref().map_or("?", |a| a.comm.as_str());
                let g = self.group(&container, key.0, comm, r.time_ns);
                self.groups[g].series.add(r.time_ns, true);
                self.alive(g, true);
                let lane = Lane {
                    kind: key.0,
                    inode: key.1,
                    ns_id: r.ns_id,
                    group: container,
                    group_index: g,
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
                    join_count: 0,
                    created_by: mark,
                };
                self.add_lane(key, lane);
            }
            (EventType::Join, Some(key)) => {
                let id = self.lane(key, r);
                let lane = self.lanes.get_mut(&id).expect("open lanes are kept");
                lane.phase(r.time_ns, None, &mut self.dropped);
                if let Some(a) = &r.actor {
                    lane.join_count += 1;
                    if lane.joins.len() < MARKS {
                        lane.joins.push(Mark {
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
                    } else {
                        self.dropped.marks += 1;
                    }
                }
            }
            // A leak is drawn as the pinned phase it is.
            (EventType::Pinned | EventType::Leak, Some(key)) => {
                let id = self.lane(key, r);
                let lane = self.lanes.get_mut(&id).expect("open lanes are kept");
                lane.phase(r.time_ns, Some(r.pinned_by.clone()), &mut self.dropped);
            }
            (EventType::Destroy, Some(key)) => {
                let id = self.lane(key, r);
                self.end(
                    id,
                    End {
                        time_ns: r.time_ns,
                        cause: r.end.unwrap_or(EndCause::LastMemberLeft),
                        by: r.end_by,
                    },
                );
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

    /// The group of (container, kind, comm), made if new (folded into
    /// [`OTHER`] past [`MAX_GROUPS`]).
    fn group(&mut self, container: &str, kind: NsKind, comm: &str, at: i128) -> usize {
        let mut key = (container.to_string(), kind, comm.to_string());
        if !self.group_of.contains_key(&key) && self.groups.len() >= MAX_GROUPS {
            key = (OTHER.to_string(), kind, OTHER.to_string());
        }
        if let Some(&g) = self.group_of.get(&key) {
            return g;
        }
        self.groups.push(Group {
            container: key.0.clone(),
            kind,
            comm: key.2.clone(),
            count: 0,
            alive: 0,
            peak: 0,
            series: Series::new(at),
            dropped: 0,
            ordinary: VecDeque::new(),
            ordinary_kept: 0,
        });
        self.group_of.insert(key, self.groups.len() - 1);
        self.groups.len() - 1
    }

    fn alive(&mut self, g: usize, up: bool) {
        let g = &mut self.groups[g];
        if up {
            g.count += 1;
            g.alive = g.alive.saturating_add(1);
            g.peak = g.peak.max(g.alive);
        } else {
            g.alive = g.alive.saturating_sub(1);
        }
    }

    fn add_lane(&mut self, key: (NsKind, u32), lane: Lane) -> u64 {
        let id = self.next_lane;
        self.next_lane += 1;
        self.namespaces += 1;
        self.lanes.insert(id, lane);
        self.open.insert(key, id);
        id
    }

    /// Ends lane `id` and files it as detail that matters or as ordinary,
    /// dropping the oldest detail past the caps.
    fn end(&mut self, id: u64, end: End) {
        let Some(lane) = self.lanes.get_mut(&id) else {
            return;
        };
        let key = (lane.kind, lane.inode);
        if self.open.get(&key) == Some(&id) {
            self.open.remove(&key);
        }
        if lane.end.is_some() {
            return;
        }
        let at = end.time_ns;
        lane.end = Some(end);
        let g = lane.group_index;
        let counted = lane.born.is_some();
        let matters = lane.matters();
        if counted {
            self.groups[g].series.add(at, false);
            self.alive(g, false);
        }
        if matters {
            self.kept.push_back(id);
            self.kept_count += 1;
            while self.kept_count > KEPT {
                let Some(old) = self.kept.pop_front() else {
                    break;
                };
                if let Some(l) = self.lanes.remove(&old) {
                    self.kept_count -= 1;
                    self.dropped.kept_lanes += 1;
                    self.groups[l.group_index].dropped += 1;
                }
            }
            return;
        }
        self.ordinary.push_back(id);
        self.ordinary_kept += 1;
        let group = &mut self.groups[g];
        group.ordinary.push_back(id);
        group.ordinary_kept += 1;
        while self.groups[g].ordinary_kept > GROUP_WINDOW {
            let Some(old) = self.groups[g].ordinary.pop_front() else {
                break;
            };
            self.drop_ordinary(old);
        }
        while self.ordinary_kept > WINDOW {
            let Some(old) = self.ordinary.pop_front() else {
                break;
            };
            self.drop_ordinary(old);
        }
        // Ids dropped through one queue stay in the other: compact it now
        // and then so that neither grows past twice its cap.
        if self.ordinary.len() > 2 * WINDOW {
            let lanes = &self.lanes;
            self.ordinary.retain(|i| lanes.contains_key(i));
        }
        let group = &mut self.groups[g];
        if group.ordinary.len() > 2 * GROUP_WINDOW {
            let lanes = &self.lanes;
            group.ordinary.retain(|i| lanes.contains_key(i));
        }
    }

    fn drop_ordinary(&mut self, id: u64) {
        if let Some(l) = self.lanes.remove(&id) {
            self.ordinary_kept -= 1;
            self.dropped.lanes += 1;
            let g = &mut self.groups[l.group_index];
            g.ordinary_kept -= 1;
            g.dropped += 1;
        }
    }

    /// The open lane of `key`; one made from the trace's start (or this
    /// record's birth field) when the namespace was born before the trace.
    fn lane(&mut self, key: (NsKind, u32), r: &Record) -> u64 {
        if let Some(&id) = self.open.get(&key) {
            if let Some(c) = &r.ns_container {
                // The runtime that made it is known only now (the create
                // came from a helper the attribution did not see through):
                // it moves to that container's group.
                let lane = &self.lanes[&id];
                if lane.group == HOST {
                    let label = group_label(c);
                    let (old, comm) =
                        (lane.group_index, self.groups[lane.group_index].comm.clone());
                    let counted = lane.born.is_some();
                    let g = self.group(&label, key.0, &comm, r.time_ns);
                    if counted {
                        self.groups[old].series.add(r.time_ns, false);
                        self.alive(old, false);
                        self.groups[old].count -= 1;
                        self.groups[g].series.add(r.time_ns, true);
                        self.alive(g, true);
                    } else {
                        self.groups[old].count -= 1;
                        self.groups[g].count += 1;
                    }
                    let lane = self.lanes.get_mut(&id).expect("open lanes are kept");
                    lane.group = label;
                    lane.group_index = g;
                }
            }
            return id;
        }
        let begin = r
            .born
            .as_ref()
            .map(|b| b.time_ns)
            .or(self.start_ns)
            .unwrap_or(r.time_ns);
        let ns_id = self.before.get(&key).copied().flatten().or(r.ns_id);
        let container = r
            .ns_container
            .as_ref()
            .map_or(HOST.to_string(), group_label);
        let g = self.group(&container, key.0, BEFORE, begin);
        self.groups[g].count += 1;
        self.add_lane(
            key,
            Lane {
                kind: key.0,
                inode: key.1,
                ns_id,
                group: container,
                group_index: g,
                born: None,
                begin_ns: begin,
                phases: vec![Phase {
                    from_ns: begin,
                    pinned_by: None,
                }],
                end: None,
                joins: Vec::new(),
                join_count: 0,
                created_by: None,
            },
        )
    }

    /// Adds a mark on the actor's thread; returns (pid, index) to it.
    fn mark(&mut self, r: &Record, (what, failed): (String, bool)) -> Option<(u32, usize)> {
        let a = r.actor.as_ref()?;
        if !self.processes.contains_key(&a.pid) {
            self.process_order.push_back(a.pid);
            while self.process_order.len() > PROCESSES {
                if let Some(old) = self.process_order.pop_front() {
                    self.processes.remove(&old);
                    self.dropped.processes += 1;
                }
            }
        }
        let p = self.processes.entry(a.pid).or_default();
        if p.comm.is_empty() {
            p.comm = a.comm.clone();
            p.group = r.container.as_ref().map_or(HOST.to_string(), group_label);
        }
        if p.threads.len() < MARKS {
            p.threads.entry(a.tid).or_insert_with(|| a.comm.clone());
        }
        if let Some(last) = p.marks.last() {
            if (last.time_ns, last.tid, &last.what) == (r.time_ns, a.tid, &what) {
                return Some((a.pid, p.marks.len() - 1));
            }
        }
        if p.marks.len() >= MARKS || !p.threads.contains_key(&a.tid) {
            self.dropped.marks += 1;
            return None;
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

    /// The groups in the order the pictures draw them (host first, then
    /// containers by name; within one by kind, then command), each with its
    /// kept lanes by birth.
    pub fn drawn(&self) -> Vec<Drawn<'_>> {
        let mut lanes: Vec<Vec<&Lane>> = vec![Vec::new(); self.groups.len()];
        for l in self.lanes.values() {
            lanes[l.group_index].push(l);
        }
        let mut order: Vec<usize> = (0..self.groups.len())
            .filter(|&g| self.groups[g].count > 0)
            .collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (&self.groups[a], &self.groups[b]);
            let rank = |g: &Group| (g.container != HOST, g.container == OTHER);
            (rank(a), &a.container, a.kind, a.comm == BEFORE, &a.comm).cmp(&(
                rank(b),
                &b.container,
                b.kind,
                b.comm == BEFORE,
                &b.comm,
            ))
        });
        order
            .into_iter()
            .map(|index| {
                let group = &self.groups[index];
                let mut mine = std::mem::take(&mut lanes[index]);
                mine.sort_by_key(|l| (l.begin_ns, l.inode, l.ns_id));
                let (lanes, more) = if group.aggregated() {
                    mine.into_iter().partition(|l| l.matters())
                } else {
                    (mine, Vec::new())
                };
                Drawn {
                    index,
                    group,
                    lanes,
                    more,
                }
            })
            .collect()
    }
}

/// The processes the pictures draw: those with a failed call, and those
/// that made a namespace drawn on its own (a crowd's makers are in its
/// counts); and how many others there are.
pub fn shown_processes<'a>(t: &'a Timeline, drawn: &[Drawn]) -> (Vec<(u32, &'a Process)>, u64) {
    let makers: std::collections::HashSet<u32> = drawn
        .iter()
        .flat_map(|d| d.lanes.iter())
        .filter_map(|l| l.created_by.map(|(pid, _)| pid))
        .collect();
    let shown: Vec<(u32, &Process)> = t
        .processes
        .iter()
        .filter(|(pid, p)| p.marks.iter().any(|m| m.failed) || makers.contains(pid))
        .map(|(&pid, p)| (pid, p))
        .collect();
    let others = t.processes.len() - shown.len();
    (shown, others as u64)
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
        let l = &t.lanes[&0];
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
        let before = &t.lanes[&1];
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
            t.lanes[&0].end.as_ref().unwrap().cause,
            EndCause::InodeReused
        );
        assert!(t.lanes[&1].end.is_none());
        let g = &t.groups[t.lanes[&1].group_index];
        assert_eq!((g.count, g.alive, g.peak), (2, 1, 1));
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

    fn churn(t: &mut Timeline, n: u32, at: &mut i128, comm: &str) {
        for i in 0..n {
            for (event, inode) in [
                (EventType::Create, 100 + i % 3),
                (EventType::Destroy, 100 + i % 3),
            ] {
                *at += 1_000;
                t.record(&Record {
                    time_ns: *at,
                    event,
                    kind: Some(NsKind::Uts),
                    inode: Some(inode),
                    ns_id: Some(u64::from(i)),
                    syscall: Some(Syscall::Clone),
                    actor: actor(1000 + i, comm),
                    ..Record::default()
                });
            }
        }
    }

    #[test]
    fn a_crowd_is_one_group_with_exact_peaks_in_bounded_detail() {
        let mut t = Timeline::default();
        let mut at = 0;
        churn(&mut t, 30_000, &mut at, "churn");
        // Three alive at once, somewhere in the middle.
        for inode in [1, 2, 3] {
            t.record(&Record {
                time_ns: at + i128::from(inode),
                event: EventType::Create,
                kind: Some(NsKind::Uts),
                inode: Some(inode),
                syscall: Some(Syscall::Unshare),
                actor: actor(7, "churn"),
                ..Record::default()
            });
        }
        at += 10;
        churn(&mut t, 30_000, &mut at, "churn");
        let drawn = t.drawn();
        assert_eq!(drawn.len(), 1);
        let d = &drawn[0];
        assert_eq!((d.group.count, d.group.peak, d.group.alive), (60_003, 4, 3));
        assert_eq!(d.group.series.peak(), 4);
        assert!(d.group.series.points.len() <= POINTS);
        assert!(d.group.aggregated());
        // The three alive are drawn; the window holds the newest others.
        assert_eq!(d.lanes.len(), 3);
        assert_eq!(d.more.len(), GROUP_WINDOW);
        assert!(
            d.more
                .iter()
                .all(|l| l.born.as_ref().unwrap().pid >= 1000 + 30_000 - GROUP_WINDOW as u32)
        );
        assert_eq!(t.dropped.lanes, 60_000 - GROUP_WINDOW as u64);
        assert_eq!(t.namespaces, 60_003);
        assert!(t.processes.len() <= PROCESSES);
        assert_eq!(t.dropped.processes, 60_001 - PROCESSES as u64);
        assert!(t.ordinary.len() <= 2 * WINDOW && t.groups[0].ordinary.len() <= 2 * GROUP_WINDOW);
    }

    #[test]
    fn the_window_is_shared_by_groups_and_small_ones_draw_lane_by_lane() {
        let mut t = Timeline::default();
        let mut at = 0;
        for g in 0..30 {
            churn(&mut t, 1_500, &mut at, &format!("c{g}"));
        }
        churn(&mut t, 2, &mut at, "small");
        assert_eq!(t.lanes.len(), WINDOW);
        let drawn = t.drawn();
        let small = drawn.iter().find(|d| d.group.comm == "small").unwrap();
        assert!(!small.group.aggregated());
        assert_eq!((small.lanes.len(), small.more.len()), (2, 0));
        let kept: usize = drawn.iter().map(|d| d.lanes.len() + d.more.len()).sum();
        assert_eq!(kept, WINDOW);
    }

    #[test]
    fn commands_cannot_make_groups_without_end() {
        let mut t = Timeline::default();
        let mut at = 0;
        for g in 0..MAX_GROUPS + 500 {
            churn(&mut t, 1, &mut at, &format!("x{g}"));
        }
        assert_eq!(t.groups.len(), MAX_GROUPS + 1);
        assert_eq!(t.groups.last().unwrap().count, 500);
    }

    #[test]
    fn series_halves_keeping_peaks_and_counts() {
        let mut s = Series::new(0);
        let mut alive = 0u32;
        let mut peak = 0;
        for i in 0..100_000i128 {
            let up = i % 7 < 4;
            if !up && alive == 0 {
                continue;
            }
            s.add(i * 997, up);
            alive = if up { alive + 1 } else { alive - 1 };
            peak = peak.max(alive);
        }
        assert!(s.points.len() <= POINTS);
        assert_eq!(s.peak(), peak);
        assert_eq!(s.points.last().unwrap().last, alive);
        let created: u32 = s.points.iter().map(|p| p.created).sum();
        let ended: u32 = s.points.iter().map(|p| p.ended).sum();
        assert_eq!(created - ended, alive);
    }
}
