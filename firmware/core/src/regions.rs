//! SHA-256 of the raw medium by regions: the `regions` of a seal or arrival
//! attestation ([`crate::attest::AttestationBody`]).
//!
//! Seal and arrival look at the medium in two views: the keyless verifier
//! walks the files (and the attestation's file digests come from the same
//! reads, [`crate::attest::FileDigests`]), and this pass reads the raw
//! device front to back in large aligned transfers. The two do not share
//! reads: the verifier visits files in capture order, a region's SHA-256
//! needs the raw bytes in device order, and hashing, not reading, sets the
//! pace (SHA-256 runs at a quarter of the speed of a read from the page
//! cache on the simulator's host; on the board the SD bus is faster than
//! software hashing). What they share is time: on a platform with a spare
//! core ([`crate::hal::Platform::start_region_hashes`]) this pass runs
//! beside the file walk, so seal takes as long as the longer of the two,
//! not their sum. Every platform runs the same [`RegionHasher`], so the
//! hashes do not depend on who computed them.

use alloc::vec::Vec;

use sha2::{Digest, Sha256};

use crate::hal::{BlockDevice, HwError};

/// SHA-256 of each region of a block device, one read at a time, so that
/// the caller can report progress (or stop) between reads.
///
/// A region that reads as zeros throughout (free space of a fresh medium)
/// is not run through SHA-256: its hash is that of as many zero bytes,
/// computed once per region length. Checking for zeros runs about ten times
/// faster than SHA-256, and the hash is the same either way.
pub struct RegionHasher {
    block: usize,
    total: u64,
    region: u64,
    /// Bytes per read, whole blocks.
    chunk: usize,
    /// Bytes hashed so far.
    pos: u64,
    buf: Vec<u8>,
    h: Sha256,
    /// Leading bytes of the current region that were all zeros and are not
    /// in `h` yet; `None` once a non-zero byte came.
    zeros: Option<u64>,
    /// SHA-256 of a region of zeros, by length (full regions share one).
    zero_hash: Option<(u64, [u8; 32])>,
    out: Vec<[u8; 32]>,
}

/// Whether `b` holds only zeros (an OR over each piece, which vectorizes,
/// stopping at the first piece that is not zero).
fn all_zero(b: &[u8]) -> bool {
    b.chunks(4096)
        .all(|c| c.iter().fold(0u8, |acc, &x| acc | x) == 0)
}

/// Feed `n` zero bytes to `h`.
fn hash_zeros(h: &mut Sha256, mut n: u64) {
    const ZEROS: [u8; 4096] = [0; 4096];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..k]);
        n -= k as u64;
    }
}

impl RegionHasher {
    /// Regions of `region` bytes (the last one may be shorter) of `dev`,
    /// read `chunk` bytes (rounded down to whole blocks) per request.
    pub fn new<D: BlockDevice + ?Sized>(dev: &D, region: u64, chunk: usize) -> Self {
        let block = dev.block_size().max(1);
        let total = dev.block_count().saturating_mul(block as u64);
        let region = region.max(1);
        let chunk = (chunk / block).max(1) * block;
        RegionHasher {
            block,
            total,
            region,
            chunk,
            pos: 0,
            buf: alloc::vec![0u8; chunk],
            h: Sha256::new(),
            zeros: Some(0),
            zero_hash: None,
            out: Vec::with_capacity(total.div_ceil(region) as usize),
        }
    }

    /// Bytes hashed so far.
    pub fn done(&self) -> u64 {
        self.pos
    }

    /// Bytes of the medium.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Read and hash the next piece (never across a region's end); `false`
    /// once the whole medium is hashed.
    pub fn step<D: BlockDevice + ?Sized>(&mut self, dev: &mut D) -> Result<bool, HwError> {
        if self.pos >= self.total {
            return Ok(false);
        }
        let region_end = ((self.pos / self.region + 1) * self.region).min(self.total);
        let n = ((region_end - self.pos) as usize).min(self.chunk);
        // Region and chunk sizes are block multiples except a last partial block.
        let nb = n.div_ceil(self.block) * self.block;
        dev.read_blocks(self.pos / self.block as u64, &mut self.buf[..nb])?;
        let data = &self.buf[..n];
        match self.zeros {
            Some(z) if all_zero(data) => self.zeros = Some(z + n as u64),
            Some(z) => {
                hash_zeros(&mut self.h, z);
                self.h.update(data);
                self.zeros = None;
            }
            None => self.h.update(data),
        }
        self.pos += n as u64;
        if self.pos == region_end {
            let hash = match self.zeros {
                Some(len) => self.zero_region(len),
                None => core::mem::take(&mut self.h).finalize().into(),
            };
            self.out.push(hash);
            self.zeros = Some(0);
        }
        Ok(self.pos < self.total)
    }

    /// SHA-256 of `len` zero bytes.
    fn zero_region(&mut self, len: u64) -> [u8; 32] {
        match self.zero_hash {
            Some((l, h)) if l == len => h,
            _ => {
                let mut h = Sha256::new();
                hash_zeros(&mut h, len);
                let h: [u8; 32] = h.finalize().into();
                // The full-size one is kept: a last, shorter region comes once.
                if self.zero_hash.is_none() || len == self.region {
                    self.zero_hash = Some((len, h));
                }
                h
            }
        }
    }

    /// The hashes, in region order (those of the regions hashed so far).
    pub fn finish(self) -> Vec<[u8; 32]> {
        self.out
    }
}

/// SHA-256 of each `region`-byte region of `dev`, reading `chunk` bytes per
/// request. `on_read(done, total)` is called after every read with the
/// bytes hashed so far; returning `false` stops the pass (`Ok(None)`).
pub fn hash_regions<D: BlockDevice + ?Sized>(
    dev: &mut D,
    region: u64,
    chunk: usize,
    on_read: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<Option<Vec<[u8; 32]>>, HwError> {
    let mut h = RegionHasher::new(dev, region, chunk);
    while h.step(dev)? {
        if !on_read(h.done(), h.total()) {
            return Ok(None);
        }
    }
    on_read(h.done(), h.total());
    Ok(Some(h.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemDisk;

    #[test]
    fn regions_are_sha256_of_the_raw_bytes_in_any_chunking() {
        let mut disk = MemDisk::new(40 * 512);
        for (i, b) in disk.data.iter_mut().enumerate() {
            *b = (i * 7 % 253) as u8;
        }
        let want: Vec<[u8; 32]> = disk
            .data
            .chunks(8 * 512)
            .map(|r| Sha256::digest(r).into())
            .collect();
        assert_eq!(want.len(), 5);
        for (region, chunk) in [
            (8 * 512, 512),
            (8 * 512, 1536),
            (8 * 512, 4096),
            (8 * 512, 1 << 20),
        ] {
            let mut calls = 0;
            let got = hash_regions(&mut disk, region, chunk, &mut |done, total| {
                assert!(done <= total);
                calls += 1;
                true
            })
            .unwrap()
            .unwrap();
            assert_eq!(got, want, "chunk {chunk}");
            assert!(calls >= 5);
        }
        // A last, shorter region.
        let got = hash_regions(&mut disk, 12 * 512, 4096, &mut |_, _| true)
            .unwrap()
            .unwrap();
        let short: Vec<[u8; 32]> = disk
            .data
            .chunks(12 * 512)
            .map(|r| Sha256::digest(r).into())
            .collect();
        assert_eq!((got.len(), &got), (4, &short));
        // Regions of zeros (all of one, the tail of another, the head of a
        // third) hash as SHA-256 of their bytes too.
        let mut holes = disk.clone();
        holes.data[8 * 512..16 * 512].fill(0);
        holes.data[20 * 512..32 * 512].fill(0);
        holes.data[39 * 512..].fill(0);
        holes.data[31 * 512 + 5] = 9;
        for (region, chunk) in [(8 * 512, 512), (8 * 512, 4096), (12 * 512, 1024)] {
            let want: Vec<[u8; 32]> = holes
                .data
                .chunks(region)
                .map(|r| Sha256::digest(r).into())
                .collect();
            let got = hash_regions(&mut holes, region as u64, chunk, &mut |_, _| true)
                .unwrap()
                .unwrap();
            assert_eq!(got, want, "region {region} chunk {chunk}");
        }
        let mut zeros = MemDisk::new(20 * 512);
        let got = hash_regions(&mut zeros, 8 * 512, 1024, &mut |_, _| true)
            .unwrap()
            .unwrap();
        let all_zeros: Vec<[u8; 32]> = zeros
            .data
            .chunks(8 * 512)
            .map(|r| Sha256::digest(r).into())
            .collect();
        assert_eq!(got, all_zeros);

        // A changed byte changes its region's hash, and only that one.
        disk.data[3 * 8 * 512 + 17] ^= 1;
        let got = hash_regions(&mut disk, 8 * 512, 4096, &mut |_, _| true)
            .unwrap()
            .unwrap();
        let differ: Vec<usize> = (0..5).filter(|&i| got[i] != want[i]).collect();
        assert_eq!(differ, [3]);
        // Stopping early returns nothing.
        let mut seen = 0;
        let stopped = hash_regions(&mut disk, 8 * 512, 4096, &mut |done, _| {
            seen = done;
            done < 8192
        })
        .unwrap();
        assert_eq!((stopped, seen), (None, 8192));
    }
}
