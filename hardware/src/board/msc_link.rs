//! The byte streams between the USB mass-storage endpoints (interrupt
//! executor) and the SCSI target (`crate::msc`, run by the core's loop in
//! thread mode), in the same style as the console's pipes.
//!
//! Bulk-Only Transport cares about packet boundaries on the IN side: a short
//! packet ends a transfer. So device-to-host bytes travel as whole packets:
//! [`MscLink`] fills 512-byte packets and sends a short one only on `flush`,
//! which the target calls at the end of a data phase and after each CSW.

use core::sync::atomic::{AtomicBool, Ordering};

use embassy_futures::select::{select, Either};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::channel::Channel;
use embassy_sync::pipe::Pipe;
use embassy_usb::driver::{EndpointIn, EndpointOut};
use embedded_io::ErrorKind;

/// High-speed bulk packet size.
pub const PACKET: usize = 512;

/// One device-to-host packet.
pub struct Packet {
    len: usize,
    data: [u8; PACKET],
}

/// Host -> device bytes (CBWs and write data).
static RX: Pipe<CriticalSectionRawMutex, 16384> = Pipe::new();
/// Device -> host packets (read data and CSWs).
static TX: Channel<CriticalSectionRawMutex, Packet, 8> = Channel::new();
/// The host has configured the interface.
static ONLINE: AtomicBool = AtomicBool::new(false);

/// Moves packets between the bulk endpoints and the streams.
pub async fn pump<O: EndpointOut, I: EndpointIn>(mut ep_out: O, mut ep_in: I) -> ! {
    let mut buf = [0u8; PACKET];
    loop {
        ep_out.wait_enabled().await;
        ONLINE.store(true, Ordering::Release);
        loop {
            match select(ep_out.read(&mut buf), TX.receive()).await {
                Either::First(Ok(n)) => RX.write_all(&buf[..n]).await,
                Either::Second(p) => {
                    if ep_in.write(&p.data[..p.len]).await.is_err() {
                        break;
                    }
                }
                Either::First(Err(_)) => break,
            }
        }
        ONLINE.store(false, Ordering::Release);
        RX.clear();
        TX.clear();
    }
}

/// The thread-mode end: what `MscTarget::poll` reads and writes.
pub struct MscLink {
    pending: Packet,
}

impl MscLink {
    pub fn new() -> Self {
        MscLink {
            pending: Packet {
                len: 0,
                data: [0; PACKET],
            },
        }
    }

    fn send_pending(&mut self) -> Result<(), ErrorKind> {
        let p = Packet {
            len: self.pending.len,
            data: self.pending.data,
        };
        self.pending.len = 0;
        // The channel has room unless the host stopped reading; then give up
        // rather than block the core forever.
        let mut p = Some(p);
        while let Some(packet) = p.take() {
            if !ONLINE.load(Ordering::Acquire) {
                return Err(ErrorKind::NotConnected);
            }
            if let Err(embassy_sync::channel::TrySendError::Full(back)) = TX.try_send(packet) {
                p = Some(back);
                core::hint::spin_loop();
            }
        }
        Ok(())
    }
}

impl Default for MscLink {
    fn default() -> Self {
        Self::new()
    }
}

impl embedded_io::ErrorType for MscLink {
    type Error = ErrorKind;
}

impl embedded_io::Read for MscLink {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Ok(n) = RX.try_read(buf) {
                return Ok(n);
            }
            if !ONLINE.load(Ordering::Acquire) {
                return Err(ErrorKind::NotConnected);
            }
            core::hint::spin_loop();
        }
    }
}

impl embedded_io::ReadReady for MscLink {
    fn read_ready(&mut self) -> Result<bool, ErrorKind> {
        Ok(!RX.is_empty())
    }
}

impl embedded_io::Write for MscLink {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
        let n = buf.len().min(PACKET - self.pending.len);
        self.pending.data[self.pending.len..self.pending.len + n].copy_from_slice(&buf[..n]);
        self.pending.len += n;
        if self.pending.len == PACKET {
            self.send_pending()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> Result<(), ErrorKind> {
        if self.pending.len > 0 {
            self.send_pending()?;
        }
        Ok(())
    }
}
