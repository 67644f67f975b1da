//! Start-up: preflight, output files, BTF layouts, loading and attaching,
//! the host's namespaces, each kind's end method, the start-up line and the
//! `start` record.

use std::{
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
    kernel::{offsets, preflight, probes::Probes},
    model::{EndMethod, NsKind, Start},
    output::{
        self, Sink,
        filter::Filter,
        leaks::{DIR as LEAK_DIR, LeakList},
        outputs::Outputs,
        timeline::Timeline,
    },
    session::{
        Session, command,
        run::{Totals, Tracer},
    },
    state::ends::{self, Ends, Methods},
    state::leaks::Leaks,
    state::registry::Registry,
    sys::nsfs::Handles,
    sys::procfs::{self},
    sys::time::Clock,
    util::error::hinted,
};

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

/// With NSTRACE_DEBUG=1, how long each start-up phase took, on stderr
/// before the start-up line: what start to ready is made of.
struct Phases {
    on: bool,
    last: std::time::Instant,
    took: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn new() -> Self {
        Phases {
            on: std::env::var_os("NSTRACE_DEBUG").is_some(),
            last: std::time::Instant::now(),
            took: Vec::new(),
        }
    }

    /// The phase that ends now.
    fn done(&mut self, phase: &'static str) {
        if self.on {
            let now = std::time::Instant::now();
            self.took.push((phase, now - self.last));
            self.last = now;
        }
    }

    fn report(&self) {
        if !self.on {
            return;
        }
        let total: Duration = self.took.iter().map(|(_, d)| *d).sum();
        let parts: Vec<String> = self
            .took
            .iter()
            .map(|(p, d)| format!("{p} {:.1}", d.as_secs_f64() * 1e3))
            .collect();
        eprintln!(
            "nstrace: debug: start-up {:.1} ms: {} (ms)",
            total.as_secs_f64() * 1e3,
            parts.join(", ")
        );
    }
}

pub async fn start(cli: &Cli) -> Result<Option<Session>> {
    let mut phases = Phases::new();
    let loader = crate::kernel::probes::prepare_loader();
    let host = preflight::check()?;
    phases.done("preflight");
    if stopped_early() {
        return Ok(None);
    }
    // Output files first: a path that cannot be written fails before any
    // program loads.
    // Each its own file: a picture drawn over the trace would destroy it.
    let files: Vec<(&str, &std::path::Path)> = [
        ("--output", cli.output.as_deref()),
        ("--perfetto", cli.perfetto.as_deref()),
        ("--html", cli.html.as_deref()),
    ]
    .into_iter()
    .filter_map(|(flag, p)| Some((flag, p?)))
    .collect();
    output::check_distinct(None, &files)?;
    let saved: Option<Box<dyn Sink>> = match &cli.output {
        Some(path) => {
            let f = output::create_trace_file(path)?;
            Some(output::sink(
                true,
                false,
                io::BufWriter::with_capacity(output::STREAM_BUFFER, f),
            ))
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
    phases.done("outputs and BTF offsets");
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
    phases.done("maps, verification and attach");
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
    phases.done("fentry");
    if stopped_early() {
        return Ok(None);
    }

    // Attached first, seeded second: a fork between the two is caught by the
    // /proc re-check before any end of a namespace that existed at start.
    let snap = procfs::scan();
    let host_ns = procfs::host_namespaces();
    let watched = ends::seed_counts(&snap, &host_ns, &mut probes);
    let mut registry = Registry::from_snapshot(&snap, |key| snap.meta(key));
    registry.set_host(host_ns.clone());
    // A container that was running before the trace owns its namespaces
    // too (found through their lowest member, as lsns names one).
    let mut containers = container::Resolver::new();
    registry.attribute(|key| {
        let pid = *snap.processes.get(&key)?.first()?;
        let comm = snap
            .procs
            .get(&pid)
            .map(|p| p.comm.clone())
            .unwrap_or_default();
        containers.for_pid(pid, &[], &comm)
    });
    let (methods, ends_note) = Methods::choose(
        &kinds,
        &freed_kinds,
        cli.infer_ends,
        layout.has_ns_id,
        || Handles::open().map(|h| Box::new(h) as Box<dyn ends::Ask>),
    );
    let mut ends = Ends::new(methods, procfs::home_mount_namespaces());
    ends.seed(&snap, &host_ns, clock.now_as_event_ns());
    phases.done("/proc scan and seeds");

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
        return Ok(None);
    }
    let command = match cli.cmd.as_slice() {
        [] => None,
        argv => Some(command::spawn_followed(argv, &mut probes)?),
    };

    // SAFETY: the AsyncFd owns the ring buffer, so its fd stays open until the
    // AsyncFd has deregistered it.
    let events =
        unsafe { AsyncFd::register_with_interest(probes.take_events(), Interest::READABLE) }
            .context("watching the ring buffer")?;

    let (diagnostics, kernel_log) = match probes.take_diagnostics() {
        Some((reader, log)) => (
            Some(
                // SAFETY: as for the events: the AsyncFd owns the reader and its fd.
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
    let sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    // A signal that came before tokio's handlers: the session stops as soon
    // as it has begun (a start line, no records, the closing summary).
    let signalled_before = crate::sys::signals::requested().is_some();
    phases.done("the rest");
    phases.report();
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

    let tick = tokio::time::interval(Duration::from_millis(500));
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

    let stdout = output::sink(
        cli.json,
        cli.color.enabled(
            io::stdout().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ),
        io::BufWriter::with_capacity(output::STREAM_BUFFER, io::stdout().lock()),
    );
    let filter = Filter {
        container: cli.container.clone(),
        followed_only: cli.pid.is_some() || command.is_some(),
        extra_containers: Vec::new(),
        comm: cli.comm.clone(),
        kinds: cli.types.clone(),
        events: cli.events.clone(),
    };
    // Leaks are told in the stream whatever becomes of the list; without
    // it only `ls` misses them, and says so nowhere else: warn.
    let leak_list = cli.leak_after.0.and_then(|_| match LeakList::create() {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!(
                "nstrace: warning: cannot keep the leak list in {}: {e}; `nstrace ls --leaks` will not see this trace's leaks",
                LEAK_DIR
            );
            None
        }
    });
    let mut outputs = Outputs::new(
        filter,
        metrics,
        leak_list,
        saved.zip(cli.output.as_deref()),
        pictures.as_ref().map(|_| Timeline::default()),
        stdout,
    );
    outputs.start(&start);
    outputs.flush();
    // A scrape right after start sees the gauges, not an empty page.
    if let Some(m) = outputs.metrics() {
        m.refresh(&registry, clock.now_as_event_ns());
    }
    let t = Tracer {
        clock,
        outputs,
        probes,
        registry,
        ends,
        leaks: Leaks::new(cli.leak_after.0),
        totals: Totals::default(),
        containers,
        collect_caused: command.is_some(),
        held: None,
    };
    Ok(Some(Session {
        t,
        events,
        diagnostics,
        kernel_log,
        command,
        pictures,
        sigint,
        sigterm,
        sighup,
        signalled_before,
        tick,
    }))
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
