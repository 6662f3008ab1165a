//! The appliance simulator: the firmware core (`mgear-firmware`) on the
//! host, with the simulator's implementations of its hardware traits
//! (`mgear_firmware::hal`). The binary `mgear-appliance-sim` (src/main.rs)
//! wires them into a process; the library lets tests run the core on the
//! very same platform.
//!
//! | part | here | on the board (`mgear-hardware`) |
//! | --- | --- | --- |
//! | medium | [`medium::FileMedium`]: an image file, with power-on write protection; large writes queued ([`write_behind`]) | SD card (its write cache and command queue) |
//! | file view of the medium | `mgear_hardware::fat::FatFiles` (the board's FAT engine, shared) | the same |
//! | spare core for seal's region hashes | [`regions::RegionThread`]: a thread | none (hashed after the walk) |
//! | secret store | [`secrets::FileSecrets`]: one file per slot | flash pages |
//! | custody-log storage | [`log::FileLog`]: append + fsync | flash pages |
//! | clock | [`clock::HostClock`] | RTC + SysTick |
//! | randomness | the OS (`OsRng`) | TRNG |
//! | LED / keypad | [`indicators::SimIndicators`]: printed | GPIO |
//! | console | [`pty::Pty`]: a pseudo-terminal | USB CDC-ACM |
//! | block service transport | [`export::Export`] over NBD (`mgear-nbd-proto`) | USB mass storage (`mgear_hardware::msc`) |
//!
//! [`platform::SimPlatform`] bundles them.
//!
//! State directory layout (`--state DIR`):
//!
//! ```text
//! DIR/secrets/<slot>   one file per SecretSlot (identity, identity.pub,
//!                      pin, state, seal.att, arrival.att), replaced
//!                      atomically (tmp + fsync + rename + fsync dir)
//! DIR/custody.log      the custody log, append + fsync
//! ```
//!
//! Dependencies point down only: the firmware core, the board crate for
//! its FAT engine (so seal and arrival here run the board's code), and the
//! NBD protocol crate; never a host-tool crate.

pub mod clock;
pub mod export;
pub mod files;
pub mod indicators;
pub mod log;
pub mod medium;
pub mod platform;
pub mod pty;
pub mod regions;
pub mod secrets;
pub mod write_behind;

pub use clock::HostClock;
pub use export::Export;
pub use indicators::SimIndicators;
pub use log::FileLog;
pub use medium::{FileMedium, BLOCK_SIZE};
pub use platform::SimPlatform;
pub use secrets::FileSecrets;
