//! Any NBD export as a target (`nbd://HOST:PORT/EXPORT`,
//! `nbd+unix:///EXPORT?socket=PATH`): qemu-nbd or nbdkit serving rbd, vmdk,
//! a cloud volume, ... Written directly through the `mgear-nbd` client;
//! zero ranges become `NBD_CMD_WRITE_ZEROES` where the export offers it, so
//! thin exports stay thin, and `base:allocation` (when offered) lets the
//! read-back skip ranges the export reports as zeros. An export larger than
//! the disk keeps its tail.
//!
//! An export has no unfinished name, so a marker in the state dir
//! (`nbd_<hash of the URL>.mgear-incomplete`) exists until the volume is
//! verified, and a new ingest clears the export's first `head_len` bytes
//! before anything else.

use std::path::Path;

use mgear_nbd::{Client, ConnectOptions, NbdUrl};

use crate::marker::Marker;
use crate::{short_hash, Error, Finished, Found, Geometry, Prepare, Result, Volume};

/// Bytes at each end of an export [`NbdVolume::open`] shows to its check
/// (where the file system and partition table signatures live).
pub const FRESH_EDGE: u64 = 1 << 20;

/// An NBD export; see the module doc.
pub struct NbdVolume {
    client: Option<Client>,
    url: NbdUrl,
    allocation: bool,
    marker: Option<Marker>,
    found: Found,
}

impl std::fmt::Debug for NbdVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NbdVolume({})", self.url)
    }
}

impl NbdVolume {
    fn marker(url: &NbdUrl, state_dir: &Path) -> Marker {
        Marker::new(state_dir, &format!("nbd_{}", short_hash(&url.to_string())))
    }

    /// Whether an ingest into the export at `url` stopped before it was
    /// verified (its marker is in the ingest state dir `state_dir`): what
    /// `mgear boot` checks before booting it.
    pub fn marked_unfinished(url: &NbdUrl, state_dir: &Path) -> bool {
        Self::marker(url, state_dir).exists()
    }

    /// Connect to a writable export (no marker: the caller tracks completion).
    pub fn connect(url: &NbdUrl) -> Result<Self> {
        Self::connect_with(url, false)
    }

    fn connect_with(url: &NbdUrl, read_only: bool) -> Result<Self> {
        let err = |source| Error::Nbd {
            url: url.to_string(),
            source: Box::new(source),
        };
        let with_alloc = ConnectOptions {
            meta_contexts: vec![mgear_nbd::BASE_ALLOCATION.to_string()],
            read_only,
        };
        let plain = ConnectOptions {
            read_only,
            ..ConnectOptions::default()
        };
        let (client, allocation) = match Client::connect(url, &with_alloc) {
            Ok(c) => (c, true),
            Err(mgear_nbd::Error::MetaContextUnsupported { .. }) => {
                (Client::connect(url, &plain).map_err(err)?, false)
            }
            Err(e) => return Err(err(e)),
        };
        if client.read_only() && !read_only {
            return Err(Error::ReadOnly(format!("NBD target {url}")));
        }
        Ok(NbdVolume {
            client: Some(client),
            url: url.clone(),
            allocation,
            marker: None,
            found: Found::New,
        })
    }

    /// Connect for an ingest: check the size, and track completion with a
    /// marker in the state dir. An export this ingest has not started
    /// writing is shown first to `fresh` (its first and last
    /// [`FRESH_EDGE`] bytes and its size), which may refuse it, before
    /// anything is written: an export always exists, so it may hold a disk.
    pub fn open(
        url: &NbdUrl,
        prep: &Prepare,
        fresh: impl FnOnce(&[u8], &[u8], u64) -> Result<()>,
    ) -> Result<Self> {
        let mut v = Self::connect(url)?;
        v.check_size(prep.disk_size)?;
        let marker = Self::marker(url, &prep.state_dir);
        if marker.exists() {
            v.found = Found::Unfinished {
                adopt_without_state: true,
            };
        } else {
            let size = v.size();
            let edge = size.min(FRESH_EDGE);
            let (mut head, mut tail) = (vec![0u8; edge as usize], vec![0u8; edge as usize]);
            v.read_at(0, &mut head)?;
            v.read_at(size - edge, &mut tail)?;
            fresh(&head, &tail, size)?;
            marker.create(&format!("{} into {url}", prep.what))?;
            let head = prep.head_len.min(v.size());
            if head > 0 {
                v.write_zeroes(0, head)?;
                v.flush()?;
            }
        }
        v.marker = Some(marker);
        Ok(v)
    }

    pub(crate) fn check_size(&self, disk: u64) -> Result<()> {
        if self.size() < disk {
            return Err(Error::Usage(format!(
                "NBD target {} holds {} bytes but the disk has {disk}: give a larger export",
                self.url,
                self.size()
            )));
        }
        Ok(())
    }

    pub(crate) fn set_found(&mut self, found: Found) {
        self.found = found;
    }

    fn client(&mut self) -> Result<&mut Client> {
        self.client.as_mut().ok_or_else(|| Error::Nbd {
            url: self.url.to_string(),
            source: Box::new(mgear_nbd::Error::Poisoned {
                server: self.url.to_string(),
            }),
        })
    }

    fn err(&self, source: mgear_nbd::Error) -> Error {
        Error::Nbd {
            url: self.url.to_string(),
            source: Box::new(source),
        }
    }

    /// Flush and end the session politely.
    pub(crate) fn close(&mut self) -> Result<()> {
        self.flush()?;
        if let Some(c) = self.client.take() {
            c.disconnect().map_err(|e| self.err(e))?;
        }
        Ok(())
    }
}

impl Volume for NbdVolume {
    fn size(&self) -> u64 {
        self.client.as_ref().map_or(0, Client::size)
    }
    fn describe(&self) -> String {
        self.url.to_string()
    }
    fn state_key(&self) -> String {
        format!("nbd_{}", short_hash(&self.url.to_string()))
    }
    fn found(&self) -> Found {
        self.found
    }
    fn geometry(&self) -> Geometry {
        let (min, _) = self.client.as_ref().map_or((1, 0), Client::block_sizes);
        Geometry {
            block: min.max(4096),
            max_in_flight: 1,
            // Zero runs go as NBD_CMD_WRITE_ZEROES where the server takes it (a request
            // each, not the bytes): whether that leaves a hole is the export's business, as
            // it is for `qemu-img convert` into it. Otherwise they would be written anyway.
            thin_granule: self
                .client
                .as_ref()
                .is_some_and(Client::can_write_zeroes)
                .then_some(crate::THIN_GRANULE),
        }
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let r = self.client()?.write_at(offset, data);
        r.map_err(|e| self.err(e))
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        let r = self.client()?.write_zeroes(offset, len);
        r.map_err(|e| self.err(e))
    }
    fn flush(&mut self) -> Result<()> {
        let r = self.client()?.flush();
        r.map_err(|e| self.err(e))
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let r = self.client()?.read_at(offset, buf);
        r.map_err(|e| self.err(e))
    }
    fn reads_as_zeros(&mut self, offset: u64, len: u64) -> bool {
        if !self.allocation {
            return false;
        }
        let Some(c) = self.client.as_mut() else {
            return false;
        };
        match c.allocated_ranges(offset, len) {
            Ok(runs) => runs.iter().all(|r| r.3) && runs.iter().map(|r| r.1).sum::<u64>() >= len,
            Err(_) => false,
        }
    }
    fn finish(mut self: Box<Self>) -> Result<Finished> {
        self.close()?;
        if let Some(m) = &self.marker {
            m.remove()?;
        }
        Ok(Finished {
            path: None,
            format: "raw",
            volume: None,
        })
    }
    fn discard(self: Box<Self>) -> Result<()> {
        match &self.marker {
            Some(m) if self.found == Found::New => m.remove(),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};

    /// An in-memory export served by our own NBD server.
    struct Mem(Mutex<Vec<u8>>, bool);

    impl mgear_nbd_proto::BlockBackend for Mem {
        fn size(&self) -> u64 {
            self.0.lock().unwrap().len() as u64
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            let d = self.0.lock().unwrap();
            buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            let mut d = self.0.lock().unwrap();
            d[offset as usize..offset as usize + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
        fn writable(&self) -> bool {
            self.1
        }
    }

    fn serve(
        dir: &std::path::Path,
        data: Vec<u8>,
        writable: bool,
    ) -> (mgear_nbd_proto::ServerHandle, Arc<Mem>) {
        let mem = Arc::new(Mem(Mutex::new(data), writable));
        let h = mgear_nbd_proto::serve_unix(&dir.join("s.sock"), "v", mem.clone()).unwrap();
        (h, mem)
    }

    fn prep(dir: &std::path::Path, size: u64) -> Prepare {
        Prepare {
            disk_size: size,
            head_len: 4096,
            state_dir: dir.to_owned(),
            force: false,
            what: "test".into(),
        }
    }

    #[test]
    fn a_fresh_export_is_checked_before_its_head_is_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let (h, mem) = serve(dir.path(), vec![0xaa; 3 << 20], true);
        let p = prep(dir.path(), 512 << 10);
        let err = NbdVolume::open(&h.url(), &p, |head, tail, size| {
            assert_eq!((head.len(), tail.len(), size), (1 << 20, 1 << 20, 3 << 20));
            assert!(head.iter().chain(tail).all(|&b| b == 0xaa));
            Err(Error::Usage("holds data".into()))
        })
        .unwrap_err();
        assert!(err.to_string().contains("holds data"), "{err}");
        assert!(
            mem.0.lock().unwrap().iter().all(|&b| b == 0xaa),
            "a refused export was written"
        );
        // No marker is left either: the next open checks again.
        let mut called = false;
        let v = NbdVolume::open(&h.url(), &p, |_, _, _| {
            called = true;
            Ok(())
        })
        .unwrap();
        assert!(called);
        Box::new(v).finish().unwrap();
    }

    #[test]
    fn writes_zeroes_reads_back_and_marks_until_finished() {
        let dir = tempfile::tempdir().unwrap();
        let (h, mem) = serve(dir.path(), vec![0xaa; 1 << 20], true);
        let url = h.url();
        let p = prep(dir.path(), 512 << 10);
        let mut v = NbdVolume::open(&url, &p, |_, _, _| Ok(())).unwrap();
        assert_eq!(v.found(), Found::New);
        // The head of the old content is cleared before anything else.
        assert!(mem.0.lock().unwrap()[..4096].iter().all(|&b| b == 0));
        assert!(mem.0.lock().unwrap()[4096] == 0xaa);
        v.write_at(8192, &[3u8; 100]).unwrap();
        v.write_zeroes(65536, 65536).unwrap();
        v.flush().unwrap();
        let mut b = [0u8; 100];
        v.read_at(8192, &mut b).unwrap();
        assert_eq!(b, [3u8; 100]);
        assert!(mem.0.lock().unwrap()[65536..131072].iter().all(|&b| b == 0));
        drop(v);
        // A second open sees the earlier run's marker.
        let v = NbdVolume::open(&url, &p, |_, _, _| Ok(())).unwrap();
        assert_eq!(
            v.found(),
            Found::Unfinished {
                adopt_without_state: true
            }
        );
        Box::new(v).finish().unwrap();
        assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with("incomplete")));
        // The tail past the disk is left alone.
        assert!(mem.0.lock().unwrap()[(1 << 20) - 1] == 0xaa);
        h.stop();
    }

    #[test]
    fn read_only_and_small_exports_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (h, _) = serve(dir.path(), vec![0; 4096], false);
        let err = NbdVolume::open(&h.url(), &prep(dir.path(), 4096), |_, _, _| Ok(())).unwrap_err();
        assert!(matches!(err, Error::ReadOnly(_)), "{err}");
        assert!(err.to_string().contains("read-only"));
        h.stop();
        let (h, _) = serve(dir.path(), vec![0; 4096], true);
        let err = NbdVolume::open(&h.url(), &prep(dir.path(), 8192), |_, _, _| Ok(())).unwrap_err();
        assert!(
            err.is_usage() && err.to_string().contains("larger export"),
            "{err}"
        );
        h.stop();
    }
}
