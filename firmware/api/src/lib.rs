//! The MotionGear appliance API: everything the host tools and the
//! appliance firmware must agree on, and nothing either side implements.
//!
//! - [`protocol`]: the console protocol (framing, `Request`/`Response` and
//!   their wire types, the human line mode's decoder). Protocol version 2.
//! - [`attest`]: seal and arrival attestations, their signature check and
//!   the comparison that names what changed.
//! - [`custody`]: custody-log records and [`custody::verify_log`].
//! - [`pin`]: the PIN rules.
//!
//! `no_std` + `alloc`, so the firmware core (`mgear-firmware`) uses it for
//! its wire types; with feature `std` the host tools (`mgear`, the test
//! harness) use it instead of linking the firmware's state machine. The
//! host's console client sits in `mgear` (`appliance::client`) because it
//! owns a serial port, a process-wide timeout policy and the library's error type:
//! it depends on this crate only.
#![cfg_attr(not(any(feature = "std", test)), no_std)]

extern crate alloc;

pub mod attest;
pub mod custody;
pub mod pin;
pub mod protocol;
