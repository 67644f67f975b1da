//! Output layers: one module per format, all fed [`Record`]s.

pub mod json;
pub mod metrics;
pub mod text;

use std::io::{self, Write};

use crate::record::{Loss, Record, Start, Stop};

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

/// Builds the sink for the chosen format over `out`; `color`: the
/// timeline's event names in colour (ignored for JSON).
pub fn sink<'a, W: Write + 'a>(json: bool, color: bool, out: W) -> Box<dyn Sink + 'a> {
    if json {
        Box::new(json::JsonSink::new(out))
    } else {
        Box::new(text::TextSink::new(out).with_color(color))
    }
}
