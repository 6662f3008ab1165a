//! Every structure decoder on arbitrary bytes: must return Ok or Err, never
//! panic. Each is also fed the same bytes with its CRC (and the manifest's
//! root hash) made valid, so the field checks behind the checksum are fuzzed
//! too, as a medium edited on purpose would reach them.
#![no_main]

use image_format::layout::{
    decode_key_payload, IndexEntry, IndexHeader, IpartHeader, Journal, Manifest, RecordHeader,
    SegmentHeader, SegmentTrailer, INDEX_HEADER_LEN, IPART_HEADER_LEN, JOURNAL_LEN, REC_HEADER_LEN,
    SEG_HEADER_LEN, TRAILER_LEN,
};
use libfuzzer_sys::fuzz_target;

/// `data` with the CRC-32 of its first `len - 4` bytes stored after them.
fn with_crc(data: &[u8], len: usize) -> Option<Vec<u8>> {
    let mut b = data.get(..len)?.to_vec();
    let c = crc32fast::hash(&b[..len - 4]);
    b[len - 4..].copy_from_slice(&c.to_le_bytes());
    Some(b)
}

/// `data` as a manifest whose root hash and CRC match its header's length.
fn sealed_manifest(data: &[u8]) -> Option<Vec<u8>> {
    let body = u32::from_le_bytes(data.get(20..24)?.try_into().ok()?) as usize;
    let signed = 24 + body;
    let mut b = data.get(..signed + 68)?.to_vec();
    let root = blake3::hash(&b[..signed]);
    b[signed..signed + 32].copy_from_slice(root.as_bytes());
    with_crc(&b, signed + 68)
}

fuzz_target!(|data: &[u8]| {
    let _ = SegmentHeader::decode(data);
    let _ = RecordHeader::decode(data);
    let _ = SegmentTrailer::decode(data);
    let _ = IndexHeader::decode(data);
    let _ = IndexEntry::decode(data);
    let _ = IpartHeader::decode(data);
    let _ = Journal::decode(data);
    let _ = Manifest::decode(data);
    let _ = decode_key_payload(data);

    if let Some(b) = with_crc(data, SEG_HEADER_LEN) {
        let _ = SegmentHeader::decode(&b);
    }
    if let Some(b) = with_crc(data, REC_HEADER_LEN) {
        let _ = RecordHeader::decode(&b);
    }
    if let Some(b) = with_crc(data, TRAILER_LEN) {
        let _ = SegmentTrailer::decode(&b);
    }
    if let Some(b) = with_crc(data, INDEX_HEADER_LEN) {
        let _ = IndexHeader::decode(&b);
    }
    if let Some(b) = with_crc(data, IPART_HEADER_LEN) {
        let _ = IpartHeader::decode(&b);
    }
    if let Some(b) = with_crc(data, JOURNAL_LEN) {
        let _ = Journal::decode(&b);
    }
    if let Some(b) = sealed_manifest(data) {
        let _ = Manifest::decode(&b);
    }
});
