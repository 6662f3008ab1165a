//! `mgear ingest`'s flags, parsed into an [`ingest::Request`].
use std::path::PathBuf;

use mgear::ingest;
use mgear::units::{parse_rate, parse_size};

/// `mgear ingest` as parsed: the targets of a machine set and the disk to
/// ingest, around the arguments of one disk's ingest.
#[derive(clap::Args, Debug)]
pub struct Cli {
    #[command(flatten)]
    pub args: Args,
    /// Where to write: file:PATH (sparse raw), qcow2:PATH, dev:/dev/DEVICE, libvirt:POOL/NAME,
    /// nbd://..., rbd:POOL/IMAGE[?conf=PATH&id=USER], cinder:NAME or ebs-snapshot:NAME.
    /// For a machine set (several disks): one --target per disk in order, or one
    /// with `{disk}` in it (the disk's index 0, 1, ...), e.g. file:db01-{disk}.raw.
    #[arg(long = "target", value_name = "TARGET", required = true)]
    pub targets: Vec<String>,
    /// Of a machine set, ingest only disk N (0 = the first) into the one --target.
    #[arg(long, value_name = "N")]
    pub disk: Option<usize>,
}

/// Arguments of `mgear ingest` of one disk (`Cli` with its one `--target`).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub medium: super::medium::Where,
    /// Capture name.
    #[arg(long)]
    pub name: String,
    /// Target identity (secret key from `mgear keygen`).
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// Passphrase file (if the capture was made with one).
    #[arg(long, conflicts_with = "identity")]
    pub passphrase_file: Option<PathBuf>,
    /// With ebs-snapshot:NAME: register an AMI from the completed snapshot.
    #[arg(long)]
    pub register_image: bool,
    /// Generation to ingest [default: newest finished].
    #[arg(long)]
    pub generation: Option<u32>,
    /// Where resume state and device markers live [default: $XDG_STATE_HOME/mgear/ingest].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Replace an existing target file (or libvirt volume), or an unfinished
    /// NAME.partial no resume state here vouches for; overwrite a dev: device
    /// that holds a file system or partition table.
    #[arg(long)]
    pub force: bool,
    /// After the ingest, boot the volume (guest writes discarded) and prove it came up.
    #[arg(long)]
    pub boot: bool,
    /// Regex that proves the boot when it appears on the serial console.
    #[arg(long, default_value = "login:|MGEAR-BOOT-OK", requires = "boot")]
    pub wait_for: String,
    /// Seconds to wait for the regex.
    #[arg(long, default_value_t = 300, requires = "boot")]
    pub timeout: u64,
    /// Nova flavor (name or id) the server of a cinder: target boots with (--boot).
    #[arg(long, requires = "boot")]
    pub flavor: Option<String>,
    /// Disk bus for --boot: virtio, ide, sata, nvme or auto.
    #[arg(long, default_value = "auto", requires = "boot")]
    pub boot_bus: String,
    /// Make the guest boot on virtio: run virt-v2v-in-place on the verified
    /// volume (Debian: apt-get install virt-v2v), before --boot.
    #[arg(long)]
    pub adapt: bool,
    /// Ingest even without valid seal/arrival attestations of an appliance
    /// capture (loud warning). Trust still needs a pinned key (--trust).
    #[arg(long)]
    pub allow_unsealed: bool,
    /// Pinned trust: --trust, --trust-appliance, --allow-untrusted, --attestations, --expect-generation.
    #[command(flatten)]
    pub trust: super::trust::TrustArgs,
    /// Hold the average write rate, e.g. 100MiB/s (spare a shared storage backend); zero
    /// chunks, which are neither read nor written as data, do not count.
    #[arg(long, allow_hyphen_values = true)]
    pub rate_limit: Option<String>,
    /// Sync and record progress after this much data (tests use small values).
    #[arg(long, hide = true, default_value = "64MiB")]
    pub checkpoint_bytes: String,
    /// Also report the SHA-256 of the volume as read back (`volume_sha256`,
    /// what `sha256sum` of the written disk prints). Every byte is compared
    /// with what was authenticated either way; the digest costs about 0.8
    /// CPU-seconds per GiB more.
    #[arg(long)]
    pub volume_sha256: bool,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also write a ticket-grade report: FILE (JSON) and FILE with its extension replaced by `.txt` (r.json: r.txt) (summary).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

impl Cli {
    /// The typed request: the boot bus, sizes and rates parsed (exit 2 on a
    /// bad one) before anything is read or written.
    pub fn into_plan(self) -> mgear::Result<ingest::Request> {
        let a = self.args;
        let boot_bus = a.boot_bus.parse::<mgear_boot::Bus>()?;
        let rate_limit = a.rate_limit.as_deref().map(parse_rate).transpose()?;
        let checkpoint_bytes = parse_size(&a.checkpoint_bytes)?;
        // The boot's proof checked before anything is decrypted or written: a --wait-for
        // that proves nothing was refused after the volume was installed, and the report
        // said "nothing verified" of a verified volume.
        if a.boot {
            if a.timeout == 0 {
                return Err(mgear::exit::usage(
                    "--timeout 0 gives the guest no time to boot: give the seconds to wait for \
                     --wait-for",
                ));
            }
            mgear_boot::Expectation::new(&a.wait_for, std::time::Duration::from_secs(a.timeout))?;
        }
        let plan = ingest::Plan {
            medium: a.medium.into(),
            name: a.name,
            identity: a.identity,
            passphrase_file: a.passphrase_file,
            register_image: a.register_image,
            generation: a.generation,
            state_dir: a.state_dir,
            force: a.force,
            boot: a.boot,
            wait_for: a.wait_for,
            timeout: a.timeout,
            flavor: a.flavor,
            boot_bus,
            adapt: a.adapt,
            allow_unsealed: a.allow_unsealed,
            trust: a.trust.into(),
            rate_limit,
            checkpoint_bytes,
            volume_sha256: a.volume_sha256,
            json: a.json,
            report: a.report,
            target: String::new(),
            hold: mgear::ingest::Finishing::Now,
            expect_root: None,
        };
        Ok(ingest::Request {
            plan,
            targets: self.targets,
            disk: self.disk,
        })
    }
}
