//! What nstrace reports: one [`Record`] per namespace and happening.

use nstrace_common::{KIND_FLAGS, NS_KINDS};

/// The eight namespace kinds, in the kernel side's index order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NsKind {
    Mnt,
    Uts,
    Ipc,
    Pid,
    Net,
    User,
    Cgroup,
    Time,
}

impl NsKind {
    pub const ALL: [NsKind; NS_KINDS] = [
        NsKind::Mnt,
        NsKind::Uts,
        NsKind::Ipc,
        NsKind::Pid,
        NsKind::Net,
        NsKind::User,
        NsKind::Cgroup,
        NsKind::Time,
    ];

    /// Index into the per-kind arrays of `nstrace_common`.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The name `/proc/PID/ns` and `lsns` use.
    pub fn name(self) -> &'static str {
        ["mnt", "uts", "ipc", "pid", "net", "user", "cgroup", "time"][self.index()]
    }

    pub fn flag(self) -> u64 {
        KIND_FLAGS[self.index()]
    }

    pub fn flag_name(self) -> &'static str {
        [
            "CLONE_NEWNS",
            "CLONE_NEWUTS",
            "CLONE_NEWIPC",
            "CLONE_NEWPID",
            "CLONE_NEWNET",
            "CLONE_NEWUSER",
            "CLONE_NEWCGROUP",
            "CLONE_NEWTIME",
        ][self.index()]
    }

    /// Kinds whose `CLONE_NEW*` bit is set in `flags`, in index order.
    pub fn in_flags(flags: u64) -> impl Iterator<Item = NsKind> {
        Self::ALL.into_iter().filter(move |k| flags & k.flag() != 0)
    }
}

/// The `CLONE_NEW*` names set in `flags`.
pub fn flag_names(flags: u64) -> Vec<&'static str> {
    NsKind::in_flags(flags).map(NsKind::flag_name).collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Create,
    Join,
    Destroy,
    Error,
}

impl EventType {
    pub fn name(self) -> &'static str {
        match self {
            EventType::Create => "create",
            EventType::Join => "join",
            EventType::Destroy => "destroy",
            EventType::Error => "error",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syscall {
    Clone,
    Clone3,
    Unshare,
    Setns,
}

impl Syscall {
    pub fn name(self) -> &'static str {
        match self {
            Syscall::Clone => "clone",
            Syscall::Clone3 => "clone3",
            Syscall::Unshare => "unshare",
            Syscall::Setns => "setns",
        }
    }
}

/// The process a record is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub comm: String,
}

/// One line of the timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Nanoseconds since the Unix epoch.
    pub time_ns: i128,
    pub event: EventType,
    /// None only for an error of a call that named no kind (setns with nstype 0).
    pub kind: Option<NsKind>,
    pub inode: Option<u32>,
    /// The kernel's 64-bit namespace id, where this kernel has one.
    pub ns_id: Option<u64>,
    /// The namespace of this kind the actor (or, for clone, its parent) was in before.
    pub prev_inode: Option<u32>,
    pub syscall: Syscall,
    /// Raw flags (clone/unshare) or nstype (setns).
    pub flags: u64,
    pub actor: Actor,
    /// For clone/clone3: the child's host pid.
    pub child_pid: Option<u32>,
    /// For setns: the fd argument.
    pub fd: Option<i32>,
    /// For errors: the positive errno.
    pub errno: Option<i32>,
}
