//! The reference board `mg-ref-u5` (STM32U5A5ZJT6Q): implementations of the
//! firmware core's hardware traits over embassy-stm32.
//!
//! **Unbuilt on the project's machines**: only the x86_64 Linux target is
//! installed there, so this module (compiled only for `target_os = "none"`
//! with feature `board-u5a5`) has never been compiled. It was written against
//! the embassy-stm32 0.6 / embassy-usb 0.6 / embassy-executor 0.10 sources and
//! `mgear_firmware::hal`; expect small API fixes on the first real build
//! (`./flash.sh --dry-run` shows the command).
//!
//! The parts that do not depend on the chip — the flash layout of secrets
//! and custody log (`crate::flash_store`) and the RTC calendar conversion
//! (`crate::calendar`) — live outside this module and are tested on the host.
//!
//! Pins, clocks and memory map: hardware/BOARD.md and hardware/memory.x.

pub mod clock;
pub mod clocks;
pub mod console;
pub mod medium;
pub mod memmap;
pub mod msc_link;
pub mod panel;
pub mod platform;
pub mod readout;
