//! Simulator implementations of the firmware's hardware traits
//! (`mgear_firmware::hal`): the medium as an image file, the secret store
//! and custody log as files in the state directory, the host clock, and
//! a status LED that prints.
//!
//! State directory layout (`--state DIR` of `mgear-appliance-sim`):
//!
//! ```text
//! DIR/secrets/<slot>   one file per SecretSlot (identity, identity.pub,
//!                      pin, state, seal.att, arrival.att), replaced
//!                      atomically (tmp + fsync + rename + fsync dir)
//! DIR/custody.log      the custody log, append + fsync
//! ```
//!
//! The pseudo-terminal console, the NBD socket, randomness and the FAT32
//! mount are wired by the simulator binary (`firmware/sim`), which owns the
//! process and its dependencies.

pub mod clock;
pub mod files;
pub mod indicators;
pub mod log;
pub mod medium;
pub mod secrets;

pub use clock::HostClock;
pub use indicators::SimIndicators;
pub use log::FileLog;
pub use medium::{FileMedium, BLOCK_SIZE};
pub use secrets::FileSecrets;
