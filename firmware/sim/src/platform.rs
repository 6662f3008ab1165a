//! The simulator's [`Platform`]: the medium file, secret files, custody-log
//! file, host clock and LED of this crate, a console (the pty in the
//! simulator, any byte stream in tests), the operating system's
//! randomness, and the board's FAT32 engine for the firmware's file-level
//! work (verify, seal, arrival, erase).

use std::path::{Path, PathBuf};

use image_format::StoreError;
use mgear_firmware::hal::{Console, FilesFn, HwError, Platform, RegionJob};
use mgear_hardware::fat::FatFiles;
use rand_core::OsRng;

use crate::pty::Pty;
use crate::{FileLog, FileMedium, FileSecrets, HostClock, SimIndicators};

/// Everything the firmware core runs on in the simulator.
pub struct SimPlatform<C = Pty> {
    pub console: C,
    pub medium: FileMedium,
    pub secrets: FileSecrets,
    pub log: FileLog,
    pub clock: HostClock,
    pub rng: OsRng,
    pub indicators: SimIndicators,
    /// Absolute path of the NBD socket, for `info`.
    pub nbd_socket: PathBuf,
}

/// Paths inside the state directory (layout documented in the crate root).
pub fn secrets_dir(state: &Path) -> PathBuf {
    state.join("secrets")
}

/// The custody log file.
pub fn log_path(state: &Path) -> PathBuf {
    state.join("custody.log")
}

impl<C: Console> SimPlatform<C> {
    /// Open the parts kept on disk: the medium image, and the secret store
    /// and custody log in the state directory (created private, 0700, if
    /// missing). Reopening after a kill is the simulated power cycle.
    pub fn open(
        state: &Path,
        medium: &Path,
        console: C,
        nbd_socket: PathBuf,
    ) -> Result<SimPlatform<C>, HwError> {
        // The state holds the identity seed and PIN verifier: private.
        crate::files::private_dir(state)
            .map_err(|e| HwError::Io(format!("state directory {}: {e}", state.display())))?;
        Ok(SimPlatform {
            console,
            medium: FileMedium::open(medium)?,
            secrets: FileSecrets::open(&secrets_dir(state))?,
            log: FileLog::open(&log_path(state))?,
            clock: HostClock::new(),
            rng: OsRng,
            indicators: SimIndicators::default(),
            nbd_socket,
        })
    }
}

impl<C: Console> Platform for SimPlatform<C> {
    type Console = C;
    type Medium = FileMedium;
    type Secrets = FileSecrets;
    type Log = FileLog;
    type Clock = HostClock;
    type Rng = OsRng;
    type Indicators = SimIndicators;

    fn console(&mut self) -> &mut C {
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

    fn with_files(&mut self, f: &mut FilesFn<'_, C>) -> Result<(), StoreError> {
        // The board's FAT engine (lamfat + the shared direct cluster path),
        // so seal and arrival run here exactly as on the board. It writes
        // nothing on mount, and on unmount only what changed (FSInfo, the
        // dirty bit), so a read-only walk leaves every byte of the medium as
        // it was: the seal's region hashes depend on that.
        let t0 = std::time::Instant::now();
        let mut store = FatFiles::mount(&mut self.medium)?;
        let result = f(&mut store, &mut self.console);
        let unmounted = store.unmount();
        log::debug!("the file walk took {} ms", t0.elapsed().as_millis());
        result.and(unmounted)
    }

    fn start_region_hashes(&mut self, region: u64, chunk: usize) -> Option<Box<dyn RegionJob>> {
        // The host has cores to spare: the regions are hashed on a thread
        // while the core walks the files. If it cannot start, the core
        // hashes them itself.
        match self
            .medium
            .reopen()
            .and_then(|m| crate::regions::RegionThread::start(m, region, chunk))
        {
            Ok(job) => Some(Box::new(job)),
            Err(e) => {
                log::warn!("hashing the regions on the main thread: {e}");
                None
            }
        }
    }

    fn medium_locator(&self) -> String {
        mgear_nbd_proto::NbdUrl::Unix {
            socket: self.nbd_socket.clone(),
            export: String::new(),
        }
        .to_string()
    }
}
