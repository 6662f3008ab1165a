//! Progress bars on a terminal, nothing otherwise, and the final summary.
//!
//! Bars go to stderr and only when stderr is a terminal, so scripts and
//! `--json` consumers see clean output. Summaries go to stdout: a few human
//! lines, or exactly one JSON object with `--json`.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::units::human_bytes;

/// A byte-count progress bar that may be absent.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar of `total` bytes labelled `what`, shown only on a terminal and not with `--json`.
    pub fn new(what: &str, total: u64, json: bool) -> Self {
        if json || !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template(
            "{msg:>8} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(what.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar: Some(bar) }
    }

    /// Set the position in bytes.
    pub fn set(&self, pos: u64) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
        }
    }

    /// Start at `pos` (a resumed job): the bytes done before this run must
    /// not count as if moved in its first tick ("48 GiB/s, ETA 0s"), so the
    /// rate and ETA estimate starts from here.
    pub fn start_at(&self, pos: u64) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
            b.tick(); // the estimator records `pos` as its starting point
            b.reset_eta();
        }
    }

    /// Remove the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Bytes per second as MB/s (10^6, as `dd` prints).
pub fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        0.0
    } else {
        bytes as f64 / 1e6 / secs
    }
}

/// Print `value` as one JSON line on stdout, in the envelope every command
/// shares (`"ok"`, `"command"` first: see `output.rs`).
pub fn print_json<T: Serialize>(value: &T) -> crate::Result<()> {
    crate::output::emit(value)
}

/// `label: 1.50 GiB` aligned.
pub fn line(label: &str, bytes: u64) {
    println!("  {label:<14} {:>14}  ({bytes} bytes)", human_bytes(bytes));
}

/// user + system CPU seconds this process has used so far (all threads).
pub fn cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    })
}
