//! Partition tables: parse MBR and GPT from any [`ReadAt`] source, and write the
//! single-partition MBR of the sample disk.
//!
//! Parsing is defensive: every offset and count read from the disk is checked
//! against the disk size and against sane limits before it is used, so a
//! malformed table yields [`BootError::Partition`] instead of a panic or a huge
//! allocation.
//!
//! ## MBR layout (sector 0, 512 bytes)
//! ```text
//! 0x000..0x1B8  boot code (440 bytes; zero when the disk is not BIOS-bootable)
//! 0x1B8..0x1BC  disk signature (u32 LE)
//! 0x1BC..0x1BE  reserved (0)
//! 0x1BE..0x1FE  4 partition entries of 16 bytes:
//!               +0 status (0x80 = active/bootable, 0x00 = inactive)
//!               +1 CHS of first sector (3 bytes)
//!               +4 partition type (0x83 Linux, 0xEE GPT protective, 0xEF EFI, ...)
//!               +5 CHS of last sector (3 bytes)
//!               +8 first LBA (u32 LE)
//!               +12 number of sectors (u32 LE)
//! 0x1FE..0x200  signature 0x55 0xAA
//! ```
//! ## GPT layout (header at LBA 1)
//! ```text
//! 0   "EFI PART"          8   revision (u32)     12  header size (u32, >= 92)
//! 16  header CRC32 (over header size bytes with this field zeroed)
//! 24  my LBA   32 alternate LBA   40 first usable LBA   48 last usable LBA
//! 56  disk GUID (16)      72  partition entry array LBA (u64)
//! 80  number of entries (u32)   84  size of one entry (u32, >= 128)
//! 88  CRC32 of the entry array
//! entry: 0 type GUID (16), 16 unique GUID (16), 32 first LBA, 40 last LBA (inclusive),
//!        48 attributes (u64), 56 name (72 bytes UTF-16LE)
//! ```
//! GUIDs are stored mixed-endian: the first three fields little-endian.

use serde::Serialize;

use crate::{BootError, ReadAt, Result};

/// Logical sector size assumed for partition tables (all our targets use 512).
pub const SECTOR: u64 = 512;

/// GPT type of an EFI System Partition.
pub const GUID_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// GPT type of a GRUB BIOS boot partition (BIOS boot from a GPT disk).
pub const GUID_BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
/// GPT type of Microsoft basic data (NTFS/FAT data partitions).
pub const GUID_MS_BASIC_DATA: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";
/// GPT type of the Microsoft reserved partition (only on Windows disks).
pub const GUID_MS_RESERVED: &str = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE";
/// GPT type of a Linux filesystem partition.
pub const GUID_LINUX_FS: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
/// GPT type of a Linux LVM partition.
pub const GUID_LINUX_LVM: &str = "E6D6D379-F507-44C2-A23C-238F2A3DF928";
/// GPT type of Linux swap.
pub const GUID_LINUX_SWAP: &str = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F";

/// Largest GPT entry array we accept (the spec minimum is 16 KiB; real disks use that).
const MAX_GPT_ARRAY: u64 = 1024 * 1024;

/// Which partition table a disk carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// No valid table (no 0x55AA signature): a bare filesystem or an empty disk.
    None,
    /// Classic MBR (DOS) table.
    Mbr,
    /// GUID partition table (behind a protective MBR).
    Gpt,
}

/// The partition type as recorded in the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PartType {
    /// MBR type byte.
    Mbr(u8),
    /// GPT type GUID in canonical upper-case text form.
    Gpt(String),
}

impl PartType {
    /// True for an EFI System Partition (GPT ESP GUID or MBR type 0xEF).
    pub fn is_esp(&self) -> bool {
        match self {
            PartType::Mbr(t) => *t == 0xEF,
            PartType::Gpt(g) => g == GUID_ESP,
        }
    }

    /// Human name of well-known types.
    pub fn name(&self) -> &'static str {
        match self {
            PartType::Mbr(0x83) => "Linux",
            PartType::Mbr(0x82) => "Linux swap",
            PartType::Mbr(0x8E) => "Linux LVM",
            PartType::Mbr(0x07) => "NTFS/exFAT",
            PartType::Mbr(0x0B | 0x0C) => "FAT32",
            PartType::Mbr(0x05 | 0x0F | 0x85) => "extended",
            PartType::Mbr(0xEF) => "EFI System",
            PartType::Mbr(0x27) => "Windows recovery",
            PartType::Mbr(_) => "other",
            PartType::Gpt(g) => match g.as_str() {
                GUID_ESP => "EFI System",
                GUID_BIOS_BOOT => "BIOS boot",
                GUID_MS_BASIC_DATA => "Microsoft basic data",
                GUID_MS_RESERVED => "Microsoft reserved",
                GUID_LINUX_FS => "Linux filesystem",
                GUID_LINUX_LVM => "Linux LVM",
                GUID_LINUX_SWAP => "Linux swap",
                _ => "other",
            },
        }
    }
}

/// One partition found in the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// 1-based number as Linux would name it (sda1 = 1).
    pub number: u32,
    /// Byte offset of the first sector.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// Type from the table.
    pub ptype: PartType,
    /// MBR active flag or GPT legacy-BIOS-bootable attribute.
    pub bootable: bool,
}

/// A parsed partition table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Table {
    /// Kind of table.
    pub kind: TableKind,
    /// Partitions in table order (empty slots skipped).
    pub partitions: Vec<Partition>,
    /// The MBR's first 440 bytes are not all zero: there is BIOS boot code.
    pub mbr_boot_code: bool,
    /// Bootloader recognised from the MBR boot code ("GRUB", "SYSLINUX", "Windows", ...).
    pub mbr_boot_loader: Option<String>,
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn le64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// Format a 16-byte on-disk (mixed-endian) GUID as canonical text.
pub fn guid_to_string(b: &[u8; 16]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        le32(b, 0),
        le16(b, 4),
        le16(b, 6),
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

fn bad(msg: impl Into<String>) -> BootError {
    BootError::Partition(msg.into())
}

fn boot_loader_name(code: &[u8]) -> Option<String> {
    let has = |needle: &[u8]| code.windows(needle.len()).any(|w| w == needle);
    if has(b"GRUB") {
        Some("GRUB".into())
    } else if has(b"SYSLINUX") || has(b"ISOLINUX") {
        Some("SYSLINUX".into())
    } else if has(b"Invalid partition table") || has(b"Missing operating system") {
        Some("Windows".into())
    } else if code.iter().any(|&b| b != 0) {
        Some("unknown".into())
    } else {
        None
    }
}

/// Read and parse the partition table of a disk of `size` bytes.
///
/// Returns `TableKind::None` (not an error) for a disk without the 0x55AA
/// signature; returns an error for a table whose entries point outside the
/// disk, overlap the table itself, or fail GPT CRC checks on both copies.
pub fn read_table(r: &mut dyn ReadAt, size: u64) -> Result<Table> {
    if size < SECTOR {
        return Err(bad(format!(
            "disk is {size} bytes, smaller than one sector: not a disk image"
        )));
    }
    let mut mbr = [0u8; 512];
    r.read_exact_at(0, &mut mbr)?;
    let code = &mbr[..440];
    let mbr_boot_code = code.iter().any(|&b| b != 0);
    let mbr_boot_loader = boot_loader_name(code);
    if mbr[510] != 0x55 || mbr[511] != 0xAA {
        return Ok(Table {
            kind: TableKind::None,
            partitions: Vec::new(),
            mbr_boot_code: false,
            mbr_boot_loader: None,
        });
    }
    let sectors = size / SECTOR;
    let mut parts = Vec::new();
    let mut protective = false;
    for i in 0..4 {
        let e = &mbr[446 + i * 16..446 + (i + 1) * 16];
        let status = e[0];
        let ptype = e[4];
        let first = u64::from(le32(e, 8));
        let count = u64::from(le32(e, 12));
        if ptype == 0 && first == 0 && count == 0 {
            continue;
        }
        if status != 0 && status != 0x80 {
            return Err(bad(format!(
                "MBR entry {} has invalid status byte {status:#04x}: the table is corrupt",
                i + 1
            )));
        }
        if ptype == 0xEE {
            protective = true;
            continue;
        }
        if ptype == 0 {
            continue;
        }
        if first == 0 || count == 0 {
            return Err(bad(format!(
                "MBR entry {} (type {ptype:#04x}) starts at LBA {first} with {count} sectors: \
                 the table is corrupt",
                i + 1
            )));
        }
        if first + count > sectors {
            return Err(bad(format!(
                "MBR partition {} ends at sector {} but the disk has only {sectors} sectors: \
                 the volume is truncated or the table is corrupt",
                i + 1,
                first + count
            )));
        }
        parts.push(Partition {
            number: (i + 1) as u32,
            start: first * SECTOR,
            size: count * SECTOR,
            ptype: PartType::Mbr(ptype),
            bootable: status == 0x80,
        });
    }
    if protective {
        let partitions = read_gpt(r, size)?;
        return Ok(Table {
            kind: TableKind::Gpt,
            partitions,
            mbr_boot_code,
            mbr_boot_loader,
        });
    }
    for (i, a) in parts.iter().enumerate() {
        for b in parts.iter().skip(i + 1) {
            if a.start < b.start + b.size && b.start < a.start + a.size {
                return Err(bad(format!(
                    "MBR partitions {} and {} overlap: the table is corrupt",
                    a.number, b.number
                )));
            }
        }
    }
    Ok(Table {
        kind: TableKind::Mbr,
        partitions: parts,
        mbr_boot_code,
        mbr_boot_loader,
    })
}

/// The GPT of a disk of `size` bytes, at LBA 1 of 512-byte logical sectors or, where none is
/// there, of 4096-byte ones (a 4Kn disk: its header at byte 4096, its LBAs in 4 KiB units).
/// A valid 4Kn table was called corrupt, and `--check-profile` refused the capture.
fn read_gpt(r: &mut dyn ReadAt, size: u64) -> Result<Vec<Partition>> {
    let sizes = [SECTOR, 4096].into_iter().filter(|s| size / s >= 2);
    let mut primary = None;
    for sector in sizes.clone() {
        match read_gpt_at(r, 1, size / sector, sector) {
            Ok(p) => return Ok(p),
            Err(e) => {
                primary.get_or_insert(e);
            }
        }
    }
    let Some(primary) = primary else {
        return Err(bad("the disk is too small to hold a GPT"));
    };
    // The backup header sits in the last sector; use it when the primary was damaged, as
    // firmware does.
    for sector in sizes {
        if let Ok(p) = read_gpt_at(r, size / sector - 1, size / sector, sector) {
            return Ok(p);
        }
    }
    let primary = match primary {
        // Its own words, not "partition table: " a second time.
        BootError::Partition(m) => m,
        other => other.to_string(),
    };
    Err(bad(format!(
        "{primary}; the backup GPT header is unusable too: the table is corrupt"
    )))
}

fn read_gpt_at(r: &mut dyn ReadAt, lba: u64, sectors: u64, sector: u64) -> Result<Vec<Partition>> {
    let mut hdr = [0u8; 512];
    r.read_exact_at(lba * sector, &mut hdr)?;
    if &hdr[..8] != b"EFI PART" {
        return Err(bad(format!(
            "protective MBR present but no GPT header signature at LBA {lba}"
        )));
    }
    let hsize = le32(&hdr, 12) as usize;
    if !(92..=512).contains(&hsize) {
        return Err(bad(format!("GPT header size {hsize} is invalid")));
    }
    let stored_crc = le32(&hdr, 16);
    let mut h = hdr[..hsize].to_vec();
    h[16..20].fill(0);
    if crc32fast::hash(&h) != stored_crc {
        return Err(bad(format!(
            "GPT header at LBA {lba} fails its CRC32 check"
        )));
    }
    let first_usable = le64(&hdr, 40);
    let last_usable = le64(&hdr, 48);
    let array_lba = le64(&hdr, 72);
    let count = u64::from(le32(&hdr, 80));
    let esize = u64::from(le32(&hdr, 84));
    let array_crc = le32(&hdr, 88);
    if esize < 128 || esize % 8 != 0 || esize > 4096 {
        return Err(bad(format!("GPT entry size {esize} is invalid")));
    }
    let array_len = count
        .checked_mul(esize)
        .filter(|&l| l <= MAX_GPT_ARRAY)
        .ok_or_else(|| {
            bad(format!(
                "GPT declares {count} entries of {esize} bytes: too large, the table is corrupt"
            ))
        })?;
    let array_end = array_lba
        .checked_mul(sector)
        .and_then(|s| s.checked_add(array_len))
        .filter(|&e| e <= sectors * sector && array_lba >= 1)
        .ok_or_else(|| bad("GPT entry array lies outside the disk: the table is corrupt"))?;
    let mut arr = vec![0u8; array_len as usize];
    r.read_exact_at(array_end - array_len, &mut arr)?;
    if crc32fast::hash(&arr) != array_crc {
        return Err(bad("GPT partition entry array fails its CRC32 check"));
    }
    let mut parts = Vec::new();
    for (i, e) in arr.chunks_exact(esize as usize).enumerate() {
        let mut t = [0u8; 16];
        t.copy_from_slice(&e[..16]);
        if t == [0u8; 16] {
            continue;
        }
        let first = le64(e, 32);
        let last = le64(e, 40);
        if first > last || first < first_usable || last > last_usable || last >= sectors {
            return Err(bad(format!(
                "GPT partition {} spans LBA {first}..={last}, outside the usable area \
                 {first_usable}..={last_usable} of a {sectors}-sector disk: the table is corrupt \
                 or the volume is truncated",
                i + 1
            )));
        }
        parts.push(Partition {
            number: (i + 1) as u32,
            start: first * sector,
            size: (last - first + 1) * sector,
            ptype: PartType::Gpt(guid_to_string(&t)),
            bootable: le64(e, 48) & 0b100 != 0,
        });
    }
    Ok(parts)
}

/// Build a 512-byte MBR with `boot_code` (at most 440 bytes), a disk
/// signature and one active partition of `ptype` covering
/// `first_lba .. first_lba + sectors`.
///
/// CHS fields are set to the "use LBA" marker (0xFE 0xFF 0xFF) as modern tools
/// do; BIOS and GRUB only use the LBA fields.
pub fn single_partition_mbr(
    boot_code: &[u8],
    signature: u32,
    ptype: u8,
    first_lba: u32,
    sectors: u32,
) -> Result<[u8; 512]> {
    if boot_code.len() > 440 {
        return Err(bad(format!(
            "boot code is {} bytes, the MBR holds at most 440",
            boot_code.len()
        )));
    }
    let mut m = [0u8; 512];
    m[..boot_code.len()].copy_from_slice(boot_code);
    m[440..444].copy_from_slice(&signature.to_le_bytes());
    let e = &mut m[446..462];
    e[0] = 0x80;
    e[1..4].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
    e[4] = ptype;
    e[5..8].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&first_lba.to_le_bytes());
    e[12..16].copy_from_slice(&sectors.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn gpt_disk(sectors: u64, entries: &[([u8; 16], u64, u64)]) -> Vec<u8> {
        gpt_disk_of(SECTOR as usize, sectors, entries)
    }

    /// A GPT disk of `sectors` logical sectors of `sector` bytes.
    fn gpt_disk_of(sector: usize, sectors: u64, entries: &[([u8; 16], u64, u64)]) -> Vec<u8> {
        let mut d = vec![0u8; sectors as usize * sector];
        // protective MBR
        let pm = single_partition_mbr(&[], 0, 0xEE, 1, (sectors - 1) as u32).unwrap();
        d[..512].copy_from_slice(&pm);
        let mut arr = vec![0u8; 128 * 128];
        for (i, (t, f, l)) in entries.iter().enumerate() {
            let e = &mut arr[i * 128..(i + 1) * 128];
            e[..16].copy_from_slice(t);
            e[16] = 1;
            e[32..40].copy_from_slice(&f.to_le_bytes());
            e[40..48].copy_from_slice(&l.to_le_bytes());
        }
        let mut h = [0u8; 92];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[32..40].copy_from_slice(&(sectors - 1).to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&(sectors - 34).to_le_bytes());
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc32fast::hash(&arr).to_le_bytes());
        let crc = crc32fast::hash(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        d[sector..sector + 92].copy_from_slice(&h);
        d[2 * sector..2 * sector + arr.len()].copy_from_slice(&arr);
        d
    }

    const ESP_BYTES: [u8; 16] = [
        0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9,
        0x3B,
    ];

    #[test]
    fn guid_text_is_mixed_endian() {
        assert_eq!(guid_to_string(&ESP_BYTES), GUID_ESP);
    }

    #[test]
    fn parses_hand_made_mbr() {
        let mut d = vec![0u8; 4096 * 512];
        let m = single_partition_mbr(b"\xEB\x63GRUB", 0x1234, 0x83, 2048, 2048).unwrap();
        d[..512].copy_from_slice(&m);
        let t = read_table(&mut Cursor::new(d), 4096 * 512).unwrap();
        assert_eq!(t.kind, TableKind::Mbr);
        assert!(t.mbr_boot_code);
        assert_eq!(t.mbr_boot_loader.as_deref(), Some("GRUB"));
        assert_eq!(
            t.partitions,
            vec![Partition {
                number: 1,
                start: 2048 * 512,
                size: 2048 * 512,
                ptype: PartType::Mbr(0x83),
                bootable: true
            }]
        );
    }

    #[test]
    fn no_signature_means_no_table() {
        let d = vec![0u8; 8192];
        let t = read_table(&mut Cursor::new(d), 8192).unwrap();
        assert_eq!(t.kind, TableKind::None);
        assert!(t.partitions.is_empty());
    }

    #[test]
    fn mbr_partition_past_end_is_an_error() {
        let mut d = vec![0u8; 100 * 512];
        let m = single_partition_mbr(&[], 1, 0x83, 2048, 2048).unwrap();
        d[..512].copy_from_slice(&m);
        let e = read_table(&mut Cursor::new(d), 100 * 512).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    #[test]
    fn mbr_bad_status_and_overlap_are_errors() {
        let mut d = vec![0u8; 8192 * 512];
        let m = single_partition_mbr(&[], 1, 0x83, 2048, 2048).unwrap();
        d[..512].copy_from_slice(&m);
        let mut bad_status = d.clone();
        bad_status[446] = 0x12;
        assert!(read_table(&mut Cursor::new(bad_status), 8192 * 512).is_err());
        // second entry overlapping the first
        d.copy_within(446..462, 462);
        d[462] = 0;
        let e = read_table(&mut Cursor::new(d), 8192 * 512).unwrap_err();
        assert!(e.to_string().contains("overlap"), "{e}");
    }

    #[test]
    fn parses_hand_made_gpt_with_esp() {
        let d = gpt_disk(4096, &[(ESP_BYTES, 2048, 4061)]);
        let t = read_table(&mut Cursor::new(d), 4096 * 512).unwrap();
        assert_eq!(t.kind, TableKind::Gpt);
        assert_eq!(t.partitions.len(), 1);
        assert!(t.partitions[0].ptype.is_esp());
        assert_eq!(t.partitions[0].start, 2048 * 512);
        assert_eq!(t.partitions[0].size, (4061 - 2048 + 1) * 512);
    }

    /// A 4Kn disk (4096-byte logical sectors) keeps its GPT header at byte 4096 and counts
    /// its LBAs in 4 KiB: it was called corrupt ("no GPT header signature at LBA 1").
    #[test]
    fn parses_a_4kn_gpt() {
        let d = gpt_disk_of(4096, 8192, &[(ESP_BYTES, 256, 8000)]);
        let len = d.len() as u64;
        let t = read_table(&mut Cursor::new(d.clone()), len).unwrap();
        assert_eq!(t.kind, TableKind::Gpt);
        assert_eq!(t.partitions[0].start, 256 * 4096);
        assert_eq!(t.partitions[0].size, (8000 - 256 + 1) * 4096);
        // Its primary header damaged, and no backup: the 512-byte reading's words.
        let mut bad = d;
        bad[4096] ^= 1;
        let e = read_table(&mut Cursor::new(bad), len).unwrap_err();
        assert!(
            e.to_string().contains("no GPT header signature at LBA 1"),
            "{e}"
        );
    }

    #[test]
    fn gpt_crc_damage_falls_back_then_errors() {
        let mut d = gpt_disk(4096, &[(ESP_BYTES, 2048, 4061)]);
        d[512 + 40] ^= 1; // corrupt primary header; there is no backup
        let e = read_table(&mut Cursor::new(d), 4096 * 512).unwrap_err();
        assert!(e.to_string().contains("CRC32"), "{e}");
    }

    #[test]
    fn gpt_entry_outside_disk_is_an_error() {
        let d = gpt_disk(4096, &[(ESP_BYTES, 2048, 999_999)]);
        let e = read_table(&mut Cursor::new(d), 4096 * 512).unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
    }

    #[test]
    fn garbage_never_panics() {
        // Pseudo-random sectors with a valid signature and protective entry.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for round in 0..200 {
            let mut d = vec![0u8; 64 * 512];
            for b in d.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            d[510] = 0x55;
            d[511] = 0xAA;
            if round % 2 == 0 {
                d[446 + 4] = 0xEE;
                d[512..520].copy_from_slice(b"EFI PART");
            }
            let len = d.len() as u64;
            let _ = read_table(&mut Cursor::new(d), len);
        }
        let short = vec![0u8; 100];
        assert!(read_table(&mut Cursor::new(short), 100).is_err());
    }
}
