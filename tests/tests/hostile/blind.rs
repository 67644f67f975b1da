//! Blinding the tracer with the memory a syscall reads: clone3's
//! `struct clone_args` on a page a probe read cannot fault in, or rewritten
//! by another thread between the probe's read and the kernel's own copy.
//! The creates must still be reported (the kernel's flags decide), each
//! checked against the child's `/proc/PID/ns` links.

use std::time::Duration;

use nstrace_tests::*;
use serde_json::Value;

const NEWUSER_NEWUTS: &str = "0x14000000";

fn creates_for(records: &[Value], child: u32) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["event"] == "create" && r["child_pid"] == child)
        .collect()
}

#[test]
fn clone3_arguments_on_an_unfaulted_page_still_report_the_creates() {
    if !privileged() {
        return;
    }
    let t = Tracer::start(&[]);
    let helper = helper_bin();
    let mut g = as_nobody(&format!(
        "exec {} clone3-unfaulted {NEWUSER_NEWUTS}",
        helper.display()
    ));
    let line = g.read_line();
    let child: u32 = line
        .strip_prefix("child ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("nshelper said {line:?}"));
    let (uts, user) = (ns_inode(child, "uts"), ns_inode(child, "user"));
    assert_ne!(
        uts,
        ns_inode(std::process::id(), "uts"),
        "the kernel made a uts namespace"
    );
    let got = t.wait_for(2, |r| r["event"] == "create" && r["child_pid"] == child);
    let uts_rec = got
        .iter()
        .find(|r| r["ns_type"] == "uts")
        .unwrap_or_else(|| panic!("no uts create for child {child}: {got:?}"));
    assert_eq!(uts_rec["ns_inode"], uts, "{uts_rec}");
    let user_rec = got
        .iter()
        .find(|r| r["ns_type"] == "user")
        .expect("user create");
    assert_eq!(user_rec["ns_inode"], user, "{user_rec}");
    for r in &got {
        assert_eq!(r["syscall"], "clone3", "{r}");
        assert_eq!(
            r["flags_read"], false,
            "the record says the args were unreadable: {r}"
        );
        assert_eq!(r["uid"], NOBODY, "{r}");
    }
    drop(g);
    judge_ends(&t);
    let (status, _) = t.stop();
    assert!(status.success());
}

#[test]
fn clone3_flags_rewritten_by_another_thread_still_report_the_creates() {
    if !privileged() {
        return;
    }
    let t = Tracer::start(&[]);
    let helper = helper_bin();
    let mut g = as_nobody(&format!(
        "exec {} clone3-rewrite {NEWUSER_NEWUTS} 100",
        helper.display()
    ));
    let mut children = Vec::new();
    loop {
        let line = g.read_line();
        if line == "done" {
            break;
        }
        match line
            .strip_prefix("child ")
            .and_then(|p| p.parse::<u32>().ok())
        {
            Some(c) => children.push(c),
            None => panic!("nshelper said {line:?}"),
        }
    }
    let our_uts = ns_inode(std::process::id(), "uts");
    // The kernel's answer for each child: did it get a new uts namespace?
    let made: Vec<(u32, u64)> = children
        .iter()
        .map(|&c| (c, ns_inode(c, "uts")))
        .filter(|&(_, uts)| uts != our_uts)
        .collect();
    let plain = children.len() - made.len();
    eprintln!(
        "{} clones: {} made namespaces, {plain} did not",
        children.len(),
        made.len()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let records = loop {
        let records = t.records();
        let all_seen = made.iter().all(|&(c, _)| {
            creates_for(&records, c)
                .iter()
                .any(|r| r["ns_type"] == "uts")
        });
        if all_seen || std::time::Instant::now() > deadline {
            break records;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let skipped = skipped_runs(&records);
    let mut missing = Vec::new();
    for &(c, uts) in &made {
        match creates_for(&records, c)
            .iter()
            .find(|r| r["ns_type"] == "uts")
        {
            Some(r) => assert_eq!(r["ns_inode"], uts, "{r}"),
            None => missing.push(c),
        }
    }
    assert!(
        missing.len() <= skipped,
        "children with new namespaces and no create: {missing:?} (skipped runs {skipped}); losses: {:?}",
        lost_notices(&records)
    );
    // A clone the kernel made no namespace for is no create, whatever the
    // caller's memory said when the syscall began.
    for &c in &children {
        if !made.iter().any(|&(m, _)| m == c) {
            assert!(
                creates_for(&records, c).is_empty(),
                "create for plain child {c}"
            );
        }
    }
    drop(g);
    let (status, _) = t.stop();
    assert!(status.success());
}
