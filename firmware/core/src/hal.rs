//! Hardware traits: everything the firmware core needs from a board or from
//! the simulator, and nothing more.
//!
//! The core is generic over [`Platform`], which bundles one implementation
//! of each trait. The simulator (`mgear-appliance-sim`, `firmware/sim`)
//! implements them over files, a pty, a Unix socket and the host clock; the reference
//! board over USB, flash and its peripherals; `crate::testing` over memory,
//! with fault injection.
//!
//! Durability contract: every method that writes (`BlockDevice::flush`,
//! `SecretStore::write`, `LogStorage::append`, `LogStorage::truncate`)
//! must have made its effect durable when it returns `Ok`. `SecretStore::write`
//! must also be atomic (old or new value after a power cut, never a mix):
//! the PIN-failure counter depends on it.

use alloc::string::String;
use alloc::vec::Vec;

pub use image_format::{Store, StoreError};
pub use rand_core::{CryptoRng, RngCore};

/// Why a hardware operation failed. Small on purpose: the core turns it
/// into a console error code and a custody-log-friendly message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HwError {
    /// The request reaches past the end of the device or storage.
    #[error("out of range")]
    OutOfRange,
    /// The device refuses writes (write-protect switch, read-only image).
    #[error("write-protected")]
    WriteProtected,
    /// The storage is full.
    #[error("storage full")]
    Full,
    /// Anything else, described for a human.
    #[error("{0}")]
    Io(String),
}

/// The console: a byte stream to the host (CDC-ACM serial on the board, a
/// pty in the simulator). `read_ready` lets the core poll without blocking,
/// so the block service keeps running while no command arrives.
pub trait Console: embedded_io::Read + embedded_io::Write + embedded_io::ReadReady {}
impl<T: embedded_io::Read + embedded_io::Write + embedded_io::ReadReady> Console for T {}

/// The raw medium as a block device (the SD card / eMMC behind USB mass
/// storage; a file in the simulator). All access from outside goes through
/// the core's block service (`Appliance::block_read` / `block_write`), never
/// straight to this trait.
pub trait BlockDevice {
    /// Bytes per block; a power of two, at least 512.
    fn block_size(&self) -> usize;
    /// Number of blocks on the medium.
    fn block_count(&self) -> u64;
    /// Read whole blocks starting at `lba`; `buf.len()` is a multiple of
    /// [`block_size`](Self::block_size).
    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), HwError>;
    /// Write whole blocks starting at `lba`; `data.len()` is a multiple of
    /// [`block_size`](Self::block_size).
    fn write_blocks(&mut self, lba: u64, data: &[u8]) -> Result<(), HwError>;
    /// Make every completed write durable.
    fn flush(&mut self) -> Result<(), HwError>;

    /// Largest transfer, in bytes, worth passing to one
    /// [`read_blocks`](Self::read_blocks) / [`write_blocks`](Self::write_blocks)
    /// call: the core and the board's file layer size their buffers by it
    /// (rounded down to whole blocks, at least one block). Larger calls must
    /// still work; this is a hint, not a limit.
    fn max_transfer(&self) -> usize {
        DEFAULT_MAX_TRANSFER
    }

    /// Engage (`on`) or release hardware write protection of the medium,
    /// below the block service's own refusal: eMMC write-protect groups,
    /// NVMe namespace write protection, a bridge's write gate.
    ///
    /// Returns `Ok(true)` if the device now honours the request (while
    /// engaged, [`write_blocks`](Self::write_blocks) fails with
    /// [`HwError::WriteProtected`]), `Ok(false)` if it has no such feature
    /// (the default). Protection may be power-on only (cleared by a power
    /// cycle): the core engages it again at power-up while sealed, and
    /// releases it before it writes the medium itself (crypto-erase).
    fn set_write_protect(&mut self, on: bool) -> Result<bool, HwError> {
        let _ = on;
        Ok(false)
    }
}

/// [`BlockDevice::max_transfer`] of devices that do not say: 64 KiB, the
/// size at which USB mass storage and SD multi-block commands reach most of
/// their throughput (hardware/THROUGHPUT.md).
pub const DEFAULT_MAX_TRANSFER: usize = 64 * 1024;

/// Fixed slots of the secret store (on-chip flash / secure element on the
/// board, files in the simulator's state directory). Values are opaque
/// byte strings encoded by the core (`crate::state` documents them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSlot {
    /// Ed25519 identity seed and medium id (secret, zeroized on erase).
    Identity,
    /// Ed25519 public key: kept after erase so the custody log stays verifiable.
    IdentityPublic,
    /// PIN verifier: salt, iteration count, PBKDF2-HMAC-SHA256 output.
    PinHash,
    /// Lifecycle state and counters (failed PINs, boots, writes, attestations).
    State,
    /// The seal attestation.
    SealAttestation,
    /// The latest successful arrival attestation.
    ArrivalAttestation,
}

impl SecretSlot {
    /// Every slot, e.g. for a platform that preallocates them.
    pub const ALL: [SecretSlot; 6] = [
        SecretSlot::Identity,
        SecretSlot::IdentityPublic,
        SecretSlot::PinHash,
        SecretSlot::State,
        SecretSlot::SealAttestation,
        SecretSlot::ArrivalAttestation,
    ];

    /// A short stable name, usable as a file name.
    pub fn name(self) -> &'static str {
        match self {
            SecretSlot::Identity => "identity",
            SecretSlot::IdentityPublic => "identity.pub",
            SecretSlot::PinHash => "pin",
            SecretSlot::State => "state",
            SecretSlot::SealAttestation => "seal.att",
            SecretSlot::ArrivalAttestation => "arrival.att",
        }
    }
}

/// Small persistent key/value storage with fixed slots.
pub trait SecretStore {
    /// The slot's value, or `None` if it was never written or was erased.
    fn read(&mut self, slot: SecretSlot) -> Result<Option<Vec<u8>>, HwError>;
    /// Replace the slot's value atomically and durably.
    fn write(&mut self, slot: SecretSlot, value: &[u8]) -> Result<(), HwError>;
    /// Destroy the slot's value: overwrite the stored bytes (where the
    /// medium allows) and remove it, durably.
    fn erase(&mut self, slot: SecretSlot) -> Result<(), HwError>;
}

/// Append-only byte storage for the custody log. The core frames records
/// itself (`crate::custody`), so this is a plain byte log.
pub trait LogStorage {
    /// Current length in bytes.
    fn len(&mut self) -> Result<u64, HwError>;
    /// Read up to `buf.len()` bytes at `offset`; returns bytes read (0 at end).
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, HwError>;
    /// Append `data` at the end and make it durable (append + fsync).
    fn append(&mut self, data: &[u8]) -> Result<(), HwError>;
    /// Whether the log holds no bytes.
    fn is_empty(&mut self) -> Result<bool, HwError> {
        Ok(self.len()? == 0)
    }
    /// Cut the log to `len` bytes, durably. Used only by recovery to drop a
    /// torn last record.
    fn truncate(&mut self, len: u64) -> Result<(), HwError>;
}

/// Time. `now_ms` is monotonic since power-up (it may restart at 0 after a
/// reboot; the core keeps anything that must survive a reboot in the secret
/// store). `unix_time` is wall time if the platform has a trustworthy RTC.
pub trait Clock {
    /// Milliseconds since power-up, never decreasing.
    fn now_ms(&mut self) -> u64;
    /// Seconds since the Unix epoch, if known.
    fn unix_time(&mut self) -> Option<u64>;
}

/// What the status LED shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedState {
    /// Not provisioned yet.
    Factory,
    /// Provisioned, PIN needed.
    Locked,
    /// Unlocked: the medium accepts writes.
    Unlocked,
    /// Busy with a long operation (verify, seal, arrival, erase).
    Busy,
    /// Sealed: the medium is read-only.
    Sealed,
    /// Arrival check passed.
    Arrived,
    /// Something failed (arrival mismatch, verify problems).
    Alarm,
    /// Crypto-erased.
    Erased,
}

/// One key of the optional keypad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Digit(u8),
    Enter,
    Cancel,
}

/// Status LEDs and the optional keypad for PIN entry on the device itself.
pub trait Indicators {
    /// Show `state`.
    fn set_led(&mut self, state: LedState);
    /// The next key pressed since the last call, if the board has a keypad.
    fn poll_key(&mut self) -> Option<Key> {
        None
    }
}

/// What [`Platform::secure_readout`] found (or did).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readout {
    /// The platform has no chip to protect (the simulator: its secrets are
    /// files guarded by the host's permissions).
    NotApplicable,
    /// Read-out protection is in force: secrets created now stay in the chip.
    Enforced,
    /// Protection was just programmed and takes effect after a power cycle
    /// (option bytes load at reset); provisioning must wait for it.
    RestartNeeded,
}

/// Region hashes being computed beside the core's file walk
/// ([`Platform::start_region_hashes`]). Dropping a job before
/// [`finish`](Self::finish) stops it.
pub trait RegionJob {
    /// Wait for the hashes. `progress(done, total)` (bytes hashed) is called
    /// while waiting, at least every second or so, so a host waiting on the
    /// console sees the seal advance.
    ///
    /// The hashes are those of the medium as it is when this returns: a
    /// platform that saw the medium written while the job ran (it should
    /// not: the core's walk only reads) hashes it again.
    fn finish(
        self: alloc::boxed::Box<Self>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Vec<[u8; 32]>, HwError>;
}

/// The work [`Platform::with_files`] runs on the mounted medium.
pub type FilesFn<'a, C> = dyn FnMut(&mut dyn Store, &mut C) -> Result<(), StoreError> + 'a;

/// Everything the core needs, bundled. Accessors hand out the parts one at
/// a time; [`with_files`](Platform::with_files) mounts the file-level view of
/// the medium over the raw block device for the duration of one call.
pub trait Platform {
    type Console: Console;
    type Medium: BlockDevice;
    type Secrets: SecretStore;
    type Log: LogStorage;
    type Clock: Clock;
    type Rng: RngCore + CryptoRng;
    type Indicators: Indicators;

    fn console(&mut self) -> &mut Self::Console;
    fn medium(&mut self) -> &mut Self::Medium;
    fn secrets(&mut self) -> &mut Self::Secrets;
    fn log_storage(&mut self) -> &mut Self::Log;
    fn clock(&mut self) -> &mut Self::Clock;
    fn rng(&mut self) -> &mut Self::Rng;
    fn indicators(&mut self) -> &mut Self::Indicators;

    /// Mount the medium's file system (FAT32) over [`medium`](Self::medium),
    /// run `f` on it, then flush and unmount, returning `f`'s result (or
    /// the mount/unmount error). `f` also gets the console, to report
    /// progress while it works.
    ///
    /// Mounting afresh for each call means the view always matches what the
    /// host last wrote through the block service. Unmounting must not change
    /// any byte of a cleanly unmounted volume: seal takes per-region hashes
    /// of the raw medium after this returns, and arrival before and after.
    fn with_files(&mut self, f: &mut FilesFn<'_, Self::Console>) -> Result<(), StoreError>;

    /// Where the host reaches the medium's block service, shown by `info`:
    /// e.g. `nbd+unix:///?socket=/run/appliance.sock` in the simulator,
    /// `usb-msc` on the board.
    fn medium_locator(&self) -> String;

    /// Before the identity is created: make sure nobody can read the
    /// secret store out of the chip (the board: RDP level 2, HDP over the
    /// secret pages, and no boot into the ROM bootloader), programming it
    /// if needed. `Err` means it could not be put in force: provisioning is
    /// refused rather than creating a key that could be read out.
    fn secure_readout(&mut self) -> Result<Readout, HwError> {
        Ok(Readout::NotApplicable)
    }

    /// Start hashing the raw medium by regions of `region` bytes, `chunk`
    /// bytes per read, with [`crate::regions::hash_regions`], on another
    /// core, and return at once: seal and arrival then walk the files while
    /// the regions are hashed, and take as long as the longer of the two
    /// instead of their sum. The simulator does this on a thread with its own
    /// handle on the medium image; a board with a hash engine could feed it
    /// by DMA.
    ///
    /// `None` (the default): no spare core; the core hashes the regions
    /// itself, before or after the walk.
    fn start_region_hashes(
        &mut self,
        region: u64,
        chunk: usize,
    ) -> Option<alloc::boxed::Box<dyn RegionJob>> {
        let _ = (region, chunk);
        None
    }
}
