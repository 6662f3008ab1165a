//! Machine sets end to end (issue #15): a two-disk machine (the sample
//! bootable disk as disk 0, a data disk as disk 1) captured as one set,
//! signed; keyless verify; `inspect` of the set; ingest with a `{disk}`
//! pattern (both volumes bit-identical to the sources), `--disk 1` alone,
//! a delta of the set, a tampered set refused; a shipment listing over two
//! media; and the two-disk machine booted under QEMU TCG with both disks.
//! Dedup across machines (opt-in): a second machine captured with
//! `--dedup-across-machines` stores only what the first did not, both ingest
//! bit for bit, and the first cannot be removed while the second borrows.
//!
//! Needs the sample disk's tools (busybox-static, linux-image-amd64,
//! grub-pc-bin, e2fsprogs, fdisk), qemu-system-x86 for the boot, and
//! `cargo build --workspace` first.

use mgear_tests::{output_text, same_file, Env, Line};

/// A data disk with text, random-looking bytes and zero runs.
fn data_disk(seed: u8) -> Vec<u8> {
    let mut d = vec![0u8; 6 << 20];
    for (i, b) in d[..1 << 20].iter_mut().enumerate() {
        *b = b"MotionGear /srv data "[i % 21];
    }
    let mut x = u32::from(seed) | 1;
    for b in d[3 << 20..4 << 20].iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    d
}

/// Env with target key, site key, the sample disk 0 and a data disk 1.
fn machine() -> Env {
    let e = Env::new();
    e.keygen();
    e.ok(&["keygen", "--signing", "--out", "site.key"]);
    let d0 = e.s("disk0.raw");
    e.ok(&["boot", "--build-sample", &d0, "--marker", "set-e2e"]);
    std::fs::write(e.p("disk1.raw"), data_disk(7)).unwrap();
    e
}

/// `capture` of both disks as set db01, unsigned.
fn set_capture<'e>(e: &'e Env, m: &str) -> Line<'e> {
    e.capture(m, "db01")
        .sources(&[&e.s("disk0.raw"), &e.s("disk1.raw")])
}

fn capture(e: &Env, m: &str, extra: &[&str]) -> serde_json::Value {
    set_capture(e, m).sign("site.key").args(extra).json()
}

fn ingest(e: &Env, m: &str, extra: &[&str]) -> serde_json::Value {
    e.ingest(m, "db01").trust("site.pub").args(extra).json()
}

/// A run cut off between a disk's MANIFEST and its COMMIT signature, before the set was
/// bound: the re-run binds and signs the set and adds the disk's missing COMMIT. It exited 0
/// with a signed receipt, and the target refused that disk as unsigned.
#[test]
fn a_disk_left_unsigned_by_a_cut_run_is_signed_by_the_re_run() {
    let e = Env::new();
    e.keygen();
    e.ok(&["keygen", "--signing", "--out", "site.key"]);
    std::fs::write(e.p("a.raw"), data_disk(3)).unwrap();
    std::fs::write(e.p("b.raw"), data_disk(4)).unwrap();
    std::fs::create_dir(e.p("mnt")).unwrap();
    let line = e
        .capture("dir:mnt", "st")
        .sources(&[&e.s("a.raw"), &e.s("b.raw")])
        .sign("site.key");
    line.ok();
    // What the cut leaves: no set generation yet, disk 1 finished without its COMMIT.
    std::fs::remove_dir_all(e.p("mnt/MGEAR/st")).unwrap();
    std::fs::remove_file(e.p("mnt/MGEAR/st.d1/G0001/COMMIT")).unwrap();
    let o = line.ok();
    assert!(
        output_text(&o).contains("set st disk 1 (st.d1) generation 1 was finished by the run that stopped, without its COMMIT signature: added"),
        "{}",
        output_text(&o)
    );
    e.ok(&["verify", "--medium", "dir:mnt", "--trust", "site.pub"]);
    e.ingest("dir:mnt", "st")
        .trust("site.pub")
        .target("file:o-{disk}.raw")
        .ok();
    same_file(&e.p("o-1.raw"), &e.p("b.raw"));
}

#[test]
fn a_two_disk_machine_is_one_set_from_capture_to_ingest() {
    let e = machine();
    let m = e.fat("m.img", "256MiB");

    let c = capture(&e, &m, &["--report", "cap.json"]);
    assert_eq!(c["generation"], 1, "{c}");
    // The ticket report of a set names both disks and their digests.
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(e.p("cap.json")).expect("capture --report of a set"))
            .unwrap();
    assert_eq!(rep["report"], "mgear-capture-report/1", "{rep}");
    assert_eq!(rep["digests"]["set_root"], c["set_root"], "{rep}");
    assert_eq!(
        rep["digests"]["disks"][1]["manifest_root"], c["disks"][1]["manifest_root"],
        "{rep}"
    );
    assert_eq!(rep["signatures"][0]["role"], "site", "{rep}");
    let text = std::fs::read_to_string(e.p("cap.txt")).unwrap();
    assert!(
        text.contains("(a machine of 2 disks)") && text.contains("disk 1"),
        "{text}"
    );
    let disks = c["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2, "{c}");
    assert_eq!(disks[0]["stream"], "db01.d0");
    assert_eq!(disks[1]["stream"], "db01.d1");
    // The sample disk boots (MBR, GRUB) and holds Linux; the data disk does not boot.
    assert_eq!(disks[0]["boot"], true, "{c}");
    assert_eq!(disks[0]["table"], "mbr", "{c}");
    assert!(!disks[0]["os"].as_str().unwrap().is_empty(), "{c}");
    assert_eq!(disks[1]["boot"], false, "{c}");
    assert_eq!(disks[1]["table"], "none", "{c}");
    assert_eq!(disks[1]["size"], 6 << 20);
    assert_eq!(disks[0]["sector_size"], 512);
    assert!(
        c["receipt"]["commit_digest"].is_string(),
        "the set is signed: {c}"
    );

    // Keyless verify covers the set and both streams.
    let v = e.json(&["verify", "--medium", &m]);
    assert_eq!(v["ok"], true, "{v}");
    // Keyed: every disk decrypts, the set's MAC and binding hold, the set
    // and both disks are vouched for by the pinned site key.
    let v = e.json(&[
        "verify",
        "--medium",
        &m,
        "--identity",
        "target.key",
        "--trust",
        "site.pub",
    ]);
    assert_eq!(v["ok"], true, "{v}");
    assert!(v.to_string().contains("db01.d1"), "{v}");

    // inspect shows the set, its disks in order, and one machine.
    let i = e.json(&["inspect", "--medium", &m]);
    let s = &i["sets"][0];
    assert_eq!(s["name"], "db01", "{i}");
    assert_eq!(s["generations"][0]["complete"], true, "{i}");
    assert_eq!(s["generations"][0]["disks"][1]["stream"], "db01.d1", "{i}");
    let ship = &i["shipment"]["machines"];
    assert_eq!(ship.as_array().unwrap().len(), 1, "{i}");
    assert_eq!(ship[0]["kind"], "set");
    assert_eq!(ship[0]["disks"], 2);
    let text = String::from_utf8_lossy(&e.ok(&["inspect", "--medium", &m]).stdout).into_owned();
    assert!(text.contains("set db01"), "{text}");
    assert!(text.contains("disk 1 db01.d1"), "{text}");

    // Ingest with a pattern: both volumes are the sources, bit for bit.
    let r = ingest(
        &e,
        &m,
        &[
            "--target",
            "file:out-{disk}.raw",
            "--volume-sha256",
            "--report",
            "in.json",
        ],
    );
    assert_eq!(r["disks"].as_array().unwrap().len(), 2, "{r}");
    // A first ingest resumed nothing (its finishing pass counted every chunk as resumed).
    for d in r["disks"].as_array().unwrap() {
        assert_eq!(d["resumed_chunks"], 0, "{r}");
        assert!(d["bytes_written"].as_u64().unwrap() > 0, "{r}");
    }
    same_file(&e.p("out-0.raw"), &e.p("disk0.raw"));
    same_file(&e.p("out-1.raw"), &e.p("disk1.raw"));
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(e.p("in.json")).expect("ingest --report of a set"))
            .unwrap();
    assert_eq!(rep["report"], "mgear-ingest-report/1", "{rep}");
    assert_eq!(rep["target"][1], "file:out-1.raw", "{rep}");
    assert_eq!(
        rep["digests"]["disks"][1]["manifest_root"], c["disks"][1]["manifest_root"],
        "{rep}"
    );
    assert_eq!(
        rep["digests"]["disks"][0]["volume_sha256"], r["disks"][0]["volume_sha256"],
        "{rep}"
    );
    assert!(
        rep["digests"]["disks"][0]["volume_sha256"].is_string(),
        "{rep}"
    );
    // A report that cannot be written is refused before anything is read.
    let o = e
        .ingest(&m, "db01")
        .trust("site.pub")
        .target("file:never-{disk}.raw")
        .args(&["--report", "no/such/dir/r.json"])
        .run();
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    assert!(!e.p("never-0.raw").exists());
    // Nor one where a disk's volume goes (the pattern's, with or without --disk): the report
    // replaced the volume just verified.
    let before = std::fs::read(e.p("out-1.raw")).unwrap();
    for (report, disk) in [("out-1.raw", None), ("out-1.raw.partial", Some("1"))] {
        let mut line = e
            .ingest(&m, "db01")
            .trust("site.pub")
            .target("file:out-{disk}.raw")
            .args(&["--report", report, "--force"]);
        if let Some(k) = disk {
            line = line.args(&["--disk", k]);
        }
        let o = line.run();
        assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
        assert!(
            output_text(&o).contains("the report would replace the disk just verified"),
            "{}",
            output_text(&o)
        );
    }
    assert_eq!(std::fs::read(e.p("out-1.raw")).unwrap(), before);
    assert!(!e.p("out-1.raw.partial").exists());

    // One disk of the set alone.
    let r = ingest(&e, &m, &["--disk", "1", "--target", "file:only1.raw"]);
    assert_eq!(r["disks"][0]["disk"], 1, "{r}");
    same_file(&e.p("only1.raw"), &e.p("disk1.raw"));
    assert!(!e.p("only0.raw").exists());

    // A plain --target for a set says what to do instead.
    let o = e
        .ingest(&m, "db01")
        .trust("site.pub")
        .target("file:x.raw")
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(output_text(&o).contains("{disk}"), "{}", output_text(&o));

    // A delta of the set: disk 1 changed, disk 0 did not.
    let mut d1 = data_disk(7);
    d1[5 << 20..(5 << 20) + 4096].fill(0xab);
    std::fs::write(e.p("disk1.raw"), &d1).unwrap();
    let c2 = capture(&e, &m, &["--delta"]);
    assert_eq!(c2["generation"], 2, "{c2}");
    assert_eq!(c2["parent"], 1, "{c2}");
    let stored: Vec<u64> = c2["captured"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["stored_chunks"].as_u64().unwrap())
        .collect();
    assert_eq!(
        stored,
        [0, 1],
        "only the changed chunk of disk 1 is stored: {c2}"
    );
    assert_eq!(e.json(&["verify", "--medium", &m])["ok"], true);
    ingest(
        &e,
        &m,
        &["--target", "file:g2-{disk}.raw", "--expect-generation", "2"],
    );
    same_file(&e.p("g2-0.raw"), &e.p("disk0.raw"));
    same_file(&e.p("g2-1.raw"), &e.p("disk1.raw"));
    // An older generation asked for beside the receipt's: the expected one is here (it was
    // "a newer generation was removed or this is an older medium").
    let o = e
        .ingest(&m, "db01")
        .trust("site.pub")
        .args(&["--generation", "1", "--expect-generation", "2"])
        .target("file:old-{disk}.raw")
        .run();
    // Two options that contradict each other: a usage error (it was exit 1, "found").
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("--generation 1 is older than the generation 2")
            && !output_text(&o).contains("was removed"),
        "{}",
        output_text(&o)
    );
    // A full copy again is refused: the set is captured.
    let o = set_capture(&e, &m).run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(output_text(&o).contains("--delta"), "{}", output_text(&o));
    // Nor is one disk of the set captured alone.
    let d1p = e.s("disk1.raw");
    let o = e.run(&[
        "capture", "--medium", &m, "--name", "db01.d1", "--source", &d1p, "--delta",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("machine set db01"),
        "{}",
        output_text(&o)
    );
    // Nor one disk under the set's own name (it was told "a new capture needs --recipient",
    // or with one, captured as another machine beside the set), nor a disk more or less.
    let alone = e.run(&[
        "capture", "--medium", &m, "--name", "DB01", "--source", &d1p, "--delta",
    ]);
    for o in [alone, e.capture(&m, "DB01").source("disk1.raw").run()] {
        assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
        assert!(
            output_text(&o).contains("this medium holds machine set db01")
                && output_text(&o).contains("needs its own name"),
            "{}",
            output_text(&o)
        );
    }
    std::fs::write(e.p("extra.raw"), data_disk(8)).unwrap();
    let o = e
        .capture(&m, "db01")
        .sources(&["disk0.raw", "disk1.raw", "extra.raw"])
        .arg("--delta")
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("set db01 has 2 disks")
            && output_text(&o).contains("gained or lost a disk is captured anew"),
        "{}",
        output_text(&o)
    );

    // A shipment of two media: the set here, a single-disk capture there.
    let m2 = e.fat("m2.img", "64MiB");
    e.capture(&m2, "web01").source(&d1p).json();
    let i = e.json(&["inspect", "--medium", &m, "--medium", &m2]);
    assert_eq!(i["shipment"]["media"], 2, "{i}");
    let machines = i["shipment"]["machines"].as_array().unwrap();
    let names: Vec<&str> = machines
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db01", "web01"], "{i}");
    assert_eq!(machines[0]["generations"].as_array().unwrap().len(), 2);
    assert_eq!(machines[1]["kind"], "disk");
    assert_eq!(i["shipment"]["complete"], true, "{i}");
    // --name over several media: found on the one that holds it.
    let i = e.json(&[
        "inspect", "--medium", &m, "--medium", &m2, "--name", "WEB01",
    ]);
    let per: Vec<usize> = i["media"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["captures"].as_array().unwrap().len())
        .collect();
    assert_eq!(per, [0, 1], "{i}");
    let o = e.run(&[
        "inspect", "--medium", &m, "--medium", &m2, "--name", "nothere",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("on any of the 2 media"),
        "{}",
        output_text(&o)
    );
    // One medium twice is not a shipment of two.
    let o = e.run(&["inspect", "--medium", &m, "--medium", &m]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("given twice"),
        "{}",
        output_text(&o)
    );
}

#[test]
fn a_set_with_a_dropped_disk_is_refused() {
    let e = machine();
    // A dir: medium, so a disk can be dropped with a plain rm.
    let dir = e.p("medium-dir");
    std::fs::create_dir(&dir).unwrap();
    let spec = format!("dir:{}", dir.display());
    let c = set_capture(&e, &spec).sign("site.key").run();
    assert!(c.status.success(), "{}", output_text(&c));
    std::fs::remove_dir_all(dir.join("MGEAR/db01.d1")).unwrap();
    let v = e.run(&["verify", "--medium", &spec, "--json"]);
    assert_eq!(v.status.code(), Some(1), "{}", output_text(&v));
    assert!(output_text(&v).contains("dropped"), "{}", output_text(&v));
    let v = e.run(&[
        "verify",
        "--medium",
        &spec,
        "--identity",
        "target.key",
        "--name",
        "db01",
    ]);
    assert_eq!(v.status.code(), Some(1), "{}", output_text(&v));
    assert!(output_text(&v).contains("dropped"), "{}", output_text(&v));
    let o = e
        .ingest(&spec, "db01")
        .trust("site.pub")
        .target("file:out-{disk}.raw")
        .run();
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(!e.p("out-0.raw").exists(), "nothing is written");
}

#[test]
fn a_two_disk_set_boots_with_both_disks_attached() {
    let e = machine();
    let m = e.fat("m.img", "256MiB");
    capture(&e, &m, &[]);
    let r = ingest(
        &e,
        &m,
        &[
            "--target",
            "file:vm-{disk}.raw",
            "--boot",
            "--wait-for",
            "MGEAR-BOOT-OK set-e2e",
            "--timeout",
            "300",
        ],
    );
    assert_eq!(r["booted"], true, "{r}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(e.p(r["boot_report"].as_str().unwrap())).unwrap())
            .unwrap();
    let cmd: Vec<&str> = report["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let drives: Vec<&&str> = cmd.iter().filter(|a| a.contains("if=virtio")).collect();
    assert_eq!(drives.len(), 2, "both disks attached: {cmd:?}");
    assert!(
        drives[0].contains("vm-0.raw") && drives[1].contains("vm-1.raw"),
        "{cmd:?}"
    );
}

#[test]
fn an_interrupted_set_capture_resumes_with_the_same_command() {
    let e = machine();
    let m = e.fat("m.img", "256MiB");
    // Disk 1 is an NBD export that is not served the first time: disk 0 is
    // captured, the set is not.
    let sock = e.p("d1.sock");
    let url = format!("nbd+unix:///?socket={}", sock.display());
    let args = e
        .capture(&m, "db01")
        .sources(&[&e.s("disk0.raw"), &url])
        .sign("site.key")
        .arg("--json");
    let o = args.run();
    assert_ne!(o.status.code(), Some(0), "{}", output_text(&o));
    // Not a set yet: keyless verify says so, inspect lists it as unfinished.
    let v = e.run(&["verify", "--medium", &m]);
    assert_eq!(v.status.code(), Some(1), "{}", output_text(&v));
    assert!(
        output_text(&v).contains("not bound by a set manifest"),
        "{}",
        output_text(&v)
    );
    let i = e.json(&["inspect", "--medium", &m]);
    assert_eq!(i["shipment"]["machines"][0]["name"], "db01", "{i}");
    assert_eq!(
        i["shipment"]["machines"][0]["generations"][0]["state"], "unfinished",
        "{i}"
    );
    assert_eq!(i["shipment"]["complete"], false, "{i}");

    // The same command again: disk 0 is not read again, disk 1 is captured.
    let _served = mgear_tests::qemu_nbd(&["-t", "-r", "-f", "raw"], &sock, &e.p("disk1.raw"));
    // But not without the site key it was started with, nor with another one: the set's
    // COMMIT would go unsigned (or signed by a key the target does not pin), found only
    // at the target. Refused before disk 1 is read.
    e.ok(&["keygen", "--signing", "--out", "other.key"]);
    for sign in [None, Some("other.key")] {
        let mut again = e.capture(&m, "db01").sources(&[&e.s("disk0.raw"), &url]);
        if let Some(k) = sign {
            again = again.sign(k);
        }
        let o = again.run();
        let text = output_text(&o);
        assert_eq!(o.status.code(), Some(2), "{sign:?}: {text}");
        assert!(
            text.contains("was started signed with site key") && text.contains("same --sign KEY"),
            "{sign:?}: {text}"
        );
    }
    let o = args.ok();
    let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(c["generation"], 1, "{c}");
    assert!(
        c["captured"][0].is_null(),
        "disk 0 was already captured: {c}"
    );
    assert!(c["captured"][1].is_object(), "{c}");
    assert_eq!(e.json(&["verify", "--medium", &m])["ok"], true);
    ingest(&e, &m, &["--target", "file:out-{disk}.raw"]);
    same_file(&e.p("out-0.raw"), &e.p("disk0.raw"));
    same_file(&e.p("out-1.raw"), &e.p("disk1.raw"));
}

#[test]
fn a_set_captured_through_the_appliance_is_witnessed_disk_by_disk_and_as_a_set() {
    use crate::appliance_util::Lab;
    let mut lab = Lab::new(64);
    lab.start();
    lab.provision_and_unlock();
    lab.keygen();
    lab.make_disk(4, 11);
    std::fs::write(lab.p("disk1.raw"), data_disk(3)).unwrap();
    let tty = lab.tty();
    let out = lab.ok(&[
        "capture",
        "--source",
        "disk.raw",
        "--source",
        "disk1.raw",
        "--appliance",
        &tty,
        "--name",
        "db01",
        "--recipient",
        "target.pub",
        "--json",
    ]);
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fp = lab.fingerprint();
    // The set's COMMIT carries the appliance's witness signature.
    let signers = c["receipt"]["signers"].to_string();
    assert!(signers.contains("appliance"), "{c}");
    for d in 0..2 {
        assert!(
            c["captured"][d]["receipt"]["signers"]
                .to_string()
                .contains("appliance"),
            "disk {d}: {c}"
        );
    }
    // Ingest through the appliance, trusting only its pinned fingerprint.
    let o = lab.run(&[
        "ingest",
        "--trust-appliance",
        &fp,
        "--appliance",
        &tty,
        "--name",
        "db01",
        "--identity",
        "target.key",
        "--target",
        "file:vol-{disk}.raw",
        "--allow-unsealed",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    same_file(&lab.p("vol-0.raw"), &lab.p("disk.raw"));
    same_file(&lab.p("vol-1.raw"), &lab.p("disk1.raw"));
    lab.stop();
}

#[test]
fn a_set_is_planned_aborted_and_removed_as_one() {
    let e = Env::new();
    e.keygen();
    std::fs::write(e.p("a.raw"), data_disk(1)).unwrap();
    std::fs::write(e.p("b.raw"), data_disk(2)).unwrap();
    let m = e.fat("m.img", "64MiB");
    let set = |extra: &[&str]| {
        e.capture(&m, "db01")
            .sources(&["a.raw", "b.raw"])
            .arg("--json")
            .args(extra)
            .run()
    };
    // The plan covers every disk and their sum.
    let o = set(&["--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(p["disks"].as_array().unwrap().len(), 2, "{p}");
    assert_eq!(p["disks"][1]["name"], "db01.d1", "{p}");
    let sum = p["disks"][0]["needed"].as_u64().unwrap() + p["disks"][1]["needed"].as_u64().unwrap();
    assert_eq!(p["needed"].as_u64().unwrap(), sum, "{p}");
    assert_eq!(p["fits"], true, "{p}");
    // Interrupted after disk 0 (disk 1's NBD export gone): --abort removes the whole
    // unfinished set generation.
    let o = e
        .capture(&m, "db01")
        .sources(&["a.raw", "nbd+unix:///?socket=gone.sock"])
        .run();
    assert_ne!(o.status.code(), Some(0));
    let o = e.run(&[
        "capture", "--abort", "--medium", &m, "--name", "db01", "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let i = e.json(&["inspect", "--medium", &m]);
    assert!(i["captures"].as_array().unwrap().is_empty(), "{i}");
    // A finished set is removed with every disk by one `medium rm --force`.
    let o = set(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    // The text MiB both disks hold is stored once: disk 1 points at disk 0's record.
    let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(c["captured"][1]["dedup_chunks"], 1, "{c}");
    e.ingest(&m, "db01")
        .untrusted()
        .args(&["--disk", "1"])
        .target("file:only-1.raw")
        .ok();
    same_file(&e.p("only-1.raw"), &e.p("b.raw"));
    // Each disk's time is its write and its finish (it was the finish alone: 0.07 s, and a
    // speed of 919 MB/s): 2 MiB of data at 2 MiB/s takes about a second.
    let r = e
        .ingest(&m, "db01")
        .untrusted()
        .target("file:paced-{disk}.raw")
        .args(&["--rate-limit", "2MiB/s"])
        .json();
    for d in r["disks"].as_array().unwrap() {
        let secs = d["seconds"].as_f64().unwrap();
        assert!(secs >= 0.5, "{r}");
        let speed = d["disk_size"].as_f64().unwrap() / 1e6 / secs;
        assert!((d["mb_per_s"].as_f64().unwrap() - speed).abs() < 0.1, "{r}");
    }
    let o = e.run(&["medium", "rm", "--medium", &m, "--name", "db01"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "finished data needs --force: {}",
        output_text(&o)
    );
    e.ok(&["medium", "rm", "--medium", &m, "--name", "db01", "--force"]);
    let i = e.json(&["inspect", "--medium", &m]);
    assert!(
        i["captures"].as_array().unwrap().is_empty() && i["sets"].as_array().unwrap().is_empty(),
        "{i}"
    );
    // A set too big for the medium is refused whole, before anything is written. Its MiBs
    // are noise or text at random, so where the samples fall moves the estimate: the dry run
    // and the refusal after it say the same size (49.61 MiB, then 48.75).
    let mut c = super::spanning::noise(100 << 20, 3);
    for (k, mib) in c.chunks_mut(1 << 20).enumerate() {
        if (k * 7919) % 13 < 3 {
            mib.fill(b'm');
        }
    }
    std::fs::write(e.p("c.raw"), &c).unwrap();
    let needs = |o: &std::process::Output, before: &str| {
        let t = output_text(o);
        let at = t
            .find(before)
            .unwrap_or_else(|| panic!("{before:?} in {t}"))
            + before.len();
        t[at..]
            .split(" on")
            .next()
            .unwrap()
            .split(" and")
            .next()
            .unwrap()
            .to_string()
    };
    let dry: Vec<String> = (0..3)
        .map(|_| {
            let o = e
                .capture(&m, "big")
                .sources(&["a.raw", "c.raw"])
                .arg("--dry-run")
                .run();
            assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
            needs(&o, "need about ")
        })
        .collect();
    let o = e.capture(&m, "big").sources(&["a.raw", "c.raw"]).run();
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    let refused = needs(&o, "it needs about ");
    assert!(dry.iter().all(|d| *d == refused), "{dry:?} vs {refused}");
    assert!(
        output_text(&o).contains("give one more medium"),
        "{}",
        output_text(&o)
    );
    let i = e.json(&["inspect", "--medium", &m]);
    assert!(
        i["captures"].as_array().unwrap().is_empty(),
        "nothing written: {i}"
    );
}

#[test]
fn a_second_machine_borrows_the_first_ones_records_only_when_asked() {
    let e = Env::new();
    e.keygen();
    // web01: one disk. web02: a set whose disk 0 is web01's disk with 100
    // bytes of its text MiB changed (its random MiB, the costly one, is
    // web01's), and a small disk of its own.
    std::fs::write(e.p("web01.raw"), data_disk(7)).unwrap();
    let mut d0 = data_disk(7);
    d0[100..200].fill(0x5a);
    std::fs::write(e.p("web02-0.raw"), &d0).unwrap();
    std::fs::write(e.p("web02-1.raw"), &data_disk(9)[2 << 20..4 << 20]).unwrap();
    let m = e.fat("m.img", "64MiB");
    let c1 = e.capture(&m, "web01").source("web01.raw").json();
    let web01_stored = c1["stored_bytes"].as_u64().unwrap();
    assert!(c1["borrows_from"].as_array().unwrap().is_empty(), "{c1}");
    let c2 = e
        .capture(&m, "web02")
        .sources(&["web02-0.raw", "web02-1.raw"])
        .args(&["--dedup-across-machines", "WEB01"])
        .json();
    let disk0 = &c2["captured"][0];
    // Only the changed chunk of disk 0 is stored: the rest is web01's.
    assert_eq!(disk0["stored_chunks"], 1, "{c2}");
    assert_eq!(disk0["borrows_from"][0], "web01 G0001", "{c2}");
    let stored0 = disk0["stored_bytes"].as_u64().unwrap();
    assert!(
        stored0 * 4 < web01_stored,
        "web02's disk 0 stores {stored0} bytes, web01 stored {web01_stored}: {c2}"
    );
    // inspect (keyless) shows what it borrows; verify checks the pin.
    let i = e.json(&["inspect", "--medium", &m, "--name", "web02"]);
    let d0 = i["captures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "web02.d0")
        .unwrap_or_else(|| panic!("{i}"));
    assert_eq!(
        d0["generations"][0]["borrows_from"][0], "web01 G0001",
        "{i}"
    );
    assert_eq!(e.json(&["verify", "--medium", &m])["ok"], true);
    let i = e.json(&["inspect", "--medium", &m]);
    assert_eq!(i["shipment"]["complete"], true, "{i}");

    // Both machines ingest bit for bit (web02 reads web01's records).
    let ingest = |name: &str, target: &str| e.ingest(&m, name).untrusted().target(target).json();
    ingest("web02", "file:out2-{disk}.raw");
    same_file(&e.p("out2-0.raw"), &e.p("web02-0.raw"));
    same_file(&e.p("out2-1.raw"), &e.p("web02-1.raw"));
    ingest("web01", "file:out1.raw");
    same_file(&e.p("out1.raw"), &e.p("web01.raw"));

    // The machines share one data key: forgetting it by one name forgets it under the other
    // too (it stayed cached as web02's, and a delta "that can no longer run" ran).
    let gone = e.json(&["keys", "forget", "--name", "web01"]);
    let names: Vec<&str> = gone["forgotten"][0]["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"web01") && names.iter().any(|n| n.starts_with("web02")),
        "{gone}"
    );
    let left = e.json(&["keys", "list"]);
    assert!(!left.to_string().contains("web02"), "{left}");

    // web01 cannot go while web02 borrows from it, even with --force.
    let o = e.run(&["medium", "rm", "--medium", &m, "--name", "web01", "--force"]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    let text = output_text(&o);
    assert!(
        text.contains("web02 generation 1") && text.contains("Remove web02 first"),
        "{text}"
    );
    assert_eq!(e.json(&["verify", "--medium", &m])["ok"], true);

    // Without the opt-in, a third machine shares nothing (its own key).
    std::fs::write(e.p("web03.raw"), data_disk(7)).unwrap();
    let c3 = e.capture(&m, "web03").source("web03.raw").json();
    assert_eq!(c3["dedup_chunks"], 0, "{c3}");
    assert_eq!(c3["stored_bytes"], web01_stored, "{c3}");
    // ... and cannot opt in later: its key is its own.
    let o = e
        .capture(&m, "web03")
        .source("web03.raw")
        .args(&["--delta", "--dedup-across-machines", "web01"])
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("its own data key"),
        "{}",
        output_text(&o)
    );

    // Once the borrower is gone, web01 can go.
    e.ok(&["medium", "rm", "--medium", &m, "--name", "web02", "--force"]);
    e.ok(&["medium", "rm", "--medium", &m, "--name", "web01", "--force"]);
    assert_eq!(e.json(&["verify", "--medium", &m])["ok"], true);

    // A copy from which web01 was removed by hand (here a dir: medium):
    // keyless verify names the missing peer, ingest of web02 refuses.
    std::fs::create_dir(e.p("mnt")).unwrap();
    for (name, src, extra) in [
        ("web01", "web01.raw", None),
        ("web02", "web02-0.raw", Some("web01")),
    ] {
        let line = e.capture("dir:mnt", name).source(src);
        match extra {
            Some(m) => line.args(&["--dedup-across-machines", m]).ok(),
            None => line.ok(),
        };
    }
    std::fs::remove_dir_all(e.p("mnt/MGEAR/web01")).unwrap();
    let o = e.run(&["verify", "--medium", "dir:mnt"]);
    assert_ne!(o.status.code(), Some(0), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("peer web01 generation 1 is not on the media"),
        "{}",
        output_text(&o)
    );
    let o = e
        .ingest("dir:mnt", "web02")
        .untrusted()
        .target("file:gone.raw")
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("borrows records from machine web01"),
        "{}",
        output_text(&o)
    );
    assert!(!e.p("gone.raw").exists(), "nothing written");
    // The shipment listing says the borrower is not usable from these media.
    let i = e.json(&["inspect", "--medium", "dir:mnt"]);
    let web02 = i["shipment"]["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "web02")
        .unwrap_or_else(|| panic!("{i}"));
    assert_eq!(web02["complete"], false, "{i}");
    assert_eq!(web02["generations"][0]["state"], "lender-missing", "{i}");
    assert!(
        web02["generations"][0]["problems"][0]
            .as_str()
            .unwrap()
            .contains("borrows records from web01 G0001"),
        "{i}"
    );
    assert_eq!(i["shipment"]["complete"], false, "{i}");
}

/// A set's data key is cached under the set and each disk (one capture id); a delta keeps
/// every entry (it once deleted the set's and disk 0's as "older releases' files"), and
/// `keys forget --name SET` forgets them all, so no delta of it can run here afterwards.
#[test]
fn a_sets_cached_key_survives_deltas_and_is_forgotten_whole() {
    let e = Env::new();
    e.keygen();
    std::fs::write(e.p("a.raw"), data_disk(3)).unwrap();
    std::fs::write(e.p("b.raw"), data_disk(4)).unwrap();
    std::fs::create_dir(e.p("mnt")).unwrap();
    let set = |extra: &[&str]| {
        e.capture("dir:mnt", "db01")
            .sources(&["a.raw", "b.raw"])
            .args(extra)
            .run()
    };
    assert!(set(&[]).status.success());
    let names = || -> Vec<String> {
        let k = e.json(&["keys", "list"]);
        let mut v: Vec<String> = k["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["name"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(), ["db01", "db01.d0", "db01.d1"]);
    // A delta with the disks given in the other order would store each disk's changes
    // under the other disk (it went through with a warning): refused, nothing written.
    let o = e
        .capture("dir:mnt", "db01")
        .sources(&["b.raw", "a.raw"])
        .arg("--delta")
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("--source number 1 (b.raw) is disk 1 of set db01"),
        "{}",
        output_text(&o)
    );
    let o = set(&["--delta"]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(names(), ["db01", "db01.d0", "db01.d1"], "after a delta");
    let i = e.json(&["inspect", "--medium", "dir:mnt"]);
    assert_eq!(
        i["shipment"]["machines"][0]["generations"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "the refused delta left no generation: {i}"
    );
    // One disk's entry alone would leave the set's key: refused, nothing forgotten.
    let o = e.run(&["keys", "forget", "--name", "DB01.D1"]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("--name db01"),
        "{}",
        output_text(&o)
    );
    assert_eq!(names(), ["db01", "db01.d0", "db01.d1"]);
    let o = e.ok(&["keys", "forget", "--name", "DB01"]);
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("db01, db01.d0, db01.d1"), "{said}");
    assert!(names().is_empty());
    let o = set(&["--delta"]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("not in the key cache"),
        "{}",
        output_text(&o)
    );
}

/// The newest set generation's SET and COMMIT removed (its directory deleted): its disks'
/// generations are still there. Ingest once installed the older set without a word; now it
/// warns, `--expect-generation` refuses it, and keyed verify reports it as keyless verify does.
#[test]
fn a_set_generation_that_lost_its_set_manifest_is_not_skipped_silently() {
    let e = machine();
    std::fs::create_dir(e.p("mnt")).unwrap();
    capture(&e, "dir:mnt", &[]);
    std::fs::write(e.p("disk1.raw"), data_disk(9)).unwrap();
    capture(&e, "dir:mnt", &["--delta"]);
    // Only the SET gone, its COMMIT there: the set generation was finished, and one disk
    // by its stream's name is refused too (it went back to generation 1 with a warning).
    std::fs::remove_file(e.p("mnt/MGEAR/db01/G0002/SET")).unwrap();
    for (name, target) in [("db01", "file:x-{disk}.raw"), ("db01.d1", "file:x.raw")] {
        let o = e
            .ingest("dir:mnt", name)
            .trust("site.pub")
            .target(target)
            .run();
        assert_eq!(o.status.code(), Some(1), "{name}: {}", output_text(&o));
        assert!(
            output_text(&o).contains("was finished (its COMMIT is written)"),
            "{name}: {}",
            output_text(&o)
        );
    }
    let o = e.run(&["verify", "--medium", "dir:mnt", "--name", "db01.d1"]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    // Asked for by number, the older generation is ingested on purpose, as the refusal says.
    let o = e
        .ingest("dir:mnt", "db01.d1")
        .trust("site.pub")
        .target("file:old.raw")
        .args(&["--generation", "1"])
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    assert_eq!(std::fs::read(e.p("old.raw")).unwrap(), data_disk(7));
    std::fs::remove_dir_all(e.p("mnt/MGEAR/db01/G0002")).unwrap();

    let o = e
        .ingest("dir:mnt", "db01")
        .trust("site.pub")
        .target("file:out-{disk}.raw")
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("set db01 generation 2 is not finished"),
        "{}",
        output_text(&o)
    );
    // Each warning once (the set is checked as a set and again disk by disk: they came twice).
    let said = output_text(&o);
    let warnings: Vec<&str> = said.lines().filter(|l| l.contains("WARNING")).collect();
    let mut once = warnings.clone();
    once.dedup();
    once.sort_unstable();
    once.dedup();
    assert_eq!(warnings.len(), once.len(), "{said}");
    assert_eq!(
        std::fs::read(e.p("out-1.raw")).unwrap(),
        data_disk(7),
        "generation 1 was installed"
    );
    let o = e
        .ingest("dir:mnt", "db01")
        .trust("site.pub")
        .target("file:again-{disk}.raw")
        .args(&["--expect-generation", "2"])
        .run();
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(!e.p("again-0.raw").exists());
    // One disk by its stream's name: the bound generation, not the newer one.
    let o = e
        .ingest("dir:mnt", "db01.d1")
        .trust("site.pub")
        .target("file:d1.raw")
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("generation 2 is not bound by a set manifest"),
        "{}",
        output_text(&o)
    );
    assert_eq!(std::fs::read(e.p("d1.raw")).unwrap(), data_disk(7));
    let o = e
        .ingest("dir:mnt", "db01.d1")
        .trust("site.pub")
        .target("file:d1-2.raw")
        .args(&["--generation", "2"])
        .run();
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));

    // fsck lists it (it said "no leftovers"), and names the set to abort.
    let o = e.run(&["medium", "fsck", "--medium", "dir:mnt", "--json"]);
    let t = output_text(&o);
    assert!(t.contains("unbound-set-generation"), "{t}");
    assert!(t.contains("--name db01`"), "{t}");
    // Aborting one disk would leave the other's unbound: refused.
    let o = e
        .capture("dir:mnt", "db01.d1")
        .source("disk1.raw")
        .arg("--abort")
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("abort the set (--name db01)"),
        "{}",
        output_text(&o)
    );

    for keyed in [false, true] {
        let mut argv = vec!["verify", "--medium", "dir:mnt", "--trust", "site.pub"];
        if keyed {
            argv.extend(["--identity", "target.key"]);
        }
        let o = e.run(&argv);
        assert_eq!(
            o.status.code(),
            Some(1),
            "keyed {keyed}: {}",
            output_text(&o)
        );
        assert!(
            output_text(&o).contains("is not bound by a set manifest"),
            "keyed {keyed}: {}",
            output_text(&o)
        );
    }
}

/// Operator mistakes on a set re-run: a capture stopped at disk 1 (its NBD export gone)
/// re-run with the disks in another order is refused (the finished disk 0 would have been
/// kept under the name of the other disk, "verified"); a finished, signed set re-run with
/// --sign on changed disks without --delta is refused as a second capture, not "already
/// captured" with nothing stored.
#[test]
fn a_set_re_run_with_other_disks_is_refused() {
    let e = machine();
    let m = e.fat("m.img", "256MiB");
    let o = e
        .capture(&m, "db01")
        .sources(&[&e.s("disk0.raw"), "nbd+unix:///?socket=gone.sock"])
        .sign("site.key")
        .run();
    assert_ne!(o.status.code(), Some(0), "{}", output_text(&o));
    let o = e
        .capture(&m, "db01")
        .sources(&[&e.s("disk1.raw"), &e.s("disk0.raw")])
        .sign("site.key")
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("disk 0 of set db01 generation 1 is already captured from"),
        "{}",
        output_text(&o)
    );
    // The same disks from another spelling of the same path resume.
    let c = e
        .capture(&m, "db01")
        .sources(&["disk0.raw", "./disk1.raw"])
        .sign("site.key")
        .json();
    assert_eq!(c["generation"], 1, "{c}");

    std::fs::write(e.p("disk1.raw"), data_disk(8)).unwrap();
    let o = set_capture(&e, &m).sign("site.key").run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("is already captured as generation 1"),
        "{}",
        output_text(&o)
    );
    let c = capture(&e, &m, &["--delta"]);
    assert_eq!(c["generation"], 2, "{c}");
}

/// A set ingest re-run after it stopped with disk 0 finished (the command it prints to
/// resume) once failed on disk 0's file, "exists: pass --force": a disk an earlier run
/// finished and verified, unchanged since, is kept; any other existing file is refused
/// before the first disk is written.
#[test]
fn a_set_ingest_re_run_keeps_the_disks_it_finished() {
    let e = machine();
    let m = e.fat("m.img", "256MiB");
    capture(&e, &m, &[]);
    // Disk 0 alone: what a run stopped during disk 1 leaves.
    ingest(&e, &m, &["--disk", "0", "--target", "file:out-0.raw"]);
    let o = e
        .ingest(&m, "db01")
        .trust("site.pub")
        .target("file:out-{disk}.raw")
        .args(&["--volume-sha256", "--json"])
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    // The kept disk's digest is of the file as it is (it was null).
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let sha = std::process::Command::new("sha256sum")
        .arg(e.p("out-0.raw"))
        .output()
        .unwrap();
    let sha = String::from_utf8_lossy(&sha.stdout);
    assert_eq!(
        r["disks"][0]["volume_sha256"].as_str(),
        sha.split_whitespace().next(),
        "{r}"
    );
    assert!(
        output_text(&o).contains("out-0.raw already holds it"),
        "{}",
        output_text(&o)
    );
    same_file(&e.p("out-0.raw"), &e.p("disk0.raw"));
    same_file(&e.p("out-1.raw"), &e.p("disk1.raw"));
    // Only one disk was kept: the set as a whole was not (no top-level `kept`).
    assert!(r.get("kept").is_none(), "{r}");
    assert_eq!(r["disks"][0]["kept"], true, "{r}");
    // The finished command run again (a script re-run): every disk kept, exit 0, and each
    // disk's line says so (it said "0 B written, 6 chunks, 0 zero").
    let o = e
        .ingest(&m, "db01")
        .trust("site.pub")
        .target("file:out-{disk}.raw")
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("kept set db01 generation 1: 2 disks")
            && !output_text(&o).contains("ingested set"),
        "{}",
        output_text(&o)
    );
    for k in 0..2 {
        assert!(
            output_text(&o).contains(&format!("out-{k}.raw already holds it"))
                && output_text(&o).contains(&format!("into file:out-{k}.raw (kept:")),
            "{}",
            output_text(&o)
        );
    }
    // --json: the set as a whole was kept, as a single disk's run says it.
    let o = e
        .ingest(&m, "db01")
        .trust("site.pub")
        .target("file:out-{disk}.raw")
        .arg("--json")
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["kept"], true, "{r}");
    same_file(&e.p("out-1.raw"), &e.p("disk1.raw"));
    // The targets in another order: what each holds is named.
    let o = e
        .ingest(&m, "db01")
        .trust("site.pub")
        .target("file:out-1.raw")
        .target("file:out-0.raw")
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("(the target of disk 0) exists")
            && output_text(&o).contains("it holds disk 1 of this set generation"),
        "{}",
        output_text(&o)
    );
    // Changed since (ctime moves): no longer kept, refused as somebody's file.
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(e.p("out-1.raw"))
        .unwrap();
    f.set_len(f.metadata().unwrap().len()).unwrap();
    drop(f);
    let o = e
        .ingest(&m, "db01")
        .trust("site.pub")
        .target("file:out-{disk}.raw")
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("no finished ingest of set")
            && output_text(&o).contains("disk 1 into it is recorded here")
            && output_text(&o).contains("it holds this disk, changed since its ingest finished"),
        "{}",
        output_text(&o)
    );
    // A set is served disk by disk (it said the set had no key slot).
    std::fs::copy(e.p("out-0.raw"), e.p("vol.raw")).unwrap();
    let o = e.serve(&m, "db01").trust("site.pub").arg("--once").run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("serve --name db01.dN"),
        "{}",
        output_text(&o)
    );

    // A file that is not this set's disk: refused up front, nothing written.
    std::fs::write(e.p("new-1.raw"), b"somebody's file").unwrap();
    let o = e
        .ingest(&m, "db01")
        .trust("site.pub")
        .target("file:new-{disk}.raw")
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("(the target of disk 1) exists")
            && output_text(&o).contains("no ingest into it is recorded on this host"),
        "{}",
        output_text(&o)
    );
    assert!(!e.p("new-0.raw").exists());
    // A disk finished by an earlier run and changed since, its modification time put back
    // (as `touch -r` does): not kept, refused before anything is written.
    for k in 0..2 {
        std::fs::remove_file(e.p(&format!("out-{k}.raw"))).unwrap();
    }
    ingest(&e, &m, &["--disk", "0", "--target", "file:out-0.raw"]);
    let was = std::fs::metadata(e.p("out-0.raw"))
        .unwrap()
        .modified()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(e.p("out-0.raw"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"x").unwrap();
    f.set_modified(was).unwrap();
    drop(f);
    let o = e
        .ingest(&m, "db01")
        .trust("site.pub")
        .target("file:out-{disk}.raw")
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(!e.p("out-1.raw").exists());
}

/// A source that is not there, a directory, or the same disk twice (however spelled): refused
/// before the first disk is read (they were found only after the disks before them were
/// captured, or captured twice).
#[test]
fn a_sets_sources_are_checked_before_any_disk_is_captured() {
    let e = machine();
    let m = e.fat("m.img", "256MiB");
    std::fs::hard_link(e.p("disk1.raw"), e.p("hard.raw")).unwrap();
    // A FIFO: opening it would wait for a writer forever (the capture hung).
    assert!(std::process::Command::new("mkfifo")
        .arg(e.p("fifo"))
        .status()
        .unwrap()
        .success());
    for (sources, says) in [
        (
            ["disk0.raw", "disk1.typo"],
            "--source number 2 (disk1.typo, disk 1)",
        ),
        (["disk0.raw", "."], "is a directory"),
        (
            ["disk1.raw", "./disk1.raw"],
            "and disk 1 (./disk1.raw) are the same disk",
        ),
        (
            ["disk1.raw", "hard.raw"],
            "and disk 1 (hard.raw) are the same disk",
        ),
        (["disk0.raw", "fifo"], "is a FIFO"),
        (["disk0.raw", "/dev/zero"], "is a character device"),
    ] {
        let o = e.capture(&m, "db01").sources(&sources).run();
        assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
        assert!(
            output_text(&o).contains(says),
            "{says}: {}",
            output_text(&o)
        );
    }
    // A loop device over a disk's image, beside that image: the same disk.
    let over = mgear_tests::Loop::attach(&e.p("disk1.raw"));
    {
        let (sources, says) = (
            [e.s("disk1.raw"), over.0.clone()],
            format!("and disk 1 ({}) are the same disk", over.0),
        );
        let sources: Vec<&str> = sources.iter().map(String::as_str).collect();
        let o = e.capture(&m, "db01").sources(&sources).run();
        assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
        assert!(
            output_text(&o).contains(says.as_str()),
            "{says}: {}",
            output_text(&o)
        );
    }
    drop(over);
    // One NBD export twice, however spelled, or beside the image it serves (captured as two
    // disks, the second all dedup); a dry run refuses as the run does (it said "fits").
    let sock = e.p("nbd/d1.sock");
    std::fs::create_dir(e.p("nbd")).unwrap();
    let server = mgear_tests::qemu_nbd(&["-t", "-r", "-f", "raw"], &sock, &e.p("disk1.raw"));
    let url = format!("nbd+unix:///?socket={}", sock.display());
    let other = format!(
        "nbd+unix:///?socket={}/nbd/../nbd/d1.sock",
        e.dir.path().display()
    );
    for (sources, says) in [
        (
            [url.as_str(), other.as_str()],
            format!("disk 0 ({url}) and disk 1"),
        ),
        (
            ["disk1.raw", url.as_str()],
            "and disk 1 (nbd+unix".to_string(),
        ),
        (
            [url.as_str(), "disk1.raw"],
            "and disk 1 (disk1.raw)".to_string(),
        ),
    ] {
        for dry in [true, false] {
            let mut c = e.capture(&m, "db01").sources(&sources);
            if dry {
                c = c.arg("--dry-run");
            }
            let o = c.run();
            assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
            let text = output_text(&o);
            assert!(
                text.contains(&says) && text.contains("are the same disk"),
                "{says}: {text}"
            );
        }
    }
    // Two windows of one image (partitions exported apart) are two disks, over NBD and as
    // loop devices (they were refused as "the same disk").
    let half = std::fs::metadata(e.p("disk1.raw")).unwrap().len() / 2;
    let (w0, w1) = (e.p("nbd/w0.sock"), e.p("nbd/w1.sock"));
    let _s0 = mgear_tests::qemu_nbd(
        &["-t", "-r", "-f", "raw", "--offset", "0"],
        &w0,
        &e.p("disk1.raw"),
    );
    let _s1 = mgear_tests::qemu_nbd(
        &["-t", "-r", "-f", "raw", &format!("--offset={half}")],
        &w1,
        &e.p("disk1.raw"),
    );
    let (u0, u1) = (
        format!("nbd+unix:///?socket={}", w0.display()),
        format!("nbd+unix:///?socket={}", w1.display()),
    );
    let plan = e
        .capture(&m, "db01")
        .sources(&[u0.as_str(), u1.as_str()])
        .arg("--dry-run")
        .run();
    assert_eq!(plan.status.code(), Some(0), "{}", output_text(&plan));
    let window = |offset: u64| {
        let o = std::process::Command::new("losetup")
            .args(["--find", "--show", "--read-only", "--offset"])
            .arg(offset.to_string())
            .args(["--sizelimit", &half.to_string()])
            .arg(e.p("disk1.raw"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", output_text(&o));
        mgear_tests::Loop(String::from_utf8(o.stdout).unwrap().trim().to_string())
    };
    let (l0, l1) = (window(0), window(half));
    let plan = e
        .capture(&m, "db01")
        .sources(&[l0.0.as_str(), l1.0.as_str()])
        .arg("--dry-run")
        .run();
    assert_eq!(plan.status.code(), Some(0), "{}", output_text(&plan));
    drop((l0, l1));
    // Another disk over NBD beside it is no twin.
    let plan = e
        .capture(&m, "db01")
        .sources(&[url.as_str(), "disk0.raw"])
        .arg("--dry-run")
        .run();
    assert_eq!(plan.status.code(), Some(0), "{}", output_text(&plan));
    drop(server);
    let i = e.json(&["inspect", "--medium", &m]);
    assert_eq!(
        i["captures"],
        serde_json::json!([]),
        "nothing captured: {i}"
    );
}

/// A set capture stopped part-way and re-run with fewer --sources finished as a machine a
/// disk short (signed, "captured"): the count it started with is kept beside its key, and a
/// re-run with another count is refused.
#[test]
fn a_set_capture_resumed_with_another_number_of_disks_is_refused() {
    let e = machine();
    let m = e.fat("m.img", "256MiB");
    std::fs::write(e.p("disk2.raw"), data_disk(3)).unwrap();
    let sock = e.p("d1.sock");
    let url = format!("nbd+unix:///?socket={}", sock.display());
    // Disk 1's export is not served: disk 0 is captured, the set stops.
    let o = e
        .capture(&m, "db01")
        .sources(&["disk0.raw", &url, "disk2.raw"])
        .run();
    assert_ne!(o.status.code(), Some(0), "{}", output_text(&o));
    let _served = mgear_tests::qemu_nbd(&["-t", "-r", "-f", "raw"], &sock, &e.p("disk1.raw"));
    let o = e.capture(&m, "db01").sources(&["disk0.raw", &url]).run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("was started with 3 disks, but 2 --source are given"),
        "{}",
        output_text(&o)
    );
    let c = e
        .capture(&m, "db01")
        .sources(&["disk0.raw", &url, "disk2.raw"])
        .json();
    assert_eq!(c["disks"].as_array().unwrap().len(), 3, "{c}");
}

/// A set ingested with the wrong identity said only "this key does not open capture db01.d0";
/// a single disk said which slots the capture has and what to try. Sets say so too.
#[test]
fn a_set_ingest_with_the_wrong_key_says_what_would_open_it() {
    let e = machine();
    e.ok(&["keygen", "--out", "other.key"]);
    std::fs::create_dir(e.p("m")).unwrap();
    capture(&e, "dir:m", &[]);
    #[rustfmt::skip]
    let o = e.run(&["ingest", "--medium", "dir:m", "--name", "db01", "--identity", "other.key", "--trust", "site.pub", "--target", "file:{disk}.raw", "--allow-unsealed"]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    let err = output_text(&o);
    assert!(err.contains("other.key does not open capture"), "{err}");
    assert!(
        err.contains("whose .pub was given as --recipient at capture"),
        "{err}"
    );
}

/// Two spellings of one volume as two disks' targets were written one over the other and both
/// called verified: two loop devices over one file (how multipath shows one LUN twice), and one
/// NBD export through `./` in its socket path. Refused before anything is written.
#[test]
fn one_volume_under_two_names_is_never_two_disks_targets() {
    let e = machine();
    std::fs::create_dir(e.p("m")).unwrap();
    capture(&e, "dir:m", &[]);
    let backing = e.p("big.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(80 << 20)
        .unwrap();
    let a = mgear_tests::Loop::attach(&backing);
    let b = mgear_tests::Loop::attach(&backing);
    let before = std::fs::read(&backing).unwrap();
    let (ta, tb) = (format!("dev:{}", a.0), format!("dev:{}", b.0));
    #[rustfmt::skip]
    let o = e.run(&["ingest", "--medium", "dir:m", "--name", "db01", "--identity", "target.key", "--trust", "site.pub", "--allow-unsealed", "--target", &ta, "--target", &tb, "--force"]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("have the same target"),
        "{}",
        output_text(&o)
    );
    assert!(
        std::fs::read(&backing).unwrap() == before,
        "nothing written"
    );
    drop((a, b));

    std::fs::write(e.p("k.sock"), b"").unwrap();
    let one = format!("nbd+unix:///?socket={}", e.s("k.sock"));
    let two = format!("nbd+unix:///?socket={}/./k.sock", e.s("."));
    #[rustfmt::skip]
    let o = e.run(&["ingest", "--medium", "dir:m", "--name", "db01", "--identity", "target.key", "--trust", "site.pub", "--allow-unsealed", "--target", &one, "--target", &two, "--force"]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("have the same target"),
        "{}",
        output_text(&o)
    );

    // An EBS spec one disk's ingest refuses is refused before disk 0 is written (it was
    // written as d0.raw.partial first).
    #[rustfmt::skip]
    let o = e.run(&["ingest", "--medium", "dir:m", "--name", "db01", "--identity", "target.key", "--trust", "site.pub", "--allow-unsealed", "--target", "file:d0.raw", "--target", "ebs-snapshot:s1?boot-mode=uefi"]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("nothing was written"),
        "{}",
        output_text(&o)
    );
    assert!(!e.p("d0.raw.partial").exists() && !e.p("d0.raw").exists());
}

/// A set delta whose disk 1 is damaged on the medium, ingested with `--force` over the
/// previous generation's volumes: disk 0 was finished (renamed over its volume) before disk 1
/// failed, and the target held a machine of two generations that was never captured, the
/// old disk 0 gone. Every disk is written before any is finished: the failure leaves both
/// volumes as they were.
#[test]
fn a_set_ingest_that_fails_on_a_later_disk_replaces_no_volume() {
    let e = machine();
    std::fs::create_dir(e.p("m")).unwrap();
    capture(&e, "dir:m", &[]);
    ingest(&e, "dir:m", &["--target", "file:vol-{disk}.raw"]);
    let before: Vec<Vec<u8>> = (0..2)
        .map(|k| std::fs::read(e.p(&format!("vol-{k}.raw"))).unwrap())
        .collect();
    for k in 0..2 {
        let p = e.p(&format!("disk{k}.raw"));
        let mut d = std::fs::read(&p).unwrap();
        d[(3 << 20) + 17] ^= 0x5a;
        std::fs::write(&p, d).unwrap();
    }
    capture(&e, "dir:m", &["--delta"]);
    let seg = e.p("m/MGEAR/db01.d1/G0002/SEG-00000");
    let mut b = std::fs::read(&seg).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    std::fs::write(&seg, b).unwrap();
    let o = e
        .ingest("dir:m", "db01")
        .trust("site.pub")
        .target("file:vol-{disk}.raw")
        .arg("--force")
        .run();
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    for (k, was) in before.iter().enumerate() {
        assert!(
            std::fs::read(e.p(&format!("vol-{k}.raw"))).unwrap() == *was,
            "volume {k} was replaced"
        );
    }
}

/// A set ingest killed part-way, re-run with its targets in another order: disk 0 was
/// written whole into the other target's `.partial` before disk 1's refused, and the
/// re-run in the right order then refused in turn. Refused before anything is written,
/// naming the order; the first order then finishes. A target whose tool is missing is
/// refused before disk 0 too (found at disk 1, after disk 0 was written whole).
#[test]
fn a_set_ingest_re_run_in_another_order_or_missing_a_tool_writes_nothing() {
    use crate::spanning::noise;
    let e = Env::new();
    e.keygen();
    std::fs::write(e.p("d0.raw"), noise(24 << 20, 41)).unwrap();
    std::fs::write(e.p("d1.raw"), noise(3 << 20, 42)).unwrap();
    let m = e.fat("m.img", "64MiB");
    e.capture(&m, "m1").sources(&["d0.raw", "d1.raw"]).ok();
    let line = |a: &str, b: &str| {
        e.ingest(&m, "m1")
            .untrusted()
            .target(&format!("file:{a}"))
            .target(&format!("file:{b}"))
    };
    line("root.raw", "data.raw").killed_after("4MiB/s", 2500);
    assert!(e.p("root.raw.partial").exists());
    let o = line("data.raw", "root.raw").run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("holds an unfinished ingest of disk 0")
            && output_text(&o).contains("in another order"),
        "{}",
        output_text(&o)
    );
    assert!(
        !e.p("data.raw.partial").exists(),
        "nothing was to be written"
    );
    // A qcow2 target with no qemu-img on PATH: refused before disk 0 is written.
    let empty = e.p("no-tools");
    std::fs::create_dir(&empty).unwrap();
    let o = e
        .ingest(&m, "m1")
        .untrusted()
        .target("file:x0.raw")
        .target("qcow2:x1.qcow2")
        .command()
        .env("PATH", &empty)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("qemu-img is not installed") && output_text(&o).contains("disk 1"),
        "{}",
        output_text(&o)
    );
    assert!(!e.p("x0.raw.partial").exists() && !e.p("x0.raw").exists());
    line("root.raw", "data.raw").ok();
    same_file(&e.p("root.raw"), &e.p("d0.raw"));
    same_file(&e.p("data.raw"), &e.p("d1.raw"));
}

/// One disk of a set ingested by its stream name with `--expect-commit`: the set's commit or
/// the disk's own (which the capture prints per disk) both name it; the note says which
/// commit is the set's (it said the disk's commit was "the one --expect-commit names" when
/// the set's was given, and refused the disk's own as "not the capture that was shipped").
#[test]
fn a_set_disk_is_named_by_the_sets_commit_or_its_own() {
    let e = Env::new();
    e.keygen();
    e.ok(&["keygen", "--signing", "--out", "site.key"]);
    std::fs::write(e.p("disk0.raw"), data_disk(3)).unwrap();
    std::fs::write(e.p("disk1.raw"), data_disk(4)).unwrap();
    let m = e.fat("m.img", "64MiB");
    let c = capture(&e, &m, &[]);
    let set = c["receipt"]["commit_digest"].as_str().unwrap().to_string();
    let own = c["captured"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "db01.d1")
        .unwrap()["receipt"]["commit_digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(set, own);
    for (want, out) in [(&set, "a.raw"), (&own, "b.raw")] {
        let o = e
            .ingest(&m, "db01.d1")
            .trust("site.pub")
            .args(&["--expect-commit", want])
            .target(&format!("file:{out}"))
            .run();
        assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
        assert!(
            output_text(&o).contains(&format!("of the set whose commit is {set}")),
            "{}",
            output_text(&o)
        );
        same_file(&e.p(out), &e.p("disk1.raw"));
    }
    // Disk 0's commit given for disk 1: refused, naming disk 1's own commit and the set's (it
    // gave the set's as disk 1's).
    let zero = c["captured"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "db01.d0")
        .unwrap()["receipt"]["commit_digest"]
        .as_str()
        .unwrap()
        .to_string();
    let o = e
        .ingest(&m, "db01.d1")
        .trust("site.pub")
        .args(&["--expect-commit", &zero])
        .target("file:c.raw")
        .run();
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains(&format!(
            "--expect-commit {zero} is the commit of db01.d0 (disk 0 of set db01) generation 1, \
             not db01.d1's ({own}, or its set's {set})"
        )),
        "{}",
        output_text(&o)
    );
    // The set with --disk 1 and that disk's own commit: named as such (it said another
    // capture was in the shipped one's place).
    let o = e
        .ingest(&m, "db01")
        .trust("site.pub")
        .args(&["--disk", "1", "--expect-commit", &own])
        .target("file:d.raw")
        .run();
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("is the commit of db01.d1 (disk 1 of set db01)")
            && output_text(&o).contains("--name db01.d1 --expect-commit"),
        "{}",
        output_text(&o)
    );
}

/// `verify --name SET --expect-commit` with another commit than the set's: the set is not
/// trusted, and neither is any disk it binds (each disk's line said TRUSTED, signed by the
/// pinned key, under the FAILED verdict).
#[test]
fn a_set_verified_against_another_commit_trusts_none_of_its_disks() {
    let e = Env::new();
    e.keygen();
    e.ok(&["keygen", "--signing", "--out", "site.key"]);
    std::fs::write(e.p("disk0.raw"), data_disk(3)).unwrap();
    std::fs::write(e.p("disk1.raw"), data_disk(4)).unwrap();
    let m = e.fat("m.img", "64MiB");
    let c = capture(&e, &m, &[]);
    let set = c["receipt"]["commit_digest"].as_str().unwrap().to_string();
    let wrong: String = set
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    let verify = |want: &str| {
        e.run(&[
            "verify",
            "--medium",
            &m,
            "--name",
            "db01",
            "--trust",
            "site.pub",
            "--expect-commit",
            want,
            "--json",
        ])
    };
    let o = verify(&wrong);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let trust = v["trust"].as_array().unwrap();
    assert_eq!(trust.len(), 3, "{v}");
    assert!(trust.iter().all(|t| t["trusted"] == false), "{v}");
    assert!(
        trust[1]["message"]
            .as_str()
            .unwrap()
            .contains("set db01 binds this disk and is not trusted itself"),
        "{v}"
    );
    // The set's own commit: all three trusted.
    let o = verify(&set);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["trust"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["trusted"] == true),
        "{v}"
    );
}

/// A set's delta cut part-way, then `ingest --expect-generation 2`: it said "the newest
/// generation on the medium is 1: a newer generation was removed or this is an older
/// medium" (the set's generation has no directory until it is bound; its disks' do).
#[test]
fn an_expected_set_generation_that_is_unfinished_is_said_to_be() {
    let e = machine();
    std::fs::create_dir(e.p("m")).unwrap();
    capture(&e, "dir:m", &[]);
    std::fs::write(e.p("disk1.raw"), data_disk(8)).unwrap();
    set_capture(&e, "dir:m")
        .sign("site.key")
        .arg("--delta")
        .killed_after("1MiB/s", 2500);
    let o = e
        .ingest("dir:m", "db01")
        .trust("site.pub")
        .args(&["--expect-generation", "2"])
        .target("file:v-{disk}.raw")
        .run();
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("generation 2 was expected")
            && output_text(&o).contains("is on this medium, but it is not finished")
            && !output_text(&o).contains("was removed"),
        "{}",
        output_text(&o)
    );
}

/// A set of sparse disks: each disk's `read` is what was read, its holes said apart, in the
/// summary and the .txt report (it counted the holes as read).
#[test]
fn a_set_summary_counts_holes_apart_from_what_was_read() {
    let e = Env::new();
    e.keygen();
    for (name, seed) in [("disk0.raw", 5), ("disk1.raw", 6)] {
        let mut d = data_disk(seed);
        d.truncate(2 << 20);
        std::fs::write(e.p(name), &d).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(e.p(name))
            .unwrap();
        f.set_len(8 << 20).unwrap();
    }
    let m = e.fat("m.img", "64MiB");
    let o = set_capture(&e, &m).args(&["--report", "r.json"]).run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        said.contains("read 2.00 MiB, holes skipped 6.00 MiB"),
        "{said}"
    );
    let txt = std::fs::read_to_string(e.p("r.txt")).unwrap();
    assert!(
        txt.contains("read 2.00 MiB (2097152 bytes), holes skipped 6.00 MiB"),
        "{txt}"
    );
    // One disk of it ingested: the report still says the machine has two (it said one).
    e.ingest(&m, "db01")
        .untrusted()
        .args(&["--disk", "1", "--report", "c.json"])
        .target("file:c.raw")
        .ok();
    let txt = std::fs::read_to_string(e.p("c.txt")).unwrap();
    assert!(
        txt.contains("(a machine of 2 disks, 1 of them ingested here)"),
        "{txt}"
    );
}

/// A set stopped part-way whose data key was then forgotten (`keys forget`) was refused on
/// its resume with no way on; it names the `--abort` that removes it, which works as
/// written, and the set is captured again.
#[test]
fn a_stopped_set_whose_key_was_forgotten_is_told_how_to_start_over() {
    let e = Env::new();
    e.keygen();
    std::fs::write(e.p("a.raw"), data_disk(3)).unwrap();
    std::fs::write(e.p("b.raw"), data_disk(4)).unwrap();
    std::fs::create_dir(e.p("m")).unwrap();
    let line = Line::capture(&e, "m2")
        .medium("dir:m")
        .sources(&["a.raw", "b.raw"]);
    line.killed_after("1MiB/s", 1500);
    e.ok(&["keys", "forget", "--name", "m2", "--all"]);
    let o = line.run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    let said = output_text(&o);
    let abort = "mgear capture --abort --medium dir:m --name m2";
    assert!(said.contains(&format!("`{abort}`")), "{said}");
    let args: Vec<&str> = abort.split_whitespace().skip(1).collect();
    e.ok(&args);
    line.ok();
}

/// The dry run of a finished set, captured again without --delta: it said "0 disks need
/// about 0 B on the media: fits", exit 0, where the run refuses it as already captured.
#[test]
fn a_dry_run_of_a_finished_set_is_refused_as_the_run_is() {
    let e = Env::new();
    e.keygen();
    std::fs::write(e.p("disk0.raw"), data_disk(3)).unwrap();
    std::fs::write(e.p("disk1.raw"), data_disk(4)).unwrap();
    std::fs::create_dir(e.p("m")).unwrap();
    set_capture(&e, "dir:m").ok();
    for dry in [true, false] {
        let mut l = set_capture(&e, "dir:m");
        if dry {
            l = l.arg("--dry-run");
        }
        let o = l.run();
        assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
        assert!(
            output_text(&o).contains("set db01 is already captured as generation 1"),
            "{}",
            output_text(&o)
        );
    }
    let o = set_capture(&e, "dir:m")
        .args(&["--delta", "--dry-run"])
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
}

/// A set's disk into a device (no unfinished name: its boot sector is written last) from
/// the one medium of its span that holds that chunk: the disk's line said to keep that
/// medium and give it again, and the set's next step said "the media given now are not
/// needed again" beside it. The next step names it too.
#[test]
fn a_sets_pending_next_step_names_the_medium_to_give_again() {
    let e = Env::new();
    e.keygen();
    let noise = |path: &str, mib: usize, seed: u8| {
        let data: Vec<u8> = (0..mib << 20)
            .map(|i| {
                (i as u32)
                    .wrapping_mul(2_654_435_761)
                    .rotate_left(u32::from(seed)) as u8
            })
            .collect();
        std::fs::write(e.p(path), data).unwrap();
    };
    noise("d0.raw", 40, 3);
    noise("d1.raw", 24, 5);
    let media: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|m| e.fat(&format!("m{m}.img"), "40MiB"))
        .collect();
    media
        .iter()
        .fold(
            e.capture(&media[0], "db01").sources(&["d0.raw", "d1.raw"]),
            |l, m| {
                if m == &media[0] {
                    l
                } else {
                    l.medium(m)
                }
            },
        )
        .ok();
    std::fs::File::create(e.p("vol0.img"))
        .unwrap()
        .set_len(40 << 20)
        .unwrap();
    let dev = mgear_tests::Loop::attach(&e.p("vol0.img"));
    let o = e
        .ingest(&media[0], "db01")
        .untrusted()
        .args(&["--disk", "0"])
        .target(&format!("dev:{}", dev.0))
        .arg("--json")
        .run();
    assert_eq!(o.status.code(), Some(4), "{}", output_text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let hint = v["error"]["hint"].as_str().unwrap();
    assert!(
        hint.contains("disk 0: with medium #0 (fat:ma.img) again")
            && !hint.contains("not needed again"),
        "{v}"
    );
}
