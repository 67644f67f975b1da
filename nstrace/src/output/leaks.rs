//! The suspect leaks a running trace has told, kept in a file for `nstrace
//! ls` (which sees the kernel as it is now, but not whose a memberless
//! namespace was: only the trace saw its container). One file per running
//! trace, `/run/nstrace/leaks-PID-START.jsonl`: its `leak` records, in the
//! stream's own JSON, rewritten when one is told or ends. A file whose
//! writer is gone (the pid's start time differs) is not read: a tracer
//! killed with SIGKILL leaves a stale list, never a wrong one.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Read as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use super::{Sink, json};
use crate::{
    model::{EventType, Loss, NsKey, Record, Stop},
    sys::procfs,
};

/// Where the lists are: root's, in tmpfs (gone at reboot, as the
/// namespaces are).
pub const DIR: &str = "/run/nstrace";

/// The largest list read (a node's leaks are a few hundred lines).
const CAP: u64 = 16 << 20;

pub struct LeakList {
    dir: PathBuf,
    name: String,
    told: BTreeMap<NsKey, Record>,
    dirty: bool,
}

/// `dir` as nstrace will write in it: a directory (not a symlink) owned by
/// root that only root can write, made so if missing.
fn safe_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o755).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let m = fs::symlink_metadata(dir)?;
    if !m.is_dir() || m.uid() != 0 || m.mode() & 0o022 != 0 {
        return Err(io::Error::other(
            "it is not a directory owned by root that only root can write",
        ));
    }
    Ok(())
}

impl LeakList {
    /// The list of this process in [`DIR`], empty until a leak is told.
    pub fn create() -> io::Result<LeakList> {
        Self::create_in(Path::new(DIR))
    }

    fn create_in(dir: &Path) -> io::Result<LeakList> {
        safe_dir(dir)?;
        remove_stale(dir);
        let pid = std::process::id();
        let start =
            procfs::start_time(pid).ok_or_else(|| io::Error::other("no /proc/self/stat"))?;
        let mut list = LeakList {
            dir: dir.to_path_buf(),
            name: format!("leaks-{pid}-{start}.jsonl"),
            told: BTreeMap::new(),
            dirty: true,
        };
        list.write()?;
        Ok(list)
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// The list, whole, beside it and renamed onto it: a reader never sees
    /// half of one.
    fn write(&mut self) -> io::Result<()> {
        let tmp = self.dir.join(format!(".{}.tmp", self.name));
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        let mut text = Vec::new();
        for r in self.told.values() {
            serde_json::to_writer(&mut text, &json::Wire::record(r))?;
            text.push(b'\n');
        }
        f.write_all(&text)?;
        drop(f);
        fs::rename(&tmp, self.path())?;
        self.dirty = false;
        Ok(())
    }
}

impl Sink for LeakList {
    fn record(&mut self, r: &Record) -> io::Result<()> {
        let Some(key) = r.kind.zip(r.inode) else {
            return Ok(());
        };
        match r.event {
            EventType::Leak => {
                self.told.insert(key, r.clone());
                self.dirty = true;
            }
            // Joined again, gone, or the inode now another namespace's.
            EventType::Join | EventType::Destroy | EventType::Create => {
                self.dirty |= self.told.remove(&key).is_some();
            }
            _ => {}
        }
        Ok(())
    }

    fn lost(&mut self, _: &Loss) -> io::Result<()> {
        Ok(())
    }

    fn stop(&mut self, _: &Stop) -> io::Result<()> {
        self.told.clear();
        self.dirty = false;
        match fs::remove_file(self.path()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.dirty { self.write() } else { Ok(()) }
    }
}

impl Drop for LeakList {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.path());
    }
}

/// Removes the lists (and half-written ones) whose writer is gone: a trace
/// killed with SIGKILL cannot remove its own.
fn remove_stale(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let list = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".tmp"))
            .unwrap_or(name);
        if let Some((pid, start)) = writer(list) {
            if procfs::start_time(pid) != Some(start) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// `leaks-PID-START.jsonl`: its writer, if the name is one nstrace gives.
fn writer(name: &str) -> Option<(u32, u64)> {
    let rest = name.strip_prefix("leaks-")?.strip_suffix(".jsonl")?;
    let (pid, start) = rest.split_once('-')?;
    Some((pid.parse().ok()?, start.parse().ok()?))
}

/// Reads one list: a regular file of root's (never through a symlink,
/// never blocking on a FIFO), at most [`CAP`] bytes.
fn read_list(path: &Path) -> Option<String> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let m = f.metadata().ok()?;
    if !m.is_file() || m.uid() != 0 || m.len() > CAP {
        return None;
    }
    let mut text = String::new();
    f.take(CAP).read_to_string(&mut text).ok()?;
    Some(text)
}

/// What the running traces have told.
#[derive(Debug, Default)]
pub struct Told {
    /// Traces running now that keep a list.
    pub traces: usize,
    /// Every leak they told (the newest where two told the same
    /// namespace), by key.
    pub leaks: BTreeMap<NsKey, Record>,
}

pub fn read_all() -> Told {
    read_all_in(Path::new(DIR))
}

fn read_all_in(dir: &Path) -> Told {
    let mut told = Told::default();
    let out = &mut told.leaks;
    // Only root's own directory: what it lists decides what ls says.
    if fs::symlink_metadata(dir).is_ok_and(|m| !m.is_dir() || m.uid() != 0 || m.mode() & 0o022 != 0)
    {
        return told;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return told;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((pid, start)) = name.to_str().and_then(writer) else {
            continue;
        };
        if procfs::start_time(pid) != Some(start) {
            continue;
        }
        let Some(text) = read_list(&entry.path()) else {
            continue;
        };
        told.traces += 1;
        for line in text.lines() {
            let Ok(json::Line::Record(r)) = json::parse_line(line) else {
                continue;
            };
            let (EventType::Leak, Some(key)) = (r.event, r.kind.zip(r.inode)) else {
                continue;
            };
            if out.get(&key).is_none_or(|old| old.time_ns < r.time_ns) {
                out.insert(key, *r);
            }
        }
    }
    told
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Container, NsKind};

    fn leak(inode: u32) -> Record {
        Record {
            time_ns: 5_000_000_000,
            event: EventType::Leak,
            kind: Some(NsKind::Net),
            inode: Some(inode),
            age_ns: Some(2_000_000_000),
            pinned_by: vec!["mount /run/netns/cni-1".into()],
            ns_container: Some(Container {
                id: "c1".into(),
                runtime: "cri-containerd",
                name: Some("pause".into()),
                pod: Some("web".into()),
                namespace: Some("shop".into()),
            }),
            ..Record::default()
        }
    }

    /// Only as root: the list's directory and files must be root's.
    fn root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn a_told_leak_is_listed_until_it_ends_and_the_list_goes_at_stop() {
        if !root() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("nstrace-leaks-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut list = LeakList::create_in(&dir).unwrap();
        list.record(&leak(7)).unwrap();
        list.record(&leak(8)).unwrap();
        list.flush().unwrap();
        let told = read_all_in(&dir);
        assert_eq!(told.traces, 1);
        let read = told.leaks;
        assert_eq!(
            read.keys().copied().collect::<Vec<_>>(),
            [(NsKind::Net, 7), (NsKind::Net, 8)]
        );
        assert_eq!(read[&(NsKind::Net, 7)], leak(7));
        list.record(&Record {
            event: EventType::Destroy,
            ..leak(7)
        })
        .unwrap();
        list.flush().unwrap();
        assert_eq!(read_all_in(&dir).leaks.len(), 1);
        list.stop(&Stop::default()).unwrap();
        let told = read_all_in(&dir);
        assert!(told.leaks.is_empty() && told.traces == 0);
        assert!(!list.path().exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_list_whose_writer_is_gone_or_not_roots_is_not_read() {
        if !root() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("nstrace-leaks-stale-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        safe_dir(&dir).unwrap();
        let line = serde_json::to_string(&json::Wire::record(&leak(9))).unwrap();
        // A pid that is ours, with another start time: a writer long gone.
        fs::write(
            dir.join(format!("leaks-{}-1.jsonl", std::process::id())),
            &line,
        )
        .unwrap();
        // Ours, but not root's.
        let start = procfs::start_time(std::process::id()).unwrap();
        let theirs = dir.join(format!("leaks-{}-{start}.jsonl", std::process::id()));
        fs::write(&theirs, &line).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
        let told = read_all_in(&dir);
        assert!(told.leaks.is_empty() && told.traces == 0, "{told:?}");
        // A new trace's list clears the one whose writer is gone.
        let stale = dir.join(format!("leaks-{}-1.jsonl", std::process::id()));
        let list = LeakList::create_in(&dir).unwrap();
        assert!(!stale.exists());
        assert!(list.path().exists());
        drop(list);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_names_nstrace_gives_are_lists() {
        assert_eq!(writer("leaks-12-345.jsonl"), Some((12, 345)));
        for bad in [
            "leaks-12.jsonl",
            "leaks-x-1.jsonl",
            ".leaks-1-2.jsonl.tmp",
            "leaks-1-2.json",
        ] {
            assert_eq!(writer(bad), None, "{bad}");
        }
    }
}
