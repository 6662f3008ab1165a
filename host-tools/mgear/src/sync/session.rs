//! Keys and records of one sync session.
//!
//! Both sides hold the capture's data key: the source in its key cache
//! (written by `mgear capture`), the target by unwrapping the capture's key
//! slot with its identity. Nothing secret crosses the wire.
//!
//! - Chunk ids are the format's keyed ids (blake3 keyed with the HKDF
//!   "mgear v1 chunk id" subkey, salt = capture id), so a target's ids of an
//!   untouched ingested volume equal the capture's INDEX entries (tested
//!   below against a real capture).
//! - Each session derives its own keys from the data key and both sides'
//!   random nonces (HKDF-SHA256, salt = capture id, info = label ‖ source
//!   nonce ‖ target nonce). Record nonces are the sequence number, so they
//!   never repeat under one key; a record from another session (a replay)
//!   does not authenticate.
//! - Key proofs: keyed blake3 (proof subkey) of "target"/"source" ‖ name.
//!   A side with a different data key learns it before any data moves.
//!
//! # Record (the sealed part of a CHUNK message)
//!
//! AES-256-GCM, nonce = seq (u64 LE) ‖ 4 zero bytes, AAD (77 bytes):
//!
//! ```text
//! 0   8   "MGSYREC1"
//! 8   16  capture id
//! 24  8   seq (u64 LE, strictly increasing within a session)
//! 32  8   chunk index (u64 LE)
//! 40  32  keyed chunk id of the plaintext
//! 72  4   plain length (u32 LE)
//! 76  1   flags (bit 0 zstd, bit 1 all-zero)
//! ```
//!
//! The target checks the tag, decompresses, checks the length against the
//! chunk's position and the keyed id against the plaintext before writing.

use anyhow::{bail, Context};
use image_format::{derive_subkey, DataKey};
use zeroize::Zeroizing;

/// CHUNK flag: payload is zstd-compressed.
pub const FLAG_ZSTD: u8 = 1;
/// CHUNK flag: the chunk is all zeros; the payload is empty.
pub const FLAG_ZERO: u8 = 2;
/// Length of the AAD above.
const AAD_LEN: usize = 77;
const ZSTD_LEVEL: i32 = 3;

/// The capture's keyed chunk-id key: ids equal to the capture's INDEX.
pub use image_format::ChunkIdKey as IdKey;

/// Digest of a whole volume as chunk ids: what both sides compare at the end.
pub fn volume_digest(size: u64, chunk_size: u32, ids: &[[u8; 32]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("MotionGear sync volume digest v1");
    h.update(&size.to_le_bytes());
    h.update(&chunk_size.to_le_bytes());
    for id in ids {
        h.update(id);
    }
    *h.finalize().as_bytes()
}

/// 32 random bytes from the operating system.
pub fn nonce() -> anyhow::Result<[u8; 32]> {
    let mut n = [0u8; 32];
    getrandom::getrandom(&mut n).context("the operating system's random generator failed")?;
    Ok(n)
}

/// Per-session keys.
pub struct Session {
    cipher: image_format::Cipher,
    proof: Zeroizing<[u8; 32]>,
    capture_id: [u8; 16],
}

impl core::fmt::Debug for Session {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Session(<redacted>)")
    }
}

/// What a record's AAD binds besides the ciphertext.
#[derive(Debug, Clone, Copy)]
pub struct RecordMeta {
    pub seq: u64,
    pub index: u64,
    pub chunk_id: [u8; 32],
    pub plain_len: u32,
    pub flags: u8,
}

impl Session {
    /// Keys of the session between `source_nonce` and `target_nonce`.
    pub fn new(
        key: &DataKey,
        capture_id: &[u8; 16],
        source_nonce: &[u8; 32],
        target_nonce: &[u8; 32],
    ) -> Self {
        let enc = derive_subkey(
            key,
            capture_id,
            &[b"mgear v1 sync record", source_nonce, target_nonce],
        );
        let proof = derive_subkey(
            key,
            capture_id,
            &[b"mgear v1 sync proof", source_nonce, target_nonce],
        );
        Session {
            cipher: image_format::Cipher::new(&enc),
            proof,
            capture_id: *capture_id,
        }
    }

    /// Proof that this side holds the data key (`role` is "source" or "target").
    pub fn proof(&self, role: &str, name: &str) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.proof);
        h.update(role.as_bytes());
        h.update(&[0]);
        h.update(name.as_bytes());
        h.finalize()
    }

    /// Keyed tag over `data` (the APPLIED digest), so a man in the middle
    /// cannot claim a sync landed.
    pub fn tag(&self, what: &str, data: &[u8]) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.proof);
        h.update(what.as_bytes());
        h.update(&[0]);
        h.update(data);
        h.finalize()
    }

    fn aad(&self, m: &RecordMeta) -> [u8; AAD_LEN] {
        let mut a = [0u8; AAD_LEN];
        a[..8].copy_from_slice(b"MGSYREC1");
        a[8..24].copy_from_slice(&self.capture_id);
        a[24..32].copy_from_slice(&m.seq.to_le_bytes());
        a[32..40].copy_from_slice(&m.index.to_le_bytes());
        a[40..72].copy_from_slice(&m.chunk_id);
        a[72..76].copy_from_slice(&m.plain_len.to_le_bytes());
        a[76] = m.flags;
        a
    }

    fn nonce(seq: u64) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(&seq.to_le_bytes());
        n
    }

    /// Encrypt a record payload.
    pub fn seal(&self, m: &RecordMeta, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
        Ok(self
            .cipher
            .seal(Self::nonce(m.seq), &self.aad(m), payload)?)
    }

    /// Decrypt a record payload; `None` if it does not authenticate.
    pub fn open(&self, m: &RecordMeta, sealed: &[u8]) -> Option<Vec<u8>> {
        self.cipher.open(Self::nonce(m.seq), &self.aad(m), sealed)
    }
}

/// True if every byte is zero.
pub fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// Payload and flags for a chunk's plaintext: empty for zeros, zstd if smaller.
pub fn pack(plaintext: &[u8]) -> anyhow::Result<(u8, Vec<u8>)> {
    if is_zero(plaintext) {
        return Ok((FLAG_ZERO, Vec::new()));
    }
    let c = zstd::bulk::compress(plaintext, ZSTD_LEVEL).context("zstd compression failed")?;
    if c.len() < plaintext.len() {
        Ok((FLAG_ZSTD, c))
    } else {
        Ok((0, plaintext.to_vec()))
    }
}

/// Plaintext of an authenticated payload; fails if it does not give exactly `plain_len` bytes.
pub fn unpack(flags: u8, payload: Vec<u8>, plain_len: u32) -> anyhow::Result<Vec<u8>> {
    let want = plain_len as usize;
    let out = match flags {
        FLAG_ZERO if payload.is_empty() => vec![0u8; want],
        FLAG_ZSTD => {
            zstd::bulk::decompress(&payload, want).context("zstd payload does not decompress")?
        }
        0 => payload,
        other => bail!("unknown chunk flags {other:#x}"),
    };
    if out.len() != want {
        bail!("payload gives {} bytes, the record says {want}", out.len());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image_format::store::DirStore;
    use image_format::{CaptureParams, CaptureReader, CaptureWriter};

    #[test]
    fn chunk_ids_equal_the_capture_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let cs = 64 * 1024u32;
        let size = 3 * cs as u64 + 500;
        let mut disk = vec![0u8; size as usize];
        for (i, b) in disk.iter_mut().enumerate().skip(cs as usize) {
            *b = (i * 7 % 251) as u8;
        }
        let mut p = CaptureParams::new("web01", size);
        p.chunk_size = cs;
        p.recipients = vec![age::x25519::Identity::generate().to_public()];
        let key = DataKey::generate().unwrap();
        let mut w = CaptureWriter::begin(store, p, Some(key.clone())).unwrap();
        let enc = w.encoder();
        for (i, c) in disk.chunks(cs as usize).enumerate() {
            w.append(enc.encode(i as u64, c).unwrap()).unwrap();
        }
        w.finish().unwrap();
        let r =
            CaptureReader::open_with_key(DirStore::open(dir.path()).unwrap(), "web01", None, &key)
                .unwrap();
        let ids = IdKey::derive(&key, &r.manifest().capture_id);
        for (i, c) in disk.chunks(cs as usize).enumerate() {
            assert_eq!(
                &ids.id(c),
                r.entry(i as u64).unwrap().chunk_id(),
                "chunk {i}"
            );
        }
    }

    #[test]
    fn records_bind_position_session_and_content() {
        let key = DataKey::from_bytes([5; 32]);
        let s = Session::new(&key, &[1; 16], &[2; 32], &[3; 32]);
        let m = RecordMeta {
            seq: 1,
            index: 9,
            chunk_id: [4; 32],
            plain_len: 5,
            flags: 0,
        };
        let sealed = s.seal(&m, b"hello").unwrap();
        assert_eq!(s.open(&m, &sealed).unwrap(), b"hello");
        assert!(
            s.open(&RecordMeta { index: 10, ..m }, &sealed).is_none(),
            "moved chunk"
        );
        assert!(
            s.open(&RecordMeta { seq: 2, ..m }, &sealed).is_none(),
            "replayed seq"
        );
        assert!(s
            .open(
                &RecordMeta {
                    chunk_id: [5; 32],
                    ..m
                },
                &sealed
            )
            .is_none());
        let other = Session::new(&key, &[1; 16], &[2; 32], &[9; 32]);
        assert!(
            other.open(&m, &sealed).is_none(),
            "record from another session"
        );
        let wrong = Session::new(&DataKey::from_bytes([6; 32]), &[1; 16], &[2; 32], &[3; 32]);
        assert_ne!(wrong.proof("target", "web01"), s.proof("target", "web01"));
        assert_ne!(s.proof("source", "web01"), s.proof("target", "web01"));
        assert!(!format!("{s:?} {:?}", IdKey::derive(&key, &[1; 16])).contains('5'));
    }

    #[test]
    fn pack_round_trips() {
        let text: Vec<u8> = b"motiongear ".iter().cycle().take(65536).copied().collect();
        let (f, p) = pack(&text).unwrap();
        assert_eq!(f, FLAG_ZSTD);
        assert!(p.len() < 1000);
        assert_eq!(unpack(f, p, 65536).unwrap(), text);
        let (f, p) = pack(&[0u8; 4096]).unwrap();
        assert_eq!((f, p.len()), (FLAG_ZERO, 0));
        assert_eq!(unpack(f, p, 4096).unwrap(), vec![0u8; 4096]);
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let (f, p) = pack(&noise).unwrap();
        assert_eq!(unpack(f, p, 4096).unwrap(), noise);
        assert!(unpack(0, vec![1, 2], 3).is_err());
        assert!(unpack(0x80, vec![], 0).is_err());
    }
}
