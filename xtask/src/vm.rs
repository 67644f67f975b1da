//! `cargo xtask vm-test`: the privileged end-to-end tests on other kernels.
//!
//! Debian kernel images are fetched with apt (6.1 and 6.12 from Debian 12's
//! own suites; 5.10 from bullseye and 7.x from sid, each through a private
//! apt configuration that leaves the machine's sources alone, on the mirror
//! those sources name) and cached. `--kernel PATH` boots any bzImage instead. An initramfs carries nstrace, the
//! test binaries, the tools they call and their libraries; each kernel boots
//! under QEMU (TCG), runs the scenarios once per probe mode, and writes the
//! results to a second serial port.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{setup::cache_dir, sh, workspace_root};

/// A kernel line to test: a name, the apt package pattern, and the Debian
/// suite it comes from when the machine's own sources do not carry it
/// (read through a private apt configuration).
struct KernelSpec {
    name: &'static str,
    pattern: &'static str,
    suite: Option<&'static str>,
}

const KERNELS: &[KernelSpec] = &[
    // Debian 11 LTS, the line many fleets still run (and Amazon Linux 2's).
    KernelSpec {
        name: "5.10",
        pattern: r"^linux-image-5\.10\.0-[0-9]+-cloud-amd64-unsigned$",
        suite: Some("bullseye"),
    },
    KernelSpec {
        name: "6.1",
        pattern: r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$",
        suite: None,
    },
    KernelSpec {
        name: "6.12",
        pattern: r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$",
        suite: None,
    },
    KernelSpec {
        name: "7",
        pattern: r"^linux-binary-unsigned-7\.[0-9.]+\+deb[0-9]+-cloud-amd64$",
        suite: Some("sid"),
    },
];

/// (test binary, probe mode, test-name filters): what each guest runs.
/// Tracepoint mode runs the core, lifecycle and end scenarios; fentry mode
/// the lifecycle and end ones (fentry only changes how ends are found);
/// "both" runs the end scenarios under both modes at once and compares them
/// (fentry's kernel-freed is the judge where the kernel has no nsfs handles).
type PlanEntry = (&'static str, &'static str, &'static [&'static str]);

const PLAN: &[PlanEntry] = &[
    ("core", "tracepoint", &[]),
    ("lifecycle", "tracepoint", &[]),
    ("ends", "tracepoint", &[]),
    ("lifecycle", "fentry", &[]),
    ("ends", "fentry", &[]),
    ("ends", "both", &["both_modes_agree"]),
    // What each kernel lets a memberless namespace's holder be named by.
    ("holders", "tracepoint", &[]),
    ("holders", "fentry", &[]),
    (
        "lifecycle_of_tracer",
        "fentry",
        &["ctrl_c", "without_privileges", "debug_loads"],
    ),
    // The attacks on the kernel side: what user memory says, map limits,
    // signals during each kernel's (slower) start-up.
    ("hostile", "tracepoint", &["blind::", "maps::", "signals::"]),
    ("hostile", "fentry", &["blind::", "maps::"]),
];

/// Which parts of [`PLAN`] a guest runs, and how many times over.
pub struct Selection {
    /// `MODE:TEST` entries (e.g. `both:ends`); empty means the whole plan.
    pub only: Vec<String>,
    /// Runs of each selected entry (to catch a flaky scenario).
    pub repeat: usize,
}

impl Selection {
    pub fn all() -> Self {
        Selection {
            only: Vec::new(),
            repeat: 1,
        }
    }

    fn plan(&self) -> Result<Vec<PlanEntry>> {
        for o in &self.only {
            if !PLAN.iter().any(|(t, m, _)| o == &format!("{m}:{t}")) {
                let names: Vec<String> = PLAN.iter().map(|(t, m, _)| format!("{m}:{t}")).collect();
                bail!("no {o:?} in the VM plan; one of {}", names.join(", "));
            }
        }
        let chosen = PLAN
            .iter()
            .filter(|(t, m, _)| self.only.is_empty() || self.only.contains(&format!("{m}:{t}")))
            .copied();
        Ok(chosen
            .flat_map(|e| std::iter::repeat_n(e, self.repeat.max(1)))
            .collect())
    }
}

/// The kernels `--kernel` names: a line of [`KERNELS`], `all`, or the path
/// of a kernel image (a bzImage/vmlinuz built with BTF), for checking
/// nstrace against a fleet's own kernel.
enum Chosen<'a> {
    Lines(Vec<&'a KernelSpec>),
    Image(PathBuf),
}

fn choose(kernel: &str) -> Result<Chosen<'static>> {
    let specs: Vec<&KernelSpec> = KERNELS
        .iter()
        .filter(|k| kernel == "all" || k.name == kernel)
        .collect();
    if !specs.is_empty() {
        return Ok(Chosen::Lines(specs));
    }
    let path = Path::new(kernel);
    if kernel.contains('/') || path.exists() {
        if !path.is_file() {
            bail!("no kernel image at {kernel}");
        }
        return Ok(Chosen::Image(path.canonicalize()?));
    }
    let names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
    bail!(
        "unknown kernel {kernel:?}; one of {}, all, or the path of a kernel image",
        names.join(", ")
    )
}

#[derive(clap::Args)]
pub struct Options {
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
}

pub fn run(opts: Options) -> Result<()> {
    crate::setup::everything()?;
    if opts.static_binary {
        crate::dist::build()?;
        return static_guest(&crate::dist::dist_dir().join("nstrace"));
    }
    run_plan(
        &opts.kernel,
        &Selection {
            only: opts.only,
            repeat: opts.repeat,
        },
    )
}

/// The plan's `selection`, on `kernel` (a name, `all`, or an image's path).
pub fn run_plan(kernel: &str, selection: &Selection) -> Result<()> {
    let plan = selection.plan()?;
    let chosen = choose(kernel)?;
    let bins = build()?;
    let out_dir = workspace_root().join("target/vm");
    std::fs::create_dir_all(&out_dir)?;
    let initrd = out_dir.join("initrd.gz");
    build_initramfs(&bins, &plan, &initrd)?;
    let mut failures = Vec::new();
    let mut summary = String::new();
    // Fetch first (apt is not to be run twice at once), then boot two guests
    // at a time: each has one vCPU, the machine two cores.
    let mut guests = Vec::new();
    let images = match chosen {
        Chosen::Lines(specs) => specs
            .into_iter()
            .map(fetch_kernel)
            .collect::<Result<Vec<_>>>()?,
        Chosen::Image(path) => vec![path],
    };
    for vmlinuz in images {
        // The package's name for a fetched kernel; the file's for one given.
        let version = if vmlinuz.starts_with(cache_dir()) {
            vmlinuz.parent().and_then(|p| p.file_name())
        } else {
            vmlinuz.file_name()
        }
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
        let dir = out_dir.join(&version);
        std::fs::create_dir_all(&dir)?;
        guests.push((version, vmlinuz, dir));
    }
    let parallel = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 2);
    let mut outcomes = Vec::new();
    for batch in guests.chunks(parallel) {
        let done: Vec<Result<Vec<TestResult>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .iter()
                .map(|(_, vmlinuz, dir)| scope.spawn(|| boot_with_retry(vmlinuz, &initrd, dir)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| bail!("guest thread panicked")))
                .collect()
        });
        for ((version, _, dir), results) in batch.iter().zip(done) {
            outcomes.push((version.clone(), dir.clone(), results?));
        }
    }
    for (version, dir, results) in outcomes {
        for r in &results {
            let line = format!(
                "vm-test: {version:<36} {:<10} {:<20} {} passed, {} failed{}",
                r.mode,
                r.test,
                r.passed,
                r.failed,
                if r.ok() {
                    String::new()
                } else {
                    format!("  (log: {})", dir.display())
                }
            );
            println!("{line}");
            let _ = writeln!(summary, "{line}");
            if !r.ok() {
                failures.push(format!("{version} {} {}", r.mode, r.test));
                eprintln!(
                    "--- {version} {} {}: what the guest printed\n{}--- end",
                    r.mode,
                    r.test,
                    failure_part(&r.output)
                );
            }
        }
        if results.is_empty() {
            failures.push(format!("{version}: no results (log: {})", dir.display()));
        }
    }
    let (passed, failed): (u64, u64) = summary
        .lines()
        .filter_map(|l| {
            let p = l
                .split(" passed")
                .next()?
                .rsplit(' ')
                .next()?
                .parse::<u64>()
                .ok()?;
            let f = l
                .split(" failed")
                .next()?
                .rsplit(' ')
                .next()?
                .parse::<u64>()
                .ok()?;
            Some((p, f))
        })
        .fold((0, 0), |(a, b), (p, f)| (a + p, b + f));
    println!("vm-tests: {passed} passed, {failed} failed");
    if !failures.is_empty() {
        bail!("VM tests failed: {}", failures.join("; "));
    }
    Ok(())
}

/// Paths of what goes into the guest.
struct Binaries {
    nstrace: PathBuf,
    nshelper: PathBuf,
    nsload: PathBuf,
    tests: Vec<(String, PathBuf)>,
}

fn build() -> Result<Binaries> {
    sh(Command::new("cargo").args(["build", "--release", "-p", "nstrace"]))?;
    let out = Command::new("cargo")
        .args([
            "test",
            "--release",
            "-p",
            "nstrace-tests",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("building the test binaries")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut tests = Vec::new();
    for message in cargo_metadata::Message::parse_stream(&out.stdout[..]) {
        if let Ok(cargo_metadata::Message::CompilerArtifact(a)) = message {
            let is_test = a.target.kind.contains(&cargo_metadata::TargetKind::Test);
            if let (true, Some(exe)) = (is_test, a.executable) {
                tests.push((a.target.name, exe.into_std_path_buf()));
            }
        }
    }
    let target = workspace_root().join("target/release");
    Ok(Binaries {
        nstrace: target.join("nstrace"),
        nshelper: target.join("nshelper"),
        nsload: target.join("nsload"),
        tests,
    })
}

/// Tools the scenarios call, from the host (with their libraries).
const GUEST_TOOLS: &[&str] = &[
    "/usr/bin/unshare",
    "/usr/bin/nsenter",
    "/usr/bin/setpriv",
    "/bin/bash",
    "/usr/bin/lsns",
    "/usr/bin/sleep",
    "/usr/bin/stat",
    "/usr/bin/timeout",
    "/bin/ip",
    "/usr/sbin/bpftool",
];

fn copy_with_libs(root: &Path, src: &Path, dest: &Path) -> Result<()> {
    let target = root.join(dest.strip_prefix("/").unwrap_or(dest));
    std::fs::create_dir_all(target.parent().expect("has a parent"))?;
    std::fs::copy(src, &target).with_context(|| format!("copying {}", src.display()))?;
    let ldd = Command::new("ldd").arg(src).output()?;
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let to = root.join(lib.trim_start_matches('/'));
        if !to.exists() {
            std::fs::create_dir_all(to.parent().expect("has a parent"))?;
            std::fs::copy(lib, &to).with_context(|| format!("copying {lib}"))?;
        }
    }
    Ok(())
}

fn build_initramfs(bins: &Binaries, plan: &[PlanEntry], out: &Path) -> Result<()> {
    let root = out.with_extension("root");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "dev", "proc", "sys", "tmp", "run", "etc", "t/deps"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    busybox_into(
        &root,
        &[
            "sh", "mount", "umount", "mkdir", "poweroff", "cat", "echo", "ls", "grep", "stty",
            "sync", "uname", "date", "mknod", "true", "false", "env", "id", "seq", "rm",
        ],
    )?;
    for tool in GUEST_TOOLS {
        copy_with_libs(&root, Path::new(tool), Path::new(tool))?;
    }
    copy_with_libs(&root, &bins.nstrace, Path::new("/bin/nstrace"))?;
    // The harness finds nshelper beside the test binaries' directory.
    copy_with_libs(&root, &bins.nshelper, Path::new("/t/nshelper"))?;
    copy_with_libs(&root, &bins.nsload, Path::new("/t/nsload"))?;
    for (name, exe) in &bins.tests {
        if plan.iter().any(|(t, _, _)| t == name) {
            copy_with_libs(&root, exe, &Path::new("/t/deps").join(name))?;
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
    )?;
    pack_initramfs(&root, &init_script(plan), out)
}

/// Static busybox as the root's /bin/busybox, with `applets` linked to it.
fn busybox_into(root: &Path, applets: &[&str]) -> Result<()> {
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("static busybox (busybox-static)")?;
    for applet in applets {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    Ok(())
}

/// Writes `init` as the root's /init and packs the root into a gzipped
/// newc cpio at `out`.
fn pack_initramfs(root: &Path, init: &str, out: &Path) -> Result<()> {
    let path = root.join("init");
    std::fs::write(&path, init)?;
    sh(Command::new("chmod").arg("755").arg(&path))?;
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
            root.display(),
            out.display()
        ))
        .status()?;
    if !status.success() {
        bail!("building the initramfs failed (needs cpio)");
    }
    Ok(())
}

/// The guest's /init: mount what nstrace needs, run the plan, power off.
/// Everything structured goes to /dev/ttyS1 (the host's out.log).
fn init_script(plan: &[PlanEntry]) -> String {
    let mut s = String::from(
        r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tracefs tracefs /sys/kernel/tracing; mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp
stty -F /dev/ttyS1 raw 2>/dev/null
out=/dev/ttyS1
echo "BOOTED $(uname -r)" > $out
export NSTRACE_BIN=/bin/nstrace NSTRACE_REQUIRE_ROOT=1
"#,
    );
    // --report-time puts each test's time in out.log: under TCG the
    // verifier's work at every tracer start is most of a test's time.
    // --show-output keeps a passing test's "skipped: ..." line, so out.log
    // says what a kernel could not show instead of a bare "ok".
    for (test, mode, filters) in plan {
        let filters = filters.join(" ");
        let env = match *mode {
            "both" => "NSTRACE_BOTH_MODES=1 NSTRACE_PROBE_MODE=auto".to_string(),
            m => format!("NSTRACE_PROBE_MODE={m}"),
        };
        let _ = writeln!(
            s,
            "echo '=== BEGIN {mode} {test}' > $out\n\
             {env} RUSTC_BOOTSTRAP=1 /t/deps/{test} --test-threads=1 \
             -Zunstable-options --report-time --show-output {filters} > $out 2>&1\n\
             echo \"=== END {mode} {test} rc=$?\" > $out"
        );
    }
    // Start-up without BTF: one-line cause, hint, exit 1.
    s.push_str(
        r#"echo '=== BEGIN tracepoint no_btf' > $out
mount -t tmpfs none /sys/kernel/btf
/bin/nstrace > /tmp/nobtf.out 2>&1; rc=$?
cat /tmp/nobtf.out > $out
if [ $rc = 1 ] && grep -q 'exposes no BTF' /tmp/nobtf.out && grep -q 'hint:' /tmp/nobtf.out; then
  echo 'test result: ok. 1 passed; 0 failed' > $out
else
  echo 'test result: FAILED. 0 passed; 1 failed' > $out
fi
echo "=== END tracepoint no_btf rc=0" > $out
echo DONE > $out
sync
poweroff -f
"#,
    );
    s
}

struct TestResult {
    mode: String,
    test: String,
    passed: u64,
    failed: u64,
    rc: Option<i32>,
    /// The section's output, shown when it failed (CI keeps no guest logs).
    output: String,
}

impl TestResult {
    fn ok(&self) -> bool {
        self.failed == 0 && self.passed > 0 && self.rc == Some(0)
    }
}

/// Reads the BEGIN/END sections of the guest's structured output.
fn parse_results(out: &str) -> Vec<TestResult> {
    let mut results: Vec<TestResult> = Vec::new();
    for line in out.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("=== BEGIN ") {
            let mut f = rest.split_whitespace();
            results.push(TestResult {
                mode: f.next().unwrap_or_default().to_string(),
                test: f.next().unwrap_or_default().to_string(),
                passed: 0,
                failed: 0,
                rc: None,
                output: String::new(),
            });
            continue;
        }
        if let Some((passed, failed)) = crate::libtest::summary(line) {
            if let Some(r) = results.last_mut() {
                r.passed += passed;
                r.failed += failed;
            }
        }
        if let Some(r) = results.last_mut() {
            r.output.push_str(line);
            r.output.push('\n');
        }
        if let Some(rest) = line.strip_prefix("=== END ") {
            if let Some(r) = results.last_mut() {
                r.rc = rest
                    .rsplit("rc=")
                    .next()
                    .and_then(|n| n.trim().parse().ok());
            }
        }
    }
    results
}

/// The part of a failed section worth reading: from libtest's `failures:`
/// on, or its last 80 lines.
fn failure_part(output: &str) -> String {
    if let Some(at) = output.find("\nfailures:\n") {
        return output[at + 1..].to_string();
    }
    let lines: Vec<&str> = output.lines().collect();
    let from = lines.len().saturating_sub(80);
    lines[from..].iter().map(|l| format!("{l}\n")).collect()
}

fn boot_with_retry(vmlinuz: &Path, initrd: &Path, dir: &Path) -> Result<Vec<TestResult>> {
    for attempt in 1..=2 {
        let started = Instant::now();
        let out = boot(vmlinuz, initrd, dir)?;
        if out.contains("BOOTED") {
            eprintln!(
                "xtask: {} ran in {:.0?}",
                vmlinuz.display(),
                started.elapsed()
            );
            if !out.contains("DONE") {
                eprintln!(
                    "xtask: the guest stopped before the end of its plan; see {}",
                    dir.display()
                );
            }
            return Ok(parse_results(&out));
        }
        eprintln!(
            "xtask: guest did not boot (attempt {attempt}); console in {}",
            dir.join("console.log").display()
        );
    }
    Ok(Vec::new())
}

fn boot(vmlinuz: &Path, initrd: &Path, dir: &Path) -> Result<String> {
    let out = dir.join("out.log");
    let console = dir.join("console.log");
    let _ = std::fs::remove_file(&out);
    let status = Command::new("timeout")
        .arg("900")
        .arg("qemu-system-x86_64")
        // One vCPU: with two, TCG raced the kernel's live patching of
        // tracepoint call sites (an int3 oops in syscall_trace_enter on 6.12).
        .args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max,-cx16",
            "-smp",
            "1",
            "-m",
            "1G",
        ])
        .args(["-nographic", "-nodefaults", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", out.display()))
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .status()
        .context("starting qemu-system-x86_64 (Debian package qemu-system-x86)")?;
    if !status.success() {
        eprintln!("xtask: qemu exited with {status}");
    }
    Ok(std::fs::read_to_string(&out).unwrap_or_default())
}

/// The Debian mirror this machine's apt reads (`URIs:` of a deb822
/// `.sources` file, else a `deb` line of `sources.list`), not its security
/// archive: the private configurations read other suites from the same
/// mirror, so no host name is written here.
fn debian_mirror() -> Result<String> {
    let mut texts = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "sources" || e == "list"))
            .collect();
        files.sort();
        texts.extend(files.iter().filter_map(|f| std::fs::read_to_string(f).ok()));
    }
    texts.extend(std::fs::read_to_string("/etc/apt/sources.list").ok());
    texts
        .iter()
        .find_map(|t| mirror_in(t))
        .context("no Debian mirror in /etc/apt/sources.list or /etc/apt/sources.list.d")
}

/// The first non-security `deb` mirror in one sources file (deb822 or
/// one-line format).
fn mirror_in(text: &str) -> Option<String> {
    let usable = |uri: &str, suites: &str| {
        (uri.starts_with("http://") || uri.starts_with("https://") || uri.starts_with("file:"))
            && !suites.split_whitespace().any(|s| s.ends_with("-security"))
            && !uri.trim_end_matches('/').ends_with("-security")
    };
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        if let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) {
            let debs = field("Types").is_none_or(|t| t.split_whitespace().any(|t| t == "deb"));
            if let Some(uri) = uris.split_whitespace().find(|u| debs && usable(u, &suites)) {
                return Some(uri.trim_end_matches('/').to_string());
            }
        }
    }
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        if w.next()? != "deb" {
            return None;
        }
        let mut uri = w.next()?;
        if uri.starts_with('[') {
            // Options: `[arch=amd64 signed-by=...]`.
            while !uri.ends_with(']') {
                uri = w.next()?;
            }
            uri = w.next()?;
        }
        let suite = w.next()?;
        usable(uri, suite).then(|| uri.trim_end_matches('/').to_string())
    })
}

/// A private apt configuration reading `suite` of the machine's mirror,
/// with its own lists and cache.
fn private_apt_config(suite: &str) -> Result<PathBuf> {
    let base = cache_dir().join(format!("apt-{suite}"));
    for d in [
        "etc/sources.list.d",
        "etc/preferences.d",
        "state/lists/partial",
        "cache/archives/partial",
    ] {
        std::fs::create_dir_all(base.join(d))?;
    }
    std::fs::write(
        base.join("etc/sources.list"),
        format!("deb {} {suite} main\n", debian_mirror()?),
    )?;
    let status = base.join("state/status");
    if !status.exists() {
        std::fs::write(&status, "")?;
    }
    let b = base.display();
    let conf = base.join("apt.conf");
    std::fs::write(
        &conf,
        format!(
            "Dir::Etc::SourceList \"{b}/etc/sources.list\";\n\
             Dir::Etc::SourceParts \"{b}/etc/sources.list.d\";\n\
             Dir::Etc::Preferences \"{b}/etc/preferences\";\n\
             Dir::Etc::PreferencesParts \"{b}/etc/preferences.d\";\n\
             Dir::State \"{b}/state\";\n\
             Dir::State::status \"{b}/state/status\";\n\
             Dir::Cache \"{b}/cache\";\n\
             APT::Architecture \"amd64\";\n"
        ),
    )?;
    Ok(conf)
}

fn apt(private: Option<&Path>) -> Command {
    let mut c = Command::new("apt-cache");
    if let Some(conf) = private {
        c.env("APT_CONFIG", conf);
    }
    c
}

/// The newest package matching the spec, refreshing apt's lists once if needed.
fn newest_package(spec: &KernelSpec, private: Option<&Path>) -> Result<Option<String>> {
    let search = |private: Option<&Path>| -> Result<Vec<String>> {
        let out = apt(private)
            .args(["search", "--names-only", spec.pattern])
            .output()?;
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect();
        names.sort_by_key(|n| version_key(n));
        Ok(names)
    };
    let mut names = search(private)?;
    if names.is_empty() {
        let mut update = Command::new("apt-get");
        update.arg("update").stdout(Stdio::null());
        if let Some(conf) = private {
            update.env("APT_CONFIG", conf);
        }
        let _ = update.status();
        names = search(private)?;
    }
    Ok(names.pop())
}

/// Numbers in a package name, for ordering versions.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The cached vmlinuz of the newest kernel of a line, downloading it if missing.
fn fetch_kernel(spec: &KernelSpec) -> Result<PathBuf> {
    let kernels = cache_dir().join("kernels");
    std::fs::create_dir_all(&kernels)?;
    let private = spec.suite.map(private_apt_config).transpose()?;
    let package = newest_package(spec, private.as_deref())?;
    let cached_any = || -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&kernels)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("vmlinuz").exists())
            .filter(|p| {
                let n = p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                regex_lite_match(spec.pattern, &n)
            })
            .collect();
        dirs.sort_by_key(|p| version_key(&p.to_string_lossy()));
        dirs.pop().map(|d| d.join("vmlinuz"))
    };
    let Some(package) = package else {
        // Offline, but a kernel of this line is cached: use it.
        return cached_any().with_context(|| format!("no Debian package for kernel {}", spec.name));
    };
    let dir = kernels.join(&package);
    let vmlinuz = dir.join("vmlinuz");
    if vmlinuz.exists() {
        return Ok(vmlinuz);
    }
    eprintln!("xtask: downloading {package}");
    let work = kernels.join(format!("{package}.partial"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let mut dl = Command::new("apt-get");
    dl.args(["download", &package]).current_dir(&work);
    if let Some(conf) = &private {
        dl.env("APT_CONFIG", conf);
    }
    let st = dl.status()?;
    if !st.success() {
        bail!("apt-get download {package} failed");
    }
    let deb = std::fs::read_dir(&work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("downloaded no .deb")?;
    let x = work.join("x");
    sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x))?;
    let image = find_image(&x).context("no kernel image in the package")?;
    std::fs::copy(&image, work.join("vmlinuz"))?;
    let _ = std::fs::remove_dir_all(&x);
    let _ = std::fs::remove_file(&deb);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&work, &dir)?;
    Ok(vmlinuz)
}

/// `boot/vmlinuz-*` (Debian 12) or `usr/lib/modules/*/vmlinuz*` (7.x).
fn find_image(x: &Path) -> Option<PathBuf> {
    let boot = x.join("boot");
    let from = |dir: &Path, prefix: &str| -> Option<PathBuf> {
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
    };
    if let Some(p) = from(&boot, "vmlinuz") {
        return Some(p);
    }
    let modules = x.join("usr/lib/modules");
    for e in std::fs::read_dir(&modules).ok()?.filter_map(|e| e.ok()) {
        if let Some(p) = from(&e.path(), "vmlinuz") {
            return Some(p);
        }
    }
    None
}

/// Whether a cached kernel's name is of `pattern`'s line (used when apt
/// has no lists, offline).
fn regex_lite_match(pattern: &str, s: &str) -> bool {
    regex_lite::Regex::new(pattern).is_ok_and(|re| re.is_match(s))
}

/// The static binary from `cargo xtask dist` in a guest with nothing else:
/// static busybox and nstrace, no libc, no loader. It must trace an
/// `unshare -u` there, with the inode the guest's /proc shows.
pub fn static_guest(binary: &Path) -> Result<()> {
    let spec = KERNELS
        .iter()
        .find(|k| k.name == "6.12")
        .expect("6.12 is in the matrix");
    let vmlinuz = fetch_kernel(spec)?;
    let dir = workspace_root().join("target/vm/static");
    std::fs::create_dir_all(&dir)?;
    let root = dir.join("root");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "dev", "proc", "sys", "tmp"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    busybox_into(
        &root,
        &[
            "sh", "mount", "poweroff", "cat", "echo", "grep", "stty", "sleep", "kill", "readlink",
            "unshare", "ls",
        ],
    )?;
    std::fs::copy(binary, root.join("nstrace"))?;
    let initrd = dir.join("initrd.gz");
    pack_initramfs(
        &root,
        r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmpfs /tmp
stty -F /dev/ttyS1 raw 2>/dev/null
out=/dev/ttyS1
echo "BOOTED $(uname -r)" > $out
echo "LIBS $(ls /lib /lib64 /usr 2>&1 | grep -v 'No such' | grep -c .)" > $out
/nstrace --json > /tmp/out 2> /tmp/err &
p=$!
i=0
while ! grep -q 'tracing namespaces' /tmp/err && [ $i -lt 600 ]; do sleep 0.2; i=$((i+1)); done
unshare -u sleep 2 &
s=$!
sleep 1
echo "WANT $(readlink /proc/$s/ns/uts)" > $out
sleep 2
kill -INT $p
wait $p
echo "RC $?" > $out
cat /tmp/out /tmp/err > $out
echo DONE > $out
poweroff -f
"#,
        &initrd,
    )?;
    let out = boot(&vmlinuz, &initrd, &dir)?;
    let verdict = static_verdict(&out);
    println!(
        "vm-test: static binary in a guest without libc: {}",
        verdict
            .as_ref()
            .map_or_else(|e| format!("FAILED: {e}"), |()| "passed".into())
    );
    verdict.map_err(|e| anyhow::anyhow!("static guest: {e}; guest printed:\n{out}"))
}

fn static_verdict(out: &str) -> std::result::Result<(), String> {
    let field = |p: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(p))
            .map(str::to_string)
    };
    if field("LIBS ").as_deref() != Some("0") {
        return Err("the guest has a /lib, /lib64 or /usr".into());
    }
    if field("RC ").as_deref() != Some("0") {
        return Err(format!("nstrace exited with {:?}", field("RC ")));
    }
    let want = field("WANT uts:[")
        .and_then(|w| w.trim_end_matches(']').parse::<u64>().ok())
        .ok_or("no inode of the unshared process")?;
    let seen = out.lines().any(|l| {
        serde_json::from_str::<serde_json::Value>(l)
            .is_ok_and(|v| v["event"] == "create" && v["ns_type"] == "uts" && v["ns_inode"] == want)
    });
    if seen {
        Ok(())
    } else {
        Err(format!("no create of uts:[{want}]"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_kernel_names_match_their_line() {
        assert!(regex_lite_match(
            KERNELS[0].pattern,
            "linux-image-5.10.0-32-cloud-amd64-unsigned"
        ));
        assert!(regex_lite_match(
            KERNELS[1].pattern,
            "linux-image-6.1.0-56-cloud-amd64-unsigned"
        ));
        assert!(!regex_lite_match(
            KERNELS[1].pattern,
            "linux-image-6.12.117+deb12-cloud-amd64-unsigned"
        ));
        assert!(regex_lite_match(
            KERNELS[2].pattern,
            "linux-image-6.12.117+deb12-cloud-amd64-unsigned"
        ));
        assert!(regex_lite_match(
            KERNELS[3].pattern,
            "linux-binary-unsigned-7.2.13+deb14-cloud-amd64"
        ));
        assert!(!regex_lite_match(
            KERNELS[3].pattern,
            "linux-binary-unsigned-7.2.13+deb14-amd64"
        ));
    }

    #[test]
    fn the_mirror_is_read_from_either_sources_format() {
        let deb822 = "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
                      Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            mirror_in(deb822).as_deref(),
            Some("http://mirror.example/debian")
        );
        let security_first = "Types: deb\nURIs: http://m.example/debian-security/\nSuites: bookworm-security\n\n\
                              Types: deb-src deb\nURIs: http://m.example/debian/\nSuites: bookworm\n";
        assert_eq!(
            mirror_in(security_first).as_deref(),
            Some("http://m.example/debian")
        );
        let one_line = "# deb http://old.example/debian sid main\n\
                        deb http://security.example/debian-security bookworm-security main\n\
                        deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian/ bookworm main\n";
        assert_eq!(
            mirror_in(one_line).as_deref(),
            Some("http://m.example/debian")
        );
        assert_eq!(
            mirror_in("deb-src http://m.example/debian bookworm main\n"),
            None
        );
    }

    #[test]
    fn a_kernel_is_a_line_or_a_path() {
        assert!(matches!(choose("5.10"), Ok(Chosen::Lines(l)) if l.len() == 1));
        assert!(matches!(choose("all"), Ok(Chosen::Lines(l)) if l.len() == KERNELS.len()));
        assert!(matches!(choose("/proc/self/exe"), Ok(Chosen::Image(_))));
        let e = choose("/nonexistent/bzImage").err().unwrap().to_string();
        assert!(e.contains("no kernel image"), "{e}");
        assert!(choose("4.19").is_err());
    }

    #[test]
    fn parses_guest_results() {
        let out = "BOOTED 6.1\n=== BEGIN tracepoint core\nrunning 2 tests\n\
                   test result: ok. 2 passed; 0 failed; 0 ignored\n=== END tracepoint core rc=0\n\
                   === BEGIN fentry lifecycle\ntest result: FAILED. 1 passed; 1 failed;\n\
                   === END fentry lifecycle rc=101\nDONE\n";
        let r = parse_results(out);
        assert_eq!(r.len(), 2);
        assert!(r[0].ok());
        assert_eq!((r[1].passed, r[1].failed, r[1].rc), (1, 1, Some(101)));
        assert!(!r[1].ok());
        assert!(
            version_key("linux-image-6.12.117+deb12") > version_key("linux-image-6.12.99+deb12")
        );
    }
}
