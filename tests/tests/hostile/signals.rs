//! An unstoppable start-up: a script starts nstrace in the background (a
//! non-interactive shell starts such jobs with SIGINT ignored) and sends it
//! SIGINT at once. At any moment of start-up the signal must end the run,
//! with exit status 0 and nothing left loaded.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nstrace_tests::*;

/// `bash -c 'nstrace & sleep D; kill -SIG $!; wait $!'`, D counted from
/// the exec: nstrace's exit status as the script saw it (None if it was
/// still running 10 s on), and whether its start-up had begun when the
/// signal went (a second thread, the BTF loader's, exists). Before that
/// the signal reaches only the script's own copy, whose SIGINT is ignored,
/// or the dynamic loader: no program can see it.
fn background_start_then(signal: &str, delay_ms: u64) -> (Option<i32>, bool, String) {
    let script = format!(
        "b={}; $b --json >/dev/null 2>&1 & p=$!; \
         until [ /proc/$p/exe -ef $b ]; do :; done; sleep {}; \
         t=(/proc/$p/task/*); kill -{signal} $p; \
         for i in $(seq 100); do kill -0 $p 2>/dev/null || break; sleep 0.1; done; \
         if kill -0 $p 2>/dev/null; then kill -KILL $p; echo ${{#t[@]}} stuck; else wait $p; echo ${{#t[@]}} $?; fi",
        nstrace_bin().display(),
        delay_ms as f64 / 1000.0
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut w = said.split_whitespace();
    let threads: usize = w.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let code = w.next().and_then(|c| c.parse().ok());
    (code, threads > 1, said)
}

#[test]
fn sigint_at_any_moment_of_a_background_start_ends_the_run() {
    if !privileged() {
        return;
    }
    let before = program_ids();
    let (mut failures, mut early) = (Vec::new(), Vec::new());
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
            (Some(0), _, _) => {}
            (_, false, said) => early.push((signal, delay, said)),
            (_, true, said) => failures.push((signal, delay, said)),
        }
    }
    assert!(
        failures.is_empty(),
        "runs not ended cleanly (signal, ms after exec, threads and exit): {failures:?}"
    );
    // Signals before start-up began prove nothing either way: most runs
    // must have been signalled inside it.
    assert!(
        early.len() <= 3,
        "too many signals before start-up began: {early:?}"
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
