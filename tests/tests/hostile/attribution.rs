//! Forging container attribution: an unprivileged process that only names
//! itself like containerd's shim (argv[0] and `-id`) must not crash the
//! tracer, put a container's name on its own activity, or pick a file root
//! opens (a traversal id pointing at a FIFO).

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nstrace_tests::*;
use serde_json::Value;

/// A fake shim as nobody: `exec -a containerd-shim-runc-v2` with the
/// shim's argv, whose child makes a user namespace; returns the pid of the
/// process that unshares (the fake shim's child) once its create shows.
fn fake_shim_create(t: &Tracer, namespace: &str, id: &str) -> Value {
    let script = format!(
        "exec -a containerd-shim-runc-v2 bash -c 'unshare -U sleep 1 & echo $!; wait' _ -namespace {namespace} -id '{id}'"
    );
    let mut g = as_nobody(&script);
    let line = g.read_line();
    let pid: u32 = line
        .parse()
        .unwrap_or_else(|_| panic!("fake shim said {line:?}"));
    let user = wait_ns_changed(pid, "user");
    let got = t.wait_for(1, |r| is(r, "create", "user", user) && r["pid"] == pid);
    g.wait();
    got[0].clone()
}

#[test]
fn a_fake_shim_with_a_multibyte_id_crashes_nothing_and_names_nothing() {
    if !privileged() {
        return;
    }
    // The text timeline shortens container ids: where the crash was.
    let t = Tracer::start_text(&[]);
    let mut g = as_nobody(
        "exec -a containerd-shim-runc-v2 bash -c 'unshare -U true; sleep 0.3' _ -namespace moby -id aaaaaaaaaaa\u{e9}",
    );
    g.wait();
    // Then an ordinary create: the tracer is still tracing.
    let mut later = as_nobody("unshare -U sh -c 'readlink /proc/self/ns/user'");
    let link = later.read_line();
    let inode = link
        .trim_start_matches("user:[")
        .trim_end_matches(']')
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !t.lines().iter().any(|l| l.contains(&inode)) {
        assert!(
            Instant::now() < deadline,
            "no record of {link} after the fake shim; stderr: {}",
            t.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !t.lines().iter().any(|l| l.contains("aaaaaaaaaaa")),
        "the fake shim's id was shown: {:?}",
        t.lines()
    );
    let (status, stderr) = t.stop();
    assert!(status.success(), "{status}: {stderr}");
    assert!(!stderr.contains("internal error"), "{stderr}");
}

#[test]
fn a_fake_shim_with_a_well_formed_id_is_not_that_container() {
    if !privileged() {
        return;
    }
    let t = Tracer::start(&[]);
    let id = "4f1c4ac2a5e0a3f36ad4c0f29b2ee7d0f43d9d8b2d41f2b2fe4e1ee4b9a2cafe";
    for namespace in ["moby", "k8s.io"] {
        let r = fake_shim_create(&t, namespace, id);
        assert_eq!(
            r["container"],
            Value::Null,
            "attributed to a forged id: {r}"
        );
        assert_eq!(r["uid"], NOBODY, "{r}");
    }
    let (status, _) = t.stop();
    assert!(status.success());
}

#[test]
fn a_traversal_id_cannot_make_root_open_a_fifo() {
    if !privileged() {
        return;
    }
    // Where `/var/lib/docker/containers/{id}/config.v2.json` would lead with
    // `../` in the id: a FIFO the attacker made, which blocks whoever opens it.
    let dir = format!("/tmp/nstrace-hostile-{}", std::process::id());
    let (status, _, err) = run_as_nobody(&format!(
        "mkdir -p {dir} && mkfifo {dir}/config.v2.json && mkdir -p {dir}/userdata && mkfifo {dir}/userdata/config.json"
    ));
    assert!(status.success(), "{err}");
    let t = Tracer::start(&[]);
    let started = Instant::now();
    let traversal = format!("../../../..{dir}");
    for namespace in ["moby", "k8s.io", "default"] {
        let r = fake_shim_create(&t, namespace, &traversal);
        assert_eq!(r["container"], Value::Null, "{r}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "slow: {:?}",
        started.elapsed()
    );
    // Still tracing, and stoppable.
    let (status, stderr) = t.stop();
    assert!(status.success(), "{status}: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_saved_trace_with_a_multibyte_container_id_is_reported() {
    if !privileged() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("nstrace-mbid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("t.jsonl");
    let record = serde_json::json!({
        "time": "2026-12-01T00:00:00.000000000Z", "event": "create", "ns_type": "uts",
        "ns_inode": 4026532999u64, "ns_id": null, "syscall": "unshare",
        "flags": ["CLONE_NEWUTS"], "raw_flags": "0x4000000", "pid": 10, "tid": 10,
        "ppid": 1, "comm": "x", "vpid": 10, "uid": 0,
        "container": {"id": "aaaaaaaaaaa\u{e9}\u{e9}", "runtime": "docker", "name": "\u{e9}"}
    });
    let mut f = std::fs::File::create(&trace).unwrap();
    writeln!(f, "{record}").unwrap();
    drop(f);
    for args in [&["report"][..], &["report", "--json"][..]] {
        let out = Command::new(nstrace_bin())
            .args(args)
            .arg(&trace)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
        assert!(!stderr.contains("internal error"), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
