//! `mgear capture`: read a disk, encrypt it chunk by chunk onto the medium.
//!
//! ```text
//! mgear capture --source /dev/sdb --medium fat:/dev/sdc --name web01 --recipient target.pub
//! mgear capture --source disk.raw --medium dir:/mnt/appliance --name web01 --passphrase-file pw
//! mgear capture ... --delta          # later: store only what changed since the last capture
//! mgear capture --source nbd+unix:///?socket=S ... --delta --dirty-bitmap b0   # read only dirty ranges
//! ```
//!
//! Pipeline: the main thread reads chunks in order (paced by `--rate-limit`)
//! into a bounded channel; worker threads run `ChunkEncoder::encode` (zero
//! detection, keyed id, zstd); the main thread appends the results in order
//! and checkpoints every 64 MiB, together with the next batch, whose records
//! are sealed on the other threads while the checkpoint's syncs wait for the
//! medium (`CaptureWriter::checkpoint_then_append`). Every channel is
//! bounded, so memory stays a few dozen MiB whatever the disk size.
//!
//! Changed-block tracking: with `--dirty-bitmap NAME` (a delta from an NBD
//! source exporting `qemu:dirty-bitmap:NAME`, e.g. `qemu-nbd -B NAME` over a
//! qcow2 with a persistent bitmap) only chunks the bitmap marks dirty are
//! read; the others are copied from the parent generation's index
//! (`CaptureWriter::append_unchanged`) without touching the source. Chunks
//! the parent lacks (the disk grew) are always read. The bitmap must have
//! been enabled since the parent capture was taken, or changes are missed.
//!
//! Resume: if the command is interrupted (Ctrl-C, power cut, SIGKILL, medium
//! full), run the same command again: the writer finds the unfinished
//! generation's journal and continues after the last checkpoint.
//!
//! Key cache: a new capture's random data key is wrapped on the medium only
//! for the target (public key / passphrase). A later `--delta` (or a
//! resume) needs that key to compute the same keyed chunk ids, so it is also
//! kept on the capture host in `--key-cache` (0600), never on the medium,
//! one file per capture id (`crate::keys::cache_file`): the same name on
//! another medium is another capture with its own key.
//!
//! Check before writing (`crate::preflight`): on a read-only view of the
//! medium, capture refuses a directory or a disk-image container as the
//! source, a name that differs only in case from a capture on the medium,
//! and a second full copy of a finished capture; warns about a source
//! mounted read-write; samples the source to estimate the stored size and
//! time, and refuses when the medium cannot hold it. `--dry-run` prints that
//! plan and stops; `--abort` removes an unfinished generation instead
//! (`crate::medium_admin`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::error::Context;
use image_format::age::secrecy::SecretString;
use image_format::{Appended, CaptureParams, CaptureWriter, DataKey, EncodedChunk};
use serde::Serialize;

use crate::exit::usage;
use crate::keys::key_cache_dir;
use crate::output::hex;
use crate::progress::{self, Progress};
use crate::ratelimit::RateLimiter;
use crate::units::{human_bytes, parse_size};

/// `mgear capture`: one source per disk of the machine, and the plan they
/// are captured by (`crate::machine::capture` runs it).
#[derive(Debug)]
pub struct Request {
    /// Disks to read (file, block device or NBD URL), in the machine's disk
    /// order: several are captured as one set.
    pub sources: Vec<String>,
    pub plan: Plan,
}

/// The capture of one disk, typed: what `mgear capture`'s flags say (the
/// binary's `cli::capture` parses them; demo and bench fill it in directly).
#[derive(Debug, Clone)]
pub struct Plan {
    /// The disk (set from `Request::sources`).
    pub source: Option<String>,
    pub medium: crate::medium::Where,
    /// Capture name (1-32 letters, digits, '-', '_'), e.g. the host name.
    pub name: String,
    /// Target public keys (`keys::read_recipients` of a .pub file from `mgear keygen`, or age1...).
    pub recipient: Vec<age::x25519::Recipient>,
    /// File whose first line is a passphrase that can also open the capture.
    pub passphrase_file: Option<PathBuf>,
    /// Create --passphrase-file (it must not exist) holding a new random
    /// passphrase (130 bits, 0600) and use it; send that file to the target by
    /// a channel other than the courier.
    pub passphrase_generate: bool,
    /// Store only chunks that changed since the newest finished capture of this name.
    pub delta: bool,
    /// With --delta and an NBD source: read only chunks the qemu dirty bitmap NAME marks dirty (qemu-nbd -B NAME).
    pub dirty_bitmap: Option<String>,
    /// Hold the average source read rate, bytes per second (`units::parse_rate`).
    pub rate_limit: Option<f64>,
    /// Where data keys are kept for later deltas [default: $XDG_STATE_HOME/mgear/keys or ~/.local/state/mgear/keys].
    pub key_cache: Option<PathBuf>,
    /// Chunk size in bytes (64KiB..16MiB, power of two: [`chunk_size_arg`]).
    pub chunk_size: u32,
    /// `--chunk-size` was given; else a delta takes the capture's own (`machine::capture`),
    /// and anything else [`DEFAULT_CHUNK_SIZE`].
    pub chunk_size_given: bool,
    /// Store chunks uncompressed.
    pub no_compress: bool,
    /// Encoder threads [default: number of CPUs].
    pub threads: Option<usize>,
    /// Sign each generation's COMMIT with this capture-site key (`mgear keygen --signing`).
    pub sign: Option<PathBuf>,
    /// Print the summary as one JSON object.
    pub json: bool,
    /// Also write a ticket-grade report: FILE (JSON) and FILE with its extension replaced by `.txt` (r.json: r.txt) (summary).
    pub report: Option<PathBuf>,
    /// Inspect the source and the medium, print the plan (what is written,
    /// estimated size and time, free space) and write nothing.
    pub dry_run: bool,
    /// Remove the unfinished generation of --name from the medium instead
    /// of capturing (a capture started by mistake; no --source needed).
    pub abort: bool,
    /// A medium of this capture's span is lost (name it as it was given when it joined, e.g.
    /// fat:/dev/sdc, or as #N from `mgear inspect`): capture a delta that stores again what it
    /// held (and what changed since), onto the media given. Implies --delta.
    pub replace_medium: Vec<String>,
    /// Store every disk of a machine set on its own, even chunks another of its disks already
    /// stored (by default identical chunks are stored once; a set so captured needs a reader of
    /// format feature CROSS_STREAM).
    pub no_dedup_across_disks: bool,
    /// Opt in to dedup with another machine on the medium (a capture or machine set, e.g.
    /// web01): capture this one under MACHINE's data key and capture id, and store only
    /// chunks MACHINE's newest finished generation does not hold. The cost: both machines
    /// then share one data key, so anyone who can open one (any target key or passphrase
    /// of either, the key cache here) can open both, and whoever holds the key can tell
    /// which content they share. Only for machines of one owner, from this machine's
    /// first capture on (needs MACHINE's key in the key cache, or --passphrase-file with
    /// its passphrase). MACHINE cannot be removed from the medium while this one borrows
    /// from it, and ingest needs both on the media given.
    pub dedup_across_machines: Option<String>,
    /// Bytes of every disk this capture belongs to (a machine set), so each medium of a span
    /// keeps room for all their indexes.
    pub span_total: Option<u64>,
    /// Capture even when the sampled estimate says the medium is too small.
    pub skip_space_check: bool,
    /// Resume even though the source's labels, or the chunks stored before the stop,
    /// differ from what the unfinished generation read (`check_same_disk`,
    /// `check_stored_sample`): the operator vouches it is the same disk.
    pub same_source: bool,
    /// The name the unfinished generation a resume continues was started with, when the
    /// disk came back under another (`--source-was`): recorded in place of `source`'s.
    pub source_was: Option<String>,
    /// Check the source against this target readiness profile before it ships (`mgear boot
    /// --check-profile` names the profiles): what would fail at the target is said, as
    /// warnings here and in the report, and the capture goes on (a driver the target needs
    /// can still be added there: `ingest --adapt`).
    pub check_profile: Option<&'static mgear_boot::TargetProfile>,
    /// Checkpoint after this much data stored on the medium, or 16 times as
    /// much source progress (zeros, dedup), or every 10 s of progress: a
    /// checkpoint costs three fsyncs, which zero regions should not pay every
    /// 64 MiB (tests use small values).
    pub checkpoint_bytes: u64,
    /// scrypt work factor (log2 N) for the passphrase slot; lower is faster and weaker (tests).
    pub passphrase_work_factor: Option<u8>,
}

impl Plan {
    /// The medium read-only for the checks before a capture writes, the media
    /// `--replace-medium` declares lost left out of its span as the capture will
    /// (without them a set's checks refused the span as "not attached").
    pub fn open_before_capture(&self) -> crate::Result<crate::medium::Medium> {
        self.medium
            .open_before_capture_for(&crate::medium::SpanPlan {
                lost: self.replace_medium.clone(),
                ..Default::default()
            })
    }
}

/// What `capture --json` prints (and `--report` wraps).
#[derive(Debug, Serialize)]
pub struct Report {
    pub command: &'static str,
    pub name: String,
    pub generation: u32,
    pub parent: Option<u32>,
    pub disk_size: u64,
    pub chunk_size: u32,
    pub resumed_from_chunk: u64,
    /// This run continued a cut-off run's unfinished generation (from chunk 0 when that run
    /// reached no checkpoint).
    pub resumed: bool,
    pub bytes_read: u64,
    /// Of `bytes_read`, bytes the source reported as zero (NBD base:allocation) and that were not transferred.
    pub holes_skipped: u64,
    /// Bytes not read because the dirty bitmap reported them unchanged since the parent (copied from it).
    pub unchanged_skipped: u64,
    pub zero_chunks: u64,
    pub dedup_chunks: u64,
    pub stored_chunks: u64,
    pub stored_bytes: u64,
    pub ratio: f64,
    pub seconds: f64,
    /// The disk's bytes (holes and unchanged chunks included) over the run's seconds.
    pub mb_per_s: f64,
    /// What was read from the source (`bytes_read` less the holes skipped) over the run's
    /// seconds: the rate `--rate-limit` holds.
    pub read_mb_per_s: f64,
    /// user + system CPU seconds the capture used (all threads).
    pub cpu_seconds: f64,
    /// cpu_seconds / seconds: the share of one core the capture cost the source host.
    pub cpu_share: f64,
    pub manifest_root: String,
    /// Other machines' generations this one borrows records from
    /// (`--dedup-across-machines`; a delta keeps its parent's): `web01 G0001`.
    pub borrows_from: Vec<String>,
    /// The age public keys the data key was sealed to by this run's `--recipient`: the field
    /// engineer compares them with the target's `target.pub` before the medium ships (a wrong
    /// one was found only at the target, where nothing can then decrypt the capture).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// The capture has a passphrase slot (`--passphrase-file` opens it at the target too).
    pub passphrase_slot: bool,
    /// The receipt the field engineer sends to the target.
    pub receipt: Receipt,
    /// What the field engineer should look at (also printed on stderr): a delta none of
    /// whose chunks matched its parent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// What the target needs to pin this generation (`ingest --expect-generation`).
#[derive(Debug, Serialize, Default)]
pub struct Receipt {
    pub name: String,
    pub capture_id: String,
    pub generation: u32,
    pub manifest_root: String,
    /// blake3 of the signed COMMIT bytes (none when not signed).
    pub commit_digest: Option<String>,
    /// `site <fingerprint>` / `appliance <fingerprint>` of every COMMIT signature.
    pub signers: Vec<String>,
    /// True when this run only added a missing signature to a finished generation.
    pub signed_only: bool,
    /// True when this run only put right the media the run that finished the generation
    /// left mid-write (it was cut off while it closed them).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub put_right_only: bool,
}

pub(crate) fn create_private_dir(dir: &std::path::Path) -> crate::Result<()> {
    crate::keyfile::private_dir(dir, "key cache")
}

impl Request {
    /// The sources and the plan, with what the flags imply
    /// (`--replace-medium` continues the capture: it is a delta).
    pub fn into_parts(self) -> (Vec<String>, Plan) {
        let Request {
            sources,
            plan: mut args,
        } = self;
        if !args.replace_medium.is_empty() {
            args.delta = true;
        }
        (sources, args)
    }
}

/// Run `mgear capture` of one disk (and `--dry-run` or `--abort` of a set);
/// `crate::machine::capture` runs a set and calls this for the rest.
pub fn run(cli: Request) -> crate::Result<i32> {
    if cli.plan.dry_run {
        // A plan writes nothing, so there is nothing to checkpoint: Ctrl-C or SIGTERM ends
        // it at once (one on a huge NBD export ran on for minutes, "stopping after the work
        // at hand").
        crate::signals::install_exit_at_once();
    } else {
        crate::signals::install();
    }
    let (sources, mut args) = cli.into_parts();
    if sources.len() > 1 && args.dry_run {
        return dry_run_set(&args, &sources);
    }
    args.source = sources.into_iter().next();
    // `--dry-run` too: it must refuse what the capture would.
    if let (Some((set, k)), false) = (
        image_format::set::parse_disk_stream_name(&args.name),
        args.abort,
    ) {
        return Err(disk_name_refused(&args, set, k));
    }
    if args.abort {
        return abort(&args);
    }
    if args.dry_run {
        return dry_run(&args);
    }
    if let Some(p) = &args.report {
        crate::report::check_writable(p, "--report", "capture")?;
    }
    let started = std::time::Instant::now();
    // A passphrase (or key cache) that does not open the capture: say which slots it has.
    let report = with_generated_passphrase(&args, capture).map_err(|e| {
        // Without a passphrase the key came from the key cache: a key that does not open the
        // capture is a damaged (or swapped) cache file, and the capture has no --identity to
        // try (the generic advice named one).
        let cached = args.passphrase_file.is_none()
            && e.chain()
                .any(|c| matches!(c.downcast_ref(), Some(image_format::Error::WrongKey { .. })));
        if cached {
            let dir = crate::keys::key_cache_dir(args.key_cache.clone())
                .map(|d| d.display().to_string())
                .unwrap_or_else(|_| "the key cache".into());
            return crate::exit::coded_next(
                crate::exit::USAGE,
                format!(
                    "the data key cached for capture {} in {dir} does not open it: the key \
                     cache file (`mgear keys list` names it) is damaged or was replaced; \
                     nothing was written",
                    args.name
                ),
                format!(
                    "a capture with a passphrase slot: `mgear keys forget --name {}`, then the \
                     same command with --passphrase-file caches its key again; otherwise restore \
                     the file from a backup of the key cache, or capture the disk under a new \
                     name (a capture's deltas need its own data key)",
                    args.name
                ),
            );
        }
        let e = crate::verify::explain_wrong_key_for_capture(
            e,
            &args.medium,
            args.passphrase_file.as_deref(),
        );
        damaged_resume(e, &args)
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            if let Some(p) = &args.report {
                report_stop(p, &args, args.source.as_deref().unwrap_or(""), started, &e);
            }
            return Err(e);
        }
    };
    if let Some(p) = &args.report {
        let r = crate::report::capture(
            &report,
            args.source.as_deref().unwrap_or(""),
            &args.medium.describe(),
        )?;
        crate::report::write(p, &r)?;
    }
    if args.json {
        progress::print_json(&report)?;
    } else {
        print_summary(&report);
    }
    Ok(crate::exit::OK)
}

/// A resume whose stored files do not check out (a damaged index part, journal or record of
/// the unfinished generation): the way on is to remove that generation and capture again (the
/// hint was the found-failure class's "do not use it").
fn damaged_resume(e: crate::Error, args: &Plan) -> crate::Error {
    let damage = crate::exit::code_of(&e) == crate::exit::FOUND
        && !matches!(&e, crate::Error::Coded { hint: Some(_), .. })
        && e.chain()
            .any(|c| matches!(c.downcast_ref(), Some(image_format::Error::Corrupt { .. })));
    let Some((g, _)) = unfinished_generation(args).filter(|_| damage) else {
        return e;
    };
    crate::exit::coded_hint(
        crate::exit::FOUND,
        format!("{e:#}"),
        format!(
            "generation {g} of {} cannot be resumed: what its stopped run stored is damaged. \
             Remove it with `mgear capture --abort {} --name {}` and capture again (finished \
             generations are not touched)",
            args.name,
            args.medium.as_args(),
            image_format::set::owner(&args.name)
        ),
    )
}

/// The newest generation of the capture, if it is unfinished: what a run that stopped left
/// (read from the medium again; `None` when it cannot be read, or nothing is unfinished).
/// With it, the capture's id (what `keys forget --capture-id` and `--abort` name: the report
/// said `null` of a capture whose id the key cache and the medium held).
fn unfinished_generation(args: &Plan) -> Option<(u32, Option<[u8; 16]>)> {
    let mut m = args.medium.open_read_only().ok()?;
    let name = image_format::stored_name(m.store(), &args.name).ok()?;
    let info = image_format::capture_info(m.store(), &name).ok()??;
    let g = info
        .generations
        .last()
        .filter(|g| g.state != image_format::GenerationState::Complete)
        .map(|g| g.generation)?;
    Some((g, image_format::capture_id(m.store(), &name).ok().flatten()))
}

/// `--report` of a capture that stopped or failed (see [`crate::report::capture_failed`]).
pub fn report_stop(
    path: &std::path::Path,
    args: &Plan,
    source: &str,
    started: std::time::Instant,
    err: &crate::Error,
) {
    let mut v = crate::report::capture_failed(
        &args.name,
        source,
        &args.medium.describe(),
        started.elapsed().as_secs_f64(),
        err,
    );
    // The generation a stopped run leaves unfinished (a medium-full one is resumed on one
    // more medium): the report said `null`.
    if let Some((g, id)) = unfinished_generation(args) {
        v["result"]["generation"] = g.into();
        if let Some(id) = id {
            v["digests"]["capture_id"] = hex(&id).into();
        }
    } else if crate::report::holds_finished_capture(path, &args.name) {
        // Refused before anything was begun: the finished capture's report (its receipt's
        // digests) stays; this run's refusal is on stderr.
        eprintln!(
            "mgear: note: {} is the report of the finished capture of {}: kept (this refused \
             run's report is not written over it)",
            path.display(),
            args.name
        );
        return;
    }
    if let Err(w) = crate::report::write_json_and_text(path, &v, &crate::report::summary(&v)) {
        eprintln!("mgear: warning: the report of this stop was not written: {w:#}");
    }
}

fn print_summary(r: &Report) {
    if r.receipt.put_right_only {
        println!(
            "{} generation {} was already captured: the media its run left mid-write are put \
             right, nothing captured again",
            r.name, r.generation
        );
        print_receipt(&r.receipt);
        return;
    }
    if r.receipt.signed_only {
        println!(
            "{} generation {} was already captured: added the missing COMMIT signature",
            r.name, r.generation
        );
        print_receipt(&r.receipt);
        return;
    }
    println!(
        "captured {} generation {}{} ({} of {})",
        r.name,
        r.generation,
        r.parent
            .map(|p| format!(" (delta on {p})"))
            .unwrap_or_default(),
        crate::units::count(
            image_format::layout::chunk_count(r.disk_size, r.chunk_size),
            "chunk"
        ),
        human_bytes(u64::from(r.chunk_size))
    );
    if r.resumed_from_chunk > 0 {
        println!("  resumed at chunk {}", r.resumed_from_chunk);
    } else if r.resumed {
        // The cut-off run's error said it resumes; a summary like a fresh capture's read as if
        // that run's work was lost, or the resume had not happened.
        println!(
            "  resumed at chunk 0: the run cut off had reached no checkpoint (one every 64 MiB \
             stored), so every chunk was read again"
        );
    }
    // What was read: the holes the source reported were not (JSON `bytes_read` counts them,
    // `holes_skipped` says how much of it they were).
    progress::line("read", r.bytes_read.saturating_sub(r.holes_skipped));
    if r.holes_skipped > 0 {
        progress::line("holes skipped", r.holes_skipped);
    }
    if r.unchanged_skipped > 0 {
        progress::line("unchanged", r.unchanged_skipped);
    }
    println!(
        "  {:<14} {:>14}",
        "chunks",
        format!(
            "{} zero, {} deduplicated, {} stored",
            r.zero_chunks, r.dedup_chunks, r.stored_chunks
        )
    );
    progress::line("stored", r.stored_bytes);
    if !r.borrows_from.is_empty() {
        println!(
            "  {:<14} {} (dedup across machines: one data key)",
            "borrows from",
            r.borrows_from.join(", ")
        );
    }
    for k in &r.recipients {
        println!(
            "  {:<14} {k} (check it is the target site's public key)",
            "encrypted to"
        );
    }
    // The backup slot was made, or not: only `inspect` said so.
    if r.passphrase_slot {
        println!(
            "  {:<14} a passphrase slot too: --passphrase-file with the same text opens it",
            "encrypted to"
        );
    }
    println!("  {:<14} {:>14.3}", "ratio", r.ratio);
    // Holes cost no read: a rate-limited capture of a sparse disk read "338 MB/s" under
    // a 10 MiB/s limit. Both are said.
    if r.holes_skipped > 0 {
        println!(
            "  {:<14} {:>10.1} MB/s over the disk ({:.1} s); data read at {:.1} MB/s",
            "speed", r.mb_per_s, r.seconds, r.read_mb_per_s
        );
    } else {
        println!(
            "  {:<14} {:>10.1} MB/s ({:.1} s)",
            "speed", r.mb_per_s, r.seconds
        );
    }
    println!(
        "  {:<14} {:>9.1} % of one core ({:.2} s user+sys)",
        "cpu",
        r.cpu_share * 100.0,
        r.cpu_seconds
    );
    print_receipt(&r.receipt);
}

/// The receipt's first line: what the target pins it with. The commit where there is one: a
/// generation number alone does not tell a capture swapped in for the shipped one (it named
/// `--expect-generation` beside a commit).
pub(crate) fn receipt_heading(generation: u32, signed: bool) -> String {
    match signed {
        true => "receipt (send it to the target apart from the medium; ingest --expect-commit \
                 with the commit below):"
            .to_string(),
        false => format!(
            "receipt (send it to the target apart from the medium; ingest --expect-generation \
             {generation}):"
        ),
    }
}

fn print_receipt(r: &Receipt) {
    println!(
        "{}",
        receipt_heading(r.generation, r.commit_digest.is_some())
    );
    println!("  {:<14} {}", "name", r.name);
    println!("  {:<14} {}", "capture id", r.capture_id);
    println!("  {:<14} {}", "generation", r.generation);
    println!("  {:<14} {}", "manifest root", r.manifest_root);
    match &r.commit_digest {
        Some(d) => println!("  {:<14} {d}", "commit"),
        None => println!(
            "  {:<14} NOT SIGNED (capture with --sign SITE.key)",
            "commit"
        ),
    }
    for s in &r.signers {
        println!("  {:<14} {s}", "signed by");
    }
}

/// Sign generation `generation` of `name`: build its commit from the medium
/// (MANIFEST and key slots as written), add this site's signature to its
/// COMMIT (kept signatures of others), write it atomically. Returns the receipt.
pub(crate) fn sign_generation(
    store: &mut dyn image_format::Store,
    name: &str,
    generation: u32,
    key: &ed25519_dalek::SigningKey,
) -> crate::Result<Receipt> {
    use image_format::commit::{self, CommitFile, SignerRole};
    let expected = commit::expected_commit(store, name, generation)?.ok_or_else(|| {
        crate::err!("{name} generation {generation} has no MANIFEST: nothing to sign")
    })?;
    let mut file = match commit::read_commit(store, name, generation) {
        Ok(Some(f)) if f.commit == expected => f,
        // A COMMIT for other content (or a damaged one) is replaced: only
        // what is on the medium now is signed.
        _ => CommitFile {
            commit: expected.clone(),
            signatures: Vec::new(),
        },
    };
    file.add(expected.sign(SignerRole::Site, key))
        .map_err(|e| crate::err!("{name} generation {generation}: {e}"))?;
    commit::write_commit(store, &file)?;
    Ok(receipt_of(&file))
}

/// Said when a re-run of a finished capture (`what`: its name, or `set NAME`) only put right
/// the media the run that finished it left mid-write.
pub(crate) fn say_put_right_only(what: &str, generation: u32) {
    eprintln!(
        "mgear: {what} generation {generation} was already captured: the media its run left \
         mid-write (it was cut off while it closed them) are put right, nothing captured again"
    );
}

/// The receipt of finished generation `generation` of `name` as the medium holds it: its
/// COMMIT's, or (not signed) the one its MANIFEST gives.
fn receipt_on_medium(
    store: &mut dyn image_format::Store,
    name: &str,
    generation: u32,
) -> crate::Result<Receipt> {
    if let Ok(Some(file)) = image_format::commit::read_commit(store, name, generation) {
        return Ok(receipt_of(&file));
    }
    let c = image_format::commit::expected_commit(store, name, generation)?.ok_or_else(|| {
        crate::err!("{name} generation {generation} has no MANIFEST on the medium")
    })?;
    Ok(Receipt {
        name: c.name.clone(),
        capture_id: hex(&c.capture_id),
        generation,
        manifest_root: hex(&c.manifest_root),
        ..Default::default()
    })
}

fn receipt_of(file: &image_format::commit::CommitFile) -> Receipt {
    let c = &file.commit;
    Receipt {
        name: c.name.clone(),
        capture_id: hex(&c.capture_id),
        generation: c.generation,
        manifest_root: hex(&c.manifest_root),
        commit_digest: Some(hex(&c.digest())),
        signers: file
            .signatures
            .iter()
            .map(|s| {
                format!(
                    "{} {}",
                    s.role.as_str(),
                    crate::sitekey::fingerprint(&s.public_key)
                )
            })
            .collect(),
        signed_only: false,
        put_right_only: false,
    }
}

/// Have the appliance witness a finished generation and add its signature
/// to the COMMIT (creating COMMIT when the capture was not `--sign`ed).
/// The medium must be closed: the appliance reads MANIFEST and key slots
/// itself, then the host reopens the medium to write COMMIT. The signature
/// is accepted only if it is by `identity` (the key `info` reported before
/// the capture) and verifies over the commit the host computes from the
/// medium, so a swapped appliance or a commit over other content never
/// reaches the COMMIT file.
pub(crate) fn witness_generation(
    args: &Plan,
    port: &std::path::Path,
    identity: &[u8; 32],
    name: &str,
    generation: u32,
) -> crate::Result<Receipt> {
    use image_format::commit::{self, CommitFile};
    let sig = crate::appliance::witness_commit(port, name, generation)?;
    if sig.public_key != *identity {
        crate::bail!(
            "the appliance signed with identity {}, not {} it reported before the capture; \
             check which appliance is connected",
            crate::sitekey::fingerprint(&sig.public_key),
            crate::sitekey::fingerprint(identity)
        );
    }
    let mut medium = args.medium.open()?;
    let result = (|| {
        let store = medium.store();
        let expected = commit::expected_commit(store, name, generation)?.ok_or_else(|| {
            crate::err!("{name} generation {generation} has no MANIFEST on the medium")
        })?;
        if !expected.verifies(&sig) {
            crate::bail!(
                "the appliance's witness signature does not verify over {name} generation \
                 {generation} as it is on the medium (the appliance saw other content); run \
                 `mgear verify` on the medium"
            );
        }
        let mut file = match commit::read_commit(store, name, generation) {
            Ok(Some(f)) if f.commit == expected => f,
            // No COMMIT yet (not --sign'ed), or one over other content:
            // only what is on the medium now is signed.
            _ => CommitFile {
                commit: expected,
                signatures: Vec::new(),
            },
        };
        file.add(sig)
            .map_err(|e| crate::err!("{name} generation {generation}: {e}"))?;
        commit::write_commit(store, &file)?;
        Ok(receipt_of(&file))
    })();
    let closed = medium.close();
    let receipt = result?;
    closed?;
    Ok(receipt)
}

/// Whether generation `g` of `name` (a capture or a set) has a COMMIT that
/// carries `key`'s valid site signature.
pub fn signed_by(
    store: &mut dyn image_format::Store,
    name: &str,
    g: u32,
    key: &ed25519_dalek::SigningKey,
) -> bool {
    let me = key.verifying_key().to_bytes();
    valid_signers(store, name, g, image_format::commit::SignerRole::Site).contains(&me)
}

/// The public keys of the valid `role` signatures generation `g` of `name`'s COMMIT carries
/// (none where it has no COMMIT, or one that does not read).
fn valid_signers(
    store: &mut dyn image_format::Store,
    name: &str,
    g: u32,
    role: image_format::commit::SignerRole,
) -> Vec<[u8; 32]> {
    match image_format::commit::read_commit(store, name, g) {
        Ok(Some(f)) => f
            .signatures
            .iter()
            .filter(|s| s.role == role && f.commit.verifies(s))
            .map(|s| s.public_key)
            .collect(),
        _ => Vec::new(),
    }
}

/// The report of a run that only added a signature to a finished generation (`--sign`, or
/// the appliance's witness): nothing read or stored.
fn signature_only(receipt: Receipt, disk_size: u64, chunk_size: u32, started: Instant) -> Report {
    Report {
        command: "capture",
        name: receipt.name.clone(),
        generation: receipt.generation,
        parent: None,
        disk_size,
        chunk_size,
        resumed_from_chunk: 0,
        resumed: false,
        bytes_read: 0,
        holes_skipped: 0,
        unchanged_skipped: 0,
        zero_chunks: 0,
        dedup_chunks: 0,
        stored_chunks: 0,
        stored_bytes: 0,
        ratio: 0.0,
        seconds: started.elapsed().as_secs_f64(),
        mb_per_s: 0.0,
        read_mb_per_s: 0.0,
        cpu_seconds: 0.0,
        cpu_share: 0.0,
        manifest_root: receipt.manifest_root.clone(),
        borrows_from: Vec::new(),
        recipients: Vec::new(),
        passphrase_slot: false,
        receipt,
        warnings: Vec::new(),
    }
}

/// The newest generation of `name` when it is finished and its COMMIT lacks the witness of
/// the appliance `identity` (its witness failed, or it was captured past the appliance).
fn unwitnessed(
    store: &mut dyn image_format::Store,
    name: &str,
    identity: &[u8; 32],
) -> crate::Result<Option<u32>> {
    use image_format::commit;
    let Some(newest) = image_format::list_captures(store)?
        .into_iter()
        .find(|c| c.name == name)
        .and_then(|c| c.generations.last().cloned())
        .filter(|g| g.state == image_format::GenerationState::Complete)
    else {
        return Ok(None);
    };
    let g = newest.generation;
    let witnessed = valid_signers(store, name, g, commit::SignerRole::Appliance).contains(identity);
    Ok((!witnessed).then_some(g))
}

/// The newest generation of `args.name` when a `--delta` run finished it and stopped
/// before signing or witnessing it: (generation, needs the site signature, needs the
/// appliance's witness). The site signature is due when this host's key cache noted the
/// generation was started signed with this very key; the witness when the generation was
/// captured through this appliance. A generation captured unsigned (or elsewhere) on
/// purpose is not touched: the run is a new delta.
fn interrupted_delta(
    store: &mut dyn image_format::Store,
    args: &Plan,
    cache_dir: &std::path::Path,
    id: Option<&[u8; 16]>,
    key: Option<&ed25519_dalek::SigningKey>,
    appliance: Option<&[u8; 32]>,
) -> crate::Result<Option<(u32, bool, bool)>> {
    let Some(newest) = image_format::list_captures(store)?
        .into_iter()
        .find(|c| c.name.eq_ignore_ascii_case(&args.name))
        .and_then(|c| c.generations.last().cloned())
        .filter(|g| g.state == image_format::GenerationState::Complete && g.parent.is_some())
    else {
        return Ok(None);
    };
    let g = newest.generation;
    let sign = match (key, id) {
        (Some(k), Some(id)) => {
            let note = crate::keys::signer_note_file(cache_dir, &args.name, id);
            let fp = crate::sitekey::fingerprint(&k.verifying_key().to_bytes());
            crate::keys::generation_note(&note, g, "signer").as_deref() == Some(fp.as_str())
                && !signed_by(store, &args.name, g, k)
        }
        _ => false,
    };
    let witness = match appliance {
        Some(identity) if newest.appliance_id.as_ref() == Some(identity) => {
            unwitnessed(store, &args.name, identity)? == Some(g)
        }
        _ => false,
    };
    Ok((sign || witness).then_some((g, sign, witness)))
}

/// Re-run of a finished capture with `--sign`: when the newest generation
/// is finished but its COMMIT is missing (a crash after MANIFEST) or lacks
/// this site's signature, sign it instead of capturing again. Only the generation the
/// run was for: its source is the one given, and either the key cache noted it was
/// started signed with this key, or it carries no site signature at all (the crash came
/// before any). Another key on an already signed generation, or another disk, was added
/// as "the missing signature" (a co-signature nobody asked the capture site for).
fn sign_missing(
    store: &mut dyn image_format::Store,
    args: &Plan,
    key: &ed25519_dalek::SigningKey,
    cache_dir: &std::path::Path,
    id: Option<&[u8; 16]>,
) -> crate::Result<Option<Receipt>> {
    let Some(g) = sign_due(store, args, key, cache_dir, id)? else {
        return Ok(None);
    };
    let mut r = sign_generation(store, &args.name, g, key)?;
    r.signed_only = true;
    Ok(Some(r))
}

/// Whether a repeat of a finished capture has a signature to add, read-only: this site's
/// (`--sign`, [`sign_due`]) or the appliance's witness ([`unwitnessed`]). A set's disk is
/// signed as the set's, so it is taken as due (its set decides). The plan of a repeat with
/// `--sign` said "only add this site's signature ... fits" (exit 0) of a capture already
/// signed with that key, which the run then refused as "already captured" (exit 2).
fn signature_due(args: &Plan, store: &mut dyn image_format::Store) -> crate::Result<bool> {
    if image_format::set::parse_disk_stream_name(&args.name).is_some() {
        return Ok(true);
    }
    if let Some(path) = &args.sign {
        let key = crate::sitekey::read_signing_key(path)?;
        let cache_dir = key_cache_dir(args.key_cache.clone())?;
        let id = image_format::capture_id(store, &args.name)?;
        if sign_due(store, args, &key, &cache_dir, id.as_ref())?.is_some() {
            return Ok(true);
        }
    }
    if let Some(port) = args.medium.first_appliance() {
        let identity = crate::appliance::appliance_identity(port)?;
        if unwitnessed(store, &args.name, &identity)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The generation [`sign_missing`] would sign, read-only: asked before the medium is opened
/// for writing, where a span is joined (a re-run with --sign and one more medium, which had
/// nothing to sign, joined that medium to the span and only then said "already captured").
fn sign_due(
    store: &mut dyn image_format::Store,
    args: &Plan,
    key: &ed25519_dalek::SigningKey,
    cache_dir: &std::path::Path,
    id: Option<&[u8; 16]>,
) -> crate::Result<Option<u32>> {
    use image_format::commit;
    let name = &args.name;
    let Some(info) = image_format::list_captures(store)?
        .into_iter()
        .find(|c| c.name == *name)
    else {
        return Ok(None);
    };
    let Some(newest) = info.generations.last() else {
        return Ok(None);
    };
    if newest.state != image_format::GenerationState::Complete {
        return Ok(None);
    }
    let g = newest.generation;
    if signed_by(store, name, g, key) {
        return Ok(None);
    }
    if let Some(src) = &args.source {
        if !crate::source::same_source(&newest.source_desc, src) {
            return Ok(None);
        }
    }
    let fp = crate::sitekey::fingerprint(&key.verifying_key().to_bytes());
    let noted = id.and_then(|id| {
        crate::keys::generation_note(
            &crate::keys::signer_note_file(cache_dir, name, id),
            g,
            "signer",
        )
    });
    let site_signed = !valid_signers(store, name, g, commit::SignerRole::Site).is_empty();
    if noted.as_deref() != Some(fp.as_str()) && site_signed {
        return Ok(None);
    }
    Ok(Some(g))
}

/// Before the writer touches the medium: a resume of unfinished generation `g` (even one
/// stopped before its first checkpoint, at chunk 0) must sign with the key the key cache
/// noted when `g` started. Refused (exit 2) with nothing written: a run stopped in its
/// first seconds was taken for a new start and finished unsigned (or under another key),
/// exit 0, and the target refused it; a refusal after the writer opened had already
/// rewritten the journal.
fn refuse_other_signer(
    args: &Plan,
    cache_dir: &std::path::Path,
    id: &[u8; 16],
    g: u32,
    key: Option<&ed25519_dalek::SigningKey>,
) -> crate::Result<()> {
    let path = crate::keys::signer_note_file(cache_dir, &args.name, id);
    let now = key.map_or_else(
        || "none".to_string(),
        |k| crate::sitekey::fingerprint(&k.verifying_key().to_bytes()),
    );
    match crate::keys::generation_note(&path, g, "signer") {
        Some(then) if then != "none" && then != now => Err(usage(format!(
            "capture {} generation {g} was started signed with site key {then} (--sign), and \
             this resume {}: its receipt would not carry the signature the target pins. Resume \
             it with the same --sign KEY it was started with",
            args.name,
            if now == "none" {
                "has no --sign".to_string()
            } else {
                format!("signs with another key, {now}")
            }
        ))),
        _ => Ok(()),
    }
}

/// What `capture --dry-run` prints: the checks made before writing.
#[derive(Debug, Serialize)]
pub struct Preview {
    pub command: &'static str,
    pub name: String,
    pub source: String,
    pub disk_size: u64,
    pub chunk_size: u32,
    /// `new`, `delta`, `resume`, or `sign` (a finished capture to which
    /// `--sign` only adds a missing signature).
    pub kind: &'static str,
    pub generation: u32,
    pub parent: Option<u32>,
    pub resume_from_chunk: u64,
    pub estimate: crate::preflight::Estimate,
    /// For a delta the estimate is an upper bound (only changes are stored).
    pub estimate_is_upper_bound: bool,
    pub medium_free: Option<u64>,
    /// The least this run needs on the medium (what the space check compares).
    pub needed: u64,
    pub fits: Option<bool>,
    pub warnings: Vec<String>,
}

/// Why `--name SET.dK` is refused for a single disk. Told apart by what
/// the medium holds: "capture the set with every disk" is advice only when
/// set SET is there; otherwise the user picked a name that merely ends like
/// a disk's (`x.d0`), and needs to hear that the ending is reserved.
fn disk_name_refused(args: &Plan, set: &str, k: usize) -> crate::Error {
    let set_exists = args.medium.open_read_only().is_ok_and(|mut m| {
        let store = m.store();
        // A set's manifest, or (a set captured in part) any of its disks.
        let held = image_format::set::set_generations(store, set).is_ok_and(|g| !g.is_empty())
            || image_format::capture_names(store).is_ok_and(|names| {
                names.iter().any(|n| {
                    image_format::set::parse_disk_stream_name(n)
                        .is_some_and(|(s, _)| s.eq_ignore_ascii_case(set))
                })
            });
        let _ = m.close();
        held
    });
    if set_exists {
        return usage(format!(
            "{} is a disk of machine set {set}: capture the set with every disk (--name {set} \
             --source DISK0 --source DISK1 ...), so its disks stay one point in time",
            args.name
        ));
    }
    usage(format!(
        "{} ends in .dK, which is reserved for the disks of a machine set (a capture of \
         --name {set} with several --source makes {set}.d0, {set}.d1, ...): choose a name \
         without the .dK ending, such as {set}-d{k}",
        args.name
    ))
}

/// `capture --abort`.
fn abort(args: &Plan) -> crate::Result<i32> {
    // `DB01.D1` too: names are compared without case.
    let lower = args.name.to_ascii_lowercase();
    if let Some((set, _)) = image_format::set::parse_disk_stream_name(&lower) {
        // One disk's unfinished generation removed leaves the others'
        // unbound: the set's abort removes them all.
        return Err(usage(format!(
            "{} is a disk of machine set {set}: abort the set (--name {set}), which removes the \
             unfinished generation of every disk",
            args.name
        )));
    }
    args.medium.ready_to_change("an abort (capture --abort)")?;
    // `--replace-medium LOST` with --abort: LOST is declared lost first, so an unfinished
    // generation with a share on it can be removed from the media that are left.
    let mut medium = if args.replace_medium.is_empty() {
        // Refused on a read-only open first: the open for writing puts a medium left
        // mid-write right (a write), and an abort refused then (a mistyped name) had changed
        // it unsaid.
        let mut ro = args.medium.open_read_only()?;
        let checked = crate::medium_admin::abort_check(ro.store(), &args.name);
        if checked.is_err() {
            crate::medium_admin::note_left_mid_write(ro.store(), &args.medium);
        }
        let _ = ro.close();
        checked?;
        args.medium.open()?
    } else {
        let members = args.medium.span_members_only()?;
        let lost = crate::medium::SpanPlan {
            lost: args.replace_medium.clone(),
            ..Default::default()
        };
        // Declaring a medium lost is for good: an abort that would be refused (no such
        // capture, nothing unfinished) must not have declared it first.
        let mut ro = members.open_before_capture_for(&lost)?;
        let checked = crate::medium_admin::abort_check(ro.store(), &args.name);
        let closed = ro.close();
        checked?;
        closed?;
        members.open_for_capture(&lost)?
    };
    // The capture's id (a set's: its first disk's), for its cached key once it is gone.
    let id = image_format::capture_id(medium.store(), &args.name)
        .ok()
        .flatten()
        .or_else(|| {
            image_format::capture_id(
                medium.store(),
                &image_format::set::disk_stream_name(&args.name, 0),
            )
            .ok()
            .flatten()
        });
    let plan = match crate::medium_admin::abort(medium.store(), &args.name) {
        Ok(p) => p,
        Err(e) => {
            let _ = medium.close();
            return Err(e);
        }
    };
    medium.close()?;
    crate::medium_admin::record_removal(&args.medium, &plan.name, &plan.remove);
    // Gone from this medium whole, its data key stays in the key cache: another copy of the
    // medium (aborted here to give it up on a copy) may still need it to resume. Said, with the
    // way to forget it (it stayed unsaid).
    // Looked up for a delta's abort too (`--json` said `key_cached: false` of a capture that
    // stays, its key with it); only a whole removal's text says it, as news.
    let cached_key = match id {
        Some(id) => {
            let dir = key_cache_dir(args.key_cache.clone())?;
            crate::keys::find_cached(&dir, &plan.name, &id)?.map(|_| crate::output::hex(&id))
        }
        None => None,
    };
    let gens = plan
        .remove
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if args.json {
        progress::print_json(&serde_json::json!({
            "command": "capture --abort",
            "name": plan.name,
            "removed": plan.remove,
            "capture_removed": plan.whole,
            // The id `mgear keys forget --capture-id` takes; null when the abort removed a
            // capture directory that never wrote a generation (no id was made).
            "capture_id": id.map(|i| crate::output::hex(&i)),
            "key_cached": cached_key.is_some(),
        }))?;
    } else {
        if plan.remove.is_empty() {
            println!(
                "aborted {}: removed its capture directory (the capture stopped before it wrote \
                 any generation)",
                plan.name
            );
        } else {
            println!(
                "aborted {}: removed unfinished generation {gens}{}",
                plan.name,
                if plan.whole {
                    " (it was the only one: the capture is gone from the medium)"
                } else {
                    ""
                }
            );
        }
        if let (true, Some(id)) = (plan.whole, &cached_key) {
            println!(
                "  its data key stays in this host's key cache (a copy of the medium may still \
                 resume it): `mgear keys forget --capture-id {id}` removes it"
            );
        }
    }
    Ok(crate::exit::OK)
}

/// `--replace-medium` re-captures a lost medium's share as a delta over the newest complete
/// generation; an unfinished generation (a share of it on the lost medium, gone) cannot be
/// continued or built on. Refused before the span is rewritten (a refusal changes no medium),
/// naming the way on: abort it with the lost medium declared, then capture again.
fn refuse_replace_over_unfinished(
    store: &mut dyn image_format::Store,
    args: &Plan,
) -> crate::Result<()> {
    let capture = image_format::list_captures(store)?
        .into_iter()
        .find(|c| c.name.eq_ignore_ascii_case(&args.name));
    let unfinished = capture.as_ref().and_then(|c| {
        c.generations
            .iter()
            .find(|g| matches!(g.state, image_format::GenerationState::Unfinished { .. }))
            .map(|g| g.generation)
    });
    let lost = args
        .replace_medium
        .iter()
        .map(|l| format!(" --replace-medium '{l}'"))
        .collect::<String>();
    // The generation a `--replace-medium` run itself started (and "medium full" stopped)
    // holds nothing on the lost medium: it goes on, as the message of that stop says (it
    // was refused here, and the only way out offered threw the work away).
    let span = image_format::span::read_span(store)?;
    let on_lost = |g: u32| -> bool {
        let Some(info) = &span else {
            return true;
        };
        let stored = c_name(capture.as_ref(), &args.name);
        let dir = format!("{}/", image_format::layout::generation_dir(&stored, g));
        let lost = lost_ordinals(&info.map, &args.replace_medium);
        let declared = args
            .replace_medium
            .iter()
            .all(|l| info.map.members.iter().any(|m| m.lost && m.is_named(l)));
        !declared
            || info
                .map
                .placed
                .iter()
                .any(|(p, o)| p.starts_with(&dir) && lost.contains(o))
    };
    if let Some(g) = unfinished.filter(|g| on_lost(*g)) {
        // A disk of a set is aborted with its set (the abort refuses the disk's own name).
        let abort_name = image_format::set::parse_disk_stream_name(&args.name)
            .map_or(args.name.as_str(), |(set, _)| set);
        return Err(usage(format!(
            "capture {} generation {g} is unfinished: --replace-medium re-captures a lost \
             medium's share as a delta over a complete generation, and an unfinished one cannot \
             be continued without its share on the lost medium. Remove it, with the lost medium \
             declared: `mgear capture --abort {}{lost} --name {abort_name}`; then capture again \
             (a complete generation left: the same command; none: without --replace-medium)",
            args.name,
            args.medium.as_args(),
        )));
    }
    Ok(())
}

/// The members of a span declared lost, before or by this run's `--replace-medium` (`named`).
fn lost_ordinals(map: &image_format::span::SpanMap, named: &[String]) -> Vec<u16> {
    map.members
        .iter()
        .filter(|m| m.lost || named.iter().any(|l| m.is_named(l)))
        .map(|m| m.ordinal)
        .collect()
}

/// What capture `args.name`'s complete generations stored on the media of its span declared
/// lost (before or by this run's `--replace-medium`): a delta stores it again. Each
/// generation's stored bytes shared out over its segments (the lost ones' sizes went with
/// them).
fn lost_share(store: &mut dyn image_format::Store, args: &Plan) -> crate::Result<u64> {
    if args.replace_medium.is_empty() {
        return Ok(0);
    }
    let Some(span) = image_format::span::read_span(store)? else {
        return Ok(0);
    };
    let lost = lost_ordinals(&span.map, &args.replace_medium);
    let Some(capture) = image_format::list_captures(store)?
        .into_iter()
        .find(|c| c.name.eq_ignore_ascii_case(&args.name))
    else {
        return Ok(0);
    };
    let mut share = 0u64;
    for g in &capture.generations {
        if g.state != image_format::GenerationState::Complete || g.segments == 0 {
            continue;
        }
        let dir = format!(
            "{}/",
            image_format::layout::generation_dir(&capture.name, g.generation)
        );
        let gone = span
            .map
            .placed
            .iter()
            .filter(|(p, o)| p.starts_with(&dir) && lost.contains(o))
            .count() as u64;
        if gone == 0 {
            continue;
        }
        // What the segments still here hold is not lost: the rest of what the generation
        // stored is. A medium's last segment is cut short where it filled, so an even share
        // per segment asked 51 MiB of a set whose lost medium held 31.
        let mut here = 0u64;
        let mut all_here_known = true;
        for i in 0..g.segments {
            let path = image_format::layout::segment_path(&capture.name, g.generation, i);
            if span.map.placed.get(&path).is_some_and(|o| lost.contains(o)) {
                continue;
            }
            match store.len(&path) {
                Ok(Some(len)) => here = here.saturating_add(len),
                _ => all_here_known = false,
            }
        }
        share = share.saturating_add(match all_here_known {
            true => g.stored_bytes.saturating_sub(here),
            false => g.stored_bytes.saturating_mul(gone) / u64::from(g.segments),
        });
    }
    Ok(share)
}

/// The name a capture is stored under (its case on the medium), `given` if none is found.
fn c_name(found: Option<&image_format::CaptureInfo>, given: &str) -> String {
    found.map_or_else(|| given.to_string(), |c| c.name.clone())
}

/// The parameters of a capture run a resume must repeat, as far as the
/// medium records them in the clear (the journal keeps the rest only as a
/// hash: the source's name, compression, appliance, peers).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Started {
    source_size: u64,
    chunk_size: u32,
    delta: bool,
}

/// The writer refused to resume generation `generation` (its parameters'
/// hash differs): say which parameter differs, old and new, where the
/// medium (or, for the source's name, `names`: as the key cache noted it, as given now)
/// recorded it; else which ones can.
fn resume_mismatch(
    name: &str,
    generation: u32,
    then: Option<&Started>,
    now: &Started,
    medium_args: &str,
    names: Option<(&str, &str)>,
) -> crate::Error {
    let mut differs = Vec::new();
    if let Some((was, is)) = names.filter(|(was, is)| was != is) {
        differs.push(format!(
            "it was started from source {was}, and this run reads {is}: if that is the same \
             disk under another name (unplugged and plugged in again), add `--source-was {}` \
             to resume it (its labels and a sample of the chunks stored before the stop are \
             still compared with it)",
            crate::output::sh(was)
        ));
    }
    if let Some(t) = then {
        if t.source_size != now.source_size {
            differs.push(format!(
                "the source size was {} ({} bytes), now it is {} ({} bytes)",
                human_bytes(t.source_size),
                t.source_size,
                human_bytes(now.source_size),
                now.source_size
            ));
        }
        if t.chunk_size != now.chunk_size {
            differs.push(format!(
                "the chunk size was {}, now it is {} (--chunk-size)",
                human_bytes(u64::from(t.chunk_size)),
                human_bytes(u64::from(now.chunk_size))
            ));
        }
        if t.delta != now.delta {
            differs.push(format!(
                "it was started {} --delta",
                if t.delta { "with" } else { "without" }
            ));
        }
    }
    // A set's disk whose size moved: most likely another disk of the set given at its place
    // (the --source order changed); said as such where a finished disk is (machine.rs).
    if let (Some((set, k)), Some(t)) = (image_format::set::parse_disk_stream_name(name), then) {
        if t.source_size != now.source_size {
            differs.push(format!(
                "if the set's --source were given in another order: disk {k} of set {set} is \
                 the --source number {} (give the disks in the order the set was captured in, \
                 disk 0 first)",
                k + 1
            ));
        }
    }
    let detail = if differs.is_empty() {
        "its source size, chunk size and --delta are the same, so one of these differs: the \
         source as named (--source, a different path or name for the disk: a disk that came \
         back under another name resumes only under the name it had, e.g. an NBD export \
         served again on the same socket path or port), --no-compress, the appliance it goes \
         through, or the machines it deduplicates with"
            .to_string()
    } else {
        differs.join("; ")
    };
    // The way on for what differs: the parameters of the command are the same when the
    // disk's name or size moved, and "rerun with the same parameters" sent a script back to
    // the very run that was refused.
    let abort = format!(
        "remove it with `mgear capture --abort {medium_args} --name {}`",
        image_format::set::owner(name)
    );
    let renamed = names.filter(|(was, is)| was != is);
    let resized = then.is_some_and(|t| t.source_size != now.source_size);
    let remedy = match (renamed, then) {
        (Some((was, _)), _) => format!(
            "add `--source-was {}` if it is the same disk under another name, or {abort}",
            crate::output::sh(was)
        ),
        (None, Some(t)) if resized => format!(
            "give the disk at the size it had when the capture started ({} bytes) to resume \
             it, or {abort}",
            t.source_size
        ),
        _ => format!("rerun with the same parameters to resume it, or {abort}"),
    };
    crate::exit::coded_hint(
        crate::exit::USAGE,
        format!(
            "capture {name} generation {generation} is unfinished and was started with \
             different parameters: {detail}. {}{}",
            remedy[..1].to_uppercase(),
            &remedy[1..]
        ),
        remedy,
    )
}

/// Capture `name`'s newest generation on the medium, when it is unfinished (what a run of
/// the same capture resumes).
fn newest_unfinished(
    store: &mut dyn image_format::Store,
    name: &str,
) -> crate::Result<Option<image_format::GenerationInfo>> {
    Ok(image_format::list_captures(store)?
        .into_iter()
        .find(|c| c.name.eq_ignore_ascii_case(name))
        .and_then(|c| c.generations.last().cloned())
        .filter(|g| matches!(g.state, image_format::GenerationState::Unfinished { .. })))
}

/// [`source_was`] read from the medium and the key cache, for `--dry-run`.
fn dry_run_source_was(
    args: &Plan,
    was: &str,
    store: &mut dyn image_format::Store,
) -> crate::Result<()> {
    let unfinished = newest_unfinished(store, &args.name)?;
    let noted = match (&unfinished, image_format::capture_id(store, &args.name)?) {
        (Some(g), Some(id)) => {
            let cache_dir = key_cache_dir(args.key_cache.clone())?;
            crate::keys::recorded_source_name(&cache_dir, &args.name, &id, g.generation)
        }
        _ => None,
    };
    source_was(args, was, unfinished.as_ref(), noted.as_deref()).map(drop)
}

/// `--source-was WAS`: the name the manifest records for a resume whose disk came back under
/// another, checked against what the key cache noted when the generation began. Only a
/// resume takes it (a new generation records the name its source has).
fn source_was(
    args: &Plan,
    was: &str,
    unfinished: Option<&image_format::GenerationInfo>,
    noted: Option<&str>,
) -> crate::Result<String> {
    let recorded = crate::source::recorded_name(was)?;
    let Some(g) = unfinished else {
        return Err(usage(format!(
            "--source-was is for resuming an unfinished generation, and capture {} has none on \
             this medium: a new generation records the name --source gives; leave \
             --source-was out",
            args.name
        )));
    };
    match noted {
        Some(n) if n != recorded => Err(usage(format!(
            "capture {} generation {} was started from source {n}, not {recorded}: give \
             `--source-was {}`",
            args.name,
            g.generation,
            crate::output::sh(n)
        ))),
        _ => Ok(recorded),
    }
}

/// A resume reads on from where the stopped run left off, from the source as named
/// now; the medium records that name only, and a name can point at another disk in
/// between (a file replaced, a device node or NBD export that now serves another
/// disk): the resumed generation would then join two disks and still verify, as
/// everything in it was captured and sealed right. Refused, before anything is
/// written, when the source's identity (`crate::source::identity`) differs from
/// the one recorded in the key cache when generation `generation` started.
fn check_same_disk(
    args: &Plan,
    cache_dir: &std::path::Path,
    id: &[u8; 16],
    generation: u32,
    now: &[u8; 32],
) -> crate::Result<()> {
    let Some(then) = crate::keys::recorded_source_identity(cache_dir, &args.name, id, generation)
    else {
        return Ok(());
    };
    if then == hex(now) {
        return Ok(());
    }
    Err(another_disk(
        args,
        generation,
        format!(
            "its source {} is no longer named as it was when the generation began (its \
             partition table and labels, or the UUID of a file system on the bare disk)",
            args.source.as_deref().unwrap_or("given")
        ),
        "repartitioned",
    ))
}

/// Refuse (exit 1) a resume or delta of capture `id` whose key slot files are no longer
/// the ones its first run wrote (the digest noted in the key cache): a slot truncated or
/// replaced between a stop and the resume was bound into the finished manifest as found,
/// keyless verify called the capture good, and nothing could decrypt it at the target.
fn check_slots_digest(
    args: &Plan,
    cache_dir: &std::path::Path,
    id: &[u8; 16],
    store: &mut dyn image_format::Store,
    unfinished: &Option<image_format::GenerationInfo>,
) -> crate::Result<()> {
    let Some(then) = crate::keys::recorded_slots_digest(cache_dir, &args.name, id) else {
        // A note that is there but unreadable: the check is skipped, and said (it was silent).
        let note = crate::keys::slots_digest_file(cache_dir, &args.name, id);
        if std::fs::symlink_metadata(&note).is_ok() {
            eprintln!(
                "mgear: warning: {} (the note of capture {}'s key slots as its first run wrote \
                 them) is damaged: the check that the medium's key slots are still those is \
                 skipped; restore the note from a backup of the key cache",
                note.display(),
                args.name
            );
        }
        return Ok(());
    };
    let now = image_format::commit::key_slots_digest(store, &args.name)?;
    if then == hex(&now) {
        return Ok(());
    }
    let first = unfinished
        .as_ref()
        .is_some_and(|g| g.generation == 1 && g.parent.is_none());
    let way = if first {
        format!(
            "remove the unfinished capture with `mgear capture --abort {} --name {}` and capture \
             it again",
            args.medium.as_args(),
            image_format::set::owner(&args.name)
        )
    } else {
        "its finished generations are wrapped to the slots as they were: capture the disk \
         anew under another name or onto another medium, and ingest none of this one until \
         `mgear verify --identity ...` opens it"
            .to_string()
    };
    Err(crate::exit::coded_hint(
        crate::exit::FOUND,
        format!(
            "capture {}'s key slots on the medium (MGEAR/{}/KEYS, KEYPASS) are not the ones it \
             wrote when it was made (noted in {}): damaged, truncated or replaced since, so what \
             it stores under them could not be decrypted at the target; nothing was written",
            args.name,
            args.name,
            cache_dir.display()
        ),
        way,
    ))
}

/// The site key a generation is signed with is noted in the key cache when the generation
/// starts; its resume must sign with the same one (exit 2 before anything is stored). A resume
/// without `--sign` finished with an unsigned receipt, and one with another key with a
/// signature the target had not pinned: both were refused only at the target. A first run
/// without `--sign` may be resumed with one.
fn check_same_signer<S: image_format::Store>(
    args: &Plan,
    cache_dir: &std::path::Path,
    id: &[u8; 16],
    writer: &CaptureWriter<S>,
    key: Option<&ed25519_dalek::SigningKey>,
    resuming: bool,
) -> crate::Result<()> {
    let path = crate::keys::signer_note_file(cache_dir, &args.name, id);
    let g = writer.generation();
    // A generation this run started (not one a stopped run left at chunk 0: its note says
    // what it was started with, and `refuse_other_signer` compared it).
    if !resuming || crate::keys::generation_note(&path, g, "signer").is_none() {
        return note_signer(cache_dir, &args.name, id, g, key);
    }
    refuse_other_signer(args, cache_dir, id, g, key)
}

/// Removes the signer note `path` this run made, when the run is refused before its
/// generation begins (best effort: a leftover note only names a signer).
fn drop_note(path: Option<&std::path::Path>) {
    if let Some(p) = path {
        let _ = std::fs::remove_file(p);
    }
}

/// Notes in the key cache that generation `g` of `name` is signed with `key` ("none").
fn note_signer(
    cache_dir: &std::path::Path,
    name: &str,
    id: &[u8; 16],
    g: u32,
    key: Option<&ed25519_dalek::SigningKey>,
) -> crate::Result<()> {
    let path = crate::keys::signer_note_file(cache_dir, name, id);
    let now = key.map_or_else(
        || "none".to_string(),
        |k| crate::sitekey::fingerprint(&k.verifying_key().to_bytes()),
    );
    crate::keys::write_generation_note(&path, g, "signer", &now)
        .with_context(|| format!("noting the signing key in {}", path.display()))
}

/// A `--dirty-bitmap` delta copies the chunks the bitmap calls clean from the parent
/// without reading them: a bitmap created after the parent was captured (or cleared since)
/// misses changes, and the delta finished as a wrong disk that verified bit for bit. A
/// sample ([`crate::preflight::spread_sample`]) of the clean chunks the parent holds as
/// data, spread over the disk, is read and compared with the parent by keyed id before anything
/// is written; one that differs refuses the delta (exit 2). A sample, not a proof: a few
/// changed chunks can still be missed, which is why the bitmap must be as old as the parent.
fn check_clean_sample<S: image_format::Store>(
    writer: &CaptureWriter<S>,
    source: &mut dyn crate::source::Source,
    args: &Plan,
    dirty: &[u64],
) -> crate::Result<()> {
    let chunk = u64::from(args.chunk_size);
    let size = source.len();
    let start = writer.resume_from();
    let clean: Vec<u64> = (start..writer.chunk_count())
        .filter(|i| dirty.binary_search(i).is_err() && writer.can_copy_unchanged(*i))
        .collect();
    let mut buf = Vec::new();
    for index in crate::preflight::spread_sample_with_ends(&clean, chunk) {
        let at = index * chunk;
        buf.resize(chunk.min(size.saturating_sub(at)) as usize, 0);
        source.read_exact_at(at, &mut buf)?;
        if writer.parent_matches(index, &buf) == Some(false) {
            return Err(bitmap_misses(
                args,
                index,
                at,
                at + buf.len() as u64,
                writer.parent().unwrap_or(0),
            ));
        }
    }
    Ok(())
}

/// The refusal of a `--dirty-bitmap` delta whose bitmap calls chunk `index` (disk bytes
/// `at..end`) clean, which reads differently from generation `parent` now.
fn bitmap_misses(args: &Plan, index: u64, at: u64, end: u64, parent: u32) -> crate::Error {
    usage(format!(
        "--dirty-bitmap {}: the bitmap calls chunk {index} (disk bytes {at}..{end}) unchanged \
         since generation {parent}, but it reads differently now: the bitmap misses changes (it \
         was created after that generation was captured, or was cleared since, or the disk \
         was resized), or the disk changes under the capture (export a snapshot). A delta that \
         trusted it would be a wrong disk; nothing was stored. Capture this delta without \
         --dirty-bitmap (it reads the whole disk), and create the bitmap before the capture \
         the next delta builds on",
        args.dirty_bitmap.as_deref().unwrap_or("?"),
    ))
}

/// [`check_clean_sample`] of a new delta, before the writer makes its generation: a refusal
/// then leaves nothing on the medium (it left an empty unfinished generation, which verify,
/// `medium fsck` and a seal then failed on). The parent is read with the capture's key: each
/// sampled chunk the bitmap calls clean must read as the parent holds it (its keyed id, or
/// zeros).
fn check_clean_sample_first(
    store: &mut dyn image_format::Store,
    source: &mut dyn crate::source::Source,
    args: &Plan,
    key: &DataKey,
    dirty: &[u64],
) -> crate::Result<()> {
    use image_format::layout::IndexEntry;
    // A parent that does not open is the writer's to report, with its own words.
    let Ok(parent) = image_format::CaptureReader::open_with_key(store, &args.name, None, key)
    else {
        return Ok(());
    };
    let chunk = u64::from(parent.chunk_size());
    let size = source.len();
    if chunk != u64::from(args.chunk_size) || chunk == 0 {
        return Ok(());
    }
    let ids = parent.chunk_id_key();
    let len_of = |i: u64| chunk.min(size.saturating_sub(i * chunk));
    // (index, the parent's keyed id, or None for a chunk the parent holds as zeros)
    let clean: Vec<(u64, Option<[u8; 32]>)> = (0..size.div_ceil(chunk))
        .filter(|i| dirty.binary_search(i).is_err())
        .filter_map(|i| match parent.entry(i)? {
            IndexEntry::Stored(l) if u64::from(l.plain_len) == len_of(i) => {
                Some((i, Some(l.chunk_id)))
            }
            IndexEntry::Zero { plain_len, .. } if u64::from(*plain_len) == len_of(i) => {
                Some((i, None))
            }
            _ => None,
        })
        .collect();
    let mut buf = Vec::new();
    for (index, id) in crate::preflight::spread_sample_with_ends(&clean, chunk) {
        let at = index * chunk;
        buf.resize(len_of(index) as usize, 0);
        source.read_exact_at(at, &mut buf)?;
        let same = match id {
            Some(id) => ids.id(&buf) == id,
            None => buf.iter().all(|&b| b == 0),
        };
        if !same {
            return Err(bitmap_misses(
                args,
                index,
                at,
                at + buf.len() as u64,
                parent.generation(),
            ));
        }
    }
    Ok(())
}

/// A delta of another disk (the wrong `--source`, a set's disks in another order under new
/// paths) was captured whole, signed, and taken by ingest as the newest generation, with
/// only a warning afterwards. Before anything is stored, a sample
/// ([`crate::preflight::spread_sample`]) of the chunks the parent holds as data, spread over
/// the disk, is read and compared with it by keyed id, stopping at the first that matches: the same disk, even
/// busy, keeps most of them. None matching refuses the delta (exit 2); `--same-source`
/// takes a disk rewritten since. Fewer than 8 such chunks (a small disk, or one mostly
/// zeros) are too little evidence, and the warning after the capture stays for those,
/// unless the source's size is not the parent's disk size (then one is enough).
pub(crate) fn check_delta_sample(
    store: &mut dyn image_format::Store,
    source: &mut dyn crate::source::Source,
    args: &Plan,
    key: &DataKey,
) -> crate::Result<()> {
    // A parent that does not open is the writer's to report, with its own words.
    let Ok(parent) = image_format::CaptureReader::open_with_key(store, &args.name, None, key)
    else {
        return Ok(());
    };
    let chunk = u64::from(parent.chunk_size());
    let size = source.len();
    let ids = parent.chunk_id_key();
    let held: Vec<(u64, [u8; 32])> = (0..size.div_ceil(chunk.max(1)))
        .filter_map(|i| match parent.entry(i)? {
            image_format::layout::IndexEntry::Stored(l)
                if u64::from(l.plain_len) == chunk.min(size - i * chunk) =>
            {
                Some((i, l.chunk_id))
            }
            _ => None,
        })
        .collect();
    let sample = crate::preflight::spread_sample(&held, chunk);
    let want = sample.len();
    // A source of another size than the parent's disk is already a sign of another disk: a
    // smaller one covers too few of the parent's stored chunks to reach 8 (an 8 MiB disk
    // given for a 64 MiB one was captured whole, signed, and ingested as the newest
    // generation), so any chunk it shares with the parent's region is evidence enough.
    let resized = size != parent.disk_size();
    if want == 0 || (want < 8 && !resized) {
        return Ok(());
    }
    let mut buf = Vec::new();
    for (index, id) in sample {
        let at = index * chunk;
        buf.resize(chunk.min(size - at) as usize, 0);
        source.read_exact_at(at, &mut buf)?;
        if ids.id(&buf) == id {
            return Ok(());
        }
    }
    let parent = parent.generation();
    let set = image_format::set::parse_disk_stream_name(&args.name);
    let order = match set {
        Some((set, k)) => format!(
            " (for set {set}, disk {k}: check the --source order, which is the order the set \
             was captured in, disk 0 first)"
        ),
        None => String::new(),
    };
    let src = args.source.as_deref().unwrap_or("the source");
    // Rewritten everywhere sampled is the other way to get here: said first where a program
    // writes the source now (a set's disk in the right order read as given out of order).
    let (said, next) = match being_written(args) {
        Some(w) => (
            format!(
                "{w}: it may be the disk captured as {}, rewritten since in every place \
                 sampled: none of the {want} chunks read where generation {parent} stored data \
                 reads as it did",
                args.name
            ),
            "if it is that disk, --same-source captures it anyway; otherwise give the disk \
             captured as",
        ),
        None => (
            format!(
                "{src} is most likely not the disk captured as {}: none of the {want} chunks \
                 read where generation {parent} stored data reads as it did (the same disk \
                 keeps most of them between captures; or it is that disk, rewritten since in \
                 every place sampled)",
                args.name
            ),
            "give the disk captured as",
        ),
    };
    Err(crate::exit::coded_hint(
        crate::exit::USAGE,
        format!(
            "--delta of {}: {said}{order}. Nothing was stored. Give the disk captured as {}; \
             only if it is that disk, rewritten since, does --same-source capture it anyway",
            args.name, args.name,
        ),
        format!("{next} {}", args.name),
    ))
}

/// The refusal of a resume from another disk: what told it apart (`why`), the ways
/// on, and when `--same-source` is right (the same disk, `changed` since).
fn another_disk(args: &Plan, generation: u32, why: String, changed: &str) -> crate::Error {
    let abort = format!(
        "mgear capture --abort {} --name {}",
        args.medium.as_args(),
        image_format::set::owner(&args.name)
    );
    // A source some program is writing changes as it is read: that, not another disk, is
    // then the likely reason (it was "most likely another disk" beside the warning that said
    // the source is open for writing).
    if let Some(writer) = being_written(args) {
        return crate::exit::coded_hint(
            crate::exit::USAGE,
            format!(
                "capture {} generation {generation} is unfinished, and {why}; {writer}, so it \
                 may be the same disk, {changed} since the stop. If it is the disk the \
                 generation was started from, --same-source resumes it; if it is another \
                 disk, give the one it was started from, or remove the unfinished generation \
                 with `{abort}` and capture this disk again",
                args.name,
            ),
            format!("--same-source if it is the same disk; else the disk it was started from, or `{abort}`"),
        );
    }
    crate::exit::coded_hint(
        crate::exit::USAGE,
        format!(
            "capture {} generation {generation} is unfinished, and {why}: it is most likely \
             another disk, and resuming would join two disks into one. Give the disk the \
             generation was started from to resume it, or remove the unfinished generation \
             with `{abort}` and capture this disk again. Only if it is the same disk, {changed} \
             since, does --same-source resume it anyway",
            args.name,
        ),
        format!("give the disk it was started from, or `{abort}`"),
    )
}

/// When the file behind source `spec` was last written: a regular file's, or the image's
/// behind a loop device (a device node's own times do not move with writes through it);
/// `None` for an NBD export, another device, or a file that cannot be read.
fn write_stamp(spec: &str) -> Option<(i64, i64)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if crate::spec::is_nbd(spec) {
        return None;
    }
    let m = std::fs::metadata(spec).ok()?;
    let m = if m.file_type().is_block_device() {
        std::fs::metadata(crate::guard::loop_backing_file(m.rdev())?).ok()?
    } else {
        m
    };
    m.is_file().then(|| (m.mtime(), m.mtime_nsec()))
}

/// "SOURCE is open for writing by process PID (CMD)" of a file or device source a program
/// holds open for writing now; `None` otherwise (or for an NBD export).
fn being_written(args: &Plan) -> Option<String> {
    let spec = args.source.as_deref()?;
    if crate::spec::is_nbd(spec) {
        return None;
    }
    crate::guard::writer_of(std::path::Path::new(spec))
        .map(|(pid, cmd)| format!("{spec} is open for writing by process {pid} ({cmd})"))
}

/// A resumed generation reads on from its source as named now: besides its labels
/// (`check_same_disk`, before anything is written), the chunks it stored before the
/// stop are compared with the source by keyed id: up to [`SAMPLE_CHUNKS`] of them
/// (at most [`SAMPLE_BYTES`] read), spread over what was captured, chunk 0 left out
/// (its labels were compared; two disks made alike share it). The same disk, running,
/// changes some; another disk with the same partition table (`sfdisk -d | sfdisk`) or
/// the same first chunks matches few or none. More than half of the chunks read again
/// must match, labels or not: with one match enough for a disk whose labels matched, a
/// disk made from the same image (its partition table and first 3 MiB alike) was joined
/// to the stopped run's and verified bit for bit at ingest. Refused otherwise (a disk
/// rewritten in most of the places read resumes with `--same-source`): the resume has
/// only closed the stopped run's last segment, which a later resume takes as it is.
fn check_stored_sample<S: image_format::Store>(
    writer: &CaptureWriter<S>,
    source: &mut dyn crate::source::Source,
    args: &Plan,
) -> crate::Result<()> {
    let done = writer.resume_from();
    let size = source.len();
    let chunk = u64::from(args.chunk_size);
    let want = (SAMPLE_BYTES / chunk).clamp(4, SAMPLE_CHUNKS);
    let mut buf = Vec::new();
    // Chunk `index` read again: whether it reads as stored (`None`: nothing to compare).
    let mut probe = |index: u64| -> crate::Result<Option<bool>> {
        let at = index * chunk;
        buf.resize(chunk.min(size.saturating_sub(at)) as usize, 0);
        source.read_exact_at(at, &mut buf)?;
        Ok(writer.stored_matches(index, &buf))
    };
    let mut found = Vec::new();
    // Evenly spread over chunks 1..done, one in each share: the first stored as data
    // there (chunks recorded as zeros tell nothing).
    let span = done.saturating_sub(1);
    let shares = want.min(span);
    for k in 0..shares {
        let (first, end) = (1 + k * span / shares, 1 + (k + 1) * span / shares);
        if let Some(index) = (first..end).find(|&i| writer.is_stored(i)) {
            found.extend(probe(index)?);
        }
    }
    // Nothing but chunk 0 stored before the stop: that one (which copies of a disk share),
    // and the chunks recorded as zeros, which this disk must still read as zeros for the most
    // part (another disk with the same first chunk and data there was joined to them).
    if found.is_empty() {
        let first = if writer.is_stored(0) { probe(0)? } else { None };
        let mut zeros = Vec::new();
        for k in 0..shares {
            let (from, end) = (1 + k * span / shares, 1 + (k + 1) * span / shares);
            if let Some(index) = (from..end).find(|&i| writer.is_zero(i)) {
                let at = index * chunk;
                buf.resize(chunk.min(size.saturating_sub(at)) as usize, 0);
                source.read_exact_at(at, &mut buf)?;
                zeros.push(buf.iter().all(|&b| b == 0));
            }
        }
        let still = zeros.iter().filter(|&&z| z).count();
        if first != Some(false) && still * 2 >= zeros.len() {
            return Ok(());
        }
        return Err(another_disk(
            args,
            writer.generation(),
            match first {
                Some(false) => format!(
                    "its first chunk, the only one it stored before it stopped, does not read \
                     as it did from its source {}",
                    args.source.as_deref().unwrap_or("given")
                ),
                _ => format!(
                    "{} of the {} chunks it read as zeros before it stopped {} zeros now in \
                     its source {} (its first chunk may be alike: a disk made from the same \
                     image is told apart by its data)",
                    zeros.len() - still,
                    zeros.len(),
                    if zeros.len() - still == 1 {
                        "is not"
                    } else {
                        "are not"
                    },
                    args.source.as_deref().unwrap_or("given"),
                ),
            },
            "much of it rewritten",
        ));
    }
    let checked = found.len() as u64;
    let matched = found.iter().filter(|&&same| same).count() as u64;
    if checked == 0 || matched * 2 > checked {
        return Ok(());
    }
    Err(another_disk(
        args,
        writer.generation(),
        format!(
            "{} from its source {} (a disk made alike, its partition table or first chunks \
             copied, is told apart by its data)",
            match (checked, matched) {
                (1, _) => "the one chunk it stored before it stopped that was read again does \
                           not read as it did"
                    .to_string(),
                (_, 0) => format!(
                    "none of the {checked} chunks it stored before it stopped that were read \
                     again reads as it did"
                ),
                _ => format!(
                    "only {matched} of the {checked} chunks it stored before it stopped that \
                     were read again read as they did"
                ),
            },
            args.source.as_deref().unwrap_or("given"),
        ),
        "much of it rewritten",
    ))
}

/// The longest a capture that makes progress goes without a checkpoint (besides one every
/// `--checkpoint-bytes` stored, or 16 times that of the disk read).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// How many stored chunks [`check_stored_sample`] compares at most, and how many bytes
/// it reads for them at most (large chunks are fewer samples, never fewer than 4).
const SAMPLE_CHUNKS: u64 = 32;
const SAMPLE_BYTES: u64 = 64 << 20;

/// `capture --dry-run`: the plan, nothing written (the medium is opened read-only).
/// A new capture given no key to seal its data key with.
const NEEDS_KEY: &str = "a new capture needs --recipient TARGET.pub (from `mgear keygen` at the \
                         target) and/or --passphrase-file";

/// The key files' refusals the capture makes before it writes (a weak passphrase for a new
/// slot, a `--sign` file that is no site signing key), made by `--dry-run` too: it said
/// "fits", exit 0, of runs the capture then refused.
fn check_key_files(args: &Plan) -> crate::Result<()> {
    if let (Some(f), false) = (args.passphrase_file.as_deref(), args.passphrase_generate) {
        let p = crate::keys::read_passphrase(f)?;
        if !args.delta {
            crate::keys::check_strength(&p, f)?;
        }
    }
    if let Some(k) = args.sign.as_deref() {
        crate::sitekey::read_signing_key(k)?;
    }
    Ok(())
}

fn dry_run(args: &Plan) -> crate::Result<i32> {
    check_key_files(args)?;
    let (chunk_size, rate) = (args.chunk_size, args.rate_limit);
    let spec = source_spec(args)?;
    args.medium.ready_to_capture()?;
    args.medium.refuse_namesakes(&args.name)?;
    args.medium.refuse_read_only()?;
    generated_passphrase(args)?;
    let mut source = crate::source::open(spec, None)?;
    if source.len() == 0 {
        return Err(empty_source(spec, None));
    }
    let mut medium =
        args.medium
            .open_before_capture_for(&span_plan(args, source.len(), chunk_size))?;
    // --source-was as the capture takes it (a plan said "fits" of a run then refused).
    if let Some(was) = &args.source_was {
        if let Err(e) = dry_run_source_was(args, was, medium.store()) {
            let _ = medium.close();
            return Err(e);
        }
    }
    let plan = preflight(args, &mut *source, medium.store(), chunk_size, rate);
    // A new capture without a key is refused by the capture itself: the plan says so too
    // (it said "fits", exit 0).
    let keyless = args.recipient.is_empty()
        && args.passphrase_file.is_none()
        && !args.passphrase_generate
        && image_format::capture_id(medium.store(), &args.name)
            .ok()
            .flatten()
            .is_none();
    medium.close()?;
    let plan = plan?;
    if keyless {
        return Err(usage(NEEDS_KEY));
    }
    // Exit 3 when it does not fit: `ok` says the same.
    let code = if plan.fits == Some(false) {
        crate::exit::IO
    } else {
        crate::exit::OK
    };
    if args.json {
        crate::output::emit_verdict_hint(
            code,
            &does_not_fit(plan.needed, plan.medium_free),
            crate::preflight::NO_ROOM_HINT,
            &plan,
        )?;
    } else {
        print_plan(&plan);
    }
    Ok(code)
}

/// The `error` message of a plan that does not fit (`--json`).
fn does_not_fit(needed: u64, free: Option<u64>) -> String {
    format!(
        "the capture does not fit: it needs about {} and {} are free (nothing was written)",
        human_bytes(needed),
        free.map_or_else(|| "an unknown amount".to_string(), human_bytes)
    )
}

/// The plan of every disk of a machine set (each as its stream `NAME.dK`),
/// and what they need together on the media.
pub struct SetPlan {
    pub disks: Vec<Preview>,
    pub needed: u64,
    pub medium_free: Option<u64>,
    /// A disk of the set resumes an interrupted capture: the set goes on (warned) if
    /// the estimate says it may not fit, as a single disk's resume does.
    pub resuming: bool,
}

impl SetPlan {
    /// Whether the media hold every disk, if their free space is known.
    pub fn fits(&self) -> Option<bool> {
        self.medium_free.map(|f| self.needed <= f)
    }
}

/// Plans every disk of set `args.name` from `sources`, reading only samples.
pub fn plan_set(args: &Plan, sources: &[String]) -> crate::Result<SetPlan> {
    let (chunk_size, rate) = (args.chunk_size, args.rate_limit);
    for s in sources {
        refuse_source_on_medium(&args.medium, s)?;
    }
    args.medium.ready_to_capture()?;
    args.medium.refuse_namesakes(&args.name)?;
    args.medium.refuse_read_only()?;
    // The reserve each medium keeps grows with every disk of the machine.
    let total: u64 = sources
        .iter()
        .filter_map(|s| crate::source::open(s, None).ok().map(|s| s.len()))
        .sum();
    let mut whole = args.clone();
    whole.span_total = Some(total);
    let mut medium = args
        .medium
        .open_before_capture_for(&span_plan(&whole, total, chunk_size))?;
    let planned = (|| {
        let mut disks = Vec::new();
        for (k, src) in sources.iter().enumerate() {
            let mut a = args.clone();
            a.name = image_format::set::disk_stream_name(&args.name, k);
            a.source = Some(src.clone());
            // A disk an interrupted set capture already finished is not planned again: its
            // newest generation is complete, and no set manifest binds it yet (a delta's, a
            // `--replace-medium` one's too: planned again as a delta, it made the dry run of
            // the way on say "DOES NOT FIT" of what then fitted).
            let newest = image_format::list_captures(medium.store())?
                .into_iter()
                .find(|c| c.name.eq_ignore_ascii_case(&a.name))
                .and_then(|c| c.generations.last().cloned());
            let complete = newest
                .as_ref()
                .filter(|g| g.state == image_format::GenerationState::Complete);
            let bound = image_format::set::set_generations(medium.store(), &args.name)?
                .last()
                .copied()
                .unwrap_or(0);
            let finished = complete.is_some_and(|g| !a.delta || g.generation > bound);
            if finished {
                continue;
            }
            // A source that cannot be opened now is reported when its disk's
            // turn comes (the disks before it are captured and resumable).
            let Ok(mut source) = crate::source::open(src, None) else {
                continue;
            };
            if source.len() == 0 {
                return Err(empty_source(src, Some(k)));
            }
            disks.push(preflight(
                &a,
                &mut *source,
                medium.store(),
                chunk_size,
                rate,
            )?);
        }
        // Every disk finished and bound, no --delta: the run refuses it as already captured
        // (the dry run said "0 disks need about 0 B ...: fits", exit 0). Not a medium the
        // finishing run left mid-write: a re-run puts that right.
        let bound = image_format::set::set_generations(medium.store(), &args.name)?
            .last()
            .copied()
            .filter(|_| !medium.store().left_mid_write());
        if let (true, false, None, Some(g)) = (disks.is_empty(), args.delta, &args.sign, bound) {
            return Err(usage(format!(
                "set {} is already captured as generation {g} on {} (finished): use --delta \
                 to add the changes of every disk since, or remove the set with every \
                 generation first to replace it (`mgear medium rm {} --name {} --force`)",
                args.name,
                args.medium.pick("this medium", "these media"),
                args.medium.as_args(),
                args.name
            )));
        }
        Ok(disks)
    })();
    // A resumed disk first cuts what it wrote past its last checkpoint: that room is free
    // to the set as it is to the disk's own plan (a set stopped by "medium full" was
    // refused with the medium added that its error asked for: the cut tail counted as used).
    let resuming = planned.as_ref().ok().and_then(|disks| {
        disks
            .iter()
            .find(|p| p.kind == "resume")
            .map(|p| p.name.clone())
    });
    let free = match &resuming {
        Some(name) => medium.store().free_space_resuming(name),
        None => medium.store().free_space(),
    }
    .ok()
    .flatten();
    medium.close()?;
    let disks = planned?;
    let needed = disks
        .iter()
        .filter(|p| !matches!(p.kind, "sign" | "settle"))
        .map(|p| p.needed)
        .sum();
    Ok(SetPlan {
        disks,
        needed,
        medium_free: free,
        resuming: resuming.is_some(),
    })
}

/// `capture --dry-run` of a machine set: each disk's plan and the sum.
pub fn dry_run_set(args: &Plan, sources: &[String]) -> crate::Result<i32> {
    check_key_files(args)?;
    // What the run refuses first (one disk given twice was planned as two, "fits").
    crate::preflight::check_sources(sources)?;
    let plan = plan_set(args, sources)?;
    generated_passphrase(args)?;
    // Exit 3 when it does not fit: `ok` says the same.
    let code = if plan.fits() == Some(false) {
        crate::exit::IO
    } else {
        crate::exit::OK
    };
    if args.json {
        crate::output::emit_verdict_hint(
            code,
            &does_not_fit(plan.needed, plan.medium_free),
            crate::preflight::NO_ROOM_HINT,
            &serde_json::json!({
                "command": "capture --dry-run",
                "set": args.name,
                "disks": plan.disks,
                "needed": plan.needed,
                "medium_free": plan.medium_free,
                "fits": plan.fits(),
            }),
        )?;
    } else {
        for p in &plan.disks {
            print_plan(p);
        }
        println!(
            "set {}: {} need{} about {} on the media{}",
            args.name,
            crate::units::count(plan.disks.len() as u64, "disk"),
            if plan.disks.len() == 1 { "s" } else { "" },
            human_bytes(plan.needed),
            match plan.medium_free {
                Some(f) => format!(
                    ", {} free: {}",
                    human_bytes(f),
                    if plan.needed <= f {
                        "fits"
                    } else {
                        "DOES NOT FIT (give one more medium: the capture spans them)"
                    }
                ),
                None => String::new(),
            }
        );
    }
    Ok(code)
}

fn print_plan(p: &Preview) {
    let what = match p.kind {
        "resume" => format!(
            "resume {} generation {} at chunk {}",
            p.name, p.generation, p.resume_from_chunk
        ),
        "delta" => format!(
            "delta of {}: generation {} on {}",
            p.name,
            p.generation,
            p.parent.unwrap_or(0)
        ),
        "sign" => format!(
            "{} generation {} is finished: only add this site's signature if it lacks it",
            p.name, p.generation
        ),
        "settle" => format!(
            "{} generation {} is finished, and the run that finished it left the medium \
             mid-write: only put the medium right",
            p.name, p.generation
        ),
        _ => format!("new capture {} generation {}", p.name, p.generation),
    };
    println!("plan (dry run, nothing written): {what}");
    println!(
        "  {:<14} {} ({}, chunks of {})",
        "source",
        p.source,
        human_bytes(p.disk_size),
        human_bytes(u64::from(p.chunk_size))
    );
    let e = &p.estimate;
    if e.samples == 0 {
        println!(
            "  {:<14} not sampled (a delta stores only what changed)",
            "sampled"
        );
    } else {
        println!(
            "  {:<14} {}, {} of them zero; the rest stores at {:.2} of its size",
            "sampled",
            crate::units::count(e.samples, "chunk"),
            e.zero_samples,
            e.ratio
        );
    }
    println!(
        "  {:<14} {}{}",
        "stored",
        if p.estimate_is_upper_bound {
            "at most "
        } else {
            "about "
        },
        human_bytes(e.stored_bytes)
    );
    match e.seconds {
        Some(s) => println!(
            "  {:<14} about {} to read {}",
            "time",
            crate::preflight::human_seconds(s),
            human_bytes(e.to_read)
        ),
        None => println!("  {:<14} unknown (nothing was read)", "time"),
    }
    match (p.medium_free, p.fits) {
        // The need as the space check counts it (with its margins), not the bare estimate:
        // "about 13 MiB stored, 503 MiB free: DOES NOT FIT" read as a contradiction.
        (Some(f), Some(false)) => println!(
            "  {:<14} {} free: DOES NOT FIT (it needs about {} with the estimate's margin: {} \
             missing)",
            "medium",
            human_bytes(f),
            human_bytes(p.needed),
            human_bytes(p.needed.saturating_sub(f))
        ),
        // A delta's bound is the whole disk: what it stores is what changed, unknown here.
        (Some(f), _) if p.estimate_is_upper_bound && p.estimate.stored_bytes > f => println!(
            "  {:<14} {} free: fits if less than that changed (a full medium stops the delta; \
             the same command with one more --medium or --appliance continues it)",
            "medium",
            human_bytes(f)
        ),
        (Some(f), _) => println!("  {:<14} {} free: fits", "medium", human_bytes(f)),
        (None, _) => println!("  {:<14} free space unknown", "medium"),
    }
    for w in &p.warnings {
        println!("  warning: {w}");
    }
}

/// A source of 0 bytes: nothing to capture, and almost always not the disk
/// meant (a device node whose disk is not attached reads as 0 bytes, as does
/// an image whose copy failed), so say where to look.
pub fn empty_source(spec: &str, disk: Option<usize>) -> crate::Error {
    let which = disk.map_or(String::new(), |k| format!(" (disk {k})"));
    usage(format!(
        "source {spec}{which} is empty (0 bytes): a disk of 0 bytes has nothing to capture; \
         check that --source names the disk (a device whose disk is not attached, or an \
         image file cut short, reads as 0 bytes)"
    ))
}

/// Parse `--chunk-size`: a size that is a power of two from 64KiB to 16MiB.
/// The chunk size of a new capture without `--chunk-size`.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;

pub fn chunk_size_arg(text: &str) -> crate::Result<u32> {
    let bytes = parse_size(text)?;
    u32::try_from(bytes)
        .ok()
        .filter(|c| image_format::layout::valid_chunk_size(*c))
        .ok_or_else(|| {
            // `2MB` is 2,000,000 bytes, never a power of two: people who
            // type it mean 2MiB, so name the binary unit.
            let t = text.trim();
            let si = ["kB", "KB", "MB", "GB", "TB"]
                .iter()
                .find(|u| t.ends_with(*u) && !t.ends_with("iB"));
            let suggest = si.map_or(String::new(), |u| {
                let binary = match *u {
                    "kB" | "KB" => "KiB",
                    "MB" => "MiB",
                    "GB" => "GiB",
                    _ => "TiB",
                };
                format!(
                    " ({u} counts powers of 1000; did you mean {}{binary}?)",
                    &t[..t.len() - u.len()]
                )
            });
            usage(format!(
                "--chunk-size {t} is {} bytes: it must be a power of two from 64KiB to 16MiB \
                 (65,536 to 16,777,216 bytes), e.g. 1MiB or 4MiB{suggest}",
                crate::units::group_digits(bytes)
            ))
        })
}

fn source_spec(args: &Plan) -> crate::Result<&str> {
    let spec = args
        .source
        .as_deref()
        .ok_or_else(|| usage("say which disk to capture: --source DISK"))?;
    refuse_source_on_medium(&args.medium, spec)?;
    refuse_secrets_on_medium(args)?;
    Ok(spec)
}

/// Refuse (exit 2) a key cache or passphrase file on the medium the capture writes.
pub fn refuse_secrets_on_medium(args: &Plan) -> crate::Result<()> {
    let cache = key_cache_dir(args.key_cache.clone())?;
    args.medium
        .refuse_secret_on(&format!("the key cache {}", cache.display()), &cache)?;
    if let Some(f) = &args.passphrase_file {
        args.medium
            .refuse_secret_on(&format!("--passphrase-file {}", f.display()), f)?;
    }
    Ok(())
}

/// Refuse (exit 2) a source that is the medium itself (or a partition of
/// it, or a file among a directory medium's captures).
pub fn refuse_source_on_medium(medium: &crate::medium::Where, spec: &str) -> crate::Result<()> {
    match crate::spec::Source::parse(spec) {
        Ok(crate::spec::Source::Path(p)) => medium.refuse_overlap(
            &format!("--source {spec}"),
            &p,
            "capture would read the medium it writes",
        )?,
        // An export served here of the medium's image (by `qemu-nbd` with its locking off)
        // was captured onto that medium, and the capture verified.
        Ok(crate::spec::Source::Nbd(u)) => {
            for (_, p) in crate::guard::served_files(&u) {
                medium.refuse_overlap(
                    &format!("--source {spec} (an NBD export of {})", p.display()),
                    &p,
                    "capture would read the medium it writes",
                )?;
            }
        }
        _ => {}
    }
    refuse_source_is_exported_medium(medium, spec)
}

/// [`refuse_source_on_medium`] for media reached over NBD (`--medium nbd+unix:...`, an
/// appliance's export): the same export as `--source`, or a source that is the image such an
/// export serves here (both were captured onto themselves, exit 0).
fn refuse_source_is_exported_medium(
    medium: &crate::medium::Where,
    spec: &str,
) -> crate::Result<()> {
    let mut exports: Vec<(String, String)> = medium
        .medium
        .iter()
        .filter(|m| crate::spec::is_nbd(m))
        .map(|m| (m.clone(), m.clone()))
        .collect();
    for port in &medium.appliance {
        if let Ok(url) = crate::appliance::medium_locator(port) {
            exports.push((format!("the appliance at {}", port.display()), url));
        }
    }
    if exports.is_empty() {
        return Ok(());
    }
    let source = crate::spec::Source::parse(spec).ok();
    let (endpoint, files): (Option<String>, Vec<(u64, u64)>) = match &source {
        Some(crate::spec::Source::Nbd(u)) => (
            Some(crate::guard::nbd_endpoint(u)),
            crate::guard::served_files(u)
                .into_iter()
                .map(|(id, _)| id)
                .collect(),
        ),
        Some(crate::spec::Source::Path(p)) => (
            None,
            std::fs::metadata(p)
                .map(|m| vec![crate::guard::disk_identity(&m)])
                .unwrap_or_default(),
        ),
        _ => return Ok(()),
    };
    for (name, url) in exports {
        let Ok(u) = crate::spec::nbd_url("--medium", &url) else {
            continue;
        };
        let same_export = endpoint.as_ref() == Some(&crate::guard::nbd_endpoint(&u));
        let same_file = crate::guard::served_files(&u)
            .iter()
            .any(|(id, _)| files.contains(id));
        if same_export || same_file {
            return Err(usage(format!(
                "--source {spec} is the medium {name}, {}: capture would read the medium it \
                 writes. Give a path that is not the medium",
                if same_export {
                    "the same export"
                } else {
                    "the image that export serves"
                }
            )));
        }
    }
    Ok(())
}

/// A `--delta` without `--sign` of a capture whose newest generation the site signed: the
/// delta's receipt said "commit NOT SIGNED" and nothing more, and a target that pins the
/// site key refused the shipment. Said before the capture runs; the same command with
/// `--sign` afterwards adds the signature without capturing again.
fn unsigned_delta_of_signed(store: &mut dyn image_format::Store, name: &str) -> Option<String> {
    use image_format::commit;
    let c = image_format::list_captures(store)
        .ok()?
        .into_iter()
        .find(|c| c.name.eq_ignore_ascii_case(name))?;
    let g = c
        .generations
        .iter()
        .rev()
        .find(|g| g.state == image_format::GenerationState::Complete)?
        .generation;
    let site = *valid_signers(store, &c.name, g, commit::SignerRole::Site).first()?;
    Some(format!(
        "generation {g} of {} was signed by site key {}, and this delta is captured without \
         --sign: a target that pins that key refuses it. Stop and add --sign KEY, or once it \
         finished run the command again with --sign KEY in place of --delta (that signs this \
         delta without capturing again)",
        c.name,
        crate::sitekey::fingerprint(&site)
    ))
}

/// The refusal of a second full copy of a finished capture.
fn finished_error(args: &Plan, generation: u32) -> crate::Error {
    // A run stopped right after it finished is re-run as it was: it is told its capture is
    // complete and where its receipt is, before any way to add to or replace it.
    let trust = args
        .sign
        .as_deref()
        .map(|k| format!(" --trust {}", crate::keyfile::pub_path(k).display()))
        .unwrap_or_default();
    usage(format!(
        "{} is already captured as generation {generation} on {}, complete (a run \
         stopped after it finished is done: `mgear verify {} --name {}{trust}` checks it and \
         prints its commit, the receipt's). A second full copy would only use space: use \
         --delta to add the changes since, or, only to replace it, remove the capture with \
         every generation first (`mgear medium rm {} --name {} --force`)",
        args.name,
        args.medium.pick("this medium", "these media"),
        args.medium.as_args(),
        args.name,
        args.medium.as_args(),
        args.name,
    ))
}

/// Chunks sampled for the estimate: enough to see a disk's mix of zeros,
/// text and binaries, few enough to cost well under a second.
const ESTIMATE_SAMPLES: u64 = 32;

/// The checks before writing: the name against the medium (case, a
/// finished capture), the source (container, read-write mount), the
/// estimate and the free space. Errors when capture must not go on; the
/// space verdict is left to the caller (a dry run prints it).
fn preflight(
    args: &Plan,
    source: &mut dyn crate::source::Source,
    store: &mut dyn image_format::Store,
    chunk_size: u32,
    rate: Option<f64>,
) -> crate::Result<Preview> {
    let spec = source_spec(args)?;
    // A set's directory holds its set manifests, not a capture: one disk
    // captured under its name would begin a generation there and wipe them.
    let stored = image_format::stored_name(store, &args.name)?;
    if image_format::set::is_set(store, &stored)? {
        return Err(usage(format!(
            "this medium holds machine set {stored}: a single-disk capture needs its own name \
             (--name), or capture the set with every disk as --source, in order"
        )));
    }
    let captures = image_format::list_captures(store)?;
    // Disk streams of a set under this name, with no SET yet: a set capture that was stopped.
    // A single-disk capture here would take the set's directory, and the set could neither
    // resume nor be aborted without taking it.
    let streams: Vec<&str> = captures
        .iter()
        .filter(|c| {
            image_format::set::parse_disk_stream_name(&c.name)
                .is_some_and(|(set, _)| set.eq_ignore_ascii_case(&args.name))
        })
        .map(|c| c.name.as_str())
        .collect();
    if !streams.is_empty() && !args.name.contains('.') {
        return Err(usage(format!(
            "this medium holds the disks of an unfinished machine set {} ({}): run that set's \
             capture again with every disk as --source, in order (it resumes), or remove it \
             first (`mgear capture --abort --name {} {}`); a single disk needs another name",
            args.name,
            streams.join(", "),
            args.name,
            args.medium.as_args()
        )));
    }
    let existing = captures
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case(&args.name));
    if let Some(c) = existing.filter(|c| c.name != args.name) {
        // What the same capture takes next: a resume of its unfinished generation (the same
        // command), or a delta of a finished one (--delta was suggested for both, and refused).
        let unfinished = c
            .generations
            .last()
            .is_some_and(|g| g.state != image_format::GenerationState::Complete);
        return Err(usage(format!(
            "this medium already holds capture {}, and capture names are compared without case \
             (FAT keeps one directory for both): --name {} is the same capture. Use --name {} \
             ({}), or choose another name",
            c.name,
            args.name,
            c.name,
            if unfinished {
                "its unfinished generation resumes with the command it was started with"
            } else {
                "with --delta to add the changes"
            }
        )));
    }
    let newest = existing.and_then(|c| c.generations.last());
    let (kind, generation, parent, resume_from) = match newest {
        // Refused here, before a key is cached or a directory made: the writer's own refusal
        // came after both and left them behind at every try.
        None if args.delta && !args.replace_medium.is_empty() => {
            return Err(usage(format!(
                "there is no capture {} on the media given for --replace-medium to go on with: \
                 it re-captures the share of a lost medium of a capture the other media of its \
                 span hold. Give every remaining medium of that span with --medium, and the \
                 capture's name",
                args.name
            )))
        }
        None if args.delta => {
            return Err(usage(format!(
                "there is no capture {} on this medium for --delta to add the changes to: a \
                 delta needs a finished earlier capture of the disk on the same medium. Run the \
                 capture without --delta first (or give the medium that holds it)",
                args.name
            )))
        }
        None => ("new", 1, None, 0),
        Some(g) => match g.state {
            image_format::GenerationState::Unfinished { next_chunk } => {
                ("resume", g.generation, g.parent, next_chunk)
            }
            image_format::GenerationState::Complete if args.delta => {
                ("delta", g.generation + 1, Some(g.generation), 0)
            }
            // With --sign, or through an appliance, a run that only adds a missing
            // signature (checked once the medium is open for writing): the site's, or the
            // appliance's witness an earlier run could not add.
            image_format::GenerationState::Complete
                if (args.sign.is_some() || args.medium.first_appliance().is_some())
                    && signature_due(args, store)? =>
            {
                ("sign", g.generation, g.parent, g.chunk_count)
            }
            // The run that finished it was cut off while it closed the medium (a kill, a
            // pulled cable): the same command again puts the media right and is done (it
            // said "already captured" and exit 2, and a span's second medium stayed without
            // the MANIFEST every medium holds a copy of).
            image_format::GenerationState::Complete if store.left_mid_write() => {
                ("settle", g.generation, g.parent, g.chunk_count)
            }
            image_format::GenerationState::Complete => {
                return Err(finished_error(args, g.generation))
            }
            image_format::GenerationState::Damaged(ref why) => {
                let c = existing.map(|c| c.name.as_str()).unwrap_or(&args.name);
                let gens: Vec<u32> = existing
                    .map(|c| c.generations.iter().map(|i| i.generation).collect())
                    .unwrap_or_default();
                // A generation that was finished once is damaged data, not
                // an interrupted start: never write over it.
                if image_format::finished_evidence(store, c, g.generation, &gens)?.is_some() {
                    return Err(crate::exit::coded(
                        crate::exit::FOUND,
                        format!(
                            "capture {c} generation {} is damaged ({why}): a capture does not \
                             write over it. `mgear verify` says what is wrong; to replace it, \
                             `mgear medium rm {} --name {c} --generation {} --force`, then run \
                             this command again",
                            g.generation,
                            args.medium.as_args(),
                            g.generation
                        ),
                    ));
                }
                // Nothing durable: the writer starts this generation afresh.
                ("new", g.generation, None, 0)
            }
        },
    };
    // What the writer refuses once the medium is open for writing, said here too, where the
    // dry run and the set's plan read it: a plan that "fits" and a run that is refused.
    if let Some(g) = newest {
        let now = Started {
            source_size: source.len(),
            chunk_size,
            delta: args.delta,
        };
        let then = Started {
            source_size: g.disk_size,
            chunk_size: g.chunk_size,
            delta: g.parent.is_some(),
        };
        // (An unfinished generation whose journal gave no sizes is left to the writer.)
        let known = then.source_size != 0 && then.chunk_size != 0;
        if kind == "resume"
            && known
            && (now.source_size, now.chunk_size) != (then.source_size, then.chunk_size)
        {
            return Err(resume_mismatch(
                &args.name,
                generation,
                Some(&then),
                &now,
                &args.medium.as_args(),
                None,
            ));
        }
        if kind == "delta" && g.chunk_size != chunk_size {
            return Err(usage(format!(
                "a delta must use its parent's chunk size ({}, generation {}), not {}: give \
                 --chunk-size {}KiB",
                human_bytes(u64::from(g.chunk_size)),
                g.generation,
                human_bytes(u64::from(chunk_size)),
                g.chunk_size / 1024
            )));
        }
    }
    // The key slots the capture was made with, as its key cache recorded them (a set's are
    // checked with the set's key).
    if matches!(kind, "resume" | "delta") && args.dry_run {
        if let Some(id) = image_format::capture_id(store, &args.name)? {
            let cache_dir = key_cache_dir(args.key_cache.clone())?;
            if let Some(c) = crate::keys::find_cached(&cache_dir, &args.name, &id)? {
                same_recipients(args, &c.path, args.passphrase_file.is_some())?;
                // The delta's same-disk sample, as the capture runs it (a plan said "fits"
                // of a delta the capture then refused as another disk); a resumed delta's too.
                let delta = kind == "delta" || (kind == "resume" && parent.is_some());
                if delta && !args.same_source && args.dirty_bitmap.is_none() {
                    let key = DataKey::load_cache(&c.path, &c.name)?;
                    check_delta_sample(store, source, args, &key)?;
                }
            }
        }
    }
    if kind == "resume" && resume_from > 0 && !args.same_source {
        if let Some(id) = image_format::capture_id(store, &args.name)? {
            let cache_dir = key_cache_dir(args.key_cache.clone())?;
            let now = crate::source::identity(source)?.digest;
            check_same_disk(args, &cache_dir, &id, generation, &now)?;
        }
    }
    crate::preflight::check_container(source, spec)?;
    let mut warnings = Vec::new();
    if let Some(profile) = args.check_profile {
        let disk = image_format::set::parse_disk_stream_name(&args.name).map(|(_, k)| k);
        warnings.extend(readiness(source, profile, disk)?);
    }
    if !crate::spec::is_nbd(spec) {
        for m in crate::preflight::rw_mounts_of(std::path::Path::new(spec)) {
            warnings.push(format!(
                "{} is mounted read-write at {} ({}): the capture may not match any single moment \
                 of the disk; capture a snapshot (LVM, qemu-img) or remount it read-only first",
                spec, m.mount_point, m.fs_source
            ));
        }
        // A running VM's disk image, or any program writing it: as a mount, the capture is
        // then a mix of moments (it went through without a word).
        if let Some((pid, cmd)) = crate::guard::writer_of(std::path::Path::new(spec)) {
            warnings.push(format!(
                "{spec} is open for writing by process {pid} ({cmd}): the capture may not \
                 match any single moment of the disk; capture a snapshot (LVM, qemu-img) or \
                 stop the program first"
            ));
        }
        // A read-write loop device over the image, unmounted and held by nobody: anything
        // may write the disk through it during the capture (it went unsaid).
        let loops = crate::guard::writable_loops_over(std::path::Path::new(spec));
        if !loops.is_empty() {
            warnings.push(format!(
                "{spec} has a read-write loop device over it ({}): whatever writes through it \
                 during the capture changes the disk under it; detach it (`losetup -d`) or make \
                 it read-only (`blockdev --setro`) first, or capture a snapshot",
                loops.join(", ")
            ));
        }
    }
    // A delta (a resumed one too: its generation has a parent) is not sampled: its size is
    // the changes, which sampling cannot see, and a dirty-bitmap delta must not read clean
    // ranges. A resumed delta was checked as a whole disk and refused as "medium full".
    let upper = kind == "delta" || (kind == "resume" && parent.is_some());
    let mut estimate = crate::preflight::estimate(
        source,
        chunk_size,
        resume_from,
        !args.no_compress,
        if upper { 0 } else { ESTIMATE_SAMPLES },
        rate,
    )?;
    // A resume first cuts what its capture wrote past the last checkpoint: that room is free
    // to it (a second medium given after "medium full" was called too small by the uncut
    // tail on the first, and the capture then fitted).
    // So does a start over a generation cut off at its start (what it holds is freed).
    let free = if kind == "resume" || (kind == "new" && newest.is_some()) {
        store.free_space_resuming(&args.name)
    } else {
        store.free_space()
    }
    .ok()
    .flatten();
    // A sparse image's free clusters are holes the host must still find room for: a plan
    // that "fits" stopped as the file system holding the image filled.
    let host = host_room(args, free).filter(|(room, _)| free.is_some_and(|f| *room < f));
    let fat_free = free;
    let free = host.map_or(fat_free, |(room, _)| Some(room));
    // Under a rate limit the samples are cut to about a second of it (as few as 4): too few
    // to refuse on (4 samples of a mostly empty disk said "does not fit" of a capture the
    // full sample, and the capture, found fitted). Where they say it does not fit, the full
    // sample is read, once, at the disk's speed (64 MiB at most), and judges instead. So
    // where the disk fits only as far as zeros and compression save: 10 samples of a disk that
    // repeats 4 kinds of chunk said 15 MiB of what stored 50, "fits", and it stopped full.
    let unsaved = crate::preflight::stored_estimate(estimate.to_read, chunk_size, 0.0, 1.0)
        .saturating_sub(estimate.hole_bytes);
    if !upper && rate.is_some() && free.is_some_and(|f| estimate.stored_bytes > f || unsaved > f) {
        let mut full = crate::preflight::estimate(
            source,
            chunk_size,
            resume_from,
            !args.no_compress,
            ESTIMATE_SAMPLES,
            None,
        )?;
        if full.samples > estimate.samples {
            full.seconds = estimate.seconds;
            estimate = full;
        }
    }
    // A delta of an unchanged disk stores only its index: check that much. One that
    // replaces a lost medium stores again what its generations had there (the plan said
    // "2 MiB: fits" of a delta that had 30 MiB to store again, and it stopped full).
    let needed = if upper {
        crate::preflight::stored_estimate(estimate.to_read, chunk_size, 1.0, 0.0)
            .saturating_add(lost_share(store, args)?)
    } else {
        // Sampled, so off by a little either way where it counts on zeros and compression:
        // 4 % of what it says those save is kept for that (a plan 2 % under what the disk
        // stored said "fits" of a medium the capture then filled). Incompressible data
        // without zeros is estimated at what it stores, and keeps nothing more; nor do the
        // holes the source reports, which are zeros for certain (4 % of a 64 GiB sparse
        // file's holes asked 2.5 GiB of a capture that stored 4 MiB).
        let raw = crate::preflight::stored_estimate(estimate.to_read, chunk_size, 0.0, 1.0);
        let saved = raw
            .saturating_sub(estimate.stored_bytes)
            .saturating_sub(estimate.hole_bytes);
        estimate.stored_bytes.saturating_add(saved / 25)
    };
    // Said where it binds (a large sparse image on a smaller disk is no news otherwise).
    if let (Some((room, avail)), Some(f)) = (host, fat_free) {
        if needed > room {
            warnings.push(format!(
                "the medium image's file system has {} free, and the image is sparse: of the \
                 {} free in the medium, {} can be written before that file system is full \
                 (free space there, or put the image on a larger one)",
                human_bytes(avail),
                human_bytes(f),
                human_bytes(room)
            ));
        }
    }
    Ok(Preview {
        command: "capture --dry-run",
        name: args.name.clone(),
        source: source.describe(),
        disk_size: source.len(),
        chunk_size,
        kind,
        generation,
        parent,
        resume_from_chunk: resume_from,
        estimate,
        estimate_is_upper_bound: upper,
        medium_free: free,
        needed,
        fits: free.map(|f| needed <= f),
        warnings,
    })
}

/// The source's readiness for `profile`, read before anything ships: each finding that is
/// not plain information, as a warning line. Disk 0 of a machine (or a single disk) is
/// checked as the boot disk, other disks for what any volume needs.
fn readiness(
    source: &mut dyn crate::source::Source,
    profile: &mgear_boot::TargetProfile,
    set_disk: Option<usize>,
) -> crate::Result<Vec<String>> {
    struct At<'a>(&'a mut dyn crate::source::Source);
    impl mgear_boot::ReadAt for At<'_> {
        fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> mgear_boot::Result<()> {
            self.0
                .read_exact_at(offset, buf)
                .map_err(|e| mgear_boot::BootError::Format(format!("{e:#}")))
        }
    }
    let size = source.len();
    let boot_disk = matches!(set_disk, None | Some(0));
    let findings = match mgear_boot::inspect_disk(&mut At(source), size) {
        Ok(facts) if boot_disk => mgear_boot::check_profile(&facts, profile),
        Ok(facts) => mgear_boot::check_data_disk(&facts, profile),
        // A finding about the disk: the capture goes on, as with every other.
        Err(mgear_boot::BootError::Partition(why)) => {
            vec![mgear_boot::unreadable_table(&why, boot_disk)]
        }
        Err(e) => return Err(crate::err!("reading the source for --check-profile: {e}")),
    };
    Ok(findings
        .iter()
        .filter(|f| f.severity != mgear_boot::Severity::Info)
        .map(|f| {
            format!(
                "readiness for {} ({}): {} {}: {}",
                profile.name,
                profile.description,
                crate::output::serde_name(&f.severity),
                f.code,
                f.message
            )
        })
        .collect())
}

/// Do the capture; returns the report.
pub fn capture(args: &Plan) -> crate::Result<Report> {
    capture_disk(args, None)
}

/// What `--passphrase-generate` does for this run.
enum Generated {
    /// Not given.
    NotAsked,
    /// The file of the stopped (or killed) run that started this capture: its slot check
    /// (`same_slots`, a set's in `machine::shared_key`) says whether it opens it.
    Kept,
    /// A new capture: a new passphrase goes to this file.
    Write(PathBuf),
}

/// Decides what `--passphrase-generate` does (see [`with_generated_passphrase`]), or the
/// refusal the capture would make: `--dry-run` makes it too (it said "fits" of a new capture
/// whose passphrase file was already there, which the capture then refused).
fn generated_passphrase(args: &Plan) -> crate::Result<Generated> {
    let Some(file) = args
        .passphrase_file
        .clone()
        .filter(|_| args.passphrase_generate)
    else {
        return Ok(Generated::NotAsked);
    };
    // (started: a capture of this name, or a disk of the set of this name, has a capture id
    // (its key slots and journal were written); left: anything of it is on the medium, a
    // directory with key slots at most of a run killed at its very start included).
    let (existed, left) = passphrase_capture_on_medium(args)?;
    if file.symlink_metadata().is_ok() {
        if existed || left {
            return Ok(Generated::Kept);
        }
        return Err(crate::keys::passphrase_file_exists(&file));
    }
    if existed {
        return Err(usage(format!(
            "capture {} already exists: --passphrase-generate would write a passphrase that \
             does not open it (nothing was written). {}",
            args.name,
            slots_kept(args)
        )));
    }
    crate::keys::passphrase_dir_missing(&file)?;
    Ok(Generated::Write(file))
}

/// Whether the capture (or set) `args` names was started on the medium, and whether anything
/// of it is there at all (see [`generated_passphrase`]).
fn passphrase_capture_on_medium(args: &Plan) -> crate::Result<(bool, bool)> {
    let mut ro = args.open_before_capture()?;
    let r = (|| -> crate::Result<(bool, bool)> {
        let store = ro.store();
        let ours: Vec<String> = image_format::list_captures(store)?
            .into_iter()
            .map(|c| c.name)
            .filter(|n| image_format::set::owner(n).eq_ignore_ascii_case(&args.name))
            .collect();
        let mut started = image_format::set::is_set(store, &args.name)?;
        for n in &ours {
            started = started || image_format::capture_id(store, n)?.is_some();
        }
        Ok((started, !ours.is_empty()))
    })();
    let closed = ro.close();
    let r = r?;
    closed?;
    Ok(r)
}

/// Runs `capture` (of one disk or of a set) with `--passphrase-generate`
/// resolved once for the whole run: the new passphrase file is written
/// before the first disk (every disk of a set shares it), and the run gets
/// it as a plain `--passphrase-file`. A run that stops after its capture was
/// started keeps the file (it opens what is on the medium), and the same
/// command then resumes with it; a run refused before its capture existed
/// removes the file again (it would open nothing). A new capture never takes
/// a file that is already there, and a capture already on the medium never
/// gets a new passphrase (its slots were made at its first generation).
pub fn with_generated_passphrase<T>(
    args: &Plan,
    run: impl FnOnce(&Plan) -> crate::Result<T>,
) -> crate::Result<T> {
    let file = match generated_passphrase(args)? {
        Generated::NotAsked => return run(args),
        Generated::Kept => {
            let mut plain = args.clone();
            plain.passphrase_generate = false;
            return run(&plain);
        }
        Generated::Write(file) => file,
    };
    let mut plain = args.clone();
    plain.passphrase_generate = false;
    crate::keys::generate_passphrase(&file)?;
    eprintln!(
        "mgear capture: wrote a new passphrase to {} (0600): it opens this capture; send it to \
         the target apart from the medium",
        file.display()
    );
    let r = run(&plain);
    if r.is_err() && matches!(passphrase_capture_on_medium(args), Ok((false, false))) {
        let _ = std::fs::remove_file(&file);
        eprintln!(
            "mgear capture: removed {} again: the capture was not started, so nothing opens \
             with that passphrase",
            file.display()
        );
    }
    r
}

/// The data key and capture id every disk of a machine set shares.
pub struct Shared {
    pub key: DataKey,
    pub capture_id: [u8; 16],
    /// Disk streams of the set captured before this one in this generation:
    /// chunks they stored are not stored again (dedup across the disks).
    pub dedup_with: Vec<String>,
    /// Other machines' captures (name, generation) whose records may be
    /// borrowed (`--dedup-across-machines`).
    pub peers: Vec<(String, u32)>,
}

/// What `--dedup-across-machines MACHINE` resolves to on the medium.
pub struct Borrow {
    /// MACHINE as stored on the medium.
    pub machine: String,
    /// Its capture id, which the borrowing capture takes.
    pub capture_id: [u8; 16],
    /// Its captures to borrow from: its newest finished generation (every
    /// disk stream of a set), as (capture, generation).
    pub peers: Vec<(String, u32)>,
}

/// Resolves `--dedup-across-machines MACHINE` for capture `own` (a machine
/// name): MACHINE's newest finished generation on the medium, refused with
/// a message saying what to do when there is none or it is not another
/// machine.
pub fn resolve_borrow(
    store: &mut dyn image_format::Store,
    machine: &str,
    own: &str,
) -> crate::Result<Borrow> {
    use image_format::set;
    if let Some((m, _)) = set::parse_disk_stream_name(machine) {
        return Err(usage(format!(
            "--dedup-across-machines names a machine, not one disk of it: give {m}"
        )));
    }
    if machine.eq_ignore_ascii_case(own) {
        return Err(usage(format!(
            "--dedup-across-machines {machine} names this machine itself: its own generations \
             already deduplicate (use --delta)"
        )));
    }
    let stored = image_format::stored_name(store, machine)?;
    if set::is_set(store, &stored)? {
        let g = set::set_generations(store, &stored)?
            .last()
            .copied()
            .ok_or_else(|| usage(format!("machine set {stored} has no finished generation")))?;
        let f = set::read_set(store, &stored, g)?.ok_or_else(|| {
            usage(format!(
                "machine set {stored} generation {g} has no set manifest"
            ))
        })?;
        if let Some((_, what)) = set::check_set(store, &f)?.into_iter().next() {
            return Err(usage(format!(
                "cannot borrow from machine set {stored}: {what}"
            )));
        }
        return Ok(Borrow {
            machine: stored.clone(),
            capture_id: f.set.capture_id,
            peers: (0..f.set.disks.len())
                .map(|k| (set::disk_stream_name(&stored, k), g))
                .collect(),
        });
    }
    let caps = image_format::list_captures(store)?;
    let Some(cap) = caps.iter().find(|c| c.name == stored) else {
        let mut have: Vec<String> = caps
            .iter()
            .map(|c| c.name.clone())
            .filter(|n| set::parse_disk_stream_name(n).is_none())
            .collect();
        have.extend(set::list_sets(store)?.into_iter().map(|s| s.name));
        return Err(usage(format!(
            "--dedup-across-machines {machine}: there is no such machine on this medium (it \
             holds: {}); both machines must be on the same medium or span",
            if have.is_empty() {
                "nothing".to_string()
            } else {
                have.join(", ")
            }
        )));
    };
    let g = cap
        .generations
        .iter()
        .rev()
        .find(|g| g.state == image_format::GenerationState::Complete)
        .map(|g| g.generation)
        .ok_or_else(|| {
            usage(format!(
                "{stored} has no finished generation on this medium: finish its capture first"
            ))
        })?;
    let capture_id = image_format::capture_id(store, &stored)?
        .ok_or_else(|| usage(format!("{stored} has no capture id on this medium")))?;
    Ok(Borrow {
        machine: stored.clone(),
        capture_id,
        peers: vec![(stored, g)],
    })
}

/// The data key of the machine `b` borrows from: from the key cache (by
/// its capture id), else its passphrase slot with `--passphrase-file`.
pub fn borrow_key(
    store: &mut dyn image_format::Store,
    args: &Plan,
    b: &Borrow,
) -> crate::Result<DataKey> {
    let dir = key_cache_dir(args.key_cache.clone())?;
    if let Some(c) = crate::keys::find_cached(&dir, &b.machine, &b.capture_id)? {
        return Ok(DataKey::load_cache(&c.path, &c.name)?);
    }
    if let Some(f) = &args.passphrase_file {
        let slot = &b.peers[0].0;
        let has_slot = image_format::list_captures(store)?
            .iter()
            .any(|c| &c.name == slot && c.passphrase_slot);
        if has_slot && f.exists() {
            let p = crate::keys::read_passphrase(f)?;
            let unlock = image_format::Unlock::Passphrase(SecretString::from(p.to_string()));
            return Ok(image_format::unlock_data_key(store, slot, &unlock)?.0);
        }
    }
    Err(usage(format!(
        "--dedup-across-machines {}: its data key (capture id {}) is not in the key cache {}: \
         run on the host that captured {}, pass --key-cache DIR, or --passphrase-file with {}'s \
         passphrase",
        b.machine,
        hex(&b.capture_id),
        dir.display(),
        b.machine,
        b.machine
    )))
}

/// The key slots a new capture gets from `args`, as its key cache records them.
pub(crate) fn slots_of(args: &Plan) -> image_format::keys::CachedSlots {
    image_format::keys::CachedSlots {
        recipients: args.recipient.iter().map(|r| r.to_string()).collect(),
        passphrase: args.passphrase_file.is_some(),
    }
}

/// Refuse (exit 2) a resume or delta of a capture whose key slots are not
/// what this run names: the slots are made once, at the first generation,
/// and a run that names another recipient or passphrase would otherwise
/// finish as if the new one could open the capture. `cache`: the capture's
/// key cache (its recorded slots; an older cache records none and is not
/// checked on recipients); `key`: its data key, which a given passphrase
/// must unwrap from the medium's passphrase slot.
fn same_slots(
    args: &Plan,
    cache: &std::path::Path,
    store: &mut dyn image_format::Store,
    passphrase: Option<&SecretString>,
    key: &DataKey,
) -> crate::Result<()> {
    let recorded = same_recipients(args, cache, passphrase.is_some())?;
    if let Some(p) = passphrase {
        same_passphrase(args, store, &args.name, p, key, recorded.is_none())?;
    }
    Ok(())
}

/// Refuse (exit 2) a passphrase that does not unwrap `key` from the passphrase slot of
/// capture `holder` (the capture itself, or disk 0 of a machine set): a resume or delta
/// would finish as if it opened the capture. `unrecorded`: the key cache recorded no slots
/// (an older cache), so a missing passphrase slot is said here.
pub(crate) fn same_passphrase(
    args: &Plan,
    store: &mut dyn image_format::Store,
    holder: &str,
    passphrase: &SecretString,
    key: &DataKey,
    unrecorded: bool,
) -> crate::Result<()> {
    let name = &args.name;
    let over = slots_kept(args);
    let unlock = image_format::Unlock::Passphrase(passphrase.clone());
    match image_format::unlock_data_key(store, holder, &unlock) {
        Ok((k, _)) if k.as_bytes() == key.as_bytes() => Ok(()),
        // The passphrase is right: the key the cache gave is not the capture's (it was
        // called the wrong passphrase, which ingest then took).
        Ok(_) => Err(crate::exit::coded_hint(
            crate::exit::USAGE,
            format!(
                "the passphrase opens capture {name}'s passphrase slot, but the data key cached \
                 for {name} is another: its key cache file (`mgear keys list` names it) is \
                 damaged or was replaced; nothing was written"
            ),
            format!(
                "`mgear keys forget --name {name}` removes that entry; the same command then \
                 runs on the passphrase and caches the capture's key again"
            ),
        )),
        Err(image_format::Error::WrongKey { .. }) => Err(usage(format!(
            "the passphrase in {} does not open capture {name}'s passphrase slot: it was made \
             with another one. {over}",
            args.passphrase_file
                .as_deref()
                .map_or_else(String::new, |f| f.display().to_string())
        ))),
        Err(image_format::Error::NeedKey { .. }) if unrecorded => Err(usage(format!(
            "capture {name} has no passphrase slot, so this passphrase could not open it. {over}"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// How to go on when a resume or delta names other key slots than the capture was made with.
pub(crate) fn slots_kept(args: &Plan) -> String {
    format!(
        "A capture's key slots are made at its first generation; a resume or --delta keeps \
         them. Run it again with the recipients and passphrase it was first captured with (or \
         with no --recipient: the slots stay as they were made), or capture under a new name \
         for other slots (`mgear capture --abort --name {} {}` first removes an unfinished \
         first capture)",
        args.name,
        args.medium.as_args()
    )
}

/// The refusal of a `--recipient` that cannot be checked: the key cache does not record the
/// recipients the capture's key slot was made for.
fn unknown_slots(args: &Plan) -> crate::Error {
    crate::exit::coded_hint(
        crate::exit::USAGE,
        format!(
            "the key cache does not record which recipient(s) capture {}'s key slot was made \
             for (its entry was made again from the passphrase after `mgear keys forget` or on \
             another host, or by an older release; an age slot does not name its recipients), \
             so --recipient cannot be checked, not even the same one: a --delta or resume \
             keeps the slots the capture was made with and adds none, and a recipient it was \
             not made for could not open it. \
             Run it without --recipient (every recipient the first capture named still opens \
             it), or capture under a new name for other recipients",
            args.name
        ),
        "run it without --recipient",
    )
}

/// The recipients (and whether a passphrase slot) the key cache `cache` recorded when the
/// capture was made, checked against what this run names; `None` for a cache that records
/// none. Shared by single disks, their dry run and machine sets (whose slots are recorded
/// under the set's name).
pub(crate) fn same_recipients(
    args: &Plan,
    cache: &std::path::Path,
    passphrase: bool,
) -> crate::Result<Option<image_format::keys::CachedSlots>> {
    let name = &args.name;
    let over = slots_kept(args);
    let recorded = DataKey::cached_slots(cache)?;
    if recorded.is_none() && !args.recipient.is_empty() {
        return Err(unknown_slots(args));
    }
    if let Some(slots) = &recorded {
        let given: std::collections::BTreeSet<String> =
            args.recipient.iter().map(|r| r.to_string()).collect();
        let made: std::collections::BTreeSet<String> = slots.recipients.iter().cloned().collect();
        if !given.is_empty() && given != made {
            let list = |s: &std::collections::BTreeSet<String>| {
                if s.is_empty() {
                    "none".to_string()
                } else {
                    s.iter().cloned().collect::<Vec<_>>().join(", ")
                }
            };
            let missing: std::collections::BTreeSet<String> =
                given.difference(&made).cloned().collect();
            return Err(usage(if missing.is_empty() {
                format!(
                    "capture {name}'s key slot was made for recipient(s) {}, and this run names \
                     only {}: the slot stays as it was made (each of them still opens the \
                     capture). {over}",
                    list(&made),
                    list(&given)
                )
            } else {
                format!(
                    "capture {name}'s key slot was made for recipient(s) {}, and this run names \
                     {}: {} could not open it. {over}",
                    list(&made),
                    list(&given),
                    list(&missing)
                )
            }));
        }
        if passphrase && !slots.passphrase {
            return Err(usage(format!(
                "capture {name} has no passphrase slot (its first generation was captured \
                 without --passphrase-file), so this passphrase could not open it. {over}"
            )));
        }
    }
    Ok(recorded)
}

/// Capture one disk; `shared`: it is a disk stream of a machine set
/// (`crate::machine`), created with the set's key and capture id.
pub fn capture_disk(args: &Plan, shared: Option<&Shared>) -> crate::Result<Report> {
    let started = Instant::now();
    let cpu0 = progress::cpu_seconds();
    let chunk_size = args.chunk_size;
    let spec = source_spec(args)?;
    let recipients = args.recipient.clone();
    // `--passphrase-generate` wrote its file before this ([`with_generated_passphrase`]).
    let passphrase = match args.passphrase_file.as_deref() {
        Some(f) => {
            let p = crate::keys::read_passphrase(f)?;
            // Only a new capture makes a passphrase slot; a delta's passphrase opens the slot
            // there is (a weak one is then simply not the one: said as such below).
            if !args.delta {
                crate::keys::check_strength(&p, f)?;
            }
            Some(p)
        }
        None => None,
    }
    .map(|p| SecretString::from(p.to_string()));
    let work_factor = crate::keys::capture_work_factor(args.passphrase_work_factor)?;
    let rate = args.rate_limit;
    let checkpoint_bytes = args.checkpoint_bytes.max(1);
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .clamp(1, 64);

    let mut source = crate::source::open(spec, args.dirty_bitmap.as_deref())?;
    let written_at_start = write_stamp(spec);
    let dirty = source.dirty_chunks(chunk_size)?;
    let size = source.len();
    if size == 0 {
        return Err(empty_source(spec, None));
    }
    let cache_dir = key_cache_dir(args.key_cache.clone())?;
    // Refuses a key cache holding a planted symlink before anything is written.
    crate::keys::cached_keys(&cache_dir)?;
    let source_identity = crate::source::identity(&mut *source)?;

    let sign_key = args
        .sign
        .as_deref()
        .map(crate::sitekey::read_signing_key)
        .transpose()?;
    args.medium.ready_to_capture()?;
    args.medium.refuse_namesakes(&args.name)?;
    args.medium.refuse_read_only()?;
    // Check before writing, on a read-only view of the medium: a refusal
    // leaves it byte-for-byte as it was.
    let (exists, on_medium, borrow, preflight_warnings, settle) = {
        let mut ro = args
            .medium
            .open_before_capture_for(&span_plan(args, size, chunk_size))?;
        let checked = (|| {
            let exists = image_format::list_captures(ro.store())?
                .iter()
                .any(|c| c.name.eq_ignore_ascii_case(&args.name));
            // A capture directory with no generation holding a manifest or
            // journal is what a first capture stopped at its very start
            // leaves (key slots at most): nothing there can be resumed or
            // read, so this run starts it over as a new capture (the writer
            // writes new key slots over it).
            let exists = exists && image_format::capture_id(ro.store(), &args.name)?.is_some();
            // After the checks of the name (a machine set's, whose one disk was told to give
            // --recipient, the name being "new"), before anything is written.
            let mut plan = preflight(args, &mut *source, ro.store(), chunk_size, rate)?;
            if !exists && recipients.is_empty() && passphrase.is_none() {
                return Err(usage(NEEDS_KEY));
            }
            if let ("delta", None) = (plan.kind, &sign_key) {
                plan.warnings
                    .extend(unsigned_delta_of_signed(ro.store(), &args.name));
            }
            for w in &plan.warnings {
                eprintln!("mgear capture: warning: {w}");
            }
            if !args.skip_space_check && plan.kind == "resume" {
                // What a resume refuses to start keeps nothing safer: it was written already,
                // and the medium's free count still holds the cut tail the resume takes back.
                // A resume that runs out of room stops as "medium full", resumable onto one
                // more medium, which is the way on this refusal named.
                if let Some(w) =
                    crate::preflight::resume_space_warning(plan.needed, plan.medium_free)
                {
                    eprintln!("mgear capture: warning: {w}");
                }
            } else if !args.skip_space_check && !matches!(plan.kind, "sign" | "settle") {
                crate::preflight::check_space(
                    plan.needed,
                    plan.medium_free,
                    args.medium.noun(),
                    span_reserve(args, plan.disk_size, plan.chunk_size),
                    args.medium.medium.len() + args.medium.appliance.len() == 1,
                )?;
            }
            if !args.replace_medium.is_empty() {
                refuse_replace_over_unfinished(ro.store(), args)?;
            }
            let on_medium = image_format::capture_id(ro.store(), &args.name)?;
            // A finished capture re-run with --sign that has nothing to sign: refused here,
            // before the writer opens the media (and joins any medium added to a span).
            // Through an appliance, its witness may still be due: asked once it is open.
            if let (true, Some(key), None) = (
                plan.kind == "sign",
                &sign_key,
                args.medium.first_appliance(),
            ) {
                if sign_due(ro.store(), args, key, &cache_dir, on_medium.as_ref())?.is_none() {
                    let newest = image_format::list_captures(ro.store())?
                        .into_iter()
                        .find(|c| c.name.eq_ignore_ascii_case(&args.name))
                        .and_then(|c| c.generations.last().map(|g| g.generation))
                        .unwrap_or(1);
                    return Err(finished_error(args, newest));
                }
            }
            // A disk of a set gets its machine's borrow through `shared`.
            let borrow = match (&args.dedup_across_machines, shared) {
                (Some(m), None) => {
                    let b = resolve_borrow(ro.store(), m, &args.name)?;
                    if on_medium.is_some_and(|id| id != b.capture_id) {
                        return Err(usage(format!(
                            "{} was first captured with its own data key, so it cannot share \
                             records with {}: machines share records only when captured under \
                             one key from the first generation (capture it under a new name \
                             with --dedup-across-machines {})",
                            args.name, b.machine, b.machine
                        )));
                    }
                    let key = borrow_key(ro.store(), args, &b)?;
                    Some((b, key))
                }
                _ => None,
            };
            Ok((
                exists,
                on_medium,
                borrow,
                plan.warnings,
                plan.kind == "settle",
            ))
        })();
        match checked {
            Ok(v) => {
                ro.close()?;
                v
            }
            Err(e) => {
                let _ = ro.close();
                return Err(e);
            }
        }
    };

    let appliance_id = match args.medium.first_appliance() {
        Some(port) => Some(crate::appliance::appliance_identity(port)?),
        None => None,
    };
    // Each appliance's identity, so that what answers at its port after a cut is asked only
    // if it is the same unit (a console number given to another appliance since answered
    // for the one that went away, "arrived now").
    let span_ids: Vec<Option<[u8; 32]>> = args
        .medium
        .appliance
        .iter()
        .enumerate()
        .map(|(i, port)| match i {
            0 => appliance_id,
            _ => crate::appliance::appliance_identity(port).ok(),
        })
        .collect();
    // Every appliance of a span holds part of it: each one's custody log says a capture
    // wrote to it (only the first, which witnesses, said so; the others' logs read as if
    // nothing had been written there).
    for port in &args.medium.appliance {
        crate::appliance::capture_begin(port, &args.name)?;
    }
    let mut medium = args
        .medium
        .open_for_capture(&span_plan(args, size, chunk_size))?;
    if let (Some(key), true, false) = (&sign_key, exists, args.delta) {
        let signed = sign_missing(medium.store(), args, key, &cache_dir, on_medium.as_ref());
        match signed {
            Ok(Some(receipt)) => {
                medium.close()?;
                return Ok(signature_only(receipt, size, chunk_size, started));
            }
            Ok(None) => {}
            Err(e) => {
                let _ = medium.close();
                return Err(e);
            }
        }
    }
    // A `--delta` run stopped after its generation was finished and before it was signed
    // or witnessed: the same command again finishes that run (it went on to a new
    // generation and left the finished one unsigned, "captured without --sign" at the
    // target). Only a generation this host started signed with this key (the key cache's
    // note), or captured through this appliance.
    if let (true, true) = (exists, args.delta) {
        let pending = match interrupted_delta(
            medium.store(),
            args,
            &cache_dir,
            on_medium.as_ref(),
            sign_key.as_ref(),
            appliance_id.as_ref(),
        ) {
            Ok(p) => p,
            Err(e) => {
                let _ = medium.close();
                return Err(e);
            }
        };
        if let Some((g, sign, witness)) = pending {
            let mut receipt = None;
            if let (true, Some(key)) = (sign, &sign_key) {
                let signed = sign_generation(medium.store(), &args.name, g, key);
                receipt = Some(match signed {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = medium.close();
                        return Err(e);
                    }
                });
            }
            medium.close()?;
            if let (true, Some(port), Some(identity)) = (
                witness,
                args.medium.first_appliance(),
                appliance_id.as_ref(),
            ) {
                receipt = Some(
                    witness_generation(args, port, identity, &args.name, g).context(
                        "adding the appliance's witness signature to the finished generation",
                    )?,
                );
            }
            let Some(mut receipt) = receipt else {
                crate::bail!("an interrupted delta with nothing to add (a bug)");
            };
            receipt.signed_only = true;
            eprintln!(
                "mgear capture: {} generation {g} (the delta an interrupted run of this command \
                 captured) was finished but not {}: added it, nothing captured again; run the \
                 command again for a newer delta",
                args.name,
                match (sign, witness) {
                    (true, true) => "signed nor witnessed by the appliance",
                    (true, false) => "signed",
                    _ => "witnessed by the appliance",
                }
            );
            return Ok(signature_only(receipt, size, chunk_size, started));
        }
    }
    // Through an appliance whose witness of the finished generation is missing (its witness
    // failed at the end of the run that captured it, which said to run the command again):
    // the witness is added, nothing is captured again.
    if let (true, false, Some(port), Some(identity)) = (
        exists,
        args.delta,
        args.medium.first_appliance(),
        appliance_id.as_ref(),
    ) {
        let missing = match unwitnessed(medium.store(), &args.name, identity) {
            Ok(m) => m,
            Err(e) => {
                let _ = medium.close();
                return Err(e);
            }
        };
        if let Some(g) = missing {
            medium.close()?;
            let receipt = witness_generation(args, port, identity, &args.name, g)
                .context("adding the appliance's witness signature to the finished generation")?;
            eprintln!(
                "mgear capture: {} generation {g} was already captured: added the appliance's \
                 witness signature to its COMMIT, nothing captured again",
                args.name
            );
            return Ok(signature_only(receipt, size, chunk_size, started));
        }
    }
    // Its COMMIT already carries this site's signature (or no --sign): a
    // finished capture is not stored a second time.
    let newest_done = image_format::list_captures(medium.store())?
        .into_iter()
        .find(|c| c.name.eq_ignore_ascii_case(&args.name))
        .and_then(|c| c.generations.last().cloned())
        .filter(|g| g.state == image_format::GenerationState::Complete);
    // The disk size of the generation a delta continues, to say when it changed.
    let parent_size = newest_done.as_ref().map(|g| g.disk_size);
    if let (Some(g), false) = (newest_done, args.delta) {
        if settle {
            // Opened for writing, each medium was put right (and a span's copies made
            // the same): closed cleanly now, that is all there was to do.
            let receipt = receipt_on_medium(medium.store(), &args.name, g.generation);
            medium.close()?;
            let mut receipt = receipt?;
            receipt.put_right_only = true;
            say_put_right_only(&args.name, g.generation);
            return Ok(signature_only(receipt, size, chunk_size, started));
        }
        let _ = medium.close();
        return Err(finished_error(args, g.generation));
    }
    // What the unfinished generation a resume continues was started with:
    // to say which parameter differs if the writer refuses the resume.
    let unfinished_gen = newest_unfinished(medium.store(), &args.name)?;
    let unfinished = unfinished_gen.as_ref().map(|g| Started {
        source_size: g.disk_size,
        chunk_size: g.chunk_size,
        delta: g.parent.is_some(),
    });
    if let (Some(g), Some(id)) = (&unfinished_gen, on_medium.as_ref()) {
        if let Err(e) = refuse_other_signer(args, &cache_dir, id, g.generation, sign_key.as_ref()) {
            let _ = medium.close();
            return Err(e);
        }
    }
    // The data key of the capture already on this medium, found by its
    // capture id: another medium's capture of the same name has its own.
    let cached = match &on_medium {
        Some(id) => crate::keys::find_cached(&cache_dir, &args.name, id)?,
        None => None,
    };
    // Held from here until the capture ends: `keys forget` refuses a key in use
    // (crate::lock). Taken again wherever the key file is rewritten (a new file).
    let mut key_hold = cached.as_ref().and_then(|c| crate::lock::hold_key(&c.path));
    let mut key = match &cached {
        Some(c) => Some(DataKey::load_cache(&c.path, &c.name)?),
        None => shared
            .map(|s| s.key.clone())
            .or_else(|| borrow.as_ref().map(|(_, k)| k.clone())),
    };
    // A new capture's key goes into the key cache before anything of it is
    // on the medium: a run stopped anywhere after that (SIGKILL, a full
    // disk) leaves a medium whose capture id the cache knows, so the same
    // command resumes it. The other order left a journal whose key was
    // nowhere but in the target's slot, and the re-run was refused.
    let mut fresh_id = None;
    if !exists && key.is_none() && shared.is_none() && borrow.is_none() {
        let k = DataKey::generate()?;
        let id = image_format::keys::random::<16>()?;
        create_private_dir(&cache_dir)?;
        crate::keys::remove_stale_temp(&cache_dir, &args.name);
        let file = crate::keys::cache_file(&cache_dir, &args.name, &id);
        k.save_cache_with_slots(&file, &args.name, &id, &slots_of(args))?;
        key_hold = crate::lock::hold_key(&file);
        key = Some(k);
        fresh_id = Some(id);
    }
    // The key slots as this capture's first run wrote them (noted in the key cache): damaged
    // or replaced since, what is stored under them could not be opened at the target.
    if let (true, Some(id)) = (exists, &on_medium) {
        if let Err(e) = check_slots_digest(args, &cache_dir, id, medium.store(), &unfinished_gen) {
            let _ = medium.close();
            return Err(e);
        }
    }
    // A set's disks share the slots made when the set was first captured (not recorded
    // per disk, so not checked here).
    if let (true, Some(c), Some(k), None) = (exists, &cached, &key, shared) {
        if let Err(e) = same_slots(args, &c.path, medium.store(), passphrase.as_ref(), k) {
            let _ = medium.close();
            return Err(e);
        }
    }
    // Opened by its passphrase with no key cache entry (forgotten, another host): which
    // recipients the slot was made for is known nowhere here, and a --recipient named now
    // would be taken without a word (and the cache rebuilt without it, so no later run
    // checks either): the target holding that key could not open what was shipped.
    if let (true, None, true, false, None) = (
        exists,
        &cached,
        passphrase.is_some(),
        args.recipient.is_empty(),
        shared,
    ) {
        let _ = medium.close();
        return Err(unknown_slots(args));
    }
    if exists && key.is_none() && passphrase.is_none() {
        // Without a passphrase slot nothing at the source opens it once its cached key is
        // gone: said, with the way left (it offered --passphrase-file of a capture without one).
        let has_passphrase = crate::keys::KeySlots::of(medium.store(), &args.name).passphrase;
        // An unfinished generation no key reaches can still be removed and captured again.
        let _ = medium.close();
        let abort = unfinished_gen.as_ref().map_or(String::new(), |g| {
            format!(
                "; or remove its unfinished generation {} with `mgear capture --abort {} --name {}` \
                 and capture it again",
                g.generation,
                args.medium.as_args(),
                image_format::set::owner(&args.name)
            )
        });
        let pass = match has_passphrase {
            true => "or --passphrase-file (the capture has a passphrase slot)",
            false => {
                "the capture has no passphrase slot; where no key cache holds its key any \
                 more (`mgear keys forget`), no delta or resume of it can be made: capture the \
                 disk again, in full, under another name"
            }
        };
        return Err(usage(format!(
            "capture {} (capture id {}) already exists on the medium and its data key is not in the key cache {} \
             (a delta or resume must run on the host that made the first capture, or pass --key-cache DIR, \
             {pass}; `mgear keys list` shows the cached keys){abort}",
            args.name,
            on_medium.map_or_else(|| "unknown".to_string(), |id| hex(&id)),
            cache_dir.display()
        )));
    }
    let mut params = CaptureParams::new(&args.name, size);
    params.chunk_size = chunk_size;
    params.compress = !args.no_compress;
    params.recipients = recipients;
    params.passphrase = passphrase;
    params.passphrase_work_factor = work_factor;
    params.delta = args.delta;
    params.capture_id = shared
        .map(|s| s.capture_id)
        .or(borrow.as_ref().map(|(b, _)| b.capture_id))
        .or(fresh_id);
    params.dedup_with = shared.map(|s| s.dedup_with.clone()).unwrap_or_default();
    params.peers = match (shared, &borrow) {
        (Some(s), _) => s.peers.clone(),
        (None, Some((b, _))) => b.peers.clone(),
        (None, None) => Vec::new(),
    };
    params.appliance_id = appliance_id;
    params.source_desc = source.recorded();
    // The name the unfinished generation was started under (noted in the key cache): said
    // when the writer refuses a resume naming the disk otherwise, taken with --source-was.
    let noted_name = match (&unfinished_gen, on_medium.as_ref()) {
        (Some(g), Some(id)) => {
            crate::keys::recorded_source_name(&cache_dir, &args.name, id, g.generation)
        }
        _ => None,
    };
    if let Some(was) = &args.source_was {
        match source_was(args, was, unfinished_gen.as_ref(), noted_name.as_deref()) {
            Ok(w) => params.source_desc = w,
            Err(e) => {
                let _ = medium.close();
                return Err(e);
            }
        }
    } else if let Some(noted) = noted_name
        .as_deref()
        .filter(|n| *n != params.source_desc && crate::source::same_source(n, spec))
    {
        // The name it was started under, spelled another way that resolves to the same file
        // or device now (`../disk.raw` from another directory, a symlink): the same command,
        // not another disk ("started from /w/disk.raw, this run reads /w/other/../disk.raw").
        params.source_desc = noted.to_string();
    }
    let recorded_name = params.source_desc.clone();
    params.created_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    // The key this generation is signed with, noted before the writer makes it: a run
    // killed between the generation's first journal and the note (a few milliseconds) left
    // it at chunk 0 with no note, and a resume without --sign finished it unsigned.
    // A note this run made, taken back when it is refused before the writer begins (a
    // wrong passphrase left `NAME-ID.signer` in the cache, which `keys forget` could not
    // remove: no key matched).
    let mut fresh_note: Option<std::path::PathBuf> = None;
    if unfinished_gen.is_none() {
        if let Some(id) = params.capture_id.or(on_medium) {
            let path = crate::keys::signer_note_file(&cache_dir, &args.name, &id);
            if std::fs::symlink_metadata(&path).is_err() {
                fresh_note = Some(path);
            }
            let last = image_format::list_captures(medium.store())
                .ok()
                .and_then(|caps| {
                    caps.into_iter()
                        .find(|c| c.name.eq_ignore_ascii_case(&args.name))
                        .and_then(|c| c.generations.last().cloned())
                });
            let g = match last {
                Some(l) if l.state == image_format::GenerationState::Complete => l.generation + 1,
                Some(l) => l.generation,
                None => 1,
            };
            let noted = create_private_dir(&cache_dir)
                .and_then(|()| note_signer(&cache_dir, &args.name, &id, g, sign_key.as_ref()));
            if let Err(e) = noted {
                let _ = medium.close();
                return Err(e);
            }
        }
    }
    // A medium that fills up once the MANIFEST is written leaves a finished generation: what
    // the run then tells is not "medium full, continue on another medium".
    let complete_before = newest_complete(medium.store(), &args.name);
    // Before the writer makes the delta's generation: a refusal leaves nothing to resume or
    // abort (made after it, the unfinished generation named the wrong disk as its source and
    // refused the right one as "started with different parameters").
    // A delta resumed too: one stopped before it stored anything had no chunk for the resume's
    // own check to read again, and another disk at its path (or named by --source-was) was
    // stored whole as the next generation, exit 0.
    let delta_run = unfinished_gen
        .as_ref()
        .map_or(args.delta, |g| g.parent.is_some());
    if let (true, None, false, Some(k)) = (delta_run, &dirty, args.same_source, key.as_ref()) {
        let chunk = u64::from(args.chunk_size);
        let mut paced = crate::source::Paced::new(&mut *source, args.rate_limit, chunk);
        if let Err(e) = check_delta_sample(medium.store(), &mut paced, args, k) {
            let _ = medium.close();
            drop_note(fresh_note.as_deref());
            return Err(e);
        }
    }
    if let (true, None, Some(d), Some(k)) = (args.delta, &unfinished_gen, &dirty, key.as_ref()) {
        let chunk = u64::from(args.chunk_size);
        let mut paced = crate::source::Paced::new(&mut *source, args.rate_limit, chunk);
        if let Err(e) = check_clean_sample_first(medium.store(), &mut paced, args, k, d) {
            let _ = medium.close();
            drop_note(fresh_note.as_deref());
            return Err(e);
        }
    }
    let mut stats = RunStats::default();
    let result = (|| {
        let now = Started {
            source_size: params.source_size,
            chunk_size: params.chunk_size,
            delta: params.delta,
        };
        let mut writer = CaptureWriter::begin(medium.store(), params, key)
            .inspect_err(|_| drop_note(fresh_note.as_deref()))
            .map_err(|e| match e {
                image_format::Error::ResumeMismatch { name, generation } => resume_mismatch(
                    &name,
                    generation,
                    unfinished.as_ref(),
                    &now,
                    &args.medium.as_args(),
                    noted_name.as_deref().zip(Some(recorded_name.as_str())),
                ),
                e => e.into(),
            })?;
        create_private_dir(&cache_dir)?;
        let id = writer.capture_id();
        if !exists {
            // This run made the capture's key slots: noted, a later run compares them.
            let d = image_format::commit::key_slots_digest(&mut **writer.store(), &args.name)?;
            crate::keys::record_slots_digest(&cache_dir, &args.name, &id, &d)?;
        }
        // What this generation reads from on: a resume compares it (`check_same_disk`).
        if writer.resume_from() == 0 || args.same_source {
            crate::keys::record_source_identity(
                &cache_dir,
                &args.name,
                &id,
                writer.generation(),
                &source_identity.digest,
            )?;
        }
        if writer.resume_from() == 0 {
            crate::keys::record_source_name(
                &cache_dir,
                &args.name,
                &id,
                writer.generation(),
                &recorded_name,
            )?;
        }
        if writer.resume_from() > 0 && !args.same_source {
            let chunk = u64::from(args.chunk_size);
            let mut paced = crate::source::Paced::new(&mut *source, args.rate_limit, chunk);
            check_stored_sample(&writer, &mut paced, args)?;
        }
        check_same_signer(
            args,
            &cache_dir,
            &id,
            &writer,
            sign_key.as_ref(),
            unfinished_gen.is_some(),
        )?;
        let cache_file = crate::keys::cache_file(&cache_dir, &args.name, &id);
        if fresh_id != Some(id) {
            crate::keys::remove_stale_temp(&cache_dir, &args.name);
            let key = writer.data_key();
            // Rewritten for a resume or delta: the slots recorded when the capture was made
            // stay (they were lost here, and every later run went unchecked: a third
            // generation naming another --recipient was taken).
            let kept = match (exists, &cached) {
                (true, Some(c)) => DataKey::cached_slots(&c.path).ok().flatten(),
                (true, None) => None,
                (false, _) => Some(slots_of(args)),
            };
            match kept {
                Some(slots) => key.save_cache_with_slots(&cache_file, &args.name, &id, &slots)?,
                None => key.save_cache_with_id(&cache_file, &args.name, &id)?,
            }
        }
        // An older release's `NAME.key` of this capture is now kept by id.
        // Only that: a file with an id line is another name's key of this capture id (a
        // machine set's disks share its key and id), which must stay.
        if let Some(old) = cached
            .as_ref()
            .filter(|c| c.path != cache_file && c.capture_id.is_none())
        {
            let _ = std::fs::remove_file(&old.path);
        }
        if fresh_id != Some(id) {
            // Rewritten above: the hold follows the new file.
            key_hold = crate::lock::hold_key(&cache_file);
        }
        // A resumed bitmap delta (a new one was checked before its generation was made).
        if let (Some(d), true) = (&dirty, unfinished_gen.is_some()) {
            let chunk = u64::from(args.chunk_size);
            let mut paced = crate::source::Paced::new(&mut *source, args.rate_limit, chunk);
            check_clean_sample(&writer, &mut paced, args, d)?;
        }
        let pace = Pace {
            chunk_size,
            rate,
            threads,
            checkpoint_bytes,
            json: args.json,
        };
        pump(writer, &mut *source, &pace, dirty.as_deref(), &mut stats)
    })();
    let summary = match result {
        Ok(v) => v,
        Err(e) => {
            let finished = newest_complete(medium.store(), &args.name)
                .filter(|g| complete_before.is_none_or(|b| *g > b));
            let e = if let (true, Some(g)) = (crate::exit::is_no_space(&e), finished) {
                complete_but_full(args, g, "its last journal entry", sign_key.is_some(), e)
            } else if crate::exit::is_no_space(&e) {
                medium_full(
                    args,
                    e,
                    &mut *source,
                    &stats,
                    size,
                    chunk_size,
                    medium.store().free_space().ok().flatten(),
                )
            } else if !matches!(crate::exit::classified(&e), Some(1 | 2)) {
                // Any appliance of a span may be the one cut off (the second's loss was a raw
                // "Broken pipe").
                args.medium
                    .appliance
                    .iter()
                    .zip(&span_ids)
                    .fold(e, |e, (port, id)| {
                        crate::appliance::explain_cut_off(port, id.as_ref(), e)
                    })
            } else {
                e
            };
            // Leave the FAT volume clean even on failure: the journal holds the
            // last checkpoint, which is what a re-run resumes from.
            let _ = medium.close();
            return Err(e);
        }
    };
    // Until the appliance has witnessed it: a freeze here was as silent as one mid-capture.
    let waiting = Progress::waiting("capture: writing COMMIT, the signature and the witness");
    let bytes_read = stats.read;
    let borrows_from: Vec<String> =
        image_format::peers::peers_of(medium.store(), &summary.name, summary.generation)
            .unwrap_or_default()
            .iter()
            .map(|p| format!("{} G{:04}", p.name, p.generation))
            .collect();
    // MANIFEST is on the medium (the writer finished); COMMIT comes after it.
    let receipt = match &sign_key {
        Some(key) => {
            match sign_generation(medium.store(), &summary.name, summary.generation, key) {
                Ok(r) => r,
                Err(e) if crate::exit::is_no_space(&e) => {
                    let e = complete_but_full(args, summary.generation, "its COMMIT", true, e);
                    let _ = medium.close();
                    return Err(e);
                }
                Err(e) => {
                    return Err(e).context(
                        "signing the generation's COMMIT (re-run the same command with --sign \
                         to add it)",
                    )
                }
            }
        }
        None => Receipt {
            name: summary.name.clone(),
            capture_id: image_format::commit::expected_commit(
                medium.store(),
                &summary.name,
                summary.generation,
            )
            .ok()
            .flatten()
            .map(|c| hex(&c.capture_id))
            .unwrap_or_default(),
            generation: summary.generation,
            manifest_root: hex(&summary.manifest_root),
            ..Default::default()
        },
    };
    medium.close()?;
    let receipt = match (args.medium.first_appliance(), appliance_id) {
        (Some(port), Some(identity)) => {
            witness_generation(args, port, &identity, &summary.name, summary.generation).context(
                "the generation is captured, but the appliance's witness signature could \
                     not be added to its COMMIT",
            )?
        }
        _ => receipt,
    };
    drop(waiting);
    let secs = started.elapsed().as_secs_f64();
    let cpu_seconds = (progress::cpu_seconds() - cpu0).max(0.0);
    // What the checks before writing found (a read-write mount, the target's readiness)
    // stays in the report: it was only on stderr, gone by the time the receipt is filed.
    // Those were printed before the capture began; the report holds them all.
    let printed = preflight_warnings.len();
    let mut warnings = preflight_warnings;
    // Written while it was read (a program that opens it for each write, or started after
    // the check for writers): the generation mixes moments of the disk, and nothing said so.
    if written_at_start.is_some() && write_stamp(spec) != written_at_start {
        warnings.push(format!(
            "{spec} was written during the capture (its modification time moved): generation \
             {} may not match any single moment of the disk. For a consistent disk, capture a \
             snapshot (LVM, qemu-img), or stop what writes it and capture --delta (it stores \
             what changed since)",
            summary.generation,
        ));
    }
    // A shrinking source stops the capture (a read ends early); a growing one was cut at its
    // starting size without a word (a disk or LV resized during the capture).
    if let Some(now) = source.size_now().filter(|now| *now > size) {
        let (now_txt, was_txt) = two_sizes(now, size);
        warnings.push(format!(
            "{} grew during the capture, from {was_txt} to {now_txt}: generation {} holds its \
             first {was_txt} only (its size when the capture started). If it was resized on \
             purpose, capture it again with --delta once the resize is done (the delta records \
             the new size)",
            args.source.as_deref().unwrap_or("the source"),
            summary.generation,
        ));
    }
    // Damage a delta met where it would have reused earlier records: stored again, and said
    // (the damaged generation stays as it is, and fails `verify` until it is removed).
    if !summary.damaged_parent.is_empty() {
        let n = summary.damaged_parent.len();
        let shown: Vec<String> = summary
            .damaged_parent
            .iter()
            .take(3)
            .map(|(p, why)| format!("{p} ({why})"))
            .collect();
        let more = if n > 3 {
            format!(" and {} more", n - 3)
        } else {
            String::new()
        };
        warnings.push(format!(
            "{n} segment{} of earlier generations that this delta would have reused {} damaged \
             on the medium: {}{more}. What {} held was read from the source and stored again, \
             so generation {} is whole without {}; the generation{} holding {} still \
             damaged: `mgear verify {}` names the damage (ingest generation {}, the newest)",
            if n == 1 { "" } else { "s" },
            if n == 1 { "is" } else { "are" },
            shown.join(", "),
            if n == 1 { "it" } else { "they" },
            summary.generation,
            if n == 1 { "it" } else { "them" },
            if n == 1 { "" } else { "s" },
            if n == 1 { "it is" } else { "them are" },
            args.medium.as_args(),
            summary.generation,
        ));
    }
    // A delta of the disk it continues shares most chunks with its parent; one sharing none
    // (a few stored chunks are no sign: a small disk, or one rewritten by an erase) is most
    // likely another disk given as --source, or a set's disks given in another order. Said
    // after the fact, with how to undo it: the parent is untouched.
    if let Some(parent) = summary.parent {
        // A chunk stored again because its parent's record is on a medium declared lost
        // matched the parent too (the warning below told such a delta's operator to remove
        // the only generation that ingests without that medium).
        let unchanged = summary.dedup_chunks + stats.unchanged + summary.recaptured_chunks;
        // And it is no change: stored because its medium was lost, not because it differed
        // (counted as stored anew, one changed chunk of eleven read "more of the disk changed
        // than stayed", with advice to remove the only generation without the lost medium).
        let changed = summary
            .stored_chunks
            .saturating_sub(summary.recaptured_chunks);
        // A set's generation is removed as the set's, with every disk.
        let owner = image_format::set::parse_disk_stream_name(&summary.name)
            .map_or(summary.name.clone(), |(set, _)| set.to_string());
        // A disk that changed size is seldom the same disk resized; a smaller wrong disk
        // stores too few chunks for the check below.
        if let Some(was) = parent_size.filter(|was| *was != size) {
            let (now_txt, was_txt) = two_sizes(size, was);
            warnings.push(format!(
                "{} is {} now, and generation {parent} of {} was a disk of {}: if --source is \
                 not the disk captured as {} (a set's --source in another order, another \
                 disk), remove this generation with `mgear medium rm {} --name {owner} \
                 --generation {} --force` and capture the right disk",
                args.source.as_deref().unwrap_or("the source"),
                now_txt,
                summary.name,
                was_txt,
                summary.name,
                args.medium.as_args(),
                summary.generation
            ));
        }
        // Few shared (a disk made from the same image, its first chunks alike): warned too; it
        // went without a word, as any match passed the check before writing.
        if unchanged > 0 && changed >= 8 && summary.resumed_from == 0 && unchanged < changed {
            warnings.push(format!(
                "only {unchanged} of the chunks {} holds match generation {parent} of {}, and \
                 {changed} were stored anew: more of the disk changed than stayed. If it is not the \
                 disk captured as {} (one made from the same image shares its first chunks), \
                 remove this generation with `mgear medium rm {} --name {owner} --generation \
                 {} --force` and capture the right disk",
                args.source.as_deref().unwrap_or("the source"),
                summary.name,
                summary.name,
                args.medium.as_args(),
                summary.generation
            ));
        }
        if unchanged == 0 && summary.stored_chunks >= 8 && summary.resumed_from == 0 {
            warnings.push(format!(
                "none of the {} chunks {} stored matches generation {parent} of {}: this delta \
                 holds the whole disk again. If it is not the disk captured as {} (the wrong \
                 --source, or a set's --source in another order), remove this generation with \
                 `mgear medium rm {} --name {owner} --generation {} --force` and capture the \
                 right disk",
                summary.stored_chunks,
                args.source.as_deref().unwrap_or("the source"),
                summary.name,
                summary.name,
                args.medium.as_args(),
                summary.generation
            ));
        }
    }
    for w in &warnings[printed..] {
        eprintln!("mgear: WARNING: {w}");
    }
    warnings.extend(crate::output::side_warnings());
    Ok(Report {
        command: "capture",
        name: summary.name.clone(),
        generation: summary.generation,
        parent: summary.parent,
        disk_size: size,
        chunk_size,
        resumed_from_chunk: summary.resumed_from,
        resumed: summary.resumed,
        bytes_read,
        holes_skipped: stats.holes,
        unchanged_skipped: stats.unchanged,
        zero_chunks: summary.zero_chunks,
        dedup_chunks: summary.dedup_chunks,
        stored_chunks: summary.stored_chunks,
        stored_bytes: summary.stored_bytes,
        // Stored over read; a resumed first generation stores what earlier runs read too,
        // so it is over the whole disk (it said 8.75 for 70 MiB stored after 8 MiB read).
        ratio: match (summary.resumed_from, summary.parent) {
            (1.., None) if size > 0 => summary.stored_bytes as f64 / size as f64,
            _ if bytes_read == 0 => 0.0,
            _ => summary.stored_bytes as f64 / bytes_read as f64,
        },
        seconds: secs,
        mb_per_s: progress::mb_per_s(bytes_read, secs),
        read_mb_per_s: progress::mb_per_s(bytes_read.saturating_sub(stats.holes), secs),
        cpu_seconds,
        cpu_share: cpu_seconds / secs.max(1e-9),
        manifest_root: hex(&summary.manifest_root),
        borrows_from,
        passphrase_slot: args.passphrase_file.is_some()
            || recorded_slots(args, &receipt.capture_id).is_some_and(|s| s.passphrase),
        recipients: match args.recipient.is_empty() {
            // A delta or resume names none: the slot keeps those the key cache recorded when
            // the capture was made (the wrong-key advice at the target points here).
            true => recorded_recipients(args, &receipt.capture_id),
            false => args.recipient.iter().fold(Vec::new(), |mut all, r| {
                let r = r.to_string();
                if !all.contains(&r) {
                    all.push(r);
                }
                all
            }),
        },
        receipt,
        warnings,
    })
}

/// The recipients capture `args.name` (id `capture_id`, hex) was made for, as its key cache
/// entry recorded them; none where it did not (an entry made from the passphrase).
fn recorded_recipients(args: &Plan, capture_id: &str) -> Vec<String> {
    recorded_slots(args, capture_id)
        .map(|s| s.recipients)
        .unwrap_or_default()
}

/// The key slots the key cache recorded for capture `capture_id` when it was made.
fn recorded_slots(args: &Plan, capture_id: &str) -> Option<image_format::keys::CachedSlots> {
    let dir = crate::keys::key_cache_dir(args.key_cache.clone()).ok()?;
    crate::keys::cached_keys(&dir)
        .unwrap_or_default()
        .into_iter()
        .find(|k| {
            k.capture_id
                .as_deref()
                .is_some_and(|c| c.eq_ignore_ascii_case(capture_id))
        })
        .and_then(|k| DataKey::cached_slots(&k.path).ok().flatten())
}

/// An encoded chunk, or `None` for a chunk not read because it is unchanged.
type Encoded = (u64, crate::Result<Option<EncodedChunk>>);

/// Counters of this run, kept outside the pipeline so a failure can still
/// say how far it got (the medium-full estimate needs them).
#[derive(Debug, Default)]
struct RunStats {
    /// Source bytes read by this run.
    read: u64,
    /// Of those, bytes in chunks that were stored (not zero, not deduplicated).
    stored_plain: u64,
    /// Record bytes written by this run.
    stored: u64,
    /// First chunk this run read.
    first_chunk: u64,
    /// Of `read`, bytes the source reported as holes (not transferred).
    holes: u64,
    /// Bytes not read: unchanged since the parent per the dirty bitmap.
    unchanged: u64,
}

/// How the pipeline runs.
struct Pace {
    chunk_size: u32,
    rate: Option<f64>,
    threads: usize,
    checkpoint_bytes: u64,
    json: bool,
}

/// Read, encode on worker threads, append in order.
fn pump<S: image_format::Store>(
    mut writer: CaptureWriter<S>,
    source: &mut dyn crate::source::Source,
    pace: &Pace,
    dirty: Option<&[u64]>,
    stats: &mut RunStats,
) -> crate::Result<image_format::CaptureSummary> {
    let Pace {
        chunk_size,
        rate,
        threads,
        checkpoint_bytes,
        json,
    } = *pace;
    let size = source.len();
    let count = writer.chunk_count();
    let start = writer.resume_from();
    stats.first_chunk = start;
    let encoder = writer.encoder();
    let bar = Progress::new("capture", size, json);
    if let Some(r) = rate {
        bar.paced(r, u64::from(chunk_size));
    }
    bar.start_at(start.saturating_mul(u64::from(chunk_size)).min(size));
    let mut limiter = rate.map(|r| RateLimiter::new(r, u64::from(chunk_size)));
    // Chunks (from `start`) to copy from the parent instead of reading: clean
    // in the bitmap and present, same length, in the parent.
    let unchanged: Vec<bool> = match dirty {
        Some(d) => (start..count)
            .map(|i| d.binary_search(&i).is_err() && writer.can_copy_unchanged(i))
            .collect(),
        None => Vec::new(),
    };

    // Chunks in flight per channel: enough to keep every thread busy and
    // to give the writer runs of records to seal in parallel, bounded in
    // bytes (8 MiB each) so peak memory stays under 256 MiB whatever the
    // chunk size (a 16 MiB chunk exists up to three times while it is sealed).
    // Files and block devices are read on every encoder thread (positional
    // reads); the reader thread then only paces and dispatches.
    let shared = source.concurrent();
    let depth = ((8usize << 20) / chunk_size as usize).clamp(1, 64);
    let batch_max = depth.max(threads);
    // Chunks dispatched but not yet appended, at most `window`: the reader
    // takes a credit per chunk and the appender returns it once the chunk is
    // appended. Without it, while one chunk was late (its worker descheduled:
    // 8 encoder threads on 2 cores) the others' output piled up out of order
    // waiting for it, and peak RSS reached 400-550 MiB.
    let window = 2 * depth + threads;
    let (credit_tx, credit_rx) = sync_channel::<()>(window);
    for _ in 0..window {
        // Cannot fail: the channel has room for every credit.
        let _ = credit_tx.try_send(());
    }
    std::thread::scope(|scope| -> crate::Result<()> {
        let (raw_tx, raw_rx) = sync_channel::<(u64, Job)>(depth);
        // Buffers the encoders did not keep, back to the reader.
        let (spare_tx, spare_rx) = sync_channel::<Vec<u8>>(depth + threads);
        let (enc_tx, enc_rx) = sync_channel::<Encoded>(depth);
        let raw_rx = Arc::new(Mutex::new(raw_rx));
        for _ in 0..threads {
            let rx = Arc::clone(&raw_rx);
            let tx = enc_tx.clone();
            let spare = spare_tx.clone();
            let enc = encoder.clone();
            scope.spawn(move || worker(rx, tx, spare, enc));
        }
        // Only the workers may hold the raw receiver: when they stop, the
        // reader's send fails and it stops too (otherwise a medium error
        // leaves the reader blocked on a full channel and capture hangs).
        drop(raw_rx);
        drop(enc_tx);
        drop(spare_tx);

        // The reader runs on its own thread so reading, encoding and
        // appending overlap; it stops early if the appender hangs up.
        // Returns the bytes skipped as holes (never read from the source).
        let reader = scope.spawn(move || -> crate::Result<u64> {
            let mut holes = 0u64;
            for (index, copy) in
                (start..count).zip(unchanged.into_iter().chain(std::iter::repeat(false)))
            {
                if credit_rx.recv().is_err() {
                    break; // the appender stopped
                }
                if copy {
                    if raw_tx.send((index, Job::Unchanged)).is_err() {
                        break;
                    }
                    continue;
                }
                let len = image_format::layout::chunk_len(size, chunk_size, index) as usize;
                let offset = index * u64::from(chunk_size);
                let job = if source.is_hole(offset, len as u64)? {
                    holes += len as u64;
                    Job::Hole
                } else if let Some(src) = &shared {
                    if let Some(l) = limiter.as_mut() {
                        l.acquire(len as u64);
                    }
                    Job::Read {
                        src: Arc::clone(src),
                        offset,
                        len,
                    }
                } else {
                    // A recycled buffer is overwritten whole by the read: no
                    // need to zero it first.
                    let mut buf = spare_rx.try_recv().unwrap_or_default();
                    buf.resize(len, 0);
                    if let Some(l) = limiter.as_mut() {
                        l.acquire(len as u64);
                    }
                    source.read_exact_at(offset, &mut buf)?;
                    Job::Data(buf)
                };
                if raw_tx.send((index, job)).is_err() {
                    break;
                }
            }
            Ok(holes)
        });

        let mut pending: BTreeMap<u64, Option<EncodedChunk>> = BTreeMap::new();
        let mut next = start;
        let mut since_checkpoint = 0u64;
        let mut stored_since_checkpoint = 0u64;
        // A checkpoint that is due runs with the next batch, whose records
        // are sealed while it waits for the medium's syncs.
        let mut checkpoint_due = false;
        // And at least this often while anything progresses: a rate-limited capture of a
        // mostly empty disk stores little, and a SIGKILL (a pulled cable) lost up to 16
        // checkpoints' worth of reading (a 190 MiB disk 95 % done started over).
        let mut last_checkpoint = std::time::Instant::now();
        let appended = (|| -> crate::Result<()> {
            while next < count {
                let before = next;
                let Ok((index, enc)) = enc_rx.recv() else {
                    break; // workers gone: the reader failed; its error is reported below
                };
                pending.insert(index, enc?);
                // Whatever else is already encoded joins this round, so the
                // writer can seal a whole in-order run of records at once.
                while let Ok((index, enc)) = enc_rx.try_recv() {
                    pending.insert(index, enc?);
                }
                while pending.contains_key(&next) {
                    let mut batch = Vec::new();
                    while batch.len() < batch_max {
                        match pending.remove(&next) {
                            Some(Some(chunk)) => {
                                batch.push(chunk);
                                next += 1;
                            }
                            Some(None) => {
                                pending.insert(next, None);
                                break;
                            }
                            None => break,
                        }
                    }
                    let mut len_done = 0u64;
                    if !batch.is_empty() {
                        let lens: Vec<u64> =
                            batch.iter().map(|c| u64::from(c.plain_len())).collect();
                        let done = if std::mem::take(&mut checkpoint_due) {
                            writer.checkpoint_then_append(batch, threads)?
                        } else {
                            writer.append_batch(batch, threads)?
                        };
                        for (what, len) in done.into_iter().zip(lens) {
                            if let Appended::Stored { stored_bytes } = what {
                                stats.stored += stored_bytes;
                                stats.stored_plain += len;
                                stored_since_checkpoint += stored_bytes;
                            }
                            stats.read += len;
                            len_done += len;
                        }
                    } else if let Some(None) = pending.remove(&next) {
                        if std::mem::take(&mut checkpoint_due) {
                            writer.checkpoint()?;
                        }
                        writer.append_unchanged(next)?;
                        let len =
                            u64::from(image_format::layout::chunk_len(size, chunk_size, next));
                        stats.unchanged += len;
                        len_done += len;
                        next += 1;
                    }
                    since_checkpoint += len_done;
                    bar.set(next.saturating_mul(u64::from(chunk_size)).min(size));
                    if stored_since_checkpoint >= checkpoint_bytes
                        || since_checkpoint >= checkpoint_bytes.saturating_mul(16)
                        || (since_checkpoint > 0 && last_checkpoint.elapsed() >= CHECKPOINT_EVERY)
                    {
                        checkpoint_due = true;
                        since_checkpoint = 0;
                        stored_since_checkpoint = 0;
                        last_checkpoint = std::time::Instant::now();
                    }
                    if crate::signals::stop_requested() {
                        // Ctrl-C / SIGTERM: make what is done durable, then say how to go on.
                        writer.checkpoint()?;
                        let done = next.saturating_mul(u64::from(chunk_size)).min(size);
                        return Err(crate::signals::stopped(done, size));
                    }
                }
                for _ in before..next {
                    // One credit per appended chunk: never more than were taken.
                    let _ = credit_tx.try_send(());
                }
            }
            Ok(())
        })();
        // Unblock the reader and workers before joining them.
        drop(enc_rx);
        drop(credit_tx);
        let read_result = reader
            .join()
            .map_err(|_| crate::err!("the source reader thread panicked"))?;
        appended?;
        stats.holes = read_result?;
        if next < count {
            crate::bail!("capture stopped at chunk {next} of {count}");
        }
        Ok(())
    })?;
    bar.finish();
    let _waiting = Progress::waiting("capture: writing the index and manifest");
    let summary = writer.finish()?;
    Ok(summary)
}

/// What the reader hands the encoders for one chunk.
enum Job {
    /// The bytes read from the source.
    Data(Vec<u8>),
    /// Read these bytes yourself (sources that allow concurrent reads).
    Read {
        src: Arc<dyn crate::source::ConcurrentRead>,
        offset: u64,
        len: usize,
    },
    /// The source reported a hole: all zeros, not read.
    Hole,
    /// Clean in the dirty bitmap: copied from the parent, not read.
    Unchanged,
}

/// Raw chunks shared by the workers.
type Jobs = Arc<Mutex<Receiver<(u64, Job)>>>;

fn worker(
    rx: Jobs,
    tx: std::sync::mpsc::SyncSender<Encoded>,
    spare: std::sync::mpsc::SyncSender<Vec<u8>>,
    enc: image_format::ChunkEncoder,
) {
    // This thread's read buffer, reused whenever the encoder gives it back.
    let mut mine: Vec<u8> = Vec::new();
    loop {
        let job = match rx.lock() {
            Ok(guard) => guard.recv(),
            Err(_) => return,
        };
        let Ok((index, job)) = job else { return };
        let out = match job {
            Job::Data(buf) => enc
                .encode_owned(index, buf)
                .map(|(chunk, back)| {
                    if let Some(b) = back {
                        // Full means the reader has enough: drop this one.
                        let _ = spare.try_send(b);
                    }
                    Some(chunk)
                })
                .map_err(crate::Error::from),
            Job::Read { src, offset, len } => {
                let mut buf = std::mem::take(&mut mine);
                // Filled by the read, never zeroed first.
                src.read_vec(offset, len, &mut buf).and_then(|from| {
                    let (chunk, back) = enc.encode_owned_from(index, buf, from)?;
                    mine = back.unwrap_or_default();
                    Ok(Some(chunk))
                })
            }
            Job::Hole => enc.encode_zero(index).map(Some).map_err(crate::Error::from),
            Job::Unchanged => Ok(None),
        };
        if tx.send((index, out)).is_err() {
            return;
        }
    }
}

/// How each medium of a span is kept usable: room for the mirrored files
/// every medium gets (two copies of the index while unfinished, IPART and
/// INDEX, for every disk of the machine, plus manifests, journal and key
/// slots) and segments large enough for one record.
fn span_plan(args: &Plan, size: u64, chunk_size: u32) -> crate::medium::SpanPlan {
    let total = args.span_total.unwrap_or(size).max(size);
    let chunks = total.div_ceil(u64::from(chunk_size.max(1)));
    crate::medium::SpanPlan {
        reserve: chunks.saturating_mul(2 * 64 + 64).saturating_add(8 << 20),
        min_room: 2 * u64::from(chunk_size) + (1 << 20),
        lost: args.replace_medium.clone(),
    }
}

/// What each medium of a span keeps for its copy of the index and manifests.
pub(crate) fn span_reserve(args: &Plan, size: u64, chunk_size: u32) -> u64 {
    span_plan(args, size, chunk_size).reserve
}

/// The newest finished generation of capture `name` on the medium, if any.
fn newest_complete(store: &mut dyn image_format::Store, name: &str) -> Option<u32> {
    image_format::list_captures(store)
        .ok()?
        .into_iter()
        .find(|c| c.name.eq_ignore_ascii_case(name))?
        .generations
        .iter()
        .rev()
        .find(|g| g.state == image_format::GenerationState::Complete)
        .map(|g| g.generation)
}

/// The medium filled up after generation `g`'s MANIFEST, before `what`: the generation is
/// complete (inspect and verify say so, `capture --abort` refuses it), so the advice to abort
/// it or continue on another medium led nowhere. What is missing is a few KiB.
fn complete_but_full(
    args: &Plan,
    g: u32,
    what: &str,
    signed: bool,
    err: crate::Error,
) -> crate::Error {
    let head = format!(
        "capture {} generation {g} is captured and complete on {} (its MANIFEST is written), \
         but the medium filled up before {what} ({err})",
        args.name,
        args.medium.describe(),
    );
    if !signed && args.medium.first_appliance().is_none() {
        return crate::exit::coded_hint(
            crate::exit::IO,
            format!(
                "{head}: nothing ingest needs is missing, it takes the generation as it is. \
                 Free some space before the next capture onto this medium"
            ),
            "nothing to redo: the generation is complete",
        );
    }
    crate::exit::coded_hint(
        crate::exit::IO,
        format!(
            "{head}: its signature (COMMIT) is not on it yet, so a target that pins your site \
             key or the appliance refuses it. Free a few MiB on the medium (a file that is not \
             a capture, or an older generation with `mgear medium rm`) and run the same \
             command again: it adds the signature without capturing again"
        ),
        "free a few MiB on the medium, then run the same command again",
    )
}

/// Turn a no-space error into the message a field engineer can act on,
/// estimating what the rest of the disk needs from the ratio so far.
fn medium_full(
    args: &Plan,
    err: crate::Error,
    source: &mut dyn crate::source::Source,
    stats: &RunStats,
    size: u64,
    chunk_size: u32,
    free: Option<u64>,
) -> crate::Error {
    // A re-run resumes from the last checkpoint, and what it stored past it is written again
    // into the same room: the rest of the disk from the chunk that did not fit is what more
    // is needed.
    let done = (stats.first_chunk * u64::from(chunk_size))
        .saturating_add(stats.read)
        .saturating_add(stats.unchanged);
    let left = size.saturating_sub(done);
    // The rest taken as data (its zero chunks are not known yet), at what the data read so
    // far compressed to: zeros read before made it "about 53 MiB more" where 76 were needed,
    // and the medium added as told was full again.
    let ratio = if stats.stored_plain == 0 {
        1.0
    } else {
        (stats.stored as f64 / stats.stored_plain as f64).max(0.01)
    };
    let reserve = span_plan(args, size, chunk_size).reserve;
    // A lone medium that becomes the first of a span keeps room for its own copy of the
    // index and manifests too: what it held past that moves to the medium added.
    let own = match args.medium.medium.len() + args.medium.appliance.len() {
        1 => reserve,
        _ => 0,
    };
    // A medium sized as told must do: 5 % and a chunk more than the estimate (its ratio is
    // the past's, and each segment ends in a trailer), not another trip.
    // The rest's holes, where the source says (a sparse file), are zeros for certain: taken
    // as data, 240 MiB of a disk holding 90 MiB of data there asked for 262 MiB more.
    let holes = source
        .data_bytes(done, size)
        .map_or(0.0, |d| 1.0 - d.min(left) as f64 / left.max(1) as f64);
    let rest = crate::preflight::stored_estimate(left, chunk_size, holes, ratio);
    let margin = rest / 20 + u64::from(chunk_size);
    coded_full(args, &err, rest.saturating_add(margin), own, reserve, free)
}

/// How much of the FAT's `fat_free` bytes a capture can write into a `fat:` image file before
/// the file system holding the image is full (its holes need host blocks; what the image
/// already has allocated does not), and what that file system has free. `None` for a device,
/// several media, or where the host does not say.
fn host_room(args: &Plan, fat_free: Option<u64>) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let (_, m, avail) = image_host(args)?;
    let holes = m.len().saturating_sub(m.blocks().saturating_mul(512));
    let backed = fat_free?.saturating_sub(holes);
    Some((backed.saturating_add(avail), avail))
}

/// The one `fat:` medium of `args` when it is an image file: its path, its metadata, and
/// what the file system holding it has free. `None` for a device, several media, or where
/// the host does not say.
fn image_host(args: &Plan) -> Option<(std::path::PathBuf, std::fs::Metadata, u64)> {
    let [spec] = args.medium.medium.as_slice() else {
        return None;
    };
    let Ok(crate::spec::Medium::Fat(path)) = crate::spec::Medium::parse(spec) else {
        return None;
    };
    let m = std::fs::metadata(&path).ok().filter(|m| m.is_file())?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let avail = st.blocks_available().saturating_mul(st.fragment_size());
    Some((path, m, avail))
}

/// A `fat:` image file (sparse, as `medium format` makes it) refused a write because the file
/// system holding it is full, not the FAT inside: "medium full" would send the operator to add
/// a medium. Some("the file system holding IMAGE is full (N free there)") then.
fn host_file_system_full(args: &Plan, fat_free: Option<u64>) -> Option<String> {
    // A FAT that is itself (nearly) full is the medium being full, whatever the host has.
    if fat_free.is_some_and(|f| f < 8 << 20) {
        return None;
    }
    let (path, _, avail) = image_host(args)?;
    (avail < 8 << 20).then(|| {
        format!(
            "the file system holding the medium image {} is full ({} free there)",
            path.display(),
            human_bytes(avail)
        )
    })
}

/// Two different sizes as a person reads them; sizes a few bytes apart round alike, and then
/// the bytes say how they differ.
fn two_sizes(a: u64, b: u64) -> (String, String) {
    match (human_bytes(a), human_bytes(b)) {
        (x, y) if x == y => (format!("{x} ({a} bytes)"), format!("{y} ({b} bytes)")),
        pair => pair,
    }
}

/// The medium-full error: `needed` is what the rest of the disk stores, `own` what a lone
/// medium that becomes the span's first keeps for its own copy of the index and manifests
/// (what it held past that moves to the medium added), `reserve` what a medium joining the
/// span keeps. Space freed on this medium needs `needed` only: it was said with `own` in it,
/// twice what a 6 MiB disk stores, and the operator removed captures they did not need to.
/// A re-run resumes from the last checkpoint (`--checkpoint-bytes` stored, 16 times that
/// read, or 10 s), not from the chunk that failed, so the message says that (a capture
/// smaller than one checkpoint starts over).
fn coded_full(
    args: &Plan,
    err: &crate::Error,
    needed: u64,
    own: u64,
    reserve: u64,
    free: Option<u64>,
) -> crate::Error {
    let free_txt = free.map_or(String::new(), |f| format!(" ({} free now)", human_bytes(f)));
    // What is to be freed is what the rest needs past what is free already.
    let short = needed
        .saturating_sub(free.unwrap_or(0))
        .max(u64::from(args.chunk_size));
    let resume = format!(
        "the capture continues from its last checkpoint (one every {} stored, {} of disk \
         read or 10 s of progress, whichever comes first)",
        human_bytes(args.checkpoint_bytes.max(1)),
        human_bytes(args.checkpoint_bytes.max(1).saturating_mul(16))
    );
    if let Some(host) = host_file_system_full(args, free) {
        let inside = free.map_or(String::new(), |f| {
            format!(
                ", though the FAT volume inside it has {} free",
                human_bytes(f)
            )
        });
        return crate::exit::coded(
            crate::exit::IO,
            format!(
                "{host}{inside}: free space there (or move the image to a file system with room \
                 for all of it), then re-run the same command: {resume} ({err:#})"
            ),
        );
    }
    if args.medium.medium.len() + args.medium.appliance.len() > 1 {
        return crate::exit::coded(
            crate::exit::IO,
            format!(
                "every medium given is full ({}): about {} more needed for the rest of the disk; \
                 attach another medium with room for that plus about {} (its copy of the index \
                 and manifests) and re-run the same command with it added (one more --medium or \
                 --appliance): {resume} ({err:#})",
                args.medium.describe(),
                human_bytes(needed),
                human_bytes(reserve),
            ),
        );
    }
    crate::exit::coded(
        crate::exit::IO,
        format!(
            "medium full: about {short} bytes ({}) more needed on it{free_txt}; free that much \
             (or use a larger medium holding the same files) and re-run the same command; or \
             re-run it with one more --medium (or --appliance) added, with room for about {} \
             (the rest of the disk, and the span's copies of the index and manifests, this \
             medium's moving there): {resume}; or remove this unfinished capture with \
             `mgear capture --abort {} --name {}` ({err:#})",
            human_bytes(short),
            human_bytes(needed.saturating_add(own).saturating_add(reserve)),
            args.medium.as_args(),
            image_format::set::owner(&args.name)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_that_round_alike_are_told_apart_by_their_bytes() {
        assert_eq!(
            two_sizes(100_452_352, 100_455_352),
            (
                "95.80 MiB (100452352 bytes)".to_string(),
                "95.80 MiB (100455352 bytes)".to_string()
            )
        );
        assert_eq!(
            two_sizes(6 << 20, 12 << 20),
            ("6.00 MiB".to_string(), "12.00 MiB".to_string())
        );
    }

    #[test]
    fn chunk_sizes_in_decimal_units_point_at_the_binary_ones() {
        assert_eq!(chunk_size_arg("1m").unwrap(), 1 << 20);
        assert_eq!(chunk_size_arg("64k").unwrap(), 64 << 10);
        let e = chunk_size_arg("2MB").unwrap_err();
        assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE);
        let m = e.to_string();
        assert!(m.contains("2MB is 2,000,000 bytes"), "{m}");
        assert!(m.contains("did you mean 2MiB?"), "{m}");
        let m = chunk_size_arg("3MiB").unwrap_err().to_string();
        assert!(
            m.contains("power of two") && !m.contains("did you mean"),
            "{m}"
        );
    }

    #[test]
    fn an_empty_source_says_where_to_look() {
        let e = empty_source("z0.raw", None);
        assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE);
        let m = e.to_string();
        assert!(m.contains("source z0.raw is empty (0 bytes)"), "{m}");
        assert!(m.contains("check that --source names the disk"), "{m}");
        assert!(empty_source("b.raw", Some(1))
            .to_string()
            .contains("(disk 1)"));
    }
    use std::sync::Condvar;

    #[test]
    fn a_refused_resume_names_the_parameter_that_differs() {
        let then = Started {
            source_size: 30 << 20,
            chunk_size: 1 << 20,
            delta: false,
        };
        let now = Started {
            source_size: 20 << 20,
            ..then.clone()
        };
        let e = resume_mismatch("big", 1, Some(&then), &now, "--medium dir:m", None);
        assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE);
        assert_eq!(
            e.to_string(),
            "capture big generation 1 is unfinished and was started with different parameters: \
             the source size was 30.00 MiB (31457280 bytes), now it is 20.00 MiB (20971520 \
             bytes). Give the disk at the size it had when the capture started (31457280 \
             bytes) to resume it, or remove it with `mgear capture --abort --medium dir:m \
             --name big`"
        );
        let e = resume_mismatch("big", 1, Some(&then), &then, "--medium dir:m", None).to_string();
        assert!(
            e.contains("so one of these differs: the source as named"),
            "{e}"
        );
        // The disk under another name: the way on is --source-was, in the text and the hint.
        let names = Some(("/dev/sdb", "/dev/sdc"));
        let e = resume_mismatch("big", 1, Some(&then), &then, "--medium dir:m", names);
        let text = e.to_string();
        assert!(
            text.contains("it was started from source /dev/sdb, and this run reads /dev/sdc")
                && text.contains("Add `--source-was /dev/sdb` if it is the same disk"),
            "{text}"
        );
        assert!(!text.contains("Rerun with the same parameters"), "{text}");
        // A set's disk: the order of the --source is named.
        let disk1 = image_format::set::disk_stream_name("s2", 1);
        let e = resume_mismatch(&disk1, 1, Some(&then), &now, "--medium dir:m", None).to_string();
        assert!(
            e.contains("disk 1 of set s2 is the --source number 2 (give the disks in the order"),
            "{e}"
        );
        assert!(e.contains("--abort --medium dir:m --name s2`"), "{e}");
    }
    use std::time::{Duration, Instant};

    /// A source in memory whose first chunk is read only once the other
    /// reads stop coming (or far more of them came than the window allows):
    /// it counts the reads that started while the first was held back.
    struct Gated {
        data: Vec<u8>,
        chunk: u64,
        /// Reads of other chunks started while chunk 0 was not read yet, and whether it still
        /// is not.
        state: Mutex<(usize, bool)>,
        moved: Condvar,
    }

    impl Gated {
        fn hold_first(&self, limit: usize, at_least: usize) {
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            st.1 = true;
            let held = Instant::now();
            let mut quiet_since = Instant::now();
            let mut seen = st.0;
            // Released when nothing new started for 300 ms (the pipeline is
            // stalled on this chunk, as it must be) or past `limit` reads; not
            // before `at_least` reads started unless 20 s went by (a loaded
            // machine schedules the other workers late, not never).
            while st.0 <= limit
                && (quiet_since.elapsed() < Duration::from_millis(300)
                    || (st.0 < at_least && held.elapsed() < Duration::from_secs(20)))
            {
                let Ok((g, _)) = self.moved.wait_timeout(st, Duration::from_millis(20)) else {
                    return;
                };
                st = g;
                if st.0 != seen {
                    seen = st.0;
                    quiet_since = Instant::now();
                }
            }
            st.1 = false;
        }
    }

    impl crate::source::ConcurrentRead for Gated {
        fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> crate::Result<()> {
            if offset == 0 {
                // The test runs 4 workers: the 3 others must get to read.
                self.hold_first(usize::MAX / 2, 3);
            } else if let Ok(mut st) = self.state.lock() {
                if st.1 {
                    st.0 += 1;
                    self.moved.notify_all();
                }
            }
            let at = offset as usize;
            buf.copy_from_slice(&self.data[at..at + buf.len()]);
            Ok(())
        }
    }

    struct Source(Arc<Gated>);

    impl crate::source::Source for Source {
        fn len(&self) -> u64 {
            self.0.data.len() as u64
        }
        fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> crate::Result<()> {
            crate::source::ConcurrentRead::read_exact_at(&*self.0, offset, buf)
        }
        fn describe(&self) -> String {
            "gated test source".into()
        }
        fn concurrent(&self) -> Option<Arc<dyn crate::source::ConcurrentRead>> {
            Some(Arc::clone(&self.0) as Arc<dyn crate::source::ConcurrentRead>)
        }
    }

    /// While one chunk is late, the chunks after it are read and encoded
    /// only up to the pipeline's window, not the whole rest of the disk held
    /// in memory until the late one arrives; the capture still completes.
    #[test]
    fn a_late_chunk_holds_back_reads_beyond_the_window() {
        let chunk = 1u64 << 20;
        let chunks = 96u64;
        let data: Vec<u8> = (0..chunk * chunks).map(|i| (i % 251) as u8).collect();
        // Held from the start: the reads of other chunks that start before chunk 0 is read
        // count too. Counted only from the hold on, a loaded machine that ran the other
        // workers through the whole window before chunk 0's worker got to its read left
        // none to count, and the test failed ("the other workers went on reading: 0").
        let gated = Arc::new(Gated {
            data,
            chunk,
            state: Mutex::new((0, true)),
            moved: Condvar::new(),
        });
        let mut params = CaptureParams::new("late", gated.data.len() as u64);
        params.chunk_size = gated.chunk as u32;
        params.compress = false;
        params.passphrase = Some(SecretString::from("late chunk".to_string()));
        params.passphrase_work_factor = Some(2);
        let key = DataKey::generate().unwrap();
        let writer =
            CaptureWriter::begin(image_format::store::MemStore::new(), params, Some(key)).unwrap();
        let threads = 4;
        let pace = Pace {
            chunk_size: chunk as u32,
            rate: None,
            threads,
            checkpoint_bytes: 64 << 20,
            json: true,
        };
        let mut stats = RunStats::default();
        let summary = pump(
            writer,
            &mut Source(Arc::clone(&gated)),
            &pace,
            None,
            &mut stats,
        )
        .unwrap();
        assert_eq!(stats.read, chunk * chunks, "{summary:?}");
        let started = gated.state.lock().unwrap().0;
        // The window: 2 x 8 chunks of 1 MiB queued plus one per thread,
        // chunk 0 among them.
        let window = 2 * 8 + threads;
        assert!(
            started < window,
            "{started} reads started while chunk 0 was late (window {window})"
        );
        assert!(
            started >= threads - 1,
            "the other workers went on reading: {started}"
        );
    }
}
