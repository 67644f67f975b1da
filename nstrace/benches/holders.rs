//! The holder search a memberless namespace costs, on a node-sized /proc:
//! 1,000 extra processes with 50 fds each (50,000 fds; one in five a
//! socket). What `Ends::explain` reads for each batch of memberless
//! namespaces it cannot explain otherwise: every mount namespace's nsfs
//! mounts and every process's nsfs fds; for a network namespace nothing
//! else holds, every socket held outside its holder's own netns too.
//! Needs root (other processes' fds); `cargo bench -p nstrace --bench
//! holders` (`cargo xtask bench` runs it).

use std::{hint::black_box, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use nstrace::sys::procfs;

const PROCESSES: usize = 1000;
const FDS_EACH: usize = 50;
/// Of each process's fds, this many are sockets.
const SOCKETS_EACH: usize = 10;

/// The processes, killed on drop.
struct Node(Vec<libc::pid_t>);

impl Node {
    fn start() -> Node {
        let mut pids = Vec::with_capacity(PROCESSES);
        for _ in 0..PROCESSES {
            // SAFETY: the child calls only async-signal-safe functions
            // (open, socket, pause, _exit) before it is killed: fork from
            // a threaded process allows exactly that.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: as above; the path is a NUL-terminated literal.
                unsafe {
                    for _ in 0..FDS_EACH - SOCKETS_EACH {
                        libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
                    }
                    for _ in 0..SOCKETS_EACH {
                        libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                    }
                    loop {
                        libc::pause();
                    }
                }
            }
            assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
            pids.push(pid);
        }
        // Let every child open its fds before the first measurement.
        std::thread::sleep(Duration::from_millis(500));
        Node(pids)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: signalling and reaping children this process forked.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

fn holders(c: &mut Criterion) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("holders: skipped, needs root to read other processes' fds");
        return;
    }
    let _node = Node::start();
    let mut g = c.benchmark_group("holders");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    // What every memberless namespace's check reads (once per batch).
    g.bench_function("mounts_and_fds", |b| {
        b.iter(|| {
            black_box(procfs::nsfs_mounts());
            black_box(procfs::ns_fd_holders());
        })
    });
    // And for a memberless network namespace nothing else holds.
    g.bench_function("sockets", |b| {
        b.iter(|| black_box(procfs::socket_holders_now()))
    });
    g.finish();
}

criterion_group!(benches, holders);
criterion_main!(benches);
