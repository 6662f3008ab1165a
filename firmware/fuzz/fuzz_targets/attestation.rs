//! Arbitrary bytes as a postcard attestation (what the host reads from the
//! console or a file): decoding, verification and comparison never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mgear_firmware::attest::{compare, verify_attestation, verify_seal_and_arrival, Attestation};

fuzz_target!(|data: &[u8]| {
    let half = data.len() / 2;
    let a: Result<Attestation, _> = postcard::from_bytes(&data[..half]);
    let b: Result<Attestation, _> = postcard::from_bytes(&data[half..]);
    if let Ok(a) = &a {
        let _ = verify_attestation(a, &a.body.identity);
        if let Ok(b) = &b {
            let _ = compare(&a.body, &b.body);
            let _ = verify_seal_and_arrival(a, b, &a.body.identity);
        }
    }
});
