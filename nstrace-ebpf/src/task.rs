//! Reads of kernel structs, at offsets user space computed from the running
//! kernel's BTF (see `nstrace::kernel::offsets`) and wrote into [`OFFSETS`].

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::helpers::{bpf_get_current_task, generated as gen};
use nstrace_common::{Event, KIND_FLAGS, NO_FIELD, NS_KINDS, NsSet, Offsets, kind};

/// Filled in by user space before load; volatile reads stop the compiler from
/// folding in this placeholder.
#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets::EMPTY;

macro_rules! off {
    ($($field:tt)+) => {
        {
            #[allow(unused_unsafe)]
            let v = unsafe { read_volatile(addr_of!(OFFSETS.$($field)+)) };
            v
        }
    };
}

/// One kernel read, 0 where unreadable. The helper zeroes its destination
/// when the read faults (a null base included), so nothing branches on its
/// result: every branch here would multiply the paths the verifier walks,
/// and it walks these reads dozens of times per program.
#[inline(always)]
unsafe fn read<T: Copy + Default>(base: *const u8, offset: u32) -> T {
    let mut v = T::default();
    unsafe { read_field_into(&mut v, base, offset) };
    v
}

/// [`read`] straight into `dst` (map or ring memory: no stack copy);
/// `dst` is left alone when the kernel has no such field.
#[inline(always)]
unsafe fn read_field_into<T>(dst: *mut T, base: *const u8, offset: u32) {
    if offset != NO_FIELD {
        unsafe { read_into(dst, base, offset) };
    }
}

/// The helper's result goes only to `--debug` diagnostics (nothing in the
/// object built without them).
#[inline(always)]
unsafe fn read_into<T>(dst: *mut T, base: *const u8, offset: u32) {
    let len = size_of::<T>() as u32;
    let src = base.wrapping_add(offset as usize);
    let ret = unsafe { gen::bpf_probe_read_kernel(dst.cast(), len, src.cast()) };
    crate::diag::read(base, offset, len, ret);
}

#[inline(always)]
unsafe fn read_ptr(base: *const u8, offset: u32) -> *const u8 {
    unsafe { read::<u64>(base, offset) as *const u8 }
}

/// Reads a `u32`/`u64` at `base + off` (0 when unreadable): for fentry programs.
pub unsafe fn read_u32(base: *const u8, off: u32) -> u32 {
    unsafe { read::<u32>(base, off) }
}

pub unsafe fn read_u64(base: *const u8, off: u32) -> u64 {
    unsafe { read::<u64>(base, off) }
}

/// `ns_common` field offsets.
pub fn nscommon_offsets() -> (u32, u32, u32) {
    (off!(nscommon_inum), off!(nscommon_id), off!(nscommon_type))
}

/// The running task's `task_struct`.
#[inline(always)]
pub fn current() -> *const u8 {
    unsafe { bpf_get_current_task() as *const u8 }
}

/// The thread id (`task->pid`) of `task`.
pub unsafe fn tid_of(task: *const u8) -> u32 {
    unsafe { read::<u32>(task, off!(task_pid)) }
}

/// `task`'s thread id as seen in its own PID namespace
/// (`thread_pid->numbers[thread_pid->level].nr`).
pub unsafe fn vpid(task: *const u8) -> u32 {
    let pid = unsafe { read_ptr(task, off!(task_thread_pid)) };
    let level = unsafe { read::<u32>(pid, off!(pid_level)) };
    let (numbers, size) = (off!(pid_numbers), off!(upid_size));
    if pid.is_null() || numbers == NO_FIELD || size == NO_FIELD || level > 32 {
        return 0;
    }
    // `nr` is the first member of `struct upid`.
    unsafe { read::<u32>(pid, numbers + level * size) }
}

/// `task`'s effective uid and whether it has CAP_SYS_ADMIN (in its own
/// user namespace), from its subjective credentials.
pub unsafe fn euid_admin(task: *const u8) -> (u32, u32) {
    let cred = unsafe { read_ptr(task, off!(task_cred)) };
    let euid = unsafe { read::<u32>(cred, off!(cred_euid)) };
    let caps = unsafe { read::<u64>(cred, off!(cred_cap_effective)) };
    (euid, ((caps >> 21) & 1) as u32)
}

/// The thread-group id (`task->tgid`).
pub unsafe fn tgid_of(task: *const u8) -> u32 {
    unsafe { read::<u32>(task, off!(task_tgid)) }
}

/// `task->real_parent->tgid`.
pub unsafe fn parent_tgid(task: *const u8) -> u32 {
    let parent = unsafe { read_ptr(task, off!(task_real_parent)) };
    unsafe { read::<u32>(parent, off!(task_tgid)) }
}

/// The tgids of `task`'s grandparent and great-grandparent (0 past init:
/// a failed read gives a null pointer, and reads through it give 0).
pub unsafe fn elder_tgids(task: *const u8) -> [u32; 2] {
    let parent = unsafe { read_ptr(task, off!(task_real_parent)) };
    let grand = unsafe { read_ptr(parent, off!(task_real_parent)) };
    let great = unsafe { read_ptr(grand, off!(task_real_parent)) };
    unsafe {
        [
            read::<u32>(grand, off!(task_tgid)),
            read::<u32>(great, off!(task_tgid)),
        ]
    }
}

/// `struct nsproxy` is a count and eight pointers on every kernel nstrace
/// runs on: read whole, in one helper call instead of one per kind.
const NSPROXY_WORDS: usize = 9;

/// Whether `ns` (a namespace struct) is one of the kernel image's static
/// initial namespaces, which are never freed and never watched.
#[inline(always)]
pub fn is_initial(ns: u64) -> bool {
    ns >= off!(static_floor)
}

/// All ones for a namespace struct that can be watched, 0 for an initial
/// one (or null), without a branch: a branch per kind would let the values
/// read after it differ by path, and the verifier would walk 2^8 paths.
#[inline(always)]
pub fn watchable_mask(ns: u64) -> u64 {
    // Top bit of (floor - 1 - ns): 1 when ns >= floor (or ns is 0).
    let initial = off!(static_floor).wrapping_sub(1).wrapping_sub(ns) >> 63;
    initial.wrapping_sub(1)
}

/// `task`'s nsproxy and the user namespace of its credentials.
#[inline(always)]
unsafe fn roots(task: *const u8) -> (*const u8, u64) {
    let nsproxy = unsafe { read_ptr(task, off!(task_nsproxy)) };
    let cred = unsafe { read_ptr(task, off!(task_real_cred)) };
    (nsproxy, unsafe { read_ptr(cred, off!(cred_user_ns)) }
        as u64)
}

/// Pointers to `task`'s namespace structs, per kind: from the nsproxy (pid
/// and time: the "for children" ones), and the user namespace of its
/// credentials. Null where unreadable.
#[inline(always)]
pub unsafe fn ns_ptrs(task: *const u8, out: &mut [u64; NS_KINDS]) {
    let (nsproxy, user) = unsafe { roots(task) };
    unsafe { ptrs_from(nsproxy, user, out) };
}

/// Like [`ns_ptrs`], but false (and `out` untouched) for a task entirely in
/// the initial namespaces: the host's processes, most forks and exits on a
/// machine, leave after three reads.
#[inline(always)]
pub unsafe fn ns_ptrs_unless_initial(task: *const u8, out: &mut [u64; NS_KINDS]) -> bool {
    if off!(valid) == 0 {
        return false;
    }
    let (nsproxy, user) = unsafe { roots(task) };
    if is_initial(nsproxy as u64) && is_initial(user) {
        return false;
    }
    unsafe { ptrs_from(nsproxy, user, out) };
    true
}

#[inline(always)]
unsafe fn ptrs_from(nsproxy: *const u8, user: u64, out: &mut [u64; NS_KINDS]) {
    let mut block = [0u64; NSPROXY_WORDS];
    unsafe { read_into(&mut block, nsproxy, 0) };
    for (k, slot) in out.iter_mut().enumerate() {
        if k == kind::USER {
            *slot = user;
            continue;
        }
        let off = off!(nsproxy[k]);
        let word = (off / 8) as usize;
        *slot = if off % 8 == 0 && word < NSPROXY_WORDS {
            block[word]
        } else {
            unsafe { read_ptr(nsproxy, off) as u64 }
        };
    }
}

/// Inodes of the namespaces at `ptrs` that can be watched (0 for the
/// initial ones and unreadable kinds): what member counts are kept by.
#[inline(always)]
pub unsafe fn watchable_inums(ptrs: &[u64; NS_KINDS], out: &mut [u32; NS_KINDS]) {
    for k in 0..NS_KINDS {
        // An initial one reads from null: 0, as a failed read.
        let ns = ptrs[k] & watchable_mask(ptrs[k]);
        out[k] = unsafe { read::<u32>(ns as *const u8, off!(inum[k])) };
    }
}

/// Fills `out` with `task`'s namespaces, inodes and ids (unreadable kinds stay
/// 0), and `ptrs` with their struct pointers, for [`read_ns_since`] and
/// [`read_owners`].
pub unsafe fn read_ns(task: *const u8, out: &mut NsSet, ptrs: &mut [u64; NS_KINDS]) {
    *out = NsSet {
        inum: [0; NS_KINDS],
        id: [0; NS_KINDS],
    };
    *ptrs = [0; NS_KINDS];
    if off!(valid) == 0 {
        return;
    }
    unsafe { ns_ptrs(task, ptrs) };
    for k in 0..NS_KINDS {
        unsafe { ns_ident(ptrs[k], k, &mut out.inum[k], &mut out.id[k]) };
    }
}

/// Inode and id of the namespace at `ns` of kind `k`, read straight into
/// their destinations.
#[inline(always)]
unsafe fn ns_ident(ns: u64, k: usize, inum: &mut u32, id: &mut u64) {
    let ns = ns as *const u8;
    unsafe { read_field_into(inum, ns, off!(inum[k])) };
    unsafe { read_field_into(id, ns, off!(ns_id[k])) };
}

/// Like [`read_ns`] for a task whose set was `before` (at pointers
/// `before_ptrs`): only kinds whose namespace pointer changed are read again.
pub unsafe fn read_ns_since(
    task: *const u8,
    before: &NsSet,
    before_ptrs: &[u64; NS_KINDS],
    out: &mut NsSet,
    ptrs: &mut [u64; NS_KINDS],
) {
    *out = *before;
    *ptrs = *before_ptrs;
    if off!(valid) == 0 {
        return;
    }
    unsafe { ns_ptrs(task, ptrs) };
    for k in 0..NS_KINDS {
        if ptrs[k] != before_ptrs[k] || ptrs[k] == 0 {
            unsafe { ns_ident(ptrs[k], k, &mut out.inum[k], &mut out.id[k]) };
        }
    }
}

/// Fills `e.owners` for the kinds in `kinds` (`CLONE_NEW*` bits: the ones
/// just created), from the task's namespace pointers `ptrs`: the owning user
/// namespace (for user, its parent); and `e.pid_parent` when a PID namespace
/// was created.
pub unsafe fn read_owners(ptrs: &[u64; NS_KINDS], e: &mut Event, kinds: u64) {
    if off!(valid) == 0 {
        return;
    }
    let user_inum = off!(inum[kind::USER]);
    for k in 0..NS_KINDS {
        if kinds & KIND_FLAGS[k] == 0 {
            continue;
        }
        let owner = unsafe { read_ptr(ptrs[k] as *const u8, off!(owner[k])) };
        e.owners[k] = unsafe { read::<u32>(owner, user_inum) };
    }
    if kinds & KIND_FLAGS[kind::PID] != 0 {
        let parent = unsafe { read_ptr(ptrs[kind::PID] as *const u8, off!(pidns_parent)) };
        e.pid_parent = unsafe { read::<u32>(parent, off!(inum[kind::PID])) };
    }
}

/// Whether `task` is the init (child reaper) of the PID namespace at
/// `pidns` (its namespace for children, which for an init is the one it leads).
pub unsafe fn is_pidns_reaper(task: *const u8, pidns: u64) -> bool {
    let reaper = unsafe { read_ptr(pidns as *const u8, off!(pidns_child_reaper)) };
    !reaper.is_null() && reaper == task
}
