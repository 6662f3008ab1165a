//! Dedup across machines (an explicit opt-in): the keyless side.
//!
//! A capture made with `mgear capture --dedup-across-machines web01` shares
//! web01's data key and capture id, and its index entries may point at
//! records web01 already stored. Each such generation's MANIFEST ends with a
//! **peer list** ([`layout::INCOMPAT_PEERS`]): every capture generation of
//! another machine whose segments its index points into, pinned by the root
//! hash of that generation's MANIFEST. Index entry stream
//! [`layout::PEER_STREAM_BASE`] + i names peer i.
//!
//! This module checks those pins without any key ([`check_peers`], run by
//! the keyless verifier; the keyed reader refuses the same cases before
//! reading a chunk) and finds who borrows from a machine ([`borrowers_of`],
//! so `mgear medium rm` refuses to remove records another machine uses).
//! What an attacker learns and what the shared key allows is in FORMAT.md
//! §14 "Dedup across disks and across machines, and what it reveals".

use alloc::string::String;
use alloc::vec::Vec;

use crate::error::{Error, Location, Result};
use crate::layout::{self, Manifest, Peer};
use crate::medium;
use crate::set;

/// The machine a capture belongs to: the set of a disk stream (`web01.d1`
/// → `web01`), else the capture itself.
pub fn machine_of(capture: &str) -> &str {
    set::parse_disk_stream_name(capture).map_or(capture, |(s, _)| s)
}

/// What is wrong with the peers generation `m` of capture `name` pins,
/// without any key: each must be a finished generation on the media with
/// exactly the pinned MANIFEST root and the same capture id (one data key).
/// A removed peer, one replaced by another capture or re-captured, or one
/// whose medium is not given, is named here.
pub fn check_peers<S: crate::Store + ?Sized>(
    store: &mut S,
    name: &str,
    m: &Manifest,
) -> Result<Vec<(Location, String)>> {
    let mut out = Vec::new();
    for p in &m.peers {
        if let Some(why) = peer_problem(store, m, p)? {
            out.push((
                Location::capture(name).generation(m.generation),
                alloc::format!(
                    "{} (capture {name} generation {} borrows records from it: dedup across machines)",
                    why,
                    m.generation
                ),
            ));
        }
    }
    Ok(out)
}

/// Why peer `p` of manifest `m` does not hold what `m` pinned; `None` when it does.
pub(crate) fn peer_problem<S: crate::Store + ?Sized>(
    store: &mut S,
    m: &Manifest,
    p: &Peer,
) -> Result<Option<String>> {
    Ok(match medium::read_manifest(store, &p.name, p.generation) {
        Ok(None) => Some(alloc::format!(
            "peer {} generation {} is not on the media: it was removed, or the medium holding it \
             is not given",
            p.name,
            p.generation
        )),
        Ok(Some(f)) if f.root != p.root => Some(alloc::format!(
            "peer {} generation {} is not the one pinned (its MANIFEST root differs): it was \
             replaced or captured again",
            p.name,
            p.generation
        )),
        Ok(Some(f)) if f.manifest.capture_id != m.capture_id => Some(alloc::format!(
            "peer {} generation {} has another capture id",
            p.name,
            p.generation
        )),
        Ok(Some(_)) => None,
        Err(Error::Corrupt { what, .. }) => Some(alloc::format!(
            "peer {} generation {} is damaged: {what}",
            p.name,
            p.generation
        )),
        Err(e) => return Err(e),
    })
}

/// A finished generation that borrows records from another machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Borrower {
    /// The borrowing capture (`web02`, or a disk stream `web02.d0`).
    pub capture: String,
    pub generation: u32,
    /// What it borrows from.
    pub peer: Peer,
}

/// Every finished generation on the medium (of a capture of another
/// machine) whose peer list names a capture of `machine` (`web01`, or a disk
/// stream `web01.dK`; compared without case, as FAT does). Keyless.
pub fn borrowers_of<S: crate::Store + ?Sized>(
    store: &mut S,
    machine: &str,
) -> Result<Vec<Borrower>> {
    let mut out = Vec::new();
    for name in medium::capture_names(store)? {
        if machine_of(&name).eq_ignore_ascii_case(machine) {
            continue;
        }
        for g in medium::generations(store, &name)? {
            let f = match medium::read_manifest(store, &name, g) {
                Ok(Some(f)) => f,
                Ok(None) | Err(Error::Corrupt { .. }) => continue,
                Err(e) => return Err(e),
            };
            for p in f.manifest.peers {
                if machine_of(&p.name).eq_ignore_ascii_case(machine) {
                    out.push(Borrower {
                        capture: name.clone(),
                        generation: g,
                        peer: p,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The peers of generation `generation` of capture `name` (empty when it
/// borrows nothing or is unfinished). Keyless.
pub fn peers_of<S: crate::Store + ?Sized>(
    store: &mut S,
    name: &str,
    generation: u32,
) -> Result<Vec<Peer>> {
    Ok(medium::read_manifest(store, name, generation)?
        .map(|f| f.manifest.peers)
        .unwrap_or_default())
}

/// Which capture's segment holds the record of an index entry with stream
/// `stream` in capture `own` whose MANIFEST lists `peers`: `own` for 0, a
/// disk stream of the own set for 1..=64, peer i for
/// [`layout::PEER_STREAM_BASE`] + i; `None` for anything else.
pub fn record_holder(own: &str, peers: &[Peer], stream: u16) -> Option<String> {
    if stream >= layout::PEER_STREAM_BASE {
        return peers
            .get(usize::from(stream - layout::PEER_STREAM_BASE))
            .map(|p| p.name.clone());
    }
    set::record_stream(own, stream)
}

#[cfg(all(test, feature = "crypto"))]
mod tests {
    use super::*;
    use crate::layout::INCOMPAT_PEERS;
    use crate::store::{MemStore, Store};
    use crate::verify::{assert_keyless_problem, keyless_problems};
    use crate::{CaptureParams, CaptureReader, CaptureWriter, DataKey, NoProgress, Unlock};

    const CS: u32 = 64 * 1024;
    const ID: [u8; 16] = [5; 16];

    /// `n` chunks of content `seed` (distinct seeds never share a chunk).
    fn chunks(seed: u8, n: usize) -> Vec<u8> {
        (0..n * CS as usize)
            .map(|i| ((i / 3) as u8).wrapping_mul(seed) ^ (i >> 16) as u8 ^ seed)
            .collect()
    }

    fn params(name: &str, data: &[u8], peers: &[(&str, u32)]) -> CaptureParams {
        let mut p = CaptureParams::new(name, data.len() as u64);
        p.chunk_size = CS;
        p.recipients = vec![age::x25519::Identity::generate().to_public()];
        p.capture_id = Some(ID);
        p.peers = peers.iter().map(|(n, g)| (n.to_string(), *g)).collect();
        p
    }

    fn capture(
        store: &mut MemStore,
        p: CaptureParams,
        data: &[u8],
        key: &DataKey,
    ) -> crate::Result<crate::CaptureSummary> {
        let mut w = CaptureWriter::begin(&mut *store, p, Some(key.clone()))?;
        let enc = w.encoder();
        for i in w.resume_from()..w.chunk_count() {
            let s = (i * u64::from(CS)) as usize;
            let e = (s + CS as usize).min(data.len());
            w.append(enc.encode(i, &data[s..e])?)?;
        }
        w.finish()
    }

    fn read_all(store: &mut MemStore, name: &str, g: Option<u32>, key: &DataKey) -> Vec<u8> {
        let mut r = CaptureReader::open_with_key(&mut *store, name, g, key).unwrap();
        let mut out = Vec::new();
        for i in 0..r.chunk_count() {
            match r.read_chunk(i).unwrap() {
                crate::ChunkData::Zero { len } => out.resize(out.len() + len as usize, 0),
                crate::ChunkData::Data(d) => out.extend_from_slice(&d),
            }
        }
        out
    }

    fn manifest(store: &mut MemStore, name: &str, g: u32) -> crate::layout::ManifestFile {
        medium::read_manifest(store, name, g).unwrap().unwrap()
    }

    /// web01 (six chunks), and web02: four of web01's chunks and three of its own.
    fn two_machines() -> (MemStore, DataKey, Vec<u8>, Vec<u8>) {
        let mut store = MemStore::new();
        let key = DataKey::generate().unwrap();
        let web01 = chunks(3, 6);
        let mut web02 = web01[CS as usize..5 * CS as usize].to_vec();
        web02.extend(chunks(7, 3));
        capture(&mut store, params("web01", &web01, &[]), &web01, &key).unwrap();
        (store, key, web01, web02)
    }

    #[test]
    fn a_second_machine_stores_only_what_the_first_did_not() {
        let (mut store, key, web01, web02) = two_machines();
        let s = capture(
            &mut store,
            params("web02", &web02, &[("web01", 1)]),
            &web02,
            &key,
        )
        .unwrap();
        assert_eq!((s.stored_chunks, s.dedup_chunks), (3, 4), "{s:?}");
        let m = manifest(&mut store, "web02", 1);
        assert_ne!(m.manifest.incompat & INCOMPAT_PEERS, 0);
        let root01 = manifest(&mut store, "web01", 1).root;
        assert_eq!(
            m.manifest.peers,
            [Peer {
                name: "web01".into(),
                generation: 1,
                root: root01
            }]
        );
        assert_eq!(read_all(&mut store, "web02", None, &key), web02);
        assert_eq!(read_all(&mut store, "web01", None, &key), web01);
        let v = crate::verify_full(
            &mut store,
            "web02",
            None,
            &Unlock::Key(key.clone()),
            &mut NoProgress,
        )
        .unwrap();
        assert!(v.is_ok(), "{:?}", v.problems);
        assert_eq!(keyless_problems(&mut store), Vec::<String>::new());
        let b = borrowers_of(&mut store, "WEB01").unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].capture.as_str(), b[0].generation), ("web02", 1));
        assert!(borrowers_of(&mut store, "web02").unwrap().is_empty());

        // A delta of web02 keeps pointing at web01 without being told again.
        let mut p = params("web02", &web02, &[]);
        p.delta = true;
        let s2 = capture(&mut store, p, &web02, &key).unwrap();
        assert_eq!(s2.stored_chunks, 0, "{s2:?}");
        assert_eq!(manifest(&mut store, "web02", 2).manifest.peers.len(), 1);
        assert_eq!(read_all(&mut store, "web02", Some(2), &key), web02);
    }

    #[test]
    fn a_peer_that_shares_nothing_is_not_pinned() {
        let (mut store, key, _, _) = two_machines();
        let other = chunks(11, 2);
        capture(
            &mut store,
            params("web03", &other, &[("web01", 1)]),
            &other,
            &key,
        )
        .unwrap();
        let m = manifest(&mut store, "web03", 1).manifest;
        assert!(m.peers.is_empty());
        assert_eq!(m.incompat & INCOMPAT_PEERS, 0);
        assert!(borrowers_of(&mut store, "web01").unwrap().is_empty());
    }

    #[test]
    fn a_removed_peer_is_reported_and_refused() {
        let (mut store, key, _, web02) = two_machines();
        capture(
            &mut store,
            params("web02", &web02, &[("web01", 1)]),
            &web02,
            &key,
        )
        .unwrap();
        store.remove_file("MGEAR/web01/G0001/MANIFEST").unwrap();
        assert_keyless_problem(
            &mut store,
            &[
                "capture web02 generation 1",
                "peer web01 generation 1 is not on the media",
            ],
        );
        let e = CaptureReader::open_with_key(&mut store, "web02", None, &key).unwrap_err();
        assert!(matches!(e, crate::Error::NoGeneration { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("borrows records from machine web01") && text.contains("Give the medium"),
            "{text}"
        );
    }

    #[test]
    fn a_replaced_peer_is_reported_and_refused() {
        let (mut store, key, _, web02) = two_machines();
        capture(
            &mut store,
            params("web02", &web02, &[("web01", 1)]),
            &web02,
            &key,
        )
        .unwrap();
        // web01 generation 1 rewritten by a key holder (a re-capture): its
        // MAC is good, its root is not the pinned one.
        let mut f = manifest(&mut store, "web01", 1);
        f.manifest.created_unix += 1;
        let keys = crate::keys::Subkeys::derive(&key, &ID);
        let bytes = f
            .manifest
            .encode(&keys.manifest_mac(&f.manifest.signed_bytes()));
        store
            .write_at("MGEAR/web01/G0001/MANIFEST", 0, &bytes)
            .unwrap();
        assert_keyless_problem(
            &mut store,
            &["peer web01 generation 1 is not the one pinned"],
        );
        let e = CaptureReader::open_with_key(&mut store, "web02", None, &key).unwrap_err();
        assert!(matches!(e, crate::Error::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("not the one pinned"), "{e}");
    }

    #[test]
    fn a_delta_stores_again_what_a_replaced_peer_held() {
        let (mut store, key, _, web02) = two_machines();
        capture(
            &mut store,
            params("web02", &web02, &[("web01", 1)]),
            &web02,
            &key,
        )
        .unwrap();
        store.remove_file("MGEAR/web01/G0001/MANIFEST").unwrap();
        let mut p = params("web02", &web02, &[]);
        p.delta = true;
        let s = capture(&mut store, p, &web02, &key).unwrap();
        assert_eq!((s.stored_chunks, s.dedup_chunks), (4, 3), "{s:?}");
        let m = manifest(&mut store, "web02", 2).manifest;
        assert!(m.peers.is_empty() && m.incompat & INCOMPAT_PEERS == 0);
        assert_eq!(read_all(&mut store, "web02", Some(2), &key), web02);
    }

    #[test]
    fn a_swapped_peer_segment_never_reads_as_other_bytes() {
        // Another capture under the same key, with other content: its
        // segment copied over web01's has other records and another salt.
        let (mut store, key, _, web02) = two_machines();
        let other = chunks(4, 6);
        capture(&mut store, params("web09", &other, &[]), &other, &key).unwrap();
        capture(
            &mut store,
            params("web02", &web02, &[("web01", 1)]),
            &web02,
            &key,
        )
        .unwrap();
        let b = store
            .file_mut("MGEAR/web09/G0001/SEG-00000")
            .unwrap()
            .clone();
        *store.file_mut("MGEAR/web01/G0001/SEG-00000").unwrap() = b;
        let mut r = CaptureReader::open_with_key(&mut store, "web02", None, &key).unwrap();
        assert!(r.read_chunk(0).is_err());
        assert!(r.read_chunk(5).is_ok(), "its own records still read");
        drop(r);
        assert_keyless_problem(&mut store, &["capture web01 generation 1"]);
    }

    #[test]
    fn borrowing_is_refused_across_keys_sizes_and_within_a_machine() {
        let (mut store, key, _, web02) = two_machines();
        let e = capture(
            &mut store,
            params("web02", &web02, &[("web01", 2)]),
            &web02,
            &key,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not finished"), "{e}");
        let mut p = params("web03", &web02, &[("web01", 1)]);
        p.capture_id = Some([6; 16]);
        let e = capture(&mut store, p, &web02, &key).unwrap_err();
        assert!(e.to_string().contains("another capture id"), "{e}");
        let mut p = params("web04", &web02, &[("web01", 1)]);
        p.chunk_size = 2 * CS;
        let e = capture(&mut store, p, &web02, &key).unwrap_err();
        assert!(e.to_string().contains("--chunk-size 65536"), "{e}");
        let e = capture(
            &mut store,
            params("web01.d1", &web02, &[("web01.d0", 1)]),
            &web02,
            &key,
        )
        .unwrap_err();
        assert!(e.to_string().contains("same machine"), "{e}");
    }

    #[test]
    fn a_set_borrows_from_a_set_and_a_machine_from_a_borrower() {
        let mut store = MemStore::new();
        let key = DataKey::generate().unwrap();
        // db01: disk 1 repeats two chunks of disk 0 (a cross-stream entry).
        let d0 = chunks(3, 4);
        let mut d1 = d0[..2 * CS as usize].to_vec();
        d1.extend(chunks(5, 2));
        capture(&mut store, params("db01.d0", &d0, &[]), &d0, &key).unwrap();
        let mut p = params("db01.d1", &d1, &[]);
        p.dedup_with = vec!["db01.d0".into()];
        capture(&mut store, p, &d1, &key).unwrap();
        // db02.d0 holds db01's disk 1 and a chunk of its own.
        let mut e0 = d1.clone();
        e0.extend(chunks(9, 1));
        let s = capture(
            &mut store,
            params("db02.d0", &e0, &[("db01.d0", 1), ("db01.d1", 1)]),
            &e0,
            &key,
        )
        .unwrap();
        assert_eq!(s.stored_chunks, 1, "{s:?}");
        let peers: Vec<String> = manifest(&mut store, "db02.d0", 1)
            .manifest
            .peers
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(peers, ["db01.d0", "db01.d1"], "in order of first use");
        assert_eq!(read_all(&mut store, "db02.d0", None, &key), e0);
        // web05 borrows from db02.d0 only, and so reaches db01's records,
        // pinned as db01's.
        let s = capture(
            &mut store,
            params("web05", &e0, &[("db02.d0", 1)]),
            &e0,
            &key,
        )
        .unwrap();
        assert_eq!(s.stored_chunks, 0, "{s:?}");
        let peers: Vec<String> = manifest(&mut store, "web05", 1)
            .manifest
            .peers
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(peers, ["db01.d0", "db01.d1", "db02.d0"]);
        assert_eq!(read_all(&mut store, "web05", None, &key), e0);
        assert_eq!(borrowers_of(&mut store, "db01").unwrap().len(), 4);
        // (No SET files were written here: only that is reported.)
        let problems = keyless_problems(&mut store);
        assert!(
            problems
                .iter()
                .all(|p| p.contains("not bound by a set manifest")),
            "{problems:?}"
        );
    }

    #[test]
    fn an_interrupted_borrowing_capture_resumes() {
        let (mut store, key, _, web02) = two_machines();
        {
            let p = params("web02", &web02, &[("web01", 1)]);
            let mut w = CaptureWriter::begin(&mut store, p, Some(key.clone())).unwrap();
            let enc = w.encoder();
            for i in 0..5 {
                let s = (i * u64::from(CS)) as usize;
                w.append(enc.encode(i, &web02[s..s + CS as usize]).unwrap())
                    .unwrap();
            }
            w.checkpoint().unwrap();
        }
        let s = capture(
            &mut store,
            params("web02", &web02, &[("web01", 1)]),
            &web02,
            &key,
        )
        .unwrap();
        assert_eq!(s.resumed_from, 5);
        assert_eq!((s.stored_chunks, s.dedup_chunks), (3, 4), "{s:?}");
        assert_eq!(read_all(&mut store, "web02", None, &key), web02);
        // Other peers than the interrupted run's: not a resume.
        let (mut store, key, _, web02) = two_machines();
        {
            let p = params("web02", &web02, &[("web01", 1)]);
            let mut w = CaptureWriter::begin(&mut store, p, Some(key.clone())).unwrap();
            w.checkpoint().unwrap();
        }
        let e = capture(&mut store, params("web02", &web02, &[]), &web02, &key).unwrap_err();
        assert!(matches!(e, crate::Error::ResumeMismatch { .. }), "{e}");
    }
}
