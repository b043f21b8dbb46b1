//! `dinoedge generate man --out DIR` and `dinoedge generate complete-bash|zsh|fish`: the man
//! pages and shell completions of dinoedge's own command line (what the .deb packages install;
//! `packaging/deb/build.sh` runs this), from the clap definitions so they never drift.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap_complete::Shell;

/// Arguments of `dinoedge generate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to write: `man` (pages into --out), or a shell's completions on stdout.
    what: Generated,
    /// The folder for the man pages (`dinoedge.1`, `dinoedge-run.1`, …).
    #[arg(long, required_if_eq("what", "man"))]
    out: Option<PathBuf>,
}

/// What `dinoedge generate` writes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Generated {
    /// Man pages: `dinoedge.1` and one per subcommand.
    Man,
    /// bash completions (`/usr/share/bash-completion/completions/dinoedge`).
    CompleteBash,
    /// zsh completions (`_dinoedge` in a `$fpath` folder).
    CompleteZsh,
    /// fish completions (`dinoedge.fish` in `vendor_completions.d`).
    CompleteFish,
}

/// Write what was asked for, of the command line `cli`.
pub fn run(args: Args, mut cli: clap::Command) -> Result<()> {
    let shell = match args.what {
        Generated::Man => {
            let dir = args.out.context("--out DIR is needed for the man pages")?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cli, &dir)
                .with_context(|| format!("writing the man pages into {}", dir.display()))?;
            return Ok(());
        }
        Generated::CompleteBash => Shell::Bash,
        Generated::CompleteZsh => Shell::Zsh,
        Generated::CompleteFish => Shell::Fish,
    };
    clap_complete::generate(shell, &mut cli, "dinoedge", &mut std::io::stdout());
    Ok(())
}
