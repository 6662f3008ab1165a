//! Where the firmware's persistent state lives in flash (see memory.x).
//! Offsets are from the start of flash, as embassy-stm32's `Flash` counts.

use crate::flash_store::Region;

/// Secret store: 16 pages of 8 KiB at 0x0838_0000.
pub const SECRETS: Region = Region {
    start: 0x0038_0000,
    len: 0x0002_0000,
};

/// Custody log: 48 pages of 8 KiB at 0x083A_0000, up to the end of flash.
pub const LOG: Region = Region {
    start: 0x003A_0000,
    len: 0x0006_0000,
};
