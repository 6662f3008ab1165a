//! The simulated custody-log storage: one append-only file,
//! `<state>/custody.log`, fsynced on every append (see [`super::files`]).

use std::os::unix::fs::FileExt;
use std::path::Path;

use mgear_firmware::hal::{HwError, LogStorage};

/// The custody log's bytes in a file.
pub struct FileLog {
    file: std::fs::File,
}

fn io(e: std::io::Error) -> HwError {
    HwError::Io(format!("custody log: {e}"))
}

impl FileLog {
    /// Open (creating if needed) the log file at `path`.
    pub fn open(path: &Path) -> Result<FileLog, HwError> {
        let existed = std::fs::symlink_metadata(path).is_ok();
        super::files::tighten(path).map_err(io)?;
        // 0600 and no following a planted symlink (see `super::files`).
        let file = super::files::private_options()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| {
                io(if e.raw_os_error() == Some(libc::ELOOP) {
                    std::io::Error::other(format!(
                        "{} is a symbolic link; the custody log must be a plain file: remove it",
                        path.display()
                    ))
                } else {
                    e
                })
            })?;
        if !existed {
            // Make the new directory entry durable too.
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(io)?;
            }
        }
        Ok(FileLog { file })
    }
}

impl LogStorage for FileLog {
    fn len(&mut self) -> Result<u64, HwError> {
        Ok(self.file.metadata().map_err(io)?.len())
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, HwError> {
        self.file.read_at(buf, offset).map_err(io)
    }

    fn append(&mut self, data: &[u8]) -> Result<(), HwError> {
        use std::io::Write;
        self.file.write_all(data).map_err(io)?;
        self.file.sync_data().map_err(io)
    }

    fn truncate(&mut self, len: u64) -> Result<(), HwError> {
        self.file.set_len(len).map_err(io)?;
        self.file.sync_all().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_truncate() {
        let dir = std::env::temp_dir().join(format!("mgear-hw-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("custody.log");
        let mut l = FileLog::open(&p).unwrap();
        assert_eq!(l.len().unwrap(), 0);
        l.append(b"hello ").unwrap();
        l.append(b"world").unwrap();
        let mut buf = [0u8; 5];
        assert_eq!(l.read_at(6, &mut buf).unwrap(), 5);
        assert_eq!(&buf, b"world");
        l.truncate(6).unwrap();
        l.append(b"there").unwrap();
        drop(l);
        let mut l = FileLog::open(&p).unwrap();
        assert_eq!(l.len().unwrap(), 11);
        let mut all = [0u8; 11];
        assert_eq!(l.read_at(0, &mut all).unwrap(), 11);
        assert_eq!(&all, b"hello there");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
