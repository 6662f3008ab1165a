//! The `libvirt:POOL/NAME` target end to end: start libvirtd with
//! `scripts/libvirtd.sh`, upload the sample disk into the `mgear` pool, check
//! the volume holds exactly the source bytes, boot it as a libvirt domain (TCG,
//! no network) and see the marker; a disk without virtio drivers must fail on
//! virtio. Domains and volumes are removed afterwards.
//!
//! Needs root, libvirt-daemon-system, libvirt-clients, qemu-system-x86,
//! busybox-static, linux-image-amd64, grub-pc-bin and e2fsprogs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mgear_boot::libvirt::DEFAULT_CONN;
use mgear_boot::{
    build_sample_disk, upload_volume, BootSpec, Bus, Drivers, LibvirtBoot, LibvirtTarget, Outcome,
    SampleDiskOptions, VolumeRef,
};

const POOL: &str = "mgear";

use crate::LIBVIRT as SERIAL;

fn start_libvirtd() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/libvirtd.sh");
    let o = Command::new("sh")
        .arg(&script)
        .output()
        .expect("run libvirtd.sh");
    assert!(
        o.status.success(),
        "libvirtd.sh failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Deletes the volume however the test ends.
struct VolumeGuard(VolumeRef);

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        let _ = self.0.delete();
    }
}

fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("mgear-test-{tag}-{}-{nanos}.raw", std::process::id())
}

fn virsh(args: &[&str]) -> String {
    let o = Command::new("virsh")
        .arg("-c")
        .arg(DEFAULT_CONN)
        .args(args)
        .output()
        .expect("run virsh");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Domains `LibvirtBoot` made in this process (it names them `mgear-boot-<pid>-...`).
fn our_domains() -> Vec<String> {
    let prefix = format!("mgear-boot-{}-", std::process::id());
    virsh(&["list", "--all", "--name"])
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(String::from)
        .collect()
}

fn sample(dir: &Path, drivers: Drivers) -> (PathBuf, String) {
    let path = dir.join(format!("{}.raw", drivers.name()));
    let opts = SampleDiskOptions {
        drivers,
        ..Default::default()
    };
    let disk = build_sample_disk(&path, &opts).expect("build sample disk");
    (path, disk.marker_line)
}

#[test]
fn libvirt_volume_keeps_its_bits_and_boots_with_marker() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    start_libvirtd();
    let dir = tempfile::tempdir().unwrap();
    let (raw, marker) = sample(dir.path(), Drivers::All);
    let source = std::fs::read(&raw).unwrap();

    let name = unique("all");
    let target: LibvirtTarget = format!("{POOL}/{name}").parse().unwrap();
    let vol = VolumeGuard(upload_volume(DEFAULT_CONN, &target.pool, &target.name, &raw).unwrap());
    assert_eq!(vol.0.capacity, source.len() as u64);
    // A second upload under the same name is refused, not overwritten.
    assert!(upload_volume(DEFAULT_CONN, POOL, &name, &raw).is_err());

    let back = dir.path().join("downloaded.raw");
    vol.0.download(&back).unwrap();
    assert!(
        std::fs::read(&back).unwrap() == source,
        "uploaded volume differs from the source"
    );

    // Snapshot boot: the guest mounts the disk, but its writes must be discarded.
    let mut spec = BootSpec::new(vol.0.target(), regex_escape(&marker));
    spec.timeout = Duration::from_secs(300);
    spec.snapshot = true;
    let report = LibvirtBoot::new(DEFAULT_CONN).boot(&spec).unwrap();
    assert!(
        report.booted(),
        "{}\n{}",
        report.detail,
        report.console_tail(40)
    );
    assert_eq!(report.setup.driver, "libvirt");
    assert_eq!(report.setup.bus, Bus::Virtio);
    assert_eq!(report.setup.target, format!("libvirt:{POOL}/{name}"));
    assert_eq!(report.matched.as_deref(), Some(marker.as_str()));
    assert!(
        our_domains().is_empty(),
        "domain left behind: {:?}",
        our_domains()
    );
    std::fs::remove_file(&back).unwrap();
    vol.0.download(&back).unwrap();
    assert!(
        std::fs::read(&back).unwrap() == source,
        "snapshot boot changed the volume"
    );

    // Plain boot from the pool volume itself.
    spec.snapshot = false;
    let report = LibvirtBoot::new(DEFAULT_CONN).boot(&spec).unwrap();
    assert!(
        report.booted(),
        "{}\n{}",
        report.detail,
        report.console_tail(40)
    );
    assert!(
        our_domains().is_empty(),
        "domain left behind: {:?}",
        our_domains()
    );
}

#[test]
fn libvirt_boot_fails_on_virtio_without_drivers_and_refuses_plain_files() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    start_libvirtd();
    let dir = tempfile::tempdir().unwrap();
    let (raw, marker) = sample(dir.path(), Drivers::IdeOnly);
    let driver = LibvirtBoot::new(DEFAULT_CONN);

    // A file outside any pool is not booted behind the user's back.
    let spec = BootSpec::new(mgear_boot::Target::File(raw.clone()), "x");
    assert!(driver.boot(&spec).is_err());

    let vol = VolumeGuard(upload_volume(DEFAULT_CONN, POOL, &unique("ide"), &raw).unwrap());
    let mut spec = BootSpec::new(vol.0.target(), regex_escape(&marker));
    spec.timeout = Duration::from_secs(300);
    spec.snapshot = true;
    spec.bus = Bus::Virtio;
    let report = driver.boot(&spec).unwrap();
    assert_eq!(report.outcome, Outcome::GuestStopped, "{}", report.detail);
    assert!(
        report.console_log.contains("MGEAR-BOOT-FAIL"),
        "{}",
        report.console_tail(40)
    );
    assert!(report.require_booted().is_err());
    assert!(
        our_domains().is_empty(),
        "domain left behind: {:?}",
        our_domains()
    );

    // `mgear boot` killed (SIGKILL: no exit path runs) while its domain runs: the domain ran
    // on, holding the volume. The next libvirt boot removes it, and says so.
    let target = format!("libvirt:{POOL}/{}", vol.0.name);
    // Their reports in the test's directory (a libvirt boot's default is ./, which other
    // tests' boots then refused to overwrite).
    let report = dir.path().join("killed-report.json");
    let report = report.to_str().unwrap();
    let mut killed = Command::new(mgear_tests::bin("mgear"))
        .args(["boot", "--target", &target, "--wait-for", "never-printed"])
        .args(["--report", report])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let prefix = format!("mgear-boot-{}-", killed.id());
    let running = || {
        virsh(&["list", "--name"])
            .lines()
            .find(|l| l.starts_with(&prefix))
            .map(String::from)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let left = loop {
        if let Some(d) = running() {
            break d;
        }
        assert!(std::time::Instant::now() < deadline, "no domain {prefix}*");
        std::thread::sleep(Duration::from_millis(200));
    };
    // Killed once its domain has started (not in the middle of `virsh start`): a boot killed
    // then left a domain that ran on, which is what the next boot must find.
    while virsh(&["domstate", &left]).trim() != "running" {
        assert!(std::time::Instant::now() < deadline, "{left} never ran");
        std::thread::sleep(Duration::from_millis(200));
    }
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert_eq!(running().as_deref(), Some(left.as_str()), "the domain went");
    let o = Command::new(mgear_tests::bin("mgear"))
        .args([
            "boot",
            "--target",
            &target,
            "--wait-for",
            "never-printed",
            "--timeout",
            "1",
        ])
        .args(["--report", report])
        .output()
        .unwrap();
    let text = mgear_tests::output_text(&o);
    assert!(
        text.contains(&format!("removed libvirt domain {left}: a boot killed")),
        "{text}\nvirsh list --all: {}",
        virsh(&["list", "--all", "--name"])
    );
    assert!(
        !virsh(&["list", "--all", "--name"]).contains(&left),
        "{left} left behind"
    );
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// A machine of two disks ingested into two pool volumes and booted as one
/// libvirt domain: the sample's fstab mounts /srv by UUID from the second.
#[test]
fn a_two_disk_set_ingested_into_a_pool_boots_as_one_domain() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    start_libvirtd();
    let e = mgear_tests::Env::new();
    e.keygen();
    let (d0, d1) = e.sample_machine("virt-set");
    let m = e.fat("m.img", "256MiB");
    e.capture(&m, "vm01").sources(&[&d0, &d1]).ok();
    let base = unique("set").trim_end_matches(".raw").to_string();
    let vols: Vec<String> = (0..2).map(|k| format!("{base}-{k}.raw")).collect();
    struct Gone(Vec<String>);
    impl Drop for Gone {
        fn drop(&mut self) {
            for v in &self.0 {
                let _ = virsh(&["vol-delete", "--pool", POOL, v]);
            }
        }
    }
    let _gone = Gone(vols.clone());
    let target = format!("libvirt:{POOL}/{base}-{{disk}}.raw");
    let r = e
        .ingest(&m, "vm01")
        .untrusted()
        .target(&target)
        .args(&[
            "--boot",
            "--wait-for",
            "MGEAR-SRV-OK virt-set-srv",
            "--timeout",
            "300",
        ])
        .json();
    assert_eq!(r["booted"], true, "{r}");
    for (k, src) in [&d0, &d1].iter().enumerate() {
        let back = e.p(&format!("back-{k}.raw"));
        VolumeRef::lookup(DEFAULT_CONN, POOL, &vols[k])
            .unwrap()
            .download(&back)
            .unwrap();
        mgear_tests::same_file(&back, Path::new(src));
    }
    assert!(
        our_domains().is_empty(),
        "domain left behind: {:?}",
        our_domains()
    );
}
