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
//! A pool whose volumes have no host path (`rbd`, `iscsi-direct`,
//! `gluster`) is written through libvirt's stream API instead: each run of
//! consecutive chunks is piped into `virsh vol-upload --offset --length`,
//! and the read-back pipes `virsh vol-download --offset --length` a window
//! at a time. Still no staging copy: only the batch in flight is in memory.
//! Zero ranges are not uploaded in that mode: the volume is always one this
//! tool created (sparse, all zeros) or its own unfinished one, where every
//! chunk is written the same way again after a resume.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::file::Raw;
use crate::marker::Marker;
use crate::tool::{require, run, succeeded};
use crate::{key_of, Error, Finished, Found, Prepare, Result, Volume, VolumeReader, WriteAt};

/// How much the stream read-back fetches per `virsh vol-download`.
const STREAM_WINDOW: u64 = 16 << 20;
/// Largest run of consecutive writes piped into one `virsh vol-upload`.
const STREAM_RUN: usize = 64 << 20;

/// A pool volume; see the module doc.
#[derive(Debug)]
pub struct LibvirtVolume {
    access: Access,
    conn: String,
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

/// Where the bytes go: the volume's host path, or libvirt's stream API.
#[derive(Debug)]
enum Access {
    Path(Raw),
    Stream(Stream),
}

/// A volume reached through `virsh vol-upload` / `vol-download`.
#[derive(Debug)]
struct Stream {
    virsh: Virsh,
    pool: String,
    name: String,
    size: u64,
    /// The last window downloaded: (offset, bytes).
    window: Option<(u64, Vec<u8>)>,
}

impl Stream {
    fn upload(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.window = None;
        let what = format!("virsh vol-upload of {} bytes at {offset}", data.len());
        let mut child = Command::new(&self.virsh.bin)
            .arg("-c")
            .arg(&self.virsh.conn)
            .args(["vol-upload", "--pool", &self.pool, &self.name, "/dev/stdin"])
            .args(["--offset", &offset.to_string(), "--length"])
            .arg(data.len().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(format!("running {what}"), e))?;
        let sent = child
            .stdin
            .take()
            .map(|mut pipe| pipe.write_all(data))
            .unwrap_or(Ok(()));
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io(format!("running {what}"), e))?;
        succeeded(out, &what)?;
        sent.map_err(|e| Error::io(format!("piping {what}"), e))
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset + buf.len() as u64;
        let cached = |w: &Option<(u64, Vec<u8>)>| {
            w.as_ref()
                .is_some_and(|(at, b)| *at <= offset && end <= at + b.len() as u64)
        };
        if !cached(&self.window) {
            let len = (buf.len() as u64)
                .max(STREAM_WINDOW)
                .min(self.size.saturating_sub(offset));
            let out = self.virsh.run(&[
                "vol-download",
                "--pool",
                &self.pool,
                &self.name,
                "/dev/stdout",
                "--offset",
                &offset.to_string(),
                "--length",
                &len.to_string(),
            ])?;
            self.window = Some((offset, out));
        }
        match &self.window {
            Some((at, b)) if cached(&self.window) => {
                let from = (offset - at) as usize;
                buf.copy_from_slice(&b[from..from + buf.len()]);
                Ok(())
            }
            _ => Err(Error::Tool(format!(
                "virsh vol-download of {}/{} at {offset} returned less than asked",
                self.pool, self.name
            ))),
        }
    }
}

#[derive(Debug)]
struct Virsh {
    bin: PathBuf,
    conn: String,
}

impl Virsh {
    fn run(&self, args: &[&str]) -> Result<Vec<u8>> {
        let what = format!("virsh {}", args.first().copied().unwrap_or_default());
        run(
            Command::new(&self.bin).arg("-c").arg(&self.conn).args(args),
            &what,
        )
    }

    fn text(&self, args: &[&str]) -> Result<String> {
        self.run(args)
            .map(|o| String::from_utf8_lossy(&o).into_owned())
    }
}

impl LibvirtVolume {
    /// Create volume `name` in `pool` on `conn` (or reopen the one an
    /// interrupted run of this ingest created).
    pub fn open(conn: &str, pool: &str, name: &str, prep: &Prepare) -> Result<Self> {
        Self::open_with(conn, pool, name, prep, false)
    }

    /// [`open`](Self::open), written through libvirt's stream API even if
    /// the volume has a host path (what pools without one always get).
    pub fn open_streamed(conn: &str, pool: &str, name: &str, prep: &Prepare) -> Result<Self> {
        Self::open_with(conn, pool, name, prep, true)
    }

    fn open_with(conn: &str, pool: &str, name: &str, prep: &Prepare, stream: bool) -> Result<Self> {
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
        let path = PathBuf::from(virsh.text(&["vol-path", "--pool", pool, name])?.trim());
        if stream || !path.is_absolute() || !path.exists() {
            let info = virsh.text(&["vol-info", "--bytes", "--pool", pool, name])?;
            let size = info
                .lines()
                .find_map(|l| l.strip_prefix("Capacity:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| {
                    Error::Tool(format!("virsh vol-info printed no capacity: {info:?}"))
                })?;
            if size < prep.disk_size {
                return Err(Error::Usage(format!(
                    "volume {name} of pool {pool} holds {size} bytes but the disk has {}: delete it \
                     (virsh vol-delete --pool {pool} {name}) and re-run",
                    prep.disk_size
                )));
            }
            return Ok(LibvirtVolume {
                access: Access::Stream(Stream {
                    virsh,
                    pool: pool.into(),
                    name: name.into(),
                    size,
                    window: None,
                }),
                conn: conn.into(),
                pool: pool.into(),
                name: name.into(),
                marker,
                found,
            });
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
            access: Access::Path(raw),
            conn: conn.into(),
            pool: pool.into(),
            name: name.into(),
            marker,
            found,
        })
    }

    /// The volume's host path (`None` when written through the stream API).
    pub fn path(&self) -> Option<&Path> {
        match &self.access {
            Access::Path(raw) => Some(&raw.path),
            Access::Stream(_) => None,
        }
    }
}

impl Volume for LibvirtVolume {
    fn size(&self) -> u64 {
        match &self.access {
            Access::Path(raw) => raw.size,
            Access::Stream(st) => st.size,
        }
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
    fn geometry(&self) -> crate::Geometry {
        match &self.access {
            Access::Path(raw) => raw.geometry(),
            // One `virsh vol-upload` per run: zeros inside it go with it.
            Access::Stream(_) => crate::Geometry::default(),
        }
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        match &mut self.access {
            Access::Path(raw) => raw.write_at(offset, data),
            Access::Stream(st) => st.upload(offset, data),
        }
    }
    fn write_batch(&mut self, writes: &[WriteAt<'_>]) -> Result<()> {
        let Access::Stream(st) = &mut self.access else {
            for w in writes {
                self.write_at(w.offset, w.data)?;
            }
            return Ok(());
        };
        // One upload per run of consecutive writes: each is a virsh process.
        let mut run: Vec<u8> = Vec::new();
        let mut run_at = 0u64;
        for w in writes {
            let next = run_at + run.len() as u64;
            if !run.is_empty() && (w.offset != next || run.len() + w.data.len() > STREAM_RUN) {
                st.upload(run_at, &run)?;
                run.clear();
            }
            if run.is_empty() {
                run_at = w.offset;
            }
            run.extend_from_slice(w.data);
        }
        if !run.is_empty() {
            st.upload(run_at, &run)?;
        }
        Ok(())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        match &mut self.access {
            Access::Path(raw) => raw.write_zeroes(offset, len),
            // Ours and sparse: see the module doc.
            Access::Stream(_) => Ok(()),
        }
    }
    fn flush(&mut self) -> Result<()> {
        match &mut self.access {
            Access::Path(raw) => raw.flush(),
            // Each upload has finished in the storage backend when virsh returns.
            Access::Stream(_) => Ok(()),
        }
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match &mut self.access {
            Access::Path(raw) => raw.read_at(offset, buf),
            Access::Stream(st) => st.read_at(offset, buf),
        }
    }
    /// A path-backed pool volume is read back like a `file:` one (its own `O_DIRECT`
    /// descriptor, beside the writes); a streamed one reads through `virsh` after them.
    fn concurrent_reader(&mut self) -> Result<Option<Box<dyn VolumeReader>>> {
        match &self.access {
            Access::Path(raw) => Ok(Some(Box::new(raw.reader()?))),
            Access::Stream(_) => Ok(None),
        }
    }
    fn reads_as_zeros(&mut self, offset: u64, len: u64) -> bool {
        match &mut self.access {
            Access::Path(raw) => raw.reads_as_zeros(offset, len),
            Access::Stream(_) => false,
        }
    }
    fn finish(self: Box<Self>) -> Result<Finished> {
        self.marker.remove()?;
        match &self.access {
            Access::Path(raw) => {
                raw.flush()?;
                Ok(Finished {
                    path: Some(raw.path.clone()),
                    format: "raw",
                    volume: Some(raw.path.display().to_string()),
                })
            }
            Access::Stream(_) => Ok(Finished {
                path: None,
                format: "raw",
                volume: Some(format!("libvirt:{}/{}", self.pool, self.name)),
            }),
        }
    }
    fn discard(self: Box<Self>) -> Result<()> {
        if self.found == Found::New {
            let virsh = Virsh {
                bin: require("virsh", "libvirt-clients")?,
                conn: self.conn.clone(),
            };
            virsh.run(&["vol-delete", "--pool", &self.pool, &self.name])?;
            self.marker.remove()?;
        }
        Ok(())
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
