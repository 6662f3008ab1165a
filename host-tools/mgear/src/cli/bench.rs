//! `mgear bench`'s flags, parsed into a [`bench::Plan`].
use std::path::PathBuf;

use mgear::bench;
use mgear::units::parse_size;

/// Arguments of `mgear bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Size of the generated source disk.
    #[arg(long, allow_hyphen_values = true, default_value = "1GiB")]
    pub size: String,
    /// Data pattern: random, mix (40% zeros / 30% text / 30% random), zeros
    /// (written), sparse (one hole), both (random and mix) or all.
    #[arg(long, default_value = "all")]
    pub pattern: String,
    /// Medium to capture onto and ingest from: fat (a FAT32 image, as users
    /// carry), dir (a directory) or both.
    #[arg(long, default_value = "both")]
    pub medium: String,
    /// Work directory (needs about 3x --size free) [default: a temporary directory].
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Also ingest into a Ceph RBD image in this pool and time `qemu-img convert` of the same
    /// raw disk into the same pool (cluster from CEPH_CONF, user from CEPH_ARGS, e.g. `--id
    /// cinder`; the cloud lab's are in `scripts/cloud-lab.sh env`).
    #[arg(long, value_name = "POOL")]
    pub rbd: Option<String>,
    /// Encoder threads for every capture [default: number of CPUs]; compare `--threads 1`
    /// with `--threads 2` to see how capture scales.
    #[arg(long, allow_hyphen_values = true, value_parser = super::at_least_one)]
    pub threads: Option<usize>,
    /// Sizes of the two random captures onto a FAT32 image whose CPU cost per byte is
    /// compared (the target; about 35 s and 9 GiB of the work directory for the
    /// 4 GiB one here; `off` skips them).
    #[arg(
        long,
        allow_hyphen_values = true,
        default_value = "256MiB,4GiB",
        value_name = "SMALL,LARGE"
    )]
    pub scale: String,
    /// Also ingest (and `dd` the medium) into a directory on another disk than the work
    /// directory's, as at a target site, where the volume is not the medium's disk: the
    /// ingest-vs-dd target is then judged there (not on a tmpfs: its rows are shown only)
    #[arg(long, value_name = "DIR")]
    pub volume_dir: Option<PathBuf>,
    /// Skip the rows that run `mgear-appliance-sim` (capture through its NBD export, seal).
    #[arg(long)]
    pub no_appliance: bool,
    /// Run only the appliance rows (capture through `mgear-appliance-sim`, a read of its medium,
    /// its seal) on random data: the seal's figures without the rest of the bench.
    #[arg(long, conflicts_with = "no_appliance")]
    pub appliance_only: bool,
    /// Run each timed capture and ingest (and their `dd` baselines, and the capture through
    /// the simulator) this many times and report the shortest time and the least CPU: on a
    /// shared machine noise only ever adds to either.
    #[arg(
        long,
        allow_hyphen_values = true,
        default_value_t = 3,
        value_name = "N"
    )]
    pub repeat: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// The typed plan: sizes and choices parsed (exit 2 on a bad one).
    pub fn into_plan(self) -> mgear::Result<bench::Plan> {
        let a = self;
        let size = parse_size(&a.size)?;
        let pattern = a.pattern.parse::<bench::Patterns>()?;
        let medium = a.medium.parse::<bench::Media>()?;
        let scale = bench::scale_sizes(&a.scale)?;
        if a.repeat == 0 {
            return Err(mgear::exit::usage("--repeat must be at least 1"));
        }
        Ok(bench::Plan {
            size,
            pattern,
            medium,
            workdir: a.workdir,
            rbd: a.rbd,
            volume_dir: a.volume_dir,
            threads: a.threads,
            scale,
            no_appliance: a.no_appliance,
            appliance_only: a.appliance_only,
            repeat: a.repeat,
            json: a.json,
        })
    }
}
