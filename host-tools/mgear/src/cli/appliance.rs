//! `mgear appliance`'s flags, as an [`appliance::Plan`].
use std::path::PathBuf;

use mgear::appliance;

/// Arguments of `mgear appliance`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The appliance's console: a serial device or the simulator's
    /// --console-link. Default: the one attached appliance found by USB id.
    #[arg(long, global = true, env = "MGEAR_APPLIANCE")]
    pub port: Option<PathBuf>,
    /// Print the result as one JSON object on stdout (errors too).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// What to ask the appliance.
#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// State, identity, medium and counters.
    Info,
    /// First use: set the PIN and create the appliance's Ed25519 identity.
    Provision {
        /// Read the PIN from this file (first line) instead of the terminal.
        #[arg(long)]
        pin_file: Option<PathBuf>,
    },
    /// Enter the PIN: the medium accepts writes until `lock` or `seal`.
    Unlock {
        /// Read the PIN from this file (first line) instead of the terminal.
        #[arg(long)]
        pin_file: Option<PathBuf>,
    },
    /// Make the medium read-only again.
    Lock,
    /// Keyless verification of every capture on the medium.
    Verify,
    /// Verify, write-protect the medium for good and sign the seal attestation.
    Seal,
    /// At the target: verify again, compare with the seal, sign the arrival attestation.
    Arrival,
    /// Show the stored attestations, or save them as files for ingest.
    Attestations {
        /// Write DIR/SEAL and DIR/ARRIVAL (what `mgear ingest` checks).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the custody log.
    Log {
        /// Check the hash chain, every signature, and that the log still
        /// holds every record the stored attestations pin.
        #[arg(long)]
        verify: bool,
        /// Verify against this pinned identity (the 64-hex-digit fingerprint
        /// `appliance info` printed when you provisioned it) instead of the
        /// key the device reports.
        #[arg(long, value_name = "FINGERPRINT", requires = "verify")]
        trust_appliance: Option<String>,
    },
    /// Crypto-erase: destroy the key slots on the medium and the appliance's
    /// secrets. Needs the PIN (asked for unless the appliance is unlocked;
    /// always on a sealed appliance).
    Erase {
        /// Also overwrite the whole medium afterwards.
        #[arg(long)]
        overwrite: bool,
        /// Read the PIN from this file (first line) instead of the terminal.
        #[arg(long)]
        pin_file: Option<PathBuf>,
        /// Confirm: this cannot be undone.
        #[arg(long)]
        yes: bool,
        /// Write an erase certificate: FILE (JSON) and FILE with its extension replaced by `.txt` (r.json: r.txt): the
        /// appliance's identity, what was erased and when, and the custody
        /// record of the erase, signed by the appliance and checked here.
        #[arg(long, value_name = "FILE")]
        certificate: Option<PathBuf>,
    },
    /// List attached appliances (USB serial devices with MotionGear's id).
    List,
}

impl Args {
    /// The typed request.
    pub fn into_plan(self) -> appliance::Plan {
        let cmd = match self.cmd {
            Cmd::Info => appliance::Cmd::Info,
            Cmd::Provision { pin_file } => appliance::Cmd::Provision { pin_file },
            Cmd::Unlock { pin_file } => appliance::Cmd::Unlock { pin_file },
            Cmd::Lock => appliance::Cmd::Lock,
            Cmd::Verify => appliance::Cmd::Verify,
            Cmd::Seal => appliance::Cmd::Seal,
            Cmd::Arrival => appliance::Cmd::Arrival,
            Cmd::Attestations { out } => appliance::Cmd::Attestations { out },
            Cmd::Log {
                verify,
                trust_appliance,
            } => appliance::Cmd::Log {
                verify,
                trust_appliance,
            },
            Cmd::Erase {
                overwrite,
                pin_file,
                yes,
                certificate,
            } => appliance::Cmd::Erase {
                overwrite,
                pin_file,
                yes,
                certificate,
            },
            Cmd::List => appliance::Cmd::List,
        };
        appliance::Plan {
            port: self.port,
            json: self.json,
            cmd,
        }
    }
}
