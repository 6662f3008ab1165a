//! One byte of the medium file changed between seal and arrival: arrival
//! fails and names the place (the segment inside a capture, or the raw
//! region outside captures), and ingest is refused.

use crate::appliance_util::*;

/// Changes byte 300 of web01's first segment (the simulator stopped); its name.
fn flip_a_byte_of_a_segment(lab: &Lab) -> String {
    let seg = lab
        .medium_files("MGEAR/web01/G0001")
        .into_iter()
        .find(|n| n.starts_with("SEG-"))
        .expect("a segment file");
    let off = lab.offset_in_medium(&format!("MGEAR/web01/G0001/{seg}"));
    lab.flip_medium_byte(off + 300);
    seg
}

#[test]
fn appliance_tamper_in_a_segment_is_named_and_blocks_ingest() {
    let mut lab = Lab::new(64);
    lab.sealed(4);
    lab.stop();
    let seg = flip_a_byte_of_a_segment(&lab);
    lab.start();

    let out = lab.appliance(&["arrival"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let said = text(&out.stdout);
    assert!(
        said.contains(&seg) && said.contains("web01"),
        "arrival did not name the segment: {said}"
    );
    assert_ne!(lab.state(), "Arrived");
    // What comes next is not the arrival check again (it finds the same).
    assert!(
        said.contains("next: do not ingest from it")
            && !said.contains("run `mgear appliance arrival`"),
        "{said}"
    );
    let out = lab.ingest(&[]);
    assert!(
        !out.status.success(),
        "ingest of a tampered medium succeeded"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("checked the medium on arrival and it FAILED")
            && !err.contains("arrival` first"),
        "{err}"
    );
    // Its next step agrees: not to fetch the attestations again (the arrival just failed).
    assert!(
        err.contains("what to do: nothing was installed: do not ingest from this medium")
            && !err.contains("give ingest the appliance's attestations"),
        "{err}"
    );
    lab.stop();
}

#[test]
fn appliance_tamper_outside_captures_names_the_region() {
    let mut lab = Lab::new(64);
    lab.sealed(2);
    lab.stop();
    // Free space near the end of the 64 MiB medium: region 3 of 16 MiB regions.
    lab.flip_medium_byte((64 << 20) - 12345);
    lab.start();
    let out = lab.appliance(&["arrival"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let said = text(&out.stdout);
    assert!(
        said.contains("region 3"),
        "arrival did not name the region: {said}"
    );
    lab.stop();
}

/// A record damaged before the seal: the seal is refused, and its next step is to mend the
/// damage (it said "capture onto it, then seal", which changes nothing).
#[test]
fn a_seal_refused_for_a_damaged_record_says_how_to_mend_it() {
    let mut lab = Lab::new(64);
    lab.keygen();
    lab.make_disk(4, 7);
    lab.start();
    lab.provision_and_unlock();
    lab.capture();
    lab.stop();
    flip_a_byte_of_a_segment(&lab);
    lab.start();
    lab.appliance_ok(&["unlock", "--pin-file", "pin"]);
    let out = lab.appliance(&["seal"]);
    // A finding (1), as `appliance verify` says it: 2 is also "already sealed", and a script
    // took this refusal for that.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("seal refused: verification found")
            && err.contains("verify`: each PROBLEM line")
            && err.contains("medium rm --force")
            && !err.contains("capture onto it"),
        "{err}"
    );
    assert_eq!(lab.state(), "Unlocked");
    lab.stop();
}

/// The courier replaces the sealed capture with one of their own to `target.pub` (unsigned,
/// made without the appliance, under the same name): ingest through the appliance refuses
/// it on the failed arrival check. It was refused as "no seal/arrival attestations found",
/// blaming a missing --sign and offering --allow-untrusted.
#[test]
fn a_capture_replaced_on_a_sealed_medium_is_refused_on_its_failed_arrival() {
    let mut lab = Lab::new(64);
    lab.sealed(4);
    lab.stop();
    let m = format!("fat:{}", lab.s("medium.img"));
    lab.ok(&["medium", "rm", "--medium", &m, "--name", "web01", "--force"]);
    lab.make_disk(4, 99);
    lab.ok(&[
        "capture",
        "--source",
        &lab.s("disk.raw"),
        "--medium",
        &m,
        "--name",
        "web01",
        "--recipient",
        &lab.s("target.pub"),
    ]);
    lab.start();
    // Not checked on arrival yet: the appliance's word is said, not "no attestations".
    let out = lab.ingest(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("has not checked it on arrival")
            && !err.contains("no seal/arrival attestations found"),
        "{err}"
    );
    let out = lab.appliance(&["arrival"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let out = lab.ingest(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("checked the medium on arrival and it FAILED")
            && err.contains("do not ingest from this medium")
            && !err.contains("no seal/arrival attestations found")
            && !err.contains("--allow-untrusted"),
        "{err}"
    );
    assert!(!lab.p("vol.raw").exists());
    lab.stop();
}

/// A capture written onto a copy of the sealed medium since the seal (no file of it in the
/// seal): the sealed capture is ingested as it is, but "seal + arrival" vouched for it with
/// not a word of the medium no longer being what the appliance sealed (verify named it).
#[test]
fn a_capture_added_to_a_sealed_medium_is_warned_of_at_ingest() {
    let mut lab = Lab::new(64);
    lab.sealed(4);
    lab.appliance_ok(&["arrival"]);
    let att = lab.s("att");
    lab.appliance_ok(&["attestations", "--out", &att]);
    let fp = lab.fingerprint();
    lab.stop();
    let m = format!("fat:{}", lab.s("medium.img"));
    lab.make_disk(2, 5);
    lab.ok(&[
        "capture",
        "--source",
        &lab.s("disk.raw"),
        "--medium",
        &m,
        "--name",
        "evil01",
        "--recipient",
        &lab.s("target.pub"),
    ]);
    let out = lab.run(&[
        "ingest",
        "--medium",
        &m,
        "--name",
        "web01",
        "--identity",
        &lab.s("target.key"),
        "--trust-appliance",
        &fp,
        "--attestations",
        &att,
        "--target",
        &format!("file:{}", lab.s("vol.raw")),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let warned = v["warnings"].as_array().is_some_and(|w| {
        w.iter().any(|w| {
            let w = w.as_str().unwrap();
            w.contains("did not seal (evil01)") && w.contains("since the seal")
        })
    });
    assert!(warned, "{v}");
}
