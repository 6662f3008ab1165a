//! `mgear medium`: `format` a medium (the FAT32 formatter is
//! `crate::medium::format_medium`), `rm` to undo a capture, and `fsck` to
//! clean up what a crash left on a medium.
//!
//! ```text
//! mgear medium format fat:m.img --size 2GiB                             # or fat:/dev/sdX
//! mgear medium rm   --medium fat:/dev/sdc --name web01                  # an unfinished capture
//! mgear medium rm   --medium fat:/dev/sdc --name web01 --generation 3   # one generation
//! mgear medium rm   --medium fat:/dev/sdc --name web01 --force          # finished data too
//! mgear medium fsck --medium fat:/dev/sdc [--repair]
//! ```
//!
//! `rm` removes unfinished generations without asking. Removing a finished
//! generation destroys data someone may still need, so it takes `--force`;
//! a generation later deltas depend on (their records deduplicate against
//! it) takes those deltas with it, and the refusal names them. When no
//! generation is left, the capture's key slots and directory go too. A
//! generation another machine borrows records from (`capture
//! --dedup-across-machines`) is never removed, even with `--force`: the
//! refusal names the borrower, which must go first. A
//! sealed appliance refuses every write, so a sealed shipment is never
//! changed (the error says so).
//!
//! `fsck` lists leftovers: generation directories with neither a MANIFEST
//! nor a valid journal (a crash before the first checkpoint), `*.TMP` files
//! of an interrupted atomic replace, segment files a finished generation
//! does not reference, capture directories without generations, and
//! unfinished generations (which a re-run of the capture resumes). With
//! `--repair` it removes the leftovers nothing can use; it never removes an
//! unfinished generation, whose progress a re-run still uses (remove it with
//! `capture --abort` or `medium rm`). On a `fat:` medium it then runs
//! `fsck.fat -n` (read-only) when dosfstools is installed, and with
//! `--repair` `fsck.fat -a`, which reclaims the clusters a crash or a full
//! medium leaked. Files and directories that are not part of the format
//! (under `MGEAR/`, a capture's or a generation's directory) are named as
//! notes and left alone. Exit 0: clean (notes aside); 1: something is left.

use crate::error::Context;
use image_format::commit::COMMIT_FILE;
use image_format::layout::{self, JOURNAL_A, JOURNAL_B, KEYPASS_FILE, KEYS_FILE, MANIFEST_FILE};
use image_format::layout::{INDEX_FILE, IPART_FILE};
use image_format::store::EntryKind;
use image_format::{GenerationInfo, GenerationState, Store, StoreError};
use serde::Serialize;

use crate::exit::{usage, FOUND, OK};
use crate::medium::Where;
use crate::spec::Medium as MediumSpec;
use crate::units::human_bytes;

/// `mgear medium ...`, typed (the binary's `cli::medium` fills it in from the flags).
#[derive(Debug)]
pub enum Request {
    /// Create a FAT32 file system on an image file (created at --size, or an
    /// existing one at its size) or a device (whole device), up to 16 TiB.
    Format {
        /// fat:IMAGE or fat:/dev/sdX (the other kinds are refused).
        medium: MediumSpec,
        /// Size in bytes of a new image file (sparse; not used for devices).
        size: Option<u64>,
        /// Overwrite an image or device that holds a file system, a partition
        /// table or another image (its old signatures are wiped).
        force: bool,
    },
    /// Remove an unfinished or unwanted capture or generation (finished ones need --force).
    Rm(Rm),
    /// List (and with --repair remove) what a crash left on the medium; runs fsck.fat -n on fat: media.
    Fsck(Fsck),
}

/// Run `mgear medium`.
pub fn run(request: Request) -> crate::Result<i32> {
    // Each of these writes the medium without a checkpoint: a signal lets the step finish.
    let (writes, format) = match &request {
        Request::Rm(_) => (true, false),
        Request::Format { .. } => (true, true),
        Request::Fsck(a) => (a.repair, false),
    };
    if writes {
        crate::signals::install_for_finish(format);
    }
    match request {
        Request::Rm(a) => rm(a),
        Request::Fsck(a) => fsck(a),
        Request::Format {
            medium,
            size,
            force,
        } => {
            let path = match medium {
                MediumSpec::Fat(p) => p,
                MediumSpec::Nbd(_) => {
                    return Err(usage(
                        "an NBD export is formatted by its owner (the appliance); format a device or image with fat:PATH",
                    ))
                }
                MediumSpec::Dir(_) => {
                    return Err(usage(
                        "dir: media are already-mounted file systems: format the device with \
                         `mgear medium format fat:/dev/sdX` (or mkfs.fat -F 32) instead",
                    ))
                }
            };
            let done = crate::medium::format_medium(&path, size, force)?;
            let f = &done.formatted;
            if crate::output::json() {
                crate::output::emit(&serde_json::json!({
                    "medium": format!("fat:{}", path.display()),
                    "file_system": "FAT32",
                    "size_bytes": f.volume_bytes,
                    "device_bytes": done.bytes,
                    "sector_bytes": f.sector_bytes,
                    "cluster_bytes": f.cluster_bytes,
                    "volume_serial": format!("{:04X}-{:04X}", f.volume_id >> 16, f.volume_id & 0xffff),
                    "wiped": crate::guard::describe(&done.wiped),
                    "captures_destroyed": done.captures,
                }))?;
                return Ok(crate::exit::OK);
            }
            if !done.wiped.is_empty() {
                println!(
                    "wiped {}{} from {}",
                    crate::guard::describe(&done.wiped),
                    crate::medium::captures_said(&done.captures),
                    path.display()
                );
            }
            println!(
                "formatted {} as FAT32 ({}; {}-byte sectors, {} clusters, serial {:04X}-{:04X})",
                path.display(),
                human_bytes(f.volume_bytes),
                f.sector_bytes,
                human_bytes(f.cluster_bytes),
                f.volume_id >> 16,
                f.volume_id & 0xffff
            );
            // (A 2 TiB medium leaves its last 512 bytes out: not worth a word.)
            if done.bytes.saturating_sub(f.volume_bytes) >= 1 << 20 {
                println!(
                    "note: the device is {}; FAT32 covers its first {} (the largest FAT32 volume), the rest is unused",
                    human_bytes(done.bytes),
                    human_bytes(f.volume_bytes)
                );
            }
            Ok(crate::exit::OK)
        }
    }
}

/// `mgear medium rm`, typed.
#[derive(Debug)]
pub struct Rm {
    pub medium: Where,
    /// Capture name (compared case-insensitively, as FAT does).
    pub name: String,
    /// Remove only this generation (and the deltas built on it, with --force).
    pub generation: Option<u32>,
    /// Also remove finished generations (data the target may still need).
    pub force: bool,
    /// Print the result as one JSON object.
    pub json: bool,
}

/// `mgear medium fsck`, typed.
#[derive(Debug)]
pub struct Fsck {
    pub medium: Where,
    /// Remove the leftovers nothing can use (never an unfinished generation).
    pub repair: bool,
    /// Print the result as one JSON object.
    pub json: bool,
}

/// What `medium rm --json` prints.
#[derive(Debug, Serialize)]
pub struct RmReport {
    pub command: &'static str,
    pub name: String,
    /// Generations removed, ascending.
    pub removed: Vec<u32>,
    /// Of those, the finished ones.
    pub finished: Vec<u32>,
    /// True when the whole capture (key slots and directory) is gone.
    pub capture_removed: bool,
    /// Bytes of files removed.
    pub bytes_freed: u64,
}

/// The capture directory on the medium whose name equals `name` ignoring
/// case (FAT keeps one directory for `web01` and `WEB01`).
/// Two directories differing only by case are an error naming both.
pub fn find_capture(store: &mut dyn Store, name: &str) -> crate::Result<Option<String>> {
    let stored = image_format::stored_name(store, name)?;
    Ok(image_format::list_captures(store)?
        .into_iter()
        .map(|c| c.name)
        .find(|n| *n == stored))
}

/// Generations whose records may point into `g`: deltas whose parent
/// chain reaches it (a delta deduplicates against every ancestor).
pub fn dependents(gens: &[GenerationInfo], g: u32) -> Vec<u32> {
    let parent = |x: u32| {
        gens.iter()
            .find(|i| i.generation == x)
            .and_then(|i| i.parent)
    };
    gens.iter()
        .map(|i| i.generation)
        .filter(|&h| {
            let mut at = parent(h);
            // Parents are older generations; the bound stops a damaged loop.
            for _ in 0..gens.len() {
                match at {
                    Some(p) if p == g => return true,
                    Some(p) if p < h => at = parent(p),
                    _ => return false,
                }
            }
            false
        })
        .collect()
}

/// What removing `generation` (or the whole capture) takes.
#[derive(Debug, PartialEq, Eq)]
pub struct RmPlan {
    pub name: String,
    pub remove: Vec<u32>,
    pub finished: Vec<u32>,
    pub whole: bool,
}

/// Refuse to remove anything of capture `name` while it holds a generation hidden by damage
/// (on a `dir:` medium, a file where its directory was): removing "what a capture stopped at
/// its start left" deleted its key slots beside it (a FAT medium damaged so is refused as a
/// damaged file system).
fn refuse_hidden(store: &mut dyn Store, name: &str) -> crate::Result<()> {
    let hidden = crate::trust::hidden_generation_dirs(store, name);
    if hidden.is_empty() {
        return Ok(());
    }
    Err(crate::exit::coded_hint(
        crate::exit::FOUND,
        format!(
            "capture {name} holds {}: a generation hidden by damage; removing the capture (or a \
             generation of it) could delete what it holds and its key slots; nothing was \
             removed",
            hidden.join("; ")
        ),
        "do not remove or repair it: ingest from another copy of the shipment, or ask how the \
         medium was handled (`mgear verify` names the damage)",
    ))
}

/// Decide what `rm` removes; refuses finished data without `force`.
pub fn plan_rm(
    store: &mut dyn Store,
    name: &str,
    generation: Option<u32>,
    force: bool,
) -> crate::Result<RmPlan> {
    let stored = image_format::stored_name(store, name)?;
    let captures = image_format::list_captures(store)?;
    let Some(cap) = captures.iter().find(|c| c.name == stored) else {
        let have: Vec<&str> = captures.iter().map(|c| c.name.as_str()).collect();
        return Err(usage(format!(
            "there is no capture {name} on this medium (it holds: {})",
            if have.is_empty() {
                "nothing".to_string()
            } else {
                have.join(", ")
            }
        )));
    };
    let gens = &cap.generations;
    refuse_hidden(store, &cap.name)?;
    if gens.is_empty() && !cap.recipient_slot && !cap.passphrase_slot {
        let foreign = foreign_entries(store, &cap.name)?;
        if !foreign.is_empty() {
            return Err(usage(format!(
                "{} is not a capture: it has no key slot and no generation, and holds other \
                 files ({}); `medium rm` removes captures only (`medium fsck` leaves it as is \
                 too). Remove those files by hand if you mean to",
                layout::capture_dir(&cap.name),
                foreign.join(", ")
            )));
        }
    }
    let remove: Vec<u32> = match generation {
        None => gens.iter().map(|g| g.generation).collect(),
        Some(g) => {
            if !gens.iter().any(|i| i.generation == g) {
                return Err(usage(format!(
                    "capture {} has no generation {g} (it has: {})",
                    cap.name,
                    gens.iter()
                        .map(|i| i.generation.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            // A newer generation whose MANIFEST is damaged names no parent: it may be a delta
            // on this one, and `--force` removed its parent without a word (it could then
            // never be restored).
            if let Some(h) = gens.iter().find(|i| {
                i.generation > g
                    && i.parent.is_none()
                    && matches!(i.state, GenerationState::Damaged(_))
            }) {
                return Err(usage(format!(
                    "capture {} generation {} is damaged (its MANIFEST does not read), so \
                     whether it is a delta on generation {g} cannot be told: removing generation \
                     {g} could leave it unrestorable; nothing was removed. Remove generation {} \
                     first (`--generation {}`), or the whole capture",
                    cap.name, h.generation, h.generation, h.generation
                )));
            }
            let mut v = vec![g];
            v.extend(dependents(gens, g));
            v.sort_unstable();
            v
        }
    };
    // Someone's file inside a generation's directory went with it, unsaid (at the capture's
    // level such files are kept and named): refused, so it can be moved out first.
    for &g in &remove {
        let dir = layout::generation_dir(&cap.name, g);
        let foreign: Vec<String> = match store.list(&dir) {
            Ok(v) => v
                .into_iter()
                .filter(|e| {
                    e.kind == EntryKind::Dir
                        || !(known_generation_file(&e.name) || e.name.ends_with(".TMP"))
                })
                .map(|e| e.name)
                .collect(),
            Err(StoreError::NotFound) => Vec::new(),
            Err(e) => return Err(sealed(e, &dir)),
        };
        if !foreign.is_empty() {
            return Err(usage(format!(
                "{dir} also holds {}, which {} not part of the format: `medium rm` does not \
                 delete what it did not write. Move {} out of MGEAR/ first, then run this again",
                foreign.join(", "),
                if foreign.len() == 1 { "is" } else { "are" },
                if foreign.len() == 1 { "it" } else { "them" },
            )));
        }
    }
    // A damaged generation that was once finished counts as finished data.
    let numbers: Vec<u32> = gens.iter().map(|i| i.generation).collect();
    let mut finished = Vec::new();
    for i in gens.iter().filter(|i| remove.contains(&i.generation)) {
        let done = match i.state {
            GenerationState::Complete => true,
            GenerationState::Unfinished { .. } => false,
            GenerationState::Damaged(_) => {
                image_format::finished_evidence(store, &cap.name, i.generation, &numbers)?.is_some()
            }
        };
        if done {
            finished.push(i.generation);
        }
    }
    if !finished.is_empty() && !force {
        let deps: Vec<u32> = generation
            .map(|g| remove.iter().copied().filter(|&x| x != g).collect())
            .unwrap_or_default();
        let dep_txt = if deps.is_empty() {
            String::new()
        } else {
            if deps.len() == 1 {
                format!(
                    "; generation {} depends on it (a delta) and would go too",
                    list(&deps)
                )
            } else {
                format!(
                    "; generations {} depend on it (deltas) and would go too",
                    list(&deps)
                )
            }
        };
        return Err(usage(format!(
            "capture {} {} {} {} finished{dep_txt}: removing {} destroys data the target may still \
             need; pass --force if you really mean it",
            cap.name,
            if finished.len() == 1 {
                "generation"
            } else {
                "generations"
            },
            list(&finished),
            if finished.len() == 1 { "is" } else { "are" },
            if finished.len() == 1 { "it" } else { "them" },
        )));
    }
    let whole = remove.len() == gens.len();
    Ok(RmPlan {
        name: cap.name.clone(),
        remove,
        finished,
        whole,
    })
}

fn list(v: &[u32]) -> String {
    v.iter()
        .map(|g| g.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The kind of a [`Finding`] of damage in the medium's file system (a directory that loops,
/// a cluster chain that runs into another file): never repaired here.
const DAMAGED_FS: &str = "damaged-file-system";
/// A file system a cut run left mid-write, put right by `--repair`'s open for writing.
const MID_WRITE: &str = "left-mid-write";
/// A damaged FSInfo sector (free-space hints only), rewritten by `--repair`'s open for
/// writing (`Store::damaged_hints`).
const DAMAGED_HINTS: &str = "damaged-free-space-hints";

/// An error reading `path` while looking (nothing is removed then).
fn reading(e: StoreError, path: &str) -> crate::Error {
    crate::Error::from(e).context(format!("reading {path}"))
}

/// Turn a read-only refusal into what makes the medium writable: an environment to put
/// right (exit 3), not a finding about its data (exit 1 said "the data did not check out: do
/// not use it" of a read-only loop device over an intact medium).
fn sealed(e: StoreError, path: &str) -> crate::Error {
    match e {
        StoreError::ReadOnly => crate::exit::coded_next(
            crate::exit::IO,
            format!(
                "the medium is read-only, so {path} was not removed (nothing was): on a sealed \
                 appliance nothing is ever removed (the shipment is sealed), a locked one needs \
                 `mgear appliance unlock` first, and a directory or image mounted or made \
                 read-only needs to be writable again"
            ),
            "make the medium writable (a loop device attached without -r, the image file \
             writable, the file system mounted read-write), then run the same command again",
        ),
        other => crate::Error::from(other).context(format!("removing {path}")),
    }
}

/// Remove every file of directory `dir` (one level) and then `dir`; returns bytes freed.
fn remove_tree(store: &mut dyn Store, dir: &str) -> crate::Result<u64> {
    remove_tree_keeping(store, dir, &[])
}

/// [`remove_tree`] but for the entries of `dir` named in `keep`: they stay, and so does
/// `dir` when any is named.
fn remove_tree_keeping(store: &mut dyn Store, dir: &str, keep: &[String]) -> crate::Result<u64> {
    let mut freed = 0;
    let entries = match store.list(dir) {
        Ok(v) => v,
        Err(StoreError::NotFound) => return Ok(0),
        Err(e) => return Err(sealed(e, dir)),
    };
    for e in entries.into_iter().filter(|e| !keep.contains(&e.name)) {
        let p = format!("{dir}/{}", e.name);
        match e.kind {
            EntryKind::File => {
                store.remove_file(&p).map_err(|x| sealed(x, &p))?;
                freed += e.len;
            }
            EntryKind::Dir => freed += remove_tree(store, &p)?,
        }
    }
    if keep.is_empty() {
        store.remove_dir(dir).map_err(|x| sealed(x, dir))?;
    }
    Ok(freed)
}

/// Said beside a refused removal of a medium left mid-write (which the refusal leaves as it
/// is): a removal cut off at its end had done what was asked and left only that, and the
/// re-run's "no such generation" read as if nothing had happened.
pub fn note_left_mid_write(store: &mut dyn Store, medium: &crate::medium::Where) {
    if store.left_mid_write() {
        eprintln!(
            "mgear: note: {} was left mid-write by a run that was cut off (a removal cut off at \
             its end leaves what it removed gone, and only this): `mgear medium fsck --repair` \
             puts it right; this refusal changed nothing",
            medium.describe()
        );
    }
}

/// Record the removal of `generations` of `name` in the custody log of every appliance among
/// `medium` (they are gone from its medium). The removal is done and durable: a log that
/// cannot take the record is warned about, not an error.
pub fn record_removal(medium: &crate::medium::Where, name: &str, generations: &[u32]) {
    for port in &medium.appliance {
        if let Err(e) = crate::appliance::capture_removed(port, name, generations) {
            // A refusal is the appliance's word; a lost answer (a power cut, an unplugged
            // cable) says nothing of whether the record was made: it was told "did not record
            // it ... run the same command again", which then found nothing to remove.
            let refused = e.find::<crate::appliance::ApplianceError>().is_some();
            eprintln!(
                "mgear: warning: the removal is done (nothing about it needs running again), but \
                 the custody log of the appliance at {} {}: {e:#}; `mgear appliance --port {} \
                 log` shows whether it holds the removal",
                port.display(),
                match refused {
                    true => "did not record it",
                    false => "may not have recorded it (its answer was lost)",
                },
                port.display()
            );
        }
    }
}

/// Make the removals durable. A FAT store flushes everything on any
/// sync; a mounted directory syncs the directory named (and its parent).
fn flush(store: &mut dyn Store) -> crate::Result<()> {
    match store.sync(layout::ROOT_DIR) {
        Ok(()) | Err(StoreError::NotFound) => Ok(()),
        Err(e) => Err(sealed(e, "the medium")),
    }
}

/// Carry out `plan`: newest generation first, so an interruption never
/// leaves a delta without its parent. Returns bytes freed.
pub fn execute(store: &mut dyn Store, plan: &RmPlan) -> crate::Result<u64> {
    let mut freed = 0;
    for &g in plan.remove.iter().rev() {
        freed += remove_tree(store, &layout::generation_dir(&plan.name, g))?;
    }
    if plan.whole {
        freed += remove_capture_dir(store, &plan.name)?;
    }
    flush(store)?;
    Ok(freed)
}

/// What the format keeps in a capture's directory besides its generations.
fn is_format_file(name: &str) -> bool {
    [KEYS_FILE, KEYPASS_FILE].contains(&name) || name.ends_with(".TMP")
}

/// Files in capture directory `name` that are not part of the format (someone's own, put
/// there by hand): never removed with the capture.
fn foreign_entries(store: &mut dyn Store, name: &str) -> crate::Result<Vec<String>> {
    let dir = layout::capture_dir(name);
    let entries = match store.list(&dir) {
        Ok(v) => v,
        Err(StoreError::NotFound) => return Ok(Vec::new()),
        Err(e) => return Err(sealed(e, &dir)),
    };
    Ok(entries
        .into_iter()
        .filter(|e| match e.kind {
            EntryKind::File => !is_format_file(&e.name),
            EntryKind::Dir => layout::parse_generation_dir(&e.name).is_none(),
        })
        .map(|e| e.name)
        .collect())
}

/// Remove capture `name`'s directory: its key slots, temporary files and generations.
/// Anything else in it (a user's files) stays, with the directory, and is named: `medium rm`
/// deleted a directory of someone's files that `medium fsck` had promised to leave as is.
fn remove_capture_dir(store: &mut dyn Store, name: &str) -> crate::Result<u64> {
    let dir = layout::capture_dir(name);
    let left = foreign_entries(store, name)?;
    let freed = remove_tree_keeping(store, &dir, &left)?;
    if left.is_empty() {
        return Ok(freed);
    }
    eprintln!(
        "mgear: note: {dir} also holds {} that {} not part of the format: left as is, with \
         the directory",
        left.join(", "),
        if left.len() == 1 { "is" } else { "are" }
    );
    Ok(freed)
}

/// The disk streams (`NAME.dK`) of machine set `name` on the medium and the
/// set's own directory name as stored; `None` when `name` is no set.
fn set_members(store: &mut dyn Store, name: &str) -> crate::Result<Option<(String, Vec<String>)>> {
    if image_format::set::parse_disk_stream_name(name).is_some() {
        return Ok(None);
    }
    let mut streams = Vec::new();
    let mut set_name = None;
    for c in image_format::list_captures(store)? {
        if let Some((set, _)) = image_format::set::parse_disk_stream_name(&c.name) {
            if set.eq_ignore_ascii_case(name) {
                set_name.get_or_insert_with(|| set.to_string());
                streams.push(c.name.clone());
            }
        }
    }
    let Some(set_name) = set_name else {
        return Ok(None);
    };
    Ok(Some((set_name, streams)))
}

/// Generation directories of the set directory itself.
fn set_dir_generations(store: &mut dyn Store, set: &str) -> crate::Result<Vec<u32>> {
    let dir = layout::capture_dir(set);
    let entries = match store.list(&dir) {
        Ok(v) => v,
        Err(StoreError::NotFound) => return Ok(Vec::new()),
        Err(e) => return Err(sealed(e, &dir)),
    };
    let mut g: Vec<u32> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Dir)
        .filter_map(|e| layout::parse_generation_dir(&e.name))
        .collect();
    g.sort_unstable();
    Ok(g)
}

/// Removes what a set's plans say: every disk stream's generations, then
/// the same generations of the set directory (and the directory once empty).
fn execute_set(store: &mut dyn Store, set: &str, plans: &[RmPlan]) -> crate::Result<u64> {
    let mut freed = 0;
    for p in plans {
        freed += execute(store, p)?;
    }
    let gens: std::collections::BTreeSet<u32> = plans
        .iter()
        .flat_map(|p| p.remove.iter().copied())
        .collect();
    for g in set_dir_generations(store, set)? {
        if gens.contains(&g) {
            freed += remove_tree(store, &layout::generation_dir(set, g))?;
        }
    }
    if set_dir_generations(store, set)?.is_empty() {
        freed += remove_capture_dir(store, set)?;
    }
    flush(store)?;
    Ok(freed)
}

/// One plan for a whole set, for reports: the generations removed and
/// whether nothing of the set is left.
fn set_summary(set: &str, plans: &[RmPlan]) -> RmPlan {
    let mut remove: Vec<u32> = plans
        .iter()
        .flat_map(|p| p.remove.iter().copied())
        .collect();
    remove.sort_unstable();
    remove.dedup();
    let mut finished: Vec<u32> = plans
        .iter()
        .flat_map(|p| p.finished.iter().copied())
        .collect();
    finished.sort_unstable();
    finished.dedup();
    RmPlan {
        name: set.to_string(),
        remove,
        finished,
        whole: plans.iter().all(|p| p.whole),
    }
}

/// `capture --abort` of machine set `set`: every disk stream generation the
/// set did not bind (an interrupted set capture: some disks finished, the
/// set manifest not written), and the set's own unfinished generation.
fn abort_set(
    store: &mut dyn Store,
    set: &str,
    streams: &[String],
    run: bool,
) -> crate::Result<RmPlan> {
    let bound = image_format::set::set_generations(store, set)?
        .last()
        .copied()
        .unwrap_or(0);
    let caps = image_format::list_captures(store)?;
    let mut plans = Vec::new();
    for s in streams {
        let Some(cap) = caps.iter().find(|c| &c.name == s) else {
            continue;
        };
        let remove: Vec<u32> = cap
            .generations
            .iter()
            .map(|g| g.generation)
            .filter(|g| *g > bound)
            .collect();
        if !remove.is_empty() {
            plans.push(RmPlan {
                name: s.clone(),
                whole: remove.len() == cap.generations.len(),
                remove,
                finished: Vec::new(),
            });
        }
    }
    let loose: Vec<u32> = set_dir_generations(store, set)?
        .into_iter()
        .filter(|g| *g > bound)
        .collect();
    // A generation of the set's directory that holds a capture's own files (a single-disk
    // capture made under the set's name while the set was unfinished) is not the set's: a
    // finished one is data, never an abort's to remove.
    for g in &loose {
        let dir = layout::generation_dir(set, *g);
        let own = [MANIFEST_FILE, JOURNAL_A, JOURNAL_B, INDEX_FILE, IPART_FILE];
        for f in own {
            let path = format!("{dir}/{f}");
            if store.len(&path).map_err(|e| sealed(e, &path))?.is_some() {
                return Err(usage(format!(
                    "{dir} holds a capture of its own ({f}), not machine set {set}'s: `capture \
                     --abort` removes only a set's unfinished parts and leaves it. Abort the \
                     set's disks by their names (`mgear capture --abort --medium MEDIUM --name {set}.d0`, ...), \
                     and use `mgear medium rm --medium MEDIUM --name {set}` for the capture if it is not wanted"
                )));
            }
        }
    }
    if plans.is_empty() && loose.is_empty() {
        return Err(usage(format!(
            "machine set {set} has no unfinished generation to abort (generation {bound} is \
             complete): nothing to do (an abort cut off after it removed its generation needs \
             nothing more); only to throw away finished data, `mgear medium rm --medium MEDIUM --name {set} \
             --generation {bound} --force` removes generation {bound} and what is built on it"
        )));
    }
    let mut summary = set_summary(set, &plans);
    summary.remove.extend(loose.iter().copied());
    summary.remove.sort_unstable();
    summary.remove.dedup();
    if run {
        // The set directory's own unbound generations (a SET-less one) go too.
        for g in loose {
            remove_tree(store, &layout::generation_dir(set, g))?;
        }
        execute_set(store, set, &plans)?;
    }
    summary.whole = bound == 0;
    Ok(summary)
}

/// `capture --abort`: remove the unfinished generation of `name`. For a
/// machine set, every disk of it.
///
/// Only the newest generation is ever removed, and only when it never
/// finished: a capture resumes or starts a generation only on top of
/// finished ones, so an older generation without a MANIFEST is one that
/// lost it (damage), and later deltas may point into its records. Removing
/// it would make them unreadable; that is `medium rm --force`'s decision,
/// which names what depends on it. A capture directory holding no
/// generation at all (a first capture stopped before it wrote one) has
/// nothing anyone could need and goes whole.
pub fn abort(store: &mut dyn Store, name: &str) -> crate::Result<RmPlan> {
    abort_with(store, name, true)
}

/// What [`abort`] would refuse, found without changing anything: `capture --abort
/// --replace-medium` declares a medium lost for good before it can abort, so the abort is
/// checked first on a read-only view.
pub fn abort_check(store: &mut dyn Store, name: &str) -> crate::Result<()> {
    abort_with(store, name, false).map(drop)
}

/// [`abort`], removing what it finds only when `run`.
fn abort_with(store: &mut dyn Store, name: &str, run: bool) -> crate::Result<RmPlan> {
    if let Some((set, streams)) = set_members(store, name)? {
        return abort_set(store, &set, &streams, run);
    }
    let stored = image_format::stored_name(store, name)?;
    let caps = image_format::list_captures(store)?;
    let cap = caps.iter().find(|c| c.name == stored).ok_or_else(|| {
        usage(format!(
            "there is no capture {name} on this medium to abort"
        ))
    })?;
    refuse_hidden(store, &cap.name)?;
    let Some(newest) = cap.generations.last() else {
        let plan = RmPlan {
            name: cap.name.clone(),
            remove: Vec::new(),
            finished: Vec::new(),
            whole: true,
        };
        if run {
            execute(store, &plan)?;
        }
        return Ok(plan);
    };
    let g = newest.generation;
    match &newest.state {
        GenerationState::Complete => {
            return Err(usage(format!(
                "capture {} has no unfinished generation to abort (generation {g} is finished): \
                 nothing to do (an abort cut off after it removed its generation needs nothing \
                 more); only to throw away finished data, `mgear medium rm --medium MEDIUM --name {} \
                 --generation {g} --force` removes generation {g} and what is built on it",
                cap.name, cap.name
            )))
        }
        GenerationState::Unfinished { .. } => {}
        GenerationState::Damaged(why) => {
            let gens: Vec<u32> = cap.generations.iter().map(|i| i.generation).collect();
            if image_format::finished_evidence(store, &cap.name, g, &gens)?.is_some() {
                return Err(usage(format!(
                    "capture {} generation {g} is damaged, not unfinished ({why}): `capture \
                     --abort` removes only an interrupted capture. `mgear verify` says what is \
                     wrong; to remove it anyway: `mgear medium rm --medium MEDIUM --name {} --generation {g} --force`",
                    cap.name, cap.name
                )));
            }
        }
    }
    let plan = RmPlan {
        name: cap.name.clone(),
        whole: cap.generations.len() == 1,
        remove: vec![g],
        finished: Vec::new(),
    };
    if run {
        execute(store, &plan)?;
    }
    Ok(plan)
}

/// Refuses removing generations of machine `machine` (`plans`, one per
/// capture of it) that another machine's finished generation borrows
/// records from (dedup across machines): removing them would leave that
/// machine unreadable. Names every borrower and what to do.
pub fn refuse_if_borrowed(
    store: &mut dyn Store,
    machine: &str,
    plans: &[RmPlan],
) -> crate::Result<()> {
    let removed = |capture: &str, g: u32| {
        plans
            .iter()
            .any(|p| p.name.eq_ignore_ascii_case(capture) && p.remove.contains(&g))
    };
    let mut by: Vec<String> = image_format::peers::borrowers_of(store, machine)?
        .into_iter()
        .filter(|b| removed(&b.peer.name, b.peer.generation))
        .map(|b| {
            format!(
                "{} generation {} (borrows from {} generation {})",
                image_format::peers::machine_of(&b.capture),
                b.generation,
                b.peer.name,
                b.peer.generation
            )
        })
        .collect();
    by.dedup();
    if by.is_empty() {
        return Ok(());
    }
    let borrowers: std::collections::BTreeSet<&str> =
        by.iter().filter_map(|b| b.split(' ').next()).collect();
    Err(usage(format!(
        "{machine} cannot be removed: another machine was captured with \
         --dedup-across-machines {machine} and its index points at {machine}'s records instead of \
         storing them: {}. Remove {} first (`mgear medium rm --medium MEDIUM --name NAME --force`), or keep \
         {machine} on the medium",
        by.join("; "),
        borrowers.into_iter().collect::<Vec<_>>().join(" and ")
    )))
}

/// What `medium rm` removes: a machine set's plans (one per disk), or one capture's.
enum Removal {
    Set(String, Vec<RmPlan>),
    One(RmPlan),
}

/// Plan `medium rm`, refusing what it must not remove; nothing written.
fn plan_removal(store: &mut dyn Store, args: &Rm) -> crate::Result<Removal> {
    if let Some((set, streams)) = set_members(store, &args.name)? {
        // A machine set: the same generation(s) of every disk and of the set.
        let mut plans = Vec::new();
        for s in &streams {
            plans.push(plan_rm(store, s, args.generation, args.force)?);
        }
        refuse_if_borrowed(store, &set, &plans)?;
        return Ok(Removal::Set(set, plans));
    }
    if let Some((set, _)) = image_format::set::parse_disk_stream_name(&args.name) {
        // Its records may be what another disk of the set points at.
        return Err(usage(format!(
            "{} is one disk of machine set {set}: remove the set's generation with every \
             disk (`mgear medium rm --medium MEDIUM --name {set} ...`)",
            args.name
        )));
    }
    let plan = plan_rm(store, &args.name, args.generation, args.force)?;
    refuse_if_borrowed(store, &plan.name, std::slice::from_ref(&plan))?;
    Ok(Removal::One(plan))
}

/// Run `mgear medium rm`.
pub fn rm(args: Rm) -> crate::Result<i32> {
    args.medium.ready_to_change("a removal (medium rm)")?;
    // Refused on a read-only open first: the open for writing puts a medium left mid-write
    // right (a write), and a removal refused then (a mistyped name) had changed it unsaid.
    {
        let mut ro = args.medium.open_read_only()?;
        let planned = plan_removal(ro.store(), &args);
        if planned.is_err() {
            note_left_mid_write(ro.store(), &args.medium);
        }
        let _ = ro.close();
        planned?;
    }
    let mut medium = args.medium.open()?;
    let result = (|| {
        let store = medium.store();
        match plan_removal(store, &args)? {
            Removal::Set(set, plans) => {
                let freed = execute_set(store, &set, &plans)?;
                Ok::<_, crate::Error>((set_summary(&set, &plans), freed))
            }
            Removal::One(plan) => {
                let freed = execute(store, &plan)?;
                Ok::<_, crate::Error>((plan, freed))
            }
        }
    })();
    let (plan, freed) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = medium.close();
            return Err(e);
        }
    };
    medium.close()?;
    record_removal(&args.medium, &plan.name, &plan.remove);
    let report = RmReport {
        command: "medium rm",
        name: plan.name.clone(),
        removed: plan.remove.clone(),
        finished: plan.finished.clone(),
        capture_removed: plan.whole,
        bytes_freed: freed,
    };
    if args.json {
        crate::progress::print_json(&report)?;
    } else {
        // A capture stopped before its first generation has none to name.
        let what = match report.removed.as_slice() {
            [] => "(no generation: what a capture stopped at its start left)".to_string(),
            [g] => format!("generation {g}"),
            many => format!("generations {}", list(many)),
        };
        println!(
            "removed {} {what} ({} freed){}",
            report.name,
            human_bytes(freed),
            if report.capture_removed {
                "; no generation is left, so the capture and its key slots are gone too"
            } else {
                ""
            }
        );
    }
    Ok(OK)
}

/// One thing `fsck` found.
#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Path on the medium.
    pub path: String,
    /// `damaged-generation`, `unfinished-generation`, `temporary-file`,
    /// `orphan-segment`, `empty-capture`, `unknown-file`.
    pub kind: &'static str,
    pub what: String,
    /// Whether `--repair` removes it.
    pub repairable: bool,
    /// Removed by this run.
    pub repaired: bool,
}

/// What `medium fsck --json` prints.
#[derive(Debug, Serialize)]
pub struct FsckReport {
    pub command: &'static str,
    pub medium: String,
    pub findings: Vec<Finding>,
    /// `fsck.fat -n` output summary: None when not run (not a fat: medium,
    /// or dosfstools missing).
    pub fsck_fat: Option<FatCheck>,
    pub clean: bool,
}

/// The result of `fsck.fat -n`.
#[derive(Debug, Serialize)]
pub struct FatCheck {
    pub ok: bool,
    /// `--repair` ran `fsck.fat -a` and it corrected something.
    pub repaired: bool,
    /// What `-n` found is only what a crash leaves: `--repair` would let `-a` fix it.
    pub repairable: bool,
    pub output: String,
}

/// Known file names inside a generation directory.
fn known_generation_file(name: &str) -> bool {
    [
        MANIFEST_FILE,
        INDEX_FILE,
        IPART_FILE,
        JOURNAL_A,
        JOURNAL_B,
        COMMIT_FILE,
    ]
    .iter()
    // A FAT medium's names are found in any case (`MaNIFEST` is read as the MANIFEST, and
    // was called "not part of the format").
    .any(|k| k.eq_ignore_ascii_case(name))
        || layout::parse_segment_name(&name.to_ascii_uppercase()).is_some()
}

/// The kind of a [`Finding`] that is only told: a file or directory that is not part of the
/// format (put there by hand or by another program). Nothing reads it and nothing removes it,
/// so it does not make a medium unclean.
const UNKNOWN: &str = "unknown-file";

impl Finding {
    /// Whether this finding leaves the medium unclean (exit 1) while it stands.
    fn counts(&self) -> bool {
        !self.repaired && self.kind != UNKNOWN
    }
}

/// Look for leftovers (keyless).
pub fn scan(store: &mut dyn Store) -> crate::Result<Vec<Finding>> {
    let mut out = Vec::new();
    let finding = |path: String, kind, what: String, repairable| Finding {
        path,
        kind,
        what,
        repairable,
        repaired: false,
    };
    // What sits directly under MGEAR/ besides captures, sets and ATTEST: no command reads
    // it, and the operator who finds it should know it is there.
    let root = match store.list(layout::ROOT_DIR) {
        Ok(v) => v,
        Err(StoreError::NotFound) => Vec::new(),
        // Told as a finding of this check, which writes nothing (it said "removing MGEAR",
        // exit 3, and no fsck.fat result).
        Err(StoreError::Damaged(m)) => {
            out.push(finding(layout::ROOT_DIR.into(), DAMAGED_FS, m, false));
            return Ok(out);
        }
        Err(e) => return Err(reading(e, layout::ROOT_DIR)),
    };
    for e in &root {
        let ours = e.kind == EntryKind::Dir
            && (layout::validate_name(&e.name).is_ok()
                || e.name.eq_ignore_ascii_case(layout::ATTEST_NAME));
        if !ours {
            out.push(finding(
                format!("{}/{}", layout::ROOT_DIR, e.name),
                UNKNOWN,
                "not part of the format (left as is)".into(),
                false,
            ));
        }
    }
    let captures = match image_format::list_captures(store) {
        Ok(v) => v,
        Err(image_format::Error::Store {
            error: StoreError::Damaged(m),
            path,
        }) => {
            out.push(finding(path, DAMAGED_FS, m, false));
            return Ok(out);
        }
        Err(e) => return Err(e.into()),
    };
    for cap in captures {
        let dir = layout::capture_dir(&cap.name);
        // Its generations could not be listed (a directory damaged under it): damage, not
        // "not a capture" with "no leftovers".
        if let Some(why) = &cap.damage {
            out.push(finding(dir, DAMAGED_FS, why.clone(), false));
            continue;
        }
        let entries = match store.list(&dir) {
            Ok(v) => v,
            Err(StoreError::Damaged(m)) => {
                out.push(finding(dir.clone(), DAMAGED_FS, m, false));
                continue;
            }
            Err(e) => return Err(reading(e, &dir)),
        };
        for e in &entries {
            let path = format!("{dir}/{}", e.name);
            if e.kind == EntryKind::Dir {
                if layout::parse_generation_dir(&e.name).is_none() {
                    out.push(finding(
                        path,
                        UNKNOWN,
                        "not a generation directory (left as is; `mgear verify` fails the \
                         capture while it is there: a generation renamed away is invisible to \
                         every reader)"
                            .into(),
                        false,
                    ));
                }
            } else if e.name.ends_with(".TMP") {
                out.push(finding(
                    path,
                    "temporary-file",
                    "left by an interrupted write".into(),
                    true,
                ));
            } else if ![KEYS_FILE, KEYPASS_FILE].contains(&e.name.as_str()) {
                out.push(finding(
                    path,
                    UNKNOWN,
                    "not part of the format (left as is)".into(),
                    false,
                ));
            }
        }
        if cap.generations.is_empty() {
            // Only what a capture stopped at its start leaves (its key slots, a temporary
            // file) is removed: a directory that holds anything else is someone's, and
            // `--repair` deleted it with what it held.
            let foreign = entries.iter().any(|e| {
                e.kind == EntryKind::Dir
                    || !([KEYS_FILE, KEYPASS_FILE].contains(&e.name.as_str())
                        || e.name.ends_with(".TMP"))
            });
            let slots = cap.recipient_slot || cap.passphrase_slot;
            let (kind, what) = match (foreign, slots) {
                (false, _) => (
                    "empty-capture",
                    format!(
                        "capture {} has no generation{}",
                        cap.name,
                        if slots { " (only key slots)" } else { "" }
                    ),
                ),
                (true, true) => (
                    "empty-capture",
                    format!(
                        "capture {} has no generation, and its directory holds other files too \
                         (named above): left as is; `mgear medium rm --medium MEDIUM --name {}` removes it",
                        cap.name, cap.name
                    ),
                ),
                (true, false) => (
                    UNKNOWN,
                    "not a capture: no key slot and no generation, and it holds other files \
                     (left as is)"
                        .to_string(),
                ),
            };
            out.push(finding(dir.clone(), kind, what, !foreign));
            continue;
        }
        for g in &cap.generations {
            let gdir = layout::generation_dir(&cap.name, g.generation);
            match &g.state {
                GenerationState::Damaged(why) => {
                    let numbers: Vec<u32> =
                        cap.generations.iter().map(|i| i.generation).collect();
                    // Only a generation that never finished is a leftover:
                    // one that did (a later generation on it, its COMMIT, a
                    // damaged MANIFEST) is evidence for verify, and deltas
                    // may need its records.
                    let finished = image_format::finished_evidence(
                        store,
                        &cap.name,
                        g.generation,
                        &numbers,
                    )?;
                    let what = match &finished {
                        Some(_) => format!(
                            "generation {} of {} is damaged ({why}): it is not a leftover and is \
                             kept; `mgear verify` says what is wrong",
                            g.generation, cap.name
                        ),
                        // Its files may be among the clusters nothing holds: damage, kept.
                        None if why == image_format::LOST_ENTRIES => format!(
                            "generation {} of {} has {why}",
                            g.generation, cap.name
                        ),
                        // The whole story is in the state's own text (an interrupted start).
                        None if why == image_format::CUT_OFF_AT_START => format!(
                            "generation {} of {} was cut off at its start (no MANIFEST, no valid \
                             journal): nothing can resume or read it; the same capture command \
                             starts it over",
                            g.generation, cap.name
                        ),
                        None => format!(
                            "generation {} of {} has no MANIFEST and no valid journal ({}): nothing can resume or read it",
                            g.generation,
                            cap.name,
                            if why.is_empty() { "empty" } else { why.as_str() }
                        ),
                    };
                    out.push(finding(
                        gdir.clone(),
                        "damaged-generation",
                        what,
                        // A garbled directory is damage, never a leftover to remove; nor is
                        // a generation whose files the file system may have lost.
                        finished.is_none()
                            && !why.starts_with(image_format::GARBLED_DIR)
                            && why != image_format::LOST_ENTRIES,
                    ));
                    continue;
                }
                GenerationState::Unfinished { next_chunk } => out.push(finding(
                    gdir.clone(),
                    "unfinished-generation",
                    format!(
                        "generation {} of {} is unfinished (chunk {next_chunk} of {}): re-run the same \
                         capture command to resume it, or remove it with \
                         `mgear capture --abort --medium MEDIUM --name {}`",
                        g.generation,
                        cap.name,
                        g.chunk_count,
                        image_format::set::owner(&cap.name)
                    ),
                    false,
                )),
                GenerationState::Complete => {
                    // A disk's finished generation no set manifest binds: its
                    // set capture stopped between the disks and the SET.
                    if let Some((set, _)) = image_format::set::parse_disk_stream_name(&cap.name) {
                        let p = image_format::set::set_path(set, g.generation);
                        let bound = match store.len(&p) {
                            Ok(len) => len.is_some(),
                            // The set's directory damaged: a finding (once), and the other
                            // captures still checked (the whole fsck stopped on it).
                            Err(StoreError::Damaged(m)) => {
                                let dir = layout::capture_dir(set);
                                if !out.iter().any(|f| f.path == dir) {
                                    out.push(finding(dir, DAMAGED_FS, m, false));
                                }
                                true
                            }
                            Err(e) => return Err(reading(e, &p)),
                        };
                        if !bound {
                            out.push(finding(
                                gdir.clone(),
                                "unbound-set-generation",
                                format!(
                                    "generation {} of {} is finished but no set manifest of set \
                                     {set} binds it: re-run the set's capture command to finish \
                                     the set, or remove the set's unfinished generation with \
                                     `mgear capture --abort --medium MEDIUM --name {set}`",
                                    g.generation, cap.name
                                ),
                                false,
                            ));
                        }
                    }
                }
            }
            let files = match store.list(&gdir) {
                Ok(v) => v,
                Err(StoreError::NotFound) => continue,
                Err(StoreError::Damaged(m)) => {
                    out.push(finding(gdir.clone(), DAMAGED_FS, m, false));
                    continue;
                }
                Err(e) => return Err(reading(e, &gdir)),
            };
            for f in files {
                let path = format!("{gdir}/{}", f.name);
                if f.kind == EntryKind::File && f.name.ends_with(".TMP") {
                    out.push(finding(
                        path,
                        "temporary-file",
                        "left by an interrupted write".into(),
                        true,
                    ));
                } else if g.state == GenerationState::Complete
                    && layout::parse_segment_name(&f.name).is_some_and(|s| s >= g.segments)
                {
                    out.push(finding(
                        path,
                        "orphan-segment",
                        format!(
                            "segment not referenced by the MANIFEST ({} segments)",
                            g.segments
                        ),
                        true,
                    ));
                } else if f.kind == EntryKind::Dir || !known_generation_file(&f.name) {
                    out.push(finding(
                        path,
                        UNKNOWN,
                        "not part of the format (left as is)".into(),
                        false,
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// Scan and remove the repairable findings until none is left (removing a
/// capture's last damaged generation leaves an empty capture, removed on
/// the next pass); returns every finding, the removed ones marked.
pub fn scan_and_repair(store: &mut dyn Store) -> crate::Result<Vec<Finding>> {
    let mut all: Vec<Finding> = Vec::new();
    for _ in 0..3 {
        let mut found = scan(store)?;
        found.retain(|f| !all.iter().any(|a| a.path == f.path && a.kind == f.kind));
        if !found.iter().any(|f| f.repairable) {
            all.extend(found);
            break;
        }
        repair(store, &mut found)?;
        all.extend(found);
    }
    Ok(all)
}

/// Remove the repairable findings; marks them repaired.
pub fn repair(store: &mut dyn Store, findings: &mut [Finding]) -> crate::Result<()> {
    for f in findings.iter_mut().filter(|f| f.repairable) {
        match f.kind {
            "damaged-generation" | "empty-capture" => {
                remove_tree(store, &f.path)?;
            }
            _ => store.remove_file(&f.path).map_err(|e| sealed(e, &f.path))?,
        }
        f.repaired = true;
    }
    flush(store)?;
    Ok(())
}

/// `fsck.fat -n` (or with `repair`, `fsck.fat -a`: reclaim the clusters a
/// crash leaked, fix the free count) on an image or device, if dosfstools
/// is installed. The medium lock is held meanwhile, so no capture starts.
///
/// `fsck.fat -a` also "repairs" damage by cutting files and directories
/// short (a chain pointing outside the volume is ended there, a directory
/// that loops is cut): on a medium that travels with the only copy of a
/// disk, that can make every capture unreadable. So `-a` runs only when
/// `-n` found nothing but what a crash leaves ([`benign_fsck_line`]); other
/// findings are reported and left for the operator to decide on a copy.
fn fsck_fat(path: &std::path::Path, spec: &str, repair: bool) -> crate::Result<Option<FatCheck>> {
    let Some(tool) = crate::tools::which("fsck.fat") else {
        return Ok(None);
    };
    let _lock = crate::lock::lock(path, repair, spec)?;
    let (status, text) = match run_fsck_fat(&tool, "-n", path)? {
        Ran::Done(st, text) => (st, text),
        Ran::Stopped(limit, text) => return Ok(Some(fsck_timed_out("-n", limit, &text))),
    };
    let harmful = harmful_fsck_findings(&text);
    if !repair || status.success() {
        return Ok(Some(FatCheck {
            repaired: false,
            ok: status.success(),
            repairable: !status.success() && harmful.is_empty(),
            output: text,
        }));
    }
    if !harmful.is_empty() {
        return Ok(Some(FatCheck {
            repaired: false,
            ok: false,
            repairable: false,
            output: format!(
                "not repaired: fsck.fat would change files or directories, not only what a \
                 crash leaves, and its repair cuts them short (captures may need them). `mgear \
                 verify` says which captures are whole; to try fsck.fat's repair, run `fsck.fat \
                 -a` on a copy of the medium. What it found:\n{}",
                harmful.join("\n")
            ),
        }));
    }
    let (status, text) = match run_fsck_fat(&tool, "-a", path)? {
        Ran::Done(st, text) => (st, text),
        Ran::Stopped(limit, text) => return Ok(Some(fsck_timed_out("-a", limit, &text))),
    };
    // fsck.fat -a exits 1 when it corrected something: that is a success.
    Ok(Some(FatCheck {
        repaired: status.code() == Some(1),
        ok: status.success() || status.code() == Some(1),
        repairable: false,
        output: text,
    }))
}

/// What `fsck.fat -n` found that its repair would change beyond what a crash leaves: each a
/// line, or a file's path with its indented details. A file whose cluster chain is longer
/// than its size ("cluster chain length is > N bytes", then "Truncating file to SIZE bytes")
/// is what a capture killed between taking clusters and writing the size leaves: the cut
/// keeps every byte of it.
fn harmful_fsck_findings(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with("There are differences between boot sector and its backup") {
            // The dirty flag (byte 65, set while mounted) differs from the backup's: what a
            // crash leaves, and `-a` clears it. Any other byte is damage.
            let mut block = vec![line.to_string()];
            let mut other = false;
            while let Some(d) =
                lines.next_if(|d| d.starts_with(' ') || d.starts_with("This is mostly harmless"))
            {
                let t = d.trim();
                if let Some((offset, _)) =
                    t.split_once(':').filter(|(o, _)| o.parse::<u32>().is_ok())
                {
                    other |= offset != "65";
                } else if t != "Not automatically fixing this."
                    && !t.starts_with("This is mostly harmless")
                {
                    other = true;
                }
                block.push(t.to_string());
            }
            if other {
                out.push(block.join("\n  "));
            }
            continue;
        }
        // The summary line names the medium as given: an absolute path starts with '/', as
        // file findings do ("/tmp/m.img: 11 files, ..." was read as damage in a file, and a
        // medium with only a crash's leftovers was told "it would cut files short").
        if !line.starts_with('/') || benign_fsck_line(line) {
            if !benign_fsck_line(line) {
                out.push(line.to_string());
            }
            continue;
        }
        let mut details = Vec::new();
        while let Some(d) = lines.next_if(|d| d.starts_with(' ') || d.starts_with('\t')) {
            details.push(d.trim());
        }
        let size = details.iter().find_map(|d| {
            let rest = d.strip_prefix("File size is ")?;
            let (size, chain) = rest.split_once(" bytes, cluster chain length is > ")?;
            chain.ends_with(" bytes.").then_some(size)
        });
        let benign = size.is_some_and(|size| {
            details.len() == 2
                && details
                    .iter()
                    .any(|d| *d == format!("Truncating file to {size} bytes."))
        });
        if !benign {
            out.push(
                std::iter::once(line)
                    .chain(details)
                    .collect::<Vec<_>>()
                    .join("\n  "),
            );
        }
    }
    out
}

/// A line of `fsck.fat -n` output that names nothing a repair would cut: its banner and
/// summary, and what a capture killed mid-write leaves (clusters in no file, a stale free
/// count, the dirty flag).
fn benign_fsck_line(line: &str) -> bool {
    let l = line.trim();
    l.is_empty()
        || l.starts_with("fsck.fat ")
        || l.starts_with("Reclaimed ")
        || l.starts_with("Free cluster summary")
        // A damaged FSInfo sector (hints only): `-a` rewrites it, as mgear's own repair does.
        || l.starts_with("FSINFO sector has bad magic number")
        || (l.starts_with("Offset ") && l.contains("!= expected"))
        || l == "Auto-correcting it."
        // The free count's correction, on the line after it.
        || l == "Auto-correcting."
        || l.starts_with("Dirty bit is set")
        || l.starts_with("Leaving filesystem unchanged")
        || l.starts_with("Performing changes")
        || l.starts_with("Automatically removing dirty bit")
        || l.starts_with("1) Remove dirty bit")
        || l.starts_with("2) No action")
        || l.contains(" files, ") && l.contains(" clusters")
}

fn fsck_timed_out(flag: &str, limit: u64, text: &str) -> FatCheck {
    FatCheck {
        repairable: false,
        repaired: false,
        ok: false,
        output: format!(
            "fsck.fat {flag} did not finish within {limit} s and was stopped (it loops on some \
             damaged volumes; the boot sector is the usual cause: compare it with its backup \
             at sector 6). Its output: {text}"
        ),
    }
}

/// How a run of `fsck.fat` ended: its exit status and output, or stopped at its deadline
/// (seconds) with what it had printed.
enum Ran {
    Done(std::process::ExitStatus, String),
    Stopped(u64, String),
}

/// Run `fsck.fat FLAG PATH` with a deadline that grows with the medium (it loops for ever on
/// some damaged volumes, a whole core for as long as it is left).
fn run_fsck_fat(tool: &std::path::Path, flag: &str, path: &std::path::Path) -> crate::Result<Ran> {
    let mut child = std::process::Command::new(tool)
        .arg(flag)
        .arg(path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running fsck.fat {flag} {}", path.display()))?;
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let limit = std::env::var("MGEAR_FSCK_FAT_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(300 + size / (1 << 30));
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            if let Some(r) = r {
                // At most 1 MiB kept: a looping fsck.fat may print without end.
                let _ = std::io::Read::read_to_end(&mut std::io::Read::take(r, 1 << 20), &mut kept);
            }
            kept
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(limit);
    let status = loop {
        if let Some(st) = child.try_wait().context("waiting for fsck.fat")? {
            break Some(st);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut text = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
    text.push_str(&String::from_utf8_lossy(&err.join().unwrap_or_default()));
    let text = text.trim().to_string();
    Ok(match status {
        Some(st) => Ran::Done(st, text),
        None => Ran::Stopped(limit, text),
    })
}

/// Run `mgear medium fsck`.
pub fn fsck(args: Fsck) -> crate::Result<i32> {
    let mut put_right = false;
    if args.repair {
        args.medium
            .ready_to_change("a repair (medium fsck --repair)")?;
        // A medium a run left mid-write is put right by an open for writing (FAT copies that
        // differ, lost clusters: what a cut leaves) before its damage is judged; they were
        // called damage and nothing was repaired. Damage a cut does not leave makes that open
        // refuse, writing nothing: it is judged below as before.
        let left = {
            let mut ro = args.medium.open_read_only()?;
            let left = ro.store().left_mid_write();
            ro.close()?;
            left
        };
        if left {
            if let Ok(m) = args.medium.open() {
                m.close()?;
                put_right = true;
            }
        }
    }
    // Damage in the file system's cluster chains (a chain past its size into another file, a
    // last cluster marked free, clusters two files hold) is looked for first, read-only: a
    // repair then frees what the chain runs into (`fsck.fat -a` cut a chain at its size and
    // freed the next capture's MANIFEST, then "repaired", exit 0), and so would removing a
    // leftover whose chain runs into a capture. Chains past their size into clusters nobody
    // holds are what a crash leaves, and are repaired.
    let damage: Vec<String> = {
        let mut ro = args.medium.open_read_only()?;
        let mut d = match ro.store().file_system_findings() {
            Ok(v) => v
                .into_iter()
                .filter(|f| {
                    !f.contains(image_format::store::fatmap::LEFTOVER_CHAIN)
                        && !f.starts_with(image_format::store::fatmap::LEFT_MID_WRITE)
                })
                .collect(),
            Err(e) => vec![format!("the file system could not be walked: {e}")],
        };
        d.extend(image_format::damaged_root_dir(ro.store()));
        // A damaged span label or map (what `verify` calls damage) went unsaid ("no
        // leftovers"), and --repair's open for writing then refused it, exit 2. Read as
        // verify reads them: a labelled medium opens as a span (its members' labels and
        // map copies are the span view's to say).
        let store = ro.store();
        let labels = store.span().map(|v| v.damaged_labels()).unwrap_or_default();
        let maps = store.span().map(|v| v.damaged_maps()).unwrap_or_default();
        for (name, why) in labels {
            if why.contains("its write was cut off") {
                // What a join cut off leaves (FORMAT.md §15): the next capture joins it again.
                d.push(format!(
                    "{name}'s span label (MGEAR/SPAN) is short ({why}): its joining a span was \
                     cut off, so it holds nothing of the span yet; the span's capture with this \
                     medium given joins it again"
                ));
                continue;
            }
            d.push(format!(
                "{name}'s span label (MGEAR/SPAN) is damaged ({why}): the medium cannot be \
                 placed in its span (its own files still verify), and a capture does not write \
                 to it: capture onto the span's other media with --replace-medium naming it, \
                 or onto new media"
            ));
        }
        for (o, why) in &maps {
            d.push(format!(
                "the span map's copy (MGEAR/SPANMAP) on medium #{o} is damaged ({why}): every \
                 medium of the span holds the same map, so verify and ingest it together with \
                 the span's other media, whose copies serve"
            ));
        }
        if maps.is_empty() {
            if let Ok(Some(why)) =
                image_format::span::read_span(ro.store()).map(|s| s.and_then(|s| s.map_damage))
            {
                d.push(format!(
                    "the span map (MGEAR/SPANMAP) is damaged ({why}): every medium of the span \
                     holds the same map, so verify and ingest it together with the span's \
                     other media, whose copies serve"
                ));
            }
        }
        ro.close()?;
        d
    };
    let repair = args.repair && damage.is_empty();
    let mut medium = if repair {
        args.medium.open()?
    } else {
        args.medium.open_read_only()?
    };
    let result = if repair {
        scan_and_repair(medium.store())
    } else {
        scan(medium.store())
    };
    let mut findings = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = medium.close();
            return Err(e);
        }
    };
    // Said without --repair too: on a medium fsck.fat does not check (an NBD export, an
    // appliance's), a cut run's dirty volume went unmentioned until --repair put it right.
    // Not beside damage: --repair puts nothing right then (it said it would).
    if !args.repair && damage.is_empty() && medium.store().left_mid_write() {
        findings.insert(
            0,
            Finding {
                path: args.medium.describe(),
                kind: MID_WRITE,
                what: "its file system was left mid-write by a run that was cut off (its dirty \
                       mark is set): --repair puts it right as `fsck.fat -a` would, freeing \
                       nothing a file holds"
                    .into(),
                repairable: true,
                repaired: false,
            },
        );
    }
    if let Some(what) = medium.store().damaged_hints() {
        findings.push(Finding {
            path: args.medium.describe(),
            kind: DAMAGED_HINTS,
            what,
            repairable: true,
            repaired: repair,
        });
    }
    for d in damage {
        let what = match args.repair {
            true => format!("{d} (not repaired: nothing on this medium was changed)"),
            false => d,
        };
        findings.push(Finding {
            path: args.medium.describe(),
            kind: DAMAGED_FS,
            what,
            repairable: false,
            repaired: false,
        });
    }
    if put_right {
        // Said on stdout too: "no leftovers" alone read as if nothing had been done.
        findings.insert(
            0,
            Finding {
                path: args.medium.describe(),
                kind: MID_WRITE,
                what: "its file system was left mid-write by a run that was cut off: put right \
                       as `fsck.fat -a` would (its dirty mark cleared; clusters freed, chains \
                       cut or directories mended, if any, are counted on stderr above)"
                    .into(),
                repairable: true,
                repaired: true,
            },
        );
    }
    // The scan knows only the store: the commands it advises name this medium.
    for f in &mut findings {
        f.what = f.what.replace("--medium MEDIUM", &args.medium.as_args());
    }
    medium.close()?;
    // After closing: fsck.fat reads the volume as it now is on the device.
    // A directory whose chain loops, or a file marked a directory (its bytes read as
    // entries), found above, makes `fsck.fat` loop too (until its time limit, minutes): it is
    // not run then, and says why.
    let loops = findings.iter().any(|f| {
        f.kind == DAMAGED_FS
            && (f.what.contains("loops")
                || f.what.contains("directory loop")
                || f.what.contains("marks it a directory"))
    });
    let fat = match args.medium.single_medium().map(MediumSpec::parse) {
        Some(Ok(MediumSpec::Fat(_))) if loops && crate::tools::which("fsck.fat").is_some() => {
            Some(FatCheck {
                repaired: false,
                ok: false,
                repairable: false,
                output: "not run: a directory whose cluster chain loops, or a file marked a \
                         directory (found above), makes fsck.fat loop too; `mgear verify` says \
                         which captures are whole"
                    .into(),
            })
        }
        Some(Ok(MediumSpec::Fat(path))) => fsck_fat(&path, &args.medium.describe(), repair)?,
        // The media of a span given together: each checked (it ran on none, and a damaged
        // one was "clean").
        None if !loops => {
            let mut checks = Vec::new();
            for spec in &args.medium.medium {
                if let Ok(MediumSpec::Fat(path)) = MediumSpec::parse(spec) {
                    if let Some(c) = fsck_fat(&path, spec, repair)? {
                        checks.push((spec.clone(), c));
                    }
                }
            }
            (!checks.is_empty()).then(|| FatCheck {
                ok: checks.iter().all(|(_, c)| c.ok),
                repaired: checks.iter().any(|(_, c)| c.repaired),
                repairable: checks.iter().all(|(_, c)| c.ok || c.repairable)
                    && checks.iter().any(|(_, c)| !c.ok),
                output: checks
                    .iter()
                    .map(|(spec, c)| format!("{spec}:\n{}", c.output.trim_end()))
                    .collect::<Vec<_>>()
                    .join("\n"),
            })
        }
        _ => None,
    };
    // fsck.fat reads a chain run into another file as one longer than its size, which a
    // crash also leaves: with the damage found above, its repair is not offered.
    let mut fat = fat;
    if findings.iter().any(|f| f.kind == DAMAGED_FS) {
        if let Some(c) = fat.as_mut() {
            c.repairable = false;
        }
    }
    let clean = !findings.iter().any(Finding::counts) && fat.as_ref().is_none_or(|c| c.ok);
    let report = FsckReport {
        command: "medium fsck",
        medium: args.medium.describe(),
        findings,
        fsck_fat: fat,
        clean,
    };
    if args.json && !report.clean {
        // Exit 1 with leftovers: `ok` says the same, and the next step is the findings' own
        // (the generic one, "the data did not check out: do not use it", was said of a
        // capture that only stopped and resumes).
        let counted: Vec<&Finding> = report.findings.iter().filter(|f| f.counts()).collect();
        let damaged = counted
            .iter()
            .any(|f| !f.repairable && f.kind.starts_with("damaged") && f.kind != DAMAGED_HINTS)
            || report
                .fsck_fat
                .as_ref()
                .is_some_and(|c| !c.ok && !c.repairable);
        let fat_only = counted.is_empty();
        let hint = if damaged {
            "the medium is damaged where `findings` says: never repair the original; `mgear \
             verify` says which captures are whole"
        } else if fat_only {
            "fsck.fat found only what a crash leaves (see `fsck_fat`): `mgear medium fsck \
             --repair` lets fsck.fat -a put it right"
        } else {
            "an unfinished capture resumes with the same capture command, or `mgear capture \
             --abort` removes it; `mgear medium fsck --repair` removes the leftovers marked \
             repairable"
        };
        let message = if fat_only {
            "medium fsck: fsck.fat found problems in the file system (see `fsck_fat`); no \
             leftovers or damaged files"
                .to_string()
        } else {
            format!(
                "medium fsck found {} (see `findings`{})",
                crate::units::count(counted.len() as u64, "finding"),
                if report.fsck_fat.as_ref().is_some_and(|c| !c.ok) {
                    " and `fsck_fat`"
                } else {
                    ""
                }
            )
        };
        crate::output::emit_verdict_hint(FOUND, &message, hint, &report)?;
    } else if args.json {
        crate::output::emit_ok(true, &report)?;
    } else {
        print_fsck(&report, repair);
    }
    Ok(if report.clean { OK } else { FOUND })
}

fn print_fsck(r: &FsckReport, repair: bool) {
    if !r.findings.iter().any(|f| f.kind != UNKNOWN) {
        println!(
            "{}: no leftovers (the captures' data is not read here: `mgear verify` checks it)",
            r.medium
        );
    }
    for f in &r.findings {
        let mended = f.kind == MID_WRITE || f.kind == DAMAGED_HINTS;
        let tag = if mended && f.repaired {
            "put right"
        } else if f.kind == MID_WRITE {
            "mid-write"
        } else if f.kind == DAMAGED_HINTS {
            "damaged"
        } else if f.repaired {
            "removed"
        } else if f.kind == DAMAGED_FS {
            "damaged"
        } else if f.repairable {
            "leftover"
        } else if f.kind == UNKNOWN {
            "note"
        } else if f.kind == "damaged-generation" {
            // Finished once and damaged since, kept (its JSON kind says so; "unfinished" read
            // as a capture to resume).
            "damaged"
        } else {
            // Kept on purpose (a resume or the set's capture finishes it), and not clean yet.
            "unfinished"
        };
        // Names off the medium may hold anything: shown escaped, never raw.
        println!(
            "{tag:<10} {}: {}",
            crate::output::printable(&f.path),
            crate::output::printable(&f.what)
        );
    }
    let left = r
        .findings
        .iter()
        .filter(|f| f.repairable && !f.repaired && f.kind != DAMAGED_HINTS && f.kind != MID_WRITE)
        .count();
    let to_mend = r
        .findings
        .iter()
        .any(|f| !f.repaired && (f.kind == DAMAGED_HINTS || f.kind == MID_WRITE));
    let damaged = r.findings.iter().any(|f| f.kind == DAMAGED_FS);
    if damaged {
        println!(
            "the medium is damaged (above): nothing is repaired or removed on it (a repair \
             would free what a damaged chain runs into); `mgear verify` says which captures \
             are whole"
        );
    } else if left > 0 && !repair {
        println!("{left} leftover(s) can be removed: run again with --repair");
    } else if to_mend && !repair {
        println!("the file system can be put right (above): run again with --repair");
    }
    // fsck.fat prints names off the medium as they are: control bytes escaped, line by line.
    let tool_said = crate::output::printable_lines;
    match &r.fsck_fat {
        Some(c) if c.repaired => println!(
            "fsck.fat -a repaired the FAT volume:\n{}",
            tool_said(&c.output)
        ),
        Some(c) if c.ok => println!("fsck.fat: clean"),
        Some(c) if c.output.starts_with("not run:") => println!("fsck.fat: {}", c.output),
        Some(c) => println!(
            "fsck.fat found problems{}:\n{}",
            if repair {
                ""
            } else if c.repairable {
                " (only what a crash leaves: --repair lets fsck.fat -a fix them)"
            } else {
                " (--repair will not let fsck.fat -a at them: it would cut files short; \
                 `mgear verify` says which captures are whole)"
            },
            tool_said(&c.output)
        ),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image_format::store::MemStore;

    /// A FAT medium finds `MaNIFEST` as the MANIFEST: fsck called it "not part of the format"
    /// beside an inspect, verify and ingest that read it.
    #[test]
    fn a_format_file_in_another_case_is_known() {
        for name in ["MANIFEST", "MaNIFEST", "commit", "Seg-00003", "JRNL-a"] {
            assert!(known_generation_file(name), "{name}");
        }
        for name in ["NOTES.TXT", "MANIFEST2", "SEG-0000"] {
            assert!(!known_generation_file(name), "{name}");
        }
    }

    /// `fsck.fat 4.2 -n` outputs: what a crash leaves is left to `-a`, anything else is not.
    #[test]
    fn fsck_fat_findings_a_repair_would_cut_files_with_are_told_apart() {
        let crash = "fsck.fat 4.2 (2021-01-31)\n/MGEAR/WEB01/G0001/SEG-00000\n  File size is 6 \
                     bytes, cluster chain length is > 512 bytes.\n  Truncating file to 6 \
                     bytes.\nReclaimed 1 unused cluster (512 bytes).\nFree cluster summary \
                     wrong (10 vs. really 9)\nDirty bit is set. Fs was not properly unmounted \
                     and some data may be corrupt.\n Automatically removing dirty bit.\n\n\
                     Leaving filesystem unchanged.\nm.img: 3 files, 3/129046 clusters";
        assert_eq!(harmful_fsck_findings(crash), Vec::<String>::new());
        // Killed, then aborted: the dirty flag differs from the backup boot sector's.
        let aborted = "fsck.fat 4.2 (2021-01-31)\nThere are differences between boot sector \
                       and its backup.\nThis is mostly harmless. Differences: \
                       (offset:original/backup)\n  65:01/00\n  Not automatically fixing \
                       this.\nDirty bit is set. Fs was not properly unmounted and some data \
                       may be corrupt.\n Automatically removing dirty bit.\nFree cluster \
                       summary wrong (129045 vs. really 129044)\n  Auto-correcting.\n\n\
                       Leaving filesystem unchanged.\nm6.img: 2 files, 2/129046 clusters";
        assert_eq!(harmful_fsck_findings(aborted), Vec::<String>::new());
        // The same with the medium named by an absolute path: its summary line starts with
        // '/', as a file's finding does, and was told as damage.
        let absolute = aborted.replace("\nm6.img: 2 files", "\n/srv/media/m6.img: 2 files");
        assert_ne!(absolute, aborted);
        assert_eq!(harmful_fsck_findings(&absolute), Vec::<String>::new());
        let boot = aborted.replace("  65:01/00", "  65:01/00\n  0:eb/00");
        let found = harmful_fsck_findings(&boot);
        assert!(
            found.len() == 1 && found[0].contains("0:eb/00"),
            "{found:?}"
        );
        let damage = "fsck.fat 4.2 (2021-01-31)\nCluster 2 out of range (268435439 > 129047). \
                      Setting to EOF.\n/D/F.TXT\n  File size is 9000 bytes, cluster chain \
                      length is 512 bytes.\n  Truncating file to 512 bytes.\nReclaimed 1 \
                      unused cluster (512 bytes).";
        let found = harmful_fsck_findings(damage);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("Cluster 2 out of range"), "{found:?}");
        assert!(
            found[1].starts_with("/D/F.TXT\n  File size is 9000"),
            "{found:?}"
        );
    }

    fn info(g: u32, parent: Option<u32>, done: bool) -> GenerationInfo {
        let state = if done {
            GenerationState::Complete
        } else {
            GenerationState::Unfinished { next_chunk: 0 }
        };
        GenerationInfo {
            parent,
            ..GenerationInfo::blank(g, state)
        }
    }

    #[test]
    fn dependents_follow_the_parent_chain() {
        // 1 full, 2 delta on 1, 3 delta on 2, 4 full, 5 delta on 4.
        let g = vec![
            info(1, None, true),
            info(2, Some(1), true),
            info(3, Some(2), false),
            info(4, None, true),
            info(5, Some(4), true),
        ];
        assert_eq!(dependents(&g, 1), vec![2, 3]);
        assert_eq!(dependents(&g, 2), vec![3]);
        assert_eq!(dependents(&g, 3), Vec::<u32>::new());
        assert_eq!(dependents(&g, 4), vec![5]);
        // A damaged loop ends.
        let looped = vec![info(1, Some(2), true), info(2, Some(1), true)];
        assert!(dependents(&looped, 3).is_empty());
    }

    #[test]
    fn abort_removes_only_the_newest_generation_and_fsck_keeps_one_built_on() {
        let mut s = MemStore::new();
        // G0001 lost everything (a later generation proves it was
        // finished); G0002 is a start that never reached a checkpoint.
        s.create_dir_all("MGEAR/web01/G0001").unwrap();
        s.write_at("MGEAR/web01/G0001/SEG-00000", 0, b"x").unwrap();
        s.create_dir_all("MGEAR/web01/G0002").unwrap();
        let f = scan(&mut s).unwrap();
        let g1 = f.iter().find(|x| x.path == "MGEAR/web01/G0001").unwrap();
        assert!(!g1.repairable && g1.what.contains("damaged"), "{g1:?}");
        let plan = abort(&mut s, "web01").unwrap();
        assert_eq!(plan.remove, vec![2]);
        assert_eq!(s.len("MGEAR/web01/G0001/SEG-00000").unwrap(), Some(1));
        // Now G0001 is the newest: with nothing saying it ever finished,
        // it is an interrupted start, and the capture goes with it.
        let plan = abort(&mut s, "web01").unwrap();
        assert!(plan.whole && plan.remove == vec![1], "{plan:?}");
        // A capture directory without any generation goes whole.
        s.create_dir_all("MGEAR/b").unwrap();
        let plan = abort(&mut s, "b").unwrap();
        assert!(plan.whole && plan.remove.is_empty(), "{plan:?}");
        assert!(image_format::list_captures(&mut s).unwrap().is_empty());
    }

    #[test]
    fn scan_and_repair_remove_only_what_nothing_can_use() {
        let mut s = MemStore::new();
        // A generation directory with nothing durable, a stray TMP file and
        // a capture directory holding no generation.
        s.create_dir_all("MGEAR/web01/G0001").unwrap();
        s.write_at("MGEAR/web01/G0001/SEG-00000", 0, b"x").unwrap();
        s.write_at("MGEAR/web01/KEYS.TMP", 0, b"x").unwrap();
        s.create_dir_all("MGEAR/db02").unwrap();
        let mut f = scan(&mut s).unwrap();
        let kinds: Vec<&str> = f.iter().map(|x| x.kind).collect();
        assert_eq!(
            kinds,
            ["empty-capture", "temporary-file", "damaged-generation"],
            "{f:?}"
        );
        assert!(f.iter().all(|x| x.repairable));
        f = scan_and_repair(&mut s).unwrap();
        assert!(f.iter().all(|x| x.repaired), "{f:?}");
        // web01's only generation was damaged: its directory went on the second pass.
        assert_eq!(f.len(), 4, "{f:?}");
        assert!(scan(&mut s).unwrap().is_empty());
        assert!(image_format::list_captures(&mut s).unwrap().is_empty());
    }

    /// Junk put on the medium by hand is named wherever it sits, left alone by `--repair`,
    /// and does not make the medium unclean; a leftover beside it still does.
    #[test]
    fn junk_is_named_everywhere_and_left_alone() {
        let mut s = MemStore::new();
        s.create_dir_all("MGEAR/web01/G0001").unwrap();
        s.write_at("MGEAR/web01/KEYS", 0, b"k").unwrap();
        s.write_at("MGEAR/notes.txt", 0, b"x").unwrap();
        s.create_dir_all("MGEAR/no such name").unwrap();
        s.create_dir_all("MGEAR/ATTEST").unwrap();
        s.create_dir_all("MGEAR/web01/old").unwrap();
        // A damaged generation's directory goes whole, junk and all.
        s.write_at("MGEAR/web01/G0001/extra.bin", 0, b"x").unwrap();
        let f = scan_and_repair(&mut s).unwrap();
        let notes: Vec<&str> = f
            .iter()
            .filter(|x| x.kind == UNKNOWN)
            .map(|x| x.path.as_str())
            .collect();
        assert_eq!(
            notes,
            ["MGEAR/no such name", "MGEAR/notes.txt", "MGEAR/web01/old",],
            "{f:?}"
        );
        assert!(f.iter().all(|x| x.kind != UNKNOWN || !x.repaired));
        // The damaged generation went; the capture, which holds a directory that is not
        // the format's, stays (told, and unclean), and so does the junk.
        assert_eq!(s.len("MGEAR/web01/G0001/extra.bin").unwrap(), None);
        assert_eq!(s.len("MGEAR/notes.txt").unwrap(), Some(1));
        let left = scan(&mut s).unwrap();
        let kept = left
            .iter()
            .find(|x| x.path == "MGEAR/web01")
            .expect("named");
        assert!(
            kept.what.contains("holds other files too") && kept.counts(),
            "{left:?}"
        );
        s.remove_dir("MGEAR/web01/old").unwrap();
        scan_and_repair(&mut s).unwrap();
        assert!(image_format::list_captures(&mut s).unwrap().is_empty());
        let left = scan(&mut s).unwrap();
        assert!(left.iter().all(|x| x.kind == UNKNOWN), "{left:?}");
        assert!(!left.iter().any(Finding::counts));
        // Someone's directory under MGEAR/ with a capture's kind of name: not "a capture
        // with no generation" to remove (--repair deleted it and what it held).
        s.create_dir_all("MGEAR/backup").unwrap();
        s.write_at("MGEAR/backup/data.txt", 0, b"precious").unwrap();
        let f = scan_and_repair(&mut s).unwrap();
        assert!(f.iter().all(|x| !x.repaired), "{f:?}");
        assert!(!f.iter().any(Finding::counts), "{f:?}");
        assert_eq!(s.len("MGEAR/backup/data.txt").unwrap(), Some(8));
        // `medium rm` of it is refused (it deleted it, files and all, as "what a capture
        // stopped at its start left")...
        let e = plan_rm(&mut s, "backup", None, true).unwrap_err();
        assert!(
            e.to_string().contains("MGEAR/backup is not a capture"),
            "{e}"
        );
        assert_eq!(s.len("MGEAR/backup/data.txt").unwrap(), Some(8));
        // ...and a capture holding someone's file loses its own files only.
        s.create_dir_all("MGEAR/web03/G0001").unwrap();
        s.write_at("MGEAR/web03/KEYS", 0, b"k").unwrap();
        s.write_at("MGEAR/web03/G0001/SEG-00000", 0, b"x").unwrap();
        s.write_at("MGEAR/web03/notes.txt", 0, b"mine").unwrap();
        // A file of someone's inside a generation: refused, nothing removed.
        s.write_at("MGEAR/web03/G0001/my.txt", 0, b"mine").unwrap();
        let e = plan_rm(&mut s, "web03", None, true).unwrap_err();
        assert!(
            e.to_string()
                .contains("MGEAR/web03/G0001 also holds my.txt, which is not part of the format"),
            "{e}"
        );
        s.remove_file("MGEAR/web03/G0001/my.txt").unwrap();
        let plan = plan_rm(&mut s, "web03", None, true).unwrap();
        assert!(plan.whole);
        execute(&mut s, &plan).unwrap();
        assert_eq!(s.len("MGEAR/web03/KEYS").unwrap(), None);
        assert_eq!(s.len("MGEAR/web03/G0001/SEG-00000").unwrap(), None);
        assert_eq!(s.len("MGEAR/web03/notes.txt").unwrap(), Some(4));
        // A leftover beside the junk still counts.
        s.create_dir_all("MGEAR/web02").unwrap();
        let f = scan(&mut s).unwrap();
        assert!(f.iter().any(Finding::counts), "{f:?}");
    }
}
