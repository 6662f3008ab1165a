//! Durable files in the simulator's state directory.
//!
//! The simulator may be killed with SIGKILL at any instant (the tests do it
//! on purpose: that is the simulated power cut), so every state file is
//! either replaced whole or appended to:
//!
//! - [`atomic_write`] writes `NAME.tmp`, fsyncs it, renames it over `NAME`
//!   and fsyncs the directory. A reader sees the old or the new content,
//!   never a mix; a left-over `NAME.tmp` is simply overwritten next time.
//! - [`AppendFile`] appends and fsyncs before returning. A torn last append
//!   is possible; the owner of the content (the firmware's custody log)
//!   detects it by its own framing and truncates it away with
//!   [`AppendFile::truncate`].
//!
//! The state holds the identity seed and the PIN verifier, so it is private
//! to the user running the simulator: directories 0700 ([`private_dir`]),
//! files 0600, new files created with `O_EXCL | O_NOFOLLOW` and existing
//! ones opened with `O_NOFOLLOW`. A symlink planted in the state directory
//! (to make the simulator write a secret somewhere readable, or read a
//! forged one) is refused instead of followed.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every state file.
pub const FILE_MODE: u32 = 0o600;
/// Mode of the state directory and its subdirectories.
pub const DIR_MODE: u32 = 0o700;

/// `OpenOptions` that never follow a symlink at the last path component
/// and create files 0600.
pub fn private_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.custom_flags(libc::O_NOFOLLOW).mode(FILE_MODE);
    o
}

/// Say what is wrong when an open was refused because `path` is a symlink.
fn refuse_symlink(path: &Path, e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        io::Error::new(
            e.kind(),
            format!(
                "{} is a symbolic link; the simulator's state files must be plain files: remove it",
                path.display()
            ),
        )
    } else {
        e
    }
}

/// Create `dir` (and missing parents) as a private directory, or check an
/// existing one: a real directory (not a symlink), owned by this user; its
/// mode is tightened to 0700.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)?;
        }
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.file_type().is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory (a symbolic link?); give the simulator a state directory of its own",
            dir.display()
        )));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(io::Error::other(format!(
            "{} belongs to user {}, not to this user ({me}): the simulator keeps secrets there; use a directory of your own",
            dir.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o777 != DIR_MODE {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

/// Replace `path` with `data` atomically and durably. The new content is
/// written to a fresh `NAME.tmp` (`O_EXCL`, mode 0600) and renamed over
/// `NAME`; rename replaces a planted symlink rather than following it.
pub fn atomic_write(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path);
    // A left-over tmp (crash, or a planted link): remove the entry itself.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    {
        let mut f = private_options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| refuse_symlink(&tmp, e))?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}

/// Read `path` whole, or `Ok(None)` if it does not exist. A symlink is
/// refused, not followed.
pub fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut f = match private_options().read(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(refuse_symlink(path, e)),
    };
    let mut d = Vec::new();
    f.read_to_end(&mut d)?;
    Ok(Some(d))
}

/// Make an existing state file private (0600) if it is looser, e.g. one
/// written by an older simulator. Refuses a symlink.
pub fn tighten(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.file_type().is_symlink() => Err(refuse_symlink(
            path,
            io::Error::from_raw_os_error(libc::ELOOP),
        )),
        Ok(m) if m.mode() & 0o777 != FILE_MODE => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(FILE_MODE))
        }
        Ok(_) => Ok(()),
    }
}

/// Remove `path` durably (Ok if it does not exist).
pub fn remove_durable(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_parent(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// An append-only file whose every append is durable when it returns.
pub struct AppendFile {
    file: File,
}

impl AppendFile {
    /// Open (creating if needed) `path` for appending.
    pub fn open(path: &Path) -> io::Result<AppendFile> {
        let created = std::fs::symlink_metadata(path).is_err();
        tighten(path)?;
        let file = private_options()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| refuse_symlink(path, e))?;
        if created {
            sync_parent(path)?;
        }
        Ok(AppendFile { file })
    }

    /// Whole current content.
    pub fn read_all(&mut self) -> io::Result<Vec<u8>> {
        use std::io::Seek;
        self.file.seek(io::SeekFrom::Start(0))?;
        let mut v = Vec::new();
        self.file.read_to_end(&mut v)?;
        Ok(v)
    }

    /// Append `data` and make it durable.
    pub fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.file.sync_data()
    }

    /// Cut the file to `len` bytes (drops a torn tail found on recovery).
    pub fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.file.sync_all()
    }
}

/// The simulator's hold on its state directory and medium for as long as it
/// runs: one appliance is one set of secrets, one custody log and one
/// medium. A second simulator started on either (by mistake, or `flash.sh
/// --sim` run twice) kept its own idea of the state: it wrote a capture onto
/// a medium the first had just sealed and forked the custody log.
///
/// The state directory is held with `flock`; the medium with an open file
/// description lock (`F_OFD_SETLK`), which Linux keeps apart from `flock`,
/// so `mgear` reading the medium image beside the simulator (its own
/// `flock`) is not refused, while a second simulator is.
pub struct Claim {
    _state: nix::fcntl::Flock<File>,
    _medium: Option<File>,
}

/// Take the [`Claim`] on `state` (an existing directory) and `medium`.
pub fn claim(state: &Path, medium: &Path) -> io::Result<Claim> {
    use nix::fcntl::{fcntl, FcntlArg, Flock, FlockArg};
    let busy = |what: &Path| {
        io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "{} is in use by another mgear-appliance-sim: one simulator per appliance \
                 (its state and its medium); stop the other one first, or give this one its own \
                 --state and --medium",
                what.display()
            ),
        )
    };
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(state)?;
    let dir = match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
        Ok(held) => held,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Err(busy(state)),
        Err((_, e)) => return Err(e.into()),
    };
    // A medium that does not open is left to the medium's own open, which says what is wrong
    // with it (missing, a directory, read-only).
    let Ok(file) = OpenOptions::new().read(true).write(true).open(medium) else {
        return Ok(Claim {
            _state: dir,
            _medium: None,
        });
    };
    // l_start 0 and l_len 0: the whole file, however it grows.
    let whole = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    match fcntl(&file, FcntlArg::F_OFD_SETLK(&whole)) {
        Ok(_) => {}
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => return Err(busy(medium)),
        Err(e) => return Err(e.into()),
    }
    Ok(Claim {
        _state: dir,
        _medium: Some(file),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_and_ignores_stale_tmp() {
        let dir = std::env::temp_dir().join(format!("mgear-hw-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("SECRETS");
        assert_eq!(read_optional(&p).unwrap(), None);
        // A crash between write and rename leaves a half-written .tmp behind.
        std::fs::write(tmp_path(&p), b"half").unwrap();
        atomic_write(&p, b"first").unwrap();
        atomic_write(&p, b"second, longer").unwrap();
        assert_eq!(read_optional(&p).unwrap().unwrap(), b"second, longer");
        assert!(!tmp_path(&p).exists());
        remove_durable(&p).unwrap();
        remove_durable(&p).unwrap();
        assert_eq!(read_optional(&p).unwrap(), None);

        let lp = dir.join("LOG");
        let mut log = AppendFile::open(&lp).unwrap();
        log.append(b"abc").unwrap();
        log.append(b"def").unwrap();
        assert_eq!(log.read_all().unwrap(), b"abcdef");
        log.truncate(4).unwrap();
        log.append(b"Z").unwrap();
        drop(log);
        let mut log = AppendFile::open(&lp).unwrap();
        assert_eq!(log.read_all().unwrap(), b"abcdZ");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn state_is_private_and_planted_symlinks_are_refused() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("state/secrets");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        // A loose existing directory is tightened.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let p = dir.join("pin");
        atomic_write(&p, b"verifier").unwrap();
        assert_eq!(mode(&p), 0o600);

        // A link planted where the tmp file goes: the victim stays untouched.
        let victim = top.path().join("victim");
        std::fs::write(&victim, b"victim").unwrap();
        std::os::unix::fs::symlink(&victim, tmp_path(&p)).unwrap();
        atomic_write(&p, b"verifier 2").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"victim");
        assert_eq!(read_optional(&p).unwrap().unwrap(), b"verifier 2");
        assert_eq!(mode(&p), 0o600);

        // A slot replaced by a link is not read through, and the error says why.
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        let e = read_optional(&p).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        // Writing replaces the link itself, never the target.
        atomic_write(&p, b"verifier 3").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"victim");
        assert!(!std::fs::symlink_metadata(&p)
            .unwrap()
            .file_type()
            .is_symlink());

        // The custody log: a planted link is refused.
        let lp = top.path().join("state/custody.log");
        std::os::unix::fs::symlink(&victim, &lp).unwrap();
        let e = AppendFile::open(&lp).err().expect("opened through a link");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        std::fs::remove_file(&lp).unwrap();
        AppendFile::open(&lp).unwrap().append(b"x").unwrap();
        assert_eq!(mode(&lp), 0o600);

        // A state directory that is a link is refused.
        let link_dir = top.path().join("linked");
        std::os::unix::fs::symlink(top.path().join("state"), &link_dir).unwrap();
        assert!(private_dir(&link_dir).is_err());
    }

    #[test]
    fn a_second_claim_on_the_state_or_the_medium_is_refused_and_mgears_lock_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let (m1, m2) = (dir.path().join("m1.img"), dir.path().join("m2.img"));
        std::fs::write(&m1, [0u8; 512]).unwrap();
        std::fs::write(&m2, [0u8; 512]).unwrap();
        let held = claim(&a, &m1).unwrap();
        for (state, medium, busy) in [(&a, &m2, &a), (&b, &m1, &m1)] {
            let e = claim(state, medium).err().expect("refused");
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
            assert!(
                e.to_string()
                    .contains(&format!("{} is in use by another", busy.display())),
                "{e}"
            );
        }
        // mgear's own flock of a medium image beside the simulator still works.
        let f = File::open(&m1).unwrap();
        let shared = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockSharedNonblock);
        assert!(shared.is_ok());
        drop(held);
        claim(&b, &m1).unwrap();
    }
}
