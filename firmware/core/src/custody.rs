//! The custody log: append-only, hash-chained, Ed25519-signed records of
//! everything that happens to the appliance, kept in [`LogStorage`].
//!
//! # Byte layout
//!
//! ```text
//! storage:  record*
//! record:   len: u32 LE      length of body (1..=MAX_RECORD_LEN)
//!           crc: u32 LE      CRC-32/ISO-HDLC of body
//!           body: [u8; len]  postcard(SignedEntry)
//! ```
//!
//! The body (a signed, hash-chained entry) and its verification are the
//! appliance API's (`mgear_appliance_api::custody`, re-exported here): the
//! host checks logs with the same code.
//!
//! # Crash safety
//!
//! Each record is written with one `append` (append + fsync), so a power
//! cut can only leave the *last* record incomplete. [`CustodyLog::open`]
//! drops such a torn tail (short header, body past the end, or a bad CRC
//! on the final record) and never touches earlier records. A bad CRC
//! before the end is not a torn write: the record is kept and reported as
//! damaged so `verify_log` on the host names it.
//!
//! The CRC only finds torn writes; the hash chain and signatures are what
//! make tampering evident (`verify_log`).

use alloc::vec::Vec;

use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

use crate::hal::{HwError, LogStorage};

pub use mgear_appliance_api::custody::*;

const HEADER: u64 = 8;
const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// The open log: where each record starts, and the chain head.
#[derive(Debug)]
pub struct CustodyLog {
    offsets: Vec<u64>,
    end: u64,
    last_hash: [u8; 32],
    damaged: Option<u64>,
    dropped_tail: u64,
}

fn read_exact<S: LogStorage>(s: &mut S, mut offset: u64, buf: &mut [u8]) -> Result<bool, HwError> {
    let mut done = 0;
    while done < buf.len() {
        let n = s.read_at(offset, &mut buf[done..])?;
        if n == 0 {
            return Ok(false);
        }
        done += n;
        offset += n as u64;
    }
    Ok(true)
}

impl CustodyLog {
    /// Scan the storage, drop a torn last record, and find the chain head.
    pub fn open<S: LogStorage>(s: &mut S) -> Result<CustodyLog, HwError> {
        let total = s.len()?;
        let mut log = CustodyLog {
            offsets: Vec::new(),
            end: 0,
            last_hash: [0; 32],
            damaged: None,
            dropped_tail: 0,
        };
        let mut off = 0u64;
        let mut body = Vec::new();
        while off < total {
            let rest = total - off;
            let mut hdr = [0u8; 8];
            let header_ok = rest >= HEADER && read_exact(s, off, &mut hdr)?;
            let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as u64;
            let crc = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
            let sane = header_ok && len >= 1 && len <= MAX_RECORD_LEN as u64;
            if !sane || HEADER + len > rest {
                if rest <= HEADER + MAX_RECORD_LEN as u64 {
                    // At most one record's worth of bytes left: a torn append.
                    s.truncate(off)?;
                    log.dropped_tail = rest;
                    warn!("custody log: dropped a torn last record of {} bytes", rest);
                } else {
                    // Garbage with more after it is damage, not a torn
                    // write: keep it for forensics and append after it.
                    log.damaged.get_or_insert(log.offsets.len() as u64);
                    error!("custody log: unreadable record header at byte {}", off);
                    off = total;
                }
                break;
            }
            body.resize(len as usize, 0);
            if !read_exact(s, off + HEADER, &mut body)? {
                return Err(HwError::Io("custody log shrank while being read".into()));
            }
            if CRC32.checksum(&body) != crc {
                if off + HEADER + len == total {
                    s.truncate(off)?;
                    log.dropped_tail = rest;
                    warn!("custody log: dropped a torn last record of {} bytes", rest);
                    break;
                }
                log.damaged.get_or_insert(log.offsets.len() as u64);
                error!("custody log: record {} fails its CRC", log.offsets.len());
            }
            log.offsets.push(off);
            log.last_hash = Sha256::digest(&body).into();
            off += HEADER + len;
        }
        log.end = off;
        Ok(log)
    }

    /// Number of records.
    pub fn len(&self) -> u64 {
        self.offsets.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// SHA-256 of the last record's body (zeros for an empty log): the
    /// `prev` of the next record, and the head attestations pin.
    pub fn head(&self) -> [u8; 32] {
        self.last_hash
    }

    /// Index of the first record found damaged (CRC) at open, if any.
    pub fn damaged(&self) -> Option<u64> {
        self.damaged
    }

    /// Bytes of a torn last record dropped at open (0 if none).
    pub fn dropped_tail(&self) -> u64 {
        self.dropped_tail
    }

    /// Sign and append `event`; returns the new record's index.
    pub fn append<S: LogStorage>(
        &mut self,
        s: &mut S,
        key: &SigningKey,
        uptime_ms: u64,
        unix_time: Option<u64>,
        event: Event,
    ) -> Result<u64, HwError> {
        let index = self.len();
        let entry = LogEntry {
            index,
            prev: self.last_hash,
            uptime_ms,
            unix_time,
            event,
        };
        let body = postcard::to_allocvec(&entry.sign(key))
            .map_err(|e| HwError::Io(alloc::format!("custody record: {e}")))?;
        if body.len() > MAX_RECORD_LEN {
            return Err(HwError::Io("custody record too large".into()));
        }
        let mut rec = Vec::with_capacity(body.len() + 8);
        rec.extend_from_slice(&(body.len() as u32).to_le_bytes());
        rec.extend_from_slice(&CRC32.checksum(&body).to_le_bytes());
        rec.extend_from_slice(&body);
        // Appends land at the storage's end; after damage we keep the
        // chain going from the last readable record.
        let at = s.len()?;
        s.append(&rec)?;
        self.offsets.push(at);
        self.end = at + rec.len() as u64;
        self.last_hash = Sha256::digest(&body).into();
        Ok(index)
    }

    /// Records `from..` whose bodies add up to at most `max_bytes` (at
    /// least one record if any remain).
    pub fn read<S: LogStorage>(
        &self,
        s: &mut S,
        from: u64,
        max_bytes: usize,
    ) -> Result<Vec<LogRecord>, HwError> {
        let mut out = Vec::new();
        let mut used = 0usize;
        let start = usize::try_from(from).unwrap_or(usize::MAX);
        for (i, &off) in self.offsets.iter().enumerate().skip(start) {
            let mut hdr = [0u8; 8];
            if !read_exact(s, off, &mut hdr)? {
                return Err(HwError::Io("custody log shrank while being read".into()));
            }
            let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
            if len > MAX_RECORD_LEN {
                return Err(HwError::Io("custody log changed while being read".into()));
            }
            if !out.is_empty() && used + len > max_bytes {
                break;
            }
            let mut body = alloc::vec![0u8; len];
            if !read_exact(s, off + HEADER, &mut body)? {
                return Err(HwError::Io("custody log shrank while being read".into()));
            }
            used += len;
            out.push(LogRecord {
                index: i as u64,
                body,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemLog;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[3u8; 32])
    }

    fn fill(s: &mut MemLog, n: u64) -> CustodyLog {
        let mut log = CustodyLog::open(s).unwrap();
        for i in 0..n {
            log.append(s, &key(), i * 10, None, Event::PowerUp { boot: i })
                .unwrap();
        }
        log
    }

    #[test]
    fn chain_verifies_and_reopens() {
        let mut s = MemLog::default();
        let log = fill(&mut s, 5);
        let recs = log.read(&mut s, 0, usize::MAX).unwrap();
        let pk = key().verifying_key().to_bytes();
        let entries = verify_log(&recs, &pk).unwrap();
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[4].event, Event::PowerUp { boot: 4 });
        let mut again = CustodyLog::open(&mut s).unwrap();
        assert_eq!(again.len(), 5);
        again.append(&mut s, &key(), 0, None, Event::Lock).unwrap();
        let recs = again.read(&mut s, 0, usize::MAX).unwrap();
        assert_eq!(verify_log(&recs, &pk).unwrap().len(), 6);
    }

    #[test]
    fn tampered_record_is_named() {
        let mut s = MemLog::default();
        let log = fill(&mut s, 4);
        let pk = key().verifying_key().to_bytes();
        let mut recs = log.read(&mut s, 0, usize::MAX).unwrap();
        // Change the boot number of record 2 (postcard varint, last bytes before the signature).
        let mut e = recs[2].decode().unwrap();
        e.entry.event = Event::PowerUp { boot: 99 };
        recs[2].body = postcard::to_allocvec(&e).unwrap();
        let err = verify_log(&recs, &pk).unwrap_err();
        assert_eq!(err.index, 2);
        assert_eq!(err.kind, LogErrorKind::BadSignature);
        // Dropping a record breaks the sequence.
        let mut recs = log.read(&mut s, 0, usize::MAX).unwrap();
        recs.remove(1);
        assert_eq!(verify_log(&recs, &pk).unwrap_err().index, 1);
        // Another key does not verify.
        let other = SigningKey::from_bytes(&[4u8; 32])
            .verifying_key()
            .to_bytes();
        let recs = log.read(&mut s, 0, usize::MAX).unwrap();
        assert_eq!(
            verify_log(&recs, &other).unwrap_err().kind,
            LogErrorKind::BadSignature
        );
    }

    #[test]
    fn torn_tail_is_dropped_at_every_cut() {
        let mut s = MemLog::default();
        fill(&mut s, 3);
        let good = s.data.clone();
        let mut s4 = MemLog {
            data: good.clone(),
            ..Default::default()
        };
        let log = fill(&mut s4, 0);
        let mut log = log;
        log.append(&mut s4, &key(), 0, None, Event::Unlock).unwrap();
        let full = s4.data.clone();
        for cut in good.len()..full.len() {
            let mut t = MemLog {
                data: full[..cut].to_vec(),
                ..Default::default()
            };
            let log = CustodyLog::open(&mut t).unwrap();
            assert_eq!(log.len(), 3, "cut at {cut}");
            assert_eq!(t.data, good, "earlier records untouched (cut at {cut})");
            assert_eq!(log.dropped_tail(), (cut - good.len()) as u64);
        }
    }

    #[test]
    fn zero_filled_tail_is_dropped() {
        let mut s = MemLog::default();
        fill(&mut s, 2);
        let good = s.data.clone();
        s.data.extend_from_slice(&[0u8; 100]);
        let log = CustodyLog::open(&mut s).unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(s.data, good);
    }

    #[test]
    fn mid_log_damage_is_kept_and_reported() {
        let mut s = MemLog::default();
        let log = fill(&mut s, 3);
        let recs = log.read(&mut s, 0, usize::MAX).unwrap();
        // Flip a byte in the middle of record 1's body.
        let off = 8 + recs[0].body.len() + 8 + 10;
        s.data[off] ^= 0xff;
        let log = CustodyLog::open(&mut s).unwrap();
        assert_eq!(log.len(), 3);
        assert_eq!(log.damaged(), Some(1));
        let recs = log.read(&mut s, 0, usize::MAX).unwrap();
        let err = verify_log(&recs, &key().verifying_key().to_bytes()).unwrap_err();
        assert_eq!(err.index, 1);
    }

    #[test]
    fn pages_are_bounded() {
        let mut s = MemLog::default();
        let log = fill(&mut s, 10);
        let page = log.read(&mut s, 0, 300).unwrap();
        assert!(!page.is_empty() && page.len() < 10);
        let rest = log.read(&mut s, page.len() as u64, usize::MAX).unwrap();
        assert_eq!(page.len() + rest.len(), 10);
        assert!(log.read(&mut s, 10, 300).unwrap().is_empty());
        assert!(log.read(&mut s, u64::MAX, 300).unwrap().is_empty());
    }

    #[test]
    fn seeded_fuzz_recovery_never_panics_or_grows() {
        use rand_chacha::rand_core::{RngCore, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0xc0ffee);
        let mut base = MemLog::default();
        fill(&mut base, 6);
        let pk = key().verifying_key().to_bytes();
        for round in 0..3_000 {
            let mut data = if round % 3 == 0 {
                let mut v = alloc::vec![0u8; (rng.next_u32() % 2048) as usize];
                rng.fill_bytes(&mut v);
                v
            } else {
                base.data.clone()
            };
            for _ in 0..(rng.next_u32() % 4) {
                if data.is_empty() {
                    break;
                }
                let i = rng.next_u32() as usize % data.len();
                data[i] = rng.next_u32() as u8;
            }
            if round % 5 == 0 {
                let cut = rng.next_u32() as usize % (data.len() + 1);
                data.truncate(cut);
            }
            let before = data.len();
            let mut s = MemLog {
                data,
                fail_after: None,
            };
            let log = CustodyLog::open(&mut s).unwrap();
            assert!(
                s.data.len() <= before,
                "round {round}: recovery grew the log"
            );
            let recs = log.read(&mut s, 0, usize::MAX).unwrap();
            assert_eq!(recs.len() as u64, log.len());
            if recs.len() == 6 && s.data == base.data {
                verify_log(&recs, &pk).unwrap();
            } else {
                let _ = verify_log(&recs, &pk);
            }
        }
    }
}
