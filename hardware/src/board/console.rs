//! The USB device on OTG_HS: the console (CDC-ACM, `/dev/ttyACM0` on the
//! host) as the firmware core's blocking `embedded_io` byte stream, and the
//! medium's mass-storage interface (packets moved by `msc_link`).
//!
//! USB must be serviced while the core is busy (a long verify, a blocking
//! SD transfer), so the USB device and the CDC-ACM pumps run as tasks on an
//! interrupt-priority executor (see `platform::start_usb`). They exchange
//! bytes with the core through two static pipes; [`UsbConsole`] is the
//! core's end of them. While no host has the port open, output is dropped
//! (as a serial line would) so the core never blocks on a closed terminal.

use core::convert::Infallible;
use core::sync::atomic::{AtomicBool, Ordering};

use embassy_futures::block_on;
use embassy_futures::join::join3;
use embassy_futures::select::{select, Either};
use embassy_stm32::peripherals::{PA11, PA12, USB_OTG_HS};
use embassy_stm32::usb::{self, Driver};
use embassy_stm32::Peri;
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::pipe::Pipe;
use embassy_usb::class::cdc_acm::{CdcAcmClass, State};
use embassy_usb::Builder;
use static_cell::StaticCell;

use super::msc_link;
use super::platform::Irqs;

/// USB ids shared with the host tools' discovery (`mgear appliance`):
/// pid.codes vendor id 0x1209, product 0x4d47 ("MG").
pub const USB_VID: u16 = 0x1209;
pub const USB_PID: u16 = 0x4d47;
/// High-speed bulk endpoints carry 512-byte packets.
pub const MAX_PACKET: u16 = 512;

const PIPE_BYTES: usize = 4096;
/// Host -> core.
static RX: Pipe<CriticalSectionRawMutex, PIPE_BYTES> = Pipe::new();
/// Core -> host.
static TX: Pipe<CriticalSectionRawMutex, PIPE_BYTES> = Pipe::new();
/// A host has the port open (DTR asserted / endpoints enabled).
static CONNECTED: AtomicBool = AtomicBool::new(false);

type UsbDriver = Driver<'static, USB_OTG_HS>;

static EP_OUT: StaticCell<[u8; 2048]> = StaticCell::new();
static CONFIG_DESC: StaticCell<[u8; 256]> = StaticCell::new();
static BOS_DESC: StaticCell<[u8; 256]> = StaticCell::new();
static MSOS_DESC: StaticCell<[u8; 0]> = StaticCell::new();
static CONTROL_BUF: StaticCell<[u8; 64]> = StaticCell::new();
static CDC_STATE: StaticCell<State<'static>> = StaticCell::new();

/// The USB side of the console, spawned on the interrupt executor. It takes
/// only the peripherals (which are `Send`) and builds the driver itself,
/// because the built USB objects are not `Send`.
#[embassy_executor::task]
pub async fn usb_task(
    otg: Peri<'static, USB_OTG_HS>,
    dp: Peri<'static, PA12>,
    dm: Peri<'static, PA11>,
) -> ! {
    let mut usb_config = usb::Config::default();
    // Bus-powered: VBUS is always present while the MCU runs.
    usb_config.vbus_detection = false;
    let driver = Driver::new_hs(otg, Irqs, dp, dm, EP_OUT.init([0; 2048]), usb_config);

    let mut config = embassy_usb::Config::new(USB_VID, USB_PID);
    config.manufacturer = Some("MotionGear");
    config.product = Some("MotionGear appliance");
    config.serial_number = Some(embassy_stm32::uid::uid_hex());
    config.max_power = 500;
    // Composite device (CDC-ACM + mass storage): interface association
    // descriptors so every host binds both functions.
    config.composite_with_iads = true;
    config.device_class = 0xEF;
    config.device_sub_class = 0x02;
    config.device_protocol = 0x01;
    let mut builder = Builder::new(
        driver,
        config,
        CONFIG_DESC.init([0; 256]),
        BOS_DESC.init([0; 256]),
        MSOS_DESC.init([0; 0]),
        CONTROL_BUF.init([0; 64]),
    );
    let class = CdcAcmClass::new(&mut builder, CDC_STATE.init(State::new()), MAX_PACKET);
    // Mass storage: class 0x08, SCSI transparent (0x06), Bulk-Only (0x50).
    let (ep_out, ep_in) = {
        let mut function = builder.function(0x08, 0x06, 0x50);
        let mut interface = function.interface();
        let mut alt = interface.alt_setting(0x08, 0x06, 0x50, None);
        (
            alt.endpoint_bulk_out(None, MAX_PACKET),
            alt.endpoint_bulk_in(None, MAX_PACKET),
        )
    };
    let mut device = builder.build();
    match join3(device.run(), pump(class), msc_link::pump(ep_out, ep_in)).await {}
}

/// Moves bytes between the CDC-ACM endpoints and the pipes.
async fn pump(class: CdcAcmClass<'static, UsbDriver>) -> ! {
    let (mut sender, mut receiver) = class.split();
    let mut inbound = [0u8; MAX_PACKET as usize];
    let mut outbound = [0u8; MAX_PACKET as usize];
    loop {
        receiver.wait_connection().await;
        CONNECTED.store(true, Ordering::Release);
        loop {
            match select(receiver.read_packet(&mut inbound), TX.read(&mut outbound)).await {
                Either::First(Ok(n)) => RX.write_all(&inbound[..n]).await,
                Either::Second(n) => {
                    if sender.write_packet(&outbound[..n]).await.is_err() {
                        break;
                    }
                    // A full-size packet needs a zero-length packet to end the transfer.
                    if n == MAX_PACKET as usize && sender.write_packet(&[]).await.is_err() {
                        break;
                    }
                }
                Either::First(Err(_)) => break,
            }
        }
        // Host gone: whatever was queued for it is stale.
        CONNECTED.store(false, Ordering::Release);
        TX.clear();
    }
}

/// The core's end of the console.
pub struct UsbConsole {
    _private: (),
}

impl UsbConsole {
    /// Only one console exists; `platform` creates it once.
    pub(super) fn new() -> Self {
        UsbConsole { _private: () }
    }
}

impl embedded_io::ErrorType for UsbConsole {
    type Error = Infallible;
}

impl embedded_io::Read for UsbConsole {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        if buf.is_empty() {
            return Ok(0);
        }
        Ok(block_on(RX.read(buf)))
    }
}

impl embedded_io::ReadReady for UsbConsole {
    fn read_ready(&mut self) -> Result<bool, Infallible> {
        Ok(!RX.is_empty())
    }
}

impl embedded_io::Write for UsbConsole {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !CONNECTED.load(Ordering::Acquire) {
            // Nobody listening: drop it, as a serial line would.
            return Ok(buf.len());
        }
        Ok(block_on(TX.write(buf)))
    }

    fn flush(&mut self) -> Result<(), Infallible> {
        // The CDC task drains TX, or clears it when the host goes away.
        while !TX.is_empty() && CONNECTED.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
        Ok(())
    }
}
