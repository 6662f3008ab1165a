//! Custody-log records as the host sees them: the signed, hash-chained
//! entries, and [`verify_log`], which checks a whole log against the
//! appliance's public key.
//!
//! The appliance appends records (the storage framing, length + CRC, and
//! torn-tail recovery live in the firmware core's `custody` module); the
//! `Log` request hands the stored record bodies out undecoded
//! ([`LogRecord`]), so the host checks exactly the bytes that were stored.
//!
//! # Byte layout of a record body
//!
//! ```text
//! body = postcard(SignedEntry)
//! SignedEntry { entry: LogEntry, signature: [u8; 64] }
//! signature = Ed25519(identity, "MGEAR-CUSTODY-v1\0" || postcard(entry))
//! entry.prev = SHA-256(body of the previous record), zeros for record 0
//! ```
//!
//! The hash chain and the signatures make tampering evident: a changed,
//! removed or inserted record breaks the chain or a signature, and
//! [`verify_log`] names the first such record.

use alloc::string::String;
use alloc::vec::Vec;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a `Verify` record with no problems says in `first` when the medium held no capture
/// (nothing was verified): such a record read "keyless verification: no problems" while the
/// command said "medium NOT verified". The record keeps its format: a reader that predates
/// this still decodes it (and says what it said before).
pub const NOTHING_VERIFIED: &str = "the medium holds no capture, nothing verified";

/// Largest record body.
pub const MAX_RECORD_LEN: usize = 4096;
/// Longest free text kept in an event (longer text is cut).
pub const MAX_TEXT: usize = 200;

const DOMAIN: &[u8] = b"MGEAR-CUSTODY-v1\0";

/// Why the appliance crypto-erased.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EraseReason {
    /// The operator asked (`erase`).
    Requested,
    /// Too many wrong PINs.
    PinLockout,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The identity was created; the log starts here.
    Provisioned {
        #[serde(with = "serde_bytes")]
        identity: [u8; 32],
    },
    /// Power-up number `boot`.
    PowerUp {
        boot: u64,
    },
    /// Recovery dropped a torn last record of `bytes` bytes.
    TornTailDropped {
        bytes: u64,
    },
    Unlock,
    /// A wrong PIN; `failures` in a row so far.
    WrongPin {
        failures: u32,
    },
    Lock,
    CaptureBegin {
        name: String,
    },
    CaptureCommit {
        name: String,
        generation: u64,
    },
    /// A keyless verification: `problems` found, the first one described.
    Verify {
        problems: u64,
        first: Option<String>,
    },
    /// Sealed; `attestation` is the seal's digest.
    Seal {
        counter: u64,
        #[serde(with = "serde_bytes")]
        attestation: [u8; 32],
    },
    /// Arrival check; `attestation` present if it passed, else the first problem.
    Arrival {
        #[serde(with = "serde_bytes")]
        attestation: Option<[u8; 32]>,
        problems: u64,
        first: Option<String>,
    },
    /// Crypto-erase: identity zeroized, `key_slots` key-slot files overwritten.
    Erase {
        reason: EraseReason,
        key_slots: u64,
        overwrite_medium: bool,
    },
    /// The host removed `generations` of capture `name` (`medium rm`, `capture --abort`;
    /// none: a capture directory that held no generation). Appended last: a log written
    /// before it existed decodes as it did.
    CaptureRemoved {
        name: String,
        generations: Vec<u64>,
    },
    /// A PIN check was cut off by a power loss (found at the next power-up): it stays
    /// counted as the wrong PIN it was counted as before the check, `failures` in a row.
    /// Appended last, as `CaptureRemoved`.
    PinCheckCutOff {
        failures: u32,
    },
    /// A seal or an arrival check was under way when the power went (found at the next
    /// power-up): it took no effect, and the appliance is in the state it had before it.
    /// An auditor read the log of a seal pulled mid-hash as a verification and a power-up.
    /// Appended last, as `CaptureRemoved`.
    CutOff {
        operation: LongOperation,
    },
}

/// A command that runs for long (it reads the whole medium), named by [`Event::CutOff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LongOperation {
    Seal,
    Arrival,
}

/// One log entry (what is signed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub index: u64,
    #[serde(with = "serde_bytes")]
    pub prev: [u8; 32],
    pub uptime_ms: u64,
    pub unix_time: Option<u64>,
    pub event: Event,
}

/// An entry with its signature (what a record body holds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedEntry {
    pub entry: LogEntry,
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
}

/// A record as read from storage and sent to the host: undecoded, so the
/// host checks exactly the stored bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    pub index: u64,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

impl LogRecord {
    /// SHA-256 of the body: the next entry's `prev`.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(&self.body).into()
    }

    /// Decode the body.
    pub fn decode(&self) -> Result<SignedEntry, LogErrorKind> {
        match postcard::take_from_bytes::<SignedEntry>(&self.body) {
            Ok((e, [])) => Ok(e),
            Ok(_) => Err(LogErrorKind::Malformed(
                "trailing bytes after the entry".into(),
            )),
            Err(e) => Err(LogErrorKind::Malformed(alloc::format!("{e}"))),
        }
    }
}

/// What is wrong with a log record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogErrorKind {
    #[error("record does not decode: {0}")]
    Malformed(String),
    #[error("record index {found} out of sequence")]
    OutOfSequence { found: u64 },
    #[error("hash chain broken: the previous record was altered, removed or inserted")]
    BrokenChain,
    #[error("signature does not verify: the record was altered or forged")]
    BadSignature,
    #[error("the public key is not a valid Ed25519 key")]
    BadKey,
    /// A wrong-PIN count that does not follow from the records before it.
    #[error("{0}")]
    PinCount(PinCount),
}

/// A `wrong PIN` (or `PIN check cut off`) record whose "in a row" count does not follow
/// from the records before it: the firmware counts every attempt before it checks it and
/// only a correct PIN (logged as an unlock), an erase or provisioning starts the count again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinCount {
    /// What the record says.
    pub says: u32,
    /// The record the count follows from.
    pub after: u64,
    /// What that record left the count at: `None` when it started the count again (an
    /// unlock or the provisioning), else the wrong PINs in a row it said.
    pub before: Option<u32>,
}

impl core::fmt::Display for PinCount {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let says = self.says;
        let pins = if says == 1 { "PIN" } else { "PINs" };
        let expected = self.before.unwrap_or(0).saturating_add(1);
        match self.before {
            Some(before) => write!(
                f,
                "it says {says} wrong {pins} in a row after record {} said {before}",
                self.after
            )?,
            None => write!(
                f,
                "it says {says} wrong {pins} in a row, but record {} (an unlock or the \
                 provisioning) started the count again and no wrong PIN is logged since",
                self.after
            )?,
        }
        if says < expected {
            f.write_str(
                " and no unlock, erase or provisioning between: the appliance's PIN counter was \
                 reset outside its firmware",
            )
        } else {
            f.write_str(
                ": records of the wrong PINs between were cut from the log, or the appliance's \
                 PIN counter was changed outside its firmware",
            )
        }
    }
}

/// `verify_log` failure: the first bad record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("custody log record {index}: {kind}")]
pub struct LogError {
    pub index: u64,
    pub kind: LogErrorKind,
}

fn signed_bytes(entry: &LogEntry) -> Vec<u8> {
    let mut msg = DOMAIN.to_vec();
    msg.extend_from_slice(&postcard::to_allocvec(entry).unwrap_or_default());
    msg
}

impl LogEntry {
    /// Sign this entry with the appliance identity: the body a record
    /// stores is `postcard(SignedEntry)` of the result.
    pub fn sign(self, key: &SigningKey) -> SignedEntry {
        let signature = key.sign(&signed_bytes(&self)).to_bytes();
        SignedEntry {
            entry: self,
            signature,
        }
    }
}

/// Check a whole log (records `0..n`, as returned by the `Log` request):
/// sequence, hash chain and every signature against `pubkey`. Returns the
/// decoded entries.
pub fn verify_log(records: &[LogRecord], pubkey: &[u8; 32]) -> Result<Vec<LogEntry>, LogError> {
    let key = VerifyingKey::from_bytes(pubkey).map_err(|_| LogError {
        index: 0,
        kind: LogErrorKind::BadKey,
    })?;
    let mut prev = [0u8; 32];
    let mut out = Vec::with_capacity(records.len());
    for (i, rec) in records.iter().enumerate() {
        let i = i as u64;
        let fail = |kind| LogError { index: i, kind };
        if rec.index != i {
            return Err(fail(LogErrorKind::OutOfSequence { found: rec.index }));
        }
        let signed = rec.decode().map_err(fail)?;
        if signed.entry.index != i {
            return Err(fail(LogErrorKind::OutOfSequence {
                found: signed.entry.index,
            }));
        }
        if signed.entry.prev != prev {
            return Err(fail(LogErrorKind::BrokenChain));
        }
        let sig = Signature::from_bytes(&signed.signature);
        key.verify(&signed_bytes(&signed.entry), &sig)
            .map_err(|_| fail(LogErrorKind::BadSignature))?;
        prev = rec.hash();
        out.push(signed.entry);
    }
    check_pin_counts(&out)?;
    Ok(out)
}

/// The wrong-PIN counts the records say, checked against each other: the chain and the
/// signatures prove the firmware wrote each record, and this proves no record's count was
/// set back by hand between them (zeroing the counter in the secret store buys ten more
/// guesses, and the log said so in plain sight while it verified).
///
/// How the firmware counts (`appliance.rs`, `check_pin`): every attempt counts as wrong
/// before it is checked, so each `WrongPin` or `PinCheckCutOff` record says one more than
/// the one before. A correct PIN starts the count again: logged as an unlock (its record goes
/// in before the reset is saved), or followed by the erase it carried; provisioning starts
/// at zero. A power-up changes nothing. One case reads both ways: the power cut after a
/// correct PIN's unlock record and before its reset was saved leaves the attempt counted,
/// so the `PinCheckCutOff` the next power-up logs may count on from before that unlock.
fn check_pin_counts(entries: &[LogEntry]) -> Result<(), LogError> {
    /// Where the count stands: the record that set it, and the count (`None`: started again).
    #[derive(Clone, Copy)]
    struct Count {
        at: u64,
        said: Option<u32>,
    }
    // Unknown until a record sets it (a log whose start was cut says nothing of it).
    let mut count: Option<Count> = None;
    // The count before an unlock that only power-ups have followed since.
    let mut before_unlock: Option<Count> = None;
    for e in entries {
        let says = match e.event {
            Event::Provisioned { .. } => {
                count = Some(Count {
                    at: e.index,
                    said: None,
                });
                before_unlock = None;
                continue;
            }
            Event::Unlock => {
                before_unlock = count;
                count = Some(Count {
                    at: e.index,
                    said: None,
                });
                continue;
            }
            // Nothing counts after an erase (the PIN is gone).
            Event::Erase { .. } => {
                count = None;
                before_unlock = None;
                continue;
            }
            Event::PowerUp { .. } | Event::TornTailDropped { .. } => continue,
            Event::WrongPin { failures } => (failures, false),
            Event::PinCheckCutOff { failures } => (failures, true),
            _ => {
                before_unlock = None;
                continue;
            }
        };
        let (says, cut_off) = says;
        let follows =
            |c: Option<Count>| c.is_none_or(|c| c.said.unwrap_or(0).checked_add(1) == Some(says));
        let cut_after_unlock = cut_off && before_unlock.is_some() && follows(before_unlock);
        if let Some(c) = count {
            if !follows(Some(c)) && !cut_after_unlock {
                return Err(LogError {
                    index: e.index,
                    kind: LogErrorKind::PinCount(PinCount {
                        says,
                        after: c.at,
                        before: c.said,
                    }),
                });
            }
        }
        count = Some(Count {
            at: e.index,
            said: Some(says),
        });
        before_unlock = None;
    }
    Ok(())
}

/// Cut `s` to at most [`MAX_TEXT`] bytes on a character boundary, ending in `…` where it
/// was cut (a record that stopped mid-command, "`mgear capture --abort --medium MEDIUM", read
/// as the advice itself).
pub fn clip(s: &str) -> String {
    const MORE: &str = "…";
    if s.len() <= MAX_TEXT {
        return s.into();
    }
    let mut end = MAX_TEXT - MORE.len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::from(s[..end].trim_end());
    out.push_str(MORE);
    out
}

/// What each event says, the same words on the appliance's console (`log`) and in
/// `mgear appliance log` (the console printed the records' debug form: byte arrays in decimal
/// where the host shows fingerprints and hex).
impl core::fmt::Display for Event {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        fn hex(f: &mut core::fmt::Formatter<'_>, bytes: &[u8]) -> core::fmt::Result {
            bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
        }
        match self {
            Event::Provisioned { identity } => write!(
                f,
                "provisioned: identity {}",
                crate::attest::full_fingerprint(identity)
            ),
            Event::PowerUp { boot } => write!(f, "power-up #{boot}"),
            Event::TornTailDropped { bytes } => {
                write!(f, "recovery dropped a torn last record ({bytes} bytes)")
            }
            Event::Unlock => f.write_str("unlocked: the medium accepts writes"),
            Event::WrongPin { failures } => write!(f, "wrong PIN ({failures} in a row)"),
            Event::PinCheckCutOff { failures } => write!(
                f,
                "a PIN check was cut off by a power loss: counted as a wrong PIN ({failures} in \
                 a row)"
            ),
            Event::CutOff {
                operation: LongOperation::Seal,
            } => f.write_str(
                "a seal was cut off by a power loss: the appliance is not sealed (unlock it and \
                 run seal again)",
            ),
            Event::CutOff {
                operation: LongOperation::Arrival,
            } => f.write_str(
                "an arrival check was cut off by a power loss: nothing was attested (run \
                 arrival again)",
            ),
            Event::Lock => f.write_str("locked: the medium is read-only"),
            // Sent before the medium is opened: a run refused then ("already captured") wrote
            // nothing, and "started writing" said it had.
            Event::CaptureBegin { name } => write!(f, "a capture of {name} was started"),
            Event::CaptureRemoved { name, generations } => match generations.as_slice() {
                [] => write!(f, "capture {name} removed (it held no generation)"),
                [g] => write!(f, "capture {name} generation {g} removed"),
                many => {
                    write!(f, "capture {name} generations ")?;
                    for (i, g) in many.iter().enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        write!(f, "{g}")?;
                    }
                    f.write_str(" removed")
                }
            },
            Event::CaptureCommit { name, generation } => {
                write!(
                    f,
                    "capture {name} generation {generation} committed (witnessed)"
                )
            }
            Event::Verify { problems, first } => match (problems, first) {
                // What there was to say of a verification that found nothing wrong (an empty
                // medium: nothing verified).
                (0, Some(why)) => write!(f, "keyless verification: {why}"),
                (0, None) => f.write_str("keyless verification: no problems"),
                (n, Some(first)) => {
                    write!(f, "keyless verification: {n} problem(s), first: {first}")
                }
                (n, None) => write!(f, "keyless verification: {n} problem(s)"),
            },
            Event::Seal {
                counter,
                attestation,
            } => {
                f.write_str("sealed: attestation ")?;
                hex(f, attestation)?;
                write!(f, " (counter {counter})")
            }
            Event::Arrival {
                attestation,
                problems,
                first,
            } => match attestation {
                Some(a) => {
                    f.write_str("arrival check passed: attestation ")?;
                    hex(f, a)
                }
                None => {
                    write!(f, "arrival check FAILED: {problems} problem(s)")?;
                    match first {
                        Some(first) => write!(f, ", first: {first}"),
                        None => Ok(()),
                    }
                }
            },
            Event::Erase {
                reason,
                key_slots,
                overwrite_medium,
            } => write!(
                f,
                "crypto-erased ({}): identity secret destroyed, {key_slots} key slot file(s) \
                 destroyed, medium {}",
                match reason {
                    EraseReason::Requested => "requested",
                    EraseReason::PinLockout => "too many wrong PINs",
                },
                // The record is signed before the identity goes, so before the medium is
                // zeroed: the appliance keeps zeroing it at every power-up until it is done.
                if *overwrite_medium {
                    "zeroed (ordered in this record; finished at power-up if the power was cut)"
                } else {
                    "kept"
                }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[3u8; 32])
    }

    /// Records as the appliance would store them, built without storage.
    fn chain(n: u64) -> Vec<LogRecord> {
        let mut prev = [0u8; 32];
        let mut out = Vec::new();
        for index in 0..n {
            let entry = LogEntry {
                index,
                prev,
                uptime_ms: index * 10,
                unix_time: None,
                event: Event::PowerUp { boot: index },
            };
            let body = postcard::to_allocvec(&entry.sign(&key())).unwrap();
            let rec = LogRecord { index, body };
            prev = rec.hash();
            out.push(rec);
        }
        out
    }

    #[test]
    fn a_signed_chain_verifies_and_decodes() {
        let recs = chain(4);
        let entries = verify_log(&recs, &key().verifying_key().to_bytes()).unwrap();
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[3].event, Event::PowerUp { boot: 3 });
        assert_eq!(entries[3].prev, recs[2].hash());
    }

    #[test]
    fn altered_reordered_or_foreign_records_are_named() {
        let pk = key().verifying_key().to_bytes();
        let mut recs = chain(4);
        let mut e = recs[2].decode().unwrap();
        e.entry.event = Event::PowerUp { boot: 99 };
        recs[2].body = postcard::to_allocvec(&e).unwrap();
        let err = verify_log(&recs, &pk).unwrap_err();
        assert_eq!((err.index, err.kind), (2, LogErrorKind::BadSignature));

        let mut recs = chain(4);
        recs.swap(1, 2);
        assert_eq!(verify_log(&recs, &pk).unwrap_err().index, 1);

        let mut recs = chain(3);
        recs[1].body.push(0);
        assert!(matches!(
            verify_log(&recs, &pk).unwrap_err().kind,
            LogErrorKind::Malformed(_)
        ));

        let other = SigningKey::from_bytes(&[4u8; 32])
            .verifying_key()
            .to_bytes();
        assert_eq!(
            verify_log(&chain(2), &other).unwrap_err().kind,
            LogErrorKind::BadSignature
        );
    }

    /// Records of `events`, signed and chained as the appliance stores them.
    fn log_of(events: &[Event]) -> Vec<LogRecord> {
        let mut prev = [0u8; 32];
        let mut out = Vec::new();
        for (index, event) in events.iter().enumerate() {
            let index = index as u64;
            let entry = LogEntry {
                index,
                prev,
                uptime_ms: 0,
                unix_time: None,
                event: event.clone(),
            };
            let rec = LogRecord {
                index,
                body: postcard::to_allocvec(&entry.sign(&key())).unwrap(),
            };
            prev = rec.hash();
            out.push(rec);
        }
        out
    }

    /// Wrong-PIN counts that the firmware cannot have written in that order fail: the
    /// counter zeroed in the secret store between power-ups verified ("14 records, hash
    /// chain and signatures intact") and bought ten more guesses.
    #[test]
    fn wrong_pin_counts_must_follow_from_the_records_before() {
        let pk = key().verifying_key().to_bytes();
        let provisioned = Event::Provisioned { identity: pk };
        let wrong = |failures| Event::WrongPin { failures };
        let cut = |failures| Event::PinCheckCutOff { failures };
        let up = |boot| Event::PowerUp { boot };
        let mut reset = alloc::vec![provisioned.clone()];
        reset.extend((1..=9).map(wrong));
        reset.extend([up(2), wrong(1), wrong(2), wrong(3)]);
        let err = verify_log(&log_of(&reset), &pk).unwrap_err();
        assert_eq!(err.index, 11);
        let msg = err.to_string();
        assert!(
            msg.contains("record 11: it says 1 wrong PIN in a row after record 9 said 9")
                && msg.contains("reset outside its firmware"),
            "{msg}"
        );
        // A wrong PIN's record cut out of the middle.
        let skipped = [provisioned.clone(), wrong(1), wrong(3)];
        let msg = verify_log(&log_of(&skipped), &pk).unwrap_err().to_string();
        assert!(msg.contains("were cut from the log"), "{msg}");
        // A count that does not start at 1 after an unlock.
        let after_unlock = [provisioned.clone(), wrong(1), Event::Unlock, wrong(2)];
        let err = verify_log(&log_of(&after_unlock), &pk).unwrap_err();
        assert_eq!(err.index, 3);
        assert!(err.to_string().contains("record 2 (an unlock"), "{err}");

        // Honest logs: power-ups carry the count on, a correct PIN (unlock) starts it again,
        // a check cut off by power counts, a torn wrong-PIN record is logged again as cut
        // off, the lockout erases, and a cut between an unlock's record and its reset
        // leaves that attempt counted.
        let honest = [
            provisioned,
            wrong(1),
            up(2),
            wrong(2),
            cut(3),
            Event::Unlock,
            Event::Lock,
            wrong(1),
            Event::Unlock,
            up(3),
            cut(2),
            wrong(3),
            Event::TornTailDropped { bytes: 9 },
            up(4),
            cut(4),
            Event::Unlock,
            up(5),
            cut(1),
        ]
        .into_iter()
        .chain((2..=10).map(wrong))
        .chain([Event::Erase {
            reason: EraseReason::PinLockout,
            key_slots: 1,
            overwrite_medium: false,
        }])
        .collect::<Vec<_>>();
        verify_log(&log_of(&honest), &pk).unwrap();
        // A log whose start is gone says nothing of the count before its first record.
        verify_log(&log_of(&[up(4), wrong(6), wrong(7)]), &pk).unwrap();
    }

    #[test]
    fn clip_respects_char_boundaries() {
        let s = "é".repeat(300);
        let c = clip(&s);
        assert!(c.len() <= MAX_TEXT);
        let kept = c.strip_suffix('…').unwrap();
        assert!(s.starts_with(kept) && kept.len() > MAX_TEXT - 8);
        // What fits is kept as it is.
        let short = "a".repeat(MAX_TEXT);
        assert_eq!(clip(&short), short);
    }
}
