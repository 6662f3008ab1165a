//! `Clock` over embassy-time (monotonic) and the RTC on VBAT (wall time).

use embassy_stm32::rtc::RtcTimeProvider;
use mgear_firmware::hal::Clock;

/// Before this year the RTC cannot have been set: a board whose coin cell
/// ran flat restarts its calendar at 2000-01-01.
const EARLIEST_TRUSTED_YEAR: u16 = 2025;

/// The board's clock.
pub struct RtcClock {
    rtc: RtcTimeProvider,
}

impl RtcClock {
    pub fn new(rtc: RtcTimeProvider) -> Self {
        RtcClock { rtc }
    }
}

impl Clock for RtcClock {
    fn now_ms(&mut self) -> u64 {
        embassy_time::Instant::now().as_millis()
    }

    fn unix_time(&mut self) -> Option<u64> {
        let t = self.rtc.now().ok()?;
        if t.year() < EARLIEST_TRUSTED_YEAR {
            return None;
        }
        crate::calendar::unix_time(
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
        )
    }
}
