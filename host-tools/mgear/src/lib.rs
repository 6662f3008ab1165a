//! The MotionGear host library: every pipeline the `mgear` binary runs
//! (capture, verify, ingest, appliance client, boot, sync, bench, demo) as
//! modules other programs and the end-to-end tests can call. Commands take
//! typed plans (`capture::Plan`, `ingest::Plan`, `verify::Plan`, ...: sizes,
//! rates, keys and choices already parsed), never command-line flags: the
//! binary (`main.rs` and its `cli/` tree, behind the `cli` feature) parses
//! the command line into them and maps results to exit codes, and the
//! library builds without clap.
//!
//! The modules are layered without import cycles (`layering.rs` checks it;
//! README.md, "Layers of the `mgear` library", lists the layers): `exit`,
//! `output` and the other helpers at the bottom, then `spec` (parsing only),
//! sources, keys, trust and targets, the appliance client, `medium`, the
//! one-medium commands, the one-disk pipelines, `machine`, and `demo`/`bench`
//! on top.
/// `eprintln!` that never panics: std's panics when standard error is gone
/// (`mgear capture ... 2>&1 | head -1`), which stopped a set capture between
/// two disks. A message that cannot be written is lost; the work goes on.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr(), $($arg)*);
    }};
}

pub mod appliance;
pub mod bench;
pub mod boot_cmd;
pub mod capture;
pub mod cloud_target;
pub mod demo;
pub mod error;
pub mod exit;
pub mod guard;
pub mod ingest;
pub mod inspect;
pub mod keyfile;
pub mod keys;
#[cfg(test)]
mod layering;
pub mod lock;
pub mod machine;
pub mod medium;
pub mod medium_admin;
pub mod output;
pub mod preflight;
pub mod progress;
pub mod ratelimit;
pub mod report;
pub mod signals;
pub mod sitekey;
pub mod source;
pub mod spec;
pub mod sync;
pub mod target;
pub mod tools;
pub mod trust;
pub mod units;
pub mod verify;

pub use error::{Error, Result};
