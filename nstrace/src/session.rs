//! One tracing session: checks, load, stream records until a signal, summary.

use std::{
    io::{self, Write},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};

use crate::{
    cli::Cli,
    decode::{self, Decoded},
    error::hinted,
    kernel::{offsets, preflight, probes::Probes},
    output::{self, Sink},
    time::Clock,
};

/// Counts for the closing summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub events: u64,
    pub records: u64,
    pub undecodable: u64,
}

pub async fn run(cli: &Cli) -> Result<()> {
    let host = preflight::check()?;
    let layout = offsets::from_running_kernel().map_err(|e| {
        hinted(
            format!("cannot read the kernel's struct layouts from BTF: {e:#}"),
            "nstrace needs /sys/kernel/btf/vmlinux from a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        )
    })?;
    let mut probes = Probes::load(&layout, cli.buffer_size * 1024 * 1024)?;
    let clock = Clock::now();
    // SAFETY: the AsyncFd owns the ring buffer, so its fd stays open until the
    // AsyncFd has deregistered it.
    let mut events =
        unsafe { AsyncFd::register_with_interest(probes.take_events(), Interest::READABLE) }
            .context("watching the ring buffer")?;

    if !cli.quiet {
        let mut notes = Vec::new();
        if host.mounted_tracefs {
            notes.push(format!("mounted tracefs at {}", host.tracefs.display()));
        }
        if !layout.has_ns_id {
            notes.push("no 64-bit ns_id on this kernel: ns_id is null".into());
        }
        if !layout.missing_kinds.is_empty() {
            let kinds: Vec<_> = layout.missing_kinds.iter().map(|k| k.name()).collect();
            notes.push(format!("not in this kernel: {}", kinds.join(", ")));
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join("; "))
        };
        eprintln!(
            "nstrace: tracing namespaces on Linux {} with tracepoints{notes}; Ctrl-C to stop",
            host.kernel_release
        );
    }

    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));

    let stdout = io::stdout();
    let mut sink = output::sink(cli.json, io::BufWriter::new(stdout.lock()));
    let mut totals = Totals::default();
    let mut reported_losses = probes.losses();
    let mut output_closed = false;

    loop {
        tokio::select! {
            guard = events.readable_mut() => {
                let mut guard = guard.context("waiting for events")?;
                let ring = guard.get_inner_mut();
                if drain(ring, clock, sink.as_mut(), &mut totals).is_err() {
                    output_closed = true;
                    break;
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                let now = probes.losses();
                report_new_losses(reported_losses, now);
                reported_losses = now;
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => break,
        }
    }
    // Records already in the ring when the signal came are still the user's.
    if !output_closed {
        let _ = drain(events.get_mut(), clock, sink.as_mut(), &mut totals);
    }
    let losses = probes.losses();
    report_new_losses(reported_losses, losses);
    drop(sink);
    drop(events);
    drop(probes);
    if !cli.quiet {
        let mut line = format!(
            "nstrace: {} records ({} kernel events), {} lost",
            totals.records, totals.events, losses.records
        );
        if losses.pending > 0 {
            line.push_str(&format!(
                ", {} syscalls missed (in-flight table full)",
                losses.pending
            ));
        }
        if totals.undecodable > 0 {
            line.push_str(&format!(", {} undecodable", totals.undecodable));
        }
        eprintln!("{line}");
    }
    Ok(())
}

/// Prints every event waiting in the ring. Errors only when output is gone.
fn drain(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    clock: Clock,
    sink: &mut dyn Sink,
    totals: &mut Totals,
) -> io::Result<()> {
    while let Some(item) = ring.next() {
        totals.events += 1;
        let decoded = decode::parse(&item).and_then(|e| decode::decode(&e, clock));
        drop(item);
        match decoded {
            Ok(Decoded::Records(records)) => {
                for r in &records {
                    sink.record(r)?;
                    totals.records += 1;
                }
            }
            Ok(Decoded::Process { .. }) => {}
            Err(e) => {
                totals.undecodable += 1;
                eprintln!("nstrace: warning: skipped an undecodable kernel event: {e}");
            }
        }
    }
    sink.flush()
}

fn report_new_losses(before: crate::kernel::probes::Losses, now: crate::kernel::probes::Losses) {
    if now.records > before.records {
        eprintln!(
            "nstrace: warning: {} records lost, ring buffer full ({} in all); raise --buffer-size",
            now.records - before.records,
            now.records
        );
    }
    if now.pending > before.pending {
        eprintln!(
            "nstrace: warning: {} namespace syscalls missed, in-flight table full ({} in all)",
            now.pending - before.pending,
            now.pending
        );
    }
    let _ = io::stderr().flush();
}
