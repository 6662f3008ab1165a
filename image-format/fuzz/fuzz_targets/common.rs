//! Shared by the medium targets: one valid capture, built once, that each
//! input patches (file, offset, xor byte / truncate) before the decoders run.

// Each target uses a different part of this module.
#![allow(dead_code)]

use std::sync::OnceLock;

use image_format::store::MemStore;
use image_format::{CaptureParams, CaptureWriter, DataKey, Store, Unlock};

pub struct Fixture {
    pub store: MemStore,
    pub key: DataKey,
    /// The recipient identity: opens the KEYS slot.
    pub identity: Unlock,
    pub files: Vec<String>,
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut store = MemStore::new();
        let cs = 64 * 1024u32;
        let size = 6 * cs as u64 + 333;
        let mut p = CaptureParams::new("fz", size);
        p.chunk_size = cs;
        let identity = image_format::age::x25519::Identity::generate();
        p.recipients = vec![identity.to_public()];
        p.max_segment_bytes = 140_000;
        let mut w = CaptureWriter::begin(&mut store, p, None).expect("begin");
        let key = w.data_key().clone();
        let enc = w.encoder();
        for i in 0..w.chunk_count() {
            let len = image_format::layout::chunk_len(size, cs, i) as usize;
            let data: Vec<u8> = (0..len)
                .map(|j| {
                    if i % 3 == 1 {
                        0
                    } else {
                        (j as u64 * (i + 7)) as u8
                    }
                })
                .collect();
            w.append(enc.encode(i, &data).expect("encode"))
                .expect("append");
            w.checkpoint().expect("checkpoint");
        }
        w.finish().expect("finish");
        let mut files = Vec::new();
        let mut dirs = vec![String::new()];
        while let Some(d) = dirs.pop() {
            for e in store.list(&d).expect("list") {
                let p = if d.is_empty() {
                    e.name
                } else {
                    format!("{d}/{}", e.name)
                };
                match e.kind {
                    image_format::store::EntryKind::Dir => dirs.push(p),
                    image_format::store::EntryKind::File => files.push(p),
                }
            }
        }
        files.sort();
        Fixture {
            store,
            key,
            identity: Unlock::Identity(identity),
            files,
        }
    })
}

/// The fixture's medium with `data` applied as patches: each 6-byte group is
/// (file, op, offset u32 LE). The file is `files[(file & 0x7f) % n]`; op < 200
/// xors byte `op+1` at offset, op >= 200 truncates the file at offset. If any
/// group has bit 0x80 set in `file`, every checksum and hash on the medium
/// is then recomputed (CRCs, record and segment hashes, the manifest's file
/// digests, root hash and MAC), as someone editing a medium on purpose
/// would: without it, nearly every patch stops at the first CRC. (The MAC
/// needs the data key: decoders must not panic even on what its holder
/// writes.)
pub fn patched(data: &[u8]) -> MemStore {
    let f = fixture();
    let mut m = f.store.clone();
    let mut reseal_all = false;
    for p in data.chunks_exact(6) {
        reseal_all |= p[0] & 0x80 != 0;
        let path = &f.files[(p[0] & 0x7f) as usize % f.files.len()];
        let off = u32::from_le_bytes([p[2], p[3], p[4], p[5]]) as usize;
        let Some(file) = m.file_mut(path) else {
            continue;
        };
        if file.is_empty() {
            continue;
        }
        let off = off % file.len();
        if p[1] >= 200 {
            file.truncate(off);
        } else {
            file[off] ^= p[1].wrapping_add(1);
        }
    }
    if reseal_all {
        reseal(&mut m, &f.files, &f.key);
    }
    m
}

/// Writes the CRC-32 of `b[..at]` at `b[at..at + 4]` if it fits.
fn put_crc(b: &mut [u8], at: usize) {
    if at + 4 <= b.len() {
        let c = crc32fast::hash(&b[..at]);
        b[at..at + 4].copy_from_slice(&c.to_le_bytes());
    }
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Fixes a segment's header CRC, each record's stored hash and CRC, and the
/// trailer's hash and CRC (counts and offsets stay as patched). Returns
/// the hash the manifest lists for the segment.
fn reseal_segment(b: &mut [u8]) -> [u8; 32] {
    use image_format::layout::{
        RECORD_MAGIC, REC_HEADER_LEN, SEG_HEADER_LEN, TRAILER_LEN, TRAILER_MAGIC,
    };
    if b.len() >= SEG_HEADER_LEN {
        put_crc(&mut b[..SEG_HEADER_LEN], SEG_HEADER_LEN - 4);
    }
    let mut off = SEG_HEADER_LEN;
    while off + REC_HEADER_LEN <= b.len() {
        if b[off..off + 4] == TRAILER_MAGIC {
            if off + TRAILER_LEN <= b.len() {
                let h = blake3::hash(&b[..off]);
                b[off + 16..off + 48].copy_from_slice(h.as_bytes());
                put_crc(&mut b[off..off + TRAILER_LEN], TRAILER_LEN - 4);
                return *h.as_bytes();
            }
            break;
        }
        if b[off..off + 4] != RECORD_MAGIC {
            break;
        }
        let Some(stored) = le_u32(b, off + 8) else {
            break;
        };
        let start = off + REC_HEADER_LEN;
        let end = start + stored as usize;
        if end > b.len() {
            break;
        }
        let h = blake3::hash(&b[start..end]);
        b[off + 20..off + 52].copy_from_slice(h.as_bytes());
        put_crc(&mut b[off..start], REC_HEADER_LEN - 4);
        off = end;
    }
    *blake3::hash(b).as_bytes()
}

/// Offset of the manifest's `index_len` field (followed by `index_hash`,
/// the segment count and the segment list), walking the variable-length
/// body; `None` if the patched body no longer parses.
fn manifest_tail(b: &[u8]) -> Option<usize> {
    let mut at = 24 + 16 + 4 + 4;
    at += 1 + *b.get(at)? as usize; // name
    at += 4 + 8 + 8 + 8 + 1 + 32;
    let desc = u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize;
    at += 2 + desc + 1 + 4 * 8 + 32 + 32;
    (at + 8 + 32 + 4 <= b.len()).then_some(at)
}

/// The manifest MAC key, derived as `image_format::keys` does (if the label
/// changed, the seeds example's check that resealing an intact medium
/// changes nothing fails).
fn mac_key(key: &DataKey, capture_id: &[u8; 16]) -> [u8; 32] {
    *image_format::derive_subkey(key, capture_id, &[b"mgear v1 manifest mac"])
}

/// Recomputes every checksum, hash and MAC of the fixture's medium.
pub fn reseal(m: &mut MemStore, files: &[String], key: &DataKey) {
    use image_format::layout::{INDEX_HEADER_LEN, JOURNAL_LEN};
    let mut segs = Vec::new();
    let mut index = None;
    for path in files {
        let Some(b) = m.file_mut(path) else { continue };
        if path.contains("/SEG-") {
            segs.push((b.len() as u64, reseal_segment(b)));
        } else if path.ends_with("/INDEX") {
            if b.len() >= INDEX_HEADER_LEN {
                put_crc(&mut b[..INDEX_HEADER_LEN], INDEX_HEADER_LEN - 4);
            }
            index = Some((b.len() as u64, *blake3::hash(b).as_bytes()));
        } else if path.contains("/JRNL-") && b.len() >= JOURNAL_LEN {
            put_crc(&mut b[..JOURNAL_LEN], JOURNAL_LEN - 4);
        }
    }
    for path in files.iter().filter(|p| p.ends_with("/MANIFEST")) {
        let Some(b) = m.file_mut(path) else { continue };
        let Some(body) = le_u32(b, 20) else { continue };
        let signed = 24 + body as usize;
        if signed + 68 > b.len() {
            continue;
        }
        if let Some(at) = manifest_tail(&b[..signed]) {
            if let Some((len, hash)) = index {
                b[at..at + 8].copy_from_slice(&len.to_le_bytes());
                b[at + 8..at + 40].copy_from_slice(&hash);
            }
            let mut s = at + 44;
            for (len, hash) in &segs {
                if s + 40 > signed {
                    break;
                }
                b[s..s + 8].copy_from_slice(&len.to_le_bytes());
                b[s + 8..s + 40].copy_from_slice(hash);
                s += 40;
            }
        }
        let root = blake3::hash(&b[..signed]);
        b[signed..signed + 32].copy_from_slice(root.as_bytes());
        let mut capture_id = [0u8; 16];
        capture_id.copy_from_slice(&b[24..40]);
        let mac = blake3::keyed_hash(&mac_key(key, &capture_id), &b[..signed]);
        b[signed + 32..signed + 64].copy_from_slice(mac.as_bytes());
        put_crc(b, signed + 64);
    }
}
