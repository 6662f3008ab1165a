//! NBD (Network Block Device) client for MotionGear, std-only, blocking I/O.
//!
//! - [`Client`] reads capture sources and writes ingest targets exported by
//!   `qemu-nbd`, `nbdkit` or our own server; it negotiates structured replies
//!   and metadata contexts (`base:allocation` for holes,
//!   `qemu:dirty-bitmap:NAME` for changed-block tracking).
//! - [`NbdFile`] turns a client into `Read + Write + Seek` for `fatfs`.
//! - A writer that owns the export (the host's FAT engine on the appliance's
//!   medium) can let writes run ahead of their replies
//!   ([`Client::set_write_behind`]) and answer small reads from what it read
//!   or wrote ([`NbdFile::cache_small_reads`]), so it waits on the server at
//!   syncs and reads, not on every write.
//!
//! The wire layouts ([`proto`]), URLs, the error enum and the export
//! (server) side are the protocol crate `mgear-nbd-proto` (under
//! `firmware/`), shared with the appliance simulator, whose NBD export of
//! the medium is the simulator's stand-in for USB mass storage; this crate
//! re-exports what a client needs.
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
mod file;

pub use client::{Client, ConnectOptions, Extent};
pub use file::NbdFile;
pub use mgear_nbd_proto::proto;
pub use mgear_nbd_proto::{export_lock_path, Error, NbdUrl, Result, BASE_ALLOCATION, DEFAULT_PORT};
