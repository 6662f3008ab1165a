//! Ceph RBD images (`rbd:POOL/IMAGE[?conf=PATH&id=USER]`), written straight into the cluster.
//!
//! There is no kernel rbd or nbd module on the ingest hosts, and no nbdkit rbd plugin in
//! Debian: qemu's rbd block driver (Debian `qemu-block-extra`) does the librbd side, served by
//! our own `qemu-nbd` on a unix socket in the state dir, and the pipeline writes through NBD.
//! RBD is latency-bound (each write is a round trip to an OSD), so the volume opens several NBD
//! connections to that one `qemu-nbd` (one block backend: every connection sees every write)
//! and [`Volume::write_batch`] / [`Volume::read_batch`] spread a batch over them: that many
//! writes (and, for the read-back check, reads) are in flight.
//! Zero ranges become `NBD_CMD_WRITE_ZEROES`, which qemu turns into librbd write-zeroes /
//! discards: the image stays thin (`rbd du` shows only what holds data).
//!
//! Which image: an existing one is written only when asked for ([`Existing::Open`], e.g. the
//! image Cinder made for a volume) or with `--force`; otherwise it is created with
//! `qemu-img create` at the disk's size. An image has no unfinished name, so a marker in the
//! state dir (`rbd_<hash>.mgear-incomplete`) exists from before the first write until the
//! read-back passed: a re-run with the same state dir resumes into the same image.
//!
//! Cluster settings: `conf=` and `id=` in the spec, else `CEPH_CONF` and the `--id`/`--user`/
//! `--name client.X` of `CEPH_ARGS`, else librados' defaults (`/etc/ceph/ceph.conf`,
//! `client.admin`). The keyring is found the way every Ceph client finds it (the conf's
//! `keyring`, `/etc/ceph/ceph.client.USER.keyring`).
//!
//! `qemu-nbd` runs without `--persistent`: it exits when the last connection closes, also when
//! mgear is killed, so nothing is left holding the image.
//!
//! The read-back check runs beside the writes through an [`RbdReader`]
//! ([`Volume::concurrent_reader`]): a second `qemu-nbd`, read-only and with `--cache=none`
//! (qemu then sets `rbd_cache=false`), on its own socket and with its own connections. Its
//! reads go to the OSDs, never to a cache of the writing client (whatever `rbd_cache_policy`
//! the cluster sets), and it never takes the image's exclusive lock (only writers do), so the
//! writer keeps it. Set-up is kept short because it is paid on every ingest: a new image is
//! created without asking `rbd info` first (`qemu-img create` says when it exists), a
//! just-created image is not zeroed again (it reads as zeros), and the connections are opened
//! in parallel.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::marker::Marker;
use crate::nbd::NbdVolume;
use crate::tool::{reap_qemu_nbd, require, stop_qemu_nbd, terminate};
use crate::{
    key_of, short_hash, Error, Finished, Found, Geometry, Prepare, ReadAt, Result, Volume,
    VolumeReader, WriteAt,
};

/// Longest unix socket path Linux accepts (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// NBD connections to `qemu-nbd`, i.e. writes in flight (the `-m 16` of a tuned `qemu-img
/// convert` is the same idea). Not tuned yet: see `mgear bench --rbd`.
const CONNECTIONS: usize = 8;
/// Every Ceph CLI call gives up after this instead of hanging on an unreachable monitor.
const MOUNT_TIMEOUT_SECS: &str = "30";

/// Where an RBD image is and how to reach its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdSpec {
    /// Pool.
    pub pool: String,
    /// Image.
    pub image: String,
    /// ceph.conf to use (`conf=`, else `CEPH_CONF`); librados' default when `None`.
    pub conf: Option<PathBuf>,
    /// Ceph user without `client.` (`id=`, else from `CEPH_ARGS`); `admin` when `None`.
    pub user: Option<String>,
}

fn check_name(what: &str, s: &str, spec: &str) -> Result<()> {
    let ok = !s.is_empty()
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "rbd target {spec:?}: {what} {s:?} must be letters, digits, '.', '_' or '-' \
             (use rbd:POOL/IMAGE[?conf=PATH&id=USER])"
        )))
    }
}

impl RbdSpec {
    /// Parse `POOL/IMAGE[?conf=PATH&id=USER]` (the part after `rbd:`; a leading `rbd:` is
    /// accepted too). Settings missing from the spec come from `env` (`CEPH_CONF`,
    /// `CEPH_ARGS`).
    pub fn parse_with_env(s: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let body = s.strip_prefix("rbd:").unwrap_or(s);
        let (path, query) = body.split_once('?').unwrap_or((body, ""));
        let (pool, image) = path.split_once('/').ok_or_else(|| {
            Error::Usage(format!(
                "rbd target {s:?} names no image: use rbd:POOL/IMAGE[?conf=PATH&id=USER]"
            ))
        })?;
        check_name("pool", pool, s)?;
        check_name("image", image, s)?;
        let mut conf = None;
        let mut user = None;
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            match kv.split_once('=') {
                Some(("conf", v)) if !v.is_empty() => conf = Some(PathBuf::from(v)),
                Some(("id", v)) if !v.is_empty() => user = Some(v.to_string()),
                _ => {
                    return Err(Error::Usage(format!(
                        "rbd target {s:?}: unknown setting {kv:?} (known: conf=PATH, id=USER)"
                    )))
                }
            }
        }
        if conf.is_none() {
            conf = env("CEPH_CONF")
                .filter(|c| !c.is_empty())
                .map(PathBuf::from);
        }
        if user.is_none() {
            user = env("CEPH_ARGS").and_then(|a| user_from_ceph_args(&a));
        }
        if let Some(c) = &conf {
            // qemu's rbd filename separates its options with ':'.
            if c.to_string_lossy().contains(':') {
                return Err(Error::Usage(format!(
                    "ceph.conf path {} contains ':', which qemu's rbd driver cannot take: \
                     use a path without it",
                    c.display()
                )));
            }
        }
        if let Some(u) = &user {
            check_name("user", u, s)?;
        }
        Ok(RbdSpec {
            pool: pool.to_string(),
            image: image.to_string(),
            conf,
            user,
        })
    }

    /// [`RbdSpec::parse_with_env`] with the process environment.
    pub fn parse(s: &str) -> Result<Self> {
        Self::parse_with_env(s, |k| std::env::var(k).ok())
    }

    /// `POOL/IMAGE`.
    pub fn image_spec(&self) -> String {
        format!("{}/{}", self.pool, self.image)
    }

    /// The image as qemu's rbd driver takes it: `rbd:POOL/IMAGE[:conf=PATH][:id=USER]`
    /// (for `qemu-img`, `qemu-nbd` and `-drive file=`).
    pub fn qemu_filename(&self) -> String {
        let mut s = format!("rbd:{}", self.image_spec());
        if let Some(c) = &self.conf {
            s.push_str(&format!(":conf={}", c.display()));
        }
        if let Some(u) = &self.user {
            s.push_str(&format!(":id={u}"));
        }
        s
    }

    /// Arguments every `rbd` CLI call gets: the conf, the user, a mount timeout.
    fn cli_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        if let Some(c) = &self.conf {
            a.push("-c".into());
            a.push(c.into());
        }
        if let Some(u) = &self.user {
            a.push("--id".into());
            a.push(u.into());
        }
        a.push("--client_mount_timeout".into());
        a.push(MOUNT_TIMEOUT_SECS.into());
        a
    }
}

impl std::fmt::Display for RbdSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rbd:{}", self.image_spec())?;
        let mut sep = '?';
        if let Some(c) = &self.conf {
            write!(f, "{sep}conf={}", c.display())?;
            sep = '&';
        }
        if let Some(u) = &self.user {
            write!(f, "{sep}id={u}")?;
        }
        Ok(())
    }
}

/// The user of `--id X`, `--user X`, `--name client.X`, `-n client.X` (also `--id=X`).
fn user_from_ceph_args(args: &str) -> Option<String> {
    let words: Vec<&str> = args.split_whitespace().collect();
    let mut found = None;
    for (i, w) in words.iter().enumerate() {
        let (key, val) = match w.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (*w, words.get(i + 1).copied()),
        };
        match (key, val) {
            ("--id" | "--user" | "-i", Some(v)) => found = Some(v.to_string()),
            ("--name" | "-n", Some(v)) => {
                found = Some(v.strip_prefix("client.").unwrap_or(v).to_string())
            }
            _ => {}
        }
    }
    found
}

/// What to do with an image that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Create the image when missing; an existing one (not ours to resume) needs `--force`.
    CreateOrForce,
    /// The image must exist and is written (Cinder made it for its volume).
    Open,
}

/// An RBD image written through qemu-nbd; see the module doc.
#[derive(Debug)]
pub struct RbdVolume {
    spec: RbdSpec,
    conns: Vec<NbdVolume>,
    server: Option<Child>,
    sock: PathBuf,
    marker: Marker,
    found: Found,
    qemu_nbd: PathBuf,
}

/// `rbd info` of an image: its size, or `None` when it does not exist.
fn image_size(rbd: &Path, spec: &RbdSpec) -> Result<Option<u64>> {
    let out = Command::new(rbd)
        .args(spec.cli_args())
        .args(["info", "--format", "json"])
        .arg(spec.image_spec())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io("running rbd info", e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") || out.status.code() == Some(2) {
            return Ok(None);
        }
        return Err(Error::Tool(format!(
            "rbd info {} failed ({}): {} (is the cluster reachable? conf {}, user {})",
            spec.image_spec(),
            out.status,
            err.trim(),
            spec.conf
                .as_ref()
                .map_or("default".into(), |c| c.display().to_string()),
            spec.user.as_deref().unwrap_or("admin")
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let size = text
        .split("\"size\":")
        .nth(1)
        .and_then(|r| {
            let digits: String = r
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse::<u64>().ok()
        })
        .ok_or_else(|| {
            Error::Tool(format!(
                "rbd info {}: no size in {text:?}",
                spec.image_spec()
            ))
        })?;
    Ok(Some(size))
}

/// The refusal of an image smaller than the disk.
fn too_small(spec: &RbdSpec, size: u64, prep: &Prepare) -> Error {
    Error::Usage(format!(
        "RBD image {} holds {size} bytes but the disk has {}: resize it \
         (rbd resize --size {}B) or name another image",
        spec.image_spec(),
        prep.disk_size,
        prep.disk_size
    ))
}

/// `qemu-img create` the image: `true` when it was created, `false` when it already exists.
fn create_image(qemu_img: &Path, spec: &RbdSpec, size: u64) -> Result<bool> {
    let out = Command::new(qemu_img)
        .args(["create", "-q", "-f", "raw"])
        .arg(spec.qemu_filename())
        .arg(size.to_string())
        // "File exists" below is strerror(EEXIST) in the C locale.
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io("running qemu-img create (rbd)", e))?;
    if out.status.success() {
        return Ok(true);
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("File exists") {
        return Ok(false);
    }
    Err(Error::Tool(format!(
        "qemu-img create {} failed ({}): {} (is the cluster reachable? conf {}, user {})",
        spec.image_spec(),
        out.status,
        err.trim(),
        spec.conf
            .as_ref()
            .map_or("default".into(), |c| c.display().to_string()),
        spec.user.as_deref().unwrap_or("admin")
    )))
}

/// Start `qemu-nbd` serving the image on `sock` (read-only and uncached for a reader).
fn spawn_qemu_nbd(qemu_nbd: &Path, spec: &RbdSpec, sock: &Path, reader: bool) -> Result<Child> {
    if std::fs::symlink_metadata(sock).is_ok() {
        let _ = std::fs::remove_file(sock);
    }
    let mut cmd = Command::new(qemu_nbd);
    // If mgear is killed, qemu-nbd goes too (it would also exit once its connections
    // close, but a write in flight to a slow cluster can keep it a while).
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // async-signal-safe prctl(2) call.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(std::io::Error::from)
        });
    }
    if reader {
        // No librbd cache: what the read-back reads comes from the OSDs.
        cmd.args(["-r", "-f", "raw", "--cache=none"]);
    } else {
        cmd.args(["-f", "raw", "--cache=writeback", "--discard=unmap"]);
    }
    cmd.arg(format!("--shared={CONNECTIONS}"))
        .arg("-k")
        .arg(sock)
        .arg(spec.qemu_filename())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io("starting qemu-nbd", e))
}

/// Wait for the `qemu-nbd` of `child` to listen on `sock` and open [`CONNECTIONS`]
/// connections to it (the first alone, the others in parallel). On failure the child is
/// stopped.
fn connect_all(
    child: &mut Child,
    spec: &RbdSpec,
    sock: &Path,
    read_only: bool,
) -> Result<Vec<NbdVolume>> {
    let url: mgear_nbd::NbdUrl = format!("nbd+unix:///?socket={}", sock.display())
        .parse()
        .map_err(|e| Error::Usage(format!("socket path {}: {e}", sock.display())))?;
    let connect = |url: &mgear_nbd::NbdUrl| {
        if read_only {
            NbdVolume::connect_read_only(url)
        } else {
            NbdVolume::connect(url)
        }
    };
    // Connecting to the cluster takes a moment; an unreachable one makes qemu-nbd exit.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    let first = loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(Error::Tool(format!(
                "qemu-nbd could not serve {spec} ({status}): {}",
                err.trim()
            )));
        }
        if std::fs::symlink_metadata(sock).is_ok() {
            match connect(&url) {
                Ok(first) => break first,
                Err(e) => last = e.to_string(),
            }
        }
        if Instant::now() > deadline {
            terminate(child);
            return Err(Error::Tool(format!(
                "qemu-nbd did not serve {spec} within 60 s: {last}"
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // The first connection keeps qemu-nbd up while the others join.
    let rest: Vec<Result<NbdVolume>> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..CONNECTIONS)
            .map(|_| s.spawn(|| connect(&url)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Tool("an NBD connect thread panicked".into())))
            })
            .collect()
    });
    let mut conns = vec![first];
    for c in rest {
        conns.push(c?);
    }
    Ok(conns)
}

impl RbdVolume {
    /// Open (or create) the image for an ingest of `prep.disk_size` bytes and serve it.
    pub fn open(spec: &RbdSpec, prep: &Prepare, existing: Existing) -> Result<Self> {
        let rbd = require("rbd", "ceph-common")?;
        let qemu_img = require("qemu-img", "qemu-utils")?;
        let qemu_nbd = require("qemu-nbd", "qemu-utils")?;
        let key = short_hash(&spec.image_spec());
        let marker = Marker::new(&prep.state_dir, &format!("rbd_{key}"));
        // qemu-nbd takes only an absolute socket path.
        let sock = std::path::absolute(&prep.state_dir)
            .map_err(|e| Error::io(format!("resolving {}", prep.state_dir.display()), e))?
            .join(format!("rbd_{key}.sock"));
        // The reader's socket (`.r.sock`) is the longer one.
        if sock.as_os_str().len() + 2 > MAX_SOCKET_PATH {
            return Err(Error::Usage(format!(
                "the state dir {} is too long a path for qemu-nbd's unix socket: pass a shorter --state-dir",
                prep.state_dir.display()
            )));
        }
        // Whether the image needs its head cleared: it may hold an older disk.
        let mut old_content = false;
        let found = match existing {
            Existing::CreateOrForce => {
                // Creating first saves asking `rbd info` on every new image; a marker
                // without its image means an earlier run died before creating it.
                let had_marker = marker.exists();
                if !had_marker {
                    marker.create(&format!("{} into {spec}", prep.what))?;
                }
                match create_image(&qemu_img, spec, prep.disk_size)? {
                    true => Found::New,
                    false if had_marker => Found::Unfinished {
                        adopt_without_state: true,
                    },
                    false if !prep.force => {
                        marker.remove()?;
                        return Err(Error::Usage(format!(
                            "RBD image {} exists: pass --force to overwrite it",
                            spec.image_spec()
                        )));
                    }
                    false => {
                        old_content = true;
                        Found::New
                    }
                }
            }
            Existing::Open => match image_size(&rbd, spec)? {
                None => {
                    return Err(Error::Usage(format!(
                        "RBD image {} does not exist (rbd ls {})",
                        spec.image_spec(),
                        spec.pool
                    )))
                }
                Some(size) if size < prep.disk_size => return Err(too_small(spec, size, prep)),
                Some(_) if marker.exists() => Found::Unfinished {
                    adopt_without_state: true,
                },
                Some(_) => {
                    marker.create(&format!("{} into {spec}", prep.what))?;
                    old_content = true;
                    Found::New
                }
            },
        };
        let mut v = RbdVolume {
            spec: spec.clone(),
            conns: Vec::new(),
            server: None,
            sock,
            marker,
            found,
            qemu_nbd,
        };
        v.serve()?;
        // (An existing image was not sized above when it was created over.)
        if v.size() < prep.disk_size {
            if v.found == Found::New {
                v.marker.remove()?;
            }
            return Err(too_small(spec, v.size(), prep));
        }
        if old_content && prep.head_len > 0 {
            // An image that may hold old data must not look bootable before it is complete.
            let head = prep.head_len.min(v.size());
            v.write_zeroes(0, head)?;
            v.flush()?;
        }
        Ok(v)
    }

    /// The image.
    pub fn spec(&self) -> &RbdSpec {
        &self.spec
    }

    /// Start qemu-nbd on the image and open [`CONNECTIONS`] connections to it.
    fn serve(&mut self) -> Result<()> {
        let mut child = spawn_qemu_nbd(&self.qemu_nbd, &self.spec, &self.sock, false)?;
        let mut conns = match connect_all(&mut child, &self.spec, &self.sock, false) {
            Ok(c) => c,
            Err(e) => {
                // Closing what connected lets qemu-nbd exit; then it is reaped.
                self.server = Some(child);
                return Err(e);
            }
        };
        conns[0].set_found(self.found);
        self.conns = conns;
        self.server = Some(child);
        Ok(())
    }

    fn first(&mut self) -> Result<&mut NbdVolume> {
        self.conns
            .first_mut()
            .ok_or_else(|| Error::Tool("qemu-nbd connections already closed".into()))
    }

    /// Wait for qemu-nbd to exit after the last disconnect; stop it if it does not.
    fn stop_server(&mut self) -> Result<()> {
        stop_qemu_nbd(&mut self.server, &self.sock, Duration::from_secs(60))
    }
}

/// The read-back side of an [`RbdVolume`]: its own read-only, uncached `qemu-nbd` on the image
/// (see the module doc), connected on its first use so that its set-up overlaps the first
/// writes.
#[derive(Debug)]
pub struct RbdReader {
    spec: RbdSpec,
    sock: PathBuf,
    server: Option<Child>,
    conns: Vec<NbdVolume>,
}

impl RbdReader {
    fn connected(&mut self) -> Result<&mut [NbdVolume]> {
        if self.conns.is_empty() {
            let child = self
                .server
                .as_mut()
                .ok_or_else(|| Error::Tool("the read-back qemu-nbd is gone".into()))?;
            self.conns = connect_all(child, &self.spec, &self.sock, true)?;
        }
        Ok(&mut self.conns)
    }
}

impl VolumeReader for RbdReader {
    fn read_batch(&mut self, reads: &mut [ReadAt<'_>]) -> Result<()> {
        fan_out(self.connected()?, reads.iter_mut(), |conn, r| {
            conn.read_at(r.offset, r.buf)
        })
    }
    fn reads_as_zeros(&mut self, offset: u64, len: u64) -> bool {
        self.connected()
            .ok()
            .and_then(|c| c.first_mut())
            .is_some_and(|c| c.reads_as_zeros(offset, len))
    }
}

impl Drop for RbdReader {
    fn drop(&mut self) {
        // Read-only: nothing to flush. qemu-nbd exits once its connections close; one that
        // never had a connection (the ingest stopped first) would wait for one: stop it.
        let connected = !self.conns.is_empty();
        self.conns.clear();
        if !connected {
            if let Some(mut child) = self.server.take() {
                terminate(&mut child);
                let _ = std::fs::remove_file(&self.sock);
            }
        }
        reap_qemu_nbd(&mut self.server, &self.sock, Duration::from_secs(20));
    }
}

impl Drop for RbdVolume {
    fn drop(&mut self) {
        // Unfinished: disconnect (qemu-nbd then exits on its own) and reap it.
        self.conns.clear();
        reap_qemu_nbd(&mut self.server, &self.sock, Duration::from_secs(20));
    }
}

/// Deals `jobs` round-robin over the connections and runs each connection's share on its own
/// thread: as many requests in flight as there are connections (RBD is latency-bound). One
/// connection, or one job, runs inline. The first error wins; the other lanes finish.
fn fan_out<T: Send>(
    conns: &mut [NbdVolume],
    jobs: impl Iterator<Item = T>,
    op: impl Fn(&mut NbdVolume, T) -> Result<()> + Sync,
) -> Result<()> {
    let n = conns.len().max(1);
    let mut lanes: Vec<Vec<T>> = (0..n).map(|_| Vec::new()).collect();
    for (i, job) in jobs.enumerate() {
        lanes[i % n].push(job);
    }
    if conns.len() <= 1 || lanes[1].is_empty() {
        let mut jobs = lanes.into_iter().flatten().peekable();
        if jobs.peek().is_none() {
            return Ok(());
        }
        let conn = conns
            .first_mut()
            .ok_or_else(|| Error::Tool("qemu-nbd connections already closed".into()))?;
        return jobs.try_for_each(|job| op(conn, job));
    }
    let op = &op;
    std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .iter_mut()
            .zip(lanes)
            .map(|(conn, lane)| s.spawn(move || lane.into_iter().try_for_each(|job| op(conn, job))))
            .collect();
        let mut first_err = None;
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(Error::Tool("an RBD I/O thread panicked".into())));
            if let (Err(e), None) = (r, &first_err) {
                first_err = Some(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    })
}

impl Volume for RbdVolume {
    fn size(&self) -> u64 {
        self.conns.first().map_or(0, NbdVolume::size)
    }
    fn describe(&self) -> String {
        self.spec.to_string()
    }
    fn state_key(&self) -> String {
        format!("rbd_{}", key_of(&self.spec.image_spec()))
    }
    fn found(&self) -> Found {
        self.found
    }
    fn geometry(&self) -> Geometry {
        Geometry {
            // RBD objects are 4 MiB; writes within one object go to one OSD.
            block: self.conns.first().map_or(4096, |c| c.geometry().block),
            max_in_flight: self.conns.len().max(1),
        }
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.first()?.write_at(offset, data)
    }
    /// One thread per connection, each writing its share of the batch in order: as many
    /// writes in flight as there are connections.
    fn write_batch(&mut self, writes: &[WriteAt<'_>]) -> Result<()> {
        fan_out(&mut self.conns, writes.iter(), |conn, w| {
            conn.write_at(w.offset, w.data)
        })
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.first()?.write_zeroes(offset, len)
    }
    /// Every write was answered before this is sent, and all connections share one block
    /// backend in qemu-nbd: one flush makes them all durable.
    fn flush(&mut self) -> Result<()> {
        self.first()?.flush()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.first()?.read_at(offset, buf)
    }
    fn read_batch(&mut self, reads: &mut [ReadAt<'_>]) -> Result<()> {
        fan_out(&mut self.conns, reads.iter_mut(), |conn, r| {
            conn.read_at(r.offset, r.buf)
        })
    }
    fn reads_as_zeros(&mut self, offset: u64, len: u64) -> bool {
        self.conns
            .first_mut()
            .is_some_and(|c| c.reads_as_zeros(offset, len))
    }
    /// A second qemu-nbd, read-only and uncached, started now and connected on first use.
    fn concurrent_reader(&mut self) -> Result<Option<Box<dyn VolumeReader>>> {
        let sock = self.sock.with_extension("r.sock");
        let child = spawn_qemu_nbd(&self.qemu_nbd, &self.spec, &sock, true)?;
        Ok(Some(Box::new(RbdReader {
            spec: self.spec.clone(),
            sock,
            server: Some(child),
            conns: Vec::new(),
        })))
    }
    fn finish(mut self: Box<Self>) -> Result<Finished> {
        self.flush()?;
        for mut c in std::mem::take(&mut self.conns) {
            c.close()?;
        }
        self.stop_server()?;
        self.marker.remove()?;
        Ok(Finished {
            path: None,
            format: "raw",
            volume: Some(self.spec.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tool::run;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn parses_specs_and_takes_missing_settings_from_the_environment() {
        let s = RbdSpec::parse_with_env("rbd:volumes/web01?conf=/etc/c.conf&id=cinder", env(&[]))
            .unwrap();
        assert_eq!(s.image_spec(), "volumes/web01");
        assert_eq!(s.conf.as_deref(), Some(Path::new("/etc/c.conf")));
        assert_eq!(s.user.as_deref(), Some("cinder"));
        assert_eq!(
            s.qemu_filename(),
            "rbd:volumes/web01:conf=/etc/c.conf:id=cinder"
        );
        assert_eq!(
            s.to_string(),
            "rbd:volumes/web01?conf=/etc/c.conf&id=cinder"
        );

        let e = [
            ("CEPH_CONF", "/lab/ceph.conf"),
            ("CEPH_ARGS", "--keyring /k -n client.ops"),
        ];
        let s = RbdSpec::parse_with_env("volumes/web01", env(&e)).unwrap();
        assert_eq!(
            s.qemu_filename(),
            "rbd:volumes/web01:conf=/lab/ceph.conf:id=ops"
        );
        let s = RbdSpec::parse_with_env("rbd:p/i?id=me", env(&e)).unwrap();
        assert_eq!(
            s.user.as_deref(),
            Some("me"),
            "the spec wins over CEPH_ARGS"
        );
        let s = RbdSpec::parse_with_env("rbd:p/i", env(&[("CEPH_ARGS", "--id=x")])).unwrap();
        assert_eq!(s.user.as_deref(), Some("x"));
        let s = RbdSpec::parse_with_env("rbd:p/i", env(&[])).unwrap();
        assert_eq!(s.qemu_filename(), "rbd:p/i");
        assert_eq!(s.to_string(), "rbd:p/i");
    }

    #[test]
    fn refuses_specs_qemu_or_rbd_would_misread() {
        for bad in [
            "rbd:volumes",
            "rbd:/img",
            "rbd:pool/",
            "rbd:pool/a/b",
            "rbd:pool/im:age",
            "rbd:pool/-x",
            "rbd:pool/img?conf=/a:b",
            "rbd:pool/img?foo=1",
            "rbd:pool/img?id=a b",
        ] {
            let e = RbdSpec::parse_with_env(bad, env(&[])).unwrap_err();
            assert!(e.is_usage(), "{bad}: {e}");
        }
    }

    /// Against the cloud lab's Ceph (`MGEAR_CLOUD_LAB` set, `CEPH_CONF` its conf).
    #[test]
    fn writes_thin_in_parallel_reads_back_and_resumes_on_the_lab_cluster() {
        let (Ok(_), Ok(conf), Ok(pool), Ok(user)) = (
            std::env::var("MGEAR_CLOUD_LAB"),
            std::env::var("CEPH_CONF"),
            std::env::var("MGEAR_CLOUD_RBD_POOL"),
            std::env::var("MGEAR_CLOUD_RBD_USER"),
        ) else {
            eprintln!("SKIPPED: MGEAR_CLOUD_LAB is not set (scripts/cloud-lab.sh start)");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let image = format!("mgear-vol-test-{}", std::process::id());
        let spec =
            RbdSpec::parse_with_env(&format!("rbd:{pool}/{image}?conf={conf}&id={user}"), |_| {
                None
            })
            .unwrap();
        let prep = Prepare {
            disk_size: 64 << 20,
            head_len: 65536,
            state_dir: dir.path().to_owned(),
            force: false,
            what: "test".into(),
        };
        let rbd = require("rbd", "ceph-common").unwrap();
        /// Removes the test image however the test ends.
        struct Cleanup(PathBuf, RbdSpec);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = Command::new(&self.0)
                    .args(self.1.cli_args())
                    .args(["rm", "--no-progress"])
                    .arg(self.1.image_spec())
                    .output();
            }
        }
        let _cleanup = Cleanup(rbd.clone(), spec.clone());
        let mut v = RbdVolume::open(&spec, &prep, Existing::CreateOrForce).unwrap();
        assert_eq!(v.found(), Found::New);
        assert_eq!(v.size(), 64 << 20);
        assert_eq!(v.geometry().max_in_flight, CONNECTIONS);
        let blocks: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i + 1; 1 << 20]).collect();
        let writes: Vec<WriteAt> = blocks
            .iter()
            .enumerate()
            .map(|(i, b)| WriteAt {
                offset: (i as u64) * (2 << 20),
                data: b,
            })
            .collect();
        let mut rd = v
            .concurrent_reader()
            .unwrap()
            .expect("RBD reads back beside the writes");
        v.write_batch(&writes).unwrap();
        v.write_zeroes(40 << 20, 16 << 20).unwrap();
        v.flush().unwrap();
        // The reader (its own read-only, uncached qemu-nbd) sees what was flushed, also a
        // write made after it connected, and the zeroed range as a hole.
        let mut back = vec![0u8; 1 << 20];
        let mut zeros = vec![1u8; 1 << 20];
        rd.read_batch(&mut [
            ReadAt {
                offset: 2 << 20,
                buf: &mut back,
            },
            ReadAt {
                offset: 40 << 20,
                buf: &mut zeros,
            },
        ])
        .unwrap();
        assert!(back == blocks[1] && zeros.iter().all(|&b| b == 0));
        assert!(rd.reads_as_zeros(40 << 20, 16 << 20));
        assert!(!rd.reads_as_zeros(0, 1 << 20));
        v.write_at(1 << 20, &[0xab; 65536]).unwrap();
        v.flush().unwrap();
        let mut later = vec![0u8; 65536];
        rd.read_batch(&mut [ReadAt {
            offset: 1 << 20,
            buf: &mut later,
        }])
        .unwrap();
        assert!(
            later.iter().all(|&b| b == 0xab),
            "the reader sees a later write"
        );
        drop(rd);
        drop(v); // killed before finishing
        assert!(
            std::fs::read_dir(dir.path()).unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".mgear-incomplete")),
            "the marker says the image is unfinished"
        );
        // Re-run: the same image is resumed, not refused or recreated.
        let mut v = RbdVolume::open(&spec, &prep, Existing::CreateOrForce).unwrap();
        assert!(matches!(v.found(), Found::Unfinished { .. }));
        for (i, b) in blocks.iter().enumerate() {
            let mut back = vec![0u8; 1 << 20];
            v.read_at((i as u64) * (2 << 20), &mut back).unwrap();
            assert!(back == *b, "block {i} read back wrong");
        }
        let done = Box::new(v).finish().unwrap();
        assert_eq!(done.volume.as_deref(), Some(spec.to_string().as_str()));
        let du = run(
            Command::new(&rbd)
                .args(spec.cli_args())
                .args(["du", "--format", "json"])
                .arg(spec.image_spec()),
            "rbd du",
        )
        .unwrap();
        let used: u64 = String::from_utf8_lossy(&du)
            .split("\"used_size\":")
            .nth(1)
            .and_then(|r| {
                r.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .ok()
            })
            .unwrap();
        // RBD allocates 4 MiB objects: the data touched the first 32 MiB (8 objects); the
        // zeroed 16 MiB and the never-written rest must not be allocated.
        assert!(
            used <= 32 << 20,
            "rbd du says {used} bytes used: not thin ({})",
            String::from_utf8_lossy(&du)
        );
        // Finished: a new ingest into it needs --force; no socket or marker left.
        let e = RbdVolume::open(&spec, &prep, Existing::CreateOrForce).unwrap_err();
        assert!(e.is_usage() && e.to_string().contains("--force"), "{e}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
