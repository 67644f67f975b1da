//! One self-contained HTML page drawing a [`Timeline`]: groups by
//! container, kind and creating command (a crowd of short-lived
//! namespaces as one row of how many were alive, opened on click), lanes
//! for the ones that matter, hover details, zoom and pan, a search box;
//! only the rows in view are in the DOM. No network at view time (the
//! page, its script and its data are one file, fine to attach to a bug).
//!
//! The page is `timeline.html` with the timeline's data put in as JSON;
//! times in it are nanoseconds from the trace's beginning (epoch
//! nanoseconds do not fit a JavaScript number exactly).

use std::io::{self, Write};

use serde_json::{Value, json};

use crate::{
    output::timeline::{
        BEFORE, GROUP_WINDOW, KEPT, Lane, MARKS, Timeline, WINDOW, shown_processes,
    },
    sys::time::rfc3339,
};

const PAGE: &str = include_str!("timeline.html");
const SLOT: &str = "/*NSTRACE_DATA*/";

/// The data the page draws (see the template's script for its use):
/// groups of container, kind and command; each with its counts, its
/// series of alive namespaces, and its kept lanes.
pub fn data(t: &Timeline) -> Value {
    let origin = t.begin_ns();
    let end = t.end_ns();
    let rel = |ns: i128| (ns - origin).max(0) as u64;
    let lane = |l: &Lane| {
        json!({
            "kind": l.kind.name(),
            "inode": l.inode,
            "ns_id": l.ns_id,
            "title": l.title(),
            "begin": rel(l.begin_ns),
            "end": rel(l.end_ns(end)),
            "phases": l.phases.iter().map(|p| json!({"t": rel(p.from_ns), "pinned_by": p.pinned_by})).collect::<Vec<_>>(),
            "born": l.born.as_ref().map(|b| json!({"comm": b.comm, "pid": b.pid, "syscall": b.syscall.name()})),
            "created_by": l.born.as_ref().filter(|_| l.created_by.is_some()).map(|b| format!("{} (pid {})", b.comm, b.pid)),
            "end_cause": l.end.as_ref().map(|e| e.cause.name()),
            "end_by": l.end.as_ref().and_then(|e| e.by).map(|b| b.name()),
            "joins": l.joins.iter().map(|j| json!({"t": rel(j.time_ns), "what": j.what, "comm": j.comm, "pid": j.pid})).collect::<Vec<_>>(),
            "join_count": l.join_count,
        })
    };
    let mut groups: Vec<(String, Vec<Value>)> = Vec::new();
    let mut kinds: Vec<&'static str> = Vec::new();
    let drawn = t.drawn();
    let (shown, makers_of_crowds) = shown_processes(t, &drawn);
    for d in &drawn {
        let g = d.group;
        if !kinds.contains(&g.kind.name()) {
            kinds.push(g.kind.name());
        }
        // Points as [peak, last, created, ended]: four numbers, not four
        // keys, for a page that may hold thousands of them.
        let points: Vec<[u32; 4]> = g
            .series
            .points
            .iter()
            .map(|p| [p.peak, p.last, p.created, p.ended])
            .collect();
        let row = json!({
            "id": d.index,
            "kind": g.kind.name(),
            "comm": g.comm,
            "count": g.count,
            "peak": g.peak,
            "alive": g.alive,
            "dropped": g.dropped,
            "aggregated": g.aggregated(),
            "series": {"origin": rel(g.series.origin), "width": g.series.width, "points": points},
            "lanes": d.lanes.iter().map(|l| lane(l)).collect::<Vec<_>>(),
            "more": d.more.iter().map(|l| lane(l)).collect::<Vec<_>>(),
        });
        match groups.last_mut() {
            Some((name, rows)) if *name == g.container => rows.push(row),
            _ => groups.push((g.container.clone(), vec![row])),
        }
    }
    kinds.sort_by_key(|k| crate::model::NsKind::from_name(k));
    let processes: Vec<Value> = shown
        .iter()
        .map(|(pid, p)| {
            json!({
                "pid": pid,
                "comm": p.comm,
                "group": p.group,
                "marks": p.marks.iter().map(|m| json!({"t": rel(m.time_ns), "what": m.what, "failed": m.failed})).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "start": rfc3339(origin),
        "kernel": t.kernel,
        "end": rel(end),
        "namespaces": t.namespaces,
        "makers_of_crowds": makers_of_crowds,
        "before": BEFORE,
        "kinds": kinds,
        "dropped": {
            "lanes": t.dropped.lanes,
            "kept_lanes": t.dropped.kept_lanes,
            "processes": t.dropped.processes,
            "marks": t.dropped.marks,
        },
        "window": {"total": WINDOW, "group": GROUP_WINDOW, "kept": KEPT, "marks": MARKS},
        "groups": groups.into_iter().map(|(name, rows)| json!({"name": name, "rows": rows})).collect::<Vec<_>>(),
        "processes": processes,
    })
}

/// `json` as it can sit inside a `<script>` element: `<`, `>` and `&` as
/// `\u003c`, `\u003e`, `\u0026`, so that no string can end the element
/// (`</script>`), open a comment or a nested script (`<!--`, `<script`,
/// which in script data make the parser swallow the page's own script), or
/// be read as markup by any other parser; U+2028 and U+2029 as
/// `\u2028`, `\u2029` (line terminators to older JavaScript parsers).
/// These characters occur in JSON text only inside strings, where the
/// escape means the same character: `JSON.parse` gives back the exact data.
pub fn script_safe(json: &str) -> String {
    let mut out = String::with_capacity(json.len() + json.len() / 16);
    let mut from = 0;
    for (i, c) in json.char_indices() {
        let esc = match c {
            '<' => "\\u003c",
            '>' => "\\u003e",
            '&' => "\\u0026",
            '\u{2028}' => "\\u2028",
            '\u{2029}' => "\\u2029",
            _ => continue,
        };
        out.push_str(&json[from..i]);
        out.push_str(esc);
        from = i + c.len_utf8();
    }
    out.push_str(&json[from..]);
    out
}

/// Writes the page for `t`.
pub fn write(t: &Timeline, mut out: impl Write) -> io::Result<()> {
    let data = script_safe(&data(t).to_string());
    let (head, tail) = PAGE.split_once(SLOT).expect("the template has a data slot");
    out.write_all(head.as_bytes())?;
    out.write_all(data.as_bytes())?;
    out.write_all(tail.as_bytes())?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Actor, EventType, NsKind, Record, Syscall};

    #[test]
    fn data_is_relative_and_the_page_holds_it_safely() {
        let mut t = Timeline::default();
        t.record(&Record {
            time_ns: 1_700_000_000_000_000_100,
            event: EventType::Create,
            kind: Some(NsKind::Net),
            inode: Some(7),
            syscall: Some(Syscall::Unshare),
            actor: Some(Actor {
                pid: 1,
                tid: 1,
                comm: "</script>".into(),
                ..Actor::default()
            }),
            ..Record::default()
        });
        let d = data(&t);
        assert_eq!(d["groups"][0]["rows"][0]["lanes"][0]["begin"], 0);
        assert_eq!(d["groups"][0]["name"], "host");
        let mut page = Vec::new();
        write(&t, &mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        assert!(!page.contains(SLOT));
        assert_eq!(page.matches("</script>").count(), 2, "only the page's own");
    }

    #[test]
    fn no_string_can_end_or_comment_out_the_script() {
        let hostile = [
            "<!--<script>",
            "</script><script>alert(1)</script>",
            "&lt;",
            "]]></",
            "a\u{2028}b\u{2029}c",
            "\\u003c",
        ];
        let mut t = Timeline::default();
        for (i, comm) in hostile.iter().enumerate() {
            t.record(&Record {
                time_ns: 1_700_000_000_000_000_100 + i as i128,
                event: EventType::Create,
                kind: Some(NsKind::Net),
                inode: Some(7 + i as u32),
                syscall: Some(Syscall::Unshare),
                actor: Some(Actor {
                    pid: 1 + i as u32,
                    tid: 1 + i as u32,
                    comm: comm.to_string(),
                    ..Actor::default()
                }),
                ..Record::default()
            });
        }
        let mut page = Vec::new();
        write(&t, &mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        let (_, rest) = page
            .split_once("<script id=\"data\" type=\"application/json\">")
            .unwrap();
        let (embedded, _) = rest.split_once("</script>").unwrap();
        for c in ['<', '>', '&', '\u{2028}', '\u{2029}'] {
            assert!(!embedded.contains(c), "{c:?} raw in {embedded}");
        }
        // What the page's JSON.parse reads is the data, exactly.
        let back: Value = serde_json::from_str(embedded).unwrap();
        assert_eq!(back, data(&t));
        let comms: Vec<&str> = back["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["comm"].as_str().unwrap())
            .collect();
        for comm in hostile {
            assert!(comms.contains(&comm), "{comm:?} not in {comms:?}");
        }
    }

    #[test]
    fn a_crowd_is_one_row_and_the_page_stays_small() {
        let mut t = Timeline::default();
        for i in 0..60_000u32 {
            for (event, time) in [(EventType::Create, 0), (EventType::Destroy, 500)] {
                t.record(&Record {
                    time_ns: 1_700_000_000_000_000_000 + i128::from(i) * 1_000 + time,
                    event,
                    kind: Some(NsKind::Uts),
                    inode: Some(4_026_532_177 + i % 2),
                    ns_id: Some(u64::from(i)),
                    syscall: Some(Syscall::Clone),
                    actor: Some(Actor {
                        pid: 100 + i,
                        tid: 100 + i,
                        comm: "churn".into(),
                        ..Actor::default()
                    }),
                    ..Record::default()
                });
            }
        }
        let d = data(&t);
        let rows = d["groups"][0]["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(
            (row["count"].as_u64(), row["peak"].as_u64()),
            (Some(60_000), Some(1))
        );
        assert_eq!(row["aggregated"], true);
        assert_eq!(row["lanes"].as_array().unwrap().len(), 0);
        assert_eq!(row["more"].as_array().unwrap().len(), GROUP_WINDOW);
        assert_eq!(d["namespaces"], 60_000);
        assert_eq!(d["dropped"]["lanes"], 60_000 - GROUP_WINDOW as u64);
        let mut page = Vec::new();
        write(&t, &mut page).unwrap();
        assert!(page.len() < 2 << 20, "{} bytes", page.len());
    }
}
