//! The medium's NBD export, the simulator's stand-in for the board's USB
//! mass storage: every block read and write a host makes goes through the
//! firmware core's [`BlockService`] (the same contract `mgear_hardware::msc`
//! serves over USB), which refuses writes unless the appliance is unlocked
//! and not sealed. A refused write reaches the NBD client as `EPERM`, so
//! `qemu-io`, `nbdcopy` or the kernel see a plain I/O error.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use mgear_firmware::block::{BlockError, BlockService};
use mgear_nbd_proto::BlockBackend;

/// [`BlockBackend`] over a block service shared with the console loop
/// (in the simulator: the `Appliance`).
pub struct Export<S> {
    app: Arc<Mutex<S>>,
    size: u64,
}

impl<S: BlockService> Export<S> {
    pub fn new(app: Arc<Mutex<S>>) -> io::Result<Export<S>> {
        let size = lock(&app)?.capacity();
        Ok(Export { app, size })
    }
}

fn lock<S>(app: &Mutex<S>) -> io::Result<MutexGuard<'_, S>> {
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

impl<S: BlockService + Send> BlockBackend for Export<S> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        lock(&self.app)?.read(offset, buf).map_err(to_io)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        lock(&self.app)?.write(offset, data).map_err(to_io)
    }

    fn flush(&self) -> io::Result<()> {
        lock(&self.app)?.flush().map_err(to_io)
    }

    fn writable(&self) -> bool {
        // Advertised at handshake. Writable while the state can still change under a connected
        // client (unlock after connect; every write is checked by the block service anyway);
        // read-only once sealed or erased, which is for good.
        lock(&self.app).is_ok_and(|a| a.may_become_writable())
    }

    fn write_refused(&self) {
        // Refused by the server before the firmware saw it (the export is read-only for good):
        // counted all the same, as an attempt on the sealed medium.
        if let Ok(mut a) = lock(&self.app) {
            a.count_refused_write();
        }
    }
}
