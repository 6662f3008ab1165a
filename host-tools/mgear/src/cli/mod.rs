//! The command line of `mgear`: clap's structs, one module per command, and
//! their conversion into the library's typed plans (`into_plan`). Only the
//! binary compiles this tree (`main.rs` declares it), so the library builds
//! without clap; everything a flag's text means (sizes, rates, keys) is
//! parsed here, with the library's parsers and their messages (exit 2).
pub mod appliance;
pub mod bench;
pub mod boot;
pub mod capture;
pub mod demo;
pub mod ingest;
pub mod inspect;
pub mod keys;
pub mod medium;
pub mod sync;
pub mod trust;
pub mod verify;

/// A count of at least one (threads, peers): 0 would be taken silently as 1, or mean
/// "none at all" where the command needs some.
pub fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}
