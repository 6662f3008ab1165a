//! The medium: a microSD card on SDMMC1 (4-bit), as a `BlockDevice`.
//!
//! The firmware core is synchronous; embassy's SDMMC driver is async and
//! interrupt-driven, so each call runs the transfer to completion with
//! `block_on` (the SDMMC interrupt wakes it). Transfers are staged through a
//! word-aligned buffer of [`STAGE_BLOCKS`] blocks because the driver needs
//! `DataBlock`s, and are issued as multi-block commands (CMD18/CMD25).

use alloc::format;
use alloc::string::String;

use embassy_futures::block_on;
use embassy_stm32::gpio::{Input, Output};
use embassy_stm32::sdmmc::sd::{Addressable, Card, CmdBlock, DataBlock, StorageDevice};
use embassy_stm32::sdmmc::Error as SdError;
use embassy_stm32::time::Hertz;
use mgear_firmware::hal::{BlockDevice, HwError};

/// Blocks per SDMMC command: 32 × 512 B = 16 KiB of staging RAM.
pub const STAGE_BLOCKS: usize = 32;
const BLOCK: usize = 512;
/// SDR25: the fastest mode the HAL negotiates; ICLK is 48 MHz (clocks.rs).
const BUS_HZ: Hertz = Hertz(48_000_000);

fn hw(e: SdError) -> HwError {
    match e {
        SdError::NoCard => HwError::Io(String::from("no microSD card in the medium slot")),
        other => HwError::Io(format!("microSD error: {other:?}")),
    }
}

/// The microSD card.
pub struct SdCard {
    dev: StorageDevice<'static, 'static, Card>,
    blocks: u64,
    stage: &'static mut [DataBlock; STAGE_BLOCKS],
    /// Card detect switch (low = card present).
    detect: Input<'static>,
    /// Load switch of the card's supply, kept for power-cycling a wedged card.
    _power: Output<'static>,
}

impl SdCard {
    /// Power the card and initialise it. `power` must already be driven high.
    pub fn new(
        sdmmc: &'static mut embassy_stm32::sdmmc::Sdmmc<'static>,
        cmd_block: &mut CmdBlock,
        stage: &'static mut [DataBlock; STAGE_BLOCKS],
        detect: Input<'static>,
        power: Output<'static>,
    ) -> Result<Self, HwError> {
        if detect.is_high() {
            return Err(HwError::Io(String::from(
                "no microSD card in the medium slot",
            )));
        }
        let dev = block_on(StorageDevice::new_sd_card(sdmmc, cmd_block, BUS_HZ)).map_err(hw)?;
        let blocks = dev.card().size() / BLOCK as u64;
        Ok(SdCard {
            dev,
            blocks,
            stage,
            detect,
            _power: power,
        })
    }

    fn check(&self, lba: u64, len: usize) -> Result<u32, HwError> {
        if !len.is_multiple_of(BLOCK) {
            return Err(HwError::Io(format!(
                "transfer of {len} bytes is not whole blocks"
            )));
        }
        let end = lba
            .checked_add((len / BLOCK) as u64)
            .ok_or(HwError::OutOfRange)?;
        if end > self.blocks {
            return Err(HwError::OutOfRange);
        }
        if self.detect.is_high() {
            return Err(HwError::Io(String::from("the microSD card was removed")));
        }
        // SDHC/SDXC address blocks with 32 bits (2 TiB); `blocks` fits.
        u32::try_from(lba).map_err(|_| HwError::OutOfRange)
    }
}

impl BlockDevice for SdCard {
    fn block_size(&self) -> usize {
        BLOCK
    }

    fn block_count(&self) -> u64 {
        self.blocks
    }

    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), HwError> {
        let mut lba = self.check(lba, buf.len())?;
        for chunk in buf.chunks_mut(STAGE_BLOCKS * BLOCK) {
            let n = chunk.len() / BLOCK;
            block_on(self.dev.read_blocks(lba, &mut self.stage[..n])).map_err(hw)?;
            for (dst, src) in chunk.chunks_mut(BLOCK).zip(self.stage.iter()) {
                dst.copy_from_slice(&src[..]);
            }
            lba += n as u32;
        }
        Ok(())
    }

    fn write_blocks(&mut self, lba: u64, data: &[u8]) -> Result<(), HwError> {
        let mut lba = self.check(lba, data.len())?;
        for chunk in data.chunks(STAGE_BLOCKS * BLOCK) {
            let n = chunk.len() / BLOCK;
            for (dst, src) in self.stage.iter_mut().zip(chunk.chunks(BLOCK)) {
                dst[..].copy_from_slice(src);
            }
            block_on(self.dev.write_blocks(lba, &self.stage[..n])).map_err(hw)?;
            lba += n as u32;
        }
        Ok(())
    }

    /// The driver returns from a write only after the card has left the
    /// programming state (it polls the card status), and SD cards in SD mode
    /// have no volatile write cache to flush: completed writes are durable.
    fn flush(&mut self) -> Result<(), HwError> {
        Ok(())
    }

    /// Not supported (`Ok(false)`): an SD card has no write protection this
    /// firmware can use. The CSD's PERM_WRITE_PROTECT is irreversible (the
    /// card could never carry another capture), TMP_WRITE_PROTECT needs
    /// CMD27 (PROGRAM_CSD), which embassy-stm32's SDMMC driver does not
    /// issue, and the socket's write-protect tab exists only on full-size
    /// cards and binds nobody. The card is reachable only through the MCU,
    /// whose block service refuses writes while sealed; eMMC (rev B) brings
    /// power-on write-protect groups (CMD28) for this method.
    fn set_write_protect(&mut self, _on: bool) -> Result<bool, HwError> {
        Ok(false)
    }
}
