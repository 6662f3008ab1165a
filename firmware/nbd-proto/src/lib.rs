//! The NBD (Network Block Device) protocol as MotionGear speaks it, and the
//! export (server) side: std-only, blocking I/O, two threads per connection
//! (one reads requests ahead, one carries them out in order).
//!
//! - [`proto`]: wire constants and byte layouts, shared by both sides.
//! - [`NbdUrl`]: `nbd://HOST[:PORT]/EXPORT` and `nbd+unix:///EXPORT?socket=PATH`.
//! - [`serve_unix`] / [`serve_tcp`] / [`serve_stream`]: export any
//!   [`BlockBackend`] to any NBD client.
//! - [`Error`]: one error enum for the protocol, client and server.
//!
//! # Why a crate of its own, under `firmware/`
//!
//! Two crates speak NBD: the host tools' client (`host-tools/nbd`, crate
//! `mgear-nbd`: capture sources, ingest targets, the appliance medium) and
//! the appliance simulator (`firmware/sim`), whose NBD export of the medium
//! is its stand-in for the board's USB mass storage. The simulator must not
//! depend on a host-tool crate, and neither side may carry its own copy of
//! the wire layouts, so what both need lives here, below both of them. The
//! server lives here too rather than in `firmware/sim`: it is a generic
//! export over [`BlockBackend`] with no appliance knowledge (the simulator
//! only adapts the firmware core's `BlockService` to it, as the board's
//! `msc` module adapts it to USB), and the client's tests and the fuzz
//! targets exercise it without starting a simulator.
//!
//! Feature `testing`: [`testing::MemExport`], an in-memory export for tests.

mod error;
pub mod proto;
mod server;
pub mod transport;
mod url;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use error::{Error, Result};
pub use server::{serve_stream, serve_tcp, serve_unix, BlockBackend, ServerHandle};
pub use url::{NbdUrl, DEFAULT_PORT};

/// The writers' lock of a Unix-socket export: the file beside `socket`
/// named like it with `.lock` added (`appliance.sock` ->
/// `appliance.sock.lock`). NBD itself lets any number of clients write at
/// once; a client that keeps its own view of the blocks (a FAT in memory)
/// `flock(2)`s this file, exclusively while it writes, and the exporter
/// makes it when it starts.
pub fn export_lock_path(socket: &std::path::Path) -> std::path::PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    name.into()
}

/// The metadata context reporting allocation (holes and zeroes).
pub const BASE_ALLOCATION: &str = "base:allocation";
