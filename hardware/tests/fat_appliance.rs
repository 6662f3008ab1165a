//! The firmware core's verify, seal, arrival and crypto-erase running on the
//! board's FAT32 layer (`mgear_hardware::fat::FatFiles`) instead of the
//! host's `FatStore`: a platform that is the core's fake platform except for
//! the medium, a FAT32 image in RAM (formatted and captured onto by the
//! host's `FatStore`, as `mgear medium format` + `mgear capture` do) mounted
//! with `FatFiles` exactly as the board's `with_files` does. Its medium has
//! power-on hardware write protection, like an eMMC, so the core's use of
//! `BlockDevice::set_write_protect` is checked too.

use std::path::Path;
use std::process::Command;

use image_format::age::secrecy::SecretString;
use image_format::store::fat::{FatStore, FormatOptions, MIN_FAT32_BYTES};
use image_format::{CaptureParams, CaptureWriter, Store};
use mgear_firmware::hal::{
    BlockDevice, FilesFn, HwError, Platform, StoreError, DEFAULT_MAX_TRANSFER,
};
use mgear_firmware::protocol::{DeviceState, ErrorCode, Pin, Place, Request, Response};
use mgear_firmware::testing::{
    FakeClock, FakePlatform, MemConsole, MemDisk, MemIndicators, MemLog, MemSecrets, TestRng,
};
use mgear_firmware::{Appliance, BlockError, Config};
use mgear_hardware::fat::FatFiles;

const PIN: &str = "314159";
const SEG0: &str = "MGEAR/web01/G0001/SEG-00000";

/// RAM medium with power-on write protection (lost at power-up).
struct WpDisk {
    disk: MemDisk,
    protected: bool,
}

impl BlockDevice for WpDisk {
    fn block_size(&self) -> usize {
        self.disk.block_size()
    }
    fn block_count(&self) -> u64 {
        self.disk.block_count()
    }
    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), HwError> {
        self.disk.read_blocks(lba, buf)
    }
    fn write_blocks(&mut self, lba: u64, data: &[u8]) -> Result<(), HwError> {
        if self.protected {
            return Err(HwError::WriteProtected);
        }
        self.disk.write_blocks(lba, data)
    }
    fn flush(&mut self) -> Result<(), HwError> {
        self.disk.flush()
    }
    fn max_transfer(&self) -> usize {
        2 * DEFAULT_MAX_TRANSFER
    }
    fn set_write_protect(&mut self, on: bool) -> Result<bool, HwError> {
        self.protected = on;
        Ok(true)
    }
}

/// The fake platform with the board's file layer over a FAT32 medium.
struct BoardLike {
    fake: FakePlatform,
    medium: WpDisk,
}

impl BoardLike {
    fn after_power_loss(&self, seed: u64) -> BoardLike {
        BoardLike {
            fake: self.fake.after_power_loss(seed),
            medium: WpDisk {
                disk: self.medium.disk.clone(),
                protected: false,
            },
        }
    }
}

impl Platform for BoardLike {
    type Console = MemConsole;
    type Medium = WpDisk;
    type Secrets = MemSecrets;
    type Log = MemLog;
    type Clock = FakeClock;
    type Rng = TestRng;
    type Indicators = MemIndicators;

    fn console(&mut self) -> &mut MemConsole {
        &mut self.fake.console
    }
    fn medium(&mut self) -> &mut WpDisk {
        &mut self.medium
    }
    fn secrets(&mut self) -> &mut MemSecrets {
        &mut self.fake.secrets
    }
    fn log_storage(&mut self) -> &mut MemLog {
        &mut self.fake.log
    }
    fn clock(&mut self) -> &mut FakeClock {
        &mut self.fake.clock
    }
    fn rng(&mut self) -> &mut TestRng {
        &mut self.fake.rng
    }
    fn indicators(&mut self) -> &mut MemIndicators {
        &mut self.fake.indicators
    }
    // What hardware/src/board/platform.rs does.
    fn with_files(&mut self, f: &mut FilesFn<'_, MemConsole>) -> Result<(), StoreError> {
        let mut files = FatFiles::mount(&mut self.medium)?;
        let result = f(&mut files, &mut self.fake.console);
        let unmounted = files.unmount();
        result.and(unmounted)
    }
    fn medium_locator(&self) -> String {
        "test:fat".into()
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

/// A FAT32 image holding one capture `web01` written by the host side.
fn captured_medium() -> MemDisk {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("medium.img");
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
    MemDisk {
        data: std::fs::read(&p).unwrap(),
        ..MemDisk::new(0)
    }
}

fn unlock(a: &mut Appliance<BoardLike>) {
    assert_eq!(
        a.handle(Request::Unlock { pin: Pin::new(PIN) }),
        Response::Unlocked
    );
}

/// Provisioned, unlocked, verified and sealed over the FAT layer.
fn sealed(seed: u64) -> Appliance<BoardLike> {
    let p = BoardLike {
        fake: FakePlatform::new(0, seed),
        medium: WpDisk {
            disk: captured_medium(),
            protected: false,
        },
    };
    let mut a = Appliance::new(p, cfg()).unwrap();
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
    a
}

fn reboot(mut a: Appliance<BoardLike>, seed: u64) -> Appliance<BoardLike> {
    let p = a.platform_mut().after_power_loss(seed);
    Appliance::new(p, cfg()).unwrap()
}

#[test]
fn seal_engages_write_protection_and_arrival_passes_over_the_board_fat_layer() {
    let mut a = sealed(1);
    assert!(
        a.platform_mut().medium.protected,
        "seal engaged hardware WP"
    );
    assert_eq!(
        a.platform_mut().medium.write_blocks(0, &[0u8; 512]),
        Err(HwError::WriteProtected)
    );
    let medium_at_seal = a.platform_mut().medium.disk.data.clone();

    // Power-on protection is lost at power-up; the core engages it again.
    let mut a = reboot(a, 2);
    assert!(a.platform_mut().medium.protected, "re-engaged at power-up");
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
    assert!(a.platform_mut().medium.disk.data == medium_at_seal);
}

#[test]
fn a_tampered_record_is_named_at_arrival() {
    let mut a = sealed(3);
    // Someone rewrites one stored byte of the first record with a host FAT
    // driver behind the appliance's back (card pulled and re-inserted).
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("tampered.img");
    std::fs::write(&img, &a.platform_mut().medium.disk.data).unwrap();
    {
        let mut host = FatStore::open(open_rw(&img)).unwrap();
        let mut b = [0u8; 1];
        host.read_exact_at(SEG0, 300, &mut b).unwrap();
        host.write_at(SEG0, 300, &[b[0] ^ 1]).unwrap();
        host.unmount().unwrap();
    }
    a.platform_mut().medium.disk.data = std::fs::read(&img).unwrap();

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
    let mut a = sealed(4);
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
    assert!(!a.platform_mut().medium.protected, "erase released WP");
    let r = a.handle(Request::Seal);
    assert!(
        matches!(&r, Response::Error { code: ErrorCode::Erased, message }
            if message.contains("cannot be provisioned again")),
        "{r:?}"
    );

    // The host sees a clean volume with the capture but no key slots.
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("erased.img");
    std::fs::write(&img, &a.platform_mut().medium.disk.data).unwrap();
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
