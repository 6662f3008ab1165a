//! The simulated USB serial console: a pseudo-terminal whose slave side is
//! what a host opens (like `/dev/ttyACM0` on the board), published under a
//! stable path by a symlink (`--console-link`).
//!
//! The simulator keeps the slave open itself for its whole life. Without
//! that, the master side reads `EIO` every time the last host process closes
//! the terminal, and the raw-mode settings would be lost between host
//! commands. Raw mode matters: the framed protocol carries arbitrary bytes
//! (COBS frames contain no 0x00 but every other value), and a cooked terminal
//! would translate `\r`, swallow ^C/^D and echo everything back.

use std::fs::File;
use std::io::{self, Read, Write};

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use nix::sys::termios::{tcflush, FlushArg};

/// An open pseudo-terminal pair; the simulator talks on the master side.
pub struct Pty {
    master: File,
    /// Held open on purpose (see the module doc); never read by the simulator.
    slave: OwnedFd,
    slave_path: PathBuf,
    /// When queued output was last discarded because nobody read it.
    abandoned: Option<Instant>,
}

/// `e` with what was being done in front of it (the binary prints the message as is).
fn context(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// A nix call's error as an I/O error with what was being done in front of it.
fn nix_context(what: &str) -> impl FnOnce(nix::Error) -> io::Error + '_ {
    move |e| context(what)(io::Error::from(e))
}

impl Pty {
    /// Open a new pty pair with the slave in raw mode.
    pub fn open() -> io::Result<Pty> {
        let pair = nix::pty::openpty(None, None).map_err(nix_context("openpty"))?;
        let slave_path = nix::unistd::ttyname(pair.slave.as_fd())
            .map_err(nix_context("ttyname of pty slave"))?;
        set_raw(pair.slave.as_fd()).map_err(nix_context("putting the console pty in raw mode"))?;
        set_raw(pair.master.as_fd())
            .map_err(nix_context("putting the console pty master in raw mode"))?;
        let flags = fcntl(&pair.master, FcntlArg::F_GETFL).map_err(nix_context("fcntl"))?;
        fcntl(
            &pair.master,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .map_err(nix_context("making the console pty non-blocking"))?;
        Ok(Pty {
            master: File::from(pair.master),
            slave: pair.slave,
            slave_path,
            abandoned: None,
        })
    }

    /// Path of the slave device (e.g. `/dev/pts/7`).
    pub fn slave_path(&self) -> &Path {
        &self.slave_path
    }

    /// A second handle on the master side, for waiting until input arrives
    /// (see [`wait_readable`]) while the firmware core owns this `Pty`.
    pub fn waiter(&self) -> io::Result<File> {
        self.master
            .try_clone()
            .map_err(context("duplicating the console pty handle"))
    }
}

/// Wait up to `timeout` until `f` has input. `Ok(false)` on timeout or a
/// signal (the caller re-checks its stop flag).
pub fn wait_readable(f: &File, timeout: Duration) -> io::Result<bool> {
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// How long a console write may wait for the host to read before the
/// queued, unread output is discarded.
const WRITE_STALL: Duration = Duration::from_secs(2);

fn wait_writable(f: &File, timeout: Duration) -> io::Result<bool> {
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLOUT)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

impl embedded_io::ErrorType for Pty {
    type Error = io::Error;
}

impl embedded_io::ReadReady for Pty {
    fn read_ready(&mut self) -> Result<bool, io::Error> {
        wait_readable(&self.master, Duration::ZERO)
    }
}

impl embedded_io::Read for Pty {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, io::Error> {
        loop {
            match self.master.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // EIO: no process has the slave open. Cannot happen while we
                // hold the slave, but treat it as "nothing to read".
                Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                r => return r,
            }
        }
    }
}

impl embedded_io::Write for Pty {
    fn write(&mut self, buf: &[u8]) -> Result<usize, io::Error> {
        let mut flushed = false;
        loop {
            match self.master.write(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Once the host was found not reading, do not wait again
                    // for a while: a long reply would otherwise stall per chunk.
                    let recently = self
                        .abandoned
                        .is_some_and(|t| t.elapsed() < WRITE_STALL * 5);
                    if !recently && wait_writable(&self.master, WRITE_STALL)? {
                        continue;
                    }
                    if flushed {
                        return Err(e);
                    }
                    // Nobody has read the console for a while: the bytes
                    // queued are replies to a host process that went away.
                    // Drop them rather than block the appliance forever.
                    tcflush(self.slave.as_fd(), FlushArg::TCIFLUSH)?;
                    self.abandoned = Some(Instant::now());
                    flushed = true;
                }
                r => return r,
            }
        }
    }

    fn flush(&mut self) -> Result<(), io::Error> {
        self.master.flush()
    }
}

fn set_raw(fd: std::os::fd::BorrowedFd<'_>) -> nix::Result<()> {
    let mut t = tcgetattr(fd)?;
    cfmakeraw(&mut t);
    tcsetattr(fd, SetArg::TCSANOW, &t)
}

/// A symlink that points at the console and is removed when dropped, so a
/// stopped simulator leaves no dangling `appliance.tty` behind.
pub struct ConsoleLink {
    link: PathBuf,
}

impl ConsoleLink {
    /// Whether `link` can become the console link: `Ok(true)` if a (stale) symlink is there
    /// to replace, `Ok(false)` if nothing is, an error for anything else. Checked before the
    /// firmware starts, so a wrong `--console-link` is refused before "firmware up".
    pub fn check(link: &Path) -> io::Result<bool> {
        match std::fs::symlink_metadata(link) {
            Ok(m) if m.file_type().is_symlink() => Ok(true),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a symlink; choose another --console-link or remove it",
                    link.display()
                ),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(context(format_args!("checking {}", link.display()))(e)),
        }
    }

    /// Create (or replace a stale) symlink `link` -> `target`.
    ///
    /// Refuses to replace anything that is not a symlink: `--console-link`
    /// pointing at a regular file by mistake must not delete that file.
    pub fn create(link: &Path, target: &Path) -> io::Result<ConsoleLink> {
        if ConsoleLink::check(link)? {
            std::fs::remove_file(link).map_err(context(format_args!(
                "removing stale console link {}",
                link.display()
            )))?;
        }
        std::os::unix::fs::symlink(target, link).map_err(context(format_args!(
            "creating console link {} -> {}",
            link.display(),
            target.display()
        )))?;
        Ok(ConsoleLink {
            link: link.to_path_buf(),
        })
    }
}

impl Drop for ConsoleLink {
    fn drop(&mut self) {
        // Only remove the link if it is still ours: another simulator may
        // have taken the name over meanwhile.
        if std::fs::symlink_metadata(&self.link).is_ok_and(|m| m.file_type().is_symlink()) {
            let _ = std::fs::remove_file(&self.link);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    #[test]
    fn bytes_pass_through_unchanged_in_both_directions() {
        use embedded_io::{Read as _, ReadReady as _, Write as _};
        let mut pty = Pty::open().unwrap();
        let waiter = pty.waiter().unwrap();
        assert!(!pty.read_ready().unwrap());
        let mut host = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOCTTY)
            .open(pty.slave_path())
            .unwrap();
        // Every byte value, including \r, \n, ^C, ^D and 0x00, must arrive as sent.
        let all: Vec<u8> = (0..=255u8).collect();
        host.write_all(&all).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while got.len() < all.len() {
            assert!(
                wait_readable(&waiter, Duration::from_secs(5)).unwrap(),
                "timed out after {} bytes",
                got.len()
            );
            assert!(pty.read_ready().unwrap());
            let n = pty.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, all);
        pty.write_all(&all).unwrap();
        let mut back = vec![0u8; all.len()];
        host.read_exact(&mut back).unwrap();
        assert_eq!(back, all);
    }

    #[test]
    fn output_nobody_reads_is_dropped_instead_of_blocking_forever() {
        use embedded_io::Write as _;
        let mut pty = Pty::open().unwrap();
        // Far more than any pty buffer holds, with no reader on the slave.
        let big = vec![b'x'; 1 << 20];
        pty.write_all(&big).unwrap();
        // A host that opens the console afterwards gets the newest bytes only.
        pty.write_all(b"fresh").unwrap();
    }

    #[test]
    fn link_is_replaced_when_stale_and_removed_on_drop_but_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("appliance.tty");
        std::os::unix::fs::symlink("/nonexistent", &link).unwrap();
        let l = ConsoleLink::create(&link, Path::new("/dev/null")).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/dev/null"));
        drop(l);
        assert!(std::fs::symlink_metadata(&link).is_err());

        std::fs::write(&link, b"precious").unwrap();
        assert!(ConsoleLink::create(&link, Path::new("/dev/null")).is_err());
        assert_eq!(std::fs::read(&link).unwrap(), b"precious");
    }
}
