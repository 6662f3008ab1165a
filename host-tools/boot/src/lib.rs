//! Boot, proof of boot, readiness and driver adaptation.
