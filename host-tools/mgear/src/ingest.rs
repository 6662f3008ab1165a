//! `mgear ingest`: verify, decrypt and write a capture onto a volume.
//!
//! ```text
//! mgear ingest --medium fat:/dev/sdb --name web01 --identity target.key --target file:web01.raw
//! mgear ingest ... --target qcow2:web01.qcow2      # needs qemu-img (Debian: qemu-utils)
//! mgear ingest ... --target dev:/dev/vdb          # a cloud volume attached to this host
//! mgear ingest ... --target libvirt:mgear/web01    # a volume in a libvirt storage pool
//! mgear ingest ... --target file:web01.raw --boot --wait-for 'login:' --timeout 300
//! mgear ingest ... --target file:web01.raw --adapt --boot --boot-bus virtio
//! ```
//!
//! `libvirt:POOL/NAME` ingests into a raw file in the state dir (with every
//! check a `file:` target gets), uploads it as a new volume of POOL on the
//! system libvirt daemon (`qemu:///system`, see `scripts/libvirtd.sh`) and
//! deletes the file. An existing volume is only replaced with `--force`.
//!
//! `--boot` then proves the ingested volume boots (local QEMU, or a libvirt
//! domain for `libvirt:`), always with the guest's writes discarded so the
//! volume stays exactly what was verified. The boot report is kept next to the
//! volume (`VOL.boot-report.json`; in the state dir for `libvirt:` and as
//! `./mgear-boot-report.json` for `dev:`), and the exit code is 1 if it did not boot.
//! `--boot-bus` picks the disk bus (default `auto`: virtio unless the guest's
//! initramfs visibly lacks it).
//!
//! `--adapt` (driver adaptation) runs `virt-v2v-in-place` (Debian package
//! `virt-v2v`; see `mgear_boot::adapt`) on the volume after the read-back check
//! and before `--boot` (and before a `libvirt:` upload or NBD copy), so the
//! guest boots on virtio: it changes the volume, which is then no longer the
//! captured disk bit for bit, by design. A missing `virt-v2v-in-place` is
//! reported before anything is decrypted. If the adaptation fails the verified
//! volume stays in place, unadapted, and the message says so.
//!
//! Every chunk is authenticated as it is read (the keyed reader checks
//! record hash, position, AEAD and keyed chunk id against the index, whose
//! digest the manifest MAC covers). Zero chunks are not written: file
//! targets are sparse, and a device region is only written if it does not
//! already read as zeros. At the end the whole volume is read back and
//! compared with what was authenticated, chunk by chunk.
//!
//! A target never looks complete before it is:
//! - `file:`/`qcow2:` targets are written as `NAME.partial` and renamed at the end;
//! - `dev:` targets get chunk 0 (partition table, boot sector) written last,
//!   and a marker `<state-dir>/<dev>.mgear-incomplete` exists until the
//!   read-back check passed.
//!
//! Decrypted data never reaches another user: the `.partial` (and the
//! volume it becomes), the state dir (0700), the state file and the device
//! marker are created new, 0600, never through a symlink
//! (`image_format::private`); a `.partial` without its state file is
//! refused, not adopted.
//!
//! Resume: progress is recorded in a state file (`--state-dir`, default
//! `$XDG_STATE_HOME/mgear/ingest`). After an interruption, re-run the same
//! command: it continues after the last synced batch.
//!
//! # State file layout (`<state-dir>/<target>.ingest`, little-endian)
//!
//! ```text
//! 0   8  magic "MGINGST2"
//! 8   32 manifest root hash of the generation being ingested (blake3, FORMAT.md)
//! 40  8  disk size in bytes
//! 48  4  chunk size in bytes
//! 52  4  generation
//! 56  8  reserved (0)
//! 64  .. one 32-byte keyed chunk id per finished chunk, in write order
//!        (chunks 1, 2, ..., n-1, then 0): the index's id of the plaintext
//!        written (blake3 keyed with the capture's chunk-id key), which the
//!        reader checked when it authenticated the chunk
//! ```
//!
//! Hashes are appended only after the target data they describe was synced,
//! so the count of whole entries is the verified progress; a torn last entry
//! is ignored.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use image_format::{CaptureReader, ChunkData};
use serde::Serialize;

use mgear_boot::libvirt::DEFAULT_CONN;
use mgear_boot::{LibvirtTarget, VolumeRef};

use crate::boot_cmd::{self, BootOptions, Resolved};
use crate::exit::{coded, usage, FOUND, IO, OK, USAGE};
use crate::progress::{self, Progress};
use crate::units::human_bytes;

const STATE_MAGIC: &[u8; 8] = b"MGINGST2";
const STATE_HEADER: u64 = 64;

/// Arguments of `mgear ingest`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub medium: crate::medium::Where,
    /// Capture name.
    #[arg(long)]
    pub name: String,
    /// Target identity (secret key from `mgear keygen`).
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// Passphrase file (if the capture was made with one).
    #[arg(long, conflicts_with = "identity")]
    pub passphrase_file: Option<PathBuf>,
    /// Where to write: file:PATH (sparse raw), qcow2:PATH, dev:/dev/DEVICE, or libvirt:POOL/NAME.
    #[arg(long)]
    pub target: String,
    /// Generation to ingest [default: newest finished].
    #[arg(long)]
    pub generation: Option<u32>,
    /// Where resume state and device markers live [default: $XDG_STATE_HOME/mgear/ingest].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Replace an existing target file (or libvirt volume).
    #[arg(long)]
    pub force: bool,
    /// After the ingest, boot the volume (guest writes discarded) and prove it came up.
    #[arg(long)]
    pub boot: bool,
    /// Regex that proves the boot when it appears on the serial console.
    #[arg(long, default_value = "login:|MGEAR-BOOT-OK", requires = "boot")]
    pub wait_for: String,
    /// Seconds to wait for the regex.
    #[arg(long, default_value_t = 300, requires = "boot")]
    pub timeout: u64,
    /// Disk bus for --boot: virtio, ide, sata, nvme or auto.
    #[arg(long, default_value = "auto", requires = "boot")]
    pub boot_bus: String,
    /// Make the guest boot on virtio: run virt-v2v-in-place on the verified
    /// volume (Debian: apt-get install virt-v2v), before --boot.
    #[arg(long)]
    pub adapt: bool,
    /// Ingest even without valid seal/arrival attestations of an appliance
    /// capture (loud warning). Trust still needs a pinned key (--trust).
    #[arg(long)]
    pub allow_unsealed: bool,
    /// Pinned trust: --trust, --trust-appliance, --allow-untrusted, --attestations, --expect-generation.
    #[command(flatten)]
    pub trust: crate::trust::TrustArgs,
    /// Hold the average write rate, e.g. 100MiB/s (spare a shared storage backend).
    #[arg(long)]
    pub rate_limit: Option<String>,
    /// Sync and record progress after this much data (tests use small values).
    #[arg(long, hide = true, default_value = "64MiB")]
    pub checkpoint_bytes: String,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also write a ticket-grade report: FILE (JSON) and FILE with `.txt` (summary).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

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
    pub seconds: f64,
    pub mb_per_s: f64,
    /// Host path of the uploaded volume (`libvirt:` targets).
    pub volume: Option<String>,
    /// Did the volume boot (`--boot` only)?
    pub booted: Option<bool>,
    /// Where the boot report was written (`--boot` only).
    pub boot_report: Option<String>,
    /// What the driver adaptation did (`--adapt` only).
    pub adapt: Option<mgear_boot::AdaptReport>,
}

/// A parsed `--target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    File(PathBuf),
    Qcow2(PathBuf),
    Dev(PathBuf),
    Libvirt(LibvirtTarget),
    /// Any NBD export (`nbd://HOST:PORT/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`):
    /// qemu-nbd or nbdkit serving rbd, vmdk, a cloud volume, ...
    Nbd(mgear_nbd::NbdUrl),
}

impl Target {
    /// Parse `file:`, `qcow2:`, `dev:` or `libvirt:`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        if s.starts_with("nbd://") || s.starts_with("nbd+unix://") {
            return s.parse().map(Target::Nbd).map_err(|e| {
                usage(format!(
                    "bad NBD target {s:?}: {e} (nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH)"
                ))
            });
        }
        if let Some(t) = LibvirtTarget::parse_prefixed(s) {
            Ok(Target::Libvirt(t.map_err(boot_cmd::lib_err)?))
        } else if let Some(p) = s.strip_prefix("file:") {
            Ok(Target::File(p.into()))
        } else if let Some(p) = s.strip_prefix("qcow2:") {
            Ok(Target::Qcow2(p.into()))
        } else if let Some(p) = s.strip_prefix("dev:") {
            Ok(Target::Dev(p.into()))
        } else {
            Err(usage(format!(
                "--target {s}: say which kind: file:PATH (raw image), qcow2:PATH, dev:/dev/DEVICE or libvirt:POOL/NAME"
            )))
        }
    }

    /// The file or device written; for `libvirt:` the raw file in the state
    /// dir that is uploaded afterwards.
    fn path(&self, sdir: &Path) -> PathBuf {
        match self {
            Target::File(p) | Target::Qcow2(p) | Target::Dev(p) => p.clone(),
            Target::Libvirt(t) => sdir.join(format!("libvirt_{}_{}.raw", t.pool, t.name)),
            Target::Nbd(u) => {
                let h = blake3::hash(u.to_string().as_bytes());
                sdir.join(format!("nbd_{}.raw", &h.to_hex()[..16]))
            }
        }
    }
}

/// Fail early, before any decryption, if the daemon or pool is missing or the
/// volume exists (without `--force`). Returns the volume to replace, if any.
fn libvirt_precheck(t: &LibvirtTarget, force: bool) -> anyhow::Result<Option<VolumeRef>> {
    crate::tools::require("virsh", "libvirt-clients")?;
    let out = Command::new("virsh")
        .args(["-c", DEFAULT_CONN, "pool-info", &t.pool])
        .output()
        .context("running virsh")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if let Some(why) = boot_cmd::libvirtd_unreachable() {
            return Err(coded(
                IO,
                format!(
                    "libvirtd is not reachable at {DEFAULT_CONN} ({why}): start it: scripts/libvirtd.sh (or `libvirtd -d` as root)"
                ),
            ));
        }
        return Err(usage(format!(
            "libvirt pool {} not found on {DEFAULT_CONN} ({}): scripts/libvirtd.sh creates the pool `mgear`",
            t.pool,
            err.trim()
        )));
    }
    match VolumeRef::lookup(DEFAULT_CONN, &t.pool, &t.name) {
        Ok(v) if force => Ok(Some(v)),
        Ok(_) => Err(usage(format!(
            "volume {} already exists in pool {}: pass --force to replace it",
            t.name, t.pool
        ))),
        Err(_) => Ok(None),
    }
}

fn state_dir(arg: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = match arg {
        Some(d) => d,
        None => match std::env::var_os("XDG_STATE_HOME").filter(|s| !s.is_empty()) {
            Some(s) => PathBuf::from(s).join("mgear/ingest"),
            None => PathBuf::from(std::env::var_os("HOME").ok_or_else(|| {
                usage("neither XDG_STATE_HOME nor HOME is set: pass --state-dir DIR")
            })?)
            .join(".local/state/mgear/ingest"),
        },
    };
    image_format::private::create_dir(&dir)
        .with_context(|| format!("creating state dir {} (0700)", dir.display()))?;
    Ok(dir)
}

/// A file name for `path` inside the state dir.
fn state_key(path: &Path) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    abs.to_string_lossy()
        .trim_start_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The order chunks are written in: 1..n, then 0 (the boot sector last).
fn chunk_at(k: u64, count: u64) -> u64 {
    if k + 1 == count {
        0
    } else {
        k + 1
    }
}

struct State {
    file: File,
    path: PathBuf,
    done: u64,
}

impl State {
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

    /// Open the state for this ingest: resume a matching one, or start fresh
    /// (`fresh` = no partial target exists, so old state is meaningless).
    fn open(path: PathBuf, header: &[u8], fresh: bool) -> anyhow::Result<Self> {
        if !fresh {
            if let Some(mut f) = open_private(&path, "ingest state")? {
                let mut h = vec![0u8; header.len()];
                let len = f.seek(SeekFrom::End(0))?;
                f.seek(SeekFrom::Start(0))?;
                if len >= STATE_HEADER && f.read_exact(&mut h).is_ok() && h == header {
                    let done = (len - STATE_HEADER) / 32;
                    f.set_len(STATE_HEADER + done * 32)?;
                    return Ok(State {
                        file: f,
                        path,
                        done,
                    });
                }
                bail!(
                    "{} records an unfinished ingest of a different capture or generation into this target: \
                     remove it and the partial target to start over",
                    path.display()
                );
            }
        }
        // Old state for a target that no longer exists is meaningless; a
        // symlink there is someone else's doing and is left alone.
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing stale ingest state {}", path.display()))?;
        }
        let mut f = image_format::private::create(&path)
            .with_context(|| format!("creating ingest state {} (new, 0600)", path.display()))?;
        f.write_all(header)?;
        f.sync_all()?;
        Ok(State {
            file: f,
            path,
            done: 0,
        })
    }

    fn append(&mut self, hashes: &[u8]) -> anyhow::Result<()> {
        self.file
            .seek(SeekFrom::Start(STATE_HEADER + self.done * 32))?;
        self.file.write_all(hashes)?;
        self.file.sync_data()?;
        self.done += (hashes.len() / 32) as u64;
        Ok(())
    }
}

/// Open an existing file of ours read-write, never through a symlink;
/// `None` if there is nothing at `path`.
fn open_private(path: &Path, what: &str) -> anyhow::Result<Option<File>> {
    match image_format::private::open_existing(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if image_format::private::is_symlink_refusal(&e) => Err(usage(format!(
            "{what} {} is a symlink: refusing to write through it (someone may have planted it); \
             remove it and run again",
            path.display()
        ))),
        Err(e) => Err(anyhow::Error::new(e).context(format!("opening {what} {}", path.display()))),
    }
}

/// Run `mgear ingest`.
pub fn run(args: Args) -> anyhow::Result<i32> {
    crate::signals::install();
    // A bad --boot-bus must be reported before a long ingest, not after it.
    let bus = args
        .boot_bus
        .parse::<mgear_boot::Bus>()
        .map_err(boot_cmd::lib_err)?;
    let mut r = ingest(&args)?;
    let mut code = OK;
    if args.boot {
        code = boot_volume(&args, bus, &mut r)?;
    }
    if let Some(p) = &args.report {
        crate::report::write(p, &crate::report::ingest(&r, &args.medium.describe())?)?;
    }
    if args.json {
        // `ok` is false when --boot did not prove the boot (exit 1).
        crate::output::emit_ok(code == OK, &r)?;
    } else {
        println!(
            "ingested {} generation {} into {}: verified bit-for-bit against what was authenticated",
            r.name, r.generation, r.target
        );
        progress::line("disk size", r.disk_size);
        progress::line("written", r.bytes_written);
        println!(
            "  {:<14} {} chunks, {} zero (not written){}",
            "chunks",
            r.chunks,
            r.zero_chunks,
            if r.resumed_chunks > 0 {
                format!(", {} done before resume", r.resumed_chunks)
            } else {
                String::new()
            }
        );
        println!(
            "  {:<14} {:>10.1} MB/s ({:.1} s)",
            "speed", r.mb_per_s, r.seconds
        );
        if let Some(v) = &r.volume {
            println!("  {:<14} {v}", "volume");
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
        if let (Some(b), Some(p)) = (r.booted, &r.boot_report) {
            println!(
                "  {:<14} {} (report {p})",
                "boot",
                if b { "booted" } else { "did NOT boot" }
            );
        }
    }
    Ok(code)
}

/// `--boot`: boot what was just ingested; 0 booted, 1 not.
fn boot_volume(args: &Args, bus: mgear_boot::Bus, r: &mut Report) -> anyhow::Result<i32> {
    let resolved = boot_cmd::resolve(&args.target)?;
    let report_path = match &resolved {
        Resolved::Libvirt(v) => state_dir(args.state_dir.clone())?
            .join(format!("libvirt_{}_{}.boot-report.json", v.pool, v.name)),
        Resolved::Local(_) => resolved.default_report_path(),
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
    saved.map_err(boot_cmd::lib_err)?;
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

/// Do the ingest.
pub fn ingest(args: &Args) -> anyhow::Result<Report> {
    let started = Instant::now();
    let target = Target::parse(&args.target)?;
    let unlock =
        crate::verify::unlock_from(args.identity.as_deref(), args.passphrase_file.as_deref())?
            .ok_or_else(|| {
                usage("ingest needs the key: --identity TARGET.key or --passphrase-file FILE")
            })?;
    if let Target::Qcow2(_) = target {
        crate::tools::require("qemu-img", "qemu-utils")?;
    }
    if args.adapt {
        // Say what to install before spending time on the ingest.
        mgear_boot::adapt::find_adapter().map_err(boot_cmd::lib_err)?;
    }
    let replace = match &target {
        Target::Libvirt(t) => libvirt_precheck(t, args.force)?,
        _ => None,
    };
    let policy = args.trust.policy(args.allow_unsealed)?;
    let sdir = state_dir(args.state_dir.clone())?;
    let mut medium = args.medium.open_read_only()?;
    let verdict = crate::appliance::ingest_gate(
        args.medium.appliance.as_deref(),
        args.trust.attestations.as_deref(),
        medium.store(),
        &args.name,
        args.generation,
        &policy,
    )
    .map_err(|e| {
        let code = crate::exit::classified(&e).unwrap_or(FOUND);
        coded(code, format!("ingest refused: {e:#}"))
    });
    let verdict = match verdict {
        Ok(v) => v,
        // A name that is not on the medium is a usage error, not a refusal.
        Err(e) => match image_format::list_captures(medium.store()) {
            Ok(caps) if !caps.iter().any(|c| c.name == args.name) => {
                let names: Vec<&str> = caps.iter().map(|c| c.name.as_str()).collect();
                return Err(crate::exit::coded_hint(
                    crate::exit::USAGE,
                    format!(
                        "there is no capture {:?} on {} (captures: {})",
                        args.name,
                        args.medium.describe(),
                        if names.is_empty() {
                            "none".into()
                        } else {
                            names.join(", ")
                        }
                    ),
                    "`mgear inspect --medium ...` lists the captures; pass one with --name",
                ));
            }
            _ => return Err(e),
        },
    };
    crate::report::note_trust(&verdict.trusted_by, &verdict.warnings);
    if !verdict.trusted_by.is_empty() {
        eprintln!(
            "mgear: generation {} is signed by pinned {}",
            verdict.generation,
            verdict.trusted_by.join(", ")
        );
    }
    let reader = CaptureReader::open(medium.store(), &args.name, args.generation, &unlock)?;
    crate::report::note_manifest(reader.manifest());
    let mut report = write_volume(args, &target, &sdir, reader, started)?;
    medium.close()?;
    if args.adapt {
        report.adapt = Some(adapt_volume(&target, &sdir)?);
    }
    if let Target::Nbd(u) = &target {
        let raw = target.path(&sdir);
        let copied = copy_to_nbd(u, &raw);
        // As for libvirt: the verified bytes are on the export now, or a
        // re-run starts over; the temporary copy must not pile up.
        std::fs::remove_file(&raw)
            .with_context(|| format!("removing temporary volume {}", raw.display()))?;
        copied?;
    }
    if let Target::Libvirt(t) = &target {
        let raw = target.path(&sdir);
        let uploaded = (|| {
            if let Some(old) = &replace {
                old.delete()
                    .map_err(|e| boot_cmd::libvirt_err(e, "deleting the old volume"))?;
            }
            upload_volume(t, &raw)
        })();
        // The verified bytes now live in the pool (or the upload failed and a
        // re-run starts over): either way the temporary copy must not pile up.
        std::fs::remove_file(&raw)
            .with_context(|| format!("removing temporary volume {}", raw.display()))?;
        report.volume = Some(uploaded?.path.display().to_string());
    }
    Ok(report)
}

fn write_volume<S: image_format::Store>(
    args: &Args,
    target: &Target,
    sdir: &Path,
    mut reader: CaptureReader<S>,
    started: Instant,
) -> anyhow::Result<Report> {
    let size = reader.disk_size();
    let chunk = reader.chunk_size();
    let count = reader.chunk_count();
    let generation = reader.generation();
    let root = *blake3::hash(&reader.manifest().signed_bytes()).as_bytes();
    let header = State::header(&root, size, chunk, generation);
    let final_path = target.path(sdir);

    // Where the raw bytes go.
    let (work_path, is_dev) = match target {
        Target::File(_) | Target::Libvirt(_) | Target::Nbd(_) => {
            (with_suffix(&final_path, ".partial"), false)
        }
        Target::Qcow2(p) => (with_suffix(p, ".raw.partial"), false),
        Target::Dev(p) => (p.clone(), true),
    };
    // A leftover libvirt temporary file is ours to replace.
    let ours = matches!(target, Target::Libvirt(_) | Target::Nbd(_));
    if !is_dev && !ours && final_path.exists() && !args.force {
        return Err(usage(format!(
            "{} exists: pass --force to replace it",
            final_path.display()
        )));
    }
    if is_dev {
        let md = std::fs::metadata(&work_path)
            .with_context(|| format!("target device {}", work_path.display()))?;
        if !md.file_type().is_block_device() {
            return Err(usage(format!(
                "{} is not a block device: use file:PATH for image files",
                work_path.display()
            )));
        }
    }
    let dev_name = final_path
        .file_name()
        .map_or_else(|| "target".into(), |n| n.to_string_lossy().into_owned());
    let marker = sdir.join(format!("{dev_name}.mgear-incomplete"));
    let state_path = sdir.join(format!("{}.ingest", state_key(&final_path)));
    // lstat, not stat: a dangling symlink counts as something being there.
    let present = |p: &Path| std::fs::symlink_metadata(p).is_ok();
    let fresh = if is_dev {
        !present(&marker)
    } else {
        !present(&work_path)
    };
    if !is_dev && !fresh && !present(&state_path) {
        // Without its state nothing says what this file holds or who wrote it.
        return Err(usage(format!(
            "{} exists but its ingest state {} does not: refusing to adopt a partial volume \
             nothing vouches for; remove {} and run again",
            work_path.display(),
            state_path.display(),
            work_path.display()
        )));
    }
    let mut state = State::open(state_path, &header, fresh)?;

    // Decrypted data goes only into a file this run created (0600, O_EXCL,
    // no symlinks) or one it created earlier, reopened without following links.
    let mut vol = if is_dev {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&work_path)
            .with_context(|| format!("opening target {}", work_path.display()))?
    } else if fresh {
        image_format::private::create(&work_path)
            .with_context(|| format!("creating target {} (new, 0600)", work_path.display()))?
    } else {
        open_private(&work_path, "partial target")?
            .ok_or_else(|| usage(format!("{} vanished", work_path.display())))?
    };
    let vol_len = vol.seek(SeekFrom::End(0))?;
    if is_dev {
        if vol_len < size {
            return Err(usage(format!(
                "device {} is {} but the disk is {}: attach a volume of at least {size} bytes",
                work_path.display(),
                human_bytes(vol_len),
                human_bytes(size)
            )));
        }
        if fresh {
            image_format::private::create(&marker)
                .and_then(|mut m| m.write_all(format!("mgear ingest of capture {} generation {generation} into {} is incomplete: do not use this volume\n", args.name, work_path.display()).as_bytes()))
                .with_context(|| format!("writing marker {}", marker.display()))?;
            // Whatever the device held before must not look like a bootable disk meanwhile.
            let first = image_format::layout::chunk_len(size, chunk, 0) as usize;
            vol.write_all_at(&vec![0u8; first], 0)?;
            vol.sync_data()?;
        }
    } else if vol_len != size {
        // A new partial file: sparse, all zeros.
        vol.set_len(size)?;
    }

    let resumed = state.done;
    let batch_limit = crate::units::parse_size(&args.checkpoint_bytes)?.max(1);
    let mut limiter = args
        .rate_limit
        .as_deref()
        .map(crate::units::parse_rate)
        .transpose()?
        .map(|r| crate::ratelimit::RateLimiter::new(r, u64::from(chunk)));
    let bar = Progress::new("ingest", size, args.json);
    let mut written = 0u64;
    let mut zeros = 0u64;
    let mut batch_hashes = Vec::new();
    let mut batch_bytes = 0u64;
    let mut zero_buf = Vec::new();
    let id_key = reader.chunk_id_key();
    let mut zero_ids = ZeroIds::new(&id_key);
    let mut done_bytes = 0u64;
    for k in 0..state.done.min(count) {
        done_bytes += u64::from(image_format::layout::chunk_len(
            size,
            chunk,
            chunk_at(k, count),
        ));
    }
    bar.start_at(done_bytes);
    // Records are authenticated in batches on every core (see
    // `CaptureReader::read_chunks`), then written in order.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    // Rate-limited ingests go chunk by chunk, so the limiter paces every
    // chunk as it is read (a batch would be one burst).
    let batch_chunks = if limiter.is_some() {
        1
    } else {
        ((16u64 << 20) / u64::from(chunk)).max(threads as u64)
    };
    let mut next_k = state.done;
    let (vol_ref, state_ref) = (&vol, &mut state);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        // Syncs run beside the next batches' reads, decryption and writes: each
        // message is "make the volume durable, then record these chunks done",
        // so the state never claims a chunk before its bytes are on disk.
        let (sync_tx, sync_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
        let (ack_tx, ack_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        scope.spawn(move || {
            for hashes in sync_rx {
                let r = vol_ref
                    .sync_data()
                    .map_err(anyhow::Error::from)
                    .and_then(|()| state_ref.append(&hashes));
                let failed = r.is_err();
                if ack_tx.send(r).is_err() || failed {
                    return;
                }
            }
        });
        let mut in_flight = 0usize;
        // Waits for every queued sync; the first failure is the error.
        let settle = |in_flight: &mut usize| -> anyhow::Result<()> {
            while *in_flight > 0 {
                ack_rx
                    .recv()
                    .map_err(|_| anyhow::anyhow!("the volume sync thread stopped"))??;
                *in_flight -= 1;
            }
            Ok(())
        };
        while next_k < count {
            if crate::signals::stop_requested() {
                // Ctrl-C / SIGTERM: record what is durable, then say how to go on.
                if sync_tx.send(std::mem::take(&mut batch_hashes)).is_ok() {
                    in_flight += 1;
                }
                settle(&mut in_flight)?;
                return Err(crate::signals::stopped(done_bytes, size));
            }
            let ks: Vec<u64> = (next_k..count.min(next_k + batch_chunks)).collect();
            next_k += ks.len() as u64;
            let indices: Vec<u64> = ks.iter().map(|&k| chunk_at(k, count)).collect();
            if let Some(l) = limiter.as_mut() {
                let bytes: u64 = indices
                    .iter()
                    .map(|&i| u64::from(image_format::layout::chunk_len(size, chunk, i)))
                    .sum();
                l.acquire(bytes);
            }
            let datas = reader.read_chunks(&indices, threads)?;
            for ((k, index), data) in ks.into_iter().zip(indices).zip(datas) {
                let len = image_format::layout::chunk_len(size, chunk, index) as usize;
                let offset = index * u64::from(chunk);
                if k + 1 == count {
                    // Chunk 0 (the boot sector) goes last, once all else is durable.
                    settle(&mut in_flight)?;
                }
                // The id the reader just checked this chunk's plaintext against.
                let id = *reader
                    .entry(index)
                    .ok_or_else(|| anyhow::anyhow!("chunk {index} has no index entry"))?
                    .chunk_id();
                match data {
                    ChunkData::Zero { len } => {
                        zeros += 1;
                        let len = len as usize;
                        if zero_buf.len() < len {
                            zero_buf.resize(len, 0);
                        }
                        // File targets are sparse: nothing to write. A device is only
                        // written where it does not already read as zeros.
                        if is_dev {
                            let mut cur = vec![0u8; len];
                            vol.read_exact_at(&mut cur, offset)?;
                            if cur.iter().any(|&b| b != 0) {
                                vol.write_all_at(&zero_buf[..len], offset)?;
                                written += len as u64;
                            }
                        }
                    }
                    ChunkData::Data(data) => {
                        if data.len() != len {
                            bail!(
                                "chunk {index} decoded to {} bytes, expected {len}",
                                data.len()
                            );
                        }
                        vol.write_all_at(&data, offset).map_err(|e| {
                            coded(
                                IO,
                                format!("writing {} at byte {offset}: {e}", work_path.display()),
                            )
                        })?;
                        written += len as u64;
                    }
                }
                batch_hashes.extend_from_slice(&id);
                batch_bytes += len as u64;
                done_bytes += len as u64;
                bar.set(done_bytes);
                if batch_bytes >= batch_limit || k + 2 >= count {
                    if sync_tx.send(std::mem::take(&mut batch_hashes)).is_err() {
                        in_flight += 1; // the thread stopped on an error: report it
                        settle(&mut in_flight)?;
                    }
                    in_flight += 1;
                    batch_bytes = 0;
                }
            }
        }
        if sync_tx.send(std::mem::take(&mut batch_hashes)).is_ok() {
            in_flight += 1;
        }
        drop(sync_tx);
        settle(&mut in_flight)
    })?;
    bar.finish();

    // Read everything back and compare with the ids of authenticated data,
    // a batch at a time, hashed on every core.
    let check = Progress::new("re-read", size, args.json);
    let mut hashes = BufReader::new(File::open(&state.path)?);
    hashes.seek(SeekFrom::Start(STATE_HEADER))?;
    let mut checked = 0u64;
    let per_batch = ((64u64 << 20) / u64::from(chunk)).max(threads as u64);
    let mut k = 0;
    while k < count {
        let mut batch = Vec::new();
        while k < count && (batch.len() as u64) < per_batch {
            let index = chunk_at(k, count);
            let len = image_format::layout::chunk_len(size, chunk, index) as usize;
            let mut want = [0u8; 32];
            hashes.read_exact(&mut want)?;
            // A hole of the (sparse) target reads as zeros by the file
            // system's guarantee: compare without reading it.
            let hole = crate::source::range_is_hole(&vol, index * u64::from(chunk), len as u64);
            let zero = if hole { Some(zero_ids.get(len)) } else { None };
            batch.push((index, len, want, zero));
            k += 1;
        }
        let bad = first_mismatch(&vol, &id_key, u64::from(chunk), &batch, threads)?;
        if let Some((index, len)) = bad {
            if is_dev {
                // Do not leave something that might boot.
                let first = image_format::layout::chunk_len(size, chunk, 0) as usize;
                let _ = vol.write_all_at(&vec![0u8; first], 0);
                let _ = vol.sync_data();
            }
            return Err(coded(
                FOUND,
                format!(
                    "read-back check failed: disk bytes {}..{} on {} differ from what was authenticated; \
                     the target is left incomplete (remove {} and re-run)",
                    index * u64::from(chunk),
                    index * u64::from(chunk) + len as u64,
                    work_path.display(),
                    state.path.display()
                ),
            ));
        }
        checked += batch.iter().map(|b| b.1 as u64).sum::<u64>();
        check.set(checked);
    }
    check.finish();
    drop(vol);

    match target {
        Target::File(_) | Target::Libvirt(_) | Target::Nbd(_) => {
            let p = &final_path;
            std::fs::rename(&work_path, p)
                .with_context(|| format!("renaming {} to {}", work_path.display(), p.display()))?;
            sync_parent(p)?;
        }
        Target::Qcow2(p) => {
            let tmp = with_suffix(p, ".partial");
            // qemu-img writes into a private file this run created (it
            // truncates and keeps the mode): never through a planted link.
            if std::fs::symlink_metadata(&tmp).is_ok_and(|m| m.is_file()) {
                std::fs::remove_file(&tmp)
                    .with_context(|| format!("removing stale {}", tmp.display()))?;
            }
            drop(
                image_format::private::create(&tmp)
                    .with_context(|| format!("creating {} (new, 0600)", tmp.display()))?,
            );
            crate::tools::run(
                Command::new("qemu-img")
                    .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
                    .arg(&work_path)
                    .arg(&tmp),
            )?;
            crate::tools::run(
                Command::new("qemu-img")
                    .args(["compare", "-q", "-f", "raw", "-F", "qcow2"])
                    .arg(&work_path)
                    .arg(&tmp),
            )
            .map_err(|e| {
                coded(
                    FOUND,
                    format!("the qcow2 image differs from the verified raw volume: {e:#}"),
                )
            })?;
            std::fs::rename(&tmp, p)?;
            sync_parent(p)?;
            std::fs::remove_file(&work_path)?;
        }
        Target::Dev(_) => {
            std::fs::remove_file(&marker)
                .with_context(|| format!("removing marker {}", marker.display()))?;
        }
    }
    std::fs::remove_file(&state.path)?;
    let secs = started.elapsed().as_secs_f64();
    Ok(Report {
        command: "ingest",
        name: args.name.clone(),
        generation,
        target: args.target.clone(),
        disk_size: size,
        chunks: count,
        zero_chunks: zeros,
        resumed_chunks: resumed,
        bytes_written: written,
        verified: true,
        seconds: secs,
        mb_per_s: progress::mb_per_s(size, secs),
        volume: None,
        booted: None,
        boot_report: None,
        adapt: None,
    })
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

/// One chunk of the read-back: index, length, the id it must have, and the
/// zero id if the target has a hole there (then it is not read).
type Recheck = (u64, usize, [u8; 32], Option<[u8; 32]>);

/// Reads `batch` back from `vol` on up to `threads` threads and returns the
/// first chunk (index, length) whose keyed id is not the one authenticated.
fn first_mismatch(
    vol: &File,
    key: &image_format::ChunkIdKey,
    chunk: u64,
    batch: &[Recheck],
    threads: usize,
) -> anyhow::Result<Option<(u64, usize)>> {
    let check = |part: &[Recheck]| -> std::io::Result<Option<(u64, usize)>> {
        let mut buf = Vec::new();
        for &(index, len, want, zero) in part {
            let got = match zero {
                Some(z) => z,
                None => {
                    buf.resize(len, 0);
                    vol.read_exact_at(&mut buf[..len], index * chunk)?;
                    key.id(&buf[..len])
                }
            };
            if got != want {
                return Ok(Some((index, len)));
            }
        }
        Ok(None)
    };
    // One run of chunks per thread, so each reuses one read buffer.
    let per = batch.len().div_ceil(threads.max(1)).max(1);
    let parts: Vec<&[Recheck]> = batch.chunks(per).collect();
    let results = image_format::parallel::map_in_order(&parts, threads, |p| check(p))?;
    for r in results {
        if let Some(bad) = r? {
            return Ok(Some(bad));
        }
    }
    Ok(None)
}

/// `--adapt`: run virt-v2v-in-place on the verified volume (for `libvirt:`
/// and NBD targets, on the raw file before it is uploaded or copied).
fn adapt_volume(target: &Target, sdir: &Path) -> anyhow::Result<mgear_boot::AdaptReport> {
    let path = target.path(sdir);
    let format = if matches!(target, Target::Qcow2(_)) {
        "qcow2"
    } else {
        "raw"
    };
    eprintln!(
        "adapting {} with {} (under TCG: this takes minutes)",
        path.display(),
        mgear_boot::adapt::TOOL
    );
    mgear_boot::adapt(&path, format).map_err(|e| {
        let temporary = matches!(target, Target::Libvirt(_) | Target::Nbd(_));
        let left = if temporary {
            // Nothing was uploaded or copied; a re-run starts over.
            let _ = std::fs::remove_file(&path);
            "nothing was uploaded".to_string()
        } else {
            format!(
                "the verified volume {} is left as ingested, NOT adapted",
                path.display()
            )
        };
        let code = match e {
            mgear_boot::BootError::Usage(_) | mgear_boot::BootError::Unsupported(_) => USAGE,
            _ => IO,
        };
        coded(code, format!("driver adaptation failed ({left}): {e}"))
    })
}

/// Copy the verified raw file onto an NBD export, then read it back and
/// compare. Zero runs become `NBD_CMD_WRITE_ZEROES` where the server offers
/// it, so thin exports stay thin. An export larger than the disk keeps its
/// tail (a cloud volume may be bigger than the source disk).
fn copy_to_nbd(url: &mgear_nbd::NbdUrl, raw: &Path) -> anyhow::Result<()> {
    let io = |e: mgear_nbd::Error| coded(IO, format!("NBD target {url}: {e}"));
    let mut client =
        mgear_nbd::Client::connect(url, &mgear_nbd::ConnectOptions::default()).map_err(io)?;
    let mut src = File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let len = src.metadata()?.len();
    if client.read_only() {
        return Err(coded(IO, format!("NBD target {url} is read-only")));
    }
    if client.size() < len {
        return Err(coded(
            IO,
            format!(
                "NBD target {url} holds {} bytes but the disk has {len}: give a larger export",
                client.size()
            ),
        ));
    }
    let mut buf = vec![0u8; 4 << 20];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        src.read_exact(&mut buf[..n])?;
        let zero = buf[..n].iter().all(|b| *b == 0);
        if !(zero && client.write_zeroes(off, n as u64).is_ok()) {
            client.write_at(off, &buf[..n]).map_err(io)?;
        }
        off += n as u64;
    }
    client.flush().map_err(io)?;
    // Read back what the export now holds.
    src.seek(SeekFrom::Start(0))?;
    let mut back = vec![0u8; buf.len()];
    off = 0;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        src.read_exact(&mut buf[..n])?;
        client.read_at(off, &mut back[..n]).map_err(io)?;
        if buf[..n] != back[..n] {
            return Err(coded(
                FOUND,
                format!("NBD target {url} reads back different data near byte {off}"),
            ));
        }
        off += n as u64;
    }
    client.disconnect().map_err(io)?;
    Ok(())
}

/// Upload the verified raw file and check the volume has its size.
fn upload_volume(t: &LibvirtTarget, raw: &Path) -> anyhow::Result<VolumeRef> {
    let vol = mgear_boot::upload_volume(DEFAULT_CONN, &t.pool, &t.name, raw)
        .map_err(|e| boot_cmd::libvirt_err(e, &format!("uploading to {t}")))?;
    let len = std::fs::metadata(raw)?.len();
    if vol.capacity != len {
        return Err(coded(
            IO,
            format!(
                "volume {t} holds {} bytes but the verified image has {len}: delete it (virsh vol-delete --pool {} {}) and re-run",
                vol.capacity, t.pool, t.name
            ),
        ));
    }
    Ok(vol)
}

fn sync_parent(p: &Path) -> anyhow::Result<()> {
    let dir = p
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        std::fs::write(&path, &disk).unwrap();
        let key =
            image_format::ChunkIdKey::derive(&image_format::DataKey::from_bytes([9; 32]), &[1; 16]);
        let mut zeros = ZeroIds::new(&key);
        let batch: Vec<Recheck> = (0..5u64)
            .map(|i| {
                let c = &disk[i as usize * C..(i as usize + 1) * C];
                let zero = (i == 3).then(|| zeros.get(C));
                (i, C, key.id(c), zero)
            })
            .collect();
        let vol = File::open(&path).unwrap();
        for threads in [1, 2, 3] {
            assert_eq!(
                first_mismatch(&vol, &key, C as u64, &batch, threads).unwrap(),
                None
            );
        }
        // One flipped byte in chunk 2, another in chunk 4: chunk 2 is named.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xff], 2 * C as u64 + 5).unwrap();
        f.write_all_at(&[0xff], 4 * C as u64 + 5).unwrap();
        for threads in [1, 2, 3] {
            assert_eq!(
                first_mismatch(&vol, &key, C as u64, &batch, threads).unwrap(),
                Some((2, C))
            );
        }
        // A chunk that should hold data but reads as a hole is caught too.
        let mut holey = batch.clone();
        holey[1].3 = Some(zeros.get(C));
        assert_eq!(
            first_mismatch(&vol, &key, C as u64, &holey[..2], 2).unwrap(),
            Some((1, C))
        );
    }

    #[test]
    fn order_puts_chunk_zero_last() {
        let order: Vec<u64> = (0..5).map(|k| chunk_at(k, 5)).collect();
        assert_eq!(order, vec![1, 2, 3, 4, 0]);
        assert_eq!(chunk_at(0, 1), 0);
    }

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("file:a.raw").unwrap(),
            Target::File("a.raw".into())
        );
        assert_eq!(
            Target::parse("dev:/dev/vdb").unwrap(),
            Target::Dev("/dev/vdb".into())
        );
        assert_eq!(
            crate::exit::code_of(&Target::parse("a.raw").unwrap_err()),
            2
        );
        let t = Target::parse("libvirt:mgear/web01").unwrap();
        assert_eq!(
            t.path(Path::new("/s")),
            PathBuf::from("/s/libvirt_mgear_web01.raw")
        );
        assert_eq!(
            crate::exit::code_of(&Target::parse("libvirt:nopool").unwrap_err()),
            2
        );
    }

    #[test]
    fn state_resumes_only_matching_ingests() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        let h = State::header(&[1; 32], 10, 4, 1);
        let mut s = State::open(p.clone(), &h, true).unwrap();
        s.append(&[7u8; 64]).unwrap();
        drop(s);
        // A torn third entry is dropped.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(&[1; 5])
            .unwrap();
        assert_eq!(State::open(p.clone(), &h, false).unwrap().done, 2);
        let other = State::header(&[2; 32], 10, 4, 1);
        assert!(State::open(p.clone(), &other, false).is_err());
        assert_eq!(State::open(p, &other, true).unwrap().done, 0);
    }
}
