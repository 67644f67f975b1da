//! Output layers: one module per format, all fed [`Record`]s.

pub mod filter;
pub mod html;
pub mod json;
pub mod leaks;
pub mod metrics;
pub mod outputs;
pub mod perfetto;
pub mod summary;
pub mod text;
pub mod timeline;

use std::{
    ffi::OsString,
    fs::{self, File, Metadata},
    io::{self, Write},
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{
    model::{Loss, Record, Start, Stop},
    output::timeline::Timeline,
    util::error::hinted,
    util::escape,
};

/// A file nstrace writes (`--output`, `--perfetto`, `--html`): a fresh
/// file, mode 0600 (it shows the host's whole process tree), made as a
/// temporary file beside the path and renamed onto it by [`OutFile::commit`],
/// so that a run that fails leaves what was at the path alone, and a symlink
/// planted there is replaced, never written through. A pipe, a terminal or
/// `/dev/null` at the path (`--html /dev/stdout`) is written in place.
pub struct OutFile {
    path: PathBuf,
    file: File,
    /// The temporary file, until renamed onto `path` (removed if never).
    tmp: Option<PathBuf>,
}

/// Files at a path that are written in place rather than replaced: pipes,
/// and the character devices that are terminals or `/dev/null` (any other
/// device, a block device above all, is refused: root writing a picture
/// into `/dev/sda` because a symlink said so must not happen).
fn streamable(m: &Metadata) -> bool {
    let t = m.file_type();
    if t.is_fifo() {
        return true;
    }
    if !t.is_char_device() {
        return false;
    }
    let (major, minor) = (libc::major(m.rdev()), libc::minor(m.rdev()));
    // 1:3 /dev/null; 4:* virtual consoles and serial ttys; 5:0 /dev/tty;
    // 136-143: pseudo-terminals.
    (major, minor) == (1, 3)
        || major == 4
        || (major, minor) == (5, 0)
        || (136..=143).contains(&major)
}

static TMP_SEQ: AtomicU32 = AtomicU32::new(0);

impl OutFile {
    /// Creates the file for `path` (see [`OutFile`]); nothing is at `path`
    /// until [`OutFile::commit`].
    pub fn create(path: &Path) -> io::Result<OutFile> {
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Self::replacing(path),
            Err(e) => Err(e),
            Ok(m) if m.is_file() => Self::replacing(path),
            Ok(m) if m.file_type().is_symlink() => match fs::metadata(path) {
                Ok(target) if streamable(&target) => Self::in_place(path),
                // Dangling, or to a file: the link itself is replaced.
                _ => Self::replacing(path),
            },
            Ok(m) if streamable(&m) => Self::in_place(path),
            Ok(m) if m.is_dir() => Err(io::Error::other("it is a directory")),
            Ok(_) => Err(io::Error::other(
                "it is a device or socket, not a file, a pipe or a terminal",
            )),
        }
    }

    /// A pipe or terminal, opened without creating or truncating anything;
    /// a FIFO with no reader is an error rather than a wait.
    fn in_place(path: &Path) -> io::Result<OutFile> {
        let file = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENXIO) => io::Error::other("a pipe with no reader"),
                _ => e,
            })?;
        // What was opened is what was checked (not a device swapped in since).
        if !streamable(&file.metadata()?) {
            return Err(io::Error::other("it changed while being opened"));
        }
        // Opened non-blocking not to wait for a reader; written blocking.
        {
            use nix::fcntl::{FcntlArg, OFlag, fcntl};
            if let Ok(flags) = fcntl(&file, FcntlArg::F_GETFL) {
                let flags = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
                let _ = fcntl(&file, FcntlArg::F_SETFL(flags));
            }
        }
        Ok(OutFile {
            path: path.to_path_buf(),
            file,
            tmp: None,
        })
    }

    /// A temporary file beside `path`: created exclusively (O_EXCL never
    /// follows a symlink), mode 0600.
    fn replacing(path: &Path) -> io::Result<OutFile> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::other("it names no file"))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        // Short enough for NAME_MAX whatever the name's length.
        let name = &name.as_encoded_bytes()[..name.len().min(200)];
        let mut last = None;
        for _ in 0..16 {
            let mut tmp = OsString::from(".");
            // SAFETY: a prefix of an OsStr's bytes, cut anywhere, is still
            // an OsStr on Unix (bytes with no encoding).
            tmp.push(unsafe { std::ffi::OsStr::from_encoded_bytes_unchecked(name) });
            tmp.push(format!(
                ".{}-{}.tmp",
                std::process::id(),
                TMP_SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            let tmp = dir.join(tmp);
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)
            {
                Ok(file) => {
                    return Ok(OutFile {
                        path: path.to_path_buf(),
                        file,
                        tmp: Some(tmp),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Puts the file at its path (renaming the temporary file onto it,
    /// replacing whatever was there); the file stays open for more writes.
    pub fn commit(mut self) -> io::Result<File> {
        if let Some(tmp) = &self.tmp {
            self.file.sync_data()?;
            fs::rename(tmp, &self.path)?;
            self.tmp = None;
        }
        // Nothing left for Drop to remove: the file moves out.
        let file = self.file.try_clone()?;
        Ok(file)
    }
}

impl Drop for OutFile {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// How a path is told apart from another: its device and inode when it
/// exists, else its directory's and its own name. `follow`: a symlink is
/// the file it leads to (against the input: a link to the trace is the
/// trace); else the link itself (outputs replace a link, so two links to
/// one file are two outputs).
#[derive(PartialEq, Eq)]
enum Identity {
    Inode(u64, u64),
    Name(PathBuf, OsString),
}

fn identity(path: &Path, follow: bool) -> Option<Identity> {
    let m = if follow {
        fs::metadata(path)
    } else {
        fs::symlink_metadata(path)
    };
    if let Ok(m) = m {
        return Some(Identity::Inode(m.dev(), m.ino()));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(Identity::Name(
        fs::canonicalize(dir).ok()?,
        path.file_name()?.to_os_string(),
    ))
}

/// Refuses outputs (`(flag, path)`) that are the input being read (its
/// metadata, from the open file) or one another: `nstrace report t.jsonl
/// --html t.jsonl` would otherwise replace the trace it reads.
pub fn check_distinct(
    input: Option<(&Path, &Metadata)>,
    outputs: &[(&str, &Path)],
) -> anyhow::Result<()> {
    if let Some((input, m)) = input {
        let id = Identity::Inode(m.dev(), m.ino());
        for (flag, path) in outputs {
            if identity(path, true).as_ref() == Some(&id) {
                return Err(hinted(
                    format!(
                        "{flag} {} is the trace being read ({}), under this or another name",
                        escape::path(path),
                        escape::path(input)
                    ),
                    format!("give {flag} another file, e.g. {}", suggestion(input, flag)),
                ));
            }
        }
    }
    let ids: Vec<_> = outputs.iter().map(|(_, p)| identity(p, false)).collect();
    for (i, ((flag, path), id)) in outputs.iter().zip(&ids).enumerate() {
        for ((other, _), id2) in outputs.iter().zip(&ids).skip(i + 1) {
            if id.is_some() && id == id2 {
                return Err(hinted(
                    format!(
                        "{flag} and {other} name the same file, {}",
                        escape::path(path)
                    ),
                    "give each its own file",
                ));
            }
        }
    }
    Ok(())
}

fn suggestion(path: &Path, flag: &str) -> String {
    let ext = match flag {
        "--html" => "html",
        "--perfetto" => "pftrace",
        _ => "jsonl",
    };
    escape::path(&path.with_extension(ext)).into_owned()
}

/// `--output FILE`: the live trace, a fresh 0600 file at its path from the
/// start (see [`OutFile`]).
pub fn create_trace_file(path: &Path) -> anyhow::Result<File> {
    OutFile::create(path)
        .and_then(OutFile::commit)
        .map_err(|e| {
            hinted(
                format!("cannot write {}: {e}", escape::path(path)),
                "give --output a path in a writable directory",
            )
        })
}

/// The picture files asked for (`--perfetto`, `--html`), created up front
/// (as temporary files) so that a path that cannot be written fails before
/// any tracing; put in place when drawn.
pub struct Pictures {
    perfetto: Option<OutFile>,
    html: Option<OutFile>,
}

fn create(path: &Path) -> anyhow::Result<OutFile> {
    OutFile::create(path).map_err(|e| {
        hinted(
            format!("cannot write {}: {e}", escape::path(path)),
            "give a path in a writable directory",
        )
    })
}

impl Pictures {
    /// None when no picture is asked for.
    pub fn create(perfetto: Option<&Path>, html: Option<&Path>) -> anyhow::Result<Option<Self>> {
        if perfetto.is_none() && html.is_none() {
            return Ok(None);
        }
        Ok(Some(Pictures {
            perfetto: perfetto.map(create).transpose()?,
            html: html.map(create).transpose()?,
        }))
    }

    /// Draws `t` into the files and puts them in place; says on stderr
    /// where they are. A failure leaves what was at the paths alone.
    pub fn write(self, t: &Timeline) -> anyhow::Result<()> {
        let fail =
            |path: &Path, e: io::Error| anyhow::anyhow!("writing {}: {e}", escape::path(path));
        let draw = |f: OutFile, what: &dyn Fn(&mut io::BufWriter<&File>) -> io::Result<()>| {
            let mut w = io::BufWriter::new(f.file());
            what(&mut w)
                .and_then(|()| w.flush())
                .map_err(|e| fail(f.path(), e))?;
            drop(w);
            let path = f.path().to_path_buf();
            f.commit().map_err(|e| fail(&path, e))?;
            anyhow::Ok(path)
        };
        if let Some(f) = self.perfetto {
            let path = draw(f, &|w| perfetto::write(t, w))?;
            eprintln!(
                "nstrace: wrote {} ({} namespaces; open it in https://ui.perfetto.dev)",
                escape::path(&path),
                t.namespaces
            );
        }
        if let Some(f) = self.html {
            let path = draw(f, &|w| html::write(t, w))?;
            eprintln!(
                "nstrace: wrote {} ({} namespaces; open it in a browser)",
                escape::path(&path),
                t.namespaces
            );
        }
        Ok(())
    }
}

/// A destination for records. Callers `flush` after each batch so a pipe
/// (`| jq`) sees records as they happen.
pub trait Sink {
    fn record(&mut self, r: &Record) -> io::Result<()>;
    /// A gap in the stream: records the kernel side could not deliver.
    fn lost(&mut self, l: &Loss) -> io::Result<()>;
    /// Where the stream begins (JSON writes it; the timeline has its
    /// start-up line on stderr instead).
    fn start(&mut self, _st: &Start) -> io::Result<()> {
        Ok(())
    }
    /// Where the stream ends.
    fn stop(&mut self, _st: &Stop) -> io::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()>;
}

/// Bytes buffered for the record stream (stdout, `--output FILE`) between
/// flushes, which come at the end of each drain anyway: one drain of a
/// namespace churn is a few hundred records, and std's 8 KiB buffer wrote
/// them in dozens of `write` calls, each waking the reader of a pipe (a
/// fifth of nstrace's CPU under churn went to those switches).
pub const STREAM_BUFFER: usize = 256 * 1024;

/// Builds the sink for the chosen format over `out`; `color`: the
/// timeline's event names in colour (ignored for JSON).
pub fn sink<'a, W: Write + 'a>(json: bool, color: bool, out: W) -> Box<dyn Sink + 'a> {
    if json {
        Box::new(json::JsonSink::new(out))
    } else {
        Box::new(text::TextSink::new(out).with_color(color))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nstrace-out-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_file_appears_whole_and_0600_only_when_committed() {
        let d = tempdir("commit");
        let path = d.join("t.html");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let f = OutFile::create(&path).unwrap();
        f.file().write_all(b"new").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(entries(&d).len(), 2, "{:?}", entries(&d));
        let _ = f.commit().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(entries(&d), ["t.html"]);
        // Not committed (a failed run): the old file stays, no temporary left.
        let f = OutFile::create(&path).unwrap();
        f.file().write_all(b"half").unwrap();
        drop(f);
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(entries(&d), ["t.html"]);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_written_through() {
        let d = tempdir("symlink");
        let target = d.join("precious");
        fs::write(&target, "keep").unwrap();
        let path = d.join("t.html");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let f = OutFile::create(&path).unwrap();
        f.file().write_all(b"picture").unwrap();
        let _ = f.commit().unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        assert!(fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(fs::read_to_string(&path).unwrap(), "picture");
        // A symlink to a block device or a directory: refused or replaced, never opened.
        let path = d.join("dev");
        std::os::unix::fs::symlink("/dev/loop0", &path).unwrap();
        if fs::metadata("/dev/loop0").is_ok() {
            let f = OutFile::create(&path).unwrap();
            assert!(f.tmp.is_some());
        }
        assert!(OutFile::create(&d).is_err());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn pipes_and_dev_null_are_written_in_place() {
        let f = OutFile::create(Path::new("/dev/null")).unwrap();
        assert!(f.tmp.is_none());
        let mut file = f.commit().unwrap();
        file.write_all(b"x").unwrap();
        assert!(
            fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );
        // A FIFO nobody reads is an error at once, not a wait.
        let d = tempdir("fifo");
        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = OutFile::create(&fifo).err().unwrap();
        assert!(err.to_string().contains("no reader"), "{err}");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn an_output_that_is_the_input_is_refused_under_any_name() {
        let d = tempdir("same");
        let input = d.join("t.jsonl");
        fs::write(&input, "{}\n").unwrap();
        let m = fs::metadata(&input).unwrap();
        let link = d.join("hard.jsonl");
        fs::hard_link(&input, &link).unwrap();
        let sym = d.join("sym.html");
        std::os::unix::fs::symlink(&input, &sym).unwrap();
        let dotted = d.join(".").join("t.jsonl");
        for out in [&input, &link, &sym, &dotted] {
            let err = check_distinct(Some((&input, &m)), &[("--html", out)])
                .err()
                .unwrap();
            assert!(err.to_string().contains("is the trace being read"), "{err}");
            assert!(
                crate::util::error::hint_of(&err)
                    .unwrap()
                    .contains("t.html")
            );
        }
        let new = d.join("new.html");
        check_distinct(Some((&input, &m)), &[("--html", &new)]).unwrap();
        // Two outputs, one file (not there yet): refused too.
        let err = check_distinct(
            Some((&input, &m)),
            &[
                ("--perfetto", &new),
                ("--html", &d.join(".").join("new.html")),
            ],
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("name the same file"), "{err}");
        assert_eq!(fs::read_to_string(&input).unwrap(), "{}\n");
        let _ = fs::remove_dir_all(&d);
    }
}
