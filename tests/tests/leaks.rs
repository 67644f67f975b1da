//! Namespace leaks with real components: a CRI-shaped pod (a "daemon"
//! makes the netns, Debian's CNI plugins wire it, containerd's container
//! joins it) and docker (a host process keeps a container's netns fd, the
//! moby#41136 shape). Whose the namespace was comes from the container
//! that joined it; the leak is told once its container is gone; the
//! kernel (nsfs handles) judges the end.

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use nstrace_tests::{containers::*, *};
use serde_json::Value;

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named netns as `ip netns add` makes it (the CRI plugin's `cni-…`),
/// its CNI network torn down and the netns removed on drop.
struct PodNetns {
    name: String,
    bridge: String,
    ipam_dir: PathBuf,
}

impl PodNetns {
    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    fn bridge_config(&self) -> String {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "nstrace-test",
            "type": "bridge",
            "bridge": self.bridge,
            "ipam": {
                "type": "host-local",
                "subnet": "10.231.7.0/24",
                "dataDir": self.ipam_dir,
            },
        })
        .to_string()
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        let _ = std::fs::remove_dir_all(&self.ipam_dir);
    }
}

fn cni_ready() -> bool {
    let ok = Path::new(CNI_PATH).join("bridge").exists()
        && Path::new(CNI_PATH).join("loopback").exists();
    if !ok {
        eprintln!(
            "skipping: no CNI plugins in {CNI_PATH}; `cargo xtask test` installs containernetworking-plugins"
        );
    }
    ok
}

/// `nstrace_namespaces_leaked{kind="net"}` now.
fn leaked_gauge(port: u16) -> f64 {
    let page = http_get(port, "/metrics").expect("nstrace serves /metrics");
    let series = "nstrace_namespaces_leaked{kind=\"net\"} ";
    page.lines()
        .find_map(|l| l.strip_prefix(series))
        .unwrap_or_else(|| panic!("no {series}in {page}"))
        .trim()
        .parse()
        .unwrap()
}

/// The net leaks the stream told and did not see end: what the gauge
/// must say (other containers' leaks included, on a busy machine).
fn leaks_standing(records: &[Value]) -> f64 {
    let mut standing = std::collections::BTreeSet::new();
    for r in records.iter().filter(|r| r["ns_type"] == "net") {
        let key = (r["ns_inode"].as_u64(), r["ns_id"].as_u64());
        match r["event"].as_str() {
            Some("leak") => {
                standing.insert(key);
            }
            Some("destroy" | "join" | "create") => {
                standing.remove(&key);
            }
            _ => {}
        }
    }
    standing.len() as f64
}

fn poll(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < end, "{what}: not within {within:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn ls(args: &[&str]) -> String {
    let out = Command::new(nstrace_bin())
        .arg("ls")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_cni_pod_netns_is_its_containers_and_told_as_a_leak_when_it_outlives_it() {
    if !docker_ready() || !cni_ready() {
        return;
    }
    let Some(sock) = containerd_socket() else {
        eprintln!("skipping: no containerd socket");
        return;
    };
    let port = free_port();
    let tracer = Tracer::start(&["--leak-after", "2s", "--metrics", &port.to_string()]);
    let me = std::process::id();
    let netns = PodNetns {
        name: format!("cni-{:08x}-nstrace-{me}", me.wrapping_mul(2654435761)),
        bridge: format!("nstbr{}", me % 100_000),
        ipam_dir: std::env::temp_dir().join(format!("nstrace-cni-ipam-{me}")),
    };
    // The runtime daemon's part: the netns, made before any container,
    // then the plugins run on it.
    run("ip", &["netns", "add", &netns.name]);
    let inode = std::fs::metadata(netns.path())
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    let netns_path = netns.path();
    // This namespace, not another that had its inode (its id, where the
    // kernel has ids).
    let id_of_ns = ns_id_of(&netns_path.to_string_lossy());
    let is = |r: &Value, event: &str, _: &str, inode: u64| {
        is(r, event, "net", inode) && (id_of_ns.is_none() || r["ns_id"].as_u64() == id_of_ns)
    };
    cni(
        "ADD",
        &netns_path,
        "lo",
        r#"{"cniVersion":"1.0.0","name":"nstrace-lo","type":"loopback"}"#,
    );
    let added = cni("ADD", &netns_path, "eth0", &netns.bridge_config());
    assert!(
        added.contains("10.231.7."),
        "the bridge plugin's result: {added}"
    );
    let create = tracer
        .wait_for(1, |r| is(r, "create", "net", inode))
        .remove(0);
    assert!(
        create["ns_container"].is_null() && create["container"].is_null(),
        "{create}"
    );

    // The pod's container joins it.
    let rootfs = Rootfs::new("cni");
    let id = cri_id(1);
    let with_ns = format!("network:{}", netns_path.display());
    let pod = CtrContainer::run(
        sock,
        &id,
        &rootfs,
        ("web-7d9f", "shop", "pause"),
        &["--with-ns", &with_ns],
        &["/bin/sleep", "60"],
    );
    let join = tracer
        .wait_for(1, |r| {
            is(r, "join", "net", inode) && r["container"]["id"] == id.as_str()
        })
        .remove(0);
    assert_eq!(join["ns_container"]["id"], id.as_str(), "{join}");
    assert_eq!(join["ns_container"]["pod"], "web-7d9f", "{join}");

    // The container goes; the netns stays mounted: pinned, whose it was
    // named, then told as a leak once 2 s have passed.
    pod.remove();
    let mount = format!("mount {}", netns_path.display());
    let named = |r: &Value| {
        r["ns_container"]["id"] == id.as_str()
            && r["pinned_by"]
                .as_array()
                .is_some_and(|p| p.iter().any(|h| h == mount.as_str()))
    };
    let pinned = tracer
        .wait_for(1, |r| is(r, "pinned", "net", inode) && named(r))
        .remove(0);
    let leak = tracer
        .wait_for_within(Duration::from_secs(15), 1, |r| {
            is(r, "leak", "net", inode) && named(r)
        })
        .remove(0);
    assert_eq!(leak["ns_container"]["pod"], "web-7d9f", "{leak}");
    assert_eq!(leak["ns_container"]["namespace"], "shop", "{leak}");
    let age = leak["age_ns"].as_u64().expect("an age");
    assert!(age >= 2_000_000_000, "{leak}");
    assert!(
        leak["time"].as_str() > pinned["time"].as_str(),
        "{pinned}\n{leak}"
    );
    // The kernel's answer: it is alive (held by the mount).
    if let Some(judge) = KernelJudge::new() {
        assert_eq!(judge.alive_record(&leak), Some(true), "{leak}");
    }

    // ls, reading what the trace told: marked, with whose it was.
    let v: Value = serde_json::from_str(&ls(&["--leaks", "--json"])).unwrap();
    let row = v["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["type"] == "net" && n["ns"] == inode)
        .unwrap_or_else(|| panic!("net {inode} not in ls --leaks: {v}"))
        .clone();
    assert_eq!(row["leak"]["ns_container"]["id"], id.as_str(), "{row}");
    assert!(
        row["held_by"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h == mount.as_str()),
        "{row}"
    );
    assert!(
        v["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| !n["leak"].is_null()),
        "--leaks lists only leaks: {v}"
    );
    let table = ls(&[]);
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("{inode} ")))
        .unwrap_or_else(|| panic!("net {inode} not in ls: {table}"));
    assert!(
        line.contains("LEAK? pod shop/web-7d9f (container pause)"),
        "{line}"
    );
    poll("the leaked gauge", Duration::from_secs(3), || {
        leaked_gauge(port) == leaks_standing(&tracer.records()) && leaked_gauge(port) >= 1.0
    });

    // The mount removed, the netns ends (the kernel says so) and the gauge
    // drops.
    cni("DEL", &netns_path, "eth0", &netns.bridge_config());
    drop(netns);
    let destroy = tracer
        .wait_for(1, |r| {
            is(r, "destroy", "net", inode) && r["ns_container"]["id"] == id.as_str()
        })
        .remove(0);
    if let Some(judge) = KernelJudge::new() {
        assert_eq!(judge.alive_record(&destroy), Some(false), "{destroy}");
    }
    poll(
        "the leaked gauge after the end",
        Duration::from_secs(3),
        || leaked_gauge(port) == leaks_standing(&tracer.records()),
    );
    assert!(
        ls(&["--leaks"])
            .lines()
            .all(|l| !l.starts_with(&format!("{inode} ")))
    );
    let leaks = tracer
        .records()
        .into_iter()
        .filter(|r| is(r, "leak", "net", inode) && named(r))
        .count();
    assert_eq!(leaks, 1, "one leak record");
    drop(rootfs);
    assert!(tracer.stop().0.success());
}

/// Holds `/proc/PID/ns/net` open, as a leaked docker-proxy fd does; prints
/// `PID FD`.
const FD_HOLDER: &str = r#"
import os, sys, time
fd = os.open(f"/proc/{sys.argv[1]}/ns/net", os.O_RDONLY)
print(os.getpid(), fd, flush=True)
time.sleep(60)
"#;

#[test]
fn a_docker_containers_netns_kept_by_a_host_fd_is_told_as_its_leak() {
    if !docker_ready() {
        return;
    }
    // A container the trace sees start, and one running before it: the
    // second's namespaces are its through their members at start.
    docker_leak(false);
    docker_leak(true);
}

fn docker_leak(running_before: bool) {
    let leak_after = ["--leak-after", "1s"];
    let early = (!running_before).then(|| Tracer::start(&leak_after));
    let id = docker(&["run", "-d", "--network", "none", IMAGE, "sleep", "60"]);
    let running = Running(id.clone());
    let tracer = early.unwrap_or_else(|| Tracer::start(&leak_after));
    let pid: u32 = docker(&["inspect", "-f", "{{.State.Pid}}", &id])
        .parse()
        .unwrap();
    let inode = ns_inode(pid, "net");
    note_ns(&format!("/proc/{pid}/ns/net"), inode);
    let mut holder = Group::spawn(&["python3", "-c", FD_HOLDER, &pid.to_string()]);
    let said = holder.read_line();
    let (hpid, fd) = said.split_once(' ').unwrap();
    let by = format!("fd {fd} of python3 (pid {hpid})");

    drop(running);
    let held = |r: &Value| {
        r["ns_container"]["id"] == id.as_str()
            && r["pinned_by"]
                .as_array()
                .is_some_and(|p| p.iter().any(|h| h == by.as_str()))
    };
    let leak = tracer
        .wait_for_within(Duration::from_secs(20), 1, |r| {
            is(r, "leak", "net", inode) && held(r)
        })
        .remove(0);
    assert!(
        leak["age_ns"].as_u64().is_some_and(|a| a >= 1_000_000_000),
        "{leak}"
    );
    assert!(
        leak["ns_container"]["name"]
            .as_str()
            .is_some_and(|n| !n.is_empty()),
        "{leak}"
    );

    drop(holder);
    let destroy = tracer
        .wait_for(1, |r| {
            is(r, "destroy", "net", inode) && r["ns_container"]["id"] == id.as_str()
        })
        .remove(0);
    if let Some(judge) = KernelJudge::new() {
        assert_eq!(judge.alive_record(&destroy), Some(false), "{destroy}");
    }
    assert!(tracer.stop().0.success());
}
