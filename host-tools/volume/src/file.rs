//! Raw image files and block devices.
//!
//! - [`FileVolume`]: a sparse raw image, written as `NAME.partial` (created
//!   new, 0600, never through a symlink: it holds decrypted data) and
//!   renamed to `NAME` by [`finish`](crate::Volume::finish). An existing
//!   `NAME` is replaced only with `--force`. Zero ranges are punched out, so
//!   the file stays as thin as the disk.
//! - [`DeviceVolume`]: a block device (a cloud volume attached to this
//!   host). A marker in the state dir exists until the volume is verified,
//!   and the first `head_len` bytes are cleared when a new ingest starts, so
//!   whatever the device held before never looks bootable meanwhile. Zero
//!   ranges are written only where the device does not already read as zeros.
//! - [`FileVolume::open_in_place`]: an existing raw file or device written
//!   in place (`mgear serve` keeps such a volume in sync).
//!
//! Whole 4 KiB-aligned blocks are written and read with `O_DIRECT` (a second
//! descriptor of the same open file, reopened through `/proc/self/fd`, so no
//! path is looked up twice), through one reused aligned bounce buffer: the
//! bytes skip the page cache. Three reasons: the read-back check then reads
//! what the disk holds, not the page cache's copy of what was just written;
//! an ingest of terabytes does not push every other program's data out of
//! memory; and the kernel's copy into freshly allocated page-cache pages is
//! what an ingest spent most of its CPU on (on the 2-core VM of the
//! benchmarks, writing 1 GiB through the page cache cost `dd` 5-7
//! CPU-seconds, the copy into our warm bounce buffer a tenth of that).
//! Unaligned heads and tails, and file systems that refuse `O_DIRECT`
//! (tmpfs), take the buffered descriptor; the kernel keeps the two coherent
//! (a direct read or write first writes back and drops cached pages of its
//! range). `flush` still syncs: `O_DIRECT` bypasses the page cache, not the
//! device's cache, and block allocation in a sparse file is metadata. A
//! caller's buffer that is itself aligned skips the bounce buffer.
//!
//! The read-back check runs beside the writes through a [`RawReader`]
//! ([`Volume::concurrent_reader`]): a third descriptor, read-only and
//! `O_DIRECT`, with its own bounce buffer. It reads what the disk holds after
//! the writer's flush, and the pipeline compares those bytes with the
//! authenticated plaintext still in memory, instead of reading everything
//! again after the writes and hashing it with the keyed chunk id (a second
//! BLAKE3 pass over every byte). What goes buffered on its way back (an
//! unaligned tail, a file system without `O_DIRECT`) is first dropped from
//! the page cache (`POSIX_FADV_DONTNEED`: the flush left those pages clean),
//! so it too is read from where the file system keeps it.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::marker::Marker;
use crate::{key_of, Error, Finished, Found, Prepare, ReadAt, Result, Volume, VolumeReader};

/// Alignment of direct I/O: offsets, lengths and buffer addresses (a
/// multiple of every logical block size, 512 and 4096).
const ALIGN: usize = 4096;
/// Largest direct transfer, and so the bounce buffer's size.
const DIRECT_MAX: usize = 4 << 20;

/// The `O_DIRECT` descriptor of a [`Raw`] and its aligned bounce buffer.
#[derive(Debug)]
struct Direct {
    file: File,
    /// Over-allocated by [`ALIGN`]: the aligned window is found in it.
    bounce: Mutex<Vec<u8>>,
}

impl Direct {
    /// The same open file again with `O_DIRECT` (read-write, or read-only
    /// for a [`RawReader`]), or `None` where the file system refuses it.
    fn reopen(file: &File, write: bool) -> Option<Direct> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(nix::libc::O_DIRECT)
            .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .ok()?;
        Some(Direct {
            file,
            bounce: Mutex::new(Vec::new()),
        })
    }

    /// Whether a transfer of `len` bytes at `offset` can go direct.
    fn fits(offset: u64, len: usize) -> bool {
        len > 0 && offset.is_multiple_of(ALIGN as u64) && len.is_multiple_of(ALIGN)
    }

    /// Whether the caller's buffer itself may take a direct transfer (no
    /// bounce copy).
    fn aligned(buf: &[u8]) -> bool {
        (buf.as_ptr() as usize).is_multiple_of(ALIGN)
    }

    /// Runs `io` on aligned windows of at most [`DIRECT_MAX`] bytes covering
    /// `len` bytes from `offset`.
    fn each_window(
        &self,
        offset: u64,
        len: usize,
        mut io: impl FnMut(&File, &mut [u8], u64, usize) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut bounce = self
            .bounce
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if bounce.len() < DIRECT_MAX.min(len) + ALIGN {
            bounce.resize(DIRECT_MAX.min(len) + ALIGN, 0);
        }
        let start = bounce.as_ptr().align_offset(ALIGN);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(DIRECT_MAX);
            io(
                &self.file,
                &mut bounce[start..start + n],
                offset + done as u64,
                done,
            )?;
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if Self::aligned(data) {
            return self.file.write_all_at(data, offset);
        }
        self.each_window(offset, data.len(), |f, window, at, done| {
            window.copy_from_slice(&data[done..done + window.len()]);
            f.write_all_at(window, at)
        })
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if Self::aligned(buf) {
            return self.file.read_exact_at(buf, offset);
        }
        self.each_window(offset, buf.len(), |f, window, at, done| {
            f.read_exact_at(window, at)?;
            buf[done..done + window.len()].copy_from_slice(window);
            Ok(())
        })
    }
}

/// `pwritev` of all of `bufs` from `offset`, however many calls it takes
/// (at most `IOV_MAX` slices each).
fn write_all_vectored_at(file: &File, bufs: &[&[u8]], offset: u64) -> std::io::Result<()> {
    const IOV_MAX: usize = 1024;
    let mut slices: Vec<std::io::IoSlice<'_>> =
        bufs.iter().map(|b| std::io::IoSlice::new(b)).collect();
    let mut left: &mut [std::io::IoSlice<'_>] = &mut slices;
    let mut at = offset;
    while !left.is_empty() {
        let n = left.len().min(IOV_MAX);
        let off =
            i64::try_from(at).map_err(|_| std::io::Error::from_raw_os_error(nix::libc::EINVAL))?;
        let wrote = nix::sys::uio::pwritev(file.as_fd(), &left[..n], off)?;
        if wrote == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        at += wrote as u64;
        std::io::IoSlice::advance_slices(&mut left, wrote);
    }
    Ok(())
}

/// A batch's writes (its chunks, in disk order) to `raw`, each run of
/// adjacent ones, up to 16 MiB, as one [`Raw::write_run`].
fn write_runs(raw: &Raw, writes: &[crate::WriteAt<'_>]) -> Result<()> {
    const RUN_MAX: usize = 16 << 20;
    let mut i = 0;
    while i < writes.len() {
        let start = writes[i].offset;
        let mut run = vec![writes[i].data];
        let mut end = start + writes[i].data.len() as u64;
        i += 1;
        while let Some(w) = writes.get(i) {
            if w.offset != end || end - start + w.data.len() as u64 > RUN_MAX as u64 {
                break;
            }
            run.push(w.data);
            end += w.data.len() as u64;
            i += 1;
        }
        raw.write_run(start, &run)?;
    }
    Ok(())
}

/// An open raw file or device and how to zero a range of it.
#[derive(Debug)]
pub(crate) struct Raw {
    pub file: File,
    pub path: PathBuf,
    pub size: u64,
    /// A block device: zeroing writes (no holes), no `SEEK_DATA`.
    pub device: bool,
    /// Direct I/O for whole aligned blocks; see the module doc.
    direct: Option<Direct>,
}

impl Raw {
    /// Open an existing file or device read-write, never through a symlink.
    pub fn open(path: &Path) -> Result<Raw> {
        let mut file = image_format::private::open_existing(path).map_err(|e| {
            if image_format::private::is_symlink_refusal(&e) {
                Error::Usage(format!(
                    "{} is a symlink: refusing to write through it (someone may have planted \
                     it); remove it and run again",
                    path.display()
                ))
            } else {
                Error::io(format!("opening target {}", path.display()), e)
            }
        })?;
        let (size, device) = Self::from_file(&mut file, path)?;
        Ok(Raw::new(file, path, size, device))
    }

    fn new(file: File, path: &Path, size: u64, device: bool) -> Raw {
        Raw {
            direct: Direct::reopen(&file, true),
            file,
            path: path.to_owned(),
            size,
            device,
        }
    }

    fn from_file(file: &mut File, path: &Path) -> Result<(u64, bool)> {
        let device = file
            .metadata()
            .map_err(|e| Error::io(format!("target {}", path.display()), e))?
            .file_type()
            .is_block_device();
        // Seeking to the end answers for block devices as BLKGETSIZE64 does.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::io(format!("finding the size of {}", path.display()), e))?;
        Ok((size, device))
    }

    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        let direct = match &self.direct {
            // A file system may accept O_DIRECT at open and refuse a write
            // (EINVAL): the buffered descriptor writes it then.
            Some(d) if Direct::fits(offset, data.len()) => d.write_at(offset, data).or_else(|e| {
                if e.raw_os_error() == Some(nix::libc::EINVAL) {
                    self.file.write_all_at(data, offset)
                } else {
                    Err(e)
                }
            }),
            _ => self.file.write_all_at(data, offset),
        };
        direct.map_err(|e| {
            Error::io(
                format!("writing {} at byte {offset}", self.path.display()),
                e,
            )
        })
    }

    /// Writes `bufs` back to back from `offset`: a run of adjacent chunks
    /// as one vectored direct write where each is aligned (the kernel
    /// splits it into requests the device takes concurrently), else one
    /// write each. Why: chunk-sized direct writes reach the disk one at a
    /// time (queue depth one), a third slower than `dd`'s buffered copy.
    pub fn write_run(&self, offset: u64, bufs: &[&[u8]]) -> Result<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let vectored = bufs.len() > 1
            && Direct::fits(offset, total)
            && bufs
                .iter()
                .all(|b| Direct::aligned(b) && Direct::fits(0, b.len()));
        if let (Some(d), true) = (&self.direct, vectored) {
            match write_all_vectored_at(&d.file, bufs, offset) {
                Ok(()) => return Ok(()),
                // Refused as a whole (EINVAL: the file system will not take
                // this one direct): each piece takes the single-write path,
                // which knows the fallbacks. Rewriting a partly written run
                // writes the same bytes again.
                Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("writing {} at byte {offset}", self.path.display()),
                        e,
                    ))
                }
            }
        }
        let mut at = offset;
        for b in bufs {
            self.write_at(at, b)?;
            at += b.len() as u64;
        }
        Ok(())
    }

    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let read = match &self.direct {
            // Past the end of a file whose size is not block-aligned a direct
            // read comes up short: the buffered one reads the tail.
            Some(d) if Direct::fits(offset, buf.len()) => d
                .read_at(offset, buf)
                .or_else(|_| self.file.read_exact_at(buf, offset)),
            _ => self.file.read_exact_at(buf, offset),
        };
        read.map_err(|e| {
            Error::io(
                format!(
                    "reading {} bytes of {} at byte {offset}",
                    buf.len(),
                    self.path.display()
                ),
                e,
            )
        })
    }

    pub fn flush(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io(format!("syncing {}", self.path.display()), e))
    }

    /// Punch a hole (files), else write zeros where the range does not
    /// already read as zeros (devices, file systems without hole punching).
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        if !self.device && self.punch(offset, len) {
            return Ok(());
        }
        const STEP: u64 = 1 << 20;
        let mut buf = vec![0u8; STEP.min(len) as usize];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(STEP) as usize;
            self.read_at(offset + done, &mut buf[..n])?;
            if buf[..n].iter().any(|&b| b != 0) {
                buf[..n].fill(0);
                self.write_at(offset + done, &buf[..n])?;
            }
            done += n as u64;
        }
        Ok(())
    }

    fn punch(&self, offset: u64, len: u64) -> bool {
        punch_hole(&self.file, offset, len)
    }

    /// Transfer hints: a sparse file keeps zeros as holes
    /// ([`crate::Geometry::thin_granule`]); a device's zeros are written.
    pub fn geometry(&self) -> crate::Geometry {
        crate::Geometry {
            thin_granule: (!self.device).then_some(crate::THIN_GRANULE),
            ..crate::Geometry::default()
        }
    }

    /// A hole of a sparse file reads as zeros by the file system's guarantee.
    pub fn reads_as_zeros(&self, offset: u64, len: u64) -> bool {
        !self.device && range_is_hole(&self.file, offset, len)
    }

    /// A reader of its own for the read-back check beside the writes; see
    /// [`RawReader`].
    pub fn reader(&self) -> Result<RawReader> {
        let file = self.file.try_clone().map_err(|e| {
            Error::io(
                format!("opening {} again to read it back", self.path.display()),
                e,
            )
        })?;
        Ok(RawReader {
            direct: Direct::reopen(&file, false),
            file,
            path: self.path.clone(),
            device: self.device,
        })
    }
}

/// Whether `[offset, offset+len)` of a regular file lies in a hole: it reads
/// as zeros without being stored (a capture source skips it, a volume need
/// not zero it). Asks the file system with `SEEK_DATA`; where it cannot say
/// (block devices, old file systems) the answer is "not a hole". A range past
/// the current end is no hole either: the file shrank, and reading there
/// must say so.
pub fn range_is_hole(file: &File, offset: u64, len: u64) -> bool {
    let Ok(at) = i64::try_from(offset) else {
        return false;
    };
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

/// The read-back side of a raw file or device (see the module doc): its own
/// read-only `O_DIRECT` descriptor and bounce buffer, so it reads beside the
/// writer's thread without sharing a lock with it, and what it reads comes
/// from the disk, never from a page-cache copy of what was just written.
#[derive(Debug)]
pub struct RawReader {
    /// A duplicate of the writer's buffered descriptor: unaligned ranges.
    file: File,
    /// `None` where the file system refuses `O_DIRECT`.
    direct: Option<Direct>,
    path: PathBuf,
    device: bool,
}

impl RawReader {
    /// A reader of the file or block device at `path` alone, read-only (a volume an earlier
    /// ingest finished, read back before it is kept), and its size.
    pub fn open(path: &Path) -> Result<(RawReader, u64)> {
        let mut file = File::open(path)
            .map_err(|e| Error::io(format!("opening {} to read it back", path.display()), e))?;
        let device = file
            .metadata()
            .is_ok_and(|m| m.file_type().is_block_device());
        // A device's length is where its end seeks to (its metadata says 0).
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::io(format!("sizing {}", path.display()), e))?;
        Ok((
            RawReader {
                direct: Direct::reopen(&file, false),
                file,
                path: path.to_path_buf(),
                device,
            },
            size,
        ))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let read = match &self.direct {
            Some(d) if Direct::fits(offset, buf.len()) => d
                .read_at(offset, buf)
                .or_else(|_| self.read_buffered(offset, buf)),
            _ => self.read_buffered(offset, buf),
        };
        read.map_err(|e| {
            Error::io(
                format!(
                    "reading back {} bytes of {} at byte {offset}",
                    buf.len(),
                    self.path.display()
                ),
                e,
            )
        })
    }

    /// A read through the page cache whose cached pages of the range are
    /// written back and dropped first, so it reads what the file system
    /// holds. (Only unaligned ranges come here where `O_DIRECT` works: a
    /// disk's tail, so the sync is rare; the writer no longer flushes before
    /// every read-back, see [`VolumeReader::sees_completed_writes`].)
    fn read_buffered(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
        // Dirty pages are not dropped by the advice below.
        self.file.sync_data()?;
        if let (Ok(at), Ok(len)) = (i64::try_from(offset), i64::try_from(buf.len())) {
            // Advice only: where it is refused the read still happens.
            let _ = posix_fadvise(
                self.file.as_fd(),
                at,
                len,
                PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
        }
        self.file.read_exact_at(buf, offset)
    }
}

impl VolumeReader for RawReader {
    /// Direct reads see direct writes as soon as they completed, and what
    /// goes buffered (unaligned ranges) is synced first by
    /// [`RawReader::read_buffered`]. Without `O_DIRECT` (tmpfs) the writer's
    /// flush is what puts the bytes where the reader looks.
    fn sees_completed_writes(&self) -> bool {
        self.direct.is_some()
    }
    fn read_batch(&mut self, reads: &mut [ReadAt<'_>]) -> Result<()> {
        for r in reads {
            self.read_at(r.offset, r.buf)?;
        }
        Ok(())
    }
    fn reads_as_zeros(&mut self, offset: u64, len: u64) -> bool {
        !self.device && range_is_hole(&self.file, offset, len)
    }
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The state key of a volume at path `p` (file or qcow2): from its absolute path with the
/// directory's symlinks and `..` resolved, so every spelling of one file names the same state
/// (`k/../k/b.raw`, or a link to `k`, found no state and had the re-run throw away a
/// `.partial` it could have resumed). The file's own name is kept: it may not exist yet.
pub fn absolute_key(p: &Path) -> String {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let resolved = match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir).map(|d| d.join(name)).ok(),
        _ => None,
    };
    key_of(&resolved.unwrap_or(abs).to_string_lossy())
}

/// Make a rename durable.
pub(crate) fn sync_parent(p: &Path) -> Result<()> {
    let dir = p
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
}

/// A raw image file; see the module doc.
#[derive(Debug)]
pub struct FileVolume {
    raw: Raw,
    /// `Some(final path)` while written as `.partial`; `None` in place.
    rename_to: Option<PathBuf>,
    found: Found,
    /// An exclusive `flock` on the `.partial` while it is written ([`lock_partial`]).
    _lock: Option<nix::fcntl::Flock<File>>,
}

/// An exclusive `flock` on a `.partial` target while this ingest writes it: a second ingest
/// (with a state dir of its own: another operator, `sudo` with another HOME) is told the
/// target is in use. It was told to adopt or remove the live ingest's `.partial`, which
/// then failed at its rename, or (qcow2) to kill its `qemu-nbd`.
pub(crate) fn lock_partial(partial: &Path) -> Result<nix::fcntl::Flock<File>> {
    lock_exclusive(partial, || {
        format!(
            "{} is being written by another ingest right now (it holds the file's lock): \
             one ingest writes a volume at a time. Wait for it to finish, or give another \
             target; nothing was written",
            partial.display()
        )
    })
}

impl FileVolume {
    /// Create (or, after an interruption, reopen) `PATH.partial` for an
    /// ingest into `path`.
    pub fn create(path: &Path, prep: &Prepare) -> Result<Self> {
        if path.exists() && !prep.force {
            return Err(Error::Usage(format!(
                "{} exists: pass --force to replace it",
                path.display()
            )));
        }
        let partial = with_suffix(path, ".partial");
        let found = if std::fs::symlink_metadata(&partial).is_ok() {
            Found::Unfinished {
                adopt_without_state: false,
            }
        } else {
            // Decrypted data goes only into a file this run created.
            drop(image_format::private::create(&partial).map_err(|e| {
                Error::io(
                    format!("creating target {} (new, 0600)", partial.display()),
                    e,
                )
            })?);
            Found::New
        };
        let raw = Raw::open(&partial)?;
        if raw.device {
            return Err(Error::Usage(format!(
                "{} is a block device: use dev:{}",
                partial.display(),
                partial.display()
            )));
        }
        let lock = lock_partial(&partial)?;
        // An interrupted ingest's partial file always has the disk's size: one cut short or
        // grown since was changed by something else, and what its resume state says was
        // written is not what it holds (a resume read back past its end).
        if found != Found::New && raw.size != prep.disk_size && !prep.force {
            return Err(Error::Usage(format!(
                "{} is {} bytes, not this disk's {}: it is an unfinished ingest of another \
                 capture into this target, or it was cut short or grown since, and what it \
                 holds is not known. Finish that other ingest (its own command), or run this \
                 command with --force (or remove it: `rm {}`): the ingest starts over",
                partial.display(),
                raw.size,
                prep.disk_size,
                partial.display()
            )));
        }
        // Only a file this run created is sized, or one --force starts over in: an unfinished
        // one of another ingest (another capture, refused by its resume state next) keeps
        // every byte it holds. --force said "dropped, starts over" and then refused its size.
        if (found == Found::New || prep.force) && raw.size != prep.disk_size {
            // A new partial file: sparse, all zeros.
            raw.file
                .set_len(prep.disk_size)
                .map_err(|e| Error::io(format!("sizing {}", partial.display()), e))?;
        }
        Ok(FileVolume {
            raw: Raw {
                size: prep.disk_size,
                ..raw
            },
            rename_to: Some(path.to_owned()),
            found,
            _lock: Some(lock),
        })
    }

    /// Open an existing raw file or block device to write in place (sync).
    pub fn open_in_place(path: &Path) -> Result<Self> {
        Ok(FileVolume {
            raw: Raw::open(path)?,
            rename_to: None,
            found: Found::New,
            _lock: None,
        })
    }

    /// The file (or device) being written.
    pub fn path(&self) -> &Path {
        &self.raw.path
    }
}

impl Volume for FileVolume {
    fn size(&self) -> u64 {
        self.raw.size
    }
    fn describe(&self) -> String {
        self.rename_to
            .as_deref()
            .unwrap_or(&self.raw.path)
            .display()
            .to_string()
    }
    fn state_key(&self) -> String {
        absolute_key(self.rename_to.as_deref().unwrap_or(&self.raw.path))
    }
    fn found(&self) -> Found {
        self.found
    }
    fn unfinished_by_name(&self) -> bool {
        self.rename_to.is_some()
    }
    fn geometry(&self) -> crate::Geometry {
        self.raw.geometry()
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.raw.write_at(offset, data)
    }
    /// Runs of adjacent writes go out as one vectored write each: [`write_runs`].
    fn write_batch(&mut self, writes: &[crate::WriteAt<'_>]) -> Result<()> {
        write_runs(&self.raw, writes)
    }
    fn fresh_reads_zero(&self) -> bool {
        // NAME.partial made by this run, sized by `set_len`: a hole end to end.
        self.found == Found::New
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.raw.write_zeroes(offset, len)
    }
    fn flush(&mut self) -> Result<()> {
        self.raw.flush()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.raw.read_at(offset, buf)
    }
    fn reads_as_zeros(&mut self, offset: u64, len: u64) -> bool {
        self.raw.reads_as_zeros(offset, len)
    }
    /// A [`RawReader`]: the read-back compares with the plaintext beside the
    /// writes instead of hashing everything again after them.
    fn concurrent_reader(&mut self) -> Result<Option<Box<dyn VolumeReader>>> {
        Ok(Some(Box::new(self.raw.reader()?)))
    }
    fn finish(self: Box<Self>) -> Result<Finished> {
        self.raw.flush()?;
        let path = match &self.rename_to {
            Some(to) => {
                std::fs::rename(&self.raw.path, to).map_err(|e| {
                    Error::io(
                        format!("renaming {} to {}", self.raw.path.display(), to.display()),
                        e,
                    )
                })?;
                sync_parent(to)?;
                to.clone()
            }
            None => self.raw.path.clone(),
        };
        Ok(Finished {
            path: Some(path),
            format: "raw",
            volume: None,
        })
    }
    fn discard(self: Box<Self>) -> Result<()> {
        if self.found == Found::New && self.rename_to.is_some() {
            std::fs::remove_file(&self.raw.path)
                .map_err(|e| Error::io(format!("removing {}", self.raw.path.display()), e))?;
        }
        Ok(())
    }
}

/// A block device; see the module doc.
#[derive(Debug)]
pub struct DeviceVolume {
    raw: Raw,
    marker: Marker,
    found: Found,
    /// [`Volume::state_key`]: the one its marker records (the name the disk had when the
    /// ingest began, which a disk attached again under another name resumes with), else
    /// the path's.
    state: String,
    /// For a loop device: the file behind it, holding a write lock on the bytes the device
    /// shows ([`lock_loop_image`]); closing it releases the lock.
    _lock: Option<File>,
}

/// The image file behind loop device `md` (sysfs `loop/backing_file`), when it is a
/// regular file.
fn loop_image(md: &std::fs::Metadata) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let rdev = md.rdev();
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let named =
        std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/loop/backing_file"))
            .ok()?;
    let path = PathBuf::from(named.trim_end_matches('\n'));
    std::fs::metadata(&path).ok()?.is_file().then_some(path)
}

/// A loop device's image is locked (`flock`) while the device is written: two loop devices
/// over one file are one volume, and two ingests (with their own state dirs) wrote it
/// through them at once, both "verified", the volume holding one disk.
fn lock_loop_image(device: &Path, md: &std::fs::Metadata, image: &Path) -> Result<File> {
    use std::os::unix::fs::MetadataExt;
    // The bytes of the image the device shows, as an open-file-description lock: a flock of
    // the whole file also stopped an ingest into another loop device over a part of the
    // image the medium does not use (the medium's own lock is a flock of that file).
    let (major, minor) = (
        nix::sys::stat::major(md.rdev()),
        nix::sys::stat::minor(md.rdev()),
    );
    let read = |name: &str| -> Option<i64> {
        std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    // Unknown: the whole file (a length of 0 runs to its end, however far it grows).
    let (start, len) = match (read("loop/offset"), read("size")) {
        (Some(o), Some(sectors)) => (o, sectors.saturating_mul(512)),
        _ => (0, 0),
    };
    // A write lock needs the file open for writing; read-only (not ours to write), a read
    // lock still meets another ingest's write lock.
    let (f, writable) = match File::options().read(true).write(true).open(image) {
        Ok(f) => (f, true),
        Err(_) => (
            File::open(image)
                .map_err(|e| Error::io(format!("opening {} to lock it", image.display()), e))?,
            false,
        ),
    };
    let want = nix::libc::flock {
        l_type: if writable {
            nix::libc::F_WRLCK as i16
        } else {
            nix::libc::F_RDLCK as i16
        },
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: start,
        l_len: len,
        l_pid: 0,
    };
    match nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_OFD_SETLK(&want)) {
        Ok(_) => Ok(f),
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => Err(Error::Usage(format!(
            "{} is a loop device over {}, which another ingest is writing right now \
             (through another loop device over the same bytes of it): one ingest writes a \
             volume at a time. Wait for it to finish, or give another target; nothing was \
             written",
            device.display(),
            image.display()
        ))),
        Err(errno) => Err(Error::io(
            format!("locking {}", image.display()),
            std::io::Error::from_raw_os_error(errno as i32),
        )),
    }
}

/// An exclusive, non-blocking `flock` on `path`; `busy` says why when another holder has it.
fn lock_exclusive(path: &Path, busy: impl FnOnce() -> String) -> Result<nix::fcntl::Flock<File>> {
    use nix::fcntl::{Flock, FlockArg};
    let f = File::open(path)
        .map_err(|e| Error::io(format!("opening {} to lock it", path.display()), e))?;
    Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            Error::Usage(busy())
        } else {
            Error::io(
                format!("locking {}", path.display()),
                std::io::Error::from_raw_os_error(errno as i32),
            )
        }
    })
}

/// Whether the kernel holds block device `md` read-only (sysfs `ro`: `losetup -r`,
/// `blockdev --setro`, a write-protect switch).
pub fn read_only_device(md: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    let rdev = md.rdev();
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/ro"))
        .is_ok_and(|s| s.trim() == "1")
}

/// The markers in `state_dir`.
fn markers_in(state_dir: &Path) -> impl Iterator<Item = Marker> {
    std::fs::read_dir(state_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(".mgear-incomplete")
        })
        .map(|e| Marker { path: e.path() })
}

/// The identity lines of the markers in `state_dir`.
fn marker_identities(state_dir: &Path) -> impl Iterator<Item = String> {
    markers_in(state_dir).filter_map(|m| m.identity())
}

/// The ` (inode D:I)` of a loop device's backing file in a [`device_identity`].
fn backing_inode(identity: &str) -> Option<&str> {
    let at = identity.find(" (inode ")?;
    let end = identity[at..].find(')')?;
    Some(&identity[at..=at + end])
}

/// Whether two [`device_identity`]s name one disk. Its number (`major:minor`) is the kernel's
/// name for it in this attachment only: a USB disk plugged in again, or a loop device attached
/// again over the same file, comes back under another, and its unfinished ingest was refused
/// as "another device" (the same file, inode and size named in both). The same size and disk
/// serial, or the same size and loop backing file (by inode), are one disk; without either,
/// only the whole identity alike.
pub fn same_device(was: &str, now: &str) -> bool {
    if was == now {
        return true;
    }
    let sectors = |id: &str| {
        id.split(", ")
            .nth(1)
            .filter(|s| s.ends_with(" sectors"))
            .map(str::to_owned)
    };
    let serial = |id: &str| id.rfind(", serial ").map(|at| id[at..].to_owned());
    if sectors(was).is_none() || sectors(was) != sectors(now) {
        return false;
    }
    match (serial(was), serial(now)) {
        (Some(a), Some(b)) => a == b,
        (None, None) => backing_inode(was).is_some() && backing_inode(was) == backing_inode(now),
        _ => false,
    }
}

/// What names the block device at `path` beyond the path ([`same_device`] compares two):
/// its number and size, and the file behind a loop device or a disk's serial (sysfs);
/// `gone` when nothing is there.
pub fn device_identity(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::metadata(path) else {
        return "gone".into();
    };
    let rdev = md.rdev();
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let sys = format!("/sys/dev/block/{major}:{minor}");
    let read = |f: &str| {
        std::fs::read_to_string(format!("{sys}/{f}"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let mut id = format!("device {major}:{minor}");
    if let Some(sectors) = read("size") {
        id += &format!(", {sectors} sectors");
    }
    if let Some(backing) = read("loop/backing_file") {
        let inode = std::fs::metadata(&backing)
            .map(|m| format!(" (inode {}:{})", m.dev(), m.ino()))
            .unwrap_or_default();
        id += &format!(", loop over {backing}{inode}");
    }
    if let Some(serial) = read("device/wwid").or_else(|| read("device/serial")) {
        id += &format!(", serial {serial}");
    }
    id
}

impl DeviceVolume {
    /// Open `path` (must be a block device of at least the disk's size).
    pub fn open(path: &Path, prep: &Prepare) -> Result<Self> {
        let md = std::fs::metadata(path)
            .map_err(|e| Error::io(format!("target device {}", path.display()), e))?;
        if !md.file_type().is_block_device() {
            return Err(Error::Usage(format!(
                "{} is not a block device: use file:PATH for image files",
                path.display()
            )));
        }
        // Exclusive (`O_EXCL` on a block device): the kernel refuses a second exclusive
        // opener and a mounted device, whatever node or state dir names it. Two ingests
        // with their own state dirs wrote one device at once, and one of them reported a
        // volume holding both disks' chunks as verified.
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_EXCL)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(nix::libc::EBUSY) => Error::Usage(format!(
                    "target device {} is busy: it is mounted, or another program (another \
                     ingest?) holds it open exclusively; nothing was written. Unmount it or \
                     wait for that program to finish (`lsblk {}`, `fuser -v {}`), then run \
                     the same command again",
                    path.display(),
                    path.display(),
                    path.display()
                )),
                Some(nix::libc::EROFS) | Some(nix::libc::EACCES) | Some(nix::libc::EPERM) => {
                    Error::Usage(format!(
                        "target device {} cannot be opened for writing ({e}): it is read-only \
                         (`blockdev --getro {}` says 1) or not ours to write; nothing was \
                         written. Give a writable device",
                        path.display(),
                        path.display()
                    ))
                }
                _ => Error::io(format!("opening target {}", path.display()), e),
            })?;
        let lock = match loop_image(&md) {
            Some(image) => Some(lock_loop_image(path, &md, &image)?),
            None => None,
        };
        if read_only_device(&md) {
            // Open for writing succeeds; the first write fails with EPERM, after the
            // marker that then blocked the next device under this name.
            return Err(Error::Usage(format!(
                "target device {} is read-only (`blockdev --getro {}` says 1, e.g. a loop \
                 device set up with `losetup -r`); nothing was written. Give a writable device \
                 (a loop device attached with -r stays read-only: `losetup -d {}` and attach \
                 its file again without -r; a disk the kernel holds read-only: `blockdev \
                 --setrw {}`)",
                path.display(),
                path.display(),
                path.display(),
                path.display()
            )));
        }
        let mut file = file;
        let (size, _) = Raw::from_file(&mut file, path)?;
        if size < prep.disk_size {
            return Err(Error::Usage(format!(
                "device {} is {size} bytes but the disk is {}: attach a volume of at least {} bytes",
                path.display(),
                prep.disk_size,
                prep.disk_size
            )));
        }
        let raw = Raw::new(file, path, size, true);
        let marker = Self::marker(path, prep);
        // The same disk's unfinished ingest under the name it had (a USB disk or loop device
        // attached again under another number): its marker is taken over, and the ingest
        // resumes into it. It started over from nothing, without a word.
        if !marker.exists() {
            let me = device_identity(path);
            let earlier = markers_in(&prep.state_dir)
                .find(|m| m.identity().is_some_and(|id| same_device(&id, &me)));
            if let (Some(m), false) = (earlier, me == "gone") {
                std::fs::rename(&m.path, &marker.path).map_err(|e| {
                    Error::io(format!("taking over marker {}", m.path.display()), e)
                })?;
            }
        }
        let found = if marker.exists() {
            if let Some(was) = marker
                .identity()
                .filter(|was| !same_device(was, &device_identity(path)))
            {
                return Err(Error::Usage(format!(
                    "an unfinished ingest into {} was writing another device ({was}), not the \
                     one there now ({}): nothing was written. Attach the device that ingest was \
                     writing to finish it, or remove its marker {} to write this one",
                    path.display(),
                    device_identity(path),
                    marker.path.display()
                )));
            }
            Found::Unfinished {
                adopt_without_state: true,
            }
        } else {
            marker.create(&format!(
                "{} into {}\nidentity: {}\nstate: {}\n",
                prep.what,
                path.display(),
                device_identity(path),
                absolute_key(path)
            ))?;
            let head = vec![0u8; prep.head_len.min(size) as usize];
            raw.write_at(0, &head)?;
            raw.flush()?;
            Found::New
        };
        let state = marker.state().unwrap_or_else(|| absolute_key(path));
        Ok(DeviceVolume {
            raw,
            marker,
            found,
            state,
            _lock: lock,
        })
    }
}

impl DeviceVolume {
    /// Whether an earlier, unfinished ingest into `path` left its marker: the
    /// device then holds that ingest's partial data and [`DeviceVolume::open`]
    /// resumes it rather than starting over.
    pub fn unfinished(path: &Path, prep: &Prepare) -> bool {
        Self::marked_unfinished(path, &prep.state_dir)
    }

    /// [`DeviceVolume::unfinished`] with the ingest state dir `state_dir`
    /// (what `mgear boot` checks before booting the device).
    pub fn marked_unfinished(path: &Path, state_dir: &Path) -> bool {
        let m = Self::marker_in(path, state_dir);
        let me = device_identity(path);
        // A marker made for another device attached at this path before is not this one's.
        if m.exists() && m.identity().is_none_or(|was| same_device(&was, &me)) {
            return true;
        }
        // The same device by another path (a /dev/disk/by-id link, a second device node): the
        // marker is named by the path the ingest was given, and names the device inside; a
        // second loop device over the same file is that file.
        let backing = backing_inode(&me);
        me != "gone"
            && marker_identities(state_dir).any(|id| {
                same_device(&id, &me) || backing.is_some_and(|b| backing_inode(&id) == Some(b))
            })
    }

    /// Whether the file `path` is the one behind a loop device an unfinished ingest was
    /// writing (its marker in `state_dir` names the loop's backing file by inode): it holds
    /// that ingest's partial disk.
    pub fn backing_unfinished(path: &Path, state_dir: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(m) = std::fs::metadata(path) else {
            return false;
        };
        let inode = format!(" (inode {}:{})", m.dev(), m.ino());
        marker_identities(state_dir).any(|id| backing_inode(&id) == Some(inode.as_str()))
    }

    fn marker(path: &Path, prep: &Prepare) -> Marker {
        Self::marker_in(path, &prep.state_dir)
    }

    fn marker_in(path: &Path, state_dir: &Path) -> Marker {
        let name = path
            .file_name()
            .map_or_else(|| "target".into(), |n| n.to_string_lossy().into_owned());
        Marker::new(state_dir, &name)
    }
}

impl Volume for DeviceVolume {
    fn size(&self) -> u64 {
        self.raw.size
    }
    fn describe(&self) -> String {
        self.raw.path.display().to_string()
    }
    fn state_key(&self) -> String {
        self.state.clone()
    }
    fn found(&self) -> Found {
        self.found
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.raw.write_at(offset, data)
    }
    /// Runs of adjacent writes go out as one vectored write each: [`write_runs`].
    fn write_batch(&mut self, writes: &[crate::WriteAt<'_>]) -> Result<()> {
        write_runs(&self.raw, writes)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.raw.write_zeroes(offset, len)
    }
    fn flush(&mut self) -> Result<()> {
        self.raw.flush()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.raw.read_at(offset, buf)
    }
    /// As for [`FileVolume`]: a [`RawReader`] of the device.
    fn concurrent_reader(&mut self) -> Result<Option<Box<dyn VolumeReader>>> {
        Ok(Some(Box::new(self.raw.reader()?)))
    }
    fn finish(self: Box<Self>) -> Result<Finished> {
        self.raw.flush()?;
        self.marker.remove()?;
        // Markers an earlier, cut ingest left for this same volume under another device name
        // (a loop device attached again under another number): it is finished and verified
        // now. They made `boot` refuse it for good, naming a device that is another now.
        let me = device_identity(&self.raw.path);
        if let (Some(mine), Some(dir)) = (backing_inode(&me), self.marker.path.parent()) {
            for m in markers_in(dir) {
                if m.identity()
                    .is_some_and(|id| backing_inode(&id) == Some(mine))
                {
                    let _ = m.remove();
                }
            }
        }
        Ok(Finished {
            path: Some(self.raw.path.clone()),
            format: "raw",
            volume: None,
        })
    }
    fn discard(self: Box<Self>) -> Result<()> {
        if self.found == Found::New {
            self.marker.remove()?;
        }
        Ok(())
    }
}

/// Drops `len` bytes of `file` from `offset` (they read as zeros after, and take no room),
/// keeping its size; `false` where the file system cannot (the caller writes zeros or
/// truncates instead).
pub fn punch_hole(file: &File, offset: u64, len: u64) -> bool {
    use nix::fcntl::{fallocate, FallocateFlags};
    let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return false;
    };
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    fallocate(file.as_fd(), flags, off, len).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    #[test]
    fn every_spelling_of_a_volume_has_one_state_key() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        std::fs::create_dir(&k).unwrap();
        std::os::unix::fs::symlink(&k, dir.path().join("kl")).unwrap();
        let key = absolute_key(&k.join("b.raw"));
        assert_eq!(absolute_key(&dir.path().join("k/../k/b.raw")), key);
        assert_eq!(absolute_key(&dir.path().join("kl/b.raw")), key);
        assert_ne!(absolute_key(&k.join("c.raw")), key);
    }

    fn prep(dir: &Path, size: u64) -> Prepare {
        Prepare {
            disk_size: size,
            head_len: 4096,
            state_dir: dir.to_owned(),
            force: false,
            what: "test".into(),
        }
    }

    /// A batch's adjacent aligned chunks go out as one vectored write; a
    /// gap, an unaligned buffer or an odd length falls back to single
    /// writes; every byte lands where it belongs.
    #[test]
    fn a_batch_is_written_as_runs_and_lands_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("v.raw");
        let mut v = FileVolume::create(&target, &prep(dir.path(), 16 << 20)).unwrap();
        // One over-allocated buffer: pieces cut at aligned offsets of it.
        let mut raw = vec![0u8; (6 << 20) + ALIGN];
        let base = raw.as_ptr().align_offset(ALIGN);
        for (i, b) in raw[base..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let al = &raw[base..base + (6 << 20)];
        let odd = vec![5u8; 1000];
        let writes = [
            // Adjacent and aligned: one run of 3 MiB.
            crate::WriteAt {
                offset: 0,
                data: &al[..1 << 20],
            },
            crate::WriteAt {
                offset: 1 << 20,
                data: &al[1 << 20..2 << 20],
            },
            crate::WriteAt {
                offset: 2 << 20,
                data: &al[2 << 20..3 << 20],
            },
            // A gap, then an unaligned buffer adjacent to an aligned one.
            crate::WriteAt {
                offset: 5 << 20,
                data: &al[3 << 20..4 << 20],
            },
            crate::WriteAt {
                offset: 6 << 20,
                data: &raw[base + 1..base + 1 + (1 << 20)],
            },
            // An odd length at the end.
            crate::WriteAt {
                offset: 9 << 20,
                data: &odd,
            },
        ];
        v.write_batch(&writes).unwrap();
        v.flush().unwrap();
        // Written as NAME.partial until finished.
        let back = std::fs::read(dir.path().join("v.raw.partial")).unwrap();
        for w in &writes {
            let at = w.offset as usize;
            assert!(back[at..at + w.data.len()] == *w.data, "at {at}");
        }
        assert!(back[3 << 20..5 << 20].iter().all(|&b| b == 0));
    }

    #[test]
    fn file_is_partial_sparse_and_renamed_on_finish() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("v.raw");
        let p = prep(dir.path(), 8 << 20);
        let mut v = FileVolume::create(&target, &p).unwrap();
        assert_eq!(v.found(), Found::New);
        assert_eq!(v.size(), 8 << 20);
        v.write_at(1 << 20, &[7u8; 4096]).unwrap();
        v.write_at(3 << 20, &[9u8; 1 << 20]).unwrap();
        // Zeroing a written range punches it out again: it reads as zeros and is a hole.
        v.write_zeroes(3 << 20, 1 << 20).unwrap();
        assert!(v.reads_as_zeros(3 << 20, 1 << 20));
        assert!(!v.reads_as_zeros(1 << 20, 4096));
        let mut b = vec![1u8; 4096];
        v.read_at(3 << 20, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        v.flush().unwrap();
        assert!(!target.exists(), "unfinished volume must not look complete");
        drop(v);
        // Reopened: an earlier run's partial, not adoptable without state.
        let v = FileVolume::create(&target, &p).unwrap();
        assert_eq!(
            v.found(),
            Found::Unfinished {
                adopt_without_state: false
            }
        );
        let done = Box::new(v).finish().unwrap();
        assert_eq!(done.path.as_deref(), Some(target.as_path()));
        let back = std::fs::read(&target).unwrap();
        assert_eq!(back.len(), 8 << 20);
        assert!(back[1 << 20..(1 << 20) + 4096].iter().all(|&x| x == 7));
        // Sparse: far less allocated than the size.
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(&target).unwrap().blocks() * 512 < 1 << 20);
        // An existing target is replaced only with --force.
        let err = FileVolume::create(&target, &p).unwrap_err();
        assert!(
            err.is_usage() && err.to_string().contains("--force"),
            "{err}"
        );
        let forced = Prepare { force: true, ..p };
        assert!(FileVolume::create(&target, &forced).is_ok());
    }

    #[test]
    fn direct_and_buffered_transfers_see_each_others_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("img");
        // A size that is not block-aligned: the last block is partly past the end.
        let size = (3 << 20) + 1000;
        std::fs::write(&f, vec![0u8; size]).unwrap();
        let raw = Raw::open(&f).unwrap();
        // tmpfs refuses O_DIRECT; everything below must hold either way.
        eprintln!("direct I/O: {}", raw.direct.is_some());
        let block: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        raw.write_at(1 << 20, &block).unwrap(); // aligned: direct
        raw.write_at((1 << 20) + 10, b"buffered").unwrap(); // unaligned: buffered
        let mut back = vec![0u8; 1 << 20];
        raw.read_at(1 << 20, &mut back).unwrap(); // aligned: direct
        assert_eq!(&back[..10], &block[..10]);
        assert_eq!(&back[10..18], b"buffered");
        assert_eq!(&back[18..], &block[18..]);
        // Larger than the bounce buffer, and reading into the unaligned tail.
        let big = vec![7u8; 2 * DIRECT_MAX.min(1 << 20) + ALIGN];
        raw.write_at(0, &big[..size.min(big.len()) / ALIGN * ALIGN])
            .unwrap();
        let tail_at = (size / ALIGN * ALIGN) as u64;
        raw.write_at(tail_at, &vec![9u8; size % ALIGN]).unwrap();
        let mut tail = vec![0u8; ALIGN];
        // A whole block whose end lies past the end of the file cannot be read.
        assert!(raw.read_at(tail_at, &mut tail).is_err());
        let mut tail = vec![0u8; size % ALIGN];
        raw.read_at(tail_at, &mut tail).unwrap();
        assert!(tail.iter().all(|&b| b == 9));
        raw.flush().unwrap();
        let on_disk = std::fs::read(&f).unwrap();
        assert_eq!(on_disk.len(), size);
        assert!(on_disk[..big.len().min(tail_at as usize)]
            .iter()
            .all(|&b| b == 7));
    }

    /// `len` bytes of `backing` starting at a multiple of [`ALIGN`].
    fn aligned_slice(backing: &mut Vec<u8>, len: usize) -> &mut [u8] {
        backing.resize(len + ALIGN, 0);
        let at = backing.as_ptr().align_offset(ALIGN);
        &mut backing[at..at + len]
    }

    #[test]
    fn the_concurrent_reader_reads_what_the_disk_holds_after_the_flush() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("v.raw");
        // Not block-aligned: the tail goes buffered both ways.
        let size = (2 << 20) + 1000;
        let mut v = FileVolume::create(&target, &prep(dir.path(), size)).unwrap();
        let mut r = v
            .concurrent_reader()
            .unwrap()
            .expect("file volumes read back beside");
        let data: Vec<u8> = (0..size as usize).map(|i| (i * 13 % 251) as u8).collect();
        // An unaligned buffer (bounce) and an aligned one (no bounce).
        v.write_at(0, &data[..1 << 20]).unwrap();
        let mut backing = Vec::new();
        let aligned = aligned_slice(&mut backing, 1 << 20);
        aligned.copy_from_slice(&data[1 << 20..2 << 20]);
        v.write_at(1 << 20, aligned).unwrap();
        v.write_at(2 << 20, &data[2 << 20..]).unwrap();
        v.flush().unwrap();
        // Another writer changes one byte of each part behind the volume's back.
        let other = OpenOptions::new().write(true).open(v.path()).unwrap();
        let mut want = data.clone();
        for at in [7usize, (1 << 20) + 9, (2 << 20) + 999] {
            want[at] = !want[at];
            other.write_all_at(&want[at..at + 1], at as u64).unwrap();
        }
        other.sync_all().unwrap();
        let mut first = vec![0u8; 1 << 20];
        let mut backing = Vec::new();
        let second = aligned_slice(&mut backing, 1 << 20);
        let mut tail = vec![0u8; 1000];
        r.read_batch(&mut [
            ReadAt {
                offset: 0,
                buf: &mut first,
            },
            ReadAt {
                offset: 1 << 20,
                buf: second,
            },
            ReadAt {
                offset: 2 << 20,
                buf: &mut tail,
            },
        ])
        .unwrap();
        assert!(first == want[..1 << 20]);
        assert!(*second == want[1 << 20..2 << 20]);
        assert!(tail == want[2 << 20..]);
        // Reading past the end is an error naming the file, not a short read.
        let mut past = vec![0u8; 4096];
        let err = r
            .read_batch(&mut [ReadAt {
                offset: 2 << 20,
                buf: &mut past,
            }])
            .unwrap_err();
        assert!(err.to_string().contains("v.raw.partial"), "{err}");
        // Holes are known without reading them.
        v.write_zeroes(0, 1 << 20).unwrap();
        assert!(r.reads_as_zeros(0, 1 << 20));
        assert!(!r.reads_as_zeros(1 << 20, 4096));
        drop(r);
        assert!(Box::new(v).finish().is_ok());
    }

    #[test]
    fn the_direct_reader_sees_completed_writes_without_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("v.raw");
        let size = (1 << 20) + 1000;
        let mut v = FileVolume::create(&target, &prep(dir.path(), size)).unwrap();
        let mut r = v.concurrent_reader().unwrap().unwrap();
        if !r.sees_completed_writes() {
            // No O_DIRECT here (tmpfs): the pipeline flushes before each read-back.
            return;
        }
        let data: Vec<u8> = (0..size as usize).map(|i| (i * 7 % 253) as u8).collect();
        v.write_at(0, &data).unwrap();
        let (mut head, mut tail) = (vec![0u8; 1 << 20], vec![0u8; 1000]);
        r.read_batch(&mut [
            ReadAt {
                offset: 0,
                buf: &mut head,
            },
            ReadAt {
                offset: 1 << 20,
                buf: &mut tail,
            },
        ])
        .unwrap();
        assert!(head == data[..1 << 20], "the direct part, unflushed");
        assert!(
            tail == data[1 << 20..],
            "the buffered tail, synced by the reader"
        );
    }

    #[test]
    fn direct_io_is_used_where_the_file_system_allows_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("img");
        std::fs::write(&f, vec![0u8; 1 << 20]).unwrap();
        let raw = Raw::open(&f).unwrap();
        let refused = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECT)
            .open(&f)
            .is_err();
        assert_eq!(raw.direct.is_none(), refused);
    }

    /// A partial file cut short (or grown) since its ingest was interrupted is refused by name
    /// with the way on, not read back past its end ("failed to fill whole buffer").
    #[test]
    fn a_partial_of_another_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("v.raw");
        let p = prep(dir.path(), 1 << 20);
        drop(FileVolume::create(&target, &p).unwrap());
        let partial = dir.path().join("v.raw.partial");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&partial)
            .unwrap()
            .set_len(4096)
            .unwrap();
        let e = FileVolume::create(&target, &p).expect_err("refused");
        assert!(matches!(e, Error::Usage(_)), "{e}");
        assert!(
            e.to_string()
                .contains("is 4096 bytes, not this disk's 1048576"),
            "{e}"
        );
        assert_eq!(
            std::fs::metadata(&partial).unwrap().len(),
            4096,
            "left as it was"
        );
    }

    #[test]
    fn discard_removes_only_what_this_run_created() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("v.raw");
        let partial = dir.path().join("v.raw.partial");
        let p = prep(dir.path(), 4096);
        Box::new(FileVolume::create(&target, &p).unwrap())
            .discard()
            .unwrap();
        assert!(!partial.exists(), "a new partial goes again");
        drop(FileVolume::create(&target, &p).unwrap());
        // An earlier run's partial is kept.
        Box::new(FileVolume::create(&target, &p).unwrap())
            .discard()
            .unwrap();
        assert!(partial.exists());
    }

    #[test]
    fn partial_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("v.raw");
        std::os::unix::fs::symlink(
            dir.path().join("elsewhere"),
            dir.path().join("v.raw.partial"),
        )
        .unwrap();
        std::fs::write(dir.path().join("elsewhere"), b"x").unwrap();
        let err = FileVolume::create(&target, &prep(dir.path(), 4096)).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(std::fs::read(dir.path().join("elsewhere")).unwrap(), b"x");
    }

    #[test]
    fn device_refuses_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("img");
        std::fs::write(&f, vec![0u8; 4096]).unwrap();
        let err = DeviceVolume::open(&f, &prep(dir.path(), 4096)).unwrap_err();
        assert!(err.is_usage() && err.to_string().contains("not a block device"));
    }

    #[test]
    fn in_place_zeroing_without_holes_writes_only_non_zero_data() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("img");
        std::fs::write(&f, vec![5u8; 3 << 20]).unwrap();
        let mut v = FileVolume::open_in_place(&f).unwrap();
        assert_eq!(v.size(), 3 << 20);
        // Force the zero-writing path as a device would take it.
        v.raw.device = true;
        v.write_zeroes(1 << 20, (1 << 20) + 7).unwrap();
        let back = std::fs::read(&f).unwrap();
        assert!(back[..1 << 20].iter().all(|&x| x == 5));
        assert!(back[1 << 20..(2 << 20) + 7].iter().all(|&x| x == 0));
        assert!(back[(2 << 20) + 7..].iter().all(|&x| x == 5));
    }
}
