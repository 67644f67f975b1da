//! Command mode (`nstrace -- CMD ARGS`): start the command so that it is
//! followed from its first instruction, and report its exit status.

use std::{
    process::{ExitStatus, Stdio},
    time::Duration,
};

use anyhow::Result;

use crate::{kernel::probes::Probes, util::error::hinted};

/// How long to wait, after the command ended, for the ends of the namespaces
/// it caused (a `docker run --rm` container's teardown finishes after the CLI).
pub const LINGER: Duration = Duration::from_secs(3);

/// Spawns `argv` so that it is followed from its first instruction: while
/// nstrace itself is followed, the kernel marks the child at fork.
pub fn spawn_followed(argv: &[String], probes: &mut Probes) -> Result<tokio::process::Child> {
    let me = std::process::id();
    probes.follow(me)?;
    let spawned = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::inherit())
        .spawn();
    probes.unfollow(me);
    spawned.map_err(|e| {
        hinted(
            format!("cannot run {:?}: {e}", argv[0]),
            "check the command name and that it is on PATH",
        )
    })
}

/// The shell's convention: the code, or 128 + the signal that killed it.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}
