//! Seed corpus for the `sync_wire` fuzz target: a whole session as both
//! sides send it (HELLO, WELCOME, PROOF with and without a signature, IDS,
//! CHUNKs carrying real sealed records of compressible and incompressible
//! chunks and an all-zero chunk, DONE, APPLIED, ERROR), as clear frames and
//! as SEALED frames whose payload is the plaintext layout (inner type ‖
//! message), so the fuzzer starts from every message's valid form.
//!
//! `cargo run --example seeds -- CORPUS_DIR` writes `CORPUS_DIR/sync_wire/seed-*`
//! (`scripts/fuzz.sh` runs it before fuzzing).

#[path = "../../src/sync/wire.rs"]
#[allow(dead_code)]
mod wire;

use std::path::Path;
use std::{env, fs};

use image_format::{DataKey, RecordSealer, StreamPlace};
use wire::{ty, Applied, Chunk, ChunkBody, Done, Hello, Ids, Proof, Refusal, Welcome};

const CS: u32 = 64 * 1024;

fn write(dir: &Path, name: &str, data: &[u8]) {
    let d = dir.join("sync_wire");
    fs::create_dir_all(&d).expect("create corpus dir");
    fs::write(d.join(format!("seed-{name}")), data).expect("write seed");
}

fn main() {
    let dir = env::args().nth(1).unwrap_or_else(|| "corpus".into());
    let dir = Path::new(&dir);
    let place = StreamPlace {
        generation: u32::MAX,
        segment: 0,
        salt: [7; 32],
    };
    let key = DataKey::from_bytes([9; 32]);
    let mut sealer = RecordSealer::new(&key, [1; 16], place, CS, 3 * CS as u64).expect("sealer");
    let text: Vec<u8> = b"seed ".iter().cycle().take(CS as usize).copied().collect();
    let mut x = 1u32;
    let noise: Vec<u8> = (0..CS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let mut chunks = Vec::new();
    for (i, plain) in [text, noise].iter().enumerate() {
        let c = sealer.encoder().encode(i as u64, plain).expect("encode");
        let id = image_format::ChunkIdKey::derive(&key, &[1; 16]).id(plain);
        let record = sealer.seal(&c).expect("seal");
        chunks.push(Chunk {
            index: i as u64,
            chunk_id: id,
            body: ChunkBody::Record(record),
        });
    }
    chunks.push(Chunk {
        index: 2,
        chunk_id: [3; 32],
        body: ChunkBody::Zero,
    });
    let mut messages = vec![
        (
            ty::HELLO,
            Hello {
                name: "web01".into(),
                size: 3 * CS as u64,
                nonce: [1; 32],
            }
            .encode(),
        ),
        (
            ty::WELCOME,
            Welcome {
                capture_id: [1; 16],
                chunk_size: CS,
                volume_size: 3 * CS as u64,
                chunk_count: 3,
                nonce: [2; 32],
                proof: [3; 32],
            }
            .encode(),
        ),
        (
            ty::PROOF,
            Proof {
                proof: [4; 32],
                signed: Some(([5; 32], [6; 64])),
            }
            .encode(),
        ),
        (
            ty::PROOF,
            Proof {
                proof: [4; 32],
                signed: None,
            }
            .encode(),
        ),
        (
            ty::IDS,
            Ids {
                first: 0,
                ids: vec![[8; 32]; 3],
            }
            .encode(),
        ),
    ];
    messages.extend(chunks.iter().map(|c| (ty::CHUNK, c.encode())));
    messages.extend([
        (
            ty::DONE,
            Done {
                sent: 3,
                digest: [10; 32],
            }
            .encode(),
        ),
        (
            ty::APPLIED,
            Applied {
                chunks: 3,
                bytes: 3 * CS as u64,
                digest: [10; 32],
            }
            .encode(),
        ),
        (ty::ERROR, Refusal::new(wire::err::BUSY, "busy").encode()),
    ]);
    let mut session = Vec::new();
    for (n, (t, p)) in messages.iter().enumerate() {
        let clear = wire::frame(*t, p);
        write(dir, &format!("{n:02}-{}", wire::type_name(*t)), &clear);
        let mut inner = vec![*t];
        inner.extend_from_slice(p);
        let sealed = wire::frame(ty::SEALED, &inner);
        write(dir, &format!("{n:02}-sealed-{}", wire::type_name(*t)), &sealed);
        session.extend_from_slice(if n < 2 { &clear } else { &sealed });
    }
    write(dir, "session", &session);
    println!("wrote {} seeds to {}", 2 * messages.len() + 1, dir.join("sync_wire").display());
}
