//! `DirStore`: a medium that is a directory of a mounted filesystem
//! (`mgear capture --medium dir:/mnt/appliance`).
//!
//! Paths are resolved below the root and may not escape it. `sync` fsyncs
//! the file and its directory, so a size change or a rename survives power
//! loss, which the format's write order depends on.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::aligned::FileRange;
use super::{Entry, EntryKind, Located, RangeRead, Store, StoreError};

/// A medium rooted at a directory.
#[derive(Debug)]
pub struct DirStore {
    root: PathBuf,
    /// The file [`Store::locate`] last handed out a reader of: consecutive
    /// records mostly lie in one segment file, so it is opened once.
    located: Option<(String, Arc<FileRange>)>,
}

impl DirStore {
    /// Open a directory as a medium; it must exist.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        match fs::metadata(&root) {
            Ok(m) if m.is_dir() => Ok(DirStore {
                root,
                located: None,
            }),
            Ok(_) => Err(StoreError::Io(format!(
                "{} is not a directory: give the mount point of the appliance medium",
                root.display()
            ))),
            // A dir: medium is any directory (a mounted medium, or a plain one for tests and
            // staging): one that is not there yet is made by the operator, not guessed here.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::Io(format!(
                "cannot open medium directory {}: {e}; a dir: medium is an existing directory \
                 (the medium's mount point, or `mkdir -p -- {}` for a new one)",
                root.display(),
                shlex::try_quote(&root.to_string_lossy()).unwrap_or_default()
            ))),
            Err(e) => Err(StoreError::Io(format!(
                "cannot open medium directory {}: {e}",
                root.display()
            ))),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `path` below the root. No part of it may be a symbolic link: a link on a medium (which
    /// whoever carried it may have made) would send reads, and a resume's writes, outside it.
    fn resolve(&self, path: &str) -> Result<PathBuf, StoreError> {
        let rel = Path::new(path);
        let mut at = self.root.clone();
        let mut exists = true;
        for c in rel.components() {
            if !matches!(c, Component::Normal(_)) {
                return Err(StoreError::Io(format!(
                    "invalid medium path {path:?}: only plain relative names are allowed"
                )));
            }
            at.push(c);
            if exists {
                match fs::symlink_metadata(&at) {
                    Ok(m) if m.file_type().is_symlink() => return Err(link(path, &at)),
                    Ok(_) => {}
                    Err(_) => exists = false,
                }
            }
        }
        Ok(at)
    }
}

/// What every refusal of a link, device, FIFO or socket on a `dir:` medium says: mgear never
/// writes one, so it is a finding about the medium (exit 1, as damage is), and the host's
/// next step is to remove it on a copy, not to repair a FAT.
pub const NOT_ON_A_MEDIUM: &str = "a medium directory holds none";

fn link(path: &str, at: &Path) -> StoreError {
    StoreError::Damaged(format!(
        "{path}: {} is a symbolic link, and {NOT_ON_A_MEDIUM} (it may point outside the \
         medium): remove it, or copy the medium without links",
        at.display()
    ))
}

fn special(path: &str) -> StoreError {
    StoreError::Damaged(format!(
        "{path} is not a regular file (a device, FIFO or socket), and {NOT_ON_A_MEDIUM}: \
         remove it"
    ))
}

fn map_err(path: &str, e: std::io::Error) -> StoreError {
    match e.kind() {
        ErrorKind::NotFound => StoreError::NotFound,
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => StoreError::ReadOnly,
        ErrorKind::StorageFull => StoreError::NoSpace,
        _ if e.raw_os_error() == Some(28) => StoreError::NoSpace,
        // ENOTDIR: a file stands where the format has a directory (`MGEAR` itself, a
        // capture's or generation's directory): damage, named, not "Not a directory".
        _ if e.raw_os_error() == Some(20) => StoreError::Damaged(format!(
            "{path}: a file stands where the format has a directory on the way to it (MGEAR, \
             the capture's or the generation's directory)"
        )),
        _ => StoreError::Io(format!("{path}: {e}")),
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Store for DirStore {
    fn list(&mut self, dir: &str) -> Result<Vec<Entry>, StoreError> {
        let p = self.resolve(dir)?;
        let mut out = Vec::new();
        for e in fs::read_dir(&p).map_err(|e| map_err(dir, e))? {
            let e = e.map_err(|e| map_err(dir, e))?;
            let md = e.metadata().map_err(|e| map_err(dir, e))?;
            // A name this format never writes (not UTF-8) is listed by its lossy spelling,
            // which no reader opens: passed over, it hid from `verify` and `medium fsck`.
            let name = e.file_name().to_string_lossy().into_owned();
            // Listed as a file, a linked directory was passed over by verify and followed by
            // ingest: named instead, as every path through it is.
            if md.file_type().is_symlink() {
                return Err(link(&format!("{dir}/{name}"), &e.path()));
            }
            if !md.is_dir() && !md.is_file() {
                return Err(special(&format!("{dir}/{name}")));
            }
            out.push(Entry {
                name,
                kind: if md.is_dir() {
                    EntryKind::Dir
                } else {
                    EntryKind::File
                },
                len: if md.is_dir() { 0 } else { md.len() },
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn len(&mut self, path: &str) -> Result<Option<u64>, StoreError> {
        match fs::metadata(self.resolve(path)?) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(m) if m.is_dir() => Err(StoreError::Damaged(format!(
                "{path} is a directory where the format has a file"
            ))),
            Ok(_) => Err(special(path)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(map_err(path, e)),
        }
    }

    fn read_at(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError> {
        let mut f = File::open(self.resolve(path)?).map_err(|e| map_err(path, e))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| map_err(path, e))?;
        let mut done = 0;
        while done < buf.len() {
            match f.read(&mut buf[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(map_err(path, e)),
            }
        }
        Ok(done)
    }

    fn write_at(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        self.located = None;
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.resolve(path)?)
            .map_err(|e| map_err(path, e))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| map_err(path, e))?;
        f.write_all(data).map_err(|e| map_err(path, e))
    }

    fn set_len(&mut self, path: &str, len: u64) -> Result<(), StoreError> {
        self.located = None;
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.resolve(path)?)
            .map_err(|e| map_err(path, e))?;
        f.set_len(len).map_err(|e| map_err(path, e))
    }

    fn create_dir_all(&mut self, path: &str) -> Result<(), StoreError> {
        let p = self.resolve(path)?;
        fs::create_dir_all(&p).map_err(|e| map_err(path, e))?;
        if let Some(parent) = p.parent() {
            sync_dir(parent).map_err(|e| map_err(path, e))?;
        }
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), StoreError> {
        self.located = None;
        let (a, b) = (self.resolve(from)?, self.resolve(to)?);
        fs::rename(&a, &b).map_err(|e| map_err(from, e))?;
        if let Some(parent) = b.parent() {
            sync_dir(parent).map_err(|e| map_err(to, e))?;
        }
        Ok(())
    }

    fn remove_file(&mut self, path: &str) -> Result<(), StoreError> {
        self.located = None;
        match fs::remove_file(self.resolve(path)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(map_err(path, e)),
        }
    }

    fn remove_dir(&mut self, path: &str) -> Result<(), StoreError> {
        self.located = None;
        let p = self.resolve(path)?;
        match fs::remove_dir(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(map_err(path, e)),
        }
        if let Some(parent) = p.parent() {
            sync_dir(parent).map_err(|e| map_err(path, e))?;
        }
        Ok(())
    }

    fn sync(&mut self, path: &str) -> Result<(), StoreError> {
        let p = self.resolve(path)?;
        let f = File::open(&p).map_err(|e| map_err(path, e))?;
        f.sync_all().map_err(|e| map_err(path, e))?;
        if let Some(parent) = p.parent() {
            sync_dir(parent).map_err(|e| map_err(path, e))?;
        }
        Ok(())
    }

    fn free_space(&mut self) -> Result<Option<u64>, StoreError> {
        let st = rustix::fs::statvfs(&self.root)
            .map_err(|e| StoreError::Io(format!("statvfs {}: {e}", self.root.display())))?;
        Ok(Some(st.f_bavail.saturating_mul(st.f_frsize)))
    }

    /// Every range of a file lies in one run of it: the file itself, read
    /// with `O_DIRECT` where the file system allows (so ingest reads records
    /// straight into the buffers it decrypts in, as from a FAT image). The
    /// kernel writes back cached pages of a range before a direct read of
    /// it, so bytes written through [`Store::write_at`] are seen. A write,
    /// rename or removal drops the cached reader: a renamed-over path names
    /// another file.
    fn locate(
        &mut self,
        path: &str,
        offset: u64,
        _len: u64,
    ) -> Result<Option<Located>, StoreError> {
        let device = match &self.located {
            Some((p, r)) if p == path => Arc::clone(r),
            _ => {
                let f = File::open(self.resolve(path)?).map_err(|e| map_err(path, e))?;
                let r = Arc::new(FileRange::new(&f).map_err(|e| map_err(path, e))?);
                self.located = Some((path.to_owned(), Arc::clone(&r)));
                r
            }
        };
        Ok(Some(Located {
            device: device as Arc<dyn RangeRead>,
            at: offset,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_dir_removes_only_empty_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = DirStore::open(tmp.path()).unwrap();
        s.create_dir_all("MGEAR/web01/G0001").unwrap();
        s.write_at("MGEAR/web01/G0001/JRNL-A", 0, b"j").unwrap();
        assert!(s.remove_dir("MGEAR/web01/G0001").is_err(), "not empty");
        s.remove_file("MGEAR/web01/G0001/JRNL-A").unwrap();
        s.remove_dir("MGEAR/web01/G0001").unwrap();
        assert!(s.list("MGEAR/web01").unwrap().is_empty());
        s.remove_dir("MGEAR/web01/G0001").unwrap();
    }

    #[test]
    fn round_trip_and_listing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = DirStore::open(tmp.path()).unwrap();
        s.create_dir_all("MGEAR/web01").unwrap();
        s.write_at("MGEAR/web01/SEG-00000", 10, b"hello").unwrap();
        assert_eq!(s.len("MGEAR/web01/SEG-00000").unwrap(), Some(15));
        let mut buf = [0u8; 15];
        s.read_exact_at("MGEAR/web01/SEG-00000", 0, &mut buf)
            .unwrap();
        assert_eq!(&buf[10..], b"hello");
        assert_eq!(&buf[..10], &[0u8; 10]);
        s.sync("MGEAR/web01/SEG-00000").unwrap();
        let l = s.list("MGEAR").unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].kind, EntryKind::Dir);
        assert_eq!(s.len("MGEAR/nope").unwrap(), None);
        assert_eq!(s.list("nope"), Err(StoreError::NotFound));
        assert!(s.free_space().unwrap().unwrap() > 0);
    }

    /// What [`Store::locate`] hands out reads the file as written, up to an
    /// unaligned end, and a rename over the path is seen by the next locate.
    #[test]
    fn located_ranges_read_the_file_as_written() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = DirStore::open(tmp.path()).unwrap();
        let data: Vec<u8> = (0..3_000_001u32).map(|i| (i * 7 % 253) as u8).collect();
        s.write_at("SEG", 0, &data).unwrap();
        let align = crate::CHUNK_ALIGN;
        let read = |l: &Located, len: usize| {
            let start = l.at / align as u64 * align as u64;
            let lead = (l.at - start) as usize;
            let mut buf = crate::ChunkBuf::zeroed((lead + len).div_ceil(align) * align);
            let n = l.device.read_aligned(start, &mut buf).unwrap();
            assert!(n >= lead + len, "read {n} of {} bytes", lead + len);
            buf[lead..lead + len].to_vec()
        };
        for (off, len) in [(4173usize, (1usize << 20) + 80), (2_999_990, 11), (0, 1)] {
            let l = s.locate("SEG", off as u64, len as u64).unwrap().unwrap();
            assert!(read(&l, len) == data[off..off + len], "range at {off}");
        }
        // Written after the reader was opened, through another descriptor.
        s.write_at("SEG", 8192, b"fresh").unwrap();
        let l = s.locate("SEG", 8190, 9).unwrap().unwrap();
        assert_eq!(
            read(&l, 9),
            [&data[8190..8192], b"fresh", &data[8197..8199]].concat()
        );
        s.write_at("OTHER", 0, &[5u8; 9000]).unwrap();
        s.rename("OTHER", "SEG").unwrap();
        let l = s.locate("SEG", 4000, 5000).unwrap().unwrap();
        assert_eq!(read(&l, 5000), vec![5u8; 5000]);
        assert_eq!(s.locate("NOPE", 0, 1).unwrap_err(), StoreError::NotFound);
    }

    #[test]
    fn paths_cannot_escape_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = DirStore::open(tmp.path()).unwrap();
        assert!(matches!(s.len("../etc/passwd"), Err(StoreError::Io(_))));
        assert!(matches!(
            s.write_at("/etc/x", 0, b"x"),
            Err(StoreError::Io(_))
        ));
    }

    /// A link on the medium (a capture directory or a file linked to somewhere else): a read
    /// or a resume's write through it would leave the medium. Refused, naming it; a FIFO or a
    /// device is named as what it is (it was "a directory").
    #[test]
    fn links_and_special_files_on_the_medium_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("SEG-00000"), b"outside").unwrap();
        let mut s = DirStore::open(tmp.path()).unwrap();
        s.create_dir_all("MGEAR/web01").unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("MGEAR/web01/G0001")).unwrap();
        for e in [
            s.len("MGEAR/web01/G0001/SEG-00000").unwrap_err(),
            s.write_at("MGEAR/web01/G0001/SEG-00000", 0, b"x")
                .unwrap_err(),
            s.list("MGEAR/web01").unwrap_err(),
        ] {
            assert!(e.to_string().contains("is a symbolic link"), "{e}");
            // Something mgear never writes: a finding about the medium (exit 1), not an
            // unreachable device (exit 3, "reconnect it").
            assert!(matches!(e, StoreError::Damaged(_)), "{e:?}");
        }
        assert_eq!(
            std::fs::read(outside.path().join("SEG-00000")).unwrap(),
            b"outside"
        );
        std::fs::remove_file(tmp.path().join("MGEAR/web01/G0001")).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(tmp.path().join("MGEAR/web01/KEYS"))
            .status()
            .unwrap();
        assert!(made.success());
        let e = s.len("MGEAR/web01/KEYS").unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = s.list("MGEAR/web01").unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn missing_root_is_a_clear_error() {
        let e = DirStore::open("/nonexistent/mgear-medium").unwrap_err();
        assert!(e.to_string().contains("cannot open medium directory"));
        assert!(
            e.to_string()
                .contains("mkdir -p -- /nonexistent/mgear-medium"),
            "{e}"
        );
        // Pasted as printed, the command makes the directory named (it made three).
        let e = DirStore::open("/nonexistent/my medium").unwrap_err();
        assert!(
            e.to_string()
                .contains("mkdir -p -- '/nonexistent/my medium'"),
            "{e}"
        );
    }
}
