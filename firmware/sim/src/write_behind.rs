//! Write-behind for the simulated medium's large writes: a write is copied
//! into an aligned buffer and handed to one of [`WRITERS`] I/O threads that
//! write it with `O_DIRECT`, and the call returns; [`WriteBehind::settle`]
//! waits for all of them (the medium's flush, before its `fdatasync`).
//!
//! Why: the NBD server carries out one request at a time, so each 4 MiB
//! write of a capture waited for the disk (queue depth 1, 3-4 ms on the
//! test VM) before the next request was even looked at, and the capture
//! through the simulator ran at x0.72-0.79 of the same capture onto an
//! image file. A board's SD card or eMMC behind USB mass storage has a
//! write cache and a command queue of its own; this is the simulator's.
//!
//! Semantics are those of a device with a volatile write cache, which is
//! what the NBD client and the firmware core already assume: a write is
//! accepted once queued, and only a flush makes it durable (a `SIGKILL` of
//! the simulator may lose what was queued and not flushed, as a power cut
//! loses a device's cache; a clean stop drains the queue). Order is kept
//! where it matters: a read, a page-cache write or a queued write that
//! overlaps a queued write waits for it first, across every handle on the
//! image (they share one `WriteBehind`). A failed write is logged with its
//! offset and returned by the next flush ([`WriteBehind::settle`]), once, as
//! a disk reports a write-back error at the next cache flush (and Linux at
//! the next `fsync`): the host then knows everything since its last flush
//! is in doubt and writes it again (a capture resumes from its last
//! checkpoint). Kept for every later call, it made the appliance answer
//! EIO to everything until restarted, and its lock failed half-way.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use image_format::store::aligned::{refused_direct, AlignedBuf};

/// I/O threads: two writes in flight let a virtual or flash disk overlap
/// them (two 4 MiB `O_DIRECT` streams wrote 1 GiB in 0.45-0.48 s on the
/// test VM where one took 0.56-0.62 s).
const WRITERS: usize = 2;
/// Writes queued or being written at most (memory: this many buffers of
/// the largest write, 4 MiB from `mgear`).
const QUEUED: usize = 4;

/// A queued write: `len` bytes of `buf` at byte `at`.
struct Job {
    at: u64,
    buf: AlignedBuf,
    len: usize,
}

#[derive(Default)]
struct State {
    /// Byte ranges queued or being written.
    pending: Vec<(u64, u64)>,
    /// Buffers of finished writes, for the next ones.
    spare: Vec<AlignedBuf>,
    /// The first write that failed since the last flush, for that flush.
    failure: Option<(Option<i32>, String)>,
    /// The file system refused a direct write: the page cache does the rest.
    refused: bool,
}

impl State {
    fn overlaps(&self, at: u64, end: u64) -> bool {
        self.pending.iter().any(|&(a, e)| a < end && at < e)
    }

    /// The failure since the last flush, taken: a flush reports it once.
    fn take_failure(&mut self) -> io::Result<()> {
        match self.failure.take() {
            None => Ok(()),
            Some((code, text)) => Err(io::Error::new(
                code.map_or(io::ErrorKind::Other, |c| {
                    io::Error::from_raw_os_error(c).kind()
                }),
                text,
            )),
        }
    }
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A writer thread never panics holding the lock (it only moves
        // values); a poisoned lock still holds consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `ready` holds and returns the state.
    fn wait(&self, ready: impl Fn(&State) -> bool) -> MutexGuard<'_, State> {
        let mut st = self.lock();
        while !ready(&st) {
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st
    }
}

/// The write-behind queue of one medium image, shared by its handles.
pub struct WriteBehind {
    shared: Arc<Shared>,
    jobs: Mutex<Option<SyncSender<Job>>>,
    threads: Vec<JoinHandle<()>>,
}

impl WriteBehind {
    /// I/O threads writing through `direct` (the image opened with
    /// `O_DIRECT`), or through `buffered` once the file system refuses a
    /// direct write.
    pub fn start(direct: File, buffered: File) -> io::Result<WriteBehind> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let (tx, rx) = sync_channel::<Job>(QUEUED);
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::with_capacity(WRITERS);
        for n in 0..WRITERS {
            let (direct, buffered) = (direct.try_clone()?, buffered.try_clone()?);
            let (shared, rx) = (Arc::clone(&shared), Arc::clone(&rx));
            threads.push(
                std::thread::Builder::new()
                    .name(format!("medium-write-{n}"))
                    .spawn(move || writer(&direct, &buffered, &rx, &shared))?,
            );
        }
        Ok(WriteBehind {
            shared,
            jobs: Mutex::new(Some(tx)),
            threads,
        })
    }

    /// Whether writes still go direct (the file system has not refused one).
    pub fn is_direct(&self) -> bool {
        !self.shared.lock().refused
    }

    /// Queues `data` (4 KiB-aligned offset and length) for writing at `at`.
    /// It is copied: the caller's buffer is free again on return.
    pub fn write(&self, at: u64, data: &[u8]) -> io::Result<()> {
        let end = at + data.len() as u64;
        let mut st = self
            .shared
            .wait(|st| st.pending.len() < QUEUED && !st.overlaps(at, end));
        let mut buf = st
            .spare
            .pop()
            .unwrap_or_else(|| AlignedBuf::new(data.len()));
        st.pending.push((at, end));
        drop(st);
        buf.reserve(data.len());
        buf.as_mut_slice()[..data.len()].copy_from_slice(data);
        let job = Job {
            at,
            buf,
            len: data.len(),
        };
        let sent = match &*self.jobs.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(tx) => tx.send(job).is_ok(),
            None => false,
        };
        if !sent {
            let mut st = self.shared.lock();
            st.pending.retain(|&r| r != (at, end));
            return Err(io::Error::other("the medium's write threads stopped"));
        }
        Ok(())
    }

    /// Waits until no queued write overlaps bytes `at..at + len`: a read or
    /// a page-cache write of them follows.
    pub fn settle_range(&self, at: u64, len: usize) {
        let end = at + len as u64;
        drop(self.shared.wait(|st| !st.overlaps(at, end)));
    }

    /// Waits for every queued write; the first that failed since the last
    /// settle is the error (reported once).
    pub fn settle(&self) -> io::Result<()> {
        self.shared.wait(|st| st.pending.is_empty()).take_failure()
    }
}

impl Drop for WriteBehind {
    /// Queued writes are written before the threads end (a clean stop
    /// loses nothing the host was told was accepted).
    fn drop(&mut self) {
        drop(self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn writer(direct: &File, buffered: &File, jobs: &Mutex<Receiver<Job>>, shared: &Shared) {
    loop {
        // One thread waits on the queue at a time; the other is writing.
        let job = match jobs.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let data = &job.buf.as_slice()[..job.len];
        let refused = shared.lock().refused;
        let mut result = if refused {
            buffered.write_all_at(data, job.at)
        } else {
            direct.write_all_at(data, job.at)
        };
        let mut now_refused = false;
        if let Err(e) = &result {
            if !refused && refused_direct(e) {
                // The file system takes O_DIRECT opens but not these
                // writes: stop trying, the page cache does them.
                log::debug!("medium: direct write refused ({e}); using the page cache");
                now_refused = true;
                result = buffered.write_all_at(data, job.at);
            }
        }
        let mut st = shared.lock();
        st.refused |= now_refused;
        if let Err(e) = result {
            let text = format!("medium write of {} bytes at byte {}: {e}", job.len, job.at);
            log::error!("{text} (reported at the next flush)");
            if st.failure.is_none() {
                st.failure = Some((e.raw_os_error(), text));
            }
        }
        let end = job.at + job.len as u64;
        st.pending.retain(|&r| r != (job.at, end));
        if st.spare.len() < QUEUED {
            st.spare.push(job.buf);
        }
        drop(st);
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(len: usize) -> (tempfile::TempDir, File, Option<File>) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.img");
        std::fs::write(&p, vec![0u8; len]).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let direct = image_format::store::aligned::reopen_direct(&f);
        (dir, f, direct)
    }

    #[test]
    fn queued_writes_land_in_order_and_overlapping_ones_wait() {
        let (_dir, f, direct) = image(8 << 20);
        // Where the file system refuses O_DIRECT (tmpfs) the buffered
        // descriptor plays both parts; the queue is what is tested.
        let direct = direct.unwrap_or_else(|| f.try_clone().unwrap());
        let wb = WriteBehind::start(direct, f.try_clone().unwrap()).unwrap();
        // Many writes over the same 1 MiB: the last one queued must win.
        for v in 1..=20u8 {
            wb.write(1 << 20, &vec![v; 1 << 20]).unwrap();
            wb.write((2 + u64::from(v % 4)) << 20, &vec![v; 1 << 20])
                .unwrap();
        }
        wb.settle_range(1 << 20, 4096);
        let mut back = vec![0u8; 1 << 20];
        f.read_exact_at(&mut back, 1 << 20).unwrap();
        assert!(back.iter().all(|&b| b == 20), "the last write wins");
        wb.settle().unwrap();
        for (slot, last) in [(2u64, 20u8), (3, 17), (4, 18), (5, 19)] {
            f.read_exact_at(&mut back, slot << 20).unwrap();
            assert!(back.iter().all(|&b| b == last), "slot {slot}");
        }
    }

    #[test]
    fn a_failed_write_is_reported_once_by_the_next_flush_with_its_offset() {
        let (_dir, f, _) = image(1 << 20);
        // A read-only descriptor: every write fails (EBADF).
        let ro = std::fs::File::open(
            std::fs::read_link(format!("/proc/self/fd/{}", {
                use std::os::fd::AsRawFd;
                f.as_raw_fd()
            }))
            .unwrap(),
        )
        .unwrap();
        let wb = WriteBehind::start(ro.try_clone().unwrap(), ro).unwrap();
        wb.write(0, &[1u8; 4096]).unwrap();
        wb.settle_range(0, 10);
        let e = wb.settle().unwrap_err();
        assert_eq!(
            e.kind(),
            io::Error::from_raw_os_error(libc::EBADF).kind(),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("medium write of 4096 bytes at byte 0"),
            "{e}"
        );
        // Reported once, as a disk reports a write-back error at one flush.
        wb.settle().unwrap();
        wb.write(8192, &[1u8; 4096]).unwrap();
        assert!(
            wb.settle().is_err(),
            "a later failure is reported at its flush"
        );
    }

    #[test]
    fn dropping_the_queue_writes_what_it_holds() {
        let (_dir, f, direct) = image(4 << 20);
        let direct = direct.unwrap_or_else(|| f.try_clone().unwrap());
        let wb = WriteBehind::start(direct, f.try_clone().unwrap()).unwrap();
        for k in 0..4u8 {
            wb.write(u64::from(k) << 20, &vec![k + 1; 1 << 20]).unwrap();
        }
        drop(wb);
        let mut back = vec![0u8; 4 << 20];
        f.read_exact_at(&mut back, 0).unwrap();
        for k in 0..4usize {
            assert!(back[k << 20..(k + 1) << 20]
                .iter()
                .all(|&b| b == k as u8 + 1));
        }
    }
}
