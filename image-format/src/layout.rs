//! Byte layouts of every on-medium structure (see `FORMAT.md`, which this
//! module implements field by field), medium paths, and name validation.
//!
//! Everything here is keyless and `no_std`: encoders produce exact bytes,
//! decoders take untrusted bytes and return `Err(&'static str)` describing
//! what is wrong (callers add the location). Integers are little-endian.

use alloc::string::String;
use alloc::vec::Vec;

use crate::error::{Error, Result};

// ---- DO NOT MODIFY: magics are the first bytes of blake3("<string>"). ----
// Changing a string or a value breaks every existing medium. The unit test
// `magics_match_their_strings` recomputes them.
/// blake3("MotionGear segment v1")[0..8]
pub const SEGMENT_MAGIC: [u8; 8] = [0x4f, 0x49, 0x56, 0x58, 0x68, 0x5d, 0x6b, 0xd2];
/// blake3("MotionGear record v1")[0..4]
pub const RECORD_MAGIC: [u8; 4] = [0xc4, 0x44, 0x1a, 0x3a];
/// blake3("MotionGear segment trailer v1")[0..4]
pub const TRAILER_MAGIC: [u8; 4] = [0xa0, 0x35, 0x0c, 0xe7];
/// blake3("MotionGear index v1")[0..8]
pub const INDEX_MAGIC: [u8; 8] = [0xdb, 0xe8, 0x78, 0x2b, 0x8c, 0xa0, 0xd9, 0x24];
/// blake3("MotionGear index part v1")[0..8]
pub const IPART_MAGIC: [u8; 8] = [0x13, 0x87, 0xfc, 0x36, 0x82, 0x7c, 0xed, 0x5a];
/// blake3("MotionGear journal v1")[0..8]
pub const JOURNAL_MAGIC: [u8; 8] = [0x53, 0xf6, 0x0e, 0xc7, 0xec, 0x9a, 0xc4, 0x78];
/// blake3("MotionGear manifest v1")[0..8]
pub const MANIFEST_MAGIC: [u8; 8] = [0x04, 0x52, 0x05, 0xc8, 0x2a, 0x12, 0x5b, 0x66];
/// blake3("MotionGear key slot payload v1")[0..8]
pub const KEY_PAYLOAD_MAGIC: [u8; 8] = [0x2c, 0x80, 0x26, 0x53, 0x4b, 0x19, 0xfc, 0x68];
// ---- end of DO NOT MODIFY ----

/// Format major version: readers refuse other majors.
pub const VERSION_MAJOR: u16 = 1;
/// Format minor version: additions readers may ignore.
pub const VERSION_MINOR: u16 = 0;
/// Incompatible feature: records may be zstd-compressed. A reader that does
/// not know a set incompatible bit must refuse the file.
pub const INCOMPAT_ZSTD: u32 = 1;
/// Incompatible feature: a segment's digest (its trailer hash and the
/// manifest's) is blake3 of its headers only (the segment header, then
/// every record header, each holding blake3 of its record's stored bytes),
/// not of the whole file: one hash pass per stored byte instead of two, on
/// capture and on the appliance's verify (FORMAT.md §5).
pub const INCOMPAT_HEADER_DIGEST: u32 = 2;
/// Incompatible feature: index entries may point at a record of another
/// disk stream of the same machine set (entry bytes 2..4, FORMAT.md §6 and
/// §14): identical chunks of a machine's disks are stored once.
pub const INCOMPAT_CROSS_STREAM: u32 = 4;
/// Incompatible feature: the MANIFEST ends with a peer list and index
/// entries may point at records of another machine captured under the same
/// data key (streams from [`PEER_STREAM_BASE`], FORMAT.md §14 "Dedup across
/// machines"): an explicit opt-in, `capture --dedup-across-machines`.
pub const INCOMPAT_PEERS: u32 = 8;
/// Incompatible feature (MANIFEST only): the MANIFEST body ends with blake3 of the capture's
/// `KEYS` and `KEYPASS` files (zeros for one that is absent), so a keyless verify finds a key
/// slot damaged after the capture, signed or not (before, only a signed capture's COMMIT bound
/// them, and an unsigned capture with a damaged slot verified "OK" while no key could open it).
pub const INCOMPAT_KEY_SLOTS: u32 = 16;
/// Incompatible features this code understands.
pub const INCOMPAT_KNOWN: u32 = INCOMPAT_ZSTD
    | INCOMPAT_HEADER_DIGEST
    | INCOMPAT_CROSS_STREAM
    | INCOMPAT_PEERS
    | INCOMPAT_KEY_SLOTS;

/// Index entry stream numbers from here on name peer `stream - PEER_STREAM_BASE`
/// of the generation's MANIFEST peer list ([`INCOMPAT_PEERS`]); 1..=64 are
/// the disk streams of the own machine set, 65..0x100 are invalid.
pub const PEER_STREAM_BASE: u16 = 0x100;
/// Most peers one MANIFEST lists (each a capture and generation whose
/// records its index points at).
pub const MAX_PEERS: usize = 256;

/// A capture generation of another machine whose records an index points
/// at ([`INCOMPAT_PEERS`]), pinned by its MANIFEST root: a peer that was
/// removed, replaced or re-captured no longer matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The capture holding the records (`web01`, or a disk stream `web01.d0`).
    pub name: String,
    /// Its generation whose segments hold them.
    pub generation: u32,
    /// Root hash of that generation's MANIFEST.
    pub root: [u8; 32],
}

/// Key-derivation context of the headers-only segment digest
/// ([`INCOMPAT_HEADER_DIGEST`]): a different hash function from the
/// whole-file one, so neither digest can stand for the other.
pub const HEADER_DIGEST_CONTEXT: &str = "MotionGear segment header digest v1";

/// The hasher a segment's digest starts from, for a segment written with
/// `incompat` feature bits. Feed it the segment header, then per record
/// its header (and, without [`INCOMPAT_HEADER_DIGEST`], its stored bytes).
pub fn segment_hasher(incompat: u32) -> blake3::Hasher {
    if incompat & INCOMPAT_HEADER_DIGEST != 0 {
        blake3::Hasher::new_derive_key(HEADER_DIGEST_CONTEXT)
    } else {
        blake3::Hasher::new()
    }
}

/// True if a segment written with `incompat` digests its headers only.
pub fn header_digest(incompat: u32) -> bool {
    incompat & INCOMPAT_HEADER_DIGEST != 0
}
/// Compatible features this code writes (none defined yet; unknown ones are ignored).
pub const COMPAT_NONE: u32 = 0;

/// Smallest chunk size (64 KiB).
pub const MIN_CHUNK: u32 = 64 * 1024;
/// Largest chunk size (16 MiB).
pub const MAX_CHUNK: u32 = 16 * 1024 * 1024;
/// Default chunk size, chosen by `benches/chunk_size.rs` (see FORMAT.md).
pub const DEFAULT_CHUNK: u32 = 1024 * 1024;
/// Default and largest segment size: 1 GiB, far below FAT32's 4 GiB file limit.
pub const MAX_SEGMENT: u64 = 1 << 30;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;

/// Top-level directory of the format on the medium.
pub const ROOT_DIR: &str = "MGEAR";
/// `MGEAR/ATTEST`: where copies of an appliance's seal and arrival
/// attestations may be kept on the medium. Not a capture: the name is
/// reserved.
pub const ATTEST_NAME: &str = "ATTEST";
/// Other names directly under `MGEAR/` that are files of the format, not
/// captures (`crate::span`'s label and map; FAT compares names without case).
pub const RESERVED_NAMES: [&str; 2] = ["SPAN", "SPANMAP"];
/// Key slot file wrapped to X25519 recipients (a plain age file).
pub const KEYS_FILE: &str = "KEYS";
/// Key slot file wrapped to a passphrase (a plain age scrypt file).
pub const KEYPASS_FILE: &str = "KEYPASS";
pub const MANIFEST_FILE: &str = "MANIFEST";
pub const INDEX_FILE: &str = "INDEX";
pub const IPART_FILE: &str = "IPART";
pub const JOURNAL_A: &str = "JRNL-A";
pub const JOURNAL_B: &str = "JRNL-B";

/// Checks a capture name: ASCII letters, digits, '-', '_', 1..=32 chars,
/// or the disk stream `<name>.d<k>` of a machine set (`crate::set`).
pub fn validate_name(name: &str) -> Result<()> {
    if crate::set::parse_disk_stream_name(name).is_some() {
        return Ok(());
    }
    validate_plain_name(name)
}

/// Checks a name a user chooses (a capture or a set): ASCII letters,
/// digits, '-', '_', 1..=32 chars.
pub fn validate_plain_name(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name.len() > 32 {
        "it is longer than 32 characters"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        "it contains a character other than ASCII letters, digits, '-' or '_'"
    } else if name.eq_ignore_ascii_case(ATTEST_NAME) {
        "it is reserved: MGEAR/ATTEST holds copies of the appliance's attestations"
    } else if RESERVED_NAMES.iter().any(|r| name.eq_ignore_ascii_case(r)) {
        // A capture's directory there would stand where a spanned medium keeps
        // its label and map, and every reader of the medium would fail on it.
        "it is reserved: MGEAR/SPAN and MGEAR/SPANMAP label the media of a capture spanning several"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: name.into(),
        why,
    })
}

/// `MGEAR/<name>`
pub fn capture_dir(name: &str) -> String {
    alloc::format!("{ROOT_DIR}/{name}")
}

/// `MGEAR/<name>/G<nnnn>`
pub fn generation_dir(name: &str, generation: u32) -> String {
    alloc::format!("{ROOT_DIR}/{name}/G{generation:04}")
}

/// `MGEAR/<name>/G<nnnn>/<file>`
pub fn generation_file(name: &str, generation: u32, file: &str) -> String {
    alloc::format!("{ROOT_DIR}/{name}/G{generation:04}/{file}")
}

/// `SEG-<nnnnn>`
pub fn segment_name(segment: u32) -> String {
    alloc::format!("SEG-{segment:05}")
}

/// `MGEAR/<name>/G<nnnn>/SEG-<nnnnn>`
pub fn segment_path(name: &str, generation: u32, segment: u32) -> String {
    generation_file(name, generation, &segment_name(segment))
}

/// Parses `G0001` into 1 (generation numbers are 1..=9999).
pub fn parse_generation_dir(s: &str) -> Option<u32> {
    let digits = s.strip_prefix('G')?;
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|g| *g > 0)
}

/// Parses `SEG-00003` into 3.
pub fn parse_segment_name(s: &str) -> Option<u32> {
    let digits = s.strip_prefix("SEG-")?;
    if digits.len() != 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Number of chunks of a disk of `size` bytes.
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size))
}

/// Length of chunk `index` (the last one may be short).
pub fn chunk_len(size: u64, chunk_size: u32, index: u64) -> u32 {
    let start = index.saturating_mul(u64::from(chunk_size));
    size.saturating_sub(start).min(u64::from(chunk_size)) as u32
}

/// Checks a chunk size: a power of two from 64 KiB to 16 MiB.
pub fn valid_chunk_size(cs: u32) -> bool {
    cs.is_power_of_two() && (MIN_CHUNK..=MAX_CHUNK).contains(&cs)
}

fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Why the trailer of a signed file (a manifest, a set manifest) is bad.
pub(crate) enum TrailerFault {
    Truncated,
    Crc,
    Root,
}

/// Checks the trailer that ends a manifest and a set manifest: after the
/// signed bytes `b[..signed_len]` come their BLAKE3 root (32 bytes), the MAC
/// (32, checked by the caller with the key) and a CRC-32 of everything before
/// it (4). Returns the root and the MAC.
pub(crate) fn check_trailer(
    b: &[u8],
    signed_len: usize,
) -> Result<([u8; 32], [u8; 32]), TrailerFault> {
    let trailer = b
        .get(signed_len..signed_len.saturating_add(68))
        .ok_or(TrailerFault::Truncated)?;
    check_crc(b, signed_len + 64).map_err(|_| TrailerFault::Crc)?;
    let (root, mac) = (&trailer[..32], &trailer[32..64]);
    if blake3::hash(&b[..signed_len]).as_bytes() != root {
        return Err(TrailerFault::Root);
    }
    let arr = |x: &[u8]| x.try_into().map_err(|_| TrailerFault::Truncated);
    Ok((arr(root)?, arr(mac)?))
}

/// Little-endian reader over untrusted bytes; every read is bounds-checked.
pub(crate) struct Rd<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Rd<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Rd { buf, pos: 0 }
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self.pos.checked_add(n).ok_or("length overflow")?;
        let s = self.buf.get(self.pos..end).ok_or("truncated")?;
        self.pos = end;
        Ok(s)
    }
    pub(crate) fn arr<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.arr::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, &'static str> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }
}

/// Checks magic, version and feature bits of a header read by `r`.
fn read_version(r: &mut Rd<'_>) -> Result<u32, &'static str> {
    let major = r.u16()?;
    let _minor = r.u16()?;
    let incompat = r.u32()?;
    let _compat = r.u32()?;
    if major != VERSION_MAJOR {
        return Err("written by an unsupported major version of the format");
    }
    if incompat & !INCOMPAT_KNOWN != 0 {
        return Err("uses incompatible features this version does not know");
    }
    Ok(incompat)
}

fn put_version(v: &mut Vec<u8>, incompat: u32) {
    v.extend_from_slice(&VERSION_MAJOR.to_le_bytes());
    v.extend_from_slice(&VERSION_MINOR.to_le_bytes());
    v.extend_from_slice(&incompat.to_le_bytes());
    v.extend_from_slice(&COMPAT_NONE.to_le_bytes());
}

fn check_crc(bytes: &[u8], crc_at: usize) -> Result<(), &'static str> {
    let stored = bytes.get(crc_at..crc_at + 4).ok_or("truncated")?;
    let stored = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]);
    if crc(&bytes[..crc_at]) != stored {
        return Err("CRC mismatch");
    }
    Ok(())
}

fn with_crc(mut v: Vec<u8>) -> Vec<u8> {
    let c = crc(&v);
    v.extend_from_slice(&c.to_le_bytes());
    v
}

// ---------------------------------------------------------------- segment

/// Length of a segment header.
pub const SEG_HEADER_LEN: usize = 96;

/// First bytes of every `SEG-nnnnn` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    pub incompat: u32,
    pub capture_id: [u8; 16],
    pub generation: u32,
    pub segment: u32,
    /// Fresh random salt of this segment's encryption subkey.
    pub salt: [u8; 32],
}

impl SegmentHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(SEG_HEADER_LEN);
        v.extend_from_slice(&SEGMENT_MAGIC);
        put_version(&mut v, self.incompat);
        v.extend_from_slice(&self.capture_id);
        v.extend_from_slice(&self.generation.to_le_bytes());
        v.extend_from_slice(&self.segment.to_le_bytes());
        v.extend_from_slice(&self.salt);
        v.extend_from_slice(&[0u8; 16]);
        with_crc(v)
    }

    pub fn decode(b: &[u8]) -> Result<Self, &'static str> {
        let b = b.get(..SEG_HEADER_LEN).ok_or("segment header truncated")?;
        if b[..8] != SEGMENT_MAGIC {
            return Err("not a segment (bad magic)");
        }
        check_crc(b, SEG_HEADER_LEN - 4).map_err(|_| "segment header CRC mismatch")?;
        let mut r = Rd::new(&b[8..]);
        let incompat = read_version(&mut r)?;
        Ok(SegmentHeader {
            incompat,
            capture_id: r.arr()?,
            generation: r.u32()?,
            segment: r.u32()?,
            salt: r.arr()?,
        })
    }
}

/// Length of a record header (records follow each other after the segment header).
pub const REC_HEADER_LEN: usize = 64;
/// Record flag: the plaintext was zstd-compressed before encryption.
pub const FLAG_ZSTD: u8 = 1;

/// Header in front of each stored chunk's ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub record: u32,
    /// Bytes after the header: ciphertext plus the 16-byte GCM tag.
    pub stored_len: u32,
    /// Length of the chunk once decrypted and decompressed.
    pub plain_len: u32,
    pub flags: u8,
    /// blake3 of the stored bytes: checkable without any key.
    pub stored_hash: [u8; 32],
}

impl RecordHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(REC_HEADER_LEN);
        v.extend_from_slice(&RECORD_MAGIC);
        v.extend_from_slice(&self.record.to_le_bytes());
        v.extend_from_slice(&self.stored_len.to_le_bytes());
        v.extend_from_slice(&self.plain_len.to_le_bytes());
        v.push(self.flags);
        v.extend_from_slice(&[0u8; 3]);
        v.extend_from_slice(&self.stored_hash);
        v.extend_from_slice(&[0u8; 8]);
        with_crc(v)
    }

    /// Decodes and checks the header's own consistency (CRC, flags, lengths).
    pub fn decode(b: &[u8]) -> Result<Self, &'static str> {
        let b = b.get(..REC_HEADER_LEN).ok_or("record header truncated")?;
        if b[..4] != RECORD_MAGIC {
            return Err("not a record header (bad magic)");
        }
        check_crc(b, REC_HEADER_LEN - 4).map_err(|_| "record header CRC mismatch")?;
        let mut r = Rd::new(&b[4..]);
        let h = RecordHeader {
            record: r.u32()?,
            stored_len: r.u32()?,
            plain_len: r.u32()?,
            flags: r.u8()?,
            stored_hash: {
                r.bytes(3)?;
                r.arr()?
            },
        };
        if h.flags & !FLAG_ZSTD != 0 {
            return Err("record has unknown flags");
        }
        if h.plain_len == 0 || h.plain_len > MAX_CHUNK {
            return Err("record plain length out of range");
        }
        let tag = TAG_LEN as u32;
        let ok_len = if h.flags & FLAG_ZSTD != 0 {
            h.stored_len > tag && h.stored_len < h.plain_len + tag
        } else {
            h.stored_len == h.plain_len + tag
        };
        if !ok_len {
            return Err("record stored length inconsistent with its plain length");
        }
        Ok(h)
    }
}

/// Length of the trailer that closes a segment.
pub const TRAILER_LEN: usize = 64;

/// Last bytes of a closed segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentTrailer {
    pub records: u32,
    /// Offset of this trailer = bytes covered by `hash`.
    pub data_end: u64,
    /// blake3 of the file's bytes `0..data_end`.
    pub hash: [u8; 32],
}

impl SegmentTrailer {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(TRAILER_LEN);
        v.extend_from_slice(&TRAILER_MAGIC);
        v.extend_from_slice(&self.records.to_le_bytes());
        v.extend_from_slice(&self.data_end.to_le_bytes());
        v.extend_from_slice(&self.hash);
        v.extend_from_slice(&[0u8; 12]);
        with_crc(v)
    }

    pub fn decode(b: &[u8]) -> Result<Self, &'static str> {
        let b = b.get(..TRAILER_LEN).ok_or("segment trailer truncated")?;
        if b[..4] != TRAILER_MAGIC {
            return Err("not a segment trailer (bad magic)");
        }
        check_crc(b, TRAILER_LEN - 4).map_err(|_| "segment trailer CRC mismatch")?;
        let mut r = Rd::new(&b[4..]);
        Ok(SegmentTrailer {
            records: r.u32()?,
            data_end: r.u64()?,
            hash: r.arr()?,
        })
    }
}

// ---------------------------------------------------------------- index

/// Length of one index entry (plaintext, inside the encrypted index).
pub const ENTRY_LEN: usize = 64;

/// Where chunk `i` of the disk lives. Entry `i` of the index is chunk `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexEntry {
    /// An all-zero chunk: nothing stored.
    Zero { plain_len: u32, chunk_id: [u8; 32] },
    /// A stored record, possibly in an earlier generation.
    Stored(RecordLoc),
}

/// Position and identity of a stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLoc {
    pub flags: u8,
    pub plain_len: u32,
    pub generation: u32,
    pub segment: u32,
    pub record: u32,
    pub stored_len: u32,
    /// Offset of the record header in its segment file.
    pub offset: u64,
    /// Keyed id of the plaintext.
    pub chunk_id: [u8; 32],
    /// Which stream's segment holds the record: 0 = this capture's own; k + 1
    /// = disk stream k of the same machine set ([`INCOMPAT_CROSS_STREAM`]);
    /// [`PEER_STREAM_BASE`] + i = peer i of the MANIFEST ([`INCOMPAT_PEERS`]).
    pub stream: u16,
}

impl IndexEntry {
    pub fn chunk_id(&self) -> &[u8; 32] {
        match self {
            IndexEntry::Zero { chunk_id, .. } => chunk_id,
            IndexEntry::Stored(l) => &l.chunk_id,
        }
    }

    pub fn plain_len(&self) -> u32 {
        match self {
            IndexEntry::Zero { plain_len, .. } => *plain_len,
            IndexEntry::Stored(l) => l.plain_len,
        }
    }

    pub fn encode_into(&self, v: &mut Vec<u8>) {
        let (kind, l) = match *self {
            IndexEntry::Zero {
                plain_len,
                chunk_id,
            } => (
                0u8,
                RecordLoc {
                    flags: 0,
                    plain_len,
                    generation: 0,
                    segment: 0,
                    record: 0,
                    stored_len: 0,
                    offset: 0,
                    chunk_id,
                    stream: 0,
                },
            ),
            IndexEntry::Stored(l) => (1u8, l),
        };
        v.push(kind);
        v.push(l.flags);
        v.extend_from_slice(&l.stream.to_le_bytes());
        v.extend_from_slice(&l.plain_len.to_le_bytes());
        v.extend_from_slice(&l.generation.to_le_bytes());
        v.extend_from_slice(&l.segment.to_le_bytes());
        v.extend_from_slice(&l.record.to_le_bytes());
        v.extend_from_slice(&l.stored_len.to_le_bytes());
        v.extend_from_slice(&l.offset.to_le_bytes());
        v.extend_from_slice(&l.chunk_id);
    }

    pub fn decode(b: &[u8]) -> Result<Self, &'static str> {
        let mut r = Rd::new(b);
        let kind = r.u8()?;
        let flags = r.u8()?;
        let stream = r.u16()?;
        let l = RecordLoc {
            stream,
            flags,
            plain_len: r.u32()?,
            generation: r.u32()?,
            segment: r.u32()?,
            record: r.u32()?,
            stored_len: r.u32()?,
            offset: r.u64()?,
            chunk_id: r.arr()?,
        };
        if l.plain_len == 0 || l.plain_len > MAX_CHUNK {
            return Err("index entry plain length out of range");
        }
        match kind {
            0 => Ok(IndexEntry::Zero {
                plain_len: l.plain_len,
                chunk_id: l.chunk_id,
            }),
            1 => {
                if l.flags & !FLAG_ZSTD != 0 {
                    return Err("index entry has unknown flags");
                }
                if l.generation == 0 || l.stored_len as usize <= TAG_LEN {
                    return Err("index entry for a stored chunk is inconsistent");
                }
                Ok(IndexEntry::Stored(l))
            }
            _ => Err("index entry has an unknown kind"),
        }
    }
}

/// Length of the INDEX file header (the ciphertext follows).
pub const INDEX_HEADER_LEN: usize = 108;

/// Clear header of the INDEX file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexHeader {
    pub incompat: u32,
    pub capture_id: [u8; 16],
    pub generation: u32,
    pub chunk_size: u32,
    pub disk_size: u64,
    pub chunk_count: u64,
    pub salt: [u8; 32],
    pub ciphertext_len: u64,
}

impl IndexHeader {
    /// Header bytes without the CRC: also the AAD of the index ciphertext.
    pub fn aad(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(INDEX_HEADER_LEN);
        v.extend_from_slice(&INDEX_MAGIC);
        put_version(&mut v, self.incompat);
        v.extend_from_slice(&self.capture_id);
        v.extend_from_slice(&self.generation.to_le_bytes());
        v.extend_from_slice(&self.chunk_size.to_le_bytes());
        v.extend_from_slice(&self.disk_size.to_le_bytes());
        v.extend_from_slice(&self.chunk_count.to_le_bytes());
        v.extend_from_slice(&self.salt);
        v.extend_from_slice(&self.ciphertext_len.to_le_bytes());
        v.extend_from_slice(&[0u8; 4]);
        v
    }

    pub fn encode(&self) -> Vec<u8> {
        with_crc(self.aad())
    }

    pub fn decode(b: &[u8]) -> Result<Self, &'static str> {
        let b = b.get(..INDEX_HEADER_LEN).ok_or("index header truncated")?;
        if b[..8] != INDEX_MAGIC {
            return Err("not an index (bad magic)");
        }
        check_crc(b, INDEX_HEADER_LEN - 4).map_err(|_| "index header CRC mismatch")?;
        let mut r = Rd::new(&b[8..]);
        let h = IndexHeader {
            incompat: read_version(&mut r)?,
            capture_id: r.arr()?,
            generation: r.u32()?,
            chunk_size: r.u32()?,
            disk_size: r.u64()?,
            chunk_count: r.u64()?,
            salt: r.arr()?,
            ciphertext_len: r.u64()?,
        };
        if !valid_chunk_size(h.chunk_size)
            || chunk_count(h.disk_size, h.chunk_size) != h.chunk_count
        {
            return Err("index header sizes are inconsistent");
        }
        let expect = h
            .chunk_count
            .checked_mul(ENTRY_LEN as u64)
            .and_then(|n| n.checked_add(TAG_LEN as u64));
        if expect != Some(h.ciphertext_len) {
            return Err("index ciphertext length does not match its chunk count");
        }
        Ok(h)
    }
}

/// Length of an IPART batch header (the ciphertext follows).
pub const IPART_HEADER_LEN: usize = 56;

/// One checkpoint's batch of index entries in the IPART file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpartHeader {
    pub first_chunk: u64,
    pub count: u32,
    pub salt: [u8; 32],
}

impl IpartHeader {
    pub fn aad(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(IPART_HEADER_LEN);
        v.extend_from_slice(&IPART_MAGIC);
        v.extend_from_slice(&self.first_chunk.to_le_bytes());
        v.extend_from_slice(&self.count.to_le_bytes());
        v.extend_from_slice(&self.salt);
        v
    }

    pub fn encode(&self) -> Vec<u8> {
        with_crc(self.aad())
    }

    pub fn decode(b: &[u8]) -> Result<Self, &'static str> {
        let b = b
            .get(..IPART_HEADER_LEN)
            .ok_or("index part header truncated")?;
        if b[..8] != IPART_MAGIC {
            return Err("not an index part (bad magic)");
        }
        check_crc(b, IPART_HEADER_LEN - 4).map_err(|_| "index part CRC mismatch")?;
        let mut r = Rd::new(&b[8..]);
        Ok(IpartHeader {
            first_chunk: r.u64()?,
            count: r.u32()?,
            salt: r.arr()?,
        })
    }

    /// Ciphertext bytes following this header.
    pub fn ciphertext_len(&self) -> u64 {
        u64::from(self.count) * ENTRY_LEN as u64 + TAG_LEN as u64
    }
}

// ---------------------------------------------------------------- journal

/// Length of one journal slot file.
pub const JOURNAL_LEN: usize = 160;

/// State recorded in a journal slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalState {
    InProgress = 1,
    Finished = 2,
}

/// A durable checkpoint of a generation being written (JRNL-A / JRNL-B).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journal {
    pub seq: u64,
    pub state: JournalState,
    pub capture_id: [u8; 16],
    pub generation: u32,
    pub parent: u32,
    pub chunk_size: u32,
    pub source_size: u64,
    /// blake3 of the capture parameters; a resume must present the same.
    pub params_hash: [u8; 32],
    /// Keyed value proving which data key this capture uses.
    pub key_check: [u8; 32],
    /// Chunks `0..next_chunk` are durable (their entries are in IPART).
    pub next_chunk: u64,
    /// Durable length of IPART.
    pub ipart_len: u64,
    /// Segments `0..closed_segments` are closed with a trailer.
    pub closed_segments: u32,
    /// Records durable in the open segment (number `closed_segments`).
    pub open_records: u32,
    /// Durable length of the open segment; 0 = no open segment.
    pub open_len: u64,
}

impl Journal {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(JOURNAL_LEN);
        v.extend_from_slice(&JOURNAL_MAGIC);
        v.extend_from_slice(&self.seq.to_le_bytes());
        v.push(self.state as u8);
        v.extend_from_slice(&[0u8; 3]);
        v.extend_from_slice(&self.capture_id);
        v.extend_from_slice(&self.generation.to_le_bytes());
        v.extend_from_slice(&self.parent.to_le_bytes());
        v.extend_from_slice(&self.chunk_size.to_le_bytes());
        v.extend_from_slice(&self.source_size.to_le_bytes());
        v.extend_from_slice(&self.params_hash);
        v.extend_from_slice(&self.key_check);
        v.extend_from_slice(&self.next_chunk.to_le_bytes());
        v.extend_from_slice(&self.ipart_len.to_le_bytes());
        v.extend_from_slice(&self.closed_segments.to_le_bytes());
        v.extend_from_slice(&self.open_records.to_le_bytes());
        v.extend_from_slice(&self.open_len.to_le_bytes());
        v.extend_from_slice(&[0u8; 4]);
        with_crc(v)
    }

    pub fn decode(b: &[u8]) -> Result<Self, &'static str> {
        let b = b.get(..JOURNAL_LEN).ok_or("journal slot truncated")?;
        if b[..8] != JOURNAL_MAGIC {
            return Err("not a journal slot (bad magic)");
        }
        check_crc(b, JOURNAL_LEN - 4).map_err(|_| "journal slot CRC mismatch")?;
        let mut r = Rd::new(&b[8..]);
        let seq = r.u64()?;
        let state = match r.u8()? {
            1 => JournalState::InProgress,
            2 => JournalState::Finished,
            _ => return Err("journal slot has an unknown state"),
        };
        r.bytes(3)?;
        let j = Journal {
            seq,
            state,
            capture_id: r.arr()?,
            generation: r.u32()?,
            parent: r.u32()?,
            chunk_size: r.u32()?,
            source_size: r.u64()?,
            params_hash: r.arr()?,
            key_check: r.arr()?,
            next_chunk: r.u64()?,
            ipart_len: r.u64()?,
            closed_segments: r.u32()?,
            open_records: r.u32()?,
            open_len: r.u64()?,
        };
        if !valid_chunk_size(j.chunk_size)
            || j.next_chunk > chunk_count(j.source_size, j.chunk_size)
        {
            return Err("journal slot sizes are inconsistent");
        }
        Ok(j)
    }
}

// ---------------------------------------------------------------- manifest

/// Longest source description kept in a manifest.
pub const MAX_DESC: usize = 1024;
/// Most segments one generation may have (5 digits in the name).
pub const MAX_SEGMENTS: u32 = 100_000;
/// Most generations per capture (4 digits in the name).
pub const MAX_GENERATIONS: u32 = 9999;

/// Length and hash of one segment file, as the manifest records them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentDigest {
    pub len: u64,
    /// blake3 of the whole file.
    pub hash: [u8; 32],
}

/// Everything a manifest says (the body; see FORMAT.md for the file framing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub incompat: u32,
    pub capture_id: [u8; 16],
    pub generation: u32,
    /// Parent generation of a delta (0 = none).
    pub parent: u32,
    pub name: String,
    pub chunk_size: u32,
    pub disk_size: u64,
    pub chunk_count: u64,
    pub created_unix: u64,
    pub appliance_id: Option<[u8; 32]>,
    pub source_desc: String,
    pub compress: bool,
    pub stored_chunks: u64,
    pub zero_chunks: u64,
    pub dedup_chunks: u64,
    /// Bytes of records written by this generation (headers included).
    pub stored_bytes: u64,
    pub disk_digest: [u8; 32],
    pub key_check: [u8; 32],
    pub index_len: u64,
    pub index_hash: [u8; 32],
    pub segments: Vec<SegmentDigest>,
    /// Other machines' generations whose records the index points at
    /// (present in the file only with [`INCOMPAT_PEERS`], then 1..=[`MAX_PEERS`]).
    pub peers: Vec<Peer>,
    /// blake3 of `KEYS` and of `KEYPASS` when the generation was finished (zeros for a slot
    /// the capture has not); in the file only with [`INCOMPAT_KEY_SLOTS`].
    pub key_slots: [[u8; 32]; 2],
}

/// A decoded manifest file: the body plus its framing values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    pub manifest: Manifest,
    /// blake3 of header + body: the value signatures cover.
    pub root: [u8; 32],
    /// Keyed blake3 (manifest MAC subkey) of header + body.
    pub mac: [u8; 32],
    /// Header + body as read (what `root` and `mac` cover): the MAC is checked over these
    /// bytes, not over the fields encoded again (bytes a field's value does not use, such as
    /// the appliance id of a manifest that names none, were otherwise changed unseen).
    pub signed: Vec<u8>,
}

impl Manifest {
    /// Header + body: the bytes the root hash and MAC cover.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(512 + self.segments.len() * 40);
        body.extend_from_slice(&self.capture_id);
        body.extend_from_slice(&self.generation.to_le_bytes());
        body.extend_from_slice(&self.parent.to_le_bytes());
        let name = self.name.as_bytes();
        body.push(name.len().min(255) as u8);
        body.extend_from_slice(&name[..name.len().min(255)]);
        body.extend_from_slice(&self.chunk_size.to_le_bytes());
        body.extend_from_slice(&self.disk_size.to_le_bytes());
        body.extend_from_slice(&self.chunk_count.to_le_bytes());
        body.extend_from_slice(&self.created_unix.to_le_bytes());
        body.push(u8::from(self.appliance_id.is_some()));
        body.extend_from_slice(&self.appliance_id.unwrap_or([0u8; 32]));
        let desc = self.source_desc.as_bytes();
        let desc = &desc[..desc.len().min(MAX_DESC)];
        body.extend_from_slice(&(desc.len() as u16).to_le_bytes());
        body.extend_from_slice(desc);
        body.push(u8::from(self.compress));
        for n in [
            self.stored_chunks,
            self.zero_chunks,
            self.dedup_chunks,
            self.stored_bytes,
        ] {
            body.extend_from_slice(&n.to_le_bytes());
        }
        body.extend_from_slice(&self.disk_digest);
        body.extend_from_slice(&self.key_check);
        body.extend_from_slice(&self.index_len.to_le_bytes());
        body.extend_from_slice(&self.index_hash);
        body.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        for s in &self.segments {
            body.extend_from_slice(&s.len.to_le_bytes());
            body.extend_from_slice(&s.hash);
        }
        if self.incompat & INCOMPAT_PEERS != 0 {
            let peers = &self.peers[..self.peers.len().min(MAX_PEERS)];
            body.extend_from_slice(&(peers.len() as u16).to_le_bytes());
            for p in peers {
                let n = p.name.as_bytes();
                body.push(n.len().min(255) as u8);
                body.extend_from_slice(&n[..n.len().min(255)]);
                body.extend_from_slice(&p.generation.to_le_bytes());
                body.extend_from_slice(&p.root);
            }
        }
        if self.incompat & INCOMPAT_KEY_SLOTS != 0 {
            for d in &self.key_slots {
                body.extend_from_slice(d);
            }
        }
        let mut v = Vec::with_capacity(24 + body.len() + 68);
        v.extend_from_slice(&MANIFEST_MAGIC);
        put_version(&mut v, self.incompat);
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(&body);
        v
    }

    /// The whole file: signed bytes, root hash, MAC, CRC.
    pub fn encode(&self, mac: &[u8; 32]) -> Vec<u8> {
        let mut v = self.signed_bytes();
        let root = blake3::hash(&v);
        v.extend_from_slice(root.as_bytes());
        v.extend_from_slice(mac);
        with_crc(v)
    }

    /// Decodes a manifest file and checks everything checkable without a key
    /// (CRC, root hash, field ranges). The MAC is returned, not checked.
    pub fn decode(b: &[u8]) -> Result<ManifestFile, &'static str> {
        if b.len() < 24 + 68 {
            return Err("manifest truncated");
        }
        if b[..8] != MANIFEST_MAGIC {
            return Err("not a manifest (bad magic)");
        }
        let mut r = Rd::new(&b[8..]);
        let incompat = read_version(&mut r)?;
        let body_len = r.u32()? as usize;
        let signed_len = 24usize
            .checked_add(body_len)
            .ok_or("manifest length overflow")?;
        if b.len() != signed_len + 68 {
            return Err("manifest length does not match its header");
        }
        let (root, mac) = check_trailer(b, signed_len).map_err(|f| match f {
            TrailerFault::Truncated => "truncated",
            TrailerFault::Crc => "manifest CRC mismatch",
            TrailerFault::Root => "manifest root hash mismatch",
        })?;
        let mut r = Rd::new(&b[24..signed_len]);
        let capture_id = r.arr()?;
        let generation = r.u32()?;
        let parent = r.u32()?;
        let name_len = r.u8()? as usize;
        let name =
            core::str::from_utf8(r.bytes(name_len)?).map_err(|_| "manifest name is not UTF-8")?;
        if validate_name(name).is_err() {
            return Err("manifest holds an invalid capture name");
        }
        let chunk_size = r.u32()?;
        let disk_size = r.u64()?;
        let chunk_count_v = r.u64()?;
        let created_unix = r.u64()?;
        let has_app = r.u8()?;
        let app: [u8; 32] = r.arr()?;
        let desc_len = r.u16()? as usize;
        if desc_len > MAX_DESC {
            return Err("manifest source description too long");
        }
        let desc = core::str::from_utf8(r.bytes(desc_len)?)
            .map_err(|_| "manifest source description is not UTF-8")?;
        let compress = r.u8()? != 0;
        let m = Manifest {
            incompat,
            capture_id,
            generation,
            parent,
            name: name.into(),
            chunk_size,
            disk_size,
            chunk_count: chunk_count_v,
            created_unix,
            appliance_id: (has_app != 0).then_some(app),
            source_desc: desc.into(),
            compress,
            stored_chunks: r.u64()?,
            zero_chunks: r.u64()?,
            dedup_chunks: r.u64()?,
            stored_bytes: r.u64()?,
            disk_digest: r.arr()?,
            key_check: r.arr()?,
            index_len: r.u64()?,
            index_hash: r.arr()?,
            segments: {
                let n = r.u32()?;
                if n > MAX_SEGMENTS {
                    return Err("manifest lists too many segments");
                }
                let mut segs = Vec::new();
                for _ in 0..n {
                    segs.push(SegmentDigest {
                        len: r.u64()?,
                        hash: r.arr()?,
                    });
                }
                segs
            },
            peers: Vec::new(),
            key_slots: [[0; 32]; 2],
        };
        let mut m = m;
        if incompat & INCOMPAT_PEERS != 0 {
            m.peers = decode_peers(&mut r, &m.name)?;
        }
        if incompat & INCOMPAT_KEY_SLOTS != 0 {
            m.key_slots = [r.arr()?, r.arr()?];
        }
        if r.pos() != body_len {
            return Err("manifest body has trailing bytes");
        }
        if generation == 0 || generation > MAX_GENERATIONS || parent >= generation {
            return Err("manifest generation numbers are inconsistent");
        }
        if !valid_chunk_size(chunk_size) || chunk_count(disk_size, chunk_size) != chunk_count_v {
            return Err("manifest sizes are inconsistent");
        }
        Ok(ManifestFile {
            manifest: m,
            root,
            mac,
            signed: b[..signed_len].to_vec(),
        })
    }
}

/// The peer list at the end of a MANIFEST body ([`INCOMPAT_PEERS`]):
/// count u16 (1..=[`MAX_PEERS`]), then per peer: name length u8, name,
/// generation u32, manifest root (32). A peer is never the capture itself
/// and never listed twice.
fn decode_peers(r: &mut Rd<'_>, own: &str) -> Result<Vec<Peer>, &'static str> {
    let n = r.u16()? as usize;
    if n == 0 || n > MAX_PEERS {
        return Err("manifest peer list is empty or longer than allowed");
    }
    let mut peers: Vec<Peer> = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.u8()? as usize;
        let name =
            core::str::from_utf8(r.bytes(len)?).map_err(|_| "manifest peer name is not UTF-8")?;
        if validate_name(name).is_err() || name.eq_ignore_ascii_case(own) {
            return Err("manifest peer list holds an invalid capture name");
        }
        let generation = r.u32()?;
        if generation == 0 || generation > MAX_GENERATIONS {
            return Err("manifest peer generation out of range");
        }
        let root = r.arr()?;
        if peers
            .iter()
            .any(|p| p.generation == generation && p.name.eq_ignore_ascii_case(name))
        {
            return Err("manifest peer list names a generation twice");
        }
        peers.push(Peer {
            name: name.into(),
            generation,
            root,
        });
    }
    Ok(peers)
}

/// The 56-byte payload inside each key slot (age) file.
pub const KEY_PAYLOAD_LEN: usize = 56;

/// Encodes the key slot payload: magic, capture id, data key.
pub fn encode_key_payload(capture_id: &[u8; 16], key: &[u8; 32]) -> [u8; KEY_PAYLOAD_LEN] {
    let mut p = [0u8; KEY_PAYLOAD_LEN];
    p[..8].copy_from_slice(&KEY_PAYLOAD_MAGIC);
    p[8..24].copy_from_slice(capture_id);
    p[24..].copy_from_slice(key);
    p
}

/// Decodes a key slot payload into (capture id, data key).
pub fn decode_key_payload(p: &[u8]) -> Result<([u8; 16], [u8; 32]), &'static str> {
    if p.len() != KEY_PAYLOAD_LEN || p[..8] != KEY_PAYLOAD_MAGIC {
        return Err("key slot payload is not a MotionGear data key");
    }
    let mut r = Rd::new(&p[8..]);
    Ok((r.arr()?, r.arr()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn magic(s: &str) -> [u8; 8] {
        blake3::hash(s.as_bytes()).as_bytes()[..8]
            .try_into()
            .unwrap()
    }

    #[test]
    fn magics_match_their_strings() {
        assert_eq!(SEGMENT_MAGIC, magic("MotionGear segment v1"));
        assert_eq!(RECORD_MAGIC[..], magic("MotionGear record v1")[..4]);
        assert_eq!(
            TRAILER_MAGIC[..],
            magic("MotionGear segment trailer v1")[..4]
        );
        assert_eq!(INDEX_MAGIC, magic("MotionGear index v1"));
        assert_eq!(IPART_MAGIC, magic("MotionGear index part v1"));
        assert_eq!(JOURNAL_MAGIC, magic("MotionGear journal v1"));
        assert_eq!(MANIFEST_MAGIC, magic("MotionGear manifest v1"));
        assert_eq!(KEY_PAYLOAD_MAGIC, magic("MotionGear key slot payload v1"));
    }

    #[test]
    fn names_are_validated() {
        for ok in ["web01", "a", "A-b_9", "x234567890123456789012345678901z"] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "web 01",
            "wéb",
            "../x",
            "a/b",
            "x2345678901234567890123456789012z",
        ] {
            let e = validate_name(bad).unwrap_err().to_string();
            assert!(e.contains("invalid capture name"), "{e}");
        }
        // The format's own files under MGEAR/, in any case (FAT has none).
        for reserved in ["attest", "span", "SPANMAP", "Span"] {
            let e = validate_name(reserved).unwrap_err().to_string();
            assert!(e.contains("it is reserved"), "{e}");
        }
        validate_name("spans").unwrap();
    }

    #[test]
    fn path_names_round_trip() {
        assert_eq!(segment_path("web01", 2, 3), "MGEAR/web01/G0002/SEG-00003");
        assert_eq!(parse_generation_dir("G0002"), Some(2));
        assert_eq!(parse_generation_dir("G0000"), None);
        assert_eq!(parse_generation_dir("G002"), None);
        assert_eq!(parse_segment_name("SEG-00003"), Some(3));
        assert_eq!(parse_segment_name("SEG-0003x"), None);
    }

    #[test]
    fn headers_round_trip_and_reject_flips() {
        let sh = SegmentHeader {
            incompat: 1,
            capture_id: [7; 16],
            generation: 2,
            segment: 5,
            salt: [9; 32],
        };
        let b = sh.encode();
        assert_eq!(b.len(), SEG_HEADER_LEN);
        assert_eq!(SegmentHeader::decode(&b).unwrap(), sh);
        let rh = RecordHeader {
            record: 3,
            stored_len: 100 + 16,
            plain_len: 100,
            flags: 0,
            stored_hash: [1; 32],
        };
        let b = rh.encode();
        assert_eq!(b.len(), REC_HEADER_LEN);
        assert_eq!(RecordHeader::decode(&b).unwrap(), rh);
        let tr = SegmentTrailer {
            records: 4,
            data_end: 1234,
            hash: [3; 32],
        };
        assert_eq!(TRAILER_LEN, tr.encode().len());
        assert_eq!(SegmentTrailer::decode(&tr.encode()).unwrap(), tr);
        let j = Journal {
            seq: 9,
            state: JournalState::InProgress,
            capture_id: [1; 16],
            generation: 1,
            parent: 0,
            chunk_size: MIN_CHUNK,
            source_size: 1 << 20,
            params_hash: [2; 32],
            key_check: [3; 32],
            next_chunk: 4,
            ipart_len: 500,
            closed_segments: 1,
            open_records: 2,
            open_len: 3000,
        };
        let jb = j.encode();
        assert_eq!(jb.len(), JOURNAL_LEN);
        assert_eq!(Journal::decode(&jb).unwrap(), j);
        for (bytes, dec) in [
            (
                sh.encode(),
                (|b: &[u8]| SegmentHeader::decode(b).is_ok()) as fn(&[u8]) -> bool,
            ),
            (rh.encode(), |b| RecordHeader::decode(b).is_ok()),
            (tr.encode(), |b| SegmentTrailer::decode(b).is_ok()),
            (jb, |b| Journal::decode(b).is_ok()),
        ] {
            for i in 0..bytes.len() {
                let mut m = bytes.clone();
                m[i] ^= 0x10;
                assert!(!dec(&m), "flip at byte {i} accepted");
            }
        }
    }

    #[test]
    fn manifest_round_trips_and_detects_tampering() {
        let m = Manifest {
            incompat: INCOMPAT_ZSTD,
            capture_id: [4; 16],
            generation: 2,
            parent: 1,
            name: "web01".into(),
            chunk_size: DEFAULT_CHUNK,
            disk_size: 5 << 20,
            chunk_count: 5,
            created_unix: 1_700_000_000,
            appliance_id: Some([5; 32]),
            source_desc: "/dev/sdb".into(),
            compress: true,
            stored_chunks: 3,
            zero_chunks: 1,
            dedup_chunks: 1,
            stored_bytes: 999,
            disk_digest: [6; 32],
            key_check: [7; 32],
            index_len: 428,
            index_hash: [8; 32],
            segments: alloc::vec![SegmentDigest {
                len: 10,
                hash: [9; 32]
            }],
            peers: Vec::new(),
            key_slots: [[0; 32]; 2],
        };
        let b = m.encode(&[1; 32]);
        let f = Manifest::decode(&b).unwrap();
        assert_eq!(f.manifest, m);
        assert_eq!(f.mac, [1; 32]);
        for i in 0..b.len() {
            let mut x = b.clone();
            x[i] ^= 1;
            assert!(Manifest::decode(&x).is_err(), "flip at {i} accepted");
        }
        // With a peer list (dedup across machines).
        let mut p = m.clone();
        p.incompat |= INCOMPAT_PEERS;
        p.peers = alloc::vec![
            Peer {
                name: "db01.d0".into(),
                generation: 3,
                root: [10; 32],
            },
            Peer {
                name: "db01.d1".into(),
                generation: 3,
                root: [11; 32],
            },
        ];
        let b = p.encode(&[1; 32]);
        assert_eq!(Manifest::decode(&b).unwrap().manifest, p);
        // With the key slots' digests, after the peers.
        let mut k = p.clone();
        k.incompat |= INCOMPAT_KEY_SLOTS;
        k.key_slots = [[12; 32], [0; 32]];
        let b = k.encode(&[1; 32]);
        assert_eq!(b.len(), p.encode(&[1; 32]).len() + 64);
        assert_eq!(Manifest::decode(&b).unwrap().manifest, k);
        for i in 0..b.len() {
            let mut x = b.clone();
            x[i] ^= 1;
            assert!(Manifest::decode(&x).is_err(), "flip at {i} accepted");
        }
        // A peer that is the capture itself, twice the same, or none at all.
        for bad in [
            alloc::vec![Peer {
                name: "WEB01".into(),
                generation: 1,
                root: [0; 32],
            }],
            alloc::vec![p.peers[0].clone(), p.peers[0].clone()],
            Vec::new(),
        ] {
            let mut q = p.clone();
            q.peers = bad;
            assert!(Manifest::decode(&q.encode(&[1; 32])).is_err(), "{q:?}");
        }
    }

    #[test]
    fn index_entries_round_trip() {
        let e = IndexEntry::Stored(RecordLoc {
            flags: FLAG_ZSTD,
            plain_len: 65536,
            generation: 1,
            segment: 2,
            record: 3,
            stored_len: 400,
            offset: 96,
            chunk_id: [1; 32],
            stream: 2,
        });
        let mut v = Vec::new();
        e.encode_into(&mut v);
        IndexEntry::Zero {
            plain_len: 5,
            chunk_id: [2; 32],
        }
        .encode_into(&mut v);
        assert_eq!(v.len(), 2 * ENTRY_LEN);
        assert_eq!(IndexEntry::decode(&v[..ENTRY_LEN]).unwrap(), e);
        assert_eq!(
            IndexEntry::decode(&v[ENTRY_LEN..]).unwrap(),
            IndexEntry::Zero {
                plain_len: 5,
                chunk_id: [2; 32]
            }
        );
    }
}
