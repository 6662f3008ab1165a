//! The capture writer: one generation of one capture, appended chunk by
//! chunk, checkpointed, resumable, finished with INDEX, MANIFEST, journal.
//!
//! Crash-safety rule (restic's, borg's): data -> index -> manifest ->
//! journal, each made durable (`Store::sync`) before the next. A checkpoint
//! syncs the open segment, appends the new index entries to `IPART`, syncs
//! it, then writes the next journal slot (A/B alternating, seq + CRC).
//! Whatever was written after the newest valid journal slot is discarded on
//! resume, which continues in a NEW segment with a fresh salt so no
//! (key, nonce) pair is ever used twice.

use std::collections::HashMap;

use age::secrecy::SecretString;
use zeroize::Zeroizing;

use crate::encode::{self, Body, ChunkEncoder, Cipher, EncodedChunk, RecordAad};
use crate::error::{Error, Location, Result, StoreCtx};
use crate::keys::{self, DataKey, Subkeys, Unlock};
use crate::layout::{
    self, IndexEntry, IndexHeader, IpartHeader, Journal, JournalState, Manifest, ManifestFile,
    Peer, RecordHeader, RecordLoc, SegmentDigest, SegmentHeader, SegmentTrailer, ENTRY_LEN,
    INCOMPAT_HEADER_DIGEST, INCOMPAT_ZSTD, INDEX_FILE, IPART_FILE, IPART_HEADER_LEN, JOURNAL_A,
    JOURNAL_B, KEYPASS_FILE, KEYS_FILE, MANIFEST_FILE, REC_HEADER_LEN, SEG_HEADER_LEN, TAG_LEN,
    TRAILER_LEN,
};
use crate::medium;
use crate::reader;
use crate::store::Store;

/// What to capture and how.
pub struct CaptureParams {
    /// Capture name: ASCII letters, digits, '-', '_', 1..=32 chars.
    pub name: String,
    /// Power of two, 64 KiB..=16 MiB ([`layout::DEFAULT_CHUNK`] by default).
    pub chunk_size: u32,
    /// Try zstd per chunk (kept only when smaller).
    pub compress: bool,
    /// Key slot recipients (`age1...`), used when the capture is created.
    pub recipients: Vec<age::x25519::Recipient>,
    /// Passphrase key slot, used when the capture is created; also unwraps
    /// the data key of an existing capture for a delta or resume.
    pub passphrase: Option<SecretString>,
    /// age scrypt work factor (log2 N) for the passphrase slot; `None` is
    /// age's default (about one second). Tests lower it.
    pub passphrase_work_factor: Option<u8>,
    /// Store only chunks not already stored in the newest finished generation.
    pub delta: bool,
    /// Size of the source disk in bytes.
    pub source_size: u64,
    /// Free text describing the source (device, NBD export...), <= 1024 bytes.
    pub source_desc: String,
    /// Identity of the appliance the capture was written to, if known.
    pub appliance_id: Option<[u8; 32]>,
    /// Creation time (seconds since the Unix epoch).
    pub created_unix: u64,
    /// Largest segment file; [`layout::MAX_SEGMENT`] (1 GiB) by default.
    pub max_segment_bytes: u64,
    /// Capture id of a new capture; `None` draws a random one. The disk
    /// streams of a machine set (`crate::set`) share one, with one data key.
    pub capture_id: Option<[u8; 16]>,
    /// Other disk streams of the same machine set whose generation of the
    /// same number is finished: a chunk one of them already stored is not
    /// stored again, the index points at their record
    /// ([`layout::INCOMPAT_CROSS_STREAM`]).
    pub dedup_with: Vec<String>,
    /// Dedup across machines, an explicit opt-in (`capture
    /// --dedup-across-machines`): finished generations of *other machines'*
    /// captures (name, generation), captured under this capture's data key
    /// and capture id, whose records this one points at instead of storing
    /// them again. The generation's MANIFEST then pins every peer it uses
    /// by manifest root ([`layout::INCOMPAT_PEERS`]). A delta inherits its
    /// parent's peers without this.
    pub peers: Vec<(String, u32)>,
}

impl CaptureParams {
    /// Defaults for everything but the name and the size.
    pub fn new(name: &str, source_size: u64) -> Self {
        CaptureParams {
            name: name.into(),
            chunk_size: layout::DEFAULT_CHUNK,
            compress: cfg!(feature = "zstd"),
            recipients: Vec::new(),
            passphrase: None,
            passphrase_work_factor: None,
            delta: false,
            source_size,
            source_desc: String::new(),
            appliance_id: None,
            created_unix: 0,
            max_segment_bytes: layout::MAX_SEGMENT,
            capture_id: None,
            dedup_with: Vec::new(),
            peers: Vec::new(),
        }
    }

    /// Hash of everything a resume must repeat identically.
    fn resume_hash(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("MotionGear capture params v1");
        h.update(&(self.name.len() as u32).to_le_bytes());
        h.update(self.name.as_bytes());
        h.update(&self.chunk_size.to_le_bytes());
        h.update(&[u8::from(self.compress), u8::from(self.delta)]);
        h.update(&self.source_size.to_le_bytes());
        h.update(&(self.source_desc.len() as u32).to_le_bytes());
        h.update(self.source_desc.as_bytes());
        h.update(&self.appliance_id.unwrap_or([0; 32]));
        h.update(&self.max_segment_bytes.to_le_bytes());
        // Only when given, so captures without peers resume as before. A
        // resume must see the same peers: the index parts already written
        // number them in the order they were found.
        for (name, g) in &self.peers {
            h.update(&(name.len() as u32).to_le_bytes());
            h.update(name.as_bytes());
            h.update(&g.to_le_bytes());
        }
        *h.finalize().as_bytes()
    }
}

impl core::fmt::Debug for CaptureParams {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CaptureParams")
            .field("name", &self.name)
            .field("chunk_size", &self.chunk_size)
            .field("compress", &self.compress)
            .field(
                "recipients",
                &self
                    .recipients
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>(),
            )
            .field(
                "passphrase",
                &self.passphrase.as_ref().map(|_| "<redacted>"),
            )
            .field("delta", &self.delta)
            .field("source_size", &self.source_size)
            .field("source_desc", &self.source_desc)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

/// What [`CaptureWriter::append`] did with a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// All zeros: an index entry only.
    Zero,
    /// Same keyed id as a chunk already stored (this or a parent generation).
    Dedup,
    /// Written as a new record of `stored_bytes` bytes (header included).
    Stored { stored_bytes: u64 },
}

/// The result of a finished generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSummary {
    pub name: String,
    pub generation: u32,
    pub parent: Option<u32>,
    pub chunk_count: u64,
    pub stored_chunks: u64,
    pub zero_chunks: u64,
    pub dedup_chunks: u64,
    /// Bytes of records written by this generation.
    pub stored_bytes: u64,
    pub segments: u32,
    pub disk_digest: [u8; 32],
    /// Root hash of the MANIFEST (what the appliance signs).
    pub manifest_root: [u8; 32],
    /// First chunk this run wrote (non-zero after a resume).
    pub resumed_from: u64,
    /// This run continued an unfinished generation (a cut-off run's): `resumed_from` is 0
    /// when that run reached no checkpoint, and every chunk was read again.
    pub resumed: bool,
    /// Chunks stored again because the parent's record of the same chunk is on a medium
    /// declared lost: the same disk, not a changed one (counted by this run only).
    pub recaptured_chunks: u64,
    /// Segments of earlier generations found damaged and not reused (their chunks were
    /// stored again), each with why ([`CaptureWriter::damaged_parent_segments`]).
    pub damaged_parent: Vec<(String, &'static str)>,
}

/// Where a new record goes: its segment, record number and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) segment: u32,
    pub(crate) record: u32,
    pub(crate) offset: u64,
}

/// A record ready to write: header and ciphertext, already decoded back.
pub(crate) struct Sealed {
    flags: u8,
    pub(crate) bytes: Vec<u8>,
}

/// A record sealed where its plaintext was (the writer's path): the
/// ciphertext and tag in the chunk's own buffer, the header apart, so the
/// payload is not copied into a record buffer first.
pub(crate) struct SealedBody {
    index: u64,
    pos: Position,
    flags: u8,
    plain_len: u32,
    chunk_id: [u8; 32],
    header: Vec<u8>,
    /// Ciphertext and tag in `body[from..]` (see `encode::Body::Data`).
    body: Vec<u8>,
    from: usize,
}

impl SealedBody {
    /// The stored bytes: ciphertext and tag.
    fn stored(&self) -> &[u8] {
        self.body.get(self.from..).unwrap_or_default()
    }
}

/// One record to seal in place: its chunk's index in the batch, position,
/// and what [`SealCtx::seal_in_place`] takes.
type SealJob = (usize, Position, u64, [u8; 32], u32, bool, Vec<u8>, usize);

/// Takes the payload of every planned record out of its chunk, as a job
/// for [`SealCtx::seal_in_place`].
fn seal_jobs(planned: &mut [(EncodedChunk, Option<Position>)]) -> Vec<SealJob> {
    let mut jobs = Vec::new();
    for (i, (chunk, pos)) in planned.iter_mut().enumerate() {
        if let (
            Some(p),
            Body::Data {
                bytes,
                from,
                compressed,
            },
        ) = (*pos, &mut chunk.body)
        {
            let payload = core::mem::take(bytes);
            let c = *compressed;
            let from = core::mem::take(from);
            jobs.push((
                i,
                p,
                chunk.index,
                chunk.chunk_id,
                chunk.plain_len,
                c,
                payload,
                from,
            ));
        }
    }
    jobs
}

/// Sealed records back at their chunk's place in a batch of `len`.
fn in_batch_order<T>(len: usize, at: Vec<usize>, sealed: Vec<T>) -> Vec<Option<T>> {
    let mut out: Vec<Option<T>> = (0..len).map(|_| None).collect();
    for (i, s) in at.into_iter().zip(sealed) {
        if let Some(slot) = out.get_mut(i) {
            *slot = Some(s);
        }
    }
    out
}

/// What sealing a record needs from the writer (shared by sealing threads).
pub(crate) struct SealCtx<'a> {
    pub(crate) cipher: &'a Cipher,
    pub(crate) capture_id: &'a [u8; 16],
    pub(crate) generation: u32,
}

/// Every how many records (by record number, so the first of every
/// segment) the sealed record is decrypted again. See [`SealCtx::seal`].
const REOPEN_EVERY: u32 = 64;

impl SealCtx<'_> {
    /// Encrypts `chunk` as the record at `pos`, decodes the header back as a
    /// reader would, and decrypts the first record of every segment and
    /// one in [`REOPEN_EVERY`] after it again, refusing a record that does
    /// not give its input back.
    ///
    /// Why not every record: the valuable self-check is decompression
    /// after compression (zstd is large, stateful code; `encode` keeps it
    /// for every compressed chunk). What reopening proves is that the key,
    /// nonce and AAD this writer used are the ones a reader derives; those
    /// are the same for every record of a segment, so a mistake there shows
    /// on its first record, while reopening all of them doubled the AES-GCM
    /// cost of a capture (FORMAT.md §5, README "Benchmarks"). A bit flipped
    /// in memory between sealing and writing is caught by the stored-bytes
    /// hash at seal and arrival, and by AES-GCM at ingest.
    pub(crate) fn seal(&self, chunk: &EncodedChunk, pos: Position) -> Result<Sealed> {
        let (payload, compressed) = match &chunk.body {
            Body::Data {
                bytes,
                from,
                compressed,
            } => (bytes.get(*from..).unwrap_or_default(), *compressed),
            Body::Zero => {
                return Err(Error::Usage(format!(
                    "chunk {} is all zeros: it has no record to seal",
                    chunk.index
                )))
            }
        };
        let stored_len = payload.len() + TAG_LEN;
        let flags = encode::flags_of(compressed);
        let aad = RecordAad {
            capture_id: self.capture_id,
            generation: self.generation,
            segment: pos.segment,
            record: pos.record,
            chunk_id: &chunk.chunk_id,
            plain_len: chunk.plain_len,
            stored_len: stored_len as u32,
            flags,
        };
        let mut rec = Vec::with_capacity(REC_HEADER_LEN + stored_len);
        rec.resize(REC_HEADER_LEN, 0);
        rec.extend_from_slice(payload);
        encode::seal_record_in_place(self.cipher, &aad, &mut rec, REC_HEADER_LEN)?;
        let header = RecordHeader {
            record: pos.record,
            stored_len: stored_len as u32,
            plain_len: chunk.plain_len,
            flags,
            stored_hash: *blake3::hash(&rec[REC_HEADER_LEN..]).as_bytes(),
        };
        rec[..REC_HEADER_LEN].copy_from_slice(&header.encode());
        let check = RecordHeader::decode(&rec).ok().filter(|h| *h == header);
        let reopened_ok = !pos.record.is_multiple_of(REOPEN_EVERY)
            || encode::open_record(self.cipher, &aad, &rec[REC_HEADER_LEN..]).as_deref()
                == Some(payload);
        if check.is_none() || !reopened_ok {
            return Err(Error::Backend(format!(
                "record for chunk {} did not decode back to its input: refusing to write it",
                chunk.index
            )));
        }
        Ok(Sealed { flags, bytes: rec })
    }

    fn aad<'b>(
        &'b self,
        pos: Position,
        chunk_id: &'b [u8; 32],
        plain_len: u32,
        stored_len: usize,
        flags: u8,
    ) -> RecordAad<'b> {
        RecordAad {
            capture_id: self.capture_id,
            generation: self.generation,
            segment: pos.segment,
            record: pos.record,
            chunk_id,
            plain_len,
            stored_len: stored_len as u32,
            flags,
        }
    }

    /// [`seal`](Self::seal) of a chunk's payload in its own buffer, with
    /// the same checks: the header decoded back, and the first record of
    /// every segment and one in [`REOPEN_EVERY`] decrypted again (their
    /// plaintext is copied first, for the comparison).
    fn seal_in_place(&self, job: SealJob) -> Result<SealedBody> {
        let (_, pos, index, chunk_id, plain_len, compressed, mut payload, from) = job;
        if from > payload.len() {
            return Err(Error::Usage(format!(
                "chunk {index}'s payload starts past its buffer"
            )));
        }
        let stored_len = payload.len() - from + TAG_LEN;
        let flags = encode::flags_of(compressed);
        let aad = self.aad(pos, &chunk_id, plain_len, stored_len, flags);
        let keep = pos
            .record
            .is_multiple_of(REOPEN_EVERY)
            .then(|| payload[from..].to_vec());
        encode::seal_record_in_place(self.cipher, &aad, &mut payload, from)?;
        let header = RecordHeader {
            record: pos.record,
            stored_len: stored_len as u32,
            plain_len,
            flags,
            stored_hash: *blake3::hash(&payload[from..]).as_bytes(),
        };
        let head = header.encode();
        let check = RecordHeader::decode(&head).ok().filter(|h| *h == header);
        let reopened_ok = keep.is_none_or(|plain| {
            encode::open_record(self.cipher, &aad, &payload[from..]).as_deref()
                == Some(plain.as_slice())
        });
        if check.is_none() || !reopened_ok {
            return Err(Error::Backend(format!(
                "record for chunk {index} did not decode back to its input: refusing to write it"
            )));
        }
        Ok(SealedBody {
            index,
            pos,
            flags,
            plain_len,
            chunk_id,
            header: head,
            body: payload,
            from,
        })
    }

    /// The plaintext of a record sealed in place, for a record that must
    /// be sealed again at another position.
    fn unseal(&self, s: &SealedBody) -> Result<Vec<u8>> {
        let stored = s.stored();
        let aad = self.aad(s.pos, &s.chunk_id, s.plain_len, stored.len(), s.flags);
        encode::open_record(self.cipher, &aad, stored).ok_or_else(|| {
            Error::Backend(format!(
                "record for chunk {} sealed ahead does not open again",
                s.index
            ))
        })
    }
}

struct OpenSegment {
    no: u32,
    path: String,
    /// Shared with the sealing threads of [`CaptureWriter::checkpoint_then_append`].
    cipher: std::sync::Arc<Cipher>,
    len: u64,
    records: u32,
    hasher: blake3::Hasher,
    /// Where this segment is closed: the format's limit, or less when the
    /// medium holding it has less room ([`Store::room`], a span of media).
    limit: u64,
}

#[derive(Default)]
struct Stats {
    /// Records sealed ahead by [`CaptureWriter::append_batch`] and used as sealed.
    presealed: u64,
    stored_chunks: u64,
    zero_chunks: u64,
    dedup_chunks: u64,
    stored_bytes: u64,
    recaptured_chunks: u64,
}

/// Writes one generation of a capture. See the module doc for the order of
/// writes; call [`checkpoint`](Self::checkpoint) every few hundred MiB so an
/// interrupted capture resumes close to where it stopped.
///
/// After any error (e.g. the medium is full or was unplugged), drop the
/// writer and call [`begin`](Self::begin) again with the same parameters and
/// key: it resumes from the last checkpoint.
pub struct CaptureWriter<S: Store> {
    store: S,
    params: CaptureParams,
    params_hash: [u8; 32],
    key: DataKey,
    keys: Subkeys,
    capture_id: [u8; 16],
    generation: u32,
    parent: u32,
    incompat: u32,
    chunk_count: u64,
    entries: Vec<IndexEntry>,
    dedup: HashMap<[u8; 32], RecordLoc>,
    /// The parent generation's index (a delta only), for [`Self::append_unchanged`].
    parent_entries: Vec<IndexEntry>,
    /// Segments of earlier generations that are not on the medium (a
    /// medium of a span declared lost, `crate::span`): a delta never points
    /// into them, so what they held is captured again.
    unavailable: std::collections::HashSet<(u32, u32)>,
    /// The same for other disk streams' segments, by path.
    unavailable_paths: std::collections::HashSet<String>,
    /// Segments of earlier generations a delta would have reused whose length, header or
    /// trailer are not as their generation's MANIFEST records (damaged on the medium): in
    /// `unavailable` too, so what they held is stored again; each with why.
    damaged_parent: Vec<(String, &'static str)>,
    /// Keyed ids of the parent's chunks whose records are in those segments: one stored
    /// again is the same disk's chunk recaptured, not a change.
    lost_ids: std::collections::HashSet<[u8; 32]>,
    /// Every other machine's capture generation whose records this one may
    /// point at, in the order found: index entry stream
    /// `PEER_STREAM_BASE + i` names entry i until [`Self::finish`] keeps
    /// only the peers used (and renumbers). Rebuilt in the same order on
    /// resume (parent, disks of the set, then `params.peers`), which the
    /// index parts rely on.
    peer_table: Vec<Peer>,
    /// (capture, generation) → its stream number, `None` = not usable.
    peer_slots: HashMap<(String, u32), Option<u16>>,
    closed: Vec<SegmentDigest>,
    open: Option<OpenSegment>,
    ipart_len: u64,
    checkpointed: u64,
    seq: u64,
    stats: Stats,
    resume_from: u64,
    /// See [`CaptureSummary::resumed`].
    resumed: bool,
    encoder: ChunkEncoder,
}

impl<S: Store> core::fmt::Debug for CaptureWriter<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CaptureWriter")
            .field("name", &self.params.name)
            .field("generation", &self.generation)
            .field("next_chunk", &self.entries.len())
            .finish_non_exhaustive()
    }
}

fn corrupt(at: Location, what: impl Into<String>) -> Error {
    Error::corrupt(at, what)
}

impl<S: Store> CaptureWriter<S> {
    /// Starts a new generation of capture `params.name`, or resumes its
    /// unfinished newest generation if it was started with identical
    /// parameters.
    ///
    /// A new capture name gets `key` (or a fresh random data key) and its key
    /// slots are written from `params.recipients` / `params.passphrase`.
    /// An existing name (a delta, another full generation, or a resume)
    /// needs its data key: `key` from the source-side key cache, or
    /// `params.passphrase` to unwrap the `KEYPASS` slot. Save
    /// [`data_key`](Self::data_key) to the key cache right after `begin`.
    pub fn begin(mut store: S, params: CaptureParams, key: Option<DataKey>) -> Result<Self> {
        let name = params.name.clone();
        layout::validate_name(&name)?;
        check_params(&params)?;
        let gens = medium::generations(&mut store, &name)?;
        let mut last_done: Option<ManifestFile> = None;
        for &g in gens.iter().rev() {
            if let Some(f) = medium::read_manifest(&mut store, &name, g)? {
                last_done = Some(f);
                break;
            }
        }
        // The newest generation, if it has no manifest, is unfinished.
        let tail = match gens.last() {
            Some(&g)
                if last_done
                    .as_ref()
                    .is_none_or(|f| f.manifest.generation != g) =>
            {
                Some((g, medium::read_journal(&mut store, &name, g)?))
            }
            _ => None,
        };
        let known = match (&last_done, &tail) {
            (_, Some((_, Some(j)))) => Some((j.capture_id, j.key_check)),
            (Some(f), _) => Some((f.manifest.capture_id, f.manifest.key_check)),
            _ => None,
        };
        let (key, capture_id) = match known {
            None => {
                if params.recipients.is_empty() && params.passphrase.is_none() {
                    return Err(Error::InvalidParams(
                        "no key slot: give at least one recipient (age1...) or a passphrase, otherwise nothing could ever decrypt this capture".into(),
                    ));
                }
                let key = match key {
                    Some(k) => k,
                    None => DataKey::generate()?,
                };
                let capture_id = match params.capture_id {
                    Some(id) => id,
                    None => keys::random::<16>()?,
                };
                store
                    .create_dir_all(&layout::capture_dir(&name))
                    .at(&layout::capture_dir(&name))?;
                keys::write_key_slots(
                    &mut store,
                    &name,
                    &capture_id,
                    &key,
                    &params.recipients,
                    params.passphrase.as_ref(),
                    params.passphrase_work_factor,
                )?;
                (key, capture_id)
            }
            Some((capture_id, key_check)) => {
                let key = match (key, &params.passphrase) {
                    (Some(k), _) => k,
                    (None, Some(p)) if has_file(&mut store, &name, KEYPASS_FILE)? => {
                        keys::unlock_data_key(&mut store, &name, &Unlock::Passphrase(p.clone()))?.0
                    }
                    (None, _) => {
                        return Err(Error::NeedKey {
                            name: name.clone(),
                            why: "it already exists on this medium, so this capture (a delta, a resume or a new generation) needs its data key: give the source-side key cache written by the first capture, or its passphrase".into(),
                        })
                    }
                };
                if Subkeys::derive(&key, &capture_id).key_check() != key_check {
                    return Err(Error::WrongKey { name });
                }
                (key, capture_id)
            }
        };
        let keys = Subkeys::derive(&key, &capture_id);
        let mut w = CaptureWriter {
            encoder: ChunkEncoder::new(
                keys.chunk_id.clone(),
                capture_id,
                params.chunk_size,
                params.source_size,
                params.compress,
            ),
            params_hash: params.resume_hash(),
            incompat: INCOMPAT_HEADER_DIGEST | if params.compress { INCOMPAT_ZSTD } else { 0 },
            chunk_count: layout::chunk_count(params.source_size, params.chunk_size),
            store,
            params,
            key,
            keys,
            capture_id,
            generation: 0,
            parent: 0,
            entries: Vec::new(),
            dedup: HashMap::new(),
            parent_entries: Vec::new(),
            unavailable: Default::default(),
            unavailable_paths: Default::default(),
            damaged_parent: Vec::new(),
            lost_ids: Default::default(),
            peer_table: Vec::new(),
            peer_slots: HashMap::new(),
            closed: Vec::new(),
            open: None,
            ipart_len: 0,
            checkpointed: 0,
            seq: 0,
            stats: Stats::default(),
            resume_from: 0,
            resumed: false,
        };
        match tail {
            Some((g, Some(j))) => {
                if j.state == JournalState::Finished {
                    return Err(corrupt(
                        Location::capture(&name).generation(g),
                        "the journal says finished but the MANIFEST is missing or damaged",
                    ));
                }
                if j.params_hash != w.params_hash || j.capture_id != capture_id {
                    return Err(Error::ResumeMismatch {
                        name,
                        generation: g,
                    });
                }
                w.resume(g, j)?;
            }
            Some((g, None)) => {
                // Nothing durable was recorded: start this generation afresh.
                w.wipe_generation(g)?;
                w.start(g, last_done.as_ref())?;
            }
            None => {
                let g = gens.last().map_or(1, |g| g + 1);
                if g > layout::MAX_GENERATIONS {
                    return Err(Error::Limit(format!(
                        "capture {name} has reached {} generations",
                        layout::MAX_GENERATIONS
                    )));
                }
                w.start(g, last_done.as_ref())?;
            }
        }
        Ok(w)
    }

    /// The capture's data key: save it in the source-side key cache
    /// ([`DataKey::save_cache`]) so later deltas can be written.
    pub fn data_key(&self) -> &DataKey {
        &self.key
    }

    /// The capture's id (the same for every generation).
    pub fn capture_id(&self) -> [u8; 16] {
        self.capture_id
    }

    /// First chunk index still to write (0 unless resuming).
    pub fn resume_from(&self) -> u64 {
        self.resume_from
    }

    /// Whether chunk `index` was recorded as stored data (not as zeros) before the stop
    /// ([`stored_matches`](Self::stored_matches) can tell it apart).
    pub fn is_stored(&self, index: u64) -> bool {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.entries.get(i))
            .is_some_and(|e| matches!(e, IndexEntry::Stored(_)))
    }

    /// Whether chunk `index` was recorded as all zeros (a zero or a hole of the source) before
    /// the stop: a resume reads it again to tell another disk from this one where nothing
    /// else was stored.
    pub fn is_zero(&self, index: u64) -> bool {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.entries.get(i))
            .is_some_and(|e| matches!(e, IndexEntry::Zero { .. }))
    }

    /// Whether `plaintext`, chunk `index` as the source reads now, is the chunk this
    /// generation recorded there before it stopped (`index` below
    /// [`resume_from`](Self::resume_from)): by its keyed id. `None` where that tells
    /// nothing: a chunk not recorded, or recorded as all zeros.
    pub fn stored_matches(&self, index: u64, plaintext: &[u8]) -> Option<bool> {
        match self.entries.get(usize::try_from(index).ok()?)? {
            IndexEntry::Stored(l) => {
                Some(encode::chunk_id(&self.keys.chunk_id, plaintext) == l.chunk_id)
            }
            IndexEntry::Zero { .. } => None,
        }
    }

    /// The generation being written.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Parent generation of a delta.
    pub fn parent(&self) -> Option<u32> {
        (self.parent != 0).then_some(self.parent)
    }

    /// Number of chunks of the source.
    pub fn chunk_count(&self) -> u64 {
        self.chunk_count
    }

    /// An encoder for worker threads (clone it freely).
    pub fn encoder(&self) -> ChunkEncoder {
        self.encoder.clone()
    }

    /// Appends the next chunk (chunks must come in index order, starting at
    /// [`resume_from`](Self::resume_from)).
    pub fn append(&mut self, chunk: EncodedChunk) -> Result<Appended> {
        self.append_one(chunk, None)
    }

    /// Appends consecutive chunks, sealing their records on up to `threads`
    /// threads at once. The result is byte-identical to calling
    /// [`append`](Self::append) for each chunk in turn.
    ///
    /// Why: sealing a record (AES-GCM, its BLAKE3 hash, and decoding it
    /// back as a reader would) costs several passes over the data and was
    /// the one serial step of a capture. A record's nonce and AAD depend only
    /// on its position (segment, record number) and lengths, all known
    /// before encryption, so positions are planned in order here, the
    /// sealing runs in parallel, and the writes happen in order again.
    pub fn append_batch(
        &mut self,
        chunks: Vec<EncodedChunk>,
        threads: usize,
    ) -> Result<Vec<Appended>> {
        let mut out = Vec::with_capacity(chunks.len());
        let mut rest = chunks.into_iter().peekable();
        while rest.peek().is_some() {
            let planned = self.plan(&mut rest);
            if planned.is_empty() {
                // The next chunk opens a segment (fresh salt, so its cipher
                // is unknown until then): append it the plain way.
                if let Some(chunk) = rest.next() {
                    out.push(self.append_one(chunk, None)?);
                }
                continue;
            }
            let mut planned = planned;
            let sealed = self.seal_planned(&mut planned, threads)?;
            for ((chunk, _), sealed) in planned.into_iter().zip(sealed) {
                let pre = match sealed {
                    Some(r) => Some(r?),
                    None => None,
                };
                out.push(self.append_one(chunk, pre)?);
            }
        }
        Ok(out)
    }

    /// Takes chunks from `rest` while they fit in the open segment, giving
    /// each new record the position it will get when appended in order.
    fn plan(
        &self,
        rest: &mut core::iter::Peekable<impl Iterator<Item = EncodedChunk>>,
    ) -> Vec<(EncodedChunk, Option<Position>)> {
        let mut planned = Vec::new();
        let Some(seg) = self.open.as_ref() else {
            return planned;
        };
        let (mut len, mut records) = (seg.len, seg.records);
        let mut new_ids: HashMap<[u8; 32], u32> = HashMap::new();
        while let Some(chunk) = rest.peek() {
            let pos = match &chunk.body {
                Body::Zero => None,
                Body::Data { .. } => {
                    let dup = |l: u32| l == chunk.plain_len;
                    let dedup = self
                        .dedup
                        .get(&chunk.chunk_id)
                        .is_some_and(|loc| dup(loc.plain_len))
                        || new_ids.get(&chunk.chunk_id).is_some_and(|l| dup(*l));
                    if dedup {
                        None
                    } else {
                        let rec_size = (REC_HEADER_LEN + chunk.payload_len() + TAG_LEN) as u64;
                        if len + rec_size + TRAILER_LEN as u64 > seg.limit {
                            break;
                        }
                        let pos = Position {
                            segment: seg.no,
                            record: records,
                            offset: len,
                        };
                        new_ids.entry(chunk.chunk_id).or_insert(chunk.plain_len);
                        len += rec_size;
                        records += 1;
                        Some(pos)
                    }
                }
            };
            if let Some(chunk) = rest.next() {
                planned.push((chunk, pos));
            }
        }
        planned
    }

    /// Seals the planned records on up to `threads` threads, each in its
    /// chunk's own buffer (taken out of the chunk); `None` for chunks
    /// without a record to seal (zeros, dedup).
    fn seal_planned(
        &self,
        planned: &mut [(EncodedChunk, Option<Position>)],
        threads: usize,
    ) -> Result<Vec<Option<Result<SealedBody>>>> {
        let Some(seg) = self.open.as_ref() else {
            return Ok(planned.iter().map(|_| None).collect());
        };
        let ctx = SealCtx {
            cipher: &seg.cipher,
            capture_id: &self.capture_id,
            generation: self.generation,
        };
        let jobs = seal_jobs(planned);
        let at: Vec<usize> = jobs.iter().map(|j| j.0).collect();
        let sealed = crate::parallel::map_owned_in_order(jobs, threads, |j| ctx.seal_in_place(j))?;
        Ok(in_batch_order(planned.len(), at, sealed))
    }

    /// [`checkpoint`](Self::checkpoint), then [`append_batch`](Self::append_batch)
    /// of `chunks`, whose records are sealed while the checkpoint waits for
    /// the medium's syncs. The checkpoint covers what was appended before
    /// this call, as `checkpoint` would, and nothing of `chunks` is written
    /// until it is done; with one sealing thread per core, a capture keeps
    /// its cores busy through the syncs instead of waiting for them.
    pub fn checkpoint_then_append(
        &mut self,
        chunks: Vec<EncodedChunk>,
        threads: usize,
    ) -> Result<Vec<Appended>> {
        let mut rest = chunks.into_iter().peekable();
        let mut planned = self.plan(&mut rest);
        let cipher = self
            .open
            .as_ref()
            .map(|seg| std::sync::Arc::clone(&seg.cipher));
        let (Some(cipher), false) = (cipher, planned.is_empty()) else {
            self.checkpoint()?;
            let mut all: Vec<EncodedChunk> = planned.into_iter().map(|(c, _)| c).collect();
            all.extend(rest);
            return self.append_batch(all, threads);
        };
        let (capture_id, generation) = (self.capture_id, self.generation);
        let jobs = seal_jobs(&mut planned);
        let at: Vec<usize> = jobs.iter().map(|j| j.0).collect();
        let (checkpointed, sealed) = std::thread::scope(|scope| {
            let sealing = scope.spawn(move || {
                let ctx = SealCtx {
                    cipher: &cipher,
                    capture_id: &capture_id,
                    generation,
                };
                crate::parallel::map_owned_in_order(jobs, threads, |j| ctx.seal_in_place(j))
            });
            let checkpointed = self.checkpoint();
            (checkpointed, sealing.join())
        });
        checkpointed?;
        let sealed = sealed.map_err(|_| Error::Backend("a sealing thread panicked".into()))??;
        let sealed = in_batch_order(planned.len(), at, sealed);
        let mut out = Vec::with_capacity(planned.len());
        for ((chunk, _), sealed) in planned.into_iter().zip(sealed) {
            let pre = match sealed {
                Some(r) => Some(r?),
                None => None,
            };
            out.push(self.append_one(chunk, pre)?);
        }
        out.extend(self.append_batch(rest.collect(), threads)?);
        Ok(out)
    }

    /// Appends one chunk; `pre` is its record sealed ahead of time (its
    /// payload then lives there, no longer in the chunk), written as it is
    /// when it was sealed for exactly the position the chunk gets now.
    fn append_one(&mut self, mut chunk: EncodedChunk, pre: Option<SealedBody>) -> Result<Appended> {
        let next = self.entries.len() as u64;
        if chunk.index != next {
            return Err(Error::Usage(format!(
                "chunks must be appended in order: expected chunk {next}, got {}",
                chunk.index
            )));
        }
        if chunk.capture_id != self.capture_id {
            return Err(Error::Usage(
                "chunk was encoded by another capture's encoder".into(),
            ));
        }
        // Planning and appending agree on every position; should they
        // not, the record is opened back to its plaintext and sealed again
        // where it goes (its segment is still the open one: a planned
        // record always fits it).
        let pre = match pre {
            Some(s) => {
                let Some(seg) = self.open.as_ref() else {
                    return Err(Error::Usage("no open segment".into()));
                };
                let here = Position {
                    segment: seg.no,
                    record: seg.records,
                    offset: seg.len,
                };
                if s.pos == here && s.index == chunk.index {
                    Some(s)
                } else if s.pos.segment != seg.no {
                    return Err(Error::Backend(format!(
                        "record for chunk {} was sealed for segment {} but segment {} is open",
                        s.index, s.pos.segment, seg.no
                    )));
                } else {
                    let plain = SealCtx {
                        cipher: &seg.cipher,
                        capture_id: &self.capture_id,
                        generation: self.generation,
                    }
                    .unseal(&s)?;
                    if let Body::Data { bytes, from, .. } = &mut chunk.body {
                        *bytes = plain;
                        *from = 0;
                    }
                    None
                }
            }
            None => None,
        };
        let payload_len = match (&chunk.body, &pre) {
            (_, Some(s)) => s.stored().len().saturating_sub(TAG_LEN),
            (Body::Zero, None) => {
                self.entries.push(IndexEntry::Zero {
                    plain_len: chunk.plain_len,
                    chunk_id: chunk.chunk_id,
                });
                self.stats.zero_chunks += 1;
                return Ok(Appended::Zero);
            }
            (Body::Data { .. }, None) => chunk.payload_len(),
        };
        if let Some(loc) = self.dedup.get(&chunk.chunk_id) {
            if loc.plain_len == chunk.plain_len {
                self.entries.push(IndexEntry::Stored(*loc));
                self.stats.dedup_chunks += 1;
                return Ok(Appended::Dedup);
            }
        }
        let stored_len = payload_len + TAG_LEN;
        let rec_size = (REC_HEADER_LEN + stored_len) as u64;
        if let Some(seg) = &self.open {
            if seg.len + rec_size + TRAILER_LEN as u64 > seg.limit {
                self.close_segment()?;
                self.checkpoint()?;
            }
        }
        if self.open.is_none() {
            self.open_segment()?;
        }
        let Some(seg) = self.open.as_mut() else {
            return Err(Error::Usage("no open segment".into()));
        };
        if seg.records == 0 && seg.len + rec_size + TRAILER_LEN as u64 > seg.limit {
            // A fresh segment without room for one record: the medium is full.
            return Err(Error::Store {
                path: seg.path.clone(),
                error: crate::store::StoreError::NoSpace,
            });
        }
        let here = Position {
            segment: seg.no,
            record: seg.records,
            offset: seg.len,
        };
        // The record header holds blake3 of the stored bytes, computed on a
        // sealing thread: with INCOMPAT_HEADER_DIGEST the segment digest
        // covers them through it, and this serial step hashes 64 bytes.
        let whole_digest = !layout::header_digest(self.incompat);
        let flags = match pre {
            Some(s) => {
                self.stats.presealed += 1;
                // Two writes, one after the other: the store joins them.
                self.store
                    .write_at(&seg.path, seg.len, &s.header)
                    .at(&seg.path)?;
                self.store
                    .write_at(&seg.path, seg.len + s.header.len() as u64, s.stored())
                    .at(&seg.path)?;
                seg.hasher.update(&s.header);
                if whole_digest {
                    seg.hasher.update(s.stored());
                }
                s.flags
            }
            None => {
                let sealed = SealCtx {
                    cipher: &seg.cipher,
                    capture_id: &self.capture_id,
                    generation: self.generation,
                }
                .seal(&chunk, here)?;
                let rec = sealed.bytes;
                self.store
                    .write_at(&seg.path, seg.len, &rec)
                    .at(&seg.path)?;
                if whole_digest {
                    seg.hasher.update(&rec);
                } else {
                    seg.hasher.update(&rec[..REC_HEADER_LEN]);
                }
                sealed.flags
            }
        };
        let loc = RecordLoc {
            flags,
            plain_len: chunk.plain_len,
            generation: self.generation,
            segment: seg.no,
            record: seg.records,
            stored_len: stored_len as u32,
            offset: seg.len,
            chunk_id: chunk.chunk_id,
            stream: 0,
        };
        seg.len += rec_size;
        seg.records += 1;
        self.entries.push(IndexEntry::Stored(loc));
        self.dedup.insert(chunk.chunk_id, loc);
        self.stats.stored_chunks += 1;
        self.stats.stored_bytes += rec_size;
        if self.lost_ids.contains(&chunk.chunk_id) {
            self.stats.recaptured_chunks += 1;
        }
        Ok(Appended::Stored {
            stored_bytes: rec_size,
        })
    }

    /// Writes this generation with other feature bits (tests write media
    /// as older writers did). Call it before the first append.
    #[cfg(test)]
    pub(crate) fn use_feature_bits(&mut self, incompat: u32) {
        self.incompat = incompat;
    }

    /// How many records [`append_batch`](Self::append_batch) sealed ahead
    /// and wrote as sealed (the rest were sealed in line).
    pub fn presealed_records(&self) -> u64 {
        self.stats.presealed
    }

    /// Whether [`append_unchanged`](Self::append_unchanged) can copy chunk
    /// `index` from the parent: this is a delta and the parent has a chunk
    /// at `index` of the same length (not so when the disk grew or shrank).
    pub fn can_copy_unchanged(&self, index: u64) -> bool {
        self.parent_unchanged(index).is_some()
    }

    /// Whether the parent generation holds chunk `index` as stored data (not zeros) of the
    /// length it has now: what a delta can sample to tell the disk it continues from another.
    pub fn parent_holds_data(&self, index: u64) -> bool {
        matches!(self.parent_unchanged(index), Some(IndexEntry::Stored(_)))
    }

    /// Whether `plaintext`, chunk `index` as the source reads now, is what the parent
    /// generation holds there (by keyed id, or all zeros for a zero entry): a delta that
    /// copies chunks a dirty bitmap calls clean checks a few of them first. `None` where
    /// the parent has no such chunk to copy.
    pub fn parent_matches(&self, index: u64, plaintext: &[u8]) -> Option<bool> {
        Some(match self.parent_unchanged(index)? {
            IndexEntry::Stored(l) => encode::chunk_id(&self.keys.chunk_id, plaintext) == l.chunk_id,
            IndexEntry::Zero { .. } => encode::is_all_zero(plaintext),
        })
    }

    /// Appends chunk `index` (the next one, as for [`append`](Self::append))
    /// as unchanged since the parent generation, without its plaintext: the
    /// parent's index entry is copied (same keyed id, same record or zero
    /// entry). Use it for chunks a change-tracking source (a qemu dirty
    /// bitmap) reports clean. The whole-disk digest needs only the keyed
    /// chunk ids in order, so the parent's id keeps it exact — provided the
    /// chunk really is unchanged, which the caller vouches for.
    ///
    /// Errors when this is not a delta or the parent has no such chunk of
    /// the same length (see [`can_copy_unchanged`](Self::can_copy_unchanged)):
    /// the caller must then read the chunk and [`append`](Self::append) it.
    pub fn append_unchanged(&mut self, index: u64) -> Result<Appended> {
        let next = self.entries.len() as u64;
        if index != next {
            return Err(Error::Usage(format!(
                "chunks must be appended in order: expected chunk {next}, got {index}"
            )));
        }
        let Some(e) = self.parent_unchanged(index) else {
            return Err(Error::Usage(format!(
                "chunk {index} cannot be copied from a parent generation (no parent, or the parent \
                 has no chunk {index} of this length because the disk size changed): read and append it"
            )));
        };
        self.entries.push(e);
        Ok(match e {
            IndexEntry::Zero { .. } => {
                self.stats.zero_chunks += 1;
                Appended::Zero
            }
            IndexEntry::Stored(_) => {
                self.stats.dedup_chunks += 1;
                Appended::Dedup
            }
        })
    }

    fn parent_unchanged(&self, index: u64) -> Option<IndexEntry> {
        if self.parent == 0 || index >= self.chunk_count {
            return None;
        }
        let want = layout::chunk_len(self.params.source_size, self.params.chunk_size, index);
        let e = *self.parent_entries.get(usize::try_from(index).ok()?)?;
        if let IndexEntry::Stored(l) = e {
            if l.stream != 0 {
                let holder = self.holder(l.stream)?;
                let path = layout::segment_path(&holder, l.generation, l.segment);
                if self.unavailable_paths.contains(&path) {
                    return None;
                }
            } else if self.unavailable.contains(&(l.generation, l.segment)) {
                return None;
            }
        }
        (e.plain_len() == want).then_some(e)
    }

    /// Makes everything appended so far durable and records it in the
    /// journal, so a resume continues from here.
    pub fn checkpoint(&mut self) -> Result<()> {
        let ipart = self.path(IPART_FILE);
        let mut first = self.checkpointed as usize;
        let wrote = first < self.entries.len();
        while first < self.entries.len() {
            let last = self.entries.len().min(first + (1 << 20));
            let h = IpartHeader {
                first_chunk: first as u64,
                count: (last - first) as u32,
                salt: keys::random()?,
            };
            let mut plain = Zeroizing::new(Vec::with_capacity((last - first) * ENTRY_LEN));
            for e in &self.entries[first..last] {
                e.encode_into(&mut plain);
            }
            let ct = encode::seal_blob(
                &self.keys.index_cipher(&h.salt),
                &self.ipart_aad(&h),
                &plain,
            )?;
            let mut bytes = h.encode();
            bytes.extend_from_slice(&ct);
            self.store
                .write_at(&ipart, self.ipart_len, &bytes)
                .at(&ipart)?;
            self.ipart_len += bytes.len() as u64;
            first = last;
        }
        // The segment and the IPART batch may become durable in any order:
        // the journal slot, written only once both are, is what names their
        // durable lengths (a resume ignores whatever lies past them). On a
        // store whose sync covers every file (FAT, the appliance) the second
        // sync finds nothing new: one device sync for both, not two.
        if let Some(seg) = &self.open {
            self.store.sync(&seg.path).at(&seg.path)?;
        }
        if wrote {
            self.store.sync(&ipart).at(&ipart)?;
        }
        self.checkpointed = self.entries.len() as u64;
        self.write_journal(JournalState::InProgress)
    }

    /// Closes the last segment and writes INDEX, MANIFEST and the final
    /// journal slot, in that order, each durable before the next.
    pub fn finish(mut self) -> Result<CaptureSummary> {
        let have = self.entries.len() as u64;
        if have != self.chunk_count {
            return Err(Error::Usage(format!(
                "capture {} is incomplete: {have} of {} chunks appended; finish only after the last chunk",
                self.params.name, self.chunk_count
            )));
        }
        self.close_segment()?;
        // An entry pointing at another disk's record (found now, or copied
        // from a parent that had one) needs a reader that knows the feature.
        if self.entries.iter().any(|e| {
            matches!(e, IndexEntry::Stored(l) if l.stream != 0 && l.stream < layout::PEER_STREAM_BASE)
        }) {
            self.incompat |= layout::INCOMPAT_CROSS_STREAM;
        }
        let peers = self.used_peers()?;
        if !peers.is_empty() {
            self.incompat |= layout::INCOMPAT_PEERS;
        }
        // INDEX
        let ih = IndexHeader {
            incompat: self.incompat,
            capture_id: self.capture_id,
            generation: self.generation,
            chunk_size: self.params.chunk_size,
            disk_size: self.params.source_size,
            chunk_count: self.chunk_count,
            salt: keys::random()?,
            ciphertext_len: self.chunk_count * ENTRY_LEN as u64 + TAG_LEN as u64,
        };
        let mut plain = Zeroizing::new(Vec::with_capacity(self.entries.len() * ENTRY_LEN));
        for e in &self.entries {
            e.encode_into(&mut plain);
        }
        let ct = encode::seal_blob(&self.keys.index_cipher(&ih.salt), &ih.aad(), &plain)?;
        let mut index = ih.encode();
        index.extend_from_slice(&ct);
        let index_path = self.path(INDEX_FILE);
        self.write_atomic(&index_path, &index)?;
        // MANIFEST
        let disk_digest = medium::disk_digest(
            self.params.source_size,
            self.params.chunk_size,
            self.entries.iter().map(|e| e.chunk_id()),
        );
        // The key slots as they are now (written when the capture began): a keyless verify
        // then finds one damaged later, signed capture or not.
        let mut key_slots = [[0u8; 32]; 2];
        for (d, file) in key_slots.iter_mut().zip([KEYS_FILE, KEYPASS_FILE]) {
            *d = medium::key_slot_digest(&mut self.store, &self.params.name, file)?
                .unwrap_or_default();
        }
        let m = Manifest {
            incompat: self.incompat | layout::INCOMPAT_KEY_SLOTS,
            capture_id: self.capture_id,
            generation: self.generation,
            parent: self.parent,
            name: self.params.name.clone(),
            chunk_size: self.params.chunk_size,
            disk_size: self.params.source_size,
            chunk_count: self.chunk_count,
            created_unix: self.params.created_unix,
            appliance_id: self.params.appliance_id,
            source_desc: self.params.source_desc.clone(),
            compress: self.params.compress,
            stored_chunks: self.stats.stored_chunks,
            zero_chunks: self.stats.zero_chunks,
            dedup_chunks: self.stats.dedup_chunks,
            stored_bytes: self.stats.stored_bytes,
            disk_digest,
            key_check: self.keys.key_check(),
            index_len: index.len() as u64,
            index_hash: *blake3::hash(&index).as_bytes(),
            segments: self.closed.clone(),
            peers,
            key_slots,
        };
        let mac = self.keys.manifest_mac(&m.signed_bytes());
        let bytes = m.encode(&mac);
        let decoded = Manifest::decode(&bytes)
            .map_err(|w| Error::Backend(format!("manifest self-check: {w}")))?;
        if decoded.manifest != m {
            return Err(Error::Backend(
                "manifest did not decode back to what was encoded".into(),
            ));
        }
        let manifest_path = self.path(MANIFEST_FILE);
        self.write_atomic(&manifest_path, &bytes)?;
        self.checkpointed = self.entries.len() as u64;
        self.write_journal(JournalState::Finished)?;
        let ipart = self.path(IPART_FILE);
        self.store.remove_file(&ipart).at(&ipart)?;
        Ok(CaptureSummary {
            name: self.params.name.clone(),
            generation: self.generation,
            parent: self.parent(),
            chunk_count: self.chunk_count,
            stored_chunks: self.stats.stored_chunks,
            zero_chunks: self.stats.zero_chunks,
            dedup_chunks: self.stats.dedup_chunks,
            stored_bytes: self.stats.stored_bytes,
            segments: self.closed.len() as u32,
            disk_digest,
            manifest_root: decoded.root,
            resumed_from: self.resume_from,
            resumed: self.resumed,
            recaptured_chunks: self.stats.recaptured_chunks,
            damaged_parent: core::mem::take(&mut self.damaged_parent),
        })
    }

    /// Gives the store back (e.g. after an error, to inspect or retry).
    pub fn into_store(self) -> S {
        self.store
    }

    /// The store written to, to read what `begin` wrote (the key slots of a
    /// new capture) before anything else is.
    pub fn store(&mut self) -> &mut S {
        &mut self.store
    }

    // ---------------------------------------------------------------- internals

    fn path(&self, file: &str) -> String {
        layout::generation_file(&self.params.name, self.generation, file)
    }

    fn at(&self) -> Location {
        Location::capture(&self.params.name).generation(self.generation)
    }

    fn ipart_aad(&self, h: &IpartHeader) -> Vec<u8> {
        let mut aad = h.aad();
        aad.extend_from_slice(&self.capture_id);
        aad.extend_from_slice(&self.generation.to_le_bytes());
        aad
    }

    fn write_atomic(&mut self, path: &str, bytes: &[u8]) -> Result<()> {
        let tmp = format!("{path}.TMP");
        self.store.remove_file(&tmp).at(&tmp)?;
        self.store.write_at(&tmp, 0, bytes).at(&tmp)?;
        self.store.sync(&tmp).at(&tmp)?;
        self.store.rename(&tmp, path).at(path)?;
        self.store.sync(path).at(path)
    }

    fn write_journal(&mut self, state: JournalState) -> Result<()> {
        self.seq += 1;
        let (open_records, open_len) = self.open.as_ref().map_or((0, 0), |s| (s.records, s.len));
        let j = Journal {
            seq: self.seq,
            state,
            capture_id: self.capture_id,
            generation: self.generation,
            parent: self.parent,
            chunk_size: self.params.chunk_size,
            source_size: self.params.source_size,
            params_hash: self.params_hash,
            key_check: self.keys.key_check(),
            next_chunk: self.checkpointed,
            ipart_len: self.ipart_len,
            closed_segments: self.closed.len() as u32,
            open_records,
            open_len,
        };
        // A torn write can only damage the slot being written; the other
        // one still holds the previous checkpoint.
        let slot = self.path(if self.seq % 2 == 1 {
            JOURNAL_A
        } else {
            JOURNAL_B
        });
        self.store.write_at(&slot, 0, &j.encode()).at(&slot)?;
        self.store.sync(&slot).at(&slot)
    }

    fn load_parent(&mut self, parent: &Manifest) -> Result<()> {
        if parent.chunk_size != self.params.chunk_size {
            return Err(Error::InvalidParams(format!(
                "a delta must use its parent's chunk size ({} bytes, generation {}), not {}: \
                 give --chunk-size {}KiB",
                parent.chunk_size,
                parent.generation,
                self.params.chunk_size,
                parent.chunk_size / 1024
            )));
        }
        let mut entries =
            reader::load_index(&mut self.store, &self.params.name, parent, &self.keys)?;
        let mut checked = std::collections::HashSet::new();
        // Each generation's segment list, read once: the parent's is at hand.
        let mut listed: HashMap<u32, Option<Vec<SegmentDigest>>> = HashMap::new();
        listed.insert(parent.generation, Some(parent.segments.clone()));
        for e in &mut entries {
            if let IndexEntry::Stored(l) = e {
                if l.stream >= layout::PEER_STREAM_BASE {
                    // Another machine's record: numbered in this generation's
                    // peer list, if that peer is still the one pinned.
                    let p = parent
                        .peers
                        .get(usize::from(l.stream - layout::PEER_STREAM_BASE))
                        .cloned();
                    l.stream = match p {
                        Some(p) => self
                            .peer_stream(&p.name, p.generation, Some(p.root))?
                            .unwrap_or(UNUSABLE),
                        None => UNUSABLE,
                    };
                }
                if l.stream != 0 {
                    // Another disk's record: usable if its segment is here.
                    let Some(holder) = self.holder(l.stream) else {
                        continue;
                    };
                    let path = layout::segment_path(&holder, l.generation, l.segment);
                    if self.store.len(&path).at(&path)?.is_none() {
                        self.unavailable_paths.insert(path);
                        self.lost_ids.insert(l.chunk_id);
                    } else {
                        self.dedup.entry(l.chunk_id).or_insert(*l);
                    }
                    continue;
                }
                if checked.insert((l.generation, l.segment)) {
                    let path = layout::segment_path(&self.params.name, l.generation, l.segment);
                    if self.store.len(&path).at(&path)?.is_none() {
                        self.unavailable.insert((l.generation, l.segment));
                    } else if let Some(why) =
                        self.segment_damage(&path, l.generation, l.segment, &mut listed)?
                    {
                        self.damaged_parent.push((path, why));
                        self.unavailable.insert((l.generation, l.segment));
                    }
                }
                if self.unavailable.contains(&(l.generation, l.segment)) {
                    self.lost_ids.insert(l.chunk_id);
                } else {
                    self.dedup.entry(l.chunk_id).or_insert(*l);
                }
            }
        }
        self.parent_entries = entries;
        self.parent = parent.generation;
        Ok(())
    }

    /// Why this capture's segment `segment` of generation `generation` (at `path`, on the
    /// medium) is damaged, judged by what a delta can afford to read (its length, its
    /// 96-byte header and 64-byte trailer against the generation's MANIFEST, as
    /// `verify::damaged_trailers`), or `None`. A segment cut short, zeroed, swapped with
    /// another or with a damaged header was reused by reference, the capture finished, and
    /// its newest generation could not be restored; its chunks are stored again instead. A
    /// byte changed inside a record is found only by reading it all (`verify`, the
    /// appliance's seal). `listed`: segment lists by generation, read once; a generation
    /// whose MANIFEST cannot be read is not judged here (the parent's own index led here).
    fn segment_damage(
        &mut self,
        path: &str,
        generation: u32,
        segment: u32,
        listed: &mut HashMap<u32, Option<Vec<SegmentDigest>>>,
    ) -> Result<Option<&'static str>> {
        let (store, name) = (&mut self.store, &self.params.name);
        let Some(segments) = listed.entry(generation).or_insert_with(|| {
            medium::read_manifest(store, name, generation)
                .ok()
                .flatten()
                .map(|f| f.manifest.segments)
        }) else {
            return Ok(None);
        };
        let Some(d) = segments.get(segment as usize).copied() else {
            return Ok(Some(
                "its generation's MANIFEST does not list it (a segment no record can be in)",
            ));
        };
        let Some(len) = self.store.len(path).at(path)? else {
            return Ok(None);
        };
        if len != d.len || len < (SEG_HEADER_LEN + TRAILER_LEN) as u64 {
            return Ok(Some(
                "its length is not the one its generation's MANIFEST records",
            ));
        }
        let mut h = [0u8; SEG_HEADER_LEN];
        self.store.read_exact_at(path, 0, &mut h).at(path)?;
        match SegmentHeader::decode(&h) {
            Err(w) => return Ok(Some(w)),
            Ok(h)
                if h.capture_id != self.capture_id
                    || h.generation != generation
                    || h.segment != segment =>
            {
                return Ok(Some(
                    "its header names another capture, generation or segment (a moved or \
                     swapped file)",
                ))
            }
            Ok(_) => {}
        }
        let mut t = [0u8; TRAILER_LEN];
        self.store
            .read_exact_at(path, len - TRAILER_LEN as u64, &mut t)
            .at(path)?;
        Ok(match SegmentTrailer::decode(&t) {
            Err(w) => Some(w),
            Ok(t) if t.data_end != len - TRAILER_LEN as u64 => {
                Some("its trailer does not end the file")
            }
            Ok(t) if t.hash != d.hash => {
                Some("its trailer's digest is not the one its generation's MANIFEST records")
            }
            Ok(_) => None,
        })
    }

    /// Segments of earlier generations this delta found damaged and did not reuse (what they
    /// held was stored again), each with why ([`Self::segment_damage`]).
    pub fn damaged_parent_segments(&self) -> &[(String, &'static str)] {
        &self.damaged_parent
    }

    /// Records of the other disks of the set in this generation, for dedup
    /// ([`CaptureParams::dedup_with`]). Own records stay preferred (they were
    /// inserted first).
    fn load_siblings(&mut self) -> Result<()> {
        for other in self.params.dedup_with.clone() {
            let Some(stream) = crate::set::stream_number(&other) else {
                return Err(Error::Usage(format!(
                    "{other} is not a disk stream of a machine set: only disks of one set share records"
                )));
            };
            let Some(f) = medium::read_manifest(&mut self.store, &other, self.generation)? else {
                continue;
            };
            if f.manifest.capture_id != self.capture_id
                || f.manifest.chunk_size != self.params.chunk_size
            {
                continue;
            }
            reader::check_manifest_mac(&other, &f, &self.keys)?;
            let entries = reader::load_index(&mut self.store, &other, &f.manifest, &self.keys)?;
            let mut checked = std::collections::HashSet::new();
            for e in entries {
                let IndexEntry::Stored(mut l) = e else {
                    continue;
                };
                if l.stream == 0 {
                    l.stream = stream;
                } else if l.stream >= layout::PEER_STREAM_BASE {
                    // That disk borrowed it from another machine: so may this one.
                    let Some(p) = f
                        .manifest
                        .peers
                        .get(usize::from(l.stream - layout::PEER_STREAM_BASE))
                        .cloned()
                    else {
                        continue;
                    };
                    match self.peer_stream(&p.name, p.generation, Some(p.root))? {
                        Some(s) => l.stream = s,
                        None => continue,
                    }
                }
                // Only records that are on the media (a span may lack a lost medium's).
                let Some(holder) = self.holder(l.stream) else {
                    continue;
                };
                self.offer_record(l, &holder, &mut checked)?;
            }
        }
        Ok(())
    }

    /// Offers a record another stream stored (`l`, renumbered for this
    /// capture's index; its segment in `holder`) to the dedup table, when
    /// its segment is on the media (a span may lack a lost medium's).
    /// `checked`: segments already looked for.
    fn offer_record(
        &mut self,
        l: RecordLoc,
        holder: &str,
        checked: &mut std::collections::HashSet<String>,
    ) -> Result<()> {
        let path = layout::segment_path(holder, l.generation, l.segment);
        if checked.insert(path.clone()) && self.store.len(&path).at(&path)?.is_none() {
            self.unavailable_paths.insert(path.clone());
        }
        if !self.unavailable_paths.contains(&path) {
            self.dedup.entry(l.chunk_id).or_insert(l);
        }
        Ok(())
    }

    /// The capture whose segment holds records of index stream `stream`:
    /// this one (0), a disk of its set (1..=64), or a peer of the table.
    fn holder(&self, stream: u16) -> Option<String> {
        if stream >= layout::PEER_STREAM_BASE {
            return self
                .peer_table
                .get(usize::from(stream - layout::PEER_STREAM_BASE))
                .map(|p| p.name.clone());
        }
        crate::set::record_stream(&self.params.name, stream)
    }

    /// The stream number of records in generation `generation` of capture
    /// `name` of another machine, adding it to the peer table; `None` when
    /// they cannot be used: `name` is of this machine (its records are
    /// reached as its own or its set's, and `medium rm` knows those
    /// dependencies), it is not finished here, it is not the generation
    /// `pinned` (a peer's peer that was replaced), it has another capture id,
    /// or the table is full.
    fn peer_stream(
        &mut self,
        name: &str,
        generation: u32,
        pinned: Option<[u8; 32]>,
    ) -> Result<Option<u16>> {
        let key = (String::from(name), generation);
        if let Some(s) = self.peer_slots.get(&key) {
            return Ok(*s);
        }
        let own = crate::peers::machine_of(&self.params.name);
        let slot = if crate::peers::machine_of(name).eq_ignore_ascii_case(own)
            || self.peer_table.len() >= layout::MAX_PEERS
        {
            None
        } else {
            match medium::read_manifest(&mut self.store, name, generation) {
                Ok(Some(f))
                    if f.manifest.capture_id == self.capture_id
                        && pinned.is_none_or(|r| r == f.root) =>
                {
                    self.peer_table.push(Peer {
                        name: name.into(),
                        generation,
                        root: f.root,
                    });
                    Some(layout::PEER_STREAM_BASE + (self.peer_table.len() - 1) as u16)
                }
                Ok(_) | Err(Error::Corrupt { .. }) => None,
                Err(e) => return Err(e),
            }
        };
        self.peer_slots.insert(key, slot);
        Ok(slot)
    }

    /// Records of other machines' captures ([`CaptureParams::peers`]), for
    /// dedup across machines. Own and set records stay preferred (they were
    /// inserted first). Records those captures borrowed from a third machine
    /// are usable too, pinned as that machine's.
    fn load_peers(&mut self) -> Result<()> {
        for (name, g) in self.params.peers.clone() {
            let own = crate::peers::machine_of(&self.params.name);
            if crate::peers::machine_of(&name).eq_ignore_ascii_case(own) {
                return Err(Error::InvalidParams(format!(
                    "{name} is of the same machine as {}: dedup across machines is with another machine",
                    self.params.name
                )));
            }
            let Some(f) = medium::read_manifest(&mut self.store, &name, g)? else {
                return Err(Error::NoGeneration {
                    name: name.clone(),
                    why: format!(
                        "generation {g} is not finished on this medium, so {} cannot borrow its records",
                        self.params.name
                    ),
                });
            };
            if f.manifest.capture_id != self.capture_id {
                return Err(Error::InvalidParams(format!(
                    "{name} has another capture id and data key than {}: machines share records \
                     only when the second was captured under the first one's key from its first \
                     generation (capture it under a new name with --dedup-across-machines)",
                    self.params.name
                )));
            }
            if f.manifest.chunk_size != self.params.chunk_size {
                return Err(Error::InvalidParams(format!(
                    "{name} was captured with chunks of {} bytes, this capture uses {}: identical \
                     content is found only at the same chunk size (give --chunk-size {})",
                    f.manifest.chunk_size, self.params.chunk_size, f.manifest.chunk_size
                )));
            }
            reader::check_manifest_mac(&name, &f, &self.keys)?;
            let entries = reader::load_index(&mut self.store, &name, &f.manifest, &self.keys)?;
            let mut checked = std::collections::HashSet::new();
            for e in entries {
                let IndexEntry::Stored(mut l) = e else {
                    continue;
                };
                let (holder, generation, pinned) = if l.stream >= layout::PEER_STREAM_BASE {
                    let Some(p) = f
                        .manifest
                        .peers
                        .get(usize::from(l.stream - layout::PEER_STREAM_BASE))
                    else {
                        continue;
                    };
                    (p.name.clone(), p.generation, Some(p.root))
                } else {
                    let Some(h) = crate::set::record_stream(&name, l.stream) else {
                        continue;
                    };
                    let pinned = (l.stream == 0 && l.generation == g).then_some(f.root);
                    (h, l.generation, pinned)
                };
                let Some(s) = self.peer_stream(&holder, generation, pinned)? else {
                    continue;
                };
                l.stream = s;
                self.offer_record(l, &holder, &mut checked)?;
            }
        }
        Ok(())
    }

    /// The peers the index uses, in order of first use, with every entry
    /// renumbered to its place in that list: the MANIFEST pins only what
    /// the generation really borrows, so `medium rm` of a machine it shares
    /// nothing with is not refused.
    fn used_peers(&mut self) -> Result<Vec<Peer>> {
        let mut renumber: Vec<Option<u16>> = alloc::vec![None; self.peer_table.len()];
        let mut used = Vec::new();
        for e in &mut self.entries {
            let IndexEntry::Stored(l) = e else {
                continue;
            };
            if l.stream < layout::PEER_STREAM_BASE {
                continue;
            }
            let i = usize::from(l.stream - layout::PEER_STREAM_BASE);
            let Some(slot) = renumber.get_mut(i) else {
                return Err(Error::Backend(format!(
                    "index entry names peer {i}, but only {} are known",
                    self.peer_table.len()
                )));
            };
            let n = match *slot {
                Some(n) => n,
                None => {
                    let n = layout::PEER_STREAM_BASE + used.len() as u16;
                    used.push(self.peer_table[i].clone());
                    *slot = Some(n);
                    n
                }
            };
            l.stream = n;
        }
        Ok(used)
    }

    fn start(&mut self, generation: u32, last_done: Option<&ManifestFile>) -> Result<()> {
        self.generation = generation;
        if self.params.delta {
            let Some(p) = last_done else {
                return Err(Error::NoGeneration {
                    name: self.params.name.clone(),
                    why: "a delta needs a finished earlier generation; run a full capture first"
                        .into(),
                });
            };
            reader::check_manifest_mac(&self.params.name, p, &self.keys)?;
            self.load_parent(&p.manifest)?;
        }
        self.load_siblings()?;
        self.load_peers()?;
        let dir = layout::generation_dir(&self.params.name, generation);
        self.store.create_dir_all(&dir).at(&dir)?;
        self.write_journal(JournalState::InProgress)
    }

    fn wipe_generation(&mut self, generation: u32) -> Result<()> {
        let dir = layout::generation_dir(&self.params.name, generation);
        for e in medium::list_or_empty(&mut self.store, &dir)? {
            let p = format!("{dir}/{}", e.name);
            self.store.remove_file(&p).at(&p)?;
        }
        Ok(())
    }

    fn resume(&mut self, generation: u32, j: Journal) -> Result<()> {
        self.generation = generation;
        self.seq = j.seq;
        if j.parent != 0 {
            let Some(f) = medium::read_manifest(&mut self.store, &self.params.name, j.parent)?
            else {
                return Err(corrupt(
                    self.at(),
                    format!("delta parent generation {} has no manifest", j.parent),
                ));
            };
            reader::check_manifest_mac(&self.params.name, &f, &self.keys)?;
            self.load_parent(&f.manifest)?;
        }
        // Index entries of every durable chunk.
        let ipart = self.path(IPART_FILE);
        let real = self.store.len(&ipart).at(&ipart)?.unwrap_or(0);
        if real < j.ipart_len {
            return Err(corrupt(
                self.at().file(&ipart),
                format!(
                    "index part is {real} bytes, shorter than its checkpoint ({})",
                    j.ipart_len
                ),
            ));
        }
        let mut off = 0u64;
        while off < j.ipart_len {
            let at = self.at().file(&ipart).bytes(off..j.ipart_len);
            let mut hb = [0u8; IPART_HEADER_LEN];
            self.store.read_exact_at(&ipart, off, &mut hb).at(&ipart)?;
            let h = IpartHeader::decode(&hb).map_err(|w| corrupt(at.clone(), w))?;
            let ct_len = h.ciphertext_len();
            if h.first_chunk != self.entries.len() as u64
                || off + IPART_HEADER_LEN as u64 + ct_len > j.ipart_len
            {
                return Err(corrupt(at, "index part batches are out of sequence"));
            }
            let mut ct = vec![0u8; ct_len as usize];
            self.store
                .read_exact_at(&ipart, off + IPART_HEADER_LEN as u64, &mut ct)
                .at(&ipart)?;
            let plain =
                encode::open_blob(&self.keys.index_cipher(&h.salt), &self.ipart_aad(&h), &ct)
                    .ok_or_else(|| corrupt(at.clone(), "index part fails authentication"))?;
            for e in plain.chunks_exact(ENTRY_LEN) {
                let e = IndexEntry::decode(e).map_err(|w| corrupt(at.clone(), w))?;
                self.entries.push(e);
            }
            off += IPART_HEADER_LEN as u64 + ct_len;
        }
        if self.entries.len() as u64 != j.next_chunk {
            return Err(corrupt(
                self.at().file(&ipart),
                "index parts do not cover the journal's checkpoint",
            ));
        }
        self.store.set_len(&ipart, j.ipart_len).at(&ipart)?;
        self.ipart_len = j.ipart_len;
        // A generation started by an older writer keeps the segment digest
        // its first segment was written with (the feature bits of every
        // file of a generation are the same).
        if j.closed_segments > 0 || j.open_len > 0 {
            let path = layout::segment_path(&self.params.name, generation, 0);
            let mut hb = [0u8; SEG_HEADER_LEN];
            self.store.read_exact_at(&path, 0, &mut hb).at(&path)?;
            let h = SegmentHeader::decode(&hb).map_err(|w| corrupt(self.at().file(&path), w))?;
            self.incompat = h.incompat;
        }
        // Closed segments keep their trailers.
        let mut buf = vec![0u8; 256 * 1024];
        for s in 0..j.closed_segments {
            let path = layout::segment_path(&self.params.name, generation, s);
            let mut at = self.at().file(&path);
            at.segment = Some(s);
            let len = self
                .store
                .len(&path)
                .at(&path)?
                .ok_or_else(|| corrupt(at.clone(), "closed segment is missing"))?;
            if len < (SEG_HEADER_LEN + TRAILER_LEN) as u64 {
                return Err(corrupt(at, "closed segment is truncated"));
            }
            let mut tb = [0u8; TRAILER_LEN];
            self.store
                .read_exact_at(&path, len - TRAILER_LEN as u64, &mut tb)
                .at(&path)?;
            let t = SegmentTrailer::decode(&tb).map_err(|w| corrupt(at.clone(), w))?;
            if t.data_end != len - TRAILER_LEN as u64 {
                return Err(corrupt(
                    at,
                    "closed segment's trailer does not match its length",
                ));
            }
            self.closed.push(SegmentDigest { len, hash: t.hash });
        }
        // The segment open at the checkpoint: cut the uncommitted tail and
        // close it. New records go to a new segment with a new salt.
        if j.open_len > 0 {
            let s = j.closed_segments;
            let path = layout::segment_path(&self.params.name, generation, s);
            let mut at = self.at().file(&path);
            at.segment = Some(s);
            let len = self.store.len(&path).at(&path)?.unwrap_or(0);
            if len < j.open_len || j.open_len < SEG_HEADER_LEN as u64 {
                return Err(corrupt(
                    at,
                    format!(
                        "segment is {len} bytes, shorter than its checkpoint ({})",
                        j.open_len
                    ),
                ));
            }
            self.store.set_len(&path, j.open_len).at(&path)?;
            self.authenticate_open_segment(&path, s, j.open_len, j.open_records, &at)?;
            let hash = if layout::header_digest(self.incompat) {
                self.header_digest(&path, j.open_len, j.open_records, &at)?
            } else {
                let mut h = blake3::Hasher::new();
                medium::stream(&mut self.store, &path, 0, j.open_len, &mut buf, |b| {
                    h.update(b);
                })?;
                *h.finalize().as_bytes()
            };
            let t = SegmentTrailer {
                records: j.open_records,
                data_end: j.open_len,
                hash,
            };
            self.store
                .write_at(&path, j.open_len, &t.encode())
                .at(&path)?;
            self.store.sync(&path).at(&path)?;
            self.closed.push(SegmentDigest {
                len: j.open_len + TRAILER_LEN as u64,
                hash,
            });
        }
        // Segments written after the checkpoint are not referenced: remove.
        let dir = layout::generation_dir(&self.params.name, generation);
        for e in medium::list_or_empty(&mut self.store, &dir)? {
            if layout::parse_segment_name(&e.name).is_some_and(|s| s as usize >= self.closed.len())
            {
                let p = format!("{dir}/{}", e.name);
                self.store.remove_file(&p).at(&p)?;
            }
        }
        // Rebuild dedup and statistics from the durable entries.
        let mut own = std::collections::HashSet::new();
        for e in &self.entries {
            match e {
                IndexEntry::Zero { .. } => self.stats.zero_chunks += 1,
                IndexEntry::Stored(l) => {
                    if l.stream == 0
                        && l.generation == generation
                        && own.insert((l.segment, l.record))
                    {
                        self.stats.stored_chunks += 1;
                        self.stats.stored_bytes += (REC_HEADER_LEN + l.stored_len as usize) as u64;
                    } else {
                        self.stats.dedup_chunks += 1;
                    }
                    self.dedup.entry(l.chunk_id).or_insert(*l);
                }
            }
        }
        self.checkpointed = self.entries.len() as u64;
        self.resume_from = self.checkpointed;
        self.resumed = true;
        self.load_siblings()?;
        self.load_peers()?;
        self.write_journal(JournalState::InProgress)
    }

    /// The headers-only digest of the first `len` bytes of segment `path`,
    /// which must hold exactly `records` records: what closing it then
    /// would have computed.
    /// Open every record of the segment left open at the checkpoint under
    /// the data key, as a reader will (stored hash, AEAD, keyed chunk id of
    /// the chunk its index entry names), before its trailer is written and
    /// the generation goes on to be signed: records changed on the medium
    /// between the stop and this resume (a header's hash and CRC fixed to
    /// match) would otherwise be closed, signed and found bad only at the
    /// target. The cost is one segment's reading and decryption.
    fn authenticate_open_segment(
        &mut self,
        path: &str,
        segment: u32,
        len: u64,
        records: u32,
        at: &Location,
    ) -> Result<()> {
        let mut hb = [0u8; SEG_HEADER_LEN];
        self.store.read_exact_at(path, 0, &mut hb).at(path)?;
        let h = SegmentHeader::decode(&hb).map_err(|w| corrupt(at.clone(), w))?;
        let mut chunk_of: HashMap<u32, ([u8; 32], u32)> = HashMap::new();
        for e in &self.entries {
            if let IndexEntry::Stored(l) = e {
                if l.stream == 0 && l.generation == self.generation && l.segment == segment {
                    chunk_of
                        .entry(l.record)
                        .or_insert((l.chunk_id, l.plain_len));
                }
            }
        }
        let mut opener = crate::record::RecordOpener::new(
            &self.key,
            self.capture_id,
            crate::record::StreamPlace {
                generation: self.generation,
                segment,
                salt: h.salt,
            },
            &self.params.name,
        );
        let altered = |r: u32, why: String| {
            let mut at = at.clone();
            at.record = Some(r);
            corrupt(
                at,
                format!(
                    "record {r}, written before the capture stopped, does not open under its \
                     key any more ({why}): the medium was changed since. The resume does not \
                     close or sign it; remove the unfinished generation (`mgear capture \
                     --abort`) and capture again"
                ),
            )
        };
        let mut off = SEG_HEADER_LEN as u64;
        let mut buf = Vec::new();
        for r in 0..records {
            let mut rh = [0u8; REC_HEADER_LEN];
            if off + REC_HEADER_LEN as u64 > len {
                return Err(corrupt(
                    at.clone(),
                    "checkpointed records run past the segment's checkpointed length",
                ));
            }
            self.store.read_exact_at(path, off, &mut rh).at(path)?;
            let stored = RecordHeader::decode(&rh)
                .map_err(|w| corrupt(at.clone(), w))?
                .stored_len as u64;
            let end = off + REC_HEADER_LEN as u64 + stored;
            if end > len {
                return Err(corrupt(
                    at.clone(),
                    "checkpointed records run past the segment's checkpointed length",
                ));
            }
            let Some(&(chunk_id, plain_len)) = chunk_of.get(&r) else {
                return Err(altered(
                    r,
                    "no index entry of the checkpoint names it".into(),
                ));
            };
            buf.resize((end - off) as usize, 0);
            self.store.read_exact_at(path, off, &mut buf).at(path)?;
            opener
                .open(&chunk_id, plain_len, &buf)
                .map_err(|e| altered(r, e.to_string()))?;
            off = end;
        }
        Ok(())
    }

    fn header_digest(
        &mut self,
        path: &str,
        len: u64,
        records: u32,
        at: &Location,
    ) -> Result<[u8; 32]> {
        let mut h = layout::segment_hasher(self.incompat);
        let mut hb = [0u8; SEG_HEADER_LEN];
        self.store.read_exact_at(path, 0, &mut hb).at(path)?;
        h.update(&hb);
        let mut off = SEG_HEADER_LEN as u64;
        for _ in 0..records {
            let mut rh = [0u8; REC_HEADER_LEN];
            if off + REC_HEADER_LEN as u64 > len {
                return Err(corrupt(
                    at.clone(),
                    "checkpointed records run past the segment's checkpointed length",
                ));
            }
            self.store.read_exact_at(path, off, &mut rh).at(path)?;
            let r = RecordHeader::decode(&rh).map_err(|w| corrupt(at.clone(), w))?;
            h.update(&rh);
            off += (REC_HEADER_LEN + r.stored_len as usize) as u64;
        }
        if off != len {
            return Err(corrupt(
                at.clone(),
                format!(
                    "{records} checkpointed records end at byte {off}, the checkpoint says {len}"
                ),
            ));
        }
        Ok(*h.finalize().as_bytes())
    }

    fn open_segment(&mut self) -> Result<()> {
        let no = self.closed.len() as u32;
        if no >= layout::MAX_SEGMENTS {
            return Err(Error::Limit(format!(
                "generation has reached {} segments",
                layout::MAX_SEGMENTS
            )));
        }
        let salt = keys::random::<32>()?;
        let header = SegmentHeader {
            incompat: self.incompat,
            capture_id: self.capture_id,
            generation: self.generation,
            segment: no,
            salt,
        }
        .encode();
        let path = layout::segment_path(&self.params.name, self.generation, no);
        self.store.remove_file(&path).at(&path)?;
        self.store.write_at(&path, 0, &header).at(&path)?;
        let mut hasher = layout::segment_hasher(self.incompat);
        hasher.update(&header);
        let limit = match self.store.room(&path).at(&path)? {
            Some(room) => (SEG_HEADER_LEN as u64)
                .saturating_add(room)
                .min(self.params.max_segment_bytes),
            None => self.params.max_segment_bytes,
        };
        self.open = Some(OpenSegment {
            limit,
            no,
            cipher: std::sync::Arc::new(self.keys.segment_cipher(&salt, self.generation, no)),
            path,
            len: SEG_HEADER_LEN as u64,
            records: 0,
            hasher,
        });
        Ok(())
    }

    fn close_segment(&mut self) -> Result<()> {
        let Some(seg) = self.open.take() else {
            return Ok(());
        };
        let hash = *seg.hasher.finalize().as_bytes();
        let t = SegmentTrailer {
            records: seg.records,
            data_end: seg.len,
            hash,
        };
        self.store
            .write_at(&seg.path, seg.len, &t.encode())
            .at(&seg.path)?;
        self.store.sync(&seg.path).at(&seg.path)?;
        self.closed.push(SegmentDigest {
            len: seg.len + TRAILER_LEN as u64,
            hash,
        });
        Ok(())
    }
}

/// Stream number of a parent entry whose peer is no longer the one pinned:
/// no holder, so it is neither copied nor deduplicated against.
const UNUSABLE: u16 = u16::MAX;

fn has_file<S: Store + ?Sized>(store: &mut S, name: &str, file: &str) -> Result<bool> {
    let p = format!("{}/{file}", layout::capture_dir(name));
    Ok(store.len(&p).at(&p)?.is_some())
}

fn check_params(p: &CaptureParams) -> Result<()> {
    if !layout::valid_chunk_size(p.chunk_size) {
        return Err(Error::InvalidParams(format!(
            "chunk size {} is not a power of two from 64 KiB to 16 MiB",
            p.chunk_size
        )));
    }
    if p.source_size == 0 {
        return Err(Error::InvalidParams("the source is empty (0 bytes)".into()));
    }
    if p.source_desc.len() > layout::MAX_DESC {
        return Err(Error::InvalidParams(format!(
            "source description is longer than {} bytes",
            layout::MAX_DESC
        )));
    }
    let min_seg =
        (SEG_HEADER_LEN + REC_HEADER_LEN + TAG_LEN + TRAILER_LEN) as u64 + u64::from(p.chunk_size);
    if p.max_segment_bytes < min_seg || p.max_segment_bytes > layout::MAX_SEGMENT {
        return Err(Error::InvalidParams(format!(
            "segment size {} must be from {min_seg} (one chunk) to {} bytes (1 GiB, for FAT32)",
            p.max_segment_bytes,
            layout::MAX_SEGMENT
        )));
    }
    if p.compress && !cfg!(feature = "zstd") {
        return Err(Error::InvalidParams(
            "compression requested but this build has no zstd feature".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use crate::{CaptureReader, ChunkData, Unlock};

    fn read_back(store: &mut MemStore, key: DataKey) -> Vec<u8> {
        let mut r = CaptureReader::open(store, "w", None, &Unlock::Key(key)).unwrap();
        let mut back = Vec::new();
        for i in 0..r.chunk_count() {
            match r.read_chunk(i).unwrap() {
                ChunkData::Data(d) => back.extend_from_slice(&d),
                ChunkData::Zero { .. } => panic!("chunk {i} read as zeros"),
            }
        }
        back
    }

    fn params(cs: u32, len: usize) -> CaptureParams {
        let mut p = CaptureParams::new("w", len as u64);
        p.chunk_size = cs;
        p.recipients = vec![age::x25519::Identity::generate().to_public()];
        p.created_unix = 1_790_000_000;
        p
    }

    /// A delta reused its parent's records by reference without looking at their segment:
    /// one cut short, grown, zeroed, swapped with another generation's or with a damaged
    /// header or trailer was reused, the delta finished, and its newest generation could not
    /// be restored. Such a segment (judged by its length, header and trailer) is not reused:
    /// what it held is stored again, said in the summary, and the delta reads back whole.
    #[test]
    fn a_delta_stores_again_what_a_damaged_parent_segment_held() {
        use crate::store::Store as _;
        let cs = 64 * 1024u32;
        let data: Vec<u8> = (0..4 * cs)
            .map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8)
            .collect();
        let key = DataKey::generate().unwrap();
        let capture = |store: &mut MemStore, delta: bool| {
            let mut p = params(cs, data.len());
            p.delta = delta;
            let mut w = CaptureWriter::begin(&mut *store, p, Some(key.clone())).unwrap();
            let enc = w.encoder();
            for i in 0..w.chunk_count() {
                let r = (i * u64::from(cs)) as usize..((i + 1) * u64::from(cs)) as usize;
                w.append(enc.encode(i, &data[r]).unwrap()).unwrap();
            }
            w.finish().unwrap()
        };
        let mut first = MemStore::new();
        capture(&mut first, false);
        let seg = layout::segment_path("w", 1, 0);
        let len = first.len(&seg).unwrap().unwrap();
        // Undamaged: everything reused.
        let mut whole = first.clone();
        let s = capture(&mut whole, true);
        assert_eq!((s.stored_chunks, s.dedup_chunks), (0, 4));
        assert!(s.damaged_parent.is_empty());
        type Damage = fn(&mut MemStore, &str, u64);
        let damages: [(&str, Damage, &str); 5] = [
            (
                "cut by a byte",
                |m, p, l| m.set_len(p, l - 1).unwrap(),
                "its length",
            ),
            (
                "grown",
                |m, p, l| m.set_len(p, l + 4096).unwrap(),
                "its length",
            ),
            (
                "zeroed",
                |m, p, l| m.write_at(p, 0, &vec![0; l as usize]).unwrap(),
                "bad magic",
            ),
            (
                "header damaged",
                |m, p, _| m.write_at(p, 20, &[0xff]).unwrap(),
                "header CRC",
            ),
            (
                "trailer damaged",
                |m, p, l| m.write_at(p, l - 40, &[0xff]).unwrap(),
                "trailer",
            ),
        ];
        for (what, damage, why) in damages {
            let mut m = first.clone();
            damage(&mut m, &seg, len);
            let s = capture(&mut m, true);
            assert_eq!(s.stored_chunks, 4, "{what}: stored again");
            assert_eq!(s.dedup_chunks, 0, "{what}");
            assert_eq!(s.damaged_parent.len(), 1, "{what}");
            assert_eq!(s.damaged_parent[0].0, seg, "{what}");
            assert!(
                s.damaged_parent[0].1.contains(why),
                "{what}: {:?}",
                s.damaged_parent
            );
            assert!(read_back(&mut m, key.clone()) == data, "{what}: reads back");
        }
    }

    /// The checkpoint run beside the sealing of the next batch covers what
    /// was appended before it, not the batch: after a power cut the capture
    /// resumes at the batch, and the finished capture reads back.
    #[test]
    fn checkpoint_then_append_covers_what_came_before() {
        let cs = 64 * 1024u32;
        let data: Vec<u8> = (0..6 * cs)
            .map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8)
            .collect();
        let chunk = |enc: &crate::ChunkEncoder, i: u64| {
            let r = (i * u64::from(cs)) as usize..((i + 1) * u64::from(cs)) as usize;
            enc.encode(i, &data[r]).unwrap()
        };
        let key = DataKey::generate().unwrap();
        let p = params(cs, data.len());
        let mut first = MemStore::new();
        let mut w = CaptureWriter::begin(&mut first, p, Some(key.clone())).unwrap();
        let enc = w.encoder();
        w.append_batch(vec![chunk(&enc, 0), chunk(&enc, 1)], 2)
            .unwrap();
        let before = w.presealed_records();
        let done = w
            .checkpoint_then_append(vec![chunk(&enc, 2), chunk(&enc, 3)], 2)
            .unwrap();
        assert_eq!(done.len(), 2);
        assert_eq!(
            w.presealed_records(),
            before + 2,
            "the batch is sealed beside the checkpoint"
        );
        drop(w);
        let mut after = first.after_power_loss();
        let p = params(cs, data.len());
        let mut w = CaptureWriter::begin(&mut after, p, Some(key.clone())).unwrap();
        assert_eq!(w.resume_from(), 2);
        let enc = w.encoder();
        w.checkpoint_then_append((2..6).map(|i| chunk(&enc, i)).collect(), 2)
            .unwrap();
        w.finish().unwrap();
        assert!(read_back(&mut after, key) == data);
    }

    /// A run cut off before its first checkpoint: the next one continues the unfinished
    /// generation from chunk 0, and its summary says it resumed (it read like a fresh capture,
    /// after the cut-off run's error had said the next one resumes).
    #[test]
    fn a_resume_from_no_checkpoint_is_said_to_be_one() {
        let cs = 64 * 1024u32;
        let data: Vec<u8> = (0..3 * cs).map(|i| (i % 251) as u8).collect();
        let chunk = |enc: &crate::ChunkEncoder, i: u64| {
            let r = (i * u64::from(cs)) as usize..((i + 1) * u64::from(cs)) as usize;
            enc.encode(i, &data[r]).unwrap()
        };
        let key = DataKey::generate().unwrap();
        let mut first = MemStore::new();
        let mut w =
            CaptureWriter::begin(&mut first, params(cs, data.len()), Some(key.clone())).unwrap();
        let enc = w.encoder();
        w.append(chunk(&enc, 0)).unwrap();
        drop(w);
        let mut after = first.after_power_loss();
        let mut w =
            CaptureWriter::begin(&mut after, params(cs, data.len()), Some(key.clone())).unwrap();
        assert_eq!(w.resume_from(), 0);
        let enc = w.encoder();
        for i in 0..3 {
            w.append(chunk(&enc, i)).unwrap();
        }
        let s = w.finish().unwrap();
        assert!(s.resumed && s.resumed_from == 0, "{s:?}");
        assert!(read_back(&mut after, key.clone()) == data);
        // A capture that continued nothing says so too.
        let mut fresh = MemStore::new();
        let mut w = CaptureWriter::begin(&mut fresh, params(cs, data.len()), Some(key)).unwrap();
        let enc = w.encoder();
        for i in 0..3 {
            w.append(chunk(&enc, i)).unwrap();
        }
        assert!(!w.finish().unwrap().resumed);
    }

    /// A record of the segment open at the checkpoint, changed on the medium
    /// between a stop and the resume with its header's hash and CRC made to
    /// match (what a keyless check sees as whole): the resume opens it under
    /// the key and refuses, instead of closing the segment and going on to
    /// sign it.
    #[test]
    fn a_record_changed_before_the_resume_is_refused_not_closed() {
        use crate::store::Store as _;
        let cs = 64 * 1024u32;
        let data: Vec<u8> = (0..4 * cs)
            .map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8)
            .collect();
        let chunk = |enc: &crate::ChunkEncoder, i: u64| {
            let r = (i * u64::from(cs)) as usize..((i + 1) * u64::from(cs)) as usize;
            enc.encode(i, &data[r]).unwrap()
        };
        let key = DataKey::generate().unwrap();
        let mut first = MemStore::new();
        let mut w =
            CaptureWriter::begin(&mut first, params(cs, data.len()), Some(key.clone())).unwrap();
        let enc = w.encoder();
        w.append_batch(vec![chunk(&enc, 0), chunk(&enc, 1)], 2)
            .unwrap();
        w.checkpoint_then_append(vec![chunk(&enc, 2)], 1).unwrap();
        drop(w);
        let untouched = first.after_power_loss();
        let mut after = first.after_power_loss();
        // Record 1 of segment 0: one stored byte changed, its header made to match.
        let seg = layout::segment_path("w", 1, 0);
        let mut h0 = [0u8; REC_HEADER_LEN];
        after
            .read_exact_at(&seg, SEG_HEADER_LEN as u64, &mut h0)
            .unwrap();
        let at = (SEG_HEADER_LEN + REC_HEADER_LEN) as u64
            + u64::from(RecordHeader::decode(&h0).unwrap().stored_len);
        let mut hb = [0u8; REC_HEADER_LEN];
        after.read_exact_at(&seg, at, &mut hb).unwrap();
        let mut h = RecordHeader::decode(&hb).unwrap();
        let mut stored = vec![0u8; h.stored_len as usize];
        after
            .read_exact_at(&seg, at + REC_HEADER_LEN as u64, &mut stored)
            .unwrap();
        stored[7] ^= 0x40;
        h.stored_hash = *blake3::hash(&stored).as_bytes();
        after.write_at(&seg, at, &h.encode()).unwrap();
        after
            .write_at(&seg, at + REC_HEADER_LEN as u64, &stored)
            .unwrap();
        let e = CaptureWriter::begin(&mut after, params(cs, data.len()), Some(key.clone()))
            .expect_err("refused");
        assert!(
            matches!(e, Error::Corrupt { .. })
                && e.to_string().contains("record 1, written before"),
            "{e}"
        );
        // The same resume of the medium as it was goes on.
        let mut ok = untouched;
        let w = CaptureWriter::begin(&mut ok, params(cs, data.len()), Some(key)).unwrap();
        assert_eq!(w.resume_from(), 2);
    }

    /// Planning and appending agree on every position; when they do not,
    /// a record sealed in its chunk's buffer for the wrong place is opened
    /// back and sealed again where it goes, and the capture reads back.
    #[test]
    fn a_record_sealed_for_another_place_is_sealed_again() {
        let cs = 64 * 1024u32;
        let data: Vec<u8> = (0..3 * cs)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let p = params(cs, data.len());
        let key = DataKey::generate().unwrap();
        let mut store = MemStore::new();
        let mut w = CaptureWriter::begin(&mut store, p, Some(key.clone())).unwrap();
        let enc = w.encoder();
        let chunk = |i: u64| {
            let r = (i * u64::from(cs)) as usize..((i + 1) * u64::from(cs)) as usize;
            enc.encode(i, &data[r]).unwrap()
        };
        w.append(chunk(0)).unwrap();
        let mut planned = w.plan(&mut vec![chunk(1)].into_iter().peekable());
        let Some(pos) = planned[0].1.as_mut() else {
            panic!("chunk 1 was not planned as a record")
        };
        pos.record += 5;
        pos.offset += 100;
        let sealed = w.seal_planned(&mut planned, 2).unwrap();
        let (c1, _) = planned.pop().unwrap();
        assert!(
            matches!(&c1.body, Body::Data { bytes, .. } if bytes.is_empty()),
            "the payload moves into the sealed record"
        );
        let pre = sealed.into_iter().next().flatten().unwrap().unwrap();
        w.append_one(c1, Some(pre)).unwrap();
        assert_eq!(w.presealed_records(), 0);
        w.append_batch(vec![chunk(2)], 2).unwrap();
        assert_eq!(w.presealed_records(), 1);
        w.finish().unwrap();
        assert!(read_back(&mut store, key) == data);
    }

    /// A chunk whose plaintext starts inside its buffer (a source read with `O_DIRECT`
    /// at the buffer's first aligned byte) is sealed and written from there on every
    /// path: sealed in line, sealed ahead, sealed ahead for another position and opened
    /// again, sealed beside a checkpoint; what is read back is the disk, not the bytes
    /// before the chunk.
    #[test]
    fn a_chunk_that_starts_inside_its_buffer_is_stored_from_there() {
        let cs = 65536u32;
        let data = crate::bench::noise(5 * cs as usize, 7);
        let key = DataKey::generate().unwrap();
        let mut store = MemStore::new();
        let mut w =
            CaptureWriter::begin(&mut store, params(cs, data.len()), Some(key.clone())).unwrap();
        let enc = w.encoder();
        let chunk = |i: u64| {
            let from = [0usize, 100, 4000, 1, 4095][i as usize];
            let r = (i * u64::from(cs)) as usize..((i + 1) * u64::from(cs)) as usize;
            let mut buf = vec![0xeeu8; from];
            buf.extend_from_slice(&data[r]);
            let (c, back) = enc.encode_owned_from(i, buf, from).unwrap();
            assert!(
                back.is_none(),
                "chunk {i} was compressed: the test wants it stored as is"
            );
            assert_eq!(c.payload_len(), cs as usize);
            c
        };
        w.append(chunk(0)).unwrap();
        w.append(chunk(1)).unwrap();
        let mut planned = w.plan(&mut vec![chunk(2)].into_iter().peekable());
        let Some(pos) = planned[0].1.as_mut() else {
            panic!("chunk 2 was not planned as a record")
        };
        pos.record += 5;
        let sealed = w.seal_planned(&mut planned, 2).unwrap();
        let (c2, _) = planned.pop().unwrap();
        let pre = sealed.into_iter().next().flatten().unwrap().unwrap();
        w.append_one(c2, Some(pre)).unwrap();
        w.append_batch(vec![chunk(3)], 2).unwrap();
        w.checkpoint_then_append(vec![chunk(4)], 2).unwrap();
        assert_eq!(w.presealed_records(), 2);
        w.finish().unwrap();
        assert!(read_back(&mut store, key) == data);
        // The same chunk encoded from its own buffer has the same id.
        let same = enc.encode(1, &data[cs as usize..2 * cs as usize]).unwrap();
        assert_eq!(same.chunk_id, chunk(1).chunk_id);
        let e = enc.encode_owned_from(0, vec![0u8; 10], 11).unwrap_err();
        assert!(
            e.to_string()
                .contains("starts at byte 11 of a buffer of 10"),
            "{e}"
        );
    }
}
