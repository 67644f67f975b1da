//! The registry of namespaces: every namespace alive (seeded from /proc at
//! start, then kept up to date from records), what is known of its birth and
//! its state, and the ones that ended. Inodes are reused by the kernel, so an
//! ended namespace leaves the live map and a later one with the same inode is
//! a new entry.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use crate::{
    model::NsKey,
    model::{Birth, EventType, NsKind, Record},
    sys::procfs::Snapshot,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Has member tasks (or we have not seen it lose them).
    Alive,
    /// No member task, still held by these.
    Pinned(Vec<String>),
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub kind: NsKind,
    pub inode: u32,
    pub ns_id: Option<u64>,
    /// Owning user namespace (for user: the parent user namespace).
    pub owner: Option<u32>,
    /// For PID namespaces: the parent PID namespace.
    pub parent: Option<u32>,
    /// Seen being created while tracing.
    pub born: Option<Birth>,
    /// Already alive when tracing started: its member count came from a /proc
    /// scan, which can race, so an apparent end is re-checked against /proc.
    pub preexisting: bool,
    pub state: State,
    /// The init of a PID namespace exited (host pid).
    pub init_exited: Option<u32>,
    /// When it ended (Unix ns).
    pub ended_ns: Option<i128>,
    /// The container it belongs to: the one whose runtime created it, else
    /// the first container whose process joined it.
    pub container: Option<crate::model::Container>,
    /// Created by a followed process.
    pub followed: bool,
    /// Told as a suspect leak at this time (its container gone, it pinned).
    pub leaked: Option<i128>,
    /// PID namespaces: its init (host pid) and the pidfs inode of its
    /// `struct pid`, read by the kernel side as the init exited (6.9+): a
    /// pidfd of it held after that still holds the namespace.
    pub init_pidfs: Option<(u32, u64)>,
}

impl Entry {
    fn new(kind: NsKind, inode: u32) -> Self {
        Entry {
            kind,
            inode,
            ns_id: None,
            owner: None,
            parent: None,
            born: None,
            preexisting: false,
            state: State::Alive,
            init_exited: None,
            ended_ns: None,
            container: None,
            followed: false,
            leaked: None,
            init_pidfs: None,
        }
    }

    pub fn key(&self) -> NsKey {
        (self.kind, self.inode)
    }

    pub fn lifetime_ns(&self) -> Option<i128> {
        Some(self.ended_ns? - self.born.as_ref()?.time_ns)
    }
}

/// Per-kind totals for the closing summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindTotals {
    pub created: u64,
    pub joined: u64,
    pub destroyed: u64,
}

/// Ends kept for inspection: a window, not a history, so that a tracer left
/// running for weeks holds no more than a fresh one.
pub const RECENT_ENDS: usize = 256;

#[derive(Debug, Default)]
pub struct Registry {
    alive: HashMap<NsKey, Entry>,
    /// The most recent ends, oldest first, at most [`RECENT_ENDS`].
    recent_ends: VecDeque<Entry>,
    /// The longest-lived namespace of all that ended (for the summary).
    longest_ended: Option<Entry>,
    totals: BTreeMap<NsKind, KindTotals>,
    /// The host's namespaces: never any container's, whoever joins them.
    host: BTreeSet<NsKey>,
}

impl Registry {
    /// Seeds the registry with what a /proc scan found.
    pub fn from_snapshot(
        snap: &Snapshot,
        meta: impl Fn(NsKey) -> crate::sys::procfs::NsMeta,
    ) -> Self {
        let mut reg = Registry::default();
        for key in snap.namespaces() {
            let mut e = Entry::new(key.0, key.1);
            e.preexisting = true;
            let m = meta(key);
            e.owner = m.owner;
            e.parent = m.parent;
            e.ns_id = m.ns_id;
            reg.alive.insert(key, e);
        }
        reg
    }

    /// The host's namespaces (`sys::procfs::host_namespaces`): a container
    /// process joining one (a privileged container's `nsenter -t 1`) does
    /// not make it that container's.
    pub fn set_host(&mut self, host: BTreeSet<NsKey>) {
        self.host = host;
    }

    /// Names the container of each namespace alive at start that the host
    /// does not own, by what `of` says of it (its members' container): a
    /// container running before the trace is then known as its
    /// namespaces' owner, and their leaks can be told.
    pub fn attribute(&mut self, mut of: impl FnMut(NsKey) -> Option<crate::model::Container>) {
        for (key, e) in self.alive.iter_mut() {
            if e.container.is_none() && !self.host.contains(key) {
                e.container = of(*key);
            }
        }
    }

    /// Seeds the registry with the namespaces a saved trace says were alive
    /// at its start (`nstrace report`).
    pub fn from_start(alive: &[(NsKind, u32, Option<u64>)]) -> Self {
        let mut reg = Registry::default();
        for &(kind, inode, ns_id) in alive {
            let mut e = Entry::new(kind, inode);
            e.preexisting = true;
            e.ns_id = ns_id;
            reg.alive.insert((kind, inode), e);
        }
        reg
    }

    /// Learns from a record of a saved trace as the live session did when
    /// it wrote it: creates and joins observed, pins and ends applied.
    pub fn replay(&mut self, r: &mut Record) {
        let key = r.kind.zip(r.inode);
        match (r.event, key) {
            (EventType::Create | EventType::Join, _) => {
                self.observe(r);
            }
            (EventType::Pinned, Some(key)) => {
                self.pin(key, r.pinned_by.clone());
            }
            (EventType::Leak, Some(key)) => {
                self.pin(key, r.pinned_by.clone());
                if let Some(e) = self.alive.get_mut(&key) {
                    e.leaked = Some(r.time_ns);
                    if e.container.is_none() {
                        e.container = r.ns_container.clone();
                    }
                }
            }
            (EventType::Destroy, Some(key)) => {
                if let Some(e) = self.alive.get_mut(&key) {
                    e.init_exited = r.init_pid;
                }
                self.end(key, r.time_ns);
            }
            _ => {}
        }
    }

    pub fn get(&self, key: NsKey) -> Option<&Entry> {
        self.alive.get(&key)
    }

    pub fn get_mut(&mut self, key: NsKey) -> Option<&mut Entry> {
        self.alive.get_mut(&key)
    }

    pub fn alive(&self) -> impl Iterator<Item = &Entry> {
        self.alive.values()
    }

    /// The most recent ends, oldest first (a bounded window).
    pub fn recent_ends(&self) -> impl Iterator<Item = &Entry> {
        self.recent_ends.iter()
    }

    /// The longest-lived of every namespace that ended while tracing.
    pub fn longest_ended(&self) -> Option<&Entry> {
        self.longest_ended.as_ref()
    }

    fn keep_ended(&mut self, e: Entry) {
        if e.lifetime_ns().is_some_and(|l| {
            self.longest_ended
                .as_ref()
                .and_then(Entry::lifetime_ns)
                .is_none_or(|best| l > best)
        }) {
            self.longest_ended = Some(e.clone());
        }
        if self.recent_ends.len() == RECENT_ENDS {
            self.recent_ends.pop_front();
        }
        self.recent_ends.push_back(e);
    }

    pub fn totals(&self) -> &BTreeMap<NsKind, KindTotals> {
        &self.totals
    }

    /// Learns from a create/join/error record, and annotates joins with the
    /// birth of the namespace joined. Returns an entry that a create replaced:
    /// the kernel reused an inode whose end we missed.
    pub fn observe(&mut self, r: &mut Record) -> Option<Entry> {
        let (Some(kind), Some(inode)) = (r.kind, r.inode) else {
            return None;
        };
        let key = (kind, inode);
        match r.event {
            EventType::Create => {
                self.totals.entry(kind).or_default().created += 1;
                let replaced = self.alive.remove(&key);
                let mut e = Entry::new(kind, inode);
                e.ns_id = r.ns_id;
                e.owner = r.owner_inode;
                e.parent = r.parent_inode;
                e.container = r.container.clone();
                e.followed = r.followed;
                e.born = r.actor.as_ref().zip(r.syscall).map(|(a, s)| Birth {
                    time_ns: r.time_ns,
                    pid: a.pid,
                    comm: a.comm.clone(),
                    syscall: s,
                });
                self.alive.insert(key, e);
                replaced
            }
            EventType::Join => {
                if r.prev_inode != r.inode {
                    self.totals.entry(kind).or_default().joined += 1;
                }
                let e = self
                    .alive
                    .entry(key)
                    .or_insert_with(|| Entry::new(kind, inode));
                e.state = State::Alive;
                e.leaked = None;
                if e.ns_id.is_none() {
                    e.ns_id = r.ns_id;
                }
                // A namespace no container made (a runtime daemon's, such as
                // a CRI pod's network namespace) is the first joining
                // container's: the pod it was made for.
                if e.container.is_none() && !self.host.contains(&key) {
                    e.container = r.container.clone();
                }
                r.born = e.born.clone();
                r.ns_container = e.container.clone();
                None
            }
            _ => None,
        }
    }

    /// Marks a namespace pinned by `by`; the entry, or None if it was
    /// already pinned by the same things (nothing to say).
    pub fn pin(&mut self, key: NsKey, by: Vec<String>) -> Option<&Entry> {
        let e = self
            .alive
            .entry(key)
            .or_insert_with(|| Entry::new(key.0, key.1));
        if e.state == State::Pinned(by.clone()) {
            return None;
        }
        e.state = State::Pinned(by);
        Some(e)
    }

    /// Ends a namespace at `time_ns`: moves it to the ended ones and returns
    /// it (one the registry never knew is ended as a bare key).
    pub fn end(&mut self, key: NsKey, time_ns: i128) -> &Entry {
        let e = self
            .alive
            .remove(&key)
            .unwrap_or_else(|| Entry::new(key.0, key.1));
        self.end_entry(e, time_ns)
    }

    /// Ends an entry no longer in the alive set (a create replaced it: its
    /// inode was reused).
    pub fn end_entry(&mut self, mut e: Entry, time_ns: i128) -> &Entry {
        e.ended_ns = Some(time_ns);
        self.totals.entry(e.kind).or_default().destroyed += 1;
        self.keep_ended(e);
        self.recent_ends.back().expect("just kept")
    }

    /// Live namespaces owned by (user) or nested in (pid) `key`: they pin it.
    pub fn dependents(&self, key: NsKey) -> Vec<NsKey> {
        let mut out: Vec<NsKey> = self
            .alive
            .values()
            .filter(|e| match key.0 {
                NsKind::User => e.owner == Some(key.1) && e.key() != key,
                NsKind::Pid => e.kind == NsKind::Pid && e.parent == Some(key.1),
                _ => false,
            })
            .map(Entry::key)
            .collect();
        out.sort();
        out
    }

    /// Containers some namespace of which still has members (as far as the
    /// member counts tell): the ones not gone.
    pub fn live_containers(&self) -> HashSet<&str> {
        self.alive
            .values()
            .filter(|e| e.state == State::Alive)
            .filter_map(|e| e.container.as_ref().map(|c| c.id.as_str()))
            .collect()
    }

    /// Namespaces born while tracing and still alive: possible leaks.
    pub fn leaks(&self) -> Vec<&Entry> {
        let mut v: Vec<&Entry> = self.alive.values().filter(|e| e.born.is_some()).collect();
        v.sort_by_key(|e| e.born.as_ref().map(|b| b.time_ns));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Actor, Syscall};

    fn create(kind: NsKind, inode: u32, t: i128) -> Record {
        Record {
            time_ns: t,
            event: EventType::Create,
            kind: Some(kind),
            inode: Some(inode),
            prev_inode: Some(1),
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
        }
    }

    #[test]
    fn join_is_annotated_with_birth() {
        let mut reg = Registry::default();
        reg.observe(&mut create(NsKind::Net, 7, 100));
        let mut join = Record {
            event: EventType::Join,
            kind: Some(NsKind::Net),
            inode: Some(7),
            prev_inode: Some(1),
            ..Record::default()
        };
        reg.observe(&mut join);
        let born = join.born.unwrap();
        assert_eq!(
            (born.pid, born.comm.as_str(), born.time_ns),
            (42, "unshare", 100)
        );
        assert_eq!(
            reg.totals()[&NsKind::Net],
            KindTotals {
                created: 1,
                joined: 1,
                destroyed: 0
            }
        );
    }

    #[test]
    fn reused_inode_is_a_new_entry() {
        let mut reg = Registry::default();
        reg.observe(&mut create(NsKind::Uts, 9, 100));
        let d = reg.end((NsKind::Uts, 9), 300);
        assert_eq!(d.ended_ns, Some(300));
        assert_eq!(d.born.as_ref().unwrap().time_ns, 100);
        reg.observe(&mut create(NsKind::Uts, 9, 500));
        assert_eq!(reg.recent_ends().count(), 1);
        assert_eq!(reg.longest_ended().unwrap().lifetime_ns(), Some(200));
        assert_eq!(
            reg.get((NsKind::Uts, 9))
                .unwrap()
                .born
                .as_ref()
                .unwrap()
                .time_ns,
            500
        );
    }

    #[test]
    fn a_create_over_a_live_inode_returns_the_stale_entry() {
        let mut reg = Registry::default();
        reg.observe(&mut create(NsKind::Ipc, 5, 1));
        let stale = reg.observe(&mut create(NsKind::Ipc, 5, 2)).unwrap();
        assert_eq!(stale.born.unwrap().time_ns, 1);
    }

    #[test]
    fn owned_namespaces_are_dependents_of_their_user_namespace() {
        let mut reg = Registry::default();
        let mut user = create(NsKind::User, 10, 1);
        user.owner_inode = Some(1);
        reg.observe(&mut user);
        let mut net = create(NsKind::Net, 11, 2);
        net.owner_inode = Some(10);
        reg.observe(&mut net);
        assert_eq!(reg.dependents((NsKind::User, 10)), vec![(NsKind::Net, 11)]);
        assert!(reg.dependents((NsKind::Net, 11)).is_empty());
    }

    #[test]
    fn ends_are_kept_as_a_window_and_the_longest() {
        let mut reg = Registry::default();
        for i in 0..(RECENT_ENDS as u32 * 4) {
            reg.observe(&mut create(NsKind::Uts, i, 0));
            // The 7th lives longest.
            let end = if i == 7 { 1_000 } else { 10 };
            reg.end((NsKind::Uts, i), end);
        }
        assert_eq!(reg.recent_ends().count(), RECENT_ENDS);
        assert_eq!(reg.longest_ended().unwrap().inode, 7);
        assert_eq!(reg.totals()[&NsKind::Uts].destroyed, RECENT_ENDS as u64 * 4);
        assert_eq!(reg.alive().count(), 0);
    }

    #[test]
    fn pinning_twice_with_the_same_pins_reports_once() {
        let mut reg = Registry::default();
        reg.observe(&mut create(NsKind::Net, 7, 1));
        let pins = vec!["mount /run/netns/t".to_string()];
        assert!(reg.pin((NsKind::Net, 7), pins.clone()).is_some());
        assert!(reg.pin((NsKind::Net, 7), pins).is_none());
        assert_eq!(reg.leaks().len(), 1);
    }
}
