//! Durable files in the simulator's state directory.
//!
//! The simulator may be killed with SIGKILL at any instant (the tests do it
//! on purpose: that is the simulated power cut), so every state file is
//! either replaced whole or appended to:
//!
//! - [`atomic_write`] writes `NAME.tmp`, fsyncs it, renames it over `NAME`
//!   and fsyncs the directory. A reader sees the old or the new content,
//!   never a mix; a left-over `NAME.tmp` is simply overwritten next time.
//! - [`AppendFile`] appends and fsyncs before returning. A torn last append
//!   is possible; the owner of the content (the firmware's custody log)
//!   detects it by its own framing and truncates it away with
//!   [`AppendFile::truncate`].

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Replace `path` with `data` atomically and durably.
pub fn atomic_write(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}

/// Read `path` whole, or `Ok(None)` if it does not exist.
pub fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Remove `path` durably (Ok if it does not exist).
pub fn remove_durable(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_parent(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// An append-only file whose every append is durable when it returns.
pub struct AppendFile {
    file: File,
}

impl AppendFile {
    /// Open (creating if needed) `path` for appending.
    pub fn open(path: &Path) -> io::Result<AppendFile> {
        let created = !path.exists();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        if created {
            sync_parent(path)?;
        }
        Ok(AppendFile { file })
    }

    /// Whole current content.
    pub fn read_all(&mut self) -> io::Result<Vec<u8>> {
        use std::io::Seek;
        self.file.seek(io::SeekFrom::Start(0))?;
        let mut v = Vec::new();
        self.file.read_to_end(&mut v)?;
        Ok(v)
    }

    /// Append `data` and make it durable.
    pub fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.file.sync_data()
    }

    /// Cut the file to `len` bytes (drops a torn tail found on recovery).
    pub fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.file.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_and_ignores_stale_tmp() {
        let dir = std::env::temp_dir().join(format!("mgear-hw-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("SECRETS");
        assert_eq!(read_optional(&p).unwrap(), None);
        // A crash between write and rename leaves a half-written .tmp behind.
        std::fs::write(tmp_path(&p), b"half").unwrap();
        atomic_write(&p, b"first").unwrap();
        atomic_write(&p, b"second, longer").unwrap();
        assert_eq!(read_optional(&p).unwrap().unwrap(), b"second, longer");
        assert!(!tmp_path(&p).exists());
        remove_durable(&p).unwrap();
        remove_durable(&p).unwrap();
        assert_eq!(read_optional(&p).unwrap(), None);

        let lp = dir.join("LOG");
        let mut log = AppendFile::open(&lp).unwrap();
        log.append(b"abc").unwrap();
        log.append(b"def").unwrap();
        assert_eq!(log.read_all().unwrap(), b"abcdef");
        log.truncate(4).unwrap();
        log.append(b"Z").unwrap();
        drop(log);
        let mut log = AppendFile::open(&lp).unwrap();
        assert_eq!(log.read_all().unwrap(), b"abcdZ");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
