//! fentry: the kernel's own free path reports each end (the programs hook
//! the free functions `kernel::offsets` resolves per kind). A namespace
//! that emptied waits for that event; only `pinned` is decided here, by the
//! same rules as the other methods, and never polled.

use super::{Decider, Ends};
use crate::{
    kernel::decode::NsRef,
    model::{EndCause, EndMethod, NsKey, Record},
    state::{records, registry::Registry},
    sys::nsfs::Answer,
};

pub struct Fentry;

impl Decider for Fentry {
    fn name(&self) -> EndMethod {
        EndMethod::Fentry
    }
    /// Not freed yet: the free event ends the watch.
    fn ask(&self, _: NsKey, _: Option<u64>) -> Option<std::io::Result<Answer>> {
        Some(Ok(Answer::Alive))
    }
    fn polls_pins(&self) -> bool {
        false
    }
}

impl Ends {
    /// fentry: the kernel freed it. None for the second report of one free
    /// (two hooks on its path, ipc's put and its caller) where the kernel
    /// side had no member entry to mark it told.
    pub fn on_freed(&mut self, n: NsRef, time_ns: i128, reg: &mut Registry) -> Option<Record> {
        let key = (n.kind, n.inode);
        let again = self.last_freed.replace(key) == Some(key);
        if again && reg.get(key).is_none() {
            return None;
        }
        if let Some(e) = reg.get_mut(key) {
            if e.ns_id.is_none() {
                e.ns_id = n.ns_id;
            }
        }
        self.watch.remove(&key);
        let e = reg.end(key, time_ns);
        Some(records::destroy(
            e,
            EndCause::KernelFreed,
            Some(EndMethod::Fentry),
            None,
        ))
    }
}
