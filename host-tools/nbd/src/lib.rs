//! NBD (Network Block Device) protocol client and server for MotionGear,
//! std-only, blocking I/O, a thread per connection.
//!
//! - [`Client`] reads capture sources and writes ingest targets exported by
//!   `qemu-nbd`, `nbdkit` or our own server; it negotiates structured replies
//!   and metadata contexts (`base:allocation` for holes,
//!   `qemu:dirty-bitmap:NAME` for changed-block tracking).
//! - [`NbdFile`] turns a client into `Read + Write + Seek` for `fatfs`.
//! - [`serve_unix`] / [`serve_tcp`] export a [`BlockBackend`] (the appliance
//!   simulator's medium) to any NBD client.
//!
//! Wire layouts are documented in [`proto`].
//!
//! ```no_run
//! use mgear_nbd::{Client, ConnectOptions, NbdUrl, BASE_ALLOCATION};
//!
//! # fn main() -> mgear_nbd::Result<()> {
//! let url: NbdUrl = "nbd+unix:///disk?socket=/run/disk.sock".parse()?;
//! let opts = ConnectOptions {
//!     meta_contexts: vec![BASE_ALLOCATION.into()],
//!     read_only: true,
//! };
//! let mut c = Client::connect(&url, &opts)?;
//! // Read only what is allocated and not known to be zero.
//! for (offset, len, data, zero) in c.allocated_ranges(0, c.size())? {
//!     if data && !zero {
//!         let mut buf = vec![0u8; len.min(1 << 20) as usize];
//!         c.read_at(offset, &mut buf)?;
//!     }
//! }
//! c.disconnect()
//! # }
//! ```

mod client;
mod error;
mod file;
pub mod proto;
mod server;
mod transport;
mod url;

pub use client::{Client, ConnectOptions, Extent, BASE_ALLOCATION};
pub use error::{Error, Result};
pub use file::NbdFile;
pub use server::{serve_stream, serve_tcp, serve_unix, BlockBackend, ServerHandle};
pub use url::{NbdUrl, DEFAULT_PORT};
