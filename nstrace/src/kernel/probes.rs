//! Loads nstrace's eBPF object, gives it this kernel's offsets, attaches it.
//! Dropping [`Probes`] detaches and unloads everything.

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, Map, MapData, RingBuf},
    programs::{FEntry, Program, RawTracePoint, TracePoint},
};
use std::os::fd::{AsFd as _, AsRawFd as _};

use nstrace_common::{
    COUNTER_FOLLOW_FULL, COUNTER_LOST, COUNTER_LOST_BY_KIND, COUNTER_MEMBERS_EVICTED,
    COUNTER_MEMBERS_FULL, COUNTER_PENDING_FULL, COUNTER_TRACKED_FULL, COUNTERS, EVENT_KINDS,
    EventKind, FREE_SLOTS, FreeTarget, NS_KINDS, SetKey, member_key,
};

use super::{
    diagnostics::{self, KernelLog},
    offsets::Layout,
};
use crate::{
    model::NsKey,
    model::{Loss, NsKind},
    util::error::hinted,
};

/// (program, category, tracepoint), in attach order: the exits before the
/// entries, so no syscall can be entered under nstrace and leave unseen
/// (its in-flight entry would linger).
const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("sys_exit_ns", "syscalls", "sys_exit_unshare"),
    ("sys_exit_ns", "syscalls", "sys_exit_setns"),
    ("sys_exit_ns", "syscalls", "sys_exit_clone"),
    ("sys_exit_ns", "syscalls", "sys_exit_clone3"),
    ("sched_process_exit", "sched", "sched_process_exit"),
    ("sys_enter_unshare", "syscalls", "sys_enter_unshare"),
    ("sys_enter_setns", "syscalls", "sys_enter_setns"),
    ("sys_enter_clone", "syscalls", "sys_enter_clone"),
    ("sys_enter_clone3", "syscalls", "sys_enter_clone3"),
];

const RAW_TRACEPOINTS: &[(&str, &str)] = &[("task_newtask", "task_newtask")];

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nstrace"));
/// The same programs with the kernel-side diagnostics compiled in, for
/// `--debug` only (see build.rs).
static DEBUG_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/debug/nstrace"));

pub struct Probes {
    // Owns the programs and their links: dropping it detaches everything.
    ebpf: Ebpf,
    events: Option<RingBuf<MapData>>,
    counts: Counters,
    members: HashMap<MapData, u64, i64>,
    seeds: HashMap<MapData, SetKey, i64>,
    follow: HashMap<MapData, u32, u8>,
    diagnostics: Option<(diagnostics::Reader, &'static KernelLog)>,
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
    /// Watched namespaces whose member count the LRU map evicted.
    pub forgotten: u64,
    /// Threads that did namespace work, not marked for their exit (map full).
    pub untracked: u64,
    /// Descendants of followed processes not followed (map full).
    pub unfollowed: u64,
    /// `records` split by the kind of kernel event dropped (index: kind value).
    pub by_kind: [u64; EVENT_KINDS as usize],
    /// Runs of nstrace's programs the kernel skipped because a BPF program
    /// (or a `bpf()` call) was already active on that CPU, by what the
    /// program would have told ([`SKIP_GROUPS`]). Counted by the kernel for
    /// tracepoints since Linux 6.7; 0 before.
    pub skipped_by: [u64; SKIP_GROUPS.len()],
}

/// What a skipped run of a program may have cost, by the records it makes:
/// `syscall` a create, join or failed call; `clone` a clone's create;
/// `exit` a member leaving (an end seen late or not at all); `free` an end
/// (found late, when its inode is reused).
pub const SKIP_GROUPS: [&str; 4] = ["syscall", "clone", "exit", "free"];

fn skip_group(program: &str) -> usize {
    match program {
        "task_newtask" => 1,
        "sched_process_exit" => 2,
        p if p.starts_with("ns_free_") => 3,
        _ => 0,
    }
}

impl Losses {
    /// Skipped runs of every program.
    pub fn skipped(&self) -> u64 {
        self.skipped_by.iter().sum()
    }

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
            forgotten: self.forgotten.saturating_sub(before.forgotten),
            untracked: self.untracked.saturating_sub(before.untracked),
            unfollowed: self.unfollowed.saturating_sub(before.unfollowed),
            skipped: self.skipped().saturating_sub(before.skipped()),
            skipped_by: SKIP_GROUPS
                .iter()
                .zip(self.skipped_by.iter().zip(&before.skipped_by))
                .filter(|(_, (now, was))| now > was)
                .map(|(g, (now, was))| (*g, now - was))
                .collect(),
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

/// Starts parsing the kernel's BTF for aya's loader (it always does, in
/// `EbpfLoader::new`) on another core while nstrace reads its own offsets.
/// Entries of the FOLLOW map when pids are followed (the eBPF object's
/// own size).
const FOLLOW_ENTRIES: u32 = 65536;

pub fn prepare_loader() -> std::thread::JoinHandle<EbpfLoader<'static>> {
    std::thread::spawn(|| {
        without_vmlinux_btf();
        EbpfLoader::new()
    })
}

/// aya 0.14's `EbpfLoader::new()` always parses the kernel's whole BTF
/// (`/sys/kernel/btf/vmlinux`: 25-35 ms of CPU on our 2-core machine, the
/// longest wait of start-up), which nstrace never uses (`btf(None)`: no
/// CO-RE relocations; its own lean reader takes the offsets), and aya has
/// no constructor without it. So the thread that makes the loader takes a
/// filesystem root of its own (`unshare(CLONE_FS)`: its root and working
/// directory only, not the process's or its mount namespace) where that
/// file does not exist, and aya's parse fails at once. Where either call is
/// refused (no CAP_SYS_CHROOT, say) aya parses as before: slower, not
/// wrong.
fn without_vmlinux_btf() {
    // SAFETY: unshare(CLONE_FS) gives this thread a private copy of its
    // root and cwd; no memory is passed.
    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
        return;
    }
    // An empty directory every kernel has; only this thread's root moves.
    // SAFETY: a NUL-terminated path literal; chroot only changes this
    // thread's (now private) root.
    let _ = unsafe { libc::chroot(c"/proc/self/fdinfo".as_ptr()) };
}

impl Probes {
    /// Loads and attaches the tracepoint programs, verifying them in
    /// parallel (the verifier runs in the loading thread). `follow`: pids
    /// will be followed (`--pid`, command mode).
    pub fn load(
        loader: std::thread::JoinHandle<EbpfLoader<'static>>,
        layout: &Layout,
        ring_bytes: u32,
        member_entries: u32,
        follow: bool,
        debug: bool,
    ) -> Result<Self> {
        raise_memlock();
        let targets = free_targets(layout);
        let following = u32::from(follow);
        let mut offsets = layout.offsets;
        offsets.direct = u32::from(direct_loads_allowed(offsets.task_nsproxy));
        let mut loader = loader
            .join()
            .map_err(|_| anyhow::anyhow!("reading the kernel's BTF failed"))?;
        // Offsets come from `Layout` and there are no CO-RE relocations: the
        // parsed BTF is not needed past this point.
        let mut ebpf = loader
            .btf(None)
            .override_global("OFFSETS", &offsets, true)
            .override_global("FREE_TARGETS", &targets, true)
            .override_global("FOLLOWING", &following, true)
            .map_max_entries("EVENTS", ring_bytes)
            .map_max_entries("MEMBERS", member_entries)
            .map_max_entries("SETS", (member_entries / 4).max(1024))
            .map_max_entries("SEEDS", (member_entries / 4).max(1024))
            // Untouched unless pids are followed (the programs test FOLLOWING
            // first): one entry instead of 4 MiB of kernel memory to
            // allocate and initialise at start-up.
            .map_max_entries("FOLLOW", if follow { FOLLOW_ENTRIES } else { 1 })
            .load(if debug { DEBUG_OBJECT } else { OBJECT })
            .map_err(|e| load_error(e.into()))?;
        drop(loader);
        Self::release_freed_memory();
        load_in_parallel(&mut ebpf)?;
        for &(prog, category, name) in TRACEPOINTS {
            let p: &mut TracePoint = ebpf
                .program_mut(prog)
                .with_context(|| format!("program {prog} missing from the eBPF object"))?
                .try_into()?;
            p.attach(category, name)
                .with_context(|| format!("attaching to tracepoint {category}/{name}"))?;
        }
        for &(prog, name) in RAW_TRACEPOINTS {
            let p: &mut RawTracePoint = ebpf
                .program_mut(prog)
                .with_context(|| format!("program {prog} missing from the eBPF object"))?
                .try_into()?;
            p.attach(name)
                .with_context(|| format!("attaching to raw tracepoint {name}"))?;
        }
        let events = RingBuf::try_from(ebpf.take_map("EVENTS").context("map EVENTS missing")?)?;
        let counts = Counters::map(ebpf.take_map("COUNTS").context("map COUNTS missing")?)?;
        let members = HashMap::try_from(ebpf.take_map("MEMBERS").context("map MEMBERS missing")?)?;
        let seeds = HashMap::try_from(ebpf.take_map("SEEDS").context("map SEEDS missing")?)?;
        let follow = HashMap::try_from(ebpf.take_map("FOLLOW").context("map FOLLOW missing")?)?;
        let diagnostics = if debug {
            Some(diagnostics::reader(&mut ebpf)?)
        } else {
            None
        };
        Ok(Self {
            ebpf,
            events: Some(events),
            counts,
            members,
            seeds,
            follow,
            diagnostics,
        })
    }

    /// Hooks the kernel's namespace free functions with fentry: an error
    /// (with a hint) where the kernel refuses fentry or every function.
    /// Asked first with one tiny program, so that a refusing kernel costs
    /// no second BTF parse. A function the kernel refuses alone leaves its
    /// kinds to another method ([`Fentry::refused`]).
    pub fn attach_fentry(&mut self, layout: &Layout) -> Result<Fentry> {
        if let (Some(id), Some((func, _))) = (layout.fentry_probe, layout.free_targets.first()) {
            if let Err(why) = fentry_allowed(id) {
                return Err(refused(func, &why.to_string()));
            }
        }
        let attached = attach_fentry(&mut self.ebpf, layout);
        Self::release_freed_memory();
        let unload = |ebpf: &mut Ebpf, slot: usize| {
            if let Some(Program::FEntry(p)) = ebpf.program_mut(&format!("ns_free_{slot}")) {
                let _ = p.unload();
            }
        };
        match attached {
            Ok(mut f) if !f.kinds().is_empty() => {
                // A kind with a refused hook gets another method: its
                // other hooks go too, or its ends would come from two.
                for (slot, (_, t)) in layout.free_targets.iter().enumerate() {
                    let kinds = target_kinds(t);
                    if f.refused_slots.contains(&slot)
                        || kinds.iter().any(|k| f.refused_kinds.contains(k))
                    {
                        unload(&mut self.ebpf, slot);
                    }
                }
                let refused = std::mem::take(&mut f.refused_kinds);
                f.attached
                    .retain(|(_, kinds)| !kinds.iter().any(|k| refused.contains(k)));
                f.refused_kinds = refused;
                Ok(f)
            }
            Ok(f) => {
                for slot in 0..FREE_SLOTS {
                    unload(&mut self.ebpf, slot);
                }
                let (func, why) = f.refused.first().cloned().unwrap_or_default();
                Err(refused(&func, &why))
            }
            Err(e) => {
                // None half-attached: ends then come from one method only.
                for slot in 0..FREE_SLOTS {
                    unload(&mut self.ebpf, slot);
                }
                Err(e)
            }
        }
    }

    /// Hands the heap freed by a BTF parse back to the kernel, so that it does
    /// not stay in the resident set of a long trace. (musl, the static
    /// build's libc, returns freed memory by itself and has no malloc_trim.)
    pub fn release_freed_memory() {
        // SAFETY: malloc_trim only walks glibc's own free lists.
        #[cfg(target_env = "gnu")]
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// The ring buffer of events; can be taken once.
    pub fn take_events(&mut self) -> RingBuf<MapData> {
        self.events.take().expect("events taken twice")
    }

    /// The reader of `--debug` diagnostics, if asked for; can be taken once.
    pub fn take_diagnostics(&mut self) -> Option<(diagnostics::Reader, &'static KernelLog)> {
        self.diagnostics.take()
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
        let sum = |i: u32| self.counts.get(i);
        let mut by_kind = [0; EVENT_KINDS as usize];
        for (k, n) in by_kind.iter_mut().enumerate().skip(1) {
            *n = sum(COUNTER_LOST_BY_KIND + k as u32);
        }
        let skipped_by = self.skipped();
        Losses {
            records: sum(COUNTER_LOST),
            pending: sum(COUNTER_PENDING_FULL),
            unwatched: sum(COUNTER_MEMBERS_FULL),
            forgotten: sum(COUNTER_MEMBERS_EVICTED),
            untracked: sum(COUNTER_TRACKED_FULL),
            unfollowed: sum(COUNTER_FOLLOW_FULL),
            by_kind,
            skipped_by,
        }
    }

    /// The kernel's count of skipped runs of nstrace's programs, by
    /// [`SKIP_GROUPS`]. Read from /proc/self/fdinfo, not with `bpf()`: a map
    /// or info syscall would itself make the kernel skip programs on this
    /// CPU meanwhile.
    fn skipped(&self) -> [u64; SKIP_GROUPS.len()] {
        let mut by = [0; SKIP_GROUPS.len()];
        for (name, p) in self.ebpf.programs() {
            let Ok(fd) = p.fd() else { continue };
            let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
            if let Some(n) = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| recursion_misses(&t))
            {
                by[skip_group(name)] += n;
            }
        }
        by
    }
}

/// `recursion_misses` from a BPF program's fdinfo (absent before Linux 5.12).
fn recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("recursion_misses:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The kernel side's loss counters, memory-mapped: read without a syscall
/// (see `COUNTS` in nstrace-ebpf for why that matters).
struct Counters {
    /// `COUNTERS` values.
    base: std::ptr::NonNull<u64>,
    // Keeps the map alive while it is mapped.
    _map: MapData,
}

// SAFETY: the mapping is read only, with volatile reads, and lives as long
// as `Counters`.
unsafe impl Send for Counters {}

impl Counters {
    const BYTES: usize = COUNTERS as usize * std::mem::size_of::<u64>();

    fn map(map: Map) -> Result<Self> {
        let Map::Array(data) = map else {
            bail!("map COUNTS is not an array");
        };
        // SAFETY: maps the array's values read only; the kernel keeps the
        // pages for as long as the mapping exists.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::BYTES,
                libc::PROT_READ,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mapping the loss counters");
        }
        Ok(Counters {
            base: std::ptr::NonNull::new(ptr.cast()).context("mapping the loss counters")?,
            _map: data,
        })
    }

    fn get(&self, i: u32) -> u64 {
        assert!(i < COUNTERS, "counter {i} out of range");
        // SAFETY: in bounds of the mapping; the kernel side only adds.
        unsafe { std::ptr::read_volatile(self.base.as_ptr().add(i as usize)) }
    }
}

impl Drop for Counters {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), Self::BYTES);
        }
    }
}

/// The kernel's member counts, which user space corrects but never reads
/// while tracing (see the rejoin check in `state::ends::Ends::check`).
pub trait MemberCounts {
    /// A namespace's count: the member sets that hold it.
    fn set(&mut self, key: NsKey, sets: i64);
    /// A member set's seed: its threads as /proc shows them (the set's
    /// inode per kind, in the kernel side's kind order, 0 where absent),
    /// taken into its count the first time the kernel side meets the set.
    fn set_set(&mut self, set: [u32; NS_KINDS], threads: i64);
    /// Every seed is in: from now on a set met with none was never seen.
    fn seeded(&mut self);
}

/// What fentry hooks: each free function attached with the kinds whose
/// ends it reports, and those the kernel refused (function, why).
#[derive(Debug, Default)]
pub struct Fentry {
    pub attached: Vec<(String, Vec<NsKind>)>,
    pub refused: Vec<(String, String)>,
    refused_slots: Vec<usize>,
    refused_kinds: Vec<NsKind>,
}

impl Fentry {
    /// The kinds whose ends the kernel's free path reports: every hook of
    /// the kind attached (one refused of two would miss some frees).
    pub fn kinds(&self) -> Vec<NsKind> {
        let mut k: Vec<NsKind> = self
            .attached
            .iter()
            .flat_map(|(_, k)| k.clone())
            .filter(|k| !self.refused_kinds.contains(k))
            .collect();
        k.sort();
        k.dedup();
        k
    }
}

/// The kinds a slot's target reports.
fn target_kinds(t: &FreeTarget) -> Vec<NsKind> {
    NsKind::ALL
        .into_iter()
        .filter(|k| t.kinds & (1 << k.index()) != 0)
        .collect()
}

/// Attaches `ns_free_N` to the N-th free function the BTF named.
fn attach_fentry(ebpf: &mut Ebpf, layout: &Layout) -> Result<Fentry> {
    if layout.free_targets.is_empty() {
        return Err(hinted(
            "this kernel's BTF names none of the namespace free functions nstrace knows",
            "use --probe-mode tracepoint",
        ));
    }
    let btf = aya::Btf::from_sys_fs().context("reading kernel BTF for fentry")?;
    let mut out = Fentry::default();
    for (slot, (func, target)) in layout.free_targets.iter().enumerate() {
        let name = format!("ns_free_{slot}");
        let p: &mut FEntry = ebpf
            .program_mut(&name)
            .with_context(|| format!("program {name} missing from the eBPF object"))?
            .try_into()?;
        let done = p
            .load(func, &btf)
            .map_err(|e| match &e {
                aya::programs::ProgramError::LoadError { io_error, .. } => io_error.to_string(),
                other => other.to_string(),
            })
            .and_then(|()| p.attach().map(drop).map_err(|e| e.to_string()));
        match done {
            Ok(()) => out.attached.push((func.clone(), target_kinds(target))),
            Err(why) => {
                out.refused.push((func.clone(), why));
                out.refused_slots.push(slot);
                out.refused_kinds.extend(target_kinds(target));
            }
        }
    }
    Ok(out)
}

fn refused(func: &str, why: &str) -> anyhow::Error {
    hinted(
        format!("the kernel refused fentry on {func}: {why}"),
        "this kernel (or its security policy) does not allow fentry; use --probe-mode tracepoint",
    )
}

/// Where each `ns_free_N` program will point.
fn free_targets(layout: &Layout) -> [FreeTarget; FREE_SLOTS] {
    let mut targets = [FreeTarget::UNUSED; FREE_SLOTS];
    for (slot, (_, t)) in targets.iter_mut().zip(&layout.free_targets) {
        *slot = *t;
    }
    targets
}

/// Verifies every tracepoint program at once, one thread each: the kernel
/// verifies in the calling thread, so on N cores loading takes about the
/// time of the slowest program rather than the sum.
fn load_in_parallel(ebpf: &mut Ebpf) -> Result<()> {
    let wanted: Vec<&str> = TRACEPOINTS
        .iter()
        .map(|t| t.0)
        .chain(RAW_TRACEPOINTS.iter().map(|t| t.0))
        .collect();
    let programs: Vec<(&str, &mut Program)> = ebpf
        .programs_mut()
        .filter(|(name, _)| wanted.contains(name))
        .collect();
    std::thread::scope(|scope| {
        let loading: Vec<_> = programs
            .into_iter()
            .map(|(name, program)| {
                scope.spawn(move || -> Result<()> {
                    let t0 = std::time::Instant::now();
                    let loaded = match program {
                        Program::TracePoint(p) => p.load(),
                        Program::RawTracePoint(p) => p.load(),
                        _ => return Ok(()),
                    };
                    if loaded.is_ok() && std::env::var_os("NSTRACE_DEBUG").is_some() {
                        report_verification(name, program, t0.elapsed());
                    }
                    loaded
                        .map_err(|e| load_error(e.into()))
                        .with_context(|| format!("loading {name}"))
                })
            })
            .collect();
        loading.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| bail!("a loading thread panicked"))
        })
    })
}

/// Start-up is mostly the verifier's: with NSTRACE_DEBUG=1, each program's
/// load time and the instructions the verifier walked (Linux 5.16+) go to
/// stderr, to compare builds and kernels.
fn report_verification(name: &str, program: &Program, took: std::time::Duration) {
    let info = match program {
        Program::TracePoint(p) => p.info(),
        Program::RawTracePoint(p) => p.info(),
        _ => return,
    };
    let walked = info
        .ok()
        .and_then(|i| i.verified_instruction_count())
        .map_or_else(|| "unknown".to_string(), |n| n.to_string());
    eprintln!(
        "nstrace: debug: {name} verified in {:.1} ms ({walked} instructions walked)",
        took.as_secs_f64() * 1e3
    );
}

/// Whether the kernel lets a fentry program attach to BTF function `btf_id`:
/// loads `r0 = 0; exit` as one (the load is where the policy answers).
fn fentry_allowed(btf_id: u32) -> std::io::Result<()> {
    const BPF_PROG_TYPE_TRACING: u32 = 26;
    const BPF_TRACE_FENTRY: u32 = 24;
    // mov r0, 0; exit
    let insns = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    try_load(BPF_PROG_TYPE_TRACING, &insns, BPF_TRACE_FENTRY, btf_id)
}

/// Whether tracepoint and raw tracepoint programs may load fields straight
/// through `bpf_get_current_task_btf()` (Linux 5.11+, where the kernel's
/// verifier allows it): asked with `call; r1 = *(u64 *)(r0 + nsproxy);
/// r0 = 0; exit`, the hot path's first load, in both program types.
pub fn direct_loads_allowed(task_nsproxy: u32) -> bool {
    const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
    const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
    const BPF_FUNC_GET_CURRENT_TASK_BTF: u64 = 158;
    let Ok(off) = i16::try_from(task_nsproxy) else {
        return false;
    };
    let insns = [
        0x85 | BPF_FUNC_GET_CURRENT_TASK_BTF << 32,
        // ldxdw r1, [r0 + off]: dst 1, src 0.
        0x79 | 0x01 << 8 | u64::from(off as u16) << 16,
        0x0000_0000_0000_00b7,
        0x0000_0000_0000_0095,
    ];
    [BPF_PROG_TYPE_TRACEPOINT, BPF_PROG_TYPE_RAW_TRACEPOINT]
        .into_iter()
        .all(|t| try_load(t, &insns, 0, 0).is_ok())
}

/// Loads `insns` as a GPL program of `prog_type` and closes it: the load is
/// where the kernel's policy and verifier answer.
fn try_load(prog_type: u32, insns: &[u64], attach_type: u32, btf_id: u32) -> std::io::Result<()> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    let license = c"GPL";
    // union bpf_attr, BPF_PROG_LOAD part (include/uapi/linux/bpf.h).
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&prog_type.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[68..72].copy_from_slice(&attach_type.to_ne_bytes());
    attr[108..112].copy_from_slice(&btf_id.to_ne_bytes());
    // SAFETY: attr, insns and license outlive the call; the kernel reads
    // only the first `attr.len()` bytes.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            attr.as_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is the program the call above returned, ours to close.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

fn key((kind, inode): NsKey) -> u64 {
    member_key(kind.index(), inode)
}

impl MemberCounts for Probes {
    fn set(&mut self, k: NsKey, sets: i64) {
        let _ = self.members.insert(key(k), sets, 0);
    }

    fn set_set(&mut self, set: [u32; NS_KINDS], threads: i64) {
        let _ = self.seeds.insert(SetKey { inum: set }, threads, 0);
    }

    fn seeded(&mut self) {
        let _ = self.seeds.insert(nstrace_common::SEEDED_MARK, 1, 0);
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
    use nix::sys::resource::{RLIM_INFINITY, Resource, setrlimit};
    // A failure matters only on those kernels, and their load error says so.
    let _ = setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_runs_are_told_by_what_they_would_have_told() {
        assert_eq!(SKIP_GROUPS[skip_group("sys_exit_ns")], "syscall");
        assert_eq!(SKIP_GROUPS[skip_group("sys_enter_clone3")], "syscall");
        assert_eq!(SKIP_GROUPS[skip_group("task_newtask")], "clone");
        assert_eq!(SKIP_GROUPS[skip_group("sched_process_exit")], "exit");
        assert_eq!(SKIP_GROUPS[skip_group("ns_free_3")], "free");
        let before = Losses {
            skipped_by: [2, 0, 0, 0],
            ..Losses::default()
        };
        let now = Losses {
            skipped_by: [3, 0, 0, 1],
            ..before
        };
        let l = now.since(&before, 0).unwrap();
        assert_eq!(l.skipped, 2);
        assert_eq!(l.skipped_by, vec![("syscall", 1), ("free", 1)]);
    }

    /// Diagnostics off cost nothing because the object loaded without
    /// `--debug` has none: no aya-log map, no log level to check.
    #[test]
    fn only_the_debug_object_carries_diagnostics() {
        let has = |obj: &[u8], what: &[u8]| obj.windows(what.len()).any(|w| w == what);
        assert!(!has(OBJECT, b"AYA_LOG"));
        assert!(has(DEBUG_OBJECT, b"AYA_LOGS"));
    }

    #[test]
    fn recursion_misses_are_read_from_fdinfo() {
        let fdinfo = "prog_type:\t5\nprog_jited:\t1\nrun_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t42\nverified_insns:\t9\n";
        assert_eq!(recursion_misses(fdinfo), Some(42));
        assert_eq!(recursion_misses("prog_type:\t5\n"), None);
    }
}
