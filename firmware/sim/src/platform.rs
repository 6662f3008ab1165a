//! The simulator's [`Platform`]: the parts from `mgear_hardware::sim`
//! (medium file, secret files, custody-log file, host clock, LED), the
//! console pty, the operating system's randomness, and the FAT32 view of
//! the medium for the firmware's file-level work (verify, seal, erase).

use std::path::{Path, PathBuf};

use image_format::StoreError;
use mgear_firmware::hal::{FilesFn, Platform};
use mgear_hardware::fat::FatFiles;
use mgear_hardware::sim::{FileLog, FileMedium, FileSecrets, HostClock, SimIndicators};
use rand_core::OsRng;

use crate::pty::Pty;

/// Everything the firmware core runs on in the simulator.
pub struct SimPlatform {
    pub console: Pty,
    pub medium: FileMedium,
    pub secrets: FileSecrets,
    pub log: FileLog,
    pub clock: HostClock,
    pub rng: OsRng,
    pub indicators: SimIndicators,
    /// Absolute path of the NBD socket, for `info`.
    pub nbd_socket: PathBuf,
}

/// Paths inside the state directory (layout documented in `mgear_hardware::sim`).
pub fn secrets_dir(state: &Path) -> PathBuf {
    state.join("secrets")
}

/// The custody log file.
pub fn log_path(state: &Path) -> PathBuf {
    state.join("custody.log")
}

impl Platform for SimPlatform {
    type Console = Pty;
    type Medium = FileMedium;
    type Secrets = FileSecrets;
    type Log = FileLog;
    type Clock = HostClock;
    type Rng = OsRng;
    type Indicators = SimIndicators;

    fn console(&mut self) -> &mut Pty {
        &mut self.console
    }
    fn medium(&mut self) -> &mut FileMedium {
        &mut self.medium
    }
    fn secrets(&mut self) -> &mut FileSecrets {
        &mut self.secrets
    }
    fn log_storage(&mut self) -> &mut FileLog {
        &mut self.log
    }
    fn clock(&mut self) -> &mut HostClock {
        &mut self.clock
    }
    fn rng(&mut self) -> &mut OsRng {
        &mut self.rng
    }
    fn indicators(&mut self) -> &mut SimIndicators {
        &mut self.indicators
    }

    fn with_files(&mut self, f: &mut FilesFn<'_, Pty>) -> Result<(), StoreError> {
        // The board's FAT engine (lamfat + the shared direct cluster path),
        // so seal and arrival run here exactly as on the board. It writes
        // nothing on mount, and on unmount only what changed (FSInfo, the
        // dirty bit), so a read-only walk leaves every byte of the medium as
        // it was: the seal's region hashes depend on that.
        let mut store = FatFiles::mount(&mut self.medium)?;
        let result = f(&mut store, &mut self.console);
        let unmounted = store.unmount();
        result.and(unmounted)
    }

    fn medium_locator(&self) -> String {
        mgear_nbd::NbdUrl::Unix {
            socket: self.nbd_socket.clone(),
            export: String::new(),
        }
        .to_string()
    }
}
