//! In-memory fake platform for tests, with fault injection (power cut at
//! the N-th write of the medium, the secret store or the custody log).
//! Enabled by feature `testing` or in this crate's own tests.
//!
//! The fake keeps the file-level view ([`MemStore`]) apart from the raw
//! block device ([`MemDisk`]): real platforms mount FAT32 over the raw
//! device, which the core does not care about. Tests change one or the other
//! to exercise file-level and region-level detection.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::convert::Infallible;

use image_format::store::MemStore;
use image_format::StoreError;
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};

use crate::hal::{
    BlockDevice, Clock, FilesFn, HwError, Indicators, Key, LedState, LogStorage, Platform,
    SecretSlot, SecretStore,
};

/// Console: bytes the test "types" and bytes the appliance wrote.
#[derive(Debug, Default)]
pub struct MemConsole {
    pub input: VecDeque<u8>,
    pub output: Vec<u8>,
}

impl MemConsole {
    /// Queue bytes as if the host sent them.
    pub fn send(&mut self, bytes: &[u8]) {
        self.input.extend(bytes.iter().copied());
    }

    /// Everything written since the last call.
    pub fn take_output(&mut self) -> Vec<u8> {
        core::mem::take(&mut self.output)
    }
}

impl embedded_io::ErrorType for MemConsole {
    type Error = Infallible;
}

impl embedded_io::Read for MemConsole {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        let mut n = 0;
        while n < buf.len() {
            match self.input.pop_front() {
                Some(b) => {
                    buf[n] = b;
                    n += 1;
                }
                None => break,
            }
        }
        Ok(n)
    }
}

impl embedded_io::ReadReady for MemConsole {
    fn read_ready(&mut self) -> Result<bool, Infallible> {
        Ok(!self.input.is_empty())
    }
}

impl embedded_io::Write for MemConsole {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

/// Raw medium in memory; `writes_left` = writes that succeed before a power cut;
/// `flush_error` = what the next flushes report (a write-back error).
#[derive(Debug, Clone)]
pub struct MemDisk {
    pub data: Vec<u8>,
    pub block_size: usize,
    pub writes: u64,
    pub writes_left: Option<u64>,
    pub flush_error: Option<&'static str>,
}

impl MemDisk {
    pub fn new(bytes: usize) -> Self {
        MemDisk {
            data: alloc::vec![0; bytes],
            block_size: 512,
            writes: 0,
            writes_left: None,
            flush_error: None,
        }
    }

    fn span(&self, lba: u64, len: usize) -> Result<core::ops::Range<usize>, HwError> {
        if !len.is_multiple_of(self.block_size) {
            return Err(HwError::Io("length is not a whole number of blocks".into()));
        }
        let start = usize::try_from(lba)
            .ok()
            .and_then(|l| l.checked_mul(self.block_size));
        match start.and_then(|s| s.checked_add(len).map(|e| s..e)) {
            Some(r) if r.end <= self.data.len() => Ok(r),
            _ => Err(HwError::OutOfRange),
        }
    }
}

impl BlockDevice for MemDisk {
    fn block_size(&self) -> usize {
        self.block_size
    }
    fn block_count(&self) -> u64 {
        (self.data.len() / self.block_size) as u64
    }
    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), HwError> {
        let r = self.span(lba, buf.len())?;
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }
    fn write_blocks(&mut self, lba: u64, data: &[u8]) -> Result<(), HwError> {
        let r = self.span(lba, data.len())?;
        if let Some(n) = self.writes_left.as_mut() {
            if *n == 0 {
                return Err(HwError::Io("power cut".into()));
            }
            *n -= 1;
        }
        self.data[r].copy_from_slice(data);
        self.writes += 1;
        Ok(())
    }
    fn flush(&mut self) -> Result<(), HwError> {
        match self.flush_error {
            Some(why) => Err(HwError::Io(why.into())),
            None => Ok(()),
        }
    }
}

/// Secret store in memory; `writes_left` = writes that succeed before a
/// power cut (later writes fail and change nothing: the store is atomic).
#[derive(Debug, Clone, Default)]
pub struct MemSecrets {
    pub slots: BTreeMap<&'static str, Vec<u8>>,
    pub writes_left: Option<u64>,
}

impl MemSecrets {
    fn tick(&mut self) -> Result<(), HwError> {
        if let Some(n) = self.writes_left.as_mut() {
            if *n == 0 {
                return Err(HwError::Io("power cut".into()));
            }
            *n -= 1;
        }
        Ok(())
    }
}

impl SecretStore for MemSecrets {
    fn read(&mut self, slot: SecretSlot) -> Result<Option<Vec<u8>>, HwError> {
        Ok(self.slots.get(slot.name()).cloned())
    }
    fn write(&mut self, slot: SecretSlot, value: &[u8]) -> Result<(), HwError> {
        self.tick()?;
        self.slots.insert(slot.name(), value.to_vec());
        Ok(())
    }
    fn erase(&mut self, slot: SecretSlot) -> Result<(), HwError> {
        self.tick()?;
        self.slots.remove(slot.name());
        Ok(())
    }
}

/// Custody log storage in memory. `fail_after` = appends that succeed
/// before the next one is torn (half written, then an error).
#[derive(Debug, Default, Clone)]
pub struct MemLog {
    pub data: Vec<u8>,
    pub fail_after: Option<u64>,
}

impl LogStorage for MemLog {
    fn len(&mut self) -> Result<u64, HwError> {
        Ok(self.data.len() as u64)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, HwError> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.data.len());
        let n = buf.len().min(self.data.len() - start);
        buf[..n].copy_from_slice(&self.data[start..start + n]);
        Ok(n)
    }
    fn append(&mut self, data: &[u8]) -> Result<(), HwError> {
        if let Some(n) = self.fail_after.as_mut() {
            if *n == 0 {
                self.data.extend_from_slice(&data[..data.len() / 2]);
                return Err(HwError::Io("power cut".into()));
            }
            *n -= 1;
        }
        self.data.extend_from_slice(data);
        Ok(())
    }
    fn truncate(&mut self, len: u64) -> Result<(), HwError> {
        let len = usize::try_from(len)
            .unwrap_or(usize::MAX)
            .min(self.data.len());
        self.data.truncate(len);
        Ok(())
    }
}

/// A clock the test moves by hand.
#[derive(Debug, Default, Clone)]
pub struct FakeClock {
    pub now_ms: u64,
    pub unix: Option<u64>,
}

impl Clock for FakeClock {
    fn now_ms(&mut self) -> u64 {
        self.now_ms
    }
    fn unix_time(&mut self) -> Option<u64> {
        self.unix
    }
}

/// Deterministic randomness for tests: SHA-256 of (seed, counter). It is
/// marked `CryptoRng` only so the core accepts it; never use it outside tests.
#[derive(Debug, Clone)]
pub struct TestRng {
    seed: u64,
    counter: u64,
}

impl TestRng {
    pub fn new(seed: u64) -> Self {
        TestRng { seed, counter: 0 }
    }
}

impl RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(32) {
            let mut h = Sha256::new();
            h.update(self.seed.to_le_bytes());
            h.update(self.counter.to_le_bytes());
            self.counter += 1;
            let out = h.finalize();
            chunk.copy_from_slice(&out[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for TestRng {}

/// LEDs shown (latest last) and keys waiting to be "pressed".
#[derive(Debug, Default)]
pub struct MemIndicators {
    pub leds: Vec<LedState>,
    pub keys: VecDeque<Key>,
}

impl Indicators for MemIndicators {
    fn set_led(&mut self, state: LedState) {
        if self.leds.last() != Some(&state) {
            self.leds.push(state);
        }
    }
    fn poll_key(&mut self) -> Option<Key> {
        self.keys.pop_front()
    }
}

/// The whole fake platform; every part is public so tests can inspect and
/// inject faults.
#[derive(Debug)]
pub struct FakePlatform {
    pub console: MemConsole,
    pub disk: MemDisk,
    pub files: MemStore,
    /// When set, `with_files` fails to mount with this message.
    pub mount_error: Option<String>,
    pub secrets: MemSecrets,
    pub log: MemLog,
    pub clock: FakeClock,
    pub rng: TestRng,
    pub indicators: MemIndicators,
    /// What `secure_readout` answers (`Ok(NotApplicable)` by default).
    pub readout: Result<crate::hal::Readout, HwError>,
}

impl FakePlatform {
    /// A platform with a raw medium of `disk_bytes` and empty files.
    pub fn new(disk_bytes: usize, seed: u64) -> Self {
        FakePlatform {
            console: MemConsole::default(),
            disk: MemDisk::new(disk_bytes),
            files: MemStore::new(),
            mount_error: None,
            secrets: MemSecrets::default(),
            log: MemLog::default(),
            clock: FakeClock::default(),
            rng: TestRng::new(seed),
            indicators: MemIndicators::default(),
            readout: Ok(crate::hal::Readout::NotApplicable),
        }
    }

    /// The persistent parts as they would be after a power cut (RAM state,
    /// console buffers and the clock are lost; the RNG is reseeded).
    pub fn after_power_loss(&self, seed: u64) -> Self {
        FakePlatform {
            console: MemConsole::default(),
            disk: MemDisk {
                writes_left: None,
                ..self.disk.clone()
            },
            files: self.files.after_power_loss(),
            mount_error: None,
            secrets: MemSecrets {
                writes_left: None,
                ..self.secrets.clone()
            },
            log: MemLog {
                fail_after: None,
                ..self.log.clone()
            },
            clock: FakeClock::default(),
            rng: TestRng::new(seed),
            indicators: MemIndicators::default(),
            readout: self.readout.clone(),
        }
    }
}

impl Platform for FakePlatform {
    type Console = MemConsole;
    type Medium = MemDisk;
    type Secrets = MemSecrets;
    type Log = MemLog;
    type Clock = FakeClock;
    type Rng = TestRng;
    type Indicators = MemIndicators;

    fn console(&mut self) -> &mut MemConsole {
        &mut self.console
    }
    fn medium(&mut self) -> &mut MemDisk {
        &mut self.disk
    }
    fn secrets(&mut self) -> &mut MemSecrets {
        &mut self.secrets
    }
    fn log_storage(&mut self) -> &mut MemLog {
        &mut self.log
    }
    fn clock(&mut self) -> &mut FakeClock {
        &mut self.clock
    }
    fn rng(&mut self) -> &mut TestRng {
        &mut self.rng
    }
    fn indicators(&mut self) -> &mut MemIndicators {
        &mut self.indicators
    }
    fn with_files(&mut self, f: &mut FilesFn<'_, MemConsole>) -> Result<(), StoreError> {
        if let Some(e) = &self.mount_error {
            return Err(StoreError::Io(e.clone()));
        }
        f(&mut self.files, &mut self.console)
    }
    fn medium_locator(&self) -> String {
        "mem:".into()
    }
    fn secure_readout(&mut self) -> Result<crate::hal::Readout, HwError> {
        self.readout.clone()
    }
}
