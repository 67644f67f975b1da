//! A Docker daemon for the container tests: started here (no systemd on our
//! machines), with a tiny busybox image imported locally (no registry is
//! reachable), and stopped afterwards if we started it.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

pub const IMAGE: &str = "nstrace-test:busybox";

/// Debian's client; /usr/local/bin may hold another one.
fn docker() -> Command {
    let bin = if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    };
    Command::new(bin)
}

fn daemon_up() -> bool {
    docker()
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A running daemon; stops it on drop if this process started it.
pub struct Daemon {
    started: Option<Child>,
}

impl Daemon {
    pub fn ensure(log: &Path) -> Result<Daemon> {
        if daemon_up() {
            eprintln!("xtask: using the Docker daemon already running");
            return Ok(Daemon { started: None });
        }
        eprintln!("xtask: starting dockerd (log: {})", log.display());
        let out = std::fs::File::create(log).context("creating the dockerd log")?;
        let child = Command::new("dockerd")
            .args(["--iptables=false", "--bridge=none"])
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting dockerd (Debian package docker.io)")?;
        let daemon = Daemon {
            started: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !daemon_up() {
            if Instant::now() > deadline {
                bail!("dockerd did not come up in 60 s; see {}", log.display());
            }
            thread::sleep(Duration::from_millis(200));
        }
        Ok(daemon)
    }

    /// Imports the busybox image the tests run, if it is missing.
    pub fn ensure_image(&self) -> Result<()> {
        let have = docker()
            .args(["image", "inspect", IMAGE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?
            .success();
        if have {
            return Ok(());
        }
        let root = tempdir()?;
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin)?;
        std::fs::copy("/bin/busybox", bin.join("busybox"))
            .context("copying /bin/busybox (Debian package busybox-static)")?;
        for applet in ["sh", "echo", "true", "false", "sleep", "cat", "ls", "ps"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet))?;
        }
        let tar = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()?;
        let status = docker()
            .args(["import", "-", IMAGE])
            .stdin(tar.stdout.context("tar stdout")?)
            .stdout(Stdio::null())
            .status()?;
        std::fs::remove_dir_all(&root)?;
        if !status.success() {
            bail!("docker import of {IMAGE} failed");
        }
        Ok(())
    }
}

fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("nstrace-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Some(mut child) = self.started.take() else {
            return;
        };
        // Containers left by a failed test go with the daemon.
        let _ = Command::new("sh")
            .args([
                "-c",
                "ids=$(docker ps -aq); [ -z \"$ids\" ] || docker rm -f $ids >/dev/null 2>&1",
            ])
            .status();
        // SAFETY: signalling the daemon we started.
        unsafe { libc_kill(child.id() as i32, 15) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
