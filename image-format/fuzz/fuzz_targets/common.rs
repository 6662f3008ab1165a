//! Shared by the medium targets: one valid capture, built once, that each
//! input patches (file, offset, xor byte / truncate) before the decoders run.

// Each target uses a different part of this module.
#![allow(dead_code)]

use std::sync::OnceLock;

use image_format::store::MemStore;
use image_format::{CaptureParams, CaptureWriter, DataKey, Store};

pub struct Fixture {
    pub store: MemStore,
    pub key: DataKey,
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
        p.recipients = vec![image_format::age::x25519::Identity::generate().to_public()];
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
        Fixture { store, key, files }
    })
}

/// The fixture's medium with `data` applied as patches: each 6-byte group is
/// (file index, op, offset u32 LE); op < 200 xors byte `op+1` at offset,
/// op >= 200 truncates the file at offset.
pub fn patched(data: &[u8]) -> MemStore {
    let f = fixture();
    let mut m = f.store.clone();
    for p in data.chunks_exact(6) {
        let path = &f.files[p[0] as usize % f.files.len()];
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
    m
}
