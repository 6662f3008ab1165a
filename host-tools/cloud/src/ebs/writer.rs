//! A pending EBS snapshot written like a disk: positional writes and zero ranges go into 512 KiB
//! blocks; a block is put as soon as every byte of it is known; all-zero blocks are never sent
//! (a snapshot reads zeros wherever no block was written); puts run on a few threads, each
//! keeping requests in flight over its own pooled connection.
//!
//! Resume. [`SnapshotWriter::flush`] waits for every put in flight and makes durable, in the
//! state directory, everything a re-run needs to go on in the same snapshot: so the caller flushes
//! before it records its own checkpoint, and on resume rewrites from that checkpoint on (a re-put
//! of a block is idempotent: same index, same bytes). A resumed writer also puts a block of zeros
//! where an earlier run put data and the disk now has zeros, so going on in a pending snapshot is
//! correct whatever the earlier run wrote.
//!
//! State files (`KEY` is the caller's state key), all 0600:
//!
//! ```text
//! KEY.ebs          JSON {"version":1, "client_token", "disk_size", "volume_gib", "description", "snapshot_id"?}
//!                  written before StartSnapshot (the token) and again after it (the id): a run
//!                  killed in between gets the same snapshot back from StartSnapshot's ClientToken.
//! KEY.ebs-digests  sparse; bytes 32*i .. 32*i+32 = SHA-256 of block i as EBS acknowledged it,
//!                  all zeros = block i not written (a SHA-256 of all zeros does not occur).
//!                  CompleteSnapshot's ChangedBlocksCount and LINEAR aggregate come from here,
//!                  so blocks put by a killed run count without being read back.
//! KEY.ebs-partial  blocks only partly written at the last flush (at most a few: the ingest's
//!                  chunk 0, written last, and the block a checkpoint fell in), each as
//!                    u64 LE block index | u32 LE range count n | n x (u32 LE start, u32 LE end)
//!                    | 524288 bytes of the block (unwritten ranges zero)
//!                  replaced atomically (write to .tmp, fsync, rename).
//! ```
//!
//! Local space: 32 bytes per 512 KiB block of the disk at most (64 KiB per GiB, sparse: only
//! written blocks take room) plus the partial blocks; never a copy of the volume.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::client::{BlockRef, EbsClient, NewSnapshot};
use super::{aggregate_checksum, block_digest, volume_gib, BLOCK_SIZE};
use crate::{CloudError, Result};

const BS: u64 = BLOCK_SIZE as u64;

/// What to write and where to keep progress.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Bytes of the disk (the snapshot is this rounded up to whole GiB).
    pub disk_size: u64,
    /// Snapshot `Description`.
    pub description: String,
    /// Snapshot tags.
    pub tags: Vec<(String, String)>,
    /// Directory for the state files (private to the user).
    pub state_dir: PathBuf,
    /// Prefix of the state files, unique per target.
    pub state_key: String,
    /// Threads putting blocks (each one request in flight).
    pub threads: usize,
    /// StartSnapshot `Timeout`: minutes a pending snapshot may go without a write before AWS
    /// cancels it; also how long a killed run can wait before resuming.
    pub timeout_minutes: u32,
}

/// The result of [`SnapshotWriter::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    /// `snap-...`.
    pub snapshot_id: String,
    /// Blocks the snapshot holds (non-zero blocks of the disk).
    pub changed_blocks: u64,
    /// The LINEAR aggregated checksum CompleteSnapshot accepted.
    pub checksum: String,
    /// CompleteSnapshot's status (`completed`, or `pending` while AWS seals it).
    pub status: String,
}

/// One block not yet complete.
struct Partial {
    data: Vec<u8>,
    /// Sorted, disjoint `[start, end)` byte ranges known within the block.
    covered: Vec<(u32, u32)>,
}

impl Partial {
    fn new() -> Partial {
        Partial {
            data: vec![0; BLOCK_SIZE],
            covered: Vec::new(),
        }
    }

    fn cover(&mut self, start: u32, end: u32) {
        self.covered.push((start, end));
        self.covered.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(self.covered.len());
        for &(s, e) in &self.covered {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.covered = merged;
    }

    fn is_full(&self, need: u32) -> bool {
        matches!(self.covered.as_slice(), [(0, e)] if *e >= need)
    }
}

/// Puts in flight and the first error a worker met.
#[derive(Default)]
struct Flight {
    pending: usize,
    error: Option<CloudError>,
    sent: u64,
}

/// A pending snapshot being written. See the module docs.
pub struct SnapshotWriter {
    client: EbsClient,
    opts: WriterOptions,
    snapshot_id: String,
    resumed: bool,
    blocks: u64,
    partial: BTreeMap<u64, Partial>,
    digests: Arc<File>,
    tx: Option<SyncSender<(u64, Vec<u8>)>>,
    workers: Vec<JoinHandle<()>>,
    flight: Arc<(Mutex<Flight>, Condvar)>,
    zero_blocks: u64,
    /// Blocks an earlier run put (bit per block), when resumed: such a block that is zero now is
    /// put as zeros, so the snapshot holds the disk even if the earlier run wrote other data.
    prior: Vec<u64>,
}

impl std::fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotWriter")
            .field("snapshot_id", &self.snapshot_id)
            .field("blocks", &self.blocks)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path, e: std::io::Error) -> CloudError {
    CloudError::Io {
        path: path.display().to_string(),
        source: e,
    }
}

fn private_file(path: &Path, truncate: bool) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate)
        .mode(0o600)
        // State files are never written through a planted symlink.
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Why the pending snapshot `id` a resume would go on in cannot take more blocks, when it
/// cannot: it is gone (deleted, or cancelled by AWS after its timeout without a write; a
/// resume then failed every put with 404, and so did every re-run, `--force` too), or no
/// longer pending. `None` where it is pending, or where EC2 does not say (a key without
/// `ec2:DescribeSnapshots`, a network error): the resume then goes on, and its first put says.
///
/// A pending snapshot that describes itself as another ingest's (`description`: what this
/// one is made with) is not this ingest's either: the id, recorded on this host, names
/// another snapshot where the endpoint, account or region is another now, and going on in
/// it wrote this disk's blocks into another ingest's snapshot (both then failed to complete).
fn gone(client: &EbsClient, id: &str, description: &str) -> Option<String> {
    match client.describe_snapshot(id) {
        Ok((s, said)) if s == "pending" && !said.is_empty() && said != description => {
            Some(format!(
                "is another ingest's snapshot now (it describes itself as {said:?}): a run \
                 given the targets in another order started it for another disk, or the \
                 endpoint, account or region is not the one that run wrote to"
            ))
        }
        Ok((s, _)) if s == "pending" => None,
        // Completed by another ingest under the same id (the endpoint restarted, or another
        // account or region): "an earlier run of this ingest wrote ... is completed" named
        // another disk's snapshot as this one's.
        Ok((s, said)) if !said.is_empty() && said != description => Some(format!(
            "is another ingest's snapshot now, {s} (it describes itself as {said:?}): the \
             endpoint, account or region is not the one that run wrote to"
        )),
        Ok((s, _)) => Some(format!("is {s}, not pending any more")),
        Err(CloudError::Http {
            status: 400 | 404,
            message,
            ..
        }) if message.contains("NotFound") => Some(
            "is gone (deleted, or cancelled by AWS: a pending snapshot nothing writes to for \
             its timeout is)"
                .into(),
        ),
        Err(_) => None,
    }
}

/// What becomes of a pending snapshot no run goes on with, and how to be rid of it sooner.
fn still_pending(id: &str) -> String {
    format!(
        "{id} stays pending until AWS cancels it, a day after its last write (`aws ec2 \
         delete-snapshot --snapshot-id {id}` removes it now)"
    )
}

impl SnapshotWriter {
    /// What the unfinished ingest recorded under `state_key` in `state_dir` is of (its
    /// snapshot's description) and its pending snapshot, when the record says (a record
    /// written before descriptions were recorded says none).
    pub fn recorded(state_dir: &Path, state_key: &str) -> Option<(String, Option<String>)> {
        let bytes = std::fs::read(state_dir.join(format!("{state_key}.ebs"))).ok()?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        Some((
            v["description"].as_str()?.to_string(),
            v["snapshot_id"].as_str().map(str::to_string),
        ))
    }

    /// Start a snapshot, or go on with the one recorded in the state directory when `resume` is
    /// true and the recorded one is for a disk of the same size. With `resume` false, old state
    /// is discarded (its snapshot, if any, stays pending until AWS's timeout cancels it).
    pub fn open(client: EbsClient, opts: WriterOptions, resume: bool) -> Result<SnapshotWriter> {
        let meta_path = opts.state_dir.join(format!("{}.ebs", opts.state_key));
        let dig_path = opts
            .state_dir
            .join(format!("{}.ebs-digests", opts.state_key));
        let part_path = opts
            .state_dir
            .join(format!("{}.ebs-partial", opts.state_key));
        let gib = volume_gib(opts.disk_size);
        let mut recorded: Option<(String, Option<String>)> = None;
        // The pending snapshot an earlier run into this name left, whether or not it is gone on
        // with: one not gone on with (another disk's, a `--force`) was left unsaid.
        let mut left_pending: Option<String> = None;
        if resume {
            match std::fs::read(&meta_path) {
                Ok(bytes) => {
                    let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                        CloudError::Config(format!(
                            "{} is not an EBS ingest state ({e}): remove it to start a new snapshot",
                            meta_path.display()
                        ))
                    })?;
                    left_pending = v["snapshot_id"].as_str().map(str::to_string);
                    if v["disk_size"].as_u64() == Some(opts.disk_size) {
                        if let Some(tok) = v["client_token"].as_str() {
                            recorded = Some((
                                tok.to_string(),
                                v["snapshot_id"].as_str().map(str::to_string),
                            ));
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&meta_path, e)),
            }
        }
        if let Some((_, Some(id))) = &recorded {
            if let Some(why) = gone(&client, id, &opts.description) {
                eprintln!(
                    "mgear: the pending snapshot {id} an earlier run of this ingest wrote {why}: \
                     starting a new snapshot (every block is sent again)"
                );
                recorded = None;
                left_pending = None;
            }
        }
        if let (None, Some(id)) = (&recorded, &left_pending) {
            eprintln!(
                "mgear: note: snapshot {id}, which an earlier run into this name started for a \
                 disk of another size, is not this disk's: starting a new snapshot; {}",
                still_pending(id)
            );
        }
        let resumed = recorded.is_some();
        if !resumed {
            for p in [&meta_path, &dig_path, &part_path] {
                match std::fs::remove_file(p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(p, e)),
                }
            }
        }
        let token = match &recorded {
            Some((t, _)) => t.clone(),
            None => new_token(&opts.state_key),
        };
        let write_meta = |id: Option<&str>| -> Result<()> {
            let mut v = json!({
                "version": 1,
                "client_token": token,
                "disk_size": opts.disk_size,
                "volume_gib": gib,
                // What the snapshot is of: another ingest into this name is told by it.
                "description": opts.description,
            });
            if let Some(id) = id {
                v["snapshot_id"] = json!(id);
            }
            write_atomic(&meta_path, v.to_string().as_bytes())
        };
        let snapshot_id = match recorded.as_ref().and_then(|r| r.1.clone()) {
            Some(id) => id,
            None => {
                write_meta(None)?;
                let s = client.start_snapshot(&NewSnapshot {
                    volume_gib: gib,
                    description: opts.description.clone(),
                    tags: opts.tags.clone(),
                    client_token: token.clone(),
                    timeout_minutes: opts.timeout_minutes,
                })?;
                if s.status != "pending" {
                    return Err(CloudError::BadResponse {
                        what: "StartSnapshot".into(),
                        detail: format!(
                            "snapshot {} is {}, not pending: remove {} to start a new one",
                            s.id,
                            s.status,
                            meta_path.display()
                        ),
                    });
                }
                write_meta(Some(&s.id))?;
                s.id
            }
        };
        let digests = private_file(&dig_path, false).map_err(|e| io_err(&dig_path, e))?;
        let blocks = opts.disk_size.div_ceil(BS);
        digests
            .set_len(blocks * 32)
            .map_err(|e| io_err(&dig_path, e))?;
        let partial = if resumed {
            read_partials(&part_path)?
        } else {
            BTreeMap::new()
        };

        let digests = Arc::new(digests);
        let flight = Arc::new((Mutex::new(Flight::default()), Condvar::new()));
        let threads = opts.threads.clamp(1, 64);
        let (tx, rx) = sync_channel::<(u64, Vec<u8>)>(threads * 2);
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::new();
        for _ in 0..threads {
            let (rx, client, flight, digests) =
                (rx.clone(), client.clone(), flight.clone(), digests.clone());
            let (id, dig_path) = (snapshot_id.clone(), dig_path.clone());
            workers.push(std::thread::spawn(move || loop {
                let job = rx.lock().map(|r| r.recv());
                let Ok(Ok((index, data))) = job else { return };
                let digest = block_digest(&data);
                let progress = ((index + 1) * 100 / blocks.max(1)).min(100) as u8;
                let r = client
                    .put_block(&id, index, &data, &digest, Some(progress))
                    .and_then(|()| {
                        digests
                            .write_all_at(&digest, index * 32)
                            .map_err(|e| io_err(&dig_path, e))
                    });
                let (m, cv) = &*flight;
                let mut f = m.lock().unwrap_or_else(|p| p.into_inner());
                f.pending -= 1;
                match r {
                    Ok(()) => f.sent += 1,
                    // The snapshot went away under the run: said with what works (the generic
                    // "reconnect it" hint was all there was; a re-run starts a new one).
                    Err(CloudError::Http {
                        method,
                        url,
                        status: status @ (400 | 404),
                        message,
                    }) if message.contains("NotFound") || message.contains("does not exist") => {
                        f.error.get_or_insert(CloudError::Http {
                            method,
                            url,
                            status,
                            message: format!(
                                "{message}; the pending snapshot {id} is gone (deleted, cancelled \
                                 by AWS, or the service was reset): run the same command again, \
                                 it starts a new snapshot and writes the disk whole"
                            ),
                        });
                    }
                    Err(e) => {
                        f.error.get_or_insert(e);
                    }
                }
                cv.notify_all();
            }));
        }
        let mut w = SnapshotWriter {
            client,
            opts,
            snapshot_id,
            resumed,
            blocks,
            partial,
            digests,
            tx: Some(tx),
            workers,
            flight,
            zero_blocks: 0,
            prior: Vec::new(),
        };
        if resumed {
            w.prior = vec![0u64; blocks.div_ceil(64) as usize];
            for (i, _) in w.acknowledged()? {
                w.prior[(i / 64) as usize] |= 1 << (i % 64);
            }
        }
        Ok(w)
    }

    /// The snapshot being written.
    pub fn snapshot_id(&self) -> &str {
        &self.snapshot_id
    }

    /// Whether [`SnapshotWriter::open`] went on with a recorded snapshot.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// Blocks put by this run so far.
    pub fn blocks_sent(&self) -> u64 {
        self.flight.0.lock().map_or(0, |f| f.sent)
    }

    /// All-zero blocks this run did not send.
    pub fn zero_blocks(&self) -> u64 {
        self.zero_blocks
    }

    /// Write `data` at byte `offset` of the disk.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.fill(offset, data.len() as u64, Some(data))
    }

    /// Declare `len` bytes at `offset` zero (nothing is sent for blocks that end up all zero).
    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.fill(offset, len, None)
    }

    fn fill(&mut self, offset: u64, len: u64, data: Option<&[u8]>) -> Result<()> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.opts.disk_size)
            .ok_or_else(|| {
                CloudError::Config(format!(
                    "write of {len} bytes at {offset} is past the end of the {}-byte disk",
                    self.opts.disk_size
                ))
            })?;
        self.check_error()?;
        let mut pos = offset;
        while pos < end {
            let index = pos / BS;
            let in_block = (pos % BS) as usize;
            let n = ((BS - in_block as u64).min(end - pos)) as usize;
            let src = data.map(|d| &d[(pos - offset) as usize..(pos - offset) as usize + n]);
            let need = self.block_need(index);
            if in_block == 0 && n as u32 >= need && !self.partial.contains_key(&index) {
                // A whole block in one piece: no copy into a partial.
                match src {
                    Some(s) if s.iter().any(|&b| b != 0) => {
                        let mut block = vec![0u8; BLOCK_SIZE];
                        block[..n].copy_from_slice(s);
                        self.send(index, block)?;
                    }
                    _ => self.zero_block(index)?,
                }
            } else {
                let p = self.partial.entry(index).or_insert_with(Partial::new);
                match src {
                    Some(s) => p.data[in_block..in_block + n].copy_from_slice(s),
                    None => p.data[in_block..in_block + n].fill(0),
                }
                p.cover(in_block as u32, (in_block + n) as u32);
                if p.is_full(need) {
                    let p = self.partial.remove(&index).expect("present");
                    if p.data.iter().any(|&b| b != 0) {
                        self.send(index, p.data)?;
                    } else {
                        self.zero_block(index)?;
                    }
                }
            }
            pos += n as u64;
        }
        Ok(())
    }

    /// Block `index` is all zeros: nothing to send, unless an earlier run put something there.
    fn zero_block(&mut self, index: u64) -> Result<()> {
        let earlier = self
            .prior
            .get((index / 64) as usize)
            .is_some_and(|w| w & (1 << (index % 64)) != 0);
        if earlier {
            self.send(index, vec![0u8; BLOCK_SIZE])
        } else {
            self.zero_blocks += 1;
            Ok(())
        }
    }

    /// Bytes of block `index` that belong to the disk (the last block may be short; the rest of
    /// it is zero padding, as EBS blocks are always full).
    fn block_need(&self, index: u64) -> u32 {
        (self.opts.disk_size - index * BS).min(BS) as u32
    }

    fn send(&mut self, index: u64, block: Vec<u8>) -> Result<()> {
        {
            let mut f = self.flight.0.lock().unwrap_or_else(|p| p.into_inner());
            f.pending += 1;
        }
        let tx = self.tx.as_ref().expect("writer open");
        if tx.send((index, block)).is_err() {
            return Err(CloudError::Config(
                "the block upload threads stopped".into(),
            ));
        }
        Ok(())
    }

    fn check_error(&self) -> Result<()> {
        let mut f = self.flight.0.lock().unwrap_or_else(|p| p.into_inner());
        match f.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Wait for every put in flight; the first failure is the error.
    fn settle(&self) -> Result<()> {
        let (m, cv) = &*self.flight;
        let mut f = m.lock().unwrap_or_else(|p| p.into_inner());
        while f.pending > 0 {
            f = cv.wait(f).unwrap_or_else(|p| p.into_inner());
        }
        match f.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Make everything written so far durable for a resume: wait for the puts in flight, sync
    /// the digests, record the partial blocks. Call before recording a checkpoint.
    pub fn flush(&mut self) -> Result<()> {
        self.settle()?;
        let dig = self.dig_path();
        self.digests.sync_data().map_err(|e| io_err(&dig, e))?;
        let mut out = Vec::new();
        for (index, p) in &self.partial {
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(&(p.covered.len() as u32).to_le_bytes());
            for (s, e) in &p.covered {
                out.extend_from_slice(&s.to_le_bytes());
                out.extend_from_slice(&e.to_le_bytes());
            }
            out.extend_from_slice(&p.data);
        }
        write_atomic(&self.part_path(), &out)
    }

    fn dig_path(&self) -> PathBuf {
        self.opts
            .state_dir
            .join(format!("{}.ebs-digests", self.opts.state_key))
    }

    fn part_path(&self) -> PathBuf {
        self.opts
            .state_dir
            .join(format!("{}.ebs-partial", self.opts.state_key))
    }

    fn meta_path(&self) -> PathBuf {
        self.opts
            .state_dir
            .join(format!("{}.ebs", self.opts.state_key))
    }

    /// The digests of every block EBS acknowledged, in index order (from the state file: blocks
    /// of earlier, killed runs included).
    fn acknowledged(&self) -> Result<Vec<(u64, [u8; 32])>> {
        let dig = self.dig_path();
        let mut f = File::open(&dig).map_err(|e| io_err(&dig, e))?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 32 * 4096];
        let mut index = 0u64;
        loop {
            let n = read_full(&mut f, &mut buf).map_err(|e| io_err(&dig, e))?;
            for d in buf[..n].chunks_exact(32) {
                if d.iter().any(|&b| b != 0) {
                    out.push((index, d.try_into().expect("32 bytes")));
                }
                index += 1;
            }
            if n < buf.len() {
                return Ok(out);
            }
        }
    }

    /// What this volume can check in place of a read-back: every block the service acknowledged
    /// (with the checksum it computed from the bytes it received, compared at each put) is one
    /// of `expected`'s, and no expected block is missing. `expected` gives the SHA-256 of every
    /// non-zero block of the disk the caller authenticated. `Err` names the first difference.
    pub fn verify_sent(&mut self, expected: &BTreeMap<u64, [u8; 32]>) -> Result<u64> {
        self.flush()?;
        let zero = block_digest(&[0u8; BLOCK_SIZE]);
        // Zero blocks put over an earlier run's data read as the disk's zeros.
        let got: Vec<_> = self
            .acknowledged()?
            .into_iter()
            .filter(|(_, d)| *d != zero)
            .collect();
        let mut want = expected.iter();
        for (index, d) in &got {
            match want.next() {
                Some((wi, wd)) if wi == index && wd == d => {}
                Some((wi, _)) => {
                    return Err(CloudError::BadResponse {
                        what: format!("snapshot {}", self.snapshot_id),
                        detail: format!(
                            "block {} differs from what was authenticated (first difference at block {})",
                            index.min(wi),
                            index.min(wi)
                        ),
                    })
                }
                None => {
                    return Err(CloudError::BadResponse {
                        what: format!("snapshot {}", self.snapshot_id),
                        detail: format!("block {index} was written but the disk has zeros there"),
                    })
                }
            }
        }
        if let Some((wi, _)) = want.next() {
            return Err(CloudError::BadResponse {
                what: format!("snapshot {}", self.snapshot_id),
                detail: format!("block {wi} of the disk was never acknowledged by EBS"),
            });
        }
        Ok(got.len() as u64)
    }

    /// Send whatever partial blocks remain (their unwritten bytes are the disk's zeros), wait for
    /// every put, then CompleteSnapshot with the count and LINEAR checksum of every acknowledged
    /// block. Removes the state files once EBS accepted.
    pub fn finish(mut self) -> Result<Completed> {
        for (index, p) in std::mem::take(&mut self.partial) {
            if p.data.iter().any(|&b| b != 0) {
                self.send(index, p.data)?;
            } else {
                self.zero_block(index)?;
            }
        }
        self.flush()?;
        drop(self.tx.take());
        for w in std::mem::take(&mut self.workers) {
            let _ = w.join();
        }
        let got = self.acknowledged()?;
        let checksum = aggregate_checksum(got.iter().map(|(_, d)| d));
        let status = self
            .client
            .complete(&self.snapshot_id, got.len() as u64, &checksum)?;
        for p in [self.meta_path(), self.dig_path(), self.part_path()] {
            let _ = std::fs::remove_file(p);
        }
        Ok(Completed {
            snapshot_id: self.snapshot_id.clone(),
            changed_blocks: got.len() as u64,
            checksum,
            status,
        })
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        drop(self.tx.take());
        for w in std::mem::take(&mut self.workers) {
            let _ = w.join();
        }
    }
}

/// Read a completed snapshot back: `(offset, block bytes)` for every block it holds, through
/// ListSnapshotBlocks and GetSnapshotBlock (each block checked against the checksum EBS sends).
pub fn read_snapshot(
    client: &EbsClient,
    snapshot: &str,
    mut each: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<u64> {
    let blocks: Vec<BlockRef> = client.list_blocks(snapshot)?;
    for b in &blocks {
        let data = client.get_block(snapshot, b)?;
        each(b.index * BS, &data)?;
    }
    Ok(blocks.len() as u64)
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn read_partials(path: &Path) -> Result<BTreeMap<u64, Partial>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(io_err(path, e)),
    };
    let bad = || {
        CloudError::Config(format!(
            "{} is damaged: remove the ingest state and start over",
            path.display()
        ))
    };
    let mut out = BTreeMap::new();
    let mut at = 0usize;
    fn take<'b>(bytes: &'b [u8], at: &mut usize, n: usize) -> Option<&'b [u8]> {
        let s = bytes.get(*at..*at + n)?;
        *at += n;
        Some(s)
    }
    let le64 = |s: &[u8]| u64::from_le_bytes(s.try_into().expect("8"));
    let le32 = |s: &[u8]| u32::from_le_bytes(s.try_into().expect("4"));
    while at < bytes.len() {
        let index = le64(take(&bytes, &mut at, 8).ok_or_else(bad)?);
        let n = le32(take(&bytes, &mut at, 4).ok_or_else(bad)?) as usize;
        if n > BLOCK_SIZE {
            return Err(bad());
        }
        let mut p = Partial::new();
        for _ in 0..n {
            let s = le32(take(&bytes, &mut at, 4).ok_or_else(bad)?);
            let e = le32(take(&bytes, &mut at, 4).ok_or_else(bad)?);
            if s >= e || e as usize > BLOCK_SIZE {
                return Err(bad());
            }
            p.cover(s, e);
        }
        p.data
            .copy_from_slice(take(&bytes, &mut at, BLOCK_SIZE).ok_or_else(bad)?);
        out.insert(index, p);
    }
    Ok(out)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = private_file(&tmp, true).map_err(|e| io_err(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
    f.sync_all().map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// A fresh idempotency token: unique per run (time, process, key), at most 64 characters.
fn new_token(key: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(now.as_nanos().to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(key.as_bytes());
    let d = h.finalize();
    format!(
        "mgear-{}",
        d[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

#[cfg(test)]
mod tests {
    use super::super::double::{Double, DoubleConfig};
    use super::*;

    fn opts(dir: &Path, size: u64) -> WriterOptions {
        WriterOptions {
            disk_size: size,
            description: "mgear test".into(),
            tags: vec![],
            state_dir: dir.to_path_buf(),
            state_key: "t".into(),
            threads: 4,
            timeout_minutes: 60,
        }
    }

    /// A disk image with data, holes and a short last block.
    fn disk(size: usize) -> Vec<u8> {
        let mut d = vec![0u8; size];
        for (i, b) in d.iter_mut().enumerate() {
            let blk = i / BLOCK_SIZE;
            if blk % 3 != 1 {
                *b = (i as u32).wrapping_mul(2654435761).to_le_bytes()[blk % 4] | 1;
            }
        }
        // A block that is zero but for one byte.
        d[4 * BLOCK_SIZE + 777] = 0;
        d[7 * BLOCK_SIZE + 12345] = 9;
        d
    }

    fn expected(d: &[u8]) -> BTreeMap<u64, Vec<u8>> {
        d.chunks(BLOCK_SIZE)
            .enumerate()
            .filter(|(_, c)| c.iter().any(|&b| b != 0))
            .map(|(i, c)| {
                let mut v = c.to_vec();
                v.resize(BLOCK_SIZE, 0);
                (i as u64, v)
            })
            .collect()
    }

    #[test]
    fn chunks_of_any_size_become_the_nonzero_blocks() {
        let d0 = Double::start(DoubleConfig::default());
        let dir = tempfile::tempdir().unwrap();
        let size = 9 * BLOCK_SIZE + 4096; // short last block
        let data = disk(size);
        let client = EbsClient::new(d0.aws_config());
        let mut w = SnapshotWriter::open(client, opts(dir.path(), size as u64), false).unwrap();
        // 192 KiB chunks (not a divisor of 512 KiB), chunk 0 last, zero chunks as write_zeroes.
        let chunk = 192 * 1024;
        let n = size.div_ceil(chunk);
        for k in (1..n).chain([0]) {
            let s = k * chunk;
            let e = (s + chunk).min(size);
            if data[s..e].iter().all(|&b| b == 0) {
                w.write_zeroes(s as u64, (e - s) as u64).unwrap();
            } else {
                w.write_at(s as u64, &data[s..e]).unwrap();
            }
            if k == 5 {
                w.flush().unwrap();
            }
        }
        let want = expected(&data);
        let digests = want.iter().map(|(k, v)| (*k, block_digest(v))).collect();
        assert_eq!(w.verify_sent(&digests).unwrap(), want.len() as u64);
        let done = w.finish().unwrap();
        assert_eq!(done.changed_blocks, want.len() as u64);
        let view = d0.snapshot(&done.snapshot_id).unwrap();
        assert_eq!(view.status, "completed");
        assert_eq!(view.blocks, want);
        assert!(d0.rejections().is_empty(), "{:?}", d0.rejections());
        // State files are gone after completion.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_killed_writer_resumes_into_the_same_snapshot() {
        let d0 = Double::start(DoubleConfig::default());
        let dir = tempfile::tempdir().unwrap();
        let size = 12 * BLOCK_SIZE;
        let data = disk(size);
        let chunk = 3 * BLOCK_SIZE / 2; // 768 KiB: checkpoints fall mid-block
        let client = EbsClient::new(d0.aws_config());
        let id;
        {
            let mut w =
                SnapshotWriter::open(client.clone(), opts(dir.path(), size as u64), true).unwrap();
            id = w.snapshot_id().to_string();
            for k in 1..4 {
                let s = k * chunk;
                w.write_at(s as u64, &data[s..s + chunk]).unwrap();
            }
            w.flush().unwrap();
            // More written after the checkpoint, then the process "dies" (dropped, no flush).
            w.write_at((4 * chunk) as u64, &data[4 * chunk..5 * chunk])
                .unwrap();
        }
        let mut w =
            SnapshotWriter::open(client.clone(), opts(dir.path(), size as u64), true).unwrap();
        assert!(w.resumed());
        assert_eq!(w.snapshot_id(), id);
        // Resume from the checkpoint (chunk 4 on), chunk 0 last.
        for k in (4..size / chunk).chain([0]) {
            let s = k * chunk;
            w.write_at(s as u64, &data[s..s + chunk]).unwrap();
        }
        let done = w.finish().unwrap();
        assert_eq!(done.snapshot_id, id);
        assert_eq!(d0.snapshot_ids(), std::slice::from_ref(&id));
        assert_eq!(d0.snapshot(&id).unwrap().blocks, expected(&data));
        // Read back through the API.
        let mut back = vec![0u8; size];
        read_snapshot(&client, &id, |off, b| {
            let off = off as usize;
            let n = BLOCK_SIZE.min(size - off);
            back[off..off + n].copy_from_slice(&b[..n]);
            Ok(())
        })
        .unwrap();
        assert!(back == data);
        assert!(d0.rejections().is_empty(), "{:?}", d0.rejections());
    }

    #[test]
    fn a_resumed_run_overwrites_what_an_earlier_run_put_where_the_disk_is_now_zero() {
        let d0 = Double::start(DoubleConfig::default());
        let dir = tempfile::tempdir().unwrap();
        let size = 4 * BLOCK_SIZE;
        let client = EbsClient::new(d0.aws_config());
        {
            let mut w =
                SnapshotWriter::open(client.clone(), opts(dir.path(), size as u64), true).unwrap();
            w.write_at(0, &vec![5u8; 2 * BLOCK_SIZE]).unwrap();
            w.flush().unwrap();
        }
        // The re-run writes a disk whose block 1 is zero (and block 0 still data).
        let mut w = SnapshotWriter::open(client, opts(dir.path(), size as u64), true).unwrap();
        assert!(w.resumed());
        w.write_at(0, &vec![5u8; BLOCK_SIZE]).unwrap();
        w.write_zeroes(BLOCK_SIZE as u64, 3 * BLOCK_SIZE as u64)
            .unwrap();
        let done = w.finish().unwrap();
        let blocks = d0.snapshot(&done.snapshot_id).unwrap().blocks;
        assert_eq!(blocks[&0], vec![5u8; BLOCK_SIZE]);
        assert_eq!(blocks[&1], vec![0u8; BLOCK_SIZE]);
        assert_eq!(blocks.len(), 2);
        assert!(d0.rejections().is_empty(), "{:?}", d0.rejections());
    }

    /// The pending snapshot deleted under the run (or the service reset): the put's 404 says
    /// it is gone and that a re-run starts a new one (it had only the generic I/O hint).
    #[test]
    fn a_snapshot_gone_under_the_run_says_a_re_run_starts_anew() {
        let d0 = Double::start(DoubleConfig::default());
        let dir = tempfile::tempdir().unwrap();
        let size = 9 * BLOCK_SIZE;
        let data = disk(size);
        let client = EbsClient::new(d0.aws_config());
        let mut w = SnapshotWriter::open(client, opts(dir.path(), size as u64), false).unwrap();
        assert!(d0.delete_snapshot(w.snapshot_id()));
        let e = w
            .write_at(0, &data)
            .and_then(|()| w.flush())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "is gone (deleted, cancelled by AWS, or the service was reset): run the \
                 same command again"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_fresh_open_discards_old_state_and_errors_surface() {
        let d0 = Double::start(DoubleConfig::default());
        let dir = tempfile::tempdir().unwrap();
        let size = 2 * BLOCK_SIZE;
        let client = EbsClient::new(d0.aws_config());
        let first = SnapshotWriter::open(client.clone(), opts(dir.path(), size as u64), true)
            .unwrap()
            .snapshot_id()
            .to_string();
        let second = SnapshotWriter::open(client.clone(), opts(dir.path(), size as u64), false)
            .unwrap()
            .snapshot_id()
            .to_string();
        assert_ne!(first, second);
        // Out of range writes are refused before anything is sent.
        let mut w = SnapshotWriter::open(client, opts(dir.path(), size as u64), true).unwrap();
        assert_eq!(w.snapshot_id(), second);
        assert!(w.write_at(size as u64 - 1, &[1, 2]).is_err());
        // A damaged partial file is a clear error.
        std::fs::write(dir.path().join("t.ebs-partial"), b"junk").unwrap();
        drop(w);
        let e = SnapshotWriter::open(
            EbsClient::new(d0.aws_config()),
            opts(dir.path(), size as u64),
            true,
        )
        .unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
    }
}
