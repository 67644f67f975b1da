//! Ends as the kernel sees them, in the situations where guessing goes wrong:
//! pins in other mount namespaces, fds held by others, namespaces kept by what
//! they own, fast `ip netns` cycles beside another pinned namespace, nested
//! user namespaces freed at once, inode reuse across kinds, a thousand
//! cycles. Each trace is judged by the kernel when the tracer stops
//! ([`judge_ends`]: nsfs handles, 6.18+); in guests the same scenarios run
//! under both probe modes at once and must agree ([`both_modes_agree`]).

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use nstrace_tests::*;
use serde_json::Value;

/// iproute2's ip by path: in the guests, busybox's sh prefers its own applets.
const IP: &str = "/bin/ip";

fn sh(script: &str) {
    let st = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(st.success(), "sh -c {script:?}: {st}");
}

fn count(records: &[Value], event: &str, kind: &str, inode: u64) -> usize {
    records.iter().filter(|r| is(r, event, kind, inode)).count()
}

/// No destroy of `inode` within `quiet`.
fn assert_no_destroy(tracer: &Tracer, kind: &str, inode: u64, quiet: Duration) {
    thread::sleep(quiet);
    let r = tracer.records();
    assert_eq!(
        count(&r, "destroy", kind, inode),
        0,
        "destroyed while held: {r:#?}"
    );
}

/// A process holding fd 7 open on `pid`'s namespace of `kind`.
fn fd_holder(pid: u32, kind: &str) -> Group {
    let mut g = Group::spawn(&[
        "sh",
        "-c",
        &format!("exec 7</proc/{pid}/ns/{kind}; echo open; exec sleep 60"),
    ]);
    assert_eq!(g.read_line(), "open");
    g
}

/// A file to bind-mount a namespace onto.
fn pin_file(tag: &str) -> String {
    let p = format!("/tmp/nstrace-pin-{tag}-{}", std::process::id());
    std::fs::write(&p, "").unwrap();
    p
}

/// `ip netns add/exec/delete` in quick succession while another netns stays
/// pinned: every cycle's namespace is pinned or ends only once it is gone,
/// its exec joins come before its one destroy.
fn ip_netns_cycles(tracer: &Tracer, cycles: usize) {
    let me = std::process::id();
    let keep = format!("nstrace-keep-{me}");
    let _ = Command::new(IP).args(["netns", "delete", &keep]).output();
    sh(&format!("{IP} netns add {keep}"));
    let mut inodes = Vec::new();
    for i in 0..cycles {
        let name = format!("nstrace-c{i}-{me}");
        sh(&format!(
            "{IP} netns add {name} && stat -L -c %i /run/netns/{name} > /tmp/{name} && {IP} netns exec {name} true && {IP} netns delete {name}"
        ));
        let inode: u64 = std::fs::read_to_string(format!("/tmp/{name}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let _ = std::fs::remove_file(format!("/tmp/{name}"));
        inodes.push(inode);
    }
    sh(&format!("{IP} netns delete {keep}"));
    for (i, inode) in inodes.iter().enumerate() {
        // Inodes come back: the i-th cycle's create is the i-th of its inode.
        let nth = inodes[..=i].iter().filter(|x| *x == inode).count();
        tracer.wait_for(nth, |r| is(r, "destroy", "net", *inode));
    }
}

#[test]
fn ip_netns_cycles_beside_a_pinned_namespace() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&[]);
    ip_netns_cycles(&tracer, 30);
    let records = tracer.records();
    // Per namespace (by creation): one destroy, no join after it.
    let creates: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "create" && r["ns_type"] == "net" && r["comm"] == "ip")
        .collect();
    assert!(creates.len() >= 31, "{records:#?}");
    for c in creates {
        let born = &c["time"];
        let mine: Vec<&Value> = records
            .iter()
            .filter(|r| {
                r["ns_type"] == "net"
                    && r["ns_inode"] == c["ns_inode"]
                    && r["ns_created"]["time"] == *born
            })
            .collect();
        let destroys: Vec<usize> = mine
            .iter()
            .enumerate()
            .filter(|(_, r)| r["event"] == "destroy")
            .map(|(i, _)| i)
            .collect();
        assert!(destroys.len() <= 1, "{mine:#?}");
        if let Some(&d) = destroys.first() {
            assert_eq!(d, mine.len() - 1, "records after the destroy: {mine:#?}");
        }
    }
    assert!(tracer.stop().0.success());
}

#[test]
fn a_pin_inside_a_private_mount_namespace_holds() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&[]);
    let target = Group::spawn(&["unshare", "-u", "sleep", "60"]);
    let inode = wait_ns_changed(target.pid(), "uts");
    let file = pin_file("private");
    let mut holder = Group::spawn(&[
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &format!(
            "mount --bind /proc/{}/ns/uts {file} && echo pinned && exec sleep 60",
            target.pid()
        ),
    ]);
    assert_eq!(holder.read_line(), "pinned");
    drop(target);
    let pinned = tracer.wait_for(1, |r| is(r, "pinned", "uts", inode));
    let by = pinned[0]["pinned_by"].to_string();
    assert!(by.contains(&file) && by.contains("mnt namespace"), "{by}");
    assert_no_destroy(&tracer, "uts", inode, Duration::from_millis(700));
    // The mount namespace dies with its last process, and the pin with it.
    drop(holder);
    let d = tracer.wait_for(1, |r| is(r, "destroy", "uts", inode));
    assert_eq!(d[0]["end"], expected_end("pin-released"));
    let _ = std::fs::remove_file(&file);
    assert!(tracer.stop().0.success());
}

#[test]
fn an_fd_held_by_another_process_holds() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&[]);
    let target = Group::spawn(&["unshare", "-i", "sleep", "60"]);
    let inode = wait_ns_changed(target.pid(), "ipc");
    let holder = fd_holder(target.pid(), "ipc");
    drop(target);
    let pinned = tracer.wait_for(1, |r| is(r, "pinned", "ipc", inode));
    let by = pinned[0]["pinned_by"].to_string();
    assert!(
        by.contains(&format!("fd 7 of sleep (pid {})", holder.pid())),
        "{by}"
    );
    assert_no_destroy(&tracer, "ipc", inode, Duration::from_millis(700));
    drop(holder);
    tracer.wait_for(1, |r| is(r, "destroy", "ipc", inode));
    assert!(tracer.stop().0.success());
}

#[test]
fn a_user_namespace_is_kept_by_the_namespace_it_owns() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&[]);
    let target = Group::spawn(&["unshare", "-U", "-n", "sleep", "60"]);
    let net = wait_ns_changed(target.pid(), "net");
    let user = ns_inode(target.pid(), "user");
    let file = pin_file("owned");
    sh(&format!(
        "mount --bind /proc/{}/ns/net {file}",
        target.pid()
    ));
    drop(target);
    let pinned = tracer.wait_for(1, |r| is(r, "pinned", "user", user));
    let by = pinned[0]["pinned_by"].to_string();
    assert!(by.contains(&format!("owned net namespace {net}")), "{by}");
    assert_no_destroy(&tracer, "user", user, Duration::from_millis(500));
    sh(&format!("umount {file}"));
    let _ = std::fs::remove_file(&file);
    tracer.wait_for(1, |r| is(r, "destroy", "net", net));
    tracer.wait_for(1, |r| is(r, "destroy", "user", user));
    let records = tracer.records();
    let at = |kind, inode| {
        records
            .iter()
            .position(|r| is(r, "destroy", kind, inode))
            .unwrap()
    };
    assert!(at("net", net) < at("user", user), "the owner ends last");
    assert!(tracer.stop().0.success());
}

#[test]
fn unshare_pid_without_fork_is_watched_and_ends() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&[]);
    // The process itself stays in the old pid namespace; its next children
    // would be in the new one, which it alone holds (pid_for_children).
    let g = Group::spawn(&["unshare", "-p", "sleep", "60"]);
    let created = tracer.wait_for(1, |r| {
        r["event"] == "create" && r["ns_type"] == "pid" && r["pid"] == g.pid()
    });
    let inode = created[0]["ns_inode"].as_u64().unwrap();
    assert_no_destroy(&tracer, "pid", inode, Duration::from_millis(400));
    drop(g);
    tracer.wait_for(1, |r| is(r, "destroy", "pid", inode));
    assert!(tracer.stop().0.success());
}

#[test]
fn nested_user_namespaces_freed_at_once_each_end() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&[]);
    let g = Group::spawn(&[
        "unshare", "-U", "-r", "unshare", "-U", "-r", "unshare", "-U", "sleep", "60",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let users: Vec<u64> = loop {
        let c = tracer
            .records()
            .into_iter()
            .filter(|r| r["event"] == "create" && r["ns_type"] == "user" && r["comm"] == "unshare")
            .filter(|r| r["pid"] == g.pid())
            .filter_map(|r| r["ns_inode"].as_u64())
            .collect::<Vec<_>>();
        if c.len() == 3 {
            break c;
        }
        assert!(Instant::now() < deadline, "{:#?}", tracer.records());
        thread::sleep(Duration::from_millis(20));
    };
    // Only the innermost has a member; the outer two are held by what they own.
    drop(g);
    for u in &users {
        tracer.wait_for(1, |r| is(r, "destroy", "user", *u));
    }
    let records = tracer.records();
    for u in &users {
        assert_eq!(count(&records, "destroy", "user", *u), 1, "{records:#?}");
    }
    assert!(tracer.stop().0.success());
}

#[test]
fn reused_inodes_across_kinds_are_kept_apart() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&[]);
    // One inode allocator serves every kind: a uts inode comes back as ipc.
    sh("for i in $(seq 40); do unshare -u true; unshare -i true; done");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = tracer.records();
        let creates: Vec<&Value> = records
            .iter()
            .filter(|r| r["event"] == "create" && r["comm"] == "unshare")
            .filter(|r| r["ns_type"] == "uts" || r["ns_type"] == "ipc")
            .collect();
        let ended = creates
            .iter()
            .filter(|c| {
                records.iter().any(|r| {
                    r["event"] == "destroy"
                        && r["ns_type"] == c["ns_type"]
                        && r["ns_inode"] == c["ns_inode"]
                        && r["ns_created"]["time"] == c["time"]
                })
            })
            .count();
        if creates.len() + skipped_runs(&records) >= 80 && ended == creates.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{ended} of {} ended (lost: {:?}): {records:#?}",
            creates.len(),
            lost_notices(&records)
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(tracer.stop().0.success());
}

#[test]
fn a_thousand_cycles_with_pins_interleaved() {
    if !privileged() {
        return;
    }
    let tracer = Tracer::start(&[]);
    let me = std::process::id();
    sh(&format!(
        "for i in $(seq 1000); do unshare -u true; \
         if [ $((i % 100)) = 0 ]; then {IP} netns add nstrace-k$i-{me}; {IP} netns exec nstrace-k$i-{me} true; {IP} netns delete nstrace-k$i-{me}; fi; done"
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let records = tracer.records();
        let creates = records
            .iter()
            .filter(|r| r["event"] == "create" && r["comm"] == "unshare" && r["ns_type"] == "uts")
            .count();
        let ends = records
            .iter()
            .filter(|r| {
                r["event"] == "destroy"
                    && r["ns_type"] == "uts"
                    && r["ns_created"]["comm"] == "unshare"
            })
            .count();
        if creates + skipped_runs(&records) >= 1000 && ends == creates {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{ends} of {creates} uts namespaces ended (lost: {:?})",
            lost_notices(&records)
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(tracer.stop().0.success());
}

/// In guests (NSTRACE_BOTH_MODES=1): the scenarios above under fentry and
/// tracepoint mode at once. Tracepoint-mode destroys must match fentry's
/// `kernel-freed` ones one to one (kind, inode, id, birth), none twice, none
/// missing; where the tracepoint mode infers (no nsfs handles), none may come
/// before the kernel's free path ran (50 ms allowed for the two tracers'
/// separately sampled clocks and the kernel's own deferred free).
#[test]
fn both_modes_agree() {
    if !privileged() || std::env::var_os("NSTRACE_BOTH_MODES").is_none() {
        return;
    }
    let fentry = Tracer::start(&["--probe-mode=fentry"]);
    // Every kind's end from the free path: none left to inode reuse.
    let claimed = ends_by_kind(&fentry);
    assert!(claimed.values().all(|m| m == "fentry"), "{claimed:?}");
    let tracepoint = Tracer::start_also(&fentry, &["--probe-mode=tracepoint"]);
    let inferring = tracepoint.stderr().contains("inferred");
    ip_netns_cycles(&tracepoint, 10);
    // A user namespace kept by the net namespace it owns (pinned by a mount).
    let target = Group::spawn(&["unshare", "-U", "-n", "sleep", "60"]);
    wait_ns_changed(target.pid(), "net");
    let file = pin_file("both");
    sh(&format!(
        "mount --bind /proc/{}/ns/net {file}",
        target.pid()
    ));
    drop(target);
    thread::sleep(Duration::from_millis(600));
    sh(&format!("umount {file}"));
    let _ = std::fs::remove_file(&file);
    // An fd held by another process; nested user namespaces; no-fork pid.
    let target = Group::spawn(&["unshare", "-i", "sleep", "60"]);
    wait_ns_changed(target.pid(), "ipc");
    let holder = fd_holder(target.pid(), "ipc");
    drop(target);
    let nested = Group::spawn(&[
        "unshare", "-U", "-r", "unshare", "-U", "-r", "unshare", "-U", "-p", "sleep", "60",
    ]);
    thread::sleep(Duration::from_millis(600));
    drop(holder);
    drop(nested);
    sh("for i in $(seq 30); do unshare -u true; unshare -i -n true; done");
    // Everything created here has ended; give both streams time to say so.
    thread::sleep(Duration::from_millis(2500));
    let (_, _, a) = fentry.stop_with_records();
    let (_, _, b) = tracepoint.stop_with_records();
    let key = |r: &Value| {
        (
            r["ns_type"].as_str().unwrap_or("").to_string(),
            r["ns_inode"].as_u64().unwrap_or(0),
            r["ns_id"].as_u64(),
            r["ns_created"]["pid"].as_u64(),
            r["ns_created"]["syscall"].as_str().map(String::from),
        )
    };
    let destroys = |rs: &[Value]| -> Vec<Value> {
        rs.iter()
            .filter(|r| r["event"] == "destroy" && !r["ns_created"].is_null())
            .cloned()
            .collect()
    };
    let (da, db) = (destroys(&a), destroys(&b));
    // A free run the kernel skipped (reported) leaves that end to be found
    // when the inode is reused: seen in the 7.2 guest, one in ~12 runs.
    let unfreed: Vec<&Value> = da.iter().filter(|r| r["end"] != "kernel-freed").collect();
    assert!(
        unfreed.len() <= unseen_frees(&a),
        "fentry destroys not from the free path: {unfreed:#?}\nlosses: {:#?}",
        lost_notices(&a)
    );
    let time = |r: &Value| r["time"].as_str().unwrap().to_string();
    // A create either tracer reported it could not see (skipped probe runs)
    // leaves its namespace's end without a twin; no more than that.
    let mut unmatched = Vec::new();
    for d in &db {
        let same: Vec<&Value> = da.iter().filter(|f| key(f) == key(d)).collect();
        assert!(
            same.len() <= 1,
            "tracepoint destroy with two fentry twins: {d}\nfentry: {da:#?}"
        );
        if same.is_empty() {
            unmatched.push(d);
            continue;
        }
        if inferring && same[0]["end"] == "kernel-freed" {
            // RFC 3339 with nanoseconds, same length: strings order as times.
            let freed = &same[0];
            let earlier_ok = rfc3339_ns(&time(freed)) - 50_000_000;
            assert!(
                rfc3339_ns(&time(d)) >= earlier_ok,
                "destroy before the kernel freed it:\n{d}\n{freed}"
            );
        }
    }
    assert!(
        unmatched.len() <= skipped_runs(&a),
        "tracepoint destroys without a fentry twin: {unmatched:#?}\nfentry: {da:#?}"
    );
    let mut missing = Vec::new();
    for f in &da {
        let same = db.iter().filter(|d| key(d) == key(f)).count();
        assert!(
            same <= 1,
            "fentry end doubled in tracepoint mode: {f}\n{db:#?}"
        );
        if same == 0 {
            missing.push(f);
        }
    }
    assert!(
        missing.len() <= skipped_runs(&b),
        "fentry ends missing in tracepoint mode: {missing:#?}\n{db:#?}"
    );
}

/// Nanoseconds of the day of an RFC 3339 time (both tracers ran the same day).
fn rfc3339_ns(t: &str) -> i128 {
    let clock = &t[11..t.len() - 1];
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, "0"));
    let mut f = hms.split(':').map(|x| x.parse::<i128>().unwrap());
    let (h, m, s) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
    let frac = format!("{frac:0<9}");
    ((h * 60 + m) * 60 + s) * 1_000_000_000 + frac[..9].parse::<i128>().unwrap()
}

/// The judge itself: alive while a member lives, stale once it is gone.
#[test]
fn the_kernel_judge_answers() {
    if !privileged() {
        return;
    }
    let Some(judge) = KernelJudge::new() else {
        eprintln!("skipping: no nsfs file handles on this kernel");
        return;
    };
    let g = Group::spawn(&["unshare", "-u", "sleep", "60"]);
    let inode = wait_ns_changed(g.pid(), "uts") as u32;
    let out = Command::new(helper_bin())
        .args(["ns-id", &format!("/proc/{}/ns/uts", g.pid())])
        .output()
        .unwrap();
    let id: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("nshelper ns-id: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(judge.alive(clone_flag("uts"), inode, id));
    assert!(!judge.alive(clone_flag("uts"), inode, id + 1_000_000));
    drop(g);
    let deadline = Instant::now() + Duration::from_secs(5);
    while judge.alive(clone_flag("uts"), inode, id) {
        assert!(
            Instant::now() < deadline,
            "still alive 5 s after its only member died"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// A namespace alive before the trace, held only by another process's fd:
/// `nstrace ls` says what holds it, and its end is reported when the fd goes.
#[test]
fn a_namespace_held_only_by_an_fd_before_start_ends_when_closed() {
    if !privileged() {
        return;
    }
    let target = Group::spawn(&["unshare", "-u", "sleep", "60"]);
    let inode = wait_ns_changed(target.pid(), "uts");
    let holder = fd_holder(target.pid(), "uts");
    drop(target);
    let ls = Command::new(nstrace_bin())
        .args(["ls", "--json"])
        .output()
        .unwrap();
    let ls: Value = serde_json::from_slice(&ls.stdout).unwrap();
    let row = ls["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["type"] == "uts" && n["ns"] == inode)
        .unwrap_or_else(|| panic!("uts {inode} not listed: {ls:#}"))
        .clone();
    assert_eq!(row["memberless"], true, "{row}");
    assert_eq!(
        row["held_by"][0],
        format!("fd 7 of sleep (pid {})", holder.pid()),
        "{row}"
    );
    let tracer = Tracer::start(&[]);
    assert_no_destroy(&tracer, "uts", inode, Duration::from_millis(600));
    drop(holder);
    let d = tracer.wait_for(1, |r| is(r, "destroy", "uts", inode));
    assert_eq!(d[0]["end"], expected_end("pin-released"), "{}", d[0]);
    assert!(tracer.stop().0.success());
}
