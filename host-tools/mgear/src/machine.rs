//! Machine sets: every disk of a machine captured at one point in time,
//! ingested and booted together.
//!
//! ```text
//! mgear capture --medium fat:m.img --name db01 --source disk0.raw --source disk1.raw --recipient target.pub
//! mgear capture ... --delta                        # the changes of every disk since the last set
//! mgear ingest  --medium fat:m.img --name db01 --identity target.key --target file:db01-{disk}.raw
//! mgear ingest  ... --target file:root.raw --target file:srv.raw --boot   # one target per disk, in order
//! mgear ingest  ... --disk 1 --target file:srv.raw                        # one disk of the set
//! mgear inspect --medium fat:m.img                                       # the set, its disks
//! ```
//!
//! A set is stored as one ordinary capture per disk, the *disk stream*
//! `<name>.d<k>` (so resume, delta, rate limit, the appliance path, keyless
//! verify, seal and arrival work per disk exactly as for one disk), bound
//! by a set manifest per generation (`image_format::set`): it lists the
//! disks in order with size, sector size, partition table, which one boots
//! and the OS found, and each disk's manifest root, so no disk can be
//! dropped, swapped or reordered undetected. All disks share the capture
//! id and data key of the set (one key cache entry, under the set's name).
//!
//! Capture takes the disks in order; an interrupted set capture resumes
//! with the same command (disks already finished in this generation are
//! skipped, the interrupted one resumes), and the set manifest is written
//! (and signed with `--sign`, witnessed by the appliance) once every disk
//! is finished. One `--source` is today's single-disk capture, unchanged.
//!
//! Ingest checks the set first (trust gate over its COMMIT, set manifest
//! MAC and binding), then ingests each disk as the capture it is (its own
//! trust gate, authenticated decryption, read-back check) and `--boot`s
//! the machine with every disk attached in order. When the set spans media
//! and only some are given, each disk is written as far as they allow and
//! none is finished (exit 4, naming what is missing): a re-run with the
//! media still to come completes every disk, then reads each back and
//! finishes them together, so a finished volume always belongs to a
//! complete machine.

use std::path::{Path, PathBuf};

use crate::error::Context;
use image_format::set::{self, SetDisk, SetFile, SetManifest, TableKind};
use image_format::DataKey;
use serde::Serialize;

use crate::capture::{self, Receipt, Shared};
use crate::exit::{coded, coded_hint, usage, FOUND, OK, USAGE};
use crate::ingest::Finishing;
use crate::inspect::DiskJson;
use crate::output::hex;
use crate::units::human_bytes;

/// What `capture` of a set prints (`--json`).
#[derive(Debug, Serialize)]
pub struct CaptureReport {
    pub command: &'static str,
    pub name: String,
    pub generation: u32,
    pub parent: Option<u32>,
    pub disks: Vec<DiskJson>,
    /// Per disk in order: what this run captured (`null`: the disk was
    /// already finished in this generation by an earlier, interrupted run).
    pub captured: Vec<Option<capture::Report>>,
    /// Root hash of the set manifest (what the set's COMMIT signs).
    pub set_root: String,
    /// The set's receipt (its COMMIT).
    pub receipt: Receipt,
}

/// Run `mgear capture`: a machine set (several `--source`s) here, one disk
/// (and a set's `--dry-run` or `--abort`) in [`capture::run`]. The
/// command enters above both, so capture never calls up into this module.
pub fn capture(cli: capture::Request) -> crate::Result<i32> {
    let cli = own_chunk_size(witness_first(cli));
    if cli.sources.len() >= 2 {
        // Names are compared without case, and a capture writes the name it is given: as for
        // one disk, `DB01` where the medium holds `db01` is refused with the spelling to use
        // (the per-disk check would suggest `db01.d0`, which is no name a user can give).
        if let Some(stored) = stored_name(&cli.plan).filter(|s| *s != cli.plan.name) {
            return Err(usage(format!(
                "this medium already holds capture {stored}, and capture names are compared \
                 without case (FAT keeps one directory for both): --name {} is the same capture. \
                 Use --name {stored} (with --delta to add the changes), or choose another name",
                cli.plan.name
            )));
        }
    }
    if cli.sources.len() < 2 || cli.plan.abort || cli.plan.dry_run {
        return capture::run(cli);
    }
    crate::signals::install();
    let (sources, args) = cli.into_parts();
    run_capture(&args, &sources)
}

/// A `--delta` without `--chunk-size` takes the chunk size the capture was made with (its
/// newest generation's): it was refused as "a delta must use its parent's chunk size ...
/// give --chunk-size 64KiB", a default the operator never chose. Anything else keeps the
/// default without opening the medium once more (a resume that differs is told which size
/// it was started with); so does a medium that cannot be read here (the capture says why).
fn own_chunk_size(mut cli: capture::Request) -> capture::Request {
    if cli.plan.chunk_size_given || !cli.plan.delta {
        return cli;
    }
    let name = cli.plan.name.clone();
    let own = (|| {
        let mut ro = cli.plan.open_before_capture().ok()?;
        let caps = image_format::list_captures(ro.store()).ok();
        let _ = ro.close();
        caps?
            .into_iter()
            .filter(|c| set::owner(&c.name).eq_ignore_ascii_case(&name))
            .flat_map(|c| c.generations)
            .filter(|g| g.chunk_size != 0)
            .max_by_key(|g| g.generation)
            .map(|g| g.chunk_size)
    })();
    if let Some(c) = own {
        cli.plan.chunk_size = c;
    }
    cli
}

/// A capture over several appliances goes through (and is witnessed by)
/// the first one given, and an unfinished generation resumes only through
/// the one it started with: re-run with the appliances in another order
/// (with one more added after they filled), it was refused as "started with
/// different parameters", though media may be given in any order. The
/// appliance it most likely started with goes first again: the one that
/// made the capture's newest finished generation, else the one whose medium
/// opened the span (ordinal 0).
fn witness_first(mut cli: capture::Request) -> capture::Request {
    use image_format::GenerationState;
    let ports = cli.plan.medium.appliance.clone();
    if ports.len() < 2 || cli.plan.abort {
        return cli;
    }
    let name = cli.plan.name.clone();
    let gens: Vec<image_format::GenerationInfo> = (|| {
        let mut ro = cli.plan.open_before_capture().ok()?;
        let caps = image_format::list_captures(ro.store()).ok();
        let _ = ro.close();
        Some(
            caps?
                .into_iter()
                .filter(|c| set::owner(&c.name).eq_ignore_ascii_case(&name))
                .flat_map(|c| c.generations)
                .collect(),
        )
    })()
    .unwrap_or_default();
    let resuming = gens
        .iter()
        .max_by_key(|g| g.generation)
        .is_some_and(|g| g.state != GenerationState::Complete);
    if !resuming {
        return cli;
    }
    let made = gens
        .iter()
        .filter(|g| g.state == GenerationState::Complete)
        .max_by_key(|g| g.generation)
        .and_then(|g| g.appliance_id);
    let first = match made {
        Some(id) => ports
            .iter()
            .position(|p| crate::appliance::appliance_identity(p).is_ok_and(|x| x == id)),
        // Nothing finished yet: the appliance whose medium holds the capture alone, no span's
        // member yet (a first capture that filled it, continued with a blank appliance
        // given first: refused, and the join it had written left it stuck in every order);
        // else the one whose medium opened the span.
        None => {
            // Each medium opened once: (holds the capture alone, opened the span).
            let seen: Vec<(bool, bool)> = ports
                .iter()
                .map(|p| {
                    crate::medium::Where::appliance_at(p.clone())
                        .open_read_only()
                        .map_or((false, false), |mut m| {
                            // One medium of a span opens as the span: the ordinals attached
                            // are its own.
                            let span = m.store().span().map(|v| v.attached() == [0]);
                            let holds = span.is_none()
                                && image_format::capture_names(m.store())
                                    .unwrap_or_default()
                                    .iter()
                                    .any(|n| set::owner(n).eq_ignore_ascii_case(&name));
                            let _ = m.close();
                            (holds, span == Some(true))
                        })
                })
                .collect();
            seen.iter()
                .position(|(holds, _)| *holds)
                .or_else(|| seen.iter().position(|(_, opened)| *opened))
        }
    };
    if let Some(i) = first.filter(|&i| i > 0) {
        let port = cli.plan.medium.appliance.remove(i);
        cli.plan.medium.appliance.insert(0, port);
    }
    cli
}

/// How the medium spells capture `plan.name`, if it holds one by that name in any case (the
/// name itself if none; nothing when the medium cannot be read now: the capture then says
/// why, in its own words).
fn stored_name(plan: &capture::Plan) -> Option<String> {
    let mut ro = plan.open_before_capture().ok()?;
    let stored = image_format::stored_name(ro.store(), &plan.name).ok();
    ro.close().ok()?;
    stored
}

/// `mgear capture` with several `--source`s.
pub fn run_capture(args: &capture::Plan, sources: &[String]) -> crate::Result<i32> {
    if let Some(p) = &args.report {
        crate::report::check_writable(p, "--report", "capture")?;
    }
    let started = std::time::Instant::now();
    let r = match capture::with_generated_passphrase(args, |a| capture_set(a, sources)) {
        Ok(r) => r,
        Err(e) => {
            if let Some(p) = &args.report {
                capture::report_stop(p, args, &sources.join(", "), started, &e);
            }
            return Err(e);
        }
    };
    if let Some(p) = &args.report {
        let v = crate::report::capture_set(
            &r,
            sources,
            &args.medium.describe(),
            started.elapsed().as_secs_f64(),
        )?;
        crate::report::write(p, &v)?;
    }
    if args.json {
        crate::progress::print_json(&r)?;
        return Ok(OK);
    }
    println!(
        "captured set {} generation {}{}: {} disks",
        r.name,
        r.generation,
        r.parent
            .map(|p| format!(" (delta on {p})"))
            .unwrap_or_default(),
        r.disks.len()
    );
    for (d, c) in r.disks.iter().zip(&r.captured) {
        println!(
            "  disk {} {:<10} {:>10}  {}{}{}  {}",
            d.disk,
            d.stream,
            human_bytes(d.size),
            d.table,
            if d.boot { ", boots" } else { "" },
            if d.os.is_empty() {
                String::new()
            } else {
                format!(", {}", d.os)
            },
            match c {
                // What was read: the holes the source reported were not (as for one disk).
                Some(c) => format!(
                    "read {}{}, stored {} ({} zero, {} dedup, {} stored chunks)",
                    human_bytes(c.bytes_read.saturating_sub(c.holes_skipped)),
                    match c.holes_skipped {
                        0 => String::new(),
                        h => format!(", holes skipped {}", human_bytes(h)),
                    },
                    human_bytes(c.stored_bytes),
                    c.zero_chunks,
                    c.dedup_chunks,
                    c.stored_chunks
                ),
                None => "already captured".into(),
            }
        );
    }
    println!(
        "{}",
        crate::capture::receipt_heading(r.generation, r.receipt.commit_digest.is_some())
    );
    println!("  {:<14} {}", "set", r.receipt.name);
    println!("  {:<14} {}", "generation", r.generation);
    println!("  {:<14} {}", "set root", r.set_root);
    println!("  {:<14} {}", "capture id", r.receipt.capture_id);
    match &r.receipt.commit_digest {
        Some(d) => println!("  {:<14} {d}", "commit"),
        None => println!(
            "  {:<14} NOT SIGNED (capture with --sign SITE.key)",
            "commit"
        ),
    }
    for s in &r.receipt.signers {
        println!("  {:<14} {s}", "signed by");
    }
    Ok(OK)
}

/// The site key a set generation is signed with is noted in the key cache when its first
/// disk starts (`NAME-ID.signer`, as for one disk); a run that goes on with it must sign with
/// the same key (exit 2 before anything is stored). Without the note a resume without
/// `--sign` captured the remaining disks and wrote the set's COMMIT unsigned: the target,
/// which pins the site key, refused the machine only after shipping. A set started without
/// `--sign` may go on with one.
fn check_set_signer(
    args: &capture::Plan,
    name: &str,
    id: &[u8; 16],
    g: u32,
    st: &State,
    key: Option<&ed25519_dalek::SigningKey>,
) -> crate::Result<()> {
    let cache_dir = crate::keys::key_cache_dir(args.key_cache.clone())?;
    let path = crate::keys::signer_note_file(&cache_dir, name, id);
    let now = key.map_or_else(
        || "none".to_string(),
        |k| crate::sitekey::fingerprint(&k.verifying_key().to_bytes()),
    );
    if !st.done.iter().any(|&d| d) {
        capture::create_private_dir(&cache_dir)?;
        return crate::keys::write_generation_note(&path, g, "signer", &now)
            .with_context(|| format!("noting the signing key in {}", path.display()));
    }
    match crate::keys::generation_note(&path, g, "signer") {
        Some(then) if then != "none" && then != now => Err(usage(format!(
            "set {name} generation {g} was started signed with site key {then} (--sign), and \
             this run {}: the set's receipt would not carry the signature the target pins. \
             Go on with the same --sign KEY it was started with",
            if now == "none" {
                "has no --sign".to_string()
            } else {
                format!("signs with another key, {now}")
            }
        ))),
        _ => Ok(()),
    }
}

/// Where the set stands on the medium before this run.
struct State {
    generation: u32,
    /// Capture id of the set, if it exists (or a disk of it does).
    capture_id: Option<[u8; 16]>,
    /// Disks already finished in `generation`.
    done: Vec<bool>,
    /// The set manifest of `generation` is written: only signatures may be missing.
    sealed: bool,
    /// Finished, and the run that finished it left the medium mid-write: only put it right.
    put_right: bool,
}

fn state(
    store: &mut dyn image_format::Store,
    args: &capture::Plan,
    sources: &[String],
) -> crate::Result<State> {
    let n = sources.len();
    let name = &args.name;
    let caps = image_format::list_captures(store)?;
    if let Some(c) = caps.iter().find(|c| c.name.eq_ignore_ascii_case(name)) {
        return Err(usage(format!(
            "this medium holds a single-disk capture {}: a machine set needs its own name \
             (--name), or capture that machine's one disk with one --source",
            c.name
        )));
    }
    let sets = set::set_generations(store, name)?;
    let newest = sets.last().copied();
    let last = match newest {
        Some(g) => set::read_set(store, name, g)?,
        None => None,
    };
    if let Some(l) = &last {
        if l.set.disks.len() != n {
            return Err(usage(format!(
                "set {name} has {} disks: capture it (a delta too) with {} --source, in the same \
                 order. A machine that really gained or lost a disk is captured anew: under \
                 another --name, without --delta (or after `mgear medium rm --force --medium MEDIUM \
                 --name {name}` removed this one)",
                l.set.disks.len(),
                l.set.disks.len(),
            )));
        }
    }
    // A stream holding a generation newer than the newest set manifest: a
    // set capture that did not finish.
    let base = newest.unwrap_or(0);
    let mut in_progress = false;
    let mut capture_id = last.as_ref().map(|l| l.set.capture_id);
    for c in &caps {
        if let Some((s, k)) = set::parse_disk_stream_name(&c.name) {
            if s != name.as_str() {
                continue;
            }
            if k >= n {
                return Err(usage(format!(
                    "this medium holds disk {k} of set {name} ({}): give all {} disks of the \
                     machine as --source, in order",
                    c.name,
                    k + 1
                )));
            }
            in_progress |= c.generations.iter().any(|g| g.generation > base);
            if capture_id.is_none() {
                capture_id = image_format::capture_id(store, &c.name)?;
            }
        }
    }
    let put_right = !in_progress
        && !args.delta
        && newest.is_some()
        && args.sign.is_none()
        && store.left_mid_write();
    // A re-run with --sign only adds signatures the set or a disk lacks;
    // once every one carries this site's, it is a second capture like any.
    let mut unsigned = |g: u32| -> crate::Result<bool> {
        let Some(path) = &args.sign else {
            return Ok(false);
        };
        let key = crate::sitekey::read_signing_key(path)?;
        Ok(std::iter::once(name.clone())
            .chain((0..n).map(|k| set::disk_stream_name(name, k)))
            .any(|s| !capture::signed_by(store, &s, g, &key)))
    };
    let (generation, sealed) = match (in_progress, newest) {
        (true, _) => (base + 1, false),
        (false, None) => (1, false),
        (false, Some(g)) if args.delta => (g + 1, false),
        (false, Some(g)) if unsigned(g)? => (g, true),
        // The run that finished it was cut off while it closed the medium: as a re-run that
        // only signs, it opens the medium for writing (which puts it right) and is done.
        (false, Some(g)) if put_right => (g, true),
        (false, Some(g)) => {
            return Err(usage(format!(
                "set {name} is already captured as generation {g} on {} (finished): use \
                 --delta to add the changes of every disk since, or remove the set with every \
                 generation first to replace it (`mgear medium rm {} --name {name} --force`)",
                args.medium.pick("this medium", "these media"),
                args.medium.as_args()
            )))
        }
    };
    let mut done = vec![false; n];
    for (k, d) in done.iter_mut().enumerate() {
        let stream = set::disk_stream_name(name, k);
        let finished = caps
            .iter()
            .filter(|c| c.name == stream)
            .flat_map(|c| &c.generations)
            .find(|g| {
                g.generation == generation && g.state == image_format::GenerationState::Complete
            });
        // A finished disk is not read again: it must be the disk given at
        // its place now, or the set would bind another disk's data under
        // this one's name (a re-run with the --source order changed).
        if let Some(g) = finished {
            if !crate::source::same_source(&g.source_desc, &sources[k]) {
                let or = if sealed {
                    // A finished set that a --sign re-run would only sign.
                    "or, for disks that changed, capture a new generation with --delta".to_string()
                } else {
                    format!(
                        "or remove the unfinished generation with `mgear capture --abort {} \
                         --name {name}`",
                        args.medium.as_args()
                    )
                };
                return Err(usage(format!(
                    "disk {k} of set {name} generation {generation} is already captured from {}, \
                     but the --source given for disk {k} (--source number {}) is {}: give the \
                     disks in the order the set was captured in (disk 0 first), {or}",
                    g.source_desc,
                    k + 1,
                    sources[k],
                )));
            }
        }
        *d = finished.is_some();
    }
    // A delta with the --source order changed: each disk's new generation would hold
    // another disk's data (the delta went through with a warning that no chunk matched,
    // signed, and ingest took it as the newest). Refused when a source is the very path
    // another disk of the parent generation was captured from; a disk that moved to a
    // path of its own is taken (the stored-chunk sample still warns).
    let compared = match (in_progress, newest, args.delta) {
        (false, Some(g), true) => Some(g),
        _ => None,
    };
    if let Some(g) = compared {
        let parent_source = |k: usize| {
            let stream = set::disk_stream_name(name, k);
            caps.iter()
                .filter(|c| c.name == stream)
                .flat_map(|c| &c.generations)
                .find(|i| i.generation == g)
                .map(|i| i.source_desc.clone())
        };
        let recorded: Vec<Option<String>> = (0..n).map(parent_source).collect();
        for (k, src) in sources.iter().enumerate() {
            if recorded[k]
                .as_deref()
                .is_some_and(|r| !r.is_empty() && crate::source::same_source(r, src))
            {
                continue;
            }
            let other = recorded.iter().enumerate().find(|(j, r)| {
                *j != k
                    && r.as_deref()
                        .is_some_and(|r| !r.is_empty() && crate::source::same_source(r, src))
            });
            if let Some((j, Some(r))) = other {
                return Err(usage(format!(
                    "--source number {} ({src}) is disk {j} of set {name}: generation {g} \
                     captured disk {j} from {r}. Give the disks in the order the set was \
                     captured in (disk 0 first): with the order changed each disk's data \
                     would be stored under another disk",
                    k + 1
                )));
            }
        }
    }
    Ok(State {
        generation,
        capture_id,
        done,
        sealed,
        put_right,
    })
}

/// The number of disks set generation `g` was started with, kept beside the
/// set's cached key (`NAME-<capture id>.disks`, one line: `generation G
/// disks N`): the medium records it only in the SET written at the end, so
/// a set capture stopped part-way and re-run with fewer (or more)
/// `--source`s finished as a machine of that many disks, a disk short.
/// Refused instead; a new generation records its own count.
fn check_disk_count(
    args: &capture::Plan,
    name: &str,
    id: &[u8; 16],
    g: u32,
    n: usize,
) -> crate::Result<()> {
    let dir = crate::keys::key_cache_dir(args.key_cache.clone())?;
    let path = crate::keys::disk_count_file(&dir, name, id);
    let started =
        crate::keys::generation_note(&path, g, "disks").and_then(|k| k.parse::<usize>().ok());
    match started {
        Some(was) if was != n => Err(usage(format!(
            "set {name} generation {g} was started with {was} disks, but {n} --source are given \
             now: give the same disks in the same order to resume it, or remove the unfinished \
             generation with `mgear capture --abort {} --name {name}`",
            args.medium.as_args()
        ))),
        Some(_) => Ok(()),
        None => {
            // A resume by passphrase on another host starts with no key cache there.
            crate::keyfile::private_dir(&dir, "key cache")?;
            crate::keys::write_generation_note(&path, g, "disks", &n.to_string())
                .with_context(|| format!("recording the set's disk count in {}", path.display()))
        }
    }
}

/// The set's shared data key and capture id: from the key cache (under the
/// set's name or a disk's), else the passphrase slot of disk 0; a new set
/// gets a fresh key and id, cached at once.
fn shared_key(
    store: &mut dyn image_format::Store,
    args: &capture::Plan,
    capture_id: Option<[u8; 16]>,
) -> crate::Result<Shared> {
    let name = &args.name;
    let dir = crate::keys::key_cache_dir(args.key_cache.clone())?;
    // --dedup-across-machines: the set takes the other machine's key and id.
    let borrow = match &args.dedup_across_machines {
        Some(m) => Some(capture::resolve_borrow(store, m, name)?),
        None => None,
    };
    let peers = borrow.as_ref().map(|b| b.peers.clone()).unwrap_or_default();
    if let (Some(b), Some(id)) = (&borrow, capture_id) {
        if id != b.capture_id {
            return Err(usage(format!(
                "set {name} was first captured with its own data key, so it cannot share records \
                 with {}: machines share records only when captured under one key from the first \
                 generation (capture it under a new name with --dedup-across-machines {})",
                b.machine, b.machine
            )));
        }
    }
    let Some(id) = capture_id else {
        let (key, id) = match &borrow {
            Some(b) => (capture::borrow_key(store, args, b)?, b.capture_id),
            None => (DataKey::generate()?, image_format::keys::random::<16>()?),
        };
        crate::keyfile::private_dir(&dir, "key cache")?;
        // The slots the set is made with, recorded under its name: a later delta or resume of
        // the set that names others is refused (`capture::same_recipients`).
        key.save_cache_with_slots(
            &crate::keys::cache_file(&dir, name, &id),
            name,
            &id,
            &capture::slots_of(args),
        )?;
        return Ok(Shared {
            dedup_with: Vec::new(),
            peers,
            key,
            capture_id: id,
        });
    };
    for n in [name.clone(), set::disk_stream_name(name, 0)] {
        if let Some(c) = crate::keys::find_cached(&dir, &n, &id)? {
            let recorded = if n == *name {
                capture::same_recipients(args, &c.path, args.passphrase_file.is_some())?
            } else {
                None
            };
            let key = DataKey::load_cache(&c.path, &c.name)?;
            // A resume or delta's passphrase must open the slot the set was made with (disk
            // 0's): each disk captured on would get it, and the target would find the disks
            // under two passphrases.
            let d0 = image_format::stored_name(store, &set::disk_stream_name(name, 0))?;
            let slots = crate::keys::KeySlots::of(store, &d0);
            if let (Some(f), true) = (
                &args.passphrase_file,
                slots.passphrase || slots.recipients.is_some(),
            ) {
                let p = image_format::age::secrecy::SecretString::from(
                    crate::keys::read_passphrase(f)?.to_string(),
                );
                capture::same_passphrase(args, store, &d0, &p, &key, recorded.is_none())?;
            }
            return Ok(Shared {
                dedup_with: Vec::new(),
                peers,
                key,
                capture_id: id,
            });
        }
    }
    if let Some(f) = &args.passphrase_file {
        let p = crate::keys::read_passphrase(f)?;
        let unlock = image_format::Unlock::Passphrase(
            image_format::age::secrecy::SecretString::from(p.to_string()),
        );
        let (key, _) =
            image_format::unlock_data_key(store, &set::disk_stream_name(name, 0), &unlock)?;
        return Ok(Shared {
            dedup_with: Vec::new(),
            peers,
            key,
            capture_id: id,
        });
    }
    // An unfinished set no key reaches can still be removed and captured again, as a single
    // disk's message says (the set's named no way on after `keys forget`).
    let unfinished = image_format::list_captures(store)?.iter().any(|c| {
        set::parse_disk_stream_name(&c.name).is_some_and(|(s, _)| s.eq_ignore_ascii_case(name))
            && c.generations.last().is_some_and(|g| {
                matches!(g.state, image_format::GenerationState::Unfinished { .. })
            })
    });
    let abort = if unfinished {
        format!(
            "; or remove its unfinished generation with `mgear capture --abort {} --name \
             {name}` and capture it again",
            args.medium.as_args()
        )
    } else {
        String::new()
    };
    Err(usage(format!(
        "set {name} (capture id {}) already exists on the medium and its data key is not in the \
         key cache {} (a delta or resume must run on the host that made the first capture, or \
         pass --key-cache DIR or --passphrase-file){abort}",
        hex(&id),
        dir.display()
    )))
}

/// A disk of the set not on the medium yet gets its key slots from this run: a run that
/// names fewer than disk 0 was made with (a resume by passphrase on another host, with no
/// --recipient) gave the later disks fewer slots, and the target key opened only some disks.
/// Refused up front, saying what to give (a resume with none at all failed half-way too).
fn same_slots_for_new_disks(
    store: &mut dyn image_format::Store,
    args: &capture::Plan,
    disks: usize,
) -> crate::Result<()> {
    let name = &args.name;
    let on_medium: Vec<String> = image_format::list_captures(store)?
        .into_iter()
        .map(|c| c.name.to_ascii_lowercase())
        .collect();
    let d0 = set::disk_stream_name(name, 0).to_ascii_lowercase();
    let new_disk = (0..disks)
        .any(|k| !on_medium.contains(&set::disk_stream_name(name, k).to_ascii_lowercase()));
    if !on_medium.contains(&d0) || !new_disk {
        return Ok(());
    }
    let d0 = image_format::stored_name(store, &d0)?;
    let slots = crate::keys::KeySlots::of(store, &d0);
    let mut missing = Vec::new();
    if slots.recipients.is_some() && args.recipient.is_empty() {
        missing.push("--recipient (the target .pub files it was made with)");
    }
    if slots.passphrase && args.passphrase_file.is_none() {
        missing.push("--passphrase-file (its passphrase)");
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(usage(format!(
        "set {name} has disks still to capture, which get their key slots from this run, and \
         disk 0 was made with {}: give {} as the set was first captured, so every disk opens \
         with the same keys; nothing was written",
        match (slots.recipients.is_some(), slots.passphrase) {
            (true, true) => "a recipient and a passphrase slot",
            (true, false) => "a recipient slot",
            _ => "a passphrase slot",
        },
        missing.join(" and ")
    )))
}

/// What the capture host can tell about a disk before reading it all:
/// logical sector size, partition table, boot code, OS (`mgear_boot::inspect`).
/// NBD exports are not inspected (unknown).
pub fn disk_facts(spec: &str) -> SetDisk {
    let mut d = SetDisk {
        size: 0,
        sector_size: 0,
        table: TableKind::Unknown,
        boot: false,
        bios_boot: false,
        efi_boot: false,
        manifest_root: [0; 32],
        os: String::new(),
        source_desc: spec.to_string(),
    };
    let Ok(crate::spec::Source::Path(p)) = crate::spec::Source::parse(spec) else {
        return d;
    };
    d.sector_size = sector_size(&p);
    if let Ok(f) = mgear_boot::inspect_path(&p) {
        d.table = match f.table {
            mgear_boot::partition::TableKind::None => TableKind::None,
            mgear_boot::partition::TableKind::Mbr => TableKind::Mbr,
            mgear_boot::partition::TableKind::Gpt => TableKind::Gpt,
        };
        d.bios_boot = f.bios_bootable;
        d.efi_boot = f.uefi_bootable;
        d.os = match (f.linux.and_then(|l| l.os_name), f.os) {
            (Some(n), _) => n,
            (None, mgear_boot::inspect::OsFamily::Linux) => "Linux".into(),
            (None, mgear_boot::inspect::OsFamily::Windows) => "Windows".into(),
            (None, mgear_boot::inspect::OsFamily::Unknown) => String::new(),
        };
    }
    d
}

/// Logical sector size: the kernel's for a block device, 512 for an image file.
fn sector_size(p: &Path) -> u32 {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::metadata(p) else {
        return 0;
    };
    if !meta.file_type().is_block_device() {
        return 512;
    }
    let dev = std::fs::canonicalize(p).ok();
    let name = dev
        .as_deref()
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::fs::read_to_string(format!("/sys/class/block/{name}/queue/logical_block_size"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Capture every disk of a machine as one set; see the module doc.
pub fn capture_set(args: &capture::Plan, sources: &[String]) -> crate::Result<CaptureReport> {
    let name = args.name.clone();
    image_format::layout::validate_plain_name(&name).map_err(|e| usage(e.to_string()))?;
    if sources.len() > set::MAX_SET_DISKS {
        return Err(usage(format!(
            "a machine set has at most {} disks, not {}",
            set::MAX_SET_DISKS,
            sources.len()
        )));
    }
    for s in sources {
        capture::refuse_source_on_medium(&args.medium, s)?;
    }
    capture::refuse_secrets_on_medium(args)?;
    crate::preflight::check_sources(sources)?;
    args.medium.refuse_namesakes(&name)?;
    if args.dry_run {
        return Err(usage(
            "--dry-run of a set is `capture --dry-run` with every --source (crate::capture::dry_run_set)",
        ));
    }
    let mut facts: Vec<SetDisk> = sources.iter().map(|s| disk_facts(s)).collect();
    // The machine boots from its first bootable disk.
    if let Some(d) = facts.iter_mut().find(|d| d.bios_boot || d.efi_boot) {
        d.boot = true;
    }
    // The set's own checks (disk order) first: a disk given in the wrong place is named
    // as such, not as another disk by that disk's resume check in the plan below.
    let st = {
        let mut ro = args.open_before_capture()?;
        let r = state(ro.store(), args, sources);
        let closed = ro.close();
        let r = r?;
        closed?;
        r
    };
    if !args.skip_space_check {
        // Every disk together, before the first is written (or a key cached): a set
        // that cannot fit is refused whole rather than failing on its last disk.
        let plan = capture::plan_set(args, sources)?;
        if plan.resuming {
            // As a single disk's resume: what it wrote stays, and a set that runs out of
            // room stops as "medium full", resumable onto one more medium.
            if let Some(w) = crate::preflight::resume_space_warning(plan.needed, plan.medium_free) {
                eprintln!("mgear capture: warning: {w}");
            }
        } else {
            let mut whole = args.clone();
            whole.span_total = Some(plan.disks.iter().map(|p| p.disk_size).sum());
            crate::preflight::check_space(
                plan.needed,
                plan.medium_free,
                args.medium.noun(),
                capture::span_reserve(&whole, 0, args.chunk_size),
                args.medium.medium.len() + args.medium.appliance.len() == 1,
            )?;
        }
    }
    let shared = {
        let mut ro = args.open_before_capture()?;
        // The slots the disks still to capture will get, on the same read-only view.
        let slots = if st.sealed {
            Ok(())
        } else {
            same_slots_for_new_disks(ro.store(), args, sources.len())
        };
        let r = slots.and_then(|()| shared_key(ro.store(), args, st.capture_id));
        let closed = ro.close();
        let r = r?;
        closed?;
        r
    };
    let g = st.generation;
    if !st.sealed {
        check_disk_count(args, &name, &shared.capture_id, g, sources.len())?;
    }
    let sign_key = args
        .sign
        .as_deref()
        .map(crate::sitekey::read_signing_key)
        .transpose()?;
    if !st.sealed {
        check_set_signer(args, &name, &shared.capture_id, g, &st, sign_key.as_ref())?;
    }
    // A delta's disks are each compared with the generation they continue before the first
    // is written: checked disk by disk, disk 0 (right) was captured before disk 1 (another
    // disk) was refused, and the medium held half a set generation.
    if args.delta && g > 1 && !st.sealed && !args.same_source && args.dirty_bitmap.is_none() {
        let mut ro = args.open_before_capture()?;
        let checked = (|| {
            for (k, src) in sources.iter().enumerate().filter(|(k, _)| !st.done[*k]) {
                let mut a = args.clone();
                a.name = set::disk_stream_name(&name, k);
                a.source = Some(src.clone());
                let mut source = crate::source::open(src, None)?;
                capture::check_delta_sample(ro.store(), &mut *source, &a, &shared.key)?;
            }
            Ok::<_, crate::Error>(())
        })();
        let closed = ro.close();
        checked?;
        closed?;
    }
    // Every disk's size, as the set's plan counts them (`facts` learn theirs as each is
    // captured): the span's reserve grows with the whole machine, and a medium full of one
    // disk is told what the disks after it need.
    let sizes: Vec<u64> = sources
        .iter()
        .map(|s| crate::source::open(s, None).map_or(0, |s| s.len()))
        .collect();
    let mut captured = Vec::new();
    for (k, src) in sources.iter().enumerate() {
        if st.done[k] || st.sealed {
            captured.push(None);
            continue;
        }
        let mut a = args.clone();
        a.name = set::disk_stream_name(&name, k);
        a.source = Some(src.clone());
        a.delta = args.delta && g > 1;
        a.span_total = Some(sizes.iter().sum());
        eprintln!(
            "mgear capture: set {name} disk {k} of {}: {src}",
            sources.len()
        );
        // Disks before this one are finished in generation g: share their records.
        let shared = capture::Shared {
            key: shared.key.clone(),
            capture_id: shared.capture_id,
            dedup_with: if args.no_dedup_across_disks {
                Vec::new()
            } else {
                (0..k).map(|j| set::disk_stream_name(&name, j)).collect()
            },
            peers: shared.peers.clone(),
        };
        let later: u64 = sizes.iter().skip(k + 1).sum();
        let r = capture::capture_disk(&a, Some(&shared))
            .map_err(|e| {
                // "About 11 MiB more needed" counted the rest of this disk only: a medium
                // chosen by it did not hold the disks after it.
                let full = crate::exit::classified(&e) == Some(crate::exit::IO)
                    && format!("{e:#}").contains("full");
                // "Nothing was written" of this disk read as of the run, which had just
                // captured the disks before it.
                let kept: Vec<String> = captured
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.is_some())
                    .map(|(j, _)| j.to_string())
                    .collect();
                let e = if kept.is_empty() {
                    e
                } else {
                    e.context(format!(
                        "this run captured disk {} of set {name} (kept: the same command goes on \
                         from disk {k})",
                        kept.join(", ")
                    ))
                };
                if full && later > 0 {
                    crate::exit::coded(
                        crate::exit::IO,
                        format!(
                            "{e:#}; the set's disks after this one ({} of disk before \
                             compression and skipped zeros, {} of them) need room too: choose the next medium for all of it (`mgear \
                             capture --dry-run` with the same arguments and that medium added \
                             estimates it)",
                            human_bytes(later),
                            sources.len() - k - 1
                        ),
                    )
                } else {
                    e
                }
            })
            .with_context(|| format!("capturing disk {k} ({src}) of set {name}"))?;
        if r.generation != g {
            return Err(usage(format!(
                "disk {k} of set {name} was captured as generation {} but the set is at \
                 generation {g}: the disks' generations diverged (a disk stream was removed or \
                 captured alone); remove the set's newest generation from every disk and capture \
                 again",
                r.generation
            )));
        }
        captured.push(Some(r));
    }

    // Every disk is finished: bind them.
    let mut medium = args.medium.open()?;
    let result = (|| {
        let store = medium.store();
        let infos = image_format::list_captures(store)?;
        let info0 = infos
            .iter()
            .find(|c| c.name == set::disk_stream_name(&name, 0))
            .and_then(|c| c.generations.iter().find(|i| i.generation == g))
            .ok_or_else(|| crate::err!("disk 0 of set {name} generation {g} is missing"))?;
        let file = match set::read_set(store, &name, g)? {
            Some(f) if st.sealed => f,
            _ => {
                let m = SetManifest {
                    capture_id: shared.capture_id,
                    generation: g,
                    parent: info0.parent.unwrap_or(0),
                    name: name.clone(),
                    created_unix: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    appliance_id: info0.appliance_id,
                    key_check: [0; 32],
                    disks: facts.clone(),
                };
                set::write_set_of_streams(store, m, &shared.key)?
            }
        };
        let mut receipt = Receipt {
            name: name.clone(),
            capture_id: hex(&shared.capture_id),
            generation: g,
            manifest_root: hex(&file.root),
            ..Default::default()
        };
        if let Some(key) = &sign_key {
            if st.sealed {
                // A re-run with --sign: sign what lacks this site's signature.
                for k in 0..sources.len() {
                    let stream = set::disk_stream_name(&name, k);
                    capture::sign_generation(store, &stream, g, key)?;
                }
            } else {
                // A disk finished by the run that stopped may lack its COMMIT (cut off between
                // its MANIFEST and its signature): the set was bound and signed, exit 0, and
                // the target refused that disk as unsigned.
                for k in (0..sources.len()).filter(|&k| st.done[k]) {
                    let stream = set::disk_stream_name(&name, k);
                    if !capture::signed_by(store, &stream, g, key) {
                        capture::sign_generation(store, &stream, g, key)?;
                        eprintln!(
                            "mgear capture: set {name} disk {k} ({stream}) generation {g} was \
                             finished by the run that stopped, without its COMMIT signature: \
                             added"
                        );
                    }
                }
            }
            receipt = capture::sign_generation(store, &name, g, key)
                .context("signing the set's COMMIT (re-run the same command with --sign)")?;
        }
        Ok::<_, crate::Error>((file, receipt))
    })();
    let closed = medium.close();
    let (file, mut receipt) = result?;
    closed?;
    if st.put_right {
        capture::say_put_right_only(&format!("set {name}"), g);
    }
    if let Some(port) = args.medium.first_appliance() {
        let identity = crate::appliance::appliance_identity(port)?;
        crate::appliance::capture_begin(port, &name)?;
        receipt = capture::witness_generation(args, port, &identity, &name, g)
            .context("the set is captured, but the appliance could not witness its manifest")?;
    }
    Ok(CaptureReport {
        command: "capture",
        name: name.clone(),
        generation: g,
        parent: (file.set.parent != 0).then_some(file.set.parent),
        disks: file
            .set
            .disks
            .iter()
            .enumerate()
            .map(|(k, d)| DiskJson::of(&name, k, d))
            .collect(),
        captured,
        set_root: hex(&file.root),
        receipt,
    })
}

// ---------------------------------------------------------------- ingest

/// One disk in a set ingest report.
#[derive(Debug, Serialize)]
pub struct IngestedDisk {
    pub disk: usize,
    #[serde(flatten)]
    pub report: crate::ingest::Report,
    /// Its manifest's digests for the `--report` ([`crate::report::noted_manifest`]).
    #[serde(skip)]
    pub manifest: Option<[String; 3]>,
}

/// What `ingest` of a set prints (`--json`).
#[derive(Debug, Serialize)]
pub struct IngestReport {
    pub command: &'static str,
    pub name: String,
    pub generation: u32,
    /// The set manifest's root (hex): what the set's COMMIT signs and the capture receipt
    /// names, so a report can be tied to the receipt.
    pub set_root: String,
    /// How many disks the machine has (`disks` lists those this run ingested: one with
    /// `--disk K`, and the report said "a machine of 1 disks").
    pub machine_disks: usize,
    pub disks: Vec<IngestedDisk>,
    pub booted: Option<bool>,
    pub boot_report: Option<String>,
    /// What the driver adaptation of the whole machine did (`--adapt`).
    pub adapt: Option<mgear_boot::AdaptReport>,
    /// Every disk's target already held its disk, verified by an earlier run: kept, nothing
    /// written (only present, as `true`, then; as a single disk's `kept`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub kept: bool,
}

/// The host path and format of an ingested volume, for `--adapt`.
fn local_volume(target: &str) -> crate::Result<(PathBuf, String)> {
    use crate::boot_cmd::Resolved;
    use mgear_boot::Target;
    Ok(match crate::boot_cmd::resolve(target)? {
        Resolved::Local(Target::File(p) | Target::Dev(p)) => (p, "raw".into()),
        Resolved::Local(Target::Qcow2(p)) => (p, "qcow2".into()),
        Resolved::Libvirt(v) => (v.path, "raw".into()),
        Resolved::Local(other) => {
            return Err(usage(format!(
                "--adapt needs local volumes to run {} on, and {other} is not one: ingest into \
                 file:/qcow2:/dev:/libvirt:, adapt, then copy",
                mgear_boot::adapt::TOOL
            )))
        }
    })
}

/// The target of each disk to ingest, in order: `{disk}` in a target is
/// the disk's index; `only`: just that disk.
pub fn targets_of(
    targets: &[String],
    disks: usize,
    only: Option<usize>,
) -> crate::Result<Vec<(usize, String)>> {
    let expand = |t: &str, k: usize| t.replace("{disk}", &k.to_string());
    if let Some(k) = only {
        if k >= disks {
            return Err(usage(format!(
                "--disk {k}: the set has {disks} disks (0 to {})",
                disks - 1
            )));
        }
        return match targets {
            [t] => Ok(vec![(k, expand(t, k))]),
            _ => Err(usage("--disk N writes one disk: give one --target")),
        };
    }
    match targets {
        [t] if t.contains("{disk}") => Ok((0..disks).map(|k| (k, expand(t, k))).collect()),
        ts if ts.len() == disks && !ts.iter().any(|t| t.contains("{disk}")) => {
            Ok(ts.iter().cloned().enumerate().collect())
        }
        ts if ts.len() > 1 && ts.iter().any(|t| t.contains("{disk}")) => Err(usage(format!(
            "{} --target given and one holds {{disk}}: give either one --target with {{disk}} \
             in it (file:NAME-{{disk}}.raw), or one plain --target per disk in order ({disks})",
            ts.len()
        ))),
        ts => Err(usage(format!(
            "the set has {disks} disks but {} --target given: give one --target per disk in \
             order, one with {{disk}} in it (file:NAME-{{disk}}.raw), or --disk N with one --target",
            ts.len()
        ))),
    }
}

/// Refuse (exit 2) two disks ingested into one volume, however its name is
/// spelled (`file:a.raw`, `file:./a.raw`, `qcow2:/abs/a.raw`): the second
/// would overwrite the first, and the machine would miss a disk.
fn distinct_targets(plan: &[(usize, String)]) -> crate::Result<()> {
    let mut seen: Vec<(String, usize, &str)> = Vec::new();
    for (k, t) in plan {
        let key = crate::spec::volume_key(t);
        if let Some((_, first, spelled)) = seen.iter().find(|(s, ..)| *s == key) {
            return Err(usage(format!(
                "disks {first} and {k} have the same target ({spelled} and {t}): each disk \
                 needs a volume of its own; give one --target per disk, or one with {{disk}} \
                 in it (file:NAME-{{disk}}.raw)"
            )));
        }
        seen.push((key, *k, t));
    }
    Ok(())
}

/// Run `mgear ingest`: a machine set (several targets, a `{disk}` pattern or
/// `--disk`) here, one disk in [`crate::ingest::run`].
///
/// A key that does not open the capture is explained here, once for both: which key slots
/// the capture has and what to try.
pub fn ingest(cli: crate::ingest::Request) -> crate::Result<i32> {
    let set = cli.targets.len() > 1
        || cli.disk.is_some()
        || cli.targets.iter().any(|t| t.contains("{disk}"));
    let (medium, identity, passphrase_file) = (
        cli.plan.medium.clone(),
        cli.plan.identity.clone(),
        cli.plan.passphrase_file.clone(),
    );
    let result = if set {
        crate::signals::install();
        run_ingest(&cli.plan, &cli.targets, cli.disk)
    } else {
        crate::ingest::run(cli)
    };
    result.map_err(|e| {
        crate::verify::explain_wrong_key(
            e,
            &medium,
            identity.as_deref(),
            passphrase_file.as_deref(),
        )
    })
}

/// `mgear ingest` of a machine set (several targets, a `{disk}` pattern or `--disk`).
pub fn run_ingest(
    args: &crate::ingest::Plan,
    targets: &[String],
    only: Option<usize>,
) -> crate::Result<i32> {
    crate::ingest::refuse_clobbering(args, targets)?;
    if let Some(p) = &args.report {
        crate::report::check_writable(p, "--report", "ingest")?;
    }
    let started = std::time::Instant::now();
    let r = ingest_set(args, targets, only).inspect_err(|e| {
        if let Some(p) = &args.report {
            crate::ingest::report_stop(p, args, &targets.join(" "), true, started, e);
        }
    })?;
    if let Some(p) = &args.report {
        let manifests: Vec<_> = r.disks.iter().map(|d| d.manifest.clone()).collect();
        let v = crate::report::ingest_set(
            &r,
            &manifests,
            &args.medium.describe(),
            started.elapsed().as_secs_f64(),
        )?;
        crate::report::write(p, &v)?;
    }
    let code = match r.booted {
        Some(false) => FOUND,
        _ => OK,
    };
    if args.json {
        crate::output::emit_verdict(
            code,
            "the disks were ingested and verified, but the machine's boot did not prove itself \
             (--boot): see `boot`",
            &r,
        )?;
        return Ok(code);
    }
    // An EBS snapshot is not read back (as a single disk's summary says): "verified
    // bit-for-bit" was said of every disk of a set ingested into snapshots.
    let snapshots = r
        .disks
        .iter()
        .filter(|d| d.report.target.starts_with("ebs-snapshot:"))
        .count();
    let how = match snapshots {
        0 => "each verified bit-for-bit against what was authenticated".to_string(),
        n if n == r.disks.len() => "each snapshot's blocks match, by the SHA-256 EBS computed \
                                    on receipt, what was authenticated (snapshots are not read \
                                    back)"
            .to_string(),
        n => format!(
            "each volume verified bit-for-bit against what was authenticated, and the {} \
             by the SHA-256 EBS computed of every block on receipt (not read back)",
            crate::units::count(n as u64, "snapshot")
        ),
    };
    if r.kept {
        // Every disk kept: nothing was ingested (it read "ingested set ..., each verified").
        println!(
            "kept set {} generation {}: {}, each already held by its target, verified by an \
             earlier run and not changed since: nothing was written",
            r.name,
            r.generation,
            crate::units::count(r.disks.len() as u64, "disk"),
        );
    } else {
        println!(
            "ingested set {} generation {}: {}, {how}",
            r.name,
            r.generation,
            crate::units::count(r.disks.len() as u64, "disk"),
        );
    }
    for d in &r.disks {
        // The written and zero counts are this run's: a disk an earlier run wrote read as
        // "0 B written, 21 chunks, 0 zero" for a disk of 16 zero chunks.
        let earlier = match d.report.resumed_chunks {
            0 => String::new(),
            n => format!(", {n} written by an earlier run"),
        };
        // The snapshot and AMI made (they were only on stderr and in --json).
        let ids = [
            ("snapshot", &d.report.snapshot_id),
            ("AMI", &d.report.image_id),
        ]
        .iter()
        .filter_map(|(what, id)| id.as_ref().map(|id| format!(", {what} {id}")))
        .collect::<String>();
        let what = match d.report.kept {
            true => "kept: held it already, verified by an earlier run".to_string(),
            false => format!(
                "{} written, {}, {} zero{earlier}",
                human_bytes(d.report.bytes_written),
                crate::units::count(d.report.chunks, "chunk"),
                d.report.zero_chunks
            ),
        };
        println!(
            "  disk {} {:>10} into {}{ids} ({what})",
            d.disk,
            human_bytes(d.report.disk_size),
            d.report.target,
        );
    }
    crate::ingest::print_boot_line(r.booted, r.boot_report.as_deref());
    Ok(code)
}

/// Ingest the disks of set `args.name`; see the module doc.
pub fn ingest_set(
    args: &crate::ingest::Plan,
    targets: &[String],
    only: Option<usize>,
) -> crate::Result<IngestReport> {
    if args.adapt {
        // Say what to install before anything is decrypted.
        mgear_boot::adapt::find_adapter()?;
        if only.is_some() {
            return Err(usage(
                "--adapt converts the whole machine at once (virt-v2v must see every disk): \
                 drop --disk",
            ));
        }
    }
    if args.boot && only.is_some() {
        return Err(usage(
            "--boot needs every disk of the machine: drop --disk, or boot the volumes with \
             `mgear boot --target A --target B ...`",
        ));
    }
    if args.boot && targets.iter().any(|t| t.starts_with("cinder:")) {
        // Before any volume is written, as for one disk.
        match &args.flavor {
            Some(f) => crate::cloud_target::check_flavor(f)?,
            None => {
                return Err(usage(
                    "--boot of cinder: targets creates a Nova server: give its --flavor NAME",
                ))
            }
        }
    }
    let unlock =
        crate::verify::unlock_from(args.identity.as_deref(), args.passphrase_file.as_deref())?
            .ok_or_else(|| {
                usage("ingest needs the key: --identity TARGET.key or --passphrase-file FILE")
            })?;
    let policy = args.trust.policy(args.allow_unsealed)?;
    let mut medium = args.medium.open_read_only()?;
    let args = &*crate::ingest::as_stored(args, medium.store())?;
    let checked = (|| {
        let store = medium.store();
        if !set::is_set(store, &args.name)? {
            // Disk streams of the set without its set manifest: a set capture that stopped
            // before its last disk (a copy of a medium taken when it filled up), which
            // was called "no machine set" with a hint about --target patterns.
            let streams = image_format::capture_names(store)?
                .into_iter()
                .filter(|n| {
                    set::parse_disk_stream_name(n)
                        .is_some_and(|(s, _)| s.eq_ignore_ascii_case(&args.name))
                })
                .count();
            if streams > 0 {
                // A capture that did not finish, as for one disk: exit 1, not a usage error.
                return Err(coded_hint(
                    FOUND,
                    format!(
                        "machine set {:?} on {} is unfinished: {streams} of its disks' \
                         captures are there, but not the set's manifest, which its capture \
                         writes once every disk is captured (the capture stopped: a full \
                         medium, or interrupted; this may be a copy taken before it \
                         finished); nothing was written",
                        args.name,
                        args.medium.describe()
                    ),
                    "finish the capture at the capture site (the same capture command; after \
                     \"medium full\" with one more --medium), then ingest from all the media \
                     it wrote; `mgear inspect --medium ...` shows what this medium holds",
                ));
            }
            return Err(coded_hint(
                USAGE,
                format!(
                    "there is no machine set {:?} on {}: several --target, a {{disk}} pattern \
                     and --disk are for sets",
                    args.name,
                    args.medium.describe()
                ),
                "`mgear inspect --medium ...` lists sets and captures; a single-disk capture \
                 takes one --target",
            ));
        }
        // Who vouches for the set manifest (its COMMIT, the seal)...
        let verdict = crate::appliance::ingest_gate(
            crate::appliance::gate_port(&args.medium.appliance, &policy),
            args.trust.attestations.as_deref(),
            store,
            &args.name,
            args.generation,
            &policy,
        )
        .map_err(|e| match crate::exit::classified(&e) {
            // The medium failing to read is no refusal of the data.
            Some(crate::exit::IO) => e.context(format!("set {}", args.name)),
            Some(_) => e.context(format!("ingest refused: set {}", args.name)),
            None => coded(FOUND, format!("ingest refused: set {}: {e:#}", args.name)),
        })?;
        crate::report::note_trust(&verdict.trusted_by, &verdict.warnings);
        // The set's commit is the receipt's; each disk's own is bound to it by the set
        // manifest and is not printed (it is on no receipt).
        crate::trust::say_trusted(
            &format!("set {} generation {}", args.name, verdict.generation),
            &verdict,
            args.trust.expect_commit.is_some(),
        );
        // ...and that it is intact and binds exactly the disks on the medium.
        let (file, _) = set::open_set(store, &args.name, Some(verdict.generation), &unlock)
            .map_err(|e| match e {
                // A key that does not open the set is the operator's to fix (exit 2, and
                // `explain_wrong_key` says what would open it), not a finding about the data.
                image_format::Error::WrongKey { .. } => crate::Error::from(e),
                e => coded(FOUND, format!("ingest refused: set {}: {e}", args.name)),
            })?;
        crate::trust::same_as_checked(&verdict, &args.name, file.set.generation, &file.root)?;
        // Every disk's key slots are there before the first disk is written: a disk found
        // without them after disk 0 was written and finished left a machine half ingested.
        for k in 0..file.set.disks.len() {
            let stream = set::disk_stream_name(&args.name, k);
            let dir = image_format::layout::capture_dir(&stream);
            let mut has = |f: &str| {
                let path = format!("{dir}/{f}");
                store.len(&path).ok().flatten().is_some()
            };
            if !has(image_format::layout::KEYS_FILE) && !has(image_format::layout::KEYPASS_FILE) {
                return Err(coded(
                    FOUND,
                    format!(
                        "ingest refused: set {}: disk {k} ({stream}) has no key slot on the \
                         medium ({dir}/KEYS and KEYPASS are missing), so it cannot be opened; \
                         nothing was written. Ingest from another copy of the shipment",
                        args.name
                    ),
                ));
            }
        }
        Ok(file)
    })();
    // A disk that needs a medium declared lost is refused before any disk is written (the
    // disks before it were written as `.partial` first, then the set refused).
    let checked = checked.and_then(|file| {
        let Some(gaps) = crate::medium::Gaps::of(&medium, &args.medium.describe()) else {
            return Ok(file);
        };
        let sdir = crate::target::state_dir(args.state_dir.clone())?;
        let plan = targets_of(targets, file.set.disks.len(), only)?;
        for k in (0..file.set.disks.len()).filter(|k| only.is_none_or(|o| o == *k)) {
            let reader = image_format::CaptureReader::open(
                medium.store(),
                &set::disk_stream_name(&args.name, k),
                Some(file.set.generation),
                &unlock,
            )?;
            // A disk an earlier run began (given a medium declared lost that turned up
            // again) is checked against what it wrote, when its state is open.
            let begun = plan.iter().find(|(d, _)| *d == k).is_some_and(|(_, t)| {
                crate::ingest::unfinished_root(&sdir, t) == Some(*reader.manifest_root())
            });
            if begun {
                continue;
            }
            gaps.refuse_lost(&reader, |_| true).map_err(|e| {
                e.context(format!("set {} disk {k}; nothing was written", args.name))
            })?;
        }
        Ok(file)
    });
    // Every generation of each disk of the set, by its manifest root: a target that holds
    // another one of this disk is named by it (it was "an earlier generation, or another
    // capture").
    let disk_generations: Vec<(usize, u32, [u8; 32])> = image_format::list_captures(medium.store())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| {
            let lower = c.name.to_ascii_lowercase();
            let (set, k) = set::parse_disk_stream_name(&lower)?;
            set.eq_ignore_ascii_case(&args.name)
                .then_some((k, c.clone()))
        })
        .flat_map(|(k, c)| {
            c.generations
                .into_iter()
                .filter_map(move |g| Some((k, g.generation, g.manifest_root?)))
        })
        .collect();
    let closed = medium.close();
    let file: SetFile = checked?;
    closed?;
    let g = file.set.generation;
    let plan = targets_of(targets, file.set.disks.len(), only)?;
    // A disk read with 4096-byte logical sectors (4Kn) keeps its partition table in those
    // units: on a 512-byte target it reads as no table (and the other way round). Written
    // byte for byte all the same, without a word.
    for (k, t) in &plan {
        let read = file.set.disks.get(*k).map_or(0, |d| d.sector_size);
        let target = match t.split_once(':') {
            Some(("dev", p)) => sector_size(Path::new(p)),
            Some(("file" | "qcow2", _)) => 512,
            _ => 0,
        };
        if read != 0 && target != 0 && read != target {
            eprintln!(
                "mgear: warning: disk {k} of set {} was read from a disk of {read}-byte logical \
                 sectors, and its target {t} has {target}-byte sectors{}: its partition table \
                 (in sector units) will not describe its partitions there; give a target of \
                 {read}-byte sectors (or have what uses the volume present them: QEMU's \
                 logical_block_size={read})",
                args.name,
                if t.starts_with("dev:") {
                    ""
                } else {
                    " (an image file is read as 512)"
                }
            );
        }
    }
    let boots = |k: usize| file.set.disks.get(k).is_some_and(|d| d.boot);
    if args.register_image && !plan.iter().any(|(k, _)| boots(*k)) {
        // Only the boot disk's image is registered: asked for with none of it, the flag
        // did nothing and said nothing.
        let why = match (only, file.set.disks.iter().position(|d| d.boot)) {
            (Some(k), Some(b)) => format!(
                "--disk {k} is a data disk of set {}, and --register-image registers the \
                 machine's image from its boot disk, disk {b}: leave out --register-image, or \
                 ingest disk {b} (or the whole set) with it",
                args.name
            ),
            _ => format!(
                "--register-image registers the machine's image from its boot disk, and no disk \
                 of set {} boots (`mgear inspect` says which disks boot): leave out \
                 --register-image",
                args.name
            ),
        };
        return Err(usage(format!("{why}; nothing was written")));
    }
    // Every target is checked before the first disk is written; a `{disk}` pattern only now
    // names each disk's volume, which the report must not be either.
    let expanded: Vec<String> = plan.iter().map(|(_, t)| t.clone()).collect();
    crate::ingest::refuse_clobbering(args, &expanded)?;
    distinct_targets(&plan)?;
    for (k, t) in &plan {
        crate::ingest::refuse_bad_target(&args.medium, t)?;
        let scheme = t.split_once(':').map_or("", |(s, _)| s);
        mgear_volume::tools_for(scheme).map_err(|e| {
            crate::Error::from(e)
                .context(format!("the target of disk {k} ({t}); nothing was written"))
        })?;
        // What one disk's ingest refuses of an EBS spec, refused before disk 0 is written.
        if let Ok(crate::spec::Target::EbsSnapshot { mut opts, .. }) =
            crate::spec::Target::parse(t, crate::spec::Bare::Refuse)
        {
            opts.with_register_flag(args.register_image && boots(*k))
                .map_err(|e| usage(format!("{t}: {e}; nothing was written")))?;
        }
    }
    // Disks an earlier run of this command finished (an interrupted set
    // ingest re-run as it says) are kept; any other existing file is
    // refused before the first disk is written, not after.
    let sdir = crate::target::state_dir(args.state_dir.clone())?;
    let kept: Vec<bool> = plan
        .iter()
        .map(|(k, t)| {
            file.set
                .disks
                .get(*k)
                .is_some_and(|d| crate::ingest::ingested_before(&sdir, t, &d.manifest_root))
        })
        .collect();
    for ((k, t), kept) in plan.iter().zip(&kept) {
        let exists = crate::ingest::path_target(t).filter(|p| std::fs::symlink_metadata(p).is_ok());
        if let (Some(p), false, false) = (exists, *kept, args.force) {
            // Not judged by its bytes (a disk unchanged since the last generation holds
            // them already): by the record of an ingest of this very disk into it. What the
            // record says it holds is named (it guessed "an earlier generation's ingest,
            // another disk, or was changed since").
            let root_of = |j: usize| file.set.disks.get(j).map(|d| d.manifest_root);
            // A run with --force stopped part-way (exit 4: media still to come) left this
            // disk's ingest unfinished beside the old volume: it was called "no ingest into it
            // is recorded on this host".
            if root_of(*k).is_some_and(|r| crate::ingest::unfinished_root(&sdir, t) == Some(r)) {
                return Err(coded_hint(
                    USAGE,
                    format!(
                        "{} (the target of disk {k}) exists, and an earlier run with --force \
                         began writing set {} generation {g}'s disk {k} beside it (unfinished, \
                         the old volume kept until the machine is complete); nothing was written",
                        p.display(),
                        args.name
                    ),
                    "run the same command with --force again to go on from where it stopped",
                ));
            }
            let holds = match crate::ingest::ingested_from(&sdir, &p) {
                Some(r) if Some(r) == root_of(*k) => {
                    "it holds this disk, changed since its ingest finished".to_string()
                }
                Some(r) => match (0..file.set.disks.len()).find(|&j| root_of(j) == Some(r)) {
                    Some(j) => format!(
                        "it holds disk {j} of this set generation: the targets were given in \
                         another order"
                    ),
                    None => match disk_generations
                        .iter()
                        .find(|(j, _, root)| j == k && *root == r)
                    {
                        Some((_, was, _)) if *was > g => {
                            return Err(usage(format!(
                                "{} (the target of disk {k}) holds generation {was} of this \
                                 disk, NEWER than generation {g} asked for (ingested on this \
                                 host, and kept up to date since if `mgear serve` runs on it): \
                                 --force would write the older generation back over it, and \
                                 what changed since is lost. Ingest generation {g} into other \
                                 names to look at it; nothing was written",
                                p.display()
                            )))
                        }
                        Some((_, was, _)) => format!(
                            "it holds generation {was} of this disk, ingested on this host: \
                             --force writes generation {g} over it, the whole disk, verified \
                             again; where the machine runs from it, `mgear serve` on it and \
                             `mgear sync` at the source keep it up to date in place instead \
                             (SYNC.md)"
                        ),
                        None => format!(
                            "it holds another finished ingest recorded on this host (another \
                             capture: manifest root {})",
                            &hex(&r)[..32]
                        ),
                    },
                },
                None => "no ingest into it is recorded on this host: somebody's file, or one \
                         another host wrote"
                    .to_string(),
            };
            return Err(usage(format!(
                "{} (the target of disk {k}) exists, and no finished ingest of set {} \
                 generation {g}'s disk {k} into it is recorded here ({holds}): pass --force to \
                 write generation {g} over it; nothing was written",
                p.display(),
                args.name
            )));
        }
    }
    // A target half-way through another disk of this set (a re-run with the targets in
    // another order than the interrupted run): disk 0 was written whole into its target's
    // `.partial` before disk 1's refused, and the re-run in the right order then refused
    // disk 0's target in turn. Refused before anything is written, naming the order.
    if !args.force {
        for (k, t) in &plan {
            let Some(root) = crate::ingest::unfinished_root(&sdir, t) else {
                continue;
            };
            let other = file
                .set
                .disks
                .iter()
                .position(|d| d.manifest_root == root)
                .filter(|j| j != k);
            if let Some(j) = other {
                return Err(coded_hint(
                    USAGE,
                    format!(
                        "{t} (given for disk {k}) holds an unfinished ingest of disk {j} of set \
                         {} generation {g}: an earlier run was given the targets in another \
                         order; nothing was written",
                        args.name
                    ),
                    format!(
                        "give the targets in the order of that run (disk {j} into {t}), as \
                         --target once per disk, disk 0 first; or pass --force to drop what \
                         that run wrote and write each disk where this command says"
                    ),
                ));
            }
        }
    }
    // A snapshot name an earlier run completed another disk of this set into (a finished set
    // re-run with its snapshot targets in another order): each disk made a new snapshot under
    // the other's name, and two names then pointed at other disks. Refused as a file target
    // is, before anything is sent.
    if !args.force {
        for (k, t) in &plan {
            let Ok(crate::spec::Target::EbsSnapshot { name, .. }) =
                crate::spec::Target::parse(t, crate::spec::Bare::Refuse)
            else {
                continue;
            };
            let recorded = mgear_volume::ebs::recorded_snapshots(&sdir, &name);
            let of = |root: &[u8; 32]| crate::ingest::snapshot_of(&recorded, root);
            if file
                .set
                .disks
                .get(*k)
                .is_some_and(|d| of(&d.manifest_root).is_some())
            {
                continue;
            }
            let other = file
                .set
                .disks
                .iter()
                .enumerate()
                .find_map(|(j, d)| of(&d.manifest_root).map(|id| (j, id)));
            if let Some((j, id)) = other {
                return Err(coded_hint(
                    USAGE,
                    format!(
                        "{t} (given for disk {k}) names snapshot {id}, completed from disk {j} \
                         of set {} generation {g} by an earlier run: this run was given the \
                         targets in another order; nothing was sent",
                        args.name
                    ),
                    format!(
                        "give the targets in the order of that run (disk {j} into {t}), as \
                         --target once per disk, disk 0 first (the finished snapshots are then \
                         kept); or pass --force to make new snapshots under the names given"
                    ),
                ));
            }
        }
    }
    if args.adapt {
        let local = ["file:", "qcow2:", "dev:", "libvirt:"];
        if let Some((_, t)) = plan
            .iter()
            .find(|(_, t)| !local.iter().any(|p| t.starts_with(p)))
        {
            return Err(usage(format!(
                "--adapt needs local volumes to run {} on, and {t} is not one: ingest into \
                 file:/qcow2:/dev:/libvirt:, adapt, then copy",
                mgear_boot::adapt::TOOL
            )));
        }
    }
    // Every disk is written (and held unfinished) before any is finished: a volume is
    // replaced (a `.partial` renamed over it) only once every disk of the machine was
    // written and authenticated. Finished one by one, disk 0 of a delta replaced the old
    // volume and disk 1 then failed (a damaged segment), leaving a machine of two
    // generations that was never captured, the old disk 0 gone. Media still to come hold
    // them too: every disk is written as far as the media given allow, and finished only
    // once none waits (a finished volume is a complete disk; a machine is complete when all
    // are).
    let hold = plan.len() > 1;
    let mut disks = Vec::new();
    let mut held = Vec::new();
    let mut pending = Vec::new();
    let ingest_disk = |k: usize, target: &str, hold: Finishing| {
        let mut a = args.clone();
        a.name = set::disk_stream_name(&args.name, k);
        a.target = target.to_string();
        a.generation = Some(g);
        // The receipt's commit is the set's (checked above); each disk is
        // bound to it by its manifest root in the set manifest.
        a.trust.expect_commit = None;
        a.expect_root = file.set.disks.get(k).map(|d| d.manifest_root);
        a.boot = false;
        a.adapt = false;
        a.hold = hold;
        // An image is of the machine, registered from the disk it boots from: a data disk's
        // snapshot made an AMI of its own that boots nothing.
        a.register_image = args.register_image && file.set.disks.get(k).is_some_and(|d| d.boot);
        crate::ingest::ingest(&a)
    };
    for ((k, target), kept) in plan.iter().zip(kept) {
        if kept && !args.force {
            eprintln!(
                "mgear ingest: set {} disk {k}: {target} already holds it (an earlier run of this \
                 command wrote and verified it, and it is unchanged since): kept",
                args.name
            );
            let size = file.set.disks.get(*k).map_or(0, |d| d.size);
            let mut report =
                crate::ingest::kept_report(&set::disk_stream_name(&args.name, *k), g, target, size);
            if args.volume_sha256 {
                report.volume_sha256 = crate::ingest::target_sha256(target, &sdir, size)?;
            }
            disks.push(IngestedDisk {
                disk: *k,
                report,
                manifest: None,
            });
            continue;
        }
        eprintln!(
            "mgear ingest: set {} disk {k} of {} into {target}",
            args.name,
            file.set.disks.len()
        );
        let first = if hold {
            Finishing::Hold
        } else {
            Finishing::Now
        };
        match ingest_disk(*k, target, first) {
            Ok(report) => disks.push(IngestedDisk {
                disk: *k,
                report,
                manifest: crate::report::noted_manifest(),
            }),
            Err(e) if matches!(&e, crate::Error::Other(o) if o.is::<crate::ingest::Held>()) => {
                held.push((*k, e.take::<crate::ingest::Held>()?));
            }
            // The other disks get what the media given hold, too.
            Err(e) if crate::exit::classified(&e) == Some(crate::exit::PENDING) => {
                eprintln!("mgear: disk {k}: {e}");
                // What a disk asks to be given again (the medium with its first chunk, one
                // declared lost): the set's hint said "not needed again" beside it.
                let again = e
                    .find::<crate::exit::Pending>()
                    .and_then(|p| p.again.clone());
                pending.push((*k, e.to_string(), again));
            }
            Err(e) => {
                return Err(e.context(format!(
                    "ingesting disk {k} of set {} into {target}",
                    args.name
                )))
            }
        }
    }
    if !pending.is_empty() {
        let again: Vec<String> = pending
            .iter()
            .filter_map(|(k, _, a)| a.as_ref().map(|a| format!("disk {k}: {a}")))
            .collect();
        let hint = if again.is_empty() {
            "when the media named arrive, run the same command with them as --medium (or \
             --appliance): every disk goes on from where it stopped (the media given now are \
             not needed again), and the volumes are finished once the machine is complete"
                .to_string()
        } else {
            format!(
                "when the media named arrive, run the same command with them as --medium (or \
                 --appliance), and with these again ({}): keep them (do not erase them) until \
                 then; every disk goes on from where it stopped, and the volumes are finished \
                 once the machine is complete",
                again.join("; ")
            )
        };
        return Err(coded_hint(
            crate::exit::PENDING,
            format!(
                "set {} is not complete on the media given: {} of {} disk(s) wait for chunks on \
                 other media; {}",
                args.name,
                pending.len(),
                plan.len(),
                pending
                    .iter()
                    .map(|(k, e, _)| format!("disk {k}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            hint,
        ));
    }
    if hold {
        let target_of = |k: usize| {
            plan.iter()
                .find(|(d, _)| *d == k)
                .map(|(_, t)| t.clone())
                .ok_or_else(|| crate::err!("disk {k} is not in the plan (a bug)"))
        };
        // Every disk is written: read each back, and only when every one read back as it was
        // authenticated finish them (a `.partial` renamed into place), so a read-back that
        // fails replaces no volume of the machine.
        let mut checked = Vec::new();
        for (k, h) in held {
            let target = target_of(k)?;
            let (read_back, secs) = match ingest_disk(k, &target, Finishing::CheckThenHold) {
                Err(e) if matches!(&e, crate::Error::Other(o) if o.is::<crate::ingest::Held>()) => {
                    let c = e.take::<crate::ingest::Held>()?;
                    (c.read_back, c.seconds)
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "reading back disk {k} of set {} in {target} (no volume of the machine \
                         was replaced: they are finished together, once every disk reads back)",
                        args.name
                    )))
                }
                Ok(_) => (None, 0.0),
            };
            checked.push((k, h, read_back, secs));
        }
        for (k, h, read_back, check_secs) in checked {
            let target = target_of(k)?;
            let mut report = ingest_disk(
                k,
                &target,
                read_back.map_or(Finishing::Now, Finishing::Checked),
            )
            .with_context(|| format!("finishing disk {k} of set {} in {target}", args.name))?;
            report.bytes_written += h.bytes_written;
            report.zero_chunks += h.zero_chunks;
            // The disk's time is its write and its finish: the speed over both.
            report.seconds += h.seconds + check_secs;
            report.mb_per_s = crate::progress::mb_per_s(report.disk_size, report.seconds);
            // What runs before this command wrote, not what its first pass did (a first
            // ingest of a set reported every chunk as resumed).
            report.resumed_chunks = h.resumed_chunks;
            disks.push(IngestedDisk {
                disk: k,
                report,
                manifest: crate::report::noted_manifest(),
            });
        }
        disks.sort_by_key(|d| d.disk);
    }
    // The records of the finished disks stay: the same command run again
    // (a script re-run after it succeeded) keeps every disk and says so,
    // instead of refusing the files it wrote as somebody else's.
    let mut out = IngestReport {
        command: "ingest",
        name: args.name.clone(),
        generation: g,
        set_root: hex(&file.root),
        machine_disks: file.set.disks.len(),
        kept: !disks.is_empty() && disks.iter().all(|d| d.report.kept),
        disks,
        booted: None,
        boot_report: None,
        adapt: None,
    };
    // The boot disk first (the firmware boots the first disk), the others
    // after it in the machine's order: for the adaptation as for the boot.
    let boot = file.set.disks.iter().position(|d| d.boot).unwrap_or(0);
    if args.adapt {
        let mut volumes = Vec::new();
        for k in std::iter::once(boot).chain((0..plan.len()).filter(|k| *k != boot)) {
            volumes.push(local_volume(&plan[k].1)?);
        }
        eprintln!(
            "adapting set {} ({} disks) with {} (under TCG: this takes minutes)",
            args.name,
            volumes.len(),
            mgear_boot::adapt::TOOL
        );
        let adapted = mgear_boot::adapt_machine(&volumes).map_err(|e| {
            let code = match e {
                mgear_boot::BootError::Usage(_) | mgear_boot::BootError::Unsupported(_) => USAGE,
                _ => crate::exit::IO,
            };
            coded(
                code,
                format!(
                    "driver adaptation of set {} failed (the verified volumes are left as \
                     ingested, NOT adapted): {e}",
                    args.name
                ),
            )
        })?;
        out.adapt = Some(adapted);
    }
    if args.boot {
        let bus = args.boot_bus;
        let mut order: Vec<usize> = vec![boot];
        order.extend((0..plan.len()).filter(|k| *k != boot));
        let cinder = plan
            .iter()
            .filter(|(_, t)| t.starts_with("cinder:"))
            .count();
        if cinder == plan.len() {
            // The cloud boots it: one server from the boot volume, the
            // others attached in the machine's order.
            let volume = |k: usize| {
                out.disks
                    .iter()
                    .find(|d| d.disk == k)
                    .and_then(|d| d.report.volume.clone())
                    .ok_or_else(|| crate::err!("disk {k}'s cinder: target reported no volume id"))
            };
            let data = order[1..]
                .iter()
                .map(|k| volume(*k))
                .collect::<crate::Result<Vec<_>>>()?;
            let mut a = args.clone();
            a.target = plan[boot].1.clone();
            let Some(first) = out.disks.iter_mut().find(|d| d.disk == boot) else {
                crate::bail!("the boot disk {boot} was not ingested");
            };
            crate::ingest::boot_cinder_with(&a, &mut first.report, data)?;
            out.booted = first.report.booted;
            out.boot_report = first.report.boot_report.clone();
            return Ok(out);
        }
        if cinder > 0 {
            return Err(usage(
                "the disks of one machine boot together: give every disk a cinder: target, or \
                 none",
            ));
        }
        let resolved = order
            .iter()
            .map(|k| crate::boot_cmd::resolve(&plan[*k].1))
            .collect::<crate::Result<Vec<_>>>()?;
        let mut opts = crate::boot_cmd::BootOptions::new(
            args.wait_for.clone(),
            std::time::Duration::from_secs(args.timeout),
            true,
        );
        opts.bus = bus;
        let report = crate::boot_cmd::boot_resolved_all(&resolved, &opts)?;
        let path = resolved[0].default_report_path();
        let saved = report.write_json(&path);
        out.booted = Some(report.booted());
        out.boot_report = Some(path.display().to_string());
        saved?;
        if !report.booted() {
            eprintln!(
                "mgear: set {} did not boot: {}\n{}",
                args.name,
                report.detail,
                report.console_tail(20)
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_expand_a_pattern_a_list_or_one_disk() {
        let t = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            targets_of(&t(&["file:db-{disk}.raw"]), 2, None).unwrap(),
            [
                (0, "file:db-0.raw".to_string()),
                (1, "file:db-1.raw".to_string())
            ]
        );
        assert_eq!(
            targets_of(&t(&["file:a", "file:b"]), 2, None).unwrap(),
            [(0, "file:a".to_string()), (1, "file:b".to_string())]
        );
        assert_eq!(
            targets_of(&t(&["file:db-{disk}.raw"]), 2, Some(1)).unwrap(),
            [(1, "file:db-1.raw".to_string())]
        );
        for (ts, only) in [
            (t(&["file:a"]), None),
            (t(&["file:a", "file:b", "file:c"]), None),
            (t(&["file:a", "file:b"]), Some(0)),
            (t(&["file:a"]), Some(2)),
        ] {
            let e = targets_of(&ts, 2, only).unwrap_err().to_string();
            assert!(e.contains("--target") || e.contains("--disk"), "{e}");
        }
        // A pattern among plain targets: said so (it read "2 disks but 2 --target given").
        let e = targets_of(&t(&["file:a", "file:x-{disk}"]), 2, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("one holds {disk}"), "{e}");
    }

    #[test]
    fn one_volume_for_two_disks_is_refused_however_it_is_spelled() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().display().to_string();
        std::fs::write(d.path().join("same.raw"), b"x").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        let plan =
            |ts: &[String]| -> Vec<(usize, String)> { ts.iter().cloned().enumerate().collect() };
        for (a, b) in [
            // An existing file, by another spelling and by another kind.
            (
                format!("file:{dir}/same.raw"),
                format!("file:{dir}/./same.raw"),
            ),
            (
                format!("file:{dir}/same.raw"),
                format!("qcow2:{dir}/sub/../same.raw"),
            ),
            // One that does not exist yet.
            (
                format!("file:{dir}/new.raw"),
                format!("file:{dir}/sub/../new.raw"),
            ),
            ("rbd:volumes/a".to_string(), "rbd:volumes/a".to_string()),
        ] {
            let e = distinct_targets(&plan(&[a.clone(), b.clone()]))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("disks 0 and 1 have the same target"),
                "{a} {b}: {e}"
            );
        }
        distinct_targets(&plan(&[
            format!("file:{dir}/same.raw"),
            format!("file:{dir}/new.raw"),
            "rbd:volumes/a".to_string(),
            "rbd:volumes/b".to_string(),
        ]))
        .unwrap();
    }
}
