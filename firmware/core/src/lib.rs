//! MotionGear appliance firmware core.
//!
//! `no_std` + `alloc`, generic over the hardware traits in [`hal`]. The same
//! code runs on the reference board and, with feature `std`, in the
//! simulator (`firmware/sim`). The host tools do not link it: what they
//! share with it (console protocol, attestations, custody-log records and
//! their verification) is the appliance API crate `mgear-appliance-api`,
//! re-exported here as [`protocol`] and [`attest`] and inside [`custody`].
//!
//! Modules: [`hal`] (traits), [`block`] (the block service every transport
//! serves: USB mass storage on the board, NBD in the simulator),
//! [`custody`] (the log's storage), [`pin`] (PIN hashing and back-off),
//! [`regions`] (the attestation's raw region hashes),
//! [`appliance`] (state machine, command handler, block service).
#![cfg_attr(not(any(feature = "std", test)), no_std)]

extern crate alloc;

#[macro_use]
mod fmt;

pub mod appliance;
pub mod block;
pub mod custody;
pub mod hal;
pub mod pin;
pub mod regions;
mod verify;

pub use mgear_appliance_api::{attest, protocol};

pub use appliance::{Appliance, Config, Error};
pub use block::{BlockError, BlockService};

#[cfg(any(test, feature = "testing"))]
pub mod testing;
