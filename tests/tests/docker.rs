//! Containers with a real dockerd (started by `cargo xtask test`): docker run,
//! exec and rm as namespace timelines, attributed to the right container.

use std::{process::Command, thread, time::Duration};

use nstrace_tests::{containers::*, *};
use serde_json::Value;

const KINDS: [&str; 5] = ["mnt", "uts", "ipc", "pid", "net"];

fn of_container<'a>(records: &'a [Value], id: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["container"]["id"] == id || r["ns_container"]["id"] == id)
        .collect()
}

#[test]
fn docker_run_exec_and_rm_tell_which_container_did_what() {
    if !docker_ready() {
        return;
    }
    let tracer = Tracer::start(&[]);
    let id = docker(&["run", "-d", "--network", "none", IMAGE, "sleep", "60"]);
    let running = Running(id.clone());
    let pid: u32 = docker(&["inspect", "-f", "{{.State.Pid}}", &id])
        .parse()
        .unwrap();

    // run: one unshare by runc:[1:CHILD], five kinds, attributed to the container.
    let creates = tracer.wait_for(5, |r| {
        r["event"] == "create" && r["container"]["id"] == id.as_str()
    });
    for kind in KINDS {
        let r = one_of_kind(&creates, "create", kind);
        assert_eq!(r["comm"], "runc:[1:CHILD]", "{r}");
        assert_eq!(r["syscall"], "unshare");
        assert_eq!(r["ns_inode"], ns_inode(pid, kind), "{kind}: {r}");
        assert_eq!(r["container"]["runtime"], "docker");
        assert!(
            r["container"]["name"]
                .as_str()
                .is_some_and(|n| !n.is_empty()),
            "{r}"
        );
    }
    let unsharers: std::collections::BTreeSet<String> = creates
        .iter()
        .map(|r| format!("{}@{}", r["tid"], r["time"]))
        .collect();
    assert_eq!(unsharers.len(), 1, "one unshare call: {creates:#?}");
    // The container's PID 1 as seen inside.
    let procs = docker(&["top", &id, "-o", "pid"]);
    assert!(procs.contains(&pid.to_string()), "{procs}");

    // exec: joins of the five kinds by the runtime process that becomes the command.
    docker(&["exec", &id, "true"]);
    let joins = tracer.wait_for(5, |r| {
        r["event"] == "join" && r["container"]["id"] == id.as_str() && r["comm"] == "runc:[1:CHILD]"
    });
    for kind in KINDS {
        let r = one_of_kind(&joins, "join", kind);
        assert_eq!(r["ns_inode"], ns_inode(pid, kind), "{kind}: {r}");
        assert_eq!(r["ns_created"]["comm"], "runc:[1:CHILD]");
    }

    // rm -f: each of the five ends.
    drop(running);
    for kind in KINDS {
        // By birth too: on a busy machine another namespace may have had
        // the same inode before.
        let c = creates.iter().find(|r| r["ns_type"] == kind).unwrap();
        tracer.wait_for(1, |r| {
            r["event"] == "destroy"
                && r["ns_type"] == kind
                && r["ns_inode"] == c["ns_inode"]
                && r["ns_created"]["time"] == c["time"]
        });
    }
    let destroys: Vec<Value> = tracer
        .records()
        .into_iter()
        .filter(|r| r["event"] == "destroy" && r["ns_container"]["id"] == id.as_str())
        .collect();
    assert_eq!(destroys.len(), 5, "{destroys:#?}");
    assert!(tracer.stop().0.success());
}

/// The metrics count a container's namespaces under its runtime, their
/// ends included (`nstrace_namespaces_destroyed_total{runtime="docker"}`).
#[test]
fn metrics_count_a_containers_ends_under_its_runtime() {
    if !docker_ready() {
        return;
    }
    let port = free_port();
    let tracer = Tracer::start(&["--metrics", &format!("127.0.0.1:{port}")]);
    let id = docker(&["run", "-d", "--network", "none", IMAGE, "sleep", "60"]);
    let running = Running(id.clone());
    let creates = tracer.wait_for(5, |r| {
        r["event"] == "create" && r["container"]["id"] == id.as_str()
    });
    drop(running);
    for c in &creates {
        tracer.wait_for(1, |r| {
            r["event"] == "destroy"
                && r["ns_inode"] == c["ns_inode"]
                && r["ns_created"]["time"] == c["time"]
        });
    }
    // Each kind's docker ends, read from the page (a scrape is a refresh).
    let page = http_get(port, "/metrics").expect("nstrace serves /metrics");
    for kind in KINDS {
        let series =
            format!("nstrace_namespaces_destroyed_total{{kind=\"{kind}\",runtime=\"docker\"}} ");
        let n: f64 = page
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series}in {page}"))
            .trim()
            .parse()
            .unwrap();
        assert!(n >= 1.0, "{kind}: {n}\n{page}");
    }
    assert!(tracer.stop().0.success());
}

#[test]
fn container_filter_shows_only_that_container() {
    if !docker_ready() {
        return;
    }
    let id = docker(&["create", "--network", "none", IMAGE, "sleep", "60"]);
    let _a = Running(id.clone());
    let other = docker(&["create", "--network", "none", IMAGE, "sleep", "60"]);
    let _b = Running(other.clone());
    let tracer = Tracer::start(&["--container", &id[..12]]);
    docker(&["start", &other]);
    docker(&["start", &id]);
    let mine = tracer.wait_for(5, |r| r["event"] == "create");
    // Let the other container's records arrive if they were going to.
    thread::sleep(Duration::from_millis(500));
    let all = tracer.records();
    assert!(!all.is_empty());
    assert_eq!(
        of_container(&all, &id).len(),
        all.len(),
        "only {id}: {all:#?}"
    );
    assert!(of_container(&all, &other).is_empty());
    assert!(mine.iter().all(|r| r["container"]["id"] == id.as_str()));
    assert!(tracer.stop().0.success());
}

#[test]
fn command_mode_traces_the_container_a_docker_run_starts_and_returns_its_status() {
    if !docker_ready() {
        return;
    }
    for (script, code) in [("true", 0), ("exit 7", 7)] {
        let out = Command::new(nstrace_bin())
            .args([
                "--json",
                "--",
                "docker",
                "run",
                "--rm",
                "--network",
                "none",
                IMAGE,
                "sh",
                "-c",
                script,
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        let records: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["event"] != "start" && r["event"] != "stop")
            .collect();
        let creates: Vec<&Value> = records
            .iter()
            .filter(|r| r["event"] == "create" && r["comm"] == "runc:[1:CHILD]")
            .collect();
        assert_eq!(creates.len(), 5, "{records:#?}\n{stderr}");
        let id = creates[0]["container"]["id"].as_str().unwrap();
        // The container's namespaces end before nstrace exits.
        let ends = records
            .iter()
            .filter(|r| r["event"] == "destroy" && r["ns_container"]["id"] == id)
            .count();
        assert_eq!(ends, 5, "{records:#?}");
        // Nothing from other processes.
        assert!(
            records
                .iter()
                .all(|r| r["container"]["id"] == id || r["ns_container"]["id"] == id)
        );
    }
}

#[test]
fn a_cri_container_is_named_by_its_pod_from_the_bundle_annotations() {
    if !docker_ready() {
        return;
    }
    let Some(sock) = containerd_socket() else {
        eprintln!("skipping: no containerd socket");
        return;
    };
    let rootfs = Rootfs::new("cri");
    let id = cri_id(0);
    let tracer = Tracer::start(&[]);
    let running = CtrContainer::run(
        sock,
        &id,
        &rootfs,
        ("web-7d9f", "shop", "app"),
        &[],
        &["/bin/sleep", "30"],
    );
    let creates = tracer.wait_for(1, |r| {
        r["event"] == "create" && r["container"]["id"] == id.as_str()
    });
    let c = &creates[0]["container"];
    assert_eq!(c["runtime"], "cri-containerd", "{c}");
    assert_eq!(c["pod"], "web-7d9f", "{c}");
    assert_eq!(c["namespace"], "shop", "{c}");
    assert_eq!(c["name"], "app", "{c}");
    drop(running);
    assert!(tracer.stop().0.success());
}
