//! Wire constants and byte layouts of the NBD protocol ("fixed newstyle"
//! handshake, simple and structured replies), shared by the client and the
//! server.
//!
//! Everything on the wire is big-endian. The layouts below are the subset of
//! the upstream specification (`doc/proto.md` in the NBD project) that this
//! crate speaks; each message's writer or reader refers back to them.
//!
//! ## Handshake, server greeting (18 bytes)
//! ```text
//! 0   u64  NBD_MAGIC  0x4e42444d41474943 ("NBDMAGIC")
//! 8   u64  IHAVEOPT   0x49484156454f5054 ("IHAVEOPT"; oldstyle servers send 0x00420281861253)
//! 16  u16  handshake flags: bit0 FIXED_NEWSTYLE, bit1 NO_ZEROES
//! ```
//! The client answers with a u32 of client flags (same bit meanings).
//!
//! ## Option request (client -> server, 16 bytes + data)
//! ```text
//! 0   u64  IHAVEOPT
//! 8   u32  option (OPT_*)
//! 12  u32  length of data
//! 16  ...  data
//! ```
//!
//! ## Option reply (server -> client, 20 bytes + data)
//! ```text
//! 0   u64  OPT_REPLY_MAGIC 0x0003e889045565a9
//! 8   u32  option being answered
//! 12  u32  reply type (REP_*; bit 31 set = error, data is a UTF-8 message)
//! 16  u32  length of data
//! 20  ...  data
//! ```
//! Option data layouts:
//! - `OPT_EXPORT_NAME`: the export name (no length prefix). The server answers
//!   without an option reply: u64 size, u16 transmission flags, then 124 zero
//!   bytes unless NO_ZEROES was agreed.
//! - `OPT_INFO` / `OPT_GO`: u32 name length, name, u16 count, count × u16 info type.
//! - `OPT_SET_META_CONTEXT` / `OPT_LIST_META_CONTEXT`: u32 name length, name,
//!   u32 query count, then per query u32 length + query string.
//!
//! Reply data layouts:
//! - `REP_SERVER` (answer to LIST): u32 name length, name, optional description.
//! - `REP_INFO`: u16 info type, then
//!   `INFO_EXPORT`: u64 size, u16 transmission flags (12 bytes in all);
//!   `INFO_NAME`: name; `INFO_BLOCK_SIZE`: u32 minimum, u32 preferred, u32 maximum (14 bytes).
//! - `REP_META_CONTEXT`: u32 context id, context name.
//!
//! ## Request (client -> server, 28 bytes + data for WRITE)
//! ```text
//! 0   u32  REQUEST_MAGIC 0x25609513
//! 4   u16  command flags (CMD_FLAG_*)
//! 6   u16  command type (CMD_*)
//! 8   u64  cookie (echoed in the reply)
//! 16  u64  offset
//! 24  u32  length
//! 28  ...  data (WRITE only, `length` bytes)
//! ```
//!
//! ## Simple reply (server -> client, 16 bytes + data for a successful READ)
//! ```text
//! 0   u32  SIMPLE_REPLY_MAGIC 0x67446698
//! 4   u32  error (errno-like NBD_E*, 0 = success)
//! 8   u64  cookie
//! 16  ...  data (READ without error only)
//! ```
//!
//! ## Structured reply chunk (server -> client, 20 bytes + payload)
//! ```text
//! 0   u32  STRUCTURED_REPLY_MAGIC 0x668e33ef
//! 4   u16  flags (bit0 DONE: last chunk of this reply)
//! 6   u16  chunk type (CHUNK_*)
//! 8   u64  cookie
//! 16  u32  payload length
//! 20  ...  payload
//! ```
//! Payloads:
//! - `CHUNK_NONE`: empty.
//! - `CHUNK_OFFSET_DATA`: u64 offset, data.
//! - `CHUNK_OFFSET_HOLE`: u64 offset, u32 hole length (reads as zeroes).
//! - `CHUNK_BLOCK_STATUS`: u32 context id, then descriptors of u32 length + u32 flags.
//! - `CHUNK_ERROR`: u32 error, u16 message length, message.
//! - `CHUNK_ERROR_OFFSET`: u32 error, u16 message length, message, u64 offset.

use std::io::{self, Read, Write};

pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub const FLAG_NO_ZEROES: u16 = 2;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1;
pub const FLAG_C_NO_ZEROES: u32 = 2;

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_FLAG_ERROR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;

pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_BLOCK_SIZE: u16 = 3;

pub const TFLAG_HAS_FLAGS: u16 = 1;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

pub const CMD_FLAG_FUA: u16 = 1;

pub const REPLY_FLAG_DONE: u16 = 1;
pub const CHUNK_NONE: u16 = 0;
pub const CHUNK_OFFSET_DATA: u16 = 1;
pub const CHUNK_OFFSET_HOLE: u16 = 2;
pub const CHUNK_BLOCK_STATUS: u16 = 5;
pub const CHUNK_ERROR_BIT: u16 = 1 << 15;
pub const CHUNK_ERROR: u16 = CHUNK_ERROR_BIT | 1;
pub const CHUNK_ERROR_OFFSET: u16 = CHUNK_ERROR_BIT | 2;

pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const ENOTSUP: u32 = 95;

/// `base:allocation` extent flag: the range is not allocated (a hole).
pub const STATE_HOLE: u32 = 1;
/// `base:allocation` extent flag: the range reads as zeroes.
pub const STATE_ZERO: u32 = 2;
/// `qemu:dirty-bitmap:NAME` extent flag: the range changed since the bitmap was enabled.
pub const STATE_DIRTY: u32 = 1;

/// Largest request payload either side sends or accepts: the protocol's
/// customary ceiling, which every maintained server honours.
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;
/// Strings in options (names, contexts) are at most 4 KiB by the spec;
/// whole option payloads above this are refused unread.
pub const MAX_OPTION_DATA: u32 = 64 * 1024;

/// Human name of an NBD error number, for messages.
pub fn errno_name(code: u32) -> &'static str {
    match code {
        EPERM => "EPERM (operation not permitted)",
        EIO => "EIO (input/output error)",
        12 => "ENOMEM (out of memory)",
        EINVAL => "EINVAL (invalid argument)",
        ENOSPC => "ENOSPC (no space left / beyond end of export)",
        75 => "EOVERFLOW (request too large)",
        ENOTSUP => "ENOTSUP (not supported)",
        108 => "ESHUTDOWN (server is shutting down)",
        _ => "unknown error",
    }
}

/// Human name of an option number, for messages.
pub fn option_name(opt: u32) -> &'static str {
    match opt {
        OPT_EXPORT_NAME => "NBD_OPT_EXPORT_NAME",
        OPT_ABORT => "NBD_OPT_ABORT",
        OPT_LIST => "NBD_OPT_LIST",
        OPT_STARTTLS => "NBD_OPT_STARTTLS",
        OPT_INFO => "NBD_OPT_INFO",
        OPT_GO => "NBD_OPT_GO",
        OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
        OPT_LIST_META_CONTEXT => "NBD_OPT_LIST_META_CONTEXT",
        OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
        _ => "unknown option",
    }
}

pub fn read_u16(r: &mut impl Read) -> io::Result<u16> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

pub fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

pub fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// Reads `len` bytes into a fresh vector; `len` must already be bounded by
/// the caller. The vector grows as bytes arrive, so a peer announcing a large
/// payload and then hanging up costs little memory.
pub fn read_vec(r: &mut impl Read, len: usize) -> io::Result<Vec<u8>> {
    let mut v = Vec::with_capacity(len.min(64 * 1024));
    r.take(len as u64).read_to_end(&mut v)?;
    if v.len() < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(v)
}

/// Reads and drops `len` bytes (payloads we refuse but must step over).
pub fn skip(r: &mut impl Read, len: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(len), &mut io::sink())?;
    if copied < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Writes an option request (layout "Option request" above).
pub fn write_option(w: &mut impl Write, option: u32, data: &[u8]) -> io::Result<()> {
    let len =
        u32::try_from(data.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut hdr = [0u8; 16];
    hdr[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
    hdr[8..12].copy_from_slice(&option.to_be_bytes());
    hdr[12..16].copy_from_slice(&len.to_be_bytes());
    w.write_all(&hdr)?;
    w.write_all(data)
}

/// Writes an option reply (layout "Option reply" above).
pub fn write_option_reply(
    w: &mut impl Write,
    option: u32,
    reply: u32,
    data: &[u8],
) -> io::Result<()> {
    let len =
        u32::try_from(data.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut hdr = [0u8; 20];
    hdr[0..8].copy_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    hdr[8..12].copy_from_slice(&option.to_be_bytes());
    hdr[12..16].copy_from_slice(&reply.to_be_bytes());
    hdr[16..20].copy_from_slice(&len.to_be_bytes());
    w.write_all(&hdr)?;
    w.write_all(data)
}

/// A request header (layout "Request" above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    pub fn encode(&self) -> [u8; 28] {
        let mut b = [0u8; 28];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Decodes a header; `None` if the magic is wrong (the stream is then
    /// out of step and the connection must be dropped).
    pub fn decode(b: &[u8; 28]) -> Option<Request> {
        let be32 = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let be16 = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let be64 = |i: usize| (u64::from(be32(i)) << 32) | u64::from(be32(i + 4));
        if be32(0) != REQUEST_MAGIC {
            return None;
        }
        Some(Request {
            flags: be16(4),
            command: be16(6),
            cookie: be64(8),
            offset: be64(16),
            length: be32(24),
        })
    }
}

/// Writes a simple reply header (layout "Simple reply" above); READ data follows separately.
pub fn write_simple_reply(w: &mut impl Write, error: u32, cookie: u64) -> io::Result<()> {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    w.write_all(&b)
}

/// Writes a structured reply chunk header (layout "Structured reply chunk" above).
pub fn write_chunk_header(
    w: &mut impl Write,
    flags: u16,
    kind: u16,
    cookie: u64,
    len: u32,
) -> io::Result<()> {
    let mut b = [0u8; 20];
    b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..20].copy_from_slice(&len.to_be_bytes());
    w.write_all(&b)
}

/// Appends a u32-length-prefixed string (option data layouts above).
pub fn put_str32(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A bounds-checked cursor over option data received from the peer.
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data }
    }

    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.data.len() {
            return None;
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Some(head)
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Option<u64> {
        let hi = self.u32()?;
        let lo = self.u32()?;
        Some((u64::from(hi) << 32) | u64::from(lo))
    }

    /// A u32-length-prefixed UTF-8 string.
    pub fn str32(&mut self) -> Option<String> {
        let len = usize::try_from(self.u32()?).ok()?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).ok()
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

#[cfg(test)]
mod tests {
    //! Layout round trips and bounds of the option-data cursor.
    use super::*;

    #[test]
    fn request_round_trips_and_rejects_bad_magic() {
        let r = Request {
            flags: CMD_FLAG_FUA,
            command: CMD_WRITE,
            cookie: 0x0102_0304_0506_0708,
            offset: 0x1122_3344_5566_7788,
            length: 4096,
        };
        let b = r.encode();
        assert_eq!(&b[0..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(Request::decode(&b), Some(r));
        let mut bad = b;
        bad[0] ^= 1;
        assert_eq!(Request::decode(&bad), None);
    }

    #[test]
    fn magics_spell_their_names() {
        assert_eq!(&NBD_MAGIC.to_be_bytes(), b"NBDMAGIC");
        assert_eq!(&IHAVEOPT.to_be_bytes(), b"IHAVEOPT");
    }

    #[test]
    fn cursor_never_reads_past_the_end() {
        let data = [0, 0, 0, 9, b'a'];
        let mut c = Cursor::new(&data);
        assert_eq!(c.str32(), None);
        let mut c = Cursor::new(&data[..3]);
        assert_eq!(c.u32(), None);
        let mut c = Cursor::new(&[0, 0, 0, 1, b'x', 0, 7]);
        assert_eq!(c.str32().as_deref(), Some("x"));
        assert_eq!(c.u16(), Some(7));
        assert!(c.is_empty());
    }
}
