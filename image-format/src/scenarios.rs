//! Whole-format scenarios over the in-memory test medium: round trips,
//! power cuts and resumes, tampering, wrong keys, deltas, and no panics on
//! hostile media.

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::layout::{self, RecordHeader, SegmentHeader, REC_HEADER_LEN, SEG_HEADER_LEN};
use crate::store::{EntryKind, MemStore};
use crate::{
    list_captures, medium_digests, verify_full, verify_keyless, Appended, CaptureParams,
    CaptureReader, CaptureSummary, CaptureWriter, ChunkData, DataKey, Error, GenerationState,
    NoProgress, Store, Unlock, VerifyReport,
};

const CS: u32 = 64 * 1024;

fn identity() -> age::x25519::Identity {
    age::x25519::Identity::generate()
}

fn pass(s: &str) -> age::secrecy::SecretString {
    age::secrecy::SecretString::from(s.to_string())
}

/// A disk with random, zero, repetitive and duplicate chunks and a short tail.
fn disk(seed: u64, chunks: usize, tail: usize) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let cs = CS as usize;
    let mut d = vec![0u8; chunks * cs + tail];
    for i in 0..chunks {
        let c = &mut d[i * cs..(i + 1) * cs];
        match i % 5 {
            0 => rng.fill_bytes(c),
            1 => {}
            2 => {
                for (j, b) in c.iter_mut().enumerate() {
                    *b = b"MotionGear repetitive text "[j % 27];
                }
            }
            3 => {
                rng.fill_bytes(&mut c[..100]);
            }
            _ => {
                // A duplicate of chunk 0.
                let (head, rest) = d.split_at_mut(i * cs);
                rest[..cs].copy_from_slice(&head[..cs]);
            }
        }
    }
    let n = d.len();
    rng.fill_bytes(&mut d[n - tail..]);
    d
}

fn params(name: &str, size: u64, id: &age::x25519::Identity) -> CaptureParams {
    let mut p = CaptureParams::new(name, size);
    p.chunk_size = CS;
    p.recipients = vec![id.to_public()];
    p.passphrase = Some(pass("correct horse"));
    p.passphrase_work_factor = Some(2);
    p.max_segment_bytes = 140_000;
    p.source_desc = "test disk".into();
    p.created_unix = 1_790_000_000;
    p
}

fn write_chunks<S: Store>(
    w: &mut CaptureWriter<S>,
    data: &[u8],
    checkpoint_every: u64,
) -> crate::Result<()> {
    let enc = w.encoder();
    for i in w.resume_from()..w.chunk_count() {
        let start = (i * u64::from(CS)) as usize;
        let end = (start + CS as usize).min(data.len());
        w.append(enc.encode(i, &data[start..end])?)?;
        if (i + 1) % checkpoint_every == 0 {
            w.checkpoint()?;
        }
    }
    Ok(())
}

fn capture<S: Store>(
    store: S,
    p: CaptureParams,
    key: Option<DataKey>,
    data: &[u8],
) -> crate::Result<(CaptureSummary, DataKey)> {
    let mut w = CaptureWriter::begin(store, p, key)?;
    let key = w.data_key().clone();
    write_chunks(&mut w, data, 3)?;
    Ok((w.finish()?, key))
}

fn read_all(
    store: &mut MemStore,
    name: &str,
    generation: Option<u32>,
    unlock: &Unlock,
) -> crate::Result<Vec<u8>> {
    let mut r = CaptureReader::open(store, name, generation, unlock)?;
    let mut out = Vec::new();
    for i in 0..r.chunk_count() {
        match r.read_chunk(i)? {
            ChunkData::Zero { len } => out.resize(out.len() + len as usize, 0),
            ChunkData::Data(d) => out.extend_from_slice(&d),
        }
    }
    assert_eq!(out.len() as u64, r.disk_size());
    Ok(out)
}

/// A file's bytes.
fn file(store: &mut MemStore, path: &str) -> Vec<u8> {
    let len = store
        .len(path)
        .unwrap()
        .unwrap_or_else(|| panic!("{path} missing"));
    let mut b = vec![0u8; len as usize];
    store.read_exact_at(path, 0, &mut b).unwrap();
    b
}

/// Every file path on the medium.
fn paths(store: &mut MemStore) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![String::new()];
    while let Some(d) = dirs.pop() {
        for e in store.list(&d).unwrap() {
            let p = if d.is_empty() {
                e.name
            } else {
                format!("{d}/{}", e.name)
            };
            match e.kind {
                EntryKind::Dir => dirs.push(p),
                EntryKind::File => out.push(p),
            }
        }
    }
    out.sort();
    out
}

fn keyless(store: &mut MemStore) -> VerifyReport {
    verify_keyless(store, &mut NoProgress).unwrap()
}

fn seg(gen: u32, s: u32) -> String {
    layout::segment_path("web01", gen, s)
}

struct Fixture {
    store: MemStore,
    id: age::x25519::Identity,
    data: Vec<u8>,
    key: DataKey,
    summary: CaptureSummary,
}

fn fixture() -> Fixture {
    let id = identity();
    let data = disk(1, 20, 1234);
    let mut store = MemStore::new();
    let (summary, key) = capture(
        &mut store,
        params("web01", data.len() as u64, &id),
        None,
        &data,
    )
    .unwrap();
    Fixture {
        store,
        id,
        data,
        key,
        summary,
    }
}

#[test]
fn round_trip_mixed_data_all_unlocks() {
    let mut f = fixture();
    let s = &f.summary;
    assert_eq!(s.chunk_count, 21);
    assert_eq!(s.zero_chunks, 4, "chunks 1, 6, 11, 16 are zero");
    assert_eq!(
        s.dedup_chunks, 7,
        "chunks 4, 9, 14, 19 repeat chunk 0; 7, 12, 17 repeat chunk 2"
    );
    assert_eq!(s.stored_chunks + s.zero_chunks + s.dedup_chunks, 21);
    assert!(
        s.segments >= 2,
        "small segment limit must roll segments: {s:?}"
    );
    for unlock in [
        Unlock::Identity(f.id.clone()),
        Unlock::Passphrase(pass("correct horse")),
        Unlock::Key(f.key.clone()),
    ] {
        assert_eq!(
            read_all(&mut f.store, "web01", None, &unlock).unwrap(),
            f.data,
            "{unlock:?}"
        );
    }
    // Repetitive chunks were compressed, random ones were not.
    let total: u64 = s.stored_bytes;
    assert!(
        total < (s.stored_chunks * u64::from(CS)),
        "compression saved nothing: {s:?}"
    );
    let r = keyless(&mut f.store);
    assert!(r.is_ok(), "{:?}", r.problems);
    assert_eq!(r.segments, s.segments);
    assert_eq!(r.records, s.stored_chunks);
    let full = verify_full(
        &mut f.store,
        "web01",
        None,
        &Unlock::Identity(f.id.clone()),
        &mut NoProgress,
    )
    .unwrap();
    assert!(full.is_ok(), "{:?}", full.problems);
    let list = list_captures(&mut f.store).unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0].recipient_slot && list[0].passphrase_slot);
    assert_eq!(list[0].generations[0].state, GenerationState::Complete);
    assert_eq!(list[0].generations[0].disk_size, f.data.len() as u64);
    let digests = medium_digests(&mut f.store).unwrap();
    let paths: Vec<&str> = digests.iter().map(|(p, _)| p.as_str()).collect();
    assert!(paths.contains(&"MGEAR/web01/G0001/MANIFEST") && paths.contains(&"MGEAR/web01/KEYS"));
    assert!(paths.contains(&seg(1, 0).as_str()));
    assert_eq!(
        digests.iter().find(|(p, _)| p == &seg(1, 0)).unwrap().1,
        *blake3::hash(&file(&mut f.store, &seg(1, 0))).as_bytes()
    );
}

#[test]
fn key_slot_is_a_plain_age_file() {
    let mut f = fixture();
    let bytes = file(&mut f.store, "MGEAR/web01/KEYS").clone();
    let id = f.id.clone();
    let plain = age::decrypt(&id, &bytes).unwrap();
    let (_cid, key) = layout::decode_key_payload(&plain).unwrap();
    assert_eq!(&key, f.key.as_bytes());
    assert!(read_all(
        &mut f.store,
        "web01",
        None,
        &Unlock::Key(DataKey::from_bytes(key))
    )
    .is_ok());
}

#[test]
fn wrong_keys_give_a_clear_error() {
    let mut f = fixture();
    for unlock in [
        Unlock::Identity(identity()),
        Unlock::Passphrase(pass("wrong horse")),
        Unlock::Key(DataKey::generate().unwrap()),
    ] {
        let e = CaptureReader::open(&mut f.store, "web01", None, &unlock).unwrap_err();
        assert!(matches!(e, Error::WrongKey { .. }), "{unlock:?}: {e:?}");
        assert_eq!(e.to_string(), "this key does not open capture web01");
    }
    let e =
        CaptureReader::open(&mut f.store, "db02", None, &Unlock::Key(f.key.clone())).unwrap_err();
    assert!(e.to_string().contains("capture db02 not found"), "{e}");
    let e = CaptureReader::open(&mut f.store, "bad name", None, &Unlock::Key(f.key.clone()))
        .unwrap_err();
    assert!(e.to_string().contains("invalid capture name"), "{e}");
}

/// A slot missing says to use the other one; both missing (what an erase leaves) said
/// "unlock it with its passphrase" of a capture that had none left.
#[test]
fn missing_key_slots_say_what_is_left() {
    let mut f = fixture();
    f.store.remove_file("MGEAR/web01/KEYS").unwrap();
    let e = CaptureReader::open(&mut f.store, "web01", None, &Unlock::Identity(f.id.clone()))
        .unwrap_err();
    assert!(
        e.to_string().contains("unlock it with its passphrase"),
        "{e}"
    );
    f.store.remove_file("MGEAR/web01/KEYPASS").unwrap();
    for unlock in [
        Unlock::Identity(f.id.clone()),
        Unlock::Passphrase(pass("correct horse")),
    ] {
        let e = CaptureReader::open(&mut f.store, "web01", None, &unlock).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("no key slot left"), "{e}");
        assert!(!e.contains("unlock it with"), "{e}");
    }
}

#[test]
fn bad_params_are_refused() {
    let id = identity();
    let mut store = MemStore::new();
    let mut p = params("web01", 1 << 20, &id);
    p.chunk_size = 100_000;
    assert!(matches!(
        CaptureWriter::begin(&mut store, p, None),
        Err(Error::InvalidParams(_))
    ));
    let mut p = params("web01", 1 << 20, &id);
    p.recipients.clear();
    p.passphrase = None;
    let e = CaptureWriter::begin(&mut store, p, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no key slot"), "{e}");
    let e = CaptureWriter::begin(&mut store, params("web/01", 1 << 20, &id), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid capture name \"web/01\""), "{e}");
    let mut w = CaptureWriter::begin(&mut store, params("web01", 3 << 16, &id), None).unwrap();
    let enc = w.encoder();
    let e = w
        .append(enc.encode(1, &[1u8; CS as usize]).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected chunk 0, got 1"), "{e}");
    assert!(matches!(
        w.append(enc.encode(0, &[1u8; CS as usize]).unwrap())
            .unwrap(),
        Appended::Stored { .. }
    ));
    let e = w.finish().unwrap_err().to_string();
    assert!(e.contains("1 of 3 chunks"), "{e}");
}

/// Every SEG file's header salt on the medium.
fn salts(store: &mut MemStore) -> Vec<[u8; 32]> {
    paths(store)
        .iter()
        .filter(|p| p.contains("/SEG-"))
        .filter_map(|p| SegmentHeader::decode(&file(store, p)).ok().map(|h| h.salt))
        .collect()
}

#[test]
fn capture_id_is_read_without_a_key_from_manifest_or_journal() {
    let mut f = fixture();
    let finished = crate::verify::capture_id(&mut f.store, "web01").unwrap();
    assert!(finished.is_some());
    assert_eq!(
        crate::verify::capture_id(&mut f.store, "db02").unwrap(),
        None
    );
    // A second capture cut mid-way: only its journal records its id, which
    // is its own (a capture id is never shared between captures).
    let data = disk(3, 14, 0);
    let p = || params("db02", data.len() as u64, &f.id);
    let mut counter = MemStore::new();
    capture(&mut counter, p(), None, &data).unwrap();
    let mut faulty = MemStore::new();
    faulty.cut_power_after(counter.writes * 3 / 4);
    assert!(capture(&mut faulty, p(), None, &data).is_err());
    let mut medium = faulty.after_power_loss();
    let caps = crate::verify::list_captures(&mut medium).unwrap();
    assert!(
        matches!(
            caps[0].generations[0].state,
            crate::verify::GenerationState::Unfinished { .. }
        ),
        "{caps:?}"
    );
    let unfinished = crate::verify::capture_id(&mut medium, "db02").unwrap();
    assert!(unfinished.is_some());
    assert_ne!(unfinished, finished);
}

#[test]
fn power_cut_at_every_write_then_resume() {
    let id = identity();
    let data = disk(7, 14, 999);
    let p = || params("web01", data.len() as u64, &id);
    // Count the mutating operations of an uninterrupted run.
    let mut counter = MemStore::new();
    let (reference, _) = capture(&mut counter, p(), None, &data).unwrap();
    let ops = counter.writes;
    assert!(ops > 30, "{ops}");
    for budget in 0..ops {
        let mut faulty = MemStore::new();
        faulty.cut_power_after(budget);
        let first = capture(&mut faulty, p(), None, &data);
        assert!(
            first.is_err(),
            "budget {budget} of {ops} should cut the run"
        );
        let mut medium = faulty.after_power_loss();
        // Whatever survived is never reported as a broken finished capture.
        for prob in keyless(&mut medium).problems {
            assert!(
                prob.what.contains("unfinished") || prob.what.contains("no key slot"),
                "budget {budget}: {prob}"
            );
        }
        let salts_before = salts(&mut medium);
        let all = paths(&mut medium);
        // Unfinished first generation: the run resumes it; a finished one
        // (cut after its MANIFEST) makes the rerun a second generation.
        let expect_gen = if all.iter().any(|p| p.ends_with("G0001/MANIFEST")) {
            2
        } else {
            1
        };
        // The source-side key cache was written right after begin; when the
        // cut came before that, a new run starts from scratch.
        let key = capture_key(&mut medium, &id);
        let mut w = match CaptureWriter::begin(&mut medium, p(), key) {
            Ok(w) => w,
            Err(e) => panic!("budget {budget}: resume failed: {e}"),
        };
        assert_eq!(w.generation(), expect_gen, "budget {budget}");
        write_chunks(&mut w, &data, 3).unwrap();
        let s = w.finish().unwrap();
        assert_eq!(
            (s.zero_chunks, s.stored_chunks + s.dedup_chunks),
            (
                reference.zero_chunks,
                reference.stored_chunks + reference.dedup_chunks
            ),
            "budget {budget}"
        );
        assert_eq!(
            read_all(&mut medium, "web01", None, &Unlock::Identity(id.clone())).unwrap(),
            data,
            "budget {budget}"
        );
        let r = keyless(&mut medium);
        assert!(r.is_ok(), "budget {budget}: {:?}", r.problems);
        // Nonces: every segment ever opened has its own random salt, and a
        // segment that survived the cut was never reopened for records.
        let after = salts(&mut medium);
        let mut uniq = after.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), after.len(), "budget {budget}: a salt repeats");
        for s in &salts_before {
            let count = after.iter().filter(|a| *a == s).count();
            assert!(count <= 1, "budget {budget}");
        }
    }
}

/// Recovers the data key the way the CLI would: from its key cache, which
/// here is the age key slot opened with the target identity (the test has it).
fn capture_key(medium: &mut MemStore, id: &age::x25519::Identity) -> Option<DataKey> {
    let has_gen = paths(medium).iter().any(|p| p.contains("/G0001/JRNL-"));
    if !has_gen {
        return None;
    }
    crate::unlock_data_key(medium, "web01", &Unlock::Identity(id.clone()))
        .ok()
        .map(|(k, _)| k)
}

#[test]
fn repeated_power_cuts_still_finish() {
    let id = identity();
    let data = disk(9, 40, 10);
    let p = || params("web01", data.len() as u64, &id);
    let mut medium = MemStore::new();
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(attempts < 200, "no progress");
        let key = capture_key(&mut medium, &id);
        medium.cut_power_after(25);
        let done = capture(&mut medium, p(), key, &data).is_ok();
        medium = medium.after_power_loss();
        if done {
            break;
        }
    }
    assert!(attempts > 2);
    assert_eq!(
        read_all(&mut medium, "web01", None, &Unlock::Identity(id.clone())).unwrap(),
        data
    );
    let r = keyless(&mut medium);
    assert!(r.is_ok(), "{:?}", r.problems);
    let s = salts(&mut medium);
    let mut u = s.clone();
    u.sort();
    u.dedup();
    assert_eq!(u.len(), s.len());
}

#[test]
fn resume_refuses_other_parameters_and_missing_key() {
    let id = identity();
    let data = disk(3, 8, 0);
    let mut medium = MemStore::new();
    medium.cut_power_after(20);
    assert!(capture(
        &mut medium,
        params("web01", data.len() as u64, &id),
        None,
        &data
    )
    .is_err());
    let mut medium = medium.after_power_loss();
    let list = list_captures(&mut medium).unwrap();
    assert!(
        matches!(list[0].generations[0].state, GenerationState::Unfinished { next_chunk } if next_chunk > 0),
        "{list:?}"
    );
    // What it holds so far is counted (inspect showed 0 bytes stored).
    assert!(list[0].generations[0].stored_bytes > 0);
    let e =
        CaptureReader::open(&mut medium, "web01", None, &Unlock::Identity(id.clone())).unwrap_err();
    assert!(e.to_string().contains("no finished generation"), "{e}");
    let mut other = params("web01", data.len() as u64, &id);
    other.source_desc = "another disk".into();
    let key = capture_key(&mut medium, &id).unwrap();
    let e = CaptureWriter::begin(&mut medium, other, Some(key.clone())).unwrap_err();
    assert!(
        matches!(e, Error::ResumeMismatch { generation: 1, .. }),
        "{e}"
    );
    let mut nopass = params("web01", data.len() as u64, &id);
    nopass.passphrase = None;
    let e = CaptureWriter::begin(&mut medium, nopass, None).unwrap_err();
    assert!(matches!(e, Error::NeedKey { .. }), "{e}");
    // The passphrase unwraps the key for the resume.
    let w =
        CaptureWriter::begin(&mut medium, params("web01", data.len() as u64, &id), None).unwrap();
    assert_eq!(w.data_key().as_bytes(), key.as_bytes());
    assert!(w.resume_from() > 0);
}

fn record_offsets(file: &[u8]) -> Vec<(u64, RecordHeader)> {
    let mut out = Vec::new();
    let mut off = SEG_HEADER_LEN;
    while let Ok(h) = RecordHeader::decode(&file[off..]) {
        let next = off + REC_HEADER_LEN + h.stored_len as usize;
        out.push((off as u64, h));
        off = next;
    }
    out
}

/// A segment file's digest as FORMAT.md §5 defines it: with
/// `INCOMPAT_HEADER_DIGEST`, derive-key blake3 over the segment header and
/// every record header; without, blake3 of every byte before the trailer.
fn spec_digest(seg: &[u8], incompat: u32) -> [u8; 32] {
    let end = seg.len() - layout::TRAILER_LEN;
    if incompat & layout::INCOMPAT_HEADER_DIGEST == 0 {
        return *blake3::hash(&seg[..end]).as_bytes();
    }
    let mut h = blake3::Hasher::new_derive_key("MotionGear segment header digest v1");
    h.update(&seg[..SEG_HEADER_LEN]);
    for (off, _) in record_offsets(&seg[..end]) {
        h.update(&seg[off as usize..off as usize + REC_HEADER_LEN]);
    }
    *h.finalize().as_bytes()
}

/// Every segment of generation 1 has feature bits `incompat` in its header
/// and the digest §5 defines for them in its trailer.
fn assert_segment_digests(store: &mut MemStore, segments: u32, incompat: u32) {
    for s in 0..segments {
        let b = file(store, &seg(1, s));
        let h = SegmentHeader::decode(&b).unwrap();
        assert_eq!(h.incompat, incompat, "segment {s}");
        let t = layout::SegmentTrailer::decode(&b[b.len() - layout::TRAILER_LEN..]).unwrap();
        assert_eq!(t.hash, spec_digest(&b, incompat), "segment {s}");
    }
}

/// New media digest segment headers only (one hash pass per stored byte);
/// media written before that (whole-file digests, bit 1 clear) still verify
/// and read, and a resumed old generation keeps its digest.
#[test]
fn segment_digest_is_over_headers_and_older_media_still_verify() {
    let mut f = fixture();
    assert_segment_digests(
        &mut f.store,
        f.summary.segments,
        layout::INCOMPAT_ZSTD | layout::INCOMPAT_HEADER_DIGEST,
    );

    let id = identity();
    let data = disk(1, 20, 1234);
    let old = |store: &mut MemStore| -> crate::Result<CaptureSummary> {
        let mut w = CaptureWriter::begin(store, params("web01", data.len() as u64, &id), None)?;
        w.use_feature_bits(layout::INCOMPAT_ZSTD);
        write_chunks(&mut w, &data, 3)?;
        w.finish()
    };
    let mut store = MemStore::new();
    let s = old(&mut store).unwrap();
    assert_segment_digests(&mut store, s.segments, layout::INCOMPAT_ZSTD);
    let r = keyless(&mut store);
    assert!(r.is_ok(), "{:?}", r.problems);
    let unlock = Unlock::Identity(id.clone());
    let r = verify_full(&mut store, "web01", None, &unlock, &mut NoProgress).unwrap();
    assert!(r.is_ok(), "{:?}", r.problems);
    assert_eq!(read_all(&mut store, "web01", None, &unlock).unwrap(), data);

    // An old generation cut half way, resumed by this writer.
    let mut counter = MemStore::new();
    old(&mut counter).unwrap();
    let mut faulty = MemStore::new();
    faulty.cut_power_after(counter.writes / 2);
    assert!(old(&mut faulty).is_err());
    let mut medium = faulty.after_power_loss();
    let key = capture_key(&mut medium, &id);
    let mut w =
        CaptureWriter::begin(&mut medium, params("web01", data.len() as u64, &id), key).unwrap();
    assert_eq!(w.generation(), 1, "the cut generation is resumed");
    write_chunks(&mut w, &data, 3).unwrap();
    let s = w.finish().unwrap();
    assert_segment_digests(&mut medium, s.segments, layout::INCOMPAT_ZSTD);
    let r = keyless(&mut medium);
    assert!(r.is_ok(), "{:?}", r.problems);
    assert_eq!(read_all(&mut medium, "web01", None, &unlock).unwrap(), data);
}

fn full(f: &mut Fixture) -> VerifyReport {
    verify_full(
        &mut f.store,
        "web01",
        None,
        &Unlock::Identity(f.id.clone()),
        &mut NoProgress,
    )
    .unwrap()
}

#[test]
fn corrupted_record_is_named_by_both_verifiers() {
    let mut f = fixture();
    let path = seg(1, 1);
    let recs = record_offsets(&file(&mut f.store, &path));
    let (off, h) = recs[1].clone();
    f.store.file_mut(&path).unwrap()[off as usize + REC_HEADER_LEN + 7] ^= 0x40;
    let r = keyless(&mut f.store);
    assert!(
        r.problems.iter().any(|p| p.at.segment == Some(1)
            && p.at.record == Some(1)
            && p.at.file_range
                == Some(off..off + (REC_HEADER_LEN as u64) + u64::from(h.stored_len))
            && p.what.contains("do not match the record's hash")),
        "{:?}",
        r.problems
    );
    let r = full(&mut f);
    let p = r
        .problems
        .iter()
        .find(|p| p.at.disk_range.is_some())
        .expect("a problem with a disk range");
    assert_eq!((p.at.segment, p.at.record), (Some(1), Some(1)));
    let text = p.to_string();
    assert!(
        text.contains("capture web01 generation 1 segment 1 record 1")
            && text.contains("disk bytes"),
        "{text}"
    );
}

#[test]
fn truncated_segment_is_named() {
    let mut f = fixture();
    let path = seg(1, 0);
    let len = file(&mut f.store, &path).len();
    f.store.set_len(&path, len as u64 - 100).unwrap();
    let r = keyless(&mut f.store);
    assert!(
        r.problems
            .iter()
            .any(|p| p.at.segment == Some(0) && p.what.contains("truncated")),
        "{:?}",
        r.problems
    );
    let r = full(&mut f);
    assert!(!r.is_ok());
    // The records of the cut segment are refused for its length, which the keyless pass
    // names once: the record the cut took is named with the disk bytes it held, the whole
    // ones are not (a full verify listed every record of the segment, then record 0 alone).
    let resized = r
        .problems
        .iter()
        .filter(|p| p.what.contains("its manifest says"))
        .count();
    assert_eq!(resized, 0, "{:?}", r.problems);
    let lost: Vec<_> = r
        .problems
        .iter()
        .filter(|p| p.what.contains("lies past the end of its segment"))
        .collect();
    assert_eq!(lost.len(), 1, "{:?}", r.problems);
    assert!(lost[0].at.disk_range.is_some() && lost[0].at.record.is_some_and(|n| n > 0));
}

/// Generation 1 of another capture of the same name (another medium's), copied in as
/// generation 2: it read as this capture's own generation 1 "moved or replayed".
#[test]
fn a_generation_of_another_capture_of_the_name_is_named_so() {
    let mut f = fixture();
    let mut other = MemStore::new();
    let data = disk(9, 4, 0);
    capture(
        &mut other,
        params("web01", data.len() as u64, &f.id),
        None,
        &data,
    )
    .unwrap();
    let from = layout::generation_dir("web01", 1);
    let to = layout::generation_dir("web01", 2);
    f.store.create_dir_all(&to).unwrap();
    for e in other.list(&from).unwrap() {
        let b = file(&mut other, &format!("{from}/{}", e.name));
        f.store
            .write_at(&format!("{to}/{}", e.name), 0, &b)
            .unwrap();
    }
    let r = keyless(&mut f.store);
    let p = r
        .problems
        .iter()
        .find(|p| p.at.generation == Some(2))
        .unwrap_or_else(|| panic!("{:?}", r.problems));
    assert!(
        p.what.contains("another capture named web01") && !p.what.contains("moved or replayed"),
        "{p}"
    );
    // With the key, the planted generation is the finding, and the capture's own generation
    // 1 is still decrypted and checked (nothing at all was).
    let r = full(&mut f);
    assert!(!r.is_ok());
    assert!(r.records > 0 && r.generations > 0, "{r:?}");
    assert!(
        r.problems.iter().all(|p| p.at.generation == Some(2)),
        "{:?}",
        r.problems
    );
}

#[test]
fn swapped_records_are_caught() {
    let mut f = fixture();
    let path = seg(1, 0);
    let orig = file(&mut f.store, &path);
    let recs = record_offsets(&orig);
    // Two uncompressed full chunks have the same length: swap them whole.
    let same: Vec<_> = recs
        .iter()
        .filter(|(_, h)| h.stored_len == CS + 16)
        .collect();
    assert!(same.len() >= 2, "{recs:?}");
    let (a, b) = (same[0].0 as usize, same[1].0 as usize);
    let n = REC_HEADER_LEN + CS as usize + 16;
    let mut m = orig.clone();
    m[a..a + n].copy_from_slice(&orig[b..b + n]);
    m[b..b + n].copy_from_slice(&orig[a..a + n]);
    *f.store.file_mut(&path).unwrap() = m.clone();
    let r = keyless(&mut f.store);
    assert!(
        r.problems
            .iter()
            .any(|p| p.what.contains("replayed or reordered")),
        "{:?}",
        r.problems
    );
    // An attacker who also renumbers the headers passes the framing checks,
    // but not the manifest hash, and not decryption.
    for (off, rec) in [(a, same[0].1.record), (b, same[1].1.record)] {
        let mut h = RecordHeader::decode(&m[off..]).unwrap();
        h.record = rec;
        m[off..off + REC_HEADER_LEN].copy_from_slice(&h.encode());
    }
    *f.store.file_mut(&path).unwrap() = m;
    let r = keyless(&mut f.store);
    assert!(
        r.problems.iter().all(|p| p.at.record.is_none()),
        "framing is consistent now: {:?}",
        r.problems
    );
    assert!(!r.is_ok(), "segment hash must differ");
    let r = full(&mut f);
    assert!(
        r.problems
            .iter()
            .any(|p| p.at.record.is_some() && p.what.contains("fails authentication")),
        "{:?}",
        r.problems
    );
}

#[test]
fn replayed_segment_and_record_from_elsewhere_are_caught() {
    let mut f = fixture();
    // Whole segment replayed over another.
    let s0 = file(&mut f.store, &seg(1, 0)).clone();
    let mut g = Fixture {
        store: f.store.clone(),
        ..fixture_like(&f)
    };
    *g.store.file_mut(&seg(1, 1)).unwrap() = s0.clone();
    let r = keyless(&mut g.store);
    assert!(
        r.problems
            .iter()
            .any(|p| p.at.segment == Some(1) && p.what.contains("moved or replayed")),
        "{:?}",
        r.problems
    );
    // A record from segment 0 spliced into segment 1 at the same slot, with
    // its header renumbered and the trailer recomputed.
    let s1 = file(&mut f.store, &seg(1, 1)).clone();
    let r0 = record_offsets(&s0);
    let r1 = record_offsets(&s1);
    let (src, sh) = r0
        .iter()
        .find(|(_, h)| h.stored_len == CS + 16)
        .unwrap()
        .clone();
    let (dst, dh) = r1
        .iter()
        .find(|(_, h)| h.stored_len == CS + 16)
        .expect("a full random record in segment 1")
        .clone();
    let n = REC_HEADER_LEN + sh.stored_len as usize;
    let mut m = s1.clone();
    m[dst as usize..dst as usize + n].copy_from_slice(&s0[src as usize..src as usize + n]);
    let mut h = RecordHeader::decode(&m[dst as usize..]).unwrap();
    h.record = dh.record;
    m[dst as usize..dst as usize + REC_HEADER_LEN].copy_from_slice(&h.encode());
    let tpos = m.len() - layout::TRAILER_LEN;
    let t = layout::SegmentTrailer {
        records: r1.len() as u32,
        data_end: tpos as u64,
        hash: spec_digest(&m, layout::INCOMPAT_HEADER_DIGEST),
    };
    m[tpos..].copy_from_slice(&t.encode());
    *f.store.file_mut(&seg(1, 1)).unwrap() = m;
    let r = keyless(&mut f.store);
    assert!(
        r.problems
            .iter()
            .any(|p| p.what.contains("differ from the manifest")),
        "{:?}",
        r.problems
    );
    let r = full(&mut f);
    assert!(
        r.problems.iter().any(|p| p.at.segment == Some(1)
            && p.at.record == Some(dh.record)
            && p.what.contains("authentication")),
        "{:?}",
        r.problems
    );
}

fn fixture_like(f: &Fixture) -> Fixture {
    Fixture {
        store: MemStore::new(),
        id: f.id.clone(),
        data: f.data.clone(),
        key: f.key.clone(),
        summary: f.summary.clone(),
    }
}

#[test]
fn tampered_manifest_and_index_are_caught() {
    let f = fixture();
    let mpath = "MGEAR/web01/G0001/MANIFEST";
    // Plain corruption: CRC.
    let mut g = Fixture {
        store: f.store.clone(),
        ..fixture_like(&f)
    };
    g.store.file_mut(mpath).unwrap()[40] ^= 1;
    assert!(keyless(&mut g.store)
        .problems
        .iter()
        .any(|p| p.what.contains("CRC")));
    // An attacker re-encodes a changed manifest with valid CRC and root
    // hash: only the MAC catches it.
    let mut g = Fixture {
        store: f.store.clone(),
        ..fixture_like(&f)
    };
    let mut mf = layout::Manifest::decode(&file(&mut g.store, mpath)).unwrap();
    mf.manifest.source_desc = "forged".into();
    *g.store.file_mut(mpath).unwrap() = mf.manifest.encode(&mf.mac);
    assert!(
        keyless(&mut g.store).is_ok(),
        "keyless cannot see a re-encoded manifest"
    );
    let e = CaptureReader::open(&mut g.store, "web01", None, &Unlock::Identity(f.id.clone()))
        .unwrap_err();
    assert!(
        e.to_string().contains("manifest MAC does not verify"),
        "{e}"
    );
    assert!(!full(&mut g).is_ok());
    // Its key check changed: the key opened the capture's own slot, so that is a modified
    // manifest, not a wrong key (it sent the operator to replace a right key).
    let mut g = Fixture {
        store: f.store.clone(),
        ..fixture_like(&f)
    };
    let mut mf = layout::Manifest::decode(&file(&mut g.store, mpath)).unwrap();
    mf.manifest.key_check[0] ^= 1;
    *g.store.file_mut(mpath).unwrap() = mf.manifest.encode(&mf.mac);
    let e = CaptureReader::open(&mut g.store, "web01", None, &Unlock::Identity(f.id.clone()))
        .unwrap_err();
    assert!(!matches!(e, Error::WrongKey { .. }), "{e}");
    assert!(e.to_string().contains("the manifest was modified"), "{e}");
    // Bytes no field's value uses (the appliance id of a manifest naming no appliance),
    // changed with the root hash and CRC made again: decoded and encoded again they read the
    // same, so a MAC over the re-encoded fields passed; the MAC is over the bytes as read.
    let mut g = Fixture {
        store: f.store.clone(),
        ..fixture_like(&f)
    };
    let raw = file(&mut g.store, mpath);
    let mf = layout::Manifest::decode(&raw).unwrap();
    assert!(mf.manifest.appliance_id.is_none());
    let mut signed = mf.signed.clone();
    let at = 24 + 16 + 4 + 4 + 1 + "web01".len() + 4 + 8 + 8 + 8;
    assert_eq!(signed[at], 0, "the has-appliance byte");
    signed[at + 1] ^= 0x5a;
    let mut forged = signed.clone();
    forged.extend_from_slice(blake3::hash(&signed).as_bytes());
    forged.extend_from_slice(&mf.mac);
    let crc = crc32fast::hash(&forged);
    forged.extend_from_slice(&crc.to_le_bytes());
    let back = layout::Manifest::decode(&forged).unwrap();
    assert!(back.manifest == mf.manifest, "the fields read the same");
    *g.store.file_mut(mpath).unwrap() = forged;
    let e = CaptureReader::open(&mut g.store, "web01", None, &Unlock::Identity(f.id.clone()))
        .unwrap_err();
    assert!(
        e.to_string().contains("manifest MAC does not verify"),
        "{e}"
    );
    // A key from elsewhere (a key cache) that fails the key check is still the wrong key.
    let other = crate::DataKey::generate().unwrap();
    let e =
        CaptureReader::open(&mut f.store.clone(), "web01", None, &Unlock::Key(other)).unwrap_err();
    assert!(matches!(e, Error::WrongKey { .. }), "{e}");
    // INDEX byte flipped.
    let mut g = Fixture {
        store: f.store.clone(),
        ..fixture_like(&f)
    };
    let ipath = "MGEAR/web01/G0001/INDEX";
    let n = file(&mut g.store, ipath).len();
    g.store.file_mut(ipath).unwrap()[n - 20] ^= 1;
    assert!(keyless(&mut g.store)
        .problems
        .iter()
        .any(|p| p.what.contains("INDEX contents")));
    let e =
        CaptureReader::open(&mut g.store, "web01", None, &Unlock::Key(f.key.clone())).unwrap_err();
    assert!(e.to_string().contains("INDEX"), "{e}");
    // A flipped byte in its header: one finding (the header's), not also the hash's.
    g.store.file_mut(ipath).unwrap()[n - 20] ^= 1;
    g.store.file_mut(ipath).unwrap()[20] ^= 1;
    let problems = keyless(&mut g.store).problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].at.file_range.is_some(), "{problems:?}");
}

#[test]
fn delta_stores_only_changed_chunks() {
    let mut f = fixture();
    let mut changed = f.data.clone();
    let cs = CS as usize;
    changed[2 * cs + 5] ^= 0xff; // chunk 2 changes
    changed[7 * cs..8 * cs].fill(0); // chunk 7 becomes zero
    changed[13 * cs + 1] = 9; // chunk 13 changes
    let n = changed.len();
    changed[n - 1] ^= 1; // the tail chunk changes
    let dir = std::env::temp_dir().join(format!("mgear-delta-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cache = dir.join("web01.key");
    f.key.save_cache(&cache, "web01").unwrap();
    let mut p = params("web01", changed.len() as u64, &f.id);
    p.delta = true;
    p.passphrase = None;
    // Without the key: a clear error saying how to get it.
    let e = CaptureWriter::begin(&mut f.store, p, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("key cache"), "{e}");
    let mut p = params("web01", changed.len() as u64, &f.id);
    p.delta = true;
    let e = CaptureWriter::begin(&mut f.store, p, Some(DataKey::generate().unwrap())).unwrap_err();
    assert_eq!(e.to_string(), "this key does not open capture web01");
    let mut p = params("web01", changed.len() as u64, &f.id);
    p.delta = true;
    let key = DataKey::load_cache(&cache, "web01").unwrap();
    let (s, _) = capture(&mut f.store, p, Some(key), &changed).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!((s.generation, s.parent), (2, Some(1)));
    assert_eq!(s.stored_chunks, 3, "{s:?}");
    assert_eq!(s.zero_chunks, 5);
    let unlock = Unlock::Identity(f.id.clone());
    assert_eq!(
        read_all(&mut f.store, "web01", Some(2), &unlock).unwrap(),
        changed
    );
    assert_eq!(
        read_all(&mut f.store, "web01", None, &unlock).unwrap(),
        changed
    );
    assert_eq!(
        read_all(&mut f.store, "web01", Some(1), &unlock).unwrap(),
        f.data
    );
    let r = verify_full(&mut f.store, "web01", Some(2), &unlock, &mut NoProgress).unwrap();
    assert!(r.is_ok(), "{:?}", r.problems);
    let list = list_captures(&mut f.store).unwrap();
    assert_eq!(list[0].generations[1].parent, Some(1));
    // A damaged parent segment makes the delta's reads fail loudly.
    let path = seg(1, 0);
    let recs = record_offsets(&file(&mut f.store, &path));
    f.store.file_mut(&path).unwrap()[recs[0].0 as usize + REC_HEADER_LEN] ^= 1;
    let r = verify_full(&mut f.store, "web01", Some(2), &unlock, &mut NoProgress).unwrap();
    assert!(
        r.problems
            .iter()
            .any(|p| p.at.generation == Some(1) && p.at.disk_range.is_some()),
        "{:?}",
        r.problems
    );
}

/// Appends a delta the way a change-tracking capture does: chunks in
/// `dirty` (and any the parent cannot supply) are read and encoded, the
/// rest copied with `append_unchanged`. Stops after `stop_after` chunks.
fn write_delta_unchanged<S: Store>(
    w: &mut CaptureWriter<S>,
    data: &[u8],
    dirty: &[u64],
    stop_after: Option<u64>,
) -> crate::Result<(u64, u64)> {
    let enc = w.encoder();
    let (mut read, mut copied) = (0, 0);
    for i in w.resume_from()..w.chunk_count() {
        if stop_after.is_some_and(|n| i >= n) {
            break;
        }
        if dirty.contains(&i) || !w.can_copy_unchanged(i) {
            let start = (i * u64::from(CS)) as usize;
            let end = (start + CS as usize).min(data.len());
            w.append(enc.encode(i, &data[start..end])?)?;
            read += 1;
        } else {
            w.append_unchanged(i)?;
            copied += 1;
        }
        if (i + 1) % 4 == 0 {
            w.checkpoint()?;
        }
    }
    Ok((read, copied))
}

#[test]
fn delta_with_unchanged_chunks_reads_back_the_changed_disk() {
    let mut f = fixture();
    let cs = CS as usize;
    // 21 chunks (the last 1234 bytes); chunks 2 and 13 change, the disk
    // grows by a chunk and 100 bytes (so chunk 20 changes length).
    let mut changed = f.data.clone();
    changed[2 * cs + 5] ^= 0xff;
    changed[13 * cs + 1] = 9;
    let mut grow = vec![0u8; cs + 100 - 1234];
    SmallRng::seed_from_u64(77).fill_bytes(&mut grow);
    changed.extend_from_slice(&grow);
    assert_eq!(changed.len(), 21 * cs + 100);
    let dirty = [2u64, 13];

    // A full generation has no parent to copy from.
    let mut w =
        CaptureWriter::begin(MemStore::new(), params("x", 4 * CS as u64, &f.id), None).unwrap();
    assert!(!w.can_copy_unchanged(0));
    let e = w.append_unchanged(0).unwrap_err().to_string();
    assert!(e.contains("read and append it"), "{e}");

    let mut p = params("web01", changed.len() as u64, &f.id);
    p.delta = true;
    let mut w = CaptureWriter::begin(&mut f.store, p, Some(f.key.clone())).unwrap();
    assert!(w.can_copy_unchanged(19));
    assert!(!w.can_copy_unchanged(20), "chunk 20 changed length");
    assert!(!w.can_copy_unchanged(21), "chunk 21 is new");
    // Out of order is refused.
    assert!(w.append_unchanged(1).is_err());
    // Interrupted after chunk 10 (checkpoint at 8): the resume continues.
    let (r1, c1) = write_delta_unchanged(&mut w, &changed, &dirty, Some(10)).unwrap();
    assert_eq!((r1, c1), (1, 9));
    drop(w);
    let mut p = params("web01", changed.len() as u64, &f.id);
    p.delta = true;
    let mut w = CaptureWriter::begin(&mut f.store, p, Some(f.key.clone())).unwrap();
    assert_eq!(w.resume_from(), 8);
    let (r2, c2) = write_delta_unchanged(&mut w, &changed, &dirty, None).unwrap();
    // Chunks 13, 20 and 21 are read; 8..=12 and 14..=19 copied.
    assert_eq!((r2, c2), (3, 11));
    let s = w.finish().unwrap();
    assert_eq!((s.generation, s.parent), (2, Some(1)));
    assert_eq!(s.chunk_count, 22);
    assert_eq!(s.stored_chunks, 4, "{s:?}");
    let unlock = Unlock::Identity(f.id.clone());
    assert_eq!(
        read_all(&mut f.store, "web01", Some(2), &unlock).unwrap(),
        changed
    );
    let r = verify_full(&mut f.store, "web01", Some(2), &unlock, &mut NoProgress).unwrap();
    assert!(r.is_ok(), "{:?}", r.problems);
    // The whole-disk digest equals that of a delta that read every chunk.
    let mut p = params("web01", changed.len() as u64, &f.id);
    p.delta = true;
    let (full, _) = capture(&mut f.store, p, Some(f.key.clone()), &changed).unwrap();
    assert_eq!(full.generation, 3);
    assert_eq!(full.disk_digest, s.disk_digest);
    assert_ne!(f.summary.disk_digest, s.disk_digest);
}

/// Decoders and whole-medium readers never panic on random or mutated input.
#[test]
fn no_panic_on_hostile_input() {
    let f = fixture();
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    // Structure decoders.
    let mut fs = f.store.clone();
    let samples: Vec<Vec<u8>> = paths(&mut fs).iter().map(|p| file(&mut fs, p)).collect();
    for round in 0..3000 {
        let mut b = if round % 3 == 0 {
            let mut v = vec![0u8; rng.gen_range(0..400)];
            rng.fill_bytes(&mut v);
            v
        } else {
            samples[round % samples.len()].clone()
        };
        mutate(&mut rng, &mut b);
        let _ = SegmentHeader::decode(&b);
        let _ = RecordHeader::decode(&b);
        let _ = layout::SegmentTrailer::decode(&b);
        let _ = layout::IndexHeader::decode(&b);
        let _ = layout::IndexEntry::decode(&b);
        let _ = layout::IpartHeader::decode(&b);
        let _ = layout::Journal::decode(&b);
        let _ = layout::Manifest::decode(&b);
        let _ = layout::decode_key_payload(&b);
    }
    // Whole media with one file mutated.
    let all = paths(&mut fs);
    for round in 0..60 {
        let mut m = f.store.clone();
        let p = &all[round % all.len()];
        let mut b = file(&mut m, p).clone();
        mutate(&mut rng, &mut b);
        *m.file_mut(p).unwrap() = b;
        let _ = verify_keyless(&mut m, &mut NoProgress).unwrap();
        let _ = list_captures(&mut m).unwrap();
        let _ = medium_digests(&mut m).unwrap();
        let _ = verify_full(
            &mut m,
            "web01",
            None,
            &Unlock::Key(f.key.clone()),
            &mut NoProgress,
        );
        if let Ok(mut r) = CaptureReader::open(&mut m, "web01", None, &Unlock::Key(f.key.clone())) {
            for i in 0..r.chunk_count() {
                let _ = r.read_chunk(i);
            }
        }
        let mut p = params("web01", f.data.len() as u64, &f.id);
        p.delta = true;
        let _ = CaptureWriter::begin(&mut m, p, Some(f.key.clone()));
    }
    // An interrupted delta (journal, IPART, open segment) with one file
    // mutated: the resume path must fail cleanly or resume.
    let mut cut = f.store.clone();
    let mut p = params("web01", f.data.len() as u64, &f.id);
    p.delta = true;
    let mut changed = f.data.clone();
    for i in (0..changed.len()).step_by(CS as usize) {
        changed[i] ^= 0x5a;
    }
    cut.cut_power_after(30);
    assert!(capture(&mut cut, p, Some(f.key.clone()), &changed).is_err());
    let cut = cut.after_power_loss();
    let mut cut_files = cut.clone();
    let g2: Vec<String> = paths(&mut cut_files)
        .into_iter()
        .filter(|p| p.contains("/G0002/"))
        .collect();
    assert!(g2.iter().any(|p| p.ends_with("IPART")), "{g2:?}");
    for round in 0..80 {
        let mut m = cut.clone();
        let p = &g2[round % g2.len()];
        let mut b = file(&mut m, p);
        mutate(&mut rng, &mut b);
        *m.file_mut(p).unwrap() = b;
        let mut pp = params("web01", f.data.len() as u64, &f.id);
        pp.delta = true;
        if let Ok(mut w) = CaptureWriter::begin(&mut m, pp, Some(f.key.clone())) {
            let _ = write_chunks(&mut w, &changed, 3).and_then(|_| w.finish());
        }
        let _ = verify_keyless(&mut m, &mut NoProgress).unwrap();
        let _ = list_captures(&mut m).unwrap();
    }
}

fn mutate(rng: &mut SmallRng, b: &mut Vec<u8>) {
    match rng.gen_range(0..4) {
        0 if !b.is_empty() => {
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..b.len());
                b[i] ^= 1 << rng.gen_range(0..8);
            }
        }
        1 => {
            let n = rng.gen_range(0..=b.len());
            b.truncate(n);
        }
        2 if !b.is_empty() => {
            let i = rng.gen_range(0..b.len());
            b[i] = [0, 0xff, 0x7f, 0x80][rng.gen_range(0..4)];
        }
        _ => {
            let n = rng.gen_range(1..64);
            b.extend((0..n).map(|_| rng.gen::<u8>()));
        }
    }
}

/// `append_batch` must lay records out exactly as one-by-one `append`:
/// same positions, sizes, dedup and segment rolls (only the random segment
/// salts, hence the ciphertexts, differ), and read back the same disk.
#[test]
fn batched_appends_match_one_by_one() {
    let id = identity();
    let data = disk(7, 23, 999);
    let mut one = {
        let mut store = MemStore::new();
        let (s, _) = capture(
            &mut store,
            params("web01", data.len() as u64, &id),
            None,
            &data,
        )
        .unwrap();
        (s, store)
    };
    for (threads, batch) in [(1usize, 5usize), (3, 7), (4, 64)] {
        let mut store = MemStore::new();
        let mut w = CaptureWriter::begin(&mut store, params("web01", data.len() as u64, &id), None)
            .unwrap();
        let enc = w.encoder();
        let mut kinds = Vec::new();
        let mut i = 0;
        while i < w.chunk_count() {
            let chunks: Vec<_> = (i..(i + batch as u64).min(w.chunk_count()))
                .map(|j| {
                    let s = (j * u64::from(CS)) as usize;
                    let e = (s + CS as usize).min(data.len());
                    enc.encode(j, &data[s..e]).unwrap()
                })
                .collect();
            i += chunks.len() as u64;
            kinds.extend(w.append_batch(chunks, threads).unwrap());
            w.checkpoint().unwrap();
        }
        let presealed = w.presealed_records();
        let s = w.finish().unwrap();
        // Every record but each segment's first was sealed ahead.
        assert_eq!(
            presealed,
            s.stored_chunks - u64::from(s.segments),
            "threads {threads}, batch {batch}"
        );
        let o = &one.0;
        assert_eq!(
            (
                s.stored_chunks,
                s.zero_chunks,
                s.dedup_chunks,
                s.stored_bytes,
                s.segments
            ),
            (
                o.stored_chunks,
                o.zero_chunks,
                o.dedup_chunks,
                o.stored_bytes,
                o.segments
            ),
            "threads {threads}, batch {batch}"
        );
        assert_eq!(
            kinds
                .iter()
                .filter(|k| matches!(k, Appended::Dedup))
                .count() as u64,
            s.dedup_chunks
        );
        for n in 0..s.segments {
            let mine = file(&mut store, &seg(1, n));
            let theirs = file(&mut one.1, &seg(1, n));
            assert_eq!(mine.len(), theirs.len(), "segment {n}");
            // Record headers sit at the same offsets with the same lengths.
            let mut off = SEG_HEADER_LEN;
            while off + REC_HEADER_LEN <= mine.len() {
                let (Ok(a), Ok(b)) = (
                    RecordHeader::decode(&mine[off..off + REC_HEADER_LEN]),
                    RecordHeader::decode(&theirs[off..off + REC_HEADER_LEN]),
                ) else {
                    break;
                };
                assert_eq!(
                    (a.record, a.stored_len, a.plain_len, a.flags),
                    (b.record, b.stored_len, b.plain_len, b.flags)
                );
                off += REC_HEADER_LEN + a.stored_len as usize;
            }
        }
        let unlock = Unlock::Identity(id.clone());
        assert_eq!(read_all(&mut store, "web01", None, &unlock).unwrap(), data);
        let r = keyless(&mut store);
        assert!(r.is_ok(), "{:?}", r.problems);
    }
}

/// `read_chunks` (records opened on several threads) returns exactly what
/// `read_chunk` does, in the order asked, and names a corrupted record.
#[test]
fn parallel_reads_match_single_reads_and_name_bad_records() {
    let mut f = fixture();
    let unlock = Unlock::Identity(f.id.clone());
    let single: Vec<ChunkData> = {
        let mut r = CaptureReader::open(&mut f.store, "web01", None, &unlock).unwrap();
        (0..r.chunk_count())
            .map(|i| r.read_chunk(i).unwrap())
            .collect()
    };
    let order: Vec<u64> = (1..21).chain([0]).collect();
    for threads in [1, 2, 5] {
        let mut r = CaptureReader::open(&mut f.store, "web01", None, &unlock).unwrap();
        let got = r.read_chunks(&order, threads).unwrap();
        for (i, g) in order.iter().zip(&got) {
            assert_eq!(g, &single[*i as usize], "chunk {i}, {threads} threads");
        }
    }
    let path = seg(1, 1);
    let (off, _) = record_offsets(&file(&mut f.store, &path))[1].clone();
    f.store.file_mut(&path).unwrap()[off as usize + REC_HEADER_LEN + 7] ^= 0x40;
    let mut r = CaptureReader::open(&mut f.store, "web01", None, &unlock).unwrap();
    let e = r.read_chunks(&order, 3).unwrap_err().to_string();
    assert!(
        e.contains("segment 1 record 1") && e.contains("do not match the record's hash"),
        "{e}"
    );
}

/// On a FAT image behind `DirectFile`, `read_chunks` reads each record on
/// an opening thread straight from the device (`Store::locate`): the same
/// chunks as `read_chunk`, which reads through the store, and a record
/// whose stored bytes changed on the image, or whose header did, is named.
#[cfg(feature = "fat")]
#[test]
fn located_records_read_like_fetched_ones_and_name_bad_records() {
    use crate::store::{DirectFile, FatStore};
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("medium.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap()
    };
    FatStore::format(open(), &Default::default()).unwrap();
    let id = identity();
    let data = disk(1, 20, 1234);
    let mut store = FatStore::open(DirectFile::new(open())).unwrap();
    let p = params("web01", data.len() as u64, &id);
    capture(&mut store, p, None, &data).unwrap();
    store.unmount().unwrap();
    let unlock = Unlock::Identity(id.clone());
    let reopen = || FatStore::open_read_only(DirectFile::new(open())).unwrap();
    let mut store = reopen();
    let single: Vec<ChunkData> = {
        let mut r = CaptureReader::open(&mut store, "web01", None, &unlock).unwrap();
        (0..r.chunk_count())
            .map(|i| r.read_chunk(i).unwrap())
            .collect()
    };
    let order: Vec<u64> = (1..21).chain([0]).collect();
    for threads in [1, 3] {
        let mut r = CaptureReader::open(&mut store, "web01", None, &unlock).unwrap();
        let got = r.read_chunks(&order, threads).unwrap();
        for (i, g) in order.iter().zip(&got) {
            assert_eq!(g, &single[*i as usize], "chunk {i}, {threads} threads");
        }
    }
    let path = seg(1, 1);
    let mut bytes = vec![0u8; store.len(&path).unwrap().unwrap() as usize];
    store.read_exact_at(&path, 0, &mut bytes).unwrap();
    let (off, h) = record_offsets(&bytes)[1].clone();
    let total = (REC_HEADER_LEN + h.stored_len as usize) as u64;
    let at = store
        .locate(&path, off, total)
        .unwrap()
        .expect("a record on a FAT image is located")
        .at;
    drop(store);
    let flip = |pos: u64| {
        let f = open();
        let mut b = [0u8];
        f.read_exact_at(&mut b, pos).unwrap();
        f.write_all_at(&[b[0] ^ 0x40], pos).unwrap();
    };
    let read = || {
        let mut store = reopen();
        let mut r = CaptureReader::open(&mut store, "web01", None, &unlock).unwrap();
        r.read_chunks(&order, 3).unwrap_err().to_string()
    };
    flip(at + REC_HEADER_LEN as u64 + 7);
    let e = read();
    assert!(
        e.contains("segment 1 record 1") && e.contains("do not match the record's hash"),
        "{e}"
    );
    flip(at + REC_HEADER_LEN as u64 + 7);
    // The header's record number (bytes 4..8 after the magic): another record's.
    flip(at + 6);
    let e = read();
    assert!(e.contains("segment 1") && e.contains("header"), "{e}");
}

#[test]
fn commit_is_checked_by_the_keyless_verifier_and_absent_is_fine() {
    use crate::commit::{self, CommitFile, SignerRole};
    let mut f = fixture();
    // An old capture without COMMIT verifies.
    assert!(keyless(&mut f.store).is_ok());
    let expected = commit::expected_commit(&mut f.store, "web01", 1)
        .unwrap()
        .unwrap();
    assert_eq!(expected.manifest_root, f.summary.manifest_root);
    let site = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let signed = CommitFile {
        signatures: vec![expected.sign(SignerRole::Site, &site)],
        commit: expected.clone(),
    };
    commit::write_commit(&mut f.store, &signed).unwrap();
    assert_eq!(
        commit::read_commit(&mut f.store, "web01", 1).unwrap(),
        Some(signed.clone())
    );
    let r = keyless(&mut f.store);
    assert!(r.is_ok(), "{:?}", r.problems);
    assert!(medium_digests(&mut f.store)
        .unwrap()
        .iter()
        .any(|(p, _)| p == "MGEAR/web01/G0001/COMMIT"));
    // Replacing a key slot (a swap of who can open it) is found, once: the MANIFEST
    // recorded the slot, and the COMMIT binds the same record.
    let keys = file(&mut f.store, "MGEAR/web01/KEYS");
    let mut other = keys.clone();
    let n = other.len() - 1;
    other[n] ^= 1;
    f.store.write_at("MGEAR/web01/KEYS", 0, &other).unwrap();
    let r = keyless(&mut f.store);
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert!(
        r.problems[0]
            .what
            .contains("key slot KEYS is damaged or was replaced"),
        "{:?}",
        r.problems
    );
    // What keyed verify and ingest say instead of "this key does not open it".
    assert_eq!(
        crate::verify::changed_key_slot(&mut f.store, "web01").unwrap(),
        Some("KEYS")
    );
    f.store.write_at("MGEAR/web01/KEYS", 0, &keys).unwrap();
    assert_eq!(
        crate::verify::changed_key_slot(&mut f.store, "web01").unwrap(),
        None
    );
    // A forged signature is named.
    let mut forged = signed.clone();
    forged.signatures[0].signature[5] ^= 1;
    commit::write_commit(&mut f.store, &forged).unwrap();
    let r = keyless(&mut f.store);
    assert!(
        r.problems
            .iter()
            .any(|p| p.what.contains("does not verify")),
        "{:?}",
        r.problems
    );
    // Junk in place of a COMMIT is named, not a panic.
    f.store
        .write_at("MGEAR/web01/G0001/COMMIT", 0, &[0xAB; 300])
        .unwrap();
    assert!(!keyless(&mut f.store).is_ok());
}

/// A courier adds a generation 2 of their own capture of the same name (made with only the
/// target's public key) beside the capture's intact, finished generation 1. Keyless verify
/// blamed the capture's own KEYS ("damaged or was replaced": the capture is lost), and keyed
/// verify and ingest were told the same. The foreign generation is what is named; KEYS is
/// not, and generation 1 still reads.
#[test]
fn a_generation_of_another_capture_is_named_not_the_captures_key_slots() {
    let mut f = fixture();
    let mut theirs = MemStore::new();
    let (_, key) = capture(
        &mut theirs,
        params("web01", f.data.len() as u64, &f.id),
        None,
        &f.data,
    )
    .unwrap();
    let mut p = params("web01", f.data.len() as u64, &f.id);
    p.delta = true;
    let mut changed = f.data.clone();
    changed[5] ^= 1;
    capture(&mut theirs, p, Some(key), &changed).unwrap();
    for path in paths(&mut theirs)
        .into_iter()
        .filter(|p| p.starts_with("MGEAR/web01/G0002/"))
    {
        let bytes = file(&mut theirs, &path);
        f.store.create_dir_all("MGEAR/web01/G0002").unwrap();
        f.store.write_at(&path, 0, &bytes).unwrap();
    }
    let r = keyless(&mut f.store);
    assert!(!r.is_ok());
    let said: Vec<&str> = r.problems.iter().map(|p| p.what.as_str()).collect();
    assert!(
        said.iter().any(|w| w.contains(
            "generation 2's MANIFEST records other key slots than those on the medium now, which \
             generation 1 records"
        )),
        "{said:?}"
    );
    assert!(
        !said.iter().any(|w| w.contains("key slot KEYS")),
        "{said:?}"
    );
    assert_eq!(
        crate::verify::changed_key_slot(&mut f.store, "web01").unwrap(),
        None
    );
    let unlock = Unlock::Identity(f.id.clone());
    assert_eq!(
        read_all(&mut f.store, "web01", Some(1), &unlock).unwrap(),
        f.data
    );
    // The courier's KEYS put in beside their generation: generation 1 is now the odd one
    // out, and the finding must not call it the planted one.
    let slots = ["MGEAR/web01/KEYS", "MGEAR/web01/KEYPASS"];
    let ours: Vec<Vec<u8>> = slots.iter().map(|p| file(&mut f.store, p)).collect();
    for p in slots {
        let t = file(&mut theirs, p);
        f.store.write_at(p, 0, &t).unwrap();
        f.store.set_len(p, t.len() as u64).unwrap();
    }
    let r = keyless(&mut f.store);
    let said: Vec<&str> = r.problems.iter().map(|p| p.what.as_str()).collect();
    assert!(
        said.iter().any(|w| w.contains(
            "generation 1's MANIFEST records other key slots than those on the medium now"
        ) && w.contains("one side was planted or moved here")
            && !w.contains("belongs to another capture")),
        "{said:?}"
    );
    for (p, o) in slots.iter().zip(&ours) {
        f.store.write_at(p, 0, o).unwrap();
        f.store.set_len(p, o.len() as u64).unwrap();
    }
    // A KEYS changed as well is the capture's loss again: no generation records it.
    let mut keys = file(&mut f.store, "MGEAR/web01/KEYS");
    let n = keys.len() - 1;
    keys[n] ^= 1;
    f.store.write_at("MGEAR/web01/KEYS", 0, &keys).unwrap();
    let r = keyless(&mut f.store);
    assert!(
        r.problems
            .iter()
            .any(|p| p.what.contains("key slot KEYS is damaged or was replaced")),
        "{:?}",
        r.problems
    );
}
