//! Guard rails before a command destroys what a device or image holds
//! (`mgear medium format`, `mgear ingest --target dev:`), and [`overlaps`]:
//! whether a target or source is the medium itself.
//!
//! [`signatures`] looks for the magic numbers `blkid` would find, read
//! straight from the device (no util-linux needed at run time): ext2/3/4,
//! XFS, btrfs, NTFS, exFAT, FAT, LUKS, Linux swap, LVM, ISO 9660 and the MBR
//! and GPT partition tables. [`refuse_if_holds_data`] turns a finding into
//! a usage error (exit 2) unless `--force` was given, and [`wipe`] zeroes
//! the places those signatures live, so after a forced format `blkid` and
//! `wipefs` see only the new file system.
//!
//! Where each signature sits (byte offsets from the start of the device):
//!
//! | what | offset | magic |
//! |---|---|---|
//! | ext2/3/4 | 1080 (superblock 1024 + 56) | `53 EF` |
//! | XFS | 0 | `XFSB` |
//! | btrfs | 65600 (65536 + 64) | `_BHRfS_M` |
//! | NTFS / exFAT | 3 | `NTFS    ` / `EXFAT   ` |
//! | FAT12/16 / FAT32 | 54 / 82, with `55 AA` at 510 | `FAT1x   ` / `FAT32   ` |
//! | LUKS1/2 | 0 | `LUKS BA BE` |
//! | swap | page size - 10 (4 KiB and 64 KiB pages) | `SWAPSPACE2` / `SWAP-SPACE` |
//! | LVM2 PV | sector 0..3, +24 | `LABELONE`, `LVM2 001` |
//! | ISO 9660 | 32769 | `CD001` |
//! | GPT | 512 or 4096, and the last sector (backup) | `EFI PART` |
//! | MBR partition table | 510, a used entry at 446 + 16 n | `55 AA` |
//!
//! All of them lie in the first 1 MiB or the last 1 MiB of the device,
//! which is what [`wipe`] zeroes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::Context;

use crate::exit::usage;

/// Bytes read (and wiped) at each end of the device.
pub const EDGE: u64 = 1 << 20;

/// What was found on a device: a name a person recognises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// E.g. "an ext4 file system".
    pub what: String,
    /// Byte offset of its magic.
    pub offset: u64,
}

fn at(b: &[u8], off: usize, len: usize) -> &[u8] {
    b.get(off..off + len).unwrap_or(&[])
}

fn le32(b: &[u8], off: usize) -> u32 {
    match at(b, off, 4) {
        [a, b, c, d] => u32::from_le_bytes([*a, *b, *c, *d]),
        _ => 0,
    }
}

/// Signatures in the first bytes of a device (`head`, up to 1 MiB) and in
/// its last bytes (`tail`, which ends at byte `size`).
pub fn scan(head: &[u8], tail: &[u8], size: u64) -> Vec<Signature> {
    let mut found = Vec::new();
    let mut add = |what: &str, offset: u64| {
        found.push(Signature {
            what: what.into(),
            offset,
        })
    };
    if at(head, 1080, 2) == [0x53, 0xef] {
        // s_feature_compat 0x45C (has_journal 0x4), s_feature_incompat 0x460
        // (extents 0x40, 64bit 0x80, flex_bg 0x200).
        let (compat, incompat) = (le32(head, 0x45c), le32(head, 0x460));
        let kind = if incompat & (0x40 | 0x80 | 0x200) != 0 {
            "an ext4 file system"
        } else if compat & 0x4 != 0 {
            "an ext3 file system"
        } else {
            "an ext2 file system"
        };
        add(kind, 1080);
    }
    if at(head, 0, 4) == b"XFSB" {
        add("an XFS file system", 0);
    }
    if at(head, 65600, 8) == b"_BHRfS_M" {
        add("a btrfs file system", 65600);
    }
    if at(head, 0, 6) == b"LUKS\xba\xbe" {
        add("a LUKS encrypted volume", 0);
    }
    let boot_sig = at(head, 510, 2) == [0x55, 0xaa];
    let ntfs = at(head, 3, 8) == b"NTFS    ";
    let exfat = at(head, 3, 8) == b"EXFAT   ";
    let fat32 = boot_sig && at(head, 82, 8) == b"FAT32   ";
    let fat16 = boot_sig && matches!(at(head, 54, 8), b"FAT12   " | b"FAT16   ");
    if ntfs {
        add("an NTFS file system", 3);
    }
    if exfat {
        add("an exFAT file system", 3);
    }
    if fat32 {
        add("a FAT32 file system", 82);
    } else if fat16 {
        add("a FAT12/FAT16 file system", 54);
    } else {
        // A FAT32 whose boot sector is damaged (a few bytes over it) keeps its backup copy,
        // sector 6 (of 512 or 4096 bytes): still a medium, never "empty" to a format.
        for backup in [6 * 512u64, 6 * 4096] {
            let b = backup as usize;
            if at(head, b + 510, 2) == [0x55, 0xaa] && at(head, b + 82, 8) == b"FAT32   " {
                add("a FAT32 file system (its backup boot sector)", backup + 82);
                break;
            }
        }
    }
    for page in [4096usize, 65536] {
        if matches!(at(head, page - 10, 10), b"SWAPSPACE2" | b"SWAP-SPACE") {
            add("Linux swap space", (page - 10) as u64);
        }
    }
    for sector in 0..4usize {
        if at(head, sector * 512, 8) == b"LABELONE" && at(head, sector * 512 + 24, 8) == b"LVM2 001"
        {
            add("an LVM2 physical volume", (sector * 512) as u64);
        }
    }
    if at(head, 32769, 5) == b"CD001" {
        add("an ISO 9660 file system", 32769);
    }
    let gpt = [512usize, 4096]
        .into_iter()
        .find(|o| at(head, *o, 8) == b"EFI PART");
    if let Some(o) = gpt {
        add("a GPT partition table", o as u64);
    }
    // A backup GPT header in the last sector (512- or 4096-byte sectors).
    for sector in [512usize, 4096] {
        if tail.len() >= sector && at(tail, tail.len() - sector, 8) == b"EFI PART" {
            add("a GPT backup header", size - sector as u64);
            break;
        }
    }
    // An MBR: the boot signature, not a file system's boot sector, and a
    // partition entry in use (a protective MBR comes with its GPT above).
    let used = (0..4).any(|i| {
        at(head, 446 + 16 * i + 4, 1)
            .first()
            .is_some_and(|t| *t != 0)
    });
    if boot_sig && !(ntfs || exfat || fat32 || fat16) && gpt.is_none() && used {
        add("an MBR partition table", 510);
    }
    found
}

/// Size of a regular file or block device (seeking to its end).
fn size_of(file: &File) -> io::Result<u64> {
    use std::io::Seek;
    let mut f = file;
    f.seek(io::SeekFrom::End(0))
}

/// The signatures on `file` (its first and last MiB).
pub fn signatures(file: &File) -> io::Result<Vec<Signature>> {
    let size = size_of(file)?;
    let mut head = vec![0u8; size.min(EDGE) as usize];
    file.read_exact_at(&mut head, 0)?;
    let tail_len = size.min(EDGE);
    let mut tail = vec![0u8; tail_len as usize];
    file.read_exact_at(&mut tail, size - tail_len)?;
    Ok(scan(&head, &tail, size))
}

/// "an ext4 file system and an MBR partition table".
pub fn describe(found: &[Signature]) -> String {
    let names: Vec<&str> = found.iter().map(|s| s.what.as_str()).collect();
    match names.as_slice() {
        [] => "nothing recognisable".into(),
        [one] => (*one).into(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// Refuse (exit 2) to overwrite `path` when it holds a file system or a
/// partition table, unless `force`; `doing` says what would overwrite it
/// ("formatting", "ingest"). Returns what was found (empty when nothing).
pub fn refuse_if_holds_data(
    path: &Path,
    force: bool,
    doing: &str,
) -> crate::Result<Vec<Signature>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let found = signatures(&file)
        .with_context(|| format!("reading the start and end of {}", path.display()))?;
    if !found.is_empty() && !force {
        return Err(usage(format!(
            "{} holds {}: {doing} would destroy it. Check that this is the right device \
             (`lsblk -f {}`), then pass --force",
            path.display(),
            describe(&found),
            path.display()
        )));
    }
    Ok(found)
}

/// Zero the first and last MiB of `file` (where every signature of
/// [`scan`] lives), and make it durable.
pub fn wipe(file: &File) -> io::Result<()> {
    let size = size_of(file)?;
    let zeros = vec![0u8; size.min(EDGE) as usize];
    file.write_all_at(&zeros, 0)?;
    file.write_all_at(&zeros, size - zeros.len() as u64)?;
    file.sync_data()
}

/// Whether writing `a` could change `b` (or reading `a` would read what is
/// being written to `b`): the same file (device and inode, so another
/// spelling, a symlink or a hard link of it too), the same block device, a
/// partition and the disk it is on, a block device and a file or directory
/// on a file system it holds (`/dev/sdb` and a medium mounted from
/// `/dev/sdb1`), or `a` inside directory `b`. A path that does not exist
/// yet overlaps only by lying inside `b`.
pub fn overlaps(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(mb) = std::fs::metadata(b) else {
        return false;
    };
    // A block device (by its number) and a file system's device (st_dev).
    let holds = |device: u64, fs: u64| {
        device == fs || whole_disk(fs) == Some(device) || whole_disk(device) == Some(fs)
    };
    if let Ok(ma) = std::fs::metadata(a) {
        let (ta, tb) = (ma.file_type(), mb.file_type());
        // A loop device is the image behind it: `fat:/dev/loop0` over `medium.img` is that
        // image, and a source or target that is either one is the medium.
        let same_file = |dev: &std::fs::Metadata, file: &std::fs::Metadata| {
            dev.file_type().is_block_device()
                && loop_backing(dev.rdev()).is_some_and(|(d, i)| (d, i) == (file.dev(), file.ino()))
        };
        if same_file(&ma, &mb) || same_file(&mb, &ma) {
            return true;
        }
        if ta.is_block_device() && tb.is_block_device() {
            // Two partitions of one disk: one volume only where their sectors meet (a
            // sibling partition was refused as "the medium, or lies on it").
            if let (Some(p), Some(q)) = (partition_range(ma.rdev()), partition_range(mb.rdev())) {
                if p.0 == q.0 {
                    return p.1 < q.2 && q.1 < p.2;
                }
            }
            if let (Some(x), Some(y)) = (loop_backing(ma.rdev()), loop_backing(mb.rdev())) {
                // Two windows of one image that share no byte are two volumes (`losetup
                // --offset --sizelimit` as partitions): the target was refused as the medium,
                // `--force` or not. Any doubt (a chain, a partition) is an overlap.
                let apart = match (loop_window(ma.rdev()), loop_window(mb.rdev())) {
                    (Some(p), Some(q)) => p.1 <= q.0 || q.1 <= p.0,
                    _ => false,
                };
                if x == y && !apart {
                    return true;
                }
            }
        }
        if ta.is_block_device() && !tb.is_block_device() && holds(ma.rdev(), mb.dev()) {
            return true;
        }
        if tb.is_block_device() && !ta.is_block_device() && holds(mb.rdev(), ma.dev()) {
            return true;
        }
        // A path on a file system that lives in an image file (mounted from a loop device
        // over it), and that image file or another loop device over it: writing the one
        // writes the other. A `dir:` medium mounted from `pt.img` was overwritten through a
        // second loop device over `pt.img`, and replaced by a `file:pt.img --force` target.
        let file_of = |m: &std::fs::Metadata| {
            if m.file_type().is_block_device() {
                loop_backing(m.rdev())
            } else {
                Some((m.dev(), m.ino()))
            }
        };
        let image_under = |m: &std::fs::Metadata| loop_backing(m.dev());
        for (x, y) in [(&ma, &mb), (&mb, &ma)] {
            if let (Some(f), Some(i)) = (file_of(x), image_under(y)) {
                if f == i {
                    return true;
                }
            }
        }
    }
    if mb.is_dir() {
        let Ok(dir) = b.canonicalize() else {
            return false;
        };
        // A loop device over a file in the directory writes that file.
        let a = match std::fs::metadata(a) {
            Ok(m) if m.file_type().is_block_device() => {
                loop_backing_file(m.rdev()).unwrap_or_else(|| a.to_path_buf())
            }
            _ => a.to_path_buf(),
        };
        let Some(f) = resolved(&a) else {
            return false;
        };
        return f.starts_with(&dir) || reached_another_way(&f, b);
    }
    let Ok(ma) = std::fs::metadata(a) else {
        return false;
    };
    if (ma.dev(), ma.ino()) == (mb.dev(), mb.ino()) {
        return true;
    }
    let (ta, tb) = (ma.file_type(), mb.file_type());
    if ta.is_block_device() && tb.is_block_device() {
        let (ra, rb) = (ma.rdev(), mb.rdev());
        return ra == rb || whole_disk(ra) == Some(rb) || whole_disk(rb) == Some(ra);
    }
    false
}

/// Most entries of a directory tree [`reached_another_way`] looks at (a
/// medium's `MGEAR` holds a few directories and files per capture).
const TREE_ENTRIES: usize = 100_000;

/// Whether absolute path `f`, or a directory it lies in, is directory `dir` or
/// something under it by (device, inode): a bind mount (or another mount of the
/// same file system) shows the tree under another path, where comparing paths
/// finds nothing. An ingest target in a bind mount of a `dir:` medium's capture
/// overwrote one of its segments.
fn reached_another_way(f: &Path, dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let tree = tree_inodes(dir);
    f.ancestors()
        .any(|p| std::fs::metadata(p).is_ok_and(|m| tree.contains(&(m.dev(), m.ino()))))
}

/// (device, inode) of `dir` and of everything under it, at most [`TREE_ENTRIES`].
pub fn tree_inodes(dir: &Path) -> std::collections::HashSet<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut tree = std::collections::HashSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(m) = std::fs::symlink_metadata(&d) else {
            continue;
        };
        tree.insert((m.dev(), m.ino()));
        if !m.is_dir() || tree.len() > TREE_ENTRIES {
            continue;
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            todo.extend(rd.flatten().map(|e| e.path()));
        }
    }
    tree
}

/// Another process that holds one of `files` (by device and inode) or `devices` (block
/// devices, by number) open for writing: its pid, its command line and the file. What a
/// program serving the medium (`qemu-nbd --offset`, an NBD server of a `dir:` medium's
/// segment) looks like from here: its export starts with no FAT boot sector to recognise,
/// and an ingest into it overwrote the shipment. From `/proc` (`fd/N` and `fdinfo/N`'s
/// flags); processes this one cannot inspect are skipped.
pub fn held_for_writing(
    files: &std::collections::HashSet<(u64, u64)>,
    devices: &[u64],
) -> Option<(u32, String, PathBuf)> {
    held_by(files, devices, |flags, _| {
        flags & nix::libc::O_ACCMODE as u32 != nix::libc::O_RDONLY as u32
    })
}

/// A virtual machine (QEMU) holding the file or block device `path` open, for reading too: a
/// proof boot's guest (`-snapshot` opens its disk read-only) reads the disk as an ingest
/// writes it, and reported a boot of bytes of two disks. Its pid and command.
pub fn vm_holding(path: &Path) -> Option<(u32, String)> {
    let (files, devices) = identities(path)?;
    let vm = |cmd: &str| {
        cmd.split_whitespace()
            .next()
            .and_then(|b| b.rsplit('/').next())
            .is_some_and(|b| b.starts_with("qemu-system") || b == "qemu-kvm")
    };
    held_by(&files, &devices, |_, cmd| vm(cmd)).map(|(pid, cmd, _)| (pid, cmd))
}

/// Another process holding one of `files` or `devices` open with the open flags and command
/// line `pick` takes.
fn held_by(
    files: &std::collections::HashSet<(u64, u64)>,
    devices: &[u64],
    pick: impl Fn(u32, &str) -> bool,
) -> Option<(u32, String, PathBuf)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for (pid, p) in other_processes() {
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(m) = std::fs::metadata(fd.path()) else {
                continue;
            };
            // A block device held is also the image behind it (`qemu-nbd --offset` over a
            // loop device of the medium image).
            let hit = if m.file_type().is_block_device() {
                devices.contains(&m.rdev())
                    || loop_backing(m.rdev()).is_some_and(|f| files.contains(&f))
            } else {
                files.contains(&(m.dev(), m.ino()))
            };
            if !hit {
                continue;
            }
            let flags = fd_flags(&p.path(), &fd.file_name());
            let cmd = cmdline(&p.path());
            if !pick(flags, &cmd) {
                continue;
            }
            let file = std::fs::read_link(fd.path()).unwrap_or_default();
            return Some((pid, cmd, file));
        }
    }
    None
}

/// Another process holding the file or block device `path` open for writing (a running
/// VM's disk image, a loop device over it), from [`held_for_writing`]: its pid and command.
pub fn writer_of(path: &Path) -> Option<(u32, String)> {
    let (files, devices) = identities(path)?;
    held_for_writing(&files, &devices).map(|(pid, cmd, _)| (pid, cmd))
}

/// Files by (device, inode).
type FileIds = std::collections::HashSet<(u64, u64)>;

/// The file (device and inode) and the block device `path` is, as [`held_by`] matches them:
/// a block device also as the file behind it when it is a loop device.
fn identities(path: &Path) -> Option<(FileIds, Vec<u64>)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(path).ok()?;
    let mut files = std::collections::HashSet::new();
    let mut devices = Vec::new();
    if m.file_type().is_block_device() {
        devices.push(m.rdev());
        files.extend(loop_backing(m.rdev()));
    } else {
        files.insert((m.dev(), m.ino()));
    }
    Some((files, devices))
}

/// The absolute path `p` names with its symlinks resolved, also for a path
/// that does not exist yet, however deep (where it would be created: its
/// longest existing prefix resolved, the rest appended); `None` when not even
/// the working directory resolves.
pub fn resolved(p: &Path) -> Option<PathBuf> {
    use std::path::Component;
    // The longest prefix that exists, resolved, and the rest as it will be made (directories
    // a `--state-dir` creates, several levels deep: only one was looked past, and a state
    // dir two levels into a `dir:` medium was written there).
    let parts: Vec<Component> = p.components().collect();
    for k in (0..=parts.len()).rev() {
        let prefix: PathBuf = parts[..k].iter().collect();
        let base = match prefix.as_os_str().is_empty() {
            true => PathBuf::from("."),
            false => prefix,
        };
        if let Ok(mut at) = base.canonicalize() {
            for c in &parts[k..] {
                match c {
                    Component::ParentDir => {
                        at.pop();
                    }
                    Component::Normal(n) => at.push(n),
                    _ => {}
                }
            }
            return Some(at);
        }
    }
    None
}

/// The file behind loop device `rdev` (or behind the loop device a partition
/// `rdev` is on): the path sysfs's `loop/backing_file` keeps for it. `None`
/// for any other device, an unbound loop device, or a backing file deleted
/// since it was attached (nothing can open it by that path any more).
///
/// A loop device over another loop device (`losetup -o OFFSET /dev/loop0`) is followed to
/// the file at the end of the chain: at an offset, its first sector is no FAT boot sector,
/// and an ingest into it overwrote the medium behind the inner loop.
pub fn loop_backing_file(rdev: u64) -> Option<PathBuf> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut rdev = rdev;
    let mut found = None;
    for _ in 0..8 {
        let Some(path) = loop_backing_once(rdev) else {
            break;
        };
        let next = std::fs::metadata(&path)
            .ok()
            .filter(|m| m.file_type().is_block_device())
            .map(|m| m.rdev());
        found = Some(path);
        match next {
            Some(r) => rdev = r,
            None => break,
        }
    }
    found
}

/// The file or device one loop device `rdev` (or the loop device a partition `rdev` is on)
/// reads, from sysfs: one step of [`loop_backing_file`]'s chain.
pub fn loop_backing_once(rdev: u64) -> Option<PathBuf> {
    let disk = whole_disk(rdev).unwrap_or(rdev);
    let (major, minor) = (nix::sys::stat::major(disk), nix::sys::stat::minor(disk));
    let named =
        std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/loop/backing_file"))
            .ok()?;
    let named = named.trim_end_matches('\n');
    (!named.is_empty() && !named.ends_with(" (deleted)")).then(|| PathBuf::from(named))
}

/// The bytes `[start, end)` of its image file that loop device `rdev` shows, from sysfs: for
/// a whole loop device straight over a regular file only (`None` for a partition, a loop
/// over another device, or where sysfs does not say).
fn loop_window(rdev: u64) -> Option<(u64, u64)> {
    if whole_disk(rdev).is_some() {
        return None;
    }
    let backing = loop_backing_once(rdev)?;
    if !std::fs::metadata(backing).ok()?.is_file() {
        return None;
    }
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let start = read("loop/offset")?;
    let sectors = read("size")?;
    Some((start, start.checked_add(sectors.checked_mul(512)?)?))
}

/// The read-write loop devices straight over the regular file `path` (`/dev/loopN`), from
/// sysfs: anything may write the file through them while nobody holds it open (an unmounted
/// loop device is no open file, so [`writer_of`] does not see it).
pub fn writable_loops_over(path: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(path) else {
        return Vec::new();
    };
    if !m.is_file() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let dir = e.path();
            let backing = std::fs::read_to_string(dir.join("loop/backing_file")).ok()?;
            let b = std::fs::metadata(backing.trim_end_matches('\n')).ok()?;
            let ro = std::fs::read_to_string(dir.join("ro")).ok()?;
            ((b.dev(), b.ino()) == (m.dev(), m.ino()) && ro.trim() == "0")
                .then(|| format!("/dev/{name}"))
        })
        .collect();
    out.sort();
    out
}

/// [`loop_backing_file`] as its (device, inode), which a moved image keeps.
pub fn loop_backing(rdev: u64) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(loop_backing_file(rdev)?).ok()?;
    Some((m.dev(), m.ino()))
}

/// An NBD export's place, one spelling for each: the socket's resolved path or the host and
/// port, and the export name.
pub fn nbd_endpoint(u: &mgear_nbd::NbdUrl) -> String {
    match u {
        mgear_nbd::NbdUrl::Unix { socket, export } => format!(
            "unix {} {export}",
            resolved(socket).unwrap_or_else(|| socket.clone()).display()
        ),
        mgear_nbd::NbdUrl::Tcp { host, port, export } => {
            let host = match host.as_str() {
                "localhost" | "::1" | "[::1]" => "127.0.0.1",
                h => h,
            };
            format!("tcp {host}:{port} {export}")
        }
    }
}

/// The socket inodes listening at an NBD URL on this host: a unix socket's path (as bound,
/// resolved) from `/proc/net/unix`, or a loopback/any-address TCP port from `/proc/net/tcp*`.
fn listening_inodes(url: &mgear_nbd::NbdUrl) -> Vec<u64> {
    let mut out = Vec::new();
    match url {
        mgear_nbd::NbdUrl::Unix { socket, .. } => {
            let want = resolved(socket);
            let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
            for l in table.lines().skip(1) {
                // Num RefCount Protocol Flags Type St Inode Path; listening: __SO_ACCEPTCON.
                let f: Vec<&str> = l.split_whitespace().collect();
                let (Some(flags), Some(inode), Some(path)) = (f.get(3), f.get(6), f.get(7)) else {
                    continue;
                };
                let listening = u32::from_str_radix(flags, 16).is_ok_and(|x| x & 0x10000 != 0);
                if listening && want.is_some() && resolved(Path::new(path)) == want {
                    out.extend(inode.parse::<u64>().ok());
                }
            }
        }
        mgear_nbd::NbdUrl::Tcp { host, port, .. } => {
            let local = ["localhost", "127.0.0.1", "::1", "[::1]"].contains(&host.as_str())
                || host.starts_with("127.");
            if !local {
                return out;
            }
            for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
                let table = std::fs::read_to_string(table).unwrap_or_default();
                for l in table.lines().skip(1) {
                    // sl local_address rem_address st ... uid timeout inode; LISTEN is 0A.
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let (Some(addr), Some(st), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                        continue;
                    };
                    let at = addr
                        .rsplit_once(':')
                        .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
                    if *st == "0A" && at == Some(*port) {
                        out.extend(inode.parse::<u64>().ok());
                    }
                }
            }
        }
    }
    out
}

/// The files and block devices (by [`disk_identity`], with the path it was opened by) that
/// the process serving `url` on this host holds open for reading: what a `qemu-nbd` or `nbdkit` export reads its disk from
/// (an image and its backing files). Empty when no process here serves it or it cannot be
/// inspected. Standard input, output and error are left out (a server started from a shell
/// may write them to a file).
pub fn served_files(url: &mgear_nbd::NbdUrl) -> Vec<((u64, u64), PathBuf)> {
    use std::os::unix::fs::FileTypeExt;
    let Some(proc) = server_of(url) else {
        return Vec::new();
    };
    let Ok(fds) = std::fs::read_dir(proc.join("fd")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for fd in fds.flatten() {
        if fd
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_none_or(|n| n < 3)
        {
            continue;
        }
        let Ok(m) = std::fs::metadata(fd.path()) else {
            continue;
        };
        if !(m.is_file() || m.file_type().is_block_device()) {
            continue;
        }
        // A pid file is written, never read.
        let flags = fd_flags(&proc, &fd.file_name());
        if flags & nix::libc::O_ACCMODE as u32 == nix::libc::O_WRONLY as u32 {
            continue;
        }
        let id = disk_identity(&m);
        if !out.iter().any(|(i, _)| *i == id) {
            out.push((id, std::fs::read_link(fd.path()).unwrap_or_default()));
        }
    }
    out
}

/// The `/proc/PID` directory of the process on this host listening at `url` (it holds one
/// of the listening sockets open).
fn server_of(url: &mgear_nbd::NbdUrl) -> Option<PathBuf> {
    let wanted: Vec<String> = listening_inodes(url)
        .iter()
        .map(|i| format!("socket:[{i}]"))
        .collect();
    if wanted.is_empty() {
        return None;
    }
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|p| {
        p.file_name().to_str()?.parse::<u32>().ok()?;
        let serves = std::fs::read_dir(p.path().join("fd"))
            .ok()?
            .flatten()
            .any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|t| wanted.iter().any(|w| t.as_os_str() == w.as_str()))
            });
        serves.then(|| p.path())
    })
}

/// The open flags of file descriptor `fd` of the process at `proc` (`/proc/PID`), from its
/// `fdinfo`; 0 where they cannot be read.
fn fd_flags(proc: &Path, fd: &std::ffi::OsStr) -> u32 {
    std::fs::read_to_string(proc.join("fdinfo").join(fd))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        .unwrap_or(0)
}

/// Whether the process serving `url` here serves a window of its image (`qemu-nbd
/// --offset`, an `offset=` image option), not the whole file: two such exports of one image
/// are two disks.
pub fn serves_a_window(url: &mgear_nbd::NbdUrl) -> bool {
    let Some(proc) = server_of(url) else {
        return false;
    };
    let cmd = std::fs::read(proc.join("cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmd).split('\0').any(|a| {
        a == "-o"
            || a.starts_with("--offset")
            || (a.len() > 2 && a.starts_with("-o") && a[2..].bytes().all(|b| b.is_ascii_digit()))
            || a.split(',')
                .any(|o| o.starts_with("offset=") || o.contains(".offset="))
    })
}

/// Whether the file at `volume` was made after the record at `record` was last written: the
/// record (which names a file by device and inode) is then about an earlier file whose inode
/// the file system gave to this one. `false` where birth times are not kept.
pub fn born_after(volume: &Path, record: &Path) -> bool {
    let born = std::fs::metadata(volume).and_then(|m| m.created());
    let written = std::fs::metadata(record).and_then(|m| m.modified());
    matches!((born, written), (Ok(b), Ok(w)) if b > w)
}

/// A file's or block device's identity as a disk: (device, inode) of a file, of the file
/// behind a loop device, else (device number, 0): the same disk however it is reached.
pub fn disk_identity(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if m.file_type().is_block_device() {
        loop_backing(m.rdev()).unwrap_or((m.rdev(), 0))
    } else {
        (m.dev(), m.ino())
    }
}

/// The disk a partition (device number `rdev`) is on, from sysfs; `None`
/// for a whole disk or where sysfs does not say.
/// A partition's disk and its sectors `[start, end)` (sysfs counts 512-byte sectors);
/// `None` for what is no partition.
fn partition_range(rdev: u64) -> Option<(u64, u64, u64)> {
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let dir = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join(f))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let (start, size) = (read("start")?, read("size")?);
    Some((whole_disk(rdev)?, start, start.checked_add(size)?))
}

fn whole_disk(rdev: u64) -> Option<u64> {
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let dir = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if !dir.join("partition").exists() {
        return None;
    }
    let parent = std::fs::read_to_string(dir.join("../dev")).ok()?;
    let (ma, mi) = parent.trim().split_once(':')?;
    Some(nix::sys::stat::makedev(ma.parse().ok()?, mi.parse().ok()?))
}

/// Other processes that hold the terminal device `port` (an appliance's console) open, and
/// may so read the appliance's answers before mgear does (a `screen` left attached): their
/// pid and command. The simulator that owns a pty (it holds the master with this pty's index,
/// and the slave unread) is not one.
pub fn console_readers(port: &Path) -> Vec<(u32, String)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(m) = std::fs::metadata(port) else {
        return Vec::new();
    };
    if !m.file_type().is_char_device() {
        return Vec::new();
    }
    let index = std::fs::canonicalize(port).ok().and_then(|p| {
        let s = p.to_str()?.strip_prefix("/dev/pts/")?.to_string();
        s.parse::<u32>().ok()
    });
    let mut out = Vec::new();
    for (pid, p) in other_processes() {
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let (mut holds, mut owns) = (false, false);
        for fd in fds.flatten() {
            let Ok(fm) = std::fs::metadata(fd.path()) else {
                continue;
            };
            if fm.file_type().is_char_device() && fm.rdev() == m.rdev() {
                holds = true;
            }
            if let Some(i) = index {
                let info = std::fs::read_to_string(p.path().join("fdinfo").join(fd.file_name()))
                    .unwrap_or_default();
                let pty_of = info
                    .lines()
                    .find_map(|l| l.strip_prefix("tty-index:"))
                    .and_then(|v| v.trim().parse::<u32>().ok());
                owns |= pty_of == Some(i);
            }
        }
        if holds && !owns {
            out.push((pid, cmdline(&p.path())));
        }
    }
    out
}

/// Every process but this one: its pid and its `/proc` entry.
fn other_processes() -> impl Iterator<Item = (u32, std::fs::DirEntry)> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(move |p| {
            let pid = p.file_name().to_str()?.parse::<u32>().ok()?;
            (pid != me).then_some((pid, p))
        })
}

/// A process's command line, its arguments joined by spaces, on one line (an argument's
/// newlines, a `python3 -c` script, broke the one-line warning that quotes it).
fn cmdline(proc: &Path) -> String {
    std::fs::read(proc.join("cmdline"))
        .map(|c| {
            String::from_utf8_lossy(&c)
                .split('\0')
                .filter(|a| !a.is_empty())
                .map(|a| a.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;

    /// A process reading a console (as `screen` does) is named; one that owns the pty (holds
    /// its master, as the simulator does, and the slave unread) is not.
    #[test]
    fn a_console_held_open_by_another_process_is_named() {
        use nix::libc;
        use std::os::fd::FromRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        // SAFETY: plain libc pty calls on a descriptor this test owns; the name buffer is
        // NUL-terminated by ptsname_r on success.
        let (master, name) = unsafe {
            let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(fd >= 0);
            assert_eq!(libc::grantpt(fd), 0);
            assert_eq!(libc::unlockpt(fd), 0);
            let mut buf = [0 as libc::c_char; 64];
            assert_eq!(libc::ptsname_r(fd, buf.as_mut_ptr(), buf.len()), 0);
            let name = std::ffi::CStr::from_ptr(buf.as_ptr())
                .to_str()
                .unwrap()
                .to_string();
            (std::fs::File::from_raw_fd(fd), name)
        };
        let open_slave = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(&name)
                .unwrap()
        };
        let mut reader = Command::new("sleep")
            .arg("30")
            .stdin(open_slave())
            .spawn()
            .unwrap();
        let mut owner = Command::new("sleep")
            .arg("31")
            .stdin(master.try_clone().unwrap())
            .stdout(open_slave())
            .spawn()
            .unwrap();
        let found = console_readers(Path::new(&name));
        let (r, o) = (reader.id(), owner.id());
        for c in [&mut reader, &mut owner] {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(found.contains(&(r, "sleep 30".to_string())), "{found:?}");
        assert!(!found.iter().any(|(pid, _)| *pid == o), "{found:?}");
        assert!(console_readers(Path::new("/etc/hostname")).is_empty());
        drop(master);
    }

    /// A record names a file by device and inode; a file made after the record was written
    /// (given a deleted file's inode) is not the file it is about.
    #[test]
    fn a_file_born_after_a_record_is_not_the_file_it_names() {
        let d = tempfile::tempdir().unwrap();
        let (vol, rec) = (d.path().join("v.raw"), d.path().join("v.rec"));
        std::fs::write(&vol, b"volume").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&rec, b"record").unwrap();
        if std::fs::metadata(&vol).and_then(|m| m.created()).is_err() {
            eprintln!("no birth times on this file system: nothing to check");
            return;
        }
        assert!(!born_after(&vol, &rec));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::remove_file(&vol).unwrap();
        std::fs::write(&vol, b"another file").unwrap();
        assert!(born_after(&vol, &rec));
    }

    fn names(head: &[u8], tail: &[u8]) -> Vec<String> {
        scan(head, tail, 1 << 30)
            .into_iter()
            .map(|s| s.what)
            .collect()
    }

    #[test]
    fn a_file_overlaps_itself_under_any_name_and_what_lies_in_a_directory() {
        let d = tempfile::tempdir().unwrap();
        let (m, other) = (d.path().join("m.img"), d.path().join("other.img"));
        std::fs::write(&m, b"medium").unwrap();
        std::fs::write(&other, b"medium").unwrap();
        std::fs::hard_link(&m, d.path().join("hard.img")).unwrap();
        std::os::unix::fs::symlink(&m, d.path().join("soft.img")).unwrap();
        let spelled = d.path().join(".").join("sub/../m.img");
        std::fs::create_dir(d.path().join("sub")).unwrap();
        for same in [
            &m,
            &d.path().join("hard.img"),
            &d.path().join("soft.img"),
            &spelled,
        ] {
            assert!(overlaps(same, &m), "{}", same.display());
        }
        // Equal bytes are not the same file; what does not exist is not either.
        assert!(!overlaps(&other, &m));
        assert!(!overlaps(&d.path().join("new.img"), &m));
        assert!(!overlaps(&m, &d.path().join("gone.img")));
        // Inside a directory, existing or to be created, and not outside it.
        assert!(overlaps(&d.path().join("sub/new.raw"), d.path()));
        assert!(overlaps(&m, d.path()));
        assert!(!overlaps(
            &d.path().join("sub/new.raw"),
            &d.path().join("other")
        ));
        assert!(!overlaps(Path::new("/dev/null"), d.path()));
    }

    /// A loop device over an image, detached when dropped; `None` where
    /// loop devices cannot be set up (not root, no loop driver).
    pub(crate) struct Loop(pub std::path::PathBuf);

    impl Loop {
        pub(crate) fn over(image: &Path) -> Option<Loop> {
            let out = std::process::Command::new("losetup")
                .args(["--find", "--show"])
                .arg(image)
                .output()
                .ok()?;
            let dev = String::from_utf8(out.stdout).ok()?;
            (out.status.success() && !dev.trim().is_empty()).then(|| Loop(dev.trim().into()))
        }
    }

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .arg("-d")
                .arg(&self.0)
                .status();
        }
    }

    #[test]
    fn a_loop_device_is_the_image_behind_it() {
        let d = tempfile::tempdir().unwrap();
        let (m, other) = (d.path().join("m.img"), d.path().join("other.img"));
        std::fs::write(&m, vec![0u8; 1 << 20]).unwrap();
        std::fs::write(&other, vec![0u8; 1 << 20]).unwrap();
        let (Some(a), Some(b)) = (Loop::over(&m), Loop::over(&m)) else {
            eprintln!("no loop device here (needs root and the loop driver): nothing to check");
            return;
        };
        assert!(overlaps(&a.0, &m));
        assert!(overlaps(&m, &a.0));
        assert!(overlaps(&a.0, &b.0), "two loop devices over one image");
        assert!(!overlaps(&a.0, &other));
        assert!(!overlaps(&other, &a.0));
        // A loop over that loop, at an offset (no FAT boot sector at its start): the image.
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show", "--offset", "4096"])
            .arg(&a.0)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let c = Loop(String::from_utf8(out.stdout).unwrap().trim().into());
        assert!(overlaps(&c.0, &m), "a loop over a loop over the image");
        assert!(overlaps(&m, &c.0));
        assert!(!overlaps(&c.0, &other));
        drop(c);
    }

    /// Two loop devices over disjoint byte ranges of one image are two volumes; ranges that
    /// share a byte are one.
    #[test]
    fn loop_windows_of_one_image_overlap_only_where_they_share_bytes() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("whole.img");
        std::fs::write(&img, vec![0u8; 8 << 20]).unwrap();
        let window = |offset: &str, size: &str| {
            let out = std::process::Command::new("losetup")
                .args(["--find", "--show", "--offset", offset, "--sizelimit", size])
                .arg(&img)
                .output()
                .ok()
                .filter(|o| o.status.success())?;
            Some(Loop(String::from_utf8(out.stdout).ok()?.trim().into()))
        };
        let (Some(a), Some(b), Some(c)) = (
            window("1048576", "2097152"),
            window("4194304", "2097152"),
            window("2097152", "4194304"),
        ) else {
            eprintln!("no loop device here (needs root and the loop driver): nothing to check");
            return;
        };
        assert!(!overlaps(&a.0, &b.0), "1-3 MiB and 4-6 MiB");
        assert!(!overlaps(&b.0, &a.0));
        assert!(overlaps(&a.0, &c.0), "1-3 MiB and 2-6 MiB");
        assert!(overlaps(&c.0, &b.0), "2-6 MiB and 4-6 MiB");
        assert!(overlaps(&a.0, &img), "the image itself holds every window");
    }

    #[test]
    fn a_loop_device_over_a_file_in_a_directory_or_a_bind_mount_of_it_lies_in_it() {
        let d = tempfile::tempdir().unwrap();
        let medium = d.path().join("MGEAR");
        std::fs::create_dir_all(medium.join("d3/G0001")).unwrap();
        let seg = medium.join("d3/G0001/SEG-00000");
        std::fs::write(&seg, vec![7u8; 1 << 20]).unwrap();
        let outside = d.path().join("other.img");
        std::fs::write(&outside, vec![0u8; 1 << 20]).unwrap();
        let Some(over_seg) = Loop::over(&seg) else {
            eprintln!("no loop device here (needs root and the loop driver): nothing to check");
            return;
        };
        assert!(
            overlaps(&over_seg.0, &medium),
            "a loop device over a segment"
        );
        let over_other = Loop::over(&outside).unwrap();
        assert!(!overlaps(&over_other.0, &medium));

        // The capture's directory bind-mounted elsewhere: the same inodes.
        let mnt = tempfile::tempdir().unwrap();
        let bound = std::process::Command::new("mount")
            .arg("--bind")
            .arg(medium.join("d3"))
            .arg(mnt.path())
            .status()
            .is_ok_and(|s| s.success());
        if !bound {
            eprintln!("no bind mount here (needs root): the rest is not checked");
            return;
        }
        let seen = (
            overlaps(&mnt.path().join("G0001/SEG-00000"), &medium),
            overlaps(&mnt.path().join("G0001/new.raw"), &medium),
            overlaps(&mnt.path().join("new.raw"), &medium),
        );
        let _ = std::process::Command::new("umount")
            .arg(mnt.path())
            .status();
        assert_eq!(
            seen,
            (true, true, true),
            "paths in a bind mount of the medium"
        );
        assert!(!overlaps(&mnt.path().join("new.raw"), &medium), "unmounted");
    }

    #[test]
    fn a_block_device_overlaps_the_files_on_its_file_system() {
        use nix::sys::stat::{mknod, Mode, SFlag};
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let fs_dev = std::fs::metadata(d.path()).unwrap().dev();
        std::fs::write(d.path().join("m.img"), b"medium").unwrap();
        // A device node for the file system the directory is on (root may make
        // one anywhere), and one for a device that holds nothing here.
        // The nodes live apart: a path inside the directory overlaps it anyway.
        let n = tempfile::tempdir().unwrap();
        let node = n.path().join("fs.node");
        mknod(
            &node,
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o600),
            fs_dev,
        )
        .unwrap();
        let other = n.path().join("other.node");
        let unrelated = nix::sys::stat::makedev(7, 250);
        mknod(
            &other,
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o600),
            unrelated,
        )
        .unwrap();
        assert!(overlaps(&node, d.path()));
        assert!(overlaps(&node, &d.path().join("m.img")));
        assert!(overlaps(&d.path().join("m.img"), &node));
        assert!(!overlaps(&other, d.path()));
        assert!(!overlaps(&d.path().join("m.img"), &other));
    }

    #[test]
    fn blank_holds_nothing() {
        assert!(names(&vec![0u8; 1 << 20], &vec![0u8; 1 << 20]).is_empty());
        assert!(names(&[], &[]).is_empty());
    }

    #[test]
    fn finds_each_magic() {
        let mut h = vec![0u8; 1 << 20];
        h[1080..1082].copy_from_slice(&[0x53, 0xef]);
        h[0x460] = 0x40;
        assert_eq!(names(&h, &[]), ["an ext4 file system"]);
        let mut h = vec![0u8; 1 << 20];
        h[0..4].copy_from_slice(b"XFSB");
        h[65600..65608].copy_from_slice(b"_BHRfS_M");
        assert_eq!(
            names(&h, &[]),
            ["an XFS file system", "a btrfs file system"]
        );
        let mut h = vec![0u8; 4096];
        h[4086..4096].copy_from_slice(b"SWAPSPACE2");
        assert_eq!(names(&h, &[]), ["Linux swap space"]);
        let mut h = vec![0u8; 4096];
        h[512..520].copy_from_slice(b"LABELONE");
        h[536..544].copy_from_slice(b"LVM2 001");
        assert_eq!(names(&h, &[]), ["an LVM2 physical volume"]);
        // An MBR with one partition, and a GPT (whose protective MBR is not
        // reported twice) with its backup header at the end.
        let mut h = vec![0u8; 4096];
        h[510..512].copy_from_slice(&[0x55, 0xaa]);
        h[446 + 4] = 0x83;
        assert_eq!(names(&h, &[]), ["an MBR partition table"]);
        h[446 + 4] = 0xee;
        h[512..520].copy_from_slice(b"EFI PART");
        let mut t = vec![0u8; 4096];
        t[4096 - 512..4096 - 504].copy_from_slice(b"EFI PART");
        assert_eq!(
            names(&h, &t),
            ["a GPT partition table", "a GPT backup header"]
        );
        // A FAT32 whose boot sector lost its signature keeps its backup at sector 6: a medium
        // still, which a format without --force must not take for an empty file.
        let mut h = vec![0u8; 1 << 16];
        for b in [0usize, 6 * 512] {
            h[b + 82..b + 90].copy_from_slice(b"FAT32   ");
            h[b + 510..b + 512].copy_from_slice(&[0x55, 0xaa]);
        }
        assert_eq!(names(&h, &[]), ["a FAT32 file system"]);
        h[510..512].copy_from_slice(&[0, 0]);
        assert_eq!(
            names(&h, &[]),
            ["a FAT32 file system (its backup boot sector)"]
        );
    }

    /// Real mkfs output, where the tools are installed (util-linux,
    /// e2fsprogs, dosfstools, cryptsetup are in ./test.sh's list).
    #[test]
    fn finds_what_mkfs_made_and_wipe_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        for (tool, args, what) in [
            ("mkfs.ext4", &["-q", "-F"][..], "an ext4 file system"),
            ("mkfs.fat", &["-F", "32"][..], "a FAT32 file system"),
            ("mkswap", &[][..], "Linux swap space"),
            ("mkfs.xfs", &["-q", "-f"][..], "an XFS file system"),
        ] {
            let p = dir.path().join(format!("{tool}.img"));
            File::create(&p).unwrap().set_len(400 << 20).unwrap();
            let ok = Command::new(tool).args(args).arg(&p).output();
            let Ok(out) = ok else {
                eprintln!("{tool} not installed: skipped");
                continue;
            };
            assert!(
                out.status.success(),
                "{tool}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&p)
                .unwrap();
            let found = signatures(&f).unwrap();
            assert!(found.iter().any(|s| s.what == what), "{tool}: {found:?}");
            let e = refuse_if_holds_data(&p, false, "formatting").unwrap_err();
            assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE);
            assert!(e.to_string().contains(what), "{e}");
            assert_eq!(refuse_if_holds_data(&p, true, "formatting").unwrap(), found);
            wipe(&f).unwrap();
            assert!(signatures(&f).unwrap().is_empty(), "{tool} after wipe");
        }
    }
}
