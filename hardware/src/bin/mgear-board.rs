//! `mgear-board`: the appliance firmware image for the reference board
//! `mg-ref-u5` (build and flash it with `./flash.sh`).
//!
//! The firmware core runs in thread mode and polls the console, the keypad
//! and the mass-storage target (every SCSI READ/WRITE goes through the core's
//! block service); the USB device runs on an interrupt executor (`SWI` = the otherwise unused
//! UART4 interrupt vector) so enumeration and the CDC-ACM pumps keep going
//! while the core blocks on a long verify or an SD transfer.
//!
//! Built for the host (e.g. `cargo build --all-features`), this binary only
//! explains where it runs.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
mod firmware {
    use defmt_rtt as _;
    use embassy_executor::{InterruptExecutor, Spawner};
    use embassy_stm32::interrupt;
    use embassy_stm32::interrupt::{InterruptExt, Priority};
    use embassy_time::Timer;
    use embedded_alloc::LlffHeap as Heap;
    use mgear_firmware::hal::{Indicators, LedState, Platform};
    use mgear_firmware::{Appliance, Config};
    use mgear_hardware::board::{clocks, msc_link::MscLink, platform::BoardPlatform};
    use mgear_hardware::msc::MscTarget;
    use panic_probe as _;

    #[global_allocator]
    static HEAP: Heap = Heap::empty();
    /// Heap for the core (index walks, attestation records, frames).
    const HEAP_BYTES: usize = 1024 * 1024;

    static USB_EXECUTOR: InterruptExecutor = InterruptExecutor::new();

    #[interrupt]
    unsafe fn UART4() {
        // SAFETY: the executor was started on this interrupt in main.
        unsafe { USB_EXECUTOR.on_interrupt() }
    }

    #[embassy_executor::main]
    async fn main(_spawner: Spawner) {
        {
            use core::mem::MaybeUninit;
            static mut HEAP_MEM: [MaybeUninit<u8>; HEAP_BYTES] =
                [MaybeUninit::uninit(); HEAP_BYTES];
            // SAFETY: called once, before any allocation.
            unsafe { HEAP.init(&raw mut HEAP_MEM as usize, HEAP_BYTES) }
        }
        let p = embassy_stm32::init(clocks::config());
        interrupt::UART4.set_priority(Priority::P6);
        let usb_spawner = USB_EXECUTOR.start(interrupt::UART4);

        let platform = match BoardPlatform::new(p, usb_spawner) {
            Ok(p) => p,
            Err(e) => {
                defmt::error!("board bring-up failed: {}", defmt::Display2Format(&e));
                loop {
                    Timer::after_secs(1).await;
                }
            }
        };
        let mut app = match Appliance::new(platform, Config::default()) {
            Ok(app) => app,
            Err(e) => {
                defmt::error!("firmware start failed: {}", defmt::Display2Format(&e));
                loop {
                    Timer::after_secs(1).await;
                }
            }
        };
        let mut msc = MscTarget::new();
        let mut disk = MscLink::new();
        loop {
            let console = match app.poll_console() {
                Ok(n) => n > 0,
                Err(_) => {
                    app.platform_mut().indicators().set_led(LedState::Alarm);
                    false
                }
            };
            // A USB link error (host gone mid-command) only loses that
            // command; the host retries after it re-enumerates.
            let disk_busy = msc.poll(&mut app, &mut disk).unwrap_or(false);
            if !console && !disk_busy {
                Timer::after_millis(1).await;
            }
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "mgear-board is the firmware image of the reference board (thumbv8m.main-none-eabihf); \
         it does not run on this host. Build and flash it with ./flash.sh, or run the \
         simulator with ./flash.sh --sim."
    );
    std::process::exit(2);
}
