//! Hostile hosts: each case is the attack itself, run against the real
//! tracer, with the attacker an ordinary unprivileged user (uid 65534)
//! wherever the attack needs no privilege. Nothing a process names itself,
//! a path it mounts, the memory it hands the kernel, or a saved trace it
//! writes may crash, stall, blind, spoof or inject through nstrace.

mod attribution;
mod blind;
mod inject;
mod maps;
mod metrics;
mod pins;
mod report;
mod signals;
