//! Media: what `--medium` can name, and `mgear medium format`.
//!
//! - `fat:PATH`: a FAT32 image file or a raw device (the appliance's USB
//!   storage seen as `/dev/sdX`), opened with the `fatfs` crate: no mount, no root;
//! - `dir:PATH`: a mounted directory (the appliance's medium mounted by the OS);
//! - `nbd://HOST:PORT/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`: a FAT volume
//!   exported over NBD (the appliance simulator's medium).
//!
//! Everything else in the CLI sees a medium only as an `image_format::Store`,
//! so a new kind of medium (the appliance's console-gated export) is one more
//! arm in [`open`].

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use anyhow::Context;
use image_format::store::fat::{FormatOptions, MIN_FAT32_BYTES};
use image_format::store::{DirStore, FatStore, FlushIsDurable};
use image_format::Store;
use mgear_nbd::NbdFile;

use crate::exit::usage;
use crate::units::{human_bytes, parse_size};

/// A parsed `--medium` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediumSpec {
    /// A FAT image file or device.
    Fat(PathBuf),
    /// A mounted directory.
    Dir(PathBuf),
    /// A FAT volume exported over NBD (e.g. the appliance simulator's medium).
    Nbd(String),
}

impl MediumSpec {
    /// Parse `fat:PATH` or `dir:PATH`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        if let Some(p) = text.strip_prefix("fat:") {
            Ok(MediumSpec::Fat(PathBuf::from(p)))
        } else if let Some(p) = text.strip_prefix("dir:") {
            Ok(MediumSpec::Dir(PathBuf::from(p)))
        } else if crate::spec::is_nbd(text) {
            Ok(MediumSpec::Nbd(text.to_owned()))
        } else {
            Err(usage(format!(
                "--medium {text}: say which kind of medium: fat:IMAGE-OR-DEVICE (e.g. fat:/dev/sdb), \
                 dir:MOUNTPOINT (e.g. dir:/mnt/appliance) or an NBD export of a FAT volume (nbd://HOST:PORT/EXPORT)"
            )))
        }
    }
}

/// An open medium. Call [`Medium::close`]: the FAT writer clears the
/// volume's dirty flag and reports flush errors only there. An image,
/// device or directory stays locked while it is open ([`crate::lock`]):
/// exclusively for writers, shared for readers.
pub struct Medium {
    kind: Kind,
    _lock: Option<crate::lock::MediumLock>,
}

impl From<Kind> for Medium {
    fn from(kind: Kind) -> Self {
        Medium { kind, _lock: None }
    }
}

enum Kind {
    /// A FAT image or device opened with `fatfs`.
    Fat(FatStore<File>),
    /// A mounted directory.
    Dir(DirStore),
    /// A FAT volume over NBD.
    Nbd(FatStore<FlushIsDurable<NbdFile>>),
    /// The appliance's medium reached through its console (`--appliance PORT`).
    Appliance(Box<dyn Store>),
}

impl Medium {
    /// The store the format reads and writes.
    pub fn store(&mut self) -> &mut dyn Store {
        match &mut self.kind {
            Kind::Fat(s) => s,
            Kind::Dir(s) => s,
            Kind::Nbd(s) => s,
            Kind::Appliance(s) => s.as_mut(),
        }
    }

    /// Flush and close, reporting any error.
    pub fn close(self) -> anyhow::Result<()> {
        match self.kind {
            Kind::Fat(s) => s
                .unmount()
                .map_err(|e| anyhow::anyhow!("closing the FAT medium: {e}")),
            Kind::Nbd(s) => s
                .unmount()
                .map_err(|e| anyhow::anyhow!("closing the FAT medium over NBD: {e}")),
            // DirStore makes each file durable when the format syncs it.
            Kind::Dir(_) => Ok(()),
            // The boxed FAT store cannot be unmounted through `dyn Store`;
            // sync flushes its data and metadata, and the appliance owns the volume.
            Kind::Appliance(mut s) => s
                .sync("")
                .map_err(|e| anyhow::anyhow!("syncing the appliance's medium: {e}")),
        }
    }
}

/// Where the medium is: `--medium SPEC` or `--appliance PORT`.
#[derive(clap::Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct Where {
    /// Medium: fat:IMAGE-OR-DEVICE (e.g. fat:/dev/sdb) or dir:MOUNTPOINT.
    #[arg(long)]
    pub medium: Option<String>,
    /// Reach the medium through the appliance on this console port (e.g. /dev/ttyACM0).
    #[arg(long)]
    pub appliance: Option<PathBuf>,
}

impl Where {
    /// Open it.
    pub fn open(&self) -> anyhow::Result<Medium> {
        self.open_mode(false)
    }

    /// Open it for a command that only reads (inspect, verify, ingest,
    /// serve): a `fat:` or NBD medium is opened read-only, so it is
    /// byte-for-byte the same afterwards (its sha256 does not change).
    pub fn open_read_only(&self) -> anyhow::Result<Medium> {
        self.open_mode(true)
    }

    fn open_mode(&self, read_only: bool) -> anyhow::Result<Medium> {
        match (&self.medium, &self.appliance) {
            (_, Some(port)) => Ok(Kind::Appliance(crate::appliance::open_medium(port)?).into()),
            (Some(spec), None) => open_mode(spec, read_only),
            (None, None) => Err(usage(
                "say where the medium is: --medium fat:PATH|dir:PATH or --appliance PORT",
            )),
        }
    }

    /// Human description.
    pub fn describe(&self) -> String {
        match (&self.medium, &self.appliance) {
            (_, Some(p)) => format!("appliance at {}", p.display()),
            (Some(s), None) => s.clone(),
            (None, None) => String::new(),
        }
    }
}

/// Open the medium `spec`; `read_only`: an image or device is opened
/// O_RDONLY and the FAT store refuses every write, so nothing on it changes.
fn open_mode(spec: &str, read_only: bool) -> anyhow::Result<Medium> {
    let parsed = MediumSpec::parse(spec)?;
    // Two writers on one FAT volume overwrite each other's clusters: lock
    // before the first byte is read. (An NBD medium is guarded by its server.)
    let lock = match &parsed {
        MediumSpec::Dir(path) | MediumSpec::Fat(path) if path.exists() => {
            Some(crate::lock::lock(path, !read_only, spec)?)
        }
        _ => None,
    };
    let kind = open_kind(parsed, spec, read_only)?;
    Ok(Medium { kind, _lock: lock })
}

fn open_kind(parsed: MediumSpec, spec: &str, read_only: bool) -> anyhow::Result<Kind> {
    match parsed {
        MediumSpec::Dir(path) => {
            let store =
                DirStore::open(&path).map_err(|e| anyhow::anyhow!("opening medium {spec}: {e}"))?;
            Ok(Kind::Dir(store))
        }
        MediumSpec::Fat(path) => {
            let file = OpenOptions::new()
                .read(true)
                .write(!read_only)
                .open(&path)
                .with_context(|| format!("cannot open medium {}", path.display()))?;
            let store = if read_only {
                FatStore::open_read_only(file)
            } else {
                FatStore::open(file)
            }
            .map_err(|e| anyhow::anyhow!("opening medium {}: {e}", path.display()))?;
            Ok(Kind::Fat(store))
        }
        MediumSpec::Nbd(url) => {
            let parsed: mgear_nbd::NbdUrl = url
                .parse()
                .map_err(|e| usage(format!("--medium {url}: {e}")))?;
            let client = mgear_nbd::Client::connect(&parsed, &mgear_nbd::ConnectOptions::default())
                .with_context(|| format!("connecting to the medium at {url}"))?;
            let dev = FlushIsDurable(NbdFile::new(client));
            let store = if read_only {
                FatStore::open_read_only(dev)
            } else {
                FatStore::open(dev)
            }
            .map_err(|e| anyhow::anyhow!("opening medium {url}: {e}"))?;
            Ok(Kind::Nbd(store))
        }
    }
}

/// Arguments of `mgear medium`.
#[derive(clap::Args, Debug)]
pub struct MediumArgs {
    #[command(subcommand)]
    pub cmd: MediumCmd,
}

/// `mgear medium ...` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum MediumCmd {
    /// Create a FAT32 file system on an image file (created at --size) or a device (whole device).
    Format {
        /// fat:IMAGE or fat:/dev/sdX.
        medium: String,
        /// Size of a new image file, e.g. 2GiB (not used for devices).
        #[arg(long)]
        size: Option<String>,
        /// Overwrite an existing image file.
        #[arg(long)]
        force: bool,
    },
}

/// Run `mgear medium`.
pub fn run(args: MediumArgs) -> anyhow::Result<i32> {
    match args.cmd {
        MediumCmd::Format {
            medium,
            size,
            force,
        } => {
            let path = match MediumSpec::parse(&medium)? {
                MediumSpec::Fat(p) => p,
                MediumSpec::Nbd(_) => {
                    return Err(usage(
                        "an NBD export is formatted by its owner (the appliance); format a device or image with fat:PATH",
                    ))
                }
                MediumSpec::Dir(_) => {
                    return Err(usage(
                        "dir: media are already-mounted file systems: format the device with \
                         `mgear medium format fat:/dev/sdX` (or mkfs.fat -F 32) instead",
                    ))
                }
            };
            let size = size.as_deref().map(parse_size).transpose()?;
            let bytes = format_fat(&path, size, force)?;
            println!(
                "formatted {} as FAT32 ({})",
                path.display(),
                human_bytes(bytes)
            );
            Ok(crate::exit::OK)
        }
    }
}

/// Format `path` (a new image of `size` bytes, or an existing device) with
/// FAT32; returns the size.
pub fn format_fat(path: &std::path::Path, size: Option<u64>, force: bool) -> anyhow::Result<u64> {
    let is_dev = std::fs::metadata(path)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    let mut file: File = if is_dev {
        if size.is_some() {
            return Err(usage(format!(
                "{} is a device: --size applies to image files only",
                path.display()
            )));
        }
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open device {}", path.display()))?
    } else {
        let size = size.ok_or_else(|| {
            usage(format!(
                "creating image {} needs --size, e.g. --size 2GiB",
                path.display()
            ))
        })?;
        if size < MIN_FAT32_BYTES {
            return Err(usage(format!(
                "--size {}: a FAT32 medium needs at least {}",
                human_bytes(size),
                human_bytes(MIN_FAT32_BYTES)
            )));
        }
        if path.exists() && !force {
            return Err(usage(format!(
                "{} exists: pass --force to overwrite it",
                path.display()
            )));
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .with_context(|| format!("cannot create image {}", path.display()))?;
        // A sparse image: only what FAT and the captures write takes space.
        f.set_len(size)
            .with_context(|| format!("cannot size image {}", path.display()))?;
        f
    };
    let bytes = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    let opts = FormatOptions {
        label: "MOTIONGEAR".into(),
        cluster_size: None,
    };
    FatStore::format(file, &opts)
        .map_err(|e| anyhow::anyhow!("formatting {}: {e}", path.display()))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::exit::{code_of, USAGE};

    #[test]
    fn specs() {
        assert_eq!(
            MediumSpec::parse("fat:/dev/sdb").unwrap(),
            MediumSpec::Fat("/dev/sdb".into())
        );
        assert_eq!(
            MediumSpec::parse("dir:/mnt/a").unwrap(),
            MediumSpec::Dir("/mnt/a".into())
        );
        assert_eq!(
            crate::exit::code_of(&MediumSpec::parse("/mnt/a").unwrap_err()),
            crate::exit::USAGE
        );
    }

    #[test]
    fn format_small_and_large() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.img");
        assert_eq!(format_fat(&p, Some(64 << 20), false).unwrap(), 64 << 20);
        // Refuses to overwrite without --force, and too-small images.
        assert_eq!(
            code_of(&format_fat(&p, Some(64 << 20), false).unwrap_err()),
            USAGE
        );
        assert_eq!(
            code_of(&format_fat(&p, Some(8 << 20), true).unwrap_err()),
            USAGE
        );
        let mut m = open_mode(&format!("fat:{}", p.display()), false).unwrap();
        m.store().create_dir_all("x/y").unwrap();
        m.close().unwrap();
        let mut m = open_mode(&format!("fat:{}", p.display()), false).unwrap();
        assert_eq!(m.store().list("x").unwrap().len(), 1);
        m.close().unwrap();
    }
}
