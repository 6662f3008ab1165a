//! Appliance state machine, block service, PIN, erase, seal/arrival and
//! console tests on the in-memory fake platform.

use alloc::string::String;
use alloc::vec::Vec;

use super::*;
use crate::attest::{verify_attestation, verify_seal_and_arrival};
use crate::custody::verify_log;
use crate::protocol::{decode_frame, FrameDecoder};
use crate::testing::FakePlatform;

const PIN: &str = "314159";
const DISK: usize = 320 * 1024;

fn cfg() -> Config {
    Config {
        pin_iterations: 10,
        backoff_base_ms: 1_000,
        backoff_max_ms: 8_000,
        region_size: 64 * 1024,
        ..Config::default()
    }
}

const SEG0: &str = "MGEAR/web01/G0001/SEG-00000";

/// Write a real capture `web01` (recipient and passphrase key slots, four
/// 64 KiB chunks, no compression) for the keyless verifier to check.
fn write_capture(files: &mut image_format::store::MemStore) {
    use image_format::age::secrecy::SecretString;
    use image_format::{CaptureParams, CaptureWriter};
    let size = 3 * 64 * 1024 + 1000;
    let mut params = CaptureParams::new("web01", size);
    params.chunk_size = 64 * 1024;
    params.compress = false;
    params.recipients = alloc::vec![image_format::age::x25519::Identity::generate().to_public()];
    params.passphrase = Some(SecretString::from(String::from("correct horse")));
    params.passphrase_work_factor = Some(4);
    let mut w = CaptureWriter::begin(&mut *files, params, None).unwrap();
    let enc = w.encoder();
    for i in 0..4u64 {
        let len = if i == 3 { 1000 } else { 64 * 1024 };
        let data: Vec<u8> = (0..len).map(|j| (j as u64 * 31 + i * 7) as u8).collect();
        w.append(enc.encode(i, &data).unwrap()).unwrap();
    }
    w.finish().unwrap();
}

/// A fake medium holding one verified capture, and raw bytes with a pattern.
fn platform(seed: u64) -> FakePlatform {
    let mut p = FakePlatform::new(DISK, seed);
    write_capture(&mut p.files);
    for (i, b) in p.disk.data.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    p
}

fn provisioned(seed: u64) -> Appliance<FakePlatform> {
    let mut a = Appliance::new(platform(seed), cfg()).unwrap();
    assert!(matches!(
        a.handle(Request::Provision { pin: Pin::new(PIN) }),
        Response::Provisioned { .. }
    ));
    a
}

fn unlock(a: &mut Appliance<FakePlatform>, pin: &str) -> Response {
    a.handle(Request::Unlock { pin: Pin::new(pin) })
}

fn code(r: &Response) -> Option<ErrorCode> {
    match r {
        Response::Error { code, .. } => Some(*code),
        _ => None,
    }
}

fn pubkey(a: &mut Appliance<FakePlatform>) -> [u8; 32] {
    a.info().identity_pubkey.unwrap()
}

fn log_entries(a: &mut Appliance<FakePlatform>) -> Vec<custody::LogEntry> {
    let mut records = Vec::new();
    loop {
        match a.handle(Request::Log {
            from: records.len() as u64,
        }) {
            Response::LogRecords { records: page, .. } if page.is_empty() => break,
            Response::LogRecords { records: page, .. } => records.extend(page),
            other => panic!("unexpected {other:?}"),
        }
    }
    let pk = pubkey(a);
    verify_log(&records, &pk).unwrap()
}

const CHALLENGE: [u8; 32] = [0x5a; 32];

fn arrive(a: &mut Appliance<FakePlatform>) -> Response {
    a.handle(Request::Arrival {
        challenge: CHALLENGE,
    })
}

fn reboot(a: Appliance<FakePlatform>, seed: u64) -> Appliance<FakePlatform> {
    Appliance::new(a.p.after_power_loss(seed), cfg()).unwrap()
}

/// A power cut that takes the provisioning record: the appliance stays a factory one, and
/// provisioning again starts the log with its record. It was provisioned already (the record
/// came after the commit point), with a log that had no provisioning record, which
/// `log --verify` fails as a log deleted.
#[test]
fn a_provisioned_appliance_always_logged_its_provisioning() {
    let mut a = Appliance::new(platform(40), cfg()).unwrap();
    a.p.log.fail_after = Some(0);
    let r = a.handle(Request::Provision { pin: Pin::new(PIN) });
    assert_eq!(code(&r), Some(ErrorCode::Storage), "{r:?}");
    let mut a = reboot(a, 41);
    assert_eq!(a.state(), DeviceState::Factory);
    assert!(matches!(
        a.handle(Request::Provision { pin: Pin::new(PIN) }),
        Response::Provisioned { .. }
    ));
    let events: Vec<_> = log_entries(&mut a).into_iter().map(|e| e.event).collect();
    assert!(
        matches!(events.as_slice(), [Event::Provisioned { .. }]),
        "{events:?}"
    );
}

#[test]
fn factory_has_no_default_pin_and_provisions_once() {
    let mut a = Appliance::new(platform(1), cfg()).unwrap();
    assert_eq!(a.state(), DeviceState::Factory);
    assert_eq!(
        code(&unlock(&mut a, "000000")),
        Some(ErrorCode::NotProvisioned)
    );
    assert_eq!(
        code(&a.handle(Request::Provision {
            pin: Pin::new("12")
        })),
        Some(ErrorCode::BadPin)
    );
    assert!(a.block_write(0, &[1; 512]).is_err());
    let r = a.handle(Request::Provision { pin: Pin::new(PIN) });
    let Response::Provisioned {
        identity_pubkey,
        fingerprint,
    } = r
    else {
        panic!("{r:?}")
    };
    assert_eq!(fingerprint, attest::full_fingerprint(&identity_pubkey));
    assert_eq!(a.state(), DeviceState::Locked);
    assert_eq!(
        code(&a.handle(Request::Provision {
            pin: Pin::new("999999")
        })),
        Some(ErrorCode::AlreadyProvisioned)
    );
    // The PIN is stored only as a salted hash.
    let stored = a.p.secrets.slots.get(SecretSlot::PinHash.name()).unwrap();
    assert!(!stored.windows(PIN.len()).any(|w| w == PIN.as_bytes()));
    // Survives a reboot with the same identity, locked.
    let mut a = reboot(a, 2);
    assert_eq!(a.state(), DeviceState::Locked);
    assert_eq!(pubkey(&mut a), identity_pubkey);
    let events: Vec<_> = log_entries(&mut a).into_iter().map(|e| e.event).collect();
    assert_eq!(
        events[0],
        custody::Event::Provisioned {
            identity: identity_pubkey
        }
    );
    assert_eq!(events[1], custody::Event::PowerUp { boot: 2 });
}

#[test]
fn writes_only_while_unlocked_and_counted() {
    let mut a = provisioned(3);
    assert_eq!(
        a.block_write(512, &[9; 512]),
        Err(BlockError::WriteProtected(DeviceState::Locked))
    );
    assert_eq!(unlock(&mut a, PIN), Response::Unlocked);
    assert!(a.medium_writable());
    // Unaligned write spanning three blocks is read-modify-written.
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    let before = a.p.disk.data.clone();
    a.block_write(700, &data).unwrap();
    let mut back = alloc::vec![0u8; 1200];
    a.block_read(600, &mut back).unwrap();
    assert_eq!(&back[..100], &before[600..700]);
    assert_eq!(&back[100..1100], &data[..]);
    assert_eq!(&back[1100..], &before[1700..1800]);
    assert_eq!(
        a.block_write(DISK as u64 - 10, &[0; 20]),
        Err(BlockError::OutOfRange)
    );
    assert_eq!(
        a.block_read(u64::MAX, &mut [0; 1]),
        Err(BlockError::OutOfRange)
    );
    a.block_flush().unwrap();
    assert_eq!(a.info().counters.writes, 1);
    assert_eq!(a.handle(Request::Lock), Response::Locked);
    assert!(a.block_write(0, &[0; 512]).is_err());
    assert_eq!(a.info().counters.refused_writes, 2);
}

/// A medium whose flush fails when the appliance is locked (a write-back error): it is
/// locked all the same (writes refused), the custody log records the lock, and the answer
/// is the storage error. The log missed the lock before.
#[test]
fn a_lock_whose_flush_fails_is_still_a_lock_in_the_custody_log() {
    let mut a = provisioned(3);
    assert_eq!(unlock(&mut a, PIN), Response::Unlocked);
    a.p.disk.flush_error = Some("write-back error");
    assert_eq!(code(&a.handle(Request::Lock)), Some(ErrorCode::Storage));
    assert!(!a.medium_writable());
    assert_eq!(a.state(), DeviceState::Locked);
    let events: Vec<_> = log_entries(&mut a).into_iter().map(|e| e.event).collect();
    assert_eq!(events.last(), Some(&custody::Event::Lock), "{events:?}");
}

/// A PIN no rule admits (typed short or long on the console) is refused without using an
/// attempt: each cost one of the ten before the erase.
#[test]
fn a_pin_no_rule_admits_uses_no_attempt() {
    let mut a = provisioned(6);
    for bad in ["short", &"Y".repeat(80), "12 34 56"] {
        let r = unlock(&mut a, bad);
        let Response::Error {
            code: ErrorCode::BadPin,
            message,
        } = &r
        else {
            panic!("{r:?}")
        };
        assert!(message.contains("no attempt was used"), "{message}");
    }
    assert_eq!(a.info().counters.failed_pins, 0);
    assert!(a.handle_line("unlock short").contains("BadPin"));
    assert_eq!(a.info().counters.failed_pins, 0);
    assert_eq!(code(&unlock(&mut a, "000000")), Some(ErrorCode::WrongPin));
    assert_eq!(a.info().counters.failed_pins, 1);
}

#[test]
fn backoff_grows_and_survives_reboot() {
    let mut a = provisioned(4);
    for _ in 0..3 {
        assert_eq!(code(&unlock(&mut a, "000000")), Some(ErrorCode::WrongPin));
    }
    // Three failures: back-off of 1 s before the next attempt.
    assert_eq!(code(&unlock(&mut a, PIN)), Some(ErrorCode::BackOff));
    assert_eq!(
        a.info().counters.failed_pins,
        3,
        "refused attempts are not counted"
    );
    a.p.clock.now_ms += 1_000;
    assert_eq!(code(&unlock(&mut a, "000000")), Some(ErrorCode::WrongPin));
    a.p.clock.now_ms += 1_000;
    assert_eq!(
        code(&unlock(&mut a, PIN)),
        Some(ErrorCode::BackOff),
        "second delay is 2 s"
    );
    // A reboot does not reset the wait.
    let mut a = reboot(a, 5);
    assert_eq!(a.info().counters.failed_pins, 4);
    assert_eq!(code(&unlock(&mut a, PIN)), Some(ErrorCode::BackOff));
    assert!(a.info().retry_after_ms > 0);
    a.p.clock.now_ms += 2_000;
    assert_eq!(unlock(&mut a, PIN), Response::Unlocked);
    assert_eq!(a.info().counters.failed_pins, 0);
    assert_eq!(a.info().counters.total_failed_pins, 4);
}

fn wrong_pins_until_erased(a: &mut Appliance<FakePlatform>) {
    for i in 1..=10u32 {
        a.p.clock.now_ms += 10_000;
        let r = unlock(a, "271828");
        if i < 10 {
            assert_eq!(code(&r), Some(ErrorCode::WrongPin), "attempt {i}");
        } else {
            assert_eq!(code(&r), Some(ErrorCode::Erased), "attempt {i}");
        }
    }
}

#[test]
fn ten_wrong_pins_crypto_erase() {
    let mut a = provisioned(6);
    let pk = pubkey(&mut a);
    wrong_pins_until_erased(&mut a);
    assert_eq!(a.state(), DeviceState::Erased);
    // Key slot files are gone, other files stay.
    assert_eq!(a.p.files.len("MGEAR/web01/KEYS").unwrap(), None);
    assert_eq!(a.p.files.len("MGEAR/web01/KEYPASS").unwrap(), None);
    assert!(a
        .p
        .files
        .len("MGEAR/web01/G0001/MANIFEST")
        .unwrap()
        .is_some());
    // Secrets destroyed, public key kept for the log.
    assert!(!a.p.secrets.slots.contains_key(SecretSlot::Identity.name()));
    assert!(!a.p.secrets.slots.contains_key(SecretSlot::PinHash.name()));
    assert_eq!(pubkey(&mut a), pk);
    assert_eq!(code(&unlock(&mut a, PIN)), Some(ErrorCode::Erased));
    // Never provisioned again, and it says so (not "already provisioned").
    match a.handle(Request::Provision { pin: Pin::new(PIN) }) {
        Response::Error { code, message } => {
            assert_eq!(code, ErrorCode::AlreadyProvisioned);
            assert!(message.contains("crypto-erased"), "{message}");
        }
        r => panic!("{r:?}"),
    }
    assert_eq!(a.state(), DeviceState::Erased);
    assert!(a.block_write(0, &[0; 512]).is_err());
    let events: Vec<_> = log_entries(&mut a).into_iter().map(|e| e.event).collect();
    assert_eq!(
        events.last(),
        Some(&custody::Event::Erase {
            reason: EraseReason::PinLockout,
            key_slots: 2,
            overwrite_medium: false
        })
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, custody::Event::WrongPin { .. }))
            .count(),
        10
    );
    // Still erased after a reboot; nothing more is logged without a key.
    let mut a = reboot(a, 7);
    assert_eq!(a.state(), DeviceState::Erased);
    assert_eq!(log_entries(&mut a).len(), events.len());
}

/// A wrong PIN logged, and the power cut before the check's mark was cleared: the next
/// power-up logged the same attempt again as cut off (one attempt, two records, "4 ever"
/// beside five).
#[test]
fn a_wrong_pin_logged_before_a_power_cut_is_not_logged_again() {
    let mut a = provisioned(15);
    // The pre-check counter write gets through, the one after the record does not.
    a.p.secrets.writes_left = Some(1);
    assert_eq!(code(&unlock(&mut a, "000000")), Some(ErrorCode::Storage));
    let mut a = reboot(a, 16);
    assert_eq!(a.st.counters.failed_pins, 1);
    assert!(!a.st.pin_check);
    let events: Vec<Event> = log_entries(&mut a).into_iter().map(|e| e.event).collect();
    assert!(
        events.ends_with(&[Event::WrongPin { failures: 1 }, Event::PowerUp { boot: 2 }]),
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::PinCheckCutOff { .. })),
        "{events:?}"
    );
}

#[test]
fn power_cut_during_pin_check_still_counts() {
    let mut a = provisioned(8);
    // Only the pre-check counter write gets through.
    a.p.secrets.writes_left = Some(1);
    assert_eq!(code(&unlock(&mut a, "000000")), Some(ErrorCode::Storage));
    let a = reboot(a, 9);
    assert_eq!(a.st.counters.failed_pins, 1);
}

/// The correct PIN, the power cut while it is checked: the attempt stays counted (in a row
/// and ever, which said "1 in a row (0 ever)"), and the next power-up logs it as cut off
/// (nothing was logged: a flaky supply and a typo later read as an unexplained lockout).
#[test]
fn a_pin_check_cut_off_by_power_is_counted_and_logged() {
    let mut a = provisioned(12);
    a.p.secrets.writes_left = Some(1);
    assert_eq!(code(&unlock(&mut a, PIN)), Some(ErrorCode::Storage));
    let mut a = reboot(a, 13);
    assert_eq!(a.st.counters.failed_pins, 1);
    assert_eq!(a.st.counters.total_failed_pins, 1);
    assert!(!a.st.pin_check, "said once");
    let events: Vec<Event> = log_entries(&mut a).into_iter().map(|e| e.event).collect();
    assert!(
        events.ends_with(&[
            Event::PowerUp { boot: 2 },
            Event::PinCheckCutOff { failures: 1 }
        ]),
        "{events:?}"
    );
    // The next power-up has nothing to say of it; the correct PIN forgives it.
    let mut a = reboot(a, 14);
    let after: Vec<Event> = log_entries(&mut a).into_iter().map(|e| e.event).collect();
    assert_eq!(after.last(), Some(&Event::PowerUp { boot: 3 }));
    a.p.clock.now_ms += 100_000;
    assert_eq!(unlock(&mut a, PIN), Response::Unlocked);
    assert_eq!(a.st.counters.failed_pins, 0);
    assert_eq!(
        a.st.counters.total_failed_pins, 1,
        "the cut-off attempt stays counted"
    );
    // A wrong PIN is counted once.
    assert_eq!(code(&unlock(&mut a, "000000")), Some(ErrorCode::WrongPin));
    assert_eq!(a.st.counters.total_failed_pins, 2);
}

/// Three wrong PINs, each past its back-off.
fn three_wrong_pins(a: &mut Appliance<FakePlatform>) {
    for _ in 0..3 {
        a.p.clock.now_ms += 100_000;
        assert_eq!(code(&unlock(a, "000000")), Some(ErrorCode::WrongPin));
    }
    a.p.clock.now_ms += 100_000;
}

/// The correct PIN and a power cut between its unlock record and the counter's reset, either
/// way round: the wrong-PIN counts the log says still follow from each other (`log --verify`
/// checks them). The reset was saved first, the cut took the unlock record, and the next
/// wrong PIN said "1 in a row" after "3 in a row" with no unlock between.
#[test]
fn a_correct_pin_cut_off_leaves_wrong_pin_counts_that_follow() {
    // The unlock record torn: the attempt stays counted (4), logged as cut off.
    let mut a = provisioned(30);
    three_wrong_pins(&mut a);
    a.p.log.fail_after = Some(0);
    assert_eq!(code(&unlock(&mut a, PIN)), Some(ErrorCode::Storage));
    let mut a = reboot(a, 31);
    assert_eq!(a.st.counters.failed_pins, 4);
    a.p.clock.now_ms += 100_000;
    assert_eq!(code(&unlock(&mut a, "000000")), Some(ErrorCode::WrongPin));
    let events: Vec<Event> = log_entries(&mut a).into_iter().map(|e| e.event).collect();
    assert!(
        events.ends_with(&[
            Event::PowerUp { boot: 2 },
            Event::PinCheckCutOff { failures: 4 },
            Event::WrongPin { failures: 5 }
        ]),
        "{events:?}"
    );

    // The unlock logged, its reset cut off: counted as cut off after the unlock record.
    let mut a = provisioned(32);
    three_wrong_pins(&mut a);
    a.p.secrets.writes_left = Some(1);
    assert_eq!(code(&unlock(&mut a, PIN)), Some(ErrorCode::Storage));
    let mut a = reboot(a, 33);
    assert_eq!(a.st.counters.failed_pins, 4);
    assert_eq!(
        a.st.counters.unlocks, 0,
        "no more unlocks than unlock records"
    );
    a.p.clock.now_ms += 100_000;
    assert_eq!(unlock(&mut a, PIN), Response::Unlocked);
    assert_eq!(code(&unlock(&mut a, "000000")), Some(ErrorCode::WrongPin));
    let events: Vec<Event> = log_entries(&mut a).into_iter().map(|e| e.event).collect();
    assert!(
        events.ends_with(&[Event::WrongPin { failures: 1 }, Event::Lock]),
        "{events:?}"
    );

    // The PIN an erase carries, the erase record torn and the erase cut off before its
    // state: the count stays where the wrong PINs left it.
    let mut a = provisioned(34);
    three_wrong_pins(&mut a);
    a.p.secrets.writes_left = Some(2);
    a.p.log.fail_after = Some(0);
    let r = a.handle(Request::Erase {
        overwrite: false,
        pin: Some(Pin::new(PIN)),
    });
    assert_eq!(code(&r), Some(ErrorCode::Storage), "{r:?}");
    let mut a = reboot(a, 35);
    assert_eq!(a.state(), DeviceState::Locked);
    assert_eq!(a.st.counters.failed_pins, 3);
    a.p.clock.now_ms += 100_000;
    assert_eq!(code(&unlock(&mut a, "000000")), Some(ErrorCode::WrongPin));
    let events: Vec<Event> = log_entries(&mut a).into_iter().map(|e| e.event).collect();
    assert_eq!(events.last(), Some(&Event::WrongPin { failures: 4 }));
}

/// A verification of a medium that holds no capture, and the seal refused for it, are logged
/// as nothing verified: the record said "keyless verification: no problems" while the
/// command said "medium NOT verified: it holds no capture".
#[test]
fn verifying_an_empty_medium_is_logged_as_nothing_verified() {
    let mut a = Appliance::new(FakePlatform::new(DISK, 53), cfg()).unwrap();
    a.handle(Request::Provision { pin: Pin::new(PIN) });
    assert!(matches!(a.handle(Request::Verify), Response::Verified(r) if r.captures == 0));
    assert_eq!(unlock(&mut a, PIN), Response::Unlocked);
    assert!(
        code(&a.handle(Request::Seal)).is_some(),
        "an empty medium is not sealed"
    );
    let nothing = Event::Verify {
        problems: 0,
        first: Some(custody::NOTHING_VERIFIED.into()),
    };
    let verifies: Vec<Event> = log_entries(&mut a)
        .into_iter()
        .map(|e| e.event)
        .filter(|e| matches!(e, Event::Verify { .. }))
        .collect();
    assert_eq!(verifies, [nothing.clone(), nothing.clone()]);
    assert_eq!(
        nothing.to_string(),
        "keyless verification: the medium holds no capture, nothing verified"
    );
    // A medium whose captures verify still says so.
    let mut a = provisioned(54);
    a.handle(Request::Verify);
    let last = log_entries(&mut a).pop().unwrap().event;
    assert_eq!(last.to_string(), "keyless verification: no problems");
}

/// A `State` slot saved before `pin_check` existed still reads (as no check under way).
#[test]
fn a_state_slot_of_the_layout_before_reads() {
    #[derive(serde::Serialize)]
    struct Before {
        lifecycle: Lifecycle,
        counters: Counters,
    }
    let mut a = provisioned(15);
    let old = postcard::to_allocvec(&Before {
        lifecycle: Lifecycle::Ready,
        counters: Counters {
            boots: 4,
            failed_pins: 2,
            total_failed_pins: 5,
            ..Counters::default()
        },
    })
    .unwrap();
    a.p.secrets.write(SecretSlot::State, &old).unwrap();
    let a = reboot(a, 16);
    assert_eq!(a.st.counters.boots, 5);
    assert_eq!(a.st.counters.failed_pins, 2);
    assert!(!a.st.pin_check);
}

#[test]
fn lockout_interrupted_by_power_cut_finishes_at_boot() {
    let mut a = provisioned(10);
    for _ in 0..9 {
        a.p.clock.now_ms += 100_000;
        assert_eq!(code(&unlock(&mut a, "000000")), Some(ErrorCode::WrongPin));
    }
    a.p.clock.now_ms += 100_000;
    a.p.secrets.writes_left = Some(1);
    let _ = unlock(&mut a, "000000");
    assert_ne!(a.state(), DeviceState::Erased, "the cut stopped the erase");
    let mut a = reboot(a, 11);
    assert_eq!(a.state(), DeviceState::Erased);
    assert_eq!(a.p.files.len("MGEAR/web01/KEYS").unwrap(), None);
}

/// Provisioned, unlocked, one capture committed: ready to seal.
fn captured(seed: u64) -> Appliance<FakePlatform> {
    let mut a = provisioned(seed);
    assert_eq!(code(&a.handle(Request::Seal)), Some(ErrorCode::Locked));
    assert_eq!(unlock(&mut a, PIN), Response::Unlocked);
    assert!(matches!(
        a.handle(Request::CaptureBegin {
            name: "web01".into()
        }),
        Response::Recorded { .. }
    ));
    assert_eq!(
        code(&a.handle(Request::CaptureBegin {
            name: "../etc".into()
        })),
        Some(ErrorCode::BadRequest)
    );
    assert!(matches!(
        a.handle(Request::CaptureCommit {
            name: "web01".into(),
            generation: 1
        }),
        Response::Witnessed { .. }
    ));
    a
}

fn sealed(seed: u64) -> Appliance<FakePlatform> {
    let mut a = captured(seed);
    let r = a.handle(Request::Seal);
    let Response::Sealed { attestation, .. } = r else {
        panic!("{r:?}")
    };
    let pk = pubkey(&mut a);
    verify_attestation(&attestation, &pk).unwrap();
    assert_eq!(attestation.body.kind, AttestationKind::Seal);
    let paths: Vec<&str> = attestation
        .body
        .files
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert!(
        paths.contains(&SEG0) && paths.contains(&"MGEAR/web01/KEYS"),
        "{paths:?}"
    );
    assert!(attestation.body.records >= 4);
    assert_eq!(attestation.body.regions.len(), DISK / (64 * 1024));
    a
}

#[test]
fn seal_write_protects_and_arrival_passes_on_unchanged_medium() {
    let mut a = sealed(12);
    assert_eq!(a.state(), DeviceState::Sealed);
    assert_eq!(
        a.block_write(0, &[0; 512]),
        Err(BlockError::WriteProtected(DeviceState::Sealed))
    );
    // Unlock is refused with a true message, and costs no PIN attempt.
    let r = unlock(&mut a, PIN);
    let Response::Error {
        code: ErrorCode::Sealed,
        message,
    } = &r
    else {
        panic!("{r:?}")
    };
    assert!(message.contains("read-only"), "{message}");
    assert_eq!(code(&unlock(&mut a, "000000")), Some(ErrorCode::Sealed));
    assert_eq!(a.info().counters.failed_pins, 0);
    assert_eq!(a.info().counters.unlocks, 1);
    assert_eq!(
        a.block_write(0, &[0; 512]),
        Err(BlockError::WriteProtected(DeviceState::Sealed))
    );
    // Refused by a transport that advertised the medium read-only (the simulator's NBD
    // server) is counted as one refused here: it was not counted at all.
    let refused = a.info().counters.refused_writes;
    crate::block::BlockService::count_refused_write(&mut a);
    assert_eq!(a.info().counters.refused_writes, refused + 1);
    assert_eq!(code(&a.handle(Request::Seal)), Some(ErrorCode::Sealed));
    // Lock once sealed answered "Locked", which the host took for done.
    assert_eq!(code(&a.handle(Request::Lock)), Some(ErrorCode::Sealed));
    assert_eq!(a.state(), DeviceState::Sealed);
    assert_eq!(
        code(&a.handle(Request::CaptureBegin { name: "x".into() })),
        Some(ErrorCode::Sealed)
    );
    // Survives a reboot, and arrival needs no PIN.
    let mut a = reboot(a, 13);
    assert_eq!(a.state(), DeviceState::Sealed);
    let r = arrive(&mut a);
    let Response::Arrival {
        attestation: Some(arrival),
        problems,
    } = r
    else {
        panic!("{r:?}")
    };
    assert!(problems.is_empty());
    let Response::Attestations {
        seal: Some(seal),
        arrival: Some(stored),
    } = a.handle(Request::GetAttestations)
    else {
        panic!("attestations missing")
    };
    assert_eq!(stored, arrival);
    let pk = pubkey(&mut a);
    verify_seal_and_arrival(&seal, &arrival, &pk).unwrap();
    assert!(arrival.body.counter > seal.body.counter);
    assert_eq!(a.state(), DeviceState::Arrived);
    // A seal once arrived names that state, not "already sealed".
    let r = a.handle(Request::Seal);
    let Response::Error {
        code: ErrorCode::Sealed,
        message,
    } = &r
    else {
        panic!("{r:?}")
    };
    assert!(
        message.starts_with("the appliance has arrived"),
        "{message}"
    );
    let events: Vec<_> = log_entries(&mut a).into_iter().map(|e| e.event).collect();
    assert!(events
        .iter()
        .any(|e| matches!(e, custody::Event::Seal { .. })));
    assert!(events
        .iter()
        .any(|e| matches!(e, custody::Event::CaptureCommit { generation: 1, .. })));
    assert!(matches!(
        events.last(),
        Some(custody::Event::Arrival {
            attestation: Some(_),
            ..
        })
    ));
}

#[test]
fn arrival_names_changed_segment() {
    let mut a = sealed(14);
    // One byte in the middle of the first record's stored bytes.
    a.p.files.file_mut(SEG0).unwrap()[300] ^= 1;
    let r = arrive(&mut a);
    let Response::Arrival {
        attestation: None,
        problems,
    } = r
    else {
        panic!("{r:?}")
    };
    // The verifier names the record; the comparison with the seal names the file.
    let Place::Segment {
        capture,
        generation,
        segment,
        record,
    } = &problems[0].place
    else {
        panic!("{problems:?}")
    };
    assert_eq!(
        (capture.as_str(), *generation, segment.as_str()),
        ("web01", Some(1), "SEG-00000")
    );
    assert!(record.is_some(), "{problems:?}");
    assert!(problems.iter().any(|p| p.place
        == Place::Segment {
            capture: "web01".into(),
            generation: Some(1),
            segment: "SEG-00000".into(),
            record: None
        }
        && p.message.contains("changed")));
    assert_eq!(
        a.state(),
        DeviceState::Sealed,
        "a failed arrival does not count"
    );
    let events = log_entries(&mut a);
    let Some(custody::Event::Arrival {
        attestation: None,
        first: Some(first),
        ..
    }) = events.last().map(|e| &e.event)
    else {
        panic!("arrival failure not logged")
    };
    assert!(first.contains("SEG-00000"), "{first}");
}

#[test]
fn verify_names_damaged_record_and_seal_refuses() {
    let mut a = provisioned(26);
    unlock(&mut a, PIN);
    let Response::Verified(report) = a.handle(Request::Verify) else {
        panic!()
    };
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.captures, 1);
    a.p.files.file_mut(SEG0).unwrap()[300] ^= 1;
    let Response::Verified(report) = a.handle(Request::Verify) else {
        panic!()
    };
    assert!(matches!(
        &report.problems[0].place,
        Place::Segment { segment, record: Some(_), .. } if segment == "SEG-00000"
    ));
    let r = a.handle(Request::Seal);
    assert_eq!(code(&r), Some(ErrorCode::VerifyFailed));
    assert_eq!(a.state(), DeviceState::Unlocked);
}

#[test]
fn arrival_names_changed_region() {
    let mut a = sealed(15);
    a.p.disk.data[3 * 64 * 1024 + 17] ^= 0x40;
    let r = arrive(&mut a);
    let Response::Arrival {
        attestation: None,
        problems,
    } = r
    else {
        panic!("{r:?}")
    };
    assert_eq!(problems.len(), 1);
    assert_eq!(
        problems[0].place,
        Place::Region {
            index: 3,
            start: 3 * 64 * 1024,
            end: 4 * 64 * 1024
        }
    );
}

#[test]
fn unreadable_medium_is_a_problem_not_a_crash() {
    let mut a = provisioned(16);
    unlock(&mut a, PIN);
    a.p.mount_error = Some("no FAT32 boot sector".into());
    let r = a.handle(Request::Verify);
    let Response::Verified(report) = r else {
        panic!("{r:?}")
    };
    assert_eq!(report.problems[0].place, Place::Medium);
    assert_eq!(
        code(&a.handle(Request::Seal)),
        Some(ErrorCode::VerifyFailed)
    );
    assert_eq!(a.state(), DeviceState::Unlocked);
}

#[test]
fn erase_on_request_overwrites_medium() {
    let mut a = provisioned(17);
    assert_eq!(
        code(&a.handle(Request::Erase {
            overwrite: true,
            pin: None
        })),
        Some(ErrorCode::Locked)
    );
    unlock(&mut a, PIN);
    let r = a.handle(Request::Erase {
        overwrite: true,
        pin: None,
    });
    assert_eq!(
        r,
        Response::Erased {
            key_slots: 2,
            medium_overwritten: true
        }
    );
    assert!(a.p.disk.data.iter().all(|&b| b == 0));
    assert_eq!(a.state(), DeviceState::Erased);
    let events = log_entries(&mut a);
    assert_eq!(
        events.last().map(|e| &e.event),
        Some(&custody::Event::Erase {
            reason: EraseReason::Requested,
            key_slots: 2,
            overwrite_medium: true
        })
    );
}

/// The power goes while the key slots are being overwritten: the erase is already in the
/// custody log, and the appliance comes back erased (finishing the slots and the identity),
/// never in its old state with its slots gone and no record of why.
#[test]
fn erase_cut_while_the_key_slots_go_is_logged_and_finished_at_power_up() {
    let mut a = provisioned(53);
    unlock(&mut a, PIN);
    // The first overwrite of the first slot file lands, then the medium loses power.
    a.p.files.cut_power_after(1);
    let r = a.handle(Request::Erase {
        overwrite: false,
        pin: None,
    });
    assert_eq!(code(&r), Some(ErrorCode::Storage), "{r:?}");
    let mut a = reboot(a, 54);
    assert_eq!(a.state(), DeviceState::Erased);
    assert!(!a.p.secrets.slots.contains_key(SecretSlot::Identity.name()));
    assert!(key_slot_files(&mut a.p.files).unwrap().is_empty());
    let erases: Vec<_> = log_entries(&mut a)
        .into_iter()
        .filter(|e| matches!(e.event, custody::Event::Erase { .. }))
        .collect();
    assert_eq!(
        erases.iter().map(|e| &e.event).collect::<Vec<_>>(),
        [&custody::Event::Erase {
            reason: EraseReason::Requested,
            key_slots: 2,
            overwrite_medium: false
        }]
    );
}

/// The power goes right after the erase is logged, before its state is saved: it came back
/// in its old state (identity, PIN and key slots whole, the data readable) under a log saying
/// it was erased. Power-up finishes it: erased, slots gone, one erase record; with
/// `overwrite`, the medium zeroed too.
#[test]
fn erase_cut_right_after_its_record_is_finished_at_power_up() {
    for (seed, overwrite) in [(81, false), (83, true)] {
        let mut a = provisioned(seed);
        unlock(&mut a, PIN);
        let n = a.p.disk.data.len();
        a.p.disk.data[n / 2..].fill(0x5a);
        a.p.secrets.writes_left = Some(0);
        let r = a.handle(Request::Erase {
            overwrite,
            pin: None,
        });
        assert!(!matches!(r, Response::Erased { .. }), "{r:?}");
        let mut a = reboot(a, seed + 1);
        assert_eq!(a.state(), DeviceState::Erased, "overwrite {overwrite}");
        assert!(!a.p.secrets.slots.contains_key(SecretSlot::Identity.name()));
        assert!(!a.p.secrets.slots.contains_key(SecretSlot::PinHash.name()));
        assert!(key_slot_files(&mut a.p.files).unwrap().is_empty() || overwrite);
        assert_eq!(a.p.disk.data.iter().all(|&b| b == 0), overwrite);
        let erases = log_entries(&mut a)
            .into_iter()
            .filter(|e| matches!(e.event, custody::Event::Erase { .. }))
            .count();
        assert_eq!(erases, 1);
    }
}

/// The power goes while an erase zeroes the medium: the identity is gone already, and the
/// custody record (signed before it went) says the medium was to be zeroed. It came back
/// `Erased` with most of the medium as it was. Power-up zeroes the whole medium before the
/// appliance calls itself erased; until then it answers as erased and zeroes again at every
/// power-up.
#[test]
fn erase_cut_while_the_medium_is_zeroed_zeroes_it_at_power_up() {
    let mut a = provisioned(55);
    unlock(&mut a, PIN);
    let n = a.p.disk.data.len();
    a.p.disk.data[n / 2..].fill(0x5a);
    // The key slots go, a few blocks are zeroed, then the medium loses power.
    a.p.disk.writes_left = Some(2);
    let r = a.handle(Request::Erase {
        overwrite: true,
        pin: None,
    });
    assert_eq!(code(&r), Some(ErrorCode::Storage), "{r:?}");
    assert!(a.p.disk.data.iter().any(|&b| b != 0), "cut short");
    assert_eq!(a.state(), DeviceState::Erased);
    // A power-up whose medium still fails: erased, not zeroed, and not called done.
    let mut p = a.p.after_power_loss(56);
    p.disk.writes_left = Some(0);
    let a = Appliance::new(p, cfg()).unwrap();
    assert_eq!(a.state(), DeviceState::Erased);
    assert!(a.p.disk.data.iter().any(|&b| b != 0));
    // The next one zeroes it whole.
    let mut a = reboot(a, 57);
    assert_eq!(a.state(), DeviceState::Erased);
    assert!(a.p.disk.data.iter().all(|&b| b == 0));
    assert!(!a.p.secrets.slots.contains_key(SecretSlot::Identity.name()));
    assert!(!a.p.secrets.slots.contains_key(SecretSlot::PinHash.name()));
    let erases = log_entries(&mut a)
        .into_iter()
        .filter(|e| matches!(e.event, custody::Event::Erase { .. }))
        .count();
    assert_eq!(erases, 1);
    // Zeroed for good: a later power-up leaves it as it is.
    let writes = a.p.disk.writes;
    let a = reboot(a, 58);
    assert_eq!(a.p.disk.writes, writes);
}

#[test]
fn torn_log_append_recovers_on_reboot() {
    let mut a = provisioned(18);
    let good = log_entries(&mut a).len();
    a.p.log.fail_after = Some(0);
    assert_eq!(code(&unlock(&mut a, PIN)), Some(ErrorCode::Storage));
    let mut a = reboot(a, 19);
    let events: Vec<_> = log_entries(&mut a).into_iter().map(|e| e.event).collect();
    assert!(events.len() > good);
    assert!(events
        .iter()
        .any(|e| matches!(e, custody::Event::TornTailDropped { .. })));
}

#[test]
fn disk_power_cut_fails_write_cleanly() {
    let mut a = provisioned(20);
    unlock(&mut a, PIN);
    a.p.disk.writes_left = Some(2);
    for i in 0..2 {
        a.block_write(i * 512, &[1; 512]).unwrap();
    }
    assert!(matches!(
        a.block_write(1024, &[1; 512]),
        Err(BlockError::Hw(_))
    ));
    let a = reboot(a, 21);
    assert_eq!(a.state(), DeviceState::Locked);
    assert_eq!(&a.p.disk.data[..1024], &[1u8; 1024][..]);
}

fn frames(out: &[u8]) -> Vec<(u32, Response)> {
    let mut dec = FrameDecoder::new();
    out.iter()
        .filter_map(|&b| dec.push(b))
        .map(|f| {
            let f = f.unwrap();
            (f.request_id, f.decode::<Response>().unwrap())
        })
        .collect()
}

#[test]
fn console_frames_and_lines() {
    let mut a = provisioned(22);
    a.p.console.send(&encode_frame(41, &Request::Ping));
    a.p.console.send(b"help\r");
    a.p.console
        .send(&encode_frame(42, &Request::Unlock { pin: Pin::new(PIN) }));
    assert_eq!(a.poll_console().unwrap(), 3);
    let out = a.p.console.take_output();
    let replies = frames(&out);
    assert_eq!(
        replies,
        alloc::vec![(41, Response::Pong), (42, Response::Unlocked)]
    );
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("unlock <pin>"), "{text}");
    // Line mode: the PIN is not echoed.
    a.p.console.send(b"lock\nunlock 314159\r\ninfo\r\n");
    a.poll_console().unwrap();
    let text = String::from_utf8(a.p.console.take_output()).unwrap();
    assert!(text.contains("locked"));
    assert!(text.contains("unlock ******"), "{text}");
    assert!(!text.contains(PIN));
    assert!(text.contains("unlocked: the medium accepts writes"));
    assert!(text.contains("state: unlocked"));
    // Verify in frame mode streams progress frames with the request id, then the result.
    a.p.console.send(&encode_frame(43, &Request::Verify));
    a.poll_console().unwrap();
    let replies = frames(&a.p.console.take_output());
    assert!(replies.iter().all(|(id, _)| *id == 43));
    assert!(matches!(replies.last(), Some((_, Response::Verified(_)))));
}

/// A stray NUL (Ctrl-@ in `screen`) left the console inside a frame: typed commands
/// vanished, and the host's next request was read as a command line and never answered
/// (the host waited 120 s). Now the host's frame is answered, and after a second of
/// silence typed text is a command line again.
#[test]
fn a_stray_nul_wedges_neither_the_host_nor_the_terminal() {
    let mut a = provisioned(25);
    a.p.console.send(b"\x00ping\r");
    a.p.console.send(&encode_frame(44, &Request::Ping));
    a.poll_console().unwrap();
    let replies = frames(&a.p.console.take_output());
    assert!(replies.contains(&(44, Response::Pong)), "{replies:?}");
    a.p.console.send(b"\x00");
    a.poll_console().unwrap();
    a.p.clock.now_ms += 1_500;
    a.p.console.send(b"ping\r");
    a.poll_console().unwrap();
    let text = String::from_utf8_lossy(&a.p.console.take_output()).into_owned();
    assert!(text.contains("pong"), "{text:?}");
    // Ctrl-C gives up a line half typed, and says so.
    a.p.console.send(b"unlock 12\x03ping\r");
    a.poll_console().unwrap();
    let text = String::from_utf8_lossy(&a.p.console.take_output()).into_owned();
    assert!(text.contains("^C") && text.contains("pong"), "{text:?}");
    assert!(!text.contains("non-printable"), "{text:?}");
}

/// A wrong PIN locks an unlocked appliance: its reply says so (the capture it stops is
/// resumable), and a sealed one's says the last attempt leaves the medium untouched.
#[test]
fn a_wrong_pin_says_what_it_locked_and_what_the_last_destroys() {
    let mut a = provisioned(26);
    let msg = |r: Response| match r {
        Response::Error { message, .. } => message,
        other => panic!("{other:?}"),
    };
    let locked = msg(unlock(&mut a, "999999"));
    assert!(!locked.contains("locked now"), "{locked}");
    assert!(locked.contains("erases itself"), "{locked}");
    a.p.clock.now_ms += 60_000;
    assert_eq!(unlock(&mut a, PIN), Response::Unlocked);
    let was_open = msg(unlock(&mut a, "999999"));
    assert!(was_open.contains("is locked now"), "{was_open}");
    assert_eq!(a.state(), DeviceState::Locked);
    // The custody log says so too: a wrong PIN, then the lock it made (it read as if the
    // appliance stayed unlocked until the next unlock record).
    let events: Vec<_> = log_entries(&mut a).into_iter().map(|e| e.event).collect();
    assert!(
        matches!(
            events.as_slice(),
            [
                ..,
                custody::Event::Unlock,
                custody::Event::WrongPin { .. },
                custody::Event::Lock
            ]
        ),
        "{events:?}"
    );
    let mut s = sealed(27);
    let r = s.handle(Request::Erase {
        overwrite: false,
        pin: Some(Pin::new("999999")),
    });
    let m = msg(r);
    assert!(m.contains("sealed medium is left untouched"), "{m}");
}

#[test]
fn keypad_unlocks() {
    let mut a = provisioned(23);
    a.p.indicators.keys.push_back(Key::Enter);
    a.p.indicators.keys.push_back(Key::Digit(1));
    a.p.indicators.keys.push_back(Key::Cancel);
    for d in PIN.bytes() {
        a.p.indicators.keys.push_back(Key::Digit(d - b'0'));
    }
    a.p.indicators.keys.push_back(Key::Enter);
    a.poll_console().unwrap();
    assert_eq!(a.state(), DeviceState::Unlocked);
    assert_eq!(a.info().counters.total_failed_pins, 0);
    assert_eq!(a.p.indicators.leds.last(), Some(&LedState::Unlocked));
}

#[test]
fn bad_frames_and_lines_get_error_replies() {
    let mut a = provisioned(24);
    // Valid framing, payload that is not a Request (variant 99).
    a.p.console.send(&encode_frame(7, &(99u32, 5u8)));
    // Broken CRC.
    let mut bad = encode_frame(8, &Request::Info);
    let n = bad.len();
    bad[n - 3] = bad[n - 3].wrapping_add(1).max(1);
    a.p.console.send(&bad);
    a.p.console.send(b"frobnicate now\n");
    a.p.console.send(b"bad\x01byte\n");
    assert_eq!(a.poll_console().unwrap(), 4);
    let out = a.p.console.take_output();
    let replies = frames(&out);
    assert_eq!(replies.len(), 2);
    assert!(matches!(
        replies[0],
        (
            7,
            Response::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        )
    ));
    assert!(matches!(
        replies[1],
        (
            0,
            Response::Error {
                code: ErrorCode::BadFrame,
                ..
            }
        )
    ));
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("unknown command"));
    assert!(text.contains("non-printable"));
}

#[test]
fn seeded_fuzz_console_never_panics_and_always_answers() {
    use rand_core::{RngCore, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed);
    let mut a = provisioned(25);
    let seeds: Vec<Vec<u8>> = alloc::vec![
        encode_frame(1, &Request::Info),
        encode_frame(2, &Request::Log { from: 0 }),
        encode_frame(
            3,
            &Request::CaptureBegin {
                name: "web01".into()
            }
        ),
        encode_frame(
            4,
            &Request::Unlock {
                pin: Pin::new("000000")
            }
        ),
        b"info\r\n".to_vec(),
        b"log 1\r\n".to_vec(),
    ];
    for round in 0..2_000 {
        let mut input = match rng.next_u32() % 3 {
            0 => {
                let len = (rng.next_u32() % 300) as usize;
                let mut v = alloc::vec![0u8; len];
                rng.fill_bytes(&mut v);
                v
            }
            _ => {
                let mut v = seeds[(rng.next_u32() as usize) % seeds.len()].clone();
                for _ in 0..(rng.next_u32() % 4) {
                    let i = (rng.next_u32() as usize) % v.len();
                    v[i] = rng.next_u32() as u8;
                }
                v
            }
        };
        // Terminate whatever is open so every input is complete.
        input.extend_from_slice(b"\n\0\0");
        a.p.console.send(&input);
        let handled = a.poll_console().unwrap();
        let out = a.p.console.take_output();
        let mut dec = FrameDecoder::new();
        let replies = out.iter().filter_map(|&b| dec.push(b)).count();
        let lines = out.windows(2).filter(|w| w == b"> ").count();
        let errors = out.windows(6).filter(|w| w == b"error:").count();
        assert!(
            replies + lines + errors >= handled,
            "round {round}: {handled} inputs, too few replies"
        );
        // Keep the lockout out of the way so the fuzz keeps exercising commands.
        a.st.counters.failed_pins = 0;
        a.last_failure_ms = None;
    }
    assert_ne!(a.state(), DeviceState::Erased);
}

#[test]
fn decode_frame_helper_matches_stream_decoder() {
    let wire = encode_frame(9, &Request::Seal);
    let (id, req): (u32, Request) = decode_frame(&wire).unwrap();
    assert_eq!((id, req), (9, Request::Seal));
}

#[test]
fn region_size_grows_on_large_media() {
    let mut a = provisioned(27);
    assert_eq!(a.region_size(), 64 * 1024);
    a.cfg.region_size = 16;
    // 320 KiB in at most 4096 regions: 80-byte regions rounded up to a 512-byte block.
    assert_eq!(a.region_size(), 512);
    a.p.disk = crate::testing::MemDisk::new(8 * 1024 * 1024);
    assert_eq!(a.region_size(), 2048);
}

#[test]
fn erase_with_unreadable_medium_still_destroys_identity() {
    let mut a = provisioned(28);
    unlock(&mut a, PIN);
    a.p.mount_error = Some("no FAT32 boot sector".into());
    let r = a.handle(Request::Erase {
        overwrite: false,
        pin: None,
    });
    let Response::Error {
        code: ErrorCode::Storage,
        message,
    } = r
    else {
        panic!("{r:?}")
    };
    assert!(message.contains("identity and PIN destroyed"), "{message}");
    assert_eq!(a.state(), DeviceState::Erased);
    assert!(!a.p.secrets.slots.contains_key(SecretSlot::Identity.name()));
}

/// Ten wrong PINs given with `erase` on a sealed appliance.
fn wrong_erase_pins_until_locked_out(a: &mut Appliance<FakePlatform>) -> String {
    for i in 1..=10u32 {
        a.p.clock.now_ms += 10_000;
        let r = a.handle(Request::Erase {
            overwrite: true,
            pin: Some(Pin::new("271828")),
        });
        match r {
            Response::Error {
                code: ErrorCode::WrongPin,
                ..
            } if i < 10 => {}
            Response::Error {
                code: ErrorCode::Erased,
                message,
            } if i == 10 => return message,
            other => panic!("attempt {i}: {other:?}"),
        }
    }
    unreachable!()
}

#[test]
fn lockout_on_sealed_appliance_leaves_medium_untouched() {
    let mut a = sealed(40);
    let pk = pubkey(&mut a);
    let disk_before = a.p.disk.data.clone();
    let keys_before = a.p.files.file_mut("MGEAR/web01/KEYS").unwrap().clone();
    let Response::Attestations {
        seal: Some(seal), ..
    } = a.handle(Request::GetAttestations)
    else {
        panic!("no seal")
    };
    let message = wrong_erase_pins_until_locked_out(&mut a);
    assert!(message.contains("not touched"), "{message}");
    assert!(message.contains("target.key"), "{message}");
    assert!(!message.contains("factory reset"), "{message}");
    assert_eq!(a.state(), DeviceState::Erased);
    // Every byte of the medium and the key slot files as sealed.
    assert!(a.p.disk.data == disk_before, "raw medium changed");
    assert_eq!(
        a.p.files.file_mut("MGEAR/web01/KEYS").unwrap(),
        &keys_before
    );
    assert!(a.p.files.len("MGEAR/web01/KEYPASS").unwrap().is_some());
    // The appliance's own secrets are gone; the public key and seal stay.
    assert!(!a.p.secrets.slots.contains_key(SecretSlot::Identity.name()));
    assert!(!a.p.secrets.slots.contains_key(SecretSlot::PinHash.name()));
    assert_eq!(pubkey(&mut a), pk);
    assert!(matches!(
        a.handle(Request::GetAttestations),
        Response::Attestations { seal: Some(s), arrival: None } if s == seal
    ));
    // The log records the lockout as one that touched nothing on the medium.
    let events: Vec<_> = log_entries(&mut a).into_iter().map(|e| e.event).collect();
    assert_eq!(
        events.last(),
        Some(&custody::Event::Erase {
            reason: EraseReason::PinLockout,
            key_slots: 0,
            overwrite_medium: false
        })
    );
    // No arrival can be signed any more, and the refusal names a real next step.
    let r = arrive(&mut a);
    let Response::Error {
        code: ErrorCode::Erased,
        message,
    } = r
    else {
        panic!("{r:?}")
    };
    assert!(message.contains("log --verify"), "{message}");
    assert!(!message.contains("factory reset"), "{message}");
    // A reboot keeps it so, and does not touch the medium either.
    let a = reboot(a, 41);
    assert_eq!(a.state(), DeviceState::Erased);
    assert!(a.p.disk.data == disk_before);
}

/// A lockout after a failed arrival check says the check failed: "it was never checked on
/// arrival ... ingest it with target.key" sent the operator on to ingest a changed medium.
#[test]
fn lockout_after_a_failed_arrival_says_it_failed() {
    let mut a = sealed(42);
    a.p.files.file_mut(SEG0).unwrap()[300] ^= 1;
    assert!(matches!(
        arrive(&mut a),
        Response::Arrival {
            attestation: None,
            ..
        }
    ));
    // Put back, and the appliance restarted: only the custody log remembers.
    a.p.files.file_mut(SEG0).unwrap()[300] ^= 1;
    let mut a = reboot(a, 43);
    let message = wrong_erase_pins_until_locked_out(&mut a);
    assert!(message.contains("arrival check FAILED"), "{message}");
    assert!(message.contains("do not ingest from it"), "{message}");
    assert!(!message.contains("never checked"), "{message}");
    // One never checked on arrival is said as such.
    let mut a = sealed(44);
    let message = wrong_erase_pins_until_locked_out(&mut a);
    assert!(message.contains("never checked on arrival"), "{message}");
}

#[test]
fn lockout_on_sealed_appliance_interrupted_by_power_cut_spares_medium() {
    let mut a = sealed(42);
    for _ in 0..9 {
        a.p.clock.now_ms += 100_000;
        let r = a.handle(Request::Erase {
            overwrite: false,
            pin: Some(Pin::new("000000")),
        });
        assert_eq!(code(&r), Some(ErrorCode::WrongPin));
    }
    let disk_before = a.p.disk.data.clone();
    a.p.clock.now_ms += 100_000;
    a.p.secrets.writes_left = Some(1);
    let _ = a.handle(Request::Erase {
        overwrite: false,
        pin: Some(Pin::new("000000")),
    });
    let mut a = reboot(a, 43);
    assert_eq!(a.state(), DeviceState::Erased);
    assert!(a.p.disk.data == disk_before);
    assert!(a.p.files.len("MGEAR/web01/KEYS").unwrap().is_some());
}

#[test]
fn erase_on_sealed_appliance_needs_the_pin() {
    let mut a = sealed(44);
    let r = a.handle(Request::Erase {
        overwrite: false,
        pin: None,
    });
    assert_eq!(code(&r), Some(ErrorCode::Locked), "{r:?}");
    assert!(a.p.files.len("MGEAR/web01/KEYS").unwrap().is_some());
    a.p.clock.now_ms += 10_000;
    let r = a.handle(Request::Erase {
        overwrite: false,
        pin: Some(Pin::new("999999")),
    });
    assert_eq!(code(&r), Some(ErrorCode::WrongPin));
    assert_eq!(a.state(), DeviceState::Sealed);
    let r = a.handle(Request::Erase {
        overwrite: false,
        pin: Some(Pin::new(PIN)),
    });
    assert_eq!(
        r,
        Response::Erased {
            key_slots: 2,
            medium_overwritten: false
        }
    );
    assert_eq!(a.p.files.len("MGEAR/web01/KEYS").unwrap(), None);
    assert_eq!(a.info().counters.failed_pins, 0);
}

#[test]
fn arrival_carries_challenge_and_a_failure_withdraws_the_pass() {
    let mut a = sealed(45);
    let Response::Arrival {
        attestation: Some(first),
        ..
    } = arrive(&mut a)
    else {
        panic!("arrival failed")
    };
    assert_eq!(first.body.challenge, Some(CHALLENGE));
    assert_eq!(a.state(), DeviceState::Arrived);
    // The medium changes; the next arrival fails and the old pass goes.
    a.p.disk.data[3 * 64 * 1024 + 17] ^= 0x40;
    let r = arrive(&mut a);
    assert!(
        matches!(
            r,
            Response::Arrival {
                attestation: None,
                ..
            }
        ),
        "{r:?}"
    );
    assert_eq!(a.state(), DeviceState::Sealed);
    assert!(matches!(
        a.handle(Request::GetAttestations),
        Response::Attestations {
            seal: Some(_),
            arrival: None
        }
    ));
    // Also after a reboot.
    let mut a = reboot(a, 46);
    assert!(matches!(
        a.handle(Request::GetAttestations),
        Response::Attestations { arrival: None, .. }
    ));
}

fn all_records(a: &mut Appliance<FakePlatform>) -> Vec<custody::LogRecord> {
    let mut records = Vec::new();
    loop {
        match a.handle(Request::Log {
            from: records.len() as u64,
        }) {
            Response::LogRecords { records: page, .. } if page.is_empty() => break,
            Response::LogRecords { records: page, .. } => records.extend(page),
            other => panic!("unexpected {other:?}"),
        }
    }
    records
}

#[test]
fn attestations_pin_the_custody_log_and_truncation_is_detected() {
    let mut a = sealed(47);
    let Response::Arrival {
        attestation: Some(arrival),
        ..
    } = arrive(&mut a)
    else {
        panic!("arrival failed")
    };
    let Response::Attestations {
        seal: Some(seal), ..
    } = a.handle(Request::GetAttestations)
    else {
        panic!()
    };
    let records = all_records(&mut a);
    assert!(seal.body.log_records > 0);
    assert!(arrival.body.log_records > seal.body.log_records);
    assert_eq!(
        seal.body.log_head,
        records[seal.body.log_records as usize - 1].hash()
    );
    attest::check_log_covers(&seal, &records).unwrap();
    attest::check_log_covers(&arrival, &records).unwrap();
    // Cut the tail at a record boundary: what remains still verifies as a
    // chain, but the arrival attestation says it must be longer.
    let cut = &records[..arrival.body.log_records as usize];
    verify_log(cut, &pubkey(&mut a)).unwrap();
    attest::check_log_covers(&seal, cut).unwrap();
    let e = attest::check_log_covers(&arrival, cut).unwrap_err();
    assert!(
        matches!(e, attest::CoverError::Truncated { expected, found, .. }
            if expected == arrival.body.log_records + 1 && found == cut.len() as u64),
        "{e}"
    );
    assert!(e.to_string().contains("cut"), "{e}");
    // A record swapped for another under the attested head is named.
    let mut swapped = records.clone();
    swapped[seal.body.log_records as usize - 1] = records[0].clone();
    assert!(matches!(
        attest::check_log_covers(&seal, &swapped),
        Err(attest::CoverError::HeadMismatch { .. })
    ));
}

#[test]
fn line_mode_never_echoes_a_pin() {
    let mut a = provisioned(48);
    for line in [
        &b"UNLOCK 314159\r"[..],
        b"   unlock 314159\r",
        b"Unlock\t314159\r",
        b"uNlOcK    314159\r\n",
        b"unlock314159\r",
        b"unlock 314159 extra\r",
    ] {
        a.p.console.send(b"lock\r");
        a.p.console.send(line);
        a.poll_console().unwrap();
        let out = a.p.console.take_output();
        let text = String::from_utf8_lossy(&out);
        assert!(
            !text.contains("314159") && !text.contains("14159"),
            "{:?} echoed the PIN: {text}",
            core::str::from_utf8(line)
        );
    }
    // The accepted spellings unlocked (the last two are usage errors).
    assert_eq!(a.info().counters.unlocks, 4);
}

/// A line whose command is not known is masked as it is typed and not repeated in the
/// reply: "unlok Secret-1234" was echoed in clear, then answered "unknown command ...
/// 'unlok'", and "unlok246810" repeated whole.
#[test]
fn line_mode_never_echoes_a_mistyped_line() {
    let mut a = provisioned(52);
    for line in [
        &b"unlok Secret-1234
"[..],
        b"unlok246810
",
        b"246810
",
        b"  Lockk 246810
",
        b"info 246810
",
        b"frob	Secret-1234 246810
",
    ] {
        a.p.console.send(line);
        a.poll_console().unwrap();
        let out = a.p.console.take_output();
        let text = String::from_utf8_lossy(&out);
        for secret in ["Secret", "1234", "246810", "46810", "6810"] {
            assert!(
                !text.contains(secret),
                "{:?} echoed {secret}: {text}",
                core::str::from_utf8(line)
            );
        }
        assert!(
            text.contains("unknown command") || text.contains("wrong arguments for 'info'"),
            "{text}"
        );
    }
    // What is no secret still shows: a command as typed, and `log`'s index.
    a.p.console.send(
        b"LOG 1
",
    );
    a.poll_console().unwrap();
    let text = String::from_utf8_lossy(&a.p.console.take_output()).into_owned();
    assert!(text.starts_with("LOG 1\r\n"), "{text}");
    assert_eq!(
        a.info().counters.total_failed_pins,
        0,
        "no attempt was used"
    );
}

/// An erase carries the PIN and unlocks nothing: `info` counted it as an unlock, which the
/// custody log (it records each unlock) did not hold.
#[test]
fn an_erase_with_the_pin_is_not_counted_as_an_unlock() {
    let mut a = provisioned(51);
    unlock(&mut a, PIN);
    assert_eq!(a.info().counters.unlocks, 1);
    a.handle(Request::Lock);
    a.handle(Request::Erase {
        overwrite: false,
        pin: Some(Pin::new(PIN)),
    });
    assert_eq!(a.state(), DeviceState::Erased);
    assert_eq!(a.info().counters.unlocks, 1);
}

#[test]
fn erased_messages_name_a_real_next_step() {
    let mut a = provisioned(49);
    unlock(&mut a, PIN);
    a.handle(Request::Erase {
        overwrite: false,
        pin: None,
    });
    for r in [unlock(&mut a, PIN), a.handle(Request::Seal), arrive(&mut a)] {
        let Response::Error { message, .. } = r else {
            panic!("{r:?}")
        };
        assert!(!message.contains("factory reset"), "{message}");
        assert!(
            message.contains("mgear appliance log --verify"),
            "{message}"
        );
    }
}

#[test]
fn provisioning_waits_for_read_out_protection() {
    use crate::hal::Readout;
    let mut a = Appliance::new(platform(50), cfg()).unwrap();
    a.p.readout = Err(HwError::Io("RDP stuck at level 1".into()));
    let r = a.handle(Request::Provision { pin: Pin::new(PIN) });
    assert_eq!(code(&r), Some(ErrorCode::NotProtected), "{r:?}");
    assert_eq!(a.state(), DeviceState::Factory);
    assert!(!a.p.secrets.slots.contains_key(SecretSlot::Identity.name()));
    a.p.readout = Ok(Readout::RestartNeeded);
    let r = a.handle(Request::Provision { pin: Pin::new(PIN) });
    assert_eq!(code(&r), Some(ErrorCode::NotProtected), "{r:?}");
    assert!(!a.p.secrets.slots.contains_key(SecretSlot::Identity.name()));
    // After the power cycle the protection is in force.
    a.p.readout = Ok(Readout::Enforced);
    assert!(matches!(
        a.handle(Request::Provision { pin: Pin::new(PIN) }),
        Response::Provisioned { .. }
    ));
}

#[test]
fn erase_cut_after_its_commit_point_finishes_at_power_up() {
    let mut a = sealed(51);
    for _ in 0..9 {
        a.p.clock.now_ms += 100_000;
        let r = a.handle(Request::Erase {
            overwrite: false,
            pin: Some(Pin::new("000000")),
        });
        assert_eq!(code(&r), Some(ErrorCode::WrongPin));
    }
    a.p.clock.now_ms += 100_000;
    // Counter, failure count, Erased state: then the power goes.
    a.p.secrets.writes_left = Some(3);
    let _ = a.handle(Request::Erase {
        overwrite: false,
        pin: Some(Pin::new("000000")),
    });
    let a = reboot(a, 52);
    assert_eq!(a.state(), DeviceState::Erased);
    assert!(!a.p.secrets.slots.contains_key(SecretSlot::Identity.name()));
    assert!(!a.p.secrets.slots.contains_key(SecretSlot::PinHash.name()));
}

#[test]
fn capture_commit_is_witnessed_over_the_commit_the_host_computes() {
    use image_format::commit::{self, CommitFile, SignerRole};
    let mut a = provisioned(40);
    let commit_req = |generation| Request::CaptureCommit {
        name: "web01".into(),
        generation,
    };
    // Locked: no signature, no record.
    assert_eq!(code(&a.handle(commit_req(1))), Some(ErrorCode::Locked));
    assert_eq!(unlock(&mut a, PIN), Response::Unlocked);
    let r = a.handle(commit_req(1));
    let Response::Witnessed {
        digest,
        identity_pubkey,
        signature,
    } = r
    else {
        panic!("{r:?}")
    };
    assert_eq!(identity_pubkey, pubkey(&mut a));
    // What the host computes from the same medium.
    let expected = commit::expected_commit(&mut a.p.files, "web01", 1)
        .unwrap()
        .unwrap();
    assert_eq!(digest, expected.digest());
    let sig = commit::CommitSignature {
        role: SignerRole::Appliance,
        public_key: identity_pubkey,
        signature,
    };
    assert!(expected.verifies(&sig));
    let file = CommitFile {
        commit: expected.clone(),
        signatures: alloc::vec![sig.clone()],
    };
    assert_eq!(commit::check_commit(&file, &expected), None);
    // Not a site signature, and not valid for another generation.
    let as_site = commit::CommitSignature {
        role: SignerRole::Site,
        ..sig.clone()
    };
    let mut other = expected.clone();
    other.generation = 2;
    assert!(!other.verifies(&sig));
    // The role is not part of the message; the trust gate tells roles apart.
    assert!(expected.verifies(&as_site));

    // A generation with no MANIFEST is refused and not logged as committed.
    let r = a.handle(commit_req(2));
    let Response::Error {
        code: ErrorCode::BadRequest,
        message,
    } = &r
    else {
        panic!("{r:?}")
    };
    assert!(message.contains("no MANIFEST"), "{message}");
    assert_eq!(code(&a.handle(commit_req(0))), Some(ErrorCode::BadRequest));
    assert_eq!(
        code(&a.handle(Request::CaptureCommit {
            name: "db02".into(),
            generation: 1
        })),
        Some(ErrorCode::BadRequest)
    );
    // A damaged MANIFEST is refused too.
    let manifest = "MGEAR/web01/G0001/MANIFEST";
    let len = a.p.files.len(manifest).unwrap().unwrap();
    let mut bytes = alloc::vec![0u8; len as usize];
    a.p.files.read_at(manifest, 0, &mut bytes).unwrap();
    bytes[len as usize / 2] ^= 0x10;
    a.p.files.write_at(manifest, 0, &bytes).unwrap();
    let r = a.handle(commit_req(1));
    assert!(code(&r).is_some(), "{r:?}");
    let committed: Vec<u64> = log_entries(&mut a)
        .into_iter()
        .filter_map(|e| match e.event {
            custody::Event::CaptureCommit { generation, .. } => Some(generation),
            _ => None,
        })
        .collect();
    assert_eq!(committed, [1]);
}

#[test]
fn file_digests_from_the_verifier_walk_equal_a_separate_pass() {
    // Seal takes the file digests from the keyless verifier's reads: on a
    // real capture, plus a file outside it, they must equal the separate
    // pass, with and without a changed stored byte.
    let mut p = platform(42);
    p.files.write_at("NOTES.TXT", 0, b"field notes").unwrap();
    let seg_len = p.files.len(SEG0).unwrap().unwrap();
    let mut before = Vec::new();
    for tamper in [false, true] {
        if tamper {
            let mut b = [0u8; 1];
            p.files.read_exact_at(SEG0, 300, &mut b).unwrap();
            p.files.write_at(SEG0, 300, &[b[0] ^ 1]).unwrap();
        }
        let separate = attest::file_digests(&mut p.files, &mut |_, _| {}).unwrap();
        let mut sums = FileDigests::new();
        let report = verify::verify_medium(&mut sums.tee(&mut p.files), &mut |_, _, _| {}).unwrap();
        assert_eq!(report.ok(), !tamper, "{report:?}");
        let mut reread = 0;
        let fused = sums
            .finish(&mut p.files, &mut |done, _| reread = done)
            .unwrap();
        assert_eq!(fused, separate);
        // The segment was hashed from the verifier's reads, not read again.
        let total: u64 = fused.iter().map(|d| d.len).sum();
        assert!(reread + seg_len <= total, "{reread} of {total} read again");
        if tamper {
            let changed: Vec<&str> = before
                .iter()
                .zip(&fused)
                .filter(|(a, b): &(&attest::FileDigest, &attest::FileDigest)| a != b)
                .map(|(a, _)| a.path.as_str())
                .collect();
            assert_eq!(changed, [SEG0]);
        }
        before = fused;
    }
}

#[test]
fn seal_regions_are_the_raw_medium_hashes() {
    let mut a = sealed(43);
    let Response::Attestations {
        seal: Some(seal), ..
    } = a.handle(Request::GetAttestations)
    else {
        panic!("no seal attestation")
    };
    let want = crate::regions::hash_regions(&mut a.p.disk, 64 * 1024, 4096, &mut |_, _| true)
        .unwrap()
        .unwrap();
    assert_eq!(seal.body.regions, want);
    let files = attest::file_digests(&mut a.p.files, &mut |_, _| {}).unwrap();
    assert_eq!(seal.body.files, files);
}

/// Sealing an appliance with nothing on its medium made it useless for good (a sealed
/// appliance takes no capture): refused, and it stays unlocked for the capture.
#[test]
fn an_empty_medium_is_not_sealed() {
    let mut a = Appliance::new(FakePlatform::new(DISK, 21), cfg()).unwrap();
    assert!(matches!(
        a.handle(Request::Provision { pin: Pin::new(PIN) }),
        Response::Provisioned { .. }
    ));
    assert_eq!(unlock(&mut a, PIN), Response::Unlocked);
    let r = a.handle(Request::Seal);
    let Response::Error {
        code: ErrorCode::BadRequest,
        message,
    } = &r
    else {
        panic!("{r:?}")
    };
    assert!(message.contains("holds no capture"), "{message}");
    assert_eq!(a.state(), DeviceState::Unlocked);
    assert_eq!(a.block_write(0, &[0; 512]), Ok(()));
}

/// Stored attestations and the whole custody log, checked the way
/// `mgear appliance log --verify` checks them.
fn log_verifies(a: &mut Appliance<FakePlatform>) -> Vec<custody::LogEntry> {
    let records = all_records(a);
    let pk = pubkey(a);
    let entries = verify_log(&records, &pk).unwrap();
    let Response::Attestations { seal, arrival } = a.handle(Request::GetAttestations) else {
        panic!("no attestations reply")
    };
    for att in [seal, arrival].iter().flatten() {
        attest::check_log_covers(att, &records).unwrap();
    }
    entries
}

/// The power goes after a seal has logged its attestation and before it is stored (the
/// write-ahead order): the appliance comes up unsealed, its log still verifies, and the
/// seal run again is logged and stored under the next counter.
#[test]
fn seal_cut_after_its_record_leaves_a_log_that_verifies_and_seals_again() {
    let mut a = captured(61);
    // The under-way mark and the counter are saved; the attestation slot write is the one
    // the cut takes.
    a.p.secrets.writes_left = Some(2);
    assert!(!matches!(a.handle(Request::Seal), Response::Sealed { .. }));
    let mut a = reboot(a, 62);
    assert_eq!(a.state(), DeviceState::Locked);
    // The log says the seal was cut off, after the power-up that found it.
    let events: Vec<Event> = log_entries(&mut a).into_iter().map(|e| e.event).collect();
    assert!(
        events.ends_with(&[
            Event::PowerUp { boot: 2 },
            Event::CutOff {
                operation: custody::LongOperation::Seal
            }
        ]),
        "{events:?}"
    );
    let seals = |e: &[custody::LogEntry]| {
        e.iter()
            .filter_map(|e| match e.event {
                custody::Event::Seal { counter, .. } => Some(counter),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        seals(&log_verifies(&mut a)),
        [1],
        "the cut seal's record stays"
    );
    assert!(matches!(
        a.handle(Request::GetAttestations),
        Response::Attestations { seal: None, .. }
    ));
    assert_eq!(unlock(&mut a, PIN), Response::Unlocked);
    let Response::Sealed { attestation, .. } = a.handle(Request::Seal) else {
        panic!("seal again failed")
    };
    assert_eq!(attestation.body.counter, 2);
    assert_eq!(seals(&log_verifies(&mut a)), [1, 2]);
    let mut a = reboot(a, 63);
    assert_eq!(a.state(), DeviceState::Sealed);
    // A seal that ended is not called cut off at the next power-up.
    let cut = log_entries(&mut a)
        .into_iter()
        .filter(|e| matches!(e.event, Event::CutOff { .. }))
        .count();
    assert_eq!(cut, 1);
}

/// A seal cut off while it reads the medium (before its record: the verification logged, the
/// hashing under way), as a finder's pulled plug does: the next power-up logs it as cut off.
/// Before, the log read as a verification and a power-up.
#[test]
fn a_seal_cut_off_mid_read_is_logged_at_the_next_power_up() {
    let mut a = captured(66);
    // The mark is saved; the counter's save is the one the cut takes.
    a.p.secrets.writes_left = Some(1);
    assert!(!matches!(a.handle(Request::Seal), Response::Sealed { .. }));
    let mut a = reboot(a, 67);
    assert_eq!(a.state(), DeviceState::Locked);
    let events: Vec<Event> = log_verifies(&mut a).into_iter().map(|e| e.event).collect();
    assert!(
        !events.iter().any(|e| matches!(e, Event::Seal { .. })),
        "{events:?}"
    );
    assert_eq!(
        events.last(),
        Some(&Event::CutOff {
            operation: custody::LongOperation::Seal
        }),
        "{events:?}"
    );
    assert_eq!(
        custody::Event::CutOff {
            operation: custody::LongOperation::Seal
        }
        .to_string(),
        "a seal was cut off by a power loss: the appliance is not sealed (unlock it and run \
         seal again)"
    );
    // A seal refused (nothing to seal is not the case here: locked) leaves no mark behind.
    let r = a.handle(Request::Seal);
    assert_eq!(code(&r), Some(ErrorCode::Locked));
    let mut a = reboot(a, 68);
    let events: Vec<Event> = log_entries(&mut a).into_iter().map(|e| e.event).collect();
    assert!(
        matches!(events.last(), Some(Event::PowerUp { .. })),
        "{events:?}"
    );
}

/// The same for a passed arrival: the cut leaves the appliance sealed with no arrival, the
/// log verifies, and arrival run again passes.
#[test]
fn arrival_cut_after_its_record_leaves_a_log_that_verifies() {
    let mut a = sealed(64);
    a.p.secrets.writes_left = Some(2);
    assert!(!matches!(
        arrive(&mut a),
        Response::Arrival {
            attestation: Some(_),
            ..
        }
    ));
    let mut a = reboot(a, 65);
    assert_eq!(a.state(), DeviceState::Sealed);
    let events: Vec<Event> = log_verifies(&mut a).into_iter().map(|e| e.event).collect();
    assert_eq!(
        events.last(),
        Some(&Event::CutOff {
            operation: custody::LongOperation::Arrival
        }),
        "{events:?}"
    );
    assert!(matches!(
        a.handle(Request::GetAttestations),
        Response::Attestations { arrival: None, .. }
    ));
    assert!(matches!(
        arrive(&mut a),
        Response::Arrival {
            attestation: Some(_),
            ..
        }
    ));
    log_verifies(&mut a);
    assert_eq!(a.state(), DeviceState::Arrived);
}

/// A removal through the block service is recorded in the custody log while the medium is
/// writable, and refused once it is not (locked: no removal could have happened).
#[test]
fn a_removal_is_a_custody_record_while_unlocked_only() {
    let mut a = provisioned(31);
    let removed = |a: &mut Appliance<FakePlatform>| {
        a.handle(Request::CaptureRemoved {
            name: "web01".into(),
            generations: alloc::vec![2, 3],
        })
    };
    assert!(code(&removed(&mut a)).is_some(), "locked: refused");
    assert_eq!(unlock(&mut a, PIN), Response::Unlocked);
    assert!(matches!(removed(&mut a), Response::Recorded { .. }));
    let events: Vec<_> = log_entries(&mut a).into_iter().map(|e| e.event).collect();
    assert_eq!(
        events.last(),
        Some(&custody::Event::CaptureRemoved {
            name: "web01".into(),
            generations: alloc::vec![2, 3],
        }),
        "{events:?}"
    );
}

/// A state saved by firmware before `under_way` existed (lifecycle, counters, a PIN check under
/// way) reads as it did after an update: the PIN check is still found cut off, nothing is
/// called a cut-off seal, and the next save writes the new layout.
#[test]
fn a_state_saved_before_under_way_existed_still_reads() {
    #[derive(Serialize)]
    struct Before {
        lifecycle: Lifecycle,
        counters: Counters,
        pin_check: bool,
    }
    let a = provisioned(69);
    let mut counters = a.st.counters.clone();
    counters.failed_pins = 1;
    let mut p = a.p;
    write_slot(
        &mut p.secrets,
        SecretSlot::State,
        &Before {
            lifecycle: Lifecycle::Ready,
            counters,
            pin_check: true,
        },
    )
    .unwrap();
    let mut a = Appliance::new(p.after_power_loss(70), cfg()).unwrap();
    assert_eq!(a.state(), DeviceState::Locked);
    assert_eq!(a.st.counters.failed_pins, 1);
    assert!(a.st.under_way.is_none());
    let events: Vec<Event> = log_entries(&mut a).into_iter().map(|e| e.event).collect();
    assert!(
        matches!(events.last(), Some(Event::PinCheckCutOff { failures: 1 })),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| matches!(e, Event::CutOff { .. })),
        "{events:?}"
    );
}
