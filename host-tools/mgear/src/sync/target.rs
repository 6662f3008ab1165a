//! The target side (`mgear serve`): holds the ingested volume, tells the
//! source which keyed chunk ids it has, and applies authenticated chunks.
//!
//! The id list is computed from the volume itself when `serve` starts (one
//! full read) and updated after every chunk written, so it always describes
//! what is on the volume: a source that reconnects after a dropped
//! connection sends only what has not landed yet. Writes are idempotent
//! (a chunk is written whole at its own offset), synced every
//! [`SYNC_EVERY`] bytes, when a session ends for any reason, and before
//! APPLIED is sent. After a crash of `serve` itself the next start hashes
//! the volume again, so unsynced writes that were lost are simply sent again.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use image_format::{layout, DataKey};

use super::session::{self, IdKey, RecordMeta, Session};
use super::wire::{self, err, ty, Fields};
use crate::exit::{coded, usage, FOUND, IO, USAGE};

/// Sync the volume after this many bytes written.
pub const SYNC_EVERY: u64 = 64 << 20;

/// The capture a target serves and its key.
pub struct Served {
    pub name: String,
    pub key: DataKey,
    pub capture_id: [u8; 16],
    pub chunk_size: u32,
}

/// The volume being kept in sync, with the keyed id of every chunk on it.
pub struct Volume {
    file: File,
    path: PathBuf,
    size: u64,
    chunk_size: u32,
    ids: Vec<[u8; 32]>,
    id_key: IdKey,
    unsynced: u64,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub chunks: u64,
    pub bytes: u64,
}

/// Parse `--target file:PATH` or `dev:PATH`.
pub fn target_path(spec: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = spec
        .strip_prefix("file:")
        .or_else(|| spec.strip_prefix("dev:"))
    {
        if !p.is_empty() {
            return Ok(PathBuf::from(p));
        }
    }
    if let Some(q) = spec.strip_prefix("qcow2:") {
        return Err(usage(format!(
            "--target {spec}: serve writes raw volumes only; export the qcow2 with \
             `qemu-nbd -c /dev/nbd0 {q}` and serve dev:/dev/nbd0"
        )));
    }
    Err(usage(format!(
        "--target {spec}: use file:PATH (the raw volume written by ingest) or dev:/dev/DEVICE"
    )))
}

impl Volume {
    /// Open a raw volume read-write and hash every chunk.
    pub fn open(path: PathBuf, chunk_size: u32, id_key: IdKey) -> anyhow::Result<Self> {
        if !layout::valid_chunk_size(chunk_size) {
            return Err(usage(format!(
                "chunk size {chunk_size} is not valid for a capture"
            )));
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open target volume {} for writing", path.display()))?;
        let size = file
            .seek(SeekFrom::End(0))
            .with_context(|| format!("cannot find the size of {}", path.display()))?;
        let count = layout::chunk_count(size, chunk_size);
        let mut ids = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        let mut buf = vec![0u8; chunk_size as usize];
        for i in 0..count {
            let len = layout::chunk_len(size, chunk_size, i) as usize;
            file.read_exact_at(&mut buf[..len], i * chunk_size as u64)
                .with_context(|| {
                    format!("reading target volume {} at chunk {i}", path.display())
                })?;
            ids.push(id_key.id(&buf[..len]));
        }
        Ok(Volume {
            file,
            path,
            size,
            chunk_size,
            ids,
            id_key,
            unsynced: 0,
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Write chunk `index` (already authenticated) and record its id.
    fn apply(&mut self, index: u64, data: &[u8], id: [u8; 32]) -> anyhow::Result<()> {
        let at = index * self.chunk_size as u64;
        let ctx = || format!("writing chunk {index} to {}", self.path.display());
        if session::is_zero(data) && self.punch(at, data.len() as u64) {
            // A hole reads as zeros; nothing else to write.
        } else {
            self.file.write_all_at(data, at).with_context(ctx)?;
        }
        self.unsynced += data.len() as u64;
        if let Some(slot) = usize::try_from(index)
            .ok()
            .and_then(|i| self.ids.get_mut(i))
        {
            *slot = id;
        }
        if self.unsynced >= SYNC_EVERY {
            self.sync()?;
        }
        Ok(())
    }

    /// Deallocate a range so a zero chunk stays sparse; false if the file system cannot.
    fn punch(&self, at: u64, len: u64) -> bool {
        use nix::fcntl::{fallocate, FallocateFlags};
        let (Ok(off), Ok(len)) = (i64::try_from(at), i64::try_from(len)) else {
            return false;
        };
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        fallocate(self.file.as_fd(), flags, off, len).is_ok()
    }

    /// Make every write so far durable.
    pub fn sync(&mut self) -> anyhow::Result<()> {
        self.file
            .sync_data()
            .with_context(|| format!("syncing target volume {}", self.path.display()))?;
        self.unsynced = 0;
        Ok(())
    }
}

/// Send an ERROR to the peer (best effort) and return the matching local error.
fn refuse(w: &mut impl Write, code: u8, message: String) -> anyhow::Error {
    let _ = wire::send(w, ty::ERROR, &wire::error_payload(code, &message)).and_then(|_| w.flush());
    let exit = match code {
        err::BAD_RECORD => FOUND,
        err::IO => IO,
        _ => USAGE,
    };
    coded(exit, format!("refused the source: {message}"))
}

/// One session with a source over `r`/`w`. Chunks applied before an error
/// stay applied (and are synced by the caller).
pub fn session<R: Read, W: Write>(
    r: &mut R,
    w: W,
    peer: &str,
    cap: &Served,
    vol: &mut Volume,
    applied: &mut Applied,
) -> anyhow::Result<()> {
    let mut w = BufWriter::with_capacity(256 * 1024, w);
    let (t, p) = wire::recv(r, peer)?;
    if t != ty::HELLO {
        return Err(refuse(
            &mut w,
            err::PROTOCOL,
            format!("expected HELLO, got {}", wire::type_name(t)),
        ));
    }
    let mut f = Fields::new(&p, "HELLO");
    let name = f.str()?;
    let size = f.u64()?;
    let source_nonce: [u8; 32] = f.array()?;
    f.end()?;
    if name != cap.name {
        return Err(refuse(
            &mut w,
            err::UNKNOWN_CAPTURE,
            format!(
                "this target does not know capture {name}: it serves capture {}",
                cap.name
            ),
        ));
    }
    if size != vol.size {
        return Err(refuse(
            &mut w,
            err::SIZE,
            format!(
                "the source disk is {size} bytes but the target volume is {} bytes; \
                 sync cannot resize volumes (grow the volume, or take a new capture)",
                vol.size
            ),
        ));
    }
    let target_nonce = session::nonce()?;
    let s = Session::new(&cap.key, &cap.capture_id, &source_nonce, &target_nonce);
    let count = vol.ids.len() as u64;
    let mut welcome = Vec::with_capacity(132);
    welcome.extend_from_slice(&cap.capture_id);
    welcome.extend_from_slice(&cap.chunk_size.to_le_bytes());
    welcome.extend_from_slice(&vol.size.to_le_bytes());
    welcome.extend_from_slice(&count.to_le_bytes());
    welcome.extend_from_slice(&target_nonce);
    welcome.extend_from_slice(s.proof("target", &cap.name).as_bytes());
    wire::send(&mut w, ty::WELCOME, &welcome)?;
    w.flush()?;

    let (t, p) = wire::recv(r, peer)?;
    match t {
        ty::PROOF => {}
        ty::ERROR => {
            let (_, m) = wire::parse_error(&p)?;
            bail!("the source gave up: {m}");
        }
        other => {
            return Err(refuse(
                &mut w,
                err::PROTOCOL,
                format!("expected PROOF, got {}", wire::type_name(other)),
            ))
        }
    }
    let mut f = Fields::new(&p, "PROOF");
    let proof: [u8; 32] = f.array()?;
    f.end()?;
    if s.proof("source", &cap.name) != blake3::Hash::from_bytes(proof) {
        return Err(refuse(
            &mut w,
            err::WRONG_KEY,
            format!(
                "the source's data key for {} is not this capture's key: use the key cache written \
                 by the capture of this disk",
                cap.name
            ),
        ));
    }
    for (n, part) in vol.ids.chunks(wire::IDS_PER_FRAME as usize).enumerate() {
        let mut p = Vec::with_capacity(12 + part.len() * 32);
        p.extend_from_slice(&(n as u64 * wire::IDS_PER_FRAME as u64).to_le_bytes());
        p.extend_from_slice(&(part.len() as u32).to_le_bytes());
        for id in part {
            p.extend_from_slice(id);
        }
        wire::send(&mut w, ty::IDS, &p)?;
    }
    w.flush()?;

    let mut last_seq = 0u64;
    loop {
        let (t, p) = wire::recv(r, peer)?;
        match t {
            ty::CHUNK => {
                let mut f = Fields::new(&p, "CHUNK");
                let m = RecordMeta {
                    seq: f.u64()?,
                    index: f.u64()?,
                    plain_len: f.u32()?,
                    flags: f.u8()?,
                    chunk_id: f.array()?,
                };
                let sealed = f.rest();
                if m.seq <= last_seq {
                    return Err(refuse(
                        &mut w,
                        err::PROTOCOL,
                        format!("record sequence {} after {last_seq}", m.seq),
                    ));
                }
                last_seq = m.seq;
                if m.index >= count
                    || m.plain_len != layout::chunk_len(vol.size, cap.chunk_size, m.index)
                {
                    return Err(refuse(
                        &mut w,
                        err::BAD_RECORD,
                        format!(
                            "chunk {} of {} bytes does not fit a volume of {count} chunks",
                            m.index, m.plain_len
                        ),
                    ));
                }
                let Some(payload) = s.open(&m, sealed) else {
                    return Err(refuse(
                        &mut w,
                        err::BAD_RECORD,
                        format!("chunk {} does not authenticate", m.index),
                    ));
                };
                let data = match session::unpack(m.flags, payload, m.plain_len) {
                    Ok(d) => d,
                    Err(e) => {
                        return Err(refuse(
                            &mut w,
                            err::BAD_RECORD,
                            format!("chunk {}: {e:#}", m.index),
                        ))
                    }
                };
                if vol.id_key.id(&data) != m.chunk_id {
                    return Err(refuse(
                        &mut w,
                        err::BAD_RECORD,
                        format!("chunk {} does not match its keyed id", m.index),
                    ));
                }
                if let Err(e) = vol.apply(m.index, &data, m.chunk_id) {
                    return Err(refuse(&mut w, err::IO, format!("{e:#}")));
                }
                applied.chunks += 1;
                applied.bytes += data.len() as u64;
            }
            ty::DONE => {
                let mut f = Fields::new(&p, "DONE");
                let _sent = f.u64()?;
                let _expected: [u8; 32] = f.array()?;
                f.end()?;
                if let Err(e) = vol.sync() {
                    return Err(refuse(&mut w, err::IO, format!("{e:#}")));
                }
                let mut a = Vec::with_capacity(48);
                a.extend_from_slice(&applied.chunks.to_le_bytes());
                a.extend_from_slice(&applied.bytes.to_le_bytes());
                let digest = session::volume_digest(vol.size, cap.chunk_size, &vol.ids);
                a.extend_from_slice(&digest);
                a.extend_from_slice(s.tag("applied", &digest).as_bytes());
                wire::send(&mut w, ty::APPLIED, &a)?;
                w.flush()?;
                return Ok(());
            }
            ty::ERROR => {
                let (_, m) = wire::parse_error(&p)?;
                bail!("the source gave up: {m}");
            }
            other => {
                return Err(refuse(
                    &mut w,
                    err::PROTOCOL,
                    format!("unexpected {} during transfer", wire::type_name(other)),
                ))
            }
        }
    }
}

/// Serve sessions from `listener` until one completes (`once`) or forever.
/// Each session's outcome is logged on stderr; returns the completed session's counts.
pub fn serve_loop(
    listener: std::net::TcpListener,
    cap: &Served,
    vol: &mut Volume,
    once: bool,
) -> anyhow::Result<Applied> {
    let mut total = Applied {
        chunks: 0,
        bytes: 0,
    };
    for conn in listener.incoming() {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                eprintln!("mgear serve: accept failed: {e}");
                continue;
            }
        };
        let peer = conn
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        let started = Instant::now();
        let mut applied = Applied {
            chunks: 0,
            bytes: 0,
        };
        let result = conn
            .try_clone()
            .context("cloning the connection")
            .and_then(|w| {
                session(
                    &mut std::io::BufReader::with_capacity(256 * 1024, &conn),
                    w,
                    &peer,
                    cap,
                    vol,
                    &mut applied,
                )
            });
        let synced = vol.sync();
        total.chunks += applied.chunks;
        total.bytes += applied.bytes;
        match result.and(synced) {
            Ok(()) => {
                eprintln!(
                    "mgear serve: session with {peer} complete: {} chunks applied ({} bytes) in {:.1} s",
                    applied.chunks,
                    applied.bytes,
                    started.elapsed().as_secs_f64()
                );
                if once {
                    return Ok(total);
                }
            }
            Err(e) => eprintln!(
                "mgear serve: session with {peer} ended early after {} chunks applied (kept; a reconnecting \
                 source continues from there): {e:#}",
                applied.chunks
            ),
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            target_path("file:vol.raw").unwrap(),
            PathBuf::from("vol.raw")
        );
        assert_eq!(
            target_path("dev:/dev/vdb").unwrap(),
            PathBuf::from("/dev/vdb")
        );
        assert!(target_path("qcow2:v.qcow2")
            .unwrap_err()
            .to_string()
            .contains("qemu-nbd"));
        assert!(target_path("vol.raw").is_err());
        assert!(target_path("file:").is_err());
    }

    #[test]
    fn volume_ids_follow_writes_and_zero_chunks_stay_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.raw");
        let cs = 65536u32;
        std::fs::write(&p, vec![1u8; 2 * cs as usize + 10]).unwrap();
        let key = IdKey::derive(&DataKey::from_bytes([1; 32]), &[2; 16]);
        let mut v = Volume::open(p.clone(), cs, key.clone()).unwrap();
        assert_eq!(v.ids.len(), 3);
        assert_eq!(v.ids[2], key.id(&[1u8; 10]));
        let zeros = vec![0u8; cs as usize];
        v.apply(1, &zeros, key.id(&zeros)).unwrap();
        v.sync().unwrap();
        let again = Volume::open(p.clone(), cs, key.clone()).unwrap();
        assert_eq!(again.ids, v.ids);
        let back = std::fs::read(&p).unwrap();
        assert!(back[cs as usize..2 * cs as usize].iter().all(|&b| b == 0));
        assert!(back[..cs as usize].iter().all(|&b| b == 1));
    }
}
