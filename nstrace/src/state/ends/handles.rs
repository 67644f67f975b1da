//! nsfs file handles (Linux 6.18+): when a namespace loses its last member,
//! the kernel is asked whether it still exists (`sys::nsfs`); gone is
//! `destroy`, alive is `pinned`, asked again until it goes. The kernel's
//! answer is the whole truth. A namespace whose id was never seen cannot be
//! asked by handle: it is inferred, never guessed gone.

use super::Decider;
use crate::{
    model::{EndMethod, NsKey, NsKind},
    sys::nsfs::{Answer, Handles},
};

/// Whether a namespace exists, from the kernel itself.
pub trait Ask {
    fn ask(&self, kind: NsKind, inode: u32, ns_id: u64) -> std::io::Result<Answer>;
}

impl Ask for Handles {
    fn ask(&self, kind: NsKind, inode: u32, ns_id: u64) -> std::io::Result<Answer> {
        Handles::ask(self, kind, inode, ns_id)
    }
}

pub struct ByHandle(pub Box<dyn Ask>);

impl Decider for ByHandle {
    fn name(&self) -> EndMethod {
        EndMethod::NsfsHandle
    }
    fn ask(&self, (kind, inode): NsKey, ns_id: Option<u64>) -> Option<std::io::Result<Answer>> {
        ns_id.map(|id| self.0.ask(kind, inode, id))
    }
    fn polls_pins(&self) -> bool {
        true
    }
}
