//! `Indicators`: three LEDs (green, amber, red) and the 4×3 PIN keypad.

use embassy_stm32::gpio::{Input, Output, OutputOpenDrain};
use mgear_firmware::hal::{Indicators, Key, LedState};

/// Key at (row, column) of the keypad: `*` cancels, `#` enters.
const KEYS: [[Key; 3]; 4] = [
    [Key::Digit(1), Key::Digit(2), Key::Digit(3)],
    [Key::Digit(4), Key::Digit(5), Key::Digit(6)],
    [Key::Digit(7), Key::Digit(8), Key::Digit(9)],
    [Key::Cancel, Key::Digit(0), Key::Enter],
];

/// The front panel.
pub struct Panel {
    green: Output<'static>,
    amber: Output<'static>,
    red: Output<'static>,
    /// Open-drain row drivers (released = high through the column pull-ups).
    rows: [OutputOpenDrain<'static>; 4],
    cols: [Input<'static>; 3],
    /// The key seen at the last scan, so a held key is reported once.
    held: Option<(usize, usize)>,
}

impl Panel {
    pub fn new(
        green: Output<'static>,
        amber: Output<'static>,
        red: Output<'static>,
        rows: [OutputOpenDrain<'static>; 4],
        cols: [Input<'static>; 3],
    ) -> Self {
        Panel {
            green,
            amber,
            red,
            rows,
            cols,
            held: None,
        }
    }

    fn scan(&mut self) -> Option<(usize, usize)> {
        let mut found = None;
        for r in 0..self.rows.len() {
            self.rows[r].set_low();
            // Let the column lines settle (~1 µs at 160 MHz).
            cortex_m::asm::delay(160);
            for (c, col) in self.cols.iter().enumerate() {
                if col.is_low() && found.is_none() {
                    found = Some((r, c));
                }
            }
            self.rows[r].set_high();
        }
        found
    }
}

impl Indicators for Panel {
    fn set_led(&mut self, state: LedState) {
        let (g, a, r) = match state {
            LedState::Factory => (false, true, false),
            LedState::Locked => (false, false, false),
            LedState::Unlocked => (true, false, false),
            LedState::Busy => (false, true, false),
            LedState::Sealed => (true, true, false),
            LedState::Arrived => (true, false, false),
            LedState::Alarm => (false, false, true),
            LedState::Erased => (false, true, true),
        };
        self.green.set_level(g.into());
        self.amber.set_level(a.into());
        self.red.set_level(r.into());
    }

    fn poll_key(&mut self) -> Option<Key> {
        let now = self.scan();
        let fresh = now.is_some() && now != self.held;
        self.held = now;
        match now {
            Some((r, c)) if fresh => Some(KEYS[r][c]),
            _ => None,
        }
    }
}
