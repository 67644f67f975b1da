use std::process::ExitCode;

use clap::Parser as _;
use nstrace::{
    cli::{Cli, Command},
    cmd, session,
    util::{error::hint_of, escape::Escaped},
};

/// musl's allocator is slow for a tracer's many small allocations (see
/// Cargo.toml); glibc's is kept where it is the libc.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // First: a stop signal at any moment of start-up must end the run.
    nstrace::sys::signals::install();
    std::panic::set_hook(Box::new(|info| {
        // A panic message can quote what it failed on (a name, a line).
        eprintln!("nstrace: internal error: {}", Escaped(&info.to_string()));
        eprintln!("  hint: this is a bug in nstrace; please report it with the line above");
    }));
    let cli = Cli::parse();
    if let Some(what) = cli.generate {
        return match nstrace::cmd::generate::to_stdout(what) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nstrace: error: {}", Escaped(&format!("{e:#}")));
                ExitCode::FAILURE
            }
        };
    }
    let outcome = match &cli.command {
        Some(Command::Ls { json, tree, leaks }) => cmd::ls::run(*json, *tree, *leaks).map(|()| 0),
        Some(Command::Report {
            file,
            json,
            perfetto,
            html,
        }) => cmd::report::run(file, *json, perfetto.as_deref(), html.as_deref()).map(|()| 0),
        None => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(session::run(&cli)),
            Err(e) => {
                eprintln!("nstrace: error: cannot start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    match outcome {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        // A load or wait cut short by the stop signal is the user's stop,
        // not a failure: everything loaded so far was dropped on the way out.
        Err(_) if nstrace::sys::signals::requested().is_some() => {
            eprintln!("nstrace: stopped during start-up, before tracing began");
            ExitCode::SUCCESS
        }
        // The reader went away (`nstrace ls | head -1`): what it wanted
        // was written; as for any Unix filter, that is not a failure.
        Err(err) if broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // Errors quote paths, names and saved traces' contents.
            eprintln!("nstrace: error: {}", Escaped(&format!("{err:#}")));
            if let Some(hint) = hint_of(&err) {
                eprintln!("  hint: {}", Escaped(hint));
            }
            ExitCode::FAILURE
        }
    }
}

/// Whether writing to stdout failed because its reader closed it.
fn broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
