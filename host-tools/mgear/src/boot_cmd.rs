//! `mgear boot`: boot a volume under QEMU and prove it came up.
//!
//! ```text
//! mgear boot --target file:vol.raw --wait-for 'login:|BOOT-OK' --timeout 300
//! ```
//! QEMU always runs with `-accel tcg -nic none` (never KVM, never a guest
//! network). The boot counts only when the `--wait-for` regex appears on the
//! serial console. Firmware (BIOS/UEFI) is chosen from the partition table
//! unless `--firmware` says otherwise; `--bus auto` picks virtio unless the
//! guest's initramfs visibly lacks virtio drivers. A JSON boot report is written
//! next to the volume (`vol.raw.boot-report.json`; `./mgear-boot-report.json`
//! for devices and NBD exports), or to `--report PATH`.
//!
//! Targets: `file:PATH` (raw), `qcow2:PATH`, `dev:/dev/sdX`, `nbd://HOST:PORT/EXPORT`.
//!
//! Also:
//! - `mgear boot --build-sample disk.raw [--drivers all|ide-only] [--marker ID]`
//!   builds the sample bootable disk (then boots it if `--target` is given too).
//! - `mgear boot --target file:vol.raw --check-profile kvm-virtio-bios` checks
//!   readiness for a target profile without booting (exit 1 if it would fail).
//!
//! Exit codes: 0 booted (or ready), 1 not booted (or not ready), 2 usage, 3 I/O.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use mgear_boot::{
    boot::{Bus, Firmware, Target},
    inspect_path, BootError, BootSpec, Drivers, SampleDiskOptions, Severity,
};

use crate::exit::{coded, usage, FOUND, IO, OK, USAGE};

/// Arguments of `mgear boot`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Volume to boot: file:PATH, qcow2:PATH, dev:PATH or nbd://HOST:PORT/EXPORT.
    #[arg(long)]
    target: Option<String>,
    /// Regex that proves the boot when it appears on the serial console.
    #[arg(long, default_value = "login:|MGEAR-BOOT-OK")]
    wait_for: String,
    /// Seconds to wait for the regex.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Disk bus: virtio, ide, sata, nvme or auto.
    #[arg(long, default_value = "auto")]
    bus: String,
    /// Firmware: bios, uefi or auto (from the partition table).
    #[arg(long, default_value = "auto")]
    firmware: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// Discard the guest's writes (QEMU -snapshot): the volume is left unchanged.
    #[arg(long)]
    snapshot: bool,
    /// Where to write the JSON boot report.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Print the boot report as JSON on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// Build the sample bootable disk at this path (see --drivers, --marker).
    #[arg(long, value_name = "PATH")]
    build_sample: Option<PathBuf>,
    /// Sample disk drivers: all or ide-only.
    #[arg(long, default_value = "all", requires = "build_sample")]
    drivers: String,
    /// Sample disk marker id (default: sample-<drivers>).
    #[arg(long, requires = "build_sample")]
    marker: Option<String>,
    /// Check readiness for a target profile instead of booting.
    #[arg(long, value_name = "PROFILE", conflicts_with = "build_sample")]
    check_profile: Option<String>,
}

/// Map a library error to the exit code classes of `mgear`.
fn lib_err(e: BootError) -> anyhow::Error {
    let code = match e {
        BootError::Usage(_) => USAGE,
        BootError::Unsupported(_) => USAGE,
        BootError::NotBooted(_) => FOUND,
        _ => IO,
    };
    coded(code, e.to_string())
}

/// Run `mgear boot`; returns the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    if let Some(path) = &args.build_sample {
        let drivers = match args.drivers.as_str() {
            "all" => Drivers::All,
            "ide-only" => Drivers::IdeOnly,
            d => {
                return Err(usage(format!(
                    "unknown --drivers {d:?}: use all or ide-only"
                )))
            }
        };
        let opts = SampleDiskOptions {
            drivers,
            marker_id: args.marker.clone(),
            ..Default::default()
        };
        let disk = mgear_boot::build_sample_disk(path, &opts).map_err(lib_err)?;
        eprintln!(
            "sample disk {} ({} MiB, Linux {}, drivers {}): boots to \"{}\"",
            disk.path.display(),
            disk.size >> 20,
            disk.kernel_version,
            drivers.name(),
            disk.marker_line
        );
        if args.target.is_none() {
            return Ok(OK);
        }
    }
    let Some(target) = &args.target else {
        return Err(usage(
            "nothing to do: give --target (or --build-sample PATH)",
        ));
    };
    let target: Target = target.parse().map_err(lib_err)?;
    if let Some(name) = &args.check_profile {
        return check(&target, name, args.json);
    }
    let spec = BootSpec {
        target: target.clone(),
        wait_for: args.wait_for.clone(),
        timeout: Duration::from_secs(args.timeout),
        bus: args.bus.parse::<Bus>().map_err(lib_err)?,
        firmware: args.firmware.parse::<Firmware>().map_err(lib_err)?,
        memory_mib: args.memory,
        snapshot: args.snapshot,
    };
    let report = mgear_boot::boot(&spec).map_err(lib_err)?;
    let report_path = args
        .report
        .clone()
        .unwrap_or_else(|| target.default_report_path());
    report.write_json(&report_path).map_err(lib_err)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("serialising the boot report")?
        );
    } else {
        println!(
            "target {}: {:?} (firmware {:?}, bus {:?})",
            report.target, report.outcome, report.firmware, report.bus
        );
        println!("{}", report.detail);
        println!("boot report: {}", report_path.display());
    }
    match report.require_booted() {
        Ok(()) => Ok(OK),
        Err(e) => {
            eprintln!("mgear: {e}");
            Ok(FOUND)
        }
    }
}

fn check(target: &Target, name: &str, json: bool) -> anyhow::Result<i32> {
    let profile = mgear_boot::profile_by_name(name).ok_or_else(|| {
        usage(format!(
            "unknown profile {name:?}: use one of {}",
            mgear_boot::profile_names().join(", ")
        ))
    })?;
    let path = match target {
        Target::File(p) | Target::Dev(p) => p,
        _ => return Err(usage("--check-profile reads file: and dev: targets only")),
    };
    let facts = inspect_path(path).map_err(lib_err)?;
    let findings = mgear_boot::check_profile(&facts, profile);
    if json {
        let v =
            serde_json::json!({ "profile": profile.name, "facts": facts, "findings": findings });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{} against {} ({}):",
            target, profile.name, profile.description
        );
        for f in &findings {
            println!(
                "  {:5} {}: {}",
                format!("{:?}", f.severity).to_lowercase(),
                f.code,
                f.message
            );
        }
    }
    if findings.iter().any(|f| f.severity == Severity::Error) {
        Ok(FOUND)
    } else {
        Ok(OK)
    }
}
