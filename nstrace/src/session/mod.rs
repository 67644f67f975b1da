//! One tracing session: [`startup`] checks, loads and prints the start-up
//! line; [`run`] routes each kernel event through decode, state and the
//! sinks until a stop; [`close`] waits for the last verdicts and stops.

pub mod close;
pub mod command;
pub mod run;
pub mod startup;

use anyhow::Result;
use tokio::{io::unix::AsyncFd, signal::unix::Signal};

use crate::{cli::Cli, kernel::diagnostics, output::Pictures};

/// What start-up hands the loop, and the loop the close.
pub struct Session {
    t: run::Tracer<'static>,
    events: AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
    diagnostics: Option<AsyncFd<diagnostics::Reader>>,
    kernel_log: Option<&'static diagnostics::KernelLog>,
    /// Command mode: the command.
    command: Option<tokio::process::Child>,
    pictures: Option<Pictures>,
    sigint: Signal,
    sigterm: Signal,
    sighup: Signal,
    /// A stop signal came before the handlers: stop as soon as begun.
    signalled_before: bool,
    tick: tokio::time::Interval,
}

/// Traces until a stop signal (or, in command mode, until the command's
/// namespaces are done). Returns the exit status: 0, or the command's.
pub async fn run(cli: &Cli) -> Result<i32> {
    let Some(mut session) = startup::start(cli).await? else {
        return Ok(0);
    };
    let ended = run::until_stop(&mut session).await?;
    close::close(cli, session, ended).await
}
