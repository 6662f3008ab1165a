//! Blocking NBD client: fixed-newstyle handshake (structured replies, meta
//! contexts, `NBD_OPT_GO` with a fallback to `NBD_OPT_EXPORT_NAME` for old
//! servers) and the transmission commands MotionGear needs.
//!
//! Calls block, but one large read or write goes out as a few requests in
//! flight at once (the server reads the next piece while the previous one
//! crosses the socket); their replies are matched by cookie in whatever
//! order they come. Every reply is checked against the request it answers;
//! anything out of step poisons the connection instead of returning wrong
//! data. Message layouts are documented in [`crate::proto`] (`mgear-nbd-proto`).
//!
//! A client may also let writes run ahead of their replies
//! ([`Client::set_write_behind`]): a writer that streams data (the host's
//! FAT engine appending to a capture on the appliance's medium) then waits
//! for the server once per window instead of once per write, which is what
//! a round trip through a busy machine's scheduler costs most.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;

use mgear_nbd_proto::proto::{self, *};
use mgear_nbd_proto::transport::Sock;
use mgear_nbd_proto::{Error, NbdUrl, Result, BASE_ALLOCATION};
use nix::sys::socket::{setsockopt, sockopt};

/// Requests in flight at once for a large read or write.
const PIPELINE_DEPTH: usize = 4;
/// Transfers are not split below this size: smaller requests cost more in
/// per-request overhead than pipelining wins back.
const MIN_PIECE: usize = 256 * 1024;
/// Pieces of a split transfer start on multiples of this (relative to the
/// export), so that only the first and the last piece of an unaligned
/// transfer are partial blocks: a server that stores whole blocks (the
/// appliance's block service, 512-byte sectors) reads and rewrites a
/// partial one for every piece that starts or ends inside a block.
const PIECE_ALIGN: u64 = 4096;
/// Write requests in flight at most with write-behind: their replies (16
/// bytes each, or a structured chunk) must fit the server's socket buffer
/// while we are still sending payload, or both sides would block.
const MAX_IN_FLIGHT: usize = 256;

/// What to negotiate when connecting.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Metadata contexts to select, e.g. `base:allocation` or
    /// `qemu:dirty-bitmap:NAME`; connecting fails if the server lacks one.
    pub meta_contexts: Vec<String>,
    /// Refuse writes locally even if the server would accept them.
    pub read_only: bool,
}

/// One block-status descriptor: `len` bytes sharing `flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    pub flags: u32,
}

/// How long one request may go unanswered before the connection is given up:
/// a server (or the disk, appliance or cluster behind it) that stopped
/// answering would otherwise hang a capture or ingest for ever. Generous, as
/// a flush of a large write-back cache may take minutes;
/// `MGEAR_NBD_TIMEOUT` (seconds) sets another.
pub const DEFAULT_IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

fn io_timeout() -> std::time::Duration {
    std::env::var("MGEAR_NBD_TIMEOUT")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(DEFAULT_IO_TIMEOUT, std::time::Duration::from_secs)
}

/// A write sent and not answered yet (write-behind).
#[derive(Debug, Clone, Copy)]
struct InFlight {
    cookie: u64,
    offset: u64,
    len: u32,
}

/// A negotiated connection to one export.
pub struct Client {
    reader: BufReader<Box<dyn Read + Send>>,
    writer: BufWriter<Box<dyn Write + Send>>,
    sock: Option<Sock>,
    peer: String,
    size: u64,
    tflags: u16,
    read_only: bool,
    structured: bool,
    /// Negotiated contexts and the ids the server gave them.
    contexts: Vec<(u32, String)>,
    context_names: Vec<String>,
    min_block: u32,
    max_payload: u32,
    next_cookie: u64,
    poisoned: bool,
    disconnected: bool,
    /// Bytes of writes that may be in flight unanswered; 0: every write
    /// waits for its reply.
    write_behind: u64,
    in_flight: Vec<InFlight>,
    in_flight_bytes: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("peer", &self.peer)
            .field("size", &self.size)
            .field("read_only", &self.read_only)
            .field("structured", &self.structured)
            .field("meta_contexts", &self.context_names)
            .finish()
    }
}

/// Which reply shape a command expects.
enum ReplyBody<'a> {
    /// No payload (write, flush, write-zeroes).
    Nothing,
    /// Read data into this buffer.
    Read(&'a mut [u8]),
    /// Block status for this context id.
    Status(u32, &'a mut Vec<Extent>),
}

/// A request sent and not yet fully answered.
struct Pending<'a> {
    cookie: u64,
    cmd: u16,
    offset: u64,
    len: u32,
    body: ReplyBody<'a>,
    /// Byte ranges (relative to `offset`) delivered by read chunks.
    covered: Vec<(u64, u64)>,
    got_status: bool,
    /// The first error the server reported for this request.
    error: Option<(u32, String)>,
    /// Some structured chunk arrived (a simple reply may no longer follow).
    started: bool,
    done: bool,
}

impl<'a> Pending<'a> {
    fn new(cookie: u64, cmd: u16, offset: u64, len: u32, body: ReplyBody<'a>) -> Self {
        Pending {
            cookie,
            cmd,
            offset,
            len,
            body,
            covered: Vec::new(),
            got_status: false,
            error: None,
            started: false,
            done: false,
        }
    }
}

fn cmd_name(cmd: u16) -> &'static str {
    match cmd {
        CMD_READ => "NBD_CMD_READ",
        CMD_WRITE => "NBD_CMD_WRITE",
        CMD_FLUSH => "NBD_CMD_FLUSH",
        CMD_WRITE_ZEROES => "NBD_CMD_WRITE_ZEROES",
        CMD_BLOCK_STATUS => "NBD_CMD_BLOCK_STATUS",
        _ => "NBD command",
    }
}

fn meta_hint(context: &str) -> String {
    if let Some(name) = context.strip_prefix("qemu:dirty-bitmap:") {
        format!("start qemu-nbd with -B {name} (the bitmap must exist in the image: qemu-img bitmap --add)")
    } else if context == BASE_ALLOCATION {
        "the server cannot report allocation; read the whole range instead".to_string()
    } else {
        "check the context name and the server's options".to_string()
    }
}

/// Result of one round of handshake option negotiation.
struct Export {
    size: u64,
    tflags: u16,
    min_block: u32,
    max_payload: u32,
}

impl Client {
    /// Connects to `url`, negotiates and selects the export.
    pub fn connect(url: &NbdUrl, opts: &ConnectOptions) -> Result<Client> {
        Client::connect_within(url, opts, io_timeout())
    }

    /// [`Client::connect`] whose requests (the handshake too) fail after `timeout` without
    /// an answer: for a quick look at an export that may serve one client only.
    pub fn connect_within(
        url: &NbdUrl,
        opts: &ConnectOptions,
        timeout: std::time::Duration,
    ) -> Result<Client> {
        let server = url.to_string();
        let sock = match url {
            NbdUrl::Tcp { host, port, .. } => {
                let s = TcpStream::connect((host.as_str(), *port)).map_err(|source| {
                    Error::Connect {
                        server: server.clone(),
                        source,
                    }
                })?;
                // Small request headers must not wait for Nagle.
                s.set_nodelay(true).map_err(|source| Error::Connect {
                    server: server.clone(),
                    source,
                })?;
                Sock::Tcp(s)
            }
            NbdUrl::Unix { socket, .. } => Sock::Unix(UnixStream::connect(socket).map_err(
                |source| Error::Connect {
                    server: server.clone(),
                    source,
                },
            )?),
        };
        let io_err = |source| Error::Io {
            peer: server.clone(),
            source,
        };
        sock.set_timeouts(Some(timeout)).map_err(io_err)?;
        let r = sock.try_clone().map_err(io_err)?;
        let w = sock.try_clone().map_err(io_err)?;
        let mut c = Client::handshake(Box::new(r), Box::new(w), &server, url.export(), opts)?;
        c.sock = Some(sock);
        Ok(c)
    }

    /// Negotiates over an already-open byte stream (custom transports, tests
    /// and the fuzz target); `peer` names the server in messages.
    pub fn handshake(
        reader: Box<dyn Read + Send>,
        writer: Box<dyn Write + Send>,
        peer: &str,
        export: &str,
        opts: &ConnectOptions,
    ) -> Result<Client> {
        let mut c = Client {
            reader: BufReader::with_capacity(256 * 1024, reader),
            writer: BufWriter::with_capacity(64 * 1024, writer),
            sock: None,
            peer: peer.to_string(),
            size: 0,
            tflags: 0,
            read_only: opts.read_only,
            structured: false,
            contexts: Vec::new(),
            context_names: Vec::new(),
            min_block: 1,
            max_payload: MAX_PAYLOAD,
            next_cookie: 1,
            poisoned: false,
            disconnected: false,
            write_behind: 0,
            in_flight: Vec::new(),
            in_flight_bytes: 0,
        };
        let e = c.negotiate(export, opts);
        match e {
            Ok(export) => {
                c.size = export.size;
                // Without HAS_FLAGS the other bits carry no meaning.
                c.tflags = if export.tflags & TFLAG_HAS_FLAGS != 0 {
                    export.tflags
                } else {
                    0
                };
                c.read_only |= export.tflags & TFLAG_READ_ONLY != 0;
                c.min_block = export.min_block;
                c.max_payload = export.max_payload;
                Ok(c)
            }
            Err(e) => {
                // Nothing useful can be sent on a half-negotiated connection.
                c.disconnected = true;
                Err(e)
            }
        }
    }

    fn io(&self, source: io::Error) -> Error {
        // A socket timeout reads as "Resource temporarily unavailable": say what it means.
        let source = match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no answer within {} s: the server, or the disk behind it, stopped \
                         responding",
                    io_timeout().as_secs()
                ),
            ),
            _ => source,
        };
        Error::Io {
            peer: self.peer.clone(),
            source,
        }
    }

    fn protocol(&self, detail: impl Into<String>) -> Error {
        Error::Protocol {
            peer: self.peer.clone(),
            detail: detail.into(),
        }
    }

    fn negotiate(&mut self, export: &str, opts: &ConnectOptions) -> Result<Export> {
        let magic = proto::read_u64(&mut self.reader).map_err(|e| self.io(e))?;
        if magic != NBD_MAGIC {
            return Err(self.protocol("not an NBD server (bad greeting magic)"));
        }
        let style = proto::read_u64(&mut self.reader).map_err(|e| self.io(e))?;
        if style == OLDSTYLE_MAGIC {
            return Err(Error::Unsupported {
                server: self.peer.clone(),
                what: "oldstyle negotiation is obsolete; use a newstyle server (qemu-nbd, nbdkit)"
                    .into(),
            });
        }
        if style != IHAVEOPT {
            return Err(self.protocol("bad newstyle magic in greeting"));
        }
        let hflags = proto::read_u16(&mut self.reader).map_err(|e| self.io(e))?;
        let fixed = hflags & FLAG_FIXED_NEWSTYLE != 0;
        let no_zeroes = hflags & FLAG_NO_ZEROES != 0;
        let mut cflags = 0u32;
        if fixed {
            cflags |= FLAG_C_FIXED_NEWSTYLE;
        }
        if no_zeroes {
            cflags |= FLAG_C_NO_ZEROES;
        }
        self.send(&cflags.to_be_bytes())?;

        if !fixed {
            // Without fixed newstyle the only safe option is EXPORT_NAME.
            if let Some(ctx) = opts.meta_contexts.first() {
                return Err(Error::MetaContextUnsupported {
                    server: self.peer.clone(),
                    context: ctx.clone(),
                    hint: "the server does not speak fixed newstyle NBD".into(),
                });
            }
            return self.export_name(export, no_zeroes);
        }

        self.structured = matches!(self.option(OPT_STRUCTURED_REPLY, &[])?, (REP_ACK, _));

        if !opts.meta_contexts.is_empty() {
            self.set_meta_contexts(export, &opts.meta_contexts)?;
        }

        let mut data = Vec::new();
        put_str32(&mut data, export);
        data.extend_from_slice(&1u16.to_be_bytes());
        data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        self.send_option(OPT_GO, &data)?;
        let mut info: Option<(u64, u16)> = None;
        let mut block = (1u32, MAX_PAYLOAD);
        loop {
            let (rep, data) = self.option_reply(OPT_GO)?;
            match rep {
                REP_ACK => break,
                REP_INFO => {
                    let mut c = Cursor::new(&data);
                    match c.u16() {
                        Some(INFO_EXPORT) => {
                            let (Some(size), Some(flags), true) = (c.u64(), c.u16(), c.is_empty())
                            else {
                                return Err(self.protocol("NBD_INFO_EXPORT reply is not 12 bytes"));
                            };
                            info = Some((size, flags));
                        }
                        Some(INFO_BLOCK_SIZE) => {
                            let (Some(min), Some(_pref), Some(max), true) =
                                (c.u32(), c.u32(), c.u32(), c.is_empty())
                            else {
                                return Err(
                                    self.protocol("NBD_INFO_BLOCK_SIZE reply is not 14 bytes")
                                );
                            };
                            if min == 0 || !min.is_power_of_two() || min > 64 * 1024 || max < min {
                                return Err(self.protocol(format!(
                                    "nonsensical block sizes: minimum {min}, maximum {max}"
                                )));
                            }
                            block = (min, max.min(MAX_PAYLOAD) / min * min);
                        }
                        Some(_) => {} // Other information is optional to understand.
                        None => return Err(self.protocol("empty NBD_REP_INFO")),
                    }
                }
                REP_ERR_UNSUP => {
                    // A server predating NBD_OPT_GO: the old way still works.
                    return self.export_name(export, no_zeroes);
                }
                REP_ERR_UNKNOWN => return Err(self.no_such_export(export)),
                rep if rep & REP_FLAG_ERROR != 0 => {
                    return Err(Error::OptionRefused {
                        server: self.peer.clone(),
                        option: option_name(OPT_GO),
                        message: String::from_utf8_lossy(&data).into_owned(),
                    })
                }
                rep => {
                    return Err(self.protocol(format!("unexpected reply type {rep} to NBD_OPT_GO")))
                }
            }
        }
        let (size, tflags) =
            info.ok_or_else(|| self.protocol("NBD_OPT_GO succeeded without NBD_INFO_EXPORT"))?;
        Ok(Export {
            size,
            tflags,
            min_block: block.0,
            max_payload: block.1,
        })
    }

    /// Names of exports, best effort, for the "no such export" message.
    fn no_such_export(&mut self, export: &str) -> Error {
        let mut names = Vec::new();
        if self.send_option(OPT_LIST, &[]).is_ok() {
            while let Ok((REP_SERVER, data)) = self.option_reply(OPT_LIST) {
                if let Some(name) = Cursor::new(&data).str32() {
                    names.push(format!("'{name}'"));
                }
            }
        }
        Error::NoSuchExport {
            server: self.peer.clone(),
            export: export.to_string(),
            available: if names.is_empty() {
                String::new()
            } else {
                format!(" (it offers: {})", names.join(", "))
            },
        }
    }

    fn export_name(&mut self, export: &str, no_zeroes: bool) -> Result<Export> {
        self.send_option(OPT_EXPORT_NAME, export.as_bytes())?;
        let mut b = [0u8; 10];
        if let Err(e) = self.reader.read_exact(&mut b) {
            return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
                // Servers close the connection on an unknown name here.
                Error::NoSuchExport {
                    server: self.peer.clone(),
                    export: export.to_string(),
                    available: String::new(),
                }
            } else {
                self.io(e)
            });
        }
        if !no_zeroes {
            proto::skip(&mut self.reader, 124).map_err(|e| self.io(e))?;
        }
        let mut size = [0u8; 8];
        size.copy_from_slice(&b[..8]);
        Ok(Export {
            size: u64::from_be_bytes(size),
            tflags: u16::from_be_bytes([b[8], b[9]]),
            min_block: 1,
            max_payload: MAX_PAYLOAD,
        })
    }

    fn set_meta_contexts(&mut self, export: &str, wanted: &[String]) -> Result<()> {
        let refuse = |c: &Client, ctx: &str| Error::MetaContextUnsupported {
            server: c.peer.clone(),
            context: ctx.to_string(),
            hint: meta_hint(ctx),
        };
        if !self.structured {
            return Err(refuse(self, &wanted[0]));
        }
        let mut data = Vec::new();
        put_str32(&mut data, export);
        data.extend_from_slice(&(wanted.len() as u32).to_be_bytes());
        for q in wanted {
            put_str32(&mut data, q);
        }
        self.send_option(OPT_SET_META_CONTEXT, &data)?;
        loop {
            let (rep, data) = self.option_reply(OPT_SET_META_CONTEXT)?;
            match rep {
                REP_ACK => break,
                REP_META_CONTEXT => {
                    let mut c = Cursor::new(&data);
                    let id = c
                        .u32()
                        .ok_or_else(|| self.protocol("short NBD_REP_META_CONTEXT"))?;
                    let name = String::from_utf8(c.rest().to_vec())
                        .map_err(|_| self.protocol("meta context name is not UTF-8"))?;
                    if !wanted.contains(&name) {
                        return Err(
                            self.protocol(format!("server selected unrequested context '{name}'"))
                        );
                    }
                    self.contexts.push((id, name));
                }
                REP_ERR_UNKNOWN => return Err(self.no_such_export(export)),
                rep if rep & REP_FLAG_ERROR != 0 => return Err(refuse(self, &wanted[0])),
                rep => {
                    return Err(self.protocol(format!(
                        "unexpected reply type {rep} to NBD_OPT_SET_META_CONTEXT"
                    )))
                }
            }
        }
        for w in wanted {
            if !self.contexts.iter().any(|(_, n)| n == w) {
                return Err(refuse(self, w));
            }
        }
        self.context_names = wanted.to_vec();
        Ok(())
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        let r = self
            .writer
            .write_all(bytes)
            .and_then(|_| self.writer.flush());
        r.map_err(|e| self.io(e))
    }

    fn send_option(&mut self, option: u32, data: &[u8]) -> Result<()> {
        let r =
            proto::write_option(&mut self.writer, option, data).and_then(|_| self.writer.flush());
        r.map_err(|e| self.io(e))
    }

    /// Reads one option reply to `option`: (reply type, data).
    fn option_reply(&mut self, option: u32) -> Result<(u32, Vec<u8>)> {
        let magic = proto::read_u64(&mut self.reader).map_err(|e| self.io(e))?;
        let opt = proto::read_u32(&mut self.reader).map_err(|e| self.io(e))?;
        let rep = proto::read_u32(&mut self.reader).map_err(|e| self.io(e))?;
        let len = proto::read_u32(&mut self.reader).map_err(|e| self.io(e))?;
        if magic != OPT_REPLY_MAGIC {
            return Err(self.protocol("bad option reply magic"));
        }
        if opt != option {
            return Err(self.protocol(format!(
                "reply for option {opt} while waiting for {}",
                option_name(option)
            )));
        }
        if len > MAX_OPTION_DATA {
            return Err(self.protocol(format!("option reply of {len} bytes is too large")));
        }
        let data = proto::read_vec(&mut self.reader, len as usize).map_err(|e| self.io(e))?;
        Ok((rep, data))
    }

    /// Sends an option expecting a single reply.
    fn option(&mut self, option: u32, data: &[u8]) -> Result<(u32, Vec<u8>)> {
        self.send_option(option, data)?;
        let (rep, data) = self.option_reply(option)?;
        if rep != REP_ACK && rep & REP_FLAG_ERROR == 0 {
            return Err(self.protocol(format!(
                "unexpected reply type {rep} to {}",
                option_name(option)
            )));
        }
        Ok((rep, data))
    }

    /// Export size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True if the server advertised a read-only export or the caller asked for one.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The metadata contexts negotiated (all of those requested).
    pub fn meta_contexts(&self) -> &[String] {
        &self.context_names
    }

    /// The server's minimum and maximum request sizes in use.
    pub fn block_sizes(&self) -> (u32, u32) {
        (self.min_block, self.max_payload)
    }

    /// Whether the server takes NBD_CMD_WRITE_ZEROES ([`Client::write_zeroes`] then costs a
    /// request, not the zero bytes, and a thin export can stay thin).
    pub fn can_write_zeroes(&self) -> bool {
        self.tflags & TFLAG_SEND_WRITE_ZEROES != 0
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::OutOfRange {
                server: self.peer.clone(),
                offset,
                len,
                size: self.size,
            }),
        }
    }

    fn check_usable(&self) -> Result<()> {
        if self.poisoned || self.disconnected {
            return Err(Error::Poisoned {
                server: self.peer.clone(),
            });
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_usable()?;
        self.check_range(offset, buf.len() as u64)?;
        // The server may answer requests in any order: a read must not
        // overtake a write it could overlap.
        self.settle()?;
        let min = u64::from(self.min_block);
        if min > 1 && (offset | buf.len() as u64) & (min - 1) != 0 {
            // The server insists on aligned requests: read the covering blocks.
            let start = offset / min * min;
            let end = (offset + buf.len() as u64).div_ceil(min) * min;
            let mut tmp = vec![0u8; (end - start) as usize];
            self.read_aligned(start, &mut tmp)?;
            let skip = (offset - start) as usize;
            buf.copy_from_slice(&tmp[skip..skip + buf.len()]);
            return Ok(());
        }
        self.read_aligned(offset, buf)
    }

    /// Request size for a transfer of `total` bytes: split so that
    /// [`PIPELINE_DEPTH`] requests share it, within the server's limits.
    fn piece_size(&self, total: usize) -> usize {
        let min = self.min_block as usize;
        let max = self.max_payload as usize;
        (total
            .div_ceil(PIPELINE_DEPTH)
            .max(MIN_PIECE)
            .min(max)
            .div_ceil(min)
            * min)
            .min(max)
    }

    /// Where pieces of a split transfer may end: [`PIECE_ALIGN`], or the
    /// server's minimum block if that is larger (both powers of two).
    fn piece_align(&self) -> u64 {
        PIECE_ALIGN.max(u64::from(self.min_block))
    }

    /// Reads with up to [`PIPELINE_DEPTH`] requests in flight, so the server
    /// fetches the next piece while the previous one crosses the socket.
    /// Read requests carry no payload, so sending a window of them before
    /// reading any reply cannot deadlock.
    fn read_aligned(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let piece = self.piece_size(buf.len());
        let lens = pieces(
            offset,
            buf.len(),
            piece,
            self.piece_align(),
            self.max_payload as usize,
        );
        let mut at = offset;
        let mut rest = buf;
        for window in lens.chunks(PIPELINE_DEPTH) {
            let mut pending = Vec::with_capacity(PIPELINE_DEPTH);
            for &n in window {
                let (chunk, tail) = std::mem::take(&mut rest).split_at_mut(n);
                rest = tail;
                let len = chunk.len() as u32;
                let cookie = self.send_request(CMD_READ, 0, at, len, None)?;
                pending.push(Pending::new(
                    cookie,
                    CMD_READ,
                    at,
                    len,
                    ReplyBody::Read(chunk),
                ));
                at += u64::from(len);
            }
            self.await_replies(&mut pending)?;
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        self.check_usable()?;
        if self.read_only {
            return Err(Error::ReadOnly {
                server: self.peer.clone(),
            });
        }
        Ok(())
    }

    /// Writes `data` at `offset`. With write-behind on
    /// ([`set_write_behind`](Self::set_write_behind)) it returns once the
    /// request is sent; a failure is reported by a later call.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_writable()?;
        self.check_range(offset, data.len() as u64)?;
        let min = u64::from(self.min_block);
        if min > 1 && (offset | data.len() as u64) & (min - 1) != 0 {
            // Read-modify-write of the covering blocks for strict servers.
            self.settle()?;
            let start = offset / min * min;
            let end = (offset + data.len() as u64).div_ceil(min) * min;
            let mut tmp = vec![0u8; (end - start) as usize];
            self.read_aligned(start, &mut tmp)?;
            let skip = (offset - start) as usize;
            tmp[skip..skip + data.len()].copy_from_slice(data);
            return self.write_aligned(start, &tmp);
        }
        self.write_aligned(offset, data)
    }

    /// Writes with up to [`PIPELINE_DEPTH`] requests in flight (or, with
    /// write-behind, the window's worth). Replies to writes are a few
    /// bytes, so a server never blocks sending replies we have not read yet
    /// while we are still sending payload: no deadlock.
    fn write_aligned(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if self.write_behind > 0 {
            // Writes already overlap across calls: split only at the
            // server's limit (fewer requests, replies and wake-ups).
            let max = self.max_payload as usize;
            let lens = pieces(offset, data.len(), max, self.piece_align(), max);
            return self.write_behind_pieces(offset, data, &lens);
        }
        let piece = self.piece_size(data.len());
        let lens = pieces(
            offset,
            data.len(),
            piece,
            self.piece_align(),
            self.max_payload as usize,
        );
        let mut at = offset;
        let mut rest = data;
        for window in lens.chunks(PIPELINE_DEPTH) {
            let mut pending = Vec::with_capacity(PIPELINE_DEPTH);
            for &n in window {
                let (chunk, tail) = rest.split_at(n);
                rest = tail;
                let len = chunk.len() as u32;
                let cookie = self.send_request(CMD_WRITE, 0, at, len, Some(chunk))?;
                pending.push(Pending::new(cookie, CMD_WRITE, at, len, ReplyBody::Nothing));
                at += u64::from(len);
            }
            self.await_replies(&mut pending)?;
        }
        Ok(())
    }

    /// Sends the pieces of a write without waiting for their replies,
    /// collecting replies first when the window is full or a piece would
    /// overlap a write still in flight (the server may reorder requests,
    /// and the later bytes must win).
    fn write_behind_pieces(&mut self, offset: u64, data: &[u8], lens: &[usize]) -> Result<()> {
        let mut at = offset;
        let mut rest = data;
        for &n in lens {
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let end = at + n as u64;
            let overlaps = self
                .in_flight
                .iter()
                .any(|w| w.offset < end && at < w.offset + u64::from(w.len));
            if overlaps {
                self.settle()?;
            } else if self.in_flight.len() >= MAX_IN_FLIGHT
                || self.in_flight_bytes + n as u64 > self.write_behind
            {
                self.make_room(n as u64)?;
            }
            let len = n as u32;
            let cookie = self.send_request(CMD_WRITE, 0, at, len, Some(chunk))?;
            self.in_flight.push(InFlight {
                cookie,
                offset: at,
                len,
            });
            self.in_flight_bytes += n as u64;
            at = end;
        }
        Ok(())
    }

    /// Lets writes return once sent, with up to `bytes` of them unanswered
    /// (0, the default, turns it off: each write waits for its replies).
    /// Their replies are collected before any other command goes out (a
    /// read, flush, write-zeroes or block status), before a write that
    /// overlaps one in flight, and when the window is full; a write the
    /// server refused fails the call that collects its reply, naming the
    /// write's offset and length. [`flush`](Self::flush) collects them
    /// first (NBD's flush covers only answered writes), so a flush that
    /// succeeds still means every earlier write is durable. Turning it off
    /// collects what is in flight.
    pub fn set_write_behind(&mut self, bytes: u64) -> Result<()> {
        self.write_behind = bytes;
        if bytes == 0 {
            return self.settle();
        }
        // A socket buffer smaller than the window makes every send wait
        // for the server to read (a Unix socket's default is 208 KiB, less
        // than one 256 KiB piece). The kernel caps the size (net.core.
        // wmem_max); a refusal only costs speed.
        let want = usize::try_from(bytes).unwrap_or(usize::MAX).min(1 << 30);
        let _ = match &self.sock {
            Some(Sock::Unix(s)) => setsockopt(s, sockopt::SndBuf, &want),
            Some(Sock::Tcp(s)) => setsockopt(s, sockopt::SndBuf, &want),
            None => Ok(()),
        };
        Ok(())
    }

    /// Waits for the replies to every write still in flight
    /// ([`set_write_behind`](Self::set_write_behind)); the first refused
    /// one is the error.
    pub fn settle(&mut self) -> Result<()> {
        if self.in_flight.is_empty() {
            return Ok(());
        }
        self.check_usable()?;
        let mut pending: Vec<Pending<'_>> = self
            .in_flight
            .drain(..)
            .map(|w| Pending::new(w.cookie, CMD_WRITE, w.offset, w.len, ReplyBody::Nothing))
            .collect();
        self.in_flight_bytes = 0;
        self.await_replies(&mut pending)
    }

    /// Collects replies to writes in flight until `n` more bytes fit the
    /// window: only as many as needed, so the server always has the next
    /// write queued while we wait (a server working in order answers the
    /// oldest first). A refused write among them is the error.
    fn make_room(&mut self, n: u64) -> Result<()> {
        self.check_usable()?;
        let (window, total) = (self.write_behind, self.in_flight_bytes);
        let mut pending: Vec<Pending<'_>> = self
            .in_flight
            .iter()
            .map(|w| Pending::new(w.cookie, CMD_WRITE, w.offset, w.len, ReplyBody::Nothing))
            .collect();
        let enough = |p: &[Pending<'_>]| {
            let answered: u64 = p.iter().filter(|p| p.done).map(|p| u64::from(p.len)).sum();
            let waiting = p.iter().filter(|p| !p.done).count();
            total - answered + n <= window && waiting < MAX_IN_FLIGHT
        };
        if let Err(e) = self.collect_replies_until(&mut pending, &enough) {
            self.poisoned = true;
            self.in_flight.clear();
            self.in_flight_bytes = 0;
            return Err(e);
        }
        let mut refused = None;
        let mut still = Vec::with_capacity(self.in_flight.len());
        for (w, p) in self.in_flight.iter().zip(pending.iter_mut()) {
            if !p.done {
                still.push(*w);
            } else if let (None, Some((code, message))) = (&refused, p.error.take()) {
                refused = Some((*w, code, message));
            }
        }
        self.in_flight_bytes = still.iter().map(|w| u64::from(w.len)).sum();
        self.in_flight = still;
        match refused {
            None => Ok(()),
            Some((w, code, message)) => {
                Err(self.command_error(CMD_WRITE, w.offset, u64::from(w.len), code, &message))
            }
        }
    }

    /// Makes `len` bytes at `offset` read as zeroes: NBD_CMD_WRITE_ZEROES when
    /// the server offers it, otherwise by writing zero-filled buffers.
    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        let min = u64::from(self.min_block);
        // `min` is a validated power of two.
        let aligned = (offset | len) & (min - 1) == 0;
        if self.tflags & TFLAG_SEND_WRITE_ZEROES == 0 || !aligned {
            let zeroes = vec![0u8; len.min(u64::from(self.max_payload)) as usize];
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(zeroes.len() as u64) as usize;
                self.write_at(offset + done, &zeroes[..n])?;
                done += n as u64;
            }
            return Ok(());
        }
        let step = u64::from(self.max_payload);
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(step) as u32;
            self.command(
                CMD_WRITE_ZEROES,
                0,
                offset + done,
                n,
                None,
                ReplyBody::Nothing,
            )?;
            done += u64::from(n);
        }
        Ok(())
    }

    /// Asks the server to make completed writes durable. A server that does
    /// not advertise flush has no volatile cache, so this is then a no-op.
    pub fn flush(&mut self) -> Result<()> {
        self.check_usable()?;
        if self.tflags & TFLAG_SEND_FLUSH == 0 {
            return Ok(());
        }
        self.command(CMD_FLUSH, 0, 0, 0, None, ReplyBody::Nothing)
    }

    /// Block status of `context` from `offset` for up to `len` bytes. The
    /// server may describe less than asked (callers loop) or, for the last
    /// extent, a little more.
    pub fn block_status(&mut self, context: &str, offset: u64, len: u32) -> Result<Vec<Extent>> {
        self.check_usable()?;
        let id = self
            .contexts
            .iter()
            .find(|(_, n)| n == context)
            .map(|(id, _)| *id)
            .ok_or_else(|| Error::MetaContextUnsupported {
                server: self.peer.clone(),
                context: context.to_string(),
                hint: format!(
                    "it was not negotiated; connect with ConnectOptions::meta_contexts containing it ({})",
                    meta_hint(context)
                ),
            })?;
        self.check_range(offset, u64::from(len))?;
        let mut extents = Vec::new();
        if len == 0 {
            return Ok(extents);
        }
        self.command(
            CMD_BLOCK_STATUS,
            0,
            offset,
            len,
            None,
            ReplyBody::Status(id, &mut extents),
        )?;
        Ok(extents)
    }

    /// Walks `context` over `[off, off+len)` (clamped to the export),
    /// repeating requests until the range is covered. Yields (offset, len, flags).
    fn walk_status(&mut self, context: &str, off: u64, len: u64) -> Result<Vec<(u64, u64, u32)>> {
        let end = off.saturating_add(len).min(self.size);
        let mut out: Vec<(u64, u64, u32)> = Vec::new();
        let mut cur = off;
        // Large but aligned requests keep servers with coarse granularity happy.
        const STEP: u64 = 1 << 30;
        while cur < end {
            let req = (end - cur).min(STEP) as u32;
            let extents = self.block_status(context, cur, req)?;
            let before = cur;
            for e in extents {
                if cur >= end {
                    break;
                }
                if e.len == 0 {
                    self.poisoned = true;
                    return Err(self.protocol("block status extent of length 0"));
                }
                let l = e.len.min(end - cur);
                match out.last_mut() {
                    Some(last) if last.2 == e.flags && last.0 + last.1 == cur => last.1 += l,
                    _ => out.push((cur, l, e.flags)),
                }
                cur += l;
            }
            if cur == before {
                self.poisoned = true;
                return Err(self.protocol("block status reply described no bytes"));
            }
        }
        Ok(out)
    }

    /// Allocation map of `[off, off+len)` from `base:allocation` (which must
    /// have been negotiated), merged into maximal runs of
    /// `(offset, len, data, zero)`: `data` is false for holes, `zero` is true
    /// where the range reads as zeroes.
    pub fn allocated_ranges(&mut self, off: u64, len: u64) -> Result<Vec<(u64, u64, bool, bool)>> {
        Ok(self
            .walk_status(BASE_ALLOCATION, off, len)?
            .into_iter()
            .map(|(offset, len, flags)| {
                (
                    offset,
                    len,
                    flags & STATE_HOLE == 0,
                    flags & STATE_ZERO != 0,
                )
            })
            .collect())
    }

    /// Ranges (offset, len) marked dirty in `qemu:dirty-bitmap:<bitmap>`
    /// within `[off, off+len)`, merged. The context must have been negotiated.
    pub fn dirty_ranges(&mut self, bitmap: &str, off: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        let ctx = format!("qemu:dirty-bitmap:{bitmap}");
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (o, l, flags) in self.walk_status(&ctx, off, len)? {
            if flags & STATE_DIRTY == 0 {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.0 + last.1 == o => last.1 += l,
                _ => out.push((o, l)),
            }
        }
        Ok(out)
    }

    /// Ends the session politely (NBD_CMD_DISC) and closes the connection,
    /// after collecting the replies to writes still in flight.
    pub fn disconnect(mut self) -> Result<()> {
        self.check_usable()?;
        self.settle()?;
        self.disconnected = true;
        let req = Request {
            flags: 0,
            command: CMD_DISC,
            cookie: self.next_cookie,
            offset: 0,
            length: 0,
        };
        self.send(&req.encode())?;
        if let Some(s) = &self.sock {
            s.shutdown();
        }
        Ok(())
    }

    /// Sends one request header (and WRITE payload) without waiting.
    fn send_request(
        &mut self,
        cmd: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: Option<&[u8]>,
    ) -> Result<u64> {
        let cookie = self.next_cookie;
        self.next_cookie = self.next_cookie.wrapping_add(1);
        let req = Request {
            flags,
            command: cmd,
            cookie,
            offset,
            length: len,
        };
        let sent = self
            .writer
            .write_all(&req.encode())
            .and_then(|_| payload.map_or(Ok(()), |p| self.writer.write_all(p)))
            .and_then(|_| self.writer.flush());
        if let Err(e) = sent {
            self.poisoned = true;
            return Err(self.io(e));
        }
        Ok(cookie)
    }

    /// Sends one command and reads its whole reply (after the replies to
    /// writes still in flight: see [`Client::set_write_behind`]).
    fn command(
        &mut self,
        cmd: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: Option<&[u8]>,
        body: ReplyBody<'_>,
    ) -> Result<()> {
        self.settle()?;
        let cookie = self.send_request(cmd, flags, offset, len, payload)?;
        let mut pending = [Pending::new(cookie, cmd, offset, len, body)];
        self.await_replies(&mut pending)
    }

    /// Reads the replies to every request in `pending`, in whatever order
    /// the server sends them. All replies are consumed before a
    /// server-reported error is returned, so the connection stays in step;
    /// anything malformed poisons it.
    fn await_replies(&mut self, pending: &mut [Pending<'_>]) -> Result<()> {
        if let Err(e) = self.collect_replies(pending) {
            self.poisoned = true;
            return Err(e);
        }
        for p in pending.iter_mut() {
            if let Some((code, message)) = p.error.take() {
                return Err(self.command_error(p.cmd, p.offset, u64::from(p.len), code, &message));
            }
        }
        Ok(())
    }

    /// The error for a command the server refused with `code`.
    fn command_error(&self, cmd: u16, offset: u64, len: u64, code: u32, message: &str) -> Error {
        Error::Command {
            server: self.peer.clone(),
            command: cmd_name(cmd),
            offset,
            len,
            code,
            name: errno_name(code),
            message: if message.is_empty() {
                String::new()
            } else {
                format!(": {message}")
            },
        }
    }

    fn collect_replies(&mut self, pending: &mut [Pending<'_>]) -> Result<()> {
        self.collect_replies_until(pending, &|_| false)
    }

    /// Reads replies for `pending` until all are done or `enough` says so.
    fn collect_replies_until(
        &mut self,
        pending: &mut [Pending<'_>],
        enough: &dyn Fn(&[Pending<'_>]) -> bool,
    ) -> Result<()> {
        while pending.iter().any(|p| !p.done) && !enough(pending) {
            let magic = proto::read_u32(&mut self.reader).map_err(|e| self.io(e))?;
            if magic == SIMPLE_REPLY_MAGIC {
                let err = proto::read_u32(&mut self.reader).map_err(|e| self.io(e))?;
                let cookie = proto::read_u64(&mut self.reader).map_err(|e| self.io(e))?;
                let p = self.find_pending(pending, cookie)?;
                if p.started {
                    return Err(self.protocol("simple reply in the middle of a structured reply"));
                }
                p.done = true;
                if err != 0 {
                    p.error = Some((err, String::new()));
                    continue;
                }
                match &mut p.body {
                    ReplyBody::Nothing => {}
                    ReplyBody::Read(buf) => {
                        if self.structured {
                            return Err(self.protocol(
                                "simple reply with data to a read after structured replies were negotiated",
                            ));
                        }
                        self.reader.read_exact(buf).map_err(|e| self.io(e))?;
                        let n = buf.len() as u64;
                        p.covered.push((0, n));
                    }
                    ReplyBody::Status(..) => {
                        return Err(
                            self.protocol("successful block status needs a structured reply")
                        );
                    }
                }
                continue;
            }
            if magic != STRUCTURED_REPLY_MAGIC || !self.structured {
                return Err(self.protocol(format!("bad reply magic {magic:#010x}")));
            }
            let flags = proto::read_u16(&mut self.reader).map_err(|e| self.io(e))?;
            let kind = proto::read_u16(&mut self.reader).map_err(|e| self.io(e))?;
            let cookie = proto::read_u64(&mut self.reader).map_err(|e| self.io(e))?;
            let plen = proto::read_u32(&mut self.reader).map_err(|e| self.io(e))?;
            let p = self.find_pending(pending, cookie)?;
            p.started = true;
            if flags & REPLY_FLAG_DONE != 0 {
                p.done = true;
            }
            self.chunk(p, flags, kind, plen)?;
        }
        for p in pending.iter().filter(|p| p.done) {
            self.check_complete(p)?;
        }
        Ok(())
    }

    fn find_pending<'p, 'b>(
        &self,
        pending: &'p mut [Pending<'b>],
        cookie: u64,
    ) -> Result<&'p mut Pending<'b>> {
        pending
            .iter_mut()
            .find(|p| p.cookie == cookie && !p.done)
            .ok_or_else(|| self.protocol(format!("reply for unexpected cookie {cookie}")))
    }

    /// Handles one structured reply chunk (header already read) for `p`.
    fn chunk(&mut self, p: &mut Pending<'_>, flags: u16, kind: u16, plen: u32) -> Result<()> {
        match kind {
            CHUNK_NONE => {
                if plen != 0 || flags & REPLY_FLAG_DONE == 0 {
                    return Err(self.protocol("NBD_REPLY_TYPE_NONE must be empty and final"));
                }
            }
            CHUNK_OFFSET_DATA | CHUNK_OFFSET_HOLE => {
                let (offset, len) = (p.offset, p.len);
                let ReplyBody::Read(buf) = &mut p.body else {
                    return Err(self.protocol(format!("read data in reply to {}", cmd_name(p.cmd))));
                };
                if plen < 8 {
                    return Err(self.protocol("read chunk too short"));
                }
                let at = proto::read_u64(&mut self.reader).map_err(|e| self.io(e))?;
                let n = if kind == CHUNK_OFFSET_DATA {
                    u64::from(plen - 8)
                } else {
                    if plen != 12 {
                        return Err(self.protocol("hole chunk is not 12 bytes"));
                    }
                    u64::from(proto::read_u32(&mut self.reader).map_err(|e| self.io(e))?)
                };
                let rel = at
                    .checked_sub(offset)
                    .filter(|r| r.checked_add(n).is_some_and(|end| end <= u64::from(len)) && n > 0);
                let Some(rel) = rel else {
                    return Err(self.protocol(format!(
                        "read chunk at {at} length {n} outside request {offset}+{len}"
                    )));
                };
                let dst = &mut buf[rel as usize..(rel + n) as usize];
                if kind == CHUNK_OFFSET_DATA {
                    self.reader.read_exact(dst).map_err(|e| self.io(e))?;
                } else {
                    dst.fill(0);
                }
                p.covered.push((rel, n));
            }
            CHUNK_BLOCK_STATUS => {
                let ReplyBody::Status(want, out) = &mut p.body else {
                    return Err(
                        self.protocol(format!("block status in reply to {}", cmd_name(p.cmd)))
                    );
                };
                if plen < 12 || !(plen - 4).is_multiple_of(8) || plen > MAX_OPTION_DATA * 256 {
                    return Err(self.protocol(format!("block status chunk of bad length {plen}")));
                }
                let data =
                    proto::read_vec(&mut self.reader, plen as usize).map_err(|e| self.io(e))?;
                let mut cur = Cursor::new(&data);
                let id = cur.u32().unwrap_or(u32::MAX);
                if !self.contexts.iter().any(|(i, _)| *i == id) {
                    return Err(self.protocol(format!("block status for unknown context id {id}")));
                }
                if id == *want {
                    if p.got_status {
                        return Err(self.protocol("two block status chunks for one context"));
                    }
                    p.got_status = true;
                    while let (Some(l), Some(f)) = (cur.u32(), cur.u32()) {
                        out.push(Extent {
                            len: u64::from(l),
                            flags: f,
                        });
                    }
                }
            }
            k if k & CHUNK_ERROR_BIT != 0 => {
                if !(6..=MAX_OPTION_DATA).contains(&plen) {
                    return Err(self.protocol(format!("error chunk of bad length {plen}")));
                }
                let data =
                    proto::read_vec(&mut self.reader, plen as usize).map_err(|e| self.io(e))?;
                let mut cur = Cursor::new(&data);
                let code = cur.u32().unwrap_or(0);
                let mlen = usize::from(cur.u16().unwrap_or(0));
                let msg = cur
                    .take(mlen)
                    .ok_or_else(|| self.protocol("error message longer than its chunk"))?;
                let msg = String::from_utf8_lossy(msg).into_owned();
                let expected_rest = if k == CHUNK_ERROR_OFFSET { 8 } else { 0 };
                if (k == CHUNK_ERROR || k == CHUNK_ERROR_OFFSET)
                    && cur.rest().len() != expected_rest
                {
                    return Err(self.protocol("error chunk length does not match its message"));
                }
                if code == 0 {
                    return Err(self.protocol("error chunk with error number 0"));
                }
                p.error.get_or_insert((code, msg));
            }
            k => {
                return Err(self.protocol(format!("unknown structured reply chunk type {k}")));
            }
        }
        Ok(())
    }

    /// A successful reply must have delivered everything asked for.
    fn check_complete(&self, p: &Pending<'_>) -> Result<()> {
        if p.error.is_some() {
            return Ok(());
        }
        match p.body {
            ReplyBody::Read(_) => {
                let mut covered = p.covered.clone();
                covered.sort_unstable();
                let mut next = 0u64;
                for (start, n) in covered {
                    if start != next {
                        return Err(self.protocol("read reply chunks overlap or leave gaps"));
                    }
                    next = start + n;
                }
                if next != u64::from(p.len) {
                    return Err(self.protocol("read reply did not cover the requested range"));
                }
            }
            ReplyBody::Status(..) if !p.got_status => {
                return Err(self.protocol("block status reply lacks the requested context"));
            }
            _ => {}
        }
        Ok(())
    }
}

/// Lengths of the pieces of a transfer of `len` bytes at `offset`, about
/// `piece` bytes each and at most `max`: a piece that would end inside an
/// `align` block ends at the block's end instead (or its start, if `max`
/// does not allow that), so an unaligned transfer has partial blocks at its
/// two ends only and still goes out as the same number of pieces.
fn pieces(offset: u64, len: usize, piece: usize, align: u64, max: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(len.div_ceil(piece.max(1)) + 1);
    let mut at = offset;
    let end = offset + len as u64;
    while at < end {
        let mut next = at + (end - at).min(piece.max(1) as u64);
        if next < end && !next.is_multiple_of(align) {
            let up = (next.div_ceil(align) * align).min(end);
            let down = next - next % align;
            if up - at <= max as u64 {
                next = up;
            } else if down > at {
                next = down;
            }
        }
        out.push((next - at) as usize);
        at = next;
    }
    out
}

impl Drop for Client {
    fn drop(&mut self) {
        if !self.poisoned && !self.disconnected {
            let req = Request {
                flags: 0,
                command: CMD_DISC,
                cookie: self.next_cookie,
                offset: 0,
                length: 0,
            };
            // Best effort: the server cleans up on EOF anyway.
            let _ = self
                .writer
                .write_all(&req.encode())
                .and_then(|_| self.writer.flush());
        }
        if let Some(s) = &self.sock {
            s.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    //! The client against scripted servers: byte streams built here, so
    //! every malformed reply can be produced on purpose.

    use super::*;

    /// Builds the bytes a server would send.
    #[derive(Default, Clone)]
    struct Script(Vec<u8>);

    impl Script {
        fn greeting(mut self) -> Self {
            self.0.extend_from_slice(&NBD_MAGIC.to_be_bytes());
            self.0.extend_from_slice(&IHAVEOPT.to_be_bytes());
            self.0
                .extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
            self
        }
        fn opt(mut self, option: u32, rep: u32, data: &[u8]) -> Self {
            proto::write_option_reply(&mut self.0, option, rep, data).unwrap();
            self
        }
        /// Structured replies, the given contexts (id, name) and an export of `size` bytes.
        fn negotiated(self, contexts: &[(u32, &str)], size: u64) -> Self {
            let mut s = self.greeting().opt(OPT_STRUCTURED_REPLY, REP_ACK, &[]);
            if !contexts.is_empty() {
                for (id, name) in contexts {
                    let mut d = id.to_be_bytes().to_vec();
                    d.extend_from_slice(name.as_bytes());
                    s = s.opt(OPT_SET_META_CONTEXT, REP_META_CONTEXT, &d);
                }
                s = s.opt(OPT_SET_META_CONTEXT, REP_ACK, &[]);
            }
            let mut info = INFO_EXPORT.to_be_bytes().to_vec();
            info.extend_from_slice(&size.to_be_bytes());
            info.extend_from_slice(&(TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH).to_be_bytes());
            s.opt(OPT_GO, REP_INFO, &info).opt(OPT_GO, REP_ACK, &[])
        }
        fn chunk(mut self, flags: u16, kind: u16, cookie: u64, payload: &[u8]) -> Self {
            proto::write_chunk_header(&mut self.0, flags, kind, cookie, payload.len() as u32)
                .unwrap();
            self.0.extend_from_slice(payload);
            self
        }
        fn data(self, flags: u16, cookie: u64, offset: u64, data: &[u8]) -> Self {
            let mut p = offset.to_be_bytes().to_vec();
            p.extend_from_slice(data);
            self.chunk(flags, CHUNK_OFFSET_DATA, cookie, &p)
        }
        fn status(self, cookie: u64, id: u32, extents: &[(u32, u32)]) -> Self {
            let mut p = id.to_be_bytes().to_vec();
            for (l, f) in extents {
                p.extend_from_slice(&l.to_be_bytes());
                p.extend_from_slice(&f.to_be_bytes());
            }
            self.chunk(REPLY_FLAG_DONE, CHUNK_BLOCK_STATUS, cookie, &p)
        }
        fn connect(self, contexts: &[&str]) -> Result<Client> {
            let opts = ConnectOptions {
                meta_contexts: contexts.iter().map(|s| s.to_string()).collect(),
                read_only: false,
            };
            Client::handshake(
                Box::new(io::Cursor::new(self.0)),
                Box::new(io::sink()),
                "scripted",
                "",
                &opts,
            )
        }
    }

    const D: u16 = REPLY_FLAG_DONE;

    #[test]
    fn reads_assemble_data_and_hole_chunks() {
        let mut hole = 8u64.to_be_bytes().to_vec();
        hole.extend_from_slice(&4u32.to_be_bytes());
        let mut c = Script::default()
            .negotiated(&[], 1024)
            .data(0, 1, 0, b"abcdefgh")
            .chunk(0, CHUNK_OFFSET_HOLE, 1, &hole)
            .data(D, 1, 12, b"wxyz")
            .connect(&[])
            .unwrap();
        assert_eq!(c.size(), 1024);
        let mut buf = [0xffu8; 16];
        c.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"abcdefgh\0\0\0\0wxyz");
    }

    #[test]
    fn pipelined_reads_accept_replies_in_any_order() {
        const P: usize = MIN_PIECE;
        let piece = |i: usize| vec![i as u8 + 1; P];
        let at = |i: usize| (i * P) as u64;
        // A 4-piece read: cookies 1..=4; replies out of order, one split in two.
        let mut err = EIO.to_be_bytes().to_vec();
        err.extend_from_slice(&0u16.to_be_bytes());
        let mut c = Script::default()
            .negotiated(&[], 8 * P as u64)
            .data(D, 3, at(2), &piece(2))
            .data(0, 1, at(0), &piece(0)[..100])
            .data(D, 4, at(3), &piece(3))
            .data(D, 1, at(0) + 100, &piece(0)[100..])
            .data(D, 2, at(1), &piece(1))
            // Second read (cookies 5..=8): piece 6 fails, the rest arrive.
            .chunk(D, CHUNK_ERROR, 6, &err)
            .data(D, 8, at(3), &piece(3))
            .data(D, 5, at(0), &piece(0))
            .data(D, 7, at(2), &piece(2))
            // Third read proves the stream is still in step.
            .data(D, 9, 0, b"ok")
            .connect(&[])
            .unwrap();
        let mut buf = vec![0u8; 4 * P];
        c.read_at(0, &mut buf).unwrap();
        for i in 0..4 {
            assert!(buf[i * P..(i + 1) * P] == piece(i)[..], "piece {i}");
        }
        let e = c.read_at(0, &mut buf).unwrap_err();
        assert!(
            matches!(e, Error::Command { code: EIO, offset, .. } if offset == at(1)),
            "{e}"
        );
        let mut small = [0u8; 2];
        c.read_at(0, &mut small).unwrap();
        assert_eq!(&small, b"ok");
    }

    /// A scripted server that hands the client one byte per read and notes,
    /// for each read, how many bytes the client had sent by then: when the
    /// client waited for a reply, relative to the requests it sent.
    struct Trickle {
        script: io::Cursor<Vec<u8>>,
        sent: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
        reads_at: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(1);
            let k = self.script.read(&mut buf[..n])?;
            if k > 0 {
                let sent = self.sent.lock().unwrap().len();
                self.reads_at.lock().unwrap().push(sent);
            }
            Ok(k)
        }
    }

    struct Sent(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Sent {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// `script` served by a [`Trickle`]: the client, the bytes it sends, and
    /// the sent-count at each of its reads.
    #[allow(clippy::type_complexity)]
    fn trickle(
        script: Script,
    ) -> (
        Client,
        std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
        std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
    ) {
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let reads_at = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let r = Trickle {
            script: io::Cursor::new(script.0),
            sent: sent.clone(),
            reads_at: reads_at.clone(),
        };
        let c = Client::handshake(
            Box::new(r),
            Box::new(Sent(sent.clone())),
            "scripted",
            "",
            &ConnectOptions::default(),
        )
        .unwrap();
        (c, sent, reads_at)
    }

    fn simple(mut s: Script, cookie: u64, error: u32) -> Script {
        proto::write_simple_reply(&mut s.0, error, cookie).unwrap();
        s
    }

    #[test]
    fn write_behind_sends_without_waiting_and_reports_a_refusal_later() {
        let script = simple(
            simple(Script::default().negotiated(&[], 4096), 1, 0),
            2,
            EPERM,
        );
        let (mut c, sent, reads_at) = trickle(script);
        c.set_write_behind(1 << 20).unwrap();
        let (sent0, reads0) = (sent.lock().unwrap().len(), reads_at.lock().unwrap().len());
        c.write_at(0, b"abcdefgh").unwrap();
        c.write_at(100, b"ijklmnop").unwrap();
        // Both requests (28-byte header + 8 bytes each) went out, and the
        // client read nothing: it did not wait for either reply.
        assert_eq!(sent.lock().unwrap().len(), sent0 + 2 * 36);
        assert_eq!(reads_at.lock().unwrap().len(), reads0);
        // The refusal of the second write fails the call that collects it,
        // naming that write; the flush itself is not sent.
        let e = c.flush().unwrap_err();
        assert!(
            matches!(
                e,
                Error::Command {
                    command: "NBD_CMD_WRITE",
                    code: EPERM,
                    offset: 100,
                    len: 8,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(sent.lock().unwrap().len(), sent0 + 2 * 36);
        // Nothing is in flight any more.
        c.settle().unwrap();
    }

    #[test]
    fn write_behind_waits_before_an_overlapping_write_or_a_read() {
        let script = Script::default().negotiated(&[], 4096);
        let script = simple(simple(simple(script, 1, 0), 2, 0), 3, 0);
        let script = script.data(D, 4, 0, b"ab");
        let (mut c, sent, reads_at) = trickle(script);
        c.set_write_behind(1 << 20).unwrap();
        let sent0 = sent.lock().unwrap().len();
        c.write_at(0, b"abcdefgh").unwrap();
        c.write_at(8, b"ijklmnop").unwrap();
        // Overlaps the first: its reply must be read before this goes out
        // (the server may reorder requests in flight).
        c.write_at(4, b"QRSTUVWX").unwrap();
        let reads: Vec<usize> = reads_at.lock().unwrap().clone();
        assert!(reads.contains(&(sent0 + 2 * 36)), "{reads:?}");
        assert!(!reads.iter().any(|&n| n > sent0 && n < sent0 + 2 * 36));
        // A read collects the third write's reply before it is sent.
        let mut b = [0u8; 2];
        c.read_at(0, &mut b).unwrap();
        assert_eq!(&b, b"ab");
        let reads: Vec<usize> = reads_at.lock().unwrap().clone();
        assert!(reads.contains(&(sent0 + 3 * 36)), "{reads:?}");
    }

    #[test]
    fn a_full_write_behind_window_waits_only_for_the_oldest_replies() {
        let script = Script::default().negotiated(&[], 4096);
        let script = simple(simple(simple(script, 1, 0), 2, 0), 3, 0);
        let (mut c, sent, reads_at) = trickle(script);
        c.set_write_behind(16).unwrap();
        let sent0 = sent.lock().unwrap().len();
        c.write_at(0, b"abcdefgh").unwrap();
        c.write_at(8, b"ijklmnop").unwrap();
        // The window is full: the first reply makes room, the second is
        // left for later.
        c.write_at(16, b"qrstuvwx").unwrap();
        let reads: Vec<usize> = reads_at.lock().unwrap().clone();
        assert_eq!(
            reads.iter().filter(|&&n| n == sent0 + 2 * 36).count(),
            16,
            "exactly one 16-byte reply read before the third write: {reads:?}"
        );
        c.settle().unwrap();
        let reads: Vec<usize> = reads_at.lock().unwrap().clone();
        assert_eq!(reads.iter().filter(|&&n| n == sent0 + 3 * 36).count(), 32);
    }

    #[test]
    fn transfers_split_at_aligned_boundaries() {
        const K: usize = 1024;
        const A: u64 = PIECE_ALIGN;
        // Aligned: plain pieces.
        assert_eq!(pieces(0, 1024 * K, 256 * K, A, 32 << 20), vec![256 * K; 4]);
        // Unaligned start: the first piece runs on to the next boundary,
        // every later piece starts on one, and there are still four.
        let p = pieces(100, 1024 * K, 256 * K, A, 32 << 20);
        assert_eq!(p.len(), 4, "{p:?}");
        assert_eq!(p.iter().sum::<usize>(), 1024 * K);
        let mut at = 100u64;
        for n in &p[..3] {
            at += *n as u64;
            assert_eq!(at % A, 0, "{p:?}");
        }
        // A server maximum below the rounded-up piece: round down instead.
        let p = pieces(100, 3 * 4096, 4096, A, 4096);
        assert!(p.iter().all(|&n| n <= 4096), "{p:?}");
        assert_eq!(p.iter().sum::<usize>(), 3 * 4096);
        // Short transfers are one piece.
        assert_eq!(pieces(4095, 2, 256 * K, A, 32 << 20), vec![2]);
        assert!(pieces(7, 0, 256 * K, A, 32 << 20).is_empty());
    }

    #[test]
    fn malformed_read_replies_are_errors_and_poison_the_connection() {
        let base = Script::default().negotiated(&[], 1024);
        let cases: Vec<(&str, Script)> = vec![
            ("outside range", base.clone().data(D, 1, 8, b"abcdefgh")),
            ("gap", base.clone().data(D, 1, 0, b"abcd")),
            (
                "overlap",
                base.clone().data(0, 1, 0, b"abcdef").data(D, 1, 4, b"efgh"),
            ),
            ("wrong cookie", base.clone().data(D, 9, 0, b"abcdefgh")),
            ("bad magic", {
                let mut s = base.clone();
                s.0.extend_from_slice(&[0u8; 40]);
                s
            }),
            (
                "truncated",
                base.clone().chunk(D, CHUNK_OFFSET_DATA, 1, &[0, 0]),
            ),
            ("status in read", base.clone().status(1, 1, &[(8, 0)])),
            ("eof", base.clone()),
        ];
        for (name, script) in cases {
            let mut c = script.connect(&[]).unwrap();
            let mut buf = [0u8; 8];
            let e = c.read_at(0, &mut buf).expect_err(name);
            assert!(
                matches!(e, Error::Protocol { .. } | Error::Io { .. }),
                "{name}: {e}"
            );
            let again = c.read_at(0, &mut buf).expect_err(name);
            assert!(matches!(again, Error::Poisoned { .. }), "{name}: {again}");
        }
    }

    #[test]
    fn server_error_chunk_becomes_command_error_with_message() {
        let mut p = EIO.to_be_bytes().to_vec();
        p.extend_from_slice(&4u16.to_be_bytes());
        p.extend_from_slice(b"boom");
        let mut c = Script::default()
            .negotiated(&[], 1024)
            .chunk(D, CHUNK_ERROR, 1, &p)
            .data(D, 2, 0, b"12345678")
            .connect(&[])
            .unwrap();
        let mut buf = [0u8; 8];
        let e = c.read_at(0, &mut buf).unwrap_err();
        assert!(
            matches!(e, Error::Command { code: EIO, .. }),
            "unexpected: {e}"
        );
        assert!(e.to_string().contains("boom"), "{e}");
        // The stream is still in step: the next read works.
        c.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"12345678");
    }

    #[test]
    fn range_walks_loop_over_partial_replies() {
        // 3 requests: the server answers each with only part of the range.
        let ctx = "qemu:dirty-bitmap:b0";
        let mut c = Script::default()
            .negotiated(&[(7, BASE_ALLOCATION), (9, ctx)], 4096)
            .status(1, 7, &[(1024, 0), (1024, STATE_HOLE | STATE_ZERO)])
            .status(2, 7, &[(512, STATE_HOLE | STATE_ZERO)])
            .status(3, 7, &[(4096, 0)]) // over-long last extent is clamped
            .status(4, 9, &[(512, 1), (512, 1), (512, 0)])
            .status(5, 9, &[(1536, 0)])
            .status(6, 9, &[(1024, 1)])
            .connect(&[BASE_ALLOCATION, ctx])
            .unwrap();
        assert_eq!(c.meta_contexts(), &[BASE_ALLOCATION, ctx]);
        assert_eq!(
            c.allocated_ranges(0, 4096).unwrap(),
            vec![
                (0, 1024, true, false),
                (1024, 1536, false, true),
                (2560, 1536, true, false)
            ]
        );
        assert_eq!(
            c.dirty_ranges("b0", 0, 4096).unwrap(),
            vec![(0, 1024), (3072, 1024)]
        );
    }

    #[test]
    fn missing_meta_context_names_the_fix() {
        let e = Script::default()
            .greeting()
            .opt(OPT_STRUCTURED_REPLY, REP_ACK, &[])
            .opt(OPT_SET_META_CONTEXT, REP_ACK, &[])
            .connect(&["qemu:dirty-bitmap:b7"])
            .unwrap_err();
        assert!(e.to_string().contains("-B b7"), "{e}");
    }

    #[test]
    fn unknown_export_is_reported_with_the_offered_names() {
        let mut list = Vec::new();
        put_str32(&mut list, "medium");
        let e = Script::default()
            .greeting()
            .opt(OPT_STRUCTURED_REPLY, REP_ACK, &[])
            .opt(OPT_GO, REP_ERR_UNKNOWN, b"no")
            .opt(OPT_LIST, REP_SERVER, &list)
            .opt(OPT_LIST, REP_ACK, &[])
            .connect(&[])
            .unwrap_err();
        assert!(matches!(e, Error::NoSuchExport { .. }), "{e}");
        assert!(e.to_string().contains("'medium'"), "{e}");
    }

    #[test]
    fn old_servers_fall_back_to_export_name() {
        let mut s = Script::default()
            .greeting()
            .opt(OPT_STRUCTURED_REPLY, REP_ERR_UNSUP, &[])
            .opt(OPT_GO, REP_ERR_UNSUP, &[]);
        s.0.extend_from_slice(&777u64.to_be_bytes());
        s.0.extend_from_slice(&(TFLAG_HAS_FLAGS | TFLAG_READ_ONLY).to_be_bytes());
        // Simple replies: data follows the header directly.
        proto::write_simple_reply(&mut s.0, 0, 1).unwrap();
        s.0.extend_from_slice(b"hi");
        let mut c = s.connect(&[]).unwrap();
        assert_eq!(c.size(), 777);
        assert!(c.read_only());
        let mut buf = [0u8; 2];
        c.read_at(5, &mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        assert!(matches!(c.write_at(0, b"x"), Err(Error::ReadOnly { .. })));
        assert!(matches!(
            c.read_at(776, &mut buf),
            Err(Error::OutOfRange { .. })
        ));
    }

    use mgear_nbd_proto::testing::XorShift as Rng;

    #[test]
    fn mutated_server_streams_never_panic() {
        let ctx = "qemu:dirty-bitmap:b0";
        let valid = Script::default()
            .negotiated(&[(7, BASE_ALLOCATION), (9, ctx)], 4096)
            .data(0, 1, 0, b"abcd")
            .data(D, 1, 4, b"efgh")
            .status(2, 7, &[(1024, 0), (3072, 3)])
            .status(3, 9, &[(4096, 1)]);
        let mut rng = Rng(0x5eed_1234_5678_9abc);
        for _ in 0..3000 {
            let mut bytes = valid.0.clone();
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
            if let Ok(mut c) = Script(bytes).connect(&[BASE_ALLOCATION, ctx]) {
                let mut buf = [0u8; 8];
                let _ = c.read_at(0, &mut buf);
                let _ = c.allocated_ranges(0, 4096);
                let _ = c.dirty_ranges("b0", 0, 4096);
            }
        }
    }
}
