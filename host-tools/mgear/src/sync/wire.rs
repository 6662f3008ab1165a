//! The sync wire protocol: framing, the messages `mgear sync` (the source)
//! and `mgear serve` (the target) exchange over one TCP connection, and their
//! decoders. Decoding never panics on what a peer sends: every failure is a
//! [`WireError`] saying what was wrong (fuzzed by `host-tools/mgear/fuzz`'s
//! `sync_wire` target).
//!
//! # Frame (every message, both directions; integers little-endian)
//!
//! ```text
//! offset  size  field
//! 0       4     magic "MGSY" (4d 47 53 59)
//! 4       1     protocol version (4)
//! 5       1     message type (below)
//! 6       2     reserved, 0
//! 8       4     payload length n (at most MAX_PAYLOAD)
//! 12      n     payload
//! 12+n    4     CRC-32 (IEEE) of bytes 0 .. 12+n
//! ```
//!
//! The CRC catches a broken transport; authenticity comes from the key
//! proofs, the AEAD of SEALED frames and the records' own AEAD, not from the CRC.
//!
//! # Messages (`str` = u16 length + UTF-8 bytes)
//!
//! Only HELLO, WELCOME and an ERROR before the handshake finished travel in
//! clear. Everything else is the plaintext of a SEALED frame (type 9), whose
//! payload is AES-256-GCM under a per-session, per-direction key (layout in
//! [`super::session`]): the inner message type, chunk indexes, keyed ids,
//! records, the id list and the final digest are never visible on the wire.
//!
//! ```text
//! type name     dir  form    payload
//! 1    HELLO    S→T  clear   name str | source disk size u64 | source nonce [32]
//! 2    WELCOME  T→S  clear   capture id [16] | chunk size u32 | volume size u64 | chunk count u64
//!                            | target nonce [32] | target proof [32]
//! 3    PROOF    S→T  sealed  source proof [32] | signed u8 (0 no, 1 yes)
//!                            | if signed: site public key [32] | Ed25519 signature [64]
//!                              over SIGN_CONTEXT ‖ transcript(HELLO payload, WELCOME payload)
//! 4    IDS      T→S  sealed  first chunk u64 | n u32 | n × keyed chunk id [32]   (repeated until
//!                            every chunk is covered, in order)
//! 5    CHUNK    S→T  sealed  chunk index u64 | keyed chunk id [32] | kind u8
//!                            | kind 0: nothing (an all-zero chunk: no record, as in the INDEX)
//!                            | kind 1: one sealed record, byte for byte as a segment holds it
//!                              (image-format FORMAT.md §5: 64-byte header + stored bytes)
//! 6    DONE     S→T  sealed  chunks sent u64 | expected disk digest [32]
//! 7    APPLIED  T→S  sealed  chunks applied u64 | bytes written u64 | volume disk digest [32]
//! 8    ERROR    both either  code u8 | message str
//! 9    SEALED   both         AEAD ciphertext of (inner type u8 ‖ inner payload) + 16-byte tag
//! 10   VOLUME   T→S  sealed  flags u8: bit 0 WRITTEN_ELSEWHERE, the target cannot vouch that
//!                            only syncs wrote the volume since the last session that compared
//!                            every chunk (another program wrote it, or the serve is the first
//!                            to watch it: a dirty bitmap cannot say what that changed, so the
//!                            source reads every chunk); other bits 0
//! ```
//!
//! A session: HELLO → WELCOME → PROOF → VOLUME → IDS… → CHUNK… → DONE → APPLIED.
//! A target that finds its volume written by another program during a session (its change
//! times moved between two of its own writes) hashes it again and ends the session with
//! ERROR `REHASHED`; the source starts a new one, which gets the ids the volume now has.
//! The records of one session are one record stream of the format
//! (`image_format::RecordSealer`/`RecordOpener`): sealed by the writer's code
//! with its decode-back self-check, opened by the reader's, numbered from 0
//! in the order sent, under a segment key whose salt is fresh per session
//! ([`super::session::record_place`]). The target answers a PROOF that
//! does not open, or whose origin it does not trust, with an ERROR and
//! closes the connection; it drops a peer that has not completed PROOF
//! within the handshake timeout and any peer silent for longer than the idle
//! timeout.

use std::io::{self, Read, Write};

/// Frame magic.
pub const MAGIC: [u8; 4] = *b"MGSY";
/// Protocol version spoken by this build (3: CHUNK carries the format's records; 4: VOLUME
/// says whether the volume was written by another program).
pub const VERSION: u8 = 4;
/// Header bytes before the payload.
pub const HEADER_LEN: usize = 12;
/// Largest payload accepted: a 16 MiB chunk (the format's maximum) stored
/// uncompressed in its record, plus the record header, tags and fields.
pub const MAX_PAYLOAD: u32 = 16 * 1024 * 1024 + 4096;
/// Keyed chunk ids per IDS frame.
pub const IDS_PER_FRAME: u32 = 65536;

/// Message types.
pub mod ty {
    pub const HELLO: u8 = 1;
    pub const WELCOME: u8 = 2;
    pub const PROOF: u8 = 3;
    pub const IDS: u8 = 4;
    pub const CHUNK: u8 = 5;
    pub const DONE: u8 = 6;
    pub const APPLIED: u8 = 7;
    pub const ERROR: u8 = 8;
    pub const SEALED: u8 = 9;
    pub const VOLUME: u8 = 10;
}

/// VOLUME flag bit: written by another program since the last session that compared every
/// chunk.
const WRITTEN_ELSEWHERE: u8 = 1;

/// ERROR codes: what the peer refused.
pub mod err {
    /// The target does not serve a capture of that name.
    pub const UNKNOWN_CAPTURE: u8 = 1;
    /// The key proof failed: the two sides hold different data keys.
    pub const WRONG_KEY: u8 = 2;
    /// Source disk and target volume sizes differ.
    pub const SIZE: u8 = 3;
    /// A chunk record did not authenticate or did not match its id.
    pub const BAD_RECORD: u8 = 4;
    /// A message out of order or malformed.
    pub const PROTOCOL: u8 = 5;
    /// The target could not write its volume.
    pub const IO: u8 = 6;
    /// The session is not signed by a capture site key the target pins.
    pub const UNTRUSTED: u8 = 7;
    /// The target is serving as many peers as it allows.
    pub const BUSY: u8 = 8;
    /// The source stopped the session after the handshake (its message
    /// says why, e.g. the disk is not the one the target holds).
    pub const GAVE_UP: u8 = 9;
    /// Another program wrote the volume during the session: the target hashed it again,
    /// and a new session gets the ids it holds now.
    pub const REHASHED: u8 = 10;
    /// A `serve --once` whose one sync completed: it takes no other (a cutover's probe is told
    /// so before it quiesces its source).
    pub const DONE_ONCE: u8 = 11;
}

/// What is wrong with what a peer sent (or with the connection to it).
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer closed the connection between two frames (it ended the
    /// session, or its process went away).
    #[error("{peer} closed the connection")]
    Closed {
        /// The other side.
        peer: String,
    },
    /// The connection failed before a frame began (reset, timed out).
    #[error("connection to {peer} broken: {source}")]
    Broken {
        /// The other side.
        peer: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The connection failed in the middle of a frame.
    #[error("connection to {peer} closed in the middle of a frame: {source}")]
    Cut {
        /// The other side.
        peer: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The peer does not speak this protocol at all.
    #[error(
        "{peer} does not speak the MotionGear sync protocol (it sent {got:?} where \"MGSY\" was \
         expected): check --to names a port where `mgear serve` listens"
    )]
    NotSync {
        /// The other side.
        peer: String,
        /// Its first four bytes, as text.
        got: String,
    },
    /// The peer speaks another version of the protocol.
    #[error(
        "{peer} speaks sync protocol version {got}, this mgear speaks version {VERSION}: use the \
         same mgear release on both sides"
    )]
    Version {
        /// The other side.
        peer: String,
        /// Its version.
        got: u8,
    },
    /// A frame longer than any valid message.
    #[error(
        "{peer} sent a {kind} frame of {len} bytes (at most {MAX_PAYLOAD} allowed): not a valid \
         sync peer"
    )]
    TooLarge {
        /// The other side.
        peer: String,
        /// Message type name.
        kind: &'static str,
        /// Claimed payload length.
        len: u32,
    },
    /// A frame whose CRC does not match.
    #[error("a {kind} frame from {peer} failed its CRC check: the connection corrupts data")]
    Crc {
        /// The other side.
        peer: String,
        /// Message type name.
        kind: &'static str,
    },
    /// A message of a type this build does not know (or not valid where it arrived).
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// A message shorter than its fields.
    #[error("{what} message is truncated")]
    Truncated {
        /// Message name.
        what: &'static str,
    },
    /// A message longer than its fields.
    #[error("{what} message has {extra} unexpected trailing bytes")]
    Trailing {
        /// Message name.
        what: &'static str,
        /// Bytes left over.
        extra: usize,
    },
    /// A string field that is not UTF-8.
    #[error("{what} message holds a string that is not UTF-8")]
    NotUtf8 {
        /// Message name.
        what: &'static str,
    },
    /// A field with a value no valid message has.
    #[error("{what} message: {why}")]
    Invalid {
        /// Message name.
        what: &'static str,
        /// What is wrong, in words.
        why: String,
    },
}

impl WireError {
    /// True when the connection broke or corrupted a frame (worth reconnecting), false when
    /// the peer sent something wrong (reconnecting would not help). A frame that fails its CRC
    /// was damaged on its way (the peer computed it over what it sent): a corrupt byte from the
    /// target ended the sync, exit 2, where the same from the source was retried.
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            WireError::Closed { .. }
                | WireError::Broken { .. }
                | WireError::Cut { .. }
                | WireError::Crc { .. }
        )
    }
}

/// Result of wire decoding.
impl From<WireError> for crate::Error {
    fn from(e: WireError) -> crate::Error {
        crate::Error::other(e)
    }
}

pub type Result<T> = std::result::Result<T, WireError>;

/// Human name of a message type, for errors.
pub fn type_name(t: u8) -> &'static str {
    match t {
        ty::HELLO => "HELLO",
        ty::WELCOME => "WELCOME",
        ty::PROOF => "PROOF",
        ty::IDS => "IDS",
        ty::CHUNK => "CHUNK",
        ty::DONE => "DONE",
        ty::APPLIED => "APPLIED",
        ty::ERROR => "ERROR",
        ty::SEALED => "SEALED",
        ty::VOLUME => "VOLUME",
        _ => "unknown",
    }
}

/// Encode one frame.
pub fn frame(t: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + 4);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(t);
    out.extend_from_slice(&[0, 0]);
    // Payloads are built by this module's callers, all far below 4 GiB.
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Write one frame; returns the bytes put on the wire.
pub fn send(w: &mut impl Write, t: u8, payload: &[u8]) -> io::Result<usize> {
    let f = frame(t, payload);
    w.write_all(&f)?;
    Ok(f.len())
}

/// Read one frame: `(type, payload)`. `peer` names the other side in errors.
pub fn recv(r: &mut impl Read, peer: &str) -> Result<(u8, Vec<u8>)> {
    let mut h = [0u8; HEADER_LEN];
    // Read by hand rather than read_exact: an end of stream before the first
    // byte is the peer closing the session, which logs should say as such
    // (read_exact calls it "failed to fill whole buffer").
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Err(WireError::Closed { peer: peer.into() }),
            Ok(0) => {
                return Err(WireError::Cut {
                    peer: peer.into(),
                    source: io::ErrorKind::UnexpectedEof.into(),
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(WireError::Broken {
                    peer: peer.into(),
                    source,
                })
            }
        }
    }
    if h[..4] != MAGIC {
        return Err(WireError::NotSync {
            peer: peer.into(),
            got: String::from_utf8_lossy(&h[..4]).into_owned(),
        });
    }
    if h[4] != VERSION {
        return Err(WireError::Version {
            peer: peer.into(),
            got: h[4],
        });
    }
    let t = h[5];
    let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if len > MAX_PAYLOAD {
        return Err(WireError::TooLarge {
            peer: peer.into(),
            kind: type_name(t),
            len,
        });
    }
    let mut body = vec![0u8; len as usize + 4];
    r.read_exact(&mut body).map_err(|source| WireError::Cut {
        peer: peer.into(),
        source,
    })?;
    let (payload, crc) = body.split_at(len as usize);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h);
    hasher.update(payload);
    if hasher.finalize().to_le_bytes() != crc {
        return Err(WireError::Crc {
            peer: peer.into(),
            kind: type_name(t),
        });
    }
    body.truncate(len as usize);
    Ok((t, body))
}

/// Appends a `str` field.
fn put_str(out: &mut Vec<u8>, s: &str) {
    // Cut at a character boundary so the field stays UTF-8.
    let mut n = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..n]);
}

/// Reads payload fields; every getter fails with a [`WireError`] instead of panicking.
struct Fields<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Fields<'a> {
    fn new(b: &'a [u8], what: &'static str) -> Self {
        Fields { b, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(WireError::Truncated { what: self.what });
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn str(&mut self) -> Result<String> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| WireError::NotUtf8 { what: self.what })
    }

    fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.b)
    }

    /// Fails if bytes are left over (a peer speaking a different layout).
    fn end(&self) -> Result<()> {
        if !self.b.is_empty() {
            return Err(WireError::Trailing {
                what: self.what,
                extra: self.b.len(),
            });
        }
        Ok(())
    }

    fn invalid(&self, why: String) -> WireError {
        WireError::Invalid {
            what: self.what,
            why,
        }
    }
}

/// HELLO: the source names the capture and its disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub name: String,
    pub size: u64,
    pub nonce: [u8; 32],
}

/// WELCOME: the target's capture, volume and key proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub capture_id: [u8; 16],
    pub chunk_size: u32,
    pub volume_size: u64,
    pub chunk_count: u64,
    pub nonce: [u8; 32],
    pub proof: [u8; 32],
}

/// PROOF: the source's key proof and, optionally, the site's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub proof: [u8; 32],
    /// Site public key and Ed25519 signature over the transcript.
    pub signed: Option<([u8; 32], [u8; 64])>,
}

/// VOLUME: what the target knows of its volume beyond the ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeState {
    /// The target cannot vouch that only syncs wrote the volume since the last session that
    /// compared every chunk (another program wrote it, or no serve watched it before): a
    /// dirty bitmap of the source's writes cannot say what that changed.
    pub written_elsewhere: bool,
}

/// IDS: keyed ids of chunks `first ..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub first: u64,
    pub ids: Vec<[u8; 32]>,
}

/// What a CHUNK carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkBody {
    /// An all-zero chunk: no record, like an all-zero INDEX entry.
    Zero,
    /// One sealed record as a segment holds it (header + stored bytes).
    Record(Vec<u8>),
}

/// CHUNK: one chunk that differs on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub index: u64,
    pub chunk_id: [u8; 32],
    pub body: ChunkBody,
}

/// DONE: the source sent everything; what the volume should now hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub sent: u64,
    pub digest: [u8; 32],
}

/// APPLIED: what the target wrote and what its volume hashes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub chunks: u64,
    pub bytes: u64,
    pub digest: [u8; 32],
}

/// ERROR: a refusal, with one of the [`err`] codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u8,
    pub message: String,
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(2 + self.name.len() + 40);
        put_str(&mut p, &self.name);
        p.extend_from_slice(&self.size.to_le_bytes());
        p.extend_from_slice(&self.nonce);
        p
    }

    pub fn decode(p: &[u8]) -> Result<Self> {
        let mut f = Fields::new(p, "HELLO");
        let m = Hello {
            name: f.str()?,
            size: f.u64()?,
            nonce: f.array()?,
        };
        f.end()?;
        Ok(m)
    }
}

impl Welcome {
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(132);
        p.extend_from_slice(&self.capture_id);
        p.extend_from_slice(&self.chunk_size.to_le_bytes());
        p.extend_from_slice(&self.volume_size.to_le_bytes());
        p.extend_from_slice(&self.chunk_count.to_le_bytes());
        p.extend_from_slice(&self.nonce);
        p.extend_from_slice(&self.proof);
        p
    }

    /// Decodes and checks that the volume it describes can exist (a valid
    /// chunk size, and the chunk count that size and volume size give).
    pub fn decode(p: &[u8]) -> Result<Self> {
        let mut f = Fields::new(p, "WELCOME");
        let m = Welcome {
            capture_id: f.array()?,
            chunk_size: f.u32()?,
            volume_size: f.u64()?,
            chunk_count: f.u64()?,
            nonce: f.array()?,
            proof: f.array()?,
        };
        f.end()?;
        if !image_format::layout::valid_chunk_size(m.chunk_size)
            || m.chunk_count != image_format::layout::chunk_count(m.volume_size, m.chunk_size)
        {
            return Err(f.invalid(format!(
                "it describes an impossible volume ({} bytes, chunk size {}, {} chunks)",
                m.volume_size, m.chunk_size, m.chunk_count
            )));
        }
        Ok(m)
    }
}

impl Proof {
    pub fn encode(&self) -> Vec<u8> {
        let mut p = self.proof.to_vec();
        match &self.signed {
            Some((public, sig)) => {
                p.push(1);
                p.extend_from_slice(public);
                p.extend_from_slice(sig);
            }
            None => p.push(0),
        }
        p
    }

    pub fn decode(p: &[u8]) -> Result<Self> {
        let mut f = Fields::new(p, "PROOF");
        let proof = f.array()?;
        let signed = match f.u8()? {
            0 => None,
            1 => Some((f.array()?, f.array()?)),
            other => {
                return Err(f.invalid(format!(
                    "signature kind {other}, which this mgear does not know"
                )))
            }
        };
        f.end()?;
        Ok(Proof { proof, signed })
    }
}

impl Ids {
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(12 + self.ids.len() * 32);
        p.extend_from_slice(&self.first.to_le_bytes());
        p.extend_from_slice(&(self.ids.len() as u32).to_le_bytes());
        for id in &self.ids {
            p.extend_from_slice(id);
        }
        p
    }

    pub fn decode(p: &[u8]) -> Result<Self> {
        let mut f = Fields::new(p, "IDS");
        let first = f.u64()?;
        let n = f.u32()?;
        if n == 0 || n > IDS_PER_FRAME {
            return Err(f.invalid(format!(
                "{n} ids in one frame (1 to {IDS_PER_FRAME} allowed)"
            )));
        }
        if f.b.len() != n as usize * 32 {
            return Err(f.invalid(format!(
                "{n} ids announced, {} bytes of ids follow",
                f.b.len()
            )));
        }
        let ids = (0..n).map(|_| f.array()).collect::<Result<Vec<_>>>()?;
        f.end()?;
        Ok(Ids { first, ids })
    }
}

impl Chunk {
    pub fn encode(&self) -> Vec<u8> {
        let record = match &self.body {
            ChunkBody::Zero => &[][..],
            ChunkBody::Record(r) => r,
        };
        let mut p = Vec::with_capacity(41 + record.len());
        p.extend_from_slice(&self.index.to_le_bytes());
        p.extend_from_slice(&self.chunk_id);
        match &self.body {
            ChunkBody::Zero => p.push(0),
            ChunkBody::Record(r) => {
                p.push(1);
                p.extend_from_slice(r);
            }
        }
        p
    }

    /// Decodes the fields; the record itself is checked by the record
    /// stream that opens it (`image_format::RecordOpener`).
    pub fn decode(p: &[u8]) -> Result<Self> {
        let mut f = Fields::new(p, "CHUNK");
        let index = f.u64()?;
        let chunk_id = f.array()?;
        let body = match f.u8()? {
            0 => ChunkBody::Zero,
            1 => {
                let r = f.rest();
                if r.is_empty() {
                    return Err(WireError::Truncated { what: "CHUNK" });
                }
                ChunkBody::Record(r.to_vec())
            }
            other => {
                return Err(f.invalid(format!(
                    "chunk kind {other}, which this mgear does not know"
                )))
            }
        };
        f.end()?;
        Ok(Chunk {
            index,
            chunk_id,
            body,
        })
    }
}

impl VolumeState {
    pub fn encode(&self) -> Vec<u8> {
        vec![if self.written_elsewhere {
            WRITTEN_ELSEWHERE
        } else {
            0
        }]
    }

    pub fn decode(p: &[u8]) -> Result<Self> {
        let mut f = Fields::new(p, "VOLUME");
        let flags = f.u8()?;
        f.end()?;
        if flags & !WRITTEN_ELSEWHERE != 0 {
            return Err(f.invalid(format!(
                "flags {flags:#04x}, which this mgear does not know"
            )));
        }
        Ok(VolumeState {
            written_elsewhere: flags & WRITTEN_ELSEWHERE != 0,
        })
    }
}

impl Done {
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(40);
        p.extend_from_slice(&self.sent.to_le_bytes());
        p.extend_from_slice(&self.digest);
        p
    }

    pub fn decode(p: &[u8]) -> Result<Self> {
        let mut f = Fields::new(p, "DONE");
        let m = Done {
            sent: f.u64()?,
            digest: f.array()?,
        };
        f.end()?;
        Ok(m)
    }
}

impl Applied {
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(48);
        p.extend_from_slice(&self.chunks.to_le_bytes());
        p.extend_from_slice(&self.bytes.to_le_bytes());
        p.extend_from_slice(&self.digest);
        p
    }

    pub fn decode(p: &[u8]) -> Result<Self> {
        let mut f = Fields::new(p, "APPLIED");
        let m = Applied {
            chunks: f.u64()?,
            bytes: f.u64()?,
            digest: f.array()?,
        };
        f.end()?;
        Ok(m)
    }
}

impl Refusal {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut p = vec![self.code];
        put_str(&mut p, &self.message);
        p
    }

    pub fn decode(p: &[u8]) -> Result<Self> {
        let mut f = Fields::new(p, "ERROR");
        let m = Refusal {
            code: f.u8()?,
            message: f.str()?,
        };
        f.end()?;
        Ok(m)
    }
}

/// Any message, decoded by its type (what a fuzzer or a debugging tool
/// feeds arbitrary frames to; the two sides decode the type they expect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    Welcome(Welcome),
    Proof(Proof),
    Volume(VolumeState),
    Ids(Ids),
    Chunk(Chunk),
    Done(Done),
    Applied(Applied),
    Error(Refusal),
    /// A SEALED payload: opened by the session, not here.
    Sealed(Vec<u8>),
}

impl Message {
    /// Decode the payload of a message of type `t`.
    pub fn decode(t: u8, p: &[u8]) -> Result<Self> {
        Ok(match t {
            ty::HELLO => Message::Hello(Hello::decode(p)?),
            ty::WELCOME => Message::Welcome(Welcome::decode(p)?),
            ty::PROOF => Message::Proof(Proof::decode(p)?),
            ty::VOLUME => Message::Volume(VolumeState::decode(p)?),
            ty::IDS => Message::Ids(Ids::decode(p)?),
            ty::CHUNK => Message::Chunk(Chunk::decode(p)?),
            ty::DONE => Message::Done(Done::decode(p)?),
            ty::APPLIED => Message::Applied(Applied::decode(p)?),
            ty::ERROR => Message::Error(Refusal::decode(p)?),
            ty::SEALED => Message::Sealed(p.to_vec()),
            other => return Err(WireError::UnknownType(other)),
        })
    }
}

/// Decode a byte stream as a peer would meet it: frames one after the
/// other, each payload as its message, and a sealed payload's plaintext
/// layout (inner type ‖ payload) as the message inside. Stops at the first
/// error, which it returns with the messages decoded before it. The entry
/// point of the `sync_wire` fuzz target.
pub fn decode_stream(mut bytes: &[u8]) -> (Vec<Message>, Option<WireError>) {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let decoded = recv(&mut bytes, "fuzz").and_then(|(t, p)| match Message::decode(t, &p)? {
            Message::Sealed(inner) => match inner.split_first() {
                Some((&t, p)) => Message::decode(t, p),
                None => Err(WireError::Truncated { what: "SEALED" }),
            },
            m => Ok(m),
        });
        match decoded {
            Ok(m) => out.push(m),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_layout() {
        let f = frame(ty::DONE, b"hello");
        assert_eq!(&f[..4], b"MGSY");
        assert_eq!(f[4], VERSION);
        assert_eq!(f[5], ty::DONE);
        assert_eq!(&f[8..12], &5u32.to_le_bytes());
        assert_eq!(f.len(), HEADER_LEN + 5 + 4);
        let (t, p) = recv(&mut &f[..], "peer").unwrap();
        assert_eq!((t, p.as_slice()), (ty::DONE, &b"hello"[..]));
    }

    #[test]
    fn corruption_and_strangers_are_refused() {
        let mut f = frame(ty::IDS, &[1, 2, 3]);
        f[13] ^= 1;
        let e = recv(&mut &f[..], "peer").unwrap_err();
        assert!(matches!(e, WireError::Crc { kind: "IDS", .. }), "{e}");
        // Damaged on its way: reconnecting helps (it ended the sync, exit 2).
        assert!(e.is_transport(), "{e}");
        assert!(e.to_string().contains("CRC"), "{e}");

        let http = b"HTTP/1.1 400 Bad Request\r\n\r\n";
        let e = recv(&mut &http[..], "127.0.0.1:1").unwrap_err().to_string();
        assert!(
            e.contains("does not speak the MotionGear sync protocol"),
            "{e}"
        );

        let mut v2 = frame(ty::HELLO, &[]);
        v2[4] = 2;
        let e = recv(&mut &v2[..], "peer").unwrap_err();
        assert!(matches!(e, WireError::Version { got: 2, .. }));
        assert!(e.to_string().contains("version 2"), "{e}");

        let mut huge = frame(ty::CHUNK, &[]);
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            recv(&mut &huge[..], "peer").unwrap_err(),
            WireError::TooLarge { .. }
        ));

        let cut = frame(ty::CHUNK, &[9; 100]);
        let e = recv(&mut &cut[..50], "peer").unwrap_err();
        assert!(matches!(e, WireError::Cut { .. }) && e.is_transport());
        let e = recv(&mut &cut[..5], "peer").unwrap_err();
        assert!(matches!(e, WireError::Cut { .. }) && e.is_transport());
        // Nothing at all: the peer closed the session, and the message says so.
        let e = recv(&mut &cut[..0], "127.0.0.1:7410").unwrap_err();
        assert!(matches!(e, WireError::Closed { .. }) && e.is_transport());
        assert_eq!(e.to_string(), "127.0.0.1:7410 closed the connection");
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        struct Failing(Option<io::Error>);
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(self.0.take().unwrap_or_else(|| io::ErrorKind::Other.into()))
            }
        }
        let e = recv(&mut Failing(Some(reset)), "peer").unwrap_err();
        assert!(matches!(e, WireError::Broken { .. }) && e.is_transport());
        assert!(!WireError::UnknownType(77).is_transport());
    }

    fn all_messages() -> Vec<(u8, Message)> {
        vec![
            (
                ty::HELLO,
                Message::Hello(Hello {
                    name: "web01 ü".into(),
                    size: 7 << 30,
                    nonce: [3; 32],
                }),
            ),
            (
                ty::WELCOME,
                Message::Welcome(Welcome {
                    capture_id: [1; 16],
                    chunk_size: 1 << 20,
                    volume_size: 5 << 20,
                    chunk_count: 5,
                    nonce: [4; 32],
                    proof: [5; 32],
                }),
            ),
            (
                ty::PROOF,
                Message::Proof(Proof {
                    proof: [6; 32],
                    signed: Some(([7; 32], [8; 64])),
                }),
            ),
            (
                ty::PROOF,
                Message::Proof(Proof {
                    proof: [6; 32],
                    signed: None,
                }),
            ),
            (
                ty::IDS,
                Message::Ids(Ids {
                    first: 65536,
                    ids: vec![[9; 32], [10; 32]],
                }),
            ),
            (
                ty::CHUNK,
                Message::Chunk(Chunk {
                    index: 12,
                    chunk_id: [11; 32],
                    body: ChunkBody::Record(vec![1, 2, 3]),
                }),
            ),
            (
                ty::CHUNK,
                Message::Chunk(Chunk {
                    index: 13,
                    chunk_id: [12; 32],
                    body: ChunkBody::Zero,
                }),
            ),
            (
                ty::DONE,
                Message::Done(Done {
                    sent: 2,
                    digest: [13; 32],
                }),
            ),
            (
                ty::APPLIED,
                Message::Applied(Applied {
                    chunks: 2,
                    bytes: 3 << 20,
                    digest: [14; 32],
                }),
            ),
            (
                ty::ERROR,
                Message::Error(Refusal::new(err::WRONG_KEY, "nope")),
            ),
            (
                ty::VOLUME,
                Message::Volume(VolumeState {
                    written_elsewhere: true,
                }),
            ),
            (
                ty::VOLUME,
                Message::Volume(VolumeState {
                    written_elsewhere: false,
                }),
            ),
        ]
    }

    #[test]
    fn a_volume_message_with_flags_this_build_does_not_know_is_refused() {
        assert!(VolumeState::decode(&[1]).unwrap().written_elsewhere);
        for flags in [2u8, 3, 0x80] {
            let e = VolumeState::decode(&[flags]).unwrap_err().to_string();
            assert!(e.contains("does not know"), "{e}");
        }
    }

    fn encode(m: &Message) -> Vec<u8> {
        match m {
            Message::Hello(m) => m.encode(),
            Message::Welcome(m) => m.encode(),
            Message::Proof(m) => m.encode(),
            Message::Volume(m) => m.encode(),
            Message::Ids(m) => m.encode(),
            Message::Chunk(m) => m.encode(),
            Message::Done(m) => m.encode(),
            Message::Applied(m) => m.encode(),
            Message::Error(m) => m.encode(),
            Message::Sealed(p) => p.clone(),
        }
    }

    #[test]
    fn every_message_round_trips_and_refuses_cut_or_padded_payloads() {
        for (t, m) in all_messages() {
            let p = encode(&m);
            assert_eq!(Message::decode(t, &p).unwrap(), m, "{}", type_name(t));
            for cut in 0..p.len() {
                // A CHUNK cut inside its record is still a (shorter) record:
                // the record stream refuses it, not the wire decoder.
                if t == ty::CHUNK && cut > 41 {
                    continue;
                }
                assert!(
                    Message::decode(t, &p[..cut]).is_err(),
                    "{} cut to {cut}",
                    type_name(t)
                );
            }
            let mut padded = p.clone();
            padded.push(0);
            if t != ty::CHUNK || m == all_messages()[6].1 {
                assert!(
                    Message::decode(t, &padded).is_err(),
                    "{} with a trailing byte",
                    type_name(t)
                );
            }
        }
        assert!(matches!(
            Message::decode(42, &[]),
            Err(WireError::UnknownType(42))
        ));
        // Values no valid message has.
        let mut w = all_messages()[1].1.clone();
        if let Message::Welcome(w) = &mut w {
            w.chunk_count = 6;
        }
        assert!(matches!(
            Message::decode(ty::WELCOME, &encode(&w)),
            Err(WireError::Invalid { .. })
        ));
        let mut ids = Vec::new();
        ids.extend_from_slice(&0u64.to_le_bytes());
        ids.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Ids::decode(&ids).is_err(), "4 G ids announced, none sent");
        assert!(Proof::decode(&[[0; 32].as_slice(), &[2]].concat()).is_err());
        assert!(Chunk::decode(&[[0; 40].as_slice(), &[7]].concat()).is_err());
        assert!(matches!(
            Refusal::decode(&[1, 2, 0, 0xff, 0xfe]),
            Err(WireError::NotUtf8 { .. })
        ));
        // A long message is cut at a character boundary, never into invalid UTF-8.
        let long = "é".repeat(40_000);
        let r = Refusal::decode(&Refusal::new(1, long).encode()).unwrap();
        assert_eq!(r.message.len(), 65534);
    }

    /// Random and corrupted streams: errors, never a panic or a huge allocation.
    #[test]
    fn random_and_corrupt_frames_decode_to_errors() {
        let mut good = Vec::new();
        for (t, m) in all_messages() {
            good.extend_from_slice(&frame(t, &encode(&m)));
        }
        let mut inner = vec![ty::DONE];
        inner.extend_from_slice(&encode(&all_messages()[7].1));
        good.extend_from_slice(&frame(ty::SEALED, &inner));
        let (ms, e) = decode_stream(&good);
        assert!(e.is_none(), "{e:?}");
        assert_eq!(ms.len(), all_messages().len() + 1);
        assert_eq!(ms.last(), Some(&all_messages()[7].1));

        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..3000 {
            let mut b = good.clone();
            match round % 3 {
                // Flip bytes anywhere (CRC errors mostly, some headers).
                0 => {
                    for _ in 0..1 + next() % 4 {
                        let i = (next() % b.len() as u64) as usize;
                        b[i] ^= 1 << (next() % 8);
                    }
                }
                // Cut the stream.
                1 => b.truncate((next() % b.len() as u64) as usize),
                // Random bytes behind a valid header, with a recomputed CRC:
                // only the message decoders stand between them and the caller.
                _ => {
                    let n = (next() % 200) as usize;
                    let payload: Vec<u8> = (0..n).map(|_| next() as u8).collect();
                    b = frame(1 + (next() % 9) as u8, &payload);
                }
            }
            let (ms, _) = decode_stream(&b);
            assert!(ms.len() <= all_messages().len() + 1);
        }
    }
}
