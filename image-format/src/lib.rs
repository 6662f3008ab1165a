//! The MotionGear on-medium image format (see `FORMAT.md` beside this crate).
//!
//! `no_std` + `alloc` so the appliance firmware can run the keyless verifier
//! ([`verify_keyless`], [`list_captures`], [`medium_digests`]); the `std`
//! feature adds host conveniences, `crypto` the writer ([`CaptureWriter`]),
//! key slots and keyed reader ([`CaptureReader`], [`verify_full`]), and
//! `zstd` per-chunk compression.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

mod chunkbuf;
pub mod commit;
pub mod error;
pub mod layout;
mod medium;
#[cfg(feature = "std")]
pub mod parallel;
pub mod peers;
pub mod set;
pub mod span;
pub mod store;
pub mod verify;

#[cfg(feature = "crypto")]
pub mod bench;
#[cfg(feature = "crypto")]
mod encode;
#[cfg(feature = "crypto")]
pub mod keys;
#[cfg(all(feature = "crypto", unix))]
pub mod private;
#[cfg(feature = "crypto")]
mod reader;
#[cfg(feature = "crypto")]
pub mod record;
#[cfg(all(test, feature = "crypto"))]
mod scenarios;
#[cfg(feature = "crypto")]
mod writer;

pub use chunkbuf::{ChunkBuf, CHUNK_ALIGN};
pub use error::{Error, Location, Result};
pub use medium::{
    capture_names, damaged_root_dir, generations as capture_generations, lost_dir_kind,
    lost_dirs_of, stray_generation_dirs, unmarked_dirs_of, LostDir,
};
pub use store::{Store, StoreError};
pub use verify::{
    capture_id, capture_info, finished_evidence, list_captures, medium_digests, other_capture_id,
    stored_name, verify_capture_keyless, verify_keyless, verify_structure, CaptureInfo, Elsewhere,
    GenerationInfo, GenerationState, NoProgress, Problem, VerifyObserver, VerifyReport,
    CUT_OFF_AT_START, GARBLED_DIR, LOST_ENTRIES,
};

#[cfg(feature = "crypto")]
pub use age;
#[cfg(feature = "crypto")]
pub use encode::{is_all_zero, ChunkEncoder, Cipher, EncodedChunk};
#[cfg(feature = "crypto")]
pub use keys::{derive_subkey, unlock_data_key, ChunkIdKey, DataKey, Unlock};
#[cfg(feature = "crypto")]
pub use reader::{verify_full, CaptureReader, ChunkData, RecordBuffers};
#[cfg(feature = "crypto")]
pub use record::{RecordOpener, RecordSealer, StreamPlace};
#[cfg(feature = "crypto")]
pub use writer::{Appended, CaptureParams, CaptureSummary, CaptureWriter};
