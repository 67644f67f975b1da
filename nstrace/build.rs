//! Builds the eBPF object (nightly, bpfel target) twice and leaves both in
//! OUT_DIR, where `include_bytes_aligned!` picks them up: `nstrace`, loaded
//! by every run, and `debug/nstrace`, the same programs with the kernel-side
//! diagnostics of `--debug` compiled in. Two objects rather than one with a
//! switch: a switch left in costs every fork a check, and the logging
//! subprograms alone put the programs over 6.1's stack limit.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root_dir = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?
        .join("nstrace-ebpf");
    let root_dir = root_dir.to_str().context("non-UTF-8 path")?;
    println!("cargo:rerun-if-changed=../nstrace-common/src");
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let build = |features: &[&str]| {
        aya_build::build_ebpf(
            [Package {
                name: "nstrace-ebpf",
                root_dir,
                features,
                ..Default::default()
            }],
            Toolchain::default(),
        )
        .context("building the eBPF programs failed; run `cargo xtask setup` (installs rust-src and bpf-linker)")
    };
    build(&[])?;
    // aya-build writes where OUT_DIR points, its cargo target directory
    // included: a directory of its own keeps each build's cache, instead of
    // one rebuilding over the other on every change.
    let debug_dir = out_dir.join("debug");
    std::fs::create_dir_all(&debug_dir)?;
    // SAFETY: a build script is single-threaded here; aya-build reads
    // OUT_DIR before it starts any thread.
    unsafe { std::env::set_var("OUT_DIR", &debug_dir) };
    build(&["diagnostics"])
}
