//! `mgear boot`'s flags, parsed into a [`boot_cmd::Plan`].
use std::path::PathBuf;

use mgear::boot_cmd;
use mgear::exit::usage;
use mgear::units::parse_size;
use mgear_boot::{Bus, Drivers, Firmware};

/// Arguments of `mgear boot`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Volume to boot: file:PATH, qcow2:PATH, dev:PATH, nbd://HOST:PORT/EXPORT, libvirt:POOL/NAME or rbd:POOL/IMAGE.
    /// Repeat it for a machine of several disks: the first boots, the others
    /// are attached after it in order (a local QEMU or one libvirt domain).
    #[arg(long)]
    pub target: Vec<String>,
    /// Regex that proves the boot when it appears on the serial console.
    #[arg(long, default_value = "login:|MGEAR-BOOT-OK")]
    pub wait_for: String,
    /// Seconds to wait for the regex.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Disk bus: virtio, ide, sata, nvme or auto.
    #[arg(long, default_value = "auto")]
    pub bus: String,
    /// Firmware: bios, uefi or auto (from the partition table).
    #[arg(long, default_value = "auto")]
    pub firmware: String,
    /// Guest memory in MiB (16 to 1048576).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(16..=1 << 20))]
    pub memory: u32,
    /// Let the guest write to the volume. Without it the guest's writes go to
    /// a throw-away overlay (QEMU -snapshot) and the verified volume stays
    /// bit-identical.
    #[arg(long)]
    pub write: bool,
    /// Accepted for older scripts: discarding the guest's writes is the default.
    #[arg(long, hide = true, conflicts_with = "write")]
    pub snapshot: bool,
    /// Where to write the JSON boot report.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Print the boot report as JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// Build the sample bootable disk at this path (see --drivers, --marker).
    #[arg(long, value_name = "PATH")]
    pub build_sample: Option<PathBuf>,
    /// Sample disk drivers: all or ide-only.
    #[arg(long, default_value = "all", requires = "build_sample")]
    pub drivers: String,
    /// Sample disk marker id (default: sample-<drivers>).
    #[arg(long, requires = "build_sample")]
    pub marker: Option<String>,
    /// Also build the sample's data disk here: ext4 mounted by the sample's fstab at /srv by
    /// UUID; the sample then prints MGEAR-SRV-OK <marker>-srv from it at boot (a two-disk machine).
    #[arg(long, value_name = "PATH", requires = "build_sample")]
    pub data_disk: Option<PathBuf>,
    /// Size of --data-disk (half of it incompressible filler).
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "32MiB",
        requires = "data_disk"
    )]
    pub data_size: String,
    /// Check readiness for a target profile instead of booting.
    #[arg(long, value_name = "PROFILE", conflicts_with = "build_sample")]
    pub check_profile: Option<String>,
}

impl Args {
    /// The typed plan: bus, firmware, sample drivers, the profile and sizes
    /// parsed (exit 2 on a bad one).
    pub fn into_plan(self) -> mgear::Result<boot_cmd::Plan> {
        let a = self;
        let drivers = match a.drivers.as_str() {
            "all" => Drivers::All,
            "ide-only" => Drivers::IdeOnly,
            d => {
                return Err(usage(format!(
                    "unknown --drivers {d:?}: use all or ide-only"
                )))
            }
        };
        let data_size = parse_size(&a.data_size)?;
        let bus = a.bus.parse::<Bus>()?;
        let firmware = a.firmware.parse::<Firmware>()?;
        let check_profile = a
            .check_profile
            .as_deref()
            .map(boot_cmd::profile)
            .transpose()?;
        Ok(boot_cmd::Plan {
            target: a.target,
            wait_for: a.wait_for,
            timeout: a.timeout,
            bus,
            firmware,
            memory: a.memory,
            write: a.write,
            snapshot: a.snapshot,
            report: a.report,
            json: a.json,
            build_sample: a.build_sample,
            drivers,
            marker: a.marker,
            data_disk: a.data_disk,
            data_size,
            check_profile,
        })
    }
}
