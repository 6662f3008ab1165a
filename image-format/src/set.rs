//! Machine sets: the disks of one machine captured at one point in time.
//!
//! A machine with several disks is stored as one ordinary capture per disk
//! (a *disk stream*, named `<set>.d<k>`, k = 0, 1, ... in the machine's disk
//! order) plus, per generation, a small set manifest
//! `MGEAR/<set>/G<nnnn>/SET` that lists the disks in order and binds each
//! one by the root hash of its stream's MANIFEST of the same generation. So
//! everything the format does per disk (resume, delta, keyless verify, seal
//! and arrival, the signed COMMIT) keeps working unchanged on each stream,
//! and the set manifest is what makes them one machine: a disk dropped,
//! swapped with another, reordered or added is caught without any key
//! ([`check_set`]); the manifest itself is MACed with the data key the disks
//! share ([`SetFile::check_mac`]) and is signed like a generation, through a
//! COMMIT in its own generation directory whose manifest root is the set
//! manifest's root ([`crate::commit::expected_commit`]).
//!
//! All disks of a set share one capture id and data key, so their keyed
//! chunk ids are comparable (identical content has identical ids).
//!
//! # Byte layout (little-endian; FORMAT.md "Machine sets")
//!
//! ```text
//! signed part:
//! 0    8  SET_MAGIC = blake3("MotionGear set manifest v1")[0..8]
//! 8   12  version block: major u16 (1), minor u16 (0), incompat u32 (0), compat u32 (0)
//! 20   4  body length B
//! 24   B  body:
//!         16 capture id (shared by every disk stream of the set)
//!          4 generation (= the generation of every disk stream it binds)
//!          4 parent generation (0 = none)
//!          1 name length N, N bytes of set name
//!          8 created (Unix seconds)
//!          1 has appliance id, 32 appliance id (zeros if none)
//!         32 key check (as in MANIFEST)
//!          2 disk count D (1..=64)
//!          D times:
//!             8 disk size in bytes
//!             4 logical sector size (0 = unknown)
//!             1 partition table: 0 unknown, 1 none, 2 MBR, 3 GPT
//!             1 flags: bit 0 boot disk, bit 1 BIOS boot code, bit 2 EFI system partition
//!             2 reserved, zero
//!            32 manifest root of stream <set>.d<k>, same generation
//!             1 OS length (<= 128), OS (UTF-8; empty = not told)
//!             2 source length (<= 1024), source description (UTF-8)
//! then: root = blake3(signed part) (32) || mac = blake3_keyed(manifest-MAC subkey,
//!       signed part) (32) || crc32 of everything before (4)
//! ```
//!
//! The MAC uses the manifest-MAC subkey of the shared key; the magic keeps a
//! set manifest's MAC from ever being valid for a MANIFEST and vice versa.

use alloc::string::String;
use alloc::vec::Vec;

use crate::error::{Error, Location, Result, StoreCtx};
use crate::layout::{
    self, check_trailer, Rd, TrailerFault, MANIFEST_FILE, VERSION_MAJOR, VERSION_MINOR,
};
use crate::medium;
use crate::store::{EntryKind, Store};

/// File name of a set manifest inside the set's generation directory.
pub const SET_FILE: &str = "SET";

// DO NOT MODIFY (see layout.rs): blake3("MotionGear set manifest v1")[0..8]
/// blake3("MotionGear set manifest v1")[0..8]
pub const SET_MAGIC: [u8; 8] = [0x71, 0xef, 0x77, 0xa0, 0x0e, 0xcb, 0x20, 0x23];

/// Most disks in one set (the stream suffix `.d0` .. `.d63`).
pub const MAX_SET_DISKS: usize = 64;
/// Longest OS description kept per disk.
pub const MAX_OS: usize = 128;
/// Largest valid set manifest: readers refuse longer files unread.
pub const MAX_SET_LEN: u64 = (24
    + (16 + 4 + 4 + 1 + 32 + 8 + 1 + 32 + 32 + 2)
    + MAX_SET_DISKS * (48 + 1 + MAX_OS + 2 + layout::MAX_DESC)
    + 68) as u64;

/// The stream (ordinary capture) that holds disk `disk` of set `set`: `db01.d1`.
pub fn disk_stream_name(set: &str, disk: usize) -> String {
    alloc::format!("{set}.d{disk}")
}

/// The name a capture command takes for capture `name`: the set's for a
/// disk stream (a set is captured, aborted and removed whole), else `name`.
pub fn owner(name: &str) -> &str {
    parse_disk_stream_name(name).map_or(name, |(set, _)| set)
}

/// `db01.d1` into (`db01`, 1); `None` for a name that is not a disk stream.
/// `DB01.D1` too: names are compared without case (FAT stores them so), and
/// a user who typed the set's name in capitals was told the stream's name
/// was "invalid".
pub fn parse_disk_stream_name(name: &str) -> Option<(&str, usize)> {
    let (set, rest) = name.rsplit_once('.')?;
    let k = rest.strip_prefix(['d', 'D'])?;
    if k.is_empty() || k.len() > 2 || !k.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if k.len() > 1 && k.starts_with('0') {
        return None;
    }
    let k: usize = k.parse().ok()?;
    (k < MAX_SET_DISKS && layout::validate_plain_name(set).is_ok()).then_some((set, k))
}

/// The capture whose segment holds a record an index entry of capture
/// `own` points at: `own` itself for stream 0, disk stream k of the same set
/// for stream k + 1 (`layout::INCOMPAT_CROSS_STREAM`); `None` when `own` is
/// not a disk stream or k is out of range.
pub fn record_stream(own: &str, stream: u16) -> Option<String> {
    if stream == 0 {
        return Some(own.into());
    }
    let (set, _) = parse_disk_stream_name(own)?;
    let k = usize::from(stream) - 1;
    (k < MAX_SET_DISKS).then(|| disk_stream_name(set, k))
}

/// The stream number an index entry of another disk uses for disk stream
/// `name` (its disk index + 1).
pub fn stream_number(name: &str) -> Option<u16> {
    let (_, k) = parse_disk_stream_name(name)?;
    u16::try_from(k + 1).ok()
}

/// `MGEAR/<set>/G<nnnn>/SET`
pub fn set_path(set: &str, generation: u32) -> String {
    layout::generation_file(set, generation, SET_FILE)
}

/// Partition table kind of a disk, as far as the capture host could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    Unknown,
    /// No partition table (blank, or a file system on the whole disk).
    None,
    Mbr,
    Gpt,
}

impl TableKind {
    fn to_byte(self) -> u8 {
        match self {
            TableKind::Unknown => 0,
            TableKind::None => 1,
            TableKind::Mbr => 2,
            TableKind::Gpt => 3,
        }
    }
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => TableKind::Unknown,
            1 => TableKind::None,
            2 => TableKind::Mbr,
            3 => TableKind::Gpt,
            _ => return None,
        })
    }
    /// `unknown`, `none`, `mbr`, `gpt`.
    pub fn as_str(self) -> &'static str {
        match self {
            TableKind::Unknown => "unknown",
            TableKind::None => "none",
            TableKind::Mbr => "mbr",
            TableKind::Gpt => "gpt",
        }
    }
}

/// One disk of a set, in the machine's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDisk {
    pub size: u64,
    /// Logical sector size in bytes (0 = unknown).
    pub sector_size: u32,
    pub table: TableKind,
    /// The disk the machine boots from (at most one per set).
    pub boot: bool,
    /// MBR boot code present (a BIOS can start it).
    pub bios_boot: bool,
    /// An EFI system partition present (UEFI can start it).
    pub efi_boot: bool,
    /// Root hash of the stream's MANIFEST of this generation.
    pub manifest_root: [u8; 32],
    /// Operating system found on the disk ("Debian GNU/Linux 12"); empty if not told.
    pub os: String,
    /// Where the disk was read from.
    pub source_desc: String,
}

/// Everything a set manifest says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetManifest {
    pub capture_id: [u8; 16],
    pub generation: u32,
    /// Parent generation of a delta (0 = none).
    pub parent: u32,
    pub name: String,
    pub created_unix: u64,
    pub appliance_id: Option<[u8; 32]>,
    pub key_check: [u8; 32],
    pub disks: Vec<SetDisk>,
}

/// A decoded set manifest file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetFile {
    pub set: SetManifest,
    /// blake3 of the signed part: what a COMMIT of the set signs.
    pub root: [u8; 32],
    /// Keyed blake3 of the signed part (manifest-MAC subkey of the shared key).
    pub mac: [u8; 32],
    /// The signed part as read (or written): the MAC is checked over these bytes, not over
    /// the fields encoded again, so bytes a field's value does not use cannot change unseen.
    pub signed: Vec<u8>,
}

fn clip(s: &str, max: usize) -> &[u8] {
    let b = s.as_bytes();
    &b[..b.len().min(max)]
}

impl SetManifest {
    /// Header and body: the bytes the root hash and MAC cover.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(160 + self.disks.len() * 128);
        body.extend_from_slice(&self.capture_id);
        body.extend_from_slice(&self.generation.to_le_bytes());
        body.extend_from_slice(&self.parent.to_le_bytes());
        let name = clip(&self.name, 255);
        body.push(name.len() as u8);
        body.extend_from_slice(name);
        body.extend_from_slice(&self.created_unix.to_le_bytes());
        body.push(u8::from(self.appliance_id.is_some()));
        body.extend_from_slice(&self.appliance_id.unwrap_or([0; 32]));
        body.extend_from_slice(&self.key_check);
        let disks = &self.disks[..self.disks.len().min(MAX_SET_DISKS)];
        body.extend_from_slice(&(disks.len() as u16).to_le_bytes());
        for d in disks {
            body.extend_from_slice(&d.size.to_le_bytes());
            body.extend_from_slice(&d.sector_size.to_le_bytes());
            body.push(d.table.to_byte());
            body.push(
                u8::from(d.boot) | (u8::from(d.bios_boot) << 1) | (u8::from(d.efi_boot) << 2),
            );
            body.extend_from_slice(&[0, 0]);
            body.extend_from_slice(&d.manifest_root);
            let os = clip(&d.os, MAX_OS);
            body.push(os.len() as u8);
            body.extend_from_slice(os);
            let src = clip(&d.source_desc, layout::MAX_DESC);
            body.extend_from_slice(&(src.len() as u16).to_le_bytes());
            body.extend_from_slice(src);
        }
        let mut v = Vec::with_capacity(24 + body.len() + 68);
        v.extend_from_slice(&SET_MAGIC);
        v.extend_from_slice(&VERSION_MAJOR.to_le_bytes());
        v.extend_from_slice(&VERSION_MINOR.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(&body);
        v
    }

    /// The whole file: signed part, root hash, `mac`, CRC.
    pub fn encode(&self, mac: &[u8; 32]) -> Vec<u8> {
        let mut v = self.signed_bytes();
        let root = blake3::hash(&v);
        v.extend_from_slice(root.as_bytes());
        v.extend_from_slice(mac);
        let c = crc32fast::hash(&v);
        v.extend_from_slice(&c.to_le_bytes());
        v
    }

    /// The MAC of this set manifest under `key` (the data key its disks share).
    #[cfg(feature = "crypto")]
    pub fn mac(&self, key: &crate::DataKey) -> [u8; 32] {
        crate::keys::Subkeys::derive(key, &self.capture_id).manifest_mac(&self.signed_bytes())
    }

    /// The key check a set manifest made with `key` carries.
    #[cfg(feature = "crypto")]
    pub fn key_check_of(key: &crate::DataKey, capture_id: &[u8; 16]) -> [u8; 32] {
        crate::keys::Subkeys::derive(key, capture_id).key_check()
    }
}

impl SetFile {
    /// Decodes untrusted bytes and checks everything checkable without a key
    /// (magic, version, CRC, root hash, field ranges). The MAC is returned,
    /// not checked: see [`SetFile::check_mac`].
    pub fn decode(b: &[u8]) -> Result<SetFile, &'static str> {
        if b.len() as u64 > MAX_SET_LEN {
            return Err("set manifest is larger than any valid one");
        }
        if b.len() < 24 + 68 {
            return Err("set manifest truncated");
        }
        if b[..8] != SET_MAGIC {
            return Err("not a set manifest (bad magic)");
        }
        let mut r = Rd::new(&b[8..24]);
        if r.u16()? != VERSION_MAJOR {
            return Err("set manifest written by an unsupported major version of the format");
        }
        let _minor = r.u16()?;
        if r.u32()? != 0 {
            return Err("set manifest uses incompatible features this version does not know");
        }
        let _compat = r.u32()?;
        let body_len = r.u32()? as usize;
        let signed_len = 24usize
            .checked_add(body_len)
            .ok_or("set manifest length overflow")?;
        if b.len() != signed_len.saturating_add(68) {
            return Err("set manifest length does not match its header");
        }
        let (root, mac) = check_trailer(b, signed_len).map_err(|f| match f {
            TrailerFault::Truncated => "set manifest truncated",
            TrailerFault::Crc => "set manifest CRC mismatch",
            TrailerFault::Root => "set manifest root hash mismatch",
        })?;
        let mut r = Rd::new(&b[24..signed_len]);
        let capture_id = r.arr()?;
        let generation = r.u32()?;
        let parent = r.u32()?;
        let name_len = r.u8()? as usize;
        let name = core::str::from_utf8(r.bytes(name_len)?)
            .map_err(|_| "set manifest name is not UTF-8")?;
        if layout::validate_plain_name(name).is_err() {
            return Err("set manifest holds an invalid set name");
        }
        let created_unix = r.u64()?;
        let has_app = r.u8()?;
        let app: [u8; 32] = r.arr()?;
        let key_check = r.arr()?;
        let n = r.u16()? as usize;
        if n == 0 || n > MAX_SET_DISKS {
            return Err("set manifest lists no disk or more disks than a set may have");
        }
        let mut disks = Vec::with_capacity(n);
        let mut boots = 0;
        for _ in 0..n {
            let size = r.u64()?;
            let sector_size = r.u32()?;
            let table =
                TableKind::from_byte(r.u8()?).ok_or("set manifest has an unknown table kind")?;
            let flags = r.u8()?;
            if flags & !7 != 0 || r.u16()? != 0 {
                return Err("set manifest disk entry has unknown flags");
            }
            let manifest_root = r.arr()?;
            let os_len = r.u8()? as usize;
            if os_len > MAX_OS {
                return Err("set manifest OS description too long");
            }
            let os = core::str::from_utf8(r.bytes(os_len)?)
                .map_err(|_| "set manifest OS description is not UTF-8")?;
            let src_len = r.u16()? as usize;
            if src_len > layout::MAX_DESC {
                return Err("set manifest source description too long");
            }
            let src = core::str::from_utf8(r.bytes(src_len)?)
                .map_err(|_| "set manifest source description is not UTF-8")?;
            boots += usize::from(flags & 1 != 0);
            disks.push(SetDisk {
                size,
                sector_size,
                table,
                boot: flags & 1 != 0,
                bios_boot: flags & 2 != 0,
                efi_boot: flags & 4 != 0,
                manifest_root,
                os: os.into(),
                source_desc: src.into(),
            });
        }
        if r.pos() != body_len {
            return Err("set manifest body has trailing bytes");
        }
        if boots > 1 {
            return Err("set manifest names more than one boot disk");
        }
        if generation == 0 || generation > layout::MAX_GENERATIONS || parent >= generation {
            return Err("set manifest generation numbers are inconsistent");
        }
        Ok(SetFile {
            set: SetManifest {
                capture_id,
                generation,
                parent,
                name: name.into(),
                created_unix,
                appliance_id: (has_app != 0).then_some(app),
                key_check,
                disks,
            },
            root,
            mac,
            signed: b[..signed_len].to_vec(),
        })
    }

    /// Checks the MAC with `key`: a key failing the key check is the wrong
    /// key; one passing it but failing the MAC means the set manifest was
    /// rewritten by someone without the key (a disk dropped or reordered).
    #[cfg(feature = "crypto")]
    pub fn check_mac(&self, key: &crate::DataKey) -> Result<()> {
        let s = &self.set;
        if SetManifest::key_check_of(key, &s.capture_id) != s.key_check {
            return Err(Error::WrongKey {
                name: s.name.clone(),
            });
        }
        let mac = crate::keys::Subkeys::derive(key, &s.capture_id).manifest_mac(&self.signed);
        if mac != self.mac {
            return Err(Error::corrupt(
                Location::capture(&s.name)
                    .generation(s.generation)
                    .file(&set_path(&s.name, s.generation)),
                "set manifest MAC does not verify: the list of disks was modified",
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- on the medium

/// The set manifest of generation `generation` of set `set`; `Ok(None)` if
/// there is none. Longer files than [`MAX_SET_LEN`] are refused unread.
pub fn read_set<S: Store + ?Sized>(
    store: &mut S,
    set: &str,
    generation: u32,
) -> Result<Option<SetFile>> {
    let path = set_path(set, generation);
    let at = Location::capture(set).generation(generation).file(&path);
    let Some(bytes) = medium::read_file(store, &path, MAX_SET_LEN, &at)? else {
        return Ok(None);
    };
    let f = SetFile::decode(&bytes).map_err(|w| Error::corrupt(at.clone(), w))?;
    if f.set.generation != generation || f.set.name != set {
        return Err(Error::corrupt(
            at,
            alloc::format!(
                "set manifest belongs to set {} generation {} (moved or replayed file)",
                f.set.name,
                f.set.generation
            ),
        ));
    }
    Ok(Some(f))
}

/// Writes a set manifest atomically (`SET.TMP`, sync, rename, sync).
pub fn write_set<S: Store + ?Sized>(
    store: &mut S,
    set: &SetManifest,
    mac: &[u8; 32],
) -> Result<()> {
    layout::validate_plain_name(&set.name)?;
    let dir = layout::generation_dir(&set.name, set.generation);
    store.create_dir_all(&dir).at(&dir)?;
    let path = set_path(&set.name, set.generation);
    let tmp = alloc::format!("{path}.TMP");
    store.remove_file(&tmp).at(&tmp)?;
    store.write_at(&tmp, 0, &set.encode(mac)).at(&tmp)?;
    store.sync(&tmp).at(&tmp)?;
    store.rename(&tmp, &path).at(&path)?;
    store.sync(&path).at(&path)
}

/// Generations of `name` that hold a set manifest, ascending (empty: not a set).
pub fn set_generations<S: Store + ?Sized>(store: &mut S, name: &str) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for g in medium::generations(store, name)? {
        let p = set_path(name, g);
        if store.len(&p).at(&p)?.is_some() {
            out.push(g);
        }
    }
    Ok(out)
}

/// Is `MGEAR/<name>` a set directory (a generation holds `SET`, none holds
/// `MANIFEST`)? Such a directory is not a capture of its own.
pub fn is_set<S: Store + ?Sized>(store: &mut S, name: &str) -> Result<bool> {
    if parse_disk_stream_name(name).is_some() {
        return Ok(false);
    }
    let mut found = false;
    let mut committed = false;
    for g in medium::generations(store, name)? {
        let dir = layout::generation_dir(name, g);
        for e in medium::list_or_empty(store, &dir)? {
            if e.kind == EntryKind::File {
                if e.name == MANIFEST_FILE {
                    return Ok(false);
                }
                found |= e.name == SET_FILE;
                committed |= e.name == crate::commit::COMMIT_FILE;
            }
        }
    }
    if found {
        return Ok(true);
    }
    if !committed {
        return Ok(false);
    }
    // A finished set (its COMMIT is there) whose SET was lost, with no MANIFEST or key slot
    // either, and disk streams of this name beside it: a set directory all the same.
    // Verified as a plain capture it was "no key slot: nothing can ever decrypt this
    // capture" and "MANIFEST missing".
    let cap = layout::capture_dir(name);
    for slot in [layout::KEYS_FILE, layout::KEYPASS_FILE] {
        if store
            .len(&alloc::format!("{cap}/{slot}"))
            .at(&cap)?
            .is_some()
        {
            return Ok(false);
        }
    }
    Ok(crate::medium::capture_names(store)?
        .iter()
        .any(|c| parse_disk_stream_name(c).is_some_and(|(s, _)| s == name)))
}

/// What is wrong with the binding of a set manifest to its disk streams,
/// without any key: every listed disk's stream must hold a complete
/// generation of the same number whose MANIFEST root, capture id and disk
/// size are the ones listed (a dropped, swapped or reordered disk fails
/// here), and no stream of the set beyond the listed disks may hold that
/// generation (an added disk).
pub fn check_set<S: Store + ?Sized>(store: &mut S, f: &SetFile) -> Result<Vec<(Location, String)>> {
    let s = &f.set;
    let g = s.generation;
    let mut out = Vec::new();
    for (k, d) in s.disks.iter().enumerate() {
        let stream = disk_stream_name(&s.name, k);
        let at = Location::capture(&stream).generation(g);
        match medium::read_manifest(store, &stream, g) {
            Ok(None) => out.push((
                at,
                alloc::format!(
                    "disk {k} of set {} generation {g} is missing: the set lists it but {stream} \
                     has no finished generation {g} (a dropped disk)",
                    s.name
                ),
            )),
            Ok(Some(m)) => {
                if m.root != d.manifest_root {
                    out.push((
                        at,
                        alloc::format!(
                            "disk {k} of set {} generation {g}: {stream} is not the disk the set \
                             lists at this position (a swapped or reordered disk)",
                            s.name
                        ),
                    ));
                } else if m.manifest.capture_id != s.capture_id || m.manifest.disk_size != d.size {
                    out.push((
                        at,
                        alloc::format!(
                            "disk {k} of set {} generation {g}: {stream} has another capture id \
                             or size than the set lists",
                            s.name
                        ),
                    ));
                }
            }
            Err(Error::Corrupt { at, what }) => out.push((
                *at,
                alloc::format!(
                    "disk {k} of set {} generation {g}: {what} (a swapped or damaged disk)",
                    s.name
                ),
            )),
            Err(e) => return Err(e),
        }
    }
    for name in medium::capture_names(store)? {
        if let Some((set, k)) = parse_disk_stream_name(&name) {
            if set == s.name
                && k >= s.disks.len()
                && medium::generations(store, &name)?.contains(&g)
            {
                out.push((
                    Location::capture(&name).generation(g),
                    alloc::format!(
                        "{name} generation {g} is not listed in set {} generation {g}, which has \
                         {} disk(s) (an added disk)",
                        s.name,
                        s.disks.len()
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// A set as listed without any key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetInfo {
    pub name: String,
    /// Set generations with a readable set manifest, ascending.
    pub generations: Vec<SetFile>,
    /// Generations whose set manifest is damaged, with why.
    pub damaged: Vec<(u32, String)>,
}

/// Every set on the medium and its generations (keyless).
pub fn list_sets<S: Store + ?Sized>(store: &mut S) -> Result<Vec<SetInfo>> {
    let mut out = Vec::new();
    for name in medium::capture_names(store)? {
        match is_set(store, &name) {
            Ok(true) => {}
            // Damage in a directory that cannot be told a set: `list_captures` reports it.
            Ok(false) => continue,
            Err(e) if e.is_damage() => continue,
            Err(e) => return Err(e),
        }
        let mut info = SetInfo {
            name: name.clone(),
            generations: Vec::new(),
            damaged: Vec::new(),
        };
        for g in medium::generations(store, &name)? {
            match read_set(store, &name, g) {
                Ok(Some(f)) => info.generations.push(f),
                Ok(None) => info
                    .damaged
                    .push((g, "no set manifest (SET) in this generation".into())),
                Err(Error::Corrupt { what, .. }) => info.damaged.push((g, what)),
                Err(e) => return Err(e),
            }
        }
        out.push(info);
    }
    Ok(out)
}

/// Writes the set manifest of generation `generation` of set `name` over
/// its finished disk streams `<name>.d0 ..`: `disks` gives each disk's facts
/// in order (their `manifest_root` and `size` are taken from the streams
/// here). Every stream must hold that generation, finished, under the
/// shared capture id that `key` opens. Returns what was written.
#[cfg(feature = "crypto")]
pub fn write_set_of_streams<S: Store + ?Sized>(
    store: &mut S,
    mut set: SetManifest,
    key: &crate::DataKey,
) -> Result<SetFile> {
    layout::validate_plain_name(&set.name)?;
    if set.disks.is_empty() || set.disks.len() > MAX_SET_DISKS {
        return Err(Error::InvalidParams(alloc::format!(
            "a set has 1 to {MAX_SET_DISKS} disks, not {}",
            set.disks.len()
        )));
    }
    let g = set.generation;
    for (k, d) in set.disks.iter_mut().enumerate() {
        let stream = disk_stream_name(&set.name, k);
        let m = medium::read_manifest(store, &stream, g)?.ok_or_else(|| Error::NoGeneration {
            name: stream.clone(),
            why: alloc::format!("generation {g} of this disk is not finished"),
        })?;
        if m.manifest.capture_id != set.capture_id {
            return Err(Error::InvalidParams(alloc::format!(
                "{stream} has another capture id than set {}",
                set.name
            )));
        }
        d.manifest_root = m.root;
        d.size = m.manifest.disk_size;
    }
    set.key_check = SetManifest::key_check_of(key, &set.capture_id);
    let mac = set.mac(key);
    write_set(store, &set, &mac)?;
    let signed = set.signed_bytes();
    let root = *blake3::hash(&signed).as_bytes();
    Ok(SetFile {
        set,
        root,
        mac,
        signed,
    })
}

/// Opens generation `generation` (default: the newest) of set `name` for a
/// keyed reader: unwraps the shared data key from disk 0's key slot with
/// `unlock`, checks the set manifest's MAC and its binding to every disk
/// stream ([`check_set`]). Any problem is an error naming it.
#[cfg(feature = "crypto")]
pub fn open_set<S: Store + ?Sized>(
    store: &mut S,
    name: &str,
    generation: Option<u32>,
    unlock: &crate::Unlock,
) -> Result<(SetFile, crate::DataKey)> {
    let gens = set_generations(store, name)?;
    let g = match generation {
        Some(g) if gens.contains(&g) => g,
        Some(g) => {
            return Err(Error::NoGeneration {
                name: name.into(),
                why: alloc::format!("set generation {g} has no set manifest on this medium"),
            })
        }
        None => *gens
            .last()
            .ok_or_else(|| Error::NoCapture { name: name.into() })?,
    };
    let f = read_set(store, name, g)?.ok_or_else(|| Error::NoCapture { name: name.into() })?;
    let (key, _) = crate::keys::unlock_data_key(store, &disk_stream_name(name, 0), unlock)?;
    f.check_mac(&key)?;
    if let Some((at, what)) = check_set(store, &f)?.into_iter().next() {
        return Err(Error::corrupt(at, what));
    }
    Ok((f, key))
}

#[cfg(all(test, feature = "crypto"))]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use crate::verify::{assert_keyless_problem, keyless_problems};
    use crate::{CaptureParams, CaptureWriter, DataKey, NoProgress, Unlock};

    const CS: u32 = 64 * 1024;

    #[test]
    fn magic_matches_its_string() {
        assert_eq!(
            SET_MAGIC[..],
            blake3::hash(b"MotionGear set manifest v1").as_bytes()[..8]
        );
    }

    #[test]
    fn disk_stream_names() {
        assert_eq!(disk_stream_name("db01", 3), "db01.d3");
        assert_eq!(parse_disk_stream_name("db01.d3"), Some(("db01", 3)));
        assert_eq!(parse_disk_stream_name("a.b.d63"), None);
        assert_eq!(parse_disk_stream_name("DB01.D3"), Some(("DB01", 3)));
        layout::validate_name("WEB01.D0").unwrap();
        for bad in [
            "db01", "db01.d", "db01.d64", "db01.d03", ".d1", "db01.dx", "db 1.d1",
        ] {
            assert_eq!(parse_disk_stream_name(bad), None, "{bad}");
        }
        layout::validate_name("db01.d1").unwrap();
        assert!(layout::validate_plain_name("db01.d1").is_err());
    }

    /// Captures `data` as disk stream `name` of a set sharing `key`.
    fn stream(
        store: &mut MemStore,
        name: &str,
        data: &[u8],
        key: &DataKey,
        delta: bool,
        dedup_with: &[&str],
    ) -> crate::CaptureSummary {
        let mut p = CaptureParams::new(name, data.len() as u64);
        p.chunk_size = CS;
        p.recipients = vec![age::x25519::Identity::generate().to_public()];
        p.capture_id = Some([9; 16]);
        p.delta = delta;
        p.dedup_with = dedup_with.iter().map(|s| s.to_string()).collect();
        let mut w = CaptureWriter::begin(&mut *store, p, Some(key.clone())).unwrap();
        let enc = w.encoder();
        for i in 0..w.chunk_count() {
            let s = (i * u64::from(CS)) as usize;
            let e = (s + CS as usize).min(data.len());
            w.append(enc.encode(i, &data[s..e]).unwrap()).unwrap();
        }
        w.finish().unwrap()
    }

    fn read_all(store: &mut MemStore, name: &str, g: Option<u32>, key: &DataKey) -> Vec<u8> {
        let mut r = crate::CaptureReader::open_with_key(&mut *store, name, g, key).unwrap();
        let mut out = Vec::new();
        for i in 0..r.chunk_count() {
            match r.read_chunk(i).unwrap() {
                crate::ChunkData::Zero { len } => out.resize(out.len() + len as usize, 0),
                crate::ChunkData::Data(d) => out.extend_from_slice(&d),
            }
        }
        out
    }

    #[test]
    fn identical_chunks_of_a_machine_s_disks_are_stored_once() {
        let mut store = MemStore::new();
        let key = DataKey::generate().unwrap();
        let d0: Vec<u8> = (0..6 * CS)
            .map(|i| (i / 7) as u8 ^ (i >> 16) as u8)
            .collect();
        // Disk 1: the same first four chunks, then its own.
        let mut d1 = d0[..4 * CS as usize].to_vec();
        d1.extend((0..3 * CS).map(|i| (i * 13 / 5) as u8));
        let s0 = stream(&mut store, "db01.d0", &d0, &key, false, &[]);
        assert_eq!(s0.stored_chunks, 6);
        let s1 = stream(&mut store, "db01.d1", &d1, &key, false, &["db01.d0"]);
        assert_eq!((s1.stored_chunks, s1.dedup_chunks), (3, 4), "{s1:?}");
        assert_eq!(read_all(&mut store, "db01.d1", None, &key), d1);
        assert_eq!(read_all(&mut store, "db01.d0", None, &key), d0);
        let v = crate::verify_full(
            &mut store,
            "db01.d1",
            None,
            &Unlock::Key(key.clone()),
            &mut NoProgress,
        );
        assert!(v.is_ok_and(|r| r.is_ok()));
        // A delta of disk 1 keeps pointing at disk 0's records.
        let s1b = stream(&mut store, "db01.d1", &d1, &key, true, &[]);
        assert_eq!(s1b.stored_chunks, 0, "{s1b:?}");
        assert_eq!(read_all(&mut store, "db01.d1", Some(2), &key), d1);
        // Without disk 0's segments the records are gone: the read fails, it
        // is never served from somewhere else.
        store.remove_file("MGEAR/db01.d0/G0001/SEG-00000").unwrap();
        let mut r =
            crate::CaptureReader::open_with_key(&mut store, "db01.d1", Some(1), &key).unwrap();
        assert!(r.read_chunk(0).is_err());
        assert!(r.read_chunk(5).is_ok(), "its own records still read");
    }

    #[test]
    fn a_capture_that_is_no_disk_of_a_set_cannot_point_into_another_stream() {
        assert_eq!(record_stream("web01", 1), None);
        assert_eq!(record_stream("web01", 0).as_deref(), Some("web01"));
        assert_eq!(record_stream("db01.d3", 1).as_deref(), Some("db01.d0"));
        assert_eq!(record_stream("db01.d3", 65), None);
        assert_eq!(stream_number("db01.d2"), Some(3));
    }

    /// A medium with set `db01` generation 1 over two disks, and its key.
    fn two_disk_set() -> (MemStore, DataKey, SetFile) {
        let mut store = MemStore::new();
        let id = age::x25519::Identity::generate();
        let key = DataKey::generate().unwrap();
        let capture_id = [7u8; 16];
        let disks: [Vec<u8>; 2] = [vec![0x5a; 3 * CS as usize], {
            let mut d = vec![0u8; 2 * CS as usize + 100];
            d[CS as usize..].iter_mut().for_each(|b| *b = 0xc3);
            d
        }];
        for (k, data) in disks.iter().enumerate() {
            let mut p = CaptureParams::new(&disk_stream_name("db01", k), data.len() as u64);
            p.chunk_size = CS;
            p.recipients = vec![id.to_public()];
            p.capture_id = Some(capture_id);
            let mut w = CaptureWriter::begin(&mut store, p, Some(key.clone())).unwrap();
            let enc = w.encoder();
            for i in 0..w.chunk_count() {
                let s = (i * u64::from(CS)) as usize;
                let e = (s + CS as usize).min(data.len());
                w.append(enc.encode(i, &data[s..e]).unwrap()).unwrap();
            }
            w.finish().unwrap();
        }
        let disk = |boot| SetDisk {
            size: 0,
            sector_size: 512,
            table: TableKind::Mbr,
            boot,
            bios_boot: boot,
            efi_boot: false,
            manifest_root: [0; 32],
            os: if boot {
                "Debian GNU/Linux 12".into()
            } else {
                String::new()
            },
            source_desc: "file disk.raw".into(),
        };
        let set = SetManifest {
            capture_id,
            generation: 1,
            parent: 0,
            name: "db01".into(),
            created_unix: 1_790_000_000,
            appliance_id: None,
            key_check: [0; 32],
            disks: alloc::vec![disk(true), disk(false)],
        };
        let f = write_set_of_streams(&mut store, set, &key).unwrap();
        (store, key, f)
    }

    #[test]
    fn a_set_round_trips_and_verifies() {
        let (mut store, key, f) = two_disk_set();
        let back = read_set(&mut store, "db01", 1).unwrap().unwrap();
        assert_eq!(back, f);
        assert_eq!(back.set.disks[0].size, 3 * u64::from(CS));
        assert!(back.set.disks[0].boot && !back.set.disks[1].boot);
        back.check_mac(&key).unwrap();
        assert!(check_set(&mut store, &back).unwrap().is_empty());
        assert_eq!(keyless_problems(&mut store), Vec::<String>::new());
        assert!(is_set(&mut store, "db01").unwrap());
        assert!(!is_set(&mut store, "db01.d0").unwrap());
        // The set is listed as a set; its streams as captures, not the set.
        let caps: Vec<String> = crate::list_captures(&mut store)
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(caps, ["db01.d0", "db01.d1"]);
        let sets = list_sets(&mut store).unwrap();
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0].generations[0], f);
        let (opened, _) = open_set(&mut store, "db01", None, &Unlock::Key(key)).unwrap();
        assert_eq!(opened, f);
        // The set manifest is among what the appliance signs at seal.
        assert!(crate::medium_digests(&mut store)
            .unwrap()
            .iter()
            .any(|(p, _)| p == "MGEAR/db01/G0001/SET"));
        // Its commit is over the set manifest's root.
        let c = crate::commit::expected_commit(&mut store, "db01", 1)
            .unwrap()
            .unwrap();
        assert_eq!(c.manifest_root, f.root);
    }

    /// A finished set whose SET was lost (its COMMIT left): named as a set that lost its
    /// SET, not as a capture "nothing can ever decrypt" whose "MANIFEST is missing", nor as
    /// a set capture to re-run.
    #[test]
    fn a_finished_set_that_lost_its_set_manifest_is_named_as_such() {
        let (mut store, _, f) = two_disk_set();
        let c = crate::commit::expected_commit(&mut store, "db01", 1)
            .unwrap()
            .unwrap();
        crate::commit::write_commit(
            &mut store,
            &crate::commit::CommitFile {
                commit: c,
                signatures: Vec::new(),
            },
        )
        .unwrap();
        assert_eq!(
            f.root,
            read_set(&mut store, "db01", 1).unwrap().unwrap().root
        );
        store.remove_file("MGEAR/db01/G0001/SET").unwrap();
        assert!(is_set(&mut store, "db01").unwrap(), "still a set directory");
        let p = keyless_problems(&mut store);
        assert!(
            p.iter()
                .any(|p| p.contains("set manifest (SET) missing although the set was finished")),
            "{p:?}"
        );
        assert!(
            !p.iter()
                .any(|p| p.contains("no key slot") || p.contains("re-run it")),
            "{p:?}"
        );
    }

    #[test]
    fn a_dropped_disk_is_detected() {
        let (mut store, key, _) = two_disk_set();
        remove_tree(&mut store, "MGEAR/db01.d1");
        assert_keyless_problem(&mut store, &["disk 1 of set db01", "dropped"]);
        let e = open_set(&mut store, "db01", None, &Unlock::Key(key)).unwrap_err();
        assert!(e.to_string().contains("dropped"), "{e}");
    }

    #[test]
    fn a_dropped_disk_hidden_by_a_rewritten_set_manifest_is_detected() {
        let (mut store, key, f) = two_disk_set();
        remove_tree(&mut store, "MGEAR/db01.d1");
        // Without the key the attacker can fix up the root and CRC, not the MAC.
        let mut short = f.set.clone();
        short.disks.truncate(1);
        write_set(&mut store, &short, &f.mac).unwrap();
        let now = read_set(&mut store, "db01", 1).unwrap().unwrap();
        assert!(check_set(&mut store, &now).unwrap().is_empty());
        let e = open_set(&mut store, "db01", None, &Unlock::Key(key)).unwrap_err();
        assert!(e.to_string().contains("MAC does not verify"), "{e}");
        // A signed set: the COMMIT no longer matches, keylessly.
        let (mut store, _, f) = two_disk_set();
        let site = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let c = crate::commit::expected_commit(&mut store, "db01", 1)
            .unwrap()
            .unwrap();
        let file = crate::commit::CommitFile {
            signatures: alloc::vec![c.sign(crate::commit::SignerRole::Site, &site)],
            commit: c,
        };
        crate::commit::write_commit(&mut store, &file).unwrap();
        assert_eq!(keyless_problems(&mut store), Vec::<String>::new());
        let mut short = f.set.clone();
        short.disks.truncate(1);
        write_set(&mut store, &short, &f.mac).unwrap();
        remove_tree(&mut store, "MGEAR/db01.d1");
        assert_keyless_problem(&mut store, &["COMMIT does not match"]);
    }

    #[test]
    fn swapped_disks_are_detected() {
        let (mut store, key, _) = two_disk_set();
        rename_tree(&mut store, "MGEAR/db01.d0", "MGEAR/tmp");
        rename_tree(&mut store, "MGEAR/db01.d1", "MGEAR/db01.d0");
        rename_tree(&mut store, "MGEAR/tmp", "MGEAR/db01.d1");
        assert_keyless_problem(&mut store, &["disk 0 of set db01"]);
        assert!(open_set(&mut store, "db01", None, &Unlock::Key(key)).is_err());
    }

    #[test]
    fn reordered_disks_in_the_set_manifest_are_detected() {
        let (mut store, key, f) = two_disk_set();
        let mut swapped = f.set.clone();
        swapped.disks.swap(0, 1);
        write_set(&mut store, &swapped, &f.mac).unwrap();
        assert_keyless_problem(&mut store, &["swapped or reordered disk"]);
        let e = open_set(&mut store, "db01", None, &Unlock::Key(key)).unwrap_err();
        assert!(e.to_string().contains("MAC does not verify"), "{e}");
    }

    #[test]
    fn an_added_disk_is_detected() {
        let (mut store, _, _) = two_disk_set();
        copy_tree(&mut store, "MGEAR/db01.d1", "MGEAR/db01.d2");
        assert_keyless_problem(&mut store, &["db01.d2 generation 1 is not listed"]);
    }

    #[test]
    fn every_flipped_byte_of_a_set_manifest_is_refused() {
        let (mut store, _, _) = two_disk_set();
        let path = set_path("db01", 1);
        let len = store.len(&path).unwrap().unwrap() as usize;
        let mut bytes = vec![0u8; len];
        store.read_exact_at(&path, 0, &mut bytes).unwrap();
        SetFile::decode(&bytes).unwrap();
        for i in 0..bytes.len() {
            let mut x = bytes.clone();
            x[i] ^= 0x10;
            assert!(SetFile::decode(&x).is_err(), "flip at {i} accepted");
        }
        assert!(SetFile::decode(&bytes[..len - 1]).is_err());
        assert!(SetFile::decode(&[]).is_err());
    }

    fn files_under(store: &mut MemStore, dir: &str, out: &mut Vec<String>) {
        for e in crate::medium::list_or_empty(store, dir).unwrap() {
            let p = alloc::format!("{dir}/{}", e.name);
            match e.kind {
                EntryKind::File => out.push(p),
                EntryKind::Dir => files_under(store, &p, out),
            }
        }
    }

    fn copy_tree(store: &mut MemStore, from: &str, to: &str) {
        let mut files = Vec::new();
        files_under(store, from, &mut files);
        for f in files {
            let len = store.len(&f).unwrap().unwrap() as usize;
            let mut b = vec![0u8; len];
            store.read_exact_at(&f, 0, &mut b).unwrap();
            let dst = alloc::format!("{to}{}", &f[from.len()..]);
            let (dir, _) = dst.rsplit_once('/').unwrap();
            store.create_dir_all(dir).unwrap();
            store.write_at(&dst, 0, &b).unwrap();
        }
    }

    fn remove_tree(store: &mut MemStore, dir: &str) {
        let mut files = Vec::new();
        files_under(store, dir, &mut files);
        for f in files {
            store.remove_file(&f).unwrap();
        }
        let mut dirs: Vec<String> = Vec::new();
        fn dirs_under(store: &mut MemStore, dir: &str, out: &mut Vec<String>) {
            for e in crate::medium::list_or_empty(store, dir).unwrap() {
                if e.kind == EntryKind::Dir {
                    let p = alloc::format!("{dir}/{}", e.name);
                    dirs_under(store, &p, out);
                    out.push(p);
                }
            }
        }
        dirs_under(store, dir, &mut dirs);
        for d in dirs {
            store.remove_dir(&d).unwrap();
        }
        store.remove_dir(dir).unwrap();
    }

    fn rename_tree(store: &mut MemStore, from: &str, to: &str) {
        copy_tree(store, from, to);
        remove_tree(store, from);
    }
}
