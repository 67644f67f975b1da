//! The core tracer against the real kernel: every reported inode must equal
//! what `/proc/PID/ns` shows for a process kept alive in that state.

use std::process::Command;

use nstrace_tests::*;
use serde_json::Value;

const NEWUTS: u64 = 0x0400_0000;
const NEWNET: u64 = 0x4000_0000;

/// Runs `argv` (which ends in a long sleep, kept alive), waits until its
/// `check_kind` namespace changed, and returns the group and the records of
/// `record_pid(group pid)`.
fn assert_creates(argv: &[&str], kinds: &[&str], flags: &[&str]) {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&[]);
    let g = Group::spawn(argv);
    let pid = g.pid();
    wait_ns_changed(pid, proc_link(kinds[0]));
    let records = tracer.wait_for_pid(kinds.len(), pid);
    for kind in kinds {
        let r = one_of_kind(&records, "create", kind);
        assert_eq!(r["ns_inode"], ns_inode(pid, proc_link(kind)), "{kind}: {r}");
        assert_eq!(
            r["prev_inode"],
            ns_inode(std::process::id(), proc_link(kind))
        );
        assert_eq!(r["syscall"], "unshare");
        assert_eq!(r["comm"], "unshare");
        assert_eq!(r["tid"], pid);
        assert_eq!(r["ppid"], std::process::id());
        let got: Vec<&str> = r["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert_eq!(got, flags);
        assert!(r["time"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(records.len(), kinds.len(), "{records:#?}");
    drop(g);
    let (status, _) = tracer.stop();
    assert!(status.success());
}

/// unshare acts on pid and time "for children".
fn proc_link(kind: &str) -> &str {
    match kind {
        "pid" => "pid_for_children",
        "time" => "time_for_children",
        k => k,
    }
}

#[test]
fn unshare_uts() {
    assert_creates(
        &["unshare", "-u", "sleep", "60"],
        &["uts"],
        &["CLONE_NEWUTS"],
    );
}

#[test]
fn unshare_net_and_ipc() {
    assert_creates(
        &["unshare", "-n", "-i", "sleep", "60"],
        &["ipc", "net"],
        &["CLONE_NEWIPC", "CLONE_NEWNET"],
    );
}

#[test]
fn unshare_user() {
    assert_creates(
        &["unshare", "-U", "sleep", "60"],
        &["user"],
        &["CLONE_NEWUSER"],
    );
}

#[test]
fn unshare_cgroup() {
    assert_creates(
        &["unshare", "-C", "sleep", "60"],
        &["cgroup"],
        &["CLONE_NEWCGROUP"],
    );
}

#[test]
fn unshare_time() {
    assert_creates(
        &["unshare", "-T", "sleep", "60"],
        &["time"],
        &["CLONE_NEWTIME"],
    );
}

#[test]
fn unshare_pid_with_fork_reports_the_childs_pid_namespace() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&[]);
    let g = Group::spawn(&["unshare", "-p", "-f", "sleep", "60"]);
    let child = first_child(g.pid());
    let records = tracer.wait_for_pid(1, g.pid());
    let r = one_of_kind(&records, "create", "pid");
    // The unsharer stays in its PID namespace; its first child is PID 1 of the new one.
    assert_eq!(r["ns_inode"], ns_inode(child, "pid"));
    assert_eq!(r["ns_inode"], ns_inode(g.pid(), "pid_for_children"));
    assert_ne!(r["ns_inode"], ns_inode(g.pid(), "pid"));
    drop(g);
    assert!(tracer.stop().0.success());
}

fn assert_joins(records: &[Value], pid: u32, target: u32, kinds: &[&str]) {
    for kind in kinds {
        let r = one_of_kind(records, "join", kind);
        assert_eq!(r["ns_inode"], ns_inode(pid, kind), "{kind}: {r}");
        assert_eq!(r["ns_inode"], ns_inode(target, kind), "{kind}: {r}");
        assert_eq!(r["prev_inode"], ns_inode(std::process::id(), kind));
        assert_eq!(r["syscall"], "setns");
    }
    // nsenter -a also setns()es kinds the target shares with us: those are
    // reported as joins of the namespace the caller was already in.
    let changed = records
        .iter()
        .filter(|r| r["prev_inode"] != r["ns_inode"])
        .count();
    assert_eq!(changed, kinds.len(), "{records:#?}");
}

#[test]
fn nsenter_net() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&[]);
    let target = Group::spawn(&["unshare", "-n", "sleep", "60"]);
    wait_ns_changed(target.pid(), "net");
    let tp = target.pid().to_string();
    let joiner = Group::spawn(&["nsenter", "-t", &tp, "-n", "sleep", "60"]);
    wait_ns_changed(joiner.pid(), "net");
    let records = tracer.wait_for_pid(1, joiner.pid());
    assert_joins(&records, joiner.pid(), target.pid(), &["net"]);
    assert_eq!(records[0]["flags"], serde_json::json!(["CLONE_NEWNET"]));
    assert_eq!(records[0]["comm"], "nsenter");
    assert!(tracer.stop().0.success());
}

#[test]
fn nsenter_all() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&[]);
    let target = Group::spawn(&["unshare", "-m", "-u", "-i", "-n", "-C", "sleep", "60"]);
    wait_ns_changed(target.pid(), "cgroup");
    let tp = target.pid().to_string();
    let joiner = Group::spawn(&["nsenter", "-t", &tp, "-a", "sleep", "60"]);
    wait_ns_changed(joiner.pid(), "mnt");
    let kinds = ["mnt", "uts", "ipc", "net", "cgroup"];
    // nsenter -a also rejoins the kinds it shares with us: wait for the changes.
    tracer.wait_for(kinds.len(), |r| {
        r["pid"] == joiner.pid() && r["prev_inode"] != r["ns_inode"]
    });
    let records = tracer.wait_for_pid(kinds.len(), joiner.pid());
    assert_joins(&records, joiner.pid(), target.pid(), &kinds);
    assert!(tracer.stop().0.success());
}

#[test]
fn clone3_with_new_uts_from_helper() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&[]);
    let mut g = Group::spawn(&[
        helper_bin().to_str().unwrap(),
        "clone3",
        &format!("{NEWUTS:x}"),
    ]);
    let line = g.read_line();
    let child: u32 = line
        .strip_prefix("child ")
        .unwrap_or_else(|| panic!("clone3 failed: {line}"))
        .parse()
        .unwrap();
    let records = tracer.wait_for_pid(1, g.pid());
    let r = one_of_kind(&records, "create", "uts");
    assert_eq!(r["syscall"], "clone3");
    assert_eq!(r["child_pid"], child);
    assert_eq!(r["ns_inode"], ns_inode(child, "uts"));
    assert_eq!(r["prev_inode"], ns_inode(g.pid(), "uts"));
    assert_eq!(r["flags"], serde_json::json!(["CLONE_NEWUTS"]));
    assert_eq!(records.len(), 1);
    assert!(tracer.stop().0.success());
}

#[test]
fn setns_through_pidfd_with_several_kinds() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&[]);
    let target = Group::spawn(&["unshare", "-u", "-n", "sleep", "60"]);
    wait_ns_changed(target.pid(), "net");
    let mut h = Group::spawn(&[
        helper_bin().to_str().unwrap(),
        "setns-pidfd",
        &target.pid().to_string(),
        &format!("{:x}", NEWUTS | NEWNET),
    ]);
    assert_eq!(h.read_line(), "ready");
    let records = tracer.wait_for_pid(2, h.pid());
    assert_joins(&records, h.pid(), target.pid(), &["uts", "net"]);
    assert!(records[0]["fd"].as_i64().unwrap() >= 0);
    assert!(tracer.stop().0.success());
}

#[test]
fn setns_with_ns_fd_and_nstype_zero() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&[]);
    let target = Group::spawn(&["unshare", "-i", "sleep", "60"]);
    wait_ns_changed(target.pid(), "ipc");
    let path = format!("/proc/{}/ns/ipc", target.pid());
    let mut h = Group::spawn(&[helper_bin().to_str().unwrap(), "setns-path", &path, "0"]);
    assert_eq!(h.read_line(), "ready");
    let records = tracer.wait_for_pid(1, h.pid());
    assert_joins(&records, h.pid(), target.pid(), &["ipc"]);
    assert_eq!(records[0]["flags"], serde_json::json!([]));
    assert!(tracer.stop().0.success());
}

#[test]
fn refused_unshare_is_one_error_record_with_eperm() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&[]);
    let mut h = Group::spawn(&[
        helper_bin().to_str().unwrap(),
        "unshare-as-nobody",
        &format!("{NEWUTS:x}"),
    ]);
    assert_eq!(h.read_line(), "errno 1");
    let records = tracer.wait_for_pid(1, h.pid());
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];
    assert_eq!(r["event"], "error");
    assert_eq!(r["errno"], "EPERM");
    assert_eq!(r["syscall"], "unshare");
    assert_eq!(r["ns_type"], "uts");
    assert!(r["ns_inode"].is_null());
    h.wait();
    assert!(tracer.stop().0.success());
}

#[test]
fn failed_setns_on_bad_fd_reports_ebadf() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&[]);
    // Joining our own pid's namespaces through a pidfd with no kinds is EINVAL.
    let mut h = Group::spawn(&[
        helper_bin().to_str().unwrap(),
        "setns-pidfd",
        &std::process::id().to_string(),
        "0",
    ]);
    assert_eq!(h.read_line(), "errno 22");
    let records = tracer.wait_for_pid(1, h.pid());
    assert_eq!(records[0]["event"], "error");
    assert_eq!(records[0]["errno"], "EINVAL");
    assert!(records[0]["ns_type"].is_null());
    h.wait();
    assert!(tracer.stop().0.success());
}

#[test]
fn text_timeline_shows_the_record() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start_text(&[]);
    let g = Group::spawn(&["unshare", "-u", "sleep", "60"]);
    let inode = wait_ns_changed(g.pid(), "uts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let want = format!("{}/{}", g.pid(), g.pid());
    let line = loop {
        if let Some(l) = tracer.lines().into_iter().find(|l| l.contains(&want)) {
            break l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no line for {want}: {:?}",
            tracer.lines()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    for part in [
        "unshare",
        "create",
        "uts",
        &inode.to_string(),
        "unshare(CLONE_NEWUTS)",
    ] {
        assert!(line.contains(part), "{part:?} not in {line:?}");
    }
    assert!(tracer.lines()[0].starts_with("TIME"));
    assert!(tracer.stop().0.success());
}

/// Who made it: uid (and euid where it differs) on every record, and whether
/// a user namespace was made without CAP_SYS_ADMIN, checked against what
/// setpriv set.
#[test]
fn user_namespace_creates_say_who_and_whether_unprivileged() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&["--type", "user"]);
    let run = |pre: &[&str]| {
        let st = Command::new("setpriv")
            .args(pre)
            .args(["unshare", "-U", "true"])
            .status()
            .unwrap();
        assert!(st.success(), "{pre:?}: {st}");
    };
    run(&["--reuid=65534", "--regid=65534", "--clear-groups"]);
    run(&[]);
    run(&["--euid=65534"]);
    let creates = tracer.wait_for(3, |r| {
        r["event"] == "create" && r["ns_type"] == "user" && r["comm"] == "unshare"
    });
    let by = |uid: u64, euid: Option<u64>| {
        creates
            .iter()
            .find(|r| r["uid"] == uid && r["euid"].as_u64() == euid)
            .unwrap_or_else(|| panic!("no create by uid {uid} euid {euid:?}: {creates:#?}"))
    };
    assert_eq!(by(65534, None)["unprivileged"], true);
    assert_eq!(by(0, None)["unprivileged"], false);
    assert_eq!(by(0, Some(65534))["unprivileged"], true);
    assert!(tracer.stop().0.success());
}
