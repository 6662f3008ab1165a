//! Spanning several media: one capture (or a machine set) whose data does
//! not fit on one medium continues on the next.
//!
//! The unit that moves between media is the **segment file**: every
//! `SEG-nnnnn` lives on exactly one medium of the span, and every other file
//! of the format (key slots, journal, IPART, INDEX, MANIFEST, SET, COMMIT) is
//! **mirrored** on every medium. So each medium alone knows the whole
//! capture (its manifest lists every segment's length and digest, its
//! encrypted index every chunk's place), verifies on its own without a key
//! (segments that live on another medium are reported as such, not as
//! missing), is sealed on its own by its appliance, and ingest can say from
//! any one medium exactly which chunks are still missing and on which medium
//! they are. The writer, the reader and the keyless verifier are unchanged:
//! they see the span as one [`Store`] ([`SpanStore`]), which places each new
//! segment on the first medium with room and tells the writer how far that
//! segment may grow ([`Store::room`]).
//!
//! Nothing here is trusted for integrity: the signed, MACed MANIFEST and SET
//! bind every segment's digest wherever it lives. The files below only say
//! where to look.
//!
//! # Byte layout (little-endian; FORMAT.md "Spanning several media")
//!
//! `MGEAR/SPAN`, one per medium, never mirrored (64 bytes):
//!
//! ```text
//! 0    8  SPAN_MAGIC = blake3("MotionGear span label v1")[0..8]
//! 8   12  version block: major u16 (1), minor u16 (0), incompat u32 (0), compat u32 (0)
//! 20  16  span id (random, the same on every medium of the span)
//! 36   2  ordinal of this medium in the span (0, 1, ... in the order they joined)
//! 38  22  reserved, zero
//! 60   4  crc32 of bytes 0..60
//! ```
//!
//! `MGEAR/SPANMAP`, mirrored on every medium, append-only, 128-byte entries:
//!
//! ```text
//! 0    1  kind: 1 medium joined (text = its label as given at capture),
//!               2 file placed on a medium (text = the file's path),
//!               3 medium declared lost (text = why)
//! 1    1  text length n (<= 120)
//! 2    2  ordinal of the medium the entry is about
//! 4  120  text (UTF-8), zero-padded
//! 124  4  crc32 of bytes 0..124
//! ```
//!
//! A later "placed" entry for the same path wins (a segment removed by a
//! resume and written again). A torn last entry (a crash while appending) is
//! ignored; a bad entry before the last is corruption.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::error::{Error, Location, Result, StoreCtx};
use crate::layout::{self, ROOT_DIR};
use crate::store::{Entry, EntryKind, Store, StoreError};

/// Mirrored files up to this size are compared byte for byte when a join mends the
/// members' copies; larger ones (index parts, indexes) only grow, and their length tells.
const MEND_COMPARE_MAX: u64 = 1 << 20;

/// Path of the per-medium label.
pub const SPAN_FILE: &str = "MGEAR/SPAN";
/// Path of the mirrored placement map.
pub const SPANMAP_FILE: &str = "MGEAR/SPANMAP";

// DO NOT MODIFY (see layout.rs): blake3("MotionGear span label v1")[0..8]
/// blake3("MotionGear span label v1")[0..8]
pub const SPAN_MAGIC: [u8; 8] = [0x5b, 0x1d, 0x0c, 0x93, 0x6e, 0x2a, 0xf4, 0x47];

const LABEL_LEN: usize = 64;
const ENTRY_LEN: usize = 128;
const TEXT_MAX: usize = 120;
/// Most media in one span (ordinals are u16; a shipment is never near this).
pub const MAX_MEDIA: usize = 256;

const KIND_JOINED: u8 = 1;
const KIND_PLACED: u8 = 2;
const KIND_LOST: u8 = 3;

/// A medium's label: which span it belongs to and its place in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanLabel {
    pub id: [u8; 16],
    pub ordinal: u16,
}

impl SpanLabel {
    /// The 64 bytes of `MGEAR/SPAN`.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(LABEL_LEN);
        v.extend_from_slice(&SPAN_MAGIC);
        v.extend_from_slice(&layout::VERSION_MAJOR.to_le_bytes());
        v.extend_from_slice(&layout::VERSION_MINOR.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&self.id);
        v.extend_from_slice(&self.ordinal.to_le_bytes());
        v.resize(60, 0);
        let c = crc32fast::hash(&v);
        v.extend_from_slice(&c.to_le_bytes());
        v
    }

    /// Parses `MGEAR/SPAN`.
    pub fn decode(b: &[u8]) -> core::result::Result<Self, &'static str> {
        if b.len() != LABEL_LEN {
            return Err("the span label is not 64 bytes long");
        }
        if b[..8] != SPAN_MAGIC {
            return Err("not a span label (bad magic)");
        }
        if crc32fast::hash(&b[..60]).to_le_bytes() != b[60..64] {
            return Err("the span label's CRC does not match");
        }
        if u16::from_le_bytes([b[8], b[9]]) != layout::VERSION_MAJOR {
            return Err("the span label was written by an unsupported major version");
        }
        if u32::from_le_bytes([b[12], b[13], b[14], b[15]]) != 0 {
            return Err("the span label uses incompatible features this version does not know");
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[20..36]);
        Ok(SpanLabel {
            id,
            ordinal: u16::from_le_bytes([b[36], b[37]]),
        })
    }
}

/// One medium of a span as the map knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub ordinal: u16,
    /// How the medium was named when it joined (`fat:/dev/sdb`, `appliance 3f2a…`).
    pub label: String,
    /// Declared lost (`capture --replace-medium`): nothing is expected from it.
    pub lost: bool,
}

impl Member {
    /// Whether `name` names this member as `--replace-medium` does: by the label it joined
    /// with, or as `#N`.
    pub fn is_named(&self, name: &str) -> bool {
        self.label == name || format!("#{}", self.ordinal) == name
    }
}

/// The placement map: the media of a span and which one holds each segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpanMap {
    pub members: Vec<Member>,
    /// Segment path → ordinal of the medium holding it.
    pub placed: BTreeMap<String, u16>,
    /// Every (segment path, ordinal) an entry of the map ever placed, the ones a later entry
    /// moved included: a medium holding a segment once placed on its label's member is
    /// that member, whatever a later (appended, unsigned) entry says.
    pub(crate) ever_placed: BTreeSet<(String, u16)>,
}

/// A capture's refusal of a span whose member `m` was given under the name it joined with
/// and holds no span label now: formatted since (it was told to attach the medium it had
/// just given).
pub fn reformatted_member(m: &Member) -> String {
    format!(
        "{} was given, but holds no span label now: it was formatted (or its MGEAR/ removed) \
         since it joined as medium #{} of this span, and what it held is gone from it. If that \
         is so, declare it lost and the capture stores its share again on the media given: \
         `--replace-medium '#{}'`; if the medium that joined is another one, give that one \
         instead",
        m.label, m.ordinal, m.ordinal
    )
}

impl SpanMap {
    /// Parses `MGEAR/SPANMAP`; a torn last entry is ignored.
    pub fn decode(b: &[u8]) -> core::result::Result<Self, String> {
        let mut map = SpanMap::default();
        let whole = b.len() / ENTRY_LEN;
        for (i, e) in b.chunks(ENTRY_LEN).enumerate() {
            let last = i + 1 >= whole;
            if e.len() < ENTRY_LEN || crc32fast::hash(&e[..124]).to_le_bytes() != e[124..128] {
                if last {
                    break;
                }
                return Err(format!("entry {i} is damaged (CRC mismatch)"));
            }
            let n = e[1] as usize;
            if n > TEXT_MAX {
                return Err(format!("entry {i}: text length {n} is over {TEXT_MAX}"));
            }
            let ordinal = u16::from_le_bytes([e[2], e[3]]);
            let text = core::str::from_utf8(&e[4..4 + n])
                .map_err(|_| format!("entry {i}: text is not UTF-8"))?
                .to_string();
            match e[0] {
                KIND_JOINED => {
                    if map.member(ordinal).is_some() {
                        return Err(format!("entry {i}: medium #{ordinal} joined twice"));
                    }
                    if map.members.len() >= MAX_MEDIA {
                        return Err(format!("more than {MAX_MEDIA} media"));
                    }
                    map.members.push(Member {
                        ordinal,
                        label: text,
                        lost: false,
                    });
                }
                KIND_PLACED => {
                    if map.member(ordinal).is_none() {
                        return Err(format!(
                            "entry {i}: {text} is placed on medium #{ordinal}, which never joined"
                        ));
                    }
                    map.ever_placed.insert((text.clone(), ordinal));
                    map.placed.insert(text, ordinal);
                }
                KIND_LOST => match map.members.iter_mut().find(|m| m.ordinal == ordinal) {
                    Some(m) => m.lost = true,
                    None => return Err(format!("entry {i}: unknown medium #{ordinal} lost")),
                },
                k => return Err(format!("entry {i}: unknown kind {k}")),
            }
        }
        Ok(map)
    }

    /// The member with `ordinal`.
    pub fn member(&self, ordinal: u16) -> Option<&Member> {
        self.members.iter().find(|m| m.ordinal == ordinal)
    }

    /// Which medium holds `path` (a segment), if the map says.
    pub fn holder(&self, path: &str) -> Option<&Member> {
        self.member(*self.placed.get(path)?)
    }

    /// "medium #1 (fat:/dev/sdc)".
    pub fn describe(&self, ordinal: u16) -> String {
        match self.member(ordinal) {
            Some(m) if m.lost => format!("medium #{ordinal} ({}, declared lost)", m.label),
            Some(m) => format!("medium #{ordinal} ({})", m.label),
            None => format!("medium #{ordinal}"),
        }
    }
}

fn entry(kind: u8, ordinal: u16, text: &str) -> Vec<u8> {
    // Labels are cut at a character boundary; paths are ASCII and short.
    let mut n = text.len().min(TEXT_MAX);
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    let mut v = Vec::with_capacity(ENTRY_LEN);
    v.push(kind);
    v.push(n as u8);
    v.extend_from_slice(&ordinal.to_le_bytes());
    v.extend_from_slice(&text.as_bytes()[..n]);
    v.resize(124, 0);
    let c = crc32fast::hash(&v);
    v.extend_from_slice(&c.to_le_bytes());
    v
}

/// The bytes of `MGEAR/SPANMAP` for `map`: members (and those lost), then every placed
/// segment.
fn map_bytes(map: &SpanMap) -> Vec<u8> {
    let mut bytes = Vec::new();
    for m in &map.members {
        bytes.extend_from_slice(&entry(KIND_JOINED, m.ordinal, &m.label));
        if m.lost {
            bytes.extend_from_slice(&entry(KIND_LOST, m.ordinal, "lost"));
        }
    }
    for (p, o) in &map.placed {
        bytes.extend_from_slice(&entry(KIND_PLACED, *o, p));
    }
    bytes
}

fn write_map<S: Store + ?Sized>(store: &mut S, bytes: &[u8]) -> Result<()> {
    store.create_dir_all(ROOT_DIR).at(ROOT_DIR)?;
    store.set_len(SPANMAP_FILE, 0).at(SPANMAP_FILE)?;
    store.write_at(SPANMAP_FILE, 0, bytes).at(SPANMAP_FILE)?;
    store.sync(SPANMAP_FILE).at(SPANMAP_FILE)
}

/// What one medium says about the span it belongs to (keyless).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanInfo {
    /// This medium's label; `None` when read through a [`SpanStore`] (the
    /// union of several media has no single label).
    pub label: Option<SpanLabel>,
    pub map: SpanMap,
    /// Why this medium's copy of the map did not decode (then `map` is
    /// empty): the map is mirrored on every medium of the span, so another
    /// medium's copy serves, and the data does not depend on it (the
    /// manifests say what each generation holds).
    pub map_damage: Option<String>,
    /// Why this medium's label did not read (then `label` is `None`): the
    /// medium cannot be placed in its span; its own files still verify.
    pub label_damage: Option<String>,
    /// The label is shorter than a label: its write was cut off (a kill or a pulled cable
    /// while the medium was joining a span). A join writes the label before anything else
    /// of the span, so such a medium holds nothing of it yet: a capture joins it again.
    pub label_cut: bool,
    /// Ordinals of the media read through a [`SpanStore`] (empty for one
    /// medium read alone: its `label` says which it is). A segment the map
    /// places on one of them and that is not there is missing, not elsewhere.
    pub attached: Vec<u16>,
}

impl SpanInfo {
    /// Whether segment `path`, absent from the store this was read from,
    /// lives on another medium of the span (and which).
    pub fn elsewhere(&self, path: &str) -> Option<u16> {
        let o = *self.map.placed.get(path)?;
        match self.label {
            Some(l) if l.ordinal == o => None,
            _ if self.attached.contains(&o) => None,
            _ => Some(o),
        }
    }
}

/// Reads the span label and map of a medium (or of a [`SpanStore`]);
/// `None` when the medium is not part of a span.
pub fn read_span<S: Store + ?Sized>(store: &mut S) -> Result<Option<SpanInfo>> {
    let mut label_damage = None;
    let mut label_cut = false;
    let label = match read_small(store, SPAN_FILE, LABEL_LEN as u64) {
        Ok(Some(b)) => match SpanLabel::decode(&b) {
            Err(why) if b.len() < LABEL_LEN => {
                label_cut = true;
                label_damage = Some(format!("{why}: its write was cut off"));
                None
            }
            Ok(l) => Some(l),
            Err(why) => {
                label_damage = Some(String::from(why));
                None
            }
        },
        Ok(None) => None,
        Err(Error::Corrupt { what, .. }) => {
            label_damage = Some(what);
            None
        }
        Err(e) => return Err(e),
    };
    let mut map_damage = None;
    let map = match read_small(store, SPANMAP_FILE, (MAX_MEDIA * 4096 * ENTRY_LEN) as u64) {
        Ok(Some(b)) => match SpanMap::decode(&b) {
            Ok(m) => Some(m),
            Err(why) => {
                map_damage = Some(why);
                Some(SpanMap::default())
            }
        },
        Ok(None) => None,
        Err(Error::Corrupt { what, .. }) => {
            map_damage = Some(what);
            Some(SpanMap::default())
        }
        Err(e) => return Err(e),
    };
    // A labelled medium always holds the span's map (it is written with the label and
    // mirrored on every medium): one gone is damage to name (the others' copies serve). It
    // went unnamed: alone its absence made the other media's segments "missing", together
    // the media verified OK.
    if label.is_some() && map.is_none() && store.span().is_none() {
        map_damage = Some(String::from("it is missing (MGEAR/SPANMAP)"));
    }
    Ok(match (label, map, &label_damage) {
        (None, None, None) => None,
        (label, map, _) => Some(SpanInfo {
            label,
            map: map.unwrap_or_default(),
            map_damage,
            label_damage,
            label_cut,
            attached: Vec::new(),
        }),
    })
}

fn read_small<S: Store + ?Sized>(store: &mut S, path: &str, max: u64) -> Result<Option<Vec<u8>>> {
    let Some(len) = store.len(path).at(path)? else {
        return Ok(None);
    };
    if len > max {
        return Err(Error::corrupt(
            Location::default().file(path),
            format!("{len} bytes, more than any valid one ({max})"),
        ));
    }
    let mut b = alloc::vec![0u8; len as usize];
    store.read_exact_at(path, 0, &mut b).at(path)?;
    Ok(Some(b))
}

/// Whether `path` is a placed file (a segment) rather than a mirrored one.
pub fn is_placed(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    layout::parse_segment_name(base).is_some()
}

/// How a [`SpanStore`] sizes what it places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanOptions {
    /// Bytes kept free on every medium for the mirrored files still to
    /// come (journal, IPART, INDEX, MANIFEST, SET, COMMIT of every capture
    /// written): a medium is full for segments when less than this plus
    /// `min_room` is free.
    pub reserve: u64,
    /// Least room a new segment must have: at least one record of the
    /// largest chunk plus header and trailer.
    pub min_room: u64,
}

/// One medium as the span store holds it.
struct Attached<M> {
    ordinal: u16,
    store: M,
    /// How the medium was given (`fat:copy.img`), where known: the map names each member as
    /// it joined, and a copy given in its place was named by the original's name.
    given: Option<String>,
}

/// Several media seen as one [`Store`]: segments placed, the rest mirrored.
/// It owns the media (`M`: a store, or `&mut dyn Store`) and gives them
/// back with [`into_media`](Self::into_media) so they can be closed.
pub struct SpanStore<M> {
    id: [u8; 16],
    media: Vec<Attached<M>>,
    map: SpanMap,
    opts: SpanOptions,
    writable: bool,
    /// Attached media whose copy of the map did not decode (ordinal, why):
    /// another copy served; the verifier reports them.
    map_damage: Vec<(u16, String)>,
    /// Media whose label did not read (name, why), read as unlabelled.
    label_damage: Vec<(String, String)>,
    /// Media read as another member than their label says (name, the
    /// label's ordinal, the ordinal read as): see [`relabel_by_content`].
    relabelled: Vec<(String, u16, u16)>,
    /// Segments the map places on a medium not given that a medium given holds all the same
    /// (a map entry appended since, which nothing signs): read here, so not waited for.
    found_here: BTreeSet<String>,
    /// A placed segment was removed since the open: the map on the media (entries are
    /// only appended) still counts it, rewritten at close ([`SpanStore::settle_map`]).
    map_changed: bool,
}

impl<M: Store> SpanStore<M> {
    /// Opens media for writing a span. Media that carry a span label must
    /// all be of one span and every member of it not declared lost must be
    /// given (a mirrored file is only consistent when every copy is written);
    /// media without a label join it, in the order given, taking a copy of
    /// every mirrored file. `new_id` names the span when none of the media
    /// has a label yet. The string beside each medium says how it was named
    /// (kept in the map so messages can name a medium that is not attached).
    /// `lost` names members that are gone for good (by the label they
    /// joined with, or `#N`): they are declared lost, and a delta written
    /// now captures again what they held.
    pub fn join(
        media: Vec<(M, String)>,
        new_id: [u8; 16],
        opts: SpanOptions,
        lost: &[String],
    ) -> Result<Self> {
        let mut found = Vec::new();
        for (mut store, name) in media {
            let info = read_span(&mut store)?;
            let cut = info.as_ref().is_some_and(|i| i.label_cut);
            if let Some(why) = info
                .as_ref()
                .and_then(|i| i.label_damage.as_ref())
                .filter(|_| !cut)
            {
                // Without its label the medium would join as a new member.
                return Err(Error::Usage(format!(
                    "{name}'s span label (MGEAR/SPAN) is damaged ({why}): a capture does not \
                     write to it; capture onto the span's other media with --replace-medium \
                     naming it, or onto new media"
                )));
            }
            found.push((store, name, info));
        }
        let mut id = None;
        for (_, name, info) in &found {
            if let Some(SpanInfo { label: Some(l), .. }) = info {
                match id {
                    None => id = Some(l.id),
                    Some(i) if i != l.id => {
                        return Err(Error::Usage(format!(
                            "{name} belongs to another span than the media before it: give only \
                             the media of one capture's span (`mgear inspect` shows a medium's span)"
                        )))
                    }
                    Some(_) => {}
                }
            }
        }
        let id = id.unwrap_or(new_id);
        // The map of the lowest labelled ordinal is the newest (mirrored
        // writes go in ordinal order). Each with whether that copy was damaged.
        let mut labelled: Vec<(u16, SpanMap, bool)> = found
            .iter()
            .filter_map(|(_, _, i)| {
                i.as_ref().and_then(|i| {
                    i.label
                        .map(|l| (l.ordinal, i.map.clone(), i.map_damage.is_some()))
                })
            })
            .collect();
        labelled.sort_by_key(|(o, ..)| *o);
        let mut map = labelled
            .first()
            .map(|(_, m, _)| m.clone())
            .unwrap_or_default();
        let mut newly_lost = Vec::new();
        for name in lost {
            let Some(m) = map.members.iter_mut().find(|m| m.is_named(name)) else {
                let known: Vec<String> = map
                    .members
                    .iter()
                    .map(|m| format!("#{} '{}'", m.ordinal, m.label))
                    .collect();
                return Err(Error::Usage(format!(
                    "--replace-medium {name}: the span of these media has no such medium (it has: \
                     {}); name it as it was given when it joined, or as #N",
                    if known.is_empty() {
                        "no media yet".into()
                    } else {
                        known.join(", ")
                    }
                )));
            };
            if !m.lost {
                m.lost = true;
                newly_lost.push(m.ordinal);
            }
        }
        let mut seen: Vec<u16> = Vec::new();
        for (o, ..) in &labelled {
            if seen.contains(o) {
                return Err(Error::Usage(format!(
                    "medium #{o} of the span is given twice: give each medium once"
                )));
            }
            seen.push(*o);
        }
        for m in &map.members {
            if m.lost && seen.contains(&m.ordinal) {
                // Declared lost by an earlier run and turned up again (it said "drop
                // --replace-medium" to a command that had none): a write leaves it out.
                let msg = match newly_lost.contains(&m.ordinal) {
                    true => format!(
                        "{} is attached, so it is not lost: drop --replace-medium for it",
                        map.describe(m.ordinal)
                    ),
                    false => format!(
                        "{} is given, but an earlier capture declared it lost (its share was \
                         captured again onto the others): it is no longer written; leave it out \
                         of this command (only an ingest takes it, together with the other media, \
                         for the generations made before the loss)",
                        map.describe(m.ordinal)
                    ),
                };
                return Err(Error::Usage(msg));
            }
            if !m.lost && !seen.contains(&m.ordinal) {
                // Given under the name it joined with, and blank now: re-formatted (it was
                // told to attach the medium just given).
                let blank = |n: &String| {
                    found.iter().any(|(_, name, i)| {
                        name == n && i.as_ref().is_none_or(|i| i.label.is_none())
                    })
                };
                if blank(&m.label) {
                    return Err(Error::Usage(reformatted_member(m)));
                }
                // Every member not given, at once (a second refusal named the next), and the
                // capture's way past a lost one said as a capture's: `medium rm` and `fsck
                // --repair` were offered --replace-medium, which they do not take.
                let absent: Vec<&Member> = map
                    .members
                    .iter()
                    .filter(|m| !m.lost && !seen.contains(&m.ordinal))
                    .collect();
                let named = absent
                    .iter()
                    .map(|m| map.describe(m.ordinal))
                    .collect::<Vec<_>>()
                    .join(" and ");
                let quoted = absent
                    .iter()
                    .map(|m| alloc::format!("--replace-medium '{}'", m.label))
                    .collect::<Vec<_>>()
                    .join(" ");
                return Err(Error::Usage(format!(
                    "{named} of this span {} not attached: every write onto a medium of a span \
                     (a capture, `medium rm`, `medium fsck --repair`) writes every medium of it \
                     (each holds a copy of the index and manifests of all its captures); attach \
                     {} and give {} with --medium too. Only if one is lost for good, a capture \
                     or delta goes on without it ({quoted}: its share is then captured again), \
                     and `medium rm` works on the media left after that; to free a medium of \
                     the span when nothing on it is needed any more, `mgear medium format \
                     --force` erases it whole. If that span is another shipment's (a medium of \
                     it was given by mistake), leave its media out",
                    if absent.len() > 1 { "are" } else { "is" },
                    if absent.len() > 1 { "them" } else { "it" },
                    if absent.len() > 1 { "them" } else { "it" },
                )));
            }
        }
        // A labelled medium the map does not name was joining when its run was cut off
        // (the label is a join's first write, the map its last): it joins again as the
        // member its label says, and no new medium may take that ordinal.
        let mut next = map
            .members
            .iter()
            .map(|m| m.ordinal + 1)
            .chain(labelled.iter().map(|(o, ..)| o + 1))
            .max()
            .unwrap_or(0);
        let mut media = Vec::new();
        let mut joining = Vec::new();
        let mut resumed = Vec::new();
        for (store, name, info) in found {
            match info.and_then(|i| i.label) {
                Some(l) if map.member(l.ordinal).is_some() => media.push((
                    Attached {
                        ordinal: l.ordinal,
                        store,
                        given: Some(name),
                    },
                    None,
                )),
                Some(l) => {
                    joining.push(l.ordinal);
                    resumed.push(l.ordinal);
                    media.push((
                        Attached {
                            ordinal: l.ordinal,
                            store,
                            given: Some(name.clone()),
                        },
                        Some(name),
                    ));
                }
                None => {
                    if usize::from(next) >= MAX_MEDIA {
                        return Err(Error::Limit(format!(
                            "a span has at most {MAX_MEDIA} media"
                        )));
                    }
                    joining.push(next);
                    media.push((
                        Attached {
                            ordinal: next,
                            store,
                            given: Some(name.clone()),
                        },
                        Some(name),
                    ));
                    next += 1;
                }
            }
        }
        media.sort_by_key(|(a, _)| a.ordinal);
        let mut span = SpanStore {
            id,
            media: Vec::new(),
            map,
            opts,
            writable: true,
            map_damage: Vec::new(),
            label_damage: Vec::new(),
            relabelled: Vec::new(),
            found_here: BTreeSet::new(),
            map_changed: false,
        };
        let mut names = Vec::new();
        for (a, name) in media {
            names.push((a.ordinal, name));
            span.media.push(a);
        }
        span.mend_mirrors()?;
        if joining.is_empty() {
            span.mend_maps(&labelled)?;
            for o in newly_lost {
                span.append_map(&entry(KIND_LOST, o, "replaced"))?;
            }
            return Ok(span);
        }
        if let Err(e) = span.take_in(&names, &resumed) {
            // The join is undone; the media are closed so each file system is left clean
            // (dropped, a FAT volume kept the dirty flag its first write set, and `fsck`
            // called both media unclean).
            let _ = Box::new(span).close();
            return Err(e);
        }
        Ok(span)
    }

    /// Opens media for reading (ingest, verify, inspect): every medium must
    /// carry a label of one span; members may be missing
    /// ([`missing`](Self::missing) says which). With `strict` false (a
    /// capture looking at media it is about to join), media without a label
    /// are accepted beside the span's and read as if they had joined.
    pub fn open(media: Vec<(M, String)>, strict: bool) -> Result<Self> {
        let mut id = None;
        let mut found = Vec::new();
        for (mut store, name) in media {
            let info = read_span(&mut store)?;
            if let Some(SpanInfo { label: Some(l), .. }) = &info {
                match id {
                    None => id = Some(l.id),
                    Some(i) if i != l.id => {
                        return Err(Error::Usage(format!(
                            "{name} belongs to another span than the media before it: give only \
                             the media of one capture's span"
                        )))
                    }
                    Some(_) => {}
                }
            }
            found.push((store, name, info));
        }
        // Media that are no span are read as one: a capture (or set) on two
        // of them would be read from whichever comes first, in the order
        // given, and the other silently ignored.
        if id.is_none() && strict && found.len() > 1 {
            let mut seen: Vec<(String, String)> = Vec::new();
            for (store, name, _) in found.iter_mut() {
                for c in crate::medium::capture_names(store)? {
                    if let Some((_, first)) = seen.iter().find(|(n, _)| n.eq_ignore_ascii_case(&c))
                    {
                        return Err(Error::Usage(format!(
                            "{c} is on both {first} and {name}, which are not media of one span: \
                             give the medium to read on its own"
                        )));
                    }
                    seen.push((c, name.clone()));
                }
            }
        }
        let mut attached: Vec<Attached<M>> = Vec::new();
        let mut names = Vec::new();
        let mut maps = Vec::new();
        let mut unlabelled = Vec::new();
        let mut map_damage = Vec::new();
        let mut label_damage = Vec::new();
        for (store, name, info) in found {
            if let Some(why) = info.as_ref().and_then(|i| i.label_damage.clone()) {
                // Damage found on the medium (exit 1), not a wrong argument (it was exit 2, a
                // usage error).
                if id.is_some() && strict {
                    return Err(Error::corrupt(
                        Location::default().file(SPAN_FILE),
                        format!(
                            "{name}'s span label is damaged ({why}), so it cannot be placed \
                             among the other media of its span: give the other media without \
                             it (ingest then names what is missing), or verify it on its own"
                        ),
                    ));
                }
                label_damage.push((name.clone(), why));
            }
            match info {
                Some(SpanInfo {
                    label: Some(l),
                    map,
                    map_damage: damage,
                    ..
                }) => {
                    if let Some(why) = damage {
                        map_damage.push((l.ordinal, why));
                    }
                    maps.push(map);
                    attached.push(Attached {
                        ordinal: l.ordinal,
                        store,
                        given: Some(name.clone()),
                    });
                    names.push(name);
                }
                Some(SpanInfo { label: None, .. }) if id.is_some() && strict => {
                    return Err(Error::Usage(format!(
                        "{name} holds a span map (MGEAR/SPANMAP) but its span label (MGEAR/SPAN) \
                         is missing, so it cannot be placed among the other media of its span: \
                         give the other media without it (ingest then names what is missing), \
                         and ingest or verify it on its own"
                    )))
                }
                _ if id.is_some() && strict => {
                    return Err(Error::Usage(format!(
                        "{name} is not part of the span of the other media given (it has no \
                         MGEAR/SPAN label): give only the media of one capture's span, or this \
                         medium on its own"
                    )))
                }
                _ => unlabelled.push(store),
            }
        }
        // The longest map knows most (a medium that left the span early
        // has an older copy).
        let map = maps
            .into_iter()
            .max_by_key(|m| m.members.len() + m.placed.len())
            .unwrap_or_default();
        let relabelled = if strict {
            relabel_by_content(&mut attached, &names, &map)?
        } else {
            Vec::new()
        };
        // Two media of one member, once each is read as the member whose segments it holds
        // (a label copied onto another medium was refused as "given twice").
        for (i, a) in attached.iter().enumerate() {
            if let Some(j) = attached[..i].iter().position(|b| b.ordinal == a.ordinal) {
                return Err(Error::Usage(format!(
                    "medium #{} of the span is given twice ({} and {}): give each medium once",
                    a.ordinal, names[j], names[i]
                )));
            }
        }
        let mut next = map
            .members
            .iter()
            .map(|m| m.ordinal + 1)
            .chain(attached.iter().map(|a| a.ordinal + 1))
            .max()
            .unwrap_or(0);
        for store in unlabelled {
            attached.push(Attached {
                ordinal: next,
                store,
                given: None,
            });
            next = next.saturating_add(1);
        }
        attached.sort_by_key(|a| a.ordinal);
        let mut found_here = BTreeSet::new();
        for (path, o) in &map.placed {
            if attached.iter().any(|a| a.ordinal == *o) {
                continue;
            }
            for a in attached.iter_mut() {
                if a.store.len(path).at(path)?.is_some() {
                    found_here.insert(path.clone());
                    break;
                }
            }
        }
        Ok(SpanStore {
            id: id.unwrap_or_default(),
            media: attached,
            found_here,
            map,
            opts: SpanOptions {
                reserve: 0,
                min_room: 0,
            },
            writable: false,
            map_damage,
            label_damage,
            relabelled,
            map_changed: false,
        })
    }

    /// Sizes what [`Store::free_space`] reports as a capture with `opts`
    /// would place segments: a capture's checks before it writes (`--dry-run`,
    /// the space check) read the media with the reserve it will keep.
    pub fn plan_with(&mut self, opts: SpanOptions) {
        self.opts = opts;
    }

    /// Gives the media back (in ordinal order), e.g. to close them.
    pub fn into_media(self) -> Vec<M> {
        self.media.into_iter().map(|a| a.store).collect()
    }

    /// Members of the span that are not attached (lost ones included).
    pub fn missing(&self) -> Vec<Member> {
        self.map
            .members
            .iter()
            .filter(|m| !self.media.iter().any(|a| a.ordinal == m.ordinal))
            .cloned()
            .collect()
    }

    /// Declares medium `ordinal` lost: its segments are no longer expected
    /// (a delta re-captures what they held). Appends to the map everywhere.
    pub fn declare_lost(&mut self, ordinal: u16, why: &str) -> Result<()> {
        if self.map.member(ordinal).is_none() {
            return Err(Error::Usage(format!("the span has no medium #{ordinal}")));
        }
        self.append_map(&entry(KIND_LOST, ordinal, why))?;
        if let Some(m) = self.map.members.iter_mut().find(|m| m.ordinal == ordinal) {
            m.lost = true;
        }
        Ok(())
    }

    /// Labels the joining media, records them in the map and gives them a
    /// copy of every mirrored file and the map; registers segments already
    /// on any medium.
    fn take_in(&mut self, names: &[(u16, Option<String>)], resumed: &[u16]) -> Result<()> {
        // A medium that filled up holds the tail an interrupted capture
        // wrote after its last checkpoint; its resume cuts it anyway. Cut it
        // first: joining writes the span's map onto every medium, and on a
        // full one that write would fail every time.
        for a in &mut self.media {
            crate::medium::cut_uncommitted(&mut a.store)?;
        }
        let mut copied: Vec<(usize, String)> = Vec::new();
        let mut mapped = false;
        let result = self.take_in_tracked(names, resumed, &mut copied, &mut mapped);
        // Once a map names the joining media, the join is only ever finished: undone, a
        // medium whose map write failed (its cable pulled) named members whose labels the
        // undo had removed, and every later run refused them as "not attached".
        if result.is_err() && !mapped {
            self.undo_join(names, &copied);
        }
        result
    }

    /// Takes back what a failed join wrote onto the media that were joining
    /// (they were no span's before it): the copies of mirrored files, then
    /// the directories that held only those, the map and the label. Best
    /// effort: the join's own error is what the caller reports.
    fn undo_join(&mut self, names: &[(u16, Option<String>)], copied: &[(usize, String)]) {
        let joining: Vec<u16> = names
            .iter()
            .filter(|(_, n)| n.is_some())
            .map(|(o, _)| *o)
            .collect();
        let mut dirs: Vec<(usize, String)> = Vec::new();
        for (i, path) in copied {
            let _ = self.media[*i].store.remove_file(path);
            let mut at = path.as_str();
            while let Some((dir, _)) = at.rsplit_once('/') {
                if dir == ROOT_DIR || dir.is_empty() {
                    break;
                }
                dirs.push((*i, dir.to_string()));
                at = dir;
            }
        }
        // Deepest first; a directory that holds anything else stays.
        dirs.sort_by(|(i, a), (j, b)| {
            (b.matches('/').count(), i, a).cmp(&(a.matches('/').count(), j, b))
        });
        dirs.dedup();
        for (i, d) in dirs {
            let _ = self.media[i].store.remove_dir(&d);
        }
        for a in &mut self.media {
            if joining.contains(&a.ordinal) {
                let _ = a.store.remove_file(SPAN_FILE);
                let _ = a.store.remove_file(SPANMAP_FILE);
                // Only if empty: a medium holding captures keeps it.
                let _ = a.store.remove_dir(ROOT_DIR);
                let _ = a.store.sync(ROOT_DIR);
            }
        }
    }

    fn take_in_tracked(
        &mut self,
        names: &[(u16, Option<String>)],
        resumed: &[u16],
        copied: &mut Vec<(usize, String)>,
        mapped: &mut bool,
    ) -> Result<()> {
        let mut joining = Vec::new();
        for (o, name) in names {
            if let Some(name) = name {
                self.map.members.push(Member {
                    ordinal: *o,
                    label: name.clone(),
                    lost: false,
                });
                joining.push(*o);
            }
        }
        // Mirror every file that is not a segment onto every medium.
        let mut mirrored: BTreeMap<String, usize> = BTreeMap::new();
        let mut segments: Vec<(String, u16)> = Vec::new();
        let ordinals: Vec<u16> = self.media.iter().map(|a| a.ordinal).collect();
        for (i, a) in self.media.iter_mut().enumerate() {
            let mut files = Vec::new();
            walk(&mut a.store, ROOT_DIR, &mut files)?;
            for f in files {
                if f == SPAN_FILE || f == SPANMAP_FILE {
                    continue;
                }
                if is_placed(&f) {
                    segments.push((f, a.ordinal));
                } else {
                    // A copy on a medium whose join was cut off may be short: any other
                    // medium's serves first.
                    let from = mirrored.entry(f).or_insert(i);
                    if resumed.contains(&ordinals[*from]) && !resumed.contains(&a.ordinal) {
                        *from = i;
                    }
                }
            }
        }
        // What to copy where, decided before anything is written: two media that never
        // were one span, both holding a file with other contents, are refused untouched.
        // A medium whose join was cut off passed this check then; what differs on it now
        // are copies the cut left short.
        let mut buf = alloc::vec![0u8; 1 << 20];
        let mut to_copy: Vec<(String, usize, usize, u64)> = Vec::new();
        for (path, from) in &mirrored {
            let len = self.media[*from].store.len(path).at(path)?.unwrap_or(0);
            for to in 0..self.media.len() {
                if to == *from {
                    continue;
                }
                if let Some(have) = self.media[to].store.len(path).at(path)? {
                    if have == len && same(&mut self.media, *from, to, path, len, &mut buf)? {
                        continue;
                    }
                    let cut = |i: usize| resumed.contains(&self.media[i].ordinal);
                    let new = |i: usize| joining.contains(&self.media[i].ordinal) && !cut(i);
                    if new(to) || (new(*from) && !cut(to)) {
                        return Err(Error::Usage(format!(
                            "{path} is on two of the media given, with different contents: \
                             these media are not one capture's span; give them one at a time"
                        )));
                    }
                }
                to_copy.push((path.clone(), *from, to, len));
            }
        }
        // The label first: from here on the medium is this span's, and a run cut off
        // before the map below names it finishes its join (see `join`).
        for a in self
            .media
            .iter_mut()
            .filter(|a| joining.contains(&a.ordinal))
        {
            let label = SpanLabel {
                id: self.id,
                ordinal: a.ordinal,
            };
            a.store.create_dir_all(ROOT_DIR).at(ROOT_DIR)?;
            a.store
                .write_at(SPAN_FILE, 0, &label.encode())
                .at(SPAN_FILE)?;
            a.store.sync(SPAN_FILE).at(SPAN_FILE)?;
        }
        for (path, from, to, len) in &to_copy {
            let fresh = self.media[*to].store.len(path).at(path)?.is_none();
            if fresh && joining.contains(&self.media[*to].ordinal) {
                copied.push((*to, path.clone()));
            }
            copy(&mut self.media, *from, *to, path, *len, &mut buf)?;
        }
        // The map last, in ordinal order: the lowest medium's copy is the newest.
        for (p, o) in &segments {
            self.map.ever_placed.insert((p.clone(), *o));
            self.map.placed.insert(p.clone(), *o);
        }
        let bytes = map_bytes(&self.map);
        *mapped = true;
        for a in &mut self.media {
            write_map(&mut a.store, &bytes)?;
        }
        Ok(())
    }

    /// Makes every member's mirrored files (those of the format that are not segments) the
    /// same as the lowest member's, the copy every read of them goes to. A run cut off
    /// between two media's writes of them (a kill, or one medium's cable pulled while the
    /// other was closed cleanly) left one medium with a generation's directory or file the
    /// other lacks, or a shorter or older copy; the resume read one medium's and wrote
    /// both, and failed on the medium without the directory ("IPART: not found") every
    /// time. Files only on a later member are a removal cut off (removals go in ordinal
    /// order too) and go; a lowest member behind a later one (its cable pulled before its
    /// write-back) is what the resume goes back to, as it reads its journal there.
    /// Members joining now are left to [`take_in`](Self::take_in).
    fn mend_mirrors(&mut self) -> Result<()> {
        let members: Vec<usize> = (0..self.media.len())
            .filter(|i| self.map.member(self.media[*i].ordinal).is_some())
            .collect();
        let Some((&first, rest)) = members.split_first() else {
            return Ok(());
        };
        let mirrored = |files: Vec<String>| -> Vec<String> {
            files
                .into_iter()
                .filter(|f| f != SPAN_FILE && f != SPANMAP_FILE && !is_placed(f))
                .collect()
        };
        let (files, dirs) = tree(&mut self.media[first].store)?;
        let files = mirrored(files);
        let mut buf = alloc::vec![0u8; 1 << 20];
        for &to in rest {
            let (theirs, mut their_dirs) = tree(&mut self.media[to].store)?;
            for path in mirrored(theirs).iter().filter(|f| !files.contains(f)) {
                self.media[to].store.remove_file(path).at(path)?;
            }
            for d in &dirs {
                if !their_dirs.contains(d) {
                    self.media[to].store.create_dir_all(d).at(d)?;
                }
            }
            for path in &files {
                let len = self.media[first].store.len(path).at(path)?.unwrap_or(0);
                let have = self.media[to].store.len(path).at(path)?;
                // Small files (journal slots, key slots, manifests) are rewritten in
                // place; the rest only grow, so their length tells.
                let alike = have == Some(len)
                    && (len > MEND_COMPARE_MAX
                        || same(&mut self.media, first, to, path, len, &mut buf)?);
                if !alike {
                    copy(&mut self.media, first, to, path, len, &mut buf)?;
                }
            }
            // A directory only there held only what went (deepest first; one holding
            // segments stays).
            their_dirs.reverse();
            for d in their_dirs.iter().filter(|d| !dirs.contains(d)) {
                if self.media[to].store.list(d).is_ok_and(|e| e.is_empty()) {
                    self.media[to].store.remove_dir(d).at(d)?;
                }
            }
        }
        Ok(())
    }

    /// Puts the span's map onto every medium whose copy differs from the newest one (the
    /// lowest ordinal's, as mirrored writes go in ordinal order): a run cut off between
    /// two media's copies left the later ones behind, and the next entry appended would
    /// have followed the gap. Nothing is written when the newest copy itself is damaged.
    /// `maps`: each labelled medium's copy, in ordinal order, with whether it was damaged.
    fn mend_maps(&mut self, maps: &[(u16, SpanMap, bool)]) -> Result<()> {
        let Some((_, newest, false)) = maps.first() else {
            return Ok(());
        };
        if *newest != self.map {
            return Ok(());
        }
        let bytes = map_bytes(newest);
        for a in &mut self.media {
            let behind = maps
                .iter()
                .find(|(o, _, _)| *o == a.ordinal)
                .is_some_and(|(_, m, damaged)| *damaged || m != newest);
            if behind {
                write_map(&mut a.store, &bytes)?;
            }
        }
        Ok(())
    }

    /// After segments were removed (`medium rm`): the map rewritten on every medium without
    /// them, or, when no capture is left on the span, the span dissolved (its label and map
    /// removed from every medium). The map kept counting removed segments, and media whose
    /// every capture was removed stayed bound: none could be written alone again.
    fn settle_map(&mut self) -> Result<()> {
        let mut left = false;
        for a in &mut self.media {
            let entries = match a.store.list(ROOT_DIR) {
                Ok(e) => e,
                Err(StoreError::NotFound) => Vec::new(),
                Err(e) => return Err(e).at(ROOT_DIR),
            };
            left |= entries.iter().any(|e| {
                let path = alloc::format!("{ROOT_DIR}/{}", e.name);
                !path.eq_ignore_ascii_case(SPAN_FILE) && !path.eq_ignore_ascii_case(SPANMAP_FILE)
            });
        }
        if left {
            let bytes = map_bytes(&self.map);
            for a in &mut self.media {
                write_map(&mut a.store, &bytes)?;
            }
            return Ok(());
        }
        for a in &mut self.media {
            for f in [SPANMAP_FILE, SPAN_FILE] {
                match a.store.remove_file(f) {
                    Ok(()) | Err(StoreError::NotFound) => {}
                    Err(e) => return Err(e).at(f),
                }
            }
            // Only if empty, as a medium that never joined a span.
            let _ = a.store.remove_dir(ROOT_DIR);
            a.store
                .sync(ROOT_DIR)
                .or_else(|e| match e {
                    StoreError::NotFound => Ok(()),
                    e => Err(e),
                })
                .at(ROOT_DIR)?;
        }
        Ok(())
    }

    fn append_map(&mut self, e: &[u8]) -> Result<()> {
        for a in &mut self.media {
            let at = a.store.len(SPANMAP_FILE).at(SPANMAP_FILE)?.unwrap_or(0);
            // Drop a torn tail first, so entries stay aligned.
            let at = at - at % ENTRY_LEN as u64;
            a.store.set_len(SPANMAP_FILE, at).at(SPANMAP_FILE)?;
            a.store.write_at(SPANMAP_FILE, at, e).at(SPANMAP_FILE)?;
            a.store.sync(SPANMAP_FILE).at(SPANMAP_FILE)?;
        }
        Ok(())
    }

    fn index_of(&self, ordinal: u16) -> Option<usize> {
        self.media.iter().position(|a| a.ordinal == ordinal)
    }

    /// The member a read of `path` goes to: the one holding a placed file,
    /// else the first holding it; `None` for the span label itself (never
    /// read through the span) and for a file no member holds.
    fn reading(&mut self, path: &str) -> core::result::Result<Option<usize>, StoreError> {
        if path == SPAN_FILE {
            return Ok(None);
        }
        if is_placed(path) {
            self.holder(path)
        } else {
            self.first_with(path)
        }
    }

    /// The medium holding segment `path`: by the map, else by looking. A
    /// segment that is on an attached medium is read there even when the
    /// map (or a medium's label: anyone holding it can rewrite both, FORMAT.md
    /// §15) places it elsewhere: what is here is never taken for absent,
    /// so it is verified and used, and the records' own hashes say whether
    /// it is the right one.
    fn holder(&mut self, path: &str) -> core::result::Result<Option<usize>, StoreError> {
        if let Some(i) = self.map.placed.get(path).and_then(|o| self.index_of(*o)) {
            if self.media[i].store.len(path)?.is_some() {
                return Ok(Some(i));
            }
        }
        for (i, a) in self.media.iter_mut().enumerate() {
            if a.store.len(path)?.is_some() {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// The first medium (in ordinal order) holding mirrored file `path`.
    fn first_with(&mut self, path: &str) -> core::result::Result<Option<usize>, StoreError> {
        for (i, a) in self.media.iter_mut().enumerate() {
            if a.store.len(path)?.is_some() {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// Room for segments on medium `i`.
    fn room_on(&mut self, i: usize) -> core::result::Result<u64, StoreError> {
        Ok(match self.media[i].store.free_space()? {
            Some(f) => f.saturating_sub(self.opts.reserve),
            None => u64::MAX,
        })
    }

    /// Places new segment `path` on the first medium with room.
    fn place(&mut self, path: &str) -> core::result::Result<usize, StoreError> {
        for i in 0..self.media.len() {
            let o = self.media[i].ordinal;
            if self.map.member(o).is_some_and(|m| m.lost) {
                continue;
            }
            if self.room_on(i)? >= self.opts.min_room {
                let e = entry(KIND_PLACED, o, path);
                self.append_map(&e).map_err(|e| match e {
                    Error::Store { error, .. } => error,
                    other => StoreError::Io(other.to_string()),
                })?;
                self.map.ever_placed.insert((path.into(), o));
                self.map.placed.insert(path.into(), o);
                return Ok(i);
            }
        }
        Err(StoreError::NoSpace)
    }

    fn placed_target(&mut self, path: &str) -> core::result::Result<usize, StoreError> {
        if !self.writable {
            return Err(StoreError::ReadOnly);
        }
        match self.holder(path)? {
            Some(i) => Ok(i),
            None => self.place(path),
        }
    }

    fn all<F>(&mut self, mut f: F) -> core::result::Result<(), StoreError>
    where
        F: FnMut(&mut M) -> core::result::Result<(), StoreError>,
    {
        if !self.writable {
            return Err(StoreError::ReadOnly);
        }
        for a in &mut self.media {
            f(&mut a.store)?;
        }
        Ok(())
    }
}

/// Media whose label names another member than the segments they hold. A
/// label only says where to look (anyone holding a medium can rewrite it,
/// FORMAT.md §15): two media whose labels were swapped each read alone as
/// the other, so each "missed" the segments it holds and an intact shipment
/// ingested one medium at a time was refused. A medium that holds none of
/// the segments the map places on its label's member, and segments of
/// exactly one other member, is read as that member; nothing changes when
/// that would make two of the media given one member. Returns (name, the
/// label's ordinal, the ordinal now read as) for each medium read anew.
fn relabel_by_content<M: Store>(
    attached: &mut [Attached<M>],
    names: &[String],
    map: &SpanMap,
) -> Result<Vec<(String, u16, u16)>> {
    /// Whether `store` holds any of `paths`.
    fn holds_any<'p, M: Store>(
        store: &mut M,
        paths: impl Iterator<Item = &'p String>,
    ) -> Result<bool> {
        for path in paths {
            if store.len(path).at(path)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }
    // What the map places on member `ordinal` now.
    let now_on = |ordinal: u16| {
        map.placed
            .iter()
            .filter(move |(_, o)| **o == ordinal)
            .map(|(p, _)| p)
    };
    // Its label's member as any entry ever placed it: one appended entry moving a segment
    // to another member read the medium as that member ("its label was changed"), and the
    // other medium's segments, not given, as "given, but not there".
    let ever_on = |ordinal: u16| {
        map.ever_placed
            .iter()
            .filter(move |(_, o)| *o == ordinal)
            .map(|(p, _)| p)
    };
    let mut read_as: Vec<u16> = attached.iter().map(|a| a.ordinal).collect();
    for (i, a) in attached.iter_mut().enumerate() {
        if holds_any(&mut a.store, ever_on(a.ordinal))? {
            continue;
        }
        let mut others = Vec::new();
        for m in map.members.iter().filter(|m| m.ordinal != a.ordinal) {
            if holds_any(&mut a.store, now_on(m.ordinal))? {
                others.push(m.ordinal);
            }
        }
        if let [k] = others[..] {
            read_as[i] = k;
        }
    }
    let mut distinct = read_as.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() != read_as.len() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for ((a, name), k) in attached.iter_mut().zip(names).zip(read_as) {
        if a.ordinal != k {
            out.push((name.clone(), a.ordinal, k));
            a.ordinal = k;
        }
    }
    Ok(out)
}

fn walk<M: Store>(store: &mut M, dir: &str, out: &mut Vec<String>) -> Result<()> {
    walk_dirs(store, dir, out, &mut Vec::new())
}

/// The files and the directories (parents first) under [`ROOT_DIR`].
fn tree<M: Store>(store: &mut M) -> Result<(Vec<String>, Vec<String>)> {
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    walk_dirs(store, ROOT_DIR, &mut files, &mut dirs)?;
    Ok((files, dirs))
}

/// [`walk`], also listing the directories under `dir` (parents first).
fn walk_dirs<M: Store>(
    store: &mut M,
    dir: &str,
    out: &mut Vec<String>,
    dirs: &mut Vec<String>,
) -> Result<()> {
    let entries = match store.list(dir) {
        Ok(e) => e,
        Err(StoreError::NotFound) => return Ok(()),
        Err(e) => {
            return Err(Error::Store {
                path: dir.into(),
                error: e,
            })
        }
    };
    for e in entries {
        let p = format!("{dir}/{}", e.name);
        match e.kind {
            EntryKind::File => out.push(p),
            EntryKind::Dir => {
                dirs.push(p.clone());
                walk_dirs(store, &p, out, dirs)?
            }
        }
    }
    Ok(())
}

fn same<M: Store>(
    media: &mut [Attached<M>],
    a: usize,
    b: usize,
    path: &str,
    len: u64,
    buf: &mut [u8],
) -> Result<bool> {
    let half = buf.len() / 2;
    let (x, y) = buf.split_at_mut(half);
    let mut off = 0;
    while off < len {
        let n = (len - off).min(half as u64) as usize;
        media[a]
            .store
            .read_exact_at(path, off, &mut x[..n])
            .at(path)?;
        media[b]
            .store
            .read_exact_at(path, off, &mut y[..n])
            .at(path)?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
        off += n as u64;
    }
    Ok(true)
}

fn copy<M: Store>(
    media: &mut [Attached<M>],
    from: usize,
    to: usize,
    path: &str,
    len: u64,
    buf: &mut [u8],
) -> Result<()> {
    if let Some((dir, _)) = path.rsplit_once('/') {
        media[to].store.create_dir_all(dir).at(dir)?;
    }
    media[to].store.set_len(path, 0).at(path)?;
    let mut off = 0;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        media[from]
            .store
            .read_exact_at(path, off, &mut buf[..n])
            .at(path)?;
        media[to].store.write_at(path, off, &buf[..n]).at(path)?;
        off += n as u64;
    }
    media[to].store.sync(path).at(path)?;
    Ok(())
}

/// What a span tells about itself through [`Store::span`], whatever the type of its media:
/// its id, its map, which members are attached and which segments are out of reach.
pub trait SpanView {
    /// The span's id.
    fn id(&self) -> [u8; 16];
    /// The placement map.
    fn map(&self) -> &SpanMap;
    /// Ordinals of the attached media.
    fn attached(&self) -> Vec<u16>;
    /// Segment paths the map places on media that are not attached.
    fn unreachable(&self) -> Vec<(String, u16)>;
    /// Attached media whose copy of the map is damaged (ordinal, why).
    fn damaged_maps(&self) -> Vec<(u16, String)> {
        Vec::new()
    }
    /// Media whose span label is damaged (as named, why).
    fn damaged_labels(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Media read as another member than their label says, by the
    /// segments they hold (as named, the label's ordinal, read as).
    fn relabelled(&self) -> Vec<(String, u16, u16)> {
        Vec::new()
    }
    /// How the attached medium of member `ordinal` was given, where known.
    fn given_as(&self, _ordinal: u16) -> Option<String> {
        None
    }
}

impl<M: Store> SpanView for SpanStore<M> {
    fn id(&self) -> [u8; 16] {
        self.id
    }

    fn map(&self) -> &SpanMap {
        &self.map
    }

    fn attached(&self) -> Vec<u16> {
        self.media.iter().map(|a| a.ordinal).collect()
    }

    fn given_as(&self, ordinal: u16) -> Option<String> {
        self.media
            .iter()
            .find(|a| a.ordinal == ordinal)
            .and_then(|a| a.given.clone())
    }

    fn damaged_maps(&self) -> Vec<(u16, String)> {
        self.map_damage.clone()
    }

    fn damaged_labels(&self) -> Vec<(String, String)> {
        self.label_damage.clone()
    }

    fn relabelled(&self) -> Vec<(String, u16, u16)> {
        self.relabelled.clone()
    }

    fn unreachable(&self) -> Vec<(String, u16)> {
        self.map
            .placed
            .iter()
            .filter(|(p, o)| {
                !self.media.iter().any(|a| a.ordinal == **o) && !self.found_here.contains(*p)
            })
            .map(|(p, o)| (p.clone(), *o))
            .collect()
    }
}

impl<M: Store> Store for SpanStore<M> {
    fn list(&mut self, dir: &str) -> core::result::Result<Vec<Entry>, StoreError> {
        let mut out: Vec<Entry> = Vec::new();
        let mut any = false;
        for a in &mut self.media {
            match a.store.list(dir) {
                Ok(entries) => {
                    any = true;
                    for e in entries {
                        if dir == ROOT_DIR && (e.name == "SPAN" || e.name == "SPANMAP") {
                            continue;
                        }
                        if !out.iter().any(|o| o.name == e.name) {
                            out.push(e);
                        }
                    }
                }
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        if !any {
            return Err(StoreError::NotFound);
        }
        Ok(out)
    }

    fn len(&mut self, path: &str) -> core::result::Result<Option<u64>, StoreError> {
        match self.reading(path)? {
            Some(i) => self.media[i].store.len(path),
            None => Ok(None),
        }
    }

    fn read_at(
        &mut self,
        path: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> core::result::Result<usize, StoreError> {
        match self.reading(path)? {
            Some(i) => self.media[i].store.read_at(path, offset, buf),
            None => Err(StoreError::NotFound),
        }
    }

    fn locate(
        &mut self,
        path: &str,
        offset: u64,
        len: u64,
    ) -> core::result::Result<Option<crate::store::Located>, StoreError> {
        match self.reading(path)? {
            Some(i) => self.media[i].store.locate(path, offset, len),
            None => Ok(None),
        }
    }

    fn write_at(
        &mut self,
        path: &str,
        offset: u64,
        data: &[u8],
    ) -> core::result::Result<(), StoreError> {
        if is_placed(path) {
            let i = self.placed_target(path)?;
            return self.media[i].store.write_at(path, offset, data);
        }
        self.all(|s| s.write_at(path, offset, data))
    }

    fn set_len(&mut self, path: &str, len: u64) -> core::result::Result<(), StoreError> {
        if is_placed(path) {
            let i = self.placed_target(path)?;
            return self.media[i].store.set_len(path, len);
        }
        self.all(|s| s.set_len(path, len))
    }

    fn create_dir_all(&mut self, path: &str) -> core::result::Result<(), StoreError> {
        self.all(|s| s.create_dir_all(path))
    }

    fn rename(&mut self, from: &str, to: &str) -> core::result::Result<(), StoreError> {
        if !self.writable {
            return Err(StoreError::ReadOnly);
        }
        for a in &mut self.media {
            if a.store.len(from)?.is_some() {
                a.store.rename(from, to)?;
            }
        }
        Ok(())
    }

    fn remove_file(&mut self, path: &str) -> core::result::Result<(), StoreError> {
        self.all(|s| s.remove_file(path))?;
        // Written again later (a resume cuts back to its checkpoint), a
        // segment is placed afresh where there is room; its new entry wins.
        if self.map.placed.remove(path).is_some() {
            self.map_changed = true;
        }
        Ok(())
    }

    fn remove_dir(&mut self, path: &str) -> core::result::Result<(), StoreError> {
        self.all(|s| s.remove_dir(path))
    }

    fn sync(&mut self, path: &str) -> core::result::Result<(), StoreError> {
        if is_placed(path) {
            if let Some(i) = self.holder(path)? {
                return self.media[i].store.sync(path);
            }
            return Ok(());
        }
        for a in &mut self.media {
            a.store.sync(path)?;
        }
        Ok(())
    }

    /// Room for segments over the whole span: on each medium what is free
    /// beyond its reserve, when that is enough to start a segment (a medium
    /// with less gets no new segment: see `place`). The reserve holds the
    /// medium's copy of the index, manifests and journal, so it is no room
    /// for records on any medium; counting it once (as this did before)
    /// let a `--dry-run` promise a fit the capture then could not keep.
    fn file_system_findings(&mut self) -> core::result::Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for a in self.media.iter_mut() {
            for f in a.store.file_system_findings()? {
                out.push(format!("medium #{}: {f}", a.ordinal));
            }
        }
        Ok(out)
    }
    fn left_mid_write(&self) -> bool {
        self.media.iter().any(|a| a.store.left_mid_write())
    }
    fn damaged_hints(&self) -> Option<String> {
        let said: Vec<String> = self
            .media
            .iter()
            .filter_map(|a| a.store.damaged_hints())
            .collect();
        (!said.is_empty()).then(|| said.join("; "))
    }
    fn lost_dirs(&mut self, under: &str) -> core::result::Result<Vec<Vec<String>>, StoreError> {
        let mut out = Vec::new();
        for a in self.media.iter_mut() {
            out.extend(a.store.lost_dirs(under)?);
        }
        Ok(out)
    }
    fn lost_clusters(&mut self) -> core::result::Result<Option<String>, StoreError> {
        let mut said = Vec::new();
        for a in self.media.iter_mut() {
            if let Some(s) = a.store.lost_clusters()? {
                said.push(format!("medium #{}: {s}", a.ordinal));
            }
        }
        Ok((!said.is_empty()).then(|| said.join("; ")))
    }
    fn chain_findings(&mut self) -> core::result::Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for a in self.media.iter_mut() {
            for f in a.store.chain_findings()? {
                out.push(format!("medium #{}: {f}", a.ordinal));
            }
        }
        Ok(out)
    }

    fn free_space(&mut self) -> core::result::Result<Option<u64>, StoreError> {
        let mut sum = 0u64;
        for i in 0..self.media.len() {
            if self.media[i].store.free_space()?.is_none() {
                return Ok(None);
            }
            let o = self.media[i].ordinal;
            if self.map.member(o).is_some_and(|m| m.lost) {
                continue;
            }
            let room = self.room_on(i)?;
            if room >= self.opts.min_room {
                sum = sum.saturating_add(room);
            }
        }
        Ok(Some(sum))
    }

    fn free_space_resuming(&mut self, name: &str) -> core::result::Result<Option<u64>, StoreError> {
        let mut sum = 0u64;
        for i in 0..self.media.len() {
            let o = self.media[i].ordinal;
            let Some(free) = self.media[i].store.free_space_resuming(name)? else {
                return Ok(None);
            };
            if self.map.member(o).is_some_and(|m| m.lost) {
                continue;
            }
            let room = free.saturating_sub(self.opts.reserve);
            if room >= self.opts.min_room {
                sum = sum.saturating_add(room);
            }
        }
        Ok(Some(sum))
    }

    fn room(&mut self, path: &str) -> core::result::Result<Option<u64>, StoreError> {
        if !is_placed(path) {
            return Ok(None);
        }
        match self.holder(path)? {
            Some(i) => Ok(Some(self.room_on(i)?)),
            None => Ok(None),
        }
    }

    /// Closes every medium, also when one fails; reports the first failure.
    fn close(mut self: Box<Self>) -> core::result::Result<(), StoreError> {
        let mut first = match self.map_changed && self.writable {
            true => self.settle_map().map_err(|e| StoreError::Io(e.to_string())),
            false => Ok(()),
        };
        for m in self.into_media() {
            let r = Box::new(m).close();
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    fn span(&self) -> Option<&dyn SpanView> {
        Some(self)
    }
}

#[cfg(all(test, feature = "crypto"))]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use crate::{
        verify_keyless, CaptureParams, CaptureReader, CaptureWriter, ChunkData, NoProgress, Unlock,
    };

    const CS: u32 = 64 * 1024;
    const OPTS: SpanOptions = SpanOptions {
        reserve: 64 * 1024,
        min_room: 2 * CS as u64,
    };

    /// Incompressible, so it needs about its size on the media.
    fn disk(len: usize) -> Vec<u8> {
        crate::bench::noise(len, 1)
    }

    /// Media `a` and `b` joined as one span (labelled A and B), none declared lost.
    fn join_ab<'m>(
        a: &'m mut MemStore,
        b: &'m mut MemStore,
        id: [u8; 16],
    ) -> Result<SpanStore<&'m mut dyn Store>> {
        SpanStore::join(
            alloc::vec![
                (a as &mut dyn Store, "A".into()),
                (b as &mut dyn Store, "B".into())
            ],
            id,
            OPTS,
            &[],
        )
    }

    /// Media `x` and `y`, in that order, opened for reading as one span (named as given).
    fn read_two<'m>(
        x: (&'m mut MemStore, &str),
        y: (&'m mut MemStore, &str),
    ) -> Result<SpanStore<&'m mut dyn Store>> {
        SpanStore::open(
            alloc::vec![
                (x.0 as &mut dyn Store, x.1.into()),
                (y.0 as &mut dyn Store, y.1.into())
            ],
            true,
        )
    }

    fn small(cap: u64) -> MemStore {
        let mut s = MemStore::new();
        s.set_capacity(Some(cap));
        s
    }

    fn capture(
        store: &mut dyn Store,
        name: &str,
        data: &[u8],
        id: &age::x25519::Identity,
    ) -> Result<()> {
        let mut p = CaptureParams::new(name, data.len() as u64);
        p.chunk_size = CS;
        p.recipients = alloc::vec![id.to_public()];
        let key = match crate::unlock_data_key(store, name, &Unlock::Identity(id.clone())) {
            Ok((k, _)) => Some(k),
            Err(_) => None,
        };
        let mut w = CaptureWriter::begin(store, p, key)?;
        let enc = w.encoder();
        for i in w.resume_from()..w.chunk_count() {
            let s = (i * u64::from(CS)) as usize;
            let e = (s + CS as usize).min(data.len());
            w.append(enc.encode(i, &data[s..e])?)?;
        }
        w.finish()?;
        Ok(())
    }

    fn read_back(store: &mut dyn Store, name: &str, id: &age::x25519::Identity) -> Result<Vec<u8>> {
        let mut r = CaptureReader::open(store, name, None, &Unlock::Identity(id.clone()))?;
        let mut out = Vec::new();
        for i in 0..r.chunk_count() {
            match r.read_chunk(i)? {
                ChunkData::Zero { len } => out.resize(out.len() + len as usize, 0),
                ChunkData::Data(d) => out.extend_from_slice(&d),
            }
        }
        Ok(out)
    }

    #[test]
    fn a_capture_too_big_for_one_medium_spans_two_and_reads_back_in_any_order() {
        let data = disk(40 * CS as usize);
        let id = age::x25519::Identity::generate();
        let (mut a, mut b) = (small(1_600_000), small(3_000_000));
        {
            let span = join_ab(&mut a, &mut b, [7; 16]);
            let mut span = span.unwrap();
            capture(&mut span, "web01", &data, &id).unwrap();
            assert!(span.unreachable().is_empty());
            let on: Vec<u16> = span.map().placed.values().copied().collect();
            assert!(
                on.contains(&0) && on.contains(&1),
                "segments on both media: {on:?}"
            );
        }
        // Each medium verifies alone: no problem, the other's segments named.
        for (m, other) in [(&mut a, 1u16), (&mut b, 0u16)] {
            let r = verify_keyless(m, &mut NoProgress).unwrap();
            assert!(r.is_ok(), "{:?}", r.problems);
            assert!(!r.elsewhere.is_empty());
            assert!(
                r.elsewhere.iter().all(|e| e.ordinal == other),
                "{:?}",
                r.elsewhere
            );
            let info = read_span(m).unwrap().unwrap();
            assert_eq!(info.label.unwrap().id, [7; 16]);
            assert_eq!(info.map.members.len(), 2);
        }
        // Read back through the union, media given in reverse order.
        let mut span = read_two((&mut b, "B"), (&mut a, "A")).unwrap();
        assert_eq!(span.attached(), alloc::vec![0, 1]);
        assert_eq!(read_back(&mut span, "web01", &id).unwrap(), data);
        let r = verify_keyless(&mut span, &mut NoProgress).unwrap();
        assert!(r.is_ok() && r.elsewhere.is_empty(), "{r:?}");
        drop(span);
        // One medium only: the reader fails on a segment that is elsewhere,
        // and the span says which medium holds it.
        let span =
            SpanStore::open(alloc::vec![(&mut b as &mut dyn Store, "B".into())], true).unwrap();
        let missing = span.missing();
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].label, "A");
        let far = span.unreachable();
        assert!(!far.is_empty() && far.iter().all(|(_, o)| *o == 0));
    }

    /// One medium of a span given, its copies of the key slots gone (erased, removed): "no
    /// key opens this capture any more" was said while the other medium holds copies. The
    /// others are named.
    #[test]
    fn key_slots_gone_from_one_medium_of_a_span_name_the_others() {
        let data = disk(40 * CS as usize);
        let id = age::x25519::Identity::generate();
        let (mut a, mut b) = (small(1_600_000), small(3_000_000));
        {
            let mut span = join_ab(&mut a, &mut b, [7; 16]).unwrap();
            capture(&mut span, "web01", &data, &id).unwrap();
        }
        b.remove_file("MGEAR/web01/KEYS").unwrap();
        let mut span =
            SpanStore::open(alloc::vec![(&mut b as &mut dyn Store, "B".into())], true).unwrap();
        let Err(e) = crate::unlock_data_key(&mut span, "web01", &Unlock::Identity(id.clone()))
        else {
            panic!("no slot here")
        };
        let e = e.to_string();
        assert!(e.contains("every medium of its span holds a copy"), "{e}");
        assert!(e.contains("(A)"), "{e}");
        assert!(!e.contains("no key opens"), "{e}");
    }

    /// Every file of capture `name` removed through `span`, deepest directories last, as
    /// `mgear medium rm` does.
    fn remove_capture<S: Store>(span: &mut S, name: &str) {
        let dir = crate::layout::capture_dir(name);
        let mut files = Vec::new();
        walk(span, &dir, &mut files).unwrap();
        for f in &files {
            span.remove_file(f).unwrap();
        }
        let mut dirs: Vec<String> = files
            .iter()
            .filter_map(|f| f.rsplit_once('/').map(|(d, _)| String::from(d)))
            .collect();
        dirs.sort_by_key(|d| core::cmp::Reverse(d.len()));
        dirs.dedup();
        for d in dirs {
            let _ = span.remove_dir(&d);
        }
        span.remove_dir(&dir).unwrap();
    }

    /// `medium rm` of a spanned capture: the map (entries only appended) kept counting its
    /// segments, and once no capture was left the media stayed bound, none writable alone.
    /// The map is rewritten without them, and a span with no capture left is dissolved.
    #[test]
    fn a_span_forgets_removed_segments_and_dissolves_when_nothing_is_left() {
        let data = disk(40 * CS as usize);
        let id = age::x25519::Identity::generate();
        let (mut a, mut b) = (small(1_600_000), small(3_000_000));
        {
            let mut span = join_ab(&mut a, &mut b, [7; 16]).unwrap();
            capture(&mut span, "web01", &data, &id).unwrap();
            capture(&mut span, "db01", &data[..4 * CS as usize], &id).unwrap();
            Box::new(span).close().unwrap();
        }
        let web01 = |m: &mut MemStore| {
            read_span(m)
                .unwrap()
                .unwrap()
                .map
                .placed
                .keys()
                .filter(|p| p.contains("web01"))
                .count()
        };
        assert!(web01(&mut a) + web01(&mut b) > 1);
        {
            let mut span = join_ab(&mut a, &mut b, [7; 16]).unwrap();
            remove_capture(&mut span, "web01");
            Box::new(span).close().unwrap();
        }
        assert_eq!((web01(&mut a), web01(&mut b)), (0, 0));
        assert!(read_span(&mut a).unwrap().is_some(), "db01 keeps the span");
        {
            let mut span = join_ab(&mut a, &mut b, [7; 16]).unwrap();
            remove_capture(&mut span, "db01");
            Box::new(span).close().unwrap();
        }
        for m in [&mut a, &mut b] {
            assert!(read_span(m).unwrap().is_none());
            assert_eq!(m.len(SPAN_FILE).unwrap(), None);
            assert_eq!(m.len(SPANMAP_FILE).unwrap(), None);
        }
        // Each is a medium of its own again: a capture onto one alone is written.
        capture(&mut a, "solo", &data[..2 * CS as usize], &id).unwrap();
        assert_eq!(
            read_back(&mut a, "solo", &id).unwrap(),
            data[..2 * CS as usize]
        );
    }

    /// A segment the map places on medium B, deleted from B: B alone, B through a span
    /// store of its own (as the host opens a labelled medium) and both media together all
    /// call it missing. Through a span store it was listed as "on medium #1, verify it
    /// there" while #1 was the medium being verified, and keyless verify said OK.
    #[test]
    fn a_segment_missing_from_the_medium_the_map_places_it_on_is_a_problem() {
        let data = disk(40 * CS as usize);
        let id = age::x25519::Identity::generate();
        let (mut a, mut b) = (small(1_600_000), small(3_000_000));
        let gone = {
            let mut span = join_ab(&mut a, &mut b, [7; 16]).unwrap();
            capture(&mut span, "web01", &data, &id).unwrap();
            span.map()
                .placed
                .iter()
                .find(|(_, o)| **o == 1)
                .map(|(p, _)| p.clone())
                .expect("a segment on B")
        };
        b.remove_file(&gone).unwrap();
        let missing = |r: &crate::VerifyReport| {
            r.problems
                .iter()
                .any(|p| p.what.contains("missing") && p.at.to_string().contains(&gone))
        };
        let r = verify_keyless(&mut b, &mut NoProgress).unwrap();
        assert!(missing(&r), "B alone: {r:?}");
        let mut one =
            SpanStore::open(alloc::vec![(&mut b as &mut dyn Store, "B".into())], true).unwrap();
        let r = verify_keyless(&mut one, &mut NoProgress).unwrap();
        assert!(missing(&r), "B through a span store: {r:?}");
        assert!(
            r.elsewhere.iter().all(|e| e.ordinal == 0),
            "{:?}",
            r.elsewhere
        );
        drop(one);
        let mut both = read_two((&mut a, "A"), (&mut b, "B")).unwrap();
        let r = verify_keyless(&mut both, &mut NoProgress).unwrap();
        assert!(missing(&r) && r.elsewhere.is_empty(), "both: {r:?}");
        drop(both);

        // B's label removed: B alone says so (keyless verify said OK), and the media
        // together are refused with the way on.
        b.remove_file(SPAN_FILE).unwrap();
        let r = verify_keyless(&mut b, &mut NoProgress).unwrap();
        assert!(
            r.problems.iter().any(|p| p.what.contains("no span label")),
            "{:?}",
            r.problems
        );
        let e = read_two((&mut a, "A"), (&mut b, "B"))
            .err()
            .expect("refused");
        assert!(
            e.to_string().contains("span label (MGEAR/SPAN) is missing"),
            "{e}"
        );

        // A's span map removed: named alone (its absence made B's segments "missing") and
        // together (the media verified OK).
        let (mut a, mut b) = (small(1_600_000), small(3_000_000));
        {
            let mut span = join_ab(&mut a, &mut b, [8; 16]).unwrap();
            capture(&mut span, "web01", &data, &id).unwrap();
        }
        a.remove_file(SPANMAP_FILE).unwrap();
        let r = verify_keyless(&mut a, &mut NoProgress).unwrap();
        let named = |r: &crate::VerifyReport| {
            r.problems
                .iter()
                .any(|p| p.what.contains("span map") && p.what.contains("missing (MGEAR/SPANMAP)"))
        };
        assert!(named(&r), "A alone: {:?}", r.problems);
        let mut both = read_two((&mut a, "A"), (&mut b, "B")).unwrap();
        let r = verify_keyless(&mut both, &mut NoProgress).unwrap();
        assert!(named(&r), "both: {:?}", r.problems);
    }

    /// Two media whose labels were swapped: each read alone is read as the member
    /// whose segments it holds (it "missed" them, and an intact shipment ingested
    /// one medium at a time was refused), and keyless verify names the label.
    #[test]
    fn a_medium_whose_label_names_another_member_is_read_as_the_one_it_holds() {
        let data = disk(40 * CS as usize);
        let id = age::x25519::Identity::generate();
        let (mut a, mut b) = (small(1_600_000), small(3_000_000));
        {
            let mut span = join_ab(&mut a, &mut b, [9; 16]).unwrap();
            capture(&mut span, "web01", &data, &id).unwrap();
        }
        let la = a.file_mut(SPAN_FILE).unwrap().clone();
        let lb = b.file_mut(SPAN_FILE).unwrap().clone();
        *a.file_mut(SPAN_FILE).unwrap() = lb;
        *b.file_mut(SPAN_FILE).unwrap() = la;
        for (m, holds) in [(&mut a, 0u16), (&mut b, 1u16)] {
            let mut one =
                SpanStore::open(alloc::vec![(&mut *m as &mut dyn Store, "M".into())], true)
                    .unwrap();
            assert_eq!(one.attached(), alloc::vec![holds]);
            assert_eq!(
                one.relabelled(),
                alloc::vec![("M".into(), 1 - holds, holds)]
            );
            assert!(one.unreachable().iter().all(|(_, o)| *o == 1 - holds));
            let r = verify_keyless(&mut one, &mut NoProgress).unwrap();
            assert!(
                !r.problems.iter().any(|p| p.what.contains("missing")),
                "{:?}",
                r.problems
            );
            assert!(
                r.problems
                    .iter()
                    .any(|p| p.what.contains("its span label says it is medium")),
                "{:?}",
                r.problems
            );
        }
        let mut both = read_two((&mut b, "B"), (&mut a, "A")).unwrap();
        assert_eq!(both.relabelled().len(), 2);
        assert_eq!(read_back(&mut both, "web01", &id).unwrap(), data);
        drop(both);
        // A's label copied onto B too (both say #1 now): B is still read as the member it
        // holds (it was refused as "medium #1 given twice").
        let la = a.file_mut(SPAN_FILE).unwrap().clone();
        *b.file_mut(SPAN_FILE).unwrap() = la;
        let mut both = read_two((&mut a, "A"), (&mut b, "B")).unwrap();
        assert_eq!(both.attached(), alloc::vec![0, 1]);
        assert_eq!(read_back(&mut both, "web01", &id).unwrap(), data);
    }

    #[test]
    fn writing_needs_every_medium_of_the_span_and_one_span_only() {
        let data = disk(30 * CS as usize);
        let id = age::x25519::Identity::generate();
        let (mut a, mut b) = (small(1_200_000), small(3_000_000));
        {
            let mut span = join_ab(&mut a, &mut b, [1; 16]).unwrap();
            capture(&mut span, "web01", &data, &id).unwrap();
        }
        let err = SpanStore::join(
            alloc::vec![(&mut b as &mut dyn Store, "B".into())],
            [2; 16],
            OPTS,
            &[],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("medium #0 (A)") && err.contains("not attached"),
            "{err}"
        );
        let mut other = small(3_000_000);
        {
            let mut c = MemStore::new();
            let mut s = SpanStore::join(
                alloc::vec![
                    (&mut other as &mut dyn Store, "O".into()),
                    (&mut c as &mut dyn Store, "C".into())
                ],
                [3; 16],
                OPTS,
                &[],
            )
            .unwrap();
            capture(&mut s, "db01", &data[..CS as usize], &id).unwrap();
        }
        let err = read_two((&mut a, "A"), (&mut other, "O"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("another span"), "{err}");
    }

    #[test]
    fn a_full_span_stops_resumably_and_a_third_medium_finishes_it() {
        let data = disk(40 * CS as usize);
        let id = age::x25519::Identity::generate();
        let (mut a, mut b, mut c) = (small(1_000_000), small(1_000_000), small(3_000_000));
        {
            let mut span = join_ab(&mut a, &mut b, [4; 16]).unwrap();
            let err = capture(&mut span, "web01", &data, &id).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Store {
                        error: StoreError::NoSpace,
                        ..
                    }
                ),
                "{err}"
            );
        }
        // The same capture with one more medium resumes and finishes.
        {
            let mut span = SpanStore::join(
                alloc::vec![
                    (&mut c as &mut dyn Store, "C".into()),
                    (&mut a as &mut dyn Store, "A".into()),
                    (&mut b as &mut dyn Store, "B".into()),
                ],
                [9; 16],
                OPTS,
                &[],
            )
            .unwrap();
            assert_eq!(span.id(), [4; 16]);
            let mut p = CaptureParams::new("web01", data.len() as u64);
            p.chunk_size = CS;
            p.recipients = alloc::vec![id.to_public()];
            let (key, _) =
                crate::unlock_data_key(&mut span, "web01", &Unlock::Identity(id.clone())).unwrap();
            let w = CaptureWriter::begin(&mut span, p, Some(key)).unwrap();
            assert!(w.resume_from() > 0, "resumed, not restarted");
            drop(w);
            capture(&mut span, "web01", &data, &id).unwrap();
            assert_eq!(read_back(&mut span, "web01", &id).unwrap(), data);
            assert_eq!(span.map().member(2).unwrap().label, "C");
        }
        for m in [&mut a, &mut b, &mut c] {
            let r = verify_keyless(m, &mut NoProgress).unwrap();
            assert!(r.is_ok(), "{:?}", r.problems);
        }
    }

    #[test]
    fn a_lost_medium_is_replaced_by_capturing_again_only_what_it_held() {
        let mut data = disk(40 * CS as usize);
        let id = age::x25519::Identity::generate();
        let (mut a, mut b, mut c) = (small(1_600_000), small(3_000_000), small(3_000_000));
        {
            let mut span = join_ab(&mut a, &mut b, [6; 16]).unwrap();
            capture(&mut span, "web01", &data, &id).unwrap();
        }
        // The chunks whose records went to B.
        let on_b: Vec<u64> = {
            let map = span_map_of(&mut a);
            let mut span =
                SpanStore::open(alloc::vec![(&mut a as &mut dyn Store, "A".into())], true).unwrap();
            let r = CaptureReader::open(&mut span, "web01", None, &Unlock::Identity(id.clone()))
                .unwrap();

            (0..r.chunk_count())
                .filter(|&i| match r.entry(i) {
                    Some(crate::layout::IndexEntry::Stored(l)) => {
                        let p = layout::segment_path("web01", l.generation, l.segment);
                        map.placed.get(&p) == Some(&1)
                    }
                    _ => false,
                })
                .collect()
        };
        assert!(!on_b.is_empty() && on_b.len() < 40, "{on_b:?}");
        drop(b);
        // B is lost: without saying so, the span cannot be written.
        let err = SpanStore::join(
            alloc::vec![
                (&mut a as &mut dyn Store, "A".into()),
                (&mut c as &mut dyn Store, "C".into())
            ],
            [0; 16],
            OPTS,
            &[],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("--replace-medium 'B'"), "{err}");
        // The source kept running: chunk 0 changed meanwhile.
        data[0] ^= 0xff;
        let mut span = SpanStore::join(
            alloc::vec![
                (&mut a as &mut dyn Store, "A".into()),
                (&mut c as &mut dyn Store, "C".into())
            ],
            [0; 16],
            OPTS,
            &["B".into()],
        )
        .unwrap();
        let mut p = CaptureParams::new("web01", data.len() as u64);
        p.chunk_size = CS;
        p.recipients = alloc::vec![id.to_public()];
        p.delta = true;
        let (key, _) =
            crate::unlock_data_key(&mut span, "web01", &Unlock::Identity(id.clone())).unwrap();
        let mut w = CaptureWriter::begin(&mut span, p, Some(key)).unwrap();
        let enc = w.encoder();
        for i in 0..w.chunk_count() {
            let s = (i * u64::from(CS)) as usize;
            w.append(enc.encode(i, &data[s..s + CS as usize]).unwrap())
                .unwrap();
        }
        let sum = w.finish().unwrap();
        assert_eq!(sum.generation, 2);
        // Exactly B's share and the changed chunk were stored again.
        let again = on_b.len() as u64 + u64::from(!on_b.contains(&0));
        assert_eq!(sum.stored_chunks, again);
        assert_eq!(read_back(&mut span, "web01", &id).unwrap(), data);
        assert!(span.map().member(1).unwrap().lost);
        drop(span);
        let r = verify_keyless(&mut c, &mut NoProgress).unwrap();
        assert!(r.is_ok(), "{:?}", r.problems);
        assert!(
            r.elsewhere
                .iter()
                .any(|e| e.medium.contains("declared lost")),
            "{:?}",
            r.elsewhere
        );
    }

    #[test]
    fn a_medium_a_capture_filled_joins_a_span_after_its_uncommitted_tail_is_cut() {
        let data = disk(40 * CS as usize);
        let id = age::x25519::Identity::generate();
        let (mut a, mut b) = (small(1_000_000), small(4_000_000));
        // Alone, the capture fills A; its only checkpoint is at chunk 0.
        let err = capture(&mut a, "web01", &data, &id).unwrap_err();
        assert!(err.to_string().contains("no space"), "{err}");
        // Not one byte left (a file outside the format takes the rest).
        let free = a.free_space().unwrap().unwrap();
        a.write_at("FILLER", 0, &alloc::vec![0u8; free as usize])
            .unwrap();
        assert_eq!(a.free_space().unwrap(), Some(0));
        // "Add one more medium and re-run": joining writes the span's map
        // onto A, which needs the uncommitted tail cut back first.
        let mut span = join_ab(&mut a, &mut b, [5; 16]).unwrap();
        capture(&mut span, "web01", &data, &id).unwrap();
        assert_eq!(read_back(&mut span, "web01", &id).unwrap(), data);
    }

    #[test]
    fn a_join_that_fails_leaves_nothing_on_the_media_that_were_joining() {
        let data = disk(200 * CS as usize);
        let id = age::x25519::Identity::generate();
        let mut a = MemStore::new();
        capture(&mut a, "web01", &data, &id).unwrap();
        // Room for the label and the map, not for a copy of web01's index.
        let mut b = small(4096);
        let err = join_ab(&mut a, &mut b, [6; 16]).err().unwrap();
        assert!(err.to_string().contains("no space"), "{err}");
        for m in [&mut a, &mut b] {
            assert_eq!(m.len(SPAN_FILE).unwrap(), None);
            assert_eq!(m.len(SPANMAP_FILE).unwrap(), None);
        }
        let mut left = Vec::new();
        walk(&mut b, ROOT_DIR, &mut left).unwrap();
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(b.free_space().unwrap(), Some(4096));
        // A is as it was: its capture still reads back alone.
        assert_eq!(read_back(&mut a, "web01", &id).unwrap(), data);
    }

    #[test]
    fn free_space_counts_only_what_segments_can_use_on_each_medium() {
        let (mut a, mut b) = (small(1_000_000), small(150_000));
        let mut span = SpanStore::open(
            alloc::vec![
                (&mut a as &mut dyn Store, "A".into()),
                (&mut b as &mut dyn Store, "B".into())
            ],
            false,
        )
        .unwrap();
        assert_eq!(
            span.free_space().unwrap(),
            Some(1_150_000),
            "no plan: all of it"
        );
        span.plan_with(OPTS);
        // A keeps its reserve; B, once its reserve is kept, has less room
        // than a segment needs, so it takes none.
        assert_eq!(
            span.free_space().unwrap(),
            Some(1_000_000 - OPTS.reserve),
            "a capture's reserve on every medium"
        );
    }

    fn span_map_of(m: &mut MemStore) -> SpanMap {
        read_span(m).unwrap().unwrap().map
    }

    #[test]
    fn a_torn_last_map_entry_is_ignored_and_damage_before_it_is_not() {
        let mut b = entry(KIND_JOINED, 0, "A");
        b.extend_from_slice(&entry(KIND_PLACED, 0, "MGEAR/x/G0001/SEG-00000"));
        let full = b.clone();
        b.extend_from_slice(&entry(KIND_JOINED, 1, "B")[..50]);
        let m = SpanMap::decode(&b).unwrap();
        assert_eq!(m.members.len(), 1);
        assert_eq!(m.holder("MGEAR/x/G0001/SEG-00000").unwrap().label, "A");
        let mut bad = full;
        bad[5] ^= 1;
        assert!(SpanMap::decode(&bad).is_err());
        let l = SpanLabel {
            id: [5; 16],
            ordinal: 3,
        };
        assert_eq!(SpanLabel::decode(&l.encode()).unwrap(), l);
        let mut e = l.encode();
        e[30] ^= 1;
        assert!(SpanLabel::decode(&e).is_err());
    }

    /// A span capture cut off at any single write on either medium (a kill, or one
    /// medium's cable pulled: what was not synced is lost, and a file created since its
    /// last sync is left empty or gone) is resumed by running it again: the media join,
    /// the capture finishes and reads back, and each medium verifies. Once onto two blank
    /// media, once onto a medium that holds a capture already (joining copies its files),
    /// once onto a medium that is a span of its own already.
    #[test]
    fn a_span_capture_cut_at_any_write_on_either_medium_resumes() {
        let data = disk(20 * CS as usize);
        let earlier = disk(3 * CS as usize);
        let id = age::x25519::Identity::generate();
        let mut failures = Vec::new();
        let mut cut_points = 0;
        for start in ["blank", "holding db01", "a span holding db01"] {
            let holding = start != "blank";
            let mut a0 = small(900_000);
            if start == "holding db01" {
                capture(&mut a0, "db01", &earlier, &id).unwrap();
            }
            if start == "a span holding db01" {
                let one = alloc::vec![(&mut a0 as &mut dyn Store, "A".into())];
                let mut span = SpanStore::join(one, [3; 16], OPTS, &[]).unwrap();
                capture(&mut span, "db01", &earlier, &id).unwrap();
            }
            for (which, new_files) in [(0, true), (1, true), (0, false), (1, false)] {
                for n in 0.. {
                    let (mut a, mut b) = (a0.clone(), small(3_000_000));
                    [&mut a, &mut b][which].cut_power_after(n);
                    let done = join_ab(&mut a, &mut b, [7; 16])
                        .and_then(|mut s| capture(&mut s, "web01", &data, &id));
                    if done.is_ok() {
                        assert!(n > 20, "the cut points were tried");
                        break;
                    }
                    cut_points += 1;
                    let lost = |m: &MemStore| match new_files {
                        true => m.after_power_loss(),
                        false => m.after_power_loss_dropping_new_files(),
                    };
                    let (mut a, mut b) = (lost(&a), lost(&b));
                    let at = format!(
                        "{start}, medium {which} cut at {n}, new files {}",
                        match new_files {
                            true => "kept empty",
                            false => "gone",
                        }
                    );
                    let again = join_ab(&mut a, &mut b, [8; 16]).and_then(|mut s| {
                        capture(&mut s, "web01", &data, &id)?;
                        let back = read_back(&mut s, "web01", &id)?;
                        if holding {
                            assert_eq!(read_back(&mut s, "db01", &id)?, earlier, "{at}");
                        }
                        Ok(back)
                    });
                    match again {
                        Ok(back) if back == data => {}
                        Ok(_) => failures.push(format!("{at}: read back differs")),
                        Err(e) => failures.push(format!("{at}: {e}")),
                    }
                    for m in [&mut a, &mut b] {
                        let r = verify_keyless(m, &mut NoProgress).unwrap();
                        if !r.is_ok() {
                            failures.push(format!("{at}: {:?}", r.problems));
                        }
                    }
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {cut_points} cut points: {failures:#?}",
            failures.len()
        );
    }
}
