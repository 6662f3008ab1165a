//! Sealed records away from a segment file: a stream of records under one
//! segment key, byte for byte the records a segment holds (FORMAT.md §5,
//! "Record"), for a carrier other than the medium. `mgear sync` sends them
//! over the network instead of inventing a record format of its own.
//!
//! Both halves are the medium's own code, not copies: [`RecordSealer::seal`]
//! is the writer's sealing (AES-256-GCM under the segment key with the
//! record's AAD, the 64-byte header with the stored-bytes hash, and the
//! decode-back self-check that refuses a record that does not give its input
//! back), and [`RecordOpener::open`] is the reader's (header checks, stored
//! hash, AEAD, zstd, keyed chunk id). The stream's key is a segment key
//! (FORMAT.md §4) from a salt the caller makes unique per stream; records are
//! numbered 0, 1, 2, ... and each opens only as its own number, so a record
//! cannot be dropped, replayed or reordered within the stream undetected.

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::encode::{ChunkEncoder, Cipher, EncodedChunk};
use crate::error::{Error, Location, Result};
use crate::keys::{DataKey, Subkeys};
use crate::layout::{self, RecordHeader, RecordLoc, REC_HEADER_LEN};
use crate::writer::{Position, SealCtx};

/// Where a record stream sits in the key schedule: the generation and
/// segment numbers its segment key and every record's AAD bind, and the
/// salt of the segment key (32 bytes never used twice with one data key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPlace {
    /// Generation number bound into the key and AAD.
    pub generation: u32,
    /// Segment number bound into the key and AAD.
    pub segment: u32,
    /// Salt of the segment key.
    pub salt: [u8; 32],
}

/// Seals chunks into records, numbered from 0, under one segment key.
pub struct RecordSealer {
    cipher: Cipher,
    capture_id: [u8; 16],
    place: StreamPlace,
    encoder: ChunkEncoder,
    next: u32,
}

impl core::fmt::Debug for RecordSealer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RecordSealer")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl RecordSealer {
    /// A stream for chunks of a disk of `source_size` bytes cut into
    /// `chunk_size` chunks, sealed for capture `capture_id` under `key`.
    pub fn new(
        key: &DataKey,
        capture_id: [u8; 16],
        place: StreamPlace,
        chunk_size: u32,
        source_size: u64,
    ) -> Result<Self> {
        if !layout::valid_chunk_size(chunk_size) {
            return Err(Error::Usage(format!(
                "chunk size {chunk_size} is not a valid chunk size"
            )));
        }
        let keys = Subkeys::derive(key, &capture_id);
        Ok(RecordSealer {
            cipher: keys.segment_cipher(&place.salt, place.generation, place.segment),
            capture_id,
            place,
            encoder: ChunkEncoder::new(
                keys.chunk_id.clone(),
                capture_id,
                chunk_size,
                source_size,
                cfg!(feature = "zstd"),
            ),
            next: 0,
        })
    }

    /// The encoder for this stream's chunks (zero detection, keyed id, zstd
    /// kept only when smaller and decompressed again to check it).
    pub fn encoder(&self) -> &ChunkEncoder {
        &self.encoder
    }

    /// Records sealed so far (the number the next one gets).
    pub fn sealed(&self) -> u32 {
        self.next
    }

    /// The next record (64-byte header and stored bytes) for `chunk`, which
    /// must not be all zeros (a zero chunk has no record, only its id).
    pub fn seal(&mut self, chunk: &EncodedChunk) -> Result<Vec<u8>> {
        if self.next == u32::MAX {
            return Err(Error::Usage(
                "a record stream holds at most 2^32 - 1 records: start a new stream".into(),
            ));
        }
        let ctx = SealCtx {
            cipher: &self.cipher,
            capture_id: &self.capture_id,
            generation: self.place.generation,
        };
        let sealed = ctx.seal(
            chunk,
            Position {
                segment: self.place.segment,
                record: self.next,
                offset: 0,
            },
        )?;
        self.next += 1;
        Ok(sealed.bytes)
    }
}

/// Opens the records of one stream, in order.
pub struct RecordOpener {
    cipher: Cipher,
    chunk_id_key: Arc<Zeroizing<[u8; 32]>>,
    capture_id: [u8; 16],
    place: StreamPlace,
    /// Names the stream in errors.
    name: String,
    next: u32,
}

impl core::fmt::Debug for RecordOpener {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RecordOpener")
            .field("name", &self.name)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl RecordOpener {
    /// The opener of the stream [`RecordSealer::new`] made with the same key,
    /// capture id and place; `name` names it in errors.
    pub fn new(key: &DataKey, capture_id: [u8; 16], place: StreamPlace, name: &str) -> Self {
        let keys = Subkeys::derive(key, &capture_id);
        RecordOpener {
            cipher: keys.segment_cipher(&place.salt, place.generation, place.segment),
            chunk_id_key: keys.chunk_id.clone(),
            capture_id,
            place,
            name: name.into(),
            next: 0,
        }
    }

    /// The plaintext of the next record, which must hold the chunk with keyed
    /// id `chunk_id` and length `plain_len`. Fails with [`Error::Corrupt`] if
    /// the record is malformed, out of order, altered, or holds another chunk;
    /// the stream is then unusable (the next record number is not consumed).
    pub fn open(&mut self, chunk_id: &[u8; 32], plain_len: u32, record: &[u8]) -> Result<Vec<u8>> {
        let at = Location {
            generation: Some(self.place.generation),
            segment: Some(self.place.segment),
            record: Some(self.next),
            ..Location::capture(&self.name)
        };
        let h = RecordHeader::decode(record).map_err(|w| Error::corrupt(at.clone(), w))?;
        if h.record != self.next {
            return Err(Error::corrupt(
                at,
                format!(
                    "record number {} where {} was due (dropped, replayed or reordered record)",
                    h.record, self.next
                ),
            ));
        }
        if h.plain_len != plain_len {
            return Err(Error::corrupt(
                at,
                format!(
                    "record holds {} bytes, the chunk has {plain_len}",
                    h.plain_len
                ),
            ));
        }
        if record.len() - REC_HEADER_LEN != h.stored_len as usize {
            return Err(Error::corrupt(
                at,
                format!(
                    "record header says {} stored bytes, {} follow it",
                    h.stored_len,
                    record.len() - REC_HEADER_LEN
                ),
            ));
        }
        let loc = RecordLoc {
            flags: h.flags,
            plain_len,
            generation: self.place.generation,
            segment: self.place.segment,
            record: self.next,
            stored_len: h.stored_len,
            offset: 0,
            chunk_id: *chunk_id,
            stream: 0,
        };
        let plain = crate::reader::open_fetched(
            &self.cipher,
            &self.chunk_id_key,
            &self.capture_id,
            at,
            &loc,
            record.to_vec(),
        )
        .map_err(crate::reader::OpenFail::into_error)?;
        self.next += 1;
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: u32 = 64 * 1024;

    fn place(salt: u8) -> StreamPlace {
        StreamPlace {
            generation: u32::MAX,
            segment: 0,
            salt: [salt; 32],
        }
    }

    fn text() -> Vec<u8> {
        b"sealed records travel as they are stored "
            .iter()
            .cycle()
            .take(CS as usize)
            .copied()
            .collect()
    }

    fn noise() -> Vec<u8> {
        crate::bench::noise(CS as usize, 9)
    }

    #[test]
    fn records_round_trip_in_order_and_match_the_medium_layout() {
        let key = DataKey::from_bytes([7; 32]);
        let mut s = RecordSealer::new(&key, [1; 16], place(3), CS, 3 * CS as u64).unwrap();
        let mut o = RecordOpener::new(&key, [1; 16], place(3), "web01");
        for (i, data) in [text(), noise()].iter().enumerate() {
            let c = s.encoder().encode(i as u64, data).unwrap();
            let id = crate::ChunkIdKey::derive(&key, &[1; 16]).id(data);
            let rec = s.seal(&c).unwrap();
            let h = RecordHeader::decode(&rec).unwrap();
            assert_eq!(h.record, i as u32);
            assert_eq!(rec.len(), REC_HEADER_LEN + h.stored_len as usize);
            assert_eq!(
                h.flags == layout::FLAG_ZSTD,
                i == 0,
                "text compresses, noise does not"
            );
            assert_eq!(&o.open(&id, CS, &rec).unwrap(), data);
        }
        assert_eq!(s.sealed(), 2);
        // A zero chunk has no record.
        let z = s.encoder().encode(2, &vec![0u8; CS as usize]).unwrap();
        assert!(s.seal(&z).is_err());
    }

    #[test]
    fn altered_reordered_foreign_or_mislabelled_records_are_refused() {
        let key = DataKey::from_bytes([7; 32]);
        let ids = crate::ChunkIdKey::derive(&key, &[1; 16]);
        let mut s = RecordSealer::new(&key, [1; 16], place(3), CS, 2 * CS as u64).unwrap();
        let (a, b) = (text(), noise());
        let ra = s.seal(&s.encoder().encode(0, &a).unwrap()).unwrap();
        let rb = s.seal(&s.encoder().encode(1, &b).unwrap()).unwrap();
        let corrupt = |r: Result<Vec<u8>>| matches!(r, Err(Error::Corrupt { .. }));
        let fresh = || RecordOpener::new(&key, [1; 16], place(3), "web01");
        // Out of order: record 1 first.
        assert!(corrupt(fresh().open(&ids.id(&b), CS, &rb)));
        // A flipped stored byte (hash and AEAD), a flipped header byte (CRC).
        let mut bad = ra.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(corrupt(fresh().open(&ids.id(&a), CS, &bad)));
        let mut bad = ra.clone();
        bad[9] ^= 1;
        assert!(corrupt(fresh().open(&ids.id(&a), CS, &bad)));
        // Claimed as another chunk, or another length; cut short.
        assert!(corrupt(fresh().open(&ids.id(&b), CS, &ra)));
        assert!(corrupt(fresh().open(&ids.id(&a), CS - 1, &ra)));
        assert!(corrupt(fresh().open(&ids.id(&a), CS, &ra[..ra.len() - 1])));
        assert!(corrupt(fresh().open(&ids.id(&a), CS, &ra[..10])));
        // Another stream's salt or another data key opens nothing.
        let mut other = RecordOpener::new(&key, [1; 16], place(4), "web01");
        assert!(corrupt(other.open(&ids.id(&a), CS, &ra)));
        let mut other = RecordOpener::new(&DataKey::from_bytes([8; 32]), [1; 16], place(3), "w");
        assert!(corrupt(other.open(&ids.id(&a), CS, &ra)));
        // A failed record does not advance the stream: the right one still opens.
        let mut o = fresh();
        assert!(o.open(&ids.id(&a), CS, &bad).is_err());
        assert_eq!(o.open(&ids.id(&a), CS, &ra).unwrap(), a);
        assert_eq!(o.open(&ids.id(&b), CS, &rb).unwrap(), b);
        // Replayed.
        assert!(corrupt(o.open(&ids.id(&b), CS, &rb)));
        assert!(RecordSealer::new(&key, [1; 16], place(3), 1000, 1).is_err());
    }

    /// The reader hashes a compressed chunk's plaintext to its id, and
    /// trusts AES-GCM for a record stored as is (reader::check_chunk_id):
    /// both must still refuse a record opened as another chunk.
    #[test]
    fn a_record_opens_only_as_the_chunk_it_was_sealed_as() {
        let key = DataKey::from_bytes([7; 32]);
        let ids = crate::ChunkIdKey::derive(&key, &[1; 16]);
        let mut s = RecordSealer::new(&key, [1; 16], place(3), CS, 3 * CS as u64).unwrap();
        let (a, b) = (text(), noise());
        let ra = s.seal(&s.encoder().encode(0, &a).unwrap()).unwrap();
        let rb = s.seal(&s.encoder().encode(1, &b).unwrap()).unwrap();
        assert_eq!(RecordHeader::decode(&rb).unwrap().flags, 0, "stored as is");
        // Stored as is, claimed as the other chunk: the AAD names the id.
        let mut o = RecordOpener::new(&key, [1; 16], place(3), "web01");
        assert_eq!(o.open(&ids.id(&a), CS, &ra).unwrap(), a);
        let err = o.open(&ids.id(&a), CS, &rb).unwrap_err().to_string();
        assert!(err.contains("fails authentication"), "{err}");
        // A compressed chunk sealed under another chunk's id (a capture that
        // mislabelled it): AES-GCM passes, the hash of zstd's output does not.
        let mut c = s.encoder().encode(2, &a).unwrap();
        c.chunk_id = ids.id(&b);
        let rc = s.seal(&c).unwrap();
        assert_eq!(RecordHeader::decode(&rc).unwrap().flags, layout::FLAG_ZSTD);
        let mut o = RecordOpener::new(&key, [1; 16], place(3), "web01");
        o.open(&ids.id(&a), CS, &ra).unwrap();
        o.open(&ids.id(&b), CS, &rb).unwrap();
        let err = o.open(&ids.id(&b), CS, &rc).unwrap_err().to_string();
        assert!(err.contains("does not match its id"), "{err}");
    }
}
