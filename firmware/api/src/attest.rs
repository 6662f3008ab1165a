//! Seal and arrival attestations: what the appliance signs, how the host
//! checks it, and how arrival names what changed since the seal.
//!
//! An attestation is an [`AttestationBody`] and an Ed25519 signature by the
//! appliance identity over
//!
//! ```text
//! "MGEAR-ATTESTATION-v2\0" || postcard(body)
//! ```
//!
//! (v2 added `log_records`, `log_head` and `challenge`; a v1 body does not
//! decode as v2, and the domain string keeps their signatures apart.)
//!
//! postcard is deterministic for these types, so the host re-encodes the
//! body it received and checks the signature over the same bytes. The body
//! lists every file on the medium with its length and SHA-256 (manifests,
//! indexes, segments, key slots, journals: the keyless verifier has just
//! checked their structure) and the SHA-256 of every [`REGION_SIZE`] region of
//! the raw medium, so a change anywhere — inside a capture or in FAT
//! metadata, free space, the boot sector — changes the body. An arrival
//! attestation also carries the digest of the seal attestation it was
//! compared with, and the challenge the host sent for it.
//!
//! The appliance takes the file digests from the keyless verifier's own
//! reads ([`FileDigests`]: each file is read once for both) and hashes the
//! raw regions in a pass of its own (`mgear_firmware::regions`); what is
//! signed is the same as separate passes compute ([`file_digests`]).
//!
//! Every attestation pins the custody log as it stood when it was signed:
//! `log_records` records whose last one hashes (SHA-256 of its stored
//! body, the next record's `prev`) to `log_head`. The record that follows
//! (`Seal`/`Arrival`) names the attestation's digest. A host that holds an
//! attestation therefore knows how long the log must at least be and what
//! its records up to there must hash to: cutting records off the end of
//! the log, or replacing them, is detected ([`check_log_covers`]).

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use image_format::store::{Entry, EntryKind};
use image_format::{layout, Store, StoreError};

use crate::protocol::{Place, Problem};

/// Size of one hashed region of the raw medium.
pub const REGION_SIZE: u64 = 16 * 1024 * 1024;

const DOMAIN: &[u8] = b"MGEAR-ATTESTATION-v2\0";

/// Which check produced the attestation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttestationKind {
    Seal,
    Arrival,
}

impl AttestationKind {
    /// With its article, for messages: "a seal", "an arrival".
    pub fn named(&self) -> &'static str {
        match self {
            AttestationKind::Seal => "a seal",
            AttestationKind::Arrival => "an arrival",
        }
    }
}

/// One file on the medium.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// `/`-separated path from the medium root.
    pub path: String,
    pub len: u64,
    #[serde(with = "serde_bytes")]
    pub sha256: [u8; 32],
}

/// What is signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationBody {
    pub kind: AttestationKind,
    /// The signer's Ed25519 public key.
    #[serde(with = "serde_bytes")]
    pub identity: [u8; 32],
    /// The appliance's medium id (random, chosen at provisioning).
    #[serde(with = "serde_bytes")]
    pub medium_id: [u8; 16],
    pub medium_bytes: u64,
    /// Every file on the medium, sorted by path.
    pub files: Vec<FileDigest>,
    /// Captures and records the keyless verifier checked.
    pub captures: u64,
    pub records: u64,
    /// Size of each hashed region (the last one may be shorter).
    pub region_size: u64,
    /// SHA-256 of each region of the raw medium, in order.
    pub regions: Vec<[u8; 32]>,
    /// Monotonic attestation counter of this appliance.
    pub counter: u64,
    /// Milliseconds since power-up, and wall time if the appliance knows it.
    pub uptime_ms: u64,
    pub unix_time: Option<u64>,
    /// Arrival only: [`Attestation::digest`] of the seal it was compared with.
    #[serde(with = "serde_bytes")]
    pub seal_digest: Option<[u8; 32]>,
    /// Arrival only: the host's random challenge (`Request::Arrival`);
    /// `None` for an arrival typed on the console in line mode.
    #[serde(with = "serde_bytes")]
    pub challenge: Option<[u8; 32]>,
    /// Custody-log records that existed when this was signed.
    pub log_records: u64,
    /// SHA-256 of the body of record `log_records - 1` (zeros for an empty log).
    #[serde(with = "serde_bytes")]
    pub log_head: [u8; 32],
}

/// A signed attestation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    pub body: AttestationBody,
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
}

/// Why an attestation (or a seal/arrival pair) is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestError {
    #[error("attestation was signed by {found}, expected {expected}")]
    WrongIdentity { expected: String, found: String },
    #[error("attestation identity is not a valid Ed25519 public key")]
    BadKey,
    #[error("attestation signature does not verify: the attestation was altered or forged")]
    BadSignature,
    #[error("expected {} attestation, got {}", expected.named(), found.named())]
    WrongKind {
        expected: AttestationKind,
        found: AttestationKind,
    },
    #[error("the arrival attestation does not refer to this seal attestation")]
    SealMismatch,
    #[error("the medium changed between seal and arrival: {0}")]
    Changed(Problem),
}

fn signed_bytes(body: &AttestationBody) -> Vec<u8> {
    let mut msg = DOMAIN.to_vec();
    // postcard into a Vec cannot fail for these types.
    msg.extend_from_slice(&postcard::to_allocvec(body).unwrap_or_default());
    msg
}

impl Attestation {
    /// Sign `body` with `key`; `body.identity` is set from the key.
    pub fn sign(mut body: AttestationBody, key: &SigningKey) -> Attestation {
        body.identity = key.verifying_key().to_bytes();
        let signature = key.sign(&signed_bytes(&body)).to_bytes();
        Attestation { body, signature }
    }

    /// SHA-256 of the signed bytes and signature: names this attestation.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(signed_bytes(&self.body));
        h.update(self.signature);
        h.finalize().into()
    }
}

/// Deepest directory nesting walked (the format uses 3 levels).
const MAX_DEPTH: usize = 16;
/// Most files walked; a corrupt directory could otherwise loop forever.
const MAX_FILES: usize = 100_000;

/// Every file on the medium, sorted by path. Fails on an unreadable
/// directory, a loop deeper than 16 levels or more than 100 000 files.
pub fn list_files(store: &mut dyn Store) -> Result<Vec<(String, u64)>, StoreError> {
    let mut files = Vec::new();
    let mut dirs: Vec<(String, usize)> = alloc::vec![(String::new(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        for e in store.list(&dir)? {
            if e.name == "." || e.name == ".." {
                continue;
            }
            let path = if dir.is_empty() {
                e.name.clone()
            } else {
                alloc::format!("{dir}/{}", e.name)
            };
            match e.kind {
                EntryKind::File => files.push((path, e.len)),
                EntryKind::Dir if depth + 1 < MAX_DEPTH => dirs.push((path, depth + 1)),
                EntryKind::Dir => {
                    return Err(StoreError::Io(alloc::format!(
                        "{path}: directories nested deeper than {MAX_DEPTH} levels"
                    )))
                }
            }
            if files.len() + dirs.len() > MAX_FILES {
                return Err(StoreError::Io(alloc::format!(
                    "more than {MAX_FILES} files on the medium"
                )));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Bytes read per request while hashing files (the board has the RAM).
const FILE_READ_BYTES: usize = 256 * 1024;

/// Length and SHA-256 of every file on the medium, sorted by path: the
/// `files` of an [`AttestationBody`]. The host uses this too, to check that
/// the medium it ingests is the one attested. `progress(done, total)`
/// counts bytes hashed; it is called at least every [`PROGRESS_BYTES`] and
/// after each file, so a console host sees signs of life even inside a
/// 1 GiB segment on a slow card.
///
/// Seal and arrival take the same digests from the keyless verifier's reads
/// instead ([`FileDigests`]), so that they read each file once.
pub fn file_digests(
    store: &mut dyn Store,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<FileDigest>, StoreError> {
    FileDigests::new().finish(store, progress)
}

/// [`file_digests`] taken from the reads of another walk over the medium
/// (the keyless verifier's), so that seal and arrival read each file once
/// instead of twice: run the walk on [`FileDigests::tee`] of the store, then
/// [`FileDigests::finish`] reads only what the walk did not and returns
/// exactly what [`file_digests`] returns for the same medium.
///
/// A file's SHA-256 takes its bytes in order, so a read feeds it only where
/// it starts at or before the end of what is hashed so far and reaches past
/// it; a file the walk reads only in part (a key slot's header) or from the
/// middle is finished by reading the rest. The walk must not change the
/// files it reads (a write through the tee drops everything hashed so far,
/// which `finish` then reads again).
#[derive(Default)]
pub struct FileDigests {
    /// Per path: the hash of the file's first `.1` bytes.
    partial: BTreeMap<String, (Sha256, u64)>,
}

impl FileDigests {
    pub fn new() -> Self {
        Self::default()
    }

    /// `store`, with every read also fed to these digests.
    pub fn tee<'a>(&'a mut self, store: &'a mut dyn Store) -> Tee<'a> {
        Tee {
            store,
            digests: self,
        }
    }

    /// Bytes of file contents hashed so far.
    pub fn hashed_bytes(&self) -> u64 {
        self.partial.values().map(|(_, at)| *at).sum()
    }

    fn observe(&mut self, path: &str, offset: u64, data: &[u8]) {
        let end = offset.saturating_add(data.len() as u64);
        match self.partial.get_mut(path) {
            Some((h, at)) if offset <= *at && *at < end => {
                h.update(&data[(*at - offset) as usize..]);
                *at = end;
            }
            Some(_) => {}
            None if offset == 0 && !data.is_empty() => {
                let mut h = Sha256::new();
                h.update(data);
                self.partial.insert(path.into(), (h, end));
            }
            None => {}
        }
    }

    /// A change through the tee: paths may name one file in more than one
    /// spelling (FAT ignores case), so nothing hashed so far is trusted.
    fn forget_all(&mut self) {
        self.partial.clear();
    }

    /// Length and SHA-256 of every file on the medium, sorted by path (the
    /// `files` of an [`AttestationBody`]), reading each file from where the
    /// walk's reads left its hash to its end. `progress(done, total)` counts
    /// the bytes read here, as [`file_digests`] does.
    pub fn finish(
        mut self,
        store: &mut dyn Store,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Vec<FileDigest>, StoreError> {
        let files = list_files(store)?;
        let hashed = |p: &String| self.partial.get(p).map_or(0, |(_, at)| *at);
        let total: u64 = files
            .iter()
            .map(|(p, len)| len.saturating_sub(hashed(p)))
            .sum();
        let mut out = Vec::with_capacity(files.len());
        // Large requests: the FAT stores read a contiguous run of clusters in
        // one device transfer, so the hash, not the request count, sets the pace.
        let mut buf = alloc::vec![0u8; FILE_READ_BYTES];
        let mut done = 0u64;
        let mut next = PROGRESS_BYTES;
        for (path, _) in files {
            let (mut h, mut off) = self.partial.remove(&path).unwrap_or_default();
            loop {
                let n = store.read_at(&path, off, &mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n.min(buf.len())]);
                off += n as u64;
                done += n as u64;
                if done >= next {
                    progress(done.min(total), total);
                    next = done + PROGRESS_BYTES;
                }
            }
            out.push(FileDigest {
                path,
                len: off,
                sha256: h.finalize().into(),
            });
            progress(done.min(total), total);
        }
        Ok(out)
    }
}

/// A [`Store`] whose reads also feed a [`FileDigests`] ([`FileDigests::tee`]).
pub struct Tee<'a> {
    store: &'a mut dyn Store,
    digests: &'a mut FileDigests,
}

impl Store for Tee<'_> {
    fn list(&mut self, dir: &str) -> Result<Vec<Entry>, StoreError> {
        self.store.list(dir)
    }
    fn len(&mut self, path: &str) -> Result<Option<u64>, StoreError> {
        self.store.len(path)
    }
    fn read_at(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError> {
        let n = self.store.read_at(path, offset, buf)?;
        self.digests.observe(path, offset, &buf[..n.min(buf.len())]);
        Ok(n)
    }
    fn write_at(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        self.digests.forget_all();
        self.store.write_at(path, offset, data)
    }
    fn set_len(&mut self, path: &str, len: u64) -> Result<(), StoreError> {
        self.digests.forget_all();
        self.store.set_len(path, len)
    }
    fn create_dir_all(&mut self, path: &str) -> Result<(), StoreError> {
        self.store.create_dir_all(path)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<(), StoreError> {
        self.digests.forget_all();
        self.store.rename(from, to)
    }
    fn remove_file(&mut self, path: &str) -> Result<(), StoreError> {
        self.digests.forget_all();
        self.store.remove_file(path)
    }
    fn remove_dir(&mut self, path: &str) -> Result<(), StoreError> {
        self.store.remove_dir(path)
    }
    fn sync(&mut self, path: &str) -> Result<(), StoreError> {
        self.store.sync(path)
    }
    fn free_space(&mut self) -> Result<Option<u64>, StoreError> {
        self.store.free_space()
    }
}

/// Most bytes a long operation processes between two progress reports.
/// At the slowest SD card speeds (~5 MB/s) this is a report every ~13 s,
/// well inside the host's 120 s idle timeout.
pub const PROGRESS_BYTES: u64 = 64 * 1024 * 1024;

/// Short human form of a public key: the first 8 bytes of its SHA-256 as
/// colon-separated hex pairs of bytes, e.g. `3f2a:91c0:5be4:7d18`.
pub fn fingerprint(pubkey: &[u8; 32]) -> String {
    let h = Sha256::digest(pubkey);
    let mut s = String::with_capacity(19);
    for (i, b) in h.iter().take(8).enumerate() {
        if i > 0 && i % 2 == 0 {
            s.push(':');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The full fingerprint of a public key: SHA-256 of its 32 bytes, as 64
/// lower-case hex digits. This is what a target pins
/// (`--trust-appliance`); [`fingerprint`] is only a short display form.
pub fn full_fingerprint(pubkey: &[u8; 32]) -> String {
    let mut s = String::with_capacity(64);
    for b in Sha256::digest(pubkey) {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Why a custody log does not cover an attestation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoverError {
    #[error(
        "the custody log was cut: the {kind:?} attestation #{counter} was signed over its first {} records (head {head}) and logged as the next, so the log must hold at least {expected} records; it now holds {found}", expected - 1
    )]
    Truncated {
        kind: AttestationKind,
        counter: u64,
        expected: u64,
        found: u64,
        head: String,
    },
    #[error(
        "the custody log was rewritten: record {index} does not hash to the head the {kind:?} attestation #{counter} pins ({head})"
    )]
    HeadMismatch {
        kind: AttestationKind,
        counter: u64,
        index: u64,
        head: String,
    },
    #[error(
        "the custody log does not record the {kind:?} attestation #{counter} right after record {index}"
    )]
    NotRecorded {
        kind: AttestationKind,
        counter: u64,
        index: u64,
    },
}

fn hex32(b: &[u8; 32]) -> String {
    let mut s = String::with_capacity(64);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// Check that a custody log (records `0..n`, already checked with
/// `custody::verify_log`) still holds everything `att` pins: at least
/// `log_records + 1` records, record `log_records - 1` hashing to
/// `log_head`, and record `log_records` naming this attestation (the
/// appliance logs each attestation right after signing it).
pub fn check_log_covers(
    att: &Attestation,
    records: &[crate::custody::LogRecord],
) -> Result<(), CoverError> {
    use crate::custody::Event;
    let b = &att.body;
    let need = b.log_records.saturating_add(1);
    if (records.len() as u64) < need {
        return Err(CoverError::Truncated {
            kind: b.kind,
            counter: b.counter,
            expected: need,
            found: records.len() as u64,
            head: hex32(&b.log_head),
        });
    }
    let head = match b.log_records {
        0 => [0u8; 32],
        n => records[(n - 1) as usize].hash(),
    };
    if head != b.log_head {
        return Err(CoverError::HeadMismatch {
            kind: b.kind,
            counter: b.counter,
            index: b.log_records.saturating_sub(1),
            head: hex32(&b.log_head),
        });
    }
    let digest = att.digest();
    let recorded = match records[b.log_records as usize]
        .decode()
        .map(|e| e.entry.event)
    {
        Ok(Event::Seal { attestation, .. }) => attestation == digest,
        Ok(Event::Arrival {
            attestation: Some(a),
            ..
        }) => a == digest,
        _ => false,
    };
    if !recorded {
        return Err(CoverError::NotRecorded {
            kind: b.kind,
            counter: b.counter,
            index: b.log_records.saturating_sub(1),
        });
    }
    Ok(())
}

/// Check that `att` was signed by `expected_pubkey` and not altered.
pub fn verify_attestation(
    att: &Attestation,
    expected_pubkey: &[u8; 32],
) -> Result<(), AttestError> {
    if &att.body.identity != expected_pubkey {
        return Err(AttestError::WrongIdentity {
            expected: fingerprint(expected_pubkey),
            found: fingerprint(&att.body.identity),
        });
    }
    let key = VerifyingKey::from_bytes(expected_pubkey).map_err(|_| AttestError::BadKey)?;
    let sig = Signature::from_bytes(&att.signature);
    key.verify(&signed_bytes(&att.body), &sig)
        .map_err(|_| AttestError::BadSignature)
}

/// What ingest checks: both attestations signed by `expected_pubkey`, the
/// arrival made against this very seal, and nothing changed in between.
pub fn verify_seal_and_arrival(
    seal: &Attestation,
    arrival: &Attestation,
    expected_pubkey: &[u8; 32],
) -> Result<(), AttestError> {
    verify_attestation(seal, expected_pubkey)?;
    verify_attestation(arrival, expected_pubkey)?;
    if seal.body.kind != AttestationKind::Seal {
        return Err(AttestError::WrongKind {
            expected: AttestationKind::Seal,
            found: seal.body.kind,
        });
    }
    if arrival.body.kind != AttestationKind::Arrival {
        return Err(AttestError::WrongKind {
            expected: AttestationKind::Arrival,
            found: arrival.body.kind,
        });
    }
    if arrival.body.seal_digest != Some(seal.digest()) {
        return Err(AttestError::SealMismatch);
    }
    match compare(&seal.body, &arrival.body).into_iter().next() {
        Some(p) => Err(AttestError::Changed(p)),
        None => Ok(()),
    }
}

/// Where a file path sits in the format's layout
/// (`MGEAR/<capture>/G<nnnn>/SEG-<nnnnn>`); other files are named by path.
pub fn place_of_path(path: &str) -> Place {
    let parts: Vec<&str> = path.split('/').collect();
    if let [root, capture, gen, seg] = parts.as_slice() {
        if root.eq_ignore_ascii_case(layout::ROOT_DIR) {
            if let Some(n) = layout::parse_segment_name(&seg.to_ascii_uppercase()) {
                return Place::Segment {
                    capture: (*capture).into(),
                    generation: layout::parse_generation_dir(&gen.to_ascii_uppercase())
                        .map(u64::from),
                    segment: layout::segment_name(n),
                    record: None,
                };
            }
        }
    }
    Place::File { path: path.into() }
}

/// Everything that differs between a seal and a later state of the medium,
/// most specific first: files (named by capture and segment where they are
/// in one), then raw regions. Empty means identical.
pub fn compare(seal: &AttestationBody, now: &AttestationBody) -> Vec<Problem> {
    let mut problems = Vec::new();
    if seal.medium_id != now.medium_id || seal.medium_bytes != now.medium_bytes {
        problems.push(Problem {
            place: Place::Medium,
            message: alloc::format!(
                "a different medium: sealed {} bytes, now {} bytes",
                seal.medium_bytes,
                now.medium_bytes
            ),
        });
    }
    // Merge the two lists in path order.
    let mut before: Vec<&FileDigest> = seal.files.iter().collect();
    let mut after: Vec<&FileDigest> = now.files.iter().collect();
    before.sort_by(|x, y| x.path.cmp(&y.path));
    after.sort_by(|x, y| x.path.cmp(&y.path));
    let (mut i, mut j) = (0, 0);
    while i < before.len() || j < after.len() {
        let a = before.get(i).copied();
        let b = after.get(j).copied();
        match (a, b) {
            (Some(a), Some(b)) if a.path == b.path => {
                if a.len != b.len {
                    problems.push(Problem {
                        place: place_of_path(&a.path),
                        message: alloc::format!("length changed from {} to {} bytes", a.len, b.len),
                    });
                } else if a.sha256 != b.sha256 {
                    problems.push(Problem {
                        place: place_of_path(&a.path),
                        message: "content changed since the seal".into(),
                    });
                }
                i += 1;
                j += 1;
            }
            (Some(a), b) if b.map(|b| a.path < b.path).unwrap_or(true) => {
                problems.push(Problem {
                    place: place_of_path(&a.path),
                    message: "removed since the seal".into(),
                });
                i += 1;
            }
            (_, Some(b)) => {
                problems.push(Problem {
                    place: place_of_path(&b.path),
                    message: "added since the seal".into(),
                });
                j += 1;
            }
            (_, None) => break,
        }
    }
    let size = seal.region_size.max(1);
    for idx in 0..seal.regions.len().max(now.regions.len()) {
        if seal.regions.get(idx) != now.regions.get(idx) || seal.region_size != now.region_size {
            let start = idx as u64 * size;
            let end = (start + size).min(seal.medium_bytes.max(now.medium_bytes));
            problems.push(Problem {
                place: Place::Region {
                    index: idx as u64,
                    start,
                    end,
                },
                message: "raw bytes changed since the seal".into(),
            });
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn body(kind: AttestationKind) -> AttestationBody {
        AttestationBody {
            kind,
            identity: [0; 32],
            medium_id: [1; 16],
            medium_bytes: 3 * REGION_SIZE,
            files: vec![
                FileDigest {
                    path: "MGEAR/web01/MANIFEST".into(),
                    len: 10,
                    sha256: [2; 32],
                },
                FileDigest {
                    path: "MGEAR/web01/G0001/SEG-00000".into(),
                    len: 99,
                    sha256: [3; 32],
                },
            ],
            captures: 1,
            records: 5,
            region_size: REGION_SIZE,
            regions: vec![[4; 32], [5; 32], [6; 32]],
            counter: 1,
            uptime_ms: 10,
            unix_time: None,
            seal_digest: None,
            challenge: None,
            log_records: 0,
            log_head: [0; 32],
        }
    }

    #[test]
    fn signature_verifies_and_detects_tampering() {
        let k = key();
        let pk = k.verifying_key().to_bytes();
        let att = Attestation::sign(body(AttestationKind::Seal), &k);
        verify_attestation(&att, &pk).unwrap();
        let mut bad = att.clone();
        bad.body.records += 1;
        assert_eq!(
            verify_attestation(&bad, &pk),
            Err(AttestError::BadSignature)
        );
        let other = SigningKey::from_bytes(&[8u8; 32])
            .verifying_key()
            .to_bytes();
        assert!(matches!(
            verify_attestation(&att, &other),
            Err(AttestError::WrongIdentity { .. })
        ));
    }

    #[test]
    fn pair_names_changed_segment() {
        let k = key();
        let pk = k.verifying_key().to_bytes();
        let seal = Attestation::sign(body(AttestationKind::Seal), &k);
        let mut b = body(AttestationKind::Arrival);
        b.seal_digest = Some(seal.digest());
        let ok = Attestation::sign(b.clone(), &k);
        verify_seal_and_arrival(&seal, &ok, &pk).unwrap();
        b.files[1].sha256 = [9; 32];
        b.regions[2] = [0; 32];
        let changed = Attestation::sign(b, &k);
        match verify_seal_and_arrival(&seal, &changed, &pk) {
            Err(AttestError::Changed(p)) => assert_eq!(
                p.place,
                Place::Segment {
                    capture: "web01".into(),
                    generation: Some(1),
                    segment: "SEG-00000".into(),
                    record: None
                }
            ),
            other => panic!("unexpected {other:?}"),
        }
        let problems = compare(&seal.body, &changed.body);
        assert_eq!(problems.len(), 2);
        assert_eq!(
            problems[1].place,
            Place::Region {
                index: 2,
                start: 2 * REGION_SIZE,
                end: 3 * REGION_SIZE
            }
        );
    }

    #[test]
    fn added_and_removed_files_are_named() {
        let seal = body(AttestationKind::Seal);
        let mut now = seal.clone();
        now.files.remove(0);
        now.files.push(FileDigest {
            path: "ZZZ".into(),
            len: 1,
            sha256: [0; 32],
        });
        let p = compare(&seal, &now);
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[0].place,
            Place::File {
                path: "MGEAR/web01/MANIFEST".into()
            }
        );
        assert!(p[0].message.contains("removed"));
        assert_eq!(p[1].place, Place::File { path: "ZZZ".into() });
    }

    #[test]
    fn arrival_must_reference_the_seal() {
        let k = key();
        let pk = k.verifying_key().to_bytes();
        let seal = Attestation::sign(body(AttestationKind::Seal), &k);
        let arrival = Attestation::sign(body(AttestationKind::Arrival), &k);
        assert_eq!(
            verify_seal_and_arrival(&seal, &arrival, &pk),
            Err(AttestError::SealMismatch)
        );
    }

    #[test]
    fn fingerprint_shape() {
        let f = fingerprint(&[0u8; 32]);
        assert_eq!(f.len(), 19);
        assert_eq!(f.matches(':').count(), 3);
    }

    #[test]
    fn seeded_fuzz_mutated_attestation_never_verifies() {
        use rand_chacha::rand_core::{RngCore, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0xa77e57);
        let k = key();
        let pk = k.verifying_key().to_bytes();
        let att = Attestation::sign(body(AttestationKind::Seal), &k);
        let wire = postcard::to_allocvec(&att).unwrap();
        let mut decoded = 0;
        for _ in 0..3_000 {
            let mut m = wire.clone();
            let i = rng.next_u32() as usize % m.len();
            m[i] ^= 1 << (rng.next_u32() % 8);
            if let Ok(back) = postcard::from_bytes::<Attestation>(&m) {
                decoded += 1;
                if back != att {
                    assert!(
                        verify_attestation(&back, &pk).is_err(),
                        "byte {i} changed undetected"
                    );
                }
            }
        }
        assert!(decoded > 0);
    }

    /// A medium with files of several sizes (one larger than a read), an
    /// empty one and one outside the captures.
    fn medium_files() -> (image_format::store::MemStore, Vec<(&'static str, Vec<u8>)>) {
        let big: Vec<u8> = (0..700_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let files = vec![
            ("MGEAR/web01/G0001/SEG-00000", big.clone()),
            ("MGEAR/web01/G0001/SEG-00001", big[..300_001].to_vec()),
            ("MGEAR/web01/G0001/MANIFEST", b"manifest bytes".to_vec()),
            ("MGEAR/web01/KEYS", big[1000..6000].to_vec()),
            ("MGEAR/EMPTY", Vec::new()),
            ("README.TXT", b"hello".to_vec()),
        ];
        let mut store = image_format::store::MemStore::new();
        for (path, data) in &files {
            if let Some(i) = path.rfind('/') {
                store.create_dir_all(&path[..i]).unwrap();
            }
            store.set_len(path, 0).unwrap();
            store.write_at(path, 0, data).unwrap();
        }
        (store, files)
    }

    /// The reads a keyless verify makes: files front to back in pieces, a
    /// header and then the whole file again from 0, only a file's head, a
    /// read from the middle, and files not read at all.
    fn verifier_like_walk(s: &mut dyn Store) {
        let mut buf = vec![0u8; 100_000];
        let mut off = 0;
        loop {
            let n = s
                .read_at("MGEAR/web01/G0001/SEG-00000", off, &mut buf)
                .unwrap();
            if n == 0 {
                break;
            }
            off += n as u64;
        }
        s.read_exact_at("MGEAR/web01/G0001/SEG-00001", 0, &mut buf[..64])
            .unwrap();
        for at in (0..300_001u64).step_by(65_536) {
            let n = (300_001 - at).min(65_536) as usize;
            s.read_exact_at("MGEAR/web01/G0001/SEG-00001", at, &mut buf[..n])
                .unwrap();
        }
        s.read_exact_at("MGEAR/web01/KEYS", 0, &mut buf[..21])
            .unwrap();
        s.read_exact_at("MGEAR/web01/G0001/MANIFEST", 5, &mut buf[..4])
            .unwrap();
    }

    fn fused(store: &mut image_format::store::MemStore) -> (Vec<FileDigest>, u64) {
        let mut sums = FileDigests::new();
        verifier_like_walk(&mut sums.tee(store));
        let mut reread = 0;
        let out = sums.finish(store, &mut |done, _| reread = done).unwrap();
        (out, reread)
    }

    #[test]
    fn digests_from_a_walk_equal_a_separate_pass() {
        let (mut store, files) = medium_files();
        let separate = file_digests(&mut store, &mut |_, _| {}).unwrap();
        let (together, reread) = fused(&mut store);
        assert_eq!(together, separate);
        // Only what the walk did not read from the start is read again:
        // the key slot after its header, the manifest, the readme.
        assert_eq!(reread, (5000 - 21) + 14 + 5);
        // Each is the SHA-256 and length of the file's bytes.
        let mut want: Vec<(&str, Vec<u8>)> = files.clone();
        want.sort();
        for (d, (path, data)) in together.iter().zip(&want) {
            assert_eq!((d.path.as_str(), d.len), (*path, data.len() as u64));
            assert_eq!(d.sha256, <[u8; 32]>::from(Sha256::digest(data)), "{path}");
        }

        // A changed byte: both ways see it, the same, in that file only.
        let path = "MGEAR/web01/G0001/SEG-00001";
        let byte = files[1].1[123_456] ^ 1;
        store.write_at(path, 123_456, &[byte]).unwrap();
        let separate2 = file_digests(&mut store, &mut |_, _| {}).unwrap();
        let (together2, _) = fused(&mut store);
        assert_eq!(together2, separate2);
        let changed: Vec<&str> = together
            .iter()
            .zip(&together2)
            .filter(|(a, b)| a != b)
            .map(|(a, _)| a.path.as_str())
            .collect();
        assert_eq!(changed, [path]);
    }

    #[test]
    fn a_write_through_the_tee_drops_what_was_hashed() {
        let (mut store, _) = medium_files();
        let mut sums = FileDigests::new();
        {
            let mut tee = sums.tee(&mut store);
            verifier_like_walk(&mut tee);
            tee.write_at("MGEAR/web01/G0001/SEG-00000", 7, b"new")
                .unwrap();
        }
        assert_eq!(sums.hashed_bytes(), 0);
        let mut reread = 0;
        let out = sums
            .finish(&mut store, &mut |done, _| reread = done)
            .unwrap();
        assert_eq!(out, file_digests(&mut store, &mut |_, _| {}).unwrap());
        assert_eq!(reread, 700_000 + 300_001 + 14 + 5000 + 5);
    }

    /// `attestations` printed the records an attestation was signed over (12) and `log
    /// --verify` "signed when it held 13": one attestation, two counts.
    #[test]
    fn a_cut_log_names_the_count_the_attestation_was_signed_over() {
        let e = CoverError::Truncated {
            kind: AttestationKind::Arrival,
            counter: 3,
            expected: 13,
            found: 11,
            head: "42bd".into(),
        }
        .to_string();
        assert!(e.contains("signed over its first 12 records"), "{e}");
        assert!(e.contains("at least 13 records; it now holds 11"), "{e}");
    }
}
