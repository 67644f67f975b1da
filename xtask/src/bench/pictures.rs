//! The pictures at scale: a churn of N children saved, then drawn by
//! `nstrace report --html` and `--perfetto` (peak RSS and time of each,
//! beside the trace's size), and the page opened in headless Chromium
//! (time until its script has run, beside a blank page's).

use std::{
    fmt::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{Background, Bins, run_workload, workload};

pub struct Picture {
    pub children: u64,
    pub records: u64,
    pub trace_mib: f64,
    pub html: Drawn,
    pub perfetto: Drawn,
    /// Headless Chromium until the page's script has run, and for a blank page.
    pub load_s: (f64, f64),
}

pub struct Drawn {
    pub mib: f64,
    pub rss_mib: f64,
    pub seconds: f64,
}

fn mib(path: &Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / (1024.0 * 1024.0))
}

/// Lines in `path`, read a block at a time (the trace is not held).
fn lines(path: &Path) -> Result<u64> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0;
    loop {
        let got = f.read(&mut buf)?;
        if got == 0 {
            return Ok(n);
        }
        n += buf[..got].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

/// Runs `cmd` to its end under GNU time; its wall time and peak RSS (MiB).
/// Not by wait4 from here: Linux counts a child's memory before its exec
/// in its ru_maxrss, and a child forked from this process (tens of MiB by
/// the end of a bench) would report this process's size. time forks the
/// command from its own small self.
fn measured(cmd: &Command) -> Result<(f64, f64)> {
    let report = std::env::temp_dir().join(format!("nstrace-bench-rss-{}", std::process::id()));
    let start = Instant::now();
    let status = Command::new("time")
        .args(["--format", "%M", "--output"])
        .arg(&report)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running GNU time (installed by `cargo xtask setup`)")?;
    let seconds = start.elapsed().as_secs_f64();
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    let text = std::fs::read_to_string(&report).context("reading GNU time's report")?;
    let _ = std::fs::remove_file(&report);
    let kib: f64 = text
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("GNU time's report {text:?} has no peak RSS"))?;
    Ok((seconds, kib / 1024.0))
}

/// Seconds headless Chromium takes to load `url` and print its DOM.
fn chromium(url: &str) -> Result<(f64, String)> {
    let start = Instant::now();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1400,900",
            "--dump-dom",
        ])
        .arg(url)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("running chromium (installed by `cargo xtask setup`)")?;
    if !out.status.success() {
        bail!("chromium failed on {url}");
    }
    Ok((
        start.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

pub fn measure(bins: &Bins, sizes: &[u64]) -> Result<Vec<Picture>> {
    let dir = std::env::temp_dir().join("nstrace-bench-pictures");
    std::fs::create_dir_all(&dir)?;
    let blank = dir.join("blank.html");
    std::fs::write(&blank, "<!DOCTYPE html><title>blank</title>")?;
    let mut out = Vec::new();
    for &n in sizes {
        let trace = dir.join(format!("churn-{n}.jsonl"));
        let _ = std::fs::remove_file(&trace);
        // Nothing on stdout (no time namespace is made): the file has all.
        let tracer = Background::start(
            Command::new(&bins.nstrace)
                .arg("--output")
                .arg(&trace)
                .args(["--type", "time"]),
            "tracing namespaces",
            |_| false,
        )?;
        run_workload(&mut workload(bins, "churn", n))?;
        std::thread::sleep(Duration::from_millis(500));
        tracer.stop()?;
        let records = lines(&trace)?;
        let draw = |flag: &str, file: &str| -> Result<Drawn> {
            let path = dir.join(file);
            let (seconds, rss_mib) = measured(
                Command::new(&bins.nstrace)
                    .arg("report")
                    .arg(&trace)
                    .arg(flag)
                    .arg(&path),
            )?;
            Ok(Drawn {
                mib: mib(&path),
                rss_mib,
                seconds,
            })
        };
        let html = draw("--html", "churn.html")?;
        let perfetto = draw("--perfetto", "churn.pftrace")?;
        let (load, dom) = chromium(&format!("file://{}", dir.join("churn.html").display()))?;
        if !dom.contains("data-ready=\"1\"") {
            bail!("the page of {n} children did not finish its script");
        }
        let (blank_s, _) = chromium(&format!("file://{}", blank.display()))?;
        eprintln!(
            "bench: pictures of {n} children: trace {:.1} MiB; html {:.1} MiB in {:.2} s, \
             peak RSS {:.1} MiB; perfetto {:.1} MiB in {:.2} s, peak RSS {:.1} MiB; \
             chromium {load:.2} s (blank {blank_s:.2} s)",
            mib(&trace),
            html.mib,
            html.seconds,
            html.rss_mib,
            perfetto.mib,
            perfetto.seconds,
            perfetto.rss_mib
        );
        out.push(Picture {
            children: n,
            records,
            trace_mib: mib(&trace),
            html,
            perfetto,
            load_s: (load, blank_s),
        });
        let _ = std::fs::remove_file(&trace);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

pub fn render(rows: &[Picture]) -> String {
    let mut s = String::new();
    let w = &mut s;
    writeln!(w, "## Pictures at scale\n").ok();
    writeln!(
        w,
        "The churn workload saved (`nstrace --output`), then drawn from the saved \
         trace by `nstrace report --html` and `--perfetto`: each writer's peak RSS \
         (its whole process) and wall time, and headless Chromium's time to load \
         the page and run its script (`--dump-dom`), beside its time for a blank \
         page. Crowds of short-lived namespaces are drawn as one row (a counter \
         track in Perfetto) per container, kind and command, with a bounded \
         window of detail, so neither picture grows with the namespaces.\n"
    )
    .ok();
    writeln!(
        w,
        "| children | records | trace MiB | page KiB | `--html` peak RSS MiB | s | \
         Perfetto KiB | `--perfetto` peak RSS MiB | s | Chromium s (blank) |"
    )
    .ok();
    writeln!(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|").ok();
    for p in rows {
        writeln!(
            w,
            "| {} | {} | {:.1} | {:.0} | {:.1} | {:.2} | {:.0} | {:.1} | {:.2} | {:.2} ({:.2}) |",
            p.children,
            p.records,
            p.trace_mib,
            p.html.mib * 1024.0,
            p.html.rss_mib,
            p.html.seconds,
            p.perfetto.mib * 1024.0,
            p.perfetto.rss_mib,
            p.perfetto.seconds,
            p.load_s.0,
            p.load_s.1
        )
        .ok();
    }
    let worst = rows
        .iter()
        .map(|p| p.html.rss_mib.max(p.perfetto.rss_mib) / p.trace_mib.max(0.001))
        .fold(0.0, f64::max);
    writeln!(
        w,
        "\n{}\n",
        super::verdict(
            worst <= 2.0,
            format!("peak RSS of a picture at most twice the trace file (worst {worst:.2}×)")
        )
    )
    .ok();
    // Growth: from the smallest trace to the largest, the writers' peak
    // RSS may grow at most as the file does.
    if let (Some(a), Some(b)) = (rows.first(), rows.last()) {
        let rss = |p: &Picture| p.html.rss_mib.max(p.perfetto.rss_mib);
        let file = b.trace_mib / a.trace_mib.max(0.001);
        let mem = rss(b) / rss(a).max(0.001);
        writeln!(
            w,
            "{}\n",
            super::verdict(
                mem <= file.max(1.0),
                format!(
                    "peak RSS grows no faster than the trace ({file:.1}× the file, {mem:.2}× the RSS)"
                )
            )
        )
        .ok();
    }
    s
}
