//! An in-memory volume that fails at its N-th write: the fault-injecting
//! fake for tests of the pipeline above the trait (what happens to the
//! resume state, the marker, the exit code when a target fails mid-way).
//!
//! It can also offer a [`VolumeReader`] (as RBD does, for a read-back that
//! overlaps the writes) which sees only what was flushed: bytes written but
//! not yet flushed read as they were at the last flush, so a pipeline that
//! reads a range back before flushing it fails its check (or, as a raw
//! file's `O_DIRECT` reader, one that sees every completed write, counting
//! the flushes the pipeline still makes). And it can lie on
//! read-back (a range reads with its bits flipped, through every read path),
//! as a volume that lost data would. Its reader can digest what it holds
//! the way Ceph's OSDs do ([`FakeVolume::with_digests`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::{
    DigestHasher, Error, Finished, Found, ReadAt, Result, StoredDigest, Volume, VolumeReader,
};

/// The bytes of a [`FakeVolume`], shared with the test that made it so it
/// can look at them after the volume was moved into the pipeline.
pub type Shared = Arc<Mutex<Vec<u8>>>;

/// In-memory volume; see the module doc.
#[derive(Debug)]
pub struct FakeVolume {
    data: Shared,
    /// Writes (`write_at` and `write_zeroes`) so far.
    writes: u64,
    /// The write number (1-based) that fails, if any.
    fail_at: Option<u64>,
    found: Found,
    read_back: bool,
    /// Flushes so far, shared with the test ([`FakeVolume::flush_count`]).
    flushes: Arc<AtomicU64>,
    /// What a [`FakeReader`] sees: the bytes as of the last flush (`Some`
    /// when the volume offers a concurrent reader), or `data` itself when
    /// `direct`.
    flushed: Option<Shared>,
    direct: bool,
    /// Bytes `[start, end)` read back with their bits flipped.
    corrupt: Option<(u64, u64)>,
    /// The reader digests ranges within units of this size, counting the calls.
    digests: Option<(u64, Arc<AtomicU64>)>,
    refuse_digests: bool,
    /// [`crate::Geometry::thin_granule`] it claims.
    thin_granule: Option<u64>,
    /// Reads as zeros where unwritten, made by this run ([`Volume::fresh_reads_zero`]).
    fresh: bool,
    /// Every `write_zeroes` range so far, shared with the test.
    zeroed: Arc<Mutex<Vec<(u64, u64)>>>,
}

impl FakeVolume {
    /// A zeroed volume of `size` bytes whose `fail_at`-th write fails.
    pub fn new(size: usize, fail_at: Option<u64>) -> (Self, Shared) {
        Self::over(Arc::new(Mutex::new(vec![0; size])), fail_at)
    }

    /// A volume over existing bytes (as a second run over the same target).
    pub fn over(data: Shared, fail_at: Option<u64>) -> (Self, Shared) {
        (
            FakeVolume {
                data: data.clone(),
                writes: 0,
                fail_at,
                found: Found::New,
                read_back: true,
                flushes: Arc::new(AtomicU64::new(0)),
                flushed: None,
                direct: false,
                corrupt: None,
                digests: None,
                refuse_digests: false,
                thin_granule: None,
                fresh: false,
                zeroed: Arc::new(Mutex::new(Vec::new())),
            },
            data,
        )
    }

    /// Say what an earlier run left (as a reopened target would).
    pub fn with_found(mut self, found: Found) -> Self {
        self.found = found;
        self
    }

    /// A volume that cannot read back (as EBS).
    pub fn without_read_back(mut self) -> Self {
        self.read_back = false;
        self
    }

    /// Offer a concurrent reader that sees only flushed bytes.
    pub fn with_concurrent_reader(mut self) -> Self {
        let now = self.bytes().clone();
        self.flushed = Some(std::sync::Arc::new(Mutex::new(now)));
        self
    }

    /// Offer a concurrent reader that sees every completed write, flushed
    /// or not (as a raw file's `O_DIRECT` reader).
    pub fn with_direct_reader(mut self) -> Self {
        self.flushed = Some(self.data.clone());
        self.direct = true;
        self
    }

    /// The count of its flushes, readable after the volume moved on.
    pub fn flush_count(&self) -> Arc<AtomicU64> {
        self.flushes.clone()
    }

    /// Its concurrent reader digests what it holds in units of `unit` bytes,
    /// as an RBD image's objects on the OSDs: a unit whose bytes are all
    /// zeros is not stored, and a unit is stored up to its last non-zero
    /// byte. `asked` counts the calls.
    pub fn with_digests(mut self, unit: u64, asked: Arc<AtomicU64>) -> Self {
        self.digests = Some((unit, asked));
        self
    }

    /// Its reader offers digests but refuses each request as an OSD without
    /// the checksum operation would (`EOPNOTSUPP`).
    pub fn refusing_digests(mut self) -> Self {
        self.refuse_digests = true;
        self
    }

    /// Claim to keep zeros thin in units of `granule` bytes (as a sparse
    /// file or qcow2 image does).
    pub fn with_thin_granule(mut self, granule: u64) -> Self {
        self.thin_granule = Some(granule);
        self
    }

    /// Claim to be new and all zeros ([`Volume::fresh_reads_zero`]).
    pub fn fresh(mut self) -> Self {
        self.fresh = true;
        self
    }

    /// The `(offset, len)` of every `write_zeroes` so far, readable after
    /// the volume moved on.
    pub fn zeroed(&self) -> Arc<Mutex<Vec<(u64, u64)>>> {
        self.zeroed.clone()
    }

    /// Read `[offset, offset+len)` back with every bit flipped (both read paths).
    pub fn corrupting_reads(mut self, offset: u64, len: u64) -> Self {
        self.corrupt = Some((offset, offset + len));
        self
    }

    fn count(&mut self) -> Result<()> {
        self.writes += 1;
        if Some(self.writes) == self.fail_at {
            return Err(Error::Injected(self.writes));
        }
        Ok(())
    }

    fn range(&self, offset: u64, len: usize) -> Result<std::ops::Range<usize>> {
        let size = self.size();
        match offset.checked_add(len as u64) {
            Some(end) if end <= size => Ok(offset as usize..end as usize),
            _ => Err(Error::Usage(format!(
                "fake volume: {len} bytes at {offset} are past its end ({size})"
            ))),
        }
    }

    fn bytes(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Volume for FakeVolume {
    fn size(&self) -> u64 {
        self.bytes().len() as u64
    }
    fn describe(&self) -> String {
        "fake volume".into()
    }
    fn state_key(&self) -> String {
        "fake".into()
    }
    fn found(&self) -> Found {
        self.found
    }
    fn geometry(&self) -> crate::Geometry {
        crate::Geometry {
            thin_granule: self.thin_granule,
            ..crate::Geometry::default()
        }
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.count()?;
        let r = self.range(offset, data.len())?;
        self.bytes()[r].copy_from_slice(data);
        Ok(())
    }
    fn fresh_reads_zero(&self) -> bool {
        self.fresh
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.count()?;
        let r = self.range(offset, len as usize)?;
        self.bytes()[r].fill(0);
        self.zeroed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((offset, len));
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        if let (Some(f), false) = (&self.flushed, self.direct) {
            let now = self.bytes().clone();
            *f.lock().unwrap_or_else(|p| p.into_inner()) = now;
        }
        Ok(())
    }
    fn can_read_back(&self) -> bool {
        self.read_back
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.bytes()[r]);
        corrupt(self.corrupt, offset, buf);
        Ok(())
    }
    fn concurrent_reader(&mut self) -> Result<Option<Box<dyn VolumeReader>>> {
        Ok(self.flushed.clone().map(|flushed| {
            Box::new(FakeReader {
                flushed,
                direct: self.direct,
                corrupt: self.corrupt,
                digests: self.digests.clone(),
                refuse_digests: self.refuse_digests,
            }) as Box<dyn VolumeReader>
        }))
    }
    fn finish(self: Box<Self>) -> Result<Finished> {
        Ok(Finished {
            path: None,
            format: "raw",
            volume: None,
        })
    }
}

/// Flip the bits of what `buf` (read at `offset`) holds of the corrupt range.
fn corrupt(range: Option<(u64, u64)>, offset: u64, buf: &mut [u8]) {
    if let Some((start, end)) = range {
        for (i, b) in buf.iter_mut().enumerate() {
            if (start..end).contains(&(offset + i as u64)) {
                *b = !*b;
            }
        }
    }
}

/// A [`FakeVolume`]'s concurrent reader: the bytes as of the volume's last flush.
#[derive(Debug)]
pub struct FakeReader {
    flushed: Shared,
    direct: bool,
    corrupt: Option<(u64, u64)>,
    digests: Option<(u64, Arc<AtomicU64>)>,
    refuse_digests: bool,
}

impl VolumeReader for FakeReader {
    fn sees_completed_writes(&self) -> bool {
        self.direct
    }

    fn read_batch(&mut self, reads: &mut [ReadAt<'_>]) -> Result<()> {
        let bytes = self.flushed.lock().unwrap_or_else(|p| p.into_inner());
        for r in reads {
            let start = usize::try_from(r.offset).unwrap_or(usize::MAX);
            let src = start
                .checked_add(r.buf.len())
                .and_then(|end| bytes.get(start..end))
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "fake volume: {} bytes at {} are past its end ({})",
                        r.buf.len(),
                        r.offset,
                        bytes.len()
                    ))
                })?;
            r.buf.copy_from_slice(src);
            corrupt(self.corrupt, r.offset, r.buf);
        }
        Ok(())
    }

    fn digest_unit(&mut self) -> Option<u64> {
        self.digests.as_ref().map(|(unit, _)| *unit)
    }

    fn stored_digests(&mut self, digests: &mut [StoredDigest]) -> Result<()> {
        let Some((unit, asked)) = self.digests.clone() else {
            return Err(Error::Usage("fake volume: no digests".into()));
        };
        asked.fetch_add(1, Ordering::Relaxed);
        if self.refuse_digests {
            return Err(Error::Ceph {
                call: "rados_read_op_checksum",
                what: "fake volume".into(),
                errno: -(nix::errno::Errno::EOPNOTSUPP as i32),
                meaning: "operation not supported".into(),
            });
        }
        let bytes = self.flushed.lock().unwrap_or_else(|p| p.into_inner());
        for d in digests {
            let start = d.offset / unit * unit;
            if d.offset + d.len > start + unit {
                return Err(Error::Usage(format!(
                    "fake volume: digest range at {} (+{}) crosses a unit",
                    d.offset, d.len
                )));
            }
            let end = (start + unit).min(bytes.len() as u64);
            let mut object = bytes
                .get(start as usize..end as usize)
                .ok_or_else(|| Error::Usage(format!("fake volume: {start} is past its end")))?
                .to_vec();
            corrupt(self.corrupt, start, &mut object);
            // Stored up to its last non-zero byte; nothing stored when all zeros.
            let Some(size) = object.iter().rposition(|&b| b != 0).map(|i| i as u64 + 1) else {
                d.stored = None;
                continue;
            };
            let within = d.offset - start;
            let n = d.len.min(size.saturating_sub(within));
            let mut h = DigestHasher::new();
            h.update(&object[within as usize..(within + n) as usize]);
            d.stored = Some((n, h.finish()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fails_exactly_at_the_nth_write_and_keeps_earlier_ones() {
        let (mut v, data) = FakeVolume::new(16, Some(3));
        v.write_at(0, &[1, 2]).unwrap();
        v.write_zeroes(0, 1).unwrap();
        assert!(matches!(v.write_at(4, &[9]), Err(Error::Injected(3))));
        v.write_at(8, &[5]).unwrap();
        assert_eq!(&data.lock().unwrap()[..9], &[0, 2, 0, 0, 0, 0, 0, 0, 5]);
        assert!(v.write_at(15, &[1, 1]).is_err(), "past the end");
    }

    #[test]
    fn a_direct_reader_sees_completed_writes_and_flushes_are_counted() {
        let (v, _) = FakeVolume::new(4, None);
        let mut v = v.with_direct_reader();
        let flushes = v.flush_count();
        let mut r = v.concurrent_reader().unwrap().unwrap();
        assert!(r.sees_completed_writes());
        v.write_at(0, &[1, 2, 3, 4]).unwrap();
        let mut buf = [0u8; 4];
        r.read_batch(&mut [ReadAt {
            offset: 0,
            buf: &mut buf,
        }])
        .unwrap();
        assert_eq!(buf, [1, 2, 3, 4], "no flush needed");
        v.flush().unwrap();
        assert_eq!(flushes.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_concurrent_reader_sees_only_flushed_bytes_and_corruption_shows_everywhere() {
        let (v, _) = FakeVolume::new(8, None);
        let mut v = v.with_concurrent_reader().corrupting_reads(6, 1);
        let mut r = v.concurrent_reader().unwrap().unwrap();
        v.write_at(0, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        let mut buf = [9u8; 4];
        r.read_batch(&mut [ReadAt {
            offset: 0,
            buf: &mut buf,
        }])
        .unwrap();
        assert_eq!(buf, [0; 4], "not flushed yet");
        v.flush().unwrap();
        let mut buf = [0u8; 4];
        r.read_batch(&mut [ReadAt {
            offset: 4,
            buf: &mut buf,
        }])
        .unwrap();
        assert_eq!(buf, [5, 6, !7, 8]);
        let mut buf = [0u8; 2];
        v.read_at(6, &mut buf).unwrap();
        assert_eq!(buf, [!7, 8]);
        let mut buf = [0u8; 2];
        assert!(r
            .read_batch(&mut [ReadAt {
                offset: 7,
                buf: &mut buf
            }])
            .is_err());
        let (mut plain, _) = FakeVolume::new(8, None);
        assert!(plain.concurrent_reader().unwrap().is_none());
    }
}
