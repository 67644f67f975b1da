//! Why something failed in the kernel, through aya-log, for `--debug`.
//!
//! Every check starts with the log level, a read-only global user space sets
//! before load (`AYA_LOG_LEVEL`, 0 without `--debug`). The verifier knows a
//! frozen read-only value, so with logging off it never walks the branch and
//! drops it from the program: the cost left is one load. The messages are
//! written by functions of their own (BPF subprograms), so a program's
//! stack frame is not grown by them unless logging is on.
//!
//! Only failures are logged, never the normal path: a full map, a read that
//! faulted at a non-null address (a wrong offset, or memory already freed).
//! Reads through null are expected (initial namespaces are masked to null,
//! exiting tasks lose their nsproxy) and are not reported.

use aya_log_ebpf::{
    debug,
    macro_support::{Level, level_enabled},
    warn,
};
use nstrace_common::EventKind;

/// Which map an update failed in.
#[derive(Clone, Copy)]
pub enum Map {
    Pending,
    Members,
    Tracked,
    Follow,
}

impl Map {
    fn name(self) -> &'static str {
        match self {
            Map::Pending => "PENDING (syscalls in flight)",
            Map::Members => "MEMBERS (member counts)",
            Map::Tracked => "TRACKED (threads whose exit is reported)",
            Map::Follow => "FOLLOW (followed processes)",
        }
    }
}

/// Whether messages of `level` are on. Asked twice on purpose: the second
/// (volatile) load cannot be moved above the first test, which so stays a
/// branch of its own, taken before anything else is compared. Asked once,
/// LLVM folds the caller's conditions into it (`level && ret < 0 && ...`
/// computed without branches), and the verifier, which knows only the
/// level, cannot drop the comparisons.
#[inline(always)]
fn on(level: Level) -> bool {
    !cfg!(feature = "no-diagnostics") && level_enabled(level) && level_enabled(level)
}

/// A `bpf_probe_read_kernel` of `len` bytes at `base + offset` returned `ret`.
#[inline(always)]
pub fn read(base: *const u8, offset: u32, len: u32, ret: i64) {
    if on(Level::Warn) && ret < 0 && !base.is_null() {
        read_failed(base as u64, offset, len, ret);
    }
}

#[inline(never)]
fn read_failed(base: u64, offset: u32, len: u32, ret: i64) {
    warn!(
        &(),
        "kernel read of {} bytes at 0x{:x} + {} failed: errno {}", len, base, offset, -ret
    );
}

/// A map update returned `err` (a negative errno).
#[inline(always)]
pub fn update(map: Map, err: i32) {
    if on(Level::Warn) {
        update_failed(map, err);
    }
}

#[inline(never)]
fn update_failed(map: Map, err: i32) {
    warn!(&(), "map update failed in {}: errno {}", map.name(), -err);
}

/// The ring buffer had no room for a record of `kind` (counted as lost too).
#[inline(always)]
pub fn ring_full(kind: EventKind) {
    if on(Level::Debug) {
        record_dropped(kind);
    }
}

#[inline(never)]
fn record_dropped(kind: EventKind) {
    let what = match kind {
        EventKind::Clone => "clone",
        EventKind::Switch => "unshare/setns",
        EventKind::Error => "failed syscall",
        EventKind::Exec => "exec",
        EventKind::Exit => "exit",
        EventKind::Freed => "free",
    };
    debug!(&(), "ring buffer full: {} record dropped", what);
}

/// clone3's `struct clone_args` at `addr` could not be read (the call then
/// fails with EFAULT: not namespace work).
#[inline(always)]
pub fn clone_args(addr: u64, ret: i64) {
    if on(Level::Debug) && ret < 0 {
        clone_args_unreadable(addr, ret);
    }
}

#[inline(never)]
fn clone_args_unreadable(addr: u64, ret: i64) {
    debug!(
        &(),
        "clone3 arguments at 0x{:x} unreadable: errno {}", addr, -ret
    );
}
