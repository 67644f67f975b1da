//! Installs what building and testing nstrace needs, only where it is missing.
//!
//! bpf-linker is built from crates.io against the LLVM shared library that
//! rustup ships inside the nightly toolchain (no Debian LLVM), and cached under
//! `$NSTRACE_CACHE` (default /var/cache/nstrace) keyed by that toolchain's
//! commit, so it is rebuilt exactly when nightly changes.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::sh;

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages: what the tests and the build call, by package.
/// util-linux: unshare, nsenter, setpriv, lsns; iproute2: ip netns; bpftool:
/// the "nothing left loaded" checks; docker.io and busybox-static: a real
/// container runtime and a local image for the container tests (busybox also
/// runs the VM guests' /init); containerd: `ctr`, for CRI-shaped pods on
/// dockerd's containerd; containernetworking-plugins: the real `bridge` and
/// `loopback` CNI plugins wiring a pod's netns in the leak tests; qemu-system-x86 and cpio: the kernel matrix;
/// prometheus: the server that scrapes `--metrics` in the tests; man-db: the
/// .deb's man page rendered; chromium: the HTML timeline opened headless;
/// python3-venv: the environment of the `perfetto` package that reads the
/// Perfetto traces back; time: GNU time, the bench's peak RSS of a command
/// (forked from its own small process, not from the bench's).
const DEBIAN_PACKAGES: &[&str] = &[
    "util-linux",
    "iproute2",
    "bpftool",
    "ca-certificates",
    "docker.io",
    "containerd",
    "containernetworking-plugins",
    "busybox-static",
    "qemu-system-x86",
    "cpio",
    "prometheus",
    "man-db",
    // musl-gcc: the static build's allocator (mimalloc) is C.
    "musl-tools",
    "chromium",
    "python3-venv",
    "time",
];

/// The Debian packages building needs (crates.io and the toolchain are
/// fetched over TLS).
const BUILD_PACKAGES: &[&str] = &["ca-certificates"];

/// PyPI packages the tests read Perfetto traces with (its trace protos need
/// protobuf 6.31 or later, newer than Debian's).
const PYTHON_PACKAGES: &[&str] = &["perfetto==0.59.1", "protobuf>=6.31.1,<8"];

/// What building and running nstrace needs, nothing more (`cargo xtask
/// build`, `cargo xtask run`): the nightly toolchain's `rust-src` and
/// bpf-linker. A newcomer's first command pulls no browser, VM or daemon.
pub fn for_build() -> Result<()> {
    debian_packages(BUILD_PACKAGES)?;
    nightly_with_rust_src()?;
    let linker = bpf_linker()?;
    eprintln!(
        "xtask: build set-up complete (bpf-linker at {})",
        linker.display()
    );
    Ok(())
}

/// `cargo xtask setup` takes no options: it installs everything.
#[derive(clap::Args)]
pub struct Options {}

pub fn run(_: Options) -> Result<()> {
    everything()
}

/// Everything: the build's needs, and what the tests, the VM matrix, the
/// packaging, the bench and the pictures call.
pub fn everything() -> Result<()> {
    debian_packages(DEBIAN_PACKAGES)?;
    python_env()?;
    for_build()?;
    lint_components()
}

fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Installs those of `packages` that are missing (apt, as root).
pub fn debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}; run `cargo xtask setup` as root",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    sh(Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn rustup() -> Command {
    let mut c = Command::new("rustup");
    // Never let a stray toolchain file trigger a download behind our back.
    c.env("RUSTUP_AUTO_INSTALL", "0");
    c
}

fn nightly_with_rust_src() -> Result<()> {
    // aya-build runs `rustup run nightly`: the plain channel must resolve.
    let has_nightly = rustup()
        .args(["run", "nightly", "rustc", "-V"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_nightly {
        eprintln!("xtask: installing the nightly toolchain (for -Z build-std of the eBPF crate)");
        sh(rustup().args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    // `cargo xtask dist` builds the static binary against musl.
    let targets = output(rustup().args(["target", "list", "--installed"]))?;
    if !targets.lines().any(|l| l == crate::dist::TARGET) {
        eprintln!(
            "xtask: adding the {} target (static builds)",
            crate::dist::TARGET
        );
        sh(rustup().args(["target", "add", crate::dist::TARGET]))?;
    }
    let installed =
        output(rustup().args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to the nightly toolchain");
        sh(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    Ok(())
}

/// What `cargo xtask test`'s lint step runs: rustfmt and clippy on the
/// default toolchain, and clippy on nightly for the eBPF crate.
fn lint_components() -> Result<()> {
    for (toolchain, components) in [
        ("default", &["rustfmt", "clippy"][..]),
        ("nightly", &["clippy"]),
    ] {
        let mut list = rustup();
        list.args(["component", "list", "--installed"]);
        if toolchain != "default" {
            list.args(["--toolchain", toolchain]);
        }
        let installed = output(&mut list)?;
        for component in components {
            if !installed.lines().any(|l| l.starts_with(component)) {
                eprintln!("xtask: adding {component} to the {toolchain} toolchain");
                let mut add = rustup();
                add.args(["component", "add", component]);
                if toolchain != "default" {
                    add.args(["--toolchain", toolchain]);
                }
                sh(&mut add)?;
            }
        }
    }
    Ok(())
}

/// Debian's Python with [`PYTHON_PACKAGES`], in the cache
/// (`$NSTRACE_CACHE/python`); tests run its `bin/python3`.
pub fn python_env() -> Result<()> {
    let env = cache_dir().join("python");
    let python = env.join("bin/python3");
    let ready = Command::new(&python)
        .args([
            "-c",
            "import perfetto.protos.perfetto.trace.perfetto_trace_pb2",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if ready {
        return Ok(());
    }
    eprintln!("xtask: making the Python environment at {}", env.display());
    let _ = std::fs::remove_dir_all(&env);
    sh(Command::new("/usr/bin/python3")
        .arg("-m")
        .arg("venv")
        .arg(&env))?;
    sh(Command::new(env.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(PYTHON_PACKAGES))
}

pub fn cache_dir() -> PathBuf {
    std::env::var_os("NSTRACE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/nstrace"))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cargo")
        })
}

/// (commit hash, LLVM major) of the nightly toolchain.
fn nightly_identity() -> Result<(String, String)> {
    let vv = output(rustup().args(["run", "nightly", "rustc", "-vV"]))?;
    let field = |name: &str| {
        vv.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .with_context(|| format!("`rustc -vV` of nightly has no {name}"))
    };
    let hash: String = field("commit-hash:")?.chars().take(12).collect();
    let llvm = field("LLVM version:")?;
    let major = llvm.split('.').next().unwrap_or_default().to_string();
    Ok((hash, major))
}

fn bpf_linker() -> Result<PathBuf> {
    let (hash, llvm_major) = nightly_identity()?;
    let root = cache_dir().join(format!("bpf-linker-{BPF_LINKER_VERSION}-nightly-{hash}"));
    let binary = root.join("bin/bpf-linker");
    if !binary.exists() {
        build_bpf_linker(&root, &llvm_major)?;
    }
    link_into_path(&binary)?;
    Ok(binary)
}

fn build_bpf_linker(root: &Path, llvm_major: &str) -> Result<()> {
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {llvm_major} (about a minute, once per nightly)"
    );
    let sysroot = output(rustup().args(["run", "nightly", "rustc", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    // The file named by the library's SONAME (libLLVM.so.<ver>-rust-...).
    let libllvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    // llvm-sys wants $LLVM_PREFIX/lib/libLLVM.so; the SONAME link is needed at run time.
    // bpf-linker keeps this directory as its RUNPATH: it lives as long as the build.
    let prefix = sibling(root, "llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in [
        PathBuf::from("libLLVM.so"),
        PathBuf::from(libllvm.file_name().expect("file name")),
    ] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    let staging = sibling(root, "partial");
    let _ = std::fs::remove_dir_all(&staging);
    sh(Command::new("cargo")
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{llvm_major}")])
        .arg("--root")
        .arg(&staging)
        .env("LLVM_PREFIX", &prefix))?;
    // Rename last, so an interrupted build is never taken for a finished one.
    std::fs::rename(&staging, root).context("moving bpf-linker into the cache")?;
    Ok(())
}

/// `<root>-<suffix>` beside `root`.
fn sibling(root: &Path, suffix: &str) -> PathBuf {
    let mut name = root.file_name().expect("cache entry name").to_os_string();
    name.push(format!("-{suffix}"));
    root.with_file_name(name)
}

/// aya-build finds bpf-linker on PATH; cargo's bin directory is on everyone's.
fn link_into_path(binary: &Path) -> Result<()> {
    let bin = cargo_home().join("bin");
    std::fs::create_dir_all(&bin)?;
    let link = bin.join("bpf-linker");
    if std::fs::read_link(&link).ok().as_deref() == Some(binary) {
        return Ok(());
    }
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(binary, &link).with_context(|| format!("linking {}", link.display()))
}
