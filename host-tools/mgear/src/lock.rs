//! One writer per medium: an advisory lock held for as long as a command
//! has the medium open; and one `mgear serve` or `mgear ingest` per volume.
//!
//! Two captures onto one FAT medium at once each keep their own copy of the
//! FAT in memory and overwrite each other's clusters: both print "captured",
//! one capture vanishes, fsck finds lost clusters. So writers take an
//! exclusive `flock(2)` on the image file, block device or mounted directory
//! before the first byte is read, and readers a shared one; a second command
//! is refused at once with the pid and command line of the holder (read from
//! `/proc/locks`). The lock goes with the process: a killed capture leaves
//! nothing to clean up.
//!
//! A running capture also holds a shared lock on its data key in the key cache, which
//! `mgear keys forget` must take exclusively: a key forgotten under a running capture left
//! it finishing with exit 0 and every later delta refused for want of its key.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::exit::coded;

/// A held medium lock; released on drop.
pub struct MediumLock {
    _lock: Flock<File>,
    /// The image behind a loop device, locked too.
    _behind: Option<Box<MediumLock>>,
}

/// Lock the medium at `path` (file, device or directory): `exclusive` for
/// commands that write it. Fails with exit 3 and names the holder.
///
/// A loop device is locked together with the image file behind it: a
/// capture onto `fat:/dev/loop0` and another onto `fat:medium.img` (the
/// file loop0 reads) would otherwise each hold a lock of its own on one FAT.
pub fn lock(path: &Path, exclusive: bool, spec: &str) -> crate::Result<MediumLock> {
    use std::os::unix::fs::FileTypeExt;
    let why = "a medium is written by one command at a time, and not while another reads \
               it. Wait for it to finish (or stop it: a capture or ingest resumes later, a \
               verify or inspect is run again), then run this again";
    let what = format!("medium {spec}");
    let behind = std::fs::metadata(path)
        .ok()
        .filter(|m| m.file_type().is_block_device())
        .and_then(|m| crate::guard::loop_backing_file(m.rdev()));
    // An image this user cannot open is one no other mgear of theirs can write either.
    let behind = match behind.filter(|image| File::open(image).is_ok()) {
        Some(image) => Some(Box::new(take(
            &image,
            exclusive,
            std::time::Duration::ZERO,
            &format!("{what} (the loop device of {})", image.display()),
            why,
        )?)),
        None => None,
    };
    if exclusive {
        wait_out_readers(path);
    }
    let mut held = take(path, exclusive, std::time::Duration::ZERO, &what, why)?;
    if exclusive && locked_by_another_program(&held._lock) {
        return Err(crate::exit::coded_next(
            crate::exit::IO,
            format_args!(
                "{what} is locked against writers by another program (a running \
                 mgear-appliance-sim serves it as its medium, or a QEMU or qemu-nbd has it \
                 open: QEMU locks the images it opens, read-only ones too): a second writer \
                 would damage its FAT while both reported success"
            ),
            "write to it through that program (the appliance: --appliance PORT), or stop it first",
        ));
    }
    held._behind = behind;
    Ok(held)
}

/// Whether another process holds a POSIX or open-file-description lock on `file` that a
/// writer conflicts with: `mgear-appliance-sim` holds one on its medium image (not a
/// `flock`, so `mgear` may still read the image beside it), and QEMU on the images it has
/// open. A file that cannot be asked is taken as free (the `flock` held is the rule).
fn locked_by_another_program(file: &File) -> bool {
    use nix::fcntl::{fcntl, FcntlArg};
    let mut probe = nix::libc::flock {
        l_type: nix::libc::F_WRLCK as nix::libc::c_short,
        l_whence: nix::libc::SEEK_SET as nix::libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    fcntl(file, FcntlArg::F_OFD_GETLK(&mut probe)).is_ok()
        && probe.l_type != nix::libc::F_UNLCK as nix::libc::c_short
}

/// Lock an appliance's medium through the lock file its exporter keeps beside
/// its NBD socket (`mgear_nbd::export_lock_path`); `None` where there is none
/// (a simulator older than the lock file). The export itself would let a
/// second capture, or a `capture --abort`, write the same FAT at once.
pub fn lock_export(
    lock_file: &Path,
    exclusive: bool,
    what: &str,
) -> crate::Result<Option<MediumLock>> {
    if !lock_file.exists() {
        return Ok(None);
    }
    take(
        lock_file,
        exclusive,
        std::time::Duration::ZERO,
        &format!("the medium of {what}"),
        "one command writes an appliance's medium at a time. Wait for it to finish (or stop \
         it: it resumes later), then run this again",
    )
    .map(Some)
}

/// Lock a volume `mgear serve` writes in place (a `file:` or `dev:` target)
/// for as long as it serves: a second serve would answer syncs from its own
/// view of the volume, taken when it started, and call a stale volume
/// verified.
pub fn lock_volume(path: &Path, spec: &str) -> crate::Result<MediumLock> {
    // A serve that just answered its last sync (`--once`) may still be
    // exiting when a script starts the next one: give it a moment.
    take(
        path,
        true,
        std::time::Duration::from_secs(5),
        &format!("target {spec}"),
        "one serve writes a volume at a time. Stop the other serve (or point the sync at it), \
         then run this again",
    )
}

/// Refuse a volume `mgear serve` holds ([`lock_volume`]): an ingest would rename a new file
/// over it while serve kept writing syncs into the old one, deleted, and called them
/// verified. Nothing is held afterwards (the ingest's own lock is
/// [`lock_ingest_target`]); a volume that does not exist yet is nobody's.
pub fn refuse_served_volume(path: &Path, spec: &str) -> crate::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    take(
        path,
        true,
        std::time::Duration::ZERO,
        &format!("target {spec}"),
        "the process named holds it: a `mgear serve` keeping it for syncs (stop it with \
         Ctrl-C), or a capture reading it as its source or writing it as its medium (let it \
         finish); then run this command again",
    )
    .map(drop)
}

/// Lock the target of an ingest for as long as it writes: `key` names the
/// volume however it was spelled (`crate::spec::volume_key`); the lock file
/// lives in the ingest's state directory. A second ingest into the same
/// volume would adopt the first one's unfinished volume and finish it under
/// its feet.
pub fn lock_ingest_target(state_dir: &Path, key: &str, spec: &str) -> crate::Result<IngestLock> {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(key.as_bytes());
    let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let path = state_dir.join(format!("target-{name}.lock"));
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| coded(crate::exit::IO, format!("creating {}: {e}", path.display())))?;
    let lock = take(
        &path,
        true,
        std::time::Duration::ZERO,
        &format!("target {spec}"),
        "one ingest writes a volume at a time. Wait for it to finish (or stop it: it resumes \
         later), then run this again",
    )?;
    Ok(IngestLock { _lock: lock, path })
}

/// A held ingest lock: its file is removed when the ingest ends (the state
/// dir keeps nothing of a finished ingest); a killed one leaves an empty
/// file that the next run takes and removes.
pub struct IngestLock {
    _lock: MediumLock,
    path: std::path::PathBuf,
}

impl Drop for IngestLock {
    fn drop(&mut self) {
        // Removed while still locked: the lock itself goes with the field.
        let _ = std::fs::remove_file(&self.path);
    }
}

fn take(
    path: &Path,
    exclusive: bool,
    patience: std::time::Duration,
    what: &str,
    why: &str,
) -> crate::Result<MediumLock> {
    let mut file = File::open(path)
        .map_err(|e| coded(crate::exit::IO, format!("opening {what} to lock it: {e}")))?;
    let inode = file.metadata().map(|m| m.ino()).ok();
    let arg = if exclusive {
        FlockArg::LockExclusiveNonblock
    } else {
        FlockArg::LockSharedNonblock
    };
    let deadline = std::time::Instant::now() + patience;
    let mut said = false;
    let taken = loop {
        match Flock::lock(file, arg) {
            Err((f, errno))
                if errno == nix::errno::Errno::EWOULDBLOCK
                    && std::time::Instant::now() < deadline =>
            {
                if !said {
                    // Silence for the whole wait read as a hang.
                    eprintln!(
                        "mgear: {what} is in use; waiting up to {} s for it to be released",
                        patience.as_secs()
                    );
                    said = true;
                }
                file = f;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => break other,
        }
    };
    match taken {
        Ok(lock) => Ok(MediumLock {
            _lock: lock,
            _behind: None,
        }),
        Err((_, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
            let holder = inode
                .and_then(holder_of)
                // A holder just killed has no command line left to show.
                .map(|(pid, cmd)| match cmd.trim() {
                    "" => format!(" by pid {pid}"),
                    cmd => format!(" by pid {pid} ({cmd})"),
                })
                .unwrap_or_default();
            // The I/O class's hint ("reconnect it") fits nothing here.
            Err(crate::exit::coded_hint(
                crate::exit::IO,
                format!("{what} is in use{holder}: {why}"),
                format!(
                    "let the process that holds it finish, or stop it{} if it should not be \
                     running (a `mgear serve` of that volume ends with Ctrl-C), then run the \
                     same command again",
                    if holder.is_empty() {
                        ""
                    } else {
                        " (the pid above)"
                    }
                ),
            ))
        }
        Err((_, errno)) => Err(coded(crate::exit::IO, format!("locking {what}: {errno}"))),
    }
}

/// Before a writer's lock: wait (up to 5 s) while only readers hold `path`. Commands read the
/// medium for a moment before they open it for writing (a resume, an abort): two started
/// together each found the other's brief read and were both refused, each naming the other,
/// and neither wrote. A writer holding it is never waited for (the refusal names it at once).
fn wait_out_readers(path: &Path) {
    let Ok(inode) = std::fs::metadata(path).map(|m| m.ino()) else {
        return;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline && only_readers_hold(inode) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Whether other processes hold `flock`s on `inode`, all of them shared (readers).
fn only_readers_hold(inode: u64) -> bool {
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return false;
    };
    let me = std::process::id();
    let mut readers = 0;
    for line in locks.lines() {
        // "1: FLOCK  ADVISORY  READ 1234 fe:01:5678 0 EOF"
        let f: Vec<&str> = line.split_whitespace().collect();
        let ino = f
            .get(5)
            .and_then(|d| d.rsplit(':').next()?.parse::<u64>().ok());
        let pid = f.get(4).and_then(|p| p.parse::<u32>().ok());
        if f.get(1) != Some(&"FLOCK") || ino != Some(inode) || pid == Some(me) {
            continue;
        }
        match f.get(3) {
            Some(&"READ") => readers += 1,
            _ => return false,
        }
    }
    readers > 0
}

/// The process holding a flock on `inode`, from `/proc/locks`, with its
/// command line.
fn holder_of(inode: u64) -> Option<(u32, String)> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let me = std::process::id();
    locks.lines().find_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 1234 fe:01:5678 0 EOF"
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&"FLOCK") {
            return None;
        }
        let pid: u32 = f.get(4)?.parse().ok()?;
        let ino: u64 = f.get(5)?.rsplit(':').next()?.parse().ok()?;
        if ino != inode || pid == me {
            return None;
        }
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|raw| {
                raw.split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        Some((pid, cmd))
    })
}

/// A running capture's hold on its cached data key at `path` (see the module doc); `None`
/// where the file cannot be opened (the capture goes on: its key is in memory).
pub fn hold_key(path: &Path) -> Option<MediumLock> {
    let file = File::open(path).ok()?;
    Flock::lock(file, FlockArg::LockSharedNonblock)
        .ok()
        .map(|lock| MediumLock {
            _lock: lock,
            _behind: None,
        })
}

/// The cached data key at `path` of capture `name`, free to forget: refused (exit 3, naming
/// the holder) while a capture that uses it runs.
pub fn free_key(path: &Path, name: &str) -> crate::Result<MediumLock> {
    take(
        path,
        true,
        std::time::Duration::ZERO,
        &format!("the data key of capture {name}"),
        "a capture that uses it is running, and its later deltas and resumes need the key",
    )
    .map_err(|e| {
        crate::exit::coded_hint(
            crate::exit::IO,
            e.to_string(),
            "let that capture finish (or stop it: it resumes later), then forget the key",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_writer_many_readers() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("m.img");
        std::fs::write(&img, b"medium").unwrap();
        let spec = "fat:m.img";
        {
            let _a = lock(&img, false, spec).unwrap();
            let _b = lock(&img, false, spec).unwrap();
            let e = lock(&img, true, spec).err().expect("writer beside readers");
            assert_eq!(crate::exit::code_of(&e), crate::exit::IO);
        }
        let w = lock(&img, true, spec).unwrap();
        let e = lock(&img, true, spec).err().expect("second writer");
        assert!(e.to_string().contains("is in use"), "{e}");
        assert!(lock(&img, false, spec).is_err(), "reader beside a writer");
        drop(w);
        // Directories (dir: media) lock too.
        let _d = lock(dir.path(), true, "dir:.").unwrap();
        assert!(lock(dir.path(), true, "dir:.").is_err());
    }

    #[test]
    fn a_loop_device_and_its_image_are_one_medium() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("m.img");
        std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        let Some(dev) = crate::guard::tests::Loop::over(&img) else {
            eprintln!("no loop device here (needs root and the loop driver): nothing to check");
            return;
        };
        let w = lock(&dev.0, true, "fat:/dev/loopN").unwrap();
        let e = lock(&img, true, "fat:m.img")
            .err()
            .expect("the image under a writer's loop device");
        assert!(e.to_string().contains("is in use"), "{e}");
        drop(w);
        let w = lock(&img, true, "fat:m.img").unwrap();
        let e = lock(&dev.0, false, "fat:/dev/loopN")
            .err()
            .expect("the loop device over a written image");
        assert!(e.to_string().contains("loop device of"), "{e}");
        drop(w);
        let _r1 = lock(&dev.0, false, "fat:/dev/loopN").unwrap();
        let _r2 = lock(&img, false, "fat:m.img").unwrap();
    }

    /// A reader's brief hold (another command's look before it writes) is waited out by a
    /// writer; a writer's is not.
    #[test]
    fn a_writer_waits_out_a_brief_reader_but_not_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("m.img");
        std::fs::write(&img, b"medium").unwrap();
        let hold = |mode: &str, secs: &str| {
            std::process::Command::new("flock")
                .arg(mode)
                .arg(&img)
                .args(["sleep", secs])
                .spawn()
                .ok()
        };
        let held = |child: &std::process::Child| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !std::fs::read_to_string("/proc/locks")
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains(&format!(" {} ", child.id())))
            {
                assert!(std::time::Instant::now() < deadline, "flock never took it");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        };
        let Some(mut reader) = hold("-s", "1") else {
            return; // util-linux is on every Debian; nothing to check without it
        };
        held(&reader);
        let w = lock(&img, true, "fat:m.img").expect("the reader was waited out");
        drop(w);
        let _ = reader.wait();
        let Some(mut writer) = hold("-x", "3") else {
            return;
        };
        held(&writer);
        let started = std::time::Instant::now();
        let e = lock(&img, true, "fat:m.img")
            .err()
            .expect("a writer holds it");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "a writer was waited for"
        );
        assert!(e.to_string().contains("is in use"), "{e}");
        let _ = writer.kill();
        let _ = writer.wait();
    }

    #[test]
    fn the_holder_is_named_from_another_process() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("m.img");
        std::fs::write(&img, b"medium").unwrap();
        // flock(1) from util-linux holds the lock in another process.
        let Ok(mut child) = std::process::Command::new("flock")
            .arg("-x")
            .arg(&img)
            .args(["sleep", "30"])
            .spawn()
        else {
            return; // util-linux is on every Debian; nothing to check without it
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let err = loop {
            match lock(&img, true, "fat:m.img") {
                Err(e) => break e,
                Ok(l) => {
                    drop(l);
                    assert!(
                        std::time::Instant::now() < deadline,
                        "flock never took the lock"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", child.id())) || text.contains("sleep 30"),
            "{text}"
        );
        // Its next step is to wait or stop the holder, not the I/O class's "reconnect it".
        let hint = crate::exit::hint(&err, "ingest");
        assert!(
            hint.contains("finish") && !hint.contains("reconnect"),
            "{hint}"
        );
    }
}
