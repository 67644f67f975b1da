//! Reads of kernel structs, at offsets user space computed from the running
//! kernel's BTF (see `nstrace::kernel::offsets`) and wrote into [`OFFSETS`].

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
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

#[inline(always)]
unsafe fn read<T: Copy + Default>(base: *const u8, offset: u32) -> T {
    if base.is_null() || offset == NO_FIELD {
        return T::default();
    }
    unsafe { bpf_probe_read_kernel(base.add(offset as usize) as *const T) }.unwrap_or_default()
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

/// The thread-group id (`task->tgid`).
pub unsafe fn tgid_of(task: *const u8) -> u32 {
    unsafe { read::<u32>(task, off!(task_tgid)) }
}

/// `task->real_parent->tgid`.
pub unsafe fn parent_tgid(task: *const u8) -> u32 {
    let parent = unsafe { read_ptr(task, off!(task_real_parent)) };
    unsafe { read::<u32>(parent, off!(task_tgid)) }
}

/// `struct nsproxy` is a count and eight pointers on every kernel nstrace
/// runs on: read whole, in one helper call instead of one per kind.
const NSPROXY_WORDS: usize = 9;

/// Pointers to `task`'s namespace structs, per kind: from the nsproxy (pid
/// and time: the "for children" ones), and the user namespace of its
/// credentials. Null where unreadable.
#[inline(always)]
pub unsafe fn ns_ptrs(task: *const u8) -> [u64; NS_KINDS] {
    let mut out = [0u64; NS_KINDS];
    let nsproxy = unsafe { read_ptr(task, off!(task_nsproxy)) };
    let block: [u64; NSPROXY_WORDS] = if nsproxy.is_null() {
        [0; NSPROXY_WORDS]
    } else {
        unsafe { bpf_probe_read_kernel(nsproxy as *const [u64; NSPROXY_WORDS]) }
            .unwrap_or([0; NSPROXY_WORDS])
    };
    for (k, slot) in out.iter_mut().enumerate() {
        if k == kind::USER {
            let cred = unsafe { read_ptr(task, off!(task_real_cred)) };
            *slot = unsafe { read_ptr(cred, off!(cred_user_ns)) } as u64;
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
    out
}

/// Inode and id of the namespace at `ns` of kind `k`.
#[inline(always)]
unsafe fn ns_ident(ns: u64, k: usize) -> (u32, u64) {
    let ns = ns as *const u8;
    (unsafe { read::<u32>(ns, off!(inum[k])) }, unsafe {
        read::<u64>(ns, off!(ns_id[k]))
    })
}

/// Fills `out` with `task`'s namespaces, inodes and ids (unreadable kinds stay
/// 0); returns their struct pointers, for [`read_ns_since`].
pub unsafe fn read_ns(task: *const u8, out: &mut NsSet) -> [u64; NS_KINDS] {
    *out = NsSet {
        inum: [0; NS_KINDS],
        id: [0; NS_KINDS],
    };
    if off!(valid) == 0 {
        return [0; NS_KINDS];
    }
    let ptrs = unsafe { ns_ptrs(task) };
    for k in 0..NS_KINDS {
        (out.inum[k], out.id[k]) = unsafe { ns_ident(ptrs[k], k) };
    }
    ptrs
}

/// Like [`read_ns`] for a task whose set was `before` (at pointers
/// `before_ptrs`): only kinds whose namespace pointer changed are read again.
pub unsafe fn read_ns_since(
    task: *const u8,
    before: &NsSet,
    before_ptrs: &[u64; NS_KINDS],
    out: &mut NsSet,
) {
    if off!(valid) == 0 {
        return;
    }
    let ptrs = unsafe { ns_ptrs(task) };
    for k in 0..NS_KINDS {
        (out.inum[k], out.id[k]) = if ptrs[k] == before_ptrs[k] && ptrs[k] != 0 {
            (before.inum[k], before.id[k])
        } else {
            unsafe { ns_ident(ptrs[k], k) }
        };
    }
}

/// Like [`read_ns`], inodes only: the cheap form for every fork and exit.
pub unsafe fn read_inums(task: *const u8, out: &mut NsSet) {
    if off!(valid) == 0 {
        return;
    }
    let ptrs = unsafe { ns_ptrs(task) };
    for k in 0..NS_KINDS {
        out.inum[k] = unsafe { read::<u32>(ptrs[k] as *const u8, off!(inum[k])) };
    }
}

/// Fills `e.owners` for the kinds in `kinds` (`CLONE_NEW*` bits: the ones
/// just created): the owning user namespace (for user, its parent); and
/// `e.pid_parent` when a PID namespace was created.
pub unsafe fn read_owners(task: *const u8, e: &mut Event, kinds: u64) {
    if off!(valid) == 0 {
        return;
    }
    let ptrs = unsafe { ns_ptrs(task) };
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

/// Whether `task` is the init (child reaper) of its PID namespace for children,
/// which for an init is the namespace it leads.
pub unsafe fn is_pidns_reaper(task: *const u8) -> bool {
    let pidns = unsafe { ns_ptrs(task)[kind::PID] as *const u8 };
    let reaper = unsafe { read_ptr(pidns, off!(pidns_child_reaper)) };
    !reaper.is_null() && reaper == task
}
