//! Driver adaptation: make a migrated volume bootable on the target's virtual
//! hardware (virtio drivers in the initramfs or Windows registry, fstab, bootloader).
//!
//! This is `virt-v2v-in-place`'s job (Debian package `virt-v2v`) and we do not
//! re-implement it: [`adapt`] runs `virt-v2v-in-place -i disk -if FMT VOLUME`
//! with libguestfs' `direct` backend (no libvirt daemon needed) under TCG
//! (`LIBGUESTFS_BACKEND_SETTINGS=force_tcg`: never KVM here), and reports its
//! output. For a Debian-family guest virt-v2v appends the virtio modules to
//! `/etc/initramfs-tools/modules` and runs `update-initramfs -u` inside its
//! appliance, which works whatever `MODULES=` the guest's initramfs-tools uses;
//! it also rewrites device names in fstab and the GRUB configuration.
//!
//! For raw volumes the result is checked rather than trusted: the newest
//! kernel's initramfs is read before and after (see [`crate::inspect`]), and an
//! adaptation after which it still lacks virtio is an error.
//!
//! The MotionGear sample disk is a busybox system that virt-v2v does not
//! recognise as a distribution, so adapting it is refused with a clear message
//! rather than pretending.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::Serialize;

use crate::inspect::{inspect_path, DriverPresence, FsType};
use crate::{BootError, Result};

/// The program that adapts a volume in place.
pub const TOOL: &str = "virt-v2v-in-place";
/// The Debian package that provides [`TOOL`].
pub const PACKAGE: &str = "virt-v2v";

/// Lines of virt-v2v's output kept in an error message.
const ERROR_TAIL_LINES: usize = 25;

/// Result of a successful adaptation.
#[derive(Debug, Clone, Serialize)]
pub struct AdaptReport {
    /// Tool used.
    pub tool: String,
    /// Command line run.
    pub command: Vec<String>,
    /// Its combined output.
    pub output: String,
    /// How long it ran.
    pub seconds: f64,
    /// virtio in the newest kernel's boot path before (raw Linux volumes only).
    pub virtio_before: Option<DriverPresence>,
    /// ... and after the adaptation.
    pub virtio_after: Option<DriverPresence>,
}

/// Where `virt-v2v-in-place` is, looked up in `PATH` (it needs the rest of
/// libguestfs' tools from there too); [`BootError::MissingTool`] naming the
/// Debian package otherwise. Callers use it to fail before long work.
pub fn find_adapter() -> Result<PathBuf> {
    find_in(std::env::var_os("PATH"))
}

fn find_in(path: Option<OsString>) -> Result<PathBuf> {
    path.iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(TOOL))
        .find(|p| p.is_file())
        .ok_or_else(|| BootError::MissingTool {
            tool: TOOL.into(),
            package: PACKAGE.into(),
        })
}

/// Adapt the volume at `volume` (image format `format`: "raw" or "qcow2") in place.
///
/// Runs under TCG: expect minutes, most of them in the guest's own
/// `update-initramfs` (Linux) inside libguestfs' appliance.
pub fn adapt(volume: &Path, format: &str) -> Result<AdaptReport> {
    adapt_machine(&[(volume.to_path_buf(), format.to_string())])
}

/// What a volume's newest kernel has of virtio before the adaptation (raw
/// Linux volumes), refusing what cannot be adapted: the sample disk, a disk
/// without an OS, a format virt-v2v does not take.
fn precheck(volume: &Path, format: &str) -> Result<Option<DriverPresence>> {
    if format != "raw" && format != "qcow2" {
        return Err(BootError::Usage(format!(
            "cannot adapt a {format:?} volume: use raw or qcow2"
        )));
    }
    if format != "raw" {
        return Ok(None);
    }
    let facts = inspect_path(volume)?;
    let sample = facts
        .linux
        .as_ref()
        .and_then(|l| l.os_name.as_deref())
        .is_some_and(|n| n.starts_with("MotionGear sample"));
    if sample {
        return Err(BootError::Unsupported(
            "this is a MotionGear sample disk (busybox, not a distribution): \
             virt-v2v-in-place cannot adapt it and mgear does not re-implement driver \
             injection. Build it with the drivers of the target (`mgear boot --build-sample \
             --drivers all` carries every one) and ingest without --adapt"
                .into(),
        ));
    }
    let no_fs = matches!(facts.whole_disk_fs, None | Some(FsType::Unknown));
    if facts.partitions.is_empty() && no_fs {
        return Err(BootError::Unsupported(format!(
            "{} has no partition table and no filesystem: there is no operating system to adapt",
            volume.display()
        )));
    }
    Ok(facts.linux.map(|l| l.virtio))
}

/// The guest description `virt-v2v-in-place -i libvirtxml` reads for a
/// machine of several disks: every disk in the machine's order (sda, sdb,
/// ...), so its inspection sees the whole guest (a root on one disk, /srv or
/// /var on another, fstab naming them).
fn machine_xml(volumes: &[(PathBuf, String)]) -> Result<String> {
    let mut disks = String::new();
    for (i, (path, format)) in volumes.iter().enumerate() {
        let letter = char::from(b'a' + u8::try_from(i.min(25)).unwrap_or(25));
        let path = path
            .to_str()
            .ok_or_else(|| BootError::Usage(format!("{} is not a UTF-8 path", path.display())))?;
        let esc = path
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('\'', "&apos;");
        disks.push_str(&format!(
            "<disk type='file' device='disk'><driver name='qemu' type='{format}'/>\
             <source file='{esc}'/><target dev='sd{letter}' bus='sata'/></disk>\n"
        ));
    }
    Ok(format!(
        "<domain type='kvm'>\n<name>mgear-adapt</name>\n<memory unit='MiB'>1024</memory>\n\
         <vcpu>1</vcpu>\n<os><type arch='x86_64'>hvm</type></os>\n<devices>\n{disks}</devices>\n\
         </domain>\n"
    ))
}

/// Adapt the disks of one machine together (`volumes[0]` boots; raw or
/// qcow2 each): one disk goes to `virt-v2v-in-place -i disk`, several to
/// `-i libvirtxml` with all of them. The boot disk's virtio is checked after.
pub fn adapt_machine(volumes: &[(PathBuf, String)]) -> Result<AdaptReport> {
    // Absolute, as for QEMU: a relative `-v.raw` read as an option, `file:v.raw` as a
    // protocol, and the temporary directory's XML is read from elsewhere.
    let volumes: Vec<(PathBuf, String)> = volumes
        .iter()
        .map(|(p, f)| (crate::boot::absolute(p), f.clone()))
        .collect();
    let volumes = &volumes[..];
    let Some((boot, boot_format)) = volumes.first() else {
        return Err(BootError::Usage("nothing to adapt".into()));
    };
    let virtio_before = precheck(boot, boot_format)?;
    for (v, f) in &volumes[1..] {
        if f != "raw" && f != "qcow2" {
            return Err(BootError::Usage(format!(
                "cannot adapt {} ({f:?}): use raw or qcow2",
                v.display()
            )));
        }
    }
    let tool = find_adapter()?;
    let tmp =
        tempfile::tempdir().map_err(|e| BootError::io("creating a temporary directory", e))?;
    let args: Vec<String> = if volumes.len() == 1 {
        vec![
            "-i".into(),
            "disk".into(),
            "-if".into(),
            boot_format.clone(),
            boot.display().to_string(),
        ]
    } else {
        let xml = tmp.path().join("machine.xml");
        std::fs::write(&xml, machine_xml(volumes)?)
            .map_err(|e| BootError::io(format!("writing {}", xml.display()), e))?;
        vec!["-i".into(), "libvirtxml".into(), xml.display().to_string()]
    };
    let command = std::iter::once(tool.display().to_string())
        .chain(args.iter().cloned())
        .collect();
    let started = Instant::now();
    let out = Command::new(&tool)
        .args(&args)
        .env("LIBGUESTFS_BACKEND", "direct")
        .env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
        .output()
        .map_err(|e| BootError::io(format!("running {}", tool.display()), e))?;
    let seconds = started.elapsed().as_secs_f64();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(BootError::ToolFailed {
            tool: TOOL.into(),
            detail: format!("{}:\n{}", out.status, tail(&output, ERROR_TAIL_LINES)),
        });
    }
    let virtio_after = if boot_format == "raw" {
        inspect_path(boot)?.linux.map(|l| l.virtio)
    } else {
        None
    };
    // A module only on the root filesystem is too late for the root disk.
    let unbootable = matches!(
        virtio_after,
        Some(DriverPresence::Missing | DriverPresence::RootFs)
    );
    if unbootable {
        return Err(BootError::ToolFailed {
            tool: TOOL.into(),
            detail: format!(
                "it reported success but the newest kernel's initramfs on {} still has no \
                 virtio drivers, so the volume will not boot on virtio:\n{}",
                boot.display(),
                tail(&output, ERROR_TAIL_LINES)
            ),
        });
    }
    Ok(AdaptReport {
        tool: TOOL.into(),
        command,
        output,
        seconds,
        virtio_before,
        virtio_after,
    })
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build_sample_disk, Drivers, SampleDiskOptions};

    #[test]
    fn a_machine_is_described_with_every_disk_in_order() {
        let xml = machine_xml(&[
            ("/v/root.raw".into(), "raw".into()),
            ("/v/s&rv.qcow2".into(), "qcow2".into()),
        ])
        .unwrap();
        let (a, b) = (
            xml.find("dev='sda'").unwrap(),
            xml.find("dev='sdb'").unwrap(),
        );
        assert!(a < b, "{xml}");
        assert!(xml.contains("<source file='/v/root.raw'/>"), "{xml}");
        assert!(
            xml.contains("type='qcow2'/><source file='/v/s&amp;rv.qcow2'/>"),
            "{xml}"
        );
        assert!(!xml.contains("<interface"), "{xml}");
    }

    #[test]
    fn refuses_the_sample_disk_honestly() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("ide.raw");
        let opts = SampleDiskOptions {
            drivers: Drivers::IdeOnly,
            ..Default::default()
        };
        build_sample_disk(&disk, &opts).unwrap();
        let e = adapt(&disk, "raw").unwrap_err();
        assert!(matches!(e, BootError::Unsupported(_)), "{e}");
        assert!(e.to_string().contains("virt-v2v"), "{e}");
    }

    #[test]
    fn refuses_a_disk_without_an_os_and_unknown_formats() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("zeros.raw");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let e = adapt(&disk, "raw").unwrap_err();
        assert!(matches!(e, BootError::Unsupported(_)), "{e}");
        assert!(e.to_string().contains("no operating system"), "{e}");
        assert!(matches!(adapt(&disk, "vmdk"), Err(BootError::Usage(_))));
    }

    #[test]
    fn missing_tool_names_the_package_to_install() {
        let empty = tempfile::tempdir().unwrap();
        let e = find_in(Some(empty.path().as_os_str().to_owned())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "virt-v2v-in-place not found: install it with `apt-get install virt-v2v`"
        );
        assert!(find_in(None).is_err());

        // Found where PATH says, not elsewhere.
        let bin = tempfile::tempdir().unwrap();
        std::fs::write(bin.path().join(TOOL), "").unwrap();
        let path = std::env::join_paths([empty.path(), bin.path()]).unwrap();
        assert_eq!(find_in(Some(path)).unwrap(), bin.path().join(TOOL));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }
}
