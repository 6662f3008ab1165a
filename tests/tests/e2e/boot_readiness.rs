//! Pre-ship readiness (`mgear boot --check-profile`): a GPT/UEFI-only disk is
//! flagged against a BIOS-only profile, the IDE-only sample disk against a
//! virtio profile, and the all-drivers sample disk passes. No QEMU needed.
//!
//! Needs fdisk (sfdisk), busybox-static, linux-image-amd64, grub-pc-bin and
//! e2fsprogs installed, and `cargo build --workspace` first.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use mgear_tests::bin;

fn check(disk: &Path, profile: &str) -> (Output, serde_json::Value) {
    check_machine(&[disk], profile)
}

/// `--check-profile` of a machine: one `--target` per disk, the boot disk first.
fn check_machine(disks: &[&Path], profile: &str) -> (Output, serde_json::Value) {
    let mut cmd = Command::new(bin("mgear"));
    cmd.arg("boot");
    for d in disks {
        cmd.arg("--target").arg(format!("file:{}", d.display()));
    }
    let o = cmd
        .args(["--check-profile", profile, "--json"])
        .output()
        .expect("run mgear");
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o, v)
}

fn error_codes(v: &serde_json::Value) -> Vec<String> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "error")
        .map(|f| f["code"].as_str().unwrap().to_string())
        .collect()
}

fn sample(path: &Path, drivers: &str) {
    let o = Command::new(bin("mgear"))
        .args(["boot", "--build-sample"])
        .arg(path)
        .args(["--drivers", drivers])
        .output()
        .expect("run mgear");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn gpt_uefi_disk_is_flagged_for_bios_profile() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("uefi.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mut sf = Command::new("sfdisk")
        .arg("--quiet")
        .arg(&disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sfdisk (fdisk package)");
    sf.stdin
        .take()
        .unwrap()
        .write_all(b"label: gpt\n,32MiB,U\n,,L\n")
        .unwrap();
    assert!(sf.wait().unwrap().success());

    let (o, v) = check(&disk, "kvm-virtio-bios");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(v["facts"]["table"], "gpt");
    assert_eq!(v["facts"]["uefi_bootable"], true);
    assert_eq!(v["facts"]["bios_bootable"], false);
    assert_eq!(error_codes(&v), ["firmware"]);

    let (o, v) = check(&disk, "kvm-virtio-uefi");
    assert_eq!(o.status.code(), Some(0), "{v}");
    assert!(error_codes(&v).is_empty());
}

#[test]
fn sample_disks_against_virtio_profile() {
    let dir = tempfile::tempdir().unwrap();
    let ide = dir.path().join("ide.raw");
    let all = dir.path().join("all.raw");
    sample(&ide, "ide-only");
    sample(&all, "all");

    let (o, v) = check(&ide, "kvm-virtio-bios");
    assert_eq!(o.status.code(), Some(1), "{v}");
    assert_eq!(error_codes(&v), ["disk-driver"]);
    assert_eq!(v["facts"]["os"], "linux");
    assert_eq!(v["facts"]["linux"]["virtio"], "missing");
    assert_eq!(v["facts"]["mbr_boot_loader"], "GRUB");

    let (o, v) = check(&all, "kvm-virtio-bios");
    assert_eq!(o.status.code(), Some(0), "{v}");
    assert!(error_codes(&v).is_empty(), "{v}");
    assert_eq!(v["facts"]["linux"]["virtio"], "initramfs");

    // The IDE-only disk is fine where the disk is emulated IDE/SATA.
    let (o, v) = check(&ide, "generic");
    assert_eq!(o.status.code(), Some(0), "{v}");

    // A machine: every disk is checked, the first as the boot disk. The IDE-only disk as a
    // data disk behind the good one is fine (its drivers are not the guest's); as the boot
    // disk it fails, and the failure is reported on it.
    let (o, v) = check_machine(&[&all, &ide], "kvm-virtio-bios");
    assert_eq!(o.status.code(), Some(0), "{v}");
    let disks = v["disks"].as_array().expect("a machine lists its disks");
    assert_eq!(disks.len(), 2, "{v}");
    assert_eq!(disks[1]["target"], format!("file:{}", ide.display()));
    assert!(
        error_codes(&disks[0]).is_empty() && error_codes(&disks[1]).is_empty(),
        "{v}"
    );
    let (o, v) = check_machine(&[&ide, &all], "kvm-virtio-bios");
    assert_eq!(o.status.code(), Some(1), "{v}");
    assert_eq!(error_codes(&v["disks"][0]), ["disk-driver"], "{v}");
    assert!(error_codes(&v["disks"][1]).is_empty(), "{v}");
}

/// The README promised a pre-ship readiness check at capture and there was none: a disk
/// that will not boot on the target's virtio bus was found only after shipping.
/// `capture --check-profile` says it at the source (dry run, stderr and the report) and
/// captures anyway (a driver can be added at the target); a good disk gets no finding.
#[test]
fn capture_checks_readiness_before_the_disk_ships() {
    let e = mgear_tests::Env::new();
    e.keygen();
    sample(&e.p("ide.raw"), "ide-only");
    sample(&e.p("all.raw"), "all");
    e.fat("m.img", "128MiB");
    let plan = e
        .capture("fat:m.img", "ide1")
        .source("ide.raw")
        .args(&["--check-profile", "kvm-virtio-bios", "--dry-run"])
        .json();
    let w = plan["warnings"].to_string();
    assert!(
        w.contains("readiness for kvm-virtio-bios") && w.contains("error disk-driver"),
        "{plan}"
    );
    let o = e
        .capture("fat:m.img", "ide1")
        .source("ide.raw")
        .args(&["--check-profile", "kvm-virtio-bios", "--json"])
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", mgear_tests::output_text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        r["warnings"].to_string().contains("error disk-driver"),
        "{r}"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("readiness for kvm-virtio-bios"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r = e
        .capture("fat:m.img", "all1")
        .source("all.raw")
        .args(&["--check-profile", "kvm-virtio-bios"])
        .json();
    assert!(!r["warnings"].to_string().contains("readiness"), "{r}");
    let o = e
        .capture("fat:m.img", "x")
        .source("all.raw")
        .args(&["--check-profile", "vmware"])
        .run();
    assert_eq!(o.status.code(), Some(2));
}

/// A disk whose partition table cannot be read (a protective MBR, no GPT behind it) is a
/// finding: `capture --check-profile` warns and captures (it aborted with an I/O error's
/// "reconnect it" hint), `boot --check-profile` says it and exits 1 (it exited 3).
#[test]
fn an_unreadable_partition_table_is_a_finding_not_an_abort() {
    let e = mgear_tests::Env::new();
    e.keygen();
    let mut disk = vec![0u8; 16 << 20];
    disk[446 + 4] = 0xEE; // a protective MBR entry: GPT expected at LBA 1, none there
    disk[446 + 8] = 1;
    disk[446 + 12..446 + 16].copy_from_slice(&((16u32 << 11) - 1).to_le_bytes());
    disk[510] = 0x55;
    disk[511] = 0xAA;
    disk[1 << 20] = 1; // not all zeros
    std::fs::write(e.p("bad.raw"), &disk).unwrap();
    e.fat("m.img", "64MiB");
    let o = e
        .capture("fat:m.img", "bad")
        .source("bad.raw")
        .args(&["--check-profile", "generic", "--json"])
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", mgear_tests::output_text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let w = r["warnings"].to_string();
    assert!(
        w.contains("error partition-table") && w.contains("no GPT header signature"),
        "{r}"
    );
    let (o, v) = check(&e.p("bad.raw"), "generic");
    assert_eq!(o.status.code(), Some(1), "{v}");
    assert_eq!(error_codes(&v), ["partition-table"], "{v}");
}

/// `mgear boot` of an NBD export whose server takes the connection and answers nothing: its
/// look at the volume gives up after MGEAR_NBD_TIMEOUT (it waited for ever, with no word).
#[test]
fn booting_a_silent_nbd_export_gives_up_and_says_why() {
    let e = mgear_tests::Env::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming() {
            held.push(c);
        }
    });
    let t = std::time::Instant::now();
    let o = e
        .cmd(&[
            "boot",
            "--target",
            &format!("nbd://127.0.0.1:{port}/x"),
            "--timeout",
            "60",
        ])
        .env("MGEAR_NBD_TIMEOUT", "2")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", mgear_tests::output_text(&o));
    assert!(
        mgear_tests::output_text(&o).contains("no answer within 2 s"),
        "{}",
        mgear_tests::output_text(&o)
    );
    assert!(t.elapsed().as_secs() < 30, "{:?}", t.elapsed());
}

/// `--build-sample --data-disk` over a file that is no sample data disk, or over the sample
/// itself: refused, nothing written (the file silently became the data disk).
#[test]
fn a_sample_data_disk_is_never_written_over_a_file_of_ones_own() {
    let e = mgear_tests::Env::new();
    std::fs::write(e.p("mine.raw"), vec![0x42u8; 3 << 20]).unwrap();
    let o = e.run(&["boot", "--build-sample", "s.raw", "--data-disk", "mine.raw"]);
    assert_eq!(o.status.code(), Some(2), "{}", mgear_tests::output_text(&o));
    assert!(
        mgear_tests::output_text(&o).contains("is not a sample data disk mgear built"),
        "{}",
        mgear_tests::output_text(&o)
    );
    assert_eq!(
        std::fs::read(e.p("mine.raw")).unwrap(),
        vec![0x42u8; 3 << 20]
    );
    assert!(!e.p("s.raw").exists());
    let o = e.run(&["boot", "--build-sample", "s.raw", "--data-disk", "s.raw"]);
    assert_eq!(o.status.code(), Some(2), "{}", mgear_tests::output_text(&o));
    assert!(!e.p("s.raw").exists());
}

/// A volume an ingest has not finished is refused by `--check-profile` too (it read "will not
/// boot anywhere", exit 0: its first chunk is written last), and by `boot` through a link.
#[test]
fn an_unfinished_volume_is_not_checked_nor_booted_through_a_link() {
    let e = mgear_tests::Env::new();
    std::fs::write(e.p("v.raw.partial"), vec![0u8; 1 << 20]).unwrap();
    std::os::unix::fs::symlink(e.p("v.raw.partial"), e.p("link.raw")).unwrap();
    // Its final name, while only the `.partial` is there: said so (it was "No such file",
    // "reconnect it").
    let o = e.run(&["boot", "--target", "file:v.raw"]);
    assert_eq!(o.status.code(), Some(2), "{}", mgear_tests::output_text(&o));
    assert!(
        mgear_tests::output_text(&o).contains("has not finished"),
        "{}",
        mgear_tests::output_text(&o)
    );
    for args in [
        &[
            "boot",
            "--target",
            "file:v.raw.partial",
            "--check-profile",
            "generic",
        ][..],
        &["boot", "--target", "file:link.raw"],
        &[
            "boot",
            "--target",
            "file:link.raw",
            "--check-profile",
            "generic",
        ],
    ] {
        let o = e.run(args);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{args:?}: {}",
            mgear_tests::output_text(&o)
        );
        assert!(
            mgear_tests::output_text(&o).contains("an ingest that has not finished"),
            "{args:?}: {}",
            mgear_tests::output_text(&o)
        );
    }
}

/// One volume given as two disks: refused, exit 2 (with --write it was QEMU's lock error,
/// exit 3 "reconnect it"; without, it booted one disk twice).
#[test]
fn one_volume_as_two_disks_is_refused() {
    let e = mgear_tests::Env::new();
    std::fs::write(e.p("c.raw"), vec![0u8; 1 << 20]).unwrap();
    let nbd = "nbd+unix:///?socket=/nonexistent/v.sock";
    for (a, b, extra) in [
        ("file:c.raw", "file:./c.raw", &[][..]),
        ("file:c.raw", "file:./c.raw", &["--write"]),
        (nbd, nbd, &[]),
    ] {
        let mut args = vec!["boot", "--target", a, "--target", b];
        args.extend_from_slice(extra);
        let o = e.run(&args);
        assert_eq!(o.status.code(), Some(2), "{}", mgear_tests::output_text(&o));
        assert!(
            mgear_tests::output_text(&o).contains("are the same volume"),
            "{}",
            mgear_tests::output_text(&o)
        );
    }
}
