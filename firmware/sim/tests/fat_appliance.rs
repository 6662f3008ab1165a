//! The firmware core's verify, seal, arrival and crypto-erase on the
//! simulator's platform (`SimPlatform`: medium image file, secret and
//! custody-log files), which mounts the medium with the board's FAT32 layer
//! (`mgear_hardware::fat::FatFiles`) exactly as the board's `with_files`
//! does. The medium is formatted and captured onto by the host's `FatStore`
//! (as `mgear medium format` + `mgear capture` do), so this is the board's
//! FAT code reading what the host's engine wrote. The simulator's medium
//! has power-on hardware write protection, like an eMMC, so the core's use
//! of `BlockDevice::set_write_protect` is checked too; a reboot is a new
//! platform opened on the same files, as after a power cut.

use std::path::{Path, PathBuf};
use std::process::Command;

use image_format::age::secrecy::SecretString;
use image_format::store::fat::{FatStore, FormatOptions, MIN_FAT32_BYTES};
use image_format::{CaptureParams, CaptureWriter, Store};
use mgear_appliance_sim::{FileMedium, SimPlatform};
use mgear_firmware::attest::file_digests;
use mgear_firmware::hal::{BlockDevice, HwError};
use mgear_firmware::protocol::{DeviceState, ErrorCode, Pin, Place, Request, Response};
use mgear_firmware::regions::hash_regions;
use mgear_firmware::testing::MemConsole;
use mgear_firmware::{Appliance, BlockError, Config};
use mgear_hardware::fat::FatFiles;
use tempfile::TempDir;

const PIN: &str = "314159";
const SEG0: &str = "MGEAR/web01/G0001/SEG-00000";

type Sim = Appliance<SimPlatform<MemConsole>>;

fn medium_path(dir: &Path) -> PathBuf {
    dir.join("medium.img")
}

/// The simulator's platform on `dir`'s medium and state, console in memory.
fn platform(dir: &Path) -> SimPlatform<MemConsole> {
    SimPlatform::open(
        &dir.join("state"),
        &medium_path(dir),
        MemConsole::default(),
        dir.join("appliance.sock"),
    )
    .unwrap()
}

/// Whether the medium refuses block writes below the block service (the
/// hardware write protection): writes block 0 back unchanged, so probing
/// an unprotected medium changes nothing.
fn hw_write_protected(a: &mut Sim) -> bool {
    let m = &mut a.platform_mut().medium;
    let mut b0 = vec![0u8; m.block_size()];
    m.read_blocks(0, &mut b0).unwrap();
    match m.write_blocks(0, &b0) {
        Ok(()) => false,
        Err(HwError::WriteProtected) => true,
        Err(e) => panic!("probing write protection: {e}"),
    }
}

fn cfg() -> Config {
    Config {
        pin_iterations: 10,
        region_size: 256 * 1024,
        ..Config::default()
    }
}

fn open_rw(p: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap()
}

/// `dir`'s medium: a FAT32 image holding one capture `web01` written by
/// the host side.
fn captured_medium(dir: &Path) {
    let p = medium_path(dir);
    std::fs::File::create(&p)
        .unwrap()
        .set_len(MIN_FAT32_BYTES + (2 << 20))
        .unwrap();
    FatStore::format(open_rw(&p), &FormatOptions::default()).unwrap();
    let mut host = FatStore::open(open_rw(&p)).unwrap();
    let size = 3 * 64 * 1024 + 1000;
    let mut params = CaptureParams::new("web01", size);
    params.chunk_size = 64 * 1024;
    params.compress = false;
    params.recipients = vec![image_format::age::x25519::Identity::generate().to_public()];
    params.passphrase = Some(SecretString::from(String::from("correct horse")));
    params.passphrase_work_factor = Some(4);
    let mut w = CaptureWriter::begin(&mut host, params, None).unwrap();
    let enc = w.encoder();
    for i in 0..4u64 {
        let len = if i == 3 { 1000 } else { 64 * 1024 };
        let data: Vec<u8> = (0..len).map(|j| (j as u64 * 31 + i * 7) as u8).collect();
        w.append(enc.encode(i, &data).unwrap()).unwrap();
    }
    w.finish().unwrap();
    host.unmount().unwrap();
}

fn unlock(a: &mut Sim) {
    assert_eq!(
        a.handle(Request::Unlock { pin: Pin::new(PIN) }),
        Response::Unlocked
    );
}

/// A scratch directory with a captured medium, and the appliance on it
/// provisioned, unlocked, verified and sealed over the FAT layer.
fn sealed() -> (TempDir, Sim) {
    let dir = tempfile::tempdir().unwrap();
    captured_medium(dir.path());
    let mut a = Appliance::new(platform(dir.path()), cfg()).unwrap();
    assert!(matches!(
        a.handle(Request::Provision { pin: Pin::new(PIN) }),
        Response::Provisioned { .. }
    ));
    unlock(&mut a);
    let r = a.handle(Request::Verify);
    let Response::Verified(report) = r else {
        panic!("{r:?}")
    };
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.captures, 1);
    assert!(report.records >= 4, "{report:?}");
    let r = a.handle(Request::Seal);
    let Response::Sealed { attestation, .. } = r else {
        panic!("{r:?}")
    };
    let paths: Vec<&str> = attestation
        .body
        .files
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert!(
        paths.contains(&SEG0) && paths.contains(&"MGEAR/web01/KEYS"),
        "{paths:?}"
    );
    assert_eq!(a.state(), DeviceState::Sealed);
    (dir, a)
}

/// Power cut and power-up: the platform is opened again on the same files.
fn reboot(a: Sim, dir: &Path) -> Sim {
    drop(a);
    Appliance::new(platform(dir), cfg()).unwrap()
}

#[test]
fn seal_engages_write_protection_and_arrival_passes_over_the_board_fat_layer() {
    let (dir, mut a) = sealed();
    assert!(hw_write_protected(&mut a), "seal engaged hardware WP");
    assert_eq!(
        a.platform_mut().medium.write_blocks(0, &[0u8; 512]),
        Err(HwError::WriteProtected)
    );
    let medium_at_seal = std::fs::read(medium_path(dir.path())).unwrap();

    // Power-on protection is lost at power-up; the core engages it again.
    let mut a = reboot(a, dir.path());
    assert!(hw_write_protected(&mut a), "re-engaged at power-up");
    assert_eq!(
        a.block_write(0, &[0u8; 512]),
        Err(BlockError::WriteProtected(DeviceState::Sealed))
    );
    // Arrival mounts, walks and unmounts a write-protected medium: any write
    // by the FAT layer would have failed and been reported as a problem.
    let r = a.handle(Request::Arrival { challenge: [1; 32] });
    let Response::Arrival {
        attestation: Some(arrival),
        problems,
    } = r
    else {
        panic!("{r:?}")
    };
    assert!(problems.is_empty(), "{problems:?}");
    assert!(arrival.body.records >= 4);
    assert_eq!(a.state(), DeviceState::Arrived);
    assert!(std::fs::read(medium_path(dir.path())).unwrap() == medium_at_seal);
}

#[test]
fn a_tampered_record_is_named_at_arrival() {
    let (dir, mut a) = sealed();
    // Someone rewrites one stored byte of the first record with a host FAT
    // driver behind the appliance's back (card pulled and re-inserted).
    {
        let mut host = FatStore::open(open_rw(&medium_path(dir.path()))).unwrap();
        let mut b = [0u8; 1];
        host.read_exact_at(SEG0, 300, &mut b).unwrap();
        host.write_at(SEG0, 300, &[b[0] ^ 1]).unwrap();
        host.unmount().unwrap();
    }

    let r = a.handle(Request::Arrival { challenge: [1; 32] });
    let Response::Arrival {
        attestation: None,
        problems,
    } = r
    else {
        panic!("{r:?}")
    };
    assert!(
        problems.iter().any(|p| matches!(
            &p.place,
            Place::Segment { capture, segment, record: Some(_), .. }
                if capture == "web01" && segment == "SEG-00000"
        )),
        "{problems:?}"
    );
    assert_eq!(
        a.state(),
        DeviceState::Sealed,
        "a failed arrival does not count"
    );
}

#[test]
fn erase_of_a_sealed_medium_releases_write_protection_and_removes_key_slots() {
    let (dir, mut a) = sealed();
    // A sealed appliance refuses unlock: the PIN comes with the erase.
    let r = a.handle(Request::Erase {
        overwrite: false,
        pin: Some(Pin::new(PIN)),
    });
    let Response::Erased {
        key_slots,
        medium_overwritten: false,
    } = r
    else {
        panic!("{r:?}")
    };
    assert!(
        key_slots >= 2,
        "recipient and passphrase slots: {key_slots}"
    );
    assert!(!hw_write_protected(&mut a), "erase released WP");
    let r = a.handle(Request::Seal);
    assert!(
        matches!(&r, Response::Error { code: ErrorCode::Erased, message }
            if message.contains("cannot be provisioned again")),
        "{r:?}"
    );

    // The host sees a clean volume with the capture but no key slots.
    let img = medium_path(dir.path());
    let out = Command::new("fsck.fat")
        .arg("-n")
        .arg(&img)
        .output()
        .expect("fsck.fat from dosfstools (./test.sh installs it)");
    assert!(
        out.status.success(),
        "fsck.fat: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut host = FatStore::open(open_rw(&img)).unwrap();
    let names: Vec<String> = host
        .list("MGEAR/web01")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("KEYS")),
        "key slots left: {names:?}"
    );
    assert!(host.len(SEG0).unwrap().is_some());
}

#[test]
fn seal_digests_equal_the_separate_passes_over_the_medium() {
    // The simulator hashes the regions on a second thread beside the file
    // walk, and takes the file digests from the verifier's reads: the
    // attestation must hold exactly what the separate passes compute.
    let (dir, mut a) = sealed();
    let Response::Attestations {
        seal: Some(seal), ..
    } = a.handle(Request::GetAttestations)
    else {
        panic!("no seal attestation")
    };
    let body = &seal.body;
    let mut raw = FileMedium::open(&medium_path(dir.path())).unwrap();
    let regions = hash_regions(&mut raw, body.region_size, 64 * 1024, &mut |_, _| true)
        .unwrap()
        .unwrap();
    assert_eq!(body.regions, regions);
    assert_eq!(
        regions.len() as u64,
        body.medium_bytes.div_ceil(body.region_size)
    );
    let mut files = FatFiles::mount(&mut raw).unwrap();
    let digests = file_digests(&mut files, &mut |_, _| {}).unwrap();
    files.unmount().unwrap();
    assert_eq!(body.files, digests);
    assert!(digests.iter().any(|d| d.path == SEG0 && d.len > 0));
}
