//! Media: what `--medium` can name, opened as one store, and the FAT32
//! formatter behind `mgear medium format` (whose command is `crate::medium_admin`).
//!
//! - `fat:PATH`: a FAT32 image file or a raw device (the appliance's USB
//!   storage seen as `/dev/sdX`), opened with the `fatfs` crate: no mount, no root;
//! - `dir:PATH`: a mounted directory (the appliance's medium mounted by the OS);
//! - `nbd://HOST:PORT/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`: a FAT volume
//!   exported over NBD (the appliance simulator's medium).
//!
//! Everything else in the CLI sees a medium only as an `image_format::Store`,
//! so a new kind of medium (the appliance's console-gated export) is one more
//! arm in [`open`].

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::error::Context;
use image_format::span::{SpanOptions, SpanStore, SpanView};
use image_format::store::fat::{FormatOptions, Formatted, MAX_FAT32_BYTES, MIN_FAT32_BYTES};
use image_format::store::{DirStore, FatStore, FlushIsDurable};
use image_format::Store;
use mgear_nbd::NbdFile;

use crate::exit::usage;
use crate::spec::Medium as MediumSpec;
use crate::units::human_bytes;

/// An open medium: one store (a FAT image or device opened with `fatfs`, large transfers with
/// `O_DIRECT`; a mounted directory; a FAT volume over NBD; the appliance's medium reached through
/// its console) or a span of several (`image_format::span`: given as several
/// `--medium`/`--appliance`, or one medium that carries a span label). Call [`Medium::close`]:
/// the FAT writer clears the volume's dirty flag and reports flush errors only there
/// (`Store::close`). An image, device or directory stays locked while it is open
/// ([`crate::lock`]): exclusively for writers, shared for readers; a span holds its members'
/// locks.
pub struct Medium {
    store: Box<dyn Store>,
    /// Dropped after `store` (field order): the lock outlives the last write.
    _locks: Vec<crate::lock::MediumLock>,
}

impl Medium {
    /// `store` held with the locks of the media under it (none for the appliance's medium,
    /// which its server guards; one for an image, device or directory; every member's for a
    /// span).
    fn new(store: Box<dyn Store>, locks: Vec<crate::lock::MediumLock>) -> Medium {
        Medium {
            store,
            _locks: locks,
        }
    }

    /// The store the format reads and writes.
    pub fn store(&mut self) -> &mut dyn Store {
        self.store.as_mut()
    }

    /// The span, when this medium is one (several media, or one medium of a span).
    pub fn span(&self) -> Option<&dyn SpanView> {
        self.store.span()
    }

    /// Flush and close, reporting any error.
    pub fn close(self) -> crate::Result<()> {
        let Medium { store, _locks } = self;
        store
            .close()
            .map_err(|e| crate::err!("closing the medium: {e}"))
    }
}

/// How a capture sizes the media of a span: see `image_format::span::SpanOptions`.
#[derive(Debug, Clone, Default)]
pub struct SpanPlan {
    /// Bytes every medium keeps free for the mirrored files still to come.
    pub reserve: u64,
    /// Least room a new segment needs (one record of the largest chunk).
    pub min_room: u64,
    /// Members declared lost (`capture --replace-medium`).
    pub lost: Vec<String>,
}

/// Where the medium is: `--medium SPEC` or `--appliance PORT`; several of
/// them (in any order) for a capture that spans media.
#[derive(Debug, Clone, Default)]
pub struct Where {
    /// Medium: fat:IMAGE-OR-DEVICE (e.g. fat:/dev/sdb) or dir:MOUNTPOINT; repeat it for a capture
    /// spanning several media (capture continues on the next when one fills).
    pub medium: Vec<String>,
    /// Reach the medium through the appliance on this console port (e.g. /dev/ttyACM0); repeat it
    /// for a span over several appliances.
    pub appliance: Vec<PathBuf>,
}

impl Where {
    /// Open it.
    pub fn open(&self) -> crate::Result<Medium> {
        self.open_mode(false)
    }

    /// Open it for a command that only reads (inspect, verify, ingest,
    /// serve): a `fat:` or NBD medium is opened read-only, so it is
    /// byte-for-byte the same afterwards (its sha256 does not change).
    pub fn open_read_only(&self) -> crate::Result<Medium> {
        self.open_mode(true)
    }

    /// Open it for a capture: several media (or one medium of a span) are
    /// joined into one span store sized by `plan`.
    pub fn open_for_capture(&self, plan: &SpanPlan) -> crate::Result<Medium> {
        self.open_with(false, Some(plan))
    }

    fn open_mode(&self, read_only: bool) -> crate::Result<Medium> {
        self.open_with(read_only, None)
    }

    /// Open it read-only for a capture's checks before it writes: media
    /// that are about to join a span are read beside the span's, the free
    /// space of a span counted as a capture sized by `plan` will use it
    /// (each medium's reserve and least room for a segment left out), so
    /// the space check and `--dry-run` promise only what the capture keeps.
    pub fn open_before_capture_for(&self, plan: &SpanPlan) -> crate::Result<Medium> {
        self.open_with(true, Some(plan))
    }

    /// A single medium: `--medium fat:A.img` (not a span).
    pub fn one(spec: impl Into<String>) -> Self {
        Where {
            medium: vec![spec.into()],
            appliance: Vec::new(),
        }
    }

    /// A single appliance's medium.
    pub fn appliance_at(port: impl Into<PathBuf>) -> Self {
        Where {
            medium: Vec::new(),
            appliance: vec![port.into()],
        }
    }

    /// The appliance that witnesses and records events: the first one given.
    pub fn first_appliance(&self) -> Option<&Path> {
        self.appliance.first().map(|p| p.as_path())
    }

    /// "the medium", or "the media" where several are given (a span), for messages.
    pub fn noun(&self) -> &'static str {
        self.pick("the medium", "the media")
    }

    /// `one` for one medium given, `several` for several (a span), for messages.
    pub fn pick(&self, one: &'static str, several: &'static str) -> &'static str {
        match self.medium.len() + self.appliance.len() {
            0 | 1 => one,
            _ => several,
        }
    }

    /// The single `--medium` spec, when exactly one medium and no appliance is given.
    pub fn single_medium(&self) -> Option<&str> {
        match (self.medium.as_slice(), self.appliance.is_empty()) {
            ([one], true) => Some(one),
            _ => None,
        }
    }

    /// Refuse a medium given twice (`--medium fat:a.img --medium fat:./a.img`,
    /// a device under two names, an appliance port twice): its second
    /// opening would otherwise be refused as "in use by another command",
    /// by this command's own lock on the first.
    pub fn refuse_duplicates(&self) -> crate::Result<()> {
        use std::os::unix::fs::MetadataExt as _;
        let mut seen: Vec<(String, String)> = Vec::new();
        let mut check = |key: String, given: String| -> crate::Result<()> {
            if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
                return Err(usage(format!(
                    "the same medium is given twice: {first} and {given}; give each medium \
                     once (several --medium/--appliance are the media of one span)"
                )));
            }
            seen.push((key, given));
            Ok(())
        };
        for port in &self.appliance {
            let key = std::fs::canonicalize(port).unwrap_or_else(|_| port.clone());
            check(
                format!("appliance {}", key.display()),
                format!("--appliance {}", port.display()),
            )?;
        }
        for spec in &self.medium {
            let key = match MediumSpec::parse(spec)? {
                MediumSpec::Dir(p) | MediumSpec::Fat(p) => match std::fs::metadata(&p) {
                    // A device by any of its names (/dev/sdb, /dev/disk/by-id/...).
                    // A loop device is the image behind it.
                    Ok(m) if m.file_type().is_block_device() => {
                        match crate::guard::loop_backing(m.rdev()) {
                            Some((dev, ino)) => format!("inode {dev}:{ino}"),
                            None => format!("device {}", m.rdev()),
                        }
                    }
                    Ok(m) => format!("inode {}:{}", m.dev(), m.ino()),
                    // Not there: opening it says so.
                    Err(_) => format!("path {}", p.display()),
                },
                MediumSpec::Nbd(url) => format!("nbd {url}"),
            };
            check(key, format!("--medium {spec}"))?;
        }
        Ok(())
    }

    fn open_with(&self, read_only: bool, plan: Option<&SpanPlan>) -> crate::Result<Medium> {
        self.refuse_duplicates()?;
        let mut media = Vec::new();
        for port in &self.appliance {
            let (store, lock) = crate::appliance::open_medium(port, !read_only)?;
            let m = Medium::new(store, lock.into_iter().collect());
            media.push((m, format!("appliance at {}", port.display())));
        }
        for spec in &self.medium {
            media.push((open_mode(spec, read_only)?, spec.clone()));
        }
        if !read_only {
            for (m, label) in &mut media {
                refuse_damaged_file_system(m.store(), label)?;
            }
        }
        if media.is_empty() {
            return Err(usage(
                "say where the medium is: --medium fat:PATH|dir:PATH or --appliance PORT",
            ));
        }
        if media.len() == 1 {
            let (mut m, _) = media.remove(0);
            let labelled = m
                .store()
                .len(image_format::span::SPAN_FILE)
                .with_context(|| format!("reading {}", self.describe()))?
                .is_some();
            if !labelled && plan.is_none_or(|p| p.lost.is_empty()) {
                return Ok(m);
            }
            media.push((m, self.describe()));
        }
        // Media given that hold no span label, by the name given: a member the span misses
        // under one of these names was formatted since it joined.
        let mut blank = Vec::new();
        for (m, label) in &mut media {
            if m.store()
                .len(image_format::span::SPAN_FILE)
                .ok()
                .flatten()
                .is_none()
            {
                blank.push(label.clone());
            }
        }
        // The span owns the members' stores; the new Medium holds their locks.
        let mut locks = Vec::new();
        let media: Vec<(Box<dyn Store>, String)> = media
            .into_iter()
            .map(|(m, label)| {
                locks.extend(m._locks);
                (m.store, label)
            })
            .collect();
        let span = if read_only {
            SpanStore::open(media, plan.is_none()).and_then(|mut s| {
                if let Some(p) = plan {
                    // A --replace-medium that names no member was passed over in silence,
                    // and the member left out refused as "not attached".
                    // (Only of a span: a medium of none has its own refusal, naming the
                    // capture it lacks.)
                    let members = &s.map().members;
                    if let Some(l) = p
                        .lost
                        .iter()
                        .filter(|_| members.len() > 1)
                        .find(|l| !members.iter().any(|m| m.is_named(l)))
                    {
                        let members = members
                            .iter()
                            .map(|m| format!("#{} ({})", m.ordinal, m.label))
                            .collect::<Vec<_>>()
                            .join(", ");
                        return Err(image_format::Error::Usage(format!(
                            "--replace-medium '{l}' names no medium of this span (its media: \
                             {members}): give the lost one as listed, by its number ('#1') or \
                             its label; nothing was written"
                        )));
                    }
                    // A capture's checks: a member left out would be refused by the writer
                    // (it writes every medium of its span), after the space estimate had
                    // called the media given full.
                    let left_out = s
                        .missing()
                        .into_iter()
                        .find(|m| !m.lost && !p.lost.iter().any(|l| m.is_named(l)));
                    if let Some(m) = left_out.as_ref().filter(|m| blank.contains(&m.label)) {
                        return Err(image_format::Error::Usage(
                            image_format::span::reformatted_member(m),
                        ));
                    }
                    if let Some(m) = left_out {
                        return Err(image_format::Error::Usage(format!(
                            "medium #{} ({}) of this span is not attached: every capture \
                             written onto a medium of a span writes every medium of it (each \
                             holds a copy of the index and manifests of all its captures); \
                             attach it and give it too (--medium, or --appliance for an \
                             appliance's medium). Only if it is lost for \
                             good (its share is then captured again): `--replace-medium '{}'`. \
                             If that span is another shipment's (a medium of it was given by \
                             mistake), leave its media out and capture onto a blank medium \
                             instead",
                            m.ordinal, m.label, m.label
                        )));
                    }
                    s.plan_with(SpanOptions {
                        reserve: p.reserve,
                        min_room: p.min_room,
                    });
                }
                Ok(s)
            })
        } else if let Some(plan) = plan {
            let id = image_format::keys::random::<16>()?;
            SpanStore::join(
                media,
                id,
                SpanOptions {
                    reserve: plan.reserve,
                    min_room: plan.min_room,
                },
                &plan.lost,
            )
        } else {
            // Writers that place no segments (medium rm, capture --abort)
            // still write every mirrored copy.
            let id = image_format::keys::random::<16>()?;
            SpanStore::join(
                media,
                id,
                SpanOptions {
                    reserve: 0,
                    min_room: 0,
                },
                &[],
            )
        };
        let span = span.map_err(|e| {
            // A medium with no room left for the span's map (one that filled up): the join
            // is undone, and "check the path is reachable" led nowhere.
            if let image_format::Error::Store {
                error: image_format::StoreError::NoSpace,
                path,
            } = &e
            {
                return crate::exit::coded_hint(
                    crate::exit::IO,
                    format!(
                        "{}: a medium given has no room left for the span's map ({path}), so no \
                         other medium can join it; nothing was changed on any of them",
                        self.describe()
                    ),
                    "free a few MiB on the full medium (a file that is not a capture, or an \
                     older generation with `mgear medium rm`) and run the command again",
                );
            }
            // A span label or map that does not decode is a finding about the medium (exit 1,
            // as everywhere else), not an unreachable device.
            let code = match e {
                image_format::Error::Usage(_) => crate::exit::USAGE,
                image_format::Error::Corrupt { .. } => {
                    return crate::exit::coded_hint(
                        crate::exit::FOUND,
                        format!("{}: {e}", self.describe()),
                        "do what the message says with the other media; `mgear verify` of the \
                         damaged one on its own says what on it is still whole",
                    )
                }
                _ => crate::exit::IO,
            };
            crate::exit::coded(code, format!("{}: {e}", self.describe()))
        })?;
        Ok(Medium::new(Box::new(span), locks))
    }

    /// Refuse (exit 2) a local `path` given as `what` (`--target file:X`,
    /// `--source X`) that is one of these media (the same file or device,
    /// however spelled, or a partition of it) or lies among a directory
    /// medium's captures: `doing` ("ingest would overwrite the shipment it
    /// reads") says what would go wrong.
    pub fn refuse_overlap(&self, what: &str, path: &Path, doing: &str) -> crate::Result<()> {
        for spec in &self.medium {
            let on = match MediumSpec::parse(spec) {
                Ok(MediumSpec::Fat(p)) => p,
                Ok(MediumSpec::Dir(p)) => p.join(image_format::layout::ROOT_DIR),
                _ => continue,
            };
            if crate::guard::overlaps(path, &on) {
                return Err(usage(format!(
                    "{what} is the medium {spec}, or lies on it: {doing}. Give a path that is \
                     not the medium"
                )));
            }
        }
        Ok(())
    }

    /// Refuse (exit 2) a secret's path (`--key-cache`, `--passphrase-file`) that lies on a
    /// medium given: in a `dir:` medium's directory, or on a file system mounted from a
    /// `fat:` medium's device. The capture's data key and a passphrase were written onto the
    /// medium that travels, exit 0, beside the captures they open.
    pub fn refuse_secret_on(&self, what: &str, path: &Path) -> crate::Result<()> {
        for spec in &self.medium {
            let places: Vec<std::path::PathBuf> = match MediumSpec::parse(spec) {
                Ok(MediumSpec::Dir(dir)) => vec![dir],
                Ok(MediumSpec::Fat(p)) => crate::preflight::rw_mounts_of(&p)
                    .into_iter()
                    .map(|m| m.mount_point.into())
                    .collect(),
                _ => continue,
            };
            for place in places {
                if crate::guard::overlaps(path, &place) {
                    return Err(usage(format!(
                        "{what} lies on the medium {spec} ({}): the secret that opens its \
                         captures would travel with them, readable by anyone who holds the \
                         medium. Give a path off the medium (keep the key cache at the capture \
                         site; send a passphrase to the target by another channel)",
                        place.display()
                    )));
                }
            }
        }
        Ok(())
    }

    /// [`Medium::refuse_overlap`] for an ingest target, which also may not lie anywhere in a
    /// `dir:` medium's directory: the decrypted disk was written there (outside `MGEAR/`) with
    /// exit 0, onto the medium that travels back, readable by whoever holds it.
    pub fn refuse_target_on(&self, what: &str, path: &Path) -> crate::Result<()> {
        self.refuse_overlap(what, path, "ingest would overwrite the shipment it reads")?;
        for spec in &self.medium {
            if let Ok(MediumSpec::Dir(dir)) = MediumSpec::parse(spec) {
                if crate::guard::overlaps(path, &dir) {
                    return Err(usage(format!(
                        "{what} lies in the directory of the medium {spec}: the decrypted disk \
                         would be written onto the medium, readable by anyone who holds it. \
                         Give a path outside {}",
                        dir.display()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Refuse (exit 2) an ingest `--state-dir` on one of these media, or anywhere in a `dir:`
    /// medium's directory: its resume state and markers were written into the shipment.
    pub fn refuse_state_dir_on(&self, dir: &Path) -> crate::Result<()> {
        let what = format!("--state-dir {}", dir.display());
        self.refuse_overlap(
            &what,
            dir,
            "ingest would write its resume state into the shipment it reads",
        )?;
        for spec in &self.medium {
            if let Ok(MediumSpec::Dir(medium)) = MediumSpec::parse(spec) {
                if crate::guard::overlaps(dir, &medium) {
                    return Err(usage(format!(
                        "{what} lies in the directory of the medium {spec}: ingest would write \
                         its resume state onto the medium that travels back. Give a directory \
                         outside {} (or leave --state-dir out: $XDG_STATE_HOME/mgear/ingest)",
                        medium.display()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Refuse (exit 2) an NBD target when another process holds one of these media's local
    /// files (a `fat:` image or device, a `dir:` medium's captures) open for writing: an NBD
    /// server of the medium at an offset, or of a segment of a `dir:` medium, has no FAT
    /// boot sector to recognise it by, and the ingest wrote over the shipment.
    pub fn refuse_served_for_writing(&self, what: &str) -> crate::Result<()> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let mut files = std::collections::HashSet::new();
        let mut devices = Vec::new();
        for spec in &self.medium {
            match MediumSpec::parse(spec) {
                Ok(MediumSpec::Fat(p)) => match std::fs::metadata(&p) {
                    Ok(m) if m.file_type().is_block_device() => devices.push(m.rdev()),
                    Ok(m) => {
                        files.insert((m.dev(), m.ino()));
                    }
                    Err(_) => {}
                },
                Ok(MediumSpec::Dir(p)) => {
                    let root = p.join(image_format::layout::ROOT_DIR);
                    files.extend(crate::guard::tree_inodes(&root));
                    // A medium on a file system mounted from a loop device: that device and
                    // the image behind it, served at an offset, are the medium too.
                    if let Ok(m) = std::fs::metadata(&root) {
                        if let Some(image) = crate::guard::loop_backing(m.dev()) {
                            devices.push(m.dev());
                            files.insert(image);
                        }
                    }
                }
                _ => {}
            }
        }
        if files.is_empty() && devices.is_empty() {
            return Ok(());
        }
        match crate::guard::held_for_writing(&files, &devices) {
            Some((pid, cmd, file)) => Err(usage(format!(
                "{what}: {} of the medium is open for writing by process {pid} ({cmd}): an NBD \
                 export it serves may be the medium itself (at an offset, or one of its files), \
                 and the ingest would overwrite the shipment it reads. Stop that process, or \
                 check that the target is not the medium, then run this again",
                file.display()
            ))),
            None => Ok(()),
        }
    }

    /// Refuse (exit 2) an ingest target that is one of these media reached another way: the
    /// same NBD export (an appliance's, or `--medium nbd:`), or a file, device or export
    /// holding the same FAT volume (its serial, size and label in the boot sector: the image
    /// behind an appliance simulator, a loop device over it). `refuse_overlap` knows only
    /// paths; an appliance's medium has none on this host.
    /// The boot sectors of these media that can be read here (a `fat:` image or device, an
    /// appliance's export), each with how to name it: a target whose first sector is the same
    /// FAT volume is the medium, whatever path or export reaches it.
    pub fn boot_sectors(&self) -> Vec<(String, [u8; 512])> {
        let mut out = Vec::new();
        for port in &self.appliance {
            if let Some(b) = crate::appliance::medium_locator(port)
                .ok()
                .as_deref()
                .and_then(nbd_boot_sector)
            {
                out.push((
                    format!("the medium of the appliance at {}", port.display()),
                    b,
                ));
            }
        }
        for spec in &self.medium {
            if let Ok(MediumSpec::Fat(p)) = MediumSpec::parse(spec) {
                if let Some(b) = file_boot_sector(&p) {
                    out.push((format!("the medium {spec}"), b));
                }
            }
        }
        out
    }

    pub fn refuse_same_volume(&self, what: &str, target: &TargetRef) -> crate::Result<()> {
        let mut media: Vec<(String, Option<String>, Option<[u8; 512]>)> = Vec::new();
        for port in &self.appliance {
            let url = crate::appliance::medium_locator(port).ok();
            let boot = url.as_deref().and_then(nbd_boot_sector);
            media.push((
                format!("the medium of the appliance at {}", port.display()),
                url,
                boot,
            ));
        }
        for spec in &self.medium {
            match MediumSpec::parse(spec) {
                // Not read here: a qemu-nbd without -t serves one client and exits after it.
                Ok(MediumSpec::Nbd(url)) => {
                    media.push((format!("the medium {spec}"), Some(url), None))
                }
                Ok(MediumSpec::Fat(p)) => {
                    media.push((format!("the medium {spec}"), None, file_boot_sector(&p)))
                }
                _ => {}
            }
        }
        let (url, boot) = match target {
            TargetRef::Path(p) => (None, file_boot_sector(p)),
            // Compared by URL only, for the same reason as an NBD medium.
            TargetRef::Nbd(u) => (Some(u.as_str()), None),
        };
        for (name, murl, mboot) in &media {
            let same_url = match (url, murl.as_deref()) {
                (Some(a), Some(b)) => same_nbd(a, b),
                _ => false,
            };
            let same_fat = match (&boot, mboot) {
                (Some(a), Some(b)) => same_fat_volume(a, b),
                _ => false,
            };
            // An NBD medium's first sector is not read here (above): a local target that holds
            // a FAT volume may be the very image its server serves (`ingest --force` replaced
            // the shipment with one of its disks). Refused; a FAT volume that is not the medium
            // is removed first by hand.
            if let (Some(murl), None, Some(b), TargetRef::Path(p)) = (murl, mboot, &boot, target) {
                if image_format::store::fatmap::volume_bytes(b).is_some() {
                    return Err(usage(format!(
                        "{what} holds a FAT file system, and the medium is read over NBD ({murl}), \
                         whose first sector is not read here: it may be the very image that \
                         server serves, and ingest would overwrite the shipment it reads \
                         (--force does not change this). If {} is not the medium, remove it \
                         first (`rm` a file, `wipefs -a` a device), or give another target",
                        p.display()
                    )));
                }
            }
            if same_url || same_fat {
                return Err(usage(format!(
                    "{what} is {name} ({}): ingest would overwrite the shipment it reads. \
                     Give a volume that is not the medium (--force does not change this)",
                    if same_url {
                        "the same NBD export"
                    } else {
                        "the same FAT volume: its serial, size and label"
                    }
                )));
            }
        }
        Ok(())
    }

    /// Refuse (exit 2) a capture onto an appliance that is not unlocked,
    /// before anything is planned (a sealed appliance's full medium would
    /// otherwise be reported as full, not as sealed).
    pub fn ready_to_capture(&self) -> crate::Result<()> {
        self.ready_to_change("a capture")
    }

    /// Refuse (exit 3) media that say they refuse writes before anything is written: a
    /// read-only device or a file system mounted read-only. `--dry-run` asks it: it said "fits",
    /// exit 0, of a run that then stopped at its first write.
    pub fn refuse_read_only(&self) -> crate::Result<()> {
        for spec in &self.medium {
            if let Some(why) = refuses_writes(spec) {
                return Err(crate::exit::coded_hint(
                    crate::exit::IO,
                    format!(
                        "medium {spec} refuses writes ({why}): a capture onto it would stop at \
                         its first write"
                    ),
                    READ_ONLY_HINT,
                ));
            }
        }
        Ok(())
    }

    /// Every appliance among these media takes `what` (anything that writes its medium):
    /// `crate::appliance::ready_to_change`.
    pub fn ready_to_change(&self, what: &str) -> crate::Result<()> {
        self.appliance
            .iter()
            .try_for_each(|port| crate::appliance::ready_to_change(port, what))
    }

    /// These media without the `--medium` ones that belong to no span (no span label: blank,
    /// or a medium of its own). An abort that declares a member lost opens the span as a
    /// capture does, which would enroll such a medium as a new member.
    pub fn span_members_only(&self) -> crate::Result<Where> {
        let mut keep = Vec::new();
        for spec in &self.medium {
            // The member's own store: a span's view hides its label file.
            let mut m = open_mode(spec, true)?;
            let labelled = m
                .store()
                .len(image_format::span::SPAN_FILE)
                .map_err(|e| crate::err!("reading {spec}: {e}"))?
                .is_some();
            m.close()?;
            if labelled {
                keep.push(spec.clone());
            }
        }
        Ok(Where {
            medium: keep,
            appliance: self.appliance.clone(),
        })
    }

    /// Several media given to a capture join one span; a capture's name is held by the
    /// span's members (each has its copy of the index) or by one medium alone. A second
    /// holder of `name` (or of a set's disk streams) is another shipment's medium, or a
    /// copy of one given: the capture's checks read the two as one and blamed the operator's
    /// disks ("set m1 has 2 disks"), a copy's space ("0 B are free"), or a medium of the
    /// other span ("not attached ... --replace-medium"). Refused first, naming both.
    pub fn refuse_namesakes(&self, name: &str) -> crate::Result<()> {
        if self.medium.len() + self.appliance.len() < 2 {
            return Ok(());
        }
        let holds = |store: &mut dyn Store| -> crate::Result<(Option<[u8; 16]>, Option<String>)> {
            let span = image_format::span::read_span(store)
                .ok()
                .flatten()
                .and_then(|i| i.label)
                .map(|l| l.id);
            let held = image_format::capture_names(store)?.into_iter().find(|n| {
                n.eq_ignore_ascii_case(name)
                    || image_format::set::parse_disk_stream_name(n)
                        .is_some_and(|(set, _)| set.eq_ignore_ascii_case(name))
            });
            Ok((span, held))
        };
        // (how it was given, its span id, the stream of `name` it holds)
        let mut holders: Vec<(String, Option<[u8; 16]>, String)> = Vec::new();
        let mut look = |given: String, store: &mut dyn Store| -> crate::Result<()> {
            let (span, held) = holds(store)?;
            let Some(held) = held else { return Ok(()) };
            let first = holders
                .iter()
                .find(|(_, s, _)| span.is_none() || *s != span);
            if let Some((other, _, _)) = first {
                return Err(crate::exit::coded_hint(
                    crate::exit::USAGE,
                    format!(
                        "{given} holds a capture named {held} too, and so does {other}: they \
                         are not the media of one capture's span (another shipment's medium, or \
                         a copy of a medium given); nothing was written"
                    ),
                    format!(
                        "to continue the capture of {name} onto one more medium, give a blank \
                         medium (or one holding no capture named {name}) with the media that \
                         hold it; `mgear inspect {}` and `mgear inspect {}` show what each holds",
                        as_option(&given),
                        as_option(other)
                    ),
                ));
            }
            holders.push((given, span, held));
            Ok(())
        };
        for port in &self.appliance {
            let (mut store, _lock) = crate::appliance::open_medium(port, false)?;
            let r = look(format!("--appliance {}", port.display()), &mut *store);
            let closed = store.close();
            r?;
            closed.map_err(|e| crate::err!("closing the appliance at {}: {e}", port.display()))?;
        }
        for spec in &self.medium {
            // Each medium's own store: a span's view hides its label file.
            let mut m = open_mode(spec, true)?;
            let r = look(spec.clone(), m.store());
            let closed = m.close();
            r?;
            closed?;
        }
        Ok(())
    }

    /// The options that name these media again, for commands a message suggests.
    pub fn as_args(&self) -> String {
        let mut all: Vec<String> = self
            .appliance
            .iter()
            .map(|p| format!("--appliance {}", crate::output::sh(p.to_string_lossy())))
            .collect();
        all.extend(
            self.medium
                .iter()
                .map(|m| format!("--medium {}", crate::output::sh(m))),
        );
        all.join(" ")
    }

    /// Human description: the media given, in order.
    pub fn describe(&self) -> String {
        let mut all: Vec<String> = self
            .appliance
            .iter()
            .map(|p| format!("appliance at {}", p.display()))
            .collect();
        all.extend(self.medium.iter().cloned());
        all.join(" + ")
    }
}

/// An ingest target as [`Where::refuse_same_volume`] compares it.
pub enum TargetRef {
    /// A file or device.
    Path(std::path::PathBuf),
    /// An NBD URL.
    Nbd(String),
}

/// The first sector of the file or device at `path`, if it can be read.
fn file_boot_sector(path: &Path) -> Option<[u8; 512]> {
    let f = crate::keyfile::open_read(path).ok()?;
    let mut b = [0u8; 512];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, 0).ok()?;
    Some(b)
}

/// The first sector of the NBD export at `url`, if it answers (briefly: this is a check).
/// Only for an appliance's export, which serves any number of clients for as long as it runs.
fn nbd_boot_sector(url: &str) -> Option<[u8; 512]> {
    let parsed: mgear_nbd::NbdUrl = url.parse().ok()?;
    let opts = mgear_nbd::ConnectOptions {
        read_only: true,
        ..Default::default()
    };
    let within = std::time::Duration::from_secs(5);
    let mut c = mgear_nbd::Client::connect_within(&parsed, &opts, within).ok()?;
    if c.size() < 512 {
        return None;
    }
    let mut b = [0u8; 512];
    c.read_at(0, &mut b).ok()?;
    Some(b)
}

/// Two NBD URLs naming one export: equal, or Unix sockets that are one file.
fn same_nbd(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (
        a.parse::<mgear_nbd::NbdUrl>(),
        b.parse::<mgear_nbd::NbdUrl>(),
    ) {
        (
            Ok(mgear_nbd::NbdUrl::Unix {
                socket: sa,
                export: ea,
            }),
            Ok(mgear_nbd::NbdUrl::Unix {
                socket: sb,
                export: eb,
            }),
        ) => ea == eb && crate::guard::overlaps(&sa, &sb),
        _ => false,
    }
}

/// Two FAT32 boot sectors of one volume: the same serial (random at format), size and label.
pub(crate) fn same_fat_volume(a: &[u8; 512], b: &[u8; 512]) -> bool {
    let fat32 = |s: &[u8; 512]| s[510..512] == [0x55, 0xaa] && &s[82..90] == b"FAT32   ";
    fat32(a) && fat32(b) && a[0x43..0x52] == b[0x43..0x52] && a[0x20..0x24] == b[0x20..0x24]
}

/// Open the medium `spec`; `read_only`: an image or device is opened
/// O_RDONLY and the FAT store refuses every write, so nothing on it changes.
/// Refuse (exit 1) to write a medium whose file system is damaged where a write would make it
/// worse: a cluster chain that runs into another file, clusters two files hold, a last cluster
/// marked free (`medium rm` of a file whose chain ran into another capture freed that
/// capture's MANIFEST, and a capture then took a COMMIT's free-marked cluster, both exit 0).
/// What a cut write leaves (chains past their size into clusters nobody holds) is no such
/// damage: the writers' own recovery takes care of it.
/// The option naming a medium as [`Where::refuse_namesakes`] labels it (`--appliance PORT`,
/// or a `--medium` spec), quoted for a shell.
fn as_option(label: &str) -> String {
    match label.strip_prefix("--appliance ") {
        Some(port) => format!("--appliance {}", crate::output::sh(port)),
        None => format!("--medium {}", crate::output::sh(label)),
    }
}

fn refuse_damaged_file_system(store: &mut dyn Store, label: &str) -> crate::Result<()> {
    let mut damage: Vec<String> = store
        .chain_findings()
        .map_err(|e| crate::err!("{label}: reading its file system: {e}"))?
        .into_iter()
        .filter(|f| !f.contains(image_format::store::fatmap::LEFTOVER_CHAIN))
        .collect();
    damage.extend(image_format::damaged_root_dir(store));
    match damage.first() {
        None => Ok(()),
        Some(first) => Err(crate::exit::coded_hint(
            crate::exit::FOUND,
            format!(
                "{label}: its file system is damaged ({} finding{}, the first: {first}); nothing \
                 was written: a write could free or overwrite a capture's data",
                damage.len(),
                if damage.len() == 1 { "" } else { "s" }
            ),
            "`mgear verify` of the medium lists the damage, and ingest still reads every \
             capture that checks out; to capture or remove anything again, copy its files to a \
             freshly formatted medium (`mcopy -s`), or use another medium",
        )),
    }
}

/// The `dir:` medium whose `MGEAR/` directory holds `path` (`dir:/mnt/usb/MGEAR`, a capture's
/// directory in it), however spelled; `None` for a directory that is no part of one.
fn enclosing_dir_medium(path: &Path) -> Option<PathBuf> {
    let at = crate::guard::resolved(path)?;
    at.ancestors().find_map(|a| {
        a.file_name()
            .filter(|n| *n == image_format::layout::ROOT_DIR)?;
        holds_captures(a).then(|| a.parent().map(Path::to_path_buf))?
    })
}

/// Whether the directory `dir` reads as a `dir:` medium's `MGEAR/` directory: a span's label or
/// an attestation in it, or a capture's directory (its key slots or a generation). A medium
/// that its owner named `MGEAR` holds only `MGEAR/` itself, and is none.
fn holds_captures(dir: &Path) -> bool {
    use image_format::layout;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if layout::RESERVED_NAMES.contains(&&*name) || name == layout::ATTEST_NAME {
            return true;
        }
        let Ok(inner) = std::fs::read_dir(e.path()) else {
            return false;
        };
        inner.flatten().any(|c| {
            let n = c.file_name();
            let n = n.to_string_lossy();
            n == layout::KEYS_FILE || layout::parse_generation_dir(&n).is_some()
        })
    })
}

/// How to make a medium that refuses writes writable.
const READ_ONLY_HINT: &str = "make it writable (a loop device attached with `losetup -r`: \
     detach it and attach it again without -r; `blockdev --setrw DEVICE` for a device set \
     read-only; `mount -o remount,rw` for a file system; `chattr -i` for an immutable image; the \
     write-protect switch of a card or stick) or give a medium that is, then run the same \
     command again";

/// Why the medium `spec` refuses writes, found without writing: a block device marked
/// read-only (its sysfs `ro`: `losetup -r`, `blockdev --setro`, a write-protect switch), or an
/// image or directory on a file system mounted read-only. `None` when nothing says so (an NBD
/// export, or a medium that does not exist yet): the first write is then the last word.
pub fn refuses_writes(spec: &str) -> Option<String> {
    let path = match MediumSpec::parse(spec).ok()? {
        MediumSpec::Dir(p) | MediumSpec::Fat(p) => p,
        _ => return None,
    };
    let meta = std::fs::metadata(&path).ok()?;
    if meta.file_type().is_block_device() {
        return mgear_volume::read_only_device(&meta).then(|| "the device is read-only".into());
    }
    let st = nix::sys::statvfs::statvfs(&path).ok()?;
    if st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
        return Some("its file system is mounted read-only".to_string());
    }
    // An image file made immutable (`chattr +i`) or not this user's to write: opened for
    // writing (nothing written), as the capture will.
    if meta.is_file() {
        if let Err(e) = OpenOptions::new().write(true).open(&path) {
            if matches!(e.raw_os_error(), Some(1 | 13 | 30)) {
                return Some(format!(
                    "the image file cannot be opened for writing: {e}; `lsattr` shows an \
                     immutable one, `chattr -i` clears it"
                ));
            }
        }
    }
    None
}

fn open_mode(spec: &str, read_only: bool) -> crate::Result<Medium> {
    let parsed = MediumSpec::parse(spec)?;
    // Two writers on one FAT volume overwrite each other's clusters: lock
    // before the first byte is read. (An NBD medium is guarded by its server.)
    let lock = match &parsed {
        MediumSpec::Dir(path) | MediumSpec::Fat(path) if path.exists() => {
            Some(crate::lock::lock(path, !read_only, spec)?)
        }
        _ => None,
    };
    let store = open_store(parsed, spec, read_only)?;
    Ok(Medium::new(store, lock.into_iter().collect()))
}

fn open_store(parsed: MediumSpec, spec: &str, read_only: bool) -> crate::Result<Box<dyn Store>> {
    match parsed {
        MediumSpec::Dir(path) => {
            // The twin of fat: given a directory: the wrong scheme, not an I/O error.
            if path.exists() && !path.is_dir() {
                return Err(usage(format!(
                    "{} is not a directory: dir: takes a mounted medium's directory; for a FAT32 \
                     image file or a device use --medium fat:{}",
                    path.display(),
                    path.display()
                )));
            }
            // A medium's MGEAR/ reached another way (a bind mount of it) has no medium above
            // it to name, but what it holds says what it is.
            if holds_captures(&path) {
                // Named where the path says it (`dir:mnt/MGEAR`): through a bind mount the
                // directory above is not the medium's.
                let own = match (path.file_name(), path.parent()) {
                    (Some(n), Some(p)) if n == image_format::layout::ROOT_DIR => {
                        let p = if p.as_os_str().is_empty() {
                            Path::new(".")
                        } else {
                            p
                        };
                        format!("--medium dir:{}", p.display())
                    }
                    _ => "--medium dir:DIR, DIR the directory that holds it".to_string(),
                };
                return Err(usage(format!(
                    "{} holds captures (their key slots and generations): it is a medium's {}/ \
                     directory, not a medium, and as one it would be written into that \
                     medium's captures, which then read as damaged. Give the medium's own \
                     directory: {own}",
                    path.display(),
                    image_format::layout::ROOT_DIR,
                )));
            }
            if let Some(outer) = enclosing_dir_medium(&path) {
                return Err(usage(format!(
                    "{} lies inside the medium dir:{} (in its {}/ directory, among its \
                     captures): as a medium of its own it would be written into that medium's \
                     captures, which then reads as damaged. Give the medium's own directory: \
                     --medium dir:{}",
                    path.display(),
                    outer.display(),
                    image_format::layout::ROOT_DIR,
                    outer.display()
                )));
            }
            let store =
                DirStore::open(&path).map_err(|e| crate::err!("opening medium {spec}: {e}"))?;
            Ok(Box::new(store))
        }
        MediumSpec::Fat(path) => {
            // A directory is a medium as it is, under the other scheme; the
            // FAT reader would only report EISDIR and suggest formatting it.
            if path.is_dir() {
                return Err(usage(format!(
                    "{} is a directory: fat: takes a FAT32 image file or a device; for a \
                     directory (a mounted medium) use --medium dir:{}",
                    path.display(),
                    path.display()
                )));
            }
            let mut file = OpenOptions::new()
                .read(true)
                .write(!read_only)
                .open(&path)
                .map_err(|e| {
                    let missing = e.kind() == std::io::ErrorKind::NotFound;
                    let mut why = format!("cannot open medium {}: {e}", path.display());
                    let under_dev =
                        crate::guard::resolved(&path).is_some_and(|p| p.starts_with("/dev"));
                    if missing && under_dev {
                        // No image is ever made under /dev: `medium format` refuses it.
                        why += "; check the device name (`lsblk` lists the disks attached) and \
                                that it is plugged in: a device that is not attached has no \
                                /dev node";
                    } else if missing && read_only {
                        // A command that reads a medium needs the one that holds its
                        // captures: a new, empty one made by `medium format` holds none.
                        why += "; check the path: give the medium's image file or device (the \
                                one the captures were written to)";
                    } else if missing {
                        why += &format!(
                            "; check the path, or create an image with `mgear medium format \
                             fat:{} --size SIZE`",
                            path.display()
                        );
                    }
                    // Refused, not missing (an immutable image, a file not this user's to
                    // write): "reconnect it" said nothing that helps.
                    if matches!(e.raw_os_error(), Some(1 | 13 | 30)) {
                        return crate::exit::coded_hint(
                            crate::exit::IO,
                            why,
                            "make it writable (`lsattr` shows an immutable image, `chattr -i` \
                             clears it; or its permissions), or give a medium that is, then run \
                             the same command again",
                        );
                    }
                    crate::exit::coded(crate::exit::IO, why)
                })?;
            // Its size, measured by seeking: a block device's metadata says 0.
            let bytes = file.seek(SeekFrom::End(0)).ok();
            file.seek(SeekFrom::Start(0))
                .with_context(|| format!("reading medium {}", path.display()))?;
            // A copy cut short reads as FAT up to where it ends, and then as "access past the
            // end of the medium" on whichever file lies there: say what it is instead.
            let mut boot = [0u8; 512];
            if let (Some(have), Ok(())) = (
                bytes,
                std::os::unix::fs::FileExt::read_exact_at(&file, &mut boot, 0),
            ) {
                if let Some(want) = image_format::store::fatmap::volume_bytes(&boot) {
                    // The backup boot sector (sector 6) says the volume fits: the boot
                    // sector's size field is what changed, not the copy that was cut; the
                    // store's comparison of the two says so (damage, exit 1). Read only for a
                    // volume that does not fit.
                    // Where the boot sector's own sector size puts it, or where a 512- or
                    // 4096-byte sector does: a damaged sector-size field moved it, and the
                    // volume read as cut short in half.
                    let backup_fits = || {
                        image_format::store::fatmap::backup_boot_offset(&boot)
                            .into_iter()
                            .chain([6 * 512, 6 * 4096])
                            .filter_map(|at| {
                                let mut b = [0u8; 512];
                                std::os::unix::fs::FileExt::read_exact_at(&file, &mut b, at)
                                    .ok()?;
                                (b[510..512] == [0x55, 0xaa])
                                    .then(|| image_format::store::fatmap::volume_bytes(&b))
                                    .flatten()
                            })
                            .any(|w| w <= have && w != want)
                    };
                    if have < want && !backup_fits() {
                        return Err(crate::exit::coded_next(
                            crate::exit::IO,
                            format!(
                                "{} is {} ({have} bytes) but the FAT32 file system on it spans \
                                 {} ({want} bytes): the medium (or this copy of it) was cut short \
                                 by {} bytes",
                                path.display(),
                                crate::units::human_bytes(have),
                                crate::units::human_bytes(want),
                                want - have
                            ),
                            "copy it again in full, or give the original",
                        ));
                    }
                }
            }
            let dev = image_format::store::DirectFile::new(file);
            let store = if read_only {
                FatStore::open_read_only(dev)
            } else {
                FatStore::open(dev)
            }
            .map_err(|e| match bytes {
                // The FAT reader reports a file shorter than a boot sector as
                // "failed to fill whole buffer": say what the file is instead.
                // (A longer one gets the reader's own account: no boot sector
                // signature, or a volume cut short.)
                Some(n) if n < 512 => crate::exit::coded(crate::exit::IO, too_small(&path, n)),
                // The store's repair of a boot sector names the medium `M`: here it has a path.
                _ => {
                    let p = path.display().to_string();
                    let damaged = matches!(e, image_format::StoreError::Damaged(_));
                    let e = e
                        .to_string()
                        .replace(
                            "on an image or device M: `dd if=M of=M",
                            &format!("`dd if={p} of={p}"),
                        )
                        .replace("a copy of M's", &format!("a copy of {p}'s"));
                    // Not FAT at all: what it is, where it is something (an ext4 image given
                    // as the medium was told only that its boot sector had no signature).
                    let holds = std::fs::File::open(&path)
                        .ok()
                        .and_then(|f| crate::guard::signatures(&f).ok())
                        .filter(|found| {
                            !found.is_empty() && e.contains("does not hold a FAT32 file system")
                        })
                        .map(|found| format!(" (it holds {})", crate::guard::describe(&found)))
                        .unwrap_or_default();
                    match damaged {
                        true => crate::exit::damaged_medium(format!("opening medium {p}: {e}")),
                        false => crate::err!("opening medium {p}{holds}: {e}"),
                    }
                }
            })?;
            crate::output::say_put_right(&format!("fat:{}", path.display()), &store);
            Ok(Box::new(store))
        }
        MediumSpec::Nbd(url) => {
            let parsed: mgear_nbd::NbdUrl = url
                .parse()
                .map_err(|e| usage(format!("--medium {url}: {e}")))?;
            let client = mgear_nbd::Client::connect(&parsed, &mgear_nbd::ConnectOptions::default())
                .with_context(|| format!("connecting to the medium at {url}"))?;
            let dev = FlushIsDurable(NbdFile::new(client));
            let store = if read_only {
                FatStore::open_read_only(dev)
            } else {
                FatStore::open(dev)
            }
            .map_err(|e| match e {
                image_format::StoreError::Damaged(_) => {
                    crate::exit::damaged_medium(format!("opening medium {url}: {e}"))
                }
                e => crate::err!("opening medium {url}: {e}"),
            })?;
            crate::output::say_put_right(&url, &store);
            Ok(Box::new(store))
        }
    }
}

/// Why a `fat:` file of `bytes` bytes cannot be a medium.
fn too_small(path: &Path, bytes: u64) -> String {
    format!(
        "{} is too small to be a FAT32 medium ({bytes} bytes, not even a boot sector; one is \
         at least {}): check the \
         path; a medium copied or downloaded in part must be copied again; make a new one with \
         `mgear medium format fat:PATH --size 64MiB`",
        path.display(),
        human_bytes(MIN_FAT32_BYTES)
    )
}

/// What [`format_medium`] did.
#[derive(Debug)]
pub struct FormatDone {
    /// Size of the image or device.
    pub bytes: u64,
    /// The captures the medium held before (gone now).
    pub captures: Vec<String>,
    /// The new file system.
    pub formatted: Formatted,
    /// Signatures found and wiped (with `--force`).
    pub wiped: Vec<crate::guard::Signature>,
}

/// `guard::refuse_if_holds_data` for an image file: the same refusal, with
/// a check that reads a file (`lsblk -f`, which that one suggests for a
/// device, lists block devices only and says nothing of an image).
/// The captures a FAT32 medium at `path` holds, by name (none when it reads as no medium):
/// what formatting it destroys, said by name ("holds a FAT32 file system" did not say that
/// the shipment's captures were on it).
pub fn captures_held(path: &Path) -> Vec<String> {
    let Ok(file) = File::open(path) else {
        return Vec::new();
    };
    let Ok(whole) = file.try_clone() else {
        return Vec::new();
    };
    if let Ok(mut store) = FatStore::open_read_only(image_format::store::DirectFile::new(whole)) {
        return image_format::capture_names(&mut store).unwrap_or_default();
    }
    // A disk whose media are in its partitions (a stick partitioned, a medium formatted
    // through a partition's device): `--force` over it said "captures_destroyed: []".
    let Ok(size) = (&file).seek(SeekFrom::End(0)) else {
        return Vec::new();
    };
    let Ok(table) = mgear_boot::partition::read_table(&mut &file, size) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for part in &table.partitions {
        let Ok(file) = file.try_clone() else { continue };
        let window = Window {
            file,
            start: part.start,
            len: part.size.min(size.saturating_sub(part.start)),
            pos: 0,
        };
        if let Ok(mut store) = FatStore::open_read_only(window) {
            out.extend(
                image_format::capture_names(&mut store)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|n| format!("{n} (in partition {})", part.number)),
            );
        }
    }
    out
}

/// Bytes `start..start + len` of a file read as a device of their own (a partition's FAT
/// volume), for reading only.
struct Window {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl std::io::Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        let got =
            std::os::unix::fs::FileExt::read_at(&self.file, &mut buf[..n], self.start + self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl std::io::Write for Window {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for Window {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let at = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = at.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}

impl image_format::store::fat::FatDevice for Window {
    fn sync_device(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// " with MotionGear captures a, b" of `captures`, or nothing.
pub fn captures_said(captures: &[String]) -> String {
    match captures {
        [] => String::new(),
        [one] => format!(" with MotionGear capture {one}"),
        more => format!(" with MotionGear captures {}", more.join(", ")),
    }
}

fn refuse_image_if_holds_data(
    path: &Path,
    force: bool,
) -> crate::Result<Vec<crate::guard::Signature>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let found = crate::guard::signatures(&file)
        .with_context(|| format!("reading the start and end of {}", path.display()))?;
    if !found.is_empty() && !force {
        return Err(usage(format!(
            "{} holds {}{}: formatting would destroy it. Check that this is the right image \
             (`blkid {}` or `file {}`), then pass --force",
            path.display(),
            crate::guard::describe(&found),
            captures_said(&captures_held(path)),
            path.display(),
            path.display()
        )));
    }
    // Data with no signature the guard knows (an ingested volume of a disk without a
    // partition table, dm-crypt, random data) was formatted in place with no question, the
    // way the "exists" refusal of `--size` pointed ("leave out --size").
    if found.is_empty() && !force && holds_nonzero_bytes(&file)? {
        return Err(usage(format!(
            "{} holds data (bytes that are not zeros, in no format mgear knows): formatting \
             would destroy it. Check that this is the right file, then pass --force",
            path.display()
        )));
    }
    Ok(found)
}

/// Whether `file` has a byte that is not zero in its first and last MiB or in 64 pieces of
/// 64 KiB spread over it (a sample: an image made by `truncate` or `fallocate` reads as zeros).
fn holds_nonzero_bytes(file: &File) -> crate::Result<bool> {
    use std::os::unix::fs::FileExt as _;
    let len = file.metadata().context("reading the image's size")?.len();
    let mut at: Vec<(u64, u64)> = vec![(0, 1 << 20), (len.saturating_sub(1 << 20), 1 << 20)];
    at.extend((0..64u64).map(|k| (k * (len / 64), 64 << 10)));
    let mut buf = vec![0u8; 1 << 20];
    for (off, n) in at {
        let n = n.min(len.saturating_sub(off)) as usize;
        let got = file
            .read_at(&mut buf[..n], off)
            .context("reading the image to see whether it holds data")?;
        if !image_format::is_all_zero(&buf[..got]) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Format `path` (a new image of `size` bytes, or an existing device) with
/// FAT32; returns the size.
pub fn format_fat(path: &std::path::Path, size: Option<u64>, force: bool) -> crate::Result<u64> {
    Ok(format_medium(path, size, force)?.bytes)
}

/// A size just short of a limit, in bytes where rounding would show the limit itself
/// ("34.00 MiB: ... needs at least 34.00 MiB").
fn exact_bytes(n: u64) -> String {
    let human = human_bytes(n);
    if human == human_bytes(MIN_FAT32_BYTES) {
        format!("{n} bytes")
    } else {
        human
    }
}

/// Check a new image's size before anything is created: at least 34 MiB,
/// at most 16 TiB. A request for exactly 16 TiB (or anything between
/// [`MAX_FAT32_BYTES`] and 16 TiB) makes an image of [`MAX_FAT32_BYTES`],
/// the 4 KiB FAT32 cannot address (and ext4 cannot hold in one file).
fn image_size(size: u64) -> crate::Result<u64> {
    if size < MIN_FAT32_BYTES {
        return Err(usage(format!(
            "--size {}: a FAT32 medium needs at least {}",
            exact_bytes(size),
            human_bytes(MIN_FAT32_BYTES)
        )));
    }
    if size > 16 << 40 {
        return Err(usage(format!(
            "--size {}: the largest FAT32 medium is 16 TiB (2^32 - 1 sectors of 4096 bytes); \
             split the machine over several media or use a smaller --size",
            human_bytes(size)
        )));
    }
    // A disk is whole sectors: an image of another length is one no device has (the
    // appliance refuses it, and its last bytes belong to no sector).
    if !size.is_multiple_of(512) {
        return Err(usage(format!(
            "--size {size} bytes: a medium is whole 512-byte sectors; give {} (or a size in \
             MiB or GiB)",
            size / 512 * 512
        )));
    }
    Ok(size.min(MAX_FAT32_BYTES))
}

/// Format `path`: a device or an existing image file in place (guarded by
/// [`crate::guard`]: `--force` needed when it holds a file system or a
/// partition table, whose signatures are then wiped), or a new sparse image
/// of `size` bytes (an existing file is replaced only with `--force`). A
/// failure removes an image this call created.
pub fn format_medium(
    path: &std::path::Path,
    size: Option<u64>,
    force: bool,
) -> crate::Result<FormatDone> {
    let meta = std::fs::metadata(path).ok();
    if meta.as_ref().is_some_and(|m| m.is_dir()) {
        // Not even with --force: a directory is a `dir:` medium as it is.
        return Err(usage(format!(
            "{} is a directory: `medium format` makes a FAT32 image file or formats a device; \
             give a new image path (e.g. {}/medium.img), or use the directory as it is with \
             --medium dir:{}",
            path.display(),
            path.display(),
            path.display()
        )));
    }
    // An image or device another command writes (another mgear, or a simulator serving it
    // as its medium, or a QEMU) is not formatted under it, not even with --force: --force
    // overrides "it holds data", never "someone is using it".
    let _held = match &meta {
        Some(_) => Some(crate::lock::lock(
            path,
            true,
            &format!("fat:{}", path.display()),
        )?),
        None => None,
    };
    let is_dev = meta
        .as_ref()
        .is_some_and(|m| m.file_type().is_block_device());
    let in_place = is_dev || (meta.is_some() && size.is_none());
    if in_place {
        if is_dev && size.is_some() {
            return Err(usage(format!(
                "{} is a device: --size applies to image files only",
                path.display()
            )));
        }
        // Said as a capture says it: "wiping old signatures: Operation not permitted" came
        // with advice about the user's permissions.
        if let Some(why) = refuses_writes(&format!("fat:{}", path.display())) {
            return Err(crate::exit::coded_hint(
                crate::exit::IO,
                format!(
                    "{} refuses writes ({why}): it cannot be formatted; nothing was written",
                    path.display()
                ),
                READ_ONLY_HINT,
            ));
        }
        let found = if is_dev {
            crate::guard::refuse_if_holds_data(path, force, "formatting")?
        } else {
            refuse_image_if_holds_data(path, force)?
        };
        let captures = captures_held(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut bytes = (&file).seek(SeekFrom::End(0))?;
        // Said as the file is (a 178-byte key file was "0 B").
        let was = bytes;
        if !is_dev {
            // Whole sectors, as a disk (its tail past the last one belongs to none).
            bytes = bytes / 512 * 512;
        }
        if bytes < MIN_FAT32_BYTES {
            return Err(usage(format!(
                "{} is {}: a FAT32 medium needs at least {}{}",
                path.display(),
                exact_bytes(was),
                human_bytes(MIN_FAT32_BYTES),
                if is_dev {
                    ""
                } else {
                    "; give --size (with --force) to make the image that size"
                }
            )));
        }
        if !is_dev {
            // An image file in place: every old byte dropped, so it reads as zeros and stays
            // sparse, at its size. Punched, not emptied and grown back: a kill between the
            // two left a file of 0 bytes, whose size the same command could not find again.
            if !mgear_volume::file::punch_hole(&file, 0, was) {
                file.set_len(0)
                    .and_then(|()| file.set_len(bytes))
                    .with_context(|| format!("emptying image {}", path.display()))?;
            } else if was != bytes {
                file.set_len(bytes)
                    .with_context(|| format!("emptying image {}", path.display()))?;
            }
        } else if !found.is_empty() {
            crate::guard::wipe(&file)
                .with_context(|| format!("wiping old signatures on {}", path.display()))?;
        }
        // With context, not flattened to text: a read-only device is told how to make it
        // writable (its hint was "reconnect it").
        let formatted =
            run_format(file, !is_dev).with_context(|| format!("formatting {}", path.display()))?;
        return Ok(FormatDone {
            bytes,
            captures,
            formatted,
            wiped: found,
        });
    }
    // A mistyped device name (`/dev/sdz`, a disk not plugged in) made an image file in /dev,
    // which is memory: every capture onto it was gone at the next boot, the disk untouched.
    if meta.is_none() && crate::guard::resolved(path).is_some_and(|p| p.starts_with("/dev")) {
        return Err(usage(format!(
            "there is no device {}: check its name (`lsblk` lists the disks attached) and that \
             it is plugged in. An image file is never made under /dev (it would be memory, gone \
             at the next boot); give an image path elsewhere for an image",
            path.display()
        )));
    }
    let requested = size.ok_or_else(|| {
        usage(format!(
            "creating image {} needs --size, e.g. --size 2GiB",
            path.display()
        ))
    })?;
    let bytes = image_size(requested)?;
    let wiped = match meta {
        Some(_) if !force => {
            let held = File::open(path)
                .and_then(|f| crate::guard::signatures(&f))
                .unwrap_or_default();
            let what = if held.is_empty() {
                String::new()
            } else {
                format!(
                    " and holds {}{}",
                    crate::guard::describe(&held),
                    captures_said(&captures_held(path))
                )
            };
            return Err(usage(format!(
                "{} exists{what}: pass --force to replace it (or, for an empty image, leave out \
                 --size to format it in place)",
                path.display()
            )));
        }
        Some(_) => File::open(path)
            .and_then(|f| crate::guard::signatures(&f))
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let captures = match meta {
        Some(_) => captures_held(path),
        None => Vec::new(),
    };
    // Truncating to zero and growing again drops every old byte (and
    // signature): the new image reads as zeros and stays sparse.
    let made = (|| -> crate::Result<Formatted> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .with_context(|| format!("cannot create image {}", path.display()))?;
        f.set_len(bytes).map_err(|e| {
            crate::exit::coded(
                crate::exit::IO,
                format!(
                    "cannot make {} {} long ({e}): the file system holding it cannot \
                     store a file that large (ext4 stops at 16 TiB, FAT at 4 GiB)",
                    path.display(),
                    human_bytes(bytes)
                ),
            )
        })?;
        run_format(f, true).with_context(|| format!("formatting {}", path.display()))
    })();
    match made {
        Ok(formatted) => Ok(FormatDone {
            bytes,
            captures,
            formatted,
            wiped,
        }),
        Err(e) => {
            // Never leave a half-made (and possibly huge, sparse) image behind.
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

fn run_format(file: File, zeroed: bool) -> Result<Formatted, image_format::StoreError> {
    let opts = FormatOptions {
        label: "MOTIONGEAR".into(),
        cluster_size: None,
        // A random serial per medium, as mkfs.fat does: two media must not
        // look like the same volume to a host (or to a person).
        volume_id: Some(rand::random()),
        device_is_zeroed: zeroed,
    };
    FatStore::format(file, &opts)
}

/// Segments of a span that live on media not given: which chunks of a
/// generation they hold, so ingest writes what the given media hold and says
/// which chunks are still missing and where they are.
#[derive(Debug, Clone)]
pub struct Gaps {
    far: std::collections::HashMap<String, u16>,
    map: image_format::span::SpanMap,
    given: String,
}

/// Why a medium declared lost and given again is needed by every later run of an ingest.
const LOST_AGAIN: &str = "one is declared lost: a run without it refuses this generation";

/// The segment that holds chunk `index` of `reader`'s generation (by its path: another disk
/// of the set's, or a peer machine's where dedup found the chunk) and the chunk's plaintext
/// length; `None` for an all-zero chunk, which no segment holds.
fn segment_of<S: Store>(
    reader: &image_format::CaptureReader<S>,
    index: u64,
) -> Option<(String, u32)> {
    let image_format::layout::IndexEntry::Stored(l) = reader.entry(index)? else {
        return None;
    };
    let holder = reader.record_capture(l);
    let stream = holder.as_deref().unwrap_or(reader.name());
    Some((
        image_format::layout::segment_path(stream, l.generation, l.segment),
        l.plain_len,
    ))
}

/// Chunks of one medium still needed: count, plaintext bytes, first and last index.
type Need = std::collections::BTreeMap<u16, (u64, u64, u64, u64)>;

impl Gaps {
    /// The gaps of `medium` (none when it is not a span or every medium is there).
    pub fn of(medium: &Medium, given: &str) -> Option<Gaps> {
        let span = medium.span()?;
        let far: std::collections::HashMap<String, u16> = span.unreachable().into_iter().collect();
        Gaps::new(far, span.map().clone(), given)
    }

    /// Gaps from segment paths not reachable (path → medium ordinal), the
    /// span's map and how the media given are described; `None` if nothing
    /// is unreachable.
    pub fn new(
        far: std::collections::HashMap<String, u16>,
        map: image_format::span::SpanMap,
        given: &str,
    ) -> Option<Gaps> {
        (!far.is_empty()).then(|| Gaps {
            far,
            map,
            given: given.to_string(),
        })
    }

    /// The medium (ordinal) holding chunk `index` of `reader`'s generation,
    /// when it is not among the media given.
    pub fn holder<S: Store>(
        &self,
        reader: &image_format::CaptureReader<S>,
        index: u64,
    ) -> Option<u16> {
        self.place(reader, index).map(|(o, _)| o)
    }

    /// The medium (ordinal) that holds chunk 0 of `reader`'s generation, by
    /// the span's map; `None` for a zero chunk or one the map does not place.
    fn head_medium<S: Store>(&self, reader: &image_format::CaptureReader<S>) -> Option<u16> {
        let (path, _) = segment_of(reader, 0)?;
        self.map.placed.get(&path).copied()
    }

    /// [`Gaps::holder`] and the chunk's plaintext length.
    fn place<S: Store>(
        &self,
        reader: &image_format::CaptureReader<S>,
        index: u64,
    ) -> Option<(u16, u32)> {
        let (path, len) = segment_of(reader, index)?;
        Some((*self.far.get(&path)?, len))
    }

    /// The chunks `missing` says are still missing, by the medium holding them.
    fn need<S: Store>(
        &self,
        reader: &image_format::CaptureReader<S>,
        missing: impl Fn(u64) -> bool,
    ) -> Need {
        let mut need = Need::new();
        for i in (0..reader.chunk_count()).filter(|&i| missing(i)) {
            if let Some((o, len)) = self.place(reader, i) {
                let e = need.entry(o).or_insert((0, 0, i, i));
                e.0 += 1;
                e.1 += u64::from(len);
                e.3 = i;
            }
        }
        need
    }

    /// One line per medium: "N chunk(s) (…, between disk bytes a and b) are on medium #k (label)".
    fn lines<S: Store>(&self, reader: &image_format::CaptureReader<S>, need: &Need) -> String {
        let cs = u64::from(reader.chunk_size());
        need.iter()
            .map(|(o, (n, bytes, first, last))| {
                format!(
                    "{n} chunk(s) ({}, between disk bytes {} and {}) are on {}",
                    human_bytes(*bytes),
                    first * cs,
                    (last + 1) * cs,
                    self.map.describe(*o)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// A medium declared lost that is given now and holds part of `reader`'s generation (it
    /// turned up again): a run without it refuses the generation ([`Gaps::refuse_lost`]).
    fn lost_given<S: Store>(&self, reader: &image_format::CaptureReader<S>) -> Option<u16> {
        (0..reader.chunk_count()).find_map(|i| {
            let (path, _) = segment_of(reader, i)?;
            let o = *self.map.placed.get(&path)?;
            (self.map.member(o)?.lost && !self.far.contains_key(&path)).then_some(o)
        })
    }

    /// Refuses before anything is written when chunks of `reader`'s
    /// generation that `missing` says are still to write are on a medium declared lost: they
    /// will never arrive. (An earlier run given that medium, turned up again, wrote its share.)
    pub fn refuse_lost<S: Store>(
        &self,
        reader: &image_format::CaptureReader<S>,
        missing: impl Fn(u64) -> bool,
    ) -> crate::Result<()> {
        let need: Need = self
            .need(reader, missing)
            .into_iter()
            .filter(|(o, _)| self.map.member(*o).is_some_and(|m| m.lost))
            .collect();
        if need.is_empty() {
            return Ok(());
        }
        // Data gone for good, not a usage error: exit 1, as a capture with nothing finished.
        Err(crate::exit::coded_hint(
            crate::exit::FOUND,
            format!(
                "capture {} generation {} cannot be ingested: {}",
                reader.name(),
                reader.generation(),
                self.lines(reader, &need)
            ),
            "a medium declared lost holds part of this generation (its own records, or a \
             parent's it reuses: a delta made before the loss needs them too, though `mgear \
             inspect`, which reads no index, lists it complete): ingest the generation \
             `--replace-medium` wrote or a later one (leave out --generation for the newest); \
             or, if that medium turned up again, give it together with the other media in one \
             run (a run without it refuses this generation, even the part an earlier run wrote \
             from it)",
        ))
    }

    /// The error of an ingest that wrote what the given media hold
    /// (`written` chunks in this run, `zeros` of them all-zero chunks no medium holds, into
    /// `target`) and still misses the chunks `missing` says: which, and on which medium
    /// (exit code 4).
    pub fn pending<S: Store>(
        &self,
        reader: &image_format::CaptureReader<S>,
        missing: impl Fn(u64) -> bool,
        (written, zeros): (u64, u64),
        target: &str,
    ) -> crate::Error {
        use crate::units::count;
        // Chunk 0 (the boot sector) is written only by the run that completes
        // the disk: the medium holding it is needed again then, even when it
        // is given now.
        let head = missing(0)
            .then(|| self.head_medium(reader))
            .flatten()
            .filter(|o| self.place(reader, 0).is_none_or(|(far, _)| far != *o));
        let need = self.need(reader, missing);
        let labels: Vec<String> = need.keys().map(|o| self.map.describe(*o)).collect();
        let lost = self.lost_given(reader);
        let again = match (head, lost) {
            (Some(h), Some(l)) if h != l => Some(format!(
                "with {} and {} again",
                self.map.describe(h),
                self.map.describe(l),
            )),
            // Declared lost: a run without it refuses this generation, even the part
            // written from it now (the hint said it was not needed again).
            (_, Some(o)) | (Some(o), None) => Some(format!("with {} again", self.map.describe(o))),
            (None, None) => None,
        };
        let message = format!(
            "capture {} generation {} spans several media and not all of them are given ({}): \
                 {}; still missing: {}{}",
            reader.name(),
            reader.generation(),
            self.given,
            // All-zero chunks are on no medium: "the 42 chunks those hold" of media that
            // held none of the disk's data read as data found where there was none.
            match (written.saturating_sub(zeros), zeros.min(written)) {
                // A re-run with the same media: an earlier run wrote what they hold.
                // Or the media given hold none of this disk (a set's disk on the others).
                (0, 0) => format!(
                    "nothing more of it could be written from them into {target} (what they \
                         hold of it, if anything, an earlier run wrote)"
                ),
                (0, z) => format!(
                    "wrote its {} into {target} (no medium holds them); the media given \
                         hold none of its data (what they hold of it, if anything, an earlier \
                         run wrote)",
                    count(z, "all-zero chunk")
                ),
                (n, 0) => format!("wrote the {} those hold into {target}", count(n, "chunk")),
                (n, z) => format!(
                    "wrote the {} those hold and its {} (on no medium) into {target}",
                    count(n, "chunk"),
                    count(z, "all-zero chunk")
                ),
            },
            self.lines(reader, &need),
            head.map(|o| format!(
                "; {} holds the disk's first chunk (its boot sector), which only the run that \
                     completes the disk writes: give it again then, and keep it (do not erase it) \
                     until then",
                self.map.describe(o)
            ))
            .unwrap_or_default()
        );
        let hint = format!(
            "when {} {}, run the same command with {} as --medium (or --appliance){}: ingest \
             goes on from here; until then the target stays unfinished",
            labels.join(" and "),
            if labels.len() > 1 {
                "arrive"
            } else {
                "arrives"
            },
            if labels.len() > 1 { "them" } else { "it" },
            match (&again, lost) {
                (Some(a), Some(_)) => format!(" and {a} ({LOST_AGAIN})"),
                (Some(a), None) => format!(" and {a}"),
                (None, _) => " (the media given now are not needed again)".into(),
            }
        );
        crate::Error::other(crate::exit::Pending {
            message,
            hint: Some(hint),
            again,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::exit::{code_of, USAGE};

    /// A mistyped device name is not made an image file in /dev (memory, gone at reboot).
    #[test]
    fn a_device_that_is_not_there_is_not_made_a_file_in_dev() {
        let typo = std::path::Path::new("/dev/mgear-test-no-such-disk");
        let Err(e) = format_medium(typo, Some(64 << 20), false) else {
            let _ = std::fs::remove_file(typo);
            panic!("an image was made in /dev")
        };
        assert_eq!(code_of(&e), USAGE);
        assert!(e.to_string().contains("there is no device"), "{e}");
        assert!(!typo.exists());
    }

    #[test]
    fn a_file_given_as_dir_names_the_fat_scheme() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.img");
        std::fs::write(&f, b"x").unwrap();
        let Err(e) = open_mode(&format!("dir:{}", f.display()), true) else {
            panic!("a file opened as dir:")
        };
        assert_eq!(code_of(&e), USAGE);
        assert!(
            e.to_string()
                .contains(&format!("use --medium fat:{}", f.display())),
            "{e}"
        );
    }

    #[test]
    fn fat_media_that_cannot_be_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| format!("fat:{}", dir.path().join(name).display());
        // A directory: the dir: scheme is named.
        std::fs::create_dir(dir.path().join("adir")).unwrap();
        let Err(e) = open_mode(&at("adir"), true) else {
            panic!("a directory opened as fat:")
        };
        assert_eq!(code_of(&e), USAGE);
        assert!(e.to_string().contains("use --medium dir:"), "{e}");
        // Missing: check the path, or make one where one is written; one that is only read
        // (verify, ingest, serve) must hold the captures, which a new one does not.
        for read_only in [false, true] {
            let Err(e) = open_mode(&at("nonexist.img"), read_only) else {
                panic!("a missing image opened")
            };
            assert_eq!(code_of(&e), crate::exit::IO);
            let m = e.to_string();
            assert!(m.contains("check the path"), "{m}");
            assert_eq!(m.contains("mgear medium format fat:"), !read_only, "{m}");
        }
        // Too small to hold a FAT32 file system, whatever it holds.
        std::fs::write(dir.path().join("tiny.txt"), "hello\n").unwrap();
        std::fs::write(dir.path().join("empty.img"), "").unwrap();
        for (name, bytes) in [("tiny.txt", 6), ("empty.img", 0)] {
            let Err(e) = open_mode(&at(name), true) else {
                panic!("{name} opened as a medium")
            };
            let m = e.to_string();
            assert!(
                m.contains(&format!("too small to be a FAT32 medium ({bytes} bytes")),
                "{m}"
            );
            assert!(!m.contains("fill whole buffer"), "{m}");
        }
        // A character device is no medium, said before it is opened.
        let Err(e) = open_mode("fat:/dev/null", true) else {
            panic!("/dev/null opened as a medium")
        };
        assert!(e.to_string().contains("is a character device"), "{e}");
    }

    #[test]
    fn format_small_and_large() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.img");
        assert_eq!(format_fat(&p, Some(64 << 20), false).unwrap(), 64 << 20);
        // Refuses to replace without --force (naming what is there), and too-small images.
        let e = format_fat(&p, Some(64 << 20), false).unwrap_err();
        assert_eq!(code_of(&e), USAGE);
        assert!(e.to_string().contains("FAT32 file system"), "{e}");
        assert_eq!(
            code_of(&format_fat(&p, Some(8 << 20), true).unwrap_err()),
            USAGE
        );
        let mut m = open_mode(&format!("fat:{}", p.display()), false).unwrap();
        m.store().create_dir_all("x/y").unwrap();
        m.close().unwrap();
        let mut m = open_mode(&format!("fat:{}", p.display()), false).unwrap();
        assert_eq!(m.store().list("x").unwrap().len(), 1);
        m.close().unwrap();
    }

    #[test]
    fn the_same_medium_twice_is_named_as_such_not_as_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.img");
        format_fat(&p, Some(64 << 20), false).unwrap();
        let a = format!("fat:{}", p.display());
        let dotted = format!("fat:{}/./a.img", dir.path().display());
        let twice = Where {
            medium: vec![a.clone(), dotted.clone()],
            appliance: Vec::new(),
        };
        for r in [twice.open().err(), twice.open_read_only().err()] {
            let e = r.expect("refused");
            assert_eq!(code_of(&e), USAGE, "{e}");
            assert_eq!(
                e.to_string(),
                format!(
                    "the same medium is given twice: --medium {a} and --medium {dotted}; give \
                     each medium once (several --medium/--appliance are the media of one span)"
                )
            );
        }
    }

    #[test]
    fn formatting_an_image_in_place_suggests_a_check_that_reads_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.img");
        format_fat(&p, Some(64 << 20), false).unwrap();
        let e = format_fat(&p, None, false).unwrap_err().to_string();
        assert!(
            e.contains(&format!("(`blkid {0}` or `file {0}`)", p.display())),
            "{e}"
        );
        assert!(!e.contains("lsblk"), "{e}");
    }

    #[test]
    fn a_directory_is_not_formatted_even_with_force() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep"), b"x").unwrap();
        for force in [false, true] {
            let e = format_fat(dir.path(), Some(64 << 20), force).unwrap_err();
            assert_eq!(code_of(&e), USAGE);
            assert!(e.to_string().contains("is a directory"), "{e}");
        }
        assert_eq!(std::fs::read(dir.path().join("keep")).unwrap(), b"x");
    }

    #[test]
    fn too_large_is_refused_before_any_file_exists() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.img");
        let e = format_fat(&p, Some(17 << 40), false).unwrap_err();
        assert_eq!(code_of(&e), USAGE);
        assert!(e.to_string().contains("16 TiB"), "{e}");
        assert!(!p.exists());
        // 16 TiB exactly is the 16 TiB - 4 KiB FAT32 can address.
        assert_eq!(image_size(16 << 40).unwrap(), MAX_FAT32_BYTES);
        // One byte short of the smallest is said in bytes, not as the smallest itself.
        let e = image_size(MIN_FAT32_BYTES - 1).unwrap_err().to_string();
        assert!(
            e.contains(&format!("--size {} bytes: a FAT32", MIN_FAT32_BYTES - 1)),
            "{e}"
        );
        let e = image_size(1 << 20).unwrap_err().to_string();
        assert!(e.contains("--size 1.00 MiB: a FAT32"), "{e}");
    }

    #[test]
    fn in_place_needs_force_over_data_and_serials_differ() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        let fa = format_medium(&a, Some(64 << 20), false).unwrap();
        let fb = format_medium(&b, Some(64 << 20), false).unwrap();
        assert_ne!(fa.formatted.volume_id, fb.formatted.volume_id);
        assert_ne!(fa.formatted.volume_id, 0x1234_5678);
        // In place (no --size): the FAT32 it holds needs --force, and is wiped.
        let e = format_medium(&a, None, false).unwrap_err();
        assert_eq!(code_of(&e), USAGE);
        let again = format_medium(&a, None, true).unwrap();
        assert_eq!(again.wiped.len(), 1, "{:?}", again.wiped);
        assert_eq!(again.bytes, 64 << 20);
        // A blank file of the right size formats in place without --force.
        let c = dir.path().join("c.img");
        File::create(&c).unwrap().set_len(64 << 20).unwrap();
        assert!(format_medium(&c, None, false).unwrap().wiped.is_empty());
    }

    /// In place, every old byte is dropped and the image keeps its size all along (it was
    /// emptied and grown back: a kill between left 0 bytes, and the same command could not
    /// find the size again); an odd tail past the last whole sector is cut.
    #[test]
    fn in_place_drops_old_bytes_and_keeps_the_size() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.img");
        std::fs::write(&a, vec![0xaau8; (40 << 20) + 100]).unwrap();
        let done = format_medium(&a, None, true).unwrap();
        assert_eq!(done.bytes, 40 << 20);
        let m = std::fs::metadata(&a).unwrap();
        assert_eq!(m.len(), 40 << 20);
        let img = std::fs::read(&a).unwrap();
        assert_eq!(img[(30 << 20)..(30 << 20) + 4096], [0u8; 4096]);
        // Sparse: the old bytes are holes, not zeros written.
        assert!(
            m.blocks() * 512 < 8 << 20,
            "{} bytes allocated",
            m.blocks() * 512
        );
        let e = format_medium(&dir.path().join("none.img"), None, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs --size"), "{e}");
        File::create(&a).unwrap();
        let e = format_medium(&a, None, true).unwrap_err().to_string();
        assert!(e.contains("give --size (with --force)"), "{e}");
    }
}
