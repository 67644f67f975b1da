//! The always-on costs: BPF run time per operation, program by program,
//! for nstrace, the bpftrace script and the floor (empty programs on
//! nstrace's hooks), all in one run; start to ready; RSS over a long soak.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{Background, Bins, run_workload, workload};

pub const FLOOR_SCRIPT: &str = include_str!("../../bench/floor.bt");

/// The tracers compared per operation.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Tracer {
    Nstrace,
    /// nstrace with its kernel diagnostics (a second eBPF object).
    NstraceDebug,
    Bpftrace,
    Floor,
}

impl Tracer {
    pub const ALL: [Tracer; 4] = [
        Tracer::Nstrace,
        Tracer::NstraceDebug,
        Tracer::Bpftrace,
        Tracer::Floor,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tracer::Nstrace => "nstrace",
            Tracer::NstraceDebug => "nstrace --debug",
            Tracer::Bpftrace => "bpftrace script",
            Tracer::Floor => "floor (empty programs, nstrace's hooks)",
        }
    }
}

/// One workload's BPF cost: per tracer, per program (name as bpftool shows
/// it): (run count, run time ns), summed over rounds; `ops` in all.
pub struct Cost {
    pub title: &'static str,
    pub what: String,
    pub ops: u64,
    pub by: BTreeMap<Tracer, BTreeMap<String, (u64, u64)>>,
}

impl Cost {
    /// BPF ns per operation for one tracer, all its programs.
    pub fn per_op(&self, t: Tracer) -> f64 {
        let ns: u64 = self.by.get(&t).map_or(0, |p| p.values().map(|v| v.1).sum());
        ns as f64 / self.ops.max(1) as f64
    }
}

/// Instructions the verifier kept in each of nstrace's programs, without
/// and with `--debug`.
pub fn kept_instructions(bins: &Bins) -> Result<BTreeMap<String, (u64, u64)>> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for debug in [false, true] {
        let before = xlated()?;
        let t = Background::start(
            Command::new(&bins.nstrace)
                .arg("--json")
                .args(debug.then_some("--debug")),
            "nstrace: tracing",
            |_| false,
        )?;
        let at = xlated()?;
        t.stop()?;
        for (id, (name, bytes)) in at {
            if before.contains_key(&id) {
                continue;
            }
            let e = out.entry(name).or_default();
            // A BPF instruction is 8 bytes.
            *(if debug { &mut e.1 } else { &mut e.0 }) = bytes / 8;
        }
    }
    Ok(out)
}

/// (name, bytes_xlated) of every loaded program, by id.
fn xlated() -> Result<BTreeMap<u64, (String, u64)>> {
    loaded(|p| p["bytes_xlated"].as_u64().unwrap_or(0))
}

/// (name, run_cnt, run_time_ns) of every loaded program, by id.
pub fn programs() -> Result<BTreeMap<u64, (String, u64, u64)>> {
    Ok(loaded(|p| {
        (
            p["run_cnt"].as_u64().unwrap_or(0),
            p["run_time_ns"].as_u64().unwrap_or(0),
        )
    })?
    .into_iter()
    .map(|(id, (name, (cnt, ns)))| (id, (name, cnt, ns)))
    .collect())
}

/// (name, what `field` takes from bpftool's JSON) of every loaded program, by id.
fn loaded<T>(field: impl Fn(&serde_json::Value) -> T) -> Result<BTreeMap<u64, (String, T)>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
        .context("running bpftool prog show")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let name = p["name"].as_str().unwrap_or("?").to_string();
            Some((p["id"].as_u64()?, (name, field(p))))
        })
        .collect())
}

/// Starts `tracer`, waits until it is attached, runs `cmd`, stops it;
/// returns what each of the tracer's programs ran during `cmd`.
fn measure(
    bins: &Bins,
    tracer: Tracer,
    scripts: (&Path, &Path),
    cmd: &mut Command,
) -> Result<BTreeMap<String, (u64, u64)>> {
    let before = programs()?;
    // Ready: nstrace's start-up line, bpftrace's "Attaching" line.
    let t = match tracer {
        Tracer::Nstrace | Tracer::NstraceDebug => Background::start(
            Command::new(&bins.nstrace)
                .arg("--json")
                .args((tracer == Tracer::NstraceDebug).then_some("--debug")),
            "nstrace: tracing",
            |_| false,
        ),
        Tracer::Bpftrace | Tracer::Floor => Background::start(
            Command::new("bpftrace").arg(if tracer == Tracer::Bpftrace {
                scripts.0
            } else {
                scripts.1
            }),
            "Attaching",
            |_| false,
        ),
    }
    .with_context(|| format!("starting {}", tracer.name()))?;
    let at = programs()?;
    let run = run_workload(cmd);
    let after = programs()?;
    t.stop()?;
    run?;
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (id, (name, cnt, ns)) in &after {
        if before.contains_key(id) {
            continue;
        }
        let (c0, t0) = at.get(id).map_or((0, 0), |p| (p.1, p.2));
        let e = out.entry(name.clone()).or_default();
        e.0 += cnt.saturating_sub(c0);
        e.1 += ns.saturating_sub(t0);
    }
    Ok(out)
}

/// Container sets of the node workload.
const NODE_SETS: u64 = 20;
pub const NODE_CONTAINERS: &str = "node: fork+exit in the containers";
pub const NODE_HOST: &str = "node: fork+exit on the host";

/// Each row's target (issue 23): nstrace's BPF time per op at most this
/// many times the bpftrace script's.
pub fn target(title: &str) -> f64 {
    match title {
        "host fork+exit" | NODE_HOST => 0.8,
        "namespace churn" => 0.5,
        _ => 1.0,
    }
}

/// The workloads of the hot-path table, each under every tracer,
/// `rounds` times in rotating order.
pub fn costs(
    bins: &Bins,
    scripts: (&Path, &Path),
    rounds: usize,
    forkexit: u64,
    churn: u64,
) -> Result<Vec<Cost>> {
    // A container's namespaces without a runtime: what runc gives a
    // container (no user namespace), entered by unshare before the loop.
    let contained = |n: u64| {
        let mut c = Command::new("unshare");
        c.args([
            "--fork", "--pid", "--mount", "--uts", "--ipc", "--net", "--cgroup",
        ])
        .arg(&bins.nsload)
        .args(["forkexit", &n.to_string()]);
        c
    };
    // A node: NODE_SETS container sets, each a shell forking children.
    let node = |n: u64, busy: &str| {
        let mut c = Command::new(&bins.nsload);
        c.args(["node", &NODE_SETS.to_string(), &n.to_string(), busy]);
        c
    };
    let per_set = (forkexit / NODE_SETS).max(1);
    type Workload<'a> = Box<dyn Fn() -> Command + 'a>;
    let plan: [(&'static str, String, u64, Workload); 5] = [
        (
            "host fork+exit",
            format!("{forkexit} fork + _exit of a process in the host's namespaces"),
            forkexit,
            Box::new(move || workload(bins, "forkexit", forkexit)),
        ),
        (
            "fork+exit in a container's namespaces",
            format!(
                "{forkexit} fork + _exit inside new mnt, uts, ipc, net, pid and cgroup \
                 namespaces (`unshare --fork --pid --mount --uts --ipc --net --cgroup`)"
            ),
            forkexit,
            Box::new(move || contained(forkexit)),
        ),
        (
            "namespace churn",
            format!(
                "{churn} children of the churn workload (clone with CLONE_NEWUTS|CLONE_NEWIPC, \
                 then unshare a UTS namespace, setns back, exit); cost per child"
            ),
            churn,
            Box::new(move || workload(bins, "churn", churn)),
        ),
        (
            NODE_CONTAINERS,
            format!(
                "{NODE_SETS} container-like namespace sets (new mnt, uts, ipc, net, pid and \
                 cgroup namespaces), each a shell forking {per_set} short-lived children \
                 (`( : )` in a loop), all at once: {} fork + exit (`nsload node`)",
                per_set * NODE_SETS
            ),
            per_set * NODE_SETS,
            Box::new(move || node(per_set, "containers")),
        ),
        (
            NODE_HOST,
            format!(
                "the same {NODE_SETS} sets idle while a shell in the host's namespaces \
                 forks {forkexit} short-lived children"
            ),
            forkexit,
            Box::new(move || node(forkexit, "host")),
        ),
    ];
    let mut out = Vec::new();
    for (title, what, n, make) in plan {
        let mut cost = Cost {
            title,
            what,
            ops: 0,
            by: BTreeMap::new(),
        };
        for round in 0..rounds {
            for i in 0..Tracer::ALL.len() {
                let t = Tracer::ALL[(i + round) % Tracer::ALL.len()];
                let progs = measure(bins, t, scripts, &mut make())
                    .with_context(|| format!("{title} under {}", t.name()))?;
                let total: u64 = progs.values().map(|v| v.1).sum();
                eprintln!(
                    "bench: {title} round {} {}: {:.0} ns BPF per operation",
                    round + 1,
                    t.name(),
                    total as f64 / n as f64
                );
                let into = cost.by.entry(t).or_default();
                for (name, (c, ns)) in progs {
                    let e = into.entry(name).or_default();
                    e.0 += c;
                    e.1 += ns;
                }
            }
            cost.ops += n;
        }
        out.push(cost);
    }
    Ok(out)
}

/// Milliseconds from start to the start-up line, `runs` times.
pub fn start_to_ready(bins: &Bins, runs: usize, debug: bool) -> Result<Vec<f64>> {
    let mut ms = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let t = Background::start(
            Command::new(&bins.nstrace).args(debug.then_some("--debug")),
            "nstrace: tracing",
            |_| false,
        )?;
        let took = started.elapsed().as_secs_f64() * 1e3;
        t.stop()?;
        ms.push(took);
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(ms)
}

pub struct Soak {
    pub small: u64,
    pub large: u64,
    pub rss_small_kib: u64,
    pub rss_large_kib: u64,
    pub peak_kib: u64,
    pub lost: u64,
    pub seconds: f64,
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// nstrace (JSON to /dev/null) through `large` churned namespaces: RSS
/// after the first `small`, after all, and the peak.
pub fn soak(bins: &Bins, small: u64, large: u64) -> Result<Soak> {
    // Each churn child makes three namespaces (UTS and IPC by clone, a UTS
    // one by unshare).
    let children = |namespaces: u64| namespaces.div_ceil(3);
    let mut child = Command::new(&bins.nstrace)
        .arg("--json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nstrace")?;
    let pid = child.id();
    let mut err = BufReader::new(child.stderr.take().expect("piped"));
    let mut first = String::new();
    err.read_line(&mut first)?;
    if !first.starts_with("nstrace: tracing") {
        let _ = child.kill();
        bail!("nstrace did not start: {first}");
    }
    let rest = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut all);
        all
    });
    let started = Instant::now();
    run_workload(&mut workload(bins, "churn", children(small)))?;
    std::thread::sleep(Duration::from_millis(500));
    let rss_small_kib = status_kib(pid, "VmRSS:");
    let mut left = children(large).saturating_sub(children(small));
    while left > 0 {
        let chunk = left.min(50_000);
        run_workload(&mut workload(bins, "churn", chunk))?;
        left -= chunk;
        eprintln!(
            "bench: soak: {} namespaces churned, RSS {:.1} MiB",
            3 * (children(large) - left),
            status_kib(pid, "VmRSS:") as f64 / 1024.0
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_large_kib = status_kib(pid, "VmRSS:");
    let peak_kib = status_kib(pid, "VmHWM:");
    let seconds = started.elapsed().as_secs_f64();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let _ = child.wait();
    let closing = rest.join().unwrap_or_default();
    let lines: Vec<String> = closing.lines().map(str::to_string).collect();
    Ok(Soak {
        small,
        large,
        rss_small_kib,
        rss_large_kib,
        peak_kib,
        lost: super::nstrace_lost(&lines)?,
        seconds,
    })
}

/// What `--debug`'s kernel diagnostics cost: per operation, from the same
/// rotation as the rest, what the verifier kept of each program, and start
/// to ready.
fn render_debug(
    w: &mut String,
    costs: &[Cost],
    kept: &BTreeMap<String, (u64, u64)>,
    ready_ms: &[f64],
    debug_ready_ms: &[f64],
) {
    writeln!(w, "## Kernel diagnostics (`--debug`)\n").ok();
    writeln!(
        w,
        "nstrace carries two builds of its eBPF object and loads the one with the \
         aya-log diagnostics only for `--debug` (`nstrace/build.rs`). Off, the \
         programs are those of a build without diagnostics, instruction for \
         instruction: no level check, no map, nothing for the verifier to walk \
         (a unit test asserts the default object holds no aya-log map). \
         What `--debug` costs, measured in the same rotation; no diagnostic fires \
         in these workloads, so this is the price of noting failures:\n"
    )
    .ok();
    writeln!(
        w,
        "| workload | off (default) ns per op | `--debug` ns per op | difference |"
    )
    .ok();
    writeln!(w, "|---|---:|---:|---:|").ok();
    for c in costs {
        let (off, on) = (c.per_op(Tracer::Nstrace), c.per_op(Tracer::NstraceDebug));
        writeln!(
            w,
            "| {} | {off:.0} | {on:.0} | {:+.1}% |",
            c.title,
            (on / off.max(1.0) - 1.0) * 100.0,
        )
        .ok();
    }
    writeln!(
        w,
        "\nInstructions the verifier kept (`bpftool prog show`, bytes_xlated / 8):\n"
    )
    .ok();
    writeln!(w, "| program | off | `--debug` |").ok();
    writeln!(w, "|---|---:|---:|").ok();
    for (name, (off, on)) in kept {
        writeln!(w, "| `{name}` | {off} | {on} |").ok();
    }
    writeln!(
        w,
        "\nStart to ready (median of {}): {:.0} ms off, {:.0} ms with `--debug`.\n",
        ready_ms.len(),
        median(ready_ms),
        median(debug_ready_ms)
    )
    .ok();
}

fn median(v: &[f64]) -> f64 {
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// The markdown of the hot-path tables, and the verdicts on issue 12's
/// targets.
pub fn render(
    costs: &[Cost],
    (ready_ms, debug_ready_ms): (&[f64], &[f64]),
    soak: &Soak,
    cpu_per_record_us: f64,
    (alt_glibc_us, musl_us): (f64, f64),
    peak_rss_kib: u64,
    kept: &BTreeMap<String, (u64, u64)>,
) -> (String, Vec<String>) {
    let mut s = String::new();
    let w = &mut s;
    let mut verdicts = Vec::new();
    writeln!(w, "## Kernel cost per operation (BPF run time)\n").ok();
    writeln!(
        w,
        "What each tracer's BPF programs add to every operation on the machine, \
         from `bpftool prog show` with kernel.bpf_stats_enabled (run time and run \
         count of each program between the tracer's ready line and the workload's \
         end), summed over all rounds and divided by operations. Measured in the same \
         run, tracers in rotating order. The floor is the same hooks as nstrace \
         with empty programs (`xtask/bench/floor.bt`): what the hooks cost before \
         any program does any work, with bpf_stats' own clock reads.\n"
    )
    .ok();
    for c in costs {
        writeln!(w, "### {}\n\n{}.\n", c.title, c.what).ok();
        writeln!(
            w,
            "| tracer | program | runs per op | ns per run | ns per op |"
        )
        .ok();
        writeln!(w, "|---|---|---:|---:|---:|").ok();
        for t in Tracer::ALL {
            let Some(progs) = c.by.get(&t) else { continue };
            let mut rows: Vec<(&String, &(u64, u64))> =
                progs.iter().filter(|(_, v)| v.0 > 0).collect();
            rows.sort_by_key(|(_, v)| std::cmp::Reverse(v.1));
            for (name, (cnt, ns)) in rows {
                writeln!(
                    w,
                    "| {} | `{name}` | {:.2} | {:.0} | {:.0} |",
                    t.name(),
                    *cnt as f64 / c.ops as f64,
                    *ns as f64 / (*cnt).max(1) as f64,
                    *ns as f64 / c.ops as f64
                )
                .ok();
            }
            writeln!(
                w,
                "| **{}** | **all** | | | **{:.0}** |",
                t.name(),
                c.per_op(t)
            )
            .ok();
        }
        let (ns, bt, floor) = (
            c.per_op(Tracer::Nstrace),
            c.per_op(Tracer::Bpftrace),
            c.per_op(Tracer::Floor),
        );
        writeln!(
            w,
            "\nnstrace / bpftrace script: **{:.2}×**; floor {:.0} ns per op.\n",
            ns / bt.max(1.0),
            floor
        )
        .ok();
        let limit = target(c.title);
        verdicts.push(super::verdict(
            ns <= bt * limit,
            format!(
                "{}: nstrace's BPF time per op at most {limit}× the bpftrace script's: \
                 {ns:.0} ns vs {bt:.0} ns ({:.2}×; floor {floor:.0} ns)",
                c.title,
                ns / bt.max(1.0)
            ),
        ));
    }
    render_debug(w, costs, kept, ready_ms, debug_ready_ms);
    let median = median(ready_ms);
    writeln!(w, "## Start to ready\n").ok();
    writeln!(
        w,
        "From exec to the start-up line (programs verified and attached, /proc \
         scanned, member counts seeded), {} runs: median **{median:.0} ms** \
         (all: {}).\n",
        ready_ms.len(),
        ready_ms
            .iter()
            .map(|m| format!("{m:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
    .ok();
    verdicts.push(super::verdict(
        median <= 50.0,
        format!("start to ready at most 50 ms (issue 23): median {median:.0} ms"),
    ));
    writeln!(w, "## User space per record\n").ok();
    writeln!(
        w,
        "nstrace's CPU (user + system, from ready to exit) over the records it \
         wrote, JSON, churn workload, median round: **{cpu_per_record_us:.2} µs per record**.\n"
    )
    .ok();
    writeln!(
        w,
        "The static build `cargo xtask dist` ships (musl libc and its stdio, mimalloc \
         as the allocator) against this glibc build, alternating rounds of the same workload: \
         musl **{musl_us:.2} µs**, glibc {alt_glibc_us:.2} µs per record.\n"
    )
    .ok();
    verdicts.push(super::verdict(
        cpu_per_record_us <= 3.0,
        format!("user-space CPU at most 3 µs per record under churn: {cpu_per_record_us:.2} µs"),
    ));
    verdicts.push(super::verdict(
        musl_us <= 2.0 && musl_us <= alt_glibc_us * 1.05,
        format!(
            "the shipped musl build at most 2 µs per record and no slower than glibc \
             (issue 23): musl {musl_us:.2} µs, glibc {alt_glibc_us:.2} µs"
        ),
    ));
    writeln!(w, "## Soak\n").ok();
    let mib = |k: u64| k as f64 / 1024.0;
    writeln!(
        w,
        "nstrace --json (to /dev/null) while the churn workload made {} namespaces \
         ({:.0} s): RSS **{:.1} MiB** after {}, **{:.1} MiB** after {}; peak {:.1} MiB; \
         {} lost.\n",
        soak.large,
        soak.seconds,
        mib(soak.rss_small_kib),
        soak.small,
        mib(soak.rss_large_kib),
        soak.large,
        mib(soak.peak_kib),
        soak.lost
    )
    .ok();
    let growth = soak.rss_large_kib as f64 - soak.rss_small_kib as f64;
    verdicts.push(super::verdict(
        growth <= 5.0 * 1024.0,
        format!(
            "RSS after {} churned namespaces within 5 MiB of RSS after {}: {:+.1} MiB",
            soak.large,
            soak.small,
            growth / 1024.0
        ),
    ));
    let peak = peak_rss_kib.max(soak.peak_kib);
    verdicts.push(super::verdict(
        peak <= 30 * 1024,
        format!("peak RSS at most 30 MiB: {:.1} MiB", mib(peak)),
    ));
    (s, verdicts)
}
