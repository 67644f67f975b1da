//! Project tasks. `cargo xtask setup` installs everything the build and the
//! tests need (idempotent, seconds when all is there); `run` and `test` do the
//! set-up first, so each is one command on a fresh machine.

mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "nstrace's build, set-up and test tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: Debian packages, the nightly toolchain's
    /// rust-src, bpf-linker (built once, cached under $NSTRACE_CACHE).
    Setup,
    /// Set up, then build target/release/nstrace.
    Build,
    /// Set up, build, and run nstrace with the given arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, check formatting and lints, build, and run every test
    /// (unit tests and the privileged end-to-end tests, as root).
    Test {
        /// Skip `cargo fmt --check` and `cargo clippy`.
        #[arg(long)]
        no_lint: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Build => setup::run().and_then(|()| build()),
        Task::Run { args } => setup::run()
            .and_then(|()| build())
            .and_then(|()| run(&args)),
        Task::Test { no_lint } => setup::run().and_then(|()| test(!no_lint)),
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

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn nstrace_bin() -> PathBuf {
    workspace_root().join("target/release/nstrace")
}

fn build() -> Result<()> {
    sh(cargo().args(["build", "--release", "-p", "nstrace"]))
}

fn run(args: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let err = Command::new(nstrace_bin()).args(args).exec();
    bail!("starting {}: {err}", nstrace_bin().display())
}

fn test(lint: bool) -> Result<()> {
    if lint {
        sh(cargo().args(["fmt", "--all", "--", "--check"]))?;
        sh(cargo().args([
            "clippy",
            "--release",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    build()?;
    // One test at a time: the end-to-end tests each load the real tracer and
    // compare against /proc, and two cores are all CI has.
    sh(cargo()
        .args(["test", "--release", "--", "--test-threads=1"])
        .env("NSTRACE_BIN", nstrace_bin()))
}
