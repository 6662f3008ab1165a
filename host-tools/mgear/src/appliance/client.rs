//! The host end of the console protocol: open the appliance's serial port
//! (the board's CDC-ACM `/dev/ttyACM*`, or the simulator's pty link), send
//! one request frame, and wait for the reply with the same request id.
//!
//! Anything else on the line is skipped: text lines (someone typed in
//! `screen` earlier), replies to an earlier host process that was killed
//! before reading them (their ids differ), and `Progress` frames, which are
//! handed to the caller and restart the idle timer.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::Context;
use crate::{bail, err};
use mgear_appliance_api::protocol::{encode_frame, ErrorCode, FrameDecoder, Request, Response};

/// How long to wait for any sign of life (a reply or progress) before
/// giving up. Long operations send progress frames, which restart it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a console that has sent nothing at all yet gets to answer. An
/// appliance answers a request at once (long operations with progress), and
/// one busy with another host's request still sends that request's progress:
/// a console silent this long is not an appliance's (a wrong `--appliance`
/// port, another serial device), and waiting the idle timeout for it kept a
/// typo waiting two minutes.
pub const FIRST_CONTACT_TIMEOUT: Duration = Duration::from_secs(15);

/// A byte stream to the appliance whose reads return after a short timeout
/// (`ErrorKind::TimedOut` / `WouldBlock` or 0 bytes) so the client can
/// enforce its own deadline.
pub trait Link: Read + Write + Send {}
impl<T: Read + Write + Send> Link for T {}

/// An error reply from the appliance, kept typed so callers can react to
/// the code (e.g. a wrong PIN).
#[derive(Debug)]
pub struct ApplianceError {
    pub code: ErrorCode,
    pub message: String,
}

/// The appliance's refusal travels as a typed outcome: `appliance` finds it in the chain to add
/// the state the appliance is really in.
impl From<ApplianceError> for crate::Error {
    fn from(e: ApplianceError) -> crate::Error {
        crate::Error::other(e)
    }
}

impl std::fmt::Display for ApplianceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The code names the class of refusal (scripts match on `WrongPin`, `BackOff`, ...).
        // `Sealed` is left out: it also answers for an arrived appliance, and beside the state
        // `appliance` adds ("the appliance is arrived") it read as a contradiction.
        match self.code {
            ErrorCode::Sealed => write!(f, "the appliance refused: {}", self.message),
            code => write!(f, "the appliance refused: {} ({code:?})", self.message),
        }
    }
}

impl std::error::Error for ApplianceError {}

/// Whether `req`'s encoding also decodes as a [`Response`] (the two enums share variant
/// numbers): its echo would pass for an answer.
fn reads_as_reply(req: &Request) -> bool {
    postcard::to_allocvec(req)
        .ok()
        .is_some_and(|b| postcard::from_bytes::<Response>(&b).is_ok())
}

/// The console failing under a request: the appliance went away (unplugged, powered off, its
/// simulator stopped; a pty whose other end closed reads as EIO). An I/O error (exit 3) that
/// says so, whatever the raw errno.
fn gone(doing: &str, e: std::io::Error) -> crate::Error {
    crate::exit::coded_next(
        crate::exit::IO,
        format!(
            "{doing} the appliance console: {e} (the appliance stopped answering: unplugged, \
             powered off, or its simulator stopped)"
        ),
        "connect it again (start the simulator again), check its state with `mgear appliance \
         info`, then run the same command again",
    )
}

/// The pseudo-terminal `port` links to, when the link is older than the terminal: made for an
/// earlier terminal of that number, by a simulator that has stopped. Only of `/dev/pts` (a
/// device's udev link may be made before its node's last change).
fn stale_pty_link(port: &Path) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    let link = std::fs::symlink_metadata(port).ok()?;
    if !link.file_type().is_symlink() {
        return None;
    }
    let to = std::fs::canonicalize(port).ok()?;
    if !to.starts_with("/dev/pts") {
        return None;
    }
    let pty = std::fs::metadata(&to).ok()?;
    if !pty.file_type().is_char_device() {
        return None;
    }
    ((link.mtime(), link.mtime_nsec()) < (pty.ctime(), pty.ctime_nsec())).then_some(to)
}

/// A console session.
pub struct Client {
    link: Box<dyn Link>,
    next_id: u32,
    decoder: FrameDecoder,
    idle_timeout: Duration,
    first_contact_timeout: Duration,
    /// Anything at all was read from the link.
    heard: bool,
    /// The port's path, to name it (empty over other links).
    port: String,
}

impl Client {
    /// Open the serial port at `port` (a tty device or a symlink to one).
    pub fn open(port: &Path) -> crate::Result<Client> {
        let name = port
            .to_str()
            .ok_or_else(|| err!("port path {} is not UTF-8", port.display()))?;
        if !port.exists() {
            // A link left by a simulator that was killed points at a pty that is gone.
            let stale = std::fs::read_link(port)
                .map(|to| {
                    format!(
                        " ({} is a link to {}, which is gone: the simulator that made it has \
                         stopped)",
                        port.display(),
                        to.display()
                    )
                })
                .unwrap_or_default();
            return Err(crate::exit::coded_hint(
                crate::exit::IO,
                format!(
                    "no appliance console at {}{stale}: is the appliance (or \
                     mgear-appliance-sim) running?",
                    port.display()
                ),
                "plug the appliance in (or start mgear-appliance-sim), then run the same \
                 command again; `mgear appliance list` shows the consoles it finds",
            ));
        }
        // A link a killed simulator left, to a pseudo-terminal another one was given since:
        // it reached that other appliance (an erase through it erased the wrong one, wrong
        // PINs were charged to it). The link is older than the terminal it points at.
        if let Some(to) = stale_pty_link(port) {
            return Err(crate::exit::coded_hint(
                crate::exit::IO,
                format!(
                    "{} is a link to {}, made before that terminal was: the simulator that made \
                     the link has stopped, and the terminal belongs to another program now \
                     (another simulator: its own --console-link names it); nothing was sent",
                    port.display(),
                    to.display()
                ),
                "start the appliance's simulator again (it makes its link anew), or give the \
                 console link of the appliance meant; `mgear appliance list` shows the consoles \
                 it finds",
            ));
        }
        // A file, a directory or a pipe named as the port: said as such (serialport's ENOTTY
        // reads "Not a typewriter").
        let not_a_console = |what: &str| {
            crate::exit::usage(format!(
                "{} is {what}, not an appliance's serial console: give the console's device \
                 (`mgear appliance list` finds it, e.g. /dev/ttyACM0) or the simulator's \
                 --console-link",
                port.display()
            ))
        };
        {
            use std::os::unix::fs::FileTypeExt as _;
            let t = std::fs::metadata(port)
                .with_context(|| format!("reading {}", port.display()))?
                .file_type();
            if t.is_file() {
                return Err(not_a_console("a regular file"));
            }
            if t.is_dir() {
                return Err(not_a_console("a directory"));
            }
            if t.is_fifo() || t.is_socket() {
                return Err(not_a_console("a pipe or socket"));
            }
        }
        // serialport takes the tty exclusively (TIOCEXCL) while it opens it, before this client
        // lets go of that below: another mgear opening the console in that moment is refused.
        // Those commands take turns, so a refusal is retried for a while before it is reported.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut tty = loop {
            match serialport::new(name, 115_200)
                .timeout(Duration::from_millis(200))
                .open_native()
            {
                Ok(t) => break t,
                Err(e) if e.description.contains("exclusive") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) if e.description.contains("exclusive") => bail!(
                    "the appliance console {} is held by another program (another mgear, or a \
                     terminal such as screen on it): wait for it to finish, or close it, then \
                     run this again ({e})",
                    port.display()
                ),
                Err(e) if e.description.contains("Not a typewriter") => {
                    return Err(not_a_console("a device that is no terminal"))
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("opening appliance console {}", port.display()))
                }
            }
        };
        // Several short-lived host commands take turns on one console; an
        // exclusive lock left by a killed process must not lock the next out.
        tty.set_exclusive(false)
            .with_context(|| format!("configuring {}", port.display()))?;
        // Reads that never block past their poll: another program reading the console (a
        // `cat` of it) can take the bytes poll said were there, and the blocking read then
        // waited for ever (no timeout, no message). Non-blocking, it returns WouldBlock and
        // the client's timeouts stand.
        {
            use nix::fcntl::{fcntl, FcntlArg, OFlag};
            use std::os::fd::AsRawFd as _;
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(tty.as_raw_fd()) };
            let flags = fcntl(fd, FcntlArg::F_GETFL)
                .with_context(|| format!("configuring {}", port.display()))?;
            fcntl(
                fd,
                FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
            )
            .with_context(|| format!("configuring {}", port.display()))?;
        }
        let mut c = Client::over(Box::new(tty));
        c.port = port.display().to_string();
        // First contact, answered at once by any appliance in any state: the command's own
        // first request may take long before its first progress (a seal listing a large
        // medium on a slow board) and then gets the idle timeout, while a console that is
        // no appliance's is told within the first-contact timeout.
        c.call_with(&Request::Ping, &mut |_, _, _| {})?;
        Ok(c)
    }

    /// A client over any byte stream (tests, the HID transport).
    pub fn over(link: Box<dyn Link>) -> Client {
        // Start ids away from a previous process's, so a stale reply left in
        // the pty by a killed client is never taken for ours.
        let seed = std::process::id().wrapping_mul(2_654_435_761).wrapping_add(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0),
        );
        Client {
            link,
            next_id: seed | 1,
            decoder: FrameDecoder::new(),
            idle_timeout: IDLE_TIMEOUT,
            first_contact_timeout: FIRST_CONTACT_TIMEOUT,
            heard: false,
            port: String::new(),
        }
    }

    /// Send `req` and return the final reply (an `Error` reply included).
    /// `progress` sees each `Progress` frame: (what, done, total).
    pub fn call_with(
        &mut self,
        req: &Request,
        progress: &mut dyn FnMut(&str, u64, u64),
    ) -> crate::Result<Response> {
        // A request whose own bytes read as a reply (`Lock` as `Locked`) is told from an
        // echoing port only by asking first what cannot be mistaken: an echo of `Lock` was
        // printed as "locked", `"ok":true`.
        if !self.heard && !matches!(req, Request::Info) && reads_as_reply(req) {
            self.call_with(&Request::Info, &mut |_, _, _| {})?;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.link
            .write_all(&encode_frame(id, req))
            .and_then(|()| self.link.flush())
            .map_err(|e| gone("writing to", e))?;
        let (idle, first) = (self.idle_timeout, self.first_contact_timeout);
        let wait = |heard: bool| if heard { idle } else { first };
        let mut deadline = Instant::now() + wait(self.heard);
        let mut buf = [0u8; 4096];
        loop {
            if Instant::now() > deadline && !self.heard {
                if let Some(e) = self.read_by_another() {
                    return Err(e);
                }
                return Err(crate::exit::coded_hint(
                    crate::exit::IO,
                    format!(
                        "nothing answered on the console{} within {} s: it is not an \
                         appliance's console (a wrong --appliance port, another serial device), \
                         or the appliance hangs",
                        if self.port.is_empty() {
                            String::new()
                        } else {
                            format!(" {}", self.port)
                        },
                        self.first_contact_timeout.as_secs()
                    ),
                    "`mgear appliance list` shows the appliance consoles it finds (the \
                     simulator's is its --console-link); if it is the appliance, unplug it and \
                     plug it in again (restart the simulator), then run the same command again",
                ));
            }
            if Instant::now() > deadline {
                if let Some(e) = self.read_by_another() {
                    return Err(e);
                }
                return Err(crate::exit::coded(
                    crate::exit::IO,
                    format!(
                        "the appliance did not answer within {} s (is it running, and is this its console?)",
                        self.idle_timeout.as_secs()
                    ),
                ));
            }
            let n = match self.link.read(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    0
                }
                Err(e) => return Err(gone("reading from", e)),
            };
            if n == 0 {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            if !self.heard {
                self.heard = true;
                deadline = Instant::now() + wait(true);
            }
            for &b in &buf[..n] {
                let Some(frame) = self.decoder.push(b) else {
                    continue;
                };
                // A damaged frame may have been ours; the appliance has
                // answered it or will not: keep waiting until the deadline.
                let Ok(frame) = frame else { continue };
                if frame.request_id != id {
                    continue;
                }
                // Our own request back: a port that echoes (a loopback, a modem, a terminal
                // program), not an appliance; it read as a version mismatch.
                if frame.decode::<Response>().is_err() && frame.decode::<Request>().is_ok() {
                    return Err(crate::exit::coded_hint(
                        crate::exit::IO,
                        format!(
                            "the console {} sent the request back as it was (an echo): it is \
                             not an appliance's console (a wrong --appliance port, a loopback \
                             or a device that echoes what it is sent)",
                            self.port
                        ),
                        "`mgear appliance list` shows the appliance consoles it finds (the \
                         simulator's is its --console-link); give one of them",
                    ));
                }
                let resp: Response = frame.decode().context(
                    "the appliance sent a reply this mgear cannot decode (version mismatch?)",
                )?;
                if let Response::Progress { what, done, total } = &resp {
                    progress(what, *done, *total);
                    deadline = Instant::now() + self.idle_timeout;
                    continue;
                }
                return Ok(resp);
            }
        }
    }

    /// No answer came: when another process holds the console open (a `screen` left
    /// attached), it may have read the answer first, which is what to say (it was "not an
    /// appliance's console: restart the simulator", or "is it running?").
    fn read_by_another(&self) -> Option<crate::Error> {
        let readers = crate::guard::console_readers(Path::new(&self.port));
        let (pid, cmd) = readers.first()?;
        Some(crate::exit::coded_hint(
            crate::exit::IO,
            format!(
                "no answer on the appliance console {} within the time allowed, and process \
                 {pid} ({cmd}) has that console open too: it reads what the appliance answers, \
                 so the answer can reach it instead of mgear{}",
                self.port,
                match readers.len() {
                    1 => String::new(),
                    n => format!(" ({} processes in all)", n),
                }
            ),
            "close the other program on the console (in `screen`: Ctrl-A k), or wait for the \
             other mgear command to finish, then run the same command again",
        ))
    }

    /// Send `req`; an `Error` reply becomes an [`ApplianceError`].
    pub fn call(&mut self, req: &Request) -> crate::Result<Response> {
        self.call_progress(req, &mut |_, _, _| {})
    }

    /// [`call`](Self::call) with a progress callback.
    pub fn call_progress(
        &mut self,
        req: &Request,
        progress: &mut dyn FnMut(&str, u64, u64),
    ) -> crate::Result<Response> {
        match self.call_with(req, progress)? {
            Response::Error { code, message } => Err(ApplianceError { code, message }.into()),
            r => Ok(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A file, a directory or a device that is no terminal given as the port is named as
    /// such (exit 2), not "Not a typewriter".
    #[test]
    fn what_is_no_console_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("appliance.tty");
        std::fs::write(&file, b"").unwrap();
        for (port, what) in [
            (file.as_path(), "a regular file"),
            (dir.path(), "a directory"),
            (Path::new("/dev/null"), "a device that is no terminal"),
        ] {
            let e = Client::open(port).err().expect("refused");
            assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE, "{e}");
            assert!(e.to_string().contains(what), "{e}");
        }
        // The link a killed simulator left behind: named as such, the way on in the hint.
        let link = dir.path().join("stale.tty");
        std::os::unix::fs::symlink(dir.path().join("gone-pty"), &link).unwrap();
        let e = Client::open(&link).err().expect("refused");
        assert_eq!(crate::exit::code_of(&e), crate::exit::IO, "{e}");
        assert!(e.to_string().contains("which is gone"), "{e}");
        assert!(crate::exit::hint(&e, "appliance").contains("appliance list"));
    }

    /// A fake appliance: replies are prepared per request and appear in the
    /// read stream once a request was written.
    struct Fake {
        rx: Arc<Mutex<Vec<u8>>>,
        pending: Vec<u8>,
        script: fn(u32, Request) -> Vec<u8>,
    }

    impl Read for Fake {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.pending.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            Ok(n)
        }
    }
    impl Write for Fake {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            let mut rx = self.rx.lock().unwrap();
            rx.extend_from_slice(data);
            let (id, req): (u32, Request) = mgear_appliance_api::protocol::decode_frame(&rx)
                .expect("client sent a valid frame");
            rx.clear();
            let out = (self.script)(id, req);
            self.pending.extend(out);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A port that sends every request back (a loopback, `socat ... EXEC:cat`) is named as
    /// no appliance's console, exit 3: it was "a reply this mgear cannot decode (version
    /// mismatch?)", which sent the operator looking for a firmware problem.
    #[test]
    fn an_echo_is_no_appliance() {
        // Info's echo is no reply; Lock's reads as `Locked`, and was taken for one.
        assert!(!reads_as_reply(&Request::Info));
        assert!(reads_as_reply(&Request::Lock));
        for req in [Request::Info, Request::Lock, Request::Seal, Request::Verify] {
            let fake = Fake {
                rx: Arc::default(),
                pending: Vec::new(),
                script: |id, req| encode_frame(id, &req),
            };
            let mut c = Client::over(Box::new(fake));
            let e = c.call(&req).unwrap_err();
            assert_eq!(crate::exit::code_of(&e), crate::exit::IO, "{req:?}: {e}");
            assert!(
                e.to_string()
                    .contains("sent the request back as it was (an echo)"),
                "{req:?}: {e}"
            );
        }
    }

    #[test]
    fn skips_noise_and_stale_replies_and_reports_progress() {
        let fake = Fake {
            rx: Arc::default(),
            pending: Vec::new(),
            script: |id, req| {
                assert_eq!(req, Request::Verify);
                let mut out = b"stray text line\r\n".to_vec();
                out.extend(encode_frame(id.wrapping_sub(1), &Response::Pong)); // stale
                out.extend([0, 7, 7, 7, 0]); // damaged frame
                out.extend(encode_frame(
                    id,
                    &Response::Progress {
                        what: "records".into(),
                        done: 1,
                        total: 2,
                    },
                ));
                out.extend(encode_frame(
                    id,
                    &Response::error(ErrorCode::Locked, "unlock first"),
                ));
                out
            },
        };
        let mut c = Client::over(Box::new(fake));
        let mut seen = Vec::new();
        let r = c
            .call_with(&Request::Verify, &mut |w, d, t| {
                seen.push((w.to_string(), d, t))
            })
            .unwrap();
        assert_eq!(seen, vec![("records".to_string(), 1, 2)]);
        assert!(matches!(
            r,
            Response::Error {
                code: ErrorCode::Locked,
                ..
            }
        ));
    }

    /// A console that never sends a byte (a wrong port) is given up on after the first-contact
    /// timeout, named as no appliance's; one that answered once gets the idle timeout.
    #[test]
    fn a_silent_console_is_given_up_on_early() {
        struct Silent;
        impl Read for Silent {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Ok(0)
            }
        }
        impl Write for Silent {
            fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
                Ok(data.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut c = Client::over(Box::new(Silent));
        c.first_contact_timeout = Duration::from_millis(200);
        let t0 = Instant::now();
        let e = c.call(&Request::Ping).unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!(crate::exit::code_of(&e), crate::exit::IO, "{e}");
        assert!(
            e.to_string().contains("nothing answered on the console"),
            "{e}"
        );
        assert!(crate::exit::hint(&e, "appliance").contains("appliance list"));
    }

    #[test]
    fn error_replies_become_typed_errors() {
        let fake = Fake {
            rx: Arc::default(),
            pending: Vec::new(),
            script: |id, _| {
                encode_frame(id, &Response::error(ErrorCode::WrongPin, "9 attempts left"))
            },
        };
        let mut c = Client::over(Box::new(fake));
        let err = c
            .call(&Request::Unlock {
                pin: mgear_appliance_api::protocol::Pin::new("1"),
            })
            .unwrap_err();
        let ae = err.find::<ApplianceError>().unwrap();
        assert_eq!(ae.code, ErrorCode::WrongPin);
    }
}
