//! Keys: the per-capture data key, its HKDF subkeys, the key slot files
//! (plain age files on the medium) and the source-side key cache.
//!
//! The medium never holds a key that decrypts data: only age files wrapped
//! to the target's X25519 recipients (`KEYS`) and/or to a passphrase
//! (`KEYPASS`). `age -d -i target.key MGEAR/web01/KEYS` prints the 56-byte
//! payload (magic, capture id, data key) described in FORMAT.md.

use std::io::{Read, Write};
use std::sync::Arc;

use crate::encode::Cipher;
use age::secrecy::{ExposeSecret, SecretString};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Error, Location, Result, StoreCtx};
use crate::layout::{self, KEYPASS_FILE, KEYS_FILE};
use crate::store::Store;

/// The random 256-bit key of one capture (all its generations).
///
/// Zeroized on drop; `Debug` never prints it.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; 32]>);

impl core::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Result<Self> {
        Ok(DataKey(Zeroizing::new(random()?)))
    }

    /// Wraps raw key bytes (e.g. read from a key cache).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DataKey(Zeroizing::new(bytes))
    }

    /// The raw key bytes: handle with care.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Writes a source-side key cache file (mode 0600) so that a
    /// later delta capture, which only has the target's public key, can
    /// reuse this capture's data key. Never put this file on the medium.
    pub fn save_cache(&self, path: &std::path::Path, name: &str) -> Result<()> {
        self.write_cache(path, name, None, None)
    }

    /// [`DataKey::save_cache`] that also records the capture id (an `id`
    /// line), so `mgear sync` can tell a target serving another capture.
    pub fn save_cache_with_id(
        &self,
        path: &std::path::Path,
        name: &str,
        capture_id: &[u8; 16],
    ) -> Result<()> {
        self.write_cache(path, name, Some(capture_id), None)
    }

    /// [`DataKey::save_cache_with_id`] for a capture being created, with
    /// the key slots it gets ([`CachedSlots`]): a later resume or delta
    /// that names other recipients or a passphrase is told the slots stay
    /// as they were made (`recipient` lines and a `passphrase-slot` line
    /// after a `slots` line; age's slots do not name their recipients).
    pub fn save_cache_with_slots(
        &self,
        path: &std::path::Path,
        name: &str,
        capture_id: &[u8; 16],
        slots: &CachedSlots,
    ) -> Result<()> {
        self.write_cache(path, name, Some(capture_id), Some(slots))
    }

    fn write_cache(
        &self,
        path: &std::path::Path,
        name: &str,
        capture_id: Option<&[u8; 16]>,
        slots: Option<&CachedSlots>,
    ) -> Result<()> {
        layout::validate_name(name)?;
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        let mut text = Zeroizing::new(String::new());
        text.push_str("# MotionGear data key cache: secret; keep it at the source site, never on the medium\n");
        text.push_str(&format!("capture {name}\n"));
        if let Some(id) = capture_id {
            text.push_str("id ");
            for b in id {
                text.push_str(&format!("{b:02x}"));
            }
            text.push('\n');
        }
        text.push_str("key ");
        for b in self.0.iter() {
            text.push_str(&format!("{b:02x}"));
        }
        text.push('\n');
        if let Some(slots) = slots {
            text.push_str("slots\n");
            for r in &slots.recipients {
                text.push_str(&format!("recipient {r}\n"));
            }
            if slots.passphrase {
                text.push_str("passphrase-slot\n");
            }
        }
        // A new 0600 file renamed into place: a symlink planted at `path`
        // is replaced, never written through (see `crate::private`).
        crate::private::replace(path, text.as_bytes()).map_err(io)
    }

    /// The key slots a key cache records for its capture: `None` for caches
    /// written without them (by [`DataKey::save_cache_with_id`], or before
    /// they were recorded).
    pub fn cached_slots(path: &std::path::Path) -> Result<Option<CachedSlots>> {
        let (_, text) = read_cache_text(path)?;
        if !text.lines().any(|l| l.trim() == "slots") {
            return Ok(None);
        }
        Ok(Some(CachedSlots {
            recipients: text
                .lines()
                .filter_map(|l| l.strip_prefix("recipient "))
                .map(|r| r.trim().to_string())
                .collect(),
            passphrase: text.lines().any(|l| l.trim() == "passphrase-slot"),
        }))
    }

    /// The capture id a key cache records (`None` for caches written
    /// without one, by [`DataKey::save_cache`] or older releases).
    pub fn cached_capture_id(path: &std::path::Path) -> Result<Option<[u8; 16]>> {
        let (shown, text) = read_cache_text(path)?;
        let Some(hex) = text.lines().find_map(|l| l.strip_prefix("id ")) else {
            return Ok(None);
        };
        let hex = hex.trim().as_bytes();
        let mut id = [0u8; 16];
        if hex.len() != 32 {
            return Err(Error::Usage(format!(
                "key cache {shown}: the id line does not hold 32 hex digits"
            )));
        }
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            id[i] = core::str::from_utf8(pair)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 16).ok())
                .ok_or_else(|| {
                    Error::Usage(format!("key cache {shown}: the id line is not hex"))
                })?;
        }
        Ok(Some(id))
    }

    /// Reads a key cache written by [`DataKey::save_cache`] for capture `name`.
    pub fn load_cache(path: &std::path::Path, name: &str) -> Result<Self> {
        let (shown, text) = read_cache_text(path)?;
        // The operator's to put right (exit 2), not the API misused: it was called an I/O
        // error whose hint was to reconnect something.
        let bad = |why: &str| Error::NeedKey {
            name: name.into(),
            why: format!(
                "its key cache file {shown} is damaged ({why}): restore it from a backup of the \
                 key cache, or unlock the capture another way (--passphrase-file, if it has a \
                 passphrase slot)"
            ),
        };
        let mut cap = None;
        let mut key = None;
        for line in text.lines() {
            if let Some(n) = line.strip_prefix("capture ") {
                cap = Some(n.trim().to_string());
            } else if let Some(k) = line.strip_prefix("key ") {
                let k = k.trim().as_bytes();
                if k.len() != 64 {
                    return Err(bad("the key line does not hold 64 hex digits"));
                }
                let mut out = Zeroizing::new([0u8; 32]);
                for (i, pair) in k.chunks_exact(2).enumerate() {
                    let hex = core::str::from_utf8(pair)
                        .ok()
                        .and_then(|s| u8::from_str_radix(s, 16).ok());
                    out[i] = hex.ok_or_else(|| bad("the key line is not hex"))?;
                }
                key = Some(DataKey(out));
            }
        }
        match (cap, key) {
            (Some(c), Some(k)) if c == name => Ok(k),
            (Some(c), Some(_)) => Err(bad(&format!("it is for capture {c}, not {name}"))),
            _ => Err(bad("not a MotionGear key cache (no capture/key lines)")),
        }
    }
}

/// A key cache file's text, and its path as messages show it.
fn read_cache_text(path: &std::path::Path) -> Result<(String, Zeroizing<String>)> {
    let shown = path.display().to_string();
    let bytes = crate::private::read(path).map_err(|source| Error::Io {
        path: shown.clone(),
        source,
    })?;
    let text = core::str::from_utf8(&bytes)
        .map_err(|_| Error::Usage(format!("key cache {shown}: the file is not text")))?;
    Ok((shown, Zeroizing::new(text.to_string())))
}

/// The key slots a capture was created with, as its key cache records them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedSlots {
    /// The `KEYS` slot's recipients (`age1...`), as given.
    pub recipients: Vec<String>,
    /// Whether it has a `KEYPASS` (passphrase) slot.
    pub passphrase: bool,
}

/// How a reader (or a delta capture) gets at the data key.
pub enum Unlock {
    /// An age X25519 identity (`AGE-SECRET-KEY-1...`) matching a `KEYS` recipient.
    Identity(age::x25519::Identity),
    /// The identities of an age identity file (one per line): any that matches a `KEYS`
    /// recipient opens it, as with `age -d -i FILE`.
    Identities(Vec<age::x25519::Identity>),
    /// The passphrase of the `KEYPASS` slot.
    Passphrase(SecretString),
    /// The data key itself (from a source-side key cache).
    Key(DataKey),
}

impl core::fmt::Debug for Unlock {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Unlock::Identity(_) => "Unlock::Identity(<redacted>)",
            Unlock::Identities(_) => "Unlock::Identities(<redacted>)",
            Unlock::Passphrase(_) => "Unlock::Passphrase(<redacted>)",
            Unlock::Key(_) => "Unlock::Key(<redacted>)",
        })
    }
}

/// Random bytes from the operating system.
pub fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b)
        .map_err(|e| Error::Backend(format!("no randomness from the OS: {e}")))?;
    Ok(b)
}

/// HKDF labels: one per purpose, so no subkey serves two roles.
const LABEL_ENC: &[u8] = b"mgear v1 record encryption";
const LABEL_CHUNK_ID: &[u8] = b"mgear v1 chunk id";
const LABEL_INDEX: &[u8] = b"mgear v1 index";
const LABEL_MAC: &[u8] = b"mgear v1 manifest mac";
const LABEL_SEGMENT: &[u8] = b"mgear v1 segment key";
const LABEL_INDEX_BLOB: &[u8] = b"mgear v1 index blob key";
const KEY_CHECK: &[u8] = b"mgear v1 key check";

fn hkdf32(salt: &[u8], ikm: &[u8], info: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit: cannot fail.
    if hk.expand_multi_info(info, out.as_mut()).is_err() {
        unreachable!("HKDF output length is fixed at 32 bytes");
    }
    out
}

/// A subkey of capture `capture_id` for a purpose named by `info`, derived
/// like the format's own subkeys (HKDF-SHA256, the capture id as salt). For
/// protocols built on a capture's data key (e.g. `mgear sync`): give each
/// purpose its own label so no subkey serves two roles.
pub fn derive_subkey(key: &DataKey, capture_id: &[u8; 16], info: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    hkdf32(capture_id, key.as_bytes(), info)
}

/// The keyed chunk-id key of a capture: the ids it makes are the ones in
/// the capture's INDEX, so another program can compare a disk with a
/// capture chunk by chunk without decrypting anything.
#[derive(Clone)]
pub struct ChunkIdKey(Zeroizing<[u8; 32]>);

impl core::fmt::Debug for ChunkIdKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ChunkIdKey(<redacted>)")
    }
}

impl ChunkIdKey {
    /// Derive it from the data key and capture id.
    pub fn derive(key: &DataKey, capture_id: &[u8; 16]) -> Self {
        ChunkIdKey(hkdf32(capture_id, key.as_bytes(), &[LABEL_CHUNK_ID]))
    }

    /// The key itself (a reader's subkey).
    pub(crate) fn from_subkey(k: &[u8; 32]) -> Self {
        ChunkIdKey(Zeroizing::new(*k))
    }

    /// Keyed id of `plaintext`.
    pub fn id(&self, plaintext: &[u8]) -> [u8; 32] {
        crate::encode::chunk_id(&self.0, plaintext)
    }
}

/// The subkeys of one capture, derived from its data key and capture id.
#[derive(Clone)]
pub(crate) struct Subkeys {
    enc: Zeroizing<[u8; 32]>,
    pub(crate) chunk_id: Arc<Zeroizing<[u8; 32]>>,
    index: Zeroizing<[u8; 32]>,
    mac: Zeroizing<[u8; 32]>,
    capture_id: [u8; 16],
}

impl Subkeys {
    pub(crate) fn derive(key: &DataKey, capture_id: &[u8; 16]) -> Self {
        let k = key.as_bytes();
        Subkeys {
            enc: hkdf32(capture_id, k, &[LABEL_ENC]),
            chunk_id: Arc::new(hkdf32(capture_id, k, &[LABEL_CHUNK_ID])),
            index: hkdf32(capture_id, k, &[LABEL_INDEX]),
            mac: hkdf32(capture_id, k, &[LABEL_MAC]),
            capture_id: *capture_id,
        }
    }

    /// A keyed value stored in clear (journal, manifest) to tell a wrong
    /// key from a damaged file.
    pub(crate) fn key_check(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.mac);
        h.update(KEY_CHECK);
        h.update(&self.capture_id);
        *h.finalize().as_bytes()
    }

    /// MAC of a manifest's signed bytes.
    pub(crate) fn manifest_mac(&self, signed: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.mac, signed).as_bytes()
    }

    /// Cipher of one segment: its own key from a fresh random salt, so record
    /// numbers never repeat as nonces under one key, even across resumes.
    pub(crate) fn segment_cipher(&self, salt: &[u8; 32], generation: u32, segment: u32) -> Cipher {
        let k = hkdf32(
            salt,
            self.enc.as_ref(),
            &[
                LABEL_SEGMENT,
                &generation.to_le_bytes(),
                &segment.to_le_bytes(),
            ],
        );
        Cipher::new(&k)
    }

    /// Cipher of one index blob (INDEX file or IPART batch), fresh salt each.
    pub(crate) fn index_cipher(&self, salt: &[u8; 32]) -> Cipher {
        let k = hkdf32(salt, self.index.as_ref(), &[LABEL_INDEX_BLOB]);
        Cipher::new(&k)
    }
}

fn age_encrypt(recipients: &[&dyn age::Recipient], payload: &[u8]) -> Result<Vec<u8>> {
    let backend = |e: &dyn core::fmt::Display| Error::Backend(format!("age: {e}"));
    let enc =
        age::Encryptor::with_recipients(recipients.iter().copied()).map_err(|e| backend(&e))?;
    let mut out = Vec::new();
    let mut w = enc.wrap_output(&mut out).map_err(|e| backend(&e))?;
    w.write_all(payload).map_err(|e| backend(&e))?;
    w.finish().map_err(|e| backend(&e))?;
    Ok(out)
}

fn write_atomic<S: Store + ?Sized>(store: &mut S, path: &str, bytes: &[u8]) -> Result<()> {
    let tmp = format!("{path}.TMP");
    store.remove_file(&tmp).at(&tmp)?;
    store.write_at(&tmp, 0, bytes).at(&tmp)?;
    store.sync(&tmp).at(&tmp)?;
    store.rename(&tmp, path).at(path)?;
    store.sync(path).at(path)
}

/// Writes the key slot files of a new capture.
pub(crate) fn write_key_slots<S: Store + ?Sized>(
    store: &mut S,
    name: &str,
    capture_id: &[u8; 16],
    key: &DataKey,
    recipients: &[age::x25519::Recipient],
    passphrase: Option<&SecretString>,
    work_factor: Option<u8>,
) -> Result<()> {
    let payload = Zeroizing::new(layout::encode_key_payload(capture_id, key.as_bytes()));
    let dir = layout::capture_dir(name);
    // A run killed while it made them may have left one slot of another capture id: this
    // capture's slots are exactly the ones written here.
    for (file, written) in [
        (KEYS_FILE, !recipients.is_empty()),
        (KEYPASS_FILE, passphrase.is_some()),
    ] {
        if !written {
            let path = format!("{dir}/{file}");
            store.remove_file(&path).at(&path)?;
        }
    }
    if !recipients.is_empty() {
        let rs: Vec<&dyn age::Recipient> = recipients
            .iter()
            .map(|r| r as &dyn age::Recipient)
            .collect();
        let file = age_encrypt(&rs, payload.as_ref())?;
        write_atomic(store, &format!("{dir}/{KEYS_FILE}"), &file)?;
    }
    if let Some(p) = passphrase {
        let mut r = age::scrypt::Recipient::new(p.clone());
        if let Some(n) = work_factor {
            r.set_work_factor(n);
        }
        let file = age_encrypt(&[&r], payload.as_ref())?;
        write_atomic(store, &format!("{dir}/{KEYPASS_FILE}"), &file)?;
    }
    Ok(())
}

/// The highest scrypt work factor (log2 N) a passphrase slot may ask for:
/// 2^20 takes 1 GiB of memory and a few seconds. Captures write 2^18 to 2^20;
/// a slot asking for more was altered (2^23 would take 8 GiB), and is refused
/// before any memory is taken.
pub const MAX_WORK_FACTOR: u8 = 20;

/// Unwraps capture `name`'s data key from its key slot files.
///
/// Returns the key and the capture id stored next to it. A key that is not
/// for this capture gives [`Error::WrongKey`] ("this key does not open
/// capture web01").
pub fn unlock_data_key<S: Store + ?Sized>(
    store: &mut S,
    name: &str,
    unlock: &Unlock,
) -> Result<(DataKey, Option<[u8; 16]>)> {
    let name = &crate::verify::stored_name(store, name)?;
    let (file, tries): (&str, Vec<Vec<Box<dyn age::Identity>>>) = match unlock {
        Unlock::Key(k) => return Ok((k.clone(), None)),
        Unlock::Identity(id) => (KEYS_FILE, vec![vec![Box::new(id.clone())]]),
        Unlock::Identities(ids) => (
            KEYS_FILE,
            vec![ids
                .iter()
                .map(|id| Box::new(id.clone()) as Box<dyn age::Identity>)
                .collect()],
        ),
        Unlock::Passphrase(p) => {
            // As typed, then its other Unicode forms: the same accented text typed on another
            // system is composed otherwise (NFC / NFD), and "does not open" gave no hint why.
            // Each form costs a scrypt only where the one before did not open it, and each is
            // tried alone: age stops at the first scrypt identity that fails.
            use unicode_normalization::UnicodeNormalization;
            let typed = p.expose_secret();
            let mut forms = vec![p.clone()];
            if !typed.is_ascii() {
                for other in [
                    Zeroizing::new(typed.nfc().collect::<String>()),
                    Zeroizing::new(typed.nfd().collect::<String>()),
                ] {
                    if forms.iter().all(|f| f.expose_secret() != other.as_str()) {
                        forms.push(SecretString::from(other.to_string()));
                    }
                }
            }
            let ids = forms
                .into_iter()
                .map(|f| {
                    let mut id = age::scrypt::Identity::new(f);
                    // The slot names its own cost: a fixed cap, not age's timing-based
                    // default, so an altered slot cannot ask for gigabytes of memory.
                    id.set_max_work_factor(MAX_WORK_FACTOR);
                    vec![Box::new(id) as Box<dyn age::Identity>]
                })
                .collect();
            (KEYPASS_FILE, ids)
        }
    };
    let path = format!("{}/{file}", layout::capture_dir(name));
    let at = Location::capture(name).file(&path);
    let other = format!(
        "{}/{}",
        layout::capture_dir(name),
        if file == KEYS_FILE {
            KEYPASS_FILE
        } else {
            KEYS_FILE
        }
    );
    // Neither slot left: what an erase leaves. "Unlock it with the other one" was advice
    // nobody could follow.
    if store.len(&path).ok().flatten().is_none() && store.len(&other).ok().flatten().is_none() {
        // The slots are mirrored on every medium of a span: with one medium of it given,
        // "no key opens this capture any more" was untrue while the others hold copies.
        let others: Vec<String> = store
            .span()
            .map(|v| {
                let here = v.attached();
                v.map()
                    .members
                    .iter()
                    .filter(|m| !m.lost && !here.contains(&m.ordinal))
                    .map(|m| v.map().describe(m.ordinal))
                    .collect()
            })
            .unwrap_or_default();
        let why = if others.is_empty() {
            format!(
                "it has no key slot left ({path} and {other} are missing): they were erased \
                 (the appliance's crypto-erase, or removed from the medium), so no key opens \
                 this capture any more"
            )
        } else {
            format!(
                "the media given hold no key slot of it ({path} and {other} are missing: \
                 erased or removed here); every medium of its span holds a copy of them: give \
                 {} too (--medium or --appliance)",
                others.join(" or ")
            )
        };
        return Err(Error::NeedKey {
            name: name.into(),
            why,
        });
    }
    let bytes =
        crate::medium::read_file(store, &path, 64 * 1024, &at)?.ok_or_else(|| Error::NeedKey {
            name: name.into(),
            why: format!(
                "it has no {} key slot ({path} is missing); unlock it with {}",
                if file == KEYS_FILE {
                    "recipient"
                } else {
                    "passphrase"
                },
                if file == KEYS_FILE {
                    "its passphrase"
                } else {
                    "the target identity"
                }
            ),
        })?;
    let corrupt = |what: String| Error::corrupt(at.clone(), what);
    // age's own text for a header that does not parse asks whether the tool is out of date
    // ("Have you tried upgrading"): here it is a damaged slot.
    let dec = age::Decryptor::new(&bytes[..]).map_err(|e| {
        corrupt(match e {
            age::DecryptError::UnknownFormat => {
                "not a readable age file: its header is damaged (it does not parse)".into()
            }
            other => format!(
                "not a readable age file: {}",
                other.to_string().lines().next().unwrap_or_default()
            ),
        })
    })?;
    let mut payload = Zeroizing::new(Vec::new());
    let mut tries = tries.into_iter();
    let first = tries.next().unwrap_or_default();
    let mut decrypted = dec.decrypt(first.iter().map(|i| i.as_ref()));
    for identities in tries {
        if !matches!(
            decrypted,
            Err(age::DecryptError::DecryptionFailed
                | age::DecryptError::KeyDecryptionFailed
                | age::DecryptError::NoMatchingKeys)
        ) {
            break;
        }
        // A decryptor is spent by a try: the header is read again for the next form.
        decrypted = age::Decryptor::new(&bytes[..])
            .and_then(|dec| dec.decrypt(identities.iter().map(|i| i.as_ref())));
    }
    let mut reader = decrypted.map_err(|e| match e {
        age::DecryptError::NoMatchingKeys
        | age::DecryptError::DecryptionFailed
        | age::DecryptError::KeyDecryptionFailed => Error::WrongKey { name: name.into() },
        age::DecryptError::ExcessiveWork { required, .. } => corrupt(format!(
            "the passphrase slot asks for a scrypt work factor of 2^{required}, above the \
                 2^{MAX_WORK_FACTOR} any capture writes: it was altered (refused before taking \
                 its memory); unlock the capture with the target identity instead"
        )),
        other => corrupt(format!("age: {other}")),
    })?;
    reader
        .read_to_end(&mut payload)
        .map_err(|e| corrupt(format!("age payload: {e}")))?;
    let (capture_id, key) = layout::decode_key_payload(&payload).map_err(|w| corrupt(w.into()))?;
    Ok((DataKey::from_bytes(key), Some(capture_id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An identity file's several identities: the one that matches opens the slot wherever it
    /// stands; none matching is the wrong key.
    #[test]
    fn any_identity_of_several_opens_the_recipient_slot() {
        let mut store = crate::store::MemStore::new();
        store.create_dir_all(&layout::capture_dir("web05")).unwrap();
        let target = age::x25519::Identity::generate();
        let key = DataKey::from_bytes([5; 32]);
        write_key_slots(
            &mut store,
            "web05",
            &[5; 16],
            &key,
            &[target.to_public()],
            None,
            None,
        )
        .unwrap();
        let other = || age::x25519::Identity::generate();
        let ids = Unlock::Identities(vec![other(), target.clone(), other()]);
        let (k, id) = unlock_data_key(&mut store, "web05", &ids).unwrap();
        assert_eq!((k.as_bytes(), id), (&[5u8; 32], Some([5; 16])));
        let wrong = Unlock::Identities(vec![other(), other()]);
        assert!(matches!(
            unlock_data_key(&mut store, "web05", &wrong),
            Err(Error::WrongKey { .. })
        ));
    }

    #[test]
    fn new_key_slots_leave_no_slot_of_an_earlier_start_behind() {
        let mut store = crate::store::MemStore::new();
        let dir = layout::capture_dir("web04");
        store.create_dir_all(&dir).unwrap();
        let target = age::x25519::Identity::generate();
        // A run killed after its recipient slot (capture id 1), before its passphrase slot.
        write_key_slots(
            &mut store,
            "web04",
            &[1; 16],
            &DataKey::from_bytes([1; 32]),
            &[target.to_public()],
            None,
            None,
        )
        .unwrap();
        // The capture started again with the passphrase only: capture id 2, another key.
        let pass = SecretString::from("correct horse battery".to_string());
        write_key_slots(
            &mut store,
            "web04",
            &[2; 16],
            &DataKey::from_bytes([2; 32]),
            &[],
            Some(&pass),
            Some(2),
        )
        .unwrap();
        assert!(store.len(&format!("{dir}/{KEYS_FILE}")).unwrap().is_none());
        let (_, id) =
            unlock_data_key(&mut store, "web04", &Unlock::Passphrase(pass.clone())).unwrap();
        assert_eq!(id, Some([2; 16]));
    }

    #[test]
    fn a_passphrase_slot_asking_for_more_work_than_any_capture_writes_is_refused_unrun() {
        let mut store = crate::store::MemStore::new();
        let dir = layout::capture_dir("web01");
        store.create_dir_all(&dir).unwrap();
        let pass = SecretString::from("correct horse battery".to_string());
        let key = DataKey::from_bytes([3; 32]);
        write_key_slots(
            &mut store,
            "web01",
            &[1; 16],
            &key,
            &[],
            Some(&pass),
            Some(2),
        )
        .unwrap();
        let path = format!("{dir}/{KEYPASS_FILE}");
        let unlock = Unlock::Passphrase(pass.clone());
        let (k, id) = unlock_data_key(&mut store, "web01", &unlock).unwrap();
        assert_eq!((k.as_bytes(), id), (key.as_bytes(), Some([1; 16])));
        // The stanza line `-> scrypt SALT 2` made to ask for 2^23 (8 GiB).
        let text = String::from_utf8_lossy(
            &crate::medium::read_file(&mut store, &path, 1 << 16, &Location::capture("web01"))
                .unwrap()
                .unwrap(),
        )
        .into_owned();
        let altered = text.replacen(" 2\n", " 23\n", 1);
        assert_ne!(altered, text);
        write_atomic(&mut store, &path, altered.as_bytes()).unwrap();
        let e = unlock_data_key(&mut store, "web01", &unlock).unwrap_err();
        assert!(e.to_string().contains("work factor of 2^23"), "{e}");
    }

    /// The same accented passphrase composed another way (NFD typed where NFC was captured,
    /// as two systems' keyboards and editors do): it opens the slot. It was "does not open",
    /// with no hint why. Another passphrase still does not.
    #[test]
    fn a_passphrase_in_another_unicode_form_opens_the_slot() {
        let mut store = crate::store::MemStore::new();
        store.create_dir_all(&layout::capture_dir("uni")).unwrap();
        let nfc = "Gr\u{fc}\u{df}e-fa\u{e7}ade-\u{65e5}\u{672c}-\u{f1}and\u{fa}";
        let nfd = "Gru\u{308}\u{df}e-fac\u{327}ade-\u{65e5}\u{672c}-n\u{303}andu\u{301}";
        assert_ne!(nfc, nfd);
        let key = DataKey::from_bytes([4; 32]);
        let pass = SecretString::from(nfc.to_string());
        write_key_slots(&mut store, "uni", &[4; 16], &key, &[], Some(&pass), Some(2)).unwrap();
        for typed in [nfc, nfd] {
            let unlock = Unlock::Passphrase(SecretString::from(typed.to_string()));
            let (k, _) = unlock_data_key(&mut store, "uni", &unlock).unwrap();
            assert_eq!(k.as_bytes(), key.as_bytes());
        }
        let wrong = Unlock::Passphrase(SecretString::from(format!("{nfd}x")));
        assert!(matches!(
            unlock_data_key(&mut store, "uni", &wrong),
            Err(Error::WrongKey { .. })
        ));
    }

    #[test]
    fn debug_never_prints_keys() {
        let k = DataKey::from_bytes([0xab; 32]);
        let s = format!("{k:?} {:?}", Unlock::Key(k.clone()));
        assert!(!s.contains("ab") && !s.contains("171"), "{s}");
    }

    #[test]
    fn subkeys_are_distinct_and_depend_on_capture() {
        let k = DataKey::from_bytes([1; 32]);
        let a = Subkeys::derive(&k, &[1; 16]);
        let b = Subkeys::derive(&k, &[2; 16]);
        let all = [*a.enc, **a.chunk_id, *a.index, *a.mac];
        for i in 0..all.len() {
            for j in i + 1..all.len() {
                assert_ne!(all[i], all[j]);
            }
        }
        assert_ne!(a.key_check(), b.key_check());
        assert_ne!(*a.enc, *b.enc);
    }

    #[test]
    fn key_cache_round_trip_is_private() {
        let dir = std::env::temp_dir().join(format!("mgear-keycache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("web01.key");
        let k = DataKey::generate().unwrap();
        k.save_cache(&p, "web01").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(
            DataKey::load_cache(&p, "web01").unwrap().as_bytes(),
            k.as_bytes()
        );
        let e = DataKey::load_cache(&p, "db02").unwrap_err().to_string();
        assert!(e.contains("for capture web01, not db02"), "{e}");
        assert_eq!(DataKey::cached_capture_id(&p).unwrap(), None);
        k.save_cache_with_id(&p, "web01", &[0xa5; 16]).unwrap();
        assert_eq!(DataKey::cached_capture_id(&p).unwrap(), Some([0xa5; 16]));
        assert_eq!(
            DataKey::load_cache(&p, "web01").unwrap().as_bytes(),
            k.as_bytes()
        );
        assert_eq!(DataKey::cached_slots(&p).unwrap(), None, "not recorded");
        for slots in [
            CachedSlots {
                recipients: vec!["age1one".into(), "age1two".into()],
                passphrase: false,
            },
            CachedSlots {
                recipients: Vec::new(),
                passphrase: true,
            },
        ] {
            k.save_cache_with_slots(&p, "web01", &[0xa5; 16], &slots)
                .unwrap();
            assert_eq!(DataKey::cached_slots(&p).unwrap(), Some(slots));
            assert_eq!(DataKey::cached_capture_id(&p).unwrap(), Some([0xa5; 16]));
            assert_eq!(
                DataKey::load_cache(&p, "web01").unwrap().as_bytes(),
                k.as_bytes()
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
