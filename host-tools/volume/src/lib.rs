//! The target-volume seam: one trait, [`Volume`], for every disk that ingest
//! and sync write a verified capture into, and its implementations.
//!
//! The pipeline above the trait (decrypt, authenticate, write, read back,
//! resume state) is written once, in `mgear`'s ingest and sync; everything a
//! kind of target needs (how it is created, named while unfinished, made
//! durable, and made final) lives below it, here:
//!
//! | volume | module | writes into |
//! |---|---|---|
//! | raw image file (sparse, private `.partial`, renamed when verified) | [`file`] | the file |
//! | block device (marker in the state dir until verified) | [`file`] | the device |
//! | NBD export (`WRITE_ZEROES` keeps thin exports thin) | [`nbd`] | the export |
//! | qcow2 image (served by `qemu-nbd` on a unix socket) | [`qcow2`] | the image, through NBD |
//! | Ceph RBD image (librbd in the process, loaded at run time; many requests in flight) | [`rbd`] | the image |
//! | libvirt pool volume (`virsh vol-create-as`) | [`libvirt`] | the volume's host path |
//! | fake that fails at its N-th write (fault tests) | [`fake`] | memory |
//! | AWS EBS snapshot (EBS direct APIs, 512 KiB blocks, no read-back) | [`ebs`] | the snapshot |
//!
//! No volume stages a raw copy anywhere: local scratch is O(one batch of
//! chunks) whatever the volume size.
//!
//! Contract (what the pipeline relies on):
//! - writes are positional and idempotent (the same bytes at the same offset
//!   may be written again after a resume);
//! - after [`Volume::flush`] returns, every completed write is durable;
//! - [`Volume::write_zeroes`] leaves the range reading as zeros and keeps a
//!   thin target thin where the backend allows (hole punch, NBD
//!   `WRITE_ZEROES`);
//! - [`Volume::finish`] is called only after the read-back check passed, and
//!   is what makes the volume look complete (rename, marker removed).
//!   Dropping a volume without `finish` leaves it unfinished and resumable.
//!
//! The other positional block I/O traits have different contracts and stay
//! where they are: `mgear::source::Source` (what capture reads: read-only,
//! may shrink under us, reports holes), `mgear_boot::ReadAt` (inspection
//! reads of an image or export), `mgear_nbd_proto::BlockBackend` (what our NBD
//! server exports: `Sync`, shared by connections), the FAT medium's
//! `image_format::store::FatDevice` (`Read + Write + Seek`: a byte stream
//! holding a FAT32 volume) and the firmware's `hal::BlockDevice` (whole
//! blocks, `no_std`). Ingest and sync
//! targets, the one writable-target contract, are only this trait.

use std::path::PathBuf;

/// `eprintln!` that never panics: std's panics when standard error is gone
/// (`mgear capture ... 2>&1 | head -1`), which stopped a set capture between
/// two disks. A message that cannot be written is lost; the work goes on.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr(), $($arg)*);
    }};
}

pub mod ebs;
pub mod fake;
pub mod file;
mod librbd;
pub mod libvirt;
mod marker;
pub mod nbd;
pub mod qcow2;
pub mod rbd;
mod tool;

pub use ebs::{EbsOptions, EbsSnapshotVolume};
pub use fake::FakeVolume;
pub use file::{
    absolute_key, device_identity, read_only_device, same_device, DeviceVolume, FileVolume,
    RawReader,
};
pub use libvirt::LibvirtVolume;
pub use nbd::NbdVolume;
pub use qcow2::Qcow2Volume;
pub use rbd::{Existing, RbdReader, RbdSpec, RbdVolume};

/// The tools and libraries a target of kind `scheme` (`qcow2`, `libvirt`, `rbd`, `cinder`;
/// others need none) uses on this host, checked without touching any volume: a machine
/// set's ingest checks every disk's before it writes the first (a missing `qemu-img` was
/// found at disk 1, after disk 0 was written whole).
pub fn tools_for(scheme: &str) -> Result<()> {
    match scheme {
        "qcow2" => {
            tool::require("qemu-img", "qemu-utils")?;
            tool::require("qemu-nbd", "qemu-utils").map(drop)
        }
        "libvirt" => tool::require("virsh", "libvirt-clients").map(drop),
        "rbd" | "cinder" => librbd::loadable(),
        _ => Ok(()),
    }
}

/// Everything that can go wrong with a target volume.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operator asked for something this volume cannot do as given
    /// (it exists without `--force`, too small, not a block device, ...).
    #[error("{0}")]
    Usage(String),
    /// Reading, writing or creating the volume failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The NBD export failed or refused.
    #[error("NBD target {url}: {source}")]
    Nbd {
        url: String,
        #[source]
        source: Box<mgear_nbd::Error>,
    },
    /// A volume that cannot be written (a read-only export).
    #[error("{0} is read-only: give a writable target")]
    ReadOnly(String),
    /// An external tool (qemu-img, qemu-nbd, virsh) is missing or failed, or
    /// a service it needs is not running.
    #[error("{0}")]
    Tool(String),
    /// A librados or librbd call failed: which call, on what, its negative errno and what
    /// that means for the operator.
    #[error("{call} {what}: {meaning}")]
    Ceph {
        call: &'static str,
        what: String,
        errno: i32,
        meaning: String,
    },
    /// [`FakeVolume`]'s injected fault.
    #[error("injected fault: write number {0} fails")]
    Injected(u64),
}

impl Error {
    fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// True for errors the operator fixes by changing the command line
    /// (the CLI maps them to its usage exit code).
    pub fn is_usage(&self) -> bool {
        use nix::errno::Errno;
        let settings = |errno: i32, call: &str| {
            let e = Errno::from_raw(errno.saturating_neg());
            // Capabilities, pool, conf and keyring are the operator's settings.
            matches!(e, Errno::EPERM | Errno::EACCES)
                || (e == Errno::ENOENT
                    && matches!(
                        call,
                        "rados_ioctx_create" | "rados_conf_read_file" | "rados_connect"
                    ))
        };
        match self {
            Error::Usage(_) => true,
            Error::Ceph { errno, call, .. } => settings(*errno, call),
            _ => false,
        }
    }

    /// True when the storage does not offer what was asked (an OSD that
    /// refuses the checksum operation): the caller takes another way.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Error::Ceph { errno, .. } if *errno == -(nix::errno::Errno::EOPNOTSUPP as i32))
    }
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// What a volume found when it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Nothing of an earlier run: the pipeline starts at chunk one.
    New,
    /// An unfinished write of an earlier run, which the pipeline may resume
    /// from its state file. `adopt_without_state` is false where the volume
    /// holds decrypted data in a file of ours (`.partial`): without the
    /// state nothing vouches for it, so the pipeline refuses to adopt it.
    Unfinished { adopt_without_state: bool },
}

/// What the pipeline tells a volume when opening it.
#[derive(Debug, Clone)]
pub struct Prepare {
    /// Bytes of the disk being written; the volume must hold at least this.
    pub disk_size: u64,
    /// Length of the region written last (chunk 0: partition table, boot
    /// sector). A volume that may hold old data clears it when it starts
    /// new, so the volume never looks bootable before it is complete.
    pub head_len: u64,
    /// Private directory (0700) for markers and sockets.
    pub state_dir: PathBuf,
    /// Replace an existing finished target.
    pub force: bool,
    /// One line saying what is being written (goes into markers).
    pub what: String,
}

/// What a finished volume became.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Finished {
    /// The local file or device now holding the disk, if there is one
    /// (for `--adapt` and `--boot`).
    pub path: Option<PathBuf>,
    /// Its format for QEMU tools: `raw` or `qcow2`.
    pub format: &'static str,
    /// A volume identity worth reporting (a libvirt volume's host path).
    pub volume: Option<String>,
}

/// Hints that let the pipeline drive a volume well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Preferred write size and alignment in bytes (a power of two; 512 KiB
    /// for EBS direct APIs). Writes of other sizes must still work.
    pub block: u32,
    /// How many writes the backend can usefully have in flight at once; a
    /// latency-bound backend (Ceph RBD) overrides [`Volume::write_batch`]
    /// and says how deep it goes. 1 = no gain from batching.
    pub max_in_flight: usize,
    /// Where [`Volume::write_zeroes`] keeps a range thin (a hole, a zero
    /// cluster) in units of this many bytes: the pipeline sends each aligned
    /// unit of zeros inside the data it writes as `write_zeroes`, not as
    /// bytes. `None` (the default): data goes as it is (zeros of a device
    /// would be read first, an upload or a 512 KiB EBS block is one unit).
    pub thin_granule: Option<u64>,
}

/// [`Geometry::thin_granule`] of sparse files and qcow2 images: a qcow2
/// image's default cluster size, and 16 of a file system's 4 KiB blocks
/// (a hole punched per 4 KiB would fragment the file and cost a system
/// call per block).
pub const THIN_GRANULE: u64 = 64 * 1024;

impl Default for Geometry {
    fn default() -> Self {
        Geometry {
            block: 4096,
            max_in_flight: 1,
            thin_granule: None,
        }
    }
}

/// One write of a batch: bytes at an offset.
#[derive(Debug, Clone, Copy)]
pub struct WriteAt<'a> {
    pub offset: u64,
    pub data: &'a [u8],
}

/// One read of a batch: fill `buf` from `offset`.
#[derive(Debug)]
pub struct ReadAt<'a> {
    pub offset: u64,
    pub buf: &'a mut [u8],
}

/// A writable target volume. See the module doc for the contract.
pub trait Volume: Send {
    /// Usable size in bytes (may exceed the disk: a larger cloud volume
    /// keeps its tail).
    fn size(&self) -> u64;

    /// Human description for messages (`file:web01.raw`, an NBD URL, ...).
    fn describe(&self) -> String;

    /// A stable name for this target's resume state in the state dir.
    fn state_key(&self) -> String;

    /// Whether an earlier run left an unfinished write here.
    fn found(&self) -> Found;

    /// Whether the volume is written under a name of its own until
    /// [`finish`](Self::finish) (`NAME.partial`): it can never be taken for a
    /// finished disk, so its boot sector need not wait for every other chunk
    /// (a capture spanning media that arrive one by one writes it with the
    /// medium that holds it).
    fn unfinished_by_name(&self) -> bool {
        false
    }

    /// Transfer hints; see [`Geometry`].
    fn geometry(&self) -> Geometry {
        Geometry::default()
    }

    /// Write `data` at `offset`.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()>;

    /// Write a batch; it is complete (not necessarily durable) when this
    /// returns. Backends with deep queues issue the writes concurrently;
    /// the default writes them one after the other.
    fn write_batch(&mut self, writes: &[WriteAt<'_>]) -> Result<()> {
        for w in writes {
            self.write_at(w.offset, w.data)?;
        }
        Ok(())
    }

    /// Make `[offset, offset+len)` read as zeros, keeping thin targets thin.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()>;

    /// Whether this volume was made by this run and reads as zeros wherever it has not been
    /// written (a new sparse file, a new qcow2 image without a backing file): the zero
    /// chunks of a disk need no write at all. Writing them anyway cost a qcow2 image an L2
    /// table entry per cluster (a 1 TiB disk holding 1 MiB became a 135 MB image in 99 s).
    /// `false` (the default) for anything that may hold old data.
    fn fresh_reads_zero(&self) -> bool {
        false
    }

    /// Make every completed write durable.
    fn flush(&mut self) -> Result<()>;

    /// Whether [`read_at`](Self::read_at) returns what is on the volume.
    /// A volume that cannot read back (EBS direct APIs) says false; ingest
    /// then relies on what it authenticated and sent.
    fn can_read_back(&self) -> bool {
        true
    }

    /// Fill `buf` from `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// Read a batch (the read-back check). Backends with deep queues issue
    /// the reads concurrently, as they do writes; the default reads them one
    /// after the other.
    fn read_batch(&mut self, reads: &mut [ReadAt<'_>]) -> Result<()> {
        for r in reads {
            self.read_at(r.offset, r.buf)?;
        }
        Ok(())
    }

    /// Whether the range is known to read as zeros without reading it (a
    /// hole); `false` when unknown.
    fn reads_as_zeros(&mut self, _offset: u64, _len: u64) -> bool {
        false
    }

    /// A second, independent reader of this volume for the read-back check,
    /// so that it can run beside the writes (batch k is verified while batch
    /// k+1 is written) instead of after all of them. `None` (the default):
    /// the pipeline reads back through [`Volume::read_batch`] once everything
    /// is written. See [`VolumeReader`] for what a reader promises. Drop it
    /// before [`Volume::finish`].
    fn concurrent_reader(&mut self) -> Result<Option<Box<dyn VolumeReader>>> {
        Ok(None)
    }

    /// Make the verified volume final (rename, marker removed, helper
    /// processes stopped). Called once, after the read-back check passed.
    fn finish(self: Box<Self>) -> Result<Finished>;

    /// The pipeline stopped before writing anything (its resume state could
    /// not be created, say): undo what opening a [`Found::New`] volume
    /// created (a new `.partial`, pool volume or marker), so a re-run does
    /// not meet an unfinished volume nothing vouches for. A volume an
    /// earlier run left is kept. The default keeps everything.
    fn discard(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// A range's digest computed where the volume keeps its bytes (see
/// [`VolumeReader::stored_digests`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredDigest {
    /// Volume offset of the range.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// Filled in: `None` when nothing is stored there (the range reads as
    /// zeros); `Some((n, h))` when the volume holds the range's first `n`
    /// bytes (the rest reads as zeros) and `h` is their [`DigestHasher`] digest.
    pub stored: Option<(u64, u64)>,
}

/// The digest of [`StoredDigest`]: XXH64 with seed 0, the checksum Ceph's
/// OSDs compute over an object range. Not a cryptographic hash, and it need
/// not be one: it compares bytes just written (and authenticated on the way)
/// with what the storage holds, as a read-back compare would.
#[derive(Clone)]
pub struct DigestHasher(xxhash_rust::xxh64::Xxh64);

impl DigestHasher {
    pub fn new() -> Self {
        DigestHasher(xxhash_rust::xxh64::Xxh64::new(0))
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(&self) -> u64 {
        self.0.digest()
    }
}

impl Default for DigestHasher {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads a volume while its [`Volume`] writes it (see
/// [`Volume::concurrent_reader`]): the read-back check's own way to the bytes.
///
/// Contract: a read sent after [`Volume::flush`] returned sees every write
/// completed before that flush (a reader that
/// [`sees_completed_writes`](Self::sees_completed_writes) sees every write
/// completed before the read was sent, flushed or not), and it is served
/// from where the volume keeps its data (the image, the cluster), never from
/// a cache of the writer's or from the pipeline's buffers: the read-back is
/// the proof that the bytes are on the volume.
pub trait VolumeReader: Send {
    /// Whether a read sees every write that completed before it was sent,
    /// without a [`Volume::flush`] between them: the writes went straight to
    /// the device (`O_DIRECT`), so what it returns is what the volume holds.
    /// The pipeline then flushes only where durability is due (its resume
    /// checkpoints and the end), not before every read-back. `false` (the
    /// default): a writer-side cache may hold completed writes until a flush.
    fn sees_completed_writes(&self) -> bool {
        false
    }

    /// Read a batch (reads may be issued concurrently).
    fn read_batch(&mut self, reads: &mut [ReadAt<'_>]) -> Result<()>;

    /// As [`Volume::reads_as_zeros`]: the range is known to read as zeros
    /// (a hole) without reading it; `false` when unknown.
    fn reads_as_zeros(&mut self, _offset: u64, _len: u64) -> bool {
        false
    }

    /// When the volume's storage can digest what it holds
    /// ([`stored_digests`](Self::stored_digests)): the ranges given must not
    /// cross a multiple of this (an RBD object). `None` (the default): read
    /// the bytes back.
    fn digest_unit(&mut self) -> Option<u64> {
        None
    }

    /// Has the storage digest each range where it keeps the bytes (the OSDs
    /// of a Ceph cluster): the read-back check without the bytes crossing
    /// the network. The same contract as a read: it sees every write
    /// completed before the last flush, from where the data is kept.
    fn stored_digests(&mut self, _digests: &mut [StoredDigest]) -> Result<()> {
        Err(Error::Usage(
            "this volume cannot digest what it stores: read it back".into(),
        ))
    }
}

/// A name safe as one file name in the state dir, derived from `s`: its
/// readable part (what a person looking at the state dir recognises) and a
/// hash of all of `s`, so that two volumes never share one name (`/a/b_c` and
/// `/a/b/c` once both became `a_b_c`, and one ingest then overwrote and
/// deleted the other's resume state).
pub fn key_of(s: &str) -> String {
    let readable: String = s
        .trim_start_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // The file name stays far below NAME_MAX (255) whatever the path: keep its end (the
    // volume's own name) when it is long.
    let tail = readable.len().saturating_sub(120);
    format!("{}-{}", &readable[tail..], short_hash(s))
}

/// A short hash of `s` for names that must stay short (sockets).
fn short_hash(s: &str) -> String {
    blake3::hash(s.as_bytes()).to_hex()[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_single_file_names() {
        assert!(key_of("/a/b c/d.raw").starts_with("a_b_c_d.raw-"));
        assert_ne!(key_of("/t/p/q.raw"), key_of("/t/p_q.raw"));
        assert_eq!(key_of("/t/p/q.raw"), key_of("/t/p/q.raw"));
        let long = format!("/{}/vol.raw", "d".repeat(400));
        assert!(key_of(&long).len() < 160 && key_of(&long).contains("vol.raw-"));
        assert!(!key_of("nbd+unix:///x?socket=/s").contains('/'));
        assert_eq!(short_hash("x").len(), 16);
        assert_ne!(short_hash("x"), short_hash("y"));
    }
}
