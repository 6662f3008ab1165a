//! Captures that span several media (issue #15, item 3): a two-disk machine
//! (the sample boot disk, whose fstab mounts /srv by UUID from disk 1)
//! captured as one set through two appliance simulators whose media are too
//! small to hold it alone, each medium verified and sealed on its own, the media
//! ingested in reverse order and the machine booted under QEMU TCG printing
//! the marker it read from /srv on disk 1; and, on FAT images, a span that
//! fills up and continues on a third medium, and a lost medium replaced by
//! capturing again only what it held.
//!
//! Needs the sample disk's tools (busybox-static, linux-image-amd64,
//! grub-pc-bin, e2fsprogs), dosfstools, qemu-system-x86, and
//! `cargo build --workspace` first.

use crate::appliance_util::Lab;
use mgear_tests::{fsck_clean, output_text, same_file, Env, Line};

#[test]
fn a_two_disk_machine_spans_two_appliances_and_boots_from_media_given_in_reverse() {
    // Two appliances with 40 MiB media: about 30 MiB each for segments.
    let mut a = Lab::new(40);
    let mut b = Lab::new(40);
    a.start();
    b.start();
    a.provision_and_unlock();
    b.provision_and_unlock();
    a.keygen();
    let (d0, d1) = (a.s("disk0.raw"), a.s("disk1.raw"));
    // Disk 1 holds 24 MiB of incompressible filler: the set needs more than one medium.
    Line::sample_machine(&a, &d0, &d1, "span-e2e")
        .args(&["--data-size", "48MiB"])
        .ok();
    let (ta, tb) = (a.tty(), b.tty());
    let c = Line::capture(&a, "db01")
        .sources(&[&d0, &d1])
        .appliance(&ta)
        .appliance(&tb)
        .json();
    assert!(
        c["receipt"]["signers"].to_string().contains("appliance"),
        "the first appliance witnessed the set: {c}"
    );
    // Each medium verifies alone and names what the other holds.
    for (tty, other) in [(&ta, "#1"), (&tb, "#0")] {
        let v = Line::new(&a, &["verify", "--appliance", tty]).json();
        assert_eq!(v["ok"], true, "{v}");
        let far = v["elsewhere"].as_array().unwrap();
        assert!(!far.is_empty(), "{v}");
        assert!(
            far.iter()
                .all(|e| e["medium"].as_str().unwrap().contains(other)),
            "{v}"
        );
    }
    // Each appliance seals its own medium: its firmware's verifier checks the
    // segments it holds and knows the rest are on the other medium.
    for lab in [&a, &b] {
        // Each appliance's custody log says a capture wrote to it (only the first's did).
        let log = lab.appliance_json(&["log", "--verify"]);
        assert!(log["entries"].to_string().contains("CaptureBegin"), "{log}");
        let out = lab.appliance_ok(&["--json", "seal"]);
        // Every other medium of the span must be sealed too: said at each seal.
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("seal the appliance of every other medium of the span"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(s["attestation"]["body"]["kind"], "Seal", "{s}");
        assert!(
            s["report"]["problems"].as_array().unwrap().is_empty(),
            "{s}"
        );
        assert_eq!(lab.state(), "Sealed");
    }
    let i = Line::new(&a, &["inspect", "--appliance", &tb]).json();
    assert_eq!(i["span"]["media"].as_array().unwrap().len(), 2, "{i}");
    assert_eq!(i["span"]["this"][0], 1, "{i}");
    // Both appliances listed as one shipment (inspect took one --appliance only).
    let both = Line::new(&a, &["inspect", "--appliance", &ta, "--appliance", &tb]).json();
    assert_eq!(both["shipment"]["complete"], true, "{both}");
    assert_eq!(both["media"].as_array().unwrap().len(), 2, "{both}");
    let one = Line::new(&a, &["inspect", "--appliance", &tb]).json();
    assert_eq!(one["shipment"]["complete"], false, "{one}");
    // The second medium arrives first: ingest writes what it holds, names
    // what is missing and where, and finishes nothing.
    let fp = a.fingerprint();
    let ingest = Line::ingest(&a, "db01")
        .args(&["--trust-appliance", &fp])
        .unsealed()
        .target("file:vm-{disk}.raw");
    let o = ingest.clone().appliance(&tb).run();
    assert_eq!(o.status.code(), Some(4), "{}", output_text(&o));
    let t = output_text(&o);
    // The expected end of a run waiting for media, not an error.
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("mgear: pending: ")
            && !String::from_utf8_lossy(&o.stderr).contains("mgear: error:"),
        "{t}"
    );
    assert!(
        t.contains("not all of them are given")
            && t.contains("wrote the ")
            && t.contains("into vm-1.raw.partial")
            // Medium #1 holds none of disk 0's data: only its zeros were written.
            && t.contains("disk 0: ")
            && t.contains("wrote its 42 all-zero chunks into vm-0.raw.partial (no medium holds them); the media given hold none of its data")
            && t.contains("are on medium #0 (appliance at"),
        "{t}"
    );
    let partial = a.p("vm-1.raw.partial");
    assert!(
        std::fs::metadata(&partial).is_ok_and(|m| m.len() > 0),
        "medium #1's share of disk 1 is written"
    );
    let d1 = std::fs::read(a.p("disk1.raw")).unwrap();
    let got = std::fs::read(&partial).unwrap();
    assert!(
        (1..d1.len() / (1 << 20)).any(|c| {
            let r = c << 20..(c + 1) << 20;
            got[r.clone()] == d1[r.clone()] && d1[r].iter().any(|&b| b != 0)
        }),
        "some data of disk 1 came from the medium given"
    );
    assert!(
        !a.p("vm-0.raw").exists() && !a.p("vm-1.raw").exists(),
        "no volume is finished while the machine is incomplete"
    );
    // Then the first medium alone: the machine is completed, finished, and
    // boots reading /srv from disk 1 by UUID.
    let r = ingest
        .appliance(&ta)
        .args(&[
            "--boot",
            "--wait-for",
            "MGEAR-SRV-OK span-e2e-srv",
            "--timeout",
            "300",
        ])
        .json();
    assert_eq!(r["booted"], true, "{r}");
    same_file(&a.p("vm-0.raw"), &a.p("disk0.raw"));
    same_file(&a.p("vm-1.raw"), &a.p("disk1.raw"));
    // Both checked on arrival: with the witnessing appliance pinned, the span is ingested
    // with no override whichever appliance is given first (the first one's seal was read,
    // and b's, unpinned, refused it).
    for lab in [&a, &b] {
        lab.appliance_ok(&["arrival"]);
    }
    let o = Line::ingest(&a, "db01")
        .args(&["--trust-appliance", &fp])
        .target("file:again-{disk}.raw")
        .appliance(&tb)
        .appliance(&ta)
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    same_file(&a.p("again-1.raw"), &a.p("disk1.raw"));
    // One appliance of the span erased: the key slots are mirrored on the other, so it says
    // the capture decrypts until both are (its certificate said "no longer decrypts", and an
    // ingest through the other appliance still read it all).
    let o = a.appliance_ok(&[
        "erase",
        "--yes",
        "--pin-file",
        "pin",
        "--certificate",
        "cert.json",
    ]);
    assert!(
        output_text(&o).contains("note: this medium is #0 of a span of 2 media"),
        "{}",
        output_text(&o)
    );
    let cert: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.p("cert.json")).unwrap()).unwrap();
    assert_eq!(cert["medium"]["span"]["media"], 2, "{cert}");
    let txt = std::fs::read_to_string(a.p("cert.txt")).unwrap();
    assert!(
        txt.contains("destroyed on this medium, #0 of a span of 2 media"),
        "{txt}"
    );
    a.stop();
    b.stop();
}

/// `n` simulated appliances with media of `mib` MiB each, started, provisioned and unlocked.
fn unlocked_appliances(n: usize, mib: u64) -> Vec<Lab> {
    let mut labs: Vec<Lab> = (0..n).map(|_| Lab::new(mib)).collect();
    for l in labs.iter_mut() {
        l.start();
        l.provision_and_unlock();
    }
    labs
}

/// Pseudo-random, incompressible.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    image_format::bench::noise(len, seed)
}

#[test]
fn a_full_span_continues_on_one_more_medium_and_a_lost_medium_is_recaptured_alone() {
    let e = Env::new();
    e.keygen();
    let mut disk = noise(80 << 20, 5);
    std::fs::write(e.p("disk.raw"), &disk).unwrap();
    let (a, b, c) = (
        e.fat("a.img", "40MiB"),
        e.fat("b.img", "40MiB"),
        e.fat("c.img", "40MiB"),
    );
    let cap = |media: &[&str], extra: &[&str]| {
        let line = media
            .iter()
            .fold(Line::capture(&e, "web01").source("disk.raw"), |l, m| {
                l.medium(m)
            });
        line.args(extra).arg("--json").run()
    };
    // Two media are too small; past the estimate the span fills and says what to do.
    let o = cap(&[&a, &b], &["--skip-space-check"]);
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("every medium given is full"),
        "{}",
        output_text(&o)
    );
    // Each medium counts what it holds of the unfinished generation, and says that the rest
    // is on the span's other media (both said "31.00 MiB kept", unexplained).
    for m in [&a, &b] {
        let o = e.run(&["inspect", "--medium", m]);
        assert!(
            output_text(&o)
                .contains("kept on this medium (1 of its segments on other media of the span"),
            "{}",
            output_text(&o)
        );
        let v = e.json(&["inspect", "--medium", m]);
        assert_eq!(
            v["captures"][0]["generations"][0]["segments_elsewhere"], 1,
            "{v}"
        );
    }
    // The same command with a third medium resumes where it stopped.
    let o = cap(&[&c, &a, &b], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(r["resumed_from_chunk"].as_u64().unwrap() > 0, "{r}");
    // One medium of the finished span: its size is the whole generation's, and the line says
    // how many of its segments the other media hold (it gave the total alone).
    let o = e.run(&["inspect", "--medium", &a]);
    assert!(
        output_text(&o).contains("segment(s) (2 on other media of the span)"),
        "{}",
        output_text(&o)
    );
    let v = e.json(&["inspect", "--medium", &a]);
    assert_eq!(
        v["captures"][0]["generations"][0]["segments_elsewhere"], 2,
        "{v}"
    );
    let ingest = |media: &[&str], out: &str, extra: &[&str]| {
        let line = Line::ingest(&e, "web01")
            .untrusted()
            .target(&format!("file:{out}"));
        media
            .iter()
            .fold(line, |l, m| l.medium(m))
            .args(extra)
            .run()
    };
    let o = ingest(&[&b, &c, &a], "one.raw", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    same_file(&e.p("one.raw"), &e.p("disk.raw"));
    // One medium at a time into a file: its `.partial` name says it is unfinished, so the
    // boot sector is written with the medium that holds it, and that medium is not needed
    // again (the last run once needed it back).
    let o = ingest(&[&a], "part.raw", &[]);
    assert_eq!(o.status.code(), Some(4), "{}", output_text(&o));
    assert!(
        !output_text(&o).contains("first chunk"),
        "{}",
        output_text(&o)
    );
    let o = ingest(&[&c, &b], "part.raw", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    same_file(&e.p("part.raw"), &e.p("disk.raw"));
    // Into a volume with no unfinished name (an NBD export) the boot sector is written last:
    // the medium holding it is needed again, and the pending message says so.
    let blank = std::fs::File::create(e.p("export.raw")).unwrap();
    blank.set_len(disk.len() as u64).unwrap();
    let sock = e.p("export.sock");
    let _export = mgear_tests::qemu_nbd(&["-t", "-f", "raw"], &sock, &e.p("export.raw"));
    let o = Line::ingest(&e, "web01")
        .untrusted()
        .target(&format!("nbd+unix:///?socket={}", sock.display()))
        .medium(&a)
        .run();
    assert_eq!(o.status.code(), Some(4), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("holds the disk's first chunk (its boot sector)"),
        "{}",
        output_text(&o)
    );

    // The shipment listing of the span: complete with every medium, not
    // without b (it once said "every machine complete" either way).
    let all = e.json(&["inspect", "--medium", &a, "--medium", &b, "--medium", &c]);
    assert_eq!(all["shipment"]["complete"], true, "{all}");
    let two = e.json(&["inspect", "--medium", &a, "--medium", &c]);
    assert_eq!(two["shipment"]["complete"], false, "{two}");
    assert_eq!(two["shipment"]["machines"][0]["complete"], false, "{two}");
    assert!(
        two["shipment"]["missing_media"][0]
            .as_str()
            .is_some_and(|m| m.starts_with("medium #1 of span")),
        "{two}"
    );
    let one = e.json(&["inspect", "--medium", &a]);
    assert_eq!(one["shipment"]["complete"], false, "{one}");
    let text = String::from_utf8_lossy(&e.ok(&["inspect", "--medium", &a]).stdout).into_owned();
    assert!(
        text.contains("shipment NOT complete without medium #1"),
        "{text}"
    );
    // A medium of the span verifies alone, with the key too: the records on
    // the others are theirs to check, not "truncated segments" here.
    for m in [&a, &b, &c] {
        let v = e.run(&[
            "verify",
            "--medium",
            m,
            "--identity",
            "target.key",
            "--allow-untrusted",
        ]);
        assert_eq!(v.status.code(), Some(0), "{m}: {}", output_text(&v));
        assert!(
            output_text(&v).contains("on another medium of this span"),
            "{m}: {}",
            output_text(&v)
        );
    }

    // Medium b is lost in transit. Writing the span without it is refused...
    let share_of_b = e.json(&["inspect", "--medium", &a])["span"]["media"][1]["segments"]
        .as_u64()
        .unwrap();
    assert!(share_of_b > 0);
    std::fs::copy(e.p("b.img"), e.p("b.kept")).unwrap();
    std::fs::remove_file(e.p("b.img")).unwrap();
    // Without a medium added it was called full ("0 B are free ... give one more medium"),
    // which sent the operator the wrong way: it names the medium left out.
    let o = cap(&[&a, &c], &["--delta"]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("of this span is not attached")
            && output_text(&o).contains("--replace-medium"),
        "{}",
        output_text(&o)
    );
    // `medium rm` with a medium left out names every one missing, and says the way past a
    // lost one is a capture's (it offered --replace-medium, which rm does not take).
    let o = e.run(&["medium", "rm", "--medium", &a, "--name", "web01", "--force"]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("are not attached")
            && output_text(&o).contains("a capture or delta goes on without it"),
        "{}",
        output_text(&o)
    );
    let d = e.fat("d.img", "40MiB");
    let o = cap(&[&a, &c, &d], &["--delta"]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("--replace-medium"),
        "{}",
        output_text(&o)
    );
    // A --replace-medium naming no medium of the span is said to (it was passed over, and b
    // refused as "not attached").
    for wrong in ["fat:nonexist.img", "#5"] {
        let o = cap(&[&a, &c, &d], &["--replace-medium", wrong]);
        assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
        assert!(
            output_text(&o).contains(&format!(
                "--replace-medium '{wrong}' names no medium of this span"
            )) && output_text(&o).contains(&format!("#1 ({b})")),
            "{}",
            output_text(&o)
        );
    }
    // ...and --replace-medium captures again only what b held (plus what changed).
    disk[0] ^= 0xff;
    std::fs::write(e.p("disk.raw"), &disk).unwrap();
    let o = cap(&[&a, &c, &d], &["--replace-medium", &b]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["generation"], 2, "{r}");
    let stored = r["stored_bytes"].as_u64().unwrap();
    assert!(
        stored > 0 && stored < 40 << 20,
        "only the lost medium's share was written again ({stored} bytes): {r}"
    );
    let o = ingest(&[&d, &a, &c], "two.raw", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    same_file(&e.p("two.raw"), &e.p("disk.raw"));
    // Generation 1 is incomplete for good, and ingest says why.
    let o = ingest(&[&a, &c, &d], "old.raw", &["--generation", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("declared lost"),
        "{}",
        output_text(&o)
    );
    // b turns up again: given with the others, it is the span as it was, not damage (verify
    // said FAILED, one problem per file written since).
    std::fs::rename(e.p("b.kept"), e.p("b.img")).unwrap();
    let v = e.run(&[
        "verify", "--medium", &a, "--medium", &b, "--medium", &c, "--medium", &d,
    ]);
    assert_eq!(v.status.code(), Some(0), "{}", output_text(&v));
    assert!(
        output_text(&v).contains(&format!("--medium {b} was declared lost from its span")),
        "{}",
        output_text(&v)
    );
    // Generation 1 ingested one medium at a time, b first (its own map does not know it was
    // declared lost), then a and c: what the first run wrote from b counts (the second was
    // refused for b's share, "declared lost", after the first said b was not needed again).
    let o = ingest(&[&b], "g1.raw", &["--generation", "1"]);
    assert_eq!(o.status.code(), Some(4), "{}", output_text(&o));
    let o = ingest(&[&a, &c], "g1.raw", &["--generation", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let mut g1 = disk.clone();
    g1[0] ^= 0xff;
    assert!(
        std::fs::read(e.p("g1.raw")).unwrap() == g1,
        "generation 1 as captured"
    );
    // Without b's share written before: refused, naming the way with b back.
    let o = ingest(&[&a, &c], "g1b.raw", &["--generation", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("turned up again, give it together with the other media"),
        "{}",
        output_text(&o)
    );
    assert!(!e.p("g1b.raw").exists() && !e.p("g1b.raw.partial").exists());
}

/// A capture stopped by "medium full" continued onto a medium that holds another
/// shipment's capture of the same name was told "set m1 has 2 disks" (the two read as one),
/// with a hint to `medium rm --force` either; onto a byte copy of the full medium, "0 B are
/// free". Both are refused naming the two media, and neither is changed.
#[test]
fn a_medium_holding_a_namesake_capture_is_not_taken_for_more_room() {
    let e = Env::new();
    e.keygen();
    std::fs::write(e.p("e0.raw"), noise(8 << 20, 51)).unwrap();
    std::fs::write(e.p("e1.raw"), noise(2 << 20, 52)).unwrap();
    std::fs::write(e.p("d0.raw"), noise(30 << 20, 53)).unwrap();
    std::fs::write(e.p("d1.raw"), noise(20 << 20, 54)).unwrap();
    let (c, p) = (e.fat("c.img", "40MiB"), e.fat("p.img", "40MiB"));
    e.capture(&c, "m1").sources(&["e0.raw", "e1.raw"]).ok();
    let full = e
        .capture(&p, "m1")
        .sources(&["d0.raw", "d1.raw"])
        .arg("--skip-space-check")
        .run();
    assert_eq!(full.status.code(), Some(3), "{}", output_text(&full));
    std::fs::copy(e.p("p.img"), e.p("p-copy.img")).unwrap();
    let before = |f: &str| std::fs::read(e.p(f)).unwrap();
    let (c_was, p_was) = (before("c.img"), before("p.img"));
    for other in [c.as_str(), "fat:p-copy.img"] {
        for dry in [false, true] {
            let mut l = e
                .capture(&p, "m1")
                .medium(other)
                .sources(&["d0.raw", "d1.raw"]);
            if dry {
                l = l.arg("--dry-run");
            }
            let o = l.run();
            assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
            let t = output_text(&o);
            assert!(
                t.contains("holds a capture named m1")
                    && t.contains("not the media of one capture's span")
                    && !t.contains("medium rm"),
                "{t}"
            );
        }
    }
    assert!(before("c.img") == c_was && before("p.img") == p_was);
    // With a blank medium it goes on.
    let q = e.fat("q.img", "40MiB");
    let o = e
        .capture(&p, "m1")
        .medium(&q)
        .sources(&["d0.raw", "d1.raw"])
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
}

/// A machine spanning two media, ingested one medium at a time; disk 1's volume damaged
/// between the runs (storage that did not keep what was written). The second run's read-back
/// of disk 1 fails: disk 0, whose read-back passed, was renamed into place before it, so a
/// delta left a machine of two generations. Every disk is read back before any is finished.
#[test]
fn a_set_whose_later_disk_fails_its_read_back_finishes_no_disk() {
    let e = Env::new();
    e.keygen();
    std::fs::write(e.p("d0.raw"), noise(20 << 20, 71)).unwrap();
    std::fs::write(e.p("d1.raw"), noise(30 << 20, 72)).unwrap();
    let (p, q) = (e.fat("p.img", "40MiB"), e.fat("q.img", "40MiB"));
    e.capture(&p, "m1")
        .medium(&q)
        .sources(&["d0.raw", "d1.raw"])
        .ok();
    let ingest = |media: &[&str]| {
        media
            .iter()
            .skip(1)
            .fold(e.ingest(media[0], "m1"), |l, m| l.medium(m))
            .untrusted()
            .target("file:vol-{disk}.raw")
            .run()
    };
    let o = ingest(&[&p]);
    assert_eq!(o.status.code(), Some(4), "{}", output_text(&o));
    let part = e.p("vol-1.raw.partial");
    let mut d = std::fs::read(&part).unwrap();
    d[(1 << 20) + 5] ^= 0x5a;
    std::fs::write(&part, d).unwrap();
    let o = ingest(&[&q]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("no volume of the machine was replaced"),
        "{}",
        output_text(&o)
    );
    assert!(
        !e.p("vol-0.raw").exists() && !e.p("vol-1.raw").exists(),
        "a disk was finished"
    );
    // Every medium given again: the machine is written whole.
    let o = ingest(&[&p, &q]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    same_file(&e.p("vol-0.raw"), &e.p("d0.raw"));
    same_file(&e.p("vol-1.raw"), &e.p("d1.raw"));
}

/// A delta of a spanned machine ingested with --force over the previous generation's
/// volumes, one medium at a time: the run without --force was told "no ingest into it is
/// recorded on this host" of the volumes this host wrote, its own unfinished ingest beside
/// them unsaid.
#[test]
fn an_unfinished_forced_set_ingest_is_named_by_the_next_run() {
    let e = Env::new();
    e.keygen();
    std::fs::write(e.p("d0.raw"), noise(20 << 20, 91)).unwrap();
    std::fs::write(e.p("d1.raw"), noise(30 << 20, 92)).unwrap();
    let (p, q) = (e.fat("p.img", "40MiB"), e.fat("q.img", "40MiB"));
    let cap = |extra: &[&str]| {
        e.capture(&p, "m1")
            .medium(&q)
            .sources(&["d0.raw", "d1.raw"])
            .args(extra)
            .ok()
    };
    cap(&[]);
    let ingest = |media: &[&str], extra: &[&str]| {
        media
            .iter()
            .skip(1)
            .fold(e.ingest(media[0], "m1"), |l, m| l.medium(m))
            .untrusted()
            .target("file:v-{disk}.raw")
            .args(extra)
            .run()
    };
    let o = ingest(&[&p, &q], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    for d in ["d0.raw", "d1.raw"] {
        let mut b = std::fs::read(e.p(d)).unwrap();
        b[(1 << 20) + 9] ^= 0x33;
        b[(18 << 20) + 9] ^= 0x33;
        std::fs::write(e.p(d), b).unwrap();
    }
    cap(&["--delta"]);
    let o = ingest(&[&p], &["--force"]);
    assert_eq!(o.status.code(), Some(4), "{}", output_text(&o));
    let o = ingest(&[&q], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("an earlier run with --force began writing set m1 generation 2")
            && output_text(&o).contains("with --force again"),
        "{}",
        output_text(&o)
    );
    let o = ingest(&[&q], &["--force"]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    same_file(&e.p("v-0.raw"), &e.p("d0.raw"));
    same_file(&e.p("v-1.raw"), &e.p("d1.raw"));
}

/// A finished, signed capture re-run with --sign and one more medium: refused "already
/// captured" (exit 2), as it was, but the medium added had been joined to a span first, and
/// every later capture onto the first medium alone was refused ("medium #1 ... is not
/// attached"). Refused now before anything is written.
#[test]
fn an_already_captured_rerun_with_sign_and_one_more_medium_joins_nothing() {
    let e = Env::new();
    e.keygen();
    e.ok(&["keygen", "--signing", "--out", "site.key"]);
    std::fs::write(e.p("a.raw"), noise(4 << 20, 61)).unwrap();
    let (m1, m2) = (e.fat("r1.img", "40MiB"), e.fat("r2.img", "40MiB"));
    e.capture(&m1, "r").source("a.raw").sign("site.key").ok();
    let before = |f: &str| std::fs::read(e.p(f)).unwrap();
    let (r1_was, r2_was) = (before("r1.img"), before("r2.img"));
    let o = e
        .capture(&m1, "r")
        .medium(&m2)
        .source("a.raw")
        .sign("site.key")
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("is already captured as generation 1"),
        "{}",
        output_text(&o)
    );
    assert!(
        before("r1.img") == r1_was && before("r2.img") == r2_was,
        "nothing written"
    );
    e.capture(&m1, "r2").source("a.raw").ok();
}

/// A `--replace-medium` capture stopped by "medium full": the same command with one more
/// medium, as its error says, was refused ("generation 2 is unfinished: ... --abort"), and
/// its dry run had said "fits" of a delta that had the lost medium's 30 MiB to store again.
/// The dry run counts that share; the same command with one more medium finishes it.
#[test]
fn a_replace_medium_capture_stopped_full_goes_on_with_one_more_medium() {
    let e = Env::new();
    e.keygen();
    std::fs::write(e.p("a.raw"), noise(30 << 20, 71)).unwrap();
    std::fs::write(e.p("b.raw"), noise(30 << 20, 72)).unwrap();
    let (r1, r2, r4) = (
        e.fat("r1.img", "40MiB"),
        e.fat("r2.img", "40MiB"),
        e.fat("r4.img", "40MiB"),
    );
    let r3 = e.fat("r3.img", "34MiB");
    let cap = |media: &[&str], extra: &[&str]| {
        Line::capture(&e, "m4")
            .sources(&["a.raw", "b.raw"])
            .media(media)
            .args(extra)
            .run()
    };
    let o = cap(&[&r1, &r2], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    std::fs::rename(e.p("r2.img"), e.p("r2.lost")).unwrap();
    let plan = cap(
        &[&r1, &r3],
        &["--replace-medium", &r2, "--dry-run", "--json"],
    );
    let p: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(p["fits"], false, "{p}");
    assert!(p["needed"].as_u64().unwrap() > 20 << 20, "{p}");
    assert_eq!(plan.status.code(), Some(3), "{}", output_text(&plan));
    let o = cap(
        &[&r1, &r3],
        &["--replace-medium", &r2, "--skip-space-check"],
    );
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("re-run the same command with it added"),
        "{}",
        output_text(&o)
    );
    let o = cap(
        &[&r1, &r3, &r4],
        &["--replace-medium", &r2, "--skip-space-check"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let o = Line::ingest(&e, "m4")
        .untrusted()
        .target("file:o{disk}.raw")
        .medium(&r1)
        .medium(&r3)
        .medium(&r4)
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    same_file(&e.p("o0.raw"), &e.p("a.raw"));
    same_file(&e.p("o1.raw"), &e.p("b.raw"));
}

/// A disk whose every record was on the medium declared lost is stored again whole by
/// `--replace-medium`: that is the same disk, and the capture warned "none of the chunks
/// matches generation 1: ... remove this generation", the only one that ingests without
/// the lost medium.
#[test]
fn a_disk_recaptured_for_a_lost_medium_is_not_called_another_disk() {
    let e = Env::new();
    e.keygen();
    std::fs::write(e.p("g0.raw"), noise(30 << 20, 31)).unwrap();
    std::fs::write(e.p("g1.raw"), noise(10 << 20, 32)).unwrap();
    let (m1, m2, m3) = (
        e.fat("e.img", "40MiB"),
        e.fat("f.img", "40MiB"),
        e.fat("g.img", "40MiB"),
    );
    let cap = |media: &[&str], extra: &[&str]| {
        Line::capture(&e, "m3")
            .sources(&["g0.raw", "g1.raw"])
            .media(media)
            .args(extra)
            .run()
    };
    let o = cap(&[&m1, &m2], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let on_f = e.json(&["inspect", "--medium", &m2]);
    assert!(on_f.to_string().contains("m3.d1"), "{on_f}");
    std::fs::remove_file(e.p("f.img")).unwrap();
    // One chunk of that disk changed too: the rest, stored again for the lost medium, are no
    // change ("only 9 of the chunks match, and 10 were stored anew: more of the disk
    // changed than stayed ... remove this generation").
    let mut g1 = std::fs::read(e.p("g1.raw")).unwrap();
    g1[(5 << 20) + 3] ^= 0x77;
    std::fs::write(e.p("g1.raw"), g1).unwrap();
    let o = cap(&[&m1, &m3], &["--replace-medium", &m2]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    assert!(
        !output_text(&o).contains("none of the")
            && !output_text(&o).contains("more of the disk changed")
            && !output_text(&o).contains("medium rm"),
        "{}",
        output_text(&o)
    );
    // Another disk given as a delta's --source is still told apart, its disk's chunks
    // matching none of generation 2's.
    std::fs::write(e.p("other.raw"), noise(10 << 20, 33)).unwrap();
    let o = Line::capture(&e, "m3")
        .sources(&["g0.raw", "other.raw"])
        .medium(&m1)
        .medium(&m3)
        .arg("--delta")
        .args(&["--same-source"])
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("none of the"),
        "{}",
        output_text(&o)
    );
    let o = Line::ingest(&e, "m3")
        .untrusted()
        .target("file:o{disk}.raw")
        .args(&["--generation", "2"])
        .medium(&m1)
        .medium(&m3)
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    same_file(&e.p("o0.raw"), &e.p("g0.raw"));
    same_file(&e.p("o1.raw"), &e.p("g1.raw"));
}

/// A machine set's medium lost in transit is replaced as one disk's is: the set's own checks
/// (disk order, key slots, passphrase) read the span with the lost medium left out. They
/// refused it as "not attached ... Only if it is lost for good: --replace-medium", the option
/// given.
#[test]
fn a_machine_sets_lost_medium_is_recaptured_alone() {
    let e = Env::new();
    e.keygen();
    std::fs::write(e.p("d0.raw"), noise(30 << 20, 11)).unwrap();
    std::fs::write(e.p("d1.raw"), noise(30 << 20, 12)).unwrap();
    let (a, b, c) = (
        e.fat("a.img", "40MiB"),
        e.fat("b.img", "40MiB"),
        e.fat("c.img", "40MiB"),
    );
    let cap = |media: &[&str], extra: &[&str]| {
        Line::capture(&e, "web01")
            .sources(&["d0.raw", "d1.raw"])
            .media(media)
            .args(extra)
            .arg("--json")
            .run()
    };
    let o = cap(&[&a, &b, &c], &["--skip-space-check", "--no-compress"]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let share_of_b = e.json(&["inspect", "--medium", &a])["span"]["media"][1]["segments"]
        .as_u64()
        .unwrap();
    assert!(share_of_b > 0, "b holds part of the set");
    std::fs::rename(e.p("b.img"), e.p("b-found.img")).unwrap();
    let d = e.fat("d.img", "40MiB");
    let o = cap(&[&a, &c, &d], &["--replace-medium", &b]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["generation"], 2, "{r}");
    let o = Line::ingest(&e, "web01")
        .untrusted()
        .target("file:out{disk}.raw")
        .medium(&d)
        .medium(&a)
        .medium(&c)
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    same_file(&e.p("out0.raw"), &e.p("d0.raw"));
    same_file(&e.p("out1.raw"), &e.p("d1.raw"));
    // Generation 1 needs the lost medium: refused before any disk is written (disk 0 was
    // written as old0.raw.partial, then the set refused at disk 1).
    let o = Line::ingest(&e, "web01")
        .untrusted()
        .target("file:old{disk}.raw")
        .args(&["--generation", "1"])
        .medium(&a)
        .medium(&c)
        .medium(&d)
        .run();
    // Data gone for good: exit 1, not a usage error.
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("nothing was written"),
        "{}",
        output_text(&o)
    );
    let left: Vec<_> = std::fs::read_dir(e.dir.path())
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("old"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // Generation 1 is complete by its manifests but had a share on b: listed as such (it was
    // "complete"), generation 2 as the one to ingest.
    let v = e.json(&["inspect", "--medium", &a, "--medium", &c, "--medium", &d]);
    let gens = v["shipment"]["machines"][0]["generations"]
        .as_array()
        .unwrap();
    assert!(
        gens.iter()
            .all(|g| (g["generation"] == 1) == (g["state"] == "lost-medium")),
        "{v}"
    );
    assert!(
        gens.iter()
            .any(|g| g["generation"] == 2 && g["state"] == "complete"),
        "{v}"
    );
    assert_eq!(v["shipment"]["complete"], true, "{v}");
    // Each medium's own listing agrees: the set's generation 1 is not "complete" above a disk
    // stream that says NOT ingestible.
    let sets = v["media"][0]["sets"][0]["generations"].as_array().unwrap();
    let g1 = sets.iter().find(|g| g["generation"] == 1).unwrap();
    assert_eq!(g1["complete"], false, "{v}");
    assert!(
        g1["problems"][0]
            .as_str()
            .unwrap()
            .contains("cannot be ingested"),
        "{v}"
    );
    let human = e.run(&["inspect", "--medium", &a]);
    let text = output_text(&human);
    assert!(
        text.contains("NOT ingestible") && text.contains("G0001 INCOMPLETE"),
        "{text}"
    );
    // Verify names the lost medium's segments as gone (it said "verify it there").
    let v = e.run(&["verify", "--medium", &a, "--medium", &c, "--medium", &d]);
    assert_eq!(v.status.code(), Some(0), "{}", output_text(&v));
    assert!(
        output_text(&v).contains("declared lost): gone for good"),
        "{}",
        output_text(&v)
    );
    // One disk by its stream name, in any case (`WEB01.D1` was an "invalid capture name"):
    // listed alone, its machine judged with every disk (with the one stream it was called
    // unfinished).
    let v = e.json(&[
        "inspect", "--medium", &a, "--medium", &c, "--medium", &d, "--name", "WEB01.D1",
    ]);
    assert_eq!(v["shipment"]["complete"], true, "{v}");
    let listed: Vec<&str> = v["media"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["captures"].as_array().unwrap())
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        !listed.is_empty() && listed.iter().all(|n| *n == "web01.d1"),
        "{v}"
    );
    let o = Line::ingest(&e, "WEB01.D1")
        .untrusted()
        .target("file:one.raw")
        .medium(&a)
        .medium(&c)
        .medium(&d)
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    same_file(&e.p("one.raw"), &e.p("d1.raw"));
    // The lost medium turns up again with its old copy of the span map (it knows neither
    // d nor its own loss): the shipment listing merges every copy given, so it is the same
    // whichever medium comes first (with the old copy first it called a, b, c complete).
    let found = b.replace("b.img", "b-found.img");
    let complete = |media: &[&str]| {
        let args: Vec<&str> = media.iter().flat_map(|m| ["--medium", *m]).collect();
        let v = e.json(&[&["inspect"], args.as_slice()].concat());
        v["shipment"]["complete"] == true
    };
    assert!(complete(&[&a, &c, &d]));
    assert!(complete(&[&found, &d, &a, &c]));
    // Given again, the found medium's share is here: generation 1 is not called lost (ingest
    // takes it).
    let v = e.json(&[
        "inspect", "--medium", &found, "--medium", &a, "--medium", &c, "--medium", &d,
    ]);
    let gens = v["shipment"]["machines"][0]["generations"]
        .as_array()
        .unwrap();
    assert!(gens.iter().all(|g| g["state"] == "complete"), "{v}");
    for order in [[&*found, &a, &c], [&a, &c, &found], [&c, &found, &a]] {
        assert!(!complete(&order), "without d, given as {order:?}");
    }
    // A write given the found medium is refused for what it is (it said "drop
    // --replace-medium" to a command that had none), the media unchanged.
    let sums = || ["a.img", "c.img", "d.img"].map(|f| std::fs::read(e.p(f)).unwrap());
    let before = sums();
    let rm_gen2 = |media: &[&str]| {
        let mut args = vec!["medium", "rm"];
        for m in media {
            args.extend(["--medium", m]);
        }
        args.extend(["--name", "web01", "--generation", "2", "--force"]);
        e.run(&args)
    };
    let o = rm_gen2(&[&a, &found, &c, &d]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("an earlier capture declared it lost")
            && !output_text(&o).contains("drop --replace-medium"),
        "{}",
        output_text(&o)
    );
    assert!(sums() == before, "a refusal changed a medium");
    // The generation the replacement wrote removed: nothing left can be ingested without the
    // lost medium, and verify says so (it said OK, exit 0, of what ingest refused).
    let o = rm_gen2(&[&a, &c, &d]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let v = e.run(&["verify", "--medium", &a, "--medium", &c, "--medium", &d]);
    assert_eq!(v.status.code(), Some(1), "{}", output_text(&v));
    assert!(
        output_text(&v).contains("generation 1, the newest of web01.d")
            && output_text(&v).contains("--replace-medium"),
        "{}",
        output_text(&v)
    );
}

/// A span killed again and again on reused media (their free clusters still hold an earlier
/// capture's bytes, as a medium that travelled before does) resumes each time and leaves every
/// medium clean and the disk whole. A kill inside a write-back had left lost clusters and FAT
/// copies that differ (a CI run: `b.img` "FATs differ", "Reclaimed 1 unused cluster"), or a
/// directory linked to a cluster's old bytes, and the resume cleared the dirty flag over them;
/// `image_format::store::fat`'s tests kill after every single write. (Once, the resume
/// cleared the kill's dirty flag on the first medium only.)
#[test]
fn a_span_killed_again_and_again_on_reused_media_leaves_every_medium_clean() {
    let e = Env::new();
    e.keygen();
    std::fs::write(e.p("old.raw"), noise(28 << 20, 5)).unwrap();
    std::fs::write(e.p("disk.raw"), noise(48 << 20, 78)).unwrap();
    let (a, b) = (e.fat("a.img", "36MiB"), e.fat("b.img", "36MiB"));
    for m in [&a, &b] {
        e.capture(m, "old")
            .source("old.raw")
            .arg("--no-compress")
            .ok();
        let o = e.run(&["medium", "rm", "--medium", m, "--name", "old", "--force"]);
        assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    }
    let line = Line::capture(&e, "sp")
        .source("disk.raw")
        .medium(&a)
        .medium(&b)
        .args(&["--skip-space-check", "--no-compress"]);
    for _ in 0..5 {
        line.killed_after("8MiB/s", 900);
    }
    line.ok();
    fsck_clean(&e.p("a.img"));
    fsck_clean(&e.p("b.img"));
    assert_eq!(ingest_sp(&e, &[&a, &b]).status.code(), Some(0));
    same_file(&e.p("out.raw"), &e.p("disk.raw"));
}

/// "Medium full: re-run with one more --medium" failed every time when the
/// full medium had not one byte left (joining wrote the span's map onto it
/// before the capture's uncommitted tail was cut back), left a 0-byte
/// SPANMAP and copies of other captures on the extra medium, and the FAT
/// was left inconsistent by the medium-full error itself.
#[test]
fn a_medium_filled_to_the_last_byte_continues_on_one_more() {
    let e = Env::new();
    e.keygen();
    std::fs::write(e.p("a.raw"), noise(58 << 20, 7)).unwrap();
    let mut d = vec![0u8; 64 << 20];
    d[..20 << 20].copy_from_slice(&noise(20 << 20, 8));
    std::fs::write(e.p("d.raw"), &d).unwrap();
    let f3 = e.fat("f3.img", "64MiB");
    let f4 = e.fat("f4.img", "128MiB");
    e.capture(&f3, "a").source("a.raw").ok();
    let free = |m: &str| e.json(&["inspect", "--medium", m])["free_bytes"].clone();
    let free_before = free(&f3);
    assert!(
        free_before.is_u64(),
        "inspect gives the free space: {free_before}"
    );
    let full = e
        .capture(&f3, "c")
        .source("d.raw")
        .arg("--skip-space-check")
        .run();
    assert_eq!(full.status.code(), Some(3), "{}", output_text(&full));
    let text = output_text(&full);
    assert!(text.contains("from its last checkpoint"), "{text}");
    // What the stopped generation holds on the medium is listed (it showed nowhere).
    let i = e.json(&["inspect", "--medium", &f3, "--name", "c"]);
    let held = i["captures"][0]["generations"][0]["on_medium_bytes"].as_u64();
    assert!(held.is_some_and(|b| b > 0), "{i}");
    // The medium-full error leaves the FAT consistent: the append that did not fit
    // took no cluster (it took the last free ones twice, leaving a segment larger
    // than its cluster chain and clusters in no chain).
    fsck_clean(&e.p("f3.img"));
    // Given up instead (on a copy), the capture gives every cluster back.
    std::fs::copy(e.p("f3.img"), e.p("f5.img")).unwrap();
    e.ok(&[
        "capture",
        "--abort",
        "--medium",
        "fat:f5.img",
        "--name",
        "c",
    ]);
    fsck_clean(&e.p("f5.img"));
    assert_eq!(free("fat:f5.img"), free_before);
    // The way on the medium-full error names: the same command with one more medium, no
    // --skip-space-check needed (a resume is never refused by the estimate).
    let o = e.capture(&f3, "c").medium(&f4).source("d.raw").run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    fsck_clean(&e.p("f3.img"));
    fsck_clean(&e.p("f4.img"));
    e.ingest(&f3, "c")
        .medium(&f4)
        .untrusted()
        .target("file:c.raw")
        .ok();
    same_file(&e.p("c.raw"), &e.p("d.raw"));
}

/// After "medium full", the dry run of the way on (the same command with one more medium)
/// said "DOES NOT FIT" and exit 3: it counted the first medium's tail past the last
/// checkpoint as used, which the resume cuts first; the capture itself then fitted.
#[test]
fn the_dry_run_of_a_resume_counts_the_tail_the_resume_cuts() {
    let e = Env::new();
    e.keygen();
    std::fs::write(e.p("o.raw"), noise(10 << 20, 3)).unwrap();
    std::fs::write(e.p("r.raw"), noise(40 << 20, 4)).unwrap();
    let (fa, fb) = (e.fat("fa.img", "48MiB"), e.fat("fb.img", "48MiB"));
    e.capture(&fa, "o").source("o.raw").ok();
    let full = e
        .capture(&fa, "r")
        .source("r.raw")
        .arg("--skip-space-check")
        .run();
    assert_eq!(full.status.code(), Some(3), "{}", output_text(&full));
    // Counted medium by medium, each less the room its copy of the index takes: a second
    // medium half full was called a fit (the tail cut on the first summed with it), and the
    // capture then stopped as full again.
    std::fs::copy(e.p("fa.img"), e.p("fa2.img")).unwrap();
    std::fs::write(e.p("j.raw"), noise(17 << 20, 5)).unwrap();
    let fc = e.fat("fc.img", "34MiB");
    e.capture(&fc, "j").source("j.raw").ok();
    let half = || e.capture("fat:fa2.img", "r").medium(&fc).source("r.raw");
    let plan = half().arg("--dry-run").arg("--json").run();
    let p: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(p["fits"], false, "{p}");
    assert_eq!(plan.status.code(), Some(3), "{}", output_text(&plan));
    let o = half().run();
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    let line = || e.capture(&fa, "r").medium(&fb).source("r.raw");
    let plan = line().arg("--dry-run").arg("--json").run();
    let p: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan.status.code(), Some(0), "{}", output_text(&plan));
    assert_eq!(p["kind"], "resume", "{p}");
    assert_eq!(p["fits"], true, "{p}");
    let o = line().run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    assert!(
        !output_text(&o).contains("may not hold"),
        "{}",
        output_text(&o)
    );
    e.ingest(&fa, "r")
        .medium(&fb)
        .untrusted()
        .target("file:r.out")
        .ok();
    same_file(&e.p("r.out"), &e.p("r.raw"));
}

/// A machine set stopped by "medium full": the same command with the medium its error asked
/// for was refused by the set's space check ("needs about 42 MiB and 31 MiB are free";
/// exit 3), which counted the first medium's tail past the last checkpoint as used where
/// the resumed disk's own plan did not. The set resumes, and its dry run says it fits.
#[test]
fn a_machine_set_stopped_by_a_full_medium_resumes_onto_the_medium_its_error_asks_for() {
    let e = Env::new();
    e.keygen();
    std::fs::write(e.p("d0.raw"), noise(40 << 20, 21)).unwrap();
    std::fs::write(e.p("d1.raw"), noise(777, 22)).unwrap();
    let (r1, r2) = (e.fat("r1.img", "40MiB"), e.fat("r2.img", "40MiB"));
    let full = e
        .capture(&r1, "m7")
        .source("d0.raw")
        .source("d1.raw")
        .arg("--skip-space-check")
        .run();
    assert_eq!(full.status.code(), Some(3), "{}", output_text(&full));
    assert!(
        output_text(&full).contains("one more --medium")
            && output_text(&full)
                .contains("the set's disks after this one (777 B of disk before compression and skipped zeros, 1 of them)"),
        "{}",
        output_text(&full)
    );
    // A copy of the full medium ingested: the set is unfinished (it was "no machine set",
    // with a hint about --target patterns).
    std::fs::copy(e.p("r1.img"), e.p("r1-stale.img")).unwrap();
    let o = e
        .ingest("fat:r1-stale.img", "m7")
        .untrusted()
        .target("file:stale-{disk}.raw")
        .run();
    // A capture that did not finish, as for one disk: exit 1 (it was 2, a usage error).
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("machine set \"m7\" on fat:r1-stale.img is unfinished"),
        "{}",
        output_text(&o)
    );
    // One of its disks by its own name: the set is what did not finish (it said the disk had
    // no finished generation, where inspect listed it complete).
    let o = e
        .ingest("fat:r1-stale.img", "m7.d0")
        .untrusted()
        .target("file:stale-d0.raw")
        .run();
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("is disk 0 of machine set m7, whose capture has not finished"),
        "{}",
        output_text(&o)
    );
    let on = || {
        e.capture(&r1, "m7")
            .medium(&r2)
            .source("d0.raw")
            .source("d1.raw")
    };
    let plan = on().arg("--dry-run").arg("--json").run();
    let p: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(p["fits"], true, "{p}");
    assert_eq!(plan.status.code(), Some(0), "{}", output_text(&plan));
    let o = on().run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    e.ingest(&r1, "m7")
        .medium(&r2)
        .untrusted()
        .target("file:m7-{disk}.raw")
        .ok();
    same_file(&e.p("m7-0.raw"), &e.p("d0.raw"));
    same_file(&e.p("m7-1.raw"), &e.p("d1.raw"));
}

/// `--dry-run` said "fits" for 64 MiB of noise on two 40 MiB media, and the
/// capture then failed half-way saying "about 19 MiB more needed" when 2 MiB
/// were missing: the plan did not count the reserve each medium keeps.
#[test]
fn a_span_the_dry_run_calls_a_fit_fits() {
    let e = Env::new();
    e.keygen();
    std::fs::write(e.p("r.raw"), noise(64 << 20, 9)).unwrap();
    let (s1, s2) = (e.fat("s1.img", "40MiB"), e.fat("s2.img", "40MiB"));
    let line = || e.capture(&s1, "r").medium(&s2).source("r.raw");
    let plan = line().arg("--dry-run").arg("--json").run();
    let p: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let (needed, free) = (
        p["needed"].as_u64().unwrap(),
        p["medium_free"].as_u64().unwrap(),
    );
    let o = line().run();
    if needed <= free {
        assert_eq!(o.status.code(), Some(0), "{p}\n{}", output_text(&o));
    } else {
        assert_eq!(plan.status.code(), Some(3), "{p}");
        // Refused before writing, with what is really missing.
        assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
        let text = output_text(&o);
        assert!(text.contains("nothing was written"), "{text}");
        assert!(
            needed - free < 16 << 20,
            "missing {} bytes: {p}",
            needed - free
        );
        let listed = e.json(&["inspect", "--medium", &s1]);
        assert!(!listed.to_string().contains("\"r\""), "{listed}");
    }
}

/// Keys, and a 48 MiB incompressible disk captured as `sp` over two 36 MiB FAT images
/// (`a.img`, `b.img`: the span needs both); returns their `fat:` specs.
fn two_media_span(e: &Env, seed: u64) -> (String, String) {
    e.keygen();
    std::fs::write(e.p("disk.raw"), noise(48 << 20, seed)).unwrap();
    let (a, b) = (e.fat("a.img", "36MiB"), e.fat("b.img", "36MiB"));
    Line::capture(e, "sp")
        .source("disk.raw")
        .medium(&a)
        .medium(&b)
        .args(&["--skip-space-check", "--no-compress"])
        .ok();
    (a, b)
}

/// `mgear ingest` of `sp` from `media` into `out.raw` (untrusted: these captures are unsigned).
fn ingest_sp(e: &Env, media: &[&str]) -> std::process::Output {
    media
        .iter()
        .fold(Line::ingest(e, "sp"), |l, m| l.medium(m))
        .untrusted()
        .target("file:out.raw")
        .run()
}

/// The span label (`MGEAR/SPAN`) of the FAT image `img` of `e`, as someone holding it can
/// copy it.
fn span_label(e: &Env, img: &str) -> Vec<u8> {
    use image_format::Store;
    let mut label = Vec::new();
    edit_medium(e, img, |s| {
        let n = s.len("MGEAR/SPAN").unwrap().unwrap() as usize;
        label = vec![0u8; n];
        s.read_exact_at("MGEAR/SPAN", 0, &mut label).unwrap();
    });
    label
}

/// Change the FAT image `img` of `e` through `edit`, as someone holding the medium can.
fn edit_medium(
    e: &Env,
    img: &str,
    edit: impl FnOnce(&mut image_format::store::FatStore<std::fs::File>),
) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(e.p(img))
        .unwrap();
    let mut s = image_format::store::FatStore::open(f).unwrap();
    edit(&mut s);
    s.unmount().unwrap();
}

/// `medium fsck` of a span's media given together runs `fsck.fat` on each (it ran on none,
/// and a medium whose file system fsck.fat calls damaged was "clean", exit 0).
#[test]
fn medium_fsck_of_several_media_checks_each_file_system() {
    let e = Env::new();
    let (a, b) = two_media_span(&e, 29);
    let fsck = || {
        let o = e.run(&["medium", "fsck", "--medium", &a, "--medium", &b, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (o.status.code(), v)
    };
    let (code, v) = fsck();
    assert_eq!(code, Some(0), "{v}");
    let out = v["fsck_fat"]["output"].as_str().unwrap_or_default();
    assert!(out.contains(&a) && out.contains(&b), "{v}");
    // A file on the second medium whose entry claims more than its chain holds: only
    // fsck.fat sees it.
    edit_medium(&e, "b.img", |s| {
        use image_format::Store;
        s.write_at("X.TXT", 0, b"abc").unwrap();
    });
    let mut img = std::fs::read(e.p("b.img")).unwrap();
    let at = img
        .windows(11)
        .position(|w| w == b"X       TXT")
        .expect("X.TXT's entry");
    img[at + 28..at + 32].copy_from_slice(&(1u32 << 20).to_le_bytes());
    std::fs::write(e.p("b.img"), &img).unwrap();
    let (code, v) = fsck();
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["fsck_fat"]["ok"], false, "{v}");
}

/// Flip bit 0 of byte `at` of file `path` on the medium.
fn flip(s: &mut image_format::store::FatStore<std::fs::File>, path: &str, at: u64) {
    use image_format::Store;
    let mut byte = [0u8; 1];
    s.read_exact_at(path, at, &mut byte).unwrap();
    byte[0] ^= 1;
    s.write_at(path, at, &byte).unwrap();
}

/// One flipped bit in a medium's copy of the span map (MGEAR/SPANMAP) made every command on
/// the span exit 3 with an empty capture name. The map is mirrored on every medium and the
/// data does not depend on it: verify reports it (exit 1), inspect and ingest use the other
/// medium's copy.
#[test]
fn a_damaged_span_map_is_a_finding_not_a_dead_end() {
    use image_format::Store;
    let e = Env::new();
    let (a, b) = two_media_span(&e, 9);
    edit_medium(&e, "a.img", |s| flip(s, "MGEAR/SPANMAP", 10));
    let v = e.run(&["verify", "--medium", &a, "--medium", &b]);
    assert_eq!(v.status.code(), Some(1), "{}", output_text(&v));
    assert!(
        output_text(&v).contains("the span map's copy on medium #0 is damaged"),
        "{}",
        output_text(&v)
    );
    // A file of the medium, not of a capture (it read "capture  (MGEAR/SPANMAP)").
    assert!(
        output_text(&v).contains("medium (MGEAR/SPANMAP)")
            && !output_text(&v).contains("capture  ("),
        "{}",
        output_text(&v)
    );
    // inspect names the damaged copy and still lists the span from b's copy; of a alone it
    // said "medium #0 of 0".
    let i = e.run(&["inspect", "--medium", &a, "--medium", &b]);
    assert_eq!(i.status.code(), Some(0), "{}", output_text(&i));
    let text = output_text(&i);
    assert!(
        text.contains("medium #0's copy of the span map is DAMAGED") && text.contains(" of 2;"),
        "{text}"
    );
    let i = e.run(&["inspect", "--medium", &a]);
    let text = output_text(&i);
    assert!(
        text.contains("no copy of the span map given could be read") && !text.contains(" of 0"),
        "{text}"
    );
    let j = e.run(&["inspect", "--medium", &a, "--json"]);
    // Alone, no copy of the map reads: damage found, exit 1 (beside "DAMAGED", it was 0).
    assert_eq!(j.status.code(), Some(1), "{}", output_text(&j));
    let j: serde_json::Value = serde_json::from_slice(&j.stdout).expect("inspect --json");
    assert_eq!(j["span"]["damaged_maps"][0]["ordinal"], 0, "{j}");
    // What else the shipment needs is not known from a alone: not "complete".
    assert_eq!(j["shipment"]["complete"], false, "{j}");
    assert_eq!(
        j["shipment"]["missing_media"].as_array().map(Vec::len),
        Some(1),
        "{j}"
    );
    let o = ingest_sp(&e, &[&a, &b]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    same_file(&e.p("out.raw"), &e.p("disk.raw"));

    // Medium b relabelled as medium #0 (its label copied from a: a valid label, the wrong
    // one) and a byte of its segment flipped: verify of b alone took its own segment for
    // one on another medium and said OK. What is on a medium is read there.
    let label = span_label(&e, "a.img");
    edit_medium(&e, "b.img", |sb| {
        sb.write_at("MGEAR/SPAN", 0, &label).unwrap();
        let seg = sb
            .list("MGEAR/sp/G0001")
            .unwrap()
            .into_iter()
            .find(|x| x.name.starts_with("SEG-"))
            .expect("b holds a segment");
        flip(sb, &format!("MGEAR/sp/G0001/{}", seg.name), 5000);
    });
    let v = e.run(&["verify", "--medium", &b]);
    assert_eq!(v.status.code(), Some(1), "{}", output_text(&v));
    assert!(
        output_text(&v).contains("corrupted record"),
        "{}",
        output_text(&v)
    );
}

/// A capture over appliances that filled them, continued with one more appliance given in
/// another order: refused as "started with different parameters" (the appliance that
/// witnesses is the first one given), though media may be given in any order. The appliance
/// that witnessed the capture goes first again.
#[test]
fn an_appliance_span_resumes_with_the_appliances_in_any_order() {
    let labs = unlocked_appliances(3, 40);
    let a = &labs[0];
    a.keygen();
    std::fs::write(a.p("disk.raw"), noise(72 << 20, 4)).unwrap();
    let ttys: Vec<String> = labs.iter().map(|l| l.tty()).collect();
    let o = Line::capture(a, "web01")
        .source("disk.raw")
        .appliance(&ttys[0])
        .appliance(&ttys[1])
        .args(&["--skip-space-check", "--no-compress"])
        .run();
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    let c = Line::capture(a, "web01")
        .source("disk.raw")
        .appliance(&ttys[2])
        .appliance(&ttys[1])
        .appliance(&ttys[0])
        .args(&["--skip-space-check", "--no-compress"])
        .json();
    assert!(c["resumed_from_chunk"].as_u64().unwrap() > 0, "{c}");
    let o = Line::ingest(a, "web01")
        .appliance(&ttys[1])
        .appliance(&ttys[2])
        .appliance(&ttys[0])
        .untrusted()
        .arg("--allow-unsealed")
        .target("file:out.raw")
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    same_file(&a.p("out.raw"), &a.p("disk.raw"));
}

/// A span over two appliances, the first sealed and checked on arrival, the second sealed
/// only: the checked one's seal and arrival are read in either order (the other given first
/// was read, and the shipment refused as "not checked on arrival"; pinning both did the
/// same, and before its seal, as "its seal does not check").
#[test]
fn a_span_one_appliance_checked_on_arrival_ingests_in_either_order() {
    let mut labs = unlocked_appliances(2, 40);
    let a = &labs[0];
    a.keygen();
    std::fs::write(a.p("disk.raw"), noise(40 << 20, 6)).unwrap();
    let ttys: Vec<String> = labs.iter().map(|l| l.tty()).collect();
    Line::capture(a, "web01")
        .source("disk.raw")
        .appliance(&ttys[0])
        .appliance(&ttys[1])
        .args(&["--skip-space-check", "--no-compress"])
        .ok();
    a.appliance_ok(&["seal"]);
    a.appliance_ok(&["arrival"]);
    // The other sealed too, not yet checked on arrival: the checked one is read still.
    labs[1].appliance_ok(&["seal"]);
    let (fa, fb) = (labs[0].fingerprint(), labs[1].fingerprint());
    for (k, pins) in [vec![fa.clone()], vec![fa.clone(), fb.clone()]]
        .into_iter()
        .enumerate()
    {
        let mut line = Line::ingest(a, "web01")
            .appliance(&ttys[1])
            .appliance(&ttys[0])
            .target(&format!("file:out{k}.raw"));
        for p in &pins {
            line = line.args(&["--trust-appliance", p]);
        }
        let o = line.run();
        assert_eq!(o.status.code(), Some(0), "{pins:?}: {}", output_text(&o));
        same_file(&a.p(&format!("out{k}.raw")), &a.p("disk.raw"));
    }
    for l in labs.iter_mut() {
        l.stop();
    }
}

/// A segment the span map does not place (its entries cut from every copy) and that is not on
/// the media given: ingest said "truncated segment" (exit 1, "the data did not check out");
/// the data is not bad, it is elsewhere: exit 2, give every medium.
#[test]
fn a_segment_no_map_places_is_missing_not_corrupt() {
    use image_format::Store;
    let e = Env::new();
    let (a, b) = two_media_span(&e, 11);
    for img in ["a.img", "b.img"] {
        edit_medium(&e, img, |s| {
            let n = s.len("MGEAR/SPANMAP").unwrap().unwrap();
            // The last entry (segment 1's placement) becomes a torn one, which readers drop.
            s.set_len("MGEAR/SPANMAP", n - 3).unwrap();
        });
    }
    let o = ingest_sp(&e, &[&a]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("on none of the media given"),
        "{}",
        output_text(&o)
    );
    // With every medium it is found where it is.
    let o = ingest_sp(&e, &[&a, &b]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    same_file(&e.p("out.raw"), &e.p("disk.raw"));
}

/// One flipped byte in a medium's span label (MGEAR/SPAN) made every command exit 3 with an
/// empty capture name, verify and inspect too. The medium is verified on its own (the label
/// named as damaged), given with the others it is refused by name (it cannot be placed), and
/// the others are ingested as far as they go.
#[test]
fn a_damaged_span_label_is_named_and_the_medium_still_verifies() {
    let e = Env::new();
    let (a, b) = two_media_span(&e, 12);
    edit_medium(&e, "b.img", |s| flip(s, "MGEAR/SPAN", 20));
    let v = e.run(&["verify", "--medium", &b]);
    assert_eq!(v.status.code(), Some(1), "{}", output_text(&v));
    assert!(
        output_text(&v).contains("the span label is damaged"),
        "{}",
        output_text(&v)
    );
    // Inspect names it too, as damage (exit 1: it said nothing of the label, exit 0, beside
    // a span id of zeros and a DAMAGED generation).
    let i = e.run(&["inspect", "--medium", &b]);
    assert_eq!(i.status.code(), Some(1), "{}", output_text(&i));
    assert!(
        output_text(&i).contains("(MGEAR/SPAN) is DAMAGED"),
        "{}",
        output_text(&i)
    );
    // Given with the others: a finding about the medium (exit 1), not a usage error.
    let o = ingest_sp(&e, &[&a, &b]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("span label is damaged")
            && !output_text(&o).contains("do not use it"),
        "{}",
        output_text(&o)
    );
    let o = ingest_sp(&e, &[&a]);
    assert_eq!(o.status.code(), Some(4), "{}", output_text(&o));
}

/// A span whose capture stopped unfinished loses a medium: `--replace-medium` cannot continue
/// that generation (its share on the lost medium is gone) and is refused with the media left
/// byte for byte as they were (it used to declare the loss and enroll the new medium, then
/// refuse); `capture --abort --replace-medium LOST` removes it (a blank medium given with it is
/// not enrolled), and the media that are left take a new capture.
#[test]
fn an_unfinished_span_that_lost_a_medium_is_aborted_and_nothing_is_stranded() {
    let e = Env::new();
    e.keygen();
    std::fs::write(e.p("disk.raw"), noise(80 << 20, 9)).unwrap();
    let (a, b, c) = (
        e.fat("a.img", "40MiB"),
        e.fat("b.img", "40MiB"),
        e.fat("c.img", "40MiB"),
    );
    let o = Line::capture(&e, "web01")
        .source("disk.raw")
        .medium(&a)
        .medium(&b)
        .arg("--skip-space-check")
        .run();
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    std::fs::rename(e.p("b.img"), e.p("b.lost")).unwrap();
    let before = |p: &str| std::fs::read(e.p(p)).unwrap();
    let (a0, c0) = (before("a.img"), before("c.img"));
    let o = Line::capture(&e, "web01")
        .source("disk.raw")
        .medium(&a)
        .medium(&c)
        .args(&["--replace-medium", &b])
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    let said = output_text(&o);
    assert!(said.contains("generation 1 is unfinished"), "{said}");
    assert!(said.contains("mgear capture --abort"), "{said}");
    assert!(
        before("a.img") == a0 && before("c.img") == c0,
        "a refusal changed a medium"
    );
    let abort = |name: &str| {
        e.run(&[
            "capture",
            "--abort",
            "--medium",
            &a,
            "--medium",
            &c,
            "--replace-medium",
            &b,
            "--name",
            name,
        ])
    };
    // An abort that is refused (no such capture) declares nothing lost: a medium declared
    // lost stays lost for good.
    let o = abort("nosuch");
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(before("a.img") == a0, "a refused abort changed a medium");
    let o = abort("web01");
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    assert!(
        before("c.img") == c0,
        "the blank medium was enrolled by the abort"
    );
    // What is left takes a new capture and gives it back.
    std::fs::write(e.p("small.raw"), noise(8 << 20, 10)).unwrap();
    Line::capture(&e, "web02")
        .source("small.raw")
        .medium(&a)
        .ok();
    Line::ingest(&e, "web02")
        .medium(&a)
        .untrusted()
        .target("file:web02.raw")
        .ok();
    same_file(&e.p("web02.raw"), &e.p("small.raw"));
    e.ok(&["medium", "fsck", "--medium", &a]);
}

/// The same for a machine set: the refusal names the abort the tool accepts, of the set (it
/// named the disk, `--name vm3.d1`, which the abort refuses: "abort the set").
#[test]
fn an_unfinished_set_span_that_lost_a_medium_names_the_sets_abort() {
    let e = Env::new();
    e.keygen();
    std::fs::write(e.p("d0.raw"), noise(4 << 20, 11)).unwrap();
    std::fs::write(e.p("d1.raw"), noise(80 << 20, 12)).unwrap();
    let (a, b, c) = (
        e.fat("a.img", "40MiB"),
        e.fat("b.img", "40MiB"),
        e.fat("c.img", "40MiB"),
    );
    let o = Line::capture(&e, "vm3")
        .sources(&["d0.raw", "d1.raw"])
        .medium(&a)
        .medium(&b)
        .arg("--skip-space-check")
        .run();
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    std::fs::rename(e.p("b.img"), e.p("b.lost")).unwrap();
    let o = Line::capture(&e, "vm3")
        .sources(&["d0.raw", "d1.raw"])
        .medium(&a)
        .medium(&c)
        .args(&["--replace-medium", &b])
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    let said = output_text(&o);
    assert!(said.contains("is unfinished"), "{said}");
    let abort = said
        .split('`')
        .find(|s| s.starts_with("mgear capture --abort"))
        .unwrap_or_else(|| panic!("no abort named: {said}"));
    assert!(abort.ends_with("--name vm3"), "{abort}");
    let o = e.run(&[
        "capture",
        "--abort",
        "--medium",
        &a,
        "--medium",
        &c,
        "--replace-medium",
        &b,
        "--name",
        "vm3",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
}

/// `mtools` on a FAT image: `args` after `-i IMAGE`.
fn mtool(e: &Env, tool: &str, image: &str, args: &[&str]) {
    let o = std::process::Command::new(tool)
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(e.p(image))
        .args(args)
        .current_dir(e.dir.path())
        .output()
        .unwrap_or_else(|err| panic!("{tool} (Debian: mtools): {err}"));
    assert!(o.status.success(), "{tool} {args:?}: {}", output_text(&o));
}

/// A span map stripped of a member (its "joined" and "placed" entries dropped on the medium
/// given): `inspect` listed the half shipment as complete, nothing missing. A segment the
/// manifest lists that no medium given holds and the map places nowhere makes it damaged.
#[test]
fn a_span_map_stripped_of_a_member_does_not_make_half_a_shipment_complete() {
    let e = Env::new();
    e.keygen();
    std::fs::write(e.p("disk.raw"), noise(48 << 20, 23)).unwrap();
    let (a, b) = (e.fat("a.img", "40MiB"), e.fat("b.img", "40MiB"));
    Line::capture(&e, "web01")
        .source("disk.raw")
        .medium(&a)
        .medium(&b)
        .ok();
    let map = "::/MGEAR/SPANMAP";
    mtool(&e, "mcopy", "a.img", &["-n", map, "map.bin"]);
    let whole = std::fs::read(e.p("map.bin")).unwrap();
    // Entries of 128 bytes; bytes 2..4 name the medium an entry is about.
    let kept: Vec<u8> = whole
        .chunks(128)
        .filter(|entry| entry.len() == 128 && entry[2..4] == [0, 0])
        .flatten()
        .copied()
        .collect();
    assert!(kept.len() < whole.len(), "the span has a second member");
    std::fs::write(e.p("stripped.bin"), &kept).unwrap();
    mtool(&e, "mcopy", "a.img", &["-o", "stripped.bin", map]);
    let v = e.json(&["inspect", "--medium", &a]);
    assert_eq!(v["shipment"]["complete"], false, "{v}");
    let g = &v["captures"][0]["generations"][0];
    assert_eq!(g["state"], "damaged", "{v}");
    assert!(
        g["damage"]
            .as_str()
            .unwrap()
            .contains("is on none of the media given"),
        "{v}"
    );
}

/// A span's mirrored files are read from one of its media: `verify` of the whole span said
/// "OK" with one medium's copy of a MANIFEST damaged or deleted (that medium alone failed).
/// Every medium's copies are compared, and a copy that differs or is missing is a problem.
#[test]
fn a_damaged_or_missing_mirror_copy_on_one_medium_of_a_span_is_found() {
    let e = Env::new();
    e.keygen();
    std::fs::write(e.p("disk.raw"), noise(8 << 20, 21)).unwrap();
    let (a, b) = (e.fat("a.img", "40MiB"), e.fat("b.img", "40MiB"));
    Line::capture(&e, "web01")
        .source("disk.raw")
        .medium(&a)
        .medium(&b)
        .ok();
    let verify = || e.run(&["verify", "--medium", &a, "--medium", &b]);
    let o = verify();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    // A byte copy of a member beside its original: inspect refuses it as verify and ingest
    // do (it called the shipment complete, listing the generation on both).
    std::fs::copy(e.p("a.img"), e.p("acopy.img")).unwrap();
    let copy = format!("fat:{}", e.s("acopy.img"));
    for cmd in ["inspect", "verify"] {
        let o = e.run(&[cmd, "--medium", &a, "--medium", &b, "--medium", &copy]);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {}", output_text(&o));
        assert!(
            output_text(&o).contains("is given twice"),
            "{cmd}: {}",
            output_text(&o)
        );
    }
    // b's copy of the span map damaged, b verified alone: the segments on a are not called
    // missing (they were), only not placeable from here.
    let map = "::/MGEAR/SPANMAP";
    mtool(&e, "mcopy", "b.img", &["-n", map, "map.bin"]);
    let good = std::fs::read(e.p("map.bin")).unwrap();
    let mut bad = good.clone();
    bad[10] ^= 0xff;
    std::fs::write(e.p("badmap.bin"), &bad).unwrap();
    mtool(&e, "mcopy", "b.img", &["-o", "badmap.bin", map]);
    let o = e.run(&["verify", "--medium", &b]);
    assert!(
        output_text(&o).contains("so which medium holds it is not known here")
            && !output_text(&o).contains("segment listed in the manifest is missing"),
        "{}",
        output_text(&o)
    );
    mtool(&e, "mcopy", "b.img", &["-o", "map.bin", map]);
    let o = verify();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let manifest = "::/MGEAR/web01/G0001/MANIFEST";
    mtool(&e, "mcopy", "b.img", &["-n", manifest, "manifest.bin"]);
    let mut m = std::fs::read(e.p("manifest.bin")).unwrap();
    let mid = m.len() / 2;
    m[mid] ^= 1;
    std::fs::write(e.p("bad.bin"), &m).unwrap();
    mtool(&e, "mcopy", "b.img", &["-o", "bad.bin", manifest]);
    let o = verify();
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("its copies on the media of the span differ"),
        "{}",
        output_text(&o)
    );
    mtool(&e, "mdel", "b.img", &[manifest]);
    let o = verify();
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("is missing on --medium fat:b.img"),
        "{}",
        output_text(&o)
    );
    // A segment removed from the medium the map places it on, every medium given: said as
    // removed there (it was "the map does not say which medium holds it: give every medium").
    mtool(&e, "mdel", "a.img", &["::/MGEAR/web01/G0001/SEG-00000"]);
    let o = Line::ingest(&e, "web01")
        .untrusted()
        .target("file:out.raw")
        .medium(&a)
        .medium(&b)
        .run();
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains(&format!("(given as {a}), but it is not there")),
        "{}",
        output_text(&o)
    );
}

/// The second appliance of a span loses power while a capture writes both (the first
/// witnesses, the second holds mirrored files): a raw "Broken pipe" with the generic hint
/// was all it said. Now the appliance that stopped answering is named, and the way on.
#[test]
fn the_second_appliance_of_a_span_cut_off_is_named() {
    let mut labs = unlocked_appliances(2, 64);
    labs[0].keygen();
    std::fs::write(labs[0].p("disk.raw"), noise(24 << 20, 9)).unwrap();
    let ttys: Vec<String> = labs.iter().map(|l| l.tty()).collect();
    let line = Line::capture(&labs[0], "web01")
        .source("disk.raw")
        .appliance(&ttys[0])
        .appliance(&ttys[1])
        .args(&[
            "--skip-space-check",
            "--rate-limit",
            "4MiB/s",
            "--checkpoint-bytes",
            "1MiB",
        ]);
    let child = line.spawn();
    // Once the capture has begun on the second appliance (its custody log says so), and
    // has written for a while: not a fixed wait, which a loaded machine outruns.
    let started = std::time::Instant::now();
    while !labs[1].appliance_json(&["log"])["entries"]
        .to_string()
        .contains("CaptureBegin")
    {
        assert!(started.elapsed().as_secs() < 60, "the capture never began");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    labs[1].kill();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "the appliance at {} does not answer any more",
            ttys[1]
        )),
        "{err}"
    );
}

/// A first capture through one appliance filled it; continued with a blank appliance given
/// first, it was refused as "started with different parameters" after the join was written,
/// and no order went on from there. The appliance that holds the capture goes first.
#[test]
fn a_full_appliance_continues_with_a_new_one_given_first() {
    let labs = unlocked_appliances(2, 40);
    let a = &labs[0];
    a.keygen();
    std::fs::write(a.p("disk.raw"), noise(48 << 20, 5)).unwrap();
    let ttys: Vec<String> = labs.iter().map(|l| l.tty()).collect();
    let o = Line::capture(a, "big")
        .source("disk.raw")
        .appliance(&ttys[0])
        .args(&["--skip-space-check"])
        .run();
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    let o = Line::capture(a, "big")
        .source("disk.raw")
        .appliance(&ttys[1])
        .appliance(&ttys[0])
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let o = Line::ingest(a, "big")
        .appliance(&ttys[1])
        .appliance(&ttys[0])
        .untrusted()
        .arg("--allow-unsealed")
        .target("file:out.raw")
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    same_file(&a.p("out.raw"), &a.p("disk.raw"));
}

/// A finished span capture cut off while it closed its second medium: that medium lacks its
/// copy of the generation's MANIFEST and is marked left mid-write. The same command again
/// was refused as "already captured" (exit 2) and left it so (verify: "the copy every medium
/// of the span holds is missing"); now it copies what the first medium holds, puts the file
/// system right and exits 0 with the receipt.
#[test]
fn a_span_cut_while_it_closed_is_put_right_by_the_same_command() {
    let e = Env::new();
    let (a, b) = two_media_span(&e, 51);
    edit_medium(&e, "b.img", |s| {
        image_format::Store::remove_file(s, "MGEAR/sp/G0001/MANIFEST").unwrap();
    });
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(e.p("b.img"))
            .unwrap();
        let mut boot = [0u8; 512];
        f.read_exact_at(&mut boot, 0).unwrap();
        boot[0x41] |= 1;
        f.write_all_at(&boot, 0).unwrap();
    }
    let v = e.run(&["verify", "--medium", &a, "--medium", &b]);
    assert_ne!(v.status.code(), Some(0), "{}", output_text(&v));
    let again = Line::capture(&e, "sp")
        .source("disk.raw")
        .medium(&a)
        .medium(&b)
        .args(&["--skip-space-check", "--no-compress"])
        .ok();
    assert!(
        output_text(&again).contains("put right, nothing captured again"),
        "{}",
        output_text(&again)
    );
    for img in ["a.img", "b.img"] {
        mgear_tests::fsck_clean(&e.p(img));
    }
    let v = e.run(&["verify", "--medium", &a, "--medium", &b]);
    assert_eq!(v.status.code(), Some(0), "{}", output_text(&v));
    // Each medium alone holds its copy again.
    let v = e.run(&["verify", "--medium", &b]);
    assert!(!output_text(&v).contains("MANIFEST"), "{}", output_text(&v));
    assert_eq!(ingest_sp(&e, &[&a, &b]).status.code(), Some(0));
    assert_eq!(
        std::fs::read(e.p("out.raw")).unwrap(),
        std::fs::read(e.p("disk.raw")).unwrap()
    );
}

/// A medium full part-way through a disk whose zeros came first: a medium added at the size
/// the message asks for (what it says is needed, plus the copy it keeps) takes the rest. It
/// asked for too little (the zeros read counted as compression, and the full medium's own
/// copy of the index was left out), and the medium added as told was full again.
#[test]
fn a_medium_added_as_the_full_message_says_takes_the_rest() {
    let e = Env::new();
    e.keygen();
    let mut disk = noise(100 << 20, 21);
    disk[20 << 20..40 << 20].fill(0);
    std::fs::write(e.p("disk.raw"), &disk).unwrap();
    full_then_a_medium_as_asked(&e);
}

/// Capture `disk.raw` onto a 64 MiB medium until it is full, add a medium of the size the
/// message asks for (what is needed, plus the copy it keeps), finish the capture onto it and
/// ingest both bit for bit; the bytes the message said were needed.
fn full_then_a_medium_as_asked(e: &Env) -> f64 {
    let a = e.fat("a.img", "64MiB");
    let o = e
        .capture(&a, "web01")
        .source("disk.raw")
        .arg("--skip-space-check")
        .run();
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    let said = output_text(&o);
    let number_after = |after: &str, unit: &str| -> f64 {
        let at = said
            .find(after)
            .unwrap_or_else(|| panic!("{after:?}: {said}"))
            + after.len();
        let rest = &said[at..];
        let end = rest
            .find(unit)
            .unwrap_or_else(|| panic!("{unit:?}: {said}"));
        rest[..end].trim().parse().unwrap()
    };
    let needed = number_after("medium full: about ", " bytes");
    let room = number_after("added, with room for about ", " MiB") * 1048576.0;
    // The medium added holds the rest and the span's copies, this medium's too.
    assert!(room > needed, "{said}");
    // A FAT32 file system of this size keeps about 1 MiB for itself.
    let size = (room / 1048576.0).ceil() as u64 + 1;
    let b = e.fat("b.img", &format!("{size}MiB"));
    let o = e
        .capture(&a, "web01")
        .source("disk.raw")
        .arg("--medium")
        .arg(&b)
        .run();
    assert_eq!(o.status.code(), Some(0), "{size} MiB: {}", output_text(&o));
    e.ingest(&a, "web01")
        .arg("--medium")
        .arg(&b)
        .arg("--allow-untrusted")
        .target("file:out.raw")
        .ok();
    same_file(&e.p("out.raw"), &e.p("disk.raw"));
    needed
}

/// A medium full part-way through a sparse disk: the rest's holes are not asked room for (it
/// asked 262 MiB more where 90 MiB of data was left, and the 128 MiB medium at hand looked
/// too small), and a medium of the size asked for takes the rest.
#[test]
fn a_medium_full_on_a_sparse_disk_asks_room_for_its_data_only() {
    let e = Env::new();
    e.keygen();
    let f = std::fs::File::create(e.p("disk.raw")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &noise(80 << 20, 22), 0).unwrap();
    f.set_len(200 << 20).unwrap();
    drop(f);
    let needed = full_then_a_medium_as_asked(&e);
    // About 20 MiB of data is left past what fit (and the last checkpoint's rewrite).
    assert!(needed < (48 << 20) as f64, "{needed}");
}

/// One entry appended to every copy of the span map (it is unsigned), placing the first
/// medium's segment on the second: the first medium was read as the second ("its label was
/// changed"), and the second medium, not given, as "given, but not there: do not use this
/// shipment". The label stands; the medium given alone is pending on the other (exit 4), and
/// that one given next finishes the volume.
#[test]
fn an_appended_map_entry_does_not_turn_a_medium_into_another() {
    use image_format::Store;
    let e = Env::new();
    let (a, b) = two_media_span(&e, 23);
    let seg = "MGEAR/sp/G0001/SEG-00000";
    let mut entry = [0u8; 128];
    entry[0] = 2;
    entry[1] = seg.len() as u8;
    entry[2..4].copy_from_slice(&1u16.to_le_bytes());
    entry[4..4 + seg.len()].copy_from_slice(seg.as_bytes());
    let crc = crate::appliance_console::crc32(&entry[..124]);
    entry[124..].copy_from_slice(&crc.to_le_bytes());
    for img in ["a.img", "b.img"] {
        edit_medium(&e, img, |s| {
            let at = s.len("MGEAR/SPANMAP").unwrap().unwrap();
            s.write_at("MGEAR/SPANMAP", at, &entry).unwrap();
        });
    }
    let o = ingest_sp(&e, &[&a]);
    assert_eq!(o.status.code(), Some(4), "{}", output_text(&o));
    assert!(
        !output_text(&o).contains("which is given") && output_text(&o).contains("b.img"),
        "{}",
        output_text(&o)
    );
    let v = e.run(&["verify", "--medium", &a]);
    assert!(
        !output_text(&v).contains("its label was changed"),
        "{}",
        output_text(&v)
    );
    let o = ingest_sp(&e, &[&b]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    same_file(&e.p("out.raw"), &e.p("disk.raw"));
}

/// A medium of a span formatted since it joined, given again under its name: the capture said
/// "not attached ... attach it and give it with --medium too" and inspect "not given", of the
/// medium on the command line. Both now say it holds no span label (formatted since), and name
/// the `--replace-medium '#N'` that captures its share again.
#[test]
fn a_span_member_formatted_since_it_joined_is_said_to_be_blank() {
    let e = Env::new();
    e.keygen();
    std::fs::write(e.p("d.raw"), noise(40 << 20, 34)).unwrap();
    let (a, b) = (e.fat("a.img", "40MiB"), e.fat("b.img", "40MiB"));
    let cap = |extra: &[&str]| {
        e.capture(&a, "web01")
            .source("d.raw")
            .medium(&b)
            .args(extra)
            .run()
    };
    let o = cap(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    e.ok(&["medium", "format", &b, "--force"]);
    for dry in [false, true] {
        let o = cap(if dry {
            &["--delta", "--dry-run"]
        } else {
            &["--delta"]
        });
        assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
        assert!(
            output_text(&o).contains(&format!(
                "{b} was given, but holds no span label now: it was formatted"
            )) && output_text(&o).contains("`--replace-medium '#1'`"),
            "{}",
            output_text(&o)
        );
    }
    let o = e.run(&["inspect", "--medium", &a, "--medium", &b]);
    assert!(
        output_text(&o).contains(&format!("{b} was given but holds no span label")),
        "{}",
        output_text(&o)
    );
    let o = cap(&["--delta", "--replace-medium", "#1"]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    e.ingest(&a, "web01")
        .untrusted()
        .medium(&b)
        .target("file:v.raw")
        .ok();
    same_file(&e.p("v.raw"), &e.p("d.raw"));
}

/// A medium whose span label names another member (copied from the other medium), ingested
/// on its own: read as the member whose segments it holds, with the warning the README
/// promises, before anything is written (a run that wrote what it holds, exit 4, returned
/// before the warning); then with the other medium the disk is whole.
#[test]
fn a_relabelled_medium_ingested_alone_is_warned_of() {
    let e = Env::new();
    let (a, b) = two_media_span(&e, 19);
    let label = span_label(&e, "a.img");
    edit_medium(&e, "b.img", |sb| {
        use image_format::Store;
        sb.write_at("MGEAR/SPAN", 0, &label).unwrap();
    });
    let o = ingest_sp(&e, &[&b]);
    assert_eq!(o.status.code(), Some(4), "{}", output_text(&o));
    let said = output_text(&o);
    assert_eq!(
        said.matches("span label says it is medium #0, but it holds the segments")
            .count(),
        1,
        "{said}"
    );
    let o = ingest_sp(&e, &[&a]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    same_file(&e.p("out.raw"), &e.p("disk.raw"));
}

/// A medium a few MiB short for the last capture: what the message asks to free is about
/// what the rest of that disk stores (it counted the room a medium joining a span keeps too,
/// twice a 6 MiB disk, and captures that need not go were removed); freeing it is enough.
#[test]
fn a_medium_just_short_asks_to_free_what_the_rest_of_the_disk_needs() {
    let e = Env::new();
    e.keygen();
    let m = e.fat("m.img", "40MiB");
    let free = e.json(&["inspect", "--medium", &m])["free_bytes"]
        .as_u64()
        .unwrap();
    // What leaves about 4 MiB free: the 6 MiB disk does not fit.
    std::fs::write(e.p("filler.raw"), noise(free as usize - (4 << 20), 31)).unwrap();
    e.capture(&m, "filler").source("filler.raw").ok();
    std::fs::write(e.p("disk.raw"), noise(6 << 20, 32)).unwrap();
    let o = e
        .capture(&m, "web01")
        .source("disk.raw")
        .arg("--skip-space-check")
        .run();
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    let said = output_text(&o);
    let at = said.find("medium full: about ").expect(&said) + "medium full: about ".len();
    let needed: u64 = said[at..].split(' ').next().unwrap().parse().unwrap();
    // At most the whole disk, 5 % and a chunk more (the reserve a span medium keeps, about
    // 8 MiB here, counted too said twice that).
    assert!(needed <= (6 << 20) * 105 / 100 + (1 << 20), "{said}");
    assert!(said.contains("more needed on it"), "{said}");
    e.ok(&[
        "medium", "rm", "--medium", &m, "--name", "filler", "--force",
    ]);
    e.capture(&m, "web01").source("disk.raw").ok();
    e.ingest(&m, "web01")
        .untrusted()
        .target("file:out.raw")
        .unsealed()
        .ok();
    same_file(&e.p("out.raw"), &e.p("disk.raw"));
}

/// A copy of one member made before a later run wrote segments onto it, given with the
/// other media: inspect called the shipment complete, and verify and ingest then found the
/// segments missing. It is named as an older copy, and the shipment is not complete.
#[test]
fn an_older_copy_of_a_member_is_not_a_complete_shipment() {
    let e = Env::new();
    e.keygen();
    std::fs::write(e.p("disk.raw"), noise(56 << 20, 41)).unwrap();
    let (a, b) = (e.fat("a.img", "40MiB"), e.fat("b.img", "64MiB"));
    let capture = |delta: bool| {
        let l = Line::capture(&e, "web01")
            .source("disk.raw")
            .medium(&a)
            .medium(&b);
        if delta {
            l.arg("--delta").ok()
        } else {
            l.ok()
        }
    };
    capture(false);
    std::fs::copy(e.p("b.img"), e.p("bstale.img")).unwrap();
    // A changed disk: its delta goes onto b, a being full.
    let mut disk = std::fs::read(e.p("disk.raw")).unwrap();
    disk[..4 << 20].copy_from_slice(&noise(4 << 20, 42));
    std::fs::write(e.p("disk.raw"), &disk).unwrap();
    capture(true);
    let stale = format!("fat:{}", e.s("bstale.img"));
    let i = e.json(&["inspect", "--medium", &a, "--medium", &stale]);
    assert_eq!(i["shipment"]["complete"], false, "{i}");
    let missing = i["shipment"]["missing_media"].to_string();
    assert!(
        missing.contains("is an older copy of it") && missing.contains("bstale.img"),
        "{i}"
    );
    let i = e.json(&["inspect", "--medium", &a, "--medium", &b]);
    assert_eq!(i["shipment"]["complete"], true, "{i}");
}
