//! The pictures: a Perfetto trace read back by Perfetto's own protos (the
//! `perfetto` PyPI package) and an HTML page opened in headless Chromium,
//! both for a scripted workload whose namespaces the kernel names.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use nstrace_tests::*;
use serde_json::Value;

/// What the workload made, as the kernel named it.
struct Workload {
    net: u64,
    netns_name: String,
    uts: u64,
    ipc: u64,
    nsload_pid: u32,
}

fn ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

/// `ip netns add` (created, then pinned by its bind mount), `ip netns exec`
/// (a join), `ip netns delete` (its end), `unshare -u -i` (two namespaces
/// in one call, gone at once), and a setns the kernel refuses.
fn workload(tracer: &Tracer) -> Workload {
    let netns_name = format!("nstrace-pic-{}", std::process::id());
    ok(Command::new("ip").args(["netns", "add", &netns_name]));
    let net = std::fs::metadata(format!("/run/netns/{netns_name}"))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    tracer.wait_for(1, |r| is(r, "pinned", "net", net));
    ok(Command::new("ip").args(["netns", "exec", &netns_name, "true"]));
    // Held by its bind mount again before the delete, which is then its end.
    std::thread::sleep(Duration::from_millis(300));
    ok(Command::new("ip").args(["netns", "delete", &netns_name]));
    tracer.wait_for(1, |r| is(r, "destroy", "net", net));

    let g = Group::spawn(&["unshare", "-u", "-i", "sleep", "30"]);
    let uts = wait_ns_changed(g.pid(), "uts");
    let ipc = ns_inode(g.pid(), "ipc");
    drop(g);
    tracer.wait_for(1, |r| is(r, "destroy", "ipc", ipc));

    let mut bad = Group::spawn(&[load_bin().to_str().unwrap(), "setns-not-ns"]);
    assert_eq!(bad.read_line(), format!("errno {}", libc::EINVAL));
    let nsload_pid = bad.pid();
    bad.wait();
    tracer.wait_for_pid(1, nsload_pid);
    Workload {
        net,
        netns_name,
        uts,
        ipc,
        nsload_pid,
    }
}

fn python() -> PathBuf {
    let cache =
        std::env::var_os("NSTRACE_CACHE").map_or("/var/cache/nstrace".into(), PathBuf::from);
    let python = cache.join("python/bin/python3");
    assert!(
        python.exists(),
        "{} missing: run `cargo xtask setup` (it makes the environment with the perfetto package)",
        python.display()
    );
    python
}

/// The trace as Perfetto's protos read it: `{"tracks": [...], "events": [...]}`.
fn perfetto_dump(path: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/perfetto_dump.py");
    let out = Command::new(python())
        .arg(script)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "Perfetto's protos did not read {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The track named `name` whose life slice says it was created by `pid`:
/// on a busy machine an inode is soon reused by another namespace.
fn track<'a>(dump: &'a Value, name: &str, pid: u64) -> &'a Value {
    let found: Vec<&Value> = dump["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == name)
        .filter(|t| {
            events_on(dump, t).first().is_some_and(|life| {
                life["annotations"]["created by"]
                    .as_str()
                    .is_some_and(|by| by.ends_with(&format!("(pid {pid})")))
            })
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "tracks named {name} created by {pid}: {found:?}"
    );
    found[0]
}

/// The pid that created the workload's namespace, from its create record
/// (its command is `comm`: the inode may have been another namespace's a
/// moment before, on a busy machine).
fn creator(records: &[Value], kind: &str, inode: u64) -> u64 {
    let comm = if kind == "net" { "ip" } else { "unshare" };
    records
        .iter()
        .find(|r| is(r, "create", kind, inode) && r["comm"] == comm)
        .and_then(|r| r["pid"].as_u64())
        .unwrap_or_else(|| panic!("no create of {kind}:[{inode}]"))
}

fn parent<'a>(dump: &'a Value, t: &Value) -> &'a Value {
    dump["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["uuid"] == t["parent"])
        .unwrap_or_else(|| panic!("no parent of {t}"))
}

fn events_on<'a>(dump: &'a Value, t: &Value) -> Vec<&'a Value> {
    dump["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["track"] == t["uuid"])
        .collect()
}

/// The shape of one namespace's track: life slice, `members`, then
/// `pinned` when it was pinned, all closed; and the flow into it starts at
/// an instant on its creator's thread.
fn assert_lane(
    dump: &Value,
    records: &[Value],
    kind: &str,
    inode: u64,
    pinned: bool,
) -> Vec<Value> {
    let title = format!("{kind}:[{inode}]");
    let t = track(dump, &title, creator(records, kind, inode));
    let kinds = parent(dump, t);
    assert_eq!(kinds["name"], format!("{kind} namespaces"));
    assert_eq!(parent(dump, kinds)["name"], "host (no container)");
    let ev = events_on(dump, t);
    let shape: Vec<String> = ev
        .iter()
        .filter(|e| e["type"] != "instant")
        .map(|e| {
            format!(
                "{} {}",
                e["type"].as_str().unwrap(),
                e["name"].as_str().unwrap()
            )
        })
        .collect();
    // The life slice, then phases one after the other, members first and
    // alternating (a join ends a pinned phase); all closed.
    assert_eq!(
        shape.first().map(String::as_str),
        Some(format!("begin {title}").as_str()),
        "{ev:#?}"
    );
    assert_eq!(shape.last().map(String::as_str), Some("end "), "{ev:#?}");
    let phases: Vec<&str> = shape[1..shape.len() - 1]
        .chunks(2)
        .map(|c| {
            assert_eq!(c.get(1).map(String::as_str), Some("end "), "{ev:#?}");
            c[0].strip_prefix("begin ").unwrap()
        })
        .collect();
    assert_eq!(phases.first(), Some(&"members"), "{ev:#?}");
    assert!(phases.windows(2).all(|p| p[0] != p[1]), "{phases:?}");
    assert_eq!(phases.contains(&"pinned"), pinned, "{phases:?}");
    let ts: Vec<u64> = ev.iter().map(|e| e["ts"].as_u64().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
    let life = ev[0];
    let flow = life["terminating_flow_ids"][0].clone();
    assert!(flow.is_u64(), "no flow into {title}: {life}");
    let from: Vec<&Value> = dump["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["flow_ids"].as_array().unwrap().contains(&flow))
        .collect();
    assert_eq!(from.len(), 1, "{from:?}");
    let creator = dump["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["uuid"] == from[0]["track"])
        .unwrap();
    assert!(
        creator["tid"].is_u64(),
        "the flow starts on a thread: {creator}"
    );
    assert_eq!(from[0]["ts"], life["ts"]);
    ev.into_iter().cloned().collect()
}

fn check_perfetto(dump: &Value, w: &Workload, records: &[Value]) {
    let net = assert_lane(dump, records, "net", w.net, true);
    let pinned = net.iter().find(|e| e["name"] == "pinned").unwrap();
    let by = pinned["annotations"]["pinned by"].as_str().unwrap();
    assert!(by.contains(&w.netns_name), "{by}");
    assert_eq!(net[0]["annotations"]["end"], expected_end("pin-released"));
    assert!(
        net.iter()
            .any(|e| e["type"] == "instant" && e["name"] == "setns net by ip"),
        "{net:#?}"
    );
    // The creator's thread track is the create record's pid and comm.
    let create = records
        .iter()
        .find(|r| is(r, "create", "net", w.net) && r["comm"] == "ip")
        .unwrap();
    let t = dump["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tid"] == create["tid"] && t["pid"] == create["pid"])
        .unwrap_or_else(|| panic!("no thread track for {create}"));
    assert_eq!(t["thread_name"], create["comm"]);
    // Two namespaces, one unshare: one instant on unshare's thread, two flows.
    let uts = assert_lane(dump, records, "uts", w.uts, false);
    let ipc = assert_lane(dump, records, "ipc", w.ipc, false);
    let flows = [
        uts[0]["terminating_flow_ids"][0].clone(),
        ipc[0]["terminating_flow_ids"][0].clone(),
    ];
    let call = dump["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["flow_ids"].as_array().unwrap().contains(&flows[0]))
        .unwrap();
    assert_eq!(call["name"], "unshare CLONE_NEWUTS|CLONE_NEWIPC");
    assert!(call["flow_ids"].as_array().unwrap().contains(&flows[1]));
    // The refused setns: an instant on nsload's thread.
    let nsload: Vec<&Value> = dump["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["pid"] == w.nsload_pid && t["tid"].is_u64())
        .collect();
    assert!(
        nsload
            .iter()
            .any(|t| events_on(dump, t).iter().any(|e| e["name"]
                .as_str()
                .unwrap()
                .starts_with("setns failed: EINVAL"))),
        "no refused setns on nsload's thread: {nsload:?}"
    );
}

/// Opens the page in headless Chromium: the DOM after its script ran, and
/// what the browser logged.
fn chromium(page: &Path, extra: &[&str]) -> (String, String) {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--window-size=1400,900",
        ])
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("running chromium (installed by `cargo xtask setup`)");
    assert!(out.status.success(), "{out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check_html(page: &Path, w: &Workload, records: &[Value]) {
    let (dom, log) = chromium(page, &["--dump-dom"]);
    // The script ran to its end, and logged no error.
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page's script did not finish: {log}"
    );
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(
        console.is_empty(),
        "the page logged to the console: {console:?}\n{log}"
    );
    assert!(!log.contains("Uncaught"), "{log}");
    // One lane per namespace of the workload, in the host group.
    for (kind, inode) in [("net", w.net), ("uts", w.uts), ("ipc", w.ipc)] {
        let pid = creator(records, kind, inode);
        let lane = format!(
            "class=\"row lane\" data-kind=\"{kind}\" data-inode=\"{inode}\" data-creator=\"{pid}\""
        );
        assert_eq!(dom.matches(&lane).count(), 1, "{kind}:[{inode}] in {dom}");
    }
    assert!(dom.contains("data-group=\"host\""));
    assert!(
        dom.contains("bar pinned"),
        "the netns's pinned phase is drawn"
    );
    // A screenshot, for a person to look at after a failure.
    let shot = page.with_extension("png");
    chromium(page, &[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        png.len()
    );
}

#[test]
fn perfetto_and_html_live_and_from_a_saved_trace() {
    if !privileged() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("nstrace-pictures-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let saved = dir.join("trace.jsonl");
    let (live_pf, live_html) = (dir.join("live.pftrace"), dir.join("live.html"));
    let tracer = Tracer::start(&[
        "--output",
        saved.to_str().unwrap(),
        "--perfetto",
        live_pf.to_str().unwrap(),
        "--html",
        live_html.to_str().unwrap(),
    ]);
    let w = workload(&tracer);
    std::thread::sleep(Duration::from_millis(200));
    let (status, stderr, records) = tracer.stop_with_records();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("wrote {}", live_pf.display())),
        "{stderr}"
    );

    let (pf, page) = (dir.join("report.pftrace"), dir.join("report.html"));
    let out = Command::new(nstrace_bin())
        .arg("report")
        .arg(&saved)
        .arg("--perfetto")
        .arg(&pf)
        .arg("--html")
        .arg(&page)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    for file in [&live_pf, &pf] {
        check_perfetto(&perfetto_dump(file), &w, &records);
    }
    for file in [&live_html, &page] {
        check_html(file, &w, &records);
    }
}

#[test]
fn a_picture_path_that_cannot_be_written_fails_before_tracing() {
    let out = Command::new(nstrace_bin())
        .args(["--perfetto", "/nonexistent/dir/x.pftrace"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot write /nonexistent/dir/x.pftrace") && err.contains("hint:"),
        "{err}"
    );
    assert!(!err.contains("tracing namespaces"), "{err}");
}

/// The most alive at once of the `kind` namespaces `nsload` made on the
/// host, how many it made, and the inode of the last: computed from the
/// saved trace's own records the way the pictures group them (a create
/// over an inode still open ends the one before).
fn peak_from_trace(trace: &Path, kind: &str) -> (u64, u64, Option<u64>) {
    use std::io::BufRead as _;
    let file = std::io::BufReader::new(std::fs::File::open(trace).unwrap());
    let mut open: std::collections::HashMap<u64, bool> = Default::default();
    let (mut alive, mut peak, mut made, mut last) = (0i64, 0i64, 0u64, None);
    for line in file.lines() {
        let r: Value = serde_json::from_str(&line.unwrap()).unwrap();
        if r["ns_type"] != kind {
            continue;
        }
        let Some(inode) = r["ns_inode"].as_u64() else {
            continue;
        };
        match r["event"].as_str() {
            Some("create") => {
                if open.remove(&inode) == Some(true) {
                    alive -= 1;
                }
                let mine = r["comm"] == "nsload"
                    && r["container"].is_null()
                    && r["ns_container"].is_null();
                open.insert(inode, mine);
                if mine {
                    alive += 1;
                    made += 1;
                    peak = peak.max(alive);
                    last = Some(inode);
                }
            }
            Some("destroy") if open.remove(&inode) == Some(true) => alive -= 1,
            _ => {}
        }
    }
    (peak as u64, made, last)
}

/// Elements in a dumped DOM: its start tags.
fn elements(dom: &str) -> usize {
    dom.as_bytes()
        .windows(2)
        .filter(|w| w[0] == b'<' && w[1].is_ascii_alphabetic())
        .count()
}

/// The attribute `name` of the element whose start tag holds `anchor`.
fn attr(dom: &str, anchor: &str, name: &str) -> Option<String> {
    let at = dom.find(anchor)?;
    let tag = &dom[at..at + dom[at..].find('>')?];
    let from = tag.find(&format!("{name}=\""))? + name.len() + 2;
    Some(tag[from..from + tag[from..].find('"')?].to_string())
}

#[test]
fn a_churn_of_25000_children_draws_as_groups_in_both_viewers() {
    if !privileged() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("nstrace-crowd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let saved = dir.join("trace.jsonl");
    // stdout (which the harness keeps in memory) gets almost nothing; the
    // file gets every record.
    let tracer = Tracer::start(&["--output", saved.to_str().unwrap(), "--type", "time"]);
    let mut churn = Group::spawn(&[load_bin().to_str().unwrap(), "churn", "25000"]);
    assert!(churn.wait().success());
    std::thread::sleep(Duration::from_millis(500));
    let (status, stderr) = tracer.stop();
    assert!(status.success(), "{stderr}");

    let (pf, page) = (dir.join("crowd.pftrace"), dir.join("crowd.html"));
    let out = Command::new(nstrace_bin())
        .arg("report")
        .arg(&saved)
        .arg("--perfetto")
        .arg(&pf)
        .arg("--html")
        .arg(&page)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    for kind in ["uts", "ipc"] {
        let (peak, made, _) = peak_from_trace(&saved, kind);
        assert!(made >= 25_000, "{kind}: {made}");
        // The page: one row for the crowd, its count and peak the trace's.
        let (dom, log) = chromium(&page, &["--dump-dom"]);
        assert!(dom.contains("data-ready=\"1\""), "{log}");
        let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
        assert!(console.is_empty(), "{console:?}\n{log}");
        assert!(!log.contains("Uncaught"), "{log}");
        let n = elements(&dom);
        assert!(n <= 5_000, "{n} elements at first paint");
        let row = format!("class=\"row agg\" data-kind=\"{kind}\" data-comm=\"nsload\"");
        assert_eq!(dom.matches(&row).count(), 1, "one {kind} row of nsload's");
        assert_eq!(attr(&dom, &row, "data-count"), Some(made.to_string()));
        assert_eq!(attr(&dom, &row, "data-peak"), Some(peak.to_string()));
        // Perfetto: a counter track of the crowd, with the same peak.
        let dump = perfetto_dump(&pf);
        let name = format!("alive {kind} namespaces of nsload");
        let counters: Vec<&Value> = dump["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["name"] == name && t["counter"] == true)
            .collect();
        assert_eq!(counters.len(), 1, "{name}");
        let top = events_on(&dump, counters[0])
            .iter()
            .filter_map(|e| e["value"].as_u64())
            .max();
        assert_eq!(top, Some(peak), "{name}");
        let kind_track = parent(&dump, parent(&dump, counters[0]));
        assert_eq!(kind_track["name"], format!("{kind} namespaces"));
        // Not one track per namespace.
        let tracks = dump["tracks"].as_array().unwrap().len();
        assert!(tracks < 5_000, "{tracks} tracks");
    }

    // Searching a reused inode shows its lanes, told apart by their ids.
    let (_, _, last) = peak_from_trace(&saved, "uts");
    let inode = last.unwrap();
    let url = format!("{}#search={inode}", page.display());
    let (dom, log) = chromium(Path::new(&url), &["--dump-dom"]);
    assert!(dom.contains("data-ready=\"1\""), "{log}");
    let lane = format!("data-kind=\"uts\" data-inode=\"{inode}\"");
    let ids: std::collections::BTreeSet<String> = dom
        .match_indices(&lane)
        .filter_map(|(i, _)| attr(&dom[i..], &lane, "data-ns-id"))
        .collect();
    assert!(
        ids.len() >= 2,
        "uts:[{inode}] was reused, its lanes have ids: {ids:?}"
    );
    assert!(
        dom.contains(&format!("uts:[{inode}] id ")),
        "labels show ids"
    );

    // A screenshot at 1400x900, for a person to look at.
    let shot = dir.join("crowd.png");
    chromium(&page, &[&format!("--screenshot={}", shot.display())]);
    assert!(std::fs::read(&shot).unwrap().starts_with(b"\x89PNG"));
    let _ = std::fs::remove_file(&saved);
}

/// Resident memory of process `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"))
}

#[test]
fn live_pictures_of_a_long_churn_keep_bounded_detail() {
    if !privileged() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("nstrace-live-crowd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (saved, page, pf) = (
        dir.join("trace.jsonl"),
        dir.join("live.html"),
        dir.join("live.pftrace"),
    );
    // Hundreds of thousands of records: stdout is thrown away, the saved
    // trace has them.
    let tracer = Tracer::start_discarding(&[
        "--output",
        saved.to_str().unwrap(),
        "--html",
        page.to_str().unwrap(),
        "--perfetto",
        pf.to_str().unwrap(),
    ]);
    let churn = |n: &str| {
        let mut g = Group::spawn(&[load_bin().to_str().unwrap(), "churn", n]);
        assert!(g.wait().success());
        std::thread::sleep(Duration::from_millis(500));
    };
    // 20,000 namespaces: past the window of detail (10,000) already.
    churn("5000");
    let before = rss_kib(tracer.pid());
    // 100,000 more: kept one by one, they would be tens of MiB.
    churn("25000");
    let after = rss_kib(tracer.pid());
    let (status, stderr) = tracer.stop();
    assert!(status.success(), "{stderr}");
    eprintln!("live pictures: RSS {before} KiB after 20,000 namespaces, {after} KiB after 120,000");
    assert!(
        after < before + 8 * 1024,
        "the live pictures grew from {before} KiB to {after} KiB over 100,000 namespaces"
    );

    // The page has every namespace in its crowd's count, the trace's peak,
    // and says that older detail was dropped.
    let (peak, made, _) = peak_from_trace(&saved, "uts");
    assert!(made >= 60_000, "{made}");
    let (dom, log) = chromium(&page, &["--dump-dom"]);
    assert!(dom.contains("data-ready=\"1\""), "{log}");
    let row = "class=\"row agg\" data-kind=\"uts\" data-comm=\"nsload\"";
    assert_eq!(attr(&dom, row, "data-count"), Some(made.to_string()));
    assert_eq!(attr(&dom, row, "data-peak"), Some(peak.to_string()));
    assert!(
        dom.contains("older ones are in their groups' counts only"),
        "the page says detail was dropped"
    );
    assert!(elements(&dom) <= 5_000);
    // Perfetto: the crowd's counter, not one track per namespace.
    let dump = perfetto_dump(&pf);
    let tracks = dump["tracks"].as_array().unwrap();
    assert!(tracks.len() < 5_000, "{} tracks", tracks.len());
    assert!(
        tracks
            .iter()
            .any(|t| t["name"] == "alive uts namespaces of nsload" && t["counter"] == true)
    );
    let _ = std::fs::remove_file(&saved);
}
