//! Which container a process belongs to: from its cgroup path (docker,
//! containerd/CRI, CRI-O, podman; cgroup v1 and v2; cgroupfs and systemd
//! drivers), else from its ancestry (a runtime's process that is not yet in
//! the container's cgroup descends from the container's shim or conmon).

use std::{
    collections::HashMap,
    fs,
    io::Read as _,
    os::unix::fs::{MetadataExt, OpenOptionsExt as _},
    path::Path,
    time::{Duration, Instant},
};

use crate::model::{Actor, Container};

/// Every runtime name nstrace gives (`Container::runtime`).
pub const RUNTIMES: [&str; 5] = ["docker", "podman", "cri-o", "cri-containerd", "containerd"];

/// A runtime name read back from a saved trace, as one of [`RUNTIMES`]
/// (`containerd` for one this version does not know).
pub fn runtime_name(name: &str) -> &'static str {
    RUNTIMES
        .into_iter()
        .find(|r| *r == name)
        .unwrap_or("containerd")
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A cgroup path inside a user's delegated subtree (systemd gives each
/// user `user.slice/user-UID.slice/user@UID.service` to shape as they
/// like): whatever it is named there, the user named it, so it names no
/// container (rootless runtimes put theirs there, and are not attributed).
fn delegated(path: &str) -> bool {
    path.split('/')
        .any(|seg| seg == "user.slice" || seg.starts_with("user@"))
}

/// `(id, runtime)` from the contents of /proc/PID/cgroup.
pub fn from_cgroup(text: &str) -> Option<(String, &'static str)> {
    for line in text.lines() {
        let path = line.splitn(3, ':').nth(2)?;
        if delegated(path) {
            continue;
        }
        let segments: Vec<&str> = path.split('/').collect();
        for (i, seg) in segments.iter().enumerate() {
            let trimmed = seg.strip_suffix(".scope").unwrap_or(seg);
            let (prefix, id) = match trimmed.rsplit_once('-') {
                Some((p, id)) if is_hex_id(id) => (p, id),
                _ if is_hex_id(trimmed) => ("", trimmed),
                _ => continue,
            };
            let parent = if i > 0 { segments[i - 1] } else { "" };
            let runtime = match prefix {
                "docker" => "docker",
                "libpod" => "podman",
                "crio" => "cri-o",
                "cri-containerd" => "cri-containerd",
                _ if parent == "docker" => "docker",
                _ if path.contains("kubepods") => "cri-containerd",
                _ if parent.starts_with("libpod") => "podman",
                _ => continue,
            };
            return Some((id.to_string(), runtime));
        }
    }
    None
}

/// A container id as containerd accepts one (its `identifiers.Validate`:
/// alphanumeric runs joined by single `.`, `_` or `-`, at most 76
/// characters): never a path separator, never `..`.
fn is_containerd_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 76
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !b
            .windows(2)
            .any(|w| !w[0].is_ascii_alphanumeric() && !w[1].is_ascii_alphanumeric())
}

/// `(id, runtime)` from a runtime process's argv: containerd's shim (`-id`,
/// `-namespace moby|k8s.io|...`) or podman's conmon (`-c`). Ids are
/// checked against the runtime's own rules (docker, CRI and podman: 64 hex
/// digits) before anything uses them: they are joined into paths root opens.
/// The argv alone proves nothing (any process can write it): callers first
/// ask [`is_trusted_runtime`].
pub fn from_runtime_cmdline(argv: &[String]) -> Option<(String, &'static str)> {
    let prog = argv.first()?.rsplit('/').next()?;
    let arg = |flag: &str| {
        argv.iter()
            .position(|a| a == flag)
            .and_then(|i| argv.get(i + 1))
            .cloned()
    };
    if prog.starts_with("containerd-shim") {
        let id = arg("-id")?;
        let runtime = match arg("-namespace").as_deref() {
            Some("moby") => "docker",
            Some("k8s.io") => "cri-containerd",
            _ => "containerd",
        };
        let valid = match runtime {
            "containerd" => is_containerd_id(&id),
            _ => is_hex_id(&id),
        };
        return valid.then_some((id, runtime));
    }
    if prog == "conmon" {
        let id = arg("-c").or_else(|| arg("--cid"))?;
        return is_hex_id(&id).then_some((id, "podman"));
    }
    None
}

/// What is read of one process's argv: a shim's or conmon's fits many
/// times over; a hostile process's megabytes of arguments are not read.
const CMDLINE_CAP: u64 = 16 * 1024;

fn cmdline(pid: u32) -> Vec<String> {
    let mut b = Vec::new();
    let Ok(f) = fs::File::open(format!("/proc/{pid}/cmdline")) else {
        return Vec::new();
    };
    if f.take(CMDLINE_CAP).read_to_end(&mut b).is_err() {
        return Vec::new();
    }
    b.split(|&c| c == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Whether the kernel says `pid` is a container runtime's own process
/// (containerd's shim, podman's conmon), not one that only names itself
/// so: it runs as root (real and effective uid 0) in the host's user
/// namespace, from a root-owned executable that only root can write,
/// named like the runtime, and not in a user's delegated cgroup.
pub fn is_trusted_runtime(pid: u32, host_user_ns: Option<u32>) -> bool {
    // Cheapest refusals first: most ancestors are no runtime at all.
    let Ok(exe) = fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let name = name.strip_suffix(" (deleted)").unwrap_or(name);
    if !(name.starts_with("containerd-shim") || name == "conmon") {
        return false;
    }
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .is_some_and(|v| v.split_whitespace().take(2).all(|u| u == "0"));
    if !root {
        return false;
    }
    let user_ns = crate::sys::procfs::ns_link_of(pid, "user");
    if user_ns.is_none() || (host_user_ns.is_some() && user_ns != host_user_ns) {
        return false;
    }
    // The file the kernel runs (through the magic link, whatever its path).
    let owned_by_root = fs::metadata(format!("/proc/{pid}/exe"))
        .is_ok_and(|m| m.is_file() && m.uid() == 0 && m.mode() & 0o022 == 0);
    owned_by_root && !cgroup_of(pid).is_some_and(|t| t.lines().any(delegated_line))
}

fn delegated_line(line: &str) -> bool {
    line.splitn(3, ':').nth(2).is_some_and(delegated)
}

/// The largest runtime metadata file read (docker's config.v2.json and an
/// OCI bundle's config.json are kilobytes).
const METADATA_CAP: u64 = 4 << 20;

/// Reads a runtime's metadata file, if it is a regular file: never through
/// a symlink at its last component, never blocking on a FIFO or device
/// (O_NONBLOCK, then fstat), never more than [`METADATA_CAP`] bytes.
pub fn read_metadata(path: &Path) -> Option<String> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let meta = f.metadata().ok()?;
    if !meta.is_file() || meta.len() > METADATA_CAP {
        return None;
    }
    let mut text = String::new();
    f.take(METADATA_CAP).read_to_string(&mut text).ok()?;
    Some(text)
}

/// The name docker keeps for a container id, if any.
fn docker_name(id: &str) -> Option<String> {
    if !is_hex_id(id) {
        return None;
    }
    let text = read_metadata(Path::new(&format!(
        "/var/lib/docker/containers/{id}/config.v2.json"
    )))?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(v["Name"].as_str()?.trim_start_matches('/').to_string())
}

/// What a runtime keeps about a container: its name and, for CRI
/// containers, its pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    pub name: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
}

/// Where containerd keeps bundles (`<root>/<namespace>/<id>/config.json`):
/// a system containerd, and the one dockerd runs itself.
const CONTAINERD_TASK_ROOTS: &[&str] = &[
    "/run/containerd/io.containerd.runtime.v2.task",
    "/var/run/docker/containerd/daemon/io.containerd.runtime.v2.task",
];
/// CRI-O's per-container state (`<root>/<id>/userdata/config.json`).
const CRIO_ROOT: &str = "/run/containers/storage/overlay-containers";

/// Names of a CRI container from the annotations in its OCI bundle, which
/// the kubelet's runtime writes on the node: no API server needed.
fn cri_names(id: &str, runtime: &str) -> Names {
    if !(is_hex_id(id) || runtime == "containerd" && is_containerd_id(id)) {
        return Names::default();
    }
    let config = if runtime == "cri-o" {
        read_metadata(Path::new(&format!("{CRIO_ROOT}/{id}/userdata/config.json")))
    } else {
        CONTAINERD_TASK_ROOTS.iter().find_map(|root| {
            fs::read_dir(root).ok()?.find_map(|ns| {
                let dir = ns.ok()?.path();
                // A bundle below a symlinked namespace entry is not the runtime's.
                if fs::symlink_metadata(&dir).ok()?.file_type().is_symlink() {
                    return None;
                }
                read_metadata(&dir.join(id).join("config.json"))
            })
        })
    };
    config
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .map(|v| names_from_annotations(&v["annotations"]))
        .unwrap_or_default()
}

/// containerd's CRI plugin and CRI-O name the same things differently.
pub fn names_from_annotations(a: &serde_json::Value) -> Names {
    let first = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| a[*k].as_str().filter(|v| !v.is_empty()))
            .map(String::from)
    };
    let pod = first(&["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"]);
    let sandbox = a["io.kubernetes.cri.container-type"] == "sandbox"
        || a["io.kubernetes.cri-o.ContainerType"] == "sandbox";
    Names {
        // A pod's sandbox (pause) container is named after the pod.
        name: first(&[
            "io.kubernetes.cri.container-name",
            "io.kubernetes.container.name",
        ])
        .or_else(|| sandbox.then(|| pod.clone()).flatten()),
        namespace: first(&[
            "io.kubernetes.cri.sandbox-namespace",
            "io.kubernetes.pod.namespace",
        ]),
        pod,
    }
}

/// A container's `(id, runtime)`.
type Hit = (String, &'static str);

/// How long the answer of an ancestor's walk is trusted: its pid cannot be
/// reused that soon (the pid space would have to wrap), and busy parents
/// (a shell looping over `unshare`) are walked once, not once per child.
const ANCESTRY_TTL: Duration = Duration::from_secs(1);

/// Resolves and caches containers of processes.
#[derive(Default)]
pub struct Resolver {
    by_pid: HashMap<u32, Option<Container>>,
    /// cgroup v2 id -> what its path says; empty unless the host is
    /// cgroup v2 only (a v1 path is not named by that id).
    by_cgroup: HashMap<u64, Option<Hit>>,
    unified: bool,
    /// The host's mount namespace, 0 if unknown.
    host_mnt: u32,
    /// The host's user namespace, where a runtime's processes run.
    host_user: Option<u32>,
    names: HashMap<String, Names>,
    /// pid -> when walked, and the runtime found from it upwards.
    walked: HashMap<u32, (Instant, Option<Hit>)>,
}

fn cgroup_of(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()
}

/// Whether /sys/fs/cgroup is the cgroup v2 hierarchy alone.
fn cgroup_unified() -> bool {
    nix::sys::statfs::statfs("/sys/fs/cgroup")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// The path in the v2 line of a /proc/PID/cgroup text.
fn unified_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

impl Resolver {
    pub fn new() -> Self {
        // Where the host's is not to be seen, nstrace's own.
        let host_mnt = crate::sys::procfs::host_ns_link("mnt")
            .or_else(|| crate::sys::procfs::own_ns_link("mnt"))
            .unwrap_or(0);
        Self {
            unified: cgroup_unified(),
            host_mnt,
            host_user: crate::sys::procfs::host_ns_link("user"),
            ..Self::default()
        }
    }

    /// The container of the actor of a record, without reading its cgroup
    /// for every process (that read was half of nstrace's CPU under
    /// namespace churn): on cgroup v2 the path is read once per cgroup (the
    /// kernel gives its id); on v1 an actor in the host's mount namespace
    /// is not looked up by cgroup (every container runtime gives a container
    /// its own), only by ancestry, which still finds the runtime's
    /// processes that have not entered the container's namespaces yet.
    /// Ancestry walks are cached per ancestor. Else [`Self::for_pid`].
    pub fn for_actor(&mut self, a: &Actor) -> Option<Container> {
        let (pid, comm, cgroup) = (a.pid, a.comm.as_str(), a.cgroup);
        let up = [a.ppid, a.elders[0], a.elders[1]];
        if !self.unified || cgroup == 0 {
            if a.mnt_ns != 0 && a.mnt_ns == self.host_mnt {
                let found = self.ancestry(pid, Some(comm), &up);
                return found.map(|(id, runtime)| self.container(id, runtime));
            }
            return self.for_pid(pid, &up, comm);
        }
        let verdict = match self.by_cgroup.get(&cgroup) {
            Some(v) => v.clone(),
            None => match self.learn_cgroup(pid, cgroup) {
                Some(v) => v,
                None => return self.for_pid(pid, &up, comm),
            },
        };
        let found = verdict.or_else(|| self.ancestry(pid, Some(comm), &up));
        found.map(|(id, runtime)| self.container(id, runtime))
    }

    /// Reads `pid`'s cgroup path and keeps its verdict under `cgroup`, but
    /// only when that path still is the cgroup with this id: a process can
    /// be moved (runc moves the container's init) between the event and
    /// the read.
    fn learn_cgroup(&mut self, pid: u32, cgroup: u64) -> Option<Option<Hit>> {
        let text = cgroup_of(pid)?;
        let path = unified_path(&text)?;
        let meta = fs::metadata(format!("/sys/fs/cgroup{path}")).ok()?;
        if meta.ino() != cgroup {
            return None;
        }
        // A cgroup directory someone other than root owns was delegated to
        // them (the kernel's word, whatever the path says): its name is theirs.
        let verdict = from_cgroup(&text).filter(|_| meta.uid() == 0);
        if self.by_cgroup.len() > 8192 {
            self.by_cgroup.clear();
        }
        self.by_cgroup.insert(cgroup, verdict.clone());
        Some(verdict)
    }

    fn container(&mut self, id: String, runtime: &'static str) -> Container {
        if self.names.len() > 8192 {
            // Containers come and go all day on a node: a cache, not a history.
            self.names.clear();
        }
        let names = self
            .names
            .entry(id.clone())
            .or_insert_with(|| match runtime {
                "docker" => Names {
                    name: docker_name(&id),
                    ..Names::default()
                },
                "cri-containerd" | "containerd" | "cri-o" => cri_names(&id, runtime),
                _ => Names::default(),
            })
            .clone();
        Container {
            id,
            runtime,
            name: names.name,
            pod: names.pod,
            namespace: names.namespace,
        }
    }

    /// The container `pid` is part of, or None for a host process; `up`:
    /// its parent and elders as the kernel saw them (0: unknown). A process
    /// already gone (runc's short-lived children) is looked up through them.
    pub fn for_pid(&mut self, pid: u32, up: &[u32], comm: &str) -> Option<Container> {
        if let Some(c) = self.by_pid.get(&pid) {
            return c.clone();
        }
        if self.by_pid.len() > 8192 {
            self.by_pid.clear();
        }
        let ppid = up.first().copied().unwrap_or(0);
        let (found, gone) = match cgroup_of(pid) {
            Some(text) => (
                from_cgroup(&text).or_else(|| self.ancestry(pid, Some(comm), up)),
                false,
            ),
            None if ppid > 1 => (
                cgroup_of(ppid)
                    .and_then(|t| from_cgroup(&t))
                    .or_else(|| self.ancestry(ppid, None, &up[1..])),
                true,
            ),
            None => (None, true),
        };
        if found.is_none() && gone {
            // Nothing learned; do not cache a miss for a pid that may be reused.
            return None;
        }
        let c = found.map(|(id, runtime)| self.container(id, runtime));
        self.by_pid.insert(pid, c.clone());
        c
    }

    /// Forget a pid (it exited; the number may be reused).
    pub fn forget(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }

    /// The runtime process among `pid` and its ancestors, by their command
    /// lines; `comm`: pid's command name, and `up`: its first ancestors
    /// (0: unknown), when the event told. Past those, /proc.
    fn ancestry(&mut self, pid: u32, comm: Option<&str>, up: &[u32]) -> Option<Hit> {
        let now = Instant::now();
        let mut chain = Vec::new();
        let mut p = pid;
        let mut up = up.iter().copied();
        // Only a shim or conmon can match: skip reading other actors' argv.
        let mut maybe_runtime =
            comm.is_none_or(|c| c.starts_with("containerd-shim") || c == "conmon");
        let found = loop {
            if let Some((at, hit)) = self.walked.get(&p) {
                if now.duration_since(*at) < ANCESTRY_TTL {
                    break hit.clone();
                }
            }
            chain.push(p);
            // Trust first: a hostile process's argv is never read (reading it
            // takes that process's memory lock, which it may hold).
            if maybe_runtime && is_trusted_runtime(p, self.host_user) {
                if let Some(hit) = from_runtime_cmdline(&cmdline(p)) {
                    break Some(hit);
                }
            }
            maybe_runtime = true;
            if chain.len() >= 12 {
                break None;
            }
            // The actor's parent is the one the kernel recorded at the event
            // (no /proc read per new process: a churn's every child is one).
            // Above it, a live process's parent now (a subreaper such as the
            // shim adopts what runc leaves behind); for one that exited, the
            // parent the kernel recorded.
            let recorded = up.next().filter(|&pp| pp != 0);
            let parent = if p == pid {
                recorded.or_else(|| crate::sys::procfs::ppid(p))
            } else {
                crate::sys::procfs::ppid(p).or(recorded)
            };
            match parent {
                Some(pp) if pp > 1 => p = pp,
                _ => break None,
            }
        };
        if self.walked.len() > 8192 {
            self.walked
                .retain(|_, (at, _)| now.duration_since(*at) < ANCESTRY_TTL);
        }
        for p in chain {
            self.walked.insert(p, (now, found.clone()));
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c4ac2a5e0a3f36ad4c0f29b2ee7d0f43d9d8b2d41f2b2fe4e1ee4b9a2cafe";

    fn cg(path: &str) -> Option<(String, &'static str)> {
        from_cgroup(&format!("0::{path}\n"))
    }

    #[test]
    fn recognises_runtime_cgroup_paths() {
        assert_eq!(cg(&format!("/docker/{ID}")), Some((ID.into(), "docker")));
        assert_eq!(
            cg(&format!("/system.slice/docker-{ID}.scope")),
            Some((ID.into(), "docker"))
        );
        assert_eq!(
            cg(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-{ID}.scope"
            )),
            Some((ID.into(), "cri-containerd"))
        );
        assert_eq!(
            cg(&format!("/kubepods/besteffort/pod12/{ID}")),
            Some((ID.into(), "cri-containerd"))
        );
        assert_eq!(
            cg(&format!("/machine.slice/libpod-{ID}.scope/container")),
            Some((ID.into(), "podman"))
        );
        assert_eq!(
            cg(&format!("/kubepods.slice/crio-{ID}.scope")),
            Some((ID.into(), "cri-o"))
        );
        assert_eq!(cg("/user.slice/user-1000.slice/session-2.scope"), None);
        assert_eq!(cg("/"), None);
        // cgroup v1: one line per hierarchy, the id found in any.
        let v1 = format!("12:pids:/docker/{ID}\n1:name=systemd:/docker/{ID}\n");
        assert_eq!(from_cgroup(&v1), Some((ID.into(), "docker")));
    }

    #[test]
    fn finds_the_unified_line_of_a_hybrid_host() {
        let text = "4:memory:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n";
        assert_eq!(unified_path(text), Some("/"));
        assert_eq!(
            unified_path("0::/system.slice/x.scope\n"),
            Some("/system.slice/x.scope")
        );
        assert_eq!(unified_path("4:memory:/\n"), None);
    }

    #[test]
    fn host_mount_namespace_actor_without_runtime_ancestry_is_no_container() {
        let mut r = Resolver {
            host_mnt: 7,
            ..Resolver::default()
        };
        let a = Actor {
            // No such process: nothing to read, no runtime above it.
            pid: u32::MAX - 1,
            ppid: 1,
            comm: "nsload".into(),
            mnt_ns: 7,
            ..Actor::default()
        };
        assert_eq!(r.for_actor(&a), None);
    }

    /// A process whose executable is a root-owned file named like
    /// containerd's shim (a copy of bash) with the shim's argv, as the
    /// kernel would show the real one; None when not root (the copy would
    /// be the user's, which is not to be trusted).
    fn fake_root_shim(
        namespace: &str,
        id: &str,
    ) -> Option<(std::process::Child, std::path::PathBuf)> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: a trusted runtime process must be root's");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("nstrace-shim-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("containerd-shim-runc-v2");
        fs::copy("/bin/bash", &exe).unwrap();
        let child = std::process::Command::new(&exe)
            .args(["-c", "sleep 10; :", "_", "-namespace", namespace, "-id", id])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cmdline(child.id()).iter().any(|a| a == id) {
            assert!(Instant::now() < deadline, "the fake shim did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Some((child, dir))
    }

    fn actor_below(shim: u32) -> Actor {
        let gone = u32::MAX - 3;
        Actor {
            pid: gone,
            ppid: gone + 1,
            elders: [gone + 2, shim],
            comm: "runc:[1:CHILD]".into(),
            mnt_ns: 7,
            ..Actor::default()
        }
    }

    #[test]
    fn an_actor_whose_parents_exited_is_found_through_its_recorded_elders() {
        // A live process the kernel shows as containerd's shim, three
        // levels above an actor that, like its parent and grandparent, is gone.
        let Some((mut shim, dir)) = fake_root_shim("k8s.io", ID) else {
            return;
        };
        let mut r = Resolver {
            host_mnt: 7,
            host_user: crate::sys::procfs::host_ns_link("user"),
            ..Resolver::default()
        };
        let c = r.for_actor(&actor_below(shim.id()));
        let _ = shim.kill();
        let _ = shim.wait();
        let _ = fs::remove_dir_all(dir);
        let c = c.expect("found through the elders");
        assert_eq!((c.id.as_str(), c.runtime), (ID, "cri-containerd"));
    }

    #[test]
    fn a_process_that_only_names_itself_a_shim_is_not_one() {
        // bash under the shim's name and argv: its executable is bash.
        let mut fake = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "exec -a containerd-shim-runc-v2 bash -c 'sleep 10; :' _ -namespace k8s.io -id {ID}"
            ))
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cmdline(fake.id()).iter().any(|a| a == ID) {
            assert!(Instant::now() < deadline, "the fake shim did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        let trusted = is_trusted_runtime(fake.id(), crate::sys::procfs::host_ns_link("user"));
        let mut r = Resolver {
            host_mnt: 7,
            ..Resolver::default()
        };
        let c = r.for_actor(&actor_below(fake.id()));
        let _ = fake.kill();
        let _ = fake.wait();
        assert!(!trusted);
        assert_eq!(c, None);
    }

    #[test]
    fn runtime_ids_are_checked_before_use() {
        let argv = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        for bad in [
            "aaaaaaaaaaa\u{e9}",
            "../../../../tmp/x",
            "/etc/passwd",
            "a..b",
            "",
            "-x",
        ] {
            for ns in ["moby", "k8s.io", "default"] {
                let line = format!("/usr/bin/containerd-shim-runc-v2 -namespace {ns} -id {bad}");
                assert_eq!(from_runtime_cmdline(&argv(&line)), None, "{line}");
            }
        }
        let multibyte = vec![
            "containerd-shim-runc-v2".to_string(),
            "-namespace".into(),
            "moby".into(),
            "-id".into(),
            "aaaaaaaaaaa\u{e9}".into(),
        ];
        assert_eq!(from_runtime_cmdline(&multibyte), None);
        assert_eq!(
            from_runtime_cmdline(&argv(
                "containerd-shim-runc-v2 -namespace default -id my-app.1"
            )),
            Some(("my-app.1".into(), "containerd"))
        );
        assert_eq!(from_runtime_cmdline(&argv("conmon -c ../x")), None);
    }

    #[test]
    fn a_short_id_is_cut_on_a_character_boundary() {
        let c = Container {
            id: "aaaaaaaaaaa\u{e9}\u{e9}".into(),
            runtime: "docker",
            name: None,
            pod: None,
            namespace: None,
        };
        assert_eq!(c.short_id(), "aaaaaaaaaaa\u{e9}");
        let short = Container {
            id: "\u{e9}".into(),
            ..c
        };
        assert_eq!(short.short_id(), "\u{e9}");
    }

    #[test]
    fn a_users_delegated_cgroup_names_no_container() {
        assert_eq!(
            cg(&format!(
                "/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{ID}.scope"
            )),
            None
        );
        assert_eq!(cg(&format!("/user.slice/docker-{ID}.scope")), None);
    }

    #[test]
    fn metadata_is_read_only_from_regular_files() {
        let dir = std::env::temp_dir().join(format!("nstrace-meta-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.json");
        fs::write(&file, "{}").unwrap();
        assert_eq!(read_metadata(&file).as_deref(), Some("{}"));
        let link = dir.join("link.json");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(read_metadata(&link), None, "a symlink is not followed");
        let fifo = dir.join("fifo.json");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(read_metadata(&fifo), None, "a FIFO is not waited on");
        assert_eq!(read_metadata(Path::new("/dev/zero")), None);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn recognises_shims_and_conmon() {
        let argv = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            from_runtime_cmdline(&argv(&format!(
                "/usr/bin/containerd-shim-runc-v2 -namespace moby -id {ID} -address /run/containerd/containerd.sock"
            ))),
            Some((ID.into(), "docker"))
        );
        assert_eq!(
            from_runtime_cmdline(&argv(&format!(
                "/usr/bin/conmon --api-version 1 -c {ID} -u {ID}"
            ))),
            Some((ID.into(), "podman"))
        );
        assert_eq!(from_runtime_cmdline(&argv("/bin/bash")), None);
    }

    #[test]
    fn pod_names_come_from_either_runtimes_annotations() {
        let containerd = serde_json::json!({
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": "app",
            "io.kubernetes.cri.sandbox-name": "web-7d9f",
            "io.kubernetes.cri.sandbox-namespace": "shop",
        });
        let n = names_from_annotations(&containerd);
        assert_eq!(n.name.as_deref(), Some("app"));
        assert_eq!(n.pod.as_deref(), Some("web-7d9f"));
        assert_eq!(n.namespace.as_deref(), Some("shop"));
        let crio = serde_json::json!({
            "io.kubernetes.container.name": "POD",
            "io.kubernetes.cri-o.ContainerType": "sandbox",
            "io.kubernetes.pod.name": "web-7d9f",
            "io.kubernetes.pod.namespace": "shop",
        });
        let n = names_from_annotations(&crio);
        assert_eq!(
            (n.pod.as_deref(), n.namespace.as_deref()),
            (Some("web-7d9f"), Some("shop"))
        );
        let sandbox = serde_json::json!({
            "io.kubernetes.cri.container-type": "sandbox",
            "io.kubernetes.cri.sandbox-name": "web-7d9f",
        });
        assert_eq!(
            names_from_annotations(&sandbox).name.as_deref(),
            Some("web-7d9f")
        );
        assert_eq!(
            names_from_annotations(&serde_json::Value::Null),
            Names::default()
        );
    }

    #[test]
    fn matches_id_prefix_or_name() {
        let c = Container {
            id: ID.into(),
            runtime: "docker",
            name: Some("web".into()),
            pod: None,
            namespace: None,
        };
        assert!(c.matches("4f1c4ac2a5e0"));
        assert!(c.matches("web"));
        assert!(!c.matches("we"));
        assert!(!c.matches(""));
        assert_eq!(c.short_id(), "4f1c4ac2a5e0");
    }
}
