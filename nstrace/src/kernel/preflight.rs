//! Checks made before loading anything, so that a missing requirement reads as
//! one cause and one hint rather than a loader error.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::offsets::VMLINUX_BTF;
use crate::util::error::hinted;

/// BPF ring buffers arrived in Linux 5.8.
pub const MIN_KERNEL: (u32, u32) = (5, 8);

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What the checks learned about this machine.
#[derive(Debug, Clone)]
pub struct Host {
    pub kernel_release: String,
    pub tracefs: PathBuf,
    /// We mounted tracefs ourselves (and say so).
    pub mounted_tracefs: bool,
}

pub fn check() -> Result<Host> {
    let kernel_release = kernel_release();
    check_kernel_version(&kernel_release)?;
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(hinted(
            format!("this kernel ({kernel_release}) exposes no BTF at {VMLINUX_BTF}"),
            "nstrace reads struct layouts from BTF: use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 5.x are)",
        ));
    }
    check_privileges()?;
    check_host_pid_namespace(std::fs::read_link("/proc/self/ns/pid").ok().as_deref())?;
    let (tracefs, mounted_tracefs) = tracefs()?;
    Ok(Host {
        kernel_release,
        tracefs,
        mounted_tracefs,
    })
}

/// The initial PID namespace's inode (`PROC_PID_INIT_INO`), on every kernel.
const HOST_PIDNS: &str = "pid:[4026531836]";

/// The kernel side reports host PIDs: in another PID namespace (a container
/// without `--pid=host`) /proc could not resolve them, nor see the host's
/// processes, their namespaces or their pins.
pub fn check_host_pid_namespace(own: Option<&Path>) -> Result<()> {
    match own.and_then(Path::to_str) {
        Some(HOST_PIDNS) | None => Ok(()),
        Some(other) => Err(hinted(
            format!(
                "nstrace runs in a PID namespace of its own ({other}), not the host's: it would \
                 report PIDs this /proc does not show and miss the host's processes"
            ),
            "in a container, share the host's: `docker run --pid=host ...`, or `hostPID: true` in a Kubernetes pod",
        )),
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// `"6.18.44-fc"` → `(6, 18)`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

pub fn check_kernel_version(release: &str) -> Result<()> {
    match parse_release(release) {
        Some(v) if v < MIN_KERNEL => Err(hinted(
            format!(
                "kernel {release} is too old: nstrace needs Linux {}.{} or later (BPF ring buffer)",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
            "run nstrace on a newer kernel; `uname -r` shows the running one",
        )),
        _ => Ok(()),
    }
}

/// Effective capability bits from /proc/self/status.
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub fn has_needed_caps(caps: u64) -> bool {
    let has = |c: u32| caps & (1 << c) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

fn check_privileges() -> Result<()> {
    if has_needed_caps(effective_caps()) {
        return Ok(());
    }
    Err(hinted(
        "permission denied: loading eBPF tracing programs needs root (or CAP_BPF and CAP_PERFMON)",
        "run it as `sudo nstrace`",
    ))
}

fn has_syscall_events(root: &Path) -> bool {
    root.join("events/syscalls/sys_enter_unshare").is_dir()
}

/// Finds tracefs, mounting it at /sys/kernel/tracing if nothing is mounted.
fn tracefs() -> Result<(PathBuf, bool)> {
    let candidates = [
        Path::new("/sys/kernel/tracing"),
        Path::new("/sys/kernel/debug/tracing"),
    ];
    if let Some(found) = candidates.iter().find(|p| has_syscall_events(p)) {
        return Ok((found.to_path_buf(), false));
    }
    let primary = candidates[0];
    if primary.join("events").is_dir() {
        return Err(hinted(
            "this kernel has no syscall tracepoints (events/syscalls missing in tracefs)",
            "nstrace needs a kernel built with CONFIG_FTRACE_SYSCALLS=y",
        ));
    }
    let mounted = mount_tracefs(primary);
    if has_syscall_events(primary) {
        return Ok((primary.to_path_buf(), true));
    }
    let why = match mounted {
        Ok(()) => "tracefs mounted but has no syscall tracepoints".to_string(),
        Err(e) => format!("tracefs is not mounted and mounting it failed: {e}"),
    };
    Err(hinted(
        why,
        "mount it with `mount -t tracefs tracefs /sys/kernel/tracing`; the kernel needs CONFIG_FTRACE_SYSCALLS=y",
    ))
}

fn mount_tracefs(at: &Path) -> std::io::Result<()> {
    nix::mount::mount(
        Some("tracefs"),
        at,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_namespace_other_than_the_hosts_is_refused_with_a_hint() {
        assert!(check_host_pid_namespace(Some(Path::new(HOST_PIDNS))).is_ok());
        let e = check_host_pid_namespace(Some(Path::new("pid:[4026532290]"))).unwrap_err();
        assert!(
            crate::util::error::hint_of(&e)
                .unwrap()
                .contains("--pid=host")
        );
    }
    use crate::util::error::hint_of;

    #[test]
    fn parses_kernel_releases() {
        assert_eq!(parse_release("6.18.44-fc-v595"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn old_kernel_is_refused_with_a_hint() {
        let err = check_kernel_version("5.4.0-150-generic").unwrap_err();
        assert!(err.to_string().contains("too old"));
        assert!(err.to_string().contains("5.8"));
        assert!(hint_of(&err).is_some());
        check_kernel_version("5.8.0").unwrap();
        check_kernel_version("6.18.44").unwrap();
    }

    #[test]
    fn capability_rules() {
        assert!(has_needed_caps(1 << CAP_SYS_ADMIN));
        assert!(has_needed_caps((1 << CAP_BPF) | (1 << CAP_PERFMON)));
        assert!(!has_needed_caps(1 << CAP_BPF));
        assert!(!has_needed_caps(0));
    }
}
