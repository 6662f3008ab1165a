//! Read-out protection policy of the reference board (STM32U5A5): which
//! option-byte values keep the secret store inside the chip, and the
//! `FLASH_OPTR` value that puts them in force. Pure logic, so it is built
//! and tested on the host too; `board::readout` reads and programs the
//! register on the chip.
//!
//! `FLASH_OPTR` fields used (RM0456, FLASH option register, offset 0x40):
//!
//! ```text
//! bits 7:0   RDP       0xAA level 0, 0x55 level 0.5, 0xCC level 2, anything else level 1
//! bit  26    nSWBOOT0  0: the boot selection comes from nBOOT0, the BOOT0 pin is ignored
//! bit  27    nBOOT0    1: boot from user flash (never the ROM USB DFU bootloader)
//! ```
//!
//! Production policy: RDP level 2 (debug port closed for good, no boot from
//! RAM or system memory, option bytes frozen) and BOOT0 ignored, so the
//! ROM's USB DFU bootloader cannot be entered to read or replace the flash.
//! RDP level 2 cannot be undone: a development board built with feature
//! `dev-unprotected` skips it (and keeps DFU), and must never be shipped.

/// `FLASH_OPTR.RDP` values.
pub const RDP_LEVEL0: u8 = 0xAA;
pub const RDP_LEVEL0_5: u8 = 0x55;
pub const RDP_LEVEL2: u8 = 0xCC;

const RDP_MASK: u32 = 0xFF;
/// `FLASH_OPTR.nSWBOOT0`.
pub const NSWBOOT0: u32 = 1 << 26;
/// `FLASH_OPTR.nBOOT0`.
pub const NBOOT0: u32 = 1 << 27;

/// Read-out protection level decoded from `FLASH_OPTR.RDP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RdpLevel {
    L0,
    L0_5,
    L1,
    L2,
}

impl RdpLevel {
    pub fn of(optr: u32) -> RdpLevel {
        match (optr & RDP_MASK) as u8 {
            RDP_LEVEL0 => RdpLevel::L0,
            RDP_LEVEL0_5 => RdpLevel::L0_5,
            RDP_LEVEL2 => RdpLevel::L2,
            _ => RdpLevel::L1,
        }
    }
}

/// What a build requires of the option bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// RDP level 2.
    pub rdp2: bool,
    /// BOOT0 pin ignored, boot from user flash only (no DFU entry).
    pub no_rom_boot: bool,
}

impl Policy {
    /// Every appliance that ships.
    pub const PRODUCTION: Policy = Policy {
        rdp2: true,
        no_rom_boot: true,
    };
    /// Feature `dev-unprotected`: nothing irreversible, DFU reachable.
    pub const DEVELOPMENT: Policy = Policy {
        rdp2: false,
        no_rom_boot: false,
    };

    /// The policy this build enforces.
    pub const fn of_build() -> Policy {
        if cfg!(feature = "dev-unprotected") {
            Policy::DEVELOPMENT
        } else {
            Policy::PRODUCTION
        }
    }
}

/// What is missing in `optr` under `policy` (empty: in force).
pub fn missing(optr: u32, policy: Policy) -> ([Option<&'static str>; 2], bool) {
    let rdp = (policy.rdp2 && RdpLevel::of(optr) != RdpLevel::L2)
        .then_some("read-out protection is not at level 2");
    let boot = (policy.no_rom_boot && (optr & NSWBOOT0 != 0 || optr & NBOOT0 == 0))
        .then_some("the BOOT0 pin can still start the ROM bootloader (USB DFU)");
    let ok = rdp.is_none() && boot.is_none();
    ([rdp, boot], ok)
}

/// `FLASH_OPTR` with `policy` applied and every other field kept.
pub fn target_optr(optr: u32, policy: Policy) -> u32 {
    let mut v = optr;
    if policy.no_rom_boot {
        v = (v & !NSWBOOT0) | NBOOT0;
    }
    if policy.rdp2 {
        v = (v & !RDP_MASK) | u32::from(RDP_LEVEL2);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A factory-fresh U5: level 0, BOOT0 pin honoured.
    const FRESH: u32 = 0x1FEF_F8AA;

    #[test]
    fn fresh_chip_is_not_protected_and_target_fixes_it() {
        assert_eq!(RdpLevel::of(FRESH), RdpLevel::L0);
        let (why, ok) = missing(FRESH, Policy::PRODUCTION);
        assert!(!ok);
        assert!(why[0].unwrap().contains("level 2"));
        assert!(why[1].unwrap().contains("DFU"));
        let t = target_optr(FRESH, Policy::PRODUCTION);
        assert_eq!(RdpLevel::of(t), RdpLevel::L2);
        assert_eq!(t & NSWBOOT0, 0);
        assert_ne!(t & NBOOT0, 0);
        // Other fields untouched.
        assert_eq!(
            t & !(RDP_MASK | NSWBOOT0 | NBOOT0),
            FRESH & !(RDP_MASK | NSWBOOT0 | NBOOT0)
        );
        assert!(missing(t, Policy::PRODUCTION).1);
    }

    #[test]
    fn any_other_rdp_value_is_level_one() {
        assert_eq!(RdpLevel::of(0x1FEF_F800), RdpLevel::L1);
        assert_eq!(RdpLevel::of(0x1FEF_F855), RdpLevel::L0_5);
        let l1 = target_optr(0x1FEF_F800, Policy::PRODUCTION) & !RDP_MASK | 0x11;
        assert!(!missing(l1, Policy::PRODUCTION).1);
    }

    #[test]
    fn development_policy_changes_nothing() {
        assert!(missing(FRESH, Policy::DEVELOPMENT).1);
        assert_eq!(target_optr(FRESH, Policy::DEVELOPMENT), FRESH);
    }
}
