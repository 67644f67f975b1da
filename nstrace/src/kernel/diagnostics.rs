//! The kernel side's `--debug` diagnostics (aya-log records), printed on
//! stderr as `nstrace: kernel: ...`.
//!
//! A failure that happens once tends to happen on every run of a program (a
//! wrong offset faults on every fork): each message site is printed a few
//! times, then only counted, and the counts are given at the end.

use std::{collections::BTreeMap, io::Write as _, sync::Mutex};

use aya::Ebpf;
use aya_log::EbpfLogger;
use log::{Log, Metadata, Record};

/// Lines printed per message site before the rest are only counted.
const SHOWN_PER_SITE: u64 = 5;

/// The logger aya-log hands each kernel record to.
#[derive(Default)]
pub struct KernelLog {
    /// (file, line) of the kernel's log call -> messages seen.
    seen: Mutex<BTreeMap<(String, u32), u64>>,
}

impl Log for KernelLog {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        let site = (
            record.file().unwrap_or("?").to_string(),
            record.line().unwrap_or(0),
        );
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let n = seen.entry(site).or_insert(0);
        *n += 1;
        if *n <= SHOWN_PER_SITE {
            let msg = name_errnos(&record.args().to_string());
            // The kernel side counts further failures of one program run
            // (it reports the first); none is not worth saying.
            let msg = msg.replace(" (0 more in the same program run)", "");
            let mut err = std::io::stderr().lock();
            let level = record.level().as_str().to_ascii_lowercase();
            let _ = write!(err, "nstrace: kernel: {level}: {msg}");
            if *n == SHOWN_PER_SITE {
                let _ = write!(err, " (further ones from here only counted)");
            }
            let _ = writeln!(err);
        }
    }

    fn flush(&self) {}
}

impl KernelLog {
    /// The closing line: how many diagnostics came, and how many were not shown.
    pub fn summary(&self) -> Option<String> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let total: u64 = seen.values().sum();
        let hidden: u64 = seen
            .values()
            .map(|n| n.saturating_sub(SHOWN_PER_SITE))
            .sum();
        (total > 0)
            .then(|| format!("nstrace: {total} kernel diagnostics ({hidden} repeats not shown)"))
    }
}

/// What reads the kernel's diagnostics; its logger is kept for the summary.
pub type Reader = EbpfLogger<&'static KernelLog>;

/// Starts reading the kernel's diagnostics from the loaded object. The
/// logger lives for the rest of the process (one per run, read at the end).
pub fn reader(ebpf: &mut Ebpf) -> anyhow::Result<(Reader, &'static KernelLog)> {
    let log: &'static KernelLog = Box::leak(Box::default());
    let reader = EbpfLogger::init_with_logger(ebpf, log)
        .map_err(|e| anyhow::anyhow!("reading kernel diagnostics: {e}"))?;
    Ok((reader, log))
}

/// `errno 14` (how the kernel side says it: it has no names) -> `EFAULT`.
fn name_errnos(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("errno ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 6..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits].parse::<i32>() {
            Ok(n) => out.push_str(&crate::util::errno::name(n)),
            Err(_) => out.push_str("errno "),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_are_named() {
        assert_eq!(
            name_errnos("map update failed in PENDING: errno 7"),
            "map update failed in PENDING: E2BIG"
        );
        assert_eq!(
            name_errnos("read failed: errno 14, errno x"),
            "read failed: EFAULT, errno x"
        );
        assert_eq!(name_errnos("nothing"), "nothing");
    }

    #[test]
    fn repeats_are_counted_not_printed() {
        let log = KernelLog::default();
        for _ in 0..8 {
            log.log(
                &Record::builder()
                    .args(format_args!("x"))
                    .file(Some("src/diag.rs"))
                    .line(Some(3))
                    .build(),
            );
        }
        assert_eq!(
            log.summary().as_deref(),
            Some("nstrace: 8 kernel diagnostics (3 repeats not shown)")
        );
    }
}
