//! `mgear verify`'s flags, as a [`verify::Plan`].
use std::path::PathBuf;

use mgear::verify;

/// Arguments of `mgear verify`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub medium: super::medium::Where,
    /// Target identity (from `mgear keygen`): also decrypt and check every chunk.
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// Passphrase file: also decrypt and check every chunk.
    #[arg(long, conflicts_with = "identity")]
    pub passphrase_file: Option<PathBuf>,
    /// Only this capture.
    #[arg(long)]
    pub name: Option<String>,
    /// Generation to decrypt with a key [default: newest].
    #[arg(long)]
    pub generation: Option<u32>,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Pinned trust (checked with a key or with any of these flags).
    #[command(flatten)]
    pub trust: super::trust::TrustArgs,
}

impl Args {
    /// The typed plan.
    pub fn into_plan(self) -> verify::Plan {
        let a = self;
        verify::Plan {
            medium: a.medium.into(),
            identity: a.identity,
            passphrase_file: a.passphrase_file,
            name: a.name,
            generation: a.generation,
            json: a.json,
            trust: a.trust.into(),
        }
    }
}
