//! `mgear capture`'s flags, parsed into a [`capture::Request`].
use std::path::PathBuf;

use mgear::capture;
use mgear::units::{parse_rate, parse_size};

/// `mgear capture` as parsed: one `--source` per disk of the machine.
#[derive(clap::Args, Debug)]
pub struct Cli {
    /// Disk to read (required but with --abort): a file, a block device, nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH.
    /// Repeat it once per disk of a machine, in the machine's disk order: the
    /// disks are captured as one set (see `mgear inspect`).
    #[arg(
        long = "source",
        value_name = "SOURCE",
        required_unless_present = "abort"
    )]
    pub sources: Vec<String>,
    #[command(flatten)]
    pub args: Args,
}

/// Arguments of the capture of one disk (`Cli` with its one `--source`).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub medium: super::medium::Where,
    /// Capture name (1-32 letters, digits, '-', '_'), e.g. the host name.
    #[arg(long)]
    pub name: String,
    /// Target public key: a .pub file from `mgear keygen`, a file of age1... keys (one per
    /// line, as `age -R`; every key gets the slot), or age1... itself; repeatable.
    #[arg(long)]
    pub recipient: Vec<String>,
    /// File whose first line is a passphrase that can also open the capture.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// Create --passphrase-file (it must not exist) holding a new random
    /// passphrase (130 bits, 0600) and use it; send that file to the target by
    /// a channel other than the courier. A run stopped after its capture
    /// began keeps the file, and the same command resumes with it.
    #[arg(long, requires = "passphrase_file")]
    pub passphrase_generate: bool,
    /// Store only chunks that changed since the newest finished capture of this name.
    #[arg(long)]
    pub delta: bool,
    /// With --delta and an NBD source: read only chunks the qemu dirty bitmap NAME marks dirty (qemu-nbd -B NAME).
    #[arg(long, value_name = "NAME", requires = "delta")]
    pub dirty_bitmap: Option<String>,
    /// Hold the average source read rate, e.g. 50MiB/s, 400Mbit/s.
    #[arg(long, allow_hyphen_values = true)]
    pub rate_limit: Option<String>,
    /// Where data keys are kept for later deltas [default: $XDG_STATE_HOME/mgear/keys or ~/.local/state/mgear/keys].
    #[arg(long)]
    pub key_cache: Option<PathBuf>,
    /// Chunk size (64KiB..16MiB, power of two) [default: 1MiB; a --delta: the chunk size the
    /// capture was made with].
    #[arg(long, allow_hyphen_values = true)]
    pub chunk_size: Option<String>,
    /// Store chunks uncompressed.
    #[arg(long)]
    pub no_compress: bool,
    /// Encoder threads [default: number of CPUs; at most 64 are used].
    #[arg(long, allow_hyphen_values = true, value_parser = super::at_least_one)]
    pub threads: Option<usize>,
    /// Sign each generation's COMMIT with this capture-site key (`mgear keygen --signing`).
    #[arg(long, value_name = "SITE.key")]
    pub sign: Option<PathBuf>,
    /// Check the source against a target readiness profile before it ships (kvm-virtio-bios,
    /// kvm-virtio-uefi, openstack, aws-nitro, generic): what would fail at the target is
    /// warned about here and kept in the report; the capture goes on.
    #[arg(long, value_name = "PROFILE")]
    pub check_profile: Option<String>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also write a ticket-grade report: FILE (JSON) and FILE with its extension replaced by `.txt` (r.json: r.txt) (summary).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Inspect the source and the medium, print the plan (what is written,
    /// estimated size and time, free space) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove the unfinished generation of --name from the medium instead
    /// of capturing (a capture started by mistake; no --source needed).
    #[arg(long, conflicts_with_all = ["delta", "dry_run"])]
    pub abort: bool,
    /// A medium of this capture's span is lost (name it as it was given when it joined, e.g.
    /// fat:/dev/sdc, or as #N from `mgear inspect`): capture a delta that stores again what it
    /// held (and what changed since), onto the media given. Implies --delta.
    #[arg(long, value_name = "MEDIUM")]
    pub replace_medium: Vec<String>,
    /// Store every disk of a machine set on its own, even chunks another of its disks already
    /// stored (by default identical chunks are stored once; a set so captured needs a reader of
    /// format feature CROSS_STREAM).
    #[arg(long)]
    pub no_dedup_across_disks: bool,
    /// Opt in to dedup with another machine on the medium (a capture or machine set, e.g.
    /// web01): capture this one under MACHINE's data key and capture id, and store only
    /// chunks MACHINE's newest finished generation does not hold. The cost: both machines
    /// then share one data key, so anyone who can open one (any target key or passphrase
    /// of either, the key cache here) can open both, and whoever holds the key can tell
    /// which content they share. Only for machines of one owner, from this machine's
    /// first capture on (needs MACHINE's key in the key cache, or --passphrase-file with
    /// its passphrase). MACHINE cannot be removed from the medium while this one borrows
    /// from it, and ingest needs both on the media given.
    #[arg(long, value_name = "MACHINE")]
    pub dedup_across_machines: Option<String>,
    /// Capture even when the sampled estimate says the medium is too small.
    #[arg(long)]
    pub skip_space_check: bool,
    /// Resume an unfinished capture even though its source no longer carries the labels
    /// it had (partition table, file system UUID) or most chunks stored before the stop
    /// read otherwise now: only for the same disk, repartitioned or mostly rewritten
    /// since. Without it such a resume is refused, as the source is then most likely
    /// another disk (a file replaced, a device or NBD export that now serves another
    /// disk) and resuming would join two disks into one. Likewise a --delta whose source
    /// reads differently in every chunk sampled from the generation it continues (another
    /// disk, or a set's disks in another order) is refused unless this is given.
    #[arg(long)]
    pub same_source: bool,
    /// Resume an unfinished capture whose disk came back under another name (a USB disk
    /// unplugged and plugged in again is /dev/sdc where it was /dev/sdb): SOURCE is the name
    /// the capture was started with, --source the one it has now. The resume says the old
    /// name when it refuses for this; the disk's labels and a sample of the chunks stored
    /// before the stop are still compared with it. One disk only (not a set).
    #[arg(long, value_name = "SOURCE")]
    pub source_was: Option<String>,
    /// Checkpoint after this much data stored on the medium, or 16 times as
    /// much source progress (zeros, dedup): a checkpoint costs three fsyncs,
    /// which zero regions should not pay every 64 MiB (tests use small values).
    #[arg(long, hide = true, default_value = "64MiB")]
    pub checkpoint_bytes: String,
    /// scrypt work factor (log2 N) for the passphrase slot; lower is faster and weaker (tests).
    #[arg(long, hide = true)]
    pub passphrase_work_factor: Option<u8>,
}

impl Cli {
    /// The typed request: keys, sizes and rates parsed (exit 2 on a bad one),
    /// in the order the capture used to meet them.
    pub fn into_plan(self) -> mgear::Result<capture::Request> {
        let a = self.args;
        if a.name.starts_with('-') {
            // `--name=--` and `--name=-web` made captures every later command had to
            // spell with `=`: `--name -web` reads as an option.
            return Err(mgear::exit::usage(format!(
                "capture name {:?} starts with '-': every later command would read it as an \
                 option (`--name {}`); choose a name that starts with a letter or digit",
                a.name, a.name
            )));
        }
        let chunk_size = a
            .chunk_size
            .as_deref()
            .map(capture::chunk_size_arg)
            .transpose()?;
        let recipient = a
            .recipient
            .iter()
            .map(|r| mgear::keys::read_recipients(r))
            .collect::<mgear::Result<Vec<_>>>()?
            .concat();
        let rate_limit = a.rate_limit.as_deref().map(parse_rate).transpose()?;
        let checkpoint_bytes = parse_size(&a.checkpoint_bytes)?;
        if a.source_was.is_some() && self.sources.len() != 1 {
            return Err(mgear::exit::usage(
                "--source-was names the former name of the one disk of a capture: give it \
                 with exactly one --source (a machine set's disks resume under the names they \
                 were started with)",
            ));
        }
        let check_profile = a
            .check_profile
            .as_deref()
            .map(mgear::boot_cmd::profile)
            .transpose()?;
        let plan = capture::Plan {
            source: None,
            medium: a.medium.into(),
            name: a.name,
            recipient,
            passphrase_file: a.passphrase_file,
            passphrase_generate: a.passphrase_generate,
            delta: a.delta,
            dirty_bitmap: a.dirty_bitmap,
            rate_limit,
            key_cache: a.key_cache,
            chunk_size: chunk_size.unwrap_or(capture::DEFAULT_CHUNK_SIZE),
            chunk_size_given: chunk_size.is_some(),
            no_compress: a.no_compress,
            threads: a.threads,
            sign: a.sign,
            json: a.json,
            report: a.report,
            dry_run: a.dry_run,
            abort: a.abort,
            replace_medium: a.replace_medium,
            no_dedup_across_disks: a.no_dedup_across_disks,
            dedup_across_machines: a.dedup_across_machines,
            skip_space_check: a.skip_space_check,
            same_source: a.same_source,
            source_was: a.source_was,
            checkpoint_bytes,
            passphrase_work_factor: a.passphrase_work_factor,
            span_total: None,
            check_profile,
        };
        Ok(capture::Request {
            sources: self.sources,
            plan,
        })
    }
}
