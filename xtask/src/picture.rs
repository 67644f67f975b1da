//! `cargo xtask picture`: the README's pictures, made the way a user
//! would. docs/timeline.png: nstrace with `--html` while a container is
//! run, exec'd into and removed, and a network namespace is added, entered
//! and deleted. docs/timeline-crowd.png: a CI runner's churn (25,000
//! children, 75,000 short-lived namespaces) saved with `--output`, beside
//! a network namespace's life, drawn by `nstrace report --html`. Both
//! pages are shot in headless Chromium.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{docker, nstrace_bin, sh, workspace_root};

#[derive(clap::Args)]
pub struct Options {}

pub fn run(_: Options) -> Result<()> {
    crate::setup::everything()?;
    crate::build::release()?;
    let daemon = docker::Daemon::ensure(&workspace_root().join("target/dockerd.log"))?;
    daemon.ensure_image()?;
    let page = workspace_root().join("target/timeline.html");
    let mut tracer = Command::new(nstrace_bin())
        .args(["--html"])
        .arg(&page)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nstrace")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = BufReader::new(tracer.stderr.take().expect("piped"));
    let reader = thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            eprintln!("{line}");
            let _ = tx.send(line);
        }
    });
    // Ready: the start-up line.
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .context("nstrace did not start")?;
        if line.contains("tracing namespaces") {
            break;
        }
    }
    let step = || thread::sleep(Duration::from_millis(700));
    let docker = || Command::new("docker");
    sh(docker().args([
        "run",
        "-d",
        "--name",
        "nstrace-picture",
        "--network",
        "none",
        docker::IMAGE,
        "sleep",
        "30",
    ]))?;
    step();
    sh(docker().args(["exec", "nstrace-picture", "true"]))?;
    step();
    sh(Command::new("ip").args(["netns", "add", "nstrace-picture"]))?;
    step();
    sh(Command::new("ip").args(["netns", "exec", "nstrace-picture", "true"]))?;
    step();
    sh(docker().args(["rm", "-f", "nstrace-picture"]))?;
    step();
    sh(Command::new("ip").args(["netns", "delete", "nstrace-picture"]))?;
    step();
    // SAFETY: a plain signal to our own child.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    let _ = reader.join();
    if !tracer.wait()?.success() {
        bail!("nstrace failed");
    }
    drop(daemon);
    shoot(&page, &workspace_root().join("docs/timeline.png"), 720)?;
    crowd()
}

fn shoot(page: &std::path::Path, png: &std::path::Path, height: u32) -> Result<()> {
    sh(Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--window-size=1400,{height}"))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display())))?;
    eprintln!("xtask: wrote {}", png.display());
    Ok(())
}

/// The large picture: what a CI runner's churn looks like.
fn crowd() -> Result<()> {
    sh(crate::cargo().args([
        "build",
        "--release",
        "-p",
        "nstrace-tests",
        "--bin",
        "nsload",
    ]))?;
    let target = workspace_root().join("target");
    let trace = target.join("crowd.jsonl");
    let page = target.join("timeline-crowd.html");
    let mut tracer = Command::new(nstrace_bin())
        .arg("--output")
        .arg(&trace)
        .args(["--type", "time"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nstrace")?;
    let stderr = BufReader::new(tracer.stderr.take().expect("piped"));
    let mut lines = stderr.lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("tracing namespaces") => break,
            Some(Ok(_)) => {}
            _ => bail!("nstrace did not start"),
        }
    }
    let reader = thread::spawn(move || lines.for_each(drop));
    sh(Command::new("ip").args(["netns", "add", "nstrace-crowd"]))?;
    sh(Command::new(target.join("release/nsload")).args(["churn", "25000"]))?;
    sh(Command::new("ip").args(["netns", "exec", "nstrace-crowd", "true"]))?;
    sh(Command::new("ip").args(["netns", "delete", "nstrace-crowd"]))?;
    thread::sleep(Duration::from_millis(500));
    // SAFETY: a plain signal to our own child.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    let _ = reader.join();
    if !tracer.wait()?.success() {
        bail!("nstrace failed");
    }
    sh(Command::new(nstrace_bin())
        .arg("report")
        .arg(&trace)
        .arg("--html")
        .arg(&page)
        .stdout(Stdio::null()))?;
    let _ = std::fs::remove_file(&trace);
    shoot(
        &page,
        &workspace_root().join("docs/timeline-crowd.png"),
        900,
    )
}
