//! Inference (kernels without nsfs handles): gone when a namespace has no
//! member and nothing in /proc holds it (nsfs mounts in every mount
//! namespace, fds of every process, namespaces it owns or contains), seen so
//! twice, [`GRACE_NS`] apart, so that the kernel's own deferred free has run.
//! A namespace nothing else holds is looked for among the sockets held
//! outside their own network namespace (net) and the zombies (user, pid)
//! too. Best effort: a pidfd of an exited process or an open file's
//! credentials hold a namespace where /proc does not show it.

use super::{Decider, Ends, GRACE_NS, Hidden, Holders, POLL_INFERENCE_NS, Verdict, pins_of};
use crate::{
    model::{EndMethod, NsKey},
    state::registry::Registry,
    sys::{nsfs::Answer, procfs::FdHolders},
};

pub struct Inference;

impl Decider for Inference {
    fn name(&self) -> EndMethod {
        EndMethod::Inference
    }
    /// The kernel is not asked: /proc is read ([`Ends::infer`]).
    fn ask(&self, _: NsKey, _: Option<u64>) -> Option<std::io::Result<Answer>> {
        None
    }
    fn polls_pins(&self) -> bool {
        true
    }
}

impl Ends {
    /// Inference: nothing in /proc holds it and it has no member, seen twice
    /// [`GRACE_NS`] apart; held by something visible, pinned at once.
    pub(super) fn infer(
        &mut self,
        due: Vec<NsKey>,
        now: i128,
        reg: &Registry,
        src: &mut dyn Holders,
    ) -> Vec<Verdict> {
        let mut out = Vec::new();
        let mounts = src.mounts();
        let need_fds = due
            .iter()
            .any(|k| !mounts.contains_key(k) && reg.dependents(*k).is_empty());
        let fds = if need_fds {
            src.fds()
        } else {
            FdHolders::new()
        };
        let mut hidden = Hidden::default();
        for key in due {
            let mut pins = pins_of(key, &mounts, &fds, reg, &self.home_mntns);
            if pins.is_empty() {
                pins = hidden.pins(key, src, (&mounts, &fds), reg);
            }
            let Some(w) = self.watch.get_mut(&key) else {
                continue;
            };
            if !pins.is_empty() {
                w.looks_gone_at = None;
                w.next = now + POLL_INFERENCE_NS;
                if !w.pinned {
                    w.pinned = true;
                    out.extend(Verdict::pinned(reg, key, pins, now));
                }
                continue;
            }
            match w.looks_gone_at {
                Some(t) if now - t >= GRACE_NS => match Verdict::gone(reg, key, now) {
                    Some(v) => {
                        w.next = i128::MAX;
                        out.push(v);
                    }
                    None => {
                        self.watch.remove(&key);
                    }
                },
                Some(t) => w.next = t + GRACE_NS,
                None => {
                    w.looks_gone_at = Some(now);
                    w.next = now + GRACE_NS;
                }
            }
        }
        out
    }
}
