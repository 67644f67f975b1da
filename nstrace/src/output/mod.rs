//! Output layers: one module per format, all fed [`Record`]s.

pub mod html;
pub mod json;
pub mod metrics;
pub mod perfetto;
pub mod text;

use std::{
    fs::File,
    io::{self, Write},
    path::{Path, PathBuf},
};

use crate::{
    error::hinted,
    escape,
    record::{Loss, Record, Start, Stop},
    timeline::Timeline,
};

/// The picture files asked for (`--perfetto`, `--html`), created up front
/// so that a path that cannot be written fails before any tracing.
pub struct Pictures {
    perfetto: Option<(PathBuf, File)>,
    html: Option<(PathBuf, File)>,
}

fn create(path: &Path) -> anyhow::Result<(PathBuf, File)> {
    let f = File::create(path).map_err(|e| {
        hinted(
            format!("cannot write {}: {e}", escape::path(path)),
            "give a path in a writable directory",
        )
    })?;
    Ok((path.to_path_buf(), f))
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

    /// Draws `t` into the files; says on stderr where they are.
    pub fn write(self, t: &Timeline) -> anyhow::Result<()> {
        let fail =
            |path: &Path, e: io::Error| anyhow::anyhow!("writing {}: {e}", escape::path(path));
        if let Some((path, f)) = self.perfetto {
            perfetto::write(t, io::BufWriter::new(f)).map_err(|e| fail(&path, e))?;
            eprintln!(
                "nstrace: wrote {} ({} namespaces; open it in https://ui.perfetto.dev)",
                escape::path(&path),
                t.lanes.len()
            );
        }
        if let Some((path, f)) = self.html {
            html::write(t, io::BufWriter::new(f)).map_err(|e| fail(&path, e))?;
            eprintln!(
                "nstrace: wrote {} ({} namespaces; open it in a browser)",
                escape::path(&path),
                t.lanes.len()
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

/// Builds the sink for the chosen format over `out`; `color`: the
/// timeline's event names in colour (ignored for JSON).
pub fn sink<'a, W: Write + 'a>(json: bool, color: bool, out: W) -> Box<dyn Sink + 'a> {
    if json {
        Box::new(json::JsonSink::new(out))
    } else {
        Box::new(text::TextSink::new(out).with_color(color))
    }
}
