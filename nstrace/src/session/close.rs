//! The close: the records still in the ring, the verdicts of namespaces
//! that emptied just before the stop, the `stop` lines, then the closing
//! line and summary, said once.

use std::{
    io::{self},
    time::Duration,
};

use anyhow::Result;

use crate::{
    cli::Cli,
    kernel::probes::Losses,
    output,
    output::summary,
    session::{
        Session,
        run::{DRAIN_INTERVAL, Ended, Tracer},
    },
    sys::time::Clock,
};

/// How long a stop waits for the verdicts of namespaces that emptied just
/// before it: past the last settle re-check (160 ms) and one grace (100 ms).
const FINAL_VERDICTS: Duration = Duration::from_millis(400);

pub async fn close(cli: &Cli, s: Session, ended: Ended) -> Result<i32> {
    let Session {
        mut t,
        mut events,
        mut diagnostics,
        kernel_log,
        pictures,
        ..
    } = s;
    let Ended {
        exit_code,
        mut reported_losses,
        ready,
    } = ended;
    let output_closed = t.outputs.gone();
    // Records already in the ring when the signal came are still the user's,
    // and so are the ends of namespaces that emptied just before: their
    // verdicts come within the settle time of deferred frees, so wait for
    // them (a little) rather than leave them unsaid.
    if !output_closed {
        let until = tokio::time::Instant::now() + FINAL_VERDICTS;
        loop {
            while t.drain(events.get_mut(), i128::MAX) {}
            t.check_ends(events.get_mut());
            let now = tokio::time::Instant::now();
            if !t.ends.undecided() || now >= until {
                break;
            }
            let wait = t.next_wake().unwrap_or(DRAIN_INTERVAL);
            tokio::time::sleep(wait.min(until - now)).await;
        }
        t.report_losses(&mut reported_losses);
    }
    let losses = t.probes.losses();
    if let Some(d) = &mut diagnostics {
        d.get_mut().flush();
    }
    drop(diagnostics);
    drop(events);
    // One end time for the stop line and the summary: `report` on the
    // saved trace then prints the same ages.
    let end_ns = Clock::now_unix_ns();
    t.outputs.stop(end_ns, t.totals.events, losses.records);
    let Tracer {
        outputs,
        probes,
        registry,
        totals,
        ..
    } = t;
    let shown = outputs.shown;
    let (timeline, stdout_error) = outputs.close();
    // Detaches and unloads every program.
    drop(probes);
    if !cli.quiet {
        let mut line = format!(
            "nstrace: {} records ({} kernel events), {} lost",
            shown, totals.events, losses.records
        );
        // What else the kernel side lost, in the loss notices' words. Not
        // what came before tracing began: members met between attach and
        // seeding had no entry yet (not evictions), and runs skipped then
        // could not have told anything.
        let before = Losses {
            records: losses.records,
            by_kind: losses.by_kind,
            forgotten: ready.forgotten,
            skipped_by: ready.skipped_by,
            ..Losses::default()
        };
        if let Some(more) = losses.since(&before, end_ns) {
            for part in output::text::loss_parts(&more) {
                line.push_str(", ");
                line.push_str(&part);
            }
        }
        if totals.undecodable > 0 {
            line.push_str(&format!(", {} undecodable", totals.undecodable));
        }
        eprintln!("{line}");
        if let Some(note) = kernel_log.and_then(|l| l.summary()) {
            eprintln!("{}", crate::util::escape::Escaped(&note));
        }
        eprint!("{}", summary::render(&registry, end_ns));
    }
    if let (Some(p), Some(tl)) = (pictures, timeline) {
        p.write(&tl)?;
    }
    match stdout_error {
        // The reader went away (`nstrace | head`): what it read was whole.
        Some(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("writing the trace to stdout"))
        }
        _ => Ok(exit_code),
    }
}
