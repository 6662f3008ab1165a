//! Every structure decoder on arbitrary bytes: must return Ok or Err, never panic.
#![no_main]

use image_format::layout::{
    decode_key_payload, IndexEntry, IndexHeader, IpartHeader, Journal, Manifest, RecordHeader,
    SegmentHeader, SegmentTrailer,
};
use libfuzzer_sys::fuzz_target;

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
});
