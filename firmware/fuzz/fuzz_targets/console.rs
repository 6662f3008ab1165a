//! Arbitrary bytes into a provisioned appliance's console (fake platform):
//! it must never panic, whatever frames and lines arrive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mgear_firmware::protocol::{Pin, Request};
use mgear_firmware::testing::FakePlatform;
use mgear_firmware::{Appliance, Config};

fuzz_target!(|data: &[u8]| {
    let cfg = Config {
        pin_iterations: 1,
        region_size: 64 * 1024,
        ..Config::default()
    };
    let Ok(mut a) = Appliance::new(FakePlatform::new(128 * 1024, 1), cfg) else {
        return;
    };
    let _ = a.handle(Request::Provision {
        pin: Pin::new("314159"),
    });
    a.platform_mut().console.send(data);
    let _ = a.poll_console();
});
