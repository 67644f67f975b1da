//! Which container a process belongs to: from its cgroup path (docker,
//! containerd/CRI, CRI-O, podman; cgroup v1 and v2; cgroupfs and systemd
//! drivers), else from its ancestry (a runtime's process that is not yet in
//! the container's cgroup descends from the container's shim or conmon).

use std::{
    collections::HashMap,
    fs,
    time::{Duration, Instant},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// `docker`, `containerd`, `cri-containerd`, `cri-o`, `podman`.
    pub runtime: &'static str,
    pub name: Option<String>,
}

impl Container {
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }

    /// `--container` matching: a prefix of the id, or the exact name.
    pub fn matches(&self, wanted: &str) -> bool {
        (!wanted.is_empty() && self.id.starts_with(wanted)) || self.name.as_deref() == Some(wanted)
    }
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `(id, runtime)` from the contents of /proc/PID/cgroup.
pub fn from_cgroup(text: &str) -> Option<(String, &'static str)> {
    for line in text.lines() {
        let path = line.splitn(3, ':').nth(2)?;
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

/// `(id, runtime)` from a runtime process's argv: containerd's shim (`-id`,
/// `-namespace moby|k8s.io|...`) or podman's conmon (`-c`).
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
        return Some((id, runtime));
    }
    if prog == "conmon" {
        return Some((arg("-c").or_else(|| arg("--cid"))?, "podman"));
    }
    None
}

fn cmdline(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The name docker keeps for a container id, if any.
fn docker_name(id: &str) -> Option<String> {
    let text =
        fs::read_to_string(format!("/var/lib/docker/containers/{id}/config.v2.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(v["Name"].as_str()?.trim_start_matches('/').to_string())
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
    names: HashMap<String, Option<String>>,
    /// pid -> when walked, and the runtime found from it upwards.
    walked: HashMap<u32, (Instant, Option<Hit>)>,
}

fn cgroup_of(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()
}

impl Resolver {
    /// The container `pid` (child of `ppid`) is part of, or None for a host
    /// process. A process already gone (runc's short-lived children) is
    /// looked up through its parent.
    pub fn for_pid(&mut self, pid: u32, ppid: u32, comm: &str) -> Option<Container> {
        if let Some(c) = self.by_pid.get(&pid) {
            return c.clone();
        }
        if self.by_pid.len() > 8192 {
            self.by_pid.clear();
        }
        let (found, gone) = match cgroup_of(pid) {
            Some(text) => (
                from_cgroup(&text).or_else(|| self.ancestry(pid, Some((ppid, comm)))),
                false,
            ),
            None if ppid > 1 => (
                cgroup_of(ppid)
                    .and_then(|t| from_cgroup(&t))
                    .or_else(|| self.ancestry(ppid, None)),
                true,
            ),
            None => (None, true),
        };
        if found.is_none() && gone {
            // Nothing learned; do not cache a miss for a pid that may be reused.
            return None;
        }
        let c = found.map(|(id, runtime)| {
            let name = self
                .names
                .entry(id.clone())
                .or_insert_with(|| {
                    if runtime == "docker" {
                        docker_name(&id)
                    } else {
                        None
                    }
                })
                .clone();
            Container { id, runtime, name }
        });
        self.by_pid.insert(pid, c.clone());
        c
    }

    /// Forget a pid (it exited; the number may be reused).
    pub fn forget(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }

    /// The runtime process among `pid` and its ancestors, by their command
    /// lines; `known`: pid's parent and command name, when the event told.
    fn ancestry(&mut self, pid: u32, known: Option<(u32, &str)>) -> Option<Hit> {
        let now = Instant::now();
        let mut chain = Vec::new();
        let (mut p, mut parent) = (pid, known.map(|k| k.0));
        // Only a shim or conmon can match: skip reading other actors' argv.
        let mut maybe_runtime =
            known.is_none_or(|(_, c)| c.starts_with("containerd-shim") || c == "conmon");
        let found = loop {
            if let Some((at, hit)) = self.walked.get(&p) {
                if now.duration_since(*at) < ANCESTRY_TTL {
                    break hit.clone();
                }
            }
            chain.push(p);
            if maybe_runtime {
                if let Some(hit) = from_runtime_cmdline(&cmdline(p)) {
                    break Some(hit);
                }
            }
            maybe_runtime = true;
            if chain.len() >= 12 {
                break None;
            }
            match parent.take().or_else(|| crate::procfs::ppid(p)) {
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
    fn recognises_shims_and_conmon() {
        let argv = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            from_runtime_cmdline(&argv(&format!(
                "/usr/bin/containerd-shim-runc-v2 -namespace moby -id {ID} -address /run/containerd/containerd.sock"
            ))),
            Some((ID.into(), "docker"))
        );
        assert_eq!(
            from_runtime_cmdline(&argv("/usr/bin/conmon --api-version 1 -c abc -u abc")),
            Some(("abc".into(), "podman"))
        );
        assert_eq!(from_runtime_cmdline(&argv("/bin/bash")), None);
    }

    #[test]
    fn matches_id_prefix_or_name() {
        let c = Container {
            id: ID.into(),
            runtime: "docker",
            name: Some("web".into()),
        };
        assert!(c.matches("4f1c4ac2a5e0"));
        assert!(c.matches("web"));
        assert!(!c.matches("we"));
        assert!(!c.matches(""));
        assert_eq!(c.short_id(), "4f1c4ac2a5e0");
    }
}
