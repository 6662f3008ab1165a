//! The console protocol between the host tools and the appliance.
//!
//! One byte stream (CDC-ACM serial, the simulator's pty, or HID reports
//! carrying the same stream) carries two kinds of input, told apart by
//! their first byte:
//!
//! * **Frames** (host tools): start with `0x00` and end with `0x00`.
//! * **Lines** (a human in `screen /dev/ttyACM0`): printable ASCII ending in
//!   `\r` or `\n`. A terminal never sends `0x00`.
//!
//! # Frame byte layout
//!
//! ```text
//! wire:  0x00 0x00 | COBS(body) | 0x00
//! body:  version: u8        PROTOCOL_VERSION (2)
//!        request_id: u32 LE chosen by the host, echoed in every reply
//!        payload: [u8]      postcard encoding of a Request or Response
//!        crc: u32 LE        CRC-32/ISO-HDLC (zlib's) of version..payload
//! ```
//!
//! The leading `0x00` marks the input as a frame; receivers ignore empty frames
//! (`0x00 0x00`). A sender writes two: the first ends whatever a receiver had
//! taken for the start of a frame (a stray NUL from a terminal, line noise), so
//! the second starts this frame in step; with one, a stray NUL made the next frame's
//! body read as a command line, and the host waited out its timeout for an answer
//! to a request the device never saw. A partial frame the device has heard nothing
//! more of for [`FRAME_GAP_MS`] is dropped ([`ConsoleDecoder::drop_stale_frame`]),
//! so a person who typed Ctrl-@ gets the console back. COBS
//! guarantees no `0x00` inside. A request body is at most
//! [`MAX_REQUEST_LEN`] bytes (the device has little RAM), a response body at
//! most [`MAX_RESPONSE_LEN`] (attestations of large media are big); longer
//! input is discarded up to the next `0x00` and answered with an error. A long operation (verify, seal, arrival) may send
//! [`Response::Progress`] frames with the request's id before the final reply.
//!
//! The firmware core and the host tools both use this very module.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use zeroize::Zeroize;

use crate::attest::Attestation;
use crate::custody::LogRecord;

/// Version byte of every frame; bumped on incompatible changes.
/// 2: `Arrival` carries the host's challenge, `Erase` may carry the PIN,
/// attestations carry the custody log's length and head.
pub const PROTOCOL_VERSION: u8 = 2;
/// Silence after which a begun frame is taken as abandoned (see the module doc).
pub const FRAME_GAP_MS: u64 = 1_000;
/// Largest decoded request body (version + id + payload + crc) the device accepts.
pub const MAX_REQUEST_LEN: usize = 16 * 1024;
/// Largest decoded response body the host accepts.
pub const MAX_RESPONSE_LEN: usize = 4 * 1024 * 1024;

/// Largest encoded frame (between the delimiters) for a body limit: COBS
/// adds one byte per 254.
pub const fn max_encoded_len(max_body: usize) -> usize {
    max_body + max_body / 254 + 2
}
/// Longest accepted command line.
pub const MAX_LINE_LEN: usize = 256;

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// A PIN as typed by the operator. Zeroized on drop; `Debug` hides it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Pin(String);

impl Pin {
    pub fn new(pin: impl Into<String>) -> Self {
        Pin(pin.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(***)")
    }
}

/// A command from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness check; answered with [`Response::Pong`].
    Ping,
    /// State, identity and counters.
    Info,
    /// Factory → locked: set the PIN and generate the Ed25519 identity.
    Provision { pin: Pin },
    /// Locked → unlocked (the medium accepts writes). A sealed appliance
    /// refuses it without checking the PIN: nothing can make its medium
    /// writable again.
    Unlock { pin: Pin },
    /// Unlocked → locked.
    Lock,
    /// Verify, write-protect and sign the seal attestation (needs unlock).
    Seal,
    /// At the target: verify again, compare with the seal, sign arrival.
    /// `challenge` is a fresh random nonce from the host; the arrival
    /// attestation carries it, so a replayed older arrival is told apart.
    Arrival {
        #[serde(with = "serde_bytes")]
        challenge: [u8; 32],
    },
    /// Keyless verification of every capture on the medium.
    Verify,
    /// Custody log records from index `from` (one page; ask again from
    /// `from + records.len()` until `records` is empty).
    Log { from: u64 },
    /// Crypto-erase, then overwrite the medium if asked. Needs the PIN:
    /// either the appliance is unlocked, or `pin` is given (the only way on
    /// a sealed appliance, which refuses `Unlock`). A wrong `pin` counts as
    /// a failed PIN attempt like a wrong `Unlock`.
    Erase { overwrite: bool, pin: Option<Pin> },
    /// The host starts writing capture `name` (custody record).
    CaptureBegin { name: String },
    /// The host committed `generation` of capture `name` (custody record).
    CaptureCommit { name: String, generation: u64 },
    /// The stored seal and arrival attestations.
    GetAttestations,
    /// The host removed `generations` of capture `name` from the medium (custody record).
    /// Appended last, so the requests before it keep their wire numbers.
    CaptureRemoved { name: String, generations: Vec<u64> },
}

/// Lifecycle state as reported to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// No identity, no PIN.
    Factory,
    /// Provisioned; PIN needed; medium read-only.
    Locked,
    /// PIN entered; the medium accepts writes.
    Unlocked,
    /// Sealed: medium read-only for good, seal attestation signed.
    Sealed,
    /// Sealed and the arrival check passed.
    Arrived,
    /// Crypto-erased: identity secret and key slots destroyed.
    Erased,
}

impl DeviceState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Factory => "factory",
            DeviceState::Locked => "locked",
            DeviceState::Unlocked => "unlocked",
            DeviceState::Sealed => "sealed",
            DeviceState::Arrived => "arrived",
            DeviceState::Erased => "erased",
        }
    }
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Persistent counters (kept in the secret store's `State` slot).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Power-ups since provisioning.
    pub boots: u64,
    /// Successful unlocks.
    pub unlocks: u64,
    /// Wrong PINs since the last correct one (10 → crypto-erase).
    pub failed_pins: u32,
    /// Wrong PINs ever.
    pub total_failed_pins: u64,
    /// Block writes accepted (persisted on flush, lock and seal).
    pub writes: u64,
    /// Block writes refused (locked or sealed).
    pub refused_writes: u64,
    /// Attestations signed; each attestation carries the new value.
    pub attestations: u64,
}

/// Where a problem is on the medium.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Place {
    /// The medium as a whole (e.g. it could not be mounted).
    Medium,
    /// A file outside any capture's records (manifest, index, key slots...).
    File { path: String },
    /// A capture (`generation` when known).
    Capture {
        capture: String,
        generation: Option<u64>,
    },
    /// A segment of a capture (`SEG-00003`), and the record in it when known.
    Segment {
        capture: String,
        generation: Option<u64>,
        segment: String,
        record: Option<u64>,
    },
    /// A byte range of the raw medium (a per-region hash differs).
    Region { index: u64, start: u64, end: u64 },
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Medium => f.write_str("medium"),
            Place::File { path } => write!(f, "file {path}"),
            Place::Capture {
                capture,
                generation: Some(g),
            } => {
                write!(f, "capture {capture} generation {g}")
            }
            Place::Capture {
                capture,
                generation: None,
            } => write!(f, "capture {capture}"),
            Place::Segment {
                capture,
                generation,
                segment,
                record,
            } => {
                write!(f, "capture {capture}")?;
                if let Some(g) = generation {
                    write!(f, " generation {g}")?;
                }
                write!(f, " segment {segment}")?;
                if let Some(r) = record {
                    write!(f, " record {r}")?;
                }
                Ok(())
            }
            Place::Region { index, start, end } => {
                write!(f, "medium region {index} (bytes {start}..{end})")
            }
        }
    }
}

/// One problem found by verify or arrival.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub place: Place,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.message)
    }
}

/// Result of a keyless verification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Captures walked.
    pub captures: u64,
    /// Segments walked.
    pub segments: u64,
    /// Records checked.
    pub records: u64,
    /// Stored bytes checked.
    pub bytes: u64,
    /// Everything wrong, in medium order; empty means the medium verified.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Everything `info` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub firmware_version: String,
    pub protocol_version: u8,
    pub state: DeviceState,
    /// Ed25519 public key (kept after erase so the custody log can be verified).
    #[serde(with = "serde_bytes")]
    pub identity_pubkey: Option<[u8; 32]>,
    /// The full fingerprint of the public key (`crate::attest::full_fingerprint`):
    /// what a target pins with `--trust-appliance`.
    pub fingerprint: Option<String>,
    /// Random id of this appliance's medium, chosen at provisioning.
    #[serde(with = "serde_bytes")]
    pub medium_id: Option<[u8; 16]>,
    pub medium_bytes: u64,
    /// Where the host reaches the medium's block device.
    pub medium_locator: String,
    pub counters: Counters,
    /// Milliseconds until the next PIN attempt is accepted (0 = now).
    pub retry_after_ms: u64,
    /// Records in the custody log.
    pub log_records: u64,
    /// The custody log holds a damaged record before its end (see `log --verify`).
    pub log_damaged: bool,
}

/// Machine-readable error class of [`Response::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The frame could not be decoded (COBS, CRC, length).
    BadFrame,
    /// The frame's protocol version is not ours.
    UnsupportedVersion,
    /// The frame decoded but the request did not (or an unknown command line).
    BadRequest,
    /// The appliance has no identity yet: provision it.
    NotProvisioned,
    /// Provisioning is possible only once, in the factory state.
    AlreadyProvisioned,
    /// This needs the PIN: unlock first.
    Locked,
    /// The PIN is wrong (the message says how many attempts remain).
    WrongPin,
    /// Too many wrong PINs recently: wait (the message says how long).
    BackOff,
    /// The PIN does not meet the rules (length, digits).
    BadPin,
    /// The medium is sealed; nothing may change it.
    Sealed,
    /// This needs a sealed appliance.
    NotSealed,
    /// The appliance was crypto-erased.
    Erased,
    /// Verification found problems (listed in the message / a report).
    VerifyFailed,
    /// The medium, secret store or log storage failed.
    Storage,
    /// A bug: please report it.
    Internal,
    /// The chip's read-out protection is not in force, so no identity is
    /// created (the message says what to do).
    NotProtected,
}

/// A reply from the appliance. Replies are short-lived, so the size
/// difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Pong,
    Info(Info),
    /// Provisioned: the new identity.
    Provisioned {
        #[serde(with = "serde_bytes")]
        identity_pubkey: [u8; 32],
        fingerprint: String,
    },
    Unlocked,
    Locked,
    /// A long operation's progress: `done` of `total` units of `what`.
    Progress {
        what: String,
        done: u64,
        total: u64,
    },
    Verified(VerifyReport),
    Sealed {
        attestation: Attestation,
        report: VerifyReport,
    },
    /// Arrival check: `attestation` only when `problems` is empty.
    Arrival {
        attestation: Option<Attestation>,
        problems: Vec<Problem>,
    },
    /// One page of the custody log: records `from..from + records.len()` of `total`.
    LogRecords {
        from: u64,
        total: u64,
        records: Vec<LogRecord>,
    },
    /// Crypto-erased; `key_slots` files overwritten; medium overwritten if asked.
    Erased {
        key_slots: u64,
        medium_overwritten: bool,
    },
    /// Custody record appended.
    Recorded {
        index: u64,
    },
    Attestations {
        seal: Option<Attestation>,
        arrival: Option<Attestation>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    /// Answer to `CaptureCommit`: the custody record is written and the
    /// appliance signed (role appliance, `image_format::commit` message) the
    /// commit it built from the generation's MANIFEST and key slots as they
    /// are on the medium. `digest` is that commit's digest.
    Witnessed {
        #[serde(with = "serde_bytes")]
        digest: [u8; 32],
        #[serde(with = "serde_bytes")]
        identity_pubkey: [u8; 32],
        #[serde(with = "serde_bytes")]
        signature: [u8; 64],
    },
}

impl Response {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Error {
            code,
            message: message.into(),
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame longer than this side accepts")]
    TooLong,
    #[error("frame is not valid COBS")]
    Cobs,
    #[error("frame too short ({0} bytes)")]
    TooShort(usize),
    #[error("frame CRC mismatch")]
    Crc,
    #[error("protocol version {0} not supported (this side speaks {PROTOCOL_VERSION})")]
    Version(u8),
    #[error("frame payload does not decode: {0}")]
    Payload(String),
}

/// Encode `msg` as one frame with `request_id`, delimiters included.
pub fn encode_frame<T: Serialize>(request_id: u32, msg: &T) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    body.push(PROTOCOL_VERSION);
    body.extend_from_slice(&request_id.to_le_bytes());
    // Serialising our own types into a Vec cannot fail.
    let payload = postcard::to_allocvec(msg).unwrap_or_default();
    body.extend_from_slice(&payload);
    let crc = CRC32.checksum(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    let mut out = Vec::with_capacity(body.len() + body.len() / 254 + 4);
    out.extend_from_slice(&[0, 0]);
    let mut enc = alloc::vec![0u8; cobs::max_encoding_length(body.len())];
    let n = cobs::encode(&body, &mut enc);
    out.extend_from_slice(&enc[..n]);
    out.push(0);
    out
}

/// A checked frame body: version verified, CRC verified, payload not yet decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub request_id: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// Check a COBS-decoded body.
    pub fn from_body(body: &[u8]) -> Result<Frame, FrameError> {
        if body.len() < 9 {
            return Err(FrameError::TooShort(body.len()));
        }
        let (data, crc) = body.split_at(body.len() - 4);
        let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if CRC32.checksum(data) != want {
            return Err(FrameError::Crc);
        }
        if data[0] != PROTOCOL_VERSION {
            return Err(FrameError::Version(data[0]));
        }
        let request_id = u32::from_le_bytes([data[1], data[2], data[3], data[4]]);
        Ok(Frame {
            request_id,
            payload: data[5..].to_vec(),
        })
    }

    /// Decode the payload as `T`; trailing bytes are an error.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, FrameError> {
        match postcard::take_from_bytes::<T>(&self.payload) {
            Ok((msg, [])) => Ok(msg),
            Ok((_, rest)) => Err(FrameError::Payload(alloc::format!(
                "{} unexpected trailing bytes",
                rest.len()
            ))),
            Err(e) => Err(FrameError::Payload(alloc::format!("{e}"))),
        }
    }
}

/// Decode one complete encoded frame (with or without its delimiters), up
/// to the host's limit [`MAX_RESPONSE_LEN`].
pub fn decode_frame<T: DeserializeOwned>(wire: &[u8]) -> Result<(u32, T), FrameError> {
    let mut dec = FrameDecoder::new();
    let mut last = None;
    for &b in wire.iter().chain(core::iter::once(&0u8)) {
        if let Some(r) = dec.push(b) {
            last = Some(r);
            break;
        }
    }
    let frame = last.ok_or(FrameError::TooShort(0))??;
    let msg = frame.decode()?;
    Ok((frame.request_id, msg))
}

/// What the console received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Frame(Result<Frame, FrameError>),
    /// A command line without its terminator, or why it was rejected.
    Line(Result<String, LineError>),
}

/// Why a command line was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line longer than {MAX_LINE_LEN} characters")]
    TooLong,
    #[error("line contains a non-printable byte 0x{0:02x}")]
    NotPrintable(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Idle,
    Frame,
    Line,
}

/// Streaming decoder for the console: frames and lines, byte by byte.
/// Never buffers more than its frame limit and never panics.
#[derive(Debug)]
pub struct ConsoleDecoder {
    mode: Mode,
    buf: Vec<u8>,
    max_encoded: usize,
    overflow: bool,
    bad_byte: Option<u8>,
}

impl Default for ConsoleDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsoleDecoder {
    /// The device's decoder: frames up to [`MAX_REQUEST_LEN`].
    pub fn new() -> Self {
        Self::with_limit(MAX_REQUEST_LEN)
    }

    /// A decoder accepting frame bodies up to `max_body` bytes.
    pub fn with_limit(max_body: usize) -> Self {
        ConsoleDecoder {
            mode: Mode::Idle,
            buf: Vec::new(),
            max_encoded: max_encoded_len(max_body),
            overflow: false,
            bad_byte: None,
        }
    }

    /// Whether the decoder is in the middle of a command line (the device
    /// echoes those bytes for a terminal).
    pub fn in_line(&self) -> bool {
        self.mode == Mode::Line
    }

    /// A frame was begun and not ended: a receiver that heard nothing more of it for
    /// [`FRAME_GAP_MS`] calls this to take the next byte as new input. A host writes a
    /// frame in one go; a terminal's Ctrl-@ sends a lone NUL, after which typed text
    /// vanished into a frame that never ended.
    pub fn drop_stale_frame(&mut self) {
        if self.mode == Mode::Frame {
            self.reset(Mode::Idle);
        }
    }

    /// The command line typed so far (empty outside a line).
    pub fn line_so_far(&self) -> &[u8] {
        if self.mode == Mode::Line {
            &self.buf
        } else {
            &[]
        }
    }

    fn reset(&mut self, mode: Mode) {
        self.mode = mode;
        // Lines and frames may carry a PIN: do not leave it in the buffer.
        self.buf.zeroize();
        self.overflow = false;
        self.bad_byte = None;
    }

    /// Feed one byte; returns a complete input when `byte` ends one.
    pub fn push(&mut self, byte: u8) -> Option<Input> {
        match self.mode {
            Mode::Idle => match byte {
                0 => self.reset(Mode::Frame),
                b'\r' | b'\n' => {}
                _ => {
                    self.reset(Mode::Line);
                    return self.push_line(byte);
                }
            },
            Mode::Frame => {
                if byte != 0 {
                    if self.buf.len() < self.max_encoded {
                        self.buf.push(byte);
                    } else {
                        self.overflow = true;
                    }
                } else if !self.buf.is_empty() || self.overflow {
                    let result = if self.overflow {
                        Err(FrameError::TooLong)
                    } else {
                        let mut body = alloc::vec![0u8; self.buf.len()];
                        match cobs::decode(&self.buf, &mut body) {
                            Ok(n) => Frame::from_body(&body[..n]),
                            Err(_) => Err(FrameError::Cobs),
                        }
                    };
                    self.reset(Mode::Idle);
                    return Some(Input::Frame(result));
                }
            }
            Mode::Line => return self.push_line(byte),
        }
        None
    }

    fn push_line(&mut self, byte: u8) -> Option<Input> {
        match byte {
            // A NUL never comes from a terminal: a host is starting a frame.
            0 => self.reset(Mode::Frame),
            b'\r' | b'\n' => {
                let result = if self.overflow {
                    Err(LineError::TooLong)
                } else if let Some(b) = self.bad_byte {
                    Err(LineError::NotPrintable(b))
                } else {
                    // Only printable ASCII was kept, so this is valid UTF-8.
                    Ok(self.buf.iter().map(|&b| b as char).collect())
                };
                self.reset(Mode::Idle);
                return Some(Input::Line(result));
            }
            // Ctrl-C and Ctrl-U: the line is given up, as a shell does.
            0x03 | 0x15 => self.reset(Mode::Idle),
            // Backspace / DEL: terminals send these for corrections.
            0x08 | 0x7f => {
                self.buf.pop();
            }
            b'\t' => self.push_printable(b' '),
            0x20..=0x7e => self.push_printable(byte),
            other => {
                if self.bad_byte.is_none() {
                    self.bad_byte = Some(other);
                }
            }
        }
        None
    }

    fn push_printable(&mut self, byte: u8) {
        if self.buf.len() < MAX_LINE_LEN {
            self.buf.push(byte);
        } else {
            self.overflow = true;
        }
    }
}

/// Host side: decodes the appliance's replies (bodies up to
/// [`MAX_RESPONSE_LEN`]), ignoring anything that is not a frame.
#[derive(Debug)]
pub struct FrameDecoder {
    inner: ConsoleDecoder,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    pub fn new() -> Self {
        FrameDecoder {
            inner: ConsoleDecoder::with_limit(MAX_RESPONSE_LEN),
        }
    }

    /// Feed one byte; returns a frame (or why one failed) when `byte` ends it.
    pub fn push(&mut self, byte: u8) -> Option<Result<Frame, FrameError>> {
        match self.inner.push(byte) {
            Some(Input::Frame(r)) => Some(r),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn request_round_trip() {
        let reqs = vec![
            Request::Ping,
            Request::Unlock {
                pin: Pin::new("123456"),
            },
            Request::Log { from: 7 },
            Request::CaptureCommit {
                name: "web01".into(),
                generation: 3,
            },
        ];
        for (i, r) in reqs.into_iter().enumerate() {
            let wire = encode_frame(i as u32, &r);
            assert_eq!(wire[..2], [0, 0]);
            assert_eq!(*wire.last().unwrap(), 0);
            assert!(!wire[2..wire.len() - 1].contains(&0));
            let (id, back): (u32, Request) = decode_frame(&wire).unwrap();
            assert_eq!(id, i as u32);
            assert_eq!(back, r);
        }
    }

    #[test]
    fn corrupted_frame_is_rejected() {
        let mut wire = encode_frame(5, &Request::Info);
        let mid = wire.len() / 2;
        wire[mid] ^= 0x01;
        if wire[mid] == 0 {
            wire[mid] = 0x55;
        }
        assert!(decode_frame::<Request>(&wire).is_err());
    }

    #[test]
    fn wrong_version_is_named() {
        let mut body = vec![9u8, 1, 0, 0, 0, 0];
        let crc = CRC32.checksum(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(Frame::from_body(&body), Err(FrameError::Version(9)));
    }

    #[test]
    fn lines_and_frames_interleave() {
        let mut dec = ConsoleDecoder::new();
        let mut stream = b"help\r\n".to_vec();
        stream.extend(encode_frame(1, &Request::Ping));
        stream.extend(b"unlock 12\x0834\n");
        let mut got = Vec::new();
        for b in stream {
            if let Some(i) = dec.push(b) {
                got.push(i);
            }
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], Input::Line(Ok("help".into())));
        match &got[1] {
            Input::Frame(Ok(f)) => assert_eq!(f.decode::<Request>().unwrap(), Request::Ping),
            other => panic!("expected frame, got {other:?}"),
        }
        assert_eq!(got[2], Input::Line(Ok("unlock 134".into())));
    }

    /// A stray NUL (a terminal's Ctrl-@) left the decoder inside a frame: the host's
    /// next frame ended that one, and its own body was then read as a command line.
    #[test]
    fn a_stray_nul_does_not_swallow_the_next_frame() {
        let mut dec = ConsoleDecoder::new();
        let mut stream = b"\x00ping\r".to_vec();
        stream.extend(encode_frame(7, &Request::Ping));
        let got: Vec<Input> = stream.into_iter().filter_map(|b| dec.push(b)).collect();
        // The garbage is answered as a bad frame; the host's frame arrives whole.
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(matches!(got[0], Input::Frame(Err(_))), "{got:?}");
        match &got[1] {
            Input::Frame(Ok(f)) => {
                assert_eq!(f.request_id, 7);
                assert_eq!(f.decode::<Request>().unwrap(), Request::Ping);
            }
            other => panic!("expected the frame, got {other:?}"),
        }
    }

    #[test]
    fn a_stale_frame_is_dropped_and_typing_is_a_line_again() {
        let mut dec = ConsoleDecoder::new();
        assert_eq!(dec.push(0), None);
        dec.drop_stale_frame();
        let got: Vec<Input> = b"info\r".iter().filter_map(|&b| dec.push(b)).collect();
        assert_eq!(got, [Input::Line(Ok("info".into()))]);
        // A line in progress is not a frame: nothing to drop.
        for &b in b"pi" {
            dec.push(b);
        }
        dec.drop_stale_frame();
        let got: Vec<Input> = b"ng\r".iter().filter_map(|&b| dec.push(b)).collect();
        assert_eq!(got, [Input::Line(Ok("ping".into()))]);
    }

    #[test]
    fn ctrl_c_gives_up_the_line() {
        let mut dec = ConsoleDecoder::new();
        let got: Vec<Input> = b"unlock 99\x03info\r"
            .iter()
            .filter_map(|&b| dec.push(b))
            .collect();
        assert_eq!(got, [Input::Line(Ok("info".into()))]);
        let got: Vec<Input> = b"lock\x15ping\n"
            .iter()
            .filter_map(|&b| dec.push(b))
            .collect();
        assert_eq!(got, [Input::Line(Ok("ping".into()))]);
    }

    #[test]
    fn overlong_input_is_bounded() {
        let mut dec = ConsoleDecoder::new();
        let mut out = None;
        for _ in 0..MAX_LINE_LEN + 10 {
            assert!(dec.push(b'a').is_none());
        }
        out = out.or(dec.push(b'\n'));
        assert_eq!(out, Some(Input::Line(Err(LineError::TooLong))));
        dec.push(0);
        for _ in 0..max_encoded_len(MAX_REQUEST_LEN) + 10 {
            assert!(dec.push(1).is_none());
        }
        assert_eq!(dec.push(0), Some(Input::Frame(Err(FrameError::TooLong))));
    }

    #[test]
    fn pin_debug_hides_digits() {
        let r = Request::Unlock {
            pin: Pin::new("987654"),
        };
        assert!(!alloc::format!("{r:?}").contains("987654"));
    }

    #[test]
    fn seeded_fuzz_decoder_never_panics() {
        use rand_chacha::rand_core::{RngCore, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0xdec0de);
        let valid = [
            encode_frame(1, &Request::Info),
            encode_frame(
                2,
                &Request::Unlock {
                    pin: Pin::new("123456"),
                },
            ),
            encode_frame(
                3,
                &Request::CaptureCommit {
                    name: "web01".into(),
                    generation: 9,
                },
            ),
        ];
        let mut dec = ConsoleDecoder::new();
        let (mut frames, mut ok) = (0, 0);
        for round in 0..5_000 {
            let mut bytes = if round % 2 == 0 {
                let mut v = alloc::vec![0u8; (rng.next_u32() % 200) as usize];
                rng.fill_bytes(&mut v);
                v
            } else {
                valid[rng.next_u32() as usize % valid.len()].clone()
            };
            let flips = rng.next_u32() % 3;
            for _ in 0..flips {
                let i = rng.next_u32() as usize % bytes.len().max(1);
                if let Some(b) = bytes.get_mut(i) {
                    *b ^= 1 << (rng.next_u32() % 8);
                }
            }
            for b in bytes {
                if let Some(Input::Frame(r)) = dec.push(b) {
                    frames += 1;
                    if let Ok(f) = r {
                        if f.decode::<Request>().is_ok() {
                            ok += 1;
                        }
                    }
                }
            }
        }
        // Unmodified valid frames get through; mutated ones mostly do not.
        assert!(ok > 0 && ok < frames, "{ok} of {frames}");
    }
}
