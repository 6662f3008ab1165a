//! The medium's files as the board firmware sees them: a FAT32 volume
//! mounted over any `mgear_firmware::hal::BlockDevice`, implementing
//! `image_format::Store`, so the core's verify, seal, arrival and key-slot
//! erase work on the board as they do in the simulator. `no_std` + `alloc`;
//! built and tested on the host like every module here.
//!
//! The FAT32 engine is `lamfat` (a crates.io republish of rust-fatfs's
//! `no_std` 0.4 line: long file names, rename, write, on stable Rust), the
//! same code family as the host's `image_format::store::FatStore` (fatfs
//! 0.3.6, which needs std). This module adds only what a block device needs
//! underneath it and the `Store` semantics on top, mirroring `FatStore`
//! method by method (case-insensitive lookup, sorted listings without `.`
//! and `..`, zero-filled gaps, 4 GiB file limit, remove-then-rename; only a
//! rename onto the same name differs: a no-op here, where `FatStore` would
//! remove the file).
//!
//! # The sector cache
//!
//! `lamfat` does byte-positioned I/O and re-reads FAT entries (4 bytes) and
//! directory entries (32 bytes) on every operation, while the device moves
//! whole blocks. [`FatFiles`] therefore sits on a small write-back LRU cache
//! of 4 KiB lines ([`DEFAULT_CACHE_LINES`] of them, 64 KiB of RAM), which
//! absorbs the metadata traffic. Transfers of a line or more (file data:
//! `lamfat` moves data a cluster at a time) go straight to the device in
//! pieces of at most `BlockDevice::max_transfer`, after writing back or
//! patching the cached lines they overlap, so file data does not evict the
//! FAT. Dirty lines reach the device when a file is flushed (every
//! `write_at` / `set_len` does), when evicted, and on [`Store::sync`] and
//! [`FatFiles::unmount`], which also call `BlockDevice::flush`.
//!
//! File reads bypass `lamfat`'s chain walk: [`image_format::store::fatmap`]
//! (shared with the host's `FatStore`) maps a file's clusters into runs
//! once and reads each run as one device request (in `max_transfer`
//! pieces). The simulator mounts the medium with this module too, so seal
//! and arrival run the board's code.
//!
//! Mounting a cleanly unmounted volume writes nothing, and a read-only walk
//! followed by [`FatFiles::unmount`] leaves every byte of it as it was (the
//! volume's dirty flag and FSInfo sector are written only after something
//! changed, see [`Store::free_space`] for the one read that can count as a
//! change): seal and arrival hash the raw medium around it. A volume left
//! mid-write (its dirty flag set: a host's capture through the appliance cut
//! off, or the board's own write cut by a power loss) is put right at mount
//! first, as the host's `FatStore` does ([`fatmap::reclaim`], see
//! [`FatFiles::after_cut`]): the board wrote its seal on top of what the cut
//! left, and the shipment then failed `fsck.fat -n`.
//! Timestamps of files written here are the FAT epoch (1980-01-01): the
//! board's RTC is not trusted for them and nothing reads them.

use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;

use image_format::store::fatmap::{
    self, check_fat_size, check_path, split_parent, FileMap, MapCache,
};
use image_format::store::{Entry, EntryKind, Store, StoreError};
use lamfat::{IoBase, IoError, LossyOemCpConverter, NullTimeProvider, Read, Seek, SeekFrom, Write};
use mgear_firmware::hal::{BlockDevice, HwError};

/// Bytes per cache line: 8 SD sectors, the smallest usual FAT32 cluster.
const LINE_BYTES: usize = 4096;
/// Cache lines [`FatFiles::mount`] uses (64 KiB of RAM).
pub const DEFAULT_CACHE_LINES: usize = 16;
/// Zero-fill unit when a file grows past a gap.
const ZERO_FILL: usize = 4096;
/// FAT32's boot sector byte whose bit 0 a writer sets while the volume is mounted for
/// writing (fatfs, lamfat, Linux, Windows): set at mount, the last writer was cut off.
const DIRTY_BYTE: u64 = 0x41;

/// A device error as `lamfat` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DevError(HwError);

impl fmt::Display for DevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl IoError for DevError {
    fn is_interrupted(&self) -> bool {
        false
    }
    fn new_unexpected_eof_error() -> Self {
        DevError(HwError::OutOfRange)
    }
    fn new_write_zero_error() -> Self {
        DevError(HwError::Io(String::from("the medium accepted no bytes")))
    }
}

struct Line {
    /// Line number: byte offset / line size.
    index: u64,
    data: Box<[u8]>,
    dirty: bool,
    /// Last use, for LRU eviction.
    used: u64,
}

/// Write-back LRU cache of whole-block lines in front of the device.
struct Cache<'d, D: BlockDevice + ?Sized> {
    dev: &'d mut D,
    block: usize,
    line: usize,
    size: u64,
    /// Largest device transfer, whole blocks.
    transfer: usize,
    lines: Vec<Line>,
    cap: usize,
    clock: u64,
}

impl<'d, D: BlockDevice + ?Sized> Cache<'d, D> {
    fn new(dev: &'d mut D, cap: usize) -> Result<Self, HwError> {
        let block = dev.block_size();
        if block < 512 || !block.is_power_of_two() {
            return Err(HwError::Io(format!(
                "the medium reports {block}-byte blocks; FAT32 needs a power of two of at least 512"
            )));
        }
        let size = dev
            .block_count()
            .checked_mul(block as u64)
            .ok_or(HwError::OutOfRange)?;
        // Both powers of two: the larger is a multiple of the smaller.
        let line = block.max(LINE_BYTES);
        let transfer = (dev.max_transfer() / block).max(1) * block;
        Ok(Cache {
            dev,
            block,
            line,
            size,
            transfer,
            lines: Vec::new(),
            cap: cap.max(1),
            clock: 0,
        })
    }

    fn check_range(&self, off: u64, len: usize) -> Result<(), HwError> {
        match off.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(HwError::OutOfRange),
        }
    }

    /// Length of line `index` (the last one may be short, still whole blocks).
    fn line_len(&self, index: u64) -> usize {
        (self.size - index * self.line as u64).min(self.line as u64) as usize
    }

    /// Whole-block device read at block-aligned `off`, in `transfer` pieces.
    fn dev_read(&mut self, off: u64, buf: &mut [u8]) -> Result<(), HwError> {
        let bs = self.block as u64;
        for (i, piece) in buf.chunks_mut(self.transfer).enumerate() {
            let at = off + (i * self.transfer) as u64;
            self.dev.read_blocks(at / bs, piece)?;
        }
        Ok(())
    }

    fn dev_write(&mut self, off: u64, data: &[u8]) -> Result<(), HwError> {
        let bs = self.block as u64;
        for (i, piece) in data.chunks(self.transfer).enumerate() {
            let at = off + (i * self.transfer) as u64;
            self.dev.write_blocks(at / bs, piece)?;
        }
        Ok(())
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Put a line in the cache, writing back the least recently used one
    /// if the cache is full. Returns its slot.
    fn insert(&mut self, index: u64, data: Box<[u8]>, dirty: bool) -> Result<usize, HwError> {
        let used = self.tick();
        let line = Line {
            index,
            data,
            dirty,
            used,
        };
        if self.lines.len() < self.cap {
            self.lines.push(line);
            return Ok(self.lines.len() - 1);
        }
        let victim = (0..self.lines.len())
            .min_by_key(|&i| self.lines[i].used)
            .ok_or(HwError::Io(String::from("the medium cache has no lines")))?;
        if self.lines[victim].dirty {
            let at = self.lines[victim].index * self.line as u64;
            let old = core::mem::take(&mut self.lines[victim].data);
            let written = self.dev_write(at, &old);
            self.lines[victim].data = old;
            written?;
        }
        self.lines[victim] = line;
        Ok(victim)
    }

    fn find(&mut self, index: u64) -> Option<usize> {
        let slot = self.lines.iter().position(|l| l.index == index)?;
        let used = self.tick();
        self.lines[slot].used = used;
        Some(slot)
    }

    /// The slot holding line `index`, read from the device if needed.
    fn load(&mut self, index: u64) -> Result<usize, HwError> {
        if let Some(slot) = self.find(index) {
            return Ok(slot);
        }
        let mut data = vec![0u8; self.line_len(index)].into_boxed_slice();
        self.dev_read(index * self.line as u64, &mut data)?;
        self.insert(index, data, false)
    }

    fn read_cached(&mut self, off: u64, buf: &mut [u8]) -> Result<(), HwError> {
        let mut done = 0;
        while done < buf.len() {
            let pos = off + done as u64;
            let index = pos / self.line as u64;
            let within = (pos % self.line as u64) as usize;
            let slot = self.load(index)?;
            let data = &self.lines[slot].data;
            let n = (data.len() - within).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&data[within..within + n]);
            done += n;
        }
        Ok(())
    }

    fn write_cached(&mut self, off: u64, src: &[u8]) -> Result<(), HwError> {
        let mut done = 0;
        while done < src.len() {
            let pos = off + done as u64;
            let index = pos / self.line as u64;
            let within = (pos % self.line as u64) as usize;
            let len = self.line_len(index);
            let n = (len - within).min(src.len() - done);
            let slot = match self.find(index) {
                Some(slot) => slot,
                // A whole line overwritten needs no read.
                None if n == len => self.insert(index, vec![0u8; len].into_boxed_slice(), true)?,
                None => self.load(index)?,
            };
            let line = &mut self.lines[slot];
            line.data[within..within + n].copy_from_slice(&src[done..done + n]);
            line.dirty = true;
            done += n;
        }
        Ok(())
    }

    /// Split `[off, off+len)` into an unaligned head, whole blocks, and a tail.
    fn split(&self, off: u64, len: usize) -> (usize, usize) {
        let bs = self.block as u64;
        let head = (((bs - off % bs) % bs) as usize).min(len);
        let body = (len - head) / self.block * self.block;
        (head, body)
    }

    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> Result<(), HwError> {
        self.check_range(off, buf.len())?;
        if buf.len() < self.line {
            return self.read_cached(off, buf);
        }
        let (head, body) = self.split(off, buf.len());
        let (h, rest) = buf.split_at_mut(head);
        let (b, t) = rest.split_at_mut(body);
        let body_off = off + head as u64;
        self.read_cached(off, h)?;
        self.write_back_range(body_off, body)?;
        self.dev_read(body_off, b)?;
        self.read_cached(body_off + body as u64, t)
    }

    fn write_at(&mut self, off: u64, data: &[u8]) -> Result<(), HwError> {
        self.check_range(off, data.len())?;
        if data.len() < self.line {
            return self.write_cached(off, data);
        }
        let (head, body) = self.split(off, data.len());
        let (h, rest) = data.split_at(head);
        let (b, t) = rest.split_at(body);
        let body_off = off + head as u64;
        self.write_cached(off, h)?;
        // Keep cached lines coherent with the direct write: drop the ones it
        // covers, patch the ones it overlaps (their dirty state stands).
        let body_end = body_off + body as u64;
        let line = self.line as u64;
        self.lines.retain(|l| {
            let start = l.index * line;
            !(start >= body_off && start + l.data.len() as u64 <= body_end)
        });
        for l in &mut self.lines {
            let (ls, le) = (l.index * line, l.index * line + l.data.len() as u64);
            let (s, e) = (ls.max(body_off), le.min(body_end));
            if s < e {
                l.data[(s - ls) as usize..(e - ls) as usize]
                    .copy_from_slice(&b[(s - body_off) as usize..(e - body_off) as usize]);
            }
        }
        self.dev_write(body_off, b)?;
        self.write_cached(body_end, t)
    }

    /// Write back dirty lines overlapping `[off, off+len)`.
    fn write_back_range(&mut self, off: u64, len: usize) -> Result<(), HwError> {
        let end = off + len as u64;
        let line = self.line as u64;
        for slot in 0..self.lines.len() {
            let start = self.lines[slot].index * line;
            let stop = start + self.lines[slot].data.len() as u64;
            if self.lines[slot].dirty && start < end && off < stop {
                self.write_back(slot)?;
            }
        }
        Ok(())
    }

    fn write_back(&mut self, slot: usize) -> Result<(), HwError> {
        let at = self.lines[slot].index * self.line as u64;
        let data = core::mem::take(&mut self.lines[slot].data);
        let written = self.dev_write(at, &data);
        self.lines[slot].data = data;
        written?;
        self.lines[slot].dirty = false;
        Ok(())
    }

    /// Drop every line, dirty ones too: what they hold never reaches the device.
    fn discard(&mut self) {
        self.lines.clear();
    }

    /// Write back every dirty line, in medium order.
    fn write_back_all(&mut self) -> Result<(), HwError> {
        let mut dirty: Vec<usize> = (0..self.lines.len())
            .filter(|&s| self.lines[s].dirty)
            .collect();
        dirty.sort_unstable_by_key(|&s| self.lines[s].index);
        for slot in dirty {
            self.write_back(slot)?;
        }
        Ok(())
    }
}

type Shared<'d, D> = Rc<RefCell<Cache<'d, D>>>;

fn busy() -> DevError {
    DevError(HwError::Io(String::from(
        "the medium cache is already in use (re-entrant access)",
    )))
}

/// The positioned byte stream `lamfat` mounts: a cursor over the shared cache.
struct Disk<'d, D: BlockDevice + ?Sized> {
    cache: Shared<'d, D>,
    pos: u64,
}

impl<D: BlockDevice + ?Sized> IoBase for Disk<'_, D> {
    type Error = DevError;
}

impl<D: BlockDevice + ?Sized> Read for Disk<'_, D> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, DevError> {
        let mut c = self.cache.try_borrow_mut().map_err(|_| busy())?;
        let n = c.size.saturating_sub(self.pos).min(buf.len() as u64) as usize;
        c.read_at(self.pos, &mut buf[..n]).map_err(DevError)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<D: BlockDevice + ?Sized> Write for Disk<'_, D> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, DevError> {
        let mut c = self.cache.try_borrow_mut().map_err(|_| busy())?;
        c.write_at(self.pos, buf).map_err(DevError)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), DevError> {
        let mut c = self.cache.try_borrow_mut().map_err(|_| busy())?;
        c.write_back_all().map_err(DevError)
    }
}

impl<D: BlockDevice + ?Sized> Seek for Disk<'_, D> {
    fn seek(&mut self, pos: SeekFrom) -> Result<u64, DevError> {
        let size = self.cache.try_borrow().map_err(|_| busy())?.size;
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or(DevError(HwError::OutOfRange))?;
        Ok(self.pos)
    }
}

type Fs<'d, D> = lamfat::FileSystem<Disk<'d, D>, NullTimeProvider, LossyOemCpConverter>;
type FatDir<'a, 'd, D> = lamfat::Dir<'a, Disk<'d, D>, NullTimeProvider, LossyOemCpConverter>;
type FatFile<'a, 'd, D> = lamfat::File<'a, Disk<'d, D>, NullTimeProvider, LossyOemCpConverter>;

/// A FAT32 volume on a block device, as a [`Store`]. Call
/// [`unmount`](Self::unmount) when done: dropping it instead discards
/// changes still in the cache, as a power cut would.
pub struct FatFiles<'d, D: BlockDevice + ?Sized> {
    fs: Fs<'d, D>,
    cache: Shared<'d, D>,
    /// FAT32 layout for the direct read path (`None`: lamfat does it all).
    geo: Option<fatmap::Geometry>,
    /// Cluster maps of recently read files (dropped when lamfat changes them).
    maps: MapCache,
    /// Directories whose chains were checked (`fatmap::check_dirs`).
    sound_dirs: alloc::collections::BTreeMap<String, u32>,
    /// What mount put right on a volume left mid-write, or why it left it alone.
    after_cut: Option<Result<fatmap::Reclaimed, String>>,
}

/// `write(offset, data)` on the shared cache, for [`fatmap`].
fn cache_writer<'a, 'd, D: BlockDevice + ?Sized>(
    cache: &'a Shared<'d, D>,
) -> impl FnMut(u64, &[u8]) -> Result<(), StoreError> + use<'a, 'd, D> {
    move |off, data| {
        cache
            .try_borrow_mut()
            .map_err(|_| fat_err("medium", lamfat::Error::Io(busy())))?
            .write_at(off, data)
            .map_err(|e| hw_err("medium", e))
    }
}

/// Put right what a cut writer left on a volume whose dirty flag is set ([`fatmap::reclaim`]),
/// clear the flag and make it durable, before `lamfat` mounts it. `None`: the device refuses
/// writes (a sealed medium): left as it is, nothing of the repair kept in the cache.
fn repair_cut<D: BlockDevice + ?Sized>(
    cache: &Shared<'_, D>,
    geo: &fatmap::Geometry,
) -> Result<Option<Result<fatmap::Reclaimed, String>>, StoreError> {
    let done =
        fatmap::reclaim(geo, &mut cache_reader(cache), &mut cache_writer(cache)).and_then(|done| {
            if done.is_ok() {
                let mut b = [0u8; 1];
                cache_reader(cache)(DIRTY_BYTE, &mut b)?;
                b[0] &= !1;
                cache_writer(cache)(DIRTY_BYTE, &b)?;
                sync_cache(cache, "mount")?;
            }
            Ok(done)
        });
    match done {
        Err(StoreError::ReadOnly) => {
            cache
                .try_borrow_mut()
                .map_err(|_| fat_err("mount", lamfat::Error::Io(busy())))?
                .discard();
            Ok(None)
        }
        other => other.map(Some),
    }
}

/// `read(offset, buf)` on the shared cache, for [`fatmap`].
fn cache_reader<'a, 'd, D: BlockDevice + ?Sized>(
    cache: &'a Shared<'d, D>,
) -> impl FnMut(u64, &mut [u8]) -> Result<(), StoreError> + use<'a, 'd, D> {
    move |off, buf| {
        cache
            .try_borrow_mut()
            .map_err(|_| fat_err("medium", lamfat::Error::Io(busy())))?
            .read_at(off, buf)
            .map_err(|e| hw_err("medium", e))
    }
}

fn fat_err(path: &str, e: lamfat::Error<DevError>) -> StoreError {
    match e {
        lamfat::Error::NotFound => StoreError::NotFound,
        lamfat::Error::NotEnoughSpace | lamfat::Error::Io(DevError(HwError::Full)) => {
            StoreError::NoSpace
        }
        lamfat::Error::Io(DevError(HwError::WriteProtected)) => StoreError::ReadOnly,
        other => StoreError::Io(format!("{path}: {other}")),
    }
}

fn hw_err(what: &str, e: HwError) -> StoreError {
    fat_err(what, lamfat::Error::Io(DevError(e)))
}

/// Append `count` zero bytes at the file's current position.
fn zero_fill<D: BlockDevice + ?Sized>(
    f: &mut FatFile<'_, '_, D>,
    path: &str,
    count: u64,
) -> Result<(), StoreError> {
    let zeros = [0u8; ZERO_FILL];
    let mut left = count;
    while left > 0 {
        let n = left.min(ZERO_FILL as u64) as usize;
        f.write_all(&zeros[..n]).map_err(|e| fat_err(path, e))?;
        left -= n as u64;
    }
    Ok(())
}

impl<'d, D: BlockDevice + ?Sized> FatFiles<'d, D> {
    /// Mount the FAT32 volume on `dev` (the whole device, no partition
    /// table, as `mgear medium format` makes it) with the default cache.
    pub fn mount(dev: &'d mut D) -> Result<Self, StoreError> {
        Self::mount_with_cache(dev, DEFAULT_CACHE_LINES)
    }

    /// [`mount`](Self::mount) with `lines` cache lines of 4 KiB.
    pub fn mount_with_cache(dev: &'d mut D, lines: usize) -> Result<Self, StoreError> {
        let cache = Rc::new(RefCell::new(
            Cache::new(dev, lines).map_err(|e| hw_err("mount", e))?,
        ));
        let after_cut = {
            // lamfat's FAT arithmetic is 32-bit: refuse a FAT it would overflow on.
            let mut head = [0u8; 512];
            let mut read = cache_reader(&cache);
            read(0, &mut head)?;
            fatmap::check_boot(&mut read)?;
            match fatmap::Geometry::parse(&head) {
                Some(geo) if head[DIRTY_BYTE as usize] & 1 != 0 => repair_cut(&cache, &geo)?,
                _ => None,
            }
        };
        let disk = Disk {
            cache: Rc::clone(&cache),
            pos: 0,
        };
        let opts = lamfat::FsOptions::new().time_provider(NullTimeProvider::new());
        let fs = lamfat::FileSystem::new(disk, opts).map_err(|e| match e {
            lamfat::Error::Io(DevError(hw)) => hw_err("mount", hw),
            other => StoreError::Io(format!(
                "the medium does not hold a FAT32 file system ({other}); create one with `mgear medium format fat:PATH`"
            )),
        })?;
        let mut boot = [0u8; 512];
        {
            let mut read = cache_reader(&cache);
            read(0, &mut boot)?;
        }
        Ok(FatFiles {
            fs,
            cache,
            geo: fatmap::Geometry::parse(&boot),
            maps: MapCache::new(),
            sound_dirs: Default::default(),
            after_cut,
        })
    }

    /// What mounting put right on a volume left mid-write (its dirty flag set), or the
    /// damage it met there and left alone (`Err`: nothing written); `None` when the volume
    /// was not left mid-write or the device refuses writes.
    pub fn after_cut(&self) -> Option<&Result<fatmap::Reclaimed, String>> {
        self.after_cut.as_ref()
    }

    /// The cluster map of file `path` (cached), `None` if it does not exist.
    fn map(&mut self, path: &str) -> Result<Option<&mut FileMap>, StoreError> {
        self.maps
            .get_or_lookup(self.geo.as_ref(), &mut cache_reader(&self.cache), path)
    }

    /// Refuse a directory chain that loops in `dir` or above it before
    /// `lamfat` walks them: it would never stop, and the appliance would
    /// hang at arrival (`fatmap::check_dirs`). FAT32 only, as the maps.
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

    /// Write back everything, clear the volume's dirty flag if it was set
    /// here, and make it durable on the device.
    pub fn unmount(self) -> Result<(), StoreError> {
        let FatFiles { fs, cache, .. } = self;
        fs.unmount().map_err(|e| fat_err("unmount", e))?;
        sync_cache(&cache, "unmount")
    }

    fn dir(&self, path: &str) -> Result<FatDir<'_, 'd, D>, StoreError> {
        check_path(path)?;
        if path.is_empty() {
            Ok(self.fs.root_dir())
        } else {
            self.fs
                .root_dir()
                .open_dir(path)
                .map_err(|e| fat_err(path, e))
        }
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
            let file_name = e.file_name();
            if file_name.eq_ignore_ascii_case(name) {
                return Ok(Some(Entry {
                    kind: if e.is_dir() {
                        EntryKind::Dir
                    } else {
                        EntryKind::File
                    },
                    len: e.len(),
                    name: file_name,
                }));
            }
        }
        Ok(None)
    }

    fn open_rw(&self, path: &str) -> Result<FatFile<'_, 'd, D>, StoreError> {
        check_path(path)?;
        self.fs
            .root_dir()
            .create_file(path)
            .map_err(|e| fat_err(path, e))
    }
}

fn sync_cache<D: BlockDevice + ?Sized>(
    cache: &Shared<'_, D>,
    what: &str,
) -> Result<(), StoreError> {
    let mut c = cache
        .try_borrow_mut()
        .map_err(|_| fat_err(what, lamfat::Error::Io(busy())))?;
    c.write_back_all().map_err(|e| hw_err(what, e))?;
    c.dev.flush().map_err(|e| hw_err(what, e))
}

impl<D: BlockDevice + ?Sized> Store for FatFiles<'_, D> {
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
            let is_dir = e.is_dir();
            out.push(Entry {
                kind: if is_dir {
                    EntryKind::Dir
                } else {
                    EntryKind::File
                },
                len: if is_dir { 0 } else { e.len() },
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
            Some(_) => Err(StoreError::Io(format!("{path} is a directory"))),
            None => Ok(None),
        }
    }

    fn read_at(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError> {
        check_path(path)?;
        if let Some(geo) = self.geo.clone() {
            // One device request per contiguous run (in `max_transfer`
            // pieces) instead of lamfat's chain walk and per-cluster reads.
            let cache = Rc::clone(&self.cache);
            let Some(map) = self.map(path)? else {
                return Err(StoreError::NotFound);
            };
            return map.read(&geo, &mut cache_reader(&cache), path, offset, buf);
        }
        let mut f = self
            .fs
            .root_dir()
            .open_file(path)
            .map_err(|e| fat_err(path, e))?;
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
        self.maps.forget(path);
        self.check_dirs(split_parent(path).0)?;
        let mut f = self.open_rw(path)?;
        let size = f.seek(SeekFrom::End(0)).map_err(|e| fat_err(path, e))?;
        if offset > size {
            // lamfat clamps seeks to the file size: fill the gap explicitly.
            zero_fill(&mut f, path, offset - size)?;
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
            zero_fill(&mut f, path, len - size)?;
        }
        f.flush().map_err(|e| fat_err(path, e))
    }

    fn create_dir_all(&mut self, path: &str) -> Result<(), StoreError> {
        check_path(path)?;
        self.check_dirs(path)?;
        let mut dir = self.fs.root_dir();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            dir = match dir.open_dir(part) {
                Ok(d) => d,
                Err(lamfat::Error::NotFound) => {
                    dir.create_dir(part).map_err(|e| fat_err(path, e))?
                }
                Err(e) => return Err(fat_err(path, e)),
            };
        }
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), StoreError> {
        check_path(from)?;
        check_path(to)?;
        if from.eq_ignore_ascii_case(to) {
            // Same entry on FAT: removing `to` first would delete the file.
            return if self.entry(from)?.is_some() {
                Ok(())
            } else {
                Err(StoreError::NotFound)
            };
        }
        self.check_dirs(split_parent(from).0)?;
        self.check_dirs(split_parent(to).0)?;
        self.maps.clear();
        self.sound_dirs.clear();
        let root = self.fs.root_dir();
        match root.remove(to) {
            Ok(()) | Err(lamfat::Error::NotFound) => {}
            Err(e) => return Err(fat_err(to, e)),
        }
        root.rename(from, &root, to).map_err(|e| fat_err(from, e))
    }

    fn remove_file(&mut self, path: &str) -> Result<(), StoreError> {
        check_path(path)?;
        // The path itself too: an empty directory is removed here, after lamfat read it.
        self.check_dirs(path)?;
        self.maps.clear();
        self.sound_dirs.clear();
        match self.fs.root_dir().remove(path) {
            Ok(()) | Err(lamfat::Error::NotFound) => Ok(()),
            Err(e) => Err(fat_err(path, e)),
        }
    }

    fn sync(&mut self, path: &str) -> Result<(), StoreError> {
        check_path(path)?;
        // Directory entries were written by every write's flush; push the
        // cache out and make the device durable.
        sync_cache(&self.cache, path)
    }

    /// When the FSInfo sector holds no free-cluster count, `lamfat` counts
    /// the FAT and stores the count at unmount: the one read here that can
    /// write (the core never calls it on a sealed medium).
    fn free_space(&mut self) -> Result<Option<u64>, StoreError> {
        let st = self.fs.stats().map_err(|e| fat_err("free space", e))?;
        Ok(Some(
            u64::from(st.free_clusters()) * u64::from(st.cluster_size()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use image_format::store::fat::{FatStore, FormatOptions, MIN_FAT32_BYTES};
    use mgear_firmware::testing::MemDisk;

    /// A RAM medium that records its largest transfer and can refuse writes.
    struct Probe {
        disk: MemDisk,
        max_transfer: usize,
        largest: usize,
        protected: bool,
    }

    impl Probe {
        fn new(disk: MemDisk) -> Self {
            Probe {
                disk,
                max_transfer: 64 * 1024,
                largest: 0,
                protected: false,
            }
        }
    }

    impl BlockDevice for Probe {
        fn block_size(&self) -> usize {
            self.disk.block_size()
        }
        fn block_count(&self) -> u64 {
            self.disk.block_count()
        }
        fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), HwError> {
            self.largest = self.largest.max(buf.len());
            self.disk.read_blocks(lba, buf)
        }
        fn write_blocks(&mut self, lba: u64, data: &[u8]) -> Result<(), HwError> {
            if self.protected {
                return Err(HwError::WriteProtected);
            }
            self.largest = self.largest.max(data.len());
            self.disk.write_blocks(lba, data)
        }
        fn flush(&mut self) -> Result<(), HwError> {
            self.disk.flush()
        }
        fn max_transfer(&self) -> usize {
            self.max_transfer
        }
    }

    fn open_rw(p: &Path) -> std::fs::File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .unwrap()
    }

    /// A fresh FAT32 image made by the host's FatStore (as `mgear medium format` does).
    fn formatted(bytes: u64) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("medium.img");
        std::fs::File::create(&p).unwrap().set_len(bytes).unwrap();
        FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
        (tmp, p)
    }

    fn disk_of(p: &Path) -> MemDisk {
        MemDisk {
            data: std::fs::read(p).unwrap(),
            ..MemDisk::new(0)
        }
    }

    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed) as u8)
            .collect()
    }

    /// Every file under `dir` with its content, walking with `list`/`read_at`.
    fn walk(s: &mut dyn Store, dir: &str, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in s.list(dir).unwrap() {
            let path = if dir.is_empty() {
                e.name.clone()
            } else {
                format!("{dir}/{}", e.name)
            };
            match e.kind {
                EntryKind::Dir => {
                    out.insert(format!("{path}/"), Vec::new());
                    walk(s, &path, out);
                }
                EntryKind::File => {
                    assert_eq!(s.len(&path).unwrap(), Some(e.len), "{path}");
                    let mut data = vec![0u8; e.len as usize];
                    s.read_exact_at(&path, 0, &mut data).unwrap();
                    let mut past = [0u8; 4];
                    assert_eq!(s.read_at(&path, e.len, &mut past).unwrap(), 0);
                    out.insert(path, data);
                }
            }
        }
    }

    fn fsck_clean(p: &Path) {
        let out = Command::new("fsck.fat")
            .arg("-n")
            .arg(p)
            .output()
            .expect("fsck.fat from dosfstools (./test.sh installs it)");
        assert!(
            out.status.success(),
            "fsck.fat: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A volume holding `MGEAR/F` whose last writer was cut off: its dirty flag set and a
    /// cluster taken in the first FAT only, no file holding it (what a write-back cut between
    /// the two FAT copies leaves).
    fn left_mid_write() -> (tempfile::TempDir, PathBuf) {
        let (t, p) = formatted(MIN_FAT32_BYTES + (4 << 20));
        let mut host = FatStore::open(open_rw(&p)).unwrap();
        host.create_dir_all("MGEAR").unwrap();
        host.write_at("MGEAR/F", 0, &pattern(3000, 5)).unwrap();
        host.unmount().unwrap();
        let mut img = std::fs::read(&p).unwrap();
        let geo = fatmap::Geometry::parse(&img[..512]).unwrap();
        img[DIRTY_BYTE as usize] |= 1;
        let leaked = u64::from(geo.cluster_count) + 1;
        let at = (geo.fat_offset + leaked * 4) as usize;
        img[at..at + 4].copy_from_slice(&0x0FFF_FFFFu32.to_le_bytes());
        std::fs::write(&p, &img).unwrap();
        (t, p)
    }

    /// The board mounting a volume left mid-write puts it right first (the host's repair,
    /// shared), then writes on top: `fsck.fat -n` passes and the dirty flag is gone. It wrote
    /// its seal on top of the leftovers, and the shipment failed `fsck.fat -n`.
    #[test]
    fn a_volume_left_mid_write_is_put_right_at_mount() {
        let (_t, p) = left_mid_write();
        assert!(Command::new("fsck.fat")
            .arg("-n")
            .arg(&p)
            .status()
            .is_ok_and(|s| !s.success()));
        let mut dev = disk_of(&p);
        let mut fs = FatFiles::mount(&mut dev).unwrap();
        let done = fs.after_cut().unwrap().as_ref().unwrap();
        assert_eq!(done.clusters_freed, 1, "{done:?}");
        fs.write_at("MGEAR/ATTEST", 0, b"seal").unwrap();
        let mut back = vec![0u8; 3000];
        fs.read_exact_at("MGEAR/F", 0, &mut back).unwrap();
        assert_eq!(back, pattern(3000, 5));
        fs.unmount().unwrap();
        assert_eq!(dev.data[DIRTY_BYTE as usize] & 1, 0, "the dirty flag stays");
        std::fs::write(&p, &dev.data).unwrap();
        fsck_clean(&p);
        // A clean volume mounts without a repair.
        let mut dev = disk_of(&p);
        let fs = FatFiles::mount(&mut dev).unwrap();
        assert!(fs.after_cut().is_none());
        fs.unmount().unwrap();
        assert!(
            dev.data == std::fs::read(&p).unwrap(),
            "a clean mount wrote"
        );
    }

    /// On a medium that refuses writes (sealed), a volume left mid-write mounts and reads as it
    /// is: nothing of the repair is written or kept in the cache.
    #[test]
    fn a_volume_left_mid_write_on_a_protected_medium_is_left_as_it_is() {
        let (_t, p) = left_mid_write();
        let mut dev = Probe::new(disk_of(&p));
        dev.protected = true;
        let before = dev.disk.data.clone();
        let mut fs = FatFiles::mount(&mut dev).unwrap();
        assert!(fs.after_cut().is_none());
        let mut back = vec![0u8; 3000];
        fs.read_exact_at("MGEAR/F", 0, &mut back).unwrap();
        assert_eq!(back, pattern(3000, 5));
        fs.unmount().unwrap();
        assert!(dev.disk.data == before, "a protected medium changed");
    }

    const SEG: &str = "MGEAR/web01/G0001/SEG-00000";
    const LONG: &str = "MGEAR/web01/a much longer name than eight dot three.json";

    #[test]
    fn reads_what_the_host_fatstore_wrote_byte_for_byte() {
        let (_t, p) = formatted(MIN_FAT32_BYTES + (4 << 20));
        {
            let mut host = FatStore::open(open_rw(&p)).unwrap();
            host.create_dir_all("MGEAR/web01/G0001").unwrap();
            host.create_dir_all("MGEAR/db02").unwrap();
            host.write_at(SEG, 0, &pattern(700_001, 1)).unwrap();
            host.write_at("MGEAR/web01/G0001/JRNL-A", 0, &pattern(333, 2))
                .unwrap();
            host.write_at("MGEAR/web01/KEYS", 0, &pattern(4096, 3))
                .unwrap();
            host.write_at(LONG, 0, &pattern(5000, 4)).unwrap();
            host.set_len("MGEAR/db02/EMPTY", 0).unwrap();
            host.unmount().unwrap();
        }
        let mut expected = BTreeMap::new();
        let mut host = FatStore::open(open_rw(&p)).unwrap();
        walk(&mut host, "", &mut expected);
        assert_eq!(expected[SEG], pattern(700_001, 1));
        assert_eq!(expected[LONG], pattern(5000, 4));

        let mut dev = disk_of(&p);
        let before = dev.data.clone();
        let mut ours = FatFiles::mount(&mut dev).unwrap();
        let mut seen = BTreeMap::new();
        walk(&mut ours, "", &mut seen);
        assert_eq!(seen, expected);
        for dir in [
            "",
            "MGEAR",
            "MGEAR/web01",
            "MGEAR/web01/G0001",
            "MGEAR/db02",
        ] {
            assert_eq!(ours.list(dir).unwrap(), host.list(dir).unwrap(), "{dir}");
        }
        // Positioned reads across cluster and cache-line boundaries.
        for (off, len) in [(0u64, 1usize), (511, 2), (4095, 9000), (699_000, 5000)] {
            let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
            let na = ours.read_at(SEG, off, &mut a).unwrap();
            let nb = host.read_at(SEG, off, &mut b).unwrap();
            assert_eq!((na, &a[..na]), (nb, &b[..nb]), "read at {off}+{len}");
        }
        // Lookups are case-insensitive, as on the host.
        assert_eq!(ours.len("mgear/WEB01/keys").unwrap(), Some(4096));
        assert_eq!(ours.len("MGEAR/nope").unwrap(), None);
        assert_eq!(ours.list("MGEAR/nope"), Err(StoreError::NotFound));
        assert!(
            ours.len("MGEAR/web01").is_err(),
            "a directory has no length"
        );
        assert!(ours.read_at("../x", 0, &mut [0u8; 1]).is_err());
        ours.unmount().unwrap();
        assert!(dev.data == before, "a read-only walk changed the medium");
        assert_eq!(dev.writes, 0);
        let mut ours = FatFiles::mount(&mut dev).unwrap();
        assert_eq!(ours.free_space().unwrap(), host.free_space().unwrap());
    }

    /// A directory chain that loops (no end-of-directory entry in it):
    /// lamfat would walk it for ever and the appliance would hang at
    /// arrival; every walk of it is refused, naming the damage, and the
    /// rest of the medium stays readable.
    #[test]
    fn a_directory_chain_that_loops_is_refused_not_walked_for_ever() {
        let (_t, p) = formatted(MIN_FAT32_BYTES + (4 << 20));
        {
            let mut host = FatStore::open(open_rw(&p)).unwrap();
            host.create_dir_all("MGEAR/web01").unwrap();
            host.write_at("MGEAR/web01/KEYS", 0, b"keys").unwrap();
            host.write_at("OTHER", 0, b"kept").unwrap();
            host.unmount().unwrap();
        }
        image_format::store::fat::testing::loop_top_directory(&p, b"MGEAR      ").unwrap();
        let mut dev = disk_of(&p);
        let mut ours = FatFiles::mount(&mut dev).unwrap();
        for e in [
            ours.list("MGEAR").err(),
            ours.len("MGEAR/web01/KEYS").err(),
            ours.read_at("MGEAR/web01/KEYS", 0, &mut [0u8; 4]).err(),
            ours.write_at("MGEAR/web01/NEW", 0, b"x").err(),
        ] {
            let e = e.expect("refused").to_string();
            assert!(e.contains("loops"), "{e}");
        }
        assert_eq!(ours.len("OTHER").unwrap(), Some(4));
    }

    /// A sparse image file as a 512-byte-block device (a 4 TiB medium
    /// does not fit in a `MemDisk`).
    struct FileDisk(std::fs::File, u64);

    impl BlockDevice for FileDisk {
        fn block_size(&self) -> usize {
            512
        }
        fn block_count(&self) -> u64 {
            self.1 / 512
        }
        fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), HwError> {
            use std::os::unix::fs::FileExt;
            self.0
                .read_exact_at(buf, lba * 512)
                .map_err(|e| HwError::Io(e.to_string()))
        }
        fn write_blocks(&mut self, lba: u64, data: &[u8]) -> Result<(), HwError> {
            use std::os::unix::fs::FileExt;
            self.0
                .write_all_at(data, lba * 512)
                .map_err(|e| HwError::Io(e.to_string()))
        }
        fn flush(&mut self) -> Result<(), HwError> {
            self.0.sync_data().map_err(|e| HwError::Io(e.to_string()))
        }
    }

    /// Both engines on a 4 TiB medium (4096-byte sectors, 64 KiB clusters,
    /// as `mgear medium format` lays out media over 2 TiB): each reads what
    /// the other wrote, and fsck.fat finds the result clean.
    #[test]
    fn four_tib_medium_with_4k_sectors_works_both_ways() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("big.img");
        let size = 4u64 << 40;
        std::fs::File::create(&p).unwrap().set_len(size).unwrap();
        let opts = FormatOptions {
            device_is_zeroed: true,
            ..FormatOptions::default()
        };
        let made = FatStore::format(open_rw(&p), &opts).unwrap();
        assert_eq!((made.sector_bytes, made.cluster_bytes), (4096, 65536));
        {
            let mut host = FatStore::open(open_rw(&p)).unwrap();
            host.create_dir_all("MGEAR/web01/G0001").unwrap();
            host.write_at(SEG, 0, &pattern(300_001, 7)).unwrap();
            host.write_at(LONG, 0, &pattern(70_000, 8)).unwrap();
            host.unmount().unwrap();
        }
        let mut dev = FileDisk(open_rw(&p), size);
        {
            let mut ours = FatFiles::mount(&mut dev).unwrap();
            let mut seen = BTreeMap::new();
            walk(&mut ours, "", &mut seen);
            assert_eq!(seen[SEG], pattern(300_001, 7));
            assert_eq!(seen[LONG], pattern(70_000, 8));
            ours.write_at("MGEAR/web01/G0001/JRNL-A", 0, &pattern(200_000, 9))
                .unwrap();
            ours.write_at(SEG, 300_001, b"appended by the board")
                .unwrap();
            ours.unmount().unwrap();
        }
        let mut host = FatStore::open_read_only(open_rw(&p)).unwrap();
        let mut j = vec![0u8; 200_000];
        host.read_exact_at("MGEAR/web01/G0001/JRNL-A", 0, &mut j)
            .unwrap();
        assert_eq!(j, pattern(200_000, 9));
        let mut tail = [0u8; 21];
        host.read_exact_at(SEG, 300_001, &mut tail).unwrap();
        assert_eq!(&tail, b"appended by the board");
        host.unmount().unwrap();
        fsck_clean(&p);
    }

    #[test]
    fn what_it_writes_the_host_reads_back_and_fsck_finds_clean() {
        let (_t, p) = formatted(MIN_FAT32_BYTES + (4 << 20));
        let mut dev = disk_of(&p);
        let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        {
            let mut s = FatFiles::mount(&mut dev).unwrap();
            s.create_dir_all("MGEAR/web01/G0001").unwrap();
            s.create_dir_all("MGEAR/web01/G0001").unwrap();
            let seg = pattern(1_500_000, 5);
            s.write_at(SEG, 0, &seg).unwrap();
            s.write_at(SEG, 1_500_000, b"tail").unwrap();
            s.write_at(SEG, 10, b"patched").unwrap();
            let mut seg_model = seg.clone();
            seg_model.extend_from_slice(b"tail");
            seg_model[10..17].copy_from_slice(b"patched");
            model.insert(SEG.into(), seg_model);

            // A write past the end fills the gap with zeros.
            s.write_at("MGEAR/web01/GAP", 3000, b"after a gap").unwrap();
            let mut gap = vec![0u8; 3000];
            gap.extend_from_slice(b"after a gap");
            model.insert("MGEAR/web01/GAP".into(), gap);

            // set_len shrinks and grows with zeros.
            s.write_at("MGEAR/web01/SIZED", 0, &pattern(9000, 6))
                .unwrap();
            s.set_len("MGEAR/web01/SIZED", 100).unwrap();
            s.set_len("MGEAR/web01/SIZED", 5000).unwrap();
            let mut sized = pattern(100, 6);
            sized.resize(5000, 0);
            model.insert("MGEAR/web01/SIZED".into(), sized);
            s.set_len("MGEAR/web01/G0001/IDX-00000", 0).unwrap();
            model.insert("MGEAR/web01/G0001/IDX-00000".into(), Vec::new());

            // Long names, rename, rename over an existing file, remove.
            s.write_at(LONG, 0, b"long name").unwrap();
            model.insert(LONG.into(), b"long name".to_vec());
            s.write_at("MGEAR/web01/G0001/JRNL-A", 0, b"one").unwrap();
            s.rename("MGEAR/web01/G0001/JRNL-A", "MGEAR/web01/G0001/JRNL-B")
                .unwrap();
            s.write_at("MGEAR/web01/G0001/JRNL-A", 0, b"two").unwrap();
            s.rename("MGEAR/web01/G0001/JRNL-A", "MGEAR/web01/G0001/JRNL-B")
                .unwrap();
            s.rename("MGEAR/web01/G0001/JRNL-B", "MGEAR/web01/G0001/jrnl-b")
                .unwrap();
            assert_eq!(s.len("MGEAR/web01/G0001/JRNL-A").unwrap(), None);
            model.insert("MGEAR/web01/G0001/JRNL-B".into(), b"two".to_vec());
            s.write_at("MGEAR/web01/KEYS", 0, &[7u8; 600]).unwrap();
            s.remove_file("MGEAR/web01/KEYS").unwrap();
            s.remove_file("MGEAR/web01/KEYS").unwrap();
            assert_eq!(
                s.rename("MGEAR/web01/NOPE", "MGEAR/web01/X"),
                Err(StoreError::NotFound)
            );
            s.sync(SEG).unwrap();

            let mut seen = BTreeMap::new();
            walk(&mut s, "", &mut seen);
            seen.retain(|k, _| !k.ends_with('/'));
            assert_eq!(seen, model, "read back before unmount");
            s.unmount().unwrap();
        }
        std::fs::write(&p, &dev.data).unwrap();
        fsck_clean(&p);

        let mut host = FatStore::open(open_rw(&p)).unwrap();
        let mut seen = BTreeMap::new();
        walk(&mut host, "", &mut seen);
        seen.retain(|k, _| !k.ends_with('/'));
        assert_eq!(seen, model, "read back by the host's FatStore");
        let names: Vec<String> = host
            .list("MGEAR/web01")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(
            names,
            [
                "G0001",
                "GAP",
                "SIZED",
                "a much longer name than eight dot three.json"
            ]
        );
    }

    #[test]
    fn full_medium_reports_no_space_and_protected_medium_read_only() {
        let (_t, p) = formatted(MIN_FAT32_BYTES);
        let mut dev = Probe::new(disk_of(&p));
        {
            let mut s = FatFiles::mount(&mut dev).unwrap();
            let chunk = vec![0xa5u8; 1 << 20];
            let err = (0..64u64)
                .map(|i| s.write_at("BIG", i << 20, &chunk))
                .find_map(Result::err);
            assert_eq!(err, Some(StoreError::NoSpace));
            s.remove_file("BIG").unwrap();
            s.write_at("SMALL", 0, b"kept").unwrap();
            s.unmount().unwrap();
        }
        dev.protected = true;
        let before = dev.disk.data.clone();
        let mut s = FatFiles::mount(&mut dev).unwrap();
        let mut b = [0u8; 4];
        s.read_exact_at("SMALL", 0, &mut b).unwrap();
        assert_eq!(&b, b"kept");
        assert_eq!(s.write_at("SMALL", 0, b"gone"), Err(StoreError::ReadOnly));
        drop(s);
        assert!(dev.disk.data == before, "a protected medium changed");
    }

    #[test]
    fn not_fat_or_odd_blocks_is_a_clear_error() {
        let mut dev = MemDisk::new(40 << 20);
        let e = FatFiles::mount(&mut dev).err().unwrap();
        assert!(e.to_string().contains("mgear medium format"), "{e}");
        dev.block_size = 520;
        let e = FatFiles::mount(&mut dev).err().unwrap();
        assert!(e.to_string().contains("power of two"), "{e}");
    }

    /// The cache against a flat model: small and bypassing, aligned and
    /// unaligned reads and writes, with a two-line cache forcing evictions
    /// and a device that takes at most 1 KiB per call.
    #[test]
    fn cache_is_coherent_and_splits_transfers() {
        let size = 256 * 1024;
        let mut dev = Probe::new(MemDisk::new(size));
        dev.max_transfer = 1024;
        let mut model = vec![0u8; size];
        let mut cache = Cache::new(&mut dev, 2).unwrap();
        let mut x = 0x1234_5678u64;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for round in 0..400u64 {
            let len = match next(4) {
                0 => 1 + next(40),
                1 => 1 + next(LINE_BYTES as u64),
                _ => LINE_BYTES as u64 + next(20_000),
            } as usize;
            let off = next((size - len) as u64);
            if next(2) == 0 {
                let data = pattern(len, round as u32);
                cache.write_at(off, &data).unwrap();
                model[off as usize..off as usize + len].copy_from_slice(&data);
            } else {
                let mut buf = vec![0u8; len];
                cache.read_at(off, &mut buf).unwrap();
                assert_eq!(
                    buf,
                    &model[off as usize..off as usize + len],
                    "round {round}"
                );
            }
        }
        assert_eq!(
            cache.read_at(size as u64 - 1, &mut [0u8; 2]),
            Err(HwError::OutOfRange)
        );
        cache.write_back_all().unwrap();
        drop(cache);
        assert!(dev.disk.data == model, "device differs after write-back");
        assert!(dev.largest <= 1024, "a transfer of {} bytes", dev.largest);
    }
}
