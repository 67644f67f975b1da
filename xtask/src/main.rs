//! Project tasks, one module each with its own options (`cargo xtask TASK
//! --help`). `setup` installs everything the build and the tests need
//! (idempotent, seconds when all is there); every other task does the
//! set-up it needs first, so each is one command on a fresh machine: `run`
//! and `build` only what building needs, the rest everything.

mod bench;
mod build;
mod dist;
mod docker;
mod libtest;
mod picture;
mod run;
mod setup;
mod test;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "nstrace's build, set-up and test tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: Debian packages, the nightly toolchain's
    /// rust-src, bpf-linker (built once, cached under $NSTRACE_CACHE).
    Setup(setup::Options),
    /// Set up what building needs, then build target/release/nstrace.
    Build(build::Options),
    /// Set up, then write what users install to target/dist/: a static
    /// binary, a .deb, the man page, shell completions and a container image.
    Dist(dist::Options),
    /// Set up what building needs, build, and run nstrace with the given
    /// arguments.
    Run(run::Options),
    /// Set up, check formatting and lints, build, and run every test
    /// (unit tests and the privileged end-to-end tests, as root).
    Test(test::Options),
    /// Run the end-to-end scenarios on other kernels under QEMU, in both
    /// probe modes (kernels are downloaded once and cached under $NSTRACE_CACHE).
    VmTest(vm::Options),
    /// Draw the README's picture, docs/timeline.png: the HTML timeline of a
    /// `docker run`/`exec`/`rm` and an `ip netns` session (as root).
    Picture(picture::Options),
    /// Measure overhead, throughput and loss against bpftrace and strace
    /// (as root; installs bpftrace and strace), and write docs/performance.md.
    Bench(bench::Options),
}

fn main() {
    let result = match Cli::parse().task {
        Task::Setup(o) => setup::run(o),
        Task::Build(o) => build::run(o),
        Task::Dist(o) => dist::run(o),
        Task::Run(o) => run::run(o),
        Task::Test(o) => test::run(o),
        Task::VmTest(o) => vm::run(o),
        Task::Picture(o) => picture::run(o),
        Task::Bench(o) => bench::run(o),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command in the workspace root, failing on a non-zero exit.
pub fn sh(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub fn nstrace_bin() -> PathBuf {
    workspace_root().join("target/release/nstrace")
}
