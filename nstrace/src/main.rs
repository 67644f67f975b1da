use std::process::ExitCode;

use clap::Parser as _;
use nstrace::{cli::Cli, error::hint_of, escape::Escaped, session};

fn main() -> ExitCode {
    // First: a stop signal at any moment of start-up must end the run.
    nstrace::signals::install();
    std::panic::set_hook(Box::new(|info| {
        // A panic message can quote what it failed on (a name, a line).
        eprintln!("nstrace: internal error: {}", Escaped(&info.to_string()));
        eprintln!("  hint: this is a bug in nstrace; please report it with the line above");
    }));
    let cli = Cli::parse();
    if let Some(what) = cli.generate {
        return match nstrace::generate::to_stdout(what) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nstrace: error: {}", Escaped(&format!("{e:#}")));
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("nstrace: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(session::run(&cli)) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        // A load or wait cut short by the stop signal is the user's stop,
        // not a failure: everything loaded so far was dropped on the way out.
        Err(_) if nstrace::signals::requested().is_some() => {
            eprintln!("nstrace: stopped during start-up, before tracing began");
            ExitCode::SUCCESS
        }
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
