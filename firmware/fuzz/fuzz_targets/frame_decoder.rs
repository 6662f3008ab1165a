//! Arbitrary bytes into the console stream decoder: every complete input
//! must decode or fail cleanly, and a decoded request must re-encode to a
//! frame that decodes to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mgear_firmware::protocol::{decode_frame, encode_frame, ConsoleDecoder, Input, Request};

fuzz_target!(|data: &[u8]| {
    let mut dec = ConsoleDecoder::new();
    for &b in data {
        if let Some(Input::Frame(Ok(frame))) = dec.push(b) {
            if let Ok(req) = frame.decode::<Request>() {
                let wire = encode_frame(frame.request_id, &req);
                let (id, back): (u32, Request) =
                    decode_frame(&wire).expect("re-encoded frame decodes");
                assert_eq!(id, frame.request_id);
                assert_eq!(back, req);
            }
        }
    }
});
