//! [`NbdFile`]: an NBD export as a `Read + Write + Seek` file, so code written
//! for files (the `fatfs` crate opening a FAT32 medium) can use an export
//! directly. Every call goes to the server unless the caller owns the
//! export and says so ([`NbdFile::cache_small_reads`]); callers wanting
//! fewer round trips otherwise put a cache or `BufReader` in front.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::num::NonZeroUsize;

use lru::LruCache;

use crate::client::Client;
use crate::proto::MAX_PAYLOAD;

/// Block size of the small-read cache.
const CACHE_BLOCK: u64 = 4096;
/// Reads up to this size go through the small-read cache; larger ones
/// (file data) go to the server.
const CACHE_MAX_READ: usize = 64 * 1024;
/// A small read that misses fetches at least this much from its first
/// missing block on: the FAT engine's reads walk forward through the FAT
/// (its allocation window moves a few bytes per record), and each read
/// that goes to the server first waits for every write in flight.
const CACHE_READ_AHEAD: u64 = 256 * 1024;

/// A [`Client`] with a position cursor.
#[derive(Debug)]
pub struct NbdFile {
    client: Client,
    pos: u64,
    /// Blocks this handle read or wrote, while it owns the export.
    cache: Option<LruCache<u64, Vec<u8>>>,
}

impl NbdFile {
    /// Wraps a connected client; the cursor starts at offset 0.
    pub fn new(client: Client) -> Self {
        NbdFile {
            client,
            pos: 0,
            cache: None,
        }
    }

    /// The underlying connection (e.g. for block status).
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Returns the client, dropping the cursor.
    pub fn into_inner(self) -> Client {
        self.client
    }

    /// Keep up to `blocks` 4 KiB blocks of what small reads (64 KiB at
    /// most) fetched, and answer later small reads from them; writes made
    /// through this handle update the blocks they touch. Only for an export
    /// nobody else writes while this handle is open (the host's FAT engine
    /// on the appliance's medium: it re-reads the same FAT window and
    /// directory blocks after every append, each a round trip). 0 turns
    /// the cache off.
    pub fn cache_small_reads(&mut self, blocks: usize) {
        self.cache = NonZeroUsize::new(blocks).map(LruCache::new);
    }

    /// Fill `buf` (at most [`CACHE_MAX_READ`] bytes at `self.pos`, within
    /// the export) from the cache; from its first missing block on, from
    /// one request for the rest of the read and [`CACHE_READ_AHEAD`] more,
    /// whose blocks the cache then keeps.
    fn cached_read(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let (first, last) = (
            self.pos / CACHE_BLOCK,
            (self.pos + buf.len() as u64).div_ceil(CACHE_BLOCK),
        );
        let Some(cache) = self.cache.as_mut() else {
            return Err(io::Error::other("small-read cache is off"));
        };
        // The blocks held, up to the first missing one, copied out before
        // fetched blocks may evict them.
        let mut done = 0;
        let mut miss = None;
        for b in first..last {
            let Some(block) = cache.get(&b) else {
                miss = Some(b);
                break;
            };
            let pos = self.pos + done as u64;
            let within = (pos - b * CACHE_BLOCK) as usize;
            let n = (block.len() - within).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&block[within..within + n]);
            done += n;
        }
        let Some(miss) = miss else {
            return Ok(());
        };
        let size = self.client.size();
        // A read-ahead that fills the cache would evict what it is for.
        let room = (cache.cap().get() / 4) as u64;
        let ahead = (miss + (CACHE_READ_AHEAD / CACHE_BLOCK).min(room))
            .max(last)
            .min(size.div_ceil(CACHE_BLOCK));
        let start = miss * CACHE_BLOCK;
        let mut tmp = vec![0u8; ((ahead * CACHE_BLOCK).min(size) - start) as usize];
        if let Err(e) = self.client.read_at(start, &mut tmp) {
            self.forget();
            return Err(to_io(e));
        }
        let from = (self.pos + done as u64 - start) as usize;
        let rest = buf.len() - done;
        buf[done..].copy_from_slice(&tmp[from..from + rest]);
        // Every write through this handle was answered before the read
        // (`Client::read_at` collects them), so these are the export's bytes.
        let Some(cache) = self.cache.as_mut() else {
            return Err(io::Error::other("small-read cache is off"));
        };
        // Last to first: the blocks this read wanted end up the most recent.
        let blocks: Vec<&[u8]> = tmp.chunks(CACHE_BLOCK as usize).collect();
        for (i, block) in blocks.iter().enumerate().rev() {
            cache.put(miss + i as u64, block.to_vec());
        }
        Ok(())
    }

    /// Drop every cached block: after a failed request (with write-behind
    /// a refused write fails a later call) the export's bytes are not known.
    fn forget(&mut self) {
        if let Some(c) = self.cache.as_mut() {
            c.clear();
        }
    }

    /// Waits for the replies to writes still in flight
    /// ([`Client::set_write_behind`]); the first refused one is the error.
    pub fn settle(&mut self) -> io::Result<()> {
        self.client.settle().map_err(|e| {
            self.forget();
            to_io(e)
        })
    }

    /// Patch the cached blocks that `data`, written at `at`, overlaps.
    fn update_cache(&mut self, at: u64, data: &[u8]) {
        let Some(cache) = self.cache.as_mut() else {
            return;
        };
        let end = at + data.len() as u64;
        for b in at / CACHE_BLOCK..end.div_ceil(CACHE_BLOCK) {
            if let Some(block) = cache.peek_mut(&b) {
                let bs = b * CACHE_BLOCK;
                let (s, e) = (bs.max(at), (bs + block.len() as u64).min(end));
                block[(s - bs) as usize..(e - bs) as usize]
                    .copy_from_slice(&data[(s - at) as usize..(e - at) as usize]);
            }
        }
    }
}

impl Read for NbdFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.client.size().saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left).min(u64::from(MAX_PAYLOAD)) as usize;
        if n == 0 {
            return Ok(0);
        }
        if self.cache.is_some() && n <= CACHE_MAX_READ {
            self.cached_read(&mut buf[..n])?;
        } else {
            if let Err(e) = self.client.read_at(self.pos, &mut buf[..n]) {
                self.forget();
                return Err(to_io(e));
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for NbdFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let left = self.client.size().saturating_sub(self.pos);
        let n = (data.len() as u64).min(left).min(u64::from(MAX_PAYLOAD)) as usize;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "write at offset {} is past the end of the {}-byte NBD export (exports cannot grow)",
                    self.pos,
                    self.client.size()
                ),
            ));
        }
        if let Err(e) = self.client.write_at(self.pos, &data[..n]) {
            self.forget();
            return Err(to_io(e));
        }
        self.update_cache(self.pos, &data[..n]);
        self.pos += n as u64;
        Ok(n)
    }

    /// Sends NBD_CMD_FLUSH: data written so far becomes durable on the server.
    fn flush(&mut self) -> io::Result<()> {
        self.client.flush().map_err(|e| {
            self.forget();
            to_io(e)
        })
    }
}

impl Seek for NbdFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.client.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let target = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the NBD export",
            )
        })?;
        self.pos = target;
        Ok(target)
    }
}

/// An NBD error as the `io::Error` a file would give: a write the server refuses with EPERM
/// (a sealed or locked appliance, a read-only export) reads as `PermissionDenied` and one past
/// its space as `StorageFull`, so the layers above tell "read-only" and "full" from a failing
/// disk; the message keeps the command, range and code.
fn to_io(e: crate::Error) -> io::Error {
    use mgear_nbd_proto::proto::{ENOSPC, EPERM};
    let kind = match &e {
        // An export served read-only refuses before the request is sent: the same answer.
        crate::Error::Command { code: EPERM, .. } | crate::Error::ReadOnly { .. } => {
            io::ErrorKind::PermissionDenied
        }
        crate::Error::Command { code: ENOSPC, .. } => io::ErrorKind::StorageFull,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

#[cfg(test)]
mod tests {
    //! Cursor semantics of [`NbdFile`] against our own server (`mgear-nbd-proto`).

    use super::*;
    use crate::client::ConnectOptions;
    use mgear_nbd_proto::serve_unix;
    use mgear_nbd_proto::testing::MemExport as Mem;

    #[test]
    fn behaves_like_a_fixed_size_file() {
        let dir = tempfile::tempdir().unwrap();
        let mem = Mem::new(10_000);
        let srv = serve_unix(&dir.path().join("s"), "m", mem).unwrap();
        let c = Client::connect(&srv.url(), &ConnectOptions::default()).unwrap();
        let mut f = NbdFile::new(c);

        assert_eq!(f.seek(SeekFrom::End(-4)).unwrap(), 9_996);
        f.write_all(b"tail").unwrap();
        assert_eq!(f.stream_position().unwrap(), 10_000);
        let e = f.write(b"more").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
        assert_eq!(f.read(&mut [0u8; 8]).unwrap(), 0, "EOF at the end");
        assert!(f.seek(SeekFrom::Current(-10_001)).is_err());

        f.seek(SeekFrom::Start(9_990)).unwrap();
        let mut rest = Vec::new();
        f.read_to_end(&mut rest).unwrap();
        assert_eq!(rest.len(), 10);
        assert_eq!(&rest[6..], b"tail");
        // A write straddling the end writes what fits and reports it.
        f.seek(SeekFrom::Start(9_998)).unwrap();
        assert_eq!(f.write(b"XYZ").unwrap(), 2);
        f.flush().unwrap();
        f.seek(SeekFrom::Start(9_996)).unwrap();
        let mut b = [0u8; 4];
        f.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"taXY");
    }

    #[test]
    fn a_small_read_that_misses_reads_ahead() {
        use mgear_nbd_proto::BlockBackend;
        let dir = tempfile::tempdir().unwrap();
        let mem = Mem::new(2 << 20);
        let srv = serve_unix(&dir.path().join("s"), "m", mem.clone()).unwrap();
        let c = Client::connect(&srv.url(), &ConnectOptions::default()).unwrap();
        let mut f = NbdFile::new(c);
        f.cache_small_reads(1024);
        let orig = mem.snapshot();
        let mut small = [0u8; 100];
        f.seek(SeekFrom::Start(5000)).unwrap();
        f.read_exact(&mut small).unwrap();
        // Changed behind the handle's back: blocks up to 256 KiB past the
        // read came with it and answer from the cache; beyond, the export.
        for at in [60_000usize, 4096 + 250_000, 4096 + 270_000] {
            mem.write_at(at as u64, &[0xAA; 100]).unwrap();
        }
        for (at, ahead) in [
            (60_000usize, true),
            (4096 + 250_000, true),
            (4096 + 270_000, false),
        ] {
            f.seek(SeekFrom::Start(at as u64)).unwrap();
            f.read_exact(&mut small).unwrap();
            match ahead {
                true => assert_eq!(small[..], orig[at..at + 100], "{at}"),
                false => assert_eq!(small, [0xAA; 100], "{at}"),
            }
        }
    }

    #[test]
    fn small_reads_come_from_the_cache_and_writes_keep_it_current() {
        use mgear_nbd_proto::BlockBackend;
        let dir = tempfile::tempdir().unwrap();
        let mem = Mem::new(300_000);
        let srv = serve_unix(&dir.path().join("s"), "m", mem.clone()).unwrap();
        let c = Client::connect(&srv.url(), &ConnectOptions::default()).unwrap();
        let mut f = NbdFile::new(c);
        f.cache_small_reads(8);
        let orig = mem.snapshot();

        let mut small = [0u8; 100];
        f.seek(SeekFrom::Start(5000)).unwrap();
        f.read_exact(&mut small).unwrap();
        assert_eq!(small[..], orig[5000..5100]);
        // Changed behind the handle's back (what the cache rules out): a
        // small read still answers from the blocks it fetched...
        mem.write_at(5000, &[0xAA; 100]).unwrap();
        f.seek(SeekFrom::Start(5000)).unwrap();
        f.read_exact(&mut small).unwrap();
        assert_eq!(small[..], orig[5000..5100]);
        // ...while a large read goes to the export.
        let mut large = vec![0u8; 70_000];
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_exact(&mut large).unwrap();
        assert_eq!(large[5000..5100], [0xAA; 100]);

        // A write through the handle updates the cached block it touches,
        // including one it only partly covers.
        f.seek(SeekFrom::Start(5050)).unwrap();
        f.write_all(&[0x55; 3000]).unwrap();
        f.seek(SeekFrom::Start(4990)).unwrap();
        let mut back = [0u8; 100];
        f.read_exact(&mut back).unwrap();
        // (Bytes 5000..5050 are still the cached ones, not the 0xAA.)
        assert_eq!(back[..60], orig[4990..5050]);
        assert_eq!(back[60..], [0x55; 40]);
        assert_eq!(mem.snapshot()[5050..8050], [0x55; 3000]);

        // The export's last, short block.
        f.seek(SeekFrom::Start(299_990)).unwrap();
        let mut tail = [0u8; 10];
        f.read_exact(&mut tail).unwrap();
        assert_eq!(tail[..], orig[299_990..]);
        assert_eq!(f.read(&mut tail).unwrap(), 0);
    }
}
