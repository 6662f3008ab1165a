//! cpio "newc" archives: the format of Linux initramfs images.
//!
//! The writer builds the sample disk's initramfs deterministically (fixed inode
//! numbers and mtimes, so equal inputs give equal bytes) and can create device
//! nodes such as `/dev/console` without root. The reader lists member names of
//! an initramfs for the readiness check; it walks concatenated archives (early
//! microcode + main image) and reports a compressed member it cannot read.
//!
//! ## Byte layout of one member
//! ```text
//! "070701"                      magic (6 ASCII bytes; "070702" = same with checksum)
//! 13 fields, 8 ASCII hex digits each:
//!   ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
//! name bytes + NUL              namesize counts the NUL
//! zero padding                  so that header(110) + name is a multiple of 4
//! file data (filesize bytes)    symlink members hold the link target here
//! zero padding                  to a multiple of 4
//! ```
//! The archive ends with a member named `TRAILER!!!`; the kernel accepts
//! several archives back to back, separated by zero padding.

use crate::{BootError, Result};

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;

/// File type bits of `mode` (from `<sys/stat.h>`).
pub const S_IFDIR: u32 = 0o040_000;
/// Regular file.
pub const S_IFREG: u32 = 0o100_000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120_000;
/// Character device.
pub const S_IFCHR: u32 = 0o020_000;

/// Writes a newc archive into memory.
#[derive(Debug, Default)]
pub struct Writer {
    out: Vec<u8>,
    next_ino: u32,
}

fn pad4(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
}

impl Writer {
    /// An empty archive.
    pub fn new() -> Self {
        Writer {
            out: Vec::new(),
            next_ino: 1,
        }
    }

    fn member(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> Result<()> {
        let filesize = u32::try_from(data.len()).map_err(|_| {
            BootError::Format(format!(
                "{name}: {} bytes is too large for cpio",
                data.len()
            ))
        })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            filesize,
            0,
            0,
            rdev.0,
            rdev.1,
            (name.len() + 1) as u32,
            0,
        ];
        self.out.extend_from_slice(MAGIC);
        for f in fields {
            self.out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        pad4(&mut self.out);
        self.out.extend_from_slice(data);
        pad4(&mut self.out);
        Ok(())
    }

    /// Add a directory (`name` without leading slash, e.g. `bin`).
    pub fn dir(&mut self, name: &str) -> Result<()> {
        self.member(name, S_IFDIR | 0o755, (0, 0), &[])
    }

    /// Add a regular file with permission bits `perm` (e.g. 0o755).
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<()> {
        self.member(name, S_IFREG | (perm & 0o7777), (0, 0), data)
    }

    /// Add a symbolic link `name` -> `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> Result<()> {
        self.member(name, S_IFLNK | 0o777, (0, 0), target.as_bytes())
    }

    /// Add a character device node.
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> Result<()> {
        self.member(name, S_IFCHR | (perm & 0o7777), (major, minor), &[])
    }

    /// Append the trailer and return the archive bytes.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        self.member("TRAILER!!!", 0, (0, 0), &[])?;
        // The kernel reads initramfs in 512-byte blocks like the cpio tool writes.
        while !self.out.len().is_multiple_of(512) {
            self.out.push(0);
        }
        Ok(self.out)
    }
}

/// What [`list`] found in an initramfs image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Member names (as stored, without leading `/` or `./`).
    pub names: Vec<String>,
    /// Compression of a trailing member that could not be read (e.g. "gzip", "zstd").
    pub unreadable: Option<String>,
}

/// Name of a compression format recognised by its magic bytes.
pub fn compression_of(b: &[u8]) -> Option<&'static str> {
    if b.starts_with(&[0x1F, 0x8B]) {
        Some("gzip")
    } else if b.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
        Some("zstd")
    } else if b.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0]) {
        Some("xz")
    } else if b.starts_with(&[0x02, 0x21, 0x4C, 0x18]) {
        Some("lz4")
    } else if b.starts_with(b"BZh") {
        Some("bzip2")
    } else if b.starts_with(&[0x5D, 0, 0]) {
        Some("lzma")
    } else {
        None
    }
}

fn hex_field(h: &[u8], i: usize) -> Result<usize> {
    let s = &h[6 + i * 8..6 + (i + 1) * 8];
    std::str::from_utf8(s)
        .ok()
        .and_then(|s| usize::from_str_radix(s, 16).ok())
        .ok_or_else(|| BootError::Format("cpio header has a non-hex field".into()))
}

/// List the member names of an (uncompressed, possibly concatenated) newc archive.
///
/// Stops at the first compressed segment and names its compression in
/// [`Listing::unreadable`]; errors on a truncated or malformed header.
pub fn list(data: &[u8]) -> Result<Listing> {
    let mut out = Listing::default();
    let mut pos = 0usize;
    loop {
        // Skip the zero padding between concatenated archives.
        while pos < data.len() && data[pos] == 0 {
            pos += 1;
        }
        if pos >= data.len() {
            return Ok(out);
        }
        let rest = &data[pos..];
        if !(rest.starts_with(b"070701") || rest.starts_with(b"070702")) {
            out.unreadable = Some(compression_of(rest).unwrap_or("unknown format").to_string());
            return Ok(out);
        }
        if rest.len() < HEADER_LEN {
            return Err(BootError::Format(format!(
                "cpio header truncated at offset {pos}"
            )));
        }
        let filesize = hex_field(rest, 6)?;
        let namesize = hex_field(rest, 11)?;
        let name_end = HEADER_LEN
            .checked_add(namesize)
            .filter(|&e| e <= rest.len() && namesize > 0)
            .ok_or_else(|| BootError::Format(format!("cpio name truncated at offset {pos}")))?;
        let name = String::from_utf8_lossy(&rest[HEADER_LEN..name_end - 1]).into_owned();
        let data_start = name_end.div_ceil(4) * 4;
        let next = data_start
            .checked_add(filesize)
            .map(|e| e.div_ceil(4) * 4)
            .filter(|&e| e <= rest.len() || data_start + filesize <= rest.len())
            .ok_or_else(|| {
                BootError::Format(format!("cpio member {name:?} truncated at offset {pos}"))
            })?;
        pos += next.min(rest.len());
        if name != "TRAILER!!!" {
            let n = name.trim_start_matches("./").trim_start_matches('/');
            out.names.push(n.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_deterministic() {
        let build = || {
            let mut w = Writer::new();
            w.dir("bin").unwrap();
            w.file("bin/busybox", 0o755, b"\x7fELF...").unwrap();
            w.symlink("bin/sh", "busybox").unwrap();
            w.char_dev("dev/console", 0o600, 5, 1).unwrap();
            w.finish().unwrap()
        };
        let a = build();
        assert_eq!(a, build());
        assert_eq!(a.len() % 512, 0);
        let l = list(&a).unwrap();
        assert_eq!(l.names, ["bin", "bin/busybox", "bin/sh", "dev/console"]);
        assert_eq!(l.unreadable, None);
    }

    #[test]
    fn concatenated_then_compressed() {
        let mut w = Writer::new();
        w.file("kernel/x86/microcode/GenuineIntel.bin", 0o644, b"uc")
            .unwrap();
        let mut a = w.finish().unwrap();
        a.extend_from_slice(&[0x28, 0xB5, 0x2F, 0xFD, 1, 2, 3]);
        let l = list(&a).unwrap();
        assert_eq!(l.names, ["kernel/x86/microcode/GenuineIntel.bin"]);
        assert_eq!(l.unreadable.as_deref(), Some("zstd"));
    }

    #[test]
    fn truncated_and_garbage_are_errors_not_panics() {
        let mut w = Writer::new();
        w.file("a", 0o644, &[7u8; 1000]).unwrap();
        let a = w.finish().unwrap();
        assert!(list(&a[..300]).is_err());
        assert!(list(&a[..50]).is_err());
        let mut g = a.clone();
        g[6 + 6 * 8] = b'Z';
        assert!(list(&g).is_err());
        let mut huge = a.clone();
        huge[6 + 11 * 8..6 + 12 * 8].copy_from_slice(b"FFFFFFFF");
        assert!(list(&huge).is_err());
    }
}
