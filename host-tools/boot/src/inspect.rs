//! Pre-ship readiness, part 1: what is on a disk.
//!
//! [`inspect_disk`] reads the partition table, recognises filesystems by
//! superblock magic, guesses the OS family, and for Linux on ext2/3/4 opens the
//! filesystem read-only in process (`ext4-view`, no mount, no root) to find the
//! kernels, their initramfs images and whether those carry the disk drivers a
//! target needs (virtio, NVMe). Compressed initramfs images (gzip, zstd) are
//! decompressed in memory; others are reported as not checkable.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;
use std::sync::mpsc;

use ext4_view::{Ext4, Ext4Read};
use serde::Serialize;

use crate::cpio;
use crate::partition::{
    read_table, PartType, Partition, TableKind, GUID_BIOS_BOOT, GUID_MS_RESERVED,
};
use crate::{BootError, ReadAt, Result};

/// Largest initramfs we read into memory (stored and decompressed).
const MAX_INITRAMFS: usize = 512 * 1024 * 1024;

/// Filesystem recognised by its superblock magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    /// ext2 (no journal).
    Ext2,
    /// ext3 (journal, no extents).
    Ext3,
    /// ext4.
    Ext4,
    /// XFS.
    Xfs,
    /// Btrfs.
    Btrfs,
    /// NTFS.
    Ntfs,
    /// FAT12/16/32.
    Vfat,
    /// Linux swap.
    Swap,
    /// LVM2 physical volume.
    Lvm,
    /// LUKS encrypted volume.
    Luks,
    /// Nothing recognised.
    Unknown,
}

/// Operating system family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OsFamily {
    /// Linux filesystems or partition types found.
    Linux,
    /// NTFS or Microsoft reserved partition found.
    Windows,
    /// Could not tell.
    Unknown,
}

/// Whether a kernel can use a driver at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriverPresence {
    /// Not in the kernel and not in the (readable) initramfs: the root disk
    /// will not be found on that bus.
    Missing,
    /// Could not be determined (initramfs compressed in an unknown way, or not
    /// found, or filesystem not readable here).
    Unknown,
    /// A module on the root filesystem only: usable once the root is mounted
    /// (fine for a network driver, too late for the root disk's driver).
    RootFs,
    /// A module inside the initramfs.
    Initramfs,
    /// Built into the kernel.
    Builtin,
}

/// One partition and what is on it.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionFacts {
    /// The table entry.
    #[serde(flatten)]
    pub partition: Partition,
    /// Human name of its type.
    pub type_name: String,
    /// Filesystem found in it.
    pub filesystem: FsType,
}

/// One installed kernel and its boot drivers.
#[derive(Debug, Clone, Serialize)]
pub struct KernelFacts {
    /// Version, from `vmlinuz-<version>`.
    pub version: String,
    /// Initramfs file inspected, if any.
    pub initramfs: Option<String>,
    /// Why the initramfs could not be fully read, if so.
    pub initramfs_note: Option<String>,
    /// virtio-blk + virtio-pci (both needed for a virtio disk).
    pub virtio: DriverPresence,
    /// NVMe (AWS Nitro disks).
    pub nvme: DriverPresence,
    /// Xen blkfront (older AWS instance types).
    pub xen_blkfront: DriverPresence,
    /// ENA network driver (AWS Nitro networking; only needed after boot).
    pub ena: DriverPresence,
    /// Storage driver modules found in the initramfs.
    pub storage_modules: Vec<String>,
}

/// What Linux-specific facts could be read.
#[derive(Debug, Clone, Serialize)]
pub struct LinuxFacts {
    /// `PRETTY_NAME` from os-release.
    pub os_name: Option<String>,
    /// Installed kernels, newest last.
    pub kernels: Vec<KernelFacts>,
    /// virtio for the newest kernel (the one a default boot entry uses).
    pub virtio: DriverPresence,
    /// NVMe for the newest kernel.
    pub nvme: DriverPresence,
}

/// Everything [`inspect_disk`] learnt.
#[derive(Debug, Clone, Serialize)]
pub struct DiskFacts {
    /// Disk size in bytes.
    pub size: u64,
    /// Partition table kind.
    pub table: TableKind,
    /// Partitions.
    pub partitions: Vec<PartitionFacts>,
    /// Filesystem directly on the disk (no table), if any.
    pub whole_disk_fs: Option<FsType>,
    /// Boot code present in the MBR.
    pub mbr_boot_code: bool,
    /// Bootloader recognised in the MBR.
    pub mbr_boot_loader: Option<String>,
    /// The disk can boot with BIOS firmware.
    pub bios_bootable: bool,
    /// The disk has an EFI System Partition (UEFI boot).
    pub uefi_bootable: bool,
    /// OS family.
    pub os: OsFamily,
    /// Linux details when readable.
    pub linux: Option<LinuxFacts>,
    /// What could not be checked and why.
    pub notes: Vec<String>,
}

/// A read request from the filesystem reader thread: offset, length, reply.
type ReadRequest = (u64, usize, mpsc::Sender<Result<Vec<u8>>>);

/// A partition as `ext4-view` wants it (owned, `'static`): reads are sent to
/// the thread that holds the caller's borrowed reader (see [`inspect_disk`]).
struct Window {
    requests: mpsc::Sender<ReadRequest>,
    offset: u64,
    len: u64,
}

impl Ext4Read for Window {
    fn read(
        &mut self,
        start: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        let end = start.checked_add(dst.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(Box::new(BootError::Format(format!(
                "filesystem read at {start} beyond its partition of {} bytes",
                self.len
            ))));
        }
        let (tx, rx) = mpsc::channel();
        self.requests
            .send((self.offset + start, dst.len(), tx))
            .map_err(|_| Box::new(BootError::Format("disk reader has stopped".into())))?;
        let data = rx
            .recv()
            .map_err(|_| Box::new(BootError::Format("disk reader has stopped".into())))??;
        dst.copy_from_slice(&data);
        Ok(())
    }
}

/// Recognise the filesystem at `offset` by superblock magic.
pub fn detect_fs(r: &mut dyn ReadAt, offset: u64, len: u64) -> FsType {
    let mut head = vec![0u8; 4096.min(len) as usize];
    if r.read_exact_at(offset, &mut head).is_err() {
        return FsType::Unknown;
    }
    let at = |o: usize, m: &[u8]| head.get(o..o + m.len()) == Some(m);
    if at(0, b"LUKS\xBA\xBE") {
        return FsType::Luks;
    }
    if at(0, b"XFSB") {
        return FsType::Xfs;
    }
    if at(3, b"NTFS    ") {
        return FsType::Ntfs;
    }
    if at(512, b"LABELONE") && at(512 + 24, b"LVM2 001") {
        return FsType::Lvm;
    }
    if at(4086, b"SWAPSPACE2") || at(4086, b"SWAP-SPACE") {
        return FsType::Swap;
    }
    if at(1024 + 56, &[0x53, 0xEF]) {
        let le32 = |o: usize| {
            head.get(o..o + 4)
                .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
                .unwrap_or(0)
        };
        let compat = le32(1024 + 92);
        let incompat = le32(1024 + 96);
        // extents | 64bit | flex_bg mark ext4; a journal alone marks ext3.
        return if incompat & (0x40 | 0x80 | 0x200) != 0 {
            FsType::Ext4
        } else if compat & 0x4 != 0 {
            FsType::Ext3
        } else {
            FsType::Ext2
        };
    }
    if at(510, &[0x55, 0xAA])
        && (at(0x52, b"FAT32   ") || at(0x36, b"FAT16   ") || at(0x36, b"FAT12   "))
    {
        return FsType::Vfat;
    }
    if len > 65536 + 72 {
        let mut b = [0u8; 8];
        if r.read_exact_at(offset + 65536 + 64, &mut b).is_ok() && &b == b"_BHRfS_M" {
            return FsType::Btrfs;
        }
    }
    FsType::Unknown
}

/// Inspect the disk image or device at `path`.
pub fn inspect_path(path: &Path) -> Result<DiskFacts> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| BootError::io(format!("opening {}", path.display()), e))?;
    let size = std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0))
        .map_err(|e| BootError::io(format!("sizing {}", path.display()), e))?;
    inspect_disk(&mut f, size)
}

/// Inspect a disk of `size` bytes read through `source`.
///
/// Errors only when the disk cannot be read or its partition table is corrupt;
/// everything that merely could not be checked becomes a [`DiskFacts::notes`] entry.
pub fn inspect_disk(r: &mut dyn ReadAt, size: u64) -> Result<DiskFacts> {
    let table = read_table(r, size)?;
    let mut notes = Vec::new();
    let mut partitions = Vec::new();
    let mut fs_regions = Vec::new();
    let whole_disk_fs = if table.kind == TableKind::None {
        let fs = detect_fs(r, 0, size);
        fs_regions.push((0, size, fs));
        Some(fs)
    } else {
        None
    };
    for p in &table.partitions {
        let fs = detect_fs(r, p.start, p.size);
        fs_regions.push((p.start, p.size, fs));
        partitions.push(PartitionFacts {
            type_name: p.ptype.name().to_string(),
            partition: p.clone(),
            filesystem: fs,
        });
    }
    let has_type = |f: &dyn Fn(&PartType) -> bool| table.partitions.iter().any(|p| f(&p.ptype));
    let has_fs = |t: FsType| fs_regions.iter().any(|(_, _, f)| *f == t);
    let uefi_bootable = has_type(&|t| t.is_esp());
    let bios_bootable = table.mbr_boot_code
        && match table.kind {
            TableKind::Gpt => has_type(&|t| *t == PartType::Gpt(GUID_BIOS_BOOT.into())),
            _ => true,
        };
    let os = if has_fs(FsType::Ntfs) || has_type(&|t| *t == PartType::Gpt(GUID_MS_RESERVED.into()))
    {
        OsFamily::Windows
    } else if [
        FsType::Ext2,
        FsType::Ext3,
        FsType::Ext4,
        FsType::Xfs,
        FsType::Btrfs,
        FsType::Lvm,
        FsType::Swap,
    ]
    .iter()
    .any(|t| has_fs(*t))
        || has_type(&|t| matches!(t, PartType::Mbr(0x83 | 0x8E | 0x82)))
    {
        OsFamily::Linux
    } else {
        OsFamily::Unknown
    };
    let linux = if os == OsFamily::Linux {
        Some(linux_facts_from(r, &fs_regions, &mut notes)?)
    } else {
        None
    };
    if has_fs(FsType::Luks) {
        notes.push("a LUKS-encrypted partition cannot be inspected without its key".into());
    }
    Ok(DiskFacts {
        size,
        table: table.kind,
        partitions,
        whole_disk_fs,
        mbr_boot_code: table.mbr_boot_code,
        mbr_boot_loader: table.mbr_boot_loader,
        bios_bootable,
        uefi_bootable,
        os,
        linux,
        notes,
    })
}

/// Natural order for kernel versions ("5.10" after "5.4").
fn version_key(v: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut num = String::new();
    let mut txt = String::new();
    for c in v.chars() {
        if c.is_ascii_digit() {
            if !txt.is_empty() {
                out.push((0, std::mem::take(&mut txt)));
            }
            num.push(c);
        } else {
            if !num.is_empty() {
                out.push((num.parse().unwrap_or(u64::MAX), String::new()));
                num.clear();
            }
            txt.push(c);
        }
    }
    if !num.is_empty() {
        out.push((num.parse().unwrap_or(u64::MAX), String::new()));
    }
    if !txt.is_empty() {
        out.push((0, txt));
    }
    out
}

fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = file.split(".ko").next()?;
    (file.len() > stem.len()).then(|| stem.replace('-', "_"))
}

const STORAGE_MODULES: &[&str] = &[
    "virtio_blk",
    "virtio_scsi",
    "virtio_pci",
    "nvme",
    "ata_piix",
    "ahci",
    "sd_mod",
    "xen_blkfront",
    "mptspi",
    "vmw_pvscsi",
    "hv_storvsc",
    "megaraid_sas",
];

fn decompress(data: &[u8]) -> std::result::Result<Vec<u8>, String> {
    // An initramfs may start with an uncompressed early-microcode archive;
    // find where the compressed main archive begins.
    let mut pos = 0;
    let listing = cpio::list(data).map_err(|e| e.to_string())?;
    if listing.unreadable.is_some() {
        // locate the first non-cpio byte after the leading archives
        pos = leading_cpio_len(data);
    }
    let rest = &data[pos..];
    let mut out = data[..pos].to_vec();
    let limit = MAX_INITRAMFS as u64;
    match cpio::compression_of(rest) {
        Some("gzip") => {
            flate2::read::MultiGzDecoder::new(rest)
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| format!("gzip: {e}"))?;
        }
        Some("zstd") => {
            let d = zstd::stream::read::Decoder::new(rest).map_err(|e| format!("zstd: {e}"))?;
            d.take(limit)
                .read_to_end(&mut out)
                .map_err(|e| format!("zstd: {e}"))?;
        }
        Some(other) => {
            return Err(format!(
                "{other}-compressed initramfs is not supported here"
            ))
        }
        None => return Ok(data.to_vec()),
    }
    Ok(out)
}

/// Length of the uncompressed cpio archives at the start of `data` (zero padding included).
fn leading_cpio_len(data: &[u8]) -> usize {
    let mut end = 0;
    let mut pos = 0;
    while pos + 110 <= data.len() {
        while pos < data.len() && data[pos] == 0 {
            pos += 1;
        }
        if pos + 110 > data.len() || !data[pos..].starts_with(b"07070") {
            break;
        }
        let field = |i: usize| {
            std::str::from_utf8(&data[pos + 6 + i * 8..pos + 14 + i * 8])
                .ok()
                .and_then(|s| usize::from_str_radix(s, 16).ok())
        };
        let (Some(fsz), Some(nsz)) = (field(6), field(11)) else {
            break;
        };
        let data_start = (110 + nsz).div_ceil(4) * 4;
        pos += (data_start + fsz).div_ceil(4) * 4;
        end = pos.min(data.len());
    }
    while end < data.len() && data[end] == 0 {
        end += 1;
    }
    end
}

/// Installed kernel modules of one version: built in, and on the root filesystem.
#[derive(Default, Clone)]
struct ModuleSets {
    builtin: BTreeSet<String>,
    rootfs: BTreeSet<String>,
}

fn presence(name: &str, sets: &ModuleSets, initrd: &Option<BTreeSet<String>>) -> DriverPresence {
    if sets.builtin.contains(name) {
        return DriverPresence::Builtin;
    }
    match initrd {
        Some(m) if m.contains(name) => DriverPresence::Initramfs,
        _ if sets.rootfs.contains(name) => DriverPresence::RootFs,
        Some(_) => DriverPresence::Missing,
        None => DriverPresence::Unknown,
    }
}

/// Run [`linux_facts`] on a helper thread and serve its reads here.
///
/// `ext4-view` needs an owned `'static` reader, while the caller lends us a
/// borrowed one; so the filesystem code runs on a scoped thread and asks this
/// thread, which keeps the borrow, for every block.
fn linux_facts_from(
    r: &mut dyn ReadAt,
    regions: &[(u64, u64, FsType)],
    notes: &mut Vec<String>,
) -> Result<LinuxFacts> {
    let (tx, rx) = mpsc::channel::<ReadRequest>();
    std::thread::scope(|s| {
        let worker = s.spawn(move || {
            let mut notes = Vec::new();
            let facts = linux_facts(tx, regions, &mut notes);
            (facts, notes)
        });
        // Ends when the worker drops its last sender.
        for (offset, len, reply) in rx {
            let mut buf = vec![0u8; len];
            let res = r.read_exact_at(offset, &mut buf).map(|_| buf);
            let _ = reply.send(res);
        }
        let (facts, n) = worker
            .join()
            .map_err(|_| BootError::Format("the filesystem reader failed unexpectedly".into()))?;
        notes.extend(n);
        Ok(facts)
    })
}

fn linux_facts(
    requests: mpsc::Sender<ReadRequest>,
    regions: &[(u64, u64, FsType)],
    notes: &mut Vec<String>,
) -> LinuxFacts {
    let mut os_name = None;
    let mut kernels: Vec<KernelFacts> = Vec::new();
    // Pass 1: collect builtin lists and boot files from every ext partition
    // (root and a separate /boot may be different partitions).
    let mut installed: Vec<(String, ModuleSets)> = Vec::new();
    let mut boot_files: Vec<(Rc<Ext4>, String, Vec<String>)> = Vec::new();
    let mut any_ext = false;
    for &(offset, len, fs) in regions {
        if !matches!(fs, FsType::Ext2 | FsType::Ext3 | FsType::Ext4) {
            if matches!(fs, FsType::Xfs | FsType::Btrfs | FsType::Lvm) {
                notes.push(format!(
                    "{fs:?} at offset {offset} cannot be read here: its drivers are not checked \
                     (virt-v2v-in-place or libguestfs can)"
                ));
            }
            continue;
        }
        any_ext = true;
        let win = Window {
            requests: requests.clone(),
            offset,
            len,
        };
        let e = match Ext4::load(Box::new(win)) {
            Ok(e) => Rc::new(e),
            Err(err) => {
                notes.push(format!(
                    "ext filesystem at offset {offset} could not be opened: {err}"
                ));
                continue;
            }
        };
        for p in ["/etc/os-release", "/usr/lib/os-release"] {
            if os_name.is_none() {
                if let Ok(t) = e.read_to_string(p) {
                    os_name = t.lines().find_map(|l| {
                        l.strip_prefix("PRETTY_NAME=")
                            .map(|v| v.trim_matches('"').to_string())
                    });
                }
            }
        }
        for base in ["/lib/modules", "/usr/lib/modules"] {
            if let Ok(rd) = e.read_dir(base) {
                for ent in rd.flatten() {
                    let ver = ent.file_name().display().to_string();
                    if ver == "." || ver == ".." {
                        continue;
                    }
                    let list = |file: &str| -> BTreeSet<String> {
                        e.read_to_string(format!("{base}/{ver}/{file}").as_str())
                            .map(|t| {
                                t.lines()
                                    .filter_map(|l| module_name(l.split(':').next().unwrap_or(l)))
                                    .collect()
                            })
                            .unwrap_or_default()
                    };
                    installed.push((
                        ver.clone(),
                        ModuleSets {
                            builtin: list("modules.builtin"),
                            rootfs: list("modules.dep"),
                        },
                    ));
                }
            }
        }
        for dir in ["/boot", "/"] {
            if let Ok(rd) = e.read_dir(dir) {
                let names: Vec<String> = rd
                    .flatten()
                    .map(|d| d.file_name().display().to_string())
                    .collect();
                if names
                    .iter()
                    .any(|n| n.starts_with("vmlinuz-") || n.starts_with("vmlinux-"))
                {
                    boot_files.push((e.clone(), dir.to_string(), names));
                }
            }
        }
    }
    for (fs, dir, names) in &boot_files {
        let mut versions: Vec<&str> = names
            .iter()
            .filter_map(|n| {
                n.strip_prefix("vmlinuz-")
                    .or_else(|| n.strip_prefix("vmlinux-"))
            })
            .collect();
        versions.sort_by_key(|v| version_key(v));
        for ver in versions {
            let candidates = [
                format!("initrd.img-{ver}"),
                format!("initramfs-{ver}.img"),
                format!("initrd-{ver}"),
                format!("initramfs-{ver}"),
            ];
            let initrd_name = candidates.iter().find(|c| names.contains(c)).cloned();
            let sets = installed
                .iter()
                .find(|(v, _)| v == ver)
                .map(|(_, s)| s.clone())
                .unwrap_or_default();
            let builtin = &sets.builtin;
            let mut note = None;
            let mut mods: Option<BTreeSet<String>> = None;
            match &initrd_name {
                None => note = Some("no initramfs found for this kernel".to_string()),
                Some(n) => {
                    let path = if dir == "/" {
                        format!("/{n}")
                    } else {
                        format!("{dir}/{n}")
                    };
                    let len = fs.metadata(path.as_str()).map(|m| m.len()).unwrap_or(0);
                    let data = if len > MAX_INITRAMFS as u64 {
                        Err(format!("{len} bytes, too large to inspect"))
                    } else {
                        fs.read(path.as_str()).map_err(|e| e.to_string())
                    };
                    match data {
                        Err(e) => note = Some(format!("{path}: {e}")),
                        Ok(data) => match decompress(&data)
                            .and_then(|d| cpio::list(&d).map_err(|e| e.to_string()))
                        {
                            Err(e) => note = Some(format!("{path}: {e}")),
                            Ok(l) => {
                                if let Some(c) = &l.unreadable {
                                    note = Some(format!("{path}: a {c} member could not be read"));
                                } else {
                                    mods = Some(
                                        l.names.iter().filter_map(|n| module_name(n)).collect(),
                                    );
                                }
                            }
                        },
                    }
                }
            }
            if builtin.is_empty() {
                let n = "modules.builtin not found: built-in drivers are unknown".to_string();
                note = Some(match note {
                    Some(p) => format!("{p}; {n}"),
                    None => n,
                });
            }
            let virtio =
                presence("virtio_blk", &sets, &mods).min(presence("virtio_pci", &sets, &mods));
            // Without modules.builtin, "missing from the initramfs" is not proof.
            let adjust = |p: DriverPresence| {
                if builtin.is_empty() && p == DriverPresence::Missing {
                    DriverPresence::Unknown
                } else {
                    p
                }
            };
            let storage_modules = mods
                .as_ref()
                .map(|m| {
                    STORAGE_MODULES
                        .iter()
                        .filter(|s| m.contains(**s))
                        .map(|s| s.to_string())
                        .collect()
                })
                .unwrap_or_default();
            kernels.push(KernelFacts {
                version: ver.to_string(),
                initramfs: initrd_name.clone(),
                initramfs_note: note,
                virtio: adjust(virtio),
                nvme: adjust(presence("nvme", &sets, &mods)),
                xen_blkfront: adjust(presence("xen_blkfront", &sets, &mods)),
                ena: adjust(presence("ena", &sets, &mods)),
                storage_modules,
            });
        }
    }
    kernels.sort_by_key(|k| version_key(&k.version));
    if any_ext && kernels.is_empty() {
        notes.push("no kernel (vmlinuz-*) found in /boot: drivers are not checked".into());
    }
    let newest = kernels.last();
    LinuxFacts {
        os_name,
        virtio: newest.map(|k| k.virtio).unwrap_or(DriverPresence::Unknown),
        nvme: newest.map(|k| k.nvme).unwrap_or(DriverPresence::Unknown),
        kernels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn versions_sort_naturally() {
        let mut v = vec!["5.10.0-1", "5.4.0-9", "6.1.0-56-amd64"];
        v.sort_by_key(|s| version_key(s));
        assert_eq!(v, ["5.4.0-9", "5.10.0-1", "6.1.0-56-amd64"]);
    }

    #[test]
    fn module_names() {
        assert_eq!(
            module_name("kernel/drivers/block/virtio_blk.ko").as_deref(),
            Some("virtio_blk")
        );
        assert_eq!(
            module_name("x/crc32c-intel.ko.zst").as_deref(),
            Some("crc32c_intel")
        );
        assert_eq!(module_name("etc/modprobe.conf"), None);
    }

    #[test]
    fn fs_magic() {
        let mut d = vec![0u8; 8192];
        d[1024 + 56] = 0x53;
        d[1024 + 57] = 0xEF;
        d[1024 + 96] = 0x40;
        assert_eq!(
            detect_fs(&mut Cursor::new(d.clone()), 0, 8192),
            FsType::Ext4
        );
        d[1024 + 96] = 0;
        d[1024 + 92] = 4;
        assert_eq!(
            detect_fs(&mut Cursor::new(d.clone()), 0, 8192),
            FsType::Ext3
        );
        let mut n = vec![0u8; 8192];
        n[3..11].copy_from_slice(b"NTFS    ");
        assert_eq!(detect_fs(&mut Cursor::new(n), 0, 8192), FsType::Ntfs);
        assert_eq!(
            detect_fs(&mut Cursor::new(vec![0u8; 100]), 0, 100),
            FsType::Unknown
        );
    }

    #[test]
    fn gzip_initramfs_after_microcode_is_listed() {
        use std::io::Write;
        let mut uc = cpio::Writer::new();
        uc.file("kernel/x86/microcode/AuthenticAMD.bin", 0o644, b"x")
            .unwrap();
        let mut data = uc.finish().unwrap();
        let mut main = cpio::Writer::new();
        main.file(
            "usr/lib/modules/6.1/kernel/drivers/block/virtio_blk.ko",
            0o644,
            b"m",
        )
        .unwrap();
        let main = main.finish().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&main).unwrap();
        data.extend_from_slice(&gz.finish().unwrap());
        let plain = decompress(&data).unwrap();
        let l = cpio::list(&plain).unwrap();
        assert!(l.unreadable.is_none());
        assert!(l.names.iter().any(|n| n.ends_with("virtio_blk.ko")));
    }

    #[test]
    fn sample_disks_show_their_driver_sets() {
        use crate::{build_sample_disk, Drivers, SampleDiskOptions};
        let dir = tempfile::tempdir().unwrap();
        for (drivers, virtio) in [
            (Drivers::All, DriverPresence::Initramfs),
            (Drivers::IdeOnly, DriverPresence::Missing),
        ] {
            let disk = dir.path().join(format!("{}.raw", drivers.name()));
            let opts = SampleDiskOptions {
                drivers,
                ..Default::default()
            };
            let made = build_sample_disk(&disk, &opts).unwrap();
            let f = inspect_path(&disk).unwrap();
            assert_eq!(f.table, TableKind::Mbr);
            assert!(f.bios_bootable && !f.uefi_bootable);
            assert_eq!(f.os, OsFamily::Linux);
            assert_eq!(f.partitions[0].filesystem, FsType::Ext4);
            let l = f.linux.unwrap();
            assert_eq!(l.kernels.len(), 1);
            assert_eq!(l.kernels[0].version, made.kernel_version);
            assert_eq!(l.virtio, virtio, "{drivers:?}");
            assert!(l.kernels[0]
                .storage_modules
                .contains(&"ata_piix".to_string()));
        }
    }

    #[test]
    fn damaged_initramfs_never_panics() {
        let mut w = cpio::Writer::new();
        w.file("a.ko", 0o644, &[1u8; 300]).unwrap();
        let mut a = w.finish().unwrap();
        a.truncate(a.len() - 400);
        a.extend_from_slice(b"\0\0\0\x0007070");
        for cut in 0..a.len() {
            let _ = decompress(&a[..cut]);
            let _ = leading_cpio_len(&a[..cut]);
        }
        let mut z = vec![0x1F, 0x8B];
        z.extend_from_slice(&[0xFF; 64]);
        assert!(decompress(&z).is_err());
    }
}
