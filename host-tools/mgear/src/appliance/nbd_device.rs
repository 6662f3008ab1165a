//! The appliance's medium, reached over NBD, as the device under the host's
//! FAT engine ([`image_format::store::FatStore`]): a file's meaning of
//! flush and sync, and no round trip that a file would not make either.
//!
//! Measured on a 512 MiB capture (`mgear bench --appliance-only`, strace of
//! the simulator), the host waited on the appliance four times per 1 MiB
//! record and flushed its medium about 400 times, where the same capture
//! onto an image file syncs about 30 times and waits on nothing but the
//! page cache:
//! - the FAT engine flushes its block cache after every directory or FAT
//!   update; on an image file that is a `write()`, with `FlushIsDurable`
//!   over NBD each one was an `NBD_CMD_FLUSH`, which the appliance answers
//!   by making its medium durable (an fsync in the simulator, and saving
//!   its counters). Here only [`FatDevice::sync_device`] asks for
//!   durability, so the medium is durable at exactly the points where an
//!   image file is;
//! - every write waited for its reply. Here writes run ahead of their
//!   replies ([`WRITE_BEHIND`], `mgear_nbd::Client::set_write_behind`):
//!   a read, a sync or an overlapping write collects them, a full window
//!   waits for the oldest, and a refused write (a sealed or locked appliance
//!   answers EPERM) fails the call that collects its reply;
//! - after every append the engine re-reads the FAT window it allocates
//!   from and the file's directory block (64 KiB and 4 KiB, too large or
//!   evicted for its own cache); on an image file those come from the page
//!   cache. Here small reads are answered from the blocks this handle read
//!   or wrote before ([`CACHED_BLOCKS`], `NbdFile::cache_small_reads`),
//!   which is sound because the host is the only writer of the medium
//!   while it holds it (the appliance does not serve its block service
//!   during seal, arrival or erase, and nobody else reaches the export).

use std::io::{self, Read, Seek, SeekFrom, Write};

use image_format::store::FatDevice;
use mgear_nbd::NbdFile;

/// Bytes of writes in flight unanswered: several 1 MiB records, so the
/// appliance always has the next one while the host encodes.
pub const WRITE_BEHIND: u64 = 8 << 20;
/// 4 KiB blocks kept for small reads (1 MiB): the FAT window and the
/// directory blocks a capture touches, with room to spare.
pub const CACHED_BLOCKS: usize = 256;

/// An NBD export as a [`FatDevice`] with a file's semantics: `flush` waits
/// for the replies to writes in flight (so errors are known, as after a
/// `write()`), `sync_device` sends `NBD_CMD_FLUSH`.
#[derive(Debug)]
pub struct NbdDevice(NbdFile);

impl NbdDevice {
    /// The export behind `file`, which this handle must be the only writer of.
    pub fn new(mut file: NbdFile) -> io::Result<Self> {
        file.client_mut()
            .set_write_behind(WRITE_BEHIND)
            .map_err(io::Error::other)?;
        file.cache_small_reads(CACHED_BLOCKS);
        Ok(NbdDevice(file))
    }
}

impl Read for NbdDevice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for NbdDevice {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.write(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.settle()
    }
}

impl Seek for NbdDevice {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.0.seek(to)
    }
}

impl FatDevice for NbdDevice {
    fn sync_device(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image_format::store::fat::FormatOptions;
    use image_format::store::FatStore;
    use image_format::Store;
    use mgear_nbd::{Client, ConnectOptions};
    use mgear_nbd_proto::testing::MemExport;

    fn device(url: &mgear_nbd::NbdUrl) -> NbdDevice {
        let c = Client::connect(url, &ConnectOptions::default()).unwrap();
        NbdDevice::new(NbdFile::new(c)).unwrap()
    }

    #[test]
    fn the_fat_engine_syncs_the_export_only_when_the_format_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let mem = MemExport::new(48 << 20);
        let srv = mgear_nbd_proto::serve_unix(&dir.path().join("s"), "", mem.clone()).unwrap();
        FatStore::format(device(&srv.url()), &FormatOptions::default()).unwrap();

        let mut fat = FatStore::open(device(&srv.url())).unwrap();
        let flushes = mem.flushes();
        fat.create_dir_all("MGEAR/web01").unwrap();
        // Small files through fatfs (each write flushes its block cache)
        // and a file appended in records, as a capture writes its segment.
        for i in 0..20u8 {
            fat.write_at(&format!("MGEAR/web01/J{i}"), 0, &[i; 700])
                .unwrap();
        }
        let record: Vec<u8> = (0..(1 << 20) + 123).map(|i| (i % 251) as u8).collect();
        for k in 0..6u64 {
            fat.write_at("MGEAR/web01/SEG", k * record.len() as u64, &record)
                .unwrap();
        }
        assert_eq!(mem.flushes(), flushes, "no NBD flush before a sync");
        fat.sync("MGEAR/web01/SEG").unwrap();
        assert_eq!(mem.flushes(), flushes + 1);
        fat.unmount().unwrap();

        // Another handle reads back what was written.
        let mut again = FatStore::open(device(&srv.url())).unwrap();
        let mut back = vec![0u8; record.len()];
        again
            .read_at("MGEAR/web01/SEG", 5 * record.len() as u64, &mut back)
            .unwrap();
        assert!(back == record);
        let mut small = [0u8; 700];
        again.read_at("MGEAR/web01/J7", 0, &mut small).unwrap();
        assert_eq!(small, [7u8; 700]);
        again.unmount().unwrap();
    }
}
