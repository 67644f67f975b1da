//! Perfetto's native trace format (protobuf `Trace` of TrackEvent packets),
//! drawn from a [`Timeline`]: opens in ui.perfetto.dev.
//!
//! Tracks: one per container group (`host` first), under it one per kind,
//! under that one per namespace with a slice for its life and, nested, its
//! phases (`members`, then `pinned`); joins are instants on the namespace's
//! track. A crowd (a command that made more than a few of one kind, see
//! `timeline`) is one track of its own under the kind, holding a counter
//! track of how many were alive (the peak of each interval) and tracks
//! only for its namespaces that matter. Processes that created namespaces
//! drawn on their own or failed a namespace call get thread tracks with an
//! instant per call, and a flow from each create to the life slice it began.
//!
//! The messages are the few fields of Perfetto's protos this needs, written
//! with prost's derive (field numbers from perfetto/protos/perfetto/trace:
//! trace.proto, trace_packet.proto, track_event/*.proto), so no protoc and
//! no generated code: a reader ignores what it does not know, and these
//! numbers are fixed by Perfetto's compatibility rules.

use std::{
    collections::HashMap,
    io::{self, Write},
};

use prost::Message;

use crate::output::timeline::{Drawn, HOST, Lane, Timeline, shown_processes};

#[derive(Clone, PartialEq, Message)]
struct Trace {
    #[prost(message, repeated, tag = "1")]
    packet: Vec<TracePacket>,
}

#[derive(Clone, PartialEq, Message)]
struct TracePacket {
    #[prost(uint64, optional, tag = "8")]
    timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "10")]
    trusted_packet_sequence_id: Option<u32>,
    #[prost(message, optional, tag = "11")]
    track_event: Option<TrackEvent>,
    #[prost(uint32, optional, tag = "13")]
    sequence_flags: Option<u32>,
    #[prost(message, optional, tag = "60")]
    track_descriptor: Option<TrackDescriptor>,
}

#[derive(Clone, PartialEq, Message)]
struct TrackDescriptor {
    #[prost(uint64, optional, tag = "1")]
    uuid: Option<u64>,
    #[prost(string, optional, tag = "2")]
    name: Option<String>,
    #[prost(message, optional, tag = "3")]
    process: Option<ProcessDescriptor>,
    #[prost(message, optional, tag = "4")]
    thread: Option<ThreadDescriptor>,
    #[prost(uint64, optional, tag = "5")]
    parent_uuid: Option<u64>,
    #[prost(message, optional, tag = "8")]
    counter: Option<CounterDescriptor>,
    #[prost(int32, optional, tag = "11")]
    child_ordering: Option<i32>,
    #[prost(int32, optional, tag = "12")]
    sibling_order_rank: Option<i32>,
    #[prost(string, optional, tag = "14")]
    description: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct CounterDescriptor {
    #[prost(string, optional, tag = "6")]
    unit_name: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ProcessDescriptor {
    #[prost(int32, optional, tag = "1")]
    pid: Option<i32>,
    #[prost(string, optional, tag = "6")]
    process_name: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ThreadDescriptor {
    #[prost(int32, optional, tag = "1")]
    pid: Option<i32>,
    #[prost(int32, optional, tag = "2")]
    tid: Option<i32>,
    #[prost(string, optional, tag = "5")]
    thread_name: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct TrackEvent {
    #[prost(message, repeated, tag = "4")]
    debug_annotations: Vec<DebugAnnotation>,
    #[prost(int32, optional, tag = "9")]
    r#type: Option<i32>,
    #[prost(uint64, optional, tag = "11")]
    track_uuid: Option<u64>,
    #[prost(string, repeated, tag = "22")]
    categories: Vec<String>,
    #[prost(string, optional, tag = "23")]
    name: Option<String>,
    #[prost(int64, optional, tag = "30")]
    counter_value: Option<i64>,
    // Declared unpacked in Perfetto's proto: a packed encoding is not read.
    #[prost(fixed64, repeated, packed = "false", tag = "47")]
    flow_ids: Vec<u64>,
    #[prost(fixed64, repeated, packed = "false", tag = "48")]
    terminating_flow_ids: Vec<u64>,
}

#[derive(Clone, PartialEq, Message)]
struct DebugAnnotation {
    #[prost(bool, optional, tag = "2")]
    bool_value: Option<bool>,
    #[prost(uint64, optional, tag = "3")]
    uint_value: Option<u64>,
    #[prost(string, optional, tag = "6")]
    string_value: Option<String>,
    #[prost(string, optional, tag = "10")]
    name: Option<String>,
}

const SLICE_BEGIN: i32 = 1;
const SLICE_END: i32 = 2;
const INSTANT: i32 = 3;
const COUNTER: i32 = 4;
/// TrackDescriptor.ChildTracksOrdering.
const EXPLICIT: i32 = 3;
/// TracePacket.SequenceFlags.SEQ_INCREMENTAL_STATE_CLEARED.
const STATE_CLEARED: u32 = 1;
const SEQUENCE: u32 = 1;

fn text(name: &str, value: impl Into<String>) -> DebugAnnotation {
    DebugAnnotation {
        name: Some(name.into()),
        string_value: Some(value.into()),
        ..Default::default()
    }
}

fn number(name: &str, value: u64) -> DebugAnnotation {
    DebugAnnotation {
        name: Some(name.into()),
        uint_value: Some(value),
        ..Default::default()
    }
}

fn flag(name: &str, value: bool) -> DebugAnnotation {
    DebugAnnotation {
        name: Some(name.into()),
        bool_value: Some(value),
        ..Default::default()
    }
}

struct Writer {
    descriptors: Vec<TracePacket>,
    /// (time, order pushed, event): sorted by time before writing; ties keep
    /// the order pushed, which keeps each track's slices nested.
    events: Vec<(u64, usize, TrackEvent)>,
    next_uuid: u64,
}

impl Writer {
    fn track(&mut self, d: TrackDescriptor) -> u64 {
        self.next_uuid += 1;
        let uuid = self.next_uuid;
        self.descriptors.push(TracePacket {
            trusted_packet_sequence_id: Some(SEQUENCE),
            track_descriptor: Some(TrackDescriptor {
                uuid: Some(uuid),
                ..d
            }),
            ..Default::default()
        });
        uuid
    }

    fn event(&mut self, time_ns: i128, track: u64, kind: i32, e: TrackEvent) {
        let n = self.events.len();
        self.events.push((
            time_ns.max(0) as u64,
            n,
            TrackEvent {
                r#type: Some(kind),
                track_uuid: Some(track),
                ..e
            },
        ));
    }

    fn end(&mut self, time_ns: i128, track: u64) {
        self.event(time_ns, track, SLICE_END, TrackEvent::default());
    }
}

/// Writes `t` as a Perfetto trace.
pub fn write(t: &Timeline, mut out: impl Write) -> io::Result<()> {
    let trace_end = t.end_ns();
    let mut w = Writer {
        descriptors: Vec::new(),
        events: Vec::new(),
        next_uuid: 0,
    };
    let drawn = t.drawn();
    // Flow ids by (pid, mark index): one mark may begin several lanes. A
    // mark is the lane's creation only if it is at the lane's birth (the
    // process kept may be a later one with the same pid).
    let mut flows: HashMap<(u32, usize), Vec<u64>> = HashMap::new();
    let mut flow_of: HashMap<*const Lane, u64> = HashMap::new();
    for lane in drawn.iter().flat_map(|d| d.lanes.iter()) {
        let Some((pid, i)) = lane.created_by else {
            continue;
        };
        let at_birth = t
            .processes
            .get(&pid)
            .and_then(|p| p.marks.get(i))
            .is_some_and(|m| m.time_ns == lane.begin_ns);
        if at_birth {
            let id = flow_of.len() as u64 + 1;
            flow_of.insert(*lane as *const Lane, id);
            flows.entry((pid, i)).or_default().push(id);
        }
    }
    // Threads next: lanes' flows point back at their creators' marks.
    let mut thread_track: HashMap<(u32, u32), u64> = HashMap::new();
    let (shown, _) = shown_processes(t, &drawn);
    for &(pid, p) in &shown {
        w.track(TrackDescriptor {
            process: Some(ProcessDescriptor {
                pid: Some(pid as i32),
                process_name: Some(p.comm.clone()),
            }),
            description: Some(format!("in {}", p.group)),
            ..Default::default()
        });
        for (&tid, name) in &p.threads {
            // A thread track belongs to its process through the pid.
            let track = w.track(TrackDescriptor {
                thread: Some(ThreadDescriptor {
                    pid: Some(pid as i32),
                    tid: Some(tid as i32),
                    thread_name: Some(name.clone()),
                }),
                ..Default::default()
            });
            thread_track.insert((pid, tid), track);
        }
    }
    for (&pid, p) in &t.processes {
        for (i, m) in p.marks.iter().enumerate() {
            let Some(&track) = thread_track.get(&(pid, m.tid)) else {
                continue;
            };
            w.event(
                m.time_ns,
                track,
                INSTANT,
                TrackEvent {
                    name: Some(m.what.clone()),
                    categories: vec![if m.failed { "failed" } else { "create" }.into()],
                    debug_annotations: vec![
                        number("pid", m.pid.into()),
                        number("tid", m.tid.into()),
                    ],
                    flow_ids: flows.remove(&(pid, i)).unwrap_or_default(),
                    ..Default::default()
                },
            );
        }
    }

    let mut groups: HashMap<&str, u64> = HashMap::new();
    let mut kinds: HashMap<(&str, &'static str), u64> = HashMap::new();
    let mut rank = 0;
    for d in &drawn {
        let g = d.group;
        let group = match groups.get(g.container.as_str()) {
            Some(&id) => id,
            None => {
                let id = w.track(TrackDescriptor {
                    name: Some(if g.container == HOST {
                        "host (no container)".into()
                    } else {
                        format!("container {}", g.container)
                    }),
                    child_ordering: Some(EXPLICIT),
                    sibling_order_rank: Some(if g.container == HOST { 0 } else { 1 }),
                    ..Default::default()
                });
                groups.insert(&g.container, id);
                id
            }
        };
        let kind = g.kind.name();
        let mut parent = match kinds.get(&(g.container.as_str(), kind)) {
            Some(&k) => k,
            None => {
                let k = w.track(TrackDescriptor {
                    name: Some(format!("{kind} namespaces")),
                    parent_uuid: Some(group),
                    child_ordering: Some(EXPLICIT),
                    sibling_order_rank: Some(g.kind.index() as i32),
                    ..Default::default()
                });
                kinds.insert((&g.container, kind), k);
                k
            }
        };
        if g.aggregated() {
            rank += 1;
            parent = crowd(&mut w, d, parent, rank, trace_end);
        }
        for lane in &d.lanes {
            rank += 1;
            let track = w.track(TrackDescriptor {
                name: Some(lane.title()),
                parent_uuid: Some(parent),
                sibling_order_rank: Some(rank),
                description: lane.ns_id.map(|id| format!("ns_id {id}")),
                ..Default::default()
            });
            let flow = flow_of.get(&(*lane as *const Lane)).copied();
            life(&mut w, lane, track, flow, trace_end);
        }
    }

    let mut events = std::mem::take(&mut w.events);
    events.sort_by_key(|(ts, n, _)| (*ts, *n));
    let mut packets = w.descriptors;
    if let Some(first) = packets.first_mut() {
        first.sequence_flags = Some(STATE_CLEARED);
    }
    packets.extend(events.into_iter().map(|(ts, _, e)| TracePacket {
        timestamp: Some(ts),
        trusted_packet_sequence_id: Some(SEQUENCE),
        track_event: Some(e),
        ..Default::default()
    }));
    out.write_all(&Trace { packet: packets }.encode_to_vec())?;
    out.flush()
}

/// A crowd's track under its kind's, and on it the counter of how many
/// were alive: each interval of its series as its peak (exact), then how
/// many were alive when the trace ended. Returns the track its lanes that
/// matter go under.
fn crowd(w: &mut Writer, d: &Drawn, parent: u64, rank: i32, trace_end: i128) -> u64 {
    let g = d.group;
    let who = &g.comm;
    let track = w.track(TrackDescriptor {
        name: Some(format!(
            "{} {} namespaces of {who} (peak {} alive)",
            g.count,
            g.kind.name(),
            g.peak
        )),
        parent_uuid: Some(parent),
        sibling_order_rank: Some(rank),
        child_ordering: Some(EXPLICIT),
        description: Some(format!(
            "{} made, at most {} alive at once; {} not kept as detail",
            g.count, g.peak, g.dropped
        )),
        ..Default::default()
    });
    let counter = w.track(TrackDescriptor {
        name: Some(format!("alive {} namespaces of {who}", g.kind.name())),
        parent_uuid: Some(track),
        sibling_order_rank: Some(0),
        counter: Some(CounterDescriptor {
            unit_name: Some("namespaces".into()),
        }),
        ..Default::default()
    });
    let s = &g.series;
    let value = |n: u32| TrackEvent {
        counter_value: Some(i64::from(n)),
        ..Default::default()
    };
    for (i, p) in s.points.iter().enumerate() {
        w.event(
            s.origin + i as i128 * s.width,
            counter,
            COUNTER,
            value(p.peak),
        );
    }
    let after = s.origin + s.points.len() as i128 * s.width;
    if after < trace_end {
        w.event(after, counter, COUNTER, value(g.alive));
        w.event(trace_end, counter, COUNTER, value(g.alive));
    }
    track
}

/// A namespace's life slice, its phases inside it, and its joins.
fn life(w: &mut Writer, lane: &Lane, track: u64, flow: Option<u64>, trace_end: i128) {
    let end = lane.end_ns(trace_end);
    let mut notes = vec![number("inode", lane.inode.into())];
    if let Some(id) = lane.ns_id {
        notes.push(number("ns_id", id));
    }
    match &lane.born {
        Some(b) => {
            notes.push(text("created by", format!("{} (pid {})", b.comm, b.pid)));
            notes.push(text("syscall", b.syscall.name()));
        }
        None => notes.push(flag("alive before the trace", true)),
    }
    match &lane.end {
        Some(e) => {
            notes.push(text("end", e.cause.name()));
            if let Some(by) = e.by {
                notes.push(text("end established by", by.name()));
            }
        }
        None => notes.push(flag("alive at the trace's end", true)),
    }
    if let Some(by) = lane.pinned().and_then(|p| p.pinned_by.as_ref()) {
        notes.push(text("pinned by", by.join(", ")));
    }
    w.event(
        lane.begin_ns,
        track,
        SLICE_BEGIN,
        TrackEvent {
            name: Some(lane.title()),
            categories: vec![lane.kind.name().into()],
            debug_annotations: notes,
            terminating_flow_ids: flow.into_iter().collect(),
            ..Default::default()
        },
    );
    // The phases, one after the other inside the life slice.
    for (i, p) in lane.phases.iter().enumerate() {
        let from = p.from_ns.clamp(lane.begin_ns, end);
        let to = lane
            .phases
            .get(i + 1)
            .map_or(end, |next| next.from_ns.clamp(from, end));
        let (name, notes) = match &p.pinned_by {
            None => ("members", Vec::new()),
            Some(by) => ("pinned", vec![text("pinned by", by.join(", "))]),
        };
        w.event(
            from,
            track,
            SLICE_BEGIN,
            TrackEvent {
                name: Some(name.into()),
                debug_annotations: notes,
                ..Default::default()
            },
        );
        w.end(to, track);
    }
    w.end(end, track);
    for j in &lane.joins {
        w.event(
            j.time_ns.clamp(lane.begin_ns, end),
            track,
            INSTANT,
            TrackEvent {
                name: Some(format!("{} by {}", j.what, j.comm)),
                categories: vec!["join".into()],
                debug_annotations: vec![number("pid", j.pid.into()), text("comm", j.comm.clone())],
                ..Default::default()
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Actor, EventType, NsKind, Record, Syscall};

    #[test]
    fn slices_nest_and_flows_pair() {
        let mut t = Timeline::default();
        let actor = Some(Actor {
            pid: 9,
            tid: 9,
            comm: "unshare".into(),
            ..Actor::default()
        });
        for (kind, inode) in [(NsKind::Net, 7), (NsKind::Uts, 8)] {
            t.record(&Record {
                time_ns: 100,
                event: EventType::Create,
                kind: Some(kind),
                inode: Some(inode),
                syscall: Some(Syscall::Unshare),
                flags: NsKind::Net.flag() | NsKind::Uts.flag(),
                actor: actor.clone(),
                ..Record::default()
            });
        }
        t.record(&Record {
            time_ns: 200,
            event: EventType::Pinned,
            kind: Some(NsKind::Net),
            inode: Some(7),
            pinned_by: vec!["bind mount /run/netns/a".into()],
            ..Record::default()
        });
        let mut buf = Vec::new();
        write(&t, &mut buf).unwrap();
        let trace = Trace::decode(buf.as_slice()).unwrap();
        let events: Vec<&TrackEvent> = trace
            .packet
            .iter()
            .filter_map(|p| p.track_event.as_ref())
            .collect();
        // Per track, begins and ends pair up in order.
        let mut depth: HashMap<u64, i32> = HashMap::new();
        for e in &events {
            let d = depth.entry(e.track_uuid.unwrap()).or_default();
            match e.r#type {
                Some(SLICE_BEGIN) => *d += 1,
                Some(SLICE_END) => {
                    *d -= 1;
                    assert!(*d >= 0);
                }
                _ => {}
            }
        }
        assert!(depth.values().all(|&d| d == 0));
        // One create mark (one call), two flows out; each life slice ends one.
        let out: Vec<u64> = events.iter().flat_map(|e| e.flow_ids.clone()).collect();
        let mut ended: Vec<u64> = events
            .iter()
            .flat_map(|e| e.terminating_flow_ids.clone())
            .collect();
        ended.sort();
        assert_eq!(out, ended);
        assert_eq!(out.len(), 2);
        // Descriptors before events, every packet on the sequence.
        let first_event = trace
            .packet
            .iter()
            .position(|p| p.track_event.is_some())
            .unwrap();
        assert!(
            trace.packet[first_event..]
                .iter()
                .all(|p| p.track_descriptor.is_none())
        );
        assert!(
            trace
                .packet
                .iter()
                .all(|p| p.trusted_packet_sequence_id == Some(SEQUENCE))
        );
    }
}
