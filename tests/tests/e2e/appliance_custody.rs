//! The custody log: verifies end to end, survives SIGKILL (a torn last
//! record is dropped and logged), and a tampered record is detected.

use std::io::Write;

use crate::appliance_util::*;

#[test]
fn appliance_custody_log_verifies_survives_power_cut_and_detects_tampering() {
    let mut lab = Lab::new(40);
    lab.start();
    // A factory appliance has no log to verify: a usage error naming the next step.
    let out = lab.appliance(&["log", "--verify"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not provisioned")
            && text(&out.stderr).contains("appliance provision"),
        "{}",
        text(&out.stderr)
    );
    lab.provision_and_unlock();
    // Nothing captured yet: verify checks nothing and says so (exit 1, like `mgear verify`).
    let out = lab.appliance(&["verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("holds no capture"),
        "{}",
        text(&out.stdout)
    );
    lab.appliance_ok(&["lock"]);
    assert_eq!(
        lab.appliance(&["unlock", "--pin-file", "wrong-pin"])
            .status
            .code(),
        Some(2)
    );
    lab.appliance_ok(&["unlock", "--pin-file", "pin"]);

    let log = lab.appliance_json(&["log", "--verify"]);
    assert_eq!(log["verified"], true, "{log}");
    let events = log["entries"].to_string();
    for e in ["Provisioned", "Unlock", "Lock", "WrongPin"] {
        assert!(events.contains(e), "custody log lacks {e}: {events}");
    }
    let n1 = log["records"].as_u64().unwrap();

    // Power cut with a torn record at the end of the log file.
    lab.kill();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(lab.p("state/custody.log"))
        .unwrap();
    f.write_all(&[0x40, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(f);
    lab.start();
    let log = lab.appliance_json(&["log", "--verify"]);
    assert_eq!(log["verified"], true, "{log}");
    let events = log["entries"].to_string();
    assert!(
        events.contains("TornTailDropped") && events.contains("PowerUp"),
        "{events}"
    );
    assert!(log["records"].as_u64().unwrap() > n1);
    lab.stop();

    // Tamper with one byte inside an early record.
    let path = lab.p("state/custody.log");
    let mut bytes = std::fs::read(&path).unwrap();
    let first_len = u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
    let target = 8 + first_len + 8 + 20; // inside record 1's body
    bytes[target] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    lab.start();
    let info = lab.appliance_json(&["info"]);
    assert_eq!(info["log_damaged"], true, "{info}");
    let out = lab.appliance(&["log", "--verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("record 1"),
        "{}",
        text(&out.stdout)
    );
    // The next step in text mode too (it was only in --json).
    assert!(
        text(&out.stderr).contains("what to do: do not trust this appliance's history"),
        "{}",
        text(&out.stderr)
    );
    lab.stop();
}

/// Records cut from the end of the custody log (with the appliance off) still chain, but the
/// power-ups tell: the next boot's `power-up` skips the numbers of the boots removed, and
/// `log --verify` fails naming them.
#[test]
fn appliance_custody_records_cut_from_the_end_are_detected() {
    let mut lab = Lab::new(41);
    lab.start();
    lab.provision_and_unlock();
    lab.stop();
    lab.start(); // power-up #2
    lab.appliance_ok(&["log", "--verify"]);
    lab.stop();
    // Drop the last record (power-up #2, and what followed it).
    let path = lab.p("state/custody.log");
    let bytes = std::fs::read(&path).unwrap();
    let mut offs = vec![0usize];
    while *offs.last().unwrap() < bytes.len() {
        let off = *offs.last().unwrap();
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        offs.push(off + 8 + len);
    }
    std::fs::write(&path, &bytes[..offs[offs.len() - 2]]).unwrap();
    lab.start(); // power-up #3
    let out = lab.appliance(&["log", "--verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("from provisioning (boot 1) to power-up #3"),
        "{}",
        text(&out.stdout)
    );
    lab.stop();
}

/// Records cut after the last power-up leave the chain and the power-ups whole: a finder's
/// wrong PINs cut from the tail (the log "intact" while `info` counted them), and an erased
/// appliance's erase record. `log --verify` checks them against what the appliance counts.
#[test]
fn appliance_custody_cut_wrong_pins_and_erase_are_detected() {
    let cut_last = |path: &std::path::Path, n: usize| {
        let bytes = std::fs::read(path).unwrap();
        let mut offs = vec![0usize];
        while *offs.last().unwrap() < bytes.len() {
            let off = *offs.last().unwrap();
            let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
            offs.push(off + 8 + len);
        }
        std::fs::write(path, &bytes[..offs[offs.len() - 1 - n]]).unwrap();
    };
    let mut lab = Lab::new(42);
    lab.start();
    lab.provision_and_unlock();
    lab.appliance_ok(&["lock"]);
    for _ in 0..3 {
        loop {
            let out = lab.appliance(&["unlock", "--pin-file", "wrong-pin"]);
            if !text(&out.stderr).contains("BackOff") {
                assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(60));
        }
    }
    lab.appliance_ok(&["log", "--verify"]);
    lab.stop();
    let path = lab.p("state/custody.log");
    cut_last(&path, 3);
    lab.start();
    let out = lab.appliance(&["log", "--verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("counted 3 wrong PIN(s) ever, but its log records 0"),
        "{}",
        text(&out.stdout)
    );
    lab.stop();

    // An erased appliance whose erase record was cut.
    let mut lab = Lab::new(43);
    lab.start();
    lab.provision_and_unlock();
    lab.appliance_ok(&["erase", "--yes", "--pin-file", "pin"]);
    lab.appliance_ok(&["log", "--verify"]);
    lab.stop();
    cut_last(&lab.p("state/custody.log"), 1);
    lab.start();
    let out = lab.appliance(&["log", "--verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("erased, but its log holds no erase record"),
        "{}",
        text(&out.stdout)
    );
    lab.stop();
}

/// An appliance erased with `--overwrite` holds zeros by design: reading it said "not a FAT32
/// file system ... format it" and "reconnect it, then run the same command again", exit 3.
/// It says the appliance was erased and its medium overwritten, exit 1.
#[test]
fn an_overwritten_appliance_is_said_to_be_erased_not_unformatted() {
    let mut lab = Lab::new(44);
    lab.start();
    lab.provision_and_unlock();
    lab.appliance_ok(&["erase", "--yes", "--overwrite", "--pin-file", "pin"]);
    let tty = lab.tty();
    let out = lab.run(&["inspect", "--appliance", tty.as_str()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let said = text(&out.stderr);
    assert!(
        said.contains("the appliance was erased and its medium overwritten")
            && !said.contains("medium format")
            && !said.contains("reconnect"),
        "{said}"
    );
    lab.stop();
}

/// A capture removed through the appliance (`medium rm`, `capture --abort`) is a custody
/// record: the log ended on the removed capture's commit, the capture no longer on the
/// medium.
#[test]
fn a_removal_through_the_appliance_is_in_its_custody_log() {
    let mut lab = Lab::new(40);
    lab.start();
    lab.provision_and_unlock();
    lab.keygen();
    std::fs::write(lab.p("disk.raw"), vec![7u8; 4 << 20]).unwrap();
    lab.capture();
    let tty = lab.tty();
    let o = lab.run(&[
        "medium",
        "rm",
        "--appliance",
        &tty,
        "--name",
        "web01",
        "--force",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let log = lab.appliance_json(&["log", "--verify"]);
    assert_eq!(log["verified"], true, "{log}");
    let events = log["entries"].to_string();
    assert!(events.contains("CaptureRemoved"), "{events}");
    let out = lab.appliance(&["log"]);
    assert!(
        text(&out.stdout).contains("capture web01 generation 1 removed"),
        "{}",
        text(&out.stdout)
    );
    lab.stop();
}

/// A sealed appliance whose custody log was damaged in transit (one byte of an early record):
/// the medium is as sealed and arrival signs its pass, but it says the log failed and exits 1
/// (it exited 0, and the shipment was ingested on the arrival alone).
#[test]
fn an_arrival_over_a_damaged_custody_log_says_so_and_fails() {
    let mut lab = Lab::new(64);
    lab.sealed(4);
    lab.stop();
    let path = lab.p("state/custody.log");
    let mut bytes = std::fs::read(&path).unwrap();
    let first_len = u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
    bytes[8 + first_len + 8 + 20] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    lab.start();
    let out = lab.appliance(&["arrival"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let said = text(&out.stdout);
    assert!(
        said.contains("arrival check passed") && said.contains("custody log FAILED verification"),
        "{said}"
    );
    // Its next step is not "ingest" (it said so beside "ask ... before ingesting").
    assert!(
        said.contains("next: the medium is as sealed, but its custody log did not verify"),
        "{said}"
    );
    let out = lab.appliance(&["--json", "arrival"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["custody_log_failed"].is_string(), "{v}");
    assert_eq!(v["error"]["code"], 1, "{v}");
    // An ingest through it warns, in its report too (it said nothing).
    let out = lab.ingest(&["--json", "--allow-untrusted"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["warnings"].to_string().contains("FAILED verification"),
        "{v}"
    );
    lab.stop();
}

/// One wrong PIN, retried past its back-off (milliseconds under --test-timing).
fn wrong_pin(lab: &Lab) {
    loop {
        let out = lab.appliance(&["unlock", "--pin-file", "wrong-pin"]);
        if !text(&out.stderr).contains("BackOff") {
            assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(60));
    }
}

/// Zero bytes of the simulator's `State` slot (postcard: lifecycle, then the counters boots,
/// unlocks, wrong PINs in a row, wrong PINs ever, ...), as a finder with the appliance open
/// would.
fn zero_state_bytes(lab: &Lab, at: &[usize]) {
    let path = lab.p("state/secrets/state");
    let mut bytes = std::fs::read(&path).unwrap();
    for &i in at {
        bytes[i] = 0;
    }
    std::fs::write(&path, &bytes).unwrap();
}

/// The PIN counter zeroed by hand between power-ups: nine wrong PINs, then three more "1, 2,
/// 3 in a row" with no unlock between. Every record is signed and chained, and `log --verify`
/// said "verified: 14 records"; the counts it says contradict each other, and it fails
/// naming them.
#[test]
fn appliance_custody_pin_counter_reset_outside_the_firmware_is_detected() {
    let mut lab = Lab::new(45);
    lab.start();
    lab.appliance_ok(&["provision", "--pin-file", "pin"]);
    for _ in 0..9 {
        wrong_pin(&lab);
    }
    lab.appliance_ok(&["log", "--verify"]);
    lab.stop();
    zero_state_bytes(&lab, &[3]);
    lab.start();
    for _ in 0..3 {
        wrong_pin(&lab);
    }
    let out = lab.appliance(&["log", "--verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let said = text(&out.stdout);
    assert!(
        said.contains("record 11: it says 1 wrong PIN in a row after record 9 said 9")
            && said.contains("reset outside its firmware"),
        "{said}"
    );
    lab.stop();
}

/// The whole custody log deleted, with the counters that tell its records zeroed: the log a
/// lone `power-up #1`, and `log --verify` said "verified: 1 records" of a provisioned
/// appliance. A provisioned appliance's log starts with its provisioning; and with the
/// counters kept, the failure said "the log goes from provisioning (boot 1)" of a log that
/// held none.
#[test]
fn appliance_custody_deleted_log_is_detected() {
    for zeroed in [&[1usize, 3, 4][..], &[]] {
        let mut lab = Lab::new(46);
        lab.start();
        lab.provision_and_unlock();
        lab.appliance_ok(&["lock"]);
        wrong_pin(&lab);
        lab.stop();
        std::fs::remove_file(lab.p("state/custody.log")).unwrap();
        zero_state_bytes(&lab, zeroed);
        lab.start();
        let out = lab.appliance(&["log", "--verify"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
        let said = text(&out.stdout);
        assert!(
            said.contains("but its custody log starts with \"power-up #")
                && said.contains("not with its provisioning")
                && !said.contains("from provisioning"),
            "{said}"
        );
        lab.stop();
    }
}
