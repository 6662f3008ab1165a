//! Driver adaptation: make a migrated volume bootable on the target's virtual
//! hardware (virtio drivers in the initramfs or Windows registry, fstab, bootloader).
//!
//! This is `virt-v2v-in-place`'s job and we do not re-implement it: [`adapt`]
//! runs it on the volume under TCG (libguestfs' appliance must not use KVM
//! here) and reports its output. The MotionGear sample disk is a busybox
//! system that virt-v2v does not recognise as a distribution, so adapting it is
//! refused with a clear message rather than pretending.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

use crate::inspect::inspect_path;
use crate::sample::find_tool;
use crate::{BootError, Result};

/// Result of a successful adaptation.
#[derive(Debug, Clone, Serialize)]
pub struct AdaptReport {
    /// Tool used.
    pub tool: String,
    /// Command line run.
    pub command: Vec<String>,
    /// Its combined output.
    pub output: String,
}

/// Adapt the volume at `volume` (image format `format`: "raw" or "qcow2") in place.
pub fn adapt(volume: &Path, format: &str) -> Result<AdaptReport> {
    if format != "raw" && format != "qcow2" {
        return Err(BootError::Usage(format!(
            "cannot adapt a {format:?} volume: use raw or qcow2"
        )));
    }
    if format == "raw" {
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
                 injection. Build it with all drivers (Drivers::All / `--drivers all`) instead"
                    .into(),
            ));
        }
    }
    let tool = find_tool("virt-v2v-in-place", "virt-v2v")?;
    let mut cmd = Command::new(&tool);
    cmd.args(["-i", "disk", "-if", format])
        .arg(volume)
        .env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg");
    let command = std::iter::once(tool.display().to_string())
        .chain(["-i", "disk", "-if", format].map(String::from))
        .chain(std::iter::once(volume.display().to_string()))
        .collect();
    let out = cmd
        .output()
        .map_err(|e| BootError::io("running virt-v2v-in-place", e))?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(BootError::ToolFailed {
            tool: "virt-v2v-in-place".into(),
            detail: format!("{}: {}", out.status, output.trim()),
        });
    }
    Ok(AdaptReport {
        tool: "virt-v2v-in-place".into(),
        command,
        output,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build_sample_disk, Drivers, SampleDiskOptions};

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
    fn other_disks_go_to_virt_v2v_or_say_what_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("zeros.raw");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        match adapt(&disk, "raw").unwrap_err() {
            BootError::MissingTool { package, .. } => assert_eq!(package, "virt-v2v"),
            // Installed: it runs and rejects a disk without an OS.
            BootError::ToolFailed { tool, .. } => assert_eq!(tool, "virt-v2v-in-place"),
            e => panic!("unexpected error {e}"),
        }
        assert!(matches!(adapt(&disk, "vmdk"), Err(BootError::Usage(_))));
    }
}
