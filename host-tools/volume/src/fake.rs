//! An in-memory volume that fails at its N-th write: the fault-injecting
//! fake for tests of the pipeline above the trait (what happens to the
//! resume state, the marker, the exit code when a target fails mid-way).

use std::sync::{Arc, Mutex};

use crate::{Error, Finished, Found, Result, Volume};

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
    pub flushes: u64,
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
                flushes: 0,
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
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.count()?;
        let r = self.range(offset, data.len())?;
        self.bytes()[r].copy_from_slice(data);
        Ok(())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.count()?;
        let r = self.range(offset, len as usize)?;
        self.bytes()[r].fill(0);
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        self.flushes += 1;
        Ok(())
    }
    fn can_read_back(&self) -> bool {
        self.read_back
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.bytes()[r]);
        Ok(())
    }
    fn finish(self: Box<Self>) -> Result<Finished> {
        Ok(Finished {
            path: None,
            format: "raw",
            volume: None,
        })
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
}
