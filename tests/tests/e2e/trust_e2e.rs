//! Pinned trust at the target, played as an attacker would: holding only
//! the medium (or the appliance) and `target.pub`. Each attack must be
//! refused (exit 1, a message saying what was expected and what was found);
//! the legitimate journey with `--trust` must pass.

use std::fs;
use std::path::Path;
use std::process::Output;

use mgear_appliance_api::attest::{Attestation, AttestationBody, AttestationKind, FileDigest};
use mgear_tests::{output_text, same_file, Env, Line};
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

fn write_disk(path: &Path, mib: usize, seed: u64) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut d = vec![0u8; mib << 20];
    for (i, c) in d.chunks_mut(1 << 20).enumerate() {
        if i % 3 != 1 {
            rng.fill_bytes(c);
        }
    }
    fs::write(path, d).unwrap();
}

/// The same disk, a little changed since (what a delta captures): one byte of its first chunk.
fn change_disk(path: &Path) {
    let mut d = fs::read(path).unwrap();
    d[100] ^= 0xff;
    fs::write(path, d).unwrap();
}

/// Target key pair, the site's signing key, a disk and an empty `dir:` medium.
fn site() -> Env {
    let e = Env::new();
    e.keygen();
    e.ok(&["keygen", "--signing", "--out", "site.key"]);
    write_disk(&e.p("disk.raw"), 3, 1);
    fs::create_dir(e.p("mnt")).unwrap();
    e
}

fn capture(e: &Env, disk: &str, extra: &[&str]) -> serde_json::Value {
    e.capture("dir:mnt", "web01")
        .source(disk)
        .args(&["--chunk-size", "256KiB"])
        .args(extra)
        .json()
}

fn ingest(e: &Env, extra: &[&str]) -> Output {
    e.ingest("dir:mnt", "web01")
        .target("file:vol.raw")
        .arg("--force")
        .args(extra)
        .run()
}

fn refused(o: &Output, what: &[&str]) {
    let t = output_text(o);
    assert_eq!(o.status.code(), Some(1), "expected a refusal (exit 1): {t}");
    for w in what {
        assert!(t.contains(w), "refusal does not say {w:?}: {t}");
    }
}

#[test]
fn legitimate_signed_capture_passes_and_receipt_names_it() {
    let e = site();
    let c = capture(&e, "disk.raw", &["--sign", "site.key"]);
    let r = &c["receipt"];
    assert_eq!(r["generation"], 1, "{c}");
    assert_eq!(r["manifest_root"], c["manifest_root"], "{c}");
    assert_eq!(r["commit_digest"].as_str().unwrap().len(), 64, "{c}");
    assert!(
        r["signers"][0].as_str().unwrap().starts_with("site "),
        "{c}"
    );
    let out = ingest(&e, &["--trust", "site.pub", "--expect-generation", "1"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(output_text(&out).contains("signed by pinned site"));
    same_file(&e.p("disk.raw"), &e.p("vol.raw"));
    let v = e.ok(&[
        "verify",
        "--medium",
        "dir:mnt",
        "--identity",
        "target.key",
        "--trust",
        "site.pub",
    ]);
    let t = output_text(&v);
    assert!(
        t.contains("TRUSTED web01 generation 1") && t.contains("OK:"),
        "{t}"
    );

    // --allow-untrusted: ingest goes on, loudly, when nothing is pinned.
    let out = ingest(&e, &["--allow-untrusted", "--json"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("WARNING") && err.contains("--allow-untrusted"),
        "{err}"
    );
    // ... and in the report a script reads (it was on stderr only).
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["warnings"]
            .to_string()
            .contains("NOBODY TRUSTED VOUCHES FOR"),
        "{v}"
    );
    // Without any trust flag: refused, saying what to give.
    refused(
        &ingest(&e, &[]),
        &["no signature by a pinned key", "--trust"],
    );
}

/// A `--delta` of a signed capture made without `--sign`: exit 0 and "commit NOT SIGNED"
/// in the receipt, nothing more, and the target that pins the site key refused it. Warned
/// before the capture runs (stderr and `warnings`), and the way the warning names (the
/// command again with --sign in place of --delta) signs it without capturing again.
#[test]
fn an_unsigned_delta_of_a_signed_capture_is_warned_and_signed_after() {
    let e = site();
    capture(&e, "disk.raw", &["--sign", "site.key"]);
    change_disk(&e.p("disk.raw"));
    let c = capture(&e, "disk.raw", &["--delta"]);
    let w = c["warnings"].to_string();
    assert!(
        w.contains("generation 1 of web01 was signed by site key")
            && w.contains("with --sign KEY in place of --delta"),
        "{c}"
    );
    refused(&ingest(&e, &["--trust", "site.pub"]), &["generation 2"]);
    let c = capture(&e, "disk.raw", &["--sign", "site.key"]);
    assert_eq!(c["receipt"]["generation"], 2, "{c}");
    let out = ingest(&e, &["--trust", "site.pub"]);
    assert!(out.status.success(), "{}", output_text(&out));
    same_file(&e.p("disk.raw"), &e.p("vol.raw"));
}

#[test]
fn swap_with_target_pub_only_is_refused() {
    let e = site();
    capture(&e, "disk.raw", &["--sign", "site.key"]);
    // The attacker deletes the capture and writes their own disk with
    // target.pub, unsigned and then signed with their own key.
    fs::remove_dir_all(e.p("mnt/MGEAR/web01")).unwrap();
    write_disk(&e.p("evil.raw"), 3, 666);
    fs::remove_dir_all(e.p("state")).ok(); // the attacker has no key cache
    capture(&e, "evil.raw", &[]);
    refused(
        &ingest(&e, &["--trust", "site.pub", "--report", "refused.json"]),
        &["no COMMIT", "pinned: site"],
    );
    // The ticket's report of the refusal names the generation refused (it said `-`).
    let r: serde_json::Value =
        serde_json::from_slice(&fs::read(e.p("refused.json")).unwrap()).unwrap();
    assert_eq!(r["result"]["generation"], 1, "{r}");
    let t = fs::read_to_string(e.p("refused.txt")).unwrap();
    assert!(t.contains("web01 generation 1"), "{t}");
    fs::remove_dir_all(e.p("mnt/MGEAR/web01")).unwrap();
    fs::remove_dir_all(e.p("state")).ok();
    e.ok(&["keygen", "--signing", "--out", "evil.key"]);
    capture(&e, "evil.raw", &["--sign", "evil.key"]);
    refused(
        &ingest(&e, &["--trust", "site.pub"]),
        &["COMMIT signed by site", "which is not pinned"],
    );
    // verify with the key does not say OK.
    let v = e.run(&[
        "verify",
        "--medium",
        "dir:mnt",
        "--identity",
        "target.key",
        "--trust",
        "site.pub",
    ]);
    let t = output_text(&v);
    assert_eq!(v.status.code(), Some(1), "{t}");
    assert!(!t.contains("OK:") && t.contains("NOT TRUSTED"), "{t}");
    // Re-signing the old signature onto the swapped capture: the commit no
    // longer matches the manifest.
    let mut c = fs::read(e.p("mnt/MGEAR/web01/G0001/COMMIT")).unwrap();
    c[20] ^= 1;
    fs::write(e.p("mnt/MGEAR/web01/G0001/COMMIT"), &c).unwrap();
    refused(&ingest(&e, &["--trust", "site.pub"]), &["COMMIT"]);
}

/// Seal and arrival over the medium's capture files, signed by `key`: what
/// an attacker with their own Ed25519 key can make.
fn forge_attestations(mnt: &Path, key: &ed25519_dalek::SigningKey) -> (Attestation, Attestation) {
    let mut files = Vec::new();
    let mut stack = vec![mnt.join("MGEAR")];
    while let Some(d) = stack.pop() {
        for ent in fs::read_dir(&d).unwrap() {
            let p = ent.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let data = fs::read(&p).unwrap();
                files.push(FileDigest {
                    path: p.strip_prefix(mnt).unwrap().to_string_lossy().into_owned(),
                    len: data.len() as u64,
                    sha256: Sha256::digest(&data).into(),
                });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let body = AttestationBody {
        kind: AttestationKind::Seal,
        identity: [0; 32],
        medium_id: [1; 16],
        medium_bytes: 1 << 30,
        files,
        captures: 1,
        records: 1,
        region_size: 16 << 20,
        regions: Vec::new(),
        counter: 1,
        uptime_ms: 1,
        unix_time: None,
        seal_digest: None,
        log_records: 1,
        log_head: [0; 32],
        challenge: None,
    };
    let seal = Attestation::sign(body.clone(), key);
    let mut a = body;
    a.kind = AttestationKind::Arrival;
    a.counter = 2;
    a.seal_digest = Some(seal.digest());
    a.challenge = Some([3; 32]);
    let arrival = Attestation::sign(a, key);
    (seal, arrival)
}

fn fingerprint(key: &ed25519_dalek::SigningKey) -> String {
    Sha256::digest(key.verifying_key().to_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn self_signed_appliance_attestations_are_refused() {
    let e = site();
    capture(&e, "disk.raw", &[]);
    let real = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let evil = ed25519_dalek::SigningKey::from_bytes(&[66; 32]);
    let (seal, arrival) = forge_attestations(&e.p("mnt"), &evil);
    fs::create_dir_all(e.p("mnt/MGEAR/ATTEST")).unwrap();
    fs::write(e.p("mnt/MGEAR/ATTEST/SEAL"), postcard_bytes(&seal)).unwrap();
    fs::write(e.p("mnt/MGEAR/ATTEST/ARRIVAL"), postcard_bytes(&arrival)).unwrap();
    refused(
        &ingest(&e, &["--trust-appliance", &fingerprint(&real)]),
        &["neither pinned", &fingerprint(&real)],
    );
    // The same files under the key they were made with do pass: the
    // refusal above is the pinning, not a malformed forgery.
    let out = ingest(&e, &["--trust-appliance", &fingerprint(&evil)]);
    assert!(out.status.success(), "{}", output_text(&out));
    // A short fingerprint is a usage error, never a match.
    let out = ingest(&e, &["--trust-appliance", &fingerprint(&evil)[..16]]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
}

fn postcard_bytes(a: &Attestation) -> Vec<u8> {
    // The encoding `mgear appliance attestations --out` writes.
    postcard::to_allocvec(a).unwrap()
}

#[test]
fn deleted_newer_generation_is_refused_with_the_receipt() {
    let e = site();
    capture(&e, "disk.raw", &["--sign", "site.key"]);
    change_disk(&e.p("disk.raw"));
    let c = capture(&e, "disk.raw", &["--sign", "site.key", "--delta"]);
    assert_eq!(c["receipt"]["generation"], 2, "{c}");
    fs::remove_dir_all(e.p("mnt/MGEAR/web01/G0002")).unwrap();
    refused(
        &ingest(&e, &["--trust", "site.pub", "--expect-generation", "2"]),
        &[
            "generation 2 was expected",
            "newest generation on the medium is 1",
        ],
    );
}

#[test]
fn huge_sparse_files_are_refused_unread() {
    let e = site();
    capture(&e, "disk.raw", &["--sign", "site.key"]);
    fs::create_dir_all(e.p("mnt/MGEAR/ATTEST")).unwrap();
    let f = fs::File::create(e.p("mnt/MGEAR/ATTEST/SEAL")).unwrap();
    f.set_len(1 << 40).unwrap();
    fs::write(e.p("mnt/MGEAR/ATTEST/ARRIVAL"), b"x").unwrap();
    // Copies on the medium are hints anyone can plant: ignored, loudly, and
    // the site's signature still vouches for the capture.
    let out = ingest(&e, &["--trust", "site.pub"]);
    assert!(out.status.success(), "{}", output_text(&out));
    for w in [
        "attestation copies on the medium are ignored",
        "MGEAR/ATTEST/SEAL is 1099511627776 bytes",
        "refusing to read it",
    ] {
        assert!(output_text(&out).contains(w), "{w}: {}", output_text(&out));
    }
    fs::remove_dir_all(e.p("mnt/MGEAR/ATTEST")).unwrap();
    let m = e.p("mnt/MGEAR/web01/G0001/MANIFEST");
    fs::OpenOptions::new()
        .write(true)
        .open(&m)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    refused(
        &ingest(&e, &["--trust", "site.pub"]),
        &["MANIFEST", "more than the"],
    );
    let out = e.run(&["verify", "--medium", "dir:mnt"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
}

#[test]
fn appliance_seal_catches_a_deleted_generation() {
    use crate::appliance_util::Lab;
    let mut lab = Lab::new(64);
    lab.keygen();
    lab.make_disk(3, 1);
    lab.start();
    lab.provision_and_unlock();
    lab.capture();
    lab.make_disk(3, 2);
    lab.capture_line().arg("--delta").ok();
    lab.appliance_ok(&["seal"]);
    lab.appliance_ok(&["arrival"]);
    let fp = lab.fingerprint();
    lab.appliance_ok(&["attestations", "--out", "att"]);
    // The legitimate journey passes with the pinned appliance.
    let out = lab.ingest(&[]);
    assert!(out.status.success(), "{}", output_text(&out));
    // Exported attestations beside the appliance itself: which ones count is not guessed.
    let out = lab.ingest(&["--attestations", "att"]);
    let t = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("are read from the appliance itself"), "{t}");
    lab.stop();
    // Another capture of web01, signed by the pinned site too (an older shipment's), put in
    // place of the sealed one on a copy of the medium: the site's signature vouches for it,
    // the pinned appliance's seal does not, and with both pinned that is a refusal.
    fs::copy(lab.p("medium.img"), lab.p("swapped.img")).unwrap();
    lab.ok(&["keygen", "--signing", "--out", "site.key"]);
    lab.ok(&[
        "medium",
        "rm",
        "--medium",
        "fat:swapped.img",
        "--name",
        "web01",
        "--force",
    ]);
    lab.make_disk(3, 9);
    Line::capture(&lab, "web01")
        .source("disk.raw")
        .medium("fat:swapped.img")
        .args(&["--sign", "site.key"])
        .ok();
    let swapped = |trust: &[&str]| {
        Line::ingest(&lab, "web01")
            .medium("fat:swapped.img")
            .args(&["--attestations", "att"])
            .args(trust)
            .target("file:swapped.raw")
            .run()
    };
    let out = swapped(&["--trust", "site.pub", "--trust-appliance", &fp]);
    let t = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("another capture of that name was put in its place since the seal")
            // The other way it reads so: another medium's attestations given.
            && t.contains("they are another medium's attestations"),
        "{t}"
    );
    assert!(!lab.p("swapped.raw").exists());
    // No override covers what the pinned appliance's own signed list says changed.
    let out = swapped(&[
        "--trust",
        "site.pub",
        "--trust-appliance",
        &fp,
        "--allow-unsealed",
    ]);
    let t = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("--allow-unsealed or not"), "{t}");
    assert!(!lab.p("swapped.raw").exists());
    // Only the site pinned: its signature is what the target trusts, and it holds.
    let out = swapped(&["--trust", "site.pub"]);
    assert!(out.status.success(), "{}", output_text(&out));
    // A machine set named web01 in its place, its disk asked for by its stream name.
    fs::copy(lab.p("medium.img"), lab.p("set.img")).unwrap();
    lab.ok(&[
        "medium",
        "rm",
        "--medium",
        "fat:set.img",
        "--name",
        "web01",
        "--force",
    ]);
    fs::copy(lab.p("disk.raw"), lab.p("disk1.raw")).unwrap();
    Line::capture(&lab, "web01")
        .sources(&["disk.raw", "disk1.raw"])
        .medium("fat:set.img")
        .args(&["--sign", "site.key"])
        .ok();
    let out = Line::ingest(&lab, "web01.d0")
        .medium("fat:set.img")
        .args(&[
            "--attestations",
            "att",
            "--trust",
            "site.pub",
            "--trust-appliance",
            &fp,
        ])
        .target("file:set-d0.raw")
        .run();
    let t = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("put in its place since the seal"), "{t}");
    assert!(!lab.p("set-d0.raw").exists());
    // A capture of another name written onto the sealed medium since: its attestations list
    // no file of it (it was called "another medium's" seal, of the very medium sealed).
    Line::capture(&lab, "evil")
        .source("disk.raw")
        .medium("fat:swapped.img")
        .ok();
    let out = Line::ingest(&lab, "evil")
        .medium("fat:swapped.img")
        .args(&["--attestations", "att", "--trust-appliance", &fp])
        .target("file:evil.raw")
        .run();
    let t = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("list no file of capture evil: it was not on the medium the appliance sealed"),
        "{t}"
    );
    assert!(!lab.p("evil.raw").exists());
    // The courier deletes G0002 from the medium image.
    lab.remove_medium_dir("MGEAR/web01/G0002");
    let out = Line::ingest(&lab, "web01")
        .medium("fat:medium.img")
        .args(&["--attestations", "att", "--trust-appliance", &fp])
        .target("file:vol2.raw")
        .run();
    let t = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("G0002") && t.contains("missing now"), "{t}");
    assert!(!lab.p("vol2.raw").exists());
    let out = Line::ingest(&lab, "web01")
        .medium("fat:medium.img")
        .args(&[
            "--attestations",
            "att",
            "--trust-appliance",
            &fp,
            "--allow-unsealed",
        ])
        .target("file:vol2.raw")
        .run();
    let t = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("missing now") && t.contains("--allow-unsealed or not"),
        "{t}"
    );
    assert!(!lab.p("vol2.raw").exists());
    // verify reaches the verdict ingest does (it said OK: it took a missing seal as a note).
    let v = Line::new(
        &lab,
        &[
            "verify",
            "--medium",
            "fat:medium.img",
            "--identity",
            "target.key",
            "--attestations",
            "att",
            "--trust-appliance",
            &fp,
        ],
    )
    .run();
    let t = output_text(&v);
    assert_eq!(v.status.code(), Some(1), "{t}");
    assert!(t.contains("missing now"), "{t}");
}

#[test]
fn appliance_witness_alone_vouches_for_an_unsigned_capture() {
    use crate::appliance_util::Lab;
    let mut lab = Lab::new(64);
    lab.keygen();
    lab.make_disk(3, 7);
    lab.start();
    lab.provision_and_unlock();
    let fp = lab.fingerprint();
    // Captured through the appliance WITHOUT --sign: the appliance's witness
    // signature is the COMMIT's only signature, and the receipt names it.
    let c = lab.capture();
    let r = &c["receipt"];
    assert_eq!(r["commit_digest"].as_str().unwrap().len(), 64, "{c}");
    assert_eq!(
        r["signers"],
        serde_json::json!([format!("appliance {fp}")]),
        "{c}"
    );
    let witnessed = format!("appliance {fp} (COMMIT)");

    // Before the seal: origin is proven by the witness alone; only the
    // missing seal needs its (loud) override, never --allow-untrusted.
    let out = lab.ingest(&["--allow-unsealed"]);
    let t = output_text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains(&witnessed) && t.contains("--allow-unsealed"),
        "{t}"
    );
    assert!(!t.contains("--allow-untrusted"), "{t}");
    same_file(&lab.p("disk.raw"), &lab.p("vol.raw"));

    // Another appliance pinned: the witness is by a key the target did not pin.
    let other = fingerprint(&ed25519_dalek::SigningKey::from_bytes(&[9; 32]));
    let tty = lab.tty();
    let ingest_other = |extra: &[&str]| {
        Line::ingest(&lab, "web01")
            .args(&["--trust-appliance", &other])
            .appliance(&tty)
            .target("file:vol2.raw")
            .args(extra)
            .run()
    };
    // Said as what it is (it was a seal problem without --allow-unsealed, which led to more
    // attestations, not to the unpinned appliance), with or without the override.
    for extra in [&["--allow-unsealed"][..], &[]] {
        refused(
            &ingest_other(extra),
            &[
                &format!("says it was made through appliance {fp}, which this target did not pin"),
                &format!("pinned: {other}"),
                "no pinned key signed it",
            ],
        );
    }
    assert!(!lab.p("vol2.raw").exists());

    // Seal and arrival as today: no override at all, and the witness and
    // the attestations both vouch.
    lab.appliance_ok(&["seal"]);
    lab.appliance_ok(&["arrival"]);
    let out = lab.ingest(&[]);
    let t = output_text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains(&witnessed) && t.contains("(seal + arrival)"),
        "{t}"
    );
    same_file(&lab.p("disk.raw"), &lab.p("vol.raw"));
    refused(&ingest_other(&[]), &["which this target did not pin", &fp]);
    assert!(!lab.p("vol2.raw").exists());
    lab.stop();
}

/// What a finder can plant in MGEAR/ATTEST: junk, or the genuine seal of
/// another medium by an appliance the datacenter pins. Neither blocks a
/// capture the pinned site signed, nor is mistaken for a seal of this
/// medium; keyless verify does not take MGEAR/ATTEST for a capture; a seal
/// of this medium still catches a generation deleted since.
#[test]
fn planted_attestation_copies_neither_block_nor_vouch() {
    let e = site();
    capture(&e, "disk.raw", &["--sign", "site.key"]);
    let pinned = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let fp = fingerprint(&pinned);

    fs::create_dir_all(e.p("mnt/MGEAR/ATTEST")).unwrap();
    fs::write(e.p("mnt/MGEAR/ATTEST/SEAL"), b"junk").unwrap();
    fs::write(e.p("mnt/MGEAR/ATTEST/ARRIVAL"), b"junk").unwrap();
    let out = ingest(&e, &["--trust", "site.pub", "--trust-appliance", &fp]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("attestation copies on the medium are ignored"),
        "{}",
        output_text(&out)
    );
    let v = e.run(&["verify", "--medium", "dir:mnt"]);
    assert!(
        v.status.success(),
        "MGEAR/ATTEST is no capture: {}",
        output_text(&v)
    );
    // A directory where a copy should be, or MGEAR/ATTEST a file: ignored alike.
    fs::remove_file(e.p("mnt/MGEAR/ATTEST/SEAL")).unwrap();
    fs::create_dir(e.p("mnt/MGEAR/ATTEST/SEAL")).unwrap();
    let out = ingest(&e, &["--trust", "site.pub"]);
    assert!(out.status.success(), "{}", output_text(&out));
    fs::remove_dir_all(e.p("mnt/MGEAR/ATTEST")).unwrap();
    fs::write(e.p("mnt/MGEAR/ATTEST"), b"junk").unwrap();
    let out = ingest(&e, &["--trust", "site.pub"]);
    assert!(out.status.success(), "{}", output_text(&out));
    fs::remove_file(e.p("mnt/MGEAR/ATTEST")).unwrap();
    fs::create_dir(e.p("mnt/MGEAR/ATTEST")).unwrap();

    // Another shipment's medium, sealed by the pinned appliance.
    fs::create_dir(e.p("other")).unwrap();
    write_disk(&e.p("other.raw"), 2, 9);
    e.capture("dir:other", "web01")
        .source("other.raw")
        .sign("site.key")
        .ok();
    let (seal, arrival) = forge_attestations(&e.p("other"), &pinned);
    fs::write(e.p("mnt/MGEAR/ATTEST/SEAL"), postcard_bytes(&seal)).unwrap();
    fs::write(e.p("mnt/MGEAR/ATTEST/ARRIVAL"), postcard_bytes(&arrival)).unwrap();
    let out = ingest(&e, &["--trust", "site.pub", "--trust-appliance", &fp]);
    assert!(out.status.success(), "{}", output_text(&out));
    same_file(&e.p("vol.raw"), &e.p("disk.raw"));

    // This medium's own seal, then its newest generation deleted: refused.
    change_disk(&e.p("disk.raw"));
    capture(&e, "disk.raw", &["--sign", "site.key", "--delta"]);
    fs::remove_dir_all(e.p("mnt/MGEAR/ATTEST")).unwrap();
    let (seal, arrival) = forge_attestations(&e.p("mnt"), &pinned);
    fs::create_dir_all(e.p("mnt/MGEAR/ATTEST")).unwrap();
    fs::write(e.p("mnt/MGEAR/ATTEST/SEAL"), postcard_bytes(&seal)).unwrap();
    fs::write(e.p("mnt/MGEAR/ATTEST/ARRIVAL"), postcard_bytes(&arrival)).unwrap();
    fs::remove_dir_all(e.p("mnt/MGEAR/web01/G0002")).unwrap();
    refused(
        &ingest(&e, &["--trust", "site.pub", "--trust-appliance", &fp]),
        &["was sealed but is missing now"],
    );

    // The name is reserved.
    let o = e.capture("dir:mnt", "attest").source("disk.raw").run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(output_text(&o).contains("reserved"), "{}", output_text(&o));
}

/// A courier keeps an older, genuinely signed capture of the same name (a
/// rehearsal, last month's medium) and swaps it onto the medium shipped: the
/// site's signature and the generation number both check out. Only the commit
/// on the receipt, sent apart from the medium and pinned with
/// `--expect-commit`, tells the two apart.
#[test]
fn an_older_signed_capture_swapped_in_is_refused_by_the_receipts_commit() {
    let e = site();
    let old = capture(&e, "disk.raw", &["--sign", "site.key"]);
    fs::rename(e.p("mnt"), e.p("monday")).unwrap();
    fs::create_dir(e.p("mnt")).unwrap();
    write_disk(&e.p("friday.raw"), 3, 7);
    let new = capture(&e, "friday.raw", &["--sign", "site.key"]);
    let want = new["receipt"]["commit_digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(
        old["receipt"]["commit_digest"].as_str(),
        Some(want.as_str())
    );
    // The shipped medium, as the receipt names it: installed.
    let out = ingest(&e, &["--trust", "site.pub", "--expect-commit", &want[..20]]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(output_text(&out).contains(&want), "{}", output_text(&out));
    same_file(&e.p("friday.raw"), &e.p("vol.raw"));
    // The swap: Monday's capture in Friday's place.
    fs::remove_dir_all(e.p("mnt/MGEAR/web01")).unwrap();
    fs::rename(e.p("monday/MGEAR/web01"), e.p("mnt/MGEAR/web01")).unwrap();
    let pinned = ["--trust", "site.pub", "--expect-generation", "1"];
    assert!(
        ingest(&e, &pinned).status.success(),
        "signature and generation alone pass it"
    );
    let mut with = pinned.to_vec();
    with.extend(["--expect-commit", &want]);
    refused(
        &ingest(&e, &with),
        &["this is not the capture that was shipped", &want],
    );
    let v = e.run(&[
        "verify",
        "--medium",
        "dir:mnt",
        "--name",
        "web01",
        "--trust",
        "site.pub",
        "--expect-commit",
        &want,
    ]);
    refused(&v, &["not the capture that was shipped"]);
    // A malformed pin is a usage error, and --expect-commit needs --name in verify.
    let o = ingest(&e, &["--trust", "site.pub", "--expect-commit", "abc"]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("not a commit digest"),
        "{}",
        output_text(&o)
    );
    let o = e.run(&[
        "verify",
        "--medium",
        "dir:mnt",
        "--trust",
        "site.pub",
        "--expect-commit",
        &want,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
}

/// A receipt of an older generation of the same capture on this medium (a delta came since):
/// the refusal spoke of "another capture in its place"; it names the generation the receipt
/// is for and the `--generation` that installs it, which works.
#[test]
fn a_receipt_of_an_older_generation_here_names_it() {
    let e = site();
    let first = capture(&e, "disk.raw", &["--sign", "site.key"]);
    let want = first["receipt"]["commit_digest"]
        .as_str()
        .unwrap()
        .to_string();
    change_disk(&e.p("disk.raw"));
    capture(&e, "disk.raw", &["--sign", "site.key", "--delta"]);
    let pin = ["--trust", "site.pub", "--expect-commit", &want];
    refused(
        &ingest(&e, &pin),
        &[
            "is generation 1 of web01 on this medium",
            "add --generation 1",
        ],
    );
    let mut with = pin.to_vec();
    with.extend(["--generation", "1"]);
    let out = ingest(&e, &with);
    assert!(out.status.success(), "{}", output_text(&out));

    // A newer generation that does not read (generation 1's files copied in as generation
    // 3 by whoever held the medium): the receipt's generation is named too (it was only "do
    // not use it").
    copy_dir(&e.p("mnt/MGEAR/web01/G0001"), &e.p("mnt/MGEAR/web01/G0003"));
    refused(
        &ingest(&e, &pin),
        &[
            "generation 3",
            "moved or replayed",
            "is generation 1 of web01 on this medium",
            "add --generation 1",
        ],
    );

    // Generation 2 finished (signed) and its MANIFEST lost since: the receipt's generation
    // is named too, and the ticket's report names the generation refused.
    fs::remove_dir_all(e.p("mnt/MGEAR/web01/G0003")).unwrap();
    fs::remove_file(e.p("mnt/MGEAR/web01/G0002/MANIFEST")).unwrap();
    let mut reported = pin.to_vec();
    reported.extend(["--report", "r.json"]);
    refused(
        &ingest(&e, &reported),
        &[
            "generation 2 was finished",
            "is generation 1's: add --generation 1",
        ],
    );
    let r: serde_json::Value = serde_json::from_slice(&fs::read(e.p("r.json")).unwrap()).unwrap();
    assert_eq!(r["result"]["generation"], 2, "{r}");
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for f in fs::read_dir(from).unwrap() {
        let f = f.unwrap();
        fs::copy(f.path(), to.join(f.file_name())).unwrap();
    }
}

/// One disk of a machine set swapped for the same disk of another signed set
/// capture, then ingested by its stream name (`--name db01.d1`): its own
/// COMMIT checks out, the set manifest does not list it.
#[test]
fn a_set_disk_swapped_in_is_refused_by_its_stream_name_too() {
    let e = site();
    write_disk(&e.p("srv-old.raw"), 2, 3);
    write_disk(&e.p("srv-new.raw"), 2, 4);
    fs::create_dir(e.p("old")).unwrap();
    for (m, srv) in [("old", "srv-old.raw"), ("mnt", "srv-new.raw")] {
        let o = e.run(&[
            "capture",
            "--medium",
            &format!("dir:{m}"),
            "--name",
            "db01",
            "--source",
            "disk.raw",
            "--source",
            srv,
            "--recipient",
            "target.pub",
            "--sign",
            "site.key",
        ]);
        assert!(o.status.success(), "{}", output_text(&o));
    }
    let verify = |m: &str| {
        let o = e.run(&[
            "verify", "--medium", m, "--name", "db01", "--trust", "site.pub",
        ]);
        output_text(&o)
    };
    assert!(verify("dir:mnt").contains("TRUSTED db01.d1"));
    fs::remove_dir_all(e.p("mnt/MGEAR/db01.d1")).unwrap();
    fs::rename(e.p("old/MGEAR/db01.d1"), e.p("mnt/MGEAR/db01.d1")).unwrap();
    let o = e
        .ingest("dir:mnt", "db01.d1")
        .target("file:srv.raw")
        .args(&["--trust", "site.pub"])
        .run();
    refused(
        &o,
        &["is not the disk set db01 lists as disk 1", "replaced"],
    );
    assert!(!e.p("srv.raw").exists());
}

/// Anyone with `target.pub` can add a capture whose source description holds
/// terminal escape sequences; `inspect` prints them escaped, never raw.
#[test]
fn inspect_escapes_control_characters_from_the_medium() {
    let e = site();
    let name = "x\u{1b}[2K\r\u{1b}[1A  G0001 complete: TRUSTED\u{1b}[8m";
    fs::copy(e.p("disk.raw"), e.p(name)).unwrap();
    capture(&e, name, &[]);
    let o = e.run(&["inspect", "--medium", "dir:mnt"]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(
        !o.stdout.contains(&0x1b) && !o.stdout.contains(&b'\r'),
        "{}",
        output_text(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("x\\u{1b}[2K"),
        "{}",
        output_text(&o)
    );
    // JSON keeps the text as it is (escaped by JSON itself).
    let o = e.run(&["inspect", "--medium", "dir:mnt", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v.to_string().contains("\\u001b[2K"), "{v}");
}

/// Every generation of a capture deleted from the medium: keyless verify (the
/// check before shipping) fails it, as the decrypting verify does.
#[test]
fn keyless_verify_fails_a_capture_whose_generations_were_deleted() {
    let e = site();
    capture(&e, "disk.raw", &["--sign", "site.key"]);
    fs::remove_dir_all(e.p("mnt/MGEAR/web01/G0001")).unwrap();
    let o = e.run(&["verify", "--medium", "dir:mnt"]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("holds no generation"),
        "{}",
        output_text(&o)
    );
}

/// A finished generation the appliance did not witness (its witness failed at the end of the
/// capture, or the disk was written through the export directly): the same capture command
/// through the appliance adds the witness instead of refusing "already captured, use
/// --delta", and the witness then vouches for it at the target.
#[test]
fn a_missing_appliance_witness_is_added_by_the_same_command() {
    use crate::appliance_util::Lab;
    let mut lab = Lab::new(64);
    lab.keygen();
    lab.make_disk(3, 8);
    lab.start();
    lab.provision_and_unlock();
    let fp = lab.fingerprint();
    // Past the appliance: straight into its NBD export, so no witness.
    Line::capture(&lab, "web01")
        .source("disk.raw")
        .medium(&lab.nbd_url())
        .ok();
    let c = lab.capture();
    assert_eq!(c["generation"], 1, "{c}");
    assert_eq!(c["stored_bytes"], 0, "nothing captured again: {c}");
    assert_eq!(
        c["receipt"]["signers"],
        serde_json::json!([format!("appliance {fp}")]),
        "{c}"
    );
    let out = lab.ingest(&["--allow-unsealed"]);
    let t = output_text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains(&format!("appliance {fp} (COMMIT)")), "{t}");
    same_file(&lab.p("disk.raw"), &lab.p("vol.raw"));
    // Witnessed now: the same command again is the usual refusal.
    let again = lab.capture_line().run();
    assert_eq!(again.status.code(), Some(2), "{}", output_text(&again));
    assert!(
        output_text(&again).contains("already captured as generation 1"),
        "{}",
        output_text(&again)
    );
}

/// Generation 2 of another capture of the same name (another medium's web01) copied into this
/// medium's web01 after its generation 1: the keyed verify called it a wrong key ("target.key
/// does not open capture web01"), sending the operator after keys that were right. It is a
/// finding about the generation (exit 1), naming both capture ids.
#[test]
fn a_generation_grafted_from_another_capture_is_named_not_blamed_on_the_key() {
    let e = Env::new();
    e.keygen();
    std::fs::create_dir(e.p("m")).unwrap();
    std::fs::create_dir(e.p("other")).unwrap();
    std::fs::write(e.p("a.raw"), vec![1u8; 2 << 20]).unwrap();
    e.capture("dir:m", "web01").source("a.raw").ok();
    e.capture("dir:other", "web01").source("a.raw").ok();
    std::fs::write(e.p("a.raw"), vec![3u8; 2 << 20]).unwrap();
    e.capture("dir:other", "web01")
        .source("a.raw")
        .arg("--delta")
        .ok();
    let from = e.p("other/MGEAR/web01/G0002");
    let to = e.p("m/MGEAR/web01/G0002");
    std::fs::create_dir(&to).unwrap();
    for f in std::fs::read_dir(&from).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
    }
    let o = e.run(&[
        "verify",
        "--medium",
        "dir:m",
        "--name",
        "web01",
        "--identity",
        "target.key",
        "--allow-untrusted",
    ]);
    let t = output_text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("generation 2 belongs to another capture"), "{t}");
    assert!(!t.contains("does not open capture"), "{t}");
    // Ingest names it too, keyless and before anything is written (it said "KEYS or KEYPASS
    // was replaced", and with a receipt, to ask for generation 2's receipt).
    for extra in [&[][..], &["--expect-generation", "2"][..]] {
        let o = e
            .ingest("dir:m", "web01")
            .target("file:vol.raw")
            .arg("--allow-untrusted")
            .args(extra)
            .run();
        refused(
            &o,
            &[
                "generation 2 belongs to another capture",
                "generation 1's is",
            ],
        );
        assert!(!e.p("vol.raw").exists() && !e.p("vol.raw.partial").exists());
    }
}

/// A site signature relabelled as an appliance's (the role byte, outside what is signed, the
/// CRC made again): refused, and said as a key pinned in another role (it said the key "is
/// not pinned", then listed it as pinned). The same signature twice vouches once.
#[test]
fn a_signature_in_another_role_is_said_so_and_a_repeated_one_counts_once() {
    let e = site();
    capture(&e, "disk.raw", &["--sign", "site.key"]);
    let path = e.p("mnt/MGEAR/web01/G0001/COMMIT");
    let orig = fs::read(&path).unwrap();
    let body = u32::from_le_bytes(orig[12..16].try_into().unwrap()) as usize;
    let sigs = 16 + body;
    assert_eq!(u16::from_le_bytes([orig[sigs], orig[sigs + 1]]), 1);
    let remade = |count: u16, role: u8| {
        let one = &orig[sigs + 2..sigs + 2 + 97];
        let mut b = orig[..sigs].to_vec();
        b.extend_from_slice(&count.to_le_bytes());
        for _ in 0..count {
            b.push(role);
            b.extend_from_slice(&one[1..]);
        }
        let crc = crate::appliance_console::crc32(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        fs::write(&path, b).unwrap();
    };
    remade(1, 2);
    let o = ingest(&e, &["--trust", "site.pub"]);
    refused(&o, &["as an appliance, but that key is pinned as a site"]);
    assert!(
        !output_text(&o).contains("which is not pinned"),
        "{}",
        output_text(&o)
    );
    remade(3, 1);
    let o = ingest(&e, &["--trust", "site.pub"]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let t = output_text(&o);
    assert_eq!(t.matches("(COMMIT)").count(), 1, "{t}");
}

/// The expected generation is on the medium but unfinished (the medium filled up part-way
/// through the delta): said so, with the capture site's resume (it said "a newer generation
/// was removed").
#[test]
fn an_expected_generation_that_is_unfinished_is_said_so() {
    let e = site();
    let m = e.fat("m.img", "34MiB");
    write_disk(&e.p("big.raw"), 30, 5);
    e.capture(&m, "web01")
        .source("big.raw")
        .sign("site.key")
        .ok();
    write_disk(&e.p("big.raw"), 30, 6);
    let o = e
        .capture(&m, "web01")
        .source("big.raw")
        .sign("site.key")
        .args(&[
            "--delta",
            "--same-source",
            "--skip-space-check",
            "--checkpoint-bytes",
            "1MiB",
        ])
        .run();
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    let o = e
        .ingest(&m, "web01")
        .target("file:vol.raw")
        .args(&["--trust", "site.pub", "--expect-generation", "2"])
        .run();
    refused(
        &o,
        &[
            "generation 2 was expected",
            "is on this medium, but it is not finished",
            "the capture site resumes it",
        ],
    );
    assert!(
        !output_text(&o).contains("was removed"),
        "{}",
        output_text(&o)
    );
    assert!(!e.p("vol.raw").exists());
}

/// A FIFO or a link planted in a `dir:` medium (mgear never writes one): a finding about the
/// medium, exit 1 from verify as from ingest, with a next step that fits it. Verify said exit 3
/// with "reconnect it", and the hint for a damaged FAT.
#[test]
fn a_fifo_or_link_planted_in_a_dir_medium_is_a_finding() {
    let e = site();
    capture(&e, "disk.raw", &["--sign", "site.key"]);
    let commit = e.p("mnt/MGEAR/web01/G0001/COMMIT");
    fs::remove_file(&commit).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&commit)
        .status()
        .unwrap();
    assert!(made.success());
    let o = e.run(&["verify", "--medium", "dir:mnt", "--json"]);
    let t = output_text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let said = v.to_string();
    assert!(said.contains("not a regular file"), "{said}");
    assert!(!said.contains("reconnect"), "{said}");
    fs::remove_file(&commit).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &commit).unwrap();
    let o = e.run(&["verify", "--medium", "dir:mnt"]);
    let t = output_text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("is a symbolic link"), "{t}");
    let o = ingest(&e, &["--trust", "site.pub"]);
    refused(&o, &["is a symbolic link"]);
    assert!(!output_text(&o).contains("fsck.fat"), "{}", output_text(&o));
}

/// A segment grown or cut on the medium is refused before the target is opened (keyless,
/// from its length): it was found at its first record, after the volume had been written up
/// to it (a `dev:` target overwritten in part by a shipment that was then refused).
#[test]
fn a_segment_grown_or_cut_is_refused_before_anything_is_written() {
    let e = site();
    capture(&e, "disk.raw", &["--sign", "site.key"]);
    let seg = e.p("mnt/MGEAR/web01/G0001/SEG-00000");
    let len = fs::metadata(&seg).unwrap().len();
    let intact = fs::read(&seg).unwrap();
    for grown in [len + 1, len - 1] {
        fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(grown)
            .unwrap();
        let o = ingest(&e, &["--trust", "site.pub"]);
        refused(&o, &["its manifest says"]);
        assert!(!e.p("vol.raw").exists() && !e.p("vol.raw.partial").exists());
    }
    // A delta's parent segment, as the delta reads records from it (installed, exit 0,
    // while verify failed it).
    fs::write(&seg, &intact).unwrap();
    change_disk(&e.p("disk.raw"));
    capture(&e, "disk.raw", &["--sign", "site.key", "--delta"]);
    fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len + 3)
        .unwrap();
    let o = ingest(&e, &["--trust", "site.pub"]);
    refused(&o, &["generation 1", "its manifest says"]);
    assert!(!e.p("vol.raw").exists() && !e.p("vol.raw.partial").exists());
}

/// A capture with a recipient slot and a passphrase slot, signed; then its KEYS damaged. The
/// passphrase (the documented backup for a lost target key) was refused with it, "COMMIT does
/// not match the capture's key slots", with no override. It opens the capture now, said as a
/// warning; the identity (the damaged slot's) is refused, naming the passphrase way.
#[test]
fn a_damaged_recipient_slot_leaves_the_passphrase_slot_usable() {
    let e = site();
    fs::write(e.p("pw"), "correct horse battery staple 42\n").unwrap();
    capture(
        &e,
        "disk.raw",
        &[
            "--sign",
            "site.key",
            "--passphrase-file",
            "pw",
            "--passphrase-work-factor",
            "10",
        ],
    );
    let keys = e.p("mnt/MGEAR/web01/KEYS");
    let mut k = fs::read(&keys).unwrap();
    let at = k.len() / 2;
    k[at] ^= 0x20;
    fs::write(&keys, k).unwrap();
    let ingest = |with: &[&str], target: &str| {
        Line::new(&e, &[&["ingest", "--name", "web01"], with].concat())
            .medium("dir:mnt")
            .trust("site.pub")
            .unsealed()
            .target(target)
    };
    let o = ingest(&["--passphrase-file", "pw"], "file:v.raw").ok();
    assert!(
        output_text(&o).contains(
            "KEYS, the recipient slot, on the medium is not the one the capture site signed"
        ),
        "{}",
        output_text(&o)
    );
    assert_eq!(
        fs::read(e.p("v.raw")).unwrap(),
        fs::read(e.p("disk.raw")).unwrap()
    );
    let o = ingest(&["--identity", "target.key"], "file:w.raw").run();
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("an ingest with --passphrase-file opens the capture"),
        "{}",
        output_text(&o)
    );
    assert!(!e.p("w.raw").exists());
}

/// `verify --json` given the receipt of an older generation (the newest is checked): its hint
/// was about pinning a site's key, which was pinned and valid; it says which generation the
/// receipt names now.
#[test]
fn a_verify_against_an_older_receipt_hints_at_the_generation() {
    let e = site();
    let first = capture(&e, "disk.raw", &["--sign", "site.key"]);
    let commit = first["receipt"]["commit_digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut d = fs::read(e.p("disk.raw")).unwrap();
    d[100] ^= 0xff;
    fs::write(e.p("disk.raw"), d).unwrap();
    capture(&e, "disk.raw", &["--sign", "site.key", "--delta"]);
    let o = e.run(&[
        "verify",
        "--medium",
        "dir:mnt",
        "--trust",
        "site.pub",
        "--name",
        "web01",
        "--expect-commit",
        &commit[..16],
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // Keyless, with a site pinned: the data itself is what was left unchecked.
    let left = v["not_checked"].to_string();
    assert!(
        left.contains("nothing was decrypted") && !left.contains("who made the capture"),
        "{v}"
    );
    // Keyed and pinned: nothing left.
    let full = e.json(&[
        "verify",
        "--medium",
        "dir:mnt",
        "--identity",
        "target.key",
        "--trust",
        "site.pub",
    ]);
    assert_eq!(full["not_checked"], serde_json::json!([]), "{full}");
    let hint = v["error"]["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("not the one the capture receipt names") && !hint.contains("pin a site"),
        "{v}"
    );
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("is generation 1 of web01") && !message.contains("this ingest"),
        "{v}"
    );
}
