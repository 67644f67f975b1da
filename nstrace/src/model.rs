//! What nstrace reports: one [`Record`] per namespace and happening.

use nstrace_common::{KIND_FLAGS, NS_KINDS};

/// A thread's member set: its namespace inode per kind, by
/// [`NsKind::index`] (pid and time for children, as the kernel side counts
/// members), 0 where it has none of the kind. Threads in the same set share
/// one member count in the kernel side.
pub type MemberSet = [u32; NS_KINDS];

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

    pub fn from_name(name: &str) -> Option<NsKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EventType {
    #[default]
    Create,
    Join,
    /// No member task is left but something still holds the namespace.
    Pinned,
    Destroy,
    Error,
    /// Memberless and pinned, and the container it belonged to is gone: a
    /// suspect leak (told once, `--leak-after` after the container went).
    Leak,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::Create,
        EventType::Join,
        EventType::Pinned,
        EventType::Destroy,
        EventType::Error,
        EventType::Leak,
    ];

    pub fn from_name(name: &str) -> Option<EventType> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            EventType::Create => "create",
            EventType::Join => "join",
            EventType::Pinned => "pinned",
            EventType::Destroy => "destroy",
            EventType::Error => "error",
            EventType::Leak => "leak",
        }
    }
}

/// An in-band notice that the stream has a gap: what the kernel side could
/// not record since the previous notice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loss {
    pub time_ns: i128,
    /// Kernel events dropped because the ring buffer was full.
    pub events: u64,
    /// All dropped since the start.
    pub events_total: u64,
    /// `events` by what they were (see `Losses::since`).
    pub by_kind: Vec<(&'static str, u64)>,
    /// Namespace syscalls not followed (in-flight table full).
    pub syscalls_missed: u64,
    /// New namespaces whose end will not be seen (member map full).
    pub unwatched: u64,
    /// Watched namespaces whose member count the kernel's LRU map evicted:
    /// their ends come late (inode reuse) or, without fentry, not at all.
    pub forgotten: u64,
    /// Threads that did namespace work whose exit will not be reported
    /// unless it ends a namespace (tracked map full).
    pub untracked: u64,
    /// Descendants of followed processes not followed (follow map full).
    pub unfollowed: u64,
    /// Runs of nstrace's programs the kernel skipped (a BPF program or
    /// `bpf()` call was active on that CPU): any record may be missing.
    pub skipped: u64,
    /// `skipped` by what the programs would have told (nonzero only).
    pub skipped_by: Vec<(&'static str, u64)>,
}

/// How the end of a namespace was established.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndCause {
    /// Its last member task exited or left, and nothing known pinned it.
    LastMemberLeft,
    /// It had no members; the last pin (mount, fd, child namespace) went.
    PinReleased,
    /// fentry mode: the kernel's own free path ran (exact).
    KernelFreed,
    /// Its inode was given to a new namespace before we saw it end (an
    /// unwatched pin went unnoticed): it ended earlier than this record.
    InodeReused,
}

impl EndCause {
    pub const ALL: [EndCause; 4] = [
        EndCause::LastMemberLeft,
        EndCause::PinReleased,
        EndCause::KernelFreed,
        EndCause::InodeReused,
    ];

    pub fn from_name(name: &str) -> Option<EndCause> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            EndCause::LastMemberLeft => "last-member-left",
            EndCause::PinReleased => "pin-released",
            EndCause::InodeReused => "inode-reused",
            EndCause::KernelFreed => "kernel-freed",
        }
    }
}

/// Who established an end (JSON `end_by`): how strong the claim is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndMethod {
    /// The kernel's free path ran (fentry).
    Fentry,
    /// The kernel refused to open it by its nsfs file handle (ESTALE).
    NsfsHandle,
    /// No member and nothing in /proc holds it (best effort).
    Inference,
}

impl EndMethod {
    pub const ALL: [EndMethod; 3] = [
        EndMethod::Fentry,
        EndMethod::NsfsHandle,
        EndMethod::Inference,
    ];

    pub fn from_name(name: &str) -> Option<EndMethod> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            EndMethod::Fentry => "fentry",
            EndMethod::NsfsHandle => "nsfs-handle",
            EndMethod::Inference => "inference",
        }
    }
}

/// What the registry knows of a namespace's birth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Birth {
    pub time_ns: i128,
    pub pid: u32,
    pub comm: String,
    pub syscall: Syscall,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syscall {
    Clone,
    Clone3,
    Unshare,
    Setns,
}

impl Syscall {
    pub const ALL: [Syscall; 4] = [
        Syscall::Clone,
        Syscall::Clone3,
        Syscall::Unshare,
        Syscall::Setns,
    ];

    pub fn from_name(name: &str) -> Option<Syscall> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

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
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Actor {
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub comm: String,
    /// The thread's id inside its own PID namespace (equal to `tid` on the host).
    pub vpid: u32,
    /// Its cgroup v2 id (0: unknown).
    pub cgroup: u64,
    /// Inode of its mount namespace (0: unknown).
    pub mnt_ns: u32,
    /// Real and effective uid, as the initial user namespace sees them.
    pub uid: u32,
    pub euid: u32,
    /// Had CAP_SYS_ADMIN in its own user namespace (before the call).
    pub admin: bool,
    /// Grandparent and great-grandparent tgids (0: unknown), for finding the
    /// container runtime above helpers that have exited.
    pub elders: [u32; 2],
}

/// One line of the timeline. Optional fields are absent from JSON when `None`
/// unless the README's schema says they are always present.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
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
    /// None for destroy and pinned records.
    pub syscall: Option<Syscall>,
    /// Raw flags (clone/unshare) or nstype (setns).
    pub flags: u64,
    /// The acting process; for a destroy, the last member that left, if any.
    pub actor: Option<Actor>,
    /// For clone/clone3: the child's host pid.
    pub child_pid: Option<u32>,
    /// For setns: the fd argument.
    pub fd: Option<i32>,
    /// Clone creates: the caller's flags could not be read from its memory
    /// (`flags` are the kernel's own, as always for creates).
    pub flags_unread: bool,
    /// Clone creates: what the caller's memory said at entry, where it
    /// differs from what the kernel did (another thread rewrote it).
    pub claimed_flags: Option<u64>,
    /// For errors: the positive errno.
    pub errno: Option<i32>,
    /// Creates: the owning user namespace (for user: the parent one).
    pub owner_inode: Option<u32>,
    /// Creates of PID namespaces: the parent PID namespace.
    pub parent_inode: Option<u32>,
    /// Joins, pinned and destroy: the namespace's birth, when it was seen.
    pub born: Option<Birth>,
    /// Destroy: how the end came about.
    pub end: Option<EndCause>,
    /// Destroy: who established it.
    pub end_by: Option<EndMethod>,
    /// Destroy of a PID namespace whose init exited: that init's host pid.
    pub init_pid: Option<u32>,
    /// Pinned and leak: what holds the namespace.
    pub pinned_by: Vec<String>,
    /// Leak: how long the namespace has outlived its container (ns).
    pub age_ns: Option<i128>,
    /// The container the actor is part of.
    pub container: Option<crate::model::Container>,
    /// The container the namespace belongs to (joins, pinned, destroy,
    /// leak): the one whose runtime created it, else the first container
    /// that joined it (a runtime daemon made it, as containerd's CRI makes
    /// a pod's network namespace before any container exists).
    pub ns_container: Option<crate::model::Container>,
    /// The actor (or, for pinned/destroy, the namespace's creator) descends
    /// from a followed process (`--pid`, command mode).
    pub followed: bool,
}

/// The first line of a JSON trace: when and where tracing began, and the
/// namespaces alive then (what a saved trace needs to be summed up later).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Start {
    pub time_ns: i128,
    pub kernel: String,
    /// How ends are decided: one method's name when every kind uses it,
    /// else `mixed`.
    pub ends: String,
    /// The method each kind of this kernel gets.
    pub ends_by_kind: Vec<(NsKind, EndMethod)>,
    /// (kind, inode, ns_id) of every namespace alive at start.
    pub alive: Vec<(NsKind, u32, Option<u64>)>,
}

/// The last line of a JSON trace: when tracing stopped, and what it wrote
/// and lost (the closing line's numbers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stop {
    pub time_ns: i128,
    pub records: u64,
    pub kernel_events: u64,
    pub lost: u64,
}

/// `(kind, inode)`: how every stage names a namespace (inodes can be
/// reused; `ns_id`, where the kernel has it, tells two apart).
pub type NsKey = (NsKind, u32);

/// The container a process or namespace belongs to (what the attribution
/// found; the enrich stage finds it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// `docker`, `containerd`, `cri-containerd`, `cri-o`, `podman`.
    pub runtime: &'static str,
    pub name: Option<String>,
    /// Kubernetes pod name and namespace (CRI containers).
    pub pod: Option<String>,
    pub namespace: Option<String>,
}

impl Container {
    /// The first 12 characters (an id read back from a saved trace may be
    /// anything: cut on a character boundary).
    pub fn short_id(&self) -> &str {
        match self.id.char_indices().nth(12) {
            Some((end, _)) => &self.id[..end],
            None => &self.id,
        }
    }

    /// `--container` matching: a prefix of the id, or the exact name.
    pub fn matches(&self, wanted: &str) -> bool {
        (!wanted.is_empty() && self.id.starts_with(wanted)) || self.name.as_deref() == Some(wanted)
    }
}
