//! What keeps a memberless namespace alive, named: the holders `nstrace ls`
//! finds beyond mounts and nsfs fds. The kernel is the judge of what each
//! holder holds.

use std::process::Command;

use nstrace_tests::*;
use serde_json::Value;

/// The moby#32090 shape, made by an unprivileged user: a child makes a
/// user and network namespace, a socket inside it, passes the socket's fd
/// over a unix socket to its parent (outside) and exits. Only the socket
/// holds the network namespace then. Prints `NETNS`, then `PID FD` of the
/// holder, and holds until killed.
const SOCKET_HOLDER: &str = r#"
import ctypes, os, socket, sys, time
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
pid = os.fork()
if pid == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x10000000 | 0x40000000) != 0:
        print("unshare failed", ctypes.get_errno(), flush=True)
        os._exit(1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    print(os.stat("/proc/self/ns/net").st_ino, flush=True)
    socket.send_fds(b, [b"x"], [s.fileno()])
    os._exit(0)
_, fds, _, _ = socket.recv_fds(a, 1, 1)
os.waitpid(pid, 0)
print(os.getpid(), fds[0], flush=True)
time.sleep(60)
"#;

/// [`SOCKET_HOLDER`] run as nobody: the group, the network namespace, and
/// the holder's pid and fd.
fn socket_held() -> (Group, u64, String, String) {
    let mut g = as_nobody(&format!("exec python3 -c '{SOCKET_HOLDER}'"));
    let netns: u64 = g
        .read_line()
        .parse()
        .expect("the child's network namespace");
    let holder = g.read_line();
    let (pid, fd) = holder
        .split_once(' ')
        .unwrap_or_else(|| panic!("the holder said {holder:?}"));
    (g, netns, pid.to_string(), fd.to_string())
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
    let (g, netns, pid, fd) = socket_held();
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
    let want = format!("socket fd {fd} of python3 (pid {pid})");
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
    let (g, netns, pid, fd) = socket_held();
    let want = format!("socket fd {fd} of python3 (pid {pid})");
    let pinned = t.wait_for(1, |r| {
        r["event"] == "pinned" && r["ns_type"] == "net" && r["ns_inode"] == netns
    });
    let by = pinned[0]["pinned_by"].as_array().unwrap();
    assert!(
        by.iter().any(|h| h == want.as_str()),
        "{want:?} not in {}",
        pinned[0]
    );
    drop(g);
    t.wait_for(1, |r| {
        r["event"] == "destroy" && r["ns_type"] == "net" && r["ns_inode"] == netns
    });
    let (status, stderr) = t.stop();
    assert!(status.success(), "{stderr}");
}

/// A child that makes a user namespace and exits, its parent never reaping
/// it: the zombie's credentials alone hold the namespace. Prints the user
/// namespace, then `CHILD PARENT`, and holds until killed.
const ZOMBIE_HOLDER: &str = r#"
import ctypes, os, time
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x10000000) != 0:
        os.write(w, b"unshare failed\n")
        os._exit(1)
    os.write(w, b"%d\n" % os.stat("/proc/self/ns/user").st_ino)
    os._exit(0)
print(os.read(r, 64).decode().strip(), flush=True)
print(pid, os.getpid(), flush=True)
time.sleep(60)
"#;

#[test]
fn a_zombie_holding_a_user_namespace_is_named_and_its_reaping_ends_it() {
    if !privileged() {
        return;
    }
    let t = Tracer::start(&[]);
    let mut g = as_nobody(&format!("exec python3 -c '{ZOMBIE_HOLDER}'"));
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
    let want = format!("zombie python3 (pid {child}), not reaped by its parent (pid {parent})");
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

/// A network namespace bind-mounted inside a mount namespace that no
/// process is in, that mount namespace held by an fd: a child makes a user,
/// mount and network namespace, mounts its netns at a file, passes an fd
/// of its mount namespace to its parent and exits. Prints the network
/// namespace, the mount namespace, the mount point, then `PID FD` of the
/// holder, and holds until killed. Inside, /proc is covered by a forged one.
const MNTNS_HOLDER: &str = r#"
import ctypes, os, socket, time
libc = ctypes.CDLL(None, use_errno=True)
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
point = "/tmp/nstrace-pin-%d" % os.getpid()
pid = os.fork()
if pid == 0:
    if libc.unshare(0x10000000 | 0x00020000 | 0x40000000) != 0:
        print("unshare failed", ctypes.get_errno(), flush=True)
        os._exit(1)
    # Root inside (files made there need a mapped owner).
    for f, v in (("setgroups", "deny"), ("uid_map", "0 65534 1"), ("gid_map", "0 65534 1")):
        with open("/proc/self/" + f, "w") as m:
            m.write(v)
    # Private, so that nothing propagates; then the pin.
    libc.mount(None, b"/", None, 0x4000 | 0x40000, None)
    open(point, "w").close()
    if libc.mount(b"/proc/self/ns/net", point.encode(), None, 0x1000, None) != 0:
        print("mount failed", ctypes.get_errno(), flush=True)
        os._exit(1)
    print(os.stat("/proc/self/ns/net").st_ino, flush=True)
    print(os.stat("/proc/self/ns/mnt").st_ino, flush=True)
    print(point, flush=True)
    fd = os.open("/proc/self/ns/mnt", os.O_RDONLY)
    # Hostile: /proc inside covered by a tmpfs with a forged table; the
    # reader must not look anything up through this namespace.
    if libc.mount(b"none", b"/proc", b"tmpfs", 0, None) != 0:
        print("tmpfs failed", ctypes.get_errno(), flush=True)
        os._exit(1)
    os.makedirs("/proc/thread-self")
    with open("/proc/thread-self/mountinfo", "w") as f:
        f.write("1 1 0:4 net:[1] /etc/forged rw - nsfs nsfs rw\n")
    socket.send_fds(b, [b"x"], [fd])
    os._exit(0)
# A child that failed says so and exits: never wait for it forever.
a.settimeout(10)
_, fds, _, _ = socket.recv_fds(a, 1, 1)
os.waitpid(pid, 0)
print(os.getpid(), fds[0], flush=True)
time.sleep(60)
"#;

#[test]
fn a_mount_inside_a_mount_namespace_no_process_is_in_is_named() {
    if !privileged() {
        return;
    }
    let t = Tracer::start(&[]);
    let mut g = as_nobody(&format!("exec python3 -c '{MNTNS_HOLDER}'"));
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
        "mount {point} in mnt namespace {mntns} (no process in it; held by fd {fd} of python3 (pid {pid}))"
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

/// A PID namespace whose process has exited, held by a pidfd of it kept
/// elsewhere: a child makes a user and PID namespace and forks the new
/// namespace's init; the parent opens a pidfd of the init, prints the PID
/// namespace, waits for the file named by its first argument (the test's
/// go: the tracer has seen the namespace made), then the child kills and
/// reaps the init and exits. Prints `PID FD INIT` and holds until killed.
const PIDFD_HOLDER: &str = r#"
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
r, w = os.pipe()
go_r, go_w = os.pipe()
p = os.fork()
if p == 0:
    if libc.unshare(0x10000000 | 0x20000000) != 0:
        os.write(w, b"unshare failed\n")
        os._exit(1)
    c = os.fork()
    if c == 0:
        time.sleep(60)
        os._exit(0)
    os.write(w, b"%d\n" % c)
    os.read(go_r, 1)
    os.kill(c, 9)
    os.waitpid(c, 0)
    os._exit(0)
c = int(os.read(r, 64))
pfd = os.pidfd_open(c)
print(os.stat("/proc/%d/ns/pid" % c).st_ino, flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)
os.write(go_w, b"x")
os.waitpid(p, 0)
print(os.getpid(), pfd, c, flush=True)
time.sleep(60)
"#;

#[test]
fn a_pidfd_of_an_exited_process_holding_its_pid_namespace_is_named() {
    if !privileged() {
        return;
    }
    let t = Tracer::start(&[]);
    let go = std::env::temp_dir().join(format!("nstrace-pidfd-go-{}", std::process::id()));
    let _ = std::fs::remove_file(&go);
    let _cleanup = Removed(go.to_string_lossy().into_owned());
    let mut g = as_nobody(&format!(
        "exec python3 -c '{PIDFD_HOLDER}' {}",
        go.display()
    ));
    let pidns: u64 = g.read_line().parse().expect("the new PID namespace");
    t.wait_for(1, |r| {
        r["event"] == "create" && r["ns_type"] == "pid" && r["ns_inode"] == pidns
    });
    std::fs::write(&go, "").unwrap();
    let said = g.read_line();
    let mut f = said.split(' ');
    let (pid, fd, init) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
    // The kernel's view: the fd is a pidfd of a process that has exited.
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
    assert!(info.lines().any(|l| l == "Pid:\t-1"), "{info}");
    let want = format!("pidfd {fd} of python3 (pid {pid}), of its exited process {init}");
    let pinned = t.wait_for(1, |r| {
        r["event"] == "pinned"
            && r["ns_type"] == "pid"
            && r["ns_inode"] == pidns
            && r["pinned_by"]
                .as_array()
                .is_some_and(|p| p.iter().any(|h| h == want.as_str()))
    });
    drop(g);
    let destroy = t.wait_for(1, |r| {
        r["event"] == "destroy"
            && r["ns_type"] == "pid"
            && r["ns_inode"] == pidns
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
