//! Harness for the privileged end-to-end tests: start the real `nstrace`
//! binary, cause real namespace operations, and read ground truth from
//! `/proc/PID/ns`.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod containers;

/// True when the tests can load BPF programs. Otherwise says why the test is
/// skipped, so a developer's plain `cargo test` passes with a clear message.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    // `cargo xtask test` sets it: there a skipped test would pass unseen.
    if std::env::var_os("NSTRACE_REQUIRE_ROOT").is_some_and(|v| v == "1") {
        panic!(
            "NSTRACE_REQUIRE_ROOT=1: this end-to-end test needs root, and would have been skipped"
        );
    }
    eprintln!(
        "skipping: this end-to-end test loads eBPF programs and needs root; run `cargo xtask test` as root"
    );
    false
}

/// The release binary under test: `NSTRACE_BIN`, else the workspace's target/release.
pub fn nstrace_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NSTRACE_BIN") {
        return p.into();
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/nstrace");
    assert!(
        p.exists(),
        "{} not found: build it with `cargo build --release -p nstrace` or set NSTRACE_BIN",
        p.display()
    );
    p
}

/// What `cargo xtask dist` wrote (`NSTRACE_DIST`, else target/dist), if it
/// did; `cargo xtask test` always writes it first.
pub fn dist_dir() -> Option<PathBuf> {
    let p = std::env::var_os("NSTRACE_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dist"));
    if p.join("nstrace").exists() {
        Some(p)
    } else {
        eprintln!(
            "skipping: {} has no nstrace; run `cargo xtask dist`",
            p.display()
        );
        None
    }
}

/// The `nshelper` binary cargo built beside the test executables
/// (tests run from target/PROFILE/deps/).
pub fn helper_bin() -> PathBuf {
    sibling_bin("nshelper")
}

/// The `nsload` workload binary (see tests/src/bin/nsload.rs).
pub fn load_bin() -> PathBuf {
    sibling_bin("nsload")
}

fn sibling_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join(name);
    assert!(p.exists(), "{} not found", p.display());
    p
}

/// Ids of loaded BPF programs, from `bpftool prog list -j`.
pub fn program_ids() -> Vec<u64> {
    let out = Command::new("bpftool")
        .args(["prog", "list", "-j"])
        .output()
        .expect("bpftool (installed by `cargo xtask setup`)");
    let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect()
}

const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// `NSTRACE_PROBE_MODE` (tracepoint, fentry or auto; default auto).
pub fn probe_mode() -> String {
    std::env::var("NSTRACE_PROBE_MODE").unwrap_or_else(|_| "auto".into())
}

/// The `end` a destroy record carries: with fentry the kernel's free path is
/// the witness, whatever the tracepoint mode would have concluded.
pub fn expected_end(tracepoint_end: &str) -> &str {
    if probe_mode() == "fentry" {
        "kernel-freed"
    } else {
        tracepoint_end
    }
}

/// The kinds this kernel has, as `/proc/self/ns` names them.
pub fn kernel_kinds() -> Vec<String> {
    let mut kinds: Vec<String> = std::fs::read_dir("/proc/self/ns")
        .expect("/proc/self/ns")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.ends_with("_for_children"))
        .collect();
    kinds.sort();
    kinds
}

/// The method each kind's ends must be decided by, as the start record
/// must name it: fentry wherever the tracer hooks the free path (every
/// kernel of the matrix has a free function for each kind, 5.10's uts, ipc
/// and time included), else nsfs handles where the kernel has them (6.18+),
/// else inference.
pub fn expected_method(tracer: &Tracer, kind: &str, no_fentry_for: &[&str]) -> &'static str {
    let fentry = tracer.stderr().contains("with tracepoints + fentry");
    if fentry && !no_fentry_for.contains(&kind) {
        "fentry"
    } else if KernelJudge::new().is_some() {
        "nsfs-handle"
    } else {
        "inference"
    }
}

/// The `start` line's `ends_by_kind` (kind → method).
pub fn ends_by_kind(tracer: &Tracer) -> BTreeMap<String, String> {
    // The start line follows the start-up line on stderr, by a moment.
    let deadline = Instant::now() + DEFAULT_WAIT;
    let start = loop {
        let found = tracer.lines().iter().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["event"] == "start").then_some(v)
        });
        match found {
            Some(v) => break v,
            None if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            None => panic!("no start line: {:?}", tracer.lines()),
        }
    };
    start["ends_by_kind"]
        .as_object()
        .unwrap_or_else(|| panic!("no ends_by_kind in {start}"))
        .iter()
        .map(|(k, m)| (k.clone(), m.as_str().unwrap_or_default().to_string()))
        .collect()
}

/// Tests that trace hold this: they compare against the whole machine's
/// activity and BPF program list, so a plain `cargo test` (threads in
/// parallel) must not run two at once.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// What a [`Tracer`] does with nstrace's stdout.
enum Stdout {
    /// `--json`, every record kept.
    Json,
    /// The text timeline, every line kept.
    Text,
    /// `--json`, thrown away.
    Discard,
}

/// A running tracer whose stdout (JSON Lines) and stderr are collected.
pub struct Tracer {
    _turn: Option<std::sync::MutexGuard<'static, ()>>,
    /// Unfiltered JSON: every end is in the stream, so the kernel can judge it.
    judged: bool,
    child: Option<Child>,
    records: Arc<Mutex<Vec<Value>>>,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Tracer {
    /// Starts `nstrace --json ARGS` and waits until it says it is tracing.
    pub fn start(args: &[&str]) -> Tracer {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        Self::start_with(Some(turn), Stdout::Json, args)
    }

    /// Starts another nstrace, `program` (a binary, or a command that runs
    /// one, such as `docker run ... IMAGE`), with `--json ARGS`, beside
    /// `_first`, which holds the turn.
    pub fn start_program_also(_first: &Tracer, program: &[&str], args: &[&str]) -> Tracer {
        Self::start_program(None, program, Stdout::Json, args)
    }

    /// A second tracer beside `_first`, which already holds the turn.
    pub fn start_also(_first: &Tracer, args: &[&str]) -> Tracer {
        Self::start_with(None, Stdout::Json, args)
    }

    /// Starts nstrace with the text timeline.
    pub fn start_text(args: &[&str]) -> Tracer {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        Self::start_with(Some(turn), Stdout::Text, args)
    }

    /// Starts `nstrace --json ARGS` with its stdout thrown away, for runs
    /// that print hundreds of thousands of records (every line would be
    /// kept here otherwise): the test reads what ARGS write to files. Not
    /// judged by the kernel (no records to judge).
    pub fn start_discarding(args: &[&str]) -> Tracer {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        Self::start_with(Some(turn), Stdout::Discard, args)
    }

    fn start_with(
        turn: Option<std::sync::MutexGuard<'static, ()>>,
        stdout: Stdout,
        args: &[&str],
    ) -> Tracer {
        let bin = nstrace_bin();
        let bin = bin.to_str().expect("a UTF-8 path");
        Self::start_program(turn, &[bin], stdout, args)
    }

    fn start_program(
        turn: Option<std::sync::MutexGuard<'static, ()>>,
        program: &[&str],
        stdout: Stdout,
        args: &[&str],
    ) -> Tracer {
        let json = !matches!(stdout, Stdout::Text);
        let mut cmd = Command::new(program[0]);
        cmd.args(&program[1..]);
        if json {
            cmd.arg("--json");
        }
        // The VM matrix runs every scenario once per probe mode.
        if !args.iter().any(|a| a.starts_with("--probe-mode")) {
            cmd.arg(format!("--probe-mode={}", probe_mode()));
        }
        let discard = matches!(stdout, Stdout::Discard);
        let mut child = cmd
            .args(args)
            .stdout(if discard {
                Stdio::null()
            } else {
                Stdio::piped()
            })
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning nstrace");
        let records = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(out) = child.stdout.take() {
            let (records, lines) = (records.clone(), lines.clone());
            thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if json {
                        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                            panic!("nstrace printed invalid JSON ({e}): {line}")
                        });
                        // The start and stop lines frame the records; tests
                        // that want them read `lines()`.
                        if v["event"] != "start" && v["event"] != "stop" {
                            records.lock().unwrap().push(v);
                        }
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let mut err = child.stderr.take().unwrap();
        {
            let stderr = stderr.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    stderr
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let mut tracer = Tracer {
            _turn: turn,
            judged: matches!(stdout, Stdout::Json)
                && args.iter().all(|a| a.starts_with("--probe-mode")),
            child: Some(child),
            records,
            lines,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        // The whole start-up line: tests read what it says (a slow guest
        // once gave them half of it).
        let started = |e: &str| {
            e.find("tracing namespaces")
                .is_some_and(|i| e[i..].contains('\n'))
        };
        while !started(&tracer.stderr()) {
            if Instant::now() > deadline {
                panic!("nstrace did not start: {}", tracer.stderr());
            }
            if let Some(status) = tracer.child.as_mut().unwrap().try_wait().unwrap() {
                thread::sleep(Duration::from_millis(100));
                panic!("nstrace exited early ({status}): {}", tracer.stderr());
            }
            thread::sleep(Duration::from_millis(20));
        }
        tracer
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// All records so far.
    pub fn records(&self) -> Vec<Value> {
        self.records.lock().unwrap().clone()
    }

    /// All text lines so far (either format).
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until at least `n` records satisfy `pred`, and returns those.
    pub fn wait_for(&self, n: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.wait_for_within(DEFAULT_WAIT, n, pred)
    }

    /// [`Tracer::wait_for`] with its own deadline (for large workloads).
    pub fn wait_for_within(
        &self,
        wait: Duration,
        n: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + wait;
        loop {
            let found: Vec<Value> = self.records().into_iter().filter(|r| pred(r)).collect();
            if found.len() >= n || Instant::now() > deadline {
                assert!(
                    found.len() >= n,
                    "expected {n} matching records, got {}: {found:#?}\nall records: {:#?}\nstderr: {}",
                    found.len(),
                    self.records(),
                    self.stderr()
                );
                return found;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Records of process `pid`, once at least `n` have arrived.
    pub fn wait_for_pid(&self, n: usize, pid: u32) -> Vec<Value> {
        self.wait_for(n, |r| r["pid"] == pid)
    }

    /// Sends `signal`, waits for exit, returns its status and stderr.
    /// An unfiltered JSON trace is first judged by the kernel ([`judge_ends`]).
    pub fn stop_with(mut self, signal: i32) -> (ExitStatus, String) {
        if self.judged && signal == libc::SIGINT {
            judge_ends(&self);
        }
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("nstrace did not exit after signal {signal}");
            }
            thread::sleep(Duration::from_millis(20));
        };
        // Let the reader threads take the last output.
        thread::sleep(Duration::from_millis(100));
        (status, self.stderr())
    }

    /// Ctrl-C.
    pub fn stop(self) -> (ExitStatus, String) {
        self.stop_with(libc::SIGINT)
    }

    /// Ctrl-C, then every record including those printed while stopping.
    pub fn stop_with_records(self) -> (ExitStatus, String, Vec<Value>) {
        let records = self.records.clone();
        let (status, stderr) = self.stop();
        let all = records.lock().unwrap().clone();
        (status, stderr, all)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The test is over: its namespaces' ids must not judge the next
        // test's records (tests of a binary share this process).
        WAITED.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// A process group started for a test and killed, whole, when dropped.
pub struct Group {
    child: Child,
    stdout: Option<BufReader<std::process::ChildStdout>>,
}

impl Group {
    /// Starts `argv` in a new process group with stdout piped.
    pub fn spawn(argv: &[&str]) -> Group {
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {argv:?}: {e}"));
        let mut g = Group {
            child,
            stdout: None,
        };
        g.stdout = g.child.stdout.take().map(BufReader::new);
        g
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the process prints.
    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .as_mut()
            .unwrap()
            .read_line(&mut line)
            .expect("reading helper output");
        line.trim().to_string()
    }

    /// Waits for the process to exit (for short-lived commands).
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().unwrap()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: signalling a process group we created.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// `readlink /proc/PID/ns/KIND` as the inode number.
pub fn ns_inode(pid: u32, kind: &str) -> u64 {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap_or_else(|e| panic!("readlink /proc/{pid}/ns/{kind}: {e}"));
    let s = link.to_string_lossy();
    let start = s.find('[').expect("ns link format") + 1;
    s[start..s.len() - 1].parse().expect("ns inode")
}

/// Waits until `pid`'s namespace of `kind` differs from ours: the operation
/// under test has happened.
/// The kernel's 64-bit id (NS_GET_ID, 6.18+) of the namespace at `path`.
pub fn ns_id_of(path: &str) -> Option<u64> {
    let f = std::fs::File::open(path).ok()?;
    let mut id: u64 = 0;
    // SAFETY: NS_GET_ID (_IOR(0xb7, 0xd, u64)) writes one u64.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0x8008_b70d,
            &mut id as *mut u64,
        )
    };
    (r == 0).then_some(id)
}

/// Ids of the namespaces tests waited for, by (type, inode): the kernel
/// gives a freed inode to the next namespace at once, so on a busy machine
/// another process's namespace may carry the same inode minutes earlier.
static WAITED: std::sync::Mutex<Vec<((String, u64), u64)>> = std::sync::Mutex::new(Vec::new());

/// The `lost` notices of a trace, for failure messages: a missing record
/// with a notice beside it is a reported gap, without one a silent loss.
pub fn lost_notices(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["event"] == "lost").collect()
}

/// Probe runs the kernel reported skipped (`lost` notices). Each may be one
/// namespace syscall nstrace could not see: a test of an exact count allows
/// that many missing and no more (a reported gap, never a silent one). Seen
/// only in the 7.2 guest, a few per thousand syscalls.
pub fn skipped_runs(records: &[Value]) -> usize {
    lost_notices(records)
        .iter()
        .filter_map(|r| r["probe_runs_skipped"].as_u64())
        .sum::<u64>() as usize
}

/// Ends the kernel side reported it could not tell: skipped runs of the free
/// program and free records dropped (`lost` notices).
pub fn unseen_frees(records: &[Value]) -> usize {
    lost_notices(records)
        .iter()
        .map(|r| {
            r["probe_runs_skipped_by"]["free"].as_u64().unwrap_or(0)
                + r["by_kind"]["free"].as_u64().unwrap_or(0)
        })
        .sum::<u64>() as usize
}

/// Whether record `r` is `event` of the namespace of `kind` with `inode`,
/// the one a test last waited for with [`wait_ns_changed`] where the kernel
/// has namespace ids (not another with the same inode).
pub fn is(r: &Value, event: &str, kind: &str, inode: u64) -> bool {
    if !(r["event"] == event && r["ns_type"] == kind && r["ns_inode"] == inode) {
        return false;
    }
    let waited = WAITED.lock().unwrap_or_else(|e| e.into_inner());
    let id = waited
        .iter()
        .rev()
        .find(|(k, _)| k.0 == kind && k.1 == inode)
        .map(|(_, id)| *id);
    match (id, r["ns_id"].as_u64()) {
        (Some(want), Some(got)) => want == got,
        _ => true,
    }
}

pub fn wait_ns_changed(pid: u32, kind: &str) -> u64 {
    let inode = wait_ns_inode_changed(pid, kind);
    note_ns(&format!("/proc/{pid}/ns/{kind}"), inode);
    inode
}

/// Remembers the id of the namespace at `path` (a /proc `ns/KIND` link)
/// whose inode is `inode`, for [`is`].
pub fn note_ns(path: &str, inode: u64) {
    let Some(id) = ns_id_of(path) else {
        return;
    };
    let link = path.rsplit('/').next().unwrap_or_default();
    let kind = link.trim_end_matches("_for_children").to_string();
    WAITED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(((kind, inode), id));
}

fn wait_ns_inode_changed(pid: u32, kind: &str) -> u64 {
    let ours = ns_inode(std::process::id(), kind);
    let deadline = Instant::now() + DEFAULT_WAIT;
    loop {
        // pid_for_children cannot be read until the namespace has its init.
        if let Ok(link) = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")) {
            let s = link.to_string_lossy();
            let now: u64 = s[s.find('[').expect("ns link format") + 1..s.len() - 1]
                .parse()
                .expect("ns inode");
            if now != ours {
                return now;
            }
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} never left our {kind} namespace"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// The first child of `pid` (e.g. the process `unshare --fork` started).
pub fn first_child(pid: u32) -> u32 {
    let deadline = Instant::now() + DEFAULT_WAIT;
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(c) = children.split_whitespace().next() {
            return c.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "pid {pid} started no child");
        thread::sleep(Duration::from_millis(10));
    }
}

/// The records of `kind` in `records`, exactly one expected.
pub fn one_of_kind<'a>(records: &'a [Value], event: &str, kind: &str) -> &'a Value {
    let found: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == event && r["ns_type"] == kind)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {event} of {kind}: {records:#?}"
    );
    found[0]
}

/// The kernel's own answer to "does this namespace still exist": an nsfs
/// file handle built from its id, kind and inode (Linux 6.18+), opened with
/// `open_by_handle_at`, which fails with ESTALE once it is gone. Written here
/// independently of nstrace's own use of the same interface.
pub struct KernelJudge {
    nsfs: std::fs::File,
}

#[repr(C)]
struct NsfsHandle {
    bytes: u32,
    kind: i32,
    id: u64,
    ns_type: u32,
    inum: u32,
}

/// `CLONE_NEW*` of a kind named as in /proc/PID/ns.
pub fn clone_flag(kind: &str) -> u32 {
    match kind {
        "mnt" => 0x0002_0000,
        "uts" => 0x0400_0000,
        "ipc" => 0x0800_0000,
        "pid" => 0x2000_0000,
        "net" => 0x4000_0000,
        "user" => 0x1000_0000,
        "cgroup" => 0x0200_0000,
        "time" => 0x80,
        k => panic!("unknown kind {k}"),
    }
}

impl KernelJudge {
    /// None where the kernel has no nsfs file handles (before 6.18).
    pub fn new() -> Option<KernelJudge> {
        let nsfs = std::fs::File::open("/proc/self/ns/user").ok()?;
        let j = KernelJudge { nsfs };
        let mut h = NsfsHandle {
            bytes: 16,
            kind: 0,
            id: 0,
            ns_type: 0,
            inum: 0,
        };
        let mut mnt = 0i32;
        let path = std::ffi::CString::new("/proc/self/ns/net").unwrap();
        // SAFETY: valid path, a 16-byte handle buffer and an int out-param.
        let r = unsafe {
            libc::syscall(
                libc::SYS_name_to_handle_at,
                libc::AT_FDCWD,
                path.as_ptr(),
                &mut h as *mut NsfsHandle,
                &mut mnt as *mut i32,
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        (r == 0 && h.kind == 0xf1 && h.id != 0 && j.alive(h.ns_type, h.inum, h.id)).then_some(j)
    }

    /// Whether the namespace exists now (panics on an answer that is neither).
    pub fn alive(&self, ns_type: u32, inum: u32, id: u64) -> bool {
        use std::os::fd::AsRawFd;
        let mut h = NsfsHandle {
            bytes: 16,
            kind: 0xf1,
            id,
            ns_type,
            inum,
        };
        // SAFETY: a valid 16-byte nsfs handle; the fd is closed at once.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                self.nsfs.as_raw_fd(),
                &mut h as *mut NsfsHandle,
                libc::O_RDONLY,
            )
        };
        if fd >= 0 {
            // SAFETY: the fd the call above returned, ours to close.
            unsafe { libc::close(fd as i32) };
            return true;
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ESTALE),
            "open_by_handle_at: {e}"
        );
        false
    }

    /// The kernel's answer for a record's namespace (None without an id).
    pub fn alive_record(&self, r: &Value) -> Option<bool> {
        let id = r["ns_id"].as_u64()?;
        Some(self.alive(
            clone_flag(r["ns_type"].as_str()?),
            r["ns_inode"].as_u64()? as u32,
            id,
        ))
    }
}

/// Checks a trace's ends against the kernel, where it has nsfs handles:
/// every `destroy` names a namespace the kernel says is gone; none comes
/// twice; no `join` or `pinned` of a namespace follows its destroy (ids are
/// never reused); and every namespace created in the trace that the kernel
/// says is gone had its destroy within 1 s of that answer. Holds on a busy
/// machine: it judges whatever namespaces were created, by anyone.
pub fn judge_ends(tracer: &Tracer) {
    let Some(judge) = KernelJudge::new() else {
        return;
    };
    let records = tracer.records();
    let id_of = |r: &Value| r["ns_id"].as_u64();
    let mut destroyed: std::collections::HashMap<u64, usize> = Default::default();
    for (i, r) in records.iter().enumerate() {
        let Some(id) = id_of(r) else { continue };
        match r["event"].as_str() {
            Some("destroy") => {
                assert_eq!(
                    judge.alive_record(r),
                    Some(false),
                    "destroy of a namespace the kernel says is alive: {r}"
                );
                if let Some(first) = destroyed.insert(id, i) {
                    panic!("destroyed twice: {}\n{r}", records[first]);
                }
            }
            Some("join") | Some("pinned") => {
                if let Some(&d) = destroyed.get(&id) {
                    panic!("{} after its destroy: {}\n{r}", r["event"], records[d]);
                }
            }
            _ => {}
        }
    }
    // A reported gap excuses a missing end, nothing else: the checks above
    // hold whatever was lost.
    if records.iter().any(|r| r["event"] == "lost") {
        return;
    }
    let created: Vec<&Value> = records.iter().filter(|r| r["event"] == "create").collect();
    let gone: Vec<&Value> = created
        .into_iter()
        .filter(|r| judge.alive_record(r) == Some(false))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let now = tracer.records();
        let missing: Vec<&&Value> = gone
            .iter()
            .filter(|c| {
                !now.iter()
                    .any(|r| r["event"] == "destroy" && id_of(r) == id_of(c))
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        // A loss notice comes on the tracer's next tick: one that arrives
        // while we wait reports the gap, as one before the wait would.
        if now.iter().any(|r| r["event"] == "lost") {
            return;
        }
        if Instant::now() >= deadline {
            // What the trace said of those inodes, for the reader.
            let near: Vec<String> = now
                .iter()
                .filter(|r| {
                    missing
                        .iter()
                        .any(|c| r["ns_type"] == c["ns_type"] && r["ns_inode"] == c["ns_inode"])
                })
                .map(|r| {
                    format!(
                        "{} {} id {} pid {} {} end {}",
                        r["time"], r["event"], r["ns_id"], r["pid"], r["comm"], r["end"]
                    )
                })
                .collect();
            panic!(
                "the kernel says these are gone, but no destroy came within 1 s: {missing:#?}\n\
                 records of the same inodes:\n{}\nstderr: {}",
                near.join("\n"),
                tracer.stderr()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The unprivileged attacker of the hostile tests: uid and gid 65534
/// (nobody), no supplementary groups.
pub const NOBODY: u32 = 65534;

/// `bash -c SCRIPT` run as [`NOBODY`] (through util-linux's setpriv), in a
/// new process group killed when the [`Group`] is dropped.
pub fn as_nobody(script: &str) -> Group {
    let id = NOBODY.to_string();
    Group::spawn(&[
        "setpriv",
        "--reuid",
        &id,
        "--regid",
        &id,
        "--clear-groups",
        "bash",
        "-c",
        script,
    ])
}

/// Like [`as_nobody`], run to its end: (status, stdout, stderr).
pub fn run_as_nobody(script: &str) -> (ExitStatus, String, String) {
    let id = NOBODY.to_string();
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            &id,
            "--regid",
            &id,
            "--clear-groups",
            "bash",
            "-c",
            script,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running as nobody: {e}"));
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// GET `path` from 127.0.0.1:`port`; the body.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// A TCP port free on loopback now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
