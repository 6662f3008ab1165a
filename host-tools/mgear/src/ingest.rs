//! `mgear ingest`: verify, decrypt and write a capture onto a volume.
//!
//! ```text
//! mgear ingest --medium fat:/dev/sdb --name web01 --identity target.key --target file:web01.raw
//! mgear ingest ... --target qcow2:web01.qcow2      # needs qemu-img (Debian: qemu-utils)
//! mgear ingest ... --target dev:/dev/vdb          # a cloud volume attached to this host
//! mgear ingest ... --target libvirt:mgear/web01    # a volume in a libvirt storage pool
//! mgear ingest ... --target ebs-snapshot:web01 --register-image   # AWS: a snapshot and an AMI
//! mgear ingest ... --target rbd:volumes/web01      # a Ceph RBD image (CEPH_CONF, CEPH_ARGS)
//! mgear ingest ... --target cinder:web01 --boot --flavor m1.small   # OpenStack (OS_*)
//! mgear ingest ... --target file:web01.raw --boot --wait-for 'login:' --timeout 300
//! mgear ingest ... --target file:web01.raw --adapt --boot --boot-bus virtio
//! ```
//!
//! Every target is a [`mgear_volume::Volume`] (see `crate::spec` for the
//! `--target` kinds): this module is the pipeline above that seam and knows
//! nothing target-specific. Every target is written directly, with no
//! staging copy: `qcow2:` through `qemu-nbd` on a unix socket in the state
//! dir, `libvirt:POOL/NAME` into a new volume of POOL (`virsh
//! vol-create-as`) on the system libvirt daemon (`qemu:///system`, see
//! `scripts/libvirtd.sh`), an NBD export through our client. An existing
//! target (file or libvirt volume) is only replaced with `--force`.
//!
//! `--boot` then proves the ingested volume boots (local QEMU, or a libvirt
//! domain for `libvirt:`), always with the guest's writes discarded so the
//! volume stays exactly what was verified. The boot report is kept next to the
//! volume (`VOL.boot-report.json`; in the state dir for the others, named after the target:
//! `<state-dir>/dev__dev_sdb.boot-report.json`), and the exit code is 1 if it did not boot.
//! `--boot-bus` picks the disk bus (default `auto`: virtio unless the guest's
//! initramfs visibly lacks it).
//!
//! `--adapt` (driver adaptation) runs `virt-v2v-in-place` (Debian package
//! `virt-v2v`; see `mgear_boot::adapt`) on the volume after the read-back check
//! and before `--boot` (and before a `libvirt:` upload or NBD copy), so the
//! guest boots on virtio: it changes the volume, which is then no longer the
//! captured disk bit for bit, by design. A missing `virt-v2v-in-place` is
//! reported before anything is decrypted, and so is an NBD target (there is
//! no local volume to adapt). If the adaptation fails the verified volume
//! stays in place, unadapted, and the message says so.
//!
//! Every chunk is authenticated as it is read (the keyed reader checks
//! record hash, position, AEAD and keyed chunk id against the index, whose
//! digest the manifest MAC covers). Zero chunks become `write_zeroes`: file
//! targets stay sparse (hole punch), NBD and qcow2 get `WRITE_ZEROES`, and a
//! device region is only written if it does not already read as zeros. At
//! the end the whole volume is read back (ranges the volume reports as holes
//! are not read) and compared with what was authenticated, chunk by chunk; a
//! volume that cannot read back (say, a snapshot API) is trusted with what
//! was authenticated and sent. Where the volume offers a reader of its own
//! (`Volume::concurrent_reader`; RBD: a second librbd client, uncached, with
//! the image opened read-only; `file:`/`dev:`: a read-only `O_DIRECT`
//! descriptor, so the disk is read, not the page cache), the read-back runs
//! beside the writes instead and compares the bytes with the authenticated
//! plaintext still in memory (no second hash of them): each batch is
//! read back through that reader once it was written (and flushed, unless
//! the reader sees completed writes without a flush, as `O_DIRECT` does), while the
//! next batch is written, and chunk 0 is written only after everything else
//! read back right. Either way every byte is read back from the volume, the
//! volume is flushed before the resume state records a chunk and before it is
//! finished, and `volume_sha256` is the SHA-256 of the volume as read back,
//! in disk order.
//!
//! A target never looks complete before it is:
//! - `file:`/`qcow2:` targets are written as `NAME.partial` and renamed at the end;
//! - every target gets chunk 0 (partition table, boot sector) written last
//!   (a `.partial` file or qcow2 of a span whose media arrive one by one gets
//!   it with the medium that holds it: its name already says unfinished);
//!   `dev:`, `libvirt:` and NBD targets, which have no unfinished name, have a
//!   marker `<state-dir>/<name>.mgear-incomplete` until the read-back check
//!   passed, and a new ingest clears their chunk 0 region first.
//!
//! Decrypted data never reaches another user: the `.partial` (and the
//! volume it becomes), the state dir (0700), the state file and the device
//! marker are created new, 0600, never through a symlink
//! (`image_format::private`); a `.partial` without its state file is
//! refused, not adopted.
//!
//! Resume: progress is recorded in a state file (`--state-dir`, default
//! `$XDG_STATE_HOME/mgear/ingest`). After an interruption, re-run the same
//! command: it continues with the chunks not yet recorded.
//!
//! Media that arrive one by one: when a capture spans several media (FORMAT.md
//! §15) and only some of them are given, ingest writes every chunk those media
//! hold (and every zero chunk), records them, and stops with exit code 4
//! (`pending`), naming the chunks still missing and the medium each is on. The
//! same command with the next medium (alone, or with the others) continues with
//! what that medium holds; the run that completes the disk writes chunk 0 and
//! reads the whole volume back. Until then the target stays unfinished, as
//! after an interruption.
//!
//! # State file layout (`<state-dir>/<target>.ingest`, little-endian)
//!
//! ```text
//! 0   8  magic "MGINGST3"
//! 8   32 manifest root hash of the generation being ingested (blake3, FORMAT.md)
//! 40  8  disk size in bytes
//! 48  4  chunk size in bytes
//! 52  4  generation
//! 56  8  reserved (0)
//! 64  .. one 32-byte slot per chunk, chunk i at 64 + 32 i: zero until the chunk
//!        is durable on the volume, then the index's keyed id of the plaintext
//!        written (blake3 keyed with the capture's chunk-id key), which the
//!        reader checked when it authenticated the chunk
//! ```
//!
//! The file is created at its full size (sparse), so the header and size are
//! durable before any slot is written. A slot is written only after the
//! volume data it describes was flushed, and synced before anything else
//! happens; slots are 32-byte aligned and never straddle a 512-byte sector,
//! so after a power cut each reads as zero (not done) or as its id. Slots by
//! index, not a log in write order, let runs write chunks in any order (the
//! media of a span arriving one by one).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::bail;
use crate::error::Context;
use image_format::{CaptureReader, ChunkBuf, ChunkData};
use mgear_volume::{Finished, Found, Prepare, ReadAt, Volume, WriteAt};
use serde::Serialize;

use crate::boot_cmd::{self, BootOptions, Resolved};
use crate::exit::{coded, usage, FOUND, IO, OK, USAGE};
use crate::progress::{self, Progress};
use crate::spec::{Bare, Target};
use crate::target::state_dir;
use crate::units::human_bytes;

const STATE_MAGIC: &[u8; 8] = b"MGINGST3";
const STATE_HEADER: u64 = 64;

/// `mgear ingest`: the targets of a machine set and the disk to ingest,
/// around the plan of one disk's ingest (`crate::machine::ingest` runs it).
#[derive(Debug)]
pub struct Request {
    pub plan: Plan,
    /// Where to write: file:PATH (sparse raw), qcow2:PATH, dev:/dev/DEVICE, libvirt:POOL/NAME,
    /// nbd://..., rbd:POOL/IMAGE[?conf=PATH&id=USER], cinder:NAME or ebs-snapshot:NAME.
    /// For a machine set (several disks): one --target per disk in order, or one
    /// with `{disk}` in it (the disk's index 0, 1, ...), e.g. file:db01-{disk}.raw.
    pub targets: Vec<String>,
    /// Of a machine set, ingest only disk N (0 = the first) into the one --target.
    pub disk: Option<usize>,
}

/// The ingest of one disk, typed: what `mgear ingest`'s flags say (the
/// binary's `cli::ingest` parses them; demo and bench fill it in directly).
#[derive(Debug, Clone)]
pub struct Plan {
    pub medium: crate::medium::Where,
    /// Capture name.
    pub name: String,
    /// Target identity (secret key from `mgear keygen`).
    pub identity: Option<PathBuf>,
    /// Passphrase file (if the capture was made with one).
    pub passphrase_file: Option<PathBuf>,
    /// The target as the operator wrote it (set from `Request::targets`).
    pub target: String,
    /// With ebs-snapshot:NAME: register an AMI from the completed snapshot.
    pub register_image: bool,
    /// Generation to ingest [default: newest finished].
    pub generation: Option<u32>,
    /// Where resume state and device markers live [default: $XDG_STATE_HOME/mgear/ingest].
    pub state_dir: Option<PathBuf>,
    /// Replace an existing target file (or libvirt volume); overwrite a dev:
    /// device that holds a file system or partition table.
    pub force: bool,
    /// After the ingest, boot the volume (guest writes discarded) and prove it came up.
    pub boot: bool,
    /// Regex that proves the boot when it appears on the serial console.
    pub wait_for: String,
    /// Seconds to wait for the regex.
    pub timeout: u64,
    /// Nova flavor (name or id) the server of a cinder: target boots with (--boot).
    pub flavor: Option<String>,
    /// Disk bus for --boot: virtio, ide, sata, nvme or auto.
    pub boot_bus: mgear_boot::Bus,
    /// Make the guest boot on virtio: run virt-v2v-in-place on the verified
    /// volume (Debian: apt-get install virt-v2v), before --boot.
    pub adapt: bool,
    /// Ingest even without valid seal/arrival attestations of an appliance
    /// capture (loud warning). Trust still needs a pinned key (--trust).
    pub allow_unsealed: bool,
    /// Pinned trust: --trust, --trust-appliance, --allow-untrusted, --attestations, --expect-generation.
    pub trust: crate::trust::Pins,
    /// Hold the average write rate, bytes per second (spare a shared storage backend).
    pub rate_limit: Option<f64>,
    /// Sync and record progress after this many bytes of data (tests use small values).
    pub checkpoint_bytes: u64,
    /// Also report the SHA-256 of the volume as read back (`volume_sha256`,
    /// what `sha256sum` of the written disk prints). Every byte is compared
    /// with what was authenticated either way; the digest costs about 0.8
    /// CPU-seconds per GiB more.
    pub volume_sha256: bool,
    /// Print the summary as one JSON object.
    pub json: bool,
    /// Also write a ticket-grade report: FILE (JSON) and FILE with its extension replaced by `.txt` (r.json: r.txt) (summary).
    pub report: Option<PathBuf>,
    /// When the volume is finished: at once, or (a disk of a machine, set by `machine`) held
    /// until every disk of the machine is written and read back.
    pub hold: Finishing,
    /// The manifest root this capture must have: a disk of a machine set,
    /// the root its set manifest binds (set by `machine`).
    pub expect_root: Option<[u8; 32]>,
}

/// When an ingest finishes its volume (renames a `.partial` into place, drops its state).
/// A machine's disks are finished together, in three runs over each: written
/// ([`Finishing::Hold`]), read back ([`Finishing::CheckThenHold`]), finished
/// ([`Finishing::Checked`]); a read-back that fails then leaves every volume of the machine
/// as it was (disk 0 of a delta was renamed into place before disk 1's read-back failed: a
/// machine of two generations).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Finishing {
    /// Read back and finish when every chunk is written.
    #[default]
    Now,
    /// Write every chunk, then stop with [`Held`].
    Hold,
    /// Every chunk is written: read the volume back, then stop with [`Held`] (its
    /// `read_back` set) instead of finishing.
    CheckThenHold,
    /// This process read the volume back a moment ago (with this `volume_sha256`): finish it
    /// without reading it again.
    Checked(Option<String>),
}

/// The outcome of an ingest with [`Plan::hold`]: every chunk of the disk is
/// durable and recorded, and the volume is left unfinished until an ingest
/// without `hold` reads it back and finishes it.
#[derive(Debug)]
pub struct Held {
    /// Bytes of data chunks this run wrote.
    pub bytes_written: u64,
    /// Zero chunks this run wrote.
    pub zero_chunks: u64,
    /// Chunks earlier runs had written (the finishing run finds every chunk written).
    pub resumed_chunks: u64,
    /// Seconds this run spent on the disk before holding it (the finishing step's alone made a
    /// set's disk read 0.07 s at 919 MB/s).
    pub seconds: f64,
    /// [`Finishing::CheckThenHold`]: the read-back passed, with this `volume_sha256`.
    pub read_back: Option<Option<String>>,
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("every chunk is written; the volume is finished with the machine's other disks")
    }
}

impl std::error::Error for Held {}

/// What `ingest --json` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    pub command: &'static str,
    pub name: String,
    pub generation: u32,
    pub target: String,
    pub disk_size: u64,
    pub chunks: u64,
    pub zero_chunks: u64,
    pub resumed_chunks: u64,
    pub bytes_written: u64,
    pub verified: bool,
    /// SHA-256 (hex) of the whole volume as read back after writing, what
    /// `sha256sum` of the written disk prints, with `--volume-sha256`;
    /// `None` without it and when the target cannot be read back
    /// (`ebs-snapshot:`). Taken before `--adapt`.
    pub volume_sha256: Option<String>,
    pub seconds: f64,
    pub mb_per_s: f64,
    /// Host path of the uploaded volume (`libvirt:` targets); `snap-X` or `snap-X ami-Y`
    /// (`ebs-snapshot:`, also as `snapshot_id` and `image_id`).
    pub volume: Option<String>,
    /// The EBS snapshot written (`ebs-snapshot:` targets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// The AMI registered from it (`ebs-snapshot:` with `--register-image`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Nova server booted from the volume (`cinder:` targets with `--boot`), left running.
    pub server: Option<String>,
    /// Did the volume boot (`--boot` only)?
    pub booted: Option<bool>,
    /// Where the boot report was written (`--boot` only).
    pub boot_report: Option<String>,
    /// What the driver adaptation did (`--adapt` only).
    pub adapt: Option<mgear_boot::AdaptReport>,
    /// The local volume `--adapt` adapts (its path and QEMU format), once it is verified:
    /// adapted by [`run`] after the report is made, so a failed adaptation's report keeps
    /// what was written and verified (it said "nothing verified").
    #[serde(skip)]
    pub to_adapt: Option<(PathBuf, &'static str)>,
    /// The target already held this generation, verified by an earlier run: kept, nothing
    /// written (only present, as `true`, then).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub kept: bool,
    /// What the operator should look at, each also printed on stderr as it came up: a
    /// `--force` that replaces a file others could read with a 0600 one, a file system short
    /// of room, a trailer or span label changed since the capture.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl Report {
    /// `volume`, and for an EBS target its snapshot and image ids apart (a script had to split
    /// "snap-X ami-Y").
    fn set_volume(&mut self, volume: Option<String>) {
        if self.target.starts_with("ebs-snapshot:") {
            let mut ids = volume.as_deref().unwrap_or_default().split(' ');
            self.snapshot_id = ids
                .next()
                .filter(|i| i.starts_with("snap-"))
                .map(Into::into);
            self.image_id = ids.next().filter(|i| i.starts_with("ami-")).map(Into::into);
        }
        self.volume = volume;
    }
}

/// The order chunks are written in: 1..n, then 0 (the boot sector last).
fn chunk_at(k: u64, count: u64) -> u64 {
    if k + 1 == count {
        0
    } else {
        k + 1
    }
}

/// The resume state: which chunks are durable on the volume, with the keyed
/// id of what was written (layout in the module doc).
struct State {
    file: File,
    path: PathBuf,
    count: u64,
    /// Chunk i is durable on the volume and its slot holds its id.
    done: Bits,
}

/// The refusal of a target whose ingest state `h` (at `state_path`) records another
/// ingest than this one (`header`). A conflict of the operator's asking (this target is
/// half-way through another ingest), not a failing disk: exit 2. The generation it was
/// writing is named: a newer generation on the medium since made "the same command" ingest
/// that one. A generation of another capture (the same number, another manifest root) is
/// not finished by `--generation`: that hint went in a circle.
fn other_ingest(state_path: &Path, h: &[u8], header: &[u8]) -> crate::Error {
    let at = STATE_MAGIC.len() + 32 + 8 + 4;
    let root_at = STATE_MAGIC.len();
    let was = (h.starts_with(STATE_MAGIC) && h.len() >= at + 4).then(|| {
        (
            u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]),
            &h[root_at..root_at + 32],
        )
    });
    let this_gen = u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
    let short = |r: &[u8]| crate::output::hex(&r[..8]);
    let which = match was {
        Some((g, root)) if g != this_gen => format!(
            "an unfinished ingest of generation {g} (manifest root {}...) into this \
             target: if it is this capture's, finish it with `--generation {g}` in this \
             command (in place of any --generation given), with the media that hold \
             generation {g} (the medium the unfinished run was given among them; `mgear \
             inspect` lists a medium's generations); else finish it with the command it was \
             started with",
            short(root)
        ),
        Some((g, root)) => format!(
            "an unfinished ingest of generation {g} of another capture (manifest root \
             {}..., this one's {}...) into this target: finish it with the command and \
             medium it was started with",
            short(root),
            short(&header[root_at..root_at + 32])
        ),
        None => "an unfinished ingest of a different capture or generation into this \
                 target (or one by another version of mgear): finish that one (the same \
                 command it was started with)"
            .to_string(),
    };
    usage(format!(
        "{} records {which}; or, to write this capture there instead, run this command \
         with --force (the unfinished one is dropped and this one starts over)",
        state_path.display()
    ))
}

/// The next step after a read-back check failed: the medium's data checked out, the target
/// did not keep it ("the data did not check out: do not use it" sent the operator away from
/// the re-run that mends it).
const READ_BACK_HINT: &str = "the medium's data checked out; the target does not hold what \
     was written to it (changed by something else since, or failing storage): run the same \
     command again to write and check it anew, and if it fails again, check the target's \
     storage before trusting it with a disk";

/// After a read-back check failed: the resume state at `path` forgets every chunk (its slots
/// zeroed), so that the same command writes the whole volume again. It kept them all as
/// written, so every re-run, `--force` too, read back the same bytes and failed again until
/// the operator found and removed the state by hand. What the message adds to say so.
fn forget_written(path: &Path) -> String {
    let reset = (|| -> std::io::Result<()> {
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        let len = f.metadata()?.len();
        f.set_len(STATE_HEADER.min(len))?;
        f.set_len(len)?;
        f.sync_all()
    })();
    match reset {
        Ok(()) => format!(
            ", and its resume state {} now records no chunk as written: the same command writes \
             the whole volume again and reads it back (a capture over several media needs all \
             of them for that, given together or in turns as before; failing again, the \
             storage does not keep what is written to it: check it before trusting it with a \
             disk)",
            path.display()
        ),
        Err(e) => format!(
            " (its resume state {} could not be reset: {e}; remove it and the unfinished volume, \
             for a file: or qcow2: target its .partial, then re-run)",
            path.display()
        ),
    }
}

/// A record that did not check out (`e`, exit 1) stopped the ingest with `unfinished` and
/// its resume state `state` left behind: says so, and what they are good for.
fn left_unfinished(e: crate::Error, unfinished: &str, partial: bool, state: &Path) -> crate::Error {
    if crate::exit::code_of(&e) == crate::exit::FOUND && !e.to_string().contains("left incomplete")
    {
        // The cause first: it came last, after some 300 characters about the .partial.
        let message = format!(
            "{e:#}. {unfinished} is left unfinished, with its resume state {}: a re-run \
                 with an intact copy of the medium continues it; --force writes another capture \
                 there instead; removing {} gives it up",
            state.display(),
            match partial {
                true => "both",
                false => "the resume state",
            }
        );
        // The next step as the cause's class gives it (a damaged file system's is not a bad
        // record's: "do not use it" was said of a medium to copy, not repair).
        crate::exit::coded_hint(crate::exit::FOUND, message, crate::exit::hint(&e, "ingest"))
    } else {
        e
    }
}

/// A `.partial` beside a finished `file:`/`qcow2:` target that is kept (a later ingest,
/// `--force`, that stopped before it was verified): it holds decrypted data and was left
/// unnamed, so the kept run says where it is, with its resume state, and what to do.
fn leftover_partial(state_dir: &Path, target: &Path) -> Option<String> {
    let mut partial = target.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    std::fs::symlink_metadata(&partial).ok()?;
    let state = state_dir.join(format!(
        "{}.ingest",
        mgear_volume::file::absolute_key(target)
    ));
    let state = match state.exists() {
        true => format!(" and its resume state {}", state.display()),
        false => String::new(),
    };
    Some(format!(
        "{} (an unfinished ingest into {}, holding decrypted data){state} are still there: \
         `--force` continues it and replaces {} once it is verified; remove {} to give it up",
        partial.display(),
        target.display(),
        target.display(),
        match state.is_empty() {
            true => "it",
            false => "both",
        }
    ))
}

/// Before a `file:` target's `.partial` is opened: its ingest state recording another
/// ingest is what to tell (a `.partial` of another generation's size was refused first as
/// "of another capture ... not known", with `rm` as the way on).
fn refuse_other_unfinished(state_dir: &Path, target: &Path, header: &[u8]) -> crate::Result<()> {
    let state = state_dir.join(format!(
        "{}.ingest",
        mgear_volume::file::absolute_key(target)
    ));
    let Ok(Some(mut f)) = open_private(&state, "ingest state") else {
        return Ok(());
    };
    let mut h = vec![0u8; header.len()];
    if f.read_exact(&mut h).is_ok() && h != header {
        // The volume that unfinished ingest was writing is gone (removed by hand): nothing
        // is left to finish, and the record only sent the operator to finish it (`--generation
        // N`) or to drop it (`--force`).
        let mut partial = target.as_os_str().to_owned();
        partial.push(".partial");
        if std::fs::symlink_metadata(&partial).is_err() {
            drop(f);
            std::fs::remove_file(&state)
                .with_context(|| format!("removing {}", state.display()))?;
            eprintln!(
                "mgear: note: {} recorded an unfinished ingest into {}, which is gone: that \
                 record is dropped",
                state.display(),
                std::path::Path::new(&partial).display()
            );
            return Ok(());
        }
        return Err(other_ingest(&state, &h, header));
    }
    Ok(())
}

impl State {
    /// The header of an ingest of `reader`'s generation.
    fn header_of<S: image_format::Store>(reader: &CaptureReader<S>) -> Vec<u8> {
        let root = *blake3::hash(&reader.manifest().signed_bytes()).as_bytes();
        State::header(
            &root,
            reader.disk_size(),
            reader.chunk_size(),
            reader.generation(),
        )
    }

    fn header(root: &[u8; 32], size: u64, chunk: u32, generation: u32) -> Vec<u8> {
        let mut h = Vec::with_capacity(STATE_HEADER as usize);
        h.extend_from_slice(STATE_MAGIC);
        h.extend_from_slice(root);
        h.extend_from_slice(&size.to_le_bytes());
        h.extend_from_slice(&chunk.to_le_bytes());
        h.extend_from_slice(&generation.to_le_bytes());
        h.extend_from_slice(&[0u8; 8]);
        h
    }

    /// Open the state for this ingest of `count` chunks: resume a matching
    /// one, or start fresh (`fresh` = no partial target exists, so old state
    /// is meaningless).
    /// `start_over` (`--force`): a state that records another ingest is dropped and this
    /// one starts afresh over the partial target (every chunk is written again).
    fn open(
        path: PathBuf,
        header: &[u8],
        count: u64,
        fresh: bool,
        start_over: bool,
    ) -> crate::Result<Self> {
        let found = match fresh {
            true => None,
            false => open_private(&path, "ingest state")?,
        };
        let resuming = found.is_some();
        let mut state = State {
            file: found.map_or_else(|| State::create(&path, header, count), Ok)?,
            path,
            count,
            done: Bits::new(count),
        };
        let len = state.file.seek(SeekFrom::End(0))?;
        let mut h = vec![0u8; header.len()];
        state.file.seek(SeekFrom::Start(0))?;
        if len != STATE_HEADER + count * 32 || state.file.read_exact(&mut h).is_err() || h != header
        {
            if start_over {
                eprintln!(
                    "mgear: --force: {} recorded another unfinished ingest into this target; \
                     starting this one over (every chunk is written again)",
                    state.path.display()
                );
                drop(state.file);
                return State::open(state.path, header, count, true, false);
            }
            return Err(other_ingest(&state.path, &h, header));
        }
        if resuming {
            let mut slots = BufReader::with_capacity(1 << 20, &state.file);
            let mut id = [0u8; 32];
            for i in 0..count {
                slots.read_exact(&mut id)?;
                if id != [0; 32] {
                    state.done.set(i);
                }
            }
        }
        Ok(state)
    }

    /// A new state file: the header and one empty (zero, sparse) slot per chunk.
    fn create(path: &Path, header: &[u8], count: u64) -> crate::Result<File> {
        // Old state for a target that no longer exists is meaningless; a
        // symlink there is someone else's doing and is left alone.
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale ingest state {}", path.display()))?;
        }
        let mut f = image_format::private::create(path)
            .with_context(|| format!("creating ingest state {} (new, 0600)", path.display()))?;
        // A full file system here said "No space left on device" naming nothing.
        (|| {
            f.write_all(header)?;
            f.set_len(STATE_HEADER + count * 32)?;
            f.sync_all()
        })()
        .with_context(|| format!("writing ingest state {}", path.display()))?;
        Ok(f)
    }

    fn is_done(&self, index: u64) -> bool {
        self.done.get(index)
    }

    fn done_count(&self) -> u64 {
        self.done.count()
    }

    /// Records chunks whose bytes were made durable on the volume: each
    /// keyed id into its chunk's slot, then synced.
    fn record(&mut self, ids: &[(u64, [u8; 32])]) -> crate::Result<()> {
        let path = self.path.clone();
        self.record_ids(ids)
            .with_context(|| format!("writing ingest state {}", path.display()))
    }

    fn record_ids(&mut self, ids: &[(u64, [u8; 32])]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        // Neighbouring chunks (the usual case) go as one write.
        let mut run: Vec<u8> = Vec::new();
        let mut run_start = 0;
        let flush = |run: &mut Vec<u8>, at: u64| -> std::io::Result<()> {
            if !run.is_empty() {
                self.file.write_all_at(run, STATE_HEADER + at * 32)?;
                run.clear();
            }
            Ok(())
        };
        for (i, (index, id)) in ids.iter().enumerate() {
            if i > 0 && *index != run_start + (run.len() / 32) as u64 {
                flush(&mut run, run_start)?;
            }
            if run.is_empty() {
                run_start = *index;
            }
            run.extend_from_slice(id);
        }
        flush(&mut run, run_start)?;
        self.file.sync_data()?;
        for (index, _) in ids {
            self.done.set(*index);
        }
        Ok(())
    }

    /// Chunks done, in write order from the start, before the first one
    /// that is not: all of them when the earlier runs wrote in write order
    /// (each given every chunk).
    fn done_prefix(&self) -> u64 {
        (0..self.count)
            .find(|&k| !self.is_done(chunk_at(k, self.count)))
            .unwrap_or(self.count)
    }
}

/// One bit per chunk.
struct Bits {
    words: Vec<u64>,
    len: u64,
    ones: u64,
}

impl Bits {
    fn new(len: u64) -> Self {
        Bits {
            words: vec![0; len.div_ceil(64) as usize],
            len,
            ones: 0,
        }
    }

    fn from_fn(len: u64, f: impl Fn(u64) -> bool) -> Self {
        let mut b = Bits::new(len);
        for i in (0..len).filter(|&i| f(i)) {
            b.set(i);
        }
        b
    }

    fn get(&self, i: u64) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: u64) {
        if i < self.len && !self.get(i) {
            self.words[(i / 64) as usize] |= 1 << (i % 64);
            self.ones += 1;
        }
    }

    fn count(&self) -> u64 {
        self.ones
    }
}

/// Reads the ids recorded in a state file by chunk index (the read-back's
/// own handle, beside the writer's).
struct Slots(File);

impl Slots {
    fn open(path: &Path) -> crate::Result<Self> {
        Ok(Slots(File::open(path).with_context(|| {
            format!("opening ingest state {}", path.display())
        })?))
    }

    fn id(&self, index: u64) -> crate::Result<[u8; 32]> {
        use std::os::unix::fs::FileExt as _;
        let mut id = [0u8; 32];
        self.0.read_exact_at(&mut id, STATE_HEADER + index * 32)?;
        Ok(id)
    }
}

/// Open an existing file of ours read-write, never through a symlink;
/// `None` if there is nothing at `path`.
fn open_private(path: &Path, what: &str) -> crate::Result<Option<File>> {
    match image_format::private::open_existing(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if image_format::private::is_symlink_refusal(&e) => Err(usage(format!(
            "{what} {} is a symlink: refusing to write through it (someone may have planted it); \
             remove it and run again",
            path.display()
        ))),
        Err(e) => Err(crate::Error::from(e).context(format!("opening {what} {}", path.display()))),
    }
}

/// Run `mgear ingest` of one disk; `crate::machine::ingest` runs a set and
/// calls this for the rest.
pub fn run(cli: Request) -> crate::Result<i32> {
    crate::signals::install();
    let Request {
        plan: mut args,
        targets,
        ..
    } = cli;
    args.target = targets.into_iter().next().unwrap_or_default();
    let bus = args.boot_bus;
    let cinder = args.target.starts_with("cinder:");
    if args.boot && cinder && args.flavor.is_none() {
        return Err(usage(
            "--boot of a cinder: target creates a Nova server: give its --flavor NAME",
        ));
    }
    refuse_clobbering(&args, std::slice::from_ref(&args.target))?;
    if let (true, true, Some(f)) = (args.boot, cinder, &args.flavor) {
        crate::cloud_target::check_flavor(f)?;
    }
    if let Some(p) = &args.report {
        crate::report::check_writable(p, "--report", "ingest")?;
    }
    let started = std::time::Instant::now();
    let mut r = match ingest(&args) {
        Ok(r) => r,
        Err(e) => {
            // Explained before the report is written: the ticket got the bare "this key does
            // not open capture NAME" with a generic hint.
            let e = crate::verify::explain_wrong_key(
                e,
                &args.medium,
                args.identity.as_deref(),
                args.passphrase_file.as_deref(),
            );
            if let Some(p) = &args.report {
                report_stop(p, &args, &args.target, false, started, &e);
            }
            return Err(e);
        }
    };
    if let Some((path, format)) = r.to_adapt.take() {
        match adapt_volume(&path, format) {
            Ok(a) => r.adapt = Some(a),
            Err(e) => {
                // Written and verified: the ticket and --json keep that beside the failed
                // step (they said "STOPPED, nothing verified").
                let code = crate::exit::code_of(&e);
                // A guest that cannot be adapted at all: "run the same command again" failed
                // the same way.
                let unsupported = matches!(
                    e.find::<mgear_boot::BootError>(),
                    Some(mgear_boot::BootError::Unsupported(_))
                );
                let hint = match unsupported {
                    true => {
                        "the volume is written and verified as ingested, not adapted: this \
                         guest cannot be adapted (the message says why and what to do instead); \
                         boot it as it is, or follow the message"
                    }
                    false => {
                        "the volume is written and verified as ingested, not adapted: fix what \
                         the message names and run the same command again (the kept volume is \
                         adapted then), or boot it as it is"
                    }
                };
                if let Some(p) = &args.report {
                    let mut v = crate::report::ingest(&r, &args.medium.describe())?;
                    v["result"]["error"] =
                        crate::output::error_value(code, &format!("{e:#}"), hint);
                    crate::report::write(p, &v)?;
                }
                if args.json {
                    crate::output::emit_verdict_hint(code, &format!("{e:#}"), hint, &r)?;
                } else {
                    eprintln!("mgear: error: {e:#}");
                    eprintln!("mgear: what to do: {hint}");
                }
                return Ok(code);
            }
        }
    }
    let booted = if args.boot && cinder {
        boot_cinder(&args, &mut r)
    } else if args.boot {
        boot_volume(&args, bus, &mut r)
    } else {
        Ok(OK)
    };
    let code = match booted {
        Ok(c) => c,
        Err(e) => {
            // Stopped (Ctrl-C) or failed to start the boot: the volume is written and
            // verified, and the ticket gets the report of the stop (it got none).
            if let Some(p) = &args.report {
                report_stop(p, &args, &args.target, false, started, &e);
            }
            return Err(e);
        }
    };
    if let Some(p) = &args.report {
        crate::report::write(p, &crate::report::ingest(&r, &args.medium.describe())?)?;
    }
    if args.json {
        // `ok` is false when --boot did not prove the boot (exit 1).
        // The data checked out: the class's hint ("the data did not check out: do not use
        // it") was said of a volume that is whole.
        crate::output::emit_verdict_hint(
            code,
            "the volume was ingested and verified, but its boot did not prove itself (--boot): \
             see `boot_report`",
            "the volume is written and verified; the boot report (`boot_report`, with the \
             console's last lines) says why the guest did not come up: boot it by hand with \
             `mgear boot --target TARGET --wait-for REGEX` (--firmware or --bus if it needs \
             them), or adapt it (--adapt)",
            &r,
        )?;
    } else {
        // An EBS snapshot is not read back (the direct APIs read only completed snapshots, and
        // completing is final): say what vouches for it instead.
        let how = if r.target.starts_with("ebs-snapshot:") {
            "every block's SHA-256, as EBS computed it on receipt, matches what was authenticated \
             (the snapshot is not read back)"
        } else {
            "verified bit-for-bit against what was authenticated"
        };
        if r.kept {
            // Not an ingest of nothing: "written 0 B, 0 chunks, 0.0 MB/s" under "ingested".
            println!(
                "kept {} generation {} in {}: an earlier run wrote and verified it; nothing was \
                 written",
                r.name, r.generation, r.target
            );
        } else {
            println!(
                "ingested {} generation {} into {}: {how}",
                r.name, r.generation, r.target
            );
        }
        progress::line("disk size", r.disk_size);
        if !r.kept {
            progress::line("written", r.bytes_written);
            if r.resumed_chunks > 0 {
                // The zero count is of the chunks this run went through.
                println!(
                    "  {:<14} {}: {} done before the resume, {} this run ({} of them \
                     zero, no data sent)",
                    "chunks",
                    crate::units::count(r.chunks, "chunk"),
                    r.resumed_chunks,
                    r.chunks.saturating_sub(r.resumed_chunks),
                    r.zero_chunks,
                );
            } else {
                println!(
                    "  {:<14} {}, {} of them zero (sent as holes or write-zeroes, no data)",
                    "chunks",
                    crate::units::count(r.chunks, "chunk"),
                    r.zero_chunks
                );
            }
            println!(
                "  {:<14} {:>10.1} MB/s ({:.1} s)",
                "speed", r.mb_per_s, r.seconds
            );
        }
        if let Some(v) = &r.volume {
            println!("  {:<14} {v}", "volume");
        }
        if let Some(d) = &r.volume_sha256 {
            println!("  {:<14} {d}", "volume sha256");
        }
        if let Some(s) = &r.server {
            match r.booted {
                Some(false) => println!(
                    "  {:<14} {s} (Nova, did not boot; left for a look at its console: \
                     `openstack server delete {s}` removes it, the volume stays)",
                    "server"
                ),
                _ => println!("  {:<14} {s} (Nova, left running)", "server"),
            }
        }
        if let Some(a) = &r.adapt {
            // The names --json uses ("root-fs", ...).
            let presence = |p: Option<mgear_boot::inspect::DriverPresence>| {
                p.and_then(|p| serde_json::to_value(p).ok())
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_else(|| "not checked".into())
            };
            println!(
                "  {:<14} {} ({:.0} s): virtio {} -> {}",
                "adapted",
                a.tool,
                a.seconds,
                presence(a.virtio_before),
                presence(a.virtio_after)
            );
        }
        print_boot_line(r.booted, r.boot_report.as_deref());
    }
    Ok(code)
}

/// `--boot` of a `cinder:` target: a Nova server from the volume, proven from its console;
/// 0 booted, 1 not. The report goes into the state dir.
pub(crate) fn boot_cinder(args: &Plan, r: &mut Report) -> crate::Result<i32> {
    boot_cinder_with(args, r, Vec::new())
}

/// [`boot_cinder`] of a machine whose other disks are the Cinder volumes
/// `data_volumes` (attached after the boot volume, in order).
pub(crate) fn boot_cinder_with(
    args: &Plan,
    r: &mut Report,
    data_volumes: Vec<String>,
) -> crate::Result<i32> {
    let volume_id = r
        .volume
        .clone()
        .ok_or_else(|| crate::err!("the cinder: target reported no volume id"))?;
    let name = args.target.trim_start_matches("cinder:").to_string();
    let booted = crate::cloud_target::boot(&crate::cloud_target::BootArgs {
        name: name.clone(),
        volume_id,
        data_volumes,
        flavor: args.flavor.clone().unwrap_or_default(),
        wait_for: args.wait_for.clone(),
        timeout: args.timeout,
    })?;
    let report = booted.report;
    let report_path = state_dir(args.state_dir.clone())?
        .join(format!("cinder_{}.boot-report.json", booted.server_id));
    let saved = report.write_json(&report_path);
    r.server = Some(booted.server_id.clone());
    r.booted = Some(report.booted());
    r.boot_report = Some(report_path.display().to_string());
    saved?;
    if report.booted() {
        Ok(OK)
    } else {
        eprintln!(
            "mgear: server {} from {} did not boot: {}\n{}",
            booted.server_id,
            args.target,
            report.detail,
            report.console_tail(20)
        );
        Ok(FOUND)
    }
}

/// `spec` as one file name: what is not a letter, digit, `.`, `-` or `_` becomes `_`
/// (`rbd:volumes/web01` -> `rbd_volumes_web01`).
fn file_name_of(spec: &str) -> String {
    spec.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_string()
}

/// `--boot`: boot what was just ingested; 0 booted, 1 not.
fn boot_volume(args: &Plan, bus: mgear_boot::Bus, r: &mut Report) -> crate::Result<i32> {
    let resolved = boot_cmd::resolve(&args.target)?;
    // Beside a file volume; a device, export or pool volume has no "beside": its report goes to
    // the state dir under the target's name (never into the current directory, where the
    // next ingest's report would replace it).
    let report_path = match &resolved {
        Resolved::Libvirt(v) => state_dir(args.state_dir.clone())?
            .join(format!("libvirt_{}_{}.boot-report.json", v.pool, v.name)),
        Resolved::Local(mgear_boot::Target::File(_) | mgear_boot::Target::Qcow2(_)) => {
            resolved.default_report_path()
        }
        Resolved::Local(_) => state_dir(args.state_dir.clone())?
            .join(format!("{}.boot-report.json", file_name_of(&args.target))),
    };
    let mut opts = BootOptions::new(
        args.wait_for.clone(),
        std::time::Duration::from_secs(args.timeout),
        true,
    );
    opts.bus = bus;
    let report = boot_cmd::boot_resolved(&resolved, &opts)?;
    let saved = report.write_json(&report_path);
    r.booted = Some(report.booted());
    r.boot_report = Some(report_path.display().to_string());
    saved?;
    if report.outcome == mgear_boot::Outcome::QemuFailed {
        return Err(coded(
            IO,
            format!("booting {}: {}", args.target, report.detail),
        ));
    }
    if report.booted() {
        Ok(OK)
    } else {
        eprintln!(
            "mgear: {} did not boot: {}\n{}",
            args.target,
            report.detail,
            report.console_tail(20)
        );
        Ok(FOUND)
    }
}

/// Write `--report` `path` for an ingest that stopped with `err`: a refusal is what the
/// ticket most needs a record of. A report that cannot be written is a warning beside the
/// error, which stays the command's outcome.
pub fn report_stop(
    path: &Path,
    args: &Plan,
    target: &str,
    set: bool,
    started: std::time::Instant,
    err: &crate::Error,
) {
    if !set && still_holds_reported(path, args, target) {
        eprintln!(
            "mgear: note: {} is the report of the ingest that wrote {target}, which still holds \
             what it says: kept (this refused run's report is not written over it)",
            path.display()
        );
        return;
    }
    let mut v = crate::report::ingest_failed(
        &args.name,
        &args.medium.describe(),
        target,
        started.elapsed().as_secs_f64(),
        err,
    );
    // A snapshot this run completed before it stopped (the image failed to register): the
    // ticket needs its id, which only the error's text named.
    if let (Ok(Target::EbsSnapshot { name, .. }), Some(root), Ok(sdir)) = (
        Target::parse(target, Bare::Refuse),
        v["digests"]["manifest_root"].as_str(),
        state_dir(args.state_dir.clone()),
    ) {
        let recorded = mgear_volume::ebs::recorded_snapshots(&sdir, &name);
        if let Some(ids) = bytes_from_hex(root).and_then(|r| snapshot_of(&recorded, &r)) {
            let mut ids = ids.split(' ');
            v["result"]["snapshot_id"] = serde_json::json!(ids.next());
            v["result"]["image_id"] = serde_json::json!(ids.next());
        }
    }
    // A machine set's stop: the digests noted are of the disk it was writing, not the set's
    // (a ticket showed one disk's manifest root as the machine's). Kept under that disk.
    if set {
        let disk = v["digests"].take();
        v["digests"] = serde_json::json!({
            "capture_id": disk.get("capture_id").cloned().unwrap_or_default(),
            "manifest_root": null,
            "disk_digest": null,
            "disk_being_written": disk,
        });
    }
    if let Err(w) = crate::report::write_json_and_text(path, &v, &crate::report::summary(&v)) {
        eprintln!("mgear: warning: the report of this stop was not written: {w:#}");
    }
}

/// Refuse (exit 2), before a snapshot is made, an image registered from a disk that cannot
/// start as the image is described: nothing boots from it (a set's data disk registered
/// one), or it boots the other way (AWS starts an image with the firmware its boot mode
/// names, legacy-bios unless given, and arm64 instances with UEFI only: BIOS boot code is
/// x86's).
fn refuse_an_image_that_cannot_start<S: image_format::Store>(
    reader: &mut CaptureReader<S>,
    opts: &mgear_volume::ebs::EbsOptions,
) -> crate::Result<()> {
    let (bios, uefi) = crate::cloud_target::boot_firmware(reader)?;
    if !(bios || uefi) {
        return Err(usage(format!(
            "--register-image: {} generation {} boots neither BIOS nor UEFI (no boot code in \
             its MBR, no EFI System Partition): an image registered from it \
             would never start. Leave out --register-image to make the snapshot alone \
             (`mgear boot --check-profile aws-nitro` on a copy says what the disk lacks); nothing \
             was written",
            reader.name(),
            reader.generation()
        )));
    }
    // An image of a disk that boots the other way never starts either: AWS starts it
    // with the firmware its boot mode names (legacy-bios unless given), and arm64
    // instances with UEFI only (BIOS boot code is x86's).
    let default_mode = opts.boot_mode.is_none();
    let mode = opts.boot_mode.as_deref().unwrap_or("legacy-bios");
    let mismatch = if opts.architecture.as_deref() == Some("arm64") && !uefi {
        Some(format!(
            "arch=arm64: {} generation {} boots with BIOS only (no EFI System \
             Partition), and arm64 instances start UEFI alone",
            reader.name(),
            reader.generation()
        ))
    } else if mode == "uefi" && !uefi {
        Some(format!(
            "boot-mode=uefi: {} generation {} boots with BIOS only (no EFI System \
             Partition); leave out boot-mode (legacy-bios) or give uefi-preferred",
            reader.name(),
            reader.generation()
        ))
    } else if mode == "legacy-bios" && !bios {
        Some(format!(
            "boot-mode {}: {} generation {} boots with UEFI only (no boot code in its MBR); \
             add boot-mode=uefi to the target's options (ebs-snapshot:NAME?boot-mode=uefi, \
             or after another option with &)",
            if default_mode {
                "legacy-bios (the default)"
            } else {
                "legacy-bios"
            },
            reader.name(),
            reader.generation()
        ))
    } else {
        None
    };
    if let Some(why) = mismatch {
        return Err(usage(format!(
            "--register-image: {why}: an image registered so would never start; nothing \
             was written"
        )));
    }
    Ok(())
}

/// Whether `path` holds the report of a finished ingest into `target` that the target still
/// holds, unchanged since: a `file:` or `qcow2:` target, whose record stamps the file. (A
/// device's record names the disk, not what it holds: one written since kept its "verified"
/// report.)
fn still_holds_reported(path: &Path, args: &Plan, target: &str) -> bool {
    let Some(root) = crate::report::finished_ingest(path, target).and_then(|h| bytes_from_hex(&h))
    else {
        return false;
    };
    let Ok(sdir) = state_dir(args.state_dir.clone()) else {
        return false;
    };
    match Target::parse(target, Bare::Refuse) {
        Ok(Target::File(_) | Target::Qcow2(_)) => ingested_before(&sdir, target, &root),
        _ => false,
    }
}

/// Refuse (exit 2) a `file:` target that holds a qcow2 image, or a `qcow2:` target that
/// holds none, before anything is read or kept: an earlier ingest's volume given as the other
/// kind was "kept ... verified", exit 0, and then failed to boot (or a raw disk shipped as a
/// qcow2). `--force` writes it as the kind given. Told by [`crate::preflight::container_of`],
/// as `boot` tells a container given as a raw disk.
fn refuse_the_other_kind(target: &Target, spec: &str) -> crate::Result<()> {
    use crate::preflight::{container_of, Container};
    let (p, want_qcow2) = match target {
        Target::File(p) => (p, false),
        Target::Qcow2(p) => (p, true),
        _ => return Ok(()),
    };
    // What is not there or cannot be read is left to the ingest, which names it.
    let Ok(mut file) = crate::source::FileSource::open(p.to_path_buf()) else {
        return Ok(());
    };
    if crate::source::Source::len(&file) == 0 {
        return Ok(());
    }
    let is_qcow2 = matches!(container_of(&mut file), Ok(Some(Container::Qcow2)));
    if is_qcow2 == want_qcow2 {
        return Ok(());
    }
    let (holds, other) = match is_qcow2 {
        true => ("a qcow2 image", format!("qcow2:{}", p.display())),
        false => (
            "a raw disk, not a qcow2 image",
            format!("file:{}", p.display()),
        ),
    };
    Err(usage(format!(
        "--target {spec}: {} holds {holds}: give it as {other} (what it is), or pass --force \
         to write this capture over it as {spec} asks; nothing was written",
        p.display()
    )))
}

/// Whether `path` is one of the volumes a `{disk}` target `pattern` names (`{disk}` a disk
/// number), or its `.partial`: checked before the set's disk count is read from the medium.
fn names_a_disk_of(pattern: &Path, path: &Path) -> bool {
    let (pattern, path) = match (
        crate::guard::resolved(pattern),
        crate::guard::resolved(path),
    ) {
        (Some(a), Some(b)) => (a, b),
        _ => (pattern.to_path_buf(), path.to_path_buf()),
    };
    let (pattern, path) = (pattern.to_string_lossy(), path.to_string_lossy());
    let Some((pre, post)) = pattern.split_once("{disk}") else {
        return false;
    };
    let Some(rest) = path.strip_prefix(pre) else {
        return false;
    };
    let rest = rest.strip_suffix(".partial").unwrap_or(rest);
    rest.strip_suffix(post)
        .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
}

/// Refuse (exit 2), before anything is read or written, an ingest whose files would
/// overwrite each other: a `--report` (or its `.txt` summary) that is a target's volume file
/// or its `.partial` (the report replaced the volume just verified, and the run said
/// "verified", exit 0), or a target that is a file the run reads (the identity, the
/// passphrase file, a pinned site key). A `--state-dir` on the medium is refused too: the
/// resume state was written into the shipment (a `dir:` medium's `MGEAR/` then held a
/// "capture" that verify failed on), even by a run refused afterwards.
pub fn refuse_clobbering(args: &Plan, targets: &[String]) -> crate::Result<()> {
    if let Some(dir) = &args.state_dir {
        args.medium.refuse_state_dir_on(dir)?;
    }
    let volumes: Vec<(String, PathBuf)> = targets
        .iter()
        .filter_map(|t| match Target::parse(t, Bare::Refuse) {
            Ok(Target::File(p) | Target::Qcow2(p) | Target::Dev(p)) => Some((t.clone(), p)),
            _ => None,
        })
        .collect();
    let same = |a: &Path, b: &Path| {
        if b.to_string_lossy().contains("{disk}") {
            return names_a_disk_of(b, a);
        }
        if a.to_string_lossy().contains("{disk}") {
            return names_a_disk_of(a, b);
        }
        crate::guard::overlaps(a, b)
            || matches!((crate::guard::resolved(a), crate::guard::resolved(b)), (Some(x), Some(y)) if x == y)
    };
    if let Some(report) = &args.report {
        for r in [report.clone(), crate::report::text_path(report)] {
            for (spec, v) in &volumes {
                let mut partial = v.as_os_str().to_owned();
                partial.push(".partial");
                if same(&r, v) || same(&r, Path::new(&partial)) {
                    return Err(usage(format!(
                        "--report {}: {} is where --target {spec} writes its volume: the report \
                         would replace the disk just verified. Give --report another file name",
                        report.display(),
                        r.display()
                    )));
                }
            }
        }
    }
    let mut inputs: Vec<(&str, &Path)> = Vec::new();
    if let Some(p) = &args.identity {
        inputs.push(("--identity", p));
    }
    if let Some(p) = &args.passphrase_file {
        inputs.push(("--passphrase-file", p));
    }
    for p in &args.trust.trust {
        inputs.push(("--trust", p));
    }
    // A directory given as an input file is refused as unreadable when it is read: a volume
    // inside it was "the --identity file ." here.
    inputs.retain(|(_, p)| !p.is_dir());
    for (spec, v) in &volumes {
        for (flag, input) in &inputs {
            if same(v, input) {
                return Err(usage(format!(
                    "--target {spec} is the {flag} file {}: ingest would overwrite it with the \
                     disk. Give the volume another path",
                    input.display()
                )));
            }
        }
    }
    Ok(())
}

/// Do the ingest.
/// Refuse (exit 2), before anything is read or written, a local target that
/// cannot be a volume: the medium itself (`--force` would replace the
/// shipment with one of its disks), a directory (found only at the final
/// rename, after the whole ingest), a device node as a `file:`/`qcow2:`
/// target (`--force` would replace the node with a regular file and the disk
/// would get nothing), or a `dev:` that is mounted or held (the kernel would
/// write its own metadata over the verified volume).
/// Longest file name most Linux file systems take (`NAME_MAX`).
const NAME_MAX: usize = 255;
/// What ingest adds to a file target's name until the volume is verified: `.partial`.
const PARTIAL_ROOM: usize = ".partial".len();

pub fn refuse_bad_target(medium: &crate::medium::Where, spec: &str) -> crate::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(target) = Target::parse(spec, Bare::Refuse) else {
        return Ok(());
    };
    if let Target::Nbd(u) = &target {
        medium.refuse_same_volume(
            &format!("--target {spec}"),
            &crate::medium::TargetRef::Nbd(u.to_string()),
        )?;
        return medium.refuse_served_for_writing(&format!("--target {spec}"));
    }
    let (Target::File(p) | Target::Qcow2(p) | Target::Dev(p)) = &target else {
        return Ok(());
    };
    medium.refuse_target_on(&format!("--target {spec}"), p)?;
    medium.refuse_same_volume(
        &format!("--target {spec}"),
        &crate::medium::TargetRef::Path(p.clone()),
    )?;
    // Ingest writes `X.partial` first: a name with no room for
    // the suffix failed after the trust checks with "File name too long" and the generic
    // hint to run the same command again.
    if matches!(target, Target::File(_) | Target::Qcow2(_)) {
        let longest = p.file_name().map_or(0, |n| n.len()) + PARTIAL_ROOM;
        if longest > NAME_MAX {
            return Err(usage(format!(
                "--target {spec}: the file name is {} bytes long; ingest writes the volume as \
                 NAME.partial until it is verified, and file names are at most {NAME_MAX} \
                 bytes: give a name of at most {} bytes",
                p.file_name().map_or(0, |n| n.len()),
                NAME_MAX - PARTIAL_ROOM
            )));
        }
    }
    // `X.partial` is where an ingest into `X` writes until it is verified: given as a target
    // (with --force, as "X.partial exists" suggested), it went into another ingest's volume
    // under that one's lock, and that ingest then reported the other capture as verified.
    if matches!(target, Target::File(_) | Target::Qcow2(_))
        && p.extension().is_some_and(|e| e == "partial")
    {
        return Err(usage(format!(
            "--target {spec}: names ending in .partial are what ingest writes a volume under \
             until it is verified (and another ingest may be writing this one): give the \
             volume's own name, without .partial (a re-run of the same command resumes it)"
        )));
    }
    // A file volume is written as `X.partial` and renamed to `X`: through a symlink that
    // rename replaced the link with the volume, on the link's file system, and left the file
    // it named as it was (`--force`).
    if matches!(target, Target::File(_) | Target::Qcow2(_))
        && std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
    {
        let to = std::fs::read_link(p).unwrap_or_default();
        let resolved = std::fs::canonicalize(p).ok();
        return Err(usage(format!(
            "--target {spec}: {} is a symbolic link (to {}{}): ingest writes a volume as \
             NAME.partial and renames it to NAME once it is verified, which would replace the \
             link, not write what it names (and a link you did not make there is someone \
             else's doing). Give the volume's own path{}, or remove the link (`rm {}`) and run \
             this command again; nothing was written",
            p.display(),
            to.display(),
            match resolved {
                Some(_) => "",
                None => ", which does not exist",
            },
            match resolved {
                Some(r) => format!(
                    " if that is where the volume goes (--target {}:{})",
                    spec.split_once(':').map_or("file", |(k, _)| k),
                    r.display()
                ),
                None => String::new(),
            },
            p.display()
        )));
    }
    let kind = std::fs::metadata(p).ok().map(|m| m.file_type());
    if kind.is_none() && matches!(target, Target::File(_) | Target::Qcow2(_)) {
        // Said by its name: the creation's own error named `X.partial`.
        crate::output::refuse_missing_parent(&format!("--target {spec}"), p, "")?;
    }
    if let Some(t) = kind {
        if t.is_dir() && matches!(target, Target::Dev(_)) {
            // A file made in it could only be refused as "not a block device".
            return Err(usage(format!(
                "--target {spec}: {} is a directory, and dev: takes a block device (e.g. \
                 dev:/dev/sdb): give the device, or file:PATH for a volume file",
                p.display()
            )));
        }
        if t.is_dir() {
            return Err(usage(format!(
                "--target {spec}: {} is a directory; give the path of the volume file to \
                 create in it (e.g. {})",
                p.display(),
                // `join`: `out/` gave `out//disk.raw`.
                p.join(if matches!(target, Target::Qcow2(_)) {
                    "disk.qcow2"
                } else {
                    "disk.raw"
                })
                .display()
            )));
        }
        let node = if t.is_block_device() {
            Some("a block device")
        } else if t.is_char_device() {
            Some("a character device")
        } else if t.is_fifo() || t.is_socket() {
            Some("a FIFO or socket")
        } else {
            None
        };
        match (node, &target) {
            (Some(what), Target::File(_) | Target::Qcow2(_)) => {
                // Only a block device is a disk dev: can write; /dev/null and the like are none.
                let next = if t.is_block_device() {
                    format!("For a disk give dev:{}", p.display())
                } else {
                    "Give a volume: a file path, or dev: with a block device".to_string()
                };
                return Err(usage(format!(
                    "--target {spec}: {} is {what}, not a file: a file or qcow2 target would \
                     replace the node with a regular file (even with --force). {next}",
                    p.display(),
                )));
            }
            (Some(_), Target::Dev(_)) if t.is_block_device() => refuse_busy_device(spec, p)?,
            _ => {}
        }
        if matches!(target, Target::File(_) | Target::Dev(_)) {
            crate::lock::refuse_served_volume(p, spec)?;
        }
    }
    Ok(())
}

/// A block device that is mounted (or held by LVM, RAID, a swap area, a
/// running VM or another ingest: `DeviceVolume` holds it open exclusively
/// while it writes) cannot be opened exclusively: refuse it (exit 2), even with
/// `--force`, rather than write a volume the kernel then writes over.
fn refuse_busy_device(spec: &str, p: &Path) -> crate::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
    // A loop device over a device (`losetup /dev/loop1 /dev/loop0`) writes that device: it is
    // checked too, down the chain (a loop over a mounted loop device was taken, and the
    // ingest wrote under the mounted file system).
    let mut at = p.to_path_buf();
    for _ in 0..8 {
        if let Err(e) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_EXCL)
            .open(&at)
        {
            if e.raw_os_error() == Some(nix::libc::EBUSY) {
                // Another ingest writing it is busy, as a file or NBD target another ingest
                // writes is (exit 3 with its pid; a device said exit 2, "mounted, or ...").
                let by_ingest = crate::guard::writer_of(&at).filter(|(_, cmd)| {
                    let mut w = cmd.split_whitespace();
                    w.next().is_some_and(|b| b.ends_with("mgear")) && w.next() == Some("ingest")
                });
                if let Some((pid, cmd)) = by_ingest {
                    return Err(crate::exit::coded_hint(
                        crate::exit::IO,
                        format!("target {spec} is in use by pid {pid} ({cmd})"),
                        "one ingest writes a volume at a time. Wait for it to finish (or stop it: \
                         it resumes later), then run this again",
                    ));
                }
                let via = if at == p {
                    String::new()
                } else {
                    format!(", which the loop device {} writes,", p.display())
                };
                return Err(usage(format!(
                    "--target {spec}: {}{via} is in use (mounted, or held by LVM, RAID, swap, a \
                     running VM or another ingest writing it): the kernel or that program would \
                     write over the volume. Unmount it or stop what holds it (`lsblk {}`, \
                     `findmnt {}`), then run this again",
                    at.display(),
                    at.display(),
                    at.display()
                )));
            }
        }
        let next = std::fs::metadata(&at)
            .ok()
            .filter(|m| m.file_type().is_block_device())
            .and_then(|m| crate::guard::loop_backing_once(m.rdev()))
            .filter(|b| std::fs::metadata(b).is_ok_and(|m| m.file_type().is_block_device()));
        match next {
            Some(b) => at = b,
            None => return Ok(()),
        }
    }
    Ok(())
}

/// `args` with its capture named as the medium spells it: names are compared without case,
/// and a set's manifest, a stream's name and the trust checks all use the stored spelling.
pub(crate) fn as_stored<'a>(
    args: &'a Plan,
    store: &mut dyn image_format::Store,
) -> crate::Result<std::borrow::Cow<'a, Plan>> {
    let stored = image_format::stored_name(store, &args.name)?;
    Ok(if stored == args.name {
        std::borrow::Cow::Borrowed(args)
    } else {
        std::borrow::Cow::Owned(Plan {
            name: stored,
            ..args.clone()
        })
    })
}

pub fn ingest(args: &Plan) -> crate::Result<Report> {
    let started = Instant::now();
    let mut target = Target::parse(&args.target, Bare::Refuse)?;
    refuse_bad_target(&args.medium, &args.target)?;
    match &mut target {
        Target::EbsSnapshot { opts, .. } => opts
            .with_register_flag(args.register_image)
            .map_err(|e| usage(format!("{}: {e}", args.target)))?,
        other if args.register_image => {
            return Err(usage(format!(
                "--register-image needs an ebs-snapshot:NAME target, not {other}"
            )))
        }
        _ => {}
    }
    if args.boot && matches!(target, Target::EbsSnapshot { .. }) {
        return Err(usage(
            "--boot cannot boot an EBS snapshot here: launch an instance from the AMI \
             (--register-image) to prove it boots",
        ));
    }
    let unlock =
        crate::verify::unlock_from(args.identity.as_deref(), args.passphrase_file.as_deref())?
            .ok_or_else(|| {
                usage("ingest needs the key: --identity TARGET.key or --passphrase-file FILE")
            })?;
    if args.adapt {
        if !target.is_local() {
            return Err(usage(format!(
                "--adapt needs a local volume to run {} on, and {target} is not one: \
                 ingest into file:/qcow2:/dev:/libvirt:, adapt, then copy",
                mgear_boot::adapt::TOOL
            )));
        }
        // Say what to install before spending time on the ingest.
        mgear_boot::adapt::find_adapter()?;
    }
    let mut policy = args.trust.policy(args.allow_unsealed)?;
    policy.opens_with = match &unlock {
        image_format::Unlock::Identity(_) | image_format::Unlock::Identities(_) => {
            Some(image_format::commit::SlotFile::Keys)
        }
        image_format::Unlock::Passphrase(_) => Some(image_format::commit::SlotFile::Keypass),
        image_format::Unlock::Key(_) => None,
    };
    let sdir = state_dir(args.state_dir.clone())?;
    let _one_ingest = crate::lock::lock_ingest_target(
        &sdir,
        &crate::spec::volume_key(&args.target),
        &args.target,
    )?;
    let mut medium = args.medium.open_read_only()?;
    let args = &*as_stored(args, medium.store())?;
    if image_format::set::is_set(medium.store(), &args.name).unwrap_or(false) {
        let _ = medium.close();
        return Err(crate::exit::coded_hint(
            crate::exit::USAGE,
            format!(
                "{} is a machine set of several disks: say where each disk goes with a --target \
                 holding {{disk}} (file:{}-{{disk}}.raw), one --target per disk in order, or \
                 --disk N and one --target",
                args.name, args.name
            ),
            "`mgear inspect --medium ...` lists the set's disks",
        ));
    }
    let verdict = crate::appliance::ingest_gate(
        crate::appliance::gate_port(&args.medium.appliance, &policy),
        args.trust.attestations.as_deref(),
        medium.store(),
        &args.name,
        args.generation,
        &policy,
    )
    .map_err(|e| match crate::exit::classified(&e) {
        // A usage error (`--generation 5` that does not exist) is no
        // refusal of the data: as raised, with its hint.
        Some(USAGE | IO) => e,
        // Its code and hint kept.
        Some(_) => e.context("ingest refused"),
        None => coded(FOUND, format!("ingest refused: {e:#}")),
    });
    let verdict = match verdict {
        Ok(v) => v,
        // A name that is not on the medium is a usage error, not a refusal.
        Err(e) => {
            return Err(crate::verify::unless_no_such_capture(
                e,
                &args.name,
                &args.medium.describe(),
                medium.store(),
            ))
        }
    };
    crate::report::note_trust(&verdict.trusted_by, &verdict.warnings);
    // A set's disk: the set's commit (the receipt's) was printed for the set.
    if args.expect_root.is_none() {
        crate::trust::say_trusted(
            &format!("generation {}", verdict.generation),
            &verdict,
            args.trust.expect_commit.is_some(),
        );
    }
    let gaps = crate::medium::Gaps::of(&medium, &args.medium.describe());
    let relabelled = medium.span().map(|v| v.relabelled()).unwrap_or_default();
    // The generation the gate accepted, and no other.
    let mut reader = CaptureReader::open(
        medium.store(),
        &args.name,
        Some(verdict.generation),
        &unlock,
    )?;
    crate::trust::same_as_checked(
        &verdict,
        reader.name(),
        reader.generation(),
        reader.manifest_root(),
    )?;
    if let Some(want) = args.expect_root.filter(|r| r != reader.manifest_root()) {
        return Err(coded(
            FOUND,
            format!(
                "ingest refused: {} generation {} has manifest root {}, but its set manifest \
                 binds {}: the medium changed under the ingest, or is damaged; do not use it",
                reader.name(),
                reader.generation(),
                crate::output::hex(reader.manifest_root()),
                crate::output::hex(&want)
            ),
        ));
    }
    // Before anything is written; a resumed ingest of this generation is checked against
    // what it has written when its state is open ([`write_volume`]).
    if let Some(g) = gaps
        .as_ref()
        .filter(|_| unfinished_root(&sdir, &args.target) != Some(*reader.manifest_root()))
    {
        g.refuse_lost(&reader, |_| true)?;
    }
    let mut bootable = true;
    if matches!(target, Target::Cinder(_)) {
        if gaps.is_none() {
            bootable = crate::cloud_target::check_openstack_ready(&mut reader)?;
        } else {
            // It reads the disk's partitions and boot files, which may be on
            // a medium still to come.
            eprintln!(
                "mgear: openstack readiness is not checked: part of the capture is on media not \
                 given (ingest with every medium to have it checked)"
            );
        }
    }
    // An image registered from a disk nothing boots from never starts: refused before the
    // snapshot is made, as a set's data disk is (it registered one).
    if let (Target::EbsSnapshot { opts, .. }, None) = (&target, &gaps) {
        if opts.register_image {
            refuse_an_image_that_cannot_start(&mut reader, opts)?;
        }
    }
    crate::report::note_manifest(reader.manifest());
    let prep = Prepare {
        disk_size: reader.disk_size(),
        head_len: u64::from(image_format::layout::chunk_len(
            reader.disk_size(),
            reader.chunk_size(),
            0,
        )),
        state_dir: sdir.clone(),
        force: args.force,
        // The manifest root tells this generation from another capture of the same name and
        // generation number (a re-capture after `medium rm`): a finished EBS ingest is kept by it.
        what: format!(
            "mgear ingest of capture {} generation {} {}",
            reader.name(),
            reader.generation(),
            root_tag(reader.manifest_root())
        ),
    };
    let facts = crate::cloud_target::CaptureFacts {
        bootable,
        ..crate::cloud_target::CaptureFacts::of(reader.manifest())
    };
    // A volume an earlier ingest finished is kept, not written again (--force writes it): a
    // Cinder volume marked complete (the machine may have run from it since), or a file an
    // earlier run of this command finished and nobody changed since (a run killed right after
    // it finished was re-run and refused as "exists: pass --force", which writes it again).
    let mut kept_sha = (args.volume_sha256
        && matches!(
            target,
            Target::Cinder(_) | Target::Rbd(_) | Target::Dev(_) | Target::Nbd(_)
        ))
    .then(<sha2::Sha256 as sha2::Digest>::new);
    if !args.force {
        refuse_the_other_kind(&target, &args.target)?;
    }
    let kept = match (&target, args.force) {
        (_, true) => None,
        (Target::Cinder(name), false) => {
            match crate::cloud_target::finished_volume(name, &facts)? {
                Some(kept) => {
                    let named = if kept.name == *name {
                        String::new()
                    } else {
                        format!(" (named {:?}, not {name:?})", kept.name)
                    };
                    // Its metadata say so, which anyone who can write the project's volume
                    // metadata can say of any volume.
                    let said = keep_if_unchanged(
                        &kept.rbd,
                        &reader,
                        &format!("Cinder volume {}{named}", kept.id),
                        "marked complete by an earlier ingest (mgear.state=complete)",
                        kept_sha.as_mut(),
                    )?;
                    Some((said, Some(kept.id)))
                }
                None => None,
            }
        }
        (Target::Rbd(spec), false)
            if std::fs::read_to_string(rbd_done_path(&sdir, spec)).ok()
                == Some(done_text(reader.manifest_root(), "rbd\n"))
                && !rbd_image_gone(&sdir, spec) =>
        {
            let said = keep_if_unchanged(
                spec,
                &reader,
                &format!("RBD image {}", spec.image_spec()),
                "finished by an earlier ingest on this host",
                kept_sha.as_mut(),
            )?;
            // Named as the run that wrote it named it (it was `null` when kept).
            Some((said, Some(spec.to_string())))
        }
        // Not while an ingest into it is unfinished (a `--force` re-run killed part-way):
        // that one is resumed, not read back against the earlier one's record (it was
        // refused, exit 1, as "does not hold it any more").
        (Target::Dev(p), false)
            if device_done(&sdir, p, reader.manifest_root())
                && !mgear_volume::DeviceVolume::marked_unfinished(p, &sdir) =>
        {
            Some((
                keep_device_if_unchanged(&target, &reader, kept_sha.as_mut())?,
                None,
            ))
        }
        // A device this host finished another ingest into (another disk of the machine, the
        // operator's wrong pick): a raw data disk has no signature the guard sees, and it
        // was written over without a word.
        (Target::Dev(p), false) if !mgear_volume::DeviceVolume::marked_unfinished(p, &sdir) => {
            // A loop device over a file this host finished a `file:` ingest into: the file's
            // record names it by its inode, which the device's own record never saw, and the
            // verified volume was written over without a word.
            let over_file = || {
                use std::os::unix::fs::{FileTypeExt, MetadataExt};
                let m = std::fs::metadata(p)
                    .ok()
                    .filter(|m| m.file_type().is_block_device())?;
                let file = crate::guard::loop_backing_file(m.rdev())?;
                ingested_from(&sdir, &file).filter(|r| r != reader.manifest_root())
            };
            if let Some(other) =
                device_done_other(&sdir, p, reader.manifest_root()).or_else(over_file)
            {
                return Err(holds_another(
                    &args.target,
                    &mut reader,
                    &other,
                    "check that this is the device meant for this disk (`lsblk`, the machine's \
                     target list); if it is, pass --force to write over it",
                ));
            }
            None
        }
        // As for a device: not while a `--force` re-run into it is unfinished (it was refused
        // as "does not hold it any more", and the "run it again" the stop asked for failed).
        (Target::Nbd(u), false)
            if spec_done_path(&sdir, &target).and_then(|p| std::fs::read_to_string(p).ok())
                == Some(done_text(reader.manifest_root(), "device\n"))
                && !mgear_volume::NbdVolume::marked_unfinished(u, &sdir) =>
        {
            Some((
                keep_device_if_unchanged(&target, &reader, kept_sha.as_mut())?,
                None,
            ))
        }
        // An export this host finished another ingest into (a typo in the export's name): a
        // raw data disk has no signature the guard sees, and it was written over without a
        // word, where a device or a file in its place was refused.
        (Target::Nbd(u), false) if !mgear_volume::NbdVolume::marked_unfinished(u, &sdir) => {
            let other = spec_done_path(&sdir, &target)
                .and_then(|p| std::fs::read_to_string(p).ok())
                .and_then(|t| device_record(&t).map(|(root, _)| root))
                .filter(|root| root != reader.manifest_root());
            if let Some(other) = other {
                return Err(holds_another(
                    &args.target,
                    &mut reader,
                    &other,
                    "check that this is the export meant for this disk (its name, the machine's \
                     target list); if it is, pass --force to write over it",
                ));
            }
            None
        }
        (Target::EbsSnapshot { name, opts }, false) => {
            mgear_volume::EbsSnapshotVolume::completed_before(name, opts, &prep)?.map(|volume| {
                (
                    format!(
                        "ebs-snapshot:{name} already holds {} generation {}: {volume}, completed \
                         by an earlier run of this ingest (AWS keeps a completed snapshot as it \
                         was completed): kept, not made again (--force makes another snapshot)",
                        reader.name(),
                        reader.generation()
                    ),
                    Some(volume),
                )
            })
        }
        _ => ingested_before(&sdir, &args.target, reader.manifest_root()).then(|| {
            (
                format!(
                    "{} already holds {} generation {}, ingested and verified by an earlier run \
                     and not changed since: kept, not written again (--force writes it again)",
                    args.target,
                    reader.name(),
                    reader.generation()
                ),
                None,
            )
        }),
    };
    if let Some((said, volume)) = kept {
        eprintln!("mgear: {said}");
        if let Target::File(p) | Target::Qcow2(p) = &target {
            if let Some(left) = leftover_partial(&sdir, p) {
                eprintln!("mgear: note: {left}");
            }
        }
        let mut report = kept_report(
            reader.name(),
            reader.generation(),
            &args.target,
            reader.disk_size(),
        );
        report.set_volume(volume);
        report.warnings = verdict.warnings.clone();
        // A kept volume is adapted too: a re-run after a failed adaptation said "kept", exit
        // 0, and adapted nothing.
        if args.adapt {
            report.to_adapt = match &target {
                Target::File(p) | Target::Dev(p) => Some((p.clone(), "raw")),
                Target::Qcow2(p) => Some((p.clone(), "qcow2")),
                _ => {
                    return Err(usage(
                        "--adapt needs a local volume: this target has no host path",
                    ))
                }
            };
        }
        let disk_size = reader.disk_size();
        medium.close()?;
        if args.volume_sha256 {
            report.volume_sha256 = match kept_sha {
                // An RBD image or Cinder volume: hashed as it was read back just now (it was
                // `null`, the flag given).
                Some(sha) => Some(crate::output::hex(&sha2::Digest::finalize(sha))),
                None => target_sha256(&args.target, &sdir, disk_size)?,
            };
        }
        return Ok(report);
    }
    // Printed as they come up (a long write may follow) and carried into the report, after
    // the overrides the trust gate took (`--allow-untrusted`: a script reading --json saw
    // nothing of them).
    let mut warnings = verdict.warnings.clone();
    // A medium read as another member than its label says: said before anything is written
    // (a run that wrote what one medium holds, exit 4, returned before it was said), and once
    // per medium however many disks of a set read it.
    for (name, said, holds) in relabelled {
        static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        let mut told = SAID.lock().unwrap_or_else(|e| e.into_inner());
        if told.contains(&name) {
            continue;
        }
        told.push(name.clone());
        warnings.push(warn(format!(
            "{name}'s span label says it is medium #{said}, but it holds the segments the span \
             map places on medium #{holds}, and is read as that (every record is still checked \
             against what was signed); its label was changed since the capture (`mgear verify` \
             names it): ask how the medium was handled"
        )));
    }
    // A device holding a medium, overwritten with --force: said, as `medium format --force`
    // says what it wipes (it went without a word).
    if let (Target::Dev(p), true) = (&target, args.force) {
        let held = crate::medium::captures_held(p);
        if !held.is_empty() {
            warnings.push(warn(format!(
                "{} holds a medium{}: --force writes the disk over it, and its captures are \
                 gone",
                p.display(),
                crate::medium::captures_said(&held)
            )));
        }
    }
    if let Target::File(p) | Target::Qcow2(p) = &target {
        // A MotionGear medium given as the target (another shipment's, a copy): "exists: pass
        // --force" did not say that --force overwrites its captures.
        let held = match args.force || !p.is_file() {
            true => Vec::new(),
            false => crate::medium::captures_held(p),
        };
        if !held.is_empty() {
            return Err(usage(format!(
                "{} is a medium{}: --force would overwrite it, and its captures with \
                 it. Give another target (a medium is never a volume); nothing was written",
                p.display(),
                crate::medium::captures_said(&held)
            )));
        }
        warnings.extend(warn_if_short_of_space(p, &reader));
        // --force over a newer generation of this disk, ingested here: said, not done
        // silently (a medium without that generation, an older copy, gave no word of it).
        let newer = args
            .force
            .then(|| ingested_of(&sdir, p))
            .flatten()
            .filter(|(id, g)| *id == reader.manifest().capture_id && *g > reader.generation());
        if let Some((_, was)) = newer {
            warnings.push(warn(format!(
                "--force: {} held {} generation {was}, ingested on this host: the older \
                 generation {} is written back over it, and what changed since is lost",
                p.display(),
                reader.name(),
                reader.generation()
            )));
        }
        if args.force
            && p.is_file()
            && crate::target::served_before(p, &reader.manifest().capture_id, reader.name())
        {
            warnings.push(warn(format!(
                "--force: {} was kept up to date by `mgear serve` (syncs from the source were \
                 applied to it): {} generation {} is written over it, and what the syncs \
                 brought is lost",
                p.display(),
                reader.name(),
                reader.generation()
            )));
        }
        // A volume an earlier ingest finished with another generation (the delta's parent):
        // "exists: pass --force" alone did not say that --force writes the whole disk again,
        // nor that a volume kept up to date in place is what serve and sync are for.
        // (`ingested_from` is `None` for a file that is not there.)
        if let (Some(root), false) = (ingested_from(&sdir, p), args.force) {
            if root == *reader.manifest_root()
                && crate::target::served_before(p, &reader.manifest().capture_id, reader.name())
            {
                // Kept up to date since by serve and sync: what changed is the machine's newer
                // disk, and "pass --force to write it again" put this generation back over it
                // without a word.
                return Err(crate::exit::coded_hint(
                    USAGE,
                    format!(
                        "{} holds {} generation {}, ingested on this host, and `mgear serve` \
                         kept it up to date since (syncs from the source were applied to it): \
                         it is newer than generation {}, and --force would write that \
                         generation back over it and lose what the syncs brought; nothing was \
                         written",
                        p.display(),
                        reader.name(),
                        reader.generation(),
                        reader.generation()
                    ),
                    "leave the volume as it is (`mgear serve` on it and `mgear sync` at the \
                     source bring it up to date, SYNC.md); to look at this generation, ingest \
                     it into another name; --force only if the synced changes are to be \
                     thrown away",
                ));
            }
            if root == *reader.manifest_root() {
                // This very capture, finished here, and changed since (it was not kept
                // above): "exists: pass --force" after a `chmod` the README suggests read as
                // somebody else's file.
                return Err(usage(format!(
                    "{} holds {} generation {}, ingested and verified on this host, but it \
                     changed since (its status-change time moved: a write, or a chmod or \
                     chown): it is not kept unchecked. Pass --force to write it again and verify \
                     it (`mgear serve` keeps a volume the machine runs from up to date in place \
                     instead, SYNC.md); nothing was written",
                    p.display(),
                    reader.name(),
                    reader.generation(),
                )));
            }
            if root != *reader.manifest_root() {
                // Named when the medium holds it (it said "an earlier generation of NAME, or
                // another disk" and left the user to guess which).
                let found = generation_with_root(reader.store(), &root);
                // A newer generation of this disk: --force puts an older one back over it
                // (it was offered as "pass --force to write generation 3" without a word).
                // Also where this medium no longer holds it (an older copy of the shipment, a
                // first trip's medium): the record names the capture and its generation.
                let newer = match found.as_ref() {
                    Some((n, g)) => (n.eq_ignore_ascii_case(reader.name())
                        && *g > reader.generation())
                    .then_some((*g, "")),
                    None => ingested_of(&sdir, p)
                        .filter(|(id, g)| {
                            *id == reader.manifest().capture_id && *g > reader.generation()
                        })
                        .map(|(_, g)| {
                            (
                                g,
                                " (this medium does not hold that generation: it is an older \
                                 copy of the shipment, or an earlier trip's)",
                            )
                        }),
                };
                if let Some((was, elsewhere)) = newer {
                    return Err(usage(format!(
                        "{} holds {} generation {was}, NEWER than the generation {} asked for, \
                         ingested on this host{elsewhere} (and kept up to date since, if \
                         `mgear serve` runs on it): --force would write the older generation \
                         back over it, and what changed since is lost. Ingest generation {} \
                         into another name to look at it; nothing was written",
                        p.display(),
                        reader.name(),
                        reader.generation(),
                        reader.generation()
                    )));
                }
                let holds = match found.as_ref().map(|(n, g)| format!("{n} generation {g}")) {
                    Some(what) => format!("{what}, ingested on this host"),
                    None => format!(
                        "recorded on this host: a capture this medium does not hold, manifest \
                         root {}",
                        &crate::output::hex(&root)[..32]
                    ),
                };
                // The disk changed size since that ingest: serve and sync cannot resize, so
                // pointing there sent the operator round in a circle (sync had sent them here).
                let same_capture = found
                    .as_ref()
                    .is_some_and(|(n, _)| n.eq_ignore_ascii_case(reader.name()));
                let resized = std::fs::metadata(p)
                    .ok()
                    .filter(|m| {
                        same_capture
                            && matches!(target, Target::File(_))
                            && m.len() != reader.disk_size()
                    })
                    .map(|m| m.len());
                let instead = match resized {
                    Some(was) => format!(
                        "; the disk changed size since ({was} bytes there, {} in generation {}), \
                         which serve and sync cannot follow: --force is the way",
                        reader.disk_size(),
                        reader.generation()
                    ),
                    None => "; where it is this disk's earlier generation and the machine runs \
                             from it, `mgear serve` on it and `mgear sync` at the source keep \
                             it up to date in place instead (SYNC.md)"
                        .to_string(),
                };
                return Err(usage(format!(
                    "{} exists and holds another finished ingest ({holds}): pass --force to \
                     write {name} generation {} over it (the whole disk, verified again)\
                     {instead}; nothing was written",
                    p.display(),
                    reader.generation(),
                    name = reader.name(),
                )));
            }
        }
    }
    // Finished by this capture's ingest under the default state dir, and run again with
    // another `--state-dir`: "exists: pass --force" did not say that the run it was kept by
    // is the one that keeps it.
    if let (Target::File(p) | Target::Qcow2(p), false, Some(_)) =
        (&target, args.force, &args.state_dir)
    {
        // Looked at where it is, never made.
        let default = crate::target::xdg_state_home()
            .map(|s| s.join("mgear/ingest"))
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/mgear/ingest"))
            })
            .filter(|d| {
                d.is_dir() && std::fs::canonicalize(d).ok() != std::fs::canonicalize(&sdir).ok()
            });
        if let Some(default) = default {
            if p.exists() && ingested_from(&default, p).as_ref() == Some(reader.manifest_root()) {
                return Err(usage(format!(
                    "{} holds {} generation {}, finished by an ingest whose state is in {} (not \
                     the --state-dir {} given): run this command without --state-dir to keep it \
                     as it is (it is read back first), or pass --force to write it again; \
                     nothing was written",
                    p.display(),
                    reader.name(),
                    reader.generation(),
                    default.display(),
                    sdir.display()
                )));
            }
        }
    }
    if let (Target::File(p), false) = (&target, args.force) {
        refuse_other_unfinished(&sdir, p, &State::header_of(&reader))?;
    }
    if let (Target::File(p) | Target::Qcow2(p), true) = (&target, args.force) {
        warnings.extend(note_mode_replaced(p));
    }
    // Checked before the target is opened or written: a segment cut or grown on the medium
    // was found at its first record, after the volume had been written up to it.
    reader.check_segment_lengths().map_err(crate::Error::from)?;
    let vol = {
        // Creating or opening a cloud volume waits on its cluster: said when it stalls.
        let _waiting = Progress::waiting(&format!("ingest: opening {}", args.target));
        crate::target::open_for_ingest(&target, &prep, &facts, &args.medium.boot_sectors())?
    };
    let plan = WritePlan {
        // The stored spelling, whatever case --name was given in.
        name: reader.name().to_string(),
        target: args.target.clone(),
        state_dir: sdir,
        checkpoint_bytes: args.checkpoint_bytes.max(1),
        rate: args.rate_limit,
        json: args.json,
        hold: args.hold.clone(),
        volume_sha256: args.volume_sha256,
        // A re-run (a disk of a machine set whose set ingest was interrupted later, or one
        // killed right after it finished) keeps what this run finished.
        record_done: true,
        start_over: args.force,
    };
    let (name, manifest) = (reader.name().to_string(), reader.manifest().clone());
    let disk_size = reader.disk_size();
    let (mut report, finished) = write_volume(&plan, vol, reader, gaps.as_ref(), started)?;
    if let Target::Dev(p) = &target {
        warnings.extend(clear_stale_gpt_backup(p, disk_size));
        warnings.extend(note_larger_device(p, disk_size));
    }
    // Every record checked out, so the disk is right; a damaged trailer is still damage on
    // the medium, which `verify` reports (ingest said nothing of it).
    match image_format::verify::damaged_trailers(medium.store(), &name, &manifest) {
        Ok(found) => {
            for (path, why) in found {
                warnings.push(warn(format!(
                    "{path}: {why}. Every record of it checked out, so the volume holds the \
                     disk; the medium was changed since the capture (`mgear verify` names what \
                     else): keep it out of further use"
                )));
            }
        }
        Err(e) => warnings.push(warn(format!("the segment trailers could not be read: {e}"))),
    }
    medium.close()?;
    warnings.extend(crate::output::side_warnings());
    report.warnings = warnings;
    report.set_volume(finished.volume.clone());
    if args.adapt {
        let path = finished
            .path
            .clone()
            .ok_or_else(|| usage("--adapt needs a local volume: this target has no host path"))?;
        report.to_adapt = Some((path, finished.format));
    }
    Ok(report)
}

/// A device larger than the disk: what it held past the disk's end stays there (no part of
/// the disk, and ingest never writes it), said with how much (it went unsaid, and a 128 MiB
/// device that held random bytes kept 64 MiB of them beside a 64 MiB disk).
fn note_larger_device(device: &Path, disk_size: u64) -> Option<String> {
    use std::io::Seek;
    let end = std::fs::File::open(device)
        .ok()?
        .seek(std::io::SeekFrom::End(0))
        .ok()?;
    (end > disk_size).then(|| {
        warn(format!(
            "{} is {} larger than the disk ({} of {}): the disk is its first {disk_size} bytes, \
             and the {} after them keep what the device held before (a tool that reads the \
             whole device, or grows a partition to its end, sees them)",
            device.display(),
            crate::units::human_bytes(end - disk_size),
            crate::units::human_bytes(disk_size),
            crate::units::human_bytes(end),
            crate::units::human_bytes(end - disk_size),
        ))
    })
}

/// A device larger than the disk written into it keeps what it held past the disk's end: a
/// GPT's backup header in its last sector (the partition table it held before) made
/// `sgdisk -v` and `wipefs` see a valid GPT beside the disk's own MBR, and a repair from that
/// backup would overwrite the disk's partition table. That one sector is cleared (it is no
/// part of the disk) and said; nothing else past the disk is touched.
fn clear_stale_gpt_backup(device: &Path, disk_size: u64) -> Option<String> {
    use std::io::Seek;
    use std::os::unix::fs::FileExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .ok()?;
    // A block device's size is where its end is (its metadata says 0).
    let end = f.seek(std::io::SeekFrom::End(0)).ok()?;
    // The last logical sector: 512 bytes, or 4096 on a 4Kn device, whose GPT backup header
    // begins its last 4096-byte sector (it was looked for in the last 512 bytes only, and
    // stayed, unsaid).
    let (last, len) = [512u64, 4096].into_iter().find_map(|len| {
        let last = end.checked_sub(len)?;
        let mut head = [0u8; 8];
        f.read_exact_at(&mut head, last).ok()?;
        (last >= disk_size && &head == b"EFI PART").then_some((last, len))
    })?;
    f.write_all_at(&vec![0u8; len as usize], last).ok()?;
    f.sync_data().ok()?;
    Some(warn(format!(
        "{} is larger than the disk, and its last sector held a GPT backup header from what the \
         device held before: cleared, so no tool takes it for this disk's partition table (the \
         disk ends at byte {disk_size}; nothing else past it was touched)",
        device.display()
    )))
}

/// `--force` over a regular file others may read: the new one is created 0600, as every file
/// of decrypted data is (README), and the replaced file's mode is not carried over. Said
/// before the write, so nobody finds the volume unreadable to the group that read the old one.
fn note_mode_replaced(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::symlink_metadata(path).ok()?;
    let mode = md.permissions().mode() & 0o777;
    (md.is_file() && mode & 0o077 != 0).then(|| {
        warn(format!(
            "--force replaces {} (mode {mode:04o}) with a new file, mode 0600: it holds \
             decrypted data; `chmod` it once written if others must read it",
            path.display()
        ))
    })
}

/// Prints a warning on stderr and hands it back for the report's `warnings`.
fn warn(text: String) -> String {
    eprintln!("mgear: warning: {text}");
    text
}

/// Warns when the file system that will hold an image target has less room than
/// the disk's data chunks: it filled to 100 % and failed part-way, with no word before.
/// Only a warning: zero chunks are holes, and runs of zeros inside data chunks are too, so
/// the data chunks are an upper bound; an ingest that runs out stops cleanly and resumes.
fn warn_if_short_of_space<S: image_format::Store>(
    path: &Path,
    reader: &CaptureReader<S>,
) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let data: u64 = (0..reader.chunk_count())
        .filter_map(|i| match reader.entry(i) {
            Some(image_format::layout::IndexEntry::Stored(l)) => Some(u64::from(l.plain_len)),
            _ => None,
        })
        .sum();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let free = st.blocks_available() * st.fragment_size();
    // What an unfinished run already wrote is already paid for.
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let written = std::fs::metadata(&partial).map_or(0, |m| m.blocks() * 512);
    let need = data.saturating_sub(written);
    (need > free).then(|| {
        warn(format!(
            "the file system holding {} has {} free, and this disk holds up to {} of data still \
             to write (less where its chunks hold runs of zeros): it may run out of space \
             part-way. The ingest then stops cleanly and the same command resumes once there is \
             room",
            path.display(),
            human_bytes(free),
            human_bytes(need)
        ))
    })
}

/// What [`write_volume`] needs from the command line, typed.
#[derive(Debug, Clone)]
pub struct WritePlan {
    /// Capture name (for the report).
    pub name: String,
    /// The target as the operator wrote it (for the report).
    pub target: String,
    /// Private directory of the resume state.
    pub state_dir: PathBuf,
    /// Make writes durable and record progress after this many bytes.
    pub checkpoint_bytes: u64,
    /// Average write rate to hold, bytes per second.
    pub rate: Option<f64>,
    /// No progress bars (JSON output).
    pub json: bool,
    /// When to finish the volume ([`Finishing`]).
    pub hold: Finishing,
    /// Hash the volume as read back with SHA-256 for the report.
    pub volume_sha256: bool,
    /// Leave a record of the finished volume in the state dir
    /// ([`ingested_before`]): a set ingest re-run keeps the disks it finished.
    pub record_done: bool,
    /// `--force`: a resume state recording another ingest into this target is dropped
    /// and this one starts over.
    pub start_over: bool,
}

/// The pipeline above the [`Volume`] seam: authenticate and decrypt every
/// chunk, write it (zero chunks as `write_zeroes`, chunk 0 last), make it
/// durable and record it in the resume state, then read everything back and
/// compare with what was authenticated. Nothing here knows what kind of
/// volume it writes; local scratch is one batch of chunks in memory.
pub fn write_volume<S: image_format::Store>(
    plan: &WritePlan,
    mut vol: Box<dyn Volume>,
    mut reader: CaptureReader<S>,
    gaps: Option<&crate::medium::Gaps>,
    started: Instant,
) -> crate::Result<(Report, Finished)> {
    let size = reader.disk_size();
    let chunk = reader.chunk_size();
    let count = reader.chunk_count();
    let generation = reader.generation();
    let root = *blake3::hash(&reader.manifest().signed_bytes()).as_bytes();
    let header = State::header_of(&reader);
    let desc = vol.describe();
    // What a stop leaves unfinished: a volume written under a name of its own until it is
    // verified is that file, not the target (which may be a good volume `--force` was
    // replacing, and was read as damaged when named).
    let partial = vol.unfinished_by_name();
    let unfinished = match partial {
        true => format!(
            "{desc}.partial (where the volume is written until it is verified; {desc} itself \
             is not touched)"
        ),
        false => desc.clone(),
    };
    // What the read-back reads: the `.partial` where the volume is written under it (a
    // failed check named the final name, which did not exist).
    let read_desc = match partial {
        true => format!("{desc}.partial"),
        false => desc.clone(),
    };
    let head_len = u64::from(image_format::layout::chunk_len(size, chunk, 0));
    let state_path = plan.state_dir.join(format!("{}.ingest", vol.state_key()));
    let found = vol.found();
    let state_note = state_path.clone();
    let state = match open_state(
        &*vol,
        found,
        size,
        count,
        state_path,
        &header,
        plan.start_over,
    ) {
        Ok(s) => s,
        Err(e) => {
            // Nothing was written: a volume this run created must not stay
            // behind as an unfinished one nothing vouches for.
            if found == Found::New {
                if let Err(d) = vol.discard() {
                    eprintln!("mgear: could not remove the new target again: {d}");
                }
            }
            return Err(e);
        }
    };

    // A medium declared lost that turned up again and was given to an earlier run: what
    // that run wrote from it is here, the rest is refused as before.
    if let Some(g) = gaps {
        if let Err(e) = g.refuse_lost(&reader, |i| !state.is_done(i)) {
            if found == Found::New {
                let _ = vol.discard();
            }
            return Err(e);
        }
    }
    let resumed = state.done_count();
    // Chunks on media not given (a span arriving medium by medium) wait for
    // a later run; chunk 0 is written only once nothing else is missing.
    let far = Bits::from_fn(count, |i| {
        gaps.is_some_and(|g| g.holder(&reader, i).is_some()) && !state.is_done(i)
    });
    let far_missing = far.count();
    // What this run writes, fixed before the state moves to the writer.
    // Chunk 0 waits for every other chunk, unless the volume's name says it
    // is unfinished (`.partial`): then the medium that holds it need not come
    // back for the last run of a span arriving medium by medium.
    let head_now = far_missing == 0 || vol.unfinished_by_name();
    let todo = Bits::from_fn(count, |i| {
        !state.is_done(i) && !far.get(i) && (i != 0 || head_now)
    });
    let mut limiter = plan
        .rate
        .map(|r| crate::ratelimit::RateLimiter::new(r, u64::from(chunk)));
    let bar = Progress::new("ingest", size, plan.json);
    if let Some(r) = plan.rate {
        bar.paced(r, u64::from(chunk));
    }
    let mut written = 0u64;
    let mut zeros = 0u64;
    let id_key = reader.chunk_id_key();
    let mut done_bytes: u64 = (0..count)
        .filter(|&i| state.is_done(i))
        .map(|i| u64::from(image_format::layout::chunk_len(size, chunk, i)))
        .sum();
    bar.start_at(done_bytes);
    // Records are authenticated in batches on every core (see
    // `CaptureReader::read_chunks`), then handed to the volume as one batch
    // (a deep-queue volume writes it concurrently).
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    // Rate-limited ingests go chunk by chunk, so the limiter paces every
    // chunk as it is read (a batch would be one burst).
    let batch_chunks = if limiter.is_some() {
        1
    } else {
        let depth = vol.geometry().max_in_flight.max(threads) as u64;
        ((16u64 << 20) / u64::from(chunk)).max(depth)
    };
    // Where the volume offers a reader of its own (RBD), the read-back check
    // runs beside the writes: batch k is read back (once written) while
    // batch k+1 is written. It hashes the volume in disk order, but chunk 0 is
    // written last: its authenticated plaintext, decrypted now, starts the
    // SHA-256 and is compared with chunk 0 as read back at the end, so the
    // digest is still that of the bytes read back.
    // It needs the disk order: earlier runs that wrote in write order (the
    // usual resume) and every remaining chunk here.
    // Not when everything was written before (chunk 0 included: its medium
    // may not be here now, and the read-back after the writes needs only the
    // volume and the state) nor when this run does not finish the volume.
    let in_order = far_missing == 0
        && state.done_prefix() == state.done_count()
        && state.done_count() < count
        && plan.hold == Finishing::Now;
    let beside = if vol.can_read_back() && in_order {
        vol.concurrent_reader()?
    } else {
        None
    };
    let head_plain = match &beside {
        Some(_) => Some(
            head_plaintext(&mut reader, size, chunk, threads)
                .map_err(|e| left_unfinished(e, &unfinished, partial, &state_note))?,
        ),
        None => None,
    };
    let recheck = ReadBackPlan {
        state_path: state.path.clone(),
        resumed,
        count,
        size,
        chunk: u64::from(chunk),
        per_batch: ((16u64 << 20) / u64::from(chunk)).max(threads as u64),
        sha256: plan.volume_sha256,
        buffers: reader.record_buffers(),
    };
    // Decrypting the next batch overlaps writing this one: the volume and the
    // resume state live on a writer thread fed one batch ahead, so a
    // latency-bound volume (RBD) does not wait on the CPU, nor the CPU on it.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(1);
    let checkpoint_bytes = plan.checkpoint_bytes;
    let id_key_ref = &id_key;
    let fed_to_writer = std::thread::scope(|s| -> crate::Result<_> {
        let (verify, checking) = match (beside, head_plain.as_deref()) {
            (Some(rd), Some(head)) => {
                let direct = rd.sees_completed_writes();
                let (wtx, wrx) = std::sync::mpsc::sync_channel::<Written>(0);
                let (gtx, grx) = std::sync::mpsc::sync_channel::<ReadBatch>(0);
                let recheck = &recheck;
                // Read buffers go back to the reading side once checked: no
                // fresh pages (faults, zeroing) for every run of every batch.
                let (spare_tx, spare) = std::sync::mpsc::channel::<ChunkBuf>();
                let reading =
                    s.spawn(move || read_back_beside(rd, recheck, id_key_ref, wrx, gtx, spare));
                let desc = read_desc.as_str();
                let checking = s.spawn(move || {
                    check_beside(grx, head, recheck, id_key_ref, threads, desc, spare_tx)
                });
                (
                    Some(BesideWrites { to: wtx, direct }),
                    Some((reading, checking)),
                )
            }
            _ => (None, None),
        };
        let writer = s.spawn(move || write_batches(vol, state, rx, checkpoint_bytes, verify));
        let fed = (|| -> crate::Result<()> {
            let tx = tx;
            let send = |b: Batch| {
                tx.send(b)
                    .map_err(|_| crate::err!("the volume writer stopped"))
            };
            let mut order = (0..count)
                .map(|k| chunk_at(k, count))
                .filter(|&i| todo.get(i))
                .peekable();
            while order.peek().is_some() {
                if crate::signals::stop_requested() {
                    // Ctrl-C / SIGTERM: the writer records what is durable when
                    // the channel closes; then say how to go on.
                    return Err(crate::signals::stopped(done_bytes, size));
                }
                let indices: Vec<u64> = order.by_ref().take(batch_chunks as usize).collect();
                if let Some(l) = limiter.as_mut() {
                    // What is read and written: a zero chunk is neither (it counted, and a
                    // mostly empty disk crawled through its holes at the rate).
                    let bytes: u64 = indices
                        .iter()
                        .filter(|&&i| {
                            matches!(
                                reader.entry(i),
                                Some(image_format::layout::IndexEntry::Stored(_))
                            )
                        })
                        .map(|&i| u64::from(image_format::layout::chunk_len(size, chunk, i)))
                        .sum();
                    l.acquire(bytes);
                }
                let datas = reader.read_chunks(&indices, threads)?;
                let mut batch = Batch::default();
                for (index, data) in indices.into_iter().zip(datas) {
                    let len = image_format::layout::chunk_len(size, chunk, index) as usize;
                    let offset = index * u64::from(chunk);
                    if index == 0 {
                        // Chunk 0 (the boot sector) goes last, once all else is durable
                        // (and, with the read-back beside the writes, verified).
                        batch.checkpoint = true;
                        send(std::mem::take(&mut batch))?;
                        batch.checkpoint = true;
                        batch.head = true;
                    }
                    // The id the reader just checked this chunk's plaintext against.
                    let id = *reader
                        .entry(index)
                        .ok_or_else(|| crate::err!("chunk {index} has no index entry"))?
                        .chunk_id();
                    batch
                        .chunks
                        .push((index, len, matches!(data, ChunkData::Zero { .. })));
                    match data {
                        ChunkData::Zero { len } => {
                            zeros += 1;
                            batch.zero(offset, u64::from(len));
                        }
                        ChunkData::Data(data) => {
                            if data.len() != len {
                                bail!(
                                    "chunk {index} decoded to {} bytes, expected {len}",
                                    data.len()
                                );
                            }
                            written += len as u64;
                            batch.writes.push((offset, data));
                        }
                    }
                    batch.ids.push((index, id));
                    batch.bytes += len as u64;
                    done_bytes += len as u64;
                }
                send(batch)?;
                bar.set(done_bytes);
            }
            Ok(())
        })();
        let finished = writer
            .join()
            .map_err(|_| crate::err!("the volume writer thread panicked"))?;
        let mut digest = None;
        if let Some((reading, checking)) = checking {
            let read = reading
                .join()
                .map_err(|_| crate::err!("the read-back thread panicked"))?;
            let checked = checking
                .join()
                .map_err(|_| crate::err!("the read-back check thread panicked"))?;
            // A failed check is the cause when everything stopped (the others
            // stop because it did); the boot sector may have been written.
            if let Err(e) = checked {
                if let Ok((vol, _)) = finished {
                    zero_head(vol, head_len);
                }
                return Err(e);
            }
            read?;
            digest = Some(checked?);
        }
        // A failed write is the cause when both sides stopped.
        let (vol, state) = finished?;
        fed?;
        Ok((vol, state, digest))
    });
    // A record that did not check out stops the ingest with the target unfinished: say
    // so, and what the partial target and its state are good for (they were left behind
    // unnamed, and a later ingest of another capture into the target was refused).
    let (mut vol, state, beside_digest) =
        fed_to_writer.map_err(|e| left_unfinished(e, &unfinished, partial, &state_note))?;
    bar.finish();
    if far_missing > 0 {
        // Everything the given media hold is durable and recorded; the rest
        // waits for its medium, the target stays unfinished until then.
        drop(vol);
        let written_now = state.done_count() - resumed;
        let Some(g) = gaps else {
            bail!("chunks are missing but no medium is (a bug)");
        };
        // Named as it is on disk: the `.partial` a file: or qcow2: volume is written as.
        return Err(g.pending(
            &reader,
            |i| !state.is_done(i),
            (written_now, zeros),
            &read_desc,
        ));
    }
    if plan.hold == Finishing::Hold {
        return Err(crate::Error::other(Held {
            bytes_written: written,
            zero_chunks: zeros,
            resumed_chunks: resumed,
            seconds: started.elapsed().as_secs_f64(),
            read_back: None,
        }));
    }

    let mut volume_sha256 = None;
    if let Finishing::Checked(digest) = &plan.hold {
        volume_sha256 = digest.clone();
    } else if let Some(digest) = beside_digest {
        let Some(digest) = digest else {
            zero_head(vol, head_len);
            bail!("the read-back check ended before every chunk was read back (a bug): the target is left incomplete");
        };
        volume_sha256 = digest.map(|d| crate::output::hex(&d));
    } else if vol.can_read_back() {
        let checked = read_back(
            &mut *vol,
            &state.path,
            &id_key,
            size,
            chunk,
            threads,
            plan.json,
            plan.volume_sha256,
        );
        if checked.is_err() {
            // Do not leave something that might boot.
            let _ = vol.write_zeroes(0, head_len);
            let _ = vol.flush();
        }
        volume_sha256 = checked?.map(|d| crate::output::hex(&d));
    } else {
        eprintln!(
            "mgear: {desc} cannot be read back: what was written is what was authenticated, \
             chunk by chunk"
        );
        // Asked for, and left `null` without a word (the JSON's only sign).
        if plan.volume_sha256 {
            eprintln!(
                "mgear: --volume-sha256: no digest of {desc}: it is not read back (the report's \
                 volume_sha256 is null)"
            );
        }
    }
    if plan.hold == Finishing::CheckThenHold {
        vol.flush()?;
        return Err(crate::Error::other(Held {
            bytes_written: written,
            zero_chunks: zeros,
            resumed_chunks: resumed,
            seconds: started.elapsed().as_secs_f64(),
            read_back: Some(volume_sha256),
        }));
    }
    let waiting = Progress::waiting("ingest: the volume's last flush");
    let finished = vol.finish()?;
    drop(waiting);
    std::fs::remove_file(&state.path)?;
    let recorded = match Target::parse(&plan.target, crate::spec::Bare::Refuse) {
        Ok(Target::Rbd(spec)) => Some((rbd_done_path(&plan.state_dir, &spec), "rbd\n".into())),
        Ok(Target::Dev(dev)) => {
            // The disk's identity: a re-run finds the record under another name of it.
            let stamp = format!("device\nidentity {}\n", mgear_volume::device_identity(&dev));
            spec_done_path(&plan.state_dir, &Target::Dev(dev)).map(|p| (p, stamp))
        }
        Ok(t @ Target::Nbd(_)) => {
            spec_done_path(&plan.state_dir, &t).map(|p| (p, "device\n".to_string()))
        }
        _ => None,
    };
    if let (true, Some((done, kind))) = (plan.record_done, recorded) {
        // A re-run knows the volume is this generation's (it was refused as "exists", or as
        // a device holding a partition table), and reads it back before keeping it.
        let tmp = done.with_extension("done.tmp");
        let _ = std::fs::remove_file(&tmp);
        let written = image_format::private::create(&tmp)
            .and_then(|mut f| f.write_all(done_text(&root, &kind).as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, &done));
        if written.is_ok() {
            forget_other_records_of(&plan.state_dir, &done, &kind);
        }
        if let Err(e) = written {
            eprintln!(
                "mgear: note: could not record the finished ingest in {} ({e}): a re-run will \
                 not know this volume is done (it refuses it as existing)",
                plan.state_dir.display()
            );
        }
    }
    if let Some(p) = finished
        .path
        .as_deref()
        .filter(|_| plan.record_done && path_target(&plan.target).is_some())
    {
        let of = (reader.manifest().capture_id, reader.generation());
        if let Err(e) = write_done(&plan.state_dir, p, &root, of) {
            eprintln!(
                "mgear: note: could not record the finished ingest in {} ({e}): a re-run will \
                 not know this volume is done (it refuses it as existing)",
                plan.state_dir.display()
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((
        Report {
            command: "ingest",
            name: plan.name.clone(),
            generation,
            target: plan.target.clone(),
            disk_size: size,
            chunks: count,
            zero_chunks: zeros,
            resumed_chunks: resumed,
            bytes_written: written,
            verified: true,
            volume_sha256,
            seconds: secs,
            // Of what this run went through: a resumed run's whole disk over its own time
            // overstated it (the chunks done before the resume cost it nothing).
            mb_per_s: progress::mb_per_s(
                size.saturating_sub(resumed.saturating_mul(u64::from(chunk))),
                secs,
            ),
            volume: None,
            server: None,
            booted: None,
            boot_report: None,
            adapt: None,
            to_adapt: None,
            kept: false,
            snapshot_id: None,
            image_id: None,
            warnings: Vec::new(),
        },
        finished,
    ))
}

/// The report of a disk an earlier run finished and verified
/// ([`ingested_before`]): nothing written now, every chunk resumed.
pub(crate) fn kept_report(name: &str, generation: u32, target: &str, disk_size: u64) -> Report {
    Report {
        command: "ingest",
        name: name.to_string(),
        generation,
        target: target.to_string(),
        disk_size,
        chunks: 0,
        zero_chunks: 0,
        resumed_chunks: 0,
        bytes_written: 0,
        verified: true,
        volume_sha256: None,
        seconds: 0.0,
        mb_per_s: 0.0,
        volume: None,
        server: None,
        booted: None,
        boot_report: None,
        adapt: None,
        to_adapt: None,
        kept: true,
        snapshot_id: None,
        image_id: None,
        warnings: Vec::new(),
    }
}

/// The file of a `file:` or `qcow2:` target (`None` for other kinds).
pub(crate) fn path_target(target: &str) -> Option<PathBuf> {
    match crate::spec::Target::parse(target, crate::spec::Bare::Existing) {
        Ok(crate::spec::Target::File(p) | crate::spec::Target::Qcow2(p)) => Some(p),
        _ => None,
    }
}

/// The manifest root an interrupted ingest into the `file:`/`qcow2:`/`ebs-snapshot:` target
/// `target` was writing, as its resume state records it (`None`: no such state).
pub(crate) fn unfinished_root(state_dir: &Path, target: &str) -> Option<[u8; 32]> {
    let key = match crate::spec::Target::parse(target, crate::spec::Bare::Existing) {
        Ok(crate::spec::Target::File(p) | crate::spec::Target::Qcow2(p)) => {
            mgear_volume::absolute_key(&p)
        }
        Ok(crate::spec::Target::EbsSnapshot { name, .. }) => mgear_volume::ebs::state_key(&name),
        _ => return None,
    };
    let state = state_dir.join(format!("{key}.ingest"));
    let mut f = open_private(&state, "ingest state").ok()??;
    let mut h = [0u8; STATE_MAGIC.len() + 32];
    f.read_exact(&mut h).ok()?;
    if !h.starts_with(STATE_MAGIC) {
        return None;
    }
    h[STATE_MAGIC.len()..].try_into().ok()
}

/// Where the record of a finished ingest into the file at `volume` lives:
/// beside the resume state, under the same key.
fn done_path(state_dir: &Path, volume: &Path) -> PathBuf {
    state_dir.join(format!("{}.done", mgear_volume::absolute_key(volume)))
}

/// The record of a finished, verified ingest of the generation with
/// manifest root `root` into the file `volume`, with the file's identity,
/// size and change time then: a machine set's ingest re-run (after an
/// interruption, or after it finished) keeps the disks an earlier run finished (and nobody changed
/// since: any write, and `touch`, moves the change time, which no call can
/// set back) instead of refusing their files as "exists".
///
/// ```text
/// mgear-ingested/2
/// root <manifest root, hex>
/// file <st_dev>:<st_ino>
/// len <bytes>
/// ctime <nanoseconds since the epoch>
/// of <capture id, hex> <generation>
/// ```
///
/// The `of` line (absent from records older releases made) names the capture and generation,
/// so that an older copy of the shipment, which no longer holds the root recorded, is still
/// told as this disk's older generation.
fn write_done(
    state_dir: &Path,
    volume: &Path,
    root: &[u8; 32],
    of: ([u8; 16], u32),
) -> std::io::Result<()> {
    let stamp = file_stamp(volume)?;
    let path = done_path(state_dir, volume);
    let tmp = path.with_extension("done.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = image_format::private::create(&tmp)?;
    writeln!(
        f,
        "{}of {} {}",
        done_text(root, &stamp),
        crate::output::hex(&of.0),
        of.1
    )?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)
}

/// A file's device, inode, size and change time, as a done record holds them.
fn file_stamp(p: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p)?;
    Ok(format!(
        "file {}:{}\nlen {}\nctime {}\n",
        m.dev(),
        m.ino(),
        m.len(),
        i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec())
    ))
}

/// Where the finished ingest into RBD image `spec` is recorded.
/// Whether the RBD image an earlier ingest finished was removed since: its done record then
/// goes (the re-run failed on "image not found", exit 3, where a `file:` removed since is
/// written again) and the image is made anew.
fn rbd_image_gone(state_dir: &Path, spec: &mgear_volume::RbdSpec) -> bool {
    let gone = matches!(
        mgear_volume::RbdReader::new(spec).size(),
        Err(mgear_volume::Error::Ceph { errno, .. }) if errno == -(nix::errno::Errno::ENOENT as i32)
    );
    if gone {
        let _ = std::fs::remove_file(rbd_done_path(state_dir, spec));
        eprintln!(
            "mgear ingest: RBD image {} that an earlier ingest finished is gone: writing it anew",
            spec.image_spec()
        );
    }
    gone
}

fn rbd_done_path(state_dir: &Path, spec: &mgear_volume::RbdSpec) -> PathBuf {
    state_dir.join(format!(
        "{}.done",
        file_name_of(&format!("rbd:{}", spec.image_spec()))
    ))
}

fn done_text(root: &[u8; 32], stamp: &str) -> String {
    format!(
        "mgear-ingested/2\nroot {}\n{stamp}",
        crate::output::hex(root)
    )
}

/// The SHA-256 of the file of `target` (`--volume-sha256` of a disk an
/// earlier run finished and this one keeps), read whole.
pub(crate) fn target_sha256(
    target: &str,
    state_dir: &Path,
    disk_size: u64,
) -> crate::Result<Option<String>> {
    use sha2::Digest as _;
    if let Ok(crate::spec::Target::Qcow2(p)) =
        crate::spec::Target::parse(target, crate::spec::Bare::Existing)
    {
        return qcow2_disk_sha256(&p, state_dir, disk_size).map(Some);
    }
    let Some(p) = path_target(target) else {
        return Ok(None);
    };
    let mut f = File::open(&p).with_context(|| format!("reading {}", p.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", p.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Some(crate::output::hex(&h.finalize())))
}

/// SHA-256 of the disk a qcow2 image holds (its first `disk_size` bytes: the image is padded
/// to whole sectors), read through a `qemu-nbd -r` of it on a socket in `state_dir`: the
/// file's own bytes are the container's (a kept re-run reported their digest as the volume's).
fn qcow2_disk_sha256(path: &Path, state_dir: &Path, disk_size: u64) -> crate::Result<String> {
    use sha2::Digest as _;
    let qemu_nbd = crate::tools::require("qemu-nbd", "qemu-utils")?;
    let dir = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let sock = dir.join(format!("sha256-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let mut server = std::process::Command::new(qemu_nbd)
        .args(["-r", "-f", "qcow2", "--socket"])
        .arg(&sock)
        .arg(path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting qemu-nbd for {}", path.display()))?;
    let url: mgear_nbd::NbdUrl = format!("nbd+unix:///?socket={}", sock.display())
        .parse()
        .map_err(|e| crate::err!("{e}"))?;
    let opts = mgear_nbd::ConnectOptions {
        read_only: true,
        ..Default::default()
    };
    let hashed = (|| {
        let t0 = std::time::Instant::now();
        let mut client = loop {
            match mgear_nbd::Client::connect(&url, &opts) {
                Ok(c) => break c,
                Err(_) if t0.elapsed() < std::time::Duration::from_secs(10) => {
                    if let Ok(Some(_)) = server.try_wait() {
                        crate::bail!("qemu-nbd could not serve {}", path.display());
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(crate::err!(
                        "reading {} through qemu-nbd: {e}",
                        path.display()
                    ))
                }
            }
        };
        let (size, mut at) = (client.size().min(disk_size), 0u64);
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        while at < size {
            let n = (size - at).min(buf.len() as u64) as usize;
            client
                .read_at(at, &mut buf[..n])
                .map_err(|e| crate::err!("reading {} through qemu-nbd: {e}", path.display()))?;
            h.update(&buf[..n]);
            at += n as u64;
        }
        let _ = client.disconnect();
        Ok(crate::output::hex(&h.finalize()))
    })();
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_file(&sock);
    hashed
}

/// Whether `target` (a `file:`/`qcow2:` spec) holds the generation with
/// manifest root `root`, ingested and verified by an earlier run and not
/// changed since (its record in `state_dir` matches the file now).
pub(crate) fn ingested_before(state_dir: &Path, target: &str, root: &[u8; 32]) -> bool {
    let Some(p) = path_target(target) else {
        return false;
    };
    let (Ok(text), Ok(stamp)) = (
        std::fs::read_to_string(done_path(state_dir, &p)),
        file_stamp(&p),
    ) else {
        return false;
    };
    text.strip_prefix(&done_text(root, &stamp))
        .is_some_and(|of| of.is_empty() || of.starts_with("of "))
}

/// The manifest root of the finished ingest recorded for the file at `volume`, when the
/// record names this very file (its device and inode: not another file moved in since),
/// whatever was written to it after (`mgear serve` applies syncs in place).
pub(crate) fn ingested_from(state_dir: &Path, volume: &Path) -> Option<[u8; 32]> {
    done_record_of(state_dir, volume).map(|(root, _)| root)
}

/// The capture id and generation of the finished ingest recorded for the file at `volume`
/// (see [`ingested_from`]); `None` for a record an older release made, which has no `of`
/// line.
fn ingested_of(state_dir: &Path, volume: &Path) -> Option<([u8; 16], u32)> {
    let (_, text) = done_record_of(state_dir, volume)?;
    let of = text.lines().find_map(|l| l.strip_prefix("of "))?;
    let (id, generation) = of.split_once(' ')?;
    Some((bytes_from_hex(id)?, generation.trim().parse().ok()?))
}

/// The finished-ingest record naming the file at `volume`: its manifest root and its text.
fn done_record_of(state_dir: &Path, volume: &Path) -> Option<([u8; 32], String)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(volume).ok()?;
    let file = format!("{}:{}", m.dev(), m.ino());
    let root_of = |text: &str| -> Option<[u8; 32]> {
        let (root, mut rest) = done_record(text)?;
        (rest.next()?.strip_prefix("file ")? == file).then_some(root)
    };
    // Under the name it was ingested as, else under any (renamed since, a hard link, a path
    // through `..` or a linked directory): the record names the file by device and inode.
    // A record older than the file is about an earlier file whose inode was given to it.
    let of = |record: &Path| {
        if crate::guard::born_after(volume, record) {
            return None;
        }
        let text = std::fs::read_to_string(record).ok()?;
        Some((root_of(&text)?, text))
    };
    if let Some(r) = of(&done_path(state_dir, volume)) {
        return Some(r);
    }
    std::fs::read_dir(state_dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".done"))
        .find_map(|e| of(&e.path()))
}

/// The summary line of `--boot`: booted or not, and where its report is.
pub(crate) fn print_boot_line(booted: Option<bool>, report: Option<&str>) {
    if let (Some(b), Some(p)) = (booted, report) {
        println!(
            "  {:<14} {} (report {p})",
            "boot",
            if b { "booted" } else { "did NOT boot" }
        );
    }
}

/// Check the volume can take the disk and open (or resume) its state.
fn open_state(
    vol: &dyn Volume,
    found: Found,
    size: u64,
    count: u64,
    state_path: PathBuf,
    header: &[u8],
    start_over: bool,
) -> crate::Result<State> {
    let desc = vol.describe();
    // lstat, not stat: a dangling symlink counts as something being there.
    let present = |p: &Path| std::fs::symlink_metadata(p).is_ok();
    let adoptable = found
        != (Found::Unfinished {
            adopt_without_state: false,
        });
    if !adoptable && !present(&state_path) && start_over && vol.size() == size {
        // --force: what it holds is not trusted, every chunk (zeros too: it is not a fresh
        // file) is written again and read back. Refused before, with --force given, which the
        // help says replaces an existing target.
        eprintln!(
            "mgear: --force: {desc}.partial, an unfinished ingest with no state here to say \
             what it holds, is written again from the start"
        );
        return State::open(state_path, header, count, false, true);
    }
    if !adoptable && !present(&state_path) {
        // Without its state nothing says what this volume holds or who wrote it.
        let force = match start_over {
            false => "run it again with --force, or ",
            // Given, over a .partial of another size than this disk's.
            true => "",
        };
        return Err(usage(format!(
            "an unfinished {desc} (.partial) exists but its ingest state {} does not: \
             refusing to adopt a partial volume nothing vouches for. If the run that wrote it \
             had another --state-dir (or none, where this one names one), run this command \
             with that one to resume it; otherwise {force}remove {desc}.partial and run again \
             (what it held is written again, from the media that hold it)",
            state_path.display()
        )));
    }
    if vol.size() < size {
        return Err(usage(format!(
            "{desc} is {} but the disk is {}: give a target of at least {size} bytes",
            human_bytes(vol.size()),
            human_bytes(size)
        )));
    }
    State::open(state_path, header, count, found == Found::New, start_over)
}

/// What the decrypting side hands the volume writer: one batch of chunks.
#[derive(Default)]
struct Batch {
    /// Data chunks: offset and plaintext.
    writes: Vec<(u64, ChunkBuf)>,
    /// Zero chunks as runs (offset, length): neighbours go as one request,
    /// a round trip each on RBD.
    zeros: Vec<(u64, u64)>,
    /// Index and keyed id of every chunk of the batch, in order: what the
    /// resume state records once they are durable.
    ids: Vec<(u64, [u8; 32])>,
    /// Disk bytes the batch covers.
    bytes: u64,
    /// Make everything durable and record it after this batch.
    checkpoint: bool,
    /// Every chunk of the batch in order: index, length, whether it is a
    /// zero chunk (the data of the others is in `writes`, in the same order).
    chunks: Vec<(u64, usize, bool)>,
    /// The batch holding chunk 0 (the boot sector), written last.
    head: bool,
}

impl Batch {
    fn zero(&mut self, offset: u64, len: u64) {
        match self.zeros.last_mut() {
            Some((at, n)) if *at + *n == offset => *n += len,
            _ => self.zeros.push((offset, len)),
        }
    }

    /// What each chunk of the written batch must read back as: its plaintext
    /// (moved, not copied) or zeros.
    fn into_checks(self) -> Vec<Check> {
        let mut data = self.writes.into_iter().map(|(_, d)| d);
        self.chunks
            .into_iter()
            .map(|(index, len, zero)| Check {
                index,
                len,
                expect: if zero {
                    Expect::Zeros
                } else {
                    Expect::Bytes(data.next().unwrap_or_default())
                },
            })
            .collect()
    }
}

/// The writer thread: writes each batch, and every `checkpoint_bytes` (and
/// where a batch asks) makes the volume durable before the state records
/// the chunks, so the state never claims a chunk before its bytes are on the
/// volume. When the feeding side stops (done, an error, a signal) it records
/// what was written, and hands volume and state back.
///
/// With `verify` (the read-back beside the writes) every batch is handed to
/// the read-back once written (and flushed first, unless its reader sees
/// completed writes without one: a flush per batch cost a quarter of the
/// write rate of a raw file on the benchmark VM, where one per checkpoint is
/// what durability needs), and the batch holding chunk 0 waits until
/// everything before it was read back and found right.
fn write_batches(
    mut vol: Box<dyn Volume>,
    mut state: State,
    batches: std::sync::mpsc::Receiver<Batch>,
    checkpoint_bytes: u64,
    verify: Option<BesideWrites>,
) -> crate::Result<(Box<dyn Volume>, State)> {
    let mut pending_ids: Vec<(u64, [u8; 32])> = Vec::new();
    let mut pending_bytes = 0u64;
    let mut checkpoint =
        |vol: &mut dyn Volume, ids: &mut Vec<(u64, [u8; 32])>| -> crate::Result<()> {
            if !ids.is_empty() {
                vol.flush()?;
                state.record(ids)?;
                ids.clear();
            }
            Ok(())
        };
    let stopped = || crate::err!("the read-back check stopped");
    // A volume this run made reads as zeros where unwritten: its zero runs need no write.
    let zeros_needed = !vol.fresh_reads_zero();
    for mut b in batches {
        if let (true, Some(v)) = (b.head, &verify) {
            let (ack, acked) = std::sync::mpsc::sync_channel(1);
            v.to.send(Written::Barrier(ack)).map_err(|_| stopped())?;
            acked.recv().map_err(|_| stopped())?;
        }
        for (offset, len) in std::mem::take(&mut b.zeros) {
            if zeros_needed {
                vol.write_zeroes(offset, len)?;
            }
        }
        write_batch(&mut *vol, &b.writes)?;
        pending_ids.append(&mut b.ids);
        pending_bytes += b.bytes;
        if b.checkpoint || pending_bytes >= checkpoint_bytes {
            checkpoint(&mut *vol, &mut pending_ids)?;
            pending_bytes = 0;
        } else if verify.as_ref().is_some_and(|v| !v.direct) && !b.chunks.is_empty() {
            // This reader sees only what a flush made durable.
            vol.flush()?;
        }
        if let Some(v) = &verify {
            if !b.chunks.is_empty() {
                v.to.send(Written::Chunks(b.into_checks()))
                    .map_err(|_| stopped())?;
            }
        }
    }
    checkpoint(&mut *vol, &mut pending_ids)?;
    Ok((vol, state))
}

/// Hand the collected writes to the volume as one batch. Where the volume
/// keeps zeros thin at a granule ([`mgear_volume::Geometry::thin_granule`]), each aligned
/// granule of zeros inside the data goes as `write_zeroes` instead: a chunk
/// is the capture's unit of zero skipping (1 MiB by default, up to 16 MiB),
/// while a qcow2 cluster or a file's hole is 64 KiB, and a disk's data
/// chunks hold many zero runs between its files. Checking a granule stops at
/// its first non-zero byte, so data costs next to nothing.
fn write_batch(vol: &mut dyn Volume, batch: &[(u64, ChunkBuf)]) -> crate::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let granule = vol.geometry().thin_granule;
    let mut writes: Vec<WriteAt<'_>> = Vec::with_capacity(batch.len());
    let mut zeros = Vec::new();
    for (offset, data) in batch {
        match granule {
            Some(g) => split_zero_runs(*offset, data, g, &mut writes, &mut zeros),
            None => writes.push(WriteAt {
                offset: *offset,
                data,
            }),
        }
    }
    // Zero granules of a volume made by this run are zeros already.
    if !vol.fresh_reads_zero() {
        for (offset, len) in zeros {
            vol.write_zeroes(offset, len)?;
        }
    }
    if !writes.is_empty() {
        vol.write_batch(&writes)?;
    }
    Ok(())
}

/// Cut `data` (bound for volume offset `offset`) into runs: whole zero
/// granules (aligned to `granule` on the volume) merged into `zeros`, the
/// rest into `writes` (ragged ends and granules holding data).
fn split_zero_runs<'a>(
    offset: u64,
    data: &'a [u8],
    granule: u64,
    writes: &mut Vec<WriteAt<'a>>,
    zeros: &mut Vec<(u64, u64)>,
) {
    let granule = granule.max(1);
    // (start within `data`, zeros?) of the run being gathered.
    let mut run: Option<(usize, bool)> = None;
    let mut close = |start: usize, end: usize, zero: bool| {
        if zero {
            zeros.push((offset + start as u64, (end - start) as u64));
        } else {
            writes.push(WriteAt {
                offset: offset + start as u64,
                data: &data[start..end],
            });
        }
    };
    let mut pos = 0usize;
    while pos < data.len() {
        let at = offset + pos as u64;
        let to_boundary = granule - at % granule;
        let end = pos
            + usize::try_from(to_boundary)
                .unwrap_or(usize::MAX)
                .min(data.len() - pos);
        let zero = (end - pos) as u64 == granule && image_format::is_all_zero(&data[pos..end]);
        match run {
            Some((_, z)) if z == zero => {}
            Some((start, z)) => {
                close(start, pos, z);
                run = Some((pos, zero));
            }
            None => run = Some((pos, zero)),
        }
        pos = end;
    }
    if let Some((start, z)) = run {
        close(start, data.len(), z);
    }
}

/// Clear the boot sector region of a volume that failed its check, so it
/// does not look bootable (best effort: the failure is already being reported).
fn zero_head(mut vol: Box<dyn Volume>, head_len: u64) {
    let _ = vol.write_zeroes(0, head_len);
    let _ = vol.flush();
}

/// What the read-back beside the writes needs to know of the ingest.
struct ReadBackPlan {
    /// The resume state, whose slots of the first `resumed` chunks in write
    /// order hold the ids of what earlier runs wrote (read back first).
    state_path: PathBuf,
    resumed: u64,
    count: u64,
    size: u64,
    chunk: u64,
    /// Chunks read back per batch.
    per_batch: u64,
    /// Hash the volume as read back with SHA-256 (`--volume-sha256`).
    sha256: bool,
    /// Where checked plaintext goes back to the capture reader.
    buffers: image_format::RecordBuffers,
}

/// The writer's way to the read-back beside it.
struct BesideWrites {
    to: std::sync::mpsc::SyncSender<Written>,
    /// The reader sees completed writes without a flush
    /// ([`mgear_volume::VolumeReader::sees_completed_writes`]).
    direct: bool,
}

/// What the writer hands the read-back beside it.
enum Written {
    /// A batch that was written (and flushed where the reader needs it),
    /// chunk by chunk in write order.
    Chunks(Vec<Check>),
    /// Answer once everything handed over before was read back and found
    /// right (the writer waits for it before writing chunk 0).
    Barrier(std::sync::mpsc::SyncSender<()>),
}

/// One chunk to read back and what it must read as.
struct Check {
    index: u64,
    len: usize,
    expect: Expect,
}

/// What a chunk must read back as.
enum Expect {
    /// The authenticated plaintext that was written.
    Bytes(ChunkBuf),
    /// Zeros (a zero chunk, written as `write_zeroes`).
    Zeros,
    /// Bytes whose keyed id is this (chunks an earlier run wrote, known by
    /// the ids in the resume state).
    Id([u8; 32]),
}

/// What the read-back hands the check.
enum ReadBatch {
    /// The batch's chunks in runs, in order.
    Runs(Vec<Run>),
    /// The batch's chunks (their plaintext or zeros) and the volume's digests
    /// of what it stores over the same bytes ([`digest_ranges`]).
    Digests(Vec<Check>, Vec<mgear_volume::StoredDigest>),
    /// As [`Written::Barrier`].
    Barrier(std::sync::mpsc::SyncSender<()>),
}

/// Neighbouring chunks read back with one request: `data` holds them one
/// after the other, or is `None` for a single chunk that must be zeros and
/// that the volume reports as a hole (not read).
struct Run {
    checks: Vec<Check>,
    data: Option<ChunkBuf>,
}

impl Run {
    /// Each chunk with the bytes read for it (`None`: a hole, or past what
    /// was read).
    fn chunks(&self) -> Vec<(&Check, Option<&[u8]>)> {
        let mut at = 0;
        self.checks
            .iter()
            .map(|c| {
                let data = self.data.as_ref().and_then(|d| d.get(at..at + c.len));
                at += c.len;
                (c, data)
            })
            .collect()
    }
}

/// The longest run the read-back reads with one request; runs do not cross a
/// multiple of it. RBD stores an image in 4 MiB objects: one request per
/// object (one OSD operation) instead of one per 1 MiB chunk.
const READ_RUN: u64 = 4 << 20;

/// Groups the chunks of a batch into runs: a chunk that must be zeros and
/// that `is_hole` says reads as zeros stands alone, unread; others join the
/// run before them when they follow it on the disk, it stays within
/// [`READ_RUN`] and they do not start a new multiple of it. `buffer(n)`
/// gives each run its buffer of `n` bytes.
fn runs_of(
    checks: Vec<Check>,
    chunk: u64,
    mut is_hole: impl FnMut(&Check) -> bool,
    mut buffer: impl FnMut(usize) -> ChunkBuf,
) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let mut run_len = 0u64;
    for c in checks {
        let offset = c.index * chunk;
        if is_hole(&c) {
            runs.push(Run {
                checks: vec![c],
                data: None,
            });
            continue;
        }
        let len = c.len as u64;
        match runs.last_mut() {
            Some(run)
                if run.data.is_some()
                    && run.checks.first().map(|f| f.index * chunk + run_len) == Some(offset)
                    && !offset.is_multiple_of(READ_RUN)
                    && run_len + len <= READ_RUN =>
            {
                run.checks.push(c);
                run_len += len;
            }
            _ => {
                runs.push(Run {
                    checks: vec![c],
                    data: Some(ChunkBuf::default()),
                });
                run_len = len;
            }
        }
    }
    for run in &mut runs {
        if let Some(d) = &mut run.data {
            *d = buffer(run.checks.iter().map(|c| c.len).sum());
        }
    }
    runs
}

/// Chunk 0's authenticated plaintext (decrypted ahead of the others).
fn head_plaintext<S: image_format::Store>(
    reader: &mut CaptureReader<S>,
    size: u64,
    chunk: u32,
    threads: usize,
) -> crate::Result<Vec<u8>> {
    let len = image_format::layout::chunk_len(size, chunk, 0) as usize;
    let data = reader
        .read_chunks(&[0], threads)?
        .pop()
        .ok_or_else(|| crate::err!("chunk 0 could not be read"))?;
    match data {
        ChunkData::Zero { .. } => Ok(vec![0; len]),
        ChunkData::Data(d) if d.len() == len => Ok(d.into_vec()),
        ChunkData::Data(d) => bail!("chunk 0 decoded to {} bytes, expected {len}", d.len()),
    }
}

/// The read-back beside the writes, its reading half: first the chunks an
/// earlier run wrote (from the resume state), then each batch the writer
/// hands over once written, read through the volume's own reader.
fn read_back_beside(
    mut rd: Box<dyn mgear_volume::VolumeReader>,
    r: &ReadBackPlan,
    key: &image_format::ChunkIdKey,
    written: std::sync::mpsc::Receiver<Written>,
    out: std::sync::mpsc::SyncSender<ReadBatch>,
    spare: std::sync::mpsc::Receiver<ChunkBuf>,
) -> crate::Result<()> {
    let mut zero_ids = ZeroIds::new(key);
    let stopped = || crate::err!("the read-back check stopped");
    // Where the storage digests what it holds (RBD: the OSDs), chunks whose
    // plaintext is at hand are checked by digest instead of being read back;
    // not for the volume's SHA-256, which needs the bytes.
    let mut unit = match r.sha256 {
        true => None,
        false => rd.digest_unit().filter(|&u| u > 0),
    };
    let mut read = |checks: Vec<Check>| -> crate::Result<()> {
        let known = checks.iter().all(|c| !matches!(c.expect, Expect::Id(_)));
        if let Some(u) = unit.filter(|_| known) {
            let mut digests = digest_ranges(&checks, r.chunk, u);
            match rd.stored_digests(&mut digests) {
                Ok(()) => {
                    return out
                        .send(ReadBatch::Digests(checks, digests))
                        .map_err(|_| stopped());
                }
                // A storage that refuses to digest (an OSD without the checksum
                // operation) is read back instead, from this batch on.
                Err(e) if e.is_unsupported() => unit = None,
                Err(e) => return Err(e.into()),
            }
        }
        let mut runs = runs_of(
            checks,
            r.chunk,
            |c| {
                // Only a chunk that must be zeros is worth a hole query (a round
                // trip, and on RBD a walk of the object map).
                let zero = match &c.expect {
                    Expect::Zeros => true,
                    Expect::Id(id) => *id == zero_ids.get(c.len),
                    Expect::Bytes(_) => false,
                };
                zero && rd.reads_as_zeros(c.index * r.chunk, c.len as u64)
            },
            // A checked run's buffer, if one came back: the volume's read
            // fills all of it (or fails), so nothing of its old bytes stays.
            |n| match spare.try_recv() {
                Ok(mut b) => {
                    b.resize(n);
                    b
                }
                Err(_) => ChunkBuf::zeroed(n),
            },
        );
        let mut reads: Vec<ReadAt<'_>> = runs
            .iter_mut()
            .filter_map(|run| {
                let offset = run.checks.first()?.index * r.chunk;
                run.data.as_mut().map(|buf| ReadAt { offset, buf })
            })
            .collect();
        rd.read_batch(&mut reads)?;
        drop(reads);
        out.send(ReadBatch::Runs(runs)).map_err(|_| stopped())
    };
    let slots = Slots::open(&r.state_path)?;
    let mut k = 0;
    while k < r.resumed {
        if crate::signals::stop_requested() {
            return Ok(());
        }
        let mut checks = Vec::new();
        while k < r.resumed && (checks.len() as u64) < r.per_batch {
            let index = chunk_at(k, r.count);
            checks.push(Check {
                index,
                len: image_format::layout::chunk_len(r.size, r.chunk as u32, index) as usize,
                expect: Expect::Id(slots.id(index)?),
            });
            k += 1;
        }
        read(checks)?;
    }
    for w in written {
        match w {
            Written::Chunks(checks) => read(checks)?,
            Written::Barrier(ack) => out.send(ReadBatch::Barrier(ack)).map_err(|_| stopped())?,
        }
    }
    Ok(())
}

/// The read-back beside the writes, its checking half: compares every chunk
/// read back with what it must be (on up to `threads` threads) and, with
/// `r.sha256`, hashes the volume in disk order, starting with chunk 0's
/// authenticated plaintext `head`, which chunk 0 must read back as.
/// `Some(digest)` when every chunk was checked (the digest `None` without
/// `r.sha256`), `None` when the writes stopped before.
fn check_beside(
    got: std::sync::mpsc::Receiver<ReadBatch>,
    head: &[u8],
    r: &ReadBackPlan,
    key: &image_format::ChunkIdKey,
    threads: usize,
    desc: &str,
    spare: std::sync::mpsc::Sender<ChunkBuf>,
) -> crate::Result<Option<Option<[u8; 32]>>> {
    use sha2::Digest as _;
    let mut sha = r.sha256.then(sha2::Sha256::new);
    if let Some(sha) = sha.as_mut() {
        sha.update(head);
    }
    let mut checked = 0u64;
    for batch in got {
        let runs = match batch {
            ReadBatch::Barrier(ack) => {
                let _ = ack.send(());
                continue;
            }
            ReadBatch::Runs(runs) => runs,
            ReadBatch::Digests(checks, digests) => {
                if let Some(bad) = digests_differ(&checks, &digests, r.chunk, head, threads)? {
                    return Err(crate::exit::coded_hint(
                        FOUND,
                        format!(
                            "read-back check failed: disk bytes {}..{} on {desc} differ from \
                             what was authenticated (the storage's digest of them does not \
                             match); the target is left incomplete{}",
                            bad.start,
                            bad.end,
                            forget_written(&r.state_path)
                        ),
                        READ_BACK_HINT,
                    ));
                }
                checked += checks.len() as u64;
                for c in checks {
                    if let Expect::Bytes(b) = c.expect {
                        r.buffers.put(b);
                    }
                }
                continue;
            }
        };
        let bad = image_format::parallel::map_in_order(&runs, threads, |run| {
            run.chunks().into_iter().find_map(|(c, data)| {
                let right = match (&c.expect, data) {
                    (Expect::Bytes(want), Some(b)) => b == want.as_slice(),
                    (Expect::Zeros, Some(b)) => b.iter().all(|&x| x == 0),
                    (Expect::Id(want), Some(b)) => key.id(b) == *want,
                    // A hole is reported only for chunks that must be zeros.
                    (Expect::Zeros | Expect::Id(_), None) => run.data.is_none(),
                    (Expect::Bytes(_), None) => false,
                };
                let head_right = c.index != 0
                    || match data {
                        Some(b) => b == head,
                        None => run.data.is_none() && head.iter().all(|&x| x == 0),
                    };
                (!(right && head_right)).then_some((c.index, c.len))
            })
        })?;
        if let Some((index, len)) = bad.into_iter().flatten().next() {
            return Err(crate::exit::coded_hint(
                FOUND,
                format!(
                    "read-back check failed: disk bytes {}..{} on {desc} differ from what was \
                     authenticated; the target is left incomplete{}",
                    index * r.chunk,
                    index * r.chunk + len as u64,
                    forget_written(&r.state_path)
                ),
                READ_BACK_HINT,
            ));
        }
        for run in &runs {
            for (c, data) in run.chunks() {
                // Chunk 0 is already in the digest (as `head`, which it equals).
                if let Some(sha) = sha.as_mut().filter(|_| c.index != 0) {
                    sha_update(sha, c.len, data);
                }
                checked += 1;
            }
        }
        for run in runs {
            if let Some(d) = run.data {
                // The reading side may have finished: then the buffer is just freed.
                let _ = spare.send(d);
            }
            for c in run.checks {
                if let Expect::Bytes(b) = c.expect {
                    r.buffers.put(b);
                }
            }
        }
    }
    Ok((checked == r.count).then(|| sha.map(|s| s.finalize().into())))
}

/// The ranges the storage digests for `checks` (chunks of `chunk` bytes, in
/// write order): each chunk's bytes, cut where a multiple of `unit` falls
/// and joined with the previous chunk's when they follow each other within
/// one unit (one request per object).
fn digest_ranges(checks: &[Check], chunk: u64, unit: u64) -> Vec<mgear_volume::StoredDigest> {
    let mut out: Vec<mgear_volume::StoredDigest> = Vec::new();
    for c in checks {
        let (mut at, end) = (c.index * chunk, c.index * chunk + c.len as u64);
        while at < end {
            let piece_end = end.min((at / unit + 1) * unit);
            match out.last_mut() {
                Some(d) if d.offset + d.len == at && d.offset / unit == at / unit => {
                    d.len += piece_end - at;
                }
                _ => out.push(mgear_volume::StoredDigest {
                    offset: at,
                    len: piece_end - at,
                    stored: None,
                }),
            }
            at = piece_end;
        }
    }
    out
}

/// The first of `digests` (as [`digest_ranges`] made them for `checks`) whose
/// stored bytes are not what the chunks must hold (their plaintext, or
/// zeros), as a range of the disk; chunk 0 must also be `head`. Digests are
/// computed on up to `threads` threads.
fn digests_differ(
    checks: &[Check],
    digests: &[mgear_volume::StoredDigest],
    chunk: u64,
    head: &[u8],
    threads: usize,
) -> crate::Result<Option<std::ops::Range<u64>>> {
    for c in checks.iter().filter(|c| c.index == 0) {
        let right = match &c.expect {
            Expect::Bytes(b) => b.as_slice() == head,
            Expect::Zeros => head.iter().all(|&x| x == 0),
            Expect::Id(_) => false,
        };
        if !right {
            return Ok(Some(0..c.len as u64));
        }
    }
    let by_offset: std::collections::BTreeMap<u64, &Check> =
        checks.iter().map(|c| (c.index * chunk, c)).collect();
    // The bytes the chunks must hold in `at..end`, piece by piece (`None`: zeros).
    let pieces = |at: u64, end: u64, each: &mut dyn FnMut(Option<&[u8]>, usize)| {
        for (&start, c) in by_offset.range(..end) {
            let stop = start + c.len as u64;
            if stop <= at {
                continue;
            }
            let (from, to) = (
                (at.max(start) - start) as usize,
                (end.min(stop) - start) as usize,
            );
            match &c.expect {
                // A plaintext shorter than its chunk hands over too few bytes: a mismatch.
                Expect::Bytes(b) => each(Some(b.get(from..to).unwrap_or_default()), to - from),
                _ => each(None, to - from),
            }
        }
    };
    let bad = image_format::parallel::map_in_order(digests, threads, |d| {
        let end = d.offset + d.len;
        let (n, want) = d
            .stored
            .unwrap_or((0, mgear_volume::DigestHasher::new().finish()));
        let mut hasher = mgear_volume::DigestHasher::new();
        let mut covered = 0u64;
        let mut ok = true;
        pieces(d.offset, end, &mut |bytes, len| {
            // The first `n` bytes are hashed; the rest must be zeros.
            let split = (n.saturating_sub(covered) as usize).min(len);
            match bytes {
                Some(b) if b.len() == len => {
                    hasher.update(&b[..split]);
                    ok &= b[split..].iter().all(|&x| x == 0);
                }
                Some(_) => ok = false,
                None => {
                    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
                    let mut left = split;
                    while left > 0 {
                        let k = left.min(ZEROS.len());
                        hasher.update(&ZEROS[..k]);
                        left -= k;
                    }
                }
            }
            covered += len as u64;
        });
        let right = ok && covered == d.len && n <= d.len && hasher.finish() == want;
        (!right).then_some(d.offset..end)
    })?;
    Ok(bad.into_iter().flatten().next())
}

/// Read everything back and compare with the ids of authenticated data, a
/// batch at a time (reads in order, hashes on every core); with `sha256`,
/// the SHA-256 of the volume as read back.
#[allow(clippy::too_many_arguments)]
fn read_back(
    vol: &mut dyn Volume,
    state_path: &Path,
    id_key: &image_format::ChunkIdKey,
    size: u64,
    chunk: u32,
    threads: usize,
    json: bool,
    sha256: bool,
) -> crate::Result<Option<[u8; 32]>> {
    use sha2::Digest as _;
    // The slots, in disk order: the order the volume is read and hashed in.
    let mut ids = BufReader::with_capacity(1 << 20, File::open(state_path)?);
    ids.seek(SeekFrom::Start(STATE_HEADER))?;
    let mut sha = sha256.then(sha2::Sha256::new);
    let differs = reread(
        &mut Reading::Volume(&mut *vol),
        |_| {
            let mut want = [0u8; 32];
            ids.read_exact(&mut want)?;
            Ok(want)
        },
        id_key,
        (size, chunk),
        threads,
        json,
        |r, data| {
            if let Some(sha) = sha.as_mut() {
                sha_update(sha, r.len, data);
            }
        },
    )?;
    if let Some((at, len)) = differs {
        return Err(crate::exit::coded_hint(
            FOUND,
            format!(
                "read-back check failed: disk bytes {at}..{} on {} differ from what was \
                 authenticated; the target is left incomplete{}",
                at + len as u64,
                match vol.unfinished_by_name() {
                    true => format!("{}.partial", vol.describe()),
                    false => vol.describe(),
                },
                forget_written(state_path)
            ),
            READ_BACK_HINT,
        ));
    }
    Ok(sha.map(|s| s.finalize().into()))
}

/// Reads a `size`-byte disk of `chunk`-byte chunks back from `rd`, a batch at a time (reads
/// in order, hashes on every core), against `want(index)`, each chunk's authenticated id;
/// `seen` gets every chunk read, in order (`None`: a hole). The first disk range (offset,
/// length) that differs, or `None` when none does.
#[allow(clippy::too_many_arguments)]
fn reread(
    rd: &mut Reading<'_>,
    mut want: impl FnMut(u64) -> crate::Result<[u8; 32]>,
    id_key: &image_format::ChunkIdKey,
    (size, chunk): (u64, u32),
    threads: usize,
    json: bool,
    mut seen: impl FnMut(&Recheck, Option<&[u8]>),
) -> crate::Result<Option<(u64, usize)>> {
    let count = image_format::layout::chunk_count(size, chunk);
    let check = Progress::new("re-read", size, json);
    let mut zero_ids = ZeroIds::new(id_key);
    let mut checked = 0u64;
    let per_batch = ((16u64 << 20) / u64::from(chunk)).max(threads as u64);
    let mut spare = Vec::new();
    let mut index = 0;
    while index < count {
        let mut batch = Vec::new();
        while index < count && (batch.len() as u64) < per_batch {
            let len = image_format::layout::chunk_len(size, chunk, index) as usize;
            batch.push(Recheck {
                index,
                len,
                want: want(index)?,
            });
            index += 1;
        }
        let got = read_batch(rd, &mut zero_ids, u64::from(chunk), &batch, &mut spare)?;
        if let Some((i, len)) = mismatch_in(&got, id_key, threads)? {
            return Ok(Some((i * u64::from(chunk), len)));
        }
        for (r, data) in &got {
            seen(r, data.bytes());
        }
        checked += batch.iter().map(|b| b.len as u64).sum::<u64>();
        check.set(checked);
        spare.extend(got.into_iter().filter_map(|(_, data)| match data {
            ReadBack::Bytes(b) => Some(b),
            ReadBack::Zeros(_) => None,
        }));
    }
    check.finish();
    Ok(None)
}

/// Feeds one read-back chunk to the volume's SHA-256 (a hole, `None`, as zeros).
fn sha_update(sha: &mut sha2::Sha256, len: usize, data: Option<&[u8]>) {
    use sha2::Digest as _;
    match data {
        Some(b) => sha.update(b),
        None => {
            static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
            let mut left = len;
            while left > 0 {
                let n = left.min(ZEROS.len());
                sha.update(&ZEROS[..n]);
                left -= n;
            }
        }
    }
}

/// Keyed ids of all-zero chunks, by length (a disk has at most two lengths:
/// the chunk size and its last chunk's).
struct ZeroIds<'a> {
    key: &'a image_format::ChunkIdKey,
    known: Vec<(usize, [u8; 32])>,
}

impl<'a> ZeroIds<'a> {
    fn new(key: &'a image_format::ChunkIdKey) -> Self {
        ZeroIds {
            key,
            known: Vec::new(),
        }
    }

    fn get(&mut self, len: usize) -> [u8; 32] {
        if let Some((_, id)) = self.known.iter().find(|(l, _)| *l == len) {
            return *id;
        }
        let id = self.key.id(&vec![0u8; len]);
        self.known.push((len, id));
        id
    }
}

/// One chunk of the read-back: index, length and the id it must have.
#[derive(Debug, Clone, Copy)]
struct Recheck {
    index: u64,
    len: usize,
    want: [u8; 32],
}

/// What the read-back found for one chunk.
enum ReadBack {
    /// The bytes read.
    Bytes(Vec<u8>),
    /// The volume reports the range as zeros: the zero id, nothing read.
    Zeros([u8; 32]),
}

impl ReadBack {
    /// The bytes read; `None` for a hole.
    fn bytes(&self) -> Option<&[u8]> {
        match self {
            ReadBack::Bytes(b) => Some(b),
            ReadBack::Zeros(_) => None,
        }
    }
}

/// Reads `batch` back from `vol` and returns the first chunk (index,
/// length) whose keyed id is not the one authenticated. Ranges the volume
/// knows read as zeros (holes) are not read; the hashing runs on up to
/// `threads` threads. (`read_back` uses the two halves itself, to hash
/// what it read.)
#[cfg(test)]
fn first_mismatch(
    vol: &mut dyn Volume,
    key: &image_format::ChunkIdKey,
    zero_ids: &mut ZeroIds<'_>,
    chunk: u64,
    batch: &[Recheck],
    threads: usize,
) -> crate::Result<Option<(u64, usize)>> {
    let got = read_batch(
        &mut Reading::Volume(vol),
        zero_ids,
        chunk,
        batch,
        &mut Vec::new(),
    )?;
    mismatch_in(&got, key, threads)
}

/// Reads `batch` back from `vol`: each chunk's bytes, or the zero id where
/// the volume knows the range reads as zeros (a hole, not read).
fn read_batch(
    vol: &mut Reading<'_>,
    zero_ids: &mut ZeroIds<'_>,
    chunk: u64,
    batch: &[Recheck],
    spare: &mut Vec<Vec<u8>>,
) -> crate::Result<Vec<(Recheck, ReadBack)>> {
    let mut got: Vec<(Recheck, ReadBack)> = Vec::with_capacity(batch.len());
    for r in batch {
        // Only a chunk that must be zeros is worth a hole query (a round trip,
        // and on RBD a walk of the object map); a data chunk is read anyway.
        let zero = zero_ids.get(r.len);
        if r.want == zero && vol.reads_as_zeros(r.index * chunk, r.len as u64) {
            got.push((*r, ReadBack::Zeros(zero)));
        } else {
            // A buffer of an earlier batch: the read fills all of it (or
            // fails), and fresh pages cost a fault and a zeroing each.
            let mut b = spare.pop().unwrap_or_default();
            b.resize(r.len, 0);
            got.push((*r, ReadBack::Bytes(b)));
        }
    }
    // One batch of reads: a deep-queue volume (RBD) has them all in flight at once.
    let mut reads: Vec<ReadAt<'_>> = got
        .iter_mut()
        .filter_map(|(r, data)| match data {
            ReadBack::Bytes(buf) => Some(ReadAt {
                offset: r.index * chunk,
                buf,
            }),
            ReadBack::Zeros(_) => None,
        })
        .collect();
    vol.read_batch(&mut reads)?;
    drop(reads);
    Ok(got)
}

/// The first disk range (offset, length) of `rd`'s volume that does not hold `reader`'s
/// generation, chunk by chunk against the authenticated index; `None` when it all does.
fn differs_from<S: image_format::Store>(
    rd: &mut Reading<'_>,
    reader: &CaptureReader<S>,
    threads: usize,
    mut sha: Option<&mut sha2::Sha256>,
) -> crate::Result<Option<(u64, usize)>> {
    reread(
        rd,
        |index| match reader.entry(index) {
            Some(image_format::layout::IndexEntry::Zero { chunk_id, .. }) => Ok(*chunk_id),
            Some(image_format::layout::IndexEntry::Stored(l)) => Ok(l.chunk_id),
            None => Err(crate::err!("chunk {index} is not in the capture's index")),
        },
        &reader.chunk_id_key(),
        (reader.disk_size(), reader.chunk_size()),
        threads,
        false,
        // Chunks come in disk order: the volume's SHA-256 as it is read back.
        |r, data| {
            if let Some(sha) = sha.as_deref_mut() {
                sha_update(sha, r.len, data);
            }
        },
    )
}

/// A finished volume a re-run finds (`what`: "Cinder volume ID", "RBD image P/I"; `how`: what
/// says it holds `reader`'s generation), in the RBD image `spec`: read back before it is kept
/// (it was called "verified bit-for-bit" unread, whatever it held since). The line saying it is
/// kept, or the refusal when it no longer holds the generation (changed, or shrunk below the
/// disk: a read past its end was librbd's EINVAL, "reconnect it").
fn keep_if_unchanged<S: image_format::Store>(
    spec: &mgear_volume::RbdSpec,
    reader: &CaptureReader<S>,
    what: &str,
    how: &str,
    sha: Option<&mut sha2::Sha256>,
) -> crate::Result<String> {
    let mut rd = mgear_volume::RbdReader::new(spec);
    let now = rd.size()?;
    keep_read_back(&mut Reading::Reader(&mut rd), now, reader, what, how, sha)
}

/// Where the finished ingest into a `dev:` or NBD target is recorded: by the device's
/// resolved path (a `/dev/disk/by-id` link and its `/dev/sdX` are one record), by the URL.
fn spec_done_path(state_dir: &Path, target: &Target) -> Option<PathBuf> {
    let spec = match target {
        Target::Dev(p) => format!(
            "dev:{}",
            std::fs::canonicalize(p)
                .unwrap_or_else(|_| p.clone())
                .display()
        ),
        Target::Nbd(u) => u.to_string(),
        _ => return None,
    };
    Some(state_dir.join(format!("{}.done", file_name_of(&spec))))
}

/// Whether an ingest on this host finished the generation of manifest `root` into the
/// device at `dev`, by the record it left in `state_dir` ([`spec_done_path`]): the one under
/// this device's name, or any naming this disk by its identity (the same disk attached again
/// under another name, e.g. `/dev/sdc` where it was `/dev/sdb`, or given by another link).
/// A record whose disk is not the one there now (a new, blank disk under the name) is not
/// this device's: that disk was refused as "does not hold it any more" (exit 1), and a
/// re-attached one as holding a partition table. Records an older release made, with no
/// identity, count under their own name only.
fn device_done(state_dir: &Path, dev: &Path, root: &[u8; 32]) -> bool {
    let head = done_text(root, "device\n");
    let now = mgear_volume::device_identity(dev);
    let judge = |text: &str, own: bool| -> bool {
        let Some(rest) = text.strip_prefix(&head) else {
            return false;
        };
        match rest.trim().strip_prefix("identity ") {
            Some(was) => now != "gone" && mgear_volume::same_device(was, &now),
            None => own && rest.trim().is_empty(),
        }
    };
    let own = spec_done_path(state_dir, &Target::Dev(dev.to_path_buf()));
    // Its own name's record first; one of another disk there (this one came back under a
    // name another disk had) leaves the others to look through. One of this disk holding
    // another generation is what it holds last (an older record under another name said
    // it held this one, and the disk was refused as "does not hold it any more", exit 1).
    if let Some(text) = own.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
        if judge(&text, true) {
            return true;
        }
        if device_record(&text)
            .and_then(|(_, was)| was)
            .is_some_and(|was| now != "gone" && mgear_volume::same_device(was, &now))
        {
            return false;
        }
    }
    std::fs::read_dir(state_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".done"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .any(|text| judge(&text, false))
}

/// The manifest root of a finished-ingest record ([`done_text`]) and its lines after the root
/// (what the stamp says of the volume).
fn done_record(text: &str) -> Option<([u8; 32], std::str::Lines<'_>)> {
    let mut lines = text.lines();
    (lines.next()? == "mgear-ingested/2").then_some(())?;
    let root = bytes_from_hex(lines.next()?.strip_prefix("root ")?)?;
    Some((root, lines))
}

/// How an ingest's description names the generation it writes (`Prepare::what`, kept in
/// an EBS snapshot's record): by the first half of its manifest root.
fn root_tag(root: &[u8; 32]) -> String {
    format!("(manifest root {})", &crate::output::hex(root)[..32])
}

/// Of the snapshots `recorded` (`mgear_volume::ebs::recorded_snapshots`), the one an ingest
/// of the generation with manifest root `root` completed: `snap-X` or `snap-X ami-Y`.
pub(crate) fn snapshot_of<'r>(
    recorded: &'r [(String, String)],
    root: &[u8; 32],
) -> Option<&'r str> {
    let tag = root_tag(root);
    recorded
        .iter()
        .find(|(_, what)| what.contains(&tag))
        .map(|(ids, _)| ids.as_str())
}

/// `N` bytes written as exactly `2 * N` hex digits (a manifest root in a record or a report,
/// a record's capture id).
fn bytes_from_hex<const N: usize>(hex: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    for (k, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * k..2 * k + 2)?, 16).ok()?;
    }
    (hex.len() == 2 * N).then_some(out)
}

/// A device's finished-ingest record ([`spec_done_path`]): its manifest root and the identity
/// of the disk it names (`None` in a record an older release made, which has none).
fn device_record(text: &str) -> Option<([u8; 32], Option<&str>)> {
    let (root, mut rest) = done_record(text)?;
    (rest.next()? == "device").then_some(())?;
    Some((root, rest.next().and_then(|l| l.strip_prefix("identity "))))
}

/// A volume this host finished another ingest into (manifest root `other`), given for
/// `reader`'s disk without `--force`: refused, nothing written (exit 2).
fn holds_another<S: image_format::Store>(
    target: &str,
    reader: &mut CaptureReader<S>,
    other: &[u8; 32],
    hint: &str,
) -> crate::Error {
    let what = generation_with_root(reader.store(), other)
        .map(|(n, g)| format!("{n} generation {g}"))
        .unwrap_or_else(|| {
            format!(
                "another capture (manifest root {})",
                &crate::output::hex(other)[..32]
            )
        });
    crate::exit::coded_hint(
        USAGE,
        format!(
            "--target {target} holds {what}, ingested and verified on this host: writing {} \
             generation {} over it destroys that disk; nothing was written",
            reader.name(),
            reader.generation()
        ),
        hint,
    )
}

/// Which capture and generation of the medium has manifest root `root`, if any (a record of
/// an earlier ingest names what it wrote by its root).
fn generation_with_root(
    store: &mut dyn image_format::Store,
    root: &[u8; 32],
) -> Option<(String, u32)> {
    image_format::list_captures(store)
        .unwrap_or_default()
        .into_iter()
        .find_map(|c| {
            let g = c
                .generations
                .iter()
                .find(|g| g.manifest_root.as_ref() == Some(root))?;
            Some((c.name.clone(), g.generation))
        })
}

/// Remove the records of finished ingests into this same device under its other names
/// (`kind` is its record's stamp, `device\nidentity ...`): `done` says what it holds now, and
/// an older record elsewhere said it held what it no longer does.
fn forget_other_records_of(state_dir: &Path, done: &Path, kind: &str) {
    let Some(identity) = kind
        .lines()
        .nth(1)
        .and_then(|l| l.strip_prefix("identity "))
    else {
        return;
    };
    if identity == "gone" {
        return;
    }
    for e in std::fs::read_dir(state_dir).into_iter().flatten().flatten() {
        let path = e.path();
        if path == done || !e.file_name().to_string_lossy().ends_with(".done") {
            continue;
        }
        let same = std::fs::read_to_string(&path).is_ok_and(|t| {
            device_record(&t)
                .and_then(|(_, was)| was)
                .is_some_and(|was| mgear_volume::same_device(was, identity))
        });
        if same {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The manifest root of a finished ingest recorded on this host for the device at `dev` (under
/// its name or by its identity: the disk there now) that is not `root`: another disk
/// ingested into it. `None` when none is recorded, or only `root`'s.
fn device_done_other(state_dir: &Path, dev: &Path, root: &[u8; 32]) -> Option<[u8; 32]> {
    let now = mgear_volume::device_identity(dev);
    if now == "gone" {
        return None;
    }
    let parse = |text: &str| -> Option<[u8; 32]> {
        let (root, was) = device_record(text)?;
        mgear_volume::same_device(was?, &now).then_some(root)
    };
    let own = spec_done_path(state_dir, &Target::Dev(dev.to_path_buf()))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| parse(&t));
    // Its own name's record says what it holds last; a record under another name is
    // consulted only where the own one says nothing of this disk.
    let found = own.or_else(|| {
        std::fs::read_dir(state_dir)
            .ok()?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".done"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .find_map(|t| parse(&t))
    })?;
    (found != *root).then_some(found)
}

/// [`keep_if_unchanged`] of a `dev:` or NBD target an earlier ingest on this host finished
/// (it was refused as "holds an MBR partition table: pass --force", which writes the whole
/// device again).
fn keep_device_if_unchanged<S: image_format::Store>(
    target: &Target,
    reader: &CaptureReader<S>,
    sha: Option<&mut sha2::Sha256>,
) -> crate::Result<String> {
    let (what, how) = (
        format!("--target {target}"),
        "finished by an earlier ingest on this host",
    );
    match target {
        Target::Dev(p) => {
            let (mut rd, now) = mgear_volume::RawReader::open(p)?;
            keep_read_back(&mut Reading::Reader(&mut rd), now, reader, &what, how, sha)
        }
        Target::Nbd(u) => {
            let mut v = mgear_volume::NbdVolume::connect(u)?;
            let now = v.size();
            keep_read_back(&mut Reading::Volume(&mut v), now, reader, &what, how, sha)
        }
        _ => Err(crate::err!(
            "{target} is neither a device nor an NBD export"
        )),
    }
}

/// The body of [`keep_if_unchanged`]: `rd` reads the volume, `now` bytes long.
fn keep_read_back<S: image_format::Store>(
    rd: &mut Reading<'_>,
    now: u64,
    reader: &CaptureReader<S>,
    what: &str,
    how: &str,
    sha: Option<&mut sha2::Sha256>,
) -> crate::Result<String> {
    let disk = reader.disk_size();
    let differs = if now < disk {
        Some((now, usize::try_from(disk - now).unwrap_or(usize::MAX)))
    } else {
        differs_from(rd, reader, threads_for_check(), sha)?
    };
    let (name, g) = (reader.name(), reader.generation());
    if let Some((at, len)) = differs {
        // The volume changed, not the shipment: the class's hint ("the data did not check
        // out: do not use it") pointed at the medium.
        return Err(crate::exit::coded_hint(
            FOUND,
            format!(
                "{what} was {how} as holding {name} generation {g}, but it does not hold it any \
                 more: disk bytes {at}..{} differ (read back now: a machine has run from it \
                 since, or it was changed or marked so by someone else). Nothing was written; \
                 --force writes the capture again over it (what a machine did since is lost), \
                 or ingest into another name",
                at + len as u64
            ),
            "the volume changed since it was ingested (the shipment is not in question): \
             --force writes the capture again over it, or ingest into another name",
        ));
    }
    Ok(format!(
        "{what} already holds {name} generation {g} ({how}, and it reads back bit for bit \
         now): kept, not written again (--force writes it again)"
    ))
}

/// Sealing and hashing threads of a check: one per core.
fn threads_for_check() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// What [`read_batch`] reads from: the volume being written, or a reader of its own.
enum Reading<'a> {
    Volume(&'a mut dyn Volume),
    Reader(&'a mut dyn mgear_volume::VolumeReader),
}

impl Reading<'_> {
    fn reads_as_zeros(&mut self, offset: u64, len: u64) -> bool {
        match self {
            Reading::Volume(v) => v.reads_as_zeros(offset, len),
            Reading::Reader(r) => r.reads_as_zeros(offset, len),
        }
    }

    fn read_batch(&mut self, reads: &mut [ReadAt<'_>]) -> crate::Result<()> {
        match self {
            Reading::Volume(v) => v.read_batch(reads)?,
            Reading::Reader(r) => r.read_batch(reads)?,
        }
        Ok(())
    }
}

/// The first chunk of `got` (index, length) whose keyed id is not the
/// one authenticated; hashed on up to `threads` threads.
fn mismatch_in(
    got: &[(Recheck, ReadBack)],
    key: &image_format::ChunkIdKey,
    threads: usize,
) -> crate::Result<Option<(u64, usize)>> {
    let ok = image_format::parallel::map_in_order(got, threads, |(r, data)| {
        let id = match data {
            ReadBack::Bytes(bytes) => key.id(bytes),
            ReadBack::Zeros(zero) => *zero,
        };
        id == r.want
    })?;
    Ok(got
        .iter()
        .zip(ok)
        .find(|(_, ok)| !*ok)
        .map(|((r, _), _)| (r.index, r.len)))
}

/// `--adapt`: run virt-v2v-in-place on the verified volume.
fn adapt_volume(path: &Path, format: &'static str) -> crate::Result<mgear_boot::AdaptReport> {
    eprintln!(
        "adapting {} with {} (under TCG: this takes minutes)",
        path.display(),
        mgear_boot::adapt::TOOL
    );
    mgear_boot::adapt(path, format).map_err(|e| {
        let what = format!(
            "driver adaptation failed (the verified volume {} is left as ingested, NOT adapted)",
            path.display()
        );
        match e {
            // Kept as what it is (exit 2): the hint tells a guest that cannot be adapted at
            // all from a step to fix and run again.
            mgear_boot::BootError::Usage(_) | mgear_boot::BootError::Unsupported(_) => {
                crate::Error::from(e).context(what)
            }
            _ => coded(IO, format!("{what}: {e}")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `{disk}` target names each disk's volume and its `.partial`, and nothing else: the
    /// report or a key given there was taken for another file and replaced the volume.
    #[test]
    fn a_disk_pattern_names_each_disks_volume() {
        let d = tempfile::tempdir().unwrap();
        let pattern = d.path().join("m-{disk}.raw");
        for (path, named) in [
            ("m-1.raw", true),
            ("m-12.raw.partial", true),
            ("m-.raw", false),
            ("m-1x.raw", false),
            ("m-1.raw.txt", false),
            ("n-1.raw", false),
        ] {
            assert_eq!(
                names_a_disk_of(&pattern, &d.path().join(path)),
                named,
                "{path}"
            );
        }
        // Spelled another way, it is still the same file.
        let other = d.path().join(".").join("m-0.raw");
        assert!(names_a_disk_of(&pattern, &other));
    }

    #[test]
    fn a_boot_report_beside_no_file_is_named_after_its_target() {
        assert_eq!(file_name_of("rbd:volumes/web01"), "rbd_volumes_web01");
        assert_eq!(file_name_of("dev:/dev/sdb"), "dev__dev_sdb");
        assert_eq!(
            file_name_of("nbd+unix:///x?socket=/tmp/a b.sock"),
            "nbd_unix____x_socket__tmp_a_b.sock"
        );
        // Never a hidden file or a way out of the state dir.
        assert_eq!(file_name_of("../../etc"), "_.._etc");
    }

    #[test]
    fn read_back_names_the_first_chunk_that_differs() {
        const C: usize = 64 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol.raw");
        let mut disk = vec![0u8; 5 * C];
        for (i, b) in disk.iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        disk[3 * C..4 * C].fill(0);
        let key =
            image_format::ChunkIdKey::derive(&image_format::DataKey::from_bytes([9; 32]), &[1; 16]);
        let batch: Vec<Recheck> = (0..5u64)
            .map(|i| Recheck {
                index: i,
                len: C,
                want: key.id(&disk[i as usize * C..(i as usize + 1) * C]),
            })
            .collect();
        // A sparse file: chunk 3 is a hole the read-back does not read.
        let prep = Prepare {
            disk_size: disk.len() as u64,
            head_len: C as u64,
            state_dir: dir.path().to_owned(),
            force: false,
            what: "test".into(),
        };
        let mut vol = mgear_volume::FileVolume::create(&path, &prep).unwrap();
        for i in [0usize, 1, 2, 4] {
            vol.write_at((i * C) as u64, &disk[i * C..(i + 1) * C])
                .unwrap();
        }
        assert!(vol.reads_as_zeros(3 * C as u64, C as u64));
        let mut zeros = ZeroIds::new(&key);
        for threads in [1, 2, 3] {
            assert_eq!(
                first_mismatch(&mut vol, &key, &mut zeros, C as u64, &batch, threads).unwrap(),
                None
            );
        }
        // One flipped byte in chunk 2, another in chunk 4: chunk 2 is named.
        vol.write_at(2 * C as u64 + 5, &[0xff]).unwrap();
        vol.write_at(4 * C as u64 + 5, &[0xff]).unwrap();
        for threads in [1, 2, 3] {
            assert_eq!(
                first_mismatch(&mut vol, &key, &mut zeros, C as u64, &batch, threads).unwrap(),
                Some((2, C))
            );
        }
        // A chunk that should hold data but reads as a hole is caught too.
        vol.write_zeroes(C as u64, C as u64).unwrap();
        assert_eq!(
            first_mismatch(&mut vol, &key, &mut zeros, C as u64, &batch[..2], 2).unwrap(),
            Some((1, C))
        );
    }

    /// A capture of `disk` in memory (64 KiB chunks) and its data key.
    fn mem_capture(disk: &[u8]) -> (image_format::store::MemStore, image_format::DataKey) {
        mem_capture_in(disk, image_format::layout::MAX_SEGMENT)
    }

    /// [`mem_capture`] with segments of at most `segment` bytes.
    fn mem_capture_in(
        disk: &[u8],
        segment: u64,
    ) -> (image_format::store::MemStore, image_format::DataKey) {
        let mut store = image_format::store::MemStore::new();
        let mut p = image_format::CaptureParams::new("web01", disk.len() as u64);
        p.chunk_size = 64 * 1024;
        p.max_segment_bytes = segment;
        p.recipients = vec![age::x25519::Identity::generate().to_public()];
        let key = image_format::DataKey::from_bytes([5; 32]);
        let mut w = image_format::CaptureWriter::begin(&mut store, p, Some(key.clone())).unwrap();
        let enc = w.encoder();
        for i in 0..w.chunk_count() {
            let s = (i * 65536) as usize;
            let e = (s + 65536).min(disk.len());
            w.append(enc.encode(i, &disk[s..e]).unwrap()).unwrap();
        }
        w.finish().unwrap();
        (store, key)
    }

    fn reader_of<'a>(
        store: &'a mut image_format::store::MemStore,
        key: &image_format::DataKey,
    ) -> CaptureReader<&'a mut image_format::store::MemStore> {
        CaptureReader::open_with_key(store, "web01", None, key).unwrap()
    }

    fn plan(dir: &Path) -> WritePlan {
        WritePlan {
            name: "web01".into(),
            target: "fake".into(),
            state_dir: dir.to_owned(),
            checkpoint_bytes: 1,
            // Paced (absurdly fast): one chunk per batch, one checkpoint per chunk.
            rate: Some(1e15),
            json: true,
            hold: Finishing::Now,
            record_done: false,
            volume_sha256: true,
            start_over: false,
        }
    }

    #[test]
    fn a_volume_failing_mid_way_resumes_from_what_was_durable() {
        use mgear_volume::FakeVolume;
        const C: usize = 65536;
        let mut disk: Vec<u8> = (0..10 * C + 1000)
            .map(|i| (i * 31 % 253) as u8 + 1)
            .collect();
        disk[3 * C..5 * C].fill(0);
        let (mut store, key) = mem_capture(&disk);
        let dir = tempfile::tempdir().unwrap();

        // Writes go 1, 2, 3 (zeroes), 4 (zeroes), 5: the fifth fails.
        let (fake, data) = FakeVolume::new(disk.len(), Some(5));
        let err = write_volume(
            &plan(dir.path()),
            Box::new(fake),
            reader_of(&mut store, &key),
            None,
            Instant::now(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("injected fault"), "{err:#}");
        assert_eq!(crate::exit::code_of(&err), IO);
        let state = dir.path().join("fake.ingest");
        let slots = Slots::open(&state).unwrap();
        let recorded: Vec<bool> = (0..11).map(|i| slots.id(i).unwrap() != [0; 32]).collect();
        assert_eq!(
            recorded,
            [false, true, true, true, true, false, false, false, false, false, false],
            "the four durable chunks are recorded, the failed one is not"
        );
        // Chunk 0 (the boot sector) was never written.
        assert!(data.lock().unwrap()[..C].iter().all(|&b| b == 0));

        // The same target again: resumed after the four, verified by read-back.
        let (fake, data) = FakeVolume::over(data, None);
        let fake = fake.with_found(Found::Unfinished {
            adopt_without_state: true,
        });
        let (r, _) = write_volume(
            &plan(dir.path()),
            Box::new(fake),
            reader_of(&mut store, &key),
            None,
            Instant::now(),
        )
        .unwrap();
        assert_eq!(r.resumed_chunks, 4);
        assert_eq!(
            r.zero_chunks, 0,
            "the zero chunks were done before the resume"
        );
        assert!(r.verified);
        assert!(*data.lock().unwrap() == disk);
        assert!(!state.exists(), "the state goes once the volume is final");

        // A volume that cannot read back is trusted with what was sent.
        let (fake, data) = FakeVolume::new(disk.len(), None);
        let (r, _) = write_volume(
            &plan(dir.path()),
            Box::new(fake.without_read_back()),
            reader_of(&mut store, &key),
            None,
            Instant::now(),
        )
        .unwrap();
        assert_eq!((r.resumed_chunks, r.zero_chunks), (0, 2));
        assert!(*data.lock().unwrap() == disk);
    }

    #[test]
    fn zero_granules_inside_data_go_as_write_zeroes_to_a_thin_volume() {
        use mgear_volume::FakeVolume;
        const C: usize = 65536;
        const G: usize = 16384;
        let mut disk = sample_disk();
        // Chunk 1: its second granule is zeros; chunk 6: a zero run that
        // covers no whole granule; chunk 8: its last two granules.
        disk[C + G..C + 2 * G].fill(0);
        disk[6 * C + 100..6 * C + G + 100].fill(0);
        disk[8 * C + 2 * G..9 * C].fill(0);
        let (mut store, key) = mem_capture(&disk);
        let expect: Vec<(u64, u64)> = [(C + G, G), (3 * C, C), (4 * C, C), (8 * C + 2 * G, 2 * G)]
            .iter()
            .map(|&(o, l)| (o as u64, l as u64))
            .collect();
        // A volume this run made (a new sparse file or qcow2 image) reads as zeros where it
        // was not written: it gets none of those writes, and holds the disk all the same.
        for (fresh, want) in [(false, expect), (true, Vec::new())] {
            let dir = tempfile::tempdir().unwrap();
            let (fake, data) = FakeVolume::new(disk.len(), None);
            let fake = fake.with_thin_granule(G as u64);
            let fake = if fresh { fake.fresh() } else { fake };
            let zeroed = fake.zeroed();
            let (r, _) = write_volume(
                &plan(dir.path()),
                Box::new(fake),
                reader_of(&mut store, &key),
                None,
                Instant::now(),
            )
            .unwrap();
            assert!(r.verified);
            assert!(*data.lock().unwrap() == disk);
            let mut zeroed = zeroed.lock().unwrap().clone();
            zeroed.sort_unstable();
            assert_eq!(zeroed, want, "fresh: {fresh}");
        }
    }

    #[test]
    fn split_zero_runs_cuts_at_granules_of_the_volume_not_of_the_buffer() {
        let mut data = vec![1u8; 40];
        data[6..30].fill(0);
        let (mut writes, mut zeros) = (Vec::new(), Vec::new());
        // At volume offset 2 with 8-byte granules: 2..8 (ragged), 8..16 and
        // 16..24 zero granules (the run 8..32 holds 24..32 too), 32..42 data.
        split_zero_runs(2, &data, 8, &mut writes, &mut zeros);
        let w: Vec<(u64, usize)> = writes.iter().map(|w| (w.offset, w.data.len())).collect();
        assert_eq!(w, [(2, 6), (32, 10)]);
        assert_eq!(zeros, [(8, 24)]);
        assert!(writes[1].data.iter().all(|&b| b == 1));
        // No granule: one write.
        let (mut writes, mut zeros) = (Vec::new(), Vec::new());
        split_zero_runs(0, &[0u8; 7], 8, &mut writes, &mut zeros);
        assert_eq!((writes.len(), zeros.len()), (1, 0));
    }

    /// Ten 64 KiB chunks and a short eleventh, chunks 3 and 4 all zeros.
    fn sample_disk() -> Vec<u8> {
        const C: usize = 65536;
        let mut disk: Vec<u8> = (0..10 * C + 1000)
            .map(|i| (i * 31 % 253) as u8 + 1)
            .collect();
        disk[3 * C..5 * C].fill(0);
        disk
    }

    fn sha256_hex(b: &[u8]) -> String {
        use sha2::Digest as _;
        let d: [u8; 32] = sha2::Sha256::digest(b).into();
        crate::output::hex(&d)
    }

    #[test]
    fn the_read_back_beside_the_writes_reads_flushed_bytes_and_hashes_in_disk_order() {
        use mgear_volume::FakeVolume;
        let disk = sample_disk();
        let (mut store, key) = mem_capture(&disk);
        let dir = tempfile::tempdir().unwrap();
        // One chunk per batch and no checkpoint before chunk 0: only the
        // writer's flush of each batch lets the reader (which sees flushed
        // bytes only) find the chunk; then the same with one big batch.
        for rate in [Some(1e15), None] {
            let mut p = plan(dir.path());
            p.rate = rate;
            p.checkpoint_bytes = u64::MAX;
            let (fake, data) = FakeVolume::new(disk.len(), None);
            let (r, _) = write_volume(
                &p,
                Box::new(fake.with_concurrent_reader()),
                reader_of(&mut store, &key),
                None,
                Instant::now(),
            )
            .unwrap();
            assert!(r.verified);
            assert_eq!(r.volume_sha256, Some(sha256_hex(&disk)), "rate {rate:?}");
            assert!(*data.lock().unwrap() == disk);
        }
    }

    #[test]
    fn a_reader_that_sees_completed_writes_is_not_preceded_by_a_flush_per_batch() {
        use mgear_volume::FakeVolume;
        let disk = sample_disk();
        let (mut store, key) = mem_capture(&disk);
        let dir = tempfile::tempdir().unwrap();
        // One chunk per batch (9 batches before chunk 0), no checkpoint
        // before the one that makes chunk 0 wait for the rest.
        let mut flushes = Vec::new();
        for direct in [false, true] {
            let mut p = plan(dir.path());
            p.checkpoint_bytes = u64::MAX;
            let (fake, data) = FakeVolume::new(disk.len(), None);
            let fake = match direct {
                true => fake.with_direct_reader(),
                false => fake.with_concurrent_reader(),
            };
            let count = fake.flush_count();
            let (r, _) = write_volume(
                &p,
                Box::new(fake),
                reader_of(&mut store, &key),
                None,
                Instant::now(),
            )
            .unwrap();
            assert!(r.verified);
            assert_eq!(r.volume_sha256, Some(sha256_hex(&disk)), "direct {direct}");
            assert!(*data.lock().unwrap() == disk);
            flushes.push(count.load(std::sync::atomic::Ordering::Relaxed));
        }
        // Durability still comes before chunk 0 and at the end.
        assert!(
            flushes[0] >= 9,
            "a flush before each read-back: {flushes:?}"
        );
        assert!(
            (1..=3).contains(&flushes[1]),
            "only where durability is due: {flushes:?}"
        );
    }

    #[test]
    fn without_volume_sha256_every_byte_is_still_read_back_and_no_digest_reported() {
        use mgear_volume::FakeVolume;
        let disk = sample_disk();
        let (mut store, key) = mem_capture(&disk);
        for beside in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let mut p = plan(dir.path());
            p.rate = None;
            p.volume_sha256 = false;
            let (fake, data) = FakeVolume::new(disk.len(), None);
            let fake = if beside {
                fake.with_concurrent_reader()
            } else {
                fake
            };
            let (r, _) = write_volume(
                &p,
                Box::new(fake),
                reader_of(&mut store, &key),
                None,
                Instant::now(),
            )
            .unwrap();
            assert!(r.verified, "beside {beside}");
            assert_eq!(r.volume_sha256, None, "beside {beside}");
            assert!(*data.lock().unwrap() == disk, "beside {beside}");
        }
    }

    /// Where the volume's storage digests what it holds (RBD's OSDs), the
    /// check beside the writes compares digests instead of reading the bytes
    /// back: units cut through chunks, units stored only up to their last
    /// non-zero byte and units not stored at all pass; a byte the storage
    /// holds wrong is named; `--volume-sha256`, which needs the bytes,
    /// reads them back.
    #[test]
    fn a_volume_that_digests_what_it_stores_is_checked_by_digest() {
        use mgear_volume::FakeVolume;
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        const C: u64 = 65536;
        let disk = sample_disk();
        let (mut store, key) = mem_capture(&disk);
        let run = |unit: u64,
                   sha: bool,
                   corrupt: Option<u64>,
                   refuse: bool,
                   store: &mut image_format::store::MemStore| {
            let dir = tempfile::tempdir().unwrap();
            let mut p = plan(dir.path());
            p.rate = None;
            p.volume_sha256 = sha;
            let asked = Arc::new(AtomicU64::new(0));
            let (fake, data) = FakeVolume::new(disk.len(), None);
            let mut fake = fake
                .with_concurrent_reader()
                .with_digests(unit, asked.clone());
            if let Some(at) = corrupt {
                fake = fake.corrupting_reads(at, 1);
            }
            if refuse {
                fake = fake.refusing_digests();
            }
            let got = write_volume(
                &p,
                Box::new(fake),
                reader_of(store, &key),
                None,
                Instant::now(),
            );
            let data = data.lock().unwrap().clone();
            (got.map(|(r, _)| r), asked.load(Ordering::Relaxed), data)
        };
        for unit in [3 * C, 100_000, 1 << 20] {
            let (r, asked, data) = run(unit, false, None, false, &mut store);
            let r = r.unwrap();
            assert!(r.verified && asked > 0, "unit {unit}: asked {asked}");
            assert!(data == disk, "unit {unit}");
        }
        for (unit, at) in [(3 * C, 2 * C + 7), (100_000, 9 * C + 5), (100_000, 199_999)] {
            let (r, _, _) = run(unit, false, Some(at), false, &mut store);
            let err = r.unwrap_err();
            assert_eq!(crate::exit::code_of(&err), FOUND, "{err:#}");
            let msg = err.to_string();
            let range = msg
                .split("disk bytes ")
                .nth(1)
                .and_then(|m| m.split(' ').next())
                .and_then(|m| m.split_once(".."))
                .map(|(a, b)| (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()))
                .unwrap_or_else(|| panic!("no range in {msg}"));
            assert!(
                range.0 <= at && at < range.1 && range.1 - range.0 <= unit,
                "{msg}"
            );
        }
        let (r, asked, _) = run(3 * C, true, None, false, &mut store);
        let r = r.unwrap();
        assert_eq!(asked, 0, "the SHA-256 of the volume needs its bytes");
        assert_eq!(r.volume_sha256, Some(sha256_hex(&disk)));
        // A storage that refuses to digest is read back instead; what it holds
        // wrong is still caught.
        for corrupt in [None, Some(6 * C + 3)] {
            let (r, asked, data) = run(3 * C, false, corrupt, true, &mut store);
            assert!(asked > 0, "digests were asked for");
            match corrupt {
                None => {
                    assert!(r.unwrap().verified);
                    assert!(data == disk);
                }
                Some(_) => {
                    let err = r.unwrap_err();
                    assert_eq!(crate::exit::code_of(&err), FOUND, "{err:#}");
                    assert!(err.to_string().contains("393216..458752"), "{err}");
                }
            }
        }
    }

    #[test]
    fn a_killed_ingest_resumes_with_the_read_back_beside_the_writes() {
        use mgear_volume::FakeVolume;
        const C: usize = 65536;
        let disk = sample_disk();
        let (mut store, key) = mem_capture(&disk);
        let dir = tempfile::tempdir().unwrap();
        let (fake, data) = FakeVolume::new(disk.len(), Some(5));
        let err = write_volume(
            &plan(dir.path()),
            Box::new(fake.with_concurrent_reader()),
            reader_of(&mut store, &key),
            None,
            Instant::now(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("injected fault"), "{err:#}");
        assert!(data.lock().unwrap()[..C].iter().all(|&b| b == 0));
        // The second run reads back what the first wrote (known by the ids
        // in the resume state) as well as what it writes itself.
        let (fake, data) = FakeVolume::over(data, None);
        let fake = fake
            .with_found(Found::Unfinished {
                adopt_without_state: true,
            })
            .with_concurrent_reader();
        let (r, _) = write_volume(
            &plan(dir.path()),
            Box::new(fake),
            reader_of(&mut store, &key),
            None,
            Instant::now(),
        )
        .unwrap();
        assert_eq!(r.resumed_chunks, 4);
        assert_eq!(r.volume_sha256, Some(sha256_hex(&disk)));
        assert!(*data.lock().unwrap() == disk);

        // A chunk of the first run that now reads back wrong is caught.
        let (fake, _) = FakeVolume::new(disk.len(), Some(5));
        write_volume(
            &plan(dir.path()),
            Box::new(fake.with_concurrent_reader()),
            reader_of(&mut store, &key),
            None,
            Instant::now(),
        )
        .unwrap_err();
        let (fake, _) = FakeVolume::over(data, None);
        let fake = fake
            .with_found(Found::Unfinished {
                adopt_without_state: true,
            })
            .with_concurrent_reader()
            .corrupting_reads(2 * C as u64 + 7, 1);
        let err = write_volume(
            &plan(dir.path()),
            Box::new(fake),
            reader_of(&mut store, &key),
            None,
            Instant::now(),
        )
        .unwrap_err();
        assert_eq!(crate::exit::code_of(&err), FOUND, "{err:#}");
        assert!(err.to_string().contains("131072..196608"), "{err}");
    }

    #[test]
    fn a_volume_that_reads_back_other_bytes_fails_the_ingest_and_never_looks_bootable() {
        use mgear_volume::FakeVolume;
        const C: u64 = 65536;
        let disk = sample_disk();
        let (mut store, key) = mem_capture(&disk);
        // Chunk 1 is written first, chunk 0 (the boot sector) last; chunk 3
        // is a zero chunk (written as zeroes); either way of reading back,
        // with and without the volume's SHA-256 (the compare does not need it).
        for (beside, sha) in [(true, true), (true, false), (false, true), (false, false)] {
            for (bad, range) in [
                (C + 10, "65536..131072"),
                (5, "0..65536"),
                (3 * C, "196608..262144"),
            ] {
                let dir = tempfile::tempdir().unwrap();
                let mut p = plan(dir.path());
                p.rate = None;
                p.volume_sha256 = sha;
                let (fake, data) = FakeVolume::new(disk.len(), None);
                let mut fake = fake.corrupting_reads(bad, 1);
                if beside {
                    fake = fake.with_concurrent_reader();
                }
                let err = write_volume(
                    &p,
                    Box::new(fake),
                    reader_of(&mut store, &key),
                    None,
                    Instant::now(),
                )
                .unwrap_err();
                assert_eq!(crate::exit::code_of(&err), FOUND, "{err:#}");
                assert!(
                    err.to_string().contains(&format!("disk bytes {range} ")),
                    "beside {beside}, byte {bad}: {err}"
                );
                assert!(
                    data.lock().unwrap()[..C as usize].iter().all(|&b| b == 0),
                    "beside {beside}, byte {bad}: the boot sector is not left on the volume"
                );
                assert!(
                    dir.path().join("fake.ingest").exists(),
                    "the target stays incomplete"
                );
            }
        }
    }

    /// A file volume that flips one byte on its disk right after the write
    /// covering it (through a descriptor of its own, synced): what the disk
    /// holds is then not what was written.
    struct FlipOnDisk(mgear_volume::FileVolume, u64);

    impl Volume for FlipOnDisk {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn describe(&self) -> String {
            self.0.describe()
        }
        fn state_key(&self) -> String {
            "flip".into()
        }
        fn found(&self) -> Found {
            self.0.found()
        }
        fn write_at(&mut self, offset: u64, data: &[u8]) -> mgear_volume::Result<()> {
            use std::os::unix::fs::FileExt;
            self.0.write_at(offset, data)?;
            if (offset..offset + data.len() as u64).contains(&self.1) {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(self.0.path())
                    .unwrap();
                let mut b = [0u8];
                f.read_exact_at(&mut b, self.1).unwrap();
                f.write_all_at(&[!b[0]], self.1).unwrap();
                f.sync_all().unwrap();
            }
            Ok(())
        }
        fn write_zeroes(&mut self, offset: u64, len: u64) -> mgear_volume::Result<()> {
            self.0.write_zeroes(offset, len)
        }
        fn flush(&mut self) -> mgear_volume::Result<()> {
            self.0.flush()
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> mgear_volume::Result<()> {
            self.0.read_at(offset, buf)
        }
        fn reads_as_zeros(&mut self, offset: u64, len: u64) -> bool {
            self.0.reads_as_zeros(offset, len)
        }
        fn concurrent_reader(
            &mut self,
        ) -> mgear_volume::Result<Option<Box<dyn mgear_volume::VolumeReader>>> {
            self.0.concurrent_reader()
        }
        fn finish(self: Box<Self>) -> mgear_volume::Result<Finished> {
            Box::new(self.0).finish()
        }
    }

    #[test]
    fn a_file_volume_whose_disk_holds_a_flipped_byte_fails_with_that_chunk() {
        const C: u64 = 65536;
        let disk = sample_disk();
        let (mut store, key) = mem_capture(&disk);
        // A new file volume of the disk's size in a directory of its own (state dir too).
        let file_volume = || {
            let dir = tempfile::tempdir().unwrap();
            let target = dir.path().join("vol.raw");
            let prep = Prepare {
                disk_size: disk.len() as u64,
                head_len: C,
                state_dir: dir.path().to_owned(),
                force: false,
                what: "test".into(),
            };
            let vol = mgear_volume::FileVolume::create(&target, &prep).unwrap();
            (dir, target, vol)
        };
        // A chunk in the middle, the boot sector (written last) and the
        // short last chunk (read back buffered: its length is not aligned).
        for (bad, range) in [
            (C + 10, "65536..131072"),
            (5, "0..65536"),
            (10 * C + 500, "655360..656360"),
        ] {
            let (dir, target, vol) = file_volume();
            let mut p = plan(dir.path());
            p.rate = None;
            p.volume_sha256 = false;
            let err = write_volume(
                &p,
                Box::new(FlipOnDisk(vol, bad)),
                reader_of(&mut store, &key),
                None,
                Instant::now(),
            )
            .unwrap_err();
            assert_eq!(crate::exit::code_of(&err), FOUND, "{err:#}");
            assert!(
                err.to_string().contains(&format!("disk bytes {range} ")),
                "byte {bad}: {err}"
            );
            assert!(!target.exists(), "byte {bad}: the target stays unfinished");
        }
        // Untouched, the same ingest into a file volume verifies.
        let (dir, target, vol) = file_volume();
        let mut p = plan(dir.path());
        p.rate = None;
        let (r, _) = write_volume(
            &p,
            Box::new(vol),
            reader_of(&mut store, &key),
            None,
            Instant::now(),
        )
        .unwrap();
        assert!(r.verified);
        assert_eq!(r.volume_sha256, Some(sha256_hex(&disk)));
        assert!(std::fs::read(&target).unwrap() == disk);
    }

    /// Gaps that place the segments of `reader`'s chunks for which `far`
    /// holds on medium #0 ("A"), and the others nowhere (given).
    fn gaps_where<S: image_format::Store>(
        reader: &CaptureReader<S>,
        far: impl Fn(u64) -> bool,
    ) -> crate::medium::Gaps {
        use image_format::layout::{segment_path, IndexEntry};
        let mut map = image_format::span::SpanMap::default();
        map.members.push(image_format::span::Member {
            ordinal: 0,
            label: "A".into(),
            lost: false,
        });
        let far = (0..reader.chunk_count())
            .filter(|&i| far(i))
            .filter_map(|i| match reader.entry(i) {
                Some(IndexEntry::Stored(l)) => Some((segment_path("web01", 1, l.segment), 0)),
                _ => None,
            })
            .collect();
        crate::medium::Gaps::new(far, map, "fat:B.img").unwrap()
    }

    #[test]
    fn media_arriving_one_by_one_are_ingested_as_they_come_and_chunk_0_goes_last() {
        use mgear_volume::FakeVolume;
        const C: usize = 65536;
        let disk = sample_disk();
        // Two data chunks per segment: chunks 0 and 1 share segment 1 (on
        // medium A, not yet here), the rest are in later segments.
        let (mut store, key) = mem_capture_in(&disk, 2 * C as u64 + 4096);
        for beside in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let fake_of = |fake: FakeVolume| match beside {
                true => fake.with_concurrent_reader(),
                false => fake,
            };
            // First only medium B: everything but chunks 0 and 1.
            let reader = reader_of(&mut store, &key);
            let on_a = |i: u64| i <= 1;
            let gaps = gaps_where(&reader, on_a);
            let (fake, data) = FakeVolume::new(disk.len(), None);
            let err = write_volume(
                &plan(dir.path()),
                Box::new(fake_of(fake)),
                reader,
                Some(&gaps),
                Instant::now(),
            )
            .unwrap_err();
            assert_eq!(crate::exit::code_of(&err), crate::exit::PENDING, "{err:#}");
            let msg = err.to_string();
            assert!(
                msg.contains(
                    "wrote the 7 chunks those hold and its 2 all-zero chunks (on no medium)"
                ) && msg.contains(
                    "2 chunk(s) (128.00 KiB, between disk bytes 0 and 131072) are on medium #0 (A)"
                ),
                "{msg}"
            );
            {
                let d = data.lock().unwrap();
                assert!(
                    d[..2 * C].iter().all(|&b| b == 0),
                    "chunks 0 and 1 wait for A"
                );
                assert!(d[2 * C..] == disk[2 * C..], "B's share is written");
            }
            // Then medium A alone (B's segments are now the ones not here).
            let reader = reader_of(&mut store, &key);
            let gaps = gaps_where(&reader, |i| !on_a(i));
            let (fake, data) = FakeVolume::over(data, None);
            let fake = fake.with_found(Found::Unfinished {
                adopt_without_state: true,
            });
            let (r, _) = write_volume(
                &plan(dir.path()),
                Box::new(fake_of(fake)),
                reader,
                Some(&gaps),
                Instant::now(),
            )
            .unwrap();
            assert_eq!(r.resumed_chunks, 9, "beside {beside}");
            assert_eq!(r.volume_sha256, Some(sha256_hex(&disk)));
            assert!(*data.lock().unwrap() == disk);
            assert!(!dir.path().join("fake.ingest").exists());
        }
    }

    #[test]
    fn a_partial_without_state_is_not_adopted_and_a_small_volume_is_refused() {
        use mgear_volume::FakeVolume;
        let disk = vec![7u8; 3 * 65536];
        let (mut store, key) = mem_capture(&disk);
        let dir = tempfile::tempdir().unwrap();
        let (fake, _) = FakeVolume::new(disk.len(), None);
        let fake = fake.with_found(Found::Unfinished {
            adopt_without_state: false,
        });
        let err = write_volume(
            &plan(dir.path()),
            Box::new(fake),
            reader_of(&mut store, &key),
            None,
            Instant::now(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("refusing to adopt"), "{err}");
        assert_eq!(crate::exit::code_of(&err), USAGE);
        let (small, _) = FakeVolume::new(disk.len() - 1, None);
        let err = write_volume(
            &plan(dir.path()),
            Box::new(small),
            reader_of(&mut store, &key),
            None,
            Instant::now(),
        )
        .unwrap_err();
        assert_eq!(crate::exit::code_of(&err), USAGE, "{err}");
    }

    #[test]
    fn read_back_runs_follow_the_disk_within_4_mib_objects_and_holes_stand_alone() {
        const M: u64 = 1 << 20;
        let check = |index: u64| Check {
            index,
            len: M as usize,
            expect: if index == 6 {
                Expect::Zeros
            } else {
                Expect::Bytes(ChunkBuf::default())
            },
        };
        // Chunks 1..=10 and then 0, as written; 6 is a hole.
        let checks: Vec<Check> = (1..=10).chain([0]).map(check).collect();
        let runs = runs_of(
            checks,
            M,
            |c| matches!(c.expect, Expect::Zeros),
            ChunkBuf::zeroed,
        );
        let shape: Vec<(Vec<u64>, Option<usize>)> = runs
            .iter()
            .map(|r| {
                (
                    r.checks.iter().map(|c| c.index).collect(),
                    r.data.as_ref().map(|d| d.len()),
                )
            })
            .collect();
        let m = M as usize;
        assert_eq!(
            shape,
            vec![
                (vec![1, 2, 3], Some(3 * m)),
                (vec![4, 5], Some(2 * m)),
                (vec![6], None),
                (vec![7], Some(m)),
                (vec![8, 9, 10], Some(3 * m)),
                (vec![0], Some(m)),
            ]
        );
    }

    #[test]
    fn order_puts_chunk_zero_last() {
        let order: Vec<u64> = (0..5).map(|k| chunk_at(k, 5)).collect();
        assert_eq!(order, vec![1, 2, 3, 4, 0]);
        assert_eq!(chunk_at(0, 1), 0);
    }

    #[test]
    fn state_resumes_only_matching_ingests_and_knows_chunks_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        let h = State::header(&[1; 32], 10, 4, 1);
        let mut s = State::open(p.clone(), &h, 3, true, false).unwrap();
        s.record(&[(2, [7; 32]), (1, [8; 32])]).unwrap();
        assert_eq!(s.done_prefix(), 2);
        drop(s);
        let s = State::open(p.clone(), &h, 3, false, false).unwrap();
        assert_eq!(
            (s.done_count(), s.is_done(0), s.is_done(1), s.is_done(2)),
            (2, false, true, true)
        );
        assert_eq!(Slots::open(&p).unwrap().id(2).unwrap(), [7; 32]);
        // Out of write order: chunk 2 alone is no prefix.
        let q = dir.path().join("q");
        let mut s = State::open(q, &h, 3, true, false).unwrap();
        s.record(&[(2, [7; 32])]).unwrap();
        assert_eq!((s.done_count(), s.done_prefix()), (1, 0));
        // Another capture, generation or size is not resumed.
        let other = State::header(&[2; 32], 10, 4, 2);
        let e = State::open(p.clone(), &other, 3, false, false)
            .err()
            .expect("refused");
        assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE, "{e}");
        // The generation the stopped ingest was writing is named, with the option to give.
        assert!(
            e.to_string().contains("generation 1") && e.to_string().contains("`--generation 1`"),
            "{e}"
        );
        assert!(State::open(p.clone(), &h, 4, false, false).is_err());
        // The same generation of another capture: `--generation` is no way on (it went in a
        // circle); both roots are named, and --force starts this one over.
        let same_gen = State::header(&[3; 32], 10, 4, 1);
        let e = State::open(p.clone(), &same_gen, 3, false, false)
            .err()
            .expect("refused");
        let text = e.to_string();
        assert!(
            text.contains("of another capture (manifest root 0101010101010101...")
                && text.contains("this one's 0303030303030303...")
                && !text.contains("`--generation")
                && text.contains("--force"),
            "{text}"
        );
        let s = State::open(p.clone(), &same_gen, 3, false, true).unwrap();
        assert_eq!(s.done_count(), 0, "started over");
        drop(s);
        assert_eq!(
            State::open(p.clone(), &same_gen, 3, false, false)
                .unwrap()
                .done_count(),
            0,
            "the new state is this ingest's"
        );
        assert_eq!(
            State::open(p, &other, 3, true, false).unwrap().done_count(),
            0
        );
    }

    /// `--target dev:DIR` asked for a volume file in the directory, which dev: refuses as
    /// "not a block device"; file: still gets that advice.
    #[test]
    fn a_directory_given_as_a_device_asks_for_a_device() {
        let medium = crate::medium::Where {
            medium: vec!["dir:/nonexistent-medium".into()],
            appliance: Vec::new(),
        };
        let dir = tempfile::tempdir().unwrap();
        let e = refuse_bad_target(&medium, &format!("dev:{}", dir.path().display())).unwrap_err();
        assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE);
        assert!(e.to_string().contains("dev: takes a block device"), "{e}");
        let e = refuse_bad_target(&medium, &format!("file:{}", dir.path().display())).unwrap_err();
        assert!(e.to_string().contains("disk.raw"), "{e}");
    }

    /// `--target dev:/dev/null` was "open for writing by process ... (bash)": a shell holds
    /// it. A character device is never taken for another program's volume.
    #[test]
    fn a_character_device_is_not_called_held_by_another_program() {
        // A process that holds it open for writing, as any shell does.
        let mut holder = std::process::Command::new("sleep")
            .arg("30")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let t = Target::parse("dev:/dev/null", Bare::Refuse).unwrap();
        let held = crate::target::refuse_held_for_test(&t);
        let _ = holder.kill();
        let _ = holder.wait();
        held.unwrap();
    }

    /// `--target file:LINK --force` renamed the verified volume over the link: the volume
    /// landed on the link's file system and the file it named was left as it was.
    #[test]
    fn a_symlink_is_never_a_file_target() {
        let medium = crate::medium::Where {
            medium: vec!["dir:/nonexistent-medium".into()],
            appliance: Vec::new(),
        };
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.raw");
        std::fs::write(&real, b"kept").unwrap();
        let link = dir.path().join("web01.raw");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        for kind in ["file", "qcow2"] {
            let e = refuse_bad_target(&medium, &format!("{kind}:{}", link.display())).unwrap_err();
            assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE, "{e}");
            let msg = e.to_string();
            assert!(msg.contains("is a symbolic link"), "{msg}");
            let real = std::fs::canonicalize(&real).unwrap();
            assert!(
                msg.contains(&format!("--target {kind}:{}", real.display())),
                "{msg}"
            );
        }
        // One that names nothing is said so, with nothing to suggest.
        let dangling = dir.path().join("gone.raw");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        let e = refuse_bad_target(&medium, &format!("file:{}", dangling.display())).unwrap_err();
        assert!(e.to_string().contains("which does not exist"), "{e}");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&real).unwrap(), b"kept");
    }

    /// `--target file:X.partial --force` (what "X.partial exists: pass --force" led to) wrote
    /// into another ingest's unfinished volume, which then reported the other capture verified.
    #[test]
    fn a_partial_name_is_never_a_target() {
        let medium = crate::medium::Where {
            medium: vec!["dir:/nonexistent-medium".into()],
            appliance: Vec::new(),
        };
        for spec in ["file:/tmp/x/web01.raw.partial", "qcow2:web01.qcow2.partial"] {
            let e = refuse_bad_target(&medium, spec).unwrap_err();
            assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE, "{spec}: {e}");
            assert!(e.to_string().contains("without .partial"), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let ok = format!("file:{}/web01.raw", dir.path().display());
        refuse_bad_target(&medium, &ok).unwrap();
        // Its directory missing: said by that directory, nothing created.
        let e = refuse_bad_target(&medium, "file:/tmp/x-nonexistent/web01.raw").unwrap_err();
        assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE);
        assert!(
            e.to_string()
                .contains("the directory /tmp/x-nonexistent does not exist"),
            "{e}"
        );
    }

    /// A file name with no room for `.partial` is refused up front, by its length (it failed
    /// after the trust checks with "File name too long" and the generic hint).
    #[test]
    fn a_target_name_with_no_room_for_partial_is_refused() {
        let medium = crate::medium::Where {
            medium: vec!["dir:/nonexistent-medium".into()],
            appliance: Vec::new(),
        };
        let long = format!("file:/tmp/{}.raw", "x".repeat(250));
        let e = refuse_bad_target(&medium, &long).unwrap_err();
        assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE, "{e}");
        assert!(e.to_string().contains("at most 247 bytes"), "{e}");
        refuse_bad_target(&medium, &format!("file:/tmp/{}", "x".repeat(247))).unwrap();
    }

    /// A directory as the target names a file in it as the example, one slash apart
    /// (`out/` gave `out//disk.raw`).
    #[test]
    fn a_directory_target_names_a_file_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let medium = crate::medium::Where {
            medium: vec!["dir:/nonexistent-medium".into()],
            appliance: Vec::new(),
        };
        let d = format!("{}/", dir.path().display());
        for (spec, file) in [
            (format!("file:{d}"), "disk.raw"),
            (format!("qcow2:{d}"), "disk.qcow2"),
        ] {
            let e = refuse_bad_target(&medium, &spec).unwrap_err();
            assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE, "{spec}: {e}");
            assert!(e.to_string().contains(&format!("(e.g. {d}{file})")), "{e}");
        }
    }
}
