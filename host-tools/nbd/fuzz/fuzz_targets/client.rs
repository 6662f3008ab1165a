//! Fuzz target: arbitrary bytes from a "server" must never panic the client,
//! through the handshake (with meta contexts), reads and block status walks.
#![no_main]

use std::io;

use libfuzzer_sys::fuzz_target;
use mgear_nbd::{Client, ConnectOptions, BASE_ALLOCATION};

fuzz_target!(|data: &[u8]| {
    let opts = ConnectOptions {
        meta_contexts: vec![BASE_ALLOCATION.into(), "qemu:dirty-bitmap:b0".into()],
        read_only: false,
    };
    let reader = Box::new(io::Cursor::new(data.to_vec()));
    if let Ok(mut c) = Client::handshake(reader, Box::new(io::sink()), "fuzz", "", &opts) {
        let size = c.size();
        let mut buf = vec![0u8; (size.min(4096)) as usize];
        let _ = c.read_at(0, &mut buf);
        let _ = c.allocated_ranges(0, size);
        let _ = c.dirty_ranges("b0", 0, size);
        let _ = c.write_at(0, b"x");
        let _ = c.flush();
    }
});
