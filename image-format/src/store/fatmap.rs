//! Direct access to the clusters of a file on a FAT32 volume, shared by both
//! FAT engines (the host's `FatStore` on `fatfs`, the board's and the
//! simulator's `FatFiles` on `lamfat`).
//!
//! Both engines walk a file's cluster chain from its first cluster on every
//! seek and move data one cluster per device request, so reading a file at
//! offset N costs O(N) FAT lookups and a 1 GiB segment read in 4 KiB
//! clusters is 262 144 requests. Here a file's chain is walked once into a
//! [`FileMap`] of contiguous runs (a freshly formatted medium gives one run
//! per file), and a read becomes one device request per run it touches.
//! The engines keep doing everything that changes metadata; callers drop a
//! file's map whenever the engine changes that file ([`MapCache`]).
//!
//! Only FAT32 is mapped ([`Geometry::parse`] returns `None` otherwise, and
//! callers use the engine). `no_std` + `alloc`: the board runs this code.
//!
//! On-disk structures read here (Microsoft FAT specification): the BPB
//! fields below; FAT32 entries (28 bits, little-endian, `>= 0x0FFF_FFF8`
//! ends a chain); 32-byte directory entries (name 0..11, attributes 11,
//! first cluster high 20..22 and low 26..28, size 28..32; attribute 0x0F
//! marks a long-name slot holding 13 UCS-2 characters at 1..11, 14..26 and
//! 28..32, its order number in byte 0, 0x40 on the last one).

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::StoreError;

/// First FAT32 entry value that ends a chain.
const END_OF_CHAIN: u32 = 0x0FFF_FFF8;
/// Bytes of the FAT read per request while walking a chain.
const FAT_WINDOW: usize = 64 * 1024;

/// Largest FAT (each copy) both engines handle: `fatfs` 0.3.6 and `lamfat`
/// 0.4.3 count FAT entries as `sectors_per_fat * bytes_per_sector * 8` in
/// 32-bit arithmetic, which overflows (a panic in debug builds) from a
/// 512 MiB FAT on. So a volume has fewer than 2^27 clusters.
pub const MAX_FAT_BYTES: u64 = (1 << 29) - 4096;

/// Whether a FAT32 boot sector describes FATs the engines can handle
/// ([`MAX_FAT_BYTES`]); checked before either engine parses the volume.
///
/// The boot sector signature and the basic BPB fields are checked first:
/// a medium that holds no FAT file system at all (random bytes, another
/// file system, the wrong path) must be told as such, not as a FAT too
/// large for the engines read from bytes that are no FAT. A FAT12/16 boot
/// sector passes (its sectors-per-FAT field is elsewhere); the engine
/// decides about it.
pub fn fat_size_supported(boot: &[u8]) -> Result<(), StoreError> {
    if boot.len() < 512 {
        return Ok(());
    }
    let not_fat = |why: String| {
        StoreError::Io(alloc::format!(
            "the medium does not hold a FAT32 file system ({why}); check that the path names \
             the medium; only a new one is made with `mgear medium format fat:PATH` \
             (formatting erases what the file or device holds)"
        ))
    };
    if boot[510] != 0x55 || boot[511] != 0xaa {
        return Err(not_fat(alloc::format!(
            "no boot sector signature 55 aa at byte 510, found {:02x} {:02x}",
            boot[510],
            boot[511]
        )));
    }
    let bps = le16(boot, 0x0b);
    let spc = boot[0x0d];
    let fats = boot[0x10];
    if !(512..=4096).contains(&bps) || !bps.is_power_of_two() {
        return Err(not_fat(alloc::format!(
            "its boot sector gives {bps} bytes per sector"
        )));
    }
    if spc == 0 || !spc.is_power_of_two() || fats == 0 {
        return Err(not_fat(alloc::format!(
            "its boot sector gives {spc} sectors per cluster and {fats} FATs"
        )));
    }
    if le16(boot, 0x16) != 0 {
        // FAT12/16 (a 16-bit FAT size): mounted, fatfs wrote directories fsck.fat deletes as
        // invalid (their `..` naming the root), and the direct paths map FAT32 only.
        return Err(StoreError::Io(String::from(
            "the medium holds a FAT12 or FAT16 file system; MotionGear media are FAT32 (what \
             it writes on FAT12/16 is not valid there): if nothing on it is needed, format it \
             with `mgear medium format fat:PATH --force` (or `mkfs.fat -F 32`), which erases it",
        )));
    }
    let fat_sectors = u64::from(le32(boot, 0x24));
    if fat_sectors * bps > MAX_FAT_BYTES {
        return Err(StoreError::Io(alloc::format!(
            "the medium's FAT is {} bytes; the FAT32 engines read at most {MAX_FAT_BYTES} \
             (a medium formatted by `mgear medium format` always fits)",
            fat_sectors * bps
        )));
    }
    // The root directory's first cluster must be a data cluster: `fatfs` subtracts 2 from it
    // unchecked (cluster 0 or 1 panicked), and one past the end read as an empty root ("no
    // MGEAR directory": the wrong medium, the user was told, not a damaged one).
    let root = le32(boot, 0x2c);
    let total = match le16(boot, 0x13) {
        0 => u64::from(le32(boot, 0x20)),
        t => t,
    };
    let meta = le16(boot, 0x0e) + u64::from(fats) * fat_sectors;
    let clusters = total.saturating_sub(meta) / u64::from(spc);
    if clusters < MIN_FAT32_CLUSTERS {
        // What `mkfs.fat -F 32` makes of a small image with large sectors or clusters (it
        // warns): every FAT reader takes the cluster count for the type, so this is FAT16
        // by the specification, and the engines refused it as "no FAT32 file system".
        // Its FAT sized for far more clusters: what `mkfs.fat` makes of a small volume with
        // large clusters (it sizes the FAT with a floor), or a volume whose size fields were
        // changed since; the second must never be told to format.
        let entries = fat_sectors * bps / 4;
        let or_changed = if fat_far_larger(entries, clusters) {
            alloc::format!(
                ". If it held captures, its boot sector's size fields may have been changed \
                 since instead (its FAT has room for {} clusters): then do not format it, \
                 restore it from another copy of the shipment",
                entries.saturating_sub(2)
            )
        } else {
            String::new()
        };
        return Err(StoreError::Io(alloc::format!(
            "the medium is formatted as FAT32 with only {clusters} clusters, and FAT32 needs at \
             least {MIN_FAT32_CLUSTERS} (with fewer, FAT readers take it for FAT16): if nothing \
             on it is needed, format it with `mgear medium format fat:PATH --force` (or \
             `mkfs.fat -F 32` with smaller clusters and 512-byte sectors), which erases it\
             {or_changed}"
        )));
    }
    if root < 2 || u64::from(root) >= clusters + 2 {
        return Err(StoreError::Damaged(alloc::format!(
            "the medium's FAT32 boot sector is damaged: its root directory starts at cluster \
             {root}, outside the volume's data clusters 2..{}; check it with `fsck.fat -n` \
             (it may repair it from the backup boot sector)",
            clusters + 2
        )));
    }
    Ok(())
}

/// A FAT with room for many more clusters than the volume has: every formatter sizes the FAT
/// for its clusters (with a little slack), so the boot sector's size fields were changed
/// since, in both copies (one copy changed is [`matches_backup`]'s). A volume halved so read
/// as sound, its other half invisible and free to the next writer.
pub fn oversized_fat(geo: &Geometry) -> Option<String> {
    let entries = geo.fat_bytes / 4;
    fat_far_larger(entries, u64::from(geo.cluster_count)).then(|| {
        format!(
            "the FAT has room for {} clusters but the boot sector (and its backup) give the \
             volume {}: every formatter sizes the FAT for its clusters, so the boot sector's \
             size fields were changed since and the volume may be larger than they say. Do not \
             write to the medium or repair it; `fsck.fat -n` of a copy, and `mgear verify \
             --identity`, say what still reads",
            entries.saturating_sub(2),
            geo.cluster_count
        )
    })
}

/// Whether a FAT of `entries` entries has room for far more than `clusters` data clusters
/// (and the two reserved entries): more than the slack any formatter leaves, the slack
/// [`plausible`] allows with the largest sector size.
fn fat_far_larger(entries: u64, clusters: u64) -> bool {
    let needed = clusters + 2;
    entries > needed + needed / 4 + 4096
}

/// The fewest clusters a FAT32 volume has (Microsoft's FAT specification: fewer is FAT16).
const MIN_FAT32_CLUSTERS: u64 = 65525;

/// The FAT32 BPB fields a boot sector and its backup copy must agree on (offset, length,
/// name): what places the FATs, the root directory and the clusters.
const BPB_FIELDS: [(usize, usize, &str); 15] = [
    (0x0b, 2, "bytes per sector"),
    (0x0d, 1, "sectors per cluster"),
    (0x0e, 2, "reserved sectors"),
    (0x10, 1, "number of FATs"),
    (0x11, 2, "root entries"),
    (0x13, 2, "total sectors (16-bit)"),
    (0x15, 1, "media type"),
    (0x16, 2, "FAT size (16-bit)"),
    (0x1c, 4, "hidden sectors"),
    (0x20, 4, "total sectors"),
    (0x24, 4, "FAT size"),
    (0x2a, 2, "version"),
    (0x2c, 4, "root directory cluster"),
    (0x30, 2, "FSInfo sector"),
    (0x32, 2, "backup boot sector"),
];

/// Byte offset of the backup copy of a FAT32 boot sector (BPB_BkBootSec,
/// 6 by every formatter), `None` when the boot sector names none usable.
pub fn backup_boot_offset(boot: &[u8]) -> Option<u64> {
    if boot.len() < 512 || le16(boot, 0x16) != 0 {
        return None;
    }
    let at = le16(boot, 0x32);
    (at != 0 && at != 0xffff && at < le16(boot, 0x0e)).then(|| at * le16(boot, 0x0b))
}

/// Reads `buf.len()` bytes of the device at a byte offset.
pub type ReadAt<'a> = dyn FnMut(u64, &mut [u8]) -> Result<(), StoreError> + 'a;

/// Check a FAT32 volume's boot sector before either engine mounts it, reading the device
/// through `read(offset, buf)`: a FAT the engines can handle ([`fat_size_supported`]), and a
/// boot sector that agrees with its backup copy ([`matches_backup`]). A boot sector without
/// its signature whose backup (sector 6) is intact is a damaged medium, not "no FAT32": it is
/// said as such, with the copy that repairs it, never with "format one".
pub fn check_boot(read: &mut ReadAt<'_>) -> Result<(), StoreError> {
    let mut head = [0u8; 512];
    read(0, &mut head)?;
    if let Err(e) = fat_size_supported(&head) {
        // Damage that makes the boot sector no FAT32 at all (its signature, a sector or
        // cluster size of 0): an intact backup says it is a damaged medium.
        if let Some((bps, sector, backup)) = intact_backup(read) {
            // What differs, not the check's own advice (a field damaged into "too few
            // clusters" carried "format it" into a message that says not to).
            let differ = disagreement(&head, &backup);
            let text = alloc::string::ToString::to_string(&e);
            let w = text
                .strip_prefix("the medium does not hold a FAT32 file system (")
                .and_then(|w| w.split_once(')'))
                .map_or(text.as_str(), |(w, _)| w);
            let w = w.split(": if nothing on it is needed").next().unwrap_or(w);
            let w = w.split("; check it with").next().unwrap_or(w);
            let w = w
                .strip_prefix("the medium's FAT32 boot sector is damaged: ")
                .unwrap_or(w);
            let why = if differ.is_empty() {
                String::from(w)
            } else {
                format!("{w}; its {} differ from the backup's", differ.join(", "))
            };
            return Err(StoreError::Damaged(format!(
                "the medium's FAT32 boot sector is damaged ({why}) and its backup copy (sector \
                 {sector}) is intact; nothing was read or written. Copy the backup over it (on \
                 an image or device M: `dd if=M of=M bs={bps} skip={sector} count=1 \
                 conv=notrunc`, after saving a copy of M's first sector) and run this again; do \
                 not format it: that destroys every capture on it"
            )));
        }
        if let Some(table) = partition_table(&head) {
            return Err(StoreError::Io(format!(
                "the medium is a whole disk that starts with {table}, not a FAT32 file system: \
                 give the partition that holds the medium's file system (a device's partition \
                 such as /dev/sdb1; of an image, `losetup --find --show --partscan IMAGE`, then \
                 fat:/dev/loopNp1); formatting the whole disk would erase its partitions"
            )));
        }
        return Err(e);
    }
    // Where the boot sector says its backup is; where every formatter puts it when the boot
    // sector's own pointer (or the reserved sectors it must lie within) is what was damaged.
    // A damaged sector-size field moves where the pointer leads: no boot sector there, the
    // backup is looked for where a 512- or 4096-byte sector puts it (the volume was said to
    // be cut short in half).
    let backup = match backup_boot_offset(&head) {
        Some(at) => {
            let mut b = [0u8; 512];
            read(at, &mut b)?;
            if b[510..512] == [0x55, 0xaa] && &b[82..90] == b"FAT32   " {
                Some(b)
            } else {
                intact_backup(read).map(|(_, _, b)| b).or(Some(b))
            }
        }
        None => intact_backup(read).map(|(_, _, b)| b),
    };
    if let Some(backup) = backup {
        // Told apart only when they disagree: a mount reads nothing more otherwise.
        if !disagreement(&head, &backup).is_empty() {
            // The copy that describes more of the volume that is there is the sound one.
            let (boot, back) = (plausible(&head, read), plausible(&backup, read));
            matches_backup(&head, &backup, boot > back, back > boot)?;
        }
    }
    Ok(())
}

/// The partition table sector 0 holds, said for a message ("an MBR partition table whose
/// partition 1 starts at sector 2048 (type 0x0c)", "a GPT partition table"), if it is one
/// and not a FAT boot sector (whose boot code overlaps the table's place).
fn partition_table(head: &[u8; 512]) -> Option<String> {
    if head[510..512] != [0x55, 0xaa] || &head[82..90] == b"FAT32   " {
        return None;
    }
    (0..4).find_map(|n| {
        let e = &head[446 + 16 * n..462 + 16 * n];
        let (boot, kind, start) = (e[0], e[4], le32(e, 8));
        // A used entry: a type, a start past the table, and a boot flag of 0 or 0x80.
        (kind != 0 && start != 0 && (boot == 0 || boot == 0x80)).then(|| {
            if kind == 0xee {
                String::from("a GPT partition table")
            } else {
                format!(
                    "an MBR partition table whose partition {} starts at sector {start} (type \
                     0x{kind:02x})",
                    n + 1
                )
            }
        })
    })
}

/// A FAT32 boot sector (of 512 or 4096 bytes, as its own bytes per sector say) that the
/// engines could mount, where a backup is: sector 6, where every formatter puts it unless
/// told otherwise, else another of the first 16 whose copy points at itself (`mkfs.fat -b 3` put it at sector 3, and a damaged boot
/// sector there was "not FAT32", `medium format` advised). Its sector size, sector and bytes.
fn intact_backup(read: &mut ReadAt<'_>) -> Option<(u64, u64, [u8; 512])> {
    let sectors = core::iter::once(6u64).chain((1..16).filter(|s| *s != 6));
    sectors
        .flat_map(|s| [(512u64, s), (4096, s)])
        .find_map(|(bps, sector)| {
            let mut b = [0u8; 512];
            (read(sector * bps, &mut b).is_ok()
                && b[510..512] == [0x55, 0xaa]
                && &b[82..90] == b"FAT32   "
                && le16(&b, 0x0b) == bps
                && (sector == 6 || le16(&b, 0x32) == sector)
                && fat_size_supported(&b).is_ok())
            .then_some((bps, sector, b))
        })
}

/// How well `boot` describes the FAT32 volume that is there: 0 not at all (sizes that do not
/// fit together, a FAT as large as its clusters need and not much larger; no FAT whose first
/// entry carries the media byte where it says; a root cluster the FAT has not allocated, or
/// that holds a subdirectory), 1 as far as can be told, 2 confirmed by a root directory entry
/// where it says. Tells which of two disagreeing copies is the damaged one.
fn plausible(boot: &[u8], read: &mut ReadAt<'_>) -> u8 {
    if boot.get(510..512) != Some(&[0x55, 0xaa][..]) {
        return 0;
    }
    let bps = le16(boot, 0x0b);
    let spc = u64::from(boot[0x0d]);
    let reserved = le16(boot, 0x0e);
    let fats = u64::from(boot[0x10]);
    let total = u64::from(le32(boot, 0x20));
    let fat_sectors = u64::from(le32(boot, 0x24));
    let root = u64::from(le32(boot, 0x2c));
    if ![512, 1024, 2048, 4096].contains(&bps)
        || spc == 0
        || !spc.is_power_of_two()
        || reserved == 0
        || !(1..=2).contains(&fats)
    {
        return 0;
    }
    let data = reserved + fats * fat_sectors;
    if total <= data {
        return 0;
    }
    let clusters = (total - data) / spc;
    let entries = fat_sectors * bps / 4;
    // Every formatter sizes the FAT for the clusters it has, with a little slack.
    if entries < clusters + 2 || entries > (clusters + 2) + (clusters + 2) / 4 + bps {
        return 0;
    }
    if root < 2 || root >= clusters + 2 {
        return 0;
    }
    let fat = reserved * bps;
    let mut first = [0u8; 8];
    let mut root_entry = [0u8; 4];
    if read(fat, &mut first).is_err() || read(fat + root * 4, &mut root_entry).is_err() {
        return 0;
    }
    let media = u64::from(boot[0x15]);
    if u64::from(le32(&first, 0) & 0x0fff_ffff) != 0x0fff_ff00 | media
        || le32(&root_entry, 0) & 0x0fff_ffff == 0
    {
        return 0;
    }
    // The root directory's first entry where this copy puts it: a subdirectory's `.` is a
    // root cluster off by a few; a name or label that reads as one confirms the copy (an
    // empty root, or one read a little off into its unused entries, confirms nothing).
    let mut entry = [0u8; 32];
    if read((data + (root - 2) * spc) * bps, &mut entry).is_err() {
        return 0;
    }
    match entry[0] {
        b'.' => 0,
        0 => 1,
        _ => {
            let attr = entry[11];
            let named = entry[..11]
                .iter()
                .all(|&b| (0x20..0x7f).contains(&b) || b >= 0x80);
            if attr == 0x0f || (attr & 0xc0 == 0 && named) {
                2
            } else {
                0
            }
        }
    }
}

/// Whether a FAT32 boot sector agrees with its backup copy on what places the
/// volume's structures ([`BPB_FIELDS`]). One damaged byte there (the reserved
/// sectors, the FAT size, the root cluster) mounted as a volume with an empty
/// root: the captures vanished without a word ("no MGEAR directory") and a new
/// capture was written into the broken volume. A backup without the boot
/// signature (a formatter that writes none) is not compared. When they disagree,
/// `boot_ok` and `backup_ok` ([`plausible`]) say which copy to repair from: the message
/// told to copy the backup over the boot sector also when the backup was the damaged one,
/// and that destroyed the good copy.
/// What a boot sector and its backup copy disagree on ([`BPB_FIELDS`], and a backup's lost
/// signature); nothing for a backup the formatter did not write (all zeros).
fn disagreement(boot: &[u8], backup: &[u8]) -> Vec<&'static str> {
    if boot.len() < 512 || backup.len() < 512 {
        return Vec::new();
    }
    // An all-zero backup is one the formatter did not write; one that lost its signature was
    // damaged (and went unnoticed: the volume then shipped without a usable backup).
    let unsigned = backup[510..512] != [0x55, 0xaa];
    if unsigned && backup[..512].iter().all(|&b| b == 0) {
        return Vec::new();
    }
    let mut differ: Vec<&str> = BPB_FIELDS
        .iter()
        .filter(|(o, n, _)| boot[*o..o + n] != backup[*o..o + n])
        .map(|(_, _, name)| *name)
        .collect();
    if unsigned {
        differ.insert(0, "boot sector signature");
    }
    differ
}

pub fn matches_backup(
    boot: &[u8],
    backup: &[u8],
    boot_ok: bool,
    backup_ok: bool,
) -> Result<(), StoreError> {
    let differ = disagreement(boot, backup);
    if differ.is_empty() {
        return Ok(());
    }
    // Where the sound copy says: a damaged sector size in the boot sector gave the `dd` a
    // block size that copied the wrong bytes.
    let sound = if !boot_ok && backup_ok { backup } else { boot };
    let sector = le16(sound, 0x32);
    let bps = le16(sound, 0x0b);
    let differ = differ.join(", ");
    // Damage found (exit 1 where it reaches a user), not a device that failed to answer.
    Err(StoreError::Damaged(match (boot_ok, backup_ok) {
        (false, true) => format!(
            "the medium's FAT32 boot sector is damaged: it and its backup copy (sector {sector}) \
             disagree on the {differ}, and only the backup describes the volume that is there; \
             nothing was read or written. A damaged boot sector hides the captures: copy the \
             backup over it (on an image or device M: `dd if=M of=M bs={bps} skip={sector} \
             count=1 conv=notrunc`, after saving a copy of M's first sector) and run this again"
        ),
        (true, false) => format!(
            "the medium's FAT32 backup boot sector (sector {sector}) is damaged: it and the boot \
             sector disagree on the {differ}, and only the boot sector describes the volume that \
             is there; nothing was read or written. Copy the boot sector over its backup (on an \
             image or device M: `dd if=M of=M bs={bps} seek={sector} count=1 conv=notrunc`, \
             after saving a copy of M's sector {sector}) and run this again"
        ),
        _ => format!(
            "the medium's FAT32 boot sector and its backup copy (sector {sector}) disagree on \
             the {differ}, and which one is damaged cannot be told; nothing was read or \
             written. Do not write to the medium or format it: restore it from another copy of \
             the shipment, or save both sectors and try each over the other on a copy of the \
             medium, with `mgear verify` after each"
        ),
    }))
}

/// Where a FAT32 volume keeps its FATs, root directory and clusters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    /// Byte offset of the first FAT.
    pub fat_offset: u64,
    /// Bytes of one FAT.
    pub fat_bytes: u64,
    /// Number of FAT copies.
    pub fats: u64,
    /// Byte offset of cluster 2.
    pub data_offset: u64,
    /// Bytes per cluster.
    pub cluster_bytes: u64,
    /// First cluster of the root directory.
    pub root_cluster: u32,
    /// Number of data clusters (valid cluster numbers are 2..cluster_count+2).
    pub cluster_count: u32,
    /// Sector of the FSInfo structure (0 when there is none).
    pub fsinfo_offset: u64,
}

fn le16(b: &[u8], o: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[o], b[o + 1]]))
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Bytes the FAT file system of boot sector `bs` says its volume spans
/// (total sectors times bytes per sector); `None` when `bs` is no FAT boot
/// sector. A medium shorter than this was cut short (a copy interrupted).
pub fn volume_bytes(bs: &[u8]) -> Option<u64> {
    if bs.len() < 512 || bs[510] != 0x55 || bs[511] != 0xaa {
        return None;
    }
    let bps = le16(bs, 0x0b);
    let total16 = le16(bs, 0x13);
    let total = if total16 != 0 {
        total16
    } else {
        u64::from(le32(bs, 0x20))
    };
    (bps >= 512 && total > 0).then(|| bps * total)
}

impl Geometry {
    /// Parse a boot sector (at least 512 bytes). `None` if it is not a
    /// FAT32 boot sector this module can map (FAT12/16 or damaged): the
    /// engine then does all the work, as before.
    pub fn parse(bs: &[u8]) -> Option<Geometry> {
        if bs.len() < 512 || bs[510] != 0x55 || bs[511] != 0xaa {
            return None;
        }
        let bps = le16(bs, 0x0b);
        let spc = u64::from(bs[0x0d]);
        let reserved = le16(bs, 0x0e);
        let fats = u64::from(bs[0x10]);
        let root_entries = le16(bs, 0x11);
        let fat16_sectors = le16(bs, 0x16);
        let total16 = le16(bs, 0x13);
        let total32 = u64::from(le32(bs, 0x20));
        let fat_sectors = u64::from(le32(bs, 0x24));
        let root_cluster = le32(bs, 0x2c);
        let fsinfo = le16(bs, 0x30);
        if !(512..=4096).contains(&bps)
            || !bps.is_power_of_two()
            || spc == 0
            || !spc.is_power_of_two()
            || fats == 0
            || root_entries != 0
            || fat16_sectors != 0
            || fat_sectors == 0
            || root_cluster < 2
        {
            return None;
        }
        let total = if total16 != 0 { total16 } else { total32 };
        let data_sector = reserved + fats * fat_sectors;
        let clusters = total.checked_sub(data_sector)? / spc;
        // The FAT must hold an entry for every cluster (plus the two reserved ones).
        let clusters = clusters.min(fat_sectors * bps / 4 - 2);
        if !(65525..=0x0FFF_FFF5).contains(&clusters) || u64::from(root_cluster) >= clusters + 2 {
            return None;
        }
        Some(Geometry {
            fat_offset: reserved * bps,
            fat_bytes: fat_sectors * bps,
            fats,
            data_offset: data_sector * bps,
            cluster_bytes: spc * bps,
            root_cluster,
            cluster_count: clusters as u32,
            fsinfo_offset: if fsinfo == 0 || fsinfo == 0xffff {
                0
            } else {
                fsinfo * bps
            },
        })
    }

    /// Byte offset of cluster `c` (>= 2).
    pub fn cluster_offset(&self, c: u32) -> u64 {
        self.data_offset + u64::from(c - 2) * self.cluster_bytes
    }

    /// Whether `c` names a data cluster.
    pub fn valid_cluster(&self, c: u32) -> bool {
        c >= 2 && c - 2 < self.cluster_count
    }
}

/// A contiguous piece of a file on the medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// First cluster of the run.
    pub cluster: u32,
    /// Clusters in the run.
    pub clusters: u32,
}

/// A file's place on the medium: its size, its directory entry and its
/// clusters as runs in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMap {
    /// File size from the directory entry.
    pub size: u64,
    /// Byte offset of the file's 32-byte short directory entry.
    pub entry_offset: u64,
    /// The cluster chain as contiguous runs.
    pub runs: Vec<Run>,
}

impl FileMap {
    /// Clusters the chain holds.
    pub fn clusters(&self) -> u64 {
        self.runs.iter().map(|r| u64::from(r.clusters)).sum()
    }

    /// Last cluster of the chain, if any.
    pub fn last_cluster(&self) -> Option<u32> {
        self.runs.last().map(|r| r.cluster + r.clusters - 1)
    }

    /// Add `c` at the end of the chain (merging with the last run when adjacent).
    pub fn push_cluster(&mut self, c: u32) {
        match self.runs.last_mut() {
            Some(r) if r.cluster + r.clusters == c => r.clusters += 1,
            _ => self.runs.push(Run {
                cluster: c,
                clusters: 1,
            }),
        }
    }

    /// The medium pieces `(byte offset, length)` holding file bytes
    /// `[offset, offset + len)`, in order; `offset + len` must lie within the
    /// chain. Adjacent runs come out as one piece.
    pub fn pieces(&self, geo: &Geometry, offset: u64, len: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let (mut pos, end) = (offset, offset + len);
        let mut run_start = 0u64;
        for r in &self.runs {
            let run_len = u64::from(r.clusters) * geo.cluster_bytes;
            let run_end = run_start + run_len;
            if pos < run_end && pos < end {
                let within = pos - run_start;
                let n = (run_end - pos).min(end - pos);
                let at = geo.cluster_offset(r.cluster) + within;
                match out.last_mut() {
                    Some((o, l)) if *o + *l == at => *l += n,
                    _ => out.push((at, n)),
                }
                pos += n;
            }
            if pos >= end {
                break;
            }
            run_start = run_end;
        }
        out
    }

    /// Read file bytes at `offset` into `buf` (stopping at the file's end):
    /// one `read(medium offset, buf)` per contiguous piece.
    pub fn read<R>(
        &self,
        geo: &Geometry,
        read: &mut R,
        path: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, StoreError>
    where
        R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
    {
        if offset >= self.size {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.size - offset);
        if offset + want > self.clusters() * geo.cluster_bytes {
            return Err(damaged(path, "its cluster chain is shorter than its size"));
        }
        let mut done = 0usize;
        for (at, n) in self.pieces(geo, offset, want) {
            let n = n as usize;
            read(at, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(done)
    }
}

fn damaged(path: &str, what: &str) -> StoreError {
    StoreError::Damaged(format!(
        "{path}: the FAT32 file system is damaged ({what}); check it with `fsck.fat -n`"
    ))
}

/// A cluster's entry in the first FAT, read through a window of it that is read again only
/// for an entry outside it (a chain's clusters mostly follow one another).
struct FatEntries {
    window: Vec<u8>,
    /// FAT byte range the window holds: [start, start + len).
    start: u64,
    len: usize,
}

impl FatEntries {
    fn new() -> Self {
        FatEntries {
            window: vec![0u8; FAT_WINDOW],
            start: 0,
            len: 0,
        }
    }

    /// Cluster `c`'s entry (its 28 bits).
    fn get<R>(&mut self, geo: &Geometry, read: &mut R, c: u32) -> Result<u32, StoreError>
    where
        R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
    {
        let at = u64::from(c) * 4;
        if at < self.start || at + 4 > self.start + self.len as u64 {
            self.start = at / 512 * 512;
            self.len = (geo.fat_bytes - self.start).min(FAT_WINDOW as u64) as usize;
            read(geo.fat_offset + self.start, &mut self.window[..self.len])?;
        }
        Ok(le32(&self.window, (at - self.start) as usize) & 0x0FFF_FFFF)
    }
}

/// Walk the chain starting at `first` into runs, stopping after `limit`
/// clusters (a file needs no more than its size covers).
pub fn chain<R>(
    geo: &Geometry,
    read: &mut R,
    path: &str,
    first: u32,
    limit: u64,
) -> Result<Vec<Run>, StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
{
    let mut map = FileMap {
        size: 0,
        entry_offset: 0,
        runs: Vec::new(),
    };
    if first == 0 || limit == 0 {
        return Ok(map.runs);
    }
    let mut fat = FatEntries::new();
    let mut c = first;
    let mut count = 0u64;
    loop {
        if c == 0 {
            // What a free cut off between the FAT and the entry leaves (the open for writing
            // of a volume left mid-write puts it right); fsck: "contains a free cluster".
            return Err(damaged(
                path,
                "a cluster chain reaches a cluster marked free",
            ));
        }
        if !geo.valid_cluster(c) {
            return Err(damaged(path, "a cluster chain points outside the volume"));
        }
        map.push_cluster(c);
        count += 1;
        if count >= limit {
            break;
        }
        if count > u64::from(geo.cluster_count) {
            return Err(damaged(path, "a cluster chain loops"));
        }
        let next = fat.get(geo, read, c)?;
        if next >= END_OF_CHAIN {
            break;
        }
        c = next;
    }
    Ok(map.runs)
}

/// Most clusters a directory may take: a FAT32 directory holds at most
/// 65536 entries of 32 bytes.
fn dir_limit(geo: &Geometry) -> u64 {
    (65536 * 32u64).div_ceil(geo.cluster_bytes)
}

/// The clusters of the directory starting at `first`, refused when its
/// chain is longer than a directory can be: a chain that loops back on
/// itself would keep an engine reading the same entries for ever.
fn dir_chain<R>(
    geo: &Geometry,
    read: &mut R,
    path: &str,
    first: u32,
) -> Result<Vec<Run>, StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
{
    let limit = dir_limit(geo);
    let runs = chain(geo, read, path, first, limit + 1)?;
    let clusters: u64 = runs.iter().map(|r| u64::from(r.clusters)).sum();
    if clusters > limit {
        return Err(damaged(
            path,
            "a directory's cluster chain is longer than a directory can be: it loops",
        ));
    }
    Ok(runs)
}

/// Check the directory `dir` and those above it (each that exists) before
/// an engine walks them: `fatfs` and `lamfat` follow a directory's chain
/// until an end-of-directory entry, so a looping chain without one hangs
/// them (and `fatfs` listing it fills memory). `sound` maps the
/// directories already checked (upper-case paths, "" for the root) to their
/// first cluster: the engines only ever make sound chains, so each
/// directory is read here once while its map is kept (drop it when an engine
/// removes or renames something).
pub fn check_dirs<R>(
    geo: &Geometry,
    read: &mut R,
    dir: &str,
    sound: &mut alloc::collections::BTreeMap<String, u32>,
) -> Result<(), StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
{
    if !sound.contains_key("") {
        dir_chain(geo, read, "the root directory", geo.root_cluster)?;
        sound.insert(String::new(), geo.root_cluster);
    }
    let (mut at, mut cluster) = (String::new(), geo.root_cluster);
    // The directories on the way, by first cluster: a directory that is one of them again (a
    // damaged `.` entry read as a subdirectory, an entry pointing at its parent) is a loop,
    // and every walk of the tree went down it without end, holding memory until it was
    // killed.
    let mut on_path = alloc::vec![geo.root_cluster];
    for name in dir.split('/').filter(|p| !p.is_empty()) {
        let parent = cluster;
        if !at.is_empty() {
            at.push('/');
        }
        at.push_str(&name.to_ascii_uppercase());
        if let Some(&c) = sound.get(&at) {
            cluster = c;
        } else {
            let bytes = read_dir(geo, read, dir, parent)?;
            cluster = match find(&bytes, name) {
                Some(f) if f.is_dir && f.first == 0 => geo.root_cluster,
                Some(f) if f.is_dir => f.first,
                // A name `fatfs` read with bytes that are no character (a damaged entry, such
                // as a `.` entry one bit off): it cannot be told from here where it leads, and
                // a walk down it went round the directory it lies in without end.
                None if name.contains('\u{fffd}') => {
                    return Err(StoreError::Damaged(alloc::format!(
                        "directory {at}: its name does not read as a name (a damaged directory \
                         entry, which no MotionGear writer or mkfs makes)"
                    )))
                }
                _ => return Ok(()),
            };
            if !on_path.contains(&cluster) {
                dir_chain(geo, read, dir, cluster)?;
                sound.insert(at.clone(), cluster);
            }
        }
        if on_path.contains(&cluster) {
            return Err(StoreError::Damaged(alloc::format!(
                "directory {at} is one of the directories it lies in (cluster {cluster}): a \
                 directory loop, which no MotionGear writer or mkfs makes"
            )));
        }
        on_path.push(cluster);
    }
    Ok(())
}

/// Read all of a directory's clusters.
fn read_dir<R>(geo: &Geometry, read: &mut R, path: &str, first: u32) -> Result<Vec<u8>, StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
{
    read_dir_mapped(geo, read, path, first).map(|(_, bytes)| bytes)
}

/// [`read_dir`], with the directory's map (where each of its bytes lies on the device).
fn read_dir_mapped<R>(
    geo: &Geometry,
    read: &mut R,
    path: &str,
    first: u32,
) -> Result<(FileMap, Vec<u8>), StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
{
    let runs = dir_chain(geo, read, path, first)?;
    let map = FileMap {
        size: 0,
        entry_offset: 0,
        runs,
    };
    let len = map.clusters() * geo.cluster_bytes;
    let mut buf = vec![0u8; len as usize];
    let mut done = 0usize;
    for (at, n) in map.pieces(geo, 0, len) {
        read(at, &mut buf[done..done + n as usize])?;
        done += n as usize;
    }
    Ok((map, buf))
}

/// An entry found in a directory.
struct Found {
    is_dir: bool,
    first: u32,
    size: u64,
    /// Offset of the short entry within the directory's bytes.
    at: usize,
}

/// Short-name checksum a long name's slots carry.
fn short_checksum(name: &[u8]) -> u8 {
    name.iter()
        .fold(0u8, |s, &c| s.rotate_right(1).wrapping_add(c))
}

/// The short name `NAME.EXT` of an entry, as the engines show it.
fn short_name(e: &[u8]) -> String {
    // Printable ASCII as is, any other byte as `\xNN`: a damaged entry is named by what it
    // holds (its name bytes were dropped whole, and the walk said `.FGH`), and an escaped
    // name (`\` is no FAT name byte) never matches a name the format looks for. 0x05
    // stands for a leading 0xE5 byte; neither is ASCII, so no match either.
    fn part(b: &[u8]) -> String {
        let end = b.iter().rposition(|&c| c != b' ').map_or(0, |i| i + 1);
        b[..end]
            .iter()
            .map(|&c| match c {
                0x20..=0x7e => String::from(c as char),
                _ => format!("\\x{c:02x}"),
            })
            .collect()
    }
    let (base, ext) = (part(&e[..8]), part(&e[8..11]));
    let mut s = base;
    if !ext.is_empty() {
        s.push('.');
        s.push_str(&ext);
    }
    s
}

/// Find `name` (ASCII, case-insensitive, long or short name) in directory bytes.
fn find(dir: &[u8], name: &str) -> Option<Found> {
    let mut hit = None;
    each_entry(dir, |long, short, f| {
        let long_matches = long.is_some_and(|units| {
            units.len() == name.len()
                && units
                    .iter()
                    .zip(name.bytes())
                    .all(|(&u, b)| u < 0x80 && (u as u8).eq_ignore_ascii_case(&b))
        });
        if long_matches || short.eq_ignore_ascii_case(name) {
            hit = Some(f);
            return true;
        }
        false
    });
    hit
}

/// Calls `visit` with each entry of directory bytes `dir` (not the volume label, not deleted
/// ones) until it returns true: its long name's UTF-16 units when it has a valid one, its
/// short name, and where it points.
fn each_entry(dir: &[u8], mut visit: impl FnMut(Option<&[u16]>, &str, Found) -> bool) {
    let mut lfn: Vec<u16> = Vec::new();
    let mut lfn_sum: Option<u8> = None;
    for (i, e) in dir.chunks_exact(32).enumerate() {
        match e[0] {
            0x00 => return,
            0xe5 => {
                lfn_sum = None;
                continue;
            }
            _ => {}
        }
        let attr = e[11];
        if attr & 0x3f == 0x0f {
            let ord = usize::from(e[0] & 0x1f);
            if ord == 0 {
                lfn_sum = None;
                continue;
            }
            if e[0] & 0x40 != 0 {
                lfn = vec![0xffff; ord * 13];
                lfn_sum = Some(e[13]);
            }
            if lfn_sum != Some(e[13]) || ord * 13 > lfn.len() {
                lfn_sum = None;
                continue;
            }
            let units = (1..11)
                .step_by(2)
                .chain((14..26).step_by(2))
                .chain((28..32).step_by(2));
            for (k, o) in units.enumerate() {
                lfn[(ord - 1) * 13 + k] = u16::from_le_bytes([e[o], e[o + 1]]);
            }
            continue;
        }
        let long = lfn_sum.take().filter(|&s| s == short_checksum(&e[..11]));
        if attr & 0x08 != 0 {
            // Volume label.
            continue;
        }
        let units: Option<Vec<u16>> = long.map(|_| {
            lfn.iter()
                .copied()
                .take_while(|&u| u != 0 && u != 0xffff)
                .collect()
        });
        let first = ((le16(e, 20) << 16) | le16(e, 26)) as u32;
        let found = Found {
            is_dir: attr & 0x10 != 0,
            first,
            size: u64::from(le32(e, 28)),
            at: i * 32,
        };
        if visit(units.as_deref(), &short_name(e), found) {
            return;
        }
    }
}

/// What [`chain_findings`] says of a chain that goes on past its file's size into clusters
/// no file holds: what a write cut between taking clusters and recording the size leaves,
/// lost space that `fsck.fat -a` (and `mgear medium fsck --repair`) frees safely. Every other
/// finding of it is damage that a repair makes worse.
pub const LEFTOVER_CHAIN: &str = "into clusters no file holds";

/// Where a file's chain goes after the clusters its size covers.
enum After {
    /// It ends there (or the file ends before its size is covered: said where it is read).
    End,
    /// On through these clusters, to an end mark or a cluster marked free (a cut write's
    /// leftover, unless a file holds one of them), or `out` of the volume, or round a loop.
    Tail {
        start: u32,
        clusters: Vec<u32>,
        out: bool,
    },
    /// Its last cluster is marked free.
    Free(u32),
    /// It ends before its size is covered (an end mark), or reaches a cluster marked free
    /// (`free`, not among the runs): how a cut free leaves a chain.
    Short { free: bool },
}

/// The first `need` clusters of the chain from `first` as runs, and where the chain goes
/// after them, or as far as it goes when it ends early ([`After::Short`]). `None` where it
/// loops or leaves the volume before `need` clusters: damage the file's reader meets and
/// says.
fn walk_file<R>(
    geo: &Geometry,
    read: &mut R,
    first: u32,
    need: u64,
) -> Result<Option<(Vec<Run>, After)>, StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
{
    let mut map = FileMap {
        size: 0,
        entry_offset: 0,
        runs: Vec::new(),
    };
    let mut fat = FatEntries::new();
    let mut c = first;
    let mut count = 0u64;
    loop {
        if !geo.valid_cluster(c) || count > u64::from(geo.cluster_count) {
            return Ok(None);
        }
        map.push_cluster(c);
        count += 1;
        let next = fat.get(geo, read, c)?;
        if count == need {
            let after = match next {
                n if n >= END_OF_CHAIN => After::End,
                0 => After::Free(c),
                // Followed to its end: a tail that runs through free clusters first and then
                // into a file was told as a cut write's leftover, and repaired (cut) with it.
                mut n => {
                    let start = n;
                    let mut clusters = Vec::new();
                    let mut out = false;
                    while n != 0 && n < END_OF_CHAIN {
                        if !geo.valid_cluster(n) {
                            out = true;
                            break;
                        }
                        clusters.push(n);
                        if clusters.len() as u64 > u64::from(geo.cluster_count) {
                            break;
                        }
                        n = fat.get(geo, read, n)?;
                    }
                    After::Tail {
                        start,
                        clusters,
                        out,
                    }
                }
            };
            return Ok(Some((map.runs, after)));
        }
        if next >= END_OF_CHAIN || next == 0 {
            return Ok(Some((map.runs, After::Short { free: next == 0 })));
        }
        c = next;
    }
}

/// `runs` without their last cluster.
fn without_last(runs: &[Run]) -> Vec<Run> {
    let mut kept = FileMap {
        size: 0,
        entry_offset: 0,
        runs: Vec::new(),
    };
    let n = runs.iter().map(|r| u64::from(r.clusters)).sum::<u64>();
    for c in runs
        .iter()
        .flat_map(|r| r.cluster..r.cluster + r.clusters)
        .take(n.saturating_sub(1) as usize)
    {
        kept.push_cluster(c);
    }
    kept.runs
}

/// A file whose chain stops short of its size: how a cut free leaves it (`fatfs` frees a
/// truncated or removed file's clusters before it writes the entry's new size or removes it).
struct Broken {
    /// Device offset of its 32-byte short entry.
    entry: u64,
    /// The clusters its chain still holds, before the end mark or the free cluster.
    kept: Vec<Run>,
    path: String,
    /// Its chain ends before its size is covered (else: its last cluster is marked free).
    short: bool,
    /// It ends at an end mark (not at a free cluster): what a truncation leaves, which
    /// nothing does to a finished generation's file.
    end_mark: bool,
}

/// Offsets, in the directory's bytes `dir`, of the slots of the entry whose short slot is at
/// `at`: its long-name slots (just before it, with its checksum) and itself.
fn entry_slots(dir: &[u8], at: usize) -> Vec<usize> {
    let sum = short_checksum(&dir[at..at + 11]);
    let mut slots = vec![at];
    let mut o = at;
    while o >= 32 {
        o -= 32;
        let e = &dir[o..o + 32];
        if e[0] == 0xe5 || e[11] & 0x3f != 0x0f || e[13] != sum {
            break;
        }
        slots.push(o);
        if e[0] & 0x40 != 0 {
            break;
        }
    }
    slots
}

/// Every chain of the volume as the directory entries hold it, from [`walk_chains`].
struct Chains {
    /// Claimed runs of clusters: first cluster -> (end, whose).
    held: alloc::collections::BTreeMap<u32, (u64, String)>,
    /// Damage met on the way (clusters two entries hold, directory loops).
    findings: Vec<String>,
    /// Entries that share clusters, as told in `findings` (a file with itself: a loop).
    shared: alloc::collections::BTreeSet<(String, String)>,
    /// Each file's path, the last cluster its size covers (`None` for size 0) and where its
    /// chain goes after it.
    after: Vec<(String, Option<u32>, After)>,
    /// Directories put right on the way ([`fix_dir_head`]).
    dirs_fixed: u64,
    /// Files whose chain ends (or reaches a free cluster) before their size is covered.
    broken: Vec<Broken>,
    /// Directories whose first cluster the FAT marks free and which hold nothing (a removal
    /// cut off after it freed them): the device offsets of their entry's slots.
    stale_dirs: Vec<(String, Vec<u64>)>,
    /// A directory or file chain was not followed to the clusters its entry needs (it left
    /// the volume, looped or ended early): damage the reader of that entry says. The first
    /// such, as the reader would say it.
    partial: Option<String>,
}

/// Walk every directory and file chain from the root (see [`chain_findings`]). With `fix`,
/// each directory below the root is put right before its entries are read where a cut
/// write left it half made ([`fix_dir_head`]), and `dirs_fixed` counts them.
fn walk_chains<R, W>(
    geo: &Geometry,
    read: &mut R,
    mut fix: Option<&mut W>,
) -> Result<Chains, StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
    W: FnMut(u64, &[u8]) -> Result<(), StoreError>,
{
    let mut dirs_fixed = 0u64;
    let mut broken = Vec::new();
    let mut stale_dirs = Vec::new();
    let mut fat = FatEntries::new();
    // Claimed runs of clusters: first cluster -> (end, whose).
    let mut runs_held: alloc::collections::BTreeMap<u32, (u64, String)> =
        alloc::collections::BTreeMap::new();
    let mut findings = Vec::new();
    // Files that share clusters: named once per pair (a file with itself: a loop).
    let mut shared: alloc::collections::BTreeSet<(String, String)> =
        alloc::collections::BTreeSet::new();
    let mut claim = |runs: &[Run], path: &str, findings: &mut Vec<String>| {
        for r in runs {
            let (a, b) = (r.cluster, u64::from(r.cluster) + u64::from(r.clusters));
            let before = runs_held.range(..=a).next_back();
            let within = runs_held.range(a..).take_while(|(&s, _)| u64::from(s) < b);
            let hit = before
                .filter(|(_, (end, _))| *end > u64::from(a))
                .into_iter()
                .chain(within)
                .next()
                .map(|(&s, (_, who))| (s.max(a), who.clone()));
            if let Some((c, other)) = hit {
                if shared.insert((other.clone(), String::from(path))) {
                    findings.push(match other == path {
                        true => format!(
                            "{path}: its cluster chain comes back to its own cluster {c} within \
                             its size, so it does not read as written. Do not repair the \
                             medium; check the captures with `mgear verify --identity`"
                        ),
                        false => format!(
                            "{path} and {other} share cluster {c}: one of them does not read as \
                             written, and a write to either damages the other. Do not repair the \
                             medium (`fsck.fat -a` or `mgear medium fsck --repair` cut one of \
                             them); check the captures with `mgear verify --identity`"
                        ),
                    });
                }
            }
            runs_held.entry(a).or_insert((b, String::from(path)));
        }
    };
    let mut after: Vec<(String, Option<u32>, After)> = Vec::new();
    // Damage a directory walk meets (a chain out of the volume, a directory that loops) is
    // said where the directory is read; here it only ends the walk of that directory.
    let mut partial: Option<String> = None;
    let mut said = |r: Result<Vec<Run>, StoreError>| match r {
        Err(StoreError::Damaged(what)) => {
            partial.get_or_insert(what);
            Ok(None)
        }
        other => other.map(Some),
    };
    let Some(root) = said(dir_chain(geo, read, "the root directory", geo.root_cluster))? else {
        return Ok(Chains {
            held: runs_held,
            findings,
            shared,
            after: Vec::new(),
            dirs_fixed,
            broken,
            stale_dirs: Vec::new(),
            partial: Some(String::from("the root directory's chain is damaged")),
        });
    };
    claim(&root, "/", &mut findings);
    let mut dirs: Vec<(String, u32)> = vec![(String::new(), geo.root_cluster)];
    // Directories walked, by first cluster (and the path first found there): a damaged `.`
    // entry, or an entry pointing at a directory above it, made this walk go round the loop
    // for ever, holding memory until the process was killed.
    let mut walked: alloc::collections::BTreeMap<u32, String> = alloc::collections::BTreeMap::new();
    walked.insert(geo.root_cluster, String::from("/"));
    while let Some((dir, first)) = dirs.pop() {
        let name = if dir.is_empty() { "/" } else { &dir };
        let (dir_map, bytes) = match read_dir_mapped(geo, read, name, first) {
            Err(StoreError::Damaged(what)) => {
                said(Err(StoreError::Damaged(what)))?;
                continue;
            }
            other => other?,
        };
        let mut found = Vec::new();
        let mut shorts: Vec<String> = Vec::new();
        each_entry(&bytes, |long, short, f| {
            let name = match long {
                Some(u) => alloc::string::String::from_utf16_lossy(u),
                None => String::from(short),
            };
            if name != "." && name != ".." {
                found.push((name, f));
                shorts.push(short.to_ascii_uppercase());
            }
            false
        });
        // Two entries under one short name: which one a reader opens depends on the tool
        // (the first, the last, the one its long name matches), so what is read is not what
        // was checked. No writer makes it; a damaged or hand-edited directory does.
        shorts.sort_unstable();
        for pair in shorts.windows(2) {
            if pair[0] == pair[1] && !pair[0].is_empty() {
                findings.push(format!(
                    "{name}: two entries share the short name {}: which one a tool opens \
                     differs, so what is read may not be what was checked. Do not write to the \
                     medium; check the captures with `mgear verify --identity`",
                    pair[0]
                ));
            }
        }
        for (name, mut f) in found {
            let path = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            if f.is_dir && f.size != 0 {
                // A directory's entry has size 0 (FAT32 spec); this one kept a file's: its
                // attribute byte was damaged. Walked as what it is, a file: read as a
                // directory its bytes are bogus entries, and a repair taking it for a
                // half-made directory ([`fix_dir_head`]) would zero its clusters.
                findings.push(format!(
                    "{path}: its entry marks it a directory but keeps a file's size ({} \
                     bytes): its attribute byte is damaged, and tools read the file as a \
                     directory. Do not repair or write the medium; check the captures with \
                     `mgear verify --identity`",
                    f.size
                ));
                f.is_dir = false;
            }
            if f.first == 0 {
                continue;
            }
            if f.is_dir && geo.valid_cluster(f.first) && fat.get(geo, read, f.first)? == 0 {
                // Its first cluster marked free: a removal cut off between freeing the
                // directory's clusters and dropping its entry (both engines free first),
                // when it holds nothing (a directory is removed once empty).
                let mut head = vec![0u8; geo.cluster_bytes as usize];
                read(geo.cluster_offset(f.first), &mut head)?;
                let mut holds = false;
                each_entry(&head, |long, short, _| {
                    let name = long.map_or(String::from(short), String::from_utf16_lossy);
                    holds |= name != "." && name != "..";
                    holds
                });
                let slots: Option<Vec<u64>> = entry_slots(&bytes, f.at)
                    .into_iter()
                    .map(|o| match dir_map.pieces(geo, o as u64, 32).first() {
                        Some(&(at, 32)) => Some(at),
                        _ => None,
                    })
                    .collect();
                match (holds, slots) {
                    (false, Some(slots)) => stale_dirs.push((path, slots)),
                    _ => {
                        said(Err(damaged(
                            &path,
                            "a directory on a cluster the FAT marks free, holding entries",
                        )))?;
                    }
                }
                continue;
            }
            if f.is_dir {
                if let Some(first_seen) = walked.get(&f.first) {
                    findings.push(format!(
                        "{path}: a directory entry that leads back to the directory {first_seen} \
                         (cluster {}): a directory loop, which no MotionGear writer or mkfs \
                         makes. Do not write to the medium; check the captures with `mgear \
                         verify --identity`",
                        f.first
                    ));
                    continue;
                }
                walked.insert(f.first, path.clone());
                let Some(runs) = said(dir_chain(geo, read, &path, f.first))? else {
                    continue;
                };
                claim(&runs, &path, &mut findings);
                let parent = if dir.is_empty() { 0 } else { first };
                if let Some(w) = fix.as_deref_mut() {
                    dirs_fixed += u64::from(fix_dir_head(geo, read, w, &runs, f.first, parent)?);
                }
                dirs.push((path, f.first));
                continue;
            }
            // A file of size 0 that holds a cluster is one cluster past its size.
            let need = f.size.div_ceil(geo.cluster_bytes).max(1);
            let Some((own, next)) = walk_file(geo, read, f.first, need)? else {
                said(Err(damaged(
                    &path,
                    "its cluster chain, within its size, leads to no cluster of the volume (a \
                     value out of range, reserved, or a bad-cluster mark) or loops",
                )))?;
                continue;
            };
            // A chain short of its size, or whose last cluster is marked free: a cut free
            // (of a file of one cluster, or one whose last cluster the cut reached first).
            let kept = match next {
                After::Short { free: false } => Some(own.clone()),
                After::Short { free: true } | After::Free(_) => Some(without_last(&own)),
                _ => None,
            };
            if let (Some(kept), Some(&(entry, 32))) =
                (kept, dir_map.pieces(geo, f.at as u64, 32).first())
            {
                if !matches!(next, After::Free(_)) {
                    claim(&kept, &path, &mut findings);
                    broken.push(Broken {
                        entry,
                        kept,
                        path,
                        short: true,
                        end_mark: matches!(next, After::Short { free: false }),
                    });
                    continue;
                }
                broken.push(Broken {
                    entry,
                    kept,
                    path: path.clone(),
                    short: false,
                    end_mark: false,
                });
            }
            let last = own.last().map(|r| r.cluster + r.clusters - 1);
            // A file of size 0 that holds a cluster: all its chain is past its size.
            let next = match (f.size, next) {
                (0, After::End) => After::Tail {
                    start: f.first,
                    clusters: own.iter().map(|r| r.cluster).collect(),
                    out: false,
                },
                (_, n) => n,
            };
            if f.size > 0 {
                claim(&own, &path, &mut findings);
            }
            after.push((path, last.filter(|_| f.size > 0), next));
        }
    }
    Ok(Chains {
        held: runs_held,
        findings,
        shared,
        after,
        dirs_fixed,
        broken,
        stale_dirs,
        partial,
    })
}

/// The cluster chains of every file and directory of the volume against the sizes their
/// entries give: a file whose chain runs past its size (into another file's clusters, or
/// back into its own: reads stop at the size, so every file still reads right, but a later
/// write or removal frees or overwrites what the chain runs into, and so does `fsck.fat -a`,
/// which cuts the chain and frees what follows), a last cluster the FAT marks free (the next
/// file written takes it), clusters two entries both hold, and a chain past its size into
/// clusters nobody holds ([`LEFTOVER_CHAIN`]: what a cut write leaves). Each as a finding;
/// `fsck.fat -n` sees the same ("cluster chain length is >", "shares clusters", "contains a
/// free cluster").
///
/// `cut_leaves`: the volume was left mid-write (its dirty mark set), so a chain past its size
/// into clusters nobody holds is what the cut write left. Closed cleanly, no write leaves
/// that: it is an entry whose size was made smaller, and the clusters past it hold the rest
/// of the file (verify had said "a repair frees it", and the repair cut a finished segment
/// for good).
///
/// With the findings, the chains nothing holds ([`lost_chains`]) read from the same walk.
pub fn chain_findings<R>(
    geo: &Geometry,
    read: &mut R,
    cut_leaves: bool,
) -> Result<(Vec<String>, Lost), StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
{
    let chains = walk_chains::<R, NoWrite>(geo, read, None)?;
    let lost = lost_in(geo, read, &chains)?;
    Ok((findings_of(chains, cut_leaves), lost))
}

/// [`chain_findings`], and the damage a reader of the file meets and says but a writer must
/// not write on top of: a chain that leaves the volume, loops or ends before its entry's
/// size is covered. On a volume not left mid-write (where [`reclaim`] cut what a cut leaves)
/// no write makes that; a capture of another name went on over it, exit 0, and the medium
/// failed `fsck.fat -n` at the target.
pub fn writer_findings<R>(
    geo: &Geometry,
    read: &mut R,
    cut_leaves: bool,
) -> Result<(Vec<String>, Lost), StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
{
    let chains = walk_chains::<R, NoWrite>(geo, read, None)?;
    let lost = lost_in(geo, read, &chains)?;
    let mut more = Vec::new();
    if let Some(why) = &chains.partial {
        more.push(format!("{why} (no run that was cut off leaves that)"));
    }
    for b in chains.broken.iter().filter(|b| b.short) {
        let held: u64 = b.kept.iter().map(|r| u64::from(r.clusters)).sum();
        more.push(format!(
            "{}: its cluster chain ends after {held} cluster(s), before its size is covered: \
             it does not read as written, and no write leaves that on a medium closed \
             cleanly. Do not write to the medium; check the captures with `mgear verify \
             --identity`",
            b.path
        ));
    }
    let mut findings = findings_of(chains, cut_leaves);
    findings.extend(more);
    Ok((findings, lost))
}

/// Whether `path` is a file of a finished generation: its directory holds a MANIFEST with
/// clusters (written when the generation finished, after every other file of it), and it is
/// neither that MANIFEST (a cut write of it is a generation not finished) nor the COMMIT a
/// signature is added to later. Nothing appends to such a file again, so its chain past its
/// size is damage (its entry made smaller, the rest of the file beyond), never what a cut
/// write leaves: on a medium left mid-write it was cut for good, "freed" as a leftover.
fn of_finished_generation(chains: &Chains, path: &str) -> bool {
    let Some((dir, name)) = path.rsplit_once('/') else {
        return false;
    };
    if name == "MANIFEST" || name.starts_with("COMMIT") {
        return false;
    }
    let manifest = format!("{dir}/MANIFEST");
    chains.held.values().any(|(_, who)| *who == manifest)
}

/// Said of a finished generation's file whose chain runs past its size.
const FINISHED_PAST_SIZE: &str = "its cluster chain runs past its size, and it is a file of a \
     finished generation (its directory holds the MANIFEST written last), which nothing writes \
     again: its size in its directory entry was made smaller, and the clusters past it hold the \
     rest of the file. Do not repair or write the medium (a repair cuts the chain at the size \
     and frees them for good); check the captures with `mgear verify --identity`, which names \
     what reads short";

/// What [`chain_findings`] says of a walk.
fn findings_of(chains: Chains, cut_leaves: bool) -> Vec<String> {
    let finished: alloc::collections::BTreeSet<String> = chains
        .after
        .iter()
        .filter(|(p, _, next)| {
            matches!(next, After::Tail { .. }) && of_finished_generation(&chains, p)
        })
        .map(|(p, _, _)| p.clone())
        .collect();
    let Chains {
        held: runs_held,
        mut findings,
        after,
        shared,
        ..
    } = chains;
    let owner = |c: u32| {
        runs_held
            .range(..=c)
            .next_back()
            .filter(|(_, (end, _))| *end > u64::from(c))
            .map(|(_, (_, who))| who.clone())
    };
    for (path, last, next) in after {
        match next {
            After::End | After::Short { .. } => {}
            After::Free(c) => findings.push(format!(
                "{path}: the FAT marks its last cluster {c} free: it still reads right, but the \
                 next file written on this medium may take that cluster and overwrite it. Do \
                 not write to the medium; copy its files to a freshly formatted one (`mcopy \
                 -s`) to use it again"
            )),
            After::Tail {
                start: first,
                clusters,
                out,
            } => {
                let hit = clusters.iter().find_map(|&c| owner(c).map(|who| (c, who)));
                match hit {
                    // Already told as a loop within its size.
                    Some((_, who))
                        if who == path && shared.contains(&(path.clone(), path.clone())) => {}
                    Some((c, who)) if who == path => findings.push(format!(
                        "{path}: its cluster chain runs past its size back into its own cluster \
                         {c} (it loops). It still reads right (reads stop at its size), but \
                         removing it would not end; `fsck.fat -a` on a copy cuts the chain at \
                         the size"
                    )),
                    Some((c, who)) => findings.push(format!(
                        "{path}: its cluster chain runs past its size into cluster {c} of {who}. \
                         It still reads right (reads stop at its size), but removing or writing \
                         it frees or overwrites {who}'s data, and so does a repair (`fsck.fat -a` \
                         and `mgear medium fsck --repair` cut the chain and free what follows). \
                         Do not repair or write the medium: ingest reads it as it is; to use it \
                         again, copy its files to a freshly formatted one (`mcopy -s`)"
                    )),
                    None if out => findings.push(format!(
                        "{path}: its cluster chain runs past its size and then out of the volume \
                         (from cluster {first}): no write leaves that. It still reads right \
                         (reads stop at its size); do not write the medium, and check the \
                         captures with `mgear verify --identity`"
                    )),
                    // Size 0 with a chain: no write leaves that, and a directory whose entry
                    // lost its directory mark looks so. "Repair frees it" would free what the
                    // directory holds (a generation, hidden from every reader).
                    None if last.is_none() => findings.push(format!(
                        "{path}: an entry of size 0 that holds a cluster chain (from cluster \
                         {first}), which no write leaves: most likely a directory whose entry \
                         lost its directory mark. Do not repair or write the medium (a repair \
                         frees what it holds); ask how the medium was handled"
                    )),
                    None if finished.contains(&path) => {
                        findings.push(format!("{path}: {FINISHED_PAST_SIZE}"))
                    }
                    None if cut_leaves => findings.push(format!(
                        "{path}: its cluster chain runs past its size {LEFTOVER_CHAIN} (from \
                         cluster {first}): lost space, what a write cut off leaves; `mgear \
                         medium fsck --repair` frees it"
                    )),
                    None => findings.push(format!(
                        "{path}: its cluster chain runs past its size into clusters no other \
                         file holds (from cluster {first}) on a medium closed cleanly, which no \
                         write leaves: most likely the size in its directory entry was made \
                         smaller, and those clusters hold the rest of the file. Do not repair \
                         or write the medium (a repair cuts the chain at the size and frees \
                         them for good); check the captures with `mgear verify --identity`, \
                         which names what reads short"
                    )),
                }
            }
        }
    }
    findings
}

/// Put a directory's `.` and `..` entries back in its first two slots when they are where
/// `fatfs` 0.3.6 writes them (each behind a long-name slot, fixed upstream in
/// rafalh/rust-fatfs#99 and #100, not yet released; `fsck.fat` and other systems treat such
/// a directory as damaged), `..` pointing at `parent` (0: the root). `slots` is the start
/// of the directory's first cluster; `false` when it is not that pattern. The two slots
/// left behind are marked deleted, or end the directory when nothing follows them.
pub fn fix_dot_entries(slots: &mut [u8], parent: u32) -> bool {
    // LFN entries have attribute 0x0f at byte 11 of the slot.
    let pattern = slots.len() >= 160
        && slots[11] == 0x0f
        && &slots[32..43] == b".          "
        && slots[64 + 11] == 0x0f
        && &slots[96..107] == b"..         ";
    if !pattern {
        return false;
    }
    let (dot, dotdot) = (slots[32..64].to_vec(), slots[96..128].to_vec());
    slots[..32].copy_from_slice(&dot);
    slots[32..64].copy_from_slice(&dotdot);
    slots[32 + 20..32 + 22].copy_from_slice(&((parent >> 16) as u16).to_le_bytes());
    slots[32 + 26..32 + 28].copy_from_slice(&(parent as u16).to_le_bytes());
    let more = slots[128] != 0;
    slots[64..128].fill(0);
    if more {
        slots[64] = 0xe5;
        slots[96] = 0xe5;
    }
    true
}

/// A walk that writes nothing.
type NoWrite = fn(u64, &[u8]) -> Result<(), StoreError>;

/// Put right the directory whose chain is `runs` (first cluster `first`, parent `parent`,
/// 0 for the root) when a cut write left it half made: `fatfs`'s pattern of `.` and `..`
/// behind long-name slots ([`fix_dot_entries`]), or a first slot that is no `.` entry at
/// all. Every engine writes a new directory's `.` first, and the cut came after its parent's
/// entry reached the medium and before the directory's own cluster did, so the directory
/// holds nothing that was ever made durable: it is made empty again (its clusters zeroed,
/// `.` and `..` written). `true` when it wrote.
fn fix_dir_head<R, W>(
    geo: &Geometry,
    read: &mut R,
    write: &mut W,
    runs: &[Run],
    first: u32,
    parent: u32,
) -> Result<bool, StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
    W: FnMut(u64, &[u8]) -> Result<(), StoreError>,
{
    // A cluster is 512 bytes or more: the five slots looked at are in the first.
    let at = geo.cluster_offset(first);
    let mut head = [0u8; 160];
    read(at, &mut head)?;
    if fix_dot_entries(&mut head, parent) {
        write(at, &head[..128])?;
        return Ok(true);
    }
    if &head[..11] == b".          " && head[11] & 0x10 != 0 {
        return Ok(false);
    }
    let zeros = vec![0u8; geo.cluster_bytes as usize];
    for r in runs {
        for c in r.cluster..r.cluster + r.clusters {
            write(geo.cluster_offset(c), &zeros)?;
        }
    }
    let mut dots = [0u8; 64];
    for (slot, name, cluster) in [(0, b".          ", first), (32, b"..         ", parent)] {
        dots[slot..slot + 11].copy_from_slice(name);
        dots[slot + 11] = 0x10;
        dots[slot + 20..slot + 22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
        dots[slot + 26..slot + 28].copy_from_slice(&(cluster as u16).to_le_bytes());
    }
    write(at, &dots)?;
    Ok(true)
}

/// What [`reclaim`] gave back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Chains cut at their file's size ([`LEFTOVER_CHAIN`]).
    pub chains_cut: u64,
    /// Clusters marked taken that no entry held, now free (the cut tails' among them).
    pub clusters_freed: u64,
    /// Entries of the other FAT copies that differed from the first, now equal to it.
    pub copy_entries_fixed: u64,
    /// Directories put right ([`fix_dir_head`]): `.` and `..` back in place, or made empty
    /// again when the cut came before their first cluster reached the medium.
    pub dirs_fixed: u64,
    /// Files whose chain a cut free left shorter than their size, cut to it (paths).
    pub shortened: Vec<String>,
    /// Empty directories a removal had freed and not yet dropped, dropped (paths).
    pub dirs_removed: Vec<String>,
}

/// Opens the finding of a volume left mid-write that a read-only open reads as put right
/// ([`read_as_put_right`]): what a writer and `medium fsck` do not call damage.
pub const LEFT_MID_WRITE: &str = "the volume was left mid-write by a run that was cut off";

/// The finding a read-only open makes of a volume left mid-write whose cut [`reclaim`] puts
/// right: read as put right, and what the next writer (or `mgear medium fsck --repair`) does.
pub fn read_as_put_right(r: &Reclaimed) -> String {
    let mut done: Vec<String> = [
        (r.clusters_freed, "cluster(s) no file holds freed"),
        (r.chains_cut, "chain(s) cut back to their file's size"),
        (
            r.copy_entries_fixed,
            "FAT entr(ies) made the same in both copies",
        ),
        (r.dirs_fixed, "directory(ies) put right"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    if !r.shortened.is_empty() {
        done.push(format!(
            "{} cut back to what they hold",
            r.shortened.join(", ")
        ));
    }
    if !r.dirs_removed.is_empty() {
        done.push(format!(
            "{} (emptied by a removal that was cut off) dropped",
            r.dirs_removed.join(", ")
        ));
    }
    format!(
        "{LEFT_MID_WRITE} (its dirty mark is set): read here as the next capture onto it, or \
         `mgear medium fsck --repair`, puts it right ({}), nothing else damaged",
        if done.is_empty() {
            String::from("its dirty mark cleared")
        } else {
            done.join(", ")
        }
    )
}

/// A file of a finished generation (a directory that holds a MANIFEST) whose entry was
/// marked deleted while its chain is still taken and held by nothing: no cut write leaves
/// that (a removal frees the chain before its entry goes), and freeing it as a cut's leftover
/// lost a finished segment for good. What to say of it, for the first one found.
fn deleted_finished_file<R>(
    geo: &Geometry,
    read: &mut R,
    chains: &Chains,
) -> Result<Option<String>, StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
{
    if chains.partial.is_some() {
        return Ok(None);
    }
    let dirs: alloc::collections::BTreeSet<String> = chains
        .held
        .values()
        .filter_map(|(_, who)| who.strip_suffix("/MANIFEST").map(String::from))
        .collect();
    let mut fat = FatEntries::new();
    for dir in dirs {
        let Some(first) = dir_cluster(geo, read, &dir)? else {
            continue;
        };
        let bytes = read_dir(geo, read, &dir, first)?;
        for e in bytes.chunks_exact(32) {
            if e[0] != 0xe5 || e[11] == 0x0f || e[11] & 0x10 != 0 {
                continue;
            }
            let c = ((le16(e, 20) << 16) | le16(e, 26)) as u32;
            if !geo.valid_cluster(c) || held_by(chains, c) || fat.get(geo, read, c)? == 0 {
                continue;
            }
            return Ok(Some(format!(
                "{dir}: a file of this finished generation (its directory holds the MANIFEST \
                 written last) was deleted, its entry marked so while its clusters, from \
                 cluster {c}, are still taken: no cut write leaves that. Do not repair or write \
                 the medium (a repair frees them for good); check the captures with `mgear \
                 verify --identity`"
            )));
        }
    }
    Ok(None)
}

/// Whether a chain of the walk holds cluster `c`.
fn held_by(chains: &Chains, c: u32) -> bool {
    chains
        .held
        .range(..=c)
        .next_back()
        .is_some_and(|(_, (end, _))| *end > u64::from(c))
}

/// The clusters at which [`reclaim`] cuts chains that run past their file's size into
/// clusters no entry holds; `None` when the walk met anything else (it writes nothing then).
fn cuts(chains: &Chains) -> Result<Vec<u32>, String> {
    if let Some(what) = chains.partial.iter().chain(&chains.findings).next() {
        return Err(what.clone());
    }
    if let Some(b) = chains
        .broken
        .iter()
        .find(|b| b.end_mark && of_finished_generation(chains, &b.path))
    {
        return Err(format!(
            "{}: its cluster chain ends before its size at an end mark, and it is a file of a \
             finished generation (its directory holds the MANIFEST written last), which \
             nothing truncates: its chain was cut, and the clusters past the mark hold the \
             rest of the file. Do not repair or write the medium (a repair frees them for \
             good); check the captures with `mgear verify --identity`",
            b.path
        ));
    }
    let mut cuts = Vec::new();
    for (path, last, next) in &chains.after {
        if matches!(next, After::Tail { .. }) && of_finished_generation(chains, path) {
            return Err(format!("{path}: {FINISHED_PAST_SIZE}"));
        }
        match next {
            // Cut back with the short files (`Chains::broken`).
            After::End | After::Free(_) => {}
            // A size-0 file's whole chain is its tail: its entry would need its first
            // cluster cleared too. No engine leaves that (the entry gets the first cluster
            // and the size in one write).
            After::Tail {
                clusters,
                out: false,
                ..
            } if !clusters.iter().any(|&c| held_by(chains, c)) && last.is_some() => {
                cuts.extend(*last)
            }
            _ => {
                return Err(format!(
                    "{path}: its cluster chain runs past its size into another file's clusters, \
                     out of the volume, or holds clusters at size 0"
                ))
            }
        }
    }
    Ok(cuts)
}

/// Make FAT copy `to` equal to copy `from` (entries 2 on); how many entries changed.
fn copy_fat<R, W>(
    geo: &Geometry,
    read: &mut R,
    write: &mut W,
    from: u64,
    to: u64,
) -> Result<u64, StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
    W: FnMut(u64, &[u8]) -> Result<(), StoreError>,
{
    let mut a = vec![0u8; FAT_WINDOW * 16];
    let mut b = vec![0u8; FAT_WINDOW * 16];
    let end = (u64::from(geo.cluster_count) + 2) * 4;
    let (mut at, mut changed) = (8u64, 0u64);
    while at < end {
        let n = (end - at).min(a.len() as u64) as usize;
        read(geo.fat_offset + from * geo.fat_bytes + at, &mut a[..n])?;
        read(geo.fat_offset + to * geo.fat_bytes + at, &mut b[..n])?;
        if a[..n] != b[..n] {
            changed += a[..n]
                .chunks_exact(4)
                .zip(b[..n].chunks_exact(4))
                .filter(|(x, y)| x != y)
                .count() as u64;
            write(geo.fat_offset + to * geo.fat_bytes + at, &a[..n])?;
        }
        at += n as u64;
    }
    Ok(changed)
}

/// Put right what a write-back cut off (a process killed, a cable pulled) leaves on a
/// FAT32 volume, as `fsck.fat -a` would, before anything is written on top of it. A host
/// engine writes its cached blocks back in device order (the first FAT, the second, then
/// directories), so a cut leaves one of: the first FAT newer than the second in part (a
/// link written, the cluster it links to not yet taken), the second newer in part, or both
/// FATs new and the directories old (clusters taken that no entry holds yet, chains past
/// their file's size, a truncated or removed file's entry on clusters already freed), plus
/// a new directory whose `.` never reached the medium, or `fatfs`'s misplaced `.` and `..`.
///
/// So: the FAT copy to keep is one on which every chain covers what its entry needs
/// (preferably with no chain short of its size either), copied over the other; directories
/// are put right ([`fix_dir_head`]); a file whose chain stops short of its size (a cut free)
/// is cut to what it still holds; a chain past its size into clusters no entry holds
/// ([`LEFTOVER_CHAIN`]) is cut at the size; every cluster marked taken that no chain holds
/// is freed; and every FAT copy is made equal to the first.
///
/// Nothing is written, and `None` returned, when neither copy walks clean (shared
/// clusters, a chain into another file, out of the volume, a loop): freeing clusters there
/// would free data, so that is left for a person with `mgear verify`. Reads the whole FAT
/// (and each copy) a few times: only after a cut.
pub fn reclaim<R, W>(
    geo: &Geometry,
    read: &mut R,
    write: &mut W,
) -> Result<Result<Reclaimed, String>, StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
    W: FnMut(u64, &[u8]) -> Result<(), StoreError>,
{
    // The copy to keep: one whose every chain covers what its entry needs. An interrupted
    // write-back leaves the first copy newer than the second in part (a link written, the
    // cluster it links to not yet taken), the second older in part, or both new and the
    // directories old: one of them is such a copy.
    // Preferably one where no chain stops short of its size either (the other copy then
    // still holds what a cut free had begun to give back).
    let mut keep = None;
    let mut why = None;
    'search: for whole in [true, false] {
        for copy in 0..geo.fats.min(2) {
            let mut g = geo.clone();
            g.fat_offset += copy * geo.fat_bytes;
            let chains = walk_chains::<R, NoWrite>(&g, read, None)?;
            match cuts(&chains) {
                Ok(_) if !whole || (chains.broken.is_empty() && chains.stale_dirs.is_empty()) => {
                    keep = Some((copy, g, chains));
                    break 'search;
                }
                Ok(_) => {}
                Err(e) => {
                    why.get_or_insert(e);
                }
            }
        }
    }
    let Some((keep, kept, kept_chains)) = keep else {
        return Ok(Err(why.unwrap_or_default()));
    };
    // Before anything is written, on the kept copy's walk: freeing what nothing holds would
    // free a finished generation's file or directory whose entry was deleted
    // ([`LostDir::finished_generation`]).
    if let Some(why) = deleted_finished_file(&kept, read, &kept_chains)? {
        return Ok(Err(why));
    }
    if let Some(d) = lost_in(&kept, read, &kept_chains)?
        .dirs
        .iter()
        .find(|d| d.finished_generation())
    {
        return Ok(Err(format!(
            "a directory no entry holds (from cluster {}, holding {}) is a finished \
             generation's, and no cut write leaves that: its directory entry was deleted or \
             damaged. Do not repair or write the medium (a repair frees the generation for \
             good); ask how the medium was handled",
            d.first,
            d.names.join(", ")
        )));
    }
    let mut done = Reclaimed::default();
    if keep > 0 {
        done.copy_entries_fixed += copy_fat(geo, read, write, keep, 0)?;
    }
    let chains = walk_chains(geo, read, Some(&mut *write))?;
    let held = |c: u32| held_by(&chains, c);
    let cuts = match cuts(&chains) {
        Ok(cuts) => cuts,
        Err(e) => return Ok(Err(e)),
    };
    done.dirs_fixed = chains.dirs_fixed;
    // A file a cut free left short: its size cut to the clusters it still holds, its chain
    // ended there (`fsck.fat -a` does the same).
    for b in &chains.broken {
        let mut e = [0u8; 32];
        read(b.entry, &mut e)?;
        let clusters: u64 = b.kept.iter().map(|r| u64::from(r.clusters)).sum();
        let size = u64::from(le32(&e, 28)).min(clusters * geo.cluster_bytes);
        e[28..32].copy_from_slice(&(size as u32).to_le_bytes());
        match b.kept.last() {
            Some(r) => end_chain_at(geo, read, write, r.cluster + r.clusters - 1)?,
            None => {
                e[20..22].fill(0);
                e[26..28].fill(0);
            }
        }
        write(b.entry, &e)?;
        done.shortened.push(b.path.clone());
    }
    // An empty directory a cut removal had freed: its entry dropped, as the removal would
    // have (what else its chain held is freed below, held by nothing).
    for (path, slots) in &chains.stale_dirs {
        for &at in slots {
            write(at, &[0xe5])?;
        }
        done.dirs_removed.push(path.clone());
    }
    for last in cuts {
        end_chain_at(geo, read, write, last)?;
        done.chains_cut += 1;
    }
    // One pass over the FAT: free what nothing holds in the first copy, then make every
    // other copy equal to it. Entries 0 and 1 are the media byte and flags, not clusters.
    let mut first = vec![0u8; FAT_WINDOW * 16];
    let mut other = vec![0u8; FAT_WINDOW * 16];
    let end = (u64::from(geo.cluster_count) + 2) * 4;
    let mut at = 8u64;
    while at < end {
        let n = (end - at).min(first.len() as u64) as usize;
        read(geo.fat_offset + at, &mut first[..n])?;
        let mut changed = false;
        for (i, e) in first[..n].chunks_exact_mut(4).enumerate() {
            let c = (at / 4) as u32 + i as u32;
            let raw = le32(e, 0);
            let v = raw & 0x0FFF_FFFF;
            // 0x0FFF_FFF7 marks a bad cluster: taken on purpose, held by nothing.
            if v != 0 && v != 0x0FFF_FFF7 && !held(c) {
                e.copy_from_slice(&(raw & 0xF000_0000).to_le_bytes());
                done.clusters_freed += 1;
                changed = true;
            }
        }
        if changed {
            write(geo.fat_offset + at, &first[..n])?;
        }
        for f in 1..geo.fats {
            let copy = geo.fat_offset + f * geo.fat_bytes + at;
            read(copy, &mut other[..n])?;
            if other[..n] != first[..n] {
                done.copy_entries_fixed += first[..n]
                    .chunks_exact(4)
                    .zip(other[..n].chunks_exact(4))
                    .filter(|(a, b)| a != b)
                    .count() as u64;
                write(copy, &first[..n])?;
            }
        }
        at += n as u64;
    }
    Ok(Ok(done))
}

/// Map the file at `path` (`/`-separated, relative to the root).
/// `Ok(None)` if it does not exist; an error if it is a directory.
pub fn lookup<R>(geo: &Geometry, read: &mut R, path: &str) -> Result<Option<FileMap>, StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
{
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let Some((last, dirs)) = parts.split_last() else {
        return Err(StoreError::Io(format!("{path:?} is a directory")));
    };
    let mut dir_cluster = geo.root_cluster;
    for d in dirs {
        let bytes = read_dir(geo, read, path, dir_cluster)?;
        match find(&bytes, d) {
            Some(f) if f.is_dir => {
                dir_cluster = if f.first == 0 {
                    geo.root_cluster
                } else {
                    f.first
                }
            }
            _ => return Ok(None),
        }
    }
    let bytes = read_dir(geo, read, path, dir_cluster)?;
    let Some(f) = find(&bytes, last) else {
        return Ok(None);
    };
    if f.is_dir {
        // Every path the format names is a file: see `FatStore::len`.
        return Err(StoreError::Damaged(format!(
            "{path} is a directory where the format has a file: its directory entry is damaged"
        )));
    }
    // Where the entry's directory bytes sit on the medium.
    let dir_runs = dir_chain(geo, read, path, dir_cluster)?;
    let dir_map = FileMap {
        size: 0,
        entry_offset: 0,
        runs: dir_runs,
    };
    let entry_offset = dir_map
        .pieces(geo, f.at as u64, 32)
        .first()
        .map(|p| p.0)
        .ok_or_else(|| damaged(path, "a directory entry lies outside its directory"))?;
    let limit = f.size.div_ceil(geo.cluster_bytes);
    let runs = chain(geo, read, path, f.first, limit)?;
    let map = FileMap {
        size: f.size,
        entry_offset,
        runs,
    };
    if map.clusters() < limit {
        return Err(damaged(path, "its cluster chain is shorter than its size"));
    }
    Ok(Some(map))
}

/// Allocate `count` free clusters and append them to `map`'s chain,
/// preferring the clusters right after its end so the file stays one run.
/// The new entries are written to every FAT copy before the old end is
/// linked to them, so a power cut leaves at worst lost clusters (which
/// `fsck.fat` reclaims), never a chain into unwritten FAT entries. `hint`
/// is where to search when the file is empty; it is advanced. Returns
/// `NoSpace` (allocating nothing) when the volume has fewer free clusters.
pub fn extend<R, W>(
    geo: &Geometry,
    read: &mut R,
    write: &mut W,
    map: &mut FileMap,
    count: u64,
    hint: &mut u32,
) -> Result<(), StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
    W: FnMut(u64, &[u8]) -> Result<(), StoreError>,
{
    if count == 0 {
        return Ok(());
    }
    let start = match map.last_cluster() {
        Some(c) if geo.valid_cluster(c + 1) => c + 1,
        _ if geo.valid_cluster(*hint) => *hint,
        _ => 2,
    };
    // (cluster, its old raw entry) for each cluster taken, in chain order.
    let mut found: Vec<(u32, u32)> = Vec::new();
    let mut window = vec![0u8; FAT_WINDOW];
    let total = u64::from(geo.cluster_count);
    let end_cluster = total + 2;
    let mut c = start;
    let mut scanned = 0u64;
    while (found.len() as u64) < count {
        if scanned >= total {
            return Err(StoreError::NoSpace);
        }
        let at = u64::from(c) * 4;
        // Every cluster is looked at once: after wrapping round, the last
        // window stops where the search started. A window reaching past it
        // found the free clusters there a second time, so an append a few
        // clusters larger than the free space "got" them twice: the file's
        // size went past its chain and the clusters between were left
        // marked used in no chain (a medium-full capture left the FAT so).
        let entries = (end_cluster - u64::from(c))
            .min(total - scanned)
            .min(FAT_WINDOW as u64 / 4);
        let n = (entries * 4) as usize;
        read(geo.fat_offset + at, &mut window[..n])?;
        for e in window[..n].chunks_exact(4) {
            let raw = le32(e, 0);
            if raw & 0x0FFF_FFFF == 0 && (found.len() as u64) < count {
                found.push((c, raw));
            }
            c += 1;
            scanned += 1;
        }
        if u64::from(c) >= end_cluster {
            c = 2;
        }
    }
    // New entries first, group by group of adjacent clusters.
    let mut i = 0;
    while i < found.len() {
        let mut j = i + 1;
        while j < found.len() && found[j].0 == found[j - 1].0 + 1 {
            j += 1;
        }
        let mut bytes = Vec::with_capacity((j - i) * 4);
        for k in i..j {
            let next = found.get(k + 1).map_or(0x0FFF_FFFF, |n| n.0);
            let v = (found[k].1 & 0xF000_0000) | next;
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        for f in 0..geo.fats {
            write(
                geo.fat_offset + f * geo.fat_bytes + u64::from(found[i].0) * 4,
                &bytes,
            )?;
        }
        i = j;
    }
    if let Some(last) = map.last_cluster() {
        let mut old = [0u8; 4];
        read(geo.fat_offset + u64::from(last) * 4, &mut old)?;
        let v = (le32(&old, 0) & 0xF000_0000) | found[0].0;
        for f in 0..geo.fats {
            write(
                geo.fat_offset + f * geo.fat_bytes + u64::from(last) * 4,
                &v.to_le_bytes(),
            )?;
        }
    }
    for (c, _) in &found {
        map.push_cluster(*c);
    }
    if let Some(last) = map.last_cluster() {
        *hint = if geo.valid_cluster(last + 1) {
            last + 1
        } else {
            2
        };
    }
    Ok(())
}

/// Give back the clusters of `map`'s chain past its first `keep` (what
/// [`extend`] appended for a write that then failed), so a failed append
/// leaves the chain no longer than the file's size needs and no cluster
/// taken. The kept chain is ended first, in every FAT copy, then the rest
/// freed: a power cut in between leaves lost clusters (`fsck.fat` reclaims
/// them), never a chain into free ones. On an error `map` is left as it
/// was and no longer matches the FAT: the caller drops it.
pub fn release<R, W>(
    geo: &Geometry,
    read: &mut R,
    write: &mut W,
    map: &mut FileMap,
    keep: u64,
) -> Result<(), StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
    W: FnMut(u64, &[u8]) -> Result<(), StoreError>,
{
    let (mut kept, mut freed) = (Vec::new(), Vec::new());
    let mut left = keep;
    for r in &map.runs {
        let k = left.min(u64::from(r.clusters)) as u32;
        left -= u64::from(k);
        if k > 0 {
            kept.push(Run {
                cluster: r.cluster,
                clusters: k,
            });
        }
        if k < r.clusters {
            freed.push(Run {
                cluster: r.cluster + k,
                clusters: r.clusters - k,
            });
        }
    }
    if freed.is_empty() {
        return Ok(());
    }
    if let Some(last) = kept.last().map(|r| r.cluster + r.clusters - 1) {
        end_chain_at(geo, read, write, last)?;
    }
    let mut window = vec![0u8; FAT_WINDOW];
    for r in &freed {
        let (mut c, end) = (
            u64::from(r.cluster),
            u64::from(r.cluster) + u64::from(r.clusters),
        );
        while c < end {
            let n = ((end - c) * 4).min(FAT_WINDOW as u64) as usize;
            read(geo.fat_offset + c * 4, &mut window[..n])?;
            // The top four bits of an entry are reserved: kept as they were.
            for e in window[..n].chunks_exact_mut(4) {
                let v = le32(e, 0) & 0xF000_0000;
                e.copy_from_slice(&v.to_le_bytes());
            }
            for f in 0..geo.fats {
                write(geo.fat_offset + f * geo.fat_bytes + c * 4, &window[..n])?;
            }
            c += n as u64 / 4;
        }
    }
    map.runs = kept;
    Ok(())
}

/// Mark cluster `last` the end of its chain in every FAT copy (the entry's top four bits,
/// reserved, kept as they were).
fn end_chain_at<R, W>(
    geo: &Geometry,
    read: &mut R,
    write: &mut W,
    last: u32,
) -> Result<(), StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
    W: FnMut(u64, &[u8]) -> Result<(), StoreError>,
{
    let mut old = [0u8; 4];
    read(geo.fat_offset + u64::from(last) * 4, &mut old)?;
    let v = (le32(&old, 0) & 0xF000_0000) | 0x0FFF_FFFF;
    for f in 0..geo.fats {
        write(
            geo.fat_offset + f * geo.fat_bytes + u64::from(last) * 4,
            &v.to_le_bytes(),
        )?;
    }
    Ok(())
}

/// Chains of clusters the FAT marks taken that no file or directory holds, on a volume
/// closed cleanly: what a directory entry deleted or damaged since leaves (no write of a run
/// that closed the volume does). Each directory among them (its first cluster starts with
/// the `.` and `..` entries) with the names in its first cluster, so a reader can say what
/// went missing: a generation's directory (MANIFEST, INDEX, ...) hidden so, and the readers
/// list the generation before it as the newest.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Lost {
    /// Clusters marked taken that nothing holds.
    pub clusters: u64,
    /// Chains among them (counted up to [`LOST_HEADS_MAX`] clusters).
    pub chains: u64,
    /// Directories among them.
    pub dirs: Vec<LostDir>,
}

/// A directory among [`Lost`] chains.
#[derive(Debug, PartialEq, Eq)]
pub struct LostDir {
    /// Its first cluster.
    pub first: u32,
    /// The first cluster of the directory its `..` entry names (the root's number for the
    /// root, whose `..` says 0): where its entry was.
    pub parent: u32,
    /// The names of the entries its first cluster holds (long names where valid), `.` and
    /// `..` left out.
    pub names: Vec<String>,
}

impl LostDir {
    /// Whether it held a finished generation (a MANIFEST, written last). No cut write leaves
    /// such a directory lost: the generation's entry was durable long before its MANIFEST,
    /// and a removal empties a directory before it drops it. On a medium left mid-write it
    /// is damage all the same (a courier's deleted entry plus the dirty mark had its
    /// generation freed as a cut's leftover by the next repair or capture, and readers took
    /// the generation before it as the newest).
    pub fn finished_generation(&self) -> bool {
        self.names
            .iter()
            .any(|n| n.eq_ignore_ascii_case("MANIFEST"))
    }
}

/// The most lost clusters whose links [`lost_chains`] keeps to find where chains begin:
/// 4 Mi clusters (64 MiB of memory) cover the chains of any deleted directory worth naming.
const LOST_HEADS_MAX: usize = 4 << 20;

/// See [`Lost`]. A walk that could not reach every entry (a directory whose chain leaves the
/// volume or loops) says nothing: what it did not reach would look lost, and that damage is
/// said where it is met. One pass over the first FAT.
pub fn lost_chains<R>(geo: &Geometry, read: &mut R) -> Result<Lost, StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
{
    let chains = walk_chains::<R, NoWrite>(geo, read, None)?;
    lost_in(geo, read, &chains)
}

/// [`lost_chains`] of a walk already made.
fn lost_in<R>(geo: &Geometry, read: &mut R, chains: &Chains) -> Result<Lost, StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
{
    let mut lost = Lost::default();
    if chains.partial.is_some() {
        return Ok(lost);
    }
    // A chain past its file's size is a finding of its own (`chain_findings`), not lost.
    let tails: alloc::collections::BTreeSet<u32> = chains
        .after
        .iter()
        .filter_map(|(_, _, a)| match a {
            After::Tail { clusters, .. } => Some(clusters.iter().copied()),
            _ => None,
        })
        .flatten()
        .collect();
    let mut links: alloc::collections::BTreeMap<u32, u32> = alloc::collections::BTreeMap::new();
    let mut window = vec![0u8; FAT_WINDOW * 16];
    let end = (u64::from(geo.cluster_count) + 2) * 4;
    let mut at = 8u64;
    while at < end {
        let n = (end - at).min(window.len() as u64) as usize;
        read(geo.fat_offset + at, &mut window[..n])?;
        for (i, e) in window[..n].chunks_exact(4).enumerate() {
            let c = (at / 4) as u32 + i as u32;
            let v = le32(e, 0) & 0x0FFF_FFFF;
            // 0x0FFF_FFF7 marks a bad cluster: taken on purpose, held by nothing.
            if v != 0 && v != 0x0FFF_FFF7 && !held_by(chains, c) && !tails.contains(&c) {
                lost.clusters += 1;
                if links.len() < LOST_HEADS_MAX {
                    links.insert(c, v);
                }
            }
        }
        at += n as u64;
    }
    let targets: alloc::collections::BTreeSet<u32> = links.values().copied().collect();
    let heads: Vec<u32> = links
        .keys()
        .copied()
        .filter(|c| !targets.contains(c))
        .collect();
    lost.chains = heads.len() as u64;
    let mut first = vec![0u8; geo.cluster_bytes.min(64 << 10) as usize];
    for &c in &heads {
        read(geo.cluster_offset(c), &mut first)?;
        let dot = |e: &[u8], name: &[u8; 11]| e[..11] == *name && e[11] & 0x10 != 0;
        if first.len() < 64
            || !dot(&first[..32], b".          ")
            || !dot(&first[32..64], b"..         ")
        {
            continue;
        }
        let mut names = Vec::new();
        each_entry(&first[64..], |long, short, _| {
            names.push(match long {
                Some(units) => String::from_utf16_lossy(units),
                None => String::from(short),
            });
            false
        });
        let parent = ((le16(&first, 32 + 20) << 16) | le16(&first, 32 + 26)) as u32;
        lost.dirs.push(LostDir {
            first: c,
            parent: if parent == 0 {
                geo.root_cluster
            } else {
                parent
            },
            names,
        });
    }
    Ok(lost)
}

/// The first cluster of directory `path` (`/`-separated from the root; `""` the root), if
/// there is one.
pub fn dir_cluster<R>(geo: &Geometry, read: &mut R, path: &str) -> Result<Option<u32>, StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
{
    let mut at = geo.root_cluster;
    let mut walked = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let dir = read_dir(geo, read, &walked, at)?;
        match find(&dir, part) {
            Some(f) if f.is_dir => at = f.first,
            _ => return Ok(None),
        }
        if !walked.is_empty() {
            walked.push('/');
        }
        walked.push_str(part);
    }
    Ok(Some(at))
}

/// Count the free clusters in the FAT (read in large pieces).
pub fn count_free<R>(geo: &Geometry, read: &mut R) -> Result<u64, StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
{
    let mut window = vec![0u8; FAT_WINDOW * 16];
    let end = (u64::from(geo.cluster_count) + 2) * 4;
    let mut at = 8u64;
    let mut free = 0u64;
    while at < end {
        let n = (end - at).min(window.len() as u64) as usize;
        read(geo.fat_offset + at, &mut window[..n])?;
        free += window[..n]
            .chunks_exact(4)
            .filter(|e| le32(e, 0) & 0x0FFF_FFFF == 0)
            .count() as u64;
        at += n as u64;
    }
    Ok(free)
}

/// Where a volume's FAT copies disagree: how many cluster entries differ, and the first
/// such cluster; `None` when they agree (or the volume keeps one FAT). Entries 0 and 1 (the
/// media byte and the clean/error flags, which engines set in one copy) are not compared.
/// A damaged first FAT hides captures the second still maps; `fsck.fat` repairs from either.
pub fn fat_copies_differ<R>(geo: &Geometry, read: &mut R) -> Result<Option<(u64, u32)>, StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
{
    if geo.fats < 2 {
        return Ok(None);
    }
    let mut a = vec![0u8; FAT_WINDOW * 16];
    let mut b = vec![0u8; FAT_WINDOW * 16];
    let end = (u64::from(geo.cluster_count) + 2) * 4;
    let (mut at, mut differ, mut first) = (8u64, 0u64, None);
    while at < end {
        let n = (end - at).min(a.len() as u64) as usize;
        read(geo.fat_offset + at, &mut a[..n])?;
        read(geo.fat_offset + geo.fat_bytes + at, &mut b[..n])?;
        if a[..n] != b[..n] {
            for (i, (x, y)) in a[..n]
                .chunks_exact(4)
                .zip(b[..n].chunks_exact(4))
                .enumerate()
            {
                if le32(x, 0) & 0x0FFF_FFFF != le32(y, 0) & 0x0FFF_FFFF {
                    differ += 1;
                    first.get_or_insert((at / 4) as u32 + i as u32);
                }
            }
        }
        at += n as u64;
    }
    Ok(first.map(|c| (differ, c)))
}

/// Why the FSInfo sector of `geo`'s volume does not read as one (its three signatures),
/// or `None`. It holds only hints (the free count, where to look for a free cluster), yet
/// `fatfs` refuses a volume whose FSInfo is damaged, and one flipped byte there had every
/// command call the medium "not a FAT32 file system" and advise `medium format`.
pub fn fsinfo_damage<R>(geo: &Geometry, read: &mut R) -> Result<Option<&'static str>, StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
{
    let Some(s) = raw_fsinfo(geo, read)? else {
        return Ok(None);
    };
    Ok(if le32(&s, 0) != FSINFO_LEAD {
        Some("its first signature is wrong")
    } else if le32(&s, 484) != FSINFO_STRUC {
        Some("its second signature is wrong")
    } else if le32(&s, 508) != FSINFO_TRAIL {
        Some("its last signature is wrong")
    } else {
        None
    })
}

/// A whole FSInfo sector saying nothing: both hints "unknown", which every FAT32 reader
/// takes (it counts the free clusters itself).
pub fn blank_fsinfo() -> [u8; 512] {
    let mut s = [0u8; 512];
    s[..4].copy_from_slice(&FSINFO_LEAD.to_le_bytes());
    s[484..488].copy_from_slice(&FSINFO_STRUC.to_le_bytes());
    s[488..496].fill(0xff);
    s[508..].copy_from_slice(&FSINFO_TRAIL.to_le_bytes());
    s
}

const FSINFO_LEAD: u32 = 0x4161_5252;
const FSINFO_STRUC: u32 = 0x6141_7272;
const FSINFO_TRAIL: u32 = 0xaa55_0000;

/// The free-cluster count and next-free hint the FSInfo sector holds (`None`: the volume has
/// no valid one).
pub fn fsinfo_hints<R>(geo: &Geometry, read: &mut R) -> Result<Option<(u32, u32)>, StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
{
    Ok(fsinfo_sector(geo, read)?.map(|s| (le32(&s, 488), le32(&s, 492))))
}

/// The FSInfo sector of `geo`'s volume when it has one whose first two signatures hold.
fn fsinfo_sector<R>(geo: &Geometry, read: &mut R) -> Result<Option<[u8; 512]>, StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
{
    Ok(
        raw_fsinfo(geo, read)?
            .filter(|s| le32(s, 0) == FSINFO_LEAD && le32(s, 484) == FSINFO_STRUC),
    )
}

/// The bytes of the sector the boot sector names as FSInfo (`None`: it names none).
fn raw_fsinfo<R>(geo: &Geometry, read: &mut R) -> Result<Option<[u8; 512]>, StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
{
    if geo.fsinfo_offset == 0 {
        return Ok(None);
    }
    let mut s = [0u8; 512];
    read(geo.fsinfo_offset, &mut s)?;
    Ok(Some(s))
}

/// Store a free-cluster count and next-free hint in the FSInfo sector
/// (when the volume has a valid one), as the engines do at unmount.
pub fn write_fsinfo<R, W>(
    geo: &Geometry,
    read: &mut R,
    write: &mut W,
    free: u64,
    next_free: u32,
) -> Result<(), StoreError>
where
    R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
    W: FnMut(u64, &[u8]) -> Result<(), StoreError>,
{
    if fsinfo_sector(geo, read)?.is_none() {
        return Ok(());
    }
    let mut tail = [0u8; 8];
    tail[..4].copy_from_slice(&(free as u32).to_le_bytes());
    tail[4..].copy_from_slice(&next_free.to_le_bytes());
    write(geo.fsinfo_offset + 488, &tail)
}

/// Maps of recently used files, keyed by path (case-insensitive, as FAT
/// looks names up). The engine owner drops a path's map whenever the engine
/// changes that file, and all maps when entries move (rename, remove).
#[derive(Debug, Default)]
pub struct MapCache {
    maps: Vec<(String, FileMap)>,
}

/// Files whose maps are kept: a capture touches a segment, its index part,
/// journal slots and a few small files.
const MAP_SLOTS: usize = 16;

impl MapCache {
    /// An empty cache.
    pub fn new() -> Self {
        MapCache { maps: Vec::new() }
    }

    fn key(path: &str) -> String {
        path.to_ascii_uppercase()
    }

    /// The cached map of `path`.
    pub fn get(&mut self, path: &str) -> Option<&mut FileMap> {
        let k = Self::key(path);
        self.maps.iter_mut().find(|(p, _)| *p == k).map(|(_, m)| m)
    }

    /// The map of `path`: cached, else looked up on the volume (`geo`) and
    /// remembered; `None` if the file does not exist or the volume is not
    /// one the direct path handles (`geo` is `None`).
    pub fn get_or_lookup<R>(
        &mut self,
        geo: Option<&Geometry>,
        read: &mut R,
        path: &str,
    ) -> Result<Option<&mut FileMap>, StoreError>
    where
        R: FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
    {
        let Some(geo) = geo else {
            return Ok(None);
        };
        if self.get(path).is_none() {
            match lookup(geo, read, path)? {
                Some(m) => self.insert(path, m),
                None => return Ok(None),
            }
        }
        Ok(self.get(path))
    }

    /// Remember `map` for `path` (dropping the oldest map when full).
    pub fn insert(&mut self, path: &str, map: FileMap) {
        self.forget(path);
        if self.maps.len() >= MAP_SLOTS {
            self.maps.remove(0);
        }
        self.maps.push((Self::key(path), map));
    }

    /// Drop the map of `path`.
    pub fn forget(&mut self, path: &str) {
        let k = Self::key(path);
        self.maps.retain(|(p, _)| *p != k);
    }

    /// Drop every map.
    pub fn clear(&mut self) {
        self.maps.clear();
    }
}

// Path rules both engines apply before touching the volume.

/// `path` is a plain relative name (`a/b`, or `` for the root): no empty, `.` or `..` part.
pub fn check_path(path: &str) -> Result<(), StoreError> {
    if !path.is_empty()
        && path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(StoreError::Io(format!(
            "invalid medium path {path:?}: only plain relative names are allowed"
        )));
    }
    Ok(())
}

/// FAT32 file sizes are 32-bit.
pub fn check_fat_size(path: &str, end: u64) -> Result<(), StoreError> {
    if end > u64::from(u32::MAX) {
        return Err(StoreError::Io(format!(
            "{path}: a FAT32 file cannot grow to {end} bytes (limit 4 GiB - 1)"
        )));
    }
    Ok(())
}

/// Split `a/b/c` into (`a/b`, `c`).
pub fn split_parent(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_disk_with_a_partition_table_is_named_as_such() {
        let mut disk = vec![0u8; 32768];
        // An MBR whose first entry is a FAT32 (LBA) partition at sector 2048.
        disk[446 + 4] = 0x0c;
        disk[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        disk[510..512].copy_from_slice(&[0x55, 0xaa]);
        // Past the end: an error, as a device's read is (the backup is looked for in the
        // first 16 sectors).
        let mut read = |at: u64, buf: &mut [u8]| {
            let at = at as usize;
            let part = disk
                .get(at..at + buf.len())
                .ok_or_else(|| StoreError::Io(String::from("past the end")))?;
            buf.copy_from_slice(part);
            Ok(())
        };
        let e = alloc::string::ToString::to_string(&check_boot(&mut read).unwrap_err());
        assert!(
            e.contains("partition 1 starts at sector 2048 (type 0x0c)") && e.contains("--partscan"),
            "{e}"
        );
        // A protective MBR: GPT.
        let mut gpt = disk.clone();
        gpt[446 + 4] = 0xee;
        gpt[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        let mut read = |at: u64, buf: &mut [u8]| {
            let at = at as usize;
            let part = gpt
                .get(at..at + buf.len())
                .ok_or_else(|| StoreError::Io(String::from("past the end")))?;
            buf.copy_from_slice(part);
            Ok(())
        };
        let e = alloc::string::ToString::to_string(&check_boot(&mut read).unwrap_err());
        assert!(e.contains("starts with a GPT partition table"), "{e}");
    }

    /// A FAT32 layout with one FAT of `clusters` entries at byte 0 and no data region
    /// (extend only reads and writes the FAT).
    fn geo(clusters: u32) -> Geometry {
        Geometry {
            fat_offset: 0,
            fat_bytes: (u64::from(clusters) + 2) * 4,
            fats: 1,
            data_offset: 0,
            cluster_bytes: 512,
            root_cluster: 2,
            cluster_count: clusters,
            fsinfo_offset: 0,
        }
    }

    fn entry(fat: &[u8], c: u32) -> u32 {
        le32(fat, c as usize * 4)
    }

    fn extend_on(
        fat: &mut [u8],
        g: &Geometry,
        map: &mut FileMap,
        count: u64,
    ) -> Result<(), StoreError> {
        let cell = core::cell::RefCell::new(fat);
        let mut read = |off: u64, buf: &mut [u8]| {
            let f = cell.borrow();
            buf.copy_from_slice(&f[off as usize..off as usize + buf.len()]);
            Ok::<(), StoreError>(())
        };
        let mut write = |off: u64, buf: &[u8]| {
            cell.borrow_mut()[off as usize..off as usize + buf.len()].copy_from_slice(buf);
            Ok::<(), StoreError>(())
        };
        let mut hint = 2;
        extend(g, &mut read, &mut write, map, count, &mut hint)
    }

    /// A file of clusters `2..2 + used` (one chain), everything after it free.
    fn volume(clusters: u32, used: u32) -> (Geometry, Vec<u8>, FileMap) {
        let g = geo(clusters);
        let mut fat = vec![0u8; g.fat_bytes as usize];
        fat[..8].copy_from_slice(&[0xf8, 0xff, 0xff, 0x0f, 0xff, 0xff, 0xff, 0x0f]);
        for c in 2..2 + used {
            let next = if c + 1 == 2 + used {
                0x0FFF_FFFF
            } else {
                c + 1
            };
            fat[c as usize * 4..c as usize * 4 + 4].copy_from_slice(&next.to_le_bytes());
        }
        let map = FileMap {
            size: u64::from(used) * g.cluster_bytes,
            entry_offset: 0,
            runs: vec![Run {
                cluster: 2,
                clusters: used,
            }],
        };
        (g, fat, map)
    }

    /// The free clusters lie right after the file, in the search's last FAT window
    /// after it wrapped round: they were found a second time, and a request for a
    /// few more than were free "succeeded" with the same clusters in it twice.
    #[test]
    fn a_request_above_the_free_count_takes_nothing_even_when_the_scan_wraps() {
        let window = (FAT_WINDOW / 4) as u32;
        // The scan starts 100 clusters before the end of its second window from cluster 2.
        let clusters = 2 * window + 5_000;
        let used = 2 * window - 100;
        let free = clusters - used;
        for extra in [1, 50, 100] {
            let (g, mut fat, mut map) = volume(clusters, used);
            let before = (fat.clone(), map.clone());
            let got = extend_on(&mut fat, &g, &mut map, u64::from(free + extra));
            assert_eq!(got, Err(StoreError::NoSpace), "{extra} more than free");
            assert!(fat == before.0, "the FAT changed on a refused request");
            assert_eq!(map, before.1);
        }
    }

    /// What an append took for a write that then failed goes back: the FAT and the
    /// map are as before it, whether the file had clusters or none.
    #[test]
    fn release_gives_back_what_extend_took() {
        for used in [0, 1, 300] {
            let (g, mut fat, mut map) = volume(40_000, used);
            if used == 0 {
                map.runs.clear();
            }
            // Some clusters taken elsewhere so the new ones come in several runs.
            for c in [used + 5, used + 9, used + 10] {
                fat[c as usize * 4..c as usize * 4 + 4]
                    .copy_from_slice(&0x0FFF_FFFFu32.to_le_bytes());
            }
            let before = (fat.clone(), map.clone());
            extend_on(&mut fat, &g, &mut map, 20).unwrap();
            assert!(map.runs.len() > before.1.runs.len());
            let cell = core::cell::RefCell::new(&mut fat);
            release(
                &g,
                &mut |off: u64, buf: &mut [u8]| {
                    let f = cell.borrow();
                    buf.copy_from_slice(&f[off as usize..off as usize + buf.len()]);
                    Ok(())
                },
                &mut |off: u64, buf: &[u8]| {
                    cell.borrow_mut()[off as usize..off as usize + buf.len()].copy_from_slice(buf);
                    Ok(())
                },
                &mut map,
                u64::from(used),
            )
            .unwrap();
            assert!(fat == before.0, "{used} clusters: the FAT is not as before");
            assert_eq!(map, before.1);
        }
    }

    /// Exactly the free clusters: all taken, each once, in one chain ending the file's.
    #[test]
    fn the_last_free_clusters_are_all_taken_once() {
        let window = (FAT_WINDOW / 4) as u32;
        let clusters = 2 * window + 5_000;
        let used = 2 * window - 100;
        let free = clusters - used;
        let (g, mut fat, mut map) = volume(clusters, used);
        extend_on(&mut fat, &g, &mut map, u64::from(free)).unwrap();
        assert_eq!(map.clusters(), u64::from(clusters));
        assert_eq!(map.runs.len(), 1);
        let mut c = 2;
        let mut n = 1;
        while entry(&fat, c) & 0x0FFF_FFFF < END_OF_CHAIN {
            c = entry(&fat, c) & 0x0FFF_FFFF;
            n += 1;
            assert!(n <= clusters, "the chain loops");
        }
        assert_eq!(n, clusters);
        let mut read = |off: u64, buf: &mut [u8]| {
            buf.copy_from_slice(&fat[off as usize..off as usize + buf.len()]);
            Ok::<(), StoreError>(())
        };
        assert_eq!(count_free(&g, &mut read).unwrap(), 0);
        // Nothing left: one more cluster is refused.
        assert_eq!(
            extend_on(&mut fat, &g, &mut map, 1),
            Err(StoreError::NoSpace)
        );
    }
}
