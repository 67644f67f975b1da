//! Deciding that a namespace ended: the one place that does. This file
//! keeps the watches (namespaces with no member, not known to be gone) and
//! the two phases, check and apply; each method is one file behind
//! [`Decider`], chosen per kind at start-up ([`Methods`]): fentry where the
//! kernel has a free function for the kind that fentry can attach to, else
//! the best of the other two.
//!
//! - [`fentry`]: the kernel's own free path reports each end; here only
//!   `pinned` is decided.
//! - [`handles`] (Linux 6.18+): when a namespace loses its last member, the
//!   kernel is asked whether it still exists; gone is `destroy`, alive is
//!   `pinned`, re-asked a few times a second until it goes. The kernel's
//!   answer is the whole truth.
//! - [`inference`] (older kernels): gone when it has no member and nothing
//!   in /proc holds it, seen so twice, [`GRACE_NS`] apart. Best effort.
//!
//! Every answer is read at a time S, after the event that emptied the
//! namespace; its record is emitted only once every event stamped before S
//! has been (the session drains up to S between [`Ends::check`] and
//! [`Ends::apply`]). So a verdict never goes back in time: what the kernel
//! said at S is reported after the joins and exits before S, never before.

pub mod fentry;
pub mod handles;
pub mod inference;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::{
    kernel::{decode::NsRef, probes::MemberCounts},
    model::{Actor, EndCause, EndMethod, NsKey, NsKind, Record},
    state::{records, registry::Registry},
    sys::{
        nsfs::Answer,
        procfs::{self, ExitedPidfds, FdHolders, Members, MountPin, Snapshot, Zombies},
    },
};
pub use handles::Ask;

/// One way of deciding ends, for the kinds given to it.
pub trait Decider {
    fn name(&self) -> EndMethod;
    /// What is known now of `key` (with its id, if seen): gone or alive;
    /// None when this method cannot tell, and /proc is read instead
    /// ([`inference`]).
    fn ask(&self, key: NsKey, ns_id: Option<u64>) -> Option<std::io::Result<Answer>>;
    /// Whether a pinned namespace is asked again until it goes (fentry: its
    /// free event tells).
    fn polls_pins(&self) -> bool;
}

/// What /proc says holds namespaces, and who is in them.
pub trait Holders {
    fn mounts(&mut self) -> BTreeMap<NsKey, Vec<MountPin>>;
    fn fds(&mut self) -> FdHolders;
    /// Sockets and tun fds held outside their network namespace: asked
    /// only for a memberless network namespace nothing else visibly holds
    /// (a copy of every socket out of its process is costly).
    fn sockets(&mut self) -> FdHolders {
        FdHolders::new()
    }
    /// nsfs mounts inside the mount namespaces no process is in that
    /// `mounts` or `fds` hold: asked only for a memberless namespace
    /// nothing else visibly holds (each such table is entered to be read).
    fn memberless_mounts(
        &mut self,
        _mounts: &BTreeMap<NsKey, Vec<MountPin>>,
        _fds: &FdHolders,
    ) -> BTreeMap<NsKey, Vec<MountPin>> {
        BTreeMap::new()
    }
    /// Pidfds of processes that exited, by the pidfs inode of the process.
    fn exited_pidfds(&mut self) -> ExitedPidfds {
        BTreeMap::new()
    }
    /// Zombies, by the user and PID namespaces they hold until reaped:
    /// asked only for a memberless one nothing else visibly holds.
    fn zombies(&mut self) -> Zombies {
        Zombies::new()
    }
    /// Member threads of the sets holding any of `keys`, counted from /proc.
    fn members(&mut self, keys: &BTreeSet<NsKey>) -> Members;
}

/// The real /proc.
pub struct Procfs;

impl Holders for Procfs {
    fn mounts(&mut self) -> BTreeMap<NsKey, Vec<MountPin>> {
        procfs::nsfs_mounts()
    }
    fn fds(&mut self) -> FdHolders {
        procfs::ns_fd_holders()
    }
    fn sockets(&mut self) -> FdHolders {
        procfs::socket_holders_now()
    }
    fn zombies(&mut self) -> Zombies {
        procfs::zombie_holders()
    }
    fn exited_pidfds(&mut self) -> ExitedPidfds {
        procfs::exited_pidfds()
    }
    fn memberless_mounts(
        &mut self,
        mounts: &BTreeMap<NsKey, Vec<MountPin>>,
        fds: &FdHolders,
    ) -> BTreeMap<NsKey, Vec<MountPin>> {
        procfs::nsfs_mounts_memberless(mounts, fds)
    }
    fn members(&mut self, keys: &BTreeSet<NsKey>) -> Members {
        procfs::count_members(keys)
    }
}

/// How each kind's ends are decided on this kernel.
pub struct Methods {
    by_kind: [EndMethod; NsKind::ALL.len()],
    /// The kernel, asked by handle; set when a kind is decided so.
    handles: Option<handles::ByHandle>,
}

impl Methods {
    /// `fentry` for the kinds in `freed` (the kernel's free path reports
    /// them), `others` for the rest: handles when `ask` is given, else
    /// inference.
    pub fn new(freed: &[NsKind], ask: Option<Box<dyn Ask>>) -> Self {
        let others = if ask.is_some() {
            EndMethod::NsfsHandle
        } else {
            EndMethod::Inference
        };
        let by_kind = NsKind::ALL.map(|k| {
            if freed.contains(&k) {
                EndMethod::Fentry
            } else {
                others
            }
        });
        Methods {
            by_kind,
            handles: ask.map(handles::ByHandle),
        }
    }

    /// How this kernel decides each kind's ends: the kernel's free path
    /// for `freed`; for the rest, the kernel's answer through nsfs file
    /// handles where it has namespace ids and they work, else inference
    /// from /proc (forced with `infer`). The note says why not handles, for
    /// the start-up line, when some kind is left to inference.
    pub fn choose(
        kinds: &[NsKind],
        freed: &[NsKind],
        infer: bool,
        has_ns_id: bool,
        open: impl FnOnce() -> Result<Box<dyn Ask>, String>,
    ) -> (Self, Option<String>) {
        let (ask, note) = if kinds.iter().all(|k| freed.contains(k)) {
            (None, None)
        } else if infer {
            (None, Some("inference forced by --infer-ends".to_string()))
        } else if !has_ns_id {
            (
                None,
                Some("no namespace ids on this kernel (6.18+ has them)".to_string()),
            )
        } else {
            match open() {
                Ok(h) => (Some(h), None),
                Err(why) => (None, Some(format!("nsfs file handles unusable: {why}"))),
            }
        };
        (Methods::new(freed, ask), note)
    }

    pub fn of(&self, kind: NsKind) -> EndMethod {
        self.by_kind[kind.index()]
    }

    /// The method deciding `kind`'s ends.
    pub fn decider(&self, kind: NsKind) -> &dyn Decider {
        match (self.of(kind), &self.handles) {
            (EndMethod::Fentry, _) => &fentry::Fentry,
            (EndMethod::NsfsHandle, Some(h)) => h,
            _ => &inference::Inference,
        }
    }

    /// The one method every kind in `kinds` uses, if they agree.
    pub fn uniform(&self, kinds: &[NsKind]) -> Option<EndMethod> {
        let first = self.of(*kinds.first()?);
        kinds.iter().all(|k| self.of(*k) == first).then_some(first)
    }
}

const MS: i128 = 1_000_000;
/// After a namespace empties, a live answer is asked again at these delays
/// (frees are deferred: RCU for pid, a workqueue for net, a zombie's
/// credentials for user) before it is called held by nothing visible.
const SETTLE_NS: [i128; 5] = [10 * MS, 20 * MS, 40 * MS, 80 * MS, 160 * MS];
/// Pinned namespaces are asked again this often (one syscall each)...
const POLL_HANDLES_NS: i128 = 200 * MS;
/// ...or, by inference, re-scanned (reads every process's fds).
const POLL_INFERENCE_NS: i128 = 500 * MS;
/// Inference: nothing visible holds it, seen twice this far apart, so that
/// the kernel's own deferred free has run before the destroy is reported.
pub const GRACE_NS: i128 = 100 * MS;

const HELD_INSIDE: &str =
    "held inside the kernel: no mount, fd, socket, pidfd, zombie or owned namespace found";

/// A namespace with no member that is not known to be gone.
#[derive(Clone, Debug)]
struct Watch {
    /// The last member that left, for the destroy record. Boxed: the watch
    /// map's nodes move their values on every insert and remove, and an
    /// Actor inline made each move five times the size (a tenth of
    /// nstrace's CPU under churn).
    last: Option<Box<Actor>>,
    /// Answers asked since it emptied.
    checks: usize,
    /// When to ask next (event-scale ns).
    next: i128,
    /// A `pinned` record stands for it.
    pinned: bool,
    /// Inference: when a check first found nothing holding it.
    looks_gone_at: Option<i128>,
    /// A join of it was seen since it emptied. Only `setns` can bring a
    /// member back to a namespace with none (nothing can fork into it), so
    /// only then is the kernel's member count worth a syscall.
    rejoined: bool,
}

/// Which namespace a verdict is about: a verdict is dropped if, by the time
/// it is applied, the key names another namespace (inode reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ident {
    born: Option<i128>,
    ns_id: Option<u64>,
}

#[derive(Debug)]
pub enum Verdict {
    Gone {
        key: NsKey,
        ident: Ident,
        at: i128,
    },
    Pinned {
        key: NsKey,
        ident: Ident,
        by: Vec<String>,
        at: i128,
    },
}

impl Verdict {
    /// `key` is gone, as of `at`; None if the registry no longer knows which
    /// namespace the key names.
    fn gone(reg: &Registry, key: NsKey, at: i128) -> Option<Self> {
        Some(Verdict::Gone {
            key,
            ident: ident(reg, key)?,
            at,
        })
    }

    /// `key` is held by `by`, as of `at`; None as for [`Verdict::gone`].
    fn pinned(reg: &Registry, key: NsKey, by: Vec<String>, at: i128) -> Option<Self> {
        Some(Verdict::Pinned {
            key,
            ident: ident(reg, key)?,
            by,
            at,
        })
    }
}

pub struct Ends {
    methods: Methods,
    watch: BTreeMap<NsKey, Watch>,
    /// Mount namespaces whose mounts are named by path alone.
    home_mntns: Vec<u32>,
    /// The namespace of the last free event.
    last_freed: Option<NsKey>,
}

fn ident(reg: &Registry, key: NsKey) -> Option<Ident> {
    reg.get(key).map(|e| Ident {
        born: e.born.as_ref().map(|b| b.time_ns),
        ns_id: e.ns_id,
    })
}

/// The host's namespaces (the kernel's initial ones) never end, so they are
/// not watched.
pub fn seed_counts(
    snap: &Snapshot,
    host: &BTreeSet<NsKey>,
    counts: &mut dyn MemberCounts,
) -> usize {
    // Each set's threads, and each namespace held by the sets that hold it
    // (see `nstrace_common::SetKey`).
    let mut sets_holding: HashMap<NsKey, i64> = HashMap::new();
    for (set, &threads) in &snap.sets {
        counts.set_set(*set, threads);
        for kind in NsKind::ALL {
            let inode = set[kind.index()];
            if inode != 0 {
                *sets_holding.entry((kind, inode)).or_default() += 1;
            }
        }
    }
    let mut n = 0;
    for (&key, &sets) in &sets_holding {
        if !host.contains(&key) {
            counts.set(key, sets);
            n += 1;
        } else {
            // Known and not watched (where the host's are not the kernel's
            // initial namespaces, the kernel side sees their members): not
            // to be taken for a watched namespace the map forgot.
            counts.set(key, nstrace_common::MEMBERS_UNWATCHED);
        }
    }
    // Namespaces held only by mounts or fds have no member but are alive.
    for key in snap.memberless() {
        if !host.contains(&key) {
            counts.set(key, 0);
            n += 1;
        }
    }
    counts.seeded();
    n
}

impl Ends {
    /// `home_mntns`: the mount namespaces whose mounts are named by path
    /// alone (`sys::procfs::home_mount_namespaces`: the host's and ours).
    pub fn new(methods: Methods, home_mntns: Vec<u32>) -> Self {
        Ends {
            methods,
            watch: BTreeMap::new(),
            home_mntns,
            last_freed: None,
        }
    }

    pub fn methods(&self) -> &Methods {
        &self.methods
    }

    /// Namespaces alive at start with no member (held by a mount or an fd)
    /// are watched as pinned from the first poll.
    pub fn seed(&mut self, snap: &Snapshot, host: &BTreeSet<NsKey>, now: i128) {
        for key in snap.memberless() {
            if host.contains(&key) {
                continue;
            }
            self.watch.insert(
                key,
                Watch {
                    last: None,
                    checks: SETTLE_NS.len(),
                    next: now,
                    pinned: true,
                    looks_gone_at: None,
                    rejoined: false,
                },
            );
        }
    }

    /// Namespaces with no member that are not known to be gone.
    pub fn watched(&self) -> impl Iterator<Item = &NsKey> {
        self.watch.keys()
    }

    /// The kernel side said these lost their last member: ask at the next check.
    pub fn on_emptied(
        &mut self,
        emptied: &[NsRef],
        last: Option<&Actor>,
        now: i128,
        reg: &mut Registry,
    ) {
        for n in emptied {
            let key = (n.kind, n.inode);
            if let Some(e) = reg.get_mut(key) {
                if e.ns_id.is_none() {
                    e.ns_id = n.ns_id;
                }
            }
            let w = self.watch.entry(key).or_insert(Watch {
                last: None,
                checks: 0,
                next: now,
                pinned: false,
                looks_gone_at: None,
                rejoined: false,
            });
            w.last = last.map(|a| Box::new(a.clone()));
            w.checks = 0;
            w.next = now;
            w.looks_gone_at = None;
            // Emptied again after a join: the kernel's count says the joiner
            // left too. Left set, the check would count members in /proc,
            // where a task between its exit tracepoint and the kernel
            // dropping its namespaces still shows: the watch was dropped
            // as "members again" and the end never reported (seen under
            // load: `ip netns exec` joining a namespace just emptied).
            w.rejoined = false;
            // A pinned namespace that was joined and left again is pinned anew.
            w.pinned = w.pinned
                && matches!(
                    reg.get(key).map(|e| &e.state),
                    Some(crate::state::registry::State::Pinned(_))
                );
        }
    }

    /// A join of `key` was seen: if it was watched, its member count is read
    /// at the next check.
    pub fn on_joined(&mut self, key: NsKey) {
        if let Some(w) = self.watch.get_mut(&key) {
            w.rejoined = true;
        }
    }

    /// The key now names another namespace: the kernel gave its inode to a
    /// new one, so the old one is gone. How it ended, where it was watched
    /// (it had emptied, or was pinned, and went before the next check).
    pub fn forget(&mut self, key: NsKey) -> Option<EndCause> {
        self.watch.remove(&key).map(|w| {
            if w.pinned {
                EndCause::PinReleased
            } else {
                EndCause::LastMemberLeft
            }
        })
    }

    /// Whether a namespace that emptied is still waiting for its first
    /// verdict (neither pinned nor gone yet).
    pub fn undecided(&self) -> bool {
        self.watch.values().any(|w| !w.pinned)
    }

    /// When the next check is due.
    pub fn next_due(&self) -> Option<i128> {
        self.watch.values().map(|w| w.next).min()
    }

    /// Whether a check is due by `now`.
    pub fn due(&self, now: i128) -> bool {
        self.watch.values().any(|w| w.next <= now)
    }

    /// Asks about every namespace whose check is due, at `now`. Reads only:
    /// the verdicts take effect in [`Ends::apply`].
    pub fn check(
        &mut self,
        now: i128,
        reg: &Registry,
        counts: &mut dyn MemberCounts,
        src: &mut dyn Holders,
    ) -> Vec<Verdict> {
        let mut due: Vec<NsKey> = self
            .watch
            .iter()
            .filter(|(_, w)| w.next <= now)
            .map(|(k, _)| *k)
            .collect();
        if due.is_empty() {
            return Vec::new();
        }
        // Members again (joined since it emptied): alive, nothing to say.
        // Counted from /proc, not read from the kernel's count with bpf():
        // while a map syscall runs the kernel skips every tracepoint program
        // on that CPU, and a preemptible kernel can run other tasks meanwhile.
        // Rejoins of memberless namespaces are rare; the scan is affordable.
        let rejoined: BTreeSet<NsKey> = due
            .iter()
            .filter(|k| {
                let w = self.watch.get_mut(*k).expect("due keys are watched");
                std::mem::take(&mut w.rejoined)
            })
            .copied()
            .collect();
        if !rejoined.is_empty() {
            let live = src.members(&rejoined);
            due.retain(|k| {
                let members = live.of(*k) > 0;
                if members {
                    self.watch.remove(k);
                }
                !members
            });
        }
        // Counts of namespaces alive at start came from a scan that can race
        // with forks: a zero is confirmed against /proc (never a destroy or
        // a pin while a member task lives).
        let preexisting: BTreeSet<NsKey> = due
            .iter()
            .filter(|k| reg.get(**k).is_none_or(|e| e.preexisting))
            .filter(|k| !self.watch[*k].pinned)
            .copied()
            .collect();
        if !preexisting.is_empty() {
            let live = src.members(&preexisting);
            due.retain(|k| {
                let n = live.of(*k);
                if n == 0 {
                    return true;
                }
                self.watch.remove(k);
                counts.set(*k, n);
                for (set, threads) in live.sets_holding(*k) {
                    counts.set_set(*set, threads);
                }
                false
            });
        }
        let mut answers: Vec<(NsKey, std::io::Result<Answer>)> = Vec::new();
        let mut to_infer = Vec::new();
        for k in due {
            let by = self.methods.decider(k.0);
            let entry = reg.get(k);
            if entry.is_none() && by.name() == EndMethod::NsfsHandle {
                // Ended already (out of the registry): nothing to ask or say.
                self.watch.remove(&k);
                continue;
            }
            match by.ask(k, entry.and_then(|e| e.ns_id)) {
                Some(a) => answers.push((k, a)),
                None => to_infer.push(k),
            }
        }
        let inferred = if to_infer.is_empty() {
            Vec::new()
        } else {
            self.infer(to_infer, now, reg, src)
        };
        let mut out = inferred;
        let mut explain = Vec::new();
        for (key, answer) in answers {
            match answer {
                Ok(Answer::Gone) => {
                    // Still watched until applied: the verdict needs its last member.
                    match Verdict::gone(reg, key, now) {
                        Some(v) => out.push(v),
                        None => {
                            self.watch.remove(&key);
                        }
                    }
                }
                Ok(Answer::Alive) => self.alive(key, &mut explain, POLL_HANDLES_NS, now),
                Err(e) => {
                    // Neither answer: ask again later, say nothing.
                    eprintln!(
                        "nstrace: warning: asking the kernel about {} {}: {e}",
                        key.0.name(),
                        key.1
                    );
                    if let Some(w) = self.watch.get_mut(&key) {
                        w.next = now + POLL_HANDLES_NS;
                    }
                }
            }
        }
        if !explain.is_empty() {
            out.extend(self.explain(explain, now, reg, src));
        }
        out
    }

    /// The kernel says `key` is alive (or has not freed it): ask again soon
    /// while it may be on its way out; once settled, or at once when a
    /// holder is to be seen, it is pinned.
    fn alive(&mut self, key: NsKey, explain: &mut Vec<(NsKey, bool)>, poll: i128, now: i128) {
        let Some(w) = self.watch.get_mut(&key) else {
            return;
        };
        if w.pinned {
            w.next = now + poll;
            return;
        }
        let settled = w.checks >= SETTLE_NS.len();
        w.next = now + if settled { poll } else { SETTLE_NS[w.checks] };
        w.checks += 1;
        // Look for a holder on the first live answer (a mount or fd is then
        // reported at once) and once settled (anything else: the kernel's).
        if w.checks == 1 || settled {
            explain.push((key, settled));
        }
    }

    /// Pinned verdicts for live namespaces, naming what holds them; one
    /// /proc scan for all. Before the settle delays are over, a namespace
    /// nothing visible holds is left to be asked again.
    fn explain(
        &mut self,
        keys: Vec<(NsKey, bool)>,
        now: i128,
        reg: &Registry,
        src: &mut dyn Holders,
    ) -> Vec<Verdict> {
        let mounts = src.mounts();
        let fds = src.fds();
        let mut hidden = Hidden::default();
        let mut out = Vec::new();
        for (key, settled) in keys {
            let mut pins = pins_of(key, &mounts, &fds, reg, &self.home_mntns);
            // Only once settled: a network namespace's free is deferred
            // (cleanup_net), so the first look often finds it still there.
            if pins.is_empty() && settled {
                pins = hidden.pins(key, src, (&mounts, &fds), reg);
            }
            if pins.is_empty() {
                if !settled {
                    continue;
                }
                pins.push(HELD_INSIDE.to_string());
            }
            let polled = self.methods.decider(key.0).polls_pins();
            let Some(w) = self.watch.get_mut(&key) else {
                continue;
            };
            w.pinned = true;
            if !polled {
                // The free event will tell the end: no polling.
                self.watch.remove(&key);
            }
            out.extend(Verdict::pinned(reg, key, pins, now));
        }
        out
    }

    /// What holds each of `keys` now, searched as a check does: for a
    /// leak's record, which tells the holders of the moment.
    pub fn holders_now(
        &self,
        keys: &[NsKey],
        reg: &Registry,
        src: &mut dyn Holders,
    ) -> BTreeMap<NsKey, Vec<String>> {
        let mounts = src.mounts();
        let fds = src.fds();
        let mut hidden = Hidden::default();
        keys.iter()
            .map(|&key| {
                let mut pins = pins_of(key, &mounts, &fds, reg, &self.home_mntns);
                if pins.is_empty() {
                    pins = hidden.pins(key, src, (&mounts, &fds), reg);
                }
                if pins.is_empty() {
                    pins.push(HELD_INSIDE.to_string());
                }
                (key, pins)
            })
            .collect()
    }

    /// Turns verdicts read at their time into records, now that every event
    /// before that time has been handled.
    pub fn apply(&mut self, verdicts: Vec<Verdict>, now: i128, reg: &mut Registry) -> Vec<Record> {
        let mut out = Vec::new();
        for v in verdicts {
            match v {
                Verdict::Gone { key, ident: id, at } => {
                    // The inode went to a new namespace in the drain (its
                    // create ended this one): a watch under the key now is
                    // the new one's, and must stay.
                    if ident(reg, key) != Some(id) {
                        continue;
                    }
                    let w = self.watch.remove(&key);
                    let was_pinned = w.as_ref().is_some_and(|w| w.pinned)
                        || matches!(
                            reg.get(key).map(|e| &e.state),
                            Some(crate::state::registry::State::Pinned(_))
                        );
                    let (cause, last) = if was_pinned {
                        (EndCause::PinReleased, None)
                    } else {
                        (EndCause::LastMemberLeft, w.and_then(|w| w.last).map(|a| *a))
                    };
                    let (owner, parent) = reg
                        .get(key)
                        .map(|e| (e.owner, e.parent))
                        .unwrap_or_default();
                    let by = Some(self.methods.of(key.0));
                    out.push(records::destroy(reg.end(key, at), cause, by, last));
                    // Its owner or parent may have been waiting only for it:
                    // ask again now rather than at the next poll.
                    for up in [
                        owner.map(|o| (NsKind::User, o)),
                        (key.0 == NsKind::Pid)
                            .then_some(parent)
                            .flatten()
                            .map(|p| (NsKind::Pid, p)),
                    ]
                    .into_iter()
                    .flatten()
                    {
                        // Watched means memberless (or rejoined, which the
                        // check reads).
                        if let Some(w) = self.watch.get_mut(&up) {
                            w.next = w.next.min(now);
                        }
                    }
                }
                Verdict::Pinned {
                    key,
                    ident: id,
                    by,
                    at,
                } => {
                    if ident(reg, key) != Some(id) {
                        continue;
                    }
                    // Joined in the events drained after the check: the
                    // next check reads its member count instead.
                    if self.watch.get(&key).is_some_and(|w| w.rejoined) {
                        continue;
                    }
                    if let Some(e) = reg.pin(key, by) {
                        out.push(records::pinned(e, at));
                    }
                }
            }
        }
        out
    }
}

/// What visibly holds `key`: nsfs mounts in any mount namespace, fds of any
/// process, namespaces it owns (user) or contains (pid).
/// The holders that cost more to find, each searched at most once per
/// check and only for a namespace nothing else is found holding: mounts
/// inside mount namespaces no process is in (any kind), sockets (net),
/// zombies (user, pid).
#[derive(Default)]
pub(super) struct Hidden {
    memberless_mounts: Option<BTreeMap<NsKey, Vec<MountPin>>>,
    sockets: Option<FdHolders>,
    zombies: Option<Zombies>,
    pidfds: Option<ExitedPidfds>,
}

impl Hidden {
    /// What holds `key` out of sight, given the check's `mounts` and `fds`.
    pub(super) fn pins(
        &mut self,
        key: NsKey,
        src: &mut dyn Holders,
        (mounts, fds): (&BTreeMap<NsKey, Vec<MountPin>>, &FdHolders),
        reg: &Registry,
    ) -> Vec<String> {
        let inside = self
            .memberless_mounts
            .get_or_insert_with(|| src.memberless_mounts(mounts, fds));
        let pins: Vec<String> = inside
            .get(&key)
            .into_iter()
            .flatten()
            .map(|m| m.describe(&[]))
            .collect();
        if !pins.is_empty() {
            return pins;
        }
        match key.0 {
            NsKind::Net => {
                let sockets = self.sockets.get_or_insert_with(|| src.sockets());
                procfs::describe_sockets(key, sockets).collect()
            }
            NsKind::User | NsKind::Pid => {
                let zombies = self.zombies.get_or_insert_with(|| src.zombies());
                let mut pins: Vec<String> = procfs::describe_zombies(key, zombies).collect();
                // A pidfd of its init, kept after the init exited.
                let member = reg.get(key).and_then(|e| e.init_pidfs);
                if let (true, NsKind::Pid, Some((pid, ino))) = (pins.is_empty(), key.0, member) {
                    let pidfds = self.pidfds.get_or_insert_with(|| src.exited_pidfds());
                    pins.extend(pidfds.get(&ino).into_iter().flatten().map(
                        |(holder, fd, comm)| {
                            format!(
                                "pidfd {fd} of {comm} (pid {holder}), of its exited process {pid}"
                            )
                        },
                    ));
                }
                pins
            }
            _ => Vec::new(),
        }
    }
}

fn pins_of(
    key: NsKey,
    mounts: &BTreeMap<NsKey, Vec<MountPin>>,
    fds: &FdHolders,
    reg: &Registry,
    home: &[u32],
) -> Vec<String> {
    let mut pins = procfs::describe_holders(key, mounts, fds, home);
    pins.extend(reg.dependents(key).into_iter().map(|(k, i)| match key.0 {
        NsKind::Pid => format!("child pid namespace {i}"),
        _ => format!("owned {} namespace {i}", k.name()),
    }));
    pins
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, collections::HashMap};

    use super::*;
    use crate::model::{EventType, Syscall};

    #[derive(Default)]
    struct Counts(HashMap<NsKey, i64>, HashMap<crate::model::MemberSet, i64>);

    impl MemberCounts for Counts {
        fn set(&mut self, key: NsKey, sets: i64) {
            self.0.insert(key, sets);
        }
        fn set_set(&mut self, set: crate::model::MemberSet, threads: i64) {
            self.1.insert(set, threads);
        }
        fn seeded(&mut self) {}
    }

    /// Threads are counted per set, and a namespace by the sets holding
    /// it: what the kernel side keeps.
    #[test]
    fn seeding_counts_threads_per_set_and_sets_per_namespace() {
        let set = |uts: u32| {
            let mut s = crate::model::MemberSet::default();
            s[NsKind::Net.index()] = NET.1;
            s[NsKind::Uts.index()] = uts;
            s[NsKind::User.index()] = 4026531837;
            s
        };
        let mut snap = Snapshot::default();
        snap.sets.insert(set(4026532501), 2);
        snap.sets.insert(set(4026532502), 1);
        let host: BTreeSet<NsKey> = [(NsKind::User, 4026531837)].into();
        let mut counts = Counts::default();
        let watched = seed_counts(&snap, &host, &mut counts);
        assert_eq!(watched, 3);
        assert_eq!(counts.0[&NET], 2);
        assert_eq!(counts.0[&(NsKind::Uts, 4026532501)], 1);
        assert_eq!(counts.0[&(NsKind::Uts, 4026532502)], 1);
        assert_eq!(
            counts.0[&(NsKind::User, 4026531837)],
            nstrace_common::MEMBERS_UNWATCHED
        );
        assert_eq!(counts.1[&set(4026532501)], 2);
        assert_eq!(counts.1[&set(4026532502)], 1);
    }

    #[derive(Default)]
    struct FakeProc {
        mounts: BTreeMap<NsKey, Vec<MountPin>>,
        sockets: FdHolders,
        zombies: Zombies,
        threads: HashMap<NsKey, i64>,
    }

    impl Holders for FakeProc {
        fn mounts(&mut self) -> BTreeMap<NsKey, Vec<MountPin>> {
            self.mounts.clone()
        }
        fn fds(&mut self) -> FdHolders {
            BTreeMap::new()
        }
        fn sockets(&mut self) -> FdHolders {
            self.sockets.clone()
        }
        fn zombies(&mut self) -> Zombies {
            self.zombies.clone()
        }
        /// Each key's threads as one set holding that namespace alone.
        fn members(&mut self, keys: &BTreeSet<NsKey>) -> Members {
            let mut m = Members::default();
            for &(kind, inode) in keys {
                if let Some(&n) = self.threads.get(&(kind, inode)).filter(|&&n| n > 0) {
                    let mut set = crate::model::MemberSet::default();
                    set[kind.index()] = inode;
                    m.sets.insert(set, n);
                }
            }
            m
        }
    }

    /// A kernel whose answers the test sets.
    #[derive(Clone, Default)]
    struct Kernel(std::rc::Rc<RefCell<BTreeSet<NsKey>>>);

    impl Ask for Kernel {
        fn ask(&self, kind: NsKind, inode: u32, _: u64) -> std::io::Result<Answer> {
            Ok(if self.0.borrow().contains(&(kind, inode)) {
                Answer::Alive
            } else {
                Answer::Gone
            })
        }
    }

    const NET: NsKey = (NsKind::Net, 4026532300);

    #[test]
    fn each_kind_gets_the_best_method_this_kernel_has_and_the_start_line_says_why_not() {
        let all = NsKind::ALL;
        let kernel = || Ok(Box::new(Kernel::default()) as Box<dyn Ask>);
        let refused = || Err("EPERM".to_string());
        // Every kind hooked: handles are not even opened.
        let (m, note) = Methods::choose(&all, &all, false, true, || panic!("opened"));
        assert_eq!((m.uniform(&all), note), (Some(EndMethod::Fentry), None));
        // Some kinds hooked: the rest by handle, where they work.
        let (m, note) = Methods::choose(&all, &[NsKind::Net], false, true, kernel);
        assert_eq!(
            (m.of(NsKind::Net), m.of(NsKind::Uts)),
            (EndMethod::Fentry, EndMethod::NsfsHandle)
        );
        assert_eq!(note, None);
        for (infer, ids, open, why) in [
            (
                true,
                true,
                kernel as fn() -> _,
                "inference forced by --infer-ends",
            ),
            (
                false,
                false,
                kernel,
                "no namespace ids on this kernel (6.18+ has them)",
            ),
            (false, true, refused, "nsfs file handles unusable: EPERM"),
        ] {
            let (m, note) = Methods::choose(&all, &[], infer, ids, open);
            assert_eq!(m.uniform(&all), Some(EndMethod::Inference));
            assert_eq!(note.as_deref(), Some(why));
        }
    }

    fn mount(path: &str) -> Vec<MountPin> {
        vec![MountPin {
            path: path.into(),
            mnt_ns: 1,
            pid: 1,
            ns_held_by: None,
        }]
    }

    fn ends(methods: Methods) -> Ends {
        Ends::new(methods, vec![1])
    }

    fn registry_with_created(key: NsKey, owner: Option<u32>) -> Registry {
        let mut reg = Registry::default();
        let mut r = Record {
            event: EventType::Create,
            kind: Some(key.0),
            inode: Some(key.1),
            ns_id: Some(77),
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
            ns_id: Some(77),
        }]
    }

    /// check then apply at `now`, as the session does.
    fn round(
        e: &mut Ends,
        now: i128,
        reg: &mut Registry,
        counts: &mut Counts,
        src: &mut FakeProc,
    ) -> Vec<Record> {
        let v = e.check(now, reg, counts, src);
        e.apply(v, now, reg)
    }

    #[test]
    fn emptied_again_after_a_join_is_asked_not_counted() {
        let mut reg = registry_with_created(NET, None);
        let (mut counts, mut src) = (Counts::default(), FakeProc::default());
        let kernel = Kernel::default();
        let mut e = ends(Methods::new(&[], Some(Box::new(kernel.clone()))));
        kernel.0.borrow_mut().insert(NET);
        e.on_emptied(&emptied(NET), None, 100, &mut reg);
        e.on_joined(NET);
        // The joiner exited, but /proc still shows it in the namespace.
        e.on_emptied(&emptied(NET), None, 110, &mut reg);
        src.threads.insert(NET, 1);
        kernel.0.borrow_mut().remove(&NET);
        let out = round(&mut e, 110, &mut reg, &mut counts, &mut src);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].event, EventType::Destroy);
    }

    #[test]
    fn inference_ends_after_the_grace_with_nothing_holding_it() {
        let mut reg = registry_with_created(NET, None);
        let (mut counts, mut src) = (Counts::default(), FakeProc::default());
        let mut e = ends(Methods::new(&[], None));
        e.on_emptied(&emptied(NET), None, 100, &mut reg);
        assert!(round(&mut e, 100, &mut reg, &mut counts, &mut src).is_empty());
        assert!(!e.due(100 + GRACE_NS - 1));
        let out = round(&mut e, 100 + GRACE_NS, &mut reg, &mut counts, &mut src);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].event, EventType::Destroy);
        assert_eq!(out[0].end, Some(EndCause::LastMemberLeft));
        assert_eq!(out[0].end_by, Some(EndMethod::Inference));
        assert_eq!(out[0].time_ns, 100 + GRACE_NS);
    }

    #[test]
    fn inference_takes_a_socket_for_a_pin_of_its_network_namespace() {
        let mut reg = registry_with_created(NET, None);
        let (mut counts, mut src) = (Counts::default(), FakeProc::default());
        src.sockets
            .insert(NET, vec![(42, 12, "docker-proxy".into())]);
        let mut e = ends(Methods::new(&[], None));
        e.on_emptied(&emptied(NET), None, 100, &mut reg);
        let out = round(&mut e, 100, &mut reg, &mut counts, &mut src);
        assert_eq!(out[0].event, EventType::Pinned);
        assert_eq!(out[0].pinned_by, ["socket fd 12 of docker-proxy (pid 42)"]);
        src.sockets.clear();
        let t = 100 + POLL_INFERENCE_NS;
        assert!(round(&mut e, t, &mut reg, &mut counts, &mut src).is_empty());
        let out = round(&mut e, t + GRACE_NS, &mut reg, &mut counts, &mut src);
        assert_eq!(out[0].event, EventType::Destroy);
        assert_eq!(out[0].end, Some(EndCause::PinReleased));
    }

    #[test]
    fn a_mount_anywhere_pins_and_its_removal_ends() {
        let mut reg = registry_with_created(NET, None);
        let (mut counts, mut src) = (Counts::default(), FakeProc::default());
        let mut e = ends(Methods::new(&[], None));
        src.mounts.insert(
            NET,
            vec![MountPin {
                path: "/tmp/pin".into(),
                mnt_ns: 9,
                pid: 42,
                ns_held_by: None,
            }],
        );
        e.on_emptied(&emptied(NET), None, 100, &mut reg);
        let out = round(&mut e, 100, &mut reg, &mut counts, &mut src);
        assert_eq!(out[0].event, EventType::Pinned);
        assert_eq!(
            out[0].pinned_by,
            vec!["mount /tmp/pin in mnt namespace 9 (pid 42)".to_string()]
        );
        src.mounts.clear();
        let t = 100 + POLL_INFERENCE_NS;
        assert!(round(&mut e, t, &mut reg, &mut counts, &mut src).is_empty());
        let out = round(&mut e, t + GRACE_NS, &mut reg, &mut counts, &mut src);
        assert_eq!(out[0].event, EventType::Destroy);
        assert_eq!(out[0].end, Some(EndCause::PinReleased));
    }

    #[test]
    fn handles_destroy_only_when_the_kernel_says_gone() {
        let mut reg = registry_with_created(NET, None);
        let (mut counts, mut src) = (Counts::default(), FakeProc::default());
        let kernel = Kernel::default();
        kernel.0.borrow_mut().insert(NET);
        let mut e = ends(Methods::new(&[], Some(Box::new(kernel.clone()))));
        e.on_emptied(&emptied(NET), None, 0, &mut reg);
        // Alive, nothing visible: asked again through the settle delays...
        let mut t = 0;
        for step in SETTLE_NS {
            assert!(round(&mut e, t, &mut reg, &mut counts, &mut src).is_empty());
            t += step;
        }
        // ...then pinned by something the kernel holds.
        let out = round(&mut e, t, &mut reg, &mut counts, &mut src);
        assert_eq!(out[0].event, EventType::Pinned);
        assert_eq!(out[0].pinned_by, vec![HELD_INSIDE.to_string()]);
        kernel.0.borrow_mut().clear();
        let out = round(&mut e, t + POLL_HANDLES_NS, &mut reg, &mut counts, &mut src);
        assert_eq!(out[0].event, EventType::Destroy);
        assert_eq!(out[0].end, Some(EndCause::PinReleased));
        assert_eq!(out[0].end_by, Some(EndMethod::NsfsHandle));
        assert!(e.watched().next().is_none());
    }

    #[test]
    fn handles_report_a_visible_pin_at_once() {
        let mut reg = registry_with_created(NET, None);
        let (mut counts, mut src) = (Counts::default(), FakeProc::default());
        let kernel = Kernel::default();
        kernel.0.borrow_mut().insert(NET);
        src.mounts.insert(NET, mount("/run/netns/t"));
        let mut e = ends(Methods::new(&[], Some(Box::new(kernel))));
        e.on_emptied(&emptied(NET), None, 0, &mut reg);
        let out = round(&mut e, 0, &mut reg, &mut counts, &mut src);
        assert_eq!(out[0].pinned_by, vec!["mount /run/netns/t".to_string()]);
    }

    #[test]
    fn a_verdict_for_a_reused_inode_is_dropped() {
        let mut reg = registry_with_created(NET, None);
        let (mut counts, mut src) = (Counts::default(), FakeProc::default());
        let mut e = ends(Methods::new(&[], Some(Box::new(Kernel::default()))));
        e.on_emptied(&emptied(NET), None, 0, &mut reg);
        let v = e.check(5, &reg, &mut counts, &mut src);
        // Meanwhile (before 5) the inode went to a new namespace.
        let mut again = Record {
            event: EventType::Create,
            kind: Some(NET.0),
            inode: Some(NET.1),
            syscall: Some(Syscall::Unshare),
            actor: Some(Actor::default()),
            time_ns: 4,
            ..Record::default()
        };
        reg.observe(&mut again);
        e.forget(NET);
        // ...which emptied too, in the same drain: its watch is its own.
        e.on_emptied(&emptied(NET), None, 4, &mut reg);
        assert!(e.apply(v, 5, &mut reg).is_empty());
        assert_eq!(e.watched().collect::<Vec<_>>(), vec![&NET]);
        let out = round(&mut e, 6, &mut reg, &mut counts, &mut src);
        assert_eq!(out[0].event, EventType::Destroy);
        assert_eq!(out[0].born.as_ref().map(|b| b.time_ns), Some(4));
    }

    #[test]
    fn with_fentry_only_pins_are_reported() {
        let mut reg = registry_with_created(NET, None);
        let (mut counts, mut src) = (Counts::default(), FakeProc::default());
        let mut e = ends(Methods::new(&NsKind::ALL, None));
        src.mounts.insert(NET, mount("/run/netns/t"));
        e.on_emptied(&emptied(NET), None, 0, &mut reg);
        let out = round(&mut e, 0, &mut reg, &mut counts, &mut src);
        assert_eq!(out[0].event, EventType::Pinned);
        assert!(e.watched().next().is_none(), "the free event ends it");
        let r = e.on_freed(emptied(NET)[0], 50, &mut reg).unwrap();
        assert_eq!(r.end, Some(EndCause::KernelFreed));
        // The same free told by a second hook on its path: one destroy.
        assert!(e.on_freed(emptied(NET)[0], 51, &mut reg).is_none());
    }

    /// A kernel with a free hook for some kinds only (5.10 before its uts
    /// and ipc hooks were known): the others are decided by the next best
    /// method, never left waiting for a free event that cannot come.
    #[test]
    fn kinds_without_a_free_hook_get_the_next_method() {
        const UTS: NsKey = (NsKind::Uts, 4026532301);
        let mut reg = registry_with_created(NET, None);
        let mut uts = Record {
            event: EventType::Create,
            kind: Some(UTS.0),
            inode: Some(UTS.1),
            ..Record::default()
        };
        reg.observe(&mut uts);
        let (mut counts, mut src) = (Counts::default(), FakeProc::default());
        let mut e = ends(Methods::new(&[NsKind::Net], None));
        assert_eq!(e.methods().of(NsKind::Uts), EndMethod::Inference);
        assert_eq!(e.methods().uniform(&[NsKind::Net, NsKind::Uts]), None);
        e.on_emptied(&[emptied(NET)[0], emptied(UTS)[0]], None, 0, &mut reg);
        let mut t = 0;
        let mut out = Vec::new();
        while t < 2 * GRACE_NS {
            out.extend(round(&mut e, t, &mut reg, &mut counts, &mut src));
            t += 10 * MS;
        }
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].kind, Some(NsKind::Uts));
        assert_eq!(out[0].end_by, Some(EndMethod::Inference));
        // The net namespace waits for the kernel's free path...
        assert_eq!(e.watched().collect::<Vec<_>>(), vec![&NET]);
        let r = e.on_freed(emptied(NET)[0], t, &mut reg).unwrap();
        assert_eq!(r.end_by, Some(EndMethod::Fentry));
        // ...and with handles, the others are asked.
        let kernel = Kernel::default();
        let m = Methods::new(&[NsKind::Net], Some(Box::new(kernel)));
        assert_eq!(m.of(NsKind::Ipc), EndMethod::NsfsHandle);
        assert_eq!(m.uniform(&[NsKind::Net]), Some(EndMethod::Fentry));
    }

    #[test]
    fn preexisting_namespace_with_live_members_is_left_alone() {
        let mut reg = Registry::default();
        let (mut counts, mut src) = (Counts::default(), FakeProc::default());
        src.threads.insert(NET, 3);
        let mut e = ends(Methods::new(&[], None));
        e.on_emptied(&emptied(NET), None, 0, &mut reg);
        assert!(round(&mut e, GRACE_NS * 3, &mut reg, &mut counts, &mut src).is_empty());
        assert!(e.watched().next().is_none());
    }

    #[test]
    fn a_rejoined_namespace_is_no_longer_watched() {
        let mut reg = registry_with_created(NET, None);
        let (mut counts, mut src) = (Counts::default(), FakeProc::default());
        let mut e = ends(Methods::new(&[], None));
        e.on_emptied(&emptied(NET), None, 0, &mut reg);
        // Joined (setns): its members are counted at the next check.
        src.threads.insert(NET, 1);
        e.on_joined(NET);
        assert!(round(&mut e, 0, &mut reg, &mut counts, &mut src).is_empty());
        assert!(e.watched().next().is_none());
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
        let (mut counts, mut src) = (Counts::default(), FakeProc::default());
        let mut e = ends(Methods::new(&[], None));
        src.mounts.insert(NET, mount("/run/netns/t"));
        e.on_emptied(&[emptied(user)[0], emptied(NET)[0]], None, 0, &mut reg);
        let out = round(&mut e, 0, &mut reg, &mut counts, &mut src);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|r| r.event == EventType::Pinned));
        assert_eq!(
            out[1].pinned_by,
            vec![format!("owned net namespace {}", NET.1)]
        );
        src.mounts.clear();
        let mut t = POLL_INFERENCE_NS;
        let mut ended = Vec::new();
        while ended.len() < 2 && t < 10 * POLL_INFERENCE_NS {
            ended.extend(
                round(&mut e, t, &mut reg, &mut counts, &mut src)
                    .into_iter()
                    .map(|r| (r.event, r.kind)),
            );
            t += 10 * MS;
        }
        assert_eq!(
            ended,
            vec![
                (EventType::Destroy, Some(NsKind::Net)),
                (EventType::Destroy, Some(NsKind::User))
            ]
        );
    }
}
