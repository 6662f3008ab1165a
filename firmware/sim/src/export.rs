//! The medium's NBD export: every block read and write a host makes goes
//! through the firmware core's block service ([`Appliance::block_read`] /
//! [`Appliance::block_write`]), which refuses writes unless the appliance is
//! unlocked and not sealed. A refused write reaches the NBD client as
//! `EPERM`, so `qemu-io`, `nbdcopy` or the kernel see a plain I/O error.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use mgear_firmware::appliance::{Appliance, BlockError};
use mgear_nbd::BlockBackend;

use crate::platform::SimPlatform;

/// The shared firmware core.
pub type Shared = Arc<Mutex<Appliance<SimPlatform>>>;

/// [`BlockBackend`] over the firmware's block service.
pub struct Export {
    app: Shared,
    size: u64,
}

impl Export {
    pub fn new(app: Shared) -> io::Result<Export> {
        let size = lock(&app)?.medium_bytes();
        Ok(Export { app, size })
    }
}

fn lock(app: &Shared) -> io::Result<MutexGuard<'_, Appliance<SimPlatform>>> {
    // A panic while holding the lock is a firmware bug; serving on would
    // risk acting on half-updated state, so report I/O errors instead.
    app.lock()
        .map_err(|_| io::Error::other("the firmware core failed; restart the simulator"))
}

fn to_io(e: BlockError) -> io::Error {
    match e {
        BlockError::WriteProtected(_) => {
            io::Error::new(io::ErrorKind::PermissionDenied, e.to_string())
        }
        BlockError::OutOfRange => io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
        BlockError::Hw(_) => io::Error::other(e.to_string()),
    }
}

impl BlockBackend for Export {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        lock(&self.app)?.block_read(offset, buf).map_err(to_io)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        lock(&self.app)?.block_write(offset, data).map_err(to_io)
    }

    fn flush(&self) -> io::Result<()> {
        lock(&self.app)?.block_flush().map_err(to_io)
    }

    fn writable(&self) -> bool {
        // Advertised at handshake. Always claim writable: the state can
        // change while a client is connected (unlock after connect), and
        // every write is checked by the block service anyway.
        true
    }
}
