//! The board's `Platform`: every part wired to its pins (BOARD.md §3), and
//! the USB tasks started on the interrupt-priority executor.

use alloc::string::String;
use core::cell::RefCell;

use embassy_embedded_hal::flash::partition::BlockingPartition;
use embassy_executor::SendSpawner;
use embassy_stm32::flash::{Blocking, Flash};
use embassy_stm32::gpio::{Input, Level, Output, OutputOpenDrain, Pull, Speed};
use embassy_stm32::peripherals::{self, RNG};
use embassy_stm32::rng::Rng;
use embassy_stm32::rtc::{Rtc, RtcConfig};
use embassy_stm32::sdmmc::sd::{CmdBlock, DataBlock};
use embassy_stm32::sdmmc::Sdmmc;
use embassy_stm32::{bind_interrupts, rng, sdmmc, usb, Peripherals};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::blocking_mutex::Mutex;
use mgear_firmware::hal::{FilesFn, HwError, Platform, Readout, StoreError};
use static_cell::StaticCell;

use super::clock::RtcClock;
use super::console::{usb_task, UsbConsole};
use super::medium::{SdCard, STAGE_BLOCKS};
use super::memmap;
use super::panel::Panel;
use crate::fat::FatFiles;
use crate::flash_store::{FlashLog, FlashSecrets, Region};

bind_interrupts!(pub struct Irqs {
    OTG_HS => usb::InterruptHandler<peripherals::USB_OTG_HS>;
    SDMMC1 => sdmmc::InterruptHandler<peripherals::SDMMC1>;
    RNG => rng::InterruptHandler<peripherals::RNG>;
});

type SharedFlash = Mutex<CriticalSectionRawMutex, RefCell<Flash<'static, Blocking>>>;
/// One of the reserved flash areas, addressed from 0.
pub type FlashPart = BlockingPartition<'static, CriticalSectionRawMutex, Flash<'static, Blocking>>;

static FLASH: StaticCell<SharedFlash> = StaticCell::new();
static SDMMC: StaticCell<Sdmmc<'static>> = StaticCell::new();
static SD_STAGE: StaticCell<[DataBlock; STAGE_BLOCKS]> = StaticCell::new();

/// What `medium_locator` reports: the medium is the board's USB disk.
const LOCATOR: &str = "usb-msc";

/// The reference board.
pub struct BoardPlatform {
    console: UsbConsole,
    medium: SdCard,
    secrets: FlashSecrets<FlashPart>,
    log: FlashLog<FlashPart>,
    clock: RtcClock,
    rng: Rng<'static, RNG>,
    panel: Panel,
    _rtc: Rtc,
}

fn spawn_err(_: embassy_executor::SpawnError) -> HwError {
    HwError::Io(String::from("could not start the USB tasks"))
}

impl BoardPlatform {
    /// Bring up every part. USB runs on `usb_spawner` (an interrupt
    /// executor) so it keeps answering while the core is busy.
    pub fn new(p: Peripherals, usb_spawner: SendSpawner) -> Result<Self, HwError> {
        // Front panel first, so a failure below can be shown.
        let mut panel = Panel::new(
            Output::new(p.PE7, Level::Low, Speed::Low),
            Output::new(p.PE8, Level::Low, Speed::Low),
            Output::new(p.PE9, Level::Low, Speed::Low),
            [
                OutputOpenDrain::new(p.PD8, Level::High, Speed::Low),
                OutputOpenDrain::new(p.PD9, Level::High, Speed::Low),
                OutputOpenDrain::new(p.PD10, Level::High, Speed::Low),
                OutputOpenDrain::new(p.PD11, Level::High, Speed::Low),
            ],
            [
                Input::new(p.PD12, Pull::Up),
                Input::new(p.PD13, Pull::Up),
                Input::new(p.PD14, Pull::Up),
            ],
        );
        mgear_firmware::hal::Indicators::set_led(&mut panel, mgear_firmware::hal::LedState::Busy);

        // USB: CDC-ACM console, on the interrupt executor.
        usb_spawner.spawn(usb_task(p.USB_OTG_HS, p.PA12, p.PA11).map_err(spawn_err)?);

        // Persistent state in the reserved flash of bank 2.
        let flash: &'static SharedFlash =
            FLASH.init(Mutex::new(RefCell::new(Flash::new_blocking(p.FLASH))));
        let part = |r: Region| BlockingPartition::new(flash, r.start, r.len);
        let secrets = FlashSecrets::new(
            part(memmap::SECRETS),
            Region {
                start: 0,
                len: memmap::SECRETS.len,
            },
        )?;
        let log = FlashLog::open(
            part(memmap::LOG),
            Region {
                start: 0,
                len: memmap::LOG.len,
            },
        )?;

        // The medium: power the card, give it time to ramp, initialise.
        let power = Output::new(p.PE4, Level::High, Speed::Low);
        embassy_time::block_for(embassy_time::Duration::from_millis(20));
        let detect = Input::new(p.PE3, Pull::Up);
        let sdmmc = SDMMC.init(Sdmmc::new_4bit(
            p.SDMMC1,
            Irqs,
            p.PC12,
            p.PD2,
            p.PC8,
            p.PC9,
            p.PC10,
            p.PC11,
            Default::default(),
        ));
        let mut cmd_block = CmdBlock::new();
        let stage = SD_STAGE.init(core::array::from_fn(|_| DataBlock::new()));
        let medium = SdCard::new(sdmmc, &mut cmd_block, stage, detect, power)?;

        let (rtc, time) = Rtc::new(p.RTC, RtcConfig::default());

        Ok(BoardPlatform {
            console: UsbConsole::new(),
            medium,
            secrets,
            log,
            clock: RtcClock::new(time),
            rng: Rng::new(p.RNG, Irqs),
            panel,
            _rtc: rtc,
        })
    }
}

impl Platform for BoardPlatform {
    type Console = UsbConsole;
    type Medium = SdCard;
    type Secrets = FlashSecrets<FlashPart>;
    type Log = FlashLog<FlashPart>;
    type Clock = RtcClock;
    type Rng = Rng<'static, RNG>;
    type Indicators = Panel;

    fn console(&mut self) -> &mut UsbConsole {
        &mut self.console
    }
    fn medium(&mut self) -> &mut SdCard {
        &mut self.medium
    }
    fn secrets(&mut self) -> &mut Self::Secrets {
        &mut self.secrets
    }
    fn log_storage(&mut self) -> &mut Self::Log {
        &mut self.log
    }
    fn clock(&mut self) -> &mut RtcClock {
        &mut self.clock
    }
    fn rng(&mut self) -> &mut Self::Rng {
        &mut self.rng
    }
    fn indicators(&mut self) -> &mut Panel {
        &mut self.panel
    }

    /// The SD card's FAT32 volume through [`FatFiles`], mounted afresh for
    /// each call so it sees what the host last wrote over USB.
    fn with_files(&mut self, f: &mut FilesFn<'_, UsbConsole>) -> Result<(), StoreError> {
        let mut files = FatFiles::mount(&mut self.medium)?;
        let result = f(&mut files, &mut self.console);
        let unmounted = files.unmount();
        result.and(unmounted)
    }

    fn medium_locator(&self) -> String {
        String::from(LOCATOR)
    }

    /// RDP level 2 and no ROM (DFU) boot, programmed on first provisioning
    /// ([`super::readout`]).
    fn secure_readout(&mut self) -> Result<Readout, HwError> {
        super::readout::secure()
    }
}
