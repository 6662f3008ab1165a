//! The keyless verifier (runs in the appliance firmware: `no_std`, one
//! reusable buffer, no allocation per record), the capture listing and the
//! digest list the appliance signs at seal.
//!
//! Without any key it checks everything that can be checked: manifest CRC
//! and root hash, INDEX hash, every segment's header, each record's framing,
//! header CRC, sequence number and stored-bytes hash, and the segment
//! trailer. The keyed checks (MAC, AEAD, chunk ids) are in `verify_full`.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::commit;
use crate::error::{Error, Location, Result, StoreCtx};
use crate::layout::{
    self, IndexHeader, RecordHeader, SegmentDigest, SegmentHeader, SegmentTrailer, INDEX_FILE,
    INDEX_HEADER_LEN, JOURNAL_A, JOURNAL_B, KEYPASS_FILE, KEYS_FILE, MANIFEST_FILE, REC_HEADER_LEN,
    SEG_HEADER_LEN, TRAILER_LEN, TRAILER_MAGIC,
};
use crate::medium;
use crate::set;
use crate::span;
use crate::store::{EntryKind, Store, StoreError};

/// One thing found wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub at: Location,
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.what)
    }
}

/// What a verification looked at and what it found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub captures: u32,
    pub generations: u32,
    pub segments: u32,
    pub records: u64,
    /// Bytes read and checked.
    pub bytes: u64,
    pub problems: Vec<Problem>,
    /// Segments the manifests list that are not on this medium because the
    /// capture spans several media (`crate::span`) and they live on another.
    pub elsewhere: Vec<Elsewhere>,
}

/// A segment that lives on another medium of the span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elsewhere {
    /// Its path (the same on every medium).
    pub path: String,
    /// Ordinal of the medium holding it.
    pub ordinal: u16,
    /// "medium #1 (fat:/dev/sdc)".
    pub medium: String,
    /// That medium was declared lost (`capture --replace-medium`): the segment is gone for
    /// good, and its generation cannot be ingested (a newer one holds its data again).
    pub lost: bool,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    pub(crate) fn problem(
        &mut self,
        obs: &mut dyn VerifyObserver,
        at: Location,
        what: impl Into<String>,
    ) {
        let p = Problem {
            at,
            what: what.into(),
        };
        obs.problem(&p);
        self.problems.push(p);
    }
}

/// Progress callbacks during a verification.
pub trait VerifyObserver {
    /// `done` of `total` bytes checked so far.
    fn progress(&mut self, _done: u64, _total: u64) {}
    /// Called as each problem is found (it also lands in the report).
    fn problem(&mut self, _problem: &Problem) {}
}

/// An observer that ignores everything.
pub struct NoProgress;
impl VerifyObserver for NoProgress {}

const BUF_LEN: usize = 256 * 1024;

struct Ctx<'a> {
    report: VerifyReport,
    obs: &'a mut dyn VerifyObserver,
    total: u64,
    buf: Vec<u8>,
    /// The span this medium belongs to, if any: segments on other media
    /// are not missing.
    span: Option<span::SpanInfo>,
    /// Read and hash every record of every segment (false: the medium's
    /// structure only, see [`verify_structure`]).
    records: bool,
}

/// The span a medium belongs to; a damaged label or map is a problem to
/// report (the data is still checked: the manifests do not depend on it).
fn span_of<S: Store + ?Sized>(store: &mut S, cx: &mut Ctx<'_>) -> Result<()> {
    match span::read_span(store) {
        Ok(s) => {
            let labels = store.span().map(|v| v.damaged_labels()).unwrap_or_default();
            for (name, why) in labels {
                cx.problem(
                    Location::default().file(span::SPAN_FILE),
                    alloc::format!(
                        "{name}: the span label is damaged ({why}): this medium cannot be placed \
                         in its span (its own files are checked; segments on the others are not \
                         known here)"
                    ),
                );
            }
            let moved = store.span().map(|v| v.relabelled()).unwrap_or_default();
            for (name, said, holds) in moved {
                cx.problem(
                    Location::default().file(span::SPAN_FILE),
                    alloc::format!(
                        "{name}: its span label says it is medium #{said}, but it holds the \
                         segments the span map places on medium #{holds} (read as #{holds}): \
                         its label was changed since the capture (swapped with another \
                         medium's?); the data is checked by the manifests, but ask how the \
                         medium was handled"
                    ),
                );
            }
            // Each attached medium's own copy (a span store reads one of them).
            let copies = store.span().map(|v| v.damaged_maps()).unwrap_or_default();
            for (o, why) in &copies {
                cx.problem(
                    Location::default().file(span::SPANMAP_FILE),
                    alloc::format!(
                        "the span map's copy on medium #{o} is damaged ({why}): the other media's \
                         copies serve; the data does not depend on it"
                    ),
                );
            }
            if let (Some(why), true) = (
                s.as_ref().and_then(|s| s.map_damage.clone()),
                copies.is_empty(),
            ) {
                cx.problem(
                    Location::default().file(span::SPANMAP_FILE),
                    alloc::format!(
                        "the span map is damaged ({why}): the copy on another medium of the span \
                         serves (give it too); the data does not depend on it"
                    ),
                );
            }
            // A medium read alone that holds the span's map but no label: the label was
            // removed (or never written); keyless verify said OK and the media together
            // were refused at the target.
            if let Some(info) = s
                .as_ref()
                .filter(|i| i.label.is_none() && i.label_damage.is_none() && store.span().is_none())
            {
                if !info.map.members.is_empty() {
                    cx.problem(
                        Location::default().file(span::SPAN_FILE),
                        "this medium holds a span map (MGEAR/SPANMAP) but no span label \
                         (MGEAR/SPAN): it cannot be placed among the other media of its span \
                         (its own files are checked; give it on its own to ingest what it holds)",
                    );
                }
            }
            cx.span = s;
            // Through several media the union keeps the longest map.
            if let (Some(info), Some(view)) = (cx.span.as_mut(), store.span()) {
                if info.map_damage.is_some() {
                    info.map = view.map().clone();
                }
                info.attached = view.attached();
            }
        }
        Err(Error::Corrupt { at, what }) => cx.problem(*at, what),
        Err(e) => return Err(e),
    }
    Ok(())
}

impl Ctx<'_> {
    fn advance(&mut self, n: u64) {
        self.report.bytes += n;
        self.obs.progress(self.report.bytes, self.total);
    }
    fn problem(&mut self, at: Location, what: impl Into<String>) {
        self.report.problem(self.obs, at, what);
    }
    fn problem_count(&self) -> usize {
        self.report.problems.len()
    }
}

/// The problems the keyless verifier finds on `store`, as text (tests).
#[cfg(test)]
pub(crate) fn keyless_problems<S: Store + ?Sized>(store: &mut S) -> Vec<String> {
    use alloc::string::ToString as _;
    verify_keyless(store, &mut crate::NoProgress)
        .expect("the keyless verifier runs")
        .problems
        .iter()
        .map(|p| p.to_string())
        .collect()
}

/// Asserts that one problem the keyless verifier finds on `store` names
/// every one of `needles` (tests).
#[cfg(test)]
#[track_caller]
pub(crate) fn assert_keyless_problem<S: Store + ?Sized>(store: &mut S, needles: &[&str]) {
    let problems = keyless_problems(store);
    assert!(
        problems
            .iter()
            .any(|p| needles.iter().all(|n| p.contains(n))),
        "no problem names all of {needles:?}: {problems:?}"
    );
}

/// Verifies every capture on the medium without any key.
pub fn verify_keyless<S: Store + ?Sized>(
    store: &mut S,
    obs: &mut dyn VerifyObserver,
) -> Result<VerifyReport> {
    verify_medium(store, None, obs, true)
}

/// Every check of the keyless verifier except reading the segments'
/// records: capture names, key slot files, span label, set manifests and
/// their binding, every generation's MANIFEST, INDEX, COMMIT and list of
/// segments, and disk streams no set binds; of one capture (`name`, a set
/// with its disk streams) or of the whole medium.
///
/// Why: a keyed verify decrypts (and so checks) the records of the
/// generation it verifies, but must still report what the keyless verifier
/// reports about the rest of the medium (a set generation without its SET,
/// a damaged COMMIT of an older generation), without reading every byte
/// twice.
pub fn verify_structure<S: Store + ?Sized>(
    store: &mut S,
    name: Option<&str>,
) -> Result<VerifyReport> {
    verify_medium(store, name, &mut crate::NoProgress, false)
}

fn verify_medium<S: Store + ?Sized>(
    store: &mut S,
    only: Option<&str>,
    obs: &mut dyn VerifyObserver,
    records: bool,
) -> Result<VerifyReport> {
    if let Some(name) = only {
        return capture_keyless(store, name, obs, records);
    }
    let names = medium::capture_names(store)?;
    let mut total = 0;
    for n in &names {
        match tree_len(store, &layout::capture_dir(n)) {
            Ok(len) => total += len,
            // Reported when that capture is checked below.
            Err(e) if e.is_damage() => {}
            Err(e) => return Err(e),
        }
    }
    let mut cx = Ctx {
        report: VerifyReport::default(),
        obs,
        total,
        buf: alloc::vec![0u8; BUF_LEN],
        span: None,
        records,
    };
    span_of(store, &mut cx)?;
    for what in store.file_system_findings().at(layout::ROOT_DIR)? {
        cx.problem(Location::default().file(layout::ROOT_DIR), what);
    }
    if let Some(what) = medium::damaged_root_dir(store) {
        cx.problem(Location::default().file(layout::ROOT_DIR), what);
    }
    for e in medium::list_or_empty(store, layout::ROOT_DIR)? {
        if e.kind == EntryKind::Dir
            && layout::validate_name(&e.name).is_err()
            && !e.name.eq_ignore_ascii_case(layout::ATTEST_NAME)
        {
            cx.problem(
                Location::capture(&e.name).file(&alloc::format!("{}/{}", layout::ROOT_DIR, e.name)),
                "unexpected directory: not a valid capture name",
            );
        }
    }
    for (i, n) in names.iter().enumerate() {
        let same: Vec<String> = names
            .iter()
            .filter(|m| m.eq_ignore_ascii_case(n))
            .cloned()
            .collect();
        // Reported once, at the first of the clashing names.
        if same.len() > 1 && names[..i].iter().all(|m| !m.eq_ignore_ascii_case(n)) {
            cx.problem(
                Location::capture(n).file(layout::ROOT_DIR),
                name_clash(&same),
            );
        }
        let checked = match set::is_set(store, n) {
            Ok(true) => verify_set_into(store, n, &mut cx),
            Ok(false) if not_a_capture(store, n)? => Ok(()),
            Ok(false) => verify_capture_into(store, n, &mut cx),
            Err(e) => Err(e),
        };
        damaged_is_a_problem(checked, n, &mut cx)?;
    }
    verify_unbound_streams(store, &names, &mut cx)?;
    Ok(cx.report)
}

/// A directory under `MGEAR/` holding only someone's own files (a folder of photos): no key
/// slot, no generation, nothing a writer makes. It is no capture (`mgear medium fsck` leaves
/// it as is); verify called it one "nothing can ever decrypt", as a crypto-erase leaves.
fn not_a_capture<S: Store + ?Sized>(store: &mut S, name: &str) -> Result<bool> {
    let entries = medium::list_or_empty(store, &layout::capture_dir(name))?;
    Ok(!entries.is_empty()
        && entries.iter().all(|e| match e.kind {
            EntryKind::File => {
                ![KEYS_FILE, KEYPASS_FILE].contains(&e.name.as_str()) && !e.name.ends_with(".TMP")
            }
            EntryKind::Dir => layout::parse_generation_dir(&e.name).is_none(),
        }))
}

/// A capture whose files lie where the file system is damaged (a FAT chain cut short, looping
/// or out of the volume) is a problem of that capture, and the others are still checked;
/// any other failure (the medium stopped answering) ends the check.
fn damaged_is_a_problem(checked: Result<()>, name: &str, cx: &mut Ctx<'_>) -> Result<()> {
    match checked {
        Err(Error::Store {
            path,
            error: StoreError::Damaged(what),
        }) => {
            cx.problem(Location::capture(name).file(&path), what);
            Ok(())
        }
        other => other,
    }
}

/// A machine set (`crate::set`) without any key: every generation's set
/// manifest decodes, binds exactly the disk streams it lists, and its
/// COMMIT (when present) matches and verifies. The streams themselves are
/// verified as the captures they are.
fn verify_set_into<S: Store + ?Sized>(store: &mut S, name: &str, cx: &mut Ctx<'_>) -> Result<()> {
    for g in medium::generations(store, name)? {
        let at = Location::capture(name).generation(g);
        match set::read_set(store, name, g) {
            Ok(Some(f)) => {
                for (at, what) in set::check_set(store, &f)? {
                    cx.problem(at, what);
                }
                verify_commit(store, name, g, None, &mut *cx)?;
            }
            Ok(None) => {
                let commit = alloc::format!(
                    "{}/{}",
                    layout::generation_dir(name, g),
                    crate::commit::COMMIT_FILE
                );
                if store.len(&commit).at(&commit)?.is_some() {
                    cx.problem(
                        at,
                        "set manifest (SET) missing although the set was finished (its COMMIT is \
                         written): its disks are no longer bound as one machine; ingest from \
                         another copy of the shipment (every medium of a span holds a copy), or \
                         capture again",
                    )
                } else {
                    cx.problem(
                        at,
                        "set generation without a set manifest (SET): re-run the set capture to \
                         finish it",
                    )
                }
            }
            Err(Error::Corrupt { at, what }) => cx.problem(*at, what),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Finished generations of disk streams that no set manifest binds: a set
/// capture that stopped before writing its SET (re-running it finishes it).
fn verify_unbound_streams<S: Store + ?Sized>(
    store: &mut S,
    names: &[String],
    cx: &mut Ctx<'_>,
) -> Result<()> {
    for n in names {
        let Some((set_name, _)) = set::parse_disk_stream_name(n) else {
            continue;
        };
        // A stream whose directories (or its set's) are damaged was reported when they were
        // checked: the other captures are still checked (this stopped the whole verify).
        let gens = match medium::generations(store, n) {
            Err(e) if e.is_damage() => continue,
            other => other?,
        };
        for g in gens {
            let finished = store
                .len(&layout::generation_file(n, g, MANIFEST_FILE))
                .at(n)?
                .is_some();
            let set_path = set::set_path(set_name, g);
            let bound = match store.len(&set_path).at(&set_path) {
                Err(e) if e.is_damage() => continue,
                other => other?.is_some(),
            };
            if finished && !bound {
                let commit = alloc::format!(
                    "{}/{}",
                    layout::generation_dir(set_name, g),
                    crate::commit::COMMIT_FILE
                );
                // The set's COMMIT without its SET: finished once, the SET lost since (re-running
                // the capture is no way on).
                let why = if store.len(&commit).at(&commit)?.is_some() {
                    "the set was finished and its SET lost since (see capture {set_name})"
                } else {
                    "the set capture did not finish; re-run it"
                };
                let why = why.replace("{set_name}", set_name);
                cx.problem(
                    Location::capture(n).generation(g),
                    alloc::format!(
                        "disk stream of set {set_name}: generation {g} is not bound by a set \
                         manifest (MGEAR/{set_name}/G{g:04}/SET is missing): {why}"
                    ),
                );
            }
        }
    }
    Ok(())
}

/// Verifies one capture (all its generations) without any key.
pub fn verify_capture_keyless<S: Store + ?Sized>(
    store: &mut S,
    name: &str,
    obs: &mut dyn VerifyObserver,
) -> Result<VerifyReport> {
    capture_keyless(store, name, obs, true)
}

fn capture_keyless<S: Store + ?Sized>(
    store: &mut S,
    name: &str,
    obs: &mut dyn VerifyObserver,
    records: bool,
) -> Result<VerifyReport> {
    let name = &stored_name(store, name)?;
    if medium::generations(store, name)?.is_empty() {
        return Err(Error::NoCapture { name: name.into() });
    }
    // A set is verified with every disk stream it has.
    let mut names = alloc::vec![String::from(name)];
    let is_set = set::is_set(store, name)?;
    if is_set {
        for n in medium::capture_names(store)? {
            if set::parse_disk_stream_name(&n).is_some_and(|(s, _)| s == name) {
                names.push(n);
            }
        }
    }
    let mut total = 0;
    for n in &names {
        total += tree_len(store, &layout::capture_dir(n))?;
    }
    let mut cx = Ctx {
        report: VerifyReport::default(),
        obs,
        total,
        buf: alloc::vec![0u8; BUF_LEN],
        span: None,
        records,
    };
    span_of(store, &mut cx)?;
    if is_set {
        let checked = verify_set_into(store, name, &mut cx);
        damaged_is_a_problem(checked, name, &mut cx)?;
        for n in &names[1..] {
            let checked = verify_capture_into(store, n, &mut cx);
            damaged_is_a_problem(checked, n, &mut cx)?;
        }
        verify_unbound_streams(store, &names, &mut cx)?;
    } else {
        let checked = verify_capture_into(store, name, &mut cx);
        damaged_is_a_problem(checked, name, &mut cx)?;
    }
    Ok(cx.report)
}

fn tree_len<S: Store + ?Sized>(store: &mut S, dir: &str) -> Result<u64> {
    let mut sum = 0u64;
    for e in medium::list_or_empty(store, dir)? {
        match e.kind {
            EntryKind::File => sum = sum.saturating_add(e.len),
            EntryKind::Dir => {
                if layout::parse_generation_dir(&e.name).is_some() {
                    sum = sum.saturating_add(tree_len(store, &alloc::format!("{dir}/{}", e.name))?);
                }
            }
        }
    }
    Ok(sum)
}

fn verify_capture_into<S: Store + ?Sized>(
    store: &mut S,
    name: &str,
    cx: &mut Ctx<'_>,
) -> Result<()> {
    cx.report.captures += 1;
    let dir = layout::capture_dir(name);
    let cap = Location::capture(name);
    let mut slots = 0;
    for slot in [KEYS_FILE, KEYPASS_FILE] {
        let path = alloc::format!("{dir}/{slot}");
        let mut head = [0u8; 21];
        match store.len(&path).at(&path)? {
            None => continue,
            Some(len) if len < head.len() as u64 => {
                cx.problem(cap.clone().file(&path), "key slot file is truncated");
            }
            Some(_) => {
                store.read_exact_at(&path, 0, &mut head).at(&path)?;
                if &head != b"age-encryption.org/v1" {
                    cx.problem(cap.clone().file(&path), "key slot file is not an age file");
                }
            }
        }
        slots += 1;
    }
    if slots == 0 {
        cx.problem(
            cap.clone(),
            "no key slot (KEYS or KEYPASS): nothing can ever decrypt this capture (as a \
             crypto-erase or a PIN lockout of the appliance leaves it: `mgear appliance info` \
             says)",
        );
    }
    for stray in medium::stray_generation_dirs(store, name)? {
        cx.problem(
            cap.clone().file(&alloc::format!("{dir}/{stray}")),
            "unexpected directory: not a generation (G0001, G0002, ...); a generation renamed \
             away is invisible to every reader",
        );
    }
    let gens = medium::generations(store, name)?;
    let slots_now = slots_on_medium(store, name)?;
    let matching = generations_recording(store, name, &gens, &slots_now)?;
    let mut newest = None;
    for &g in &gens {
        cx.report.generations += 1;
        let at = cap.clone().generation(g);
        let m = match medium::read_manifest(store, name, g) {
            Ok(Some(f)) => {
                newest = Some(g);
                f.manifest
            }
            Ok(None) => {
                if let Some(why) = finished_evidence(store, name, g, &gens)? {
                    cx.problem(
                        at,
                        alloc::format!(
                            "damaged generation: its MANIFEST is missing although it was finished \
                             ({why}), so its data cannot be read; do not abort or remove it (later \
                             generations may need its records): ingest from another copy of the \
                             shipment, or capture again"
                        ),
                    );
                    continue;
                }
                // No journal either: nothing a resume could continue (what fsck calls a
                // leftover), so resuming is no advice; unless its directory reads as garbage,
                // which no interrupted start leaves.
                if !matches!(medium::read_journal(store, name, g), Ok(Some(_))) {
                    if let Some(why) = garbled_entries(store, &layout::generation_dir(name, g))? {
                        cx.problem(at, alloc::format!("damaged generation: {why}"));
                        continue;
                    }
                    // Entries lost on a medium closed cleanly: its files may be among the
                    // clusters nothing holds, and removing it (what a leftover's advice says)
                    // contradicted the finding beside it.
                    if store.lost_clusters().ok().flatten().is_some() {
                        cx.problem(
                            at,
                            "generation with no MANIFEST and no valid journal, on a medium whose \
                             file system lost entries since (the clusters no file holds, \
                             reported here too): its files may be among them, so it may have \
                             been finished; do not remove it or write the medium",
                        );
                        continue;
                    }
                    cx.problem(
                        at,
                        "unfinished generation cut off at its start (no MANIFEST, no valid \
                         journal): nothing in it can be read or resumed; the same capture command \
                         run again starts it over, or `mgear medium fsck --medium MEDIUM \
                         --repair` removes it",
                    );
                    continue;
                }
                cx.problem(
                    at,
                    alloc::format!(
                        "unfinished generation (no MANIFEST): at the capture site, resume the \
                         capture with the same parameters, or remove it with `mgear capture \
                         --abort --medium MEDIUM --name {}` (`--appliance PORT` for an \
                         appliance's medium; `mgear medium fsck` lists every leftover); at the \
                         target, a medium that arrived so was shipped unfinished or changed in \
                         transit: keep it as it is and ask the capture site",
                        set::owner(name)
                    ),
                );
                continue;
            }
            Err(Error::Corrupt { at, what }) => {
                cx.problem(*at, what);
                continue;
            }
            Err(e) => return Err(e),
        };
        if m.parent != 0 && !gens.contains(&m.parent) {
            cx.problem(
                at.clone(),
                alloc::format!("delta parent generation {} is missing", m.parent),
            );
        }
        // Slots that differ from the MANIFEST's record are reported once, here; the COMMIT
        // is then checked against that record (it binds the same digests), not against the
        // slots on the medium, which would report the same change a second time.
        let slots_changed = m.incompat & layout::INCOMPAT_KEY_SLOTS != 0
            && check_key_slots(store, name, g, &m.key_slots, &matching, cx)?;
        verify_index(store, name, &m, cx)?;
        for (at, what) in crate::peers::check_peers(store, name, &m)? {
            cx.problem(at, what);
        }
        verify_commit(
            store,
            name,
            g,
            slots_changed.then_some(&m.key_slots),
            &mut *cx,
        )?;
        let records = cx.records;
        for (s, d) in m.segments.iter().enumerate().filter(|_| records) {
            verify_segment(store, name, g, s as u32, &m.capture_id, m.incompat, d, cx)?;
        }
        let entries = medium::list_or_empty(store, &layout::generation_dir(name, g))?;
        for e in &entries {
            if let Some(s) = layout::parse_segment_name(&e.name) {
                if s as usize >= m.segments.len() {
                    let path = layout::segment_path(name, g, s);
                    cx.problem(
                        at.clone().file(&path),
                        "segment not listed in the manifest (left over or replayed)",
                    );
                }
            }
        }
        for (file, lacks) in damaged_names(&entries) {
            let path = layout::generation_file(name, g, &file);
            cx.problem(
                at.clone().file(&path),
                alloc::format!(
                    "a file the format does not know, its name a character or two from \
                     {lacks}, which this generation lacks: {lacks}'s directory entry has a \
                     damaged name (a reader no longer finds it: a COMMIT so hidden reads as a \
                     capture never signed)"
                ),
            );
        }
    }
    if let Some(g) = newest {
        newest_on_lost_medium(name, g, cx);
    }
    Ok(())
}

/// Files of a generation directory (`entries`) whose names are not the format's but differ
/// in one or two characters from a file the format names that the directory lacks: that
/// file under a damaged name. Each with the name it should have.
fn damaged_names(entries: &[crate::store::Entry]) -> Vec<(String, &'static str)> {
    const KNOWN: [&str; 7] = [
        MANIFEST_FILE,
        INDEX_FILE,
        layout::IPART_FILE,
        JOURNAL_A,
        JOURNAL_B,
        commit::COMMIT_FILE,
        set::SET_FILE,
    ];
    let has = |k: &str| entries.iter().any(|e| e.name.eq_ignore_ascii_case(k));
    entries
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .filter(|e| !KNOWN.iter().any(|k| e.name.eq_ignore_ascii_case(k)))
        .filter(|e| layout::parse_segment_name(&e.name).is_none())
        .filter_map(|e| {
            KNOWN
                .iter()
                .find(|k| k.len() > 3 && !has(k) && medium::replaced_at_most_two(&e.name, k))
                .map(|k| (e.name.clone(), *k))
        })
        .collect()
}

/// The newest finished generation of `name` with a segment on a medium declared lost: gone
/// for good, so the capture cannot be ingested at all (older generations so are what a
/// `--replace-medium` capture leaves, its newer generation holding their data again; with
/// that one removed, verify said OK of a shipment ingest refused).
fn newest_on_lost_medium(name: &str, g: u32, cx: &mut Ctx<'_>) {
    let dir = alloc::format!("{}/", layout::generation_dir(name, g));
    let lost: Vec<&Elsewhere> = cx
        .report
        .elsewhere
        .iter()
        .filter(|e| e.lost && e.path.starts_with(&dir))
        .collect();
    let Some(first) = lost.first() else {
        return;
    };
    let what = alloc::format!(
        "generation {g}, the newest of {name}, cannot be ingested: {} of its segments {} on \
         {}, gone for good, and no newer generation holds their data again \
         (the one a `--replace-medium` capture wrote is not on these media). At the capture \
         site, capture {} again with `--replace-medium` naming the lost medium, onto these \
         media",
        lost.len(),
        if lost.len() == 1 { "was" } else { "were" },
        first.medium,
        set::owner(name)
    );
    cx.problem(Location::capture(name).generation(g), what);
}

/// What [`capture_info`] says of a generation with neither MANIFEST nor journal on a medium
/// whose file system lost entries since it was closed cleanly ([`Store::lost_clusters`]).
pub const LOST_ENTRIES: &str = "no MANIFEST and no valid journal, on a medium whose file \
     system lost entries since it was closed (clusters no file holds): its files may be among \
     them, so it may have been finished; do not remove it or write the medium";

/// What [`list_captures`] says of a generation directory with neither MANIFEST nor
/// journal and no sign it was ever finished: a capture cut off at its very start, not
/// damaged data (no reader could use anything in it).
pub const CUT_OFF_AT_START: &str = "cut off at its start (no MANIFEST, no valid journal): \
     nothing in it to read or resume; the same capture command starts it over, and `mgear \
     medium fsck --repair` removes it";

/// A generation's COMMIT, when it has one (older captures have none, which
/// is not a problem here: whether a signature is required is the target's
/// policy): framing, match with the manifest and key slots, signatures.
/// The key slots are what generation `g`'s MANIFEST recorded when it was finished
/// ([`layout::INCOMPAT_KEY_SLOTS`]): a slot changed since (damaged on the medium, or replaced)
/// opens under no key, and the capture with it, whatever else verifies. Whether one did.
/// `matching`: the other generations of the capture whose MANIFEST records the slots on the
/// medium now ([`generations_recording`]): when there are some, the slots are the capture's
/// and generation `g` is what does not belong (a generation of another capture planted or
/// moved here), which is what is said (it blamed the capture's intact KEYS).
fn check_key_slots<S: Store + ?Sized>(
    store: &mut S,
    name: &str,
    g: u32,
    recorded: &[[u8; 32]; 2],
    matching: &[u32],
    cx: &mut Ctx<'_>,
) -> Result<bool> {
    let dir = layout::capture_dir(name);
    let now = [
        medium::key_slot_digest(store, name, KEYS_FILE)?,
        medium::key_slot_digest(store, name, KEYPASS_FILE)?,
    ];
    if now == [None, None] {
        // No slot at all (what an appliance's erase or PIN lockout leaves) is said once for
        // the capture, by `verify_into`.
        return Ok(*recorded != [[0u8; 32]; 2]);
    }
    if as_recorded(&now) != *recorded && !matching.is_empty() {
        let others = matching
            .iter()
            .map(|o| alloc::format!("{o}"))
            .collect::<Vec<_>>()
            .join(", ");
        // Which side is genuine is not for a keyless check to say: a courier may have put
        // their own key slots in with their own generations (then the odd one out here is the
        // genuine one).
        cx.problem(
            Location::capture(name).generation(g),
            alloc::format!(
                "generation {g}'s MANIFEST records other key slots than those on the medium now, \
                 which generation {others} records: one side was planted or moved here (a \
                 generation of another capture, or the key slots replaced along with one), and \
                 no key opens both. An ingest that pins the capture site (--trust, and the \
                 receipt's --expect-commit) takes only the generation the site signed; or \
                 ingest from another copy of the shipment"
            ),
        );
        return Ok(true);
    }
    let mut changed = false;
    for ((file, want), now) in [KEYS_FILE, KEYPASS_FILE].into_iter().zip(recorded).zip(now) {
        let at = Location::capture(name).file(&alloc::format!("{dir}/{file}"));
        let what = match (now, *want == [0u8; 32]) {
            (None, true) => continue,
            (Some(d), false) if d == *want => continue,
            (None, false) => "is missing",
            (Some(_), true) => "was added after the capture",
            (Some(_), false) => "is damaged or was replaced",
        };
        changed = true;
        // A slot that is there, but not the one recorded: without a key, a replaced slot and
        // a generation of another capture put here (its MANIFEST recording its own slots)
        // look alike; only the first loses the key ("the key is lost" was said of a KEYS
        // byte for byte as captured, beside a planted generation).
        let why = if now.is_some() && *want != [0u8; 32] {
            alloc::format!(
                "either the slot was damaged or replaced (the key it held for this capture is \
                 then lost: no key opens a damaged slot), or generation {g} is another \
                 capture's, put here (`mgear verify --identity` or ingest names which)"
            )
        } else {
            "so the key it held for this capture is lost with it (no key opens a damaged slot)"
                .into()
        };
        cx.problem(
            at,
            alloc::format!(
                "key slot {file} {what}: it is not the one generation {g}'s MANIFEST recorded, \
                 {why}; ingest from another copy of the shipment, or capture again"
            ),
        );
    }
    Ok(changed)
}

/// The digests of capture `name`'s key slots on the medium now (KEYS, KEYPASS).
fn slots_on_medium<S: Store + ?Sized>(store: &mut S, name: &str) -> Result<[Option<[u8; 32]>; 2]> {
    Ok([
        medium::key_slot_digest(store, name, KEYS_FILE)?,
        medium::key_slot_digest(store, name, KEYPASS_FILE)?,
    ])
}

/// Slots as a MANIFEST records them: all zeros for a slot that is not there.
fn as_recorded(now: &[Option<[u8; 32]>; 2]) -> [[u8; 32]; 2] {
    [now[0].unwrap_or([0; 32]), now[1].unwrap_or([0; 32])]
}

/// The generations of `gens` whose readable MANIFEST records exactly the slots `now` (none
/// when no slot is there: that is said once, for the capture).
fn generations_recording<S: Store + ?Sized>(
    store: &mut S,
    name: &str,
    gens: &[u32],
    now: &[Option<[u8; 32]>; 2],
) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    if *now == [None, None] {
        return Ok(out);
    }
    for &g in gens {
        // An unreadable MANIFEST is reported where the generation is checked.
        if let Ok(Some(f)) = medium::read_manifest(store, name, g) {
            let m = f.manifest;
            if m.incompat & layout::INCOMPAT_KEY_SLOTS != 0 && m.key_slots == as_recorded(now) {
                out.push(g);
            }
        }
    }
    Ok(out)
}

/// Which key slot of capture `name` differs from what its newest finished generation's
/// MANIFEST recorded (`"KEYS"`, `"KEYPASS"`), if one does: a key that "does not open" such
/// a capture is not the wrong key, the slot is damaged or replaced (keyed verify called the
/// right key wrong). `None` also where the manifest records no slots (older captures).
pub fn changed_key_slot<S: Store + ?Sized>(
    store: &mut S,
    name: &str,
) -> Result<Option<&'static str>> {
    let newest = list_captures(store)?
        .into_iter()
        .find(|c| c.name == name)
        .and_then(|c| {
            c.generations
                .iter()
                .rev()
                .find(|g| g.state == GenerationState::Complete)
                .map(|g| g.generation)
        });
    let Some(g) = newest else {
        return Ok(None);
    };
    let Some(m) = medium::read_manifest(store, name, g)? else {
        return Ok(None);
    };
    let m = m.manifest;
    if m.incompat & layout::INCOMPAT_KEY_SLOTS == 0 {
        return Ok(None);
    }
    for (file, want) in [KEYS_FILE, KEYPASS_FILE].into_iter().zip(m.key_slots) {
        let now = medium::key_slot_digest(store, name, file)?;
        let same = match now {
            None => want == [0u8; 32],
            Some(d) => d == want,
        };
        if !same {
            // Unless another generation records the slots as they are: then the slots are
            // the capture's and the newest generation is one planted or moved here (said
            // as such by the keyless checks).
            let gens = medium::generations(store, name)?;
            let now = slots_on_medium(store, name)?;
            if !generations_recording(store, name, &gens, &now)?.is_empty() {
                return Ok(None);
            }
            return Ok(Some(file));
        }
    }
    Ok(None)
}

/// Generation `m`'s segments whose trailer does not read as its MANIFEST says (64 bytes
/// read per segment; no key): each with why. A reader that authenticates records one by
/// one never looks at a trailer, so ingest installed a capture whose trailer was damaged
/// while `verify` called the medium damaged. A segment not on the medium is left to the
/// reader (it names it where it needs it).
pub fn damaged_trailers<S: Store + ?Sized>(
    store: &mut S,
    name: &str,
    m: &layout::Manifest,
) -> Result<Vec<(String, &'static str)>> {
    let mut out = Vec::new();
    for (i, d) in m.segments.iter().enumerate() {
        let path = layout::segment_path(name, m.generation, i as u32);
        let Some(len) = store.len(&path).at(&path)? else {
            continue;
        };
        let why = if len != d.len || len < TRAILER_LEN as u64 {
            Some("its length is not the one the MANIFEST records")
        } else {
            let mut b = [0u8; TRAILER_LEN];
            store
                .read_exact_at(&path, len - TRAILER_LEN as u64, &mut b)
                .at(&path)?;
            match SegmentTrailer::decode(&b) {
                Err(w) => Some(w),
                Ok(t) if t.data_end != len - TRAILER_LEN as u64 => {
                    Some("its trailer does not end the file")
                }
                Ok(t) if t.hash != d.hash => {
                    Some("its trailer's digest is not the one the MANIFEST records")
                }
                Ok(_) => None,
            }
        };
        if let Some(w) = why {
            out.push((path, w));
        }
    }
    Ok(out)
}

/// `slots`: the key-slot digests the generation's MANIFEST recorded, given when the slots
/// on the medium differ from them (already reported): the COMMIT must bind those.
fn verify_commit<S: Store + ?Sized>(
    store: &mut S,
    name: &str,
    generation: u32,
    slots: Option<&[[u8; 32]; 2]>,
    cx: &mut Ctx<'_>,
) -> Result<()> {
    let path = commit::commit_path(name, generation);
    let at = Location::capture(name).generation(generation).file(&path);
    let file = match commit::read_commit(store, name, generation) {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(()),
        Err(Error::Corrupt { at, what }) => {
            cx.problem(*at, what);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if let Some(mut expected) = commit::expected_commit(store, name, generation)? {
        if let Some([keys, keypass]) = slots {
            expected.keys_hash = *keys;
            expected.keypass_hash = *keypass;
        }
        if let Some(what) = commit::check_commit(&file, &expected) {
            cx.problem(at, what);
        }
    }
    Ok(())
}

fn verify_index<S: Store + ?Sized>(
    store: &mut S,
    name: &str,
    m: &layout::Manifest,
    cx: &mut Ctx<'_>,
) -> Result<()> {
    let path = layout::generation_file(name, m.generation, INDEX_FILE);
    let at = Location::capture(name).generation(m.generation).file(&path);
    let Some(len) = store.len(&path).at(&path)? else {
        cx.problem(at, "INDEX is missing");
        return Ok(());
    };
    if len != m.index_len {
        cx.problem(
            at.clone(),
            alloc::format!("INDEX is {len} bytes, the manifest says {}", m.index_len),
        );
        return Ok(());
    }
    let mut head = [0u8; INDEX_HEADER_LEN];
    if len < head.len() as u64 {
        cx.problem(at, "INDEX is truncated");
        return Ok(());
    }
    store.read_exact_at(&path, 0, &mut head).at(&path)?;
    // One finding per INDEX: a damaged header is also a hash mismatch, not a second problem.
    let before = cx.problem_count();
    match IndexHeader::decode(&head) {
        Err(w) => cx.problem(at.clone().bytes(0..INDEX_HEADER_LEN as u64), w),
        Ok(h) => {
            if h.capture_id != m.capture_id
                || h.generation != m.generation
                || h.chunk_count != m.chunk_count
            {
                cx.problem(
                    at.clone(),
                    "INDEX header does not match the manifest (moved or replayed file)",
                );
            } else if INDEX_HEADER_LEN as u64 + h.ciphertext_len != len {
                cx.problem(at.clone(), "INDEX length does not match its header");
            }
        }
    }
    let header_bad = cx.problem_count() != before;
    let mut h = blake3::Hasher::new();
    let mut buf = core::mem::take(&mut cx.buf);
    medium::stream(store, &path, 0, len, &mut buf, |b| {
        h.update(b);
    })?;
    cx.buf = buf;
    cx.advance(len);
    if h.finalize().as_bytes() != &m.index_hash && !header_bad {
        cx.problem(at, "INDEX contents do not match the manifest's hash");
    }
    Ok(())
}

/// Reads one file front to back through the verifier's buffer: record
/// headers come out of the same large reads as the bytes around them, so a
/// segment costs one device request per buffer, not three per record.
struct SeqRead<'b> {
    buf: &'b mut [u8],
    /// File offset of `buf[0]`.
    at: u64,
    /// Bytes of `buf` holding file data, and how many of them were used.
    filled: usize,
    used: usize,
    /// Never read at or past this offset (the file's length).
    end: u64,
}

impl<'b> SeqRead<'b> {
    fn new(buf: &'b mut [u8], from: u64, end: u64) -> Self {
        SeqRead {
            buf,
            at: from,
            filled: 0,
            used: 0,
            end,
        }
    }

    /// Feeds the next `n` bytes to `f`, in pieces.
    fn feed<S: Store + ?Sized>(
        &mut self,
        store: &mut S,
        path: &str,
        mut n: u64,
        mut f: impl FnMut(&[u8]),
    ) -> Result<()> {
        while n > 0 {
            if self.used == self.filled {
                self.at += self.filled as u64;
                let want = (self.end.saturating_sub(self.at)).min(self.buf.len() as u64) as usize;
                if want == 0 {
                    return Err(Error::corrupt(
                        Location::default().file(path),
                        "read past the end of the file",
                    ));
                }
                store
                    .read_exact_at(path, self.at, &mut self.buf[..want])
                    .at(path)?;
                self.filled = want;
                self.used = 0;
            }
            let k = ((self.filled - self.used) as u64).min(n) as usize;
            f(&self.buf[self.used..self.used + k]);
            self.used += k;
            n -= k as u64;
        }
        Ok(())
    }

    /// The next `out.len()` bytes.
    fn read<S: Store + ?Sized>(&mut self, store: &mut S, path: &str, out: &mut [u8]) -> Result<()> {
        let mut got = 0;
        self.feed(store, path, out.len() as u64, |b| {
            out[got..got + b.len()].copy_from_slice(b);
            got += b.len();
        })
    }
}

/// Checks one segment's framing record by record, reading it once, front
/// to back, in large reads. Each stored byte is hashed once (its record's
/// hash); the segment digest is over the headers
/// ([`layout::INCOMPAT_HEADER_DIGEST`]), or, for segments written before
/// it, over every byte as well.
#[allow(clippy::too_many_arguments)]
fn verify_segment<S: Store + ?Sized>(
    store: &mut S,
    name: &str,
    generation: u32,
    segment: u32,
    capture_id: &[u8; 16],
    incompat: u32,
    digest: &SegmentDigest,
    cx: &mut Ctx<'_>,
) -> Result<()> {
    cx.report.segments += 1;
    let path = layout::segment_path(name, generation, segment);
    let mut at = Location::capture(name).generation(generation).file(&path);
    at.segment = Some(segment);
    let Some(len) = store.len(&path).at(&path)? else {
        if let Some((o, span)) = cx
            .span
            .as_ref()
            .and_then(|s| Some((s.elsewhere(&path)?, s)))
        {
            let medium = span.map.describe(o);
            cx.report.segments -= 1;
            cx.report.elsewhere.push(Elsewhere {
                path,
                ordinal: o,
                medium,
                lost: span.map.member(o).is_some_and(|m| m.lost),
            });
            return Ok(());
        }
        // This medium's copy of the span map is damaged: which medium holds the segment is
        // not known here (the other medium's segments were called missing).
        if cx.span.as_ref().is_some_and(|s| s.map_damage.is_some()) {
            cx.problem(
                at,
                "segment listed in the manifest is not on this medium, and this medium's copy \
                 of the span map is damaged, so which medium holds it is not known here: \
                 verify this medium together with the others of the span",
            );
            return Ok(());
        }
        cx.problem(at, "segment listed in the manifest is missing");
        return Ok(());
    };
    if len != digest.len {
        cx.problem(
            at.clone(),
            alloc::format!("segment is {len} bytes, the manifest says {}", digest.len),
        );
    }
    if len < (SEG_HEADER_LEN + TRAILER_LEN) as u64 {
        cx.problem(
            at.bytes(0..len),
            "segment is too short to hold a header and a trailer",
        );
        return Ok(());
    }
    let mut buf = core::mem::take(&mut cx.buf);
    let mut input = SeqRead::new(&mut buf, 0, len);
    let mut hdr = [0u8; SEG_HEADER_LEN];
    if let Err(e) = input.read(store, &path, &mut hdr) {
        cx.buf = buf;
        return Err(e);
    }
    let result = walk_segment(
        store, &path, &at, generation, segment, capture_id, incompat, digest, len, &hdr,
        &mut input, cx,
    );
    cx.buf = buf;
    if let Some((at, what)) = result? {
        cx.problem(at, what);
    }
    Ok(())
}

/// The record walk of [`verify_segment`], after its header was read:
/// the problem that ends the walk, if any.
#[allow(clippy::too_many_arguments)]
fn walk_segment<S: Store + ?Sized>(
    store: &mut S,
    path: &str,
    at: &Location,
    generation: u32,
    segment: u32,
    capture_id: &[u8; 16],
    incompat: u32,
    digest: &SegmentDigest,
    len: u64,
    hdr: &[u8; SEG_HEADER_LEN],
    input: &mut SeqRead<'_>,
    cx: &mut Ctx<'_>,
) -> Result<Option<(Location, String)>> {
    match SegmentHeader::decode(hdr) {
        Err(w) => {
            return Ok(Some((at.clone().bytes(0..SEG_HEADER_LEN as u64), w.into())));
        }
        Ok(h)
            if h.capture_id != *capture_id
                || h.generation != generation
                || h.segment != segment =>
        {
            cx.problem(
                at.clone().bytes(0..SEG_HEADER_LEN as u64),
                alloc::format!(
                    "segment header says generation {} segment {} of another or the same capture (moved or replayed file)",
                    h.generation,
                    h.segment
                ),
            );
        }
        Ok(_) => {}
    }
    let headers_only = layout::header_digest(incompat);
    let mut seg_hash = layout::segment_hasher(incompat);
    seg_hash.update(hdr);
    cx.advance(SEG_HEADER_LEN as u64);
    let mut off = SEG_HEADER_LEN as u64;
    let mut expect: u32 = 0;
    loop {
        // Built only when a problem is reported: no allocation per record.
        let rat = |range: core::ops::Range<u64>| {
            let mut l = at.clone().bytes(range);
            l.record = Some(expect);
            l
        };
        if off + REC_HEADER_LEN as u64 > len {
            return Ok(Some((
                rat(off..len),
                "segment ends without a trailer (truncated)".into(),
            )));
        }
        let mut rh = [0u8; REC_HEADER_LEN];
        input.read(store, path, &mut rh)?;
        if rh[..4] == TRAILER_MAGIC {
            let tat = at.clone().bytes(off..off + TRAILER_LEN as u64);
            let t = match SegmentTrailer::decode(&rh) {
                Ok(t) => t,
                Err(w) => return Ok(Some((tat, w.into()))),
            };
            let h = *seg_hash.finalize().as_bytes();
            cx.advance(TRAILER_LEN as u64);
            return Ok(if t.data_end != off || t.records != expect {
                Some((
                    tat,
                    alloc::format!(
                        "trailer says {} records ending at byte {}, found {expect} ending at {off}",
                        t.records,
                        t.data_end
                    ),
                ))
            } else if t.hash != h {
                Some((
                    tat,
                    "trailer hash does not match the segment's bytes".into(),
                ))
            } else if off + TRAILER_LEN as u64 != len {
                Some((
                    at.clone().bytes(off + TRAILER_LEN as u64..len),
                    "bytes after the segment trailer".into(),
                ))
            } else if t.hash != digest.hash {
                Some((
                    at.clone(),
                    "segment contents differ from the manifest's hash (replaced segment)".into(),
                ))
            } else {
                None
            });
        }
        let h = match RecordHeader::decode(&rh) {
            Ok(h) => h,
            Err(w) => return Ok(Some((rat(off..off + REC_HEADER_LEN as u64), w.into()))),
        };
        let end = off + REC_HEADER_LEN as u64 + u64::from(h.stored_len);
        let rrange = off..end;
        if end > len {
            return Ok(Some((
                rat(rrange),
                "record runs past the end of the segment (truncated)".into(),
            )));
        }
        // The record is whole but no room is left for the trailer after it: the cut is in
        // the trailer (or a record header after this one), and naming this record would
        // send the reader after bytes that are intact. The record is still checked.
        let trailer_cut = end + TRAILER_LEN as u64 > len;
        if h.record != expect {
            cx.problem(
                rat(rrange.clone()),
                alloc::format!(
                    "record number {} where {expect} was expected (replayed or reordered record)",
                    h.record
                ),
            );
        }
        seg_hash.update(&rh);
        let mut rec_hash = blake3::Hasher::new();
        input.feed(store, path, u64::from(h.stored_len), |b| {
            rec_hash.update(b);
            if !headers_only {
                seg_hash.update(b);
            }
        })?;
        cx.report.records += 1;
        cx.advance(end - off);
        if rec_hash.finalize().as_bytes() != &h.stored_hash {
            cx.problem(
                rat(rrange),
                "stored bytes do not match the record's hash (corrupted record)",
            );
        }
        if trailer_cut {
            let mut magic = [0u8; 4];
            let trailer = len - end >= 4 && {
                input.read(store, path, &mut magic)?;
                magic == TRAILER_MAGIC
            };
            let what = if trailer {
                alloc::format!("its {TRAILER_LEN}-byte trailer is cut short")
            } else {
                alloc::format!(
                    "too few for its {TRAILER_LEN}-byte trailer or the next record's header: \
                     they are cut"
                )
            };
            return Ok(Some((
                at.clone().bytes(end..len),
                alloc::format!(
                    "segment ends {} bytes after record {expect}: {what} (truncated); the records \
                     before are whole",
                    len - end
                ),
            )));
        }
        off = end;
        expect = expect.saturating_add(1);
    }
}

/// A capture as listed without any key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureInfo {
    pub name: String,
    /// `KEYS` (X25519 recipients) present.
    pub recipient_slot: bool,
    /// `KEYPASS` (passphrase) present.
    pub passphrase_slot: bool,
    pub generations: Vec<GenerationInfo>,
    /// Why the capture's own files could not be listed (its directory or a
    /// generation's, damaged in the file system); then `generations` is
    /// empty. The other captures of the medium are listed all the same.
    pub damage: Option<String>,
}

/// State of one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GenerationState {
    /// Manifest written: the generation is complete.
    Complete,
    /// Being written or interrupted: `next_chunk` of `chunk_count` durable.
    Unfinished { next_chunk: u64 },
    /// Neither a valid manifest nor a valid journal.
    Damaged(String),
}

/// One generation as listed without any key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationInfo {
    pub generation: u32,
    pub state: GenerationState,
    pub parent: Option<u32>,
    pub chunk_size: u32,
    pub disk_size: u64,
    pub chunk_count: u64,
    pub stored_chunks: u64,
    pub zero_chunks: u64,
    pub dedup_chunks: u64,
    /// Bytes of records this generation wrote (an unfinished one: its segments up to the
    /// last checkpoint, headers included).
    pub stored_bytes: u64,
    pub segments: u32,
    /// A complete generation's segment lengths, as its manifest signs them (empty otherwise):
    /// a listing compares them with the files' (a cheap check; the bytes are verify's).
    pub segment_lens: Vec<u64>,
    /// An unfinished generation of a span: closed segments on the span's media not opened
    /// (each medium alone said only what it holds, unexplained); `stored_bytes` counts the
    /// others.
    pub segments_elsewhere: u32,
    pub created_unix: u64,
    pub appliance_id: Option<[u8; 32]>,
    pub source_desc: String,
    /// Root hash of the manifest (complete generations).
    pub manifest_root: Option<[u8; 32]>,
    /// Other machines' generations whose records this one points at (dedup
    /// across machines), as its manifest pins them.
    pub peers: Vec<layout::Peer>,
}

impl GenerationInfo {
    /// Generation `g` in `state`, with nothing else known (no manifest read).
    pub fn blank(g: u32, state: GenerationState) -> Self {
        GenerationInfo {
            generation: g,
            state,
            parent: None,
            chunk_size: 0,
            disk_size: 0,
            chunk_count: 0,
            stored_chunks: 0,
            zero_chunks: 0,
            dedup_chunks: 0,
            stored_bytes: 0,
            segments: 0,
            segment_lens: Vec::new(),
            segments_elsewhere: 0,
            created_unix: 0,
            appliance_id: None,
            source_desc: String::new(),
            manifest_root: None,
            peers: Vec::new(),
        }
    }
}

/// The spelling capture `name` is stored under on this medium.
///
/// Capture names are compared without case everywhere: FAT keeps one
/// directory for `web01` and `WEB01`, so a medium that travelled as FAT and
/// was copied to a case-sensitive file system (a `dir:` medium) must answer
/// to the same names. The manifest MAC and AAD bind the stored spelling, so
/// every reader resolves the user's spelling to it before reading anything;
/// otherwise a case difference would read like a moved or replayed file.
///
/// Returns `name` itself when no capture directory matches (the caller then
/// reports that there is no such capture). Two directories that differ only
/// by case (possible only on a case-sensitive medium, made by hand) are an
/// error naming both: nothing can say which one `name` means.
pub fn stored_name<S: Store + ?Sized>(store: &mut S, name: &str) -> Result<String> {
    layout::validate_name(name)?;
    let mut matches: Vec<String> = medium::list_or_empty(store, layout::ROOT_DIR)?
        .into_iter()
        .filter(|e| e.kind == EntryKind::Dir && e.name.eq_ignore_ascii_case(name))
        .map(|e| e.name)
        .filter(|n| layout::validate_name(n).is_ok())
        .collect();
    matches.sort();
    match matches.as_slice() {
        [] => Ok(name.into()),
        [one] => Ok(one.clone()),
        many => Err(Error::corrupt(
            Location::capture(name).file(layout::ROOT_DIR),
            name_clash(many),
        )),
    }
}

/// What [`name_clash`] says, for a caller to tell it from damaged data.
pub const NAME_CLASH: &str = "whose names differ only by case";

/// The message for capture directories that differ only by case.
fn name_clash(names: &[String]) -> String {
    let dirs: Vec<String> = names.iter().map(|n| layout::capture_dir(n)).collect();
    alloc::format!(
        "the medium holds capture directories {}, {NAME_CLASH}; capture \
         names are compared without case (FAT keeps one directory for both), so none of them \
         can be chosen by name: move all but one away (by hand, on this copy of the medium)",
        dirs.join(" and ")
    )
}

/// The capture id of capture `name` without any key: from its newest
/// generation's MANIFEST, else from an unfinished generation's journal;
/// `Ok(None)` when neither holds one (no such capture, or nothing durable).
/// The source-side key cache is keyed by it, so two media holding a capture
/// of one name never share (or overwrite) each other's data key.
pub fn capture_id<S: Store + ?Sized>(store: &mut S, name: &str) -> Result<Option<[u8; 16]>> {
    let name = &stored_name(store, name)?;
    for g in medium::generations(store, name)?.into_iter().rev() {
        match medium::read_manifest(store, name, g) {
            Ok(Some(f)) => return Ok(Some(f.manifest.capture_id)),
            Ok(None) | Err(Error::Corrupt { .. }) => {}
            Err(e) => return Err(e),
        }
        if let Some(j) = medium::read_journal(store, name, g)? {
            return Ok(Some(j.capture_id));
        }
    }
    Ok(None)
}

/// Another generation of capture `name` whose MANIFEST names a capture id other than
/// `id` (generation `g`'s), keyless: every generation of a capture shares its id, so one of
/// the two was put in the capture's directory from another capture or medium. Its number and
/// id; `None` when every other readable MANIFEST agrees.
pub fn other_capture_id<S: Store + ?Sized>(
    store: &mut S,
    name: &str,
    g: u32,
    id: &[u8; 16],
) -> Result<Option<(u32, [u8; 16])>> {
    let name = &stored_name(store, name)?;
    for h in medium::generations(store, name)? {
        if h == g {
            continue;
        }
        // An unreadable MANIFEST is that generation's own finding, reported where it is used.
        if let Ok(Some(f)) = medium::read_manifest(store, name, h) {
            if f.manifest.capture_id != *id {
                return Ok(Some((h, f.manifest.capture_id)));
            }
        }
    }
    Ok(None)
}

/// Why generation `g` of capture `name`, which has no readable MANIFEST,
/// was nevertheless finished once; `None` when nothing says so (a capture
/// interrupted before its MANIFEST, which a re-run resumes or `capture
/// --abort` removes). `gens` are the capture's generations.
///
/// Why this matters: a generation that was finished holds records that
/// later deltas point at and a COMMIT someone may have signed, so losing
/// its MANIFEST makes it damaged data, never a leftover. Resume, abort and
/// `medium fsck --repair` must not treat it as one: removing it would take
/// every delta built on it with it.
pub fn finished_evidence<S: Store + ?Sized>(
    store: &mut S,
    name: &str,
    g: u32,
    gens: &[u32],
) -> Result<Option<String>> {
    // A capture never starts a generation over an unfinished one (it
    // resumes it), so any later generation proves this one was finished.
    if let Some(later) = gens.iter().copied().filter(|&x| x > g).min() {
        return Ok(Some(alloc::format!(
            "generation {later} was captured after it"
        )));
    }
    let file = |f: &str| layout::generation_file(name, g, f);
    let manifest = file(MANIFEST_FILE);
    if store.len(&manifest).at(&manifest)?.is_some() {
        return Ok(Some("its MANIFEST is there but does not read back".into()));
    }
    let commit = file(commit::COMMIT_FILE);
    if store.len(&commit).at(&commit)?.is_some() {
        return Ok(Some("its COMMIT is written".into()));
    }
    if let Ok(Some(j)) = medium::read_journal(store, name, g) {
        if j.state == layout::JournalState::Finished {
            return Ok(Some("its journal says it finished".into()));
        }
    }
    Ok(None)
}

/// Lists captures and their generations without any key.
pub fn list_captures<S: Store + ?Sized>(store: &mut S) -> Result<Vec<CaptureInfo>> {
    let mut out = Vec::new();
    for name in medium::capture_names(store)? {
        match capture_info(store, &name) {
            Ok(Some(info)) => out.push(info),
            Ok(None) => {}
            // Damage in one capture's directories is that capture's finding: the
            // others are listed (one damaged directory made every capture unlistable,
            // and an ingest of an intact capture was refused over it).
            Err(e) if e.is_damage() => out.push(CaptureInfo {
                name,
                recipient_slot: false,
                passphrase_slot: false,
                generations: Vec::new(),
                damage: Some(alloc::format!("{e}")),
            }),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// How [`garbled_entries`]' finding begins: such a generation is no leftover to remove.
pub const GARBLED_DIR: &str = "its directory is damaged:";

/// Why generation directory `dir` is damaged rather than cut off at its start: it lists
/// entries no writer of the format makes (a subdirectory, a name of other characters than
/// the format's), what a directory cluster overwritten with other bytes reads as. `None`
/// when it does not (it was called "unfinished, cut off at its start", and `medium fsck
/// --repair` offered to remove it).
fn garbled_entries<S: Store + ?Sized>(store: &mut S, dir: &str) -> Result<Option<String>> {
    let odd: Vec<String> = medium::list_or_empty(store, dir)?
        .into_iter()
        .filter(|e| {
            e.kind == EntryKind::Dir
                || !e
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
        .map(|e| e.name)
        .collect();
    Ok((!odd.is_empty()).then(|| {
        alloc::format!(
            "{GARBLED_DIR} it lists {} entr{} no MotionGear writer makes (the \
             directory's cluster was overwritten?); `fsck.fat -n` on a copy of the medium says \
             more. It is no capture cut off at its start: do not remove it to start over",
            odd.len(),
            if odd.len() == 1 { "y" } else { "ies" }
        )
    }))
}

/// Why generation directory `dir`, listed as sound so far, is damaged all the same: an entry
/// in it is marked a directory, where the format keeps only files (a segment's or the
/// COMMIT's attribute byte damaged: the listing read on past it and called the generation
/// complete, while every reader of that file fails). `None` when no entry is. Of a finished
/// generation (`finished`), only the files its readers read count: a journal slot's entry
/// marked a directory called a generation that ingests bit for bit "damaged: do not ingest
/// it" (the file-system finding beside it still names the entry).
fn marked_dirs<S: Store + ?Sized>(
    store: &mut S,
    dir: &str,
    finished: bool,
) -> Result<Option<String>> {
    let read_when_finished = |n: &str| {
        [
            MANIFEST_FILE,
            INDEX_FILE,
            commit::COMMIT_FILE,
            set::SET_FILE,
        ]
        .contains(&n)
            || layout::parse_segment_name(n).is_some()
    };
    let marked: Vec<String> = medium::list_or_empty(store, dir)?
        .into_iter()
        .filter(|e| e.kind == EntryKind::Dir && (!finished || read_when_finished(&e.name)))
        .map(|e| e.name)
        .collect();
    Ok((!marked.is_empty()).then(|| {
        alloc::format!(
            "{dir}/{} {} a directory where the format has a file: {} directory entr{} damaged",
            marked.join(", "),
            if marked.len() == 1 { "is" } else { "are" },
            if marked.len() == 1 { "its" } else { "their" },
            if marked.len() == 1 { "y is" } else { "ies are" },
        )
    }))
}

/// Capture `name`'s key slots and generations, without any key; `None` for
/// a machine set's directory (`crate::set::list_sets` lists those).
pub fn capture_info<S: Store + ?Sized>(store: &mut S, name: &str) -> Result<Option<CaptureInfo>> {
    let name = String::from(name);
    // A set directory is not a capture: `crate::set::list_sets` lists it.
    if set::is_set(store, &name)? {
        return Ok(None);
    }
    let dir = layout::capture_dir(&name);
    let recipient_slot = store
        .len(&alloc::format!("{dir}/{KEYS_FILE}"))
        .at(&dir)?
        .is_some();
    let passphrase_slot = store
        .len(&alloc::format!("{dir}/{KEYPASS_FILE}"))
        .at(&dir)?
        .is_some();
    let mut generations = Vec::new();
    let all = medium::generations(store, &name)?;
    for &g in &all {
        let blank = GenerationInfo::blank(g, GenerationState::Damaged(String::new()));
        let info = match medium::read_manifest(store, &name, g) {
            Ok(Some(f)) => {
                let m = f.manifest;
                GenerationInfo {
                    state: GenerationState::Complete,
                    parent: (m.parent != 0).then_some(m.parent),
                    chunk_size: m.chunk_size,
                    disk_size: m.disk_size,
                    chunk_count: m.chunk_count,
                    stored_chunks: m.stored_chunks,
                    zero_chunks: m.zero_chunks,
                    dedup_chunks: m.dedup_chunks,
                    stored_bytes: m.stored_bytes,
                    segments: m.segments.len() as u32,
                    segment_lens: m.segments.iter().map(|d| d.len).collect(),
                    created_unix: m.created_unix,
                    appliance_id: m.appliance_id,
                    source_desc: m.source_desc,
                    manifest_root: Some(f.root),
                    peers: m.peers,
                    ..blank
                }
            }
            Ok(None) => match (
                finished_evidence(store, &name, g, &all)?,
                medium::read_journal(store, &name, g)?,
            ) {
                (Some(why), _) => GenerationInfo {
                    state: GenerationState::Damaged(alloc::format!(
                        "its MANIFEST is missing although it was finished ({why})"
                    )),
                    ..blank
                },
                (None, Some(j)) => {
                    // What is durable so far: the segments up to the checkpoint, those on
                    // the media given counted, the others numbered.
                    let (mut stored, mut elsewhere) = (j.open_len, 0u32);
                    for s in 0..j.closed_segments {
                        let p = layout::segment_path(&name, g, s);
                        match store.len(&p).at(&p)? {
                            Some(n) => stored += n,
                            None => elsewhere += 1,
                        }
                    }
                    GenerationInfo {
                        state: GenerationState::Unfinished {
                            next_chunk: j.next_chunk,
                        },
                        stored_bytes: stored,
                        segments_elsewhere: elsewhere,
                        parent: (j.parent != 0).then_some(j.parent),
                        chunk_size: j.chunk_size,
                        disk_size: j.source_size,
                        chunk_count: layout::chunk_count(j.source_size, j.chunk_size),
                        segments: j.closed_segments + u32::from(j.open_len > 0),
                        ..blank
                    }
                }
                (None, None) => GenerationInfo {
                    state: GenerationState::Damaged(
                        match garbled_entries(store, &layout::generation_dir(&name, g))? {
                            Some(why) => why,
                            // Entries lost on a medium closed cleanly: its files may be among
                            // the clusters nothing holds (inspect and fsck advised removing
                            // it, beside a verify that said it may have been finished).
                            None if store.lost_clusters().ok().flatten().is_some() => {
                                LOST_ENTRIES.into()
                            }
                            None => CUT_OFF_AT_START.into(),
                        },
                    ),
                    ..blank
                },
            },
            Err(Error::Corrupt { what, .. }) => GenerationInfo {
                state: GenerationState::Damaged(what),
                ..blank
            },
            Err(e) => return Err(e),
        };
        let finished = matches!(info.state, GenerationState::Complete);
        let info = match marked_dirs(store, &layout::generation_dir(&name, g), finished)? {
            Some(why) if !matches!(info.state, GenerationState::Damaged(_)) => GenerationInfo {
                state: GenerationState::Damaged(why),
                ..info
            },
            _ => info,
        };
        generations.push(info);
    }
    Ok(Some(CaptureInfo {
        name,
        recipient_slot,
        passphrase_slot,
        generations,
        damage: None,
    }))
}

/// blake3 of every file the appliance signs at seal: each capture's key
/// slots, and each generation's MANIFEST (or set manifest SET), COMMIT,
/// INDEX and segments, sorted by path.
/// Keyless; the appliance signs this list.
pub fn medium_digests<S: Store + ?Sized>(store: &mut S) -> Result<Vec<(String, [u8; 32])>> {
    let mut out = Vec::new();
    let mut buf = alloc::vec![0u8; BUF_LEN];
    for name in medium::capture_names(store)? {
        let dir = layout::capture_dir(&name);
        for slot in [KEYS_FILE, KEYPASS_FILE] {
            let p = alloc::format!("{dir}/{slot}");
            if let Some((_, h)) = medium::hash_file(store, &p, &mut buf)? {
                out.push((p, h));
            }
        }
        for g in medium::generations(store, &name)? {
            let gdir = layout::generation_dir(&name, g);
            let mut files: Vec<String> = medium::list_or_empty(store, &gdir)?
                .into_iter()
                .filter(|e| {
                    e.kind == EntryKind::File
                        && (e.name == MANIFEST_FILE
                            || e.name == set::SET_FILE
                            || e.name == commit::COMMIT_FILE
                            || e.name == INDEX_FILE
                            || layout::parse_segment_name(&e.name).is_some())
                })
                .map(|e| e.name)
                .collect();
            files.sort();
            for f in files {
                let p = alloc::format!("{gdir}/{f}");
                if let Some((_, h)) = medium::hash_file(store, &p, &mut buf)? {
                    out.push((p, h));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(all(test, feature = "crypto"))]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use crate::{
        unlock_data_key, verify_full, CaptureParams, CaptureReader, CaptureWriter, ChunkData,
        Unlock,
    };

    const CS: u32 = 64 * 1024;

    /// A case-sensitive medium (like a `dir:` one) holding capture `web01`
    /// of `disk`, and the identity that opens it.
    fn medium(disk: &[u8]) -> (MemStore, age::x25519::Identity) {
        let id = age::x25519::Identity::generate();
        let mut p = CaptureParams::new("web01", disk.len() as u64);
        p.chunk_size = CS;
        p.recipients = vec![id.to_public()];
        let mut store = MemStore::new();
        let mut w = CaptureWriter::begin(&mut store, p, None).unwrap();
        let enc = w.encoder();
        for i in 0..w.chunk_count() {
            let s = (i * u64::from(CS)) as usize;
            let e = (s + CS as usize).min(disk.len());
            w.append(enc.encode(i, &disk[s..e]).unwrap()).unwrap();
        }
        w.finish().unwrap();
        (store, id)
    }

    fn disk() -> Vec<u8> {
        (0..3 * CS + 100).map(|i| (i * 7 / 3) as u8).collect()
    }

    /// Copies the tree `from` to `to` file by file (what a user doing it by
    /// hand on a case-sensitive file system would get).
    fn copy_tree(store: &mut MemStore, from: &str, to: &str) {
        store.create_dir_all(to).unwrap();
        for e in store.list(from).unwrap() {
            let (f, t) = (format!("{from}/{}", e.name), format!("{to}/{}", e.name));
            match e.kind {
                EntryKind::Dir => copy_tree(store, &f, &t),
                EntryKind::File => {
                    let mut buf = vec![0u8; store.len(&f).unwrap().unwrap() as usize];
                    store.read_exact_at(&f, 0, &mut buf).unwrap();
                    store.write_at(&t, 0, &buf).unwrap();
                }
            }
        }
    }

    /// An unsigned capture (no COMMIT binds its key slots) whose KEYS changed by one bit
    /// after the capture: no key opens it any more, and the keyless verify says so, naming
    /// KEYS (it used to say OK).
    #[test]
    fn a_key_slot_damaged_after_the_capture_is_found_without_a_key() {
        let data = disk();
        let (mut store, id) = medium(&data);
        assert!(verify_keyless(&mut store, &mut NoProgress)
            .unwrap()
            .problems
            .is_empty());
        let path = "MGEAR/web01/KEYS";
        let mut b = vec![0u8; store.len(path).unwrap().unwrap() as usize];
        store.read_exact_at(path, 0, &mut b).unwrap();
        let last = b.len() - 5;
        b[last] ^= 1;
        store.write_at(path, 0, &b).unwrap();
        assert!(unlock_data_key(&mut store, "web01", &Unlock::Identity(id)).is_err());
        let r = verify_keyless(&mut store, &mut NoProgress).unwrap();
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        let p = r.problems[0].to_string();
        // Keyless, a replaced slot and a planted generation look alike: both are said.
        assert!(
            p.contains(path)
                && p.contains("key slot KEYS is damaged")
                && p.contains("or generation 1 is another capture's, put here"),
            "{p}"
        );
        // Signed (a COMMIT binds the slots too): the same change is reported once, as the
        // slot's, not a second time against the COMMIT.
        let expected = crate::commit::expected_commit(&mut store, "web01", 1)
            .unwrap()
            .unwrap();
        let recorded = crate::commit::Commit {
            keys_hash: blake3::hash(&{
                let mut o = b.clone();
                o[last] ^= 1;
                o
            })
            .into(),
            ..expected
        };
        crate::commit::write_commit(
            &mut store,
            &crate::commit::CommitFile {
                commit: recorded,
                signatures: Vec::new(),
            },
        )
        .unwrap();
        let r = verify_keyless(&mut store, &mut NoProgress).unwrap();
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(
            r.problems[0]
                .to_string()
                .contains("key slot KEYS is damaged"),
            "{:?}",
            r.problems
        );
        // All slots gone, as an erase leaves them: said once, as such.
        store.remove_file(path).unwrap();
        let r = verify_keyless(&mut store, &mut NoProgress).unwrap();
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(
            r.problems[0]
                .to_string()
                .contains("no key slot (KEYS or KEYPASS)")
                && r.problems[0].to_string().contains("crypto-erase"),
            "{:?}",
            r.problems
        );
        store.write_at(path, 0, &b).unwrap();
        // A KEYPASS planted beside it is named too.
        store
            .write_at("MGEAR/web01/KEYPASS", 0, b"age-encryption.org/v1\n")
            .unwrap();
        let r = verify_keyless(&mut store, &mut NoProgress).unwrap();
        assert!(
            r.problems
                .iter()
                .any(|p| p.to_string().contains("KEYPASS was added after")),
            "{:?}",
            r.problems
        );
    }

    /// Someone's folder under MGEAR/ (photos, no key slot, no generation) is no capture: it was
    /// counted as one and called undecryptable "as a crypto-erase leaves it".
    #[test]
    fn a_folder_of_someones_files_under_mgear_is_no_capture() {
        let (mut store, _) = medium(&disk());
        store.create_dir_all("MGEAR/vacation/2026").unwrap();
        store
            .write_at("MGEAR/vacation/IMG_0001.JPG", 0, b"\xff\xd8\xff")
            .unwrap();
        let r = verify_keyless(&mut store, &mut NoProgress).unwrap();
        assert_eq!(r.problems, Vec::new());
        assert_eq!(r.captures, 1);
        // With a generation directory in it, it is a capture whose key slots are gone.
        store.create_dir_all("MGEAR/vacation/G0001").unwrap();
        let r = verify_keyless(&mut store, &mut NoProgress).unwrap();
        assert!(
            r.problems
                .iter()
                .any(|p| p.to_string().contains("no key slot (KEYS or KEYPASS)")),
            "{:?}",
            r.problems
        );
    }

    /// An empty generation directory is no unfinished capture to resume: verify says what
    /// `medium fsck` says of it (it advised a resume, fsck "nothing can resume it").
    #[test]
    fn an_empty_generation_directory_is_not_sent_to_a_resume() {
        let (mut store, _) = medium(&disk());
        store.create_dir_all("MGEAR/web01/G0005").unwrap();
        let r = verify_keyless(&mut store, &mut NoProgress).unwrap();
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        let p = r.problems[0].to_string();
        assert!(
            p.contains("generation 5") && p.contains("no valid journal"),
            "{p}"
        );
        assert!(
            p.contains("medium fsck") && !p.contains("resume the capture"),
            "{p}"
        );
    }

    /// A segment file deleted from the medium: the reader said "record lies past the end of
    /// its segment (truncated segment)".
    #[test]
    fn a_deleted_segment_is_named_missing_not_truncated() {
        let (mut store, id) = medium(&disk());
        store.remove_file("MGEAR/web01/G0001/SEG-00000").unwrap();
        let unlock = Unlock::Identity(id);
        let mut r = CaptureReader::open(&mut store, "web01", None, &unlock).unwrap();
        let e = r.read_chunk(0).unwrap_err().to_string();
        assert!(
            e.contains("MGEAR/web01/G0001/SEG-00000) is missing from the medium"),
            "{e}"
        );
        assert!(!e.contains("truncated"), "{e}");
    }

    /// A segment cut inside its trailer: verify named the last record, whole, as running
    /// past the end of the segment.
    #[test]
    fn a_cut_trailer_is_named_not_the_record_before_it() {
        let (mut store, _) = medium(&disk());
        let path = "MGEAR/web01/G0001/SEG-00000";
        let len = store.len(path).unwrap().unwrap();
        store.set_len(path, len - 10).unwrap();
        let r = verify_keyless(&mut store, &mut NoProgress).unwrap();
        let all: Vec<String> = r.problems.iter().map(|p| p.to_string()).collect();
        assert!(
            all.iter().any(|p| p.contains("trailer is cut short")
                && p.contains("after record 3")
                && p.contains("records before are whole")),
            "{all:?}"
        );
        assert!(
            !all.iter().any(|p| p.contains("record runs past")),
            "{all:?}"
        );
        // A cut into the last record itself is still the record's.
        store.set_len(path, len - 64 - 5).unwrap();
        let r = verify_keyless(&mut store, &mut NoProgress).unwrap();
        let all: Vec<String> = r.problems.iter().map(|p| p.to_string()).collect();
        assert!(
            all.iter().any(|p| p.contains("record runs past")),
            "{all:?}"
        );
    }

    /// A COMMIT whose directory entry's name was damaged (`COꩍMIT`): the keyless verify said
    /// OK of a medium the keyed one and ingest refused as never signed.
    #[test]
    fn a_format_file_under_a_damaged_name_is_found_without_a_key() {
        let (mut store, _) = medium(&disk());
        let from = "MGEAR/web01/G0001/INDEX";
        let mut b = vec![0u8; store.len(from).unwrap().unwrap() as usize];
        store.read_exact_at(from, 0, &mut b).unwrap();
        store.remove_file(from).unwrap();
        store
            .write_at("MGEAR/web01/G0001/IN\u{a90d}EX", 0, &b)
            .unwrap();
        let r = verify_keyless(&mut store, &mut NoProgress).unwrap();
        let all: Vec<String> = r.problems.iter().map(|p| p.to_string()).collect();
        assert!(
            all.iter().any(|p| p.contains("IN\u{a90d}EX")
                && p.contains("from INDEX, which this generation lacks")),
            "{all:?}"
        );
        // A file of the user's own, nothing like a format file, is no finding; nor is a
        // format file's name in another case (a FAT medium finds it as it is).
        let (mut store, _) = medium(&disk());
        store
            .write_at("MGEAR/web01/G0001/NOTES.TXT", 0, b"x")
            .unwrap();
        let r = verify_keyless(&mut store, &mut NoProgress).unwrap();
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }

    #[test]
    fn any_case_of_a_name_finds_the_stored_capture() {
        let data = disk();
        let (mut store, id) = medium(&data);
        let unlock = Unlock::Identity(id);
        for asked in ["web01", "WEB01", "Web01"] {
            assert_eq!(stored_name(&mut store, asked).unwrap(), "web01");
            let mut r = CaptureReader::open(&mut store, asked, None, &unlock).unwrap();
            assert_eq!(r.name(), "web01");
            let mut out = Vec::new();
            for i in 0..r.chunk_count() {
                match r.read_chunk(i).unwrap() {
                    ChunkData::Zero { len } => out.resize(out.len() + len as usize, 0),
                    ChunkData::Data(d) => out.extend_from_slice(&d),
                }
            }
            assert_eq!(out, data, "{asked}");
            drop(r);
            let (key, slot_id) = unlock_data_key(&mut store, asked, &unlock).unwrap();
            assert_eq!(slot_id, capture_id(&mut store, "web01").unwrap());
            assert_eq!(capture_id(&mut store, asked).unwrap(), slot_id);
            let r = CaptureReader::open_with_key(&mut store, asked, Some(1), &key).unwrap();
            assert_eq!(r.generation(), 1);
            let keyless = verify_capture_keyless(&mut store, asked, &mut NoProgress).unwrap();
            assert!(keyless.is_ok() && keyless.records > 0, "{keyless:?}");
            let full = verify_full(&mut store, asked, None, &unlock, &mut NoProgress).unwrap();
            assert!(full.is_ok(), "{asked}: {:?}", full.problems);
        }
        // A name that is not there stays as asked: the callers say "not found".
        assert_eq!(stored_name(&mut store, "WEB02").unwrap(), "WEB02");
        assert!(matches!(
            CaptureReader::open(&mut store, "WEB02", None, &unlock),
            Err(Error::NoCapture { name }) if name == "WEB02"
        ));
        assert!(matches!(
            stored_name(&mut store, "web/01"),
            Err(Error::InvalidName { .. })
        ));
    }

    #[test]
    fn names_differing_only_by_case_are_refused_naming_both() {
        let (mut store, id) = medium(&disk());
        copy_tree(&mut store, "MGEAR/web01", "MGEAR/WEB01");
        for asked in ["web01", "WEB01", "wEb01"] {
            let e = stored_name(&mut store, asked).unwrap_err();
            let msg = e.to_string();
            assert!(
                matches!(e, Error::Corrupt { .. })
                    && msg.contains("MGEAR/WEB01 and MGEAR/web01")
                    && msg.contains("differ only by case"),
                "{msg}"
            );
            let unlock = Unlock::Identity(id.clone());
            assert!(CaptureReader::open(&mut store, asked, None, &unlock).is_err());
            assert!(verify_capture_keyless(&mut store, asked, &mut NoProgress).is_err());
        }
        // The whole-medium check reports the clash once, beside checking both.
        let report = verify_keyless(&mut store, &mut NoProgress).unwrap();
        assert_eq!(report.captures, 2);
        let clashes: Vec<_> = report
            .problems
            .iter()
            .filter(|p| p.what.contains("differ only by case"))
            .collect();
        assert_eq!(clashes.len(), 1, "{:?}", report.problems);
    }
}
