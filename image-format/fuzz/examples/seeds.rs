//! Seed corpus for the image-format fuzz targets, taken from a real capture
//! (the targets' own fixture: six 64 KiB chunks, zero chunks, three
//! segments, checkpoints, manifest, index, journal and key slots).
//!
//! `cargo run --example seeds -- CORPUS_DIR` writes
//! `CORPUS_DIR/<target>/seed-*` (`scripts/fuzz.sh` runs it before fuzzing):
//! - decode_structures: the head of every file, every segment's first
//!   record header and trailer, and a key slot payload;
//! - verify_medium, read_capture: patch lists (see `common::patched`) that
//!   damage each file's header, middle and tail, or truncate it, each also
//!   with every checksum, hash and MAC recomputed afterwards.

#[path = "../fuzz_targets/common.rs"]
mod common;

use std::path::Path;
use std::{env, fs};

use image_format::layout::{encode_key_payload, REC_HEADER_LEN, SEG_HEADER_LEN, TRAILER_LEN};

fn write(dir: &Path, target: &str, name: &str, data: &[u8]) {
    let d = dir.join(target);
    fs::create_dir_all(&d).expect("create corpus dir");
    fs::write(d.join(format!("seed-{name}")), data).expect("write seed");
}

/// One 6-byte patch: file index, op (xor `op+1`, or truncate if >= 200), offset.
fn patch(file: usize, op: u8, offset: u32) -> Vec<u8> {
    let mut p = vec![file as u8, op];
    p.extend_from_slice(&offset.to_le_bytes());
    p
}

fn main() {
    let dir = env::args_os()
        .nth(1)
        .expect("usage: seeds CORPUS_DIR (e.g. image-format/fuzz/corpus)");
    let dir = Path::new(&dir);
    let f = common::fixture();
    let mut store = f.store.clone();
    // Resealing an intact medium must change nothing, or the resealed
    // seeds would test the harness instead of the decoders.
    let mut resealed = f.store.clone();
    common::reseal(&mut resealed, &f.files, &f.key);
    for path in &f.files {
        assert!(
            resealed.file_mut(path) == store.file_mut(path),
            "reseal changed intact {path}"
        );
    }

    for (i, path) in f.files.iter().enumerate() {
        let data = store.file_mut(path).expect("fixture file").clone();
        let len = data.len();
        let tag = path.replace('/', "_");
        write(
            dir,
            "decode_structures",
            &format!("head-{tag}"),
            &data[..len.min(4096)],
        );
        if path.contains("SEG-") && len >= SEG_HEADER_LEN + REC_HEADER_LEN + TRAILER_LEN {
            let rec = &data[SEG_HEADER_LEN..SEG_HEADER_LEN + REC_HEADER_LEN];
            write(dir, "decode_structures", &format!("record-{tag}"), rec);
            let tail = &data[len - TRAILER_LEN..];
            write(dir, "decode_structures", &format!("trailer-{tag}"), tail);
        }

        // Damage in the header, the middle and the last bytes, and a cut in
        // half: each reaches a different check of the verifier and reader.
        let len32 = u32::try_from(len).unwrap_or(u32::MAX).max(1);
        let seeds = [
            ("magic", patch(i, 0, 0)),
            ("header", patch(i, 0x3f, 20)),
            ("middle", patch(i, 0x7f, len32 / 2)),
            ("tail", patch(i, 0, len32 - 1)),
            ("cut", patch(i, 200, len32 / 2)),
        ];
        for (what, mut p) in seeds {
            write(dir, "verify_medium", &format!("{what}-{tag}"), &p);
            write(dir, "read_capture", &format!("{what}-{tag}"), &p);
            // The same damage with every checksum, hash and MAC recomputed.
            p[0] |= 0x80;
            write(dir, "verify_medium", &format!("{what}-resealed-{tag}"), &p);
            write(dir, "read_capture", &format!("{what}-resealed-{tag}"), &p);
        }
    }
    write(dir, "verify_medium", "intact", &[]);
    write(dir, "read_capture", "intact", &[]);
    write(
        dir,
        "decode_structures",
        "key-payload",
        &encode_key_payload(&[7; 16], &[9; 32]),
    );
    println!(
        "image-format seeds for {} files written to {}",
        f.files.len(),
        dir.display()
    );
}
