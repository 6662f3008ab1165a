//! Test doubles for NBD exports (feature `testing`): an in-memory export
//! whose writability can be flipped while it is served, and a seeded
//! xorshift for reproducible byte mutations. Used by this crate's tests,
//! the client's (`mgear-nbd`) tests against our server, and fuzz seeds.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::server::BlockBackend;

/// An in-memory disk: byte `i` starts as `i * 7 % 251`.
pub struct MemExport {
    data: Mutex<Vec<u8>>,
    writable: AtomicBool,
    flushes: AtomicU64,
    refused: AtomicU64,
    /// Offset and length of every write, in the order served.
    writes: Mutex<Vec<(u64, usize)>>,
}

impl MemExport {
    pub fn new(size: usize) -> Arc<MemExport> {
        let data = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        Arc::new(MemExport {
            data: Mutex::new(data),
            writable: AtomicBool::new(true),
            flushes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            writes: Mutex::new(Vec::new()),
        })
    }

    /// A copy of the disk's bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Accept (`true`) or refuse (EPERM) writes from now on.
    pub fn set_writable(&self, on: bool) {
        self.writable.store(on, Ordering::SeqCst);
    }

    /// Offset and length of every write served so far, in order.
    pub fn writes(&self) -> Vec<(u64, usize)> {
        self.writes.lock().map(|w| w.clone()).unwrap_or_default()
    }

    /// How many writes the server refused as read-only before they reached the export.
    pub fn refused_writes(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// How many flushes the server passed on.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }
}

fn poisoned() -> io::Error {
    io::Error::other("test export lock poisoned")
}

impl BlockBackend for MemExport {
    fn size(&self) -> u64 {
        self.data.lock().map(|d| d.len() as u64).unwrap_or(0)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let d = self.data.lock().map_err(|_| poisoned())?;
        let at = offset as usize;
        buf.copy_from_slice(&d[at..at + buf.len()]);
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if !self.writable.load(Ordering::SeqCst) {
            return Err(io::ErrorKind::PermissionDenied.into());
        }
        let mut d = self.data.lock().map_err(|_| poisoned())?;
        let at = offset as usize;
        d[at..at + data.len()].copy_from_slice(data);
        self.writes
            .lock()
            .map_err(|_| poisoned())?
            .push((offset, data.len()));
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn writable(&self) -> bool {
        self.writable.load(Ordering::SeqCst)
    }
    fn write_refused(&self) {
        self.refused.fetch_add(1, Ordering::SeqCst);
    }
}

/// Seeded xorshift: reproducible "random" mutations without a dependency.
pub struct XorShift(pub u64);

impl XorShift {
    /// The next value. Not an `Iterator`: the stream never ends, and tests
    /// mix `next` and `below` on one generator.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
