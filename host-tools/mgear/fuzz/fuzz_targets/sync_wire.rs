//! Fuzz target: any byte stream a sync peer may send decodes, frame by frame
//! and message by message, to messages or a `WireError`, never a panic or an
//! allocation beyond the frame limit. Every decoded message encodes back to
//! bytes that decode to the same message, and every CHUNK record is handed to
//! the format's record decoder (`RecordOpener`), which must refuse or open it
//! without panicking.
#![no_main]

#[path = "../../src/sync/wire.rs"]
#[allow(dead_code)]
mod wire;

use image_format::{DataKey, RecordOpener, StreamPlace};
use libfuzzer_sys::fuzz_target;
use wire::{ChunkBody, Message};

fn encode(m: &Message) -> Option<(u8, Vec<u8>)> {
    Some(match m {
        Message::Hello(m) => (wire::ty::HELLO, m.encode()),
        Message::Welcome(m) => (wire::ty::WELCOME, m.encode()),
        Message::Proof(m) => (wire::ty::PROOF, m.encode()),
        Message::Ids(m) => (wire::ty::IDS, m.encode()),
        Message::Chunk(m) => (wire::ty::CHUNK, m.encode()),
        Message::Done(m) => (wire::ty::DONE, m.encode()),
        Message::Applied(m) => (wire::ty::APPLIED, m.encode()),
        Message::Error(m) => (wire::ty::ERROR, m.encode()),
        Message::Sealed(_) => return None,
    })
}

fuzz_target!(|data: &[u8]| {
    let (messages, _error) = wire::decode_stream(data);
    let place = StreamPlace {
        generation: u32::MAX,
        segment: 0,
        salt: [7; 32],
    };
    let mut records = RecordOpener::new(&DataKey::from_bytes([9; 32]), [1; 16], place, "fuzz");
    for m in &messages {
        if let Some((t, bytes)) = encode(m) {
            let back = Message::decode(t, &bytes)
                .unwrap_or_else(|e| panic!("{m:?} encodes to bytes that do not decode: {e}"));
            assert_eq!(&back, m);
        }
        if let Message::Chunk(c) = m {
            if let ChunkBody::Record(r) = &c.body {
                // Whatever length the sender claims, up to the format's largest chunk.
                let plain_len = (c.index % (16 << 20)) as u32 + 1;
                let _ = records.open(&c.chunk_id, plain_len, r);
            }
        }
    }
});
