//! `nstrace report FILE`: a saved JSON trace summed up offline, as the live
//! run summed it up when it stopped.

use std::{
    fs::File,
    io::{self, BufRead as _, BufReader, Write as _},
    path::Path,
};

use anyhow::Result;

use crate::{
    error::hinted,
    output::Pictures,
    output::json::{Line, parse_line},
    record::{Start, Stop},
    registry::Registry,
    summary,
    timeline::Timeline,
};

/// What a saved trace holds, read back.
pub struct Saved {
    pub start: Option<Start>,
    pub stop: Option<Stop>,
    pub registry: Registry,
    /// Namespace records read (lines other than start, stop and lost).
    pub records: u64,
    /// Kernel events the loss notices counted.
    pub lost: u64,
    /// The last record's time: the end, when there is no stop line.
    pub last_ns: i128,
    pub timeline: Timeline,
}

impl Saved {
    /// When the trace ended: its stop line, else its last record.
    pub fn end_ns(&self) -> i128 {
        self.stop.map_or(self.last_ns, |s| s.time_ns)
    }
}

const HINT: &str = "give a file written by `nstrace --output FILE` or `nstrace --json > FILE`";

/// Reads a trace and replays it into a registry.
pub fn read(path: &Path) -> Result<Saved> {
    let file = File::open(path)
        .map_err(|e| hinted(format!("cannot read {}: {e}", path.display()), HINT))?;
    let mut saved = Saved {
        start: None,
        stop: None,
        registry: Registry::default(),
        records: 0,
        lost: 0,
        last_ns: 0,
        timeline: Timeline::default(),
    };
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| hinted(format!("reading {}: {e}", path.display()), HINT))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = parse_line(&line)
            .map_err(|why| hinted(format!("{}, line {}: {why}", path.display(), n + 1), HINT))?;
        match parsed {
            Line::Start(st) => {
                saved.registry = Registry::from_start(&st.alive);
                saved.timeline.start(&st);
                saved.start = Some(st);
            }
            Line::Record(mut r) => {
                saved.records += 1;
                saved.last_ns = saved.last_ns.max(r.time_ns);
                saved.timeline.record(&r);
                saved.registry.replay(&mut r);
            }
            Line::Lost(n) => saved.lost += n,
            Line::Stop(st) => {
                saved.timeline.stop(&st);
                saved.stop = Some(st);
            }
        }
    }
    Ok(saved)
}

/// Prints the closing summary of the trace at `path` (`json`: as one
/// object), and draws the pictures asked for.
pub fn run(path: &Path, json: bool, perfetto: Option<&Path>, html: Option<&Path>) -> Result<()> {
    let pictures = Pictures::create(perfetto, html)?;
    let saved = read(path)?;
    if let Some(p) = pictures {
        p.write(&saved.timeline)?;
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &summary::to_json(&saved))?;
        writeln!(out)?;
        return Ok(());
    }
    write!(out, "{}", summary::closing(&saved))?;
    Ok(())
}
