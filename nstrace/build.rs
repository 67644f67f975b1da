//! Builds the eBPF object (nightly, bpfel target) and leaves it in OUT_DIR,
//! where `include_bytes_aligned!` picks it up.
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
    aya_build::build_ebpf(
        [Package {
            name: "nstrace-ebpf",
            root_dir,
            features: if std::env::var_os("CARGO_FEATURE_EBPF_WITHOUT_DIAGNOSTICS").is_some() {
                &["no-diagnostics"]
            } else {
                &[]
            },
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context("building the eBPF programs failed; run `cargo xtask setup` (installs rust-src and bpf-linker)")
}
