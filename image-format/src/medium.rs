//! Keyless helpers for finding things on a medium: generations of a
//! capture, their manifests and journals, file hashes. Shared by the writer,
//! the readers and the verifiers; `no_std`.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use crate::error::{Error, Location, Result, StoreCtx};
use crate::layout::{
    self, Journal, Manifest, ManifestFile, JOURNAL_A, JOURNAL_B, JOURNAL_LEN, MANIFEST_FILE,
};
use crate::store::{Entry, EntryKind, Store, StoreError};

/// Largest manifest accepted (all segments of a 100 TB generation fit easily).
pub(crate) const MAX_MANIFEST: u64 = 16 * 1024 * 1024;

/// Entries of `dir`, or none if it does not exist.
pub(crate) fn list_or_empty<S: Store + ?Sized>(store: &mut S, dir: &str) -> Result<Vec<Entry>> {
    match store.list(dir) {
        Ok(v) => Ok(v),
        Err(StoreError::NotFound) => Ok(Vec::new()),
        Err(e) => Err(e).at(dir),
    }
}

/// Names of capture directories under `MGEAR/`, sorted (valid names only).
pub fn capture_names<S: Store + ?Sized>(store: &mut S) -> Result<Vec<String>> {
    let mut v: Vec<String> = list_or_empty(store, layout::ROOT_DIR)?
        .into_iter()
        .filter(|e| e.kind == EntryKind::Dir && layout::validate_name(&e.name).is_ok())
        .map(|e| e.name)
        .collect();
    v.sort();
    Ok(v)
}

/// A directory at the medium's root one or two characters off [`layout::ROOT_DIR`] where
/// that directory is missing: most likely it with a damaged name, its captures unread (one
/// flipped bit, `MGEAR0`, hid every capture, and a capture then made a new `MGEAR` beside it,
/// stranding them). Said as a finding; `None` when the root holds `MGEAR` or nothing near it.
pub fn damaged_root_dir<S: Store + ?Sized>(store: &mut S) -> Option<String> {
    let entries = store.list("").ok()?;
    if entries
        .iter()
        .any(|e| e.name.eq_ignore_ascii_case(layout::ROOT_DIR))
    {
        return None;
    }
    // Up to two characters replaced (`MGEAR` -> `MGxAR`), or one added, dropped or replaced
    // (a padding space of its 8.3 name turned into a character: `MGEAR0`): no nearer, so a
    // directory of the disk's owner (`GEARS`) is not taken for it.
    let near = |name: &str| {
        let upper = |s: &str| -> Vec<char> { s.chars().map(|c| c.to_ascii_uppercase()).collect() };
        replaced_at_most_two(name, layout::ROOT_DIR)
            || edit_distance(&upper(name), &upper(layout::ROOT_DIR)) <= 1
    };
    let found = entries
        .iter()
        .find(|e| e.kind == EntryKind::Dir && near(&e.name))?;
    Some(alloc::format!(
        "the medium's root holds a directory {:?} and no {}: one or two characters off, it is \
         most likely {} with a damaged name, holding the captures (none of them is read, and a \
         new capture would start another {} beside it): give it its name back on a copy of the \
         medium (with mtools: `mren -i COPY ::/{} ::/{}`) and check the copy",
        found.name,
        layout::ROOT_DIR,
        layout::ROOT_DIR,
        layout::ROOT_DIR,
        found.name,
        layout::ROOT_DIR
    ))
}

/// Whether names `a` and `b` are as long and differ, without regard to case, in one or two
/// characters: a name damaged on the medium (a flipped bit or two of a directory entry).
pub(crate) fn replaced_at_most_two(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    a.len() == b.len()
        && a.iter()
            .zip(&b)
            .filter(|(x, y)| !x.eq_ignore_ascii_case(y))
            .count()
            <= 2
}

/// Levenshtein distance of two short names.
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, x) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(x != y))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Generation numbers present for capture `name`, ascending.
pub fn generations<S: Store + ?Sized>(store: &mut S, name: &str) -> Result<Vec<u32>> {
    let mut v: Vec<u32> = list_or_empty(store, &layout::capture_dir(name))?
        .into_iter()
        .filter(|e| e.kind == EntryKind::Dir)
        .filter_map(|e| layout::parse_generation_dir(&e.name))
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// What a directory no entry names any more held ([`lost_dir_kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostDir {
    /// A generation's (`MANIFEST`, `INDEX`, journals).
    Generation,
    /// A capture's (`KEYS`, `G0001`...; a machine set's too: they are not told apart by name).
    Capture,
}

impl LostDir {
    /// "a generation's", "a capture's": how messages name it.
    pub fn what(self) -> &'static str {
        match self {
            LostDir::Generation => "a generation's",
            LostDir::Capture => "a capture's",
        }
    }
}

/// What a directory no entry names any more held, by the names in its first cluster. `None`:
/// neither a generation's nor a capture's.
pub fn lost_dir_kind(names: &[String]) -> Option<LostDir> {
    let has = |n: &str| names.iter().any(|e| e.eq_ignore_ascii_case(n));
    if has(layout::MANIFEST_FILE)
        || has(layout::INDEX_FILE)
        || has(layout::IPART_FILE)
        || has(layout::JOURNAL_A)
    {
        Some(LostDir::Generation)
    } else if has(layout::KEYS_FILE)
        || names
            .iter()
            .any(|e| layout::parse_generation_dir(e).is_some())
    {
        Some(LostDir::Capture)
    } else {
        None
    }
}

/// The directories of `kind` in `dir` whose entry was deleted or damaged since
/// ([`Store::lost_dirs`]), each as the names its first cluster holds; none where the store
/// cannot say (the readers that ask go on with what they can read).
pub fn lost_dirs_of<S: Store + ?Sized>(
    store: &mut S,
    dir: &str,
    kind: LostDir,
) -> Vec<Vec<String>> {
    store
        .lost_dirs(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|names| lost_dir_kind(names) == Some(kind))
        .collect()
}

/// The entries of `dir` named as a directory of `kind` that read as empty files: a capture's
/// or a generation's directory whose entry lost its directory mark (a directory's entry has
/// size 0, and the format keeps no such file there); their names.
pub fn unmarked_dirs_of<S: Store + ?Sized>(store: &mut S, dir: &str, kind: LostDir) -> Vec<String> {
    store
        .list(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.kind != EntryKind::Dir && e.len == 0)
        .filter(|e| match kind {
            LostDir::Capture => layout::validate_name(&e.name).is_ok(),
            LostDir::Generation => layout::parse_generation_dir(&e.name).is_some(),
        })
        .map(|e| e.name)
        .collect()
}

/// The finding a check of the whole medium makes of clusters nothing holds on a volume
/// closed cleanly, or on one left mid-write when a finished generation's directory is among
/// them ([`crate::store::fatmap::lost_chains`], [`crate::store::fatmap::LostDir::finished_generation`]).
#[cfg(feature = "fat")]
pub fn lost_finding(lost: &crate::store::fatmap::Lost, left_mid_write: bool) -> String {
    let mut s = alloc::format!(
        "{} cluster{} in {} chain{} {} marked in use by no file or directory, on a medium \
         {}: a directory entry was deleted or damaged since",
        lost.clusters,
        if lost.clusters == 1 { "" } else { "s" },
        lost.chains,
        if lost.chains == 1 { "" } else { "s" },
        if lost.clusters == 1 { "is" } else { "are" },
        match left_mid_write {
            false => "closed cleanly, which no write leaves",
            true => {
                "left mid-write (its dirty mark is set), but among them is a finished \
                 generation's directory, which no cut write leaves"
            }
        }
    );
    for crate::store::fatmap::LostDir { first, names, .. } in lost.dirs.iter().take(4) {
        let shown: Vec<&str> = names.iter().take(6).map(String::as_str).collect();
        let more = if names.len() > shown.len() {
            ", ..."
        } else {
            ""
        };
        s.push_str(&match lost_dir_kind(names).map(LostDir::what) {
            Some(kind) => alloc::format!(
                "; among them, from cluster {first}, {kind} directory (it holds {}{more}): it and \
                 what it holds are invisible to every reader",
                shown.join(", ")
            ),
            None => alloc::format!(
                "; among them, from cluster {first}, a directory holding {}{more}",
                if shown.is_empty() {
                    "nothing".into()
                } else {
                    shown.join(", ")
                }
            ),
        });
    }
    if lost
        .dirs
        .iter()
        .any(|d| lost_dir_kind(&d.names) == Some(LostDir::Generation))
    {
        s.push_str(
            ", and an ingest that is not given the generation would take the one before it as \
             the newest",
        );
    }
    s.push_str(
        ". Do not repair or write the medium (a repair frees them for good; the writers \
         refuse it); `fsck.fat -n` of a copy lists them; ask how the medium was handled",
    );
    s
}

/// Directories in capture `name`'s directory that no generation is named (`G3`,
/// `g0002.old`, a name damaged in the directory): what they hold is invisible to every
/// reader, so a generation renamed away would go unnoticed. Their names, in listing order.
pub fn stray_generation_dirs<S: Store + ?Sized>(store: &mut S, name: &str) -> Result<Vec<String>> {
    Ok(list_or_empty(store, &layout::capture_dir(name))?
        .into_iter()
        .filter(|e| e.kind == EntryKind::Dir && layout::parse_generation_dir(&e.name).is_none())
        .map(|e| e.name)
        .collect())
}

/// Reads a whole file of at most `max` bytes; `Ok(None)` if missing.
pub(crate) fn read_file<S: Store + ?Sized>(
    store: &mut S,
    path: &str,
    max: u64,
    at: &Location,
) -> Result<Option<Vec<u8>>> {
    let Some(len) = store.len(path).at(path)? else {
        return Ok(None);
    };
    if len > max {
        return Err(Error::corrupt(
            at.clone().file(path),
            alloc::format!("file is {len} bytes, more than the {max} this format allows"),
        ));
    }
    let mut buf = alloc::vec![0u8; len as usize];
    store.read_exact_at(path, 0, &mut buf).at(path)?;
    Ok(Some(buf))
}

/// blake3 of capture `name`'s key slot `file` (`KEYS`, `KEYPASS`) as the medium holds it;
/// `Ok(None)` if the capture has no such slot. What a COMMIT and a MANIFEST bind.
pub(crate) fn key_slot_digest<S: Store + ?Sized>(
    store: &mut S,
    name: &str,
    file: &str,
) -> Result<Option<[u8; 32]>> {
    let p = alloc::format!("{}/{file}", layout::capture_dir(name));
    let at = Location::capture(name).file(&p);
    Ok(read_file(store, &p, crate::commit::MAX_KEY_SLOT_LEN, &at)?
        .map(|b| *blake3::hash(&b).as_bytes()))
}

/// The decoded manifest of a generation; `Ok(None)` if it has none yet.
pub(crate) fn read_manifest<S: Store + ?Sized>(
    store: &mut S,
    name: &str,
    generation: u32,
) -> Result<Option<ManifestFile>> {
    let path = layout::generation_file(name, generation, MANIFEST_FILE);
    let at = Location::capture(name).generation(generation).file(&path);
    let Some(bytes) = read_file(store, &path, MAX_MANIFEST, &at)? else {
        return Ok(None);
    };
    let f = Manifest::decode(&bytes).map_err(|w| Error::corrupt(at.clone(), w))?;
    if f.manifest.generation != generation || f.manifest.name != name {
        // Every generation of a capture shares its id: a MANIFEST of this name but another
        // id is another capture's (from another medium), not one of this capture's own moved.
        let own = own_capture_id(store, name, generation)?;
        let hex = |b: &[u8]| {
            b.iter()
                .map(|x| alloc::format!("{x:02x}"))
                .collect::<String>()
        };
        let what = match own {
            Some(id)
                if id != f.manifest.capture_id && f.manifest.name.eq_ignore_ascii_case(name) =>
            {
                alloc::format!(
                    "manifest belongs to another capture named {} (its generation {}, capture id \
                     {}; this capture's generations have id {}): a file copied in from another \
                     capture or medium",
                    f.manifest.name,
                    f.manifest.generation,
                    hex(&f.manifest.capture_id),
                    hex(&id)
                )
            }
            _ => alloc::format!(
                "manifest belongs to capture {} generation {} (moved or replayed file)",
                f.manifest.name,
                f.manifest.generation
            ),
        };
        return Err(Error::corrupt(at, what));
    }
    Ok(Some(f))
}

/// The capture id the other generations of capture `name` (all but `but`) agree on in
/// their MANIFESTs, each in its own place; `None` when none reads or they disagree.
fn own_capture_id<S: Store + ?Sized>(
    store: &mut S,
    name: &str,
    but: u32,
) -> Result<Option<[u8; 16]>> {
    let mut id = None;
    for g in generations(store, name)?.into_iter().filter(|&g| g != but) {
        let path = layout::generation_file(name, g, MANIFEST_FILE);
        let at = Location::capture(name).generation(g).file(&path);
        // Unreadable here is that generation's own finding, reported where it is read.
        let Ok(Some(bytes)) = read_file(store, &path, MAX_MANIFEST, &at) else {
            continue;
        };
        let Ok(f) = Manifest::decode(&bytes) else {
            continue;
        };
        if f.manifest.generation != g || f.manifest.name != name {
            continue;
        }
        match id {
            None => id = Some(f.manifest.capture_id),
            Some(i) if i != f.manifest.capture_id => return Ok(None),
            Some(_) => {}
        }
    }
    Ok(id)
}

/// The newest valid journal slot of a generation; `Ok(None)` if neither
/// slot holds a valid one (a torn write only ever damages one slot).
pub(crate) fn read_journal<S: Store + ?Sized>(
    store: &mut S,
    name: &str,
    generation: u32,
) -> Result<Option<Journal>> {
    let mut best: Option<Journal> = None;
    for slot in [JOURNAL_A, JOURNAL_B] {
        let path = layout::generation_file(name, generation, slot);
        let Some(len) = store.len(&path).at(&path)? else {
            continue;
        };
        if len < JOURNAL_LEN as u64 {
            continue;
        }
        let mut buf = [0u8; JOURNAL_LEN];
        store.read_exact_at(&path, 0, &mut buf).at(&path)?;
        if let Ok(j) = Journal::decode(&buf) {
            if j.generation == generation && best.as_ref().is_none_or(|b| j.seq > b.seq) {
                best = Some(j);
            }
        }
    }
    Ok(best)
}

/// Cuts what unfinished generations wrote after their last checkpoint:
/// the open segment's tail past the journal's `open_len`, segments started
/// after it, and IPART past `ipart_len`. Keyless, and exactly what the
/// writer's resume cuts first (it would never read those bytes), done
/// earlier: a medium that filled up gets that room back before a capture
/// joins it to a span, which has to write the span's map onto it. Returns
/// the bytes freed.
pub fn cut_uncommitted<S: Store + ?Sized>(store: &mut S) -> Result<u64> {
    uncommitted(store, true, None)
}

/// The bytes [`cut_uncommitted`] would free of capture `name`, nothing changed: room its
/// resume gets back, which a free-space count made before it (a dry run's) has to add
/// ([`Store::free_space_resuming`]).
pub fn uncommitted_bytes<S: Store + ?Sized>(store: &mut S, name: &str) -> Result<u64> {
    uncommitted(store, false, Some(name))
}

fn uncommitted<S: Store + ?Sized>(store: &mut S, cut: bool, only: Option<&str>) -> Result<u64> {
    let mut freed = 0u64;
    for name in capture_names(store)? {
        if only.is_some_and(|n| !n.eq_ignore_ascii_case(&name)) {
            continue;
        }
        let Some(&g) = generations(store, &name)?.last() else {
            continue;
        };
        let manifest = layout::generation_file(&name, g, MANIFEST_FILE);
        if store.len(&manifest).at(&manifest)?.is_some() {
            continue;
        }
        let Some(j) = read_journal(store, &name, g)? else {
            // Cut off at its start (no journal: a capture cut before it, or a `medium rm`
            // cut after it went): the capture that starts it over frees every file in it,
            // which the space check counted as taken ("does not fit", when it did).
            if !cut && crate::verify::finished_evidence(store, &name, g, &[g])?.is_none() {
                let dir = layout::generation_dir(&name, g);
                freed += list_or_empty(store, &dir)?
                    .iter()
                    .filter(|e| e.kind == crate::store::EntryKind::File)
                    .map(|e| e.len)
                    .sum::<u64>();
            }
            continue;
        };
        if j.state != layout::JournalState::InProgress {
            continue;
        }
        // Segments 0..closed are closed; `closed` is open when open_len > 0.
        let keep = j.closed_segments + u32::from(j.open_len > 0);
        let dir = layout::generation_dir(&name, g);
        for e in list_or_empty(store, &dir)? {
            let path = alloc::format!("{dir}/{}", e.name);
            match layout::parse_segment_name(&e.name) {
                Some(s) if s >= keep => {
                    if cut {
                        store.remove_file(&path).at(&path)?;
                    }
                    freed += e.len;
                }
                Some(s) if s == j.closed_segments && e.len > j.open_len => {
                    if cut {
                        store.set_len(&path, j.open_len).at(&path)?;
                    }
                    freed += e.len - j.open_len;
                }
                _ if e.name == layout::IPART_FILE && e.len > j.ipart_len => {
                    if cut {
                        store.set_len(&path, j.ipart_len).at(&path)?;
                    }
                    freed += e.len - j.ipart_len;
                }
                _ => {}
            }
        }
        if cut && freed > 0 {
            store.sync(&dir).at(&dir)?;
        }
    }
    Ok(freed)
}

/// Streams `path[range]` through `f` in pieces of `buf`'s size.
pub(crate) fn stream<S: Store + ?Sized>(
    store: &mut S,
    path: &str,
    start: u64,
    end: u64,
    buf: &mut [u8],
    mut f: impl FnMut(&[u8]),
) -> Result<()> {
    let mut off = start;
    while off < end {
        let n = ((end - off) as usize).min(buf.len());
        store.read_exact_at(path, off, &mut buf[..n]).at(path)?;
        f(&buf[..n]);
        off += n as u64;
    }
    Ok(())
}

/// blake3 and length of a whole file.
pub(crate) fn hash_file<S: Store + ?Sized>(
    store: &mut S,
    path: &str,
    buf: &mut [u8],
) -> Result<Option<(u64, [u8; 32])>> {
    let Some(len) = store.len(path).at(path)? else {
        return Ok(None);
    };
    let mut h = blake3::Hasher::new();
    stream(store, path, 0, len, buf, |b| {
        h.update(b);
    })?;
    Ok(Some((len, *h.finalize().as_bytes())))
}

#[cfg(feature = "crypto")]
/// Digest of a whole disk: blake3 (derive-key mode, context below) over the
/// disk size, the chunk size and every chunk's keyed id in order. Readers
/// check each chunk's id, so a full read that passes proves the disk is the
/// one captured.
pub(crate) fn disk_digest<'a>(
    disk_size: u64,
    chunk_size: u32,
    ids: impl Iterator<Item = &'a [u8; 32]>,
) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("MotionGear disk digest v1");
    h.update(&disk_size.to_le_bytes());
    h.update(&chunk_size.to_le_bytes());
    for id in ids {
        h.update(id);
    }
    *h.finalize().as_bytes()
}

// A `&mut` store or a boxed one is a store too, so callers can lend a store
// to a reader or hand over `Box<dyn Store>` (the simulator does).
impl<T: Store + ?Sized> Store for &mut T {
    fn list(&mut self, dir: &str) -> Result<Vec<Entry>, StoreError> {
        (**self).list(dir)
    }
    fn len(&mut self, path: &str) -> Result<Option<u64>, StoreError> {
        (**self).len(path)
    }
    fn read_at(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError> {
        (**self).read_at(path, offset, buf)
    }
    fn write_at(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        (**self).write_at(path, offset, data)
    }
    fn set_len(&mut self, path: &str, len: u64) -> Result<(), StoreError> {
        (**self).set_len(path, len)
    }
    fn create_dir_all(&mut self, path: &str) -> Result<(), StoreError> {
        (**self).create_dir_all(path)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<(), StoreError> {
        (**self).rename(from, to)
    }
    fn remove_file(&mut self, path: &str) -> Result<(), StoreError> {
        (**self).remove_file(path)
    }
    fn remove_dir(&mut self, path: &str) -> Result<(), StoreError> {
        (**self).remove_dir(path)
    }
    fn sync(&mut self, path: &str) -> Result<(), StoreError> {
        (**self).sync(path)
    }
    fn free_space(&mut self) -> Result<Option<u64>, StoreError> {
        (**self).free_space()
    }
    fn free_space_resuming(&mut self, name: &str) -> Result<Option<u64>, StoreError> {
        (**self).free_space_resuming(name)
    }
    fn used_space(&mut self) -> Result<Option<u64>, StoreError> {
        (**self).used_space()
    }
    fn file_system_findings(&mut self) -> Result<Vec<String>, StoreError> {
        (**self).file_system_findings()
    }
    fn chain_findings(&mut self) -> Result<Vec<String>, StoreError> {
        (**self).chain_findings()
    }
    fn lost_dirs(&mut self, under: &str) -> Result<Vec<Vec<String>>, StoreError> {
        (**self).lost_dirs(under)
    }
    fn lost_clusters(&mut self) -> Result<Option<String>, StoreError> {
        (**self).lost_clusters()
    }
    fn left_mid_write(&self) -> bool {
        (**self).left_mid_write()
    }
    fn damaged_hints(&self) -> Option<String> {
        (**self).damaged_hints()
    }
    fn room(&mut self, path: &str) -> Result<Option<u64>, StoreError> {
        (**self).room(path)
    }
    fn locate(
        &mut self,
        path: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<crate::store::Located>, StoreError> {
        (**self).locate(path, offset, len)
    }
    // `close` keeps the default: a borrowed store is closed by its owner.
    fn span(&self) -> Option<&dyn crate::span::SpanView> {
        (**self).span()
    }
}

impl<T: Store + ?Sized> Store for Box<T> {
    fn list(&mut self, dir: &str) -> Result<Vec<Entry>, StoreError> {
        (**self).list(dir)
    }
    fn len(&mut self, path: &str) -> Result<Option<u64>, StoreError> {
        (**self).len(path)
    }
    fn read_at(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError> {
        (**self).read_at(path, offset, buf)
    }
    fn write_at(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        (**self).write_at(path, offset, data)
    }
    fn set_len(&mut self, path: &str, len: u64) -> Result<(), StoreError> {
        (**self).set_len(path, len)
    }
    fn create_dir_all(&mut self, path: &str) -> Result<(), StoreError> {
        (**self).create_dir_all(path)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<(), StoreError> {
        (**self).rename(from, to)
    }
    fn remove_file(&mut self, path: &str) -> Result<(), StoreError> {
        (**self).remove_file(path)
    }
    fn remove_dir(&mut self, path: &str) -> Result<(), StoreError> {
        (**self).remove_dir(path)
    }
    fn sync(&mut self, path: &str) -> Result<(), StoreError> {
        (**self).sync(path)
    }
    fn free_space(&mut self) -> Result<Option<u64>, StoreError> {
        (**self).free_space()
    }
    fn free_space_resuming(&mut self, name: &str) -> Result<Option<u64>, StoreError> {
        (**self).free_space_resuming(name)
    }
    fn used_space(&mut self) -> Result<Option<u64>, StoreError> {
        (**self).used_space()
    }
    fn file_system_findings(&mut self) -> Result<Vec<String>, StoreError> {
        (**self).file_system_findings()
    }
    fn chain_findings(&mut self) -> Result<Vec<String>, StoreError> {
        (**self).chain_findings()
    }
    fn lost_dirs(&mut self, under: &str) -> Result<Vec<Vec<String>>, StoreError> {
        (**self).lost_dirs(under)
    }
    fn lost_clusters(&mut self) -> Result<Option<String>, StoreError> {
        (**self).lost_clusters()
    }
    fn left_mid_write(&self) -> bool {
        (**self).left_mid_write()
    }
    fn damaged_hints(&self) -> Option<String> {
        (**self).damaged_hints()
    }
    fn room(&mut self, path: &str) -> Result<Option<u64>, StoreError> {
        (**self).room(path)
    }
    fn locate(
        &mut self,
        path: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<crate::store::Located>, StoreError> {
        (**self).locate(path, offset, len)
    }
    fn close(self: Box<Self>) -> Result<(), StoreError> {
        T::close(*self)
    }
    fn span(&self) -> Option<&dyn crate::span::SpanView> {
        (**self).span()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    /// A generation cut off at its start that still holds files (a `medium rm` cut after
    /// the journal went): the capture that starts it over frees them, so the room it counts
    /// on includes them (it said "does not fit" of a capture that fitted); never a finished
    /// one's.
    #[test]
    fn a_generation_cut_off_at_its_start_counts_as_room_to_start_over() {
        let mut s = MemStore::new();
        s.create_dir_all("MGEAR/web01/G0001").unwrap();
        s.write_at("MGEAR/web01/G0001/SEG-00000", 0, &[5u8; 1000])
            .unwrap();
        assert_eq!(uncommitted_bytes(&mut s, "WEB01").unwrap(), 1000);
        assert_eq!(uncommitted_bytes(&mut s, "db01").unwrap(), 0);
        s.write_at("MGEAR/web01/G0001/COMMIT", 0, &[1u8; 10])
            .unwrap();
        assert_eq!(uncommitted_bytes(&mut s, "web01").unwrap(), 0);
    }

    /// One flipped bit in the root's entry (`MGEAR0`) hid every capture, and a capture then
    /// made a new `MGEAR` beside it: the near miss is named; an owner's directory is not.
    #[test]
    fn a_root_directory_one_character_off_is_named() {
        for (name, named) in [
            ("MGEAR0", true),
            ("MGEA", true),
            ("mgexr", true),
            ("MXEAX", true),
            ("GEARS", false),
            ("photos", false),
            ("MGEAR", false),
        ] {
            let mut s = MemStore::new();
            s.create_dir_all(&alloc::format!("{name}/web01")).unwrap();
            let said = damaged_root_dir(&mut s);
            assert_eq!(said.is_some(), named, "{name}: {said:?}");
            if let Some(said) = said {
                assert!(
                    said.contains(&alloc::format!("::/{name} ::/MGEAR")),
                    "{said}"
                );
            }
        }
        // Beside the real one, a near name is someone else's.
        let mut s = MemStore::new();
        s.create_dir_all("MGEAR/web01").unwrap();
        s.create_dir_all("MGEAR0").unwrap();
        assert_eq!(damaged_root_dir(&mut s), None);
    }
}
