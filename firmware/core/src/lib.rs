//! MotionGear appliance firmware core.
//!
//! `no_std` + `alloc`, generic over the hardware traits in [`hal`]. The same
//! code runs on the reference board and, with feature `std`, in the
//! simulator; the host tools use [`protocol`], [`custody::verify_log`] and
//! [`attest::verify_attestation`] from it.
//!
//! Modules: [`hal`] (traits), [`protocol`] (console framing and messages),
//! [`custody`] (hash-chained signed log), [`attest`] (seal/arrival
//! attestations), [`pin`] (PIN hashing and back-off), [`appliance`] (state
//! machine, command handler, block service).
#![cfg_attr(not(any(feature = "std", test)), no_std)]

extern crate alloc;

#[macro_use]
mod fmt;

pub mod appliance;
pub mod attest;
pub mod custody;
pub mod hal;
pub mod pin;
pub mod protocol;
mod verify;

pub use appliance::{Appliance, BlockError, Config, Error};

#[cfg(any(test, feature = "testing"))]
pub mod testing;
