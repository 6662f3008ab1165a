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
//!   during seal, arrival or erase, and nobody else reaches the export);
//! - every record reached the appliance as it was appended: at a byte
//!   offset inside a block and ending inside another, about 1 MiB at a
//!   time, so the appliance read, patched and rewrote two partial blocks
//!   per record and wrote its medium in 1 MiB pieces (a request, a reply
//!   and a medium write each). Here appends are staged ([`STAGE`], as the
//!   host's own `DirectFile` stages them for an image file) and leave as
//!   whole, aligned 4 MiB writes; what is not a continued append (FAT
//!   sectors, directory blocks) goes as it comes, a read or write that
//!   overlaps the stage sends it first, and `sync_device` sends it whole.

use std::io::{self, Read, Seek, SeekFrom, Write};

use image_format::store::aligned::ALIGN;
use image_format::store::FatDevice;
use mgear_nbd::NbdFile;

/// Bytes of writes in flight unanswered: several staged writes, so the
/// appliance always has the next one while the host encodes.
pub const WRITE_BEHIND: u64 = 16 << 20;
/// 4 KiB blocks kept for small reads (4 MiB): the FAT windows (both
/// copies) and directory blocks a capture touches, each read ahead by
/// `mgear_nbd`'s 256 KiB, with room to spare.
pub const CACHED_BLOCKS: usize = 1024;
/// Appended bytes gathered before they are sent as one aligned write.
pub const STAGE: usize = 4 << 20;
/// A write this large that does not continue the stage starts a new one
/// (segment data); smaller ones (FAT sectors, directory blocks) go as they come.
const STAGE_MIN: usize = 64 * 1024;

/// Appended bytes not sent yet: `buf` belongs at device offset `at`.
#[derive(Debug)]
struct Stage {
    at: u64,
    buf: Vec<u8>,
}

impl Stage {
    fn end(&self) -> u64 {
        self.at + self.buf.len() as u64
    }

    fn overlaps(&self, at: u64, len: usize) -> bool {
        at < self.end() && self.at < at + len as u64
    }
}

/// An NBD export as a [`FatDevice`] with a file's semantics: `flush` waits
/// for the replies to writes in flight (so errors are known, as after a
/// `write()`), `sync_device` sends what is staged and `NBD_CMD_FLUSH`.
/// Once a write failed, every later call fails too (as `DirectFile`'s do):
/// what the medium holds is not known any more.
#[derive(Debug)]
pub struct NbdDevice {
    file: NbdFile,
    /// The export's size in bytes.
    size: u64,
    pos: u64,
    stage: Option<Stage>,
    /// A buffer to stage into, kept between stages.
    spare: Vec<u8>,
    /// The first write that failed.
    failed: Option<(io::ErrorKind, String)>,
}

impl NbdDevice {
    /// The export behind `file`, which this handle must be the only writer of.
    pub fn new(mut file: NbdFile) -> io::Result<Self> {
        file.client_mut()
            .set_write_behind(WRITE_BEHIND)
            .map_err(io::Error::other)?;
        file.cache_small_reads(CACHED_BLOCKS);
        Ok(NbdDevice {
            size: file.client_mut().size(),
            file,
            pos: 0,
            stage: None,
            spare: Vec::new(),
            failed: None,
        })
    }

    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some((kind, msg)) => Err(io::Error::new(*kind, msg.clone())),
            None => Ok(()),
        }
    }

    /// `r`, remembering its error for every later call.
    fn keep<T>(&mut self, r: io::Result<T>) -> io::Result<T> {
        if let (Err(e), None) = (&r, &self.failed) {
            self.failed = Some((e.kind(), e.to_string()));
        }
        r
    }

    /// Send `data` to device offset `at` now.
    fn send(&mut self, at: u64, data: &[u8]) -> io::Result<()> {
        let sent = self
            .file
            .seek(SeekFrom::Start(at))
            .and_then(|_| self.file.write_all(data));
        self.keep(sent)
    }

    /// Send what is staged, whole (its last block may be partial).
    fn send_stage(&mut self) -> io::Result<()> {
        let Some(stage) = self.stage.take() else {
            return Ok(());
        };
        let sent = self.send(stage.at, &stage.buf);
        self.spare = stage.buf;
        sent
    }

    /// A new, empty stage at `at`.
    fn open_stage(&mut self, at: u64) {
        let mut buf = std::mem::take(&mut self.spare);
        buf.clear();
        buf.reserve_exact(STAGE);
        self.stage = Some(Stage { at, buf });
    }

    /// Send the stage first when `[at, at+len)` overlaps it, so that what
    /// follows is ordered after it.
    fn settle_range(&mut self, at: u64, len: usize) -> io::Result<()> {
        if self.stage.as_ref().is_some_and(|s| s.overlaps(at, len)) {
            self.send_stage()?;
        }
        Ok(())
    }

    /// Write `data` at device offset `at` (see the module doc).
    fn write_at(&mut self, at: u64, mut data: &[u8]) -> io::Result<()> {
        self.check()?;
        let fits = at
            .checked_add(data.len() as u64)
            .is_some_and(|end| end <= self.size);
        let continues = self.stage.as_ref().is_some_and(|s| s.end() == at);
        if !continues {
            self.settle_range(at, data.len())?;
            if data.len() < STAGE_MIN || !fits {
                // Past the end, the export refuses it with the reason.
                return self.send(at, data);
            }
            self.send_stage()?;
            let head = ((ALIGN as u64 - at % ALIGN as u64) % ALIGN as u64) as usize;
            let head = head.min(data.len());
            if head > 0 {
                self.send(at, &data[..head])?;
                data = &data[head..];
            }
            self.open_stage(at + head as u64);
        } else if !fits {
            self.send_stage()?;
            return self.send(at, data);
        }
        while !data.is_empty() {
            let Some(stage) = self.stage.as_mut() else {
                return Err(io::Error::other("no staging buffer"));
            };
            let n = data.len().min(STAGE - stage.buf.len());
            stage.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if stage.buf.len() == STAGE {
                let next = stage.end();
                self.send_stage()?;
                self.open_stage(next);
            }
        }
        Ok(())
    }
}

impl Drop for NbdDevice {
    fn drop(&mut self) {
        // What was written reaches the export, as a file's writes reach its
        // page cache; only `sync_device` makes it durable.
        if self.failed.is_none() && self.send_stage().is_ok() {
            let _ = self.file.settle();
        }
    }
}

impl Read for NbdDevice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.check()?;
        self.settle_range(self.pos, buf.len())?;
        self.file.seek(SeekFrom::Start(self.pos))?;
        let n = self.file.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for NbdDevice {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_at(self.pos, data)?;
        self.pos += data.len() as u64;
        Ok(data.len())
    }

    /// Waits for the replies to what was sent; staged bytes stay staged
    /// (a file's `write` is complete in its page cache the same way).
    fn flush(&mut self) -> io::Result<()> {
        self.check()?;
        let settled = self.file.settle();
        self.keep(settled)
    }
}

impl Seek for NbdDevice {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the NBD export",
            )
        })?;
        Ok(self.pos)
    }
}

impl FatDevice for NbdDevice {
    fn sync_device(&mut self) -> io::Result<()> {
        self.barrier()?;
        let flushed = self.file.flush();
        self.keep(flushed)
    }

    /// The stage is sent: the appliance serves one connection's requests in order, so
    /// every later write reaches its medium after it.
    fn barrier(&mut self) -> io::Result<()> {
        self.check()?;
        self.send_stage()
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

    /// An in-memory export of `size` bytes served on a Unix socket.
    fn served(
        size: usize,
    ) -> (
        tempfile::TempDir,
        std::sync::Arc<MemExport>,
        mgear_nbd_proto::ServerHandle,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mem = MemExport::new(size);
        let srv = mgear_nbd_proto::serve_unix(&dir.path().join("s"), "", mem.clone()).unwrap();
        (dir, mem, srv)
    }

    fn device(url: &mgear_nbd::NbdUrl) -> NbdDevice {
        let c = Client::connect(url, &ConnectOptions::default()).unwrap();
        NbdDevice::new(NbdFile::new(c)).unwrap()
    }

    #[test]
    fn the_fat_engine_syncs_the_export_only_when_the_format_syncs() {
        let (_dir, mem, srv) = served(48 << 20);
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

    #[test]
    fn appended_records_leave_as_whole_aligned_writes() {
        let (_dir, mem, srv) = served(64 << 20);
        FatStore::format(device(&srv.url()), &FormatOptions::default()).unwrap();
        let mut fat = FatStore::open(device(&srv.url())).unwrap();
        fat.create_dir_all("MGEAR/web01").unwrap();
        let before = mem.writes().len();
        // Records of a length that is no multiple of a block, each written
        // as the capture writes it: a small header, then the body.
        let record: Vec<u8> = (0..(1 << 20) + 123).map(|i| (i % 251) as u8).collect();
        for k in 0..20u64 {
            let at = k * record.len() as u64;
            fat.write_at("MGEAR/web01/SEG", at, &record[..64]).unwrap();
            fat.write_at("MGEAR/web01/SEG", at + 64, &record[64..])
                .unwrap();
        }
        fat.sync("MGEAR/web01/SEG").unwrap();
        let writes = mem.writes()[before..].to_vec();
        let large: Vec<_> = writes.iter().filter(|w| w.1 >= STAGE_MIN).collect();
        assert!(
            large.iter().all(|w| w.0 % ALIGN as u64 == 0),
            "unaligned: {large:?}"
        );
        // 20 MiB of records: whole stages, the rest sent by the sync.
        let whole = large.iter().filter(|w| w.1 == STAGE).count();
        assert!(whole >= 4, "{large:?}");
        assert!(large.len() <= whole + 1, "{large:?}");
        // Without the stage each record was a write of its own (20 of
        // them, each starting and ending inside a block).
        let data: usize = writes.iter().map(|w| w.1).sum();
        assert!(data >= 20 * record.len(), "{data}");
        fat.unmount().unwrap();

        let mut again = FatStore::open(device(&srv.url())).unwrap();
        let mut back = vec![0u8; record.len()];
        for k in [0u64, 7, 19] {
            again
                .read_at("MGEAR/web01/SEG", k * record.len() as u64, &mut back)
                .unwrap();
            assert!(back == record, "record {k}");
        }
        again.unmount().unwrap();
    }

    #[test]
    fn a_refused_write_fails_a_later_call_and_every_call_after_it() {
        let (_dir, mem, srv) = served(32 << 20);
        let orig = mem.snapshot();
        let mut dev = device(&srv.url());
        let data = vec![7u8; 3 << 20];
        dev.seek(SeekFrom::Start(1 << 20)).unwrap();
        dev.write_all(&data).unwrap();
        dev.sync_device().unwrap();
        // Sealed under the host's feet: the appliance answers EPERM.
        mem.set_writable(false);
        dev.write_all(&data).unwrap();
        dev.write_all(&data).unwrap();
        let e = dev.sync_device().unwrap_err();
        assert!(e.to_string().contains("EPERM"), "{e}");
        // Read-only, as a file on a read-only mount says it: the FAT store calls it so.
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        assert!(dev.write_all(&data[..100]).is_err());
        let mut back = [0u8; 16];
        dev.seek(SeekFrom::Start(1 << 20)).unwrap();
        assert!(dev.read_exact(&mut back).is_err());
        assert!(mem.snapshot()[(4 << 20)..] == orig[(4 << 20)..]);
    }

    /// Random writes (appends, overwrites of staged bytes, small writes
    /// elsewhere), reads and syncs against a model of the disk: what the
    /// device reads back, and what the export holds once the device is
    /// dropped, is what was written.
    #[test]
    fn staged_writes_read_back_and_reach_the_export() {
        use mgear_nbd_proto::testing::XorShift;
        let size = 24usize << 20;
        let (_dir, mem, srv) = served(size);
        let mut model = mem.snapshot();
        let mut dev = device(&srv.url());
        let mut rng = XorShift(0x05ee_d0f5_7a9e);
        let mut append_at = 4096 * 3 + 17;
        for step in 0..400u64 {
            let op = rng.below(10);
            let (at, len) = match op {
                // Appends of record-like lengths, as a capture writes.
                0..=4 => {
                    let len = 60_000 + rng.below(1 << 20);
                    if append_at + len > size {
                        append_at = rng.below(4096);
                    }
                    let at = append_at;
                    append_at += len;
                    (at, len)
                }
                // Anything anywhere, small or large, maybe over staged bytes.
                _ => {
                    let len = 1 + rng.below(if op == 9 { 200_000 } else { 5000 });
                    (rng.below(size - len), len)
                }
            };
            dev.seek(SeekFrom::Start(at as u64)).unwrap();
            if op == 8 {
                let mut got = vec![0u8; len];
                dev.read_exact(&mut got).unwrap();
                assert!(
                    got == model[at..at + len],
                    "step {step}: read at {at}+{len}"
                );
                continue;
            }
            let data: Vec<u8> = (0..len).map(|i| (i as u64 ^ step) as u8).collect();
            dev.write_all(&data).unwrap();
            model[at..at + len].copy_from_slice(&data);
            if op == 7 {
                dev.sync_device().unwrap();
                assert!(mem.snapshot() == model, "step {step}: after a sync");
            }
        }
        drop(dev);
        assert!(mem.snapshot() == model, "after the device was dropped");
    }
}
