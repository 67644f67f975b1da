//! Namespace workloads for benchmarks and load tests. Each action times
//! itself (from its first operation to its last wait, so tracer start-up is
//! not counted) and prints one line of `key value` pairs on stdout.
//!
//! - `churn N`: N short-lived children, each created by clone or clone3 (in
//!   turn) with CLONE_NEWUTS|CLONE_NEWIPC; each child unshares a new UTS
//!   namespace, setns back into its parent's, and exits.
//! - `forkexec N`: N fork + exec of /bin/true, no namespace work at all.
//! - `forkexit N`: N fork + _exit: the hot path every process on a machine
//!   takes (run it in new namespaces for a container's).
//! - `node SETS N containers|host`: a Kubernetes node's fork/exit mix.
//!   SETS container-like namespace sets (new mnt, uts, ipc, net, pid and
//!   cgroup namespaces, as runc makes them), each with a shell (`sh`, PID 1
//!   of its set); with `containers` each shell forks N short-lived children
//!   (`( : )` in a loop), with `host` they sit idle while a shell in the
//!   host's namespaces does the same N times.
//! - `noise`: until killed, what a busy machine does beside the tests: forks
//!   that exit, children in new UTS/IPC namespaces, now and then a new
//!   network namespace, a few hundred of each a second.
//! - `burst N`: N setns round trips between two UTS namespaces (2N joins),
//!   as fast as one thread can.
//! - `hold N`: N children alive at once, each in new UTS and IPC namespaces;
//!   prints `ready N`, waits for SIGUSR1, then lets them all exit.
//! - `clone3-bad-pointer`, `clone3-bad-size`, `setns-not-ns`: one malformed
//!   call each; prints the errno.

use std::{ffi::CString, os::fd::RawFd, time::Instant};

const NEW_UTS_IPC: u64 = (libc::CLONE_NEWUTS | libc::CLONE_NEWIPC) as u64;

fn die(msg: &str) -> ! {
    eprintln!("nsload: {msg}");
    std::process::exit(2)
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn check(ret: i64, what: &str) -> i64 {
    if ret < 0 {
        die(&format!("{what}: errno {}", errno()));
    }
    ret
}

/// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// A fork into new namespaces: clone3 when `use_clone3`, else clone.
fn fork_into(flags: u64, use_clone3: bool) -> i64 {
    if use_clone3 {
        let args = CloneArgs {
            flags,
            exit_signal: libc::SIGCHLD as u64,
            ..Default::default()
        };
        // SAFETY: valid clone_args of the size passed; no CLONE_VM, so the
        // child is an ordinary copy of this process.
        unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        }
    } else {
        // SAFETY: raw clone without a new stack or CLONE_VM behaves like fork.
        unsafe {
            libc::syscall(
                libc::SYS_clone,
                flags | libc::SIGCHLD as u64,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        }
    }
}

fn reap(pid: i64) {
    let mut status = 0;
    // SAFETY: plain syscall.
    unsafe { libc::waitpid(pid as i32, &mut status, 0) };
}

fn open_ns(path: &str) -> RawFd {
    let c = CString::new(path).expect("no NUL");
    // SAFETY: valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    check(fd as i64, &format!("open {path}")) as RawFd
}

fn churn(n: u64) {
    let home = open_ns("/proc/self/ns/uts");
    let start = Instant::now();
    for i in 0..n {
        let pid = check(fork_into(NEW_UTS_IPC, i % 2 == 0), "clone");
        if pid == 0 {
            // In the child: only async-signal-safe calls until _exit.
            // SAFETY: plain syscalls.
            unsafe {
                let ok = libc::unshare(libc::CLONE_NEWUTS) == 0
                    && libc::setns(home, libc::CLONE_NEWUTS) == 0;
                libc::_exit(if ok { 0 } else { 1 });
            }
        }
        reap(pid);
    }
    report(start, n, "iterations");
}

fn forkexec(n: u64) {
    let prog = CString::new("/bin/true").expect("no NUL");
    let argv = [prog.as_ptr(), std::ptr::null()];
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: fork then only execv/_exit in the child.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: the child after fork only calls execv and _exit, with argv built before the fork.
            unsafe {
                libc::execv(prog.as_ptr(), argv.as_ptr());
                libc::_exit(127);
            }
        }
        check(pid as i64, "fork");
        reap(pid as i64);
    }
    report(start, n, "iterations");
}

fn forkexit(n: u64) {
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: fork then only _exit in the child.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: the child after fork only calls _exit.
            unsafe { libc::_exit(0) };
        }
        check(pid as i64, "fork");
        reap(pid as i64);
    }
    report(start, n, "iterations");
}

fn noise() -> ! {
    for i in 0u64.. {
        let flags = match i % 3 {
            0 => 0,
            1 => NEW_UTS_IPC,
            _ if i % 15 == 2 => libc::CLONE_NEWNET as u64,
            _ => libc::CLONE_NEWUTS as u64,
        };
        let pid = fork_into(flags, i % 2 == 0);
        if pid == 0 {
            // SAFETY: only _exit in the child.
            unsafe { libc::_exit(0) };
        }
        if pid > 0 {
            reap(pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(3));
    }
    unreachable!()
}

fn burst(n: u64) {
    let home = open_ns("/proc/self/ns/uts");
    // A holder keeps the second namespace alive with a member, so the burst
    // is pure joins (no namespace empties along the way).
    let mut pipe = [0; 2];
    // SAFETY: plain syscalls.
    check(unsafe { libc::pipe(pipe.as_mut_ptr()) } as i64, "pipe");
    let holder = check(fork_into(libc::CLONE_NEWUTS as u64, false), "clone");
    if holder == 0 {
        let mut b = [0u8; 1];
        // SAFETY: plain syscalls; the read returns when the parent exits.
        unsafe {
            libc::close(pipe[1]);
            libc::read(pipe[0], b.as_mut_ptr().cast(), 1);
            libc::_exit(0);
        }
    }
    // SAFETY: plain syscall.
    unsafe { libc::close(pipe[0]) };
    let other = open_ns(&format!("/proc/{holder}/ns/uts"));
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: plain syscalls on namespace fds we opened.
        unsafe {
            check(libc::setns(other, libc::CLONE_NEWUTS) as i64, "setns");
            check(libc::setns(home, libc::CLONE_NEWUTS) as i64, "setns");
        }
    }
    report(start, 2 * n, "joins");
    println!("pid {}", std::process::id());
    // SAFETY: plain syscall; closing the pipe releases the holder.
    unsafe { libc::close(pipe[1]) };
    reap(holder);
}

fn hold(n: u64) {
    // Blocked before anything else, so an early SIGUSR1 waits for sigwait.
    // SAFETY: plain signal-mask calls on a local set.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigset calls on the local set, initialised by sigemptyset first.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let mut pipe = [0; 2];
    // SAFETY: plain syscall.
    check(unsafe { libc::pipe(pipe.as_mut_ptr()) } as i64, "pipe");
    let mut children = Vec::with_capacity(n as usize);
    for i in 0..n {
        let pid = check(fork_into(NEW_UTS_IPC, i % 2 == 0), "clone");
        if pid == 0 {
            let mut b = [0u8; 1];
            // SAFETY: plain syscalls; read returns 0 when the write end closes.
            unsafe {
                libc::close(pipe[1]);
                libc::read(pipe[0], b.as_mut_ptr().cast(), 1);
                libc::_exit(0);
            }
        }
        children.push(pid);
    }
    // SAFETY: plain syscall.
    unsafe { libc::close(pipe[0]) };
    println!("ready {}", children.len());
    let mut sig = 0;
    // SAFETY: waits for the blocked signal.
    unsafe { libc::sigwait(&set, &mut sig) };
    // SAFETY: plain syscall.
    unsafe { libc::close(pipe[1]) };
    for pid in children {
        reap(pid);
    }
    println!("released");
}

/// One malformed call; prints `errno N` (or `ret N` if the kernel took it).
fn malformed(action: &str) {
    // SAFETY: the kernel validates the pointer and size; nothing here is
    // dereferenced in user space.
    let ret = unsafe {
        match action {
            "clone3-bad-pointer" => libc::syscall(
                libc::SYS_clone3,
                4096usize as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            ),
            "clone3-bad-size" => {
                let args = CloneArgs {
                    flags: NEW_UTS_IPC,
                    exit_signal: libc::SIGCHLD as u64,
                    ..Default::default()
                };
                // Smaller than CLONE_ARGS_SIZE_VER0 (64): EINVAL.
                libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, 16usize)
            }
            "setns-not-ns" => {
                let fd = open_ns("/dev/null");
                libc::setns(fd, 0) as i64
            }
            _ => die(&format!("unknown action {action}")),
        }
    };
    match ret {
        0 => {
            // A child, if the kernel took the call after all.
            // SAFETY: plain syscall.
            unsafe { libc::_exit(0) }
        }
        r if r < 0 => println!("errno {}", errno()),
        r => {
            reap(r);
            println!("ret {r}");
        }
    }
}

/// See the module's doc (`node`).
fn node(sets: u64, n: u64, busy: &str) {
    let in_containers = match busy {
        "containers" => true,
        "host" => false,
        _ => die("node: say containers or host"),
    };
    let lp = format!("i=0; while [ $i -lt {n} ]; do ( : ); i=$((i+1)); done");
    // The idle shells wait on a pipe that closes when the host is done.
    let mut fds = [0; 2];
    // SAFETY: `fds` is a live [c_int; 2].
    check(unsafe { libc::pipe(fds.as_mut_ptr()) } as i64, "pipe");
    let sh = |script: &str, stdin: RawFd| -> ! {
        // SAFETY: in a child after fork: dup2 and exec only.
        unsafe { libc::dup2(stdin, 0) };
        let (sh, c) = (
            CString::new("/bin/sh").unwrap(),
            CString::new("-c").unwrap(),
        );
        let script = CString::new(script).unwrap();
        let argv = [sh.as_ptr(), c.as_ptr(), script.as_ptr(), std::ptr::null()];
        // SAFETY: NUL-terminated strings and a null-terminated argv.
        unsafe { libc::execv(sh.as_ptr(), argv.as_ptr()) };
        die("exec /bin/sh")
    };
    let flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWCGROUP;
    let start = Instant::now();
    let mut children = Vec::new();
    for _ in 0..sets {
        // SAFETY: the child only unshares, forks, waits and execs.
        let pid = check(unsafe { libc::fork() } as i64, "fork");
        if pid == 0 {
            // SAFETY: plain syscalls in the child.
            unsafe {
                if libc::unshare(flags) != 0 {
                    die(&format!("unshare: errno {}", errno()));
                }
                let init = libc::fork();
                if init == 0 {
                    libc::close(fds[1]);
                    if in_containers {
                        sh(&lp, libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY));
                    }
                    sh("read x", fds[0]);
                }
                libc::close(fds[1]);
                reap(init as i64);
                libc::_exit(0);
            }
        }
        children.push(pid);
    }
    // SAFETY: the parent's own read end, not needed here.
    unsafe { libc::close(fds[0]) };
    let ops = if in_containers {
        sets * n
    } else {
        // SAFETY: the child only execs.
        let pid = check(unsafe { libc::fork() } as i64, "fork");
        if pid == 0 {
            sh(&lp, 0);
        }
        reap(pid);
        n
    };
    // SAFETY: closing our write end lets the idle shells' `read` return.
    unsafe { libc::close(fds[1]) };
    for pid in children {
        reap(pid);
    }
    report(start, ops, "fork+exits");
}

fn report(start: Instant, ops: u64, what: &str) {
    let secs = start.elapsed().as_secs_f64();
    println!("seconds {secs:.6} {what} {ops}");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let action = args
        .next()
        .unwrap_or_else(|| die("usage: nsload ACTION [N]"));
    let mut count = || -> u64 {
        args.next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| die("missing count"))
    };
    match action.as_str() {
        "churn" => churn(count()),
        "forkexec" => forkexec(count()),
        "forkexit" => forkexit(count()),
        "burst" => burst(count()),
        "hold" => hold(count()),
        "noise" => noise(),
        "node" => {
            let (sets, n) = (count(), count());
            node(sets, n, &args.next().unwrap_or_default())
        }
        other => malformed(other),
    }
}
