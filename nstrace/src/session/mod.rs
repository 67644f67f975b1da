//! One tracing session: checks, load, stream records until a signal, summary.

pub mod command;

use std::{
    collections::BTreeSet,
    io::{self, IsTerminal as _},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    cli::{Cli, ProbeMode},
    enrich::container,
    kernel::decode,
    kernel::{
        offsets, preflight,
        probes::{Losses, Probes},
    },
    model::NsKey,
    model::{EndMethod, EventType, NsKind, Start, Stop},
    output::filter::Filter,
    output::summary,
    output::{self, Sink},
    state::ends::{self, Ends, Methods},
    state::registry::Registry,
    sys::nsfs::Handles,
    sys::procfs::{self},
    sys::time::Clock,
    util::error::hinted,
};

/// Counts for the closing summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub events: u64,
    pub records: u64,
    pub undecodable: u64,
}

/// Everything a running trace keeps.
struct Tracer<'a> {
    clock: Clock,
    sink: Box<dyn Sink + 'a>,
    /// `--output FILE`: every record, unfiltered, as JSON Lines.
    saved: Option<Box<dyn Sink + 'a>>,
    saved_path: std::path::PathBuf,
    saved_records: u64,
    /// `--perfetto`/`--html`: the lanes drawn when tracing stops.
    timeline: Option<crate::output::timeline::Timeline>,
    probes: Probes,
    registry: Registry,
    ends: Ends,
    totals: Totals,
    filter: Filter,
    containers: container::Resolver,
    /// Command mode while the command runs: containers created now are its.
    collect_caused: bool,
    /// An event read past a drain's limit, handled first by the next drain.
    held: Option<decode::Decoded>,
    /// `--metrics`: fed every record, whatever the filters.
    metrics: Option<output::metrics::Metrics>,
}

/// Drains are at least this far apart: each then handles a batch, and the
/// checks of namespaces it emptied are asked together, instead of once per
/// wakeup. Records wait this long at most.
const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

impl<'a> Tracer<'a> {
    /// Handles the events waiting in the ring that are stamped up to
    /// `until`; the first later one is held for the next drain (so a steady
    /// stream cannot keep one drain going, and verdicts read at `until` come
    /// after every event before it). Returns whether events were left;
    /// errors only when output is gone.
    fn drain(
        &mut self,
        ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
        until: i128,
    ) -> io::Result<bool> {
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
            self.handle(d)?;
        }
        if let Some(m) = &self.metrics {
            // Each record: its 8-byte ring header and the event, 8-aligned.
            let each = (8 + std::mem::size_of::<nstrace_common::Event>()).next_multiple_of(8);
            m.ring_backlog(read * each as u64);
        }
        self.flush()?;
        Ok(more)
    }

    /// Asks about the namespaces whose check is due, then handles every event
    /// stamped before the answer, then reports what the answer means.
    /// Returns whether events were left in the ring.
    fn check_ends(
        &mut self,
        ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    ) -> io::Result<bool> {
        let now = self.clock.now_as_event_ns();
        if !self.ends.due(now) {
            return Ok(false);
        }
        let verdicts = self
            .ends
            .check(now, &self.registry, &mut self.probes, &mut ends::Procfs);
        let more = self.drain(ring, now)?;
        for r in self.ends.apply(verdicts, now, &mut self.registry) {
            self.emit(&r)?;
        }
        self.flush()?;
        Ok(more)
    }

    /// When the loop must wake without a ring wakeup: the next check due,
    /// or soon when an event is held back from the last drain.
    fn next_wake(&self) -> Option<Duration> {
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
    fn report_losses(&mut self, reported: &mut Losses) -> io::Result<()> {
        let now = self.probes.losses();
        let Some(loss) = now.since(reported, Clock::now_unix_ns()) else {
            return Ok(());
        };
        *reported = now;
        if let Some(m) = &self.metrics {
            m.lost(&loss);
        }
        if !io::stdout().is_terminal() {
            eprintln!("nstrace: warning: {}", output::text::loss_summary(&loss));
        }
        self.write_file(|f| f.lost(&loss));
        self.sink.lost(&loss)?;
        self.flush()
    }

    fn handle(&mut self, d: decode::Decoded) -> io::Result<()> {
        for mut r in d.records {
            if let Some(a) = &r.actor {
                r.container = self.containers.for_actor(a);
            }
            if self.collect_caused && r.event == EventType::Create {
                if let Some(c) = &r.container {
                    if !self.filter.extra_containers.contains(&c.id) {
                        self.filter.extra_containers.push(c.id.clone());
                    }
                }
            }
            if let Some(stale) = self.registry.observe(&mut r) {
                // The kernel reused the inode of a namespace whose end we did
                // not see: it has certainly ended. Say so, late, then the create.
                let time = r.time_ns;
                let cause = self.ends.forget(stale.key());
                let end = self.registry.end_replaced(stale, time, cause);
                self.emit(&end)?;
            }
            if r.event == EventType::Join {
                if let (Some(k), Some(i)) = (r.kind, r.inode) {
                    self.ends.on_joined((k, i));
                }
            }
            self.emit(&r)?;
        }
        if let Some(pidns) = d.reaper_of {
            if let (Some(e), Some(a)) = (self.registry.get_mut((NsKind::Pid, pidns)), &d.actor) {
                e.init_exited = Some(a.pid);
            }
        }
        if let Some(r) = d
            .freed
            .and_then(|n| self.ends.on_freed(n, d.time_ns, &mut self.registry))
        {
            self.emit(&r)?;
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
        Ok(())
    }

    /// Only stdout's errors are returned: it gone, the trace ends.
    fn flush(&mut self) -> io::Result<()> {
        self.write_file(|f| f.flush());
        self.sink.flush()
    }

    /// Writes to `--output FILE`, if it is still written. A failure there
    /// (a full disk) is told with its cause and ends that file, not the
    /// trace: stdout and the metrics go on.
    fn write_file(&mut self, write: impl FnOnce(&mut (dyn Sink + 'a)) -> io::Result<()>) -> bool {
        let Some(f) = &mut self.saved else {
            return false;
        };
        match write(f.as_mut()) {
            Ok(()) => true,
            Err(e) => {
                eprintln!(
                    "nstrace: error: writing {}: {e}; that file is no longer written (tracing goes on)",
                    crate::util::escape::path(&self.saved_path)
                );
                self.saved = None;
                false
            }
        }
    }

    fn emit(&mut self, r: &crate::model::Record) -> io::Result<()> {
        if let Some(m) = &mut self.metrics {
            m.record(r);
        }
        if self.write_file(|f| f.record(r)) {
            self.saved_records += 1;
        }
        if !self.filter.matches(r) {
            return Ok(());
        }
        self.totals.records += 1;
        if let Some(t) = &mut self.timeline {
            t.record(r);
        }
        self.sink.record(r)
    }

    /// Command mode, after the command ended: are namespaces it (or its
    /// containers) created still alive? Then their ends are still to come.
    fn caused_alive(&self) -> bool {
        self.registry.alive().any(|e| {
            e.born.is_some()
                && (e.followed
                    || e.container
                        .as_ref()
                        .is_some_and(|c| self.filter.extra_containers.contains(&c.id)))
        })
    }
}

/// How long a stop waits for the verdicts of namespaces that emptied just
/// before it: past the last settle re-check (160 ms) and one grace (100 ms).
const FINAL_VERDICTS: Duration = Duration::from_millis(400);

/// Whether a stop signal came during start-up (said on stderr): the caller
/// returns before loading or starting anything more; what it loaded is
/// dropped, and so detached, on the way out.
fn stopped_early() -> bool {
    let stopped = crate::sys::signals::requested().is_some();
    if stopped {
        eprintln!("nstrace: stopped during start-up, before tracing began");
    }
    stopped
}

/// Traces until a stop signal (or, in command mode, until the command's
/// namespaces are done). Returns the exit status: 0, or the command's.
pub async fn run(cli: &Cli) -> Result<i32> {
    let loader = crate::kernel::probes::prepare_loader();
    let host = preflight::check()?;
    if stopped_early() {
        return Ok(0);
    }
    // Output files first: a path that cannot be written fails before any
    // program loads.
    // Each its own file: a picture drawn over the trace would destroy it.
    let outputs: Vec<(&str, &std::path::Path)> = [
        ("--output", cli.output.as_deref()),
        ("--perfetto", cli.perfetto.as_deref()),
        ("--html", cli.html.as_deref()),
    ]
    .into_iter()
    .filter_map(|(flag, p)| Some((flag, p?)))
    .collect();
    output::check_distinct(None, &outputs)?;
    let saved: Option<Box<dyn Sink>> = match &cli.output {
        Some(path) => {
            let f = output::create_trace_file(path)?;
            Some(output::sink(true, false, io::BufWriter::new(f)))
        }
        None => None,
    };

    let pictures = output::Pictures::create(cli.perfetto.as_deref(), cli.html.as_deref())?;

    let mut layout = offsets::from_running_kernel().map_err(|e| {
        hinted(
            format!("cannot read the kernel's struct layouts from BTF: {e:#}"),
            "nstrace needs /sys/kernel/btf/vmlinux from a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        )
    })?;
    layout.skip_fentry(&cli.no_fentry_for);
    Probes::release_freed_memory();
    let ring = cli.buffer_size * 1024 * 1024;
    // fentry where the kernel allows it (exact ends), else tracepoints alone.
    let follow = cli.pid.is_some() || !cli.cmd.is_empty();
    let mut probes = Probes::load(
        loader,
        &layout,
        ring,
        cli.member_map_size,
        follow,
        cli.debug,
    )?;
    let (fentry, fentry_note) = match cli.probe_mode {
        ProbeMode::Tracepoint => (None, None),
        ProbeMode::Fentry => (Some(probes.attach_fentry(&layout)?), None),
        ProbeMode::Auto => match probes.attach_fentry(&layout) {
            Ok(f) => (Some(f), None),
            Err(e) => {
                let why = crate::util::error::hint_of(&e)
                    .map_or_else(|| format!("{e:#}"), |_| format!("{e}"));
                (None, Some(why))
            }
        },
    };
    let exact_ends = fentry.is_some();
    let freed_kinds = fentry.as_ref().map(|f| f.kinds()).unwrap_or_default();
    let kinds: Vec<NsKind> = NsKind::ALL
        .into_iter()
        .filter(|k| !layout.missing_kinds.contains(k))
        .collect();
    let clock = Clock::now();
    if stopped_early() {
        return Ok(0);
    }

    // Attached first, seeded second: a fork between the two is caught by the
    // /proc re-check before any end of a namespace that existed at start.
    let snap = procfs::scan();
    let host_ns: BTreeSet<NsKey> = NsKind::ALL
        .into_iter()
        .flat_map(|k| {
            [procfs::active_link(k), procfs::acting_link(k)]
                .into_iter()
                .filter_map(move |link| procfs::host_ns_link(link).map(|i| (k, i)))
        })
        .collect();
    let watched = ends::seed_counts(&snap, &host_ns, &mut probes);
    let registry = Registry::from_snapshot(&snap, |key| snap.meta(key));
    // How ends are decided, per kind: the kernel's free path, else the
    // kernel's answer through nsfs file handles, else inference from /proc.
    let mut ends_note = None;
    let others_ask: Option<Box<dyn ends::Ask>> = if kinds.iter().all(|k| freed_kinds.contains(k)) {
        None
    } else if cli.infer_ends {
        ends_note = Some("inference forced by --infer-ends".to_string());
        None
    } else if !layout.has_ns_id {
        ends_note = Some("no namespace ids on this kernel (6.18+ has them)".to_string());
        None
    } else {
        match Handles::open() {
            Ok(h) => Some(Box::new(h)),
            Err(why) => {
                ends_note = Some(format!("nsfs file handles unusable: {why}"));
                None
            }
        }
    };
    let methods = Methods::new(&freed_kinds, others_ask);
    let mut ends = Ends::new(methods);
    ends.seed(&snap, &host_ns, clock.now_as_event_ns());

    if let Some(pid) = cli.pid {
        let tree = procfs::descendants(pid);
        if tree.is_empty() {
            return Err(hinted(
                format!("no process with pid {pid}"),
                "give the pid of a running process (`pgrep NAME`)",
            ));
        }
        for p in tree {
            probes.follow(p)?;
        }
    }
    if stopped_early() {
        return Ok(0);
    }
    let mut command = match cli.cmd.as_slice() {
        [] => None,
        argv => Some(command::spawn_followed(argv, &mut probes)?),
    };

    // SAFETY: the AsyncFd owns the ring buffer, so its fd stays open until the
    // AsyncFd has deregistered it.
    let mut events =
        unsafe { AsyncFd::register_with_interest(probes.take_events(), Interest::READABLE) }
            .context("watching the ring buffer")?;

    let (mut diagnostics, kernel_log) = match probes.take_diagnostics() {
        Some((reader, log)) => (
            // SAFETY: as for the events: the AsyncFd owns the reader and its fd.
            Some(
                unsafe { AsyncFd::register_with_interest(reader, Interest::READABLE) }
                    .context("watching kernel diagnostics")?,
            ),
            Some(log),
        ),
        None => (None, None),
    };

    let metrics = match cli.metrics {
        Some(addr) => Some(output::metrics::Metrics::serve(addr, ring).await?),
        None => None,
    };

    // Before the start-up line: a script that signals as soon as it reads
    // the line must get the closing summary, not the default action.
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    // A signal that came before tokio's handlers: the session stops as soon
    // as it has begun (a start line, no records, the closing summary).
    let signalled_before = crate::sys::signals::requested().is_some();
    if !cli.quiet {
        let mut notes = ends_notes(
            ends.methods(),
            &kinds,
            fentry.as_ref(),
            &cli.no_fentry_for,
            watched,
        );
        if let Some(why) = &fentry_note {
            notes.push(format!("fentry unavailable: {why}"));
        }
        if let Some(why) = &ends_note {
            notes.push(why.clone());
        }
        if host.mounted_tracefs {
            notes.push(format!("mounted tracefs at {}", host.tracefs.display()));
        }
        if let Some(addr) = cli.metrics {
            notes.push(format!("metrics at http://{addr}/metrics"));
        }
        if !layout.has_ns_id {
            notes.push("no 64-bit ns_id on this kernel: ns_id is null".into());
        }
        if !layout.missing_kinds.is_empty() {
            let kinds: Vec<_> = layout.missing_kinds.iter().map(|k| k.name()).collect();
            notes.push(format!("not in this kernel: {}", kinds.join(", ")));
        }
        // Notes quote error messages and paths: escaped, as a name is.
        eprintln!(
            "nstrace: tracing namespaces on Linux {} with {} ({}); Ctrl-C to stop",
            crate::util::escape::Escaped(&host.kernel_release),
            if exact_ends {
                "tracepoints + fentry"
            } else {
                "tracepoints"
            },
            crate::util::escape::Escaped(&notes.join("; "))
        );
    }

    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let start = Start {
        time_ns: Clock::now_unix_ns(),
        kernel: host.kernel_release.clone(),
        ends: ends
            .methods()
            .uniform(&kinds)
            .map_or("mixed", EndMethod::name)
            .to_string(),
        ends_by_kind: kinds.iter().map(|&k| (k, ends.methods().of(k))).collect(),
        alive: {
            let mut v: Vec<_> = registry
                .alive()
                .map(|e| (e.kind, e.inode, e.ns_id))
                .collect();
            v.sort();
            v
        },
    };

    let stdout = io::stdout();
    let mut t = Tracer {
        clock,
        sink: output::sink(
            cli.json,
            cli.color.enabled(
                io::stdout().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ),
            io::BufWriter::new(stdout.lock()),
        ),
        saved,
        saved_path: cli.output.clone().unwrap_or_default(),
        saved_records: 0,
        timeline: pictures
            .as_ref()
            .map(|_| crate::output::timeline::Timeline::default()),
        probes,
        registry,
        ends,
        totals: Totals::default(),
        filter: Filter {
            container: cli.container.clone(),
            followed_only: cli.pid.is_some() || command.is_some(),
            extra_containers: Vec::new(),
            comm: cli.comm.clone(),
            kinds: cli.types.clone(),
            events: cli.events.clone(),
        },
        containers: container::Resolver::new(),
        collect_caused: command.is_some(),
        held: None,
        metrics,
    };
    t.write_file(|f| f.start(&start));
    t.sink.start(&start)?;
    t.flush()?;
    if let Some(tl) = &mut t.timeline {
        tl.start(&start);
    }
    // A scrape right after start sees the gauges, not an empty page.
    if let Some(m) = &mut t.metrics {
        m.refresh(&t.registry, t.clock.now_as_event_ns());
    }
    let mut exit_code = 0;
    // Command mode: when the command ended, and until when its namespaces'
    // ends are awaited.
    let mut linger_until: Option<tokio::time::Instant> = None;
    let mut reported_losses = t.probes.losses();
    let skipped_before_ready = reported_losses.skipped();
    // Members met between attach and seeding had no entry yet: not evictions.
    let forgotten_before_ready = reported_losses.forgotten;
    // Stdout's write error: the trace ends (quietly when its reader is gone).
    let mut stdout_error: Option<io::Error> = None;

    loop {
        if signalled_before {
            break;
        }
        let wake = t.next_wake();
        tokio::select! {
            guard = events.readable_mut() => {
                let mut guard = guard.context("waiting for events")?;
                let began = t.clock.now_as_event_ns();
                let ring = guard.get_inner_mut();
                match t.drain(ring, began).and_then(|more| Ok(t.check_ends(ring)? || more)) {
                    Err(e) => {
                        stdout_error = Some(e);
                        break;
                    }
                    // The kernel wakes us only when the ring was empty: with
                    // events left, stay ready.
                    Ok(true) => {}
                    Ok(false) => guard.clear_ready(),
                }
                drop(guard);
                tokio::time::sleep(DRAIN_INTERVAL).await;
            }
            _ = tokio::time::sleep(wake.unwrap_or_default()), if wake.is_some() => {
                let now = t.clock.now_as_event_ns();
                let ring = events.get_mut();
                if let Err(e) = t.drain(ring, now).and_then(|_| t.check_ends(ring)) {
                    stdout_error = Some(e);
                    break;
                }
            }
            _ = tick.tick() => {
                if let Some(m) = &mut t.metrics {
                    m.refresh(&t.registry, t.clock.now_as_event_ns());
                }
                if let Err(e) = t.report_losses(&mut reported_losses) {
                    stdout_error = Some(e);
                    break;
                }
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
    let output_closed = stdout_error.is_some();
    // Records already in the ring when the signal came are still the user's,
    // and so are the ends of namespaces that emptied just before: their
    // verdicts come within the settle time of deferred frees, so wait for
    // them (a little) rather than leave them unsaid.
    if !output_closed {
        let until = tokio::time::Instant::now() + FINAL_VERDICTS;
        loop {
            while let Ok(true) = t.drain(events.get_mut(), i128::MAX) {}
            if t.check_ends(events.get_mut()).is_err() {
                break;
            }
            let now = tokio::time::Instant::now();
            if !t.ends.undecided() || now >= until {
                break;
            }
            let wait = t.next_wake().unwrap_or(DRAIN_INTERVAL);
            tokio::time::sleep(wait.min(until - now)).await;
        }
        let _ = t.report_losses(&mut reported_losses);
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
    let stop = |records| Stop {
        time_ns: end_ns,
        records,
        kernel_events: t.totals.events,
        lost: losses.records,
    };
    let (to_stdout, to_file) = (stop(t.totals.records), stop(t.saved_records));
    t.write_file(|f| f.stop(&to_file).and_then(|()| f.flush()));
    if !output_closed {
        let _ = t.sink.stop(&to_stdout).and_then(|()| t.sink.flush());
    }
    if let Some(tl) = &mut t.timeline {
        tl.stop(&to_stdout);
    }
    let Tracer {
        sink,
        saved,
        probes,
        registry,
        totals,
        timeline,
        ..
    } = t;
    drop(sink);
    drop(saved);
    // Detaches and unloads every program.
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
        if losses.unwatched > 0 {
            line.push_str(&format!(
                ", {} namespaces not watched for their end (member map full)",
                losses.unwatched
            ));
        }
        let forgotten = losses.forgotten.saturating_sub(forgotten_before_ready);
        if forgotten > 0 {
            line.push_str(&format!(
                ", {forgotten} watched namespaces forgotten by the member map (LRU eviction)"
            ));
        }
        if losses.untracked > 0 {
            line.push_str(&format!(
                ", {} exits not tracked (tracked map full)",
                losses.untracked
            ));
        }
        if losses.unfollowed > 0 {
            line.push_str(&format!(
                ", {} processes not followed (follow map full)",
                losses.unfollowed
            ));
        }
        let skipped = losses.skipped().saturating_sub(skipped_before_ready);
        if skipped > 0 {
            line.push_str(&format!(", {}", output::text::skipped_runs(skipped)));
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

/// The start-up line's words on ends: per method, the kinds it decides (all
/// of them when one method does), and what fentry hooks or was refused.
fn ends_notes(
    methods: &Methods,
    kinds: &[NsKind],
    fentry: Option<&crate::kernel::probes::Fentry>,
    left_off: &[NsKind],
    watched: usize,
) -> Vec<String> {
    let mut notes = Vec::new();
    let uniform = methods.uniform(kinds).is_some();
    for method in EndMethod::ALL {
        let mine: Vec<&str> = kinds
            .iter()
            .filter(|k| methods.of(**k) == method)
            .map(|k| k.name())
            .collect();
        if mine.is_empty() {
            continue;
        }
        let what = match method {
            EndMethod::Fentry => {
                let funcs: Vec<&str> = fentry
                    .map(|f| f.attached.iter().map(|(f, _)| f.as_str()).collect())
                    .unwrap_or_default();
                format!(
                    "from the kernel's free path: fentry on {}",
                    funcs.join(", ")
                )
            }
            EndMethod::NsfsHandle => format!(
                "confirmed by the kernel through nsfs file handles, {watched} namespaces watched"
            ),
            EndMethod::Inference => format!(
                "inferred from member counts and /proc, best effort, {watched} namespaces watched"
            ),
        };
        notes.push(if uniform {
            format!("ends {what}")
        } else {
            format!("{} ends {what}", mine.join(", "))
        });
    }
    if let Some(f) = fentry {
        for (func, why) in &f.refused {
            notes.push(format!("the kernel refused fentry on {func}: {why}"));
        }
        let names = |pick: &dyn Fn(&NsKind) -> bool| -> Vec<&str> {
            kinds
                .iter()
                .filter(|k| methods.of(**k) != EndMethod::Fentry && pick(k))
                .map(|k| k.name())
                .collect()
        };
        let off = names(&|k| left_off.contains(k));
        if !off.is_empty() {
            notes.push(format!(
                "fentry left off for {} (--no-fentry-for)",
                off.join(", ")
            ));
        }
        let hookless = names(&|k| !left_off.contains(k));
        if !hookless.is_empty() {
            notes.push(format!(
                "no free function fentry can hook for {} on this kernel",
                hookless.join(", ")
            ));
        }
    }
    notes
}
