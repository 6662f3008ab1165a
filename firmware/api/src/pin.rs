//! The PIN rules, shared by the firmware (which enforces them at provisioning) and the
//! host (which checks a PIN before sending it: a PIN no rule admits can never be right,
//! and sending it would only use up one of the attempts before lockout).

/// Shortest and longest accepted PIN.
pub const MIN_PIN_LEN: usize = 6;
pub const MAX_PIN_LEN: usize = 64;

/// Check the PIN rules; the error says what to change.
pub fn check_rules(pin: &str) -> Result<(), &'static str> {
    if pin.len() < MIN_PIN_LEN {
        return Err("the PIN must have at least 6 characters");
    }
    if pin.len() > MAX_PIN_LEN {
        return Err("the PIN must have at most 64 characters");
    }
    if !pin.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the PIN may contain only printable ASCII characters without spaces");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_outside_the_rules_are_named() {
        assert!(check_rules("246810").is_ok());
        assert!(check_rules("12345").is_err());
        assert!(check_rules(&"A".repeat(65)).is_err());
        assert!(check_rules("12 34 56").is_err());
        assert!(check_rules("p\u{ef}n1234").is_err());
        assert!(check_rules("246810 ").is_err());
    }
}
