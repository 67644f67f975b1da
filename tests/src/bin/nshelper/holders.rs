//! The holder scenarios of tests/tests/holders.rs: a namespace left with no
//! member, held by one thing only (a socket, a zombie, a mount inside a
//! memberless mount namespace, a pidfd of an exited init). Run as an
//! unprivileged user, on every guest (which has no python). Each prints
//! what the test needs to check against the kernel, then holds until
//! killed.

use std::{ffi::CString, os::unix::fs::MetadataExt};

use super::{die, errno, say, wait_forever};

/// The inode of a file (a namespace's `/proc/.../ns/...` link).
fn ino(path: &str) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| die(&format!("stat {path}: {e}")))
        .ino()
}

/// `INODE ID` of a namespace: its id (NS_GET_ID, 6.18+) or 0.
fn ns(path: &str) -> String {
    format!(
        "{} {}",
        ino(path),
        nstrace_tests::ns_id_of(path).unwrap_or(0)
    )
}

fn check(what: &str, ret: i64) -> i64 {
    if ret < 0 {
        // The child's failure is said on stdout: the test reads it there
        // instead of a namespace inode, and fails with it.
        say(&format!("{what} failed: errno {}", errno()));
        // SAFETY: _exit has no preconditions; nothing of this process needs flushing.
        unsafe { libc::_exit(1) }
    }
    ret
}

fn unshare(flags: i32) {
    // SAFETY: a plain syscall on integer flags.
    check("unshare", unsafe { libc::unshare(flags) } as i64);
}

fn fork() -> i32 {
    // SAFETY: this process has one thread; the child continues in
    // ordinary code (the scenarios below).
    check("fork", unsafe { libc::fork() } as i64) as i32
}

fn exit_child() -> ! {
    // SAFETY: _exit has no preconditions; stdout is flushed after each line.
    unsafe { libc::_exit(0) }
}

fn socketpair() -> (i32, i32) {
    let mut sv = [0i32; 2];
    // SAFETY: `sv` has room for the two fds the kernel writes.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, sv.as_mut_ptr()) };
    check("socketpair", r as i64);
    (sv[0], sv[1])
}

fn pipe() -> (i32, i32) {
    let mut p = [0i32; 2];
    // SAFETY: `p` has room for the two fds the kernel writes.
    check("pipe", unsafe { libc::pipe(p.as_mut_ptr()) } as i64);
    (p[0], p[1])
}

fn put(fd: i32, line: &str) {
    // SAFETY: `line` is valid for its length.
    unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
}

/// One read of at most 64 bytes (a line a child wrote with [`put`]).
fn get(fd: i32) -> String {
    let mut buf = [0u8; 64];
    // SAFETY: `buf` is valid for 64 bytes of writes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        die("the child said nothing");
    }
    String::from_utf8_lossy(&buf[..n as usize])
        .trim()
        .to_string()
}

fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: our own child; `status` is ours to write.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

/// Sends `fd` over the unix socket `sock` (SCM_RIGHTS).
fn send_fd(sock: i32, fd: i32) {
    let mut byte = [b'x'];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // u64s: the control buffer must be aligned for a cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: the message points at live locals (iov, control) big enough
    // for one fd's control message (CMSG_SPACE(4) is 24 bytes); the header
    // writes stay inside `control`.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
        check("sendmsg", libc::sendmsg(sock, &msg, 0) as i64);
    }
}

/// The fd a peer sent over `sock`, waiting at most 10 s (a child that
/// failed says so and exits: never wait for it forever).
fn recv_fd(sock: i32) -> i32 {
    let timeout = libc::timeval {
        tv_sec: 10,
        tv_usec: 0,
    };
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 4];
    // SAFETY: setsockopt reads the timeval it is given; recvmsg writes only
    // into the live buffers the message points at; the control message is
    // read only where the kernel says one is.
    unsafe {
        libc::setsockopt(
            sock,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        if libc::recvmsg(sock, &mut msg, 0) < 0 {
            die(&format!("no fd from the child: errno {}", errno()));
        }
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() || (*c).cmsg_type != libc::SCM_RIGHTS {
            die("the child sent no fd");
        }
        std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>())
    }
}

/// Maps `uid` (and its gid) to root inside a user namespace just made:
/// files made there need a mapped owner.
fn map_root(uid: u32, gid: u32) {
    for (f, v) in [
        ("setgroups", "deny".to_string()),
        ("uid_map", format!("0 {uid} 1")),
        ("gid_map", format!("0 {gid} 1")),
    ] {
        if let Err(e) = std::fs::write(format!("/proc/self/{f}"), v) {
            say(&format!("writing {f} failed: {e}"));
            exit_child();
        }
    }
}

fn mount(src: Option<&str>, target: &str, fstype: Option<&str>, flags: libc::c_ulong) {
    let c = |s: &str| CString::new(s).unwrap_or_else(|_| die("NUL in a mount argument"));
    let (src, target, fstype) = (src.map(c), c(target), fstype.map(c));
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: valid C strings (or null, which mount(2) takes for these);
    // no data argument.
    let r = unsafe {
        libc::mount(
            ptr(&src),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            std::ptr::null(),
        )
    };
    check(&format!("mount {}", target.to_string_lossy()), r as i64);
}

fn open(path: &str) -> i32 {
    let p = CString::new(path).unwrap_or_else(|_| die("NUL in a path"));
    // SAFETY: a valid C string; plain syscall.
    check(
        &format!("open {path}"),
        unsafe { libc::open(p.as_ptr(), libc::O_RDONLY) } as i64,
    ) as i32
}

/// The moby#32090 shape: a child makes a user and network namespace and a
/// socket inside it, passes the socket's fd over a unix socket to this
/// process (outside) and exits. Only the socket holds the network
/// namespace then. Prints `NETNS ID`, then `PID FD` of the holder.
pub fn socket_holder() -> ! {
    let (a, b) = socketpair();
    let pid = fork();
    if pid == 0 {
        unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET);
        // SAFETY: a plain syscall.
        let s = check(
            "socket",
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) } as i64,
        ) as i32;
        say(&ns("/proc/self/ns/net"));
        send_fd(b, s);
        exit_child();
    }
    let fd = recv_fd(a);
    reap(pid);
    say(&format!("{} {fd}", std::process::id()));
    wait_forever()
}

/// A child that makes a user namespace and exits, never reaped: the
/// zombie's credentials alone hold the namespace. Prints the user
/// namespace, then `CHILD PARENT`.
pub fn zombie_holder() -> ! {
    let (r, w) = pipe();
    let pid = fork();
    if pid == 0 {
        unshare(libc::CLONE_NEWUSER);
        put(w, &format!("{}\n", ino("/proc/self/ns/user")));
        exit_child();
    }
    say(&get(r));
    say(&format!("{pid} {}", std::process::id()));
    wait_forever()
}

/// A network namespace bind-mounted inside a mount namespace no process
/// is in, that mount namespace held by an fd: a child makes a user, mount
/// and network namespace, mounts its netns at a file, passes an fd of its
/// mount namespace here and exits. Prints the network namespace, the mount
/// namespace, the mount point, then `PID FD` of the holder. Inside, /proc
/// is covered by a forged one (hostile: the reader must look nothing up
/// through this namespace).
pub fn mntns_holder() -> ! {
    let (a, b) = socketpair();
    let point = format!("/tmp/nstrace-pin-{}", std::process::id());
    // SAFETY: plain syscalls with no arguments.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let pid = fork();
    if pid == 0 {
        unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWNET);
        map_root(uid, gid);
        // Private, so that nothing propagates; then the pin.
        mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE);
        if let Err(e) = std::fs::File::create(&point) {
            say(&format!("creating {point} failed: {e}"));
            exit_child();
        }
        mount(Some("/proc/self/ns/net"), &point, None, libc::MS_BIND);
        say(&ino("/proc/self/ns/net").to_string());
        say(&ino("/proc/self/ns/mnt").to_string());
        say(&point);
        let fd = open("/proc/self/ns/mnt");
        mount(Some("none"), "/proc", Some("tmpfs"), 0);
        let forged = std::fs::create_dir_all("/proc/thread-self").and_then(|()| {
            std::fs::write(
                "/proc/thread-self/mountinfo",
                "1 1 0:4 net:[1] /etc/forged rw - nsfs nsfs rw\n",
            )
        });
        if let Err(e) = forged {
            say(&format!("forging /proc failed: {e}"));
            exit_child();
        }
        send_fd(b, fd);
        exit_child();
    }
    let fd = recv_fd(a);
    reap(pid);
    say(&format!("{} {fd}", std::process::id()));
    wait_forever()
}

/// A PID namespace whose init has exited, held by a pidfd of it kept
/// here: a child makes a user and PID namespace and forks the namespace's
/// init; this process opens a pidfd of the init and prints the PID
/// namespace (`PIDNS ID`); then the child kills and reaps the init and exits. Prints
/// `PID FD INIT`.
pub fn pidfd_holder() -> ! {
    let (r, w) = pipe();
    let (go_r, go_w) = pipe();
    let p = fork();
    if p == 0 {
        unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWPID);
        let init = fork();
        if init == 0 {
            wait_forever();
        }
        put(w, &format!("{init}\n"));
        get(go_r);
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(init, libc::SIGKILL) };
        reap(init);
        exit_child();
    }
    let init: i32 = get(r)
        .parse()
        .unwrap_or_else(|_| die("the child said no pid"));
    // SAFETY: a plain syscall on integers.
    let pfd = check("pidfd_open", unsafe {
        libc::syscall(libc::SYS_pidfd_open, init, 0)
    });
    say(&ns(&format!("/proc/{init}/ns/pid")));
    put(go_w, "x");
    reap(p);
    // The child reaped the init before it exited: its pidfd says it exited.
    say(&format!("{} {pfd} {init}", std::process::id()));
    wait_forever()
}
