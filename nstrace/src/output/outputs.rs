//! Where a live trace's records go: one declared list, in the order a
//! record reaches them, each output saying whether the filters apply.
//! `--metrics`, the leak list (`nstrace ls --leaks` reads it) and `--output
//! FILE` take every record (counts, leaks and a saved trace must not depend
//! on what was shown); the pictures and stdout take
//! what the filters pass. An output that fails is told with its cause and
//! dropped, and the others go on; the trace ends when none is left.

use std::{io, path::Path};

use super::{Sink, filter::Filter, leaks::LeakList, metrics::Metrics, timeline::Timeline};
use crate::{
    model::{Loss, Record, Start, Stop},
    util::escape,
};

enum Target<'a> {
    /// `--metrics`.
    Metrics(Metrics),
    /// The suspect leaks told, for `nstrace ls` (not an output the trace
    /// goes on for alone).
    Leaks(LeakList),
    /// `--output FILE`: JSON Lines.
    File(Box<dyn Sink + 'a>),
    /// `--perfetto`/`--html`: the lanes drawn when tracing stops.
    Timeline(Box<Timeline>),
    /// The timeline or JSON the user reads.
    Stdout(Box<dyn Sink + 'a>),
}

struct Output<'a> {
    target: Target<'a>,
    /// Takes only the records the filters pass.
    filtered: bool,
    /// How messages name it.
    name: String,
    /// Records written to it (its `stop` line's count).
    records: u64,
}

impl<'a> Output<'a> {
    fn sink(&mut self) -> &mut (dyn Sink + 'a) {
        match &mut self.target {
            Target::Metrics(m) => m,
            Target::Leaks(l) => l,
            Target::File(s) | Target::Stdout(s) => s.as_mut(),
            Target::Timeline(t) => t.as_mut(),
        }
    }
}

pub struct Outputs<'a> {
    pub filter: Filter,
    list: Vec<Output<'a>>,
    /// Records the filters passed: the closing line's count.
    pub shown: u64,
    /// Why stdout failed, if it did.
    stdout_error: Option<io::Error>,
}

impl<'a> Outputs<'a> {
    pub fn new(
        filter: Filter,
        metrics: Option<Metrics>,
        leaks: Option<LeakList>,
        file: Option<(Box<dyn Sink + 'a>, &Path)>,
        timeline: Option<Timeline>,
        stdout: Box<dyn Sink + 'a>,
    ) -> Self {
        let output = |target, filtered, name: &str| Output {
            target,
            filtered,
            name: name.to_string(),
            records: 0,
        };
        // The order a record reaches them.
        let list = [
            metrics.map(|m| output(Target::Metrics(m), false, "the metrics")),
            leaks.map(|l| {
                let name = format!("the leak list {}", escape::path(&l.path()));
                output(Target::Leaks(l), false, &name)
            }),
            file.map(|(s, path)| output(Target::File(s), false, escape::path(path).as_ref())),
            timeline.map(|t| output(Target::Timeline(Box::new(t)), true, "the pictures")),
            Some(output(Target::Stdout(stdout), true, "stdout")),
        ];
        Outputs {
            filter,
            list: list.into_iter().flatten().collect(),
            shown: 0,
            stdout_error: None,
        }
    }

    /// Writes to every output `to` picks; one that fails is dropped.
    fn each(
        &mut self,
        to: impl Fn(&Output) -> bool,
        mut write: impl FnMut(&mut (dyn Sink + 'a)) -> io::Result<bool>,
    ) {
        let mut i = 0;
        while i < self.list.len() {
            let o = &mut self.list[i];
            if !to(o) {
                i += 1;
                continue;
            }
            match write(o.sink()) {
                Ok(counted) => {
                    o.records += u64::from(counted);
                    i += 1;
                }
                Err(e) => self.fail(i, e),
            }
        }
    }

    /// Tells why output `i` failed (not when stdout's reader just went
    /// away, as `head` does) and drops it.
    fn fail(&mut self, i: usize, e: io::Error) {
        let o = self.list.remove(i);
        let stdout = matches!(o.target, Target::Stdout(_));
        if !(stdout && e.kind() == io::ErrorKind::BrokenPipe) {
            eprintln!("nstrace: error: writing {}: {e}", o.name);
        }
        if !self.list.is_empty() {
            eprintln!(
                "nstrace: {} is no longer written; tracing goes on for the other outputs",
                o.name
            );
        }
        if stdout {
            self.stdout_error = Some(e);
        }
    }

    pub fn record(&mut self, r: &Record) {
        let shown = self.filter.matches(r);
        self.shown += u64::from(shown);
        self.each(|o| shown || !o.filtered, |s| s.record(r).map(|()| true));
    }

    pub fn lost(&mut self, l: &Loss) {
        self.each(|_| true, |s| s.lost(l).map(|()| false));
    }

    pub fn start(&mut self, st: &Start) {
        self.each(|_| true, |s| s.start(st).map(|()| false));
    }

    /// The `stop` lines, each with the records its output was given.
    pub fn stop(&mut self, time_ns: i128, kernel_events: u64, lost: u64) {
        let mut i = 0;
        while i < self.list.len() {
            let o = &mut self.list[i];
            let st = Stop {
                time_ns,
                records: o.records,
                kernel_events,
                lost,
            };
            let s = o.sink();
            match s.stop(&st).and_then(|()| s.flush()) {
                Ok(()) => i += 1,
                Err(e) => self.fail(i, e),
            }
        }
    }

    pub fn flush(&mut self) {
        self.each(|_| true, |s| s.flush().map(|()| false));
    }

    /// Records written to `--output FILE` so far.
    pub fn saved(&self) -> u64 {
        self.list
            .iter()
            .find(|o| matches!(o.target, Target::File(_)))
            .map_or(0, |o| o.records)
    }

    pub fn metrics(&mut self) -> Option<&mut Metrics> {
        self.list.iter_mut().find_map(|o| match &mut o.target {
            Target::Metrics(m) => Some(m),
            _ => None,
        })
    }

    /// Whether nothing is left to write to (the leak list is no reason to
    /// go on): the trace ends.
    pub fn gone(&self) -> bool {
        self.list
            .iter()
            .all(|o| matches!(o.target, Target::Leaks(_)))
    }

    /// Closes every output but the pictures' timeline, returned to be
    /// drawn, with why stdout failed.
    pub fn close(self) -> (Option<Timeline>, Option<io::Error>) {
        let timeline = self.list.into_iter().find_map(|o| match o.target {
            Target::Timeline(t) => Some(*t),
            _ => None,
        });
        (timeline, self.stdout_error)
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, rc::Rc};

    use super::*;
    use crate::model::{EventType, NsKind};

    /// A sink that keeps what it is given, and fails when told to.
    #[derive(Clone, Default)]
    struct Kept {
        lines: Rc<RefCell<Vec<String>>>,
        fail: Option<io::ErrorKind>,
    }

    impl Sink for Kept {
        fn record(&mut self, r: &Record) -> io::Result<()> {
            if let Some(k) = self.fail {
                return Err(k.into());
            }
            self.lines.borrow_mut().push(format!("{:?}", r.kind));
            Ok(())
        }
        fn lost(&mut self, _: &Loss) -> io::Result<()> {
            Ok(())
        }
        fn stop(&mut self, st: &Stop) -> io::Result<()> {
            self.lines.borrow_mut().push(format!("stop {}", st.records));
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn record(kind: NsKind) -> Record {
        Record {
            event: EventType::Create,
            kind: Some(kind),
            inode: Some(1),
            ..Record::default()
        }
    }

    fn net_only() -> Filter {
        Filter {
            kinds: Some(vec![NsKind::Net]),
            ..Filter::default()
        }
    }

    #[test]
    fn the_file_takes_everything_stdout_what_the_filters_pass() {
        let (file, stdout) = (Kept::default(), Kept::default());
        let mut o = Outputs::new(
            net_only(),
            None,
            None,
            Some((Box::new(file.clone()), Path::new("t.jsonl"))),
            None,
            Box::new(stdout.clone()),
        );
        o.record(&record(NsKind::Net));
        o.record(&record(NsKind::Uts));
        o.stop(0, 2, 0);
        assert_eq!(*file.lines.borrow(), ["Some(Net)", "Some(Uts)", "stop 2"]);
        assert_eq!(*stdout.lines.borrow(), ["Some(Net)", "stop 1"]);
        assert_eq!((o.shown, o.saved()), (1, 2));
    }

    #[test]
    fn a_failed_output_is_dropped_and_the_others_go_on() {
        let stdout = Kept::default();
        let file = Kept {
            fail: Some(io::ErrorKind::StorageFull),
            ..Kept::default()
        };
        let mut o = Outputs::new(
            Filter::default(),
            None,
            None,
            Some((Box::new(file), Path::new("t.jsonl"))),
            None,
            Box::new(stdout.clone()),
        );
        o.record(&record(NsKind::Net));
        o.record(&record(NsKind::Net));
        assert!(!o.gone());
        assert_eq!(o.saved(), 0);
        assert_eq!(stdout.lines.borrow().len(), 2);
        let (_, stdout_error) = o.close();
        assert!(stdout_error.is_none());
    }

    #[test]
    fn stdout_gone_alone_ends_the_trace_and_keeps_its_cause() {
        let stdout = Kept {
            fail: Some(io::ErrorKind::BrokenPipe),
            ..Kept::default()
        };
        let mut o = Outputs::new(Filter::default(), None, None, None, None, Box::new(stdout));
        o.record(&record(NsKind::Net));
        assert!(o.gone());
        let (_, e) = o.close();
        assert_eq!(e.map(|e| e.kind()), Some(io::ErrorKind::BrokenPipe));
    }
}
