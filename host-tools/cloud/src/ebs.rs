//! AWS EBS snapshots written through the EBS direct APIs, with no EC2 instance and no staging copy:
//! `StartSnapshot`, `PutSnapshotBlock` for every non-zero 512 KiB block (many in flight),
//! `CompleteSnapshot` with the aggregated checksum, then optionally EC2 `RegisterImage` so the
//! snapshot boots as an AMI.
//!
//! - [`config`]: credentials, region and endpoints from the standard AWS environment
//!   (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, `AWS_PROFILE` and
//!   `~/.aws/credentials`+`~/.aws/config`, `AWS_REGION`/`AWS_DEFAULT_REGION`,
//!   `AWS_ENDPOINT_URL_EBS`/`AWS_ENDPOINT_URL_EC2`/`AWS_ENDPOINT_URL`).
//! - [`sign`]: SigV4 through the `aws-sigv4` crate (AWS's own signer, maintained with the Rust SDK;
//!   its synchronous `sign` API fits our blocking ureq client, so we take the signer without the
//!   SDK's async runtime and never hand-roll the canonicalisation).
//! - [`client`]: the five EBS calls, retried with backoff on throttling and 5xx; errors name the
//!   call and carry AWS's own message.
//! - [`ec2`]: `DescribeSnapshots` (wait for `completed`) and `RegisterImage` (Query API).
//! - [`writer`]: a snapshot written like a disk: positional writes buffered into 512 KiB blocks,
//!   zero blocks skipped, puts on a few threads, progress kept in a state directory so a killed
//!   run resumes into the same pending snapshot.
//! - `double` (feature `test-double`): a strict offline stand-in for the service that rejects every
//!   request shape AWS would reject, and keeps the blocks so a test can read them back.
//!
//! Checksums, as AWS defines them: each block's is the base64 SHA-256 of its 524288 bytes; the
//! snapshot's (aggregation method `LINEAR`) is the base64 SHA-256 over the concatenated raw
//! 32-byte block digests in ascending block-index order ([`aggregate_checksum`]).

pub mod client;
pub mod config;
#[cfg(any(test, feature = "test-double"))]
pub mod double;
pub mod ec2;
pub mod sign;
pub mod writer;

pub use client::{BlockRef, EbsClient, NewSnapshot, Snapshot};
pub use config::AwsConfig;
pub use writer::{Completed, SnapshotWriter, WriterOptions};

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The only block size the EBS direct APIs accept (`DataLength`, `BlockSize`).
pub const BLOCK_SIZE: usize = 512 * 1024;

/// The largest snapshot `StartSnapshot` takes, in GiB (64 TiB).
pub const MAX_VOLUME_GIB: u64 = 65536;

/// SHA-256 of one block.
pub fn block_digest(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// base64 of a digest, the form of every `x-amz-Checksum` header.
pub fn b64(digest: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// Decode an `x-amz-Checksum` value to its 32-byte digest, `None` when it is not one.
pub fn unb64(s: &str) -> Option<[u8; 32]> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .ok()?
        .try_into()
        .ok()
}

/// The `LINEAR` aggregated checksum: SHA-256 over the raw block digests in ascending block-index
/// order (the iterator must already be in that order), base64.
pub fn aggregate_checksum<'a>(
    digests_in_index_order: impl IntoIterator<Item = &'a [u8; 32]>,
) -> String {
    let mut h = Sha256::new();
    for d in digests_in_index_order {
        h.update(d);
    }
    b64(&h.finalize())
}

/// A disk of `bytes` as `StartSnapshot`'s `VolumeSize`: whole GiB, rounded up, at least 1.
pub fn volume_gib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 30).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_checksum_is_sha256_of_raw_digests_in_order() {
        // Vector: two blocks, one of 0x01 bytes and one of 0x02 bytes.
        let a = block_digest(&vec![1u8; BLOCK_SIZE]);
        let b = block_digest(&vec![2u8; BLOCK_SIZE]);
        let mut cat = Vec::new();
        cat.extend_from_slice(&a);
        cat.extend_from_slice(&b);
        let want = b64(&Sha256::digest(&cat));
        assert_eq!(aggregate_checksum([&a, &b]), want);
        // Order matters, and the digests are hashed raw, not as their base64 text.
        assert_ne!(aggregate_checksum([&b, &a]), want);
        let text = format!("{}{}", b64(&a), b64(&b));
        assert_ne!(b64(&Sha256::digest(text.as_bytes())), want);
        // The empty snapshot: SHA-256 of nothing.
        assert_eq!(
            aggregate_checksum(std::iter::empty()),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }

    #[test]
    fn block_checksum_vector() {
        // SHA-256 of 524288 zero bytes, as AWS would expect it in x-amz-Checksum.
        let d = block_digest(&vec![0u8; BLOCK_SIZE]);
        assert_eq!(unb64(&b64(&d)), Some(d));
        assert_eq!(unb64("not base64!"), None);
        assert_eq!(unb64(&b64(&[1, 2, 3])), None);
    }

    #[test]
    fn volume_size_rounds_up_to_gib() {
        assert_eq!(volume_gib(0), 1);
        assert_eq!(volume_gib(1), 1);
        assert_eq!(volume_gib(1 << 30), 1);
        assert_eq!(volume_gib((1 << 30) + 1), 2);
    }
}
