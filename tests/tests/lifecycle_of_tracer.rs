//! Start and stop behaviour: clean exit on signals, nothing left loaded,
//! clear errors without privileges.

use std::process::Command;

use nstrace_tests::*;

fn assert_clean_stop(signal: i32) {
    let before = program_ids();
    let tracer = Tracer::start(&[]);
    // Programs that appeared with this tracer are its own (tests run one at a time).
    let ours: Vec<u64> = program_ids()
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect();
    // Four syscall entries, one exit program for the four syscall exits,
    // task_newtask, sched_process_exit (more with fentry).
    assert!(
        ours.len() >= 7,
        "expected our 7 programs loaded, new ones: {ours:?}"
    );
    let (status, stderr) = tracer.stop_with(signal);
    assert!(status.success(), "exit {status}: {stderr}");
    // The closing line (a table of totals follows when anything happened).
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("nstrace: ") && l.contains("records") && l.contains("lost")),
        "{stderr}"
    );
    let still: Vec<u64> = program_ids()
        .into_iter()
        .filter(|id| ours.contains(id))
        .collect();
    assert!(still.is_empty(), "programs left loaded: {still:?}");
}

#[test]
fn ctrl_c_detaches_everything_and_exits_zero() {
    if privileged() {
        assert_clean_stop(libc::SIGINT);
    }
}

/// `--debug` loads on every kernel of the matrix (it is a second eBPF object,
/// the diagnostics compiled in), traces as without it, stops clean, and in
/// namespace work touching every kernel read nstrace makes, the kernel side
/// reports no failed read and no failed map update: the offsets nstrace
/// computed for this kernel all read.
#[test]
fn debug_loads_and_no_kernel_read_fails() {
    if !privileged() {
        return;
    }
    let before = program_ids();
    let tracer = Tracer::start(&["--debug"]);
    let ours: Vec<u64> = program_ids()
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect();
    let g = Group::spawn(&["unshare", "-u", "-i", "-n", "sleep", "30"]);
    let uts = wait_ns_changed(g.pid(), "uts");
    tracer.wait_for(1, |r| is(r, "create", "uts", uts));
    // Its exit: the member-count and exit reads.
    drop(g);
    tracer.wait_for(1, |r| r["event"] == "exit" || is(r, "destroy", "uts", uts));
    // And one failure the kernel itself answers for, so that the silence
    // above is known to come from a working log path: clone3 with arguments
    // at an unmapped address fails with EFAULT and creates nothing.
    // SAFETY: the kernel only reads the (unmapped) address and fails; nothing is written.
    let ret = unsafe { libc::syscall(libc::SYS_clone3, 4096usize, 88usize) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    assert_eq!((ret, errno), (-1, Some(libc::EFAULT)));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (status, stderr) = tracer.stop();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("nstrace: kernel: debug: clone3 arguments at 0x1000 unreadable: EFAULT"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("nstrace: kernel: warn"),
        "a kernel read or map update failed: {stderr}"
    );
    let still: Vec<u64> = program_ids()
        .into_iter()
        .filter(|id| ours.contains(id))
        .collect();
    assert!(still.is_empty(), "programs left loaded: {still:?}");
}

#[test]
fn sigterm_detaches_everything_and_exits_zero() {
    if privileged() {
        assert_clean_stop(libc::SIGTERM);
    }
}

#[test]
fn without_privileges_it_says_so_and_exits_nonzero() {
    if !privileged() {
        return;
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(nstrace_bin())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("nstrace: error: permission denied"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: run it as `sudo nstrace`"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
}

#[test]
fn unknown_flag_is_a_usage_error() {
    if !privileged() {
        return;
    }
    let out = Command::new(nstrace_bin())
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unexpected argument"), "{stderr}");
}

/// The timeline of a `unshare -u true` with the given extra arguments
/// (stdout is a pipe, so `auto` means no colour).
fn timeline_of_an_unshare(args: &[&str]) -> String {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(nstrace_bin())
        .args(["--type", "uts"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stderr.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("nstrace: tracing"), "{first}");
    assert!(
        Command::new("unshare")
            .args(["-u", "true"])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(std::time::Duration::from_millis(700));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn colour_only_when_asked_or_on_a_terminal() {
    if !privileged() {
        return;
    }
    let coloured = timeline_of_an_unshare(&["--color", "always"]);
    assert!(coloured.contains("\x1b[32mcreate\x1b[0m"), "{coloured}");
    assert!(coloured.contains("\x1b[31mdestroy\x1b[0m"), "{coloured}");
    let piped = timeline_of_an_unshare(&[]);
    assert!(piped.contains(" create "), "{piped}");
    assert!(!piped.contains('\x1b'), "{piped}");
}

/// `nstrace ls | head -1`: the reader leaves early, as `head` does; that is
/// no error (exit 0, nothing on stderr), as for any Unix filter.
#[test]
fn ls_into_a_reader_that_leaves_early_exits_zero_silently() {
    if !privileged() {
        return;
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; '{}' ls | head -1 >/dev/null",
            nstrace_bin().display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

/// Stdout closed mid-trace (its reader gone) ends stdout only: `--output`
/// goes on recording, the trace stops clean on Ctrl-C with exit 0, and the
/// file has what came after.
#[test]
fn stdout_closed_while_output_keeps_writing() {
    if !privileged() {
        return;
    }
    use std::io::{BufRead, BufReader};
    let file = std::env::temp_dir().join(format!("nstrace-closed-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let mut child = Command::new(nstrace_bin())
        .args(["--json", "--type", "uts", "--output"])
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    assert!(first.starts_with("nstrace: tracing"), "{first}");
    // The reader goes away: the next write to stdout fails (EPIPE).
    drop(child.stdout.take());
    let unshare = |n: usize| {
        for _ in 0..n {
            assert!(
                Command::new("unshare")
                    .args(["-u", "true"])
                    .status()
                    .unwrap()
                    .success()
            );
        }
    };
    unshare(3);
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Still tracing, into the file.
    let g = Group::spawn(&["unshare", "-u", "sleep", "60"]);
    let inode = wait_ns_changed(g.pid(), "uts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|r| is(&r, "create", "uts", inode))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no create of uts:[{inode}] in --output after stdout closed"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "nstrace exited when stdout closed"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(g);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut err, &mut rest);
    assert!(status.success(), "{status}: {rest}");
    assert!(!rest.contains("error"), "{rest}");
    let text = std::fs::read_to_string(&file).unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        text.lines()
            .last()
            .is_some_and(|l| l.contains("\"event\":\"stop\"")),
        "{text}"
    );
}
