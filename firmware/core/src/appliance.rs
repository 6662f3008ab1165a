//! The appliance: lifecycle state machine, command handler, console loop
//! and the block service that guards the medium.
//!
//! ```text
//! factory --provision--> locked <--unlock/lock--> unlocked --seal--> sealed --arrival--> arrived
//!                          \_____________ 10 wrong PINs / erase ______________________/--> erased
//! ```
//!
//! What each way into `erased` destroys:
//!
//! | how | identity seed + PIN verifier | key-slot files on the medium | whole medium |
//! | --- | --- | --- | --- |
//! | `erase` (PIN: unlocked, or given with the request) | destroyed | overwritten and removed | zeroed with `overwrite` |
//! | 10 wrong PINs before the seal | destroyed | overwritten and removed | untouched |
//! | 10 wrong PINs once sealed (or arrived) | destroyed | **untouched** | untouched |
//!
//! Always kept: the identity *public* key, the custody log (with an `Erase`
//! record saying which of the above happened) and the stored attestations,
//! so the history stays verifiable. A lockout on a sealed appliance must not
//! turn PIN guessing into a way to destroy the shipment: the sealed capture
//! stays decryptable with `target.key`; only the appliance's ability to sign
//! (an arrival attestation) is gone. Once sealed the medium never becomes
//! writable again: `unlock` is refused, and `erase` takes the PIN in the
//! request itself.
//!
//! Persistent state lives in the secret store (slot layouts below, all
//! postcard); "unlocked" is volatile, so every power-up starts locked.
//!
//! ```text
//! State:            { lifecycle: Lifecycle, counters: Counters, pin_check: bool,
//!                     under_way: Option<LongOperation> }
//! Identity:         { seed: [u8; 32], medium_id: [u8; 16] }     (secret)
//! IdentityPublic:   [u8; 32]                                     (kept after erase)
//! PinHash:          pin::PinVerifier
//! Seal/ArrivalAttestation: attest::Attestation
//! ```
//!
//! Ordering rules that make power cuts safe:
//! * provisioning writes identity and PIN first and the `State` slot last
//!   (the commit point); a cut before it leaves a factory appliance;
//! * a PIN attempt counts as a failure *before* the PIN is checked (in a row
//!   and ever, with `pin_check` set), and is forgiven after a match, so cutting
//!   power during the check gains nothing; `pin_check` stays set until a wrong
//!   PIN's record is in the log, and a power-up that finds it logs the attempt
//!   as cut off (`PinCheckCutOff`: it stays counted), so every wrong PIN
//!   counted ever has its record (`log --verify` checks the count against them);
//! * a correct PIN's unlock record is logged before the reset count is saved
//!   (an erase's PIN resets it with the erase's state, after its record): the
//!   count never starts again without a record saying why, so every wrong PIN's
//!   "in a row" follows from the records before it (`log --verify` checks that);
//! * a seal or an arrival check saves `under_way` before it reads the medium and clears it
//!   with the state it ends in: a power-up that finds it set logs the command as cut off
//!   (`CutOff`; a seal pulled mid-hash left only its verification and a power-up);
//! * a boot that finds the failure limit reached finishes the crypto-erase;
//! * a crypto-erase writes its custody record and the `Erasing` lifecycle
//!   before it touches the first key slot: a boot that finds `Erasing`
//!   overwrites the slots left and destroys the identity (a cut while the
//!   slots went once left the old state, slots gone, nothing logged). The
//!   state stays `Erasing` (shown as erased) until every slot is gone;
//! * an erase that zeroes the medium (`overwrite`) saves `Zeroing` instead,
//!   and keeps it until the last block is zeroed and flushed: a boot that
//!   finds `Zeroing` destroys the identity (again) and zeroes the whole medium
//!   before it enters `Erased`. The custody record, signed before the
//!   identity goes, can only say the zeroing was ordered; this makes it true;
//! * a seal or passed arrival saves its attestation counter, then appends the
//!   custody record naming the signed attestation, and only then stores the
//!   attestation and the new lifecycle. Every stored attestation pins the log
//!   up to the record that names it, so a record must never be the part a
//!   cut takes: a cut before the attestation is stored leaves the old state
//!   and a record naming an attestation that never took effect (the command
//!   is run again, under the next counter), and `log --verify` keeps passing.
//!   A failed arrival is the other way round: the pass is withdrawn (and
//!   saved) before its record, so a cut never leaves a stale pass standing.

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write as _;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use image_format::store::EntryKind;
use image_format::{layout, Store, StoreError};

use crate::attest::{self, Attestation, AttestationBody, AttestationKind, FileDigests};
pub use crate::block::BlockError;
use crate::custody::{self, CustodyLog, EraseReason, Event, LongOperation};
use crate::hal::{
    BlockDevice, Clock, HwError, Indicators, Key, LedState, LogStorage, Platform, Readout,
    RegionJob, SecretSlot, SecretStore,
};
use crate::pin::{self, PinVerifier};
use crate::protocol::{
    encode_frame, ConsoleDecoder, Counters, DeviceState, ErrorCode, Info, Input, Pin, Place,
    Problem, Request, Response, VerifyReport, MAX_REQUEST_LEN, PROTOCOL_VERSION,
};
use crate::regions::RegionHasher;
use crate::verify;

/// Tunables. The defaults are the production values; tests and the
/// simulator's test mode lower the slow ones.
#[derive(Debug, Clone)]
pub struct Config {
    /// PBKDF2 iterations for new PIN verifiers.
    pub pin_iterations: u32,
    /// Wrong PINs in a row that trigger the crypto-erase.
    pub max_pin_failures: u32,
    /// Wrong PINs in a row allowed before back-off starts.
    pub backoff_free_failures: u32,
    /// First back-off delay; doubles with each further failure.
    pub backoff_base_ms: u64,
    /// Longest back-off delay.
    pub backoff_max_ms: u64,
    /// Size of each hashed region of the raw medium in attestations; it is
    /// doubled on media that would need more than 4096 regions.
    pub region_size: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            pin_iterations: 100_000,
            max_pin_failures: 10,
            backoff_free_failures: 3,
            backoff_base_ms: 1_000,
            backoff_max_ms: 15 * 60 * 1_000,
            region_size: attest::REGION_SIZE,
        }
    }
}

/// Why the appliance could not start or an operation failed below the
/// command level.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("hardware: {0}")]
    Hw(#[from] HwError),
    #[error("medium: {0}")]
    Store(StoreError),
    #[error(
        "secret store slot '{slot}' is unreadable ({why}): the appliance's own storage is damaged, and what needs that slot cannot be done; return it to the datacenter that provisioned it (a sealed medium stays readable with target.key on a host, and `mgear appliance log` still reads its custody log)"
    )]
    CorruptSlot { slot: &'static str, why: String },
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Store(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Lifecycle {
    Factory,
    Ready,
    Sealed,
    Arrived,
    Erased,
    /// A crypto-erase that destroys key slots has begun (its custody record is written);
    /// power-up finishes it. Last, so states saved before it existed decode as they were.
    Erasing,
    /// An erase that zeroes the whole medium has begun (its custody record is written, the
    /// identity may be gone already): power-up zeroes the medium again and only then enters
    /// `Erased`. A cut while the medium was zeroed once left it mostly unzeroed and the
    /// appliance `Erased`, its log saying the medium was overwritten. Last, as `Erasing`.
    Zeroing,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Persisted {
    lifecycle: Lifecycle,
    counters: Counters,
    /// A PIN is being checked (its attempt already counted as wrong): a power-up that finds
    /// this set knows the check was cut off, and logs it. Last: a state saved before it
    /// existed decodes through [`Legacy`] as "no check under way".
    pin_check: bool,
    /// A seal or arrival check is reading the medium: a power-up that finds this set logs it
    /// as cut off. Last: a state saved before it existed decodes through [`WithPinCheck`].
    under_way: Option<LongOperation>,
}

/// [`Persisted`] as saved before `under_way` existed.
#[derive(Deserialize)]
struct WithPinCheck {
    lifecycle: Lifecycle,
    counters: Counters,
    pin_check: bool,
}

/// [`Persisted`] as saved before `pin_check` existed.
#[derive(Deserialize)]
struct Legacy {
    lifecycle: Lifecycle,
    counters: Counters,
}

/// The `State` slot, of this layout or one before it.
fn read_state<S: SecretStore>(s: &mut S) -> Result<Option<Persisted>, Error> {
    match read_slot::<S, Persisted>(s, SecretSlot::State) {
        Err(Error::CorruptSlot { .. }) => {
            match read_slot::<S, WithPinCheck>(s, SecretSlot::State) {
                Err(Error::CorruptSlot { .. }) => Ok(read_slot::<S, Legacy>(s, SecretSlot::State)?
                    .map(|l| Persisted {
                        lifecycle: l.lifecycle,
                        counters: l.counters,
                        pin_check: false,
                        under_way: None,
                    })),
                other => Ok(other?.map(|l| Persisted {
                    lifecycle: l.lifecycle,
                    counters: l.counters,
                    pin_check: l.pin_check,
                    under_way: None,
                })),
            }
        }
        other => other,
    }
}

#[derive(Serialize, Deserialize)]
struct IdentityRecord {
    #[serde(with = "serde_bytes")]
    seed: [u8; 32],
    #[serde(with = "serde_bytes")]
    medium_id: [u8; 16],
}

impl Drop for IdentityRecord {
    fn drop(&mut self) {
        self.seed.zeroize();
    }
}

/// Where replies to the current command go (for progress messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Silent,
    Frame(u32),
    Line,
}

/// What progress messages of the region hashes say.
const REGIONS_WHAT: &str = "hashing medium (bytes)";
/// Custody log pages stay small enough for a host with the device's limits.
const LOG_PAGE_BYTES: usize = 2 * MAX_REQUEST_LEN;
/// Most regions in an attestation: the region size doubles until the
/// medium fits, so attestations of large media stay a few hundred KiB.
const MAX_REGIONS: u64 = 4096;
/// Cap on the raw medium I/O unit for hashing and overwriting (board RAM);
/// below it the unit is the medium's `BlockDevice::max_transfer`.
const IO_CHUNK_MAX: usize = 1024 * 1024;

const HELP: &str = "\
MotionGear appliance console. Commands:\r\n\
  help            this text\r\n\
  info            state, identity fingerprint, counters\r\n\
  unlock <pin>    unlock the medium for writing (refused once sealed)\r\n\
  lock            lock it again\r\n\
  verify          check every capture on the medium (no key needed)\r\n\
  seal            verify, write-protect and sign the seal attestation\r\n\
  arrival         at the target: verify again and compare with the seal\r\n\
  log [from]      show the custody log\r\n\
  ping            check the link\r\n\
Provisioning and erase are done with the host tool (mgear appliance).\r\n";

fn write_console<C: embedded_io::Write>(console: &mut C, bytes: &[u8]) {
    if console
        .write_all(bytes)
        .and_then(|_| console.flush())
        .is_err()
    {
        warn!("console write failed; the host may have gone away");
    }
}

fn emit_progress<C: embedded_io::Write>(
    console: &mut C,
    reply: Reply,
    what: &str,
    done: u64,
    total: u64,
) {
    match reply {
        Reply::Silent => {}
        Reply::Frame(id) => {
            let msg = Response::Progress {
                what: what.into(),
                done,
                total,
            };
            write_console(console, &encode_frame(id, &msg));
        }
        Reply::Line => {
            let line = alloc::format!("  {what}: {done}/{total}\r\n");
            write_console(console, line.as_bytes());
        }
    }
}

/// The firmware core, owning its platform.
pub struct Appliance<P: Platform> {
    p: P,
    cfg: Config,
    st: Persisted,
    key: Option<SigningKey>,
    medium_id: Option<[u8; 16]>,
    pubkey: Option<[u8; 32]>,
    unlocked: bool,
    log: CustodyLog,
    decoder: ConsoleDecoder,
    /// When the console last gave input: a frame begun before a long silence is dropped.
    last_input_ms: u64,
    last_failure_ms: Option<u64>,
    counters_dirty: bool,
    reply: Reply,
    keypad: Zeroizing<String>,
    /// The last verify or arrival found problems: the LED says so until one passes.
    alarm: bool,
}

fn read_slot<S: SecretStore, T: serde::de::DeserializeOwned>(
    s: &mut S,
    slot: SecretSlot,
) -> Result<Option<T>, Error> {
    let Some(bytes) = s.read(slot)? else {
        return Ok(None);
    };
    let bytes = Zeroizing::new(bytes);
    postcard::from_bytes(&bytes)
        .map(Some)
        .map_err(|e| Error::CorruptSlot {
            slot: slot.name(),
            why: e.to_string(),
        })
}

fn write_slot<S: SecretStore, T: Serialize>(
    s: &mut S,
    slot: SecretSlot,
    v: &T,
) -> Result<(), Error> {
    let bytes = Zeroizing::new(
        postcard::to_allocvec(v).map_err(|e| Error::Hw(HwError::Io(e.to_string())))?,
    );
    s.write(slot, &bytes)?;
    Ok(())
}

impl<P: Platform> Appliance<P> {
    /// Power-up: load state, recover the custody log, finish an
    /// interrupted lockout erase, log the boot.
    pub fn new(mut p: P, cfg: Config) -> Result<Self, Error> {
        let st: Persisted = read_state(p.secrets())?.unwrap_or(Persisted {
            lifecycle: Lifecycle::Factory,
            counters: Counters::default(),
            pin_check: false,
            under_way: None,
        });
        let pubkey: Option<[u8; 32]> = match p.secrets().read(SecretSlot::IdentityPublic)? {
            Some(b) => Some(b.as_slice().try_into().map_err(|_| Error::CorruptSlot {
                slot: SecretSlot::IdentityPublic.name(),
                why: "not 32 bytes".into(),
            })?),
            None => None,
        };
        let (mut key, mut medium_id) = (None, None);
        if matches!(
            st.lifecycle,
            Lifecycle::Ready | Lifecycle::Sealed | Lifecycle::Arrived
        ) {
            let rec: IdentityRecord =
                read_slot(p.secrets(), SecretSlot::Identity)?.ok_or(Error::CorruptSlot {
                    slot: SecretSlot::Identity.name(),
                    why: "missing".into(),
                })?;
            key = Some(SigningKey::from_bytes(&rec.seed));
            medium_id = Some(rec.medium_id);
        }
        let log = CustodyLog::open(p.log_storage())?;
        let now = p.clock().now_ms();
        let mut app = Appliance {
            p,
            cfg,
            st,
            key,
            medium_id,
            pubkey,
            unlocked: false,
            log,
            decoder: ConsoleDecoder::new(),
            last_input_ms: 0,
            last_failure_ms: None,
            counters_dirty: false,
            reply: Reply::Silent,
            keypad: Zeroizing::new(String::new()),
            alarm: false,
        };
        if app.key.is_some() {
            // A wrong PIN whose record is the log's last: the power went after it was logged
            // and before the check's mark was cleared; it is logged already (a power-up logged
            // it again as cut off: one attempt, two records).
            let wrong_logged = app.wrong_pin_logged_last();
            // A requested erase whose record is the log's last: the power went after it was
            // logged and before its state was saved. It came back in its old state, data and
            // identity whole, under a signed log saying it was erased; it is finished now.
            if let Some(overwrite) = app.erase_logged_last() {
                warn!("an erase was logged and cut off by a power loss: finishing it");
                app.st.lifecycle = if overwrite {
                    Lifecycle::Zeroing
                } else {
                    Lifecycle::Erasing
                };
                app.save()?;
            }
            if app.log.dropped_tail() > 0 {
                let bytes = app.log.dropped_tail();
                app.record(Event::TornTailDropped { bytes })?;
            }
            app.st.counters.boots += 1;
            // A PIN check the power cut off counts as the wrong PIN it was counted as, and
            // says so in the log (it was silent: "3 in a row (0 ever)", nothing logged).
            let cut_off = core::mem::take(&mut app.st.pin_check);
            let cut_op = app.st.under_way.take();
            app.save()?;
            let boot = app.st.counters.boots;
            app.record(Event::PowerUp { boot })?;
            if let Some(operation) = cut_op {
                warn!("a seal or arrival check was cut off by a power loss");
                app.record(Event::CutOff { operation })?;
            }
            if cut_off && wrong_logged != Some(app.st.counters.failed_pins) {
                let failures = app.st.counters.failed_pins;
                warn!("a PIN check was cut off by a power loss: counted as wrong");
                app.record(Event::PinCheckCutOff { failures })?;
            }
            if app.st.counters.failed_pins >= app.cfg.max_pin_failures {
                // Power was cut during a lockout: finish it now. Identity
                // and PIN are gone even if the medium cannot be mounted.
                match app.lockout() {
                    Ok(_) | Err(Error::Store(_)) => {}
                    Err(e) => return Err(e),
                }
            } else if app.st.counters.failed_pins > 0 {
                // Back-off counts from power-up, so rebooting does not skip it.
                app.last_failure_ms = Some(now);
            }
        }
        if app.st.lifecycle == Lifecycle::Zeroing {
            // An erase that zeroes the medium, cut short: the identity goes (idempotent),
            // then the whole medium is zeroed from the start. A medium that cannot be
            // written now stays `Zeroing`, and the next power-up tries again.
            for slot in [SecretSlot::Identity, SecretSlot::PinHash] {
                app.p.secrets().erase(slot)?;
            }
            app.hardware_write_protect(false);
            match app.overwrite_medium() {
                Ok(()) => {
                    app.st.lifecycle = Lifecycle::Erased;
                    app.save()?;
                    warn!("erase cut off by a power loss: medium zeroed at power-up");
                }
                Err(Error::Store(_) | Error::Hw(_)) => {
                    error!("erase: the medium could not be zeroed yet")
                }
                Err(e) => return Err(e),
            }
        }
        if app.st.lifecycle == Lifecycle::Erasing {
            // A crypto-erase cut short while it overwrote the key slots (its record is in the
            // log): overwrite what is left, then destroy the identity. A medium that cannot
            // be read now keeps what is left of its slots; the identity goes anyway.
            match app.overwrite_key_slots() {
                Ok(_) | Err(Error::Store(_)) => {}
                Err(e) => return Err(e),
            }
            app.destroy_secrets(Lifecycle::Erased)?;
        }
        if app.st.lifecycle == Lifecycle::Erased {
            // Finish an erase cut short after its commit point (idempotent).
            for slot in [SecretSlot::Identity, SecretSlot::PinHash] {
                app.p.secrets().erase(slot)?;
            }
        }
        if matches!(
            app.st.lifecycle,
            Lifecycle::Sealed | Lifecycle::Arrived | Lifecycle::Erased
        ) {
            // Device write protection may be power-on only: engage it again.
            // An erased appliance never writes its medium again either.
            app.hardware_write_protect(true);
        }
        info!("appliance up");
        app.update_led();
        Ok(app)
    }

    /// The platform (the simulator reaches its own parts through this).
    pub fn platform_mut(&mut self) -> &mut P {
        &mut self.p
    }

    /// Current state.
    pub fn state(&self) -> DeviceState {
        match self.st.lifecycle {
            Lifecycle::Factory => DeviceState::Factory,
            Lifecycle::Ready if self.unlocked => DeviceState::Unlocked,
            Lifecycle::Ready => DeviceState::Locked,
            Lifecycle::Sealed => DeviceState::Sealed,
            Lifecycle::Arrived => DeviceState::Arrived,
            Lifecycle::Erased | Lifecycle::Erasing | Lifecycle::Zeroing => DeviceState::Erased,
        }
    }

    /// Clean stop (SIGTERM): persist counters, flush the medium.
    pub fn shutdown(&mut self) -> Result<(), Error> {
        self.save_if_dirty()?;
        self.p.medium().flush()?;
        Ok(())
    }

    // ----- block service -------------------------------------------------

    /// Size of the medium in bytes.
    pub fn medium_bytes(&mut self) -> u64 {
        let m = self.p.medium();
        m.block_count().saturating_mul(m.block_size() as u64)
    }

    /// Whether the block service currently accepts writes.
    pub fn medium_writable(&self) -> bool {
        self.state() == DeviceState::Unlocked
    }

    /// Read `buf.len()` bytes at byte `offset` of the medium (any state).
    pub fn block_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let bs = self.p.medium().block_size().max(1);
        self.check_range(offset, buf.len())?;
        let mut done = 0usize;
        let mut bounce = Vec::new();
        while done < buf.len() {
            let pos = offset + done as u64;
            let lba = pos / bs as u64;
            let within = (pos % bs as u64) as usize;
            let left = buf.len() - done;
            if within == 0 && left >= bs {
                let n = (left / bs) * bs;
                self.p
                    .medium()
                    .read_blocks(lba, &mut buf[done..done + n])
                    .map_err(BlockError::Hw)?;
                done += n;
            } else {
                bounce.resize(bs, 0);
                self.p
                    .medium()
                    .read_blocks(lba, &mut bounce)
                    .map_err(BlockError::Hw)?;
                let n = (bs - within).min(left);
                buf[done..done + n].copy_from_slice(&bounce[within..within + n]);
                done += n;
            }
        }
        Ok(())
    }

    /// Count a write refused because the medium is not writable (saved with the counters).
    pub fn note_refused_write(&mut self) {
        self.st.counters.refused_writes = self.st.counters.refused_writes.saturating_add(1);
        self.counters_dirty = true;
    }

    /// Write `data` at byte `offset`: only while unlocked and not sealed.
    /// Partial blocks are read, patched and written back.
    pub fn block_write(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
        if !self.medium_writable() {
            self.note_refused_write();
            return Err(BlockError::WriteProtected(self.state()));
        }
        self.check_range(offset, data.len())?;
        let bs = self.p.medium().block_size().max(1);
        let mut done = 0usize;
        let mut bounce = Vec::new();
        while done < data.len() {
            let pos = offset + done as u64;
            let lba = pos / bs as u64;
            let within = (pos % bs as u64) as usize;
            let left = data.len() - done;
            if within == 0 && left >= bs {
                let n = (left / bs) * bs;
                self.p
                    .medium()
                    .write_blocks(lba, &data[done..done + n])
                    .map_err(BlockError::Hw)?;
                done += n;
            } else {
                bounce.resize(bs, 0);
                self.p
                    .medium()
                    .read_blocks(lba, &mut bounce)
                    .map_err(BlockError::Hw)?;
                let n = (bs - within).min(left);
                bounce[within..within + n].copy_from_slice(&data[done..done + n]);
                self.p
                    .medium()
                    .write_blocks(lba, &bounce)
                    .map_err(BlockError::Hw)?;
                done += n;
            }
        }
        self.st.counters.writes += 1;
        self.counters_dirty = true;
        Ok(())
    }

    /// Make accepted writes durable (and persist the write counter).
    pub fn block_flush(&mut self) -> Result<(), BlockError> {
        self.p.medium().flush().map_err(BlockError::Hw)?;
        self.save_if_dirty()
            .map_err(|e| BlockError::Hw(HwError::Io(e.to_string())))
    }

    fn check_range(&mut self, offset: u64, len: usize) -> Result<(), BlockError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.medium_bytes() => Ok(()),
            _ => Err(BlockError::OutOfRange),
        }
    }

    // ----- console -------------------------------------------------------

    /// Read whatever the console and keypad have, act on complete frames,
    /// lines and PINs, and write the replies. Never blocks when nothing is
    /// waiting. Returns how many inputs were handled.
    pub fn poll_console(&mut self) -> Result<usize, embedded_io::ErrorKind> {
        use embedded_io::{Error as _, Read, ReadReady};
        let mut handled = self.poll_keypad();
        let mut buf = [0u8; 256];
        loop {
            let console = self.p.console();
            if !console.read_ready().map_err(|e| e.kind())? {
                return Ok(handled);
            }
            let n = console.read(&mut buf).map_err(|e| e.kind())?;
            if n == 0 {
                return Ok(handled);
            }
            let now = self.p.clock().now_ms();
            if now.saturating_sub(self.last_input_ms) > crate::protocol::FRAME_GAP_MS {
                self.decoder.drop_stale_frame();
            }
            self.last_input_ms = now;
            for &b in &buf[..n.min(buf.len())] {
                let was_line = self.decoder.in_line();
                let masked = echo_masked(self.decoder.line_so_far(), b);
                let input = self.decoder.push(b);
                if b != 0 && (was_line || self.decoder.in_line()) {
                    let echo: &[u8] = match b {
                        b'\r' | b'\n' => b"\r\n",
                        0x03 => b"^C\r\n> ",
                        0x15 => b"^U\r\n> ",
                        0x08 | 0x7f => b"\x08 \x08",
                        // The blank after the command is no secret.
                        b' ' | b'\t' if masked => b" ",
                        0x20..=0x7e if masked => b"*",
                        0x20..=0x7e => core::slice::from_ref(&b),
                        _ => b"",
                    };
                    write_console(self.p.console(), echo);
                }
                if let Some(input) = input {
                    handled += 1;
                    self.dispatch(input);
                }
            }
        }
    }

    fn poll_keypad(&mut self) -> usize {
        let mut handled = 0;
        while let Some(k) = self.p.indicators().poll_key() {
            match k {
                Key::Digit(d) if d < 10 && self.keypad.len() < pin::MAX_PIN_LEN => {
                    self.keypad.push(char::from(b'0' + d));
                }
                Key::Digit(_) => {}
                Key::Cancel => self.keypad.clear(),
                // A stray Enter must not cost a PIN attempt.
                Key::Enter if self.keypad.is_empty() => {}
                Key::Enter => {
                    let pin = Pin::new(core::mem::take(&mut *self.keypad));
                    self.reply = Reply::Silent;
                    let _ = self.handle(Request::Unlock { pin });
                    handled += 1;
                }
            }
        }
        handled
    }

    fn dispatch(&mut self, input: Input) {
        match input {
            Input::Frame(Ok(frame)) => {
                let resp = match frame.decode::<Request>() {
                    Ok(req) => {
                        self.reply = Reply::Frame(frame.request_id);
                        self.handle(req)
                    }
                    Err(e) => Response::error(
                        ErrorCode::BadRequest,
                        alloc::format!(
                            "request not understood: {e}; is the host tool the same version?"
                        ),
                    ),
                };
                self.reply = Reply::Silent;
                write_console(self.p.console(), &encode_frame(frame.request_id, &resp));
            }
            Input::Frame(Err(e)) => {
                let code = match e {
                    crate::protocol::FrameError::Version(_) => ErrorCode::UnsupportedVersion,
                    _ => ErrorCode::BadFrame,
                };
                let resp = Response::error(code, alloc::format!("{e}"));
                write_console(self.p.console(), &encode_frame(0, &resp));
            }
            Input::Line(Ok(line)) => {
                let mut line = Zeroizing::new(line);
                self.reply = Reply::Line;
                let text = self.handle_line(&line);
                line.zeroize();
                self.reply = Reply::Silent;
                write_console(self.p.console(), text.as_bytes());
                write_console(self.p.console(), b"> ");
            }
            Input::Line(Err(e)) => {
                let text = alloc::format!("error: {e}; type 'help'\r\n> ");
                write_console(self.p.console(), text.as_bytes());
            }
        }
    }

    fn handle_line(&mut self, line: &str) -> String {
        if line_carries_pin(line.as_bytes()) && !starts_with_pin_command(line) {
            // "unlock246810": never echo what may be a PIN.
            return "error: usage: unlock <pin>\r\n".into();
        }
        let mut words = line.split_whitespace();
        let cmd = words.next().unwrap_or("");
        let arg = words.next();
        let extra = words.next().is_some();
        let req = match (cmd.to_ascii_lowercase().as_str(), arg, extra) {
            ("", None, _) => return String::new(),
            ("help" | "?", None, _) => return HELP.into(),
            ("info", None, _) => Request::Info,
            ("ping", None, _) => Request::Ping,
            ("unlock", Some(pin), false) => Request::Unlock { pin: Pin::new(pin) },
            ("unlock", _, _) => return "error: usage: unlock <pin>\r\n".into(),
            ("lock", None, _) => Request::Lock,
            ("verify", None, _) => Request::Verify,
            ("seal", None, _) => Request::Seal,
            // A human on the console has no challenge to send; the host
            // tool's arrival carries one.
            ("arrival", None, _) => {
                let r = self.arrival(None);
                return render_text(&self.finish(r));
            }
            ("log", None, _) => Request::Log { from: 0 },
            ("log", Some(n), false) => match n.parse() {
                Ok(from) => Request::Log { from },
                Err(_) => return "error: usage: log [from-index]\r\n".into(),
            },
            // Its word is not repeated: a line whose command is not known may be a PIN
            // typed at the wrong place ("unlok246810"), and is masked as it is typed.
            _ if !is_line_command(cmd.as_bytes()) => {
                return "error: unknown command (not shown: a mistyped line may hold a PIN); \
                        type 'help'\r\n"
                    .into()
            }
            _ => {
                return alloc::format!(
                    "error: wrong arguments for '{}'; type 'help'\r\n",
                    cmd.to_ascii_lowercase()
                )
            }
        };
        render_text(&self.handle(req))
    }

    // ----- commands ------------------------------------------------------

    /// Carry out one request and return the reply.
    pub fn handle(&mut self, req: Request) -> Response {
        let resp = match req {
            Request::Ping => Ok(Response::Pong),
            Request::Info => Ok(Response::Info(self.info())),
            Request::Provision { pin } => self.provision(&pin),
            Request::Unlock { pin } => self.unlock(&pin),
            Request::Lock => self.lock(),
            Request::Verify => self.verify_cmd(),
            Request::Seal => {
                let r = self.seal();
                self.ended_under_way(r)
            }
            Request::Arrival { challenge } => {
                let r = self.arrival(Some(challenge));
                self.ended_under_way(r)
            }
            Request::Log { from } => self.log_page(from),
            Request::Erase { overwrite, pin } => self.erase_cmd(overwrite, pin.as_ref()),
            Request::CaptureBegin { name } => self.capture_event(&name, None),
            Request::CaptureCommit { name, generation } => self.capture_commit(&name, generation),
            Request::GetAttestations => self.attestations(),
            Request::CaptureRemoved { name, generations } => {
                self.capture_removed(&name, generations)
            }
        };
        self.finish(resp)
    }

    /// Show the state on the LED and turn a failure into an error reply.
    fn finish(&mut self, resp: Result<Response, Error>) -> Response {
        self.update_led();
        resp.unwrap_or_else(|e| match e {
            Error::Store(e) => Response::error(
                ErrorCode::Storage,
                alloc::format!("the medium failed: {e}; check that it holds a FAT32 file system"),
            ),
            other => Response::error(ErrorCode::Storage, alloc::format!("{other}")),
        })
    }

    /// Everything `info` reports.
    pub fn info(&mut self) -> Info {
        Info {
            firmware_version: env!("CARGO_PKG_VERSION").into(),
            protocol_version: PROTOCOL_VERSION,
            state: self.state(),
            identity_pubkey: self.pubkey,
            fingerprint: self.pubkey.as_ref().map(attest::full_fingerprint),
            medium_id: self.medium_id,
            medium_bytes: self.medium_bytes(),
            medium_locator: self.p.medium_locator(),
            counters: self.st.counters.clone(),
            retry_after_ms: self.backoff_remaining(),
            log_records: self.log.len(),
            log_damaged: self.log.damaged().is_some(),
        }
    }

    /// Why a command cannot run in this state, if it cannot.
    fn refuse(&self, need_unlock: bool) -> Option<Response> {
        match self.st.lifecycle {
            Lifecycle::Factory => Some(Response::error(
                ErrorCode::NotProvisioned,
                "the appliance is not provisioned: run 'mgear appliance provision' first",
            )),
            Lifecycle::Erased | Lifecycle::Erasing | Lifecycle::Zeroing => {
                Some(Response::error(ErrorCode::Erased, ERASED_NEXT_STEP))
            }
            _ if need_unlock && !self.unlocked => Some(Response::error(
                ErrorCode::Locked,
                "the appliance is locked: unlock it with the PIN first",
            )),
            _ => None,
        }
    }

    fn provision(&mut self, pin: &Pin) -> Result<Response, Error> {
        if self.st.lifecycle == Lifecycle::Erased {
            return Ok(Response::error(
                ErrorCode::AlreadyProvisioned,
                "the appliance was crypto-erased: it is never provisioned again (its custody \
                 log would lose its history); return it to the datacenter that issued it",
            ));
        }
        if self.st.lifecycle != Lifecycle::Factory {
            return Ok(Response::error(
                ErrorCode::AlreadyProvisioned,
                "the appliance is already provisioned; its identity cannot be replaced",
            ));
        }
        if let Err(why) = pin::check_rules(pin.as_str()) {
            return Ok(Response::error(ErrorCode::BadPin, why));
        }
        // The identity must never exist on a chip it can be read out of.
        match self.p.secure_readout() {
            Ok(Readout::Enforced | Readout::NotApplicable) => {}
            Ok(Readout::RestartNeeded) => {
                return Ok(Response::error(
                    ErrorCode::NotProtected,
                    "read-out protection was just programmed and takes effect at the next power-up: unplug the appliance, plug it in again and run 'mgear appliance provision' again",
                ))
            }
            Err(e) => {
                return Ok(Response::error(
                    ErrorCode::NotProtected,
                    alloc::format!(
                        "provisioning refused: the chip's read-out protection could not be put in force ({e}); an identity created now could be read out of the chip. Return the appliance for repair"
                    ),
                ))
            }
        }
        let key = SigningKey::generate(self.p.rng());
        let mut rec = IdentityRecord {
            seed: key.to_bytes(),
            medium_id: [0; 16],
        };
        rand_core::RngCore::fill_bytes(self.p.rng(), &mut rec.medium_id);
        let verifier = PinVerifier::new(pin.as_str(), self.p.rng(), self.cfg.pin_iterations);
        let pubkey = key.verifying_key().to_bytes();
        write_slot(self.p.secrets(), SecretSlot::Identity, &rec)?;
        self.p
            .secrets()
            .write(SecretSlot::IdentityPublic, &pubkey)?;
        write_slot(self.p.secrets(), SecretSlot::PinHash, &verifier)?;
        // A log left from an interrupted earlier provisioning belongs to no identity.
        if self.p.log_storage().len()? > 0 {
            self.p.log_storage().truncate(0)?;
            self.log = CustodyLog::open(self.p.log_storage())?;
        }
        // The provisioning record goes in before the commit point: a cut after it leaves a
        // factory appliance whose next provisioning truncates the log, and a provisioned
        // appliance always has the record (logged after the commit, a cut between left one
        // without, which `log --verify` cannot tell from a deleted log and fails).
        self.key = Some(key);
        if let Err(e) = self.record(Event::Provisioned { identity: pubkey }) {
            self.key = None;
            return Err(e);
        }
        let factory = core::mem::replace(
            &mut self.st,
            Persisted {
                lifecycle: Lifecycle::Ready,
                counters: Counters {
                    boots: 1,
                    ..Counters::default()
                },
                pin_check: false,
                under_way: None,
            },
        );
        if let Err(e) = self.save() {
            // commit point not reached: still a factory appliance
            self.st = factory;
            self.key = None;
            return Err(e);
        }
        self.medium_id = Some(rec.medium_id);
        drop(rec);
        self.pubkey = Some(pubkey);
        self.unlocked = false;
        info!("provisioned");
        Ok(Response::Provisioned {
            identity_pubkey: pubkey,
            fingerprint: attest::full_fingerprint(&pubkey),
        })
    }

    fn backoff_remaining(&mut self) -> u64 {
        let Some(last) = self.last_failure_ms else {
            return 0;
        };
        let wait = pin::backoff_ms(
            self.st.counters.failed_pins,
            self.cfg.backoff_free_failures,
            self.cfg.backoff_base_ms,
            self.cfg.backoff_max_ms,
        );
        (last.saturating_add(wait)).saturating_sub(self.p.clock().now_ms())
    }

    fn unlock(&mut self, pin: &Pin) -> Result<Response, Error> {
        if let Some(r) = self.refuse(false) {
            return Ok(r);
        }
        if matches!(self.st.lifecycle, Lifecycle::Sealed | Lifecycle::Arrived) {
            // Refused before the PIN is looked at: there is nothing to
            // unlock, and no attempt is counted.
            return Ok(Response::error(
                ErrorCode::Sealed,
                alloc::format!(
                    "the appliance is {}: its medium stays read-only for good and there is nothing to unlock; to end its use after ingest run 'mgear appliance erase' (it asks for the PIN)",
                    self.state()
                ),
            ));
        }
        // A match is logged as the unlock by `check_pin`.
        if let Some(refused) = self.check_pin(pin, true)? {
            return Ok(refused);
        }
        self.unlocked = true;
        Ok(Response::Unlocked)
    }

    /// Check `pin` against the verifier with back-off and the failure
    /// counter. `None`: it matched (counter reset; counted as an unlock when `unlocking`:
    /// the PIN an erase carries unlocks nothing, and `info` counted it as an unlock the
    /// custody log did not record). `Some(reply)`: refused (back-off, wrong PIN, or the
    /// lockout this failure triggered).
    fn check_pin(&mut self, pin: &Pin, unlocking: bool) -> Result<Option<Response>, Error> {
        // A PIN no rule admits can never be right: refused without an attempt (the host
        // checks before sending; a PIN typed on the console short or long by mistake cost
        // one of the attempts before lockout).
        if let Err(rule) = pin::check_rules(pin.as_str()) {
            return Ok(Some(Response::error(
                ErrorCode::BadPin,
                alloc::format!("not a PIN this appliance can have: {rule}; no attempt was used"),
            )));
        }
        let wait = self.backoff_remaining();
        if wait > 0 {
            return Ok(Some(Response::error(
                ErrorCode::BackOff,
                alloc::format!(
                    "too many wrong PINs: try again in {} s",
                    wait.div_ceil(1000)
                ),
            )));
        }
        let verifier: PinVerifier =
            read_slot(self.p.secrets(), SecretSlot::PinHash)?.ok_or(Error::CorruptSlot {
                slot: SecretSlot::PinHash.name(),
                why: "missing".into(),
            })?;
        // Count the attempt as failed before checking (see module doc), in a row and ever,
        // marked as under way so a power-up after a cut says so.
        self.st.counters.failed_pins += 1;
        self.st.counters.total_failed_pins += 1;
        self.st.pin_check = true;
        self.save()?;
        if verifier.matches(pin.as_str()) {
            // The count starts again only once the log says why: an unlock's record goes in
            // before the reset is saved (a cut between them leaves the attempt counted, and
            // the power-up logs it as cut off). The PIN an erase carries keeps the count as it
            // was before the attempt: the erase record follows. A reset saved first and a
            // record the cut took read, at the next wrong PIN, as a counter reset outside
            // the firmware (`log --verify` checks the counts against each other).
            if unlocking {
                self.record(Event::Unlock)?;
                self.st.counters.failed_pins = 0;
                self.st.counters.unlocks += 1;
            } else {
                self.st.counters.failed_pins -= 1;
            }
            self.st.pin_check = false;
            self.st.counters.total_failed_pins -= 1;
            self.save()?;
            self.last_failure_ms = None;
            return Ok(None);
        }
        let failures = self.st.counters.failed_pins;
        self.last_failure_ms = Some(self.p.clock().now_ms());
        let was_unlocked = core::mem::replace(&mut self.unlocked, false);
        warn!("wrong PIN ({} in a row)", failures);
        // Keep going even if the log fails: the erase must not be skipped.
        let logged = self.record(Event::WrongPin { failures });
        // The check stays marked under way until its record is in the log: every wrong PIN
        // counted ever then has a `WrongPin` or `PinCheckCutOff` record (a cut between the
        // count and the record left neither), which is how `log --verify` finds records cut
        // from the log against the count.
        self.st.pin_check = logged.is_err();
        self.save()?;
        // The wrong PIN locked an unlocked appliance: its log read as if it stayed unlocked
        // until the next unlock record.
        if was_unlocked && failures < self.cfg.max_pin_failures {
            let _ = self.record(Event::Lock);
        }
        if failures >= self.cfg.max_pin_failures {
            let lifecycle = self.st.lifecycle;
            let failed_arrival = lifecycle == Lifecycle::Sealed && self.last_arrival_failed();
            let msg = match self.lockout() {
                // The attestations stay: one signed on arrival still vouches for the medium.
                Ok(_) if lifecycle == Lifecycle::Arrived => alloc::format!(
                    "wrong PIN {failures} times: the appliance destroyed its identity and PIN; the medium, checked on arrival, was not touched: ingest it with target.key as before (its seal and arrival attestations stay). {ERASED_NEXT_STEP}"
                ),
                // Its arrival check found the medium changed: "never checked on arrival"
                // sent the operator on to ingest it.
                Ok(_) if failed_arrival => alloc::format!(
                    "wrong PIN {failures} times: the appliance destroyed its identity and PIN; the sealed medium was not touched, but its arrival check FAILED (the medium changed since the seal; the custody log says what was found): do not ingest from it; ask the capture site for another copy of the shipment. {ERASED_NEXT_STEP}"
                ),
                Ok(_) if lifecycle == Lifecycle::Sealed => alloc::format!(
                    "wrong PIN {failures} times: the appliance destroyed its identity and PIN; the sealed medium was not touched: ingest it with target.key (it was never checked on arrival, and an erased appliance signs no arrival). {ERASED_NEXT_STEP}"
                ),
                Ok((slots, _)) => alloc::format!(
                    "wrong PIN {failures} times: the appliance crypto-erased itself ({slots} key slot files overwritten). {ERASED_NEXT_STEP}"
                ),
                Err(Error::Store(e)) => alloc::format!(
                    "wrong PIN {failures} times: the appliance destroyed its identity and PIN, but the key slot files could not all be overwritten ({e}); wipe the medium on a host"
                ),
                Err(e) => return Err(e),
            };
            return Ok(Some(Response::error(ErrorCode::Erased, msg)));
        }
        logged?;
        let left = self.cfg.max_pin_failures - failures;
        // What the last attempt destroys differs once sealed (see `lockout`), and an
        // operator whose capture stops next must learn here that this attempt locked it.
        let then = if matches!(self.st.lifecycle, Lifecycle::Sealed | Lifecycle::Arrived) {
            "destroys its identity and PIN (the sealed medium is left untouched)"
        } else {
            "erases itself"
        };
        Ok(Some(Response::error(
            ErrorCode::WrongPin,
            alloc::format!(
                "wrong PIN{}; {left} attempt{} left before the appliance {then}",
                if was_unlocked {
                    ": the appliance was unlocked and is locked now (a capture writing to it stops, resumable after the next unlock)"
                } else {
                    ""
                },
                if left == 1 { "" } else { "s" }
            ),
        )))
    }

    /// The PIN-failure limit was reached. Before the seal the medium holds
    /// an unfinished shipment: crypto-erase it like `erase`. Once sealed,
    /// destroy only the appliance's own secrets and leave every byte of
    /// the medium as sealed (see the module doc's table).
    /// `Some(overwrite)` when the custody log's last record is a requested erase (its
    /// `overwrite_medium`): an erase cut off between its record and its state.
    /// The event of the custody log's last record, when it reads.
    fn last_logged(&mut self) -> Option<Event> {
        let last = self.log.len().checked_sub(1)?;
        let page = self
            .log
            .read(self.p.log_storage(), last, LOG_PAGE_BYTES)
            .ok()?;
        Some(page.first()?.decode().ok()?.entry.event)
    }

    /// The failures a `WrongPin` record that is the custody log's last says, if it is.
    fn wrong_pin_logged_last(&mut self) -> Option<u32> {
        match self.last_logged()? {
            Event::WrongPin { failures } => Some(failures),
            _ => None,
        }
    }

    fn erase_logged_last(&mut self) -> Option<bool> {
        match self.last_logged()? {
            Event::Erase {
                reason: EraseReason::Requested,
                overwrite_medium,
                ..
            } => Some(overwrite_medium),
            _ => None,
        }
    }

    /// Whether the custody log's last arrival check failed (its record has no attestation).
    /// Read from the log, the only place a failed check leaves a trace across power-ups; a
    /// log that cannot be read says no.
    fn last_arrival_failed(&mut self) -> bool {
        let mut failed = false;
        let mut from = 0;
        while let Ok(page) = self.log.read(self.p.log_storage(), from, LOG_PAGE_BYTES) {
            let Some(last) = page.last() else {
                break;
            };
            from = last.index + 1;
            for r in &page {
                if let Ok(Event::Arrival { attestation, .. }) = r.decode().map(|e| e.entry.event) {
                    failed = attestation.is_none();
                }
            }
        }
        failed
    }

    fn lockout(&mut self) -> Result<(u64, bool), Error> {
        if matches!(self.st.lifecycle, Lifecycle::Sealed | Lifecycle::Arrived) {
            self.record(Event::Erase {
                reason: EraseReason::PinLockout,
                key_slots: 0,
                overwrite_medium: false,
            })?;
            self.destroy_secrets(Lifecycle::Erased)?;
            warn!("PIN lockout: identity destroyed, sealed medium untouched");
            return Ok((0, false));
        }
        self.crypto_erase(EraseReason::PinLockout, false)
    }

    fn lock(&mut self) -> Result<Response, Error> {
        if let Some(r) = self.refuse(false) {
            return Ok(r);
        }
        // Answered "Locked" before, which the host took for success and then found the state
        // was not `locked`: say why instead.
        if matches!(self.st.lifecycle, Lifecycle::Sealed | Lifecycle::Arrived) {
            return Ok(Response::error(
                ErrorCode::Sealed,
                alloc::format!(
                    "the appliance is {}: its medium is already read-only for good, there is nothing to lock",
                    self.state()
                ),
            ));
        }
        self.save_if_dirty()?;
        if self.unlocked {
            self.unlocked = false;
            // Locked whatever the flush says (writes are refused from here on): the custody
            // log records it even when the medium reports a write error, which is then the
            // answer (the log missed the lock of a medium whose flush failed).
            let flushed = self.p.medium().flush();
            self.record(Event::Lock)?;
            flushed?;
        }
        Ok(Response::Locked)
    }

    /// Why a capture event cannot be recorded now, if it cannot.
    fn capture_refusal(&self, name: &str) -> Option<Response> {
        if let Some(r) = self.refuse(false) {
            return Some(r);
        }
        if self.st.lifecycle != Lifecycle::Ready {
            return Some(Response::error(
                ErrorCode::Sealed,
                "the medium is sealed: no new captures",
            ));
        }
        if let Some(r) = self.refuse(true) {
            return Some(r);
        }
        if let Err(e) = layout::validate_name(name) {
            return Some(Response::error(
                ErrorCode::BadRequest,
                alloc::format!("{e}"),
            ));
        }
        None
    }

    fn capture_event(&mut self, name: &str, generation: Option<u64>) -> Result<Response, Error> {
        if let Some(r) = self.capture_refusal(name) {
            return Ok(r);
        }
        let event = match generation {
            None => Event::CaptureBegin { name: name.into() },
            Some(generation) => Event::CaptureCommit {
                name: name.into(),
                generation,
            },
        };
        let index = self.record(event)?;
        Ok(Response::Recorded { index })
    }

    /// The host removed generations of a capture through the block service while unlocked: a
    /// removal of witnessed data otherwise left the log ending on its commit, the capture no
    /// longer on the medium.
    fn capture_removed(&mut self, name: &str, generations: Vec<u64>) -> Result<Response, Error> {
        if let Some(r) = self.capture_refusal(name) {
            return Ok(r);
        }
        let index = self.record(Event::CaptureRemoved {
            name: name.into(),
            generations,
        })?;
        Ok(Response::Recorded { index })
    }

    /// Witness a finished generation: read its MANIFEST and key slots from
    /// the medium itself (nothing the host says about them is trusted),
    /// build the commit and sign it with the identity key in the appliance
    /// role. The signature says "this appliance held a medium on which this
    /// generation, with exactly these key slots, was complete"; the target
    /// accepts it under a pinned appliance fingerprint in place of a site
    /// signature.
    fn capture_commit(&mut self, name: &str, generation: u64) -> Result<Response, Error> {
        if let Some(r) = self.capture_refusal(name) {
            return Ok(r);
        }
        let Ok(gen32) = u32::try_from(generation) else {
            return Ok(Response::error(
                ErrorCode::BadRequest,
                alloc::format!("generation {generation} is out of range"),
            ));
        };
        // The host wrote through the block service: make sure the file view
        // sees every block it wrote.
        self.p.medium().flush()?;
        let mut found: Result<Option<image_format::commit::Commit>, image_format::Error> = Ok(None);
        let mounted = self.p.with_files(&mut |store, _console| {
            found = if gen32 == 0 || gen32 > layout::MAX_GENERATIONS {
                Ok(None)
            } else {
                image_format::commit::expected_commit(store, name, gen32)
            };
            Ok(())
        });
        if let Err(e) = mounted {
            return Ok(Response::error(
                ErrorCode::Storage,
                alloc::format!(
                    "commit not witnessed: the medium could not be read as a file system ({e})"
                ),
            ));
        }
        let commit = match found {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Ok(Response::error(
                    ErrorCode::BadRequest,
                    alloc::format!(
                        "commit not witnessed: capture {name} generation {generation} has no MANIFEST on the medium (unfinished or never written); finish the capture, then commit again"
                    ),
                ))
            }
            Err(e) => {
                return Ok(Response::error(
                    ErrorCode::VerifyFailed,
                    alloc::format!(
                        "commit not witnessed: capture {name} generation {generation} is damaged on the medium ({e}); run verify"
                    ),
                ))
            }
        };
        if commit.name != name || u64::from(commit.generation) != generation {
            return Ok(Response::error(
                ErrorCode::VerifyFailed,
                alloc::format!(
                    "commit not witnessed: the MANIFEST of capture {name} generation {generation} names another generation; run verify"
                ),
            ));
        }
        let Some(key) = self.key.as_ref() else {
            return Ok(Response::error(ErrorCode::Internal, "identity key missing"));
        };
        let sig = commit.sign(image_format::commit::SignerRole::Appliance, key);
        // Custody record only for a generation actually witnessed.
        self.capture_event(name, Some(generation))?;
        Ok(Response::Witnessed {
            digest: commit.digest(),
            identity_pubkey: sig.public_key,
            signature: sig.signature,
        })
    }

    fn log_page(&mut self, from: u64) -> Result<Response, Error> {
        let records = self.log.read(self.p.log_storage(), from, LOG_PAGE_BYTES)?;
        Ok(Response::LogRecords {
            from,
            total: self.log.len(),
            records,
        })
    }

    fn attestations(&mut self) -> Result<Response, Error> {
        let seal = read_slot(self.p.secrets(), SecretSlot::SealAttestation)?;
        let arrival = read_slot(self.p.secrets(), SecretSlot::ArrivalAttestation)?;
        Ok(Response::Attestations { seal, arrival })
    }

    fn verify_cmd(&mut self) -> Result<Response, Error> {
        let report = self.verify_and_digest(false)?.0;
        if self.key.is_some() {
            self.record(verify_event(&report))?;
        }
        Ok(Response::Verified(report))
    }

    /// Mount the medium, run the keyless verifier and (if asked) hash every
    /// file. The file digests come from the verifier's own reads
    /// ([`FileDigests`]): only what it does not read whole (key slots, files
    /// outside the captures) is read again. A medium that does not mount is
    /// reported as a problem.
    fn verify_and_digest(
        &mut self,
        digests: bool,
    ) -> Result<(VerifyReport, Vec<attest::FileDigest>), Error> {
        self.p.indicators().set_led(LedState::Busy);
        let reply = self.reply;
        let mut report = VerifyReport::default();
        let mut files = Vec::new();
        let res = self.p.with_files(&mut |store, console| {
            let mut progress =
                |what: &str, done, total| emit_progress(console, reply, what, done, total);
            if !digests {
                report = verify::verify_medium(store, &mut progress)?;
                return Ok(());
            }
            let mut sums = FileDigests::new();
            report = verify::verify_medium(&mut sums.tee(store), &mut progress)?;
            files = sums.finish(store, &mut |done, total| {
                progress("hashing files (bytes)", done, total)
            })?;
            Ok(())
        });
        if let Err(e) = res {
            report.problems.push(Problem {
                place: Place::Medium,
                message: alloc::format!("the medium could not be read as a file system: {e}"),
            });
        }
        self.alarm = !report.ok();
        Ok((report, files))
    }

    /// Region size for this medium: the configured size (at least one
    /// block), doubled until at most [`MAX_REGIONS`] regions cover it.
    fn region_size(&mut self) -> u64 {
        let total = self.medium_bytes();
        let mut region = self
            .cfg
            .region_size
            .max(self.p.medium().block_size() as u64)
            .max(1);
        while total.div_ceil(region) > MAX_REGIONS {
            region = region.saturating_mul(2);
        }
        region
    }

    /// SHA-256 of every region of the raw medium, hashed here, now.
    fn region_hashes(&mut self) -> Result<Vec<[u8; 32]>, Error> {
        self.p.indicators().set_led(LedState::Busy);
        let region = self.region_size();
        let chunk = self.io_chunk();
        let mut h = RegionHasher::new(self.p.medium(), region, chunk);
        let mut next_report = attest::PROGRESS_BYTES;
        loop {
            let more = h.step(self.p.medium())?;
            let (pos, total) = (h.done(), h.total());
            if pos >= next_report || !more {
                emit_progress(self.p.console(), self.reply, REGIONS_WHAT, pos, total);
                next_report = pos + attest::PROGRESS_BYTES;
            }
            if !more {
                break;
            }
        }
        Ok(h.finish())
    }

    /// Start the region hashes on the platform's spare core, if it has one
    /// ([`Platform::start_region_hashes`]).
    fn start_region_hashes(&mut self) -> Option<Box<dyn RegionJob>> {
        let region = self.region_size();
        let chunk = self.io_chunk();
        self.p.start_region_hashes(region, chunk)
    }

    /// The region hashes of `job`, reporting progress while waiting for them.
    fn finish_region_hashes(&mut self, job: Box<dyn RegionJob>) -> Result<Vec<[u8; 32]>, Error> {
        self.p.indicators().set_led(LedState::Busy);
        let reply = self.reply;
        let console = self.p.console();
        Ok(job
            .finish(&mut |done, total| emit_progress(console, reply, REGIONS_WHAT, done, total))?)
    }

    fn body(
        &mut self,
        kind: AttestationKind,
        report: &VerifyReport,
        files: Vec<attest::FileDigest>,
        regions: Vec<[u8; 32]>,
        seal_digest: Option<[u8; 32]>,
        challenge: Option<[u8; 32]>,
    ) -> AttestationBody {
        let region_size = self.region_size();
        AttestationBody {
            kind,
            identity: self.pubkey.unwrap_or([0; 32]),
            medium_id: self.medium_id.unwrap_or([0; 16]),
            medium_bytes: self.medium_bytes(),
            files,
            captures: report.captures,
            records: report.records,
            region_size,
            regions,
            counter: self.st.counters.attestations,
            uptime_ms: self.p.clock().now_ms(),
            unix_time: self.p.clock().unix_time(),
            seal_digest,
            challenge,
            log_records: self.log.len(),
            log_head: self.log.head(),
        }
    }

    fn seal(&mut self) -> Result<Response, Error> {
        if let Some(r) = self.refuse(false) {
            return Ok(r);
        }
        if self.st.lifecycle != Lifecycle::Ready {
            // Arrived is sealed and checked at the target: "already sealed; the appliance is
            // arrived" read as two states at once.
            let why = match self.st.lifecycle {
                Lifecycle::Arrived => {
                    "the appliance has arrived (sealed, then checked at the target): it is not \
                     sealed again"
                }
                _ => "the appliance is already sealed",
            };
            return Ok(Response::error(ErrorCode::Sealed, why));
        }
        if let Some(r) = self.refuse(true) {
            return Ok(r);
        }
        self.begin_under_way(LongOperation::Seal)?;
        self.p.medium().flush()?;
        // The regions are hashed beside the file walk where the platform
        // has a spare core, else after it (the walk leaves every byte as it
        // was, see `Platform::with_files`). A refused seal drops the job,
        // which stops it.
        let job = self.start_region_hashes();
        let (report, files) = self.verify_and_digest(true)?;
        self.record(verify_event(&report))?;
        if let Some(first) = report.problems.first() {
            return Ok(Response::error(
                ErrorCode::VerifyFailed,
                alloc::format!(
                    "seal refused: verification found {} problem(s), the first: {first}; run verify for the full list",
                    report.problems.len()
                ),
            ));
        }
        // A seal is for good: sealed empty, the appliance could never take the capture it was
        // issued for.
        if report.captures == 0 {
            return Ok(Response::error(
                ErrorCode::BadRequest,
                "seal refused: the medium holds no capture, and a sealed appliance never takes one; capture onto it first ('mgear capture --appliance PORT ...'), then seal",
            ));
        }
        let regions = match job {
            Some(job) => self.finish_region_hashes(job)?,
            None => self.region_hashes()?,
        };
        // Write-ahead (see the module doc): counter, record, then attestation and state.
        self.st.counters.attestations += 1;
        self.save()?;
        let body = self.body(AttestationKind::Seal, &report, files, regions, None, None);
        let Some(key) = self.key.as_ref() else {
            return Ok(Response::error(ErrorCode::Internal, "identity key missing"));
        };
        let att = Attestation::sign(body, key);
        self.record(Event::Seal {
            counter: att.body.counter,
            attestation: att.digest(),
        })?;
        write_slot(self.p.secrets(), SecretSlot::SealAttestation, &att)?;
        self.st.lifecycle = Lifecycle::Sealed;
        self.st.under_way = None;
        self.unlocked = false;
        self.save()?;
        self.hardware_write_protect(true);
        info!("sealed");
        Ok(Response::Sealed {
            attestation: att,
            report,
        })
    }

    fn arrival(&mut self, challenge: Option<[u8; 32]>) -> Result<Response, Error> {
        if let Some(r) = self.refuse(false) {
            return Ok(r);
        }
        if !matches!(self.st.lifecycle, Lifecycle::Sealed | Lifecycle::Arrived) {
            return Ok(Response::error(
                ErrorCode::NotSealed,
                "arrival needs a sealed appliance: seal it first",
            ));
        }
        let seal: Attestation = read_slot(self.p.secrets(), SecretSlot::SealAttestation)?.ok_or(
            Error::CorruptSlot {
                slot: SecretSlot::SealAttestation.name(),
                why: "missing".into(),
            },
        )?;
        self.begin_under_way(LongOperation::Arrival)?;
        // Raw regions first, before anything mounts the medium: on a spare
        // core they are read from here on, beside the file walk.
        let (regions, (report, files)) = match self.start_region_hashes() {
            Some(job) => {
                let walked = self.verify_and_digest(true)?;
                (self.finish_region_hashes(job)?, walked)
            }
            None => {
                let regions = self.region_hashes()?;
                (regions, self.verify_and_digest(true)?)
            }
        };
        let body = self.body(
            AttestationKind::Arrival,
            &report,
            files,
            regions,
            Some(seal.digest()),
            challenge,
        );
        let mut problems = report.problems.clone();
        problems.extend(attest::compare(&seal.body, &body));
        if let Some(first) = problems.first() {
            let first = custody::clip(&first.to_string());
            // An earlier pass no longer speaks for this medium: withdraw it,
            // so GetAttestations never hands out a stale arrival.
            self.p.secrets().erase(SecretSlot::ArrivalAttestation)?;
            if self.st.lifecycle == Lifecycle::Arrived {
                self.st.lifecycle = Lifecycle::Sealed;
                self.save()?;
            }
            self.record(Event::Arrival {
                attestation: None,
                problems: problems.len() as u64,
                first: Some(first),
            })?;
            self.alarm = true;
            return Ok(Response::Arrival {
                attestation: None,
                problems,
            });
        }
        // Write-ahead (see the module doc): counter, record, then attestation and state.
        self.st.counters.attestations += 1;
        self.save()?;
        let mut body = body;
        body.counter = self.st.counters.attestations;
        let Some(key) = self.key.as_ref() else {
            return Ok(Response::error(ErrorCode::Internal, "identity key missing"));
        };
        let att = Attestation::sign(body, key);
        self.record(Event::Arrival {
            attestation: Some(att.digest()),
            problems: 0,
            first: None,
        })?;
        write_slot(self.p.secrets(), SecretSlot::ArrivalAttestation, &att)?;
        self.st.lifecycle = Lifecycle::Arrived;
        self.st.under_way = None;
        self.save()?;
        Ok(Response::Arrival {
            attestation: Some(att),
            problems,
        })
    }

    fn erase_cmd(&mut self, overwrite: bool, pin: Option<&Pin>) -> Result<Response, Error> {
        if let Some(r) = self.refuse(false) {
            return Ok(r);
        }
        match pin {
            Some(pin) => {
                if let Some(refused) = self.check_pin(pin, false)? {
                    return Ok(refused);
                }
            }
            None if self.unlocked => {}
            None => {
                return Ok(Response::error(
                    ErrorCode::Locked,
                    "erase needs the PIN: give it with the erase request ('mgear appliance erase' asks for it)",
                ))
            }
        }
        match self.crypto_erase(EraseReason::Requested, overwrite) {
            Ok((key_slots, medium_overwritten)) => Ok(Response::Erased {
                key_slots,
                medium_overwritten,
            }),
            Err(e @ (Error::Store(_) | Error::Hw(_))) if overwrite => Ok(Response::error(
                ErrorCode::Storage,
                alloc::format!(
                    "identity and PIN destroyed, but the medium could not be zeroed ({e}): the appliance zeroes it again at every power-up until it can; or wipe it on a host"
                ),
            )),
            Err(Error::Store(e)) => Ok(Response::error(
                ErrorCode::Storage,
                alloc::format!(
                    "identity and PIN destroyed, but the key slot files could not all be overwritten ({e}); the medium was not overwritten: wipe it on a host"
                ),
            )),
            Err(e) => Err(e),
        }
    }

    /// Log the erase, then overwrite every key-slot file on the medium (random,
    /// then zeros, then remove), destroy the identity and PIN, then optionally zero
    /// the whole medium. Returns (key-slot files overwritten, medium zeroed).
    ///
    /// The custody record and the `Erasing` state are saved before the first slot
    /// is touched: a power cut while the slots go leaves an appliance that says it
    /// is erased, logged it, and finishes at power-up (it once came back in its old
    /// state, slots gone, with no record of the erase).
    fn crypto_erase(&mut self, reason: EraseReason, overwrite: bool) -> Result<(u64, bool), Error> {
        self.p.indicators().set_led(LedState::Busy);
        // A sealed medium may be hardware write-protected: the erase writes it.
        self.hardware_write_protect(false);
        let mut planned = 0u64;
        let listed = self.p.with_files(&mut |store, _| {
            planned = key_slot_files(store)?.len() as u64;
            Ok(())
        });
        let _ = self.record(Event::Erase {
            reason,
            key_slots: planned,
            overwrite_medium: overwrite,
        });
        // Zeroing the medium destroys whatever slots a cut leaves: a power-up that finds
        // `Zeroing` does that instead of the slots alone.
        let pending = if overwrite {
            Lifecycle::Zeroing
        } else {
            Lifecycle::Erasing
        };
        self.st.lifecycle = pending;
        // A requested erase took the correct PIN (or an unlocked appliance): its count
        // starts again with the erase's state, saved after the erase record (see `check_pin`).
        if reason == EraseReason::Requested {
            self.st.counters.failed_pins = 0;
        }
        self.save()?;
        let res = listed
            .map_err(Error::from)
            .and_then(|_| self.overwrite_key_slots());
        self.destroy_secrets(if overwrite {
            Lifecycle::Zeroing
        } else {
            Lifecycle::Erased
        })?;
        if res.is_err() && !overwrite {
            error!("crypto-erase: key slots could not all be overwritten");
            // The identity is gone; the slots left are overwritten at the next power-up.
            self.st.lifecycle = Lifecycle::Erasing;
            self.save()?;
        }
        warn!("crypto-erased");
        if overwrite {
            // Zeroed, the medium holds no slot a failure above left.
            self.overwrite_medium()?;
            self.st.lifecycle = Lifecycle::Erased;
            self.save()?;
            self.update_led();
            return Ok((res.unwrap_or(0), true));
        }
        Ok((res?, false))
    }

    /// Overwrite every key-slot file on the medium (random, then zeros, then
    /// remove); returns how many.
    fn overwrite_key_slots(&mut self) -> Result<u64, Error> {
        let mut noise = Zeroizing::new(alloc::vec![0u8; 4096]);
        rand_core::RngCore::fill_bytes(self.p.rng(), &mut noise);
        let mut slots = 0u64;
        let reply = self.reply;
        self.hardware_write_protect(false);
        self.p.with_files(&mut |store, console| {
            let paths = key_slot_files(store)?;
            for (i, (path, len)) in paths.iter().enumerate() {
                overwrite_file(store, path, *len, &noise)?;
                overwrite_file(store, path, *len, &[0u8; 4096])?;
                store.remove_file(path)?;
                slots += 1;
                emit_progress(
                    console,
                    reply,
                    "erasing key slots",
                    i as u64 + 1,
                    paths.len() as u64,
                );
            }
            Ok(())
        })?;
        Ok(slots)
    }

    /// Destroy the identity seed and PIN verifier and enter `then` (`Erased`, or
    /// `Zeroing` while the medium is still to be zeroed). The public key, custody log
    /// and attestations stay.
    ///
    /// `then` is saved before the slots go: a power cut in between leaves
    /// an erased appliance whose next power-up erases them again, never a
    /// provisioned state without its identity (which could not start).
    fn destroy_secrets(&mut self, then: Lifecycle) -> Result<(), Error> {
        self.key = None; // SigningKey zeroizes itself on drop
        self.medium_id = None;
        self.unlocked = false;
        self.st.lifecycle = then;
        self.save()?;
        for slot in [SecretSlot::Identity, SecretSlot::PinHash] {
            self.p.secrets().erase(slot)?;
        }
        self.update_led();
        Ok(())
    }

    fn overwrite_medium(&mut self) -> Result<(), Error> {
        let bs = self.p.medium().block_size().max(1);
        let blocks = self.p.medium().block_count();
        let per = (self.io_chunk() / bs) as u64;
        let zeros = alloc::vec![0u8; per as usize * bs];
        let total = blocks.saturating_mul(bs as u64);
        let mut lba = 0;
        let mut next_report = attest::PROGRESS_BYTES;
        while lba < blocks {
            let n = per.min(blocks - lba);
            self.p
                .medium()
                .write_blocks(lba, &zeros[..n as usize * bs])?;
            lba += n;
            let done = lba.saturating_mul(bs as u64);
            if done >= next_report || lba == blocks {
                emit_progress(
                    self.p.console(),
                    self.reply,
                    "overwriting medium (bytes)",
                    done,
                    total,
                );
                next_report = done + attest::PROGRESS_BYTES;
            }
        }
        self.p.medium().flush()?;
        Ok(())
    }

    // ----- helpers -------------------------------------------------------

    /// Raw medium I/O unit: the device's preferred transfer, whole blocks.
    fn io_chunk(&mut self) -> usize {
        let m = self.p.medium();
        let bs = m.block_size().max(1);
        (m.max_transfer().min(IO_CHUNK_MAX) / bs).max(1) * bs
    }

    /// Engage or release the medium's hardware write protection, if it has
    /// any. Only defence in depth: the block service refuses writes while
    /// sealed whatever this does, so a failure is logged, not fatal.
    fn hardware_write_protect(&mut self, on: bool) {
        match self.p.medium().set_write_protect(on) {
            Ok(true) if on => info!("medium hardware write protection engaged"),
            Ok(true) => info!("medium hardware write protection released"),
            Ok(false) => {}
            Err(_) => warn!("medium hardware write protection could not be changed"),
        }
    }

    fn record(&mut self, event: Event) -> Result<u64, Error> {
        let Some(key) = self.key.as_ref() else {
            return Ok(self.log.len());
        };
        let uptime = self.p.clock().now_ms();
        let unix = self.p.clock().unix_time();
        Ok(self
            .log
            .append(self.p.log_storage(), key, uptime, unix, event)?)
    }

    /// Save that `op` reads the medium from here on (see the module doc's ordering rules).
    fn begin_under_way(&mut self, op: LongOperation) -> Result<(), Error> {
        self.st.under_way = Some(op);
        self.save()
    }

    /// A seal or arrival check ended (done, refused or failed) without clearing its mark with
    /// the state it ended in: clear it now, so the next power-up does not call it cut off.
    fn ended_under_way(&mut self, r: Result<Response, Error>) -> Result<Response, Error> {
        if self.st.under_way.take().is_some() {
            self.save()?;
        }
        r
    }

    fn save(&mut self) -> Result<(), Error> {
        write_slot(self.p.secrets(), SecretSlot::State, &self.st)?;
        self.counters_dirty = false;
        Ok(())
    }

    fn save_if_dirty(&mut self) -> Result<(), Error> {
        if self.counters_dirty && self.st.lifecycle != Lifecycle::Factory {
            self.save()?;
        }
        Ok(())
    }

    fn update_led(&mut self) {
        let led = match self.state() {
            DeviceState::Erased => LedState::Erased,
            _ if self.alarm => LedState::Alarm,
            DeviceState::Factory => LedState::Factory,
            DeviceState::Locked => LedState::Locked,
            DeviceState::Unlocked => LedState::Unlocked,
            DeviceState::Sealed => LedState::Sealed,
            DeviceState::Arrived => LedState::Arrived,
        };
        self.p.indicators().set_led(led);
    }
}

/// What an erased appliance can still do: the next step that exists.
const ERASED_NEXT_STEP: &str = "the appliance is erased: its identity and PIN are destroyed and it cannot be provisioned again; its custody log and attestations can still be read ('mgear appliance log --verify', 'mgear appliance attestations'); return it to the datacenter that issued it";

/// The custody record of a keyless verification: its problems and the first, or, when it
/// found none on a medium that holds no capture, that nothing was verified (recorded as "no
/// problems", which the verify command itself called "medium NOT verified").
fn verify_event(report: &VerifyReport) -> Event {
    let first = match report.problems.first() {
        Some(p) => Some(custody::clip(&p.to_string())),
        None if report.captures == 0 => Some(custody::NOTHING_VERIFIED.into()),
        None => None,
    };
    Event::Verify {
        problems: report.problems.len() as u64,
        first,
    }
}

/// Commands whose argument is a PIN (never echoed in line mode).
const PIN_COMMANDS: [&str; 1] = ["unlock"];

/// Whether a command line typed so far has reached a PIN: its first word
/// starts with a PIN-taking command (any case, after any blanks), so every
/// further byte is masked. Parsed like `handle_line` splits words.
fn line_carries_pin(line: &[u8]) -> bool {
    let start = line
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(line.len());
    let rest = &line[start..];
    PIN_COMMANDS.iter().any(|cmd| {
        rest.len() >= cmd.len() && rest[..cmd.len()].eq_ignore_ascii_case(cmd.as_bytes())
    })
}

/// Every command word of the line mode (`handle_line`).
const LINE_COMMANDS: [&str; 10] = [
    "help", "?", "info", "ping", "unlock", "lock", "verify", "seal", "arrival", "log",
];

/// Commands whose arguments are no secret, echoed as typed.
const SHOWN_ARGS: [&str; 1] = ["log"];

/// Whether `word` is a line-mode command (any case).
fn is_line_command(word: &[u8]) -> bool {
    LINE_COMMANDS
        .iter()
        .any(|c| word.eq_ignore_ascii_case(c.as_bytes()))
}

/// Whether byte `b`, typed after `so_far`, echoes as `*`. A PIN line's argument is masked
/// (see [`line_carries_pin`]), and so is anything a line whose command is not known holds:
/// "unlok Secret-1234" was echoed in clear, then refused as an unknown command. The first
/// word shows while it is the start of a command; from the byte that makes it none, the
/// line is masked (a PIN typed with no command, or run into a misspelt one). Only the
/// arguments of a command that takes no secret (`log 12`) show.
fn echo_masked(so_far: &[u8], b: u8) -> bool {
    if line_carries_pin(so_far) {
        return true;
    }
    let start = so_far
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(so_far.len());
    let rest = &so_far[start..];
    match rest.iter().position(|c| c.is_ascii_whitespace()) {
        // Still in the first word (blanks before it show as blanks either way).
        None if rest.is_empty() || !b.is_ascii_whitespace() => {
            !LINE_COMMANDS.iter().any(|c| {
                let c = c.as_bytes();
                c.len() > rest.len()
                    && c[..rest.len()].eq_ignore_ascii_case(rest)
                    && c[rest.len()].eq_ignore_ascii_case(&b)
            }) && !b.is_ascii_whitespace()
        }
        None => !is_line_command(rest),
        Some(end) => !SHOWN_ARGS
            .iter()
            .any(|c| rest[..end].eq_ignore_ascii_case(c.as_bytes())),
    }
}

/// Whether the line's first word is exactly a PIN-taking command.
fn starts_with_pin_command(line: &str) -> bool {
    let word = line.split_whitespace().next().unwrap_or("");
    PIN_COMMANDS.iter().any(|c| word.eq_ignore_ascii_case(c))
}

/// Key-slot files (`KEYS`, `KEYPASS` and their temporary variants) anywhere
/// under `MGEAR/`.
fn key_slot_files(store: &mut dyn Store) -> Result<Vec<(String, u64)>, StoreError> {
    let mut out = Vec::new();
    let mut dirs = alloc::vec![(String::from(layout::ROOT_DIR), 0usize)];
    while let Some((dir, depth)) = dirs.pop() {
        let entries = match store.list(&dir) {
            Ok(e) => e,
            Err(StoreError::NotFound) => continue,
            Err(e) => return Err(e),
        };
        for e in entries {
            if e.name == "." || e.name == ".." {
                continue;
            }
            let path = alloc::format!("{dir}/{}", e.name);
            let upper = e.name.to_ascii_uppercase();
            match e.kind {
                EntryKind::Dir if depth < 8 => dirs.push((path, depth + 1)),
                EntryKind::Dir => {}
                EntryKind::File
                    if upper.starts_with(layout::KEYS_FILE)
                        || upper.starts_with(layout::KEYPASS_FILE) =>
                {
                    out.push((path, e.len))
                }
                EntryKind::File => {}
            }
        }
    }
    out.sort();
    Ok(out)
}

fn overwrite_file(
    store: &mut dyn Store,
    path: &str,
    len: u64,
    pattern: &[u8],
) -> Result<(), StoreError> {
    let mut off = 0u64;
    while off < len {
        let n = ((len - off) as usize).min(pattern.len());
        store.write_at(path, off, &pattern[..n])?;
        off += n as u64;
    }
    store.sync(path)
}

/// Human rendering of a reply for line mode.
pub fn render_text(resp: &Response) -> String {
    let mut s = String::new();
    match resp {
        Response::Pong => s.push_str("pong\r\n"),
        Response::Info(i) => {
            let _ = write!(s, "state: {}\r\n", i.state);
            if let Some(f) = &i.fingerprint {
                let _ = write!(s, "identity: {f}\r\n");
            }
            let _ = write!(
                s,
                "medium: {} bytes at {}\r\nboots {} unlocks {} wrong PINs {} (in a row {}) writes {} refused {} attestations {}\r\nlog: {} records{}\r\n",
                i.medium_bytes,
                i.medium_locator,
                i.counters.boots,
                i.counters.unlocks,
                i.counters.total_failed_pins,
                i.counters.failed_pins,
                i.counters.writes,
                i.counters.refused_writes,
                i.counters.attestations,
                i.log_records,
                if i.log_damaged { " (DAMAGED: verify it on the host)" } else { "" },
            );
            if i.retry_after_ms > 0 {
                let _ = write!(
                    s,
                    "next PIN attempt in {} s\r\n",
                    i.retry_after_ms.div_ceil(1000)
                );
            }
        }
        Response::Provisioned { fingerprint, .. } => {
            let _ = write!(s, "provisioned; identity {fingerprint}\r\n");
        }
        Response::Unlocked => s.push_str("unlocked: the medium accepts writes\r\n"),
        Response::Locked => s.push_str("locked\r\n"),
        Response::Progress { what, done, total } => {
            let _ = write!(s, "  {what}: {done}/{total}\r\n");
        }
        Response::Verified(r) => render_report(&mut s, r),
        Response::Sealed {
            attestation,
            report,
        } => {
            render_report(&mut s, report);
            let _ = write!(
                s,
                "SEALED: the medium is read-only; attestation #{} over {} files and {} regions\r\n",
                attestation.body.counter,
                attestation.body.files.len(),
                attestation.body.regions.len()
            );
        }
        Response::Arrival {
            attestation: Some(a),
            ..
        } => {
            let _ = write!(
                s,
                "ARRIVAL OK: the medium is unchanged since the seal; attestation #{}\r\n",
                a.body.counter
            );
        }
        Response::Arrival {
            attestation: None,
            problems,
        } => {
            let _ = write!(
                s,
                "ARRIVAL FAILED: {} difference(s) since the seal\r\n",
                problems.len()
            );
            for p in problems.iter().take(20) {
                let _ = write!(s, "  {p}\r\n");
            }
        }
        Response::LogRecords {
            from,
            total,
            records,
        } => {
            for r in records {
                match r.decode() {
                    Ok(e) => {
                        let _ = write!(
                            s,
                            "{:>5} +{}ms {}\r\n",
                            r.index, e.entry.uptime_ms, e.entry.event
                        );
                    }
                    Err(e) => {
                        let _ = write!(s, "{:>5} DAMAGED: {e}\r\n", r.index);
                    }
                }
            }
            let next = from + records.len() as u64;
            if next < *total {
                let _ = write!(s, "({} more: log {next})\r\n", total - next);
            }
        }
        Response::Erased {
            key_slots,
            medium_overwritten,
        } => {
            let _ = write!(
                s,
                "erased: {key_slots} key slot files overwritten{}\r\n",
                if *medium_overwritten {
                    ", medium zeroed"
                } else {
                    ""
                }
            );
        }
        Response::Recorded { index } => {
            let _ = write!(s, "recorded as log entry {index}\r\n");
        }
        Response::Attestations { seal, arrival } => {
            let _ = write!(
                s,
                "seal: {}\r\narrival: {}\r\n",
                seal.is_some(),
                arrival.is_some()
            );
        }
        Response::Error { code, message } => {
            let _ = write!(s, "error ({code:?}): {message}\r\n");
        }
        Response::Witnessed {
            digest,
            identity_pubkey,
            ..
        } => {
            s.push_str("commit witnessed: ");
            for b in &digest[..8] {
                let _ = write!(s, "{b:02x}");
            }
            let _ = write!(s, " signed by {}\r\n", attest::fingerprint(identity_pubkey));
        }
    }
    s
}

fn render_report(s: &mut String, r: &VerifyReport) {
    let _ = write!(
        s,
        "verified {} captures, {} segments, {} records, {} bytes: {}\r\n",
        r.captures,
        r.segments,
        r.records,
        r.bytes,
        if r.ok() { "OK" } else { "PROBLEMS" }
    );
    for p in r.problems.iter().take(20) {
        let _ = write!(s, "  {p}\r\n");
    }
    if r.problems.len() > 20 {
        let _ = write!(s, "  ... {} more\r\n", r.problems.len() - 20);
    }
}

#[cfg(test)]
mod tests;
