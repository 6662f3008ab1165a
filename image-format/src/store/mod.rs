//! The medium as the format sees it: a small file store.
//!
//! Every implementation of the medium (a mounted directory, a FAT32 image or
//! device opened with `fatfs`, the appliance's FAT32 medium reached over NBD,
//! the firmware's own view of its storage) implements this one trait, so the
//! writer, the keyless verifier and the keyed reader are written once.
//!
//! Paths are `/`-separated and relative to the medium root (`""` is the root),
//! e.g. `captures/web01/g0001/SEG-00000`. Names are ASCII, at most 8.3-safe
//! where the format chooses them, so FAT32 long-name support is not required.

#[cfg(feature = "std")]
pub mod aligned;
#[cfg(feature = "std")]
pub mod dir;
#[cfg(feature = "fat")]
pub mod direct;
#[cfg(feature = "fat")]
pub mod fat;
pub mod fatmap;
pub mod mem;

#[cfg(feature = "std")]
pub use dir::DirStore;
#[cfg(feature = "fat")]
pub use direct::DirectFile;
#[cfg(feature = "fat")]
pub use fat::{FatDevice, FatStore, FlushIsDurable};
pub use mem::MemStore;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

/// Why a store operation failed. Kept small and `no_std`: the host turns it
/// into a message with context, the firmware into a console error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The path does not exist.
    NotFound,
    /// The medium has no space left for this write.
    NoSpace,
    /// The medium (or this path) is read-only, e.g. a sealed appliance.
    ReadOnly,
    /// The file system on the medium is damaged where this path lies (a cluster chain that is
    /// short, loops or leaves the volume): a finding about the medium, not a device that
    /// failed to answer, so a check of the whole medium reports it and goes on.
    Damaged(String),
    /// Anything else, with a human-readable description.
    Io(String),
}

impl core::fmt::Display for StoreError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StoreError::NotFound => f.write_str("not found"),
            StoreError::NoSpace => f.write_str("no space left on the medium"),
            StoreError::ReadOnly => f.write_str("the medium is read-only"),
            StoreError::Io(m) | StoreError::Damaged(m) => f.write_str(m),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for StoreError {}

/// Kind of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
}

/// One directory entry as returned by [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub kind: EntryKind,
    /// File size in bytes (0 for directories).
    pub len: u64,
}

/// Reads a medium's device straight into the caller's buffers, from any
/// thread: what [`Store::locate`] hands out so a reader fetches records on
/// its decrypting threads into buffers that then go on to the volume, with
/// no copy on the way (the FAT store's own reads go through a read-ahead
/// window and copy out of it).
pub trait RangeRead: Send + Sync {
    /// Fills `buf` from device byte `at`. `at`, `buf.len()` and `buf`'s
    /// address are multiples of [`crate::CHUNK_ALIGN`]. Returns the bytes
    /// read: fewer than `buf.len()` only at the end of the device.
    fn read_aligned(&self, at: u64, buf: &mut [u8]) -> Result<usize, StoreError>;
}

/// Where a file's byte range lies on the medium's device: one contiguous
/// run starting at device byte `at`, read with `device`.
#[derive(Clone)]
pub struct Located {
    pub device: Arc<dyn RangeRead>,
    pub at: u64,
}

impl core::fmt::Debug for Located {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Located").field("at", &self.at).finish()
    }
}

/// File-level access to a medium.
///
/// Writes are positional so that preallocated segment files can be filled in
/// place and resumed; `sync` must make everything written to `path` (data
/// and size) durable before it returns, because the writer's crash-safety
/// rule (data → index → manifest → journal) relies on it.
pub trait Store {
    /// Entries of directory `dir`; `Err(NotFound)` if it does not exist.
    fn list(&mut self, dir: &str) -> Result<Vec<Entry>, StoreError>;
    /// Size of file `path`, or `Ok(None)` if it does not exist.
    fn len(&mut self, path: &str) -> Result<Option<u64>, StoreError>;
    /// Read up to `buf.len()` bytes at `offset`; returns bytes read (0 at end).
    fn read_at(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError>;
    /// Write all of `data` at `offset`, creating the file if needed and
    /// growing it if the write ends past its end.
    fn write_at(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<(), StoreError>;
    /// Truncate or extend (with zeros) file `path` to `len` bytes, creating it if needed.
    fn set_len(&mut self, path: &str, len: u64) -> Result<(), StoreError>;
    /// Create directory `path` and any missing parents; Ok if it exists.
    fn create_dir_all(&mut self, path: &str) -> Result<(), StoreError>;
    /// Rename file `from` to `to` (same directory). If `to` exists it is
    /// replaced: atomically on `DirStore`, but as remove-then-rename on FAT,
    /// so formats must not rely on atomic replacement (use A/B slots).
    fn rename(&mut self, from: &str, to: &str) -> Result<(), StoreError>;
    /// Remove a file (Ok if missing).
    fn remove_file(&mut self, path: &str) -> Result<(), StoreError>;
    /// Remove an empty directory (Ok if missing). The default suits FAT
    /// stores, whose file removal also removes an empty directory; stores
    /// that keep directories apart (a mounted directory, memory) override it.
    /// `mgear medium rm` needs it to leave no empty generation behind.
    fn remove_dir(&mut self, path: &str) -> Result<(), StoreError> {
        self.remove_file(path)
    }
    /// Make all writes to `path` durable (data and metadata).
    fn sync(&mut self, path: &str) -> Result<(), StoreError>;
    /// Free bytes left on the medium, if known.
    fn free_space(&mut self) -> Result<Option<u64>, StoreError>;
    /// [`Store::free_space`] once a resume of capture `name` cut what it wrote past its last
    /// checkpoint ([`crate::medium::cut_uncommitted`]): what the plan of that resume counts (a
    /// second medium after "medium full" was called too small, and the capture then fitted).
    /// A span counts it medium by medium, each less its reserve.
    fn free_space_resuming(&mut self, name: &str) -> Result<Option<u64>, StoreError> {
        let free = self.free_space()?;
        // Unreadable: nothing counted back (the plan errs on the side of "does not fit").
        let back = crate::medium::uncommitted_bytes(self, name).unwrap_or(0);
        Ok(free.map(|f| f.saturating_add(back)))
    }
    /// Bytes of the medium's file system in use, if known (a FAT volume's allocated
    /// clusters): a medium whose directories list nothing while much is in use has a
    /// damaged directory, not no captures. `None` (the default): not known.
    fn used_space(&mut self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
    /// Damage in the medium's file system itself that reading the files does not meet (a
    /// FAT volume whose two FAT copies disagree), as findings for a check of the whole
    /// medium. Empty (the default): nothing to say.
    fn file_system_findings(&mut self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
    /// Directories in directory `under` whose entry is gone, on a medium closed cleanly (a FAT volume's
    /// chains that nothing holds, `fatmap::lost_chains`), each as the names of the entries
    /// its first cluster holds: a generation's directory deleted since hides it, and a
    /// reader would take the one before it as the newest. Empty (the default): none, or not
    /// known.
    fn lost_dirs(&mut self, _under: &str) -> Result<Vec<Vec<String>>, StoreError> {
        Ok(Vec::new())
    }
    /// Clusters no file or directory holds on a medium closed cleanly, said as the finding a
    /// check of the whole medium makes of them: entries deleted or damaged since (a
    /// generation's files gone from its directory leave it looking like a capture stopped
    /// before its MANIFEST). `None` (the default): none, or not known.
    fn lost_clusters(&mut self) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
    /// What a writer checks before it writes (`fatmap::writer_findings`): the file system's
    /// cluster chains as [`Store::file_system_findings`] says them, without reading both
    /// whole FATs to compare them, and a chain that leaves the volume, loops or ends before
    /// its size (a reader meets those where it reads the file; a writer must not write on
    /// top of them). Empty (the default): nothing to say.
    fn chain_findings(&mut self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
    /// The medium was left mid-write by a run that was cut off (a FAT volume's dirty mark
    /// was set when it was opened): a command that does not write it says how to put it
    /// right. `false` (the default): nothing to say.
    fn left_mid_write(&self) -> bool {
        false
    }
    /// What the open found damaged in the file system's free-space hints (FAT32's FSInfo
    /// sector), read around or rewritten, for `medium fsck` to say. `None` (the default):
    /// nothing.
    fn damaged_hints(&self) -> Option<String> {
        None
    }
    /// How many more bytes file `path` may grow by, when something other
    /// than the format's own limits bounds it: a span of several media
    /// ([`crate::span::SpanStore`]) says how much room the medium holding a
    /// segment has left, and the writer closes the segment there and
    /// continues on the next medium. `None` (the default): no such bound.
    fn room(&mut self, _path: &str) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
    /// Flush and release the medium, reporting what only closing reveals: a FAT volume
    /// writes its free-cluster count and clears its dirty flag here, a span closes every
    /// medium it holds. Whoever opened a store closes it this way, whatever its type. The
    /// default suits stores whose writes are durable once synced (a directory, memory, a
    /// borrowed store): nothing is left to do.
    fn close(self: Box<Self>) -> Result<(), StoreError> {
        Ok(())
    }
    /// The span this store is (several media seen as one), to list its members and what is
    /// not attached; `None` (the default) for one medium.
    fn span(&self) -> Option<&dyn crate::span::SpanView> {
        None
    }

    /// Where bytes `offset..offset + len` of file `path` lie on the device,
    /// when they lie in one run of it and the device can be read from other
    /// threads with nothing written but not yet readable there (a FAT image
    /// or device: see [`RangeRead`]). `None` (the default): read through
    /// [`read_at`](Self::read_at). Valid until the next write to the store.
    fn locate(
        &mut self,
        _path: &str,
        _offset: u64,
        _len: u64,
    ) -> Result<Option<Located>, StoreError> {
        Ok(None)
    }

    /// Read exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let mut done = 0;
        while done < buf.len() {
            let n = self.read_at(path, offset + done as u64, &mut buf[done..])?;
            if n == 0 {
                return Err(StoreError::Io(alloc::format!(
                    "{path}: unexpected end of file at byte {}",
                    offset + done as u64
                )));
            }
            done += n;
        }
        Ok(())
    }
}
