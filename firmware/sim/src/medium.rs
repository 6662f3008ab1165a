//! The simulated medium: a raw image file standing in for the board's SD
//! card behind USB mass storage. Block-addressed like the real device so the
//! firmware core cannot tell the difference.
//!
//! It also stands in for a medium with hardware write protection (an eMMC's
//! power-on write-protect groups): [`BlockDevice::set_write_protect`] makes
//! every later block write fail with [`HwError::WriteProtected`] until it is
//! released or the simulator restarts (a power cycle), so the core's seal,
//! boot and erase paths that drive it are exercised end to end.
//!
//! Large writes skip the page cache and do not wait for the disk: the
//! 4 KiB-aligned part of a write of at least [`DIRECT_MIN`] bytes is copied
//! and queued for I/O threads that write it with `O_DIRECT`
//! ([`crate::write_behind`]: the device's write cache and command queue).
//! Through the page cache a capture's bytes were copied once more and
//! written out again at the next flush, where the host's direct `fat:`
//! capture writes them once (`O_DIRECT` on an I/O thread); waiting for
//! each direct write held up the NBD server's next request. Small and
//! unaligned pieces (FAT sectors, directory blocks, the ragged ends of a
//! transfer) and every read keep to the page cache, after any queued write
//! they overlap: reads want the kernel's read-ahead (seal and arrival read
//! the image front to back while hashing), and the kernel keeps both
//! descriptors coherent (a direct write drops the cached pages it covers).
//! Durability is unchanged: [`BlockDevice::flush`] waits for the queue and
//! then calls `fdatasync` on the image, which covers both descriptors'
//! writes (and the device's write cache). Where the file system refuses
//! `O_DIRECT` (tmpfs) or a direct write (`EINVAL`), the page cache does
//! everything.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use image_format::store::aligned::{reopen_direct, ALIGN};
use mgear_firmware::hal::{BlockDevice, HwError};

use crate::write_behind::WriteBehind;

/// Block size of the simulated medium (that of an SD card).
pub const BLOCK_SIZE: usize = 512;

/// Largest transfer the core and the FAT layer make in one call: reads
/// and writes of an image file cost one system call each, so seal and
/// arrival read 1 MiB at a time (the core's cap) instead of the default
/// 64 KiB of a USB or SD device.
pub const MAX_TRANSFER: usize = 1024 * 1024;

/// Writes at least this large go direct; smaller ones are FAT sectors and
/// directory blocks, rewritten often and read back soon (page cache).
pub const DIRECT_MIN: usize = 64 * 1024;

/// A medium image file as a block device.
pub struct FileMedium {
    file: File,
    /// Large aligned writes, queued for `O_DIRECT` (shared by every handle
    /// on the image); `None` where the file system refuses it (module doc).
    behind: Option<Arc<WriteBehind>>,
    /// For [`FileMedium::reopen`].
    path: PathBuf,
    blocks: u64,
    write_protected: bool,
    /// Block writes so far, shared by every handle ([`FileMedium::try_clone`]).
    writes: Arc<AtomicU64>,
}

impl FileMedium {
    /// Open `path` read-write. Its size must be a non-zero multiple of
    /// [`BLOCK_SIZE`] (as every real block device's is).
    pub fn open(path: &Path) -> Result<FileMedium, HwError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| HwError::Io(format!("opening medium {}: {e}", path.display())))?;
        let len = file
            .metadata()
            .map_err(|e| HwError::Io(format!("medium {}: {e}", path.display())))?
            .len();
        if len == 0 || !len.is_multiple_of(BLOCK_SIZE as u64) {
            return Err(HwError::Io(format!(
                "medium {} is {len} bytes: it must be a non-zero multiple of {BLOCK_SIZE} \
                 (make one with e.g. `mgear medium format fat:medium.img --size 128MiB`)",
                path.display()
            )));
        }
        let behind = match reopen_direct(&file) {
            Some(direct) => Some(Arc::new(
                WriteBehind::start(
                    direct,
                    file.try_clone()
                        .map_err(|e| HwError::Io(format!("medium {}: {e}", path.display())))?,
                )
                .map_err(|e| HwError::Io(format!("medium {}: {e}", path.display())))?,
            )),
            None => None,
        };
        Ok(FileMedium {
            behind,
            file,
            path: path.to_path_buf(),
            blocks: len / BLOCK_SIZE as u64,
            write_protected: false,
            writes: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A second handle on the same open image, sharing the write counter
    /// and the file position state (`dup`).
    pub fn try_clone(&self) -> Result<FileMedium, HwError> {
        Ok(FileMedium {
            file: self
                .file
                .try_clone()
                .map_err(|e| HwError::Io(format!("medium: a second handle: {e}")))?,
            behind: self.behind.clone(),
            path: self.path.clone(),
            blocks: self.blocks,
            write_protected: self.write_protected,
            writes: Arc::clone(&self.writes),
        })
    }

    /// The image opened again, sharing the write counter: a handle of its
    /// own for a thread that reads the image front to back beside another
    /// (`crate::regions`). The kernel keeps read-ahead state per open file,
    /// so two sequential readers on one `dup`ed handle look like one
    /// reader jumping back and forth and get no read-ahead at all; on a
    /// cold cache each then waits for every read.
    pub fn reopen(&self) -> Result<FileMedium, HwError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(|e| HwError::Io(format!("reopening medium {}: {e}", self.path.display())))?;
        Ok(FileMedium {
            behind: self.behind.clone(),
            file,
            path: self.path.clone(),
            blocks: self.blocks,
            write_protected: self.write_protected,
            writes: Arc::clone(&self.writes),
        })
    }

    /// Whether large aligned writes go around the page cache (`O_DIRECT`).
    pub fn is_direct(&self) -> bool {
        self.behind.as_ref().is_some_and(|b| b.is_direct())
    }

    /// Writes `data` at byte `off`: its 4 KiB-aligned middle queued for
    /// `O_DIRECT` when it is large, the rest through the page cache.
    fn write_at(&mut self, data: &[u8], off: u64) -> std::io::Result<()> {
        let behind = match &self.behind {
            Some(b) if b.is_direct() => b,
            Some(b) => {
                b.settle_range(off, data.len());
                return self.file.write_all_at(data, off);
            }
            None => return self.file.write_all_at(data, off),
        };
        let head = ((ALIGN as u64 - off % ALIGN as u64) % ALIGN as u64) as usize;
        let body = data.len().saturating_sub(head) / ALIGN * ALIGN;
        behind.settle_range(off, data.len());
        if body < DIRECT_MIN {
            return self.file.write_all_at(data, off);
        }
        // The ragged ends are pages of their own, apart from the body's.
        self.file.write_all_at(&data[..head], off)?;
        self.file
            .write_all_at(&data[head + body..], off + (head + body) as u64)?;
        behind.write(off + head as u64, &data[head..head + body])
    }

    /// Block writes made through any handle on this image so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    fn range(&self, lba: u64, len: usize) -> Result<u64, HwError> {
        if !len.is_multiple_of(BLOCK_SIZE) {
            return Err(HwError::Io(format!(
                "transfer of {len} bytes is not whole blocks"
            )));
        }
        let n = (len / BLOCK_SIZE) as u64;
        match lba.checked_add(n) {
            Some(end) if end <= self.blocks => Ok(lba * BLOCK_SIZE as u64),
            _ => Err(HwError::OutOfRange),
        }
    }
}

impl BlockDevice for FileMedium {
    fn block_size(&self) -> usize {
        BLOCK_SIZE
    }

    fn block_count(&self) -> u64 {
        self.blocks
    }

    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), HwError> {
        let off = self.range(lba, buf.len())?;
        if let Some(b) = &self.behind {
            b.settle_range(off, buf.len());
        }
        self.file
            .read_exact_at(buf, off)
            .map_err(|e| HwError::Io(format!("medium read at byte {off}: {e}")))
    }

    fn write_blocks(&mut self, lba: u64, data: &[u8]) -> Result<(), HwError> {
        let off = self.range(lba, data.len())?;
        if self.write_protected {
            return Err(HwError::WriteProtected);
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.write_at(data, off)
            .map_err(|e| HwError::Io(format!("medium write at byte {off}: {e}")))
    }

    fn flush(&mut self) -> Result<(), HwError> {
        if let Some(b) = &self.behind {
            b.settle()
                .map_err(|e| HwError::Io(format!("medium flush: {e}")))?;
        }
        self.file
            .sync_data()
            .map_err(|e| HwError::Io(format!("medium flush: {e}")))
    }

    fn max_transfer(&self) -> usize {
        MAX_TRANSFER
    }

    fn set_write_protect(&mut self, on: bool) -> Result<bool, HwError> {
        // Writes accepted before the protection land before it.
        if let Some(b) = &self.behind {
            b.settle()
                .map_err(|e| HwError::Io(format!("medium write protection: {e}")))?;
        }
        self.write_protected = on;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_and_range_is_checked() {
        let dir = std::env::temp_dir().join(format!("mgear-hw-medium-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m.img");
        std::fs::write(&p, vec![0u8; 8 * BLOCK_SIZE]).unwrap();
        let mut m = FileMedium::open(&p).unwrap();
        assert_eq!(m.block_count(), 8);
        let data: Vec<u8> = (0..2 * BLOCK_SIZE).map(|i| (i % 251) as u8).collect();
        m.write_blocks(6, &data).unwrap();
        m.flush().unwrap();
        let mut back = vec![0u8; 2 * BLOCK_SIZE];
        m.read_blocks(6, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(m.write_blocks(7, &data), Err(HwError::OutOfRange));
        assert_eq!(m.read_blocks(u64::MAX, &mut back), Err(HwError::OutOfRange));
        assert!(m.read_blocks(0, &mut [0u8; 100]).is_err());

        // Write protection refuses writes (the image keeps its bytes) but
        // not reads, and lifts when released.
        assert_eq!(m.set_write_protect(true), Ok(true));
        assert_eq!(
            m.write_blocks(6, &vec![0xeeu8; 2 * BLOCK_SIZE]),
            Err(HwError::WriteProtected)
        );
        m.read_blocks(6, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(std::fs::read(&p).unwrap()[6 * BLOCK_SIZE..], data[..]);
        assert_eq!(m.set_write_protect(false), Ok(true));
        m.write_blocks(6, &vec![0xeeu8; 2 * BLOCK_SIZE]).unwrap();
        m.read_blocks(6, &mut back).unwrap();
        assert_eq!(back, vec![0xeeu8; 2 * BLOCK_SIZE]);

        // A reopened handle reads the same bytes through a file of its
        // own and shares the write counter (the region thread relies on it).
        let mut again = m.reopen().unwrap();
        let writes = m.writes();
        again.read_blocks(6, &mut back).unwrap();
        assert_eq!(back, vec![0xeeu8; 2 * BLOCK_SIZE]);
        again.write_blocks(0, &[1u8; BLOCK_SIZE]).unwrap();
        assert_eq!(m.writes(), writes + 1);
        let mut first = [0u8; BLOCK_SIZE];
        m.read_blocks(0, &mut first).unwrap();
        assert_eq!(first, [1u8; BLOCK_SIZE]);

        std::fs::write(&p, vec![0u8; 1000]).unwrap();
        assert!(FileMedium::open(&p).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn large_writes_go_direct_and_read_back_through_any_handle() {
        use image_format::store::aligned::AlignedBuf;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.img");
        let size = 8 << 20;
        std::fs::write(&p, vec![0u8; size]).unwrap();
        let mut m = FileMedium::open(&p).unwrap();
        // Direct wherever the file system takes O_DIRECT (not tmpfs).
        let fs_takes_direct = reopen_direct(&File::open(&p).unwrap()).is_some();
        assert_eq!(m.is_direct(), fs_takes_direct);

        let mut image = vec![0u8; size];
        let mut seed = 1u32;
        let mut fill = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect()
        };
        let check = |m: &mut FileMedium, image: &[u8]| {
            let mut back = vec![0u8; size];
            m.read_blocks(0, &mut back).unwrap();
            assert!(back == image, "the image reads back as written");
        };

        // Through the page cache first, so a direct write over cached
        // pages must not leave them stale.
        let small = fill(3 * BLOCK_SIZE);
        m.write_blocks(9, &small).unwrap();
        image[9 * BLOCK_SIZE..][..small.len()].copy_from_slice(&small);
        let mut warm = vec![0u8; 1 << 20];
        m.read_blocks(0, &mut warm).unwrap();

        // Page-aligned in memory as on the image (the NBD server's layout):
        // a 4 KiB-aligned transfer, and one starting and ending mid-page
        // (ragged ends through the page cache, the middle direct).
        for (off, len) in [(0usize, 1 << 20), (4096 * 70 + 1536, (1 << 20) + 3584)] {
            let data = fill(len);
            let mut buf = AlignedBuf::new(len + ALIGN);
            let at = off % ALIGN;
            buf.as_mut_slice()[at..at + len].copy_from_slice(&data);
            m.write_blocks((off / BLOCK_SIZE) as u64, &buf.as_slice()[at..at + len])
                .unwrap();
            image[off..off + len].copy_from_slice(&data);
            check(&mut m, &image);
        }
        // Memory not aligned like the image: copied into the queue's
        // aligned buffers all the same.
        let data = fill((1 << 20) + 512);
        let odd = &data[512..];
        m.write_blocks(4096, odd).unwrap();
        image[4096 * BLOCK_SIZE..][..odd.len()].copy_from_slice(odd);
        check(&mut m, &image);
        assert_eq!(m.writes(), 4);

        // Every handle and a fresh open after flush see the same bytes.
        m.flush().unwrap();
        let mut again = m.reopen().unwrap();
        check(&mut again, &image);
        let mut clone = m.try_clone().unwrap();
        assert_eq!(clone.is_direct(), fs_takes_direct);
        check(&mut clone, &image);
        drop((m, again, clone));
        assert!(std::fs::read(&p).unwrap() == image);
        let mut reopened = FileMedium::open(&p).unwrap();
        check(&mut reopened, &image);
    }
}
