//! `mgear boot`: boot a volume under QEMU and prove it came up.
//!
//! ```text
//! mgear boot --target file:vol.raw --wait-for 'login:|BOOT-OK' --timeout 300
//! mgear boot --target file:root.raw --target file:srv.raw   # a machine of two disks
//! ```
//! QEMU always runs with `-accel tcg -nic none` (never KVM, never a guest
//! network). The boot counts only when the `--wait-for` regex appears on the
//! serial console; when the firmware says it found nothing to boot ("No
//! bootable device") it ends at once, not at `--timeout`. The guest's writes
//! go to a throw-away overlay unless `--write` is given, so booting a
//! verified volume never changes it. Firmware (BIOS/UEFI) is chosen from the
//! partition table unless `--firmware` says otherwise; `--bus auto` picks virtio unless the
//! guest's initramfs visibly lacks virtio drivers. A JSON boot report is written
//! next to the volume (`vol.raw.boot-report.json`; `./mgear-boot-report.json`
//! for devices and NBD exports), or to `--report PATH`.
//!
//! Targets: `file:PATH` (raw), `qcow2:PATH`, `dev:/dev/sdX`, `nbd://HOST:PORT/EXPORT`,
//! and `libvirt:POOL/NAME`: a volume of a libvirt storage pool on the system
//! daemon (`qemu:///system`), booted as a libvirt domain (TCG, no network)
//! instead of by a local QEMU. Its report defaults to `./mgear-boot-report.json`:
//! a file written into a directory pool would show up as a volume.
//!
//! Also:
//! - `mgear boot --build-sample disk.raw [--drivers all|ide-only] [--marker ID]`
//!   builds the sample bootable disk (then boots it if `--target` is given too).
//! - `mgear boot --target file:vol.raw --check-profile kvm-virtio-bios` checks
//!   readiness for a target profile without booting (exit 1 if it would fail).
//!
//! Exit codes: 0 booted (or ready), 1 not booted (or not ready), 2 usage,
//! 3 I/O (including QEMU itself failing, e.g. an unreadable or locked image).

use std::path::PathBuf;
use std::time::Duration;

use crate::error::Context;
use mgear_boot::{
    boot::{Bus, Firmware, Outcome, Target},
    inspect_path,
    libvirt::DEFAULT_CONN,
    prove_boot, BootError, BootReport, BootSpec, Drivers, Expectation, Guest, LibvirtBoot,
    LocalQemu, SampleDiskOptions, Severity, TargetProfile, VolumeRef,
};

use crate::exit::{coded, coded_hint, usage, FOUND, IO, OK, USAGE};

/// `mgear boot`, typed (the binary's `cli::boot` parses the flags into it).
#[derive(Debug)]
pub struct Plan {
    /// Volume to boot: file:PATH, qcow2:PATH, dev:PATH, nbd://HOST:PORT/EXPORT or libvirt:POOL/NAME.
    /// Repeat it for a machine of several disks: the first boots, the others
    /// are attached after it in order (a local QEMU or one libvirt domain).
    pub target: Vec<String>,
    /// Regex that proves the boot when it appears on the serial console.
    pub wait_for: String,
    /// Seconds to wait for the regex.
    pub timeout: u64,
    /// Disk bus: virtio, ide, sata, nvme or auto.
    pub bus: Bus,
    /// Firmware: bios, uefi or auto (from the partition table).
    pub firmware: Firmware,
    /// Guest memory in MiB.
    pub memory: u32,
    /// Let the guest write to the volume. Without it the guest's writes go to
    /// a throw-away overlay (QEMU -snapshot) and the verified volume stays
    /// bit-identical.
    pub write: bool,
    /// Accepted for older scripts: discarding the guest's writes is the default.
    pub snapshot: bool,
    /// Where to write the JSON boot report.
    pub report: Option<PathBuf>,
    /// Print the boot report as JSON on stdout instead of text.
    pub json: bool,
    /// Build the sample bootable disk at this path (see --drivers, --marker).
    pub build_sample: Option<PathBuf>,
    /// Sample disk drivers: all or ide-only.
    pub drivers: Drivers,
    /// Sample disk marker id (default: sample-<drivers>).
    pub marker: Option<String>,
    /// Also build the sample's data disk here: ext4 mounted by the sample's fstab at /srv by
    /// UUID; the sample then prints MGEAR-SRV-OK <marker>-srv from it at boot (a two-disk machine).
    pub data_disk: Option<PathBuf>,
    /// Size of --data-disk in bytes (half of it incompressible filler).
    pub data_size: u64,
    /// Check readiness for a target profile instead of booting.
    pub check_profile: Option<&'static TargetProfile>,
}

/// Run `mgear boot`; returns the process exit code.
pub fn run(args: Plan) -> crate::Result<i32> {
    crate::signals::install_for_boot();
    if let Some(path) = &args.build_sample {
        let drivers = args.drivers;
        let opts = SampleDiskOptions {
            drivers,
            marker_id: args.marker.clone(),
            data_disk: match &args.data_disk {
                Some(p) => Some((p.clone(), args.data_size)),
                None => None,
            },
            ..Default::default()
        };
        refuse_overwriting_non_sample(path, opts.size)?;
        if let Some(data) = &args.data_disk {
            refuse_overwriting_non_data_disk(path, data)?;
        }
        let disk = mgear_boot::build_sample_disk(path, &opts)?;
        let line = format!(
            "sample disk {} ({} MiB, Linux {}, drivers {}): boots to \"{}\"",
            disk.path.display(),
            disk.size >> 20,
            disk.kernel_version,
            drivers.name(),
            disk.marker_line
        );
        // Alone, the disk is the result: on standard output, or as the one JSON object (it
        // went to standard error, and `--json` printed nothing, exit 0). Before a boot, the
        // boot's report is the result.
        if args.target.is_empty() {
            if crate::output::json() {
                crate::output::emit(&serde_json::json!({
                    "sample": disk.path,
                    "size": disk.size,
                    "kernel": disk.kernel_version,
                    "drivers": drivers.name(),
                    "marker": disk.marker_line,
                }))?;
            } else {
                println!("{line}");
            }
            return Ok(OK);
        }
        eprintln!("{line}");
    }
    let Some(target) = args.target.first() else {
        return Err(usage(
            "nothing to do: give --target (or --build-sample PATH)",
        ));
    };
    if args.timeout == 0 && args.check_profile.is_none() {
        return Err(usage(
            "--timeout 0 gives the guest no time to boot: give the seconds to wait for --wait-for",
        ));
    }
    // A volume an ingest began and has not finished holds part of a disk (its first chunk
    // last): its readiness read "will not boot anywhere", exit 0.
    for spec in &args.target {
        crate::target::refuse_unfinished(
            spec,
            match args.check_profile {
                Some(_) => "check",
                None => "boot",
            },
        )?;
    }
    // One volume as two disks: with --write QEMU's lock refused it as "is another process
    // using the image?" ("reconnect it"); without, a machine of one disk twice proved nothing.
    let paths: Vec<Option<std::path::PathBuf>> = args
        .target
        .iter()
        .map(
            |t| match crate::spec::Target::parse(t, crate::spec::Bare::Existing) {
                Ok(
                    crate::spec::Target::File(p)
                    | crate::spec::Target::Dev(p)
                    | crate::spec::Target::Qcow2(p),
                ) => Some(p),
                // An export by its URL (the same export twice got two QEMU drives).
                Ok(crate::spec::Target::Nbd(u)) => Some(std::path::PathBuf::from(u.to_string())),
                _ => None,
            },
        )
        .collect();
    // A directory read as a disk: "Is a directory (os error 21)", exit 3, "reconnect it".
    for (spec, p) in args.target.iter().zip(&paths) {
        if let Some(p) = p.as_deref().filter(|p| p.is_dir()) {
            return Err(usage(format!(
                "--target {spec}: {} is a directory, not a disk: give the volume file (or \
                 device) ingest wrote, e.g. --target file:DIR/web01.raw",
                p.display()
            )));
        }
    }
    for (i, a) in paths.iter().enumerate() {
        for (j, b) in paths.iter().enumerate().skip(i + 1) {
            if let (Some(a), Some(b)) = (a, b) {
                if a == b || crate::guard::overlaps(a, b) {
                    return Err(usage(format!(
                        "--target {} and --target {} are the same volume: give each disk of the \
                         machine once",
                        args.target[i], args.target[j]
                    )));
                }
            }
        }
    }
    if let Some(profile) = args.check_profile {
        let disks = args
            .target
            .iter()
            .map(|t| resolve(t).map(|r| r.local()))
            .collect::<crate::Result<Vec<_>>>()?;
        return check(&disks, profile, args.json);
    }
    let target = resolve(target)?;
    let opts = BootOptions {
        wait_for: args.wait_for.clone(),
        timeout: Duration::from_secs(args.timeout),
        bus: args.bus,
        firmware: args.firmware,
        memory_mib: args.memory,
        snapshot: args.snapshot || !args.write,
    };
    let mut all = vec![target];
    for t in &args.target[1..] {
        all.push(resolve(t)?);
    }
    if !opts.snapshot {
        // A guest writing a volume `mgear serve` keeps would leave serve answering syncs
        // from chunk ids the volume no longer has.
        for (r, spec) in all.iter().zip(&args.target) {
            if let Resolved::Local(Target::File(p) | Target::Dev(p)) = r {
                crate::lock::refuse_served_volume(p, spec)?;
            }
        }
    }
    let report_path = args
        .report
        .clone()
        .unwrap_or_else(|| all[0].default_report_path());
    let volumes: Vec<PathBuf> = all.iter().flat_map(files_read).collect();
    let earlier = check_report_path(
        &report_path,
        args.report.is_some(),
        &volumes,
        &report_target(&all[0]),
    )?;
    let report = boot_resolved_all_then(&all, &opts, || {
        // Only now that the guest starts: a boot refused or failing before it (a bad
        // --wait-for, an unreadable image) deleted the earlier report all the same.
        if earlier {
            std::fs::remove_file(&report_path).map_err(|e| {
                coded(
                    IO,
                    format!(
                        "the boot report {}: cannot remove the earlier report: {e}",
                        report_path.display()
                    ),
                )
            })?;
        }
        Ok(())
    })?;
    let mut report = report;
    if report.outcome == Outcome::NothingBootable && all.len() > 1 {
        // Several disks: the machine boots from the first --target, and one given in
        // another order reads as a machine with nothing to boot.
        report.detail.push_str(&format!(
            "; the machine boots from the first --target ({}): if the system disk is another \
             of the {} given, give it first",
            report_target(&all[0]),
            all.len()
        ));
    }
    finish(&report, &report_path, args.json)
}

/// Whether `text` is a boot report an earlier `mgear boot` of `target` wrote (the report
/// names its target): a file that reads like a report of another boot may be anything, a
/// volume's backing or data file among them, and was replaced. The same volume spelled
/// another way (`file:./vol.raw`, an absolute path, from another directory) is the same boot:
/// a report naming a volume of the same kind and file name is its earlier report (refused,
/// it stranded the user with a hint about permissions).
fn is_boot_report(text: &[u8], target: &str) -> bool {
    serde_json::from_slice::<serde_json::Value>(text).is_ok_and(|v| {
        ["driver", "target", "wait_for", "outcome", "console_log"]
            .iter()
            .all(|k| v.get(k).is_some())
            && v["target"]
                .as_str()
                .is_some_and(|t| t == target || same_volume_file(t, target))
    })
}

/// Whether two target specs name a file or device volume of the same kind and file name.
fn same_volume_file(a: &str, b: &str) -> bool {
    fn volume(t: &str) -> Option<(&str, &std::path::Path)> {
        let (kind, path) = t.split_once(':')?;
        ["file", "qcow2", "dev"]
            .contains(&kind)
            .then(|| (kind, std::path::Path::new(path)))
    }
    let (Some((ka, pa)), Some((kb, pb))) = (volume(a), volume(b)) else {
        return false;
    };
    let same_name = ka == kb && pa.file_name().is_some() && pa.file_name() == pb.file_name();
    // Or the same file by another name (a symlink, `/dev/disk/by-id/...`), as far as both
    // resolve from here.
    same_name
        || std::fs::canonicalize(pa).is_ok_and(|r| std::fs::canonicalize(pb).is_ok_and(|s| r == s))
}

/// How a boot report names the boot of `r` (its `target`).
fn report_target(r: &Resolved) -> String {
    match r {
        Resolved::Local(t) => t.to_string(),
        Resolved::Libvirt(v) => format!("libvirt:{}/{}", v.pool, v.name),
    }
}

/// Before anything is booted: the report's place must take a report, and what is there must
/// be an earlier boot report (returns whether one is: it goes as the guest starts). `--report
/// vol.raw` wrote the report over the volume just booted (any file was replaced), and a file
/// the boot reads (the volume, a qcow2's backing file, the image an NBD export serves) is
/// never one to replace, whatever it holds; and a boot killed on the way left the report of
/// an earlier boot beside the volume, read as this one's.
fn check_report_path(
    path: &std::path::Path,
    given: bool,
    volumes: &[PathBuf],
    target: &str,
) -> crate::Result<bool> {
    let flag = if given { "--report" } else { "the boot report" };
    let hint = if given {
        "give --report a new file name in a directory you can write to (nothing was booted yet)"
    } else {
        "give --report a file in a directory you can write to (nothing was booted yet)"
    };
    let fail = |code, what: String| {
        crate::exit::coded_hint(code, format!("{flag} {}: {what}", path.display()), hint)
    };
    if let Some(v) = volumes.iter().find(|v| crate::guard::overlaps(path, v)) {
        return Err(fail(
            USAGE,
            format!(
                "is a file the boot reads ({}): it is never overwritten",
                v.display()
            ),
        ));
    }
    // A boot that cannot start (its volume is missing) leaves an earlier report as it was.
    if volumes.iter().any(|v| std::fs::metadata(v).is_err()) {
        return Ok(false);
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(fail(USAGE, "is a directory".into())),
        Ok(m) => {
            // A boot report is a console tail and some lines: far below this.
            let earlier = m.is_file()
                && m.len() < 16 << 20
                && std::fs::read(path).is_ok_and(|t| is_boot_report(&t, target));
            if !earlier {
                return Err(fail(
                    USAGE,
                    format!(
                        "exists and is not an earlier report of a boot of {target} (a volume, \
                         a medium, a key, another boot's report?): it is never overwritten; an \
                         earlier report of the same boot is replaced"
                    ),
                ));
            }
            // Writable where it is: found only after the boot, it made its minute a failure.
            std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(|e| fail(IO, format!("cannot be replaced: {e}")))?;
            Ok(true)
        }
        // Found only after the boot, a report that cannot be written made its minute a
        // failure.
        Err(_) => match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .and_then(|f| {
                drop(f);
                std::fs::remove_file(path)
            }) {
            Ok(()) => Ok(false),
            // Beside a file volume whose directory is missing: the missing volume is the
            // error the boot gives.
            Err(e) if !given && e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(fail(IO, format!("cannot be written: {e}"))),
        },
    }
}

/// The files a boot of `r` reads: a file or device volume, a qcow2 image and its backing
/// chain, the image files an NBD export here serves.
fn files_read(r: &Resolved) -> Vec<PathBuf> {
    match r {
        Resolved::Local(Target::File(p) | Target::Dev(p)) => vec![p.clone()],
        Resolved::Local(Target::Qcow2(p)) => {
            let mut chain = vec![p.clone()];
            while chain.len() < 16 {
                let Some(next) = chain.last().and_then(|q| qcow2_backing(q)) else {
                    break;
                };
                chain.push(next);
            }
            chain
        }
        Resolved::Local(Target::Nbd(u)) => u
            .parse::<mgear_nbd::NbdUrl>()
            .map(|u| {
                crate::guard::served_files(&u)
                    .into_iter()
                    .map(|(_, p)| p)
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The backing file a qcow2 image names in its header (relative to the image's directory),
/// if any.
fn qcow2_backing(image: &std::path::Path) -> Option<PathBuf> {
    use std::os::unix::fs::FileExt as _;
    let f = std::fs::File::open(image).ok()?;
    let mut head = [0u8; 20];
    f.read_exact_at(&mut head, 0).ok()?;
    if &head[..4] != b"QFI\xfb" {
        return None;
    }
    let at = u64::from_be_bytes(head[8..16].try_into().ok()?);
    let len = u32::from_be_bytes(head[16..20].try_into().ok()?);
    if at == 0 || len == 0 || len > 4096 {
        return None;
    }
    let mut name = vec![0u8; len as usize];
    f.read_exact_at(&mut name, at).ok()?;
    let name = String::from_utf8(name).ok()?;
    // `file:NAME` and `json:{...,"filename":NAME}` name a file too.
    let name = match name.strip_prefix("json:") {
        Some(j) => {
            let v: serde_json::Value = serde_json::from_str(j).ok()?;
            let f = v
                .pointer("/file/filename")
                .or_else(|| v.get("file.filename"))
                .or_else(|| v.get("filename"))?;
            PathBuf::from(f.as_str()?)
        }
        None => PathBuf::from(name.strip_prefix("file:").unwrap_or(&name)),
    };
    Some(match image.parent() {
        Some(dir) if name.is_relative() => dir.join(name),
        _ => name,
    })
}

/// How to boot: what `mgear boot` and `mgear ingest --boot` share.
#[derive(Debug, Clone)]
pub struct BootOptions {
    pub wait_for: String,
    pub timeout: Duration,
    pub bus: Bus,
    pub firmware: Firmware,
    pub memory_mib: u32,
    pub snapshot: bool,
}

impl BootOptions {
    /// Automatic bus and firmware, 512 MiB.
    pub fn new(wait_for: impl Into<String>, timeout: Duration, snapshot: bool) -> Self {
        BootOptions {
            wait_for: wait_for.into(),
            timeout,
            bus: Bus::Auto,
            firmware: Firmware::Auto,
            memory_mib: 512,
            snapshot,
        }
    }
}

/// A boot target with the driver that boots it.
#[derive(Debug, Clone)]
pub enum Resolved {
    /// Booted by a local QEMU.
    Local(Target),
    /// A libvirt pool volume, booted as a libvirt domain.
    Libvirt(VolumeRef),
}

impl Resolved {
    /// The volume as the boot library sees it (a pool volume is its host file).
    fn local(&self) -> Target {
        match self {
            Resolved::Local(t) => t.clone(),
            Resolved::Libvirt(v) => v.target(),
        }
    }

    /// Next to a file volume; `./mgear-boot-report.json` for devices,
    /// exports and pool volumes.
    pub fn default_report_path(&self) -> PathBuf {
        match self {
            Resolved::Local(t) => t.default_report_path(),
            Resolved::Libvirt(_) => PathBuf::from("mgear-boot-report.json"),
        }
    }
}

/// Parse a `--target` (`crate::spec`; a bare path is the file or device
/// there); a `libvirt:POOL/NAME` volume is looked up on the daemon.
pub fn resolve(s: &str) -> crate::Result<Resolved> {
    resolve_spec(&crate::spec::Target::parse(s, crate::spec::Bare::Existing)?)
}

/// [`resolve`] for a parsed spec.
pub fn resolve_spec(t: &crate::spec::Target) -> crate::Result<Resolved> {
    match (t, t.boot_target()) {
        (_, Some(Target::File(p))) => {
            // Only its `.partial` there: an ingest into it has not finished ("No such file",
            // "reconnect it" said nothing of it).
            let partial = std::path::PathBuf::from(format!("{}.partial", p.display()));
            // Being written now: "run that ingest again" was refused as in use.
            if let Some((pid, cmd)) = (!p.exists())
                .then(|| crate::guard::writer_of(&partial))
                .flatten()
            {
                return Err(crate::exit::coded_hint(
                    crate::exit::IO,
                    format!(
                        "--target {t}: {} is not there yet: process {pid} ({cmd}) is writing \
                         {} now",
                        p.display(),
                        partial.display()
                    ),
                    "wait for that ingest to finish (it names the volume once it is verified), \
                     then boot it",
                ));
            }
            if !p.exists() && partial.exists() {
                return Err(usage(format!(
                    "--target {t}: {} is not there yet, only {}: the ingest into it has not \
                     finished. Run that ingest again to finish it (it is renamed {} once \
                     verified), then boot it",
                    p.display(),
                    partial.display(),
                    p.display()
                )));
            }
            refuse_container(&p, t)?;
            Ok(Resolved::Local(Target::File(p)))
        }
        (crate::spec::Target::Rbd(spec), Some(local)) => {
            spec.check_config()?;
            Ok(Resolved::Local(local))
        }
        (_, Some(local)) => Ok(Resolved::Local(local)),
        (crate::spec::Target::Libvirt(t), None) => {
            let vol = VolumeRef::lookup(DEFAULT_CONN, &t.pool, &t.name)
                .map_err(|e| libvirt_err(e, &format!("looking up volume {t}")))?;
            Ok(Resolved::Libvirt(vol))
        }
        (crate::spec::Target::Cinder(name), None) => Err(usage(format!(
            "--target cinder:{name}: a Cinder volume is booted by the cloud, not here: `mgear \
             ingest ... --target cinder:{name} --boot --flavor FLAVOR` creates a Nova server \
             from it (a finished volume is kept, not written again), or boot its RBD image \
             here: --target rbd:POOL/volume-ID (`openstack volume show {name}` gives the id)"
        ))),
        (crate::spec::Target::EbsSnapshot { name, .. }, None) => Err(usage(format!(
            "--target ebs-snapshot:{name}: a snapshot is booted in AWS: register an image from \
             it (`ingest --register-image`) and launch an instance from that"
        ))),
        (other, None) => Err(usage(format!("--target {other}: cannot be booted"))),
    }
}

/// A `file:` target that is a disk image container (qcow2, VMDK, ...): QEMU would boot its
/// header as a raw disk and the firmware say "nothing bootable", which sent the user looking
/// at the guest instead of at the spec.
fn refuse_container(p: &std::path::Path, t: &crate::spec::Target) -> crate::Result<()> {
    use crate::preflight::{container_of, Container};
    use crate::source::Source;
    // What cannot be opened or read as a disk is left to the boot, which names it.
    let Ok(mut disk) = crate::source::FileSource::open(p.to_path_buf()) else {
        return Ok(());
    };
    if disk.len() == 0 {
        return Ok(());
    }
    match container_of(&mut disk).ok().flatten() {
        Some(Container::Qcow2) => Err(usage(format!(
            "--target {t}: {} is a qcow2 image, not a raw disk: boot it as qcow2:{}",
            p.display(),
            p.display()
        ))),
        Some(c) => Err(usage(format!(
            "--target {t}: {} is a {} image, not a raw disk: convert it first (`qemu-img \
             convert -f {} -O raw {} disk.raw`) and boot file:disk.raw",
            p.display(),
            c.name(),
            c.qemu_format(),
            p.display()
        ))),
        None => Ok(()),
    }
}

/// The sockets `qemu:///system` is served on (monolithic libvirtd, or the
/// modular virtqemud).
const LIBVIRT_SOCKETS: &[&str] = &["/run/libvirt/libvirt-sock", "/run/libvirt/virtqemud-sock"];

/// Why the local libvirt daemon cannot be reached, if it cannot: the
/// connect error of its socket (typed, not read from `virsh`'s words).
pub fn libvirtd_unreachable() -> Option<std::io::Error> {
    let mut first = None;
    for s in LIBVIRT_SOCKETS {
        match std::os::unix::net::UnixStream::connect(s) {
            Ok(_) => return None,
            Err(e) => {
                first.get_or_insert(std::io::Error::new(e.kind(), format!("{s}: {e}")));
            }
        }
    }
    first
}

/// `--build-sample PATH` over a file that is not an earlier sample disk (a disk image of the
/// sample's size with a boot sector) is refused: it silently became a 64 MiB sample (a text
/// file, a disk image, a volume). An earlier sample is rebuilt in place, as before.
fn refuse_overwriting_non_sample(path: &std::path::Path, size: u64) -> crate::Result<()> {
    use std::io::Read;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let want = size.div_ceil(1 << 20) << 20;
    let mut sector = [0u8; 512];
    let sample_like = meta.is_file()
        && meta.len() == want
        && std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut sector))
            .is_ok()
        && sector[510..512] == [0x55, 0xAA];
    if sample_like {
        return Ok(());
    }
    Err(usage(format!(
        "--build-sample {}: it exists and is not a sample disk mgear built ({}): nothing was \
         written; give a new path, or remove it first",
        path.display(),
        if meta.is_file() {
            format!("{} bytes", meta.len())
        } else {
            "not a regular file".to_string()
        }
    )))
}

/// `--data-disk PATH` over a file that is not an earlier sample data disk (an ext4 file
/// system labelled `mgear-srv`), or the sample disk itself: refused, nothing written (any
/// file there became the 32 MiB data disk, and one path for both lost one of them).
fn refuse_overwriting_non_data_disk(
    sample: &std::path::Path,
    data: &std::path::Path,
) -> crate::Result<()> {
    use std::os::unix::fs::FileExt as _;
    if crate::guard::overlaps(sample, data) || sample == data {
        return Err(usage(format!(
            "--data-disk {} is the --build-sample disk itself: give the data disk a path of its \
             own; nothing was written",
            data.display()
        )));
    }
    let Ok(meta) = std::fs::symlink_metadata(data) else {
        return Ok(());
    };
    // ext4's superblock at byte 1024: its magic at 56, its volume name at 120.
    let mut sb = [0u8; 136];
    let ours = meta.is_file()
        && std::fs::File::open(data)
            .and_then(|f| f.read_exact_at(&mut sb, 1024))
            .is_ok()
        && sb[56..58] == [0x53, 0xEF]
        && sb[120..136].starts_with(b"mgear-srv\0");
    if ours {
        return Ok(());
    }
    Err(usage(format!(
        "--data-disk {}: it exists and is not a sample data disk mgear built: nothing was \
         written; give a new path, or remove it first",
        data.display()
    )))
}

/// A libvirt failure, with the way out when the daemon is simply not running.
pub fn libvirt_err(e: BootError, what: &str) -> crate::Error {
    let text = e.to_string();
    if let Some(why) = libvirtd_unreachable() {
        coded(
            IO,
            format!(
                "{what}: libvirtd is not reachable at {DEFAULT_CONN} ({why}; {text}): \
                 start it: scripts/libvirtd.sh (or `libvirtd -d` as root)"
            ),
        )
    } else {
        coded(
            match e {
                BootError::Usage(_) | BootError::ToolFailed { .. } => USAGE,
                _ => IO,
            },
            format!("{what}: {text}"),
        )
    }
}

/// Boot with the driver the target needs: each driver only gives its
/// [`Guest`]; the proof is the boot library's one routine.
pub fn boot_resolved(target: &Resolved, opts: &BootOptions) -> crate::Result<BootReport> {
    boot_resolved_all(std::slice::from_ref(target), opts)
}

/// Boot a machine of several disks: `targets[0]` boots, the others are
/// attached after it in order (a local QEMU, or one libvirt domain).
pub fn boot_resolved_all(targets: &[Resolved], opts: &BootOptions) -> crate::Result<BootReport> {
    boot_resolved_all_then(targets, opts, || Ok(()))
}

/// [`boot_resolved_all`], running `starting` once everything is checked and set up, just
/// before the guest runs (what a boot that never starts must leave alone happens there).
pub fn boot_resolved_all_then(
    targets: &[Resolved],
    opts: &BootOptions,
    starting: impl FnOnce() -> crate::Result<()>,
) -> crate::Result<BootReport> {
    let Some(target) = targets.first() else {
        return Err(usage("nothing to boot: give --target"));
    };
    if targets.len() > 1
        && targets
            .iter()
            .any(|t| matches!(t, Resolved::Libvirt(_)) != matches!(target, Resolved::Libvirt(_)))
    {
        return Err(usage(
            "the disks of one machine boot together: give all of them as libvirt: pool volumes, \
             or all as file:, qcow2:, dev: or nbd targets",
        ));
    }
    let spec = BootSpec {
        target: target.local(),
        wait_for: opts.wait_for.clone(),
        timeout: opts.timeout,
        bus: opts.bus,
        firmware: opts.firmware,
        memory_mib: opts.memory_mib,
        snapshot: opts.snapshot,
        data_disks: targets[1..].iter().map(Resolved::local).collect(),
        // Ctrl-C / SIGTERM (where the command installed the handler) stop the guest and end
        // the boot, exit 3: the watch went on to --timeout and called the volume unbootable.
        stop: Some(crate::signals::stop_requested),
    };
    let expect = Expectation::new(&spec.wait_for, spec.timeout)?.with_stop(spec.stop);
    let libvirt = |e| libvirt_err(e, "booting the libvirt domain");
    let mut guest: Box<dyn Guest> = match target {
        Resolved::Local(_) => Box::new(LocalQemu::new().and_then(|q| q.guest(&spec))?),
        Resolved::Libvirt(_) => {
            // A killed boot's guest still holds its volume: removed before this one starts.
            for gone in mgear_boot::libvirt::sweep_abandoned(DEFAULT_CONN) {
                eprintln!(
                    "mgear: removed libvirt domain {gone}: a boot killed before it could end left \
                     it running"
                );
            }
            Box::new(
                LibvirtBoot::new(DEFAULT_CONN)
                    .guest(&spec)
                    .map_err(libvirt)?,
            )
        }
    };
    starting()?;
    let proved = prove_boot(guest.as_mut(), &expect);
    match target {
        Resolved::Local(_) => Ok(proved?),
        Resolved::Libvirt(_) => proved.map_err(libvirt),
    }
}

/// Save and show the report; the exit code: 0 booted, 1 not booted, 3 if
/// QEMU itself failed.
pub fn finish(
    report: &BootReport,
    report_path: &std::path::Path,
    json: bool,
) -> crate::Result<i32> {
    // Show the result even when the report cannot be saved; then fail on that.
    let saved = report.write_json(report_path);
    // Not booted: exit 1, or 3 when QEMU itself failed (image unreadable or locked, firmware
    // or memory missing): an I/O problem on this host, not a verdict on the guest.
    let failed = report.require_booted().err().map(|e| match report.outcome {
        Outcome::QemuFailed => coded(IO, e.to_string()),
        // Not started (a disk BIOS would hang on): its message says what to boot instead.
        _ if report.setup.command.is_empty() => coded_hint(
            FOUND,
            e.to_string(),
            "the guest was not started: boot the system disk, or see --firmware",
        ),
        // The firmware stopped: no wait is long enough ("a longer --timeout" was offered of a
        // boot that ended after 0.4 s).
        Outcome::NothingBootable => coded_hint(
            FOUND,
            e.to_string(),
            "the firmware found nothing it could start: check that this is the system disk, \
             and try the other --firmware (bios or uefi) or --bus; a longer --timeout does not \
             help here",
        ),
        _ => coded_hint(
            FOUND,
            e.to_string(),
            "the volume did not boot: read the console log for how far the guest got; try \
             --firmware (bios or uefi), --bus, or a longer --timeout for a slow guest",
        ),
    });
    if json || crate::output::json() {
        // The envelope's `command` is "boot"; QEMU's argv is `qemu_command`.
        let mut v = serde_json::to_value(report).context("serialising the boot report")?;
        if let Some(m) = v.as_object_mut() {
            if let Some(argv) = m.remove("command") {
                m.insert("qemu_command".into(), argv);
            }
            // The report is the one object --json prints: it carries the error too.
            if let Some(e) = &failed {
                let code = crate::exit::code_of(e);
                let hint = crate::exit::hint(e, "boot");
                let error = crate::output::error_value(code, &format!("{e:#}"), &hint);
                m.insert("error".into(), error);
            }
        }
        crate::output::emit_ok(report.outcome == Outcome::Booted, &v)?;
    } else {
        use crate::output::serde_name;
        println!(
            "target {}: {} (driver {}, firmware {}, bus {})",
            report.setup.target,
            serde_name(&report.outcome),
            report.setup.driver,
            serde_name(&report.setup.firmware),
            serde_name(&report.setup.bus)
        );
        println!("{}", report.detail);
        if saved.is_ok() {
            println!("boot report: {}", report_path.display());
        }
    }
    saved?;
    match failed {
        None => Ok(OK),
        Some(e) if report.outcome == Outcome::QemuFailed => Err(e),
        Some(e) => {
            // The verdict and, as for every failure, the next step (it was only in --json).
            eprintln!("mgear: {e:#}");
            eprintln!("mgear: what to do: {}", crate::exit::hint(&e, "boot"));
            Ok(FOUND)
        }
    }
}

/// The readiness profile named `name` (`--check-profile`; exit 2 if unknown).
pub fn profile(name: &str) -> crate::Result<&'static TargetProfile> {
    mgear_boot::profile_by_name(name).ok_or_else(|| {
        usage(format!(
            "unknown profile {name:?}: use one of {}",
            mgear_boot::profile_names().join(", ")
        ))
    })
}

/// Checks every disk of the machine against `profile`: the first as its boot disk, the
/// others as the disks attached after it (for what any volume needs, not for booting).
fn check(disks: &[Target], profile: &TargetProfile, json: bool) -> crate::Result<i32> {
    let mut checked = Vec::with_capacity(disks.len());
    for (i, target) in disks.iter().enumerate() {
        let path = match target {
            Target::File(p) | Target::Dev(p) => p,
            _ => {
                return Err(usage(format!(
                    "--check-profile reads file: and dev: targets only, not {target}: check its \
                     source disk, or a raw copy (`qemu-img convert -O raw IMAGE disk.raw`, then \
                     --target file:disk.raw)"
                )))
            }
        };
        let (facts, findings) = match inspect_path(path) {
            Ok(facts) if i == 0 => {
                let findings = mgear_boot::check_profile(&facts, profile);
                (Some(facts), findings)
            }
            Ok(facts) => {
                let findings = mgear_boot::check_data_disk(&facts, profile);
                (Some(facts), findings)
            }
            // What the check found (exit 1), not an I/O error (exit 3).
            Err(mgear_boot::BootError::Partition(why)) => {
                (None, vec![mgear_boot::unreadable_table(&why, i == 0)])
            }
            Err(e) => return Err(e.into()),
        };
        checked.push((target, facts, findings));
    }
    let failed = checked
        .iter()
        .flat_map(|(_, _, findings)| findings)
        .any(|f| f.severity == Severity::Error);
    if json || crate::output::json() {
        // One disk keeps the shape scripts already read; a machine lists its disks in order.
        let v = match checked.as_slice() {
            [(_, facts, findings)] => {
                serde_json::json!({ "profile": profile.name, "facts": facts, "findings": findings })
            }
            _ => serde_json::json!({
                "profile": profile.name,
                "disks": checked
                    .iter()
                    .map(|(target, facts, findings)| serde_json::json!({
                        "target": target.to_string(),
                        "facts": facts,
                        "findings": findings,
                    }))
                    .collect::<Vec<_>>(),
            }),
        };
        crate::output::emit_ok(!failed, &v)?;
    } else {
        for (i, (target, _, findings)) in checked.iter().enumerate() {
            let role = match (checked.len(), i) {
                (1, _) => String::new(),
                (_, 0) => " (disk 0, the boot disk)".to_string(),
                (_, i) => format!(" (disk {i})"),
            };
            println!(
                "{target}{role} against {} ({}):",
                profile.name, profile.description
            );
            for f in findings {
                println!(
                    "  {:5} {}: {}",
                    crate::output::serde_name(&f.severity),
                    f.code,
                    f.message
                );
            }
        }
    }
    Ok(if failed { FOUND } else { OK })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report of the same volume spelled another way (`./`, absolute, from another
    /// directory) is replaced; one of another volume, or of a volume of another kind, or a
    /// file that is no report, is not.
    #[test]
    fn an_earlier_report_of_the_same_volume_spelled_otherwise_is_replaced() {
        let report = |target: &str| {
            serde_json::json!({
                "driver": "qemu", "target": target, "wait_for": "x", "outcome": "booted",
                "console_log": ""
            })
            .to_string()
            .into_bytes()
        };
        let r = report("file:web01.raw");
        for same in [
            "file:web01.raw",
            "file:./web01.raw",
            "file:/srv/w/web01.raw",
            "file:../w/web01.raw",
        ] {
            assert!(is_boot_report(&r, same), "{same}");
        }
        for other in [
            "file:web02.raw",
            "qcow2:web01.raw",
            "dev:/dev/sdb",
            "libvirt:default/web01.raw",
        ] {
            assert!(!is_boot_report(&r, other), "{other}");
        }
        assert!(is_boot_report(&report("libvirt:p/v"), "libvirt:p/v"));
        assert!(!is_boot_report(&report("libvirt:p/v"), "libvirt:q/v"));
        assert!(!is_boot_report(
            b"{\"target\": \"file:web01.raw\"}",
            "file:web01.raw"
        ));
        let dir = tempfile::tempdir().unwrap();
        let (vol, at) = (
            dir.path().join("web01.raw"),
            dir.path().join("web01.raw.boot-report.json"),
        );
        std::fs::write(&vol, b"disk").unwrap();
        std::fs::write(&at, report(&format!("file:{}", vol.display()))).unwrap();
        assert!(
            check_report_path(&at, false, std::slice::from_ref(&vol), "file:./web01.raw").unwrap()
        );
        assert!(
            check_report_path(&at, true, std::slice::from_ref(&vol), "file:other.raw").is_err()
        );
        // A symlink to the volume names the same boot.
        let link = dir.path().join("link.raw");
        std::os::unix::fs::symlink(&vol, &link).unwrap();
        assert!(same_volume_file(
            &format!("file:{}", vol.display()),
            &format!("file:{}", link.display())
        ));
    }

    /// `boot --target file:web01.qcow2` said "nothing bootable" after a boot attempt.
    #[test]
    fn a_container_given_as_file_is_named_before_any_boot() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("web01.qcow2");
        let mut bytes = vec![0u8; 64 << 10];
        bytes[..8].copy_from_slice(b"QFI\xfb\0\0\0\x03");
        std::fs::write(&q, &bytes).unwrap();
        let spec = format!("file:{}", q.display());
        let Err(e) = resolve(&spec) else {
            panic!("a qcow2 image given as file: was not refused")
        };
        assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE);
        assert!(e.to_string().contains("boot it as qcow2:"), "{e}");
        bytes[..8].copy_from_slice(&[0; 8]);
        bytes[510] = 0x55;
        bytes[511] = 0xaa;
        std::fs::write(&q, &bytes).unwrap();
        assert!(resolve(&spec).is_ok());
    }

    /// `boot --target rbd:` with a ceph.conf that is not there gave qemu-img's "error
    /// connecting: No such file or directory", exit 3, and "reconnect it".
    #[test]
    fn an_rbd_target_without_its_ceph_conf_is_a_usage_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("ceph.conf");
        let spec = format!("rbd:volumes/web01?conf={}", conf.display());
        let Err(e) = resolve(&spec) else {
            panic!("an rbd target whose ceph.conf is missing was resolved")
        };
        assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE);
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(e.to_string().contains(&conf.display().to_string()), "{e}");
        std::fs::write(&conf, "[global]\nmon_host = 127.0.0.1:1\n").unwrap();
        assert!(resolve(&spec).is_ok());
    }
}
