//! Creating files and directories that hold plaintext or key material on a
//! host: decrypted volumes, `.partial` files, ingest state, key caches,
//! generated passphrases.
//!
//! Such a file may be created in a directory other users can write to
//! (`/tmp`, a shared scratch mount). Two things must never happen there:
//! the file is readable by others for a moment (create-then-chmod), or a
//! symlink another user planted at that name redirects our write into a
//! file of their choosing (or of ours, such as a system file). So every
//! such file is created in one `open(2)` with `O_CREAT | O_EXCL |
//! O_NOFOLLOW` and mode 0600: it is new, it is ours, and it was never
//! readable by anyone else. Replacing an existing file goes through a new
//! private file and `rename(2)`, which replaces a planted symlink rather
//! than following it. Directories are created 0700 and an existing one must
//! be a real directory (not a symlink).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Mode of every private file.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every private directory.
pub const DIR_MODE: u32 = 0o700;

fn nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32 | rustix::fs::OFlags::CLOEXEC.bits() as i32
}

/// Create `path` as a new file, mode 0600, opened read-write. Fails with
/// `AlreadyExists` if anything (a file, a dangling or live symlink) is there.
pub fn create(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(nofollow())
        .open(path)
}

/// Open an existing file read-write without following a symlink at its
/// last component (an error, `ELOOP`, if one is there).
pub fn open_existing(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nofollow())
        .open(path)
}

/// True if the error is what [`open_existing`] reports for a symlink.
pub fn is_symlink_refusal(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
}

/// Read a whole private file, refusing a symlink at its last component
/// (someone else's file must not stand in for ours).
pub fn read(path: &Path) -> io::Result<zeroize::Zeroizing<Vec<u8>>> {
    use std::io::Read;
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(nofollow())
        .open(path)
        .map_err(|e| explain(path, e))?;
    let mut out = zeroize::Zeroizing::new(Vec::new());
    f.read_to_end(&mut out)?;
    Ok(out)
}

/// Name the symlink in an `ELOOP` from a no-follow open.
fn explain(path: &Path, e: io::Error) -> io::Error {
    if is_symlink_refusal(&e) {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is a symlink: refusing to use it for secret material (remove it)",
                path.display()
            ),
        )
    } else {
        e
    }
}

/// Write `contents` to `path` (mode 0600), replacing a regular file that is
/// there: a new private file next to it, synced, then renamed over `path`.
/// A symlink at `path` is refused (and would only be replaced by the rename,
/// never followed, if it appeared after the check).
pub fn replace(path: &Path, contents: &[u8]) -> io::Result<()> {
    if let Ok(md) = std::fs::symlink_metadata(path) {
        if md.file_type().is_symlink() {
            return Err(explain(
                path,
                io::Error::from_raw_os_error(rustix::io::Errno::LOOP.raw_os_error()),
            ));
        }
    }
    let tmp = sibling(path, ".new")?;
    let mut f = create(&tmp)?;
    // Held until the rename: the file is this writer's, not a dead one's leftover
    // ([`remove_if_abandoned`]).
    let locked = rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive);
    let written = locked
        .map_err(io::Error::from)
        .and_then(|_| f.write_all(contents))
        .and_then(|_| f.sync_all());
    let result = written.and_then(|_| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    drop(f);
    result
}

/// How old an empty temporary file must be before [`remove_if_abandoned`] takes it for a dead
/// writer's: [`replace`] creates its file and only then locks it, and one found in between (a
/// second capture of the same name starting at the same moment) was removed under its writer,
/// whose rename then failed ("No such file"). A file with bytes in it was locked before they
/// were written.
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// Removes `path`, a temporary file [`replace`] left, unless a live writer still holds it
/// (its lock) or may be about to (empty and younger than [`ABANDONED_AFTER`]): `Ok(true)` if
/// it was removed. What a run killed between writing and renaming leaves is removed; one
/// another process is writing right now is not.
pub fn remove_if_abandoned(path: &Path) -> io::Result<bool> {
    let f = match open_existing(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let md = f.metadata()?;
    let young = md
        .modified()
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_none_or(|age| age < ABANDONED_AFTER);
    if md.len() == 0 && young {
        return Ok(false);
    }
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {
            std::fs::remove_file(path)?;
            Ok(true)
        }
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A fresh, unpredictable name next to `path` (for [`replace`]).
fn sibling(path: &Path, suffix: &str) -> io::Result<PathBuf> {
    let mut r = [0u8; 8];
    getrandom::getrandom(&mut r).map_err(|e| io::Error::other(e.to_string()))?;
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{}{suffix}", u64::from_le_bytes(r)));
    Ok(PathBuf::from(s))
}

/// Create `dir` (and missing parents) with mode 0700. An existing `dir`
/// must be a directory and not a symlink; one that group or others may
/// write to is refused (anyone could plant names in it).
pub fn create_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let md = std::fs::symlink_metadata(dir)?;
    if md.file_type().is_symlink() || !md.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is {} where a private directory was expected: give the directory itself \
                 (a link could be made to point elsewhere under the secrets written there)",
                dir.display(),
                if md.file_type().is_symlink() {
                    "a symlink"
                } else {
                    "not a directory"
                }
            ),
        ));
    }
    // Another user's directory: its owner can remove or replace what is written there as
    // well as one others may write to (a cache owned by `nobody` took root's data keys).
    {
        use std::os::unix::fs::MetadataExt;
        let me = rustix::process::geteuid().as_raw();
        if md.uid() != me {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} belongs to another user (uid {}, this process runs as {me}): its owner \
                     could remove or replace the secrets written there; give a directory of \
                     your own",
                    dir.display(),
                    md.uid()
                ),
            ));
        }
    }
    if md.permissions().mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} can be written by other users (mode {:o}): they could plant files in it; \
                 `chmod 700` it or choose another directory",
                dir.display(),
                md.permissions().mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// A temporary file a live writer holds stays; one whose writer is gone goes.
    #[test]
    fn only_an_abandoned_temporary_file_is_removed() {
        let d = tempfile::tempdir().unwrap();
        let tmp = d.path().join("k.key.1.new");
        let mut writer = create(&tmp).unwrap();
        // Just made, not locked yet (its writer is between `create` and `flock`): it stays.
        assert!(
            !remove_if_abandoned(&tmp).unwrap(),
            "a new file is no dead writer's"
        );
        assert!(tmp.exists());
        rustix::fs::flock(&writer, rustix::fs::FlockOperation::LockExclusive).unwrap();
        writer.write_all(b"key").unwrap();
        assert!(!remove_if_abandoned(&tmp).unwrap(), "its writer holds it");
        assert!(tmp.exists());
        drop(writer);
        assert!(remove_if_abandoned(&tmp).unwrap(), "its writer is gone");
        assert!(!tmp.exists());
        assert!(!remove_if_abandoned(&tmp).unwrap(), "nothing there");
        // An empty one long left (a writer killed before its first byte) goes too.
        let empty = create(&tmp).unwrap();
        empty
            .set_modified(std::time::SystemTime::now() - 2 * ABANDONED_AFTER)
            .unwrap();
        drop(empty);
        assert!(remove_if_abandoned(&tmp).unwrap(), "an old empty file goes");
        // What `replace` writes is held the same way while it is written, and renamed.
        replace(&d.path().join("k.key"), b"key").unwrap();
        assert_eq!(std::fs::read(d.path().join("k.key")).unwrap(), b"key");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn creates_0600_and_never_follows_a_planted_symlink() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let p = d.path().join("out");
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        assert_eq!(create(&p).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        let e = open_existing(&p).unwrap_err();
        assert!(is_symlink_refusal(&e), "{e}");
        // A dangling symlink is refused as well (O_EXCL does not create through it).
        let dangling = d.path().join("dangling");
        std::os::unix::fs::symlink(d.path().join("nowhere"), &dangling).unwrap();
        assert!(create(&dangling).is_err());
        assert!(!d.path().join("nowhere").exists());

        assert!(read(&p).unwrap_err().to_string().contains("is a symlink"));
        assert!(replace(&p, b"secret")
            .unwrap_err()
            .to_string()
            .contains("is a symlink"));
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");

        // replace() of a regular file: private, atomic, no leftovers.
        let r = d.path().join("cache");
        std::fs::write(&r, b"old").unwrap();
        replace(&r, b"secret").unwrap();
        assert_eq!(&read(&r).unwrap()[..], b"secret");
        assert_eq!(mode(&r), 0o600);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 4);

        let q = d.path().join("new");
        drop(create(&q).unwrap());
        assert_eq!(mode(&q), 0o600);
        open_existing(&q).unwrap();
    }

    #[test]
    fn private_dirs_are_0700_and_real() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b");
        create_dir(&p).unwrap();
        assert_eq!(mode(&p), 0o700);
        create_dir(&p).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(create_dir(&link)
            .unwrap_err()
            .to_string()
            .contains("symlink"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(create_dir(&p)
            .unwrap_err()
            .to_string()
            .contains("other users"));
        // Another user's, as root can make one (skipped where the tests do not run as root).
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
            let e = create_dir(&p).unwrap_err().to_string();
            assert!(e.contains("belongs to another user (uid 65534"), "{e}");
        }
    }
}
