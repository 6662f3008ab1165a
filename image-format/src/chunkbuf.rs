//! [`ChunkBuf`]: a chunk's bytes at a 4 KiB-aligned address, so one buffer
//! goes from the medium read through decryption to a volume written with
//! `O_DIRECT` (which needs aligned memory), with no bounce copy on the way.
//!
//! Safe code only: the buffer is a `Vec<u8>` over-allocated by
//! [`CHUNK_ALIGN`] bytes and the chunk starts at the first aligned address in
//! it (a `Vec`'s heap block does not move while it is not grown, whoever
//! owns the `Vec`).

use alloc::vec::Vec;

/// Alignment of a [`ChunkBuf`]'s bytes: a multiple of every logical block
/// size and DMA alignment direct I/O asks for (512, 4096).
pub const CHUNK_ALIGN: usize = 4096;

/// Bytes at a [`CHUNK_ALIGN`]-aligned address; dereferences to `[u8]`.
#[derive(Default)]
pub struct ChunkBuf {
    /// The chunk is `raw[at..at + len]` (`raw` may be initialised further).
    raw: Vec<u8>,
    at: usize,
    len: usize,
}

impl ChunkBuf {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Self {
        let mut b = ChunkBuf::default();
        b.resize(len);
        b
    }

    /// A copy of `bytes`.
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut b = ChunkBuf::default();
        b.room_for(bytes.len());
        b.raw.truncate(b.at);
        b.raw.extend_from_slice(bytes);
        b.len = bytes.len();
        b
    }

    /// Makes it `len` bytes long. Bytes it had stay; bytes it grows by are
    /// zeros.
    pub fn resize(&mut self, len: usize) {
        if len > self.len && self.len == 0 && self.capacity() < len {
            // Nothing to keep: a zeroed block from the allocator (`calloc`
            // hands out fresh pages without clearing them again).
            let raw = alloc::vec![0u8; len + CHUNK_ALIGN];
            self.at = offset_to_align(raw.as_ptr());
            self.raw = raw;
        } else if len > self.len {
            self.room_for(len);
            let end = self.at + self.len;
            self.raw.truncate(end);
            self.raw.resize(self.at + len, 0);
        }
        self.len = len;
    }

    /// Shortens it to `len` bytes (no-op when not longer).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.at..self.at + self.len]
    }

    /// The bytes, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.at..self.at + self.len]
    }

    /// The bytes as a `Vec` (moved to its front: a copy of the chunk).
    pub fn into_vec(mut self) -> Vec<u8> {
        self.raw.truncate(self.at + self.len);
        self.raw.drain(..self.at);
        self.raw
    }

    /// Bytes the buffer holds without growing.
    pub fn capacity(&self) -> usize {
        self.raw.capacity().saturating_sub(self.at)
    }

    /// Makes room for `len` bytes at an aligned address, keeping the
    /// current bytes (moved to the new block if it has to grow).
    fn room_for(&mut self, len: usize) {
        // Once allocated, `at` is the aligned offset in `raw`'s block and
        // `raw` is initialised at least up to it.
        if self.raw.capacity() > 0 && self.raw.capacity() >= self.at + len {
            return;
        }
        let mut raw = Vec::with_capacity(len + CHUNK_ALIGN);
        let at = offset_to_align(raw.as_ptr());
        raw.resize(at, 0);
        raw.extend_from_slice(self.as_slice());
        self.raw = raw;
        self.at = at;
    }
}

/// How far from `p` the next [`CHUNK_ALIGN`]-aligned address is
/// (`align_offset` may give up by its contract; this cannot).
pub(crate) fn offset_to_align(p: *const u8) -> usize {
    (CHUNK_ALIGN - p as usize % CHUNK_ALIGN) % CHUNK_ALIGN
}

impl core::ops::Deref for ChunkBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl core::ops::DerefMut for ChunkBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl Clone for ChunkBuf {
    fn clone(&self) -> Self {
        ChunkBuf::from_slice(self)
    }
}

impl PartialEq for ChunkBuf {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for ChunkBuf {}

impl PartialEq<[u8]> for ChunkBuf {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_slice() == other
    }
}

impl PartialEq<Vec<u8>> for ChunkBuf {
    fn eq(&self, other: &Vec<u8>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl core::fmt::Debug for ChunkBuf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.as_slice().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aligned(b: &ChunkBuf) -> bool {
        (b.as_ptr() as usize).is_multiple_of(CHUNK_ALIGN)
    }

    #[test]
    fn bytes_stay_aligned_and_kept_through_growing_and_shrinking() {
        let mut b = ChunkBuf::default();
        assert!(b.is_empty());
        b.resize(10);
        assert!(aligned(&b) && *b == [0u8; 10]);
        b.copy_from_slice(b"0123456789");
        b.truncate(4);
        assert_eq!(&*b, b"0123");
        // Growing again shows zeros, not the old bytes past the length.
        b.resize(8);
        assert_eq!(&*b, b"0123\0\0\0\0");
        // Growing past the block moves the bytes to a new, aligned block.
        b.resize(3 * CHUNK_ALIGN + 5);
        assert!(aligned(&b));
        assert_eq!(&b[..8], b"0123\0\0\0\0");
        assert!(b[8..].iter().all(|&x| x == 0));
        let c = b.clone();
        assert!(aligned(&c) && c == b);
        assert_eq!(c.into_vec(), b.as_slice().to_vec());
        let s = ChunkBuf::from_slice(b"abc");
        assert!(aligned(&s) && s == b"abc".to_vec());
        assert!(s.capacity() >= 3);
        assert!(ChunkBuf::zeroed(0).is_empty());
    }
}
