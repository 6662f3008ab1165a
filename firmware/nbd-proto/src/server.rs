//! NBD server exporting one [`BlockBackend`] over a Unix socket or TCP, a
//! thread per connection carrying out its requests in order and one more
//! reading the next requests ahead of it (see `serve_socket`). The
//! appliance simulator (`firmware/sim`) exports its medium through it,
//! adapting the firmware core's block service to [`BlockBackend`], so every
//! read and write of the medium passes the service's policy (writes refused
//! unless unlocked and not sealed).
//!
//! Spoken: fixed newstyle handshake; options EXPORT_NAME, ABORT, LIST, INFO,
//! GO, STRUCTURED_REPLY, LIST/SET_META_CONTEXT (`base:allocation`, reported
//! as all data); commands READ, WRITE (FUA), FLUSH, WRITE_ZEROES (FUA),
//! BLOCK_STATUS, DISC. Input from a client is never trusted: lengths are
//! bounded before allocating, malformed options get error replies, and a
//! stream that falls out of step is dropped. Layouts are in [`crate::proto`].

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::proto::{self, *};
use crate::transport::Sock;
use crate::url::NbdUrl;
use crate::BASE_ALLOCATION;

/// The storage behind an export. Shared by all connections, hence `Sync`.
pub trait BlockBackend: Send + Sync {
    /// Size in bytes (fixed while serving).
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; the server has checked the range.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at `offset`. `ErrorKind::PermissionDenied` reaches the
    /// client as NBD_EPERM (e.g. a sealed medium).
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes completed writes durable, whichever connection made them (the
    /// server advertises NBD_FLAG_CAN_MULTI_CONN, so clients rely on that).
    fn flush(&self) -> io::Result<()>;
    /// Whether writes are possible at all; advertised as NBD_FLAG_READ_ONLY
    /// at handshake. Writes are still re-checked per request because this
    /// can change while a client is connected.
    fn writable(&self) -> bool;
    /// Told of a write (or write-zeroes) refused because the export is read-only, before it
    /// reached [`write_at`](Self::write_at): an appliance counts these as evidence of an
    /// attempt on its sealed medium (a well-behaved client never sends one, it reads the
    /// read-only flag).
    fn write_refused(&self) {}
}

/// Context id we give `base:allocation` (the only context we offer).
const BASE_ALLOCATION_ID: u32 = 1;
/// Preferred block size advertised in NBD_INFO_BLOCK_SIZE.
const PREFERRED_BLOCK: u32 = 4096;
/// Read buffer of a connection: room for many request headers, but small
/// next to a write's payload. Reading a header fills the buffer with the
/// payload behind it, which is then copied out once more; a 256 KiB buffer
/// copied nearly every written byte twice (perf of the appliance simulator
/// during a capture: 4 % of its time in that memmove).
const READ_BUFFER: usize = 16 * 1024;
/// Page size a write's payload is aligned to in memory (see [`Payload`]).
const PAGE: usize = 4096;

/// A write's payload, received into memory so that every byte sits at the
/// same offset within a 4 KiB page as its export offset does: the pages of
/// the export a write covers whole are then page-aligned in memory too, and
/// a backend can hand them to `O_DIRECT` (which wants aligned memory)
/// without copying them (the appliance simulator's medium does). Safe code:
/// a `Vec` over-allocated by a page, used from an aligned start (its heap
/// block does not move while it is not grown).
#[derive(Default)]
struct Payload {
    raw: Vec<u8>,
}

impl Payload {
    /// `n` bytes for a write at export offset `offset` (contents undefined).
    fn for_write(&mut self, offset: u64, n: usize) -> &mut [u8] {
        let within = (offset % PAGE as u64) as usize;
        if self.raw.len() < n + within + PAGE {
            self.raw = vec![0u8; (n + within + PAGE).next_multiple_of(PAGE)];
        }
        let start = self.raw.as_ptr().align_offset(PAGE).min(PAGE) + within;
        &mut self.raw[start..start + n]
    }
}

/// The NBD error number for a backend error (NBD numbers are Linux errno values).
fn errno_of(e: &io::Error) -> u32 {
    const ENOSPC_OS: i32 = 28;
    const EROFS_OS: i32 = 30;
    match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::PermissionDenied, _) | (_, Some(EROFS_OS)) => EPERM,
        (_, Some(ENOSPC_OS)) => ENOSPC,
        (io::ErrorKind::InvalidInput, _) => EINVAL,
        (io::ErrorKind::Unsupported, _) => ENOTSUP,
        _ => EIO,
    }
}

/// Per-connection negotiated state.
struct Session<'a, R, W> {
    r: R,
    w: W,
    export: &'a str,
    backend: &'a dyn BlockBackend,
    peer: &'a str,
    structured: bool,
    base_allocation: bool,
    buf: Vec<u8>,
    payload: Payload,
}

/// What the option phase ended with.
enum Next {
    Transmit,
    Close,
}

impl<'a, R, W> Session<'a, R, W> {
    /// A connection before the handshake: nothing negotiated yet.
    fn new(r: R, w: W, export: &'a str, backend: &'a dyn BlockBackend, peer: &'a str) -> Self {
        Session {
            r,
            w,
            export,
            backend,
            peer,
            structured: false,
            base_allocation: false,
            buf: Vec::new(),
            payload: Payload::default(),
        }
    }
}

impl<R: Read, W: Write> Session<'_, R, W> {
    fn io(&self, source: io::Error) -> Error {
        Error::Io {
            peer: self.peer.to_string(),
            source,
        }
    }

    fn protocol(&self, detail: impl Into<String>) -> Error {
        Error::Protocol {
            peer: self.peer.to_string(),
            detail: detail.into(),
        }
    }

    fn flush(&mut self) -> Result<()> {
        let r = self.w.flush();
        r.map_err(|e| self.io(e))
    }

    fn reply(&mut self, option: u32, rep: u32, data: &[u8]) -> Result<()> {
        let r = proto::write_option_reply(&mut self.w, option, rep, data);
        r.map_err(|e| self.io(e))
    }

    fn names_our_export(&self, name: &str) -> bool {
        name.is_empty() || name == self.export
    }

    fn tflags(&self) -> u16 {
        let mut f = TFLAG_HAS_FLAGS
            | TFLAG_SEND_FLUSH
            | TFLAG_SEND_FUA
            | TFLAG_SEND_WRITE_ZEROES
            | TFLAG_CAN_MULTI_CONN;
        if !self.backend.writable() {
            f |= TFLAG_READ_ONLY;
        }
        f
    }

    /// Handshake: greeting, client flags and the option loop.
    fn negotiate(&mut self) -> Result<Next> {
        let mut greet = [0u8; 18];
        greet[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
        greet[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
        greet[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        let r = self.w.write_all(&greet);
        r.map_err(|e| self.io(e))?;
        self.flush()?;
        let cflags = proto::read_u32(&mut self.r).map_err(|e| self.io(e))?;
        if cflags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
            return Err(self.protocol(format!("unknown client flags {cflags:#x}")));
        }
        let no_zeroes = cflags & FLAG_C_NO_ZEROES != 0;
        loop {
            let magic = proto::read_u64(&mut self.r).map_err(|e| self.io(e))?;
            if magic != IHAVEOPT {
                return Err(self.protocol("bad option magic"));
            }
            let option = proto::read_u32(&mut self.r).map_err(|e| self.io(e))?;
            let len = proto::read_u32(&mut self.r).map_err(|e| self.io(e))?;
            if len > MAX_OPTION_DATA {
                if option == OPT_EXPORT_NAME {
                    return Err(self.protocol("export name too long"));
                }
                proto::skip(&mut self.r, u64::from(len)).map_err(|e| self.io(e))?;
                self.reply(option, REP_ERR_TOO_BIG, b"option data too large")?;
                self.flush()?;
                continue;
            }
            let data = proto::read_vec(&mut self.r, len as usize).map_err(|e| self.io(e))?;
            let next = self.option(option, &data, no_zeroes)?;
            self.flush()?;
            if let Some(next) = next {
                return Ok(next);
            }
        }
    }

    /// Answers one option; `Some` ends the option phase.
    fn option(&mut self, option: u32, data: &[u8], no_zeroes: bool) -> Result<Option<Next>> {
        match option {
            OPT_EXPORT_NAME => {
                let name = std::str::from_utf8(data).unwrap_or("\u{fffd}");
                if !self.names_our_export(name) {
                    // The protocol has no error reply here: closing is the answer.
                    return Ok(Some(Next::Close));
                }
                let mut b = Vec::with_capacity(134);
                b.extend_from_slice(&self.backend.size().to_be_bytes());
                b.extend_from_slice(&self.tflags().to_be_bytes());
                if !no_zeroes {
                    b.extend_from_slice(&[0u8; 124]);
                }
                let r = self.w.write_all(&b);
                r.map_err(|e| self.io(e))?;
                Ok(Some(Next::Transmit))
            }
            OPT_ABORT => {
                // Reply politely; the client may already have gone.
                let _ = self.reply(option, REP_ACK, &[]);
                let _ = self.flush();
                Ok(Some(Next::Close))
            }
            OPT_LIST => {
                if !data.is_empty() {
                    self.reply(option, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")?;
                    return Ok(None);
                }
                let mut b = Vec::new();
                put_str32(&mut b, self.export);
                self.reply(option, REP_SERVER, &b)?;
                self.reply(option, REP_ACK, &[])?;
                Ok(None)
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    self.reply(
                        option,
                        REP_ERR_INVALID,
                        b"NBD_OPT_STRUCTURED_REPLY takes no data",
                    )?;
                    return Ok(None);
                }
                self.structured = true;
                self.reply(option, REP_ACK, &[])?;
                Ok(None)
            }
            OPT_INFO | OPT_GO => {
                let mut c = Cursor::new(data);
                let parsed = (|| {
                    let name = c.str32()?;
                    let n = c.u16()?;
                    let mut infos = Vec::new();
                    for _ in 0..n {
                        infos.push(c.u16()?);
                    }
                    c.is_empty().then_some((name, infos))
                })();
                let Some((name, infos)) = parsed else {
                    self.reply(option, REP_ERR_INVALID, b"malformed NBD_OPT_INFO/GO data")?;
                    return Ok(None);
                };
                if !self.names_our_export(&name) {
                    let msg = format!("no export named '{name}'");
                    self.reply(option, REP_ERR_UNKNOWN, msg.as_bytes())?;
                    return Ok(None);
                }
                let mut b = Vec::with_capacity(12);
                b.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                b.extend_from_slice(&self.backend.size().to_be_bytes());
                b.extend_from_slice(&self.tflags().to_be_bytes());
                self.reply(option, REP_INFO, &b)?;
                // Sent unasked too: it tells clients our payload ceiling.
                let mut b = Vec::with_capacity(14);
                b.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                b.extend_from_slice(&1u32.to_be_bytes());
                b.extend_from_slice(&PREFERRED_BLOCK.to_be_bytes());
                b.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
                self.reply(option, REP_INFO, &b)?;
                if infos.contains(&INFO_NAME) {
                    let mut b = INFO_NAME.to_be_bytes().to_vec();
                    b.extend_from_slice(self.export.as_bytes());
                    self.reply(option, REP_INFO, &b)?;
                }
                self.reply(option, REP_ACK, &[])?;
                Ok((option == OPT_GO).then_some(Next::Transmit))
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                self.meta_context(option, data)?;
                Ok(None)
            }
            _ => {
                let msg = format!("{} is not supported", option_name(option));
                self.reply(option, REP_ERR_UNSUP, msg.as_bytes())?;
                Ok(None)
            }
        }
    }

    fn meta_context(&mut self, option: u32, data: &[u8]) -> Result<()> {
        let set = option == OPT_SET_META_CONTEXT;
        if !self.structured {
            return self.reply(
                option,
                REP_ERR_INVALID,
                b"negotiate NBD_OPT_STRUCTURED_REPLY before meta contexts",
            );
        }
        let mut c = Cursor::new(data);
        let parsed = (|| {
            let name = c.str32()?;
            let n = c.u32()?;
            let mut queries = Vec::new();
            for _ in 0..n {
                queries.push(c.str32()?);
            }
            c.is_empty().then_some((name, queries))
        })();
        let Some((name, queries)) = parsed else {
            return self.reply(option, REP_ERR_INVALID, b"malformed meta context request");
        };
        if !self.names_our_export(&name) {
            let msg = format!("no export named '{name}'");
            return self.reply(option, REP_ERR_UNKNOWN, msg.as_bytes());
        }
        let matches = |q: &str| q == BASE_ALLOCATION || (!set && (q == "base:" || q.is_empty()));
        let selected = if queries.is_empty() {
            // LIST with no query lists everything; SET with none selects nothing.
            !set
        } else {
            queries.iter().any(|q| matches(q))
        };
        if selected {
            let mut b = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
            b.extend_from_slice(BASE_ALLOCATION.as_bytes());
            self.reply(option, REP_META_CONTEXT, &b)?;
        }
        if set {
            self.base_allocation = selected;
        }
        self.reply(option, REP_ACK, &[])
    }

    /// Error reply: structured for commands whose replies carry data, simple otherwise.
    fn error_reply(&mut self, req: &Request, code: u32, msg: &str) -> Result<()> {
        let r = if self.structured && matches!(req.command, CMD_READ | CMD_BLOCK_STATUS) {
            let msg = &msg.as_bytes()[..msg.len().min(4096)];
            let mut b = Vec::with_capacity(6 + msg.len());
            b.extend_from_slice(&code.to_be_bytes());
            b.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            b.extend_from_slice(msg);
            proto::write_chunk_header(
                &mut self.w,
                REPLY_FLAG_DONE,
                CHUNK_ERROR,
                req.cookie,
                b.len() as u32,
            )
            .and_then(|_| self.w.write_all(&b))
        } else {
            proto::write_simple_reply(&mut self.w, code, req.cookie)
        };
        r.map_err(|e| self.io(e))
    }

    fn ok_reply(&mut self, req: &Request) -> Result<()> {
        let r = proto::write_simple_reply(&mut self.w, 0, req.cookie);
        r.map_err(|e| self.io(e))
    }

    /// `Some(errno)` if the request range leaves the export.
    fn out_of_range(&self, req: &Request, errno: u32) -> Option<u32> {
        match req.offset.checked_add(u64::from(req.length)) {
            Some(end) if end <= self.backend.size() => None,
            _ => Some(errno),
        }
    }

    /// The transmission phase: one request at a time until DISC or EOF.
    fn transmit(&mut self) -> Result<()> {
        loop {
            let spare = std::mem::take(&mut self.payload);
            match next_request(&mut self.r, self.peer, spare) {
                Incoming::Request(req, mut payload) => {
                    let more = self.execute(&req, &mut payload);
                    self.payload = payload;
                    if !more? {
                        return Ok(());
                    }
                }
                Incoming::End => return Ok(()),
                Incoming::Failed(e) => return Err(e),
            }
        }
    }

    /// Carry out `req` and send its reply; `false` after DISC. A write's
    /// bytes are in `payload` ([`next_request`] read them).
    fn execute(&mut self, req: &Request, payload: &mut Payload) -> Result<bool> {
        match req.command {
            CMD_DISC => return Ok(false),
            CMD_READ => self.read(req)?,
            CMD_WRITE => self.write(req, payload)?,
            CMD_FLUSH => match self.backend.flush() {
                Ok(()) => self.ok_reply(req)?,
                Err(e) => self.error_reply(req, errno_of(&e), "flush failed")?,
            },
            CMD_WRITE_ZEROES => self.write_zeroes(req)?,
            CMD_BLOCK_STATUS => self.block_status(req)?,
            _ => self.error_reply(req, EINVAL, "unsupported command")?,
        }
        self.flush()?;
        Ok(true)
    }

    fn read(&mut self, req: &Request) -> Result<()> {
        if req.length > MAX_PAYLOAD {
            return self.error_reply(req, EINVAL, "read larger than the maximum block size");
        }
        if let Some(e) = self.out_of_range(req, EINVAL) {
            return self.error_reply(req, e, "read beyond the end of the export");
        }
        let n = req.length as usize;
        if self.buf.len() < n {
            self.buf.resize(n, 0);
        }
        if let Err(e) = self.backend.read_at(req.offset, &mut self.buf[..n]) {
            return self.error_reply(req, errno_of(&e), "read failed");
        }
        let r = if self.structured {
            if n == 0 {
                proto::write_chunk_header(&mut self.w, REPLY_FLAG_DONE, CHUNK_NONE, req.cookie, 0)
            } else {
                proto::write_chunk_header(
                    &mut self.w,
                    REPLY_FLAG_DONE,
                    CHUNK_OFFSET_DATA,
                    req.cookie,
                    req.length + 8,
                )
                .and_then(|_| self.w.write_all(&req.offset.to_be_bytes()))
                .and_then(|_| self.w.write_all(&self.buf[..n]))
            }
        } else {
            proto::write_simple_reply(&mut self.w, 0, req.cookie)
                .and_then(|_| self.w.write_all(&self.buf[..n]))
        };
        r.map_err(|e| self.io(e))
    }

    /// A write whose payload (`req.length` bytes) is in `payload`.
    fn write(&mut self, req: &Request, payload: &mut Payload) -> Result<()> {
        if !self.backend.writable() {
            self.backend.write_refused();
            return self.error_reply(req, EPERM, "export is read-only");
        }
        if let Some(e) = self.out_of_range(req, ENOSPC) {
            return self.error_reply(req, e, "write beyond the end of the export");
        }
        let data = payload.for_write(req.offset, req.length as usize);
        let mut done = self.backend.write_at(req.offset, data);
        if done.is_ok() && req.flags & CMD_FLAG_FUA != 0 {
            done = self.backend.flush();
        }
        match done {
            Ok(()) => self.ok_reply(req),
            Err(e) => self.error_reply(req, errno_of(&e), "write failed"),
        }
    }

    fn write_zeroes(&mut self, req: &Request) -> Result<()> {
        if !self.backend.writable() {
            self.backend.write_refused();
            return self.error_reply(req, EPERM, "export is read-only");
        }
        if let Some(e) = self.out_of_range(req, ENOSPC) {
            return self.error_reply(req, e, "write beyond the end of the export");
        }
        let zeroes = vec![0u8; (req.length as usize).min(1 << 20)];
        let mut done = 0u64;
        let len = u64::from(req.length);
        let mut result = Ok(());
        while done < len && result.is_ok() {
            let n = (len - done).min(zeroes.len() as u64) as usize;
            result = self.backend.write_at(req.offset + done, &zeroes[..n]);
            done += n as u64;
        }
        if result.is_ok() && req.flags & CMD_FLAG_FUA != 0 {
            result = self.backend.flush();
        }
        match result {
            Ok(()) => self.ok_reply(req),
            Err(e) => self.error_reply(req, errno_of(&e), "write zeroes failed"),
        }
    }

    fn block_status(&mut self, req: &Request) -> Result<()> {
        if !self.structured || !self.base_allocation {
            return self.error_reply(req, EINVAL, "no meta context negotiated");
        }
        if req.length == 0 {
            return self.error_reply(req, EINVAL, "zero-length block status");
        }
        if let Some(e) = self.out_of_range(req, EINVAL) {
            return self.error_reply(req, e, "block status beyond the end of the export");
        }
        // The backend keeps no allocation map: everything is data.
        let mut b = [0u8; 12];
        b[0..4].copy_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
        b[4..8].copy_from_slice(&req.length.to_be_bytes());
        let r = proto::write_chunk_header(
            &mut self.w,
            REPLY_FLAG_DONE,
            CHUNK_BLOCK_STATUS,
            req.cookie,
            12,
        )
        .and_then(|_| self.w.write_all(&b));
        r.map_err(|e| self.io(e))
    }
}

/// Serves one already-connected client until it disconnects. Used by the
/// listeners, and directly by custom transports and the fuzz target. `peer`
/// names the client in errors. Returns an error if the client broke the
/// protocol (the connection must then be closed).
pub fn serve_stream<R: Read, W: Write>(
    reader: R,
    writer: W,
    export_name: &str,
    backend: &dyn BlockBackend,
    peer: &str,
) -> Result<()> {
    let mut s = Session::new(reader, writer, export_name, backend, peer);
    match s.negotiate()? {
        Next::Close => Ok(()),
        Next::Transmit => {
            s.flush()?;
            s.transmit()
        }
    }
}

/// Requests read ahead of the one being carried out on a socket.
const READ_AHEAD: usize = 2;

/// What a connection's reading thread hands the thread carrying out requests.
enum Incoming {
    /// A request, and the payload buffer (holding the bytes of a write).
    Request(Request, Payload),
    /// The client closed the connection between requests.
    End,
    /// The stream failed or fell out of step.
    Failed(Error),
}

/// The next request from `r`, a write's payload read into `payload` (a
/// buffer to reuse; it comes back with every request). A write larger than
/// we buffer is a protocol error: skipping it blindly could hide a desync.
fn next_request<R: Read>(r: &mut R, peer: &str, mut payload: Payload) -> Incoming {
    let io_err = |source| {
        Incoming::Failed(Error::Io {
            peer: peer.to_string(),
            source,
        })
    };
    let protocol = |detail: String| {
        Incoming::Failed(Error::Protocol {
            peer: peer.to_string(),
            detail,
        })
    };
    let mut hdr = [0u8; 28];
    match r.read_exact(&mut hdr) {
        Ok(()) => {}
        // A client vanishing between requests is a normal end.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Incoming::End,
        Err(e) => return io_err(e),
    }
    let Some(req) = Request::decode(&hdr) else {
        return protocol("bad request magic".into());
    };
    if req.command == CMD_WRITE {
        if req.length > MAX_PAYLOAD {
            return protocol(format!("write of {} bytes exceeds the maximum", req.length));
        }
        if let Err(e) = r.read_exact(payload.for_write(req.offset, req.length as usize)) {
            return io_err(e);
        }
    }
    Incoming::Request(req, payload)
}

/// Read requests from `r` and hand them over in order, until DISC, the end
/// of the stream, an error or a closed receiver.
fn read_requests<R: Read>(
    mut r: R,
    peer: &str,
    to: &std::sync::mpsc::SyncSender<Incoming>,
    spare: &std::sync::mpsc::Receiver<Payload>,
) {
    loop {
        let next = next_request(&mut r, peer, spare.try_recv().unwrap_or_default());
        let last = !matches!(&next, Incoming::Request(req, _) if req.command != CMD_DISC);
        if to.send(next).is_err() || last {
            return;
        }
    }
}

/// Serves a connected socket like [`serve_stream`], but reads each request
/// (and a write's payload) on a thread of its own while the one before is
/// carried out: receiving a 4 MiB write and writing the medium take turns
/// otherwise (the appliance simulator's capture spent as long in `recv` as
/// in its medium writes, one after the other). Requests are still carried
/// out and answered one at a time, in order.
fn serve_socket(
    sock: &Sock,
    export_name: &str,
    backend: &dyn BlockBackend,
    peer: &str,
) -> Result<()> {
    let (r, w) = match (sock.try_clone(), sock.try_clone()) {
        (Ok(r), Ok(w)) => (r, w),
        (Err(source), _) | (_, Err(source)) => {
            return Err(Error::Io {
                peer: peer.to_string(),
                source,
            })
        }
    };
    let mut s = Session::new(
        BufReader::with_capacity(READ_BUFFER, r),
        BufWriter::with_capacity(256 * 1024, w),
        export_name,
        backend,
        peer,
    );
    match s.negotiate()? {
        Next::Close => return Ok(()),
        Next::Transmit => s.flush()?,
    }
    let Session {
        r,
        w,
        structured,
        base_allocation,
        buf,
        ..
    } = s;
    // The same connection, negotiated, without its reader.
    let mut exec = Session::new(io::empty(), w, export_name, backend, peer);
    (exec.structured, exec.base_allocation, exec.buf) = (structured, base_allocation, buf);
    let (to, from) = std::sync::mpsc::sync_channel(READ_AHEAD);
    let (give_back, spare) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(move || read_requests(r, peer, &to, &spare));
        let result = (|| {
            for next in &from {
                match next {
                    Incoming::Request(req, mut payload) => {
                        if !exec.execute(&req, &mut payload)? {
                            return Ok(());
                        }
                        let _ = give_back.send(payload);
                    }
                    Incoming::End => return Ok(()),
                    Incoming::Failed(e) => return Err(e),
                }
            }
            Ok(())
        })();
        // The reader may be blocked reading a client that sends nothing
        // more: closing the socket ends it, so the scope can end.
        drop(from);
        sock.shutdown();
        result
    })
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Listeners are non-blocking so the accept loop notices a stop request
    /// without relying on a wake-up connection getting through.
    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix(l) => l.set_nonblocking(true),
        }
    }

    fn accept(&self) -> io::Result<(Sock, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, a) = l.accept()?;
                s.set_nonblocking(false)?;
                s.set_nodelay(true)?;
                Ok((Sock::Tcp(s), a.to_string()))
            }
            Listener::Unix(l) => {
                let s = l.accept()?.0;
                s.set_nonblocking(false)?;
                Ok((Sock::Unix(s), "unix client".to_string()))
            }
        }
    }
}

/// How often an idle accept loop checks for a stop request.
const ACCEPT_POLL: std::time::Duration = std::time::Duration::from_millis(10);

struct Shared {
    stop: AtomicBool,
    conns: Mutex<HashMap<u64, Sock>>,
    next_id: AtomicU64,
}

/// A running server. Dropping it stops it too; [`ServerHandle::stop`] makes
/// that explicit.
pub struct ServerHandle {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    path: PathBuf,
    tcp: Option<SocketAddr>,
    export: String,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("url", &self.url())
            .finish()
    }
}

impl ServerHandle {
    /// Stops accepting, closes every connection, waits for their threads and
    /// removes the Unix socket file.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// The Unix socket path (empty for a TCP server).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bound TCP address (with the real port when 0 was asked for).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// The URL clients connect to.
    pub fn url(&self) -> NbdUrl {
        match self.tcp {
            Some(a) => NbdUrl::Tcp {
                host: a.ip().to_string(),
                port: a.port(),
                export: self.export.clone(),
            },
            None => NbdUrl::Unix {
                socket: self.path.clone(),
                export: self.export.clone(),
            },
        }
    }

    fn shutdown(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        // The accept thread closes connections and joins their threads; a
        // panic there has nothing left for us to clean up.
        let _ = accept.join();
        if self.tcp.is_none() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn start(
    listener: Listener,
    export_name: &str,
    backend: Arc<dyn BlockBackend>,
    path: PathBuf,
    tcp: Option<SocketAddr>,
) -> Result<ServerHandle> {
    listener.set_nonblocking().map_err(|source| Error::Bind {
        addr: path.display().to_string(),
        source,
    })?;
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        conns: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
    });
    let sh = Arc::clone(&shared);
    let export = export_name.to_string();
    let accept = std::thread::Builder::new()
        .name("nbd-accept".into())
        .spawn(move || accept_loop(listener, &export, backend, &sh))
        .map_err(|source| Error::Bind {
            addr: path.display().to_string(),
            source,
        })?;
    Ok(ServerHandle {
        shared,
        accept: Some(accept),
        path,
        tcp,
        export: export_name.to_string(),
    })
}

fn accept_loop(listener: Listener, export: &str, backend: Arc<dyn BlockBackend>, sh: &Arc<Shared>) {
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    while !sh.stop.load(Ordering::SeqCst) {
        let (sock, peer) = match listener.accept() {
            Ok(a) => a,
            Err(_) => {
                // Nobody waiting, out of descriptors or an aborted
                // connection: all are retried after a short pause.
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
        };
        threads.retain(|t| !t.is_finished());
        let Ok(keep) = sock.try_clone() else {
            continue;
        };
        let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut conns) = sh.conns.lock() {
            conns.insert(id, keep);
        }
        let backend = Arc::clone(&backend);
        let export = export.to_string();
        let sh2 = Arc::clone(sh);
        let spawned = std::thread::Builder::new()
            .name("nbd-conn".into())
            .spawn(move || {
                // A misbehaving client only loses its own connection.
                let _ = serve_socket(&sock, &export, backend.as_ref(), &peer);
                sock.shutdown();
                if let Ok(mut conns) = sh2.conns.lock() {
                    conns.remove(&id);
                }
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(_) => {
                if let Ok(mut conns) = sh.conns.lock() {
                    if let Some(s) = conns.remove(&id) {
                        s.shutdown();
                    }
                }
            }
        }
    }
    let open: Vec<Sock> = match sh.conns.lock() {
        Ok(mut c) => c.drain().map(|(_, s)| s).collect(),
        Err(_) => Vec::new(),
    };
    for s in open {
        s.shutdown();
    }
    for t in threads {
        let _ = t.join();
    }
}

/// Exports `backend` as `export_name` on a Unix socket at `path` (an old
/// socket file there is replaced).
pub fn serve_unix(
    path: &Path,
    export_name: &str,
    backend: Arc<dyn BlockBackend>,
) -> Result<ServerHandle> {
    let bind_err = |source| Error::Bind {
        addr: path.display().to_string(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(bind_err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            )));
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let l = UnixListener::bind(path).map_err(bind_err)?;
    start(
        Listener::Unix(l),
        export_name,
        backend,
        path.to_path_buf(),
        None,
    )
}

/// Exports `backend` as `export_name` on TCP `addr` (port 0 picks a free
/// port; see [`ServerHandle::tcp_addr`]). Bind to 127.0.0.1 unless the
/// network is trusted: NBD has no authentication here.
pub fn serve_tcp(
    addr: SocketAddr,
    export_name: &str,
    backend: Arc<dyn BlockBackend>,
) -> Result<ServerHandle> {
    let bind_err = |source| Error::Bind {
        addr: addr.to_string(),
        source,
    };
    let l = TcpListener::bind(addr).map_err(bind_err)?;
    let local = l.local_addr().map_err(bind_err)?;
    start(
        Listener::Tcp(l),
        export_name,
        backend,
        PathBuf::new(),
        Some(local),
    )
}

#[cfg(test)]
mod tests {
    //! The server against hand-built and hostile byte streams. Round trips
    //! with a real client are the client crate's tests
    //! (`host-tools/nbd/tests/our_server.rs`) and the appliance scenarios.

    use super::*;
    use crate::testing::{MemExport as Mem, XorShift as Rng};

    #[test]
    fn backend_errors_map_to_nbd_error_numbers() {
        let kind = |k: io::ErrorKind| errno_of(&io::Error::from(k));
        assert_eq!(kind(io::ErrorKind::PermissionDenied), EPERM);
        assert_eq!(errno_of(&io::Error::from_raw_os_error(30)), EPERM);
        assert_eq!(errno_of(&io::Error::from_raw_os_error(28)), ENOSPC);
        assert_eq!(kind(io::ErrorKind::InvalidInput), EINVAL);
        assert_eq!(kind(io::ErrorKind::Unsupported), ENOTSUP);
        assert_eq!(kind(io::ErrorKind::UnexpectedEof), EIO);
    }

    /// A valid client prologue: greeting answer, structured replies, GO.
    fn client_prologue() -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes());
        proto::write_option(&mut v, OPT_STRUCTURED_REPLY, &[]).unwrap();
        let mut q = Vec::new();
        put_str32(&mut q, "m");
        q.extend_from_slice(&1u32.to_be_bytes());
        put_str32(&mut q, BASE_ALLOCATION);
        proto::write_option(&mut v, OPT_SET_META_CONTEXT, &q).unwrap();
        let mut go = Vec::new();
        put_str32(&mut go, "m");
        go.extend_from_slice(&0u16.to_be_bytes());
        proto::write_option(&mut v, OPT_GO, &go).unwrap();
        for (cmd, off, len) in [
            (CMD_READ, 0u64, 512u32),
            (CMD_BLOCK_STATUS, 0, 4096),
            (CMD_WRITE_ZEROES, 8, 8),
        ] {
            let r = Request {
                flags: 0,
                command: cmd,
                cookie: 1,
                offset: off,
                length: len,
            };
            v.extend_from_slice(&r.encode());
        }
        let w = Request {
            flags: CMD_FLAG_FUA,
            command: CMD_WRITE,
            cookie: 2,
            offset: 16,
            length: 4,
        };
        v.extend_from_slice(&w.encode());
        v.extend_from_slice(b"abcd");
        v
    }

    /// Records where in its page each write's payload starts and keeps the
    /// bytes, to check the server's receive buffer.
    struct Landing {
        mem: Arc<Mem>,
        seen: Mutex<Vec<(u64, usize, usize)>>,
    }

    impl BlockBackend for Landing {
        fn size(&self) -> u64 {
            self.mem.size()
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            self.mem.read_at(offset, buf)
        }
        fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            let page = data.as_ptr() as usize % PAGE;
            self.seen.lock().unwrap().push((offset, data.len(), page));
            self.mem.write_at(offset, data)
        }
        fn flush(&self) -> io::Result<()> {
            self.mem.flush()
        }
        fn writable(&self) -> bool {
            true
        }
    }

    /// A client's whole stream: writes (aligned, unaligned, larger than the
    /// last so the buffer grows, and smaller again, each behind bytes of the
    /// connection's read buffer), then a read of bytes the third wrote.
    /// Returns it, the writes and what the export must hold.
    fn writes_then_a_read(land: &Landing) -> (Vec<u8>, Vec<(u64, u32)>, Vec<u8>) {
        let mut input = FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        proto::write_option(&mut input, OPT_EXPORT_NAME, b"m").unwrap();
        let writes = vec![
            (0u64, 8192u32),
            (512, 300),
            (4096 * 3 + 1000, 1 << 20),
            (1 << 21, 64 << 10),
            (7, 9),
        ];
        let mut rng = Rng(9);
        let mut expect = land.mem.snapshot();
        for (i, &(offset, length)) in writes.iter().enumerate() {
            let w = Request {
                flags: 0,
                command: CMD_WRITE,
                cookie: i as u64,
                offset,
                length,
            };
            input.extend_from_slice(&w.encode());
            let data: Vec<u8> = (0..length).map(|_| rng.next() as u8).collect();
            expect[offset as usize..][..length as usize].copy_from_slice(&data);
            input.extend_from_slice(&data);
        }
        let r = Request {
            flags: 0,
            command: CMD_READ,
            cookie: 99,
            offset: 1 << 19,
            length: 512,
        };
        input.extend_from_slice(&r.encode());
        (input, writes, expect)
    }

    fn check_landing(land: &Landing, writes: &[(u64, u32)], expect: &[u8], out: &[u8]) {
        let seen = land.seen.lock().unwrap().clone();
        let want: Vec<(u64, usize, usize)> = writes
            .iter()
            .map(|&(o, l)| (o, l as usize, (o % PAGE as u64) as usize))
            .collect();
        assert_eq!(seen, want);
        assert!(
            land.mem.snapshot() == expect,
            "the export holds what was written"
        );
        // The last reply is the read's: it saw the write before it.
        assert!(out[out.len() - 512..] == expect[1 << 19..(1 << 19) + 512]);
    }

    #[test]
    fn a_writes_payload_lands_at_its_offsets_place_in_a_page() {
        let land = Landing {
            mem: Mem::new(4 << 20),
            seen: Mutex::new(Vec::new()),
        };
        let (input, writes, expect) = writes_then_a_read(&land);
        let mut out = Vec::new();
        serve_stream(&input[..], &mut out, "m", &land, "t").unwrap();
        check_landing(&land, &writes, &expect, &out);
    }

    /// The same through a socket, where requests are read ahead of the one
    /// carried out: still each in its place, in order.
    #[test]
    fn a_socket_reads_ahead_and_still_serves_in_order() {
        let land = Landing {
            mem: Mem::new(4 << 20),
            seen: Mutex::new(Vec::new()),
        };
        let (input, writes, expect) = writes_then_a_read(&land);
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let client = std::thread::spawn(move || {
            let mut s = theirs;
            s.write_all(&input).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).unwrap();
            out
        });
        serve_socket(&Sock::Unix(ours), "m", &land, "t").unwrap();
        let out = client.join().unwrap();
        check_landing(&land, &writes, &expect, &out);
    }

    #[test]
    fn old_clients_get_export_name_answer_and_simple_replies() {
        let mem = Mem::new(4096);
        let mut input = FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec(); // zeroes wanted
        proto::write_option(&mut input, OPT_EXPORT_NAME, b"m").unwrap();
        let read = Request {
            flags: 0,
            command: CMD_READ,
            cookie: 77,
            offset: 2,
            length: 3,
        };
        input.extend_from_slice(&read.encode());
        let bad = Request {
            offset: 4095,
            cookie: 78,
            ..read
        };
        input.extend_from_slice(&bad.encode());
        let mut out = Vec::new();
        serve_stream(&input[..], &mut out, "m", mem.as_ref(), "t").unwrap();

        let mut c = Cursor::new(&out);
        assert_eq!(c.u64(), Some(NBD_MAGIC));
        assert_eq!(c.u64(), Some(IHAVEOPT));
        assert_eq!(c.u16(), Some(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
        assert_eq!(c.u64(), Some(4096));
        let tflags = c.u16().unwrap();
        assert_eq!(tflags & TFLAG_READ_ONLY, 0);
        assert_ne!(tflags & TFLAG_SEND_FLUSH, 0);
        assert_eq!(c.take(124), Some(&[0u8; 124][..]));
        assert_eq!(c.u32(), Some(SIMPLE_REPLY_MAGIC));
        assert_eq!(c.u32(), Some(0));
        assert_eq!(c.u64(), Some(77));
        assert_eq!(c.take(3), Some(&[14u8, 21, 28][..]));
        assert_eq!(c.u32(), Some(SIMPLE_REPLY_MAGIC));
        assert_eq!(c.u32(), Some(EINVAL), "read past the end must fail");
        assert_eq!(c.u64(), Some(78));
        assert!(c.is_empty());
    }

    /// Writes sent to a read-only export anyway are refused with EPERM, never carried out,
    /// and the backend hears of each (the appliance counts them).
    #[test]
    fn writes_to_a_read_only_export_are_refused_and_told_to_the_backend() {
        let mem = Mem::new(4096);
        mem.set_writable(false);
        let mut input = FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        proto::write_option(&mut input, OPT_EXPORT_NAME, b"m").unwrap();
        let write = Request {
            flags: 0,
            command: CMD_WRITE,
            cookie: 5,
            offset: 0,
            length: 4,
        };
        input.extend_from_slice(&write.encode());
        input.extend_from_slice(&[9, 9, 9, 9]);
        let zeroes = Request {
            command: CMD_WRITE_ZEROES,
            cookie: 6,
            ..write
        };
        input.extend_from_slice(&zeroes.encode());
        let before = mem.snapshot();
        let mut out = Vec::new();
        serve_stream(&input[..], &mut out, "m", mem.as_ref(), "t").unwrap();
        let mut c = Cursor::new(&out);
        c.take(8 + 8 + 2 + 8);
        assert_ne!(c.u16().unwrap() & TFLAG_READ_ONLY, 0);
        c.take(124);
        for cookie in [5, 6] {
            assert_eq!(c.u32(), Some(SIMPLE_REPLY_MAGIC));
            assert_eq!(c.u32(), Some(EPERM));
            assert_eq!(c.u64(), Some(cookie));
        }
        assert_eq!(mem.snapshot(), before);
        assert_eq!(mem.refused_writes(), 2);
    }

    #[test]
    fn option_errors_are_replies_not_hangups() {
        let mem = Mem::new(4096);
        let mut input = (FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
            .to_be_bytes()
            .to_vec();
        proto::write_option(&mut input, OPT_SET_META_CONTEXT, &[1, 2]).unwrap(); // before structured
        proto::write_option(&mut input, 999, &[]).unwrap();
        proto::write_option(&mut input, OPT_GO, &[0, 0]).unwrap(); // truncated
        let mut go = Vec::new();
        put_str32(&mut go, "other");
        go.extend_from_slice(&0u16.to_be_bytes());
        proto::write_option(&mut input, OPT_INFO, &go).unwrap();
        proto::write_option(&mut input, OPT_LIST, &[]).unwrap();
        proto::write_option(&mut input, OPT_ABORT, &[]).unwrap();
        let mut out = Vec::new();
        serve_stream(&input[..], &mut out, "m", mem.as_ref(), "t").unwrap();
        let mut c = Cursor::new(&out[18..]);
        let mut replies = Vec::new();
        while !c.is_empty() {
            assert_eq!(c.u64(), Some(OPT_REPLY_MAGIC));
            let opt = c.u32().unwrap();
            let rep = c.u32().unwrap();
            let len = c.u32().unwrap() as usize;
            c.take(len).unwrap();
            replies.push((opt, rep));
        }
        assert_eq!(
            replies,
            vec![
                (OPT_SET_META_CONTEXT, REP_ERR_INVALID),
                (999, REP_ERR_UNSUP),
                (OPT_GO, REP_ERR_INVALID),
                (OPT_INFO, REP_ERR_UNKNOWN),
                (OPT_LIST, REP_SERVER),
                (OPT_LIST, REP_ACK),
                (OPT_ABORT, REP_ACK),
            ]
        );
    }

    #[test]
    fn mutated_client_streams_never_panic_the_server() {
        let mem = Mem::new(4096);
        let valid = client_prologue();
        // The unmutated stream must work, or the mutations prove nothing.
        serve_stream(&valid[..], io::sink(), "m", mem.as_ref(), "t").unwrap();
        assert_eq!(&mem.snapshot()[16..20], b"abcd");
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        for round in 0..4000 {
            let mut bytes = if round % 4 == 0 {
                (0..rng.below(300)).map(|_| rng.next() as u8).collect()
            } else {
                valid.clone()
            };
            for _ in 0..=rng.below(4) {
                match rng.below(3) {
                    0 if !bytes.is_empty() => {
                        let i = rng.below(bytes.len());
                        bytes[i] = rng.next() as u8;
                    }
                    1 => bytes.truncate(rng.below(bytes.len() + 1)),
                    _ => {
                        let i = rng.below(bytes.len() + 1);
                        bytes.insert(i, rng.next() as u8);
                    }
                }
            }
            let _ = serve_stream(&bytes[..], io::sink(), "m", mem.as_ref(), "fuzz");
        }
    }
}
