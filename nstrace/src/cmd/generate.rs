//! `nstrace --generate`: the man page and shell completions, from the one
//! clap definition in [`crate::cli`] (nothing is written by hand twice).

use std::io::{self, Write};

use anyhow::Result;
use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::cli::{Cli, Generate};

pub fn write(what: Generate, out: &mut dyn Write) -> Result<()> {
    let mut cmd = Cli::command();
    match what {
        Generate::Man => clap_mangen::Man::new(cmd).render(out)?,
        Generate::Bash => clap_complete::generate(Shell::Bash, &mut cmd, "nstrace", out),
        Generate::Zsh => clap_complete::generate(Shell::Zsh, &mut cmd, "nstrace", out),
        Generate::Fish => clap_complete::generate(Shell::Fish, &mut cmd, "nstrace", out),
    }
    out.flush()?;
    Ok(())
}

/// For `main`: to stdout.
pub fn to_stdout(what: Generate) -> Result<()> {
    write(what, &mut io::stdout().lock())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(what: Generate) -> String {
        let mut v = Vec::new();
        write(what, &mut v).unwrap();
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn the_man_page_documents_the_options() {
        let man = text(Generate::Man);
        assert!(
            man.starts_with(".ie") || man.contains(".TH nstrace"),
            "{man}"
        );
        for opt in ["\\-\\-json", "\\-\\-type", "\\-\\-probe\\-mode"] {
            assert!(man.contains(opt), "{opt} missing");
        }
    }

    #[test]
    fn completions_offer_the_kinds_of_type() {
        let bash = text(Generate::Bash);
        assert!(bash.contains("--type"));
        let fish = text(Generate::Fish);
        assert!(fish.contains("probe-mode"));
        assert!(text(Generate::Zsh).contains("#compdef nstrace"));
    }
}
