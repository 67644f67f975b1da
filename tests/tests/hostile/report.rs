//! Foreign traces: `nstrace report` run by root on a trace an unprivileged
//! user wrote (or a stream it feeds), and the files nstrace writes in a
//! directory such a user can write to as well.

use std::{
    io::Write as _,
    os::unix::{
        fs::{MetadataExt as _, PermissionsExt as _},
        process::{CommandExt as _, ExitStatusExt as _},
    },
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use nstrace_tests::*;

/// A fresh directory anyone may write to (sticky, like /tmp): the
/// attacker's files and nstrace's outputs side by side.
fn shared_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nstrace-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
    d
}

/// `nstrace ARGS` with stdin from `stdin`, to its end: status, stderr,
/// peak resident memory (KiB, the kernel's own account, read by nshelper's
/// wait4 on a child forked from it: see its `maxrss`), and how long it
/// ran. Killed, with its helper, after `limit`.
fn run_measured(
    args: &[&str],
    stdin: Stdio,
    limit: Duration,
) -> (ExitStatus, String, u64, Duration) {
    let began = Instant::now();
    let mut child = Command::new(helper_bin())
        .arg("maxrss")
        .arg(nstrace_bin())
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = child.id() as i32;
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if began.elapsed() > limit {
            // SAFETY: signalling the process group we started.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            panic!("nstrace {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = began.elapsed();
    let mut said = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut said);
    let field = |name: &str| -> i64 {
        let mut w = said.split_whitespace();
        while let Some(k) = w.next() {
            if k == name {
                return w.next().and_then(|v| v.parse().ok()).unwrap_or(-1);
            }
        }
        panic!("nshelper maxrss said {said:?}")
    };
    (
        ExitStatus::from_raw(field("status") as i32),
        reader.join().unwrap(),
        field("maxrss") as u64,
        took,
    )
}

fn report(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(nstrace_bin())
        .arg("report")
        .args(args)
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn refused(status: ExitStatus, stderr: &str) {
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("hint:"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

const T0: &str = "2024-02-29T12:34:56.000000001Z";

#[test]
fn a_200_mb_line_is_refused_in_a_few_megabytes_and_dev_zero_ends_at_once() {
    if !privileged() {
        return;
    }
    // The attacker streams one 200 MB line (after a good one) into the
    // report's input; the report must stop at the cap, not buffer it all.
    let script = format!(
        "printf '%s\\n' '{{\"event\":\"stop\",\"time\":\"{T0}\"}}'; \
         printf '{{\"event\":\"create\",\"time\":\"{T0}\",\"comm\":\"'; \
         head -c 200000000 /dev/zero | tr '\\0' a; printf '\"}}\\n'"
    );
    let mut attacker = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "bash",
            "-c",
        ])
        .arg(&script)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pipe = attacker.stdout.take().unwrap();
    let (status, stderr, peak_kib, took) = run_measured(
        &["report", "/dev/stdin"],
        Stdio::from(pipe),
        Duration::from_secs(30),
    );
    let _ = attacker.kill();
    let _ = attacker.wait();
    refused(status, &stderr);
    assert!(
        stderr.contains("/dev/stdin, line 2: longer than 1 MiB"),
        "{stderr}"
    );
    eprintln!("200 MB line: peak RSS {peak_kib} KiB, {took:?}");
    assert!(peak_kib < 64 * 1024, "peak RSS {peak_kib} KiB");

    // /dev/zero: one endless line. It ends, with the error, at once.
    let (status, stderr, peak_kib, took) = run_measured(
        &["report", "/dev/zero"],
        Stdio::null(),
        Duration::from_secs(10),
    );
    refused(status, &stderr);
    assert!(
        stderr.contains("/dev/zero, line 1: longer than 1 MiB"),
        "{stderr}"
    );
    eprintln!("/dev/zero: peak RSS {peak_kib} KiB, {took:?}");
    assert!(peak_kib < 64 * 1024, "peak RSS {peak_kib} KiB");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn odd_saved_traces_are_refused_by_line_or_reported_never_a_panic() {
    if !privileged() {
        return;
    }
    let dir = shared_dir("odd");
    let d = dir.display();
    // Written by the attacker: invalid UTF-8 on line 3; a 5 MB string;
    // a 512 KiB command name in a valid trace; numbers at and past every
    // type's edge; times past what nstrace writes.
    let create = |comm: &str| {
        format!(
            "{{\"event\":\"create\",\"time\":\"{T0}\",\"ns_type\":\"net\",\"ns_inode\":7,\"syscall\":\"unshare\",\"pid\":9,\"comm\":\"{comm}\"}}"
        )
    };
    let script = format!(
        r#"set -e
printf '\n%s\n{{"event":"stop","time":"{T0}","x":"\377\376"}}\n' '{create}' > {d}/utf8.jsonl
{{ printf '{{"event":"create","time":"{T0}","comm":"'; head -c 5000000 /dev/zero | tr '\0' b; printf '"}}\n'; }} > {d}/big.jsonl
{{ printf '{{"event":"create","time":"{T0}","ns_type":"net","ns_inode":7,"syscall":"unshare","pid":9,"comm":"'; head -c 524288 /dev/zero | tr '\0' c; printf '"}}\n'; }} > {d}/long.jsonl
cat > {d}/huge.jsonl <<'EOF'
{{"event":"start","time":"{T0}","kernel":"x","ends":"fentry","alive":[{{"ns_type":"net","ns_inode":18446744073709551615,"ns_id":-1}},{{"ns_type":"uts","ns_inode":4026531838,"ns_id":1e300}}]}}
{{"event":"create","time":"1970-01-01T00:00:00Z","ns_type":"pid","ns_inode":4294967295,"ns_id":18446744073709551615,"syscall":"clone3","raw_flags":"0xffffffffffffffffffffffff","pid":1,"tid":-1,"comm":"h","uid":1e300,"container":{{"id":"aaaaaaaaaaa\u00e9\u00e9","runtime":"\u00e9","name":null}}}}
{{"event":"error","time":"{T0}","ns_type":"net","syscall":"setns","pid":4294967296,"comm":"e","errno_num":-2147483649,"fd":9223372036854775807,"child_pid":0.5}}
{{"event":"lost","time":"{T0}","kernel_events":18446744073709551615}}
{{"event":"lost","time":"{T0}","kernel_events":18446744073709551615}}
{{"event":"destroy","time":"2262-04-11T23:47:16.854775807Z","ns_type":"pid","ns_inode":4294967295}}
EOF
printf '%s\n' '{{"event":"stop","time":"9999-12-31T23:59:59.999999999Z"}}' > {d}/far.jsonl
"#,
        create = create("u")
    );
    let (status, _, err) = run_as_nobody(&script);
    assert!(status.success(), "{err}");
    let path = |name: &str| format!("{d}/{name}");

    let (status, _, stderr) = report(&[&path("utf8.jsonl")]);
    refused(status, &stderr);
    assert!(
        stderr.contains("utf8.jsonl, line 3: not UTF-8 text"),
        "{stderr}"
    );

    let (status, _, stderr) = report(&[&path("big.jsonl")]);
    refused(status, &stderr);
    assert!(
        stderr.contains("big.jsonl, line 1: longer than 1 MiB"),
        "{stderr}"
    );

    let (status, _, stderr) = report(&[&path("far.jsonl")]);
    refused(status, &stderr);
    assert!(
        stderr.contains("far.jsonl, line 1: no valid \"time\""),
        "{stderr}"
    );

    // Under the cap: reported, and drawn, however long its strings.
    let (html, pf) = (path("long.html"), path("long.pftrace"));
    let (status, out, stderr) = report(&[&path("long.jsonl"), "--html", &html, "--perfetto", &pf]);
    assert!(status.success(), "{stderr}");
    assert!(out.contains("net            1"), "{out}");
    assert!(std::fs::metadata(&html).unwrap().len() > 524288);

    // Numbers past their types read as absent or saturate; never wrap.
    let (status, out, stderr) = report(&[&path("huge.jsonl")]);
    assert!(status.success(), "{stderr}");
    assert!(
        out.contains(&format!("{} lost", u64::MAX)),
        "two losses of u64::MAX sum to u64::MAX: {out}"
    );
    let (status, out, stderr) = report(&["--json", &path("huge.jsonl"), "--html", &path("h.html")]);
    assert!(status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["lost"], u64::MAX, "{v}");
    assert_eq!(v["longest_ended"]["lifetime_ns"], i64::MAX, "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_report_over_its_own_input_is_refused_and_the_input_untouched() {
    if !privileged() {
        return;
    }
    let dir = shared_dir("self");
    let trace = dir.join("t.jsonl");
    let text = format!(
        "{{\"event\":\"start\",\"time\":\"{T0}\",\"kernel\":\"x\",\"ends\":\"fentry\",\"alive\":[]}}\n\
         {{\"event\":\"stop\",\"time\":\"{T0}\",\"records\":0,\"kernel_events\":0,\"lost\":0}}\n"
    );
    std::fs::write(&trace, &text).unwrap();
    let mtime = std::fs::metadata(&trace).unwrap().mtime_nsec();
    std::fs::hard_link(&trace, dir.join("hard.jsonl")).unwrap();
    std::os::unix::fs::symlink(&trace, dir.join("sym.html")).unwrap();
    // The trace, under its name, a hard link, a symlink, a longer path.
    let same = [
        trace.clone(),
        dir.join("hard.jsonl"),
        dir.join("sym.html"),
        dir.join(".").join("t.jsonl"),
    ];
    for out in &same {
        for flag in ["--html", "--perfetto"] {
            let (status, _, stderr) =
                report(&[trace.to_str().unwrap(), flag, out.to_str().unwrap()]);
            refused(status, &stderr);
            assert!(stderr.contains("is the trace being read"), "{stderr}");
            assert!(
                stderr.contains("t.html") || stderr.contains("t.pftrace"),
                "{stderr}"
            );
            assert_eq!(std::fs::read_to_string(&trace).unwrap(), text);
            assert_eq!(std::fs::metadata(&trace).unwrap().mtime_nsec(), mtime);
        }
    }
    let entries = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(entries, 3, "a temporary file was left behind");
    // Two pictures, one file.
    let pic = dir.join("p.out");
    let (status, _, stderr) = report(&[
        trace.to_str().unwrap(),
        "--html",
        pic.to_str().unwrap(),
        "--perfetto",
        pic.to_str().unwrap(),
    ]);
    refused(status, &stderr);
    assert!(stderr.contains("name the same file"), "{stderr}");
    assert!(!pic.exists());
    // Live: the trace file and a picture, one file.
    let (status, _, stderr) = {
        let out = Command::new(nstrace_bin())
            .args(["--output", trace.to_str().unwrap(), "--html"])
            .arg(dir.join("hard.jsonl"))
            .output()
            .unwrap();
        (
            out.status,
            (),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    refused(status, &stderr);
    assert!(
        stderr.contains("--output and --html name the same file"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&trace).unwrap(), text);
    let _ = std::fs::remove_dir_all(&dir);
}

fn mode_and_owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    assert!(m.is_file(), "{} is not a regular file", p.display());
    (m.mode() & 0o7777, m.uid())
}

#[test]
fn traces_and_pictures_are_0600_and_replace_planted_symlinks() {
    if !privileged() {
        return;
    }
    let dir = shared_dir("files");
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    // The attacker plants symlinks where root's outputs will go, and a
    // readable file in place of another.
    let d = dir.display();
    let (status, _, err) = run_as_nobody(&format!(
        "set -e; for f in live.jsonl live.html live.pftrace pic.html; do ln -s {d}/victim {d}/$f; done; \
         echo mine > {d}/pic.pftrace; chmod 666 {d}/pic.pftrace"
    ));
    assert!(status.success(), "{err}");
    let (live, html, pf) = (
        dir.join("live.jsonl"),
        dir.join("live.html"),
        dir.join("live.pftrace"),
    );
    let tracer = Tracer::start(&[
        "--output",
        live.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
        "--perfetto",
        pf.to_str().unwrap(),
    ]);
    // From the start the trace file is root's own, 0600, and the link gone.
    assert_eq!(mode_and_owner(&live), (0o600, 0));
    let (_, _, _) = run_as_nobody("unshare -U true");
    std::thread::sleep(Duration::from_millis(300));
    // Not drawn yet: what the attacker put there is still there.
    assert!(
        std::fs::symlink_metadata(&html)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let (status, stderr) = tracer.stop();
    assert!(status.success(), "{stderr}");
    for p in [&live, &html, &pf] {
        assert_eq!(mode_and_owner(p), (0o600, 0), "{}", p.display());
    }
    assert!(
        std::fs::read_to_string(&live)
            .unwrap()
            .contains("\"event\":\"stop\"")
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let (_, _, err) = run_as_nobody(&format!("cat {}", live.display()));
    assert!(err.contains("Permission denied"), "{err}");

    // report: the same for its pictures.
    let (pic_html, pic_pf) = (dir.join("pic.html"), dir.join("pic.pftrace"));
    let (status, _, stderr) = report(&[
        live.to_str().unwrap(),
        "--html",
        pic_html.to_str().unwrap(),
        "--perfetto",
        pic_pf.to_str().unwrap(),
    ]);
    assert!(status.success(), "{stderr}");
    assert_eq!(mode_and_owner(&pic_html), (0o600, 0));
    assert_eq!(mode_and_owner(&pic_pf), (0o600, 0));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");

    // A failed report (a bad line) leaves the pictures already there.
    let bad = dir.join("bad.jsonl");
    let mut f = std::fs::File::create(&bad).unwrap();
    writeln!(f, "{{\"event\":\"stop\",\"time\":\"{T0}\"}}\nnot json").unwrap();
    let before = std::fs::read(&pic_html).unwrap();
    let (status, _, stderr) =
        report(&[bad.to_str().unwrap(), "--html", pic_html.to_str().unwrap()]);
    refused(status, &stderr);
    assert!(stderr.contains("line 2"), "{stderr}");
    assert_eq!(std::fs::read(&pic_html).unwrap(), before);
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
