//! Namespace lifecycle against the real kernel: each end is reported once,
//! after the last member left, never while one lives; pinned namespaces end
//! when their pin goes.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use nstrace_tests::*;
use serde_json::Value;

/// Creates a namespace of `kind` with `unshare FLAGS sleep`, checks no end is
/// reported while the sleeper lives, kills it, and expects exactly one destroy.
fn create_then_destroy(flags: &[&str], kind: &str, link: &str) {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&[]);
    let mut argv = vec!["unshare"];
    argv.extend_from_slice(flags);
    argv.extend_from_slice(&["sleep", "60"]);
    let g = Group::spawn(&argv);
    let inode = wait_ns_changed(g.pid(), link);
    tracer.wait_for(1, |r| is(r, "create", kind, inode));
    thread::sleep(Duration::from_millis(300));
    assert!(
        !tracer
            .records()
            .iter()
            .any(|r| is(r, "destroy", kind, inode)),
        "destroy reported while a member lives: {:#?}",
        tracer.records()
    );
    let killed = Instant::now();
    drop(g);
    let ends = tracer.wait_for(1, |r| is(r, "destroy", kind, inode));
    assert!(killed.elapsed() < Duration::from_secs(5));
    let d = &ends[0];
    // A zombie not yet reaped (or its credentials) can hold it a moment
    // longer: then it was reported pinned, and ends when that goes.
    let end = d["end"].as_str().unwrap();
    assert!(
        end == expected_end("last-member-left") || end == expected_end("pin-released"),
        "{d}"
    );
    assert!(d["lifetime_ns"].as_i64().unwrap() >= 300_000_000, "{d}");
    // Decided by the method the start line names for this kind. On a busy
    // machine another namespace can take the inode first: then the end is
    // told at that create, late and by no method (as the README says).
    let method = expected_method(&tracer, kind, &[]);
    assert_eq!(ends_by_kind(&tracer)[kind], method);
    // That create is another namespace's: same kind and inode, its own
    // ns_id (so not `is`, which matches the waited namespace's id).
    let reused = d["end_by"].is_null()
        && tracer.records().iter().any(|r| {
            r["event"] == "create"
                && r["ns_type"] == kind
                && r["ns_inode"] == inode
                && r["ns_id"] != d["ns_id"]
                && r["time"] == d["time"]
        });
    if !reused {
        assert_eq!(d["end_by"], method, "{d}");
        if method == "fentry" {
            assert_eq!(d["end"], "kernel-freed", "{d}");
        }
    }
    assert_eq!(d["ns_created"]["comm"], "unshare");
    assert!(d["syscall"].is_null());
    thread::sleep(Duration::from_millis(300));
    let n = tracer
        .records()
        .iter()
        .filter(|r| is(r, "destroy", kind, inode))
        .count();
    assert_eq!(n, 1, "{:#?}", tracer.records());
    assert!(tracer.stop().0.success());
}

#[test]
fn mnt_ends_with_its_last_member() {
    create_then_destroy(&["-m"], "mnt", "mnt");
}

#[test]
fn uts_ends_with_its_last_member() {
    create_then_destroy(&["-u"], "uts", "uts");
}

#[test]
fn ipc_ends_with_its_last_member() {
    create_then_destroy(&["-i"], "ipc", "ipc");
}

#[test]
fn net_ends_with_its_last_member() {
    create_then_destroy(&["-n"], "net", "net");
}

#[test]
fn user_ends_with_its_last_member() {
    create_then_destroy(&["-U"], "user", "user");
}

#[test]
fn cgroup_ends_with_its_last_member() {
    create_then_destroy(&["-C"], "cgroup", "cgroup");
}

#[test]
fn time_ends_with_its_last_member() {
    create_then_destroy(&["-T"], "time", "time_for_children");
}

#[test]
fn pid_ends_with_its_last_member() {
    create_then_destroy(&["-p", "-f"], "pid", "pid_for_children");
}

/// The start record names a method for every kind this kernel has, and the
/// one this kernel and probe mode call for.
#[test]
fn the_start_names_each_kinds_method() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&[]);
    let by_kind = ends_by_kind(&tracer);
    assert_eq!(
        by_kind.keys().cloned().collect::<Vec<_>>(),
        kernel_kinds(),
        "{by_kind:?}"
    );
    for (kind, method) in &by_kind {
        assert_eq!(method, expected_method(&tracer, kind, &[]), "{by_kind:?}");
    }
    assert!(tracer.stop().0.success());
}

/// Kinds the free path does not report (as on a kernel without a free
/// function for them) are decided by the next best method, said so at
/// start-up, while the others keep fentry's exact ends.
#[test]
fn kinds_left_without_fentry_end_by_the_next_method() {
    if !privileged() || probe_mode() != "fentry" {
        return;
    }
    let off = ["uts", "ipc"];
    let tracer = Tracer::start(&["--no-fentry-for=uts,ipc"]);
    assert!(
        tracer.stderr().contains("fentry left off for uts, ipc"),
        "{}",
        tracer.stderr()
    );
    let by_kind = ends_by_kind(&tracer);
    for (kind, method) in &by_kind {
        assert_eq!(method, expected_method(&tracer, kind, &off), "{by_kind:?}");
    }
    assert_eq!(by_kind["net"], "fentry");
    let g = Group::spawn(&["unshare", "-u", "-i", "-n", "sleep", "60"]);
    let inodes: Vec<(&str, u64)> = ["uts", "ipc", "net"]
        .into_iter()
        .map(|k| (k, wait_ns_changed(g.pid(), k)))
        .collect();
    for (k, i) in &inodes {
        tracer.wait_for(1, |r| is(r, "create", k, *i));
    }
    drop(g);
    for (k, i) in &inodes {
        let d = &tracer.wait_for(1, |r| is(r, "destroy", k, *i))[0];
        assert_eq!(d["end_by"], by_kind[*k], "{d}");
        assert_eq!(d["end"] == "kernel-freed", by_kind[*k] == "fentry", "{d}");
    }
    assert!(tracer.stop().0.success());
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("ip");
    assert!(st.success(), "ip {args:?}");
}

#[test]
fn ip_netns_is_pinned_by_its_mount_and_ends_on_delete() {
    if !privileged() {
        return;
    }
    let name = format!("nstrace-test-{}", std::process::id());
    let _ = Command::new("ip")
        .args(["netns", "delete", &name])
        .stderr(std::process::Stdio::null())
        .status();
    let tracer = Tracer::start(&[]);
    ip(&["netns", "add", &name]);
    let path = format!("/run/netns/{name}");
    let inode = {
        let out = Command::new("stat")
            .args(["-L", "-c", "%i", &path])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    tracer.wait_for(1, |r| is(r, "create", "net", inode));
    let pinned = tracer.wait_for(1, |r| is(r, "pinned", "net", inode));
    assert!(
        pinned[0]["pinned_by"][0].as_str().unwrap().contains(&path),
        "{}",
        pinned[0]
    );
    ip(&["netns", "exec", &name, "true"]);
    let joins = tracer.wait_for(1, |r| is(r, "join", "net", inode));
    assert_eq!(joins[0]["ns_created"]["comm"], "ip");
    thread::sleep(Duration::from_millis(700));
    assert!(
        !tracer
            .records()
            .iter()
            .any(|r| is(r, "destroy", "net", inode))
    );
    let deleted = Instant::now();
    ip(&["netns", "delete", &name]);
    let ends = tracer.wait_for(1, |r| is(r, "destroy", "net", inode));
    assert!(
        deleted.elapsed() < Duration::from_secs(2),
        "destroy took {:?}",
        deleted.elapsed()
    );
    assert_eq!(ends[0]["end"], expected_end("pin-released"));
    assert!(tracer.stop().0.success());
}

#[test]
fn pid_namespace_ends_with_its_init_while_children_live() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&[]);
    let g = Group::spawn(&[
        "unshare",
        "-p",
        "-f",
        "sh",
        "-c",
        "sleep 60 & sleep 60 & wait",
    ]);
    let init = first_child(g.pid());
    let inode = wait_ns_changed(init, "pid");
    tracer.wait_for(1, |r| is(r, "create", "pid", inode));
    // Children of init are alive in the namespace.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{init}/task/{init}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "init started no children");
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(200));
    assert!(
        !tracer
            .records()
            .iter()
            .any(|r| is(r, "destroy", "pid", inode))
    );
    // SAFETY: killing the namespace's init, a process of our own group.
    unsafe { libc::kill(init as i32, libc::SIGKILL) };
    let ends = tracer.wait_for(1, |r| is(r, "destroy", "pid", inode));
    assert_eq!(ends[0]["init_pid"], init, "{}", ends[0]);
    drop(g);
    assert!(tracer.stop().0.success());
}

#[test]
fn unshare_in_a_secondary_thread_moves_only_that_thread() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&[]);
    let mut h = Group::spawn(&[helper_bin().to_str().unwrap(), "thread-unshare", "4000000"]);
    let line = h.read_line();
    let tid: u32 = line
        .strip_prefix("tid ")
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    let pid = h.pid();
    assert_ne!(tid, pid);
    let recs = tracer.wait_for_pid(1, pid);
    let r = one_of_kind(&recs, "create", "uts");
    assert_eq!(r["tid"], tid);
    let thread_uts = {
        let l = std::fs::read_link(format!("/proc/{pid}/task/{tid}/ns/uts")).unwrap();
        let s = l.to_string_lossy().to_string();
        s[5..s.len() - 1].parse::<u64>().unwrap()
    };
    assert_eq!(r["ns_inode"], thread_uts);
    note_ns(&format!("/proc/{pid}/task/{tid}/ns/uts"), thread_uts);
    assert_eq!(
        ns_inode(pid, "uts"),
        ns_inode(std::process::id(), "uts"),
        "main thread stays"
    );
    drop(h);
    tracer.wait_for(1, |r| is(r, "destroy", "uts", thread_uts));
    assert!(tracer.stop().0.success());
}

#[test]
fn reused_inodes_are_kept_apart() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&[]);
    // Each namespace by (inode, kernel id where the kernel has ids): on a
    // busy machine other processes' namespaces take the same inodes too.
    let mut ours: Vec<(u64, Option<u64>)> = Vec::new();
    let mine = |r: &Value, event: &str, ns: (u64, Option<u64>)| {
        r["event"] == event
            && r["ns_type"] == "uts"
            && r["ns_inode"] == ns.0
            && ns.1.is_none_or(|id| r["ns_id"] == id)
    };
    let mut reused = None;
    for _ in 0..200 {
        let g = Group::spawn(&["unshare", "-u", "sleep", "60"]);
        let inode = wait_ns_changed(g.pid(), "uts");
        let ns = (inode, ns_id_of(&format!("/proc/{}/ns/uts", g.pid())));
        let before = ours.iter().filter(|o| o.0 == inode).count();
        ours.push(ns);
        // Without ids, the records of this inode so far are ours alone only
        // on a quiet machine (the guests).
        let n = if ns.1.is_some() { 1 } else { before + 1 };
        tracer.wait_for(n, |r| mine(r, "create", ns));
        drop(g);
        tracer.wait_for(n, |r| mine(r, "destroy", ns));
        if before == 1 {
            reused = Some(inode);
            break;
        }
    }
    let inode = reused.expect("the kernel never reused a uts inode in 200 tries");
    let records = tracer.records();
    let pair: Vec<(u64, Option<u64>)> = ours.iter().filter(|o| o.0 == inode).copied().collect();
    let pick = |event: &str| -> Vec<&Value> {
        records
            .iter()
            .filter(|r| pair.iter().any(|ns| mine(r, event, *ns)))
            .collect()
    };
    let (creates, destroys) = (pick("create"), pick("destroy"));
    assert_eq!(creates.len(), 2, "{creates:#?}");
    assert_eq!(destroys.len(), 2, "{destroys:#?}");
    // Each destroy names its own birth.
    for (c, d) in creates.iter().zip(&destroys) {
        assert_eq!(d["ns_created"]["time"], c["time"], "{c}\n{d}");
        assert_eq!(d["ns_created"]["pid"], c["pid"]);
    }
    assert!(tracer.stop().0.success());
}

fn lsns() -> Vec<(u64, String, u64)> {
    let out = Command::new("lsns").arg("--json").output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["ns"].as_u64().unwrap(),
                n["type"].as_str().unwrap().to_string(),
                n["nprocs"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn ls_agrees_with_lsns() {
    if !privileged() {
        return;
    }
    // Something besides the host namespaces, including a mount-only one.
    let g = Group::spawn(&["unshare", "-u", "-n", "-p", "-f", "sleep", "60"]);
    let mine: Vec<(u64, String)> = ["uts", "net"]
        .iter()
        .map(|k| (wait_ns_changed(g.pid(), k), k.to_string()))
        .collect();
    let name = format!("nstrace-ls-{}", std::process::id());
    ip(&["netns", "add", &name]);
    thread::sleep(Duration::from_millis(200));
    let before = lsns();
    let out = Command::new(nstrace_bin())
        .args(["ls", "--json"])
        .output()
        .unwrap();
    let after = lsns();
    ip(&["netns", "delete", &name]);
    assert!(out.status.success());
    let ours: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours: Vec<(u64, String, u64)> = ours["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["ns"].as_u64().unwrap(),
                n["type"].as_str().unwrap().to_string(),
                n["nprocs"].as_u64().unwrap(),
            )
        })
        .collect();
    // The machine may be busy: namespaces come and go and process counts
    // change while the three listings run. Every namespace lsns listed
    // both before and after lived throughout, so ours must list it; counts
    // are compared where nothing else can change them, in the namespaces
    // of this test's own process group.
    let ident = |r: &(u64, String, u64)| (r.0, r.1.clone());
    let ours_ids: Vec<(u64, String)> = ours.iter().map(ident).collect();
    let after_ids: Vec<(u64, String)> = after.iter().map(ident).collect();
    let mut compared = 0;
    for row in before.iter().filter(|r| after_ids.contains(&ident(r))) {
        assert!(
            ours_ids.contains(&ident(row)),
            "lsns row {row:?} missing in nstrace ls: {ours:?}"
        );
        compared += 1;
    }
    assert!(compared >= 8, "compared only {compared} rows");
    for id in &mine {
        let theirs = after.iter().find(|r| &ident(r) == id);
        let ours_row = ours.iter().find(|r| &ident(r) == id);
        assert!(
            theirs.is_some() && theirs == ours_row,
            "{id:?}: lsns {theirs:?}, nstrace ls {ours_row:?}"
        );
    }
    // The mount-only namespace lsns does not list is in ours, with 0 processes.
    let path = format!("/run/netns/{name}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&path));
    let tree = Command::new(nstrace_bin())
        .args(["ls", "--tree"])
        .output()
        .unwrap();
    let tree = String::from_utf8_lossy(&tree.stdout);
    assert!(
        tree.contains("user namespaces and what they own:") && tree.contains("pid namespaces:"),
        "{tree}"
    );
}
