//! qcow2 images, written directly: `qemu-img create` makes `NAME.partial`
//! (a private file this run created), `qemu-nbd` serves it on a unix socket
//! in the state dir, and the pipeline writes through NBD like any other
//! export (zero ranges become qcow2 zero clusters: the image stays thin).
//! [`finish`](crate::Volume::finish) flushes, disconnects, waits for
//! `qemu-nbd` to exit and renames `NAME.partial` to `NAME`. No raw copy is
//! staged anywhere.
//!
//! `qemu-nbd` runs without `--persistent`: it exits when its one client
//! disconnects, also when mgear is killed, so nothing is left running and a
//! re-run can open the image again (qemu's image lock is free). One started
//! but not yet connected to (mgear killed during start-up) would wait for a
//! client forever, holding the lock: it is tied to mgear and gets SIGTERM
//! when mgear dies ([`spawn_tied`]). A re-run that still finds the lock
//! taken names the process that holds it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::file::sync_parent;
use crate::nbd::NbdVolume;
use crate::tool::{
    holders_of, reap_qemu_nbd, require, run, spawn_tied, stderr_tail, stop_qemu_nbd, Tie,
};
use crate::{key_of, short_hash, Error, Finished, Found, Geometry, Prepare, Result, Volume};

/// Longest unix socket path Linux accepts (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A qcow2 image served by our own `qemu-nbd`; see the module doc.
#[derive(Debug)]
pub struct Qcow2Volume {
    nbd: Option<NbdVolume>,
    server: Option<Child>,
    /// Keeps `server` tied to this process; dropped after it is reaped.
    tie: Option<Tie>,
    partial: PathBuf,
    final_path: PathBuf,
    sock: PathBuf,
    found: Found,
    /// An exclusive `flock` on the image while it is written (`file::lock_partial`).
    _lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

/// `p` as qemu's tools must be given a file: absolute. A relative name is read by them as
/// `PROTOCOL:REST` when it has a colon before any slash (`file:v.qcow2` became `v.qcow2`:
/// the image written was another file than the one renamed) and as an option when it starts
/// with `-`.
fn for_qemu(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| Path::new(".").join(p))
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl Qcow2Volume {
    /// Create (or reopen after an interruption) `PATH.partial` and serve it.
    pub fn create(path: &Path, prep: &Prepare) -> Result<Self> {
        let qemu_img = require("qemu-img", "qemu-utils")?;
        let qemu_nbd = require("qemu-nbd", "qemu-utils")?;
        if path.exists() && !prep.force {
            return Err(Error::Usage(format!(
                "{} exists: pass --force to replace it",
                path.display()
            )));
        }
        let partial = with_suffix(path, ".partial");
        // qemu-nbd takes only an absolute socket path (a relative
        // --state-dir, say `--state-dir st`, made it refuse to start).
        let state_dir = std::path::absolute(&prep.state_dir)
            .map_err(|e| Error::io(format!("the state dir {}", prep.state_dir.display()), e))?;
        let sock = state_dir.join(format!(
            "qcow2_{}.sock",
            short_hash(&key_of(&partial.to_string_lossy()))
        ));
        if sock.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(Error::Usage(format!(
                "the state dir {} is too long a path for qemu-nbd's unix socket: pass a shorter --state-dir",
                state_dir.display()
            )));
        }
        let found = match std::fs::symlink_metadata(&partial) {
            Ok(m) if m.is_file() => Found::Unfinished {
                adopt_without_state: false,
            },
            Ok(_) => {
                return Err(Error::Usage(format!(
                    "{} is not a regular file (a symlink?): refusing to write through it; remove it and run again",
                    partial.display()
                )))
            }
            Err(_) => Found::New,
        };
        // A new image is made and served as `PATH.partial.new` and named `.partial` only once
        // it is served, moments before the ingest's state is made: a run killed while
        // qemu-img or qemu-nbd started left a `.partial` without state, which the re-run
        // refused to adopt ("remove it and run again").
        let fresh = with_suffix(path, ".partial.new");
        // Another ingest writing it now holds its lock: told so, not "kill its qemu-nbd".
        let mut lock = match found {
            Found::New => None,
            _ => Some(crate::file::lock_partial(&partial)?),
        };
        if found == Found::New {
            // Ours, from a run killed while it was made: it never held data.
            if std::fs::symlink_metadata(&fresh).is_ok_and(|m| m.is_file()) {
                let _ = std::fs::remove_file(&fresh);
            }
            // qemu-img writes into a private file this run created (it
            // truncates and keeps the mode): never through a planted link.
            drop(
                image_format::private::create(&fresh).map_err(|e| {
                    Error::io(format!("creating {} (new, 0600)", fresh.display()), e)
                })?,
            );
            let size = prep.disk_size.to_string();
            let made = run(
                Command::new(&qemu_img)
                    .args(["create", "-q", "-f", "qcow2"])
                    .arg(for_qemu(&fresh))
                    .arg(&size),
                "qemu-img create",
            );
            if let Err(e) = made {
                let _ = std::fs::remove_file(&fresh);
                return Err(e);
            }
            // Taken on the new image; it stays with the file through its rename.
            lock = Some(crate::file::lock_partial(&fresh)?);
        }
        let mut v = Qcow2Volume {
            nbd: None,
            server: None,
            tie: None,
            partial: if found == Found::New {
                fresh.clone()
            } else {
                partial.clone()
            },
            final_path: path.to_owned(),
            sock,
            found,
            _lock: lock,
        };
        if let Err(e) = v.serve(&qemu_nbd) {
            if found == Found::New {
                let _ = std::fs::remove_file(&fresh);
            }
            return Err(e);
        }
        if found == Found::New {
            // qemu-nbd holds the image open: the rename moves it under the server.
            std::fs::rename(&fresh, &partial).map_err(|e| {
                Error::io(
                    format!("renaming {} to {}", fresh.display(), partial.display()),
                    e,
                )
            })?;
            v.partial = partial;
        }
        let nbd = v
            .nbd
            .as_ref()
            .ok_or_else(|| Error::Tool("qemu-nbd did not serve".into()))?;
        nbd.check_size(prep.disk_size)?;
        Ok(v)
    }

    /// Start qemu-nbd and connect. A qemu-nbd of a killed earlier run may
    /// still hold the image lock for a moment: retry briefly, then say who
    /// holds it.
    fn serve(&mut self, qemu_nbd: &Path) -> Result<()> {
        let url: mgear_nbd::NbdUrl = format!("nbd+unix:///?socket={}", self.sock.display())
            .parse()
            .map_err(|e| Error::Usage(format!("socket path {}: {e}", self.sock.display())))?;
        let mut last = String::new();
        for _attempt in 0..10 {
            if std::fs::symlink_metadata(&self.sock).is_ok() {
                let _ = std::fs::remove_file(&self.sock);
            }
            let mut cmd = Command::new(qemu_nbd);
            cmd.args(["-f", "qcow2", "--cache=writeback", "--discard=unmap", "-k"])
                .arg(&self.sock)
                .arg(for_qemu(&self.partial))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            // Tied: a SIGKILLed mgear takes its qemu-nbd with it. Before,
            // one killed during start-up (before it connected) waited for
            // a client forever, holding the image's write lock.
            let (mut child, tie) = spawn_tied(cmd, "qemu-nbd")?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    last = format!("qemu-nbd exited ({status}); {}", stderr_tail(&err));
                    break;
                }
                if std::fs::symlink_metadata(&self.sock).is_ok() {
                    match NbdVolume::connect(&url) {
                        Ok(mut nbd) => {
                            nbd.set_found(self.found);
                            self.nbd = Some(nbd);
                            self.server = Some(child);
                            self.tie = Some(tie);
                            return Ok(());
                        }
                        Err(e) => last = e.to_string(),
                    }
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    return Err(Error::Tool(format!(
                        "qemu-nbd did not serve {} within 30 s: {}",
                        self.partial.display(),
                        timeout_reason(&last, &err, &self.sock)
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if last.contains("lock") {
                std::thread::sleep(Duration::from_millis(500));
            } else {
                // Not a lock still being released: trying again will not help.
                break;
            }
        }
        if last.contains("lock") {
            return Err(Error::Tool(locked_message(
                &self.partial,
                &holders_of(&self.partial),
                &last,
            )));
        }
        Err(Error::Tool(format!(
            "qemu-nbd could not serve {}: {last}",
            self.partial.display()
        )))
    }

    fn nbd(&mut self) -> Result<&mut NbdVolume> {
        self.nbd
            .as_mut()
            .ok_or_else(|| Error::Tool("qemu-nbd connection already closed".into()))
    }

    /// Wait for qemu-nbd to exit after the disconnect; stop it if it does not.
    fn stop_server(&mut self) -> Result<()> {
        stop_qemu_nbd(&mut self.server, &self.sock, Duration::from_secs(30))
    }
}

/// Why qemu-nbd did not serve within the deadline: the last connection
/// error, else what it printed, else that its socket never appeared.
fn timeout_reason(last: &str, stderr: &str, sock: &Path) -> String {
    let printed = stderr_tail(stderr);
    match (last.is_empty(), stderr.trim().is_empty()) {
        (false, true) => last.to_string(),
        (false, false) => format!("{last}; {printed}"),
        (true, _) => format!(
            "its socket {} never accepted a connection; {printed}",
            sock.display()
        ),
    }
}

/// qemu-nbd could not take the image's write lock: who holds it (`holders`,
/// from [`holders_of`]) and what to do.
fn locked_message(partial: &Path, holders: &[String], qemu_said: &str) -> String {
    let pids: Vec<&str> = holders
        .iter()
        .filter_map(|h| h.rsplit_once("(pid ").map(|(_, p)| p.trim_end_matches(')')))
        .collect();
    let who = if holders.is_empty() {
        "another process holds its write lock (none of this user's processes has it open: a VM \
         or a qemu-nbd of another user, or another host on a shared file system?); stop it and \
         run the same command again"
            .to_string()
    } else {
        format!(
            "{} holds its write lock (a qemu-nbd left serving by an earlier run that was killed \
             waits for a client forever): stop it (`kill {}`) and run the same command again",
            holders.join(", "),
            pids.join(" ")
        )
    };
    format!(
        "cannot open {} through qemu-nbd: {who} ({qemu_said})",
        partial.display()
    )
}

impl Drop for Qcow2Volume {
    fn drop(&mut self) {
        // Unfinished: disconnect (qemu-nbd then exits on its own) and reap it.
        drop(self.nbd.take());
        reap_qemu_nbd(&mut self.server, &self.sock, Duration::from_secs(10));
    }
}

impl Qcow2Volume {
    /// qemu-nbd's ENOSPC, said of the image file whose file system is full (it named our
    /// private socket, with the hint to check it is reachable).
    fn full(&self, e: Error) -> Error {
        match &e {
            Error::Nbd { source, .. }
                if matches!(
                    **source,
                    mgear_nbd::Error::Command {
                        code: mgear_nbd::proto::ENOSPC,
                        ..
                    }
                ) =>
            {
                Error::io(
                    format!("writing {}", self.partial.display()),
                    std::io::Error::new(
                        std::io::ErrorKind::StorageFull,
                        "no space left on the file system that holds it",
                    ),
                )
            }
            _ => e,
        }
    }
}

impl Volume for Qcow2Volume {
    fn size(&self) -> u64 {
        self.nbd.as_ref().map_or(0, NbdVolume::size)
    }
    fn describe(&self) -> String {
        self.final_path.display().to_string()
    }
    fn state_key(&self) -> String {
        crate::absolute_key(&self.final_path)
    }
    fn found(&self) -> Found {
        self.found
    }
    fn unfinished_by_name(&self) -> bool {
        true
    }
    fn geometry(&self) -> Geometry {
        Geometry {
            // The image was made with the default 64 KiB clusters, and
            // qemu-nbd (`--discard=unmap`) makes zero writes zero clusters.
            thin_granule: Some(crate::THIN_GRANULE),
            ..self
                .nbd
                .as_ref()
                .map(NbdVolume::geometry)
                .unwrap_or_default()
        }
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let r = self.nbd()?.write_at(offset, data);
        r.map_err(|e| self.full(e))
    }
    fn fresh_reads_zero(&self) -> bool {
        // `qemu-img create` made NAME.partial in this run, without a backing file.
        self.found == Found::New
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        let r = self.nbd()?.write_zeroes(offset, len);
        r.map_err(|e| self.full(e))
    }
    fn flush(&mut self) -> Result<()> {
        let r = self.nbd()?.flush();
        r.map_err(|e| self.full(e))
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.nbd()?.read_at(offset, buf)
    }
    fn reads_as_zeros(&mut self, offset: u64, len: u64) -> bool {
        self.nbd
            .as_mut()
            .is_some_and(|n| n.reads_as_zeros(offset, len))
    }
    fn finish(mut self: Box<Self>) -> Result<Finished> {
        self.nbd()?.close()?;
        self.nbd = None;
        self.stop_server()?;
        std::fs::rename(&self.partial, &self.final_path).map_err(|e| {
            Error::io(
                format!(
                    "renaming {} to {}",
                    self.partial.display(),
                    self.final_path.display()
                ),
                e,
            )
        })?;
        sync_parent(&self.final_path)?;
        Ok(Finished {
            path: Some(self.final_path.clone()),
            format: "qcow2",
            volume: None,
        })
    }
    fn discard(mut self: Box<Self>) -> Result<()> {
        if let Some(mut n) = self.nbd.take() {
            let _ = n.close();
        }
        self.stop_server()?;
        if self.found == Found::New {
            std::fs::remove_file(&self.partial)
                .map_err(|e| Error::io(format!("removing {}", self.partial.display()), e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh ingest of a `size`-byte disk with its state in `dir`.
    fn prep(dir: &Path, size: u64) -> Prepare {
        Prepare {
            disk_size: size,
            head_len: 65536,
            state_dir: dir.to_owned(),
            force: false,
            what: "test".into(),
        }
    }

    #[test]
    fn writes_through_qemu_nbd_and_renames_on_finish() {
        if require("qemu-nbd", "qemu-utils").is_err() {
            eprintln!("skipped: qemu-utils not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("v.qcow2");
        let prep = prep(dir.path(), 4 << 20);
        // What a run killed while it made the image leaves: taken away, not adopted.
        std::fs::write(dir.path().join("v.qcow2.partial.new"), b"half made").unwrap();
        let mut v = Qcow2Volume::create(&target, &prep).unwrap();
        assert_eq!(v.found(), Found::New);
        // Made and served under `.partial.new`, named `.partial` once served.
        assert!(dir.path().join("v.qcow2.partial").is_file());
        assert!(!dir.path().join("v.qcow2.partial.new").exists());
        v.write_at(1 << 20, &[0x5a; 65536]).unwrap();
        v.write_zeroes(2 << 20, 1 << 20).unwrap();
        assert!(v.reads_as_zeros(2 << 20, 1 << 20));
        drop(v);
        // Killed before finishing: the partial is reopened, not replaced.
        let mut v = Qcow2Volume::create(&target, &prep).unwrap();
        assert!(matches!(v.found(), Found::Unfinished { .. }));
        let mut b = vec![0u8; 65536];
        v.read_at(1 << 20, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 0x5a));
        let done = Box::new(v).finish().unwrap();
        assert_eq!(done.format, "qcow2");
        assert!(target.exists() && !dir.path().join("v.qcow2.partial").exists());
        let raw = dir.path().join("back.raw");
        run(
            Command::new("qemu-img")
                .args(["convert", "-f", "qcow2", "-O", "raw"])
                .arg(&target)
                .arg(&raw),
            "qemu-img convert",
        )
        .unwrap();
        let back = std::fs::read(&raw).unwrap();
        assert_eq!(back.len(), 4 << 20);
        assert!(back[1 << 20..(1 << 20) + 65536].iter().all(|&x| x == 0x5a));
        assert!(back[..1 << 20].iter().all(|&x| x == 0));
        // No socket or server left behind.
        assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".sock")));
    }

    #[test]
    fn timeouts_and_lock_failures_name_a_reason() {
        let sock = Path::new("/st/q.sock");
        assert_eq!(
            timeout_reason("", "", sock),
            "its socket /st/q.sock never accepted a connection; it printed nothing"
        );
        assert_eq!(
            timeout_reason("", "boom\n", sock),
            "its socket /st/q.sock never accepted a connection; it printed: boom"
        );
        assert_eq!(timeout_reason("refused", "", sock), "refused");
        let m = locked_message(
            Path::new("v.qcow2.partial"),
            &["qemu-nbd (pid 42)".into()],
            "Failed to get \"write\" lock",
        );
        assert!(m.contains("qemu-nbd (pid 42) holds its write lock"), "{m}");
        assert!(m.contains("`kill 42`"), "{m}");
        let m = locked_message(Path::new("v.qcow2.partial"), &[], "lock");
        assert!(m.contains("another process holds its write lock"), "{m}");
    }

    #[test]
    fn a_resume_names_the_stale_qemu_nbd_that_holds_the_lock() {
        if require("qemu-nbd", "qemu-utils").is_err() {
            eprintln!("skipped: qemu-utils not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("v.qcow2");
        let prep = prep(dir.path(), 1 << 20);
        drop(Qcow2Volume::create(&target, &prep).unwrap());
        // What a killed run of an older mgear left: a qemu-nbd serving the
        // partial, waiting for a client that never comes.
        let partial = dir.path().join("v.qcow2.partial");
        let mut orphan = Command::new("qemu-nbd")
            .args(["-f", "qcow2", "-k"])
            .arg(dir.path().join("orphan.sock"))
            .arg(&partial)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dir.path().join("orphan.sock").exists() {
            assert!(Instant::now() < deadline, "the orphan did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let err = Qcow2Volume::create(&target, &prep).unwrap_err().to_string();
        let _ = orphan.kill();
        let _ = orphan.wait();
        assert!(
            err.contains(&format!("(pid {}) holds its write lock", orphan.id())),
            "{err}"
        );
        assert!(err.contains(&format!("`kill {}`", orphan.id())), "{err}");
    }
}
