//! `DirectFile`: a FAT32 medium image or device ([`super::FatDevice`]) read
//! and written with `O_DIRECT` where the transfer allows it, plus the
//! aligned-buffer helpers the capture source shares.
//!
//! Why: on the host, copying segment data through the page cache cost more
//! CPU than sealing it (the kernel's `copy_folio_from_iter` under `write`,
//! `copy_to_iter` under `read`, page allocation and writeback: `dd` of the
//! same bytes costs 5-7 CPU-s/GiB on the test VM), and a capture of a disk
//! larger than RAM pushed a production server's cache out. With `O_DIRECT`
//! the device reads and writes the process's own buffers.
//!
//! How, for writes: a write that continues the previous one (segment
//! records, appended one after another) is copied into a 4 MiB staging
//! buffer aligned to [`ALIGN`]; whole aligned blocks of it go to an I/O
//! thread that writes them with `O_DIRECT` while the caller seals the next
//! records. What is not aligned (the head of a run up to the next
//! [`ALIGN`] boundary, the tail after the last whole block, small writes
//! such as FAT entries and directory blocks) goes through the page cache
//! as before. Reads of at least [`DIRECT_MIN`] bytes read an aligned window
//! of at least 4 MiB directly (read-ahead for the next records); smaller
//! reads, and every read when the file system refuses `O_DIRECT` (tmpfs,
//! some FUSE and network file systems), use the page cache.
//!
//! Coherence: a read or a buffered write that overlaps staged or in-flight
//! bytes first waits for them; the kernel keeps direct and buffered I/O of
//! distinct ranges coherent (a direct transfer writes back and drops cached
//! pages of its range). Durability is unchanged: a write is "completed"
//! once `write` returns (staged, queued or in the page cache), and
//! [`FatDevice::sync_device`] writes out the stage, waits for the I/O thread
//! and then calls `fdatasync`, which covers direct writes (their block
//! allocation, the device's write cache) as it covers buffered ones. An
//! error of the I/O thread (no space on the file system holding the image,
//! an I/O error) is returned by the next write, read or sync, and every
//! call after it fails too.

use std::fs::File;
use std::io::{self, ErrorKind, Read, Seek, SeekFrom, Write};

use std::os::unix::fs::FileExt;

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::aligned::{read_direct, refused_direct, reopen_direct, AlignedBuf, FileRange, ALIGN};
use super::fat::FatDevice;
use super::RangeRead;

/// Reads at least this large go direct (smaller ones are FAT sectors and
/// directory blocks, served by the page cache).
pub const DIRECT_MIN: usize = 64 * 1024;
/// Size of a staging buffer (one being filled, up to two being written).
const STAGE: usize = 4 << 20;
const BUFFERS: usize = 3;
/// Least bytes read ahead by a direct read.
const WINDOW: usize = 4 << 20;

/// An error kept to be returned again (`io::Error` is not `Clone`).
#[derive(Debug, Clone)]
struct Failure {
    os: Option<i32>,
    kind: ErrorKind,
    text: String,
}

impl Failure {
    fn of(e: &io::Error) -> Self {
        Failure {
            os: e.raw_os_error(),
            kind: e.kind(),
            text: e.to_string(),
        }
    }
    fn error(&self) -> io::Error {
        match self.os {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(self.kind, self.text.clone()),
        }
    }
}

/// A job for the I/O thread: write `len` bytes of `buf` at `at`, or
/// (`read`) read ahead `len` bytes from `at` into it.
struct Job {
    at: u64,
    buf: AlignedBuf,
    len: usize,
    read: bool,
}

/// What the I/O thread gives back: the buffer, and whether the write failed
/// or had to go through the page cache; for a read ahead, the bytes read
/// (`None`: it failed, and the read it was for will say why).
struct Done {
    buf: AlignedBuf,
    result: Result<(), Failure>,
    refused: bool,
    read: Option<Option<usize>>,
}

/// Writes the jobs in order. `refuse_all` plays a file system that opens
/// with `O_DIRECT` but refuses every direct transfer (tests).
fn io_thread(
    direct: File,
    buffered: File,
    jobs: Receiver<Job>,
    done: SyncSender<Done>,
    refuse_all: bool,
) {
    for job in jobs {
        if job.read {
            let mut buf = job.buf;
            let n = if refuse_all {
                None
            } else {
                read_direct(&direct, job.at, job.len, &mut buf).ok()
            };
            let back = Done {
                buf,
                result: Ok(()),
                refused: false,
                read: Some(n),
            };
            if done.send(back).is_err() {
                return;
            }
            continue;
        }
        let data = &job.buf.as_slice()[..job.len];
        let mut refused = false;
        let tried = if refuse_all {
            Err(io::Error::from_raw_os_error(
                rustix::io::Errno::INVAL.raw_os_error(),
            ))
        } else {
            direct.write_all_at(data, job.at)
        };
        let result = match tried {
            Ok(()) => Ok(()),
            Err(e) if refused_direct(&e) => {
                refused = true;
                buffered
                    .write_all_at(data, job.at)
                    .map_err(|e| Failure::of(&e))
            }
            Err(e) => Err(Failure::of(&e)),
        };
        let back = Done {
            buf: job.buf,
            result,
            refused,
            read: None,
        };
        if done.send(back).is_err() {
            return;
        }
    }
}

/// Bytes written but not yet handed to the I/O thread: `len` bytes from
/// the aligned device offset `at`.
struct Stage {
    at: u64,
    buf: AlignedBuf,
    len: usize,
}

/// The direct half of a [`DirectFile`].
struct Direct {
    /// `O_DIRECT` descriptor for reads (writes use the I/O thread's clone).
    file: File,
    /// Reads for other threads ([`FatDevice::range_reader`]).
    shared: Arc<FileRange>,
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    thread: Option<JoinHandle<()>>,
    in_flight: usize,
    /// Staging buffers allocated so far (at most [`BUFFERS`]).
    buffers: usize,
    spare: Vec<AlignedBuf>,
    stage: Option<Stage>,
    /// Device range covered by the jobs handed to the thread since the last drain.
    flight: Option<(u64, u64)>,
    /// The file system refused a direct write: stop using `O_DIRECT`.
    refused: bool,
    /// Bytes read ahead: `window_len` bytes from `window_at`.
    window: AlignedBuf,
    window_at: u64,
    window_len: usize,
    /// The next window, read by the I/O thread while the caller works
    /// through this one: its range while in flight, then its bytes.
    ahead_pending: Option<u64>,
    ahead_ready: Option<(AlignedBuf, u64, usize)>,
    /// Buffer for the next read ahead.
    ahead_spare: Option<AlignedBuf>,
}

impl Drop for Direct {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has written what it holds.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn overlaps(r: Option<(u64, u64)>, off: u64, len: usize) -> bool {
    r.is_some_and(|(s, e)| off < e && s < off + len as u64)
}

/// A FAT medium image or device with `O_DIRECT` for large transfers; see
/// the module doc. Behaves like the plain `File` when `O_DIRECT` is refused.
pub struct DirectFile {
    file: File,
    pos: u64,
    direct: Option<Direct>,
    failed: Option<Failure>,
}

impl core::fmt::Debug for DirectFile {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DirectFile")
            .field("direct", &self.direct.is_some())
            .field("pos", &self.pos)
            .finish()
    }
}

impl DirectFile {
    /// Wrap an open image file or device (opened read-only or read-write).
    pub fn new(file: File) -> Self {
        let direct = Self::start(&file, false);
        DirectFile {
            file,
            pos: 0,
            direct,
            failed: None,
        }
    }

    /// Wrap `file` without `O_DIRECT`: the page cache does everything, as
    /// when the file system refuses it.
    pub fn buffered(file: File) -> Self {
        DirectFile {
            file,
            pos: 0,
            direct: None,
            failed: None,
        }
    }

    /// Whether large transfers currently go direct.
    pub fn is_direct(&self) -> bool {
        self.direct.as_ref().is_some_and(|d| !d.refused)
    }

    /// As [`new`](Self::new) on a file system that takes `O_DIRECT` at
    /// open but refuses the transfers.
    #[cfg(test)]
    fn refusing(file: File) -> Self {
        let direct = Self::start(&file, true);
        DirectFile {
            file,
            pos: 0,
            direct,
            failed: None,
        }
    }

    fn start(file: &File, refuse_all: bool) -> Option<Direct> {
        let direct = reopen_direct(file)?;
        let writer = direct.try_clone().ok()?;
        let buffered = file.try_clone().ok()?;
        let shared = Arc::new(if refuse_all {
            FileRange::buffered(file).ok()?
        } else {
            FileRange::new(file).ok()?
        });
        let (jobs_tx, jobs_rx) = sync_channel::<Job>(BUFFERS);
        let (done_tx, done_rx) = sync_channel::<Done>(BUFFERS);
        let thread = std::thread::Builder::new()
            .name("medium-io".into())
            .spawn(move || io_thread(writer, buffered, jobs_rx, done_tx, refuse_all))
            .ok()?;
        Some(Direct {
            file: direct,
            shared,
            jobs: Some(jobs_tx),
            done: done_rx,
            thread: Some(thread),
            in_flight: 0,
            buffers: 0,
            spare: Vec::new(),
            stage: None,
            flight: None,
            refused: false,
            window: AlignedBuf::new(ALIGN),
            window_at: 0,
            window_len: 0,
            ahead_pending: None,
            ahead_ready: None,
            ahead_spare: None,
        })
    }

    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some(f) => Err(f.error()),
            None => Ok(()),
        }
    }

    /// Keep the first failure: every later call returns it again.
    fn fail(&mut self, e: io::Error) -> io::Error {
        if self.failed.is_none() {
            self.failed = Some(Failure::of(&e));
        }
        e
    }

    /// Take one completion from the I/O thread.
    fn complete_one(&mut self) -> io::Result<()> {
        let Some(d) = self.direct.as_mut() else {
            return Ok(());
        };
        if d.in_flight == 0 {
            return Ok(());
        }
        let done = d.done.recv();
        d.in_flight -= 1;
        let Ok(done) = done else {
            return Err(self.fail(io::Error::other("the medium's I/O thread stopped")));
        };
        if let Some(read) = done.read {
            let at = d.ahead_pending.take().unwrap_or(0);
            match read {
                Some(n) => d.ahead_ready = Some((done.buf, at, n)),
                None => d.ahead_spare = Some(done.buf),
            }
            return Ok(());
        }
        d.spare.push(done.buf);
        d.refused |= done.refused;
        match done.result {
            Ok(()) => Ok(()),
            Err(f) => Err(self.fail(f.error())),
        }
    }

    /// Wait until the I/O thread has written everything queued.
    fn drain(&mut self) -> io::Result<()> {
        while self.direct.as_ref().is_some_and(|d| d.in_flight > 0) {
            self.complete_one()?;
        }
        if let Some(d) = self.direct.as_mut() {
            d.flight = None;
        }
        Ok(())
    }

    /// A staging buffer: a spare one, a new one, or the next one the I/O
    /// thread gives back.
    fn take_buffer(&mut self) -> io::Result<AlignedBuf> {
        loop {
            let Some(d) = self.direct.as_mut() else {
                return Err(io::Error::other("direct I/O is off"));
            };
            if let Some(b) = d.spare.pop() {
                return Ok(b);
            }
            if d.buffers < BUFFERS {
                d.buffers += 1;
                return Ok(AlignedBuf::new(STAGE));
            }
            self.complete_one()?;
        }
    }

    fn submit(&mut self, at: u64, buf: AlignedBuf, len: usize) -> io::Result<()> {
        let Some(d) = self.direct.as_mut() else {
            return Err(io::Error::other("direct I/O is off"));
        };
        let job = Job {
            at,
            buf,
            len,
            read: false,
        };
        let sent = d.jobs.as_ref().is_some_and(|j| j.send(job).is_ok());
        if !sent {
            return Err(self.fail(io::Error::other("the medium's I/O thread stopped")));
        }
        d.in_flight += 1;
        let end = at + len as u64;
        d.flight = Some(match d.flight {
            Some((lo, hi)) => (lo.min(at), hi.max(end)),
            None => (at, end),
        });
        Ok(())
    }

    /// Hand the stage's whole blocks to the I/O thread and write its
    /// unaligned tail through the page cache.
    fn flush_stage(&mut self) -> io::Result<()> {
        let Some(stage) = self.direct.as_mut().and_then(|d| d.stage.take()) else {
            return Ok(());
        };
        let whole = stage.len / ALIGN * ALIGN;
        if whole < stage.len {
            let tail_at = stage.at + whole as u64;
            if self
                .direct
                .as_ref()
                .is_some_and(|d| overlaps(d.flight, tail_at, stage.len - whole))
            {
                self.drain()?;
            }
            let tail = &stage.buf.as_slice()[whole..stage.len];
            if let Err(e) = self.file.write_all_at(tail, stage.at + whole as u64) {
                return Err(self.fail(e));
            }
        }
        if whole > 0 {
            self.submit(stage.at, stage.buf, whole)
        } else {
            if let Some(d) = self.direct.as_mut() {
                d.spare.push(stage.buf);
            }
            Ok(())
        }
    }

    /// After the file system refused a direct write: write out what is
    /// staged, wait for the thread, and use the page cache from now on.
    fn stop_direct_if_refused(&mut self) -> io::Result<()> {
        if !self.direct.as_ref().is_some_and(|d| d.refused) {
            return Ok(());
        }
        self.flush_stage()?;
        self.drain()?;
        self.direct = None;
        Ok(())
    }

    /// Make `[off, off+len)` safe for page-cache I/O: nothing staged or in
    /// flight overlaps it.
    fn settle(&mut self, off: u64, len: usize) -> io::Result<()> {
        let staged = self.direct.as_ref().is_some_and(|d| {
            let s = d.stage.as_ref().map(|s| (s.at, s.at + s.len as u64));
            overlaps(s, off, len)
        });
        if staged {
            self.flush_stage()?;
        }
        if self
            .direct
            .as_ref()
            .is_some_and(|d| overlaps(d.flight, off, len))
        {
            self.drain()?;
        }
        Ok(())
    }

    fn buffered_write(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        self.settle(off, data.len())?;
        self.file.write_all_at(data, off).map_err(|e| self.fail(e))
    }

    /// Start reading the window after the current one, when nothing is
    /// being written (ingest, verify: reads in order through a segment).
    fn read_ahead(&mut self) {
        let Some(d) = self.direct.as_mut() else {
            return;
        };
        let idle = d.stage.is_none() && d.in_flight == 0 && !d.refused;
        if !idle || d.ahead_ready.is_some() || d.window_len < WINDOW {
            return;
        }
        let at = (d.window_at + d.window_len as u64) / ALIGN as u64 * ALIGN as u64;
        let buf = d
            .ahead_spare
            .take()
            .unwrap_or_else(|| AlignedBuf::new(WINDOW));
        let job = Job {
            at,
            buf,
            len: WINDOW,
            read: true,
        };
        if d.jobs.as_ref().is_some_and(|j| j.send(job).is_ok()) {
            d.in_flight += 1;
            d.ahead_pending = Some(at);
        }
    }

    /// Forget what was read ahead (a write may change those bytes).
    fn drop_read_ahead(&mut self) -> io::Result<()> {
        if self
            .direct
            .as_ref()
            .is_some_and(|d| d.ahead_pending.is_some())
        {
            self.drain()?;
        }
        if let Some(d) = self.direct.as_mut() {
            if let Some((buf, _, _)) = d.ahead_ready.take() {
                d.ahead_spare = Some(buf);
            }
        }
        Ok(())
    }

    /// Write `data` at device offset `off` (see the module doc).
    pub fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        self.check()?;
        self.stop_direct_if_refused()?;
        self.drop_read_ahead()?;
        let Some(d) = self.direct.as_mut() else {
            return self.file.write_all_at(data, off).map_err(|e| self.fail(e));
        };
        if d.window_len > 0 {
            // Keep the read-ahead window current rather than dropping it:
            // the FAT is read in 64 KiB windows between its small updates.
            let (w_at, w_end) = (d.window_at, d.window_at + d.window_len as u64);
            let (s, e) = (off.max(w_at), (off + data.len() as u64).min(w_end));
            if s < e {
                d.window.as_mut_slice()[(s - w_at) as usize..(e - w_at) as usize]
                    .copy_from_slice(&data[(s - off) as usize..(e - off) as usize]);
            }
        }
        let continues = d.stage.as_ref().is_some_and(|s| s.at + s.len as u64 == off);
        let mut rest = data;
        let mut at = off;
        if !continues {
            self.flush_stage()?;
            if data.len() < DIRECT_MIN {
                return self.buffered_write(off, data);
            }
            let head = ((ALIGN - (off % ALIGN as u64) as usize) % ALIGN).min(data.len());
            if head > 0 {
                self.buffered_write(off, &data[..head])?;
                rest = &data[head..];
                at = off + head as u64;
            }
            let buf = self.take_buffer()?;
            if let Some(d) = self.direct.as_mut() {
                d.stage = Some(Stage { at, buf, len: 0 });
            }
        }
        while !rest.is_empty() {
            let Some(d) = self.direct.as_mut() else {
                return Err(io::Error::other("direct I/O is off"));
            };
            let Some(stage) = d.stage.as_mut() else {
                return Err(io::Error::other("no staging buffer"));
            };
            let cap = stage.buf.capacity();
            let n = rest.len().min(cap - stage.len);
            stage.buf.as_mut_slice()[stage.len..stage.len + n].copy_from_slice(&rest[..n]);
            stage.len += n;
            rest = &rest[n..];
            let (s_end, full) = (stage.at + stage.len as u64, stage.len == cap);
            if full {
                let Some(stage) = d.stage.take() else {
                    return Err(io::Error::other("no staging buffer"));
                };
                self.submit(stage.at, stage.buf, cap)?;
                let buf = self.take_buffer()?;
                if let Some(d) = self.direct.as_mut() {
                    d.stage = Some(Stage {
                        at: s_end,
                        buf,
                        len: 0,
                    });
                }
            }
        }
        Ok(())
    }

    /// Read up to `buf.len()` bytes at device offset `off`; 0 at the end.
    pub fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.check()?;
        self.stop_direct_if_refused()?;
        if self.direct.is_none() {
            return self.file.read_at(buf, off).map_err(|e| self.fail(e));
        }
        self.settle(off, buf.len())?;
        let Some(d) = self.direct.as_ref() else {
            return self.file.read_at(buf, off);
        };
        let (w_at, w_len) = (d.window_at, d.window_len);
        if off >= w_at && off + buf.len() as u64 <= w_at + w_len as u64 {
            let from = (off - w_at) as usize;
            buf.copy_from_slice(&d.window.as_slice()[from..from + buf.len()]);
            return Ok(buf.len());
        }
        let end = off + buf.len() as u64;
        let w_end = w_at + w_len as u64;
        // Reading on past this window, into the one being read ahead.
        let into = |a: u64| end <= a + WINDOW as u64 && (off >= a || (off >= w_at && a <= w_end));
        if d.ahead_pending.is_some_and(into) {
            self.drain()?;
        }
        let Some(d) = self.direct.as_mut() else {
            return self.file.read_at(buf, off);
        };
        let ready = d.ahead_ready.as_ref().map(|(_, a, n)| (*a, *n));
        if let Some((a, n)) = ready {
            let in_window = off >= w_at && off < w_end && a <= w_end;
            if end <= a + n as u64 && (off >= a || in_window) {
                // The part before the next window comes from this one.
                let split = a.saturating_sub(off) as usize;
                if split > 0 {
                    let from = (off - w_at) as usize;
                    buf[..split].copy_from_slice(&d.window.as_slice()[from..from + split]);
                }
                if let Some((next, a, n)) = d.ahead_ready.take() {
                    d.ahead_spare = Some(core::mem::replace(&mut d.window, next));
                    d.window_at = a;
                    d.window_len = n;
                    let from = (off + split as u64 - a) as usize;
                    let rest = buf.len() - split;
                    buf[split..].copy_from_slice(&d.window.as_slice()[from..from + rest]);
                    self.read_ahead();
                    return Ok(buf.len());
                }
            }
        }
        if buf.len() < DIRECT_MIN {
            return self.file.read_at(buf, off).map_err(|e| self.fail(e));
        }
        let at = off / ALIGN as u64 * ALIGN as u64;
        let skip = (off - at) as usize;
        let want = (skip + buf.len()).max(WINDOW);
        // The whole window must be on the file, not only the bytes asked for.
        self.settle(at, want)?;
        let Some(d) = self.direct.as_mut() else {
            return self.file.read_at(buf, off);
        };
        d.window_len = 0;
        match read_direct(&d.file, at, want, &mut d.window) {
            Ok(n) if n > skip => {
                d.window_at = at;
                d.window_len = n;
                let k = (n - skip).min(buf.len());
                buf[..k].copy_from_slice(&d.window.as_slice()[skip..skip + k]);
                self.read_ahead();
                Ok(k)
            }
            // At or past the end, or refused: let the page cache answer.
            Ok(_) => self.file.read_at(buf, off).map_err(|e| self.fail(e)),
            Err(e) if refused_direct(&e) => {
                d.refused = true;
                self.file.read_at(buf, off).map_err(|e| self.fail(e))
            }
            Err(e) => Err(self.fail(e)),
        }
    }
}

impl Drop for DirectFile {
    fn drop(&mut self) {
        // What was written reaches the file as it would have through the
        // page cache; only `sync_device` makes it durable.
        if self.failed.is_none() {
            let _ = self.flush_stage();
            let _ = self.drain();
        }
    }
}

impl Read for DirectFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.read_at(self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for DirectFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_at(self.pos, buf)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    /// Writes are complete when `write` returns (see the module doc);
    /// only [`FatDevice::sync_device`] pushes them out.
    fn flush(&mut self) -> io::Result<()> {
        self.check()
    }
}

impl Seek for DirectFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            // Works for block devices too, whose metadata says 0 bytes.
            SeekFrom::End(d) => (&self.file).seek(SeekFrom::End(0))?.checked_add_signed(d),
        };
        super::fat::seek_to(&mut self.pos, new)
    }
}

impl FatDevice for DirectFile {
    fn sync_device(&mut self) -> io::Result<()> {
        self.barrier()?;
        self.file.sync_data().map_err(|e| self.fail(e))
    }

    /// Staged and in-flight writes reach the file before any later one.
    fn barrier(&mut self) -> io::Result<()> {
        self.check()?;
        self.flush_stage()?;
        self.drain()?;
        self.check()
    }

    /// The shared direct reader, once nothing staged or in flight overlaps
    /// the range (a direct read does not see the staging buffer).
    fn range_reader(&mut self, at: u64, len: u64) -> io::Result<Option<Arc<dyn RangeRead>>> {
        self.check()?;
        self.stop_direct_if_refused()?;
        let len = usize::try_from(len).map_err(io::Error::other)?;
        if self.direct.is_none() {
            return Ok(None);
        }
        self.settle(at, len)?;
        Ok(self
            .direct
            .as_ref()
            .map(|d| Arc::clone(&d.shared) as Arc<dyn RangeRead>))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FatStore, Store};
    use rand::{Rng, SeedableRng};

    fn image(bytes: u64) -> (tempfile::TempDir, std::path::PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("medium.img");
        std::fs::File::create(&p).unwrap().set_len(bytes).unwrap();
        (tmp, p)
    }

    fn open_rw(p: &std::path::Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .unwrap()
    }

    /// Appends of record-like sizes from unaligned offsets, overwrites,
    /// small writes and reads in between (some inside what is staged or
    /// in flight), checked against a model of the file, on the device as
    /// the cache and FatStore use it, then on the file after a sync.
    fn exercise(dev: &mut DirectFile, p: &std::path::Path, seed: u64) {
        const SIZE: usize = 40 << 20;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let mut model = vec![0u8; SIZE];
        let mut at = 4096 * 3 + 77;
        let mut round = 0u8;
        while at < SIZE - (2 << 20) {
            round = round.wrapping_add(1);
            let len = match rng.gen_range(0..4) {
                0 => 64 + 16,
                1 => rng.gen_range(1..70_000),
                _ => (1 << 20) + 80,
            };
            let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ round).collect();
            dev.seek(SeekFrom::Start(at as u64)).unwrap();
            dev.write_all(&data).unwrap();
            model[at..at + len].copy_from_slice(&data);
            at += len;
            if rng.gen_range(0..6) == 0 {
                // A small write somewhere else (FAT entry, directory block).
                let off = rng.gen_range(0..SIZE - 512);
                let small = [round; 512];
                dev.seek(SeekFrom::Start(off as u64)).unwrap();
                dev.write_all(&small).unwrap();
                model[off..off + 512].copy_from_slice(&small);
            }
            if rng.gen_range(0..4) == 0 {
                // Read back across what was just written (staged or in flight).
                let len = rng.gen_range(1..(3 << 20)).min(at);
                let off = at - len;
                let mut back = vec![0u8; len];
                dev.seek(SeekFrom::Start(off as u64)).unwrap();
                dev.read_exact(&mut back).unwrap();
                assert!(back == model[off..at], "read back at {off}+{len}");
            }
            if rng.gen_range(0..10) == 0 {
                dev.sync_device().unwrap();
            }
            if rng.gen_range(0..12) == 0 {
                // Jump: the next run starts somewhere else, unaligned.
                at = rng.gen_range(0..SIZE / 2) | 1;
            }
        }
        dev.sync_device().unwrap();
        // The end of the device: short reads, then none.
        let mut end = vec![0u8; 200_000];
        dev.seek(SeekFrom::Start(SIZE as u64 - 100)).unwrap();
        assert_eq!(dev.read(&mut end).unwrap(), 100);
        assert_eq!(&end[..100], &model[SIZE - 100..]);
        dev.seek(SeekFrom::Start(SIZE as u64)).unwrap();
        assert_eq!(dev.read(&mut end).unwrap(), 0);
        assert_eq!(dev.seek(SeekFrom::End(0)).unwrap(), SIZE as u64);
        let on_file = std::fs::read(p).unwrap();
        assert!(on_file == model, "the file differs from what was written");
    }

    #[test]
    fn direct_io_gives_back_what_was_written() {
        let (_t, p) = image(40 << 20);
        let f = open_rw(&p);
        let can = reopen_direct(&f).is_some();
        let mut dev = DirectFile::new(f);
        // The temporary directory's file system decides; the test runs
        // the direct path wherever O_DIRECT opens.
        assert_eq!(dev.is_direct(), can);
        exercise(&mut dev, &p, 1);
        assert_eq!(dev.is_direct(), can);
    }

    #[test]
    fn reads_in_order_are_read_ahead_and_writes_are_seen() {
        let (_t, p) = image(0);
        let mut model: Vec<u8> = (0..(30u32 << 20) + 999).map(|i| (i % 249) as u8).collect();
        std::fs::write(&p, &model).unwrap();
        let mut dev = DirectFile::new(open_rw(&p));
        let mut rng = rand::rngs::SmallRng::seed_from_u64(4);
        for pass in 0..3u8 {
            let mut at = [0usize, 4096 * 5 + 3, 77][pass as usize];
            while at < model.len() {
                let len = [(1 << 20) + 80, 200, 70_000][rng.gen_range(0..3)].min(model.len() - at);
                let mut back = vec![0u8; len];
                dev.seek(SeekFrom::Start(at as u64)).unwrap();
                dev.read_exact(&mut back).unwrap();
                assert!(
                    back == model[at..at + len],
                    "pass {pass}: read at {at}+{len}"
                );
                if rng.gen_range(0..5) == 0 {
                    // Ahead of the reader, inside what may be read ahead.
                    let off = (at + len + rng.gen_range(0..(6 << 20))).min(model.len() - 300);
                    let w = [pass + 1; 300];
                    dev.seek(SeekFrom::Start(off as u64)).unwrap();
                    dev.write_all(&w).unwrap();
                    model[off..off + 300].copy_from_slice(&w);
                }
                at += len;
            }
        }
        dev.sync_device().unwrap();
        assert!(std::fs::read(&p).unwrap() == model);
    }

    #[test]
    fn refused_direct_transfers_fall_back_to_the_page_cache() {
        let (_t, p) = image(40 << 20);
        let f = open_rw(&p);
        if reopen_direct(&f).is_none() {
            // Nothing to refuse: the plain path is the other test's.
            return;
        }
        let mut dev = DirectFile::refusing(f);
        assert!(dev.is_direct());
        exercise(&mut dev, &p, 2);
        assert!(!dev.is_direct(), "still direct after a refusal");
        let (_t, p) = image(40 << 20);
        exercise(&mut DirectFile::buffered(open_rw(&p)), &p, 3);
    }

    #[test]
    fn a_failed_background_write_fails_the_sync_and_what_follows() {
        let (_t, p) = image(8 << 20);
        // Read-only: the I/O thread's direct write fails with EBADF.
        let mut dev = DirectFile::new(File::open(&p).unwrap());
        if !dev.is_direct() {
            return;
        }
        dev.seek(SeekFrom::Start(4096)).unwrap();
        dev.write_all(&[7u8; 1 << 20]).unwrap();
        let e = dev.sync_device().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(9), "{e}");
        assert!(dev.read(&mut [0u8; 10]).is_err());
        assert!(dev.write(&[1u8; 10]).is_err());
        assert!(std::fs::read(&p).unwrap().iter().all(|b| *b == 0));
    }

    #[test]
    fn fat_store_on_a_direct_file() {
        let (_t, p) = image(64 << 20);
        FatStore::format(open_rw(&p), &Default::default()).unwrap();
        let mut s = FatStore::open(DirectFile::new(open_rw(&p))).unwrap();
        s.create_dir_all("MGEAR/G1").unwrap();
        let data: Vec<u8> = (0..9_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut off = 0usize;
        for (i, piece) in data.chunks((1 << 20) + 80).enumerate() {
            s.write_at("MGEAR/G1/SEG-00000", off as u64, piece).unwrap();
            s.write_at("MGEAR/G1/IPART", i as u64 * 50, &[i as u8; 50])
                .unwrap();
            off += piece.len();
            if i % 3 == 2 {
                s.sync("MGEAR/G1/SEG-00000").unwrap();
            }
        }
        let mut back = vec![0u8; data.len()];
        s.read_exact_at("MGEAR/G1/SEG-00000", 0, &mut back).unwrap();
        assert!(back == data);
        s.unmount().unwrap();
        // What a plain descriptor (and fsck) sees after unmount.
        crate::store::fat::tests::fsck(&p);
        let mut s = FatStore::open_read_only(open_rw(&p)).unwrap();
        let mut back = vec![0u8; data.len()];
        s.read_exact_at("MGEAR/G1/SEG-00000", 0, &mut back).unwrap();
        assert!(back == data);
        let mut ip = [0u8; 50];
        s.read_exact_at("MGEAR/G1/IPART", 100, &mut ip).unwrap();
        assert_eq!(ip, [2u8; 50]);
    }

    /// `locate` hands out ranges whose direct read gives what was written,
    /// staged bytes included (they are written out first); a range split
    /// over two runs, past the file's end or on a plain `File` is not
    /// located.
    #[test]
    fn located_ranges_read_back_what_was_written() {
        let (_t, p) = image(64 << 20);
        FatStore::format(open_rw(&p), &Default::default()).unwrap();
        let mut s = FatStore::open(DirectFile::new(open_rw(&p))).unwrap();
        s.create_dir_all("MGEAR/G1").unwrap();
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
        s.write_at("MGEAR/G1/SEG-00000", 0, &data[..4096]).unwrap();
        // Another file's cluster after the first: the segment's next bytes
        // go to a second run.
        s.write_at("MGEAR/G1/IPART", 0, &[9u8; 100]).unwrap();
        s.write_at("MGEAR/G1/SEG-00000", 4096, &data[4096..])
            .unwrap();
        let mut located = 0;
        for (off, len) in [
            (4173u64, (1u64 << 20) + 80),
            (3_000_001, 1_999_999),
            (40_000, 3),
        ] {
            let Some(l) = s.locate("MGEAR/G1/SEG-00000", off, len).unwrap() else {
                continue;
            };
            located += 1;
            let start = l.at / ALIGN as u64 * ALIGN as u64;
            let lead = (l.at - start) as usize;
            let mut buf = crate::ChunkBuf::zeroed((lead + len as usize).div_ceil(ALIGN) * ALIGN);
            let n = l.device.read_aligned(start, &mut buf).unwrap();
            assert!(n >= lead + len as usize);
            let (o, n) = (off as usize, len as usize);
            assert!(buf[lead..lead + n] == data[o..o + n], "range at {off}");
        }
        assert_eq!(located, 3, "ranges inside one run are located");
        // The segment's first 4096 bytes are a run of their own (the IPART's
        // cluster follows them): a range across the break is not located.
        assert!(s.locate("MGEAR/G1/SEG-00000", 4000, 200).unwrap().is_none());
        assert!(s
            .locate("MGEAR/G1/SEG-00000", 4_999_999, 2)
            .unwrap()
            .is_none());
        assert!(s.locate("MGEAR/G1/NOPE", 0, 2).unwrap().is_none());
        s.unmount().unwrap();
        let mut plain = FatStore::open_read_only(open_rw(&p)).unwrap();
        assert!(plain
            .locate("MGEAR/G1/SEG-00000", 4173, 100)
            .unwrap()
            .is_none());
    }
}
