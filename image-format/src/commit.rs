//! The signed commit of one generation (`MGEAR/<name>/G<nnnn>/COMMIT`).
//!
//! Encryption to `target.pub` says nothing about who wrote a capture, and a
//! manifest MAC only proves knowledge of the data key. The commit is what a
//! capture site (its `site.key`) and the appliance (its identity key) sign,
//! so the target can accept a generation only under a key it pinned. It
//! names the generation completely: capture id, name, generation, parent,
//! manifest root hash (which covers index and segment hashes) and the
//! blake3 hashes of the capture's key-slot files, so neither the data nor
//! who can open it can be changed under a signature.
//!
//! # Byte layout (little-endian; FORMAT.md "COMMIT")
//!
//! ```text
//! 0    8  magic blake3("MotionGear commit v1")[0..8]
//! 8    2  version major (1)
//! 10   2  version minor (0)
//! 12   4  body length B (<= 256)
//! 16   B  body:
//!         16 capture id
//!          4 generation
//!          4 parent generation (0 = none)
//!          1 name length N, N bytes of name
//!         32 manifest root hash (blake3 of the manifest's signed bytes)
//!         32 blake3 of MGEAR/<name>/KEYS    (zeros when absent)
//!         32 blake3 of MGEAR/<name>/KEYPASS (zeros when absent)
//! 16+B 2  signature count S (<= 16)
//!      S x 97 bytes: role (1 = capture site, 2 = appliance),
//!                    32-byte Ed25519 public key, 64-byte signature
//! end  4  CRC-32 of everything before
//! ```
//!
//! Each signature is Ed25519 over `"MGEAR-COMMIT-v1\0" || bytes[0..16+B]`
//! (header and body): the domain string keeps a commit signature from ever
//! being valid as any other message the same key signs. The commit digest
//! printed in receipts is blake3 of `bytes[0..16+B]`.
//!
//! Write order (crash safety): the writer finishes `MANIFEST` first; COMMIT
//! is written afterwards (atomically, via `COMMIT.TMP` and rename), so a
//! COMMIT never names a manifest that is not on the medium; a crash in
//! between leaves a finished but unsigned generation, which a re-run of the
//! capture with `--sign` signs.

use alloc::string::String;
use alloc::vec::Vec;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};

use crate::error::{Error, Location, Result, StoreCtx};
use crate::layout::{self, Rd, KEYPASS_FILE, KEYS_FILE, VERSION_MAJOR, VERSION_MINOR};
use crate::medium;
use crate::store::Store;

/// File name of a generation's commit.
pub const COMMIT_FILE: &str = "COMMIT";

// DO NOT MODIFY (see layout.rs): blake3("MotionGear commit v1")[0..8]
/// blake3("MotionGear commit v1")[0..8]
pub const COMMIT_MAGIC: [u8; 8] = [0x22, 0x8a, 0xb3, 0xea, 0x50, 0xa8, 0x13, 0x3a];

/// Domain separation prefix of the signed message.
pub const SIGN_DOMAIN: &[u8] = b"MGEAR-COMMIT-v1\0";

/// Most signatures one COMMIT holds.
pub const MAX_SIGNATURES: usize = 16;
/// Largest body (a 32-byte name makes it 153 bytes).
const MAX_BODY: usize = 256;
/// Largest valid COMMIT file: readers refuse anything longer unread.
pub const MAX_COMMIT_LEN: u64 = (16 + MAX_BODY + 2 + MAX_SIGNATURES * SIG_LEN + 4) as u64;
const SIG_LEN: usize = 1 + 32 + 64;
/// Largest key-slot file hashed into a commit (an age file with a few
/// recipients is well under 1 KiB); larger ones are refused unread.
pub const MAX_KEY_SLOT_LEN: u64 = 1024 * 1024;

/// Who made a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignerRole {
    /// A capture site's `site.key`.
    Site,
    /// An appliance's identity key (the commit it witnessed).
    Appliance,
}

impl SignerRole {
    fn to_byte(self) -> u8 {
        match self {
            SignerRole::Site => 1,
            SignerRole::Appliance => 2,
        }
    }
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(SignerRole::Site),
            2 => Some(SignerRole::Appliance),
            _ => None,
        }
    }
    /// `site` or `appliance`.
    pub fn as_str(self) -> &'static str {
        match self {
            SignerRole::Site => "site",
            SignerRole::Appliance => "appliance",
        }
    }
}

/// What is signed: one generation, completely named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub capture_id: [u8; 16],
    pub name: String,
    pub generation: u32,
    /// Parent generation of a delta (0 = none).
    pub parent: u32,
    pub manifest_root: [u8; 32],
    /// blake3 of the KEYS file (zeros: absent).
    pub keys_hash: [u8; 32],
    /// blake3 of the KEYPASS file (zeros: absent).
    pub keypass_hash: [u8; 32],
}

/// One signature over a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitSignature {
    pub role: SignerRole,
    pub public_key: [u8; 32],
    pub signature: [u8; 64],
}

/// A COMMIT file: the commit and its signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitFile {
    pub commit: Commit,
    pub signatures: Vec<CommitSignature>,
}

impl Commit {
    /// Header and body: the bytes signatures and the digest cover.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let name = self.name.as_bytes();
        let name = &name[..name.len().min(255)];
        let mut body = Vec::with_capacity(160);
        body.extend_from_slice(&self.capture_id);
        body.extend_from_slice(&self.generation.to_le_bytes());
        body.extend_from_slice(&self.parent.to_le_bytes());
        body.push(name.len() as u8);
        body.extend_from_slice(name);
        body.extend_from_slice(&self.manifest_root);
        body.extend_from_slice(&self.keys_hash);
        body.extend_from_slice(&self.keypass_hash);
        let mut v = Vec::with_capacity(16 + body.len());
        v.extend_from_slice(&COMMIT_MAGIC);
        v.extend_from_slice(&VERSION_MAJOR.to_le_bytes());
        v.extend_from_slice(&VERSION_MINOR.to_le_bytes());
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(&body);
        v
    }

    /// The message an Ed25519 signature covers (domain-separated).
    pub fn message(&self) -> Vec<u8> {
        let mut m = SIGN_DOMAIN.to_vec();
        m.extend_from_slice(&self.signed_bytes());
        m
    }

    /// blake3 of the signed bytes: names this commit in receipts.
    pub fn digest(&self) -> [u8; 32] {
        *blake3::hash(&self.signed_bytes()).as_bytes()
    }

    /// Sign with `key` in `role`.
    pub fn sign(&self, role: SignerRole, key: &ed25519_dalek::SigningKey) -> CommitSignature {
        use ed25519_dalek::Signer;
        CommitSignature {
            role,
            public_key: key.verifying_key().to_bytes(),
            signature: key.sign(&self.message()).to_bytes(),
        }
    }

    /// Does `sig` verify over this commit?
    pub fn verifies(&self, sig: &CommitSignature) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&sig.public_key) else {
            return false;
        };
        key.verify(&self.message(), &Signature::from_bytes(&sig.signature))
            .is_ok()
    }

    /// The commit of machine set generation `generation`: signed over its set
    /// manifest; the set has no key slots of its own (each disk stream's
    /// COMMIT covers that stream's).
    pub fn of_set(file: &crate::set::SetFile, generation: u32) -> Commit {
        Commit {
            capture_id: file.set.capture_id,
            name: file.set.name.clone(),
            generation,
            parent: file.set.parent,
            manifest_root: file.root,
            keys_hash: [0; 32],
            keypass_hash: [0; 32],
        }
    }

    /// The commit of `manifest` with the given key-slot file hashes.
    pub fn of_manifest(
        manifest: &layout::ManifestFile,
        keys_hash: Option<[u8; 32]>,
        keypass_hash: Option<[u8; 32]>,
    ) -> Commit {
        let m = &manifest.manifest;
        Commit {
            capture_id: m.capture_id,
            name: m.name.clone(),
            generation: m.generation,
            parent: m.parent,
            manifest_root: manifest.root,
            keys_hash: keys_hash.unwrap_or([0u8; 32]),
            keypass_hash: keypass_hash.unwrap_or([0u8; 32]),
        }
    }
}

impl CommitFile {
    /// The whole file.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.commit.signed_bytes();
        let n = self.signatures.len().min(MAX_SIGNATURES);
        v.extend_from_slice(&(n as u16).to_le_bytes());
        for s in &self.signatures[..n] {
            v.push(s.role.to_byte());
            v.extend_from_slice(&s.public_key);
            v.extend_from_slice(&s.signature);
        }
        let c = crc32fast::hash(&v);
        v.extend_from_slice(&c.to_le_bytes());
        v
    }

    /// Decodes untrusted bytes and checks the framing (magic, version, CRC,
    /// lengths, name). Signatures are not checked here: see [`Commit::verifies`].
    pub fn decode(b: &[u8]) -> Result<CommitFile, &'static str> {
        if b.len() as u64 > MAX_COMMIT_LEN {
            return Err("COMMIT is larger than any valid commit");
        }
        if b.len() < 16 + 2 + 4 {
            return Err("COMMIT truncated");
        }
        if b[..8] != COMMIT_MAGIC {
            return Err("not a COMMIT (bad magic)");
        }
        let crc_at = b.len() - 4;
        let stored = u32::from_le_bytes([b[crc_at], b[crc_at + 1], b[crc_at + 2], b[crc_at + 3]]);
        if crc32fast::hash(&b[..crc_at]) != stored {
            return Err("COMMIT CRC mismatch");
        }
        let mut r = Rd::new(&b[8..crc_at]);
        if r.u16()? != VERSION_MAJOR {
            return Err("COMMIT written by an unsupported major version of the format");
        }
        let _minor = r.u16()?;
        let body_len = r.u32()? as usize;
        if body_len > MAX_BODY {
            return Err("COMMIT body too long");
        }
        let mut body = Rd::new(r.bytes(body_len)?);
        let capture_id = body.arr()?;
        let generation = body.u32()?;
        let parent = body.u32()?;
        let name_len = body.u8()? as usize;
        let name =
            core::str::from_utf8(body.bytes(name_len)?).map_err(|_| "COMMIT name is not UTF-8")?;
        if layout::validate_name(name).is_err() {
            return Err("COMMIT holds an invalid capture name");
        }
        let commit = Commit {
            capture_id,
            name: name.into(),
            generation,
            parent,
            manifest_root: body.arr()?,
            keys_hash: body.arr()?,
            keypass_hash: body.arr()?,
        };
        if body.pos() != body_len {
            return Err("COMMIT body has trailing bytes");
        }
        if generation == 0 || generation > layout::MAX_GENERATIONS || parent >= generation {
            return Err("COMMIT generation numbers are inconsistent");
        }
        let n = r.u16()? as usize;
        if n > MAX_SIGNATURES {
            return Err("COMMIT holds too many signatures");
        }
        let mut signatures = Vec::with_capacity(n);
        for _ in 0..n {
            let role =
                SignerRole::from_byte(r.u8()?).ok_or("COMMIT signature has an unknown role")?;
            signatures.push(CommitSignature {
                role,
                public_key: r.arr()?,
                signature: r.arr()?,
            });
        }
        if r.pos() != crc_at - 8 {
            return Err("COMMIT has trailing bytes");
        }
        Ok(CommitFile { commit, signatures })
    }

    /// Add `sig` unless the same key already signed in the same role (a
    /// re-signature replaces the old one, so re-running stays idempotent).
    pub fn add(&mut self, sig: CommitSignature) -> Result<(), &'static str> {
        if let Some(old) = self
            .signatures
            .iter_mut()
            .find(|s| s.role == sig.role && s.public_key == sig.public_key)
        {
            *old = sig;
            return Ok(());
        }
        if self.signatures.len() >= MAX_SIGNATURES {
            return Err("COMMIT already holds the most signatures allowed");
        }
        self.signatures.push(sig);
        Ok(())
    }
}

// ---------------------------------------------------------------- on the medium

/// `MGEAR/<name>/G<nnnn>/COMMIT`
pub fn commit_path(name: &str, generation: u32) -> String {
    layout::generation_file(name, generation, COMMIT_FILE)
}

/// The COMMIT of a generation, decoded (framing only); `Ok(None)` if it has
/// none. A file longer than [`MAX_COMMIT_LEN`] is refused unread.
pub fn read_commit<S: Store + ?Sized>(
    store: &mut S,
    name: &str,
    generation: u32,
) -> Result<Option<CommitFile>> {
    let path = commit_path(name, generation);
    let at = Location::capture(name).generation(generation).file(&path);
    let Some(bytes) = medium::read_file(store, &path, MAX_COMMIT_LEN, &at)? else {
        return Ok(None);
    };
    CommitFile::decode(&bytes)
        .map(Some)
        .map_err(|w| Error::corrupt(at, w))
}

/// One digest of capture `name`'s key slot files as the medium holds them
/// now (`KEYS` and `KEYPASS`, each or its absence): a capture host notes it
/// when it writes them and compares it when it resumes, so a slot damaged or
/// replaced in between is found before more is stored under it (a resume
/// once finished a capture whose `KEYS` was truncated, and keyless verify
/// called it good: the manifest binds the slots as the run found them).
pub fn key_slots_digest<S: Store + ?Sized>(store: &mut S, name: &str) -> Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    for file in [KEYS_FILE, KEYPASS_FILE] {
        h.update(file.as_bytes());
        match medium::key_slot_digest(store, name, file)? {
            Some(d) => h.update(&[1]).update(&d),
            None => h.update(&[0]),
        };
    }
    Ok(*h.finalize().as_bytes())
}

/// The commit the medium's current files make for a generation: its
/// manifest and the capture's key-slot files as they are now, or for a
/// machine set its set manifest (`crate::set`). `Ok(None)` if the
/// generation has neither (unfinished).
pub fn expected_commit<S: Store + ?Sized>(
    store: &mut S,
    name: &str,
    generation: u32,
) -> Result<Option<Commit>> {
    let Some(mf) = medium::read_manifest(store, name, generation)? else {
        // A machine set's generation is signed over its set manifest.
        return Ok(
            crate::set::read_set(store, name, generation)?.map(|f| Commit::of_set(&f, generation))
        );
    };
    let keys = medium::key_slot_digest(store, name, KEYS_FILE)?;
    let keypass = medium::key_slot_digest(store, name, KEYPASS_FILE)?;
    Ok(Some(Commit::of_manifest(&mf, keys, keypass)))
}

/// The key-slot file a target opens a capture with: `KEYS` (an identity) or `KEYPASS` (a
/// passphrase).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotFile {
    Keys,
    Keypass,
}

impl SlotFile {
    /// Of the two slots, the one this is not.
    pub fn other(self) -> SlotFile {
        match self {
            SlotFile::Keys => SlotFile::Keypass,
            SlotFile::Keypass => SlotFile::Keys,
        }
    }

    /// "KEYS, the recipient slot".
    pub fn describe(self) -> &'static str {
        match self {
            SlotFile::Keys => "KEYS, the recipient slot",
            SlotFile::Keypass => "KEYPASS, the passphrase slot",
        }
    }
}

/// `expected` (the commit the medium's files make now) as the COMMIT `signed` signs it where
/// only the key slot a target does not open with (`used`'s other) differs: the slot it opens
/// with is as signed, and the manifest, so the data key it unwraps is the one the capture
/// site signed, and the other slot (damaged, or removed) takes nothing from it. A damaged
/// `KEYS` refused an intact passphrase backup, with no override. `None` where anything else
/// differs (then [`check_commit`] says what).
pub fn as_signed_but_unused_slot(
    signed: &Commit,
    expected: &Commit,
    used: SlotFile,
) -> Option<Commit> {
    let mut mended = expected.clone();
    match used.other() {
        SlotFile::Keys => mended.keys_hash = signed.keys_hash,
        SlotFile::Keypass => mended.keypass_hash = signed.keypass_hash,
    }
    (mended == *signed && mended != *expected).then_some(mended)
}

/// What [`check_commit`] says of a capture whose key slots were erased and nothing else
/// changed: a crypto-erase or an appliance's PIN lockout, not damage or tampering.
pub const SLOTS_GONE: &str = "the capture's key slots are gone from the medium (as a \
     crypto-erase or a PIN lockout leaves it: `mgear appliance info` says); everything else is \
     as signed, but nothing can decrypt it any more";

/// Problems of a generation's COMMIT, keyless: it must decode, name exactly
/// what the medium holds (`expected`), and every signature in it must verify.
/// Which keys are trusted is the target's decision, not checked here.
pub fn check_commit(file: &CommitFile, expected: &Commit) -> Option<String> {
    let none = [0u8; 32];
    let slots_gone = expected.keys_hash == none
        && expected.keypass_hash == none
        && (file.commit.keys_hash != none || file.commit.keypass_hash != none)
        && Commit {
            keys_hash: none,
            keypass_hash: none,
            ..file.commit.clone()
        } == *expected;
    if slots_gone {
        // What an appliance's erase (or PIN lockout) leaves: everything as
        // signed but the key slots, which nobody can decrypt without.
        return Some(SLOTS_GONE.into());
    }
    if file.commit != *expected {
        let c = &file.commit;
        let slots = c.keys_hash != expected.keys_hash || c.keypass_hash != expected.keypass_hash;
        let manifest = Commit {
            keys_hash: expected.keys_hash,
            keypass_hash: expected.keypass_hash,
            ..c.clone()
        } != *expected;
        // One slot as signed, the other not: named, with the one that still opens the data
        // (a damaged KEYS read as if the passphrase backup were lost too).
        let one = match (
            c.keys_hash == expected.keys_hash,
            c.keypass_hash == expected.keypass_hash,
        ) {
            (false, true) if c.keypass_hash != none => Some((SlotFile::Keys, "--passphrase-file")),
            (true, false) if c.keys_hash != none => Some((SlotFile::Keypass, "--identity")),
            _ => None,
        };
        return Some(match (manifest, slots, one) {
            (false, true, Some((bad, opens))) => alloc::format!(
                "COMMIT does not match {}, on the medium (damaged or replaced after the \
                 generation was signed); {}, is as signed: an ingest with {opens} opens the \
                 capture",
                bad.describe(),
                bad.other().describe()
            ),
            (false, true, None) => {
                "COMMIT does not match the capture's key slots on the medium (KEYS or KEYPASS \
                 was replaced after the generation was signed, or the generation was put here \
                 from another capture)"
                    .into()
            }
            (true, false, _) => "COMMIT does not match the generation's MANIFEST on the medium \
                                 (the generation was replaced after it was signed)"
                .into(),
            _ => "COMMIT does not match the manifest and key slots on the medium (the generation \
                  and its key slots were replaced after it was signed)"
                .into(),
        });
    }
    if !file.signatures.iter().all(|s| file.commit.verifies(s)) {
        return Some("a COMMIT signature does not verify (altered or forged)".into());
    }
    None
}

/// Write (or replace) a generation's COMMIT atomically: `COMMIT.TMP`, sync,
/// rename, sync.
pub fn write_commit<S: Store + ?Sized>(store: &mut S, file: &CommitFile) -> Result<()> {
    let path = commit_path(&file.commit.name, file.commit.generation);
    let tmp = alloc::format!("{path}.TMP");
    store.remove_file(&tmp).at(&tmp)?;
    store.write_at(&tmp, 0, &file.encode()).at(&tmp)?;
    store.sync(&tmp).at(&tmp)?;
    store.rename(&tmp, &path).at(&path)?;
    store.sync(&path).at(&path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn sample() -> Commit {
        Commit {
            capture_id: [3; 16],
            name: "web01".into(),
            generation: 2,
            parent: 1,
            manifest_root: [4; 32],
            keys_hash: [5; 32],
            keypass_hash: [0; 32],
        }
    }

    #[test]
    fn magic_matches_its_string() {
        assert_eq!(
            COMMIT_MAGIC[..],
            blake3::hash(b"MotionGear commit v1").as_bytes()[..8]
        );
    }

    #[test]
    fn round_trip_and_signatures() {
        let site = SigningKey::from_bytes(&[1; 32]);
        let app = SigningKey::from_bytes(&[2; 32]);
        let c = sample();
        let mut f = CommitFile {
            commit: c.clone(),
            signatures: Vec::new(),
        };
        f.add(c.sign(SignerRole::Site, &site)).unwrap();
        f.add(c.sign(SignerRole::Appliance, &app)).unwrap();
        // Re-signing replaces rather than piling up.
        f.add(c.sign(SignerRole::Site, &site)).unwrap();
        assert_eq!(f.signatures.len(), 2);
        let bytes = f.encode();
        assert!(bytes.len() as u64 <= MAX_COMMIT_LEN);
        let back = CommitFile::decode(&bytes).unwrap();
        assert_eq!(back, f);
        assert!(back.signatures.iter().all(|s| back.commit.verifies(s)));
        // A signature over another generation does not verify over this one.
        let mut other = c.clone();
        other.generation = 3;
        assert!(!other.verifies(&f.signatures[0]));
        let mut other = c;
        other.manifest_root[0] ^= 1;
        assert!(!other.verifies(&f.signatures[0]));
    }

    #[test]
    fn erased_key_slots_are_told_from_a_replaced_generation() {
        let c = sample();
        let f = CommitFile {
            signatures: vec![c.sign(SignerRole::Site, &SigningKey::from_bytes(&[9; 32]))],
            commit: c.clone(),
        };
        assert_eq!(check_commit(&f, &c), None);
        let erased = Commit {
            keys_hash: [0; 32],
            ..c.clone()
        };
        assert!(check_commit(&f, &erased)
            .unwrap()
            .contains("key slots are gone"));
        // Slots gone and the manifest changed too: tampering, said as such.
        let replaced = Commit {
            manifest_root: [7; 32],
            ..erased
        };
        assert!(check_commit(&f, &replaced)
            .unwrap()
            .contains("replaced after"));
        let other_slots = Commit {
            keys_hash: [6; 32],
            ..c
        };
        assert!(check_commit(&f, &other_slots)
            .unwrap()
            .contains("replaced after"));
    }

    /// One slot damaged, the other as signed: named, with the option that still opens the
    /// capture; and the commit as signed is what a target opening with the intact slot
    /// checks against (a damaged KEYS refused the passphrase backup, with no override).
    #[test]
    fn one_damaged_slot_is_named_and_the_other_still_opens() {
        let c = Commit {
            keypass_hash: [8; 32],
            ..sample()
        };
        let f = CommitFile {
            signatures: vec![c.sign(SignerRole::Site, &SigningKey::from_bytes(&[9; 32]))],
            commit: c.clone(),
        };
        let keys_damaged = Commit {
            keys_hash: [6; 32],
            ..c.clone()
        };
        let why = check_commit(&f, &keys_damaged).unwrap();
        assert!(
            why.contains("KEYS, the recipient slot")
                && why.contains("KEYPASS, the passphrase slot, is as signed")
                && why.contains("--passphrase-file"),
            "{why}"
        );
        let mended = as_signed_but_unused_slot(&c, &keys_damaged, SlotFile::Keypass).unwrap();
        assert_eq!(mended, c);
        assert_eq!(check_commit(&f, &mended), None);
        // Opened with the damaged slot itself: nothing is mended.
        assert_eq!(
            as_signed_but_unused_slot(&c, &keys_damaged, SlotFile::Keys),
            None
        );
        // The other slot damaged, or the manifest changed too: not mended either.
        let keypass_damaged = Commit {
            keypass_hash: [1; 32],
            ..c.clone()
        };
        assert!(check_commit(&f, &keypass_damaged)
            .unwrap()
            .contains("--identity"));
        assert_eq!(
            as_signed_but_unused_slot(&c, &keypass_damaged, SlotFile::Keypass),
            None
        );
        let replaced = Commit {
            manifest_root: [7; 32],
            ..keys_damaged
        };
        assert_eq!(
            as_signed_but_unused_slot(&c, &replaced, SlotFile::Keypass),
            None
        );
        // A capture with no passphrase slot whose KEYS changed: no other slot to offer.
        let f = CommitFile {
            signatures: vec![],
            commit: sample(),
        };
        let why = check_commit(
            &f,
            &Commit {
                keys_hash: [6; 32],
                ..sample()
            },
        )
        .unwrap();
        assert!(why.contains("KEYS or KEYPASS was replaced"), "{why}");
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let c = sample();
        let f = CommitFile {
            signatures: vec![c.sign(SignerRole::Site, &SigningKey::from_bytes(&[9; 32]))],
            commit: c,
        };
        let bytes = f.encode();
        for i in 0..bytes.len() {
            let mut x = bytes.clone();
            x[i] ^= 0x40;
            match CommitFile::decode(&x) {
                Err(_) => {}
                // The CRC is not cryptographic, but it catches every single flip.
                Ok(g) => panic!("flip at {i} accepted: {g:?}"),
            }
        }
        assert!(CommitFile::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(CommitFile::decode(&[]).is_err());
        let mut long = bytes.clone();
        long.resize(MAX_COMMIT_LEN as usize + 1, 0);
        assert!(CommitFile::decode(&long).is_err());
    }
}
