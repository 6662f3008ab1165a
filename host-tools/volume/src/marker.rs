//! "Incomplete" markers in the state dir, for volumes that have no
//! unfinished name of their own (a device, an NBD export, a pool volume):
//! the marker exists from before the first write until the read-back check
//! passed, so an earlier run's unfinished write is recognised and the
//! operator can see the volume must not be used.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A marker file `<state-dir>/<name>.mgear-incomplete`.
#[derive(Debug)]
pub(crate) struct Marker {
    pub path: PathBuf,
}

impl Marker {
    pub fn new(state_dir: &Path, name: &str) -> Self {
        Marker {
            path: state_dir.join(format!("{name}.mgear-incomplete")),
        }
    }

    /// lstat, not stat: a dangling symlink counts as something being there.
    pub fn exists(&self) -> bool {
        std::fs::symlink_metadata(&self.path).is_ok()
    }

    /// Create it (new, 0600, never through a symlink) saying what is incomplete.
    pub fn create(&self, what: &str) -> Result<()> {
        image_format::private::create(&self.path)
            .and_then(|mut m| {
                m.write_all(format!("{what} is incomplete: do not use this volume\n").as_bytes())?;
                m.sync_all()
            })
            .map_err(|e| Error::io(format!("writing marker {}", self.path.display()), e))
    }

    /// [`Marker::create`] with a line naming the volume beyond its path (`identity`), which
    /// [`Marker::identity`] gives back.
    pub fn create_for(&self, what: &str, identity: &str) -> Result<()> {
        self.create(&format!("{what}\nidentity: {identity}\n"))
    }

    /// Replaces the marker by one with an identity line ([`Marker::create_for`]), at once (a
    /// new file renamed over it): the volume is never unmarked meanwhile.
    pub fn set_identity(&self, what: &str, identity: &str) -> Result<()> {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        Marker { path: tmp.clone() }.create_for(what, identity)?;
        std::fs::rename(&tmp, &self.path)
            .map_err(|e| Error::io(format!("writing marker {}", self.path.display()), e))
    }

    /// The identity line a marker was made with ([`Marker::create_for`]); `None` for one
    /// without (made before, or for a volume that has none).
    pub fn identity(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("identity: "))
            .map(str::to_string)
    }

    /// The state key a device's marker records (the name the ingest began under; see
    /// `DeviceVolume`), if it records one.
    pub fn state(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("state: "))
            .map(str::to_string)
    }

    pub fn remove(&self) -> Result<()> {
        std::fs::remove_file(&self.path)
            .map_err(|e| Error::io(format!("removing marker {}", self.path.display()), e))
    }
}
