//! Suspect leaks: a namespace that belonged to a container (or pod), has no
//! member, is still held, and has outlived that container by `--leak-after`.
//! A namespace no container ever had (`ip netns add` by hand) is never one.
//!
//! A container is gone when none of its namespaces has a member left, by
//! the kernel side's member counts: every container has a mount namespace
//! of its own (runc makes one), so this is when its last process went. It
//! is asked at each tick (twice a second), so the time a container went is
//! known to within one.

use std::collections::{BTreeMap, HashMap};

use crate::{
    model::{NsKey, Record},
    state::{
        records,
        registry::{Registry, State},
    },
};

pub struct Leaks {
    /// How long a namespace outlives its container before it is told (ns);
    /// None: never told.
    after: Option<i128>,
    /// Containers seen gone, and since when (event-scale ns).
    gone: HashMap<String, i128>,
}

impl Leaks {
    pub fn new(after: Option<std::time::Duration>) -> Self {
        Leaks {
            after: after.map(|d| d.as_nanos() as i128),
            gone: HashMap::new(),
        }
    }

    /// The `leak` records due at `now`: each suspect told once (again only
    /// if it is joined and left held again), with what holds it now, as
    /// `holders` finds it (a pin's holders can change after its record: a
    /// runtime's mount goes, a leaked fd stays).
    pub fn check(
        &mut self,
        now: i128,
        reg: &mut Registry,
        holders: impl FnOnce(&[NsKey], &Registry) -> BTreeMap<NsKey, Vec<String>>,
    ) -> Vec<Record> {
        let Some(after) = self.after else {
            return Vec::new();
        };
        // Only held namespaces of a container not yet told are suspects; the
        // scan for live containers is made only when there is one.
        let suspects: Vec<(NsKey, String)> = reg
            .alive()
            .filter(|e| e.leaked.is_none() && matches!(e.state, State::Pinned(_)))
            .filter_map(|e| Some((e.key(), e.container.as_ref()?.id.clone())))
            .collect();
        if suspects.is_empty() {
            self.gone.clear();
            return Vec::new();
        }
        let live = reg.live_containers();
        self.gone
            .retain(|id, _| !live.contains(id.as_str()) && suspects.iter().any(|(_, c)| c == id));
        let mut due = Vec::new();
        for (key, id) in suspects {
            if live.contains(id.as_str()) {
                continue;
            }
            let since = *self.gone.entry(id).or_insert(now);
            if now - since >= after {
                due.push((key, since));
            }
        }
        if due.is_empty() {
            return Vec::new();
        }
        let keys: Vec<NsKey> = due.iter().map(|(k, _)| *k).collect();
        let mut now_held = holders(&keys, reg);
        due.into_iter()
            .filter_map(|(key, since)| {
                if let Some(by) = now_held.remove(&key).filter(|b| !b.is_empty()) {
                    reg.pin(key, by);
                }
                let e = reg.get_mut(key)?;
                e.leaked = Some(now);
                Some(records::leak(e, now, now - since))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Container, EventType, NsKind, Syscall};

    const S: i128 = 1_000_000_000;

    /// Holders for a check that must not search (nothing is due).
    fn unasked(_: &[NsKey], _: &Registry) -> BTreeMap<NsKey, Vec<String>> {
        panic!("searched for holders with no leak due")
    }

    fn container(id: &str) -> Container {
        Container {
            id: id.into(),
            runtime: "containerd",
            name: None,
            pod: Some("web".into()),
            namespace: Some("shop".into()),
        }
    }

    fn record(event: EventType, kind: NsKind, inode: u32, c: Option<&str>) -> Record {
        Record {
            event,
            kind: Some(kind),
            inode: Some(inode),
            syscall: Some(Syscall::Setns),
            container: c.map(container),
            ..Record::default()
        }
    }

    /// A daemon's netns (no container), joined by container `c`, whose own
    /// mount namespace is 20.
    fn pod(reg: &mut Registry) {
        reg.observe(&mut record(EventType::Create, NsKind::Net, 10, None));
        reg.observe(&mut record(EventType::Create, NsKind::Mnt, 20, Some("c")));
        let mut join = record(EventType::Join, NsKind::Net, 10, Some("c"));
        reg.observe(&mut join);
        assert_eq!(join.ns_container.unwrap().id, "c");
    }

    #[test]
    fn a_held_namespace_is_told_once_after_its_container_went() {
        let mut reg = Registry::default();
        pod(&mut reg);
        let mut leaks = Leaks::new(Some(std::time::Duration::from_secs(2)));
        reg.pin(
            (NsKind::Net, 10),
            vec!["mount /run/netns/cni-1".into(), "fd 3 of x (pid 9)".into()],
        );
        // The container's mount namespace still has members: not gone.
        assert!(leaks.check(S, &mut reg, unasked).is_empty());
        reg.end((NsKind::Mnt, 20), 2 * S);
        assert!(leaks.check(3 * S, &mut reg, unasked).is_empty());
        // Told with the holders of now: the fd went since it was pinned.
        let told = leaks.check(5 * S, &mut reg, |keys, _| {
            assert_eq!(keys, [(NsKind::Net, 10)]);
            [(
                (NsKind::Net, 10),
                vec!["mount /run/netns/cni-1".to_string()],
            )]
            .into()
        });
        assert_eq!(told.len(), 1);
        let l = &told[0];
        assert_eq!(
            (l.event, l.inode, l.age_ns),
            (EventType::Leak, Some(10), Some(2 * S))
        );
        assert_eq!(l.pinned_by, ["mount /run/netns/cni-1"]);
        assert_eq!(l.ns_container.as_ref().unwrap().pod.as_deref(), Some("web"));
        assert!(
            leaks.check(9 * S, &mut reg, unasked).is_empty(),
            "told once"
        );
        assert_eq!(reg.get((NsKind::Net, 10)).unwrap().leaked, Some(5 * S));
    }

    #[test]
    fn a_namespace_no_container_had_is_never_a_leak() {
        let mut reg = Registry::default();
        reg.observe(&mut record(EventType::Create, NsKind::Net, 10, None));
        reg.pin((NsKind::Net, 10), vec!["mount /run/netns/mine".into()]);
        let mut leaks = Leaks::new(Some(std::time::Duration::ZERO));
        assert!(leaks.check(S, &mut reg, unasked).is_empty());
        assert!(leaks.check(100 * S, &mut reg, unasked).is_empty());
    }

    #[test]
    fn a_host_namespace_joined_by_a_container_is_not_its() {
        let mut reg = Registry::default();
        reg.set_host([(NsKind::Net, 1)].into());
        let mut join = record(EventType::Join, NsKind::Net, 1, Some("c"));
        reg.observe(&mut join);
        assert!(join.ns_container.is_none());
    }

    #[test]
    fn zero_disables() {
        let mut reg = Registry::default();
        pod(&mut reg);
        reg.pin((NsKind::Net, 10), vec!["fd 3 of x (pid 9)".into()]);
        reg.end((NsKind::Mnt, 20), S);
        let mut leaks = Leaks::new(None);
        assert!(leaks.check(100 * S, &mut reg, unasked).is_empty());
    }
}
