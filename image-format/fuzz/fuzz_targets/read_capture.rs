//! The key slot, keyed reader, full verifier and resume path on a patched medium.
#![no_main]

mod common;

use image_format::{
    unlock_data_key, verify_full, CaptureParams, CaptureReader, CaptureWriter, NoProgress, Unlock,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = common::fixture();
    let mut m = common::patched(data);
    let _ = unlock_data_key(&mut m, "fz", &f.identity);
    if let Ok(mut r) = CaptureReader::open_with_key(&mut m, "fz", None, &f.key) {
        for i in 0..r.chunk_count() {
            let _ = r.read_chunk(i);
        }
    }
    let _ = verify_full(
        &mut m,
        "fz",
        None,
        &Unlock::Key(f.key.clone()),
        &mut NoProgress,
    );
    let mut p = CaptureParams::new("fz", 6 * 65536 + 333);
    p.chunk_size = 65536;
    p.delta = true;
    let _ = CaptureWriter::begin(&mut m, p, Some(f.key.clone()));
});
