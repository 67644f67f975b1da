//! The human timeline: a header, then one aligned line per record.

use std::{
    fmt::Write as _,
    io::{self, Write},
};

use super::Sink;
use crate::{
    model::{Birth, EndCause, EventType, Loss, Record, Syscall, flag_names},
    sys::time::time_of_day,
    util::errno,
    util::escape,
};

pub struct TextSink<W: Write> {
    out: W,
    header_done: bool,
    /// The line being built, reused.
    line: String,
    color: bool,
}

impl<W: Write> TextSink<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            header_done: false,
            line: String::with_capacity(256),
            color: false,
        }
    }

    /// Event names in colour (ANSI SGR), for a terminal.
    pub fn with_color(mut self, color: bool) -> Self {
        self.color = color;
        self
    }
}

pub const HEADER: &str = "TIME(UTC)        PID/TID          COMM             CONTAINER    EVENT   NS     INODE       DETAILS";

// Lines are written into one reused buffer with `write!`: under namespace
// churn the `format!` per column was most of nstrace's own CPU per record.
// (Writing to a String cannot fail, hence the ignored results.)
// Every string a process, a mount or a saved trace can set (command names,
// pin paths, container ids) goes in through `escape::push`, so that none
// can drive the terminal; the rest is nstrace's own text and numbers.

/// `unshare(CLONE_NEWUTS|CLONE_NEWNET)`, `setns(fd 3, CLONE_NEWNET)`, ...
fn call(out: &mut String, r: &Record, syscall: Syscall) {
    match (syscall, r.fd) {
        (Syscall::Setns, Some(fd)) => {
            let _ = write!(out, "setns(fd {fd}, ");
        }
        (s, _) => {
            out.push_str(s.name());
            out.push('(');
        }
    }
    let names = flag_names(r.flags);
    if r.flags == 0 {
        out.push('0');
    } else if names.is_empty() {
        let _ = write!(out, "{:#x}", r.flags);
    } else {
        for (i, n) in names.iter().enumerate() {
            if i > 0 {
                out.push('|');
            }
            out.push_str(n);
        }
    }
    out.push(')');
}

/// `1.002s`, `850ms`, `3m12s`
pub fn human_duration(ns: i128) -> String {
    let mut s = String::new();
    duration(&mut s, ns);
    s
}

fn duration(out: &mut String, ns: i128) {
    let ms = ns / 1_000_000;
    let _ = if ms < 1_000 {
        write!(out, "{ms}ms")
    } else if ms < 60_000 {
        write!(out, "{}.{:03}s", ms / 1000, ms % 1000)
    } else {
        let s = ms / 1000;
        write!(out, "{}m{:02}s", s / 60, s % 60)
    };
}

/// `by COMM (pid N, SYSCALL)`
fn creator(out: &mut String, b: &Birth) {
    escape::push(out, &b.comm);
    let _ = write!(out, " (pid {}, {})", b.pid, b.syscall.name());
}

/// The DETAILS column.
fn details(out: &mut String, r: &Record) {
    match r.event {
        EventType::Pinned => {
            out.push_str("no member left; held by ");
            for (i, p) in r.pinned_by.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                escape::push(out, p);
            }
        }
        EventType::Leak => {
            out.push_str("suspect leak: outlived its container");
            if let Some(c) = &r.ns_container {
                out.push(' ');
                escape::push(out, c.name.as_deref().unwrap_or(c.short_id()));
                if let Some(pod) = &c.pod {
                    out.push_str(" (pod ");
                    if let Some(ns) = &c.namespace {
                        escape::push(out, ns);
                        out.push('/');
                    }
                    escape::push(out, pod);
                    out.push(')');
                }
            }
            out.push_str(" by ");
            duration(out, r.age_ns.unwrap_or(0));
            out.push_str("; held by ");
            for (i, p) in r.pinned_by.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                escape::push(out, p);
            }
            if let Some(b) = &r.born {
                out.push_str("; created by ");
                creator(out, b);
            }
        }
        EventType::Destroy => {
            out.push_str(match r.end {
                Some(EndCause::PinReleased) => "ended: its last pin went",
                Some(EndCause::InodeReused) => "ended earlier: its inode was reused",
                Some(EndCause::KernelFreed) => "freed by the kernel",
                _ => "ended: its last member left",
            });
            if let Some(init) = r.init_pid {
                let _ = write!(out, ", with its init (pid {init})");
            }
            if let Some(b) = &r.born {
                out.push_str("; lived ");
                duration(out, r.time_ns - b.time_ns);
                out.push_str(", created by ");
                creator(out, b);
            }
        }
        _ => {
            let Some(syscall) = r.syscall else {
                return;
            };
            call(out, r, syscall);
            if r.event == EventType::Error {
                let _ = write!(out, " = -1 {}", errno::name(r.errno.unwrap_or(0)));
                return;
            }
            if let Some(child) = r.child_pid {
                let _ = write!(out, " -> child {child}");
            }
            if let Some(prev) = r.prev_inode {
                if Some(prev) == r.inode {
                    out.push_str("  (already a member)");
                } else {
                    let _ = write!(out, "  (was {prev})");
                }
            }
            if let (EventType::Join, Some(b)) = (r.event, &r.born) {
                out.push_str("; created ");
                duration(out, r.time_ns - b.time_ns);
                out.push_str(" ago by ");
                creator(out, b);
            }
        }
    }
}

/// Pads what was written since `from` to `width` characters, then a space.
fn pad_from(out: &mut String, from: usize, width: usize) {
    let written = out[from..].chars().count();
    for _ in written..width {
        out.push(' ');
    }
    out.push(' ');
}

/// The SGR colour of an event name: what changed at a glance (births
/// green, joins cyan, pins yellow, ends red, refusals and gaps bold).
fn sgr(event: &str) -> &'static str {
    match event {
        "create" => "32",
        "join" => "36",
        "pinned" => "33",
        "destroy" => "31",
        "error" => "1;35",
        "leak" => "1;33",
        _ => "1;31",
    }
}

/// `event` padded to the EVENT column, coloured when `color`: the padding
/// counts only the visible name.
fn event_column(out: &mut String, event: &str, color: bool) {
    if color {
        let _ = write!(out, "\x1b[{}m{event}\x1b[0m", sgr(event));
    } else {
        out.push_str(event);
    }
    for _ in event.chars().count()..7 {
        out.push(' ');
    }
    out.push(' ');
}

/// One timeline line, without the newline.
pub fn line(r: &Record) -> String {
    let mut s = String::new();
    line_into(&mut s, r, false);
    s
}

/// [`line`], appended to `out`; event names coloured when `color`.
pub fn line_into(out: &mut String, r: &Record, color: bool) {
    let at = out.len();
    out.push_str(&time_of_day(r.time_ns));
    pad_from(out, at, 16);
    let at = out.len();
    let comm = match &r.actor {
        // The pid inside the actor's own PID namespace, where it differs.
        Some(a) if a.vpid != 0 && a.vpid != a.tid => {
            let _ = write!(out, "{}/{}({})", a.pid, a.tid, a.vpid);
            a.comm.as_str()
        }
        Some(a) => {
            let _ = write!(out, "{}/{}", a.pid, a.tid);
            a.comm.as_str()
        }
        None => {
            out.push('-');
            "-"
        }
    };
    pad_from(out, at, 16);
    let at = out.len();
    escape::push(out, comm);
    pad_from(out, at, 16);
    let at = out.len();
    escape::push(
        out,
        r.container
            .as_ref()
            .or(r.ns_container.as_ref())
            .map_or("-", |c| c.short_id()),
    );
    pad_from(out, at, 12);
    event_column(out, r.event.name(), color);
    let at = out.len();
    out.push_str(r.kind.map_or("-", |k| k.name()));
    pad_from(out, at, 6);
    let at = out.len();
    match r.inode {
        Some(i) => {
            let _ = write!(out, "{i}");
        }
        None => out.push('-'),
    }
    pad_from(out, at, 11);
    details(out, r);
    who(out, r);
}

/// The actor's uid where it is not root's, its euid where that differs, and
/// whether a user namespace was created unprivileged.
fn who(out: &mut String, r: &Record) {
    let Some(a) = &r.actor else { return };
    if a.uid != 0 || a.euid != a.uid {
        let _ = write!(out, "  [uid {}", a.uid);
        if a.euid != a.uid {
            let _ = write!(out, " euid {}", a.euid);
        }
        out.push(']');
    }
    if r.event == EventType::Create && r.kind == Some(crate::model::NsKind::User) && !a.admin {
        out.push_str("  (unprivileged)");
    }
    // The flags shown are the kernel's; the caller's memory is only detail.
    if r.flags_unread {
        out.push_str("  (caller's flags unreadable; the kernel's shown)");
    }
    if let Some(f) = r.claimed_flags {
        let _ = write!(out, "  (caller's memory said {f:#x})");
    }
}

/// What a loss notice says, in words.
/// Runs the kernel skipped, for the loss notice and the closing summary.
pub fn skipped_runs(n: u64) -> String {
    format!(
        "{n} probe runs skipped by the kernel (a BPF program or bpf() call was already running on that CPU)"
    )
}

pub fn loss_summary(l: &Loss) -> String {
    loss_parts(l).join("; ")
}

/// Each kind of loss in `l` as a phrase, with what it costs or what to do:
/// the loss notices' words, and the closing line's.
pub fn loss_parts(l: &Loss) -> Vec<String> {
    let mut parts = Vec::new();
    if l.events > 0 {
        let mut by: Vec<String> = l.by_kind.iter().map(|(k, n)| format!("{n} {k}")).collect();
        by.push(format!("{} in all", l.events_total));
        parts.push(format!(
            "{} kernel events dropped, ring buffer full ({}); raise --buffer-size",
            l.events,
            by.join(", ")
        ));
    }
    if l.syscalls_missed > 0 {
        parts.push(format!(
            "{} namespace syscalls missed (in-flight table full)",
            l.syscalls_missed
        ));
    }
    if l.unwatched > 0 {
        parts.push(format!(
            "{} new namespaces not watched for their end (member map full)",
            l.unwatched
        ));
    }
    if l.forgotten > 0 {
        // A member met with no count: the LRU evicted it, or (only where
        // runs were skipped) the skipped run was the namespace's create.
        let why = if l.skipped > 0 {
            "LRU eviction, or a create a skipped run missed"
        } else {
            "LRU eviction"
        };
        parts.push(format!(
            "{} watched namespaces forgotten by the kernel's member map ({why}): their ends may be late or missing",
            l.forgotten
        ));
    }
    if l.untracked > 0 {
        parts.push(format!(
            "{} threads' exits not tracked (tracked map full)",
            l.untracked
        ));
    }
    if l.unfollowed > 0 {
        parts.push(format!(
            "{} descendants of followed processes not followed (follow map full)",
            l.unfollowed
        ));
    }
    if l.skipped > 0 {
        let by: Vec<String> = l
            .skipped_by
            .iter()
            .map(|(g, n)| format!("{n} {g}"))
            .collect();
        parts.push(format!("{} [{}]", skipped_runs(l.skipped), by.join(", ")));
    }
    parts
}

/// The timeline line of a loss notice: a gap the reader must not miss.
pub fn loss_line(l: &Loss) -> String {
    format!(
        "{:<16} {:<16} {:<16} {:<12} {:<7} {:<6} {:<11} {}",
        time_of_day(l.time_ns),
        "-",
        "-",
        "-",
        "LOST",
        "-",
        "-",
        loss_summary(l)
    )
}

impl<W: Write> TextSink<W> {
    fn header(&mut self) -> io::Result<()> {
        if !self.header_done {
            writeln!(self.out, "{HEADER}")?;
            self.header_done = true;
        }
        Ok(())
    }
}

impl<W: Write> Sink for TextSink<W> {
    fn record(&mut self, r: &Record) -> io::Result<()> {
        self.header()?;
        self.line.clear();
        line_into(&mut self.line, r, self.color);
        self.line.push('\n');
        self.out.write_all(self.line.as_bytes())
    }

    fn lost(&mut self, l: &Loss) -> io::Result<()> {
        self.header()?;
        let line = loss_line(l);
        if self.color {
            writeln!(
                self.out,
                "{}",
                line.replacen(" LOST ", &format!(" \x1b[{}mLOST\x1b[0m ", sgr("LOST")), 1)
            )
        } else {
            writeln!(self.out, "{line}")
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Actor, NsKind};

    fn record(event: EventType) -> Record {
        Record {
            time_ns: 1_709_210_096_123_456_789,
            event,
            kind: Some(NsKind::Uts),
            inode: Some(4026532309),
            ns_id: None,
            prev_inode: Some(4026531838),
            syscall: Some(Syscall::Unshare),
            flags: NsKind::Uts.flag(),
            actor: Some(Actor {
                pid: 4242,
                tid: 4242,
                ppid: 1,
                comm: "unshare".into(),
                vpid: 0,
                cgroup: 0,
                ..Actor::default()
            }),
            ..Record::default()
        }
    }

    #[test]
    fn create_line_shows_time_actor_kind_inode_and_call() {
        let l = line(&record(EventType::Create));
        assert!(l.starts_with("12:34:56.123456  4242/4242"), "{l}");
        for part in [
            "unshare",
            "create",
            "uts",
            "4026532309",
            "unshare(CLONE_NEWUTS)",
            "(was 4026531838)",
        ] {
            assert!(l.contains(part), "{part:?} missing in {l}");
        }
    }

    #[test]
    fn colour_marks_only_the_event_name_and_keeps_the_columns() {
        let r = record(EventType::Create);
        let plain = line(&r);
        let mut coloured = String::new();
        line_into(&mut coloured, &r, true);
        assert!(coloured.contains("\x1b[32mcreate\x1b[0m"), "{coloured}");
        assert_eq!(
            coloured.replace("\x1b[32m", "").replace("\x1b[0m", ""),
            plain
        );
        assert!(!plain.contains('\x1b'));
    }

    #[test]
    fn loss_line_says_what_was_dropped_and_what_to_do() {
        let l = loss_line(&Loss {
            time_ns: 1_709_210_096_123_456_789,
            events: 12,
            events_total: 12,
            by_kind: vec![("unshare_setns", 10), ("exit", 2)],
            syscalls_missed: 3,
            unwatched: 0,
            skipped: 0,
            skipped_by: vec![],
            ..Loss::default()
        });
        assert!(l.starts_with("12:34:56.123456  -"), "{l}");
        assert!(l.contains(" LOST "), "{l}");
        assert!(
            l.contains("12 kernel events dropped, ring buffer full (10 unshare_setns, 2 exit, 12 in all); raise --buffer-size; 3 namespace syscalls missed"),
            "{l}"
        );
        assert!(!l.contains("member map"), "{l}");
    }

    #[test]
    fn error_line_shows_errno_name() {
        let mut r = record(EventType::Error);
        r.errno = Some(1);
        r.inode = None;
        assert!(
            line(&r).ends_with("unshare(CLONE_NEWUTS) = -1 EPERM"),
            "{}",
            line(&r)
        );
    }

    #[test]
    fn join_names_the_birth_and_destroy_the_lifetime() {
        let born = Birth {
            time_ns: 1_709_210_096_123_456_789 - 12_000_000_000,
            pid: 5933,
            comm: "runc:[1:CHILD]".into(),
            syscall: Syscall::Unshare,
        };
        let mut r = record(EventType::Join);
        r.born = Some(born.clone());
        assert!(
            line(&r).ends_with("created 12.000s ago by runc:[1:CHILD] (pid 5933, unshare)"),
            "{}",
            line(&r)
        );
        let d = Record {
            event: EventType::Destroy,
            end: Some(EndCause::LastMemberLeft),
            born: Some(born),
            actor: None,
            syscall: None,
            ..record(EventType::Destroy)
        };
        let l = line(&d);
        assert!(l.contains("destroy uts"), "{l}");
        assert!(
            l.contains("ended: its last member left; lived 12.000s"),
            "{l}"
        );
        assert_eq!(human_duration(850_000_000), "850ms");
        assert_eq!(human_duration(192_000_000_000), "3m12s");
    }

    #[test]
    fn strings_a_process_or_mount_sets_cannot_drive_the_terminal() {
        let hostile = "\x1b[2J\x1b]0;pwned\x07\u{9b}1A\u{202e}";
        let shown = r"\e[2J\e]0;pwned\x07\u{9b}1A\u{202e}";
        let mut r = record(EventType::Join);
        r.actor.as_mut().unwrap().comm = hostile.into();
        r.born = Some(Birth {
            time_ns: r.time_ns - 1_000_000,
            pid: 7,
            comm: hostile.into(),
            syscall: Syscall::Unshare,
        });
        let mut p = record(EventType::Pinned);
        p.actor = None;
        p.syscall = None;
        p.pinned_by = vec![
            format!("mount /tmp/d/{hostile}"),
            "fd 3 of a\nb (pid 9)".into(),
        ];
        let mut d = record(EventType::Destroy);
        d.born = r.born.clone();
        for r in [r, p, d] {
            for color in [false, true] {
                let mut l = String::new();
                line_into(&mut l, &r, color);
                let raw = l
                    .replace("\x1b[0m", "")
                    .replace("\x1b[36m", "")
                    .replace("\x1b[33m", "")
                    .replace("\x1b[31m", "");
                assert!(
                    !raw.chars().any(|c| c.is_control() || c == '\u{202e}'),
                    "{l:?}"
                );
                assert!(l.contains(shown), "{l}");
            }
        }
        // The columns after COMM stay where they were: the escaped form
        // is padded like any name.
        let mut r = record(EventType::Create);
        r.actor.as_mut().unwrap().comm = "a\tb".into();
        let l = line(&r);
        assert_eq!(
            l.find(" create "),
            line(&record(EventType::Create)).find(" create ")
        );
        assert!(l.contains(r"a\tb"), "{l}");
    }

    #[test]
    fn setns_line_shows_fd_and_header_comes_once() {
        let mut r = record(EventType::Join);
        r.syscall = Some(Syscall::Setns);
        r.fd = Some(3);
        r.flags = 0;
        assert!(line(&r).contains("setns(fd 3, 0)"));
        let mut out = Vec::new();
        let mut s = TextSink::new(&mut out);
        s.record(&r).unwrap();
        s.record(&r).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().filter(|l| *l == HEADER).count(), 1);
        assert_eq!(text.lines().count(), 3);
    }
}
