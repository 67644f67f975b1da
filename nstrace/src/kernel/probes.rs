//! Loads nstrace's eBPF object, gives it this kernel's offsets, attaches it.
//! Dropping [`Probes`] detaches and unloads everything.

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{FEntry, RawTracePoint, TracePoint},
};
use nstrace_common::{
    COUNTER_LOST, COUNTER_LOST_BY_KIND, COUNTER_MEMBERS_FULL, COUNTER_PENDING_FULL, EVENT_KINDS,
    EventKind, FREE_SLOTS, FreeTarget, member_key,
};

use super::offsets::Layout;
use crate::{ends::MemberCounts, error::hinted, procfs::NsKey, record::Loss};

/// (program, category, tracepoint)
const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("sys_enter_unshare", "syscalls", "sys_enter_unshare"),
    ("sys_exit_unshare", "syscalls", "sys_exit_unshare"),
    ("sys_enter_setns", "syscalls", "sys_enter_setns"),
    ("sys_exit_setns", "syscalls", "sys_exit_setns"),
    ("sys_enter_clone", "syscalls", "sys_enter_clone"),
    ("sys_exit_clone", "syscalls", "sys_exit_clone"),
    ("sys_enter_clone3", "syscalls", "sys_enter_clone3"),
    ("sys_exit_clone3", "syscalls", "sys_exit_clone3"),
    ("sched_process_exec", "sched", "sched_process_exec"),
    ("sched_process_exit", "sched", "sched_process_exit"),
];

const RAW_TRACEPOINTS: &[(&str, &str)] = &[("task_newtask", "task_newtask")];

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nstrace"));

pub struct Probes {
    // Owns the programs and their links: dropping it detaches everything.
    _ebpf: Ebpf,
    events: Option<RingBuf<MapData>>,
    counts: PerCpuArray<MapData, u64>,
    members: HashMap<MapData, u64, i64>,
    follow: HashMap<MapData, u32, u8>,
}

/// Things the kernel side could not record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Losses {
    /// Records dropped because the ring buffer was full.
    pub records: u64,
    /// Syscalls missed because the in-flight table was full.
    pub pending: u64,
    /// New namespaces not watched for their end because the member map was full.
    pub unwatched: u64,
    /// `records` split by the kind of kernel event dropped (index: kind value).
    pub by_kind: [u64; EVENT_KINDS as usize],
}

impl Losses {
    /// What was lost after `before`, as an in-band notice; `None` if nothing.
    pub fn since(&self, before: &Losses, time_ns: i128) -> Option<Loss> {
        if self == before {
            return None;
        }
        let by_kind = (1..EVENT_KINDS)
            .filter_map(|k| {
                let n = self.by_kind[k as usize].saturating_sub(before.by_kind[k as usize]);
                let name = lost_kind_name(EventKind::from_u32(k)?);
                (n > 0).then_some((name, n))
            })
            .collect();
        Some(Loss {
            time_ns,
            events: self.records.saturating_sub(before.records),
            events_total: self.records,
            by_kind,
            syscalls_missed: self.pending.saturating_sub(before.pending),
            unwatched: self.unwatched.saturating_sub(before.unwatched),
        })
    }
}

/// What a dropped kernel event would have told, for users: creates and joins
/// ride on `clone` and `unshare_setns`, ends on `exit` (or `free`, fentry).
fn lost_kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Clone => "clone",
        EventKind::Switch => "unshare_setns",
        EventKind::Error => "failed_syscall",
        EventKind::Exec => "exec",
        EventKind::Exit => "exit",
        EventKind::Freed => "free",
    }
}

impl Probes {
    /// Loads and attaches the tracepoint programs; with `fentry`, also hooks
    /// the kernel's namespace free functions (an error if the kernel refuses).
    pub fn load(layout: &Layout, ring_bytes: u32, fentry: bool) -> Result<Self> {
        raise_memlock();
        let mut targets = [FreeTarget::UNUSED; FREE_SLOTS];
        for (slot, (_, t)) in targets.iter_mut().zip(&layout.free_targets) {
            *slot = *t;
        }
        // The loader parses the kernel's BTF in `new()` (~25 MB at peak); it is
        // not needed (offsets come from `Layout`, no CO-RE relocations), so
        // it is dropped at once and its heap handed back before the ring
        // buffer is mapped.
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .override_global("OFFSETS", &layout.offsets, true)
            .override_global("FREE_TARGETS", &targets, true)
            .map_max_entries("EVENTS", ring_bytes)
            .load(OBJECT)
            .map_err(|e| load_error(e.into()))?;
        Self::release_freed_memory();
        if fentry {
            let attached = attach_fentry(&mut ebpf, layout);
            Self::release_freed_memory();
            attached?;
        }
        for &(prog, category, name) in TRACEPOINTS {
            let p: &mut TracePoint = ebpf
                .program_mut(prog)
                .with_context(|| format!("program {prog} missing from the eBPF object"))?
                .try_into()?;
            p.load()
                .map_err(|e| load_error(e.into()))
                .with_context(|| format!("loading {prog}"))?;
            p.attach(category, name)
                .with_context(|| format!("attaching to tracepoint {category}/{name}"))?;
        }
        for &(prog, name) in RAW_TRACEPOINTS {
            let p: &mut RawTracePoint = ebpf
                .program_mut(prog)
                .with_context(|| format!("program {prog} missing from the eBPF object"))?
                .try_into()?;
            p.load()
                .map_err(|e| load_error(e.into()))
                .with_context(|| format!("loading {prog}"))?;
            p.attach(name)
                .with_context(|| format!("attaching to raw tracepoint {name}"))?;
        }
        let events = RingBuf::try_from(ebpf.take_map("EVENTS").context("map EVENTS missing")?)?;
        let counts = PerCpuArray::try_from(ebpf.take_map("COUNTS").context("map COUNTS missing")?)?;
        let members = HashMap::try_from(ebpf.take_map("MEMBERS").context("map MEMBERS missing")?)?;
        let follow = HashMap::try_from(ebpf.take_map("FOLLOW").context("map FOLLOW missing")?)?;
        Ok(Self {
            _ebpf: ebpf,
            events: Some(events),
            counts,
            members,
            follow,
        })
    }

    /// Hands the heap freed by a BTF parse back to the kernel, so that it does
    /// not stay in the resident set of a long trace.
    pub fn release_freed_memory() {
        // SAFETY: malloc_trim only walks glibc's own free lists.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// The ring buffer of events; can be taken once.
    pub fn take_events(&mut self) -> RingBuf<MapData> {
        self.events.take().expect("events taken twice")
    }

    /// Follow process `pid` and, from now on, every process it forks.
    pub fn follow(&mut self, pid: u32) -> Result<()> {
        self.follow
            .insert(pid, 1, 0)
            .with_context(|| format!("following pid {pid}"))
    }

    pub fn unfollow(&mut self, pid: u32) {
        let _ = self.follow.remove(&pid);
    }

    pub fn losses(&self) -> Losses {
        let sum = |i: u32| {
            self.counts
                .get(&i, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        };
        let mut by_kind = [0; EVENT_KINDS as usize];
        for (k, n) in by_kind.iter_mut().enumerate().skip(1) {
            *n = sum(COUNTER_LOST_BY_KIND + k as u32);
        }
        Losses {
            records: sum(COUNTER_LOST),
            pending: sum(COUNTER_PENDING_FULL),
            unwatched: sum(COUNTER_MEMBERS_FULL),
            by_kind,
        }
    }
}

/// Attaches `ns_free_N` to the N-th free function the BTF named.
fn attach_fentry(ebpf: &mut Ebpf, layout: &Layout) -> Result<()> {
    if layout.free_targets.is_empty() {
        return Err(hinted(
            "this kernel's BTF names none of the namespace free functions nstrace knows",
            "use --probe-mode tracepoint",
        ));
    }
    let btf = aya::Btf::from_sys_fs().context("reading kernel BTF for fentry")?;
    for (slot, (func, _)) in layout.free_targets.iter().enumerate() {
        let name = format!("ns_free_{slot}");
        let p: &mut FEntry = ebpf
            .program_mut(&name)
            .with_context(|| format!("program {name} missing from the eBPF object"))?
            .try_into()?;
        p.load(func, &btf).map_err(|e| {
            let why = match &e {
                aya::programs::ProgramError::LoadError { io_error, .. } => io_error.to_string(),
                other => other.to_string(),
            };
            hinted(
                format!("the kernel refused fentry on {func}: {why}"),
                "this kernel (or its security policy) does not allow fentry; use --probe-mode tracepoint",
            )
        })?;
        p.attach().map_err(|e| {
            hinted(
                format!("attaching fentry to {func}: {e}"),
                "use --probe-mode tracepoint",
            )
        })?;
    }
    Ok(())
}

fn key((kind, inode): NsKey) -> u64 {
    member_key(kind.index(), inode)
}

impl MemberCounts for Probes {
    fn get(&self, k: NsKey) -> Option<i64> {
        self.members.get(&key(k), 0).ok()
    }

    fn set(&mut self, k: NsKey, members: i64) {
        let _ = self.members.insert(key(k), members, 0);
    }

    // Entries are never removed from user space: by the time an end is known
    // the kernel may have given the inode to a new namespace, whose entry
    // that would delete. The map is an LRU.
}

/// The verifier's log is long; keep it for NSTRACE_DEBUG=1 and say what to do.
fn load_error(e: anyhow::Error) -> anyhow::Error {
    if std::env::var_os("NSTRACE_DEBUG").is_some() {
        return e;
    }
    let first = format!("{e}");
    hinted(
        format!("the kernel refused nstrace's eBPF programs: {first}"),
        "set NSTRACE_DEBUG=1 to see the verifier's log, and report it with `uname -r`",
    )
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct; failure only matters on old kernels.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}
