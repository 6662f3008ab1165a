//! The sync wire protocol: framing and the messages `mgear sync` (the source)
//! and `mgear serve` (the target) exchange over one TCP connection.
//!
//! # Frame (every message, both directions; integers little-endian)
//!
//! ```text
//! offset  size  field
//! 0       4     magic "MGSY" (4d 47 53 59)
//! 4       1     protocol version (2)
//! 5       1     message type (below)
//! 6       2     reserved, 0
//! 8       4     payload length n (at most MAX_PAYLOAD)
//! 12      n     payload
//! 12+n    4     CRC-32 (IEEE) of bytes 0 .. 12+n
//! ```
//!
//! The CRC catches a broken transport; authenticity comes from the key
//! proofs and the AEAD of SEALED frames, not from the CRC.
//!
//! # Messages (`str` = u16 length + UTF-8 bytes)
//!
//! Only HELLO, WELCOME and an ERROR before the handshake finished travel in
//! clear. Everything else is the plaintext of a SEALED frame (type 9), whose
//! payload is AES-256-GCM under a per-session, per-direction key (layout in
//! [`super::session`]): the inner message type, chunk indexes, lengths,
//! flags, keyed ids, data, the id list and the final digest are never visible
//! on the wire.
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
//! 5    CHUNK    S→T  sealed  chunk index u64 | plain len u32 | flags u8 | keyed chunk id [32]
//!                            | data (raw, zstd, or empty for an all-zero chunk)
//! 6    DONE     S→T  sealed  chunks sent u64 | expected disk digest [32]
//! 7    APPLIED  T→S  sealed  chunks applied u64 | bytes written u64 | volume disk digest [32]
//! 8    ERROR    both either  code u8 | message str
//! 9    SEALED   both         AEAD ciphertext of (inner type u8 ‖ inner payload) + 16-byte tag
//! ```
//!
//! A session: HELLO → WELCOME → PROOF → IDS… → CHUNK… → DONE → APPLIED.
//! CHUNK flags: bit 0 = data is zstd-compressed, bit 1 = all-zero chunk
//! (data empty). The target answers a PROOF that does not open, or whose
//! origin it does not trust, with an ERROR and closes the connection; it
//! drops a peer that has not completed PROOF within the handshake timeout
//! and any peer silent for longer than the idle timeout.

use std::io::{self, Read, Write};

use anyhow::{bail, Context};

/// Frame magic.
pub const MAGIC: [u8; 4] = *b"MGSY";
/// Protocol version spoken by this build.
pub const VERSION: u8 = 2;
/// Header bytes before the payload.
pub const HEADER_LEN: usize = 12;
/// Largest payload accepted: a 16 MiB chunk (the format's maximum) plus record fields.
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
}

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
}

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
pub fn recv(r: &mut impl Read, peer: &str) -> anyhow::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; HEADER_LEN];
    r.read_exact(&mut h)
        .with_context(|| format!("connection to {peer} closed or broken"))?;
    if h[..4] != MAGIC {
        bail!(
            "{peer} does not speak the MotionGear sync protocol (it sent {:?} where \"MGSY\" was expected): \
             check --to names a port where `mgear serve` listens",
            String::from_utf8_lossy(&h[..4])
        );
    }
    if h[4] != VERSION {
        bail!(
            "{peer} speaks sync protocol version {}, this mgear speaks version {VERSION}: use the same mgear release on both sides",
            h[4]
        );
    }
    let t = h[5];
    let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if len > MAX_PAYLOAD {
        bail!("{peer} sent a {} frame of {len} bytes (at most {MAX_PAYLOAD} allowed): not a valid sync peer", type_name(t));
    }
    let mut body = vec![0u8; len as usize + 4];
    r.read_exact(&mut body)
        .with_context(|| format!("connection to {peer} closed in the middle of a frame"))?;
    let (payload, crc) = body.split_at(len as usize);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h);
    hasher.update(payload);
    if hasher.finalize().to_le_bytes() != crc {
        bail!(
            "a {} frame from {peer} failed its CRC check: the connection corrupts data",
            type_name(t)
        );
    }
    body.truncate(len as usize);
    Ok((t, body))
}

/// Appends a `str` field.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

/// Reads payload fields; every getter fails with a message instead of panicking.
pub struct Fields<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Fields<'a> {
    /// Read the payload of a `what` message.
    pub fn new(b: &'a [u8], what: &'static str) -> Self {
        Fields { b, what }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        if self.b.len() < n {
            bail!("{} message is truncated", self.what);
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }

    /// A fixed-size array.
    pub fn array<const N: usize>(&mut self) -> anyhow::Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub fn u8(&mut self) -> anyhow::Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> anyhow::Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> anyhow::Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> anyhow::Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A `str` field.
    pub fn str(&mut self) -> anyhow::Result<String> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec())
            .with_context(|| format!("{} message holds a string that is not UTF-8", self.what))
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.b)
    }

    /// Fails if bytes are left over (a peer speaking a different layout).
    pub fn end(&self) -> anyhow::Result<()> {
        if !self.b.is_empty() {
            bail!(
                "{} message has {} unexpected trailing bytes",
                self.what,
                self.b.len()
            );
        }
        Ok(())
    }
}

/// An ERROR payload.
pub fn error_payload(code: u8, message: &str) -> Vec<u8> {
    let mut p = vec![code];
    put_str(&mut p, message);
    p
}

/// Decodes an ERROR payload into `(code, message)`.
pub fn parse_error(p: &[u8]) -> anyhow::Result<(u8, String)> {
    let mut f = Fields::new(p, "ERROR");
    Ok((f.u8()?, f.str()?))
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
        let e = recv(&mut &f[..], "peer").unwrap_err().to_string();
        assert!(e.contains("CRC"), "{e}");

        let http = b"HTTP/1.1 400 Bad Request\r\n\r\n";
        let e = recv(&mut &http[..], "127.0.0.1:1").unwrap_err().to_string();
        assert!(
            e.contains("does not speak the MotionGear sync protocol"),
            "{e}"
        );

        let mut v2 = frame(ty::HELLO, &[]);
        v2[4] = 1;
        let e = recv(&mut &v2[..], "peer").unwrap_err().to_string();
        assert!(e.contains("version 1"), "{e}");

        let mut huge = frame(ty::CHUNK, &[]);
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(recv(&mut &huge[..], "peer")
            .unwrap_err()
            .to_string()
            .contains("at most"));

        let cut = frame(ty::CHUNK, &[9; 100]);
        assert!(recv(&mut &cut[..50], "peer").is_err());
    }

    #[test]
    fn fields_never_overrun() {
        let mut p = Vec::new();
        put_str(&mut p, "web01");
        p.extend_from_slice(&7u64.to_le_bytes());
        let mut f = Fields::new(&p, "HELLO");
        assert_eq!(f.str().unwrap(), "web01");
        assert_eq!(f.u64().unwrap(), 7);
        f.end().unwrap();
        assert!(f.u8().unwrap_err().to_string().contains("truncated"));
        let mut g = Fields::new(&[200, 0, b'x'], "HELLO");
        assert!(g.str().is_err());
        let (c, m) = parse_error(&error_payload(err::WRONG_KEY, "nope")).unwrap();
        assert_eq!((c, m.as_str()), (err::WRONG_KEY, "nope"));
    }
}
