//! What keeps a memberless namespace alive, named: the holders `nstrace ls`
//! finds beyond mounts and nsfs fds. The kernel is the judge of what each
//! holder holds.

use std::process::Command;
use std::thread;
use std::time::Duration;

use nstrace_tests::*;
use serde_json::Value;

/// A holder scenario of nshelper (see its holders.rs), run as nobody.
fn holder(action: &str) -> Group {
    as_nobody(&format!("exec {} {action}", helper_bin().display()))
}

/// `INODE ID` as a helper prints a namespace.
fn inode_and_id(line: &str) -> (u64, u64) {
    line.split_once(' ')
        .and_then(|(i, d)| Some((i.parse().ok()?, d.parse().ok()?)))
        .unwrap_or_else(|| panic!("the helper said {line:?}"))
}

/// Linux 7.x keeps a namespace that no task, nsfs file or mount holds as
/// "inactive": a socket or a `struct pid` still holds its memory, but the
/// kernel's own interfaces (nsfs handles, /proc) no longer lead to it, and
/// its handle answers ESTALE. Where the kernel says so, there is nothing
/// to name it by: the test says so and checks only the end.
fn inactive_on_this_kernel(kind: &str, inode: u64, id: u64) -> bool {
    let Some(judge) = KernelJudge::new() else {
        return false;
    };
    let inactive = id != 0 && !judge.alive(clone_flag(kind), inode as u32, id);
    if inactive {
        eprintln!(
            "skipped: this kernel counts {kind} {inode} as inactive while its holder is alive (its nsfs handle is ESTALE)"
        );
    }
    inactive
}

/// For the guest's log: what the tracer said of an inactive namespace
/// while its holder was still alive (handles mode: the end, by the
/// kernel's word; fentry: nothing yet, as the memory is not freed).
fn say_what_came_while_inactive(t: &Tracer, kind: &str, inode: u64) {
    thread::sleep(Duration::from_millis(1500));
    let said: Vec<String> = t
        .records()
        .iter()
        .filter(|r| r["ns_type"] == kind && r["ns_inode"] == inode)
        .map(|r| format!("{} (end {})", r["event"], r["end"]))
        .collect();
    eprintln!(
        "while its holder was alive, the tracer said: {}",
        said.join(", ")
    );
}

/// The socket holder: the group, the network namespace and its id, and
/// the holder's pid and fd.
fn socket_held() -> (Group, u64, u64, String, String) {
    let mut g = holder("socket-holder");
    let (netns, id) = inode_and_id(&g.read_line());
    let holder = g.read_line();
    let (pid, fd) = holder
        .split_once(' ')
        .unwrap_or_else(|| panic!("the holder said {holder:?}"));
    (g, netns, id, pid.to_string(), fd.to_string())
}

fn ls_json() -> Value {
    let out = Command::new(nstrace_bin())
        .args(["ls", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn listed(v: &Value, inode: u64) -> Option<Value> {
    v["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["type"] == "net" && n["ns"] == inode)
        .cloned()
}

#[test]
fn a_network_namespace_only_a_socket_holds_is_listed_with_its_holder() {
    if !privileged() {
        return;
    }
    let (g, netns, id, pid, fd) = socket_held();
    if inactive_on_this_kernel("net", netns, id) {
        return;
    }
    // The kernel's answer: the holder's fd is a socket of that namespace,
    // and the holder itself is elsewhere.
    assert_ne!(ns_inode(pid.parse().unwrap(), "net"), netns);
    let fd_link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
    assert!(
        fd_link.to_string_lossy().starts_with("socket:["),
        "{fd_link:?}"
    );

    let v = ls_json();
    let ns = listed(&v, netns).unwrap_or_else(|| panic!("net {netns} not listed: {v}"));
    assert_eq!(ns["nprocs"], 0, "{ns}");
    assert_eq!(ns["memberless"], true, "{ns}");
    let want = format!("socket fd {fd} of nshelper (pid {pid})");
    assert!(
        ns["held_by"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h == want.as_str()),
        "{want:?} not in {ns}"
    );
    // Its owner, read through the socket's namespace: the user namespace
    // the child made, not ours.
    let owner = ns["owner_user_ns"].as_u64().expect("an owner");
    assert_ne!(owner, ns_inode(std::process::id(), "user"), "{ns}");

    // The holder gone, so is the namespace: ls no longer lists it held so
    // (on a busy machine a new namespace may take the inode at once).
    drop(g);
    let held = |ns: &Value| {
        ns["held_by"]
            .as_array()
            .is_some_and(|h| h.iter().any(|h| h == want.as_str()))
    };
    let gone = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        !listed(&ls_json(), netns).is_some_and(|ns| held(&ns))
    });
    assert!(gone, "net {netns} still listed after its holder exited");
}

/// The same shape while tracing: the `pinned` record names the socket, and
/// closing it gives the `destroy` (judged by the kernel's nsfs handles at
/// stop).
#[test]
fn a_socket_holder_is_named_in_the_stream_and_its_close_ends_the_namespace() {
    if !privileged() {
        return;
    }
    let t = Tracer::start(&[]);
    let (g, netns, id, pid, fd) = socket_held();
    // Inactive by the kernel's word: no holder to name, but the end still
    // has to come (see the pidfd test).
    let inactive = inactive_on_this_kernel("net", netns, id);
    if inactive {
        say_what_came_while_inactive(&t, "net", netns);
    } else {
        let want = format!("socket fd {fd} of nshelper (pid {pid})");
        let pinned = t.wait_for(1, |r| {
            r["event"] == "pinned" && r["ns_type"] == "net" && r["ns_inode"] == netns
        });
        let by = pinned[0]["pinned_by"].as_array().unwrap();
        assert!(
            by.iter().any(|h| h == want.as_str()),
            "{want:?} not in {}",
            pinned[0]
        );
    }
    drop(g);
    t.wait_for(1, |r| {
        r["event"] == "destroy"
            && r["ns_type"] == "net"
            && r["ns_inode"] == netns
            && (id == 0 || r["ns_id"] == id)
    });
    let (status, stderr) = t.stop();
    assert!(status.success(), "{stderr}");
}

#[test]
fn a_zombie_holding_a_user_namespace_is_named_and_its_reaping_ends_it() {
    if !privileged() {
        return;
    }
    let t = Tracer::start(&[]);
    let mut g = holder("zombie-holder");
    let userns: u64 = g.read_line().parse().expect("the child's user namespace");
    let said = g.read_line();
    let (child, parent) = said.split_once(' ').unwrap();
    // The kernel's view: a zombie (once its exit is through) whose user
    // namespace is that one.
    let state = || {
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap();
        stat.rsplit_once(')').unwrap().1.split_whitespace().next() == Some("Z")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !state() {
        assert!(
            std::time::Instant::now() < deadline,
            "pid {child} never became a zombie"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(ns_inode(child.parse().unwrap(), "user"), userns);
    let want = format!("zombie nshelper (pid {child}), not reaped by its parent (pid {parent})");
    let pinned = t.wait_for(1, |r| {
        r["event"] == "pinned"
            && r["ns_type"] == "user"
            && r["ns_inode"] == userns
            && r["pinned_by"]
                .as_array()
                .is_some_and(|p| p.iter().any(|h| h == want.as_str()))
    });
    // Killing the parent gets the zombie reaped (by init): the end.
    drop(g);
    let destroy = t.wait_for(1, |r| {
        r["event"] == "destroy"
            && r["ns_type"] == "user"
            && r["ns_inode"] == userns
            && r["ns_id"] == pinned[0]["ns_id"]
    });
    if let Some(judge) = KernelJudge::new() {
        assert_eq!(
            judge.alive_record(&destroy[0]),
            Some(false),
            "{}",
            destroy[0]
        );
    }
    let (status, stderr) = t.stop();
    assert!(status.success(), "{stderr}");
}

#[test]
fn a_mount_inside_a_mount_namespace_no_process_is_in_is_named() {
    if !privileged() {
        return;
    }
    let t = Tracer::start(&[]);
    let mut g = holder("mntns-holder");
    let netns: u64 = g
        .read_line()
        .parse()
        .expect("the child's network namespace");
    let mntns: u64 = g.read_line().parse().expect("its mount namespace");
    let point = g.read_line();
    let said = g.read_line();
    let (pid, fd) = said.split_once(' ').unwrap();
    let _cleanup = Removed(point.clone());
    // The kernel's view: the holder's fd is that mount namespace.
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
    assert_eq!(link.to_string_lossy(), format!("mnt:[{mntns}]"));
    let want = format!(
        "mount {point} in mnt namespace {mntns} (no process in it; held by fd {fd} of nshelper (pid {pid}))"
    );
    let has = |r: &Value| {
        r["pinned_by"]
            .as_array()
            .is_some_and(|p| p.iter().any(|h| h == want.as_str()))
    };
    t.wait_for(1, |r| {
        r["event"] == "pinned" && r["ns_type"] == "net" && r["ns_inode"] == netns && has(r)
    });
    let v = ls_json();
    let ns = listed(&v, netns).unwrap_or_else(|| panic!("net {netns} not listed: {v}"));
    assert!(
        ns["held_by"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h == want.as_str()),
        "{want:?} not in {ns}"
    );
    // The mount namespace gone (its only holder closed), its mounts go,
    // and with them the network namespace.
    drop(g);
    let destroy = t.wait_for(1, |r| {
        r["event"] == "destroy" && r["ns_type"] == "net" && r["ns_inode"] == netns
    });
    if let Some(judge) = KernelJudge::new() {
        assert_eq!(
            judge.alive_record(&destroy[0]),
            Some(false),
            "{}",
            destroy[0]
        );
    }
    let (status, stderr) = t.stop();
    assert!(status.success(), "{stderr}");
}

/// Removes a file the test's unprivileged child left.
struct Removed(String);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether pidfds have inodes of their own (pidfs, 6.9+): before, every
/// pidfd shares one, and nothing tells whose process it was.
fn pidfs() -> bool {
    use std::os::unix::fs::MetadataExt;
    let ino = |pid: u32| {
        // SAFETY: a plain syscall on integers.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        (fd >= 0).then(|| {
            // SAFETY: the fd just opened, ours to own and close.
            let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
            f.metadata().map(|m| m.ino()).unwrap_or(0)
        })
    };
    matches!((ino(std::process::id()), ino(1)), (Some(a), Some(b)) if a != b)
}

/// A PID namespace whose init has exited, held by a pidfd of the init
/// kept elsewhere (nshelper's pidfd-holder).
#[test]
fn a_pidfd_of_an_exited_process_holding_its_pid_namespace_is_named() {
    if !privileged() {
        return;
    }
    if !pidfs() {
        eprintln!("skipped: no pidfs on this kernel (every pidfd shares one inode)");
        return;
    }
    let t = Tracer::start(&[]);
    let mut g = holder("pidfd-holder");
    let (pidns, id) = inode_and_id(&g.read_line());
    t.wait_for(1, |r| {
        r["event"] == "create" && r["ns_type"] == "pid" && r["ns_inode"] == pidns
    });
    let said = g.read_line();
    let mut f = said.split(' ');
    let (pid, fd, init) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
    // Where the kernel counts the namespace inactive there is no holder to
    // name, but its end still has to come, by the kernel's word: in
    // handles mode as soon as it is inactive, with fentry when the pidfd's
    // close frees it.
    let inactive = inactive_on_this_kernel("pid", pidns, id);
    if inactive {
        say_what_came_while_inactive(&t, "pid", pidns);
    } else {
        // The kernel's view: the fd is a pidfd of a process that has exited.
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
        assert!(info.lines().any(|l| l == "Pid:\t-1"), "{info}");
        let want = format!("pidfd {fd} of nshelper (pid {pid}), of its exited process {init}");
        t.wait_for(1, |r| {
            r["event"] == "pinned"
                && r["ns_type"] == "pid"
                && r["ns_inode"] == pidns
                && r["pinned_by"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|h| h == want.as_str()))
        });
    }
    drop(g);
    let destroy = t.wait_for(1, |r| {
        r["event"] == "destroy"
            && r["ns_type"] == "pid"
            && r["ns_inode"] == pidns
            && (id == 0 || r["ns_id"] == id)
    });
    if let Some(judge) = KernelJudge::new() {
        assert_eq!(
            judge.alive_record(&destroy[0]),
            Some(false),
            "{}",
            destroy[0]
        );
    }
    let (status, stderr) = t.stop();
    assert!(status.success(), "{stderr}");
}
