//! Aligned buffers and `O_DIRECT` reads shared by the host's media and
//! sources: what a FAT image (`store::direct`, feature `fat`), a mounted
//! directory ([`super::DirStore`]'s `locate`) and the capture source read with.
//!
//! Why `O_DIRECT` at all: see `store::direct`'s module doc (copies through
//! the page cache cost more CPU than sealing the data). Every helper falls
//! back to the page cache where the file system refuses a direct transfer
//! (tmpfs before Linux 6.6, some FUSE and network file systems).

use std::fs::File;
use std::io::{self, ErrorKind};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{RangeRead, StoreError};

/// Alignment of direct transfers: offsets, lengths and buffer addresses.
/// 4096 covers devices with 512-byte and 4 KiB logical blocks; a device
/// that wants more refuses with `EINVAL`, and the transfer is done through
/// the page cache instead.
pub const ALIGN: usize = 4096;

/// A byte buffer whose start is aligned to [`ALIGN`], as `O_DIRECT` wants.
/// Over-allocates a `Vec` by one alignment and uses the aligned part of it.
#[derive(Debug)]
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    cap: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `cap` bytes (rounded up to [`ALIGN`]).
    pub fn new(cap: usize) -> Self {
        let cap = cap.div_ceil(ALIGN).max(1) * ALIGN;
        let raw = vec![0u8; cap + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN).min(ALIGN);
        AlignedBuf { raw, start, cap }
    }

    /// Usable bytes.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The aligned bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.cap]
    }

    /// The aligned bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.cap]
    }

    /// Grow to at least `cap` bytes (contents are not kept).
    pub fn reserve(&mut self, cap: usize) {
        if self.cap < cap {
            *self = AlignedBuf::new(cap);
        }
    }
}

/// A second descriptor of `file`'s file or device opened with `O_DIRECT`
/// (through `/proc/self/fd`, so no path is needed), with the same access
/// mode; `None` where the file system refuses `O_DIRECT` or `/proc` is
/// missing: the caller then keeps to the page cache.
pub fn reopen_direct(file: &File) -> Option<File> {
    use rustix::fs::{fcntl_getfl, Mode, OFlags};
    let flags = fcntl_getfl(file).ok()?;
    let access = flags & (OFlags::RDONLY | OFlags::WRONLY | OFlags::RDWR);
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let fd = rustix::fs::open(
        path.as_str(),
        access | OFlags::DIRECT | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    Some(File::from(fd))
}

/// Whether an error means "this transfer cannot be done with `O_DIRECT`"
/// (alignment or file system), so the page cache must do it.
pub fn refused_direct(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
}

/// Read at least `want` bytes at `offset` (aligned) with `O_DIRECT` into
/// `buf`, whose capacity must hold `want` rounded up to [`ALIGN`]. Returns
/// the bytes read: fewer than `want` only at the end of the file.
pub fn read_direct(
    direct: &File,
    offset: u64,
    want: usize,
    buf: &mut AlignedBuf,
) -> io::Result<usize> {
    let len = want.div_ceil(ALIGN) * ALIGN;
    buf.reserve(len);
    Ok(read_all_at(direct, offset, &mut buf.as_mut_slice()[..len])?.min(want))
}

/// Read `want` bytes at `offset` (aligned) with `O_DIRECT` straight into `out`, at its
/// first byte aligned to [`ALIGN`] (the bytes before it are zeros); returns that position
/// and how many bytes were read (fewer than `want` only at the end of the file). `out`
/// keeps `room` bytes of capacity after the data, so a sealing step can append its tag
/// without moving the buffer. What a capture reads its source with: no bounce buffer, no
/// copy of the chunk out of it.
pub fn read_direct_into(
    direct: &File,
    offset: u64,
    want: usize,
    room: usize,
    out: &mut Vec<u8>,
) -> io::Result<(usize, usize)> {
    let len = want.div_ceil(ALIGN) * ALIGN;
    out.clear();
    out.reserve(ALIGN + len.max(want + room));
    const _: () = assert!(ALIGN == crate::chunkbuf::CHUNK_ALIGN);
    let from = crate::chunkbuf::offset_to_align(out.as_ptr());
    out.resize(from, 0);
    let mut done = 0usize;
    while done < len {
        let spare = &mut out.spare_capacity_mut()[..len - done];
        let n = match rustix::io::pread(direct, spare, offset + done as u64) {
            Ok((read, _)) => read.len(),
            Err(e) if e == rustix::io::Errno::INTR => continue,
            Err(e) => return Err(e.into()),
        };
        // SAFETY: `pread` initialised the first `n` bytes of the spare capacity it was
        // given, which start at `out.len()`; `n` is at most that slice's length, within
        // the capacity reserved above.
        unsafe { out.set_len(out.len() + n) };
        if n == 0 {
            break;
        }
        done += n;
        if !done.is_multiple_of(ALIGN) {
            // A short read not on a block boundary is the end of the file.
            break;
        }
    }
    let got = done.min(want);
    out.truncate(from + got);
    Ok((from, got))
}

/// A [`RangeRead`] over one file or device: positional `O_DIRECT` reads
/// into the caller's aligned buffer, safe from any thread; through the page
/// cache where the file system refuses a direct read (at open or on the
/// first read). What a FAT image's `DirectFile` hands out for its device,
/// and what a [`super::DirStore`] hands out for a segment file.
#[derive(Debug)]
pub struct FileRange {
    direct: Option<File>,
    buffered: File,
    refused: AtomicBool,
}

impl FileRange {
    /// Reads of `file` (any access mode), direct where its file system allows.
    pub fn new(file: &File) -> io::Result<Self> {
        Ok(FileRange {
            direct: reopen_direct(file),
            buffered: file.try_clone()?,
            refused: AtomicBool::new(false),
        })
    }

    /// Reads of `file` through the page cache only: for a device whose
    /// writer already found that the file system refuses `O_DIRECT`.
    pub fn buffered(file: &File) -> io::Result<Self> {
        Ok(FileRange {
            direct: None,
            buffered: file.try_clone()?,
            refused: AtomicBool::new(true),
        })
    }
}

impl RangeRead for FileRange {
    fn read_aligned(&self, at: u64, buf: &mut [u8]) -> Result<usize, StoreError> {
        let file = match &self.direct {
            Some(d) if !self.refused.load(Ordering::Relaxed) => d,
            _ => &self.buffered,
        };
        match read_all_at(file, at, buf) {
            Err(e)
                if self.direct.is_some()
                    && refused_direct(&e)
                    && !self.refused.swap(true, Ordering::Relaxed) =>
            {
                read_all_at(&self.buffered, at, buf)
            }
            r => r,
        }
        .map_err(|e| StoreError::Io(format!("reading the medium at byte {at}: {e}")))
    }
}

/// `buf.len()` bytes at `at`, fewer only at the end of the file.
fn read_all_at(file: &File, at: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0usize;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], at + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if !done.is_multiple_of(ALIGN) {
            // A short read not on a block boundary is the end of the file (a
            // direct read from there would be refused as unaligned).
            break;
        }
    }
    Ok(done)
}
