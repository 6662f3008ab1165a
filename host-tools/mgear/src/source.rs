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
//!
//! Files and block devices are read with `O_DIRECT` (a second descriptor,
//! `image_format::store::aligned::reopen_direct`) straight into the chunk's
//! own buffer, at its first aligned byte (`read_direct_into`; the encoder
//! takes the chunk from there, `encode_owned_from`): until session 30 they
//! went through an aligned buffer per thread and were copied out, a copy
//! that cost a quarter of a rate-limited capture's CPU. Why direct rather than reading
//! through the page cache and dropping it behind the reader with
//! `posix_fadvise(DONTNEED)`: the source is a production server's disk, and
//! DONTNEED would also drop pages its own workload had cached (the advice
//! is per range, not per reader), while a direct read leaves the cache as
//! it was; and the kernel's copy out of the page cache (`copy_to_iter`) was
//! the largest single cost of a capture (38 % of its CPU in a profile,
//! README "Benchmarks"). A direct read still sees data a writer left dirty
//! in the cache (the kernel writes the range back first). Where `O_DIRECT`
//! is refused (tmpfs, some FUSE or network file systems), or for the
//! unaligned end of a file, reads go through the page cache, and the bytes
//! read are then dropped from it with DONTNEED so a capture larger than RAM
//! does not push everything else out.
//!
//! A chunk whose every page is already in the page cache (`mincore` over a
//! mapping of its range, which faults nothing in) is read from there
//! instead, and left there: no disk I/O on the production server for data
//! its workload keeps hot, and zero regions that sit in memory are captured
//! at memory speed. The kernel's copy costs about what a direct read and
//! the copy out of its aligned buffer cost. The buffered descriptor is
//! opened `POSIX_FADV_RANDOM` when a direct one exists: read-ahead behind a
//! resident chunk would make the next one resident, and so on to the end.

use std::cell::RefCell;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use image_format::store::aligned::{self as direct, AlignedBuf, ALIGN};

use crate::error::Context;

pub mod nbd;

/// A disk to capture.
#[allow(clippy::len_without_is_empty)] // a disk of size zero is refused before capture
pub trait Source: Send {
    /// Size in bytes, as seen when the capture started.
    fn len(&self) -> u64;
    /// Fill `buf` from byte `offset`; an early end is an error (the source shrank).
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> crate::Result<()>;
    /// Whether `[offset, offset+len)` is known to read as zeros without reading it
    /// (a hole reported by the source); `false` when unknown.
    fn is_hole(&mut self, _offset: u64, _len: u64) -> crate::Result<bool> {
        Ok(false)
    }
    /// Human description for messages.
    fn describe(&self) -> String;
    /// The source as the manifest records it (and a resume must name it again): one spelling
    /// per disk, so `disk.raw`, `./disk.raw` and `$PWD/disk.raw` resume the same capture.
    fn recorded(&self) -> String {
        self.describe()
    }
    /// A handle several threads can read through at once, if the source
    /// allows it (files and block devices: positional reads). Capture then
    /// reads on every encoder thread instead of one reader thread.
    fn concurrent(&self) -> Option<Arc<dyn ConcurrentRead>> {
        None
    }
    /// Chunk indexes (of `chunk_size` bytes) that the changed-block-tracking bitmap this
    /// source was opened with ([`open`]'s `bitmap`) marks dirty, sorted, each once; `None`
    /// when it was opened without one. Only NBD exports carry such a bitmap (`qemu-nbd -B`).
    fn dirty_chunks(&mut self, _chunk_size: u32) -> crate::Result<Option<Vec<u64>>> {
        Ok(None)
    }
    /// The size the source has now, where it can be asked again (a file or block device);
    /// `None` otherwise (an NBD export's size is fixed by its handshake). A capture reads
    /// [`len`](Self::len) bytes: one that grew meanwhile left its tail behind.
    fn size_now(&mut self) -> Option<u64> {
        None
    }
    /// How many bytes from `from` to `to` (or the end) are not in holes, where the source
    /// can tell (a sparse file: `SEEK_DATA`/`SEEK_HOLE`); `None` otherwise. The space
    /// estimate scales its samples by it: a 1 TiB sparse file holding 1 MiB was estimated at
    /// 32 GiB when one of its 32 samples hit the data, and refused a medium it fit on.
    fn data_bytes(&mut self, _from: u64, _to: u64) -> Option<u64> {
        None
    }
}

/// A source whose reads first wait for a rate limiter: the checks a capture makes before it
/// copies (a resume's and a delta's samples) read at `--rate-limit` too (a resume at 512 KiB/s
/// read 36 MiB in its first second).
pub struct Paced<'a> {
    inner: &'a mut dyn Source,
    limiter: Option<crate::ratelimit::RateLimiter>,
}

impl<'a> Paced<'a> {
    /// `inner` read at `rate` bytes per second (unpaced for `None`), in reads of about `chunk`.
    pub fn new(inner: &'a mut dyn Source, rate: Option<f64>, chunk: u64) -> Self {
        Paced {
            inner,
            limiter: rate.map(|r| crate::ratelimit::RateLimiter::new(r, chunk)),
        }
    }
}

impl Source for Paced<'_> {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> crate::Result<()> {
        if let Some(l) = self.limiter.as_mut() {
            l.acquire(buf.len() as u64);
        }
        self.inner.read_exact_at(offset, buf)
    }
    fn is_hole(&mut self, offset: u64, len: u64) -> crate::Result<bool> {
        self.inner.is_hole(offset, len)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn recorded(&self) -> String {
        self.inner.recorded()
    }
}

/// What tells the disk behind a source from another across a stop and a resume
/// ([`identity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// A digest of the labels that name the disk (the same for a disk with none).
    pub digest: [u8; 32],
}

/// The labels that name the disk behind `source`, as written when it was made and
/// not rewritten while it runs: an MBR's disk signature and partition entries,
/// a GPT header's disk GUID (512- and 4096-byte sectors), an LVM physical
/// volume's UUID, a LUKS header's UUID, an NTFS volume serial, and the UUID of an
/// XFS, ext2/3/4, swap or btrfs file system made on the bare disk. Other bytes at
/// the start of a disk are data like any other (a bootloader rewrites its code,
/// an unpartitioned disk its first sector): they are left to the content check.
pub fn identity(source: &mut dyn Source) -> crate::Result<Identity> {
    let len = source.len().min(IDENTITY_BYTES as u64) as usize;
    let mut head = vec![0u8; len];
    source.read_exact_at(0, &mut head)?;
    Ok(identity_of(&head))
}

/// How much of a disk's start [`identity`] reads: up to the btrfs superblock
/// (64 KiB) and its fsid.
const IDENTITY_BYTES: usize = 64 * 1024 + 4096;

/// [`identity`] of a disk's first bytes.
fn identity_of(head: &[u8]) -> Identity {
    let at = |from: usize, len: usize| head.get(from..from + len);
    // (label, magic offset, magic, offset and length of what names it)
    type Label = (&'static [u8], usize, &'static [u8], usize, usize);
    const LABELS: [Label; 10] = [
        // MBR (and GPT's protective MBR): disk signature and the four entries.
        (b"mbr", 510, &[0x55, 0xaa], 440, 70),
        (b"gpt", 512, b"EFI PART", 512 + 56, 16),
        (b"gpt4k", 4096, b"EFI PART", 4096 + 56, 16),
        (b"lvm", 512, b"LABELONE", 512 + 32, 32),
        (b"luks", 0, b"LUKS\xba\xbe", 168, 40),
        (b"ntfs", 3, b"NTFS    ", 0x48, 8),
        (b"xfs", 0, b"XFSB", 32, 16),
        (b"ext", 1024 + 56, &[0x53, 0xef], 1024 + 104, 16),
        (b"swap", 4096 - 10, b"SWAPSPACE2", 1024 + 12, 16),
        (b"btrfs", 65536 + 64, b"_BHRfS_M", 65536 + 32, 16),
    ];
    let mut h = blake3::Hasher::new();
    for (label, magic_at, magic, id_at, id_len) in LABELS {
        if let (Some(m), Some(id)) = (at(magic_at, magic.len()), at(id_at, id_len)) {
            if m == magic {
                h.update(label);
                h.update(id);
            }
        }
    }
    Identity {
        digest: *h.finalize().as_bytes(),
    }
}

/// Positional reads from many threads at once.
pub trait ConcurrentRead: Send + Sync {
    /// As [`Source::read_exact_at`].
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> crate::Result<()>;

    /// `len` bytes at `offset` into `out[from..]`, returning `from` (`out` ends with
    /// them; what it held is overwritten). Sources read with `O_DIRECT` put them at
    /// the buffer's first aligned byte, so the disk's DMA fills the chunk's own buffer.
    fn read_vec(&self, offset: u64, len: usize, out: &mut Vec<u8>) -> crate::Result<usize> {
        out.resize(len, 0);
        self.read_exact_at(offset, out)?;
        Ok(0)
    }
}

/// Whether the source a disk was captured from (as recorded) is `given`:
/// the same text, or paths that resolve to the same file or device. An
/// older medium that recorded none is taken at its word.
pub fn same_source(recorded: &str, given: &str) -> bool {
    if recorded.is_empty() || recorded == given {
        return true;
    }
    // A path is recorded without its `file:`/`dev:` prefix.
    let Ok(crate::spec::Source::Path(given)) = crate::spec::Source::parse(given) else {
        return false;
    };
    if std::path::Path::new(recorded) == given {
        return true;
    }
    match (
        std::fs::canonicalize(recorded),
        std::fs::canonicalize(&given),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// How the manifest records the source `spec` names ([`Source::recorded`]), without opening
/// it: `capture --source-was` names a disk by the name it had, which may be gone.
pub fn recorded_name(spec: &str) -> crate::Result<String> {
    Ok(match crate::spec::Source::parse(spec)? {
        crate::spec::Source::Nbd(url) => url.to_string(),
        crate::spec::Source::Path(p) => std::path::absolute(&p).unwrap_or(p).display().to_string(),
    })
}

/// Open `--source` (parsed by `crate::spec`).
///
/// With `bitmap`, the source also answers [`Source::dirty_chunks`] from the qemu dirty bitmap
/// of that name (`capture --delta --dirty-bitmap`, `mgear sync --dirty-bitmap`): only an NBD
/// export can carry one, and one that lacks it is refused here, with what to do.
pub fn open(spec: &str, bitmap: Option<&str>) -> crate::Result<Box<dyn Source>> {
    match crate::spec::Source::parse(spec)? {
        crate::spec::Source::Nbd(url) => nbd::open(&url, bitmap),
        crate::spec::Source::Path(_) if bitmap.is_some() => Err(crate::exit::usage(format!(
            "--dirty-bitmap needs an NBD source that exports the bitmap (e.g. `qemu-nbd -r -f \
             qcow2 -B {b} --socket S disk.qcow2` and --source 'nbd+unix:///?socket=S'); {spec} \
             is a file or device: leave out --dirty-bitmap to read every chunk",
            b = bitmap.unwrap_or_default()
        ))),
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
    /// The same file opened with `O_DIRECT`, if the file system allows it.
    direct: Option<File>,
    /// Cleared when a direct read is refused (alignment the device does
    /// not take): every later read goes through the page cache.
    direct_ok: AtomicBool,
    /// A shared `flock` while the source is read, as a medium's reader holds one: `medium
    /// format --force` of the image being captured (its exclusive lock) is then refused as in
    /// use (it formatted it, and the capture finished, exit 0, holding zeros). Best effort:
    /// a source another program holds is still read.
    _shared: Option<nix::fcntl::Flock<File>>,
}

thread_local! {
    /// Each reading thread's aligned buffer for direct reads.
    static BOUNCE: RefCell<AlignedBuf> = RefCell::new(AlignedBuf::new(ALIGN));
}

impl FileSource {
    /// Open read-only and take the size.
    pub fn open(path: PathBuf) -> crate::Result<Self> {
        // Only a regular file or a block device has a size and can be read
        // at any offset. A directory opens fine and "seeks" to 2^63; a
        // character device (/dev/zero) seeks to 0 and read as "empty"; a
        // FIFO blocks in open(2) until a writer comes, forever. Refuse them
        // by name before opening.
        if let Some(what) = std::fs::metadata(&path)
            .ok()
            .and_then(|m| not_a_disk(m.file_type()))
        {
            return Err(crate::exit::usage(format!(
                "source {} is {what}, not a disk: give a block device (e.g. /dev/sdb), \
                 a raw disk image file, or an NBD export (nbd://HOST:PORT/EXPORT)",
                path.display()
            )));
        }
        let mut file =
            File::open(&path).with_context(|| format!("cannot open source {}", path.display()))?;
        let len = file
            .seek(SeekFrom::End(0))
            .with_context(|| format!("cannot find the size of source {}", path.display()))?;
        let direct = direct::reopen_direct(&file);
        if direct.is_some() {
            // With chunks read directly, this descriptor serves samples, chunks found
            // resident and unaligned tails: no read-ahead for it. Read-ahead behind a
            // resident chunk made the next one resident, and a capture slow enough for
            // the kernel to keep ahead (`--rate-limit`) went through the page cache from
            // its first sample to its end: twice the CPU per byte, and the production
            // server's cache filled with the disk. Advice only: where it is ignored, reads
            // are as before. Without `O_DIRECT` read-ahead is what keeps reads streaming.
            let _ = nix::fcntl::posix_fadvise(
                &file,
                0,
                0,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM,
            );
        }
        let shared = File::open(&path).ok().and_then(|f| {
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockSharedNonblock).ok()
        });
        Ok(FileSource {
            inner: Arc::new(OpenFile {
                path,
                file,
                len,
                direct_ok: AtomicBool::new(direct.is_some()),
                direct,
                _shared: shared,
            }),
        })
    }
}

/// What a file of type `t` is when it is not something a capture can read
/// as a disk (a regular file or a block device).
pub(crate) fn not_a_disk(t: std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt as _;
    if t.is_file() || t.is_block_device() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_char_device() {
        Some("a character device (it has no size and no blocks to read at an offset)")
    } else if t.is_fifo() {
        Some("a FIFO (a named pipe: it has no size and cannot be read at an offset)")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file or block device")
    }
}

impl OpenFile {
    /// Read what `O_DIRECT` can of `len` bytes at `offset` into this
    /// thread's aligned buffer and hand them to `take`; returns how many
    /// (0: not aligned, refused, or at the end: the caller reads the rest
    /// through the page cache).
    fn read_direct(
        &self,
        offset: u64,
        len: usize,
        take: impl FnOnce(&[u8]),
    ) -> crate::Result<usize> {
        let Some(d) = self.direct.as_ref() else {
            return Ok(0);
        };
        if !offset.is_multiple_of(ALIGN as u64) || !self.direct_ok.load(Ordering::Relaxed) {
            return Ok(0);
        }
        BOUNCE.with(|b| {
            let mut b = b.borrow_mut();
            match direct::read_direct(d, offset, len, &mut b) {
                Ok(n) => {
                    take(&b.as_slice()[..n]);
                    Ok(n)
                }
                Err(e) if direct::refused_direct(&e) => {
                    self.direct_ok.store(false, Ordering::Relaxed);
                    Ok(0)
                }
                Err(e) => Err(crate::Error::from(e).context(format!(
                    "reading source {} at byte {offset}",
                    self.path.display()
                ))),
            }
        })
    }

    /// Whether every page of `offset..offset + len` is in the page cache.
    fn resident(&self, offset: u64, len: usize) -> bool {
        use nix::libc;
        if len == 0 || !offset.is_multiple_of(ALIGN as u64) {
            return false;
        }
        let Ok(at) = libc::off_t::try_from(offset) else {
            return false;
        };
        let mut pages = vec![0u8; len.div_ceil(ALIGN)];
        // SAFETY: a read-only shared mapping of `len` bytes of our own read-only
        // descriptor at a page-aligned offset; nothing reads through it (mincore
        // only asks the kernel which of its pages are resident, and faults none
        // in), `pages` holds one byte per page of it, and it is unmapped before
        // returning. A failed map is a "no".
        unsafe {
            let addr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&self.file),
                at,
            );
            if addr == libc::MAP_FAILED {
                return false;
            }
            let r = libc::mincore(addr, len, pages.as_mut_ptr());
            libc::munmap(addr, len);
            r == 0 && pages.iter().all(|p| p & 1 == 1)
        }
    }

    /// Read `buf` at `offset` through the page cache, then drop those
    /// pages from it (see the module doc).
    fn read_buffered(&self, offset: u64, buf: &mut [u8]) -> crate::Result<()> {
        self.read_cached(offset, buf)?;
        if let (Ok(at), Ok(len)) = (i64::try_from(offset), i64::try_from(buf.len())) {
            if len > 0 {
                // Advice only: a file system that ignores it costs nothing.
                let _ = nix::fcntl::posix_fadvise(
                    &self.file,
                    at,
                    len,
                    nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                );
            }
        }
        Ok(())
    }

    /// Read `buf` at `offset` through the page cache (and leave it there).
    fn read_cached(&self, offset: u64, buf: &mut [u8]) -> crate::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let n = self
                .file
                .read_at(&mut buf[done..], at)
                .with_context(|| format!("reading source {} at byte {at}", self.path.display()))?;
            if n == 0 {
                // Its size now, where it can be asked: "ends at byte" said where the read
                // was, which was far past a file cut much shorter.
                let now = match self.file.metadata() {
                    Ok(m) if m.file_type().is_file() => format!("is {} bytes now", m.len()),
                    _ => format!("ends before byte {}", at + 1),
                };
                // A re-run is refused (the disk is not the size the generation was started
                // with), so "run the same command again", the I/O hint, went in a circle.
                return Err(crate::exit::coded_hint(
                    crate::exit::IO,
                    format!(
                        "source {} shrank while it was read: it was {} bytes when the run \
                         started and {now}; read it from a snapshot or a disk that is not \
                         being resized",
                        self.path.display(),
                        self.len
                    ),
                    "a capture cannot go on with a disk of another size: `mgear capture \
                     --abort` with the same --medium and --name removes what it stored, then \
                     capture the disk again (a snapshot of it, or once the resize is done); a \
                     sync keeps what it applied, and a disk of a new size is captured with \
                     --delta and ingested again (SYNC.md)",
                ));
            }
            done += n;
        }
        Ok(())
    }
}

impl ConcurrentRead for OpenFile {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> crate::Result<()> {
        let len = buf.len();
        if self.resident(offset, len) {
            return self.read_cached(offset, buf);
        }
        let n = self.read_direct(offset, len, |got| buf[..got.len()].copy_from_slice(got))?;
        self.read_buffered(offset + n as u64, &mut buf[n..])
    }

    fn read_vec(&self, offset: u64, len: usize, out: &mut Vec<u8>) -> crate::Result<usize> {
        // Room for the AES-GCM tag: the writer seals the chunk in this
        // buffer when it stores it uncompressed.
        const TAG_ROOM: usize = 64;
        if self.resident(offset, len) {
            // Overwritten whole by the read: only what the buffer grows by is zeroed.
            out.truncate(len);
            out.reserve(len + TAG_ROOM - out.len());
            out.resize(len, 0);
            self.read_cached(offset, out)?;
            return Ok(0);
        }
        if let Some(d) = self.direct.as_ref().filter(|_| {
            offset.is_multiple_of(ALIGN as u64) && self.direct_ok.load(Ordering::Relaxed)
        }) {
            match direct::read_direct_into(d, offset, len, TAG_ROOM, out) {
                Ok((from, n)) => {
                    out.resize(from + len, 0);
                    self.read_buffered(offset + n as u64, &mut out[from + n..])?;
                    return Ok(from);
                }
                Err(e) if direct::refused_direct(&e) => {
                    self.direct_ok.store(false, Ordering::Relaxed);
                }
                Err(e) => {
                    return Err(crate::Error::from(e).context(format!(
                        "reading source {} at byte {offset}",
                        self.path.display()
                    )))
                }
            }
        }
        out.clear();
        out.reserve(len + TAG_ROOM);
        out.resize(len, 0);
        self.read_buffered(offset, out)?;
        Ok(0)
    }
}

impl Source for FileSource {
    fn data_bytes(&mut self, from: u64, to: u64) -> Option<u64> {
        use nix::unistd::{lseek, Whence};
        let len = self.inner.len.min(to);
        let fd = &self.inner.file;
        // A block device has no holes to ask about; a file too fragmented to walk quickly
        // is left to the samples.
        if !self.inner.file.metadata().ok()?.is_file() {
            return None;
        }
        let (mut at, mut data) = (from.min(len), 0u64);
        for _ in 0..100_000 {
            if at >= len {
                return Some(data);
            }
            let start = match lseek(fd, i64::try_from(at).ok()?, Whence::SeekData) {
                Ok(p) => p as u64,
                // No data after `at`.
                Err(nix::errno::Errno::ENXIO) => return Some(data),
                Err(_) => return None,
            };
            let end = (lseek(fd, start as i64, Whence::SeekHole).ok()? as u64).min(len);
            data += end.saturating_sub(start);
            at = end.max(start + 1);
        }
        None
    }

    fn size_now(&mut self) -> Option<u64> {
        let mut f = &self.inner.file;
        f.seek(SeekFrom::End(0)).ok()
    }

    fn len(&self) -> u64 {
        self.inner.len
    }

    fn is_hole(&mut self, offset: u64, len: u64) -> crate::Result<bool> {
        // Past the end is not a hole: reading there must report the shrink.
        Ok(offset.saturating_add(len) <= self.inner.len
            && mgear_volume::file::range_is_hole(&self.inner.file, offset, len))
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> crate::Result<()> {
        self.inner.read_exact_at(offset, buf)
    }

    fn describe(&self) -> String {
        self.inner.path.display().to_string()
    }

    /// Absolute, symbolic links kept (`/dev/vg0/web01-snap` stays that name, whatever
    /// `dm-N` it points at in this boot).
    fn recorded(&self) -> String {
        std::path::absolute(&self.inner.path)
            .unwrap_or_else(|_| self.inner.path.clone())
            .display()
            .to_string()
    }

    fn concurrent(&self) -> Option<Arc<dyn ConcurrentRead>> {
        Some(self.inner.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a label was found (the digest of a disk with none is that of nothing).
    fn named(b: &[u8]) -> bool {
        identity_of(b).digest != *blake3::hash(b"").as_bytes()
    }

    /// A source cut short while it was read says its size now: "ends at byte" named where
    /// the read was, far past a file cut much shorter.
    #[test]
    fn a_source_that_shrank_says_its_size_now() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.raw");
        std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
        let mut file = FileSource::open(path.clone()).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(100 << 10)
            .unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let e = file.read_exact_at(512 << 10, &mut buf).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("shrank while it was read"), "{text}");
        assert!(text.contains("and is 102400 bytes now"), "{text}");
    }

    /// Reads through [`Paced`] wait for the limiter (one second's worth may go at once, the
    /// rest at the rate) and still read the source's bytes.
    #[test]
    fn paced_reads_keep_to_the_rate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.raw");
        let data: Vec<u8> = (0..(512u32 << 10)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mut file = FileSource::open(path).unwrap();
        let started = std::time::Instant::now();
        let mut paced = Paced::new(&mut file, Some(256.0 * 1024.0), 64 << 10);
        let mut buf = vec![0u8; 64 << 10];
        for k in 0..8u64 {
            paced.read_exact_at(k * (64 << 10), &mut buf).unwrap();
            assert_eq!(buf[..], data[(k as usize) << 16..((k as usize) + 1) << 16]);
        }
        // 512 KiB at 256 KiB/s with a burst of 256 KiB: about a second of waiting.
        assert!(
            started.elapsed() >= std::time::Duration::from_millis(700),
            "{:?}",
            started.elapsed()
        );
        // Unpaced: no limiter at all.
        let mut free = Paced::new(&mut file, None, 64 << 10);
        free.read_exact_at(0, &mut buf).unwrap();
    }

    #[test]
    fn a_disk_is_named_by_its_labels_not_by_the_code_or_data_around_them() {
        let id = |b: &[u8]| identity_of(b).digest;
        let mut mbr = vec![0u8; IDENTITY_BYTES];
        mbr[440..444].copy_from_slice(&[1, 2, 3, 4]);
        mbr[446] = 0x80; // a partition entry
        mbr[510..512].copy_from_slice(&[0x55, 0xaa]);
        assert!(named(&mbr));
        let mut other = mbr.clone();
        other[440] = 9;
        assert_ne!(id(&mbr), id(&other), "disk signature");
        // Boot code and the sectors after it (GRUB's core image) are rewritten by a
        // bootloader update: the same disk.
        let mut grub = mbr.clone();
        grub[10] = 7;
        grub[2048] = 7;
        assert_eq!(id(&mbr), id(&grub));
        let mut gpt = mbr.clone();
        gpt[512..520].copy_from_slice(b"EFI PART");
        let mut gpt2 = gpt.clone();
        gpt2[512 + 60] = 1; // the disk GUID
        assert_ne!(id(&gpt), id(&gpt2));
        // XFS rewrites its counters and free-space header while mounted.
        let mut xfs = vec![0u8; IDENTITY_BYTES];
        xfs[..4].copy_from_slice(b"XFSB");
        xfs[32..48].copy_from_slice(&[7; 16]);
        let mut busy = xfs.clone();
        busy[128] = 1; // sb_icount
        busy[600] = 1; // the AGF
        assert_eq!(id(&xfs), id(&busy));
        let mut another = xfs.clone();
        another[40] = 8;
        assert_ne!(id(&xfs), id(&another));
        // Data at the start of an unpartitioned disk names nothing.
        let mut data = vec![0u8; IDENTITY_BYTES];
        data[..1024].fill(0x5a);
        assert!(!named(&data));
        data[..1024].fill(0xa5);
        assert_eq!(id(&data), id(&vec![0u8; IDENTITY_BYTES]));
    }

    /// ext4, swap and btrfs made on a bare disk leave its first KiB zero: their UUIDs
    /// name it.
    #[test]
    fn bare_file_systems_are_told_by_their_uuids() {
        let blank = vec![0u8; IDENTITY_BYTES];
        assert!(!named(&blank));
        let mut ext = blank.clone();
        ext[1024 + 56..1024 + 58].copy_from_slice(&[0x53, 0xef]);
        ext[1024 + 104..1024 + 120].copy_from_slice(&[1; 16]);
        let mut ext2 = ext.clone();
        ext2[1024 + 110] = 2;
        let mut busy = ext.clone();
        busy[1024 + 12] = 5; // s_free_blocks_count changes as it runs
        assert!(named(&ext));
        assert_ne!(identity_of(&ext).digest, identity_of(&ext2).digest);
        assert_eq!(identity_of(&ext).digest, identity_of(&busy).digest);
        let mut swap = blank.clone();
        swap[4086..4096].copy_from_slice(b"SWAPSPACE2");
        swap[1036..1052].copy_from_slice(&[3; 16]);
        let mut swap2 = swap.clone();
        swap2[1040] = 4;
        assert!(named(&swap));
        assert_ne!(identity_of(&swap).digest, identity_of(&swap2).digest);
        let mut btrfs = blank.clone();
        btrfs[65536 + 64..65536 + 72].copy_from_slice(b"_BHRfS_M");
        btrfs[65536 + 32..65536 + 48].copy_from_slice(&[9; 16]);
        let mut btrfs2 = btrfs.clone();
        btrfs2[65536 + 33] = 1;
        assert!(named(&btrfs));
        assert_ne!(identity_of(&btrfs).digest, identity_of(&btrfs2).digest);
        // A disk shorter than what is read is named by what it has.
        assert!(!named(&[0u8; 100]));
    }

    /// A read through the page cache (a sample, an unaligned tail, a resident chunk) brings
    /// in what it asked for and nothing after it: read-ahead behind it made the next chunk
    /// resident, that one was read through the cache too, and a rate-limited capture went
    /// through the production server's page cache from start to end at twice the CPU.
    #[test]
    fn a_read_through_the_page_cache_reads_no_further_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.raw");
        std::fs::write(&p, vec![7u8; 4 << 20]).unwrap();
        let f = File::open(&p).unwrap();
        f.sync_all().unwrap();
        nix::fcntl::posix_fadvise(
            &f,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .unwrap();
        let s = FileSource::open(p).unwrap();
        if s.inner.direct.is_none() {
            eprintln!("skipped: the temporary directory's file system refuses O_DIRECT");
            return;
        }
        assert!(
            !s.inner.resident(0, 4 << 20),
            "the file was not dropped from the cache"
        );
        let mut buf = [0u8; 10];
        // Unaligned: read through the page cache.
        s.inner.read_exact_at(100, &mut buf).unwrap();
        assert_eq!(buf, [7u8; 10]);
        for page in 1..16u64 {
            assert!(
                !s.inner.resident(page * 4096, 4096),
                "page {page} was read ahead into the page cache"
            );
        }
    }

    #[test]
    fn character_devices_fifos_and_directories_are_refused_by_name() {
        let e = FileSource::open("/dev/zero".into()).err().expect("refused");
        assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE);
        assert!(
            e.to_string()
                .starts_with("source /dev/zero is a character device (it has no size"),
            "{e}"
        );
        assert!(e.to_string().contains("a raw disk image file"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Opening a FIFO blocks until a writer comes: refused before that.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(FileSource::open(fifo).err().map(|e| e.to_string()));
        });
        let e = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("opening a FIFO source hung")
            .expect("refused");
        assert!(e.contains("is a FIFO"), "{e}");
        let e = FileSource::open(dir.path().to_owned())
            .err()
            .expect("refused");
        assert!(e.to_string().contains("is a directory, not a disk"), "{e}");
    }

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
    fn direct_and_page_cache_reads_agree_up_to_an_unaligned_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.raw");
        let len = (3 << 20) + 1234;
        let bytes: Vec<u8> = (0..len as u32).map(|i| (i * 7 % 253) as u8).collect();
        std::fs::write(&p, &bytes).unwrap();
        let s = FileSource::open(p.clone()).unwrap();
        let direct = direct::reopen_direct(&File::open(&p).unwrap()).is_some();
        assert_eq!(s.inner.direct.is_some(), direct);
        // Written back and dropped from the page cache (where the file system
        // keeps its files elsewhere than in it: tmpfs keeps them there).
        let evict = || {
            let f = File::open(&p).unwrap();
            f.sync_all().unwrap();
            let _ = nix::fcntl::posix_fadvise(
                &f,
                0,
                0,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
        };
        let passes = [
            "resident in the page cache",
            "direct where the file system allows it",
            "page cache",
        ];
        for pass in passes {
            match pass {
                "resident in the page cache" => {
                    std::fs::read(&p).unwrap();
                    assert!(s.inner.resident(0, 1 << 20), "{pass}");
                }
                _ => {
                    evict();
                    assert!(!direct || !s.inner.resident(0, 1 << 20), "{pass}");
                }
            }
            let src = s.concurrent().unwrap();
            // Whole chunks, the last one ending mid-block, and an unaligned read.
            for (off, n) in [
                (0usize, 1 << 20),
                (1 << 20, 1 << 20),
                (2 << 20, (1 << 20) + 1234),
                (5000, 70_000),
            ] {
                let mut v = vec![9u8; 17];
                let from = src.read_vec(off as u64, n, &mut v).unwrap();
                assert!(
                    v[from..] == bytes[off..off + n],
                    "{pass}: read_vec at {off}"
                );
                // Read straight into the chunk's buffer at an aligned byte, with room
                // for the tag sealing appends.
                let straight = direct && pass == passes[1] && off % ALIGN == 0;
                assert_eq!(
                    (v.as_ptr() as usize + from).is_multiple_of(ALIGN),
                    straight || from == 0 && (v.as_ptr() as usize).is_multiple_of(ALIGN),
                    "{pass}: read_vec at {off} into byte {from}"
                );
                assert!(from < ALIGN && v.capacity() >= v.len() + 16, "{pass}");
                let mut b = vec![0u8; n];
                src.read_exact_at(off as u64, &mut b).unwrap();
                assert!(b == bytes[off..off + n], "{pass}: read at {off}");
            }
            let mut b = vec![0u8; 70_000];
            src.read_exact_at(5000, &mut b).unwrap();
            assert!(b == bytes[5000..75_000], "{pass}: unaligned read");
            let mut past = vec![0u8; 4096];
            let e = src.read_exact_at(len as u64 - 100, &mut past).unwrap_err();
            assert!(e.to_string().contains("shrank"), "{pass}: {e}");
            // Resident pages stay; reads of the others add none.
            let cached = s.inner.resident(0, 2 << 20);
            assert_eq!(cached, pass == passes[0] || !direct, "{pass}");
            if pass == passes[1] {
                s.inner.direct_ok.store(false, Ordering::Relaxed);
            }
        }
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
