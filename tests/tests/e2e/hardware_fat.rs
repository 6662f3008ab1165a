//! The board's FAT32 layer (`mgear_hardware::fat::FatFiles`, what the board
//! firmware's and the simulator's `with_files` mount) against media made and
//! read by the real CLI: mounted over the simulator's medium
//! (`mgear_appliance_sim::FileMedium`, the image file as a block device), it
//! reads a medium written by `mgear medium format` + `mgear capture` exactly
//! as the host's `FatStore` does and verifies it keylessly, and what it
//! writes, `fsck.fat` finds clean and `mgear verify` still reads.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use image_format::store::fat::FatStore;
use image_format::store::EntryKind;
use image_format::{verify_keyless, NoProgress, Store};
use mgear_appliance_sim::FileMedium;
use mgear_hardware::fat::FatFiles;
use mgear_tests::Env;

/// Every directory (`path/`) and file with its content.
fn walk(s: &mut dyn Store, dir: &str, out: &mut BTreeMap<String, Vec<u8>>) {
    for e in s.list(dir).unwrap() {
        let path = if dir.is_empty() {
            e.name.clone()
        } else {
            format!("{dir}/{}", e.name)
        };
        if e.kind == EntryKind::Dir {
            out.insert(format!("{path}/"), Vec::new());
            walk(s, &path, out);
        } else {
            let mut data = vec![0u8; e.len as usize];
            s.read_exact_at(&path, 0, &mut data).unwrap();
            out.insert(path, data);
        }
    }
}

fn open_rw(p: &Path) -> fs::File {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap()
}

#[test]
fn board_fat_layer_reads_cli_media_and_the_cli_reads_what_it_writes() {
    let e = Env::new();
    e.keygen();
    // A 6 MiB source: varied data with a zero run in the middle.
    let mut disk: Vec<u8> = (0..6u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    disk[2 << 20..3 << 20].fill(0);
    fs::write(e.p("disk.raw"), &disk).unwrap();
    let m = e.fat("medium.img", "40MiB");
    e.capture(&m, "web01").source("disk.raw").ok();
    let img = e.p("medium.img");

    let mut host = FatStore::open(open_rw(&img)).unwrap();
    let mut expected = BTreeMap::new();
    walk(&mut host, "", &mut expected);
    assert!(
        expected.keys().any(|k| k.contains("SEG-")),
        "{:?}",
        expected.keys()
    );
    let host_report = verify_keyless(&mut host, &mut NoProgress).unwrap();
    drop(host);

    let mut dev = FileMedium::open(&img).unwrap();
    {
        let mut ours = FatFiles::mount(&mut dev).unwrap();
        let mut seen = BTreeMap::new();
        walk(&mut ours, "", &mut seen);
        assert_eq!(seen, expected, "the board layer reads what the CLI wrote");
        let report = verify_keyless(&mut ours, &mut NoProgress).unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(
            (report.captures, report.records, report.bytes),
            (host_report.captures, host_report.records, host_report.bytes)
        );
        assert!(report.records > 0);

        // The board writes a long-named file, renames and resizes it.
        ours.write_at("board notes, written on the appliance.txt", 0, b"hello")
            .unwrap();
        ours.set_len("board notes, written on the appliance.txt", 4)
            .unwrap();
        ours.rename(
            "board notes, written on the appliance.txt",
            "board notes (renamed).txt",
        )
        .unwrap();
        ours.unmount().unwrap();
    }
    drop(dev);

    let out = Command::new("fsck.fat")
        .arg("-n")
        .arg(&img)
        .output()
        .expect("fsck.fat (Debian: dosfstools)");
    assert!(
        out.status.success(),
        "fsck.fat: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v = e.json(&[
        "verify",
        "--allow-untrusted",
        "--medium",
        &m,
        "--identity",
        "target.key",
    ]);
    assert_eq!(v["ok"], true, "{v}");
    let mut host = FatStore::open(open_rw(&img)).unwrap();
    let mut b = vec![0u8; 4];
    host.read_exact_at("board notes (renamed).txt", 0, &mut b)
        .unwrap();
    assert_eq!(b, b"hell");
    assert_eq!(
        host.len("board notes, written on the appliance.txt")
            .unwrap(),
        None
    );
}
