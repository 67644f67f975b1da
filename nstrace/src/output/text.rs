//! The human timeline: a header, then one aligned line per record.

use std::io::{self, Write};

use super::Sink;
use crate::{
    errno,
    record::{flag_names, EventType, Record, Syscall},
    time::time_of_day,
};

pub struct TextSink<W: Write> {
    out: W,
    header_done: bool,
}

impl<W: Write> TextSink<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            header_done: false,
        }
    }
}

pub const HEADER: &str =
    "TIME(UTC)        PID/TID          COMM             EVENT   NS     INODE       DETAILS";

/// `unshare(CLONE_NEWUTS|CLONE_NEWNET)`, `setns(fd 3, CLONE_NEWNET)`, ...
fn call(r: &Record) -> String {
    let names = flag_names(r.flags);
    let flags = if r.flags == 0 {
        "0".to_string()
    } else if names.is_empty() {
        format!("{:#x}", r.flags)
    } else {
        names.join("|")
    };
    match (r.syscall, r.fd) {
        (Syscall::Setns, Some(fd)) => format!("setns(fd {fd}, {flags})"),
        (s, _) => format!("{}({flags})", s.name()),
    }
}

/// One timeline line, without the newline.
pub fn line(r: &Record) -> String {
    let pid = format!("{}/{}", r.actor.pid, r.actor.tid);
    let kind = r.kind.map_or("-", |k| k.name());
    let inode = r.inode.map_or_else(|| "-".to_string(), |i| i.to_string());
    let mut details = call(r);
    match r.event {
        EventType::Error => {
            let e = r.errno.unwrap_or(0);
            details.push_str(&format!(" = -1 {}", errno::name(e)));
        }
        _ => {
            if let Some(child) = r.child_pid {
                details.push_str(&format!(" -> child {child}"));
            }
            if let Some(prev) = r.prev_inode {
                if Some(prev) == r.inode {
                    details.push_str("  (already a member)");
                } else {
                    details.push_str(&format!("  (was {prev})"));
                }
            }
        }
    }
    format!(
        "{:<16} {pid:<16} {:<16} {:<7} {kind:<6} {inode:<11} {details}",
        time_of_day(r.time_ns),
        r.actor.comm,
        r.event.name(),
    )
}

impl<W: Write> Sink for TextSink<W> {
    fn record(&mut self, r: &Record) -> io::Result<()> {
        if !self.header_done {
            writeln!(self.out, "{HEADER}")?;
            self.header_done = true;
        }
        writeln!(self.out, "{}", line(r))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Actor, NsKind};

    fn record(event: EventType) -> Record {
        Record {
            time_ns: 1_709_210_096_123_456_789,
            event,
            kind: Some(NsKind::Uts),
            inode: Some(4026532309),
            ns_id: None,
            prev_inode: Some(4026531838),
            syscall: Syscall::Unshare,
            flags: NsKind::Uts.flag(),
            actor: Actor {
                pid: 4242,
                tid: 4242,
                ppid: 1,
                comm: "unshare".into(),
            },
            child_pid: None,
            fd: None,
            errno: None,
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
    fn setns_line_shows_fd_and_header_comes_once() {
        let mut r = record(EventType::Join);
        r.syscall = Syscall::Setns;
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
