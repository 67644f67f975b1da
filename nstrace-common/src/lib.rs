//! The `#[repr(C)]` types that cross the kernel/user boundary.
//!
//! Both `nstrace-ebpf` and `nstrace` compile this crate, so a layout change here
//! changes both sides at once. Keep every type `Copy`, padding-free and 8-byte
//! aligned: the ring buffer hands records out at 8-byte boundaries.
#![no_std]

/// Number of namespace kinds nstrace knows.
pub const NS_KINDS: usize = 8;

/// Index of each kind in every per-kind array below.
pub mod kind {
    pub const MNT: usize = 0;
    pub const UTS: usize = 1;
    pub const IPC: usize = 2;
    pub const PID: usize = 3;
    pub const NET: usize = 4;
    pub const USER: usize = 5;
    pub const CGROUP: usize = 6;
    pub const TIME: usize = 7;
}

/// `CLONE_NEW*` flag of each kind, indexed as in [`kind`].
pub const KIND_FLAGS: [u64; NS_KINDS] = [
    0x0002_0000, // CLONE_NEWNS
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
    0x1000_0000, // CLONE_NEWUSER
    0x0200_0000, // CLONE_NEWCGROUP
    0x0000_0080, // CLONE_NEWTIME
];

/// All `CLONE_NEW*` bits.
pub const CLONE_NEW_MASK: u64 = KIND_FLAGS[0]
    | KIND_FLAGS[1]
    | KIND_FLAGS[2]
    | KIND_FLAGS[3]
    | KIND_FLAGS[4]
    | KIND_FLAGS[5]
    | KIND_FLAGS[6]
    | KIND_FLAGS[7];

/// Offset value meaning "this kernel has no such field".
pub const NO_FIELD: u32 = u32::MAX;

/// The namespaces of one task at one moment: nsfs inode and, where the kernel
/// has one, the 64-bit namespace id, per kind. Zero means "not readable".
///
/// For pid and time this holds the namespace *for children*, which is where
/// unshare and setns act.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NsSet {
    pub inum: [u32; NS_KINDS],
    pub id: [u64; NS_KINDS],
}

/// The inodes of a member set, as in [`NsSet::inum`] (pid and time for
/// children, 0 where unreadable): threads that share every namespace share
/// one member count, and a namespace's own count is the number of such sets
/// with members that hold it, so a fork or an exit moves one count and a
/// namespace's moves only when a set gets its first member or loses its
/// last. User space seeds the sets alive at start by these inodes; the
/// kernel side keys its counts by the same namespaces' struct pointers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SetKey {
    pub inum: [u32; NS_KINDS],
}

/// The key of the mark user space puts in the seed map once every set
/// alive at start is in: no thread's set has no namespace at all. Before
/// it, a set met with no seed is one the scan has not written yet.
pub const SEEDED_MARK: SetKey = SetKey {
    inum: [0; NS_KINDS],
};

/// What a raw event reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A clone/clone3 with `CLONE_NEW*` flags made a child: `before` is the
    /// caller's set, `after` the child's.
    Clone = 1,
    /// unshare or setns returned 0: `before`/`after` are the caller's sets
    /// around the call.
    Switch = 2,
    /// A namespace syscall failed: `ret` holds `-errno`.
    Error = 3,
    /// A task that took part in namespace work called execve (new `comm`).
    Exec = 4,
    /// A task exited that took part in namespace work, or was the last
    /// member of a watched namespace (`emptied`), or a PID namespace's init
    /// (`reaper`).
    Exit = 5,
    /// fentry mode: the kernel's free path ran for a namespace; its kind bit
    /// is in `flags`, its inode and id in `before`.
    Freed = 6,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Clone,
            2 => Self::Switch,
            3 => Self::Error,
            4 => Self::Exec,
            5 => Self::Exit,
            6 => Self::Freed,
            _ => return None,
        })
    }
}

/// The namespace system call behind an event.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syscall {
    None = 0,
    Clone = 1,
    Clone3 = 2,
    Unshare = 3,
    Setns = 4,
}

impl Syscall {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::None,
            1 => Self::Clone,
            2 => Self::Clone3,
            3 => Self::Unshare,
            4 => Self::Setns,
            _ => return None,
        })
    }
}

/// One record in the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// clone/clone3/unshare flags, or setns' nstype.
    pub flags: u64,
    /// The syscall's return value (`-errno` on failure); the child's pid for clone.
    pub ret: i64,
    pub kind: u32,
    pub syscall: u32,
    /// Acting process (tgid) and thread.
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    /// setns' fd argument; -1 otherwise.
    pub fd: i32,
    pub comm: [u8; 16],
    pub before: NsSet,
    pub after: NsSet,
    /// `CLONE_NEW*` bits of the kinds whose watched namespace (in `before`)
    /// lost its last member task with this event.
    pub emptied: u32,
    /// Exit only: 1 when the task was the init (child reaper) of its PID namespace.
    pub reaper: u32,
    /// Creates only: inode of the user namespace owning each new namespace
    /// (for user: its parent user namespace).
    pub owners: [u32; NS_KINDS],
    /// Creates only: the parent PID namespace's inode of a new PID namespace.
    pub pid_parent: u32,
    /// The actor's pid as seen inside its own PID namespace.
    pub vpid: u32,
    /// 1 when the actor descends from a process user space asked to follow.
    pub followed: u32,
    /// The actor's real uid, as the initial user namespace sees it.
    pub uid: u32,
    /// The actor's cgroup (v2) id: user space resolves a container once per
    /// cgroup, not once per process.
    pub cgroup: u64,
    /// The actor's effective uid (initial user namespace's view).
    pub euid: u32,
    /// 1 when the actor had CAP_SYS_ADMIN in its own user namespace (for an
    /// unshare: before the call): a user namespace created without it was
    /// created unprivileged.
    pub admin: u32,
    /// Tgids of the parent's parent and of its parent: a runtime's helpers
    /// (runc's children) have often all exited before user space can walk
    /// /proc from the actor to the runtime (a shim) that names the container.
    pub elders: [u32; 2],
    /// Clone creates: the flags the caller's memory held when the syscall
    /// entered (clone3's `struct clone_args`). The record's `flags` are the
    /// kernel's own (`task_newtask`): user memory can be unreadable to a
    /// probe read (a page not faulted in) or rewritten by another thread
    /// before the kernel copies it, so it is detail, never the claim.
    pub user_flags: u64,
    /// Clone creates: 1 when the caller's flags could not be read at all.
    pub flags_unread: u32,
    pub _pad: u32,
    /// Exit of a PID namespace's init (`reaper`): the pidfs inode of its
    /// `struct pid` (0 without pidfs). A pidfd of it that outlives it holds
    /// the namespace; read here, as it exits, because after it is reaped
    /// nothing in /proc leads from the namespace to it.
    pub init_pid_ino: u64,
}

// The layout both sides read, checked where it is built: no padding (every
// byte is written by the kernel side, and user space reads it as plain
// data), 8-aligned for the ring buffer, and the header offsets the decoder's
// tests write to.
const _: () = {
    use core::mem::{offset_of, size_of};
    let fields = 8 * 3 // ts_ns, flags, ret
        + 4 * 6 // kind, syscall, pid, tid, ppid, fd
        + 16 // comm
        + 2 * size_of::<NsSet>()
        + 4 * 2 // emptied, reaper
        + 4 * NS_KINDS // owners
        + 4 * 4 // pid_parent, vpid, followed, uid
        + 8 // cgroup
        + 4 * 2 // euid, admin
        + 4 * 2 // elders
        + 8 // user_flags
        + 4 * 2 // flags_unread, _pad
        + 8; // init_pid_ino
    assert!(size_of::<Event>() == fields);
    assert!(size_of::<Event>().is_multiple_of(8));
    assert!(size_of::<NsSet>() == 12 * NS_KINDS);
    assert!(size_of::<SetKey>() == 4 * NS_KINDS);
    assert!(offset_of!(Event, kind) == 24);
    assert!(offset_of!(Event, syscall) == 28);
    assert!(offset_of!(Event, before) == 64);
};

/// Key of a namespace in the member-count map: kind index in the high half,
/// inode in the low half.
pub const fn member_key(kind: usize, inum: u32) -> u64 {
    ((kind as u64) << 32) | inum as u64
}

/// Kernel struct field offsets, computed from the running kernel's BTF by user
/// space and written into the eBPF object's read-only data before load
/// (aya-ebpf has no CO-RE). [`NO_FIELD`] marks a field this kernel lacks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    pub task_nsproxy: u32,
    pub task_real_cred: u32,
    /// `task_struct.cred` (the subjective credentials: euid, capabilities).
    pub task_cred: u32,
    pub cred_euid: u32,
    /// `cred.cap_effective`: 8 bytes on every supported kernel (`u32 cap[2]`
    /// before 6.3, `u64 val` since), CAP_SYS_ADMIN is bit 21 either way.
    pub cred_cap_effective: u32,
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_pid: u32,
    pub cred_user_ns: u32,
    /// Non-zero once user space has filled the table in.
    pub valid: u32,
    /// Offset of each kind's pointer inside `struct nsproxy` (user: [`NO_FIELD`],
    /// it lives in the credentials).
    pub nsproxy: [u32; NS_KINDS],
    /// Offset of `ns.inum` inside each kind's namespace struct.
    pub inum: [u32; NS_KINDS],
    /// Offset of `ns.ns_id` inside each kind's namespace struct, or [`NO_FIELD`].
    pub ns_id: [u32; NS_KINDS],
    /// Offset of the owning `user_ns` pointer in each kind's struct (user: `parent`).
    pub owner: [u32; NS_KINDS],
    pub pidns_parent: u32,
    pub pidns_child_reaper: u32,
    /// `task_struct.thread_pid`, `pid.level`, `pid.numbers`, `sizeof(struct upid)`:
    /// the pid seen inside the task's PID namespace.
    pub task_thread_pid: u32,
    pub pid_level: u32,
    pub pid_numbers: u32,
    pub upid_size: u32,
    /// `pid.ino` (6.9+, pidfs): the inode number of every pidfd of that
    /// `struct pid`, so a pidfd kept after its process exited can be matched.
    pub pid_ino: u32,
    /// Inside `struct ns_common`: `inum`, `ns_id`, and `ns_type` (6.18+: the
    /// kind's `CLONE_NEW*` flag).
    pub nscommon_inum: u32,
    pub nscommon_id: u32,
    pub nscommon_type: u32,
    /// Non-zero where the kernel lets tracepoint programs load fields
    /// straight through `bpf_get_current_task_btf()` (5.11+, asked by user
    /// space with a four-instruction program): the fork/exit path then reads
    /// the current task's nsproxy and credentials without a helper call.
    pub direct: u32,
    /// Kernel addresses at or above this are the kernel image's own data.
    /// The initial namespaces (`init_nsproxy`, `init_user_ns`, `init_net`,
    /// …) live there: never freed, never watched, so a task whose nsproxy and
    /// user namespace are both there costs the hot path two comparisons.
    /// `u64::MAX` where the boundary is not known (no shortcut).
    pub static_floor: u64,
}

impl Offsets {
    pub const EMPTY: Offsets = Offsets {
        task_nsproxy: NO_FIELD,
        task_real_cred: NO_FIELD,
        task_cred: NO_FIELD,
        cred_euid: NO_FIELD,
        cred_cap_effective: NO_FIELD,
        task_real_parent: NO_FIELD,
        task_tgid: NO_FIELD,
        task_pid: NO_FIELD,
        cred_user_ns: NO_FIELD,
        valid: 0,
        nsproxy: [NO_FIELD; NS_KINDS],
        inum: [NO_FIELD; NS_KINDS],
        ns_id: [NO_FIELD; NS_KINDS],
        owner: [NO_FIELD; NS_KINDS],
        pidns_parent: NO_FIELD,
        pidns_child_reaper: NO_FIELD,
        task_thread_pid: NO_FIELD,
        pid_level: NO_FIELD,
        pid_numbers: NO_FIELD,
        upid_size: NO_FIELD,
        pid_ino: NO_FIELD,
        nscommon_inum: NO_FIELD,
        nscommon_id: NO_FIELD,
        nscommon_type: NO_FIELD,
        direct: 0,
        static_floor: u64::MAX,
    };
}

/// Number of fentry programs (`ns_free_0` ..) user space can point at the
/// kernel's namespace free functions.
pub const FREE_SLOTS: usize = 10;

/// [`FreeTarget::kind`] when the kind is read from `ns_common.ns_type`.
pub const KIND_FROM_NS_TYPE: u32 = 0xff;

/// What fentry slot N is attached to: a kernel function whose first argument
/// points `delta` bytes before the namespace's `struct ns_common`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreeTarget {
    /// Kind index, or [`KIND_FROM_NS_TYPE`].
    pub kind: u32,
    pub delta: i32,
    /// If not [`NO_COUNT`]: offset from the `ns_common` (negative where the
    /// count comes before it) of a reference count; the call frees only
    /// when it is 1 (a `put_*` that is the last put).
    pub count_delta: i32,
    /// Bit N set: frees of kind index N are reported (a common free path
    /// serves kinds whose ends another method decides).
    pub kinds: u32,
}

impl FreeTarget {
    pub const UNUSED: FreeTarget = FreeTarget {
        kind: NO_FIELD,
        delta: 0,
        count_delta: NO_COUNT,
        kinds: 0,
    };
}

/// [`FreeTarget::count_delta`] of a function that always frees.
pub const NO_COUNT: i32 = i32::MIN;

/// Index of the per-CPU counter of records the kernel side could not reserve.
pub const COUNTER_LOST: u32 = 0;
/// Index of the per-CPU counter of pending-syscall slots that could not be stored.
pub const COUNTER_PENDING_FULL: u32 = 1;
/// Index of the counter of new namespaces, or new sets of them, the member
/// maps had no room for.
pub const COUNTER_MEMBERS_FULL: u32 = 2;
/// First of the per-CPU counters of lost records by kind: counter
/// `COUNTER_LOST_BY_KIND + kind as u32` (kind values run 1..EVENT_KINDS).
pub const COUNTER_LOST_BY_KIND: u32 = 3;
/// One past the largest [`EventKind`] value.
pub const EVENT_KINDS: u32 = 7;
/// Index of the counter of watched namespaces whose member count the LRU
/// member map forgot (evicted) while they still had members: their ends can
/// no longer be seen from counts.
pub const COUNTER_MEMBERS_EVICTED: u32 = COUNTER_LOST_BY_KIND + EVENT_KINDS;
/// Index of the counter of threads that did namespace work but could not be
/// marked: their exits go unreported unless they end a namespace. Kept for
/// the counters' layout and the JSON/metrics field; it stays 0 since the
/// kernel side marks threads in a bitmap with a bit for every possible
/// thread id, which cannot fill.
pub const COUNTER_TRACKED_FULL: u32 = COUNTER_MEMBERS_EVICTED + 1;
/// Index of the counter of descendants of followed processes (`--pid`,
/// command mode) that could not be followed (follow map full).
pub const COUNTER_FOLLOW_FULL: u32 = COUNTER_TRACKED_FULL + 1;
pub const COUNTERS: u32 = COUNTER_FOLLOW_FULL + 1;

/// A member-map value that means "known, not watched": a namespace user
/// space does not watch (the host's, where they are not the kernel's
/// initial ones) or one whose count was evicted and is now unknown. Counts
/// added to it stay far below zero and never report an emptied namespace.
pub const MEMBERS_UNWATCHED: i64 = i64::MIN / 2;
/// Any value below this is [`MEMBERS_UNWATCHED`] (or [`MEMBERS_FREED`]) plus
/// a drift.
pub const MEMBERS_UNWATCHED_BELOW: i64 = i64::MIN / 4;
/// The member count of a namespace whose free was reported: unwatched, and
/// far enough from [`MEMBERS_UNWATCHED`] that no drift makes one the other,
/// so that a second hook on the same free path (a `put` and its inlined
/// caller) does not report it twice.
pub const MEMBERS_FREED: i64 = MEMBERS_UNWATCHED - (1 << 40);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::Offsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FreeTarget {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SetKey {}
}
