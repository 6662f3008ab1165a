//! The simulator's spare core for seal and arrival: the region hashes of
//! the attestation ([`mgear_firmware::regions::hash_regions`]) computed on a
//! thread with its own handle on the medium image, while the firmware core
//! walks the files on the main thread
//! ([`mgear_firmware::hal::Platform::start_region_hashes`]).
//!
//! The walk only reads, and the block service is not served while a seal
//! or arrival runs (the core holds the appliance), so both threads see the
//! same bytes. Should the medium be written meanwhile anyway (its write
//! counter moved), [`RegionThread::finish`] hashes it again, so the result
//! always describes the medium as it is when the job ends.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mgear_firmware::hal::{BlockDevice, HwError, RegionJob};
use mgear_firmware::regions::hash_regions;

use crate::medium::FileMedium;

/// How often [`RegionThread::finish`] reports progress while it waits.
const TICK: Duration = Duration::from_millis(500);

type Hashes = Result<Option<Vec<[u8; 32]>>, HwError>;

/// Region hashes being computed on a thread.
pub struct RegionThread {
    handle: Option<JoinHandle<()>>,
    result: mpsc::Receiver<Hashes>,
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    total: u64,
    /// For a second pass if the medium was written meanwhile.
    medium: FileMedium,
    writes_at_start: u64,
    region: u64,
    chunk: usize,
}

impl RegionThread {
    /// Start hashing `medium` (a second handle on the image, sharing its
    /// write counter) by regions of `region` bytes, `chunk` bytes per read.
    pub fn start(medium: FileMedium, region: u64, chunk: usize) -> Result<Self, HwError> {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let total = medium.block_count() * medium.block_size() as u64;
        let writes_at_start = medium.writes();
        let mut dev = medium.try_clone()?;
        let (tx, result) = mpsc::sync_channel(1);
        let (d, s) = (Arc::clone(&done), Arc::clone(&stop));
        let handle = std::thread::Builder::new()
            .name("region-hashes".into())
            .spawn(move || {
                let t0 = Instant::now();
                let r = hash_regions(&mut dev, region, chunk, &mut |n, _| {
                    d.store(n, Ordering::Relaxed);
                    !s.load(Ordering::Relaxed)
                });
                log::debug!(
                    "region hashes of {total} bytes took {} ms",
                    t0.elapsed().as_millis()
                );
                let _ = tx.send(r);
            })
            .map_err(|e| HwError::Io(format!("starting the region-hash thread: {e}")))?;
        Ok(RegionThread {
            handle: Some(handle),
            result,
            done,
            stop,
            total,
            medium,
            writes_at_start,
            region,
            chunk,
        })
    }
}

impl RegionJob for RegionThread {
    fn finish(
        mut self: Box<Self>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Vec<[u8; 32]>, HwError> {
        let mut reported = 0;
        let t0 = Instant::now();
        let hashes = loop {
            match self.result.recv_timeout(TICK) {
                Ok(r) => break r?,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let n = self.done.load(Ordering::Relaxed);
                    if n != reported {
                        progress(n, self.total);
                        reported = n;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(HwError::Io("the region-hash thread died".into()))
                }
            }
        };
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        log::debug!(
            "the file walk waited {} ms for the region hashes",
            t0.elapsed().as_millis()
        );
        let hashes = match hashes {
            Some(h) if self.medium.writes() == self.writes_at_start => h,
            _ => {
                log::warn!("the medium was written while its regions were hashed: hashing again");
                let total = self.total;
                hash_regions(&mut self.medium, self.region, self.chunk, &mut |n, _| {
                    if n >= reported + mgear_firmware::attest::PROGRESS_BYTES || n == total {
                        progress(n, total);
                        reported = n;
                    }
                    true
                })?
                .ok_or_else(|| HwError::Io("region hashing stopped".into()))?
            }
        };
        progress(self.total, self.total);
        Ok(hashes)
    }
}

impl Drop for RegionThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::medium::BLOCK_SIZE;

    fn image(dir: &std::path::Path, blocks: usize) -> FileMedium {
        let path = dir.join("medium.img");
        let data: Vec<u8> = (0..blocks * BLOCK_SIZE)
            .map(|i| (i * 13 % 251) as u8)
            .collect();
        std::fs::write(&path, data).unwrap();
        FileMedium::open(&path).unwrap()
    }

    fn inline(m: &mut FileMedium, region: u64, chunk: usize) -> Vec<[u8; 32]> {
        hash_regions(m, region, chunk, &mut |_, _| true)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn thread_hashes_equal_inline_hashes_and_follow_writes() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = image(dir.path(), 300);
        let (region, chunk) = (16 * 1024, 8 * 1024);
        let want = inline(&mut m, region, chunk);
        assert_eq!(want.len(), 10);
        let job = Box::new(RegionThread::start(m.try_clone().unwrap(), region, chunk).unwrap());
        let mut last = (0, 0);
        let got = job.finish(&mut |done, total| last = (done, total)).unwrap();
        assert_eq!(got, want);
        assert_eq!(last, (300 * 512, 300 * 512));

        // Written while the job ran: the result is that of the medium after.
        let job = Box::new(RegionThread::start(m.try_clone().unwrap(), region, chunk).unwrap());
        m.write_blocks(100, &[0xee; 512]).unwrap();
        let got = job.finish(&mut |_, _| {}).unwrap();
        let after = inline(&mut m, region, chunk);
        assert_ne!(after, want);
        assert_eq!(got, after);

        // Dropped unfinished: the thread stops.
        drop(RegionThread::start(m.try_clone().unwrap(), region, chunk).unwrap());
    }
}
