//! A sealed appliance cannot be turned against its shipment: PIN guessing
//! wipes only the appliance's own secrets (every byte of the medium stays as
//! sealed and the capture still decrypts with target.key), unlock is refused
//! with a true message, erase needs the PIN, a failed arrival withdraws the
//! earlier pass, cutting the custody log is detected, the pinned identity is
//! what `log --verify --trust-appliance` checks against, and the console
//! never echoes a PIN. The simulator's state is private and refuses planted
//! symlinks.

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::appliance_util::*;

/// Give `args` (an erase or unlock with a PIN) until it stops answering
/// BackOff; returns the last output.
fn without_backoff(lab: &Lab, args: &[&str]) -> std::process::Output {
    loop {
        let out = lab.appliance(args);
        if text(&out.stderr).contains("BackOff") {
            // The exponential back-off (milliseconds under --test-timing).
            std::thread::sleep(Duration::from_millis(60));
            continue;
        }
        return out;
    }
}

#[test]
fn appliance_sealed_lockout_spares_the_shipment() {
    let mut lab = Lab::new(64);
    lab.sealed(3);
    // What the target pinned when it provisioned this appliance.
    let pinned = lab.fingerprint();
    let sealed_medium = std::fs::read(lab.p("medium.img")).unwrap();

    // Unlock on a sealed appliance: refused, and it says why.
    let out = lab.appliance(&["unlock", "--pin-file", "pin"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(
        !text(&out.stdout).contains("unlocked"),
        "{}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert!(err.contains("sealed") && err.contains("read-only"), "{err}");
    assert_eq!(lab.state(), "Sealed");

    // A capture onto it: refused for what it is (sealed, exit 2), before any
    // plan (it used to exit 3, or call the sealed medium full).
    let out = lab.capture_line().run();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("is sealed: its medium is read-only for good, so a capture is refused"),
        "{err}"
    );
    assert_eq!(std::fs::read(lab.p("medium.img")).unwrap(), sealed_medium);

    // Erase without the PIN and without a terminal: told to use --pin-file.
    let out = lab.appliance(&["erase", "--yes"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--pin-file"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(lab.state(), "Sealed");

    // Ten wrong PINs through erase.
    let args = ["erase", "--yes", "--pin-file", "wrong-pin"];
    for attempt in 1..=10 {
        let out = without_backoff(&lab, &args);
        assert_eq!(out.status.code(), Some(2), "attempt {attempt}");
        let err = text(&out.stderr);
        if attempt < 10 {
            assert!(err.contains("WrongPin"), "attempt {attempt}: {err}");
        } else {
            assert!(
                err.contains("Erased") && err.contains("not touched"),
                "{err}"
            );
            assert!(!err.contains("factory reset"), "{err}");
        }
    }
    assert_eq!(lab.state(), "Erased");
    // The seal attestation survives; no arrival can be signed any more.
    let att = lab.appliance_json(&["attestations"]);
    assert!(att["seal"].is_object() && att["arrival"].is_null(), "{att}");
    let out = lab.appliance(&["arrival"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!text(&out.stderr).contains("factory reset"));
    assert!(
        text(&out.stderr).contains("log --verify"),
        "{}",
        text(&out.stderr)
    );

    // The custody log records a lockout that destroyed no key slot.
    let log = lab.appliance_json(&["log", "--verify"]);
    assert_eq!(log["verified"], true, "{log}");
    let last = log["entries"].as_array().unwrap().last().unwrap()["event"].clone();
    assert_eq!(last["Erase"]["reason"], "PinLockout", "{last}");
    assert_eq!(last["Erase"]["key_slots"], 0, "{last}");
    assert_eq!(last["Erase"]["overwrite_medium"], false, "{last}");
    // Ingest through it is refused (no arrival), and told the way that exists: not the
    // arrival an erased appliance refuses, but --allow-unsealed after the log check.
    let out = lab.ingest(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("was erased") && err.contains("--allow-unsealed"),
        "{err}"
    );
    assert!(!err.contains("arrival` first"), "{err}");
    // The erase the operator then asks for with the right PIN: not "erased already", exit 0,
    // beside a certificate that read as the capture destroyed. Said as what it is (exit 1),
    // and the certificate says the key slots are left and which medium it is (the erased
    // appliance no longer says; its seal attestation does).
    let out = lab.appliance(&[
        "erase",
        "--yes",
        "--pin-file",
        "pin",
        "--certificate",
        "cert.json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("still decrypts with target.key") && err.contains("destroy the medium itself"),
        "{err}"
    );
    let cert: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.p("cert.json")).unwrap()).unwrap();
    assert_eq!(cert["medium"]["key_slots_left"], true, "{cert}");
    assert_eq!(
        cert["medium"]["id"].as_str().map(str::len),
        Some(32),
        "{cert}"
    );
    assert_eq!(
        cert["medium"]["id"], att["seal"]["body"]["medium_id"],
        "{cert}"
    );
    let txt = std::fs::read_to_string(lab.p("cert.txt")).unwrap();
    assert!(txt.contains("NOT DESTROYED"), "{txt}");
    lab.stop();

    // Not one byte of the medium changed, target.key still decrypts it, and
    // the appliance's witness signature in COMMIT (made before the lockout)
    // still vouches for it under the pinned fingerprint.
    assert!(
        std::fs::read(lab.p("medium.img")).unwrap() == sealed_medium,
        "the lockout changed the sealed medium"
    );
    let m = format!("fat:{}", lab.s("medium.img"));
    let out = lab.ok(&[
        "verify",
        "--medium",
        &m,
        "--identity",
        "target.key",
        "--trust-appliance",
        &pinned,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["ok"].clone(), v["keyed"].clone()),
        (true.into(), true.into()),
        "{v}"
    );
    assert_eq!(v["trust"][0]["trusted"], true, "{v}");
}

#[test]
fn appliance_sealed_erase_needs_the_pin() {
    let mut lab = Lab::new(64);
    lab.sealed(2);
    let out = without_backoff(&lab, &["erase", "--yes", "--pin-file", "wrong-pin"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(lab.state(), "Sealed");
    let out = without_backoff(&lab, &["--json", "erase", "--yes", "--pin-file", "pin"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["key_slots"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(lab.state(), "Erased");
    lab.stop();
}

#[test]
fn appliance_failed_arrival_withdraws_the_pass_and_log_cut_is_detected() {
    let mut lab = Lab::new(64);
    lab.sealed(2);
    let a = lab.appliance_json(&["arrival"]);
    let challenge = a["challenge"].as_str().unwrap().to_string();
    assert_eq!(challenge.len(), 64);
    // --json shows byte strings as hex.
    let signed_hex = a["attestation"]["body"]["challenge"]
        .as_str()
        .expect("challenge in the arrival body");
    assert_eq!(signed_hex, challenge);
    assert_eq!(lab.state(), "Arrived");
    let arrival_records = a["attestation"]["body"]["log_records"].as_u64().unwrap();
    assert!(arrival_records > 0);

    // The pinned identity: the full fingerprint info prints.
    let info = lab.appliance_json(&["info"]);
    let fp = info["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(fp.len(), 64, "{info}");
    let human = text(&lab.appliance_ok(&["info"]).stdout);
    assert!(human.contains(&fp), "{human}");
    lab.appliance_ok(&["log", "--verify", "--trust-appliance", &fp]);
    let other = "ab".repeat(32);
    let out = lab.appliance(&["log", "--verify", "--trust-appliance", &other]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("not the pinned appliance"),
        "{}",
        text(&out.stdout)
    );
    // Its public key (info prints it too) pinned by mistake is named as such: the operator's
    // mistake (exit 2), not a history to distrust (exit 1).
    let pubkey = info["identity_pubkey"].as_str().unwrap().to_string();
    let out = lab.appliance(&["log", "--verify", "--trust-appliance", &pubkey]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!(
            "is this appliance's public key, not its fingerprint: pin the fingerprint {fp}"
        )),
        "{}",
        text(&out.stderr)
    );
    let out = lab.appliance(&["log", "--verify", "--trust-appliance", "3f2a:91c0"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a short fingerprint is a usage error"
    );

    // Cut the custody log after the record the arrival attestation pins
    // last: the rest still chains, but the attestation says it was longer.
    lab.stop();
    let path = lab.p("state/custody.log");
    let bytes = std::fs::read(&path).unwrap();
    let mut off = 0usize;
    for _ in 0..arrival_records {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        off += 8 + len;
    }
    std::fs::write(&path, &bytes[..off]).unwrap();
    lab.start();
    let out = lab.appliance(&["log", "--verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let msg = text(&out.stdout);
    assert!(msg.contains("Arrival attestation"), "{msg}");

    // A changed medium: the next arrival fails and the old pass is gone.
    lab.stop();
    let at = lab.offset_in_medium("MGEAR/web01/G0001/SEG-00000") + 300;
    lab.flip_medium_byte(at);
    lab.start();
    let out = lab.appliance(&["arrival"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let att = lab.appliance_json(&["attestations"]);
    assert!(att["arrival"].is_null(), "stale arrival kept: {att}");
    assert_eq!(lab.state(), "Sealed");
    lab.stop();
}

#[test]
fn appliance_console_never_echoes_the_pin() {
    let mut lab = Lab::new(40);
    lab.start();
    // No terminal for the PIN: the way that works, not an OS error.
    let out = lab.appliance(&["provision"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("use --pin-file") && !err.contains("os error"),
        "{err}"
    );
    assert_eq!(lab.state(), "Factory");
    lab.provision_and_unlock();
    lab.appliance_ok(&["lock"]);
    let mut con = Console::open(&lab.tty());
    for line in [
        format!("UNLOCK {PIN}\r"),
        format!("   unlock {PIN}\r"),
        format!("Unlock\t{PIN}\r"),
        format!("unlock{PIN}\r"),
    ] {
        con.send(b"lock\r");
        con.send(line.as_bytes());
        let got = con.read_until(|g| {
            let t = text(g);
            t.contains("unlocked: the medium") || t.contains("usage: unlock")
        });
        std::thread::sleep(Duration::from_millis(50));
        let t = text(&got);
        assert!(
            !t.contains(PIN) && !t.contains("2468"),
            "{line:?} echoed: {t}"
        );
    }
    lab.stop();
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o777
}

#[test]
fn appliance_sim_state_is_private_and_refuses_planted_links() {
    let mut lab = Lab::new(40);
    lab.start();
    lab.provision_and_unlock();
    lab.stop();
    assert_eq!(mode(&lab.p("state")), 0o700);
    assert_eq!(mode(&lab.p("state/secrets")), 0o700);
    for f in ["identity", "identity.pub", "pin", "state"] {
        assert_eq!(mode(&lab.p(&format!("state/secrets/{f}"))), 0o600, "{f}");
    }
    assert_eq!(mode(&lab.p("state/custody.log")), 0o600);

    // Someone replaces the PIN verifier with a link to a file of theirs.
    std::fs::write(lab.p("planted"), b"forged verifier").unwrap();
    std::fs::remove_file(lab.p("state/secrets/pin")).unwrap();
    std::os::unix::fs::symlink(lab.p("planted"), lab.p("state/secrets/pin")).unwrap();
    let out = Command::new(mgear_tests::bin("mgear-appliance-sim"))
        .arg("--medium")
        .arg(lab.p("medium.img"))
        .arg("--state")
        .arg(lab.p("state"))
        .arg("--console-link")
        .arg(lab.p("appliance.tty"))
        .arg("--nbd")
        .arg(lab.p("appliance.sock"))
        .arg("--test-timing")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the simulator followed a planted link"
    );
    assert!(
        text(&out.stderr).contains("symbolic link"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(lab.p("planted")).unwrap(), b"forged verifier");
}

/// Ten wrong PINs on an appliance that already passed its arrival check: the medium and
/// both attestations stay, ingest still works, and the message says so (it said the
/// appliance had no arrival attestation now).
#[test]
fn a_lockout_after_arrival_keeps_the_arrival_pass_and_says_so() {
    let mut lab = Lab::new(64);
    lab.sealed(2);
    lab.appliance_ok(&["arrival"]);
    let args = ["erase", "--yes", "--pin-file", "wrong-pin"];
    let mut last = String::new();
    for _ in 1..=10 {
        last = text(&without_backoff(&lab, &args).stderr);
    }
    assert!(
        last.contains("checked on arrival, was not touched")
            && last.contains("arrival attestations stay")
            && !last.contains("no arrival attestation now"),
        "{last}"
    );
    let out = lab.ingest(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    lab.stop();
}

/// An arrival check that failed, the byte put back, then a lockout (ten wrong PINs): the
/// lockout and ingest say the check failed. The lockout said "it was never checked on
/// arrival ... ingest it with target.key", ingest "erased before its arrival check" with
/// --allow-unsealed as the way on.
#[test]
fn appliance_locked_out_after_a_failed_arrival_says_it_failed() {
    let mut lab = Lab::new(64);
    lab.sealed(2);
    lab.stop();
    let seg = lab
        .medium_files("MGEAR/web01/G0001")
        .into_iter()
        .find(|n| n.starts_with("SEG-"))
        .expect("a segment file");
    let at = lab.offset_in_medium(&format!("MGEAR/web01/G0001/{seg}")) + 300;
    lab.flip_medium_byte(at);
    lab.start();
    assert_eq!(lab.appliance(&["arrival"]).status.code(), Some(1));
    lab.stop();
    lab.flip_medium_byte(at);
    lab.start();
    let args = ["erase", "--yes", "--pin-file", "wrong-pin"];
    let mut last = String::new();
    for _ in 1..=10 {
        last = text(&without_backoff(&lab, &args).stderr);
    }
    assert!(
        last.contains("its arrival check FAILED") && !last.contains("never checked"),
        "{last}"
    );
    let out = lab.ingest(&[]);
    let t = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("checked the medium on arrival and it FAILED")
            && t.contains("(and it was erased since)")
            && !t.contains("--allow-unsealed"),
        "{t}"
    );
    lab.stop();
}

/// An appliance erased (locked out) after its seal and before its arrival check signs no
/// arrival, but its seal still lists what it sealed: a generation deleted since then is
/// refused through the appliance and from its export (a seal alone), `--allow-unsealed` or not;
/// the intact medium goes on with `--allow-unsealed`.
#[test]
fn appliance_erased_before_arrival_still_has_its_seal_checked() {
    let mut lab = Lab::new(64);
    lab.keygen();
    lab.make_disk(3, 1);
    lab.start();
    lab.provision_and_unlock();
    lab.capture();
    lab.make_disk(3, 2);
    lab.capture_line().arg("--delta").ok();
    // Exported before the seal: nothing to export, refused (it exited 0 beside an empty
    // directory, and the ingest given it failed on "cannot open none/SEAL").
    let out = lab.appliance(&["attestations", "--out", "none"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("has not been sealed): nothing was exported"),
        "{}",
        text(&out.stderr)
    );
    assert!(!lab.p("none").exists());
    // An arrival check of an unsealed appliance: the next step is not "seal it" (at the
    // target, that vouches for whatever the courier left on it).
    let out = lab.appliance(&["arrival"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("do not seal it here"),
        "{}",
        text(&out.stderr)
    );
    lab.appliance_ok(&["seal"]);
    let fp = lab.fingerprint();
    // Exported before the arrival check: a seal alone, as an erased appliance exports.
    lab.appliance_ok(&["attestations", "--out", "early"]);
    assert!(lab.p("early/SEAL").exists() && !lab.p("early/ARRIVAL").exists());
    let args = ["erase", "--yes", "--pin-file", "wrong-pin"];
    for _ in 1..=10 {
        without_backoff(&lab, &args);
    }
    assert_eq!(lab.state(), "Erased");
    lab.appliance_ok(&["attestations", "--out", "att"]);
    assert!(lab.p("att/SEAL").exists() && !lab.p("att/ARRIVAL").exists());
    // Without --allow-unsealed: refused, with the step that works (it said to fetch the
    // attestations after an arrival check the erased appliance can no longer make).
    let out = lab.ingest(&[]);
    let t = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("can no longer attest its arrival")
            && t.contains("what to do: nothing was installed: ingest it with --allow-unsealed")
            && !t.contains("seal does not check"),
        "{t}"
    );
    let out = lab.ingest(&["--allow-unsealed"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    lab.stop();

    // The courier deletes G0002 from the medium image, and the appliance is powered again.
    lab.remove_medium_dir("MGEAR/web01/G0002");
    lab.start();
    let refused = |out: &std::process::Output| {
        let t = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{t}");
        assert!(
            t.contains("is not what it sealed") && t.contains("G0002"),
            "{t}"
        );
    };
    refused(&lab.ingest(&["--allow-unsealed"]));
    let m = format!("fat:{}", lab.s("medium.img"));
    lab.stop();
    refused(&lab.run(&[
        "ingest",
        "--name",
        "web01",
        "--identity",
        "target.key",
        "--medium",
        &m,
        "--attestations",
        "att",
        "--trust-appliance",
        &fp,
        "--allow-unsealed",
        "--target",
        "file:vol2.raw",
    ]));
    assert!(!lab.p("vol2.raw").exists());
    // The export made before the arrival check: its advice names the arrival check first
    // (it named the --attestations given, and the override).
    let out = lab.run(&[
        "ingest",
        "--name",
        "web01",
        "--identity",
        "target.key",
        "--medium",
        &m,
        "--attestations",
        "early",
        "--trust-appliance",
        &fp,
        "--target",
        "file:vol3.raw",
    ]);
    let t = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("exported before the appliance's arrival check")
            && t.contains("what to do: nothing was installed: if the appliance still has its identity, run `mgear appliance --port PORT arrival`"),
        "{t}"
    );
    assert!(!lab.p("vol3.raw").exists());
}

/// A target that pins the capture site's key takes only what the site signed, an appliance's
/// seal beside it notwithstanding: a courier who found an appliance of a span left unlocked
/// wrote an unsigned capture of the same name onto it and sealed it, and the target, pinning
/// both the site key and every appliance of the span, installed it on that seal. Unsigned
/// and appliance-pinned only, the appliance's word is all there is, and it is taken.
#[test]
fn a_pinned_site_key_is_required_beside_a_pinned_appliance() {
    let mut lab = Lab::new(64);
    lab.sealed(3);
    lab.appliance_ok(&["arrival"]);
    lab.ok(&["keygen", "--signing", "--out", "site.key"]);
    let out = lab.ingest(&["--trust", "site.pub"]);
    let t = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("but not signed by the capture site key pinned with --trust"),
        "{t}"
    );
    assert!(!lab.p("vol.raw").exists(), "nothing installed");
    // verify with the same pins says so (it said TRUSTED, a warning beside, exit 0).
    let fp = lab.fingerprint();
    let tty = lab.tty();
    let out = lab.run(&[
        "verify",
        "--appliance",
        &tty,
        "--identity",
        "target.key",
        "--trust",
        "site.pub",
        "--trust-appliance",
        &fp,
    ]);
    let t = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("NOT TRUSTED web01") && !t.contains("\nTRUSTED web01"),
        "{t}"
    );
    let out = lab.ingest(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    lab.stop();
}

/// An arrival check that failed, then one that passed (a byte changed in transit, put back
/// since): an ingest through the appliance says so in its warnings (the report said nothing of
/// it: only a reader of the custody log by hand knew).
#[test]
fn an_arrival_that_failed_before_the_one_that_passed_is_in_the_ingest_warnings() {
    let mut lab = Lab::new(64);
    lab.sealed(2);
    lab.stop();
    let at = lab.offset_in_medium("MGEAR/web01/G0001/SEG-00000") + 300;
    lab.flip_medium_byte(at);
    lab.start();
    let out = lab.appliance(&["arrival"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    lab.stop();
    lab.flip_medium_byte(at);
    lab.start();
    lab.appliance_ok(&["arrival"]);
    let out = lab.ingest(&["--json", "--allow-untrusted"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["warnings"]
            .to_string()
            .contains("1 arrival check(s) that FAILED before the one that passed"),
        "{v}"
    );
    lab.stop();
}
