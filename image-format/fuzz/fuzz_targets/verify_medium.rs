//! The keyless verifier, listing and digests on a patched medium.
#![no_main]

mod common;

use image_format::{list_captures, medium_digests, verify_keyless, NoProgress};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut m = common::patched(data);
    let _ = verify_keyless(&mut m, &mut NoProgress);
    let _ = list_captures(&mut m);
    let _ = medium_digests(&mut m);
});
