//! nstrace's kernel side.
//!
//! Syscall tracepoints remember, per thread, the namespace syscall in flight
//! and the caller's namespaces on entry; the exit tracepoint (or, for clone,
//! `sched_process_fork`) reads the namespaces again and emits one [`Event`].
//!
//! Lifecycle without fentry: [`SETS`] counts the member threads of every set
//! of namespaces threads share ([`SetKey`]), and [`MEMBERS`] the sets with
//! members that hold each watched namespace (user space seeds them from
//! /proc at start, the sets in [`SEEDS`]; creations add theirs). A fork or an exit moves one set
//! count; a namespace's count moves only when its set gets its first member
//! or loses its last, so it reaches zero exactly when its last member
//! thread leaves. The event that takes a count to zero says so (`emptied`),
//! and user space decides whether the namespace is gone or pinned.
//! Everything unrelated to namespaces stays here.
#![no_std]
#![no_main]
// The bpfel target has no `AtomicI64::fetch_add`; the intrinsic lowers to the
// BPF atomic add instruction (aya-build always compiles this crate on nightly).
#![feature(core_intrinsics)]
// `untyped` (task.rs) is two instructions of BPF assembly.
#![feature(asm_experimental_arch)]
#![allow(internal_features)]
// Index loops up to the constant NS_KINDS are bounded loops the verifier
// sees as such (and LLVM unrolls); iterator chains over several arrays
// (enumerate, zip, take) are what clippy would have instead.
#![allow(clippy::needless_range_loop)]

mod diag;
mod task;

use core::{
    intrinsics::{AtomicOrdering, atomic_xadd},
    mem::MaybeUninit,
};

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_ktime_get_ns, generated as gen,
    },
    macros::{fentry, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{FEntryContext, RawTracePointContext, TracePointContext},
};
use nstrace_common::{
    CLONE_NEW_MASK, COUNTER_FOLLOW_FULL, COUNTER_LOST, COUNTER_LOST_BY_KIND,
    COUNTER_MEMBERS_EVICTED, COUNTER_MEMBERS_FULL, COUNTER_PENDING_FULL, COUNTERS, Event,
    EventKind, FREE_SLOTS, FreeTarget, KIND_FLAGS, KIND_FROM_NS_TYPE, MEMBERS_FREED,
    MEMBERS_UNWATCHED, MEMBERS_UNWATCHED_BELOW, NO_COUNT, NO_FIELD, NS_KINDS, NsSet, SEEDED_MARK,
    SetKey, Syscall, kind, member_key,
};

/// Resized by user space (`--buffer-size`) before load.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Counters of what could not be recorded. Memory-mapped by user space, which
/// reads them without a syscall: a map syscall holds the CPU's
/// `bpf_prog_active`, and on a preemptible kernel a task scheduled there
/// meanwhile runs syscall tracepoints with every BPF program skipped (a
/// create missed, silently, on 7.2). Atomic adds on one array: losses are
/// rare, so the shared cache line costs nothing on the hot path.
#[map]
static COUNTS: Array<u64> = Array::with_max_entries(COUNTERS, BPF_F_MMAPABLE);

/// `BPF_F_MMAPABLE` (uapi `bpf.h`).
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// A namespace syscall between its entry and exit, keyed by thread id.
#[repr(C)]
#[derive(Clone, Copy)]
struct Pending {
    flags: u64,
    /// The kinds the call creates if it succeeds: unshare's flags, 0 for
    /// the others. Set at entry and read back at exit as one unknown
    /// number: derived at exit from the syscall, it split the verifier's
    /// walk of the member-set code in two (a known 0 and an unknown).
    created: u64,
    syscall: u32,
    fd: i32,
    /// CAP_SYS_ADMIN before the call (an unshare of a user namespace gives
    /// the caller every capability in the new one).
    admin: u32,
    /// 1 when the caller was counted in [`SETS`] before the call (not
    /// entirely in the initial namespaces).
    counted: u32,
    before: NsSet,
    /// The namespace struct pointers behind `before`: at exit only kinds
    /// whose pointer changed are read again.
    before_ptrs: [u64; NS_KINDS],
    after: NsSet,
    /// Pointers behind `after` (clone: the child's), for the owners' reads.
    after_ptrs: [u64; NS_KINDS],
}

#[map]
static PENDING: HashMap<u32, Pending> = HashMap::with_max_entries(16384, 0);

/// Threads that took part in namespace work, so their exit is worth
/// reporting: one bit per thread id (`PID_MAX_LIMIT`, 2^22 on 64-bit, is
/// the most a kernel allows), 512 KiB. Not a hash: a container's every exit
/// looks here, and a hash lookup of a random tid is a cache miss in a
/// megabyte of buckets (measured: the largest part of a container's exit).
/// Thread ids are handed out in order, so consecutive forks share a word
/// that stays in cache, and the verifier inlines an array's lookup. It
/// cannot fill. A bit is set and cleared only by its own thread (or by
/// the parent before the child first runs), so an atomic add of the bit,
/// after testing it, is exact on every kernel (atomic OR needs 5.12).
#[map]
static TRACKED: Array<u64> = Array::with_max_entries(TRACKED_WORDS, 0);

/// Words of [`TRACKED`]: `PID_MAX_LIMIT` bits.
const TRACKED_WORDS: u32 = (1 << 22) / 64;

/// The [`TRACKED`] word and bit of thread `tid`.
fn tracked_bit(tid: u32) -> Option<(*mut u64, u64)> {
    Some((TRACKED.get_ptr_mut(tid >> 6)?, 1u64 << (tid & 63)))
}

/// Whether `tid`'s bit is set; clears it when `clear`.
fn take_tracked(tid: u32) -> bool {
    let Some((w, bit)) = tracked_bit(tid) else {
        return false;
    };
    // SAFETY: `w` is a live TRACKED value (array values are never freed), an
    // 8-aligned u64; only this thread changes its bit (see TRACKED), and
    // the add is atomic against other threads changing theirs.
    unsafe {
        if core::ptr::read_volatile(w) & bit == 0 {
            return false;
        }
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(w, bit.wrapping_neg());
    }
    true
}

/// Processes (tgid) user space follows (`--pid`, command mode), with their
/// descendants, added at fork.
#[map]
static FOLLOW: HashMap<u32, u8> = HashMap::with_max_entries(65536, 0);

/// Per-CPU scratch for the `emptied` bits a loop collects. Kept in map memory
/// on purpose: the verifier does not track its contents, so the 2^8 ways the
/// bits can combine do not each become a path to verify (older verifiers,
/// 6.1 among them, gave up at the 1M-instruction limit on a stack variable).
#[map]
static SCRATCH: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[map]
static PENDING_SCRATCH: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU stand-in for the pending entry of a clone that creates
/// namespaces but left none (its clone3 arguments were unreadable to a
/// probe read, or the pending map was full): its own, so that it never
/// shares memory with [`enter`]'s scratch.
#[map]
static UNREAD_SCRATCH: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

fn scratch() -> Option<*mut u32> {
    SCRATCH.get_ptr_mut(0)
}

/// Member threads per watched namespace, keyed by [`member_key`].
/// LRU: entries of namespaces that ended are never deleted from user space
/// (the inode may already be a new namespace's), so old ones age out here.
/// An LRU map may also evict a live namespace's entry (an idle one, or
/// early, from a CPU's empty free list): every namespace that is not the
/// kernel's initial one has an entry while it has members, so a member
/// found with none was evicted, and is counted ([`forgotten`]). Sized for a
/// node's worth of namespaces many times over (8 MiB).
#[map]
static MEMBERS: LruHashMap<u64, i64> = LruHashMap::with_max_entries(131072, 0);

/// Member threads per set of namespaces (see [`SetKey`]), keyed by the
/// sets' namespace struct pointers, which a fork or an exit reads in one
/// helper call (the nsproxy whole) beside its credentials: the one count a
/// fork or an exit moves. The pointers name live namespaces while the set
/// has members, so no two sets share a key. A plain hash, not an LRU: an
/// evicted set would lose members for good. A set leaves when its last
/// member does (the one whose remove succeeds); a set found with no entry
/// and no seed (a thread user space never saw, or no room) comes back as
/// [`MEMBERS_UNWATCHED`], counted once. Resized by user space (a quarter of
/// `--member-map-size`).
#[map]
static SETS: HashMap<[u64; NS_KINDS], i64> = HashMap::with_max_entries(32768, 0);

/// Member threads of the sets alive at start, keyed by their inodes as
/// user space saw them in /proc: taken into [`SETS`] the first time a
/// fork or an exit meets the set.
#[map]
static SEEDS: HashMap<SetKey, i64> = HashMap::with_max_entries(32768, 0);

// `leave_unseen` builds SEEDED_MARK by zeroing.
const _: () = {
    let mut k = 0;
    while k < NS_KINDS {
        assert!(SEEDED_MARK.inum[k] == 0);
        k += 1;
    }
};

/// `BPF_NOEXIST` (uapi `bpf.h`).
const BPF_NOEXIST: u64 = 1;

/// Non-zero when user space follows pids (`--pid`, command mode): otherwise
/// no fork or exit touches [`FOLLOW`]. Set before load.
#[unsafe(no_mangle)]
static FOLLOWING: u32 = 0;

/// Entries in [`PENDING`]: while none is in flight (nearly always), a clone's
/// two returns skip the lookup. A thread's own insert is counted before its
/// own exit reads this, so it can never read 0 with its entry present.
static mut IN_FLIGHT: i64 = 0;

fn following() -> bool {
    // SAFETY: an aligned read of the FOLLOWING static, set by user space before
    // load and never written after; volatile so the placeholder is not folded
    // in.
    unsafe { core::ptr::read_volatile(&raw const FOLLOWING) != 0 }
}

fn in_flight(delta: i64) {
    // SAFETY: IN_FLIGHT is a static i64, 8-aligned and valid for the program's
    // life; the add is atomic against other CPUs'.
    unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(&raw mut IN_FLIGHT, delta) };
}

// Syscall tracepoint records: 8 bytes of common header, the syscall number,
// padding, then one 8-byte slot per argument; exit records carry `ret` at 16.
const ARG0: usize = 16;
const ARG1: usize = 24;
const RET: usize = 16;

/// A field of the tracepoint's record, loaded straight from the context (a
/// tracepoint program may read its record directly; a probe read would cost
/// a helper call on every clone in the machine).
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: callers pass ARG0/ARG1, 8-aligned u64 slots inside the sys_enter
    // record `ctx` points at; the verifier bounds-checks every context load.
    unsafe { core::ptr::read(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

fn count(index: u32) {
    if let Some(c) = COUNTS.get_ptr_mut(index) {
        // SAFETY: `c` is a live COUNTS value (array values are never freed), an
        // 8-aligned u64; the add is atomic against other CPUs.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(c, 1) };
    }
}

/// The ring was full: the record is gone, but counted, in all and by kind.
fn lost(kind: EventKind) {
    count(COUNTER_LOST);
    count(COUNTER_LOST_BY_KIND + kind as u32);
    diag::ring_full(kind);
}

fn current_tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// [`adjust`]'s answer: the namespace is watched.
const WATCHED: u32 = 1;
/// [`adjust`]'s answer: its count reached zero.
const EMPTIED: u32 = 2;

/// Adds `delta` to a watched namespace's member count: [`WATCHED`], plus
/// [`EMPTIED`] when it reached zero. Namespaces not in the map (e.g. the
/// host's) are not watched.
fn adjust(kind: usize, inum: u32, delta: i64) -> u32 {
    if inum == 0 {
        return 0;
    }
    let Some(p) = MEMBERS.get_ptr_mut(member_key(kind, inum)) else {
        forgotten(member_key(kind, inum));
        return 0;
    };
    // SAFETY: `p` points at a live map value (an i64, 8-aligned); the atomic
    // add is what concurrent updates from other CPUs need.
    // Not fetch_add's result: fetching atomics need Linux 5.12; a racing
    // update is caught in user space, which re-checks before reporting an end.
    unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(p, delta) };
    // SAFETY: as above.
    let now = unsafe { core::ptr::read_volatile(p) };
    if now < MEMBERS_UNWATCHED_BELOW {
        0
    } else if delta < 0 && now <= 0 {
        WATCHED | EMPTIED
    } else {
        WATCHED
    }
}

/// A member of a namespace that is not the kernel's initial one, and no
/// count for it: the LRU map evicted a watched namespace's entry (user
/// space seeds or creates an entry for every other). Counted once: the
/// entry comes back as [`MEMBERS_UNWATCHED`], which no later update
/// reports as emptied. Out of line: the verifier checks it once, not once
/// per kind in every loop. Also reached in the moment between attach and
/// seeding; user space counts only what comes after.
#[inline(never)]
fn forgotten(key: u64) {
    // BPF_NOEXIST: a racing insert (a create, the seed) wins.
    if MEMBERS.insert(key, MEMBERS_UNWATCHED, 1).is_ok() {
        count(COUNTER_MEMBERS_EVICTED);
    }
}

/// A namespace just created with its first member.
fn watch_new(kind: usize, inum: u32) {
    if inum != 0 {
        if let Err(e) = MEMBERS.insert(member_key(kind, inum), 1, 0) {
            count(COUNTER_MEMBERS_FULL);
            diag::update(diag::Map::Members, e);
        }
    }
}

/// A member set's key in [`SETS`]: its namespace struct pointers, per
/// kind, as `task::ns_ptrs` reads them.
type SetPtrs = [u64; NS_KINDS];

/// Per-CPU room for a set's inodes: on the stack they put the deepest call
/// chain past 512 bytes on 5.10.
#[map]
static KEY_SCRATCH: PerCpuArray<SetKey> = PerCpuArray::with_max_entries(1, 0);

/// The set's inodes, the key user space seeds [`SEEDS`] by, in this CPU's
/// [`KEY_SCRATCH`]: read only on a set's first sight or its last member's
/// exit. Only tracepoint programs use it, which never nest on one CPU.
#[inline(always)]
fn inode_key(ptrs: &SetPtrs) -> Option<&'static SetKey> {
    let key = KEY_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: `key` is this CPU's slot of a map value, valid for the
    // program's run and used by one program at a time on a CPU; the reads
    // are probe reads of the namespace structs at `ptrs`.
    unsafe {
        task::zero(&raw mut (*key).inum);
        task::inums(ptrs, &mut (*key).inum);
        Some(&*key)
    }
}

/// Takes the seed of a set alive at start: `Some(threads)` when user
/// space seeded it (0 when another thread took it first; whoever removes
/// the entry owns its count). The set's namespaces already count it.
#[inline(always)]
fn take_seed(key: &SetKey) -> Option<i64> {
    // SAFETY: the value is read once, an aligned i64 of a live entry.
    let seeded = unsafe { SEEDS.get(key) }.copied()?;
    Some(if SEEDS.remove(key).is_ok() { seeded } else { 0 })
}

/// Adds `delta` to the set's count where it has an entry (`Some`: the
/// kinds emptied), and for a member leaving (`delta` < 0) moves its
/// namespaces' counts if that took it to zero. An addition cannot empty a
/// set, so it does not look: each call site that could reach
/// [`last_member`] has the verifier walk it again.
#[inline(always)]
fn add_to_set(ptrs: &SetPtrs, delta: i64) -> Option<u32> {
    let p = SETS.get_ptr_mut(ptrs)?;
    // SAFETY: `p` points at a live map value (an i64, 8-aligned); the add is
    // atomic against other CPUs'. Not fetch_add's result (Linux 5.12+): two
    // racing last members may both read 0, and the remove decides.
    unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(p, delta) };
    // SAFETY: as above.
    let now = unsafe { core::ptr::read_volatile(p) };
    if delta > 0 || !(MEMBERS_UNWATCHED_BELOW..=0).contains(&now) {
        return Some(0);
    }
    Some(last_member(ptrs))
}

/// One more member thread in the set at `ptrs`; kinds in `created` are new
/// namespaces. The fork path: one lookup and one atomic add while the set
/// has members.
#[inline(always)]
fn join(ptrs: &SetPtrs, created: u64) {
    if created == 0 && add_to_set(ptrs, 1).is_some() {
        return;
    }
    first_member(ptrs, created);
}

/// The set had no entry: this thread is its first member since the trace
/// began. A set alive at start takes its seeded threads; a new one is one
/// more set holding each of its namespaces (a new namespace, this one
/// alone). Out of line: verified once, not in every caller.
#[inline(never)]
fn first_member(ptrs: &SetPtrs, created: u64) {
    let Some(key) = inode_key(ptrs) else {
        return;
    };
    let seeded = if created == 0 { take_seed(key) } else { None };
    let threads = seeded.unwrap_or(0) + 1;
    match SETS.insert(ptrs, threads, BPF_NOEXIST) {
        Ok(()) if seeded.is_none() => {
            for k in 0..NS_KINDS {
                let inum = key.inum[k] & task::watchable_mask(ptrs[k]) as u32;
                if created & KIND_FLAGS[k] != 0 {
                    watch_new(k, inum);
                } else {
                    adjust(k, inum, 1);
                }
            }
            return;
        }
        Ok(()) => {}
        // Another thread made the entry first: ours are added to it.
        Err(e) => {
            if add_to_set(ptrs, threads).is_none() {
                count(COUNTER_MEMBERS_FULL);
                diag::update(diag::Map::Sets, e);
            }
        }
    }
    // A new namespace is in no other set, whatever became of the insert.
    for k in 0..NS_KINDS {
        if created & KIND_FLAGS[k] != 0 {
            watch_new(k, key.inum[k] & task::watchable_mask(ptrs[k]) as u32);
        }
    }
}

/// One member thread fewer in the set at `ptrs`: the `CLONE_NEW*` bits of
/// kinds whose namespace lost its last member.
#[inline(always)]
fn leave(ptrs: &SetPtrs) -> u32 {
    match add_to_set(ptrs, -1) {
        Some(emptied) => emptied,
        None => leave_unseen(ptrs),
    }
}

/// The exit of a thread whose set has no entry: one alive at start whose
/// set is seen for the first time, or one user space never saw (outside
/// its PID namespace, born between attach and seeding, or its set found no
/// room): counted once, and the entry comes back unwatched.
#[inline(never)]
fn leave_unseen(ptrs: &SetPtrs) -> u32 {
    let Some(key) = inode_key(ptrs) else {
        return 0;
    };
    let Some(seeded) = take_seed(key) else {
        // Before the seeds are in, a thread alive at start is simply not
        // counted yet: no mark, or the seed would never be taken.
        // SEEDED_MARK, zeroed by the helper: the constant built on the stack
        // is a `memset` call.
        let mut mark = MaybeUninit::<SetKey>::uninit();
        // SAFETY: `mark` is a local SetKey (integers: zeros are valid),
        // initialised by `zero`; the entry is only tested for presence.
        if unsafe {
            task::zero(mark.as_mut_ptr());
            SEEDS.get(mark.assume_init_ref())
        }
        .is_some()
            && SETS.insert(ptrs, MEMBERS_UNWATCHED, BPF_NOEXIST).is_ok()
        {
            count(COUNTER_MEMBERS_EVICTED);
        }
        return 0;
    };
    let left = seeded - 1;
    if seeded == 1 {
        // Its last thread: nothing to keep, the namespaces lose a set.
        return release(ptrs, key);
    }
    // The rest stay counted here. A racing thread that took the seed's
    // entry second (0) adds to what the winner inserts, or the other way.
    if SETS.insert(ptrs, left, BPF_NOEXIST).is_err() {
        return add_to_set(ptrs, left).unwrap_or(0);
    }
    0
}

/// The set's last member left: the set goes (only one of two racing last
/// members removes it) and its namespaces are each held by one set fewer.
#[inline(never)]
fn last_member(ptrs: &SetPtrs) -> u32 {
    if SETS.remove(ptrs).is_err() {
        return 0;
    }
    match inode_key(ptrs) {
        Some(key) => release(ptrs, key),
        None => 0,
    }
}

/// Each watched namespace of the set (`key` its inodes, `ptrs` its
/// structs) is held by one set fewer: returns the kinds that reached zero.
#[inline(always)]
fn release(ptrs: &SetPtrs, key: &SetKey) -> u32 {
    let Some(emptied) = scratch() else {
        return 0;
    };
    // SAFETY: `emptied` is this CPU's SCRATCH slot, an aligned u32; only
    // tracepoint programs use it, which never nest on one CPU and run with
    // preemption off.
    unsafe { *emptied = 0 };
    for k in 0..NS_KINDS {
        let inum = key.inum[k] & task::watchable_mask(ptrs[k]) as u32;
        if adjust(k, inum, -1) & EMPTIED != 0 {
            // SAFETY: this CPU's SCRATCH slot, as above.
            unsafe { *emptied |= KIND_FLAGS[k] as u32 };
        }
    }
    // SAFETY: this CPU's SCRATCH slot, as above.
    unsafe { *emptied }
}

/// Moves one member from the set at `before` to the one at `after` (a
/// switch by unshare or setns); kinds in `created` are new namespaces.
/// `counted_before`: the thread was counted in a set (not entirely in the
/// initial namespaces). Returns the `CLONE_NEW*` bits of kinds whose old
/// namespace lost its last member.
fn move_member(before: &SetPtrs, counted_before: bool, after: &SetPtrs, created: u64) -> u32 {
    // Word by word: `==` on the arrays is a byte-at-a-time `memcmp` call.
    let mut same = true;
    for k in 0..NS_KINDS {
        same &= before[k] == after[k];
    }
    if same {
        return 0;
    }
    // The new set first: a namespace in both keeps a count above zero.
    // SAFETY: `counted` only probe-reads from the current task.
    if unsafe { task::counted(task::current()) } {
        join(after, created);
    }
    if counted_before { leave(before) } else { 0 }
}

/// Remembers the syscall in flight and the caller's namespaces as they are now.
fn enter(syscall: Syscall, flags: u64, fd: i32) {
    let tid = current_tid();
    // Built in per-CPU scratch: a `Pending` on the stack, with the reads'
    // own frames, passes 512 bytes on 6.1 and 6.12.
    let Some(p) = PENDING_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: `p` is this CPU's PENDING_SCRATCH slot, used only by the
    // sys_enter tracepoints (never nested on a CPU, preemption off); the task
    // reads are probe reads.
    unsafe {
        (*p).flags = flags;
        (*p).created = if matches!(syscall, Syscall::Unshare) {
            flags
        } else {
            0
        };
        (*p).syscall = syscall as u32;
        (*p).fd = fd;
        (*p).admin = task::euid_admin(task::current()).1;
        (*p).counted = task::counted(task::current()) as u32;
        task::read_ns(task::current(), &mut (*p).before, &mut (*p).before_ptrs);
        task::zero(&raw mut (*p).after);
        // By reference: the value lives in a per-CPU scratch map, too big
        // for the 512-byte BPF stack a copy would go to.
        #[allow(clippy::needless_borrows_for_generic_args)]
        match PENDING.insert(tid, &*p, 0) {
            Ok(()) => in_flight(1),
            Err(e) => {
                count(COUNTER_PENDING_FULL);
                diag::update(diag::Map::Pending, e);
            }
        }
    }
}

#[tracepoint]
pub fn sys_enter_unshare(ctx: TracePointContext) -> u32 {
    let flags: u64 = field(&ctx, ARG0);
    if flags & CLONE_NEW_MASK != 0 {
        enter(Syscall::Unshare, flags, -1);
    }
    diag::flush();
    0
}

#[tracepoint]
pub fn sys_enter_setns(ctx: TracePointContext) -> u32 {
    let fd: u64 = field(&ctx, ARG0);
    let nstype: u64 = field(&ctx, ARG1);
    enter(Syscall::Setns, nstype as u32 as u64, fd as i32);
    diag::flush();
    0
}

#[tracepoint]
pub fn sys_enter_clone(ctx: TracePointContext) -> u32 {
    let flags: u64 = field(&ctx, ARG0);
    if flags & CLONE_NEW_MASK != 0 {
        enter(Syscall::Clone, flags, -1);
    }
    diag::flush();
    0
}

#[tracepoint]
pub fn sys_enter_clone3(ctx: TracePointContext) -> u32 {
    let uargs: u64 = field(&ctx, ARG0);
    // `struct clone_args` starts with `__u64 flags`. A probe read cannot
    // fault a page in: arguments the kernel will read fine may be unreadable
    // here. Then no entry is left, and `task_newtask` reports the creates
    // from the kernel's own flags (a bad pointer fails with EFAULT instead).
    // SAFETY: bpf_probe_read_user faults into Err, never dereferences `uargs`;
    // any 8 bytes are a valid u64.
    let flags: u64 = match unsafe { aya_ebpf::helpers::bpf_probe_read_user(uargs as *const u64) } {
        Ok(f) => f,
        Err(e) => {
            diag::clone_args(uargs, e.into());
            0
        }
    };
    if flags & CLONE_NEW_MASK != 0 {
        enter(Syscall::Clone3, flags, -1);
    }
    diag::flush();
    0
}

/// Common exit path: unshare/setns report the switch, clone only its failure
/// (success was reported from `sched_process_fork`, where the child is visible).
fn exit(ctx: &TracePointContext) {
    // SAFETY: an aligned 8-byte read of the IN_FLIGHT static; other CPUs'
    // atomic adds can only make it stale.
    if unsafe { core::ptr::read_volatile(&raw const IN_FLIGHT) } <= 0 {
        return;
    }
    let tid = current_tid();
    let Some(p) = PENDING.get_ptr(tid) else {
        return;
    };
    // A probe read, not `field`: the verifier walks this program's paths in
    // about half the time when `ret` comes from a helper (measured: 35 ms
    // against 55 ms; it is the slowest program to load), and only namespace
    // calls get here.
    // SAFETY: `read_at` is a probe read (bpf_probe_read_kernel) of the 8-byte
    // `ret` slot at 16 in the sys_exit record.
    let ret: i64 = unsafe { ctx.read_at(RET) }.unwrap_or(0);
    // SAFETY: `p` is this thread's PENDING value: keyed by its tid, which only
    // this thread's own programs insert or remove, not before this run ends.
    let syscall = unsafe { (*p).syscall };
    let is_clone = syscall == Syscall::Clone as u32 || syscall == Syscall::Clone3 as u32;
    if ret < 0 || !is_clone {
        let kind = if ret < 0 {
            EventKind::Error
        } else {
            EventKind::Switch
        };
        let task = task::current();
        // SAFETY: this thread's PENDING value, as above.
        let created = unsafe { (*p).created };
        // Counts first: they must stay right even when the ring is full. The
        // pending entry's spare `after` set holds the new namespaces meanwhile.
        let mut emptied = 0;
        if ret >= 0 {
            if let Some(pm) = PENDING.get_ptr_mut(tid) {
                // SAFETY: `pm` is the same PENDING value as `p`, borrowed by
                // disjoint fields; `read_ns_since` only probe-reads kernel
                // memory.
                unsafe {
                    task::read_ns_since(
                        task,
                        &(*pm).before,
                        &(*pm).before_ptrs,
                        &mut (*pm).after,
                        &mut (*pm).after_ptrs,
                    );
                    emptied = move_member(
                        &(*pm).before_ptrs,
                        (*pm).counted != 0,
                        &(*pm).after_ptrs,
                        (*pm).created,
                    );
                }
            }
        }
        if let Some(mut entry) = EVENTS.reserve::<Event>(0) {
            // SAFETY: reserve() returned space for exactly one Event
            // (8-aligned); Event is all integers, so any bytes are valid, and
            // every field is written before submit.
            let e = unsafe { &mut *entry.as_mut_ptr() };
            // SAFETY: `p` is this thread's PENDING value, as above, apart from
            // `e`; `fill_header` and `read_owners` only probe-read kernel
            // memory.
            unsafe {
                fill_header(e, kind, task);
                e.admin = (*p).admin;
                e.syscall = syscall;
                e.flags = (*p).flags;
                e.fd = (*p).fd;
                e.ret = ret;
                task::copy(&raw mut e.before, &raw const (*p).before);
                if ret < 0 {
                    task::copy(&raw mut e.after, &raw const (*p).before);
                } else {
                    task::copy(&raw mut e.after, &raw const (*p).after);
                }
                e.emptied = emptied;
                if created != 0 && ret >= 0 {
                    task::read_owners(&(*p).after_ptrs, e, created);
                }
            }
            entry.submit(0);
        } else {
            lost(kind);
        }
        if ret >= 0 {
            track(tid, task);
        }
    }
    if PENDING.remove(tid).is_ok() {
        in_flight(-1);
    }
}

/// One program for the four exit tracepoints (the same record layout; the
/// syscall is in the pending entry): verified once, attached four times.
#[tracepoint]
pub fn sys_exit_ns(ctx: TracePointContext) -> u32 {
    exit(&ctx);
    diag::flush();
    0
}

/// `task_newtask(task, clone_flags)`, as a raw tracepoint because only the raw
/// form hands over the new `task_struct`. It fires in `copy_process` for every
/// new task, io_uring and vhost workers included (`sched_process_fork` misses
/// those, and their exits would make member counts drift low). Runs in the
/// parent, after the child got its namespaces and before it first runs.
#[raw_tracepoint(tracepoint = "task_newtask")]
pub fn task_newtask(ctx: RawTracePointContext) -> i32 {
    new_task(&ctx);
    diag::flush();
    0
}

#[inline(always)]
fn new_task(ctx: &RawTracePointContext) {
    let child: *const u8 = ctx.arg::<u64>(0) as *const u8;
    let clone_flags: u64 = ctx.arg::<u64>(1);
    if following() && FOLLOW.get_ptr(current_tgid()).is_some() {
        // SAFETY: `tgid_of` only probe-reads from `child`, the new task_struct
        // the tracepoint hands over.
        if let Err(e) = FOLLOW.insert(unsafe { task::tgid_of(child) }, 1, 0) {
            count(COUNTER_FOLLOW_FULL);
            diag::update(diag::Map::Follow, e);
        }
    }
    // What the kernel was asked for decides: `clone_flags` is its own copy,
    // which no other thread can rewrite and no unreadable page can hide.
    if clone_flags & CLONE_NEW_MASK != 0 {
        clone_created(child, clone_flags);
        return;
    }
    // Any fork or new thread: one more member of the set the child is in.
    let mut ptrs = MaybeUninit::<SetPtrs>::uninit();
    // SAFETY: direct loads from the current task, or probe reads from
    // `child`, the new task_struct, into `ptrs`, a local filled whole when
    // the answer is true.
    if unsafe { task::child_set(child, ptrs.as_mut_ptr()) } {
        // SAFETY: filled, as above.
        join(unsafe { ptrs.assume_init_ref() }, 0);
    }
}

/// A clone/clone3 that the kernel made with `CLONE_NEW*` flags
/// (`clone_flags`, its own) made `child`. The caller's pending entry is
/// copied to this CPU's [`UNREAD_SCRATCH`] first, so that one walk of what
/// follows serves both cases: with no entry, the caller's namespaces are
/// read now (a clone leaves them alone), and the record says its flags came
/// from the kernel alone. Only clone3 reads its flags from user memory, so
/// that is the call, unless the pending map was full (counted).
fn clone_created(child: *const u8, clone_flags: u64) {
    let tid = current_tid();
    let flags = clone_flags;
    let Some(p) = UNREAD_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let unread = match PENDING.get_ptr(tid) {
        Some(pending) => {
            // SAFETY: `p` is this CPU's UNREAD_SCRATCH slot (task_newtask's
            // alone; the program is not re-entered on this CPU while it
            // runs) and `pending` this thread's PENDING value, removed only
            // by this thread's own programs: two distinct map values.
            unsafe { task::copy(p, pending) };
            0
        }
        None => {
            // SAFETY: `p` as above; the task reads are probe reads.
            unsafe {
                task::zero(p);
                (*p).syscall = Syscall::Clone3 as u32;
                task::read_ns(task::current(), &mut (*p).before, &mut (*p).before_ptrs);
            }
            1
        }
    };
    // Counts first, whether or not the ring has room: the child's set into
    // the scratch's spare arrays (a set and its pointers on the stack put
    // task_newtask's frame past 6.1's limit once a callee needs a frame).
    // SAFETY: `p` as above, borrowed by disjoint fields; `read_ns` only
    // probe-reads kernel memory.
    unsafe {
        task::read_ns(child, &mut (*p).after, &mut (*p).after_ptrs);
        count_child(flags, &(*p).after.inum, &(*p).after_ptrs);
    }
    if let Some(mut entry) = EVENTS.reserve::<Event>(0) {
        // SAFETY: reserve() returned space for exactly one Event (8-aligned);
        // Event is all integers, so any bytes are valid, and every field is
        // written before submit.
        let e = unsafe { &mut *entry.as_mut_ptr() };
        // SAFETY: `p` as above, apart from `e`; the task reads are probe
        // reads.
        unsafe {
            fill_header(e, EventKind::Clone, task::current());
            // The parent's: a clone leaves the caller's credentials alone.
            e.admin = task::euid_admin(task::current()).1;
            e.syscall = (*p).syscall;
            e.flags = flags;
            e.user_flags = (*p).flags;
            e.flags_unread = unread;
            e.fd = -1;
            e.ret = task::tid_of(child) as i64;
            task::copy(&raw mut e.before, &raw const (*p).before);
            task::copy(&raw mut e.after, &raw const (*p).after);
            task::read_owners(&(*p).after_ptrs, e, flags);
        }
        entry.submit(0);
    } else {
        lost(EventKind::Clone);
    }
    track(tid, task::current());
    // SAFETY: a probe read of the child's pid.
    track(unsafe { task::tid_of(child) }, child);
}

/// A new child in new namespaces (`flags`, which start being watched): the
/// first member of its set.
fn count_child(flags: u64, inums: &[u32; NS_KINDS], ptrs: &SetPtrs) {
    // Not through `first_member`: this path is already three calls deep,
    // and a fourth frame passes the 512 bytes a call chain may use.
    if let Err(e) = SETS.insert(ptrs, 1, BPF_NOEXIST) {
        match SETS.get_ptr_mut(ptrs) {
            Some(p) => {
                // SAFETY: a live map value (an i64, 8-aligned); atomic add.
                unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(p, 1) };
            }
            None => {
                count(COUNTER_MEMBERS_FULL);
                diag::update(diag::Map::Sets, e);
            }
        }
    }
    for k in 0..NS_KINDS {
        let inum = inums[k] & task::watchable_mask(ptrs[k]) as u32;
        if flags & KIND_FLAGS[k] != 0 {
            watch_new(k, inum);
        } else {
            adjust(k, inum, 1);
        }
    }
}

/// Runs before the kernel drops the task's namespaces (`exit_task_namespaces`).
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    process_exit();
    diag::flush();
    0
}

#[inline(always)]
fn process_exit() {
    if following() {
        forget_followed(current_tid());
    }
    // Tasks in the initial namespaces are never tracked (see `track`): most
    // exits on a machine end here, after three typed loads (probe reads on
    // 5.10) and no map.
    let mut ptrs = MaybeUninit::<SetPtrs>::uninit();
    let mut me = task::Exiting {
        tid: 0,
        reaper: false,
    };
    // SAFETY: direct loads or probe reads from the current task_struct into
    // `ptrs`, a local filled whole when the answer is true, and `me`.
    if !unsafe { task::exiting_set(ptrs.as_mut_ptr(), &mut me) } {
        return;
    }
    // SAFETY: filled, as above.
    let ptrs = unsafe { ptrs.assume_init_ref() };
    let tracked = take_tracked(me.tid);
    // Counts first: they must stay right even when the ring is full.
    let emptied = leave(ptrs);
    let reaper = me.reaper && watched_pidns(ptrs[kind::PID]);
    // One path for tracked and untracked exits: the verifier walks it once.
    if tracked || emptied != 0 || reaper {
        emit_process(EventKind::Exit, emptied, reaper as u32);
    }
}

/// Whether the PID namespace at `pidns` (whose init is exiting) is watched:
/// its inode and a map lookup, only for an init.
fn watched_pidns(pidns: u64) -> bool {
    if task::watchable_mask(pidns) == 0 {
        return false;
    }
    // SAFETY: a probe read of the PID namespace's inode.
    let inum = unsafe { task::inum_of(pidns, kind::PID) };
    // SAFETY: the value is read once, an aligned i64 of a live entry.
    unsafe { MEMBERS.get(member_key(kind::PID, inum)) }
        .is_some_and(|&n| n >= MEMBERS_UNWATCHED_BELOW)
}

fn forget_followed(tid: u32) {
    if current_tgid() == tid {
        let _ = FOLLOW.remove(tid);
    }
}

fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

fn emit_process(kind: EventKind, emptied: u32, reaper: u32) {
    if let Some(mut entry) = EVENTS.reserve::<Event>(0) {
        // SAFETY: reserve() returned space for exactly one Event (8-aligned);
        // Event is all integers, so any bytes are valid, and every field is
        // written before submit.
        let e = unsafe { &mut *entry.as_mut_ptr() };
        let task = task::current();
        // SAFETY: `e` is the reserved Event and `ptrs` a local (`read_ns`
        // zeroes it first); `read_ns` and `fill_process` only probe-read
        // kernel memory.
        unsafe {
            fill_process(e, kind, task, emptied, reaper);
            let mut ptrs = MaybeUninit::<SetPtrs>::uninit();
            task::read_ns(task, &mut e.before, ptrs.as_mut_ptr());
            task::copy(&raw mut e.after, &raw const e.before);
        }
        entry.submit(0);
    } else {
        lost(kind);
    }
}

/// A process event (exec, exit): the header and no syscall; the caller
/// reads the set after.
///
/// # Safety
///
/// No memory requirement: `task` is only probe-read (a fault reads as 0). It must
/// be the current task's `task_struct` for the record to be right.
unsafe fn fill_process(e: &mut Event, kind: EventKind, task: *const u8, emptied: u32, reaper: u32) {
    // SAFETY: `fill_header` only probe-reads from `task`.
    unsafe { fill_header(e, kind, task) };
    e.syscall = Syscall::None as u32;
    e.flags = 0;
    e.fd = -1;
    e.ret = 0;
    e.emptied = emptied;
    e.reaper = reaper;
    if reaper != 0 {
        // SAFETY: probe reads from `task` (its thread_pid's pidfs inode).
        e.init_pid_ino = unsafe { task::pid_ino(task) };
    }
}

/// Marks a thread whose exit is worth a record, or unmarks it. Not one
/// entirely in the initial namespaces (a runtime that cloned a container,
/// say, or a thread that joined the host's back): its exit can end
/// nothing, and the hot path for those exits never looks here, so a mark
/// left on it would outlive the thread and mark the next one with its id.
fn track(tid: u32, task: *const u8) {
    let Some((w, bit)) = tracked_bit(tid) else {
        return;
    };
    // SAFETY: `counted` only probe-reads from `task`.
    let want = unsafe { task::counted(task) };
    // SAFETY: `w` is a live TRACKED value, an 8-aligned u64; the bit is
    // changed only by its own thread, or by the parent before the child
    // first runs (see TRACKED), so testing it first cannot race; the add is
    // atomic against other threads' bits in the word.
    unsafe {
        let set = core::ptr::read_volatile(w) & bit != 0;
        if want && !set {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(w, bit);
        } else if !want && set {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(w, bit.wrapping_neg());
        }
    }
}

/// Zeroes the record, then sets every field but the call-specific ones
/// (one zeroing helper call: field-by-field zeros became five `memset`
/// calls the verifier walks byte by byte).
///
/// # Safety
///
/// No memory requirement: `task` is only probe-read (a fault reads as 0). It must
/// be the current task's `task_struct` for the record to be right.
unsafe fn fill_header(e: &mut Event, kind: EventKind, task: *const u8) {
    // SAFETY: `e` is a live `&mut Event`, all integers: zeros are valid.
    unsafe { task::zero(e) };
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: bpf_ktime_get_ns takes no arguments and touches no memory.
    e.ts_ns = unsafe { bpf_ktime_get_ns() };
    e.kind = kind as u32;
    e.pid = (pid_tgid >> 32) as u32;
    e.tid = pid_tgid as u32;
    // SAFETY: probe reads from `task` (its real parent's tgid).
    e.ppid = unsafe { task::parent_tgid(task) };
    // SAFETY: probe reads along `task`'s real_parent chain.
    e.elders = unsafe { task::elder_tgids(task) };
    // The helper itself, not aya's wrapper, which zeroes a copy first (a
    // `memset` call); the helper fills all 16 bytes, NUL-padded.
    // SAFETY: `e.comm` is 16 writable bytes.
    unsafe { gen::bpf_get_current_comm(e.comm.as_mut_ptr().cast(), 16) };
    // SAFETY: probe reads from `task` (its thread_pid's numbers).
    e.vpid = unsafe { task::vpid(task) };
    e.followed = (following() && FOLLOW.get_ptr(e.pid).is_some()) as u32;
    e.uid = bpf_get_current_uid_gid() as u32;
    // SAFETY: probe reads from `task` (its cred).
    e.euid = unsafe { task::euid_admin(task) }.0;
    // `admin` is set only where it means something (a create): computed
    // here, for every record, it quadrupled sys_exit_ns's verification.
    // SAFETY: bpf_get_current_cgroup_id takes no arguments and touches no memory.
    e.cgroup = unsafe { bpf_get_current_cgroup_id() };
}

/// What each `ns_free_N` program is attached to; written by user space before
/// load (fentry mode only).
#[unsafe(no_mangle)]
static FREE_TARGETS: [FreeTarget; FREE_SLOTS] = [FreeTarget::UNUSED; FREE_SLOTS];

/// fentry on a kernel function that frees (or drops the last reference of) a
/// namespace: the exact end, wherever the kernel allows fentry.
fn ns_freed(ctx: &FEntryContext, slot: usize) {
    // SAFETY: an aligned read of a FREE_TARGETS element (the index is
    // bounds-checked), set by user space before load and never written after.
    let t = unsafe { core::ptr::read_volatile(&FREE_TARGETS[slot]) };
    if t.kind == NO_FIELD {
        return;
    }
    let arg: u64 = ctx.arg(0);
    if arg == 0 {
        return;
    }
    let ns = (arg as i64 + t.delta as i64) as *const u8;
    if t.count_delta != NO_COUNT {
        let count = (ns as i64 + t.count_delta as i64) as *const u8;
        // SAFETY: a probe read (faults read as 0) of the count field, whose
        // place user space took from BTF.
        if unsafe { task::read_u32(count, 0) } != 1 {
            return;
        }
    }
    let (inum_off, id_off, type_off) = task::nscommon_offsets();
    let kind = if t.kind == KIND_FROM_NS_TYPE {
        // SAFETY: a probe read of ns_common.ns_type, at its BTF offset.
        let flag = unsafe { task::read_u32(ns, type_off) } as u64;
        let mut found = NS_KINDS;
        for k in 0..NS_KINDS {
            if KIND_FLAGS[k] == flag {
                found = k;
            }
        }
        found
    } else {
        t.kind as usize
    };
    if kind >= NS_KINDS || t.kinds & (1 << kind) == 0 {
        return;
    }
    // SAFETY: a probe read of ns_common.inum, at its BTF offset.
    let inum = unsafe { task::read_u32(ns, inum_off) };
    if inum == 0 {
        return;
    }
    // Known and no longer watched: the end is told here. Not removed: a
    // synchronous free (uts, ipc) runs inside the syscall, before its exit
    // program moves the last member out, which would then find no entry and
    // take it for an eviction. A new namespace with this inode overwrites it.
    if let Some(p) = MEMBERS.get_ptr_mut(member_key(kind, inum)) {
        // SAFETY: a live map value, an 8-aligned i64.
        unsafe {
            // Told already, by the other hook on this free path (ipc's
            // put_ipc_ns and ipcns_put, one inlined into the other or not).
            if core::ptr::read_volatile(p) == MEMBERS_FREED {
                return;
            }
            core::ptr::write_volatile(p, MEMBERS_FREED);
        }
    }
    if let Some(mut entry) = EVENTS.reserve::<Event>(0) {
        // SAFETY: reserve() returned space for exactly one Event (8-aligned);
        // Event is all integers, so any bytes are valid, and every field is
        // written before submit.
        let e = unsafe { &mut *entry.as_mut_ptr() };
        // SAFETY: `e` is the reserved Event; `fill_header` and `read_u64` only
        // probe-read kernel memory.
        unsafe {
            fill_header(e, EventKind::Freed, task::current());
            e.syscall = Syscall::None as u32;
            e.flags = KIND_FLAGS[kind];
            e.fd = -1;
            e.ret = 0;
            e.before.inum[kind] = inum;
            e.before.id[kind] = task::read_u64(ns, id_off);
            e.after.inum[kind] = inum;
            e.after.id[kind] = e.before.id[kind];
        }
        entry.submit(0);
    } else {
        lost(EventKind::Freed);
    }
}

macro_rules! free_slots {
    ($($name:ident = $slot:literal),*) => {$(
        #[fentry]
        pub fn $name(ctx: FEntryContext) -> i32 {
            ns_freed(&ctx, $slot);
            diag::flush();
            0
        }
    )*};
}

free_slots!(
    ns_free_0 = 0,
    ns_free_1 = 1,
    ns_free_2 = 2,
    ns_free_3 = 3,
    ns_free_4 = 4,
    ns_free_5 = 5,
    ns_free_6 = 6,
    ns_free_7 = 7,
    ns_free_8 = 8,
    ns_free_9 = 9
);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
