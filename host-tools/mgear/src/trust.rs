//! Pinned trust at the target: may this generation be installed?
//!
//! Anyone holding `target.pub` can write a capture that decrypts fine, and
//! anyone holding the medium can copy self-signed attestations onto it or
//! delete a newer generation. So the target trusts only keys it pinned
//! itself, never a key read from the medium under test:
//!
//! - `--trust site.pub` (repeatable): a capture site's Ed25519 key; its
//!   signature in the generation's `COMMIT` (role `site`) is accepted.
//! - `--trust-appliance FINGERPRINT` (repeatable, the full 64-hex form
//!   `mgear appliance info` prints): the appliance's witness signature in
//!   `COMMIT` (role `appliance`), or its seal + arrival attestations, when
//!   they cover this generation's `MANIFEST` (and `COMMIT`) and every file
//!   of the capture they list still hashes the same (so a deleted newer
//!   generation is caught: its files were sealed and are missing now).
//! - `--expect-generation N` (from the capture receipt): refuse when the
//!   generation ingested is older than N.
//! - `--allow-untrusted`: install anyway, with a loud warning.
//!
//! Every file read here is size-capped before it is read (MANIFEST 16 MiB,
//! COMMIT a few KiB, attestations [`MAX_ATTESTATION_LEN`]), so a huge sparse
//! file is refused at once. [`check_generation`] is the one entry point; `mgear
//! ingest` and `mgear verify` call it, and `mgear serve` can (build a
//! [`Policy`] from [`Pins`]).

use std::path::PathBuf;

/// What the reason a failed arrival check gives (the appliance gate) says, so the refusal
/// built on it knows the medium changed (and does not advise fetching the attestations).
/// How the gate says that neither an appliance nor attestation files were given, and the
/// medium holds no copies ([`crate::appliance::gate`]).
pub(crate) const NO_ATTESTATIONS_GIVEN: &str = "no seal/arrival attestations were given";
pub(crate) const ARRIVAL_FAILED: &str = "checked the medium on arrival and it FAILED";
/// Likewise for an appliance erased between its seal and an arrival check.
pub(crate) const ERASED_BEFORE_ARRIVAL: &str = "was erased before its arrival check";
/// Likewise for an export directory that holds a seal and no arrival.
pub(crate) const SEAL_WITHOUT_ARRIVAL: &str = "hold a seal but no arrival";

use crate::{bail, err};
use image_format::commit::{self, Commit, CommitFile, SignerRole};
use image_format::layout;
use image_format::Store;
use mgear_appliance_api::attest::{self, Attestation};
use sha2::{Digest, Sha256};

use crate::exit::FOUND;
use crate::sitekey;

/// Largest attestation file read (a 2 TB medium's region list is 4 MiB).
pub const MAX_ATTESTATION_LEN: u64 = 32 * 1024 * 1024;

/// What `ingest` and `verify` are told to trust (`--trust`, `--trust-appliance`,
/// `--allow-untrusted`, `--attestations`, `--expect-generation`), before the
/// keys are read ([`Pins::policy`]).
#[derive(Debug, Clone, Default)]
pub struct Pins {
    /// Trust generations signed by this capture site (its .pub from `mgear keygen --signing`); repeatable.
    pub trust: Vec<PathBuf>,
    /// Trust this appliance (full fingerprint from `mgear appliance info`): its commit witness or seal + arrival; repeatable.
    pub trust_appliance: Vec<String>,
    /// Accept a capture without a signature by a pinned key (loud warning): ingest installs it, verify passes it. Nothing then proves who wrote it.
    pub allow_untrusted: bool,
    /// Seal and arrival attestations exported by `mgear appliance attestations --out DIR`.
    pub attestations: Option<PathBuf>,
    /// Refuse a generation older than N (the generation on the capture receipt).
    pub expect_generation: Option<u32>,
    /// Refuse any generation whose commit digest does not start with this (hex).
    pub expect_commit: Option<String>,
}

/// What the target pinned.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Capture-site public keys.
    pub sites: Vec<[u8; 32]>,
    /// Appliance identity fingerprints (SHA-256 of the public key).
    pub appliances: Vec<[u8; 32]>,
    pub allow_untrusted: bool,
    pub allow_unsealed: bool,
    pub expect_generation: Option<u32>,
    /// The commit digest (lowercase hex, 16 to 64 digits: a prefix) from the
    /// capture receipt: the only generation that may be accepted. Signatures
    /// prove who captured; only this proves it is the capture shipped, not an
    /// older one of the same name (or another machine set) swapped onto the medium.
    pub expect_commit: Option<String>,
    /// `verify`, not an ingest: a capture that lacks the attestations ingest requires gets a
    /// note saying so, not the `--allow-unsealed` override's warning (verify has no such flag).
    pub verifying: bool,
    /// The key slot the caller opens the capture with (an ingest's `--identity` or
    /// `--passphrase-file`): the other one damaged or removed since the signature does not
    /// refuse it (see `commit::as_signed_but_unused_slot`).
    pub opens_with: Option<commit::SlotFile>,
}

impl Pins {
    /// Read the pinned keys (exit 2 on an unreadable key or a short fingerprint).
    pub fn policy(&self, allow_unsealed: bool) -> crate::Result<Policy> {
        let sites = self
            .trust
            .iter()
            .map(|p| sitekey::read_public_key(p).map(|k| k.to_bytes()))
            .collect::<crate::Result<Vec<_>>>()?;
        let appliances = self
            .trust_appliance
            .iter()
            .map(|f| sitekey::parse_fingerprint(f))
            .collect::<crate::Result<Vec<_>>>()?;
        Ok(Policy {
            sites,
            appliances,
            allow_untrusted: self.allow_untrusted,
            allow_unsealed,
            expect_generation: self.expect_generation,
            expect_commit: self
                .expect_commit
                .as_deref()
                .map(parse_commit)
                .transpose()?,
            verifying: false,
            opens_with: None,
        })
    }
}

/// `--expect-commit HEX`: 16 to 64 hex digits (the receipt's `commit`, or its start).
fn parse_commit(text: &str) -> crate::Result<String> {
    let t = text.trim().to_ascii_lowercase();
    if (16..=64).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(t);
    }
    Err(crate::exit::coded_hint(
        crate::exit::USAGE,
        format!(
            "--expect-commit {text:?} is not a commit digest: give the 64 hex digits of the `commit` line of the capture receipt (at least its first 16)"
        ),
        "copy the commit from the receipt the capture site sent (mgear capture prints it, and its --report keeps it as commit_digest)",
    ))
}

/// Seal and arrival attestations, and where they came from (for messages).
pub struct Attestations {
    pub seal: Attestation,
    pub arrival: Attestation,
    pub from: String,
    /// Given as this shipment's: read from its appliance, or an `--attestations` export the
    /// operator named; not copies found on the medium, which anyone holding it can plant.
    pub given: bool,
}

/// Say on stderr which pinned keys vouch for `what` (`generation 3`, `set db01 generation
/// 3`) and its commit, and how the operator checks it against the receipt (`pinned`: the
/// commit was given with --expect-commit, and matched).
pub fn say_trusted(what: &str, v: &Verdict, pinned: bool) {
    if v.trusted_by.is_empty() {
        return;
    }
    let of_set = match v.receipt_commit != v.commit {
        true => format!(
            ", of the set whose commit is {}",
            crate::output::hex(&v.receipt_commit)
        ),
        false => String::new(),
    };
    eprintln!(
        "mgear: {what} is signed by pinned {} (commit {}{of_set}{})",
        v.trusted_by.join(", "),
        crate::output::hex(&v.commit),
        if pinned {
            ": --expect-commit names it"
        } else {
            // A courier who deletes the newer generations leaves an older one that is signed
            // as well: only the receipt tells them apart.
            ": compare it with the capture receipt (with newer generations deleted from the \
             medium, an older signed one reads exactly like this), or pin it with --expect-commit"
        }
    );
}

/// An accepted generation.
#[derive(Debug)]
pub struct Verdict {
    pub generation: u32,
    /// The root of the manifest (a set: set manifest) the verdict is about:
    /// the reader opened afterwards must find the same one.
    pub manifest_root: [u8; 32],
    /// The generation's commit digest (what the capture receipt prints as `commit`).
    pub commit: [u8; 32],
    /// The commit the capture receipt prints for it: its own, or, for a disk of a machine
    /// set, the set's (what `--expect-commit` is compared with beside its own).
    pub receipt_commit: [u8; 32],
    /// Set when a pinned appliance's seal of this medium does not match it
    /// and `--allow-unsealed` let the verdict through: `verify` fails on it
    /// (it takes a seal that is merely missing as a note).
    pub seal_mismatch: Option<String>,
    /// Who vouches for it, e.g. `site 3fa2…` (empty when untrusted and overridden).
    pub trusted_by: Vec<String>,
    /// Loud warnings the caller must print (overrides taken).
    pub warnings: Vec<String>,
}

impl Policy {
    fn pinned_site(&self, key: &[u8; 32]) -> bool {
        self.sites.contains(key)
    }
    fn pinned_appliance(&self, key: &[u8; 32]) -> bool {
        self.appliances.iter().any(|fp| sitekey::matches(key, fp))
    }
    fn describe(&self) -> String {
        let mut v: Vec<String> = self
            .sites
            .iter()
            .map(|k| format!("site {}", sitekey::fingerprint(k)))
            .collect();
        v.extend(self.appliances.iter().map(|fp| {
            format!(
                "appliance {}",
                fp.iter().map(|b| format!("{b:02x}")).collect::<String>()
            )
        }));
        if v.is_empty() {
            "nothing (give --trust SITE.pub and/or --trust-appliance FINGERPRINT)".into()
        } else {
            v.join(", ")
        }
    }
}

fn refuse(msg: String) -> crate::Error {
    crate::exit::coded_hint(
        FOUND,
        msg,
        "nothing was installed: the medium does not prove what this target pinned (--trust, \
         --trust-appliance, --expect-generation, --expect-commit); check those against the capture receipt, or \
         ask the capture site for the shipment again",
    )
}

/// What the medium could not give: its own class kept (a medium that
/// cannot be read is an I/O error, 3; a damaged file a finding, 1), as
/// `verify` reports the same error.
fn unreadable(e: image_format::Error, name: &str, g: u32) -> crate::Error {
    // A damaged file names its capture and generation itself.
    if matches!(&e, image_format::Error::Corrupt { at, .. } if at.capture == name) {
        return crate::Error::from(e);
    }
    // 0: read before any generation was chosen (it said "generation 0", which none is).
    match g {
        0 => crate::Error::from(e).context(format!("capture {name}")),
        g => crate::Error::from(e).context(format!("capture {name} generation {g}")),
    }
}

/// The file whose presence finishes a generation: its MANIFEST, or for a
/// machine set (`image_format::set`) its set manifest.
fn finishing_file(medium: &mut dyn Store, name: &str, g: u32) -> crate::Result<Option<String>> {
    for f in [layout::MANIFEST_FILE, image_format::set::SET_FILE] {
        let p = layout::generation_file(name, g, f);
        if medium
            .len(&p)
            .map_err(|e| crate::err!("{p}: {e}"))?
            .is_some()
        {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// The disk of machine set `set` whose own commit of generation `g` begins with `want` (hex).
fn disk_commit_named(medium: &mut dyn Store, set: &str, g: u32, want: &str) -> Option<usize> {
    (0..image_format::set::MAX_SET_DISKS).find_map(|k| {
        let stream = image_format::set::disk_stream_name(set, k);
        let c = commit::expected_commit(medium, &stream, g).ok()??;
        crate::output::hex(&c.digest())
            .starts_with(want)
            .then_some(k)
    })
}

/// Whether a disk of machine set `set` holds generation `want` (begun: the set's own
/// generation exists only once every disk is finished and bound).
fn set_disks_began(medium: &mut dyn Store, set: &str, want: u32) -> bool {
    image_format::list_captures(medium).is_ok_and(|caps| {
        caps.iter().any(|c| {
            image_format::set::parse_disk_stream_name(&c.name)
                .is_some_and(|(s, _)| s.eq_ignore_ascii_case(set))
                && c.generations.iter().any(|g| g.generation == want)
        })
    })
}

/// Generations of `name` present on the medium, and those with a MANIFEST
/// (a set: a set manifest).
fn generations(medium: &mut dyn Store, name: &str) -> crate::Result<(Vec<u32>, Vec<u32>)> {
    let dir = layout::capture_dir(name);
    let entries = medium
        .list(&dir)
        .map_err(|e| crate::err!("capture {name}: listing {dir}: {e}"))?;
    // A generation's name on a file (its entry's directory mark damaged) is no generation to
    // read ("G0002: Not a directory" stopped the ingest): `hidden_generations` names it.
    let mut all: Vec<u32> = entries
        .iter()
        .filter(|e| e.kind == image_format::store::EntryKind::Dir)
        .filter_map(|e| layout::parse_generation_dir(&e.name))
        .collect();
    all.sort_unstable();
    let mut finished = Vec::new();
    for &g in &all {
        if finishing_file(medium, name, g)?.is_some() {
            finished.push(g);
        }
    }
    Ok((all, finished))
}

/// `--generation g` names a generation `name` does not have (a usage
/// error, not an unfinished one): say which it has.
pub fn no_such_generation(name: &str, g: u32, all: &[u32], finished: &[u32]) -> crate::Error {
    let have = if all.is_empty() {
        "none".to_string()
    } else {
        all.iter()
            .map(|n| {
                if finished.contains(n) {
                    n.to_string()
                } else {
                    format!("{n} (unfinished)")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    crate::exit::coded_hint(
        crate::exit::USAGE,
        format!("capture {name} has no generation {g} on this medium; its generations: {have}"),
        "give --generation one of those (or leave it out for the newest finished one); \
         `mgear inspect --medium ... --name NAME` lists them",
    )
}

/// Check generation `generation` (default: newest finished) of capture `name`
/// against `policy`. `Ok` means it may be installed (print the warnings);
/// a refusal is exit 1 with what was expected and what was found.
pub fn check_generation(
    medium: &mut dyn Store,
    name: &str,
    generation: Option<u32>,
    policy: &Policy,
    attestations: Result<&Attestations, &str>,
) -> crate::Result<Verdict> {
    // The spelling on the medium: its COMMIT and seal bind that one.
    let name = &image_format::stored_name(medium, name)?;
    // An appliance pinned by its public key (what `appliance seal --json` shows as the
    // attestation's identity) rather than its fingerprint: said as the operator's mistake
    // (exit 2), not as a seal that "is not pinned" (exit 1, "ask for the shipment again").
    if let Ok(a) = attestations {
        let pk = a.seal.body.identity;
        if policy.appliances.contains(&pk) && !policy.pinned_appliance(&pk) {
            let fp = sitekey::fingerprint(&pk);
            return Err(crate::exit::usage(format!(
                "--trust-appliance {} is appliance {fp}'s public key, not its fingerprint: pin \
                 the fingerprint, --trust-appliance {fp} (`mgear appliance info` prints it as \
                 `identity`)",
                crate::output::hex(&pk)
            )));
        }
    }
    let (mut all, mut finished) = generations(medium, name)?;
    let mut warnings = Vec::new();
    if let Some((set, _)) = image_format::set::parse_disk_stream_name(name) {
        let unbound = unbound_by_set(medium, name, set, &finished, generation, &mut warnings)?;
        finished.retain(|g| !unbound.contains(g));
        all.retain(|g| !unbound.contains(g));
    }
    let newest = finished.last().copied();
    if let Some(g) = generation.filter(|g| !all.contains(g)) {
        return Err(no_such_generation(name, g, &all, &finished));
    }
    let g = match (generation, newest) {
        (Some(g), _) => g,
        (None, Some(g)) => g,
        (None, None) => return Err(no_finished_generation(medium, name)),
    };
    crate::report::note_generation(g);
    if generation.is_none() {
        // The receipt's own generation, when it is the newest intact one: said beside a newer
        // one that lost its MANIFEST (the refusal asked for that one again, nothing more).
        let receipt = policy
            .expect_commit
            .as_deref()
            .zip(newest)
            .filter(|(want, n)| receipt_commit_is(medium, name, *n, want))
            .map(|(_, n)| n);
        later_than_newest(medium, name, &all, newest, receipt, &mut warnings)?;
    }
    if let Some(want) = policy.expect_generation {
        if g < want && generation.is_some() && newest.is_some_and(|n| n >= want) {
            // The expected generation is here: the operator asked for an older one. Two
            // options that contradict each other are a usage error (it said "found").
            return Err(crate::exit::coded(
                crate::exit::USAGE,
                format!(
                    "capture {name}: --generation {g} is older than the generation {want} the \
                 capture receipt expects (--expect-generation), which is on this medium: leave \
                 out --generation (or give --generation {want}) to install it, or leave out \
                 --expect-generation to install the older one on purpose"
                ),
            ));
        }
        // A set's generation is begun by its disks' (it has no directory of its own until it
        // is bound): "the newest generation on the medium is 1" of a set whose disks hold an
        // unfinished generation 2.
        if g < want
            && ((all.contains(&want) && !finished.contains(&want))
                || set_disks_began(medium, name, want))
        {
            // It is here, unfinished: "a newer generation was removed" sent the operator
            // looking for a rollback.
            return Err(refuse(format!(
                "capture {name}: generation {want} was expected (--expect-generation, from the \
                 capture receipt) and is on this medium, but it is not finished (no MANIFEST: \
                 its capture was cut, or its files changed since it was shipped); {} {g}. Do \
                 not install an older one in its place: the capture site resumes it (the same \
                 capture command) and ships the medium again; `mgear verify` says what \
                 generation {want} holds",
                if generation.is_some() {
                    "--generation asks for"
                } else {
                    "the newest finished one is"
                },
            )));
        }
        if g < want {
            return Err(refuse(format!(
                "capture {name}: generation {want} was expected (--expect-generation, from the \
                 capture receipt) but {} {g}; the newest generation on the medium is {}: a newer \
                 generation was removed or this is an older medium",
                if generation.is_some() {
                    "--generation asks for"
                } else {
                    "the newest finished one is"
                },
                newest.map_or("none".into(), |n| n.to_string())
            )));
        }
    }
    // The finished generation of this capture whose receipt commit begins with `want`
    // (another than `g`): the one a receipt names when the generation taken is not it.
    let receipt_names = |medium: &mut dyn Store, want: &str| {
        finished
            .iter()
            .copied()
            .filter(|h| *h != g)
            .find(|h| receipt_commit_is(medium, name, *h, want))
    };
    // Manifest and key slots as the medium holds them now (size-capped reads).
    let expected = match commit::expected_commit(medium, name, g) {
        Err(e) => {
            // The newest generation does not read (damaged, or another's files copied in),
            // and the receipt names one that does: said with the --generation that installs
            // it (the refusal said only "do not use it").
            let named = match (&policy.expect_commit, generation) {
                (Some(want), None) => receipt_names(medium, want.as_str()),
                _ => None,
            };
            let e = unreadable(e, name, g);
            return Err(match named {
                Some(h) => refuse(format!(
                    "{e:#}. The capture receipt's commit (--expect-commit) is generation {h} of \
                     {name} on this medium, which reads: add --generation {h} to install it \
                     (and keep this medium's generation {g} out of use: `mgear verify` says \
                     what is wrong with it)"
                )),
                None => e,
            });
        }
        Ok(x) => x,
    }
    .ok_or_else(|| {
        crate::exit::coded_hint(
            FOUND,
            format!("capture {name} generation {g} is not finished (no MANIFEST)"),
            "nothing was installed: `mgear inspect` lists the finished generations (give one \
                 with --generation), and `mgear verify` says what is wrong with this one",
        )
    })?;
    // The generation's COMMIT, read once for the slot check here, the receipt's check and the
    // signatures (its read error is said where the signatures are checked, as before).
    let commit_read = commit::read_commit(medium, name, g);
    let signed_commit = commit_read.as_ref().ok().and_then(Option::as_ref);
    // Opened with one slot while the other differs from what was signed: what is opened is
    // as signed; the other slot is said, not refused.
    let expected = match (policy.opens_with, signed_commit) {
        (Some(used), Some(f)) => {
            match commit::as_signed_but_unused_slot(&f.commit, &expected, used) {
                Some(mended) => {
                    warnings.push(format!(
                        "capture {name}: {}, on the medium is not the one the capture site \
                         signed (damaged, or removed since); this ingest opens the capture with \
                         {}, which is as signed, so the data is checked as usual. `mgear \
                         verify` names the damaged slot; keep another copy of the shipment for \
                         whoever needs that slot",
                        used.other().describe(),
                        used.describe()
                    ));
                    mended
                }
                None => expected,
            }
        }
        _ => expected,
    };
    crate::report::note_commit(&expected);
    // A generation of another capture put in this one's directory (its own COMMIT signed by
    // whoever made it): named as such, before the receipt's or the slots' checks called it
    // "generation 3's receipt" to ask for, or key slots replaced.
    if let Some((h, other)) = image_format::other_capture_id(medium, name, g, &expected.capture_id)
        .map_err(|e| unreadable(e, name, g))?
    {
        return Err(refuse(format!(
            "capture {name} generation {g} belongs to another capture: its capture id is {}, \
             generation {h}'s is {}, and every generation of a capture shares one; one of the \
             two was put here from another capture or medium: do not install either until \
             `mgear verify` (with the key: it names the capture id of the key slot) says which \
             is this capture's",
            crate::output::hex(&expected.capture_id),
            crate::output::hex(&other)
        )));
    }
    // A disk of a machine set, asked for by its stream name: it must be the
    // disk its set manifest lists at its place (another set capture's disk,
    // signed too, swapped in is refused), and the receipt's commit is the set's.
    let mut receipt_commit = expected.digest();
    if let Some((set, k)) = image_format::set::parse_disk_stream_name(name) {
        if let Some(f) =
            image_format::set::read_set(medium, set, g).map_err(|e| unreadable(e, name, g))?
        {
            let listed = f.set.disks.get(k).map(|d| d.manifest_root);
            if listed != Some(expected.manifest_root) {
                return Err(refuse(format!(
                    "capture {name} generation {g} is not the disk set {set} lists as disk {k} (its manifest root differs from the one the set manifest binds): the disk on the medium was replaced; do not install it"
                )));
            }
            // The SET just read, not read again through `expected_commit`.
            receipt_commit = Commit::of_set(&f, g).digest();
        }
    }
    if let Some(want) = &policy.expect_commit {
        let have = crate::output::hex(&receipt_commit);
        // A disk of a set is named by the set's commit, or by its own (which the capture's
        // `captured[].receipt` prints per disk: it was refused as "not the capture that was
        // shipped").
        let own = crate::output::hex(&expected.digest()).starts_with(want.as_str());
        if !have.starts_with(want.as_str()) && !own {
            // The generation's own COMMIT names what the receipt says: the shipped
            // generation is here, but its key slots or manifest changed since it was
            // signed (a damaged KEYS was called "another capture in its place").
            let signed = signed_commit
                .filter(|f| crate::output::hex(&f.commit.digest()).starts_with(want.as_str()));
            if let Some(why) = signed.and_then(|f| commit::check_commit(f, &expected)) {
                return Err(refuse(format!(
                    "capture {name} generation {g} is the one the capture receipt names \
                     (--expect-commit {want}), but {why}: do not install it; `mgear verify` \
                     says what is wrong, and the capture site can send the medium again"
                )));
            }
            // The receipt names another finished generation of this capture on this medium
            // (an older one, a newer one since): said as such, with the --generation that
            // installs it (the refusal spoke of another capture in its place).
            if let Some(h) = receipt_names(medium, want.as_str()) {
                return Err(refuse(format!(
                    "the capture receipt's commit (--expect-commit {want}) is generation {h} of \
                     {name} on this medium, and generation {g} is the one taken here (the \
                     newest, or --generation's): add --generation {h} to check or install the one \
                     the receipt names, or ask the capture site for generation {g}'s receipt"
                )));
            }
            // Another disk's commit of the same set (the per-disk commits the capture prints):
            // it said another capture was in the shipped one's place.
            let own_hex = crate::output::hex(&expected.digest());
            let set =
                image_format::set::parse_disk_stream_name(name).map_or(name.as_str(), |(s, _)| s);
            if let Some(k) = disk_commit_named(medium, set, g, want) {
                let disk = image_format::set::disk_stream_name(set, k);
                let mine = if own_hex == have {
                    have.clone()
                } else {
                    format!("{own_hex}, or its set's {have}")
                };
                return Err(refuse(format!(
                    "--expect-commit {want} is the commit of {disk} (disk {k} of set {set}) \
                     generation {g}, not {name}'s ({mine}): the receipt lists the set's commit \
                     and each disk's; give {name}'s, or ingest that disk alone by its own \
                     (--name {disk} --expect-commit {want}); nothing was installed"
                )));
            }
            // A disk of a set has two commits that name it: the set's (`have`) and its own; it
            // said the set's was the disk's.
            let has = if own_hex == have {
                format!("has commit {have}")
            } else {
                format!("has commit {own_hex} (its set's: {have})")
            };
            return Err(refuse(format!(
                "capture {name} generation {g} {has}, but the capture receipt says \
                 {want} (--expect-commit): this is not the capture that was shipped (an older \
                 capture of the same name, or another one, is on the medium in its place); do \
                 not install it, and ask the capture site which medium holds that commit"
            )));
        }
    }
    let manifest = medium_hint(medium, name, g)?;

    let mut trusted_by = Vec::new();
    let mut found = Vec::new();

    // Whether a pinned capture-site key signed it: where the target pinned one, it is
    // required (below), an appliance's word beside it notwithstanding.
    let mut site_signed = false;

    // 1. COMMIT signatures.
    let commit_file: Option<CommitFile> = commit_read.map_err(|e| unreadable(e, name, g))?;
    match &commit_file {
        None => found.push(format!(
            "no COMMIT in generation {g} (captured without --sign, or its COMMIT was lost since: `mgear verify` of every medium of the shipment together compares the copies)"
        )),
        Some(f) => {
            if let Some(what) = commit::check_commit(f, &expected) {
                // Not a question of what was pinned: the medium is not what was signed.
                return Err(crate::exit::coded_hint(
                    FOUND,
                    format!("capture {name} generation {g}: {what}"),
                    if what == commit::SLOTS_GONE {
                        // An erase on purpose or a PIN lockout: "altered since" sent the
                        // operator looking for tampering.
                        "nothing was installed, and nothing on this medium can be: its key \
                         slots were erased (an appliance's crypto-erase or PIN lockout). A \
                         volume an ingest finished before the erase stands as it was verified \
                         then (its report says so; this run cannot read it back against the \
                         medium any more); else ingest from another copy of the shipment, or \
                         capture the disk again"
                    } else {
                        "nothing was installed: the medium is not what was signed (damaged, \
                         erased or altered since); `mgear verify` lists what differs. Ingest \
                         from another copy of the shipment, or ask the capture site for it again"
                    },
                ));
            }
            for s in &f.signatures {
                let fp = sitekey::fingerprint(&s.public_key);
                let pinned = match s.role {
                    SignerRole::Site => policy.pinned_site(&s.public_key),
                    SignerRole::Appliance => policy.pinned_appliance(&s.public_key),
                };
                let said = format!("{} {fp} (COMMIT)", s.role.as_str());
                if pinned {
                    site_signed |= s.role == SignerRole::Site;
                    // The same signature twice (a hand-made COMMIT) vouches once.
                    if !trusted_by.contains(&said) {
                        trusted_by.push(said);
                    }
                } else if policy.pinned_site(&s.public_key)
                    || policy.pinned_appliance(&s.public_key)
                {
                    // Pinned in the other role: "which is not pinned" beside the same key in
                    // the pinned list read as a contradiction.
                    found.push(format!(
                        "COMMIT signed by {fp} as {} {}, but that key is pinned as {} (the \
                         signature's role was changed since, or the key was pinned with the \
                         wrong option: --trust is a capture site's, --trust-appliance an \
                         appliance's)",
                        if s.role == SignerRole::Site { "a" } else { "an" },
                        s.role.as_str(),
                        if s.role == SignerRole::Site {
                            "an appliance"
                        } else {
                            "a site"
                        }
                    ));
                } else {
                    crate::report::note_unpinned(s.role.as_str(), &fp);
                    found.push(format!(
                        "COMMIT signed by {} {fp}, which is not pinned",
                        s.role.as_str()
                    ));
                }
            }
            if f.signatures.is_empty() {
                found.push("COMMIT without signatures".into());
            }
        }
    }

    // 2. Seal and arrival. They count as trust only under a pinned key; for
    //    an appliance capture (manifest hint) a valid seal is also required
    //    unless --allow-unsealed.
    let ours = match attestations {
        Ok(a) => seal_is_of_this_medium(medium, name, a)?,
        Err(_) => false,
    };
    // Attestations a pinned appliance signed (they verify under its key) that list files of
    // capture `name`, none of whose manifests is here: the capture the pinned appliance sealed
    // was replaced by another of the same name (an older shipment's, signed by the site too).
    // Attestations listing no file of this capture are another medium's and say nothing.
    // Copies found on the medium say nothing either way: a planted copy of another shipment's
    // seal must not block this one.
    // Signed by the identity they name, the arrival made against the seal: what they list
    // is that appliance's word (whether that appliance is pinned is asked where it matters).
    let valid = attestations.is_ok_and(|a| {
        attest::verify_seal_and_arrival(&a.seal, &a.arrival, &a.seal.body.identity).is_ok()
    });
    let replaced = !ours
        && valid
        && attestations.is_ok_and(|a| {
            a.given
                && policy.pinned_appliance(&a.seal.body.identity)
                && a.arrival
                    .body
                    .files
                    .iter()
                    .any(|f| of_capture(name, &f.path))
        });
    let seal =
        match attestations {
            Err(why) => Err(why.to_string()),
            Ok(a) if replaced => Err(format!(
                "the seal + arrival ({}) of pinned appliance {} list capture {name}, but none of \
                 the manifests they sealed is on this medium: either they are another medium's \
                 attestations (another appliance's capture of that name: give the ones exported \
                 from this medium's own appliance), or another capture of that name was put in \
                 its place since the seal",
                a.from,
                sitekey::fingerprint(&a.seal.body.identity)
            )),
            // Said by what they list: a capture written onto the medium after the seal was
            // called "another medium's" seal, of the very medium sealed.
            Ok(a) if !ours && !a.seal.body.files.iter().any(|f| of_capture(name, &f.path)) => {
                Err(format!(
                    "the seal + arrival ({}) list no file of capture {name}: it was not on the \
                     medium the appliance sealed (written onto it since the seal, or these are \
                     another medium's attestations)",
                    a.from
                ))
            }
            Ok(a) if !ours => Err(format!(
                "the seal + arrival ({}) are of another medium: none of capture {name}'s sealed \
             manifests is on this one",
                a.from
            )),
            Ok(a) => match check_seal(medium, name, g, commit_file.is_some(), a, policy, manifest) {
                Ok(found) => found,
                // What could not be read is unknown, not found changed: an I/O error (exit 3).
                Err(e) => return Err(crate::exit::coded_next(
                    crate::exit::IO,
                    format!("checking the seal against the medium: {e:#}"),
                    "check that the medium (or the appliance serving it) is still connected and \
                     powered, then run the same command again",
                )),
            },
        };
    // Captures written onto the sealed medium since (none of their files in the seal): this
    // capture is as sealed, but "seal + arrival" vouched with not a word of a medium that is
    // no longer what the appliance sealed (`verify` named them).
    if let (Ok((fp, true)), Ok(a)) = (&seal, attestations) {
        let added: Vec<String> = image_format::capture_names(medium)?
            .into_iter()
            .filter(|c| {
                !of_capture(name, &format!("{}/", layout::capture_dir(c)))
                    && !a.seal.body.files.iter().any(|f| of_capture(c, &f.path))
            })
            .collect();
        if !added.is_empty() {
            warnings.push(format!(
                "the medium holds {} that appliance {fp} did not seal ({}): written onto it \
                 since the seal; capture {name} is as sealed and is what this run checks. Ask \
                 how the medium was handled (`mgear verify` names what changed)",
                crate::units::count(added.len() as u64, "capture"),
                added.join(", ")
            ));
        }
    }
    match &seal {
        Ok((fp, true)) => trusted_by.push(format!("appliance {fp} (seal + arrival)")),
        Ok((fp, false)) => found.push(format!(
            "seal + arrival signed by appliance {fp}, which is not pinned"
        )),
        // Where to get them is said where they are required (below), not in this list.
        Err(_) if attestations.is_err_and(|why| why.starts_with(NO_ATTESTATIONS_GIVEN)) => {
            found.push("no seal/arrival attestations found".to_string())
        }
        // What the appliance given said of its seal (its arrival check failed, or was not
        // run: its word, not "no seal/arrival attestations found"), or why the seal does not
        // hold.
        Err(e) => found.push(e.clone()),
    }
    // A seal is required for an appliance capture (the manifest's hint) and
    // whenever a pinned appliance sealed this medium: then a file missing
    // or changed since the seal (a deleted newer generation) is a refusal,
    // whatever else vouches for the generation.
    let pinned_sealer = replaced
        || ours && attestations.is_ok_and(|a| policy.pinned_appliance(&a.seal.body.identity));
    // A pinned appliance's seal of this medium that no longer matches it (a
    // generation deleted or changed since): never only a missing seal.
    let seal_mismatch = match (&seal, pinned_sealer) {
        (Err(e), true) => Some(format!(
            "the medium was sealed by a pinned appliance but capture {name} generation {g} does \
             not match the seal: {e}"
        )),
        _ => None,
    };
    // Made through an appliance this target did not pin, and no pinned key signed it: nothing
    // here can vouch for it, whatever its attestations say. It was told as a seal problem
    // ("its seal does not check ... give ingest the appliance's attestations", or
    // --allow-unsealed), which led to more attestations, not to the unpinned appliance.
    if let (Some(hint), false, false, true, false) = (
        manifest,
        policy.verifying,
        policy.allow_untrusted,
        trusted_by.is_empty(),
        manifest.is_some_and(|h| policy.pinned_appliance(&h)),
    ) {
        let pinned = match policy.appliances.len() {
            0 => "none is pinned".to_string(),
            _ => format!(
                "pinned: {}",
                policy
                    .appliances
                    .iter()
                    .map(|f| crate::output::hex(f))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        if !policy.appliances.is_empty() {
            return Err(crate::exit::coded_hint(
                FOUND,
                format!(
                    "capture {name} generation {g} says it was made through appliance {}, \
                     which this target did not pin ({pinned}), and no pinned key signed it: \
                     nothing pinned vouches for it (its seal and arrival, valid or not, would not \
                     either)",
                    sitekey::fingerprint(&hint)
                ),
                "nothing was installed: a capture made through an appliance you did not \
                 provision is refused. If the appliance is yours, pin it with \
                 --trust-appliance (`mgear appliance info` prints its fingerprint); else ask the \
                 capture site for the shipment they sent",
            ));
        }
    }
    // The appliance given checked the medium on arrival and found it changed since its seal:
    // refused whatever the capture claims, as for one made through it (a courier's own
    // capture put in the sealed one's place carries no appliance hint, and was refused as
    // "no seal/arrival attestations found", offering --allow-untrusted).
    let arrival_failed = attestations.is_err_and(|why| why.contains(ARRIVAL_FAILED));
    if let (true, Err(e)) = (manifest.is_some() || pinned_sealer || arrival_failed, &seal) {
        let msg = match manifest {
            Some(hint) => format!(
                // The manifest's word, read before anything authenticated it: a courier can
                // write any appliance there.
                "capture {name} generation {g} says it was made through appliance {} (its \
                 manifest says so, unchecked), but its seal does not check: {e}",
                sitekey::fingerprint(&hint)
            ),
            None if pinned_sealer => format!(
                "the medium was sealed by a pinned appliance but capture {name} generation {g} \
                 does not match the seal: {e}"
            ),
            None => e.clone(),
        };
        // The pinned appliance's own signed list says the medium changed since the seal (a
        // generation deleted, a file changed, another capture in its place): no override
        // covers that. --allow-unsealed is for attestations that are missing or unusable.
        let changed_since_seal = pinned_sealer && valid;
        if policy.verifying {
            warnings.push(format!(
                "{msg}; ingest requires the seal and arrival attestations and refuses it until \
                 they check"
            ));
        } else if changed_since_seal {
            return Err(refuse(format!(
                "{msg} (what a pinned appliance sealed is refused changed, --allow-unsealed or not)"
            )));
        } else if policy.allow_unsealed {
            warnings.push(format!(
                "--allow-unsealed: ingesting WITHOUT valid appliance attestations: {msg}"
            ));
        } else if attestations.is_ok() {
            return Err(refuse(format!(
                "{msg} (seal and arrival attestations are required; --allow-unsealed overrides, loudly)"
            )));
        } else if attestations.is_err_and(|why| why.contains(ERASED_BEFORE_ARRIVAL)) {
            // The seal is not in doubt; no arrival can be had any more.
            return Err(crate::exit::coded_hint(
                FOUND,
                format!(
                    "capture {name} generation {g} was sealed by its appliance, which can no \
                     longer attest its arrival: {}",
                    attestations.err().unwrap_or_default()
                ),
                "nothing was installed: ingest it with --allow-unsealed and the pinned --trust \
                 key (the capture site's signature then vouches for it); the custody log says \
                 how the appliance came to be erased",
            ));
        } else if attestations.is_err_and(|why| why.contains(SEAL_WITHOUT_ARRIVAL)) {
            // Exported before the arrival check, most often: the advice named the
            // --attestations already given, and the override.
            return Err(crate::exit::coded_hint(
                FOUND,
                msg,
                "nothing was installed: if the appliance still has its identity, run `mgear \
                 appliance --port PORT arrival` at the target and export again (`mgear appliance \
                 --port PORT attestations --out DIR` writes SEAL and ARRIVAL), or ingest through \
                 it (--appliance PORT); only if it was erased or locked out before its arrival \
                 check (its custody log says), --allow-unsealed with the pinned --trust key",
            ));
        } else if attestations.is_err_and(|why| why.contains(ARRIVAL_FAILED)) {
            // Its arrival check failed: the attestations are not missing, the medium changed.
            return Err(crate::exit::coded_hint(
                FOUND,
                msg,
                "nothing was installed: do not ingest from this medium; ask the capture site \
                 for another copy of the shipment",
            ));
        } else {
            return Err(crate::exit::coded_hint(
                FOUND,
                format!(
                    "{msg} (ingest requires the seal and arrival attestations; only where they \
                     cannot be had, --allow-unsealed overrides, loudly)"
                ),
                "nothing was installed: give ingest the appliance's attestations (the appliance \
                 itself with --appliance PORT after `mgear appliance arrival`, or the files of \
                 `mgear appliance attestations --out DIR` with --attestations DIR)",
            ));
        }
    }

    // A pinned site key is the capture site's word, and a target that pins one expects it:
    // with appliances pinned too, an unsigned capture was installed on an appliance's seal
    // alone, and an appliance of a span left unlocked in transit can be written and sealed
    // by whoever carries it (it vouched for a disk the courier made).
    if !policy.sites.is_empty() && !site_signed && !trusted_by.is_empty() {
        let msg = format!(
            "capture {name} generation {g} is vouched for by {} but not signed by the capture \
             site key pinned with --trust: a target that pins the site's key takes only what \
             the site signed (an appliance left unlocked can be written and sealed by whoever \
             carries it)",
            trusted_by.join(", ")
        );
        // verify says NOT TRUSTED, as ingest refuses (it said TRUSTED with a warning, exit 0).
        if policy.allow_untrusted && !policy.verifying {
            warnings.push(format!("--allow-untrusted: accepting it anyway: {msg}"));
        } else {
            return Err(refuse(format!(
                "{msg}. Ask the capture site whether it signed this capture (the same capture \
                 command with --sign adds a missing signature to a medium not sealed yet; a \
                 sealed medium is never written again, so a shipment sealed unsigned is \
                 captured again with --sign and sealed again); leave out --trust SITE.pub only \
                 for a site that does not sign its captures"
            )));
        }
    }
    if trusted_by.is_empty() {
        let msg = format!(
            "capture {name} generation {g} carries no signature by a pinned key: found {}; pinned: {}",
            found.join("; "),
            policy.describe()
        );
        if !policy.allow_untrusted {
            return Err(refuse(format!(
                "{msg}. Nothing proves who wrote this capture: anyone with target.pub can make one \
                 (--allow-untrusted overrides, loudly)"
            )));
        }
        warnings.push(format!(
            "--allow-untrusted: accepting a capture NOBODY TRUSTED VOUCHES FOR: {msg}"
        ));
    }
    Ok(Verdict {
        generation: g,
        manifest_root: expected.manifest_root,
        commit: expected.digest(),
        receipt_commit,
        seal_mismatch,
        trusted_by,
        warnings,
    })
}

/// Why capture `name` has no finished generation to install: a generation whose directory
/// reads as garbage, or one whose name was damaged, is damage; else the capture never
/// finished here.
fn no_finished_generation(medium: &mut dyn Store, name: &str) -> crate::Error {
    let damaged = "nothing was installed: the medium's file system is damaged there (`mgear \
                   verify` names it): on a copy of the medium, `fsck.fat -n COPY` names the \
                   damage (never repair the original), or ingest from another copy of the \
                   shipment";
    // A generation whose directory reads as garbage is damage, not a stopped capture.
    let garbled = image_format::capture_info(medium, name)
        .ok()
        .flatten()
        .and_then(|c| {
            c.generations.into_iter().find_map(|g| match g.state {
                image_format::GenerationState::Damaged(w)
                    if w.starts_with(image_format::GARBLED_DIR) =>
                {
                    Some((g.generation, w))
                }
                _ => None,
            })
        });
    if let Some((g, why)) = garbled {
        return crate::exit::coded_hint(
            FOUND,
            format!("capture {name} generation {g}: {why}"),
            damaged,
        );
    }
    // A generation hidden by damage (its name, its entry deleted, its directory mark lost) is
    // invisible, and "stopped before it finished" sent the operator back to the capture site
    // for a capture that had finished.
    let hidden = hidden_generation_dirs(medium, name);
    if !hidden.is_empty() {
        return crate::exit::coded_hint(
            FOUND,
            format!(
                "capture {name} has no generation this medium lists, and it holds {}: a \
                 generation hidden by damage is invisible to every reader",
                hidden.join("; ")
            ),
            damaged,
        );
    }
    // A disk of a set whose capture stopped before its last disk (its own generation may be
    // finished, listed complete by inspect): the set's is what did not finish.
    if let Some((set, k)) = image_format::set::parse_disk_stream_name(name) {
        return crate::exit::coded_hint(
            FOUND,
            format!(
                "capture {name} is disk {k} of machine set {set}, whose capture has not \
                 finished on this medium (no set generation binds this disk's: the set's \
                 manifest is written once every disk is captured)"
            ),
            "nothing was installed: finish the set's capture at the capture site (the same \
             capture command; after \"medium full\" with one more --medium), then ingest from \
             all the media it wrote; `mgear inspect --medium ...` shows what this medium holds",
        );
    }
    // Clusters no file holds on a medium closed cleanly: its generations' files may be among
    // them ("stopped before it finished" sent the operator back to the capture site).
    if let Ok(Some(lost)) = medium.lost_clusters() {
        return crate::exit::coded_hint(
            FOUND,
            format!(
                "capture {name} has no finished generation this medium can read, and the \
                 medium was damaged since ({lost}): its generation's files may be among those \
                 clusters, so it may have been finished"
            ),
            damaged,
        );
    }
    // Nothing to do with what the target pinned: the capture never finished here.
    crate::exit::coded_hint(
        FOUND,
        format!("capture {name} has no finished generation on this medium"),
        "nothing was installed: the capture was stopped before it finished (`mgear inspect` \
         shows how far it got); resume it at the capture site (the same capture command) and \
         ship the medium again, or ingest from another copy of the shipment",
    )
}

/// The finished generations of disk stream `name` of set `set` that no set
/// manifest binds, which a reader must not use: a disk of a machine set is
/// one point in time with the other disks only in a generation its set
/// manifest binds. The newest of them is a set capture that did not finish
/// (a warning), unless its set generation was finished (its COMMIT is
/// there, a later one exists): then the SET was removed since, and the
/// generation before it would be a silent rollback of this disk (refused),
/// as is `--generation` naming an unbound one.
fn unbound_by_set(
    medium: &mut dyn Store,
    name: &str,
    set: &str,
    finished: &[u32],
    generation: Option<u32>,
    warnings: &mut Vec<String>,
) -> crate::Result<Vec<u32>> {
    let mut unbound = Vec::new();
    for &g in finished {
        let p = image_format::set::set_path(set, g);
        if medium
            .len(&p)
            .map_err(|e| crate::err!("{p}: {e}"))?
            .is_none()
        {
            unbound.push(g);
        }
    }
    let Some(&newest) = unbound.last() else {
        return Ok(unbound);
    };
    let set_gens =
        image_format::capture_generations(medium, set).map_err(|e| unreadable(e, set, 0))?;
    let evidence = match generation {
        // An older generation asked for by number is taken on purpose.
        Some(_) => None,
        None => image_format::finished_evidence(medium, set, newest, &set_gens)
            .map_err(|e| unreadable(e, set, newest))?,
    };
    if let Some(why) = evidence {
        return Err(refuse(format!(
            "set {set} generation {newest} was finished ({why}) but its set manifest (SET) is \
             missing: the medium was damaged since, and {name} generation {newest} is bound by \
             nothing. Ask the capture site for the set again, or give --generation with an \
             older one to ingest it on purpose"
        )));
    }
    if let Some(g) = generation.filter(|g| unbound.contains(g)) {
        return Err(refuse(format!(
            "{name} generation {g} is not bound by a set manifest of set {set} (its set capture \
             did not finish): ingest the set (--name {set}) or a generation its set manifest binds"
        )));
    }
    warnings.push(format!(
        "{name} generation {newest} is not bound by a set manifest of set {set} (its set capture \
         did not finish): not used"
    ));
    Ok(unbound)
}

/// A generation directory of capture `name` that no reader sees: renamed (a damaged name:
/// [`image_format::stray_generation_dirs`]) or its entry deleted (a directory nothing names,
/// holding a MANIFEST or an INDEX: `Store::lost_dirs`). Taking the newest generation the
/// medium lists would then install an older one than the capture holds, exit 0: refused,
/// with `--generation` to take it on purpose, unless the capture receipt's commit is the
/// newest listed one (then that is what the site shipped: a warning).
fn hidden_generations(
    medium: &mut dyn Store,
    name: &str,
    newest: Option<u32>,
    receipt: Option<u32>,
    warnings: &mut Vec<String>,
) -> crate::Result<()> {
    let hidden = hidden_generation_dirs(medium, name);
    if hidden.is_empty() {
        return Ok(());
    }
    let what = format!(
        "capture {name} holds {}: a generation hidden so may be newer than generation {}, the \
         newest this medium lists",
        hidden.join("; "),
        newest.map_or("none".into(), |n| n.to_string())
    );
    match (receipt, newest) {
        (Some(r), Some(n)) if r == n => {
            warnings.push(format!(
                "{what}; the capture receipt's commit (--expect-commit) is generation {n}'s, so \
                 it is installed (`mgear verify` names the damage)"
            ));
            Ok(())
        }
        _ => Err(refuse(format!(
            "{what}. The medium was damaged since (`mgear verify` names it): give --generation \
             {} to install that one on purpose, or --expect-commit from the capture receipt, or \
             ingest from another copy of the shipment",
            newest.map_or("N".into(), |n| n.to_string())
        ))),
    }
}

/// What in capture `name`'s directory may be a generation hidden by damage: a directory no
/// generation is named (a damaged name), a generation's name on an entry that is no directory
/// (its directory mark lost), a generation's directory whose entry was deleted.
pub(crate) fn hidden_generation_dirs(medium: &mut dyn Store, name: &str) -> Vec<String> {
    let dir = layout::capture_dir(name);
    let mut hidden: Vec<String> = image_format::stray_generation_dirs(medium, name)
        .unwrap_or_default()
        .iter()
        .map(|n| {
            format!(
                "{dir}/{}, a directory no generation is named",
                crate::output::printable(n)
            )
        })
        .collect();
    for e in medium.list(&dir).unwrap_or_default() {
        if e.kind != image_format::store::EntryKind::Dir
            && layout::parse_generation_dir(&e.name).is_some()
        {
            hidden.push(format!(
                "{dir}/{}, a generation's name on an entry that is not a directory (its \
                 directory mark damaged)",
                crate::output::printable(&e.name)
            ));
        }
    }
    for names in image_format::lost_dirs_of(medium, &dir, image_format::LostDir::Generation) {
        hidden.push(format!(
            "a generation's directory whose entry in {dir} was deleted or damaged (it holds {})",
            crate::output::printable_names(&names, 4)
        ));
    }
    hidden
}

/// Generations above the newest finished one (`newest`) of capture `name`
/// (`all`: its generations), and for a machine set those of its disk
/// streams. A capture stopped before it finished is normal (it resumes): a
/// warning. But one that was finished (signed, its journal says so, a later
/// generation exists, or a set's disk stream has its MANIFEST) and lost its
/// MANIFEST or set manifest since is a refusal: falling back to the one below
/// would ingest an older disk than the capture site shipped, and say nothing.
fn later_than_newest(
    medium: &mut dyn Store,
    name: &str,
    all: &[u32],
    newest: Option<u32>,
    receipt: Option<u32>,
    warnings: &mut Vec<String>,
) -> crate::Result<()> {
    let intact = newest.map_or("none".into(), |n| n.to_string());
    let streams = streams_of_set(medium, name)?;
    let lost = if streams.is_empty() {
        "MANIFEST"
    } else {
        "set manifest (SET)"
    };
    let damaged = |later: u32, why: String| {
        crate::report::note_generation(later);
        let way = match receipt {
            Some(r) => format!(
                "The capture receipt's commit (--expect-commit) is generation {r}'s: add \
                 --generation {r} to install it"
            ),
            None => format!(
                "Give --generation with it to ingest that one on purpose, or ask the capture \
                 site for generation {later} again"
            ),
        };
        refuse(format!(
            "capture {name} generation {later} was finished ({why}) but its {lost} is missing: \
             the medium was damaged since; the newest intact generation is {intact}. {way}"
        ))
    };
    hidden_generations(medium, name, newest, receipt, warnings)?;
    for &later in all.iter().filter(|&&a| newest.is_none_or(|n| a > n)) {
        let evidence = image_format::finished_evidence(medium, name, later, all)
            .map_err(|e| unreadable(e, name, later))?;
        if let Some(why) = evidence {
            return Err(damaged(later, why));
        }
        if let Some(n) = newest {
            // Its files' entries gone from a directory on a medium closed cleanly (a damaged
            // entry ends the listing): what a stopped capture leaves, to the listing, but the
            // clusters its files held are still taken; the older generation was installed,
            // exit 0, as if the newer one had never finished.
            if let Some(lost) = medium
                .lost_clusters()
                .map_err(|e| crate::Error::from(e).context("reading the medium's FAT"))?
            {
                if receipt != Some(n) {
                    crate::report::note_generation(later);
                    return Err(refuse(format!(
                        "capture {name} generation {later} has no MANIFEST, as a capture \
                         stopped before its end leaves, but the medium was damaged since \
                         ({lost}): generation {later} may have been finished, and generation \
                         {n}, the newest intact one, may be older than what was shipped. Give \
                         --generation {n} to install it on purpose, or --expect-commit from \
                         the capture receipt, or ingest from another copy of the shipment"
                    )));
                }
            }
            warnings.push(format!(
                "capture {name} generation {later} is not finished (no MANIFEST: a capture \
                 stopped before its end); generation {n}, the newest finished one, is used"
            ));
        }
    }
    // A set generation's directory (and its SET) is written last, once
    // every disk finished: disks' generations above the newest set
    // generation are a set capture that stopped before binding them (it
    // resumes), unless the set went on to a later generation since, which it
    // does only over a finished one.
    let mut warned = false;
    for stream in streams {
        let gens = image_format::capture_generations(medium, &stream)
            .map_err(|e| unreadable(e, &stream, 0))?;
        let Some(&last) = gens.last() else { continue };
        for &later in gens
            .iter()
            .filter(|&&a| newest.is_none_or(|n| a > n) && !all.contains(&a))
        {
            if later < last {
                return Err(damaged(
                    later,
                    format!("disk stream {stream} has generation {last}, captured after it"),
                ));
            }
            let manifest = layout::generation_file(&stream, later, layout::MANIFEST_FILE);
            let disk_done = medium
                .len(&manifest)
                .map_err(|e| crate::err!("{manifest}: {e}"))?
                .is_some();
            if let (true, false, Some(n)) = (disk_done, warned, newest) {
                warned = true;
                warnings.push(format!(
                    "set {name} generation {later} is not finished: disk stream {stream} holds \
                     generation {later} but no set manifest binds it (a set capture stopped \
                     before its end, or its SET was removed since); generation {n}, the newest \
                     finished one, is used. If the capture receipt says generation {later}, give \
                     --expect-generation {later} and this medium is refused"
                ));
                break;
            }
        }
    }
    Ok(())
}

/// Whether generation `h` of capture `name` (a set's disk stream: its set's) has a receipt
/// commit beginning with `want` (the hex of `--expect-commit`).
fn receipt_commit_is(medium: &mut dyn Store, name: &str, h: u32, want: &str) -> bool {
    let c = match image_format::set::parse_disk_stream_name(name) {
        Some((set, _)) => image_format::set::read_set(medium, set, h)
            .ok()
            .flatten()
            .map(|f| Commit::of_set(&f, h)),
        None => commit::expected_commit(medium, name, h).ok().flatten(),
    };
    c.is_some_and(|c| crate::output::hex(&c.digest()).starts_with(want))
}

/// The disk streams (`NAME.dN`) of machine set `name`; empty for a capture
/// that is not a set.
fn streams_of_set(medium: &mut dyn Store, name: &str) -> crate::Result<Vec<String>> {
    if !image_format::set::is_set(medium, name).map_err(|e| unreadable(e, name, 0))? {
        return Ok(Vec::new());
    }
    Ok(image_format::capture_names(medium)
        .map_err(|e| unreadable(e, name, 0))?
        .into_iter()
        .filter(|n| image_format::set::parse_disk_stream_name(n).is_some_and(|(s, _)| s == name))
        .collect())
}

/// Refuse data read after the gate that is not what the gate checked: the
/// MANIFEST (or set manifest) opened for reading must be the one whose
/// signatures and seal were checked (a medium answering the same read
/// differently, e.g. a malicious USB device or NBD export).
pub fn same_as_checked(
    verdict: &Verdict,
    name: &str,
    generation: u32,
    root: &[u8; 32],
) -> crate::Result<()> {
    if generation != verdict.generation || root != &verdict.manifest_root {
        return Err(refuse(format!(
            "capture {name}: the medium returned generation {generation} with manifest root {} \
             for reading, but the trust check moments before was of generation {} with root {}: \
             a failing or tampered medium answers the same read differently; do not use it",
            crate::output::hex(root),
            verdict.generation,
            crate::output::hex(&verdict.manifest_root)
        )));
    }
    Ok(())
}

/// The appliance identity the manifest names (a hint: it says a seal is
/// expected, never which key to trust).
fn medium_hint(medium: &mut dyn Store, name: &str, g: u32) -> crate::Result<Option<[u8; 32]>> {
    // This capture's own files only: damage in another capture's directories is no
    // finding about this one (it refused every capture of the medium).
    let info = image_format::capture_info(medium, name)
        .map_err(|e| refuse(format!("capture {name}: {e}")))?;
    Ok(info
        .and_then(|c| c.generations.into_iter().find(|i| i.generation == g))
        .and_then(|i| i.appliance_id))
}

/// Seal + arrival for generation `g`: `Ok((fingerprint, pinned))` when they
/// verify under their signer's key, cover this generation and every attested
/// file of the capture is unchanged; the signer must be pinned or be the
/// manifest's appliance (else it proves nothing at all).
fn check_seal(
    medium: &mut dyn Store,
    name: &str,
    g: u32,
    has_commit: bool,
    a: &Attestations,
    policy: &Policy,
    hint: Option<[u8; 32]>,
) -> crate::Result<Result<(String, bool), String>> {
    let identity = a.seal.body.identity;
    let fp = sitekey::fingerprint(&identity);
    let pinned = policy.pinned_appliance(&identity);
    if !pinned && hint != Some(identity) {
        // The span explanation only where there is a span: on a medium of one, it offered a
        // ready `--trust-appliance` of a key read from the medium (a forger's appliance).
        let spanned = medium
            .len(image_format::span::SPAN_FILE)
            .ok()
            .flatten()
            .is_some();
        return Ok(Err(match spanned {
            true => format!(
                "seal + arrival ({}) signed by appliance {fp}, which is neither pinned nor the \
                 appliance the manifest names (if it carries another medium of this shipment, \
                 a span over several appliances: give it together with the pinned appliance, \
                 or pin it too, --trust-appliance once per appliance, with its fingerprint from \
                 your own record of the appliances you provisioned (the capture receipt names \
                 only the first, which witnessed the commits), never one read from here)",
                a.from
            ),
            false => format!(
                "seal + arrival ({}) signed by appliance {fp}, which is neither pinned nor the \
                 appliance the manifest names: an appliance this target did not provision \
                 vouches for nothing (do not pin a key found on the medium)",
                a.from
            ),
        }));
    }
    if let Err(e) = attest::verify_seal_and_arrival(&a.seal, &a.arrival, &identity) {
        return Ok(Err(format!(
            "seal + arrival ({}) of appliance {fp}: {e}",
            a.from
        )));
    }
    let prefix = format!("{}/", layout::capture_dir(name));
    let attested: Vec<_> = a
        .arrival
        .body
        .files
        .iter()
        .filter(|f| f.path.starts_with(&prefix))
        .collect();
    // The medium failing to read (unplugged, appliance off) is an I/O error, not a seal that
    // does not check: those propagate, findings are `Ok(Err(why))`.
    let mut must = vec![finishing_file(medium, name, g)?
        .unwrap_or_else(|| layout::generation_file(name, g, layout::MANIFEST_FILE))];
    if has_commit {
        must.push(commit::commit_path(name, g));
    }
    for m in &must {
        if !attested.iter().any(|f| f.path.eq_ignore_ascii_case(m)) {
            return Ok(Err(format!(
                "the seal does not cover {m}: capture {name} generation {g} was written after the seal"
            )));
        }
    }
    // Everything sealed must still be there, unchanged: a generation deleted
    // since the seal shows up here as missing files.
    Ok(still_as_sealed(medium, &attested)?.map(|()| (fp, pinned)))
}

/// Whether medium path `path` belongs to capture `name` as a seal sees it (any case): under
/// its directory, or, for a disk stream of a machine set (`web01.d0`), under its set's
/// directory too (`MGEAR/web01/`): a seal of a capture `web01` that a set of that name
/// replaced lists nothing under `MGEAR/web01.d0/`, and asking for the disk by its stream
/// name must not step around it.
fn of_capture(name: &str, path: &str) -> bool {
    let path = path.to_ascii_uppercase();
    let under =
        |n: &str| path.starts_with(&format!("{}/", layout::capture_dir(n)).to_ascii_uppercase());
    under(name)
        || image_format::set::parse_disk_stream_name(name).is_some_and(|(set, _)| under(set))
}

/// Whether every sealed file in `files` is on the medium as the seal saw it: `Ok(Err(why))`
/// names the first that is missing or changed. The medium failing to read is the error.
fn still_as_sealed(
    medium: &mut dyn Store,
    files: &[&attest::FileDigest],
) -> crate::Result<Result<(), String>> {
    for f in files {
        let now = medium
            .len(&f.path)
            .map_err(|e| crate::Error::from(e).context(&f.path))?;
        let why = match now {
            None => format!(
                "{} ({}) was sealed but is missing now (deleted since, or its capture replaced by another)",
                f.path,
                attest::place_of_path(&f.path)
            ),
            Some(len) if len != f.len => format!(
                "{} ({}) changed since the seal: {} bytes sealed, {len} now",
                f.path,
                attest::place_of_path(&f.path),
                f.len
            ),
            Some(len) if sha256_file(medium, &f.path, len)? != f.sha256 => format!(
                "{} ({}) changed since the seal: its content differs",
                f.path,
                attest::place_of_path(&f.path)
            ),
            Some(_) => continue,
        };
        return Ok(Err(why));
    }
    Ok(Ok(()))
}

/// A pinned appliance's seal with no arrival beside it (the appliance was erased or locked
/// out before its arrival check): there is no pair for [`check_generation`] to check, but
/// what the seal lists of capture `name` must still be on the medium, unchanged, whatever
/// else vouches and with --allow-unsealed too (a generation deleted since the seal would
/// otherwise be a silent rollback). A seal that does not verify, or by an appliance not
/// pinned, proves nothing here and is left to the rest of the gate.
pub fn check_lone_seal(
    medium: &mut dyn Store,
    name: &str,
    g: u32,
    seal: &Attestation,
    policy: &Policy,
) -> crate::Result<()> {
    let identity = seal.body.identity;
    if seal.body.kind != attest::AttestationKind::Seal
        || !policy.pinned_appliance(&identity)
        || attest::verify_attestation(seal, &identity).is_err()
    {
        return Ok(());
    }
    let name = &image_format::stored_name(medium, name)?;
    let listed: Vec<&attest::FileDigest> = seal
        .body
        .files
        .iter()
        .filter(|f| of_capture(name, &f.path))
        .collect();
    // The generation the gate accepted must be one the seal saw (as with an arrival).
    let finishing = finishing_file(medium, name, g)?
        .unwrap_or_else(|| layout::generation_file(name, g, layout::MANIFEST_FILE));
    let covered = listed
        .iter()
        .any(|f| f.path.eq_ignore_ascii_case(&finishing));
    let found = if covered {
        still_as_sealed(medium, &listed)?
    } else {
        Err(format!(
            "the seal does not cover {finishing}: generation {g} was written after the seal"
        ))
    };
    match found {
        Ok(()) => Ok(()),
        Err(why) => Err(refuse(format!(
            "the medium was sealed by pinned appliance {} (its seal, with no arrival beside it) \
             and capture {name} is not what it sealed: {why}; do not install it (not even with \
             --allow-unsealed)",
            sitekey::fingerprint(&identity)
        ))),
    }
}

/// Whether attestations `a` are about this medium's capture `name`: one of
/// the capture's MANIFEST or SET files they list is here, byte for byte.
/// A seal of another medium (planted copies, a wrong `--attestations`
/// directory) then says nothing about this one, rather than calling every
/// generation "changed since the seal"; a newer generation deleted since
/// the seal still leaves the older ones' manifests matching, so it is caught.
fn seal_is_of_this_medium(
    medium: &mut dyn Store,
    name: &str,
    a: &Attestations,
) -> crate::Result<bool> {
    let prefix = format!("{}/", layout::capture_dir(name)).to_ascii_uppercase();
    for f in &a.arrival.body.files {
        let upper = f.path.to_ascii_uppercase();
        let finishing = [layout::MANIFEST_FILE, image_format::set::SET_FILE]
            .iter()
            .any(|m| upper.ends_with(&format!("/{m}")));
        if !upper.starts_with(&prefix) || !finishing {
            continue;
        }
        let len = medium
            .len(&f.path)
            .map_err(|e| crate::err!("{}: {e}", f.path))?;
        if len == Some(f.len) && sha256_file(medium, &f.path, f.len)? == f.sha256 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Read a whole file of at most `max` bytes; a larger one (a huge sparse
/// file planted to stall the gate) is refused without reading it.
pub fn read_capped(medium: &mut dyn Store, path: &str, max: u64) -> crate::Result<Vec<u8>> {
    let len = medium
        .len(path)
        .map_err(|e| err!("{path}: {e}"))?
        .ok_or_else(|| err!("{path} is missing"))?;
    if len > max {
        bail!(
            "{path} is {len} bytes, more than the {max} a valid file of its kind can be: \
             refusing to read it (planted or damaged file)"
        );
    }
    let mut buf = vec![0u8; len as usize];
    medium
        .read_exact_at(path, 0, &mut buf)
        .map_err(|e| err!("{path}: {e}"))?;
    Ok(buf)
}

/// SHA-256 of the first `len` bytes of `path`.
pub fn sha256_file(medium: &mut dyn Store, path: &str, len: u64) -> crate::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        medium
            .read_exact_at(path, off, &mut buf[..n])
            .map_err(|e| err!("{path}: {e}"))?;
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image_format::store::MemStore;

    #[test]
    fn data_read_after_the_gate_must_be_what_the_gate_checked() {
        let v = Verdict {
            generation: 2,
            manifest_root: [7; 32],
            commit: [9; 32],
            receipt_commit: [9; 32],
            seal_mismatch: None,
            trusted_by: vec!["site x".into()],
            warnings: Vec::new(),
        };
        assert!(same_as_checked(&v, "web01", 2, &[7; 32]).is_ok());
        for (g, root) in [(2, [8; 32]), (1, [7; 32])] {
            let e = same_as_checked(&v, "web01", g, &root).unwrap_err();
            assert_eq!(crate::exit::code_of(&e), FOUND, "{e}");
            assert!(
                e.to_string().contains("answers the same read differently"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_generation_that_does_not_exist_is_a_usage_error_naming_those_that_do() {
        let mut m = MemStore::new();
        m.create_dir_all(&layout::generation_dir("web01", 1))
            .unwrap();
        m.write_at(
            &layout::generation_file("web01", 1, layout::MANIFEST_FILE),
            0,
            b"x",
        )
        .unwrap();
        m.create_dir_all(&layout::generation_dir("web01", 2))
            .unwrap();
        for g in [5, 0] {
            let e = check_generation(&mut m, "web01", Some(g), &Policy::default(), Err("none"))
                .unwrap_err();
            assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE, "{e}");
            assert_eq!(
                e.to_string(),
                format!(
                    "capture web01 has no generation {g} on this medium; its generations: 1, 2 (unfinished)"
                )
            );
        }
        // An existing but unfinished one is still refused as unfinished.
        let e = check_generation(&mut m, "web01", Some(2), &Policy::default(), Err("none"))
            .unwrap_err();
        assert!(e.to_string().contains("is not finished"), "{e}");
    }
}
