//! The MotionGear on-medium image format (see `FORMAT.md` beside this crate).
//!
//! `no_std` + `alloc` so the appliance firmware can run the keyless verifier;
//! the `std` feature adds I/O helpers for the host tools.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod store;

pub use store::{Store, StoreError};
