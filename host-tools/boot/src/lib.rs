//! Boot, proof of boot, pre-ship readiness and driver adaptation for MotionGear.
//!
//! - [`sample`]: build a small bootable Linux disk (MBR, ext4, GRUB, Debian kernel,
//!   busybox initramfs that mounts the disk and prints a marker) without root.
//! - [`proof`]: the boot proof, once for every driver: [`prove_boot`] starts a
//!   [`Guest`] (a driver's machine: start, console, state, stop), watches its
//!   console for a regex until the deadline and writes the [`BootReport`].
//! - [`boot`]: targets, options and reports, and [`LocalQemu`], the local
//!   driver (TCG only, no guest network).
//! - [`inspect`] and [`profile`]: read a disk's partition table, filesystems and
//!   Linux driver set, and check them against a target cloud's profile before shipping.
//! - [`libvirt`]: the `libvirt:POOL/NAME` target (upload to a storage pool) and
//!   [`LibvirtBoot`], whose [`Guest`] is a libvirt domain.
//! - [`adapt`]: driver adaptation through `virt-v2v-in-place`.

pub mod adapt;
pub mod boot;
pub mod cpio;
pub mod inspect;
pub mod libvirt;
pub mod partition;
pub mod profile;
pub mod proof;
pub mod sample;

pub use adapt::{adapt, adapt_machine, AdaptReport};
pub use boot::{boot, BootReport, BootSpec, Bus, Firmware, LocalQemu, Outcome, QemuGuest, Target};
pub use inspect::{inspect_disk, inspect_path, DiskFacts};
pub use libvirt::{upload_volume, LibvirtBoot, LibvirtGuest, LibvirtTarget, VolumeRef};
pub use profile::{
    check_data_disk, check_profile, profile_by_name, profile_names, unreadable_table, Finding,
    Severity, TargetProfile,
};
pub use proof::{prove_boot, ConsoleRead, Expectation, Guest, GuestState, Setup, Start};
pub use sample::{build_sample_disk, Drivers, SampleDisk, SampleDiskOptions};

use std::io::{Read, Seek, SeekFrom};

/// Errors of the boot crate. Each message says what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Reading or writing a file or device failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A partition table is malformed.
    #[error("partition table: {0}")]
    Partition(String),
    /// A host tool is missing; the message names the Debian package.
    #[error("{tool} not found: install it with `apt-get install {package}`")]
    MissingTool {
        /// Program or file that is missing.
        tool: String,
        /// Debian package that provides it.
        package: String,
    },
    /// A host tool ran and failed.
    #[error("{tool} failed: {detail}")]
    ToolFailed {
        /// Program that failed.
        tool: String,
        /// Its exit status and stderr.
        detail: String,
    },
    /// The caller asked for something invalid (bad target, regex, option).
    #[error("{0}")]
    Usage(String),
    /// Something read from an archive or filesystem is malformed.
    #[error("{0}")]
    Format(String),
    /// The caller asked the boot to stop ([`BootSpec::stop`]); the guest was stopped.
    #[error("stopped by Ctrl-C or SIGTERM while the guest booted; the guest was stopped")]
    Stopped,
    /// The guest did not prove it booted; the text has the reason and the console tail.
    #[error("not booted: {0}")]
    NotBooted(String),
    /// The operation is not supported for this input; the text says what to use instead.
    #[error("{0}")]
    Unsupported(String),
}

/// Result alias of the boot crate.
pub type Result<T> = std::result::Result<T, BootError>;

impl BootError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        BootError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Positional reads from a disk image, block device or export.
///
/// Implemented for every `Read + Seek` (files, cursors over memory); other
/// sources (an NBD client) implement it directly.
pub trait ReadAt {
    /// Fill `buf` from byte `offset`; an error if the source ends before that.
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

impl<T: Read + Seek + ?Sized> ReadAt for T {
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.seek(SeekFrom::Start(offset))
            .and_then(|_| self.read_exact(buf))
            .map_err(|e| {
                BootError::io(format!("reading {} bytes at offset {offset}", buf.len()), e)
            })
    }
}
