//! The keyed reader: opens a generation with a key slot (identity or
//! passphrase) or the data key, checks the manifest MAC, decrypts the
//! INDEX, and reads chunks with every check applied (record framing and
//! hash, position, AEAD with the full AAD, decompression, keyed chunk id).
//! Also `verify_full`, which decrypts everything.
//!
//! A record is read into a buffer, decrypted in place (the plaintext moved
//! to the buffer's front in the same pass) and handed out as the chunk's
//! plaintext: one buffer per record from the medium to whoever writes it.
//! Those buffers come from [`RecordBuffers`], where the caller gives them back
//! once it is done with a chunk, so a long read does not pay for a fresh
//! zeroed allocation per record (a memset of every byte; 7 % of an ingest's
//! CPU before).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::chunkbuf::{ChunkBuf, CHUNK_ALIGN};
use crate::encode::{self, Cipher, RecordAad};
use crate::error::{Error, Location, Result, StoreCtx};
use crate::keys::{self, DataKey, Subkeys, Unlock};
use crate::layout::{
    self, IndexEntry, IndexHeader, Manifest, ManifestFile, RecordHeader, RecordLoc, SegmentHeader,
    ENTRY_LEN, FLAG_ZSTD, INDEX_FILE, INDEX_HEADER_LEN, REC_HEADER_LEN, SEG_HEADER_LEN,
};
use crate::medium;
use crate::store::{Located, Store};
use crate::verify::{self, VerifyObserver, VerifyReport};

/// One chunk of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkData {
    /// `len` zero bytes (write a hole or skip it on a zeroed target).
    Zero { len: u32 },
    /// The chunk's plaintext, at an aligned address (see [`ChunkBuf`]).
    Data(ChunkBuf),
}

fn corrupt(at: Location, what: impl Into<String>) -> Error {
    Error::corrupt(at, what)
}

/// Most bytes (capacity) [`RecordBuffers`] keeps; more is freed. An ingest
/// holds up to five 16 MiB batches of 1 MiB chunks at once (being read,
/// queued, being written, being read back and compared): with room for two
/// (32 MiB), the rest was freed and allocated again, and every `O_DIRECT`
/// read into fresh memory faulted its pages in and zeroed them (10 % of a
/// 1 GiB ingest's CPU, 0.76-0.87 CPU-s in all; 0.67-0.72 with this).
/// Peak RSS of that ingest: 135 MiB either way.
const POOLED_BYTES: usize = 96 << 20;

/// Buffers of chunks a [`CaptureReader`] handed out, given back for its
/// next records (see the module doc). A handle: clones share the buffers,
/// so the thread that is done with a chunk gives it back while the reader
/// goes on on another.
#[derive(Debug, Clone, Default)]
pub struct RecordBuffers(Arc<Mutex<Pool>>);

#[derive(Debug, Default)]
struct Pool {
    bufs: Vec<ChunkBuf>,
    bytes: usize,
}

impl RecordBuffers {
    /// Gives a chunk's buffer back (its bytes are overwritten before any of
    /// them is handed out again); beyond [`POOLED_BYTES`] it is freed.
    pub fn put(&self, buf: ChunkBuf) {
        let mut p = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buf.capacity() > 0 && p.bytes + buf.capacity() <= POOLED_BYTES {
            p.bytes += buf.capacity();
            p.bufs.push(buf);
        }
    }

    /// A buffer of exactly `len` bytes for a record to be read into: a given
    /// back one when there is one. Its old bytes are not cleared (only what
    /// it grows by is zeroed): the caller fills all `len` bytes or drops it.
    fn take(&self, len: usize) -> ChunkBuf {
        let reused = {
            let mut p = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let b = p.bufs.pop();
            if let Some(b) = &b {
                p.bytes -= b.capacity();
            }
            b
        };
        match reused {
            Some(mut b) => {
                b.truncate(len);
                b.resize(len);
                b
            }
            None => ChunkBuf::zeroed(len),
        }
    }
}

/// Checks a manifest's MAC with `keys`: a key that fails the key check is
/// the wrong key; a key that passes it but fails the MAC means the manifest
/// was modified.
pub(crate) fn check_manifest_mac(name: &str, f: &ManifestFile, keys: &Subkeys) -> Result<()> {
    check_mac_of(name, f, keys, false)
}

/// [`check_manifest_mac`] where `keys` came out of this capture's own key slot
/// (`from_slot`): the slot's AEAD proved the key is this capture's, so a key check that
/// differs is a modified manifest, not a wrong key (it told the operator to replace a right
/// key, or to have the disk captured again).
fn check_mac_of(name: &str, f: &ManifestFile, keys: &Subkeys, from_slot: bool) -> Result<()> {
    let path = || layout::generation_file(name, f.manifest.generation, layout::MANIFEST_FILE);
    let at = || {
        Location::capture(name)
            .generation(f.manifest.generation)
            .file(&path())
    };
    if keys.key_check() != f.manifest.key_check {
        if from_slot {
            return Err(corrupt(
                at(),
                "the manifest's key check does not match the key its capture's key slot holds \
                 (the key opened the slot, so it is the right key): the manifest was modified",
            ));
        }
        return Err(Error::WrongKey { name: name.into() });
    }
    if keys.manifest_mac(&f.signed) != f.mac {
        return Err(corrupt(
            at(),
            "manifest MAC does not verify: the manifest was modified",
        ));
    }
    Ok(())
}

/// Reads and decrypts the INDEX of a finished generation.
pub(crate) fn load_index<S: Store + ?Sized>(
    store: &mut S,
    name: &str,
    m: &Manifest,
    keys: &Subkeys,
) -> Result<Vec<IndexEntry>> {
    let path = layout::generation_file(name, m.generation, INDEX_FILE);
    let at = Location::capture(name).generation(m.generation).file(&path);
    let max = (INDEX_HEADER_LEN as u64 + 16)
        .saturating_add(m.chunk_count.saturating_mul(ENTRY_LEN as u64));
    let bytes = medium::read_file(store, &path, max, &at)?
        .ok_or_else(|| corrupt(at.clone(), "INDEX is missing"))?;
    if bytes.len() as u64 != m.index_len || blake3::hash(&bytes).as_bytes() != &m.index_hash {
        return Err(corrupt(
            at,
            "INDEX does not match the manifest's hash (replaced or damaged)",
        ));
    }
    let h = IndexHeader::decode(&bytes).map_err(|w| corrupt(at.clone(), w))?;
    if h.capture_id != m.capture_id
        || h.generation != m.generation
        || h.chunk_count != m.chunk_count
        || h.chunk_size != m.chunk_size
        || h.disk_size != m.disk_size
    {
        return Err(corrupt(at, "INDEX header does not match the manifest"));
    }
    let ct = &bytes[INDEX_HEADER_LEN..];
    let plain = encode::open_blob(&keys.index_cipher(&h.salt), &h.aad(), ct)
        .ok_or_else(|| corrupt(at.clone(), "INDEX fails authentication"))?;
    if plain.len() as u64 != m.chunk_count.saturating_mul(ENTRY_LEN as u64) {
        return Err(corrupt(
            at,
            "INDEX holds a different number of entries than the manifest's chunk count",
        ));
    }
    let mut entries = Vec::with_capacity(plain.len() / ENTRY_LEN);
    for (i, e) in plain.chunks_exact(ENTRY_LEN).enumerate() {
        let e =
            IndexEntry::decode(e).map_err(|w| corrupt(at.clone(), format!("entry {i}: {w}")))?;
        let want = layout::chunk_len(m.disk_size, m.chunk_size, i as u64);
        let bad_loc = match &e {
            IndexEntry::Stored(l) if l.stream >= layout::PEER_STREAM_BASE => {
                // Another machine's record: in exactly the generation of
                // the peer the MANIFEST pins (checked before reading), and
                // its segment header must match where it is read.
                m.peers
                    .get(usize::from(l.stream - layout::PEER_STREAM_BASE))
                    .is_none_or(|p| p.generation != l.generation)
            }
            IndexEntry::Stored(l) if l.stream != 0 => {
                // Another disk's record: checked where it is read (its
                // segment header must match); only with the feature bit.
                l.generation > m.generation
                    || m.incompat & layout::INCOMPAT_CROSS_STREAM == 0
                    || usize::from(l.stream) > crate::set::MAX_SET_DISKS
            }
            IndexEntry::Stored(l) => {
                l.generation > m.generation
                    || (l.generation == m.generation && l.segment as usize >= m.segments.len())
            }
            IndexEntry::Zero { .. } => false,
        };
        if e.plain_len() != want || bad_loc {
            return Err(corrupt(
                at,
                format!("entry {i} is inconsistent with the manifest"),
            ));
        }
        entries.push(e);
    }
    Ok(entries)
}

/// Reads one finished generation of a capture with its key.
pub struct CaptureReader<S: Store> {
    store: S,
    name: String,
    /// Root hash of the MANIFEST opened.
    root: [u8; 32],
    manifest: Manifest,
    keys: Subkeys,
    entries: Vec<IndexEntry>,
    ciphers: HashMap<(u16, u32, u32), Cipher>,
    buffers: RecordBuffers,
}

/// How [`resized_segment`] ends: a full verify says it once per segment, not per record.
const RESIZED: &str = "(bytes added or cut after it was closed)";

/// What a segment of `len` bytes whose manifest signs `want` is.
fn resized_segment(len: u64, want: u64) -> String {
    format!("segment is {len} bytes, its manifest says {want} {RESIZED}")
}

impl<S: Store> core::fmt::Debug for CaptureReader<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CaptureReader")
            .field("name", &self.name)
            .field("generation", &self.manifest.generation)
            .finish_non_exhaustive()
    }
}

impl<S: Store> CaptureReader<S> {
    /// Opens generation `generation` (default: the newest finished one) of
    /// capture `name`, unwrapping its data key with `unlock`.
    pub fn open(
        mut store: S,
        name: &str,
        generation: Option<u32>,
        unlock: &Unlock,
    ) -> Result<Self> {
        let name = &verify::stored_name(&mut store, name)?;
        let f = find_manifest(&mut store, name, generation)?;
        let (key, slot_id) = keys::unlock_data_key(&mut store, name, unlock)?;
        // The key opened the capture's slot, and the slot names the capture: a generation
        // of another capture id was put in its directory. That is the generation's fault,
        // not the key's (it was reported as a wrong key).
        if let Some(id) = slot_id.filter(|id| *id != f.manifest.capture_id) {
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            let path = layout::generation_file(name, f.manifest.generation, layout::MANIFEST_FILE);
            return Err(corrupt(
                Location::capture(name)
                    .generation(f.manifest.generation)
                    .file(&path),
                format!(
                    "generation {} belongs to another capture (capture id {}; capture {name}'s \
                     key slot is for capture id {}): it was put here from another capture or \
                     medium, and is not this capture's",
                    f.manifest.generation,
                    hex(&f.manifest.capture_id),
                    hex(&id)
                ),
            ));
        }
        Self::open_manifest(store, name, f, &key, slot_id.is_some())
    }

    /// Like [`open`](Self::open) with the data key itself (from a key cache).
    pub fn open_with_key(
        mut store: S,
        name: &str,
        generation: Option<u32>,
        key: &DataKey,
    ) -> Result<Self> {
        let name = &verify::stored_name(&mut store, name)?;
        let f = find_manifest(&mut store, name, generation)?;
        Self::open_manifest(store, name, f, key, false)
    }

    fn open_manifest(
        mut store: S,
        name: &str,
        f: ManifestFile,
        key: &DataKey,
        from_slot: bool,
    ) -> Result<Self> {
        let keys = Subkeys::derive(key, &f.manifest.capture_id);
        check_mac_of(name, &f, &keys, from_slot)?;
        let root = f.root;
        let m = f.manifest;
        check_peers_pinned(&mut store, name, &m)?;
        let entries = load_index(&mut store, name, &m, &keys)?;
        let digest = medium::disk_digest(
            m.disk_size,
            m.chunk_size,
            entries.iter().map(|e| e.chunk_id()),
        );
        if digest != m.disk_digest {
            return Err(corrupt(
                Location::capture(name).generation(m.generation),
                "the INDEX's chunk ids do not give the manifest's disk digest",
            ));
        }
        Ok(CaptureReader {
            store,
            name: name.into(),
            root,
            manifest: m,
            keys,
            entries,
            ciphers: HashMap::new(),
            buffers: RecordBuffers::default(),
        })
    }

    /// The medium it reads, for a look at the rest of it (what else it holds) while open.
    pub fn store(&mut self) -> &mut S {
        &mut self.store
    }

    /// The capture's name as stored on the medium (the spelling its
    /// manifest binds, whatever case the caller asked with).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Size of the captured disk in bytes.
    pub fn disk_size(&self) -> u64 {
        self.manifest.disk_size
    }

    /// Chunk size in bytes.
    pub fn chunk_size(&self) -> u32 {
        self.manifest.chunk_size
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u64 {
        self.manifest.chunk_count
    }

    /// The generation being read.
    pub fn generation(&self) -> u32 {
        self.manifest.generation
    }

    /// The root hash of the MANIFEST this reader opened (what a COMMIT
    /// signs): a caller that checked a signature over the medium's files
    /// before opening compares the two, so a medium that answers one read
    /// differently from the next cannot slip other data in between.
    /// Every segment of this generation the media given hold is the length its manifest
    /// signs: keyless and cheap, so a reader checks it before it writes anything (a segment
    /// cut or grown was found only when its first record was read, after the target had
    /// been written up to it). A segment not on the media given (a span's other medium) is
    /// left to the read that needs it.
    ///
    /// The earlier generations a delta reads records from are checked too, against their own
    /// MANIFESTs (a parent's segment grown was installed, exit 0, while `verify` failed it).
    pub fn check_segment_lengths(&mut self) -> Result<()> {
        let own = self.manifest.generation;
        let mut parents: Vec<u32> = self
            .entries
            .iter()
            .filter_map(|e| match e {
                IndexEntry::Stored(l) if l.stream == 0 && l.generation != own => Some(l.generation),
                _ => None,
            })
            .collect();
        parents.sort_unstable();
        parents.dedup();
        let mut lengths: Vec<(u32, Vec<u64>)> =
            alloc::vec![(own, self.manifest.segments.iter().map(|d| d.len).collect())];
        for g in parents {
            // A parent whose MANIFEST does not read is refused where its records are read.
            match crate::medium::read_manifest(&mut self.store, &self.name, g) {
                Ok(Some(f)) => {
                    lengths.push((g, f.manifest.segments.iter().map(|d| d.len).collect()))
                }
                // Not on a single medium at all: refused here, before anything is written (the
                // target was written up to the first chunk the parent holds, and left partial).
                // A span's other media are left to the read that needs them.
                Ok(None) if self.store.span().is_none() && !self.holds_generation(g) => {
                    return Err(corrupt(
                        Location::capture(&self.name).generation(g),
                        parent_missing(g, own),
                    ));
                }
                _ => {}
            }
        }
        for (g, lens) in lengths {
            for (i, want) in lens.into_iter().enumerate() {
                let Ok(segment) = u32::try_from(i) else {
                    break;
                };
                let path = layout::segment_path(&self.name, g, segment);
                if let Some(len) = self.store.len(&path).at(&path)? {
                    if len != want {
                        return Err(corrupt(
                            Location::capture(&self.name).generation(g).file(&path),
                            resized_segment(len, want),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether the medium lists generation `g` of this capture (a directory of it, finished or
    /// not); a listing that fails says no.
    fn holds_generation(&mut self, g: u32) -> bool {
        matches!(
            crate::medium::generations(&mut self.store, &self.name).map(|v| v.contains(&g)),
            Ok(true)
        )
    }

    pub fn manifest_root(&self) -> &[u8; 32] {
        &self.root
    }

    /// The (MAC-verified) manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Index entry of chunk `index`.
    pub fn entry(&self, index: u64) -> Option<&IndexEntry> {
        self.entries.get(usize::try_from(index).ok()?)
    }

    /// Whole-disk digest recorded in the manifest: blake3 (derive-key mode,
    /// context "MotionGear disk digest v1") over disk size, chunk size and
    /// every chunk's keyed id. Checked against the INDEX on open; each
    /// [`read_chunk`](Self::read_chunk) checks its chunk's id.
    pub fn disk_digest(&self) -> [u8; 32] {
        self.manifest.disk_digest
    }

    /// The capture's chunk-id key: the index's chunk ids are this key's
    /// ids of the chunks' plaintext, so a copy of the disk can be checked
    /// against the (MAC'd) index without keeping hashes of its own.
    pub fn chunk_id_key(&self) -> crate::ChunkIdKey {
        crate::ChunkIdKey::from_subkey(&self.keys.chunk_id)
    }

    /// Where to give the plaintext of [`ChunkData::Data`] back once done
    /// with it (written, compared): the reader reads its next records into
    /// those buffers. Optional: a buffer not given back is just freed.
    pub fn record_buffers(&self) -> RecordBuffers {
        self.buffers.clone()
    }

    /// Gives the store back.
    pub fn into_store(self) -> S {
        self.store
    }

    /// Reads chunk `index`, fully authenticated.
    pub fn read_chunk(&mut self, index: u64) -> Result<ChunkData> {
        let Some(e) = self.entry(index).copied() else {
            return Err(Error::Usage(format!(
                "chunk {index} is out of range: capture {} has {} chunks",
                self.name, self.manifest.chunk_count
            )));
        };
        match e {
            IndexEntry::Zero { plain_len, .. } => Ok(ChunkData::Zero { len: plain_len }),
            IndexEntry::Stored(l) => self.read_record(index, &l).map(ChunkData::Data),
        }
    }

    /// The capture whose segment holds record `l`: this one, another disk
    /// stream of its machine set, or a peer machine the MANIFEST pins
    /// (dedup across machines); `None` for a stream the index may not use.
    pub fn record_capture(&self, l: &RecordLoc) -> Option<String> {
        crate::peers::record_holder(&self.name, &self.manifest.peers, l.stream)
    }

    /// The segment file holding record `l` (in another disk stream of the
    /// set, or a peer, for a cross-stream entry).
    fn record_path(&self, l: &RecordLoc) -> String {
        let name = self
            .record_capture(l)
            .unwrap_or_else(|| alloc::format!("{}<stream {}>", self.name, l.stream));
        layout::segment_path(&name, l.generation, l.segment)
    }

    fn location(&self, index: u64, l: &RecordLoc) -> Location {
        let start = index.saturating_mul(u64::from(self.manifest.chunk_size));
        Location {
            capture: self.name.clone(),
            generation: Some(l.generation),
            segment: Some(l.segment),
            record: Some(l.record),
            file: Some(self.record_path(l)),
            file_range: Some(
                l.offset..l.offset + (REC_HEADER_LEN as u64) + u64::from(l.stored_len),
            ),
            disk_range: Some(start..start.saturating_add(u64::from(l.plain_len))),
        }
    }

    fn cipher(&mut self, at: &Location, l: &RecordLoc) -> Result<&Cipher> {
        let (stream, generation, segment) = (l.stream, l.generation, l.segment);
        if self.record_capture(l).is_none() {
            return Err(corrupt(
                at.clone(),
                "index entry points at another stream, but this capture is neither a disk of a machine set nor pins such a peer",
            ));
        }
        if !self.ciphers.contains_key(&(stream, generation, segment)) {
            let path = self.record_path(l);
            let mut hb = [0u8; SEG_HEADER_LEN];
            let len = match self.store.len(&path).at(&path)? {
                Some(n) if n >= SEG_HEADER_LEN as u64 => n,
                _ => return Err(corrupt(at.clone(), "segment is missing or truncated")),
            };
            // A segment of this generation is the length its manifest signs (verify checks
            // the same): bytes added after its trailer were read past before.
            let signed = self
                .manifest
                .segments
                .get(segment as usize)
                .map(|d| d.len)
                .filter(|_| stream == 0 && generation == self.manifest.generation);
            if let Some(want) = signed.filter(|want| *want != len) {
                return Err(corrupt(at.clone(), resized_segment(len, want)));
            }
            self.store.read_exact_at(&path, 0, &mut hb).at(&path)?;
            let h = SegmentHeader::decode(&hb).map_err(|w| corrupt(at.clone(), w))?;
            if h.capture_id != self.manifest.capture_id
                || h.generation != generation
                || h.segment != segment
            {
                return Err(corrupt(
                    at.clone(),
                    "segment header does not match its place (moved or replayed segment)",
                ));
            }
            self.ciphers.insert(
                (stream, generation, segment),
                self.keys.segment_cipher(&h.salt, generation, segment),
            );
        }
        self.ciphers
            .get(&(stream, generation, segment))
            .ok_or_else(|| Error::Backend("segment cipher cache lost an entry".into()))
    }

    fn read_record(&mut self, index: u64, l: &RecordLoc) -> Result<ChunkBuf> {
        let rec = self.fetch_record(index, l)?;
        let at = self.location(index, l);
        self.cipher(&at, l)?;
        let cipher = self
            .ciphers
            .get(&(l.stream, l.generation, l.segment))
            .ok_or_else(|| Error::Backend("segment cipher cache lost an entry".into()))?;
        match open_fetched_buf(
            cipher,
            &self.keys.chunk_id,
            &self.manifest.capture_id,
            at,
            l,
            rec,
            0,
            &self.buffers,
        ) {
            Ok(plain) => Ok(plain),
            Err(fail) => Err(self.diagnose(index, l, fail)),
        }
    }

    /// The error for a record that failed to open: if it failed
    /// authentication, fetch it again and say whether its stored bytes
    /// changed (a corrupted record) or not (tampered, swapped or replayed).
    /// Only failures pay for this hash; a good record is hashed nowhere on
    /// the read path (AES-GCM authenticates the same bytes).
    fn diagnose(&mut self, index: u64, l: &RecordLoc, fail: OpenFail) -> Error {
        let at = match fail {
            OpenFail::Other(e) => return e,
            OpenFail::Auth(at) => at,
        };
        let rec = match self.fetch_record(index, l) {
            Ok(rec) => rec,
            Err(e) => return e,
        };
        let stored = rec.get(REC_HEADER_LEN..).unwrap_or_default();
        match RecordHeader::decode(&rec) {
            Ok(h) if blake3::hash(stored).as_bytes() != &h.stored_hash => corrupt(
                at,
                "stored bytes do not match the record's hash (corrupted record)",
            ),
            _ => corrupt(
                at,
                "record fails authentication (tampered, swapped or replayed)",
            ),
        }
    }

    /// Reads chunks `indices` (in that order), fully authenticated like
    /// [`read_chunk`](Self::read_chunk), decrypting and checking their
    /// records on up to `threads` threads. Fails with the first bad chunk
    /// in `indices` order.
    ///
    /// Why: reading is I/O on one medium, but authenticating a record is
    /// CPU (AES-GCM, zstd, keyed id); done one by one it was ingest's
    /// bottleneck.
    pub fn read_chunks(&mut self, indices: &[u64], threads: usize) -> Result<Vec<ChunkData>> {
        enum Got {
            Zero(u32),
            Record(Box<(Location, RecordLoc)>, Fetch),
        }
        enum Fetch {
            /// Read through the store.
            Read(ChunkBuf),
            /// To be read on the opening thread, straight into its buffer.
            Located(Located),
        }
        let mut got = Vec::with_capacity(indices.len());
        for &index in indices {
            let Some(e) = self.entry(index).copied() else {
                return Err(Error::Usage(format!(
                    "chunk {index} is out of range: capture {} has {} chunks",
                    self.name, self.manifest.chunk_count
                )));
            };
            match e {
                IndexEntry::Zero { plain_len, .. } => got.push(Got::Zero(plain_len)),
                IndexEntry::Stored(l) => {
                    let fetch = match self.locate_record(index, &l)? {
                        Some(dev) => Fetch::Located(dev),
                        None => Fetch::Read(self.fetch_record(index, &l)?),
                    };
                    let at = self.location(index, &l);
                    self.cipher(&at, &l)?;
                    got.push(Got::Record(Box::new((at, l)), fetch));
                }
            }
        }
        let (ciphers, chunk_id_key, capture_id, buffers) = (
            &self.ciphers,
            &self.keys.chunk_id,
            &self.manifest.capture_id,
            &self.buffers,
        );
        let open = |g: Got| -> core::result::Result<ChunkData, OpenFail> {
            let (place, fetch) = match g {
                Got::Zero(len) => return Ok(ChunkData::Zero { len }),
                Got::Record(place, fetch) => (place, fetch),
            };
            let (at, l) = *place;
            let cipher = ciphers
                .get(&(l.stream, l.generation, l.segment))
                .ok_or_else(|| {
                    OpenFail::Other(Error::Backend("segment cipher cache lost an entry".into()))
                })?;
            let (rec, lead) = match fetch {
                Fetch::Read(rec) => (rec, 0),
                Fetch::Located(dev) => read_located(&dev, &at, &l, buffers)?,
            };
            open_fetched_buf(cipher, chunk_id_key, capture_id, at, &l, rec, lead, buffers)
                .map(ChunkData::Data)
        };
        // Records read on the opening threads wait on the device there: two
        // more threads than cores keep reads in flight while the others
        // decrypt (a direct read has no kernel read-ahead).
        let direct = got
            .iter()
            .any(|g| matches!(g, Got::Record(_, Fetch::Located(_))));
        let threads = if direct { threads + 2 } else { threads };
        let opened = crate::parallel::map_owned_in_order(got, threads, open)?;
        let mut out = Vec::with_capacity(opened.len());
        for (&index, r) in indices.iter().zip(opened) {
            match r {
                Ok(d) => out.push(d),
                Err(fail) => {
                    let l = match self.entry(index) {
                        Some(IndexEntry::Stored(l)) => *l,
                        _ => return Err(fail.into_error()),
                    };
                    return Err(self.diagnose(index, &l, fail));
                }
            }
        }
        Ok(out)
    }

    /// Reads record `l` of chunk `index` and checks its header against the
    /// index (the cheap, I/O half of reading a record).
    fn fetch_record(&mut self, index: u64, l: &RecordLoc) -> Result<ChunkBuf> {
        let at = self.location(index, l);
        let path = self.record_path(l);
        let total = REC_HEADER_LEN + l.stored_len as usize;
        let flen = self.store.len(&path).at(&path)?;
        if l.offset
            .checked_add(total as u64)
            .is_none_or(|end| end > flen.unwrap_or(0))
        {
            return Err(self.record_missing(index, l, flen.is_some()));
        }
        // Every byte of it is read over (or the read fails and it is dropped).
        let mut rec = self.buffers.take(total);
        self.store
            .read_exact_at(&path, l.offset, &mut rec)
            .at(&path)?;
        check_record_header(&at, l, &rec)?;
        Ok(rec)
    }

    /// Where record `l` lies on the medium's device, when the store can
    /// say ([`Store::locate`]): then it is read on an opening thread
    /// straight into the buffer it is decrypted in, instead of by
    /// [`fetch_record`](Self::fetch_record) through the store's read-ahead
    /// window and a copy out of it (11 % of ingest's CPU on a FAT image).
    fn locate_record(&mut self, index: u64, l: &RecordLoc) -> Result<Option<Located>> {
        let path = self.record_path(l);
        let total = (REC_HEADER_LEN + l.stored_len as usize) as u64;
        let flen = self.store.len(&path).at(&path)?;
        if l.offset
            .checked_add(total)
            .is_none_or(|end| end > flen.unwrap_or(0))
        {
            return Err(self.record_missing(index, l, flen.is_some()));
        }
        self.store.locate(&path, l.offset, total).at(&path)
    }

    /// The error for record `l` that its segment does not hold. A record of
    /// an older generation of this capture whose segment is gone means that
    /// generation is missing (removed, or never copied): say so, since
    /// "truncated segment" would send the reader looking at this delta.
    fn record_missing(&mut self, index: u64, l: &RecordLoc, segment_exists: bool) -> Error {
        let g = l.generation;
        if let (false, Some(span)) = (segment_exists, self.store.span()) {
            // The map places it on a medium that is given, and it is not there: removed or
            // replaced on that medium (it was said to be a damaged map, "give every medium").
            let path = self.record_path(l);
            if let Some(m) = span
                .map()
                .holder(&path)
                .filter(|m| span.attached().contains(&m.ordinal))
            {
                // Named as given too: the map names a member as it joined, and an older copy
                // given in its place was told by the original's name, "given".
                let given = span
                    .given_as(m.ordinal)
                    .map(|g| format!(" (given as {g})"))
                    .unwrap_or_default();
                return corrupt(
                    self.location(index, l),
                    format!(
                        "the span map places the segment holding this chunk on {}{given}, but it \
                         is not there: it was removed on that medium, or the medium given is a \
                         copy of it made before this segment was written; do not use this \
                         shipment as it is: give that medium as it left the capture site, or \
                         ask for another copy",
                        span.map().describe(m.ordinal)
                    ),
                );
            }
            // A span whose map does not place this segment on any medium
            // given (a damaged map entry): the data is not bad, it is not here.
            return Error::NotOnMediaGiven(format!(
                "{}: the segment holding this chunk is on none of the media given, and the span \
                 map does not say which medium holds it (its copies may be damaged): give every \
                 medium of the span (`mgear inspect` lists them)",
                self.location(index, l)
            ));
        }
        let older = l.stream == 0 && g != self.manifest.generation;
        let gone = older && !segment_exists && !self.holds_generation(g);
        corrupt(
            self.location(index, l),
            if gone {
                parent_missing(g, self.manifest.generation)
            } else if older && !segment_exists {
                format!(
                    "the segment of generation {g} that holds this chunk is missing (generation \
                     {g} is damaged)"
                )
            } else if !segment_exists {
                // It was called a truncated segment when its file was deleted.
                format!(
                    "the segment that holds this chunk ({}) is missing from the medium \
                     (deleted?); do not use this copy as it is, ask for another copy",
                    self.record_path(l)
                )
            } else {
                "record lies past the end of its segment (truncated segment)".into()
            },
        )
    }
}

/// Generation `own` keeps unchanged chunks in generation `g`, which the medium does not hold.
fn parent_missing(g: u32, own: u32) -> String {
    format!(
        "parent generation {g} is missing: this delta (generation {own}) keeps unchanged chunks \
         in generation {g}, which is not on the medium (removed?); ingest generation {own} from a \
         copy of the shipment that also holds generation {g}, or capture again"
    )
}

/// A record's header must be the one its index entry describes.
fn check_record_header(at: &Location, l: &RecordLoc, rec: &[u8]) -> Result<()> {
    let h = RecordHeader::decode(rec).map_err(|w| corrupt(at.clone(), w))?;
    if h.record != l.record
        || h.stored_len != l.stored_len
        || h.plain_len != l.plain_len
        || h.flags != l.flags
    {
        return Err(corrupt(
            at.clone(),
            "record header does not match the index (swapped or replayed record)",
        ));
    }
    Ok(())
}

/// Reads located record `l` into one of `buffers`: the aligned device
/// blocks around it, so the read is direct; the record starts `lead`
/// bytes in. Returns the buffer and `lead`.
fn read_located(
    dev: &Located,
    at: &Location,
    l: &RecordLoc,
    buffers: &RecordBuffers,
) -> core::result::Result<(ChunkBuf, usize), OpenFail> {
    let total = REC_HEADER_LEN + l.stored_len as usize;
    let align = CHUNK_ALIGN as u64;
    let start = dev.at / align * align;
    let lead = (dev.at - start) as usize;
    let len = (lead + total).div_ceil(CHUNK_ALIGN) * CHUNK_ALIGN;
    let mut rec = buffers.take(len);
    let path = at.file.clone().unwrap_or_default();
    let n = dev
        .device
        .read_aligned(start, &mut rec)
        .map_err(|error| OpenFail::Other(Error::Store { path, error }))?;
    if n < lead + total {
        return Err(OpenFail::Other(corrupt(
            at.clone(),
            "record lies past the end of the medium (truncated image?)",
        )));
    }
    check_record_header(at, l, &rec[lead..lead + total]).map_err(OpenFail::Other)?;
    rec.truncate(lead + total);
    Ok((rec, lead))
}

/// Why a fetched record did not open.
pub(crate) enum OpenFail {
    /// AES-GCM refused it: [`CaptureReader::diagnose`] says why.
    Auth(Location),
    /// Anything else, already described.
    Other(Error),
}

impl OpenFail {
    pub(crate) fn into_error(self) -> Error {
        match self {
            OpenFail::Auth(at) => corrupt(
                at,
                "record fails authentication (tampered, swapped or replayed)",
            ),
            OpenFail::Other(e) => e,
        }
    }
}

/// Authenticates a fetched record (header already matched to the index)
/// in one pass: AES-GCM under its segment key decrypts in place, then zstd
/// and the keyed chunk id. The stored-bytes hash is not computed: it
/// covers the same bytes AES-GCM authenticates, and serves keyless checks
/// (and the diagnosis of a failure, [`CaptureReader::diagnose`]).
pub(crate) fn open_fetched(
    cipher: &Cipher,
    chunk_id_key: &[u8; 32],
    capture_id: &[u8; 16],
    at: Location,
    l: &RecordLoc,
    mut rec: Vec<u8>,
) -> core::result::Result<Vec<u8>, OpenFail> {
    let n = decrypt_in_place(cipher, capture_id, &at, l, &mut rec, 0)?;
    rec.truncate(n);
    let plain = if l.flags & FLAG_ZSTD != 0 {
        encode::decompress(&rec, l.plain_len as usize)
            .map_err(|e| OpenFail::Other(corrupt(at.clone(), e.to_string())))?
    } else {
        rec
    };
    check_chunk_id(chunk_id_key, at, l, &plain)?;
    Ok(plain)
}

/// [`open_fetched`] for the reader's own buffers: the plaintext stays in the
/// record's (aligned) buffer, moved to its front, or, decompressed, goes
/// into one of `buffers`, and the record's goes back there. The record
/// starts `lead` bytes into `rec`.
#[allow(clippy::too_many_arguments)]
fn open_fetched_buf(
    cipher: &Cipher,
    chunk_id_key: &[u8; 32],
    capture_id: &[u8; 16],
    at: Location,
    l: &RecordLoc,
    mut rec: ChunkBuf,
    lead: usize,
    buffers: &RecordBuffers,
) -> core::result::Result<ChunkBuf, OpenFail> {
    let n = decrypt_in_place(cipher, capture_id, &at, l, &mut rec, lead)?;
    rec.truncate(n);
    let plain = if l.flags & FLAG_ZSTD != 0 {
        let mut out = buffers.take(l.plain_len as usize);
        encode::decompress_into(&rec, &mut out)
            .map_err(|e| OpenFail::Other(corrupt(at.clone(), e.to_string())))?;
        buffers.put(rec);
        out
    } else {
        rec
    };
    check_chunk_id(chunk_id_key, at, l, &plain)?;
    Ok(plain)
}

/// AES-GCM of a fetched record (header + payload, `lead` bytes into `rec`)
/// under its full AAD, in place: the stored payload's plaintext ends up at
/// the front of `rec`; its length.
fn decrypt_in_place(
    cipher: &Cipher,
    capture_id: &[u8; 16],
    at: &Location,
    l: &RecordLoc,
    rec: &mut [u8],
    lead: usize,
) -> core::result::Result<usize, OpenFail> {
    let header = rec.get(lead..).unwrap_or_default();
    RecordHeader::decode(header).map_err(|w| OpenFail::Other(corrupt(at.clone(), w)))?;
    let aad = RecordAad {
        capture_id,
        generation: l.generation,
        segment: l.segment,
        record: l.record,
        chunk_id: &l.chunk_id,
        plain_len: l.plain_len,
        stored_len: l.stored_len,
        flags: l.flags,
    };
    encode::open_record_in(cipher, &aad, rec, lead + REC_HEADER_LEN)
        .ok_or_else(|| OpenFail::Auth(at.clone()))
}

/// The decrypted chunk must have the index's length, and a decompressed one
/// its keyed id too.
///
/// Why not the id of a record stored as is: its AAD names the id and its
/// length, AES-GCM has just authenticated exactly these bytes under them, and
/// the capture computed the id over the very buffer it then sealed
/// (`ChunkEncoder` moves the plaintext into the record). Hashing it again
/// proved nothing the tag does not, at a fifth of ingest's CPU. A compressed
/// record's plaintext comes out of zstd, not out of the authenticated bytes:
/// that one is hashed and compared with its id.
fn check_chunk_id(
    chunk_id_key: &[u8; 32],
    at: Location,
    l: &RecordLoc,
    plain: &[u8],
) -> core::result::Result<(), OpenFail> {
    let decompressed = l.flags & FLAG_ZSTD != 0;
    if plain.len() != l.plain_len as usize
        || (decompressed && encode::chunk_id(chunk_id_key, plain) != l.chunk_id)
    {
        return Err(OpenFail::Other(corrupt(
            at,
            "decrypted chunk does not match its id",
        )));
    }
    Ok(())
}

/// Refuses to read a generation whose peers (dedup across machines) are
/// not exactly the pinned ones: a missing peer names what to give or keep,
/// a replaced one is a corrupt medium.
fn check_peers_pinned<S: Store + ?Sized>(store: &mut S, name: &str, m: &Manifest) -> Result<()> {
    for p in &m.peers {
        let Some(why) = crate::peers::peer_problem(store, m, p)? else {
            continue;
        };
        let missing = medium::read_manifest(store, &p.name, p.generation)
            .ok()
            .flatten()
            .is_none();
        let machine = crate::peers::machine_of(&p.name);
        let what = format!(
            "generation {} borrows records from machine {machine} (captured with \
             --dedup-across-machines {machine}): {why}",
            m.generation,
        );
        return Err(if missing {
            Error::NoGeneration {
                name: name.into(),
                why: format!(
                    "{what}. Give the medium that holds {machine} too (every medium of the \
                     shipment), or ingest from a copy where it was not removed"
                ),
            }
        } else {
            corrupt(Location::capture(name).generation(m.generation), what)
        });
    }
    Ok(())
}

fn find_manifest<S: Store + ?Sized>(
    store: &mut S,
    name: &str,
    generation: Option<u32>,
) -> Result<ManifestFile> {
    let gens = medium::generations(store, name)?;
    if gens.is_empty() {
        return Err(Error::NoCapture { name: name.into() });
    }
    match generation {
        Some(g) => {
            if !gens.contains(&g) {
                return Err(Error::NoGeneration {
                    name: name.into(),
                    why: format!("generation {g} does not exist"),
                });
            }
            medium::read_manifest(store, name, g)?.ok_or_else(|| Error::NoGeneration {
                name: name.into(),
                why: format!(
                    "generation {g} is unfinished (no MANIFEST); resume the capture first"
                ),
            })
        }
        None => {
            for &g in gens.iter().rev() {
                if let Some(f) = medium::read_manifest(store, name, g)? {
                    return Ok(f);
                }
            }
            Err(Error::NoGeneration {
                name: name.into(),
                why: "it has no finished generation".into(),
            })
        }
    }
}

/// Verifies capture `name` completely: the keyless checks of every
/// generation, then, with the key, the manifest MAC, the INDEX, and every
/// record the chosen generation references (decrypted, decompressed and
/// matched to its keyed id). Problems are collected, not returned as
/// errors; a wrong key is an error.
pub fn verify_full<S: Store + ?Sized>(
    store: &mut S,
    name: &str,
    generation: Option<u32>,
    unlock: &Unlock,
    obs: &mut dyn VerifyObserver,
) -> Result<VerifyReport> {
    let mut report = verify::verify_capture_keyless(store, name, obs)?;
    // Segments on media of the span not given: the keyless pass listed them
    // as elsewhere; their records are checked where they are, not called
    // missing here.
    let far: HashSet<String> = store
        .span()
        .map(|s| s.unreachable().into_iter().map(|(p, _)| p).collect())
        .unwrap_or_default();
    // Without --generation, a newest generation that does not open (another capture's put
    // here, a damaged MANIFEST) is the finding, and the newest one older that opens is still
    // checked: nothing at all was decrypted, its genuine generations unchecked.
    let mut older: Vec<u32> = match generation {
        Some(_) => Vec::new(),
        None => medium::generations(store, name).unwrap_or_default(),
    };
    let mut asked = generation;
    let mut reader = loop {
        match CaptureReader::open(&mut *store, name, asked, unlock) {
            Ok(r) => break r,
            Err(Error::Corrupt { at, what }) => {
                let failed = at.generation;
                report.problem(obs, *at, what);
                older.retain(|g| failed.is_some_and(|f| *g < f));
                if let (Some(next), Some(_)) = (older.pop(), failed) {
                    asked = Some(next);
                    continue;
                }
                // Nothing was decrypted: the counts say so (they were the keyless pass's, and
                // a "full" verify of a capture whose key slot is damaged read as 4 records
                // checked).
                report.captures = 0;
                report.generations = 0;
                report.segments = 0;
                report.records = 0;
                report.bytes = 0;
                return Ok(report);
            }
            Err(e) => return Err(e),
        }
    };
    let mut seen = HashSet::new();
    let total = reader.disk_size();
    let mut done = 0u64;
    for i in 0..reader.chunk_count() {
        let Some(e) = reader.entry(i).copied() else {
            break;
        };
        done += u64::from(e.plain_len());
        if let IndexEntry::Stored(l) = e {
            let stream = reader.record_capture(&l);
            let segment = layout::segment_path(
                stream.as_deref().unwrap_or(reader.name()),
                l.generation,
                l.segment,
            );
            if far.contains(&segment) {
                continue;
            }
            if seen.insert((l.stream, l.generation, l.segment, l.record)) {
                match reader.read_chunk(i) {
                    Ok(_) => {}
                    // Every record of a resized segment is refused for its length, which the
                    // keyless pass names once: a record is named only where the cut took it
                    // (with the disk bytes lost), not where it lies whole (record 0 was named,
                    // a record the cut took was not).
                    Err(Error::Corrupt { at, what }) if what.ends_with(RESIZED) => {
                        let end = l.offset + REC_HEADER_LEN as u64 + u64::from(l.stored_len);
                        let len = reader.store.len(&segment).at(&segment)?;
                        if len.is_none_or(|n| end > n) {
                            report.problem(
                                obs,
                                *at,
                                "record lies past the end of its segment (truncated segment): \
                                 what it held is not on this medium",
                            );
                        }
                    }
                    Err(Error::Corrupt { at, what }) => report.problem(obs, *at, what),
                    Err(e) => return Err(e),
                }
            }
        }
        obs.progress(done, total);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use crate::{CaptureParams, CaptureWriter};

    const CS: usize = 64 * 1024;

    /// Chunks 0 and 1 random, 2 text (compressed: a short record), 3 a
    /// random tail of 1000 bytes (a short chunk).
    fn disk() -> Vec<u8> {
        use rand::{RngCore, SeedableRng};
        let mut d = vec![0u8; 3 * CS + 1000];
        rand::rngs::SmallRng::seed_from_u64(7).fill_bytes(&mut d);
        for (j, b) in d[2 * CS..3 * CS].iter_mut().enumerate() {
            *b = b"record buffers "[j % 15];
        }
        d
    }

    fn capture(disk: &[u8]) -> (MemStore, DataKey) {
        let mut store = MemStore::new();
        let mut p = CaptureParams::new("web01", disk.len() as u64);
        p.chunk_size = CS as u32;
        p.recipients = vec![age::x25519::Identity::generate().to_public()];
        let key = DataKey::from_bytes([3; 32]);
        let mut w = CaptureWriter::begin(&mut store, p, Some(key.clone())).unwrap();
        let enc = w.encoder();
        for (i, c) in disk.chunks(CS).enumerate() {
            w.append(enc.encode(i as u64, c).unwrap()).unwrap();
        }
        w.finish().unwrap();
        (store, key)
    }

    fn data(c: ChunkData) -> ChunkBuf {
        match c {
            ChunkData::Data(d) => d,
            ChunkData::Zero { .. } => panic!("a data chunk read as zeros"),
        }
    }

    #[test]
    fn a_given_back_buffer_is_reused_and_leaks_nothing_into_a_shorter_record() {
        let disk = disk();
        let (mut store, key) = capture(&disk);
        let mut r = CaptureReader::open_with_key(&mut store, "web01", None, &key).unwrap();
        let bufs = r.record_buffers();
        let long = data(r.read_chunk(1).unwrap());
        assert!(long == disk[CS..2 * CS]);
        let at = long.as_ptr();
        bufs.put(long);
        // The short tail is read into the long chunk's buffer: it holds the
        // tail's 1000 bytes and nothing of chunk 1 after them.
        let tail = data(r.read_chunk(3).unwrap());
        assert_eq!(tail.as_ptr(), at, "the given back buffer is reused");
        assert!(tail == disk[3 * CS..]);
        // A compressed record read into a reused buffer, then a full-size
        // one into a small buffer (it grows).
        bufs.put(tail);
        assert!(data(r.read_chunk(2).unwrap()) == disk[2 * CS..3 * CS]);
        bufs.put(ChunkBuf::from_slice(&[0xee; 10]));
        let again = r.read_chunks(&[1, 0, 3], 2).unwrap();
        let again: Vec<ChunkBuf> = again.into_iter().map(data).collect();
        assert!(again[0] == disk[CS..2 * CS]);
        assert!(again[1] == disk[..CS]);
        assert!(again[2] == disk[3 * CS..]);
    }

    #[test]
    fn record_buffers_keep_a_bounded_number_of_bytes() {
        let bufs = RecordBuffers::default();
        let put = POOLED_BYTES / (1 << 20) + 5;
        for _ in 0..put {
            bufs.put(ChunkBuf::zeroed(1 << 20));
        }
        bufs.put(ChunkBuf::default());
        let p = bufs.0.lock().unwrap();
        let held: usize = p.bufs.iter().map(ChunkBuf::capacity).sum();
        assert_eq!(p.bytes, held);
        assert!(
            held <= POOLED_BYTES && held > POOLED_BYTES - (2 << 20),
            "{held}"
        );
        assert!(p.bufs.len() < put);
        drop(p);
        let b = bufs.take(10);
        assert_eq!(b.len(), 10);
        assert_eq!(bufs.0.lock().unwrap().bytes, held - b.capacity());
    }
}
