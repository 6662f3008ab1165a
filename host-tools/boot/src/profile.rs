//! Pre-ship readiness, part 2: will this disk boot at that target?
//!
//! A [`TargetProfile`] describes what a target offers (firmware, disk bus,
//! size limits); [`check_profile`] compares it with [`DiskFacts`] and returns
//! [`Finding`]s that say what will fail at the target and what to do about it
//! before the appliance is shipped.

use serde::Serialize;

use crate::inspect::{DiskFacts, DriverPresence, OsFamily};
use crate::partition::TableKind;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; nothing fails.
    Info,
    /// May fail or needs a manual step at the target.
    Warn,
    /// Will fail at the target unless fixed.
    Error,
}

/// One readiness finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Severity.
    pub severity: Severity,
    /// Stable short code ("firmware", "virtio-driver", ...), for scripts.
    pub code: &'static str,
    /// What will happen at the target and what to do.
    pub message: String,
}

/// Disk bus a target attaches the boot volume to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileBus {
    /// virtio-blk.
    Virtio,
    /// NVMe.
    Nvme,
    /// IDE/SATA emulation: every OS has drivers.
    Emulated,
}

/// What a target offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetProfile {
    /// Name used on the command line.
    pub name: &'static str,
    /// One line of description.
    pub description: &'static str,
    /// Boots guests with BIOS.
    pub bios: bool,
    /// Boots guests with UEFI.
    pub uefi: bool,
    /// What must be set at the target for a UEFI guest (empty if nothing).
    pub uefi_hint: &'static str,
    /// Bus of the boot disk.
    pub bus: ProfileBus,
    /// Needs the ENA network driver (AWS Nitro).
    pub needs_ena: bool,
    /// Largest boot volume.
    pub max_size: Option<u64>,
    /// Volumes are sized in multiples of this.
    pub size_unit: u64,
}

const PROFILES: &[TargetProfile] = &[
    TargetProfile {
        name: "kvm-virtio-bios",
        description: "KVM/QEMU or libvirt guest, SeaBIOS, virtio-blk disk",
        bios: true,
        uefi: false,
        uefi_hint: "",
        bus: ProfileBus::Virtio,
        needs_ena: false,
        max_size: None,
        size_unit: 512,
    },
    TargetProfile {
        name: "kvm-virtio-uefi",
        description: "KVM/QEMU or libvirt guest, OVMF UEFI, virtio-blk disk",
        bios: false,
        uefi: true,
        uefi_hint: "",
        bus: ProfileBus::Virtio,
        needs_ena: false,
        max_size: None,
        size_unit: 512,
    },
    TargetProfile {
        name: "openstack",
        description: "OpenStack Nova/Cinder (KVM), BIOS by default, virtio-blk disk",
        bios: true,
        uefi: true,
        uefi_hint: "set the image property hw_firmware_type=uefi (and hw_machine_type=q35)",
        bus: ProfileBus::Virtio,
        needs_ena: false,
        max_size: None,
        size_unit: GIB,
    },
    TargetProfile {
        name: "aws-nitro",
        description: "AWS EC2 Nitro instance: EBS volume as NVMe, ENA network",
        bios: true,
        uefi: true,
        uefi_hint: "register the AMI with --boot-mode uefi",
        bus: ProfileBus::Nvme,
        needs_ena: true,
        max_size: Some(64 * TIB),
        size_unit: GIB,
    },
    TargetProfile {
        name: "generic",
        description: "any hypervisor with an emulated IDE/SATA disk and BIOS or UEFI",
        bios: true,
        uefi: true,
        uefi_hint: "",
        bus: ProfileBus::Emulated,
        needs_ena: false,
        max_size: None,
        size_unit: 512,
    },
];

/// Names of the built-in profiles.
pub fn profile_names() -> Vec<&'static str> {
    PROFILES.iter().map(|p| p.name).collect()
}

/// A built-in profile by name.
pub fn profile_by_name(name: &str) -> Option<&'static TargetProfile> {
    PROFILES.iter().find(|p| p.name == name)
}

fn f(severity: Severity, code: &'static str, message: String) -> Finding {
    Finding {
        severity,
        code,
        message,
    }
}

/// The finding for a disk whose partition table cannot be read (`why`), the only one: nothing
/// else on it can be checked. A boot disk will not boot (its firmware trusts no table); on
/// another disk of the machine the guest finds no partitions. A finding, not a failure of the
/// check: `--check-profile` aborted the capture over it, with an I/O error's hint.
pub fn unreadable_table(why: &str, boot_disk: bool) -> Finding {
    let (severity, then) = match boot_disk {
        true => (Severity::Error, "the machine will not boot from it"),
        false => (Severity::Warn, "the guest will find no partitions on it"),
    };
    f(
        severity,
        "partition-table",
        format!(
            "the partition table cannot be read ({why}): {then}, and nothing else on the disk \
             was checked; check it at the source (`sgdisk -v DISK`, or `fdisk -l DISK`)"
        ),
    )
}

/// Check a disk against a target profile. Findings are sorted, errors first.
pub fn check_profile(facts: &DiskFacts, p: &TargetProfile) -> Vec<Finding> {
    let mut out = Vec::new();
    let t = p.name;
    // Firmware.
    match (facts.bios_bootable, facts.uefi_bootable) {
        (false, false) => out.push(f(
            Severity::Warn,
            "not-bootable",
            "no BIOS boot code in the MBR and no EFI System Partition: this disk will not boot \
             anywhere. Fine for a data volume; for the boot disk, capture the disk that holds \
             the bootloader"
                .into(),
        )),
        (false, true) if !p.uefi => out.push(f(
            Severity::Error,
            "firmware",
            format!(
                "the disk boots only with UEFI (GPT + EFI System Partition, no BIOS boot code) \
                 but {t} starts guests with BIOS: it will stop at \"No bootable device\". Use a \
                 UEFI profile (kvm-virtio-uefi) or add BIOS boot (a BIOS boot partition and \
                 `grub-install --target=i386-pc`) before capture"
            ),
        )),
        (true, false) if !p.bios => out.push(f(
            Severity::Error,
            "firmware",
            format!(
                "the disk boots only with BIOS (boot code in the MBR, no EFI System Partition) \
                 but {t} starts guests with UEFI: the firmware will find no bootloader. Use a \
                 BIOS profile (kvm-virtio-bios) or convert to GPT + ESP before capture"
            ),
        )),
        (false, true) if !p.uefi_hint.is_empty() => out.push(f(
            Severity::Warn,
            "firmware",
            format!("the disk boots with UEFI only: at {t}, {}", p.uefi_hint),
        )),
        (b, u) => out.push(f(
            Severity::Info,
            "firmware",
            format!(
                "boots with {}; {t} supports it",
                match (b, u) {
                    (true, true) => "BIOS and UEFI",
                    (true, false) => "BIOS",
                    _ => "UEFI",
                }
            ),
        )),
    }
    if facts.table == TableKind::Mbr && facts.size > 2 * TIB {
        out.push(f(
            Severity::Error,
            "mbr-size",
            "the disk is larger than 2 TiB but uses an MBR table: space past 2 TiB is \
             unreachable. Convert to GPT before capture"
                .into(),
        ));
    }
    // Size.
    if let Some(max) = p.max_size {
        if facts.size > max {
            out.push(f(
                Severity::Error,
                "size",
                format!(
                    "the disk is {} bytes, larger than {t}'s limit of {max} bytes: the volume \
                     cannot be created. Shrink the filesystem and partition before capture",
                    facts.size
                ),
            ));
        }
    }
    if !facts.size.is_multiple_of(p.size_unit) {
        out.push(f(
            Severity::Info,
            "size",
            format!(
                "{t} sizes volumes in units of {} bytes: the volume will be rounded up to {} \
                 bytes (the extra space is zeros)",
                p.size_unit,
                facts.size.div_ceil(p.size_unit) * p.size_unit
            ),
        ));
    }
    for part in &facts.partitions {
        if part.partition.start % MIB != 0 {
            out.push(f(
                Severity::Info,
                "alignment",
                format!(
                    "partition {} starts at byte {}, not on a 1 MiB boundary: it works but I/O \
                     on 4K-sector cloud storage is slower",
                    part.partition.number, part.partition.start
                ),
            ));
        }
    }
    // Drivers.
    let bus_name = match p.bus {
        ProfileBus::Virtio => "virtio",
        ProfileBus::Nvme => "NVMe",
        ProfileBus::Emulated => "IDE/SATA",
    };
    match facts.os {
        OsFamily::Linux => {
            if let Some(l) = &facts.linux {
                let kernel = l
                    .kernels
                    .last()
                    .map(|k| format!("kernel {}", k.version))
                    .unwrap_or_else(|| "the kernel".into());
                let (have, fix) = match p.bus {
                    ProfileBus::Virtio => (
                        Some(l.virtio),
                        "add virtio_blk and virtio_pci to the initramfs before capture \
                         (Debian/Ubuntu: list them in /etc/initramfs-tools/modules, then \
                         `update-initramfs -u`; RHEL/SUSE: `dracut -f --add-drivers \
                         \"virtio_blk virtio_pci\"`), or adapt at the target with \
                         `mgear ingest --adapt` (virt-v2v-in-place)",
                    ),
                    ProfileBus::Nvme => (
                        Some(l.nvme),
                        "add the nvme driver to the initramfs before capture (initramfs-tools: \
                         /etc/initramfs-tools/modules + `update-initramfs -u`; dracut: \
                         `dracut -f --add-drivers nvme`)",
                    ),
                    ProfileBus::Emulated => (None, ""),
                };
                match have {
                    Some(DriverPresence::RootFs) => out.push(f(
                        Severity::Error,
                        "disk-driver",
                        format!(
                            "{kernel} has the {bus_name} disk driver installed but not in its \
                             initramfs: it loads only after the root disk is mounted, so at {t} \
                             the root disk will not be found (\"unable to mount root\"). Fix: {fix}"
                        ),
                    )),
                    Some(DriverPresence::Missing) => out.push(f(
                        Severity::Error,
                        "disk-driver",
                        format!(
                            "{kernel} has no {bus_name} disk driver (neither built in nor in its \
                             initramfs): at {t} the root disk will not be found and boot stops \
                             (\"unable to mount root\" / emergency shell). Fix: {fix}"
                        ),
                    )),
                    Some(DriverPresence::Unknown) => out.push(f(
                        Severity::Warn,
                        "disk-driver",
                        format!(
                            "could not tell whether {kernel} has a {bus_name} disk driver at boot \
                             (see notes); if it lacks one, boot at {t} stops at \"unable to mount \
                             root\". Check with `lsinitrd`/`lsinitramfs`, or: {fix}"
                        ),
                    )),
                    Some(x) => out.push(f(
                        Severity::Info,
                        "disk-driver",
                        format!(
                            "{kernel} has the {bus_name} disk driver ({})",
                            if x == DriverPresence::Builtin {
                                "built in"
                            } else {
                                "in the initramfs"
                            }
                        ),
                    )),
                    None => {}
                }
                if p.needs_ena {
                    let ena = l
                        .kernels
                        .last()
                        .map(|k| k.ena)
                        .unwrap_or(DriverPresence::Unknown);
                    if ena < DriverPresence::RootFs {
                        out.push(f(
                            Severity::Warn,
                            "network-driver",
                            format!(
                                "the ENA network driver was not found for {kernel} (not built \
                                 in, not installed): the instance may boot but be unreachable on the \
                                 network at {t}. Install the ena module (kernel >= 4.9 ships it) \
                                 and check `modinfo ena` before capture"
                            ),
                        ));
                    }
                }
            }
        }
        OsFamily::Windows => {
            if p.bus != ProfileBus::Emulated {
                out.push(f(
                    Severity::Warn,
                    "disk-driver",
                    format!(
                        "Windows needs the {bus_name} storage driver ({}) installed and set to \
                         start at boot, or it stops with INACCESSIBLE_BOOT_DEVICE at {t}; this \
                         is not checked from the disk. Install it before capture or adapt with \
                         virt-v2v-in-place at the target",
                        if p.bus == ProfileBus::Virtio {
                            "viostor from virtio-win"
                        } else {
                            "AWS NVMe"
                        }
                    ),
                ));
            }
        }
        OsFamily::Unknown => out.push(f(
            Severity::Info,
            "os",
            "operating system not recognised: drivers are not checked".into(),
        )),
    }
    for n in &facts.notes {
        out.push(f(Severity::Info, "note", n.clone()));
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

/// Check a disk attached after the boot disk against a target profile: what the cloud needs of
/// any volume (its size, its table), without the findings about booting (firmware, boot code,
/// the guest's drivers), which belong to the boot disk alone.
pub fn check_data_disk(facts: &DiskFacts, p: &TargetProfile) -> Vec<Finding> {
    check_profile(facts, p)
        .into_iter()
        .filter(|f| !BOOT_CODES.contains(&f.code))
        .collect()
}

/// Finding codes about the guest booting from the disk.
const BOOT_CODES: &[&str] = &[
    "firmware",
    "not-bootable",
    "disk-driver",
    "network-driver",
    "os",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::{KernelFacts, LinuxFacts};

    fn linux_disk(virtio: DriverPresence, bios: bool, uefi: bool) -> DiskFacts {
        DiskFacts {
            size: 64 * MIB,
            table: if uefi { TableKind::Gpt } else { TableKind::Mbr },
            partitions: vec![],
            whole_disk_fs: None,
            mbr_boot_code: bios,
            mbr_boot_loader: None,
            bios_bootable: bios,
            uefi_bootable: uefi,
            os: OsFamily::Linux,
            linux: Some(LinuxFacts {
                os_name: None,
                kernels: vec![KernelFacts {
                    version: "6.1".into(),
                    initramfs: Some("initrd.img-6.1".into()),
                    initramfs_note: None,
                    virtio,
                    nvme: DriverPresence::Missing,
                    xen_blkfront: DriverPresence::Missing,
                    ena: DriverPresence::Missing,
                    storage_modules: vec![],
                }],
                virtio,
                nvme: DriverPresence::Missing,
            }),
            notes: vec![],
        }
    }

    fn errors(v: &[Finding]) -> Vec<&'static str> {
        v.iter()
            .filter(|f| f.severity == Severity::Error)
            .map(|f| f.code)
            .collect()
    }

    #[test]
    fn all_profiles_resolve() {
        for n in profile_names() {
            assert_eq!(profile_by_name(n).unwrap().name, n);
        }
        assert!(profile_by_name("nope").is_none());
    }

    #[test]
    fn uefi_only_disk_fails_bios_profile() {
        let d = linux_disk(DriverPresence::Initramfs, false, true);
        let v = check_profile(&d, profile_by_name("kvm-virtio-bios").unwrap());
        assert_eq!(errors(&v), ["firmware"]);
        assert!(errors(&check_profile(
            &d,
            profile_by_name("kvm-virtio-uefi").unwrap()
        ))
        .is_empty());
    }

    #[test]
    fn missing_virtio_fails_virtio_profile_only() {
        let d = linux_disk(DriverPresence::Missing, true, false);
        let v = check_profile(&d, profile_by_name("kvm-virtio-bios").unwrap());
        assert_eq!(errors(&v), ["disk-driver"]);
        assert!(v[0].message.contains("update-initramfs"));
        assert!(errors(&check_profile(&d, profile_by_name("generic").unwrap())).is_empty());
        let v = check_profile(&d, profile_by_name("aws-nitro").unwrap());
        assert_eq!(errors(&v), ["disk-driver"], "nvme missing");
    }

    #[test]
    fn good_disk_passes_and_sizes_are_checked() {
        let mut d = linux_disk(DriverPresence::Builtin, true, false);
        assert!(errors(&check_profile(
            &d,
            profile_by_name("kvm-virtio-bios").unwrap()
        ))
        .is_empty());
        d.size = 65 * TIB;
        let v = check_profile(&d, profile_by_name("aws-nitro").unwrap());
        assert!(errors(&v).contains(&"size"));
        assert!(errors(&v).contains(&"mbr-size"));
    }

    #[test]
    fn a_data_disk_is_checked_for_size_not_for_booting() {
        let mut d = linux_disk(DriverPresence::Missing, false, true);
        let bios = profile_by_name("kvm-virtio-bios").unwrap();
        assert_eq!(
            errors(&check_profile(&d, bios)),
            ["firmware", "disk-driver"]
        );
        assert!(errors(&check_data_disk(&d, bios)).is_empty());
        d.size = 65 * TIB;
        let v = check_data_disk(&d, profile_by_name("aws-nitro").unwrap());
        assert_eq!(errors(&v), ["size"]);
    }
}
