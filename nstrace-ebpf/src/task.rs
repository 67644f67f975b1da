//! Reads of kernel structs, at offsets user space computed from the running
//! kernel's BTF (see `nstrace::kernel::offsets`) and wrote into [`OFFSETS`].

use core::{
    mem::MaybeUninit,
    ptr::{addr_of, read_volatile},
};

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
            // SAFETY: an aligned read of a field of the OFFSETS static, which
            // user space fills before load and nothing writes after.
            let v = unsafe { read_volatile(addr_of!(OFFSETS.$($field)+)) };
            v
        }
    };
}

/// One kernel read, 0 where unreadable. The helper zeroes its destination
/// when the read faults (a null base included), so nothing branches on its
/// result: every branch here would multiply the paths the verifier walks,
/// and it walks these reads dozens of times per program.
///
/// # Safety
///
/// Any bit pattern must be a valid `T` (callers read plain integers). `base` may
/// be any value: it is only probe-read.
#[inline(always)]
unsafe fn read<T: Copy + Default>(base: *const u8, offset: u32) -> T {
    let mut v = T::default();
    // SAFETY: `v` is a live local `T`, valid for `size_of::<T>()` bytes of
    // writes; any bytes are a valid `T` (the caller's guarantee).
    unsafe { read_field_into(&mut v, base, offset) };
    v
}

/// [`read`] straight into `dst` (map or ring memory: no stack copy);
/// `dst` is left alone when the kernel has no such field.
///
/// # Safety
///
/// `dst` must be valid for writes of `size_of::<T>()` bytes, and any bit pattern
/// must be a valid `T`. `base` may be any value: it is only probe-read.
#[inline(always)]
unsafe fn read_field_into<T>(dst: *mut T, base: *const u8, offset: u32) {
    if offset != NO_FIELD {
        // SAFETY: the caller's guarantees on `dst`, passed on; `base + offset` is only probe-read.
        unsafe { read_into(dst, base, offset) };
    }
}

/// The helper's result goes only to `--debug` diagnostics (nothing in the
/// object built without them).
///
/// # Safety
///
/// As [`read_field_into`]: `dst` valid for writes of `size_of::<T>()` bytes, any
/// bit pattern a valid `T`; `base` may be any value.
#[inline(always)]
unsafe fn read_into<T>(dst: *mut T, base: *const u8, offset: u32) {
    let len = size_of::<T>() as u32;
    let src = base.wrapping_add(offset as usize);
    // SAFETY: a probe read: bpf_probe_read_kernel writes `len` = size_of::<T>()
    // bytes to `dst` (valid, per the caller), zeroes it on a fault, never
    // dereferences `src`.
    let ret = unsafe { gen::bpf_probe_read_kernel(dst.cast(), len, src.cast()) };
    crate::diag::read(base, offset, len, ret);
}

/// Zeroes `*dst` in one helper call: a probe read of address 0 fails and
/// the helper zeroes its destination (the kernel's documented behaviour,
/// what Tetragon and bpftrace rely on for large buffers). An assignment of
/// zeros instead becomes a call of compiler_builtins' byte-at-a-time
/// `memset`, which the verifier walks byte by byte at every call site and
/// the CPU runs at five instructions a byte.
///
/// # Safety
///
/// `dst` must be valid for writes of `size_of::<T>()` bytes, and all zeros
/// a valid `T`.
#[inline(always)]
pub unsafe fn zero<T>(dst: *mut T) {
    // SAFETY: the helper writes exactly size_of::<T>() bytes to `dst` (valid,
    // per the caller) and reads nothing: address 0 always faults.
    unsafe { gen::bpf_probe_read_kernel(dst.cast(), size_of::<T>() as u32, core::ptr::null()) };
}

/// `*dst = *src` in one helper call, for the same reason as [`zero`]
/// (a struct's assignment becomes a byte-at-a-time `memmove` call).
///
/// # Safety
///
/// `dst` valid for writes and `src` for reads of `size_of::<T>()` bytes
/// (map or stack memory, which never faults), not overlapping.
#[inline(always)]
pub unsafe fn copy<T: Copy>(dst: *mut T, src: *const T) {
    // SAFETY: as the caller guarantees; a probe read of kernel memory the
    // program owns.
    unsafe { gen::bpf_probe_read_kernel(dst.cast(), size_of::<T>() as u32, src.cast()) };
}

/// A pointer-sized read at `base + offset` (null when unreadable).
///
/// # Safety
///
/// No requirement: `base` is only probe-read (a fault reads as 0). The result is an
/// address for further probe reads, never to be dereferenced.
#[inline(always)]
unsafe fn read_ptr(base: *const u8, offset: u32) -> *const u8 {
    // SAFETY: `read` into a `u64` (valid for any bytes); the address is only probe-read.
    unsafe { read::<u64>(base, offset) as *const u8 }
}

/// Reads a `u32`/`u64` at `base + off` (0 when unreadable): for fentry programs.
///
/// # Safety
///
/// No requirement: `base + off` is only probe-read (a fault reads as 0).
pub unsafe fn read_u32(base: *const u8, off: u32) -> u32 {
    // SAFETY: `read` into a `u32` (valid for any bytes); the address is only probe-read.
    unsafe { read::<u32>(base, off) }
}

/// # Safety
///
/// As [`read_u32`]: only a probe read, into a `u64`.
pub unsafe fn read_u64(base: *const u8, off: u32) -> u64 {
    // SAFETY: `read` into a `u64` (valid for any bytes); the address is only probe-read.
    unsafe { read::<u64>(base, off) }
}

/// `ns_common` field offsets.
pub fn nscommon_offsets() -> (u32, u32, u32) {
    (off!(nscommon_inum), off!(nscommon_id), off!(nscommon_type))
}

/// The running task's `task_struct`.
#[inline(always)]
pub fn current() -> *const u8 {
    // SAFETY: bpf_get_current_task takes no arguments and touches no memory;
    // the pointer it returns is only probe-read.
    unsafe { bpf_get_current_task() as *const u8 }
}

/// The thread id (`task->pid`) of `task`.
///
/// # Safety
///
/// No memory requirement: `task` is only probe-read (a fault reads as 0, nothing
/// is dereferenced). It must be a `task_struct` (or null) for the result to mean
/// anything.
pub unsafe fn tid_of(task: *const u8) -> u32 {
    // SAFETY: a probe read of `task->pid`, at its BTF offset.
    unsafe { read::<u32>(task, off!(task_pid)) }
}

/// `task`'s thread id as seen in its own PID namespace
/// (`thread_pid->numbers[thread_pid->level].nr`).
///
/// # Safety
///
/// No memory requirement: `task` is only probe-read (a fault reads as 0, nothing
/// is dereferenced). It must be a `task_struct` (or null) for the result to mean
/// anything.
pub unsafe fn vpid(task: *const u8) -> u32 {
    // SAFETY: a probe read of `task->thread_pid`, at its BTF offset.
    let pid = unsafe { read_ptr(task, off!(task_thread_pid)) };
    // SAFETY: a probe read of `pid->level` (a null `pid` reads as 0).
    let level = unsafe { read::<u32>(pid, off!(pid_level)) };
    let (numbers, size) = (off!(pid_numbers), off!(upid_size));
    if pid.is_null() || numbers == NO_FIELD || size == NO_FIELD || level > 32 {
        return 0;
    }
    // `nr` is the first member of `struct upid`.
    // SAFETY: a probe read; `pid` is non-null and `level` at most 32, checked above.
    unsafe { read::<u32>(pid, numbers + level * size) }
}

/// `task`'s effective uid and whether it has CAP_SYS_ADMIN (in its own
/// user namespace), from its subjective credentials.
///
/// # Safety
///
/// No memory requirement: `task` is only probe-read (a fault reads as 0, nothing
/// is dereferenced). It must be a `task_struct` (or null) for the result to mean
/// anything.
pub unsafe fn euid_admin(task: *const u8) -> (u32, u32) {
    // SAFETY: a probe read of `task->cred`, at its BTF offset.
    let cred = unsafe { read_ptr(task, off!(task_cred)) };
    // SAFETY: a probe read of `cred->euid` (a null `cred` reads as 0).
    let euid = unsafe { read::<u32>(cred, off!(cred_euid)) };
    // SAFETY: a probe read of `cred->cap_effective`, into a `u64`.
    let caps = unsafe { read::<u64>(cred, off!(cred_cap_effective)) };
    (euid, ((caps >> 21) & 1) as u32)
}

/// The thread-group id (`task->tgid`).
///
/// # Safety
///
/// No memory requirement: `task` is only probe-read (a fault reads as 0, nothing
/// is dereferenced). It must be a `task_struct` (or null) for the result to mean
/// anything.
pub unsafe fn tgid_of(task: *const u8) -> u32 {
    // SAFETY: a probe read of `task->tgid`, at its BTF offset.
    unsafe { read::<u32>(task, off!(task_tgid)) }
}

/// `task->real_parent->tgid`.
///
/// # Safety
///
/// No memory requirement: `task` is only probe-read (a fault reads as 0, nothing
/// is dereferenced). It must be a `task_struct` (or null) for the result to mean
/// anything.
pub unsafe fn parent_tgid(task: *const u8) -> u32 {
    // SAFETY: a probe read of `task->real_parent`, at its BTF offset.
    let parent = unsafe { read_ptr(task, off!(task_real_parent)) };
    // SAFETY: a probe read of the parent's tgid (a null `parent` reads as 0).
    unsafe { read::<u32>(parent, off!(task_tgid)) }
}

/// The tgids of `task`'s grandparent and great-grandparent (0 past init:
/// a failed read gives a null pointer, and reads through it give 0).
///
/// # Safety
///
/// No memory requirement: `task` is only probe-read (a fault reads as 0, nothing
/// is dereferenced). It must be a `task_struct` (or null) for the result to mean
/// anything.
pub unsafe fn elder_tgids(task: *const u8) -> [u32; 2] {
    // SAFETY: a probe read of `task->real_parent`, at its BTF offset.
    let parent = unsafe { read_ptr(task, off!(task_real_parent)) };
    // SAFETY: a probe read of the grandparent pointer (null reads as 0).
    let grand = unsafe { read_ptr(parent, off!(task_real_parent)) };
    // SAFETY: a probe read of the great-grandparent pointer (null reads as 0).
    let great = unsafe { read_ptr(grand, off!(task_real_parent)) };
    // SAFETY: probe reads of two tgids (a null task reads as 0).
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
///
/// # Safety
///
/// No memory requirement: `task` is only probe-read (a fault reads as 0, nothing
/// is dereferenced). It must be a `task_struct` (or null) for the result to mean
/// anything.
#[inline(always)]
unsafe fn roots(task: *const u8) -> (*const u8, u64) {
    // SAFETY: as this function's.
    unsafe { roots_at(task, off!(task_real_cred)) }
}

/// [`roots`] with the credentials at `cred_off` in `task`.
///
/// # Safety
///
/// As [`roots`].
#[inline(always)]
unsafe fn roots_at(task: *const u8, cred_off: u32) -> (*const u8, u64) {
    // SAFETY: a probe read of `task->nsproxy`, at its BTF offset.
    let nsproxy = unsafe { read_ptr(task, off!(task_nsproxy)) };
    // SAFETY: a probe read of the task's credentials pointer, at its BTF offset.
    let cred = unsafe { read_ptr(task, cred_off) };
    // SAFETY: a probe read of `cred->user_ns` (a null `cred` reads as 0).
    (nsproxy, unsafe { read_ptr(cred, off!(cred_user_ns)) }
        as u64)
}

/// Pointers to `task`'s namespace structs, per kind: from the nsproxy (pid
/// and time: the "for children" ones), and the user namespace of its
/// credentials. Null where unreadable.
///
/// # Safety
///
/// No requirement beyond `out` (a live `&mut`): `task` is only probe-read (a fault
/// reads as 0). It must be a `task_struct` (or null) for the result to mean anything.
#[inline(always)]
pub unsafe fn ns_ptrs(task: *const u8, out: &mut [u64; NS_KINDS]) {
    // SAFETY: `roots` only probe-reads from `task`.
    let (nsproxy, user) = unsafe { roots(task) };
    // SAFETY: `ptrs_from` only probe-reads from `nsproxy` and writes `out`, a live `&mut`.
    unsafe { ptrs_from(nsproxy, user, out) };
}

/// `task`'s nsproxy and user namespace, unless both are the kernel's
/// initial ones (then None: a host task, after three reads). Callers make
/// their pointer array only past this test: made before it, the array's
/// zeroing (a `memset` call) was on every host fork and exit.
///
/// # Safety
///
/// As [`ns_ptrs`]: `task` is only probe-read.
#[inline(always)]
pub unsafe fn watchable_roots(task: *const u8) -> Option<(*const u8, u64)> {
    // SAFETY: as this function's.
    unsafe { watchable_roots_at(task, off!(task_real_cred)) }
}

/// [`watchable_roots`] with the credentials at `cred_off` in `task`.
///
/// # Safety
///
/// As [`ns_ptrs`]: `task` is only probe-read.
#[inline(always)]
unsafe fn watchable_roots_at(task: *const u8, cred_off: u32) -> Option<(*const u8, u64)> {
    if off!(valid) == 0 {
        return None;
    }
    // SAFETY: `roots_at` only probe-reads from `task`.
    let (nsproxy, user) = unsafe { roots_at(task, cred_off) };
    (!(is_initial(nsproxy as u64) && is_initial(user))).then_some((nsproxy, user))
}

/// A pointer field loaded straight through a BTF-typed pointer: an
/// ordinary load the verifier checks against the kernel's type (a fault
/// reads as 0, through the exception table), not a helper call.
///
/// # Safety
///
/// `base` must be a pointer the verifier knows as BTF-typed (from
/// `bpf_get_current_task_btf` or a load through one) and `offset` a
/// pointer-sized field of its type, a constant to the verifier (read-only
/// data): otherwise the program does not load. No memory requirement.
#[inline(always)]
unsafe fn load_ptr(base: *const u8, offset: u32) -> *const u8 {
    // SAFETY: as the caller guarantees; the kernel turns the load into a
    // fault-tolerant one.
    unsafe { read_volatile(base.wrapping_add(offset as usize).cast::<*const u8>()) }
}

/// A typed pointer as a plain number, for keys and arithmetic: the
/// verifier refuses arithmetic on a typed pointer, but a privileged
/// program may subtract one typed pointer from another (the result is a
/// number), so `p - task` (both typed) plus the current task's address as
/// a number (`task_plain`, from `bpf_get_current_task`) is `p`'s address.
/// In assembly so that LLVM cannot reassociate it into `task_plain - task`
/// first, which the verifier refuses (a number minus a pointer).
///
/// # Safety
///
/// `task` and `task_plain` must be the current task, typed and plain; `p`
/// a typed pointer (or null). No memory is touched.
#[inline(always)]
unsafe fn untyped(p: *const u8, task: *const u8, task_plain: u64) -> u64 {
    let mut v = p as u64;
    // SAFETY: register arithmetic only, no memory access.
    unsafe {
        core::arch::asm!(
            "{v} -= {t}",
            "{v} += {plain}",
            v = inout(reg) v,
            t = in(reg) task as u64,
            plain = in(reg) task_plain,
            options(pure, nomem, nostack),
        );
    }
    v
}

/// The current task's member set into `out` (see `SetPtrs` in main.rs),
/// with the user namespace of its credentials at `cred_off`
/// (`task_struct.cred` or `.real_cred`): false, `out` untouched, for a task
/// entirely in the initial namespaces. Where [`Offsets::direct`] says the
/// kernel allows them, by typed loads and no helper call but the current
/// task's (a host task: three loads and two comparisons); otherwise by
/// probe reads.
///
/// # Safety
///
/// `out` must be valid for writes of `[u64; NS_KINDS]`. No other memory
/// requirement (direct loads fault as 0; probe reads as 0).
#[inline(always)]
unsafe fn current_set(
    cred_off: u32,
    out: *mut [u64; NS_KINDS],
    mut exiting: Option<&mut Exiting>,
) -> bool {
    if off!(valid) == 0 {
        return false;
    }
    if off!(direct) == 0 {
        // SAFETY: `watchable_roots_at` and `ptrs_from` only probe-read from
        // the current task; `out` as the caller guarantees.
        return unsafe {
            match watchable_roots_at(current(), cred_off) {
                Some((nsproxy, user)) => {
                    ptrs_from(nsproxy, user, out);
                    if let Some(x) = exiting {
                        x.tid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
                        let pidns = (*out)[kind::PID] as *const u8;
                        let reaper = read_ptr(pidns, off!(pidns_child_reaper));
                        x.reaper = !reaper.is_null() && reaper == current();
                    }
                    true
                }
                None => false,
            }
        };
    }
    // SAFETY: the helper takes no arguments; `direct` is set only where the
    // kernel allows it in these programs and the loads below.
    let task = unsafe { gen::bpf_get_current_task_btf() } as *const u8;
    // SAFETY: BTF-typed loads of pointer fields at their BTF offsets.
    let (nsproxy, cred) = unsafe { (load_ptr(task, off!(task_nsproxy)), load_ptr(task, cred_off)) };
    // SAFETY: as above, through the credentials' BTF type.
    let user = unsafe { load_ptr(cred, off!(cred_user_ns)) };
    if is_initial(nsproxy as u64) && is_initial(user as u64) {
        return false;
    }
    let plain = current() as u64;
    let out = out.cast::<u64>();
    for k in 0..NS_KINDS {
        let p = if k == kind::USER {
            user
        } else {
            let off = off!(nsproxy[k]);
            if off == NO_FIELD {
                core::ptr::null()
            } else {
                // SAFETY: a BTF-typed load of the kind's field of the nsproxy.
                unsafe { load_ptr(nsproxy, off) }
            }
        };
        // SAFETY: `task` and `plain` are the current task; `k` < NS_KINDS,
        // inside `out` (valid for writes, per the caller).
        unsafe { out.add(k).write(untyped(p, task, plain)) };
        if k == kind::PID {
            if let Some(x) = exiting.as_deref_mut() {
                // SAFETY: typed loads at BTF offsets: the thread id, and the
                // child reaper of the PID namespace for children (only
                // compared).
                unsafe {
                    x.tid = read_volatile(task.wrapping_add(off!(task_pid) as usize).cast::<u32>());
                    let reaper = load_ptr(p, off!(pidns_child_reaper));
                    x.reaper = !reaper.is_null() && reaper == task;
                }
            }
        }
    }
    true
}

/// What an exit learns beside its set, from the same reads: its thread id
/// (`task->pid`, a load instead of a helper call) and whether it is the
/// child reaper (init) of its PID namespace for children.
pub struct Exiting {
    pub tid: u32,
    pub reaper: bool,
}

/// [`current_set`] of the task now exiting (the current one), with its
/// real credentials, as the rest of nstrace counts it.
///
/// # Safety
///
/// As [`current_set`].
#[inline(always)]
pub unsafe fn exiting_set(out: *mut [u64; NS_KINDS], exiting: &mut Exiting) -> bool {
    // SAFETY: as this function's.
    unsafe { current_set(off!(task_real_cred), out, Some(exiting)) }
}

/// [`current_set`] of `child`, a task just forked without `CLONE_NEW*`
/// flags. With direct loads it is read from the parent (the current
/// task), whose pointers the child's are: `copy_namespaces` gives it the
/// parent's nsproxy, or (the first child after unshare(CLONE_NEWTIME)) a
/// new one holding the same namespaces, the "for children" ones the set
/// is keyed by; `copy_creds` gives it a copy of the parent's subjective
/// credentials, so `task_struct.cred`, not `.real_cred`.
///
/// # Safety
///
/// As [`current_set`]; `child` is only probe-read.
#[inline(always)]
pub unsafe fn child_set(child: *const u8, out: *mut [u64; NS_KINDS]) -> bool {
    if off!(direct) != 0 {
        // SAFETY: as this function's.
        return unsafe { current_set(off!(task_cred), out, None) };
    }
    // SAFETY: `watchable_roots` and `ptrs_from` only probe-read from
    // `child`; `out` as the caller guarantees.
    unsafe {
        match watchable_roots(child) {
            Some((nsproxy, user)) => {
                ptrs_from(nsproxy, user, out);
                true
            }
            None => false,
        }
    }
}

/// Fills `out` from the nsproxy at `nsproxy` and the user namespace `user`:
/// every slot, so `out` may start uninitialised. Nothing here is zeroed
/// first on purpose: the BPF backend lowers an array's zeroing to a call of
/// compiler_builtins' byte-at-a-time `memset` (five instructions a byte),
/// which on a container's fork and exit cost more than the reads.
///
/// # Safety
///
/// `out` must be valid for writes of `[u64; NS_KINDS]`; `nsproxy` is only
/// probe-read (a fault reads as 0).
#[inline(always)]
pub unsafe fn ptrs_from(nsproxy: *const u8, user: u64, out: *mut [u64; NS_KINDS]) {
    let mut block = MaybeUninit::<[u64; NSPROXY_WORDS]>::uninit();
    // SAFETY: a probe read into `block`, exactly `len` bytes long; the helper
    // writes all of them (zeroes on a fault), so `block` is initialised after.
    let block = unsafe {
        read_into(block.as_mut_ptr(), nsproxy, 0);
        block.assume_init_ref()
    };
    let out = out.cast::<u64>();
    for k in 0..NS_KINDS {
        let value = if k == kind::USER {
            user
        } else {
            let off = off!(nsproxy[k]);
            let word = (off / 8) as usize;
            if off % 8 == 0 && word < NSPROXY_WORDS {
                block[word]
            } else {
                // SAFETY: a probe read at the kind's BTF offset in `nsproxy` (null reads as 0).
                unsafe { read_ptr(nsproxy, off) as u64 }
            }
        };
        // SAFETY: `k` < NS_KINDS, inside `out` (valid for writes, per the caller).
        unsafe { out.add(k).write(value) };
    }
}

/// Inodes of the namespaces at `ptrs`, initial ones included (0 where
/// unreadable): the key of a thread's member set, as /proc shows it.
///
/// # Safety
///
/// No requirement: the pointers in `ptrs` are only probe-read (a fault reads as 0).
#[inline(always)]
pub unsafe fn inums(ptrs: &[u64; NS_KINDS], out: &mut [u32; NS_KINDS]) {
    for k in 0..NS_KINDS {
        // SAFETY: `out[k]` is a live `&mut u32`; a probe read of the kind's
        // inode at its BTF offset (a null pointer reads as 0).
        unsafe { read_field_into(&mut out[k], ptrs[k] as *const u8, off!(inum[k])) };
    }
}

/// The inode of the namespace of kind `k` at `ns` (0 where unreadable).
///
/// # Safety
///
/// No requirement: `ns` is only probe-read (a fault reads as 0).
pub unsafe fn inum_of(ns: u64, k: usize) -> u32 {
    let mut inum = 0u32;
    // SAFETY: `inum` is a live local; `ns` is only probe-read.
    unsafe { read_field_into(&mut inum, ns as *const u8, off!(inum[k])) };
    inum
}

/// Whether `task` is counted in a member set: not entirely in the initial
/// namespaces.
///
/// # Safety
///
/// No memory requirement: `task` is only probe-read. It must be a
/// `task_struct` (or null) for the result to mean anything.
#[inline(always)]
pub unsafe fn counted(task: *const u8) -> bool {
    // SAFETY: `watchable_roots` only probe-reads from `task`.
    unsafe { watchable_roots(task) }.is_some()
}

/// Fills `out` with `task`'s namespaces, inodes and ids (unreadable kinds stay
/// 0), and `ptrs` with their struct pointers, for [`read_ns_since`] and
/// [`read_owners`].
///
/// # Safety
///
/// `ptrs` must be valid for writes of `[u64; NS_KINDS]` (initialised or
/// not). `task` is only probe-read (a fault reads as 0, nothing is
/// dereferenced); it must be a `task_struct` (or null) for the result to
/// mean anything.
pub unsafe fn read_ns(task: *const u8, out: &mut NsSet, ptrs: *mut [u64; NS_KINDS]) {
    // SAFETY: `out` is a live `&mut`, `ptrs` valid for writes (the caller's
    // guarantee, and it may be uninitialised); zeros are a valid NsSet and
    // pointer array, so `ptrs` is initialised after.
    let ptrs = unsafe {
        zero(out);
        zero(ptrs);
        &mut *ptrs
    };
    if off!(valid) == 0 {
        return;
    }
    // SAFETY: `ns_ptrs` only probe-reads from `task` and writes `ptrs`, a live `&mut`.
    unsafe { ns_ptrs(task, ptrs) };
    for k in 0..NS_KINDS {
        // SAFETY: `ns_ident` only probe-reads from `ptrs[k]` and writes two
        // live `&mut` fields of `out`.
        unsafe { ns_ident(ptrs[k], k, &mut out.inum[k], &mut out.id[k]) };
    }
}

/// Inode and id of the namespace at `ns` of kind `k`, read straight into
/// their destinations.
///
/// # Safety
///
/// No requirement: `ns` is only probe-read (a fault leaves 0 in `inum` and `id`).
#[inline(always)]
unsafe fn ns_ident(ns: u64, k: usize, inum: &mut u32, id: &mut u64) {
    let ns = ns as *const u8;
    // SAFETY: `inum` is a live `&mut u32`, valid for 4 bytes of writes; `ns` is only probe-read.
    unsafe { read_field_into(inum, ns, off!(inum[k])) };
    // SAFETY: `id` is a live `&mut u64`, valid for 8 bytes of writes; `ns` is only probe-read.
    unsafe { read_field_into(id, ns, off!(ns_id[k])) };
}

/// Like [`read_ns`] for a task whose set was `before` (at pointers
/// `before_ptrs`): only kinds whose namespace pointer changed are read again.
///
/// # Safety
///
/// No memory requirement: `task` is only probe-read (a fault reads as 0, nothing
/// is dereferenced). It must be a `task_struct` (or null) for the result to mean
/// anything.
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
    // SAFETY: `ns_ptrs` only probe-reads from `task` and writes `ptrs`, a live `&mut`.
    unsafe { ns_ptrs(task, ptrs) };
    for k in 0..NS_KINDS {
        if ptrs[k] != before_ptrs[k] || ptrs[k] == 0 {
            // SAFETY: `ns_ident` only probe-reads from `ptrs[k]` and writes two
            // live `&mut` fields of `out`.
            unsafe { ns_ident(ptrs[k], k, &mut out.inum[k], &mut out.id[k]) };
        }
    }
}

/// Fills `e.owners` for the kinds in `kinds` (`CLONE_NEW*` bits: the ones
/// just created), from the task's namespace pointers `ptrs`: the owning user
/// namespace (for user, its parent); and `e.pid_parent` when a PID namespace
/// was created.
///
/// # Safety
///
/// No requirement: the pointers in `ptrs` are only probe-read (a fault reads as 0).
pub unsafe fn read_owners(ptrs: &[u64; NS_KINDS], e: &mut Event, kinds: u64) {
    if off!(valid) == 0 {
        return;
    }
    let user_inum = off!(inum[kind::USER]);
    for k in 0..NS_KINDS {
        if kinds & KIND_FLAGS[k] == 0 {
            continue;
        }
        // SAFETY: a probe read of the namespace's owning user namespace, at its BTF offset.
        let owner = unsafe { read_ptr(ptrs[k] as *const u8, off!(owner[k])) };
        // SAFETY: a probe read of the owner's inode (a null `owner` reads as 0).
        e.owners[k] = unsafe { read::<u32>(owner, user_inum) };
    }
    if kinds & KIND_FLAGS[kind::PID] != 0 {
        // SAFETY: a probe read of the PID namespace's parent, at its BTF offset.
        let parent = unsafe { read_ptr(ptrs[kind::PID] as *const u8, off!(pidns_parent)) };
        // SAFETY: a probe read of the parent's inode (a null `parent` reads as 0).
        e.pid_parent = unsafe { read::<u32>(parent, off!(inum[kind::PID])) };
    }
}

/// The pidfs inode number of `task`'s `struct pid` (`thread_pid->ino`,
/// 6.9+); 0 where the kernel has none.
///
/// # Safety
///
/// No memory requirement: `task` is only probe-read (a fault reads as 0, nothing
/// is dereferenced). It must be a `task_struct` (or null) for the result to mean
/// anything.
pub unsafe fn pid_ino(task: *const u8) -> u64 {
    // SAFETY: a probe read of `task->thread_pid`, at its BTF offset.
    let pid = unsafe { read_ptr(task, off!(task_thread_pid)) };
    // SAFETY: a probe read of `pid->ino` (a null `pid` reads as 0; no such
    // field leaves the 0).
    unsafe { read::<u64>(pid, off!(pid_ino)) }
}
