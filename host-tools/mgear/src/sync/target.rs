//! The target side (`mgear serve`): holds the ingested volume, tells the
//! source which keyed chunk ids it has, and applies the chunks whose records
//! image-format's record decoder (`image_format::RecordOpener`) opened.
//!
//! The id list is computed from the volume itself when `serve` starts (one
//! full read) and updated after every chunk written, so it always describes
//! what is on the volume: a source that reconnects after a dropped
//! connection sends only what has not landed yet. Writes are idempotent
//! (a chunk is written whole at its own offset), synced every
//! [`SYNC_EVERY`] bytes, when a session ends for any reason, and before
//! APPLIED is sent. After a crash of `serve` itself the next start hashes
//! the volume again, so unsynced writes that were lost are simply sent again.

use std::cell::Cell;
use std::io::{BufWriter, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::bail;
use crate::error::Context;
use image_format::{layout, DataKey, RecordOpener};

use super::session::{self, IdKey, Role, Session};
use super::wire::{self, err, ty, Chunk, ChunkBody, Done, Hello, Ids, Proof, Refusal, Welcome};
use crate::exit::{coded, usage, FOUND, IO, USAGE};

/// Sync the volume after this many bytes written.
pub const SYNC_EVERY: u64 = 64 << 20;

/// The capture a target serves and its key.
pub struct Served {
    pub name: String,
    pub key: DataKey,
    pub capture_id: [u8; 16],
    pub chunk_size: u32,
    /// Size of the served volume (fixed while serving).
    pub volume_size: u64,
    /// Whose signed sessions are accepted.
    pub trust: Trust,
    /// The volume file as serve opened it, when it is one.
    pub fence: Option<Fence>,
}

/// The file a serve opened, by device and inode: the chunk ids it answers
/// with describe that file. Another file put at its path (an ingest renamed
/// over it, a copy) would make every later sync land in the old, deleted one
/// and be called verified, so no session is served once the path names
/// another file.
#[derive(Debug, Clone)]
pub struct Fence {
    path: std::path::PathBuf,
    dev: u64,
    ino: u64,
}

impl Fence {
    /// The file at `path` now.
    pub fn of(path: &std::path::Path) -> crate::Result<Fence> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Fence {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// Why the path no longer names the file served, if it does not.
    fn broken(&self) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == (self.dev, self.ino) => None,
            Ok(_) => Some(format!(
                "{} was replaced by another file since this serve started (an ingest or a copy \
                 put there): nothing more is applied to the old one; stop this serve and start it \
                 again on the new volume",
                self.path.display()
            )),
            Err(e) => Some(format!(
                "{} is gone since this serve started ({e}): stop this serve",
                self.path.display()
            )),
        }
    }
}

/// The volume being kept in sync, with the keyed id of every chunk on it.
pub struct ServedVolume {
    vol: Box<dyn mgear_volume::Volume>,
    desc: String,
    size: u64,
    chunk_size: u32,
    ids: Vec<[u8; 32]>,
    id_key: IdKey,
    unsynced: u64,
    /// A file volume's path and its modification stamp after serve's own last write
    /// ([`ServedVolume::watch`]).
    watched: Option<(std::path::PathBuf, Option<Stamp>)>,
    /// Another program may have written the volume since the last session that compared every
    /// chunk: told to each source (VOLUME), so that a dirty bitmap's clean chunks are read too.
    /// True at start (nothing watched the volume before) unless a [`Record`] of an earlier
    /// serve says otherwise.
    written_elsewhere: bool,
    /// Where this serve records that a completed session left the volume as its source had it.
    record: Option<Record>,
    /// How to connect to the volume again (an NBD export): its server restarted, the
    /// connection is unusable, and every later session failed ("reconnect") while the serve
    /// ran on.
    reopen: Option<Reopen>,
    /// `serve --once`: after one completed session, later ones are refused. Known under the
    /// volume's lock, where sessions queue: a sync waiting there while the first one finished
    /// was applied too, exit 0, before the serve ended.
    once: bool,
    /// A session completed (DONE answered with APPLIED).
    completed: bool,
}

/// Opens a served volume again ([`ServedVolume::reopen_with`]).
pub type Reopen = Box<dyn FnMut() -> crate::Result<Box<dyn mgear_volume::Volume>> + Send>;

/// What a serve keeps across restarts, in `$XDG_STATE_HOME/mgear/serve/` (or
/// `~/.local/state/mgear/serve/`), one file per volume file (by device and inode): the
/// capture and the volume's change times as the last completed session that compared every
/// chunk (or found nothing written elsewhere) left them. A serve that starts on the volume
/// with the same times knows nothing wrote it while no serve watched; any other start tells
/// the first sync to compare every chunk (a dirty bitmap records the source's writes, not an
/// fsck or a boot at the target between two serves).
///
/// The capture is named by its id and its name: machines that share a data key (a set's
/// disks, `--dedup-across-machines`) share the id, and a record naming the id alone let one
/// machine's volume be served (and synced over) as another's.
///
/// ```text
/// mgear-serve-record 2
/// capture <capture id, hex>
/// name <capture name>
/// stamp <mtime s> <mtime ns> <ctime s> <ctime ns> <size>
/// ```
#[derive(Debug, Clone)]
struct Record {
    path: std::path::PathBuf,
    capture: String,
    name: String,
}

/// Of the serves of capture `name` (`capture_id`) on this host, whether the one that last
/// completed a session kept `volume` (by device and inode) in sync: `None` when no serve of it
/// recorded a volume here. A copy once served (with `--force`) and left behind is not the
/// volume the last sync wrote, whatever its old record says.
pub fn served_last(volume: &std::path::Path, capture_id: &[u8; 16], name: &str) -> Option<bool> {
    // A device is known by its device number, as its serve recorded it: by its node's inode
    // the device a serve kept in sync was "another volume", and every `dev:` cutover was
    // refused after the source was quiesced.
    let device = device_key(volume);
    let mine = match &device {
        Some(key) => Record::of_key(key, capture_id, name)?,
        None => Record::of(volume, capture_id, name)?,
    };
    if device.is_none() && crate::guard::born_after(volume, &mine.path) {
        return Some(false);
    }
    let dir = mine.path.parent()?;
    let newest = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| mine.names_it(&t)))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max_by_key(|(at, _)| *at)?;
    Some(newest.1 == mine.path)
}

/// The key a served block device's record is kept under: its device number, the same for
/// every name of the device (`None`: `path` is no block device).
pub fn device_key(path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(path).ok()?;
    m.file_type()
        .is_block_device()
        .then(|| format!("block device {}", m.rdev()))
}

impl Record {
    /// The record of the file at `volume` (none without a state directory).
    fn of(volume: &std::path::Path, capture_id: &[u8; 16], name: &str) -> Option<Record> {
        Record::in_dir(&Record::dir()?, volume, capture_id, name)
    }

    /// Where the records are kept (none without a state directory).
    fn dir() -> Option<std::path::PathBuf> {
        crate::target::serve_records_dir()
    }

    /// The record of a volume that is no file, by its spec (none without a state directory).
    fn of_key(spec: &str, capture_id: &[u8; 16], name: &str) -> Option<Record> {
        use sha2::Digest as _;
        let dir = Record::dir()?;
        let digest = sha2::Sha256::digest(format!("volume {spec}").as_bytes());
        Some(Record {
            path: dir.join(crate::output::hex(&digest[..8])),
            capture: crate::output::hex(capture_id),
            name: name.to_string(),
        })
    }

    /// Say that a session completed on this (non-file) volume now: its record, newest of the
    /// capture's, names no file (best effort, as [`Record::save`]).
    fn mark(&self) {
        if let Some(dir) = self.path.parent() {
            let _ = image_format::private::create_dir(dir);
        }
        let text = format!(
            "mgear-serve-record 2\ncapture {}\nname {}\nvolume not a file\n",
            self.capture, self.name
        );
        let tmp = self.path.with_extension("tmp");
        if std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &self.path))
            .is_err()
        {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    /// Whether a record's text names this capture (id and name).
    fn names_it(&self, text: &str) -> bool {
        crate::target::serve_record_names(text, &self.capture, &self.name)
    }

    /// The record of the file at `volume` in `dir`.
    fn in_dir(
        dir: &std::path::Path,
        volume: &std::path::Path,
        capture_id: &[u8; 16],
        name: &str,
    ) -> Option<Record> {
        Some(Record {
            path: crate::target::serve_record_path(dir, volume)?,
            capture: crate::output::hex(capture_id),
            name: name.to_string(),
        })
    }

    fn text(&self, stamp: &Stamp) -> String {
        let (ms, mn, cs, cn, size) = stamp;
        format!(
            "mgear-serve-record 2\ncapture {}\nname {}\nstamp {ms} {mn} {cs} {cn} {size}\n",
            self.capture, self.name
        )
    }

    /// Whether the record says the volume is as a completed session left it.
    fn holds(&self, stamp: &Option<Stamp>) -> bool {
        let Some(stamp) = stamp else {
            return false;
        };
        std::fs::read_to_string(&self.path).is_ok_and(|t| t == self.text(stamp))
    }

    /// Keep `stamp` as a completed session left it (best effort: without the record the
    /// next serve only compares every chunk once more).
    fn save(&self, stamp: &Option<Stamp>) {
        let Some(stamp) = stamp else {
            return;
        };
        if let Some(dir) = self.path.parent() {
            let _ = image_format::private::create_dir(dir);
        }
        let tmp = self.path.with_extension("tmp");
        let written =
            std::fs::write(&tmp, self.text(stamp)).and_then(|_| std::fs::rename(&tmp, &self.path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
            self.forget();
        }
    }

    fn forget(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A file's change times and size: what another program writing it moves.
type Stamp = (i64, i64, i64, i64, u64);

fn stamp_of(path: &std::path::Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        m.size(),
    ))
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub chunks: u64,
    pub bytes: u64,
}

impl ServedVolume {
    /// Take an open volume (see `crate::target::open_in_place`) and hash
    /// every chunk of its first `size` bytes: the captured disk's size. A
    /// device larger than the disk keeps its tail as ingest left it; the
    /// caller has refused a volume smaller than `size` ([`super::served_size`]).
    pub fn open(
        mut vol: Box<dyn mgear_volume::Volume>,
        size: u64,
        chunk_size: u32,
        id_key: IdKey,
    ) -> crate::Result<Self> {
        if !layout::valid_chunk_size(chunk_size) {
            return Err(usage(format!(
                "chunk size {chunk_size} is not valid for a capture"
            )));
        }
        let desc = vol.describe();
        if vol.size() < size {
            return Err(usage(format!(
                "{desc} is {} bytes, smaller than the {size} bytes to serve",
                vol.size()
            )));
        }
        let ids = hash_all(vol.as_mut(), &desc, size, chunk_size, &id_key)?;
        Ok(ServedVolume {
            vol,
            desc,
            size,
            chunk_size,
            ids,
            id_key,
            unsynced: 0,
            watched: None,
            written_elsewhere: true,
            record: None,
            reopen: None,
            once: false,
            completed: false,
        })
    }

    /// Why this volume takes no more syncs: a `serve --once` whose one sync completed.
    fn done_once(&self) -> Option<&'static str> {
        (self.once && self.completed).then_some(
            "this serve ran with --once, and its one sync completed: nothing was applied; \
             start `mgear serve` again (without --once for a cutover) for another sync, then \
             run this one again",
        )
    }

    /// Connect to the volume again with `reopen` when a session finds the connection
    /// unusable (see [`ServedVolume::reconnect_if_broken`]).
    pub fn reopen_with(&mut self, reopen: Reopen) {
        self.reopen = Some(reopen);
    }

    /// The ERROR code of a write that failed: for a volume serve connects to again (an NBD
    /// export), BUSY, which the source retries for a while (its server restarting cut the
    /// sync off, exit 3, a second before it was back); else IO.
    fn io_refusal(&self) -> u8 {
        match self.reopen {
            Some(_) => err::BUSY,
            None => err::IO,
        }
    }

    /// Before a session: a volume that does not answer a read any more (an NBD export whose
    /// server was restarted) is connected to again and hashed again, as one written behind
    /// serve's back (it may have been). Without a way to reopen it, or when that fails, the
    /// error is the session's refusal.
    pub fn reconnect_if_broken(&mut self) -> crate::Result<()> {
        let Some(reopen) = self.reopen.as_mut() else {
            return Ok(());
        };
        let mut probe = [0u8; 512];
        let n = self.size.min(512) as usize;
        if self.vol.read_at(0, &mut probe[..n]).is_ok() {
            return Ok(());
        }
        let vol = reopen().map_err(|e| {
            e.context(format!(
                "{} stopped answering and could not be connected to again (restart its server, \
                 then sync again; serve goes on)",
                self.desc
            ))
        })?;
        if vol.size() < self.size {
            return Err(usage(format!(
                "{} came back {} bytes, smaller than the {} bytes served: stop serve and check \
                 the export",
                self.desc,
                vol.size(),
                self.size
            )));
        }
        eprintln!(
            "mgear serve: {} stopped answering: connected again; hashing it again before this \
             session",
            self.desc
        );
        self.vol = vol;
        self.rehash()
    }

    /// Watch the file volume at `path`: a program other than this serve writing it in place
    /// (a mount, fsck, dd) would leave the chunk ids hashed at start stale, and a sync would
    /// send nothing for chunks it changed and call the volume verified. Its change times are
    /// kept after every write of serve's own, and [`ServedVolume::rehash_if_changed`] hashes
    /// the volume again when they moved. (A `dev:` volume has no such times: stop the serve
    /// before anything else writes the device.)
    /// A [`Record`] an earlier serve of `capture_id` left with the file's current times means
    /// nothing else wrote it since that serve's last completed session.
    pub fn watch(&mut self, path: &std::path::Path, capture_id: &[u8; 16], name: &str) {
        let stamp = stamp_of(path);
        self.record = Record::of(path, capture_id, name);
        self.written_elsewhere = !self.record.as_ref().is_some_and(|r| r.holds(&stamp));
        self.watched = Some((path.to_path_buf(), stamp));
    }

    /// A volume that is no file (an NBD export, a device) served for capture `name`: each
    /// completed session leaves a [`Record`] naming `spec`, so that [`served_last`] of a
    /// file copy says the last sync wrote another volume (a file an earlier serve kept was
    /// taken as the one the final sync wrote, and booted stale at a cutover).
    pub fn note_served(&mut self, spec: &str, capture_id: &[u8; 16], name: &str) {
        self.record = Record::of_key(spec, capture_id, name);
    }

    /// Whether the sources are told to compare every chunk (see [`ServedVolume::watch`]).
    pub fn written_elsewhere(&self) -> bool {
        self.written_elsewhere
    }

    /// Hash the volume again if something other than this serve wrote it since its last
    /// write or hash (see [`ServedVolume::watch`]); says so on stderr.
    pub fn rehash_if_changed(&mut self) -> crate::Result<()> {
        if !self.changed_behind() {
            return Ok(());
        }
        eprintln!(
            "mgear serve: {} was written by something else since serve last wrote or hashed it: \
             hashing it again before this session",
            self.desc
        );
        self.rehash()
    }

    /// Whether the watched file's change times moved since this serve's own last write or
    /// hash: another program wrote it. (The kernel keeps those times to its clock tick, a few
    /// milliseconds: a write landing in the same tick as one of serve's own is not seen.)
    fn changed_behind(&self) -> bool {
        self.watched
            .as_ref()
            .is_some_and(|(path, seen)| stamp_of(path) != *seen)
    }

    /// Hash the whole volume again (its ids no longer describe it) and remember that it was
    /// written elsewhere until a session compares every chunk.
    fn rehash(&mut self) -> crate::Result<()> {
        self.written_elsewhere = true;
        if let Some(r) = &self.record {
            r.forget();
        }
        // A served file is exactly its capture's disk (checked at start): one resized since
        // cannot be hashed as the disk (truncated: a read past its end; grown: a tail no sync
        // keeps), and every sync to it would fail or be called verified wrongly.
        if let Some(now) = self.watched.as_ref().and_then(|(path, _)| stamp_of(path)) {
            if now.4 != self.size {
                return Err(usage(format!(
                    "{} is now {} bytes, but the disk it holds is {} bytes: something resized it \
                     while serve ran; stop this serve: no sync applies to a volume of another \
                     size (put the volume back at its size, or ingest it again, then serve it)",
                    self.desc, now.4, self.size
                )));
            }
        }
        self.ids = hash_all(
            self.vol.as_mut(),
            &self.desc,
            self.size,
            self.chunk_size,
            &self.id_key,
        )?;
        self.wrote();
        Ok(())
    }

    /// After a completed session: record the volume's times for the next serve when it ended
    /// as its source expected (`as_expected`) and no other program's write is pending a full
    /// compare, else drop an older record.
    fn keep_record(&self, as_expected: bool) {
        if let (Some(r), None) = (&self.record, &self.watched) {
            r.mark();
            return;
        }
        if let (Some(r), Some((_, seen))) = (&self.record, &self.watched) {
            if self.written_elsewhere || !as_expected {
                r.forget();
            } else {
                r.save(seen);
            }
        }
    }

    /// Keep the watched file's stamp as this serve's own write left it.
    fn wrote(&mut self) {
        if let Some((path, seen)) = &mut self.watched {
            *seen = stamp_of(path);
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Write chunk `index` (already authenticated) and record its id.
    fn apply(&mut self, index: u64, data: &[u8], id: [u8; 32]) -> crate::Result<()> {
        let at = index * self.chunk_size as u64;
        let ctx = || format!("writing chunk {index} to {}", self.desc);
        let written = if image_format::is_all_zero(data) {
            // Thin targets stay thin: a hole (or NBD WRITE_ZEROES) reads as zeros.
            self.vol.write_zeroes(at, data.len() as u64)
        } else {
            self.vol.write_at(at, data)
        };
        written.with_context(ctx)?;
        self.unsynced += data.len() as u64;
        if let Some(slot) = usize::try_from(index)
            .ok()
            .and_then(|i| self.ids.get_mut(i))
        {
            *slot = id;
        }
        if self.unsynced >= SYNC_EVERY {
            self.sync()?;
        }
        self.wrote();
        Ok(())
    }

    /// Make every write so far durable.
    pub fn sync(&mut self) -> crate::Result<()> {
        self.vol
            .flush()
            .with_context(|| format!("syncing target volume {}", self.desc))?;
        self.unsynced = 0;
        self.wrote();
        Ok(())
    }
}

/// The keyed id of every chunk of the first `size` bytes of `vol`.
fn hash_all(
    vol: &mut dyn mgear_volume::Volume,
    desc: &str,
    size: u64,
    chunk_size: u32,
    id_key: &IdKey,
) -> crate::Result<Vec<[u8; 32]>> {
    let count = layout::chunk_count(size, chunk_size);
    let mut ids = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut buf = vec![0u8; chunk_size as usize];
    for i in 0..count {
        let len = layout::chunk_len(size, chunk_size, i) as usize;
        vol.read_at(i * chunk_size as u64, &mut buf[..len])
            .with_context(|| format!("reading target volume {desc} at chunk {i}"))?;
        ids.push(id_key.id(&buf[..len]));
    }
    Ok(ids)
}

/// Send an ERROR to the peer (best effort; sealed once a session exists)
/// and return the matching local error.
fn refuse(w: &mut impl Write, s: Option<&mut Session>, code: u8, message: String) -> crate::Error {
    let p = Refusal::new(code, message.as_str()).encode();
    let sent = match s {
        Some(s) => s
            .seal(ty::ERROR, &p)
            .map_err(std::io::Error::other)
            .and_then(|sealed| wire::send(w, ty::SEALED, &sealed)),
        None => wire::send(w, ty::ERROR, &p),
    };
    let _ = sent.and_then(|_| w.flush());
    let exit = match code {
        err::BAD_RECORD | err::UNTRUSTED => FOUND,
        err::IO | err::DONE_ONCE => IO,
        _ => USAGE,
    };
    coded(exit, format!("refused the source: {message}"))
}

/// The next sealed message from the source.
fn recv_sealed<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    s: &mut Session,
    peer: &str,
) -> crate::Result<(u8, Vec<u8>)> {
    let (t, p) = wire::recv(r, peer)?;
    if t != ty::SEALED {
        return Err(refuse(
            w,
            Some(s),
            err::PROTOCOL,
            format!(
                "expected a SEALED frame, got {} in clear",
                wire::type_name(t)
            ),
        ));
    }
    match s.open(&p) {
        Some(m) => Ok(m),
        None => Err(refuse(
            w,
            Some(s),
            err::BAD_RECORD,
            "a sealed frame does not authenticate (a different data key, or the stream was altered \
             in transit)"
                .into(),
        )),
    }
}

/// Another program wrote the volume during a session: hash it again and end the session
/// (`REHASHED`): the source's list of what differs came from ids that no longer describe the
/// volume, and a new session gets the ids it holds now.
fn written_during(w: &mut impl Write, s: &mut Session, vol: &mut ServedVolume) -> crate::Error {
    eprintln!(
        "mgear serve: {} was written by something else during this session: hashing it again",
        vol.desc
    );
    if let Err(e) = vol.rehash() {
        return refuse(w, Some(s), refusal_code(&e), format!("{e:#}"));
    }
    refuse(
        w,
        Some(s),
        err::REHASHED,
        format!(
            "{} was written by another program during this session (stop whatever writes it: \
             only serve may write a served volume); serve hashed it again, and a new session \
             compares every chunk with what it holds now",
            vol.desc
        ),
    )
}

/// The ERROR code of a volume that could not be hashed again: resized (a usage error, not to
/// be retried) or unreadable.
fn refusal_code(e: &crate::Error) -> u8 {
    if crate::exit::classified(e) == Some(USAGE) {
        err::SIZE
    } else {
        err::IO
    }
}

/// Who may sync into a served volume.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// Pinned capture site public keys (`--trust site.pub`).
    pub keys: Vec<[u8; 32]>,
    /// `--allow-untrusted`: accept unsigned sessions and unpinned signers (loudly).
    pub allow_untrusted: bool,
}

impl Trust {
    /// Decide on the origin part of PROOF: `Ok(description)` to go on, or
    /// `Err(why)` to refuse.
    fn check(
        &self,
        signed: Option<([u8; 32], [u8; 64])>,
        transcript: &[u8; 32],
    ) -> Result<String, String> {
        let fp = |k: &[u8; 32]| crate::sitekey::fingerprint(k);
        let Some((public, sig)) = signed else {
            if self.allow_untrusted {
                return Ok(
                    "UNSIGNED session accepted because of --allow-untrusted: nothing \
                           proves which site sent this data"
                        .into(),
                );
            }
            return Err(format!(
                "the source did not sign the session: this target accepts only syncs signed by a \
                 capture site key it pins ({} pinned); run `mgear sync --sign site.key` with the \
                 site's key",
                self.keys.len()
            ));
        };
        let ok = ed25519_dalek::VerifyingKey::from_bytes(&public).is_ok_and(|vk| {
            vk.verify_strict(
                &session::signed_message(transcript),
                &ed25519_dalek::Signature::from_bytes(&sig),
            )
            .is_ok()
        });
        if !ok {
            return Err(format!(
                "the session signature by site key {} does not verify: refused",
                fp(&public)
            ));
        }
        if self.keys.contains(&public) {
            return Ok(format!("signed by pinned site key {}", fp(&public)));
        }
        if self.allow_untrusted {
            return Ok(format!(
                "signed by site key {}, which is NOT pinned; accepted because of --allow-untrusted",
                fp(&public)
            ));
        }
        Err(format!(
            "the session is signed by site key {}, which this target does not pin (--trust); \
             pin that site's .pub if it is yours",
            fp(&public)
        ))
    }
}

#[cfg(test)]
impl Trust {
    pub fn check_for_tests(
        &self,
        signed: Option<([u8; 32], [u8; 64])>,
        transcript: &[u8; 32],
    ) -> Result<String, String> {
        self.check(signed, transcript)
    }
}

/// One session with a source over `r`/`w`. `on_auth` runs once the source
/// has proven the key and its origin (the caller relaxes the handshake
/// deadline to the idle timeout). Chunks applied before an error stay
/// applied (and are synced by the caller).
#[allow(clippy::too_many_arguments)]
pub fn session<R: Read, W: Write>(
    r: &mut R,
    w: W,
    peer: &str,
    cap: &Served,
    vol: &Mutex<ServedVolume>,
    applied: &mut Applied,
    on_auth: &mut dyn FnMut(),
) -> crate::Result<()> {
    let mut w = BufWriter::with_capacity(256 * 1024, w);
    let (t, hello) = wire::recv(r, peer)?;
    if t != ty::HELLO {
        return Err(refuse(
            &mut w,
            None,
            err::PROTOCOL,
            format!("expected HELLO, got {}", wire::type_name(t)),
        ));
    }
    let Hello {
        name,
        size,
        nonce: source_nonce,
    } = Hello::decode(&hello)?;
    // Known before any other answer, the probe's too: a sync that completed set it (under
    // the volume's lock) before its APPLIED was sent.
    if let Some(m) = vol.lock().unwrap_or_else(|p| p.into_inner()).done_once() {
        return Err(refuse(&mut w, None, err::DONE_ONCE, m.into()));
    }
    // Names are compared without case (FAT keeps one directory for both);
    // the key proofs below bind the source's spelling, which both sides hold.
    if !name.eq_ignore_ascii_case(&cap.name) {
        return Err(refuse(
            &mut w,
            None,
            err::UNKNOWN_CAPTURE,
            match image_format::set::parse_disk_stream_name(&cap.name) {
                // A set's disk is served (and synced) by its own name: the set's name was
                // told only "does not know".
                Some((set, _)) if set.eq_ignore_ascii_case(&name) => format!(
                    "this target does not know capture {name}: it serves capture {}, a disk of \
                     machine set {set}; a set is synced disk by disk: `mgear sync --name \
                     {set}.dN` (and `--source` that disk) to the serve of disk N (to cut a set \
                     over, see SYNC.md \"A machine of several disks\")",
                    cap.name
                ),
                // The next step too (it said only which capture this serve has).
                _ => format!(
                    "this target does not know capture {name}: it serves capture {}; send \
                     {name}'s changes to the serve of {name}'s volume (each disk has its own \
                     `mgear serve`, on its own --listen address), or give --name {} here if \
                     --source is that disk",
                    cap.name, cap.name
                ),
            },
        ));
    }
    if size != cap.volume_size {
        return Err(refuse(
            &mut w,
            None,
            err::SIZE,
            format!(
                "the source disk is {size} bytes but the target volume is {} bytes: either \
                 --source is not the disk captured as {name} (that one was {} bytes: fix \
                 --source), or that disk {} since; sync cannot resize volumes, and a volume \
                 serve keeps is exactly its capture's disk: capture the disk again with \
                 --delta onto a medium, ingest that generation with --force (into this \
                 volume: its size changes), and serve it",
                cap.volume_size,
                cap.volume_size,
                if size > cap.volume_size {
                    "grew"
                } else {
                    "shrank"
                }
            ),
        ));
    }
    let target_nonce = session::nonce()?;
    let mut s = Session::new(
        &cap.key,
        &cap.capture_id,
        &source_nonce,
        &target_nonce,
        Role::Target,
    );
    let count = layout::chunk_count(cap.volume_size, cap.chunk_size);
    let welcome = Welcome {
        capture_id: cap.capture_id,
        chunk_size: cap.chunk_size,
        volume_size: cap.volume_size,
        chunk_count: count,
        nonce: target_nonce,
        proof: *s.proof("target", &name).as_bytes(),
    }
    .encode();
    wire::send(&mut w, ty::WELCOME, &welcome)?;
    w.flush()?;

    let (t, p) = wire::recv(r, peer)?;
    match t {
        ty::SEALED => {}
        ty::ERROR => {
            let m = Refusal::decode(&p)?.message;
            bail!("the source {peer} ended the session: {m}");
        }
        other => {
            return Err(refuse(
                &mut w,
                None,
                err::PROTOCOL,
                format!("expected PROOF, got {}", wire::type_name(other)),
            ))
        }
    }
    let Some((t, p)) = s.open(&p) else {
        return Err(refuse(
            &mut w,
            None,
            err::WRONG_KEY,
            format!(
                "the source's data key for {} is not this capture's key: use the key cache written \
                 by the capture of this disk (or the handshake was altered on its way: a sync \
                 over a direct connection tells)",
                cap.name
            ),
        ));
    };
    if t != ty::PROOF {
        return Err(refuse(
            &mut w,
            Some(&mut s),
            err::PROTOCOL,
            format!("expected PROOF, got {}", wire::type_name(t)),
        ));
    }
    let Proof { proof, signed } = Proof::decode(&p)?;
    if s.proof("source", &name) != blake3::Hash::from_bytes(proof) {
        return Err(refuse(
            &mut w,
            Some(&mut s),
            err::WRONG_KEY,
            format!(
                "the source's proof of the data key for {} is wrong",
                cap.name
            ),
        ));
    }
    match cap
        .trust
        .check(signed, &session::transcript(&hello, &welcome))
    {
        Ok(how) => eprintln!("mgear serve: session with {peer}: {how}"),
        Err(why) => return Err(refuse(&mut w, Some(&mut s), err::UNTRUSTED, why)),
    }
    on_auth();
    let mut records = RecordOpener::new(
        &cap.key,
        cap.capture_id,
        session::record_place(&source_nonce, &target_nonce),
        &format!("{} (sync from {peer})", cap.name),
    );
    // One authenticated sync writes at a time; others wait here (bounded by their idle timeout).
    let mut vol = vol.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = vol.done_once() {
        return Err(refuse(&mut w, Some(&mut s), err::DONE_ONCE, m.into()));
    }
    let told_elsewhere = vol.written_elsewhere;
    let state = wire::VolumeState {
        written_elsewhere: told_elsewhere,
    };
    let sealed = s.seal(ty::VOLUME, &state.encode())?;
    wire::send(&mut w, ty::SEALED, &sealed)?;
    for (n, part) in vol.ids.chunks(wire::IDS_PER_FRAME as usize).enumerate() {
        let p = Ids {
            first: n as u64 * wire::IDS_PER_FRAME as u64,
            ids: part.to_vec(),
        }
        .encode();
        let sealed = s.seal(ty::IDS, &p)?;
        wire::send(&mut w, ty::SEALED, &sealed)?;
    }
    w.flush()?;

    loop {
        let (t, p) = recv_sealed(r, &mut w, &mut s, peer)?;
        match t {
            ty::CHUNK => {
                let Chunk {
                    index,
                    chunk_id,
                    body,
                } = match Chunk::decode(&p) {
                    Ok(c) => c,
                    Err(e) => {
                        return Err(refuse(&mut w, Some(&mut s), err::PROTOCOL, e.to_string()))
                    }
                };
                if index >= count {
                    return Err(refuse(
                        &mut w,
                        Some(&mut s),
                        err::BAD_RECORD,
                        format!("chunk {index} does not fit a volume of {count} chunks"),
                    ));
                }
                let plain_len = layout::chunk_len(cap.volume_size, cap.chunk_size, index);
                let data = match body {
                    ChunkBody::Zero => {
                        let zeros = vec![0u8; plain_len as usize];
                        if vol.id_key.id(&zeros) != chunk_id {
                            return Err(refuse(
                                &mut w,
                                Some(&mut s),
                                err::BAD_RECORD,
                                format!("chunk {index} does not match its keyed id"),
                            ));
                        }
                        zeros
                    }
                    ChunkBody::Record(rec) => match records.open(&chunk_id, plain_len, &rec) {
                        Ok(d) => d,
                        Err(e) => {
                            return Err(refuse(
                                &mut w,
                                Some(&mut s),
                                err::BAD_RECORD,
                                format!("chunk {index}: {e}"),
                            ))
                        }
                    },
                };
                if vol.changed_behind() {
                    return Err(written_during(&mut w, &mut s, &mut vol));
                }
                if let Err(e) = vol.apply(index, &data, chunk_id) {
                    let code = vol.io_refusal();
                    return Err(refuse(&mut w, Some(&mut s), code, format!("{e:#}")));
                }
                applied.chunks += 1;
                applied.bytes += data.len() as u64;
            }
            ty::DONE => {
                let done = Done::decode(&p)?;
                if vol.changed_behind() {
                    return Err(written_during(&mut w, &mut s, &mut vol));
                }
                if let Err(e) = vol.sync() {
                    let code = vol.io_refusal();
                    return Err(refuse(&mut w, Some(&mut s), code, format!("{e:#}")));
                }
                let digest = session::volume_digest(vol.size, cap.chunk_size, &vol.ids);
                if told_elsewhere && digest == done.digest {
                    // The source compared every chunk and the volume is what it expected.
                    vol.written_elsewhere = false;
                }
                vol.keep_record(digest == done.digest);
                let a = wire::Applied {
                    chunks: applied.chunks,
                    bytes: applied.bytes,
                    digest,
                }
                .encode();
                let sealed = s.seal(ty::APPLIED, &a)?;
                wire::send(&mut w, ty::SEALED, &sealed)?;
                w.flush()?;
                vol.completed = true;
                return Ok(());
            }
            ty::ERROR => {
                let m = Refusal::decode(&p)?.message;
                bail!("the source {peer} ended the session: {m}");
            }
            other => {
                return Err(refuse(
                    &mut w,
                    Some(&mut s),
                    err::PROTOCOL,
                    format!("unexpected {} during transfer", wire::type_name(other)),
                ))
            }
        }
    }
}

/// How long peers may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From accept to a verified PROOF (key and origin).
    pub handshake: Duration,
    /// Longest silence on an authenticated connection.
    pub idle: Duration,
    /// Connections served at once; more are answered BUSY and closed.
    pub max_peers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake: Duration::from_secs(10),
            idle: Duration::from_secs(120),
            max_peers: 4,
        }
    }
}

/// A TCP read half with a deadline for the handshake, then an idle timeout
/// per read, so neither a silent nor a trickling peer holds a slot forever.
struct Timed {
    stream: TcpStream,
    deadline: Rc<Cell<Option<Instant>>>,
    limits: Limits,
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let wait = match self.deadline.get() {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(self.timed_out(true));
                }
                left.min(self.limits.idle)
            }
            None => self.limits.idle,
        };
        self.stream.set_read_timeout(Some(wait))?;
        match self.stream.read(buf) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(self.timed_out(self.deadline.get().is_some()))
            }
            other => other,
        }
    }
}

impl Timed {
    fn timed_out(&self, handshake: bool) -> std::io::Error {
        let m = if handshake {
            format!(
                "the peer did not prove the capture key within {:.1} s (handshake timeout): dropped",
                self.limits.handshake.as_secs_f64()
            )
        } else {
            format!(
                "the peer was silent for {:.1} s (idle timeout): dropped",
                self.limits.idle.as_secs_f64()
            )
        };
        std::io::Error::new(ErrorKind::TimedOut, m)
    }
}

/// Run one accepted connection to its end and log the outcome: what it applied (kept
/// whether or not the session completed), and whether it completed.
fn handle(
    conn: TcpStream,
    cap: &Served,
    vol: &Mutex<ServedVolume>,
    limits: Limits,
) -> (Applied, bool) {
    let peer = conn
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let started = Instant::now();
    let mut applied = Applied {
        chunks: 0,
        bytes: 0,
    };
    if let Some(why) = cap.fence.as_ref().and_then(Fence::broken) {
        eprintln!("mgear serve: refused {peer}: {why}");
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = wire::send(
            &mut &conn,
            ty::ERROR,
            &Refusal::new(err::IO, why.as_str()).encode(),
        );
        return (applied, false);
    }
    let rehashed = {
        let mut v = vol.lock().unwrap_or_else(|p| p.into_inner());
        v.reconnect_if_broken().and_then(|()| v.rehash_if_changed())
    };
    if let Err(e) = rehashed {
        // Said to the source too: it read a closed connection as one to retry. An export
        // that did not answer yet is one to wait for (BUSY), not a failure.
        eprintln!("mgear serve: refused {peer}: {e:#}");
        let code = match refusal_code(&e) {
            err::IO => vol.lock().unwrap_or_else(|p| p.into_inner()).io_refusal(),
            other => other,
        };
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = wire::send(
            &mut &conn,
            ty::ERROR,
            &Refusal::new(code, format!("{e:#}").as_str()).encode(),
        );
        return (applied, false);
    }
    let deadline = Rc::new(Cell::new(Some(started + limits.handshake)));
    let result = conn
        .set_nonblocking(false)
        .and_then(|_| conn.set_nodelay(true))
        .and_then(|_| conn.set_write_timeout(Some(limits.idle)))
        .and_then(|_| conn.try_clone())
        .context("setting up the connection")
        .and_then(|read_half| {
            let mut r = std::io::BufReader::with_capacity(
                256 * 1024,
                Timed {
                    stream: read_half,
                    deadline: deadline.clone(),
                    limits,
                },
            );
            session(&mut r, &conn, &peer, cap, vol, &mut applied, &mut || {
                deadline.set(None)
            })
        });
    let synced = vol.lock().unwrap_or_else(|p| p.into_inner()).sync();
    match result.and(synced) {
        Ok(()) => {
            eprintln!(
                "mgear serve: session with {peer} complete: {} applied ({} bytes) in {:.1} s",
                crate::units::count(applied.chunks, "chunk"),
                applied.bytes,
                started.elapsed().as_secs_f64()
            );
            (applied, true)
        }
        // A peer refused at the handshake (wrong key, another capture) has
        // nothing to continue from: say so rather than "ended early".
        // A cutover's probe before it quiesces its source: "refused the source: this
        // target does not know capture (a cutover asking ...)" read as an error in the log.
        Err(e) if applied.chunks == 0 && format!("{e:#}").contains(super::cutover::PROBE_NAME) => {
            eprintln!(
                "mgear serve: {peer} asked whether this is a mgear serve (a cutover, before it \
                 quiesces its source): answered"
            );
            (applied, false)
        }
        Err(e) if applied.chunks == 0 => {
            eprintln!("mgear serve: session with {peer} ended with nothing applied: {e:#}");
            (applied, false)
        }
        Err(e) => {
            eprintln!(
                "mgear serve: session with {peer} ended early after {} applied (kept; a reconnecting \
                 source continues from there): {e:#}",
                crate::units::count(applied.chunks, "chunk")
            );
            (applied, false)
        }
    }
}

/// Serve sessions from `listener`, up to `limits.max_peers` at once, until
/// one completes (`once`) or forever. Each session's outcome is logged on
/// stderr; returns what every session applied, those that ended early included (what they
/// wrote is kept: the summary must not say less was changed than was).
pub fn serve_loop(
    listener: TcpListener,
    cap: &Served,
    vol: ServedVolume,
    once: bool,
    limits: Limits,
) -> crate::Result<Applied> {
    let vol = Mutex::new(ServedVolume { once, ..vol });
    let total = Mutex::new(Applied {
        chunks: 0,
        bytes: 0,
    });
    let active = AtomicUsize::new(0);
    let finished = AtomicBool::new(false);
    // Polled accept, so `--once` can stop listening while other peers finish.
    listener
        .set_nonblocking(true)
        .context("configuring the listening socket")?;
    std::thread::scope(|scope| {
        // SIGTERM/SIGINT: accept no more syncs, let the ones under way end,
        // and report (a second signal ends the process at once).
        while !finished.load(Ordering::SeqCst) && !crate::signals::stop_requested() {
            let conn = match listener.accept() {
                Ok((c, _)) => c,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => {
                    eprintln!("mgear serve: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            };
            if active.load(Ordering::SeqCst) >= limits.max_peers {
                let m = format!(
                    "the target is serving {} peers already: try again shortly",
                    limits.max_peers
                );
                eprintln!(
                    "mgear serve: refused {}: {m}",
                    conn.peer_addr().map(|a| a.to_string()).unwrap_or_default()
                );
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = wire::send(
                    &mut &conn,
                    ty::ERROR,
                    &Refusal::new(err::BUSY, m.as_str()).encode(),
                );
                continue;
            }
            active.fetch_add(1, Ordering::SeqCst);
            let (vol, total, active, finished) = (&vol, &total, &active, &finished);
            scope.spawn(move || {
                let (a, complete) = handle(conn, cap, vol, limits);
                let mut t = total.lock().unwrap_or_else(|p| p.into_inner());
                t.chunks += a.chunks;
                t.bytes += a.bytes;
                if complete && once {
                    finished.store(true, Ordering::SeqCst);
                }
                active.fetch_sub(1, Ordering::SeqCst);
            });
        }
        // Ended by its one sync (`--once`): connections that came meanwhile are told so, not
        // reset as the listener closes (a cutover's probe right after its warm sync read a
        // reset as "not a mgear serve").
        if finished.load(Ordering::SeqCst) {
            let said = vol
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .done_once()
                .unwrap_or("this serve has ended");
            while let Ok((conn, _)) = listener.accept() {
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = wire::send(
                    &mut &conn,
                    ty::ERROR,
                    &Refusal::new(err::DONE_ONCE, said).encode(),
                );
            }
        }
    });
    let t = *total.lock().unwrap_or_else(|p| p.into_inner());
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record holds only the volume's times as a completed session left them, and only for
    /// its capture: a write since, or another capture's serve, reads as "written elsewhere".
    #[test]
    fn a_record_holds_only_for_the_times_and_capture_it_kept() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("v.raw");
        std::fs::write(&vol, vec![7u8; 8192]).unwrap();
        let state = dir.path().join("state/mgear/serve");
        let r = Record::in_dir(&state, &vol, &[1; 16], "web01").unwrap();
        assert!(!r.holds(&stamp_of(&vol)), "no record yet");
        r.save(&stamp_of(&vol));
        assert!(r.holds(&stamp_of(&vol)));
        assert!(!Record::in_dir(&state, &vol, &[2; 16], "web01")
            .unwrap()
            .holds(&stamp_of(&vol)));
        // Machines that share a data key share the capture id: the name tells them apart (a
        // sibling's volume was served, and synced over, as this machine's).
        let sibling = Record::in_dir(&state, &vol, &[1; 16], "web02").unwrap();
        assert!(!sibling.holds(&stamp_of(&vol)));
        let text = std::fs::read_to_string(&r.path).unwrap();
        assert!(r.names_it(&text) && !sibling.names_it(&text), "{text}");
        // Another program writes it (in another clock tick than the save's).
        std::thread::sleep(Duration::from_millis(20));
        let f = std::fs::OpenOptions::new().write(true).open(&vol).unwrap();
        f.write_all_at(&[9], 100).unwrap();
        assert!(!r.holds(&stamp_of(&vol)));
        r.save(&stamp_of(&vol));
        assert!(r.holds(&stamp_of(&vol)));
        r.forget();
        assert!(!r.holds(&stamp_of(&vol)));
    }

    #[test]
    fn volume_ids_follow_writes_and_zero_chunks_stay_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.raw");
        let cs = 65536u32;
        std::fs::write(&p, vec![1u8; 2 * cs as usize + 10]).unwrap();
        let key = IdKey::derive(&DataKey::from_bytes([1; 32]), &[2; 16]);
        let open = |p: &std::path::Path| {
            let vol = mgear_volume::FileVolume::open_in_place(p).unwrap();
            ServedVolume::open(Box::new(vol), 2 * u64::from(cs) + 10, cs, key.clone()).unwrap()
        };
        let mut v = open(&p);
        assert_eq!(v.ids.len(), 3);
        assert_eq!(v.ids[2], key.id(&[1u8; 10]));
        let zeros = vec![0u8; cs as usize];
        v.apply(1, &zeros, key.id(&zeros)).unwrap();
        v.sync().unwrap();
        let again = open(&p);
        assert_eq!(again.ids, v.ids);
        let back = std::fs::read(&p).unwrap();
        assert!(back[cs as usize..2 * cs as usize].iter().all(|&b| b == 0));
        // The zero chunk was punched out, not written: the file holds less.
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(&p).unwrap();
        assert!(
            md.blocks() * 512 < 2 * u64::from(cs) + 4096,
            "{}",
            md.blocks()
        );
        assert!(back[..cs as usize].iter().all(|&b| b == 1));
    }
}
