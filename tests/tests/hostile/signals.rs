//! An unstoppable start-up: a script starts nstrace in the background (a
//! non-interactive shell starts such jobs with SIGINT ignored) and sends it
//! SIGINT at once. At any moment of start-up the signal must end the run,
//! with exit status 0 and nothing left loaded.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nstrace_tests::*;

/// `bash -c 'nstrace & sleep D; kill -SIG $!; wait $!'`: nstrace's exit
/// status as the script saw it, or None if it was still running 10 s on.
fn background_start_then(signal: &str, delay_ms: u64) -> Option<(i32, String)> {
    let script = format!(
        "{} --json >/dev/null 2>&1 & p=$!; sleep {}; kill -{signal} $p; \
         for i in $(seq 100); do kill -0 $p 2>/dev/null || break; sleep 0.1; done; \
         if kill -0 $p 2>/dev/null; then kill -KILL $p; echo stuck; else wait $p; echo $?; fi",
        nstrace_bin().display(),
        delay_ms as f64 / 1000.0
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    said.parse().ok().map(|code| (code, said))
}

#[test]
fn sigint_at_any_moment_of_a_background_start_ends_the_run() {
    if !privileged() {
        return;
    }
    let before = program_ids();
    let mut failures = Vec::new();
    for (i, delay) in [5, 10, 15, 20, 30, 40, 50, 60, 75, 90, 110, 130, 150]
        .into_iter()
        .enumerate()
    {
        // SIGTERM and SIGHUP too, now and then: the same path.
        let signal = match i % 5 {
            3 => "TERM",
            4 => "HUP",
            _ => "INT",
        };
        match background_start_then(signal, delay) {
            Some((0, _)) => {}
            other => failures.push((signal, delay, other)),
        }
    }
    assert!(
        failures.is_empty(),
        "runs not ended cleanly (signal, ms after start, exit): {failures:?}"
    );
    // Every tracer has exited: what it loaded must be gone with it.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left: Vec<u64> = program_ids()
            .into_iter()
            .filter(|id| !before.contains(id))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "programs left loaded: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
