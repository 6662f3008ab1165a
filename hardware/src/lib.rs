//! MotionGear hardware: the reference board and the implementations of the
//! firmware core's hardware traits (`mgear_firmware::hal`).
//!
//! - [`flash_store`] (always built, `no_std`): the secret store and custody
//!   log storage over NOR flash, used by the board and tested on the host.
//! - [`calendar`]: RTC calendar fields to Unix time, for the board's clock.
//! - [`fat`] (always built, `no_std`): the medium's FAT32 file system over
//!   any block device, as `image_format::Store`: the board's `with_files`.
//! - [`msc`] (always built, `no_std`): USB mass storage (Bulk-Only
//!   Transport + SCSI) over the core's block service
//!   (`mgear_firmware::block::BlockService`), for the board.
//! - [`option_bytes`] (always built): the board's read-out protection
//!   policy (RDP level 2, no ROM/DFU boot) as option-byte values.
//! - `board` (feature `board-u5a5`, only for `target_os = "none"`): the
//!   reference board `mg-ref-u5` (STM32U5A5). Not compiled on machines
//!   without the `thumbv8m.main-none-eabihf` target; see README.md.
//!
//! The simulator's platform (files, pty, NBD) is `firmware/sim`
//! (`mgear-appliance-sim`); it mounts the medium with this crate's [`fat`],
//! so simulator tests run the board's FAT code.
//!
//! A bare-metal build must name its board: building for a `none` target
//! without a `board-*` feature fails with a `compile_error!` saying so.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

#[cfg(all(target_os = "none", not(feature = "board-u5a5")))]
compile_error!(
    "mgear-hardware: no board selected for this bare-metal build. Enable the board's \
     feature, e.g. `--features board-u5a5` for the reference board mg-ref-u5 (STM32U5A5, \
     target thumbv8m.main-none-eabihf), or run ./flash.sh which does it for you."
);

pub mod calendar;
pub mod fat;
pub mod flash_store;
pub mod msc;

#[cfg(all(target_os = "none", feature = "board-u5a5"))]
pub mod board;

/// The board's read-out protection policy (pure logic, host-tested; the
/// board module programs it). Lives with the board code.
#[path = "board/option_bytes.rs"]
pub mod option_bytes;
