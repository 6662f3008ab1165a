//! PIN handling: the stored verifier (a slow salted hash, never the PIN),
//! the PIN rules, and the exponential back-off schedule.
//!
//! Verifier layout (secret-store slot `PinHash`, postcard):
//! `{ salt: [u8; 16], iterations: u32, hash: [u8; 32] }` where
//! `hash = PBKDF2-HMAC-SHA256(pin, salt, iterations)`. PBKDF2 rather than
//! Argon2 because the board has tens of KiB of RAM, not the MiBs Argon2
//! needs to be worth it; the lockout after 10 failures is the real defence.

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The PIN rules live in the API crate: the host checks a PIN against them before it
/// sends one (a PIN no rule admits would only cost an attempt).
pub use mgear_appliance_api::pin::{check_rules, MAX_PIN_LEN, MIN_PIN_LEN};

/// The stored PIN verifier.
#[derive(Clone, Serialize, Deserialize)]
pub struct PinVerifier {
    #[serde(with = "serde_bytes")]
    salt: [u8; 16],
    iterations: u32,
    #[serde(with = "serde_bytes")]
    hash: [u8; 32],
}

impl core::fmt::Debug for PinVerifier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PinVerifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

fn derive(pin: &str, salt: &[u8; 16], iterations: u32) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    pbkdf2::pbkdf2_hmac::<Sha256>(pin.as_bytes(), salt, iterations.max(1), out.as_mut());
    out
}

impl PinVerifier {
    /// A verifier for `pin` with a fresh random salt.
    pub fn new<R: RngCore + CryptoRng>(pin: &str, rng: &mut R, iterations: u32) -> PinVerifier {
        let mut salt = [0u8; 16];
        rng.fill_bytes(&mut salt);
        let hash = *derive(pin, &salt, iterations);
        PinVerifier {
            salt,
            iterations: iterations.max(1),
            hash,
        }
    }

    /// Whether `pin` is the PIN (constant-time comparison).
    pub fn matches(&self, pin: &str) -> bool {
        let got = derive(pin, &self.salt, self.iterations);
        bool::from(got.ct_eq(&self.hash))
    }
}

/// Back-off after `failures` wrong PINs in a row: none for the first
/// `free`, then `base_ms` doubling each time, capped at `max_ms`.
pub fn backoff_ms(failures: u32, free: u32, base_ms: u64, max_ms: u64) -> u64 {
    if failures < free.max(1) {
        return 0;
    }
    let doublings = (failures - free.max(1)).min(40);
    base_ms.saturating_mul(1u64 << doublings).min(max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    #[test]
    fn verifier_accepts_only_the_pin() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let v = PinVerifier::new("246810", &mut rng, 1000);
        assert!(v.matches("246810"));
        assert!(!v.matches("246811"));
        assert!(!v.matches(""));
        let w = PinVerifier::new("246810", &mut rng, 1000);
        assert_ne!(v.hash, w.hash, "salts differ");
        let bytes = postcard::to_allocvec(&v).unwrap();
        let back: PinVerifier = postcard::from_bytes(&bytes).unwrap();
        assert!(back.matches("246810"));
        assert!(!alloc::format!("{v:?}").contains("hash"));
    }

    #[test]
    fn rules() {
        assert!(check_rules("12345").is_err());
        assert!(check_rules("123456").is_ok());
        assert!(check_rules("12 3456").is_err());
        assert!(check_rules(&"1".repeat(65)).is_err());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_ms(0, 3, 1000, 60_000), 0);
        assert_eq!(backoff_ms(2, 3, 1000, 60_000), 0);
        assert_eq!(backoff_ms(3, 3, 1000, 60_000), 1000);
        assert_eq!(backoff_ms(4, 3, 1000, 60_000), 2000);
        assert_eq!(backoff_ms(9, 3, 1000, 60_000), 60_000);
        assert_eq!(backoff_ms(u32::MAX, 3, 1000, 60_000), 60_000);
    }
}
