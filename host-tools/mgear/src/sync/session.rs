//! Keys, the sealed channel and the origin signature of one sync session.
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
//!   nonce ‖ target nonce): one AES-256-GCM key per direction and a proof key.
//! - Key proofs: keyed blake3 (proof subkey) of "target"/"source" ‖ 0 ‖ name.
//!   A side with a different data key learns it before any data moves.
//! - Chunks travel as the format's own sealed records ([`record_place`]):
//!   sealed by image-format's writer code (with its decode-back self-check)
//!   under a segment key whose salt is fresh per session, opened by its
//!   reader code (record number, stored hash, AEAD, zstd, keyed id).
//! - After HELLO and WELCOME every frame is SEALED (see `wire.rs`): the
//!   message type and payload (chunk index, keyed id, record, the id list,
//!   the final digest) are encrypted and authenticated, and the
//!   n-th sealed frame of a direction only opens as the n-th, so nothing can
//!   be dropped, replayed, reordered or moved into another session.
//! - Origin: the source may sign the session ([`transcript`]) with the
//!   capture site's Ed25519 key; the target checks it against the keys it
//!   pins (`serve --trust`).
//!
//! # Sealed frame payload
//!
//! ```text
//! AES-256-GCM( key = direction key, nonce = n (u64 LE) ‖ 4 zero bytes,
//!              AAD = "MGSYSEAL" ‖ capture id [16] ‖ direction u8 (1 S→T, 2 T→S) ‖ n (u64 LE),
//!              plaintext = inner message type u8 ‖ inner payload )
//! ```
//!
//! `n` counts sealed frames in that direction from 0; it is not sent.

use crate::error::Context;
use image_format::{derive_subkey, DataKey};
use zeroize::Zeroizing;

/// What the source's Ed25519 signature covers, before the transcript hash.
pub const SIGN_CONTEXT: &[u8] = b"MotionGear sync v2 session\0";

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

/// Hash of the handshake both sides saw (HELLO and WELCOME payloads, which
/// hold name, sizes, capture id and both fresh nonces): what an origin
/// signature covers, so it cannot be replayed into another session.
pub fn transcript(hello: &[u8], welcome: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("MotionGear sync v2 transcript");
    h.update(&(hello.len() as u64).to_le_bytes());
    h.update(hello);
    h.update(&(welcome.len() as u64).to_le_bytes());
    h.update(welcome);
    *h.finalize().as_bytes()
}

/// The bytes an origin signature is made over.
pub fn signed_message(transcript: &[u8; 32]) -> Vec<u8> {
    let mut m = SIGN_CONTEXT.to_vec();
    m.extend_from_slice(transcript);
    m
}

/// 32 random bytes from the operating system.
pub fn nonce() -> crate::Result<[u8; 32]> {
    let mut n = [0u8; 32];
    getrandom::getrandom(&mut n).context("the operating system's random generator failed")?;
    Ok(n)
}

/// Which side of the session this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Source,
    Target,
}

/// Per-session keys and the sealed channel's counters.
pub struct Session {
    to_target: image_format::Cipher,
    to_source: image_format::Cipher,
    proof: Zeroizing<[u8; 32]>,
    capture_id: [u8; 16],
    role: Role,
    sent: u64,
    received: u64,
}

impl core::fmt::Debug for Session {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Session(<redacted>)")
    }
}

const S2T: u8 = 1;
const T2S: u8 = 2;

impl Session {
    /// Keys of the session between `source_nonce` and `target_nonce`, as `role`.
    pub fn new(
        key: &DataKey,
        capture_id: &[u8; 16],
        source_nonce: &[u8; 32],
        target_nonce: &[u8; 32],
        role: Role,
    ) -> Self {
        let sub =
            |label: &[u8]| derive_subkey(key, capture_id, &[label, source_nonce, target_nonce]);
        Session {
            to_target: image_format::Cipher::new(&sub(b"mgear v2 sync source to target")),
            to_source: image_format::Cipher::new(&sub(b"mgear v2 sync target to source")),
            proof: sub(b"mgear v2 sync proof"),
            capture_id: *capture_id,
            role,
            sent: 0,
            received: 0,
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

    fn nonce_aad(&self, dir: u8, n: u64) -> ([u8; 12], [u8; 33]) {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&n.to_le_bytes());
        let mut aad = [0u8; 33];
        aad[..8].copy_from_slice(b"MGSYSEAL");
        aad[8..24].copy_from_slice(&self.capture_id);
        aad[24] = dir;
        aad[25..].copy_from_slice(&n.to_le_bytes());
        (nonce, aad)
    }

    /// The SEALED payload carrying message `t` with `payload`.
    pub fn seal(&mut self, t: u8, payload: &[u8]) -> crate::Result<Vec<u8>> {
        let (dir, cipher) = match self.role {
            Role::Source => (S2T, &self.to_target),
            Role::Target => (T2S, &self.to_source),
        };
        let (nonce, aad) = self.nonce_aad(dir, self.sent);
        let mut plain = Zeroizing::new(Vec::with_capacity(payload.len() + 1));
        plain.push(t);
        plain.extend_from_slice(payload);
        let sealed = cipher.seal(nonce, &aad, &plain)?;
        self.sent += 1;
        Ok(sealed)
    }

    /// The message inside the next SEALED payload from the peer; `None` if it
    /// does not authenticate as exactly that frame of this session.
    pub fn open(&mut self, sealed: &[u8]) -> Option<(u8, Vec<u8>)> {
        let (dir, cipher) = match self.role {
            Role::Source => (T2S, &self.to_source),
            Role::Target => (S2T, &self.to_target),
        };
        let (nonce, aad) = self.nonce_aad(dir, self.received);
        let mut plain = cipher.open(nonce, &aad, sealed)?;
        if plain.is_empty() {
            return None;
        }
        self.received += 1;
        let t = plain.remove(0);
        Some((t, plain))
    }
}

/// Generation number of every sync record stream: no medium reaches it
/// (generations count up from 1), so a sync record names no medium position.
pub const SYNC_GENERATION: u32 = u32::MAX;

/// Where the session's records sit in the format's key schedule: segment 0
/// of [`SYNC_GENERATION`], under a segment key salted with both sides'
/// fresh nonces. The source's nonce is new for every session, so the
/// segment key, and with it every (key, record nonce) pair, is too.
pub fn record_place(source_nonce: &[u8; 32], target_nonce: &[u8; 32]) -> image_format::StreamPlace {
    let mut h = blake3::Hasher::new_derive_key("MotionGear sync v3 record stream salt");
    h.update(source_nonce);
    h.update(target_nonce);
    image_format::StreamPlace {
        generation: SYNC_GENERATION,
        segment: 0,
        salt: *h.finalize().as_bytes(),
    }
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
    fn sealed_frames_bind_direction_order_and_session() {
        let key = DataKey::from_bytes([5; 32]);
        let pair = |tn: u8| {
            (
                Session::new(&key, &[1; 16], &[2; 32], &[tn; 32], Role::Source),
                Session::new(&key, &[1; 16], &[2; 32], &[tn; 32], Role::Target),
            )
        };
        let (mut src, mut tgt) = pair(3);
        let a = src.seal(5, b"chunk one").unwrap();
        let b = src.seal(6, b"done").unwrap();
        assert!(!a.windows(5).any(|w| w == b"chunk"), "payload is encrypted");
        // Out of order: b does not open as the first frame.
        assert!(tgt.open(&b).is_none(), "reordered");
        assert_eq!(tgt.open(&a).unwrap(), (5, b"chunk one".to_vec()));
        assert!(tgt.open(&a).is_none(), "replayed");
        assert_eq!(tgt.open(&b).unwrap(), (6, b"done".to_vec()));
        // The target cannot be fed its own direction back (reflection).
        let t0 = tgt.seal(4, b"ids").unwrap();
        let (mut src2, mut tgt2) = pair(3);
        assert!(tgt2.open(&t0).is_none(), "reflected");
        assert_eq!(src2.open(&t0).unwrap().0, 4);
        // Another session (other nonce) or another key opens nothing.
        let (mut other_src, mut other_tgt) = pair(9);
        assert!(other_tgt.open(&a).is_none());
        let mut flipped = other_src.seal(5, b"x").unwrap();
        flipped[0] ^= 1;
        assert!(other_tgt.open(&flipped).is_none(), "tampered");
        let wrong = Session::new(
            &DataKey::from_bytes([6; 32]),
            &[1; 16],
            &[2; 32],
            &[3; 32],
            Role::Target,
        );
        assert_ne!(wrong.proof("target", "web01"), src.proof("target", "web01"));
        assert_ne!(src.proof("source", "web01"), src.proof("target", "web01"));
        assert!(!format!("{src:?} {:?}", IdKey::derive(&key, &[1; 16])).contains('5'));
    }

    #[test]
    fn transcripts_differ_per_session() {
        let t = transcript(b"hello", b"welcome");
        assert_ne!(t, transcript(b"hello", b"welcomf"));
        assert_ne!(t, transcript(b"hellow", b"elcome"));
        assert!(signed_message(&t).starts_with(SIGN_CONTEXT));
    }
}
