//! Clock tree of the board (BOARD.md §6): HSE 16 MHz, PLL1 at 480 MHz VCO,
//! 160 MHz system clock, 48 MHz for SDMMC, 32 MHz reference for the USB HS
//! PHY, HSI48 for the RNG, LSE for the RTC on VBAT.

use embassy_stm32::rcc::{
    mux, Hse, HseMode, LsConfig, LseConfig, LseDrive, LseMode, Pll, PllDiv, PllMul, PllPreDiv,
    PllSource, RtcClockSource, Sysclk, VoltageScale,
};
use embassy_stm32::time::Hertz;
use embassy_stm32::Config;

/// The HAL configuration for `embassy_stm32::init`.
pub fn config() -> Config {
    let mut config = Config::default();
    config.rcc.hse = Some(Hse {
        freq: Hertz(16_000_000),
        mode: HseMode::Oscillator,
    });
    config.rcc.pll1 = Some(Pll {
        source: PllSource::HSE,
        prediv: PllPreDiv::DIV2,   // 8 MHz into the PLL (4..16 MHz allowed)
        mul: PllMul::MUL60,        // 480 MHz VCO
        divp: Some(PllDiv::DIV15), // 32 MHz: USB HS PHY reference
        divq: Some(PllDiv::DIV10), // 48 MHz: ICLK -> SDMMC kernel
        divr: Some(PllDiv::DIV3),  // 160 MHz: system clock
    });
    config.rcc.sys = Sysclk::PLL1_R;
    config.rcc.voltage_range = VoltageScale::RANGE1;
    config.rcc.mux.otghssel = mux::Otghssel::PLL1_P;
    config.rcc.mux.iclksel = mux::Iclksel::PLL1_Q;
    config.rcc.mux.sdmmcsel = mux::Sdmmcsel::ICLK;
    config.rcc.mux.rngsel = mux::Rngsel::HSI48;
    // The RTC runs from the LSE on the coin cell; the time must survive
    // transit, so the backup domain is never reset here.
    config.rcc.ls = LsConfig {
        rtc: RtcClockSource::LSE,
        lsi: false,
        lse: Some(LseConfig {
            frequency: Hertz(32_768),
            mode: LseMode::Oscillator(LseDrive::MediumLow),
            peripherals_clocked: false,
        }),
    };
    config
}
