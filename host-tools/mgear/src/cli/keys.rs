//! `mgear keygen` and `mgear keys`' flags, as [`keys::Keygen`] and [`keys::Request`].
use std::path::PathBuf;

use mgear::keys;

/// Arguments of `mgear keygen`.
#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// Where to write the secret identity (0600); the public key goes next to it with `.pub`.
    #[arg(long)]
    pub out: PathBuf,
    /// Overwrite existing key files.
    #[arg(long)]
    pub force: bool,
    /// Make a capture site's Ed25519 signing key instead (KEY: PKCS#8 PEM, 0600;
    /// KEY.pub: give it to the target, which pins it with `--trust`).
    #[arg(long)]
    pub signing: bool,
}

/// Arguments of `mgear keys`.
#[derive(clap::Args, Debug)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub cmd: KeysCmd,
}

/// `mgear keys ...`: the data keys this capture host keeps for deltas and syncs.
#[derive(clap::Subcommand, Debug)]
pub enum KeysCmd {
    /// List the cached data keys: capture name, capture id, file.
    List {
        /// Key cache directory [default: $XDG_STATE_HOME/mgear/keys or ~/.local/state/mgear/keys].
        #[arg(long)]
        key_cache: Option<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Delete cached data keys: no delta or sync of that capture can run here afterwards.
    // One of the two is needed: a missing one was said as "--capture-id" alone.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["capture_id", "name"])))]
    Forget {
        /// Key cache directory [default: $XDG_STATE_HOME/mgear/keys or ~/.local/state/mgear/keys].
        #[arg(long)]
        key_cache: Option<PathBuf>,
        /// The capture id (as `keys list` or the capture receipt shows it).
        #[arg(long)]
        capture_id: Option<String>,
        /// Every key of this capture name (case-insensitive); with several, also --all.
        #[arg(long)]
        name: Option<String>,
        /// With --name: forget all of that name's captures.
        #[arg(long, requires = "name")]
        all: bool,
    },
}

impl KeygenArgs {
    /// The typed request.
    pub fn into_plan(self) -> keys::Keygen {
        let a = self;
        keys::Keygen {
            out: a.out,
            force: a.force,
            signing: a.signing,
        }
    }
}

impl KeysArgs {
    /// The typed request.
    pub fn into_plan(self) -> keys::Request {
        match self.cmd {
            KeysCmd::List { key_cache, json } => keys::Request::List { key_cache, json },
            KeysCmd::Forget {
                key_cache,
                capture_id,
                name,
                all,
            } => keys::Request::Forget {
                key_cache,
                capture_id,
                name,
                all,
            },
        }
    }
}
