//! Host time for the simulator: a monotonic clock from process start
//! (the simulated power-up) and the host's wall clock as its "RTC".

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use mgear_firmware::hal::Clock;

/// The host's clocks.
pub struct HostClock {
    start: Instant,
}

impl HostClock {
    pub fn new() -> HostClock {
        HostClock {
            start: Instant::now(),
        }
    }
}

impl Default for HostClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for HostClock {
    fn now_ms(&mut self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn unix_time(&mut self) -> Option<u64> {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs())
    }
}
