//! `mgear demo`'s flags, as a [`demo::Plan`].
use std::path::PathBuf;

use mgear::demo;

/// Arguments of `mgear demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Work directory [default: a new temporary directory].
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Keep the work directory (a temporary one is removed otherwise).
    #[arg(long)]
    pub keep: bool,
    /// Seconds to wait for the boot marker.
    // 0 ran the whole journey to fail its boot at once (boot --timeout 0 is refused).
    #[arg(long, allow_hyphen_values = true, default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub boot_timeout: u64,
    /// Ingest into OpenStack Cinder (on Ceph) and boot through Nova, with the
    /// cloud's settings from the environment (`eval "$(scripts/cloud-lab.sh
    /// start)"` prints them for the local lab), instead of a raw volume and QEMU.
    #[arg(long)]
    pub cloud: bool,
}

impl Args {
    /// The typed plan.
    pub fn into_plan(self) -> demo::Plan {
        let a = self;
        demo::Plan {
            workdir: a.workdir,
            keep: a.keep,
            boot_timeout: a.boot_timeout,
            cloud: a.cloud,
        }
    }
}
