//! Ten wrong PINs in a row: the appliance crypto-erases (key slot files on
//! the medium overwritten, identity secret gone), logs it, and the capture
//! can no longer be ingested.

use std::time::Duration;

use crate::appliance_util::*;
use mgear_tests::Line;

#[test]
fn appliance_ten_wrong_pins_erase_key_slots_and_ingest_fails() {
    let mut lab = Lab::new(64);
    lab.keygen();
    lab.make_disk(3, 3);
    lab.start();
    lab.provision_and_unlock();
    lab.capture();
    lab.appliance_ok(&["lock"]);
    let keys_before = {
        lab.stop();
        let k = lab.medium_read("MGEAR/web01/KEYS");
        lab.start();
        k
    };
    assert!(
        keys_before.starts_with(b"age-encryption.org"),
        "KEYS is not an age file before the lockout"
    );

    // PINs no rule admits (a space, a trailing space left in the file, too long) are
    // refused on the host: twelve of them use up none of the ten attempts.
    for (i, bad) in ["12 34 56\n", "246810 \n", &format!("{}\n", "7".repeat(65))]
        .iter()
        .cycle()
        .take(12)
        .enumerate()
    {
        let f = lab.p(&format!("bad-pin-{i}"));
        std::fs::write(&f, bad).unwrap();
        std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let out = lab.appliance(&["unlock", "--pin-file", &f.to_string_lossy()]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            text(&out.stderr).contains("no attempt used"),
            "{}",
            text(&out.stderr)
        );
    }
    assert_eq!(lab.state(), "Locked");

    let mut wrong = 0;
    while wrong < 10 {
        let out = lab.appliance(&["unlock", "--pin-file", "wrong-pin"]);
        assert_eq!(out.status.code(), Some(2));
        let err = text(&out.stderr);
        if err.contains("BackOff") {
            // Its next step is to wait, not "unlock it" at once (refused again).
            assert!(
                err.contains("wait the time the message gives") && !err.contains("next: unlock"),
                "{err}"
            );
            // The exponential back-off (milliseconds under --test-timing).
            std::thread::sleep(Duration::from_millis(60));
            continue;
        }
        wrong += 1;
        if wrong < 10 {
            assert!(err.contains("WrongPin"), "attempt {wrong}: {err}");
            // Its next step is not the command that just failed (a retry loop spent every
            // attempt until the erase).
            assert!(
                err.contains("never retry a PIN automatically") && !err.contains("next: unlock"),
                "attempt {wrong}: {err}"
            );
        }
    }
    assert_eq!(lab.state(), "Erased");
    // The right PIN no longer helps.
    assert_eq!(
        lab.appliance(&["unlock", "--pin-file", "pin"])
            .status
            .code(),
        Some(2)
    );
    let log = lab.appliance_json(&["log", "--verify"]);
    assert_eq!(log["verified"], true, "{log}");
    let events = log["entries"].to_string();
    assert!(
        events.contains("PinLockout") && events.contains("WrongPin"),
        "{events}"
    );
    lab.stop();

    // Key slot destroyed on the medium itself.
    let keys_dir = lab.medium_files("MGEAR/web01");
    if keys_dir.iter().any(|n| n == "KEYS") {
        let k = lab.medium_read("MGEAR/web01/KEYS");
        assert!(
            !k.starts_with(b"age-encryption.org"),
            "KEYS survived the crypto-erase"
        );
        assert_ne!(k, keys_before);
    }
    // Even with the target key and without the attestation gate, nothing decrypts.
    let m = format!("fat:{}", lab.s("medium.img"));
    let out = Line::ingest(&lab, "web01")
        .medium(&m)
        .untrusted()
        .target("file:vol.raw")
        .unsealed()
        .run();
    assert!(!out.status.success(), "ingest after crypto-erase succeeded");
    // Said as the erase it is, not as a medium "altered since" to be investigated.
    let said = text(&out.stderr);
    assert!(
        said.contains("key slots are gone") && said.contains("its key slots were erased"),
        "{said}"
    );
    assert!(!said.contains("altered since"), "{said}");
    assert!(
        !lab.p("vol.raw").exists()
            || std::fs::read(lab.p("vol.raw")).unwrap()
                != std::fs::read(lab.p("disk.raw")).unwrap()
    );
}
