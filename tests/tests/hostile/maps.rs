//! Exhausting the kernel side's maps: whoever holds enough namespaces
//! pushes a watched namespace's member count out of the LRU member map. Its end can then not be seen from counts: that must be counted and
//! told, never silent.

use std::time::{Duration, Instant};

use nstrace_tests::*;
use serde_json::Value;

fn forgotten(records: &[Value]) -> u64 {
    lost_notices(records)
        .iter()
        .filter_map(|r| r["namespaces_forgotten"].as_u64())
        .sum()
}

#[test]
fn a_member_count_evicted_from_the_lru_map_is_counted() {
    if !privileged() {
        return;
    }
    // A small map, and more live namespaces than it holds: some watched
    // namespace's count must be evicted (an LRU map evicts live entries
    // before it is full too, which no test can make happen on cue).
    let t = Tracer::start(&["--member-map-size", "1024"]);
    let mut hold = Group::spawn(&[load_bin().to_str().unwrap(), "hold", "800"]);
    assert_eq!(hold.read_line(), "ready 800");
    // Their members leave: the forgotten ones can only be counted.
    // SAFETY: signalling the holder we started.
    unsafe { libc::kill(hold.pid() as i32, libc::SIGUSR1) };
    hold.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let records = t.records();
        if forgotten(&records) > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no eviction counted; losses: {:?}",
            lost_notices(&records)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, stderr) = t.stop();
    assert!(status.success());
    assert!(
        stderr.lines().any(|l| l.starts_with("nstrace: ")
            && l.contains(" records (")
            && l.contains("forgotten by the kernel's member map")),
        "closing line silent about it: {stderr}"
    );
}

#[test]
fn an_ordinary_run_forgets_nothing() {
    if !privileged() {
        return;
    }
    // Default map: namespaces made and ended by many processes, the test's
    // and the machine's, and nothing is reported forgotten.
    let t = Tracer::start(&[]);
    let mut churn = Group::spawn(&[load_bin().to_str().unwrap(), "churn", "300"]);
    churn.wait();
    let (status, stderr, records) = t.stop_with_records();
    assert!(status.success());
    // A run the kernel skipped (counted, as on our one-vCPU 7.2 guest) can
    // miss a create, and that namespace's members then meet no count: that
    // is the skip's loss, told as such, not the map's. Without skips the
    // map must forget nothing.
    let skipped = skipped_runs(&records);
    if skipped == 0 {
        assert_eq!(forgotten(&records), 0, "{:?}", lost_notices(&records));
        assert!(!stderr.contains("forgotten"), "{stderr}");
    } else {
        // Each skipped run misses at most one call's namespaces (8 kinds).
        assert!(
            forgotten(&records) <= 8 * skipped as u64,
            "{:?}",
            lost_notices(&records)
        );
    }
}
