//! Byte-granular access to a block device.
//!
//! Block devices (the firmware's `BlockDevice` trait, the board's SD card)
//! move whole blocks; NBD clients and the `fatfs` crate read and write any
//! byte range (a 32-byte directory entry, a 4-byte FAT entry). [`ByteIo`]
//! bridges the two: aligned middles go straight through, partial first and
//! last blocks are read, patched and written back (read-modify-write).
//! The block service behind it still sees every byte that changes.

use std::io::{self, Read, Seek, SeekFrom, Write};

use mgear_firmware::hal::{BlockDevice, HwError};

/// Largest run of whole blocks moved in one device call (bounds the bounce buffer).
const MAX_RUN: usize = 1024 * 1024;

/// A block device seen as a seekable byte stream.
pub struct ByteIo<'a, D> {
    dev: &'a mut D,
    pos: u64,
}

pub(crate) fn hw_to_io(e: HwError) -> io::Error {
    match e {
        HwError::OutOfRange => {
            io::Error::new(io::ErrorKind::UnexpectedEof, "past the end of the medium")
        }
        HwError::WriteProtected => io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the medium is write-protected",
        ),
        HwError::Full => io::Error::new(io::ErrorKind::StorageFull, "storage full"),
        HwError::Io(m) => io::Error::other(m),
    }
}

impl<'a, D: BlockDevice> ByteIo<'a, D> {
    pub fn new(dev: &'a mut D) -> Self {
        ByteIo { dev, pos: 0 }
    }

    /// Size of the device in bytes.
    pub fn size(&self) -> u64 {
        self.dev.block_count() * self.dev.block_size() as u64
    }

    fn check(&self, offset: u64, len: usize) -> io::Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "access at byte {offset} (+{len}) is past the end of the medium ({} bytes)",
                    self.size()
                ),
            )),
        }
    }

    /// Read exactly `buf.len()` bytes at `offset`.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(offset, buf.len())?;
        let bs = self.dev.block_size();
        let mut done = 0usize;
        let mut block = vec![0u8; bs];
        while done < buf.len() {
            let off = offset + done as u64;
            let lba = off / bs as u64;
            let within = (off % bs as u64) as usize;
            let left = buf.len() - done;
            if within == 0 && left >= bs {
                let n = (left / bs * bs).min(MAX_RUN);
                self.dev
                    .read_blocks(lba, &mut buf[done..done + n])
                    .map_err(hw_to_io)?;
                done += n;
            } else {
                self.dev.read_blocks(lba, &mut block).map_err(hw_to_io)?;
                let n = (bs - within).min(left);
                buf[done..done + n].copy_from_slice(&block[within..within + n]);
                done += n;
            }
        }
        Ok(())
    }

    /// Write all of `data` at `offset`.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check(offset, data.len())?;
        let bs = self.dev.block_size();
        let mut done = 0usize;
        let mut block = vec![0u8; bs];
        while done < data.len() {
            let off = offset + done as u64;
            let lba = off / bs as u64;
            let within = (off % bs as u64) as usize;
            let left = data.len() - done;
            if within == 0 && left >= bs {
                let n = (left / bs * bs).min(MAX_RUN);
                self.dev
                    .write_blocks(lba, &data[done..done + n])
                    .map_err(hw_to_io)?;
                done += n;
            } else {
                let n = (bs - within).min(left);
                self.dev.read_blocks(lba, &mut block).map_err(hw_to_io)?;
                block[within..within + n].copy_from_slice(&data[done..done + n]);
                self.dev.write_blocks(lba, &block).map_err(hw_to_io)?;
                done += n;
            }
        }
        Ok(())
    }

    /// Make completed writes durable.
    pub fn sync(&mut self) -> io::Result<()> {
        self.dev.flush().map_err(hw_to_io)
    }
}

impl<D: BlockDevice> Read for ByteIo<'_, D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.size().saturating_sub(self.pos)) as usize;
        self.read_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<D: BlockDevice> Write for ByteIo<'_, D> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_at(self.pos, data)?;
        self.pos += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<D: BlockDevice> Seek for ByteIo<'_, D> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let base = match to {
            SeekFrom::Start(o) => Some(o),
            SeekFrom::End(d) => self.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = base.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the medium",
            )
        })?;
        Ok(self.pos)
    }
}

impl<D: BlockDevice + Send> image_format::store::BlockDevice for ByteIo<'_, D> {
    fn sync_device(&mut self) -> io::Result<()> {
        self.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 16 blocks of 512 bytes in memory, counting device calls.
    struct Mem(Vec<u8>);
    impl BlockDevice for Mem {
        fn block_size(&self) -> usize {
            512
        }
        fn block_count(&self) -> u64 {
            (self.0.len() / 512) as u64
        }
        fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), HwError> {
            assert_eq!(buf.len() % 512, 0, "partial block read reached the device");
            let s = lba as usize * 512;
            buf.copy_from_slice(self.0.get(s..s + buf.len()).ok_or(HwError::OutOfRange)?);
            Ok(())
        }
        fn write_blocks(&mut self, lba: u64, data: &[u8]) -> Result<(), HwError> {
            assert_eq!(
                data.len() % 512,
                0,
                "partial block write reached the device"
            );
            let s = lba as usize * 512;
            self.0
                .get_mut(s..s + data.len())
                .ok_or(HwError::OutOfRange)?
                .copy_from_slice(data);
            Ok(())
        }
        fn flush(&mut self) -> Result<(), HwError> {
            Ok(())
        }
    }

    #[test]
    fn unaligned_ranges_match_a_plain_byte_array() {
        let mut model = vec![0u8; 16 * 512];
        let mut mem = Mem(model.clone());
        let mut io = ByteIo::new(&mut mem);
        // Seeded, deterministic spread of offsets and lengths, aligned and not.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..300u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = (x % (16 * 512)) as usize;
            let len = ((x >> 20) % 1800) as usize % (16 * 512 - off + 1);
            let data: Vec<u8> = (0..len).map(|j| (i as usize * 7 + j) as u8).collect();
            io.write_at(off as u64, &data).unwrap();
            model[off..off + len].copy_from_slice(&data);
            let mut back = vec![0u8; len];
            io.read_at(off as u64, &mut back).unwrap();
            assert_eq!(back, data);
        }
        let mut all = vec![0u8; model.len()];
        io.seek(SeekFrom::Start(0)).unwrap();
        io.read_exact(&mut all).unwrap();
        assert_eq!(all, model);
        assert!(io.write_at(16 * 512 - 1, b"xy").is_err());
        assert_eq!(io.read(&mut [0u8; 4]).unwrap(), 0);
    }
}
