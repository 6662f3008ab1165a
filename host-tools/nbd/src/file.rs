//! [`NbdFile`]: an NBD export as a `Read + Write + Seek` file, so code written
//! for files (the `fatfs` crate opening a FAT32 medium) can use an export
//! directly. Every call goes to the server; callers wanting fewer round trips
//! put a cache or `BufReader` in front.

use std::io::{self, Read, Seek, SeekFrom, Write};

use crate::client::Client;
use crate::proto::MAX_PAYLOAD;

/// A [`Client`] with a position cursor.
#[derive(Debug)]
pub struct NbdFile {
    client: Client,
    pos: u64,
}

impl NbdFile {
    /// Wraps a connected client; the cursor starts at offset 0.
    pub fn new(client: Client) -> Self {
        NbdFile { client, pos: 0 }
    }

    /// The underlying connection (e.g. for block status).
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Returns the client, dropping the cursor.
    pub fn into_inner(self) -> Client {
        self.client
    }
}

impl Read for NbdFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.client.size().saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left).min(u64::from(MAX_PAYLOAD)) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.client
            .read_at(self.pos, &mut buf[..n])
            .map_err(io::Error::other)?;
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
        self.client
            .write_at(self.pos, &data[..n])
            .map_err(io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }

    /// Sends NBD_CMD_FLUSH: data written so far becomes durable on the server.
    fn flush(&mut self) -> io::Result<()> {
        self.client.flush().map_err(io::Error::other)
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
}
