//! `cargo xtask run`: a newcomer's first command. It installs only what
//! building needs, builds, and becomes nstrace with the given arguments.

use std::{os::unix::process::CommandExt as _, process::Command};

use anyhow::{Result, bail};

use crate::nstrace_bin;

#[derive(clap::Args)]
pub struct Options {
    /// nstrace's own arguments (`cargo xtask run -- --json`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn run(opts: Options) -> Result<()> {
    crate::setup::for_build()?;
    crate::build::release()?;
    let err = Command::new(nstrace_bin()).args(&opts.args).exec();
    bail!("starting {}: {err}", nstrace_bin().display())
}
