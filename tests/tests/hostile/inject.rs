//! Inject: what a process names itself and the paths it mounts reach the
//! operator's terminal and the HTML page. Escape sequences (CSI, OSC, C1,
//! bidi overrides) in command names and nsfs mount paths must show escaped
//! in the timeline, the closing summary, `nstrace ls` and `nstrace report`,
//! never raw; markup in them must leave the page whole (every lane drawn)
//! and run nothing. (Failure messages quote output with `{:?}`: a failing
//! run must not drive the terminal of whoever reads the test log either.)

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use nstrace_tests::*;
use serde_json::Value;

/// The attacker's perl: names itself HEX (hex-coded bytes) through
/// /proc/self/comm, says its pid, makes a user namespace, stays SECONDS.
const NAMED_UNSHARE: &str = r#"
open my $f, '>', "/proc/self/comm" or die "comm: $!";
print $f pack("H*", $ARGV[0]); close $f;
$| = 1; print "$$\n";
syscall(272, 0x10000000) == 0 or die "unshare: $!";
sleep $ARGV[1];
"#;

/// A directory nobody can read and run scripts from, and write into.
fn workdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nstrace-inject-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(dir.join("named.pl"), NAMED_UNSHARE).unwrap();
    dir
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// `s` as one word for sh (single quotes; control bytes stay as they are).
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A process named `comm` (at most 15 bytes: the kernel's limit) that makes
/// a user namespace and lives `seconds`; its pid once it said it.
fn named(dir: &Path, comm: &str, seconds: u32) -> (Group, u32) {
    assert!(comm.len() <= 15, "{comm:?} would be cut");
    let mut g = as_nobody(&format!(
        "exec perl {}/named.pl {} {seconds}",
        dir.display(),
        hex(comm)
    ));
    let line = g.read_line();
    let pid = line
        .parse()
        .unwrap_or_else(|_| panic!("the attacker said {line:?}"));
    (g, pid)
}

/// An nsfs bind mount at DIR/uts, DIR carrying whatever the attacker likes:
/// in a user and mount namespace of nobody's own, a uts namespace bound
/// there and left, so that only the mount holds it, for `seconds`. Returns
/// the group, and the uts namespace's inode once the mount is in place.
fn pinned_at(dir: &str, seconds: u32) -> (Group, u64) {
    let script = format!(
        r#"d={}; exec unshare -Urm sh -c 'mkdir -p "$1" && touch "$1/uts" && unshare -u sh -c "mount --bind /proc/self/ns/uts \"\$1/uts\"" _ "$1" && echo ready && exec sleep {seconds}' _ "$d""#,
        sh_quote(dir)
    );
    let mut g = as_nobody(&script);
    assert_eq!(
        g.read_line(),
        "ready",
        "the attacker could not mount at {dir:?}"
    );
    // The mount is in the attacker's mount namespace: seen through its root.
    let pin = format!("/proc/{}/root{dir}/uts", g.pid());
    let inode = std::fs::metadata(&pin)
        .unwrap_or_else(|e| panic!("{pin:?}: {e}"))
        .ino();
    (g, inode)
}

/// What must never reach a terminal raw: C0 controls but the newline, DEL,
/// C1 controls, bidi embeddings, overrides and isolates, zero-width and
/// line/paragraph separators.
fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| {
            (c.is_control() && c != '\n')
                || matches!(
                    c,
                    '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
                )
        })
        .collect()
}

fn assert_inert(what: &str, text: &str) {
    let raw = raw_controls(text);
    assert!(raw.is_empty(), "{what} holds raw {raw:?}:\n{text:?}");
}

/// The first timeline line for which `pred` holds, within 10 s.
fn wait_line(t: &Tracer, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = t.lines().into_iter().find(|l| pred(l)) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no line with {what}:\n{:#?}\nstderr: {:?}",
            t.lines(),
            t.stderr()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn nstrace(args: &[&str]) -> (String, String) {
    let out = Command::new(nstrace_bin()).args(args).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "nstrace {args:?}: {stderr:?}");
    (stdout, stderr)
}

#[test]
fn escapes_in_command_names_show_escaped_in_the_timeline_summary_and_report() {
    if !privileged() {
        return;
    }
    let dir = workdir("comm");
    let saved = dir.join("trace.jsonl");
    let t = Tracer::start_text(&["--output", saved.to_str().unwrap()]);
    // (what the process is named, how the timeline must show it)
    let attacks = [
        // Clear the screen, set the window title (OSC), ring the bell.
        ("\x1b[2J\x1b]0;pwned\x07", r"\e[2J\e]0;pwned\x07"),
        // C1 CSI and NEL, a right-to-left override, DEL.
        ("\u{9b}2J\u{202e}\u{85}\x7f", r"\u{9b}2J\u{202e}\u{85}\x7f"),
        // Up a line, erase it, back to its start.
        ("\x1b[1A\x1b[2K\rok", r"\e[1A\e[2K\rok"),
    ];
    // The first stays alive through the summary: a possible leak, named.
    let mut procs = Vec::new();
    for (i, (comm, _)) in attacks.iter().enumerate() {
        procs.push(named(&dir, comm, if i == 0 { 30 } else { 1 }));
    }
    // The name the kernel takes from the file run: a symlink to unshare.
    let exec_name = "\x1b[2J\x1b]2;x\x07";
    let (status, out, err) = run_as_nobody(&format!(
        "d={}/exec && mkdir $d && ln -s /usr/bin/unshare \"$d\"/{} && echo $$ && exec \"$d\"/{} -U true",
        dir.display(),
        sh_quote(exec_name),
        sh_quote(exec_name)
    ));
    assert!(status.success(), "{err:?}");
    let exec_pid: u32 = out.trim().parse().unwrap();

    let mut shown = Vec::new();
    for ((_, escaped), (_, pid)) in attacks.iter().zip(&procs) {
        shown.push((*pid, *escaped));
    }
    shown.push((exec_pid, r"\e[2J\e]2;x\x07"));
    for &(pid, escaped) in &shown {
        let actor = format!(" {pid}/{pid} ");
        let l = wait_line(&t, &format!("the create of {pid}"), |l| {
            l.contains(&actor) && l.contains(" create  user ")
        });
        assert!(
            l.contains(&format!(" {escaped} ")),
            "{escaped} not in {l:?}"
        );
    }
    // Ended ones (reaped: a zombie's credentials still hold its user
    // namespace) are named again by their destroy.
    for (g, _) in &mut procs[1..] {
        g.wait();
    }
    for &(pid, escaped) in &shown[1..] {
        let by = format!("created by {escaped} (pid {pid}, unshare)");
        wait_line(&t, &by, |l| l.contains(" destroy user ") && l.contains(&by));
    }
    // (The harness keeps the timeline's lines until the tracer stops.)
    assert_inert("the timeline", &t.lines().join("\n"));
    let (status, stderr) = t.stop();
    assert!(status.success(), "{stderr:?}");
    assert_inert("the tracer's stderr", &stderr);
    let leak = format!("by {} (pid {}, unshare)", shown[0].1, shown[0].0);
    assert!(
        stderr.contains(&leak),
        "the summary does not name the live attacker: {stderr:?}"
    );
    drop(procs);

    // The saved trace is exact (JSON escapes), and its report inert.
    let trace = std::fs::read_to_string(&saved).unwrap();
    assert!(trace.contains(r#""comm":"\u001b[2J\u001b]0;pwned\u0007""#));
    let (out, err) = nstrace(&["report", saved.to_str().unwrap()]);
    assert_inert("report's output", &out);
    assert_inert("report's stderr", &err);
    assert!(out.contains(&leak), "{out:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn escapes_in_a_mount_path_show_escaped_in_pins_ls_and_the_summary() {
    if !privileged() {
        return;
    }
    let dir = workdir("mount");
    let t = Tracer::start_text(&[]);
    // A path clearing the screen and setting the title, with a tab (the
    // kernel writes it \011 in mountinfo) and a C1 CSI.
    let at = format!("{}/\x1b[2J\x1b]0;pin\x07/x\ty\u{9b}z", dir.display());
    let (g, uts) = pinned_at(&at, 30);
    let shown = [r"\e[2J\e]0;pin\x07/x", r"y\u{9b}z/uts"];
    // The tab decoded from mountinfo's \011, then escaped for the terminal.
    let tab_shown = |l: &str| l.contains(r"x\ty");
    let pinned = wait_line(&t, &format!("the pin of uts {uts}"), |l| {
        l.contains(" pinned  uts ") && l.contains(&format!(" {uts} "))
    });
    for part in shown {
        assert!(pinned.contains(part), "{part} not in {pinned:?}");
    }
    assert!(tab_shown(&pinned), "{pinned:?}");

    // `ls` while the pin holds it: the table and the tree name the mount.
    let (table, err) = nstrace(&["ls"]);
    assert_inert("ls", &table);
    assert_inert("ls's stderr", &err);
    let row = table
        .lines()
        .find(|l| l.starts_with(&format!("{uts} ")))
        .unwrap_or_else(|| panic!("no row of uts {uts} in {table:?}"));
    assert!(
        row.contains("mount ") && shown.iter().all(|p| row.contains(p)),
        "{row:?}"
    );
    assert!(tab_shown(row), "{row:?}");
    let (tree, _) = nstrace(&["ls", "--tree"]);
    assert_inert("ls --tree", &tree);
    let node = tree
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("uts {uts} ")))
        .unwrap_or_else(|| panic!("no uts {uts} in {tree:?}"));
    assert!(shown.iter().all(|p| node.contains(p)), "{node:?}");
    // JSON stays exact: the path as the kernel has it.
    let (json, _) = nstrace(&["ls", "--json"]);
    let v: Value = serde_json::from_str(&json).unwrap();
    let ns = v["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["type"] == "uts" && n["ns"] == uts)
        .unwrap_or_else(|| panic!("no uts {uts} in {json}"));
    let mount = ns["mounts"][0].as_str().unwrap();
    assert_eq!(mount, format!("{at}/uts"));

    // Still pinned when tracing stops: a possible leak, its holder named.
    assert_inert("the timeline", &t.lines().join("\n"));
    let (status, stderr) = t.stop();
    assert!(status.success(), "{stderr:?}");
    assert_inert("the tracer's stderr", &stderr);
    let leak = stderr
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("uts {uts} ")))
        .unwrap_or_else(|| panic!("uts {uts} is not in the summary: {stderr:?}"));
    assert!(
        leak.contains("held by mount ") && shown.iter().all(|p| leak.contains(p)),
        "{leak:?}"
    );
    drop(g);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Headless Chromium's DOM of `page` after its script ran, and its log.
fn chromium_dom(page: &Path) -> (String, String) {
    let profile = page.with_extension("profile");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("running chromium (installed by `cargo xtask setup`)");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(out.status.success(), "{out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `text` as the DOM serialises it in an element's text.
fn as_dom_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The page drew every namespace (as a lane, or counted in a crowd's
/// row), ran to its end, and ran nothing of the attacker's; the lanes of `made` (kind, inode, creator pid) are there,
/// and each of `names` is shown as text.
fn check_page(page: &Path, made: &[(&str, u64, Option<u32>)], names: &[String]) {
    let (dom, log) = chromium_dom(page);
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page's script did not finish: {log}\n{dom}"
    );
    assert!(!log.contains("Uncaught"), "{log}");
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(console.is_empty(), "the page logged: {console:?}");
    // Nothing the attacker's markup would have made.
    for injected in ["data-pwned", "<img", "alert(1)</script>", "<!--<script"] {
        assert!(!dom.contains(injected), "{injected} in the DOM: {dom}");
    }
    // Every lane: as many rows as the heading counts namespaces.
    let heading = dom
        .split("<h1 id=\"title\">nstrace timeline: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no namespace count in the heading: {dom}"));
    assert!(heading > 0);
    // Each counted once: as a lane of its own, or in a crowd's row (a busy
    // machine's many short-lived ones; their lanes that matter are drawn
    // beneath it as detail, counted by the row).
    let crowds: usize = dom
        .match_indices("class=\"row agg\"")
        .map(|(i, _)| {
            let tag = &dom[i..i + dom[i..].find('>').unwrap()];
            let (_, count) = tag.split_once("data-count=\"").unwrap();
            count.split('"').next().unwrap().parse::<usize>().unwrap()
        })
        .sum();
    assert_eq!(
        dom.matches("class=\"row lane\"").count() + crowds,
        heading,
        "{dom}"
    );
    for &(kind, inode, creator) in made {
        let lane = match creator {
            Some(pid) => format!(
                "class=\"row lane\" data-kind=\"{kind}\" data-inode=\"{inode}\" data-creator=\"{pid}\""
            ),
            None => format!("class=\"row lane\" data-kind=\"{kind}\" data-inode=\"{inode}\""),
        };
        assert!(dom.contains(&lane), "no lane {lane} in {dom}");
    }
    for name in names {
        assert!(
            dom.contains(&as_dom_text(name)),
            "{name:?} not shown as text in {dom}"
        );
    }
}

#[test]
fn markup_in_names_and_mount_paths_leaves_the_page_whole_and_runs_nothing() {
    if !privileged() {
        return;
    }
    let dir = workdir("html");
    let (saved, live) = (dir.join("trace.jsonl"), dir.join("live.html"));
    let t = Tracer::start(&[
        "--output",
        saved.to_str().unwrap(),
        "--html",
        live.to_str().unwrap(),
    ]);
    // Names that end the script, comment it out, or open markup.
    let comms = ["<!--<script>", "&lt;", "</script><scri", "<img src=x>"];
    let mut made = Vec::new();
    let mut names = Vec::new();
    let mut procs = Vec::new();
    for comm in comms {
        let (g, pid) = named(&dir, comm, 1);
        let r = t.wait_for(1, |r| {
            r["event"] == "create" && r["ns_type"] == "user" && r["pid"] == pid
        });
        assert_eq!(r[0]["comm"], comm);
        made.push(("user", r[0]["ns_inode"].as_u64().unwrap(), Some(pid)));
        names.push(format!("{comm} ({pid})"));
        procs.push(g);
    }
    // A pin whose path is the rest: a script that runs, an element with a
    // handler, a comment opened.
    let at = format!(
        "{}/</script><script>alert(1)</script><script>document.body.dataset.pwned=1</script>/<img src=x onerror=document.body.dataset.pwned=2>/<!--",
        dir.display()
    );
    let (g, uts) = pinned_at(&at, 30);
    t.wait_for(1, |r| {
        r["event"] == "pinned"
            && r["ns_type"] == "uts"
            && r["ns_inode"] == uts
            && r["pinned_by"][0]
                .as_str()
                .is_some_and(|p| p.contains("<!--/uts"))
    });
    made.push(("uts", uts, None));
    for g in &mut procs {
        g.wait();
    }
    let (status, stderr) = t.stop();
    assert!(status.success(), "{stderr:?}");
    drop(g);
    assert!(
        stderr.contains(&format!("wrote {}", live.display())),
        "{stderr:?}"
    );
    check_page(&live, &made, &names);

    let page = dir.join("report.html");
    nstrace(&[
        "report",
        saved.to_str().unwrap(),
        "--html",
        page.to_str().unwrap(),
    ]);
    check_page(&page, &made, &names);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn errors_quoting_a_path_or_a_saved_trace_are_escaped() {
    if !privileged() {
        return;
    }
    let dir = workdir("errors");
    // A path that is not there, named with escapes.
    let missing = dir.join("\x1b[2J\x1b]0;gone\x07");
    let out = Command::new(nstrace_bin())
        .arg("report")
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_inert("the error", &err);
    assert!(err.contains(r"\e[2J\e]0;gone\x07"), "{err:?}");
    // A foreign trace with escapes where the reader quotes it.
    let trace = dir.join("foreign.jsonl");
    std::fs::write(
        &trace,
        "{\"time\":\"2026-01-01T00:00:00Z\",\"event\":\"\\u001b[2J\\u001b]0;x\\u0007\"}\n",
    )
    .unwrap();
    let out = Command::new(nstrace_bin())
        .arg("report")
        .arg(&trace)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_inert("the error", &err);
    assert!(err.contains("line 1"), "{err:?}");
    // A picture path that cannot be written, named with escapes.
    let bad = dir.join("no\x1b[2Jdir/x.html");
    let out = Command::new(nstrace_bin())
        .arg("--html")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_inert("the error", &err);
    assert!(err.contains(r"no\e[2Jdir/x.html"), "{err:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
