//! Why something failed in the kernel, through aya-log, for `--debug`.
//!
//! The object is built twice (see `nstrace/build.rs`): with the
//! `diagnostics` feature for `--debug`, and without it for every other run.
//! Without it every function here is empty and the programs are the same
//! instructions as if this module did not exist: off costs nothing, not even
//! the level check aya-log would leave.
//!
//! With it, a failure is only noted where it happens (a few stores into a
//! per-CPU slot), and [`flush`], called once as each program returns, turns
//! the first one noted into a log record. Logging where it happens put an
//! aya-log call (hundreds of instructions) behind every kernel read; the
//! verifier walked each of them and load took over a second on the host and
//! over a minute in an emulated guest, and 6.1, which adds up the stack of
//! every subprogram chain, refused the programs.
//!
//! Only failures are reported, never the normal path: a full map, a read that
//! faulted at a non-null address (a wrong offset, or memory already freed).
//! Reads through null are expected (initial namespaces are masked to null,
//! exiting tasks lose their nsproxy) and are not reported.

#[cfg(feature = "diagnostics")]
pub use on::*;

#[cfg(not(feature = "diagnostics"))]
pub use off::*;

/// Which map an update failed in.
#[derive(Clone, Copy)]
#[repr(u64)]
pub enum Map {
    Pending = 1,
    Members = 2,
    Follow = 4,
    Sets = 5,
}

#[cfg(feature = "diagnostics")]
mod on {
    use aya_ebpf::helpers::bpf_get_smp_processor_id;
    use aya_log_ebpf::{debug, warn};
    use nstrace_common::EventKind;

    use super::Map;

    const NOTHING: u64 = 0;
    const READ: u64 = 1;
    const UPDATE: u64 = 2;
    const RING_FULL: u64 = 3;
    const CLONE_ARGS: u64 = 4;

    /// The first failure of the program run on this CPU, and how many more.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Note {
        what: u64,
        more: u64,
        a: u64,
        b: u64,
        c: u64,
        d: u64,
    }

    /// Most CPUs a note is kept for; failures on CPUs past it go unreported.
    const CPUS: usize = 1024;

    /// Global data rather than a per-CPU map: a map lookup needs its key on
    /// the stack, and a note is taken deep in call chains whose frames 6.1
    /// adds up against its 512-byte limit.
    static mut NOTES: [Note; CPUS] = [Note {
        what: NOTHING,
        more: 0,
        a: 0,
        b: 0,
        c: 0,
        d: 0,
    }; CPUS];

    #[inline(always)]
    fn slot() -> Option<*mut Note> {
        // SAFETY: bpf_get_smp_processor_id takes no arguments and touches no memory.
        let cpu = unsafe { bpf_get_smp_processor_id() } as usize;
        // SAFETY: only a raw pointer to NOTES[cpu] is made, no reference;
        // `cpu < CPUS` is checked just before.
        (cpu < CPUS).then(|| unsafe { (&raw mut NOTES[cpu]) })
    }

    #[inline(always)]
    fn note(what: u64, a: u64, b: u64, c: u64, d: u64) {
        if let Some(n) = slot() {
            // SAFETY: `n` is this CPU's in-bounds NOTES slot, touched only by
            // program runs on this CPU, one at a time, except that an fentry
            // run (migrate-disabled, not preempt-disabled) can be preempted
            // mid-note and two notes' u64 stores interleave.
            let n = unsafe { &mut *n };
            if n.what == NOTHING {
                n.what = what;
                n.more = 0;
                n.a = a;
                n.b = b;
                n.c = c;
                n.d = d;
            } else {
                n.more += 1;
            }
        }
    }

    /// A `bpf_probe_read_kernel` of `len` bytes at `base + offset` returned `ret`.
    #[inline(always)]
    pub fn read(base: *const u8, offset: u32, len: u32, ret: i64) {
        if ret < 0 && !base.is_null() {
            note(READ, base as u64, offset.into(), len.into(), ret as u64);
        }
    }

    /// A map update returned `err` (a negative errno).
    #[inline(always)]
    pub fn update(map: Map, err: i32) {
        note(UPDATE, map as u64, err as i64 as u64, 0, 0);
    }

    /// The ring buffer had no room for a record of `kind` (counted as lost too).
    #[inline(always)]
    pub fn ring_full(kind: EventKind) {
        note(RING_FULL, kind as u64, 0, 0, 0);
    }

    /// clone3's `struct clone_args` at `addr` could not be read (the call then
    /// fails with EFAULT: not namespace work).
    #[inline(always)]
    pub fn clone_args(addr: u64, ret: i64) {
        note(CLONE_ARGS, addr, ret as u64, 0, 0);
    }

    /// Logs what this program run noted, if anything. Inlined, at the end
    /// of the program, where the program's own locals are dead: the log
    /// calls' stack then shares their slots, where a subprogram's frame
    /// would add to the program's (6.1 refuses over 512 bytes in all).
    #[inline(never)]
    pub fn flush() {
        let Some(n) = slot() else {
            return;
        };
        // SAFETY: `n` is this CPU's in-bounds NOTES slot, touched only by
        // program runs on this CPU, one at a time, except that an fentry run
        // (migrate-disabled, not preempt-disabled) can be preempted mid-note
        // and two notes' u64 stores interleave. As in `note`.
        let n = unsafe { &mut *n };
        let Note {
            what,
            more,
            a,
            b,
            c,
            d,
        } = *n;
        if what == NOTHING {
            return;
        }
        n.what = NOTHING;
        let errno = |v: u64| (v as i64).wrapping_neg();
        match what {
            READ => warn!(
                &(),
                "kernel read of {} bytes at 0x{:x} + {} failed: errno {} ({} more in the same program run)",
                c,
                a,
                b,
                errno(d),
                more
            ),
            UPDATE => warn!(
                &(),
                "map update failed in {}: errno {} ({} more in the same program run)",
                map_name(a),
                errno(b),
                more
            ),
            RING_FULL => debug!(&(), "ring buffer full: {} record dropped", kind_name(a)),
            CLONE_ARGS => debug!(
                &(),
                "clone3 arguments at 0x{:x} unreadable: errno {}",
                a,
                errno(b)
            ),
            _ => {}
        }
    }

    fn map_name(map: u64) -> &'static str {
        match map {
            m if m == Map::Pending as u64 => "PENDING (syscalls in flight)",
            m if m == Map::Members as u64 => "MEMBERS (member counts)",
            m if m == Map::Sets as u64 => "SETS (member counts of namespace sets)",
            _ => "FOLLOW (followed processes)",
        }
    }

    fn kind_name(kind: u64) -> &'static str {
        match kind {
            k if k == EventKind::Clone as u64 => "clone",
            k if k == EventKind::Switch as u64 => "unshare/setns",
            k if k == EventKind::Error as u64 => "failed syscall",
            k if k == EventKind::Exec as u64 => "exec",
            k if k == EventKind::Exit as u64 => "exit",
            _ => "free",
        }
    }
}

#[cfg(not(feature = "diagnostics"))]
mod off {
    use nstrace_common::EventKind;

    use super::Map;

    #[inline(always)]
    pub fn read(_: *const u8, _: u32, _: u32, _: i64) {}

    #[inline(always)]
    pub fn update(_: Map, _: i32) {}

    #[inline(always)]
    pub fn ring_full(_: EventKind) {}

    #[inline(always)]
    pub fn clone_args(_: u64, _: i64) {}

    #[inline(never)]
    pub fn flush() {}
}
