//! Puts the board's read-out protection in force before the firmware core
//! creates the identity (`Platform::secure_readout`): reads `FLASH_OPTR`,
//! and if [`crate::option_bytes::Policy::of_build`] is not met, programs it
//! and launches the option-byte load, which resets the chip. The operator
//! then provisions again on a protected chip.
//!
//! Register access is direct (RM0456, non-secure FLASH registers at
//! 0x4002_2000): embassy-stm32's `Flash` driver programs pages, not option
//! bytes. Offsets and bits used:
//!
//! ```text
//! 0x08 NSKEYR   unlock NSCR: 0x4567_0123 then 0xCDEF_89AB
//! 0x10 OPTKEYR  unlock options: 0x0819_2A3B then 0x4C5D_6E7F
//! 0x20 NSSR     bit 16 BSY
//! 0x28 NSCR     bit 17 OPTSTRT, bit 27 OBL_LAUNCH, bit 30 OPTLOCK, bit 31 LOCK
//! 0x40 OPTR     see crate::option_bytes
//! ```
//!
//! Not built on the project's machines (see `super`); type-checked by
//! hardware/check-board.sh where its crates can be fetched.

use core::ptr::{read_volatile, write_volatile};

use mgear_firmware::hal::{HwError, Readout};

use crate::option_bytes::{missing, target_optr, Policy};

const FLASH_BASE: usize = 0x4002_2000;
const NSKEYR: usize = FLASH_BASE + 0x08;
const OPTKEYR: usize = FLASH_BASE + 0x10;
const NSSR: usize = FLASH_BASE + 0x20;
const NSCR: usize = FLASH_BASE + 0x28;
const OPTR: usize = FLASH_BASE + 0x40;

const NSSR_BSY: u32 = 1 << 16;
const NSCR_OPTSTRT: u32 = 1 << 17;
const NSCR_OBL_LAUNCH: u32 = 1 << 27;
const NSCR_OPTLOCK: u32 = 1 << 30;
const NSCR_LOCK: u32 = 1 << 31;

fn read(addr: usize) -> u32 {
    // SAFETY: a documented, always-mapped FLASH register of this chip.
    unsafe { read_volatile(addr as *const u32) }
}

fn write(addr: usize, v: u32) {
    // SAFETY: as in `read`; the writes follow RM0456's option-byte sequence.
    unsafe { write_volatile(addr as *mut u32, v) }
}

fn wait_idle() -> Result<(), HwError> {
    // Option-byte programming takes milliseconds; bound the wait anyway.
    for _ in 0..50_000_000u32 {
        if read(NSSR) & NSSR_BSY == 0 {
            return Ok(());
        }
    }
    Err(HwError::Io(
        "flash stayed busy while programming option bytes".into(),
    ))
}

/// Check the option bytes against this build's policy; program them if
/// needed (the chip resets to load them, so `RestartNeeded` is returned
/// only if that reset did not happen).
pub fn secure() -> Result<Readout, HwError> {
    let policy = Policy::of_build();
    if policy == Policy::DEVELOPMENT {
        defmt::warn!("dev-unprotected build: no RDP level 2, DFU reachable; never ship this");
        return Ok(Readout::NotApplicable);
    }
    let optr = read(OPTR);
    if missing(optr, policy).1 {
        return Ok(Readout::Enforced);
    }
    let want = target_optr(optr, policy);
    cortex_m::interrupt::free(|_| -> Result<(), HwError> {
        wait_idle()?;
        if read(NSCR) & NSCR_LOCK != 0 {
            write(NSKEYR, 0x4567_0123);
            write(NSKEYR, 0xCDEF_89AB);
        }
        if read(NSCR) & NSCR_OPTLOCK != 0 {
            write(OPTKEYR, 0x0819_2A3B);
            write(OPTKEYR, 0x4C5D_6E7F);
        }
        if read(NSCR) & (NSCR_LOCK | NSCR_OPTLOCK) != 0 {
            return Err(HwError::Io("the option bytes refused to unlock".into()));
        }
        write(OPTR, want);
        write(NSCR, read(NSCR) | NSCR_OPTSTRT);
        wait_idle()?;
        // Loads the new option bytes: a system reset.
        write(NSCR, read(NSCR) | NSCR_OBL_LAUNCH);
        Ok(())
    })?;
    Ok(Readout::RestartNeeded)
}
