//! The libraries wired into the `mgear` CLI, driven through the real binary:
//! `ingest --target libvirt:POOL/NAME`, `boot --target libvirt:POOL/NAME` and
//! `ingest --boot` (local QEMU and libvirt), on the sample bootable disk.
//!
//! The libvirt scenario needs root, libvirt-daemon-system and libvirt-clients
//! (it starts the daemon with `scripts/libvirtd.sh`, pool `mgear`); all need
//! qemu-system-x86, busybox-static, linux-image-amd64, grub-pc-bin, e2fsprogs.
//! Volumes are deleted however a test ends. Boots run one at a time (two cores).

use mgear_tests::{same_file, Env, Line};
use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

const POOL: &str = "mgear";
const CONN: &str = "qemu:///system";

use crate::LIBVIRT as SERIAL;

/// Build the sample disk with `marker`, capture it onto a dir: medium.
fn captured_sample(e: &Env, marker: &str) -> String {
    e.ok(&["keygen", "--out", "target.key"]);
    e.ok(&["boot", "--build-sample", "disk.raw", "--marker", marker]);
    fs::create_dir(e.p("mnt")).unwrap();
    e.capture("dir:mnt", "web01").source("disk.raw").ok();
    format!("MGEAR-BOOT-OK {marker}")
}

fn ingest<'e>(e: &'e Env, target: &str) -> Line<'e> {
    e.ingest("dir:mnt", "web01")
        .untrusted()
        .unsealed()
        .target(target)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn virsh(args: &[&str]) -> Output {
    Command::new("virsh")
        .arg("-c")
        .arg(CONN)
        .args(args)
        .output()
        .expect("run virsh")
}

fn start_libvirtd() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/libvirtd.sh");
    let o = Command::new("sh")
        .arg(&script)
        .output()
        .expect("run libvirtd.sh");
    assert!(
        o.status.success(),
        "libvirtd.sh failed: {}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// Deletes the pool volume however the test ends.
struct VolumeGuard(String);

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        let _ = virsh(&["vol-delete", "--pool", POOL, &self.0]);
    }
}

#[test]
fn wire_ingest_to_libvirt_round_trips_boots_and_refuses_overwrite() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    start_libvirtd();
    let e = Env::new();
    let marker = captured_sample(&e, "wire-libvirt");
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!("mgear-wire-{}-{nanos}.raw", std::process::id());
    let _guard = VolumeGuard(name.clone());
    let target = format!("libvirt:{POOL}/{name}");

    // Ingest, then boot the pool volume as a libvirt domain.
    let r = ingest(&e, &target)
        .args(&["--boot", "--wait-for", &marker, "--timeout", "300"])
        .json();
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(r["booted"], true, "{r}");
    let vol_path = r["volume"].as_str().expect("volume path").to_string();
    let listed = text(&virsh(&["vol-path", "--pool", POOL, &name]).stdout);
    assert_eq!(listed.trim(), vol_path);
    let report: serde_json::Value =
        serde_json::from_slice(&fs::read(r["boot_report"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(report["driver"], "libvirt", "{report}");
    assert_eq!(report["outcome"], "booted", "{report}");
    // The temporary raw file in the state dir is gone.
    let leftovers: Vec<_> = fs::read_dir(e.p("state/mgear/ingest"))
        .unwrap()
        .filter_map(|d| d.ok())
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".raw") || n.ends_with(".partial") || n.ends_with(".ingest"))
        .collect();
    assert!(leftovers.is_empty(), "left in the state dir: {leftovers:?}");

    // The volume holds exactly the source disk (the boot discarded its writes).
    let back = e.p("downloaded.raw");
    let d = virsh(&[
        "vol-download",
        "--pool",
        POOL,
        &name,
        back.to_str().unwrap(),
    ]);
    assert!(d.status.success(), "vol-download: {}", text(&d.stderr));
    same_file(&e.p("disk.raw"), &back);

    // `mgear boot` of the pool volume sees the marker too.
    let out = e.ok(&[
        "boot",
        "--target",
        &target,
        "--wait-for",
        &marker,
        "--snapshot",
        "--report",
        "boot.json",
    ]);
    assert!(
        text(&out.stdout).contains("driver libvirt"),
        "{}",
        text(&out.stdout)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&fs::read(e.p("boot.json")).unwrap()).unwrap();
    assert_eq!(report["matched"], marker.as_str(), "{report}");

    // A second ingest into the same volume is refused without --force.
    let out = ingest(&e, &target).run();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--force"),
        "{}",
        text(&out.stderr)
    );

    // A missing volume is a clear error, not a QEMU failure.
    let out = e.run(&[
        "boot",
        "--target",
        &format!("libvirt:{POOL}/no-such-{nanos}"),
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("looking up volume"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn wire_ingest_boot_local_passes_and_fails_with_exit_1() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let e = Env::new();
    let marker = captured_sample(&e, "wire-local");

    let r = ingest(&e, "file:vol.raw")
        .args(&["--boot", "--wait-for", &marker, "--timeout", "300"])
        .json();
    assert_eq!(
        (r["verified"].clone(), r["booted"].clone()),
        (true.into(), true.into()),
        "{r}"
    );
    let report_path = e.p("vol.raw.boot-report.json");
    // Relative to the working directory, like the --target path.
    assert_eq!(e.p(r["boot_report"].as_str().unwrap()), report_path);
    let report: serde_json::Value =
        serde_json::from_slice(&fs::read(&report_path).unwrap()).unwrap();
    assert_eq!(report["outcome"], "booted", "{report}");
    // Guest writes were discarded: the volume is still the source disk.
    same_file(&e.p("disk.raw"), &e.p("vol.raw"));

    // A marker that never appears: ingested and verified, but exit 1.
    let out = ingest(&e, "file:vol2.raw")
        .args(&[
            "--boot",
            "--wait-for",
            "WIRE-NEVER-PRINTED",
            "--timeout",
            "20",
        ])
        .run();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("did NOT boot"),
        "{}",
        text(&out.stdout)
    );
    same_file(&e.p("disk.raw"), &e.p("vol2.raw"));
    let report: serde_json::Value =
        serde_json::from_slice(&fs::read(e.p("vol2.raw.boot-report.json")).unwrap()).unwrap();
    assert_ne!(report["outcome"], "booted", "{report}");
}
