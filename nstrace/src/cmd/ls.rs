//! `nstrace ls`: the namespaces alive now, as lsns counts them, as a table, a
//! tree (user namespaces owning the others; PID namespaces nested), or JSON.
//! Namespaces with no process are listed too, marked, with what holds them:
//! "why is this netns still here?" in one command. Those a running trace
//! told as suspect leaks (their container gone) are marked `LEAK?` with
//! whose they were; `--leaks` lists only those.

use std::{
    collections::{BTreeMap, HashMap},
    io::{self, Write},
};

use serde_json::{Value, json};

use crate::{
    model::NsKey,
    model::{NsKind, Record},
    output::{json::Wire, leaks},
    sys::{
        nsfs::{Answer, Handles},
        procfs::{self, MountPin, NsMeta, Snapshot},
        time::{Clock, rfc3339},
    },
    util::escape::{Escaped, escaped},
};

/// One namespace as listed.
#[derive(Clone, Debug)]
pub struct Listed {
    pub kind: NsKind,
    pub inode: u32,
    /// Processes in it (as lsns counts: by each process's own links).
    pub nprocs: usize,
    /// Lowest pid in it, with its uid and comm.
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    pub command: Option<String>,
    pub meta: NsMeta,
    /// nsfs bind mounts holding it, in any mount namespace.
    pub mounts: Vec<MountPin>,
    /// What holds it besides its processes: mounts, fds, namespaces it owns
    /// or contains.
    pub held_by: Vec<String>,
    /// Memberless, and a running trace told it as a suspect leak: its
    /// `leak` record (whose it was, when that container went).
    pub leak: Option<Record>,
}

impl Listed {
    /// No process is in it: something else keeps it alive.
    pub fn memberless(&self) -> bool {
        self.nprocs == 0
    }
}

/// `nstrace ls [--json | --tree] [--leaks]`.
pub fn run(json: bool, tree: bool, leaks_only: bool) -> anyhow::Result<()> {
    let (mut list, traces) = collect_with_traces();
    if leaks_only {
        list.retain(|l| l.leak.is_some());
        // Only a trace knows whose a namespace was: say so where none runs.
        if traces == 0 {
            eprintln!(
                "nstrace: no trace is running to tell leaks (they are told by a running `nstrace`, after --leak-after); the memberless namespaces and their holders are in plain `nstrace ls`"
            );
        }
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &to_json(&list))?;
        writeln!(out)?;
    } else if tree {
        write_tree(&mut out, &list)?;
    } else {
        write_table(&mut out, &list)?;
    }
    out.flush()?;
    Ok(())
}

/// Reads the namespaces alive now.
pub fn collect() -> Vec<Listed> {
    collect_with_traces().0
}

/// [`collect`], and how many running traces told their leaks.
fn collect_with_traces() -> (Vec<Listed>, usize) {
    // Sockets too: a network namespace only a socket holds is still one
    // the machine keeps (and, memberless, a leak to look at).
    let snap = procfs::scan().with_sockets().with_memberless_mounts();
    let mut list = listed(&snap, |k| snap.meta(k), &procfs::home_mount_namespaces());
    // A holder can let go between the scan and now: where the kernel can be
    // asked, a memberless namespace it says is gone is not listed.
    if let Ok(h) = Handles::open() {
        list.retain(|l| {
            !(l.memberless()
                && l.meta
                    .ns_id
                    .is_some_and(|id| matches!(h.ask(l.kind, l.inode, id), Ok(Answer::Gone))))
        });
    }
    let told = leaks::read_all();
    mark_leaks(&mut list, told.leaks);
    (list, told.traces)
}

/// Marks the memberless namespaces the traces told as leaks (the same
/// namespace: its id too, where both have one).
fn mark_leaks(list: &mut [Listed], mut told: BTreeMap<NsKey, Record>) {
    for l in list.iter_mut().filter(|l| l.memberless()) {
        let Some(r) = told.remove(&(l.kind, l.inode)) else {
            continue;
        };
        if r.ns_id.is_none() || l.meta.ns_id.is_none() || r.ns_id == l.meta.ns_id {
            l.leak = Some(r);
        }
    }
}

/// When the container of a leak went (Unix ns).
fn container_gone(r: &Record) -> i128 {
    r.time_ns - r.age_ns.unwrap_or(0)
}

/// `LEAK? pod shop/web (container 3f2a…) gone 12.0s`: for the table.
fn leak_text(r: &Record, now: i128) -> String {
    let whose = match &r.ns_container {
        Some(c) => {
            let name = c.name.as_deref().unwrap_or(c.short_id());
            match (&c.pod, &c.namespace) {
                (Some(p), Some(n)) => format!("pod {n}/{p} (container {name})"),
                (Some(p), None) => format!("pod {p} (container {name})"),
                _ => format!("container {name}"),
            }
        }
        None => "its container".to_string(),
    };
    let ms = (now - container_gone(r)).max(0) / 1_000_000;
    format!("LEAK? {whose} gone {}.{:03}s ago", ms / 1000, ms % 1000)
}

fn listed(snap: &Snapshot, meta: impl Fn(NsKey) -> NsMeta, home: &[u32]) -> Vec<Listed> {
    let mut list: Vec<Listed> = snap
        .namespaces()
        .into_iter()
        .filter_map(|key @ (kind, inode)| {
            let procs = snap.processes.get(&key);
            let mounts = snap.mounts.get(&key).cloned().unwrap_or_default();
            // Namespaces only a thread or a for-children link is in are not
            // lsns rows; skip them unless a mount or fd holds them.
            let held = !mounts.is_empty()
                || snap.fds.contains_key(&key)
                || snap.sockets.contains_key(&key);
            if procs.is_none() && !held {
                return None;
            }
            let pid = procs.and_then(|p| p.iter().next().copied());
            let info = pid.and_then(|p| snap.procs.get(&p));
            Some(Listed {
                kind,
                inode,
                nprocs: procs.map_or(0, |p| p.len()),
                pid,
                uid: info.map(|i| i.uid),
                command: info.map(|i| i.comm.clone()),
                meta: meta(key),
                held_by: procfs::describe_holders(key, &snap.mounts, &snap.fds, home)
                    .into_iter()
                    .chain(procfs::describe_sockets(key, &snap.sockets))
                    .collect(),
                mounts,
                leak: None,
            })
        })
        .collect();
    // What a namespace owns or contains holds it too.
    let owned: Vec<(NsKey, String)> = list
        .iter()
        .flat_map(|l| {
            let own = l
                .meta
                .owner
                .filter(|&o| !(l.kind == NsKind::User && o == l.inode));
            let by_owner = own.map(|o| {
                (
                    (NsKind::User, o),
                    format!("owned {} namespace {}", l.kind.name(), l.inode),
                )
            });
            let by_parent = (l.kind == NsKind::Pid)
                .then_some(l.meta.parent)
                .flatten()
                .map(|p| ((NsKind::Pid, p), format!("child pid namespace {}", l.inode)));
            by_owner.into_iter().chain(by_parent)
        })
        .collect();
    for l in list.iter_mut().filter(|l| l.memberless()) {
        l.held_by.extend(
            owned
                .iter()
                .filter(|(k, _)| *k == (l.kind, l.inode))
                .map(|(_, why)| why.clone()),
        );
    }
    list
}

fn user_names() -> HashMap<u32, String> {
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let uid = f.nth(1)?.parse().ok()?;
            Some((uid, name.to_string()))
        })
        .collect()
}

pub fn to_json(list: &[Listed]) -> Value {
    let rows: Vec<Value> = list
        .iter()
        .map(|l| {
            json!({
                "ns": l.inode,
                "type": l.kind.name(),
                "nprocs": l.nprocs,
                "pid": l.pid,
                "uid": l.uid,
                "command": l.command,
                "ns_id": l.meta.ns_id,
                "owner_user_ns": l.meta.owner,
                "parent_pid_ns": if l.kind == NsKind::Pid { l.meta.parent } else { None },
                "mounts": l.mounts.iter().map(|m| &m.path).collect::<Vec<_>>(),
                "memberless": l.memberless(),
                "held_by": if l.memberless() { Some(&l.held_by) } else { None },
                // The trace's own record, in its schema: whose it was, how
                // long it had outlived it when told.
                "leak": l.leak.as_ref().map(|r| {
                    let mut v = serde_json::to_value(Wire::record(r)).unwrap_or(Value::Null);
                    if let Some(o) = v.as_object_mut() {
                        o.insert(
                            "container_gone".into(),
                            Value::String(rfc3339(container_gone(r)).as_str().to_string()),
                        );
                    }
                    v
                }),
            })
        })
        .collect();
    json!({ "namespaces": rows })
}

pub fn write_table(out: &mut dyn Write, list: &[Listed]) -> io::Result<()> {
    let names = user_names();
    let now = Clock::now_unix_ns();
    writeln!(
        out,
        "{:<11} {:<6} {:>6} {:>7} {:<10} {:<16} HELD BY (no process in it)",
        "NS", "TYPE", "NPROCS", "PID", "USER", "COMMAND"
    )?;
    for l in list {
        let user = l
            .uid
            .map(|u| names.get(&u).cloned().unwrap_or_else(|| u.to_string()))
            .unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:<11} {:<6} {:>6} {:>7} {:<10} {:<16} {}",
            l.inode,
            l.kind.name(),
            l.nprocs,
            l.pid.map_or("-".into(), |p| p.to_string()),
            Escaped(&user),
            Escaped(l.command.as_deref().unwrap_or("-")),
            if l.memberless() {
                let held = if l.held_by.is_empty() {
                    "? (nothing visible: held inside the kernel)".to_string()
                } else {
                    escaped(&l.held_by.join(", ")).into_owned()
                };
                match &l.leak {
                    Some(r) => format!("{}; {held}", escaped(&leak_text(r, now))),
                    None => held,
                }
            } else {
                String::new()
            }
        )?;
    }
    Ok(())
}

fn label(l: &Listed) -> String {
    let who = match (&l.command, l.pid) {
        (Some(c), Some(p)) => format!("{c} (pid {p})"),
        _ => l
            .held_by
            .first()
            .map(|h| format!("no process; held by {h}"))
            .unwrap_or_default(),
    };
    format!(
        "{} {}  {} procs  {}",
        l.kind.name(),
        l.inode,
        l.nprocs,
        Escaped(&who)
    )
}

/// Two trees: each user namespace with the namespaces it owns (and its child
/// user namespaces), then PID namespaces by nesting.
pub fn write_tree(out: &mut dyn Write, list: &[Listed]) -> io::Result<()> {
    let by_key: BTreeMap<NsKey, &Listed> = list.iter().map(|l| ((l.kind, l.inode), l)).collect();
    let users: Vec<&Listed> = list.iter().filter(|l| l.kind == NsKind::User).collect();
    let is_user = |i: u32| by_key.contains_key(&(NsKind::User, i));
    writeln!(out, "user namespaces and what they own:")?;
    let top = |u: &&&Listed| !u.meta.owner.is_some_and(|o| o != u.inode && is_user(o));
    for root in users.iter().filter(top) {
        user_subtree(out, list, root, 1)?;
    }
    let orphans: Vec<&Listed> = list
        .iter()
        .filter(|l| l.kind != NsKind::User && !l.meta.owner.is_some_and(is_user))
        .collect();
    if !orphans.is_empty() {
        writeln!(out, "  (owner not visible)")?;
        for l in orphans {
            writeln!(out, "    {}", label(l))?;
        }
    }
    writeln!(out, "pid namespaces:")?;
    let pids: Vec<&Listed> = list.iter().filter(|l| l.kind == NsKind::Pid).collect();
    let is_pid = |i: u32| by_key.contains_key(&(NsKind::Pid, i));
    for root in pids.iter().filter(|p| !p.meta.parent.is_some_and(is_pid)) {
        pid_subtree(out, &pids, root, 1)?;
    }
    Ok(())
}

fn user_subtree(
    out: &mut dyn Write,
    list: &[Listed],
    user: &Listed,
    depth: usize,
) -> io::Result<()> {
    writeln!(out, "{}{}", "  ".repeat(depth), label(user))?;
    for l in list
        .iter()
        .filter(|l| l.meta.owner == Some(user.inode) && l.kind != NsKind::User)
    {
        writeln!(out, "{}{}", "  ".repeat(depth + 1), label(l))?;
    }
    for child in list.iter().filter(|l| {
        l.kind == NsKind::User && l.meta.owner == Some(user.inode) && l.inode != user.inode
    }) {
        user_subtree(out, list, child, depth + 1)?;
    }
    Ok(())
}

fn pid_subtree(out: &mut dyn Write, pids: &[&Listed], ns: &Listed, depth: usize) -> io::Result<()> {
    writeln!(out, "{}{}", "  ".repeat(depth), label(ns))?;
    for child in pids
        .iter()
        .filter(|p| p.meta.parent == Some(ns.inode) && p.inode != ns.inode)
    {
        pid_subtree(out, pids, child, depth + 1)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// net namespace 2 held by `ip netns add t`'s mount, seen from PID 1.
    fn pin_net_2_at_run_netns_t(snap: &mut Snapshot) {
        snap.mounts.insert(
            (NsKind::Net, 2),
            vec![MountPin {
                path: "/run/netns/t".into(),
                mnt_ns: 100,
                pid: 1,
                ns_held_by: None,
            }],
        );
    }

    #[test]
    fn lists_processes_and_memberless_namespaces_with_their_holders() {
        let mut snap = Snapshot::default();
        snap.processes
            .insert((NsKind::Net, 1), BTreeSet::from([1, 5]));
        snap.processes
            .insert((NsKind::User, 9), BTreeSet::from([1, 5]));
        pin_net_2_at_run_netns_t(&mut snap);
        snap.fds
            .insert((NsKind::Uts, 4), vec![(77, 3, "holder".to_string())]);
        snap.threads.insert((NsKind::Pid, 3), 1); // only a for-children link
        let meta = |_| NsMeta {
            owner: Some(9),
            ..NsMeta::default()
        };
        let list = listed(&snap, meta, &[100]);
        let rows: Vec<_> = list
            .iter()
            .map(|l| (l.kind, l.inode, l.nprocs, l.memberless()))
            .collect();
        assert_eq!(
            rows,
            vec![
                (NsKind::Uts, 4, 0, true),
                (NsKind::Net, 1, 2, false),
                (NsKind::Net, 2, 0, true),
                (NsKind::User, 9, 2, false)
            ]
        );
        assert_eq!(list[0].held_by, vec!["fd 3 of holder (pid 77)".to_string()]);
        let v = to_json(&list);
        assert_eq!(v["namespaces"][2]["mounts"][0], "/run/netns/t");
        assert_eq!(v["namespaces"][2]["held_by"][0], "mount /run/netns/t");
        assert_eq!(v["namespaces"][2]["memberless"], true);
        assert!(v["namespaces"][1]["held_by"].is_null());
        let mut table = Vec::new();
        write_table(&mut table, &list).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(table.contains("fd 3 of holder (pid 77)"), "{table}");
        let mut tree = Vec::new();
        write_tree(&mut tree, &list).unwrap();
        let tree = String::from_utf8(tree).unwrap();
        assert!(tree.contains("  user 9  2 procs"), "{tree}");
        assert!(
            tree.contains("    net 2  0 procs  no process; held by mount /run/netns/t"),
            "{tree}"
        );
    }

    #[test]
    fn a_memberless_user_namespace_is_held_by_what_it_owns() {
        let mut snap = Snapshot::default();
        snap.fds
            .insert((NsKind::User, 9), vec![(77, 3, "holder".to_string())]);
        pin_net_2_at_run_netns_t(&mut snap);
        let meta = |k: NsKey| NsMeta {
            owner: (k.0 == NsKind::Net).then_some(9),
            ..NsMeta::default()
        };
        let list = listed(&snap, meta, &[100]);
        let user = list.iter().find(|l| l.kind == NsKind::User).unwrap();
        assert_eq!(
            user.held_by,
            vec![
                "fd 3 of holder (pid 77)".to_string(),
                "owned net namespace 2".to_string()
            ]
        );
    }
}
