//! The simulated status LED: the current state is kept for the simulator
//! to show and written to stderr when it changes. The simulator has no
//! keypad (PINs come over the console).

use mgear_firmware::hal::{Indicators, LedState};

/// LED state, echoed to stderr on change.
#[derive(Debug, Default)]
pub struct SimIndicators {
    led: Option<LedState>,
}

impl SimIndicators {
    /// What the LED shows now (`None` before the core first set it).
    pub fn led(&self) -> Option<LedState> {
        self.led
    }
}

impl Indicators for SimIndicators {
    fn set_led(&mut self, state: LedState) {
        if self.led != Some(state) {
            eprintln!("[led] {state:?}");
            self.led = Some(state);
        }
    }
}
