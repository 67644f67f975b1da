//! Which records the user asked to see.

use crate::model::{EventType, NsKind, Record};

#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Container id prefix or name; matches the actor's container or the
    /// container that created the namespace.
    pub container: Option<String>,
    /// Only records of followed processes (`--pid`, command mode).
    pub followed_only: bool,
    /// Containers whose records pass even when not followed (command mode:
    /// the containers the command caused).
    pub extra_containers: Vec<String>,
    pub comm: Option<String>,
    pub kinds: Option<Vec<NsKind>>,
    pub events: Option<Vec<EventType>>,
}

impl Filter {
    pub fn matches(&self, r: &Record) -> bool {
        let containers = || r.container.iter().chain(r.ns_container.iter());
        if let Some(want) = &self.container {
            if !containers().any(|c| c.matches(want)) {
                return false;
            }
        }
        if self.followed_only
            && !r.followed
            && !containers().any(|c| self.extra_containers.contains(&c.id))
        {
            return false;
        }
        if let Some(comm) = &self.comm {
            let actor = r.actor.as_ref().map(|a| a.comm.as_str());
            let creator = r.born.as_ref().map(|b| b.comm.as_str());
            if actor != Some(comm.as_str()) && creator != Some(comm.as_str()) {
                return false;
            }
        }
        if let Some(kinds) = &self.kinds {
            if !r.kind.is_some_and(|k| kinds.contains(&k)) {
                return false;
            }
        }
        if let Some(events) = &self.events {
            if !events.contains(&r.event) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::Actor, model::Container};

    fn rec() -> Record {
        Record {
            event: EventType::Create,
            kind: Some(NsKind::Net),
            actor: Some(Actor {
                comm: "runc:[1:CHILD]".into(),
                ..Actor::default()
            }),
            container: Some(Container {
                id: "abcdef0123".into(),
                runtime: "docker",
                name: Some("web".into()),
                pod: None,
                namespace: None,
            }),
            ..Record::default()
        }
    }

    #[test]
    fn each_filter_narrows() {
        let r = rec();
        assert!(Filter::default().matches(&r));
        let f = |f: Filter| f.matches(&r);
        assert!(f(Filter {
            container: Some("abc".into()),
            ..Filter::default()
        }));
        assert!(f(Filter {
            container: Some("web".into()),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            container: Some("xyz".into()),
            ..Filter::default()
        }));
        assert!(f(Filter {
            comm: Some("runc:[1:CHILD]".into()),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            comm: Some("bash".into()),
            ..Filter::default()
        }));
        assert!(f(Filter {
            kinds: Some(vec![NsKind::Net]),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            kinds: Some(vec![NsKind::Pid]),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            events: Some(vec![EventType::Destroy]),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            followed_only: true,
            ..Filter::default()
        }));
        assert!(f(Filter {
            followed_only: true,
            extra_containers: vec!["abcdef0123".into()],
            ..Filter::default()
        }));
    }
}
