//! Capture sources: what `--source` can name.
//!
//! - a regular file (a raw disk image, a snapshot) or a block device
//!   (`/dev/sdb`, an LVM snapshot): size by seeking to the end, which Linux
//!   answers for block devices as BLKGETSIZE64 does;
//! - `nbd://HOST[:PORT]/EXPORT` or `nbd+unix:///EXPORT?socket=PATH`: any NBD
//!   export (qemu-nbd for qcow2/vmdk/vhdx, nbdkit for VMware and clouds).
//!
//! Reads are positional and must return exactly what was asked for: a source
//! that ends early shrank while we were reading it, and capture stops with an
//! error rather than storing a disk that never existed.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

pub mod nbd;

/// A disk to capture.
#[allow(clippy::len_without_is_empty)] // a disk of size zero is refused before capture
pub trait Source: Send {
    /// Size in bytes, as seen when the capture started.
    fn len(&self) -> u64;
    /// Fill `buf` from byte `offset`; an early end is an error (the source shrank).
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> anyhow::Result<()>;
    /// Whether `[offset, offset+len)` is known to read as zeros without reading it
    /// (a hole reported by the source); `false` when unknown.
    fn is_hole(&mut self, _offset: u64, _len: u64) -> anyhow::Result<bool> {
        Ok(false)
    }
    /// Human description for messages.
    fn describe(&self) -> String;
    /// A handle several threads can read through at once, if the source
    /// allows it (files and block devices: positional reads). Capture then
    /// reads on every encoder thread instead of one reader thread.
    fn concurrent(&self) -> Option<Arc<dyn ConcurrentRead>> {
        None
    }
}

/// Positional reads from many threads at once.
pub trait ConcurrentRead: Send + Sync {
    /// As [`Source::read_exact_at`].
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> anyhow::Result<()>;
}

/// Open `--source` (parsed by `crate::spec`).
pub fn open(spec: &str) -> anyhow::Result<Box<dyn Source>> {
    match crate::spec::Source::parse(spec)? {
        crate::spec::Source::Nbd(url) => nbd::open(&url),
        crate::spec::Source::Path(p) => Ok(Box::new(FileSource::open(p)?)),
    }
}

/// A regular file or block device.
pub struct FileSource {
    inner: Arc<OpenFile>,
}

/// The open file behind a [`FileSource`], shared by the reading threads.
struct OpenFile {
    path: PathBuf,
    file: File,
    len: u64,
}

impl FileSource {
    /// Open read-only and take the size.
    pub fn open(path: PathBuf) -> anyhow::Result<Self> {
        // A directory opens fine and "seeks" to 2^63: refuse it by name.
        if std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            return Err(crate::exit::usage(format!(
                "source {} is a directory, not a disk: give a block device (e.g. /dev/sdb), \
                 a raw disk image file, or an NBD export (nbd://HOST:PORT/EXPORT)",
                path.display()
            )));
        }
        let mut file =
            File::open(&path).with_context(|| format!("cannot open source {}", path.display()))?;
        let len = file
            .seek(SeekFrom::End(0))
            .with_context(|| format!("cannot find the size of source {}", path.display()))?;
        Ok(FileSource {
            inner: Arc::new(OpenFile { path, file, len }),
        })
    }
}

impl ConcurrentRead for OpenFile {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let n = self
                .file
                .read_at(&mut buf[done..], at)
                .with_context(|| format!("reading source {} at byte {at}", self.path.display()))?;
            if n == 0 {
                anyhow::bail!(
                    "source {} shrank during capture: it was {} bytes when the capture started \
                     but ends at byte {at}; capture from a snapshot or a disk that is not being resized",
                    self.path.display(),
                    self.len
                );
            }
            done += n;
        }
        Ok(())
    }
}

/// Whether `file` has no data in `offset..offset + len` (a hole of a sparse
/// file: it reads as zeros without being stored). Asks the file system with
/// `SEEK_DATA`; where it cannot say (block devices, old file systems), the
/// answer is "not a hole" and the caller reads the bytes as usual.
pub fn range_is_hole(file: &File, offset: u64, len: u64) -> bool {
    use std::os::fd::AsFd;
    let Ok(at) = i64::try_from(offset) else {
        return false;
    };
    // Past the current end is no hole: the file shrank, and reading there
    // must say so instead of storing zeros.
    let end = offset.saturating_add(len);
    if file.metadata().map_or(true, |m| m.len() < end) {
        return false;
    }
    match nix::unistd::lseek(file.as_fd(), at, nix::unistd::Whence::SeekData) {
        Ok(next) => u64::try_from(next).is_ok_and(|n| n >= end),
        // No data at or after `offset`: the rest of the file is a hole.
        Err(nix::errno::Errno::ENXIO) => true,
        Err(_) => false,
    }
}

impl Source for FileSource {
    fn len(&self) -> u64 {
        self.inner.len
    }

    fn is_hole(&mut self, offset: u64, len: u64) -> anyhow::Result<bool> {
        // Past the end is not a hole: reading there must report the shrink.
        Ok(offset.saturating_add(len) <= self.inner.len
            && range_is_hole(&self.inner.file, offset, len))
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        self.inner.read_exact_at(offset, buf)
    }

    fn describe(&self) -> String {
        self.inner.path.display().to_string()
    }

    fn concurrent(&self) -> Option<Arc<dyn ConcurrentRead>> {
        Some(self.inner.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_source_reads_and_detects_shrink() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.raw");
        std::fs::write(&p, vec![7u8; 10_000]).unwrap();
        let mut s = FileSource::open(p.clone()).unwrap();
        assert_eq!(s.len(), 10_000);
        let mut buf = vec![0u8; 4096];
        s.read_exact_at(4096, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(5000)
            .unwrap();
        let err = s.read_exact_at(4096, &mut buf).unwrap_err();
        assert!(err.to_string().contains("shrank"), "{err}");
    }

    #[test]
    fn a_directory_is_no_source() {
        let dir = tempfile::tempdir().unwrap();
        let Err(e) = FileSource::open(dir.path().to_path_buf()) else {
            panic!("a directory opened as a source")
        };
        assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE);
        assert!(e.to_string().contains("is a directory"), "{e}");
    }

    #[test]
    fn holes_of_sparse_files_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse.raw");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 4 << 20).unwrap();
        f.sync_all().unwrap();
        let mut s = FileSource::open(p).unwrap();
        assert!(s.is_hole(0, 1 << 20).unwrap());
        assert!(!s.is_hole(4 << 20, 1 << 20).unwrap(), "data block");
        assert!(
            !s.is_hole(3 << 20, 2 << 20).unwrap(),
            "range reaching the data"
        );
        assert!(s.is_hole(6 << 20, 2 << 20).unwrap(), "hole up to the end");
        assert!(!s.is_hole(7 << 20, 2 << 20).unwrap(), "past the end");
        // Shrunk below the range: not a hole, so the read reports the shrink.
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("sparse.raw"))
            .unwrap()
            .set_len(5 << 20)
            .unwrap();
        assert!(!s.is_hole(6 << 20, 1 << 20).unwrap(), "shrunk file");
        let mut buf = vec![0u8; 1 << 20];
        let err = s.read_exact_at(6 << 20, &mut buf).unwrap_err();
        assert!(err.to_string().contains("shrank"), "{err}");
    }
}
