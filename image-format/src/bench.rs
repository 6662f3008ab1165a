//! Chunk-size benchmark: encodes one synthetic disk at every chunk size and
//! reports throughput, stored size, index size, dedup and delta granularity.
//! `benches/chunk_size.rs` prints it; the CLI may call [`run`] too. The
//! figures justify [`crate::layout::DEFAULT_CHUNK`] (see FORMAT.md §10).

use std::time::Instant;

use crate::layout::{self, ENTRY_LEN};
use crate::store::MemStore;
use crate::{Appended, CaptureParams, CaptureWriter, Result};

/// Figures for one chunk size.
#[derive(Debug, Clone)]
pub struct BenchRow {
    pub chunk_size: u32,
    /// Encode + encrypt + write (to memory) throughput of the source, MB/s.
    pub mb_per_s: f64,
    /// Bytes of records written.
    pub stored_bytes: u64,
    /// Bytes of the INDEX.
    pub index_bytes: u64,
    pub zero_chunks: u64,
    pub dedup_chunks: u64,
    /// Bytes a delta would have to re-store after 64 scattered 4 KiB writes.
    pub delta_bytes: u64,
}

/// `len` incompressible bytes, the same for the same `seed` (BLAKE3's
/// output stream): test disks that must store at their full size.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    let mut v = vec![0u8; len];
    h.finalize_xof().fill(&mut v);
    v
}

/// A deterministic disk image made of regions of random length (4 KiB to
/// 4 MiB, as file system extents are): random (incompressible), text-like
/// (compressible), sparse (one 4 KiB block in zeros), zero, and copies of
/// earlier regions at 4 KiB alignment (duplicated files).
pub fn synthetic_disk(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut d = vec![0u8; size];
    let words: [&[u8]; 8] = [
        b"kernel ",
        b"usr/lib ",
        b"0x7f45 ",
        b"ELF ",
        b"systemd ",
        b"libc.so ",
        b"INFO ",
        b"\n",
    ];
    let mut off = 0;
    while off < size {
        let region = 4096usize << (next() % 11);
        let end = (off + region).min(size);
        match next() % 8 {
            0 | 1 => d[off..end].iter_mut().for_each(|b| *b = next() as u8),
            2 | 3 => {
                let mut i = off;
                while i < end {
                    let w = words[(next() % 8) as usize];
                    let n = w.len().min(end - i);
                    d[i..i + n].copy_from_slice(&w[..n]);
                    i += n;
                }
            }
            4 => {
                let at = off + (next() as usize % (end - off)) / 4096 * 4096;
                let e = (at + 4096).min(end);
                d[at..e].iter_mut().for_each(|b| *b = next() as u8);
            }
            5 if off >= end - off => {
                let src = (next() as usize % (off - (end - off) + 1)) / 4096 * 4096;
                d.copy_within(src..src + (end - off), off);
            }
            _ => {}
        }
        off = end;
    }
    d
}

/// Runs the benchmark over `disk` for each chunk size.
pub fn run(disk: &[u8], sizes: &[u32]) -> Result<Vec<BenchRow>> {
    let id = age::x25519::Identity::generate();
    let mut rows = Vec::new();
    // 64 scattered 4 KiB writes, the same for every chunk size.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let writes: Vec<u64> = (0..64)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % disk.len() as u64
        })
        .collect();
    for &cs in sizes {
        let mut store = MemStore::new();
        let mut p = CaptureParams::new("bench", disk.len() as u64);
        p.chunk_size = cs;
        p.recipients = vec![id.to_public()];
        let start = Instant::now();
        let mut w = CaptureWriter::begin(&mut store, p, None)?;
        let enc = w.encoder();
        for i in 0..w.chunk_count() {
            let s = (i * u64::from(cs)) as usize;
            let e = (s + cs as usize).min(disk.len());
            if let Appended::Stored { .. } = w.append(enc.encode(i, &disk[s..e])?)? {}
        }
        let sum = w.finish()?;
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        let mut touched: Vec<u64> = writes.iter().map(|o| o / u64::from(cs)).collect();
        touched.sort_unstable();
        touched.dedup();
        rows.push(BenchRow {
            chunk_size: cs,
            mb_per_s: disk.len() as f64 / secs / 1e6,
            stored_bytes: sum.stored_bytes,
            index_bytes: (layout::INDEX_HEADER_LEN + ENTRY_LEN * sum.chunk_count as usize + 16)
                as u64,
            zero_chunks: sum.zero_chunks,
            dedup_chunks: sum.dedup_chunks,
            delta_bytes: touched.len() as u64 * u64::from(cs),
        });
    }
    Ok(rows)
}

/// The rows as a printable table.
pub fn table(rows: &[BenchRow]) -> String {
    let mut s = String::from(
        "chunk       MB/s  stored MiB  index KiB  zero  dedup  delta MiB (64 x 4 KiB writes)\n",
    );
    for r in rows {
        s.push_str(&format!(
            "{:>5} KiB {:>6.1} {:>11.2} {:>10.1} {:>5} {:>6} {:>10.2}\n",
            r.chunk_size / 1024,
            r.mb_per_s,
            r.stored_bytes as f64 / (1 << 20) as f64,
            r.index_bytes as f64 / 1024.0,
            r.zero_chunks,
            r.dedup_chunks,
            r.delta_bytes as f64 / (1 << 20) as f64,
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_runs_and_reports_consistent_figures() {
        let disk = synthetic_disk(2 << 20, 5);
        let rows = run(&disk, &[64 * 1024, 1024 * 1024]).unwrap();
        assert_eq!(rows.len(), 2);
        // Smaller chunks: bigger index, finer delta granularity.
        assert!(rows[0].index_bytes > rows[1].index_bytes);
        assert!(rows[0].delta_bytes <= rows[1].delta_bytes);
        assert!(rows[0].stored_bytes > 0 && rows[0].stored_bytes < disk.len() as u64 * 2);
        assert!(table(&rows).contains("1024 KiB"));
    }
}
