//! Saved traces: `--output FILE` while the terminal keeps the timeline, and
//! `nstrace report FILE` summing it up later as the live run did.

use std::process::Command;

use nstrace_tests::*;
use serde_json::Value;

/// The closing line and the table after it, from a run's stderr.
fn closing_summary(stderr: &str) -> String {
    let from = stderr
        .lines()
        .position(|l| l.starts_with("nstrace: ") && l.contains(" records (") && l.contains(" lost"))
        .unwrap_or_else(|| panic!("no closing line in: {stderr}"));
    stderr
        .lines()
        .skip(from)
        .filter(|l| !l.starts_with("nstrace: kernel") && !l.contains("kernel diagnostics"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn report_on_a_saved_trace_gives_the_live_summary() {
    if !privileged() {
        return;
    }
    let dir = tempdir();
    let path = dir.join("trace.jsonl");
    let tracer = Tracer::start_text(&["--output", path.to_str().unwrap()]);
    // Ends, and a leak (a UTS namespace held by a sleeper, alive at stop).
    for _ in 0..3 {
        assert!(
            Command::new("unshare")
                .args(["-u", "-i", "true"])
                .status()
                .unwrap()
                .success()
        );
    }
    let sleeper = Group::spawn(&["unshare", "-u", "sleep", "30"]);
    let uts = wait_ns_changed(sleeper.pid(), "uts");
    std::thread::sleep(std::time::Duration::from_millis(700));
    let timeline = tracer.lines().join("\n");
    let (status, stderr) = tracer.stop();
    assert!(status.success(), "{stderr}");
    // The terminal kept the timeline.
    assert!(timeline.contains(&uts.to_string()), "{timeline}");
    let live = closing_summary(&stderr);
    assert!(live.contains(&format!("uts {uts} by unshare")), "{live}");

    // The file: a start line with the namespaces alive then, the records, a stop line.
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["event"], "start", "{}", text);
    let init_uts = ns_inode(std::process::id(), "uts");
    assert!(
        lines[0]["alive"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["ns_type"] == "uts" && n["ns_inode"] == init_uts),
        "{}",
        lines[0]
    );
    assert_eq!(lines.last().unwrap()["event"], "stop");
    assert!(lines.iter().any(|r| is(r, "create", "uts", uts)));

    let out = Command::new(nstrace_bin())
        .arg("report")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report = String::from_utf8(out.stdout).unwrap();
    assert_eq!(report.trim_end(), live.trim_end());

    let out = Command::new(nstrace_bin())
        .args(["report", "--json"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["kinds"]["uts"]["created"].as_u64().unwrap() >= 4, "{v}");
    assert!(
        v["possible_leaks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["ns_type"] == "uts" && l["ns_inode"] == uts),
        "{v}"
    );
    drop(sleeper);
}

#[test]
fn report_of_a_missing_or_foreign_file_is_an_error_with_a_hint() {
    let out = Command::new(nstrace_bin())
        .args(["report", "/nonexistent/trace.jsonl"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read /nonexistent/trace.jsonl") && err.contains("hint:"),
        "{err}"
    );
    let dir = tempdir();
    let path = dir.join("not-a-trace.jsonl");
    std::fs::write(&path, "{\"event\":\"create\"}\nhello\n").unwrap();
    let out = Command::new(nstrace_bin())
        .arg("report")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 1") && err.contains("hint:"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A fresh directory under the system's temporary one, removed by nobody:
/// small, and kept for a look after a failure.
fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "nstrace-report-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}
