//! Ceph RBD images (`rbd:POOL/IMAGE[?conf=PATH&id=USER]`), written straight into the cluster
//! through librbd in this process.
//!
//! librbd and librados (Debian `librbd1`) are loaded at run time ([`crate::librbd`] says why:
//! `mgear` builds and runs without Ceph; only these targets need it, and a host without it
//! gets an error naming the package). No `qemu-nbd`, no `qemu-img`, no `rbd` CLI and no kernel
//! rbd/nbd module is involved in an ingest. RBD is latency-bound (each write is a round trip
//! to an OSD), so [`Volume::write_batch`] keeps [`DEPTH`] asynchronous writes in flight (the
//! batch's buffers are borrowed until each write completed; neighbouring chunks go as one
//! vectored request of up to 2 MiB within one object), and [`VolumeReader::read_batch`] does
//! the same with reads of 512 KiB. Zero ranges become librbd write-zeroes, which removes whole
//! objects and zeroes parts of others: the image stays thin (`rbd du` shows only what holds
//! data). [`Volume::flush`] is `rbd_flush`: every completed write is then on the OSDs.
//!
//! Which image: an existing one is written only when asked for ([`Existing::Open`], e.g. the
//! image Cinder made for a volume) or with `--force`; otherwise it is created (`rbd_create`:
//! the cluster's default format and features, as `rbd create` and `qemu-img create` make it)
//! at the disk's size. An image has no unfinished name, so a marker in the state dir
//! (`rbd_<hash>.mgear-incomplete`) exists from before the first write until the read-back
//! passed: a re-run with the same state dir resumes into the same image. The marker names the
//! image by the prefix of its data objects (`rbd_data.<id>`, unique to an image): one removed
//! and another made under its name is not resumed into (its data was written over, without
//! `--force`, as the unfinished one's), and `--force` writes over it from the start.
//!
//! Cluster settings: `conf=` and `id=` in the spec, else `CEPH_CONF` and the `--id`/`--user`/
//! `--name client.X` of `CEPH_ARGS`, else librados' defaults (`/etc/ceph/ceph.conf`,
//! `client.admin`); the rest of `CEPH_ARGS` (`--keyring`, `--mon_host`, ...) is applied as
//! every Ceph tool applies it. The keyring is found the way every Ceph client finds it (the
//! conf's `keyring`, `/etc/ceph/ceph.client.USER.keyring`). Connecting gives up after
//! `client_mount_timeout` = 30 s instead of hanging on an unreachable monitor.
//!
//! The read-back check runs beside the writes through an [`RbdReader`]
//! ([`Volume::concurrent_reader`]): a second rados client of its own, with `rbd_cache=false`,
//! which opens the image read-only. Its requests go to the OSDs, never to the writing client's
//! cache (whatever `rbd_cache_policy` the cluster sets), and it never takes the image's
//! exclusive lock (only writers do), so the writer keeps it. It connects on a thread of its
//! own as soon as it is asked for, so that its set-up overlaps the first writes.
//!
//! Where the image's objects are plain (no fancy striping, no parent, no separate data pool:
//! what `rbd create`, Cinder and this module make), the check does not read the bytes back:
//! [`VolumeReader::stored_digests`] has each object's primary OSD stat the object and compute
//! the XXH64 of the range over what it stores (one rados read operation, a stat and a
//! `checksum`, per object and batch, 16 in flight), and the ingest compares it with the XXH64
//! of the authenticated plaintext it wrote (and zeros past the object's end, or for a missing
//! object). The OSD still reads the bytes from its disk; they no longer cross the network
//! (a read-back of 10 TB was 10 TB more traffic) nor go through the client's messenger.
//! `--volume-sha256`, which hashes the volume's bytes, and chunks an earlier, killed run wrote
//! (known by their keyed ids only) are read back as before.
//!
//! A killed ingest (SIGKILL) leaves the image's exclusive lock with a client that is gone;
//! the resumed ingest's first write waits until the cluster notices (the dead client's watch
//! times out, about 30 s) and librbd takes the lock over. Stopped with Ctrl-C or SIGTERM, the
//! image is closed and its lock released.
//!
//! `mgear boot --target rbd:` still boots through QEMU's rbd driver ([`RbdSpec::qemu_filename`]).

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crate::librbd::{Cluster, Connect, Image, ObjectLayout, Op};
use crate::marker::Marker;
use crate::{
    key_of, short_hash, Error, Finished, Found, Geometry, Prepare, ReadAt, Result, StoredDigest,
    Volume, VolumeReader, WriteAt,
};

/// Requests in flight per image (the `-m 16` of a tuned `qemu-img convert` is the same idea).
/// Measured with `mgear bench --rbd` (README.md): 32 and 64 were slower, as the pipeline's
/// batches grow with the depth and the read-back beside the writes then overlaps less.
pub const DEPTH: usize = 16;
/// Neighbouring chunks are written as one request of up to this many bytes within one object
/// (fewer OSD operations; 4 MiB requests left too few in flight, 1 MiB made twice the
/// operations).
const WRITE_MAX: u64 = 2 << 20;
/// The read-back's runs (up to an object) are read as requests of this size: more reads in
/// flight, measured faster than 1 MiB or whole runs.
const READ_MAX: usize = 512 << 10;
/// Connecting gives up after this instead of hanging on an unreachable monitor.
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
    /// (for `mgear boot`'s `-drive file=` and `qemu-img`).
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

    /// Whether a Ceph configuration is there to be read (the ceph.conf the spec names, else
    /// one of librados' defaults, else a monitor in `CEPH_ARGS`): a usage error naming what
    /// is missing and how to give it, before librados or qemu's rbd driver say it their way.
    pub fn check_config(&self) -> Result<()> {
        crate::librbd::check_config(self.conf.as_deref(), &self.to_string())
    }

    /// How librados reaches the cluster; `options` win over the conf and `CEPH_ARGS`.
    fn connect(&self, options: Vec<(&'static str, String)>) -> Connect {
        let mut options = options;
        options.insert(0, ("client_mount_timeout", MOUNT_TIMEOUT_SECS.to_string()));
        Connect {
            conf: self.conf.clone(),
            user: self.user.clone(),
            pool: self.pool.clone(),
            options,
            what: self.to_string(),
        }
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

/// An RBD image written through librbd; see the module doc.
#[derive(Debug)]
pub struct RbdVolume {
    spec: RbdSpec,
    image: Option<Image>,
    size: u64,
    object: u64,
    marker: Marker,
    found: Found,
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

impl RbdVolume {
    fn marker(spec: &RbdSpec, state_dir: &Path) -> Marker {
        Marker::new(
            state_dir,
            &format!("rbd_{}", short_hash(&spec.image_spec())),
        )
    }

    /// Whether an ingest into the image stopped before it was verified (its
    /// marker is in the ingest state dir `state_dir`): what `mgear boot`
    /// checks before booting it.
    pub fn marked_unfinished(spec: &RbdSpec, state_dir: &Path) -> bool {
        Self::marker(spec, state_dir).exists()
    }

    /// Open (or create) the image for an ingest of `prep.disk_size` bytes.
    pub fn open(spec: &RbdSpec, prep: &Prepare, existing: Existing) -> Result<Self> {
        let marker = Self::marker(spec, &prep.state_dir);
        let cluster = Cluster::connect(&spec.connect(Vec::new()))?;
        // Whether the image needs its head cleared: it may hold an older disk.
        let mut old_content = false;
        let (image, found) = match existing {
            Existing::CreateOrForce => {
                // Creating first saves a look-up on every new image; a marker without its
                // image means an earlier run died before creating it.
                let had_marker = marker.exists();
                if !had_marker {
                    marker.create(&format!("{} into {spec}", prep.what))?;
                }
                let created = match cluster.create(&spec.image, prep.disk_size) {
                    Ok(c) => c,
                    Err(e) => {
                        if !had_marker {
                            marker.remove()?;
                        }
                        return Err(e);
                    }
                };
                let found = match created {
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
                        // --force replaces what the image holds, never a disk a running
                        // machine has open: it would see its blocks change under it.
                        let users = cluster.open(&spec.image, true).and_then(|i| i.watchers());
                        match users {
                            Ok(users) if !users.is_empty() => {
                                marker.remove()?;
                                return Err(Error::Usage(format!(
                                    "RBD image {} is open by {} client(s) ({}): a running \
                                     machine (or another writer) uses it, and --force would \
                                     write under it. Stop it (`rbd status {}` lists them; a \
                                     client killed a moment ago is listed for about 30 s), \
                                     then run this again",
                                    spec.image_spec(),
                                    users.len(),
                                    users.join(", "),
                                    spec.image_spec()
                                )));
                            }
                            Ok(_) => {}
                            Err(e) => {
                                marker.remove()?;
                                return Err(e);
                            }
                        }
                        old_content = true;
                        Found::New
                    }
                };
                let image = match cluster.open(&spec.image, false) {
                    Ok(i) => i,
                    Err(e) => {
                        if found == Found::New {
                            marker.remove()?;
                        }
                        return Err(e);
                    }
                };
                // An image --force writes over that is smaller than the disk grows to it (it
                // was refused). A larger one keeps its size (it was shrunk: a Cinder volume's
                // image then no longer matched its volume) and its old data past the disk is
                // zeroed below (kept, the image as a whole was not the disk).
                if old_content {
                    let resized = image.size().and_then(|now| match now < prep.disk_size {
                        false => Ok(()),
                        true => image.resize(prep.disk_size),
                    });
                    if let Err(e) = resized {
                        marker.remove()?;
                        return Err(e);
                    }
                }
                (image, found)
            }
            Existing::Open => {
                let image = cluster.open(&spec.image, false).map_err(|e| match e {
                    Error::Ceph { errno, .. } if errno == -(nix::errno::Errno::ENOENT as i32) => {
                        Error::Usage(format!(
                            "RBD image {} does not exist (rbd ls {})",
                            spec.image_spec(),
                            spec.pool
                        ))
                    }
                    e => e,
                })?;
                let size = image.size()?;
                if size < prep.disk_size {
                    return Err(too_small(spec, size, prep));
                }
                let found = if marker.exists() {
                    Found::Unfinished {
                        adopt_without_state: true,
                    }
                } else {
                    marker.create(&format!("{} into {spec}", prep.what))?;
                    old_content = true;
                    Found::New
                };
                (image, found)
            }
        };
        // The image this ingest writes, by the prefix of its data objects: a resume must
        // find the same image, not another one made under its name since (it was written
        // over, without --force, as if it were the unfinished one).
        let identity = image.block_name_prefix()?;
        let what = format!("{} into {spec}", prep.what);
        match found {
            Found::Unfinished { .. } => {
                if let Some(was) = marker.identity().filter(|was| *was != identity) {
                    if prep.force {
                        // Written over as any existing image --force names (its users
                        // checked, its size set, its head cleared): that run's marker goes.
                        drop(image);
                        marker.remove()?;
                        return Self::open(spec, prep, existing);
                    }
                    return Err(Error::Usage(format!(
                        "an unfinished ingest into RBD image {} was writing another image \
                         (data objects {was}), not the one of that name there now ({identity}): \
                         that image was removed and this one made since; nothing was written. \
                         Pass --force to write over this one (what it holds is lost)",
                        spec.image_spec()
                    )));
                }
            }
            _ => marker.set_identity(&what, &identity)?,
        }
        if matches!(found, Found::Unfinished { .. }) {
            // librbd waits in silence for a killed client's exclusive lock to expire.
            eprintln!(
                "mgear: resuming into RBD image {}: if the run before was killed, its client \
                 still holds the image's lock until the cluster times it out, and the first \
                 write waits for that (about 30 s)",
                spec.image_spec()
            );
        }
        let size = image.size()?;
        let object = image.object_size()?.max(4096);
        let mut v = RbdVolume {
            spec: spec.clone(),
            image: Some(image),
            size,
            object,
            marker,
            found,
        };
        // (An existing image was not sized above when it was created over.)
        if v.size < prep.disk_size {
            if v.found == Found::New {
                v.marker.remove()?;
            }
            return Err(too_small(spec, v.size, prep));
        }
        if old_content && prep.head_len > 0 {
            // An image that may hold old data must not look bootable before it is complete.
            let head = prep.head_len.min(v.size);
            v.write_zeroes(0, head)?;
            v.flush()?;
        }
        if old_content && v.size > prep.disk_size {
            // Past the disk: nothing of what the image held before stays (write-zeroes frees
            // whole objects: it stays thin).
            v.write_zeroes(prep.disk_size, v.size - prep.disk_size)?;
            v.flush()?;
        }
        Ok(v)
    }

    /// The image.
    pub fn spec(&self) -> &RbdSpec {
        &self.spec
    }

    fn image(&self) -> Result<&Image> {
        self.image
            .as_ref()
            .ok_or_else(|| Error::Tool(format!("{} is already closed", self.spec)))
    }
}

/// Neighbouring writes as one request of at most `max` bytes that stays within one object.
fn merged<'a>(writes: &[WriteAt<'a>], object: u64, max: u64) -> Vec<Op<'a>> {
    let mut ops: Vec<Op<'a>> = Vec::new();
    let mut run: Vec<&'a [u8]> = Vec::new();
    let (mut start, mut end) = (0u64, 0u64);
    let flush = |ops: &mut Vec<Op<'a>>, run: &mut Vec<&'a [u8]>, start: u64| match run.len() {
        0 => {}
        1 => ops.push(Op::Write {
            offset: start,
            data: run.pop().unwrap_or_default(),
        }),
        _ => ops.push(Op::WriteV {
            offset: start,
            parts: std::mem::take(run),
        }),
    };
    for w in writes {
        let len = w.data.len() as u64;
        let joins = !run.is_empty()
            && w.offset == end
            && end - start + len <= max
            && start / object == (w.offset + len - 1) / object;
        if !joins {
            flush(&mut ops, &mut run, start);
            start = w.offset;
            end = w.offset;
        }
        run.push(w.data);
        end += len;
    }
    flush(&mut ops, &mut run, start);
    ops
}

/// The read-back side of an [`RbdVolume`]: its own rados client without librbd's cache and
/// the image opened read-only (see the module doc), connected on a thread of its own from
/// the moment it is asked for.
#[derive(Debug)]
pub struct RbdReader {
    spec: RbdSpec,
    opening: Option<JoinHandle<Result<Image>>>,
    image: Option<Image>,
    /// The image's objects, once asked (`None` inside: not digestible on the OSDs).
    layout: Option<Option<ObjectLayout>>,
}

impl RbdReader {
    /// A reader of the image `spec` names (read-only, no librbd cache), connected on a
    /// thread of its own; its first use waits for that.
    pub fn new(spec: &RbdSpec) -> Self {
        let connect = spec.connect(vec![("rbd_cache", "false".to_string())]);
        let name = spec.image.clone();
        let opening = std::thread::spawn(move || Cluster::connect(&connect)?.open(&name, true));
        RbdReader {
            spec: spec.clone(),
            opening: Some(opening),
            image: None,
            layout: None,
        }
    }

    /// The image's size in bytes now.
    pub fn size(&mut self) -> Result<u64> {
        self.image()?.size()
    }

    fn image(&mut self) -> Result<&Image> {
        if let Some(h) = self.opening.take() {
            let image = h.join().unwrap_or_else(|_| {
                Err(Error::Tool(format!(
                    "opening {} for the read-back panicked",
                    self.spec
                )))
            })?;
            self.image = Some(image);
        }
        self.image
            .as_ref()
            .ok_or_else(|| Error::Tool(format!("the read-back of {} could not open it", self.spec)))
    }
}

impl VolumeReader for RbdReader {
    fn read_batch(&mut self, reads: &mut [ReadAt<'_>]) -> Result<()> {
        let ops = reads.iter_mut().flat_map(|r| {
            let offset = r.offset;
            r.buf
                .chunks_mut(READ_MAX)
                .enumerate()
                .map(move |(i, b)| Op::Read {
                    offset: offset + (i * READ_MAX) as u64,
                    buf: b,
                })
        });
        self.image()?.run(ops, DEPTH)
    }
    fn reads_as_zeros(&mut self, offset: u64, len: u64) -> bool {
        self.image().is_ok_and(|i| i.reads_as_zeros(offset, len))
    }
    fn digest_unit(&mut self) -> Option<u64> {
        if self.layout.is_none() {
            let layout = self.image().ok().and_then(|i| i.object_layout());
            self.layout = Some(layout);
        }
        self.layout.as_ref()?.as_ref().map(|l| l.object_size)
    }
    fn stored_digests(&mut self, digests: &mut [StoredDigest]) -> Result<()> {
        self.digest_unit();
        let Some(Some(layout)) = self.layout.clone() else {
            return Err(Error::Usage(format!(
                "{}: its objects cannot be digested on the OSDs (striped, cloned or in a \
                 separate data pool): read it back",
                self.spec
            )));
        };
        self.image()?.stored_digests(&layout, digests, DEPTH)
    }
}

impl Drop for RbdReader {
    fn drop(&mut self) {
        // A connect still under way is waited for, so its client is shut down, not leaked.
        if let Some(h) = self.opening.take() {
            let _ = h.join();
        }
    }
}

impl Volume for RbdVolume {
    fn size(&self) -> u64 {
        self.size
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
            block: 4096,
            max_in_flight: DEPTH,
            // An image is thin per 4 MiB object; a zero run inside one is
            // one more round trip of a latency-bound backend for little.
            thin_granule: None,
        }
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.image()?.run([Op::Write { offset, data }], 1)
    }
    /// [`DEPTH`] writes in flight; returns when every write of the batch completed.
    fn write_batch(&mut self, writes: &[WriteAt<'_>]) -> Result<()> {
        let ops = merged(writes, self.object, WRITE_MAX);
        self.image()?.run(ops, DEPTH)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        // One request: librbd splits it over the objects it covers and sends those at once.
        self.image()?.run([Op::Zeroes { offset, len }], 1)
    }
    fn flush(&mut self) -> Result<()> {
        self.image()?.flush()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.image()?.run([Op::Read { offset, buf }], 1)
    }
    fn read_batch(&mut self, reads: &mut [ReadAt<'_>]) -> Result<()> {
        let ops = reads.iter_mut().map(|r| Op::Read {
            offset: r.offset,
            buf: &mut *r.buf,
        });
        self.image()?.run(ops, DEPTH)
    }
    fn reads_as_zeros(&mut self, offset: u64, len: u64) -> bool {
        self.image().is_ok_and(|i| i.reads_as_zeros(offset, len))
    }
    /// A second client, uncached and read-only, connecting now on a thread of its own.
    fn concurrent_reader(&mut self) -> Result<Option<Box<dyn VolumeReader>>> {
        Ok(Some(Box::new(RbdReader::new(&self.spec))))
    }
    fn finish(mut self: Box<Self>) -> Result<Finished> {
        self.flush()?;
        if let Some(image) = self.image.take() {
            image.close()?;
        }
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
    use crate::tool::{require, run};
    use crate::DigestHasher;
    use std::ffi::OsString;
    use std::path::Path;
    use std::process::Command;

    /// Arguments for the `rbd` CLI the lab test checks the image with.
    fn cli_args(spec: &RbdSpec) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        if let Some(c) = &spec.conf {
            a.push("-c".into());
            a.push(c.into());
        }
        if let Some(u) = &spec.user {
            a.push("--id".into());
            a.push(u.into());
        }
        a
    }

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
    fn neighbouring_writes_merge_within_an_object_up_to_the_limit() {
        let bufs: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 1 << 20]).collect();
        let at = |i: usize, off: u64| WriteAt {
            offset: off << 20,
            data: &bufs[i],
        };
        // 0-1 join; 2 starts a new object (the 4 MiB boundary) and joins 3; 4 and 5 each
        // follow a gap.
        let writes = [at(0, 2), at(1, 3), at(2, 4), at(3, 5), at(4, 7), at(5, 9)];
        let ops = merged(&writes, 4 << 20, 2 << 20);
        let shape: Vec<(u64, usize, usize)> = ops
            .iter()
            .map(|op| match op {
                Op::Write { offset, data } => (*offset >> 20, 1, data.len()),
                Op::WriteV { offset, parts } => (
                    *offset >> 20,
                    parts.len(),
                    parts.iter().map(|p| p.len()).sum(),
                ),
                _ => panic!("not a write: {op:?}"),
            })
            .collect();
        assert_eq!(
            shape,
            [
                (2, 2, 2 << 20),
                (4, 2, 2 << 20),
                (7, 1, 1 << 20),
                (9, 1, 1 << 20)
            ]
        );
        // The limit: three adjacent 1 MiB writes in one object make a 2 MiB and a 1 MiB request.
        let writes = [at(0, 0), at(1, 1), at(2, 2)];
        let ops = merged(&writes, 4 << 20, 2 << 20);
        assert_eq!(ops.len(), 2);
        assert!(matches!(&ops[1], Op::Write { offset, .. } if *offset == 2 << 20));
        // Unmerged (limit below two chunks): one request per write, in order, bytes untouched.
        let ops = merged(&writes, 4 << 20, 1 << 20);
        assert_eq!(ops.len(), 3);
        for (i, op) in ops.iter().enumerate() {
            assert!(matches!(op, Op::Write { data, .. } if data[0] == i as u8));
        }
        assert!(merged(&[], 4 << 20, 2 << 20).is_empty());
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

    /// The cloud lab's ceph.conf, pool and user when `MGEAR_CLOUD_LAB` is set (`eval
    /// "$(scripts/cloud-lab.sh env)"`); otherwise says the test is skipped.
    fn lab() -> Option<(String, String, String)> {
        let (Ok(_), Ok(conf), Ok(pool), Ok(user)) = (
            std::env::var("MGEAR_CLOUD_LAB"),
            std::env::var("CEPH_CONF"),
            std::env::var("MGEAR_CLOUD_RBD_POOL"),
            std::env::var("MGEAR_CLOUD_RBD_USER"),
        ) else {
            eprintln!("SKIPPED: MGEAR_CLOUD_LAB is not set (scripts/cloud-lab.sh start)");
            return None;
        };
        Some((conf, pool, user))
    }

    /// Against the cloud lab's Ceph: what goes wrong says what is wrong, and leaves no marker.
    #[test]
    fn lab_errors_name_the_call_and_what_to_do() {
        let Some((conf, pool, user)) = lab() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let prep = Prepare {
            disk_size: 1 << 20,
            head_len: 4096,
            state_dir: dir.path().to_owned(),
            force: false,
            what: "test".into(),
        };
        let open = |spec: &str, existing| {
            let spec = RbdSpec::parse_with_env(spec, |_| None).unwrap();
            RbdVolume::open(&spec, &prep, existing)
                .unwrap_err()
                .to_string()
        };
        let e = open(
            &format!(
                "rbd:no-such-pool-{}/x?conf={conf}&id={user}",
                std::process::id()
            ),
            Existing::CreateOrForce,
        );
        assert!(
            e.contains("rados_ioctx_create") && e.contains("pool not found"),
            "{e}"
        );
        let e = open(
            &format!(
                "rbd:{pool}/no-such-image-{}?conf={conf}&id={user}",
                std::process::id()
            ),
            Existing::Open,
        );
        assert!(e.contains("does not exist"), "{e}");
        let e = open(
            &format!(
                "rbd:{pool}/x?conf={}/no-such.conf&id={user}",
                dir.path().display()
            ),
            Existing::CreateOrForce,
        );
        assert!(
            e.contains("does not exist") && e.contains("CEPH_CONF"),
            "{e}"
        );
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "a failed open leaves no marker"
        );
    }

    /// Against the cloud lab's Ceph: an unfinished ingest's image removed and another made
    /// under its name is not resumed into (it was written over without --force, "verified");
    /// --force writes over it as over any existing image.
    #[test]
    fn a_resume_never_writes_another_image_of_the_same_name_on_the_lab_cluster() {
        let Some((conf, pool, user)) = lab() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let image = format!("mgear-vol-swap-{}", std::process::id());
        let spec =
            RbdSpec::parse_with_env(&format!("rbd:{pool}/{image}?conf={conf}&id={user}"), |_| {
                None
            })
            .unwrap();
        let mut prep = Prepare {
            disk_size: 8 << 20,
            head_len: 4096,
            state_dir: dir.path().to_owned(),
            force: false,
            what: "test".into(),
        };
        let rbd = require("rbd", "ceph-common").unwrap();
        let cli = |args: &[&str]| {
            run(
                Command::new(&rbd)
                    .args(cli_args(&spec))
                    .args(args)
                    .arg(spec.image_spec()),
                "rbd",
            )
            .unwrap()
        };
        struct Cleanup<F: Fn()>(F);
        impl<F: Fn()> Drop for Cleanup<F> {
            fn drop(&mut self) {
                (self.0)()
            }
        }
        let _cleanup = Cleanup(|| {
            let _ = Command::new(&rbd)
                .args(cli_args(&spec))
                .args(["rm", "--no-progress"])
                .arg(spec.image_spec())
                .output();
        });
        let mut v = RbdVolume::open(&spec, &prep, Existing::CreateOrForce).unwrap();
        assert_eq!(v.found(), Found::New);
        v.write_at(1 << 20, &[7u8; 4096]).unwrap();
        drop(v); // killed
                 // The same image again: resumed.
        let v = RbdVolume::open(&spec, &prep, Existing::CreateOrForce).unwrap();
        assert!(matches!(v.found(), Found::Unfinished { .. }));
        drop(v);
        // Removed, and another image made under its name.
        cli(&["rm", "--no-progress"]);
        cli(&["create", "--size", "8M"]);
        let e = RbdVolume::open(&spec, &prep, Existing::CreateOrForce).unwrap_err();
        assert!(
            e.is_usage() && e.to_string().contains("was writing another image"),
            "{e}"
        );
        prep.force = true;
        let mut v = RbdVolume::open(&spec, &prep, Existing::CreateOrForce).unwrap();
        assert_eq!(
            v.found(),
            Found::New,
            "--force writes over it, from the start"
        );
        let mut back = vec![1u8; 4096];
        v.read_at(0, &mut back).unwrap();
        assert!(back.iter().all(|&b| b == 0), "its head is cleared");
        drop(v);
        // And the marker now names that image: it resumes.
        prep.force = false;
        let mut v = RbdVolume::open(&spec, &prep, Existing::CreateOrForce).unwrap();
        assert!(matches!(v.found(), Found::Unfinished { .. }));
        v.write_at(6 << 20, &[9u8; 4096]).unwrap();
        Box::new(v).finish().unwrap();
        // --force over an image larger than the disk keeps its size (shrinking it broke a
        // Cinder volume's image) and leaves nothing of it past the disk.
        cli(&["resize", "--size", "16M"]);
        let mut v = RbdVolume::open(&spec, &prep, Existing::Open).unwrap();
        v.write_at(12 << 20, &[5u8; 4096]).unwrap();
        Box::new(v).finish().unwrap();
        prep.force = true;
        prep.disk_size = 4 << 20;
        let mut v = RbdVolume::open(&spec, &prep, Existing::CreateOrForce).unwrap();
        assert_eq!(v.found(), Found::New);
        assert_eq!(v.size(), 16 << 20, "the image keeps its size");
        for at in [6u64 << 20, 12 << 20] {
            let mut back = vec![1u8; 4096];
            v.read_at(at, &mut back).unwrap();
            assert!(back.iter().all(|&b| b == 0), "old data at {at} is left");
        }
        Box::new(v).finish().unwrap();
    }

    /// Against the cloud lab's Ceph (`MGEAR_CLOUD_LAB` set, `CEPH_CONF` its conf).
    #[test]
    fn writes_thin_in_parallel_reads_back_and_resumes_on_the_lab_cluster() {
        let Some((conf, pool, user)) = lab() else {
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
                    .args(cli_args(&self.1))
                    .args(["rm", "--no-progress"])
                    .arg(self.1.image_spec())
                    .output();
            }
        }
        let _cleanup = Cleanup(rbd.clone(), spec.clone());
        let mut v = RbdVolume::open(&spec, &prep, Existing::CreateOrForce).unwrap();
        assert_eq!(v.found(), Found::New);
        assert_eq!(v.size(), 64 << 20);
        assert_eq!(v.geometry().max_in_flight, DEPTH);
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
        // The reader (its own uncached client, the image read-only) sees what was flushed, also a
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
        // The OSDs digest what they store: a block, a range the object ends in, past the
        // object's end, never-written and zeroed objects, the later write.
        assert_eq!(rd.digest_unit(), Some(4 << 20), "a plain image's objects");
        let range = |offset: u64, len: u64| StoredDigest {
            offset,
            len,
            stored: Some((u64::MAX, 0)),
        };
        let mut d = vec![
            range(2 << 20, 1 << 20),
            range((2 << 20) + (512 << 10), 1 << 20),
            range(3 << 20, 1 << 20),
            range(44 << 20, 4 << 20),
            range(60 << 20, 1 << 20),
            range(1 << 20, 65536),
        ];
        rd.stored_digests(&mut d).unwrap();
        let h = |b: &[u8]| {
            let mut x = DigestHasher::new();
            x.update(b);
            x.finish()
        };
        let got: Vec<_> = d.iter().map(|d| d.stored).collect();
        assert_eq!(
            got,
            vec![
                Some((1 << 20, h(&blocks[1]))),
                Some((512 << 10, h(&blocks[1][512 << 10..]))),
                Some((0, h(&[]))),
                None,
                None,
                Some((65536, h(&[0xab; 65536]))),
            ]
        );
        let mut across = vec![range(3 << 20, 2 << 20)];
        assert!(rd.stored_digests(&mut across).is_err(), "crosses an object");
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
                .args(cli_args(&spec))
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
