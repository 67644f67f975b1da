//! Project tasks. `cargo xtask setup` installs everything the build and the
//! tests need (idempotent, seconds when all is there); `run` and `test` do the
//! set-up first, so each is one command on a fresh machine.

mod bench;
mod dist;
mod docker;
mod libtest;
mod picture;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
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
    /// Set up, then write what users install to target/dist/: a static
    /// binary, a .deb, the man page, shell completions and a container image.
    Dist,
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
        /// Skip the kernel matrix (`vm-test --kernel all`).
        #[arg(long)]
        no_vm: bool,
        /// Skip the second run of the native suite beside a background
        /// load (forks and short-lived namespaces).
        #[arg(long)]
        no_load: bool,
    },
    /// Run the end-to-end scenarios on other kernels under QEMU, in both
    /// probe modes (kernels are downloaded once and cached under $NSTRACE_CACHE).
    VmTest {
        /// 5.10, 6.1, 6.12, 7, all, or the path of a kernel image (a
        /// bzImage/vmlinuz with BTF built in) to run the same plan on your
        /// own kernel.
        #[arg(long, default_value = "all")]
        kernel: String,
        /// Only these parts of the plan, as MODE:TEST (e.g. both:ends);
        /// repeatable.
        #[arg(long)]
        only: Vec<String>,
        /// Run each selected part this many times (to chase a flaky one).
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Only the static binary (`cargo xtask dist`) in a guest without libc.
        #[arg(long)]
        static_binary: bool,
    },
    /// Draw the README's picture, docs/timeline.png: the HTML timeline of a
    /// `docker run`/`exec`/`rm` and an `ip netns` session (as root).
    Picture,
    /// Measure overhead, throughput and loss against bpftrace and strace
    /// (as root; installs bpftrace and strace), and write docs/performance.md.
    Bench {
        /// Alternating rounds per workload; the table shows medians.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Children in the namespace-churn workload.
        #[arg(long, default_value_t = 5000)]
        churn: u64,
        /// fork + exec of /bin/true in the no-namespace workload.
        #[arg(long, default_value_t = 3000)]
        forkexec: u64,
        /// setns round trips in the burst (twice as many join records).
        #[arg(long, default_value_t = 50_000)]
        burst: u64,
        /// fork + _exit per run in the BPF-cost-per-operation tables.
        #[arg(long, default_value_t = 20_000)]
        forkexit: u64,
        /// Namespaces churned in the soak (RSS after 10,000 and after these).
        #[arg(long, default_value_t = 1_000_000)]
        soak: u64,
        /// Print the results only; leave docs/performance.md alone.
        #[arg(long)]
        no_write: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Build => setup::for_build().and_then(|()| build()),
        Task::Dist => setup::run().and_then(|()| dist::run()),
        Task::Picture => setup::run()
            .and_then(|()| build())
            .and_then(|()| picture::run()),
        Task::Run { args } => setup::for_build()
            .and_then(|()| build())
            .and_then(|()| run(&args)),
        Task::Test {
            no_lint,
            no_vm,
            no_load,
        } => setup::run().and_then(|()| test(!no_lint, !no_vm, !no_load)),
        Task::VmTest {
            static_binary: true,
            ..
        } => setup::run()
            .and_then(|()| dist::run())
            .and_then(|()| vm::static_guest(&dist::dist_dir().join("nstrace"))),
        Task::VmTest {
            kernel,
            only,
            repeat,
            static_binary: false,
        } => setup::run().and_then(|()| vm::run(&kernel, &vm::Selection { only, repeat })),
        Task::Bench {
            rounds,
            churn,
            forkexec,
            burst,
            forkexit,
            soak,
            no_write,
        } => setup::run().and_then(|()| {
            bench::run(&bench::Opts {
                rounds,
                churn,
                forkexec,
                burst,
                forkexit,
                soak,
                write: !no_write,
            })
        }),
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

fn test(lint: bool, vm: bool, load: bool) -> Result<()> {
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
    // What users install, for tests/tests/dist.rs.
    dist::run()?;
    let daemon = docker::Daemon::ensure(&workspace_root().join("target/dockerd.log"))?;
    daemon.ensure_image()?;
    native_suite("")?;
    if load {
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
    if vm {
        vm::run("all", &vm::Selection::all())?;
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
