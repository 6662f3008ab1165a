//! Arbitrary bytes as custody log storage: recovery, paging and
//! verification must never panic and never grow the log.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mgear_firmware::custody::{verify_log, CustodyLog, Event};
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
        // The identity the log itself names (as in a real log), so intact
        // records pass their signatures and the walk goes down the chain.
        let identity = records
            .first()
            .and_then(|r| r.decode().ok())
            .and_then(|e| match e.entry.event {
                Event::Provisioned { identity } => Some(identity),
                _ => None,
            })
            .unwrap_or([0x11; 32]);
        let _ = verify_log(&records, &identity);
    }
});
