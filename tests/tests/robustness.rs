//! Malformed calls, load, several tracers, and abrupt stops: nstrace keeps
//! telling the truth, counts what it cannot deliver, and leaves nothing behind.

use std::{
    thread,
    time::{Duration, Instant},
};

use nstrace_tests::*;
use serde_json::Value;

fn load(args: &[&str]) -> Group {
    let bin = load_bin();
    let mut argv = vec![bin.to_str().unwrap()];
    argv.extend_from_slice(args);
    Group::spawn(&argv)
}

/// `nstrace: N records (M kernel events), L lost` → L.
fn lost_in(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| {
            let tail = l.strip_prefix("nstrace: ")?.split_once("), ")?.1;
            tail.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no closing summary in: {stderr}"))
}

/// unshare -u in a sleeper; returns the group and its new UTS inode.
fn uts_sleeper() -> (Group, u64) {
    let g = Group::spawn(&["unshare", "-u", "sleep", "30"]);
    let inode = wait_ns_changed(g.pid(), "uts");
    (g, inode)
}

fn is_create_of(r: &Value, kind: &str, inode: u64) -> bool {
    is(r, "create", kind, inode)
}

#[test]
fn clone3_with_bad_arguments_is_reported_or_ignored_and_tracing_goes_on() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&[]);
    // A clone_args the kernel cannot read: nothing says it was namespace
    // work, so no record; the tracer must simply survive it.
    let mut bad_ptr = load(&["clone3-bad-pointer"]);
    assert_eq!(bad_ptr.read_line(), format!("errno {}", libc::EFAULT));
    // A size below CLONE_ARGS_SIZE_VER0 with CLONE_NEW* flags: one error.
    let mut bad_size = load(&["clone3-bad-size"]);
    assert_eq!(bad_size.read_line(), format!("errno {}", libc::EINVAL));
    let err = tracer.wait_for_pid(1, bad_size.pid());
    assert_eq!(err[0]["event"], "error");
    assert_eq!(err[0]["syscall"], "clone3");
    assert_eq!(err[0]["errno"], "EINVAL");
    // Still tracing, with the right inode.
    let (_g, inode) = uts_sleeper();
    tracer.wait_for(1, |r| is_create_of(r, "uts", inode));
    assert!(
        tracer.records().iter().all(|r| r["pid"] != bad_ptr.pid()),
        "a clone3 whose arguments could not be read is not namespace work"
    );
    let (status, stderr) = tracer.stop();
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("undecodable"), "{stderr}");
}

/// With `--debug`, the kernel side says why it could not tell: the
/// clone3 arguments the kernel itself refused (EFAULT, the syscall's own
/// answer) were unreadable at the pointer the call passed.
#[test]
fn debug_says_why_clone3_arguments_were_unreadable() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&["--debug"]);
    let mut bad_ptr = load(&["clone3-bad-pointer"]);
    assert_eq!(bad_ptr.read_line(), format!("errno {}", libc::EFAULT));
    bad_ptr.wait();
    // Diagnostics come through their own ring: give the reader a moment.
    thread::sleep(Duration::from_millis(300));
    let (status, stderr) = tracer.stop();
    assert!(status.success(), "{stderr}");
    // The pointer nsload passes (4096): the same address, and the kernel's errno.
    assert!(
        stderr.contains("nstrace: kernel: debug: clone3 arguments at 0x1000 unreadable: EFAULT"),
        "{stderr}"
    );
    assert!(stderr.contains("kernel diagnostics ("), "{stderr}");
    // Without --debug, not a word from the kernel side.
    let tracer = Tracer::start(&[]);
    let mut bad_ptr = load(&["clone3-bad-pointer"]);
    assert_eq!(bad_ptr.read_line(), format!("errno {}", libc::EFAULT));
    bad_ptr.wait();
    let (status, stderr) = tracer.stop();
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("nstrace: kernel:"), "{stderr}");
}

#[test]
fn setns_on_a_file_that_is_no_namespace_reports_einval() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&[]);
    let mut g = load(&["setns-not-ns"]);
    assert_eq!(g.read_line(), format!("errno {}", libc::EINVAL));
    let r = tracer.wait_for_pid(1, g.pid());
    assert_eq!(r[0]["event"], "error");
    assert_eq!(r[0]["syscall"], "setns");
    assert_eq!(r[0]["errno"], "EINVAL");
    let (status, _) = tracer.stop();
    assert!(status.success());
}

#[test]
fn thousands_of_namespaces_alive_at_once() {
    if !privileged() {
        return;
    }
    const N: usize = 2000;
    let tracer = Tracer::start(&[]);
    let mut g = load(&["hold", &N.to_string()]);
    assert_eq!(g.read_line(), format!("ready {N}"));
    let parent = g.pid();
    let creates = tracer.wait_for_within(Duration::from_secs(60), 2 * N, |r| {
        r["event"] == "create" && r["pid"] == parent
    });
    // Every reported inode is one a child really has.
    let children: Vec<u32> =
        std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
    assert_eq!(children.len(), N);
    let mut truth: Vec<(String, u64)> = children
        .iter()
        .flat_map(|&c| {
            [
                ("uts".to_string(), ns_inode(c, "uts")),
                ("ipc".to_string(), ns_inode(c, "ipc")),
            ]
        })
        .collect();
    let mut seen: Vec<(String, u64)> = creates
        .iter()
        .map(|r| {
            (
                r["ns_type"].as_str().unwrap().to_string(),
                r["ns_inode"].as_u64().unwrap(),
            )
        })
        .collect();
    truth.sort();
    seen.sort();
    assert_eq!(seen, truth);
    // Release them all at once: every one ends, none is lost.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(parent as i32, libc::SIGUSR1) };
    assert_eq!(g.read_line(), "released");
    let inodes: std::collections::BTreeSet<u64> = truth.iter().map(|(_, i)| *i).collect();
    tracer.wait_for_within(Duration::from_secs(60), 2 * N, |r| {
        r["event"] == "destroy" && r["ns_inode"].as_u64().is_some_and(|i| inodes.contains(&i))
    });
    let (status, stderr) = tracer.stop();
    assert!(status.success(), "{stderr}");
    assert_eq!(lost_in(&stderr), 0, "{stderr}");
}

#[test]
fn two_tracers_at_once_both_see_everything() {
    if !privileged() {
        return;
    }
    let first = Tracer::start(&[]);
    let second = Tracer::start_also(&first, &[]);
    let (_g, inode) = uts_sleeper();
    first.wait_for(1, |r| is_create_of(r, "uts", inode));
    second.wait_for(1, |r| is_create_of(r, "uts", inode));
    let (s2, e2) = second.stop();
    assert!(s2.success(), "{e2}");
    // The first goes on after the second detached.
    let (_h, inode2) = uts_sleeper();
    first.wait_for(1, |r| is_create_of(r, "uts", inode2));
    let (s1, e1) = first.stop();
    assert!(s1.success(), "{e1}");
}

/// Programs loaded while `f` ran that are still loaded `within` after it.
fn leftover_programs(before: &[u64], within: Duration) -> Vec<u64> {
    let deadline = Instant::now() + within;
    loop {
        let left: Vec<u64> = program_ids()
            .into_iter()
            .filter(|id| !before.contains(id))
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_mid_burst_detaches_everything() {
    if !privileged() {
        return;
    }
    let before = program_ids();
    let tracer = Tracer::start(&[]);
    let _burst = load(&["burst", "1000000"]);
    tracer.wait_for(100, |r| r["event"] == "join");
    let (status, stderr) = tracer.stop_with(libc::SIGTERM);
    assert!(status.success(), "{stderr}");
    lost_in(&stderr);
    let left = leftover_programs(&before, Duration::from_secs(1));
    assert!(left.is_empty(), "programs left after SIGTERM: {left:?}");
}

#[test]
fn sigkill_mid_burst_then_a_new_start_works() {
    if !privileged() {
        return;
    }
    let before = program_ids();
    let tracer = Tracer::start(&[]);
    {
        let _burst = load(&["burst", "1000000"]);
        tracer.wait_for(100, |r| r["event"] == "join");
        let (status, _) = tracer.stop_with(libc::SIGKILL);
        assert!(!status.success());
    }
    // The kernel frees programs when their last fd closes, a moment later.
    let left = leftover_programs(&before, Duration::from_secs(10));
    assert!(left.is_empty(), "programs left after SIGKILL: {left:?}");
    let again = Tracer::start(&[]);
    let (_g, inode) = uts_sleeper();
    again.wait_for(1, |r| is_create_of(r, "uts", inode));
    let (status, stderr) = again.stop();
    assert!(status.success(), "{stderr}");
}

/// 100,000 joins as fast as one thread makes them: each one is either
/// delivered or counted as lost — with the default ring and with a tiny one.
fn burst_is_delivered_or_counted(extra: &[&str], must_overflow: bool) -> String {
    const ROUND_TRIPS: u64 = 50_000;
    let mut args = vec!["--event", "join"];
    args.extend_from_slice(extra);
    let tracer = Tracer::start(&args);
    let mut g = load(&["burst", &ROUND_TRIPS.to_string()]);
    let done = g.read_line();
    assert!(done.starts_with("seconds"), "{done}");
    let pid = g.pid();
    g.wait();
    thread::sleep(Duration::from_millis(500));
    let (status, stderr, records) = tracer.stop_with_records();
    assert!(status.success(), "{stderr}");
    let delivered = records.iter().filter(|r| r["pid"] == pid).count() as u64;
    let notices: Vec<&Value> = records.iter().filter(|r| r["event"] == "lost").collect();
    let count = |key: &str| -> u64 {
        notices
            .iter()
            .map(|r| r.pointer(key).and_then(Value::as_u64).unwrap_or(0))
            .sum()
    };
    // Every join is delivered or counted, exactly, as a dropped unshare/setns
    // event in the stream's `lost` notices; those add up to the closing line.
    let lost_joins = count("/by_kind/unshare_setns");
    assert_eq!(
        delivered + lost_joins,
        2 * ROUND_TRIPS,
        "{delivered} delivered + {lost_joins} lost; notices {notices:?}; {stderr}"
    );
    assert_eq!(
        count("/kernel_events"),
        lost_in(&stderr),
        "{notices:?}; {stderr}"
    );
    if lost_joins > 0 {
        assert!(stderr.contains("kernel events dropped"), "{stderr}");
    }
    assert!(
        lost_joins > 0 || !must_overflow,
        "a 1 MiB ring held 100,000 joins: the counting path went untested"
    );
    stderr
}

#[test]
fn burst_with_the_default_ring() {
    if !privileged() {
        return;
    }
    burst_is_delivered_or_counted(&[], false);
}

#[test]
fn burst_with_a_tiny_ring_counts_every_loss() {
    if !privileged() {
        return;
    }
    burst_is_delivered_or_counted(&["--buffer-size", "1"], true);
}

/// With `--debug` the count stays exact, and the kernel side says why
/// records went missing.
#[test]
fn burst_with_a_tiny_ring_and_debug() {
    if !privileged() {
        return;
    }
    let stderr = burst_is_delivered_or_counted(&["--buffer-size", "1", "--debug"], true);
    assert!(
        stderr.contains("nstrace: kernel: debug: ring buffer full: unshare/setns record dropped"),
        "{stderr}"
    );
}
