//! Progress bars on a terminal, nothing otherwise, and the final summary.
//!
//! Bars go to stderr and only when stderr is a terminal, so scripts and
//! `--json` consumers see clean output. Summaries go to stdout: a few human
//! lines, or exactly one JSON object with `--json`.
//!
//! Every bar also has a watchdog: when the position has not moved for
//! [`STALL`] (or three chunk-times of a `--rate-limit`, if longer), a
//! warning goes to stderr, terminal or not, and again every
//! [`STALL_AGAIN`]: a frozen appliance or an NBD export that stopped
//! answering made a capture wait silently for as long as it lasted. The
//! steps after a bar (a capture's manifest, COMMIT, signature and witness, an
//! ingest's last flush and rename) are watched the same way by
//! [`Progress::waiting`]: a medium or appliance that freezes there is as silent.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::units::human_bytes;

/// No progress for this long is worth a warning.
pub const STALL: Duration = Duration::from_secs(60);
/// And again after this much more.
pub const STALL_AGAIN: Duration = Duration::from_secs(300);

/// After a stop request (Ctrl-C, SIGTERM), the work at hand may wait on something that will
/// never answer (an endpoint that took the connection and sends nothing, retried for many
/// minutes): with nothing moved for this long since the request, the command ends (exit 3).
/// What was checkpointed is durable, as after a pulled cable; the first signal was promised
/// to stop it, and did not until a second one.
/// `MGEAR_STOP_GRACE=SECONDS` sets another (tests).
pub const STOP_GRACE: Duration = Duration::from_secs(30);

fn stop_grace() -> Duration {
    std::env::var("MGEAR_STOP_GRACE")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(STOP_GRACE, Duration::from_secs)
}

/// What the watchdog reads: the position, when it last moved (ms since the
/// start), and the least stall worth a warning (ms).
struct Watched {
    pos: AtomicU64,
    moved_ms: AtomicU64,
    stall_ms: AtomicU64,
    total: u64,
}

/// A byte-count progress bar that may be absent, with its stall watchdog.
pub struct Progress {
    bar: Option<ProgressBar>,
    watched: Arc<Watched>,
    start: Instant,
    stop: Option<Sender<()>>,
    watchdog: Option<JoinHandle<()>>,
}

/// Ends the process (exit 3) when the work at hand made no progress for [`STOP_GRACE`] after
/// a stop request: said as every error is, on stderr and, with `--json`, as the one object.
fn give_up_after_stop(what: &str) -> ! {
    let message = format!(
        "stopped: {what} made no progress for {} s after the stop request (it waits on \
         something that does not answer); ended without it",
        stop_grace().as_secs()
    );
    let hint = "nothing is damaged: what was checkpointed is kept; run the same command to \
                resume once what it waited on answers again";
    if crate::output::json() && !crate::output::emitted_error() {
        println!(
            "{}",
            crate::output::error_line(crate::exit::IO, &message, hint)
        );
    }
    eprintln!("mgear: error: {message}\nmgear: what to do: {hint}");
    std::process::exit(crate::exit::IO)
}

impl Progress {
    /// A bar of `total` bytes labelled `what`, shown only on a terminal and not with `--json`.
    pub fn new(what: &str, total: u64, json: bool) -> Self {
        let bar = Self::bar(what, total, json);
        Self::watch(bar, what, total, STALL, None)
    }

    /// No bar, only the watchdog: for a step that cannot say how far it is (the last
    /// flush, the COMMIT, the appliance's witness). Dropping it ends the step.
    pub fn waiting(what: &str) -> Self {
        Self::watch(None, what, 1, STALL, None)
    }

    /// [`new`](Self::new) with a watchdog that warns after `stall`, into `heard` rather than
    /// to stderr when given (tests).
    fn watch(
        bar: Option<ProgressBar>,
        what: &str,
        total: u64,
        stall: Duration,
        heard: Option<Arc<std::sync::Mutex<Vec<String>>>>,
    ) -> Self {
        let watched = Arc::new(Watched {
            pos: AtomicU64::new(0),
            moved_ms: AtomicU64::new(0),
            stall_ms: AtomicU64::new(stall.as_millis() as u64),
            total,
        });
        let start = Instant::now();
        let (stop, stopped) = channel::<()>();
        let w = Arc::clone(&watched);
        let what = what.to_owned();
        let shown = bar.clone();
        let watchdog = std::thread::Builder::new()
            .name("progress-watchdog".into())
            .spawn(move || {
                let mut warned_at = 0u64;
                let mut stop_seen: Option<u64> = None;
                loop {
                    match stopped.recv_timeout(Duration::from_millis(500)) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    let now = start.elapsed().as_millis() as u64;
                    let moved = w.moved_ms.load(Ordering::Relaxed);
                    if heard.is_none() && crate::signals::stop_requested() {
                        let since = *stop_seen.get_or_insert(now);
                        if now.saturating_sub(moved.max(since)) >= stop_grace().as_millis() as u64 {
                            give_up_after_stop(&what);
                        }
                    }
                    let stall = w.stall_ms.load(Ordering::Relaxed);
                    let still = now.saturating_sub(moved);
                    let due = if warned_at > moved {
                        now.saturating_sub(warned_at) >= STALL_AGAIN.as_millis() as u64
                    } else {
                        still >= stall
                    };
                    if due && w.pos.load(Ordering::Relaxed) < w.total {
                        warned_at = now;
                        let text = format!(
                            "mgear: {what}: no progress for {} s: waiting on the source, the \
                             medium, the appliance or the target (a frozen or unplugged \
                             appliance, an NBD export that stopped answering, a stalled disk, a \
                             Ceph cluster with an OSD down). Still waiting: Ctrl-C stops it, and \
                             the same command resumes",
                            still / 1000
                        );
                        match (&heard, &shown) {
                            (Some(h), _) => h.lock().map(|mut h| h.push(text)).unwrap_or(()),
                            (None, Some(b)) => b.suspend(|| eprintln!("{text}")),
                            (None, None) => eprintln!("{text}"),
                        }
                    }
                }
            })
            .ok();
        Progress {
            bar,
            watched,
            start,
            stop: Some(stop),
            watchdog,
        }
    }

    /// A `--rate-limit` of `rate` bytes/s moving `step` bytes at a time: no warning
    /// before three steps' time (a low rate moves the bar seldom).
    pub fn paced(&self, rate: f64, step: u64) {
        if rate > 0.0 {
            let ms = (3.0 * step as f64 / rate * 1000.0).min(u64::MAX as f64 / 2.0) as u64;
            self.watched
                .stall_ms
                .fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn moved(&self, pos: u64) {
        if self.watched.pos.swap(pos, Ordering::Relaxed) != pos {
            self.watched
                .moved_ms
                .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }

    fn bar(what: &str, total: u64, json: bool) -> Option<ProgressBar> {
        if json || !std::io::stderr().is_terminal() {
            return None;
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
        Some(bar)
    }

    /// Set the position in bytes.
    pub fn set(&self, pos: u64) {
        self.moved(pos);
        if let Some(b) = &self.bar {
            b.set_position(pos);
        }
    }

    /// Start at `pos` (a resumed job): the bytes done before this run must
    /// not count as if moved in its first tick ("48 GiB/s, ETA 0s"), so the
    /// rate and ETA estimate starts from here.
    pub fn start_at(&self, pos: u64) {
        self.moved(pos);
        if let Some(b) = &self.bar {
            b.set_position(pos);
            b.tick(); // the estimator records `pos` as its starting point
            b.reset_eta();
        }
    }

    /// Remove the bar (and stop its watchdog: what follows is not this bar's).
    pub fn finish(&self) {
        self.watched.pos.store(u64::MAX, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
        drop(self.stop.take());
        if let Some(t) = self.watchdog.take() {
            let _ = t.join();
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The watchdog's judgement alone (its warning goes to stderr): a bar that does not
    /// move past its stall time is warned about, one that moves or has finished is not.
    #[test]
    fn a_stalled_bar_is_noticed_and_a_moving_or_finished_one_is_not() {
        let p = Progress::watch(None, "capture", 100, Duration::from_millis(300), None);
        let stalled = |p: &Progress| {
            let now = p.start.elapsed().as_millis() as u64;
            let w = &p.watched;
            now - w.moved_ms.load(Ordering::Relaxed) >= w.stall_ms.load(Ordering::Relaxed)
                && w.pos.load(Ordering::Relaxed) < w.total
        };
        p.set(10);
        assert!(!stalled(&p));
        std::thread::sleep(Duration::from_millis(400));
        assert!(stalled(&p), "no move for 400 ms of a 300 ms stall");
        p.set(20);
        assert!(!stalled(&p), "it moved");
        p.paced(1.0, 10);
        std::thread::sleep(Duration::from_millis(400));
        assert!(
            !stalled(&p),
            "a 10-byte step at 1 B/s takes 10 s: 30 s before a warning"
        );
        p.finish();
        assert!(!stalled(&p));
        drop(p);
    }

    /// A step with no bar is warned about when it outlasts its stall time, by name, and not
    /// once it has ended.
    #[test]
    fn a_step_without_a_bar_that_hangs_is_warned_about() {
        let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
        let step = |ms| {
            let p = Progress::watch(
                None,
                "writing COMMIT",
                1,
                Duration::from_millis(200),
                Some(Arc::clone(&heard)),
            );
            std::thread::sleep(Duration::from_millis(ms));
            drop(p);
        };
        step(50);
        assert!(
            heard.lock().unwrap().is_empty(),
            "a quick step is not warned about"
        );
        step(1300);
        let said = heard.lock().unwrap().clone();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].starts_with("mgear: writing COMMIT: no progress for "),
            "{said:?}"
        );
    }
}
