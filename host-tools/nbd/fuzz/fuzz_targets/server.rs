//! Fuzz target: arbitrary bytes from a client must never panic the server
//! (handshake, option parsing and the transmission phase).
#![no_main]

use std::io;
use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use mgear_nbd_proto::{serve_stream, BlockBackend};

/// A small writable disk so reads and writes reach real code paths.
struct Disk(Mutex<Vec<u8>>);

impl BlockBackend for Disk {
    fn size(&self) -> u64 {
        self.0.lock().map(|d| d.len() as u64).unwrap_or(0)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let d = self.0.lock().map_err(|_| io::Error::other("poisoned"))?;
        let o = offset as usize;
        buf.copy_from_slice(&d[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut d = self.0.lock().map_err(|_| io::Error::other("poisoned"))?;
        let o = offset as usize;
        d[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn writable(&self) -> bool {
        true
    }
}

fuzz_target!(|data: &[u8]| {
    let disk = Disk(Mutex::new(vec![0u8; 64 * 1024]));
    let _ = serve_stream(data, io::sink(), "fuzz", &disk, "fuzzer");
});
