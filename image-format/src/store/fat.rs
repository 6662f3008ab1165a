//! `FatStore`: a FAT32 medium opened with the `fatfs` crate, without mounting
//! it (`mgear ... --medium fat:medium.img`, a raw device, or the appliance's
//! medium exported over NBD).
//!
//! `fatfs` 0.3 has no cache of its own and re-reads FAT sectors and directory
//! entries on every operation, so the device sits behind [`BlockCache`], a
//! small write-back LRU cache of 4 KiB blocks. Large transfers (segment data)
//! bypass the cache so they stay one sequential I/O each; on the host, an
//! image or device is a [`super::DirectFile`], which does them with
//! `O_DIRECT` (no copy through the page cache).
//!
//! File data does not go through `fatfs`: it walks a file's cluster chain
//! from the first cluster on every seek and moves one cluster per request,
//! which made capture and ingest cost grow with the file size. Reads use
//! the cluster map of [`super::fatmap`] (shared with the board's engine):
//! one device request per contiguous run. Appends and overwrites of an
//! existing file (`offset <= size`) write straight to its clusters;
//! clusters past its end are allocated contiguously after its last one
//! (FAT entries in every copy first, then the link, then the data, then the
//! size in the directory entry). An append the medium has no room for
//! takes no cluster, and one whose data or size then fails to reach the
//! device gives its clusters back, so a failed write leaves every file's
//! chain as long as its size needs. `fatfs` still creates files and
//! directories, fills gaps, truncates, renames and removes; maps are
//! dropped whenever it touches a file. FSInfo's free count is recounted at
//! [`FatStore::unmount`] when the direct path allocated clusters.
//!
//! [`FatStore::open_read_only`] refuses every write below `fatfs`, so a
//! read-only command leaves the medium byte-for-byte unchanged.
//!
//! `fatfs` writes a file's size only when the file is flushed and only logs
//! errors on drop, so every write here flushes explicitly and checks the
//! result, and [`FatStore::unmount`] must be called to clear the volume's
//! dirty flag. FAT has no atomic rename-over: [`Store::rename`] onto an
//! existing file is remove-then-rename here, which the format never relies
//! on (it uses A/B journal slots instead).
//!
//! A run killed or unplugged mid-write leaves the volume marked dirty, with
//! whatever part of the cache's last write-back reached the device. The
//! write-back sends what it holds of clusters taken since the previous one
//! first (nothing on the medium points at them yet), then the blocks in
//! device order; the next open for writing of a dirty volume puts the rest
//! right before anything is written on top of it (`fatmap::reclaim`: the
//! FAT copy that walks clean, lost clusters, chains past or short of their
//! size, half-made directories), and [`FatStore::unmount`] clears the mark
//! then.
//! This module's tests kill a capture and each metadata
//! operation after every device write and check `fsck.fat -n`.

use std::io::{self, ErrorKind, Read, Seek, SeekFrom, Write};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;

use super::fatmap::{self, check_fat_size, check_path, split_parent, FileMap, MapCache};
use super::{Entry, EntryKind, Located, RangeRead, Store, StoreError};

/// A device holding a FAT32 volume: a raw image file, a block device, or an
/// NBD export. `sync_device` must make every completed write durable.
pub trait FatDevice: Read + Write + Seek + Send {
    /// Make all completed writes durable (fsync, NBD flush, ...).
    fn sync_device(&mut self) -> io::Result<()>;

    /// A reader of device bytes `at..at + len` for other threads, once
    /// everything written there can be read back through it
    /// ([`Store::locate`]); `None` (the default) where the device has none.
    fn range_reader(&mut self, _at: u64, _len: u64) -> io::Result<Option<Arc<dyn RangeRead>>> {
        Ok(None)
    }

    /// Every completed write reaches the device before any later one does, without
    /// making it durable (a device that writes in the order it is given: nothing to do).
    /// A process killed after this has left the earlier writes on the device.
    fn barrier(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FatDevice for std::fs::File {
    fn sync_device(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

/// Adapter for devices whose `Write::flush` already means "make durable"
/// (e.g. an NBD client, where flush sends `NBD_CMD_FLUSH`).
#[derive(Debug)]
pub struct FlushIsDurable<T>(pub T);

impl<T: Read> Read for FlushIsDurable<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}
impl<T: Write> Write for FlushIsDurable<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}
impl<T: Seek> Seek for FlushIsDurable<T> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}
impl<T: Read + Write + Seek + Send> FatDevice for FlushIsDurable<T> {
    fn sync_device(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

const BLOCK: u64 = 4096;
/// Transfers at least this large go straight to the device.
const BYPASS: usize = 64 * 1024;
/// 8 MiB of cached blocks: enough for the FAT region touched by a capture.
const CACHE_BLOCKS: usize = 2048;

struct CacheInner<D> {
    dev: D,
    size: u64,
    blocks: LruCache<u64, (Box<[u8]>, bool)>,
    /// Opened read-only: every write is refused before it reaches the cache.
    read_only: bool,
    /// End of the last write that went straight to the device: a write
    /// that starts there continues a stream (a segment's records, each a
    /// small header and then its body) and goes to the device too, so the
    /// device sees one run of appends it can gather into large aligned
    /// writes rather than bodies with cached headers between them.
    stream_end: Option<u64>,
    /// While set, where each write that touches this byte range (the first
    /// FAT) starts in it is collected: which clusters fatfs allocated, known
    /// without scanning the FAT ([`FatStore::create_dir_all`]).
    watch: Option<(core::ops::Range<u64>, Vec<u64>)>,
    /// Something was written since the last successful sync: a sync with
    /// nothing new to make durable asks the device for nothing (on the
    /// appliance each device sync is a round trip that drains the writes in
    /// flight, an `fdatasync` and a save of its counters).
    unsynced: bool,
    /// Where the first FAT and the clusters are, once the volume is mounted: a write-back
    /// then writes what it holds of clusters taken since the last one ([`Self::fresh`])
    /// before anything else.
    layout: Option<Layout>,
    /// Clusters whose first-FAT entry went from free to taken in this cache since the last
    /// write-back: on the medium nothing points at them yet.
    fresh: std::collections::BTreeSet<u32>,
    /// Why a write to the device failed, once one has: every later sync fails with it. A
    /// write-back is also started by `fatfs` where it drops what fails (a file handle
    /// flushed on drop); the blocks it held were then taken for written, the next sync
    /// found nothing to do and said "durable", and a span's journal named records a
    /// pulled cable had kept off the medium.
    failed: Option<String>,
    /// Bytes laid over what reads return at an offset, until a write there: a read-only
    /// open's stand-in for a damaged FSInfo sector ([`fatmap::blank_fsinfo`]), which `fatfs`
    /// refuses to mount, the medium itself unchanged.
    /// More of them: a read-only open of a volume left mid-write reads it as the next writer
    /// will have put it right ([`fatmap::reclaim`] into these, nothing written), so a cut
    /// removal does not read as damage there.
    overlay: Vec<(u64, Box<[u8]>)>,
}

/// What [`CacheInner::flush_all`] needs of the volume's layout.
#[derive(Debug, Clone)]
struct Layout {
    fat: core::ops::Range<u64>,
    data_offset: u64,
    cluster_bytes: u64,
}

/// Whether a device's write error is its refusal of every write (read-only, not failing).
fn refused(e: &io::Error) -> bool {
    e.kind() == ErrorKind::PermissionDenied || matches!(e.raw_os_error(), Some(1 | 30))
}

fn read_only_error() -> io::Error {
    io::Error::new(
        ErrorKind::PermissionDenied,
        "the medium is opened read-only for this command",
    )
}

impl<D: FatDevice> CacheInner<D> {
    fn dev_read(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.dev.seek(SeekFrom::Start(off))?;
        self.dev.read_exact(buf)
    }

    fn dev_write(&mut self, off: u64, buf: &[u8]) -> io::Result<()> {
        self.dev.seek(SeekFrom::Start(off))?;
        self.dev.write_all(buf)
    }

    /// [`Self::dev_write`] of what the cache held (a write-back, an eviction): whoever
    /// wrote those bytes was told they were written, so a failure is kept for every later
    /// sync to report.
    fn write_back(&mut self, off: u64, buf: &[u8]) -> io::Result<()> {
        let done = self.dev_write(off, buf);
        if let Err(e) = &done {
            if refused(e) {
                // A device that refuses every write (a sealed appliance's export): nothing
                // was lost, but what the cache holds will never reach it: the device's
                // bytes are the truth to read.
                for b in self.dirty_blocks() {
                    self.blocks.pop(&b);
                }
                self.fresh.clear();
            } else if self.failed.is_none() {
                self.failed = Some(e.to_string());
            }
        }
        done
    }

    /// Length of block `b` (the last block of an odd-sized device is short).
    fn block_len(&self, b: u64) -> usize {
        (self.size - b * BLOCK).min(BLOCK) as usize
    }

    fn insert(&mut self, b: u64, data: Box<[u8]>, dirty: bool) -> io::Result<()> {
        if let Some((old_b, (old, old_dirty))) = self.blocks.push(b, (data, dirty)) {
            if old_b != b && old_dirty {
                self.write_back(old_b * BLOCK, &old)?;
            }
        }
        Ok(())
    }

    fn load(&mut self, b: u64) -> io::Result<()> {
        if self.blocks.contains(&b) {
            return Ok(());
        }
        let mut data = vec![0u8; self.block_len(b)].into_boxed_slice();
        self.dev_read(b * BLOCK, &mut data)?;
        self.insert(b, data, false)
    }

    fn check_range(&self, off: u64, len: usize) -> io::Result<()> {
        match off.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                format!(
                    "access at byte {off} (+{len}) is past the end of the medium ({} bytes)",
                    self.size
                ),
            )),
        }
    }

    /// The device's reader of `off..off + len`, unless a dirty block of
    /// this cache covers part of it (only [`Self::read_at`] lays those over
    /// the device's bytes).
    fn range_reader(&mut self, off: u64, len: u64) -> io::Result<Option<Arc<dyn RangeRead>>> {
        self.check_range(off, len as usize)?;
        let end = off + len;
        let dirty = (off / BLOCK..end.div_ceil(BLOCK))
            .any(|b| self.blocks.peek(&b).is_some_and(|(_, dirty)| *dirty))
            || self
                .overlay
                .iter()
                .any(|(at, b)| off < at + b.len() as u64 && *at < end);
        if dirty {
            return Ok(None);
        }
        self.dev.range_reader(off, len)
    }

    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_cached(off, buf)?;
        let end = off + buf.len() as u64;
        for (at, bytes) in &self.overlay {
            let (s, e) = ((*at).max(off), (at + bytes.len() as u64).min(end));
            if s < e {
                buf[(s - off) as usize..(e - off) as usize]
                    .copy_from_slice(&bytes[(s - at) as usize..(e - at) as usize]);
            }
        }
        Ok(())
    }

    fn read_cached(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check_range(off, buf.len())?;
        if buf.len() >= BYPASS {
            // Dirty blocks are laid over what the device holds instead of
            // being written back first: the FAT is read in 64 KiB windows
            // after every allocation, and writing its blocks out each time
            // turned each record appended into small device writes.
            self.dev_read(off, buf)?;
            let end = off + buf.len() as u64;
            for b in off / BLOCK..end.div_ceil(BLOCK) {
                if let Some((data, true)) = self.blocks.peek(&b) {
                    let bs = b * BLOCK;
                    let (s, e) = (bs.max(off), (bs + data.len() as u64).min(end));
                    buf[(s - off) as usize..(e - off) as usize]
                        .copy_from_slice(&data[(s - bs) as usize..(e - bs) as usize]);
                }
            }
            return Ok(());
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let b = pos / BLOCK;
            let within = (pos - b * BLOCK) as usize;
            self.load(b)?;
            let Some((data, _)) = self.blocks.get(&b) else {
                return Err(io::Error::other("block cache lost a block just loaded"));
            };
            let n = (data.len() - within).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&data[within..within + n]);
            done += n;
        }
        Ok(())
    }

    fn write_at(&mut self, off: u64, buf: &[u8]) -> io::Result<()> {
        if self.read_only {
            return Err(read_only_error());
        }
        self.check_range(off, buf.len())?;
        let end = off + buf.len() as u64;
        self.overlay
            .retain(|(at, b)| !(off < at + b.len() as u64 && *at < end));
        self.unsynced = true;
        self.note_fresh(off, buf)?;
        if let Some((range, seen)) = &mut self.watch {
            let end = off + buf.len() as u64;
            if off < range.end && end > range.start {
                seen.push(off.max(range.start));
            }
        }
        if buf.len() >= BYPASS || self.stream_end == Some(off) {
            // Keep cached copies coherent: drop blocks the write covers,
            // patch the partly covered ones (their dirty state is unchanged).
            let end = off + buf.len() as u64;
            for b in off / BLOCK..end.div_ceil(BLOCK) {
                let (bs, be) = (b * BLOCK, b * BLOCK + self.block_len(b) as u64);
                if bs >= off && be <= end {
                    self.blocks.pop(&b);
                } else if let Some((data, _)) = self.blocks.peek_mut(&b) {
                    let (s, e) = (bs.max(off), be.min(end));
                    data[(s - bs) as usize..(e - bs) as usize]
                        .copy_from_slice(&buf[(s - off) as usize..(e - off) as usize]);
                }
            }
            self.stream_end = None;
            self.dev_write(off, buf)?;
            self.stream_end = Some(off + buf.len() as u64);
            return Ok(());
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let b = pos / BLOCK;
            let within = (pos - b * BLOCK) as usize;
            let n = (self.block_len(b) - within).min(buf.len() - done);
            if n < self.block_len(b) {
                self.load(b)?;
            } else if !self.blocks.contains(&b) {
                let fresh = vec![0u8; self.block_len(b)].into_boxed_slice();
                self.insert(b, fresh, false)?;
            }
            let Some((data, dirty)) = self.blocks.get_mut(&b) else {
                return Err(io::Error::other("block cache lost a block just loaded"));
            };
            data[within..within + n].copy_from_slice(&buf[done..done + n]);
            *dirty = true;
            done += n;
        }
        Ok(())
    }

    /// Note the clusters `buf`, about to be written at `off`, takes in the first FAT.
    fn note_fresh(&mut self, off: u64, buf: &[u8]) -> io::Result<()> {
        let Some(fat) = self.layout.as_ref().map(|l| l.fat.clone()) else {
            return Ok(());
        };
        let (s, e) = (off.max(fat.start), (off + buf.len() as u64).min(fat.end));
        if s >= e {
            return Ok(());
        }
        // Whole entries only: every engine writes a FAT entry in one piece.
        let (s, e) = (
            fat.start + (s - fat.start).next_multiple_of(4),
            e - (e - fat.start) % 4,
        );
        if s >= e {
            return Ok(());
        }
        let mut old = vec![0u8; (e - s) as usize];
        self.read_at(s, &mut old)?;
        let new = &buf[(s - off) as usize..(e - off) as usize];
        for (i, (o, n)) in old.chunks_exact(4).zip(new.chunks_exact(4)).enumerate() {
            let taken = |x: &[u8]| u32::from_le_bytes([x[0], x[1], x[2], x[3]]) & 0x0FFF_FFFF != 0;
            if !taken(o) && taken(n) {
                self.fresh.insert(((s - fat.start) / 4) as u32 + i as u32);
            }
        }
        Ok(())
    }

    /// Write every dirty block back. What they hold of clusters taken since the last
    /// write-back goes first: nothing on the medium points at those yet, and a write-back
    /// cut between the FAT (earlier on the device) and them linked a new directory cluster
    /// to whatever bytes it held before (on a reused medium, entries of old files).
    /// The blocks the cache holds written and not yet on the device, in device order.
    fn dirty_blocks(&self) -> Vec<u64> {
        let mut dirty: Vec<u64> = self
            .blocks
            .iter()
            .filter(|(_, (_, d))| *d)
            .map(|(b, _)| *b)
            .collect();
        dirty.sort_unstable();
        dirty
    }

    fn flush_all(&mut self) -> io::Result<()> {
        let dirty = self.dirty_blocks();
        if let (Some(l), false) = (self.layout.clone(), self.fresh.is_empty()) {
            // Gathered into runs of adjacent bytes: one device write each.
            let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
            for &b in &dirty {
                let (bs, be) = (b * BLOCK, b * BLOCK + self.block_len(b) as u64);
                if be <= l.data_offset {
                    continue;
                }
                let mut at = bs.max(l.data_offset);
                while at < be {
                    let c = (at - l.data_offset) / l.cluster_bytes + 2;
                    let end = (l.data_offset + (c - 1) * l.cluster_bytes).min(be);
                    let fresh = u32::try_from(c).is_ok_and(|c| self.fresh.contains(&c));
                    if let (true, Some((data, _))) = (fresh, self.blocks.peek(&b)) {
                        let piece = &data[(at - bs) as usize..(end - bs) as usize];
                        match runs.last_mut() {
                            Some((start, bytes)) if *start + bytes.len() as u64 == at => {
                                bytes.extend_from_slice(piece)
                            }
                            _ => runs.push((at, piece.to_vec())),
                        }
                    }
                    at = end;
                }
            }
            let wrote = !runs.is_empty();
            for (at, bytes) in runs {
                self.write_back(at, &bytes)?;
            }
            if wrote {
                self.dev.barrier()?;
            }
        }
        for b in dirty {
            if let Some((data, _)) = self.blocks.peek(&b) {
                let data = data.clone();
                self.write_back(b * BLOCK, &data)?;
                if let Some((_, d)) = self.blocks.peek_mut(&b) {
                    *d = false;
                }
            }
        }
        self.fresh.clear();
        self.dev.flush()
    }
}

/// A write-back block cache in front of a [`FatDevice`], shared between
/// the `fatfs` file system (which owns one handle and does positional I/O
/// through it) and [`FatStore`] (which keeps another to make writes durable).
pub struct BlockCache<D> {
    inner: Arc<Mutex<CacheInner<D>>>,
    pos: u64,
}

impl<D> Clone for BlockCache<D> {
    fn clone(&self) -> Self {
        BlockCache {
            inner: Arc::clone(&self.inner),
            pos: self.pos,
        }
    }
}

impl<D: FatDevice> BlockCache<D> {
    /// Put a cache in front of `dev`; the device's size is found by seeking to its end.
    pub fn new(dev: D) -> io::Result<Self> {
        Self::with_mode(dev, false)
    }

    /// A cache that refuses every write with `PermissionDenied`.
    pub fn new_read_only(dev: D) -> io::Result<Self> {
        Self::with_mode(dev, true)
    }

    fn with_mode(mut dev: D, read_only: bool) -> io::Result<Self> {
        let size = dev.seek(SeekFrom::End(0))?;
        let cap = NonZeroUsize::new(CACHE_BLOCKS).unwrap_or(NonZeroUsize::MIN);
        Ok(BlockCache {
            inner: Arc::new(Mutex::new(CacheInner {
                dev,
                size,
                blocks: LruCache::new(cap),
                read_only,
                stream_end: None,
                watch: None,
                unsynced: false,
                layout: None,
                fresh: Default::default(),
                failed: None,
                overlay: Vec::new(),
            })),
            pos: 0,
        })
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, CacheInner<D>>> {
        self.inner
            .lock()
            .map_err(|_| io::Error::other("medium cache poisoned by an earlier failure"))
    }

    /// Size of the device in bytes.
    pub fn size(&self) -> io::Result<u64> {
        Ok(self.lock()?.size)
    }

    /// Write back every dirty block and make it durable on the device.
    pub fn sync(&self) -> io::Result<()> {
        let mut g = self.lock()?;
        if let Some(why) = &g.failed {
            return Err(io::Error::other(format!(
                "a write to the medium failed earlier ({why}), so what was written since it \
                 was last made durable may not be on it: check the medium's connection and run \
                 the same command again (its next open puts the medium right)"
            )));
        }
        if g.read_only || !g.unsynced {
            // Nothing can be dirty (a read-only device may refuse fsync), or
            // nothing was written since the last sync made it all durable.
            return Ok(());
        }
        g.flush_all()?;
        g.dev.sync_device()?;
        g.unsynced = false;
        Ok(())
    }
}

impl<D: FatDevice> Read for BlockCache<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut g = self.lock()?;
        let n = (g.size.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        g.read_at(self.pos, &mut buf[..n])?;
        drop(g);
        self.pos += n as u64;
        Ok(n)
    }
}

impl<D: FatDevice> Write for BlockCache<D> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.lock()?.write_at(self.pos, buf)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.lock()?.flush_all()
    }
}

impl<D: FatDevice> Seek for BlockCache<D> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let size = self.lock()?.size;
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        seek_to(&mut self.pos, new)
    }
}

/// Moves a medium device's position to `new`, the target a `Seek::seek`
/// computed (`None`: it overflowed or lay before byte 0).
pub(crate) fn seek_to(pos: &mut u64, new: Option<u64>) -> io::Result<u64> {
    let p = new.ok_or_else(|| {
        io::Error::new(
            ErrorKind::InvalidInput,
            "seek before the start of the medium",
        )
    })?;
    *pos = p;
    Ok(p)
}

/// Options for [`FatStore::format`].
#[derive(Debug, Clone)]
pub struct FormatOptions {
    /// Volume label (at most 11 ASCII characters).
    pub label: String,
    /// Cluster size in bytes; `None` chooses by the volume size ([`FatLayout::for_size`]).
    pub cluster_size: Option<u32>,
    /// Volume serial number (`vol_id`, shown as XXXX-XXXX by `blkid` and
    /// Windows). `None` keeps `fatfs`'s fixed 1234-5678: callers pass a
    /// random one so two media can be told apart.
    pub volume_id: Option<u32>,
    /// The device already reads as zeros everywhere (a sparse image file
    /// just created): zero-filling the FATs is skipped, so a 16 TiB image
    /// stays sparse instead of gaining 2 GiB of written zeros.
    pub device_is_zeroed: bool,
}

impl Default for FormatOptions {
    fn default() -> Self {
        FormatOptions {
            label: "MGEAR".into(),
            cluster_size: None,
            volume_id: None,
            device_is_zeroed: false,
        }
    }
}

/// Smallest volume `fatfs` (and the FAT32 spec) can format as FAT32 with
/// 512-byte sectors and small clusters: 65525 clusters plus metadata.
pub const MIN_FAT32_BYTES: u64 = 34 * 1024 * 1024;

/// Largest volume formatted with 512-byte sectors: FAT32's total-sector
/// field is 32 bits (2^32 - 1 sectors, 2 TiB - 512 bytes).
pub const MAX_512_SECTOR_BYTES: u64 = u32::MAX as u64 * 512;

/// Largest FAT32 volume (16 TiB - 4 KiB): 2^32 - 1 sectors of 4096 bytes,
/// the largest logical sector FAT32 defines. With 128 KiB clusters that is
/// under 2^27 clusters (see [`MAX_FAT_BYTES`]). A larger device gets a
/// volume of this size at its start.
pub const MAX_FAT32_BYTES: u64 = u32::MAX as u64 * 4096;

/// Cluster size of volumes larger than [`MAX_512_SECTOR_BYTES`] (up to 8 TiB).
pub const LARGE_CLUSTER_BYTES: u32 = 64 * 1024;

pub use super::fatmap::{fat_size_supported, MAX_FAT_BYTES};

/// How a volume of a given size is laid out (see FORMAT.md, "Media sizes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FatLayout {
    /// Logical sector size in the boot sector: 512 up to 2 TiB, 4096 beyond.
    pub sector_bytes: u16,
    /// Sectors the volume covers (the device may be larger).
    pub total_sectors: u32,
    /// Cluster size, `None`: `fatfs`'s choice for the size (at most 32 KiB).
    pub cluster_bytes: Option<u32>,
}

impl FatLayout {
    /// The layout for a device of `bytes`, `cluster` as asked by the caller.
    /// Up to 2 TiB: 512-byte sectors (what every FAT32 implementation
    /// reads). Beyond: 4096-byte sectors, the only way past FAT32's 32-bit
    /// sector count, and 64 KiB clusters, 128 KiB over 8 TiB, so each FAT
    /// stays under [`MAX_FAT_BYTES`]. No partition table either way (the
    /// volume starts at byte 0): a GPT would not lift the 32-bit sector
    /// count of the file system inside it.
    pub fn for_size(bytes: u64, cluster: Option<u32>) -> Result<FatLayout, StoreError> {
        if bytes < MIN_FAT32_BYTES {
            return Err(StoreError::Io(format!(
                "the medium is {bytes} bytes; FAT32 needs at least {MIN_FAT32_BYTES} bytes (34 MiB)"
            )));
        }
        if let Some(cs) = cluster {
            if !cs.is_power_of_two() || !(512..=65536).contains(&cs) {
                return Err(StoreError::Io(format!(
                    "cluster size {cs} must be a power of two from 512 to 65536"
                )));
            }
        }
        // 2 TiB exactly (a common size) still gets 512-byte sectors: the
        // last 512 bytes stay outside the volume.
        if bytes <= 2 << 40 {
            return Ok(FatLayout {
                sector_bytes: 512,
                total_sectors: (bytes / 512).min(u64::from(u32::MAX)) as u32,
                cluster_bytes: cluster,
            });
        }
        // 64 KiB clusters up to 8 TiB, 128 KiB beyond: each FAT stays under
        // MAX_FAT_BYTES (fewer than 2^27 clusters).
        let sectors = (bytes / 4096).min(u64::from(u32::MAX));
        let cluster = cluster.unwrap_or(
            if sectors * 4096 / u64::from(LARGE_CLUSTER_BYTES) < (1 << 27) - (1 << 16) {
                LARGE_CLUSTER_BYTES
            } else {
                2 * LARGE_CLUSTER_BYTES
            },
        );
        if cluster < 4096 {
            return Err(StoreError::Io(format!(
                "cluster size {cluster}: a medium over 2 TiB has 4096-byte sectors, so clusters of at least 4096 bytes"
            )));
        }
        Ok(FatLayout {
            sector_bytes: 4096,
            total_sectors: sectors as u32,
            cluster_bytes: Some(cluster),
        })
    }

    /// Bytes of the device the volume covers.
    pub fn volume_bytes(&self) -> u64 {
        u64::from(self.total_sectors) * u64::from(self.sector_bytes)
    }
}

/// What [`FatStore::format`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Formatted {
    /// Logical sector size.
    pub sector_bytes: u64,
    /// Cluster size.
    pub cluster_bytes: u64,
    /// Data clusters.
    pub clusters: u64,
    /// Bytes of the device the volume covers.
    pub volume_bytes: u64,
    /// Volume serial number.
    pub volume_id: u32,
}

/// The boot sector's first bytes, which make the device read as FAT32: [`SkipZeros`] holds
/// them (and the backup boot sector's) back until the rest of the file system is durable.
const HELD_BOOT: usize = 512;

/// Below the cache during [`FatStore::format`]. On a device known to read as
/// zeros, an all-zero write to bytes nothing has written yet is dropped
/// (they read as zeros already), everything else goes through. The boot
/// sector's first [`HELD_BOOT`] bytes, and the backup boot sector's, are held
/// until [`SkipZeros::release`]: a format cut off (a kill, a pulled cable)
/// leaves a device that does not read as FAT32 at all, never one that does
/// with half its FATs (it read as a damaged file system, repaired by hand, and
/// a re-run refused it without `--force`), nor one whose backup boot sector
/// invites a copy over the primary that makes such a file system.
struct SkipZeros<D> {
    dev: D,
    pos: u64,
    /// Byte ranges written so far (few: boot sectors, FAT heads, root dir).
    written: Vec<(u64, u64)>,
    skip: bool,
    /// Held back, as written: the boot sector's first bytes at 0, and, once the boot sector
    /// says where it is, the backup boot sector's.
    held: Vec<(u64, [u8; HELD_BOOT])>,
}

impl<D: FatDevice> SkipZeros<D> {
    fn new(dev: D, skip: bool) -> Self {
        SkipZeros {
            dev,
            pos: 0,
            written: Vec::new(),
            skip,
            held: Vec::new(),
        }
    }

    /// Where the backup boot sector lies, as the held boot sector says (BPB_BkBootSec times
    /// BPB_BytsPerSec); `None` before the boot sector was written, or with no backup.
    fn backup_at(&self) -> Option<u64> {
        let (_, boot) = self.held.iter().find(|(at, _)| *at == 0)?;
        let sector = u64::from(u16::from_le_bytes([boot[0x0b], boot[0x0c]]));
        let backup = u64::from(u16::from_le_bytes([boot[0x32], boot[0x33]]));
        (sector >= 512 && backup != 0).then_some(backup * sector)
    }

    /// Write the held bytes and make them durable: the last writes of a format, the backup
    /// boot sector before the boot sector (a cut between leaves a whole file system whose
    /// backup boot sector is right).
    fn release(&mut self) -> io::Result<()> {
        let mut held = std::mem::take(&mut self.held);
        held.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
        for (at, bytes) in held {
            self.dev.seek(SeekFrom::Start(at))?;
            self.dev.write_all(&bytes)?;
            self.dev.sync_device()?;
        }
        Ok(())
    }

    /// Write `buf` at `start` to the device (an all-zero run nothing wrote before dropped).
    fn put(&mut self, start: u64, buf: &[u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let end = start + buf.len() as u64;
        let untouched = !self.written.iter().any(|&(s, e)| s < end && start < e);
        if self.skip && untouched && buf.iter().all(|b| *b == 0) {
            return Ok(());
        }
        self.dev.seek(SeekFrom::Start(start))?;
        self.dev.write_all(buf)?;
        self.written.push((start, end));
        Ok(())
    }
}

impl<D: FatDevice> Read for SkipZeros<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let at = self.pos;
        self.dev.seek(SeekFrom::Start(at))?;
        let n = self.dev.read(buf)?;
        let end = at + n as u64;
        for (h, bytes) in &self.held {
            let (from, to) = (at.max(*h), end.min(h + HELD_BOOT as u64));
            if from < to {
                let (a, b) = ((from - at) as usize, (from - h) as usize);
                let k = (to - from) as usize;
                buf[a..a + k].copy_from_slice(&bytes[b..b + k]);
            }
        }
        self.pos = end;
        Ok(n)
    }
}

impl<D: FatDevice> Write for SkipZeros<D> {
    fn write(&mut self, whole: &[u8]) -> io::Result<usize> {
        let start = self.pos;
        let end = start + whole.len() as u64;
        // The boot sector first: it says where its backup is, which may be in this write.
        let mut holds = vec![0u64];
        let mut k = 0;
        while k < holds.len() {
            let h = holds[k];
            let (from, to) = (start.max(h), end.min(h + HELD_BOOT as u64));
            if from < to {
                let slot = match self.held.iter().position(|(at, _)| *at == h) {
                    Some(i) => i,
                    None => {
                        self.held.push((h, [0; HELD_BOOT]));
                        self.held.len() - 1
                    }
                };
                let (a, b) = ((from - start) as usize, (from - h) as usize);
                let n = (to - from) as usize;
                self.held[slot].1[b..b + n].copy_from_slice(&whole[a..a + n]);
            }
            if h == 0 {
                if let Some(bk) = self.backup_at() {
                    holds.push(bk);
                }
            }
            k += 1;
        }
        // The rest, around the held ranges.
        let mut ranges: Vec<(u64, u64)> = holds
            .iter()
            .map(|h| (*h, h + HELD_BOOT as u64))
            .filter(|(h, e)| *h < end && start < *e)
            .collect();
        ranges.sort_unstable();
        let mut at = start;
        for (h, e) in ranges {
            if h > at {
                let piece = &whole[(at - start) as usize..(h - start) as usize];
                self.put(at, piece)?;
            }
            at = at.max(e);
        }
        if at < end {
            self.put(at, &whole[(at - start) as usize..])?;
        }
        self.pos = end;
        Ok(whole.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.dev.flush()
    }
}

impl<D: FatDevice> Seek for SkipZeros<D> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.pos = self.dev.seek(pos)?;
        Ok(self.pos)
    }
}

impl<D: FatDevice> FatDevice for SkipZeros<D> {
    fn sync_device(&mut self) -> io::Result<()> {
        self.dev.sync_device()
    }
    fn barrier(&mut self) -> io::Result<()> {
        self.dev.barrier()
    }
}

/// Offset of FAT32's BS_Reserved1 byte in the boot sector, whose bit 0 is
/// the volume's dirty flag.
const DIRTY_BYTE: usize = 0x41;

/// FAT32's FAT[1] bit that is set while the volume was shut down cleanly (Windows clears it
/// while the volume is mounted).
const FAT1_CLEAN: u32 = 0x0800_0000;

/// A FAT32 volume used as a medium.
pub struct FatStore<D: FatDevice> {
    fs: fatfs::FileSystem<BlockCache<D>>,
    cache: BlockCache<D>,
    read_only: bool,
    /// FAT32 layout for the direct data path (`None`: FAT12/16, fatfs only).
    geo: Option<fatmap::Geometry>,
    /// Cluster maps of recently used files.
    maps: MapCache,
    /// Directories whose chains were checked (`fatmap::check_dirs`).
    sound_dirs: std::collections::BTreeMap<String, u32>,
    /// Clusters allocated by the direct append path since mount: fatfs's
    /// own free count does not know them, so FSInfo is recounted at unmount.
    raw_allocated: u64,
    /// Where the direct path looks for free clusters for an empty file.
    next_free: u32,
    /// The volume's dirty flag was set when it was mounted (a run before
    /// this one did not unmount it).
    dirty_at_mount: bool,
    /// FAT[1]'s clean-shutdown bit was clear at mount (part of `dirty_at_mount`).
    fat_unclean: bool,
    /// What [`fatmap::reclaim`] put right when the volume was mounted dirty for writing, or
    /// the damage it met and left alone (the dirty mark then stays); `None` when it did not
    /// run (a clean volume, or one opened read-only or on a device that refuses writes).
    reclaimed: Option<Result<fatmap::Reclaimed, String>>,
    /// Opened read-only on a volume left mid-write: what the next writer's
    /// [`fatmap::reclaim`] will put right, read as put right already (laid over in the cache,
    /// nothing written), or the damage it would leave alone (then read as it is).
    simulated: Option<Result<fatmap::Reclaimed, String>>,
    /// The free clusters as counted by one scan of the FAT, and both
    /// allocators' counts then: later counts move it by what each did
    /// since, instead of reading the whole FAT again (up to 1 GiB on a
    /// large medium; a capture asked for it five times or more).
    counted: Option<FreeCount>,
    /// [`fatmap::lost_chains`] of a volume opened read-only, found once: `inspect` asks it
    /// for the root and each capture, each answer a walk of the tree and a scan of the FAT.
    lost: Option<fatmap::Lost>,
    /// What the open did about a damaged FSInfo sector ([`Self::mend_fsinfo`]).
    hints: Option<String>,
}

/// See [`FatStore::free_clusters`].
#[derive(Debug, Clone, Copy)]
struct FreeCount {
    /// Free clusters in the FAT when it was scanned.
    free: u64,
    /// fatfs's own free count then (it counts its allocations and frees).
    fatfs_free: u32,
    /// [`FatStore::raw_allocated`] then (the direct path only allocates).
    raw_allocated: u64,
}

/// The time `fatfs` stamps on the entries it writes, in UTC. Its default is the host's local
/// time, and beside the MANIFEST's Unix times the entries told whoever holds the medium the
/// capture site's time zone (a finder read +05:30 off a medium).
#[derive(Debug)]
struct UtcTime;

impl fatfs::TimeProvider for UtcTime {
    fn get_current_date(&self) -> fatfs::Date {
        self.get_current_date_time().date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        use chrono::{Datelike as _, Timelike as _};
        let t = chrono::Utc::now();
        // FAT dates run from 1980 to 2107; a clock outside that is stamped at its edge.
        let year = t.year().clamp(1980, 2107);
        fatfs::DateTime {
            date: fatfs::Date {
                year: year as u16,
                month: t.month() as u16,
                day: t.day() as u16,
            },
            time: fatfs::Time {
                hour: t.hour() as u16,
                min: t.minute() as u16,
                sec: t.second().min(59) as u16,
                millis: (t.nanosecond() / 1_000_000).min(999) as u16,
            },
        }
    }
}

/// `read(offset, buf)` on the cache, for [`fatmap`].
fn cache_reader<D: FatDevice>(
    cache: &BlockCache<D>,
) -> impl FnMut(u64, &mut [u8]) -> Result<(), StoreError> + '_ {
    move |off, buf| {
        cache
            .lock()
            .and_then(|mut g| g.read_at(off, buf))
            .map_err(|e| fat_err("medium", e))
    }
}

/// `write(offset, bytes)` on the cache, for [`fatmap`].
fn cache_writer<D: FatDevice>(
    cache: &BlockCache<D>,
) -> impl FnMut(u64, &[u8]) -> Result<(), StoreError> + '_ {
    move |off, buf| {
        cache
            .lock()
            .and_then(|mut g| g.write_at(off, buf))
            .map_err(|e| fat_err("medium", e))
    }
}

fn fat_err(path: &str, e: io::Error) -> StoreError {
    match e.kind() {
        ErrorKind::NotFound => StoreError::NotFound,
        // An NBD server refusing a write on a sealed appliance answers EPERM.
        _ if refused(&e) => StoreError::ReadOnly,
        _ if e.to_string().contains("No space left") => StoreError::NoSpace,
        // `fatfs` met a file where a path has a directory, or the other way round: every
        // path the format names has its kind, so an entry's attribute byte is damaged (a
        // finding about the medium; it was an I/O error, exit 3 and "reconnect it").
        ErrorKind::Other if e.to_string() == "Not a directory" => StoreError::Damaged(format!(
            "{path}: a directory on its way is marked a file: its directory entry lost its \
             directory mark (a damaged attribute byte); `mgear verify` names it"
        )),
        ErrorKind::Other if e.to_string() == "Is a directory" => StoreError::Damaged(format!(
            "{path} is marked a directory where the format has a file: its directory entry is \
             damaged"
        )),
        _ => StoreError::Io(format!("{path}: {e}")),
    }
}

impl<D: FatDevice> FatStore<D> {
    /// Create a FAT32 file system on the device (destroys its contents),
    /// laid out by [`FatLayout::for_size`]: the whole device, or its first
    /// [`MAX_FAT32_BYTES`] when it is larger. FSInfo gets the true free
    /// count, so nothing has to count a 1 GiB FAT on first use.
    pub fn format(dev: D, opts: &FormatOptions) -> Result<Formatted, StoreError> {
        let zeroing = SkipZeros::new(dev, opts.device_is_zeroed);
        let mut cache = BlockCache::new(zeroing).map_err(|e| fat_err("format", e))?;
        let size = cache.size().map_err(|e| fat_err("format", e))?;
        let layout = FatLayout::for_size(size, opts.cluster_size)?;
        let label = opts.label.as_bytes();
        if label.len() > 11 || !label.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
            return Err(StoreError::Io(format!(
                "volume label {:?} must be at most 11 printable ASCII characters",
                opts.label
            )));
        }
        let mut l = [b' '; 11];
        l[..label.len()].copy_from_slice(label);
        let mut fo = fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat32)
            .volume_label(l)
            .bytes_per_sector(layout.sector_bytes)
            .total_sectors(layout.total_sectors);
        if let Some(id) = opts.volume_id {
            fo = fo.volume_id(id);
        }
        if let Some(cs) = layout.cluster_bytes {
            fo = fo.bytes_per_cluster(cs);
        }
        fatfs::format_volume(&mut cache, fo).map_err(|e| {
            StoreError::Io(format!(
                "cannot create a FAT32 file system on the medium ({size} bytes, {}-byte sectors): {e}",
                layout.sector_bytes
            ))
        })?;
        let mut boot = [0u8; 512];
        cache
            .lock()
            .and_then(|mut g| g.read_at(0, &mut boot))
            .map_err(|e| fat_err("format", e))?;
        let geo = fatmap::Geometry::parse(&boot).ok_or_else(|| {
            StoreError::Io("the new file system is not a FAT32 volume mgear can map".into())
        })?;
        // Only the root directory's cluster (2) is taken.
        fatmap::write_fsinfo(
            &geo,
            &mut cache_reader(&cache),
            &mut cache_writer(&cache),
            u64::from(geo.cluster_count) - 1,
            3,
        )?;
        cache.sync().map_err(|e| fat_err("format", e))?;
        cache
            .lock()
            .and_then(|mut g| g.dev.release())
            .map_err(|e| fat_err("format", e))?;
        Ok(Formatted {
            sector_bytes: u64::from(layout.sector_bytes),
            cluster_bytes: geo.cluster_bytes,
            clusters: u64::from(geo.cluster_count),
            volume_bytes: layout.volume_bytes(),
            volume_id: u32::from_le_bytes([boot[0x43], boot[0x44], boot[0x45], boot[0x46]]),
        })
    }

    /// Open the FAT32 volume on `dev`.
    pub fn open(dev: D) -> Result<Self, StoreError> {
        let cache = BlockCache::new(dev).map_err(|e| fat_err("open", e))?;
        Self::mount(cache, false)
    }

    /// Open the FAT32 volume on `dev` for reading only: every write
    /// (including the FSInfo and dirty-flag updates `fatfs` makes on its
    /// own) fails with [`StoreError::ReadOnly`] and [`unmount`](Self::unmount)
    /// writes nothing, so the medium is byte-for-byte unchanged.
    pub fn open_read_only(dev: D) -> Result<Self, StoreError> {
        let cache = BlockCache::new_read_only(dev).map_err(|e| fat_err("open", e))?;
        Self::mount(cache, true)
    }

    fn mount(cache: BlockCache<D>, read_only: bool) -> Result<Self, StoreError> {
        let mut head = [0u8; 512];
        if cache
            .lock()
            .and_then(|mut g| g.read_at(0, &mut head))
            .is_ok()
        {
            fatmap::check_boot(&mut |at, buf| {
                cache
                    .lock()
                    .and_then(|mut g| g.read_at(at, buf))
                    .map_err(|e| fat_err("open", e))
            })?;
        }
        let hints = Self::mend_fsinfo(&cache, &head, read_only)?;
        let options = fatfs::FsOptions::new().time_provider(&UtcTime);
        let fs = fatfs::FileSystem::new(cache.clone(), options).map_err(|e| {
            StoreError::Io(format!(
                "the medium does not hold a FAT32 file system ({e}); check that the path names \
             the medium; only a new one is made with `mgear medium format fat:PATH` \
             (formatting erases what the file or device holds)"
            ))
        })?;
        let mut boot = [0u8; 512];
        cache
            .lock()
            .and_then(|mut g| g.read_at(0, &mut boot))
            .map_err(|e| fat_err("open", e))?;
        let geo = fatmap::Geometry::parse(&boot);
        if let (Some(g), false) = (&geo, read_only) {
            cache.lock().map_err(|e| fat_err("open", e))?.layout = Some(Layout {
                fat: g.fat_offset..g.fat_offset + g.fat_bytes,
                data_offset: g.data_offset,
                cluster_bytes: g.cluster_bytes,
            });
        }
        // FAT32's BS_Reserved1 byte, bit 0: the flag fatfs (and Linux) set while the
        // volume is mounted for writing; Windows clears the clean-shutdown bit of FAT[1]
        // instead (a medium it left dirty read as closed cleanly, and kept the mark
        // through a seal: `fsck.fat -n` failed the shipment).
        let fat_unclean = match &geo {
            Some(g) => {
                let mut e = [0u8; 4];
                cache
                    .lock()
                    .and_then(|mut c| c.read_at(g.fat_offset + 4, &mut e))
                    .map_err(|e| fat_err("open", e))?;
                u32::from_le_bytes(e) & FAT1_CLEAN == 0
            }
            None => false,
        };
        let dirty_at_mount = geo.is_some() && (boot[DIRTY_BYTE] & 1 != 0 || fat_unclean);
        // A run cut off (killed, unplugged) mid-write leaves what fatmap::reclaim puts
        // right, below the files: done, and made durable, before anything is written on
        // top of it (a resume made files in a directory whose `.` never reached the medium).
        let mut simulated = None;
        let reclaimed = match &geo {
            Some(geo) if dirty_at_mount && !read_only => {
                let done =
                    fatmap::reclaim(geo, &mut cache_reader(&cache), &mut cache_writer(&cache))
                        .and_then(|done| {
                            cache.sync().map_err(|e| fat_err("open", e)).map(|()| done)
                        });
                match done {
                    // A device that refuses writes (a sealed or locked appliance's export):
                    // left as it is; the first write says why.
                    Err(StoreError::ReadOnly) => None,
                    other => Some(other?),
                }
            }
            // Read-only: read as the next writer will have put it right, laid over the
            // medium's bytes in the cache (nothing written). A removal cut off mid-way read
            // as damage ("a chain reaches a cluster marked free", "do not write to the
            // medium") that one `medium fsck --repair` put right. Damage a cut does not leave
            // is read as it is.
            Some(geo) if dirty_at_mount => {
                let lay = |off: u64, data: &[u8]| {
                    cache
                        .lock()
                        .map(|mut g| g.overlay.push((off, data.into())))
                        .map_err(|e| fat_err("open", e))
                };
                let before = cache.lock().map_err(|e| fat_err("open", e))?.overlay.len();
                let done = fatmap::reclaim(geo, &mut cache_reader(&cache), &mut { lay })?;
                if done.is_err() {
                    // Read as it is: only what was laid over before (a blank FSInfo) stays.
                    cache
                        .lock()
                        .map_err(|e| fat_err("open", e))?
                        .overlay
                        .truncate(before);
                }
                simulated = Some(done);
                None
            }
            _ => None,
        };
        Ok(FatStore {
            fs,
            cache,
            read_only,
            dirty_at_mount,
            fat_unclean,
            reclaimed,
            simulated,
            geo,
            maps: MapCache::new(),
            sound_dirs: Default::default(),
            raw_allocated: 0,
            next_free: 2,
            counted: None,
            lost: None,
            hints,
        })
    }

    /// A damaged FSInfo sector (free-space hints only; `fatfs` refuses to mount with one) is
    /// read around by a read-only open (a blank one laid over it in the cache, the medium
    /// unchanged) and rewritten blank by one for writing: what was done, for
    /// [`Store::damaged_hints`], or `None` when it reads as one.
    fn mend_fsinfo(
        cache: &BlockCache<D>,
        head: &[u8; 512],
        read_only: bool,
    ) -> Result<Option<String>, StoreError> {
        let Some(geo) = fatmap::Geometry::parse(head) else {
            return Ok(None);
        };
        let Some(why) = fatmap::fsinfo_damage(&geo, &mut cache_reader(cache))? else {
            return Ok(None);
        };
        let blank = fatmap::blank_fsinfo();
        let mut g = cache.lock().map_err(|e| fat_err("open", e))?;
        let done = if read_only {
            g.overlay.push((geo.fsinfo_offset, Box::new(blank)));
            "read around, the medium unchanged: `mgear medium fsck --repair` (or any command \
             that writes the medium) rewrites it"
        } else {
            g.write_at(geo.fsinfo_offset, &blank)
                .map_err(|e| fat_err("open", e))?;
            "rewritten, its hints \"unknown\" (a FAT32 reader then counts the free clusters \
             itself)"
        };
        Ok(Some(format!(
            "its FSInfo sector (at byte {}) was damaged ({why}); it holds only free-space \
             hints: {done}",
            geo.fsinfo_offset
        )))
    }

    /// `f` of the chains nothing holds: walked once per read-only open and kept (a writer's
    /// change them as it writes, so it walks them each time asked).
    fn with_lost<T>(
        &mut self,
        geo: &fatmap::Geometry,
        f: impl FnOnce(&fatmap::Lost) -> T,
    ) -> Result<T, StoreError> {
        let lost = match self.lost.take() {
            Some(l) => l,
            None => fatmap::lost_chains(geo, &mut cache_reader(&self.cache))?,
        };
        let out = f(&lost);
        if self.read_only {
            self.lost = Some(lost);
        }
        Ok(out)
    }

    /// What opening the volume put right, when it was opened for writing with the dirty
    /// mark a cut run leaves ([`fatmap::reclaim`]), or the damage it met and left alone;
    /// `None` when it did not run (see [`FatStore::reclaimed`]'s field).
    pub fn after_cut(&self) -> Option<&Result<fatmap::Reclaimed, String>> {
        self.reclaimed.as_ref()
    }

    /// Refuse a directory chain that loops in `dir` or above it before
    /// `fatfs` walks them (it would never stop; see `fatmap::check_dirs`).
    /// Only FAT32 is checked: FAT12/16 media are test-sized.
    fn check_dirs(&mut self, dir: &str) -> Result<(), StoreError> {
        let Some(geo) = self.geo.clone() else {
            return Ok(());
        };
        fatmap::check_dirs(
            &geo,
            &mut cache_reader(&self.cache),
            dir,
            &mut self.sound_dirs,
        )
    }

    /// The cluster map of file `path` (cached), `None` if it does not exist.
    fn map(&mut self, path: &str) -> Result<Option<&mut FileMap>, StoreError> {
        self.maps
            .get_or_lookup(self.geo.as_ref(), &mut cache_reader(&self.cache), path)
    }

    /// Write `data` at `offset` straight to the file's clusters, allocating
    /// contiguous clusters past its end and updating its directory entry
    /// only when it grows: cost per byte independent of the file's size.
    /// `Ok(false)` when fatfs must do it (new file, a gap, not FAT32).
    fn write_direct(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<bool, StoreError> {
        if self.read_only || self.geo.is_none() {
            return Ok(false);
        }
        let (cache, mut hint) = (self.cache.clone(), self.next_free);
        let Some(geo) = self.geo.clone() else {
            return Ok(false);
        };
        let Some(map) = self.map(path)? else {
            return Ok(false);
        };
        if offset > map.size {
            return Ok(false);
        }
        let end = offset + data.len() as u64;
        let had = map.clusters();
        let need = end.div_ceil(geo.cluster_bytes).saturating_sub(had);
        let (mut rd, mut wr) = (cache_reader(&cache), cache_writer(&cache));
        if let Err(e) = fatmap::extend(&geo, &mut rd, &mut wr, map, need, &mut hint) {
            // No room takes nothing, but a device error part-way may have
            // taken some clusters: count again when asked.
            self.counted = None;
            return Err(e);
        }
        if let Err(e) = Self::fill(&geo, &mut rd, &mut wr, map, offset, data, had == 0) {
            // The data or the size did not get there: the clusters taken for
            // them go back, so the chain stays what the entry's size needs
            // (fsck: "cluster chain length is ...") and none is left taken
            // in no file's use. What fails here is the device, so the undo
            // may fail too: then the map no longer matches the FAT, and the
            // next count of free clusters scans it.
            let undone = need == 0 || fatmap::release(&geo, &mut rd, &mut wr, map, had).is_ok();
            self.counted = None;
            if !undone {
                self.maps.forget(path);
            }
            return Err(e);
        }
        self.raw_allocated += need;
        self.next_free = hint;
        Ok(true)
    }

    /// The data half of [`Self::write_direct`]: `data` into the file's
    /// clusters at `offset`, then its directory entry (size, and the first
    /// cluster when the file `was_empty`) when the file grew. `map` keeps
    /// its size unless the entry was written.
    fn fill(
        geo: &fatmap::Geometry,
        rd: &mut impl FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
        wr: &mut impl FnMut(u64, &[u8]) -> Result<(), StoreError>,
        map: &mut FileMap,
        offset: u64,
        data: &[u8],
        was_empty: bool,
    ) -> Result<(), StoreError> {
        let end = offset + data.len() as u64;
        let mut done = 0usize;
        for (at, n) in map.pieces(geo, offset, data.len() as u64) {
            wr(at, &data[done..done + n as usize])?;
            done += n as usize;
        }
        if end > map.size || (was_empty && !map.runs.is_empty()) {
            let mut e = [0u8; 32];
            rd(map.entry_offset, &mut e)?;
            if let Some(first) = map.runs.first().map(|r| r.cluster) {
                e[20..22].copy_from_slice(&((first >> 16) as u16).to_le_bytes());
                e[26..28].copy_from_slice(&(first as u16).to_le_bytes());
            }
            let size = map.size.max(end);
            e[28..32].copy_from_slice(&(size as u32).to_le_bytes());
            wr(map.entry_offset, &e)?;
            map.size = size;
        }
        Ok(())
    }

    /// Free clusters of the volume (FAT32 with direct allocations): one scan
    /// of the FAT per mount, then that count moved by fatfs's own count (it
    /// knows its allocations and frees, not the direct path's) and by the
    /// direct path's allocations since. fatfs's count may be wrong as a
    /// whole (an FSInfo another system left stale) but not in how it moves.
    fn free_clusters(&mut self, geo: &fatmap::Geometry) -> Result<u64, StoreError> {
        let fatfs_free = self
            .fs
            .stats()
            .map_err(|e| fat_err("free space", e))?
            .free_clusters();
        if let Some(c) = self.counted {
            let free = c.free as i128 + i128::from(fatfs_free)
                - i128::from(c.fatfs_free)
                - i128::from(self.raw_allocated - c.raw_allocated);
            if let Ok(free) = u64::try_from(free) {
                return Ok(free);
            }
        }
        let free = fatmap::count_free(geo, &mut cache_reader(&self.cache))?;
        self.counted = Some(FreeCount {
            free,
            fatfs_free,
            raw_allocated: self.raw_allocated,
        });
        Ok(free)
    }

    /// Flush everything, clear the volume's dirty flag and close it.
    pub fn unmount(mut self) -> Result<(), StoreError> {
        // FSInfo's free count is counted from the FAT (once per mount): fatfs's own count
        // misses the direct path's allocations, a cut run left one fatfs only adjusts (an
        // abort after a kill left "free cluster summary wrong" for `fsck.fat -n`), and
        // fatfs moves its count from the hint another system may have left stale (it stored
        // one wrapped below zero).
        let free = match (self.geo.clone(), self.read_only) {
            (Some(geo), false) => Some(self.free_clusters(&geo)?),
            _ => None,
        };
        // Where the direct path took nothing and nothing was put right, the next-free hint
        // is fatfs's: only a wrong count is rewritten (an open that wrote nothing leaves
        // the medium's bytes as they were).
        let own_hint = self.raw_allocated > 0 || matches!(self.reclaimed, Some(Ok(_)));
        let FatStore {
            fs,
            cache,
            read_only,
            geo,
            next_free,
            dirty_at_mount,
            fat_unclean,
            reclaimed,
            ..
        } = self;
        if read_only {
            // fatfs may hold a free-cluster count it counted for
            // `free_space` and would store it in FSInfo on unmount: the
            // read-only cache refuses that write, which is the point.
            drop(fs);
            return Ok(());
        }
        fs.unmount().map_err(|e| fat_err("unmount", e))?;
        if let (Some(geo), Some(free)) = (&geo, free) {
            let stored = fatmap::fsinfo_hints(geo, &mut cache_reader(&cache))?;
            let next_free = match stored {
                Some((count, _)) if !own_hint && u64::from(count) == free => None,
                Some((_, next)) if !own_hint => Some(next),
                _ => Some(next_free),
            };
            if let Some(next_free) = next_free {
                fatmap::write_fsinfo(
                    geo,
                    &mut cache_reader(&cache),
                    &mut cache_writer(&cache),
                    free,
                    next_free,
                )?;
            }
        }
        if dirty_at_mount && matches!(reclaimed, Some(Ok(_))) {
            // fatfs keeps a dirty flag it found at mount (it cannot know
            // the volume is sound). `fatmap::reclaim` put the file system
            // right at mount (`fsck.fat -n` then finds nothing), so the mark
            // would only ask for a repair that has nothing to repair; what
            // a cut capture leaves of its own (an unfinished generation) is
            // sound files its resume or abort deals with. Cleared also when the
            // command then refuses: the mark stayed on a medium nobody wrote
            // again, and a seal kept it for good.
            let mut b = [0u8; 1];
            cache_reader(&cache)(DIRTY_BYTE as u64, &mut b)?;
            b[0] &= !1;
            cache_writer(&cache)(DIRTY_BYTE as u64, &b)?;
            if let (Some(geo), true) = (&geo, fat_unclean) {
                for copy in 0..geo.fats {
                    let at = geo.fat_offset + copy * geo.fat_bytes + 4;
                    let mut e = [0u8; 4];
                    cache_reader(&cache)(at, &mut e)?;
                    let e = u32::from_le_bytes(e) | FAT1_CLEAN;
                    cache_writer(&cache)(at, &e.to_le_bytes())?;
                }
            }
        }
        cache.sync().map_err(|e| fat_err("unmount", e))
    }

    fn dir(&self, path: &str) -> Result<fatfs::Dir<'_, BlockCache<D>>, StoreError> {
        check_path(path)?;
        if path.is_empty() {
            Ok(self.fs.root_dir())
        } else {
            self.fs
                .root_dir()
                .open_dir(path)
                .map_err(|e| self.path_err(path, e))
        }
    }

    /// [`fat_err`], where a file of another program stands where the format has a
    /// directory (`mcopy x.txt ::/MGEAR`) said as that: it read as a directory entry that
    /// lost its mark, with the advice for a damaged file system.
    fn path_err(&self, path: &str, e: io::Error) -> StoreError {
        if e.to_string() == "Not a directory" {
            if let Some(why) = self.file_in_the_way(path) {
                return StoreError::Io(why);
            }
        }
        fat_err(path, e)
    }

    /// The first directory on the way to `path` that is a file with bytes in it (a
    /// directory whose entry lost its mark has a size of 0), said for [`Self::path_err`].
    fn file_in_the_way(&self, path: &str) -> Option<String> {
        let mut dir = self.fs.root_dir();
        let mut walked = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !walked.is_empty() {
                walked.push('/');
            }
            walked.push_str(part);
            let entry = dir
                .iter()
                .filter_map(Result::ok)
                .find(|e| e.file_name().eq_ignore_ascii_case(part))?;
            if entry.is_dir() {
                dir = entry.to_dir();
                continue;
            }
            return (entry.len() > 0).then(|| {
                format!(
                    "{walked} on the medium is a file of {} bytes where MotionGear keeps a \
                     directory: another program put it there (mcopy, a file manager); nothing \
                     was written. Rename it or move it off the medium (with mtools: `mren -i \
                     MEDIUM ::/{walked} ::/{walked}.OLD`), then run this again",
                    entry.len()
                )
            });
        }
        None
    }

    fn entry(&self, path: &str) -> Result<Option<Entry>, StoreError> {
        let (parent, name) = split_parent(path);
        let dir = match self.dir(parent) {
            Ok(d) => d,
            Err(StoreError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        for e in dir.iter() {
            let e = e.map_err(|e| fat_err(path, e))?;
            if e.file_name().eq_ignore_ascii_case(name) {
                return Ok(Some(Entry {
                    name: e.file_name(),
                    kind: if e.is_dir() {
                        EntryKind::Dir
                    } else {
                        EntryKind::File
                    },
                    len: e.len(),
                }));
            }
        }
        Ok(None)
    }

    fn open_rw(&self, path: &str) -> Result<fatfs::File<'_, BlockCache<D>>, StoreError> {
        check_path(path)?;
        self.fs
            .root_dir()
            .create_file(path)
            .map_err(|e| self.path_err(path, e))
    }
}

/// Where a FAT32 volume keeps its FAT and clusters, from the boot sector.
struct Geometry {
    fat_offset: u64,
    fat_bytes: u64,
    data_offset: u64,
    cluster_bytes: u64,
}

impl Geometry {
    /// Parse the BPB fields this module needs (FAT32 layout, offsets per the
    /// Microsoft FAT specification).
    fn read<D: FatDevice>(cache: &BlockCache<D>) -> io::Result<Geometry> {
        let mut bs = [0u8; 512];
        cache.lock()?.read_at(0, &mut bs)?;
        let u16at = |o: usize| u16::from_le_bytes([bs[o], bs[o + 1]]) as u64;
        let u32at = |o: usize| u32::from_le_bytes([bs[o], bs[o + 1], bs[o + 2], bs[o + 3]]) as u64;
        let bps = u16at(0x0b);
        let spc = bs[0x0d] as u64;
        let reserved = u16at(0x0e);
        let fats = bs[0x10] as u64;
        let fat_sectors = u32at(0x24);
        if bps == 0 || spc == 0 || fats == 0 || fat_sectors == 0 {
            return Err(io::Error::other(
                "the medium's FAT32 boot sector is damaged",
            ));
        }
        Ok(Geometry {
            fat_offset: reserved * bps,
            fat_bytes: fat_sectors * bps,
            data_offset: (reserved + fats * fat_sectors) * bps,
            cluster_bytes: spc * bps,
        })
    }
}

/// `fatfs` 0.3.6 writes long-name entries in front of a new directory's `.`
/// and `..` entries and gives `..` of a first-level directory the root's
/// cluster instead of 0 (fixed upstream in rafalh/rust-fatfs#99 and #100,
/// not yet released). `fsck.fat` and other systems treat such directories
/// as damaged, so after each `create_dir` the new directory's first four
/// slots are rewritten to what the FAT specification requires. The new
/// directory's cluster is one whose FAT entry fatfs wrote meanwhile
/// (`fat_writes`: offsets into the first FAT) and that starts with that
/// entry pattern ([`fatmap::fix_dot_entries`]). fatfs flushes while it
/// makes the directory, so a kill can leave the pattern on the medium: the
/// resume's [`fatmap::reclaim`] puts it right.
fn repair_new_dir<D: FatDevice>(
    cache: &BlockCache<D>,
    geo: &Geometry,
    fat_writes: &[u64],
    parent_is_root: bool,
) -> io::Result<()> {
    // The clusters whose first-FAT entry fatfs wrote while creating the
    // directory (it writes an entry at a time): the new directory's, and a
    // cluster its parent grew by, if any. Found from the writes, not by
    // scanning the FAT before and after (two reads of a FAT of up to 1 GiB
    // per directory made, on a large medium).
    let mut newly_allocated: Vec<u64> = fat_writes
        .iter()
        .map(|off| (off - geo.fat_offset) / 4)
        .filter(|&c| c >= 2 && c < geo.fat_bytes / 4)
        .collect();
    let size = cache.size()?;
    newly_allocated.sort_unstable();
    newly_allocated.dedup();
    for c in newly_allocated {
        let off = geo.data_offset + (c - 2) * geo.cluster_bytes;
        if off + 160 > size {
            continue;
        }
        let mut slots = [0u8; 160];
        cache.lock()?.read_at(off, &mut slots)?;
        // fatfs gives `..` the right cluster below the first level.
        let written = u32::from(u16::from_le_bytes([slots[96 + 20], slots[96 + 21]])) << 16
            | u32::from(u16::from_le_bytes([slots[96 + 26], slots[96 + 27]]));
        let parent = if parent_is_root { 0 } else { written };
        if fatmap::fix_dot_entries(&mut slots, parent) {
            cache.lock()?.write_at(off, &slots[..128])?;
        }
    }
    Ok(())
}

impl<D: FatDevice> Store for FatStore<D> {
    /// [`FatStore::unmount`]: the free count is written and the dirty flag cleared.
    fn close(self: Box<Self>) -> Result<(), StoreError> {
        (*self).unmount()
    }
    fn list(&mut self, dir: &str) -> Result<Vec<Entry>, StoreError> {
        check_path(dir)?;
        self.check_dirs(dir)?;
        let d = self.dir(dir)?;
        let mut out = Vec::new();
        for e in d.iter() {
            let e = e.map_err(|e| fat_err(dir, e))?;
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            out.push(Entry {
                kind: if e.is_dir() {
                    EntryKind::Dir
                } else {
                    EntryKind::File
                },
                len: if e.is_dir() { 0 } else { e.len() },
                name,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn len(&mut self, path: &str) -> Result<Option<u64>, StoreError> {
        check_path(path)?;
        self.check_dirs(split_parent(path).0)?;
        match self.entry(path)? {
            Some(e) if e.kind == EntryKind::File => Ok(Some(e.len)),
            // Every path the format names is a file: a directory there is a damaged entry
            // (its attribute byte), a finding about the medium, not a device error.
            Some(_) => Err(StoreError::Damaged(format!(
                "{path} is a directory where the format has a file: its directory entry is damaged"
            ))),
            None => Ok(None),
        }
    }

    fn locate(&mut self, path: &str, offset: u64, len: u64) -> Result<Option<Located>, StoreError> {
        check_path(path)?;
        let Some(geo) = self.geo.clone() else {
            return Ok(None);
        };
        let cache = self.cache.clone();
        let Some(map) = self.map(path)? else {
            return Ok(None);
        };
        let end = offset.checked_add(len);
        if end.is_none_or(|e| e > map.size || e > map.clusters() * geo.cluster_bytes) {
            return Ok(None);
        }
        let [(at, n)] = map.pieces(&geo, offset, len)[..] else {
            return Ok(None);
        };
        if n != len {
            return Ok(None);
        }
        let device = cache
            .lock()
            .and_then(|mut g| g.range_reader(at, len))
            .map_err(|e| fat_err(path, e))?;
        Ok(device.map(|device| Located { device, at }))
    }

    fn read_at(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError> {
        check_path(path)?;
        if self.geo.is_some() {
            // One device read per contiguous run instead of fatfs's chain
            // walk from the first cluster and one request per cluster.
            let cache = self.cache.clone();
            let Some(geo) = self.geo.clone() else {
                return Err(StoreError::NotFound);
            };
            let Some(map) = self.map(path)? else {
                return Err(StoreError::NotFound);
            };
            return map.read(&geo, &mut cache_reader(&cache), path, offset, buf);
        }
        let mut f = self
            .fs
            .root_dir()
            .open_file(path)
            .map_err(|e| self.path_err(path, e))?;
        let size = f.seek(SeekFrom::End(0)).map_err(|e| fat_err(path, e))?;
        if offset >= size {
            return Ok(0);
        }
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| fat_err(path, e))?;
        let want = buf.len().min((size - offset) as usize);
        f.read_exact(&mut buf[..want])
            .map_err(|e| fat_err(path, e))?;
        Ok(want)
    }

    fn write_at(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        check_fat_size(path, offset.saturating_add(data.len() as u64))?;
        check_path(path)?;
        if self.write_direct(path, offset, data)? {
            return Ok(());
        }
        self.maps.forget(path);
        self.check_dirs(split_parent(path).0)?;
        let mut f = self.open_rw(path)?;
        let size = f.seek(SeekFrom::End(0)).map_err(|e| fat_err(path, e))?;
        if offset > size {
            // fatfs clamps seeks to the file size: fill the gap explicitly.
            let zeros = vec![0u8; (offset - size).min(1 << 20) as usize];
            let mut left = offset - size;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                f.write_all(&zeros[..n]).map_err(|e| fat_err(path, e))?;
                left -= n as u64;
            }
        } else {
            f.seek(SeekFrom::Start(offset))
                .map_err(|e| fat_err(path, e))?;
        }
        f.write_all(data).map_err(|e| fat_err(path, e))?;
        f.flush().map_err(|e| fat_err(path, e))
    }

    fn set_len(&mut self, path: &str, len: u64) -> Result<(), StoreError> {
        check_fat_size(path, len)?;
        check_path(path)?;
        self.maps.forget(path);
        self.check_dirs(split_parent(path).0)?;
        let mut f = self.open_rw(path)?;
        let size = f.seek(SeekFrom::End(0)).map_err(|e| fat_err(path, e))?;
        if len < size {
            f.seek(SeekFrom::Start(len)).map_err(|e| fat_err(path, e))?;
            f.truncate().map_err(|e| fat_err(path, e))?;
        } else if len > size {
            let zeros = vec![0u8; (len - size).min(1 << 20) as usize];
            let mut left = len - size;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                f.write_all(&zeros[..n]).map_err(|e| fat_err(path, e))?;
                left -= n as u64;
            }
        }
        f.flush().map_err(|e| fat_err(path, e))
    }

    fn create_dir_all(&mut self, path: &str) -> Result<(), StoreError> {
        check_path(path)?;
        self.check_dirs(path)?;
        let mut dir = self.fs.root_dir();
        for (depth, part) in path.split('/').filter(|p| !p.is_empty()).enumerate() {
            dir = match dir.open_dir(part) {
                Ok(d) => d,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    let geo = Geometry::read(&self.cache).map_err(|e| fat_err(path, e))?;
                    let fat = geo.fat_offset..geo.fat_offset + geo.fat_bytes;
                    self.cache.lock().map_err(|e| fat_err(path, e))?.watch =
                        Some((fat, Vec::new()));
                    let made = dir.create_dir(part);
                    let written = self
                        .cache
                        .lock()
                        .map_err(|e| fat_err(path, e))?
                        .watch
                        .take()
                        .map(|(_, w)| w)
                        .unwrap_or_default();
                    let d = made.map_err(|e| fat_err(path, e))?;
                    repair_new_dir(&self.cache, &geo, &written, depth == 0)
                        .map_err(|e| fat_err(path, e))?;
                    d
                }
                Err(e) => return Err(self.path_err(path, e)),
            };
        }
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), StoreError> {
        check_path(from)?;
        check_path(to)?;
        if from.eq_ignore_ascii_case(to) {
            // One entry on FAT (names compare without case): removing `to` first would delete
            // the file itself. The board's engine (`FatFiles`) does the same.
            return match self.len(from)? {
                Some(_) => Ok(()),
                None => Err(StoreError::NotFound),
            };
        }
        self.check_dirs(split_parent(from).0)?;
        self.check_dirs(split_parent(to).0)?;
        self.maps.clear();
        self.sound_dirs.clear();
        let root = self.fs.root_dir();
        match root.remove(to) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(fat_err(to, e)),
        }
        root.rename(from, &root, to).map_err(|e| fat_err(from, e))
    }

    fn remove_file(&mut self, path: &str) -> Result<(), StoreError> {
        check_path(path)?;
        // The path itself too: an empty directory is removed here, after fatfs read it.
        self.check_dirs(path)?;
        self.maps.clear();
        self.sound_dirs.clear();
        match self.fs.root_dir().remove(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(fat_err(path, e)),
        }
    }

    fn sync(&mut self, path: &str) -> Result<(), StoreError> {
        check_path(path)?;
        // Directory entries were flushed by every write; push the cache
        // and the device's own buffers out.
        self.cache.sync().map_err(|e| fat_err(path, e))
    }

    fn free_space(&mut self) -> Result<Option<u64>, StoreError> {
        if let Some(geo) = self.geo.clone() {
            // Counted from the FAT: fatfs's count misses the direct path's allocations, and
            // takes FSInfo's hint as it is (one another system left stale made an empty
            // medium "too small" for a capture, and its directories "likely damaged").
            let free = self.free_clusters(&geo)?;
            return Ok(Some(free * geo.cluster_bytes));
        }
        let st = self.fs.stats().map_err(|e| fat_err("free space", e))?;
        Ok(Some(st.free_clusters() as u64 * st.cluster_size() as u64))
    }

    fn damaged_hints(&self) -> Option<String> {
        self.hints.clone()
    }
    fn left_mid_write(&self) -> bool {
        self.dirty_at_mount
    }
    /// With the damage the open of a volume left mid-write met and left alone (a chain out
    /// of the volume is otherwise said where the file is read): a write on top of it would
    /// leave the volume marked and `fsck.fat -n` failing.
    fn chain_findings(&mut self) -> Result<Vec<String>, StoreError> {
        let Some(geo) = self.geo.clone() else {
            return Ok(Vec::new());
        };
        let (mut findings, lost) =
            fatmap::writer_findings(&geo, &mut cache_reader(&self.cache), self.dirty_at_mount)?;
        // Clusters nothing holds on a volume closed cleanly: a deleted or damaged entry (a
        // capture's directory, hidden), which verify says not to write over; a capture went
        // on, exit 0, without a word. (Left mid-write, the open freed what a cut leaves, or
        // said why not below.)
        if !self.dirty_at_mount && lost.clusters > 0 {
            findings.push(crate::medium::lost_finding(&lost, false));
        }
        // FAT copies that disagree on a volume closed cleanly: one is damaged (a zeroed
        // second FAT, say), and a write would bring only its own entries into the other, so
        // the shipment failed `verify` at the target. (Left mid-write, the open made them
        // equal, or said why not above.)
        if !self.dirty_at_mount {
            if let Some((n, first)) =
                fatmap::fat_copies_differ(&geo, &mut cache_reader(&self.cache))?
            {
                findings.push(format!(
                    "the volume's two FAT copies disagree on {n} cluster entr{} (the first at \
                     cluster {first}) on a medium closed cleanly, which no write leaves: one of \
                     them is damaged. Do not write to the medium; `mgear verify` of it says how \
                     to put it right on a copy",
                    if n == 1 { "y" } else { "ies" },
                ));
            }
        }
        if let Some(Err(why)) = &self.reclaimed {
            if !why.is_empty() {
                // Said once, first: what the open found and left alone.
                findings.retain(|f| !f.starts_with(why.as_str()));
                findings.insert(
                    0,
                    format!(
                        "{why} (the volume was left mid-write by a run that was cut off, and \
                         this is more than a cut write leaves: nothing was put right)"
                    ),
                );
            }
        }
        Ok(findings)
    }

    fn file_system_findings(&mut self) -> Result<Vec<String>, StoreError> {
        let Some(geo) = self.geo.clone() else {
            return Ok(Vec::new());
        };
        let (mut findings, lost) =
            fatmap::chain_findings(&geo, &mut cache_reader(&self.cache), self.dirty_at_mount)?;
        // Read as put right (see `simulated`): said, as what the next writer does; or why
        // the next writer will put nothing right (it said "mid-write", and nothing else).
        match &self.simulated {
            Some(Ok(r)) => findings.insert(0, fatmap::read_as_put_right(r)),
            Some(Err(why)) if !why.is_empty() => {
                findings.retain(|f| !f.starts_with(why.as_str()));
                findings.insert(
                    0,
                    format!(
                    "{why} (the volume was left mid-write by a run that was cut off, and this is \
                     more than a cut write leaves: the next writer puts nothing right and \
                     refuses)"
                ),
                )
            }
            _ => {}
        }
        findings.extend(fatmap::oversized_fat(&geo));
        // Left mid-write, chains nothing holds are what the cut left (the next writer frees
        // them), but for a finished generation's directory; closed cleanly, a deleted or
        // damaged entry.
        let finished = lost.dirs.iter().any(fatmap::LostDir::finished_generation);
        if lost.clusters > 0 && (!self.dirty_at_mount || finished) {
            findings.push(crate::medium::lost_finding(&lost, self.dirty_at_mount));
        }
        let differ = fatmap::fat_copies_differ(&geo, &mut cache_reader(&self.cache))?;
        findings.extend(match differ {
            // Marked dirty: what a run cut off mid-write leaves (the first copy written, the
            // second not yet), not damage; verify told to `dd` one FAT over the other.
            Some((n, first)) if self.dirty_at_mount => vec![format!(
                "the volume was left mid-write by a run that was cut off (its dirty mark is set), \
                 and its two FAT copies disagree on {n} cluster entr{} (the first at cluster \
                 {first}), as such a cut leaves: the next capture onto it, or `mgear medium fsck \
                 --repair`, puts it right (keeping the copy on which every file's chain covers \
                 its size, and freeing nothing a file holds)",
                if n == 1 { "y" } else { "ies" },
            )],
            other => match other {
                Some((n, first)) => vec![format!(
                    "the volume's two FAT copies disagree on {n} cluster entr{} (the first at \
                     cluster {first}): one of them is damaged, and files are read through the \
                     first. Work on copies of the medium, never the original: if the captures \
                     check out (`mgear verify --identity` of a copy), the second FAT is the \
                     damaged one and `fsck.fat -a COPY` (which keeps the first) repairs it; if \
                     they do not, copy the second FAT over the first on a copy (`dd if=COPY \
                     of=COPY bs=512 skip={} seek={} count={} conv=notrunc`) and verify that \
                     copy",
                    if n == 1 { "y" } else { "ies" },
                    (geo.fat_offset + geo.fat_bytes) / 512,
                    geo.fat_offset / 512,
                    geo.fat_bytes / 512
                )],
                None => Vec::new(),
            },
        });
        Ok(findings)
    }

    fn lost_dirs(&mut self, under: &str) -> Result<Vec<Vec<String>>, StoreError> {
        let Some(geo) = self.geo.clone() else {
            return Ok(Vec::new());
        };
        let Some(at) = fatmap::dir_cluster(&geo, &mut cache_reader(&self.cache), under)? else {
            return Ok(Vec::new());
        };
        // Left mid-write, a lost directory is what the cut left, but a finished generation's.
        let dirty = self.dirty_at_mount;
        self.with_lost(&geo, |lost| {
            lost.dirs
                .iter()
                .filter(|d| d.parent == at && (!dirty || d.finished_generation()))
                .map(|d| d.names.clone())
                .collect()
        })
    }

    fn lost_clusters(&mut self) -> Result<Option<String>, StoreError> {
        // Left mid-write, chains nothing holds are what the cut left.
        let Some(geo) = self.geo.clone().filter(|_| !self.dirty_at_mount) else {
            return Ok(None);
        };
        self.with_lost(&geo, |lost| {
            (lost.clusters > 0).then(|| crate::medium::lost_finding(lost, false))
        })
    }

    fn used_space(&mut self) -> Result<Option<u64>, StoreError> {
        let st = self.fs.stats().map_err(|e| fat_err("space in use", e))?;
        let total = st.total_clusters() as u64 * st.cluster_size() as u64;
        Ok(self.free_space()?.map(|free| total.saturating_sub(free)))
    }
}

/// Damage made on purpose, for the tests of both FAT engines.
#[doc(hidden)]
pub mod testing {
    use std::io::{self, Read, Seek, SeekFrom, Write};
    use std::path::Path;

    use super::fatmap;

    /// The FAT32 image `image` opened for writing, its geometry, and the first cluster of the
    /// directory `name` (11-byte short name) in its root's first cluster.
    fn top_directory(
        image: &Path,
        name: &[u8; 11],
    ) -> io::Result<(std::fs::File, fatmap::Geometry, u32)> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(image)?;
        let mut boot = [0u8; 512];
        f.read_exact(&mut boot)?;
        let geo = fatmap::Geometry::parse(&boot).ok_or_else(|| bad("not FAT32"))?;
        let mut root = vec![0u8; geo.cluster_bytes as usize];
        f.seek(SeekFrom::Start(geo.cluster_offset(geo.root_cluster)))?;
        f.read_exact(&mut root)?;
        let e = root
            .chunks_exact(32)
            .find(|e| &e[..11] == name && e[11] & 0x10 != 0)
            .ok_or_else(|| bad("no such directory in the root's first cluster"))?;
        let c = (u32::from(u16::from_le_bytes([e[20], e[21]])) << 16)
            | u32::from(u16::from_le_bytes([e[26], e[27]]));
        Ok((f, geo, c))
    }

    /// Damage the `.` entry of the directory `name` (11-byte short name) in the root of the
    /// FAT32 image `image` (one byte flipped: `mgear`'s testers found it): it then reads as a
    /// subdirectory of another name that is the directory itself.
    pub fn mangle_dot_entry(image: &Path, name: &[u8; 11]) -> io::Result<()> {
        let (mut f, geo, c) = top_directory(image, name)?;
        let at = geo.cluster_offset(c);
        let mut first = [0u8; 1];
        f.seek(SeekFrom::Start(at))?;
        f.read_exact(&mut first)?;
        if first[0] != b'.' {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the directory's first entry is not `.`",
            ));
        }
        f.seek(SeekFrom::Start(at))?;
        f.write_all(&[b'.' ^ 0xff])
    }

    /// Make the directory `name` (11-byte short name) in the root of the
    /// FAT32 image `image` loop: its first cluster's FAT entry points at
    /// itself in every FAT copy, and its free slots become deleted entries,
    /// so no end-of-directory entry stops a walk.
    pub fn loop_top_directory(image: &Path, name: &[u8; 11]) -> io::Result<()> {
        let (mut f, geo, c) = top_directory(image, name)?;
        for copy in 0..geo.fats {
            f.seek(SeekFrom::Start(
                geo.fat_offset + copy * geo.fat_bytes + u64::from(c) * 4,
            ))?;
            f.write_all(&c.to_le_bytes())?;
        }
        let at = geo.cluster_offset(c);
        let mut dir = vec![0u8; geo.cluster_bytes as usize];
        f.seek(SeekFrom::Start(at))?;
        f.read_exact(&mut dir)?;
        for e in dir.chunks_exact_mut(32).filter(|e| e[0] == 0) {
            e[0] = 0xe5;
        }
        f.seek(SeekFrom::Start(at))?;
        f.write_all(&dir)?;
        f.sync_all()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;

    fn image(bytes: u64) -> (tempfile::TempDir, std::path::PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("medium.img");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(bytes).unwrap();
        (tmp, p)
    }

    fn open_rw(p: &std::path::Path) -> std::fs::File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .unwrap()
    }

    #[test]
    fn format_write_read_and_fsck_clean() {
        let (_t, p) = image(64 << 20);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        s.create_dir_all("MGEAR/web01/G0001").unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        s.write_at("MGEAR/web01/G0001/SEG-00000", 0, &big).unwrap();
        s.write_at("MGEAR/web01/G0001/SEG-00000", 3_000_000, b"tail")
            .unwrap();
        s.write_at("MGEAR/web01/G0001/JRNL-A", 100, b"journal")
            .unwrap();
        s.sync("MGEAR/web01/G0001/SEG-00000").unwrap();
        assert_eq!(s.len("MGEAR/web01/G0001/JRNL-A").unwrap(), Some(107));
        let mut back = vec![0u8; 3_000_004];
        s.read_exact_at("MGEAR/web01/G0001/SEG-00000", 0, &mut back)
            .unwrap();
        assert_eq!(&back[..3_000_000], &big[..]);
        assert_eq!(&back[3_000_000..], b"tail");
        s.set_len("MGEAR/web01/G0001/SEG-00000", 10).unwrap();
        assert_eq!(s.len("MGEAR/web01/G0001/SEG-00000").unwrap(), Some(10));
        s.rename("MGEAR/web01/G0001/JRNL-A", "MGEAR/web01/G0001/JRNL-B")
            .unwrap();
        assert_eq!(s.len("MGEAR/web01/G0001/JRNL-A").unwrap(), None);
        let names: Vec<_> = s
            .list("MGEAR/web01/G0001")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec!["JRNL-B", "SEG-00000"]);
        s.unmount().unwrap();

        // The image must be a clean FAT32 volume for standard tools.
        fsck(&p);
        // And reopening sees the same data.
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        let mut b = [0u8; 7];
        s.read_exact_at("MGEAR/web01/G0001/JRNL-B", 100, &mut b)
            .unwrap();
        assert_eq!(&b, b"journal");
    }

    /// Every new directory is repaired (see `repair_new_dir`), also when
    /// making it grows its parent by a cluster, and on a FAT fatfs must
    /// search for a free cluster in.
    #[test]
    fn many_directories_in_one_parent_stay_fsck_clean() {
        let (_t, p) = image(64 << 20);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        s.write_at("FILLER", 0, &vec![7u8; 300_000]).unwrap();
        // 4 KiB clusters hold 128 slots; each of these names takes 3.
        for i in 0..100 {
            s.create_dir_all(&format!("MGEAR/generation-number-{i:04}/G0001"))
                .unwrap();
        }
        let geo = Geometry::read(&s.cache).unwrap();
        s.unmount().unwrap();
        fsck(&p);
        // fsck.fat 4.2 accepts fatfs's layout: look at the slots. Every `.`
        // entry opens its cluster, and `..` follows it.
        let img = std::fs::read(&p).unwrap();
        let dots: Vec<usize> = (geo.data_offset as usize..img.len() - 64)
            .step_by(32)
            .filter(|&o| &img[o..o + 11] == b".          " && img[o + 11] == 0x10)
            .collect();
        assert_eq!(dots.len(), 1 + 2 * 100, "MGEAR, and two levels per name");
        for o in dots {
            assert_eq!(
                (o - geo.data_offset as usize) % geo.cluster_bytes as usize,
                0
            );
            assert_eq!(&img[o + 32..o + 43], b"..         ");
        }
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        assert_eq!(s.list("MGEAR").unwrap().len(), 100);
        assert_eq!(s.list("MGEAR/generation-number-0099").unwrap().len(), 1);
    }

    #[test]
    fn a_rename_onto_its_own_name_keeps_the_file() {
        let (_t, p) = image(64 << 20);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        s.create_dir_all("MGEAR/web01").unwrap();
        s.write_at("MGEAR/web01/JRNL-A", 0, b"journal").unwrap();
        s.rename("MGEAR/web01/JRNL-A", "MGEAR/web01/JRNL-A")
            .unwrap();
        s.rename("MGEAR/web01/JRNL-A", "MGEAR/web01/jrnl-a")
            .unwrap();
        assert_eq!(s.len("MGEAR/web01/JRNL-A").unwrap(), Some(7));
        assert_eq!(
            s.rename("MGEAR/web01/GONE", "MGEAR/web01/gone"),
            Err(StoreError::NotFound)
        );
        s.unmount().unwrap();
        fsck(&p);
    }

    /// `fsck.fat -n` finds the image clean (also used by `direct`'s tests).
    pub(crate) fn fsck(p: &std::path::Path) {
        let out = Command::new("fsck.fat")
            .arg("-n")
            .arg(p)
            .output()
            .expect("fsck.fat from dosfstools (./test.sh installs it)");
        assert!(
            out.status.success(),
            "fsck.fat: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// A file that counts its device syncs.
    struct CountingSyncs(std::fs::File, Arc<std::sync::atomic::AtomicUsize>);
    impl Read for CountingSyncs {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for CountingSyncs {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.0.flush()
        }
    }
    impl Seek for CountingSyncs {
        fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
            self.0.seek(pos)
        }
    }
    impl FatDevice for CountingSyncs {
        fn sync_device(&mut self) -> io::Result<()> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.0.sync_data()
        }
    }

    /// A sync asks the device for one only when something was written
    /// since the last one (a checkpoint syncs its segment, then its IPART:
    /// on FAT the first covers both).
    #[test]
    fn a_sync_with_nothing_new_asks_the_device_for_nothing() {
        let (_t, p) = image(64 << 20);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let syncs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = || syncs.load(std::sync::atomic::Ordering::SeqCst);
        let dev = CountingSyncs(open_rw(&p), syncs.clone());
        let mut s = FatStore::open(dev).unwrap();
        s.create_dir_all("MGEAR/G1").unwrap();
        s.write_at("MGEAR/G1/SEG-00000", 0, &[1; 100_000]).unwrap();
        s.write_at("MGEAR/G1/IPART", 0, &[2; 500]).unwrap();
        let before = count();
        s.sync("MGEAR/G1/SEG-00000").unwrap();
        assert_eq!(count(), before + 1);
        s.sync("MGEAR/G1/IPART").unwrap();
        assert_eq!(count(), before + 1, "nothing new since the last sync");
        // A direct append and a small cached write each need one again.
        s.write_at("MGEAR/G1/SEG-00000", 100_000, &[3; 100_000])
            .unwrap();
        s.sync("MGEAR/G1/SEG-00000").unwrap();
        assert_eq!(count(), before + 2);
        s.write_at("MGEAR/G1/IPART", 500, &[4; 10]).unwrap();
        s.sync("MGEAR/G1/IPART").unwrap();
        assert_eq!(count(), before + 3);
        s.unmount().unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        let mut b = [0u8; 10];
        s.read_exact_at("MGEAR/G1/IPART", 500, &mut b).unwrap();
        assert_eq!(b, [4; 10]);
    }

    /// The free count kept between scans (`FatStore::free_clusters`) is the
    /// FAT's, whichever allocator took or gave back clusters.
    #[test]
    fn the_kept_free_count_is_what_a_scan_of_the_fat_finds() {
        let (_t, p) = image(64 << 20);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        let geo = s.geo.clone().unwrap();
        let check = |s: &mut FatStore<_>, step: &str| {
            let scanned = fatmap::count_free(&geo, &mut cache_reader(&s.cache)).unwrap();
            let kept = s.free_space().unwrap().unwrap() / geo.cluster_bytes;
            assert_eq!(kept, scanned, "after {step}");
        };
        s.create_dir_all("MGEAR/G1").unwrap();
        let piece = vec![5u8; 300_001];
        for i in 0..6u64 {
            // The first write creates the file (fatfs), the rest append on
            // the direct path; the small file grows through fatfs between.
            s.write_at("MGEAR/G1/SEG-00000", i * 300_001, &piece)
                .unwrap();
            s.write_at("MGEAR/G1/IPART", i * 5000, &[1; 5000]).unwrap();
            check(&mut s, &format!("append {i}"));
        }
        assert!(s.raw_allocated > 0, "appends must take the direct path");
        s.create_dir_all("MGEAR/G2/X").unwrap();
        check(&mut s, "making directories");
        s.set_len("MGEAR/G1/SEG-00000", 100_000).unwrap();
        check(&mut s, "a truncation");
        s.remove_file("MGEAR/G1/IPART").unwrap();
        check(&mut s, "a removal");
        s.write_at("MGEAR/G1/SEG-00000", 100_000, &piece).unwrap();
        check(&mut s, "appending again");
        s.unmount().unwrap();
        fsck(&p);
    }

    #[test]
    fn direct_appends_stay_contiguous_and_fatfs_reads_them() {
        let (_t, p) = image(64 << 20);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        s.create_dir_all("MGEAR/G1").unwrap();
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i * 13 % 253) as u8).collect();
        // Uneven pieces, as records are: the first creates the file (fatfs),
        // the rest append through the direct path, interleaved with a
        // second file so allocations compete.
        let mut off = 0usize;
        for (i, piece) in data.chunks(77_777).enumerate() {
            s.write_at("MGEAR/G1/SEG-00000", off as u64, piece).unwrap();
            s.write_at("MGEAR/G1/IPART", i as u64 * 100, &[i as u8; 100])
                .unwrap();
            off += piece.len();
        }
        assert!(s.raw_allocated > 0, "appends must take the direct path");
        // Each cluster the small file takes can split the segment once, no more.
        let small = s.map("MGEAR/G1/IPART").unwrap().unwrap().clusters() as usize;
        let runs = s.map("MGEAR/G1/SEG-00000").unwrap().unwrap().runs.len();
        assert!(
            runs <= small + 1,
            "segment in {runs} runs around {small} clusters of the small file"
        );
        assert_eq!(
            s.len("MGEAR/G1/SEG-00000").unwrap(),
            Some(data.len() as u64)
        );
        // Overwrite inside the file, then read across the whole of it.
        s.write_at("MGEAR/G1/SEG-00000", 4095, b"XYZ").unwrap();
        let mut want = data.clone();
        want[4095..4098].copy_from_slice(b"XYZ");
        let mut back = vec![0u8; data.len()];
        s.read_exact_at("MGEAR/G1/SEG-00000", 0, &mut back).unwrap();
        assert!(back == want);
        let free = s.free_space().unwrap().unwrap();
        s.unmount().unwrap();
        fsck(&p);

        // The fatfs engine alone (no direct path) reads the same bytes and
        // agrees on the free space recorded in FSInfo.
        let fs = fatfs::FileSystem::new(open_rw(&p), fatfs::FsOptions::new()).unwrap();
        let mut f = fs.root_dir().open_file("MGEAR/G1/SEG-00000").unwrap();
        let mut all = Vec::new();
        f.read_to_end(&mut all).unwrap();
        assert!(all == want);
        let mut ip = Vec::new();
        fs.root_dir()
            .open_file("MGEAR/G1/IPART")
            .unwrap()
            .read_to_end(&mut ip)
            .unwrap();
        assert_eq!(ip.len(), data.chunks(77_777).count() * 100);
        assert_eq!(&ip[100..200], &[1u8; 100][..]);
        let st = fs.stats().unwrap();
        assert_eq!(st.free_clusters() as u64 * st.cluster_size() as u64, free);
    }

    #[test]
    fn direct_reads_follow_fragmented_chains_fatfs_wrote() {
        let (_t, p) = image(64 << 20);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let a: Vec<u8> = (0..700_000u32).map(|i| (i % 241) as u8).collect();
        let b: Vec<u8> = (0..500_000u32).map(|i| (i % 239) as u8).collect();
        {
            // Interleaved cluster-by-cluster appends with fatfs itself give
            // two chains that alternate on the medium; long and short names.
            let fs = fatfs::FileSystem::new(open_rw(&p), fatfs::FsOptions::new()).unwrap();
            let d = fs.root_dir().create_dir("captures").unwrap();
            let mut fa = d.create_file("a long file name.bin").unwrap();
            let mut fb = d.create_file("B.DAT").unwrap();
            for i in 0..a.len().div_ceil(1000) {
                let ra = &a[(i * 1000).min(a.len())..((i + 1) * 1000).min(a.len())];
                let rb = &b[(i * 1000).min(b.len())..((i + 1) * 1000).min(b.len())];
                fa.write_all(ra).unwrap();
                fb.write_all(rb).unwrap();
            }
            fa.flush().unwrap();
            fb.flush().unwrap();
        }
        let mut s = FatStore::open_read_only(std::fs::File::open(&p).unwrap()).unwrap();
        let m = s.map("CAPTURES/A LONG FILE NAME.BIN").unwrap().unwrap();
        assert!(
            m.runs.len() > 10,
            "the chains must interleave: {:?}",
            m.runs.len()
        );
        for (name, want) in [
            ("captures/a long file name.bin", &a),
            ("captures/b.dat", &b),
        ] {
            let mut back = vec![0u8; want.len()];
            s.read_exact_at(name, 0, &mut back).unwrap();
            assert!(&back == want, "{name}");
            let mut mid = vec![0u8; 10_000];
            s.read_exact_at(name, 123_457, &mut mid).unwrap();
            assert!(mid[..] == want[123_457..133_457], "{name}");
            let mut tail = [0u8; 64];
            let n = s.read_at(name, want.len() as u64 - 10, &mut tail).unwrap();
            assert_eq!(&tail[..n], &want[want.len() - 10..]);
        }
        assert_eq!(
            s.read_at("captures/none", 0, &mut [0u8; 4]),
            Err(StoreError::NotFound)
        );
        assert_eq!(
            s.write_at("captures/b.dat", 0, b"x"),
            Err(StoreError::ReadOnly)
        );
        s.unmount().unwrap();
    }

    #[test]
    fn read_only_open_writes_nothing() {
        let (_t, p) = image(64 << 20);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        s.create_dir_all("D").unwrap();
        s.write_at("D/F", 0, &[5u8; 10_000]).unwrap();
        s.unmount().unwrap();
        let before = std::fs::read(&p).unwrap();
        let mut s = FatStore::open_read_only(std::fs::File::open(&p).unwrap()).unwrap();
        assert!(s.free_space().unwrap().unwrap() > 0);
        assert_eq!(s.list("D").unwrap().len(), 1);
        for e in [
            s.write_at("D/F", 10_000, b"more").unwrap_err(),
            s.set_len("D/F", 1).unwrap_err(),
            s.create_dir_all("E").unwrap_err(),
            s.remove_file("D/F").unwrap_err(),
        ] {
            assert_eq!(e, StoreError::ReadOnly);
        }
        s.sync("D/F").unwrap();
        s.unmount().unwrap();
        assert!(
            std::fs::read(&p).unwrap() == before,
            "a read-only open changed the medium"
        );
    }

    #[test]
    fn full_medium_reports_no_space() {
        let (_t, p) = image(MIN_FAT32_BYTES);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        let chunk = vec![0xa5u8; 1 << 20];
        let mut err = None;
        for i in 0..64u64 {
            if let Err(e) = s.write_at("BIG", i << 20, &chunk) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err, Some(StoreError::NoSpace));
        // The volume stays consistent: the file's size matches its cluster
        // chain, no cluster leaked, FSInfo's free count right.
        s.unmount().unwrap();
        fsck(&p);
        // Freeing the file gives every cluster back.
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        s.remove_file("BIG").unwrap();
        s.unmount().unwrap();
        fsck(&p);
    }

    /// A capture appends records to its segment until the medium is full. When the
    /// append that fails needed a few clusters more than were free, and those free
    /// clusters lay at the end of the volume right after the segment, the direct
    /// path's allocator counted them twice: the append "succeeded", the segment's
    /// size went past its cluster chain, and clusters were left marked used but
    /// in no chain (fsck: "File size is ..., cluster chain length is ...",
    /// "Reclaimed ... unused clusters", a wrong free count).
    #[test]
    fn an_append_a_little_larger_than_the_free_space_fails_and_leaves_the_fat_clean() {
        let (_t, p) = image(MIN_FAT32_BYTES);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        s.create_dir_all("MGEAR/G1").unwrap();
        let seg = "MGEAR/G1/SEG-00000";
        let cb = s.geo.clone().unwrap().cluster_bytes;
        // Created by fatfs, then appended to through the direct path, as a capture does.
        s.write_at(seg, 0, &[1u8; 100]).unwrap();
        let free = |s: &mut FatStore<std::fs::File>| s.free_space().unwrap().unwrap() / cb;
        let mut len = 100u64;
        let chunk = vec![0x5au8; 1 << 20];
        // Fill up to `leave` free clusters, all of them right after the segment.
        let leave = 8;
        loop {
            let room = (free(&mut s) - leave) * cb + (cb - len % cb) % cb;
            if room == 0 {
                break;
            }
            let n = room.min(chunk.len() as u64) as usize;
            s.write_at(seg, len, &chunk[..n]).unwrap();
            len += n as u64;
        }
        assert_eq!(free(&mut s), leave);
        // One cluster more than is free: refused, nothing taken.
        let too_much = vec![7u8; ((leave + 1) * cb) as usize];
        assert_eq!(s.write_at(seg, len, &too_much), Err(StoreError::NoSpace));
        assert_eq!(s.len(seg).unwrap(), Some(len));
        assert_eq!(free(&mut s), leave);
        // A record header that fits, then a body that does not (mid-record).
        s.write_at(seg, len, &[9u8; 64]).unwrap();
        len += 64;
        assert_eq!(
            s.write_at(seg, len, &too_much[..(leave * cb) as usize]),
            Err(StoreError::NoSpace)
        );
        assert_eq!(s.len(seg).unwrap(), Some(len));
        s.unmount().unwrap();
        fsck(&p);
        // The uncommitted tail cut back and the rest removed (capture --abort):
        // every cluster comes back and the volume stays clean.
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        s.set_len(seg, 100).unwrap();
        s.unmount().unwrap();
        fsck(&p);
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        s.remove_file(seg).unwrap();
        s.remove_file("MGEAR/G1").unwrap();
        s.remove_file("MGEAR").unwrap();
        let all = s.geo.clone().unwrap().cluster_count as u64 - 1;
        assert_eq!(free(&mut s), all);
        s.unmount().unwrap();
        fsck(&p);
    }

    /// A write-back that fails where nobody hears of it (`fatfs` flushes a file handle on
    /// drop and drops the error) fails every later sync: the blocks it held were taken
    /// for written, the next sync found nothing to do and said "durable", and a capture's
    /// journal then named records the medium never got. A device that refuses writes
    /// (read-only) loses nothing: the cache drops what it held and reads the device.
    #[test]
    fn a_write_back_that_failed_unheard_fails_every_later_sync() {
        let (_t, p) = image(MIN_FAT32_BYTES);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cache = BlockCache::new(FailsWrites(open_rw(&p), fail.clone(), 5, 0)).unwrap();
        {
            let mut w = cache.clone();
            w.seek(SeekFrom::Start(1 << 20)).unwrap();
            w.write_all(&[7u8; 100]).unwrap();
            fail.store(true, std::sync::atomic::Ordering::SeqCst);
            assert!(w.flush().is_err(), "the device failed it");
            fail.store(false, std::sync::atomic::Ordering::SeqCst);
        }
        let e = cache.sync().unwrap_err();
        assert!(e.to_string().contains("failed earlier"), "{e}");
        assert!(cache.sync().is_err(), "and again");
        // Refused (EPERM): nothing kept dirty, the device's bytes read back.
        let cache = BlockCache::new(FailsWrites(open_rw(&p), fail.clone(), 1, 0)).unwrap();
        let mut w = cache.clone();
        w.seek(SeekFrom::Start(2 << 20)).unwrap();
        w.write_all(&[9u8; 100]).unwrap();
        fail.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(w.flush().is_err());
        fail.store(false, std::sync::atomic::Ordering::SeqCst);
        cache.sync().unwrap();
        let mut back = [1u8; 100];
        w.seek(SeekFrom::Start(2 << 20)).unwrap();
        w.read_exact(&mut back).unwrap();
        assert_eq!(back, [0u8; 100], "the device's bytes, not the refused ones");
    }

    /// Fails every write of at least `.3` bytes with OS error `.2` while `.1` is set: with
    /// ENOSPC and `BYPASS`, a device refusing a segment's data as a sparse image on a full
    /// host file system does.
    struct FailsWrites(
        std::fs::File,
        Arc<std::sync::atomic::AtomicBool>,
        i32,
        usize,
    );
    impl Read for FailsWrites {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for FailsWrites {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if buf.len() >= self.3 && self.1.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(self.2));
            }
            self.0.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.0.flush()
        }
    }
    impl Seek for FailsWrites {
        fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
            self.0.seek(pos)
        }
    }
    impl FatDevice for FailsWrites {
        fn sync_device(&mut self) -> io::Result<()> {
            self.0.sync_data()
        }
    }

    /// An append whose data the device refuses after its clusters were taken gives
    /// them back: the chain stays as long as the file's size, nothing leaks, the
    /// free count holds, and the next append goes where the failed one would have.
    #[test]
    fn an_append_the_device_refuses_gives_its_clusters_back() {
        let (_t, p) = image(MIN_FAT32_BYTES);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let refuse = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut s = FatStore::open(FailsWrites(open_rw(&p), refuse.clone(), 28, BYPASS)).unwrap();
        s.create_dir_all("MGEAR/G1").unwrap();
        let (seg, empty) = ("MGEAR/G1/SEG-00000", "MGEAR/G1/SEG-00001");
        s.write_at(seg, 0, &[1u8; 100]).unwrap();
        s.write_at(seg, 100, &[2u8; 300_000]).unwrap();
        // An empty file: its first clusters come from the direct path too.
        s.set_len(empty, 0).unwrap();
        let free = s.free_space().unwrap();
        refuse.store(true, std::sync::atomic::Ordering::SeqCst);
        let piece = vec![3u8; 1 << 20];
        assert_eq!(s.write_at(seg, 300_100, &piece), Err(StoreError::NoSpace));
        assert_eq!(s.write_at(empty, 0, &piece), Err(StoreError::NoSpace));
        assert_eq!(s.len(seg).unwrap(), Some(300_100));
        assert_eq!(s.len(empty).unwrap(), Some(0));
        assert_eq!(s.free_space().unwrap(), free);
        refuse.store(false, std::sync::atomic::Ordering::SeqCst);
        s.unmount().unwrap();
        fsck(&p);
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        s.write_at(seg, 300_100, &piece).unwrap();
        assert_eq!(s.map(seg).unwrap().unwrap().runs.len(), 1);
        let mut back = vec![0u8; piece.len()];
        s.read_exact_at(seg, 300_100, &mut back).unwrap();
        assert!(back == piece);
        s.unmount().unwrap();
        fsck(&p);
    }

    #[test]
    fn not_fat_is_a_clear_error() {
        let (_t, p) = image(40 << 20);
        let e = FatStore::open(open_rw(&p)).err().unwrap();
        assert!(e.to_string().contains("mgear medium format"), "{e}");
    }

    #[test]
    fn too_small_to_format() {
        let (_t, p) = image(1 << 20);
        let e = FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap_err();
        assert!(e.to_string().contains("at least"), "{e}");
    }

    #[test]
    fn layout_by_size() {
        let tib = 1u64 << 40;
        let small = FatLayout::for_size(64 << 20, None).unwrap();
        assert_eq!((small.sector_bytes, small.cluster_bytes), (512, None));
        let two = FatLayout::for_size(MAX_512_SECTOR_BYTES, None).unwrap();
        assert_eq!((two.sector_bytes, two.total_sectors), (512, u32::MAX));
        let two = FatLayout::for_size(2 * tib, None).unwrap();
        assert_eq!((two.sector_bytes, two.total_sectors), (512, u32::MAX));
        let eight = FatLayout::for_size(8 * tib, None).unwrap();
        assert_eq!(eight.cluster_bytes, Some(131072));
        let four = FatLayout::for_size(4 * tib, None).unwrap();
        assert_eq!((four.sector_bytes, four.cluster_bytes), (4096, Some(65536)));
        assert_eq!(four.volume_bytes(), 4 * tib);
        // 16 TiB: the sector count stops at 2^32 - 1; the last 4 KiB are unused.
        let sixteen = FatLayout::for_size(16 * tib, None).unwrap();
        assert_eq!(sixteen.total_sectors, u32::MAX);
        assert_eq!(sixteen.cluster_bytes, Some(131072));
        let below = FatLayout::for_size(8 * tib - 65536, None).unwrap();
        assert_eq!(below.cluster_bytes, Some(131072));
        let three = FatLayout::for_size(3 * tib, None).unwrap();
        assert_eq!(three.cluster_bytes, Some(65536));
        assert_eq!(sixteen.volume_bytes(), MAX_FAT32_BYTES);
        assert!(FatLayout::for_size(4 * tib, Some(2048)).is_err());
        assert!(FatLayout::for_size(4 * tib, Some(3000)).is_err());
    }

    /// Allocated bytes of a (sparse) file.
    fn allocated(p: &std::path::Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().blocks() * 512
    }

    #[test]
    fn four_tib_sparse_medium_formats_works_and_stays_sparse() {
        let (_t, p) = image(4 << 40);
        let opts = FormatOptions {
            volume_id: Some(0x0bad_cafe),
            device_is_zeroed: true,
            ..FormatOptions::default()
        };
        let made = FatStore::format(open_rw(&p), &opts).unwrap();
        assert_eq!(made.sector_bytes, 4096);
        assert_eq!(made.cluster_bytes, 65536);
        assert_eq!(made.volume_id, 0x0bad_cafe);
        assert!(made.clusters > (1 << 25) && made.clusters < 0x0FFF_FFF5);
        // Two 256 MiB FATs were not written out as zeros.
        assert!(allocated(&p) < 4 << 20, "{} bytes allocated", allocated(&p));
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let mut st = FatStore::open(open_rw(&p)).unwrap();
        // FSInfo holds the real count: no FAT scan, and it is right.
        assert_eq!(
            st.free_space().unwrap(),
            Some((made.clusters - 1) * made.cluster_bytes)
        );
        st.create_dir_all("cap/a").unwrap();
        st.write_at("cap/a/SEG-00000", 0, &data).unwrap();
        st.write_at("cap/a/SEG-00000", data.len() as u64, &data)
            .unwrap();
        st.unmount().unwrap();
        let mut st = FatStore::open_read_only(open_rw(&p)).unwrap();
        let mut back = vec![0u8; data.len()];
        st.read_at("cap/a/SEG-00000", data.len() as u64, &mut back)
            .unwrap();
        assert_eq!(back, data);
        st.unmount().unwrap();
        fsck(&p);
    }

    /// At the top of each cluster size the FAT still fits both engines'
    /// 32-bit arithmetic, and the volume mounts.
    #[test]
    fn largest_layouts_keep_the_fat_under_the_engines_limit() {
        for size in [(8u64 << 40) - (8 << 30), 16 << 40] {
            let (_t, p) = image(size.min(MAX_FAT32_BYTES));
            let opts = FormatOptions {
                device_is_zeroed: true,
                ..FormatOptions::default()
            };
            FatStore::format(open_rw(&p), &opts).unwrap();
            let mut boot = [0u8; 512];
            std::io::Read::read_exact(&mut open_rw(&p), &mut boot).unwrap();
            let geo = fatmap::Geometry::parse(&boot).unwrap();
            assert!(geo.fat_bytes <= MAX_FAT_BYTES, "{size}: {geo:?}");
            assert!(geo.fat_bytes > MAX_FAT_BYTES / 2, "{size}: {geo:?}");
            FatStore::open(open_rw(&p)).unwrap().unmount().unwrap();
        }
        // A FAT beyond the limit is refused before the engine sees it.
        let mut boot = [0u8; 512];
        boot[0x0b..0x0d].copy_from_slice(&4096u16.to_le_bytes());
        boot[0x0d] = 8;
        boot[0x10] = 2;
        boot[0x24..0x28].copy_from_slice(&(1u32 << 17).to_le_bytes());
        boot[510] = 0x55;
        boot[511] = 0xaa;
        let e = fat_size_supported(&boot).unwrap_err().to_string();
        assert!(e.starts_with("the medium's FAT is "), "{e}");
    }

    /// A directory whose chain points back at itself and holds no
    /// end-of-directory entry: `fatfs` would read it for ever (and a listing
    /// would fill memory). Every operation that walks it is refused, naming
    /// the damage; the rest of the medium stays readable.
    #[test]
    fn a_directory_chain_that_loops_is_refused_not_walked_for_ever() {
        let (_t, p) = image(64 << 20);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        s.create_dir_all("MGEAR/cap").unwrap();
        s.write_at("MGEAR/cap/seg", 0, b"data").unwrap();
        s.write_at("other.txt", 0, b"kept").unwrap();
        s.unmount().unwrap();

        testing::loop_top_directory(&p, b"MGEAR      ").unwrap();

        let mut s = FatStore::open_read_only(std::fs::File::open(&p).unwrap()).unwrap();
        for e in [
            s.list("MGEAR").err(),
            s.list("MGEAR/cap").err(),
            s.len("MGEAR/cap/seg").err(),
            s.read_at("MGEAR/cap/seg", 0, &mut [0u8; 4]).err(),
        ] {
            let e = e.expect("refused").to_string();
            assert!(e.contains("loops"), "{e}");
            assert!(e.contains("fsck.fat -n"), "{e}");
        }
        assert_eq!(s.len("other.txt").unwrap(), Some(4));
        assert!(s.list("").unwrap().iter().any(|e| e.name == "MGEAR"));
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        let e = s.write_at("MGEAR/cap/new", 0, b"x").expect_err("refused");
        assert!(e.to_string().contains("loops"), "{e}");
    }

    /// A file's chain damaged by hand on a volume closed cleanly (a link out of the volume,
    /// an end mark before its size is covered): its reader names it, and now so does the
    /// check a writer makes before it writes. A capture of another name went on over it
    /// (exit 0) and the medium failed `fsck.fat -n` at the target.
    #[test]
    fn a_chain_broken_within_its_size_stops_a_writer() {
        use std::os::unix::fs::FileExt;
        let (_t, p) = image(64 << 20);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        s.create_dir_all("MGEAR/a").unwrap();
        s.write_at("MGEAR/a/seg", 0, &[1u8; 200_000]).unwrap();
        s.write_at("MGEAR/a/other", 0, &[2u8; 100]).unwrap();
        let first = s.map("MGEAR/a/seg").unwrap().unwrap().runs[0].cluster;
        s.unmount().unwrap();
        let clean = std::fs::read(&p).unwrap();
        let geo = fatmap::Geometry::parse(&clean[..512]).unwrap();
        for (what, value) in [
            ("leads to no cluster", geo.cluster_count + 100),
            ("ends after", 0x0FFF_FFFF),
        ] {
            std::fs::write(&p, &clean).unwrap();
            let f = open_rw(&p);
            for copy in 0..geo.fats {
                let at = geo.fat_offset + copy * geo.fat_bytes + u64::from(first + 5) * 4;
                f.write_all_at(&value.to_le_bytes(), at).unwrap();
            }
            drop(f);
            let mut s = FatStore::open(open_rw(&p)).unwrap();
            let found = s.chain_findings().unwrap();
            assert!(
                found
                    .iter()
                    .any(|f| f.contains("MGEAR/a/seg") && f.contains(what)),
                "{what}: {found:?}"
            );
            assert_eq!(s.len("MGEAR/a/other").unwrap(), Some(100), "the rest reads");
            drop(s);
        }
        // A volume closed cleanly has nothing of the kind.
        std::fs::write(&p, &clean).unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        assert_eq!(s.chain_findings().unwrap(), Vec::<String>::new());
        drop(s);
        // Its second FAT zeroed: a writer is stopped (a capture went on, and the shipment
        // failed verify at the target for the copies it left disagreeing).
        let mut zeroed = clean.clone();
        let second = (geo.fat_offset + geo.fat_bytes) as usize;
        zeroed[second..second + geo.fat_bytes as usize].fill(0);
        std::fs::write(&p, &zeroed).unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        let found = s.chain_findings().unwrap();
        assert!(
            found
                .iter()
                .any(|f| f.contains("two FAT copies disagree") && f.contains("closed cleanly")),
            "{found:?}"
        );
    }

    /// A damaged FSInfo sector holds only free-space hints, yet `fatfs` refuses to mount a
    /// volume with one: one flipped byte there had every command call the medium "not a
    /// FAT32 file system" and advise `medium format`. A read-only open reads around it (the
    /// image unchanged), says so, and reads the files; an open for writing rewrites it
    /// blank, after which `fsck.fat -n` is clean and nothing more is said.
    #[test]
    fn a_damaged_fsinfo_sector_is_read_around_and_rewritten_by_a_writer() {
        let (_t, p) = image(64 << 20);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        s.create_dir_all("MGEAR/web01").unwrap();
        s.write_at("MGEAR/web01/KEYS", 0, &[5u8; 3000]).unwrap();
        s.unmount().unwrap();
        let mut img = std::fs::read(&p).unwrap();
        let boot = &img[..512];
        let fsinfo = usize::from(u16::from_le_bytes([boot[0x30], boot[0x31]]))
            * usize::from(u16::from_le_bytes([boot[0x0b], boot[0x0c]]));
        img[fsinfo] ^= 0x20;
        std::fs::write(&p, &img).unwrap();
        let mut s = FatStore::open_read_only(std::fs::File::open(&p).unwrap()).unwrap();
        let said = s.damaged_hints().expect("said");
        assert!(
            said.contains("FSInfo sector") && said.contains("read around"),
            "{said}"
        );
        let mut back = vec![0u8; 3000];
        s.read_exact_at("MGEAR/web01/KEYS", 0, &mut back).unwrap();
        assert_eq!(back, vec![5u8; 3000]);
        drop(s);
        assert!(std::fs::read(&p).unwrap() == img, "a read-only open wrote");
        let s = FatStore::open(open_rw(&p)).unwrap();
        assert!(s.damaged_hints().expect("said").contains("rewritten"));
        s.unmount().unwrap();
        let s = FatStore::open_read_only(std::fs::File::open(&p).unwrap()).unwrap();
        assert_eq!(s.damaged_hints(), None);
        drop(s);
        let o = std::process::Command::new("fsck.fat")
            .arg("-n")
            .arg(&p)
            .output()
            .expect("fsck.fat (Debian: dosfstools)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    }

    /// A new volume at `p` holding web01's generations 1 and 2 (a MANIFEST each), open.
    fn two_generations(p: &std::path::Path) -> FatStore<std::fs::File> {
        FatStore::format(open_rw(p), &FormatOptions::default()).unwrap();
        let mut s = FatStore::open(open_rw(p)).unwrap();
        for f in ["MGEAR/web01/G0001/MANIFEST", "MGEAR/web01/G0002/MANIFEST"] {
            s.create_dir_all(f.rsplit_once('/').unwrap().0).unwrap();
            s.write_at(f, 0, &[7u8; 3000]).unwrap();
        }
        s
    }

    /// A generation's files gone from its directory on a volume closed cleanly (a zero byte
    /// where an entry starts ends the listing): the directory reads as a capture stopped
    /// before its MANIFEST, and the clusters the files held are what says otherwise.
    #[test]
    fn files_gone_from_a_directory_leave_their_clusters_said() {
        let (_t, p) = image(64 << 20);
        let s = two_generations(&p);
        s.unmount().unwrap();
        let mut s = FatStore::open_read_only(std::fs::File::open(&p).unwrap()).unwrap();
        assert_eq!(s.lost_clusters().unwrap(), None);
        drop(s);
        let mut img = std::fs::read(&p).unwrap();
        // G0002's MANIFEST entry: the second one (its directory was made after G0001's).
        let at = img
            .chunks_exact(32)
            .enumerate()
            .filter(|(_, e)| e[..11] == *b"MANIFEST   ")
            .nth(1)
            .expect("G0002's MANIFEST entry")
            .0;
        img[at * 32] = 0;
        std::fs::write(&p, &img).unwrap();
        let mut s = FatStore::open_read_only(std::fs::File::open(&p).unwrap()).unwrap();
        assert!(s.list("MGEAR/web01/G0002").unwrap().is_empty());
        let said = s.lost_clusters().unwrap().expect("the MANIFEST's clusters");
        assert!(said.contains("marked in use by no file"), "{said}");
    }

    /// A generation's or a capture's directory entry marked deleted on a volume closed
    /// cleanly (one byte): every reader lists the generation before it as the newest, and
    /// `verify` said the medium was clean while ingest installed that older generation,
    /// exit 0. The chains nothing holds are now a finding, named by what they held, and
    /// `lost_dirs` finds them under the directory their entry was in.
    #[test]
    fn a_directory_whose_entry_was_deleted_is_found_by_what_it_held() {
        let (_t, p) = image(64 << 20);
        let mut s = two_generations(&p);
        s.write_at("MGEAR/web01/G0002/INDEX", 0, &[8u8; 100])
            .unwrap();
        s.create_dir_all("MGEAR/DB01/G0001").unwrap();
        s.write_at("MGEAR/DB01/KEYS", 0, b"k").unwrap();
        s.unmount().unwrap();
        let clean = std::fs::read(&p).unwrap();
        let mut s = FatStore::open_read_only(std::fs::File::open(&p).unwrap()).unwrap();
        assert_eq!(s.file_system_findings().unwrap(), Vec::<String>::new());
        assert_eq!(
            s.lost_dirs("MGEAR/web01").unwrap(),
            Vec::<Vec<String>>::new()
        );
        drop(s);
        // The short entry of `name` (attribute: directory) marked deleted.
        let deleted = |name: &[u8; 11]| {
            let mut img = clean.clone();
            let at = img
                .chunks_exact(32)
                .position(|e| e[..11] == *name && e[11] & 0x10 != 0)
                .expect("entry");
            img[at * 32] = 0xe5;
            std::fs::write(&p, &img).unwrap();
            FatStore::open_read_only(std::fs::File::open(&p).unwrap()).unwrap()
        };
        let mut s = deleted(b"G0002      ");
        let lost = s.lost_dirs("MGEAR/web01").unwrap();
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert!(lost[0].contains(&"MANIFEST".to_string()), "{lost:?}");
        assert_eq!(
            crate::lost_dir_kind(&lost[0]),
            Some(crate::LostDir::Generation)
        );
        assert_eq!(s.lost_dirs("MGEAR").unwrap(), Vec::<Vec<String>>::new());
        let found = s.file_system_findings().unwrap();
        assert!(
            found.iter().any(|f| f.contains("marked in use by no file")
                && f.contains("a generation's directory (it holds")
                && f.contains("take the one before it")),
            "{found:?}"
        );
        assert_eq!(
            s.list("MGEAR/web01").unwrap().len(),
            1,
            "G0001 alone is listed"
        );
        drop(s);
        let mut s = deleted(b"DB01       ");
        let lost = s.lost_dirs("MGEAR").unwrap();
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert_eq!(
            crate::lost_dir_kind(&lost[0]),
            Some(crate::LostDir::Capture)
        );
        let found = s.file_system_findings().unwrap();
        assert!(
            found.iter().any(|f| f.contains("a capture's directory")),
            "{found:?}"
        );
    }

    /// A volume Windows left dirty (FAT[1]'s clean-shutdown bit clear, the boot sector's
    /// mark clear) read as closed cleanly, and a capture and a seal kept the bit: `fsck.fat
    /// -n` failed the shipment. It reads as left mid-write, and an open for writing puts it
    /// right and sets the bit again in every FAT copy.
    #[test]
    fn a_volume_whose_fat_says_it_was_not_shut_down_cleanly_is_left_mid_write() {
        let (_t, p) = image(64 << 20);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        s.create_dir_all("MGEAR/web01/G0001").unwrap();
        s.write_at("MGEAR/web01/G0001/MANIFEST", 0, &[7u8; 3000])
            .unwrap();
        s.unmount().unwrap();
        let fat1 = |img: &[u8]| {
            let geo = fatmap::Geometry::parse(&img[..512]).unwrap();
            (0..geo.fats)
                .map(|k| {
                    let at = (geo.fat_offset + k * geo.fat_bytes + 4) as usize;
                    u32::from_le_bytes(img[at..at + 4].try_into().unwrap())
                })
                .collect::<Vec<u32>>()
        };
        let mut img = std::fs::read(&p).unwrap();
        assert!(fat1(&img).iter().all(|e| e & FAT1_CLEAN != 0));
        let geo = fatmap::Geometry::parse(&img[..512]).unwrap();
        for k in 0..geo.fats {
            let at = (geo.fat_offset + k * geo.fat_bytes + 4) as usize;
            img[at + 3] &= !0x08;
        }
        assert_eq!(img[DIRTY_BYTE] & 1, 0);
        std::fs::write(&p, &img).unwrap();

        let s = FatStore::open_read_only(std::fs::File::open(&p).unwrap()).unwrap();
        assert!(s.left_mid_write());
        drop(s);
        let s = FatStore::open(open_rw(&p)).unwrap();
        assert!(matches!(s.after_cut(), Some(Ok(_))), "{:?}", s.after_cut());
        s.unmount().unwrap();
        let after = std::fs::read(&p).unwrap();
        assert!(
            fat1(&after).iter().all(|e| e & FAT1_CLEAN != 0),
            "{:x?}",
            fat1(&after)
        );
        let mut s = FatStore::open_read_only(std::fs::File::open(&p).unwrap()).unwrap();
        assert!(!s.left_mid_write());
        let mut back = vec![0u8; 3000];
        s.read_at("MGEAR/web01/G0001/MANIFEST", 0, &mut back)
            .unwrap();
        assert_eq!(back, vec![7u8; 3000]);
    }

    /// An FSInfo free count another system left stale (5 clusters on an empty volume): the
    /// medium was "too small" for a capture and its directories "likely damaged". Free
    /// space is counted from the FAT, for reading and for writing.
    #[test]
    fn a_stale_fsinfo_free_count_is_not_taken_for_the_free_space() {
        let (_t, p) = image(64 << 20);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let mut img = std::fs::read(&p).unwrap();
        let geo = fatmap::Geometry::parse(&img[..512]).unwrap();
        let at = (geo.fsinfo_offset + 488) as usize;
        img[at..at + 4].copy_from_slice(&5u32.to_le_bytes());
        std::fs::write(&p, &img).unwrap();
        let nearly_all = u64::from(geo.cluster_count - 2) * geo.cluster_bytes;
        let mut s = FatStore::open_read_only(std::fs::File::open(&p).unwrap()).unwrap();
        assert!(s.free_space().unwrap().unwrap() >= nearly_all);
        assert!(s.used_space().unwrap().unwrap() < 4 * geo.cluster_bytes);
        drop(s);
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        assert!(s.free_space().unwrap().unwrap() >= nearly_all);
    }

    /// Marks the first short entry of `img` that `is_it` takes deleted, its long-name slots
    /// with it (as a deletion does), and sets the dirty mark.
    fn delete_left_mid_write(img: &mut [u8], is_it: impl Fn(&[u8]) -> bool) {
        let at = img
            .chunks_exact(32)
            .position(|e| e[11] != 0x0f && is_it(e))
            .expect("entry");
        let mut slot = at;
        while slot == at || img[slot * 32 + 11] == 0x0f {
            img[slot * 32] = 0xe5;
            slot -= 1;
        }
        img[DIRTY_BYTE] |= 1;
    }

    /// The image at `p` with the directory entry `name` deleted and its dirty mark set
    /// ([`delete_left_mid_write`]); the bytes written.
    fn delete_dir_left_mid_write(p: &std::path::Path, name: &[u8; 11]) -> Vec<u8> {
        let mut img = std::fs::read(p).unwrap();
        delete_left_mid_write(&mut img, |e| e[..11] == *name && e[11] & 0x10 != 0);
        std::fs::write(p, &img).unwrap();
        img
    }

    /// A finished generation's directory entry deleted and the dirty mark set (a courier's
    /// two edits): it read as what a cut write leaves, hidden from every reader, and the
    /// next repair or capture freed the generation for good. It is damage as on a medium
    /// closed cleanly: a finding, listed as lost, and the open for writing writes nothing.
    #[test]
    fn a_finished_generation_deleted_on_a_volume_left_mid_write_is_damage() {
        let (_t, p) = image(64 << 20);
        let s = two_generations(&p);
        s.unmount().unwrap();
        let img = delete_dir_left_mid_write(&p, b"G0002      ");

        let mut s = FatStore::open_read_only(std::fs::File::open(&p).unwrap()).unwrap();
        let lost = s.lost_dirs("MGEAR/web01").unwrap();
        assert_eq!(lost.len(), 1, "{lost:?}");
        let found = s.file_system_findings().unwrap();
        assert!(
            found
                .iter()
                .any(|f| f.contains("left mid-write")
                    && f.contains("finished generation's directory")),
            "{found:?}"
        );
        drop(s);
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        let why = s.after_cut().unwrap().clone().unwrap_err();
        assert!(why.contains("a finished generation's"), "{why}");
        assert!(
            s.chain_findings()
                .unwrap()
                .iter()
                .any(|f| f.contains("nothing was put right")),
            "a writer refuses"
        );
        drop(s);
        let after = std::fs::read(&p).unwrap();
        let geo = fatmap::Geometry::parse(&after[..512]).unwrap();
        assert_eq!(
            after[geo.fat_offset as usize..geo.data_offset as usize],
            img[geo.fat_offset as usize..geo.data_offset as usize],
            "no cluster freed"
        );
        assert_eq!(after[DIRTY_BYTE] & 1, 1, "the dirty mark stays");

        // An unfinished generation's directory (no MANIFEST yet) lost so is still what a cut
        // leaves: put right.
        let (_t, p) = image(64 << 20);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        s.create_dir_all("MGEAR/web01/G0002").unwrap();
        s.write_at("MGEAR/web01/G0002/SEG-00000", 0, &[7u8; 3000])
            .unwrap();
        s.unmount().unwrap();
        delete_dir_left_mid_write(&p, b"G0002      ");
        let s = FatStore::open(open_rw(&p)).unwrap();
        let done = s.after_cut().unwrap().as_ref().unwrap();
        assert!(done.clusters_freed >= 2, "{done:?}");
        s.unmount().unwrap();
        fsck(&p);
    }

    /// A finished generation's segment deleted (its entry only), or its chain cut by an end
    /// mark, with the dirty mark set: read as a cut's leftover, the next writer freed the
    /// segment's clusters for good. Damage: the open for writing writes nothing.
    #[test]
    fn a_finished_generations_file_deleted_or_cut_on_a_volume_left_mid_write_is_damage() {
        let (_t, p) = image(64 << 20);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        s.create_dir_all("MGEAR/web01/G0001").unwrap();
        s.write_at("MGEAR/web01/G0001/SEG-00000", 0, &[5u8; 40000])
            .unwrap();
        s.write_at("MGEAR/web01/G0001/MANIFEST", 0, &[7u8; 300])
            .unwrap();
        let first = s.map("MGEAR/web01/G0001/SEG-00000").unwrap().unwrap().runs[0].cluster;
        s.unmount().unwrap();
        let clean = std::fs::read(&p).unwrap();
        let geo = fatmap::Geometry::parse(&clean[..512]).unwrap();
        let refused = |img: &[u8], says: &str| {
            std::fs::write(&p, img).unwrap();
            let found = FatStore::open_read_only(std::fs::File::open(&p).unwrap())
                .unwrap()
                .file_system_findings()
                .unwrap();
            assert!(found.iter().any(|f| f.contains(says)), "{found:?}");
            let s = FatStore::open(open_rw(&p)).unwrap();
            assert!(s.after_cut().unwrap().is_err(), "nothing put right");
            drop(s);
            let after = std::fs::read(&p).unwrap();
            assert!(
                after[geo.fat_offset as usize..geo.data_offset as usize]
                    == img[geo.fat_offset as usize..geo.data_offset as usize],
                "no cluster freed"
            );
        };
        // Its entry marked deleted (the long-name slots with it).
        let mut img = clean.clone();
        delete_left_mid_write(&mut img, |e| e[..8] == *b"SEG-00~1");
        refused(&img, "a file of this finished generation");
        // Its chain ended by a mark two clusters in.
        let mut img = clean.clone();
        let c = first + 1;
        for k in 0..geo.fats {
            let e = (geo.fat_offset + k * geo.fat_bytes + u64::from(c) * 4) as usize;
            img[e..e + 4].copy_from_slice(&0x0FFF_FFFFu32.to_le_bytes());
        }
        img[DIRTY_BYTE] |= 1;
        refused(&img, "ends before its size at an end mark");
    }

    /// A directory's `.` entry damaged reads as a subdirectory that is the directory itself:
    /// every walk of the tree (verify, fsck, a capture's checks) went down it without end
    /// until memory ran out. Listing it is refused, naming the damage; so is a subdirectory
    /// entry that points at a directory it lies in.
    #[test]
    fn a_directory_that_lists_itself_is_a_loop_not_a_subdirectory() {
        let (_t, p) = image(64 << 20);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        s.create_dir_all("MGEAR/cap").unwrap();
        s.write_at("MGEAR/cap/seg", 0, b"data").unwrap();
        s.unmount().unwrap();
        testing::mangle_dot_entry(&p, b"MGEAR      ").unwrap();

        let mut s = FatStore::open_read_only(std::fs::File::open(&p).unwrap()).unwrap();
        let odd: Vec<String> = s
            .list("MGEAR")
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == EntryKind::Dir && e.name != "cap")
            .map(|e| e.name)
            .collect();
        assert_eq!(odd.len(), 1, "{odd:?}");
        let e = s
            .list(&format!("MGEAR/{}", odd[0]))
            .expect_err("a loop is no directory to list")
            .to_string();
        assert!(e.contains("a damaged directory entry"), "{e}");
        assert_eq!(s.len("MGEAR/cap/seg").unwrap(), Some(4));
        // The walk of every chain (verify's, a capture's check) names the loop and ends.
        let found = s.chain_findings().unwrap();
        assert!(
            found.iter().any(|f| f.contains("directory loop")),
            "{found:?}"
        );
    }

    /// The second FAT copy damaged: the files all read (from the first), and only the
    /// comparison of the copies finds it (`verify` said OK where `fsck.fat -n` said "FATs
    /// differ").
    /// Cluster chains that run past their file's size into another file, loop, or share
    /// clusters within their sizes: every file still reads right (reads stop at the size), so
    /// a keyless verify said "no problems" over a medium `fsck.fat -n` calls damaged, on which
    /// a later `medium rm` frees another file's clusters. What a cut capture leaves (a chain
    /// past the size into clusters nobody owns) is no such finding.
    #[test]
    fn chains_past_their_size_or_shared_are_findings() {
        use std::os::unix::fs::FileExt;
        let (_t, p) = image(64 << 20);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        s.create_dir_all("MGEAR/cap").unwrap();
        let mut boot = [0u8; 512];
        std::io::Read::read_exact(&mut open_rw(&p), &mut boot).unwrap();
        let geo = fatmap::Geometry::parse(&boot).unwrap();
        let cb = geo.cluster_bytes as usize;
        s.write_at("MGEAR/cap/KEYS", 0, &[1u8; 386]).unwrap();
        s.write_at("MGEAR/cap/MANIFEST", 0, &vec![2u8; 1000])
            .unwrap();
        s.write_at("MGEAR/cap/SEG", 0, &vec![3u8; 3 * cb + 10])
            .unwrap();
        s.write_at("MGEAR/cap/B", 0, &vec![4u8; 2 * cb]).unwrap();
        // A generation still being written: no MANIFEST beside its segment.
        s.create_dir_all("MGEAR/cap/G2").unwrap();
        s.write_at("MGEAR/cap/G2/SEG", 0, &vec![5u8; cb + 10])
            .unwrap();
        s.unmount().unwrap();
        let f = open_rw(&p);
        let mut read = |at: u64, buf: &mut [u8]| {
            f.read_exact_at(buf, at)
                .map_err(|e| StoreError::Io(e.to_string()))
        };
        let mut first = |path: &str| {
            let m = fatmap::lookup(&geo, &mut read, path).unwrap().unwrap();
            (
                m.runs[0].cluster,
                m.runs.last().map(|r| r.cluster + r.clusters - 1).unwrap(),
            )
        };
        let (keys, _) = first("MGEAR/cap/KEYS");
        let (manifest, manifest_last) = first("MGEAR/cap/MANIFEST");
        let (seg, seg_last) = first("MGEAR/cap/SEG");
        let (b, _) = first("MGEAR/cap/B");
        let (_, open_last) = first("MGEAR/cap/G2/SEG");
        let set = |c: u32, next: u32| {
            for k in 0..geo.fats {
                f.write_all_at(
                    &next.to_le_bytes(),
                    geo.fat_offset + k * geo.fat_bytes + u64::from(c) * 4,
                )
                .unwrap();
            }
        };
        let findings = || {
            FatStore::open(open_rw(&p))
                .unwrap()
                .file_system_findings()
                .unwrap()
        };
        assert!(findings().is_empty(), "{:?}", findings());
        // A cut capture's leftover: the open segment's chain goes on into a free cluster on a
        // medium left mid-write. Told as lost space a repair frees (`medium fsck` lets it), not
        // as damage.
        let free = seg_last + 100;
        set(open_last, free);
        set(free, 0x0FFF_FFFF);
        let dirty = |on: bool| {
            let f = open_rw(&p);
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, DIRTY_BYTE as u64).unwrap();
            b[0] = if on { b[0] | 1 } else { b[0] & !1 };
            f.write_all_at(&b, DIRTY_BYTE as u64).unwrap();
        };
        dirty(true);
        // Read-only: a writer's open would put a medium left mid-write right first.
        let ro_findings = || {
            FatStore::open_read_only(open_rw(&p))
                .unwrap()
                .file_system_findings()
                .unwrap()
        };
        // It reads as the next writer will have put it right (the tail cut, nothing
        // written): no finding.
        let found = ro_findings();
        assert!(
            !found.iter().any(|f| f.starts_with("MGEAR/cap/G2/SEG")),
            "{found:?}"
        );
        let s = FatStore::open_read_only(open_rw(&p)).unwrap();
        assert!(s.left_mid_write(), "still said to be left mid-write");
        drop(s);
        // A finished generation's file (a MANIFEST beside it) is never written again: its
        // chain past its size is an entry made smaller, damage even on a medium left
        // mid-write (`medium fsck --repair` cut a finished segment for good as a leftover).
        set(open_last, 0x0FFF_FFFF);
        set(seg_last, free);
        let found = ro_findings();
        assert!(
            found.iter().any(|f| f
                .starts_with("MGEAR/cap/SEG: its cluster chain runs past its size, and it is a file of a finished generation")
                && !f.contains(fatmap::LEFTOVER_CHAIN)),
            "{found:?}"
        );
        // A writer's open of that medium puts nothing "right": the chain stays whole.
        let before = std::fs::read(&p).unwrap();
        let w = FatStore::open(open_rw(&p)).unwrap();
        assert!(
            matches!(&w.reclaimed, Some(Err(why)) if why.contains("finished generation")),
            "{:?}",
            w.reclaimed
        );
        drop(w);
        assert!(
            std::fs::read(&p).unwrap() == before,
            "the open wrote to the medium"
        );
        dirty(false);
        // The open segment's on a medium closed cleanly, which no write leaves either: an
        // entry whose size was made smaller. Damage a repair must not cut.
        set(seg_last, 0x0FFF_FFFF);
        set(open_last, free);
        let found = findings();
        assert!(
            found.len() == 1
                && found[0].starts_with("MGEAR/cap/G2/SEG: its cluster chain runs past its size")
                && !found[0].contains(fatmap::LEFTOVER_CHAIN)
                && found[0].contains("Do not repair or write the medium"),
            "{found:?}"
        );
        set(open_last, 0x0FFF_FFFF);
        set(free, 0);
        // MANIFEST's last cluster marked free: the next file written may take it.
        set(manifest_last, 0);
        let found = findings();
        assert!(
            found.len() == 1
                && found[0].starts_with("MGEAR/cap/MANIFEST: the FAT marks its last cluster")
                && !found[0].contains(fatmap::LEFTOVER_CHAIN),
            "{found:?}"
        );
        set(manifest_last, 0x0FFF_FFFF);
        // KEYS runs on into MANIFEST's cluster; SEG's last cluster points back to its first.
        set(keys, manifest);
        set(seg_last, seg);
        let found = findings();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found.iter().any(|f| f.starts_with(
                "MGEAR/cap/KEYS: its cluster chain runs past its \
                 size into cluster"
            ) && f.contains("of MGEAR/cap/MANIFEST")
                && f.contains("Do not repair or write the medium")
                && !f.contains(fatmap::LEFTOVER_CHAIN)),
            "{found:?}"
        );
        assert!(
            found.iter().any(|f| f.starts_with(
                "MGEAR/cap/SEG: its cluster chain runs past its size back \
                     into its own cluster"
            )),
            "{found:?}"
        );
        set(keys, 0x0FFF_FFFF);
        set(seg_last, 0x0FFF_FFFF);
        // Through a free cluster first, then into MANIFEST: damage, not a cut write's
        // leftover (it was repaired as one, which cut MANIFEST).
        set(keys, free);
        set(free, manifest);
        let found = findings();
        assert!(
            found.len() == 1
                && found[0].starts_with(
                    "MGEAR/cap/KEYS: its cluster chain runs past its size into cluster"
                )
                && found[0].contains("of MGEAR/cap/MANIFEST")
                && !found[0].contains(fatmap::LEFTOVER_CHAIN),
            "{found:?}"
        );
        // Through a free cluster, then out of the volume: damage too.
        set(free, geo.cluster_count + 10);
        let found = findings();
        assert!(
            found.len() == 1 && found[0].contains("and then out of the volume"),
            "{found:?}"
        );
        set(keys, 0x0FFF_FFFF);
        set(free, 0);
        // B's second cluster is MANIFEST's: both hold it within their sizes.
        set(b, manifest);
        let found = findings();
        assert!(
            found
                .iter()
                .any(|f| f.starts_with("MGEAR/cap/B and MGEAR/cap/MANIFEST share cluster")),
            "{found:?}"
        );
    }

    #[test]
    fn fat_copies_that_disagree_are_a_finding() {
        use std::io::{Seek, SeekFrom, Write};
        let (_t, p) = image(64 << 20);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        s.create_dir_all("MGEAR/cap").unwrap();
        s.write_at("MGEAR/cap/data", 0, &vec![7u8; 3 << 20])
            .unwrap();
        s.unmount().unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        assert!(s.file_system_findings().unwrap().is_empty());
        drop(s);
        let mut boot = [0u8; 512];
        std::io::Read::read_exact(&mut open_rw(&p), &mut boot).unwrap();
        let geo = fatmap::Geometry::parse(&boot).unwrap();
        let mut f = open_rw(&p);
        f.seek(SeekFrom::Start(geo.fat_offset + geo.fat_bytes + 64))
            .unwrap();
        f.write_all(&[0u8; 4096]).unwrap();
        drop(f);
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        let found = s.file_system_findings().unwrap();
        assert!(
            found.len() == 1
                && found[0].contains("FAT copies disagree")
                && found[0].contains("cluster 16"),
            "{found:?}"
        );
        let mut back = vec![0u8; 3 << 20];
        s.read_at("MGEAR/cap/data", 0, &mut back).unwrap();
        assert!(back.iter().all(|b| *b == 7));
    }

    #[test]
    fn a_root_cluster_outside_the_volume_is_named_not_panicked_on() {
        use std::io::{Seek, SeekFrom, Write};
        let (_t, p) = image(64 << 20);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        for root in [0u32, 1, 0x0FFF_FFF0] {
            let mut f = open_rw(&p);
            f.seek(SeekFrom::Start(0x2c)).unwrap();
            f.write_all(&root.to_le_bytes()).unwrap();
            let e = FatStore::open(open_rw(&p))
                .err()
                .expect("refused")
                .to_string();
            assert!(
                e.contains(&format!("root directory starts at cluster {root},")),
                "{root}: {e}"
            );
            // The way to repair it: the backup boot sector, which is intact here.
            assert!(
                e.contains("skip=6") && e.contains("root directory cluster"),
                "{e}"
            );
        }
    }

    /// One byte of the boot sector's BPB damaged (reserved sectors, FAT size, root cluster)
    /// mounted as a volume with no captures, and a capture went into it. The backup copy
    /// names the damage; with the backup copied back the volume opens as it was.
    #[test]
    fn a_boot_sector_that_disagrees_with_its_backup_is_refused_by_both_engines_checks() {
        use std::io::{Read, Seek, SeekFrom, Write};
        let (_t, p) = image(64 << 20);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        s.create_dir_all("MGEAR").unwrap();
        s.write_at("MGEAR/KEEP", 0, b"kept").unwrap();
        s.unmount().unwrap();
        let mut good = [0u8; 512];
        open_rw(&p).read_exact(&mut good).unwrap();
        let at = fatmap::backup_boot_offset(&good).expect("a backup boot sector");
        let sector = at / 512;
        let poke = |offset: u64, bytes: &[u8]| {
            let mut f = open_rw(&p);
            f.seek(SeekFrom::Start(offset)).unwrap();
            f.write_all(bytes).unwrap();
        };
        let refusal = || {
            FatStore::open(open_rw(&p))
                .err()
                .expect("refused")
                .to_string()
        };
        let mounts = || {
            let mut s = FatStore::open(open_rw(&p)).unwrap();
            assert_eq!(s.len("MGEAR/KEEP").unwrap(), Some(4));
            s.unmount().unwrap();
        };
        for (offset, field) in [
            (0x0e, "reserved sectors"),
            (0x24, "FAT size"),
            (0x2c, "root directory cluster"),
        ] {
            poke(offset, &[0x7f]);
            let e = refusal();
            assert!(e.contains(&format!("disagree on the {field}")), "{e}");
            assert!(e.contains(&format!("skip={sector}")), "{e}");
            // The fix the message gives: the backup copied over the boot sector.
            let mut backup = [0u8; 512];
            let mut f = open_rw(&p);
            f.seek(SeekFrom::Start(at)).unwrap();
            f.read_exact(&mut backup).unwrap();
            poke(0, &backup);
            mounts();
        }
        // Each copy told from the other, the fix in the right direction (it once always told
        // to copy the backup over the boot sector, also when the backup was the damaged one):
        // the backup's sectors per cluster doubled (one flipped bit) or its signature lost,
        // and a root cluster off by one in the boot sector (it then names MGEAR's own
        // directory, whose first entry is `.`).
        let backup_damaged = format!("backup boot sector (sector {sector}) is damaged");
        let (seek, skip) = (format!("seek={sector}"), format!("skip={sector}"));
        for (offset, byte, says) in [
            (
                at + 0x0d,
                good[0x0d] * 2,
                [
                    backup_damaged.as_str(),
                    "sectors per cluster",
                    seek.as_str(),
                ],
            ),
            (
                at + 510,
                0,
                [backup_damaged.as_str(), "signature", seek.as_str()],
            ),
            (
                0x2c,
                good[0x2c] + 1,
                [
                    "only the backup describes the volume",
                    "root directory cluster",
                    skip.as_str(),
                ],
            ),
        ] {
            poke(offset, &[byte]);
            let e = refusal();
            assert!(says.iter().all(|w| e.contains(w)), "{e}");
            poke(0, &good);
            poke(at, &good);
        }
        // No signature on the boot sector, a cluster size of 0, or a FAT count that leaves
        // too few clusters, the backup intact: a damaged medium, repaired from the backup,
        // never "format one" (the FAT count's check carried its own "format it" advice into
        // the message that says not to).
        // A sector size of 1024 (valid, and wrong): its backup pointer led past the backup
        // (no boot sector there, the copies said to agree), and the `dd` that puts it right
        // takes the backup's sector size.
        poke(0x0c, &[0x04]);
        let e = refusal();
        assert!(
            e.contains("only the backup describes the volume")
                && e.contains("bytes per sector")
                && e.contains("bs=512 skip=6"),
            "{e}"
        );
        poke(0, &good);
        mounts();
        for (offset, bytes) in [
            (510, &[0u8, 0][..]),
            (0x0d, &[0u8][..]),
            (0x10, &[good[0x10] ^ 0xaf][..]),
        ] {
            poke(offset, bytes);
            let e = refusal();
            assert!(
                e.contains("backup copy (sector 6) is intact")
                    && e.contains("skip=6")
                    && e.contains("do not format it")
                    && !e.contains("format it with"),
                "{e}"
            );
            poke(0, &good);
            mounts();
        }
        // A FAT12/16 boot sector (16-bit FAT size) is refused, naming FAT32.
        let mut boot = good;
        boot[0x16] = 8;
        let e = fat_size_supported(&boot).unwrap_err().to_string();
        assert!(
            e.contains("FAT12 or FAT16") && e.contains("mgear medium format"),
            "{e}"
        );
    }

    /// A file another program put where the format has a directory (`mcopy x.txt ::/MGEAR`)
    /// read as a directory entry that lost its mark, with the advice for a damaged file
    /// system: it is named as a file of that many bytes, to move away.
    #[test]
    fn a_file_where_the_format_has_a_directory_is_named_as_a_file() {
        let (_t, p) = image(64 << 20);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        s.write_at("MGEAR", 0, b"hi\n").unwrap();
        for e in [
            s.create_dir_all("MGEAR/web01/G0001").unwrap_err(),
            s.list("MGEAR/web01").unwrap_err(),
        ] {
            let StoreError::Io(why) = e else {
                panic!("{e:?}")
            };
            assert!(
                why.contains("MGEAR on the medium is a file of 3 bytes"),
                "{why}"
            );
        }
    }

    /// A backup boot sector where the boot sector puts it, not at sector 6 (`mkfs.fat -b 3`):
    /// the boot sector damaged, the medium was "not FAT32" and `medium format` advised. The
    /// backup is found where it says it is, and the `dd` takes it from there.
    #[test]
    fn a_backup_boot_sector_away_from_sector_6_is_found() {
        let (_t, p) = image(64 << 20);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let mut img = std::fs::read(&p).unwrap();
        let mut boot = [0u8; 512];
        boot.copy_from_slice(&img[..512]);
        boot[0x32..0x34].copy_from_slice(&3u16.to_le_bytes());
        img[..512].copy_from_slice(&boot);
        img[3 * 512..4 * 512].copy_from_slice(&boot);
        img[6 * 512..7 * 512].fill(0);
        std::fs::write(&p, &img).unwrap();
        FatStore::open(open_rw(&p)).unwrap().unmount().unwrap();
        let mut img = std::fs::read(&p).unwrap();
        img[510] = 0;
        std::fs::write(&p, &img).unwrap();
        let e = FatStore::open(open_rw(&p))
            .err()
            .expect("refused")
            .to_string();
        assert!(
            e.contains("backup copy (sector 3) is intact")
                && e.contains("skip=3")
                && !e.contains("does not hold a FAT32"),
            "{e}"
        );
    }

    /// The total sectors changed in both boot sector copies (they agree, so no comparison
    /// sees it): a volume made smaller than its FAT is sized for is damage; one made too
    /// small for FAT32 is not "format it". It read as a sound half-size volume (verify OK).
    #[test]
    fn a_volume_smaller_than_its_fat_is_damage() {
        use std::os::unix::fs::FileExt;
        let (_t, p) = image(128 << 20);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let f = open_rw(&p);
        let mut boot = [0u8; 512];
        f.read_exact_at(&mut boot, 0).unwrap();
        let total = u32::from_le_bytes(boot[0x20..0x24].try_into().unwrap());
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        assert_eq!(s.file_system_findings().unwrap(), Vec::<String>::new());
        drop(s);
        let set_total = |t: u32| {
            for at in [0x20, 6 * 512 + 0x20] {
                f.write_all_at(&t.to_le_bytes(), at).unwrap();
            }
        };
        set_total(total / 10 * 7);
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        let found = s.file_system_findings().unwrap();
        assert!(
            found.iter().any(|f| f.starts_with("the FAT has room for")),
            "{found:?}"
        );
        drop(s);
        set_total(total / 4);
        let e = FatStore::open(open_rw(&p)).err().expect("refused");
        // Below FAT32's least clusters: `mkfs.fat` makes such volumes too (its FAT has a
        // floor), so both are said, and a medium that held captures is not to be formatted.
        assert!(
            e.to_string().contains("size fields may have been changed")
                && e.to_string().contains("then do not format it"),
            "{e}"
        );
    }

    #[test]
    fn random_bytes_are_not_a_fat_file_system_before_any_size_check() {
        // Bytes whose FAT size field reads as terabytes: the missing
        // signature is what the user must hear about.
        let mut boot = [0xa7u8; 512];
        boot[0x24..0x28].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = fat_size_supported(&boot).unwrap_err().to_string();
        assert!(
            e.starts_with("the medium does not hold a FAT32 file system (no boot sector signature"),
            "{e}"
        );
        assert!(e.contains("mgear medium format"), "{e}");
        // Signed, but a BPB no FAT has.
        boot[510] = 0x55;
        boot[511] = 0xaa;
        let e = fat_size_supported(&boot).unwrap_err().to_string();
        assert!(e.contains("bytes per sector"), "{e}");
        let (_t, p) = image(8 << 20);
        std::fs::write(&p, vec![0xa7u8; 8 << 20]).unwrap();
        let e = FatStore::open(open_rw(&p))
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("no boot sector signature"), "{e}");
    }

    #[test]
    fn skip_zeros_writes_what_was_written_before() {
        let (_t, p) = image(1 << 20);
        let mut z = SkipZeros::new(open_rw(&p), true);
        z.seek(SeekFrom::Start(4096)).unwrap();
        z.write_all(&[0u8; 4096]).unwrap();
        z.seek(SeekFrom::Start(8192)).unwrap();
        z.write_all(&[7u8; 100]).unwrap();
        // Zeros over bytes written before must reach the device.
        z.seek(SeekFrom::Start(8192)).unwrap();
        z.write_all(&[0u8; 50]).unwrap();
        let back = std::fs::read(&p).unwrap();
        assert!(back[8192..8242].iter().all(|b| *b == 0));
        assert!(back[8242..8292].iter().all(|b| *b == 7));
        assert_eq!(allocated(&p), 4096, "only the written block is allocated");
    }

    /// The boot sector's first bytes reach the device last: a format cut off before leaves a
    /// device that does not read as FAT32 (it read as a damaged one).
    #[test]
    fn skip_zeros_holds_the_boot_sector_until_released() {
        let (_t, p) = image(1 << 20);
        let mut z = SkipZeros::new(open_rw(&p), false);
        let mut boot = [0u8; 4096];
        boot[..3].copy_from_slice(&[0xeb, 0x58, 0x90]);
        boot[510] = 0x55;
        boot[511] = 0xaa;
        boot[600] = 9;
        z.write_all(&boot).unwrap();
        z.seek(SeekFrom::Start(100_000)).unwrap();
        z.write_all(&[5u8; 10]).unwrap();
        let on_disk = std::fs::read(&p).unwrap();
        assert!(on_disk[..512].iter().all(|b| *b == 0), "held back");
        assert_eq!((on_disk[600], on_disk[100_000]), (9, 5), "the rest written");
        // Read back through it, as the cache does, it is already there.
        let mut back = [0u8; 1024];
        z.seek(SeekFrom::Start(0)).unwrap();
        z.read_exact(&mut back).unwrap();
        assert_eq!(back[..], boot[..1024]);
        z.release().unwrap();
        let on_disk = std::fs::read(&p).unwrap();
        assert_eq!(on_disk[..4096], boot[..]);
    }

    /// The backup boot sector, wherever the boot sector says it is, is held as well, even
    /// when one write carries both (the cache writes whole blocks).
    #[test]
    fn skip_zeros_holds_the_backup_boot_sector_too() {
        let (_t, p) = image(1 << 20);
        let mut z = SkipZeros::new(open_rw(&p), false);
        let mut head = vec![0u8; 8192];
        head[0x0b..0x0d].copy_from_slice(&512u16.to_le_bytes());
        head[0x32..0x34].copy_from_slice(&6u16.to_le_bytes());
        head[510] = 0x55;
        head[6 * 512 + 510] = 0x55;
        head[1024] = 3;
        head[6 * 512 + 600] = 4;
        z.write_all(&head).unwrap();
        let on_disk = std::fs::read(&p).unwrap();
        assert!(on_disk[..512].iter().all(|b| *b == 0));
        assert!(on_disk[3072..3584].iter().all(|b| *b == 0));
        assert_eq!((on_disk[1024], on_disk[6 * 512 + 600]), (3, 4));
        let mut back = vec![0u8; 8192];
        z.seek(SeekFrom::Start(0)).unwrap();
        z.read_exact(&mut back).unwrap();
        assert_eq!(back, head);
        z.release().unwrap();
        assert_eq!(std::fs::read(&p).unwrap()[..8192], head[..]);
    }

    /// A device whose writes stop reaching it after the first `.1` (a power cut): each later
    /// one fails. `.2` counts the writes it was given.
    struct CutAfter(std::fs::File, u64, Arc<std::sync::atomic::AtomicU64>);
    impl Read for CutAfter {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for CutAfter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = self.2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n >= self.1 {
                return Err(io::Error::other("power cut"));
            }
            self.0.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.0.flush()
        }
    }
    impl Seek for CutAfter {
        fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
            self.0.seek(pos)
        }
    }
    impl FatDevice for CutAfter {
        fn sync_device(&mut self) -> io::Result<()> {
            self.0.sync_data()
        }
    }

    /// A format cut off at any write leaves the device either without a FAT32 boot sector or
    /// with the whole file system: never a FAT32 volume that opens damaged.
    #[test]
    fn a_format_cut_off_never_reads_as_a_damaged_fat32() {
        let (_t, p) = image(40 << 20);
        let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let dev = CutAfter(open_rw(&p), u64::MAX, counted.clone());
        FatStore::format(dev, &FormatOptions::default()).unwrap();
        let writes = counted.load(std::sync::atomic::Ordering::SeqCst);
        assert!(writes > 3, "{writes}");
        for cut in [1, writes / 2, writes - 1] {
            std::fs::write(&p, vec![0u8; 40 << 20]).unwrap();
            let dev = CutAfter(open_rw(&p), cut, Arc::default());
            assert!(
                FatStore::format(dev, &FormatOptions::default()).is_err(),
                "{cut}"
            );
            let e = FatStore::open(open_rw(&p)).err().map(|e| e.to_string());
            assert!(
                e.as_deref()
                    .is_some_and(|e| e.contains("no boot sector signature")),
                "cut at write {cut} of {writes}: {e:?}"
            );
            // Nor is a backup boot sector there to be copied over it (that made a damaged
            // one), but at the last write: then all else is durable, and the copy is whole.
            let mut img = std::fs::read(&p).unwrap();
            if img[6 * 512..7 * 512].iter().any(|b| *b != 0) {
                assert_eq!(cut, writes - 1, "a backup boot sector was left");
                img.copy_within(6 * 512..7 * 512, 0);
                std::fs::write(&p, &img).unwrap();
                let mut s = FatStore::open(open_rw(&p)).unwrap();
                assert!(s.file_system_findings().unwrap().is_empty());
            }
        }
    }

    /// `medium` written to `p` (its zero pieces left as holes: quick), opened.
    fn write_sparse(p: &std::path::Path, medium: &[u8]) -> std::fs::File {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .truncate(true)
            .open(p)
            .unwrap();
        f.set_len(medium.len() as u64).unwrap();
        // Looked at a word at a time: these tests write a 34 MiB medium per cut point.
        let zero = |b: &[u8]| {
            let (words, rest) = b.split_at(b.len() - b.len() % 8);
            words
                .chunks_exact(8)
                .all(|w| u64::from_ne_bytes(w.try_into().unwrap_or([1; 8])) == 0)
                && rest.iter().all(|x| *x == 0)
        };
        for (i, b) in medium.chunks(1 << 16).enumerate() {
            if !zero(b) {
                std::os::unix::fs::FileExt::write_all_at(&f, b, (i << 16) as u64).unwrap();
            }
        }
        f
    }

    /// A capture killed after each of its device writes in turn, then resumed and
    /// finished: `fsck.fat -n` finds the medium clean every time, and the capture reads
    /// back. The medium's free clusters hold old bytes, as a reused one does. A kill
    /// between a cluster's FAT entry and the entry or link that holds it left that cluster
    /// taken in no chain and the two FATs different ("Reclaimed 1 unused cluster", "FATs
    /// differ"); one between a directory's entry and its first cluster left a directory
    /// without `.` the resume then filled; one inside the FAT's write-back left a link to a
    /// cluster not yet taken (the resume refused its own generation as damaged); one inside
    /// a removal left an entry on freed clusters the resume then gave to a new file.
    #[cfg(feature = "crypto")]
    #[test]
    fn a_capture_killed_after_any_write_resumes_to_a_clean_medium() {
        use crate::{CaptureParams, CaptureReader, CaptureWriter, ChunkData, Unlock};
        let id = age::x25519::Identity::generate();
        let cs = 64 * 1024u32;
        let data: Vec<u8> = (0..24 * cs as usize + 300)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
            .collect();
        let params = || {
            let mut p = CaptureParams::new("web01", data.len() as u64);
            p.chunk_size = cs;
            p.recipients = vec![id.to_public()];
            p.max_segment_bytes = 600_000;
            p.created_unix = 1_790_000_000;
            p
        };
        let run = |s: &mut dyn Store, key| -> crate::Result<crate::DataKey> {
            let mut w = CaptureWriter::begin(s, params(), key)?;
            let key = w.data_key().clone();
            let enc = w.encoder();
            for i in w.resume_from()..w.chunk_count() {
                let at = (i * u64::from(cs)) as usize;
                let end = (at + cs as usize).min(data.len());
                w.append(enc.encode(i, &data[at..end])?)?;
                if i % 4 == 3 {
                    w.checkpoint()?;
                }
            }
            w.finish()?;
            Ok(key)
        };
        let (_t, p) = image(MIN_FAT32_BYTES);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let mut blank = std::fs::read(&p).unwrap();
        let geo = fatmap::Geometry::parse(&blank[..512]).unwrap();
        // (The clusters the capture takes: the rest stays sparse, quick to write out.)
        let past_root = (geo.data_offset + geo.cluster_bytes) as usize;
        for (i, b) in blank[past_root..past_root + (4 << 20)]
            .iter_mut()
            .enumerate()
        {
            *b = (i % 251) as u8 ^ 0xa5;
        }
        let mut whole = Joint::alone(blank.clone());
        let mut s = FatStore::open(&mut whole).unwrap();
        let key = run(&mut s, None).unwrap();
        s.unmount().unwrap();
        let log = whole.written();
        let writes = log.len();
        assert!(writes > 50, "{writes}");
        let mut medium = blank;
        for (k, (at, bytes)) in log.iter().enumerate().take(writes - 1) {
            let at = *at as usize;
            medium[at..at + bytes.len()].copy_from_slice(bytes);
            let mut s = FatStore::open(write_sparse(&p, &medium)).unwrap();
            let has_journal = s.list("MGEAR").is_ok_and(|e| !e.is_empty());
            if let Err(e) = run(&mut s, has_journal.then(|| key.clone())) {
                panic!(
                    "killed after write {} of {writes}: the resume failed: {e}",
                    k + 1
                );
            }
            s.unmount().unwrap();
            let out = Command::new("fsck.fat").arg("-n").arg(&p).output().unwrap();
            assert!(
                out.status.success(),
                "killed after write {} of {writes}: fsck.fat: {}",
                k + 1,
                String::from_utf8_lossy(&out.stdout)
            );
            let mut s = FatStore::open_read_only(open_rw(&p)).unwrap();
            let mut r = CaptureReader::open(&mut s, "web01", None, &Unlock::Identity(id.clone()))
                .unwrap_or_else(|e| panic!("killed after write {}: {e}", k + 1));
            let mut back = Vec::new();
            for i in 0..r.chunk_count() {
                match r.read_chunk(i).unwrap() {
                    ChunkData::Zero { len } => back.resize(back.len() + len as usize, 0),
                    ChunkData::Data(d) => back.extend_from_slice(&d),
                }
            }
            assert!(
                back == data,
                "killed after write {}: read back differs",
                k + 1
            );
        }
    }

    /// A device that logs every write it gets: the medium a kill leaves after the first `k`
    /// writes is the blank one with those `k` applied. Two media share one log, as one
    /// process writes them: a kill cuts both. `writes_left`, when set, pulls this medium's
    /// cable: its later writes fail.
    struct Joint {
        live: io::Cursor<Vec<u8>>,
        dev: usize,
        log: WriteLog,
        writes_left: Option<usize>,
    }
    /// (medium, offset, bytes) of every device write, in order.
    type WriteLog = Arc<Mutex<Vec<(usize, u64, Vec<u8>)>>>;
    impl Read for Joint {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.live.read(buf)
        }
    }
    impl Write for Joint {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            match &mut self.writes_left {
                Some(0) => return Err(io::Error::other("the medium's cable was pulled")),
                Some(n) => *n -= 1,
                None => {}
            }
            let at = self.live.position();
            let n = self.live.write(buf)?;
            self.log
                .lock()
                .unwrap()
                .push((self.dev, at, buf[..n].to_vec()));
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Seek for Joint {
        fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
            self.live.seek(pos)
        }
    }
    impl FatDevice for &mut Joint {
        fn sync_device(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Joint {
        /// One medium on `image`, with a log of its own.
        fn alone(image: Vec<u8>) -> Self {
            Joint {
                live: io::Cursor::new(image),
                dev: 0,
                log: WriteLog::default(),
                writes_left: None,
            }
        }

        /// (offset, bytes) of every write so far, in order.
        fn written(&self) -> Vec<(u64, Vec<u8>)> {
            let log = self.log.lock().unwrap();
            log.iter().map(|(_, at, b)| (*at, b.clone())).collect()
        }
    }

    /// A capture spanning two FAT media, the first nearly full, written and cut off in
    /// turn: see its two tests.
    #[cfg(feature = "crypto")]
    struct SpanCut {
        id: age::x25519::Identity,
        data: Vec<u8>,
        _tmp: tempfile::TempDir,
        paths: [std::path::PathBuf; 2],
        /// The two media as formatted (A holding a file that leaves room for about half
        /// the capture).
        blank: Vec<Vec<u8>>,
    }

    #[cfg(feature = "crypto")]
    impl SpanCut {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let paths = [tmp.path().join("a.img"), tmp.path().join("b.img")];
            let mut blank = Vec::new();
            for (i, p) in paths.iter().enumerate() {
                std::fs::File::create(p)
                    .unwrap()
                    .set_len(MIN_FAT32_BYTES)
                    .unwrap();
                FatStore::format(open_rw(p), &FormatOptions::default()).unwrap();
                if i == 0 {
                    let mut s = FatStore::open(open_rw(p)).unwrap();
                    let free = s.free_space().unwrap().unwrap();
                    s.set_len("FILLER", free - 600_000).unwrap();
                    s.unmount().unwrap();
                }
                blank.push(std::fs::read(p).unwrap());
            }
            SpanCut {
                id: age::x25519::Identity::generate(),
                data: (0..12 * 65_536 + 300)
                    .map(|i: usize| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
                    .collect(),
                _tmp: tmp,
                paths,
                blank,
            }
        }

        /// Joins the media and captures (or resumes) web01 onto them.
        fn run<'m>(&self, a: &'m mut dyn Store, b: &'m mut dyn Store) -> crate::Result<()> {
            use crate::span::{SpanOptions, SpanStore};
            use crate::{CaptureParams, CaptureWriter, Unlock};
            let cs = 64 * 1024u32;
            let opts = SpanOptions {
                reserve: 64 * 1024,
                min_room: 2 * u64::from(cs),
            };
            let media: Vec<(&'m mut dyn Store, String)> = vec![(a, "A".into()), (b, "B".into())];
            let mut span = SpanStore::join(media, [7; 16], opts, &[])?;
            let mut p = CaptureParams::new("web01", self.data.len() as u64);
            p.chunk_size = cs;
            p.recipients = vec![self.id.to_public()];
            p.max_segment_bytes = 300_000;
            p.created_unix = 1_790_000_000;
            let unlock = Unlock::Identity(self.id.clone());
            let key = crate::unlock_data_key(&mut span, "web01", &unlock)
                .ok()
                .map(|(k, _)| k);
            let mut w = CaptureWriter::begin(&mut span, p, key)?;
            let enc = w.encoder();
            for i in w.resume_from()..w.chunk_count() {
                let at = (i * u64::from(cs)) as usize;
                let end = (at + cs as usize).min(self.data.len());
                w.append(enc.encode(i, &self.data[at..end])?)?;
                if i % 3 == 2 {
                    w.checkpoint()?;
                }
            }
            w.finish()?;
            Ok(())
        }

        /// Two devices on `images`, sharing `log`; `pulled`: (which, after how many writes).
        fn devices(
            &self,
            images: &[Vec<u8>],
            log: &WriteLog,
            pulled: Option<(usize, usize)>,
        ) -> Vec<Joint> {
            (0..2)
                .map(|dev| Joint {
                    live: io::Cursor::new(images[dev].clone()),
                    dev,
                    log: log.clone(),
                    writes_left: pulled.filter(|p| p.0 == dev).map(|p| p.1),
                })
                .collect()
        }

        /// Runs the capture on `devs` and closes both; what failed is left as it is.
        fn run_on(&self, devs: &mut [Joint]) -> Result<(), String> {
            let (da, db) = devs.split_at_mut(1);
            let mut a = FatStore::open(&mut da[0]).map_err(|e| e.to_string())?;
            let mut b = FatStore::open(&mut db[0]).map_err(|e| e.to_string())?;
            let done = self.run(&mut a, &mut b).map_err(|e| e.to_string());
            let closed = (a.unmount(), b.unmount());
            done?;
            closed.0.and(closed.1).map_err(|e| e.to_string())
        }

        /// What a cut left (`a`, `b`) run again to its end: both media open (each put
        /// right if left mid-write), the capture finishes, `fsck.fat -n` finds both clean
        /// and the span reads back.
        fn runs_again(&self, a: &[u8], b: &[u8], cut: &str) {
            use crate::span::SpanStore;
            use crate::{CaptureReader, ChunkData, Unlock};
            let mut sa = FatStore::open(write_sparse(&self.paths[0], a)).unwrap();
            let mut sb = FatStore::open(write_sparse(&self.paths[1], b)).unwrap();
            if let Err(e) = self.run(&mut sa, &mut sb) {
                panic!("{cut}: the run after it failed: {e}");
            }
            sa.unmount().unwrap();
            sb.unmount().unwrap();
            for p in &self.paths {
                let out = Command::new("fsck.fat").arg("-n").arg(p).output().unwrap();
                assert!(
                    out.status.success(),
                    "{cut}: fsck.fat {}: {}",
                    p.display(),
                    String::from_utf8_lossy(&out.stdout)
                );
            }
            let mut sa = FatStore::open_read_only(open_rw(&self.paths[0])).unwrap();
            let mut sb = FatStore::open_read_only(open_rw(&self.paths[1])).unwrap();
            let both: Vec<(&mut dyn Store, String)> =
                vec![(&mut sa, "A".into()), (&mut sb, "B".into())];
            let mut span = SpanStore::open(both, true).unwrap();
            let unlock = Unlock::Identity(self.id.clone());
            let mut r = CaptureReader::open(&mut span, "web01", None, &unlock)
                .unwrap_or_else(|e| panic!("{cut}: {e}"));
            let mut back = Vec::new();
            for i in 0..r.chunk_count() {
                match r.read_chunk(i).unwrap() {
                    ChunkData::Zero { len } => back.resize(back.len() + len as usize, 0),
                    ChunkData::Data(d) => back.extend_from_slice(&d),
                }
            }
            assert!(back == self.data, "{cut}: read back differs");
        }
    }

    /// A capture spanning two FAT media killed after each device write of either in turn
    /// (both media cut at once), then run again to its end. A kill while the second
    /// medium's label was being made left it empty, and every later run refused that
    /// medium as "damaged".
    #[cfg(feature = "crypto")]
    #[test]
    fn a_span_capture_killed_after_any_write_runs_again_to_clean_media() {
        let t = SpanCut::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        t.run_on(&mut t.devices(&t.blank, &log, None)).unwrap();
        let log = log.lock().unwrap();
        let on = |d: usize| log.iter().filter(|w| w.0 == d).count();
        assert!(
            on(0) > 20 && on(1) > 20,
            "both media written: {} {}",
            on(0),
            on(1)
        );
        let mut media = t.blank.clone();
        for (k, (dev, at, bytes)) in log.iter().enumerate().take(log.len() - 1) {
            let at = *at as usize;
            media[*dev][at..at + bytes.len()].copy_from_slice(bytes);
            let cut = format!("killed after write {} of {}", k + 1, log.len());
            t.runs_again(&media[0], &media[1], &cut);
        }
    }

    /// The same capture with one medium's cable pulled after each of its writes in turn:
    /// the run fails, the other medium is closed cleanly, then it runs again to its end.
    /// The resume wrote a generation's file on the medium the cut had left without its
    /// directory ("IPART: not found", every time), and a sync after a write-back that had
    /// failed unheard said "durable", so the journal named records the pulled medium never
    /// got.
    #[cfg(feature = "crypto")]
    #[test]
    fn a_span_capture_with_a_cable_pulled_after_any_write_runs_again_to_clean_media() {
        let t = SpanCut::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        t.run_on(&mut t.devices(&t.blank, &log, None)).unwrap();
        let writes: Vec<usize> = (0..2)
            .map(|d| log.lock().unwrap().iter().filter(|w| w.0 == d).count())
            .collect();
        for (pulled, n) in (0..2).flat_map(|d| (0..writes[d]).map(move |n| (d, n))) {
            let mut devs = t.devices(&t.blank, &log, Some((pulled, n)));
            assert!(t.run_on(&mut devs).is_err(), "the pulled cable was noticed");
            let cut = format!("medium {pulled}'s cable pulled after its write {n}");
            t.runs_again(devs[0].live.get_ref(), devs[1].live.get_ref(), &cut);
        }
    }

    /// Each operation a resume or an abort does (cut a file back, remove one, rename, make
    /// directories, grow a directory), killed after each of its device writes: the next
    /// open for writing leaves `fsck.fat -n` nothing to find and every other file intact.
    /// A free cut off after the FAT and before the entry (fatfs frees first) left an entry
    /// on free clusters, which the next file was given.
    #[test]
    fn every_operation_killed_after_any_write_leaves_a_medium_the_next_open_puts_right() {
        let (_t, p) = image(MIN_FAT32_BYTES);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let mut base = std::fs::read(&p).unwrap();
        let geo = fatmap::Geometry::parse(&base[..512]).unwrap();
        let past_root = (geo.data_offset + geo.cluster_bytes) as usize;
        for (i, b) in base[past_root..past_root + (2 << 20)]
            .iter_mut()
            .enumerate()
        {
            *b = (i % 251) as u8 ^ 0x5a;
        }
        let keep: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        type Op = fn(&mut FatStore<&mut Joint>);
        let ops: [(&str, Op); 7] = [
            ("cut back", |s| {
                s.set_len("MGEAR/G1/SEG-00001", 70_000).unwrap()
            }),
            ("cut to nothing", |s| {
                s.set_len("MGEAR/G1/SEG-00001", 0).unwrap()
            }),
            ("remove", |s| s.remove_file("MGEAR/G1/SEG-00001").unwrap()),
            ("remove a file of one cluster", |s| {
                s.remove_file("MGEAR/G1/JRNL-A").unwrap()
            }),
            ("remove an empty directory", |s| {
                s.remove_file("MGEAR/G1/EMPTY").unwrap()
            }),
            ("rename", |s| {
                s.rename("MGEAR/G1/JRNL-A", "MGEAR/G1/JRNL-B").unwrap()
            }),
            ("make directories and files", |s| {
                for i in 0..6 {
                    s.create_dir_all(&format!("MGEAR/G{i}/SUB")).unwrap();
                    s.write_at(&format!("MGEAR/G1/IPART-{i}"), 0, &[i as u8; 700])
                        .unwrap();
                }
            }),
        ];
        for (what, op) in ops {
            // The medium before the operation, synced.
            let mut dev = Joint::alone(base.clone());
            let mut s = FatStore::open(&mut dev).unwrap();
            s.create_dir_all("MGEAR/G1/EMPTY").unwrap();
            s.write_at("MGEAR/G1/KEEP", 0, &keep).unwrap();
            s.write_at("MGEAR/G1/SEG-00001", 0, &big[..100]).unwrap();
            s.write_at("MGEAR/G1/SEG-00001", 100, &big[100..]).unwrap();
            s.write_at("MGEAR/G1/JRNL-A", 0, b"journal").unwrap();
            s.sync("MGEAR/G1/KEEP").unwrap();
            let before = s.cache.lock().unwrap().dev.log.lock().unwrap().len();
            op(&mut s);
            s.unmount().unwrap();
            let log = dev.written();
            let mut medium = base.clone();
            for (at, bytes) in &log[..before] {
                medium[*at as usize..*at as usize + bytes.len()].copy_from_slice(bytes);
            }
            let cut = log.len() - before;
            assert!(cut > 0, "{what}: no write");
            for (k, (at, bytes)) in log[before..].iter().enumerate() {
                medium[*at as usize..*at as usize + bytes.len()].copy_from_slice(bytes);
                let mut s = FatStore::open(write_sparse(&p, &medium)).unwrap();
                let mut kept = vec![0u8; keep.len()];
                let read = s.read_at("MGEAR/G1/KEEP", 0, &mut kept);
                s.unmount().unwrap();
                let out = Command::new("fsck.fat").arg("-n").arg(&p).output().unwrap();
                assert!(
                    out.status.success(),
                    "{what}, killed after write {} of {cut}: fsck.fat: {}",
                    k + 1,
                    String::from_utf8_lossy(&out.stdout)
                );
                assert!(
                    read == Ok(keep.len()) && kept == keep,
                    "{what}, killed after write {}",
                    k + 1
                );
            }
        }
    }

    /// A device that refuses every write (a sealed appliance's export answers EPERM).
    struct RefusesWrites(std::fs::File);
    impl Read for RefusesWrites {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for RefusesWrites {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(1))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Seek for RefusesWrites {
        fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
            self.0.seek(pos)
        }
    }
    impl FatDevice for RefusesWrites {
        fn sync_device(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A volume holding `MGEAR/F` (3000 bytes), marked dirty, with the FAT entry of cluster
    /// `at(F's first cluster, geometry)` set to `value` in the first `copies` FATs: what a
    /// cut run, or damage, leaves.
    fn left_mid_write(
        at: impl Fn(u32, &fatmap::Geometry) -> u64,
        value: u32,
        copies: u64,
    ) -> (tempfile::TempDir, std::path::PathBuf, fatmap::Geometry) {
        use std::os::unix::fs::FileExt;
        let (t, p) = image(MIN_FAT32_BYTES);
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        s.create_dir_all("MGEAR").unwrap();
        s.write_at("MGEAR/F", 0, &[7u8; 3000]).unwrap();
        let first = s.map("MGEAR/F").unwrap().unwrap().runs[0].cluster;
        s.unmount().unwrap();
        let f = open_rw(&p);
        let mut boot = [0u8; 512];
        f.read_exact_at(&mut boot, 0).unwrap();
        let geo = fatmap::Geometry::parse(&boot).unwrap();
        boot[DIRTY_BYTE] |= 1;
        f.write_all_at(&boot, 0).unwrap();
        for copy in 0..copies {
            let entry = geo.fat_offset + copy * geo.fat_bytes + at(first, &geo) * 4;
            f.write_all_at(&value.to_le_bytes(), entry).unwrap();
        }
        (t, p, geo)
    }

    /// A volume left mid-write on a device that refuses writes opens for writing (what it
    /// would put right is left as it is) and its first write says the medium is read-only:
    /// the repair at open made opening a sealed appliance's medium fail with it.
    #[test]
    fn a_volume_left_mid_write_on_a_device_refusing_writes_opens_and_is_read_only() {
        // A cluster taken in the first FAT only.
        let (_t, p, _) = left_mid_write(|_, geo| u64::from(geo.cluster_count) + 1, 0x0FFF_FFFF, 1);
        let before = std::fs::read(&p).unwrap();
        let mut s = FatStore::open(RefusesWrites(open_rw(&p))).unwrap();
        assert_eq!(s.after_cut(), None, "nothing put right");
        let mut back = [0u8; 3000];
        assert_eq!(s.read_at("MGEAR/F", 0, &mut back), Ok(3000));
        assert_eq!(s.write_at("MGEAR/G", 0, b"x"), Err(StoreError::ReadOnly));
        drop(s);
        assert!(
            std::fs::read(&p).unwrap() == before,
            "nothing reached the medium"
        );
        // Where writes reach the medium, the same open puts it right.
        let s = FatStore::open(open_rw(&p)).unwrap();
        let done = s.after_cut().unwrap().as_ref().unwrap();
        assert_eq!(done.clusters_freed, 1);
        s.unmount().unwrap();
        fsck(&p);
    }

    /// A volume left mid-write that also holds damage no cut write leaves (a chain out of
    /// the volume) is not put right: nothing is written, the damage is a finding (so a
    /// writer refuses), and the dirty mark stays. It was written over without a word.
    #[test]
    fn damage_on_a_volume_left_mid_write_is_left_alone_and_a_finding() {
        let (_t, p, geo) = left_mid_write(|first, _| u64::from(first) + 1, 0x0FFF_FF00, 2);
        let before = std::fs::read(&p).unwrap();
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        let why = s.after_cut().unwrap().clone().unwrap_err();
        assert!(why.starts_with("MGEAR/F: "), "{why}");
        let findings = s.chain_findings().unwrap();
        assert!(
            findings
                .iter()
                .any(|f| f.starts_with("MGEAR/F: ") && f.contains("nothing was put right")),
            "{findings:?}"
        );
        s.unmount().unwrap();
        let after = std::fs::read(&p).unwrap();
        assert_eq!(after[DIRTY_BYTE] & 1, 1, "the dirty mark stays");
        // Nothing but FSInfo's free count and hint, which a close always writes.
        let fsinfo = geo.fsinfo_offset as usize..geo.fsinfo_offset as usize + 512;
        let differ: Vec<usize> = (0..after.len())
            .filter(|&i| after[i] != before[i] && !fsinfo.contains(&i))
            .collect();
        assert!(differ.is_empty(), "nothing was written: {differ:?}");
    }

    /// A file whose entry's attribute byte was flipped to "directory" (it keeps its size) is
    /// said as damage, read as a file by the walk, and left alone by the repair at a dirty
    /// open: read as a directory its bytes made bogus findings, verify exited 3 ("I/O
    /// error") where the medium was damaged, and the repair took it for a half-made directory
    /// and zeroed its clusters.
    #[test]
    fn a_file_marked_a_directory_is_damage_and_never_emptied() {
        use std::os::unix::fs::FileExt;
        let (_t, p, geo) = left_mid_write(|_, _| 0, 0, 0);
        let f = open_rw(&p);
        let mut img = std::fs::read(&p).unwrap();
        let at = img
            .chunks_exact(32)
            .position(|e| e[..11] == *b"F          " && e[11] & 0x10 == 0)
            .expect("F's entry")
            * 32;
        img[at + 11] |= 0x10;
        f.write_all_at(&img[at..at + 32], at as u64).unwrap();
        let first = u32::from(u16::from_le_bytes([img[at + 26], img[at + 27]]))
            | u32::from(u16::from_le_bytes([img[at + 20], img[at + 21]])) << 16;
        let data = geo.cluster_offset(first) as usize;
        let mut s = FatStore::open(open_rw(&p)).unwrap();
        let found = s.chain_findings().unwrap();
        assert!(
            found
                .iter()
                .any(|f| f.starts_with("MGEAR/F: its entry marks it a directory")
                    && f.contains("(3000 bytes)")),
            "{found:?}"
        );
        assert!(
            !found.iter().any(|f| f.starts_with("MGEAR/F/")),
            "its bytes are no entries: {found:?}"
        );
        assert!(
            matches!(s.len("MGEAR/F"), Err(StoreError::Damaged(m)) if m.contains("directory entry is damaged")),
            "a finding about the medium, not an I/O error"
        );
        s.unmount().unwrap();
        let after = std::fs::read(&p).unwrap();
        assert_eq!(
            &after[data..data + 3000],
            &[7u8; 3000][..],
            "its bytes stay"
        );
    }

    #[test]
    fn cache_is_coherent_across_bypass_and_small_io() {
        let (_t, p) = image(1 << 20);
        let mut c = BlockCache::new(open_rw(&p)).unwrap();
        c.seek(SeekFrom::Start(5000)).unwrap();
        c.write_all(b"small").unwrap();
        let big = vec![7u8; 128 * 1024];
        c.seek(SeekFrom::Start(0)).unwrap();
        c.write_all(&big).unwrap();
        c.seek(SeekFrom::Start(4998)).unwrap();
        let mut b = [0u8; 9];
        c.read_exact(&mut b).unwrap();
        assert_eq!(b, [7u8; 9]);
        c.seek(SeekFrom::Start(200_000)).unwrap();
        c.write_all(b"xyz").unwrap();
        let mut back = vec![0u8; 128 * 1024];
        c.seek(SeekFrom::Start(100_000)).unwrap();
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back[100_000..100_003], b"xyz");
        c.sync().unwrap();
        let raw = std::fs::read(&p).unwrap();
        assert_eq!(&raw[200_000..200_003], b"xyz");
        assert!(c.seek(SeekFrom::Start((1 << 20) - 2)).is_ok());
        assert!(c.write_all(b"past end").is_err());
    }
}
