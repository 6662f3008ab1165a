//! `mgear verify`: check a medium.
//!
//! ```text
//! mgear verify --medium fat:/dev/sdb                        # keyless: framing, hashes, manifests
//! mgear verify --medium fat:/dev/sdb --identity target.key  # full: also decrypts every chunk
//! ```
//!
//! Without a key it checks what the appliance checks: every record's framing
//! and hash, segment trailers and the manifests' segment digests. With a key
//! (`--identity` or `--passphrase-file`) it also authenticates and decrypts
//! every chunk the newest (or `--generation`) generation references. Each
//! bad record is named with capture, generation, segment, record and the
//! disk byte range it holds; exit 1 if anything is bad.

use std::path::PathBuf;

use image_format::{Problem, Unlock, VerifyObserver, VerifyReport};
use serde::Serialize;

use crate::exit::{FOUND, OK, USAGE};
use crate::progress::{self, Progress};

/// `mgear verify`, typed (the binary's `cli::verify` fills it in from the flags).
#[derive(Debug)]
pub struct Plan {
    pub medium: crate::medium::Where,
    /// Target identity (from `mgear keygen`): also decrypt and check every chunk.
    pub identity: Option<PathBuf>,
    /// Passphrase file: also decrypt and check every chunk.
    pub passphrase_file: Option<PathBuf>,
    /// Only this capture.
    pub name: Option<String>,
    /// Generation to decrypt with a key [default: newest].
    pub generation: Option<u32>,
    /// Print the result as one JSON object.
    pub json: bool,
    /// Pinned trust (checked with a key or with any of these flags).
    pub trust: crate::trust::Pins,
}

/// Trust status of one capture, as `verify --json` prints it.
#[derive(Debug, Serialize)]
pub struct TrustJson {
    pub capture: String,
    pub generation: Option<u32>,
    pub trusted: bool,
    pub trusted_by: Vec<String>,
    pub message: String,
}

/// One problem as `verify --json` prints it.
#[derive(Debug, Serialize)]
pub struct ProblemJson {
    pub capture: String,
    pub generation: Option<u32>,
    pub segment: Option<u32>,
    pub record: Option<u32>,
    pub file: Option<String>,
    pub disk_range: Option<[u64; 2]>,
    pub what: String,
    pub message: String,
}

/// A segment on another medium of the span, as `verify --json` prints it.
#[derive(Debug, Serialize)]
pub struct ElsewhereJson {
    pub path: String,
    pub medium: String,
    /// On a medium declared lost: gone for good.
    pub lost: bool,
}

/// What `verify --json` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    pub command: &'static str,
    pub keyed: bool,
    pub ok: bool,
    pub captures: u32,
    pub generations: u32,
    pub segments: u32,
    pub records: u64,
    pub bytes: u64,
    pub problems: Vec<ProblemJson>,
    /// Segments of a capture spanning several media that are on other media than the ones
    /// given (not checked here; each medium verifies on its own).
    pub elsewhere: Vec<ElsewhereJson>,
    /// Checked with a key or trust flags: is each capture signed by a pinned key?
    pub trust: Vec<TrustJson>,
    /// With a key and no `--name`: captures on the medium this key does not open (another
    /// target's): their structure was checked, their records were not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_opened: Vec<String>,
    /// What this run did not check, and what checks it: a keyless "OK" read as "safe to
    /// ship and to trust" where nothing was decrypted and nobody's signature was asked for.
    pub not_checked: Vec<String>,
}

/// What a verify with (`keyed`) or without a key, and with no trust pinned (`unpinned`),
/// leaves unchecked, each with the option that checks it.
fn not_checked(keyed: bool, unpinned: bool) -> Vec<String> {
    let mut left = Vec::new();
    if !keyed {
        left.push(
            "the data itself (every record's hash and the files' structure were checked, \
             nothing was decrypted: --identity or --passphrase-file decrypts every chunk)"
                .to_string(),
        );
    }
    if unpinned {
        left.push(
            "who made the capture (nothing pinned: --trust SITE.pub, --trust-appliance FP, and \
             the receipt's --expect-commit)"
                .to_string(),
        );
    }
    left
}

struct Observer {
    bar: Progress,
    json: bool,
    /// `--medium X` (or `--appliance P`) of this run, for the advice that names none.
    here: String,
    /// Findings printed so far ([`once_key`]): both passes find a damaged file, and the
    /// summary says it once, so the lines printed as found do too.
    said: std::collections::HashSet<String>,
}

impl VerifyObserver for Observer {
    fn progress(&mut self, done: u64, _total: u64) {
        self.bar.set(done);
    }
    fn problem(&mut self, p: &Problem) {
        if !self.json && self.said.insert(once_key(p).0) {
            // Names off the medium may hold anything (an ESC sequence recoloured the
            // terminal): escaped, never raw.
            eprintln!(
                "BAD: {}",
                crate::output::printable_lines(
                    &p.to_string().replace("--medium MEDIUM", &self.here)
                )
            );
        }
    }
}

/// What a capture that lists no generation but holds `hidden` (what
/// [`crate::trust::hidden_generation_dirs`] found) is: damage, never a capture to remove
/// (that advice, `medium rm`, deleted a finished generation that only lost its entry's mark).
fn hidden_generation(hidden: &[String]) -> String {
    format!(
        "holds no generation this medium lists, yet it holds {}: a generation hidden by damage. \
         Do not remove the capture (`medium rm` deletes what it holds) or repair the medium; \
         ingest from another copy of the shipment, or ask how the medium was handled",
        hidden.join("; ")
    )
}

/// Read the key arguments into an [`Unlock`], if any.
pub fn unlock_from(
    identity: Option<&std::path::Path>,
    passphrase_file: Option<&std::path::Path>,
) -> crate::Result<Option<Unlock>> {
    if let Some(p) = identity {
        return Ok(Some(Unlock::Identities(crate::keys::read_identities(p)?)));
    }
    if let Some(p) = passphrase_file {
        let pw = crate::keys::read_passphrase(p)?;
        return Ok(Some(Unlock::Passphrase(pw.to_string().into())));
    }
    Ok(None)
}

/// "this key does not open capture NAME" (image_format's `WrongKey`) says
/// nothing of what would: replace it with the capture's key slots and the
/// key to try. `err` is returned as it is when it is another error or the
/// medium cannot be read again.
pub fn explain_wrong_key(
    err: crate::Error,
    medium: &crate::medium::Where,
    identity: Option<&std::path::Path>,
    passphrase_file: Option<&std::path::Path>,
) -> crate::Error {
    explain(err, medium, identity, passphrase_file, false)
}

/// [`explain_wrong_key`] for a capture (a delta or resume opened by its passphrase): what
/// would open it there is the passphrase or the key cache, not an `--identity`, which
/// capture does not take (the advice named it).
pub fn explain_wrong_key_for_capture(
    err: crate::Error,
    medium: &crate::medium::Where,
    passphrase_file: Option<&std::path::Path>,
) -> crate::Error {
    explain(err, medium, None, passphrase_file, true)
}

fn explain(
    err: crate::Error,
    medium: &crate::medium::Where,
    identity: Option<&std::path::Path>,
    passphrase_file: Option<&std::path::Path>,
    capture: bool,
) -> crate::Error {
    let Some(name) = err.chain().find_map(|e| match e.downcast_ref() {
        Some(image_format::Error::WrongKey { name }) => Some(name.clone()),
        _ => None,
    }) else {
        return err;
    };
    let Ok(mut m) = medium.open_read_only() else {
        return err;
    };
    // A slot damaged or replaced since the capture opens under no key: say that, not
    // "wrong key" (exit 2 sent the operator looking for another key).
    if let Ok(Some(file)) = image_format::verify::changed_key_slot(m.store(), &name) {
        let _ = m.close();
        return crate::Error::Coded {
            code: crate::exit::FOUND,
            message: format!(
                "capture {name}'s key slot {file} is damaged or was replaced since the capture \
                 (it is not the one its MANIFEST recorded): no key opens it, the key given may \
                 well be the right one"
            ),
            hint: Some(
                "ingest from another copy of the shipment, or capture again; `mgear verify` \
                 without a key names what else is wrong"
                    .into(),
            ),
        };
    }
    let slots = crate::keys::KeySlots::of(m.store(), &name);
    let _ = m.close();
    let (message, hint) = wrong_key_message(&name, slots, identity, passphrase_file, capture);
    crate::Error::Coded {
        code: crate::exit::USAGE,
        message,
        hint: Some(hint),
    }
}

/// What makes two findings one ([`said_once`]), and whether the finding is about a whole file.
fn once_key(p: &image_format::Problem) -> (String, bool) {
    let mut place = p.at.clone();
    place.disk_range = None;
    let whole_file = place.file.is_some() && place.segment.is_none() && place.record.is_none();
    if whole_file {
        place.file_range = None;
    }
    let key = image_format::Problem {
        at: place,
        what: if whole_file {
            String::new()
        } else {
            p.what.clone()
        },
    }
    .to_string();
    (key, whole_file)
}

/// `problems` with each said once: the same place and finding (whatever disk range one of
/// them names) kept at its first place, as the one that names the disk range. A whole file
/// (an INDEX, a MANIFEST: no record in it named) is one finding, whatever words each pass
/// found for it: the first is kept.
/// Every copy of the mirrored files (all but segments) of the captures `theirs` accepts, on
/// each medium of the span `media` names read alone: a file some media hold and others lack,
/// or whose copies differ, is a problem naming them (which copy is the damaged one, `mgear
/// verify` of each medium alone says).
fn mirror_problems(
    media: &crate::medium::Where,
    theirs: &dyn Fn(&str) -> bool,
) -> crate::Result<Vec<image_format::Problem>> {
    use std::collections::BTreeMap;
    let members: Vec<(String, crate::medium::Where)> = media
        .appliance
        .iter()
        .map(|p| {
            (
                format!("--appliance {}", p.display()),
                crate::medium::Where::appliance_at(p.clone()),
            )
        })
        .chain(media.medium.iter().map(|m| {
            (
                format!("--medium {m}"),
                crate::medium::Where::one(m.clone()),
            )
        }))
        .collect();
    // A medium declared lost (`capture --replace-medium`) and found again holds the span as
    // it was before: the mirrored files written since are not on it, which is no damage (it
    // was told as one problem per file). Any member's map may say so, its own may not: each
    // medium is read once, and the lost ones' copies are set aside once all maps are seen.
    let mut lost = std::collections::BTreeSet::new();
    /// A medium's span id and ordinal, and its copies (path, digest).
    type Read = (Option<([u8; 16], u16)>, Vec<(String, [u8; 32])>);
    let mut read: Vec<(&String, Read)> = Vec::new();
    for (label, w) in &members {
        let mut m = w.open_read_only()?;
        let Some(span) = m.span() else {
            m.close()?;
            continue;
        };
        let id = span.id();
        for member in span.map().members.iter().filter(|m| m.lost) {
            lost.insert((id, member.ordinal));
        }
        let own = match span.attached()[..] {
            [ordinal] => Some((id, ordinal)),
            _ => None,
        };
        let mut held = Vec::new();
        for f in mirrored_files(m.store(), theirs)? {
            let len = m.store().len(&f).map_err(|e| crate::err!("{f}: {e}"))?;
            let mut h = blake3::Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut at = 0u64;
            while at < len.unwrap_or(0) {
                let n = m
                    .store()
                    .read_at(&f, at, &mut buf)
                    .map_err(|e| crate::err!("{f}: {e}"))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                at += n as u64;
            }
            held.push((f, *h.finalize().as_bytes()));
        }
        m.close()?;
        read.push((label, (own, held)));
    }
    // path -> (medium, digest) for every member of a span.
    let mut copies: BTreeMap<String, Vec<(String, [u8; 32])>> = BTreeMap::new();
    let mut spanned = Vec::new();
    for (label, (own, held)) in read {
        if own.is_some_and(|o| lost.contains(&o)) {
            eprintln!(
                "mgear verify: note: {label} was declared lost from its span (`capture \
                 --replace-medium`): it holds the span as it was before, and its copies of the \
                 span's files are not compared with the others'"
            );
            continue;
        }
        spanned.push(label.clone());
        for (f, digest) in held {
            copies.entry(f).or_default().push((label.clone(), digest));
        }
    }
    let mut out = Vec::new();
    if spanned.len() < 2 {
        return Ok(out);
    }
    for (path, have) in copies {
        let capture = path.split('/').nth(1).unwrap_or_default().to_string();
        let at = image_format::Location::capture(&capture).file(&path);
        let missing: Vec<&String> = spanned
            .iter()
            .filter(|l| !have.iter().any(|(h, _)| h == *l))
            .collect();
        if !missing.is_empty() {
            out.push(image_format::Problem {
                at,
                what: format!(
                    "the copy every medium of the span holds is missing on {} (deleted or lost \
                     there; the media that hold it: {})",
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    have.iter()
                        .map(|(l, _)| l.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        } else if have.iter().any(|(_, d)| *d != have[0].1) {
            out.push(image_format::Problem {
                at,
                what: format!(
                    "its copies on the media of the span differ ({}): one is damaged or was \
                     replaced; `mgear verify` of each medium alone names the bad one",
                    have.iter()
                        .map(|(l, _)| l.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
    }
    Ok(out)
}

/// The files under `MGEAR/` of the captures `theirs` accepts that a span mirrors: all but
/// segments (placed on one medium), leftover temporaries and the attestation copies
/// (each appliance keeps its own).
fn mirrored_files(
    store: &mut dyn image_format::Store,
    theirs: &dyn Fn(&str) -> bool,
) -> crate::Result<Vec<String>> {
    use image_format::store::EntryKind;
    let root = image_format::layout::ROOT_DIR;
    let mut out = Vec::new();
    let mut dirs: Vec<String> = Vec::new();
    for e in store.list(root).map_err(|e| crate::err!("{root}: {e}"))? {
        if e.kind == EntryKind::Dir
            && !e
                .name
                .eq_ignore_ascii_case(image_format::layout::ATTEST_NAME)
            && theirs(&e.name)
        {
            dirs.push(format!("{root}/{}", e.name));
        }
    }
    while let Some(d) = dirs.pop() {
        for e in store.list(&d).map_err(|e| crate::err!("{d}: {e}"))? {
            let p = format!("{d}/{}", e.name);
            match e.kind {
                EntryKind::Dir => dirs.push(p),
                EntryKind::File if e.name.starts_with("SEG-") || e.name.ends_with(".TMP") => {}
                EntryKind::File => out.push(p),
            }
        }
    }
    Ok(out)
}

fn said_once(problems: Vec<image_format::Problem>) -> Vec<image_format::Problem> {
    let mut at: std::collections::HashMap<String, usize> = Default::default();
    let mut out: Vec<image_format::Problem> = Vec::with_capacity(problems.len());
    for p in problems {
        let (key, whole_file) = once_key(&p);
        match at.get(&key) {
            Some(&i) if !whole_file && out[i].at.disk_range.is_none() => out[i] = p,
            Some(_) => {}
            None => {
                at.insert(key, out.len());
                out.push(p);
            }
        }
    }
    out
}

/// `e`, raised opening capture `name`, unless `name` is not on the medium at all: then that
/// usage error ([`no_such_capture`]), not what opening something absent looked like (a
/// refusal, or "no key slot left" as after a crypto-erase).
pub fn unless_no_such_capture<E: Into<crate::Error>>(
    e: E,
    name: &str,
    medium: &str,
    store: &mut dyn image_format::Store,
) -> crate::Error {
    match image_format::list_captures(store) {
        Ok(caps) if !caps.iter().any(|c| c.name.eq_ignore_ascii_case(name)) => {
            let names: Vec<String> = caps.into_iter().map(|c| c.name).collect();
            no_such_capture(name, medium, &names, store)
        }
        _ => e.into(),
    }
}

/// A `--name` that is not on the medium (exit 2), with what is there.
pub fn no_such_capture(
    name: &str,
    medium: &str,
    names: &[String],
    store: &mut dyn image_format::Store,
) -> crate::Error {
    // A capture's directory whose entry was deleted since is damage, not a mistyped name
    // (told as "pass one with --name" while `verify` said the medium was clean).
    // Another capture's directory whose manifests name this one: its name was damaged (or
    // changed by hand), not mistyped here ("pass one with --name").
    let renamed = image_format::list_captures(store)
        .unwrap_or_default()
        .into_iter()
        .find(|c| {
            let claim = format!("manifest belongs to capture {} ", name.to_ascii_lowercase());
            c.generations.iter().any(|g| {
                matches!(&g.state, image_format::GenerationState::Damaged(w)
                    if w.to_ascii_lowercase().starts_with(&claim))
            })
        });
    if let Some(c) = renamed {
        return crate::exit::coded_hint(
            crate::exit::FOUND,
            format!(
                "there is no capture {name:?} on {medium}, but the manifests of capture {} \
                 there say they are {name:?}'s: that directory's name was damaged or changed \
                 since",
                crate::output::printable(&c.name)
            ),
            LOST_CAPTURE_HINT,
        );
    }
    if let Some(lost) = lost_captures(store) {
        return crate::exit::coded_hint(
            crate::exit::FOUND,
            format!(
                "there is no capture {name:?} on {medium} (captures: {}), but it holds {lost}: \
                 it may be {name:?}",
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                },
            ),
            LOST_CAPTURE_HINT,
        );
    }
    let hidden = if names.is_empty() {
        hidden_by_damage(store)
    } else {
        String::new()
    };
    if !hidden.is_empty() {
        // Nothing listed while much is in use: damage more likely than a name mistyped
        // ("pass one with --name" of a medium that lists none, exit 2).
        return crate::exit::coded_hint(
            crate::exit::FOUND,
            format!("there is no capture {name:?} on {medium} (captures: none){hidden}"),
            "nothing was written: do not write to this medium; `mgear verify` and `mgear medium \
             fsck` of it say what is damaged. Ingest from another copy of the shipment (or, if \
             this is not the medium that was shipped, from that one)",
        );
    }
    crate::exit::coded_hint(
        crate::exit::USAGE,
        format!(
            "there is no capture {name:?} on {medium} (captures: {}){hidden}",
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        ),
        // An appliance's medium is listed through the appliance (it said `--medium`).
        if medium.starts_with("appliance at ") {
            "`mgear inspect --appliance PORT` lists the captures; pass one with --name (another \
             appliance may hold this one)"
        } else {
            "`mgear inspect --medium ...` lists the captures; pass one with --name"
        },
    )
}

/// What to do about [`lost_captures`].
const LOST_CAPTURE_HINT: &str = "the medium was damaged since: do not write to it (`mgear \
     verify` names the damage); ingest from another copy of the shipment, or ask the capture site";

/// "a capture's directory whose entry in MGEAR was deleted or damaged since" when the medium
/// holds such (`Store::lost_dirs`): a capture a reader cannot see, not a name mistyped.
fn lost_captures(store: &mut dyn image_format::Store) -> Option<String> {
    let root = image_format::layout::ROOT_DIR;
    // A capture directory whose entry lost its directory mark is as lost to every reader.
    let kind = image_format::LostDir::Capture;
    let n = image_format::lost_dirs_of(store, root, kind).len()
        + image_format::unmarked_dirs_of(store, root, kind).len();
    match n {
        0 => None,
        1 => Some(format!(
            "a capture's directory whose entry in {root} was deleted or damaged since"
        )),
        n => Some(format!(
            "{n} captures' directories whose entries in {root} were deleted or damaged since"
        )),
    }
}

/// Said beside "no capture here" when the medium's file system has much in use all the
/// same: its directories are more likely damaged than empty (a zeroed root directory was
/// told as "pass one with --name" and "is this the right medium?"). Empty when the medium
/// does not say how much is in use, or little is.
pub fn hidden_by_damage(store: &mut dyn image_format::Store) -> String {
    if let Some(lost) = lost_captures(store) {
        return format!("; yet it holds {lost}");
    }
    if let Some(renamed) = image_format::damaged_root_dir(store) {
        return format!("; {renamed}");
    }
    // What the files at its root hold is in use for all to see (a filler or a README a user
    // copied there was told as damage).
    let listed: u64 = store
        .list("")
        .map(|entries| entries.iter().map(|e| e.len).sum())
        .unwrap_or(0);
    match store.used_space() {
        Ok(Some(used)) if used.saturating_sub(listed) > 1 << 20 => format!(
            "; yet {} of its file system are in use: its directories are likely damaged \
             (`fsck.fat -n` on a copy of it says; `fsck.fat -a` on another copy may recover \
             them into FSCK*.REC files), or this disk holds other data",
            crate::units::human_bytes(used)
        ),
        _ => String::new(),
    }
}

/// The message and hint of [`explain_wrong_key`].
fn wrong_key_message(
    name: &str,
    slots: crate::keys::KeySlots,
    identity: Option<&std::path::Path>,
    passphrase_file: Option<&std::path::Path>,
    capture: bool,
) -> (String, String) {
    let plural = |n: usize| if n == 1 { "key" } else { "keys" };
    let has = match (slots.recipients, slots.passphrase) {
        (Some(n), true) => format!(
            "a recipient slot (for {n} public {}) and a passphrase slot",
            plural(n)
        ),
        (Some(n), false) => format!(
            "only a recipient slot (for {n} public {}), no passphrase slot",
            plural(n)
        ),
        (None, true) => "only a passphrase slot, no recipient slot".into(),
        (None, false) => "no key slot that could be read".into(),
    };
    let mut msg = match (identity, passphrase_file) {
        (Some(id), _) => {
            // Name the public key of what was given: the user can compare it
            // with the .pub files they hold.
            let public = match crate::keys::read_identities(id).as_deref() {
                Ok([one]) => format!(" (its public key is {})", one.to_public()),
                Ok(all) => format!(
                    " (its {} identities' public keys are {})",
                    all.len(),
                    all.iter()
                        .map(|i| i.to_public().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Err(_) => String::new(),
            };
            format!(
                "{} does not open capture {name}{public}: capture {name} has {has}",
                id.display()
            )
        }
        (None, Some(p)) => {
            // What a typo does not explain: the file's text is compared as it is (its last
            // line ending aside), spaces at the ends included.
            let spaced = crate::keys::read_passphrase(p)
                .ok()
                .filter(|pw| pw.trim() != pw.as_str())
                .map(|_| " (its passphrase begins or ends with a space, which counts)")
                .unwrap_or_default();
            format!(
                "the passphrase in {}{spaced} does not open capture {name}: capture {name} has \
                 {has}",
                p.display()
            )
        }
        (None, None) => format!("this key does not open capture {name}: it has {has}"),
    };
    let mut tries = Vec::new();
    if slots.recipients.is_some() && !capture {
        tries.push(
            "--identity with the identity (.key) whose .pub was given as --recipient at capture \
             (the capture's summary and report name it as `encrypted to`; if no key of yours is \
             that one, the capture site used another target.pub: nothing here can decrypt the \
             capture, so have the disk captured again with your target.pub)"
                .to_string(),
        );
    }
    if slots.passphrase {
        tries.push(
            "--passphrase-file with the file given at capture (its first line, exactly)"
                .to_string(),
        );
    }
    if capture {
        tries.push(
            "running it on the host whose key cache holds the capture's data key (`mgear keys \
             list`; --key-cache DIR names another cache)"
                .to_string(),
        );
    }
    let hint = if tries.is_empty() {
        "the capture's key files are missing or unreadable: `mgear verify --medium ...` says \
         what is wrong with it"
            .to_string()
    } else {
        format!("try {}", tries.join(", or "))
    };
    if !tries.is_empty() {
        msg += &format!("; {hint}");
    }
    (msg, hint)
}

/// Run `mgear verify`; a key that opens no capture is told what would
/// ([`explain_wrong_key`]).
pub fn run(args: Plan) -> crate::Result<i32> {
    crate::signals::install_exit_at_once();
    let medium = args.medium.clone();
    let (identity, passphrase_file) = (args.identity.clone(), args.passphrase_file.clone());
    verify(args)
        .map_err(|e| explain_wrong_key(e, &medium, identity.as_deref(), passphrase_file.as_deref()))
}

fn verify(args: Plan) -> crate::Result<i32> {
    let unlock = unlock_from(args.identity.as_deref(), args.passphrase_file.as_deref())?;
    let mut medium = args.medium.open_read_only()?;
    let store = medium.store();
    let mut total_bytes = 0u64;
    let captures = image_format::list_captures(store)?;
    // Machine sets (`crate::machine`) and the disk streams of one.
    let sets: Vec<String> = image_format::set::list_sets(store)?
        .into_iter()
        .map(|s| s.name)
        .collect();
    let streams_of = |set: &str| -> Vec<String> {
        captures
            .iter()
            .filter(|c| {
                image_format::set::parse_disk_stream_name(&c.name).is_some_and(|(s, _)| s == set)
            })
            .map(|c| c.name.clone())
            .collect()
    };
    if captures.is_empty() {
        // An MGEAR/ whose captures were all removed is another story than a medium that
        // never held one (the wrong path, another disk).
        let emptied = store.list(image_format::layout::ROOT_DIR).is_ok();
        let lost = lost_captures(store).is_some();
        let hidden = hidden_by_damage(store);
        let _ = medium.close();
        return Err(crate::exit::coded_hint(
            FOUND,
            if emptied {
                format!(
                    "{} holds no MotionGear capture (its MGEAR directory holds none: they were \
                     removed, or none was finished){hidden}",
                    args.medium.describe()
                )
            } else {
                // `dir:MEDIUM/MGEAR`, one level too deep: the captures are right here.
                let deep = args.medium.single_medium().and_then(|spec| {
                    let p = spec.strip_prefix("dir:")?;
                    let path = std::path::Path::new(p);
                    (path.file_name()? == image_format::layout::ROOT_DIR)
                        .then(|| path.parent().map(|d| d.display().to_string()))
                        .flatten()
                });
                match deep {
                    Some(parent) => format!(
                        "{} holds no MotionGear capture: it is the MGEAR directory itself; give \
                         the directory that holds it, --medium dir:{}",
                        args.medium.describe(),
                        if parent.is_empty() { "." } else { &parent }
                    ),
                    None if hidden.is_empty() => format!(
                        "{} holds no MotionGear capture (no MGEAR directory): is this the right \
                         medium?",
                        args.medium.describe()
                    ),
                    None => format!(
                        "{} holds no MotionGear capture (no MGEAR directory){hidden}",
                        args.medium.describe()
                    ),
                }
            },
            if lost {
                LOST_CAPTURE_HINT
            } else {
                "nothing here can be ingested: check that this is the medium the capture site \
                 shipped (`mgear inspect` lists what it holds)"
            },
        ));
    }
    for c in &captures {
        for g in &c.generations {
            total_bytes += g.stored_bytes;
        }
    }
    let json = args.json || crate::output::json();
    let mut obs = Observer {
        bar: Progress::new("verify", total_bytes.max(1), json),
        json,
        here: args.medium.as_args(),
        said: Default::default(),
    };
    // The spelling on the medium (names are compared without case): the
    // trust lines and problems then name the capture as stored.
    let name = args
        .name
        .as_deref()
        .map(|n| image_format::stored_name(store, n))
        .transpose()?;
    match name.as_deref() {
        Some(n) if !captures.iter().any(|c| c.name == n) && !sets.iter().any(|s| s == n) => {
            // Named as ingest names it, with what is there (it said only "not found").
            let mut names: Vec<String> = captures.iter().map(|c| c.name.clone()).collect();
            names.extend(sets.iter().cloned());
            names.sort();
            return Err(no_such_capture(n, &args.medium.describe(), &names, store));
        }
        _ => {}
    }
    // A generation that is not there is a usage error, with or without a key (keyless verify
    // once ignored it and said OK): for the named capture or set (a set's generations are its
    // disk streams'), or, with no name, for every capture on the medium.
    if let Some(g) = args.generation {
        let generations_of = |c: &image_format::CaptureInfo| -> (Vec<u32>, Vec<u32>) {
            let all = c.generations.iter().map(|x| x.generation).collect();
            let finished = c
                .generations
                .iter()
                .filter(|x| x.state == image_format::GenerationState::Complete)
                .map(|x| x.generation)
                .collect();
            (all, finished)
        };
        let has = |c: &image_format::CaptureInfo| c.generations.iter().any(|x| x.generation == g);
        match &name {
            Some(n) => {
                let stream = match sets.contains(n) {
                    true => streams_of(n).into_iter().next(),
                    false => Some(n.clone()),
                };
                if let Some(c) = captures.iter().find(|c| Some(&c.name) == stream.as_ref()) {
                    if !has(c) {
                        let (all, finished) = generations_of(c);
                        return Err(crate::trust::no_such_generation(n, g, &all, &finished));
                    }
                }
            }
            None if !captures.iter().any(has) => {
                return Err(crate::exit::coded_hint(
                    crate::exit::USAGE,
                    format!(
                        "no capture on {} has a generation {g}",
                        args.medium.describe()
                    ),
                    "`mgear inspect --medium ...` lists each capture's generations; give \
                     --name with --generation to verify one",
                ));
            }
            None => {}
        }
    }
    let mut report = VerifyReport::default();
    let mut not_opened = Vec::new();
    // Captures a keyed run set out to decrypt (its summary says how many it could).
    let mut asked = 0;
    match (&unlock, &name) {
        (None, None) => report = image_format::verify_keyless(store, &mut obs)?,
        (None, Some(name)) => {
            // A disk of a set is verified with its set (the set manifest binds it).
            let whole = image_format::set::owner(name);
            let whole = if image_format::set::is_set(store, whole).unwrap_or(false) {
                whole
            } else {
                name.as_str()
            };
            report = image_format::verify_capture_keyless(store, whole, &mut obs)?;
        }
        (Some(unlock), name) => {
            // What the keyless verifier says about the medium's structure
            // (sets, COMMITs and manifests of every generation, names): the
            // records of the generation verified are decrypted below.
            let whole = name.as_deref().map(|n| {
                let set = image_format::set::owner(n);
                if image_format::set::is_set(store, set).unwrap_or(false) {
                    set.to_string()
                } else {
                    n.to_string()
                }
            });
            let structure = image_format::verify_structure(store, whole.as_deref())?;
            report.problems.extend(structure.problems);
            let names: Vec<String> = match name {
                Some(n) if sets.contains(n) => streams_of(n),
                Some(n) => vec![n.clone()],
                None => captures.iter().map(|c| c.name.clone()).collect(),
            };
            // A machine set: its manifest's MAC and its binding to the disks.
            for s in sets
                .iter()
                .filter(|s| name.as_ref().is_none_or(|n| n == *s))
            {
                if let Err(e) = image_format::set::open_set(store, s, args.generation, unlock) {
                    report.problems.push(image_format::Problem {
                        at: image_format::Location::capture(s),
                        what: e.to_string(),
                    });
                }
            }
            asked = names.len();
            let here = args.medium.as_args();
            // Clusters no file holds on a medium closed cleanly: entries were lost since.
            let lost = store.lost_clusters().ok().flatten().is_some();
            for n in names {
                // Nothing to decrypt is a finding of the medium (as keyless verify says), not a
                // usage error that stops the other captures: no generation at all (a capture
                // stopped at its start), or only unfinished ones.
                let info = captures.iter().find(|c| c.name == n);
                let gens = info.map(|c| c.generations.as_slice());
                let damaged: Vec<String> = gens
                    .unwrap_or_default()
                    .iter()
                    .filter(|g| {
                        matches!(&g.state, image_format::GenerationState::Damaged(w)
                            if w != image_format::CUT_OFF_AT_START)
                    })
                    .map(|g| g.generation.to_string())
                    .collect();
                let nothing = match gens {
                    // Its directories are damaged: that is the finding, said by the check.
                    _ if info.is_some_and(|c| c.damage.is_some()) => None,
                    // No key slot either: maybe someone's folder (as the keyless check says).
                    Some([]) if info.is_some_and(|c| !c.recipient_slot && !c.passphrase_slot) => {
                        Some(format!(
                            "holds no generation and no key slot: no capture, or what one \
                             stopped at its start left. If it holds your own files, move them \
                             out of MGEAR/ (the format's directory); otherwise `mgear medium rm \
                             --name {n}` removes it"
                        ))
                    }
                    Some([]) => Some(match crate::trust::hidden_generation_dirs(store, &n) {
                        hidden if !hidden.is_empty() => hidden_generation(&hidden),
                        _ => format!(
                            "holds no generation (a capture stopped at its start leaves this): \
                             `mgear medium rm {here} --name {n}` removes it"
                        ),
                    }),
                    Some(g)
                        if args.generation.is_none()
                            && g.iter()
                                .all(|g| g.state != image_format::GenerationState::Complete) =>
                    {
                        Some(if lost {
                            // Its files may be among the clusters nothing holds: resuming or
                            // aborting (what a stopped capture is told) would destroy them.
                            "has no finished generation this medium can read, and the medium's \
                             file system lost entries since (above): it may have been finished. \
                             Do not resume, abort or write it: ingest from another copy of the \
                             shipment"
                                .to_string()
                        } else if damaged.is_empty() {
                            format!(
                                "has no finished generation: resume its capture with the same \
                                 command, or remove it with `mgear capture --abort {here} --name {}`",
                                image_format::set::owner(&n)
                            )
                        } else {
                            // A damaged generation was finished once: never resumed or aborted.
                            format!(
                                "has no generation that can be decrypted and checked: generation \
                                 {} is damaged (above); do not ingest it: ask for another copy of \
                                 the shipment, or capture again after `mgear medium rm {here} --name {} \
                                 --generation {} --force`",
                                damaged.join(", "),
                                image_format::set::owner(&n),
                                damaged[damaged.len() - 1],
                            )
                        })
                    }
                    _ => None,
                };
                if let Some(what) = nothing {
                    report.problems.push(image_format::Problem {
                        at: image_format::Location::capture(&n),
                        what,
                    });
                    continue;
                }
                // No key slot at all (erased): the structure pass said so; no key opens it.
                if info.is_some_and(|c| !c.recipient_slot && !c.passphrase_slot)
                    && report.problems.iter().any(|p| p.at.capture == n)
                {
                    continue;
                }
                let r =
                    match image_format::verify_full(store, &n, args.generation, unlock, &mut obs) {
                        // A medium may carry captures for other targets: the others are still
                        // verified, and this one is named at the end (the run is no pass).
                        Err(image_format::Error::WrongKey { .. }) if name.is_none() => {
                            not_opened.push(n);
                            continue;
                        }
                        // Only the other kind of slot (a passphrase-only capture verified
                        // with an identity): not this key's capture either.
                        Err(image_format::Error::NeedKey { .. })
                            if name.is_none()
                                && info.is_some_and(|c| c.recipient_slot || c.passphrase_slot) =>
                        {
                            not_opened.push(n);
                            continue;
                        }
                        // Damage in the file system under this capture (a FAT chain leaving the
                        // volume): its finding, as keyless verify has it; the others are still
                        // checked (the run stopped here, the structure pass's findings unsaid).
                        Err(e) if e.is_damage() => {
                            report.problems.push(image_format::Problem {
                                at: image_format::Location::capture(&n),
                                what: e.to_string(),
                            });
                            continue;
                        }
                        other => other?,
                    };
                report.captures += r.captures;
                report.generations += r.generations;
                report.segments += r.segments;
                report.records += r.records;
                report.bytes += r.bytes;
                report.problems.extend(r.problems);
                report.elsewhere.extend(r.elsewhere);
            }
            // Found by both passes (a damaged MANIFEST, a corrupted record): said once, with the
            // disk range the decrypting pass adds where it knows it.
            report.problems = said_once(std::mem::take(&mut report.problems));
        }
    }
    if unlock.is_none() {
        // A capture with no generation holds nothing to ingest (stopped at its start, or its
        // data removed): a finding before shipping, as the decrypting verify says too.
        // (A capture whose directories are damaged lists no generation either: the damage is
        // its finding, reported by the check itself.)
        for c in captures.iter().filter(|c| {
            c.generations.is_empty()
                && c.damage.is_none()
                && name
                    .as_ref()
                    .is_none_or(|n| c.name == *n || image_format::set::owner(&c.name) == n.as_str())
        }) {
            // No key slot either: maybe no capture at all but someone's folder, which `medium
            // rm` refuses to delete (it deleted it, files and all).
            let slots = c.recipient_slot || c.passphrase_slot;
            let hidden = crate::trust::hidden_generation_dirs(store, &c.name);
            report.problems.push(image_format::Problem {
                at: image_format::Location::capture(&c.name),
                what: if !hidden.is_empty() {
                    hidden_generation(&hidden)
                } else if slots {
                    format!(
                        "holds no generation (a capture stopped at its start, or its data \
                         removed): nothing of it can be ingested; `mgear medium rm {} --name \
                         {}` removes it",
                        args.medium.as_args(),
                        c.name
                    )
                } else {
                    format!(
                        "holds no generation and no key slot: no capture, or what one stopped \
                         at its start left. If it holds your own files, move them out of \
                         MGEAR/ (the format's directory); otherwise `mgear medium rm {} --name \
                         {}` removes it",
                        args.medium.as_args(),
                        c.name
                    )
                },
            });
        }
    }
    // A generation's name on an entry that is not a directory, beside generations that read:
    // on a `dir:` medium a file G0002 went unsaid ("OK: no problems found") while inspect
    // and ingest named it as a generation hidden by damage.
    for c in captures.iter().filter(|c| {
        !c.generations.is_empty()
            && c.damage.is_none()
            && name
                .as_ref()
                .is_none_or(|n| c.name == *n || image_format::set::owner(&c.name) == n.as_str())
    }) {
        let hidden = crate::trust::hidden_generation_dirs(store, &c.name);
        if !hidden.is_empty() {
            report.problems.push(image_format::Problem {
                at: image_format::Location::capture(&c.name),
                what: format!(
                    "holds {}: a generation hidden by damage, perhaps newer than generation {}, \
                     the newest this medium lists. Do not remove it or repair the medium; \
                     ingest from another copy of the shipment, or ask how the medium was \
                     handled",
                    hidden.join("; "),
                    c.generations.last().map_or(0, |g| g.generation)
                ),
            });
        }
    }
    obs.bar.finish();
    // A span's mirrored files are read from one of its media: a copy damaged or deleted on
    // another went unsaid, and every medium given was called sound.
    if args.medium.medium.len() + args.medium.appliance.len() > 1 {
        let theirs = |c: &str| {
            name.as_deref().is_none_or(|n| {
                c.eq_ignore_ascii_case(n)
                    || image_format::set::owner(c).eq_ignore_ascii_case(image_format::set::owner(n))
            })
        };
        report
            .problems
            .extend(mirror_problems(&args.medium, &theirs)?);
    }
    let t = &args.trust;
    let check_trust = unlock.is_some()
        || !t.trust.is_empty()
        || !t.trust_appliance.is_empty()
        || t.attestations.is_some()
        || t.expect_generation.is_some()
        || t.expect_commit.is_some();
    let mut trust = Vec::new();
    if check_trust {
        // verify asks "who vouches for it?": a seal that is missing is a
        // note (an appliance locked out before its arrival can sign none),
        // but a pinned appliance's seal of this medium that no longer
        // matches it (a newer generation deleted) fails it, as it refuses
        // the ingest.
        let mut policy = t.policy(true)?;
        policy.verifying = true;
        // The receipt's commit names one capture (a set: the set's).
        if policy.expect_commit.is_some() && name.is_none() {
            return Err(crate::exit::coded_hint(
                crate::exit::USAGE,
                "--expect-commit names one capture's generation: pass --name with it",
                "give the capture name from the receipt as --name",
            ));
        }
        let atts = match crate::appliance::find_attestations(
            crate::appliance::gate_port(&args.medium.appliance, &policy),
            t.attestations.as_deref(),
            store,
        ) {
            // A missing --attestations file says nothing about the data: exit 2.
            Err(e) if crate::exit::classified(&e) == Some(crate::exit::USAGE) => return Err(e),
            other => other,
        };
        let names: Vec<String> = match &name {
            Some(n) if sets.contains(n) => {
                std::iter::once(n.clone()).chain(streams_of(n)).collect()
            }
            Some(n) => vec![n.clone()],
            None => sets
                .iter()
                .cloned()
                .chain(captures.iter().map(|c| c.name.clone()))
                .collect(),
        };
        for n in names {
            let mut policy = policy.clone();
            if name.as_ref() != Some(&n) {
                // A set's disk streams are bound by the set manifest, not the receipt.
                policy.expect_commit = None;
            }
            let verdict = match &atts {
                Ok(a) => crate::trust::check_generation(
                    store,
                    &n,
                    args.generation,
                    &policy,
                    a.as_ref().map_err(String::as_str),
                ),
                Err(e) => Err(crate::err!("attestations: {e:#}")),
            };
            trust.push(match verdict {
                Ok(v) if v.seal_mismatch.is_some() => TrustJson {
                    capture: n,
                    generation: Some(v.generation),
                    trusted: false,
                    trusted_by: Vec::new(),
                    message: v.seal_mismatch.unwrap_or_default(),
                },
                Ok(v) => TrustJson {
                    capture: n,
                    generation: Some(v.generation),
                    trusted: !v.trusted_by.is_empty(),
                    message: if v.trusted_by.is_empty() {
                        v.warnings.join("; ")
                    } else {
                        // What ingest would warn about (a newer unfinished generation) too.
                        std::iter::once(format!(
                            "signed by pinned {}; commit {}",
                            v.trusted_by.join(", "),
                            crate::output::hex(&v.commit)
                        ))
                        .chain(v.warnings.iter().map(|w| format!("warning: {w}")))
                        .collect::<Vec<_>>()
                        .join("; ")
                    },
                    trusted_by: v.trusted_by,
                },
                Err(e) => TrustJson {
                    capture: n,
                    generation: args.generation,
                    trusted: false,
                    trusted_by: Vec::new(),
                    message: format!("{e:#}"),
                },
            });
        }
        // A set's disks are bound by its manifest: where the set itself is not
        // trusted (a wrong --expect-commit, an unpinned signer), no disk of it
        // is, whatever its own stream's signature says.
        if name.as_ref().is_some_and(|n| sets.contains(n)) {
            if let Some(set) = trust
                .first()
                .filter(|x| !x.trusted)
                .map(|x| x.capture.clone())
            {
                for disk in trust.iter_mut().skip(1).filter(|x| x.trusted) {
                    disk.trusted = false;
                    disk.trusted_by.clear();
                    disk.message = format!(
                        "not trusted: set {set} binds this disk and is not trusted itself (its line above says why)"
                    );
                }
            }
        }
    }
    // An untrusted capture fails verification unless explicitly overridden.
    let trust_ok = t.allow_untrusted || trust.iter().all(|x| x.trusted);
    medium.close()?;
    // Not one capture opened: the key is wrong for this medium, said as such (exit 2, with
    // what would open them).
    if !not_opened.is_empty() && not_opened.len() == captures.len() {
        return Err(image_format::Error::WrongKey {
            name: not_opened[0].clone(),
        }
        .into());
    }
    // The format library's advice names no medium: this run's.
    let here = args.medium.as_args();
    for p in &mut report.problems {
        p.what = p.what.replace("--medium MEDIUM", &here);
    }
    let out = Report {
        command: "verify",
        keyed: unlock.is_some(),
        ok: report.is_ok() && trust_ok && not_opened.is_empty(),
        captures: report.captures,
        generations: report.generations,
        segments: report.segments,
        records: report.records,
        bytes: report.bytes,
        problems: report
            .problems
            .iter()
            .map(|p| ProblemJson {
                capture: p.at.capture.clone(),
                generation: p.at.generation,
                segment: p.at.segment,
                record: p.at.record,
                file: p.at.file.clone(),
                disk_range: p.at.disk_range.as_ref().map(|r| [r.start, r.end]),
                what: p.what.clone(),
                message: if unlock.is_some() {
                    // This run is that check: its advice pointed back at the command itself.
                    p.to_string().replace(CHECK_THE_CAPTURES, CHECKED_HERE)
                } else {
                    p.to_string()
                },
            })
            .collect(),
        elsewhere: report
            .elsewhere
            .iter()
            .map(|e| ElsewhereJson {
                path: e.path.clone(),
                medium: e.medium.clone(),
                lost: e.lost,
            })
            .collect(),
        not_checked: not_checked(unlock.is_some(), trust.is_empty()),
        trust,
        not_opened,
    };
    if json && !out.ok {
        // The envelope's `error` beside the findings (it was `"ok":false` alone).
        let (code, message) = if !out.problems.is_empty() {
            (
                FOUND,
                format!(
                    "verify found {} problem(s) (see `problems`): do not use what they name",
                    out.problems.len()
                ),
            )
        } else if !trust_ok {
            // Why, as the NOT TRUSTED line says it ("not vouched for by a pinned key" was said
            // of a pinned, signed capture whose receipt expected another generation); the
            // class's hint ("the data did not check out") was said of records that all did.
            let why = out
                .trust
                .iter()
                .find(|t| !t.trusted)
                .map(|t| t.message.clone())
                .unwrap_or_default();
            // A receipt that names another generation is not a missing pin: the hint about
            // pinning a key was given to a target whose key was pinned and valid.
            let hint = match why.contains("--expect-commit") || why.contains("--expect-generation")
            {
                true => {
                    "no record was found damaged, but the generation checked is not the one \
                     the capture receipt names (see `trust`): check the one it names \
                     (--generation, as the message says), or ask the capture site for the \
                     receipt of this one"
                }
                false => {
                    "no record was found damaged, but nothing this target pinned vouches for \
                     the capture (see `trust`): do not ingest it until it is trusted; pin a \
                     site's key (--trust SITE.pub) only if you know it is that capture site's, \
                     or get the site's receipt"
                }
            };
            return crate::output::emit_verdict_hint(
                FOUND,
                &format!("not trusted: {why} (see `trust`)"),
                hint,
                &out,
            )
            .map(|()| FOUND);
        } else {
            (
                USAGE,
                "captures could not be opened with the key given (see `not_opened`)".to_string(),
            )
        };
        crate::output::emit_verdict(code, &message, &out)?;
    } else if json {
        progress::print_json(&out)?;
    } else {
        // "0 captures" beside a capture the run could not decrypt (no key slot, nothing
        // finished) read as if the medium were empty.
        let captures = if out.keyed && (out.captures as usize) < asked {
            format!("{} of {asked} captures decrypted", out.captures)
        } else {
            crate::units::count(out.captures as u64, "capture")
        };
        println!(
            "{} verification of {}: {captures}, {}, {}, {}, {} checked",
            if out.keyed {
                "full (decrypting)"
            } else {
                "keyless"
            },
            args.medium.describe(),
            crate::units::count(out.generations as u64, "generation"),
            crate::units::count(out.segments as u64, "segment"),
            crate::units::count(out.records as u64, "record"),
            crate::units::human_bytes(out.bytes)
        );
        let mut far: std::collections::BTreeMap<(&str, bool), usize> = Default::default();
        for e in &out.elsewhere {
            *far.entry((e.medium.as_str(), e.lost)).or_default() += 1;
        }
        for ((m, lost), n) in far {
            if lost {
                // "verify it there" sent the operator to a medium that is gone.
                println!(
                    "{n} segment(s) were on {m}: gone for good, so the generations they belong \
                     to cannot be ingested, nor the deltas made on those before the loss that \
                     reuse their records (the generation `--replace-medium` wrote, and those \
                     after it, hold their data again)"
                );
            } else {
                println!("{n} segment(s) are on another medium of this span, {m}: verify it there");
            }
        }
        for x in &out.trust {
            // Warnings on lines of their own: "ingest refuses it until the seal checks" sat at
            // the end of a long TRUSTED line, and the ingest's refusal came as a surprise.
            let mut parts = x.message.split("; warning: ");
            println!(
                "{} {}{}: {}",
                if x.trusted { "TRUSTED" } else { "NOT TRUSTED" },
                x.capture,
                x.generation
                    .map(|g| format!(" generation {g}"))
                    .unwrap_or_default(),
                parts.next().unwrap_or_default()
            );
            for w in parts {
                println!("  WARNING: {w}");
            }
        }
        if !out.not_opened.is_empty() {
            println!(
                "NOT OPENED by this key: {} (another target's capture? its files' structure was \
                 checked, its records were not: verify it with its own key, or give --name to \
                 verify one capture)",
                out.not_opened.join(", ")
            );
        }
        if !out.not_opened.is_empty() && report.is_ok() && trust_ok {
            println!("NOT VERIFIED in full: the captures named above were not opened");
        } else if out.ok && out.trust.iter().all(|x| x.trusted) {
            println!("OK: no problems found");
            if !out.not_checked.is_empty() {
                println!("not checked here: {}", out.not_checked.join("; "));
            }
        } else if out.ok {
            println!("no problems found, but NOT TRUSTED (--allow-untrusted)");
        } else if report.is_ok() {
            // Signed by a pinned key or not, a capture can fail its trust for other reasons
            // (another commit than the receipt's, an older generation): the NOT TRUSTED lines
            // say which; "not signed by a pinned key" was said of a pinned, signed capture.
            println!(
                "FAILED: not trusted (see the NOT TRUSTED line{} above)",
                if out.trust.iter().filter(|x| !x.trusted).count() == 1 {
                    ""
                } else {
                    "s"
                }
            );
        } else {
            println!("FAILED: {} problem(s):", out.problems.len());
            for p in &out.problems {
                println!("  {}", crate::output::printable_lines(&p.message));
            }
            if file_system_only(&out) && trust_ok {
                // Verify failed where ingest, reading the same records, installed the disk
                // without a word: said what the failure is, and is not.
                println!(
                    "every record of the captures decrypted and matched what was captured: the \
                     problems above are in the medium's file system, not in the captures' data, \
                     and `mgear ingest` reads the captures as this run did. Keep the medium as \
                     it is (never repair the original; copy it with `dd` first if anything must \
                     write it)"
                );
            }
        }
    }
    Ok(match (out.ok, out.problems.is_empty() && trust_ok) {
        (true, _) => OK,
        // Nothing found wrong, but not everything opened: a key matter (exit 2), no finding.
        (false, true) if !out.not_opened.is_empty() => USAGE,
        (false, _) => FOUND,
    })
}

/// The advice a file-system finding ends with, and what a keyed verify, which is that check,
/// says instead.
const CHECK_THE_CAPTURES: &str = "check the captures with `mgear verify --identity`";
const CHECKED_HERE: &str =
    "this run decrypted the captures' records too (a record or segment found bad is named apart)";

/// A keyed run that decrypted records and found only file-system findings (on the medium's
/// root, no capture named).
fn file_system_only(out: &Report) -> bool {
    out.keyed
        && out.records > 0
        && !out.problems.is_empty()
        && out.problems.iter().all(|p| {
            p.capture.is_empty() && p.file.as_deref() == Some(image_format::layout::ROOT_DIR)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A corrupted record is found by the structure pass and by the decrypting one (which
    /// adds the disk range): one problem, the one with the disk range, at the first's place.
    #[test]
    fn a_problem_both_passes_find_is_said_once_with_its_disk_range() {
        use image_format::{Location, Problem};
        let rec = Location {
            segment: Some(0),
            record: Some(4),
            ..Location::capture("a").generation(1)
        };
        let with_range = Location {
            disk_range: Some(0..1024),
            ..rec.clone()
        };
        let p = |at: &Location, what: &str| Problem {
            at: at.clone(),
            what: what.into(),
        };
        let other = Location::capture("b");
        let out = said_once(vec![
            p(&rec, "corrupted record"),
            p(&other, "unfinished generation"),
            p(&with_range, "corrupted record"),
            p(&rec, "another finding"),
        ]);
        assert_eq!(
            out,
            vec![
                p(&with_range, "corrupted record"),
                p(&other, "unfinished generation"),
                p(&rec, "another finding"),
            ]
        );
    }

    /// A damaged INDEX: the structure pass names its header (with the byte range), the
    /// decrypting pass its hash, in other words: one finding, the first.
    #[test]
    fn a_damaged_file_both_passes_find_is_one_finding() {
        use image_format::{Location, Problem};
        let index = Location::capture("a")
            .generation(1)
            .file("MGEAR/a/G0001/INDEX");
        let header = Problem {
            at: index.clone().bytes(0..108),
            what: "index header CRC mismatch".into(),
        };
        let hash = Problem {
            at: index.clone(),
            what: "INDEX does not match the manifest's hash (replaced or damaged)".into(),
        };
        let manifest = Problem {
            at: Location::capture("a")
                .generation(1)
                .file("MGEAR/a/G0001/MANIFEST"),
            what: "damaged".into(),
        };
        let out = said_once(vec![header.clone(), manifest.clone(), hash]);
        assert_eq!(out, vec![header, manifest]);
    }

    #[test]
    fn a_key_that_does_not_open_a_capture_is_told_what_would() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other.key");
        crate::keys::keygen_quiet(&other).unwrap();
        let public = crate::keys::read_identity(&other)
            .unwrap()
            .to_public()
            .to_string();
        let both = crate::keys::KeySlots {
            recipients: Some(1),
            passphrase: true,
        };
        let m = wrong_key_message("web01", both, Some(&other), None, false).0;
        assert!(m.contains("other.key does not open capture web01"), "{m}");
        assert!(m.contains(&public), "{m}");
        assert!(
            m.contains("a recipient slot (for 1 public key) and a passphrase slot"),
            "{m}"
        );
        assert!(m.contains("given as --recipient at capture"), "{m}");
        assert!(m.contains("--passphrase-file"), "{m}");
        let only_rcpt = crate::keys::KeySlots {
            recipients: Some(2),
            passphrase: false,
        };
        let m = wrong_key_message("web01", only_rcpt, Some(&other), None, false).0;
        assert!(
            m.contains("only a recipient slot (for 2 public keys), no passphrase slot"),
            "{m}"
        );
        assert!(!m.contains("--passphrase-file"), "{m}");
        let only_pass = crate::keys::KeySlots {
            recipients: None,
            passphrase: true,
        };
        let m = wrong_key_message(
            "web01",
            only_pass,
            None,
            Some(std::path::Path::new("pw")),
            false,
        )
        .0;
        assert!(
            m.contains("the passphrase in pw does not open capture web01"),
            "{m}"
        );
        assert!(m.contains("only a passphrase slot"), "{m}");
        assert!(!m.contains("space"), "{m}");
        // A passphrase with a space at its end: said, as a likely cause.
        let dir = tempfile::tempdir().unwrap();
        let spaced = dir.path().join("pw");
        std::fs::write(&spaced, "correct horse battery staple \n").unwrap();
        let m = wrong_key_message("web01", only_pass, None, Some(&spaced), false).0;
        assert!(
            m.contains("its passphrase begins or ends with a space, which counts"),
            "{m}"
        );
        // A capture takes no --identity: its advice names the passphrase and the key cache.
        let m = wrong_key_message("web01", both, None, Some(std::path::Path::new("pw")), true).0;
        assert!(!m.contains("--identity"), "{m}");
        assert!(
            m.contains("--passphrase-file with the file given at capture")
                && m.contains("key cache holds the capture's data key"),
            "{m}"
        );
        // Other errors pass through unchanged.
        let e = explain_wrong_key(
            crate::exit::usage("x"),
            &crate::medium::Where::one("dir:/nonexistent"),
            None,
            None,
        );
        assert_eq!(e.to_string(), "x");
    }
}
