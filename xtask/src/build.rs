//! `cargo xtask build`: what building needs, then target/release/nstrace.

use anyhow::Result;

use crate::{cargo, sh};

#[derive(clap::Args)]
pub struct Options {}

pub fn run(_: Options) -> Result<()> {
    crate::setup::for_build()?;
    release()
}

/// `cargo build --release -p nstrace` (the eBPF object built inside).
pub fn release() -> Result<()> {
    sh(cargo().args(["build", "--release", "-p", "nstrace"]))
}
