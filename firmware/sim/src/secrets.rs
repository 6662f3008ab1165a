//! The simulated secret store: one file per slot in `<state>/secrets/`.
//!
//! Each write replaces its file atomically ([`super::files::atomic_write`]),
//! which is what keeps the failed-PIN counter honest across a SIGKILL.
//! Erase overwrites the file's bytes with zeros and fsyncs before removing
//! it: on a real flash part the board does the equivalent; on a host file
//! system this is best effort (copy-on-write file systems may keep old
//! blocks), which is acceptable for a simulator.

use std::io::Write;
use std::path::{Path, PathBuf};

use mgear_firmware::hal::{HwError, SecretSlot, SecretStore};

use crate::files::{
    atomic_write, private_dir, private_options, read_optional, remove_durable, tighten,
};

/// Secret slots as files in a directory.
pub struct FileSecrets {
    dir: PathBuf,
}

impl FileSecrets {
    /// Use (creating if needed) directory `dir`: private (0700), its slot
    /// files 0600 (files left looser by an older simulator are tightened).
    pub fn open(dir: &Path) -> Result<FileSecrets, HwError> {
        private_dir(dir)
            .map_err(|e| HwError::Io(format!("state directory {}: {e}", dir.display())))?;
        let s = FileSecrets {
            dir: dir.to_path_buf(),
        };
        for slot in SecretSlot::ALL {
            tighten(&s.path(slot)).map_err(|e| io(slot, e))?;
        }
        Ok(s)
    }

    fn path(&self, slot: SecretSlot) -> PathBuf {
        self.dir.join(slot.name())
    }
}

fn io(slot: SecretSlot, e: std::io::Error) -> HwError {
    HwError::Io(format!("secret slot {}: {e}", slot.name()))
}

impl SecretStore for FileSecrets {
    fn read(&mut self, slot: SecretSlot) -> Result<Option<Vec<u8>>, HwError> {
        read_optional(&self.path(slot)).map_err(|e| io(slot, e))
    }

    fn write(&mut self, slot: SecretSlot, value: &[u8]) -> Result<(), HwError> {
        atomic_write(&self.path(slot), value).map_err(|e| io(slot, e))
    }

    fn erase(&mut self, slot: SecretSlot) -> Result<(), HwError> {
        let path = self.path(slot);
        if let Ok(meta) = std::fs::symlink_metadata(&path).and_then(|m| {
            if m.file_type().is_symlink() {
                Err(std::io::Error::other("symlink"))
            } else {
                Ok(m)
            }
        }) {
            let mut f = private_options()
                .write(true)
                .open(&path)
                .map_err(|e| io(slot, e))?;
            let len = usize::try_from(meta.len()).unwrap_or(0);
            f.write_all(&vec![0u8; len]).map_err(|e| io(slot, e))?;
            f.sync_all().map_err(|e| io(slot, e))?;
        }
        remove_durable(&path).map_err(|e| io(slot, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_separate_files_and_erase_removes() {
        let dir = std::env::temp_dir().join(format!("mgear-hw-secrets-{}", std::process::id()));
        let mut s = FileSecrets::open(&dir).unwrap();
        {
            use std::os::unix::fs::MetadataExt;
            assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        }
        for slot in SecretSlot::ALL {
            assert_eq!(s.read(slot).unwrap(), None);
        }
        s.write(SecretSlot::PinHash, b"hash-1").unwrap();
        s.write(SecretSlot::State, b"state").unwrap();
        s.write(SecretSlot::PinHash, b"hash-2").unwrap();
        {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(dir.join("pin")).unwrap();
            assert_eq!(m.mode() & 0o777, 0o600);
        }
        assert_eq!(s.read(SecretSlot::PinHash).unwrap().unwrap(), b"hash-2");
        s.erase(SecretSlot::PinHash).unwrap();
        s.erase(SecretSlot::Identity).unwrap();
        assert_eq!(s.read(SecretSlot::PinHash).unwrap(), None);
        assert_eq!(s.read(SecretSlot::State).unwrap().unwrap(), b"state");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
