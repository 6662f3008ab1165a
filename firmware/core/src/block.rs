//! The block service: the core's contract with every transport that shows
//! the medium to a host. USB mass storage on the board
//! (`mgear_hardware::msc`) and the simulator's NBD export (`firmware/sim`)
//! both serve a [`BlockService`] and nothing else, so the policy (writes
//! only while unlocked, refused-write counting, range checks, durable
//! flush) is written once, in [`Appliance`], whatever the transport.
//!
//! Byte-addressed on purpose: transports speak bytes (NBD) or their own
//! block size (SCSI's 512), and the service bridges to the medium's block
//! size (read-modify-write of partial blocks) so no transport has to.

use crate::appliance::Appliance;
use crate::hal::{HwError, Platform};
use crate::protocol::DeviceState;

/// A block-service request that was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// Writes are refused in this state (the simulator answers EPERM, USB
    /// mass storage DATA PROTECT).
    #[error("the medium is write-protected: the appliance is {0}")]
    WriteProtected(DeviceState),
    #[error("request beyond the end of the medium")]
    OutOfRange,
    #[error("medium failure: {0}")]
    Hw(HwError),
}

/// What a transport needs from the appliance to export the medium.
pub trait BlockService {
    /// Size of the medium in bytes.
    fn capacity(&mut self) -> u64;
    /// Whether writes are accepted right now (a transport may advertise it,
    /// e.g. SCSI's write-protect bit; every write is still checked).
    fn writable(&self) -> bool;
    /// Whether writes can ever be accepted again: `false` once sealed (or
    /// erased), which a transport may advertise for good (NBD's read-only
    /// export flag), where a locked medium may still be unlocked.
    fn may_become_writable(&self) -> bool {
        true
    }
    /// Read `buf.len()` bytes at byte `offset` (any state).
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError>;
    /// Write `data` at byte `offset`; refused unless writable.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError>;
    /// Make accepted writes durable.
    fn flush(&mut self) -> Result<(), BlockError>;
    /// A write the transport refused itself, having advertised the medium read-only (NBD's
    /// read-only export, SCSI's write-protect bit), is counted like one refused here.
    fn count_refused_write(&mut self) {}
}

impl<P: Platform> BlockService for Appliance<P> {
    fn capacity(&mut self) -> u64 {
        self.medium_bytes()
    }
    fn writable(&self) -> bool {
        self.medium_writable()
    }
    fn may_become_writable(&self) -> bool {
        !matches!(
            self.state(),
            DeviceState::Sealed | DeviceState::Arrived | DeviceState::Erased
        )
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.block_read(offset, buf)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
        self.block_write(offset, data)
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        self.block_flush()
    }
    fn count_refused_write(&mut self) {
        self.note_refused_write();
    }
}
