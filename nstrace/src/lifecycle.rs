//! Deciding that a namespace ended, with tracepoints only.
//!
//! The kernel side counts member threads per watched namespace and says when a
//! count reaches zero. A namespace with no member may still be held by an nsfs
//! bind mount, an open fd, or namespaces it owns (user) or contains (pid):
//! then it is *pinned*, and it ends when the last pin goes. Counts of
//! namespaces that existed before tracing came from a /proc scan that can
//! race with forks, so their end is confirmed against /proc first: a destroy is
//! never reported while a member task lives.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    decode::NsRef,
    procfs::{self, FdHolders, NsKey, Snapshot},
    record::{Actor, EndCause, NsKind, Record},
    registry::Registry,
    time::Clock,
};

/// The kernel's member counts, as user space sees them.
pub trait MemberCounts {
    fn get(&self, key: NsKey) -> Option<i64>;
    fn set(&mut self, key: NsKey, members: i64);
    fn remove(&mut self, key: NsKey);
}

/// What holds namespaces besides their member tasks.
pub trait PinSource {
    fn mounts(&mut self) -> BTreeMap<NsKey, Vec<String>>;
    fn fds(&mut self, wanted: &BTreeSet<NsKey>) -> FdHolders;
    fn threads_in(&mut self, key: NsKey) -> i64;
}

/// The /proc answers pin checks need (fd holders of namespaces, nsfs mount
/// tables), each read at most once and reused while it is current enough: a
/// scan taken at time S shows every pin of a namespace that emptied before S
/// (an fd or mount that pins it was made while it still had a member), so
/// it serves every event stamped before S. A burst of exits costs one scan,
/// not thousands.
pub struct Procfs {
    clock: Clock,
    /// Stamp of the newest event handled: scans older than it are stale.
    needed_after: i128,
    mounts: Option<(i128, BTreeMap<NsKey, Vec<String>>)>,
    fds: Option<(i128, FdHolders)>,
}

impl Procfs {
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            needed_after: i128::MIN,
            mounts: None,
            fds: None,
        }
    }

    /// An event stamped `time_ns` is being handled.
    pub fn event_at(&mut self, time_ns: i128) {
        self.needed_after = self.needed_after.max(time_ns);
    }

    /// The next answer must be read from now on (a poll of pinned namespaces).
    pub fn refresh(&mut self) {
        self.needed_after = self.clock.now_as_event_ns();
    }

    /// `cache` if it was read after `needed_after`, else a new `read()`.
    fn current<T>(
        cache: &mut Option<(i128, T)>,
        clock: Clock,
        needed_after: i128,
        read: impl FnOnce() -> T,
    ) -> &T {
        if cache.as_ref().is_none_or(|(at, _)| *at < needed_after) {
            let at = clock.now_as_event_ns();
            *cache = Some((at, read()));
        }
        &cache.as_ref().expect("just filled").1
    }
}

impl PinSource for Procfs {
    fn mounts(&mut self) -> BTreeMap<NsKey, Vec<String>> {
        Self::current(
            &mut self.mounts,
            self.clock,
            self.needed_after,
            procfs::nsfs_mounts,
        )
        .clone()
    }

    fn fds(&mut self, wanted: &BTreeSet<NsKey>) -> FdHolders {
        if wanted.is_empty() {
            return BTreeMap::new();
        }
        let all = Self::current(
            &mut self.fds,
            self.clock,
            self.needed_after,
            procfs::ns_fd_holders,
        );
        wanted
            .iter()
            .filter_map(|k| Some((*k, all.get(k)?.clone())))
            .collect()
    }

    fn threads_in(&mut self, key: NsKey) -> i64 {
        procfs::count_threads(key)
    }
}

#[derive(Default)]
pub struct Lifecycle {
    /// Namespaces with no member left but pinned: re-checked on every poll.
    pinned: BTreeSet<NsKey>,
    /// fentry mode: the kernel reports every end itself; here only pins are told.
    exact: bool,
}

/// Namespaces of PID 1 are the host's: they never end, so they are not watched.
pub fn seed_counts(
    snap: &Snapshot,
    host: &BTreeSet<NsKey>,
    counts: &mut dyn MemberCounts,
) -> usize {
    let mut n = 0;
    for (&key, &threads) in &snap.threads {
        if !host.contains(&key) {
            counts.set(key, threads);
            n += 1;
        }
    }
    // Namespaces held only by mounts have no member but are alive.
    for key in snap.mounts.keys() {
        if !host.contains(key) && !snap.threads.contains_key(key) {
            counts.set(*key, 0);
            n += 1;
        }
    }
    n
}

impl Lifecycle {
    /// With `exact_ends` (fentry), ends come from the kernel's free path and
    /// this only reports namespaces left pinned.
    pub fn new(exact_ends: bool) -> Self {
        Lifecycle {
            exact: exact_ends,
            ..Lifecycle::default()
        }
    }

    /// The kernel freed it.
    pub fn forget(&mut self, key: NsKey) {
        self.pinned.remove(&key);
    }

    /// Namespaces currently known to be pinned.
    pub fn pinned(&self) -> &BTreeSet<NsKey> {
        &self.pinned
    }

    /// Watches mount-only namespaces found at start as pinned.
    pub fn seed_pinned(&mut self, snap: &Snapshot) {
        for key in snap.mounts.keys() {
            if !snap.threads.contains_key(key) {
                self.pinned.insert(*key);
            }
        }
    }

    /// The kernel said these namespaces lost their last member.
    pub fn on_emptied(
        &mut self,
        emptied: &[NsRef],
        last: Option<&Actor>,
        time_ns: i128,
        reg: &mut Registry,
        counts: &mut dyn MemberCounts,
        src: &mut dyn PinSource,
    ) -> Vec<Record> {
        let mut out = Vec::new();
        let mut candidates = Vec::new();
        for n in emptied {
            let key = (n.kind, n.inode);
            if let Some(e) = reg.get_mut(key) {
                if e.ns_id.is_none() {
                    e.ns_id = n.ns_id;
                }
            }
            let preexisting = reg.get(key).is_none_or(|e| e.preexisting);
            if preexisting {
                let live = src.threads_in(key);
                if live > 0 {
                    counts.set(key, live);
                    continue;
                }
            }
            candidates.push(key);
        }
        self.settle(
            candidates,
            time_ns,
            last,
            EndCause::LastMemberLeft,
            reg,
            counts,
            src,
            &mut out,
        );
        out
    }

    /// Re-checks pinned namespaces (call a few times a second).
    pub fn poll(
        &mut self,
        time_ns: i128,
        reg: &mut Registry,
        counts: &mut dyn MemberCounts,
        src: &mut dyn PinSource,
    ) -> Vec<Record> {
        let mut out = Vec::new();
        if self.exact {
            return out;
        }
        let mut candidates = Vec::new();
        for key in std::mem::take(&mut self.pinned) {
            if counts.get(key).unwrap_or(0) > 0 {
                // Someone joined it again: alive, and its next emptying is reported anew.
                if let Some(e) = reg.get_mut(key) {
                    e.state = crate::registry::State::Alive;
                }
                continue;
            }
            candidates.push(key);
        }
        self.settle(
            candidates,
            time_ns,
            None,
            EndCause::PinReleased,
            reg,
            counts,
            src,
            &mut out,
        );
        out
    }

    /// For namespaces without members: pinned (record once) or ended. An end
    /// can release the namespace that owned or contained it, so repeat.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &mut self,
        mut candidates: Vec<NsKey>,
        time_ns: i128,
        mut last: Option<&Actor>,
        mut cause: EndCause,
        reg: &mut Registry,
        counts: &mut dyn MemberCounts,
        src: &mut dyn PinSource,
        out: &mut Vec<Record>,
    ) {
        let mut mounts = None;
        while !candidates.is_empty() {
            let mounts = mounts.get_or_insert_with(|| src.mounts());
            let wanted: BTreeSet<NsKey> = candidates
                .iter()
                .copied()
                .filter(|k| !mounts.contains_key(k) && reg.dependents(*k).is_empty())
                .collect();
            let fds = src.fds(&wanted);
            let mut released = Vec::new();
            for key in candidates.drain(..) {
                let pins = pins_of(key, mounts, &fds, reg);
                if pins.is_empty() && self.exact {
                    // The kernel's free path will say when it ends.
                    continue;
                }
                if pins.is_empty() {
                    let (owner, parent) = reg
                        .get(key)
                        .map(|e| (e.owner, e.parent))
                        .unwrap_or_default();
                    counts.remove(key);
                    self.pinned.remove(&key);
                    out.push(reg.end(key, cause, time_ns, last.cloned()));
                    // Its owner or parent may have been waiting only for it.
                    for up in [
                        owner.map(|o| (NsKind::User, o)),
                        parent.map(|p| (NsKind::Pid, p)),
                    ]
                    .into_iter()
                    .flatten()
                    {
                        if self.pinned.contains(&up) && counts.get(up).unwrap_or(0) <= 0 {
                            self.pinned.remove(&up);
                            released.push(up);
                        }
                    }
                } else {
                    self.pinned.insert(key);
                    if let Some(r) = reg.pin(key, pins, time_ns) {
                        out.push(r);
                    }
                }
            }
            // What is released now was held only by what just ended.
            candidates = released;
            cause = EndCause::PinReleased;
            last = None;
        }
    }
}

fn pins_of(
    key: NsKey,
    mounts: &BTreeMap<NsKey, Vec<String>>,
    fds: &FdHolders,
    reg: &Registry,
) -> Vec<String> {
    let mut pins: Vec<String> = mounts
        .get(&key)
        .into_iter()
        .flatten()
        .map(|m| format!("mount {m}"))
        .collect();
    pins.extend(
        fds.get(&key)
            .into_iter()
            .flatten()
            .map(|(pid, fd, comm)| format!("fd {fd} of {comm} (pid {pid})")),
    );
    pins.extend(reg.dependents(key).into_iter().map(|(k, i)| match key.0 {
        NsKind::Pid => format!("child pid namespace {i}"),
        _ => format!("owned {} namespace {i}", k.name()),
    }));
    pins
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::record::{EventType, Syscall};

    #[derive(Default)]
    struct Counts(HashMap<NsKey, i64>);

    impl MemberCounts for Counts {
        fn get(&self, key: NsKey) -> Option<i64> {
            self.0.get(&key).copied()
        }
        fn set(&mut self, key: NsKey, members: i64) {
            self.0.insert(key, members);
        }
        fn remove(&mut self, key: NsKey) {
            self.0.remove(&key);
        }
    }

    #[derive(Default)]
    struct FakeProc {
        mounts: BTreeMap<NsKey, Vec<String>>,
        threads: HashMap<NsKey, i64>,
        fd_scans: usize,
    }

    impl PinSource for FakeProc {
        fn mounts(&mut self) -> BTreeMap<NsKey, Vec<String>> {
            self.mounts.clone()
        }
        fn fds(&mut self, _: &BTreeSet<NsKey>) -> FdHolders {
            self.fd_scans += 1;
            BTreeMap::new()
        }
        fn threads_in(&mut self, key: NsKey) -> i64 {
            self.threads.get(&key).copied().unwrap_or(0)
        }
    }

    const NET: NsKey = (NsKind::Net, 4026532300);

    fn registry_with_created(key: NsKey, owner: Option<u32>) -> Registry {
        let mut reg = Registry::default();
        let mut r = Record {
            event: EventType::Create,
            kind: Some(key.0),
            inode: Some(key.1),
            owner_inode: owner,
            syscall: Some(Syscall::Unshare),
            actor: Some(Actor::default()),
            time_ns: 10,
            ..Record::default()
        };
        reg.observe(&mut r);
        reg
    }

    fn emptied(key: NsKey) -> Vec<NsRef> {
        vec![NsRef {
            kind: key.0,
            inode: key.1,
            ns_id: None,
        }]
    }

    #[test]
    fn unpinned_namespace_ends_when_its_last_member_leaves() {
        let mut reg = registry_with_created(NET, None);
        let (mut counts, mut src, mut lc) =
            (Counts::default(), FakeProc::default(), Lifecycle::default());
        counts.set(NET, 0);
        let out = lc.on_emptied(&emptied(NET), None, 110, &mut reg, &mut counts, &mut src);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].event, EventType::Destroy);
        assert_eq!(out[0].end, Some(EndCause::LastMemberLeft));
        assert_eq!(reg.ended()[0].lifetime_ns(), Some(100));
        assert!(counts.get(NET).is_none(), "the kernel map entry is dropped");
    }

    #[test]
    fn mounted_namespace_is_pinned_then_ends_when_unmounted() {
        let mut reg = registry_with_created(NET, None);
        let (mut counts, mut src, mut lc) =
            (Counts::default(), FakeProc::default(), Lifecycle::default());
        src.mounts.insert(NET, vec!["/run/netns/t".into()]);
        let out = lc.on_emptied(&emptied(NET), None, 110, &mut reg, &mut counts, &mut src);
        assert_eq!(out[0].event, EventType::Pinned);
        assert_eq!(out[0].pinned_by, vec!["mount /run/netns/t".to_string()]);
        assert!(
            lc.poll(120, &mut reg, &mut counts, &mut src).is_empty(),
            "still mounted"
        );
        src.mounts.clear();
        let out = lc.poll(130, &mut reg, &mut counts, &mut src);
        assert_eq!(out[0].event, EventType::Destroy);
        assert_eq!(out[0].end, Some(EndCause::PinReleased));
        assert!(lc.pinned().is_empty());
    }

    #[test]
    fn with_exact_ends_only_pins_are_reported() {
        let mut reg = registry_with_created(NET, None);
        let (mut counts, mut src) = (Counts::default(), FakeProc::default());
        let mut lc = Lifecycle::new(true);
        assert!(
            lc.on_emptied(&emptied(NET), None, 110, &mut reg, &mut counts, &mut src)
                .is_empty()
        );
        src.mounts.insert(NET, vec!["/run/netns/t".into()]);
        let out = lc.on_emptied(&emptied(NET), None, 120, &mut reg, &mut counts, &mut src);
        assert_eq!(out[0].event, EventType::Pinned);
        src.mounts.clear();
        assert!(lc.poll(130, &mut reg, &mut counts, &mut src).is_empty());
    }

    #[test]
    fn preexisting_namespace_with_live_members_is_not_destroyed() {
        let mut reg = Registry::default();
        let (mut counts, mut src, mut lc) =
            (Counts::default(), FakeProc::default(), Lifecycle::default());
        src.threads.insert(NET, 3);
        let out = lc.on_emptied(&emptied(NET), None, 110, &mut reg, &mut counts, &mut src);
        assert!(out.is_empty());
        assert_eq!(counts.get(NET), Some(3), "count corrected from /proc");
    }

    #[test]
    fn user_namespace_waits_for_what_it_owns() {
        let user: NsKey = (NsKind::User, 4026532400);
        let mut reg = registry_with_created(user, None);
        let mut net = Record {
            event: EventType::Create,
            kind: Some(NET.0),
            inode: Some(NET.1),
            owner_inode: Some(user.1),
            ..Record::default()
        };
        reg.observe(&mut net);
        let (mut counts, mut src, mut lc) =
            (Counts::default(), FakeProc::default(), Lifecycle::default());
        src.mounts.insert(NET, vec!["/run/netns/t".into()]);
        let out = lc.on_emptied(
            &[emptied(user)[0], emptied(NET)[0]],
            None,
            110,
            &mut reg,
            &mut counts,
            &mut src,
        );
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|r| r.event == EventType::Pinned));
        src.mounts.clear();
        let out = lc.poll(130, &mut reg, &mut counts, &mut src);
        let ended: Vec<_> = out.iter().map(|r| (r.event, r.kind)).collect();
        assert_eq!(
            ended,
            vec![
                (EventType::Destroy, Some(NsKind::Net)),
                (EventType::Destroy, Some(NsKind::User))
            ]
        );
    }
}
