//! Stalling the tracer with what it opens: an unprivileged user pins a
//! namespace with an nsfs bind mount in a mount namespace of their own,
//! then hides it (a tmpfs over its parent) and puts a FIFO, which blocks
//! whoever opens it, at the pin's path. Start-up and `nstrace ls` read
//! every pin: they must neither wait on the FIFO nor take it for the pin.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nstrace_tests::*;

/// The hidden pin: a memberless uts namespace held by a bind mount under
/// `dir`, a tmpfs mounted over the mount's parent, a FIFO in the pin's
/// place. Returns the holder (its mount namespace lives while it does) and
/// the pinned namespace's inode.
fn hidden_pin(dir: &str) -> (Group, u64) {
    let script = format!(
        r#"set -e
mkdir -p {dir}/x && touch {dir}/x/pin
exec unshare -Urm bash -c '
  unshare -u bash -c "mount --bind /proc/self/ns/uts {dir}/x/pin"
  readlink {dir}/x/pin 2>/dev/null || true
  stat -L -c %i {dir}/x/pin
  mount -t tmpfs none {dir}/x
  mkfifo {dir}/x/pin
  echo ready
  exec sleep 60'"#
    );
    let mut g = as_nobody(&script);
    let inode: u64 = loop {
        let line = g.read_line();
        if let Ok(n) = line.parse() {
            break n;
        }
        assert!(!line.is_empty(), "the hidden pin's set-up ended early");
    };
    assert_eq!(g.read_line(), "ready");
    (g, inode)
}

#[test]
fn a_fifo_behind_a_hidden_pin_stalls_neither_start_up_nor_ls() {
    if !privileged() {
        return;
    }
    let dir = format!("/tmp/nstrace-pin-{}", std::process::id());
    let (holder, inode) = hidden_pin(&dir);
    let started = Instant::now();
    let t = Tracer::start(&[]);
    let took = started.elapsed();
    // A blocked open never returns; on a busy machine (other tests load
    // their programs beside this one) a start-up that reads no FIFO still
    // took 6 s, so the bound tells a stall from a slow start, no more.
    assert!(took < Duration::from_secs(30), "start-up took {took:?}");
    let (status, _) = t.stop();
    assert!(status.success());

    for args in [&["ls"][..], &["ls", "--json"][..]] {
        let started = Instant::now();
        let mut ls = Command::new(nstrace_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = loop {
            if ls.try_wait().unwrap().is_some() {
                break ls.wait_with_output().unwrap();
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = ls.kill();
                panic!("nstrace {args:?} still running after 10 s (stalled on the FIFO)");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Still listed: mountinfo names the pin, whatever now sits at its path.
        assert!(
            stdout.contains(&inode.to_string()),
            "{args:?} does not list the pinned namespace {inode}:\n{stdout}"
        );
    }
    drop(holder);
    let _ = std::fs::remove_dir_all(&dir);
}
