//! The one place that reads namespaces from /proc: which tasks are in which
//! namespace, what holds a namespace with no tasks (nsfs bind mounts in any
//! mount namespace, open fds), and the nsfs ioctls for owner, parent and id.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    io::Read as _,
    os::{
        fd::{AsRawFd, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::Path,
};

use crate::model::{MemberSet, NsKind};

/// A namespace's identity at one moment.
use crate::model::NsKey;

/// `net:[4026532309]` → 4026532309
pub fn parse_ns_link(link: &str) -> Option<(&str, u32)> {
    let (kind, rest) = link.split_once(":[")?;
    let inode = rest.strip_suffix(']')?.parse().ok()?;
    Some((kind, inode))
}

fn read_link_inode(path: &Path) -> Option<u32> {
    let link = fs::read_link(path).ok()?;
    parse_ns_link(link.to_str()?).map(|(_, i)| i)
}

/// The `/proc/PID/ns` link of `kind`, as `lsns` reads it (pid and time: the
/// namespace the task is in).
pub fn active_link(kind: NsKind) -> &'static str {
    kind.name()
}

/// The link of the namespace unshare and setns act on (pid and time: for children),
/// which is what the kernel side counts members by.
pub fn acting_link(kind: NsKind) -> &'static str {
    match kind {
        NsKind::Pid => "pid_for_children",
        NsKind::Time => "time_for_children",
        k => k.name(),
    }
}

/// One process as `lsns` would describe it.
#[derive(Clone, Debug, Default)]
pub struct ProcInfo {
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
}

/// Everything a scan of /proc found.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Processes (by their main thread's links, as lsns counts) per namespace.
    pub processes: BTreeMap<NsKey, BTreeSet<u32>>,
    /// Member threads per namespace, counted by the acting links.
    pub threads: HashMap<NsKey, i64>,
    /// Member threads per member set (every acting link of a thread).
    pub sets: HashMap<MemberSet, i64>,
    pub procs: HashMap<u32, ProcInfo>,
    /// nsfs bind mounts, in every mount namespace a process is in.
    pub mounts: BTreeMap<NsKey, Vec<MountPin>>,
    /// Open nsfs fds, by any process.
    pub fds: FdHolders,
    /// Sockets (and tun fds) held by a process outside their network
    /// namespace: filled only by [`Snapshot::with_sockets`].
    pub sockets: FdHolders,
}

impl Snapshot {
    /// Every namespace seen, by tasks or by mounts.
    pub fn namespaces(&self) -> BTreeSet<NsKey> {
        self.processes
            .keys()
            .chain(self.threads.keys())
            .chain(self.mounts.keys())
            .chain(self.fds.keys())
            .chain(self.sockets.keys())
            .copied()
            .collect()
    }

    /// The same, with [`socket_holders`] searched: costly (a copy of each
    /// socket out of its process), so only `ls` asks.
    pub fn with_sockets(mut self) -> Self {
        self.sockets = socket_holders(&self);
        self
    }

    /// The same, with the nsfs mounts of mount namespaces no process is in
    /// (each entered by a thread): `ls` asks.
    pub fn with_memberless_mounts(mut self) -> Self {
        for (key, pins) in nsfs_mounts_memberless(&self.mounts, &self.fds) {
            self.mounts.entry(key).or_default().extend(pins);
        }
        self
    }

    /// Owner, parent and id of a namespace seen in this scan, through a
    /// process in it, a mount of it (seen from that mount's namespace) or an
    /// fd on it.
    pub fn meta(&self, key: NsKey) -> NsMeta {
        if let Some(&pid) = self.processes.get(&key).and_then(|p| p.first()) {
            let link = format!("/proc/{pid}/ns/{}", active_link(key.0));
            return ns_meta_at(&link, Follow::Yes, key);
        }
        // A pin in a mount namespace no process is in has no path to open.
        let mount = self
            .mounts
            .get(&key)
            .and_then(|m| m.iter().find(|m| m.ns_held_by.is_none()));
        if let Some(m) = mount {
            return ns_meta_at(&m.open_path(), Follow::No, key);
        }
        if let Some((pid, fd, _)) = self.fds.get(&key).and_then(|f| f.first()) {
            return ns_meta_at(&format!("/proc/{pid}/fd/{fd}"), Follow::Yes, key);
        }
        if let Some((pid, fd, _)) = self.sockets.get(&key).and_then(|f| f.first()) {
            if let Some(ns) = pidfd(*pid).and_then(|p| netns_fd_of(&p, *fd)) {
                let path = format!("/proc/self/fd/{}", ns.as_raw_fd());
                return ns_meta_at(&path, Follow::Yes, key);
            }
        }
        NsMeta::default()
    }

    /// Namespaces no task is in but a mount or fd holds.
    pub fn memberless(&self) -> BTreeSet<NsKey> {
        self.mounts
            .keys()
            .chain(self.fds.keys())
            .chain(self.sockets.keys())
            .filter(|k| !self.threads.contains_key(k) && !self.processes.contains_key(k))
            .copied()
            .collect()
    }
}

fn pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn tids(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn proc_info(pid: u32) -> ProcInfo {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_default();
    ProcInfo { pid, uid, comm }
}

/// Scans every process and thread. Tasks that vanish mid-scan are skipped.
pub fn scan() -> Snapshot {
    let mut snap = Snapshot::default();
    for pid in pids() {
        let base = format!("/proc/{pid}");
        let mut seen = false;
        let mut active = MemberSet::default();
        for kind in NsKind::ALL {
            if let Some(inode) =
                read_link_inode(Path::new(&format!("{base}/ns/{}", active_link(kind))))
            {
                snap.processes.entry((kind, inode)).or_default().insert(pid);
                active[kind.index()] = inode;
                seen = true;
            }
        }
        if !seen {
            continue;
        }
        snap.procs.insert(pid, proc_info(pid));
        for tid in tids(pid) {
            // The main thread's links are the process's, just read: only
            // the kinds whose acting link differs are read again (a third
            // of the scan's readlinks on a machine of single-threaded
            // processes).
            let set = if tid == pid {
                leader_set(pid, active)
            } else {
                member_set(pid, tid)
            };
            let Some(set) = set else {
                continue;
            };
            for kind in NsKind::ALL {
                let inode = set[kind.index()];
                if inode != 0 {
                    *snap.threads.entry((kind, inode)).or_default() += 1;
                }
            }
            *snap.sets.entry(set).or_default() += 1;
        }
    }
    snap.mounts = nsfs_mounts();
    snap.fds = ns_fd_holders();
    snap
}

/// `pid` and every process descending from it (empty if `pid` does not exist).
pub fn descendants(pid: u32) -> Vec<u32> {
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return Vec::new();
    }
    let parents: Vec<(u32, u32)> = pids()
        .into_iter()
        .filter_map(|p| Some((p, ppid(p)?)))
        .collect();
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out
}

/// The parent of `pid`, from /proc/PID/stat.
pub fn ppid(pid: u32) -> Option<u32> {
    parent_of_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// A thread's member set, from its acting links (None when it has gone).
fn member_set(pid: u32, tid: u32) -> Option<MemberSet> {
    let mut set = MemberSet::default();
    let mut any = false;
    for kind in NsKind::ALL {
        let path = format!("/proc/{pid}/task/{tid}/ns/{}", acting_link(kind));
        if let Some(inode) = read_link_inode(Path::new(&path)) {
            set[kind.index()] = inode;
            any = true;
        }
    }
    any.then_some(set)
}

/// [`member_set`] of `pid`'s main thread, whose active links are `active`
/// (read from /proc/PID/ns a moment ago): the kinds whose acting link is
/// another (pid and time, for children) are read; a kind whose link was
/// unreadable stays 0, as [`member_set`] leaves it.
fn leader_set(pid: u32, active: MemberSet) -> Option<MemberSet> {
    let mut set = active;
    for kind in NsKind::ALL {
        if acting_link(kind) != active_link(kind) {
            let path = format!("/proc/{pid}/ns/{}", acting_link(kind));
            set[kind.index()] = read_link_inode(Path::new(&path)).unwrap_or(0);
        }
    }
    set.iter().any(|&i| i != 0).then_some(set)
}

/// Member threads per member set holding any of `keys`, in one pass over
/// /proc: a ground-truth check of member counts seeded by a racy scan.
/// A thread already exiting is not counted: between its exit tracepoint and
/// the kernel dropping its namespaces (its files are closed in between) its
/// links still read, and counting it kept a namespace that had just lost
/// its last member watched as alive, its end never told.
pub fn count_members(keys: &BTreeSet<NsKey>) -> Members {
    let mut out = Members::default();
    if keys.is_empty() {
        return out;
    }
    let kinds: BTreeSet<NsKind> = keys.iter().map(|k| k.0).collect();
    for pid in pids() {
        for tid in tids(pid) {
            // One link per kind asked first: most threads hold none of the keys.
            let holds = kinds.iter().any(|&kind| {
                let path = format!("/proc/{pid}/task/{tid}/ns/{}", acting_link(kind));
                read_link_inode(Path::new(&path)).is_some_and(|i| keys.contains(&(kind, i)))
            });
            if !holds || is_exiting(pid, tid) {
                continue;
            }
            if let Some(set) = member_set(pid, tid) {
                *out.sets.entry(set).or_default() += 1;
            }
        }
    }
    out
}

/// `PF_EXITING` (`include/linux/sched.h`): set as a task begins to exit.
const PF_EXITING: u64 = 0x4;

/// Whether the kernel has begun the thread's exit (`PF_EXITING` in the
/// flags of its stat, field 9); a thread gone already is exiting too.
fn is_exiting(pid: u32, tid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
        .ok()
        .and_then(|s| flags_of_stat(&s))
        .is_none_or(|f| f & PF_EXITING != 0)
}

/// The `flags` field of a stat line (the 9th; `comm` may hold spaces and
/// parentheses, so fields are counted after its last `)`).
fn flags_of_stat(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(6)?.parse().ok()
}

/// Threads by member set, as [`count_members`] found them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    pub sets: BTreeMap<MemberSet, i64>,
}

impl Members {
    /// The member sets with threads that hold `key`: what the kernel side
    /// counts for a namespace.
    pub fn sets_holding(&self, (kind, inode): NsKey) -> impl Iterator<Item = (&MemberSet, i64)> {
        self.sets
            .iter()
            .filter(move |(s, _)| s[kind.index()] == inode)
            .map(|(s, &n)| (s, n))
    }

    /// How many sets hold `key` (0: no member thread).
    pub fn of(&self, key: NsKey) -> i64 {
        self.sets_holding(key).count() as i64
    }
}

/// An nsfs bind mount (`ip netns add` style) and the mount namespace whose
/// table holds it, with one process in that namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountPin {
    pub path: String,
    pub mnt_ns: u32,
    pub pid: u32,
    /// The mount namespace has no process: what holds it instead (its
    /// description), and `pid` is none of its members.
    pub ns_held_by: Option<String>,
}

impl MountPin {
    /// The mount point seen from its own mount namespace. Whatever is at
    /// that path now may be something else: a user can mount over the
    /// pin's parent and put a FIFO in its place ([`open_nsfs`] checks).
    pub fn open_path(&self) -> String {
        format!("/proc/{}/root{}", self.pid, self.path)
    }

    /// `mount PATH`, naming the mount namespace unless it is the host's
    /// (PID 1's) or nstrace's own.
    pub fn describe(&self, ours: &[u32]) -> String {
        if let Some(by) = &self.ns_held_by {
            return format!(
                "mount {} in mnt namespace {} (no process in it; held by {by})",
                self.path, self.mnt_ns
            );
        }
        if ours.contains(&self.mnt_ns) {
            format!("mount {}", self.path)
        } else {
            format!(
                "mount {} in mnt namespace {} (pid {})",
                self.path, self.mnt_ns, self.pid
            )
        }
    }
}

/// The mounts and fds holding `key`, described for a person (`pinned_by`,
/// `nstrace ls`).
pub fn describe_holders(
    key: NsKey,
    mounts: &BTreeMap<NsKey, Vec<MountPin>>,
    fds: &FdHolders,
    home: &[u32],
) -> Vec<String> {
    mounts
        .get(&key)
        .into_iter()
        .flatten()
        .map(|m| m.describe(home))
        .chain(
            fds.get(&key)
                .into_iter()
                .flatten()
                .map(|(pid, fd, comm)| format!("fd {fd} of {comm} (pid {pid})")),
        )
        .collect()
}

/// The sockets holding `key`, described for a person (`nstrace ls`).
pub fn describe_sockets(key: NsKey, sockets: &FdHolders) -> impl Iterator<Item = String> + '_ {
    sockets
        .get(&key)
        .into_iter()
        .flatten()
        .map(|(pid, fd, comm)| format!("socket fd {fd} of {comm} (pid {pid})"))
}

/// Inode of the host's namespace behind `/proc/PID/ns/<link>`: kthreadd's
/// (PID 2 with no parent: the kernel's initial namespaces, which never end),
/// else init's. Some sandboxes hide init's links, and init need not be in
/// the initial namespaces; kthreadd always is. None in a container without
/// the host's PID namespace.
pub fn host_ns_link(link: &str) -> Option<u32> {
    let kthreadd = fs::read_to_string("/proc/2/stat")
        .ok()
        .is_some_and(|s| parent_of_stat(&s) == Some(0));
    let pids: &[u32] = if kthreadd { &[2, 1] } else { &[1] };
    pids.iter()
        .find_map(|pid| read_link_inode(Path::new(&format!("/proc/{pid}/ns/{link}"))))
}

/// The host's namespaces of every kind, by both links (a PID namespace's
/// `pid` and `pid_for_children`): they never end.
pub fn host_namespaces() -> BTreeSet<NsKey> {
    NsKind::ALL
        .into_iter()
        .flat_map(|k| {
            [active_link(k), acting_link(k)]
                .into_iter()
                .filter_map(move |link| host_ns_link(link).map(|i| (k, i)))
        })
        .collect()
}

/// The parent pid field of a /proc/PID/stat text (after the parenthesised
/// comm, which may itself hold spaces and parentheses). Hand-written, as
/// the uid of /proc/PID/status in [`proc_info`]: one field each, read for
/// every process of the start-up scan, where procfs-core parses them all
/// (its mountinfo parser measured 16 times slower than ours; see
/// [`parse_nsfs_mounts`]).
/// When `pid` started (clock ticks after boot, /proc/PID/stat field 22):
/// with the pid, names one process across pid reuse.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn parent_of_stat(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Inodes of the host's and our own mount namespace: mounts there are named
/// by path alone.
pub fn home_mount_namespaces() -> Vec<u32> {
    host_ns_link("mnt")
        .into_iter()
        .chain(own_ns_link("mnt"))
        .collect()
}

/// Inode of `pid`'s namespace behind `/proc/PID/ns/<link>`.
pub fn ns_link_of(pid: u32, link: &str) -> Option<u32> {
    read_link_inode(Path::new(&format!("/proc/{pid}/ns/{link}")))
}

/// Inode of nstrace's own namespace behind `/proc/self/ns/<link>`.
pub fn own_ns_link(link: &str) -> Option<u32> {
    read_link_inode(Path::new(&format!("/proc/self/ns/{link}")))
}

/// nsfs bind mounts in every mount namespace some process is in (a pin can
/// live in a container's, a sandbox's or rootless podman's table), PID 1's
/// and ours first. Each table is read once, through its first process.
pub fn nsfs_mounts() -> BTreeMap<NsKey, Vec<MountPin>> {
    let mut out: BTreeMap<NsKey, Vec<MountPin>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let me = std::process::id();
    for pid in [1, me].into_iter().chain(pids()) {
        let Some(mnt_ns) = read_link_inode(Path::new(&format!("/proc/{pid}/ns/mnt"))) else {
            continue;
        };
        if !seen.insert(mnt_ns) {
            continue;
        }
        // Bytes, not a string: one mount path that is not UTF-8 (anyone can
        // name one in their own mount namespace) must not hide the table.
        let bytes = fs::read(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        for (key, path) in parse_nsfs_mounts(&text) {
            let pins = out.entry(key).or_default();
            // A mount copied into a new mount namespace (unshare -m) is a
            // second pin at the same path: the first one names it.
            if !pins.iter().any(|p| p.path == path) {
                pins.push(MountPin {
                    path,
                    mnt_ns,
                    pid,
                    ns_held_by: None,
                });
            }
        }
    }
    out
}

/// nsfs bind mounts in the mount namespaces no process is in, held by an
/// fd (in `fds`) or a mount (in `mounts`): a sandbox's pins outlive its
/// processes there. Each such table is read from inside, by a thread made
/// for it ([`mountinfo_inside`]).
pub fn nsfs_mounts_memberless(
    mounts: &BTreeMap<NsKey, Vec<MountPin>>,
    fds: &FdHolders,
) -> BTreeMap<NsKey, Vec<MountPin>> {
    let mut out: BTreeMap<NsKey, Vec<MountPin>> = BTreeMap::new();
    let held: BTreeSet<u32> = mounts
        .keys()
        .chain(fds.keys())
        .filter(|k| k.0 == NsKind::Mnt)
        .map(|k| k.1)
        .collect();
    if held.is_empty() {
        return out;
    }
    let with_process: BTreeSet<u32> = pids()
        .into_iter()
        .filter_map(|p| ns_link_of(p, "mnt"))
        .collect();
    for mnt_ns in held.difference(&with_process).copied() {
        let key = (NsKind::Mnt, mnt_ns);
        // Through a holder the kernel vouches for: an fd of a process, else
        // a mount (opened as nsfs and this inode only).
        let by_fd = fds
            .get(&key)
            .and_then(|h| h.first())
            .and_then(|(pid, fd, comm)| {
                let f = open_nsfs(&format!("/proc/{pid}/fd/{fd}"), Follow::Yes, key)?;
                Some((f, format!("fd {fd} of {comm} (pid {pid})"), *pid))
            });
        let opened = by_fd.or_else(|| {
            mounts.get(&key)?.iter().find_map(|m| {
                let f = open_nsfs(&m.open_path(), Follow::No, key)?;
                Some((f, m.describe(&[]), m.pid))
            })
        });
        let Some((file, by, pid)) = opened else {
            continue;
        };
        let Some(bytes) = mountinfo_inside(file) else {
            continue;
        };
        for (pinned, path) in parse_nsfs_mounts(&String::from_utf8_lossy(&bytes)) {
            let pins = out.entry(pinned).or_default();
            if !pins.iter().any(|p| p.path == path && p.mnt_ns == mnt_ns) {
                pins.push(MountPin {
                    path,
                    mnt_ns,
                    pid,
                    ns_held_by: Some(by.clone()),
                });
            }
        }
    }
    out
}

/// The mount table of the mount namespace `ns` (an nsfs file of it), read
/// by a thread that enters it: no process is in it, so no /proc entry
/// shows it. The thread first stops sharing its filesystem context (setns
/// into a mount namespace requires it) and opens its own /proc directory
/// before entering, so that nothing is looked up through the namespace's
/// root, which whoever made it shaped.
fn mountinfo_inside(ns: fs::File) -> Option<Vec<u8>> {
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: unshare(CLONE_FS) changes only this thread's
            // filesystem context, which nothing else here uses.
            if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
                return None;
            }
            let dir = fs::File::open("/proc/thread-self").ok()?;
            // SAFETY: setns with a valid nsfs fd of a mount namespace; it
            // moves only this thread (its fs context is its own now).
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
                return None;
            }
            // SAFETY: openat with our directory fd and a NUL-terminated
            // relative name; returns a new fd or -1.
            let fd = unsafe {
                libc::openat(
                    dir.as_raw_fd(),
                    c"mountinfo".as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                )
            };
            let file = fs::File::from(owned(fd.into())?);
            let mut bytes = Vec::new();
            file.take(MOUNTINFO_CAP).read_to_end(&mut bytes).ok()?;
            Some(bytes)
        })
        .join()
        .ok()
        .flatten()
    })
}

/// The most of one mount table read from inside (100,000 mounts, the
/// kernel's default `mount-max`, are about 15 MB).
const MOUNTINFO_CAP: u64 = 32 << 20;

/// (namespace, mount point) of each nsfs line of a mountinfo table.
///
/// Hand-written: procfs-core's `MountInfos` parses every field of every
/// line (option maps included) in 19.7 µs for this host's 22-line table,
/// this in 1.2 µs, beside 41 µs to read the table; it runs at every
/// inference check, once per mount namespace.
pub fn parse_nsfs_mounts(mountinfo: &str) -> Vec<(NsKey, String)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next()? != "nsfs" {
                return None;
            }
            let mut f = left.split_whitespace();
            let root = f.nth(3)?;
            let point = f.next()?;
            let (kind, inode) = parse_ns_link(root)?;
            let kind = NsKind::from_name(kind)?;
            Some(((kind, inode), unmangle(point)))
        })
        .collect()
}

/// A mountinfo path as the kernel has it: it writes space, tab, newline and
/// backslash as `\ooo` (octal), so a path cannot break the table's lines
/// or fields. A path a user names must read back whole, or its pin would
/// be one nstrace cannot open.
fn unmangle(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)) && d[0] <= b'3');
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// `(fd, link)` of each open fd of `pid` whose link is text (none if the
/// process is gone). Each link is read relative to the open fd directory
/// (`readlinkat`): a path walk from /proc per fd was half the cost of
/// the holder search on a node (50,000 fds).
fn fd_links(pid: u32) -> impl Iterator<Item = (u32, String)> {
    let path = format!("/proc/{pid}/fd");
    let dir = fs::File::open(&path).ok();
    let entries = dir.as_ref().and_then(|_| fs::read_dir(&path).ok());
    entries.into_iter().flatten().filter_map(move |e| {
        let e = e.ok()?;
        let name = e.file_name();
        let fd = name.to_str()?.parse().ok()?;
        let link = nix::fcntl::readlinkat(dir.as_ref()?, name.as_os_str()).ok()?;
        Some((fd, link.into_string().ok()?))
    })
}

/// Namespaces held open through fds: (pid, fd, comm) of each holder.
pub type FdHolders = BTreeMap<NsKey, Vec<(u32, u32, String)>>;

/// Every namespace held open through an fd, by any process: (pid, fd, comm).
/// nstrace's own short-lived fds (nsfs ioctls, handle checks) are not pins.
pub fn ns_fd_holders() -> FdHolders {
    let mut out = FdHolders::new();
    let me = std::process::id();
    for pid in pids().into_iter().filter(|&p| p != me) {
        for (fd, link) in fd_links(pid) {
            let Some((kind, inode)) = parse_ns_link(&link) else {
                continue;
            };
            let Some(kind) = NsKind::from_name(kind) else {
                continue;
            };
            out.entry((kind, inode))
                .or_default()
                .push((pid, fd, proc_info(pid).comm));
        }
    }
    out
}

/// Whether this kernel gives each pidfd the inode of its own process
/// (pidfs, 6.9+); before, every pidfd shares one anonymous inode and says
/// nothing of whose it is.
fn pidfs() -> bool {
    static PIDFS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PIDFS.get_or_init(|| {
        let ino = |pid| Some(fs::File::from(pidfd(pid)?).metadata().ok()?.ino());
        matches!((ino(std::process::id()), ino(1)), (Some(a), Some(b)) if a != b)
    })
}

/// Pidfds of processes that have exited, by the pidfs inode of the
/// process: (pid, fd, comm) of each holder.
pub type ExitedPidfds = BTreeMap<u64, Vec<(u32, u32, String)>>;

/// Every pidfd of a process that has exited (its `struct pid` lives while
/// one is open, and with it the PID namespace it was in).
pub fn exited_pidfds() -> ExitedPidfds {
    let mut out = ExitedPidfds::new();
    if !pidfs() {
        return out;
    }
    let me = std::process::id();
    for pid in pids().into_iter().filter(|&p| p != me) {
        for (fd, link) in fd_links(pid) {
            if link != "anon_inode:[pidfd]" && !link.starts_with("pidfd:") {
                continue;
            }
            let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
                    .map(str::to_string)
            };
            if field("Pid:").as_deref() != Some("-1") {
                continue;
            }
            let Some(ino) = field("ino:").and_then(|i| i.parse().ok()) else {
                continue;
            };
            out.entry(ino)
                .or_default()
                .push((pid, fd, proc_info(pid).comm));
        }
    }
    out
}

/// Zombies by the namespaces they still hold: (pid, parent pid, comm).
pub type Zombies = BTreeMap<NsKey, Vec<(u32, u32, String)>>;

/// Every zombie (exited, not yet reaped) by its user namespace (its
/// credentials live until it is reaped) and its PID namespace (so does its
/// `struct pid`): /proc still shows both links for a zombie.
pub fn zombie_holders() -> Zombies {
    let mut out = Zombies::new();
    for pid in pids() {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut f = rest.split_whitespace();
        if f.next() != Some("Z") {
            continue;
        }
        let ppid = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        // The comm as the kernel wrote it between the parentheses.
        let comm = head.split_once('(').map_or("", |(_, c)| c).to_string();
        for kind in [NsKind::User, NsKind::Pid] {
            if let Some(inode) = ns_link_of(pid, kind.name()) {
                out.entry((kind, inode))
                    .or_default()
                    .push((pid, ppid, comm.clone()));
            }
        }
    }
    out
}

/// `zombie COMM (pid P), not reaped by its parent (pid PP)`, for each zombie
/// holding `key`.
pub fn describe_zombies(key: NsKey, zombies: &Zombies) -> impl Iterator<Item = String> + '_ {
    zombies
        .get(&key)
        .into_iter()
        .flatten()
        .map(|(pid, ppid, comm)| {
            format!("zombie {comm} (pid {pid}), not reaped by its parent (pid {ppid})")
        })
}

// <linux/sockios.h>: a socket's (or tun fd's) network namespace, as an fd.
nix::ioctl_none_bad!(siocgskns, 0x894c);

/// The network namespace of fd `fd` of process `pid`, if it is a socket
/// or a tun device: the fd is copied out of the process (`pidfd_getfd`, as
/// `lsfd` does for `SOCK.NETNS`; root may), asked with `SIOCGSKNS`, and
/// closed. None when the process or fd is gone, or the fd is neither.
/// Neither call blocks or changes the target, whatever it is.
pub fn socket_netns(pid: u32, fd: u32) -> Option<u32> {
    netns_of_fd(&pidfd(pid)?, fd)
}

fn owned(r: libc::c_long) -> Option<OwnedFd> {
    // SAFETY: a descriptor the kernel just gave us alone.
    (r >= 0).then(|| unsafe { OwnedFd::from_raw_fd(r as i32) })
}

fn pidfd(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })
}

/// [`socket_netns`] through an open pidfd of the process.
fn netns_of_fd(pidfd: &OwnedFd, fd: u32) -> Option<u32> {
    let ns = netns_fd_of(pidfd, fd)?;
    Some(fs::File::from(ns).metadata().ok()?.ino() as u32)
}

/// The network namespace of the process's fd `fd`, as an fd of it.
fn netns_fd_of(pidfd: &OwnedFd, fd: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_getfd takes an open pidfd, a target fd number and flags,
    // and returns a new fd or -1.
    let copy = owned(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) })?;
    // SAFETY: SIOCGSKNS takes no argument and returns a new fd or -1.
    owned(unsafe { siocgskns(copy.as_raw_fd()) }.ok()?.into())
}

/// Network namespaces held through a socket or tun fd by a process that is
/// not in them (the moby#32090 shape: a socket made inside, its fd passed
/// out): (pid, fd, comm) per namespace. Each socket is asked once, however
/// many fds share it; sockets in their holder's own namespace (nearly all)
/// hold nothing a member does not.
pub fn socket_holders(snap: &Snapshot) -> FdHolders {
    let own_net: HashMap<u32, u32> = snap
        .processes
        .iter()
        .filter(|(k, _)| k.0 == NsKind::Net)
        .flat_map(|(k, pids)| pids.iter().map(move |&p| (p, k.1)))
        .collect();
    sockets_outside(
        |pid| own_net.get(&pid).copied(),
        |pid| snap.procs.get(&pid).map(|p| p.comm.clone()),
    )
}

/// [`socket_holders`] without a scan at hand: each holder's namespace and
/// command read as it is met.
pub fn socket_holders_now() -> FdHolders {
    sockets_outside(|pid| ns_link_of(pid, "net"), |_| None)
}

fn sockets_outside(
    own_net: impl Fn(u32) -> Option<u32>,
    comm_of: impl Fn(u32) -> Option<String>,
) -> FdHolders {
    let mut asked: HashMap<String, Option<u32>> = HashMap::new();
    let mut out = FdHolders::new();
    let me = std::process::id();
    for pid in pids().into_iter().filter(|&p| p != me) {
        // Opened at the process's first socket, once.
        let mut process: Option<Option<OwnedFd>> = None;
        for (fd, link) in fd_links(pid) {
            if !(link.starts_with("socket:[") || link == "/dev/net/tun") {
                continue;
            }
            // A tun link names no one device: ask each.
            let Some(p) = process.get_or_insert_with(|| pidfd(pid)) else {
                break;
            };
            let netns = if link.starts_with("socket:[") {
                *asked
                    .entry(link.clone())
                    .or_insert_with(|| netns_of_fd(p, fd))
            } else {
                netns_of_fd(p, fd)
            };
            let Some(netns) = netns else { continue };
            if own_net(pid) == Some(netns) {
                continue;
            }
            let comm = comm_of(pid).unwrap_or_else(|| proc_info(pid).comm);
            out.entry((NsKind::Net, netns))
                .or_default()
                .push((pid, fd, comm));
        }
    }
    out
}

// <linux/nsfs.h>: `_IO(0xb7, 0x1)`, `_IO(0xb7, 0x2)`, and `_IOR(0xb7, 0xd,
// __u64)` (Linux 6.18+). nix builds the request numbers for glibc and musl
// alike (their ioctl request types differ).
nix::ioctl_none!(ns_get_userns, 0xb7, 0x1);
nix::ioctl_none!(ns_get_parent, 0xb7, 0x2);
nix::ioctl_read!(ns_get_id, 0xb7, 0xd, u64);

/// Owner, parent and 64-bit id of a namespace, read through `/proc/PID/ns/LINK`.
#[derive(Clone, Copy, Debug, Default)]
pub struct NsMeta {
    pub owner: Option<u32>,
    pub parent: Option<u32>,
    pub ns_id: Option<u64>,
}

/// Whether the last component of a path to open is followed: /proc's
/// `ns/` and `fd/` links are the kernel's own; a mount point never is a
/// link (one found there was put by someone).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    Yes,
    No,
}

/// Opens `path` only if it is the nsfs file of `key`, never blocking and
/// never opening anything else: an `O_PATH` open (no FIFO waits, no device
/// opens; no symlink at the last component unless `follow`), then `fstatfs`
/// must say nsfs and `fstat` the inode the caller expects; only then is it
/// opened for reading (through /proc/self/fd, the same file). Paths a user
/// can shape (pins in their own mount namespaces) go through here.
pub fn open_nsfs(path: &str, follow: Follow, key: NsKey) -> Option<fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let nofollow = if follow == Follow::No {
        libc::O_NOFOLLOW
    } else {
        0
    };
    let probe = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC | nofollow)
        .open(path)
        .ok()?;
    let fs_type = nix::sys::statfs::fstatfs(&probe).ok()?.filesystem_type();
    if fs_type != nix::sys::statfs::NSFS_MAGIC {
        return None;
    }
    let meta = probe.metadata().ok()?;
    if meta.ino() != u64::from(key.1) {
        return None;
    }
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", probe.as_raw_fd()))
        .ok()
}

/// Owner, parent and id of namespace `key`, through an nsfs file of it (e.g. an `ip netns`
/// bind mount), opened by [`open_nsfs`].
pub fn ns_meta_at(path: &str, follow: Follow, key: NsKey) -> NsMeta {
    let Some(file) = open_nsfs(path, follow, key) else {
        return NsMeta::default();
    };
    let fd = file.as_raw_fd();
    // The namespace a returned fd opens, that fd closed when dropped.
    let inode_of = |r: nix::Result<i32>| {
        // SAFETY: NS_GET_USERNS and NS_GET_PARENT return a new fd, ours alone.
        let owned = unsafe { OwnedFd::from_raw_fd(r.ok()?) };
        Some(fs::File::from(owned).metadata().ok()?.ino() as u32)
    };
    let mut id: u64 = 0;
    NsMeta {
        // SAFETY: nsfs ioctls that take no argument, on an open ns fd.
        owner: inode_of(unsafe { ns_get_userns(fd) }),
        // SAFETY: as above.
        parent: inode_of(unsafe { ns_get_parent(fd) }),
        // SAFETY: NS_GET_ID writes one u64 through the pointer, to `id`.
        ns_id: unsafe { ns_get_id(fd, &mut id) }.ok().map(|_| id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_names_the_network_namespace_it_was_made_in() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = sock.as_raw_fd() as u32;
        assert_eq!(
            socket_netns(std::process::id(), fd),
            own_ns_link("net"),
            "the kernel's answer for our own socket"
        );
        // Not a socket: no answer.
        let file = fs::File::open("/proc/self/stat").unwrap();
        assert_eq!(
            socket_netns(std::process::id(), file.as_raw_fd() as u32),
            None
        );
        assert_eq!(socket_netns(u32::MAX, 0), None);
    }

    #[test]
    fn parses_ns_links() {
        assert_eq!(parse_ns_link("net:[4026532309]"), Some(("net", 4026532309)));
        assert_eq!(
            parse_ns_link("pid_for_children:[1]"),
            Some(("pid_for_children", 1))
        );
        assert_eq!(parse_ns_link("/dev/null"), None);
    }

    #[test]
    fn reads_the_parent_of_a_stat_line() {
        assert_eq!(parent_of_stat("2 (kthreadd) S 0 0 0 0 -1"), Some(0));
        assert_eq!(parent_of_stat("77 (a) b) (c) R 12 77 77 0"), Some(12));
        assert_eq!(parent_of_stat("garbage"), None);
    }

    #[test]
    fn reads_the_flags_of_a_stat_line_and_sees_our_own_thread_alive() {
        let line = "77 (a) b) (c) R 12 77 77 0 -1 4194564 0 0";
        assert_eq!(flags_of_stat(line), Some(4194564));
        assert_eq!(flags_of_stat(line).map(|f| f & PF_EXITING), Some(4));
        let me = std::process::id();
        assert!(!is_exiting(me, me));
        assert!(is_exiting(me, u32::MAX));
    }

    #[test]
    fn the_host_namespaces_are_found() {
        // Every test machine shows kthreadd or init to root; the initial
        // namespaces are then the host's.
        if fs::read_link("/proc/2/ns/mnt").is_ok() || fs::read_link("/proc/1/ns/mnt").is_ok() {
            assert!(host_ns_link("mnt").is_some());
        }
    }

    #[test]
    fn finds_nsfs_bind_mounts() {
        let table = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
44 43 0:4 net:[4026532177] /run/netns/tt rw shared:2 - nsfs nsfs rw
45 43 0:4 uts:[4026532200] /tmp/my\\040ns rw - nsfs nsfs rw
46 43 0:4 ipc:[4026532201] /tmp/a\\011b\\012c\\134d\\9\\ rw - nsfs nsfs rw
";
        let m = parse_nsfs_mounts(table);
        assert_eq!(
            m,
            vec![
                ((NsKind::Net, 4026532177), "/run/netns/tt".to_string()),
                ((NsKind::Uts, 4026532200), "/tmp/my ns".to_string()),
                (
                    (NsKind::Ipc, 4026532201),
                    "/tmp/a\tb\nc\\d\\9\\".to_string()
                ),
            ]
        );
    }

    #[test]
    fn scan_sees_our_own_namespaces() {
        let snap = scan();
        let me = std::process::id();
        for kind in NsKind::ALL {
            let Some(inode) = read_link_inode(Path::new(&format!("/proc/self/ns/{}", kind.name())))
            else {
                continue;
            };
            assert!(snap.processes[&(kind, inode)].contains(&me), "{kind:?}");
        }
    }
}
