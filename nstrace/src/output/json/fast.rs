//! The record line written by hand: byte for byte what serde writes for
//! [`super::Wire::record`] (a test holds the two equal over generated
//! records), without building the flat `Wire` (every field of every line
//! kind, moved and tested one by one), escaping constant keys, or
//! formatting through `fmt`. Under a namespace churn, serde's path was a
//! third of nstrace's CPU per record. The schema stays defined by `Wire`:
//! the reader and every other line use it.

use crate::{
    model::{Container, EventType, NsKind, Record},
    sys::time::rfc3339,
    util::errno,
};

/// Appends `r` as one JSON object (no newline) to `out`.
pub fn record(out: &mut Vec<u8>, r: &Record) {
    let a = r.actor.as_ref();
    let is_destroy = r.event == EventType::Destroy;
    out.extend_from_slice(b"{\"time\":\"");
    out.extend_from_slice(rfc3339(r.time_ns).as_str().as_bytes());
    out.extend_from_slice(b"\",\"event\":");
    text(out, r.event.name());
    key(out, "ns_type");
    or_null(out, r.kind, |o, k| text(o, k.name()));
    key(out, "ns_inode");
    or_null(out, r.inode, num);
    key(out, "ns_id");
    or_null(out, r.ns_id, num);
    if let Some(i) = r.prev_inode {
        key(out, "prev_inode");
        num(out, i);
    }
    key(out, "syscall");
    or_null(out, r.syscall, |o, s| text(o, s.name()));
    key(out, "flags");
    out.push(b'[');
    for (i, k) in NsKind::in_flags(r.flags).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        text(out, k.flag_name());
    }
    out.push(b']');
    key(out, "raw_flags");
    hex(out, r.flags);
    key(out, "pid");
    or_null(out, a.map(|a| a.pid), num);
    key(out, "tid");
    or_null(out, a.map(|a| a.tid), num);
    key(out, "ppid");
    or_null(out, a.map(|a| a.ppid), num);
    key(out, "comm");
    or_null(out, a.map(|a| a.comm.as_str()), text);
    key(out, "vpid");
    or_null(out, a.map(|a| a.vpid), num);
    key(out, "uid");
    or_null(out, a.map(|a| a.uid), num);
    if let Some(a) = a.filter(|a| a.euid != a.uid) {
        key(out, "euid");
        num(out, a.euid);
    }
    if let (EventType::Create, Some(NsKind::User), Some(a)) = (r.event, r.kind, a) {
        key(out, "unprivileged");
        boolean(out, !a.admin);
    }
    key(out, "container");
    or_null(out, r.container.as_ref(), container);
    if let Some(p) = r.child_pid {
        key(out, "child_pid");
        num(out, p);
    }
    if r.flags_unread {
        key(out, "flags_read");
        boolean(out, false);
    }
    if let Some(f) = r.claimed_flags {
        key(out, "claimed_flags");
        hex(out, f);
    }
    if let Some(fd) = r.fd {
        key(out, "fd");
        num(out, fd);
    }
    if let Some(e) = r.errno {
        key(out, "errno");
        text(out, &errno::name(e));
        key(out, "errno_num");
        num(out, e);
    }
    if let Some(i) = r.owner_inode {
        key(out, "owner_user_ns");
        num(out, i);
    }
    if let Some(i) = r.parent_inode {
        key(out, "parent_pid_ns");
        num(out, i);
    }
    if let Some(b) = &r.born {
        key(out, "ns_created");
        out.extend_from_slice(b"{\"time\":\"");
        out.extend_from_slice(rfc3339(b.time_ns).as_str().as_bytes());
        out.extend_from_slice(b"\",\"pid\":");
        num(out, b.pid);
        key(out, "comm");
        text(out, &b.comm);
        key(out, "syscall");
        text(out, b.syscall.name());
        out.push(b'}');
    }
    if let Some(c) = &r.ns_container {
        key(out, "ns_container");
        container(out, c);
    }
    if is_destroy {
        if let Some(e) = r.end {
            key(out, "end");
            text(out, e.name());
        }
        if let Some(m) = r.end_by {
            key(out, "end_by");
            text(out, m.name());
        }
        key(out, "lifetime_ns");
        or_null(out, r.born.as_ref(), |o, b| {
            num(o, (r.time_ns - b.time_ns) as i64)
        });
        if let Some(p) = r.init_pid {
            key(out, "init_pid");
            num(out, p);
        }
    }
    if matches!(r.event, EventType::Pinned | EventType::Leak) {
        key(out, "pinned_by");
        out.push(b'[');
        for (i, p) in r.pinned_by.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            text(out, p);
        }
        out.push(b']');
    }
    if r.event == EventType::Leak {
        key(out, "age_ns");
        or_null(out, r.age_ns, |o, a| num(o, a as i64));
    }
    out.push(b'}');
}

fn container(out: &mut Vec<u8>, c: &Container) {
    out.extend_from_slice(b"{\"id\":");
    text(out, &c.id);
    key(out, "runtime");
    text(out, c.runtime);
    key(out, "name");
    or_null(out, c.name.as_deref(), text);
    if let Some(p) = &c.pod {
        key(out, "pod");
        text(out, p);
    }
    if let Some(n) = &c.namespace {
        key(out, "namespace");
        text(out, n);
    }
    out.push(b'}');
}

/// `,"name":` (the names are constants: nothing to escape). Inlined, so
/// that each copy has a constant length (no memcpy call).
#[inline(always)]
fn key(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn or_null<T>(out: &mut Vec<u8>, v: Option<T>, write: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        Some(v) => write(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string. Untrusted text (command names, container names) is
/// escaped exactly as serde_json does; only text with nothing to escape
/// takes the copy.
fn text(out: &mut Vec<u8>, s: &str) {
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
        return;
    }
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

fn num(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn boolean(out: &mut Vec<u8>, v: bool) {
    out.extend_from_slice(if v { b"true" } else { b"false" });
}

/// `"0x…"`, as `{:#x}` writes it.
fn hex(out: &mut Vec<u8>, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    let mut at = buf.len();
    let mut v = v;
    loop {
        at -= 1;
        buf[at] = DIGITS[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(b"\"0x");
    out.extend_from_slice(&buf[at..]);
    out.push(b'"');
}
