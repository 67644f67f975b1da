//! The records state changes produce, built here and nowhere else: the
//! registry keeps state, the ends decide, and this turns what they changed
//! into what the sinks are told.

use crate::{
    model::{Actor, EndCause, EndMethod, EventType, Record},
    state::registry::{Entry, State},
};

/// A namespace's end: `cause`, established by `by` (None: found by its
/// inode's reuse), with the last member that left, if seen.
pub fn destroy(e: &Entry, cause: EndCause, by: Option<EndMethod>, last: Option<Actor>) -> Record {
    Record {
        time_ns: e.ended_ns.unwrap_or_default(),
        event: EventType::Destroy,
        kind: Some(e.kind),
        inode: Some(e.inode),
        ns_id: e.ns_id,
        born: e.born.clone(),
        end: Some(cause),
        end_by: by,
        init_pid: e.init_exited,
        actor: last,
        ns_container: e.container.clone(),
        followed: e.followed,
        ..Record::default()
    }
}

/// A namespace with no member, held by what its state names, as of `time_ns`.
pub fn pinned(e: &Entry, time_ns: i128) -> Record {
    let by = match &e.state {
        State::Pinned(by) => by.clone(),
        _ => Vec::new(),
    };
    Record {
        time_ns,
        event: EventType::Pinned,
        kind: Some(e.kind),
        inode: Some(e.inode),
        ns_id: e.ns_id,
        born: e.born.clone(),
        pinned_by: by,
        ns_container: e.container.clone(),
        followed: e.followed,
        ..Record::default()
    }
}

/// A suspect leak: a pinned namespace that has outlived its container by
/// `age_ns`, as of `time_ns`.
pub fn leak(e: &Entry, time_ns: i128, age_ns: i128) -> Record {
    Record {
        event: EventType::Leak,
        age_ns: Some(age_ns),
        ..pinned(e, time_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::NsKind, state::registry::Registry};

    #[test]
    fn a_destroy_tells_the_entry_it_ended() {
        let mut reg = Registry::default();
        reg.pin((NsKind::Net, 7), vec!["mount /run/netns/a".into()]);
        let p = pinned(reg.get((NsKind::Net, 7)).unwrap(), 5);
        assert_eq!((p.event, p.time_ns), (EventType::Pinned, 5));
        assert_eq!(p.pinned_by, vec!["mount /run/netns/a".to_string()]);
        let e = reg.end((NsKind::Net, 7), 9);
        let d = destroy(e, EndCause::PinReleased, Some(EndMethod::Inference), None);
        assert_eq!(
            (d.event, d.time_ns, d.inode),
            (EventType::Destroy, 9, Some(7))
        );
        assert_eq!(
            (d.end, d.end_by),
            (Some(EndCause::PinReleased), Some(EndMethod::Inference))
        );
        assert!(reg.get((NsKind::Net, 7)).is_none());
    }
}
