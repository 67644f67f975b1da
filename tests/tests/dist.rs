//! What users install, from `cargo xtask dist`: the static binary, the .deb
//! (man page, completions) and the container image, each used for real.

use std::{path::Path, process::Command};

use nstrace_tests::*;
use serde_json::Value;

fn run(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// No program interpreter: the kernel runs it without ld.so or a libc.
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
    (0..u16_at(56)).any(|i| {
        let o = phoff + i * u16_at(54);
        u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) == 3
    })
}

/// A host process in a new network namespace, and that namespace's inode.
fn host_netns() -> (Group, u64) {
    let g = Group::spawn(&["unshare", "-n", "sleep", "30"]);
    let inode = wait_ns_changed(g.pid(), "net");
    (g, inode)
}

/// The create of that namespace: by kind, inode and the process that made
/// it (a busy machine reuses inodes across kinds within moments).
fn is_create(r: &Value, kind: &str, inode: u64, pid: u32) -> bool {
    r["event"] == "create" && r["ns_type"] == kind && r["ns_inode"] == inode && r["pid"] == pid
}

#[test]
fn the_static_binary_needs_no_libc_and_traces_on_the_host() {
    let Some(dist) = dist_dir() else { return };
    let bin = dist.join("nstrace");
    assert!(
        !has_interpreter(&std::fs::read(&bin).unwrap()),
        "{} asks for a dynamic loader",
        bin.display()
    );
    assert!(run(Command::new(&bin).arg("--version")).starts_with("nstrace "));
    if !privileged() {
        return;
    }
    let host = Tracer::start(&[]);
    let tracer = Tracer::start_program_also(&host, &[bin.to_str().unwrap()], &[]);
    let (g, inode) = host_netns();
    for t in [&host, &tracer] {
        t.wait_for(1, |r| is_create(r, "net", inode, g.pid()));
    }
    drop(g);
    let (status, stderr) = tracer.stop();
    assert!(status.success(), "{stderr}");
}

#[test]
fn the_deb_installs_with_dpkg_and_man_and_completion_work() {
    let Some(dist) = dist_dir() else { return };
    if !privileged() {
        return;
    }
    let deb = std::fs::read_dir(&dist)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb in target/dist");
    // A root of its own (with its own dpkg database): the machine's packages
    // stay as they were.
    let root = tempdir("deb-root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-not-root", "-i"])
        .arg(&deb));
    let listed = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["-L", "nstrace"]));
    for f in [
        "/usr/bin/nstrace",
        "/usr/share/man/man1/nstrace.1.gz",
        "/usr/share/bash-completion/completions/nstrace",
    ] {
        assert!(
            listed.lines().any(|l| l == f),
            "{f} not installed: {listed}"
        );
    }
    let installed = root.join("usr/bin/nstrace");
    assert!(run(Command::new(&installed).arg("--version")).starts_with("nstrace "));

    // man renders the page (formatted, not the roff source).
    let man = run(Command::new("man")
        .arg("-l")
        .arg(root.join("usr/share/man/man1/nstrace.1.gz"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100"));
    assert!(
        man.contains("NAME") && man.contains("--probe-mode"),
        "{man}"
    );
    assert!(!man.contains(".TH"), "{man}");

    // bash completes the kinds after --type, as a user's Tab would.
    let script = root.join("usr/share/bash-completion/completions/nstrace");
    let words = run(Command::new("bash").arg("-c").arg(format!(
        "source '{}'; COMP_LINE='nstrace --type '; COMP_POINT=${{#COMP_LINE}}; \
         COMP_WORDS=(nstrace --type ''); COMP_CWORD=2; \
         $(complete -p nstrace | sed -e 's/.*-F \\([^ ]*\\) .*/\\1/') nstrace '' --type; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display()
    )));
    let offered: Vec<&str> = words.lines().collect();
    for kind in ["mnt", "net", "pid", "user"] {
        assert!(offered.contains(&kind), "--type offers {offered:?}");
    }
    let _ = std::fs::remove_dir_all(&root);
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("nstrace-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const IMAGE: &str = "nstrace-test:busybox";

fn docker_ready() -> bool {
    privileged()
        && Command::new("docker")
            .args(["image", "inspect", IMAGE])
            .output()
            .is_ok_and(|o| o.status.success())
}

/// Removes the container on every path.
struct Removed(String);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

/// Deletes the netns on every path.
struct NetnsDeleted(String);

impl Drop for NetnsDeleted {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .output();
    }
}

/// The docker command that runs the image as deploy/kubernetes/daemonset.yaml
/// does: read from the manifest (hostPID, its capabilities and unconfined
/// profiles, its host paths mounted where it mounts them, its args), so the
/// manifest is what is tested.
fn docker_run_image(name: &str) -> Vec<String> {
    let yaml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/daemonset.yaml"),
    )
    .unwrap();
    let mut argv: Vec<String> = [
        "docker",
        "run",
        "--rm",
        "-i",
        "--network=none",
        "--name",
        name,
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let value = |l: &str| l.split_once(':').map(|(_, v)| v.trim().to_string());
    assert!(yaml.contains("hostPID: true"));
    argv.push("--pid=host".into());
    let caps = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("add: "))
        .expect("capabilities in the manifest");
    // Least privilege, as the manifest asks: nothing but what it adds.
    assert!(
        yaml.lines().any(|l| l.trim() == "drop: [ALL]"),
        "the manifest drops every default capability"
    );
    argv.extend(["--cap-drop".into(), "ALL".into()]);
    for cap in caps.trim_matches(['[', ']']).split(',') {
        argv.extend(["--cap-add".into(), cap.trim().to_string()]);
    }
    assert!(yaml.contains("allowPrivilegeEscalation: false"));
    argv.extend(["--security-opt".into(), "no-new-privileges".into()]);
    assert!(yaml.contains("readOnlyRootFilesystem: true"));
    argv.push("--read-only".into());
    for (profile, opt) in [
        ("seccompProfile:", "seccomp=unconfined"),
        ("appArmorProfile:", "apparmor=unconfined"),
    ] {
        let at = yaml.find(profile).expect("profile in the manifest");
        assert!(
            yaml[at..]
                .trim_start_matches(profile)
                .trim_start()
                .starts_with("type: Unconfined")
        );
        argv.extend(["--security-opt".into(), opt.into()]);
    }
    // name -> mountPath (volumeMounts), name -> host path (volumes).
    let (mut mounts, mut hosts) = (Vec::new(), std::collections::HashMap::new());
    let lines: Vec<&str> = yaml.lines().map(str::trim).collect();
    for (i, l) in lines.iter().enumerate() {
        if let Some(n) = l.strip_prefix("- name: ") {
            match (lines.get(i + 1), lines.get(i + 2)) {
                (Some(m), _) if m.starts_with("mountPath:") => {
                    mounts.push((n.to_string(), value(m).unwrap()))
                }
                (Some(h), Some(p)) if *h == "hostPath:" && p.starts_with("path:") => {
                    hosts.insert(n.to_string(), value(p).unwrap());
                }
                _ => {}
            }
        }
    }
    assert!(!mounts.is_empty(), "no volumeMounts read from the manifest");
    for (n, at) in mounts {
        let host = &hosts[&n];
        if Path::new(host).exists() {
            argv.extend(["-v".into(), format!("{host}:{at}:ro")]);
        }
    }
    argv.push("nstrace:latest".into());
    let args = lines
        .iter()
        .find_map(|l| l.strip_prefix("args: "))
        .expect("args in the manifest");
    let args: Vec<String> = serde_json::from_str(args).expect("args as a flow list");
    // Tracer adds --json itself.
    argv.extend(args.into_iter().filter(|a| a != "--json"));
    argv
}

#[test]
fn the_image_in_docker_sees_what_the_host_binary_sees() {
    let Some(dist) = dist_dir() else { return };
    if !docker_ready() {
        eprintln!("skipping: no Docker daemon with {IMAGE}");
        return;
    }
    run(Command::new("docker")
        .arg("load")
        .arg("-i")
        .arg(Path::new(&dist).join("nstrace-image.tar")));
    let host = Tracer::start(&[]);
    let name = format!("nstrace-image-test-{}", std::process::id());
    let _removed = Removed(name.clone());
    let argv = docker_run_image(&name);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let inside = Tracer::start_program_also(&host, &argv, &[]);

    // Something the host does, and a container started meanwhile.
    let (g, inode) = host_netns();
    let id =
        run(Command::new("docker").args(["run", "-d", "--network", "none", IMAGE, "sleep", "30"]))
            .trim()
            .to_string();
    let _other = Removed(id.clone());
    let pid: u32 = run(Command::new("docker").args(["inspect", "-f", "{{.State.Pid}}", &id]))
        .trim()
        .parse()
        .unwrap();
    let uts = ns_inode(pid, "uts");
    let from = |t: &Tracer| -> (Value, Value) {
        let netns = t.wait_for(1, |r| is_create(r, "net", inode, g.pid()))[0].clone();
        let c = t.wait_for(1, |r| {
            r["event"] == "create"
                && r["ns_type"] == "uts"
                && r["ns_inode"] == uts
                && r["container"]["id"] == id.as_str()
        })[0]
            .clone();
        (netns, c)
    };
    let (h_net, h_uts) = from(&host);
    let (i_net, i_uts) = from(&inside);
    for field in ["ns_type", "ns_inode", "ns_id", "pid", "comm", "syscall"] {
        assert_eq!(h_net[field], i_net[field], "{field}: {h_net} / {i_net}");
        assert_eq!(h_uts[field], i_uts[field], "{field}: {h_uts} / {i_uts}");
    }
    assert_eq!(h_uts["container"]["id"], id.as_str(), "{h_uts}");
    assert_eq!(i_uts["container"], h_uts["container"], "{i_uts}");

    // A pin in the host's mount table, found from inside and named alike.
    let netns = format!("nstrace-image-{}", std::process::id());
    run(Command::new("ip").args(["netns", "add", &netns]));
    let _deleted = NetnsDeleted(netns.clone());
    let pinned = std::os::unix::fs::MetadataExt::ino(
        &std::fs::metadata(format!("/run/netns/{netns}")).unwrap(),
    );
    let pin = |t: &Tracer| -> Value {
        t.wait_for(1, |r| {
            r["event"] == "pinned"
                && r["ns_inode"] == pinned
                && r["pinned_by"].to_string().contains(&netns)
        })[0]
            .clone()
    };
    let (h_pin, i_pin) = (pin(&host), pin(&inside));
    assert_eq!(h_pin["pinned_by"], i_pin["pinned_by"], "{h_pin} / {i_pin}");
    assert_eq!(h_pin["ns_id"], i_pin["ns_id"], "{h_pin} / {i_pin}");
    drop(g);
    let (status, stderr) = inside.stop();
    assert!(status.success(), "{stderr}");
}
