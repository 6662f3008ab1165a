//! Arbitrary bytes as custody log storage: recovery, paging and
//! verification must never panic and never grow the log.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mgear_firmware::custody::{verify_log, CustodyLog};
use mgear_firmware::testing::MemLog;

fuzz_target!(|data: &[u8]| {
    let mut s = MemLog {
        data: data.to_vec(),
        fail_after: None,
    };
    let Ok(log) = CustodyLog::open(&mut s) else {
        return;
    };
    assert!(s.data.len() <= data.len());
    if let Ok(records) = log.read(&mut s, 0, usize::MAX) {
        let _ = verify_log(&records, &[0x11; 32]);
    }
});
