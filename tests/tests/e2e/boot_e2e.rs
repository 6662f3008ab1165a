//! `mgear boot` end to end: build the sample disks, boot them under QEMU (TCG,
//! no network) and check the marker, the bus that fails, the boot report, and
//! the exit codes. Each real boot takes ~15-60 s under TCG, so there are only five.
//!
//! Needs qemu-system-x86, qemu-utils, busybox-static, linux-image-amd64,
//! grub-pc-bin, e2fsprogs, fdisk and ovmf installed, and `cargo build --workspace` first.

use std::path::Path;
use std::process::{Command, Output};

use mgear_tests::{bin, output_text as text, qemu_nbd};

fn mgear(args: &[&str]) -> Output {
    Command::new(bin("mgear"))
        .args(args)
        .output()
        .expect("run mgear")
}

/// `qemu-img create -f qcow2 ARGS IMAGE` (the size from a backing file or `-o size=`).
fn qcow2_over(image: &Path, args: &[&str]) {
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .args(args)
        .arg(image)
        .status()
        .expect("qemu-img (qemu-utils)");
    assert!(made.success(), "qemu-img create {args:?}");
}

/// `dir/zeros.raw`: `len` bytes of zeros (sparse), a disk with nothing to boot.
fn zeroed_disk(dir: &Path, len: u64) -> std::path::PathBuf {
    let disk = dir.join("zeros.raw");
    std::fs::File::create(&disk).unwrap().set_len(len).unwrap();
    disk
}

/// `mgear boot --target TARGET --report REPORT` with `extra` flags.
fn boot_reporting(target: &str, report: &Path, extra: &[&str]) -> Output {
    let report = report.to_str().unwrap();
    mgear(&[&["boot", "--target", target, "--report", report], extra].concat())
}

fn build_sample(path: &Path, drivers: &str, marker: Option<&str>) -> String {
    let p = path.to_str().expect("utf-8 temp path");
    let mut args = vec!["boot", "--build-sample", p, "--drivers", drivers];
    if let Some(m) = marker {
        args.extend(["--marker", m]);
    }
    let o = mgear(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // The result is on standard output, with `--json` as the one object.
    let mut json = args.clone();
    json.insert(0, "--json");
    let j = mgear(&json);
    assert_eq!(j.status.code(), Some(0), "{}", text(&j));
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).expect("one JSON object");
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(v["marker"].as_str().unwrap()),
        "{v}"
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn sample_disk_boots_on_virtio_with_marker_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("vol.raw");
    let first = build_sample(&disk, "all", None);
    assert!(first.contains("MGEAR-BOOT-OK sample-all"), "{first}");
    // Same options, same marker id.
    let second = build_sample(&disk, "all", None);
    assert_eq!(first, second);
    // A file that is no sample is not built over (it became a 64 MiB disk, exit 0).
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "keep me\n").unwrap();
    let o = mgear(&["boot", "--build-sample", notes.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("is not a sample disk mgear built"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "keep me\n");

    let target = format!("file:{}", disk.display());
    let o = mgear(&[
        "boot",
        "--target",
        &target,
        "--wait-for",
        "MGEAR-BOOT-OK sample-all",
        "--bus",
        "virtio",
        "--timeout",
        "300",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    assert_eq!(report["outcome"], "booted");
    assert_eq!(report["bus"], "virtio");
    assert_eq!(report["firmware"], "bios");
    assert_eq!(report["driver"], "local-qemu");
    assert_eq!(report["target"], target);
    assert_eq!(report["matched"], "MGEAR-BOOT-OK sample-all");
    assert!(report["time_to_marker_seconds"].as_f64().is_some());
    let console = report["console_log"].as_str().unwrap();
    // The marker was read from the mounted disk, after the virtio disk appeared.
    assert!(
        console.contains("root filesystem /dev/vda1 mounted"),
        "{console}"
    );
    let cmd: Vec<&str> = report["qemu_command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(cmd.windows(2).any(|w| w == ["-accel", "tcg"]), "{cmd:?}");
    assert!(cmd.windows(2).any(|w| w == ["-nic", "none"]), "{cmd:?}");
    assert!(!cmd.iter().any(|a| a.contains("kvm")), "{cmd:?}");

    // The report file next to the volume says the same.
    let saved = std::fs::read(dir.path().join("vol.raw.boot-report.json")).unwrap();
    let saved: serde_json::Value = serde_json::from_slice(&saved).unwrap();
    assert_eq!(saved["outcome"], "booted");
    assert_eq!(saved["matched"], report["matched"]);
}

#[test]
fn ide_only_disk_boots_on_ide_but_not_on_virtio() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("ide.raw");
    build_sample(&raw, "ide-only", Some("ide-proof-7"));

    // virtio: the initramfs has no driver, the root disk never appears, the
    // guest powers off without the marker -> exit 1 with the console tail.
    let report = dir.path().join("virtio-report.json");
    let o = mgear(&[
        "boot",
        "--target",
        &format!("file:{}", raw.display()),
        "--wait-for",
        "MGEAR-BOOT-OK ide-proof-7",
        "--bus",
        "virtio",
        "--timeout",
        "300",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("console tail"), "{}", text(&o));
    assert!(err.contains("MGEAR-BOOT-FAIL"), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["outcome"], "guest-stopped");
    assert!(r["matched"].is_null());

    // IDE, through a qcow2 copy of the volume: boots.
    let qcow = dir.path().join("ide.qcow2");
    let conv = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow)
        .output()
        .expect("qemu-img (qemu-utils)");
    assert!(conv.status.success(), "{conv:?}");
    let o = mgear(&[
        "boot",
        "--target",
        &format!("qcow2:{}", qcow.display()),
        "--wait-for",
        "MGEAR-BOOT-OK ide-proof-7",
        "--bus",
        "ide",
        "--timeout",
        "300",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("ide.qcow2.boot-report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(r["outcome"], "booted");
    assert_eq!(r["bus"], "ide");
    assert!(r["console_log"]
        .as_str()
        .unwrap()
        .contains("root filesystem /dev/sda1 mounted"));
}

/// Ctrl-C or SIGTERM during a boot stops the guest and ends the command, exit 3, with one
/// JSON object: SIGTERM killed it (exit 143, nothing on either stream, QEMU left behind), and
/// Ctrl-C was not heard (it ran to --timeout and called the disk unbootable, exit 1).
#[test]
fn a_stopped_boot_stops_its_guest_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("hang.raw");
    // An MBR that loops for ever: the firmware runs it, nothing is ever printed.
    let mut mbr = vec![0u8; 1 << 20];
    mbr[0] = 0xEB;
    mbr[1] = 0xFE;
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    std::fs::write(&disk, &mbr).unwrap();
    let target = format!("file:{}", disk.display());
    // A terminal's Ctrl-C goes to the whole foreground process group (QEMU killed by it was
    // told as a guest that powered off: "not booted", exit 1): the last case.
    for (signal, group) in [("-TERM", false), ("-INT", false), ("-INT", true)] {
        use std::os::unix::process::CommandExt;
        let child = Command::new(bin("mgear"))
            .args(["--json", "boot", "--target", &target, "--timeout", "300"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_secs(3));
        let asked = std::time::Instant::now();
        let whom = match group {
            true => format!("-{}", child.id()),
            false => child.id().to_string(),
        };
        let st = Command::new("kill")
            .args([signal, "--", &whom])
            .status()
            .unwrap();
        assert!(st.success());
        let o = child.wait_with_output().unwrap();
        assert!(
            asked.elapsed() < std::time::Duration::from_secs(20),
            "{signal}: {:?}",
            asked.elapsed()
        );
        assert_eq!(o.status.code(), Some(3), "{signal}: {}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{signal}: not one JSON object ({e}): {}", text(&o)));
        assert_eq!(v["ok"], false, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("stopped by Ctrl-C or SIGTERM"),
            "{v}"
        );
        assert!(
            v["error"]["hint"]
                .as_str()
                .unwrap_or_default()
                .starts_with("nothing is wrong with the volume"),
            "{v}"
        );
        let left = Command::new("pgrep")
            .args(["-f", &disk.display().to_string()])
            .output()
            .unwrap();
        assert!(
            left.stdout.is_empty(),
            "{signal}: a QEMU of the disk is left: {}",
            String::from_utf8_lossy(&left.stdout)
        );
    }
}

/// A partition table with no boot code in front of it (a GPT disk's protective MBR without
/// a BIOS boot loader, a data disk): SeaBIOS jumps into the zeros and hangs without a word,
/// and a boot (or a cutover's, with the source quiesced) waited out its whole --timeout.
/// Ended before the guest starts.
#[test]
fn a_partition_table_without_boot_code_ends_before_the_guest_starts() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("gpt.raw");
    let mut bytes = vec![0u8; 4 << 20];
    // A protective MBR entry (type 0xEE) and the signature, no code.
    bytes[446 + 4] = 0xee;
    bytes[446 + 8] = 1;
    bytes[446 + 12..446 + 16].copy_from_slice(&8191u32.to_le_bytes());
    bytes[510] = 0x55;
    bytes[511] = 0xaa;
    std::fs::write(&disk, &bytes).unwrap();
    let started = std::time::Instant::now();
    let o = mgear(&[
        "boot",
        "--target",
        &format!("file:{}", disk.display()),
        "--timeout",
        "120",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "waited for the deadline: {:?}",
        started.elapsed()
    );
    assert!(
        text(&o).contains("the disk's MBR has no boot code") && text(&o).contains("not started"),
        "{}",
        text(&o)
    );
    // No guest ran: no console to show; the next step is said as for every failure.
    assert!(!text(&o).contains("console tail"), "{}", text(&o));
    assert!(
        text(&o).contains("mgear: what to do: the guest was not started"),
        "{}",
        text(&o)
    );
    let r: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("gpt.raw.boot-report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(r["outcome"], "nothing-bootable", "{r}");
    // Nothing ran: no command is named as run (it listed QEMU's argv).
    assert!(r.get("command").is_none(), "{r}");
    // --json: one object, the report, carrying its error and no QEMU command; the partition
    // table's reason said once ("partition table: partition table: ...").
    let o = mgear(&[
        "boot",
        "--target",
        &format!("file:{}", disk.display()),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.lines().count(), 1, "{}", text(&o));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["error"]["code"], 1, "{v}");
    assert_eq!(v["error"]["kind"], "failure", "{v}");
    assert!(
        v["error"]["hint"].as_str().unwrap().contains("not started"),
        "{v}"
    );
    assert!(v.get("qemu_command").is_none(), "{v}");
    assert!(!out.contains("partition table: partition table"), "{v}");
    assert_eq!(std::fs::read(&disk).unwrap(), bytes, "the disk was changed");
}

#[test]
fn zeroed_disk_ends_early_as_nothing_bootable_with_console_tail() {
    let dir = tempfile::tempdir().unwrap();
    let disk = zeroed_disk(dir.path(), 16 << 20);
    let o = mgear(&[
        "boot",
        "--target",
        &format!("file:{}", disk.display()),
        "--timeout",
        "30",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("console tail"), "{}", text(&o));
    // SeaBIOS tried the disk and said so on the serial console.
    assert!(err.contains("Booting from Hard Disk"), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("zeros.raw.boot-report.json")).unwrap(),
    )
    .unwrap();
    // The firmware said it found nothing to boot: no waiting for --timeout.
    assert_eq!(r["outcome"], "nothing-bootable");
    assert!(
        !text(&o).contains("boots from the first --target"),
        "{}",
        text(&o)
    );
    // Two disks, the one with nothing to boot first: the order is named as the likely
    // cause (it was only "empty, not a system disk, or BIOS/UEFI mismatch").
    let data = dir.path().join("data.raw");
    std::fs::write(&data, vec![0x5a; 1 << 20]).unwrap();
    let o = mgear(&[
        "boot",
        "--target",
        &format!("file:{}", disk.display()),
        "--target",
        &format!("file:{}", data.display()),
        "--timeout",
        "30",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("the machine boots from the first --target")
            && text(&o).contains("give it first"),
        "{}",
        text(&o)
    );

    // `--report` naming the volume (or any file that is no boot report) wrote the report
    // over it: refused before the guest starts, the file untouched.
    let keep = dir.path().join("notes.txt");
    std::fs::write(&keep, "precious\n").unwrap();
    for (report, before) in [
        (&disk, std::fs::read(&disk).unwrap()),
        (&keep, b"precious\n".to_vec()),
    ] {
        let o = boot_reporting(
            &format!("file:{}", disk.display()),
            report,
            &["--timeout", "30"],
        );
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("never overwritten"), "{}", text(&o));
        assert!(!text(&o).contains("Booting from"), "{}", text(&o));
        assert_eq!(std::fs::read(report).unwrap(), before);
    }
    // An earlier boot report is replaced, and gone as soon as the next boot starts: a boot
    // stopped on the way left it beside the volume, read as that boot's.
    let earlier = dir.path().join("zeros.raw.boot-report.json");
    let mut old = r.clone();
    old["outcome"] = "booted".into();
    std::fs::write(&earlier, serde_json::to_vec_pretty(&old).unwrap()).unwrap();
    let mut child = Command::new(bin("mgear"))
        .args([
            "boot",
            "--target",
            &format!("file:{}", disk.display()),
            "--wait-for",
            "never",
            "--timeout",
            "30",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while earlier.exists() && t0.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let gone_early = !earlier.exists();
    assert_eq!(child.wait().unwrap().code(), Some(1));
    assert!(gone_early, "the earlier report stayed while the boot ran");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&earlier).unwrap()).unwrap();
    assert_eq!(r["outcome"], "nothing-bootable");
    // A volume that reads as an earlier report is still the volume: it was removed as one.
    let odd = dir.path().join("vol.json");
    std::fs::copy(&earlier, &odd).unwrap();
    let o = boot_reporting(
        &format!("file:{}/./vol.json", dir.path().display()),
        &odd,
        &["--timeout", "30"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("is a file the boot reads"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read(&odd).unwrap(),
        std::fs::read(&earlier).unwrap()
    );
    // A boot that cannot start leaves the earlier report alone.
    let o = boot_reporting(
        &format!("file:{}/missing.raw", dir.path().display()),
        &earlier,
        &["--timeout", "30"],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(earlier.exists());
    // ... nor does one refused before its guest starts (a --wait-for that proves nothing).
    let o = boot_reporting(
        &format!("file:{}", disk.display()),
        &earlier,
        &["--wait-for", "("],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(earlier.exists());
    // A qcow2's backing file is read by the boot too: never replaced as an earlier report
    // (it was deleted, and the boot then failed on it).
    let back = dir.path().join("back.json");
    std::fs::copy(&odd, &back).unwrap();
    let overlay = dir.path().join("ov.qcow2");
    qcow2_over(&overlay, &["-F", "raw", "-b", back.to_str().unwrap()]);
    let o = boot_reporting(
        &format!("qcow2:{}", overlay.display()),
        &back,
        &["--timeout", "30"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("is a file the boot reads"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&odd).unwrap());
    // ... also named `file:NAME`; and a report of another boot is no earlier report of this
    // one (a qcow2's external data file read like one, and was deleted).
    let k = dir.path().join("k.json");
    std::fs::copy(&odd, &k).unwrap();
    let kq = dir.path().join("kq.qcow2");
    qcow2_over(&kq, &["-F", "raw", "-b", &format!("file:{}", k.display())]);
    let df = dir.path().join("df.json");
    let dq = dir.path().join("dq.qcow2");
    qcow2_over(
        &dq,
        &[
            "-o",
            &format!("data_file={},data_file_raw=on,size=16M", df.display()),
        ],
    );
    std::fs::copy(&odd, &df).unwrap();
    for (image, report) in [(&kq, &k), (&dq, &df)] {
        let o = boot_reporting(
            &format!("qcow2:{}", image.display()),
            report,
            &["--timeout", "30"],
        );
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("never overwritten"), "{}", text(&o));
        assert_eq!(std::fs::read(report).unwrap(), std::fs::read(&odd).unwrap());
    }
}

#[test]
fn usage_and_io_errors_have_their_exit_codes() {
    let o = mgear(&["boot", "--target", "s3://bucket/vol", "--timeout", "5"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // A Cinder volume says how it is booted (it said only "cannot be booted").
    let o = mgear(&["boot", "--target", "cinder:web01", "--timeout", "5"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--boot --flavor") && text(&o).contains("rbd:POOL/volume-ID"),
        "{}",
        text(&o)
    );
    let o = mgear(&[
        "boot",
        "--target",
        "file:/nonexistent/vol.raw",
        "--timeout",
        "5",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let o = mgear(&[
        "boot",
        "--target",
        "file:/dev/null",
        "--wait-for",
        "(",
        "--timeout",
        "5",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = mgear(&["boot", "--target", "file:/dev/null", "--bus", "scsi"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // QEMU itself fails (no memory for the guest): exit 3, and --json prints one object, the
    // report with its error (it printed the report, then an error object after it).
    let dir = tempfile::tempdir().unwrap();
    let disk = zeroed_disk(dir.path(), 1 << 20);
    let o = mgear(&[
        "boot",
        "--target",
        &format!("file:{}", disk.display()),
        "--memory",
        "1048576",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.lines().count(), 1, "{}", text(&o));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["outcome"], "qemu-failed", "{v}");
    assert_eq!(v["error"]["code"], 3, "{v}");
    assert_eq!(v["error"]["kind"], "io", "{v}");
    assert!(v["qemu_command"].is_array(), "{v}");
}

#[test]
fn gpt_esp_disk_over_nbd_runs_uefi_firmware_automatically() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("uefi.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mut sf = Command::new("sfdisk")
        .arg("--quiet")
        .arg(&disk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sfdisk (fdisk package)");
    std::io::Write::write_all(
        &mut sf.stdin.take().unwrap(),
        b"label: gpt\n,32MiB,U\n,,L\n",
    )
    .unwrap();
    assert!(sf.wait().unwrap().success());
    // Served over NBD (qemu-nbd on a Unix socket): the firmware is detected
    // through the export and QEMU opens the nbd+unix URL itself.
    let sock = dir.path().join("nbd.sock");
    let _server = qemu_nbd(&["-f", "raw", "-x", "vol", "-t"], &sock, &disk);
    let url = format!("nbd+unix:///vol?socket={}", sock.display());
    let report = dir.path().join("nbd-report.json");
    // No OS on the disk: OVMF's boot manager runs (only when UEFI firmware was chosen
    // from the GPT + ESP layout) and finds nothing to boot. Its own lines are no proof
    // of a boot: a --wait-for that matches them is refused before anything starts.
    let o = mgear(&["boot", "--target", &url, "--wait-for", "BdsDxe"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("matches what the firmware itself prints"),
        "{}",
        text(&o)
    );
    let o = mgear(&[
        "boot",
        "--target",
        &url,
        "--wait-for",
        "MGEAR-BOOT-OK no-os-here",
        "--timeout",
        "180",
        "--json",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["outcome"], "nothing-bootable", "{r}");
    assert!(r["console_log"].as_str().unwrap().contains("BdsDxe"), "{r}");
    assert_eq!(r["target"], url);
    assert_eq!(r["firmware"], "uefi");
    assert!(r["firmware_reason"]
        .as_str()
        .unwrap()
        .contains("EFI System Partition"));
    assert!(r["qemu_command"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a.as_str().unwrap().contains("OVMF_CODE")));
    assert!(report.exists());
}

/// The README's first command: `mgear demo` runs the whole journey (sample
/// disk, site and target keys, appliance simulator, signed capture, seal,
/// arrival, pinned-trust ingest, bit-for-bit compare, boot with proof).
#[test]
fn demo_runs_the_whole_journey_with_pinned_trust() {
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(bin("mgear"))
        .args(["demo", "--json", "--workdir"])
        .arg(work.path())
        .output()
        .expect("run mgear demo");
    let t = text(&out);
    assert!(out.status.success(), "demo failed:\n{t}");
    // With --json: one object on stdout, the steps' lines on stderr and no JSON objects of
    // their own there (seven, each labelled "demo").
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(
        (v["ok"].clone(), v["command"].clone()),
        (true.into(), "demo".into())
    );
    assert!(v["steps"].as_array().is_some_and(|s| s.len() >= 5), "{v}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.lines().any(|l| l.starts_with('{')), "{err}");
    assert!(err.contains("appliance fingerprint"), "{t}");
    // The demo ingests only under pinned keys: no override is taken.
    assert!(!t.contains("--allow-untrusted"), "{t}");
    assert!(!t.contains("WARNING"), "{t}");
}
