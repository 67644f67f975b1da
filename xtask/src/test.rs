//! `cargo xtask test`: everything CI runs. Set-up, formatting and lints,
//! the build and what users install, then the unit and end-to-end tests on
//! this machine (twice: alone and beside a background load), then the
//! kernel matrix and the static binary in its own guest.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{cargo, dist, docker, libtest, nstrace_bin, sh, vm, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Skip `cargo fmt --check` and `cargo clippy`.
    #[arg(long)]
    no_lint: bool,
    /// Skip the kernel matrix (`vm-test --kernel all`).
    #[arg(long)]
    no_vm: bool,
    /// Skip the second run of the native suite beside a background
    /// load (forks and short-lived namespaces).
    #[arg(long)]
    no_load: bool,
}

pub fn run(opts: Options) -> Result<()> {
    crate::setup::everything()?;
    if !opts.no_lint {
        sh(cargo().args(["fmt", "--all", "--", "--check"]))?;
        sh(cargo().args([
            "clippy",
            "--release",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        // The kernel programs too: outside the default members (they build
        // only for bpfel, on nightly), so the line above does not see them.
        for features in ["", "diagnostics"] {
            sh(Command::new("rustup").args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "-p",
                "nstrace-ebpf",
                "--features",
                features,
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--release",
                "--",
                "-D",
                "warnings",
            ]))?;
        }
    }
    crate::build::release()?;
    // What users install, for tests/tests/dist.rs.
    dist::build()?;
    let daemon = docker::Daemon::ensure(&workspace_root().join("target/dockerd.log"))?;
    daemon.ensure_image()?;
    native_suite("")?;
    if !opts.no_load {
        // Users' CI machines are busy: the same suite again while another
        // process forks and makes short-lived namespaces all along.
        let noise = KillOnDrop(
            Command::new(workspace_root().join("target/release/nsload"))
                .arg("noise")
                .spawn()
                .context("starting the background load (nsload noise)")?,
        );
        native_suite(" beside a background load")?;
        drop(noise);
    }
    drop(daemon);
    if !opts.no_vm {
        vm::run_plan("all", &vm::Selection::all())?;
        vm::static_guest(&dist::dist_dir().join("nstrace"))?;
    }
    Ok(())
}

/// The unit and end-to-end tests on this machine's kernel.
fn native_suite(how: &str) -> Result<()> {
    // One test at a time: the end-to-end tests each load the real tracer and
    // compare against /proc, and two cores are all CI has.
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--release",
        "--no-fail-fast",
        "--",
        "--test-threads=1",
    ])
    .env("NSTRACE_BIN", nstrace_bin())
    // A privileged test that would skip fails instead: here it must run.
    .env("NSTRACE_REQUIRE_ROOT", "1");
    let (passed, failed, status) = run_counting_tests(&mut cmd)?;
    // cargo test ends on whichever target ran last (often one without tests):
    // close on the totals instead.
    println!("tests{how}: {passed} passed, {failed} failed");
    if !status.success() || failed > 0 {
        bail!("tests{how} failed");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// A child process killed when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd`, echoing its stdout, and adds up cargo's `test result:` lines.
fn run_counting_tests(cmd: &mut Command) -> Result<(u64, u64, std::process::ExitStatus)> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .current_dir(workspace_root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some((p, f)) = libtest::summary(&line) {
            passed += p;
            failed += f;
        }
    }
    Ok((passed, failed, child.wait()?))
}
