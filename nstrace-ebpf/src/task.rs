//! Reads of kernel structs, at offsets user space computed from the running
//! kernel's BTF (see `nstrace::kernel::offsets`) and wrote into [`OFFSETS`].

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use nstrace_common::{kind, NsSet, Offsets, NO_FIELD, NS_KINDS};

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

/// The running task's `task_struct`.
#[inline(always)]
pub fn current() -> *const u8 {
    unsafe { bpf_get_current_task() as *const u8 }
}

/// The thread id (`task->pid`) of `task`.
pub unsafe fn tid_of(task: *const u8) -> u32 {
    unsafe { read::<u32>(task, off!(task_pid)) }
}

/// `task->real_parent->tgid`.
pub unsafe fn parent_tgid(task: *const u8) -> u32 {
    let parent = unsafe { read_ptr(task, off!(task_real_parent)) };
    unsafe { read::<u32>(parent, off!(task_tgid)) }
}

/// Fills `out` with `task`'s namespaces: the nsproxy kinds (pid and time "for
/// children") and the user namespace of its credentials. Unreadable kinds stay 0.
pub unsafe fn read_ns(task: *const u8, out: &mut NsSet) {
    *out = NsSet {
        inum: [0; NS_KINDS],
        id: [0; NS_KINDS],
    };
    if off!(valid) == 0 {
        return;
    }
    let nsproxy = unsafe { read_ptr(task, off!(task_nsproxy)) };
    for k in 0..NS_KINDS {
        let ns = if k == kind::USER {
            let cred = unsafe { read_ptr(task, off!(task_real_cred)) };
            unsafe { read_ptr(cred, off!(cred_user_ns)) }
        } else {
            unsafe { read_ptr(nsproxy, off!(nsproxy[k])) }
        };
        out.inum[k] = unsafe { read::<u32>(ns, off!(inum[k])) };
        out.id[k] = unsafe { read::<u64>(ns, off!(ns_id[k])) };
    }
}
