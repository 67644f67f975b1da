//! Real container runtimes for the tests: the dockerd `cargo xtask test`
//! starts (with its test image), the containerd it runs, `ctr` containers
//! on a static-busybox rootfs (no image, no registry), and Debian's CNI
//! plugins.

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use crate::privileged;

pub const IMAGE: &str = "nstrace-test:busybox";

/// `docker ARGS`, which must succeed; its stdout, trimmed.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker client");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Root and a daemon with the test image; otherwise says why and skips.
pub fn docker_ready() -> bool {
    if !privileged() {
        return false;
    }
    let ok = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "skipping: no Docker daemon with {IMAGE}; `cargo xtask test` starts one and builds the image"
        );
    }
    ok
}

/// Removes the docker container on every path.
pub struct Running(pub String);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

/// containerd's socket: a system containerd's, else the one dockerd runs.
pub fn containerd_socket() -> Option<&'static str> {
    [
        "/run/containerd/containerd.sock",
        "/var/run/docker/containerd/containerd.sock",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
}

/// A rootfs of static busybox with `sleep` and `sh`, removed on drop.
pub struct Rootfs(pub PathBuf);

impl Rootfs {
    pub fn new(name: &str) -> Rootfs {
        let root =
            std::env::temp_dir().join(format!("nstrace-{name}-rootfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for applet in ["sleep", "sh"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        Rootfs(root)
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CRI-shaped container id (64 hex digits) unique to this test process.
pub fn cri_id(salt: u8) -> String {
    format!(
        "{:016x}",
        0x6e73_7472_6163_6500u64 | u64::from(std::process::id()) << 8 | u64::from(salt)
    )
    .repeat(4)
}

/// A `ctr` container in containerd's `k8s.io` namespace; killed and
/// removed, with the cgroups it was given, on drop (or [`CtrContainer::remove`]).
pub struct CtrContainer {
    pub sock: &'static str,
    pub id: String,
    pub cgroup: String,
}

impl CtrContainer {
    /// `ctr run -d` of `argv` on `rootfs` with `extra` flags, as pod `pod`
    /// of Kubernetes namespace `ns` (the annotations containerd's CRI
    /// plugin writes).
    pub fn run(
        sock: &'static str,
        id: &str,
        rootfs: &Rootfs,
        (pod, ns, name): (&str, &str, &str),
        extra: &[&str],
        argv: &[&str],
    ) -> CtrContainer {
        let cgroup = format!("/kubepods/besteffort/podnstrace{}/{id}", std::process::id());
        let c = CtrContainer {
            sock,
            id: id.to_string(),
            cgroup: cgroup.clone(),
        };
        let out = Command::new("ctr")
            .args(["-a", sock, "-n", "k8s.io", "run", "-d", "--rootfs"])
            .args(["--cgroup", &cgroup])
            .args(["--annotation", "io.kubernetes.cri.container-type=container"])
            .arg("--annotation")
            .arg(format!("io.kubernetes.cri.container-name={name}"))
            .arg("--annotation")
            .arg(format!("io.kubernetes.cri.sandbox-name={pod}"))
            .arg("--annotation")
            .arg(format!("io.kubernetes.cri.sandbox-namespace={ns}"))
            .args(extra)
            .arg(&rootfs.0)
            .arg(id)
            .args(argv)
            .output()
            .expect("ctr");
        assert!(
            out.status.success(),
            "ctr run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }

    /// Kills the task, removes it and the container: the container is gone.
    pub fn remove(&self) {
        let ctr = |args: &[&str]| {
            let _ = Command::new("ctr")
                .args(["-a", self.sock, "-n", "k8s.io"])
                .args(args)
                .output();
        };
        ctr(&["task", "kill", "-s", "KILL", &self.id]);
        thread::sleep(Duration::from_millis(300));
        ctr(&["task", "rm", "-f", &self.id]);
        ctr(&["container", "rm", &self.id]);
        // Innermost first: the pod's, then its parents (kept if others use them).
        let mut dir = PathBuf::from(format!("/sys/fs/cgroup{}", self.cgroup));
        while dir != Path::new("/sys/fs/cgroup") {
            let _ = std::fs::remove_dir(&dir);
            dir.pop();
        }
    }
}

impl Drop for CtrContainer {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Where Debian's `containernetworking-plugins` puts the CNI plugins.
pub const CNI_PATH: &str = "/usr/lib/cni";

/// Runs CNI plugin `config["type"]` with `command` (ADD, DEL) for
/// `netns`, as a container runtime does; its stdout (the result).
pub fn cni(command: &str, netns: &Path, ifname: &str, config: &str) -> String {
    use std::io::Write as _;
    let plugin = serde_json::from_str::<serde_json::Value>(config).expect("a CNI config")["type"]
        .as_str()
        .expect("a plugin type")
        .to_string();
    let mut child = Command::new(Path::new(CNI_PATH).join(&plugin))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "nstrace-test")
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", CNI_PATH)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("CNI plugin {plugin}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "CNI {command} {plugin}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
