//! Raw ring-buffer bytes to records, and records to JSON lines: the
//! per-event cost on the hot path. `cargo bench -p nstrace --bench decode`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nstrace::{
    kernel::decode,
    output::{Sink, json::JsonSink},
    sys::time::Clock,
};
use nstrace_common::{Event, EventKind, KIND_FLAGS, NsSet, Syscall, kind};

const BATCH: usize = 1000;

fn set(base: u32) -> NsSet {
    let mut s = NsSet::default();
    for k in 0..8 {
        s.inum[k] = base + k as u32;
        s.id[k] = 1000 + u64::from(base) + k as u64;
    }
    s
}

/// A mix like namespace churn's: clone creates, unshares, setns joins, exits.
fn events() -> Vec<Vec<u8>> {
    (0..BATCH)
        .map(|i| {
            let (kind, syscall, flags) = match i % 4 {
                0 => (
                    EventKind::Clone,
                    Syscall::Clone3,
                    KIND_FLAGS[kind::UTS] | KIND_FLAGS[kind::IPC],
                ),
                1 => (EventKind::Switch, Syscall::Unshare, KIND_FLAGS[kind::UTS]),
                2 => (EventKind::Switch, Syscall::Setns, KIND_FLAGS[kind::UTS]),
                _ => (EventKind::Exit, Syscall::None, 0),
            };
            let mut comm = [0u8; 16];
            comm[..6].copy_from_slice(b"nsload");
            let mut after = set(100);
            after.inum[kind::UTS] = 5000 + i as u32;
            after.inum[kind::IPC] = 9000 + i as u32;
            let e = Event {
                ts_ns: i as u64,
                flags,
                ret: 0,
                kind: kind as u32,
                syscall: syscall as u32,
                pid: 10 + i as u32,
                tid: 10 + i as u32,
                ppid: 1,
                fd: -1,
                comm,
                before: set(100),
                after,
                emptied: if i % 4 == 3 {
                    KIND_FLAGS[kind::UTS] as u32
                } else {
                    0
                },
                reaper: 0,
                owners: [4026531837; 8],
                pid_parent: 0,
                vpid: 10 + i as u32,
                followed: 0,
                uid: 0,
                euid: 0,
                admin: 1,
                elders: [1, 0],
                user_flags: 0,
                flags_unread: 0,
                _pad: 0,
                init_pid_ino: 0,
                cgroup: 0,
            };
            // SAFETY: Event is plain data.
            unsafe {
                std::slice::from_raw_parts((&e as *const Event).cast::<u8>(), size_of::<Event>())
            }
            .to_vec()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let raw = events();
    let clock = Clock::with_offset(1_700_000_000_000_000_000);
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function(BATCH.to_string(), |b| {
        b.iter(|| {
            for bytes in &raw {
                let e = decode::parse(black_box(bytes)).expect("whole event");
                black_box(decode::decode(&e, clock).expect("known kind"));
            }
        })
    });
    g.finish();

    let records: Vec<_> = raw
        .iter()
        .flat_map(|bytes| {
            decode::decode(&decode::parse(bytes).unwrap(), clock)
                .unwrap()
                .records
        })
        .collect();
    let mut g = c.benchmark_group("json");
    g.throughput(Throughput::Elements(records.len() as u64));
    g.bench_function(records.len().to_string(), |b| {
        let mut sink = JsonSink::new(std::io::sink());
        b.iter(|| {
            for r in &records {
                sink.record(black_box(r)).unwrap();
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
