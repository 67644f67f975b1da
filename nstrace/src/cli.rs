//! Command-line interface.

use clap::{Parser, Subcommand, ValueEnum, builder::TypedValueParser as _};

use crate::model::{EventType, NsKind};

/// Trace Linux namespaces live: every namespace created (clone, clone3,
/// unshare), joined (setns) or refused, with the inode numbers that
/// /proc/PID/ns and lsns show.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "nstrace",
    version,
    after_help = "\
Runs until Ctrl-C (or SIGTERM), then prints a one-line summary on stderr.
Needs root (or CAP_BPF + CAP_PERFMON), a kernel >= 5.8 with BTF, and tracefs
(mounted at /sys/kernel/tracing if it is not).

Examples:
  sudo nstrace                      readable timeline
  sudo nstrace --json | jq .        JSON Lines, one object per record
  sudo nstrace --json > trace.jsonl
  sudo nstrace ls --tree            namespaces alive now
  sudo nstrace --container web      one container's namespaces (id prefix or name)
  sudo nstrace --type net,pid --event create,destroy
  sudo nstrace -- docker run --rm IMAGE true
                                    trace a command and the containers it starts

The JSON schema is documented in the README (section \"JSON records\")."
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Print JSON Lines (one object per record) instead of the timeline.
    #[arg(long)]
    pub json: bool,

    /// Kernel ring buffer size in MiB (a power of two). Raise it if nstrace
    /// reports lost records.
    #[arg(long, value_name = "MIB", default_value_t = 8, value_parser = parse_buffer_mib)]
    pub buffer_size: u32,

    /// Entries of the kernel's member-count map (namespaces watched for
    /// their end; 64 bytes each), and a quarter as many sets of namespaces
    /// threads share. Raise it if nstrace reports namespaces unwatched or
    /// forgotten by the member map.
    #[arg(long, value_name = "ENTRIES", default_value_t = 131072,
          value_parser = clap::value_parser!(u32).range(1024..=1 << 24))]
    pub member_map_size: u32,

    /// Do not print the start-up line and closing summary on stderr.
    #[arg(long, short)]
    pub quiet: bool,

    /// Colour the timeline's event names: `auto` on a terminal unless
    /// NO_COLOR is set, `always`, or `never`. JSON is never coloured.
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464,
    /// or a bare port for loopback): namespaces alive and pinned by kind,
    /// created/joined/destroyed/failed totals by kind and container runtime,
    /// the oldest pinned namespace's age, losses, nstrace's own CPU and ring
    /// use. Counts every record, whatever the filters.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub metrics: Option<std::net::SocketAddr>,

    /// Print the kernel side's diagnostics on stderr: why a kernel read or a
    /// map update failed, and records dropped for a full ring. Loads a build
    /// of the kernel programs with the diagnostics compiled in (slower to
    /// start); without it they are not in the programs at all.
    #[arg(long)]
    pub debug: bool,

    /// Also write JSON Lines to FILE (every record, whatever the filters,
    /// between a `start` and a `stop` line) while stdout keeps the timeline;
    /// `nstrace report FILE` sums it up later, anywhere.
    #[arg(long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,

    /// When tracing stops, write the namespaces' lifetimes as a Perfetto
    /// trace to FILE (open it in ui.perfetto.dev). Draws the records shown
    /// (the filters apply); keeps one lane per namespace in memory until
    /// then.
    #[arg(long, value_name = "FILE")]
    pub perfetto: Option<std::path::PathBuf>,

    /// When tracing stops, write the namespaces' lifetimes as one
    /// self-contained HTML page to FILE (zoom, hover; no network needed).
    #[arg(long, value_name = "FILE")]
    pub html: Option<std::path::PathBuf>,

    /// How namespace ends are detected. `fentry`: the kernel's own free path
    /// is hooked (exact). `tracepoint`: member tasks are counted in the kernel
    /// and an end is reported when the last one leaves and nothing pins the
    /// namespace (confirmed through nsfs file handles on 6.18+, inferred from
    /// /proc before). `auto`: fentry where the kernel allows it, else
    /// tracepoints. The method is chosen per kind: a kind whose free function
    /// fentry cannot hook on this kernel gets the tracepoint method. The
    /// start-up line and the JSON start record (`ends_by_kind`) say which
    /// kind gets which.
    #[arg(long, value_enum, default_value_t = ProbeMode::Auto)]
    pub probe_mode: ProbeMode,

    /// Print the man page (`man`) or a shell's completions (`bash`, `zsh`,
    /// `fish`) generated from this very definition, then exit. For packagers
    /// (`cargo xtask dist` uses it).
    #[arg(long, value_name = "WHAT", value_enum, hide = true)]
    pub generate: Option<Generate>,

    /// Decide ends by inference from /proc even where the kernel can be
    /// asked (nsfs file handles): for comparing the methods.
    #[arg(long, hide = true)]
    pub infer_ends: bool,

    /// Do not hook the free path of these kinds (comma-separated): their
    /// ends are decided as on a kernel without a free function for them.
    /// For testing the per-kind fallback.
    #[arg(long, value_name = "KINDS", value_delimiter = ',', value_parser = kind_parser(), hide = true)]
    pub no_fentry_for: Vec<NsKind>,

    /// Tell a suspect leak (a `leak` record, the `nstrace_namespaces_leaked`
    /// gauge, `nstrace ls --leaks`) when a namespace that belonged to a
    /// container or pod is still held, with no process in it, this long
    /// after that container went (`60s`, `2m`, `500ms`; `0` disables). A
    /// namespace no container had (`ip netns add` by hand) is never one.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_leak_after)]
    pub leak_after: LeakAfter,

    /// Only records of this container: an id prefix or a name (docker).
    /// Matches the acting process's container and the container whose runtime
    /// created the namespace (so dockerd joining its network shows too).
    #[arg(long, value_name = "ID|NAME")]
    pub container: Option<String>,

    /// Only records of this process and its descendants (followed through forks).
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Only records whose process (or namespace creator) has this command name.
    #[arg(long, value_name = "COMM")]
    pub comm: Option<String>,

    /// Only these namespace kinds, comma-separated: mnt,uts,ipc,pid,net,user,cgroup,time.
    #[arg(long = "type", value_name = "KINDS", value_delimiter = ',', value_parser = kind_parser())]
    pub types: Option<Vec<NsKind>>,

    /// Only these events, comma-separated: create,join,pinned,destroy,error,leak.
    #[arg(long = "event", value_name = "EVENTS", value_delimiter = ',', value_parser = event_parser())]
    pub events: Option<Vec<EventType>>,

    /// Run CMD and trace what it and its descendants do, plus the containers
    /// started while it runs (`nstrace -- docker run ...`); exit with CMD's status.
    #[arg(last = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

/// Possible values (not a free-form parser): clap lists them in errors and
/// `--help`, and the generated completions offer them.
fn kind_parser() -> impl clap::builder::TypedValueParser<Value = NsKind> {
    clap::builder::PossibleValuesParser::new(NsKind::ALL.map(NsKind::name))
        .map(|s| NsKind::from_name(&s).expect("the possible values are kind names"))
}

fn event_parser() -> impl clap::builder::TypedValueParser<Value = EventType> {
    clap::builder::PossibleValuesParser::new(EventType::ALL.map(EventType::name))
        .map(|s| EventType::from_name(&s).expect("the possible values are event names"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Whether to colour, for output that goes to a terminal or not
    /// (https://no-color.org: a non-empty NO_COLOR turns `auto` off).
    pub fn enabled(self, terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => terminal && no_color.is_none_or(|v| v.is_empty()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Generate {
    Man,
    Bash,
    Zsh,
    Fish,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProbeMode {
    Auto,
    Fentry,
    Tracepoint,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// List the namespaces alive now (kind, inode, processes, owner), like lsns,
    /// including ones held only by a bind mount.
    Ls {
        /// Print JSON (`{"namespaces": [...]}`) instead of a table.
        #[arg(long)]
        json: bool,
        /// Print trees: user namespaces with what they own, and PID namespace nesting.
        #[arg(long, conflicts_with = "json")]
        tree: bool,
        /// Only the suspect leaks: held namespaces with no process whose
        /// container or pod is gone, as a running `nstrace` told them
        /// (`--leak-after`); it is the trace that knows whose they were.
        #[arg(long)]
        leaks: bool,
    },
    /// Sum up a saved trace offline (written by `--output FILE` or `--json >
    /// FILE`): the closing summary the live run printed.
    Report {
        /// The JSON Lines trace.
        #[arg(value_name = "FILE.jsonl")]
        file: std::path::PathBuf,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
        /// Also write the trace's namespace lifetimes as a Perfetto trace
        /// (open it in ui.perfetto.dev).
        #[arg(long, value_name = "OUT")]
        perfetto: Option<std::path::PathBuf>,
        /// Also write them as one self-contained HTML page.
        #[arg(long, value_name = "OUT")]
        html: Option<std::path::PathBuf>,
    },
}

fn parse_buffer_mib(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of MiB"))?;
    if n == 0 || !n.is_power_of_two() || n > 1024 {
        return Err(format!("{n} MiB: must be a power of two from 1 to 1024"));
    }
    Ok(n)
}

/// `--leak-after`: a duration, None when `0` (never told).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeakAfter(pub Option<std::time::Duration>);

fn parse_leak_after(s: &str) -> Result<LeakAfter, String> {
    let d = if s.trim() == "0" {
        std::time::Duration::ZERO
    } else {
        humantime::parse_duration(s)
            .map_err(|e| format!("{s:?} is not a duration like 60s, 2m or 500ms ({e})"))?
    };
    Ok(LeakAfter((!d.is_zero()).then_some(d)))
}

/// For `--metrics`: an address, or a bare port on loopback.
fn parse_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse()
        .map_err(|_| format!("{s:?} is not an address like 127.0.0.1:9464 (or a port)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_choice_follows_terminal_and_no_color() {
        use ColorChoice::*;
        let set = Some(std::ffi::OsStr::new("1"));
        let empty = Some(std::ffi::OsStr::new(""));
        assert!(Auto.enabled(true, None));
        assert!(Auto.enabled(true, empty));
        assert!(!Auto.enabled(true, set));
        assert!(!Auto.enabled(false, None));
        assert!(Always.enabled(false, set));
        assert!(!Never.enabled(true, None));
    }

    #[test]
    fn defaults_and_flags_parse() {
        let c = Cli::try_parse_from(["nstrace"]).unwrap();
        assert!(!c.json);
        assert_eq!(c.buffer_size, 8);
        let c = Cli::try_parse_from(["nstrace", "--json", "--buffer-size", "64"]).unwrap();
        assert!(c.json);
        assert_eq!(c.buffer_size, 64);
    }

    #[test]
    fn ls_subcommand_parses() {
        let c = Cli::try_parse_from(["nstrace", "ls", "--json"]).unwrap();
        assert!(matches!(
            c.command,
            Some(Command::Ls {
                json: true,
                tree: false,
                leaks: false,
            })
        ));
        assert!(Cli::try_parse_from(["nstrace", "ls", "--json", "--tree"]).is_err());
    }

    #[test]
    fn filters_and_command_parse() {
        let c = Cli::try_parse_from([
            "nstrace", "--type", "net,pid", "--event", "create", "--pid", "7", "--", "docker",
            "run", "-it",
        ])
        .unwrap();
        assert_eq!(c.types, Some(vec![NsKind::Net, NsKind::Pid]));
        assert_eq!(c.events, Some(vec![EventType::Create]));
        assert_eq!(c.pid, Some(7));
        assert_eq!(c.cmd, vec!["docker", "run", "-it"]);
        assert!(Cli::try_parse_from(["nstrace", "--type", "bogus"]).is_err());
        assert!(Cli::try_parse_from(["nstrace", "--event", "born"]).is_err());
    }

    #[test]
    fn leak_after_takes_durations_and_zero_disables() {
        let after =
            |a: &str| Cli::try_parse_from(["nstrace", "--leak-after", a]).map(|c| c.leak_after.0);
        assert_eq!(
            Cli::try_parse_from(["nstrace"]).unwrap().leak_after.0,
            Some(std::time::Duration::from_secs(60))
        );
        assert_eq!(
            after("2s").unwrap(),
            Some(std::time::Duration::from_secs(2))
        );
        assert_eq!(after("0").unwrap(), None);
        assert_eq!(after("0s").unwrap(), None);
        assert!(after("soon").is_err());
    }

    #[test]
    fn bad_input_is_rejected() {
        assert!(Cli::try_parse_from(["nstrace", "--bogus"]).is_err());
        assert!(Cli::try_parse_from(["nstrace", "--buffer-size", "3"]).is_err());
        assert!(Cli::try_parse_from(["nstrace", "--buffer-size", "x"]).is_err());
    }
}
