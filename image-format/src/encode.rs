//! Chunk encoding and record sealing/opening.
//!
//! [`ChunkEncoder::encode`] is the parallel half (zero detection, keyed
//! chunk id, zstd kept only when smaller, decompression self-check): it is
//! pure and runs on worker threads. Encryption is planned by
//! `CaptureWriter`, because the AES key is per segment and the nonce is the
//! record number, both assigned in chunk order; the writer then seals runs of
//! records in parallel and decrypts each again right after sealing it
//! (restic's lesson).
//!
//! AES-256-GCM comes from `ring`, not the `aes-gcm` crate: both produce the
//! same bytes (it is one standard), but ring's GHASH is aggregated
//! assembly (CLMUL/VAES) while `aes-gcm`'s polyval multiplies one block at a
//! time; profiling a capture showed polyval alone at 22% of all CPU time.

use std::borrow::Cow;
use std::sync::Arc;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::layout::{self, FLAG_ZSTD, RECORD_MAGIC, VERSION_MAJOR};

/// A chunk ready for [`crate::CaptureWriter::append`].
pub struct EncodedChunk {
    pub(crate) index: u64,
    pub(crate) plain_len: u32,
    pub(crate) chunk_id: [u8; 32],
    pub(crate) capture_id: [u8; 16],
    pub(crate) body: Body,
}

pub(crate) enum Body {
    Zero,
    /// The payload is `bytes[from..]`: a source read with `O_DIRECT` straight into the
    /// buffer puts the chunk at the first aligned byte of it, and the bytes before are not
    /// part of the record (sealing encrypts from `from`, writing starts there).
    Data {
        bytes: Vec<u8>,
        from: usize,
        compressed: bool,
    },
}

impl core::fmt::Debug for EncodedChunk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EncodedChunk")
            .field("index", &self.index)
            .field("plain_len", &self.plain_len)
            .field("zero", &self.is_zero())
            .finish_non_exhaustive()
    }
}

impl EncodedChunk {
    /// Chunk number on the disk.
    pub fn index(&self) -> u64 {
        self.index
    }
    /// True for an all-zero chunk (stored as an index entry only).
    pub fn is_zero(&self) -> bool {
        matches!(self.body, Body::Zero)
    }
    /// Length of the chunk's plaintext.
    pub fn plain_len(&self) -> u32 {
        self.plain_len
    }
    /// Bytes that would be encrypted (compressed or not); 0 for a zero chunk.
    pub fn payload_len(&self) -> usize {
        match &self.body {
            Body::Zero => 0,
            Body::Data { bytes, from, .. } => bytes.len().saturating_sub(*from),
        }
    }
}

struct EncoderInner {
    chunk_id_key: Arc<Zeroizing<[u8; 32]>>,
    capture_id: [u8; 16],
    chunk_size: u32,
    source_size: u64,
    compress: bool,
    full_zero_id: [u8; 32],
}

/// Turns plaintext chunks into [`EncodedChunk`]s. Cheap to clone; share it
/// with worker threads.
#[derive(Clone)]
pub struct ChunkEncoder {
    inner: Arc<EncoderInner>,
}

impl core::fmt::Debug for ChunkEncoder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ChunkEncoder")
            .field("chunk_size", &self.inner.chunk_size)
            .field("compress", &self.inner.compress)
            .finish_non_exhaustive()
    }
}

/// Keyed chunk id: blake3 keyed with the chunk-id subkey (never a plain
/// hash, which would tell anyone whether a known file is on the disk).
pub(crate) fn chunk_id(key: &[u8; 32], plaintext: &[u8]) -> [u8; 32] {
    *blake3::keyed_hash(key, plaintext).as_bytes()
}

/// Keyed id of `len` zero bytes without allocating a buffer per call.
pub(crate) fn zero_id(key: &[u8; 32], len: u32) -> [u8; 32] {
    static ZEROS: [u8; 64 * 1024] = [0u8; 64 * 1024];
    let mut h = blake3::Hasher::new_keyed(key);
    let mut left = len as usize;
    while left > 0 {
        let n = left.min(ZEROS.len());
        h.update(&ZEROS[..n]);
        left -= n;
    }
    *h.finalize().as_bytes()
}

/// True if every byte is zero (word-at-a-time; stops at the first that is not).
pub fn is_all_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(16);
    for c in &mut chunks {
        let mut w = [0u8; 16];
        w.copy_from_slice(c);
        if u128::from_ne_bytes(w) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&x| x == 0)
}

impl ChunkEncoder {
    pub(crate) fn new(
        chunk_id_key: Arc<Zeroizing<[u8; 32]>>,
        capture_id: [u8; 16],
        chunk_size: u32,
        source_size: u64,
        compress: bool,
    ) -> Self {
        let full_zero_id = zero_id(&chunk_id_key, chunk_size);
        ChunkEncoder {
            inner: Arc::new(EncoderInner {
                chunk_id_key,
                capture_id,
                chunk_size,
                source_size,
                compress,
                full_zero_id,
            }),
        }
    }

    /// Encodes chunk `index` (whose plaintext must be exactly the chunk's
    /// length: `chunk_size`, or less for the last chunk): zero detection,
    /// keyed id, optional zstd (kept only when smaller, and decompressed
    /// again to check it).
    pub fn encode(&self, index: u64, plaintext: &[u8]) -> Result<EncodedChunk> {
        self.encode_cow(index, Cow::Borrowed(plaintext), 0)
            .map(|(chunk, _)| chunk)
    }

    /// [`encode`](Self::encode) taking the buffer, which then becomes the
    /// record payload when it is not compressed (saves a copy per chunk).
    /// When the chunk does not keep it (all zeros, or compressed), the
    /// buffer comes back for the next read: a fresh one would have to be
    /// zeroed first, the largest cost of reading zero regions.
    pub fn encode_owned(
        &self,
        index: u64,
        plaintext: Vec<u8>,
    ) -> Result<(EncodedChunk, Option<Vec<u8>>)> {
        self.encode_cow(index, Cow::Owned(plaintext), 0)
    }

    /// [`encode_owned`](Self::encode_owned) of the plaintext `buf[from..]`: a buffer a
    /// direct read filled at its first aligned byte becomes the payload without moving
    /// it. The buffer comes back whole (with its first `from` bytes) when not kept.
    pub fn encode_owned_from(
        &self,
        index: u64,
        buf: Vec<u8>,
        from: usize,
    ) -> Result<(EncodedChunk, Option<Vec<u8>>)> {
        if from > buf.len() {
            return Err(Error::Usage(format!(
                "chunk {index} starts at byte {from} of a buffer of {}",
                buf.len()
            )));
        }
        self.encode_cow(index, Cow::Owned(buf), from)
    }

    /// The chunk at `index` known to be all zeros without reading it (a
    /// hole reported by the source).
    pub fn encode_zero(&self, index: u64) -> Result<EncodedChunk> {
        let want = self.check_index(index)?;
        Ok(self.zero_chunk(index, want))
    }

    /// The length chunk `index` must have, if it exists.
    fn check_index(&self, index: u64) -> Result<u32> {
        let i = &self.inner;
        let count = layout::chunk_count(i.source_size, i.chunk_size);
        if index >= count {
            return Err(Error::Usage(format!(
                "chunk {index} is past the end of the source ({count} chunks)"
            )));
        }
        Ok(layout::chunk_len(i.source_size, i.chunk_size, index))
    }

    fn zero_chunk(&self, index: u64, len: u32) -> EncodedChunk {
        let i = &self.inner;
        let id = if len == i.chunk_size {
            i.full_zero_id
        } else {
            zero_id(&i.chunk_id_key, len)
        };
        EncodedChunk {
            index,
            plain_len: len,
            chunk_id: id,
            capture_id: i.capture_id,
            body: Body::Zero,
        }
    }

    /// Encodes the plaintext `buf[from..]`.
    fn encode_cow(
        &self,
        index: u64,
        buf: Cow<'_, [u8]>,
        from: usize,
    ) -> Result<(EncodedChunk, Option<Vec<u8>>)> {
        let i = &self.inner;
        let want = self.check_index(index)?;
        let plaintext = buf.get(from..).unwrap_or_default();
        if plaintext.len() != want as usize {
            return Err(Error::Usage(format!(
                "chunk {index} must be {want} bytes long, got {} (read short from the source?)",
                plaintext.len()
            )));
        }
        let spare = |p: Cow<'_, [u8]>| match p {
            Cow::Owned(v) => Some(v),
            Cow::Borrowed(_) => None,
        };
        if is_all_zero(plaintext) {
            return Ok((self.zero_chunk(index, want), spare(buf)));
        }
        let id = chunk_id(&i.chunk_id_key, plaintext);
        let (body, back) = match compress(i.compress, plaintext)? {
            Some(c) => (
                Body::Data {
                    bytes: c,
                    from: 0,
                    compressed: true,
                },
                spare(buf),
            ),
            None => (
                Body::Data {
                    bytes: buf.into_owned(),
                    from,
                    compressed: false,
                },
                None,
            ),
        };
        Ok((
            EncodedChunk {
                index,
                plain_len: want,
                chunk_id: id,
                capture_id: i.capture_id,
                body,
            },
            back,
        ))
    }
}

/// zstd level 3, zstd's own default: a balance of speed and ratio; the
/// benchmark (benches/chunk_size.rs) prints the resulting throughput.
#[cfg(feature = "zstd")]
const ZSTD_LEVEL: i32 = 3;

/// Compresses if asked and worth it; verifies by decompressing.
#[cfg(feature = "zstd")]
fn compress(enabled: bool, plaintext: &[u8]) -> Result<Option<Vec<u8>>> {
    if !enabled || looks_incompressible(plaintext) {
        return Ok(None);
    }
    // One compression context per worker thread, and an output buffer no
    // larger than the input: a fresh context and a worst-case-sized buffer
    // per chunk cost more (allocation, page faults) than compressing.
    thread_local! {
        static CCTX: core::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { core::cell::RefCell::new(None) };
    }
    let mut c = Vec::with_capacity(plaintext.len().saturating_sub(1));
    let fitted = CCTX.with(|cell| -> Result<bool> {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(
                zstd::bulk::Compressor::new(ZSTD_LEVEL)
                    .map_err(|e| Error::Backend(format!("zstd context: {e}")))?,
            );
        }
        let Some(cctx) = slot.as_mut() else {
            return Ok(false);
        };
        // An error here means the output did not fit: not worth keeping.
        Ok(cctx.compress_to_buffer(plaintext, &mut c).is_ok())
    })?;
    if !fitted || c.len() >= plaintext.len() {
        return Ok(None);
    }
    let back = decompress(&c, plaintext.len())?;
    if back != plaintext {
        return Err(Error::Backend(
            "zstd round trip changed the data: refusing to store it".into(),
        ));
    }
    Ok(Some(c))
}

/// Sample windows and their size for [`looks_incompressible`]: 4 KiB of a
/// 1 MiB chunk, spread over all of it.
#[cfg(feature = "zstd")]
const SAMPLE_WINDOWS: usize = 16;
#[cfg(feature = "zstd")]
const SAMPLE_BYTES: usize = 256;
/// Byte entropy (bits per byte) of the samples above which zstd is not
/// tried. 4096 uniformly random bytes measure about 7.95; text, code,
/// zero-padded and most file-system data measure 6.5 or less; already
/// compressed or encrypted data 7.9 and more, where zstd level 3 gains
/// nothing it could keep.
#[cfg(feature = "zstd")]
const INCOMPRESSIBLE_BITS: f64 = 7.8;

/// Cheap check before zstd: the byte entropy of 16 windows of 256 bytes
/// spread over the chunk. Incompressible chunks (random, encrypted,
/// already compressed data) then skip a zstd pass that would be thrown
/// away (its output is kept only when smaller). What this can miss: a chunk
/// whose every sampled window is random but which repeats itself at long
/// distance; it is then stored uncompressed, as it would be without zstd.
#[cfg(feature = "zstd")]
fn looks_incompressible(plaintext: &[u8]) -> bool {
    if plaintext.len() < SAMPLE_WINDOWS * SAMPLE_BYTES * 4 {
        return false;
    }
    let mut counts = [0u32; 256];
    let step = plaintext.len() / SAMPLE_WINDOWS;
    for w in 0..SAMPLE_WINDOWS {
        for &b in &plaintext[w * step..w * step + SAMPLE_BYTES] {
            counts[usize::from(b)] += 1;
        }
    }
    let n = (SAMPLE_WINDOWS * SAMPLE_BYTES) as f64;
    let bits: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    bits >= INCOMPRESSIBLE_BITS
}

#[cfg(not(feature = "zstd"))]
fn compress(_enabled: bool, _plaintext: &[u8]) -> Result<Option<Vec<u8>>> {
    Ok(None)
}

/// Decompresses a record payload that must yield exactly `plain_len` bytes.
#[cfg(feature = "zstd")]
pub(crate) fn decompress(c: &[u8], plain_len: usize) -> Result<Vec<u8>> {
    let out =
        zstd::bulk::decompress(c, plain_len).map_err(|e| Error::Backend(format!("zstd: {e}")))?;
    if out.len() != plain_len {
        return Err(Error::Backend(format!(
            "zstd gave {} bytes, expected {plain_len}",
            out.len()
        )));
    }
    Ok(out)
}

/// Decompresses a record payload into `out`, which it must fill exactly.
#[cfg(feature = "zstd")]
pub(crate) fn decompress_into(c: &[u8], out: &mut [u8]) -> Result<()> {
    let n = zstd::bulk::decompress_to_buffer(c, out)
        .map_err(|e| Error::Backend(format!("zstd: {e}")))?;
    if n != out.len() {
        return Err(Error::Backend(format!(
            "zstd gave {n} bytes, expected {}",
            out.len()
        )));
    }
    Ok(())
}

#[cfg(not(feature = "zstd"))]
pub(crate) fn decompress_into(_c: &[u8], _out: &mut [u8]) -> Result<()> {
    Err(Error::Backend(
        "record is zstd-compressed but this build has no zstd feature".into(),
    ))
}

#[cfg(not(feature = "zstd"))]
pub(crate) fn decompress(_c: &[u8], _plain_len: usize) -> Result<Vec<u8>> {
    Err(Error::Backend(
        "record is zstd-compressed but this build has no zstd feature".into(),
    ))
}

/// What a record's AEAD binds besides its ciphertext.
pub(crate) struct RecordAad<'a> {
    pub capture_id: &'a [u8; 16],
    pub generation: u32,
    pub segment: u32,
    pub record: u32,
    pub chunk_id: &'a [u8; 32],
    pub plain_len: u32,
    pub stored_len: u32,
    pub flags: u8,
}

impl RecordAad<'_> {
    fn bytes(&self) -> [u8; 75] {
        let mut a = [0u8; 75];
        a[..4].copy_from_slice(&RECORD_MAGIC);
        a[4..6].copy_from_slice(&VERSION_MAJOR.to_le_bytes());
        a[6..22].copy_from_slice(self.capture_id);
        a[22..26].copy_from_slice(&self.generation.to_le_bytes());
        a[26..30].copy_from_slice(&self.segment.to_le_bytes());
        a[30..34].copy_from_slice(&self.record.to_le_bytes());
        a[34..66].copy_from_slice(self.chunk_id);
        a[66..70].copy_from_slice(&self.plain_len.to_le_bytes());
        a[70..74].copy_from_slice(&self.stored_len.to_le_bytes());
        a[74] = self.flags;
        a
    }
}

/// AES-256-GCM under one derived key (a segment's, an index blob's, or a
/// sync session's). The caller owns nonce uniqueness: every user derives a
/// fresh key per segment/blob/session and counts nonces within it.
pub struct Cipher(LessSafeKey);

impl Cipher {
    /// A cipher for `key` (32 bytes, from HKDF).
    pub fn new(key: &[u8; 32]) -> Self {
        // AES-256 accepts every 32-byte key, so this cannot fail.
        let unbound = UnboundKey::new(&AES_256_GCM, key)
            .unwrap_or_else(|_| unreachable!("AES-256-GCM takes any 32-byte key"));
        Cipher(LessSafeKey::new(unbound))
    }

    /// Ciphertext followed by the 16-byte tag.
    pub fn seal(&self, nonce: [u8; 12], aad: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(plain.len() + layout::TAG_LEN);
        out.extend_from_slice(plain);
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out,
            )
            .map_err(|_| Error::Backend("AES-GCM encryption failed".into()))?;
        Ok(out)
    }

    /// Encrypts `buf[from..]` in place and appends the tag: records are built
    /// in their final buffer, header first, so the ciphertext is never copied.
    fn seal_tail(&self, nonce: [u8; 12], aad: &[u8], buf: &mut Vec<u8>, from: usize) -> Result<()> {
        let Some(tail) = buf.get_mut(from..) else {
            return Err(Error::Usage(
                "seal offset past the end of the buffer".into(),
            ));
        };
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), tail)
            .map_err(|_| Error::Backend("AES-GCM encryption failed".into()))?;
        buf.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// The plaintext of `ct` (ciphertext + tag); `None` if it does not authenticate.
    pub fn open(&self, nonce: [u8; 12], aad: &[u8], ct: &[u8]) -> Option<Vec<u8>> {
        let mut buf = ct.to_vec();
        let n = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .ok()?
            .len();
        buf.truncate(n);
        Some(buf)
    }
}

fn record_nonce(record: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&record.to_le_bytes());
    n
}

/// Encrypts the record payload in `rec[from..]` in place under its segment
/// cipher and appends the tag.
pub(crate) fn seal_record_in_place(
    cipher: &Cipher,
    aad: &RecordAad<'_>,
    rec: &mut Vec<u8>,
    from: usize,
) -> Result<()> {
    cipher.seal_tail(record_nonce(aad.record), &aad.bytes(), rec, from)
}

/// Decrypts a record payload; `None` if authentication fails.
pub(crate) fn open_record(cipher: &Cipher, aad: &RecordAad<'_>, stored: &[u8]) -> Option<Vec<u8>> {
    cipher.open(record_nonce(aad.record), &aad.bytes(), stored)
}

/// Decrypts the record payload in `rec[from..]` in place, moving the
/// plaintext to the front of `rec` (ring does it in the same pass): no copy
/// of the record on the read path. The plaintext's length, `None` if
/// authentication fails (`rec` then holds no usable bytes).
pub(crate) fn open_record_in(
    cipher: &Cipher,
    aad: &RecordAad<'_>,
    rec: &mut [u8],
    from: usize,
) -> Option<usize> {
    if from > rec.len() {
        return None;
    }
    cipher
        .0
        .open_within(
            Nonce::assume_unique_for_key(record_nonce(aad.record)),
            Aad::from(&aad.bytes()),
            rec,
            from..,
        )
        .ok()
        .map(|plain| plain.len())
}

/// Seals a whole index blob (INDEX file or IPART batch): nonce 0 is safe
/// because every blob has its own key from a fresh random salt.
pub(crate) fn seal_blob(cipher: &Cipher, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
    cipher.seal([0u8; 12], aad, plain)
}

/// Opens an index blob; `None` if authentication fails.
pub(crate) fn open_blob(cipher: &Cipher, aad: &[u8], ct: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    cipher.open([0u8; 12], aad, ct).map(Zeroizing::new)
}

/// The record flag of an encoded payload.
pub(crate) fn flags_of(compressed: bool) -> u8 {
    if compressed {
        FLAG_ZSTD
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random and already-compressed chunks skip zstd; text, code-like and
    /// partly zero chunks, and short chunks, still go through it and shrink.
    #[cfg(feature = "zstd")]
    #[test]
    fn incompressible_chunks_are_detected_before_zstd() {
        use rand::{RngCore, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
        let mut random = vec![0u8; 1 << 20];
        rng.fill_bytes(&mut random);
        assert!(looks_incompressible(&random));
        let text: Vec<u8> = (0..1u32 << 20)
            .map(|i| b"The quick brown fox jumps over the lazy dog.\n"[(i % 45) as usize])
            .collect();
        let mut half_zero = random.clone();
        half_zero[..1 << 19].fill(0);
        let mut bytes_0_to_63 = random.clone();
        bytes_0_to_63.iter_mut().for_each(|b| *b &= 0x3f);
        for (what, chunk) in [
            ("text", &text),
            ("half zero", &half_zero),
            ("6-bit", &bytes_0_to_63),
        ] {
            assert!(!looks_incompressible(chunk), "{what}");
            let c = compress(true, chunk).unwrap().expect(what);
            assert!(c.len() < chunk.len(), "{what}");
        }
        assert!(!looks_incompressible(&random[..1000]));
        assert_eq!(compress(true, &random).unwrap(), None);
    }

    /// The record cipher is plain AES-256-GCM: test cases 13 and 14 of the
    /// GCM specification (McGrew and Viega), so any implementation reads our media.
    #[test]
    fn cipher_is_standard_aes_256_gcm() {
        let c = Cipher::new(&[0u8; 32]);
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            hex(&c.seal([0; 12], &[], &[]).unwrap()),
            "530f8afbc74536b9a963b4f1c4cb738b"
        );
        let ct = c.seal([0; 12], &[], &[0u8; 16]).unwrap();
        assert_eq!(
            hex(&ct),
            "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"
        );
        assert_eq!(c.open([0; 12], &[], &ct).unwrap(), vec![0u8; 16]);
        let mut bad = ct.clone();
        bad[3] ^= 1;
        assert!(c.open([0; 12], &[], &bad).is_none());
        assert!(c.open([0; 12], b"other aad", &ct).is_none());
    }

    /// 64 KiB of incompressible bytes (xorshift32 from `seed`).
    fn noise(seed: u32) -> Vec<u8> {
        let mut x = seed;
        (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    #[test]
    fn owned_buffers_come_back_unless_kept() {
        let e = enc(true);
        let (z, back) = e.encode_owned(0, vec![0u8; 65536]).unwrap();
        assert!(z.is_zero());
        assert_eq!(
            back.map(|b| b.len()),
            Some(65536),
            "zero chunk keeps nothing"
        );
        let hole = e.encode_zero(0).unwrap();
        assert_eq!((hole.chunk_id, hole.plain_len), (z.chunk_id, z.plain_len));
        let last = e.encode_zero(3).unwrap();
        assert_eq!(last.plain_len, 100);
        assert_eq!(last.chunk_id, e.encode(3, &[0u8; 100]).unwrap().chunk_id);
        assert!(e.encode_zero(4).is_err(), "past the end");
        let (c, back) = e.encode_owned(1, vec![b'a'; 65536]).unwrap();
        assert!(
            c.payload_len() < 65536 && back.is_some(),
            "compressed: input comes back"
        );
        let noise = noise(1);
        let (c, back) = e.encode_owned(2, noise.clone()).unwrap();
        assert!(
            back.is_none(),
            "stored as is: the buffer became the payload"
        );
        assert_eq!(c.payload_len(), 65536);
        assert_eq!(c.chunk_id, e.encode(2, &noise).unwrap().chunk_id);
    }

    fn enc(compress: bool) -> ChunkEncoder {
        ChunkEncoder::new(
            Arc::new(Zeroizing::new([3; 32])),
            [1; 16],
            65536,
            3 * 65536 + 100,
            compress,
        )
    }

    #[test]
    fn zero_detection_and_ids() {
        let e = enc(true);
        let z = e.encode(0, &[0u8; 65536]).unwrap();
        assert!(z.is_zero());
        assert_eq!(z.chunk_id, chunk_id(&[3; 32], &[0u8; 65536]));
        let last = e.encode(3, &[0u8; 100]).unwrap();
        assert_eq!(last.chunk_id, chunk_id(&[3; 32], &[0u8; 100]));
        let mut d = vec![0u8; 65536];
        d[65535] = 1;
        let c = e.encode(1, &d).unwrap();
        assert!(!c.is_zero());
        assert_eq!(c.chunk_id, chunk_id(&[3; 32], &d));
        assert_ne!(
            c.chunk_id,
            *blake3::hash(&d).as_bytes(),
            "chunk ids must be keyed"
        );
    }

    #[test]
    fn wrong_lengths_and_indexes_are_refused() {
        let e = enc(false);
        assert!(e.encode(0, &[1u8; 100]).is_err());
        assert!(e.encode(3, &[1u8; 65536]).is_err());
        assert!(e.encode(4, &[1u8; 100]).is_err());
    }

    #[cfg(feature = "zstd")]
    #[test]
    fn compression_kept_only_when_smaller() {
        let e = enc(true);
        let text: Vec<u8> = b"hello motiongear "
            .iter()
            .cycle()
            .take(65536)
            .copied()
            .collect();
        let c = e.encode(0, &text).unwrap();
        assert!(matches!(
            c.body,
            Body::Data {
                compressed: true,
                ..
            }
        ));
        assert!(c.payload_len() < 65536);
        let noise = noise(0x1234_5678);
        let n = e.encode(1, &noise).unwrap();
        assert!(matches!(
            n.body,
            Body::Data {
                compressed: false,
                ..
            }
        ));
        assert_eq!(n.payload_len(), 65536);
    }
}
