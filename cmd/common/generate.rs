//! `generate man|bash|zsh|fish|elvish`: a binary's manual page (roff) or a
//! completion script for a shell, on stdout, from its own command-line
//! definition. The Debian package is built with these.

use std::io::Write;

use clap::ValueEnum;
use clap_complete::Shell;

/// What `generate` writes.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Artifact {
    /// The manual page, section 1, in roff.
    Man,
    Bash,
    Zsh,
    Fish,
    Elvish,
}

/// Writes `what` for the command `cmd` to stdout.
pub fn generate(mut cmd: clap::Command, what: Artifact) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let shell = match what {
        Artifact::Man => return clap_mangen::Man::new(cmd).render(&mut out),
        Artifact::Bash => Shell::Bash,
        Artifact::Zsh => Shell::Zsh,
        Artifact::Fish => Shell::Fish,
        Artifact::Elvish => Shell::Elvish,
    };
    let name = cmd.get_name().to_owned();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    out.flush()
}
