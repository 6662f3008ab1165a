//! The simulated medium: a raw image file standing in for the board's SD
//! card behind USB mass storage. Block-addressed like the real device so the
//! firmware core cannot tell the difference.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use mgear_firmware::hal::{BlockDevice, HwError};

/// Block size of the simulated medium (that of an SD card).
pub const BLOCK_SIZE: usize = 512;

/// A medium image file as a block device.
pub struct FileMedium {
    file: File,
    blocks: u64,
}

impl FileMedium {
    /// Open `path` read-write. Its size must be a non-zero multiple of
    /// [`BLOCK_SIZE`] (as every real block device's is).
    pub fn open(path: &Path) -> Result<FileMedium, HwError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| HwError::Io(format!("opening medium {}: {e}", path.display())))?;
        let len = file
            .metadata()
            .map_err(|e| HwError::Io(format!("medium {}: {e}", path.display())))?
            .len();
        if len == 0 || !len.is_multiple_of(BLOCK_SIZE as u64) {
            return Err(HwError::Io(format!(
                "medium {} is {len} bytes: it must be a non-zero multiple of {BLOCK_SIZE} \
                 (make one with e.g. `mkfs.fat -F 32 -C medium.img 131072`)",
                path.display()
            )));
        }
        Ok(FileMedium {
            file,
            blocks: len / BLOCK_SIZE as u64,
        })
    }

    fn range(&self, lba: u64, len: usize) -> Result<u64, HwError> {
        if !len.is_multiple_of(BLOCK_SIZE) {
            return Err(HwError::Io(format!(
                "transfer of {len} bytes is not whole blocks"
            )));
        }
        let n = (len / BLOCK_SIZE) as u64;
        match lba.checked_add(n) {
            Some(end) if end <= self.blocks => Ok(lba * BLOCK_SIZE as u64),
            _ => Err(HwError::OutOfRange),
        }
    }
}

impl BlockDevice for FileMedium {
    fn block_size(&self) -> usize {
        BLOCK_SIZE
    }

    fn block_count(&self) -> u64 {
        self.blocks
    }

    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), HwError> {
        let off = self.range(lba, buf.len())?;
        self.file
            .read_exact_at(buf, off)
            .map_err(|e| HwError::Io(format!("medium read at byte {off}: {e}")))
    }

    fn write_blocks(&mut self, lba: u64, data: &[u8]) -> Result<(), HwError> {
        let off = self.range(lba, data.len())?;
        self.file
            .write_all_at(data, off)
            .map_err(|e| HwError::Io(format!("medium write at byte {off}: {e}")))
    }

    fn flush(&mut self) -> Result<(), HwError> {
        self.file
            .sync_data()
            .map_err(|e| HwError::Io(format!("medium flush: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_and_range_is_checked() {
        let dir = std::env::temp_dir().join(format!("mgear-hw-medium-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m.img");
        std::fs::write(&p, vec![0u8; 8 * BLOCK_SIZE]).unwrap();
        let mut m = FileMedium::open(&p).unwrap();
        assert_eq!(m.block_count(), 8);
        let data: Vec<u8> = (0..2 * BLOCK_SIZE).map(|i| (i % 251) as u8).collect();
        m.write_blocks(6, &data).unwrap();
        m.flush().unwrap();
        let mut back = vec![0u8; 2 * BLOCK_SIZE];
        m.read_blocks(6, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(m.write_blocks(7, &data), Err(HwError::OutOfRange));
        assert_eq!(m.read_blocks(u64::MAX, &mut back), Err(HwError::OutOfRange));
        assert!(m.read_blocks(0, &mut [0u8; 100]).is_err());

        std::fs::write(&p, vec![0u8; 1000]).unwrap();
        assert!(FileMedium::open(&p).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
