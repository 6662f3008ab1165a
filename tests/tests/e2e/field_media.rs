//! Field-proof media and volumes (issues #13, #15 item 5): FAT32 media of
//! 2, 4 and 16 TiB (sparse images) format and carry a capture end to end,
//! also through the appliance simulator; a size that cannot work is refused
//! before any file exists; formatting over a file system or partition table
//! needs `--force` and wipes the old signatures (checked with `blkid -p`);
//! every medium gets its own serial; `ingest --target dev:` over a disk
//! holding a partition table needs `--force`; `mgear boot` leaves the volume
//! bit-identical unless `--write` and gives up at once on a disk the
//! firmware cannot boot.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};

use mgear_tests::{output_text as text, same_file, Env, Line, Loop};
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use crate::appliance_util::Lab;

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn sha(p: &Path) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(fs::read(p).unwrap());
    h.finalize().to_vec()
}

/// Bytes a sparse file really occupies.
fn allocated(p: &Path) -> u64 {
    fs::metadata(p).unwrap().blocks() * 512
}

/// `blkid -p` of a file or device: the probed TYPE values (empty: nothing).
fn blkid_types(p: &Path) -> Vec<String> {
    let o = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(p)
        .output()
        .expect("blkid (Debian util-linux)");
    out(&o)
        .lines()
        .filter_map(|l| {
            l.strip_prefix("TYPE=")
                .or_else(|| l.strip_prefix("PTTYPE="))
        })
        .map(str::to_owned)
        .collect()
}

fn blkid_uuid(p: &Path) -> String {
    let o = Command::new("blkid")
        .args(["-p", "-s", "UUID", "-o", "value"])
        .arg(p)
        .output()
        .expect("blkid (Debian util-linux)");
    out(&o).trim().to_owned()
}

fn random_disk(p: &Path, mib: usize, seed: u64) {
    let mut d = vec![0u8; mib << 20];
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    for (i, c) in d.chunks_mut(1 << 20).enumerate() {
        if i % 3 != 1 {
            rng.fill_bytes(c);
        }
    }
    fs::write(p, d).unwrap();
}

/// Site and target keys in `e`.
fn keys(e: &Env) {
    e.keygen();
    e.ok(&["keygen", "--signing", "--out", "site.key"]);
}

/// Format `name` at `size`, capture, verify and ingest through it; the
/// image stays sparse. Returns the format command's output.
fn journey(e: &Env, name: &str, size: &str) -> String {
    let f = e.ok(&["medium", "format", &format!("fat:{name}"), "--size", size]);
    let m = format!("fat:{name}");
    #[rustfmt::skip]
    e.capture(&m, "web01").source("disk.raw").sign("site.key").ok();
    e.ok(&["verify", "--medium", &m, "--trust", "site.pub"]);
    let vol = format!("file:{name}.vol");
    #[rustfmt::skip]
    e.ingest(&m, "web01").target(&vol).trust("site.pub").unsealed().ok();
    same_file(&e.p("disk.raw"), &e.p(&format!("{name}.vol")));
    assert!(
        allocated(&e.p(name)) < 64 << 20,
        "{name} ({size}) is not sparse: {} bytes allocated",
        allocated(&e.p(name))
    );
    out(&f)
}

#[test]
fn field_media_2_4_and_16_tib_images_carry_a_capture() {
    let e = Env::new();
    keys(&e);
    random_disk(&e.p("disk.raw"), 5, 1);
    // The README's example size: 512-byte sectors still reach it.
    let two = journey(&e, "m2.img", "2TiB");
    assert!(two.contains("512-byte sectors"), "{two}");
    fs::remove_file(e.p("m2.img")).unwrap();
    let four = journey(&e, "m4.img", "4TiB");
    assert!(
        four.contains("4096-byte sectors") && four.contains("64.00 KiB clusters"),
        "{four}"
    );
    // fsck.fat agrees the 4 KiB-sector volume is clean after a capture.
    let fsck = Command::new("fsck.fat")
        .arg("-n")
        .arg(e.p("m4.img"))
        .output()
        .unwrap();
    assert!(fsck.status.success(), "fsck.fat: {}", text(&fsck));
    assert!(blkid_types(&e.p("m4.img")).contains(&"vfat".to_string()));
    fs::remove_file(e.p("m4.img")).unwrap();
    // 16 TiB: the image is the 16 TiB - 4 KiB FAT32 can address.
    let sixteen = journey(&e, "m16.img", "16TiB");
    assert!(
        sixteen.contains("4096-byte sectors") && sixteen.contains("128.00 KiB clusters"),
        "{sixteen}"
    );
    assert_eq!(
        fs::metadata(e.p("m16.img")).unwrap().len(),
        (16u64 << 40) - 4096
    );
}

#[test]
fn field_media_impossible_size_is_refused_before_any_file_exists() {
    let e = Env::new();
    let o = e.run(&["medium", "format", "fat:big.img", "--size", "17TiB"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("16 TiB"), "{}", text(&o));
    assert!(!e.p("big.img").exists(), "a refused format left a file");
    let o = e.run(&["medium", "format", "fat:small.img", "--size", "10MiB"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!e.p("small.img").exists());
}

fn mkfs_ext4(p: &Path, mib: u64) {
    fs::File::create(p).unwrap().set_len(mib << 20).unwrap();
    let o = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(p)
        .output()
        .expect("mkfs.ext4 (Debian e2fsprogs)");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(blkid_types(p), ["ext4"]);
}

/// Ctrl-C or SIGTERM during `medium format`: it died by the signal mid-write, and a cut at
/// the wrong moment left a FAT32 volume that read as damaged (advised a repair by hand, and a
/// re-run refused it without --force). Now the format finishes (its boot sector is written
/// last), and whatever moment the signal comes, the image is never a damaged FAT32.
#[test]
fn field_media_a_signal_during_format_never_leaves_a_damaged_medium() {
    use std::os::unix::process::ExitStatusExt;
    let e = Env::new();
    let mut finished_after_signal = 0;
    for delay_ms in (0..=120).step_by(10) {
        let _ = fs::remove_file(e.p("f.img"));
        let child = e
            .cmd(&["medium", "format", "fat:f.img", "--size", "8GiB"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let o = child.wait_with_output().unwrap();
        let said = text(&o);
        if o.status.code() == Some(0) {
            let i = e.run(&["inspect", "--medium", "fat:f.img"]);
            assert_eq!(i.status.code(), Some(0), "{delay_ms} ms: {}", text(&i));
            finished_after_signal += usize::from(said.contains("finishing the format first"));
        } else {
            // Only before the handler is in place (the process starting up).
            assert_eq!(o.status.signal(), Some(15), "{delay_ms} ms: {said}");
            if e.p("f.img").exists() {
                let i = e.run(&["inspect", "--medium", "fat:f.img"]);
                assert_ne!(i.status.code(), Some(0), "{delay_ms} ms: {}", text(&i));
                assert!(!text(&i).contains("damaged"), "{delay_ms} ms: {}", text(&i));
            }
        }
    }
    assert!(
        finished_after_signal > 0,
        "no signal landed during a format: nothing was checked"
    );
}

#[test]
fn field_media_format_over_ext4_needs_force_and_wipes_it() {
    let e = Env::new();
    // An image file formatted in place (no --size).
    mkfs_ext4(&e.p("old.img"), 64);
    let before = sha(&e.p("old.img"));
    // Given as a medium to read, it is named for what it holds (only "no boot sector
    // signature" was said).
    let o = e.run(&["inspect", "--medium", "fat:old.img"]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("(it holds an ext4 file system)"),
        "{}",
        text(&o)
    );
    let o = e.run(&["medium", "format", "fat:old.img"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("ext4 file system"), "{}", text(&o));
    assert_eq!(
        sha(&e.p("old.img")),
        before,
        "a refused format changed the image"
    );
    let o = e.ok(&["medium", "format", "fat:old.img", "--force"]);
    assert!(
        out(&o).contains("wiped an ext4 file system"),
        "{}",
        text(&o)
    );
    assert_eq!(blkid_types(&e.p("old.img")), ["vfat"]);

    // A block device: the same guard, and no ext4 left for blkid or wipefs.
    mkfs_ext4(&e.p("dev.img"), 64);
    let dev = Loop::attach(&e.p("dev.img"));
    let spec = format!("fat:{}", dev.0);
    let o = e.run(&["medium", "format", &spec]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("ext4"), "{}", text(&o));
    e.ok(&["medium", "format", &spec, "--force"]);
    assert_eq!(blkid_types(Path::new(&dev.0)), ["vfat"]);
    let w = Command::new("wipefs")
        .arg("-n")
        .arg(&dev.0)
        .output()
        .unwrap();
    assert!(
        !out(&w).contains("ext4"),
        "wipefs still sees ext4: {}",
        text(&w)
    );

    // Every medium gets its own serial.
    e.ok(&["medium", "format", "fat:a.img", "--size", "64MiB"]);
    e.ok(&["medium", "format", "fat:b.img", "--size", "64MiB"]);
    let (a, b) = (blkid_uuid(&e.p("a.img")), blkid_uuid(&e.p("b.img")));
    assert_ne!(a, b);
    assert_ne!(a, "1234-5678");
    assert_eq!(a.len(), 9, "{a}");
    // A second format of a medium (it holds FAT32 now) needs --force too.
    let o = e.run(&["medium", "format", "fat:a.img", "--size", "64MiB"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("FAT32"), "{}", text(&o));
    // Holding captures, they are named: in the refusal, and in what --force wiped.
    e.keygen();
    std::fs::write(e.p("tiny.raw"), vec![9u8; 1 << 20]).unwrap();
    e.capture("fat:a.img", "web01").source("tiny.raw").ok();
    let o = e.run(&["medium", "format", "fat:a.img"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("with MotionGear capture web01"),
        "{}",
        text(&o)
    );
    let o = e.ok(&["medium", "format", "fat:a.img", "--force"]);
    assert!(
        out(&o).contains("wiped a FAT32 file system with MotionGear capture web01"),
        "{}",
        text(&o)
    );

    // Data in no format the guard knows (an ingested volume of a bare disk, random bytes)
    // was formatted in place with no question, as the refusal of --size pointed.
    let mut data = vec![0u8; 40 << 20];
    for (i, b) in data.iter_mut().enumerate().skip(20 << 20) {
        *b = (i * 7 % 251) as u8;
    }
    std::fs::write(e.p("vol.raw"), &data).unwrap();
    let before = sha(&e.p("vol.raw"));
    let o = e.run(&["medium", "format", "fat:vol.raw"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("holds data"), "{}", text(&o));
    assert_eq!(sha(&e.p("vol.raw")), before);
    e.ok(&["medium", "format", "fat:vol.raw", "--force"]);
    // An image made empty (`truncate`) is formatted in place as before.
    std::fs::File::create(e.p("empty.img"))
        .unwrap()
        .set_len(40 << 20)
        .unwrap();
    e.ok(&["medium", "format", "fat:empty.img"]);
}

#[test]
fn field_media_ingest_onto_a_partitioned_device_needs_force() {
    let e = Env::new();
    keys(&e);
    random_disk(&e.p("disk.raw"), 3, 2);
    fs::create_dir(e.p("mnt")).unwrap();
    #[rustfmt::skip]
    e.capture("dir:mnt", "web01").source("disk.raw").sign("site.key").ok();
    // A "cloud volume" that still holds someone's MBR partition table.
    fs::File::create(e.p("vol.img"))
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let mut sf = Command::new("sfdisk")
        .arg("-q")
        .arg(e.p("vol.img"))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk (Debian fdisk)");
    use std::io::Write;
    sf.stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\n,,83\n")
        .unwrap();
    assert!(sf.wait().unwrap().success());
    assert_eq!(blkid_types(&e.p("vol.img")), ["dos"]);
    let dev = Loop::attach(&e.p("vol.img"));
    let target = format!("dev:{}", dev.0);
    let state = e.s("ingest-state");
    let ingest = e
        .ingest("dir:mnt", "web01")
        .target(&target)
        .trust("site.pub")
        .unsealed()
        .args(&["--state-dir", &state]);
    let before = sha(Path::new(&dev.0));
    let o = ingest.run();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("MBR partition table"), "{}", text(&o));
    assert_eq!(
        sha(Path::new(&dev.0)),
        before,
        "a refused ingest wrote to the device"
    );
    ingest.arg("--force").ok();
    drop(dev);
    let vol = fs::read(e.p("vol.img")).unwrap();
    assert!(vol[..3 << 20] == fs::read(e.p("disk.raw")).unwrap()[..]);
}

#[test]
fn field_media_boot_keeps_the_volume_and_gives_up_on_nothing_bootable() {
    let e = Env::new();
    fs::File::create(e.p("zero.raw"))
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let before = sha(&e.p("zero.raw"));
    let started = std::time::Instant::now();
    #[rustfmt::skip]
    let o = e.run(&["boot", "--target", "file:zero.raw", "--timeout", "600", "--firmware", "bios",
                    "--report", "r1.json"]);
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("found nothing to boot"), "{}", text(&o));
    // No wait would help: the hint does not offer one.
    assert!(
        text(&o).contains("a longer --timeout does not help"),
        "{}",
        text(&o)
    );
    // A volume an ingest is writing now is named as such (it said to run that ingest again,
    // which is refused while it runs).
    {
        let mut writer = std::process::Command::new("sh")
            .arg("-c")
            .arg("exec 3<>\"$1\"; exec sleep 30")
            .arg("sh")
            .arg(e.p("busy.raw.partial"))
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let b = e.run(&["boot", "--target", "file:busy.raw"]);
        let _ = writer.kill();
        let _ = writer.wait();
        assert_eq!(b.status.code(), Some(3), "{}", text(&b));
        assert!(text(&b).contains("is writing"), "{}", text(&b));
    }
    // It ends on the firmware's verdict, not at the deadline.
    assert!(took.as_secs() < 300, "gave up only after {took:?}");
    let r: serde_json::Value = serde_json::from_slice(&fs::read(e.p("r1.json")).unwrap()).unwrap();
    assert_eq!(r["outcome"], "nothing-bootable", "{r}");
    let cmd: Vec<String> = serde_json::from_value(r["command"].clone()).unwrap();
    assert!(cmd.iter().any(|a| a == "-snapshot"), "{cmd:?}");
    assert_eq!(sha(&e.p("zero.raw")), before, "boot changed the volume");
    // --write lets the guest write (no overlay); --snapshot is still accepted.
    #[rustfmt::skip]
    let o = e.run(&["boot", "--target", "file:zero.raw", "--timeout", "600", "--firmware", "bios",
                    "--report", "r2.json", "--write"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&fs::read(e.p("r2.json")).unwrap()).unwrap();
    let cmd: Vec<String> = serde_json::from_value(r["command"].clone()).unwrap();
    assert!(!cmd.iter().any(|a| a == "-snapshot"), "{cmd:?}");
    #[rustfmt::skip]
    let o = e.run(&["boot", "--target", "file:zero.raw", "--timeout", "600", "--firmware", "bios",
                    "--report", "r3.json", "--snapshot"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn field_media_appliance_simulator_on_a_4_tib_medium() {
    let mut lab = Lab::new(40);
    // Replace the lab's small medium with a 4 TiB one formatted by mgear.
    let img = lab.s("medium.img");
    lab.ok(&[
        "medium",
        "format",
        &format!("fat:{img}"),
        "--size",
        "4TiB",
        "--force",
    ]);
    lab.keygen();
    lab.make_disk(4, 3);
    lab.start();
    lab.provision_and_unlock();
    let c = lab.capture();
    assert_eq!(c["generation"], 1, "{c}");
    // The firmware's FAT engine (lamfat, 4096-byte sectors) reads what the
    // host's fatfs wrote through the simulator's NBD export.
    let v = lab.appliance_json(&["verify"]);
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(v["captures"], 1, "{v}");
    lab.stop();
    let m = format!("fat:{img}");
    lab.ok(&["verify", "--medium", &m, "--allow-untrusted"]);
    Line::ingest(&lab, "web01")
        .medium(&m)
        .target("file:vol.raw")
        .untrusted()
        .unsealed()
        .ok();
    same_file(&lab.p("disk.raw"), &lab.p("vol.raw"));
    assert!(allocated(&lab.p("medium.img")) < 64 << 20);
}

/// A capture directory left with no generation (a capture stopped at its very start, or a
/// stray directory) is one problem of the medium: keyed verify reports it and still checks
/// everything else, where it once stopped at "capture zz not found".
#[test]
fn field_media_an_empty_capture_directory_does_not_stop_a_keyed_verify() {
    let e = Env::new();
    keys(&e);
    random_disk(&e.p("disk.raw"), 3, 5);
    fs::create_dir(e.p("mnt")).unwrap();
    e.capture("dir:mnt", "web01").source("disk.raw").ok();
    fs::create_dir(e.p("mnt/MGEAR/zz")).unwrap();
    // And one whose only generation never finished: a finding too (it was exit 2).
    fs::create_dir_all(e.p("mnt/MGEAR/yy/G0001")).unwrap();
    let o = e.run(&[
        "verify",
        "--medium",
        "dir:mnt",
        "--identity",
        "target.key",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let problems = v["problems"].to_string();
    assert!(
        problems.contains("zz") && problems.contains("holds no generation"),
        "{v}"
    );
    assert!(
        v["records"].as_u64() >= Some(1),
        "web01 was still checked: {v}"
    );
}

/// The newest generation's MANIFEST lost after it was signed: ingest without --generation
/// refuses (it once went back to generation 1 silently, exit 0), names the intact one, and
/// ingests that one when asked for it by number.
#[test]
fn field_media_a_signed_generation_that_lost_its_manifest_is_not_skipped_silently() {
    let e = Env::new();
    keys(&e);
    random_disk(&e.p("disk.raw"), 3, 6);
    fs::create_dir(e.p("mnt")).unwrap();
    e.capture("dir:mnt", "web01")
        .source("disk.raw")
        .sign("site.key")
        .ok();
    fs::copy(e.p("disk.raw"), e.p("g1.raw")).unwrap();
    random_disk(&e.p("disk.raw"), 3, 7);
    #[rustfmt::skip]
    e.capture("dir:mnt", "web01").source("disk.raw").sign("site.key").arg("--delta").ok();
    fs::remove_file(e.p("mnt/MGEAR/web01/G0002/MANIFEST")).unwrap();
    let o = e
        .ingest("dir:mnt", "web01")
        .target("file:vol.raw")
        .trust("site.pub")
        .run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("generation 2 was finished (its COMMIT is written)"),
        "{}",
        text(&o)
    );
    assert!(!e.p("vol.raw").exists());
    // inspect fails it without blaming the file system (it said "the medium's file system
    // is damaged", where fsck.fat found it clean).
    let o = e.run(&["inspect", "--medium", "dir:mnt"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("what a capture on the medium holds is damaged")
            && !text(&o).contains("file system is damaged"),
        "{}",
        text(&o)
    );
    // Its COMMIT gone as well: the journal still says it finished (it was
    // warned about as "stopped before its end" and generation 1 installed).
    fs::remove_file(e.p("mnt/MGEAR/web01/G0002/COMMIT")).unwrap();
    let o = e
        .ingest("dir:mnt", "web01")
        .target("file:vol.raw")
        .trust("site.pub")
        .run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("generation 2 was finished (its journal says it finished)"),
        "{}",
        text(&o)
    );
    assert!(!e.p("vol.raw").exists());
    #[rustfmt::skip]
    e.ingest("dir:mnt", "web01").target("file:vol.raw").trust("site.pub").arg("--generation").arg("1").ok();
    same_file(&e.p("vol.raw"), &e.p("g1.raw"));
}

/// A generation directory renamed away (`G0002` to `G2`) is invisible to every reader: verify
/// said OK and ingest used generation 1. Verify names the stray directory.
#[test]
fn field_media_a_renamed_generation_directory_is_reported() {
    let e = Env::new();
    keys(&e);
    random_disk(&e.p("disk.raw"), 3, 6);
    fs::create_dir(e.p("mnt")).unwrap();
    e.capture("dir:mnt", "web01").source("disk.raw").ok();
    random_disk(&e.p("disk.raw"), 3, 7);
    #[rustfmt::skip]
    e.capture("dir:mnt", "web01").source("disk.raw").arg("--delta").ok();
    fs::rename(e.p("mnt/MGEAR/web01/G0002"), e.p("mnt/MGEAR/web01/G2")).unwrap();
    let o = e.run(&["verify", "--medium", "dir:mnt"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("not a generation"), "{}", text(&o));
    // Ingest took generation 1, exit 0, "verified bit-for-bit": an older disk than the one
    // shipped. Refused; `--generation 1` installs it on purpose.
    let o = e
        .ingest("dir:mnt", "web01")
        .untrusted()
        .target("file:v.raw")
        .run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("MGEAR/web01/G2, a directory no generation is named")
            && text(&o).contains("give --generation 1"),
        "{}",
        text(&o)
    );
    assert!(!e.p("v.raw").exists());
    #[rustfmt::skip]
    e.ingest("dir:mnt", "web01").untrusted().target("file:v.raw").args(&["--generation", "1"]).ok();
}

/// One zero byte where generation 2's directory lists its first entry (`..`) ends its
/// listing: the generation read as a capture stopped before its MANIFEST, and the older one
/// was installed, exit 0, with a warning that it was "not finished". The clusters its files
/// still hold on a medium closed cleanly say it was damaged: refused, --generation 1 named.
#[test]
fn a_generation_whose_files_are_gone_from_its_directory_is_refused() {
    let e = Env::new();
    keys(&e);
    random_disk(&e.p("disk.raw"), 3, 16);
    let m = e.fat("m.img", "64MiB");
    e.capture(&m, "web01").source("disk.raw").ok();
    fs::copy(e.p("disk.raw"), e.p("g1.raw")).unwrap();
    random_disk(&e.p("disk.raw"), 3, 17);
    e.capture(&m, "web01")
        .source("disk.raw")
        .arg("--delta")
        .ok();
    edit_dir(&e, "m.img", "MGEAR/WEB01/G0002", |img, dir, len| {
        let entry = entry_named(img, dir, len, b"..         ");
        img[entry] = 0;
    });
    // Verify says so of the generation too, not a leftover to remove beside the finding
    // that says not to write the medium.
    let o = e.run(&["verify", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("its files may be among them") && !text(&o).contains("--repair` removes"),
        "{}",
        text(&o)
    );
    let o = e.ingest(&m, "web01").untrusted().target("file:v.raw").run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("generation 2 has no MANIFEST")
            && text(&o).contains("marked in use by no file")
            && text(&o).contains("Give --generation 1"),
        "{}",
        text(&o)
    );
    assert!(!e.p("v.raw").exists());
    #[rustfmt::skip]
    e.ingest(&m, "web01").untrusted().target("file:v.raw").args(&["--generation", "1"]).ok();
    same_file(&e.p("v.raw"), &e.p("g1.raw"));
}

/// One byte (0xE5) marks a FAT directory entry deleted: generation 2's, and the older
/// generation was ingested, exit 0, while `verify` said the medium was clean; a capture's,
/// and ingest said "there is no capture: pass one with --name". The clusters nothing holds
/// are a verify finding, named by what they held, and ingest refuses both.
#[test]
fn a_deleted_generation_or_capture_entry_is_found_and_refused() {
    let e = Env::new();
    keys(&e);
    random_disk(&e.p("disk.raw"), 3, 6);
    let m = e.fat("m.img", "64MiB");
    e.capture(&m, "web01").source("disk.raw").ok();
    fs::copy(e.p("disk.raw"), e.p("g1.raw")).unwrap();
    random_disk(&e.p("disk.raw"), 3, 7);
    e.capture(&m, "web01")
        .source("disk.raw")
        .arg("--delta")
        .ok();
    e.ok(&["verify", "--medium", &m]);
    let clean = fs::read(e.p("m.img")).unwrap();
    edit_dir(&e, "m.img", "MGEAR/WEB01", |img, dir, len| {
        let entry = entry_named(img, dir, len, b"G0002      ");
        img[entry] = 0xe5;
    });
    let o = e.run(&["verify", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("marked in use by no file or directory")
            && text(&o).contains("a generation's directory (it holds"),
        "{}",
        text(&o)
    );
    let o = e.run(&["inspect", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("MGEAR/web01/? (a generation's directory whose entry was deleted"),
        "{}",
        text(&o)
    );
    let o = e.ingest(&m, "web01").untrusted().target("file:v.raw").run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("a generation's directory whose entry in MGEAR/web01 was deleted")
            && text(&o).contains("give --generation 1"),
        "{}",
        text(&o)
    );
    assert!(!e.p("v.raw").exists());
    #[rustfmt::skip]
    e.ingest(&m, "web01").untrusted().target("file:v.raw").args(&["--generation", "1"]).ok();
    same_file(&e.p("v.raw"), &e.p("g1.raw"));
    // The same with the dirty mark set: it read as what a cut write leaves, so verify and
    // ingest took generation 1 as the newest, exit 0, and `medium fsck --repair` (or any
    // capture) freed generation 2 for good.
    fs::write(e.p("m.img"), &clean).unwrap();
    edit_dir(&e, "m.img", "MGEAR/WEB01", |img, dir, len| {
        let entry = entry_named(img, dir, len, b"G0002      ");
        img[entry] = 0xe5;
    });
    let mut img = fs::read(e.p("m.img")).unwrap();
    img[0x41] |= 1;
    fs::write(e.p("m.img"), &img).unwrap();
    let o = e.run(&["verify", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("a generation's directory (it holds"),
        "{}",
        text(&o)
    );
    let o = e.ingest(&m, "web01").untrusted().target("file:d.raw").run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("give --generation 1"), "{}", text(&o));
    let o = e.run(&["medium", "fsck", "--medium", &m, "--repair"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        !text(&o).contains("freeing nothing a file holds"),
        "{}",
        text(&o)
    );
    random_disk(&e.p("other.raw"), 1, 9);
    let o = e.capture(&m, "other").source("other.raw").run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        fs::read(e.p("m.img")).unwrap() == img,
        "the medium was changed"
    );
    // Its directory mark cleared instead (a file of size 0 holding the directory's chain):
    // verify said "lost space ... `medium fsck --repair` frees it", which frees generation
    // 2, and ingest stopped on "G0002: Not a directory".
    fs::write(e.p("m.img"), &clean).unwrap();
    edit_dir(&e, "m.img", "MGEAR/WEB01", |img, dir, len| {
        let entry = entry_named(img, dir, len, b"G0002      ");
        img[entry + 11] = 0x20;
    });
    let o = e.run(&["verify", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("lost its directory mark") && !text(&o).contains("--repair` frees it"),
        "{}",
        text(&o)
    );
    let o = e
        .ingest(&m, "web01")
        .untrusted()
        .target("file:v2.raw")
        .run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("its directory mark damaged") && text(&o).contains("give --generation 1"),
        "{}",
        text(&o)
    );
    // The capture's own entry deleted: damage, not a mistyped name.
    fs::write(e.p("m.img"), &clean).unwrap();
    edit_dir(&e, "m.img", "MGEAR", |img, dir, len| {
        let entry = entry_named(img, dir, len, b"WEB01      ");
        img[entry] = 0xe5;
    });
    let o = e.ingest(&m, "web01").untrusted().target("file:w.raw").run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("a capture's directory whose entry in MGEAR was deleted or damaged")
            && !text(&o).contains("pass one with --name"),
        "{}",
        text(&o)
    );
    let o = e.run(&["verify", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("a capture's directory"), "{}", text(&o));
    // A capture onto it is refused, the medium unchanged (one under the hidden capture's
    // name went on, exit 0, without a word).
    let hidden = fs::read(e.p("m.img")).unwrap();
    let o = e.capture(&m, "web01").source("disk.raw").run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("marked in use by no file or directory")
            && text(&o).contains("nothing was written"),
        "{}",
        text(&o)
    );
    assert!(
        fs::read(e.p("m.img")).unwrap() == hidden,
        "the medium was changed"
    );
    // Renamed by one byte (WEB01 to WXB01): its manifests still say web01.
    fs::write(e.p("m.img"), &clean).unwrap();
    edit_dir(&e, "m.img", "MGEAR", |img, dir, len| {
        let entry = entry_named(img, dir, len, b"WEB01      ");
        img[entry + 1] = b'X';
    });
    let o = e.ingest(&m, "web01").untrusted().target("file:w.raw").run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("say they are \"web01\"'s") && !text(&o).contains("pass one with --name"),
        "{}",
        text(&o)
    );
    // Directory marks lost (attribute 0x10 to 0x20) where the walk goes through: on the
    // capture's only generation verify said "holds no generation: `medium rm` removes it",
    // inspect exited 0 and ingest said "stopped before it finished"; on the capture's or
    // MGEAR's entry it was exit 3, "Not a directory" and "reconnect it".
    let e = Env::new();
    keys(&e);
    random_disk(&e.p("disk.raw"), 2, 8);
    let m = e.fat("m.img", "64MiB");
    e.capture(&m, "web01").source("disk.raw").ok();
    let clean = fs::read(e.p("m.img")).unwrap();
    let unmark = |dir: &str, name: &[u8; 11]| {
        fs::write(e.p("m.img"), &clean).unwrap();
        let edit = |img: &mut [u8], d: usize, len: usize| {
            let entry = entry_named(img, d, len, name);
            img[entry + 11] = 0x20;
        };
        if dir.is_empty() {
            // The root directory, where the boot sector says it starts.
            let mut img = clean.clone();
            let geo = image_format::store::fatmap::Geometry::parse(&img[..512]).unwrap();
            let at = geo.data_offset + u64::from(geo.root_cluster - 2) * geo.cluster_bytes;
            edit(&mut img, at as usize, geo.cluster_bytes as usize);
            fs::write(e.p("m.img"), &img).unwrap();
        } else {
            edit_dir(&e, "m.img", dir, edit);
        }
    };
    unmark("MGEAR/WEB01", b"G0001      ");
    for args in [
        vec!["verify", "--medium", &m],
        vec!["verify", "--medium", &m, "--identity", "target.key"],
    ] {
        let o = e.run(&args);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            text(&o).contains("a generation hidden by damage") && !text(&o).contains("removes it"),
            "{}",
            text(&o)
        );
    }
    let o = e.run(&["inspect", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(
            "MGEAR/web01/G0001 (a generation's directory whose entry lost its directory mark)"
        ),
        "{}",
        text(&o)
    );
    let o = e.ingest(&m, "web01").untrusted().target("file:u.raw").run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("a generation hidden by damage") && !text(&o).contains("stopped before"),
        "{}",
        text(&o)
    );
    unmark("MGEAR", b"WEB01      ");
    let o = e.ingest(&m, "web01").untrusted().target("file:u.raw").run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("a capture's directory whose entry"),
        "{}",
        text(&o)
    );
    let o = e.run(&["inspect", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("MGEAR/web01 (a capture's directory whose entry lost"),
        "{}",
        text(&o)
    );
    unmark("", b"MGEAR      ");
    for args in [
        vec!["verify", "--medium", &m],
        vec!["inspect", "--medium", &m],
    ] {
        let o = e.run(&args);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            text(&o).contains("lost its directory mark") && !text(&o).contains("reconnect"),
            "{}",
            text(&o)
        );
    }
    assert!(!e.p("u.raw").exists());
}

/// Media a user makes by hand or damages: a FAT16 image (mkfs.fat's choice at 64 MiB without
/// `-F 32`) took a capture whose directories fsck.fat then deleted; a boot sector with one
/// byte of its BPB damaged mounted as an empty volume ("no MGEAR directory": the wrong medium,
/// said verify) and took a new capture into the broken volume. Both are refused, by name,
/// before anything is written; the damaged one comes back with the fix the message gives.
#[test]
fn a_fat16_medium_and_a_damaged_boot_sector_are_refused_by_name() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 2, 4);
    let st = Command::new("mkfs.fat")
        .args(["-F", "16", "-C"])
        .arg(e.p("f16.img"))
        .arg("65536")
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", text(&st));
    let before = sha(&e.p("f16.img"));
    let o = e.capture("fat:f16.img", "web01").source("disk.raw").run();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("FAT12 or FAT16"), "{}", text(&o));
    assert_eq!(sha(&e.p("f16.img")), before);
    // FAT32 with too few clusters (`mkfs.fat -F 32 -S 4096` of a small image, which it only
    // warns about) is FAT16 to every reader: said so, not "no FAT32 file system".
    let st = Command::new("mkfs.fat")
        .args(["-F", "32", "-S", "4096", "-C"])
        .arg(e.p("f4k.img"))
        .arg("131072")
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", text(&st));
    let o = e.capture("fat:f4k.img", "web01").source("disk.raw").run();
    assert!(
        text(&o).contains("formatted as FAT32 with only") && text(&o).contains("65525"),
        "{}",
        text(&o)
    );

    e.fat("m.img", "40MiB");
    e.capture("fat:m.img", "web01").source("disk.raw").ok();
    let mut img = fs::read(e.p("m.img")).unwrap();
    let good = img[..512].to_vec();
    img[0x24] ^= 0xff;
    fs::write(e.p("m.img"), &img).unwrap();
    for cmd in [
        vec!["inspect", "--medium", "fat:m.img"],
        vec!["verify", "--medium", "fat:m.img"],
    ] {
        // Damage found (exit 1), not an I/O error's "reconnect it" (exit 3).
        let o = e.run(&cmd);
        assert_eq!(o.status.code(), Some(1), "{cmd:?}: {}", text(&o));
        assert!(
            text(&o).contains("disagree on the FAT size")
                && text(&o).contains("what to do: nothing was read or written")
                && !text(&o).contains("reconnect"),
            "{}",
            text(&o)
        );
    }
    // Its total-sectors field doubled: the backup says the volume fits, so it is damage,
    // not "a copy cut short" (exit 3, "copy it again in full").
    let mut big = img.clone();
    big[..512].copy_from_slice(&good);
    let total = u32::from_le_bytes(big[0x20..0x24].try_into().unwrap());
    big[0x20..0x24].copy_from_slice(&(total * 2).to_le_bytes());
    fs::write(e.p("big.img"), &big).unwrap();
    let o = e.run(&["verify", "--medium", "fat:big.img"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("disagree on the total sectors") && !text(&o).contains("cut short"),
        "{}",
        text(&o)
    );
    let o = e.capture("fat:m.img", "new").source("disk.raw").run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(fs::read(e.p("m.img")).unwrap(), img, "nothing written");
    img[..512].copy_from_slice(&good);
    fs::write(e.p("m.img"), &img).unwrap();
    e.ok(&["verify", "--medium", "fat:m.img"]);
}

/// `medium fsck` waited on `fsck.fat` for as long as it ran, and `fsck.fat` loops for ever on
/// some damaged volumes (46 minutes of a whole core, then killed by hand, and mgear said 0).
/// It gets a deadline (here shortened through MGEAR_FSCK_FAT_TIMEOUT, and an `fsck.fat` that
/// hangs put first on PATH): stopped, named, exit 1.
#[test]
fn an_fsck_fat_that_never_ends_is_stopped_and_named() {
    use std::os::unix::fs::PermissionsExt;
    let e = Env::new();
    e.fat("m.img", "40MiB");
    fs::create_dir(e.p("bin")).unwrap();
    fs::write(
        e.p("bin/fsck.fat"),
        "#!/bin/sh\necho checking\nexec sleep 600\n",
    )
    .unwrap();
    fs::set_permissions(e.p("bin/fsck.fat"), fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        e.s("bin"),
        std::env::var("PATH").unwrap_or_default()
    );
    let started = std::time::Instant::now();
    let o = e
        .line(&["medium", "fsck", "--medium", "fat:m.img", "--json"])
        .command()
        .env("PATH", path)
        .env("MGEAR_FSCK_FAT_TIMEOUT", "2")
        .output()
        .unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let fat = &v["fsck_fat"];
    assert_eq!(fat["ok"], false, "{v}");
    let said = fat["output"].as_str().unwrap_or_default();
    assert!(
        said.contains("did not finish within 2 s") && said.contains("checking"),
        "{v}"
    );
}

/// The FAT32 image at `path` opened to be written, its geometry and its first FAT.
fn first_fat(path: &std::path::Path) -> (fs::File, image_format::store::fatmap::Geometry, Vec<u8>) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut boot = [0u8; 512];
    f.read_exact(&mut boot).unwrap();
    let geo = image_format::store::fatmap::Geometry::parse(&boot).unwrap();
    let mut fat = vec![0u8; geo.fat_bytes as usize];
    f.seek(SeekFrom::Start(geo.fat_offset)).unwrap();
    f.read_exact(&mut fat).unwrap();
    (f, geo, fat)
}

/// `medium fsck --repair` ran `fsck.fat -a` whatever `fsck.fat` found, and its repair of a
/// chain pointing outside the volume cut files short: every capture on the medium became
/// unreadable. Now `-a` runs only for what a crash leaves; damage like that is reported, not
/// "repaired", and the medium is left byte for byte as it was.
#[test]
fn fsck_repair_does_not_cut_files_for_damage_a_crash_does_not_leave() {
    use std::io::{Seek, SeekFrom, Write};
    let e = Env::new();
    keys(&e);
    let m = e.fat("m.img", "64MiB");
    random_disk(&e.p("disk.raw"), 2, 12);
    e.capture(&m, "web01").source("disk.raw").ok();
    // The last cluster chain end in the FAT (a file's or a directory's) now points outside
    // the volume, in every FAT copy.
    let (mut f, geo, fat) = first_fat(&e.p("m.img"));
    let end = (2..geo.cluster_count as usize + 2)
        .rev()
        .find(|c| {
            let v = u32::from_le_bytes(fat[c * 4..c * 4 + 4].try_into().unwrap()) & 0x0FFF_FFFF;
            v >= 0x0FFF_FFF8
        })
        .unwrap();
    for copy in 0..geo.fats {
        f.seek(SeekFrom::Start(
            geo.fat_offset + copy * geo.fat_bytes + end as u64 * 4,
        ))
        .unwrap();
        f.write_all(&0x0FFF_FFEEu32.to_le_bytes()).unwrap();
    }
    drop(f);
    let before = sha(&e.p("m.img"));
    let o = e
        .line(&["medium", "fsck", "--medium", &m, "--repair", "--json"])
        .run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let said = v["fsck_fat"]["output"].as_str().unwrap_or_default();
    assert!(said.contains("out of range"), "{v}");
    // mgear's own walk of the chains finds it first, and nothing is repaired or removed.
    assert!(
        v["findings"].as_array().unwrap().iter().any(|f| {
            f["kind"] == "damaged-file-system"
                && f["what"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("out of the volume")
        }),
        "{v}"
    );
    assert_eq!(v["fsck_fat"]["repaired"], false, "{v}");
    assert_eq!(sha(&e.p("m.img")), before, "the medium was changed");
}

/// A link in the middle of a segment's cluster chain points outside the volume (a flipped
/// bit in the first FAT): ingest refuses it, and its hint was that of data that did not check
/// out ("do not use it"), which had an operator throw away a shipment a repaired copy still
/// delivers. It says what to do about a damaged file system.
#[test]
fn a_damaged_fat_chain_is_told_as_a_damaged_file_system() {
    use std::io::{Seek, SeekFrom, Write};
    let e = Env::new();
    keys(&e);
    let m = e.fat("m.img", "64MiB");
    random_disk(&e.p("disk.raw"), 8, 16);
    e.capture(&m, "web01").source("disk.raw").ok();
    random_disk(&e.p("disk2.raw"), 2, 17);
    e.capture(&m, "web02").source("disk2.raw").ok();
    let (mut f, geo, fat) = first_fat(&e.p("m.img"));
    let entry =
        |c: usize| u32::from_le_bytes(fat[c * 4..c * 4 + 4].try_into().unwrap()) & 0x0FFF_FFFF;
    let links: Vec<usize> = (2..geo.cluster_count as usize + 2)
        .filter(|&c| entry(c) == c as u32 + 1)
        .collect();
    // In web01's segment (captured first, so its chain comes first).
    let at = links[links.len() / 4];
    f.seek(SeekFrom::Start(geo.fat_offset + at as u64 * 4))
        .unwrap();
    f.write_all(&0x0FFF_FF00u32.to_le_bytes()).unwrap();
    drop(f);
    let o = e
        .ingest(&m, "web01")
        .untrusted()
        .target("file:v.raw")
        .arg("--json")
        .run();
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let hint = v["error"]["hint"].as_str().unwrap_or_default();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("the FAT32 file system is damaged")
            && hint.contains("file system is damaged: never repair the original")
            && !hint.contains("do not use it"),
        "{v}"
    );
    assert!(!e.p("v.raw").exists());
    // Verify with the key: the damage is web01's finding, web02 is still decrypted and
    // checked, and the FAT copies' disagreement is said (the run stopped at web01 with a
    // bare error, web02 unchecked, the structure findings unsaid).
    let o = e.run(&["verify", "--medium", &m, "--identity", "target.key"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("1 of 2 captures decrypted")
            && out.contains("capture web01: medium error")
            && out.contains("the volume's two FAT copies disagree"),
        "{}",
        text(&o)
    );
    // Nothing is written on top of it: a capture of another name went on (exit 0) and the
    // medium failed `fsck.fat -n` at the target; removing web01 freed part of it and then
    // failed ("Seek to a negative offset").
    let before = sha(&e.p("m.img"));
    let o = e.capture(&m, "web03").source("disk2.raw").run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("its file system is damaged")
            && text(&o).contains("MGEAR/web01/G0001/SEG-00000")
            && text(&o).contains("nothing was written"),
        "{}",
        text(&o)
    );
    let o = e.run(&["medium", "rm", "--medium", &m, "--name", "web01", "--force"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(sha(&e.p("m.img")), before, "the medium was changed");
}

/// A copy of a medium cut short (an interrupted `cp`): it read as FAT up to where it ended,
/// then failed on whichever file lay past it ("access ... past the end of the medium", or,
/// cut in its first sectors, "no MGEAR directory"). It is named as cut short, with the way on.
#[test]
fn a_medium_copy_cut_short_is_named_as_such() {
    let e = Env::new();
    keys(&e);
    let m = e.fat("m.img", "40MiB");
    random_disk(&e.p("disk.raw"), 2, 15);
    e.capture(&m, "web01").source("disk.raw").ok();
    for (name, cut) in [("half.img", 20u64 << 20), ("head.img", 100 << 10)] {
        fs::copy(e.p("m.img"), e.p(name)).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(e.p(name))
            .unwrap()
            .set_len(cut)
            .unwrap();
        let o = e.run(&["verify", "--medium", &format!("fat:{name}")]);
        assert_eq!(o.status.code(), Some(3), "{}", text(&o));
        let said = text(&o);
        assert!(
            said.contains("but the FAT32 file system on it spans 40.00 MiB (41943040 bytes)")
                && said.contains("cut short by ")
                && said.contains("copy it again in full"),
            "{said}"
        );
    }
}

/// A FAT chain cut short under one capture's segment (what `fsck.fat` calls a file bigger than
/// its chain): `verify` reports it as that capture's problem (exit 1, a finding, not an I/O
/// error to retry) and still checks the other capture, which ingests.
#[test]
fn a_fat_chain_cut_under_one_capture_is_its_problem_and_the_others_are_checked() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("a.raw"), 8, 31);
    random_disk(&e.p("b.raw"), 8, 32);
    let m = e.fat("m.img", "64MiB");
    // A fresh FAT hands out clusters in order: the first capture's segment holds the
    // clusters from a few dozen up to about 2 000 (8 MiB of 4 KiB clusters).
    e.capture(&m, "first").source("a.raw").ok();
    e.capture(&m, "second").source("b.raw").ok();
    let mut img = fs::read(e.p("m.img")).unwrap();
    let u16_at = |o: usize| u64::from(u16::from_le_bytes([img[o], img[o + 1]]));
    let (sector, reserved, fats) = (u16_at(11), u16_at(14), u64::from(img[16]));
    let fat_bytes = u64::from(u32::from_le_bytes(img[36..40].try_into().unwrap())) * sector;
    assert!(fats >= 1 && sector >= 512, "not a FAT32 image");
    for copy in 0..fats {
        let at = (reserved * sector + copy * fat_bytes + 1000 * 4) as usize;
        img[at..at + 4].copy_from_slice(&0x0FFF_FFFFu32.to_le_bytes());
    }
    fs::write(e.p("m.img"), &img).unwrap();
    let o = e.run(&["verify", "--medium", &m, "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["captures"], 2, "both captures checked: {v}");
    let problems = v["problems"].to_string();
    assert!(
        problems.contains("first") && problems.contains("damaged"),
        "{problems}"
    );
    assert!(!problems.contains("second"), "{problems}");
    e.ingest(&m, "second").untrusted().target("file:b.out").ok();
    assert_eq!(sha(&e.p("b.out")), sha(&e.p("b.raw")));
}

/// The first cluster of directory `path` of FAT image `image` (mtools' `mshowfat`).
fn dir_cluster(e: &Env, image: &str, path: &str) -> u64 {
    let o = Command::new("mshowfat")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(e.p(image))
        .arg(format!("::{path}"))
        .output()
        .expect("mshowfat (Debian: mtools)");
    let shown = String::from_utf8_lossy(&o.stdout).to_string();
    shown
        .split('<')
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("mshowfat said {shown:?}"))
}

/// Edit the first cluster of directory `path` of `image` in place: `edit(image bytes, offset
/// of the cluster, cluster bytes)`.
fn edit_dir(e: &Env, image: &str, path: &str, edit: impl FnOnce(&mut [u8], usize, usize)) {
    let cluster = dir_cluster(e, image, path);
    let mut img = fs::read(e.p(image)).unwrap();
    let geo = image_format::store::fatmap::Geometry::parse(&img[..512]).unwrap();
    let dir = (geo.data_offset + (cluster - 2) * geo.cluster_bytes) as usize;
    edit(&mut img, dir, geo.cluster_bytes as usize);
    fs::write(e.p(image), &img).unwrap();
}

/// The offset of the entry whose 11 short-name bytes are `name` in the directory cluster at
/// `dir` of `img`.
fn entry_named(img: &[u8], dir: usize, len: usize, name: &[u8; 11]) -> usize {
    (dir..dir + len)
        .step_by(32)
        .find(|&at| &img[at..at + 11] == name)
        .unwrap_or_else(|| panic!("no entry {:?}", String::from_utf8_lossy(name)))
}

/// A 64 MiB FAT medium `m.img` holding captures `rand` and `other` of the 4 MiB `a.raw`.
fn two_captures() -> (Env, String) {
    let e = Env::new();
    keys(&e);
    random_disk(&e.p("a.raw"), 4, 35);
    let m = e.fat("m.img", "64MiB");
    e.capture(&m, "rand").source("a.raw").ok();
    e.capture(&m, "other").source("a.raw").ok();
    (e, m)
}

/// Directory `path` of `image` made to loop: its first cluster's FAT entry (in every copy)
/// points at itself.
fn loop_dir(e: &Env, image: &str, path: &str) {
    let cluster = dir_cluster(e, image, path);
    let mut img = fs::read(e.p(image)).unwrap();
    let geo = image_format::store::fatmap::Geometry::parse(&img[..512]).unwrap();
    for copy in 0..geo.fats {
        let at = (geo.fat_offset + copy * geo.fat_bytes + cluster * 4) as usize;
        img[at..at + 4].copy_from_slice(&(cluster as u32).to_le_bytes());
    }
    fs::write(e.p(image), &img).unwrap();
}

/// A finished generation whose directory cluster was overwritten with other bytes: damaged,
/// not "cut off at its start" (which sent the operator to start over, and `medium fsck
/// --repair` to remove it, failing on the garbage names).
#[test]
fn a_generation_whose_directory_is_garbage_is_damaged_not_unfinished() {
    let e = Env::new();
    keys(&e);
    random_disk(&e.p("a.raw"), 4, 36);
    let m = e.fat("m.img", "64MiB");
    e.capture(&m, "rand").source("a.raw").sign("site.key").ok();
    let cluster = dir_cluster(&e, "m.img", "MGEAR/rand/G0001");
    let mut img = fs::read(e.p("m.img")).unwrap();
    let geo = image_format::store::fatmap::Geometry::parse(&img[..512]).unwrap();
    let at = (geo.data_offset + (cluster - 2) * geo.cluster_bytes) as usize;
    let mut rng = rand::rngs::StdRng::seed_from_u64(37);
    rng.fill_bytes(&mut img[at..at + geo.cluster_bytes as usize]);
    fs::write(e.p("m.img"), &img).unwrap();
    let damaged = "its directory is damaged";
    let i = text(&e.run(&["inspect", "--medium", &m]));
    assert!(i.contains("DAMAGED") && i.contains(damaged), "{i}");
    let o = e.run(&["verify", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(damaged) && !text(&o).contains("unfinished generation"),
        "{}",
        text(&o)
    );
    let before = sha(&e.p("m.img"));
    let o = e.run(&["medium", "fsck", "--medium", &m, "--repair"]);
    assert_eq!(
        sha(&e.p("m.img")),
        before,
        "a repair removed the damaged generation"
    );
    // Said as damaged, as its JSON kind says (it read "unfinished", a capture to resume).
    assert!(
        out(&o)
            .lines()
            .any(|l| l.starts_with("damaged") && l.contains("MGEAR/rand/G0001")),
        "{}",
        text(&o)
    );
    let o = e
        .ingest(&m, "rand")
        .trust("site.pub")
        .target("file:a.out")
        .run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(damaged) && !text(&o).contains("stopped before"),
        "{}",
        text(&o)
    );
}

/// One capture's directory damaged in the file system (its generation's entry points out of
/// the volume): every other capture of the medium still lists, verifies and ingests, and the
/// damaged one is named (a new-user round found `inspect` listing nothing and an ingest of
/// an intact, pinned capture refused with advice to check the pins).
#[test]
fn a_damaged_directory_of_one_capture_leaves_the_others_usable() {
    let e = Env::new();
    keys(&e);
    random_disk(&e.p("a.raw"), 4, 33);
    random_disk(&e.p("b.raw"), 4, 34);
    let m = e.fat("m.img", "64MiB");
    e.capture(&m, "rand").source("a.raw").sign("site.key").ok();
    e.capture(&m, "mix").source("b.raw").sign("site.key").ok();
    // MGEAR/mix's directory: the first cluster of its G0001 entry now lies past the volume.
    edit_dir(&e, "m.img", "MGEAR/mix", |img, dir, len| {
        let entry = entry_named(img, dir, len, b"G0001      ");
        img[entry + 0x14..entry + 0x16].copy_from_slice(&0x7777u16.to_le_bytes());
    });

    let o = e.run(&["inspect", "--medium", &m, "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let i: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(i["ok"], false, "{i}");
    let caps = i["captures"].as_array().unwrap();
    let of = |n: &str| caps.iter().find(|c| c["name"] == n).unwrap().clone();
    assert_eq!(of("rand")["generations"][0]["state"], "complete", "{i}");
    assert!(
        of("mix")["damage"].as_str().unwrap().contains("damaged"),
        "{i}"
    );
    let o = e.run(&["verify", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let said = text(&o);
    assert!(
        said.contains("capture mix") && said.contains("damaged"),
        "{said}"
    );
    assert!(
        !said.contains("capture rand") && !said.contains("medium rm"),
        "{said}"
    );
    e.ingest(&m, "rand")
        .trust("site.pub")
        .target("file:a.out")
        .ok();
    assert_eq!(sha(&e.p("a.out")), sha(&e.p("a.raw")));

    // A machine set's directory whose chain loops (in both FATs): the set is the finding,
    // the other captures are still checked (it stopped the whole verify at the set's disk).
    let m2 = e.fat("m2.img", "64MiB");
    e.capture(&m2, "db").sources(&["a.raw", "b.raw"]).ok();
    e.capture(&m2, "x").source("a.raw").ok();
    loop_dir(&e, "m2.img", "MGEAR/db");
    let o = e.run(&["verify", "--medium", &m2, "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let problems = v["problems"].to_string();
    assert!(problems.contains("db") && problems.contains("loops"), "{v}");
    assert!(!problems.contains("capture x"), "{v}");
    e.ingest(&m2, "x").untrusted().target("file:x.out").ok();
    assert_eq!(sha(&e.p("x.out")), sha(&e.p("a.raw")));
    // inspect lists the others and fails (exit 1: it exited 0 beside "DAMAGED"); fsck names
    // the set's directory and goes on (it stopped at the set's manifest, naming nothing).
    let o = e.run(&["inspect", "--medium", &m2]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("capture db: DAMAGED")
            && text(&o).contains("capture x")
            && text(&o).contains("the medium's file system is damaged where said above"),
        "{}",
        text(&o)
    );
    let o = e.run(&["medium", "fsck", "--medium", &m2]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("damaged    MGEAR/db:") && !text(&o).contains("error:"),
        "{}",
        text(&o)
    );
}

/// The root directory zeroed (its cluster wiped): the captures are not listed, and every
/// command that says "no capture" adds that much of the file system is in use, so its
/// directories are likely damaged (it said "pass one with --name" and "is this the right
/// medium?").
#[test]
fn a_wiped_root_directory_is_told_as_likely_damage_not_an_empty_medium() {
    let e = Env::new();
    keys(&e);
    random_disk(&e.p("a.raw"), 4, 35);
    let m = e.fat("m.img", "64MiB");
    e.capture(&m, "rand").source("a.raw").ok();
    let mut img = fs::read(e.p("m.img")).unwrap();
    let geo = image_format::store::fatmap::Geometry::parse(&img[..512]).unwrap();
    let root = (geo.data_offset + (u64::from(geo.root_cluster) - 2) * geo.cluster_bytes) as usize;
    img[root..root + geo.cluster_bytes as usize].fill(0);
    fs::write(e.p("m.img"), &img).unwrap();
    let likely = "its directories are likely damaged";
    // Damage found (exit 1), never "pass one with --name" (exit 2) of a medium listing none.
    let o = e.ingest(&m, "rand").untrusted().target("file:a.out").run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("there is no capture")
            && text(&o).contains(likely)
            && !text(&o).contains("pass one with --name"),
        "{}",
        text(&o)
    );
    let o = e.run(&["verify", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(likely) && !text(&o).contains("right medium"),
        "{}",
        text(&o)
    );
    let o = e.run(&["inspect", "--medium", &m, "--name", "rand"]);
    assert!(text(&o).contains(likely), "{}", text(&o));
    // The listing of the whole medium too (it said "0 capture(s)" and nothing else).
    let o = e.run(&["inspect", "--medium", &m]);
    assert!(
        text(&o).contains("NOTE: nothing is listed") && text(&o).contains(likely),
        "{}",
        text(&o)
    );
    let o = e.run(&["inspect", "--medium", &m, "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["note"].as_str().is_some_and(|n| n.contains(likely)),
        "{v}"
    );
    // A medium that holds nothing says nothing of damage.
    let fresh = e.fat("fresh.img", "64MiB");
    let o = e.run(&["verify", "--medium", &fresh]);
    assert!(!text(&o).contains(likely), "{}", text(&o));
    // Nor one holding only a file of the user's at its root (it was told as damage).
    let mut s = image_format::store::FatStore::open(
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(e.p("fresh.img"))
            .unwrap(),
    )
    .unwrap();
    image_format::Store::write_at(&mut s, "FILLER.BIN", 0, &vec![7u8; 8 << 20]).unwrap();
    s.unmount().unwrap();
    let o = e.run(&["inspect", "--medium", &fresh]);
    assert!(!text(&o).contains(likely), "{}", text(&o));
}

/// A sparse `fat:` image on a host file system that fills up: the FAT inside has room, so
/// the capture says the host's file system is full (not "medium full", which sends the
/// operator to add a medium).
#[test]
fn an_image_whose_host_file_system_fills_is_not_called_a_full_medium() {
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 48, 41);
    fs::create_dir(e.p("small")).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=20m", "tmpfs"])
        .arg(e.p("small"))
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs (needs root)");
    let _mounted = Unmount(e.p("small"));
    let m = e.fat("small/med.img", "200MiB");
    // Planned: the host's room, not the FAT's, is what the capture can write (a plan that
    // said "fits" stopped as the host filled), refused before anything is written.
    let o = e.capture(&m, "web01").source("disk.raw").run();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let said = text(&o);
    assert!(
        said.contains("the medium image's file system has")
            && said.contains("the medium cannot hold this capture")
            && said.contains("nothing was written"),
        "{said}"
    );
    let o = e
        .capture(&m, "web01")
        .source("disk.raw")
        .arg("--skip-space-check")
        .run();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let said = text(&o);
    assert!(
        said.contains("the file system holding the medium image") && said.contains("is full"),
        "{said}"
    );
    assert!(!said.contains("medium full"), "{said}");
}

/// What each command says of a medium someone changed agrees (a new-user round found them
/// telling three stories): an empty generation directory is an unfinished generation cut
/// off at its start for `inspect` as for `verify` and `medium fsck` (not DAMAGED, which
/// nothing may remove); a finished generation whose MANIFEST was damaged is damaged for the
/// decrypting verify too (it advised a resume and an abort, both refused); a capture whose
/// key slots were removed is a finding of the keyed verify (exit 1 with its summary, not a
/// usage error), and ingest does not send the operator to check the pins.
#[test]
fn inspect_verify_and_ingest_agree_on_a_changed_medium() {
    let e = Env::new();
    keys(&e);
    random_disk(&e.p("disk.raw"), 4, 61);
    fs::create_dir(e.p("m")).unwrap();
    for name in ["a", "b", "c", "d"] {
        e.capture("dir:m", name)
            .source("disk.raw")
            .sign("site.key")
            .ok();
    }
    // a: an empty G0002 beside its finished G0001.
    fs::create_dir(e.p("m/MGEAR/a/G0002")).unwrap();
    let i = text(&e.run(&["inspect", "--medium", "dir:m"]));
    assert!(
        i.contains("G0002 unfinished, cut off at its start") && !i.contains("G0002 DAMAGED"),
        "{i}"
    );
    let v = text(&e.run(&["verify", "--medium", "dir:m", "--name", "a"]));
    assert!(v.contains("cut off at its start"), "{v}");
    fs::remove_dir(e.p("m/MGEAR/a/G0002")).unwrap();
    // b: a byte of its MANIFEST flipped.
    let mf = e.p("m/MGEAR/b/G0001/MANIFEST");
    let mut bytes = fs::read(&mf).unwrap();
    bytes[200] ^= 0xff;
    fs::write(&mf, bytes).unwrap();
    let o = e.run(&[
        "verify",
        "--medium",
        "dir:m",
        "--name",
        "b",
        "--identity",
        "target.key",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("generation 1 is damaged") && !text(&o).contains("resume its capture"),
        "{}",
        text(&o)
    );
    // c: its key slot removed.
    fs::remove_file(e.p("m/MGEAR/c/KEYS")).unwrap();
    let i = text(&e.run(&["inspect", "--medium", "dir:m"]));
    assert!(i.contains("capture c (key slots: none"), "{i}");
    let o = e.run(&[
        "verify",
        "--medium",
        "dir:m",
        "--name",
        "c",
        "--identity",
        "target.key",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        out(&o).contains("FAILED")
            && out(&o).contains("no key slot")
            && out(&o).contains(": 0 of 1 captures decrypted, "),
        "{}",
        text(&o)
    );
    // d: a byte of its key slot's header damaged: each finding printed once, age's own
    // "Have you tried upgrading" not passed on, and nothing counted as decrypted.
    let mut k = fs::read(e.p("m/MGEAR/d/KEYS")).unwrap();
    k[10] ^= 0x10;
    fs::write(e.p("m/MGEAR/d/KEYS"), k).unwrap();
    let o = e.run(&[
        "verify",
        "--medium",
        "dir:m",
        "--name",
        "d",
        "--identity",
        "target.key",
        "--trust",
        "site.pub",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    // One finding (the slot file): both passes find it, the decrypting one in other words.
    let bad: Vec<&str> = err.lines().filter(|l| l.starts_with("BAD:")).collect();
    assert_eq!(bad.len(), 1, "{err}");
    assert!(!err.contains("upgrading"), "{err}");
    assert!(
        out(&o).contains(": 0 of 1 captures decrypted, "),
        "{}",
        text(&o)
    );
    let o = e
        .ingest("dir:m", "c")
        .trust("site.pub")
        .target("file:c.raw")
        .run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("key slots are gone")
            && text(&o).contains("another copy of the shipment")
            && !text(&o).contains("check those against the capture receipt"),
        "{}",
        text(&o)
    );
}

/// A segment whose trailer was damaged after the capture: every record still checks out,
/// so ingest writes the disk, but it now says what `verify` says, that the medium was
/// changed (it installed the capture without a word).
#[test]
fn a_damaged_segment_trailer_is_warned_about_at_ingest() {
    let e = Env::new();
    e.keygen();
    let mut d = vec![0u8; 3 << 20];
    rand::rngs::SmallRng::seed_from_u64(71).fill_bytes(&mut d);
    fs::write(e.p("disk.raw"), &d).unwrap();
    fs::create_dir(e.p("m")).unwrap();
    e.capture("dir:m", "web01").source("disk.raw").ok();
    let seg = e.p("m/MGEAR/web01/G0001/SEG-00000");
    let mut b = fs::read(&seg).unwrap();
    let n = b.len();
    b[n - 10] ^= 0xff; // inside the trailer's reserved bytes: its CRC no longer checks
    fs::write(&seg, b).unwrap();
    let v = e.run(&["verify", "--medium", "dir:m"]);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v));
    let o = e
        .ingest("dir:m", "web01")
        .untrusted()
        .unsealed()
        .target("file:out.raw")
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("SEG-00000") && err.contains("Every record of it checked out"),
        "{err}"
    );
    same_file(&e.p("out.raw"), &e.p("disk.raw"));
}

/// One file's cluster chain run past its size into another capture's MANIFEST (both FAT
/// copies alike): `fsck.fat -n` calls it a chain longer than its size, which a crash also
/// leaves, so `medium fsck --repair` let `fsck.fat -a` cut it, which freed the MANIFEST's
/// cluster ("repaired", exit 0), and verify's hint advised the same cut. Now verify names the
/// file it runs into and says not to repair, `medium fsck --repair` changes nothing and says
/// why, and the capture run into still ingests.
#[test]
fn a_chain_run_into_another_file_is_never_repaired() {
    use std::os::unix::fs::FileExt;
    let e = Env::new();
    keys(&e);
    let m = e.fat("m.img", "64MiB");
    random_disk(&e.p("disk.raw"), 2, 51);
    random_disk(&e.p("disk2.raw"), 2, 52);
    e.capture(&m, "web01").source("disk.raw").ok();
    e.capture(&m, "web02").source("disk2.raw").ok();
    let (f, geo, _) = first_fat(&e.p("m.img"));
    let mut read = |at: u64, buf: &mut [u8]| {
        f.read_exact_at(buf, at)
            .map_err(|e| image_format::StoreError::Io(e.to_string()))
    };
    let mut map = |p: &str| {
        image_format::store::fatmap::lookup(&geo, &mut read, p)
            .unwrap()
            .unwrap()
            .runs
    };
    let from = map("MGEAR/web01/G0001/MANIFEST");
    let into = map("MGEAR/web02/G0001/MANIFEST")[0].cluster;
    let last = from.last().map(|r| r.cluster + r.clusters - 1).unwrap();
    for copy in 0..geo.fats {
        f.write_all_at(
            &into.to_le_bytes(),
            geo.fat_offset + copy * geo.fat_bytes + u64::from(last) * 4,
        )
        .unwrap();
    }
    drop(f);
    let sha = || Sha256::digest(fs::read(e.p("m.img")).unwrap()).to_vec();
    let before = sha();
    let o = e.run(&["verify", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(
            "MGEAR/web01/G0001/MANIFEST: its cluster chain runs past its size into cluster"
        ) && text(&o).contains("of MGEAR/web02/G0001/MANIFEST")
            && text(&o).contains("Do not repair or write the medium"),
        "{}",
        text(&o)
    );
    let o = e.run(&["medium", "fsck", "--medium", &m, "--repair"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("damaged")
            && text(&o).contains("nothing is repaired or removed on it")
            && !text(&o).contains("repaired the FAT volume"),
        "{}",
        text(&o)
    );
    assert_eq!(
        sha(),
        before,
        "medium fsck --repair changed a damaged medium"
    );
    // Nor does any other writer: removing web01 freed web02's MANIFEST cluster, and a new
    // capture could take it (both exit 0).
    let o = e.run(&["medium", "rm", "--medium", &m, "--name", "web01", "--force"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("its file system is damaged"),
        "{}",
        text(&o)
    );
    random_disk(&e.p("disk3.raw"), 1, 54);
    let o = e.capture(&m, "web03").source("disk3.raw").run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("nothing was written"), "{}", text(&o));
    assert_eq!(sha(), before, "a writer changed a damaged medium");
    e.ingest(&m, "web02")
        .untrusted()
        .unsealed()
        .target("file:v2.raw")
        .ok();
    same_file(&e.p("v2.raw"), &e.p("disk2.raw"));
}

/// A capture killed part-way, then aborted: the dirty mark the cut run left stayed on the
/// volume (`fsck.fat -n` exit 1), and a seal after it kept it for good. The abort clears it,
/// and names the data key it leaves in the key cache.
#[test]
fn an_abort_after_a_kill_leaves_the_volume_clean() {
    let e = Env::new();
    keys(&e);
    let m = e.fat("m.img", "64MiB");
    random_disk(&e.p("disk.raw"), 24, 53);
    e.capture(&m, "web01")
        .source("disk.raw")
        .killed_after("4MiB/s", 1500);
    let k = e.json(&["keys", "list"]);
    assert_eq!(k["keys"].as_array().map(Vec::len), Some(1), "{k}");
    // A relative XDG_STATE_HOME is ignored (the XDG spec): the key cache moved with the
    // working directory.
    let o = e
        .cmd(&["keys", "list", "--json"])
        .env("XDG_STATE_HOME", "relstate")
        .env("HOME", e.p("home"))
        .output()
        .unwrap();
    let rel: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        rel["key_cache"].as_str(),
        Some(e.s("home/.local/state/mgear/keys").as_str()),
        "{rel}"
    );
    let o = e.ok(&["capture", "--abort", "--medium", &m, "--name", "web01"]);
    // The medium was put right as it was opened, and that is said, as of every writer (with
    // nothing below the files to mend it went unsaid).
    assert!(
        text(&o).contains("was left mid-write by a run that was cut off (killed, unplugged"),
        "{}",
        text(&o)
    );
    // The capture is gone whole: its data key stays (a copy of the medium may still resume
    // it), and the abort says so, with the way to forget it (it went unsaid).
    let id = k["keys"][0]["capture_id"].as_str().unwrap().to_string();
    assert!(
        text(&o).contains("its data key stays in this host's key cache")
            && text(&o).contains(&format!("mgear keys forget --capture-id {id}")),
        "{}",
        text(&o)
    );
    e.ok(&["keys", "forget", "--capture-id", &id]);
    // Killed and aborted again, as a script would: the JSON names the id to forget.
    e.capture(&m, "web01")
        .source("disk.raw")
        .killed_after("4MiB/s", 1500);
    let k = e.json(&["keys", "list"]);
    let id = k["keys"][0]["capture_id"].as_str().unwrap().to_string();
    let r = e.json(&["capture", "--abort", "--medium", &m, "--name", "web01"]);
    assert_eq!(
        (r["capture_id"].as_str(), r["key_cached"].as_bool()),
        (Some(id.as_str()), Some(true)),
        "{r}"
    );
    e.ok(&["keys", "forget", "--capture-id", &id]);
    // A delta's abort leaves the capture, and its key with it: `key_cached` said false.
    e.capture(&m, "web01").source("disk.raw").ok();
    e.capture(&m, "web01")
        .source("disk.raw")
        .arg("--delta")
        .killed_after("4MiB/s", 1500);
    let r = e.json(&["capture", "--abort", "--medium", &m, "--name", "web01"]);
    assert_eq!(
        (r["capture_removed"].as_bool(), r["key_cached"].as_bool()),
        (Some(false), Some(true)),
        "{r}"
    );
    let id = r["capture_id"].as_str().unwrap().to_string();
    e.ok(&["keys", "forget", "--capture-id", &id]);
    e.ok(&["medium", "rm", "--medium", &m, "--name", "web01", "--force"]);
    let o = Command::new("fsck.fat")
        .args(["-n"])
        .arg(e.p("m.img"))
        .output()
        .expect("fsck.fat (Debian: dosfstools)");
    assert!(o.status.success(), "{}", text(&o));
    // The medium as an argument, as `medium format` takes it (it was refused).
    e.ok(&["medium", "fsck", &m]);
}

/// A directory's `.` entry with garbage for a name: verify names it by its bytes (it said
/// `MGEAR/rand/G0001/.FGH`, its name dropped whole), `medium fsck` prints no raw control
/// byte off the medium, and the capture still ingests (nothing it reads is damaged).
#[test]
fn a_damaged_dot_entry_is_named_by_its_bytes() {
    let (e, m) = two_captures();
    edit_dir(&e, "m.img", "MGEAR/rand/G0001", |img, dir, _| {
        assert_eq!(&img[dir..dir + 11], b".          ");
        img[dir..dir + 11].copy_from_slice(b"\xff\xfe\x01ABCDEFGH");
    });
    let o = e.run(&["verify", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(
            "MGEAR/rand/G0001/\\xff\\xfe\\x01ABCDE.FGH: a directory entry that leads back"
        ),
        "{}",
        text(&o)
    );
    let o = e.run(&["medium", "fsck", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(!o.stdout.contains(&1u8), "{}", text(&o));
    e.ingest(&m, "rand").untrusted().target("file:a.out").ok();
    assert_eq!(sha(&e.p("a.out")), sha(&e.p("a.raw")));
    // The capture's own entry renamed to an ESC sequence and a bell: verify names it with
    // them escaped (they reached the terminal raw and turned it red).
    edit_dir(&e, "m.img", "MGEAR", |img, dir, len| {
        let entry = entry_named(img, dir, len, b"RAND       ");
        img[entry..entry + 11].copy_from_slice(b"\x01\x1b[31mXY\x07ZQ");
    });
    let o = e.run(&["verify", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    for raw in [0x01u8, 0x07, 0x1b] {
        assert!(
            !o.stdout.contains(&raw) && !o.stderr.contains(&raw),
            "{raw:#x}: {}",
            text(&o)
        );
    }
    assert!(text(&o).contains("\\u{1b}[31mXY"), "{}", text(&o));
    // inspect lists the other capture and fails naming the directory (it listed one capture,
    // exit 0, the other gone without a word).
    let o = e.run(&["inspect", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("capture other")
            && text(&o).contains("MGEAR/\\u{1}\\u{1b}[31mXY.\\u{7}ZQ: a directory where a capture")
            && !o.stdout.contains(&0x1b),
        "{}",
        text(&o)
    );
    let o = e.run(&["inspect", "--medium", &m, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["unexpected"].as_array().map(Vec::len), Some(1), "{v}");
    // The other capture's generation renamed to garbage: its ingest says so (it said the
    // capture "was stopped before it finished": resume it at the capture site).
    edit_dir(&e, "m.img", "MGEAR/other", |img, dir, len| {
        let entry = entry_named(img, dir, len, b"G0001      ");
        img[entry..entry + 11].copy_from_slice(b"\xff\xfe\x01ABCDEFGH");
    });
    let o = e.ingest(&m, "other").untrusted().target("file:o.out").run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("a directory no generation is named: a generation hidden by damage")
            && !text(&o).contains("capture site"),
        "{}",
        text(&o)
    );
}

/// A capture's generation directory whose chain loops: `medium fsck` names the capture's
/// damage (it called the capture "not a capture" and said "no leftovers"), inspect fails
/// where it cannot list, and the error names the directory once. Over that loop, and over a
/// file marked a directory, fsck.fat is not run (it loops too, up to its time limit).
#[test]
fn a_looping_generation_directory_is_damage_to_fsck_not_a_stranger() {
    let (e, m) = two_captures();
    loop_dir(&e, "m.img", "MGEAR/rand/G0001");
    let o = e.run(&["medium", "fsck", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let said = text(&o);
    assert!(
        said.contains("damaged    MGEAR/rand: medium error on MGEAR/rand/G0001: the FAT32 file system is damaged")
            && !said.contains("not a capture")
            && !said.contains("no leftovers"),
        "{said}"
    );
    // fsck.fat is not run over the loop (it loops too, for minutes): said.
    assert!(
        said.contains("fsck.fat: not run: a directory whose cluster chain loops"),
        "{said}"
    );
    let o = e.run(&["inspect", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("capture rand: DAMAGED") && text(&o).contains("capture other"),
        "{}",
        text(&o)
    );
    // Nor over a file marked a directory (its bytes read as entries: fsck.fat loops on them).
    let (e, m) = two_captures();
    edit_dir(&e, "m.img", "MGEAR/rand/G0001", |img, dir, len| {
        let entry = entry_named(img, dir, len, b"MANIFEST   ");
        img[entry + 11] |= 0x10;
    });
    let o = e.run(&["medium", "fsck", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("its entry marks it a directory")
            && text(&o).contains(
                "fsck.fat: not run: a directory whose cluster chain loops, or a file marked a directory"
            ),
        "{}",
        text(&o)
    );
    let o = e.run(&["inspect", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("capture rand: DAMAGED") && text(&o).contains("capture other"),
        "{}",
        text(&o)
    );
}

/// A finished generation whose directory's entries were wiped (a zeroed cluster) on a medium
/// closed cleanly: the clusters its files held are still taken. Inspect said "unfinished, cut
/// off at its start ... `medium fsck --repair` removes it" (exit 0), fsck called it a
/// leftover, a keyed verify said to resume or abort it, and ingest "stopped before it
/// finished ... resume it at the capture site". All now say it may have been finished, and
/// none advises removing, resuming or writing it.
#[test]
fn a_finished_generation_whose_entries_were_wiped_is_damage_everywhere() {
    let e = Env::new();
    keys(&e);
    random_disk(&e.p("a.raw"), 4, 41);
    let m = e.fat("m.img", "64MiB");
    e.capture(&m, "rand").source("a.raw").sign("site.key").ok();
    edit_dir(&e, "m.img", "MGEAR/rand/G0001", |img, dir, len| {
        img[dir + 64..dir + len].fill(0);
    });
    let o = e.run(&["inspect", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("may have been finished") && !text(&o).contains("--repair` removes it"),
        "{}",
        text(&o)
    );
    let o = e.run(&["medium", "fsck", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("may have been finished") && !text(&o).contains("leftover"),
        "{}",
        text(&o)
    );
    let o = e.run(&[
        "verify",
        "--medium",
        &m,
        "--identity",
        "target.key",
        "--trust",
        "site.pub",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        !text(&o).contains("resume its capture") && !text(&o).contains("medium rm"),
        "{}",
        text(&o)
    );
    let o = e
        .ingest(&m, "rand")
        .trust("site.pub")
        .target("file:v.raw")
        .run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("may have been finished")
            && !text(&o).contains("stopped before it finished"),
        "{}",
        text(&o)
    );
    assert!(!e.p("v.raw").exists());
}

/// A medium left mid-write (its dirty mark set, as a `medium rm` killed half-way leaves it):
/// inspect said nothing of it, and the generation the removal had begun to delete read as a
/// capture "cut off at its start". It says so now, with the two ways on.
#[test]
fn inspect_says_a_medium_was_left_mid_write() {
    let e = Env::new();
    keys(&e);
    random_disk(&e.p("a.raw"), 1, 43);
    let m = e.fat("m.img", "64MiB");
    e.capture(&m, "rand").source("a.raw").ok();
    let o = e.ok(&["inspect", "--medium", &m]);
    assert!(!text(&o).contains("mid-write"), "{}", text(&o));
    let mut img = fs::read(e.p("m.img")).unwrap();
    img[0x41] |= 1;
    fs::write(e.p("m.img"), &img).unwrap();
    let o = e.run(&["inspect", "--medium", &m]);
    assert!(
        text(&o).contains("was left mid-write by a run that was cut off")
            && text(&o).contains("running it again")
            && text(&o).contains("fsck --repair` puts the medium right"),
        "{}",
        text(&o)
    );
    // The JSON stays one object.
    let o = e.run(&["inspect", "--medium", &m, "--json"]);
    assert!(!text(&o).contains("mid-write by a run"), "{}", text(&o));
}

/// Two entries of a generation's directory under one short name (a damaged or hand-edited
/// directory): which one a tool opens differs, so verify names it (it passed).
#[test]
fn two_entries_under_one_short_name_are_a_finding() {
    let e = Env::new();
    keys(&e);
    random_disk(&e.p("a.raw"), 4, 37);
    let m = e.fat("m.img", "64MiB");
    e.capture(&m, "rand").source("a.raw").sign("site.key").ok();
    let o = e.run(&["verify", "--medium", &m]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let clean = fs::read(e.p("m.img")).unwrap();
    edit_dir(&e, "m.img", "MGEAR/rand/G0001", |img, dir, len| {
        // The short-name entries past `.` and `..` (attribute byte not 0x0f, not deleted).
        let names: Vec<usize> = (dir + 64..dir + len)
            .step_by(32)
            .take_while(|&at| img[at] != 0)
            .filter(|&at| img[at] != 0xe5 && img[at + 11] != 0x0f)
            .collect();
        assert!(names.len() >= 2, "{names:?}");
        let first: Vec<u8> = img[names[0]..names[0] + 11].to_vec();
        img[names[1]..names[1] + 11].copy_from_slice(&first);
    });
    let o = e.run(&["verify", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("MGEAR/rand/G0001: two entries share the short name"),
        "{}",
        text(&o)
    );
    // The segment's whole entry copied over JRNL-A's (which a finished generation does not
    // need): with the key, the records all check out, the failure is said to be the file
    // system's (ingest installs the disk), and its advice no longer points back at this
    // command.
    fs::write(e.p("m.img"), &clean).unwrap();
    edit_dir(&e, "m.img", "MGEAR/rand/G0001", |img, dir, len| {
        let seg = entry_named(img, dir, len, b"SEG-00~1   ");
        let jrnl = entry_named(img, dir, len, b"JRNL-A     ");
        let entry = img[seg..seg + 32].to_vec();
        img[jrnl..jrnl + 32].copy_from_slice(&entry);
    });
    let o = e.run(&[
        "verify",
        "--medium",
        &m,
        "--identity",
        "target.key",
        "--trust",
        "site.pub",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("two entries share the short name")
            && t.contains("not in the captures' data")
            && !t.contains("check the captures with `mgear verify --identity`"),
        "{t}"
    );
}

/// Each file of a finished generation whose entry was marked a directory (the attribute byte,
/// 0x10): every reader fails the medium, inspect too (it listed the capture as sound, exit 0,
/// for a segment or the COMMIT marked so; verify and ingest refused).
#[test]
fn any_file_of_a_generation_marked_a_directory_fails_inspect() {
    for short in [
        b"SEG-00~1   ",
        b"COMMIT     ",
        b"INDEX      ",
        b"JRNL-A     ",
    ] {
        let e = Env::new();
        keys(&e);
        random_disk(&e.p("a.raw"), 4, 35);
        let m = e.fat("m.img", "64MiB");
        e.capture(&m, "rand").source("a.raw").sign("site.key").ok();
        edit_dir(&e, "m.img", "MGEAR/rand/G0001", |img, dir, len| {
            let entry = entry_named(img, dir, len, short);
            img[entry + 11] |= 0x10;
        });
        let shown = String::from_utf8_lossy(short);
        for args in [
            &["inspect", "--medium", &m][..],
            &["verify", "--medium", &m],
            &["medium", "fsck", "--medium", &m],
        ] {
            let o = e.run(args);
            assert_eq!(o.status.code(), Some(1), "{shown} {args:?}: {}", text(&o));
            assert!(
                text(&o).contains("DAMAGED") || text(&o).contains("damaged"),
                "{shown} {args:?}: {}",
                text(&o)
            );
        }
        // A journal slot is not read once the generation is finished: the generation is
        // whole, the file system damaged. It was "generation 1 is damaged: do not ingest it
        // ... medium rm --force" of a generation that ingests bit for bit.
        if short == b"JRNL-A     " {
            let o = e.run(&["inspect", "--medium", &m]);
            assert!(
                text(&o).contains("G0001 complete") && text(&o).contains("reads whole without it"),
                "{}",
                text(&o)
            );
            e.ingest(&m, "rand")
                .trust("site.pub")
                .unsealed()
                .target("file:out.raw")
                .ok();
            mgear_tests::same_file(&e.p("out.raw"), &e.p("a.raw"));
        }
    }
}

/// A --size that is not whole 512-byte sectors is refused with the size that is (it made an
/// image the appliance refuses, and whose last bytes belong to no sector).
#[test]
fn a_size_of_no_whole_sectors_is_refused_with_one_that_is() {
    let e = Env::new();
    let o = e.run(&["medium", "format", "fat:m.img", "--size", "40000001"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("whole 512-byte sectors; give 40000000"),
        "{}",
        text(&o)
    );
    assert!(!e.p("m.img").exists());
    e.ok(&["medium", "format", "fat:m.img", "--size", "40000000"]);
    // An existing image of another length is formatted at its whole sectors.
    std::fs::write(e.p("odd.img"), vec![0u8; 40_000_003]).unwrap();
    e.ok(&["medium", "format", "fat:odd.img"]);
    assert_eq!(std::fs::metadata(e.p("odd.img")).unwrap().len(), 40_000_000);
}

/// A segment's entry marked a volume label (attribute 0x08): every reader skips it, so the
/// segment is missing from a medium of no span; inspect fails it (it listed the generation
/// as damaged and exited 0).
#[test]
fn a_segment_hidden_as_a_volume_label_fails_inspect() {
    let e = Env::new();
    keys(&e);
    random_disk(&e.p("a.raw"), 4, 35);
    let m = e.fat("m.img", "64MiB");
    e.capture(&m, "rand").source("a.raw").sign("site.key").ok();
    edit_dir(&e, "m.img", "MGEAR/rand/G0001", |img, dir, len| {
        let entry = entry_named(img, dir, len, b"SEG-00~1   ");
        img[entry + 11] = 0x08;
    });
    let o = e.run(&["inspect", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("is not on the medium: its directory entry was deleted or damaged"),
        "{}",
        text(&o)
    );
}

/// Damage a medium can carry that the commands read past or said nothing of, found by a
/// tester damaging media by hand: a flipped byte in the FSInfo sector (free-space hints
/// only) made every command call the medium "not a FAT32 file system" and advise `medium
/// format`; now it reads, `medium fsck` names it and `--repair` rewrites it (`fsck.fat -n`
/// then clean). A damaged span label was "no leftovers" for `medium fsck` and refused by
/// `--repair` with the usage code; it is damage now (exit 1, nothing changed). A name that
/// is not UTF-8 on a `dir:` medium hid from `verify` and `fsck`; a file named `MGEAR` was
/// "Not a directory (os error 20)".
#[test]
fn field_media_damage_that_was_unsaid_or_misnamed_is_named() {
    let e = Env::new();
    keys(&e);
    random_disk(&e.p("d.raw"), 3, 7);
    let m = e.fat("m.img", "40MiB");
    e.capture(&m, "web01").source("d.raw").ok();
    // FSInfo (its sector number in the boot sector), one signature byte flipped.
    let mut img = fs::read(e.p("m.img")).unwrap();
    let fsinfo = usize::from(u16::from_le_bytes([img[0x30], img[0x31]]))
        * usize::from(u16::from_le_bytes([img[0x0b], img[0x0c]]));
    img[fsinfo] ^= 0x20;
    fs::write(e.p("m.img"), &img).unwrap();
    e.ok(&["inspect", "--medium", &m]);
    let o = e.run(&["medium", "fsck", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        out(&o).contains("FSInfo sector") && out(&o).contains("read around"),
        "{}",
        text(&o)
    );
    assert!(fs::read(e.p("m.img")).unwrap() == img, "fsck wrote");
    let o = e.ok(&["medium", "fsck", "--medium", &m, "--repair"]);
    assert!(out(&o).contains("rewritten"), "{}", text(&o));
    e.ok(&["medium", "fsck", "--medium", &m]);
    mgear_tests::fsck_clean(&e.p("m.img"));
    e.ingest(&m, "web01")
        .untrusted()
        .target("file:out.raw")
        .ok();
    same_file(&e.p("out.raw"), &e.p("d.raw"));

    // A span label that does not decode, on a dir: medium.
    fs::create_dir(e.p("dm")).unwrap();
    e.capture("dir:dm", "web01").source("d.raw").ok();
    fs::write(e.p("dm/MGEAR/SPAN"), [0x5au8; 64]).unwrap();
    let before = fs::read_dir(e.p("dm/MGEAR")).unwrap().count();
    for repair in [false, true] {
        let mut line = e.line(&["medium", "fsck", "--medium", "dir:dm"]);
        if repair {
            line = line.arg("--repair");
        }
        let o = line.run();
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            out(&o).contains("span label (MGEAR/SPAN) is damaged"),
            "{}",
            text(&o)
        );
    }
    assert_eq!(fs::read_dir(e.p("dm/MGEAR")).unwrap().count(), before);
    assert_eq!(fs::read(e.p("dm/MGEAR/SPAN")).unwrap(), [0x5au8; 64]);
    fs::remove_file(e.p("dm/MGEAR/SPAN")).unwrap();

    // A directory whose name is not UTF-8.
    use std::os::unix::ffi::OsStrExt;
    let odd = e
        .p("dm/MGEAR")
        .join(std::ffi::OsStr::from_bytes(b"\xff\xfe"));
    fs::create_dir(&odd).unwrap();
    let o = e.run(&["verify", "--medium", "dir:dm"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = e.ok(&["medium", "fsck", "--medium", "dir:dm"]);
    assert!(
        out(&o).contains("note       MGEAR/\u{fffd}\u{fffd}: not part of the format"),
        "{}",
        text(&o)
    );
    fs::remove_dir(&odd).unwrap();
    e.ok(&["verify", "--medium", "dir:dm"]);

    // MGEAR a file.
    fs::rename(e.p("dm/MGEAR"), e.p("dm/MGEAR.x")).unwrap();
    fs::write(e.p("dm/MGEAR"), b"x").unwrap();
    let o = e.run(&["verify", "--medium", "dir:dm"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("a file stands where the format has a directory"),
        "{}",
        text(&o)
    );
}

/// A shipment whose key slots are gone (an erased appliance's medium, or the KEYS file
/// removed) was listed by `inspect --json` as complete, every machine `complete`: a script
/// took it for ready to ingest. Its generations now read `no-key-slots`, and it is not
/// complete.
#[test]
fn field_media_a_shipment_without_key_slots_is_not_complete() {
    let e = Env::new();
    keys(&e);
    random_disk(&e.p("d.raw"), 2, 9);
    fs::create_dir(e.p("dm")).unwrap();
    e.capture("dir:dm", "web01").source("d.raw").ok();
    let ship = |v: serde_json::Value| v["shipment"].clone();
    let s = ship(e.json(&["inspect", "--medium", "dir:dm"]));
    assert_eq!(s["complete"], true, "{s}");
    fs::remove_file(e.p("dm/MGEAR/web01/KEYS")).unwrap();
    let s = ship(e.json(&["inspect", "--medium", "dir:dm"]));
    assert_eq!(s["complete"], false, "{s}");
    let g = &s["machines"][0]["generations"][0];
    assert_eq!(g["state"], "no-key-slots", "{s}");
    assert!(
        g["problems"][0]
            .as_str()
            .is_some_and(|p| p.contains("nothing can decrypt it")),
        "{s}"
    );
}

/// FAT entries were stamped in the capture host's local time: beside the MANIFEST's Unix
/// times (UTC) they gave away the site's time zone (a finder read +05:30 off a medium
/// captured under `TZ=Asia/Kolkata`). They are UTC now, whatever `TZ` says.
#[test]
fn field_media_fat_timestamps_do_not_tell_the_time_zone() {
    let e = Env::new();
    keys(&e);
    random_disk(&e.p("d.raw"), 1, 3);
    let m = e.fat("m.img", "40MiB");
    let o = e
        .capture(&m, "web01")
        .source("d.raw")
        .command()
        .env("TZ", "Asia/Kolkata")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let minutes = |hm: &str| {
        let (h, m) = hm.trim().split_once(':').expect("H:MM");
        h.parse::<i64>().unwrap() * 60 + m.parse::<i64>().unwrap()
    };
    let now = Command::new("date")
        .args(["-u", "+%H:%M"])
        .output()
        .unwrap();
    let now = minutes(&out(&now));
    let listing = Command::new("mdir")
        .env("TZ", "UTC")
        .args(["-i", &e.s("m.img"), "::MGEAR/web01"])
        .output()
        .expect("mdir (Debian: mtools)");
    let line = out(&listing)
        .lines()
        .find(|l| l.starts_with("G0001"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("{}", text(&listing)));
    // `G0001  <DIR>  2026-12-07  2:42  G0001`
    let stamped = minutes(line.split_whitespace().nth(3).unwrap());
    let apart = (stamped - now)
        .rem_euclid(24 * 60)
        .min((now - stamped).rem_euclid(24 * 60));
    assert!(apart <= 3, "stamped {line:?}, UTC now {now} min");
}

/// A plan's `needed` is its sampled estimate plus 4 % of what it counts zeros and
/// compression to save: a plan 2 % under what a mixed disk stored said "fits" of a medium
/// the capture then filled. Incompressible data without zeros keeps nothing more (two
/// 40 MiB media hold 60 MiB of it).
#[test]
fn field_media_a_plan_keeps_a_margin_for_what_it_counts_as_saved() {
    let e = Env::new();
    keys(&e);
    let m = e.fat("m.img", "40MiB");
    // One MiB in three zeros (random_disk), the rest random: zeros saved.
    random_disk(&e.p("mixed.raw"), 12, 5);
    let mut noise = vec![0u8; 12 << 20];
    rand::rngs::SmallRng::seed_from_u64(6).fill_bytes(&mut noise);
    fs::write(e.p("random.raw"), &noise).unwrap();
    let plan = |src: &str| {
        e.capture(&m, src)
            .source(&format!("{src}.raw"))
            .arg("--dry-run")
            .json()
    };
    let p = plan("mixed");
    let (needed, stored) = (
        p["needed"].as_u64().unwrap(),
        p["estimate"]["stored_bytes"].as_u64().unwrap(),
    );
    // Four of its 12 MiB are zeros: about 4 MiB saved, 4 % of it kept.
    let margin = needed - stored;
    assert!(((3 << 20) / 25..=(5 << 20) / 25).contains(&margin), "{p}");
    let p = plan("random");
    assert_eq!(p["needed"], p["estimate"]["stored_bytes"], "{p}");
    // The holes a sparse file reports are zeros for certain: no margin for them (4 % of a
    // 64 GiB file's holes asked 2.5 GiB of a capture that stored 4 MiB).
    let f = fs::File::create(e.p("sparse.raw")).unwrap();
    f.set_len(64 << 30).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &noise[..4 << 20], 1000 << 20).unwrap();
    drop(f);
    let p = plan("sparse");
    assert_eq!(
        p["estimate"]["hole_bytes"],
        (64u64 << 30) - (4 << 20),
        "{p}"
    );
    let margin = p["needed"].as_u64().unwrap() - p["estimate"]["stored_bytes"].as_u64().unwrap();
    assert!(margin < 512 << 10, "{p}");
    assert_eq!(p["fits"], true, "{p}");
    // ... and so are the ones an NBD export reports (`base:allocation`): the same sparse disk
    // as a qcow2 served by qemu-nbd.
    let q = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(e.p("sparse.raw"))
        .arg(e.p("sparse.qcow2"))
        .status()
        .expect("qemu-img (Debian: qemu-utils)");
    assert!(q.success());
    let sock = e.p("sparse.sock");
    let server = mgear_tests::qemu_nbd(&["-r", "-t", "-f", "qcow2"], &sock, &e.p("sparse.qcow2"));
    let p = e
        .capture(&m, "sparse")
        .source(&format!("nbd+unix:///?socket={}", sock.display()))
        .arg("--dry-run")
        .json();
    drop(server);
    assert_eq!(
        p["estimate"]["hole_bytes"],
        (64u64 << 30) - (4 << 20),
        "{p}"
    );
    assert_eq!(p["fits"], true, "{p}");
    // Under a rate limit a plan samples about a second of it (4 chunks here); a disk that
    // fits only as far as compression saves is sampled in full (32 chunks) before it is
    // called fitting: 10 samples of a disk repeating 4 kinds of chunk said 15 MiB of what
    // stored 50, and the capture stopped full.
    let prose: Vec<u8> = (0..48u32 << 20)
        .map(|i| b"the quick brown fox jumps over the lazy dog "[(i % 44) as usize])
        .collect();
    fs::write(e.p("text.raw"), &prose).unwrap();
    let sampled = |src: &str, rate: &str| {
        let p = e
            .capture(&m, src)
            .source(&format!("{src}.raw"))
            .args(&["--dry-run", "--rate-limit", rate])
            .json();
        p["estimate"]["samples"].as_u64().unwrap()
    };
    assert_eq!(sampled("text", "4MiB"), 32);
    // One that fits whatever the samples say keeps the second's worth.
    assert_eq!(sampled("mixed", "4MiB"), 4);
    // A plan that does not fit names what it needs beside the estimate.
    let mut noise = vec![0u8; 48 << 20];
    rand::rngs::SmallRng::seed_from_u64(7).fill_bytes(&mut noise);
    fs::write(e.p("big.raw"), noise).unwrap();
    let o = e
        .capture(&m, "big")
        .source("big.raw")
        .arg("--dry-run")
        .run();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        out(&o).contains("DOES NOT FIT (it needs about 48.")
            && out(&o).contains("MiB with the estimate's margin"),
        "{}",
        text(&o)
    );
}

/// A `dir:` medium whose generation directory is a file: `verify` said "OK" where a
/// generation readable beside it hid it, and `medium rm` / `capture --abort` of a capture
/// whose only generation was so hidden removed "what a capture stopped at its start left",
/// its key slots with it. Named by verify, refused by both (a damaged FAT is refused too).
#[test]
fn field_media_a_generation_file_on_a_dir_medium_is_named_and_not_removed() {
    let e = Env::new();
    e.keygen();
    let mut d = vec![0u8; 2 << 20];
    rand::rngs::StdRng::seed_from_u64(81).fill_bytes(&mut d);
    fs::write(e.p("d.raw"), &d).unwrap();
    fs::create_dir(e.p("m")).unwrap();
    e.capture("dir:m", "web05").source("d.raw").ok();
    e.capture("dir:m", "web02").source("d.raw").ok();
    e.capture("dir:m", "web02")
        .source("d.raw")
        .arg("--delta")
        .ok();
    // web02: its newest generation's directory turned into a file, generation 1 intact.
    fs::remove_dir_all(e.p("m/MGEAR/web02/G0002")).unwrap();
    fs::write(e.p("m/MGEAR/web02/G0002"), b"x").unwrap();
    let o = e.run(&["verify", "--medium", "dir:m"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o)
            .contains("MGEAR/web02/G0002, a generation's name on an entry that is not a directory"),
        "{}",
        text(&o)
    );
    // web05: its only generation so hidden.
    fs::remove_dir_all(e.p("m/MGEAR/web05/G0001")).unwrap();
    fs::write(e.p("m/MGEAR/web05/G0001"), b"x").unwrap();
    for args in [
        vec!["medium", "rm", "--medium", "dir:m", "--name", "web05"],
        vec!["capture", "--abort", "--medium", "dir:m", "--name", "web05"],
        vec![
            "medium", "rm", "--medium", "dir:m", "--name", "web02", "--force",
        ],
    ] {
        let o = e.run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains("a generation hidden by damage")
                && text(&o).contains("nothing was removed"),
            "{}",
            text(&o)
        );
    }
    assert!(e.p("m/MGEAR/web05/KEYS").exists() && e.p("m/MGEAR/web02/G0001").exists());
}

/// A FAT32 boot sector whose sector-size field reads 1024 (a valid value), its backup intact:
/// said to be a copy cut short by half the image, exit 3, "copy it again in full".
#[test]
fn field_media_a_damaged_sector_size_is_a_damaged_boot_sector_not_a_cut_copy() {
    let e = Env::new();
    let m = e.fat("c.img", "64MiB");
    let mut img = fs::read(e.p("c.img")).unwrap();
    img[12] = 0x04;
    fs::write(e.p("c.img"), &img).unwrap();
    let o = e.run(&["verify", "--medium", &m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("FAT32 boot sector is damaged")
            && text(&o).contains("bytes per sector")
            && text(&o).contains("bs=512 skip=6")
            && !text(&o).contains("cut short"),
        "{}",
        text(&o)
    );
    // The `dd` it gives puts it right.
    let ok = std::process::Command::new("dd")
        .args([
            "if=c.img",
            "of=c.img",
            "bs=512",
            "skip=6",
            "count=1",
            "conv=notrunc",
        ])
        .current_dir(e.p(""))
        .status()
        .unwrap();
    assert!(ok.success());
    e.ok(&["inspect", "--medium", &m]);
}

/// `medium rm --generation 1 --force` beside a generation 2 whose MANIFEST is damaged: a
/// delta's parent cannot be read from it, and generation 1 was removed without a word (the
/// delta could then never be restored). Refused, naming the generation to remove first.
#[test]
fn field_media_a_parent_is_not_removed_beside_a_generation_whose_parent_is_unknown() {
    let e = Env::new();
    e.keygen();
    let mut d = vec![0u8; 2 << 20];
    rand::rngs::StdRng::seed_from_u64(83).fill_bytes(&mut d);
    fs::write(e.p("d.raw"), &d).unwrap();
    fs::create_dir(e.p("m")).unwrap();
    e.capture("dir:m", "web01").source("d.raw").ok();
    d[5] ^= 1;
    fs::write(e.p("d.raw"), &d).unwrap();
    e.capture("dir:m", "web01")
        .source("d.raw")
        .arg("--delta")
        .ok();
    let mf = e.p("m/MGEAR/web01/G0002/MANIFEST");
    let mut b = fs::read(&mf).unwrap();
    b[100] ^= 0xff;
    fs::write(&mf, b).unwrap();
    let o = e.run(&[
        "medium",
        "rm",
        "--medium",
        "dir:m",
        "--name",
        "web01",
        "--generation",
        "1",
        "--force",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("generation 2 is damaged")
            && text(&o).contains("Remove generation 2 first"),
        "{}",
        text(&o)
    );
    assert!(e.p("m/MGEAR/web01/G0001/MANIFEST").exists());
    // As it says: generation 2 first, then 1.
    for g in ["2", "1"] {
        e.ok(&[
            "medium",
            "rm",
            "--medium",
            "dir:m",
            "--name",
            "web01",
            "--generation",
            g,
            "--force",
        ]);
    }
}

/// A medium whose FSInfo free count another system left stale (5 clusters on an empty
/// 40 MiB volume): inspect and verify called its directories "likely damaged" (exit 1), a
/// capture refused it as too small, and `medium fsck --json` said "found 0 findings" with
/// the next step of an unfinished capture. The free space is counted from the FAT, and fsck
/// names fsck.fat's finding and the repair that puts it right.
#[test]
fn a_stale_fsinfo_free_count_neither_fills_nor_damages_a_medium() {
    let e = Env::new();
    e.keygen();
    let medium = e.fat("m.img", "40MiB");
    let mut img = fs::read(e.p("m.img")).unwrap();
    let fsinfo = u64::from(u16::from_le_bytes([img[48], img[49]]))
        * u64::from(u16::from_le_bytes([img[11], img[12]]));
    let at = fsinfo as usize + 488;
    img[at..at + 4].copy_from_slice(&5u32.to_le_bytes());
    fs::write(e.p("m.img"), &img).unwrap();

    let o = e.run(&["medium", "fsck", &medium, "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["fsck_fat"]["repairable"].as_bool().unwrap(), "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("fsck.fat found problems"), "{v}");
    assert!(!message.contains("0 findings"), "{v}");
    assert!(
        v["error"]["hint"].as_str().unwrap().contains("--repair"),
        "{v}"
    );

    let o = e.run(&["inspect", "--medium", &medium]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!text(&o).contains("damaged"), "{}", text(&o));
    fs::write(e.p("disk.raw"), vec![0x5a; 12 << 20]).unwrap();
    e.capture(&medium, "web01").source("disk.raw").ok();
    e.ok(&["medium", "fsck", &medium]);
}

/// A directory of someone's own in a finished generation's directory (`mmd`, `mkdir`):
/// `medium fsck` notes it and leaves it, verify passes, and inspect called the file system
/// damaged ("its attribute byte is damaged"), exit 1. Only a name the format gives a file,
/// marked a directory, is that damage.
#[test]
fn a_directory_of_someones_own_in_a_generation_is_no_damage_to_inspect() {
    let e = Env::new();
    e.keygen();
    fs::write(e.p("a.raw"), vec![0x3c; 4 << 20]).unwrap();
    fs::create_dir(e.p("mnt")).unwrap();
    e.capture("dir:mnt", "web01").source("a.raw").ok();
    fs::create_dir(e.p("mnt/MGEAR/web01/G0001/junk")).unwrap();
    let o = e.run(&["inspect", "--medium", "dir:mnt"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!text(&o).contains("damaged"), "{}", text(&o));
    e.ok(&["verify", "--medium", "dir:mnt"]);
}

/// One flipped bit in the root directory's entry (`MGEAR` read as `MGEAR0`) hid every
/// capture: fsck said clean, and a capture made a new `MGEAR` beside it, stranding the old
/// ones. Named by verify, inspect, fsck and ingest; capture writes nothing.
#[test]
fn field_media_a_root_directory_with_a_damaged_name_is_named_not_written_beside() {
    let e = Env::new();
    keys(&e);
    random_disk(&e.p("disk.raw"), 3, 71);
    e.ok(&["medium", "format", "fat:m.img", "--size", "40MiB"]);
    e.capture("fat:m.img", "web01")
        .source("disk.raw")
        .sign("site.key")
        .ok();
    let mut img = fs::read(e.p("m.img")).unwrap();
    let at = img
        .windows(12)
        .position(|w| w == b"MGEAR      \x10")
        .expect("the root's MGEAR entry");
    img[at + 5] = b'0';
    fs::write(e.p("m.img"), &img).unwrap();
    let said = "holds a directory \"MGEAR0\" and no MGEAR";
    for args in [
        &["verify", "--medium", "fat:m.img"][..],
        &["inspect", "--medium", "fat:m.img"][..],
        &["medium", "fsck", "--medium", "fat:m.img"][..],
    ] {
        let o = e.run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(said), "{args:?}: {}", text(&o));
    }
    let o = e
        .ingest("fat:m.img", "web01")
        .trust("site.pub")
        .target("file:v.raw")
        .unsealed()
        .run();
    assert!(
        !o.status.success() && text(&o).contains(said),
        "{}",
        text(&o)
    );
    let o = e.capture("fat:m.img", "new").source("disk.raw").run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains(said), "{}", text(&o));
    assert_eq!(fs::read(e.p("m.img")).unwrap(), img, "the capture wrote");
}

/// A disk whose medium is in a partition (formatted through the partition's device): its
/// format was refused for the partition table alone, and `--force` reported no capture
/// destroyed. The captures in its partitions are named.
#[test]
fn field_media_format_of_a_partitioned_disk_names_the_captures_in_its_partitions() {
    let e = Env::new();
    keys(&e);
    random_disk(&e.p("disk.raw"), 2, 72);
    e.ok(&["medium", "format", "fat:part.img", "--size", "40MiB"]);
    e.capture("fat:part.img", "c1")
        .source("disk.raw")
        .sign("site.key")
        .ok();
    // An MBR disk of 48 MiB whose first partition, at 1 MiB, holds that medium.
    let part = fs::read(e.p("part.img")).unwrap();
    let mut disk = vec![0u8; 48 << 20];
    disk[1 << 20..(1 << 20) + part.len()].copy_from_slice(&part);
    let entry = &mut disk[446..462];
    entry[4] = 0x0c;
    entry[8..12].copy_from_slice(&2048u32.to_le_bytes());
    entry[12..16].copy_from_slice(&((part.len() / 512) as u32).to_le_bytes());
    disk[510] = 0x55;
    disk[511] = 0xaa;
    fs::write(e.p("stick.img"), &disk).unwrap();
    let o = e.run(&["medium", "format", "fat:stick.img"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("MotionGear capture c1 (in partition 1)"),
        "{}",
        text(&o)
    );
    assert_eq!(fs::read(e.p("stick.img")).unwrap(), disk);
    let v = e.json(&["medium", "format", "fat:stick.img", "--force"]);
    assert_eq!(v["captures_destroyed"][0], "c1 (in partition 1)", "{v}");
}
