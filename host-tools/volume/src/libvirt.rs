//! A volume of a libvirt storage pool (`libvirt:POOL/NAME`), written
//! straight into the pool: `virsh vol-create-as` makes a sparse raw volume
//! of the disk's size and the pipeline writes its host path (`virsh
//! vol-path`: a file of a `dir`/`fs`/`netfs` pool, a device of a `logical`
//! pool). No copy is staged in the state dir and nothing is uploaded.
//!
//! The volume exists in the pool while it is written, so as for a device a
//! marker in the state dir (`libvirt_POOL_NAME.mgear-incomplete`) exists
//! until the read-back check passed, and chunk 0 (partition table, boot
//! sector) is written last. An existing volume without that marker is
//! replaced only with `--force`.
//!
//! Not supported yet: pools whose volumes have no host path (`rbd`,
//! `iscsi-direct`, `gluster`): those need `qemu-nbd` on the volume's URL or
//! `virsh vol-upload` from a pipe.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::file::Raw;
use crate::marker::Marker;
use crate::tool::{require, run};
use crate::{key_of, Error, Finished, Found, Prepare, Result, Volume};

/// A pool volume; see the module doc.
#[derive(Debug)]
pub struct LibvirtVolume {
    raw: Raw,
    pool: String,
    name: String,
    marker: Marker,
    found: Found,
}

/// A pool or volume name virsh takes as one argument and that names one
/// file in the state dir.
fn check_name(what: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.starts_with('-') || s.contains('/') || s.chars().any(char::is_control) {
        return Err(Error::Usage(format!(
            "libvirt {what} name {s:?} is not usable: no '/', no leading '-', not empty"
        )));
    }
    Ok(())
}

struct Virsh {
    bin: PathBuf,
    conn: String,
}

impl Virsh {
    fn run(&self, args: &[&str]) -> Result<String> {
        let what = format!("virsh {}", args.first().copied().unwrap_or_default());
        run(
            Command::new(&self.bin).arg("-c").arg(&self.conn).args(args),
            &what,
        )
    }
}

impl LibvirtVolume {
    /// Create volume `name` in `pool` on `conn` (or reopen the one an
    /// interrupted run of this ingest created).
    pub fn open(conn: &str, pool: &str, name: &str, prep: &Prepare) -> Result<Self> {
        check_name("pool", pool)?;
        check_name("volume", name)?;
        let virsh = Virsh {
            bin: require("virsh", "libvirt-clients")?,
            conn: conn.to_string(),
        };
        if let Err(e) = virsh.run(&["uri"]) {
            return Err(Error::Tool(format!(
                "libvirtd is not reachable at {conn} ({e}): start it: scripts/libvirtd.sh (or `libvirtd -d` as root)"
            )));
        }
        if let Err(e) = virsh.run(&["pool-info", pool]) {
            return Err(Error::Usage(format!(
                "libvirt pool {pool} not found on {conn} ({e}): scripts/libvirtd.sh creates the pool `mgear`"
            )));
        }
        let marker = Marker::new(&prep.state_dir, &key_of(&format!("libvirt_{pool}_{name}")));
        let exists = virsh.run(&["vol-info", "--pool", pool, name]).is_ok();
        let found = if exists && marker.exists() {
            Found::Unfinished {
                adopt_without_state: true,
            }
        } else {
            if exists {
                if !prep.force {
                    return Err(Error::Usage(format!(
                        "volume {name} already exists in pool {pool}: pass --force to replace it"
                    )));
                }
                virsh.run(&["vol-delete", "--pool", pool, name])?;
            }
            if marker.exists() {
                // An earlier run stopped before its volume was created.
                marker.remove()?;
            }
            marker.create(&format!("{} into libvirt:{pool}/{name}", prep.what))?;
            let size = prep.disk_size.to_string();
            virsh.run(&[
                "vol-create-as",
                pool,
                name,
                &size,
                "--allocation",
                "0",
                "--format",
                "raw",
            ])?;
            Found::New
        };
        let path = PathBuf::from(virsh.run(&["vol-path", "--pool", pool, name])?.trim());
        if !path.is_absolute() || !path.exists() {
            return Err(Error::Usage(format!(
                "volume {name} of pool {pool} has no host path ({}): this pool type is not \
                 supported yet; use a dir, fs or logical pool, or serve the volume over NBD \
                 and give nbd://",
                path.display()
            )));
        }
        let raw = Raw::open(&path)?;
        if raw.size < prep.disk_size {
            return Err(Error::Usage(format!(
                "volume {name} of pool {pool} holds {} bytes but the disk has {}: delete it \
                 (virsh vol-delete --pool {pool} {name}) and re-run",
                raw.size, prep.disk_size
            )));
        }
        if found == Found::New && raw.device {
            // A logical volume may hold an old LV's bytes.
            raw.write_zeroes(0, prep.head_len.min(raw.size))?;
            raw.flush()?;
        }
        Ok(LibvirtVolume {
            raw,
            pool: pool.into(),
            name: name.into(),
            marker,
            found,
        })
    }

    /// The volume's host path.
    pub fn path(&self) -> &Path {
        &self.raw.path
    }
}

impl Volume for LibvirtVolume {
    fn size(&self) -> u64 {
        self.raw.size
    }
    fn describe(&self) -> String {
        format!("libvirt:{}/{}", self.pool, self.name)
    }
    fn state_key(&self) -> String {
        key_of(&format!("libvirt_{}_{}", self.pool, self.name))
    }
    fn found(&self) -> Found {
        self.found
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.raw.write_at(offset, data)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.raw.write_zeroes(offset, len)
    }
    fn flush(&mut self) -> Result<()> {
        self.raw.flush()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.raw.read_at(offset, buf)
    }
    fn reads_as_zeros(&mut self, offset: u64, len: u64) -> bool {
        self.raw.reads_as_zeros(offset, len)
    }
    fn finish(self: Box<Self>) -> Result<Finished> {
        self.raw.flush()?;
        self.marker.remove()?;
        Ok(Finished {
            path: Some(self.raw.path.clone()),
            format: "raw",
            volume: Some(self.raw.path.display().to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_virsh_or_the_state_dir_would_misread_are_refused() {
        for bad in ["", "-x", "a/b", "a\nb"] {
            assert!(check_name("volume", bad).unwrap_err().is_usage(), "{bad:?}");
        }
        check_name("volume", "web01.raw").unwrap();
    }
}
