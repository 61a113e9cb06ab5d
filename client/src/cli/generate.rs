//! `spool completions SHELL` and `spool man`: shell completion scripts (clap_complete) and
//! man pages (clap_mangen), generated from the argument tree itself, so they never drift
//! from what the CLI accepts. Neither needs a broker.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, CommandFactory};
use clap_complete::Shell;

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    shell: Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write spool.1 and a page per subcommand (spool-topic.1, spool-queue-work.1, ...)
    /// into this directory, instead of printing spool.1.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Prints the completion script for `a.shell`.
pub fn completions(a: CompletionsArgs) -> anyhow::Result<()> {
    let mut cmd = super::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "spool", &mut script);
    print_all(&script)
}

/// Writes `bytes` to stdout; a reader that stops early (`| head`) is not an error.
fn print_all(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}

/// Prints spool.1, or writes every page into `a.dir`.
pub fn man(a: ManArgs) -> anyhow::Result<()> {
    let cmd = super::Cli::command();
    match a.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
            println!("man pages written to {}", dir.display());
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page)?;
            print_all(&page)?;
        }
    }
    Ok(())
}
