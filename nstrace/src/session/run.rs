//! The loop: drain the ring up to a moment, decode, update the state, check
//! the ends due, and write each record to the sinks, until a stop.

use std::{
    io::{self, IsTerminal as _},
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{
    enrich::container,
    kernel::decode,
    kernel::probes::{Losses, Probes},
    model::{EndCause, EventType, NsKind},
    output::{self, outputs::Outputs},
    session::{Session, command},
    state::ends::{self, Ends},
    state::{leaks::Leaks, records, registry::Registry},
    sys::time::Clock,
};

/// Counts for the closing summary (the records shown are the outputs').
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub events: u64,
    pub undecodable: u64,
}

/// Everything a running trace keeps.
pub struct Tracer<'a> {
    pub(super) clock: Clock,
    /// Metrics, `--output FILE`, the pictures, stdout; and the filters.
    pub(super) outputs: Outputs<'a>,
    pub(super) probes: Probes,
    pub(super) registry: Registry,
    pub(super) ends: Ends,
    /// Held namespaces whose container went: told once, `--leak-after` on.
    pub(super) leaks: Leaks,
    pub(super) totals: Totals,
    pub(super) containers: container::Resolver,
    /// Command mode while the command runs: containers created now are its.
    pub(super) collect_caused: bool,
    /// An event read past a drain's limit, handled first by the next drain.
    pub(super) held: Option<decode::Decoded>,
}

/// Drains are at least this far apart: each then handles a batch, and the
/// checks of namespaces it emptied are asked together, instead of once per
/// wakeup. Records wait this long at most.
pub(super) const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

impl<'a> Tracer<'a> {
    /// Handles the events waiting in the ring that are stamped up to
    /// `until`; the first later one is held for the next drain (so a steady
    /// stream cannot keep one drain going, and verdicts read at `until` come
    /// after every event before it). Returns whether events were left.
    pub(super) fn drain(
        &mut self,
        ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
        until: i128,
    ) -> bool {
        let mut more = false;
        let mut read = 0u64;
        loop {
            let d = match self.held.take() {
                Some(d) => d,
                None => {
                    let Some(item) = ring.next() else {
                        break;
                    };
                    read += 1;
                    self.totals.events += 1;
                    let decoded = decode::parse(&item).and_then(|e| decode::decode(&e, self.clock));
                    drop(item);
                    match decoded {
                        Ok(d) => d,
                        Err(e) => {
                            self.totals.undecodable += 1;
                            eprintln!(
                                "nstrace: warning: skipped an undecodable kernel event: {}",
                                crate::util::escape::Escaped(&e.to_string())
                            );
                            continue;
                        }
                    }
                }
            };
            if d.time_ns > until {
                self.held = Some(d);
                more = true;
                break;
            }
            self.handle(d);
        }
        if let Some(m) = self.outputs.metrics() {
            // Each record: its 8-byte ring header and the event, 8-aligned.
            let each = (8 + std::mem::size_of::<nstrace_common::Event>()).next_multiple_of(8);
            m.ring_backlog(read * each as u64);
        }
        self.outputs.flush();
        more
    }

    /// Asks about the namespaces whose check is due, then handles every event
    /// stamped before the answer, then reports what the answer means.
    /// Returns whether events were left in the ring.
    pub(super) fn check_ends(&mut self, ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> bool {
        let now = self.clock.now_as_event_ns();
        if !self.ends.due(now) {
            return false;
        }
        let verdicts = self
            .ends
            .check(now, &self.registry, &mut self.probes, &mut ends::Procfs);
        let more = self.drain(ring, now);
        for r in self.ends.apply(verdicts, now, &mut self.registry) {
            self.outputs.record(&r);
        }
        self.outputs.flush();
        more
    }

    /// Tells the suspect leaks due now.
    pub(super) fn check_leaks(&mut self) {
        let now = self.clock.now_as_event_ns();
        let ends = &self.ends;
        let leaks = self.leaks.check(now, &mut self.registry, |keys, reg| {
            ends.holders_now(keys, reg, &mut ends::Procfs)
        });
        for r in leaks {
            self.outputs.record(&r);
        }
        self.outputs.flush();
    }

    /// When the loop must wake without a ring wakeup: the next check due,
    /// or soon when an event is held back from the last drain.
    pub(super) fn next_wake(&self) -> Option<Duration> {
        let now = self.clock.now_as_event_ns();
        let held = self
            .held
            .as_ref()
            .map(|_| now + DRAIN_INTERVAL.as_nanos() as i128);
        let at = match (self.ends.next_due(), held) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(Duration::from_nanos((at - now).max(0) as u64))
    }

    /// A `lost` notice in the stream for anything dropped since `reported`;
    /// on stderr too when the stream is not in front of the user.
    pub(super) fn report_losses(&mut self, reported: &mut Losses) {
        let now = self.probes.losses();
        let Some(loss) = now.since(reported, Clock::now_unix_ns()) else {
            return;
        };
        *reported = now;
        if !io::stdout().is_terminal() {
            eprintln!("nstrace: warning: {}", output::text::loss_summary(&loss));
        }
        self.outputs.lost(&loss);
        self.outputs.flush();
    }

    pub(super) fn handle(&mut self, d: decode::Decoded) {
        for mut r in d.records {
            if let Some(a) = &r.actor {
                r.container = self.containers.for_actor(a);
            }
            if self.collect_caused && r.event == EventType::Create {
                if let Some(c) = &r.container {
                    let extra = &mut self.outputs.filter.extra_containers;
                    if !extra.contains(&c.id) {
                        extra.push(c.id.clone());
                    }
                }
            }
            if let Some(stale) = self.registry.observe(&mut r) {
                // The kernel reused the inode of a namespace whose end we did
                // not see: it has certainly ended. Say so, late, then the create.
                let time = r.time_ns;
                let cause = self.ends.forget(stale.key());
                let e = self.registry.end_entry(stale, time);
                let end = records::destroy(e, cause.unwrap_or(EndCause::InodeReused), None, None);
                self.outputs.record(&end);
            }
            if r.event == EventType::Join {
                if let (Some(k), Some(i)) = (r.kind, r.inode) {
                    self.ends.on_joined((k, i));
                }
            }
            self.outputs.record(&r);
        }
        if let Some(pidns) = d.reaper_of {
            if let (Some(e), Some(a)) = (self.registry.get_mut((NsKind::Pid, pidns)), &d.actor) {
                e.init_exited = Some(a.pid);
                if let Some(ino) = d.init_pid_ino {
                    e.init_pidfs = Some((a.pid, ino));
                }
            }
        }
        if let Some(r) = d
            .freed
            .and_then(|n| self.ends.on_freed(n, d.time_ns, &mut self.registry))
        {
            self.outputs.record(&r);
        }
        if !d.emptied.is_empty() {
            self.ends
                .on_emptied(&d.emptied, d.actor.as_ref(), d.time_ns, &mut self.registry);
        }
        if let (true, Some(a)) = (d.exited, &d.actor) {
            if a.pid == a.tid {
                self.containers.forget(a.pid);
            }
        }
    }

    /// Command mode, after the command ended: are namespaces it (or its
    /// containers) created still alive? Then their ends are still to come.
    pub(super) fn caused_alive(&self) -> bool {
        self.registry.alive().any(|e| {
            e.born.is_some()
                && (e.followed
                    || e.container
                        .as_ref()
                        .is_some_and(|c| self.outputs.filter.extra_containers.contains(&c.id)))
        })
    }
}

/// How the loop ended, for the close.
pub struct Ended {
    pub(super) exit_code: i32,
    pub(super) reported_losses: Losses,
    /// The kernel side's losses when tracing began.
    pub(super) ready: Losses,
}

pub async fn until_stop(s: &mut Session) -> Result<Ended> {
    let Session {
        t,
        events,
        diagnostics,
        command,
        sigint,
        sigterm,
        sighup,
        signalled_before,
        tick,
        ..
    } = s;
    let mut exit_code = 0;
    // Command mode: when the command ended, and until when its namespaces'
    // ends are awaited.
    let mut linger_until: Option<tokio::time::Instant> = None;
    let mut reported_losses = t.probes.losses();
    let ready = reported_losses;

    loop {
        // Stopped, or nothing left to write to (stdout gone, alone).
        if *signalled_before || t.outputs.gone() {
            break;
        }
        let wake = t.next_wake();
        tokio::select! {
            guard = events.readable_mut() => {
                let mut guard = guard.context("waiting for events")?;
                let began = t.clock.now_as_event_ns();
                let ring = guard.get_inner_mut();
                let more = t.drain(ring, began);
                // The kernel wakes us only when the ring was empty: with
                // events left, stay ready.
                if !(t.check_ends(ring) || more) {
                    guard.clear_ready();
                }
                drop(guard);
                tokio::time::sleep(DRAIN_INTERVAL).await;
            }
            _ = tokio::time::sleep(wake.unwrap_or_default()), if wake.is_some() => {
                let now = t.clock.now_as_event_ns();
                let ring = events.get_mut();
                t.drain(ring, now);
                t.check_ends(ring);
            }
            _ = tick.tick() => {
                t.check_leaks();
                let now = t.clock.now_as_event_ns();
                if let Some(m) = t.outputs.metrics() {
                    m.refresh(&t.registry, now);
                }
                t.report_losses(&mut reported_losses);
                if let Some(until) = linger_until {
                    if !t.caused_alive() || tokio::time::Instant::now() >= until {
                        break;
                    }
                }
            }
            status = async { command.as_mut().expect("guarded").wait().await }, if command.is_some() && linger_until.is_none() => {
                exit_code = command::exit_code(status.context("waiting for the command")?);
                t.collect_caused = false;
                linger_until = Some(tokio::time::Instant::now() + command::LINGER);
            }
            guard = async { diagnostics.as_mut().expect("guarded").readable_mut().await }, if diagnostics.is_some() => {
                let mut guard = guard.context("waiting for kernel diagnostics")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => break,
        }
    }
    Ok(Ended {
        exit_code,
        reported_losses,
        ready,
    })
}
