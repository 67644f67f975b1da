//! Small namespace actions the end-to-end tests need and no standard tool does
//! (clone3, setns through a pidfd, a refused unshare, a namespace held by
//! one thing only). Each action prints one
//! line (`ready` or `errno N`) and, where it should stay alive for inspection,
//! waits until killed.

mod holders;

use std::{ffi::CString, io::Write};

fn die(msg: &str) -> ! {
    eprintln!("nshelper: {msg}");
    std::process::exit(2)
}

fn hex(arg: Option<String>) -> u64 {
    let s = arg.unwrap_or_else(|| die("missing flags argument"));
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or_else(|_| die("bad hex flags"))
}

fn say(line: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn wait_forever() -> ! {
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
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

fn clone3(args: *const CloneArgs) -> i64 {
    // SAFETY: `args` points at a `CloneArgs` of the size passed (possibly on a
    // page not yet faulted in: the kernel copies it itself); no CLONE_VM,
    // so the child is an ordinary fork of this process.
    unsafe { libc::syscall(libc::SYS_clone3, args, std::mem::size_of::<CloneArgs>()) }
}

/// `cl` written to a memfd and mapped back, untouched: the mapping has no
/// page table entry until the kernel's own copy faults it in.
fn unfaulted_copy(cl: &CloneArgs) -> *const CloneArgs {
    let size = std::mem::size_of::<CloneArgs>();
    // SAFETY: plain syscalls on a fresh memfd; `cl` is `size` readable bytes.
    unsafe {
        let fd = libc::memfd_create(c"nshelper-args".as_ptr(), 0);
        if fd < 0 || libc::write(fd, (cl as *const CloneArgs).cast(), size) != size as isize {
            die("memfd");
        }
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        );
        if p == libc::MAP_FAILED {
            die("mmap");
        }
        p as *const CloneArgs
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let action = args
        .next()
        .unwrap_or_else(|| die("usage: nshelper ACTION ARGS"));
    match action.as_str() {
        // clone3 FLAGS: child waits; parent prints `child PID` and waits.
        "clone3" => {
            let cl = CloneArgs {
                flags: hex(args.next()),
                exit_signal: libc::SIGCHLD as u64,
                ..Default::default()
            };
            // SAFETY: valid clone_args of the size we pass; no CLONE_VM, so the
            // child is an ordinary fork of this process.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_clone3,
                    &cl as *const CloneArgs,
                    std::mem::size_of::<CloneArgs>(),
                )
            };
            match ret {
                0 => wait_forever(),
                r if r < 0 => say(&format!("errno {}", errno())),
                child => {
                    say(&format!("child {child}"));
                    wait_forever()
                }
            }
        }
        // setns-pidfd PID FLAGS: join PID's namespaces of the given kinds at once.
        "setns-pidfd" => {
            let pid: i32 = args
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| die("missing pid"));
            let flags = hex(args.next());
            // SAFETY: plain syscalls with integer arguments.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
            if fd < 0 {
                die(&format!("pidfd_open: errno {}", errno()));
            }
            // SAFETY: fd is the pidfd just opened; setns reads only its arguments.
            if unsafe { libc::setns(fd, flags as i32) } != 0 {
                say(&format!("errno {}", errno()));
                std::process::exit(1);
            }
            say("ready");
            wait_forever()
        }
        // setns-path PATH NSTYPE: join the namespace behind an nsfs file.
        "setns-path" => {
            let path = CString::new(args.next().unwrap_or_else(|| die("missing path")))
                .unwrap_or_else(|_| die("bad path"));
            let nstype = hex(args.next());
            // SAFETY: valid C string; plain syscalls.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                die(&format!("open: errno {}", errno()));
            }
            // SAFETY: fd is the namespace file just opened; setns reads only its arguments.
            if unsafe { libc::setns(fd, nstype as i32) } != 0 {
                say(&format!("errno {}", errno()));
                std::process::exit(1);
            }
            say("ready");
            wait_forever()
        }
        // ns-id PATH: the namespace's 64-bit id (NS_GET_ID, Linux 6.18+).
        "ns-id" => {
            let path = args.next().unwrap_or_else(|| die("missing path"));
            let id = nstrace_tests::ns_id_of(&path)
                .unwrap_or_else(|| die(&format!("NS_GET_ID on {path}: errno {}", errno())));
            say(&id.to_string());
        }
        // unshare-as-nobody FLAGS: drop to uid/gid 65534, try unshare, print the result.
        "unshare-as-nobody" => {
            let flags = hex(args.next());
            // SAFETY: plain syscalls with integer arguments.
            unsafe {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(65534, 65534, 65534) != 0
                    || libc::setresuid(65534, 65534, 65534) != 0
                {
                    die(&format!("dropping privileges: errno {}", errno()));
                }
                if libc::unshare(flags as i32) == 0 {
                    say("ready");
                } else {
                    say(&format!("errno {}", errno()));
                }
            }
        }
        // thread-unshare FLAGS: a second thread unshares; prints `tid TID`, waits.
        "thread-unshare" => {
            let flags = hex(args.next());
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                // SAFETY: plain syscalls.
                let tid = unsafe { libc::gettid() };
                // SAFETY: plain syscall on this thread, no memory involved.
                let r = unsafe { libc::unshare(flags as i32) };
                let _ = tx.send(if r == 0 {
                    format!("tid {tid}")
                } else {
                    format!("errno {}", errno())
                });
                wait_forever()
            });
            say(&rx.recv().unwrap_or_else(|_| die("thread died")));
            wait_forever()
        }
        // clone3-unfaulted FLAGS: clone3 with its arguments on a file page
        // mapped but never touched (a probe read cannot fault it in; the
        // kernel's copy can). Prints `child PID`, waits.
        "clone3-unfaulted" => {
            let cl = CloneArgs {
                flags: hex(args.next()),
                exit_signal: libc::SIGCHLD as u64,
                ..Default::default()
            };
            let args = unfaulted_copy(&cl);
            match clone3(args) {
                0 => wait_forever(),
                r if r < 0 => say(&format!("errno {}", errno())),
                child => {
                    say(&format!("child {child}"));
                    wait_forever()
                }
            }
        }
        // clone3-rewrite FLAGS N: N clone3 calls while a second thread flips
        // the flags word between 0 and FLAGS. Prints `child PID` for each
        // child made, then `done`; the children wait.
        "clone3-rewrite" => {
            let flags = hex(args.next());
            let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
            let cl = Box::leak(Box::new(CloneArgs {
                flags,
                exit_signal: libc::SIGCHLD as u64,
                ..Default::default()
            }));
            let word = std::ptr::addr_of_mut!(cl.flags) as usize;
            std::thread::spawn(move || {
                let mut on = false;
                loop {
                    on = !on;
                    // SAFETY: the leaked args live for the process; racy on
                    // purpose (the attack), through volatile writes.
                    unsafe {
                        std::ptr::write_volatile(word as *mut u64, if on { flags } else { 0 })
                    };
                }
            });
            let mut made = Vec::new();
            for _ in 0..n {
                match clone3(cl as *const CloneArgs) {
                    // A child of a multi-threaded parent: only async-signal-safe calls.
                    0 => wait_forever(),
                    r if r > 0 => made.push(r),
                    _ => {}
                }
            }
            for child in made {
                say(&format!("child {child}"));
            }
            say("done");
            wait_forever()
        }
        // maxrss CMD ARGS: runs CMD (stdout to /dev/null) in a child forked
        // from this small process and prints `status RAW maxrss KIB` when it
        // ends. A test cannot read this from its own wait4: a process's
        // ru_maxrss includes the memory of whatever it was before exec, and
        // a child spawned by the (large) test process starts as a copy of it.
        "maxrss" => {
            let argv: Vec<CString> = args
                .map(|a| CString::new(a).unwrap_or_else(|_| die("NUL in argument")))
                .collect();
            if argv.is_empty() {
                die("usage: nshelper maxrss CMD ARGS");
            }
            let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
            ptrs.push(std::ptr::null());
            // SAFETY: fork in a single-threaded process; the child only
            // redirects stdout and execs (or exits).
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: the child after fork: only open, dup2, execv and _exit, all async-signal-safe.
                unsafe {
                    let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
                    libc::dup2(null, 1);
                    libc::execvp(ptrs[0], ptrs.as_ptr());
                    libc::_exit(127);
                }
            }
            // SAFETY: an all-zero rusage is a valid value of this plain C struct.
            let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
            // SAFETY: our own child; status and usage are ours to write.
            if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } != pid {
                die("wait4");
            }
            say(&format!("status {status} maxrss {}", usage.ru_maxrss));
        }
        // The holder scenarios (see holders.rs): each prints its lines and waits.
        "socket-holder" => holders::socket_holder(),
        "zombie-holder" => holders::zombie_holder(),
        "mntns-holder" => holders::mntns_holder(),
        "pidfd-holder" => holders::pidfd_holder(),
        other => die(&format!("unknown action {other}")),
    }
}
